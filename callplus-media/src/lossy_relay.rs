//! [`LossyRelay`]: a UDP relay on 127.0.0.1 in front of one device's media, losing the RTP
//! packets a test chooses on their way to that device (test support, feature `test-support`;
//! never part of a call made by an app).
//!
//! The relay stands in the media path of one device (the *relayed* device) as a lossy link
//! between it and its peer (another device, or the SFU): the peer is told the relayed device
//! lives at the relay, and the relayed device learns of the peer only from the peer's
//! connectivity checks, which reach it from the relay. Two signal rewrites make that so
//! ([`LossyRelay::from_relayed`], [`LossyRelay::to_relayed`]); they apply wherever the test can
//! touch the relayed device's signals (a test's own relay of signals, or the client's test hook
//! around a real signalling server).
//!
//! Every RTP packet from the peer to the relayed device goes through the test's [`DropRtp`]
//! first; everything else passes untouched: STUN, DTLS, RTCP, and all the relayed device sends.
//! RTP headers are not encrypted by SRTP, so a policy can read them. [`ArmedLosses`] is the
//! policy of the NACK tests: once armed, the first transmission of chosen packets of each video
//! stream is dropped and their resends are logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use callplus_session::MediaPayload;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use crate::webrtc::VP8_PT;

/// Decides whether the relay drops an RTP packet on its way to the relayed device (given the
/// whole datagram).
pub type DropRtp = Box<dyn FnMut(&[u8]) -> bool + Send>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a datagram is RTP (RFC 7983: 128..=191 is RTP or RTCP; RTCP packet types are
/// 192..=223).
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() > 12 && (128..=191).contains(&packet[0]) && !(192..=223).contains(&packet[1])
}

/// The RTP payload type of a packet.
pub fn payload_type(packet: &[u8]) -> u8 {
    packet[1] & 0x7f
}

/// Whether an RTP packet carries video (VP8).
pub fn is_video(packet: &[u8]) -> bool {
    payload_type(packet) == VP8_PT
}

/// The RTP sequence number of a packet.
pub fn sequence_number(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[2], packet[3]])
}

/// The RTP SSRC of a packet.
pub fn ssrc(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]])
}

/// A lossy UDP relay in front of one device's media, on 127.0.0.1 (see the module docs). Its
/// task ends when it is dropped.
pub struct LossyRelay {
    /// Where the peer sends what it means for the relayed device.
    address: SocketAddr,
    /// The relayed device's real address, learnt from its first UDP candidate.
    relayed: Arc<Mutex<Option<SocketAddr>>>,
    task: AbortHandle,
}

impl std::fmt::Debug for LossyRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyRelay").field("address", &self.address).finish_non_exhaustive()
    }
}

impl LossyRelay {
    /// A relay that drops the RTP packets from the peer for which `drop_rtp` says so. Needs a
    /// tokio runtime.
    ///
    /// # Errors
    /// A socket cannot be bound on 127.0.0.1.
    pub async fn start(mut drop_rtp: DropRtp) -> std::io::Result<LossyRelay> {
        let facing_peer = UdpSocket::bind("127.0.0.1:0").await?;
        let facing_relayed = UdpSocket::bind("127.0.0.1:0").await?;
        let address = facing_peer.local_addr()?;
        let relayed = Arc::new(Mutex::new(None));
        let relayed_at = Arc::clone(&relayed);
        let task = tokio::spawn(async move {
            let (mut from_peer, mut from_relayed) = (vec![0u8; 2048], vec![0u8; 2048]);
            let mut peer = None;
            loop {
                tokio::select! {
                    got = facing_peer.recv_from(&mut from_peer) => {
                        let Ok((n, from)) = got else { break };
                        peer = Some(from);
                        let packet = &from_peer[..n];
                        if is_rtp(packet) && drop_rtp(packet) {
                            continue;
                        }
                        let to = *lock(&relayed_at);
                        if let Some(to) = to {
                            let _ = facing_relayed.send_to(packet, to).await;
                        }
                    }
                    got = facing_relayed.recv_from(&mut from_relayed) => {
                        let Ok((n, _)) = got else { break };
                        if let Some(to) = peer {
                            let _ = facing_peer.send_to(&from_relayed[..n], to).await;
                        }
                    }
                }
            }
        })
        .abort_handle();
        Ok(LossyRelay { address, relayed, task })
    }

    /// The address the peer is told the relayed device has.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Rewrites a signal from the relayed device to its peer: SDP without candidates, and each
    /// UDP candidate pointing at the relay instead (the first one's real address is where the
    /// relay sends on); other candidates are dropped.
    pub fn from_relayed(&self, payload: MediaPayload) -> Option<MediaPayload> {
        match payload {
            MediaPayload::SdpOffer(sdp) => Some(MediaPayload::SdpOffer(strip_candidates(&sdp))),
            MediaPayload::SdpAnswer(sdp) => Some(MediaPayload::SdpAnswer(strip_candidates(&sdp))),
            MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
                let mut fields: Vec<String> = candidate.split_whitespace().map(str::to_owned).collect();
                if fields.len() < 8 || !fields[2].eq_ignore_ascii_case("udp") {
                    return None;
                }
                let real: SocketAddr = format!("{}:{}", fields[4], fields[5]).parse().ok()?;
                lock(&self.relayed).get_or_insert(real);
                fields[4] = self.address.ip().to_string();
                fields[5] = self.address.port().to_string();
                Some(MediaPayload::IceCandidate { candidate: fields.join(" "), sdp_mid, sdp_mline_index })
            }
        }
    }

    /// Rewrites a signal from the peer to the relayed device: SDP without candidates, candidates
    /// dropped (the relayed device learns the relay from the peer's checks through it).
    pub fn to_relayed(&self, payload: MediaPayload) -> Option<MediaPayload> {
        match payload {
            MediaPayload::SdpOffer(sdp) => Some(MediaPayload::SdpOffer(strip_candidates(&sdp))),
            MediaPayload::SdpAnswer(sdp) => Some(MediaPayload::SdpAnswer(strip_candidates(&sdp))),
            MediaPayload::IceCandidate { .. } => None,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An SDP without its candidate lines.
fn strip_candidates(sdp: &str) -> String {
    sdp.split_inclusive('\n').filter(|line| !line.starts_with("a=candidate")).collect()
}

/// What [`ArmedLosses`] did to one video stream (SSRC) since it was armed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLosses {
    /// Sequence number of the stream's first packet after arming (offset 0).
    pub first_seq: u16,
    /// Offsets dropped (their first transmission), in the order they passed.
    pub dropped: Vec<u16>,
    /// Offsets seen again after being dropped: the peer's retransmissions (which pass).
    pub resent: Vec<u16>,
}

#[derive(Default)]
struct LossLog {
    armed: bool,
    streams: HashMap<u32, StreamLosses>,
}

/// A [`DropRtp`] policy for NACK tests: once [armed](ArmedLosses::arm), it drops the first
/// transmission of the packets at `offsets` of every VP8 stream (in sequence numbers from the
/// first packet of that stream it saw armed), once each; a second packet with the same sequence
/// number (the resend after a NACK) passes and is logged.
#[derive(Clone)]
pub struct ArmedLosses {
    offsets: Vec<u16>,
    log: Arc<Mutex<LossLog>>,
}

impl std::fmt::Debug for ArmedLosses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmedLosses").field("offsets", &self.offsets).finish_non_exhaustive()
    }
}

impl ArmedLosses {
    /// Disarmed, to drop the packets at `offsets` of each VP8 stream once armed.
    pub fn new(offsets: &[u16]) -> ArmedLosses {
        ArmedLosses { offsets: offsets.to_vec(), log: Arc::default() }
    }

    /// The policy to give [`LossyRelay::start`].
    pub fn policy(&self) -> DropRtp {
        let this = self.clone();
        Box::new(move |packet| this.drop_once(packet))
    }

    /// Starts dropping (a test does it once the call is up and its opening key frames are
    /// behind).
    pub fn arm(&self) {
        lock(&self.log).armed = true;
    }

    /// What was done to each VP8 stream (by SSRC) since arming.
    pub fn losses(&self) -> HashMap<u32, StreamLosses> {
        lock(&self.log).streams.clone()
    }

    fn drop_once(&self, packet: &[u8]) -> bool {
        if payload_type(packet) != VP8_PT {
            return false;
        }
        let mut log = lock(&self.log);
        if !log.armed {
            return false;
        }
        let seq = sequence_number(packet);
        let stream = log
            .streams
            .entry(ssrc(packet))
            .or_insert_with(|| StreamLosses { first_seq: seq, ..StreamLosses::default() });
        let offset = seq.wrapping_sub(stream.first_seq);
        if !self.offsets.contains(&offset) {
            return false;
        }
        if stream.dropped.contains(&offset) {
            stream.resent.push(offset);
            return false;
        }
        stream.dropped.push(offset);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rtp(pt: u8, seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn rtp_is_told_from_rtcp() {
        assert!(is_rtp(&rtp(VP8_PT | 0x80, 1, 1)));
        assert!(is_rtp(&rtp(111, 1, 1)));
        assert!(!is_rtp(&rtp(201, 1, 1)), "a receiver report");
        assert!(!is_rtp(&[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "DTLS");
    }

    #[test]
    fn armed_losses_drop_each_offset_once_per_stream() {
        let losses = ArmedLosses::new(&[1, 3]);
        let mut policy = losses.policy();
        assert!(!policy(&rtp(VP8_PT, 10, 7)), "not armed yet");
        losses.arm();
        let passed: Vec<bool> = (100..105).map(|seq| !policy(&rtp(VP8_PT | 0x80, seq, 7))).collect();
        assert_eq!(passed, [true, false, true, false, true]);
        assert!(!policy(&rtp(VP8_PT, 101, 7)), "the resend passes");
        assert!(!policy(&rtp(111, 201, 8)), "audio passes");
        assert!(!policy(&rtp(VP8_PT, 501, 9)), "offset 0 of another stream passes");
        assert!(policy(&rtp(VP8_PT, 502, 9)), "offset 1 of another stream is dropped");
        let log = losses.losses();
        assert_eq!(log[&7], StreamLosses { first_seq: 100, dropped: vec![1, 3], resent: vec![1] });
        assert_eq!(log[&9].dropped, vec![1]);
        assert!(!log.contains_key(&8));
    }

    #[tokio::test]
    async fn points_the_peer_at_the_relay_and_hides_the_peer_from_the_relayed_device() {
        let relay = LossyRelay::start(Box::new(|_| false)).await.unwrap();
        let candidate = |c: &str| MediaPayload::IceCandidate {
            candidate: c.to_owned(),
            sdp_mid: "0".to_owned(),
            sdp_mline_index: 0,
        };
        let out = relay.from_relayed(candidate("candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"));
        let port = relay.address().port();
        assert_eq!(out, Some(candidate(&format!("candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"))));
        assert_eq!(*lock(&relay.relayed), Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!(relay.from_relayed(candidate("candidate:2 1 tcp 1 127.0.0.1 9 typ host")), None);
        assert_eq!(relay.to_relayed(candidate("candidate:1 1 udp 1 127.0.0.1 5000 typ host")), None);
        let sdp = "v=0\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=mid:0\r\n";
        assert_eq!(
            relay.to_relayed(MediaPayload::SdpAnswer(sdp.to_owned())),
            Some(MediaPayload::SdpAnswer("v=0\r\na=mid:0\r\n".to_owned()))
        );
    }
}
