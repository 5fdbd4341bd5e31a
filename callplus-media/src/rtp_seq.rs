//! RTP sequence numbers: 16 bits that wrap, compared within half the number space (RFC 3550
//! A.1), and how long a run of packets that look old it takes to believe the sender jumped.

/// How far `seq` is ahead of `of` (negative: behind), taking the shorter way around the wrap.
pub(crate) fn seq_ahead(seq: u16, of: u16) -> i16 {
    seq.wrapping_sub(of) as i16
}

/// Packets in a row that all look older than the stream's position before that position is
/// dropped and taken up again from the new numbers. A sender that restarts its numbering, or
/// jumps by half the space or more, would otherwise be ignored for good; reordering and late
/// resends never come close to this many in a row.
pub(crate) const RESYNC_AFTER: u16 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_and_behind_across_the_wrap() {
        assert_eq!(seq_ahead(5, 3), 2);
        assert_eq!(seq_ahead(3, 5), -2);
        assert_eq!(seq_ahead(1, 65_535), 2);
        assert_eq!(seq_ahead(65_535, 1), -2);
        assert!(seq_ahead(40_000, 0) < 0, "a jump of more than half the space looks like the past");
    }
}
