//! Device connections whose frames the driver reads itself.
//!
//! A connection task read its device's frames and queued each for the driver, waking the
//! driver's task: two task wake-ups and a queue hop per frame. When several sockets became
//! readable at once, their reader tasks were runnable together and the runtime woke a parked
//! worker thread to take one, which cost more than the read (docs/performance.md). A
//! connection's inbound frames are therefore handed to the driver once its Hello is
//! authenticated: the driver polls every such connection in one [`ReadSet`], a readable
//! connection wakes only the driver, and a frame goes to the switchboard in one task. A
//! WebSocket hands over its socket's reading half; a gRPC stream its request body, which its
//! HTTP/2 connection's task fills and which wakes the driver when a message is complete.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{Stream, StreamExt as _};
use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::sync::oneshot;

use super::connection::Inbound;
use callplus_session::switchboard::ConnId;

/// A transport's inbound frames as a stream, ending after `Closed` or `Broken`.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Inbound> + Send>>;

/// What the driver needs to read a connection: its frames and the two ends that stop them.
pub(crate) struct HandedOver {
    /// The device's frames.
    pub(crate) frames: FrameStream,
    /// Resolves when the transport can no longer send (the device went away).
    pub(crate) transport_closed: oneshot::Receiver<()>,
    /// Resolves when the driver lets go of the connection (the sender is kept with the
    /// connection's outbound queue in the driver).
    pub(crate) released: oneshot::Receiver<()>,
}

/// One connection's frames, tagged with the connection.
struct ConnReader {
    conn: ConnId,
    frames: FrameStream,
    transport_closed: oneshot::Receiver<()>,
    /// Resolves when the driver lets go of the connection (its end is in the driver's
    /// connection map): nothing more is read, and nothing is reported.
    released: oneshot::Receiver<()>,
    done: bool,
}

impl Stream for ConnReader {
    type Item = (ConnId, Inbound);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if Pin::new(&mut this.released).poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        if Pin::new(&mut this.transport_closed).poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some((this.conn, Inbound::Closed)));
        }
        match this.frames.poll_next_unpin(cx) {
            Poll::Ready(Some(frame @ (Inbound::Frame(_) | Inbound::Invalid(_)))) => {
                Poll::Ready(Some((this.conn, frame)))
            }
            Poll::Ready(Some(end)) => {
                this.done = true;
                Poll::Ready(Some((this.conn, end)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some((this.conn, Inbound::Closed)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Every connection the driver reads: only the ones whose socket woke are polled.
///
/// Each connection has a waker of its own, made once when it is added; waking it queues the
/// connection and wakes the driver. A set of streams that re-queues a stream after each item
/// (`SelectAll`, over `FuturesUnordered`) allocates a task for every frame read; here reading
/// a frame allocates nothing.
pub(crate) struct ReadSet {
    readers: Slab<Reader>,
    /// Connections to poll, taken from `woken.queue` in one swap.
    due: VecDeque<usize>,
    woken: Arc<Woken>,
}

/// A connection in the set, with the waker its transport wakes.
struct Reader {
    frames: ConnReader,
    wake: Arc<ReaderWake>,
    waker: Waker,
}

/// What the connections' wakers share with the set.
#[derive(Default)]
struct Woken {
    /// Connections woken since the set last looked, each at most once while it waits.
    queue: Mutex<Vec<usize>>,
    /// The driver's task, woken when a connection is.
    driver: AtomicWaker,
}

/// One connection's waker.
struct ReaderWake {
    slot: usize,
    /// The connection is in a queue of `due` connections (cleared just before it is polled).
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for ReaderWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.woken.queue.lock().unwrap_or_else(PoisonError::into_inner).push(self.slot);
            self.woken.driver.wake();
        }
    }
}

impl Default for ReadSet {
    fn default() -> Self {
        ReadSet { readers: Slab::new(), due: VecDeque::new(), woken: Arc::default() }
    }
}

impl ReadSet {
    /// Reads `conn` from now on, until the driver lets go of it, the transport closes or the
    /// frames end (the last two reported as `Closed` or `Broken`).
    pub(crate) fn add(&mut self, conn: ConnId, handed: HandedOver) {
        let HandedOver { frames, transport_closed, released } = handed;
        let frames = ConnReader { conn, frames, transport_closed, released, done: false };
        let entry = self.readers.vacant_entry();
        let slot = entry.key();
        // Queued from the start: polled (and so registered with its transport) on the next call.
        let wake = Arc::new(ReaderWake { slot, queued: AtomicBool::new(true), woken: self.woken.clone() });
        let waker = Waker::from(wake.clone());
        entry.insert(Reader { frames, wake, waker });
        self.due.push_back(slot);
    }

    /// The next frame or end of any connection; `Pending` also while there is no connection
    /// (one added later is polled on the next call).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(ConnId, Inbound)> {
        self.woken.driver.register(cx.waker());
        loop {
            let Some(slot) = self.next_due() else { return Poll::Pending };
            // A slot emptied since it was queued, or already taken again by a later connection
            // (which is then polled once more than it needs).
            let Some(reader) = self.readers.get_mut(slot) else { continue };
            reader.wake.queued.store(false, Ordering::Release);
            let mut reader_cx = Context::from_waker(&reader.waker);
            match reader.frames.poll_next_unpin(&mut reader_cx) {
                Poll::Ready(Some(next)) => {
                    // It may hold more: polled again after the connections already due.
                    if !reader.wake.queued.swap(true, Ordering::AcqRel) {
                        self.due.push_back(slot);
                    }
                    return Poll::Ready(next);
                }
                Poll::Ready(None) => drop(self.readers.remove(slot)),
                Poll::Pending => {}
            }
        }
    }

    fn next_due(&mut self) -> Option<usize> {
        if self.due.is_empty() {
            let mut woken = self.woken.queue.lock().unwrap_or_else(PoisonError::into_inner);
            self.due.extend(woken.drain(..));
        }
        self.due.pop_front()
    }

    /// How many connections the set reads.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.readers.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::future::poll_fn;

    use callplus_session::wire::FrameError;
    use callplus_session::{ClientBody, ClientFrame, Code, Error};
    use futures_util::stream;

    use super::*;

    fn frame(request_id: u64) -> Inbound {
        Inbound::Frame(Box::new(ClientFrame { seq: 0, ack: 0, request_id, body: ClientBody::Ping }))
    }

    /// A connection handed over with `items`, then nothing more for ever; and the ends that
    /// close it from the transport's side and from the driver's.
    fn handed(items: Vec<Inbound>) -> (HandedOver, oneshot::Sender<()>, oneshot::Sender<()>) {
        let (transport, transport_closed) = oneshot::channel();
        let (driver, released) = oneshot::channel();
        let frames = Box::pin(stream::iter(items).chain(stream::pending()));
        (HandedOver { frames, transport_closed, released }, transport, driver)
    }

    /// What the set yields until it has nothing ready.
    async fn ready(set: &mut ReadSet) -> Vec<(ConnId, String)> {
        poll_fn(|cx| {
            let mut out = Vec::new();
            while let Poll::Ready((conn, inbound)) = set.poll_next(cx) {
                let what = match inbound {
                    Inbound::Frame(f) => format!("frame {}", f.request_id),
                    Inbound::Invalid(e) => format!("invalid {}", e.request_id),
                    Inbound::Closed => "closed".to_owned(),
                    Inbound::Broken(None) => "broken".to_owned(),
                    Inbound::Broken(Some(e)) => format!("broken: {}", e.message),
                };
                out.push((conn, what));
            }
            Poll::Ready(out)
        })
        .await
    }

    #[tokio::test]
    async fn frames_come_tagged_with_their_connection_and_each_connection_ends_once() {
        let mut set = ReadSet::default();
        assert!(ready(&mut set).await.is_empty(), "an empty set is pending, not finished");

        // Two frames and an invalid one between them (answered, not an end), then the
        // transport breaks: nothing is read after the break.
        let error = Error::new(Code::FrameInvalid, "garbage");
        let invalid =
            FrameError { seq: 0, ack: 0, request_id: 9, error: Error::new(Code::FrameInvalid, "no body") };
        let (a, _a_transport, _a_driver) = handed(vec![
            frame(1),
            Inbound::Invalid(invalid),
            frame(2),
            Inbound::Broken(Some(error)),
            frame(3),
        ]);
        set.add(1, a);
        // The device goes away: the transport's end closes.
        let (b, b_transport, _b_driver) = handed(vec![frame(7)]);
        set.add(2, b);
        // The driver lets go of the connection: it ends without a word.
        let (c, _c_transport, c_driver) = handed(Vec::new());
        set.add(3, c);

        let mut got = ready(&mut set).await;
        got.sort();
        let want = [(1, "broken: garbage"), (1, "frame 1"), (1, "frame 2"), (1, "invalid 9"), (2, "frame 7")];
        assert_eq!(got, want.map(|(c, w)| (c, w.to_owned())));

        drop(b_transport);
        drop(c_driver);
        assert_eq!(ready(&mut set).await, vec![(2, "closed".to_owned())]);
        assert!(ready(&mut set).await.is_empty());
        assert_eq!(set.len(), 0, "every ended connection is dropped");
    }

    /// Counts the driver's wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection whose frames arrive after it was polled wakes the driver, and only the
    /// connections that woke are polled again.
    #[test]
    fn a_connection_that_wakes_is_polled_and_wakes_the_driver() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut set = ReadSet::default();
        let mut senders = Vec::new();
        let mut ends = Vec::new();
        for conn in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (transport, transport_closed) = oneshot::channel();
            let (driver, released) = oneshot::channel();
            let frames = Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
            set.add(conn, HandedOver { frames, transport_closed, released });
            senders.push(tx);
            ends.push((transport, driver));
        }
        assert!(set.poll_next(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        senders[1].send(frame(11)).unwrap();
        senders[1].send(frame(12)).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake-up for the connection");
        assert_eq!(set.due.len() + set.woken.queue.lock().unwrap().len(), 1, "only that connection is due");
        for want in [11, 12] {
            let Poll::Ready((1, Inbound::Frame(f))) = set.poll_next(&mut cx) else { panic!("frame {want}") };
            assert_eq!(f.request_id, want);
        }
        assert!(set.poll_next(&mut cx).is_pending());

        // Two connections before the driver runs: it is woken once, and reads both.
        senders[2].send(frame(21)).unwrap();
        senders[0].send(frame(1)).unwrap();
        let mut got = Vec::new();
        while let Poll::Ready((conn, Inbound::Frame(f))) = set.poll_next(&mut cx) {
            got.push((conn, f.request_id));
        }
        got.sort_unstable();
        assert_eq!(got, [(0, 1), (2, 21)]);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);

        // A transport closing wakes its connection too, which then ends.
        let (transport, _driver) = ends.remove(0);
        drop(transport);
        let Poll::Ready((0, Inbound::Closed)) = set.poll_next(&mut cx) else { panic!("closed") };
        assert!(set.poll_next(&mut cx).is_pending());
        assert_eq!(set.len(), 2);
    }
}
