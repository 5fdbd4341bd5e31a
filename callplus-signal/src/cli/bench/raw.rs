//! Raw simulated users for call cycles (`--call-client raw` and `--call-client websocket`): a
//! bare signalling stream per user that writes the protocol's frames itself and reads the
//! server's, with no client engine, driver task or event queue in between. The server sees
//! exactly what a real client sends (sequenced requests carrying acks), while the load generator
//! spends a fraction of a full client's CPU, so a 2-core run measures the server rather than the
//! tool. The stream is a gRPC stream on its own HTTP/2 connection (`raw`) or a WebSocket on
//! `/v1/ws` (`websocket`, as a browser connects); the cycle is the same on both.

use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;
use callplus_proto::v1::event::Kind;
use callplus_proto::v1::server_frame::Body as ServerBody;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tonic::transport::Endpoint;

use super::calls::{Tally, in_time};
use super::idle_ws;
use crate::client::TlsOptions;

/// The framing a raw user's frames travel in.
enum Link {
    /// A gRPC stream on its own HTTP/2 connection.
    Grpc { tx: mpsc::Sender<pb::ClientFrame>, inbound: tonic::Streaming<pb::ServerFrame> },
    /// A WebSocket on `/v1/ws`.
    Ws(idle_ws::Socket),
}

impl Link {
    /// Sends one frame; false once the stream is gone.
    async fn send(&mut self, frame: pb::ClientFrame) -> bool {
        match self {
            Link::Grpc { tx, .. } => tx.send(frame).await.is_ok(),
            Link::Ws(socket) => idle_ws::send(socket, &frame).await,
        }
    }

    /// The next server frame; `None` once the stream closed or carried something undecodable.
    async fn next(&mut self) -> Option<pb::ServerFrame> {
        match self {
            Link::Grpc { inbound, .. } => inbound.message().await.ok().flatten(),
            Link::Ws(socket) => idle_ws::next(socket).await.and_then(Result::ok),
        }
    }
}

/// One raw user: its stream, the sequence numbers of the reliable link, and its user id.
pub(super) struct RawParty {
    pub(super) user: String,
    link: Link,
    /// The last request's sequence number.
    seq: u64,
    /// The highest server sequence number received (frames arrive in order on one stream).
    ack: u64,
    /// The call of the cycle under way, for recovery.
    call: Option<String>,
}

/// A caller and its callee, both raw.
pub(super) struct RawPair {
    pub(super) caller: RawParty,
    pub(super) callee: RawParty,
}

/// A decision on one server frame: `None` to keep reading.
type Decision<T> = Option<Result<T, String>>;

impl RawParty {
    /// Opens a connection and a stream for `user`, sends the Hello and waits for the Welcome.
    pub(super) async fn connect(
        endpoint: &str,
        tls: &TlsOptions,
        user: String,
        token: String,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| format!("endpoint:{e}"))?;
        let endpoint = tls.apply(endpoint.tcp_nodelay(true)).map_err(|e| format!("tls:{}", e.message))?;
        let channel = endpoint.connect().await.map_err(|_| "tcp_connect".to_owned())?;
        let (tx, inbound, _heartbeat) = super::idle::open_stream(&channel, "bench-raw", token).await?;
        Ok(Self::new(user, Link::Grpc { tx, inbound }))
    }

    /// Opens a WebSocket to `url` (`ws://host:port/v1/ws`) for `user`, sends the Hello and waits
    /// for the Welcome.
    pub(super) async fn connect_ws(url: &str, user: String, token: String) -> Result<Self, String> {
        let (socket, _heartbeat) = idle_ws::open(url, None, "bench-ws", token).await?;
        Ok(Self::new(user, Link::Ws(socket)))
    }

    fn new(user: String, link: Link) -> Self {
        RawParty { user, link, seq: 0, ack: 0, call: None }
    }

    /// Sends one request (the next sequence number, carrying the ack); returns its request id.
    async fn send(&mut self, body: Body) -> Result<u64, String> {
        self.seq += 1;
        let frame = pb::ClientFrame { seq: self.seq, ack: self.ack, request_id: self.seq, body: Some(body) };
        if !self.link.send(frame).await {
            return Err("stream_closed".to_owned());
        }
        Ok(self.seq)
    }

    /// Reads frames until `decide` decides; returns its value and when that frame came.
    async fn wait<T>(
        &mut self,
        mut decide: impl FnMut(&ServerBody) -> Decision<T>,
    ) -> Result<(T, Instant), String> {
        loop {
            let Some(frame) = self.link.next().await else { return Err("disconnected".to_owned()) };
            self.ack = self.ack.max(frame.seq);
            if let Some(body) = &frame.body
                && let Some(decided) = decide(body)
            {
                return decided.map(|v| (v, Instant::now()));
            }
        }
    }
}

/// The response to request `id`: `Some(Ok)` on success, `Some(Err(step:CODE))` on refusal.
fn response<'a>(body: &'a ServerBody, id: u64, step: &str) -> Option<Result<&'a pb::Response, String>> {
    let ServerBody::Response(r) = body else { return None };
    if r.request_id != id {
        return None;
    }
    if r.code == pb::ResultCode::Success as i32 {
        return Some(Ok(r));
    }
    let name = pb::ResultCode::try_from(r.code).map_or("UNKNOWN", |c| c.as_str_name());
    Some(Err(format!("{step}:{}", name.strip_prefix("RESULT_CODE_").unwrap_or(name))))
}

/// The event a frame carries.
fn event(body: &ServerBody) -> Option<&Kind> {
    match body {
        ServerBody::Event(pb::Event { kind }) => kind.as_ref(),
        _ => None,
    }
}

/// Decides once the response to `id` succeeded and `done` said yes to an event.
fn response_and(
    id: u64,
    step: &'static str,
    mut done: impl FnMut(&Kind) -> bool,
) -> impl FnMut(&ServerBody) -> Decision<()> {
    let (mut answered, mut happened) = (false, false);
    move |body| {
        if let Some(r) = response(body, id, step) {
            if let Err(e) = r {
                return Some(Err(e));
            }
            answered = true;
        } else if let Some(kind) = event(body) {
            happened |= done(kind);
        }
        (answered && happened).then_some(Ok(()))
    }
}

/// Decides once both the end and the record of `call` arrived.
fn ended(call: &str) -> impl FnMut(&Kind) -> bool + '_ {
    let (mut ended, mut recorded) = (false, false);
    move |kind| {
        match kind {
            Kind::CallEnded(e) if e.call.as_ref().is_some_and(|c| c.call_id == call) => ended = true,
            Kind::CallRecord(r) if r.call_id == call => recorded = true,
            _ => {}
        }
        ended && recorded
    }
}

/// Whether `kind` is the record of `call`.
fn recorded(call: &str) -> impl FnMut(&Kind) -> bool + '_ {
    move |kind| matches!(kind, Kind::CallRecord(r) if r.call_id == call)
}

/// Whether `kind` says `call` connected.
fn started(call: &str) -> impl FnMut(&Kind) -> bool + '_ {
    move |kind| matches!(kind, Kind::CallStarted(s) if s.call_id == call)
}

/// One full 1:1 cycle, as [`super::calls`] runs it with full clients, on raw streams.
pub(super) async fn cycle(pair: &mut RawPair, step: Duration, r: &mut Tally) -> Result<(), String> {
    let RawPair { caller, callee } = pair;
    let t_start = Instant::now();
    let start = pb::StartCall {
        callee_ids: vec![callee.user.clone()],
        call_type: pb::CallType::Single as i32,
        media_type: pb::MediaType::Audio as i32,
        ..pb::StartCall::default()
    };
    let id = caller.send(Body::StartCall(start)).await?;
    let ((call_id, _), (incoming, t_received)) = in_time(step, "received_call", async {
        tokio::try_join!(
            caller.wait(|body| {
                response(body, id, "start_call").map(|r| {
                    r.and_then(|r| match &r.result {
                        Some(pb::response::Result::Started(s)) => s
                            .call
                            .as_ref()
                            .map(|c| c.call_id.clone())
                            .ok_or_else(|| "start_call:no_call".to_owned()),
                        _ => Err("start_call:no_call".to_owned()),
                    })
                })
            }),
            callee.wait(|body| match event(body) {
                Some(Kind::IncomingCall(ic)) =>
                    Some(Ok(ic.call.as_ref().map(|c| c.call_id.clone()).unwrap_or_default())),
                _ => None,
            }),
        )
    })
    .await?;
    caller.call = Some(call_id.clone());
    callee.call = Some(call_id.clone());
    if incoming != call_id {
        return Err("received_another_call".to_owned());
    }
    r.start_to_received.record(t_received.duration_since(t_start));

    let t_accept = Instant::now();
    let id = callee.send(Body::Accept(pb::Accept { call_id: call_id.clone() })).await?;
    let (((), t_callee), ((), t_caller)) = in_time(step, "call_connected", async {
        tokio::try_join!(
            callee.wait(response_and(id, "accept", started(&call_id))),
            caller.wait(|body| event(body).is_some_and(started(&call_id)).then_some(Ok(()))),
        )
    })
    .await?;
    r.accept_to_connected.record(t_callee.max(t_caller).duration_since(t_accept));

    let t_hangup = Instant::now();
    let hangup = pb::Hangup { call_id: call_id.clone(), push_config: None };
    let id = caller.send(Body::Hangup(hangup)).await?;
    let (((), t_caller), ((), t_callee)) = in_time(step, "call_ended", async {
        let mut callee_ended = ended(&call_id);
        tokio::try_join!(
            // The one hanging up is told by the answer; its own end is no event.
            caller.wait(response_and(id, "hangup", recorded(&call_id))),
            callee.wait(|body| event(body).is_some_and(&mut callee_ended).then_some(Ok(()))),
        )
    })
    .await?;
    caller.call = None;
    callee.call = None;
    let t_end = t_caller.max(t_callee);
    r.hangup_to_ended.record(t_end.duration_since(t_hangup));
    r.cycle.record(t_end.duration_since(t_start));
    Ok(())
}

/// After a failed cycle: both sides hang up the cycle's call (and any late invitation) and read
/// until a quiet moment. `false` when a stream closed.
pub(super) async fn recover(pair: &mut RawPair, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    for party in [&mut pair.caller, &mut pair.callee] {
        if let Some(call_id) = party.call.take()
            && party.send(Body::Hangup(pb::Hangup { call_id, push_config: None })).await.is_err()
        {
            return false;
        }
        while Instant::now() < deadline {
            let quiet = Duration::from_millis(200);
            match timeout(quiet, party.wait(|body| Some(Ok(event(body).cloned())))).await {
                Err(_) => break,
                Ok(Err(_)) => return false,
                Ok(Ok((Some(Kind::IncomingCall(ic)), _))) => {
                    let call_id = ic.call.map(|c| c.call_id).unwrap_or_default();
                    if party.send(Body::Hangup(pb::Hangup { call_id, push_config: None })).await.is_err() {
                        return false;
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
    }
    true
}

/// Says Goodbye on both streams.
pub(super) async fn goodbye(pair: RawPair) {
    for mut party in [pair.caller, pair.callee] {
        let frame = pb::ClientFrame {
            seq: 0,
            ack: party.ack,
            request_id: 0,
            body: Some(Body::Goodbye(pb::Goodbye {})),
        };
        let _ = party.link.send(frame).await;
        // The server closes the stream once it handled the Goodbye.
        let _ = timeout(Duration::from_secs(2), async { while party.link.next().await.is_some() {} }).await;
    }
}
