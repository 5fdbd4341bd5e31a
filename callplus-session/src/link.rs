//! The reliable-delivery layer of the signalling stream: sequence numbers, acks and resume.
//!
//! Each side numbers the frames it must not lose (1, 2, 3 …) and keeps them in an [`Outbox`]
//! until the other side acks them; each side runs an [`Inbox`] that accepts frames in order
//! exactly once (dropping duplicates, holding early frames until the gap before them fills).
//! When a connection breaks and the device reconnects with the last seq it received, the
//! sender replays exactly the frames after it. Both the server's per-device sessions and the
//! client engine use this.

use std::collections::{BTreeMap, VecDeque};

/// Frames sent and not yet acknowledged, in seq order.
#[derive(Debug, Clone)]
pub struct Outbox<T> {
    next_seq: u64,
    unacked: VecDeque<(u64, T)>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox { next_seq: 1, unacked: VecDeque::new() }
    }
}

/// A resume asked for frames the sender no longer has (they were acknowledged earlier, so the
/// peer claims less than it already confirmed), or claims frames that were never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot resume from seq {requested}: frames {first_kept}..{next} are kept")]
pub struct ResumeGap {
    /// The seq the peer says it has.
    pub requested: u64,
    /// The oldest seq still kept.
    pub first_kept: u64,
    /// The next seq to be assigned.
    pub next: u64,
}

impl<T> Outbox<T> {
    /// An empty outbox whose first frame will get seq 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Assigns the next seq to `item`, keeps it until acked, and returns the seq.
    pub fn push(&mut self, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((seq, item));
        seq
    }

    /// Drops every frame with seq ≤ `ack` and hands them to `on_acked` (oldest first). Acks for
    /// frames never sent are clamped, so a lying peer cannot make the outbox skip frames.
    pub fn ack(&mut self, ack: u64, mut on_acked: impl FnMut(u64, T)) {
        while let Some((seq, _)) = self.unacked.front() {
            if *seq > ack {
                break;
            }
            if let Some((seq, item)) = self.unacked.pop_front() {
                on_acked(seq, item);
            }
        }
    }

    /// The frames the peer has not received, given the last seq it says it received in order.
    pub fn replay_after(&self, last_received: u64) -> Result<impl Iterator<Item = (u64, &T)>, ResumeGap> {
        let first_kept = self.unacked.front().map_or(self.next_seq, |(seq, _)| *seq);
        if last_received + 1 < first_kept || last_received >= self.next_seq {
            return Err(ResumeGap { requested: last_received, first_kept, next: self.next_seq });
        }
        Ok(self.unacked.iter().filter(move |(seq, _)| *seq > last_received).map(|(seq, item)| (*seq, item)))
    }

    /// Number of frames awaiting an ack.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Whether every frame sent was acked.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// The seq the next pushed frame will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The frames awaiting an ack, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &T)> {
        self.unacked.iter().map(|(seq, item)| (*seq, item))
    }
}

/// What the inbox made of one received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received<T> {
    /// These frames are now deliverable, in order (the one received and any held ones that
    /// followed it).
    Deliver(Vec<T>),
    /// Already delivered (a duplicate); drop it.
    Duplicate,
    /// Ahead of a gap; held until the frames before it arrive.
    Held,
    /// Ahead of a gap and the hold buffer is full; dropped (the sender will replay it).
    Dropped,
}

/// Accepts numbered frames in order, exactly once.
#[derive(Debug, Clone)]
pub struct Inbox<T> {
    last_in_order: u64,
    held: BTreeMap<u64, T>,
    max_held: usize,
}

impl<T> Inbox<T> {
    /// An inbox expecting seq 1 that holds at most `max_held` early frames.
    pub fn new(max_held: usize) -> Self {
        Inbox { last_in_order: 0, held: BTreeMap::new(), max_held }
    }

    /// An inbox that continues after `last_in_order` (used when resuming).
    pub fn resume_at(last_in_order: u64, max_held: usize) -> Self {
        Inbox { last_in_order, held: BTreeMap::new(), max_held }
    }

    /// The highest seq received in order: the value to put in `ack`.
    pub fn last_in_order(&self) -> u64 {
        self.last_in_order
    }

    /// Takes one received frame.
    pub fn receive(&mut self, seq: u64, item: T) -> Received<T> {
        if seq <= self.last_in_order || self.held.contains_key(&seq) {
            return Received::Duplicate;
        }
        if seq != self.last_in_order + 1 {
            if self.held.len() >= self.max_held {
                return Received::Dropped;
            }
            self.held.insert(seq, item);
            return Received::Held;
        }
        let mut out = vec![item];
        self.last_in_order = seq;
        while let Some(next) = self.held.remove(&(self.last_in_order + 1)) {
            out.push(next);
            self.last_in_order += 1;
        }
        Received::Deliver(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_replays_only_unacked_frames() {
        let mut out = Outbox::new();
        for item in ["a", "b", "c", "d"] {
            out.push(item);
        }
        let mut acked = Vec::new();
        out.ack(2, |seq, item| acked.push((seq, item)));
        assert_eq!(acked, vec![(1, "a"), (2, "b")]);
        let replay: Vec<_> =
            out.replay_after(2).map(|it| it.map(|(s, i)| (s, *i)).collect()).unwrap_or_default();
        assert_eq!(replay, vec![(3, "c"), (4, "d")]);
        let replay: Vec<_> = out.replay_after(3).map(|it| it.map(|(s, _)| s).collect()).unwrap_or_default();
        assert_eq!(replay, vec![4]);
        assert!(out.replay_after(0).is_err(), "frames 1-2 were acked and are gone");
        assert!(out.replay_after(9).is_err(), "seq 9 was never sent");
    }

    #[test]
    fn ack_beyond_sent_is_clamped() {
        let mut out = Outbox::new();
        out.push(1);
        out.ack(100, |_, _| {});
        assert!(out.is_empty());
        assert_eq!(out.push(2), 2);
    }

    #[test]
    fn inbox_reorders_and_drops_duplicates() {
        let mut inbox = Inbox::new(8);
        assert_eq!(inbox.receive(2, "b"), Received::Held);
        assert_eq!(inbox.receive(2, "b"), Received::Duplicate);
        assert_eq!(inbox.receive(1, "a"), Received::Deliver(vec!["a", "b"]));
        assert_eq!(inbox.receive(1, "a"), Received::Duplicate);
        assert_eq!(inbox.last_in_order(), 2);
        assert_eq!(inbox.receive(3, "c"), Received::Deliver(vec!["c"]));
    }

    #[test]
    fn inbox_hold_buffer_is_bounded() {
        let mut inbox = Inbox::new(1);
        assert_eq!(inbox.receive(3, 3), Received::Held);
        assert_eq!(inbox.receive(4, 4), Received::Dropped);
        assert_eq!(inbox.receive(2, 2), Received::Dropped);
        assert_eq!(inbox.receive(1, 1), Received::Deliver(vec![1]));
    }
}
