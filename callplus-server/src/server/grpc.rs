//! The gRPC transport: `Signal.Connect`, one bidirectional stream per device.
//!
//! Each stream becomes a connection ([`super::connection`]): tonic's decoded messages are its
//! inbound frames, which the driver reads once the Hello is authenticated, and the
//! connection's outbound queue is the response stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use callplus_proto::codec::{SignalCodec, buffer_settings};
use callplus_proto::v1 as pb;
use callplus_session::{Code, Error, OutFrame};
use futures_util::StreamExt as _;
use tokio::sync::oneshot;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Status, Streaming};

use super::connection::{Inbound, InboundFrames, Shared, run_connection};
use super::driver_reads::FrameStream;
use super::frame_scratch::put_frame;
use super::outbound::OutboundReceiver;
use super::silence::ConnInfo;

/// The gRPC path of `Signal.Connect`.
const CONNECT_PATH: &str = "/callplus.v1.Signal/Connect";

/// The `Signal` service, written out rather than generated: the generated stub fixes the
/// response stream's items to `pb::ServerFrame`, and this one sends the switchboard's
/// [`OutFrame`]s, which [`FrameEncoder`] writes straight into tonic's buffer
/// ([`super::frame_scratch::put_frame`]) without building the generated struct.
#[derive(Clone)]
pub(crate) struct SignalService {
    pub(crate) shared: Arc<Shared>,
    /// The largest client frame accepted (tonic answers larger ones with `OUT_OF_RANGE`).
    pub(crate) max_decoding_message_size: usize,
}

impl NamedService for SignalService {
    const NAME: &'static str = pb::signal_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for SignalService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CONNECT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let connect = Connect { shared: self.shared.clone() };
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(FrameCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(connect, req).await)
        })
    }
}

/// `Signal.Connect`: one bidirectional stream per device.
struct Connect {
    shared: Arc<Shared>,
}

impl StreamingService<pb::ClientFrame> for Connect {
    type Response = OutFrame;
    type ResponseStream = OutboundStream;
    type Future = BoxFuture<tonic::Response<OutboundStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::ClientFrame>>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            // Served through axum (see `device_port`), which hands every request its
            // connection's info (the peer, and the flag an authenticated Hello sets) as
            // `ConnectInfo`.
            let info =
                request.extensions().get::<axum::extract::ConnectInfo<ConnInfo>>().map(|info| info.0.clone());
            let inbound = GrpcInbound(request.into_inner());
            let (tx, rx) = shared.outbound();
            let (closed_tx, closed_rx) = oneshot::channel();
            shared.metrics.connections.inc();
            tokio::spawn(run_connection(shared.clone(), inbound, tx, closed_rx, info));
            Ok(tonic::Response::new(OutboundStream { rx, _closed: closed_tx }))
        })
    }
}

/// The stream's codec: client frames through prost (as the generated stub), server frames
/// through [`FrameEncoder`]; both with the signalling stream's small buffers.
struct FrameCodec;

impl Codec for FrameCodec {
    type Encode = OutFrame;
    type Decode = pb::ClientFrame;
    type Encoder = FrameEncoder;
    type Decoder = ClientFrameDecoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> ClientFrameDecoder {
        ClientFrameDecoder(SignalCodec::<pb::ServerFrame, pb::ClientFrame>::default().decoder())
    }
}

/// Writes each frame's protobuf bytes straight from the domain frame.
struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = OutFrame;
    type Error = Status;

    fn encode(&mut self, frame: OutFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        put_frame(&frame, dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// The generated stub's decoder of client frames.
struct ClientFrameDecoder(<SignalCodec<pb::ServerFrame, pb::ClientFrame> as Codec>::Decoder);

impl Decoder for ClientFrameDecoder {
    type Item = pb::ClientFrame;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::ClientFrame>, Status> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The response stream: the connection's outbound queue. Dropping it (the client went away or
/// the queue closed) tells the connection task to stop reading.
pub(crate) struct OutboundStream {
    rx: OutboundReceiver,
    _closed: oneshot::Sender<()>,
}

impl tokio_stream::Stream for OutboundStream {
    type Item = Result<OutFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// The request stream as inbound frames.
///
/// tonic's [`Streaming`] reads its stream's body, which the HTTP/2 connection's task fills and
/// wakes whoever polls it: once the Hello is authenticated the driver polls it itself
/// ([`super::driver_reads`]), and a frame goes from the connection's task to the switchboard
/// without a connection task and a queue between them.
struct GrpcInbound(Streaming<pb::ClientFrame>);

impl InboundFrames for GrpcInbound {
    fn into_frames(self) -> FrameStream {
        Box::pin(self.0.map(|message| inbound(Some(message))))
    }

    async fn next(&mut self) -> Inbound {
        inbound(self.0.message().await.transpose())
    }
}

/// What the request stream's next item means for the connection.
fn inbound(message: Option<Result<pb::ClientFrame, Status>>) -> Inbound {
    match message {
        Some(Ok(frame)) => Inbound::Frame(Box::new(frame)),
        None => Inbound::Closed,
        // The client cancelled or the connection dropped: nobody is left to tell.
        Some(Err(status)) if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown) => {
            tracing::debug!(%status, "stream ended");
            Inbound::Broken(None)
        }
        Some(Err(status)) => Inbound::Broken(Some(status_error(&status))),
    }
}

fn status_error(status: &Status) -> Error {
    if status.code() == tonic::Code::OutOfRange || status.message().contains("message length too large") {
        Error::new(Code::MessageTooLarge, status.message().to_owned())
    } else {
        Error::new(Code::FrameInvalid, status.message().to_owned())
    }
}
