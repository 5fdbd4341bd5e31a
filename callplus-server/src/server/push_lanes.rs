//! One lane per (app, call, callee) for push deliveries: a notification is posted only once the
//! one before it for the same callee and call is done (delivered, refused or given up, retries
//! included). Without it a cancellation could reach the webhook before the invitation it
//! withdraws, which was still in flight, and the phone would show a call that had ended.
//! Deliveries for different callees or calls run side by side as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Whose notifications keep their order: the app, the call and the callee.
pub(crate) type LaneKey = (String, String, String);

/// The lanes with a delivery queued or running.
#[derive(Debug, Default, Clone)]
pub(crate) struct PushLanes {
    inner: Arc<Mutex<Lanes>>,
}

#[derive(Debug, Default)]
struct Lanes {
    next: u64,
    /// Per lane, the last delivery queued: its number and the signal that it is done.
    last: HashMap<LaneKey, (u64, oneshot::Receiver<()>)>,
}

/// A delivery's place in its lane.
#[derive(Debug)]
pub(crate) struct Turn {
    lanes: PushLanes,
    key: LaneKey,
    id: u64,
    /// Resolves once the delivery before this one is done; `None` when there was none.
    before: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl PushLanes {
    /// Queues a delivery in `key`'s lane, behind the one queued last. Called in the order the
    /// notifications were made.
    pub(crate) fn queue(&self, key: LaneKey) -> Turn {
        let (done, done_rx) = oneshot::channel();
        let mut lanes = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lanes.next += 1;
        let id = lanes.next;
        let before = lanes.last.insert(key.clone(), (id, done_rx)).map(|(_, rx)| rx);
        Turn { lanes: self.clone(), key, id, before, done: Some(done) }
    }

    /// How many lanes have a delivery queued or running.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).last.len()
    }
}

impl Turn {
    /// Whether an earlier delivery in the lane is queued or running.
    pub(crate) fn waits(&self) -> bool {
        self.before.is_some()
    }

    /// Waits until the delivery before this one in the lane is done.
    pub(crate) async fn wait(&mut self) {
        if let Some(before) = self.before.as_mut() {
            // A dropped sender (its task ended anyhow) counts as done.
            let _ = before.await;
            self.before = None;
        }
    }
}

impl Drop for Turn {
    /// The delivery is done: the next in the lane may go, and a lane left empty is forgotten.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        let mut lanes = self.lanes.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if lanes.last.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            lanes.last.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn key(callee: &str) -> LaneKey {
        ("app".into(), "c1".into(), callee.into())
    }

    fn ready<F: Future>(f: F) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(pin!(f).poll(&mut cx), Poll::Ready(_))
    }

    #[test]
    fn a_delivery_waits_for_the_one_before_it_in_its_lane_only() {
        let lanes = PushLanes::default();
        let invite = lanes.queue(key("bob"));
        let mut cancel = lanes.queue(key("bob"));
        let mut other = lanes.queue(key("carol"));
        assert!(ready(other.wait()), "another callee's lane is free");
        assert!(!ready(cancel.wait()), "the cancellation waits for the invitation");
        drop(invite);
        assert!(ready(cancel.wait()), "and goes once it is done");
        assert_eq!(lanes.len(), 2);
        drop(cancel);
        drop(other);
        assert_eq!(lanes.len(), 0, "empty lanes are forgotten");
    }

    #[test]
    fn a_lane_keeps_the_order_of_three() {
        let lanes = PushLanes::default();
        let first = lanes.queue(key("bob"));
        let mut second = lanes.queue(key("bob"));
        let mut third = lanes.queue(key("bob"));
        assert!(!ready(third.wait()));
        drop(first);
        assert!(!ready(third.wait()), "the third waits for the second, not the first");
        assert!(ready(second.wait()));
        drop(second);
        assert!(ready(third.wait()));
        drop(third);
        assert_eq!(lanes.len(), 0);
    }
}
