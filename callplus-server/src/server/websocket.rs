//! The WebSocket transport: the same protocol as the gRPC stream, for browsers.
//!
//! Browsers cannot open a gRPC bidirectional stream, so the device port also answers WebSocket
//! upgrades at [`PATH`]. Each binary message carries exactly one protobuf `ClientFrame` (from the
//! device) or `ServerFrame` (from the server); everything else (Hello/Welcome, seq/ack, resume,
//! heartbeats, limits, error codes) is the shared connection task's ([`super::connection`]).
//! Text messages, undecodable bytes and messages over [`MAX_FRAME_BYTES`] are answered with a
//! `Response` (`FRAME_INVALID` or `MESSAGE_TOO_LARGE`, request id 0) and the socket is closed,
//! as a gRPC stream is after a message it cannot decode.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use callplus_proto::v1 as pb;
use callplus_session::limits::MAX_FRAME_BYTES;
use callplus_session::{Code, Error, OutFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, StreamExt as _};
use prost::Message as _;
use tokio::sync::{Notify, oneshot};
use tokio_tungstenite::tungstenite;

use super::connection::{Inbound, InboundFrames, Shared, run_connection};
use super::driver_reads::FrameStream;
use super::frame_scratch::frame_message;
use super::outbound::{DirectSink, OutboundReceiver};
use super::silence::ConnInfo;

/// Where the device port accepts WebSocket upgrades.
pub const PATH: &str = "/v1/ws";
/// The subprotocol the server selects when a client offers it (offering none is fine too).
pub const SUBPROTOCOL: &str = "callplus.v1";

/// How much a socket reads at a time. The library zero-fills this much before every read
/// attempt (two per frame received, counting the one that finds nothing more): its default,
/// 128 KiB, kept 128 KiB resident per idle socket, and 4 KiB still cost the server about 10 k
/// instructions per call cycle (docs/performance.md). A client frame is tens to hundreds of
/// bytes; a larger one still arrives whole (the buffer reserves a frame's length once its header
/// is read), in more reads.
const READ_BUFFER_BYTES: usize = 512;

/// The WebSocket route, to be merged with the gRPC routes on the device port.
pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    // GET for the HTTP/1.1 upgrade, CONNECT for WebSocket over HTTP/2 (RFC 8441), which a
    // browser uses on an HTTP/2 connection it already has to this port.
    axum::Router::new().route(PATH, get(upgrade).connect(upgrade)).with_state(shared)
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(info): ConnectInfo<ConnInfo>,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = info.peer();
    // The same limit as gRPC's decoder: a larger message is refused as soon as its header is read.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .protocols([SUBPROTOCOL])
        .on_failed_upgrade(move |e| tracing::debug!(?peer, error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| serve(shared, socket, info))
}

/// Runs one WebSocket connection: the driver writes frames to the socket itself when it can
/// ([`WsSink`]), a writer task drains the outbound queue otherwise, and the connection task
/// reads. The upgraded socket is still the guarded connection: a WebSocket that never sends an
/// authenticated Hello is closed like any other silent connection.
async fn serve(shared: Arc<Shared>, socket: WebSocket, info: ConnInfo) {
    let (sink, stream) = socket.split();
    let sink = Arc::new(WsSink::new(sink));
    let (mut tx, rx) = shared.outbound();
    tx.set_direct(sink.clone());
    let (closed_tx, closed_rx) = oneshot::channel();
    shared.metrics.connections.inc();
    let writer = tokio::spawn(write(sink, rx, closed_tx));
    run_connection(shared, WsInbound(stream), tx, closed_rx, Some(info)).await;
    // The writer ends once the driver lets go of the queue (after the last frames and a Close).
    let _ = writer.await;
}

/// The socket's sending half, shared by the driver's direct writes and the writer task.
///
/// The lock is only ever held for one poll, never across an await: the driver only tries it,
/// and goes through the queue when the writer (or, on another worker, the reader) has it.
#[derive(Debug)]
struct WsSink {
    state: Mutex<SinkState>,
    /// Asks the writer task to finish a flush a direct write could not complete.
    flush: Notify,
}

#[derive(Debug)]
struct SinkState {
    sink: SplitSink<WebSocket, Message>,
    /// The driver buffered frames and has not flushed them yet.
    buffered: bool,
    /// A direct flush could not finish: nothing more goes direct until the writer has flushed.
    unflushed: bool,
}

impl DirectSink for WsSink {
    fn try_buffer(&self, frame: &OutFrame) -> bool {
        let Ok(mut state) = self.state.try_lock() else { return false };
        if state.unflushed {
            return false;
        }
        // Nothing waits on this context: a direct write that cannot finish hands its bytes to
        // the writer task, which polls with its own.
        let mut cx = Context::from_waker(Waker::noop());
        let mut sink = Pin::new(&mut state.sink);
        if !matches!(sink.as_mut().poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            return false;
        }
        if sink.as_mut().start_send(encode(frame)).is_err() {
            return false;
        }
        state.buffered = true;
        true
    }

    fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.buffered {
            return;
        }
        state.buffered = false;
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(Pin::new(&mut state.sink).poll_flush(&mut cx), Poll::Ready(Ok(()))) {
            // Still buffered (the socket is full, or the reader holds the socket on another
            // worker) or failed: the writer flushes it, or finds out.
            state.unflushed = true;
            self.flush.notify_one();
        }
    }
}

impl WsSink {
    fn new(sink: SplitSink<WebSocket, Message>) -> WsSink {
        WsSink {
            state: Mutex::new(SinkState { sink, buffered: false, unflushed: false }),
            flush: Notify::new(),
        }
    }

    /// Runs one poll of the sink under the lock.
    async fn poll_sink<R>(
        &self,
        mut f: impl FnMut(Pin<&mut SplitSink<WebSocket, Message>>, &mut Context<'_>) -> Poll<R>,
    ) -> R {
        std::future::poll_fn(|cx| {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            f(Pin::new(&mut state.sink), cx)
        })
        .await
    }

    async fn feed(&self, message: Message) -> Result<(), axum::Error> {
        let mut message = Some(message);
        self.poll_sink(|mut sink, cx| {
            futures_util::ready!(sink.as_mut().poll_ready(cx))?;
            match message.take() {
                Some(message) => Poll::Ready(sink.start_send(message)),
                None => Poll::Ready(Ok(())),
            }
        })
        .await
    }

    /// Flushes everything buffered, the direct writes' leftovers included, waiting for the
    /// socket (the writer task's flush, where [`DirectSink::flush`] never waits).
    async fn flush_all(&self) -> Result<(), axum::Error> {
        std::future::poll_fn(|cx| {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let flushed = futures_util::ready!(Pin::new(&mut state.sink).poll_flush(cx));
            state.unflushed = false;
            Poll::Ready(flushed)
        })
        .await
    }

    async fn close(&self) {
        let close = CloseFrame { code: close_code::NORMAL, reason: "".into() };
        if self.feed(Message::Close(Some(close))).await.is_ok() {
            let _ = self.poll_sink(|sink, cx| sink.poll_close(cx)).await;
        }
    }
}

/// Sends the outbound queue as binary messages until it closes (then a Close) or the socket
/// fails. Dropping `_closed` tells the connection task that nothing more can be sent.
async fn write(sink: Arc<WsSink>, mut rx: OutboundReceiver, _closed: oneshot::Sender<()>) {
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
        // Whatever else is queued goes out with it, flushed once.
        let mut next = Some(frame);
        let mut fed = 0;
        while let Some(frame) = next {
            if let Err(e) = sink.feed(encode(&frame)).await {
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

/// One binary message per frame, its bytes written straight from the domain frame.
fn encode(frame: &OutFrame) -> Message {
    Message::Binary(frame_message(frame))
}

/// The socket's messages as inbound frames.
struct WsInbound(SplitStream<WebSocket>);

impl InboundFrames for WsInbound {
    fn into_frames(self) -> FrameStream {
        Box::pin(futures_util::stream::unfold(self, |mut inbound| async move {
            let next = inbound.next().await;
            Some((next, inbound))
        }))
    }

    async fn next(&mut self) -> Inbound {
        loop {
            let message = match self.0.next().await {
                None => return Inbound::Closed,
                Some(Ok(message)) => message,
                Some(Err(e)) => return Inbound::Broken(read_error(e)),
            };
            return match message {
                Message::Binary(bytes) => match pb::ClientFrame::decode(bytes) {
                    Ok(frame) => Inbound::Frame(Box::new(frame)),
                    Err(e) => Inbound::Broken(Some(Error::new(
                        Code::FrameInvalid,
                        format!("a binary message is not a ClientFrame: {e}"),
                    ))),
                },
                Message::Text(_) => Inbound::Broken(Some(Error::new(
                    Code::FrameInvalid,
                    "text messages are not accepted: send each ClientFrame as a binary message",
                ))),
                // Answered by the socket itself; liveness is the protocol's Ping/heartbeat.
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => Inbound::Closed,
            };
        }
    }
}

/// What to tell the device about a failed read, if anyone is left to tell.
fn read_error(error: axum::Error) -> Option<Error> {
    let inner = error.into_inner();
    let Some(error) = inner.downcast_ref::<tungstenite::Error>() else {
        tracing::debug!(error = %inner, "WebSocket read failed");
        return None;
    };
    match error {
        tungstenite::Error::Capacity(e) => Some(Error::new(Code::MessageTooLarge, e.to_string())),
        tungstenite::Error::Utf8(_) => Some(Error::new(Code::FrameInvalid, error.to_string())),
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(e) => Some(Error::new(Code::FrameInvalid, e.to_string())),
        _ => {
            tracing::debug!(%error, "WebSocket read failed");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use callplus_session::{EndReason, Event, ServerBody, ServerFrame};
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

    use super::super::outbound::{Sent, outbound};
    use super::*;

    /// A server-side WebSocket from axum's upgrade, and the client's end of it.
    async fn socket_pair() -> (WebSocket, tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
        let (upgraded, socket) = oneshot::channel();
        let upgraded = Arc::new(Mutex::new(Some(upgraded)));
        let app = axum::Router::new().route(
            "/",
            get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |socket| async move {
                    let tx = upgraded.lock().unwrap_or_else(PoisonError::into_inner).take();
                    if let Some(tx) = tx {
                        let _ = tx.send(socket);
                    }
                })
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds on loopback");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let (client, _) =
            tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(config))
                .await
                .expect("upgrades");
        (socket.await.expect("the server side"), client)
    }

    /// A direct write whose flush the socket cannot take at once (the client is not reading,
    /// and the frame is larger than both sockets' buffers) is finished by the writer task,
    /// with nothing more sent to wake it: the frame arrives whole once the client reads.
    #[tokio::test]
    async fn a_direct_write_the_socket_cannot_take_at_once_is_finished_by_the_writer() {
        let (socket, mut client) = socket_pair().await;
        let (sink, _stream) = socket.split();
        let sink = Arc::new(WsSink::new(sink));
        let (mut tx, rx) = outbound(16, 1 << 30);
        tx.set_direct(sink.clone());
        let (closed, _closed) = oneshot::channel();
        let writer = tokio::spawn(write(sink.clone(), rx, closed));
        let message = "x".repeat(32 << 20);
        let kicked = Event::Kicked { reason: EndReason::Hangup, message: message.clone() };
        let frame = OutFrame::from(ServerFrame { seq: 7, ack: 0, body: ServerBody::Event(kicked) });
        assert_eq!(tx.try_send(frame), Ok(Sent::Direct));
        tx.flush_direct();
        let handed_over = sink.state.lock().unwrap_or_else(PoisonError::into_inner).unflushed;
        assert!(handed_over, "32 MiB cannot fit the sockets' buffers: the rest is the writer's");
        let received = tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("the whole frame in time")
            .expect("a message")
            .expect("readable");
        let tungstenite::Message::Binary(bytes) = received else { panic!("a binary message") };
        let frame = pb::ServerFrame::decode(bytes).expect("a ServerFrame");
        assert_eq!(frame.seq, 7);
        let Some(pb::server_frame::Body::Event(event)) = frame.body else { panic!("an event") };
        let Some(pb::event::Kind::Kicked(kicked)) = event.kind else { panic!("Kicked") };
        assert_eq!(kicked.message.len(), message.len());
        // Once the driver lets go, the writer closes the socket and ends.
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer ends")
            .expect("no panic");
    }
}
