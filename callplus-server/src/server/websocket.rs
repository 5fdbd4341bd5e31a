//! The WebSocket transport: the same protocol as the gRPC stream, for browsers.
//!
//! Browsers cannot open a gRPC bidirectional stream, so the device port also answers WebSocket
//! upgrades at [`PATH`]. Each binary message carries exactly one protobuf `ClientFrame` (from the
//! device) or `ServerFrame` (from the server); everything else (Hello/Welcome, seq/ack, resume,
//! heartbeats, limits, error codes) is the shared connection task's ([`super::connection`]).
//! Text messages, undecodable bytes and messages over [`MAX_FRAME_BYTES`] are answered with a
//! `Response` (`FRAME_INVALID` or `MESSAGE_TOO_LARGE`, request id 0) and the socket is closed,
//! as a gRPC stream is after a message it cannot decode.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use callplus_proto::v1 as pb;
use callplus_session::limits::MAX_FRAME_BYTES;
use callplus_session::wire::server_frame_to_vec;
use callplus_session::{Code, Error, OutFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite;

use super::connection::{Inbound, InboundFrames, Shared, run_connection};
use super::outbound::OutboundReceiver;
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

/// Runs one WebSocket connection: a writer task drains the outbound queue, the connection task
/// reads. The upgraded socket is still the guarded connection: a WebSocket that never sends an
/// authenticated Hello is closed like any other silent connection.
async fn serve(shared: Arc<Shared>, socket: WebSocket, info: ConnInfo) {
    let (sink, stream) = socket.split();
    let (tx, rx) = shared.outbound();
    let (closed_tx, closed_rx) = oneshot::channel();
    shared.metrics.connections.inc();
    let writer = tokio::spawn(write(sink, rx, closed_tx));
    run_connection(shared, WsInbound(stream), tx, closed_rx, Some(info)).await;
    // The writer ends once the driver lets go of the queue (after the last frames and a Close).
    let _ = writer.await;
}

/// Sends the outbound queue as binary messages until it closes (then a Close) or the socket
/// fails. Dropping `_closed` tells the connection task that nothing more can be sent.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundReceiver,
    _closed: oneshot::Sender<()>,
) {
    while let Some(frame) = rx.recv().await {
        // Whatever else is queued goes out with it, flushed once.
        let mut next = Some(frame);
        while let Some(frame) = next {
            if let Err(e) = sink.feed(encode(&frame)).await {
                tracing::debug!(error = %e, "WebSocket send failed");
                return;
            }
            next = rx.try_recv();
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!(error = %e, "WebSocket send failed");
            return;
        }
    }
    let close = CloseFrame { code: close_code::NORMAL, reason: "".into() };
    let _ = sink.send(Message::Close(Some(close))).await;
    let _ = sink.close().await;
}

/// One binary message per frame, its bytes written straight from the domain frame.
fn encode(frame: &OutFrame) -> Message {
    Message::Binary(server_frame_to_vec(frame.seq, frame.ack, &frame.body).into())
}

/// The socket's messages as inbound frames.
struct WsInbound(SplitStream<WebSocket>);

impl InboundFrames for WsInbound {
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
