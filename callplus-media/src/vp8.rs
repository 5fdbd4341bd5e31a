//! VP8 helpers: RTP depacketizing (RFC 7741) and key-frame headers (RFC 6386 §9.1).

use bytes::{Bytes, BytesMut};

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

/// Reassembles VP8 frames from RTP packets. A frame is emitted when its marker packet arrives
/// and every packet since its start was there in sequence; incomplete frames are dropped.
#[derive(Debug, Default)]
pub struct Vp8Depacketizer {
    timestamp: Option<u32>,
    next_seq: u16,
    buf: BytesMut,
    broken: bool,
}

impl Vp8Depacketizer {
    /// An empty depacketizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one RTP packet; returns `(frame, rtp_timestamp)` when a frame completes.
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &[u8]) -> Option<(Bytes, u32)> {
        let Some((len, start, pid)) = descriptor(payload) else {
            self.broken = true;
            return None;
        };
        let data = &payload[len..];
        if self.timestamp != Some(timestamp) {
            self.timestamp = Some(timestamp);
            self.buf.clear();
            self.broken = !(start && pid == 0);
        } else if seq != self.next_seq {
            self.broken = true;
        }
        self.next_seq = seq.wrapping_add(1);
        if !self.broken {
            self.buf.extend_from_slice(data);
        }
        if marker {
            let complete = !self.broken && !self.buf.is_empty();
            self.timestamp = None;
            let frame = std::mem::take(&mut self.buf).freeze();
            return complete.then_some((frame, timestamp));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_and_drops_gaps() {
        let mut d = Vp8Depacketizer::new();
        // Start packet with extended picture id (X, I, M): 4-byte descriptor.
        assert_eq!(d.push(10, 900, false, &[0x90, 0x80, 0x81, 0x02, 1, 2]), None);
        let (frame, ts) = d.push(11, 900, true, &[0x80, 0x80, 0x81, 0x02, 3]).unwrap_or_default();
        assert_eq!((&frame[..], ts), (&[1u8, 2, 3][..], 900));
        // Gap: packet 13 missing 12.
        assert_eq!(d.push(12, 1800, false, &[0x10, 4]), None);
        assert_eq!(d.push(14, 1800, true, &[0x00, 5]), None);
        // Starting mid-frame is dropped.
        assert_eq!(d.push(20, 2700, true, &[0x00, 6]), None);
        assert_eq!(d.push(21, 3600, true, &[0x10, 7]).map(|f| f.0.to_vec()), Some(vec![7]));
        assert_eq!(d.push(22, 4500, true, &[]), None);
    }
}
