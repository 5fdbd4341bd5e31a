//! One device connection, whatever carries it: the part of a transport that is not framing.
//!
//! Both transports (the gRPC stream in [`super::grpc`], the WebSocket in [`super::websocket`])
//! decode messages into protobuf `ClientFrame`s and hand them here through [`Inbound`]; this
//! task waits for the Hello (with a timeout), checks the token and hands the connection, with
//! its inbound frames, to the driver, which reads them from then on. Outbound frames go the
//! other way through the connection's [`OutboundQueue`], which the transport drains. Refusals
//! are answered with a `Response` carrying the Hello's `request_id` and a code
//! (`TOKEN_INVALID`, `TOKEN_EXPIRED`, …), then the queue is closed, which ends the
//! transport's stream. So the protocol (Hello/Welcome, seq/ack, resume, heartbeats, limits,
//! error codes) is one, and only the framing differs.
//!
//! Once a Hello is authenticated the task marks the connection greeted ([`ConnInfo::greet`]),
//! for either transport: until then the device port closes the whole connection at its
//! deadline ([`super::silence`]), whatever it carries.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use callplus_session::switchboard::ConnId;
use callplus_session::wire::FrameError;
use callplus_session::{ClientBody, ClientFrame, Code, Error, OutFrame, Response, ServerBody, ServerFrame};
use tokio::sync::{oneshot, watch};

use super::auth::Auth;
use super::driver::{DriverHandle, Input, Open, OutboundQueue, unix_ms};
use super::driver_reads::{FrameStream, HandedOver};
use super::metrics::Metrics;
use super::outbound::{OutboundReceiver, outbound};
use super::silence::ConnInfo;

/// How long a refusal may wait for room in the outbound queue.
const REFUSAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) driver: DriverHandle,
    pub(crate) auth: Arc<Auth>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hello_timeout: Duration,
    pub(crate) outbound_queue: usize,
    /// Estimated bytes queued per connection before it is closed as too slow.
    pub(crate) outbound_queue_bytes: usize,
    pub(crate) next_conn: AtomicU64,
    /// Becomes true when the server stops: streams still waiting for their Hello are closed.
    pub(crate) stopping: watch::Receiver<bool>,
}

/// The next thing a transport read from the device.
pub(crate) enum Inbound {
    /// A whole frame, converted from protobuf as it was read (boxed once, here: the driver's
    /// input carries the same box on).
    Frame(Box<ClientFrame>),
    /// A whole protobuf frame that does not make a valid `ClientFrame` (a missing body, a bad
    /// id): answered with an error, and the connection goes on.
    Invalid(FrameError),
    /// The device ended its side cleanly.
    Closed,
    /// The transport cannot be read past this point. With an error, the device is told why
    /// (`MESSAGE_TOO_LARGE`, `FRAME_INVALID`) before the connection closes; without one, the
    /// device is gone and nothing is said.
    Broken(Option<Error>),
}

impl Inbound {
    /// What the driver is told of it on connection `conn`: a frame (converted, or refused as
    /// invalid), the connection lost, or broken. A transport cannot be read past a message it
    /// cannot decode (too large, corrupt): the driver then tells the device why, after its
    /// Welcome and whatever else it was sent, and closes the connection.
    pub(crate) fn into_input(self, conn: ConnId) -> Input {
        match self {
            Inbound::Frame(frame) => Input::Frame { conn, frame },
            Inbound::Invalid(error) => Input::Invalid { conn, error },
            Inbound::Closed | Inbound::Broken(None) => Input::Lost { conn },
            Inbound::Broken(Some(error)) => {
                tracing::debug!(conn, code = error.code.number(), message = %error.message, "stream error");
                Input::Broken { conn, error }
            }
        }
    }
}

/// A transport's inbound side: whole frames, one at a time.
pub(crate) trait InboundFrames: Send + Sized {
    /// The next frame or the end. Must be cancel-safe (it races the connection's other events).
    fn next(&mut self) -> impl Future<Output = Inbound> + Send;

    /// The frames as a stream, which the driver reads itself once the session is open
    /// ([`super::driver_reads`]).
    fn into_frames(self) -> FrameStream;
}

impl Shared {
    /// A new connection's outbound queue, bounded in frames and bytes.
    pub(crate) fn outbound(&self) -> (OutboundQueue, OutboundReceiver) {
        outbound(self.outbound_queue, self.outbound_queue_bytes)
    }
}

fn unix_secs() -> u64 {
    u64::try_from(unix_ms() / 1000).unwrap_or(0)
}

/// A response frame refusing the Hello, or reporting why a transport broke.
fn refusal(request_id: u64, error: Error) -> OutFrame {
    OutFrame::from(ServerFrame {
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
    // Dropping `out` ends the outbound stream after the refusal.
}

/// Runs one connection until the device, the transport or the driver ends it.
///
/// `out` is the queue the transport sends from; `closed` resolves when the transport can no
/// longer send (the device went away), which stops the reading. `info` is the connection's
/// (marked greeted once the Hello is authenticated).
pub(crate) async fn run_connection(
    shared: Arc<Shared>,
    mut inbound: impl InboundFrames,
    out: OutboundQueue,
    mut closed: oneshot::Receiver<()>,
    info: Option<ConnInfo>,
) {
    let peer = info.as_ref().and_then(ConnInfo::peer);
    let mut stopping = shared.stopping.clone();
    let first = tokio::select! {
        first = tokio::time::timeout(shared.hello_timeout, inbound.next()) => first,
        _ = &mut closed => return,
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let first = match first {
        Err(_) => {
            let error = Error::new(Code::Timeout, "no Hello received in time");
            return refuse(&shared, out, 0, error).await;
        }
        Ok(Inbound::Frame(frame)) => *frame,
        Ok(Inbound::Invalid(e)) => return refuse(&shared, out, e.request_id, e.error).await,
        Ok(Inbound::Closed | Inbound::Broken(None)) => return,
        Ok(Inbound::Broken(Some(error))) => return refuse(&shared, out, 0, error).await,
    };
    let request_id = first.request_id;
    let ClientFrame { body: ClientBody::Hello(hello), .. } = first else {
        let error = Error::new(Code::InvalidState, "the first frame must be a Hello");
        return refuse(&shared, out, request_id, error).await;
    };
    let (app, user) = match shared.auth.authenticate(&hello.token, unix_secs()).await {
        Ok(who) => who,
        Err(error) => {
            tracing::info!(?peer, code = error.code.number(), message = %error.message, "token refused");
            return refuse(&shared, out, request_id, error).await;
        }
    };
    if let Some(info) = &info {
        info.greet();
    }
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(conn, ?peer, %app, %user, "stream authenticated");
    let (closed_by_driver, driver_closed) = oneshot::channel();
    // From here the driver reads the connection itself, until the device, the transport or
    // the driver ends it.
    let reader =
        HandedOver { frames: inbound.into_frames(), transport_closed: closed, released: driver_closed };
    let open =
        Open { conn, app, user, hello, request_id, tx: out, closed: closed_by_driver, reader: Some(reader) };
    let _ = shared.driver.send(Input::Open(Box::new(open))).await;
}
