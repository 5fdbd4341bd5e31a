//! Simulcast layers: which layer of a published video stream each subscriber gets, and how its
//! copy stays one continuous RTP stream across a switch.
//!
//! A publisher in an SFU call sends its video twice (simulcast, RFC 8853): a full layer and a
//! tiny one (a quarter of the pixels), told apart by their `rid` (RFC 8852). Each subscriber asks
//! for one of them per publisher ("tiny" for a small view). The subscriber sees one stream with
//! one SSRC whatever the layer, so on a switch the SFU renumbers: the new layer's packets continue
//! the sequence numbers and timestamps where the old layer's stopped. A switch happens only at a
//! key frame of the new layer (its inter frames refer to frames the subscriber never got), and
//! only between two frames of the old one (a frame cut short would cost the subscriber a key-frame
//! request). Until then the old layer keeps flowing. Sans-IO: time is an argument.

use std::time::{Duration, Instant};

/// The `rid` of the tiny layer (a quarter of the pixels: half the width and height). Every other
/// rid, and a stream sent without simulcast, is the full layer.
pub const TINY_RID: &str = "q";
/// The `rid` of the full layer the clients send.
pub const FULL_RID: &str = "f";

/// How much media the other layer may send without a packet of a layer before subscribers asking
/// for that layer are given the other one.
pub(crate) const LAYER_TIMEOUT: Duration = Duration::from_secs(1);

/// The RTP clock rate of video (VP8, RFC 7741): [`LAYER_TIMEOUT`] is measured on it.
const VIDEO_CLOCK_HZ: u32 = 90_000;

/// A simulcast layer of a published video stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The stream as captured (the only layer of a publisher without simulcast, and of audio).
    Full,
    /// The small copy, for small views (`set_video_view(user, sink, tiny: true)`).
    Tiny,
}

impl Layer {
    /// The layer a `rid` names.
    pub(crate) fn from_rid(rid: &str) -> Layer {
        if rid == TINY_RID { Layer::Tiny } else { Layer::Full }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Layer::Full => 0,
            Layer::Tiny => 1,
        }
    }

    fn other(self) -> Layer {
        match self {
            Layer::Full => Layer::Tiny,
            Layer::Tiny => Layer::Full,
        }
    }
}

/// Which layers of a stream are sending, by [`Layer::index`].
pub(crate) type Available = [bool; 2];

/// Tells, packet by packet, which layers of a published stream are sending.
///
/// A layer is gone once the *other* layer has sent [`LAYER_TIMEOUT`] worth of media (by its RTP
/// timestamps) without a packet of it: a publisher without simulcast, or whose tiny layer stopped.
/// Wall-clock silence is no evidence: when the publisher's encoders, the network or this process
/// fall behind (a CPU-starved machine), *both* layers pause and then arrive together, and a
/// timeout on arrival times would take whichever layer came back second for gone, switch its
/// subscribers over and ask the publisher for key frames for nothing. A layer never seen is not
/// sending.
#[derive(Debug, Default)]
pub(crate) struct LayerActivity {
    seen: [bool; 2],
    /// Per layer: the RTP timestamp of the other layer's first packet after this layer's last.
    other_since: [Option<u32>; 2],
    /// Per layer: taken for gone, until its next packet.
    gone: [bool; 2],
}

impl LayerActivity {
    /// A packet of `layer` with RTP timestamp `timestamp` arrived: which layers are sending now.
    pub(crate) fn on_packet(&mut self, layer: Layer, timestamp: u32) -> Available {
        let (this, other) = (layer.index(), layer.other().index());
        self.seen[this] = true;
        self.other_since[this] = None;
        self.gone[this] = false;
        let since = *self.other_since[other].get_or_insert(timestamp);
        let ticks =
            u32::try_from(LAYER_TIMEOUT.as_millis().saturating_mul(u128::from(VIDEO_CLOCK_HZ)) / 1000)
                .unwrap_or(u32::MAX);
        let elapsed = timestamp.wrapping_sub(since);
        // A late packet (a resend) is behind `since`: it says nothing about the other layer.
        if elapsed < 0x8000_0000 && elapsed >= ticks {
            self.gone[other] = true;
        }
        [0, 1].map(|i| self.seen[i] && !self.gone[i])
    }
}

/// The header fields of one packet, as the switch needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketInfo {
    pub(crate) layer: Layer,
    pub(crate) seq: u16,
    pub(crate) timestamp: u32,
    pub(crate) marker: bool,
    /// First packet of a key frame (VP8); never for audio.
    pub(crate) keyframe_start: bool,
}

/// One subscriber's copy of one published stream.
#[derive(Debug)]
pub(crate) struct LayerSwitch {
    /// The layer the subscriber asked for.
    wanted: Layer,
    /// Held at the tiny layer whatever it asked for: its downlink loses the full one
    /// (`loss_guard`).
    capped: bool,
    /// What the subscriber gets now: `wanted`, or the other layer while `wanted` sends nothing.
    target: Layer,
    /// The layer being forwarded; `None` before the first packet.
    current: Option<Layer>,
    seq_offset: u16,
    ts_offset: u32,
    /// First sequence number of the current layer forwarded: older packets of it (resends of
    /// what was sent before the switch) no longer fit in the subscriber's numbering.
    since_seq: u16,
    /// The last packet forwarded: its (rewritten) sequence number and timestamp, when, and
    /// whether it ended a frame.
    last: Option<(u16, u32, Instant, bool)>,
    /// Layer switches made.
    pub(crate) switches: u64,
}

/// How far behind the newest packet `since_seq` is kept once the stream has moved on: far more
/// than any resend can be late, and well inside the half of the sequence space that counts as
/// "behind" (so the check cannot flip as the numbers wrap).
const SINCE_WINDOW: u16 = 0x1000;

/// Whether `a` is after `b` in 16-bit sequence-number space (RFC 3550 A.1).
fn seq_after_or_at(a: u16, b: u16) -> bool {
    a.wrapping_sub(b) < 0x8000
}

impl LayerSwitch {
    pub(crate) fn new(wanted: Layer) -> Self {
        LayerSwitch {
            wanted,
            capped: false,
            target: wanted,
            current: None,
            seq_offset: 0,
            ts_offset: 0,
            since_seq: 0,
            last: None,
            switches: 0,
        }
    }

    /// The subscriber asks for `layer`; it is switched to at that layer's next key frame.
    pub(crate) fn want(&mut self, layer: Layer) {
        self.wanted = layer;
        self.target = self.ceiling();
    }

    /// Holds the subscriber at the tiny layer (`true`) or lets it have what it asked for again;
    /// the switch happens at the next key frame of the layer, as for [`LayerSwitch::want`].
    pub(crate) fn cap(&mut self, capped: bool) {
        self.capped = capped;
        self.target = self.ceiling();
    }

    /// The best layer the subscriber may have: what it asked for, unless capped.
    fn ceiling(&self) -> Layer {
        if self.capped { Layer::Tiny } else { self.wanted }
    }

    /// The layer a key-frame request for this subscriber must go to: the one it is waiting for,
    /// else the one it gets.
    pub(crate) fn keyframe_layer(&self) -> Layer {
        self.target
    }

    /// Waiting for a key frame of another layer to switch to.
    pub(crate) fn switch_pending(&self) -> bool {
        self.current.is_some_and(|current| current != self.target)
    }

    /// A packet of the stream arrived at `now`: its sequence number and timestamp on the
    /// subscriber's copy, or `None` when it is not forwarded to this subscriber.
    pub(crate) fn on_packet(
        &mut self,
        p: PacketInfo,
        available: Available,
        now: Instant,
    ) -> Option<(u16, u32)> {
        let ceiling = self.ceiling();
        self.target = if available[ceiling.index()] || !available[ceiling.other().index()] {
            ceiling
        } else {
            ceiling.other()
        };
        match self.current {
            Some(current) if current == p.layer => {
                if !seq_after_or_at(p.seq, self.since_seq) {
                    return None;
                }
                // Follow the stream, or after half the sequence space everything would look old.
                if p.seq.wrapping_sub(self.since_seq) > SINCE_WINDOW {
                    self.since_seq = p.seq.wrapping_sub(SINCE_WINDOW);
                }
            }
            Some(current) => {
                // Between two frames of the old layer; or anywhere, once the old layer is gone
                // (stopped in the middle of a frame, it would never reach a boundary).
                let at_boundary =
                    self.last.is_none_or(|(_, _, _, marker)| marker) || !available[current.index()];
                if p.layer != self.target || !p.keyframe_start || !at_boundary {
                    return None;
                }
                self.start(p, now);
                self.switches += 1;
            }
            None => {
                if p.layer != self.target {
                    return None;
                }
                self.start(p, now);
            }
        }
        let seq = p.seq.wrapping_add(self.seq_offset);
        let timestamp = p.timestamp.wrapping_add(self.ts_offset);
        self.last = Some((seq, timestamp, now, p.marker));
        Some((seq, timestamp))
    }

    /// Makes `p`'s layer the current one, continuing the subscriber's numbering after the last
    /// packet forwarded (unchanged numbers for the very first layer).
    fn start(&mut self, p: PacketInfo, now: Instant) {
        if let Some((seq, timestamp, at, _)) = self.last {
            // 90 kHz video clock; at least one tick, so the new frame is a new timestamp.
            let elapsed = now.saturating_duration_since(at).as_micros() * 9 / 100;
            let step = u32::try_from(elapsed).unwrap_or(u32::MAX).max(1);
            self.seq_offset = seq.wrapping_add(1).wrapping_sub(p.seq);
            self.ts_offset = timestamp.wrapping_add(step).wrapping_sub(p.timestamp);
        }
        self.current = Some(p.layer);
        self.since_seq = p.seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Available = [true, true];

    fn packet(layer: Layer, seq: u16, timestamp: u32, marker: bool, keyframe_start: bool) -> PacketInfo {
        PacketInfo { layer, seq, timestamp, marker, keyframe_start }
    }

    #[test]
    fn a_cap_holds_a_full_view_at_the_tiny_layer_until_lifted() {
        let mut s = LayerSwitch::new(Layer::Full);
        let t0 = Instant::now();
        assert!(s.on_packet(packet(Layer::Full, 100, 9000, true, true), BOTH, t0).is_some());
        s.cap(true);
        assert_eq!(s.keyframe_layer(), Layer::Tiny, "a key frame of the tiny layer is asked for");
        assert!(s.on_packet(packet(Layer::Full, 101, 12000, true, false), BOTH, t0).is_some(), "until then");
        assert!(s.on_packet(packet(Layer::Tiny, 7, 12000, false, true), BOTH, t0).is_some(), "switched");
        assert_eq!(s.on_packet(packet(Layer::Full, 102, 15000, true, true), BOTH, t0), None, "held there");
        s.want(Layer::Full);
        assert_eq!(s.keyframe_layer(), Layer::Tiny, "asking again does not lift the cap");
        s.cap(false);
        assert_eq!(s.keyframe_layer(), Layer::Full);
        assert!(s.on_packet(packet(Layer::Tiny, 8, 15000, true, false), BOTH, t0).is_some());
        assert!(s.on_packet(packet(Layer::Full, 103, 18000, false, true), BOTH, t0).is_some(), "back");
        assert_eq!(s.switches, 2);
    }

    #[test]
    fn one_layer_passes_unchanged() {
        let mut s = LayerSwitch::new(Layer::Full);
        let t0 = Instant::now();
        assert_eq!(s.on_packet(packet(Layer::Full, 100, 9000, false, false), BOTH, t0), Some((100, 9000)));
        assert_eq!(s.on_packet(packet(Layer::Tiny, 7, 50, true, true), BOTH, t0), None, "not wanted");
        assert_eq!(s.on_packet(packet(Layer::Full, 101, 9000, true, false), BOTH, t0), Some((101, 9000)));
        assert!(!s.switch_pending());
    }

    #[test]
    fn a_switch_waits_for_a_key_frame_between_frames_and_continues_the_numbering() {
        let mut s = LayerSwitch::new(Layer::Full);
        let t0 = Instant::now();
        assert!(s.on_packet(packet(Layer::Full, 100, 9000, true, true), BOTH, t0).is_some());
        s.want(Layer::Tiny);
        assert!(s.switch_pending());
        assert_eq!(s.keyframe_layer(), Layer::Tiny);
        // An inter frame of the tiny layer: not yet.
        assert_eq!(s.on_packet(packet(Layer::Tiny, 500, 70_000, true, false), BOTH, t0), None);
        // The full layer goes on meanwhile; a frame begins...
        assert_eq!(
            s.on_packet(packet(Layer::Full, 101, 12_000, false, false), BOTH, t0),
            Some((101, 12_000))
        );
        // ...so a tiny key frame now would cut it: wait.
        assert_eq!(s.on_packet(packet(Layer::Tiny, 501, 73_000, true, true), BOTH, t0), None);
        assert_eq!(s.on_packet(packet(Layer::Full, 102, 12_000, true, false), BOTH, t0), Some((102, 12_000)));
        // Between frames, a tiny key frame: switch, numbering continues 40 ms later.
        let t1 = t0 + Duration::from_millis(40);
        assert_eq!(s.on_packet(packet(Layer::Tiny, 510, 76_000, false, true), BOTH, t1), Some((103, 15_600)));
        assert_eq!(s.on_packet(packet(Layer::Tiny, 511, 76_000, true, false), BOTH, t1), Some((104, 15_600)));
        assert_eq!(s.switches, 1);
        assert!(!s.switch_pending());
        // The full layer no longer reaches this subscriber; a late resend of the tiny layer from
        // before the switch does not fit either.
        assert_eq!(s.on_packet(packet(Layer::Full, 103, 15_000, true, true), BOTH, t1), None);
        assert_eq!(s.on_packet(packet(Layer::Tiny, 505, 74_000, true, false), BOTH, t1), None);
        // The next tiny frame keeps its spacing.
        assert_eq!(s.on_packet(packet(Layer::Tiny, 512, 82_000, true, false), BOTH, t1), Some((105, 21_600)));
    }

    #[test]
    fn a_wanted_layer_that_sends_nothing_is_replaced_by_the_other() {
        let mut s = LayerSwitch::new(Layer::Tiny);
        let t0 = Instant::now();
        let full_only = [true, false];
        assert_eq!(s.on_packet(packet(Layer::Full, 1, 10, true, false), full_only, t0), Some((1, 10)));
        assert_eq!(s.keyframe_layer(), Layer::Full);
        // The tiny layer appears: switch to it at its key frame.
        assert_eq!(s.on_packet(packet(Layer::Tiny, 900, 5, true, true), BOTH, t0), Some((2, 11)));
    }

    #[test]
    fn a_layer_that_stops_in_the_middle_of_a_frame_is_left_at_the_next_key_frame() {
        let mut s = LayerSwitch::new(Layer::Tiny);
        let t0 = Instant::now();
        assert!(s.on_packet(packet(Layer::Tiny, 10, 100, true, true), BOTH, t0).is_some());
        // A frame begins, and the tiny layer stops before its end.
        assert!(s.on_packet(packet(Layer::Tiny, 11, 200, false, false), BOTH, t0).is_some());
        // Once it counts as gone, the full layer's key frame is switched to at once.
        assert_eq!(
            s.on_packet(packet(Layer::Full, 500, 9000, true, true), [true, false], t0),
            Some((12, 201))
        );
        assert_eq!(s.switches, 1);
        // While it still counts as sending, that key frame would cut its frame: not yet.
        let mut waiting = LayerSwitch::new(Layer::Tiny);
        assert!(waiting.on_packet(packet(Layer::Tiny, 10, 100, false, true), BOTH, t0).is_some());
        assert_eq!(waiting.on_packet(packet(Layer::Full, 500, 9000, true, true), BOTH, t0), None);
    }

    #[test]
    fn a_layer_is_gone_after_a_second_of_the_other_layer_alone() {
        let mut a = LayerActivity::default();
        assert_eq!(a.on_packet(Layer::Full, 1000), [true, false], "the tiny layer was never seen");
        assert_eq!(a.on_packet(Layer::Tiny, 50), BOTH);
        // The full layer goes on alone: 89,999 ticks later the tiny one still counts...
        assert_eq!(a.on_packet(Layer::Full, 7000), BOTH);
        assert_eq!(a.on_packet(Layer::Full, 7000 + 89_999), BOTH);
        // ...one second of full-layer media after the tiny layer's last packet, it is gone.
        assert_eq!(a.on_packet(Layer::Full, 7000 + 90_000), [true, false]);
        // A late resend from before does not bring it back nor make it look gone longer.
        assert_eq!(a.on_packet(Layer::Full, 6000), [true, false]);
        // It comes back with its next packet.
        assert_eq!(a.on_packet(Layer::Tiny, 100_000), BOTH);
        assert_eq!(a.on_packet(Layer::Full, 200_000), BOTH);
    }

    #[test]
    fn a_pause_of_both_layers_is_not_a_layer_going_away() {
        // Each frame comes as a full packet, then a tiny one, 6,000 ticks apart (15 fps); then
        // nothing arrives for seconds (a starved machine) and the tiny layer happens to come
        // back first, then the full one: neither was ever taken for gone.
        let mut a = LayerActivity::default();
        let mut ts = 0u32;
        for _ in 0..10 {
            assert_eq!(a.on_packet(Layer::Full, ts), [true, ts > 0]);
            assert_eq!(a.on_packet(Layer::Tiny, ts.wrapping_add(7)), BOTH);
            ts += 6000;
        }
        assert_eq!(a.on_packet(Layer::Tiny, ts.wrapping_add(7)), BOTH, "after the pause");
        assert_eq!(a.on_packet(Layer::Tiny, ts.wrapping_add(6007)), BOTH);
        assert_eq!(a.on_packet(Layer::Full, ts), BOTH);
    }

    #[test]
    fn a_long_stream_keeps_flowing_past_wrap_arounds() {
        let mut s = LayerSwitch::new(Layer::Full);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let seq = (i % 65_536) as u16;
            let got = s.on_packet(packet(Layer::Full, seq, i * 10, true, false), BOTH, t0);
            assert_eq!(got, Some((seq, i * 10)), "packet {i}");
        }
        // A resend a little late still fits; one from before the window does not.
        let last = (199_999 % 65_536) as u16;
        assert!(s.on_packet(packet(Layer::Full, last.wrapping_sub(30), 0, true, false), BOTH, t0).is_some());
        assert!(
            s.on_packet(packet(Layer::Full, last.wrapping_sub(20_000), 0, true, false), BOTH, t0).is_none()
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = LayerSwitch::new(Layer::Full);
        let t0 = Instant::now();
        assert!(s.on_packet(packet(Layer::Full, 65_535, u32::MAX, true, true), BOTH, t0).is_some());
        s.want(Layer::Tiny);
        assert_eq!(s.on_packet(packet(Layer::Tiny, 3, 0, true, true), BOTH, t0), Some((0, 0)));
        assert_eq!(s.on_packet(packet(Layer::Tiny, 4, 3000, true, false), BOTH, t0), Some((1, 3000)));
    }
}
