//! The gRPC transport: `Signal.Connect`, one bidirectional stream per device.
//!
//! Each stream becomes a connection ([`super::connection`]): the request body's messages are
//! its inbound frames, which the driver reads once the Hello is authenticated, and the
//! connection's outbound queue is the response body. hyper carries the HTTP/2 stream; the
//! gRPC messages on it are cut and written by [`super::grpc_framing`], and the response ends
//! with the `grpc-status` trailer.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use callplus_session::limits::MAX_FRAME_BYTES;
use callplus_session::{Code, Error};
use hyper::body::{Body as _, Frame};
use prost::bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::connection::{Inbound, Shared, run_connection};
use super::frame_scratch::put_frame;
use super::grpc_framing::{self, MessageReader};
use super::inbound_frames::{Frames, PollFrames, decode_client_frame};
use super::outbound::OutboundReceiver;
use super::silence::ConnInfo;

/// The gRPC path of `Signal.Connect`.
const CONNECT_PATH: &str = "/callplus.v1.Signal/Connect";

/// The media type of gRPC requests and responses.
const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// How many bytes of queued frames one response chunk takes at most before it is handed to
/// HTTP/2 (more are taken by the next).
const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// A chunk larger than this (a page of call records) takes the chunk buffer's memory with it.
const KEPT_CHUNK_BYTES: usize = 16 * 1024;

/// The `Signal.Connect` route, to be merged with the WebSocket and page routes on the device
/// port.
pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().route(CONNECT_PATH, post(connect)).with_state(shared)
}

/// What the device port answers any other request: gRPC's `UNIMPLEMENTED` (status 12) as a
/// response of trailers only, which a gRPC client reads as an unknown method.
pub(crate) async fn unimplemented() -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    headers.insert("grpc-status", HeaderValue::from_static("12"));
    response
}

/// `Signal.Connect`: the response's headers at once, then the connection's frames as they are
/// queued, then `grpc-status: 0` once the driver lets go of the connection.
async fn connect(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if !is_grpc(request.headers()) {
        return unsupported_media_type();
    }
    // Served through axum (see `device_port`), which hands every request its connection's info
    // (the peer, and the flag an authenticated Hello sets) as `ConnectInfo`.
    let info = request.extensions().get::<axum::extract::ConnectInfo<ConnInfo>>().map(|info| info.0.clone());
    let inbound =
        Frames::new(GrpcInbound { body: request.into_body(), reader: MessageReader::new(MAX_FRAME_BYTES) });
    let (tx, rx) = shared.outbound();
    let (closed_tx, closed_rx) = oneshot::channel();
    shared.metrics.connections.inc();
    tokio::spawn(run_connection(shared.clone(), inbound, tx, closed_rx, info));
    let body = OutboundBody { rx, chunk: BytesMut::new(), ended: false, _closed: closed_tx };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    response
}

/// Whether the request says it carries gRPC (`application/grpc`, `application/grpc+proto`,
/// `application/grpc;…`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.strip_prefix(GRPC_CONTENT_TYPE).is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
    })
}

/// gRPC's answer to a request that is not gRPC (HTTP 415), so that a plain HTTP client does not
/// take the `200` of a gRPC error for success.
fn unsupported_media_type() -> Response {
    let mut response = Response::new(Body::from("Signal.Connect takes application/grpc\n"));
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
}

/// The response body: the connection's outbound queue, each frame one gRPC message, every
/// frame queued at the time in one chunk. Dropping it (the client went away, or the stream
/// ended) tells the connection task to stop reading.
struct OutboundBody {
    rx: OutboundReceiver,
    /// Where chunks are written; each is split off, and its room used again once HTTP/2 has
    /// sent it.
    chunk: BytesMut,
    /// The trailers were returned.
    ended: bool,
    _closed: oneshot::Sender<()>,
}

impl hyper::body::Body for OutboundBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let Some(first) = futures_util::ready!(this.rx.poll_recv(cx)) else {
            this.ended = true;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        };
        let mut next = Some(first);
        while let Some(frame) = next {
            grpc_framing::append_message(&mut this.chunk, |out| put_frame(&frame, out));
            next = if this.chunk.len() < MAX_CHUNK_BYTES { this.rx.try_recv() } else { None };
        }
        let data = this.chunk.split().freeze();
        // The chunk and the buffer share one allocation, which the buffer reuses whole once
        // HTTP/2 has sent the chunk: after a large chunk the buffer starts afresh instead.
        if data.len() > KEPT_CHUNK_BYTES {
            this.chunk = BytesMut::new();
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// The request body as inbound frames.
///
/// hyper's request body is filled by the HTTP/2 connection's task, which wakes whoever polls
/// it: once the Hello is authenticated the driver polls it itself ([`super::driver_reads`]),
/// and a frame goes from the connection's task to the switchboard without a connection task
/// and a queue between them.
struct GrpcInbound {
    body: Body,
    reader: MessageReader,
}

impl PollFrames for GrpcInbound {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            match self.reader.next_message() {
                Err(error) => return Poll::Ready(Inbound::Broken(Some(error))),
                Ok(Some(message)) => return Poll::Ready(decode_client_frame(&message, "a gRPC message")),
                Ok(None) => {}
            }
            match futures_util::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers from a client carry nothing the stream needs.
                    if let Some(data) = frame.data_ref() {
                        self.reader.buffer().extend_from_slice(data);
                    }
                }
                None if self.reader.is_mid_message() => {
                    let error = Error::new(Code::FrameInvalid, "the request stream ended inside a message");
                    return Poll::Ready(Inbound::Broken(Some(error)));
                }
                None => return Poll::Ready(Inbound::Closed),
                // The client cancelled or the connection dropped: nobody is left to tell.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "stream ended");
                    return Poll::Ready(Inbound::Broken(None));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::task::Waker;

    use callplus_proto::v1 as pb;
    use callplus_session::{EndReason, Event, OutFrame, ServerBody, ServerFrame};
    use prost::Message as _;

    use super::super::outbound::outbound;
    use super::*;

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let typed = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_grpc(&headers)
        };
        for grpc in ["application/grpc", "application/grpc+proto", "application/grpc;charset=utf-8"] {
            assert!(typed(grpc), "{grpc}");
        }
        for other in ["application/json", "application/grpc-web", "application/grpcx", "text/plain"] {
            assert!(!typed(other), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()), "no content type");
    }

    fn frame(seq: u64) -> OutFrame {
        let kicked = Event::Kicked { reason: EndReason::Hangup, message: format!("frame {seq}") };
        OutFrame::from(ServerFrame { seq, ack: 0, body: ServerBody::Event(kicked) })
    }

    fn poll(body: &mut OutboundBody) -> Poll<Option<Frame<Bytes>>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body).poll_frame(&mut cx).map(|frame| frame.map(|f| f.unwrap_or_else(|e| match e {})))
    }

    /// A large chunk (a page of records) does not leave its room in the buffer for the
    /// stream's later, small chunks.
    #[test]
    fn a_large_chunk_takes_the_buffers_memory_with_it() {
        let (tx, rx) = outbound(16, 1 << 30);
        let (closed, _closed) = oneshot::channel();
        let mut body = OutboundBody { rx, chunk: BytesMut::new(), ended: false, _closed: closed };
        let kicked = Event::Kicked { reason: EndReason::Hangup, message: "x".repeat(100_000) };
        tx.try_send(OutFrame::from(ServerFrame { seq: 1, ack: 0, body: ServerBody::Event(kicked) })).unwrap();
        let Poll::Ready(Some(large)) = poll(&mut body) else { panic!("a chunk") };
        assert!(large.data_ref().expect("data").len() > 100_000);
        drop(large);
        tx.try_send(frame(2)).unwrap();
        let Poll::Ready(Some(small)) = poll(&mut body) else { panic!("a chunk") };
        drop(small);
        body.chunk.reserve(16);
        assert!(body.chunk.capacity() <= KEPT_CHUNK_BYTES, "{} bytes kept", body.chunk.capacity());
    }

    /// Every frame queued when the body is polled goes out in one chunk, each one message; the
    /// queue's end is the `grpc-status: 0` trailer, and after it the body is over.
    #[test]
    fn queued_frames_leave_in_one_chunk_and_the_end_is_the_ok_trailer() {
        let (tx, rx) = outbound(16, 1 << 20);
        let (closed, _closed) = oneshot::channel();
        let mut body = OutboundBody { rx, chunk: BytesMut::new(), ended: false, _closed: closed };
        assert!(poll(&mut body).is_pending(), "nothing queued yet");
        for seq in 1..=3 {
            tx.try_send(frame(seq)).unwrap();
        }
        let Poll::Ready(Some(chunk)) = poll(&mut body) else { panic!("a chunk") };
        let mut reader = MessageReader::new(1 << 20);
        reader.buffer().extend_from_slice(chunk.data_ref().expect("data"));
        let mut seqs = Vec::new();
        while let Some(message) = reader.next_message().unwrap() {
            seqs.push(pb::ServerFrame::decode(message).unwrap().seq);
        }
        assert_eq!(seqs, [1, 2, 3]);
        drop(tx);
        let Poll::Ready(Some(end)) = poll(&mut body) else { panic!("the trailers") };
        assert_eq!(
            end.trailers_ref().and_then(|t| t.get("grpc-status")).map(HeaderValue::as_bytes),
            Some(&b"0"[..])
        );
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }
}
