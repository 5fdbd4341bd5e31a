//! A receive-side reorder buffer: puts RTP packets back in sequence-number order and waits a
//! little for the missing ones, so that NACK retransmissions can repair a video stream.
//!
//! The stack's NACK generator asks the sender to resend a lost packet, and the resend arrives
//! *after* newer packets. A depacketizer fed in arrival order would already have given the frame
//! up (and asked for a key frame, see `pli_pacer`). This buffer holds the packets behind a gap
//! until the missing one arrives or the gap's deadline passes; then the gap is given up and the
//! packets behind it are released, so that the depacketizer sees the hole and its loss handling
//! (withhold, PLI) takes over.
//!
//! Sans-IO: time is an argument. The driver [`push`](ReorderBuffer::push)es every packet,
//! drains [`poll`](ReorderBuffer::poll) until `None`, and wakes itself at
//! [`next_deadline`](ReorderBuffer::next_deadline) to drain again.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::rtp_seq::{RESYNC_AFTER, seq_ahead};

/// Least time a gap is waited for: the NACK has to go out and the resend come back, and both
/// sides' drivers have to run in between.
pub(crate) const MIN_WAIT: Duration = Duration::from_millis(50);
/// Longest wait for a gap, whatever the RTT: beyond this, a key frame (PLI) costs less than the
/// freeze of waiting.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(200);
/// How often our NACK generator lists the missing packets (see `webrtc::codecs`): a gap is asked
/// for at most this long after it was noticed, so the wait covers it on top of the round trip.
pub(crate) const NACK_INTERVAL: Duration = Duration::from_millis(20);
/// Round-trip time assumed before the first measurement: generous, a call's first gaps are
/// better waited for than turned into key frames.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(100);
/// Most packets held at once, and the widest span of sequence numbers waited on. About a second
/// of 2 Mbit/s video; beyond it the oldest gaps are given up.
pub(crate) const CAPACITY: u16 = 256;

/// How long to wait for a missing packet: 1.5 round trips (the NACK's way there, the resend's
/// way back, some slack), at least [`MIN_WAIT`], plus the NACK generator's interval, at most
/// [`MAX_WAIT`].
pub(crate) fn max_wait(rtt: Option<Duration>) -> Duration {
    let round_trips = rtt.unwrap_or(DEFAULT_RTT).mul_f64(1.5).max(MIN_WAIT);
    (round_trips + NACK_INTERVAL).min(MAX_WAIT)
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Taken: released now or held behind a gap.
    Accepted,
    /// Already held: dropped.
    Duplicate,
    /// Behind what was already released (or given up): dropped.
    Late,
}

/// Packets that filled a gap in time vs packets given up, since last taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReorderCounts {
    /// Packets that arrived after a newer one and were still put in place (a retransmission
    /// answering our NACK, or plain reordering).
    pub(crate) recovered: u32,
    /// Missing packets given up (deadline passed, or the buffer overflowed).
    pub(crate) lost: u32,
}

struct Held<T> {
    item: T,
    arrived: Instant,
}

/// Releases items in RTP sequence-number order (16-bit, wrapping), holding those behind a gap
/// until it fills or its deadline passes.
pub(crate) struct ReorderBuffer<T> {
    max_wait: Duration,
    /// Extended sequence number of the next item to release; `None` before the first one.
    next: Option<u64>,
    /// Packets in a row refused as late (see [`RESYNC_AFTER`]).
    late_run: u16,
    held: BTreeMap<u64, Held<T>>,
    ready: VecDeque<T>,
    counts: ReorderCounts,
}

/// Where the first packet's sequence number is placed in the extended (unwrapped) space, so
/// that "behind" never underflows.
const EXTENDED_BASE: u64 = 1 << 32;

impl<T> ReorderBuffer<T> {
    /// An empty buffer that waits `max_wait` for a gap (see [`max_wait`]).
    pub(crate) fn new(max_wait: Duration) -> Self {
        ReorderBuffer {
            max_wait,
            next: None,
            late_run: 0,
            held: BTreeMap::new(),
            ready: VecDeque::new(),
            counts: ReorderCounts::default(),
        }
    }

    /// Changes the wait for gaps (the RTT estimate moved); applies to gaps already waited on.
    pub(crate) fn set_max_wait(&mut self, max_wait: Duration) {
        self.max_wait = max_wait;
    }

    /// Takes one packet with sequence number `seq`, arrived at `now`.
    pub(crate) fn push(&mut self, seq: u16, item: T, now: Instant) -> Pushed {
        let next = *self.next.get_or_insert(EXTENDED_BASE + u64::from(seq));
        let delta = seq_ahead(seq, next as u16);
        if delta < 0 {
            self.late_run = self.late_run.saturating_add(1);
            if self.late_run < RESYNC_AFTER {
                return Pushed::Late;
            }
            // The sender jumped (or restarted): what is held goes out, and this packet starts
            // the stream's numbering afresh.
            self.ready.extend(std::mem::take(&mut self.held).into_values().map(|held| held.item));
            self.next = None;
            self.late_run = 0;
            return self.push(seq, item, now);
        }
        self.late_run = 0;
        let ext = next + delta as u64;
        if self.held.contains_key(&ext) {
            return Pushed::Duplicate;
        }
        // A newer packet is still held only when this one arrived after it (a newer one that was
        // already released would have made this one late).
        if self.held.last_key_value().is_some_and(|(&newest, _)| newest > ext) {
            self.counts.recovered = self.counts.recovered.saturating_add(1);
        }
        let span = u64::from(CAPACITY);
        if ext >= next + span {
            // Too far ahead to keep waiting on the oldest gaps: give them up.
            self.skip_to(ext + 1 - span);
        }
        // The span bounds the number held too: at most CAPACITY.
        self.held.insert(ext, Held { item, arrived: now });
        self.release_run();
        Pushed::Accepted
    }

    /// The next item in order, if one may go now: the one after the last released, or, once the
    /// gap before the held ones has waited out its deadline, the first held (the gap is lost).
    #[must_use]
    pub(crate) fn poll(&mut self, now: Instant) -> Option<T> {
        if self.ready.is_empty()
            && self.next_deadline().is_some_and(|deadline| now >= deadline)
            && let Some(&first) = self.held.keys().next()
        {
            self.skip_to(first);
            self.release_run();
        }
        self.ready.pop_front()
    }

    /// When the current gap is given up: `max_wait` after the first packet behind it arrived.
    /// `None` when nothing waits. Drain [`poll`](Self::poll) before asking.
    #[must_use]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.held.values().map(|h| h.arrived).min().map(|noticed| noticed + self.max_wait)
    }

    /// Takes the counts since the last call.
    pub(crate) fn take_counts(&mut self) -> ReorderCounts {
        std::mem::take(&mut self.counts)
    }

    /// Gives up every missing packet before `target`, releasing the held ones in order. Costs
    /// what is held, not the width of the jump: a peer jumping far ahead on every packet must
    /// not buy a loop of thousands of steps each time.
    fn skip_to(&mut self, target: u64) {
        let Some(next) = self.next else { return };
        if target <= next {
            return;
        }
        let rest = self.held.split_off(&target);
        let before = std::mem::replace(&mut self.held, rest);
        let missing = (target - next).saturating_sub(before.len() as u64);
        self.counts.lost = self.counts.lost.saturating_add(u32::try_from(missing).unwrap_or(u32::MAX));
        self.ready.extend(before.into_values().map(|held| held.item));
        self.next = Some(target);
    }

    /// Moves the consecutive held packets from `next` on to the ready queue.
    fn release_run(&mut self) {
        let Some(mut next) = self.next else { return };
        while let Some(held) = self.held.remove(&next) {
            self.ready.push_back(held.item);
            next += 1;
        }
        self.next = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const WAIT: Duration = Duration::from_millis(100);

    fn drain(b: &mut ReorderBuffer<u16>, now: Instant) -> Vec<u16> {
        std::iter::from_fn(|| b.poll(now)).collect()
    }

    #[test]
    fn in_order_packets_pass_straight_through() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        for seq in 100..110u16 {
            assert_eq!(b.push(seq, seq, t0), Pushed::Accepted);
            assert_eq!(drain(&mut b, t0), vec![seq]);
            assert_eq!(b.next_deadline(), None, "nothing waits");
        }
        assert_eq!(b.take_counts(), ReorderCounts::default());
    }

    #[test]
    fn a_late_packet_is_put_back_in_place() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(1, 1, t0);
        assert_eq!(drain(&mut b, t0), vec![1]);
        // 2 is missing: 3 and 4 wait for it.
        b.push(3, 3, t0 + ms(5));
        b.push(4, 4, t0 + ms(6));
        assert_eq!(drain(&mut b, t0 + ms(6)), Vec::<u16>::new());
        assert_eq!(b.next_deadline(), Some(t0 + ms(5) + WAIT));
        // The retransmission comes before the deadline.
        assert_eq!(b.push(2, 2, t0 + ms(40)), Pushed::Accepted);
        assert_eq!(drain(&mut b, t0 + ms(40)), vec![2, 3, 4]);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.take_counts(), ReorderCounts { recovered: 1, lost: 0 });
        assert_eq!(b.take_counts(), ReorderCounts::default(), "counts are taken");
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(65_534, 65_534, t0);
        b.push(0, 0, t0);
        b.push(1, 1, t0);
        assert_eq!(drain(&mut b, t0), vec![65_534], "65535 is missing");
        b.push(65_535, 65_535, t0);
        assert_eq!(drain(&mut b, t0), vec![65_535, 0, 1]);
        assert_eq!(b.push(65_533, 65_533, t0), Pushed::Late, "behind the wrap is still behind");
    }

    #[test]
    fn a_gap_is_given_up_at_its_deadline() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(10, 10, t0);
        b.push(13, 13, t0 + ms(10));
        b.push(14, 14, t0 + ms(20));
        let _ = drain(&mut b, t0 + ms(20));
        let deadline = t0 + ms(10) + WAIT;
        assert_eq!(b.next_deadline(), Some(deadline));
        assert_eq!(drain(&mut b, deadline - ms(1)), Vec::<u16>::new(), "still waiting");
        // 11 and 12 never come: released with the hole, which the depacketizer sees.
        assert_eq!(drain(&mut b, deadline), vec![13, 14]);
        assert_eq!(b.take_counts(), ReorderCounts { recovered: 0, lost: 2 });
        // The retransmission that comes too late is dropped.
        assert_eq!(b.push(11, 11, deadline + ms(1)), Pushed::Late);
        b.push(15, 15, deadline + ms(2));
        assert_eq!(drain(&mut b, deadline + ms(2)), vec![15]);
    }

    #[test]
    fn the_next_gap_waits_from_when_it_was_noticed() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(1, 1, t0);
        b.push(3, 3, t0 + ms(10)); // 2 missing
        b.push(5, 5, t0 + ms(50)); // 4 missing
        let _ = drain(&mut b, t0 + ms(50));
        assert_eq!(drain(&mut b, t0 + ms(110)), vec![3], "2 given up, 4 still waited for");
        assert_eq!(b.next_deadline(), Some(t0 + ms(150)));
        b.set_max_wait(ms(60));
        assert_eq!(b.next_deadline(), Some(t0 + ms(110)), "a new RTT estimate applies at once");
        assert_eq!(drain(&mut b, t0 + ms(110)), vec![5]);
        assert_eq!(b.take_counts().lost, 2);
    }

    #[test]
    fn duplicates_and_old_packets_are_dropped() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(20, 20, t0);
        b.push(22, 22, t0);
        assert_eq!(b.push(22, 99, t0), Pushed::Duplicate, "held twice");
        assert_eq!(b.push(20, 20, t0), Pushed::Late, "already released");
        assert_eq!(b.push(19, 19, t0), Pushed::Late, "older than anything released");
        b.push(21, 21, t0);
        assert_eq!(drain(&mut b, t0), vec![20, 21, 22]);
        assert_eq!(b.push(21, 21, t0), Pushed::Late);
        assert_eq!(b.take_counts(), ReorderCounts { recovered: 1, lost: 0 });
    }

    #[test]
    fn overflow_gives_up_the_oldest_gaps() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(0, 0, t0);
        let _ = drain(&mut b, t0);
        // 1 is missing; 2..=256 fill the buffer while it is waited for.
        for seq in 2..=CAPACITY {
            b.push(seq, seq, t0);
        }
        assert_eq!(drain(&mut b, t0), Vec::<u16>::new(), "still within the span");
        // One more: the span would exceed CAPACITY, so 1 is given up before the deadline.
        b.push(CAPACITY + 1, CAPACITY + 1, t0);
        let out = drain(&mut b, t0);
        assert_eq!(out, (2..=CAPACITY + 1).collect::<Vec<_>>());
        assert_eq!(b.take_counts(), ReorderCounts { recovered: 0, lost: 1 });
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_jump_far_ahead_flushes_what_is_held() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(0, 0, t0);
        b.push(2, 2, t0);
        b.push(3, 3, t0);
        assert_eq!(drain(&mut b, t0), vec![0]);
        b.push(1000, 1000, t0);
        assert_eq!(drain(&mut b, t0), vec![2, 3], "held packets go out at once, in order");
        // 1000 waits for the rest of its gap, the part within the span.
        assert_eq!(b.next_deadline(), Some(t0 + WAIT));
        assert_eq!(drain(&mut b, t0 + WAIT), vec![1000]);
        assert_eq!(b.take_counts().lost, 1 + (999 - 3), "1 and 4..=999");
    }

    #[test]
    fn a_sender_that_jumps_half_the_space_is_followed_again() {
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        b.push(0, 0, t0);
        b.push(2, 2, t0);
        assert_eq!(drain(&mut b, t0), vec![0]);
        // 40000 and after look older than 1: refused, until a run of them shows the jump.
        let jumped: Vec<u16> = (40_000..40_000 + RESYNC_AFTER).collect();
        for &seq in &jumped[..usize::from(RESYNC_AFTER) - 1] {
            assert_eq!(b.push(seq, seq, t0), Pushed::Late);
        }
        let last = jumped[usize::from(RESYNC_AFTER) - 1];
        assert_eq!(b.push(last, last, t0), Pushed::Accepted);
        assert_eq!(drain(&mut b, t0), vec![2, last], "what was held, then the new numbering");
        assert_eq!(b.push(last + 1, last + 1, t0), Pushed::Accepted);
        assert_eq!(drain(&mut b, t0), vec![last + 1]);
    }

    #[test]
    fn jumping_far_ahead_on_every_packet_costs_what_is_held_not_the_jump() {
        // Each packet 30000 ahead of the last gives up ~30000 numbers; the count must say so
        // (it is computed, not walked: a walk would take 30000 steps per packet).
        let mut b = ReorderBuffer::new(WAIT);
        let t0 = Instant::now();
        let mut seq = 0u16;
        b.push(seq, seq, t0);
        let _ = drain(&mut b, t0);
        for _ in 0..1000 {
            seq = seq.wrapping_add(30_000);
            assert_eq!(b.push(seq, seq, t0), Pushed::Accepted);
        }
        let _ = drain(&mut b, t0 + WAIT);
        assert!(b.take_counts().lost >= 999 * (30_000 - u32::from(CAPACITY)));
    }

    #[test]
    fn the_wait_follows_the_rtt_within_bounds() {
        assert_eq!(max_wait(Some(ms(1))), MIN_WAIT + NACK_INTERVAL);
        assert_eq!(max_wait(Some(ms(60))), ms(90) + NACK_INTERVAL);
        assert_eq!(max_wait(Some(ms(500))), MAX_WAIT);
        assert_eq!(max_wait(None), ms(150) + NACK_INTERVAL);
    }
}
