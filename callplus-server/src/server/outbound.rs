//! A connection's outbound queue, bounded in frames and in bytes.
//!
//! The driver queues a connection's frames here (each an [`OutFrame`], whose body is shared
//! with the device session's outbox, so queueing one copies no body) and the connection's
//! response stream takes them off as the transport writes them. A device that does not read leaves them here: the
//! frame bound alone would let a few thousand large frames (pages of call records) pile up, so
//! the queue also counts their estimated bytes
//! ([`frame_bytes`](callplus_session::switchboard::frame_bytes)) and reports itself full past
//! a byte bound. The driver then closes the connection as a slow consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use callplus_session::OutFrame;
use callplus_session::switchboard::body_frame_bytes;
use tokio::sync::mpsc;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// Over the frame or byte bound: the reader is too slow.
    Full,
    /// The connection is gone.
    Closed,
}

/// The sending half, held by the driver (and by the connection task for refusals).
#[derive(Debug, Clone)]
pub(crate) struct OutboundQueue {
    tx: mpsc::Sender<(OutFrame, usize)>,
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The receiving half, read by the connection's response stream.
#[derive(Debug)]
pub(crate) struct OutboundReceiver {
    rx: mpsc::Receiver<(OutFrame, usize)>,
    held: Arc<AtomicUsize>,
}

/// A queue of at most `frames` frames and `max_bytes` bytes (a single frame is always let in
/// when the queue is empty, however large).
pub(crate) fn outbound(frames: usize, max_bytes: usize) -> (OutboundQueue, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let held = Arc::new(AtomicUsize::new(0));
    (OutboundQueue { tx, held: held.clone(), max_bytes }, OutboundReceiver { rx, held })
}

impl OutboundQueue {
    /// Queues a frame unless the queue is over a bound or closed.
    pub(crate) fn try_send(&self, frame: OutFrame) -> Result<(), QueueError> {
        let bytes = body_frame_bytes(&frame.body);
        let held = self.held.load(Ordering::Acquire);
        if held > 0 && held.saturating_add(bytes) > self.max_bytes {
            return Err(if self.tx.is_closed() { QueueError::Closed } else { QueueError::Full });
        }
        match self.tx.try_send((frame, bytes)) {
            Ok(()) => {
                self.held.fetch_add(bytes, Ordering::AcqRel);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(QueueError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueError::Closed),
        }
    }

    /// Queues a frame, waiting up to `timeout` for room in the frame bound (refusals, which
    /// are small and the last frame of a connection).
    pub(crate) async fn send_timeout(&self, frame: OutFrame, timeout: Duration) -> Result<(), QueueError> {
        let bytes = body_frame_bytes(&frame.body);
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.tx.send_timeout((frame, bytes), timeout).await.map_err(|_| {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            QueueError::Full
        })
    }
}

impl OutboundReceiver {
    /// The next frame; `None` once every sender is gone and the queue is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<OutFrame>> {
        self.rx.poll_recv(cx).map(|next| next.map(|(frame, bytes)| self.taken(frame, bytes)))
    }

    /// The next frame, waiting for it; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<OutFrame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<OutFrame> {
        self.rx.try_recv().ok().map(|(frame, bytes)| self.taken(frame, bytes))
    }

    fn taken(&self, frame: OutFrame, bytes: usize) -> OutFrame {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        frame
    }
}

#[cfg(test)]
mod tests {
    use callplus_session::{Event, ServerBody, ServerFrame};

    use super::*;

    fn frame(message_bytes: usize) -> OutFrame {
        let kicked =
            Event::Kicked { reason: callplus_session::EndReason::Hangup, message: "x".repeat(message_bytes) };
        OutFrame::from(ServerFrame { seq: 1, ack: 0, body: ServerBody::Event(kicked) })
    }

    #[tokio::test]
    async fn the_queue_is_full_past_its_bytes_and_has_room_again_once_read() {
        let (tx, mut rx) = outbound(1000, 10_000);
        assert_eq!(tx.try_send(frame(20_000)), Ok(()), "one frame always fits");
        assert_eq!(tx.try_send(frame(10)), Err(QueueError::Full));
        assert!(rx.recv().await.is_some());
        for _ in 0..4 {
            assert_eq!(tx.try_send(frame(2_000)), Ok(()));
        }
        assert_eq!(tx.try_send(frame(2_000)), Err(QueueError::Full), "over 10 000 bytes");
        assert!(rx.try_recv().is_some());
        assert_eq!(tx.try_send(frame(2_000)), Ok(()));
        drop(rx);
        assert_eq!(tx.try_send(frame(10)), Err(QueueError::Closed));
    }
}
