//! The driver: one tokio task owns the [`Switchboard`] and moves its inputs and outputs.
//!
//! Transports never touch the switchboard. They number their connections, authenticate the
//! Hello and then send [`Input`]s here; the driver answers
//! through each connection's bounded outbound queue. It is transport-agnostic: a queue of
//! domain [`ServerFrame`]s per connection is all a transport gives it, and dropping that queue
//! is how the driver closes a connection.
//!
//! The loop (as the switchboard's docs prescribe): take one input with the current time, call
//! the switchboard, drain `poll_output` until it is empty, and sleep until `poll_timeout` to
//! call `handle_timeout`. Storage never runs on this task: writes go to the storage
//! [`BatchWriter`], queries to `spawn_blocking` and back as [`Input::QueryDone`], pushes to the
//! push worker.
//!
//! Offline events: the switchboard asks for a connecting device's stored events with a query
//! ([`Query::OfflineEvents`]); like every query it runs after the storage writes queued before
//! it, so an event stored before the device connected is in the answer and later ones go to
//! the device directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_proto::v1 as pb;
use callplus_session::switchboard::{
    ConnId, FastMap, FastSet, NodeMessage, NodeOutput, OfflineEvent, Output, PushRequest, Query, QueryAnswer,
    QueryId, QueryResult, ServerEnd, Switchboard, owner_node,
};
use callplus_session::wire::{FrameError, event_to_wire};
use callplus_session::{
    AppKey, CallId, CallInfo, CallRecord, ClientBody, ClientFrame, Code, DeviceId, Error, Hello,
    MediaPayload, OutFrame, RecordOrder, RecordPage, Response, ServerBody, ServerFrame, UserId,
};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::connection::Inbound;
use super::deadline_timer::DeadlineTimer;
use super::driver_reads::{HandedOver, ReadSet};
use super::media_relay::SfuCommand;
use super::metrics::{Metrics, ReasonLabel};
use super::presence::{Note, PresenceQueue};
use crate::cluster::Lease;
use crate::storage::{BatchWriter, PageOrder, Storage, StorageError, WriteOp};

/// How long a connecting device's stored events wait for its presence registration (a node
/// of several; Redis commands time out after 2 s).
const REGISTER_WAIT: Duration = Duration::from_secs(3);

/// Inputs queued to the driver before transports wait.
const INPUT_QUEUE: usize = 8192;

/// How often the driver notes in storage that it runs with live calls. After a crash, the
/// calls found saved end at the last mark, so at most this much (plus the writer's commit
/// delay) of downtime is counted in their durations.
pub(crate) const ALIVE_MARK_INTERVAL: Duration = Duration::from_millis(500);

/// An authenticated device opening a session on a new connection.
pub(crate) struct Open {
    /// The connection's number.
    pub(crate) conn: ConnId,
    /// The token's app.
    pub(crate) app: AppKey,
    /// The token's user.
    pub(crate) user: UserId,
    /// The Hello.
    pub(crate) hello: Hello,
    /// The Hello frame's request id (a refusal answers it).
    pub(crate) request_id: u64,
    /// The connection's outbound queue (see [`OutboundQueue`]).
    pub(crate) tx: OutboundQueue,
    /// Dropped when the driver closes the connection, so the transport stops reading.
    pub(crate) closed: oneshot::Sender<()>,
    /// The connection's frames, which the driver reads itself (see `driver_reads`); `None`
    /// where frames reach the driver through its input queue instead (the driver's tests).
    pub(crate) reader: Option<HandedOver>,
}

pub(crate) use super::outbound::OutboundQueue;
use super::outbound::{QueueError, Sent};

/// What transports (and the driver's helpers) tell the driver.
pub(crate) enum Input {
    /// An authenticated device opened a session on a new connection.
    Open(Box<Open>),
    /// A frame arrived.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The frame (boxed: frames are large and inputs are moved through a queue).
        frame: Box<ClientFrame>,
    },
    /// A frame arrived that does not convert.
    Invalid {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: FrameError,
    },
    /// The stream cannot be read any further (an undecodable or oversized message): the
    /// device is told why, after everything queued for it (its Welcome first), and the
    /// connection closes. Its session stays resumable, as after any lost connection.
    Broken {
        /// The connection.
        conn: ConnId,
        /// Why (`FRAME_INVALID` or `MESSAGE_TOO_LARGE`).
        error: Error,
    },
    /// The connection is gone.
    Lost {
        /// The connection.
        conn: ConnId,
    },
    /// A storage query finished.
    QueryDone {
        /// The query.
        id: QueryId,
        /// Its result.
        result: QueryResult,
    },
    /// Is this call still live (asked before each push attempt)?
    IsLive {
        /// The app.
        app: AppKey,
        /// The call.
        call_id: CallId,
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// The operator ends a call, or removes a user from it (the admin API).
    EndCall {
        /// The app.
        app: AppKey,
        /// The call.
        call_id: CallId,
        /// The user removed, or `None` to end the call.
        user: Option<UserId>,
        /// What was done.
        reply: oneshot::Sender<Result<ServerEnd, Error>>,
    },
    /// The operator signs a user's devices out, or one device (the admin API).
    SignOut {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The one device, or `None` for all.
        device: Option<DeviceId>,
        /// How many sessions this node closed.
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    /// SDP/ICE from the SFU to one participant device.
    SfuSignal {
        /// The call.
        call_id: CallId,
        /// Recipient user.
        to_user: UserId,
        /// Recipient device.
        to_device: DeviceId,
        /// The message.
        payload: MediaPayload,
    },
    /// The SFU's connection to a participant device came up (`connected`) or failed.
    SfuConnection {
        /// The call.
        call_id: CallId,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// Up, or failed.
        connected: bool,
    },
    /// Work across nodes came back (`serve --redis`, see `routing`).
    Node(super::routing::NodeInput),
    /// Shut down: end every session, write everything, flush storage, stop.
    Shutdown {
        /// Receives the storage flush result.
        done: oneshot::Sender<Result<(), StorageError>>,
    },
}

/// What the driver takes next: an input from its queue (`None` once it closed), or a frame
/// (or the end) of a connection it reads itself.
enum Next {
    Input(Option<Input>),
    Read(ConnId, Inbound),
}

/// A cloneable handle to send inputs to the driver.
#[derive(Clone, Debug)]
pub(crate) struct DriverHandle {
    tx: mpsc::Sender<Input>,
}

impl DriverHandle {
    /// A handle whose inputs go to `tx` (tests read them there).
    #[cfg(test)]
    pub(crate) fn from_sender(tx: mpsc::Sender<Input>) -> DriverHandle {
        DriverHandle { tx }
    }

    /// Queues an input; `false` when the driver has stopped.
    pub(crate) async fn send(&self, input: Input) -> bool {
        self.tx.send(input).await.is_ok()
    }

    /// Asks the driver something: the input `ask` makes with the reply's sender, and the reply;
    /// `None` when the driver has stopped.
    async fn ask<T>(&self, ask: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        if !self.send(ask(reply)).await {
            return None;
        }
        rx.await.ok()
    }

    /// Whether the call is live; `false` when the driver has stopped.
    pub(crate) async fn is_call_live(&self, app: AppKey, call_id: CallId) -> bool {
        self.ask(|reply| Input::IsLive { app, call_id, reply }).await.unwrap_or(false)
    }

    /// Ends a call, or removes `user` from it, as the operator; `None` when the driver has
    /// stopped.
    pub(crate) async fn end_call(
        &self,
        app: AppKey,
        call_id: CallId,
        user: Option<UserId>,
    ) -> Option<Result<ServerEnd, Error>> {
        self.ask(|reply| Input::EndCall { app, call_id, user, reply }).await
    }

    /// Signs `user` out as the operator (every device, or `device`); `None` when the driver has
    /// stopped.
    pub(crate) async fn sign_out(
        &self,
        app: AppKey,
        user: UserId,
        device: Option<DeviceId>,
    ) -> Option<Result<usize, Error>> {
        self.ask(|reply| Input::SignOut { app, user, device, reply }).await
    }

    /// Whether the driver has stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Milliseconds since the Unix epoch from the system clock.
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A connection as the driver sees it: its queue, and a guard whose drop tells the transport
/// the connection is closed.
struct Outbound {
    tx: OutboundQueue,
    _closed: oneshot::Sender<()>,
}

/// The task that owns the switchboard.
pub(crate) struct Driver {
    sb: Switchboard,
    rx: mpsc::Receiver<Input>,
    /// For helpers that report back (queries).
    self_tx: mpsc::Sender<Input>,
    /// Looked up for every frame in and out (about 17 times a call cycle); its keys are the
    /// process's own sequential ids, which no caller chooses, so SipHash buys nothing here.
    conns: FastMap<ConnId, Outbound>,
    /// Connections to report lost once the current drain is done.
    lost: Vec<ConnId>,
    /// Connections sent frames during the current drain, to flush when it ends (see
    /// `outbound::DirectSink`).
    sent: Vec<ConnId>,
    storage: Arc<dyn Storage>,
    writer: Arc<BatchWriter>,
    /// Storage writes of the current drain, handed to the writer in one message when it ends
    /// (or earlier, when something must see them: a query, an offline event's epoch).
    writes: Vec<WriteOp>,
    push: Option<mpsc::Sender<PushRequest>>,
    metrics: Arc<Metrics>,
    /// Calls seen saved and not yet forgotten (counts calls started). Keyed, like the
    /// switchboard's own map of calls, by ids servers make, so on the fast hasher.
    known_calls: FastSet<(AppKey, CallId)>,
    /// Calls read back from storage (recovered at start, or taken over from a lost node) and
    /// not yet forgotten: a snapshot of theirs may be stored, so no save of theirs is fresh
    /// (see [`WriteOp::SaveCall`]).
    stored_calls: FastSet<(AppKey, CallId)>,
    /// The clock never goes back for the switchboard.
    last_now: i64,
    /// [`Switchboard::slow_sessions_dropped`] already counted in the metrics.
    slow_sessions_seen: u64,
    /// Where SFU work goes, when the server runs an SFU.
    sfu: Option<mpsc::UnboundedSender<SfuCommand>>,
    /// The presence registry's queue (`serve --redis`).
    presence: Option<PresenceQueue>,
    /// The queue of work across nodes (`serve --redis`).
    routing: Option<super::routing::RoutingQueue>,
    /// Presence registrations under way, by user: the user's stored events load after them.
    registering: HashMap<(AppKey, UserId), oneshot::Receiver<()>>,
    /// The fencing tokens of the calls this node took over (from a lost node, or from its own
    /// previous run), until they are forgotten; every other call of a node of several is its
    /// creator's, token 1, and a single node writes 0 (see `RecordRow::fence`).
    fences: FastMap<(AppKey, CallId), i64>,
    /// The connections whose frames the driver reads itself.
    reads: ReadSet,
    /// Which of its inputs and its connections' frames the driver looks at first next time,
    /// so that neither waits behind the other for long.
    reads_first: bool,
}

impl Driver {
    /// A driver over a switchboard that already knows the minimum sync time.
    pub(crate) fn new(
        sb: Switchboard,
        storage: Arc<dyn Storage>,
        writer: Arc<BatchWriter>,
        push: Option<mpsc::Sender<PushRequest>>,
        metrics: Arc<Metrics>,
    ) -> (Driver, DriverHandle) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let driver = Driver {
            sb,
            rx,
            self_tx: tx.clone(),
            conns: FastMap::default(),
            lost: Vec::new(),
            sent: Vec::new(),
            storage,
            writer,
            writes: Vec::new(),
            push,
            metrics,
            known_calls: FastSet::default(),
            stored_calls: FastSet::default(),
            last_now: 0,
            slow_sessions_seen: 0,
            sfu: None,
            presence: None,
            routing: None,
            registering: HashMap::new(),
            fences: FastMap::default(),
            reads: ReadSet::default(),
            reads_first: false,
        };
        (driver, DriverHandle { tx })
    }

    /// Sends the switchboard's SFU work to this queue (see `media_relay`).
    pub(crate) fn set_sfu(&mut self, commands: mpsc::UnboundedSender<SfuCommand>) {
        self.sfu = Some(commands);
    }

    /// Keeps this node's devices in the presence registry (needs a switchboard with a node id).
    pub(crate) fn set_presence(&mut self, presence: PresenceQueue) {
        self.presence = Some(presence);
    }

    /// Sends the switchboard's work across nodes to this queue (see `routing`).
    pub(crate) fn set_routing(&mut self, routing: super::routing::RoutingQueue) {
        self.routing = Some(routing);
    }

    fn now(&mut self) -> i64 {
        self.last_now = self.last_now.max(unix_ms());
        self.last_now
    }

    /// Ends calls that were live when the server last stopped (at `alive_until`, the last
    /// [`ALIVE_MARK_INTERVAL`] mark of the stopped server), then drains the outputs.
    pub(crate) fn recover(&mut self, calls: Vec<(AppKey, CallInfo)>, alive_until: Option<i64>) {
        if !calls.is_empty() {
            tracing::info!(calls = calls.len(), ?alive_until, "ending calls interrupted by the last stop");
            self.note_stored(&calls);
            let now = self.now();
            self.sb.end_recovered_calls(now, alive_until, calls);
        }
        self.drain();
    }

    /// Notes the leases taken on calls read back from storage, to end them
    /// ([`super::routing::take_calls`]): their writes carry the leases' fencing tokens, and
    /// the leases are held until the calls are forgotten.
    pub(crate) fn taken_over(&mut self, calls: Vec<(AppKey, CallInfo, Lease)>) -> Vec<(AppKey, CallInfo)> {
        calls
            .into_iter()
            .map(|(app, info, lease)| {
                let key = (app.clone(), info.call_id.clone());
                self.fences.insert(key, i64::try_from(lease.token).unwrap_or(i64::MAX));
                if let Some(routing) = &self.routing {
                    routing.hold(app.clone(), info.call_id.clone(), lease);
                }
                (app, info)
            })
            .collect()
    }

    /// The fencing token the writes about `call_id` carry (see `fences`).
    fn fence(&self, app: &AppKey, call_id: &CallId) -> i64 {
        let taken = if self.fences.is_empty() {
            None
        } else {
            self.fences.get(&(app.clone(), call_id.clone())).copied()
        };
        match taken {
            Some(token) => token,
            None if self.routing.is_some() => 1,
            None => 0,
        }
    }

    /// Notes calls whose snapshots were read from storage (see `stored_calls`).
    fn note_stored(&mut self, calls: &[(AppKey, CallInfo)]) {
        self.stored_calls.extend(calls.iter().map(|(app, call)| (app.clone(), call.call_id.clone())));
    }

    /// Runs until [`Input::Shutdown`].
    pub(crate) async fn run(mut self) {
        self.drain();
        let mut alive = tokio::time::interval(ALIVE_MARK_INTERVAL);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timer = DeadlineTimer::new();
        loop {
            timer.set(self.sb.poll_timeout());
            let next = tokio::select! {
                biased;
                next = std::future::poll_fn(|cx| self.poll_next(cx)) => next,
                () = timer.fired() => {
                    let now = self.now();
                    self.sb.handle_timeout(now);
                    self.drain();
                    continue;
                }
                _ = alive.tick() => {
                    self.mark_alive();
                    continue;
                }
            };
            let input = match next {
                Next::Input(input) => input,
                Next::Read(conn, inbound) => Some(inbound.into_input(conn)),
            };
            // The driver holds a sender itself, so the queue never closes under it.
            let Some(input) = input else { break };
            if let Input::Shutdown { done } = input {
                self.shutdown(done).await;
                break;
            }
            self.handle(input);
            self.drain();
        }
        tracing::debug!("driver stopped");
    }

    /// The next input or frame read, taking the two in turns when both are ready.
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Next> {
        use std::task::Poll;
        self.reads_first = !self.reads_first;
        if self.reads_first
            && let Poll::Ready((conn, inbound)) = self.reads.poll_next(cx)
        {
            return Poll::Ready(Next::Read(conn, inbound));
        }
        if let Poll::Ready(input) = self.rx.poll_recv(cx) {
            return Poll::Ready(Next::Input(input));
        }
        if !self.reads_first
            && let Poll::Ready((conn, inbound)) = self.reads.poll_next(cx)
        {
            return Poll::Ready(Next::Read(conn, inbound));
        }
        Poll::Pending
    }

    /// Notes in storage that the server runs, while it has live calls (see
    /// [`ALIVE_MARK_INTERVAL`]).
    fn mark_alive(&mut self) {
        if self.sb.live_calls() > 0 {
            let now = self.now();
            self.writer.submit(WriteOp::AliveMark(now));
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Open(open) => self.open(now, *open),
            Input::Frame { conn, frame } => {
                if self.conns.contains_key(&conn) {
                    self.metrics.frames_in.inc();
                    if let Some(presence) = &self.presence
                        && matches!(frame.body, ClientBody::Ping)
                    {
                        presence.note(Note::Heartbeat { conn });
                    }
                    self.sb.handle_frame(now, conn, *frame);
                }
            }
            Input::Invalid { conn, error } => {
                if self.conns.contains_key(&conn) {
                    self.metrics.frames_in.inc();
                    tracing::debug!(conn, %error, "invalid frame");
                    self.sb.handle_invalid_frame(now, conn, error);
                }
            }
            Input::Broken { conn, error } => {
                // Queued after the Welcome and everything else already sent to this connection.
                if let Some(Outbound { tx, .. }) = self.conns.remove(&conn) {
                    self.metrics.frames_in.inc();
                    tracing::debug!(conn, %error, "unreadable stream; closing it");
                    let refusal = ServerFrame {
                        seq: 0,
                        ack: 0,
                        body: ServerBody::Response(Response { request_id: 0, result: Err(error) }),
                    };
                    self.send_last(&tx, OutFrame::from(refusal));
                    self.sb.connection_lost(now, conn);
                }
            }
            Input::Lost { conn } => {
                if self.conns.remove(&conn).is_some() {
                    tracing::debug!(conn, "connection lost");
                    self.sb.connection_lost(now, conn);
                }
            }
            Input::QueryDone { id, result } => self.sb.complete_query(now, id, result),
            Input::IsLive { app, call_id, reply } => {
                let _ = reply.send(self.sb.is_call_live(&app, &call_id));
            }
            Input::EndCall { app, call_id, user, reply } => {
                let _ = reply.send(self.sb.end_call_by_server(now, &app, &call_id, user.as_ref()));
            }
            Input::SignOut { app, user, device, reply } => {
                let _ = reply.send(self.sb.sign_out_by_server(now, &app, &user, device.as_ref()));
            }
            Input::SfuSignal { call_id, to_user, to_device, payload } => {
                self.sb.sfu_signal(now, &call_id, &to_user, &to_device, payload);
            }
            Input::SfuConnection { call_id, user, device, connected: true } => {
                self.sb.sfu_participant_connected(now, &call_id, &user, &device);
            }
            Input::SfuConnection { call_id, user, device, connected: false } => {
                self.sb.sfu_participant_failed(now, &call_id, &user, &device);
            }
            Input::Node(input) => self.node_input(now, input),
            Input::Shutdown { .. } => {}
        }
    }

    fn node_input(&mut self, now: i64, input: super::routing::NodeInput) {
        use super::routing::NodeInput;
        match input {
            NodeInput::Message { from, message } => self.sb.handle_node_message(now, &from, *message),
            NodeInput::Located { id, devices } => self.sb.complete_locate(now, id, devices),
            NodeInput::BusyFound { id, calls } => self.sb.complete_busy(now, id, calls),
            NodeInput::Unroutable { app, user, session_id, request_id } => {
                self.sb.forward_failed(now, &app, &user, &session_id, request_id);
            }
            NodeInput::Store { app, user, event } => {
                self.act(Output::StoreOffline { app, user, event: *event })
            }
            NodeInput::NodeLost { node, stopped_ago } => {
                let ago = i64::try_from(stopped_ago.as_millis()).unwrap_or(i64::MAX);
                self.sb.node_lost(now, &node, now.saturating_sub(ago));
            }
            NodeInput::SharedStateLost => self.sb.marks_lost(now),
            NodeInput::TakeoverWon { node } => self.read_lost_calls(node),
            NodeInput::LeaseLost { app, call_id } => self.sb.lease_lost(now, &app, &call_id),
            NodeInput::Takeover { node, calls } => {
                let count = calls.len();
                let calls = self.taken_over(calls);
                self.note_stored(&calls);
                self.sb.takeover_granted(now, &node, calls);
                // The ends' writes (records, forgotten snapshots) go to the writer now; the
                // lock is given back once they are committed, so a node that wins it later
                // finds nothing left to end.
                self.drain();
                tracing::info!(%node, calls = count, "calls of a lost node ended");
                let writer = self.writer.clone();
                let release = self.routing.as_ref().map(super::routing::RoutingQueue::releaser);
                tokio::spawn(async move {
                    let flushed = tokio::task::spawn_blocking(move || writer.flush()).await;
                    if !matches!(flushed, Ok(Ok(()))) {
                        // Not released: it expires, and a node that takes it then ends what is
                        // still saved.
                        tracing::warn!(%node, "the ends of a lost node's calls were not all committed");
                        return;
                    }
                    if let Some(release) = release {
                        release(node);
                    }
                });
            }
        }
    }

    /// This node won the lost `node`'s takeover lock: reads the saved calls (after winning, so
    /// calls another winner already ended and forgot are not ended twice) and hands the lost
    /// node's to the switchboard ([`NodeInput::Takeover`]).
    fn read_lost_calls(&self, node: String) {
        let Some(leases) = self.routing.as_ref().map(super::routing::RoutingQueue::leases) else { return };
        let storage = self.storage.clone();
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            let rows = tokio::task::spawn_blocking(move || storage.active_calls()).await;
            let rows = match rows {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::error!(%node, error = %e, "a lost node's saved calls could not be read");
                    return;
                }
                Err(e) => {
                    tracing::error!(%node, error = %e, "reading a lost node's saved calls failed");
                    return;
                }
            };
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|row| {
                    CallId::new(&row.call_id).ok().as_ref().and_then(owner_node) == Some(node.as_str())
                })
                .collect();
            let (calls, _undecodable) = decode_calls(rows);
            let calls = super::routing::take_calls(&leases, &node, calls).await;
            let input = super::routing::NodeInput::Takeover { node, calls };
            let _ = tx.send(Input::Node(input)).await;
        });
    }

    /// Connects a session; the switchboard asks for the user's stored events itself. A Hello
    /// past the user's device bound is answered (its request id) with TOO_MANY_DEVICES and
    /// the stream ends.
    fn open(&mut self, now: i64, open: Open) {
        let Open { conn, app, user, hello, request_id, tx, closed, reader } = open;
        if let Err(error) = self.sb.admit(&app, &user, &hello.device_id) {
            tracing::info!(conn, %app, %user, device = %hello.device_id, "refused: {}", error.message);
            let name = error.code.to_proto().as_str_name();
            self.metrics.count_auth_failure(name.strip_prefix("RESULT_CODE_").unwrap_or(name));
            let body = ServerBody::Response(Response { request_id, result: Err(error) });
            self.send_last(&tx, OutFrame::from(ServerFrame { seq: 0, ack: 0, body }));
            // Dropping `tx` and `closed` ends the stream after the refusal.
            return;
        }
        tracing::debug!(conn, %app, %user, device = %hello.device_id, "session opened");
        self.metrics.frames_in.inc();
        self.conns.insert(conn, Outbound { tx, _closed: closed });
        if let Some(reader) = reader {
            self.reads.add(conn, reader);
        }
        self.sb.connect(now, conn, app, user, hello);
    }

    async fn shutdown(&mut self, done: oneshot::Sender<Result<(), StorageError>>) {
        tracing::info!(connections = self.conns.len(), live_calls = self.sb.live_calls(), "shutting down");
        let now = self.now();
        self.sb.shutdown(now);
        self.drain();
        if let Some(routing) = self.routing.take() {
            routing.close().await;
        }
        if let Some(presence) = self.presence.take() {
            presence.close().await;
        }
        // Dropping the queues ends every stream once its last frames are written.
        self.conns.clear();
        self.rx.close();
        let writer = self.writer.clone();
        let flushed = match tokio::task::spawn_blocking(move || writer.flush()).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Closed),
        };
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "storage flush at shutdown failed");
        }
        let _ = done.send(flushed);
    }

    /// Acts on every output, then reports connections closed as too slow, until quiet.
    fn drain(&mut self) {
        loop {
            while let Some(output) = self.sb.poll_output() {
                self.act(output);
            }
            if self.lost.is_empty() {
                break;
            }
            let now = self.now();
            for conn in std::mem::take(&mut self.lost) {
                self.sb.connection_lost(now, conn);
            }
        }
        self.flush_sent();
        self.submit_writes();
        let dropped = self.sb.slow_sessions_dropped();
        if dropped > self.slow_sessions_seen {
            tracing::warn!(
                sessions = dropped - self.slow_sessions_seen,
                "device sessions dropped for holding too many unacked frames or bytes"
            );
            self.metrics.slow_consumers.inc_by(dropped - self.slow_sessions_seen);
            self.slow_sessions_seen = dropped;
        }
        // The transports the driver holds open (sessions waiting to be resumed are not counted).
        self.metrics.connected_devices.set(i64::try_from(self.conns.len()).unwrap_or(i64::MAX));
        self.metrics.live_calls.set(i64::try_from(self.sb.live_calls()).unwrap_or(i64::MAX));
    }

    /// Writes out the frames of this drain that went to the transports' buffers.
    fn flush_sent(&mut self) {
        for conn in self.sent.drain(..) {
            if let Some(Outbound { tx, .. }) = self.conns.get(&conn) {
                tx.flush_direct();
            }
        }
    }

    /// Hands the writes queued so far to the storage writer.
    fn submit_writes(&mut self) {
        self.writer.submit_from(&mut self.writes);
    }

    fn act(&mut self, output: Output) {
        match output {
            Output::Transmit { conn, frame } => self.transmit(conn, frame),
            Output::SfuSignal { call_id, from_user, from_device, payload } => {
                self.to_sfu(SfuCommand::Signal { call_id, user: from_user, device: from_device, payload });
            }
            Output::SfuLeave { call_id, user, device } => {
                self.to_sfu(SfuCommand::Leave { call_id, user, device });
            }
            Output::SfuEndCall { call_id } => self.to_sfu(SfuCommand::EndCall { call_id }),
            Output::SfuPause { call_id, user, device, kind, paused } => {
                self.to_sfu(SfuCommand::Pause { call_id, user, device, kind, paused });
            }
            Output::Close { conn } => {
                if self.conns.remove(&conn).is_some() {
                    tracing::debug!(conn, "closing connection");
                }
            }
            Output::StoreRecord { app, record } => {
                if record.owner == record.call.creator {
                    let reason = end_reason_label(&record);
                    self.metrics.calls_ended.get_or_create(&ReasonLabel { reason }).inc();
                }
                // Encoded on the storage writer's thread (see `WriteOp::Record`).
                let fence = self.fence(&app, &record.call.call_id);
                self.writes.push(WriteOp::Record { app_key: app, record, fence });
            }
            Output::StoreOffline { app, user, event } => {
                let (app_key, user_id) = (app.as_str().to_owned(), user.as_str().to_owned());
                // A node of several checks, once the event is committed, that no device of the
                // user connected elsewhere while it was being stored (see `routing`).
                let reply: Option<crate::storage::OfflineReply> = self.routing.as_ref().map(|routing| {
                    let after = routing.after_store();
                    Box::new(move |stored: Result<Vec<i64>, StorageError>| {
                        if stored.is_ok() {
                            after(app, user);
                        }
                    }) as crate::storage::OfflineReply
                });
                self.writes.push(WriteOp::Offline {
                    app_key,
                    user_id,
                    bodies: vec![event_to_wire(&event).encode_to_vec()],
                    reply,
                });
            }
            Output::OfflineDelivered { app, user, ids } => {
                self.writes.push(WriteOp::RemoveOffline {
                    app_key: app.as_str().to_owned(),
                    user_id: user.as_str().to_owned(),
                    ids,
                });
            }
            Output::SaveCall { app, call } => {
                let key = (app.clone(), call.call_id.clone());
                // The first save of a call this process made: nothing of it is stored yet.
                let fresh = !self.stored_calls.contains(&key);
                let fence = self.fence(&key.0, &key.1);
                // A call this node made holds the creator's lease from its first save on.
                let hold = match &self.routing {
                    Some(routing) if fresh && !self.known_calls.contains(&key) => {
                        Some((routing, key.0.clone(), key.1.clone()))
                    }
                    _ => None,
                };
                if let Some((routing, app, id)) = hold {
                    let lease = Lease::first(routing.node(), app.as_str(), id.as_str());
                    routing.hold(app, id, lease);
                }
                let first = self.known_calls.insert(key);
                if first {
                    self.metrics.calls_started.inc();
                }
                let fresh = fresh && first;
                // Encoded on the storage writer's thread, and only if no later write of its
                // batch replaces it (see `WriteOp::SaveCall`).
                self.writes.push(WriteOp::SaveCall { app_key: app, call, fresh, fence });
            }
            Output::ForgetCall { app, call_id } => {
                let call = (app, call_id);
                self.known_calls.remove(&call);
                self.stored_calls.remove(&call);
                self.fences.remove(&call);
                if let Some(routing) = &self.routing {
                    routing.drop_lease(call.0.clone(), call.1.clone());
                }
                let (app_key, call_id) = call;
                self.writes.push(WriteOp::ForgetCall { app_key, call_id });
            }
            Output::Push(request) => match &self.push {
                Some(push) => {
                    if push.try_send(request).is_err() {
                        self.metrics.count_push("dropped");
                        tracing::warn!("push queue full; notification dropped");
                    }
                }
                None => tracing::debug!(call = %request.call_id, "no push webhook configured"),
            },
            Output::SessionOnline { conn, device } => {
                if let Some(presence) = &self.presence {
                    // A node of several loads the user's stored events only once the device is
                    // in presence: an event stored by another node after that load finds the
                    // device there (and has this node load again); one stored before it is in
                    // the load.
                    let registered = if self.routing.is_some() {
                        let (tx, rx) = oneshot::channel();
                        self.registering.insert((device.app.clone(), device.user.clone()), rx);
                        Some(tx)
                    } else {
                        None
                    };
                    presence.note(Note::Online { conn, device, registered });
                }
            }
            Output::SessionEnded { device } => {
                if let Some(presence) = &self.presence {
                    presence.note(Note::Ended { device });
                }
            }
            Output::Query { id, app, user, query } => {
                // The query flushes the writer first: this device's own writes must be there.
                self.submit_writes();
                let registering = match query {
                    Query::OfflineEvents => self.registering.remove(&(app.clone(), user.clone())),
                    _ => None,
                };
                self.spawn_query(id, app, user, query, registering);
            }
            Output::Node(work) => self.node_work(work),
        }
    }

    /// Work across nodes: to the routing task (`routing`). Without one (a switchboard given a
    /// node id but no Redis) the node acts alone: no other node holds a device (a user with
    /// none here gets the push and has their records and summaries stored), and a request
    /// about another node's call is answered CALL_NOT_FOUND.
    fn node_work(&mut self, work: NodeOutput) {
        if let Some(routing) = &self.routing {
            routing.send(work);
            return;
        }
        let now = self.now();
        match work {
            NodeOutput::Locate { id, .. } => self.sb.complete_locate(now, id, Vec::new()),
            // No other node without Redis: none is ever lost, nobody is in a call elsewhere.
            NodeOutput::AcquireTakeover { .. }
            | NodeOutput::InCall { .. }
            | NodeOutput::FindRinging { .. }
            | NodeOutput::KickElsewhere { .. }
            | NodeOutput::SignOutElsewhere { .. } => {}
            NodeOutput::CheckBusy { id, .. } => self.sb.complete_busy(now, id, Vec::new()),
            NodeOutput::Route { app, user, event, store_if_absent } => {
                if store_if_absent {
                    self.act(Output::StoreOffline { app, user, event });
                }
            }
            NodeOutput::Send { node, message } => match *message {
                NodeMessage::Request { app, user, session_id, request_id, .. } => {
                    tracing::debug!(%node, "no route to the call's node; request refused");
                    self.sb.forward_failed(now, &app, &user, &session_id, request_id);
                }
                other => {
                    tracing::debug!(%node, message = ?other, "no route to another node; message dropped")
                }
            },
        }
    }

    fn to_sfu(&self, command: SfuCommand) {
        match &self.sfu {
            Some(tx) => {
                if tx.send(command).is_err() {
                    tracing::warn!("the sfu task has stopped; sfu work dropped");
                }
            }
            None => tracing::debug!(?command, "no sfu runs here"),
        }
    }

    fn transmit(&mut self, conn: ConnId, frame: OutFrame) {
        let Some(Outbound { tx, .. }) = self.conns.get(&conn) else {
            // Closed already: the frame stays in the session's outbox for a resume.
            return;
        };
        match tx.try_send(frame) {
            Ok(sent) => {
                self.count_sent(sent);
                if sent == Sent::Direct && self.sent.last() != Some(&conn) {
                    self.sent.push(conn);
                }
            }
            Err(QueueError::Full) => {
                tracing::warn!(conn, "outbound queue full; closing the slow connection");
                self.metrics.slow_consumers.inc();
                self.conns.remove(&conn);
                self.lost.push(conn);
            }
            Err(QueueError::Closed) => {
                self.conns.remove(&conn);
                self.lost.push(conn);
            }
        }
    }

    /// Sends the last frame of a connection the driver is letting go of (the queue closes
    /// after it), flushed at once rather than with the drain's.
    fn send_last(&self, tx: &OutboundQueue, frame: OutFrame) {
        if let Ok(sent) = tx.try_send(frame) {
            self.count_sent(sent);
            tx.flush_direct();
        }
    }

    fn count_sent(&self, sent: Sent) {
        self.metrics.frames_out.inc();
        if sent == Sent::Direct {
            self.metrics.frames_out_direct.inc();
        }
    }

    /// Runs a query off the driver. With `after`, it first waits (at most
    /// [`REGISTER_WAIT`]) for the device's presence registration.
    fn spawn_query(
        &self,
        id: QueryId,
        app: AppKey,
        user: UserId,
        query: Query,
        after: Option<oneshot::Receiver<()>>,
    ) {
        let storage = self.storage.clone();
        let writer = self.writer.clone();
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            if let Some(after) = after {
                let _ = tokio::time::timeout(REGISTER_WAIT, after).await;
            }
            let result =
                tokio::task::spawn_blocking(move || run_query(&*storage, &writer, &app, &user, query))
                    .await
                    .unwrap_or_else(|e| Err(Error::new(Code::Internal, format!("query task failed: {e}"))));
            let _ = tx.send(Input::QueryDone { id, result }).await;
        });
    }
}

fn end_reason_label(record: &CallRecord) -> &'static str {
    let name = pb::EndReason::from(record.end_reason).as_str_name();
    name.strip_prefix("END_REASON_").unwrap_or(name)
}

fn internal(e: &StorageError) -> Error {
    tracing::error!(error = %e, "storage query failed");
    Error::new(Code::Internal, "storage error")
}

/// Runs a query on a blocking thread; writes queued before it are committed first, so a
/// device always reads its own writes.
fn run_query(
    storage: &dyn Storage,
    writer: &BatchWriter,
    app: &AppKey,
    user: &UserId,
    query: Query,
) -> QueryResult {
    if let Err(e) = writer.flush() {
        // Earlier failures were logged when they happened; the query can still run.
        tracing::warn!(error = %e, "storage flush before a query reported failures");
    }
    match query {
        Query::Records { sync_time, count, order } => {
            let order = match order {
                RecordOrder::Asc => PageOrder::Asc,
                RecordOrder::Desc => PageOrder::Desc,
            };
            let page =
                storage.page_records(app.as_str(), user.as_str(), sync_time, count, order).map_err(|e| {
                    match e {
                        StorageError::InvalidArgument(m) => Error::new(Code::ParamError, m),
                        e => internal(&e),
                    }
                })?;
            let mut records = Vec::with_capacity(page.rows.len());
            for row in &page.rows {
                match decode_record(&row.body) {
                    Ok(r) => records.push(r),
                    Err(e) => {
                        tracing::error!(call = %row.call_id, error = %e, "skipping an undecodable record")
                    }
                }
            }
            Ok(QueryAnswer::Records(RecordPage {
                records,
                has_more: page.has_more,
                sync_time: page.sync_time,
            }))
        }
        Query::EndedCall { call_id } => {
            let row =
                storage.record(app.as_str(), user.as_str(), call_id.as_str()).map_err(|e| internal(&e))?;
            let call = row.and_then(|row| match decode_record(&row.body) {
                Ok(record) => Some(record.call),
                Err(e) => {
                    tracing::error!(call = %row.call_id, error = %e, "an undecodable record");
                    None
                }
            });
            Ok(QueryAnswer::EndedCall(call))
        }
        Query::DeleteRecords { call_ids } => {
            let ids: Vec<String> = call_ids.iter().map(|c| c.as_str().to_owned()).collect();
            storage.delete_records(app.as_str(), user.as_str(), &ids).map_err(|e| internal(&e))?;
            Ok(QueryAnswer::Deleted)
        }
        Query::DeleteAllRecords => {
            storage.delete_all_records(app.as_str(), user.as_str()).map_err(|e| internal(&e))?;
            Ok(QueryAnswer::Deleted)
        }
        Query::OfflineEvents => {
            load_offline(storage, writer, app, user).map(QueryAnswer::OfflineEvents).map_err(|e| internal(&e))
        }
    }
}

fn decode_record(body: &[u8]) -> Result<CallRecord, String> {
    let wire = pb::CallRecord::decode(body).map_err(|e| e.to_string())?;
    CallRecord::try_from(&wire).map_err(|e| e.to_string())
}

/// Calls recovered from storage, and the `(app_key, call_id)` keys of rows that did not decode.
pub(crate) type Recovered = (Vec<(AppKey, CallInfo)>, Vec<(String, String)>);

/// Decodes stored call snapshots for [`Switchboard::end_recovered_calls`]; bad rows are logged
/// and returned so they can be removed.
pub(crate) fn decode_calls(rows: Vec<crate::storage::CallRow>) -> Recovered {
    let mut calls = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let decoded = AppKey::new(&row.app_key).map_err(|e| e.to_string()).and_then(|app| {
            let wire = pb::CallInfo::decode(row.body.as_slice()).map_err(|e| e.to_string())?;
            let call = CallInfo::try_from(&wire).map_err(|e| e.to_string())?;
            Ok((app, call))
        });
        match decoded {
            Ok(c) => calls.push(c),
            Err(e) => {
                tracing::error!(app = %row.app_key, call = %row.call_id, error = %e, "dropping an undecodable saved call");
                bad.push((row.app_key, row.call_id));
            }
        }
    }
    (calls, bad)
}

/// Loads a user's offline events and decodes them (the caller committed queued writes first);
/// events that no longer decode are removed with an error log.
fn load_offline(
    storage: &dyn Storage,
    writer: &BatchWriter,
    app: &AppKey,
    user: &UserId,
) -> Result<Vec<OfflineEvent>, StorageError> {
    let rows = storage.offline_events(app.as_str(), user.as_str())?;
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let decoded = pb::Event::decode(row.body.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|e| callplus_session::wire::event_from_wire(e, user).map_err(|e| e.to_string()));
        match decoded {
            Ok(event) => events.push(OfflineEvent { id: row.id, event }),
            Err(e) => {
                tracing::error!(id = row.id, %user, error = %e, "dropping an undecodable offline event");
                bad.push(row.id);
            }
        }
    }
    if !bad.is_empty() {
        writer.submit(WriteOp::RemoveOffline {
            app_key: app.as_str().to_owned(),
            user_id: user.as_str().to_owned(),
            ids: bad,
        });
    }
    Ok(events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use callplus_session::switchboard::SwitchboardConfig;
    use callplus_session::{DeviceId, Event, ServerBody};

    use super::*;
    use crate::storage::SqliteStorage;

    fn bob_opens(driver: &mut Driver, conn: ConnId) -> super::super::outbound::OutboundReceiver {
        opens(driver, conn, "bob")
    }

    /// `user`'s device `phone` connects on `conn` (its token already checked).
    fn opens(driver: &mut Driver, conn: ConnId, user: &str) -> super::super::outbound::OutboundReceiver {
        let (tx, rx) = super::super::outbound::outbound(64, usize::MAX);
        let (closed, _closed_rx) = oneshot::channel();
        let hello = Hello {
            token: String::new(),
            device_id: DeviceId::new("phone").unwrap(),
            resume: None,
            client_version: String::new(),
        };
        let open = Open {
            conn,
            app: AppKey::new("app_test").unwrap(),
            user: UserId::new(user).unwrap(),
            hello,
            request_id: 1,
            tx,
            closed,
            reader: None,
        };
        driver.handle(Input::Open(Box::new(open)));
        driver.drain();
        rx
    }

    /// Everything queued for a connection so far.
    fn bodies(rx: &mut super::super::outbound::OutboundReceiver) -> Vec<ServerBody> {
        std::iter::from_fn(|| rx.try_recv()).map(|frame| ServerBody::clone(&frame.body)).collect()
    }

    /// The SFU tokens of the media routes among `bodies`.
    fn route_tokens(bodies: &[ServerBody]) -> Vec<String> {
        bodies
            .iter()
            .filter_map(|body| match body {
                ServerBody::Event(Event::MediaRoute { sfu: Some(route), .. }) => Some(route.token.clone()),
                _ => None,
            })
            .collect()
    }

    /// The driver takes its input queue and the frames of the connections it reads in turns:
    /// with both full, neither waits behind the other. A device flooding its connection cannot
    /// hold back the queue's inputs (opens, query results, the cluster's messages), nor the
    /// reverse. Queued frames stand in for any input here.
    #[tokio::test]
    async fn the_driver_takes_its_inputs_and_its_connections_frames_in_turns() {
        let (mut driver, handle, _storage, _writer) =
            test_driver_with(Switchboard::new(SwitchboardConfig::default()));

        let frame = |request_id| pb::ClientFrame {
            request_id,
            body: Some(pb::client_frame::Body::Ping(pb::Ping {})),
            ..Default::default()
        };
        // Connection 7's socket holds frames 100.., read by the driver itself.
        let (_transport, transport_closed) = oneshot::channel();
        let (_release, released) = oneshot::channel();
        let read: Vec<Inbound> = (100..108)
            .map(|id| Inbound::Frame(Box::new(ClientFrame::try_from(frame(id)).unwrap())))
            .collect();
        let frames = Box::pin(futures_util::StreamExt::chain(
            futures_util::stream::iter(read),
            futures_util::stream::pending(),
        ));
        driver.reads.add(7, HandedOver { frames, transport_closed, released });
        // The input queue holds frames 200.. (tagged connection 8).
        for id in 200..208 {
            let frame = ClientFrame::try_from(frame(id)).unwrap();
            assert!(handle.send(Input::Frame { conn: 8, frame: Box::new(frame) }).await);
        }

        let mut order = Vec::new();
        for _ in 0..16 {
            let next = std::future::poll_fn(|cx| driver.poll_next(cx)).await;
            order.push(match next {
                Next::Read(conn, Inbound::Frame(f)) => (conn, f.request_id),
                Next::Input(Some(Input::Frame { conn, frame })) => (conn, frame.request_id),
                _ => panic!("only frames were queued"),
            });
        }
        let read: Vec<_> = order.iter().filter(|(conn, _)| *conn == 7).map(|(_, id)| *id).collect();
        let queued: Vec<_> = order.iter().filter(|(conn, _)| *conn == 8).map(|(_, id)| *id).collect();
        assert_eq!(read, (100..108).collect::<Vec<_>>(), "each side in its own order");
        assert_eq!(queued, (200..208).collect::<Vec<_>>(), "each side in its own order");
        for pair in order.windows(2) {
            assert_ne!(pair[0].0, pair[1].0, "the two sides alternate while both have frames: {order:?}");
        }
        // With one side empty the other is not held back.
        for id in 208..211 {
            let frame = ClientFrame::try_from(frame(id)).unwrap();
            assert!(handle.send(Input::Frame { conn: 8, frame: Box::new(frame) }).await);
        }
        for id in 208..211 {
            match std::future::poll_fn(|cx| driver.poll_next(cx)).await {
                Next::Input(Some(Input::Frame { conn: 8, frame })) => assert_eq!(frame.request_id, id),
                _ => panic!("expected queued frame {id}"),
            }
        }
    }

    /// A device whose SFU connection fails gets a fresh route, and its token is not the one it
    /// had, however soon the failure follows the route: its engine restarts media only on a
    /// changed route, so a repeated token would leave it on the dead connection. Everything
    /// here happens within a few milliseconds, well inside the second a token's expiry counts.
    #[tokio::test]
    async fn a_device_rerouted_after_its_sfu_connection_failed_gets_another_token() {
        let settings = super::super::media_relay::SfuSettings {
            bind_addrs: vec!["127.0.0.1:0".to_owned()],
            mesh_max: 0,
            token_ttl: Duration::from_secs(3600),
            remote: Vec::new(),
        };
        let (router, commands, _sfu_task) = super::super::media_relay::start(&settings);
        let mut sb = Switchboard::new(SwitchboardConfig::default());
        sb.set_media_router(router);
        let (mut driver, _handle, _storage, _writer) = test_driver_with(sb);
        driver.set_sfu(commands);
        let mut alice = opens(&mut driver, 1, "alice");
        let mut bob = opens(&mut driver, 2, "bob");

        let start = callplus_session::StartCall {
            callees: vec![UserId::new("bob").unwrap()],
            call_type: callplus_session::CallType::Multi,
            media_type: callplus_session::MediaType::Audio,
            push: None,
            extra: String::new(),
            ring_timeout_ms: None,
        };
        let request =
            |seq, body| ClientFrame { seq, ack: 0, request_id: seq + 1, body: ClientBody::Request(body) };
        let frame = Box::new(request(1, callplus_session::Request::StartCall(start)));
        driver.handle(Input::Frame { conn: 1, frame });
        driver.drain();
        let first = bodies(&mut alice);
        let call_id = first
            .iter()
            .find_map(|body| match body {
                ServerBody::Response(Response {
                    result: Ok(callplus_session::ResponseBody::Started { call, .. }),
                    ..
                }) => Some(call.call_id.clone()),
                _ => None,
            })
            .expect("the call started");
        let before = route_tokens(&first);
        assert_eq!(before.len(), 1, "the caller is routed through the SFU: {first:?}");
        let frame = Box::new(request(1, callplus_session::Request::Accept { call_id: call_id.clone() }));
        driver.handle(Input::Frame { conn: 2, frame });
        driver.drain();
        let bobs = route_tokens(&bodies(&mut bob));
        assert_eq!(bobs.len(), 1, "the callee is routed through the SFU once it accepts");
        assert_ne!(bobs, before, "each device has its own token");

        // The SFU reports the caller's connection failed, twice in a row.
        let mut tokens = before;
        for _ in 0..2 {
            driver.handle(Input::SfuConnection {
                call_id: call_id.clone(),
                user: UserId::new("alice").unwrap(),
                device: DeviceId::new("phone").unwrap(),
                connected: false,
            });
            driver.drain();
            let fresh = route_tokens(&bodies(&mut alice));
            assert_eq!(fresh.len(), 1, "one fresh route per failure");
            assert!(!tokens.contains(&fresh[0]), "a fresh route repeats a token: {fresh:?} after {tokens:?}");
            tokens.extend(fresh);
        }
        assert!(route_tokens(&bodies(&mut bob)).is_empty(), "the other participant keeps its route");
    }

    #[tokio::test]
    async fn an_offline_event_stored_just_before_a_connect_is_delivered_to_it() {
        let (mut driver, _storage, _writer) = test_driver();
        let app = AppKey::new("app_test").unwrap();
        let bob = UserId::new("bob").unwrap();
        // Queued for storage (not yet written) when Bob's device connects.
        let event = Event::FirstFrame { call_id: CallId::new("call-1").unwrap(), at_ms: 5 };
        driver.act(Output::StoreOffline { app: app.clone(), user: bob.clone(), event: event.clone() });
        let mut rx = bob_opens(&mut driver, 1);

        // The switchboard's offline query runs after that write and comes back as an input.
        let done = tokio::time::timeout(Duration::from_secs(10), driver.rx.recv()).await.unwrap().unwrap();
        assert!(
            matches!(done, Input::QueryDone { result: Ok(QueryAnswer::OfflineEvents(ref e)), .. } if e.len() == 1)
        );
        driver.handle(done);
        driver.drain();
        let mut bodies = Vec::new();
        while let Some(frame) = rx.try_recv() {
            bodies.push(ServerBody::clone(&frame.body));
        }
        assert!(matches!(bodies.first(), Some(ServerBody::Welcome(_))), "{bodies:?}");
        assert!(bodies.contains(&ServerBody::Event(event)), "{bodies:?}");
    }

    #[tokio::test]
    async fn offline_events_stay_stored_when_the_device_leaves_before_they_load() {
        let (mut driver, storage, writer) = test_driver();
        let app = AppKey::new("app_test").unwrap();
        let bob = UserId::new("bob").unwrap();
        let event = Event::FirstFrame { call_id: CallId::new("call-1").unwrap(), at_ms: 5 };
        driver.act(Output::StoreOffline { app: app.clone(), user: bob.clone(), event });
        let _rx = bob_opens(&mut driver, 7);
        driver.handle(Input::Lost { conn: 7 });
        driver.drain();
        let done = tokio::time::timeout(Duration::from_secs(10), driver.rx.recv()).await.unwrap().unwrap();
        driver.handle(done);
        driver.drain();
        writer.flush().unwrap();
        let stored = storage.offline_events(app.as_str(), bob.as_str()).unwrap();
        assert_eq!(stored.len(), 1, "nothing acked them: they wait for the next connect");
    }

    fn test_driver() -> (Driver, Arc<dyn Storage>, Arc<BatchWriter>) {
        let (driver, _handle, storage, writer) =
            test_driver_with(Switchboard::new(SwitchboardConfig::default()));
        (driver, storage, writer)
    }

    /// A driver over `sb`, with in-memory storage and its writer, and the handle to its queue.
    fn test_driver_with(sb: Switchboard) -> (Driver, DriverHandle, Arc<dyn Storage>, Arc<BatchWriter>) {
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open_in_memory().unwrap());
        let writer = Arc::new(BatchWriter::spawn(storage.clone()));
        let (driver, handle) =
            Driver::new(sb, storage.clone(), writer.clone(), None, Arc::new(Metrics::new()));
        (driver, handle, storage, writer)
    }

    fn ended_call_record(owner: &UserId, call_id: &CallId) -> CallRecord {
        use callplus_session::{
            CallType, Delivery, Direction, EndReason, MediaType, Participant, ParticipantState,
        };
        let participant = Participant {
            user_id: owner.clone(),
            state: ParticipantState::Ended,
            reason: Some(EndReason::Hangup),
            inviter: None,
            invited_at_ms: 1_000,
            connected_at_ms: Some(1_500),
            ended_at_ms: Some(2_000),
            devices: Vec::new(),
            delivery: Delivery::Ringing,
            camera_disabled: false,
            microphone_disabled: false,
            device_id: None,
        };
        CallRecord {
            owner: owner.clone(),
            call: CallInfo {
                call_id: call_id.clone(),
                call_type: CallType::Single,
                media_type: MediaType::Audio,
                creator: owner.clone(),
                participants: vec![participant],
                created_at_ms: 1_000,
                started_at_ms: Some(1_500),
                first_frame_at_ms: None,
                ended_at_ms: Some(2_000),
                version: 3,
                extra: String::new(),
                ring_timeout_ms: 0,
            }
            .into(),
            inviter: None,
            end_reason: EndReason::Hangup,
            direction: Direction::Outgoing,
            duration_ms: 500,
            sync_time: 7,
        }
    }

    /// A call this process made costs `active_calls` nothing when it ends in the batch that
    /// first saves it, but is stored once a batch commits it live (what a crash then finds); a
    /// call read back from storage is removed however quickly it is saved and forgotten.
    #[tokio::test]
    async fn snapshots_of_fresh_and_stored_calls_saved_and_forgotten() {
        let (mut driver, storage, writer) = test_driver();
        let app = AppKey::new("app_test").unwrap();
        let alice = UserId::new("alice").unwrap();
        let snapshot = |id: &str| ended_call_record(&alice, &CallId::new(id).unwrap()).call;
        let save = |driver: &mut Driver, id: &str| {
            driver.act(Output::SaveCall { app: app.clone(), call: snapshot(id) });
        };
        let forget = |driver: &mut Driver, id: &str| {
            driver.act(Output::ForgetCall { app: app.clone(), call_id: CallId::new(id).unwrap() });
        };
        let stored = || storage.active_calls().unwrap().into_iter().map(|c| c.call_id).collect::<Vec<_>>();

        // A call of the last run, still stored, and read back (as `recover` does).
        storage
            .put_active_calls(&[crate::storage::CallRow {
                app_key: app.as_str().into(),
                call_id: "old".into(),
                body: b"old snapshot".to_vec(),
                fence: 0,
            }])
            .unwrap();
        driver.note_stored(&[(app.clone(), CallInfo::clone(&snapshot("old")))]);
        // In one batch: it is saved and forgotten, and a call made here starts and ends.
        save(&mut driver, "old");
        save(&mut driver, "short");
        forget(&mut driver, "short");
        forget(&mut driver, "old");
        // A call made here stays live.
        save(&mut driver, "live");
        driver.submit_writes();
        writer.flush().unwrap();
        assert_eq!(stored(), ["live"]);

        forget(&mut driver, "live");
        driver.submit_writes();
        writer.flush().unwrap();
        assert!(stored().is_empty());
    }

    #[tokio::test]
    async fn a_query_in_the_same_drain_as_a_write_reads_that_write() {
        // A hangup and the caller's records query can come out of one switchboard drain: the
        // query must see the record although the drain has not finished (and not submitted).
        let (mut driver, _storage, _writer) = test_driver();
        let app = AppKey::new("app_test").unwrap();
        let alice = UserId::new("alice").unwrap();
        let call_id = CallId::new("call-1").unwrap();
        driver.act(Output::StoreRecord { app: app.clone(), record: ended_call_record(&alice, &call_id) });
        let query = Query::Records { sync_time: -1, count: 10, order: RecordOrder::Desc };
        driver.act(Output::Query { id: 1, app, user: alice, query });

        let done = tokio::time::timeout(Duration::from_secs(10), driver.rx.recv()).await.unwrap().unwrap();
        let Input::QueryDone { id: 1, result: Ok(QueryAnswer::Records(page)) } = done else {
            panic!("expected the records page, got another input");
        };
        let ids: Vec<&CallId> = page.records.iter().map(|r| &r.call.call_id).collect();
        assert_eq!(ids, vec![&call_id]);
    }
}
