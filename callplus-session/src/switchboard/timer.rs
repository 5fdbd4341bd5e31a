//! The switchboard's timer queue: a min-heap of deadlines with lazy cancellation.
//!
//! Nothing is ever removed from the heap early. Each entry names what it is for, and the owner
//! keeps the deadline that is currently valid (a session's `timer_at`, a participant's
//! `ring_deadline`, a transaction's seq, an ended call's end time); an entry that no longer
//! matches is simply dropped when it comes due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::call::SessionKey;
use crate::model::ids::CallId;

/// What a timer entry is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A session's liveness check or, once stale, its resume window.
    Session(SessionKey),
    /// Ring timeout of one participant (index) of a call.
    Ring(CallId, usize),
    /// Timeout of a change-media-type transaction (by seq).
    Change(CallId, u64),
    /// An ended call is forgotten (GetCall no longer finds it).
    Retention(CallId),
    /// Participant (index) of an SFU call whose media connection failed must be back by now.
    MediaLost(CallId, usize),
}

/// Entries are ordered by deadline, then by insertion (a unique number), so the heap never
/// compares the timers themselves and equal deadlines fire in the order they were set.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(i64, u64, Timer)>>,
    next: u64,
}

impl Timers {
    pub(super) fn set(&mut self, at: i64, timer: Timer) {
        self.next += 1;
        self.heap.push(Reverse((at, self.next, timer)));
    }

    /// The earliest deadline (possibly of a stale entry, which then fires harmlessly).
    pub(super) fn next(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the earliest entry due at `now`.
    pub(super) fn pop_due(&mut self, now: i64) -> Option<(i64, Timer)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((at, _, timer))| (at, timer))
    }

    pub(super) fn clear(&mut self) {
        self.heap.clear();
    }
}
