//! The WebSocket transport: the same protocol as the gRPC stream, for browsers.
//!
//! Browsers cannot open a gRPC bidirectional stream, so the device port also answers WebSocket
//! upgrades at [`PATH`]. Each binary message carries exactly one protobuf `ClientFrame` (from the
//! device) or `ServerFrame` (from the server); everything else (Hello/Welcome, seq/ack, resume,
//! heartbeats, limits, error codes) is the shared connection task's ([`super::connection`]).
//! Text messages, undecodable bytes and messages over [`MAX_FRAME_BYTES`] are answered with a
//! `Response` (`FRAME_INVALID` or `MESSAGE_TOO_LARGE`, request id 0) and the socket is closed,
//! as a gRPC stream is after a message it cannot decode.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::routing::get;
use callplus_session::limits::MAX_FRAME_BYTES;
use callplus_session::{Code, Error, OutFrame};
use hyper_util::rt::TokioIo;
use prost::bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot};

use super::connection::{Inbound, Shared, run_connection};
use super::frame_scratch::append_ws_message;
use super::inbound_frames::{Frames, PollFrames, decode_client_frame};
use super::outbound::{DirectSink, OutboundReceiver};
use super::silence::ConnInfo;
use super::ws_framing::{self, MessageReader, WsEvent};
use super::ws_handshake;

/// Where the device port accepts WebSocket upgrades.
pub const PATH: &str = "/v1/ws";
/// The subprotocol the server selects when a client offers it (offering none is fine too).
pub const SUBPROTOCOL: &str = "callplus.v1";

/// How much a socket reads at a time, unless the frame it is reading needs more. The buffer is
/// zero-filled before each read (safe code cannot read into uninitialised memory): a general
/// library's 128 KiB kept 128 KiB resident per idle socket, and 4 KiB still cost the server
/// about 10 k instructions per call cycle (docs/performance.md). A client frame is tens to
/// hundreds of bytes.
const READ_BUFFER_BYTES: usize = 512;

/// A write buffer that grew past this (a page of call records) is given back once written.
const KEPT_WRITE_BYTES: usize = 16 * 1024;

/// Past this many bytes waiting in the socket's write buffer the driver stops writing to it
/// directly and queues instead, where the queue's bound on a slow reader applies.
const DIRECT_WRITE_LIMIT: usize = 64 * 1024;

/// The WebSocket route, to be merged with the gRPC routes on the device port.
pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    // GET for the HTTP/1.1 upgrade, CONNECT for WebSocket over HTTP/2 (RFC 8441), which a
    // browser uses on an HTTP/2 connection it already has to this port.
    axum::Router::new().route(PATH, get(upgrade).connect(upgrade)).with_state(shared)
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(info): ConnectInfo<ConnInfo>,
    mut request: Request,
) -> Response {
    let peer = info.peer();
    let accepted = match ws_handshake::accept(&mut request, SUBPROTOCOL) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::debug!(?peer, status = %refusal.status, why = refusal.why, "WebSocket handshake refused");
            return refusal.into_response();
        }
    };
    let on_upgrade = accepted.on_upgrade;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(shared, TokioIo::new(upgraded), info).await,
            Err(e) => tracing::debug!(?peer, error = %e, "WebSocket upgrade failed"),
        }
    });
    accepted.response
}

/// Runs one WebSocket connection: the driver writes frames to the socket itself when it can
/// ([`WsSink`]), a writer task drains the outbound queue otherwise, and the connection task
/// reads. The upgraded socket is still the guarded connection: a WebSocket that never sends an
/// authenticated Hello is closed like any other silent connection.
async fn serve<S>(shared: Arc<Shared>, socket: S, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(socket);
    let sink = Arc::new(WsSink::new(write));
    let (mut tx, rx) = shared.outbound();
    tx.set_direct(sink.clone());
    let (closed_tx, closed_rx) = oneshot::channel();
    shared.metrics.connections.inc();
    let writer = tokio::spawn(write_queue(sink.clone(), rx, closed_tx));
    run_connection(shared, WsInbound::new(read, sink), tx, closed_rx, Some(info)).await;
    // The writer ends once the driver lets go of the queue (after the last frames and a Close).
    let _ = writer.await;
}

/// The socket's sending half and the frames waiting for it, shared by the driver's direct
/// writes, the writer task and the reader (which answers pings).
///
/// The lock is only ever held for one poll, never across an await: the driver only tries it,
/// and goes through the queue when the writer (or, on another worker, the reader) has it.
struct WsSink<W> {
    state: Mutex<SinkState<W>>,
    /// Asks the writer task to finish a flush a direct write could not complete.
    flush: Notify,
}

struct SinkState<W> {
    io: W,
    /// Whole frames, the first `written` bytes of which the socket has taken.
    out: Vec<u8>,
    written: usize,
    /// The driver buffered frames and has not flushed them yet.
    buffered: bool,
    /// A direct flush could not finish: nothing more goes direct until the writer has flushed.
    unflushed: bool,
}

impl<W> fmt::Debug for WsSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsSink").finish_non_exhaustive()
    }
}

impl<W: AsyncWrite> SinkState<W> {
    fn waiting(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes what is waiting, then flushes the socket (TLS keeps its own buffer).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: Unpin,
    {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > KEPT_WRITE_BYTES {
            self.out = Vec::new();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<W: AsyncWrite + Send + Unpin> DirectSink for WsSink<W> {
    fn try_buffer(&self, frame: &OutFrame) -> bool {
        let Ok(mut state) = self.state.try_lock() else { return false };
        if state.unflushed || state.waiting() > DIRECT_WRITE_LIMIT {
            return false;
        }
        append_ws_message(frame, &mut state.out);
        state.buffered = true;
        true
    }

    fn flush(&self) {
        let mut state = self.lock();
        if !state.buffered {
            return;
        }
        state.buffered = false;
        self.write_now(&mut state);
    }
}

impl<W: AsyncWrite + Unpin> WsSink<W> {
    fn new(io: W) -> WsSink<W> {
        WsSink {
            state: Mutex::new(SinkState {
                io,
                out: Vec::new(),
                written: 0,
                buffered: false,
                unflushed: false,
            }),
            flush: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState<W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what is waiting without waiting: what the socket does not take at once (it is
    /// full, or failed) is left to the writer task, which finishes it or finds out.
    fn write_now(&self, state: &mut SinkState<W>) {
        // Nothing waits on this context: the writer task polls with its own.
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(state.poll_write_out(&mut cx), Poll::Ready(Ok(()))) {
            state.unflushed = true;
            self.flush.notify_one();
        }
    }

    /// Answers a client's ping (RFC 6455, 5.5.2), after the frames already waiting.
    ///
    /// Not while the socket is backed up past [`DIRECT_WRITE_LIMIT`]: a client that pings and
    /// never reads would otherwise grow the buffer without bound. RFC 6455 lets an endpoint
    /// answer only the latest of several pings, and a later one is answered once the socket
    /// drains.
    fn pong(&self, payload: &[u8]) {
        let mut state = self.lock();
        if state.waiting() > DIRECT_WRITE_LIMIT {
            return;
        }
        ws_framing::append_pong(&mut state.out, payload);
        self.write_now(&mut state);
    }

    /// Adds a frame for the writer task, first writing out what waits if that is a lot.
    async fn feed(&self, frame: &OutFrame) -> io::Result<()> {
        if self.lock().waiting() > DIRECT_WRITE_LIMIT {
            self.flush_all().await?;
        }
        append_ws_message(frame, &mut self.lock().out);
        Ok(())
    }

    /// Writes everything waiting, the direct writes' leftovers included, waiting for the
    /// socket (the writer task's flush, where [`DirectSink::flush`] never waits).
    async fn flush_all(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let flushed = futures_util::ready!(state.poll_write_out(cx));
            state.unflushed = false;
            Poll::Ready(flushed)
        })
        .await
    }

    /// Sends a Close frame (normal closure) and shuts the sending side down.
    async fn close(&self) {
        ws_framing::append_close(&mut self.lock().out, ws_framing::CLOSE_NORMAL);
        if self.flush_all().await.is_ok() {
            let _ = std::future::poll_fn(|cx| Pin::new(&mut self.lock().io).poll_shutdown(cx)).await;
        }
    }
}

/// Sends the outbound queue as binary messages until it closes (then a Close) or the socket
/// fails. Dropping `_closed` tells the connection task that nothing more can be sent.
async fn write_queue<W>(sink: Arc<WsSink<W>>, mut rx: OutboundReceiver, _closed: oneshot::Sender<()>)
where
    W: AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            biased;
            frame = rx.recv() => frame,
            () = sink.flush.notified() => {
                if let Err(e) = sink.flush_all().await {
                    tracing::debug!(error = %e, "WebSocket send failed");
                    return;
                }
                continue;
            }
        };
        let Some(frame) = frame else { break };
        // Whatever else is queued goes out with it, written once.
        let mut next = Some(frame);
        let mut fed = 0;
        while let Some(frame) = next {
            if let Err(e) = sink.feed(&frame).await {
                tracing::debug!(error = %e, "WebSocket send failed");
                return;
            }
            fed += 1;
            next = rx.try_recv();
        }
        if let Err(e) = sink.flush_all().await {
            tracing::debug!(error = %e, "WebSocket send failed");
            return;
        }
        rx.written(fed);
    }
    sink.close().await;
}

/// The socket's reading half, as inbound frames.
struct WsInbound<R, W> {
    io: R,
    reader: MessageReader,
    /// Where pings are answered.
    sink: Arc<WsSink<W>>,
}

impl<R, W> WsInbound<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(io: R, sink: Arc<WsSink<W>>) -> Frames<Self>
    where
        Self: PollFrames,
    {
        Frames::new(WsInbound { io, reader: MessageReader::new(MAX_FRAME_BYTES), sink })
    }
}

impl<R, W> PollFrames for WsInbound<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            match self.reader.next_event() {
                Err(error) => return Poll::Ready(Inbound::Broken(Some(error))),
                Ok(Some(WsEvent::Binary(payload))) => {
                    return Poll::Ready(decode_client_frame(&payload, "a binary message"));
                }
                Ok(Some(WsEvent::Text)) => {
                    return Poll::Ready(Inbound::Broken(Some(Error::new(
                        Code::FrameInvalid,
                        "text messages are not accepted: send each ClientFrame as a binary message",
                    ))));
                }
                // Liveness is the protocol's Ping/heartbeat; a WebSocket ping is only answered.
                Ok(Some(WsEvent::Ping(payload))) => {
                    self.sink.pong(&payload);
                    continue;
                }
                Ok(Some(WsEvent::Close)) => return Poll::Ready(Inbound::Closed),
                Ok(None) => {}
            }
            let want = self.reader.wanted().max(READ_BUFFER_BYTES);
            match futures_util::ready!(poll_read_into(&mut self.io, self.reader.buffer(), want, cx)) {
                Ok(0) => return Poll::Ready(Inbound::Closed),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket read failed");
                    return Poll::Ready(Inbound::Broken(None));
                }
            }
        }
    }
}

/// Reads at most `want` bytes onto the end of `buffer`; `Ok(0)` at the end of the stream.
fn poll_read_into<R: AsyncRead + Unpin>(
    io: &mut R,
    buffer: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let len = buffer.len();
    buffer.resize(len + want, 0);
    let mut read = ReadBuf::new(&mut buffer[len..]);
    let polled = Pin::new(io).poll_read(cx, &mut read);
    let n = read.filled().len();
    buffer.truncate(len + n);
    polled.map_ok(|()| n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use callplus_session::{EndReason, Event, ServerBody, ServerFrame};
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use callplus_proto::v1 as pb;
    use prost::Message as _;

    use super::super::connection::InboundFrames;
    use super::super::outbound::{Sent, outbound};
    use super::*;

    /// The server's two halves of a TCP connection on loopback, and a WebSocket client on the
    /// other end (tungstenite's, so the framing is checked against another implementation).
    async fn socket_pair() -> (OwnedReadHalf, OwnedWriteHalf, WebSocketStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds on loopback");
        let addr = listener.local_addr().expect("bound");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (read, write) = accepted.expect("accepted").0.into_split();
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let client =
            WebSocketStream::from_raw_socket(client.expect("connects"), Role::Client, Some(config)).await;
        (read, write, client)
    }

    async fn received(client: &mut WebSocketStream<TcpStream>) -> Message {
        tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("a message in time")
            .expect("a message")
            .expect("readable")
    }

    /// A direct write whose flush the socket cannot take at once (the client is not reading,
    /// and the frame is larger than both sockets' buffers) is finished by the writer task,
    /// with nothing more sent to wake it: the frame arrives whole once the client reads.
    #[tokio::test]
    async fn a_direct_write_the_socket_cannot_take_at_once_is_finished_by_the_writer() {
        let (_read, write, mut client) = socket_pair().await;
        let sink = Arc::new(WsSink::new(write));
        let (mut tx, rx) = outbound(16, 1 << 30);
        tx.set_direct(sink.clone());
        let (closed, _closed) = oneshot::channel();
        let writer = tokio::spawn(write_queue(sink.clone(), rx, closed));
        let message = "x".repeat(32 << 20);
        let kicked = Event::Kicked { reason: EndReason::Hangup, message: message.clone() };
        let frame = OutFrame::from(ServerFrame { seq: 7, ack: 0, body: ServerBody::Event(kicked) });
        assert_eq!(tx.try_send(frame), Ok(Sent::Direct));
        tx.flush_direct();
        assert!(sink.lock().unflushed, "32 MiB cannot fit the sockets' buffers: the rest is the writer's");
        let Message::Binary(bytes) = received(&mut client).await else { panic!("a binary message") };
        let frame = pb::ServerFrame::decode(bytes).expect("a ServerFrame");
        assert_eq!(frame.seq, 7);
        let Some(pb::server_frame::Body::Event(event)) = frame.body else { panic!("an event") };
        let Some(pb::event::Kind::Kicked(kicked)) = event.kind else { panic!("Kicked") };
        assert_eq!(kicked.message.len(), message.len());
        // Once the driver lets go, the writer sends a Close and ends.
        drop(tx);
        let Message::Close(Some(close)) = received(&mut client).await else { panic!("a Close") };
        assert_eq!(u16::from(close.code), ws_framing::CLOSE_NORMAL);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer ends")
            .expect("no panic");
    }

    /// A ping is answered with its payload, a message sent in fragments arrives whole, and a
    /// Close ends the frames.
    #[tokio::test]
    async fn pings_are_answered_fragments_joined_and_a_close_ends_the_frames() {
        let (read, write, mut client) = socket_pair().await;
        let mut inbound = WsInbound::new(read, Arc::new(WsSink::new(write)));
        let body = Some(pb::client_frame::Body::Ping(pb::Ping {}));
        let hello = pb::ClientFrame { request_id: 5, body, ..Default::default() }.encode_to_vec();
        let mut padded = hello.clone();
        // Unknown fields are skipped: a message long enough to be cut in three.
        padded.extend(pb::ClientFrame { seq: 9, ..Default::default() }.encode_to_vec());
        client.send(Message::Ping("are you there".into())).await.expect("sent");
        let third = padded.len() / 3;
        for (i, part) in
            [&padded[..third], &padded[third..2 * third], &padded[2 * third..]].into_iter().enumerate()
        {
            let opcode = if i == 0 { OpCode::Data(Data::Binary) } else { OpCode::Data(Data::Continue) };
            let frame = Frame::message(part.to_vec(), opcode, i == 2);
            client.send(Message::Frame(frame)).await.expect("sent");
        }
        let Inbound::Frame(frame) = InboundFrames::next(&mut inbound).await else { panic!("a frame") };
        assert_eq!((frame.request_id, frame.seq), (5, 9));
        let Message::Pong(payload) = received(&mut client).await else { panic!("a pong") };
        assert_eq!(payload.as_ref(), b"are you there");
        client.send(Message::Close(None)).await.expect("sent");
        assert!(matches!(InboundFrames::next(&mut inbound).await, Inbound::Closed));
    }

    /// What the socket cannot decode ends the frames with the reason for the device.
    #[tokio::test]
    async fn text_garbage_and_oversized_messages_break_the_connection_with_a_code() {
        for (message, code) in [
            (Message::Text("hello".into()), Code::FrameInvalid),
            (Message::Binary(vec![0xff; 8].into()), Code::FrameInvalid),
            (Message::Binary(vec![0; MAX_FRAME_BYTES + 1].into()), Code::MessageTooLarge),
        ] {
            let (read, write, mut client) = socket_pair().await;
            let mut inbound = WsInbound::new(read, Arc::new(WsSink::new(write)));
            let sent = tokio::spawn(async move {
                let _ = client.send(message).await;
                client
            });
            let Inbound::Broken(Some(error)) = InboundFrames::next(&mut inbound).await else {
                panic!("broken with a reason")
            };
            assert_eq!(error.code, code, "{}", error.message);
            drop(sent.await);
        }
    }

    /// A client that pings and never reads cannot grow the socket's buffer without bound.
    #[tokio::test]
    async fn pings_from_a_client_that_never_reads_do_not_grow_the_buffer() {
        let (_client, server) = tokio::io::duplex(4096);
        let (_read, write) = tokio::io::split(server);
        let sink = WsSink::new(write);
        for _ in 0..10_000 {
            sink.pong(&[7; 125]);
        }
        let waiting = sink.lock().waiting();
        assert!(waiting > 0, "the pipe is full: pongs are waiting");
        assert!(waiting <= DIRECT_WRITE_LIMIT + 127, "{waiting} bytes waiting");
    }

    /// An unmasked client frame, which tungstenite's client never sends, written raw.
    #[tokio::test]
    async fn an_unmasked_client_frame_breaks_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds on loopback");
        let mut client = TcpStream::connect(listener.local_addr().expect("bound")).await.expect("connects");
        let (read, write) = listener.accept().await.expect("accepted").0.into_split();
        let mut inbound = WsInbound::new(read, Arc::new(WsSink::new(write)));
        tokio::io::AsyncWriteExt::write_all(&mut client, &[0x82, 0x02, 0x08, 0x05]).await.expect("written");
        let Inbound::Broken(Some(error)) = InboundFrames::next(&mut inbound).await else {
            panic!("broken with a reason")
        };
        assert_eq!(error.code, Code::FrameInvalid);
        assert!(error.message.contains("masked"), "{}", error.message);
        // Nothing more is read after it.
        assert!(matches!(InboundFrames::next(&mut inbound).await, Inbound::Closed));
    }
}
