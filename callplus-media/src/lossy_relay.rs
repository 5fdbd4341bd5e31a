//! [`LossyRelay`]: a UDP relay on 127.0.0.1 between one subscriber and an SFU that drops the
//! first transmission of a few of the subscriber's video packets (test support, feature
//! `test-support`; never part of a call made by an app).
//!
//! The relay stands in the media path of one participant only, as a lossy link between it and
//! the SFU: the SFU is told the subscriber lives at the relay, and the subscriber learns of the
//! SFU only from the SFU's connectivity checks, which reach it from the relay. Two signal
//! rewrites make that so ([`LossyRelay::from_subscriber`], [`LossyRelay::to_subscriber`]); they
//! apply wherever the test can touch the subscriber's signals (a test's own relay of signals, or
//! the client's test hook around a real signalling server).
//!
//! Once [`armed`](LossyRelay::arm), the relay drops the packets of each video stream from the SFU
//! at the given offsets (in sequence numbers from the first packet of that stream it saw armed),
//! once each: a second packet with the same sequence number (the SFU's resend after a NACK)
//! passes and is logged. Everything else passes untouched: STUN, DTLS, RTCP, audio, the
//! subscriber's own packets. RTP headers are not encrypted by SRTP, so the relay can read them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use callplus_session::MediaPayload;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use crate::webrtc::VP8_PT;

/// What the relay did to one video stream (SSRC) from the SFU since it was armed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLosses {
    /// Sequence number of the stream's first packet after arming (offset 0).
    pub first_seq: u16,
    /// Offsets dropped (their first transmission), in the order they passed.
    pub dropped: Vec<u16>,
    /// Offsets seen again after being dropped: the SFU's retransmissions.
    pub resent: Vec<u16>,
}

#[derive(Default)]
struct LossLog {
    armed: bool,
    streams: HashMap<u32, StreamLosses>,
}

struct Shared {
    /// The subscriber's real address, learnt from its first host candidate.
    subscriber: Mutex<Option<SocketAddr>>,
    log: Mutex<LossLog>,
    /// Offsets to drop in each video stream.
    offsets: Vec<u16>,
    /// The video payload type.
    video_pt: u8,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Whether to drop this packet from the SFU.
    fn drop_once(&self, packet: &[u8]) -> bool {
        // RFC 7983: 128..=191 is RTP or RTCP; RTCP packet types (192..=223) never match a video
        // payload type below 128 once the marker bit is masked.
        let is_video =
            packet.len() > 12 && (128..=191).contains(&packet[0]) && packet[1] & 0x7f == self.video_pt;
        if !is_video {
            return false;
        }
        let mut log = lock(&self.log);
        if !log.armed {
            return false;
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let stream = log
            .streams
            .entry(ssrc)
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

/// A lossy UDP relay between one subscriber and an SFU, on 127.0.0.1 (see the module docs).
/// Its task ends when it is dropped.
pub struct LossyRelay {
    /// Where the SFU sends what it means for the subscriber.
    address: SocketAddr,
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl std::fmt::Debug for LossyRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyRelay").field("address", &self.address).finish()
    }
}

impl LossyRelay {
    /// A relay that, once armed, drops the first transmission of the packets at `offsets` of
    /// every VP8 stream from the SFU (the payload type the adapter offers, which the SFU keeps).
    /// Needs a tokio runtime.
    ///
    /// # Errors
    /// A socket cannot be bound on 127.0.0.1.
    pub async fn start(offsets: &[u16]) -> std::io::Result<LossyRelay> {
        let facing_sfu = UdpSocket::bind("127.0.0.1:0").await?;
        let facing_subscriber = UdpSocket::bind("127.0.0.1:0").await?;
        let address = facing_sfu.local_addr()?;
        let shared = Arc::new(Shared {
            subscriber: Mutex::new(None),
            log: Mutex::new(LossLog::default()),
            offsets: offsets.to_vec(),
            video_pt: VP8_PT,
        });
        let relay = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let (mut from_sfu, mut from_subscriber) = (vec![0u8; 2048], vec![0u8; 2048]);
            let mut sfu = None;
            loop {
                tokio::select! {
                    got = facing_sfu.recv_from(&mut from_sfu) => {
                        let Ok((n, from)) = got else { break };
                        sfu = Some(from);
                        let packet = &from_sfu[..n];
                        if relay.drop_once(packet) {
                            continue;
                        }
                        let to = *lock(&relay.subscriber);
                        if let Some(to) = to {
                            let _ = facing_subscriber.send_to(packet, to).await;
                        }
                    }
                    got = facing_subscriber.recv_from(&mut from_subscriber) => {
                        let Ok((n, _)) = got else { break };
                        if let Some(to) = sfu {
                            let _ = facing_sfu.send_to(&from_subscriber[..n], to).await;
                        }
                    }
                }
            }
        })
        .abort_handle();
        Ok(LossyRelay { address, shared, task })
    }

    /// The address the SFU is told the subscriber has.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Starts dropping (the test does it once the call is up and its opening key frames are
    /// behind).
    pub fn arm(&self) {
        lock(&self.shared.log).armed = true;
    }

    /// What the relay did to each video stream (by SSRC) since it was armed.
    pub fn losses(&self) -> HashMap<u32, StreamLosses> {
        lock(&self.shared.log).streams.clone()
    }

    /// Rewrites a signal from the subscriber to the SFU: SDP without candidates, and each UDP
    /// candidate pointing at the relay instead (the first one's real address is where the relay
    /// sends on); other candidates are dropped.
    pub fn from_subscriber(&self, payload: MediaPayload) -> Option<MediaPayload> {
        match payload {
            MediaPayload::SdpOffer(sdp) => Some(MediaPayload::SdpOffer(strip_candidates(&sdp))),
            MediaPayload::SdpAnswer(sdp) => Some(MediaPayload::SdpAnswer(strip_candidates(&sdp))),
            MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
                let mut fields: Vec<String> = candidate.split_whitespace().map(str::to_owned).collect();
                if fields.len() < 8 || !fields[2].eq_ignore_ascii_case("udp") {
                    return None;
                }
                let real: SocketAddr = format!("{}:{}", fields[4], fields[5]).parse().ok()?;
                lock(&self.shared.subscriber).get_or_insert(real);
                fields[4] = self.address.ip().to_string();
                fields[5] = self.address.port().to_string();
                Some(MediaPayload::IceCandidate { candidate: fields.join(" "), sdp_mid, sdp_mline_index })
            }
        }
    }

    /// Rewrites a signal from the SFU to the subscriber: SDP without candidates, candidates
    /// dropped (the subscriber learns the relay from the SFU's checks through it).
    pub fn to_subscriber(&self, payload: MediaPayload) -> Option<MediaPayload> {
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

    fn shared(offsets: &[u16]) -> Shared {
        Shared {
            subscriber: Mutex::new(None),
            log: Mutex::new(LossLog::default()),
            offsets: offsets.to_vec(),
            video_pt: VP8_PT,
        }
    }

    #[test]
    fn drops_each_offset_once_per_stream_once_armed() {
        let relay = shared(&[1, 3]);
        assert!(!relay.drop_once(&rtp(VP8_PT, 10, 7)), "not armed yet");
        lock(&relay.log).armed = true;
        let passed: Vec<bool> = (100..105).map(|seq| !relay.drop_once(&rtp(VP8_PT | 0x80, seq, 7))).collect();
        assert_eq!(passed, [true, false, true, false, true]);
        assert!(!relay.drop_once(&rtp(VP8_PT, 101, 7)), "the resend passes");
        assert!(!relay.drop_once(&rtp(111, 201, 8)), "audio passes");
        assert!(!relay.drop_once(&rtp(VP8_PT, 501, 9)), "offset 0 of another stream passes");
        assert!(relay.drop_once(&rtp(VP8_PT, 502, 9)), "offset 1 of another stream is dropped");
        let log = lock(&relay.log);
        assert_eq!(log.streams[&7], StreamLosses { first_seq: 100, dropped: vec![1, 3], resent: vec![1] });
        assert_eq!(log.streams[&9].dropped, vec![1]);
        assert!(!log.streams.contains_key(&8));
    }

    #[tokio::test]
    async fn points_the_sfu_at_the_relay_and_hides_the_sfu_from_the_subscriber() {
        let relay = LossyRelay::start(&[]).await.unwrap();
        let candidate = |c: &str| MediaPayload::IceCandidate {
            candidate: c.to_owned(),
            sdp_mid: "0".to_owned(),
            sdp_mline_index: 0,
        };
        let out = relay.from_subscriber(candidate("candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"));
        let port = relay.address().port();
        assert_eq!(out, Some(candidate(&format!("candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"))));
        assert_eq!(*lock(&relay.shared.subscriber), Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!(relay.from_subscriber(candidate("candidate:2 1 tcp 1 127.0.0.1 9 typ host")), None);
        assert_eq!(relay.to_subscriber(candidate("candidate:1 1 udp 1 127.0.0.1 5000 typ host")), None);
        let sdp = "v=0\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=mid:0\r\n";
        assert_eq!(
            relay.to_subscriber(MediaPayload::SdpAnswer(sdp.to_owned())),
            Some(MediaPayload::SdpAnswer("v=0\r\na=mid:0\r\n".to_owned()))
        );
    }
}
