//! The one thing the SFU reads inside a VP8 RTP payload (RFC 7741): whether a packet starts a
//! key frame. A subscriber may only be moved to another simulcast layer at such a packet: VP8
//! inter frames refer to frames of their own layer, so anything else would not decode.

/// Whether `payload` (a VP8 RTP payload: descriptor, then the frame's bytes) is the first packet
/// of a key frame: the descriptor's S bit set with partition index 0, and the frame tag's
/// inverted key-frame bit clear (RFC 6386 §9.1). Truncated payloads are not.
pub(crate) fn starts_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else { return false };
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return false;
    }
    let mut len = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(1) else { return false };
        len += 1;
        if x & 0x80 != 0 {
            let Some(&pic) = payload.get(len) else { return false };
            len += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1;
        }
        if x & 0x30 != 0 {
            len += 1;
        }
    }
    payload.get(len).is_some_and(|tag| tag & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_frame_starts_are_told_from_the_rest() {
        // S=1, PID=0, no extensions; frame tag 0x50 (key frame).
        assert!(starts_keyframe(&[0x10, 0x50, 0x02, 0x00]));
        // Same with an inter frame's tag.
        assert!(!starts_keyframe(&[0x10, 0x51, 0x02, 0x00]));
        // A continuation packet of a key frame (S=0).
        assert!(!starts_keyframe(&[0x00, 0x50]));
        // Extended: X, I with a 15-bit picture id, then the key-frame tag.
        assert!(starts_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x50]));
        assert!(!starts_keyframe(&[0x90, 0x80, 0x81]), "truncated");
        assert!(!starts_keyframe(&[]));
    }
}
