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

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{SelectAll, Stream, StreamExt as _};
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
            Poll::Ready(Some(Inbound::Frame(frame))) => Poll::Ready(Some((this.conn, Inbound::Frame(frame)))),
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
#[derive(Default)]
pub(crate) struct ReadSet {
    readers: SelectAll<ConnReader>,
}

impl ReadSet {
    /// Reads `conn` from now on, until the driver lets go of it, the transport closes or the
    /// frames end (the last two reported as `Closed` or `Broken`).
    pub(crate) fn add(&mut self, conn: ConnId, handed: HandedOver) {
        let HandedOver { frames, transport_closed, released } = handed;
        self.readers.push(ConnReader { conn, frames, transport_closed, released, done: false });
    }

    /// The next frame or end of any connection; `Pending` also while there is no connection
    /// (one added later is polled on the next call).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(ConnId, Inbound)> {
        match self.readers.poll_next_unpin(cx) {
            Poll::Ready(Some(next)) => Poll::Ready(next),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::future::poll_fn;

    use callplus_proto::v1 as pb;
    use callplus_session::{Code, Error};
    use futures_util::stream;

    use super::*;

    fn frame(request_id: u64) -> Inbound {
        Inbound::Frame(Box::new(pb::ClientFrame { request_id, ..Default::default() }))
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

        // Two frames, then the transport breaks: nothing is read after the break.
        let error = Error::new(Code::FrameInvalid, "garbage");
        let (a, _a_transport, _a_driver) =
            handed(vec![frame(1), frame(2), Inbound::Broken(Some(error)), frame(3)]);
        set.add(1, a);
        // The device goes away: the transport's end closes.
        let (b, b_transport, _b_driver) = handed(vec![frame(7)]);
        set.add(2, b);
        // The driver lets go of the connection: it ends without a word.
        let (c, _c_transport, c_driver) = handed(Vec::new());
        set.add(3, c);

        let mut got = ready(&mut set).await;
        got.sort();
        let want = [(1, "broken: garbage"), (1, "frame 1"), (1, "frame 2"), (2, "frame 7")];
        assert_eq!(got, want.map(|(c, w)| (c, w.to_owned())));

        drop(b_transport);
        drop(c_driver);
        assert_eq!(ready(&mut set).await, vec![(2, "closed".to_owned())]);
        assert!(ready(&mut set).await.is_empty());
        assert_eq!(set.readers.len(), 0, "every ended connection is dropped");
    }
}
