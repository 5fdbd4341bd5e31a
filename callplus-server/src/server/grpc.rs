//! The gRPC transport: `Signal.Connect`, one bidirectional stream per device.
//!
//! Each stream gets a task that waits for the Hello (with a timeout), checks the token and
//! hands the connection to the driver; then it forwards every frame. Refusals are answered with a `Response` carrying the Hello's `request_id` and a code
//! (`TOKEN_INVALID`, `TOKEN_EXPIRED`, …), then the stream is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_proto::v1::signal_server::Signal;
use callplus_session::{ClientBody, ClientFrame, Code, Error, Response, ServerBody, ServerFrame};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Status, Streaming};

use super::auth::Auth;
use super::driver::{DriverHandle, Input, Open, OutboundQueue, unix_ms};
use super::metrics::Metrics;

/// How long a refusal may wait for room in the outbound queue.
const REFUSAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) driver: DriverHandle,
    pub(crate) auth: Arc<Auth>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hello_timeout: Duration,
    pub(crate) outbound_queue: usize,
    pub(crate) next_conn: AtomicU64,
    /// Becomes true when the server stops: streams still waiting for their Hello are closed.
    pub(crate) stopping: watch::Receiver<bool>,
}

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
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.shared.outbound_queue.max(1));
        let (closed_tx, closed_rx) = oneshot::channel();
        self.shared.metrics.connections.inc();
        tokio::spawn(run_connection(self.shared.clone(), inbound, tx, closed_rx, peer));
        Ok(tonic::Response::new(OutboundStream { rx, _closed: closed_tx }))
    }
}

/// The response stream: the connection's outbound queue. Dropping it (the client went away or
/// the queue closed) tells the connection task to stop reading.
pub(crate) struct OutboundStream {
    rx: mpsc::Receiver<Box<ServerFrame>>,
    _closed: oneshot::Sender<()>,
}

impl tokio_stream::Stream for OutboundStream {
    type Item = Result<pb::ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(|f| Ok(pb::ServerFrame::from(&*f))))
    }
}

fn unix_secs() -> u64 {
    u64::try_from(unix_ms() / 1000).unwrap_or(0)
}

/// A response frame refusing the Hello.
fn refusal(request_id: u64, error: Error) -> Box<ServerFrame> {
    Box::new(ServerFrame {
        seq: 0,
        ack: 0,
        body: ServerBody::Response(Response { request_id, result: Err(error) }),
    })
}

async fn refuse(shared: &Shared, out: OutboundQueue, request_id: u64, error: Error) {
    tracing::debug!(code = error.code.number(), message = %error.message, "refusing a connection");
    let name = error.code.to_proto().as_str_name();
    shared.metrics.count_auth_failure(name.strip_prefix("RESULT_CODE_").unwrap_or(name));
    let _ = out.send_timeout(refusal(request_id, error), REFUSAL_SEND_TIMEOUT).await;
    // Dropping `out` ends the response stream after the refusal.
}

fn status_error(status: &Status) -> Error {
    if status.code() == tonic::Code::OutOfRange || status.message().contains("message length too large") {
        Error::new(Code::MessageTooLarge, status.message().to_owned())
    } else {
        Error::new(Code::FrameInvalid, status.message().to_owned())
    }
}

async fn run_connection(
    shared: Arc<Shared>,
    mut inbound: Streaming<pb::ClientFrame>,
    out: OutboundQueue,
    mut closed: oneshot::Receiver<()>,
    peer: Option<std::net::SocketAddr>,
) {
    let mut stopping = shared.stopping.clone();
    let first = tokio::select! {
        first = tokio::time::timeout(shared.hello_timeout, inbound.message()) => first,
        _ = &mut closed => return,
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let first = match first {
        Err(_) => {
            let error = Error::new(Code::Timeout, "no Hello received in time");
            return refuse(&shared, out, 0, error).await;
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(status)) => return refuse(&shared, out, 0, status_error(&status)).await,
    };
    let request_id = first.request_id;
    let hello = match ClientFrame::try_from(first) {
        Ok(ClientFrame { body: ClientBody::Hello(hello), .. }) => hello,
        Ok(_) => {
            let error = Error::new(Code::InvalidState, "the first frame must be a Hello");
            return refuse(&shared, out, request_id, error).await;
        }
        Err(e) => return refuse(&shared, out, request_id, e.error).await,
    };
    let (app, user) = match shared.auth.authenticate(&hello.token, unix_secs()).await {
        Ok(who) => who,
        Err(error) => {
            tracing::info!(?peer, code = error.code.number(), message = %error.message, "token refused");
            return refuse(&shared, out, request_id, error).await;
        }
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(conn, ?peer, %app, %user, "stream authenticated");
    let (closed_by_driver, mut driver_closed) = oneshot::channel();
    let open = Open { conn, app, user, hello, tx: out, closed: closed_by_driver };
    if !shared.driver.send(Input::Open(Box::new(open))).await {
        return;
    }
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = &mut closed => break,
            _ = &mut driver_closed => return,
        };
        let input = match message {
            Ok(Some(frame)) => match ClientFrame::try_from(frame) {
                Ok(frame) => Input::Frame { conn, frame: Box::new(frame) },
                Err(error) => Input::Invalid { conn, error },
            },
            Ok(None) => break,
            Err(status) => {
                // The stream cannot be read past a message it cannot decode (too large,
                // corrupt): the driver tells the device why, after its Welcome and whatever
                // else it was sent, and closes the connection.
                tracing::debug!(conn, %status, "stream error");
                if status.code() == tonic::Code::Cancelled || status.code() == tonic::Code::Unknown {
                    break;
                }
                let _ = shared.driver.send(Input::Broken { conn, error: status_error(&status) }).await;
                return;
            }
        };
        if !shared.driver.send(input).await {
            return;
        }
    }
    let _ = shared.driver.send(Input::Lost { conn }).await;
}
