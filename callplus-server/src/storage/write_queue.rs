//! The queue between [`BatchWriter`](super::BatchWriter) callers and its thread.
//!
//! A channel would wake the writer thread for every message, and under load most of those
//! wake-ups only find the thread still gathering writes for its next commit. Here submitters
//! signal only when the thread sleeps on an empty queue, or when something cannot wait (a
//! flush, a full batch); otherwise the thread sleeps out its commit delay and takes everything
//! queued in one swap.

use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{StorageError, WriteOp};

/// Queued ops past which the thread commits without waiting out its delay.
pub(super) const URGENT_OPS: usize = 4096;

/// What callers hand the writer thread.
pub(super) enum Msg {
    /// Writes, in order.
    Ops(Vec<WriteOp>),
    /// Reply once everything queued before is committed.
    Flush(Sender<Result<(), StorageError>>),
}

#[derive(Default)]
struct State {
    msgs: Vec<Msg>,
    ops: usize,
    /// A flush or a full batch is queued: commit now.
    urgent: bool,
    /// The thread sleeps until the queue is not empty.
    idle: bool,
    /// No more messages are taken (the writer stopped, or its thread ended).
    closed: bool,
}

/// A multi-producer, single-consumer queue of [`Msg`]s with a commit delay.
#[derive(Default)]
pub(super) struct WriteQueue {
    state: Mutex<State>,
    ready: Condvar,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue").finish_non_exhaustive()
    }
}

impl WriteQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message; gives it back when the queue is closed.
    pub(super) fn push(&self, msg: Msg) -> Result<(), Msg> {
        match msg {
            Msg::Ops(mut ops) => {
                if self.push_ops(&mut ops) {
                    Ok(())
                } else {
                    Err(Msg::Ops(ops))
                }
            }
            Msg::Flush(done) => {
                let mut state = self.lock();
                if state.closed {
                    return Err(Msg::Flush(done));
                }
                state.urgent = true;
                state.msgs.push(Msg::Flush(done));
                self.signal(state);
                Ok(())
            }
        }
    }

    /// Moves `ops` to the end of the queue, joining the ops already waiting there when nothing
    /// was queued after them; `ops` is left empty with its capacity, for the caller's next burst
    /// (the signalling thread hands over a few ops per frame it handles, and a new `Vec` for
    /// each would be an allocation per frame, freed on the writer's thread). Returns `false`,
    /// leaving `ops` as it was, once the queue is closed.
    pub(super) fn push_ops(&self, ops: &mut Vec<WriteOp>) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.ops += ops.len();
        match state.msgs.last_mut() {
            Some(Msg::Ops(waiting)) => waiting.append(ops),
            _ => {
                let mut waiting = Vec::with_capacity(ops.capacity());
                waiting.append(ops);
                state.msgs.push(Msg::Ops(waiting));
            }
        }
        self.signal(state);
        true
    }

    /// After a message was queued: a full batch cannot wait either, and the thread is woken if
    /// it sleeps on an empty queue or something cannot wait.
    fn signal(&self, mut state: MutexGuard<'_, State>) {
        if state.ops >= URGENT_OPS {
            state.urgent = true;
        }
        let wake = state.idle || state.urgent;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Takes no more messages; the thread still gets those already queued.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Closes the queue and drops what is in it (flush waiters then see the writer gone).
    pub(super) fn abandon(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.msgs)
        };
        drop(dropped);
    }

    /// Blocks until there is something to commit, then waits up to `delay` (less if it turns
    /// urgent) for more, and takes it all. `None` once the queue is closed and empty.
    pub(super) fn next_batch(&self, delay: Duration) -> Option<Vec<Msg>> {
        let mut state = self.lock();
        while state.msgs.is_empty() {
            if state.closed {
                return None;
            }
            state.idle = true;
            state = self.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.idle = false;
        let deadline = Instant::now() + delay;
        while !state.urgent && !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.ready.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        state.urgent = false;
        state.ops = 0;
        Some(std::mem::take(&mut state.msgs))
    }
}

/// Abandons the queue when the writer thread ends, even by a panic, so no caller waits on a
/// thread that is gone.
pub(super) struct AbandonOnDrop<'a>(pub(super) &'a WriteQueue);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;

    use super::*;
    use crate::storage::RecordRow;

    /// Long enough that a test only finishes if something cut the delay short.
    const FOREVER: Duration = Duration::from_secs(3600);

    fn ops(n: usize) -> Msg {
        let row = RecordRow {
            app_key: "a".into(),
            owner_id: "u".into(),
            call_id: "c".into(),
            sync_time: 1,
            body: Vec::new(),
            fence: 0,
        };
        Msg::Ops((0..n).map(|_| WriteOp::Records(vec![row.clone()])).collect())
    }

    fn op_count(batch: &[Msg]) -> usize {
        batch.iter().map(|m| if let Msg::Ops(o) = m { o.len() } else { 0 }).sum()
    }

    #[test]
    fn a_flush_ends_the_commit_delay_and_comes_with_everything_before_it() {
        let queue = Arc::new(WriteQueue::default());
        let consumer = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.next_batch(FOREVER).expect("a batch"))
        };
        queue.push(ops(2)).map_err(|_| ()).unwrap();
        queue.push(ops(3)).map_err(|_| ()).unwrap();
        let (done, _wait) = mpsc::channel();
        queue.push(Msg::Flush(done)).map_err(|_| ()).unwrap();
        let batch = consumer.join().unwrap();
        assert_eq!(op_count(&batch), 5);
        assert!(matches!(batch.last(), Some(Msg::Flush(_))));
    }

    /// Ops handed over in bursts join the message waiting at the end of the queue, in order,
    /// and the caller keeps its buffer; a flush between bursts keeps its place.
    #[test]
    fn bursts_of_ops_join_the_waiting_message_and_the_caller_keeps_its_buffer() {
        let queue = WriteQueue::default();
        let Msg::Ops(mut burst) = ops(3) else { unreachable!() };
        let capacity = burst.capacity();
        assert!(queue.push_ops(&mut burst));
        assert!(burst.is_empty());
        assert_eq!(burst.capacity(), capacity);
        let Msg::Ops(more) = ops(2) else { unreachable!() };
        burst.extend(more);
        assert!(queue.push_ops(&mut burst));
        let (done, _wait) = mpsc::channel();
        queue.push(Msg::Flush(done)).map_err(|_| ()).unwrap();
        let Msg::Ops(after) = ops(1) else { unreachable!() };
        burst.extend(after);
        assert!(queue.push_ops(&mut burst));

        let batch = queue.next_batch(Duration::ZERO).unwrap();
        let shape: Vec<Option<usize>> =
            batch.iter().map(|m| if let Msg::Ops(o) = m { Some(o.len()) } else { None }).collect();
        assert_eq!(shape, [Some(5), None, Some(1)]);

        queue.close();
        burst.extend(match ops(1) {
            Msg::Ops(o) => o,
            Msg::Flush(_) => unreachable!(),
        });
        assert!(!queue.push_ops(&mut burst), "no ops after close");
        assert_eq!(burst.len(), 1, "refused ops stay with the caller");
    }

    #[test]
    fn a_full_batch_is_taken_without_waiting() {
        let queue = WriteQueue::default();
        queue.push(ops(URGENT_OPS)).map_err(|_| ()).unwrap();
        assert_eq!(op_count(&queue.next_batch(FOREVER).unwrap()), URGENT_OPS);
        // The count starts again: a small write now waits out its delay (here, none).
        queue.push(ops(1)).map_err(|_| ()).unwrap();
        assert_eq!(op_count(&queue.next_batch(Duration::ZERO).unwrap()), 1);
    }

    #[test]
    fn a_closed_queue_hands_out_what_it_holds_then_ends() {
        let queue = WriteQueue::default();
        queue.push(ops(4)).map_err(|_| ()).unwrap();
        queue.close();
        assert!(queue.push(ops(1)).is_err(), "no messages after close");
        assert_eq!(op_count(&queue.next_batch(FOREVER).unwrap()), 4);
        assert!(queue.next_batch(FOREVER).is_none());
    }

    #[test]
    fn an_abandoned_queue_releases_flush_waiters() {
        let queue = WriteQueue::default();
        let (done, wait) = mpsc::channel();
        queue.push(Msg::Flush(done)).map_err(|_| ()).unwrap();
        {
            let _guard = AbandonOnDrop(&queue);
        }
        assert!(wait.recv().is_err(), "the waiter learns the writer is gone");
        assert!(queue.push(ops(1)).is_err());
    }
}
