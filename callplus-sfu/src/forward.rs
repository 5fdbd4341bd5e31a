//! Forwarding one published track: every RTP packet from the publisher goes to each subscriber's
//! outgoing track, with the subscriber's SSRC and, for simulcast video, only the layer that
//! subscriber gets ([`LayerSwitch`]). Nothing is decoded.
//!
//! Each subscriber's copy goes through its own bounded queue and writer task: writing to a
//! connection waits when that connection's driver is behind, and a subscriber on a slow path must
//! not hold up the other subscribers of the stream. A full queue drops the packet (counted); the
//! subscriber's NACK or key-frame request repairs it as any loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Instant;

use callplus_session::{DeviceId, MediaKind, UserId};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::connection::lock;
use crate::keyframe_gate::KeyframeGate;
use crate::layers::{Available, Layer, LayerActivity, LayerSwitch, PacketInfo};
use crate::levels::{CallLevels, level_from_dbov};
use crate::loss_guard::LossGuard;
use crate::vp8::starts_keyframe;

/// Packets a subscriber's copy of one stream may have waiting: about a second of 500 kbit/s video.
pub(crate) const QUEUE: usize = 512;

/// Packets of an SSRC the stack has not bound to a layer that are held back before it is taken
/// for the full layer anyway (normally it is bound within a packet or two).
const UNBOUND_PACKETS: u32 = 50;

/// What a subscriber's copy decides under its lock: which layer, and when to ask for a key frame.
pub(crate) struct TargetState {
    pub(crate) layers: LayerSwitch,
    /// Key-frame requests for this subscriber, its own (PLI/FIR) and its layer switches alike.
    pub(crate) gate: KeyframeGate,
    /// The loss this subscriber reports about the stream, capping it at the tiny layer while
    /// its link loses the full one.
    pub(crate) loss: LossGuard,
}

/// One subscriber's copy of a published stream.
pub(crate) struct Target {
    queue: mpsc::Sender<rtp::Packet>,
    /// The SSRC of the stream on the subscriber's connection.
    pub(crate) ssrc: u32,
    /// Packets dropped because the queue was full, shared by all targets of the SFU.
    dropped: Arc<AtomicU64>,
    /// Set once the subscriber applied an offer naming this stream. Packets sent before that
    /// reach a browser as an unsignalled SSRC, which Chromium may bind to the wrong receiver
    /// and then never deliver the stream.
    live: AtomicBool,
    pub(crate) state: StdMutex<TargetState>,
}

impl Target {
    /// A target writing to `track`, getting `layer`; its writer task ends when the target is
    /// dropped.
    pub(crate) fn spawn(
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        layer: Layer,
        dropped: Arc<AtomicU64>,
    ) -> Arc<Target> {
        let (queue, mut packets) = mpsc::channel::<rtp::Packet>(QUEUE);
        tokio::spawn(async move {
            while let Some(packet) = packets.recv().await {
                if let Err(e) = track.write_rtp(packet).await {
                    // Before the subscriber's answer binds the track, or after it left.
                    tracing::trace!(error = %e, "packet not forwarded");
                }
            }
        });
        Arc::new(Target::new(queue, ssrc, layer, dropped))
    }

    fn new(queue: mpsc::Sender<rtp::Packet>, ssrc: u32, layer: Layer, dropped: Arc<AtomicU64>) -> Target {
        Target {
            queue,
            ssrc,
            dropped,
            live: AtomicBool::new(false),
            state: StdMutex::new(TargetState {
                layers: LayerSwitch::new(layer),
                gate: KeyframeGate::default(),
                loss: LossGuard::default(),
            }),
        }
    }

    /// Starts forwarding: the subscriber's answer to an offer carrying this stream is in.
    pub(crate) fn go_live(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// Queues the subscriber's copy of `packet` without waiting; `false` when it was not
    /// forwarded (not live yet, another layer, queue full, or the subscriber is gone).
    fn offer(&self, packet: &rtp::Packet, info: PacketInfo, available: Available, now: Instant) -> bool {
        if !self.live.load(Ordering::Acquire) {
            return false;
        }
        let Some((seq, timestamp)) = lock(&self.state).layers.on_packet(info, available, now) else {
            return false;
        };
        let mut copy = packet.clone();
        copy.header.ssrc = self.ssrc;
        copy.header.sequence_number = seq;
        copy.header.timestamp = timestamp;
        copy.header.extension = false;
        copy.header.extension_profile = 0;
        copy.header.extensions.clear();
        match self.queue.try_send(copy) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// A layer switch waits for a key frame and the gate lets a request through now: the layer
    /// to ask for.
    fn switch_keyframe(&self, now: Instant) -> Option<Layer> {
        let mut state = lock(&self.state);
        if !state.layers.switch_pending() {
            return None;
        }
        let layer = state.layers.keyframe_layer();
        state.gate.allow(now).then_some(layer)
    }
}

/// The subscribers of one published stream, by (user, device).
pub(crate) type Fanout = RwLock<HashMap<(UserId, DeviceId), Arc<Target>>>;

/// The SSRC of each layer of a published stream, learnt from its packets' `rid`.
#[derive(Debug, Default)]
pub(crate) struct LayerSsrcs {
    ssrcs: StdMutex<[Option<u32>; 2]>,
}

impl LayerSsrcs {
    pub(crate) fn get(&self, layer: Layer) -> Option<u32> {
        lock(&self.ssrcs)[layer.index()]
    }

    /// The SSRC of any layer seen so far (the lowest first).
    pub(crate) fn any(&self) -> Option<u32> {
        lock(&self.ssrcs).iter().flatten().copied().next()
    }

    fn set(&self, layer: Layer, ssrc: u32) {
        lock(&self.ssrcs)[layer.index()] = Some(ssrc);
    }
}

/// Where a published audio track's levels go: the call's [`CallLevels`], under the publisher's
/// user id, read from the audio-level header extension of id `extension`.
pub(crate) struct LevelTap {
    pub(crate) levels: Arc<StdMutex<CallLevels>>,
    pub(crate) user: UserId,
    pub(crate) extension: u8,
}

impl LevelTap {
    fn on_packet(&self, packet: &rtp::Packet, now: Instant) {
        let Some(value) = packet.header.get_extension(self.extension) else { return };
        let Some(first) = value.first() else { return };
        lock(&self.levels).on_level(&self.user, level_from_dbov(*first), now);
    }
}

/// Reads the publisher's track until it ends and offers each packet to every subscriber.
///
/// Until a subscriber switches layers, sequence numbers and timestamps stay the publisher's, so
/// its NACK names the same packet the SFU asks the publisher for. Header extensions are dropped:
/// their ids were negotiated on the publisher's connection, not the subscriber's. Subscribers
/// waiting to switch layers get a key frame of the new layer asked for (at most once per
/// [`crate::keyframe_gate::MIN_INTERVAL`] each); `keyframes` counts the requests sent. Audio
/// packets' levels go to `level_tap`.
pub(crate) async fn forward(
    track: Arc<dyn TrackRemote>,
    kind: MediaKind,
    fanout: Arc<Fanout>,
    layer_ssrcs: Arc<LayerSsrcs>,
    keyframes: Arc<AtomicU64>,
    level_tap: Option<LevelTap>,
) {
    let mut layers: HashMap<u32, Layer> = HashMap::new();
    // Packets held back per SSRC whose layer is not known yet.
    let mut unbound: HashMap<u32, u32> = HashMap::new();
    let mut activity = LayerActivity::default();
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnOpen(init) => {
                let layer = Layer::from_rid(init.rid.as_deref().unwrap_or_default());
                tracing::debug!(ssrc = init.ssrc, ?layer, "sfu: published stream open");
                layers.insert(init.ssrc, layer);
                layer_ssrcs.set(layer, init.ssrc);
            }
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let ssrc = packet.header.ssrc;
                let layer = match layers.get(&ssrc) {
                    Some(layer) => *layer,
                    None => {
                        // Its `OnOpen` is still on its way (events and media reach us on separate
                        // queues) or was lost (the stack drops it on a full queue). The track
                        // knows the layer once the stack bound the SSRC; until then the packet
                        // is not forwarded: taken for the wrong layer, it would splice another
                        // stream's numbering into a subscriber's copy.
                        let layer = match track.rid(ssrc).await {
                            Some(rid) => Layer::from_rid(&rid),
                            None if track.ssrcs().await.contains(&ssrc) => Layer::Full,
                            None => {
                                // A stack that never binds it: after a while, the only layer.
                                let waited = unbound.entry(ssrc).or_insert(0);
                                *waited += 1;
                                if *waited < UNBOUND_PACKETS {
                                    continue;
                                }
                                Layer::Full
                            }
                        };
                        unbound.remove(&ssrc);
                        layers.insert(ssrc, layer);
                        layer_ssrcs.set(layer, ssrc);
                        layer
                    }
                };
                let now = Instant::now();
                if let Some(tap) = &level_tap {
                    tap.on_packet(&packet, now);
                }
                let available = activity.on_packet(layer, packet.header.timestamp);
                let info = PacketInfo {
                    layer,
                    seq: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    marker: packet.header.marker,
                    keyframe_start: kind == MediaKind::Video && starts_keyframe(&packet.payload),
                };
                let mut ask = [false; 2];
                {
                    let fanout = fanout.read().unwrap_or_else(|p| p.into_inner());
                    for target in fanout.values() {
                        target.offer(&packet, info, available, now);
                        if kind == MediaKind::Video
                            && let Some(wanted) = target.switch_keyframe(now)
                            && available[wanted.index()]
                        {
                            ask[wanted.index()] = true;
                        }
                    }
                }
                for layer in [Layer::Full, Layer::Tiny] {
                    if !ask[layer.index()] {
                        continue;
                    }
                    let Some(media_ssrc) = layer_ssrcs.get(layer) else { continue };
                    keyframes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?layer, media_ssrc, "sfu: key frame requested for a layer switch");
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
                    if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                        tracing::debug!(error = %e, "sfu: PLI not sent");
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_instead_of_waiting_and_counts() {
        let (queue, mut rx) = mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let target = Target::new(queue, 77, Layer::Full, Arc::clone(&dropped));
        let mut packet = rtp::Packet::default();
        packet.header.ssrc = 5;
        packet.header.sequence_number = 9;
        packet.header.extension = true;
        let info =
            PacketInfo { layer: Layer::Full, seq: 9, timestamp: 0, marker: true, keyframe_start: false };
        let now = Instant::now();
        assert!(
            !target.offer(&packet, info, [true, false], now),
            "nothing goes before the subscriber knows the stream"
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 0, "held back is not a queue drop");
        target.go_live();
        let offered: Vec<bool> = (0..3).map(|_| target.offer(&packet, info, [true, false], now)).collect();
        assert_eq!(offered, [true, true, false], "the third finds the queue full and does not wait");
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        let copy = rx.try_recv().map_err(|e| e.to_string());
        let copy = copy.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((copy.header.ssrc, copy.header.sequence_number, copy.header.extension), (77, 9, false));
        drop(rx);
        assert!(!target.offer(&packet, info, [true, false], now), "a subscriber that is gone takes nothing");
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "and that is not a queue drop");
    }
}
