//! A connection's outbound queue, bounded in frames and in bytes.
//!
//! The driver queues a connection's frames here (each an [`OutFrame`], whose body is shared
//! with the device session's outbox, so queueing one copies no body) and the connection's
//! response stream takes them off as the transport writes them. A device that does not read leaves them here: the
//! frame bound alone would let a few thousand large frames (pages of call records) pile up, so
//! the queue also counts their estimated bytes
//! ([`frame_bytes`](callplus_session::switchboard::frame_bytes)) and reports itself full past
//! a byte bound. The driver then closes the connection as a slow consumer.

use std::fmt;
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

/// Where [`OutboundQueue::try_send`] put a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Into the transport's buffer: [`OutboundQueue::flush_direct`] writes it.
    Direct,
    /// Into the queue, for the transport's writer task.
    Queued,
}

/// A transport that can write frames to its socket from the driver's task.
///
/// Queueing a frame wakes the transport's writer task. When the driver answers a request it
/// queues frames for two connections (the requester's response, the peer's event), and on a
/// runtime with several workers the second wake-up makes the runtime wake a parked worker to
/// take it: futex calls and context switches that cost more than the write itself
/// (docs/performance.md). A frame for a connection with nothing queued before it is therefore
/// buffered in the transport by the driver itself, and the driver flushes each connection it
/// buffered for once at the end of its drain, so that a connection's frames of one input still
/// leave in one write.
pub(crate) trait DirectSink: Send + Sync + fmt::Debug {
    /// Buffers `frame` for the next [`flush`](Self::flush), or returns `false` and buffers
    /// nothing (the writer task has work, or the sink is busy elsewhere or broken): the frame
    /// is queued instead. Once it has returned `true` the frame is the transport's.
    fn try_buffer(&self, frame: &OutFrame) -> bool;

    /// Writes what [`try_buffer`](Self::try_buffer) buffered, without waiting: what the socket
    /// does not take at once is left to the writer task.
    fn flush(&self);
}

/// The sending half, held by the driver (and by the connection task for refusals).
#[derive(Debug, Clone)]
pub(crate) struct OutboundQueue {
    tx: mpsc::Sender<(OutFrame, usize)>,
    held: Arc<AtomicUsize>,
    max_bytes: usize,
    direct: Option<Arc<dyn DirectSink>>,
    /// Frames queued and not yet reported written by the transport (counted only with a
    /// direct sink): a frame written directly while one of them waits would overtake it.
    unwritten: Arc<AtomicUsize>,
}

/// The receiving half, read by the connection's response stream.
#[derive(Debug)]
pub(crate) struct OutboundReceiver {
    rx: mpsc::Receiver<(OutFrame, usize)>,
    held: Arc<AtomicUsize>,
    unwritten: Arc<AtomicUsize>,
}

/// A queue of at most `frames` frames and `max_bytes` bytes (a single frame is always let in
/// when the queue is empty, however large).
pub(crate) fn outbound(frames: usize, max_bytes: usize) -> (OutboundQueue, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let held = Arc::new(AtomicUsize::new(0));
    let unwritten = Arc::new(AtomicUsize::new(0));
    (
        OutboundQueue { tx, held: held.clone(), max_bytes, direct: None, unwritten: unwritten.clone() },
        OutboundReceiver { rx, held, unwritten },
    )
}

impl OutboundQueue {
    /// Lets the driver write frames through `direct` when nothing queued waits before them.
    /// The transport's writer must then report what it wrote ([`OutboundReceiver::written`]).
    pub(crate) fn set_direct(&mut self, direct: Arc<dyn DirectSink>) {
        self.direct = Some(direct);
    }

    /// Sends a frame: into the transport's buffer when it can take it and nothing queued waits
    /// before it (then [`flush_direct`](Self::flush_direct) must follow), otherwise into the
    /// queue unless it is over a bound or closed.
    pub(crate) fn try_send(&self, frame: OutFrame) -> Result<Sent, QueueError> {
        if let Some(direct) = &self.direct
            && self.unwritten.load(Ordering::Acquire) == 0
            && !self.tx.is_closed()
            && direct.try_buffer(&frame)
        {
            return Ok(Sent::Direct);
        }
        let bytes = body_frame_bytes(&frame.body);
        let held = self.held.load(Ordering::Acquire);
        if held > 0 && held.saturating_add(bytes) > self.max_bytes {
            return Err(if self.tx.is_closed() { QueueError::Closed } else { QueueError::Full });
        }
        // Counted before it can be taken, so the count is never short of the queue.
        self.count_unwritten(true);
        match self.tx.try_send((frame, bytes)) {
            Ok(()) => {
                self.held.fetch_add(bytes, Ordering::AcqRel);
                Ok(Sent::Queued)
            }
            Err(e) => {
                self.count_unwritten(false);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => QueueError::Full,
                    mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
                })
            }
        }
    }

    /// Counts a frame into the queue (`true`) or back out of it, for a transport with a direct
    /// sink: only such a transport reports frames written ([`OutboundReceiver::written`]).
    fn count_unwritten(&self, queued: bool) {
        if self.direct.is_some() {
            if queued {
                self.unwritten.fetch_add(1, Ordering::AcqRel);
            } else {
                self.unwritten.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Writes the frames [`try_send`](Self::try_send) left in the transport's buffer.
    pub(crate) fn flush_direct(&self) {
        if let Some(direct) = &self.direct {
            direct.flush();
        }
    }

    /// Queues a frame, waiting up to `timeout` for room in the frame bound (refusals, which
    /// are small and the last frame of a connection).
    pub(crate) async fn send_timeout(&self, frame: OutFrame, timeout: Duration) -> Result<(), QueueError> {
        let bytes = body_frame_bytes(&frame.body);
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.count_unwritten(true);
        self.tx.send_timeout((frame, bytes), timeout).await.map_err(|_| {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            self.count_unwritten(false);
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

    /// Reports `frames` taken from the queue as written to the socket (flushed): once every
    /// queued frame is, the driver may write the next one directly ([`DirectSink`]).
    pub(crate) fn written(&self, frames: usize) {
        self.unwritten.fetch_sub(frames, Ordering::AcqRel);
    }

    fn taken(&self, frame: OutFrame, bytes: usize) -> OutFrame {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        frame
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use callplus_session::{Event, ServerBody, ServerFrame};

    use super::*;

    fn frame(message_bytes: usize) -> OutFrame {
        numbered(1, message_bytes)
    }

    fn numbered(seq: u64, message_bytes: usize) -> OutFrame {
        let kicked =
            Event::Kicked { reason: callplus_session::EndReason::Hangup, message: "x".repeat(message_bytes) };
        OutFrame::from(ServerFrame { seq, ack: 0, body: ServerBody::Event(kicked) })
    }

    /// A transport whose socket can be made busy, recording what it was given.
    #[derive(Debug, Default)]
    struct Socket {
        busy: AtomicBool,
        buffered: Mutex<Vec<u64>>,
        flushes: AtomicUsize,
    }

    impl DirectSink for Socket {
        fn try_buffer(&self, frame: &OutFrame) -> bool {
            if self.busy.load(Ordering::Acquire) {
                return false;
            }
            self.buffered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(frame.seq);
            true
        }

        fn flush(&self) {
            self.flushes.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[tokio::test]
    async fn a_frame_goes_direct_only_when_every_queued_frame_is_written() {
        let socket = Arc::new(Socket::default());
        let (mut tx, mut rx) = outbound(1000, 1 << 20);
        tx.set_direct(socket.clone());
        assert_eq!(tx.try_send(numbered(1, 10)), Ok(Sent::Direct));
        tx.flush_direct();
        assert_eq!(socket.flushes.load(Ordering::Acquire), 1);
        // The socket is busy elsewhere: the frame is queued, and so is the next one even once
        // the socket is free, or it would overtake the first.
        socket.busy.store(true, Ordering::Release);
        assert_eq!(tx.try_send(numbered(2, 10)), Ok(Sent::Queued));
        socket.busy.store(false, Ordering::Release);
        assert_eq!(tx.try_send(numbered(3, 10)), Ok(Sent::Queued));
        assert_eq!(rx.recv().await.map(|f| f.seq), Some(2));
        assert_eq!(rx.try_recv().map(|f| f.seq), Some(3));
        // Taken is not written: only once the writer reports both written may frames go direct.
        rx.written(1);
        assert_eq!(tx.try_send(numbered(4, 10)), Ok(Sent::Queued));
        assert_eq!(rx.recv().await.map(|f| f.seq), Some(4));
        rx.written(2);
        assert_eq!(tx.try_send(numbered(5, 10)), Ok(Sent::Direct));
        assert_eq!(*socket.buffered.lock().unwrap_or_else(std::sync::PoisonError::into_inner), vec![1, 5]);
        // A full queue refuses a frame without counting it as waiting there.
        socket.busy.store(true, Ordering::Release);
        assert_eq!(tx.try_send(numbered(6, 2 << 20)), Ok(Sent::Queued), "one frame always fits");
        assert_eq!(tx.try_send(numbered(7, 10)), Err(QueueError::Full));
        assert_eq!(rx.recv().await.map(|f| f.seq), Some(6));
        rx.written(1);
        socket.busy.store(false, Ordering::Release);
        assert_eq!(tx.try_send(numbered(8, 10)), Ok(Sent::Direct));
        // Once the writer is gone, so is the connection.
        drop(rx);
        assert_eq!(tx.try_send(numbered(9, 10)), Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn the_queue_is_full_past_its_bytes_and_has_room_again_once_read() {
        let (tx, mut rx) = outbound(1000, 10_000);
        assert_eq!(tx.try_send(frame(20_000)), Ok(Sent::Queued), "one frame always fits");
        assert_eq!(tx.try_send(frame(10)), Err(QueueError::Full));
        assert!(rx.recv().await.is_some());
        for _ in 0..4 {
            assert_eq!(tx.try_send(frame(2_000)), Ok(Sent::Queued));
        }
        assert_eq!(tx.try_send(frame(2_000)), Err(QueueError::Full), "over 10 000 bytes");
        assert!(rx.try_recv().is_some());
        assert_eq!(tx.try_send(frame(2_000)), Ok(Sent::Queued));
        drop(rx);
        assert_eq!(tx.try_send(frame(10)), Err(QueueError::Closed));
    }
}
