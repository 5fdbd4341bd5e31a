//! The gRPC transport: `Signal.Connect`, one bidirectional stream per device.
//!
//! Each stream becomes a connection task ([`super::connection`]): tonic's decoded messages are
//! its inbound frames, and the connection's outbound queue is the response stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use callplus_proto::v1 as pb;
use callplus_proto::v1::signal_server::Signal;
use callplus_session::{Code, Error};
use tokio::sync::oneshot;
use tonic::{Request, Status, Streaming};

use super::connection::{Inbound, InboundFrames, Shared, run_connection};
use super::outbound::OutboundReceiver;
use super::silence::ConnInfo;

/// The tonic service.
pub(crate) struct SignalService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Signal for SignalService {
    type ConnectStream = OutboundStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, Status> {
        // Served through axum (see `device_port`), which hands every request its connection's
        // info (the peer, and the flag an authenticated Hello sets) as `ConnectInfo`.
        let info =
            request.extensions().get::<axum::extract::ConnectInfo<ConnInfo>>().map(|info| info.0.clone());
        let inbound = GrpcInbound(request.into_inner());
        let (tx, rx) = self.shared.outbound();
        let (closed_tx, closed_rx) = oneshot::channel();
        self.shared.metrics.connections.inc();
        tokio::spawn(run_connection(self.shared.clone(), inbound, tx, closed_rx, info));
        Ok(tonic::Response::new(OutboundStream { rx, _closed: closed_tx }))
    }
}

/// The response stream: the connection's outbound queue. Dropping it (the client went away or
/// the queue closed) tells the connection task to stop reading.
pub(crate) struct OutboundStream {
    rx: OutboundReceiver,
    _closed: oneshot::Sender<()>,
}

impl tokio_stream::Stream for OutboundStream {
    type Item = Result<pb::ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(|f| Ok(pb::ServerFrame::from(&*f))))
    }
}

/// The request stream as inbound frames.
struct GrpcInbound(Streaming<pb::ClientFrame>);

impl InboundFrames for GrpcInbound {
    async fn next(&mut self) -> Inbound {
        match self.0.message().await {
            Ok(Some(frame)) => Inbound::Frame(Box::new(frame)),
            Ok(None) => Inbound::Closed,
            // The client cancelled or the connection dropped: nobody is left to tell.
            Err(status) if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown) => {
                tracing::debug!(%status, "stream ended");
                Inbound::Broken(None)
            }
            Err(status) => Inbound::Broken(Some(status_error(&status))),
        }
    }
}

fn status_error(status: &Status) -> Error {
    if status.code() == tonic::Code::OutOfRange || status.message().contains("message length too large") {
        Error::new(Code::MessageTooLarge, status.message().to_owned())
    } else {
        Error::new(Code::FrameInvalid, status.message().to_owned())
    }
}
