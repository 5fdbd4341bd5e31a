//! VP8 helpers: RTP depacketizing (RFC 7741) and key-frame headers (RFC 6386 §9.1).

use bytes::{Bytes, BytesMut};

use crate::rtp_seq::{RESYNC_AFTER, seq_ahead};

/// Whether a VP8 frame is a key frame (the inverted P bit of the frame tag is 0).
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// Width and height from a VP8 key frame's header, `None` for inter frames or garbage.
///
/// ```
/// // Frame tag (key frame), start code, 320x240.
/// let frame = [0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
/// assert_eq!(callplus_media::vp8::keyframe_dimensions(&frame), Some((320, 240)));
/// ```
pub fn keyframe_dimensions(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || !is_keyframe(frame) || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((width, height))
}

/// Length of the VP8 payload descriptor at the start of an RTP payload, and its S and PID
/// fields; `None` if truncated.
fn descriptor(payload: &[u8]) -> Option<(usize, bool, u8)> {
    let b0 = *payload.first()?;
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    let mut len = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        len += 1;
        if x & 0x80 != 0 {
            let pic = *payload.get(len)?;
            len += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1;
        }
        if x & 0x30 != 0 {
            len += 1;
        }
    }
    (payload.len() >= len).then_some((len, start, pid))
}

/// Reassembles VP8 frames from RTP packets and keeps track of whether they can be decoded.
///
/// A frame is complete when its marker packet arrives and every packet since its start was there
/// in sequence. VP8 inter frames refer to the frames before them, so once anything is lost — a
/// packet inside a frame, whole frames between two (a jump in sequence numbers), or the key frame
/// the stream started with — every later inter frame depends on missing data. Such frames are
/// withheld (a decoder would show garbage or refuse them) until a complete key frame arrives, and
/// [`needs_keyframe`](Self::needs_keyframe) tells the receiver to ask the sender for one (RTCP
/// PLI). Only evidence counts: the first packets of a stream's opening key frame do not make it
/// "need" anything, so a call does not start with a needless request.
///
/// Expects packets in sequence order: the adapter puts them back in order first (its reorder
/// buffer waits for NACK retransmissions), so a gap seen here is data given up. Packets at or
/// behind the newest sequence number seen are ignored: they can no longer be put back in place,
/// and must not break the frame being assembled.
#[derive(Debug, Default)]
pub struct Vp8Depacketizer {
    /// RTP timestamp of the frame being assembled; `None` between frames.
    timestamp: Option<u32>,
    /// Newest sequence number seen.
    newest_seq: Option<u16>,
    buf: BytesMut,
    /// The frame being assembled misses data.
    broken: bool,
    /// A key frame was emitted and nothing was lost since: inter frames can be decoded.
    decodable: bool,
    /// Something was lost or withheld since the last emitted key frame.
    wants_keyframe: bool,
    /// Packets in a row ignored as old (see `rtp_seq::RESYNC_AFTER`).
    stale_run: u16,
}

impl Vp8Depacketizer {
    /// An empty depacketizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream is undecodable until the next key frame, as far as the packets seen so
    /// far show (loss, or inter frames without a key frame before them).
    pub fn needs_keyframe(&self) -> bool {
        self.wants_keyframe
    }

    /// Feeds one RTP packet; returns `(frame, rtp_timestamp)` when a decodable frame completes.
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &[u8]) -> Option<(Bytes, u32)> {
        let mut gap = false;
        if let Some(newest) = self.newest_seq {
            let ahead = seq_ahead(seq, newest);
            if ahead <= 0 {
                self.stale_run = self.stale_run.saturating_add(1);
                if self.stale_run < RESYNC_AFTER {
                    return None;
                }
                // The sender jumped or restarted its numbering: follow it, as after a loss.
                gap = true;
            } else {
                gap = ahead > 1;
            }
        }
        self.stale_run = 0;
        self.newest_seq = Some(seq);
        if gap {
            self.lost();
        }
        if payload.is_empty() {
            // Padding (a sender probing bandwidth without RTX): it only takes a sequence number.
            return None;
        }
        let descriptor = descriptor(payload);
        if self.timestamp != Some(timestamp) {
            if self.timestamp.is_some() {
                // The previous frame never saw its marker packet.
                self.lost();
            }
            self.timestamp = Some(timestamp);
            self.buf.clear();
            self.broken = !matches!(descriptor, Some((_, true, 0)));
        } else if gap {
            self.broken = true;
        }
        match descriptor {
            Some((len, _, _)) if !self.broken => self.buf.extend_from_slice(&payload[len..]),
            Some(_) => {}
            None => self.broken = true,
        }
        if !marker {
            return None;
        }
        self.timestamp = None;
        let frame = std::mem::take(&mut self.buf).freeze();
        if self.broken || frame.is_empty() {
            self.lost();
            return None;
        }
        if is_keyframe(&frame) {
            self.decodable = true;
            self.wants_keyframe = false;
        } else if !self.decodable {
            self.wants_keyframe = true;
            return None;
        }
        Some((frame, timestamp))
    }

    /// Data was lost: nothing after it decodes until a key frame.
    fn lost(&mut self) {
        self.decodable = false;
        self.wants_keyframe = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptor of a first packet (S bit, partition 0) and of a continuation packet.
    const START: u8 = 0x10;
    const CONT: u8 = 0x00;
    /// First payload bytes of a key frame (P bit 0) and of an inter frame (P bit 1).
    const KEY: u8 = 0x50;
    const INTER: u8 = 0x51;

    fn frame(d: &mut Vp8Depacketizer, first_seq: u16, ts: u32, key: bool, packets: u16) -> Option<Vec<u8>> {
        let mut out = None;
        for i in 0..packets {
            let marker = i + 1 == packets;
            let payload = match (i, key) {
                (0, true) => vec![START, KEY],
                (0, false) => vec![START, INTER],
                _ => vec![CONT, i as u8],
            };
            out = d.push(first_seq.wrapping_add(i), ts, marker, &payload).map(|(f, _)| f.to_vec());
        }
        out
    }

    #[test]
    fn reassembles_across_packets_and_descriptor_extensions() {
        let mut d = Vp8Depacketizer::new();
        // Start packet with extended picture id (X, I, M): 4-byte descriptor.
        assert_eq!(d.push(10, 900, false, &[0x90, 0x80, 0x81, 0x02, KEY, 2]), None);
        let (frame, ts) = d.push(11, 900, true, &[0x80, 0x80, 0x81, 0x02, 3]).unwrap_or_default();
        assert_eq!((&frame[..], ts), (&[KEY, 2, 3][..], 900));
        assert!(!d.needs_keyframe());
        assert_eq!(frame_of(&mut d, 12, 1800, false), Some(vec![INTER, 1]));
    }

    fn frame_of(d: &mut Vp8Depacketizer, seq: u16, ts: u32, key: bool) -> Option<Vec<u8>> {
        frame(d, seq, ts, key, 2)
    }

    #[test]
    fn the_opening_key_frame_is_not_a_loss() {
        let mut d = Vp8Depacketizer::new();
        assert_eq!(d.push(100, 0, false, &[START, KEY]), None);
        assert!(!d.needs_keyframe(), "half a key frame is not evidence of loss");
        assert!(d.push(101, 0, true, &[CONT, 1]).is_some());
        assert!(!d.needs_keyframe());
    }

    #[test]
    fn inter_frames_before_any_key_frame_are_withheld_and_ask_for_one() {
        let mut d = Vp8Depacketizer::new();
        assert_eq!(frame_of(&mut d, 1, 0, false), None);
        assert!(d.needs_keyframe());
        assert_eq!(frame_of(&mut d, 3, 3000, false), None);
        assert!(frame_of(&mut d, 5, 6000, true).is_some());
        assert!(!d.needs_keyframe());
        assert!(frame_of(&mut d, 7, 9000, false).is_some());
    }

    #[test]
    fn a_gap_inside_a_frame_breaks_it_and_the_frames_after_it() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame(&mut d, 10, 0, true, 3).is_some());
        // Inter frame 13..=15 loses 14.
        assert_eq!(d.push(13, 3000, false, &[START, INTER]), None);
        assert_eq!(d.push(15, 3000, true, &[CONT, 2]), None);
        assert!(d.needs_keyframe());
        // The next inter frame arrives whole but refers to the broken one.
        assert_eq!(frame_of(&mut d, 16, 6000, false), None);
        assert!(d.needs_keyframe());
        assert!(frame_of(&mut d, 18, 9000, true).is_some());
        assert!(!d.needs_keyframe());
    }

    #[test]
    fn a_whole_frame_lost_between_two_breaks_the_chain() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame_of(&mut d, 0, 0, true).is_some());
        // Packets 2 and 3 (a whole frame) never arrive.
        assert_eq!(frame_of(&mut d, 4, 6000, false), None);
        assert!(d.needs_keyframe());
    }

    #[test]
    fn a_frame_that_never_ends_breaks_the_chain() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame_of(&mut d, 0, 0, true).is_some());
        // Frame 3000 gets no marker packet; packet 3 already starts the next frame.
        assert_eq!(d.push(2, 3000, false, &[START, INTER]), None);
        assert_eq!(frame_of(&mut d, 3, 6000, false), None);
        assert!(d.needs_keyframe());
    }

    #[test]
    fn starting_mid_frame_is_a_loss() {
        let mut d = Vp8Depacketizer::new();
        assert_eq!(d.push(20, 2700, true, &[CONT, 6]), None);
        assert!(d.needs_keyframe());
        assert_eq!(d.push(21, 3600, true, &[START, KEY]).map(|f| f.0.to_vec()), Some(vec![KEY]));
        assert!(!d.needs_keyframe());
        // A payload without a valid descriptor: broken.
        assert_eq!(d.push(22, 4500, true, &[0x80]), None);
        assert!(d.needs_keyframe());
    }

    #[test]
    fn padding_between_frames_breaks_nothing() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame_of(&mut d, 100, 0, true).is_some());
        // Padding-only packets (empty payload once the padding is stripped) take 102 and 103.
        assert_eq!(d.push(102, 0, false, &[]), None);
        assert_eq!(d.push(103, 0, false, &[]), None);
        assert_eq!(d.push(104, 3000, true, &[START, INTER]).map(|f| f.0.to_vec()), Some(vec![INTER]));
        assert!(!d.needs_keyframe());
    }

    #[test]
    fn a_sender_that_jumps_half_the_space_is_followed_after_a_key_frame() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame_of(&mut d, 100, 0, true).is_some());
        // Numbers 40000 and up look older than 101: ignored, until a run of them shows the jump.
        for i in 0..RESYNC_AFTER - 1 {
            assert_eq!(d.push(40_000 + i, 3000 + u32::from(i), true, &[START, INTER]), None);
        }
        assert!(!d.needs_keyframe(), "not yet taken for a jump");
        let seq = 40_000 + RESYNC_AFTER;
        assert_eq!(d.push(seq, 900_000, true, &[START, INTER]), None, "after the jump, data is missing");
        assert!(d.needs_keyframe());
        let key = d.push(seq + 1, 903_000, true, &[START, KEY]).map(|f| f.0.to_vec());
        assert_eq!(key, Some(vec![KEY]), "the key frame asked for is taken");
    }

    #[test]
    fn late_and_duplicate_packets_are_ignored_without_breaking_the_frame() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame_of(&mut d, 100, 0, true).is_some());
        assert_eq!(d.push(102, 3000, false, &[START, INTER]), None);
        // A late retransmission of packet 101 and a duplicate of 102.
        assert_eq!(d.push(101, 0, true, &[CONT, 9]), None);
        assert_eq!(d.push(102, 3000, false, &[START, INTER]), None);
        assert_eq!(d.push(103, 3000, true, &[CONT, 1]).map(|f| f.0.to_vec()), Some(vec![INTER, 1]));
        assert!(!d.needs_keyframe());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut d = Vp8Depacketizer::new();
        assert!(frame(&mut d, 65_534, 0, true, 2).is_some());
        assert!(frame(&mut d, 0, 3000, false, 2).is_some());
        assert!(!d.needs_keyframe());
        // 65535 -> 1 across the wrap is a gap of one packet.
        let mut d = Vp8Depacketizer::new();
        assert!(frame(&mut d, 65_534, 0, true, 2).is_some());
        assert_eq!(frame(&mut d, 1, 3000, false, 2), None);
        assert!(d.needs_keyframe());
    }
}
