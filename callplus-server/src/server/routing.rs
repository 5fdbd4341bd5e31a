//! Carries the switchboard's work across nodes (`serve --redis`), off the driver.
//!
//! The driver hands each [`NodeOutput`] to a bounded queue ([`RoutingQueue::send`], never
//! waiting). One task executes them in order, so the messages to one node keep the order the
//! switchboard made them in: a message goes to the node's inbox stream (`XADD … MAXLEN ~`),
//! a presence lookup is answered back to the driver, an event routed to a user goes to each
//! other node holding one of their devices, or back to the driver to be stored when they have
//! none anywhere. A second task reads this node's inbox (`XREAD BLOCK` from the last id read,
//! resynchronised after Redis comes back) and hands each message to the driver, and keeps the
//! node's liveness key fresh. The same task notices when a node this one routed to stops
//! renewing its liveness key and tells the driver ([`NodeInput::NodeLost`]). When the
//! switchboard then asks for the lost node's takeover lock, the routing task tries it and tells
//! the driver whether it won ([`NodeInput::TakeoverWon`]); the driver reads the lost node's saved
//! calls, the switchboard ends them, and once those ends are committed the lock is given back
//! ([`RoutingQueue::releaser`]).
//!
//! Redis I/O therefore never runs on the switchboard's task. When Redis is down, sends fail
//! (counted); a forwarded request that cannot be sent is answered CALL_NOT_FOUND, and the
//! calls concerned recover by the liveness rules (docs/architecture.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use callplus_session::switchboard::{CallMark, NodeMessage, NodeOutput, QueryId, RemoteDevice, owner_node};
use callplus_session::{AppKey, CallId, CallInfo, DeviceId, Event, UserId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::driver::{DriverHandle, Input};
use super::metrics::Metrics;
use crate::cluster::{ALIVE_TTL, InCallMarks, InboxReader, NodeId, Outbox, Presence, Takeovers};

/// Work queued for the routing task before further work is dropped.
pub(crate) const ROUTING_QUEUE: usize = 16_384;

/// How often the reader renews this node's liveness key, and the routing task checks the nodes
/// it routes to.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// How long a node's liveness key must stay missing after it was last seen before the node
/// counts as lost: longer than a Redis restart takes to be noticed and the key written back.
const LOST_AFTER: Duration = Duration::from_secs(3);

/// How long a stopping server waits for the routing task to send what is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the routing tasks tell the driver.
#[derive(Debug)]
pub(crate) enum NodeInput {
    /// A message from another node's switchboard.
    Message { from: String, message: Box<NodeMessage> },
    /// The answer to a presence lookup.
    Located { id: QueryId, devices: Vec<RemoteDevice> },
    /// The answer to a busy lookup: (user, call) in-call marks of live nodes.
    BusyFound { id: QueryId, calls: Vec<(UserId, CallId)> },
    /// A forwarded request could not be sent: answer it CALL_NOT_FOUND.
    Unroutable { app: AppKey, user: UserId, session_id: String, request_id: u64 },
    /// A user event found no device on any node: store it for the next connect.
    Store { app: AppKey, user: UserId, event: Box<Event> },
    /// A node stopped renewing its liveness key.
    NodeLost { node: String },
    /// This node won the right to end the lost `node`'s calls: read them and end them.
    TakeoverWon { node: String },
    /// The lost `node`'s saved calls, read after winning its takeover lock.
    Takeover { node: String, calls: Vec<(AppKey, CallInfo)> },
}

/// What the routing task does.
// Moved once through the queue, like the switchboard's outputs it carries.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Work {
    /// The switchboard's work.
    Out(NodeOutput),
    /// Events were just stored for a user with no device anywhere a moment ago: if presence
    /// now finds devices of theirs on other nodes, those nodes load the stored events again.
    Recheck { app: AppKey, user: UserId },
    /// The lost node's calls are ended and committed: give its takeover lock back.
    Release { node: String },
}

/// The driver's end of the routing queue.
#[derive(Debug)]
pub(crate) struct RoutingQueue {
    tx: mpsc::Sender<Work>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl RoutingQueue {
    /// Queues work without waiting; a full queue drops it (counted and logged).
    pub(crate) fn send(&self, work: NodeOutput) {
        if let Err(e) = self.tx.try_send(Work::Out(work)) {
            self.metrics.count_node("dropped");
            tracing::warn!(work = ?e.into_inner(), "routing queue full; work across nodes dropped");
        }
    }

    /// What to call once events for a user are committed to storage (from the storage
    /// writer's thread: it never waits). It closes a race with a device connecting on another
    /// node while they were being stored: that node's load may have run before the commit, so
    /// it is told to load again (see [`NodeMessage::OfflineWaiting`]).
    pub(crate) fn after_store(&self) -> impl Fn(AppKey, UserId) + Send + 'static {
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        move |app, user| {
            if tx.try_send(Work::Recheck { app, user }).is_err() {
                metrics.count_node("dropped");
            }
        }
    }

    /// Gives a takeover lock back, from the task that waited for the ends of the lost node's
    /// calls to be committed.
    pub(crate) fn releaser(&self) -> impl FnOnce(String) + Send + 'static {
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        move |node| {
            if tx.try_send(Work::Release { node }).is_err() {
                metrics.count_node("dropped");
            }
        }
    }

    /// Stops reading the inbox, closes the queue and waits (bounded by [`CLOSE_TIMEOUT`]) for
    /// the work already queued, so a stopping node's last messages (sessions gone) are sent.
    pub(crate) async fn close(self) {
        let RoutingQueue { tx, task, reader, .. } = self;
        reader.abort();
        drop(tx);
        if tokio::time::timeout(CLOSE_TIMEOUT, task).await.is_err() {
            tracing::warn!("messages to other nodes not sent in time at shutdown");
        }
    }
}

/// What the routing tasks need.
pub(crate) struct Routing {
    pub(crate) node: NodeId,
    pub(crate) outbox: Outbox,
    pub(crate) presence: Presence,
    pub(crate) reader: InboxReader,
    pub(crate) takeovers: Takeovers,
    pub(crate) marks: InCallMarks,
}

/// Starts the routing and inbox tasks; they stop when the [`RoutingQueue`] is closed.
pub(crate) fn spawn(routing: Routing, driver: DriverHandle, metrics: Arc<Metrics>) -> RoutingQueue {
    let (tx, rx) = mpsc::channel(ROUTING_QUEUE);
    let Routing { node, outbox, presence, reader, takeovers, marks } = routing;
    let reader = tokio::spawn(read_inbox(reader, outbox.clone(), driver.clone(), metrics.clone()));
    let worker = Worker {
        node,
        outbox,
        presence,
        takeovers,
        marks,
        driver,
        metrics: metrics.clone(),
        peers: HashMap::new(),
        untried: Vec::new(),
    };
    let task = tokio::spawn(worker.run(rx));
    RoutingQueue { tx, metrics, task, reader }
}

/// Reads this node's inbox until aborted, and keeps the node's liveness key fresh.
async fn read_inbox(mut reader: InboxReader, outbox: Outbox, driver: DriverHandle, metrics: Arc<Metrics>) {
    let mut failing = false;
    let mut marked: Option<Instant> = None;
    loop {
        if marked.is_none_or(|at| at.elapsed() >= ALIVE_EVERY) {
            match outbox.mark_alive().await {
                Ok(()) => marked = Some(Instant::now()),
                Err(e) => tracing::debug!(error = %e, "liveness key not renewed"),
            }
        }
        let read = match reader.read().await {
            Ok(read) => read,
            Err(e) => {
                metrics.count_node("error");
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "inbox unreadable; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if reader.resync().await.is_ok() {
                    tracing::info!("inbox readable again");
                    failing = false;
                }
                continue;
            }
        };
        failing = false;
        for (id, entry) in read {
            match entry {
                Ok((from, message)) => {
                    metrics.count_node("received");
                    let input = Input::Node(NodeInput::Message { from, message: Box::new(message) });
                    if !driver.send(input).await {
                        return;
                    }
                }
                Err(e) => {
                    metrics.count_node("error");
                    tracing::warn!(%id, error = %e, "unreadable inbox entry skipped");
                }
            }
        }
    }
}

struct Worker {
    node: NodeId,
    outbox: Outbox,
    presence: Presence,
    takeovers: Takeovers,
    marks: InCallMarks,
    driver: DriverHandle,
    metrics: Arc<Metrics>,
    /// Nodes this one routes to, and when each was last seen alive.
    peers: HashMap<String, Instant>,
    /// Lost nodes whose takeover lock could not be tried (Redis unreachable): tried again on
    /// each check.
    untried: Vec<String>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Work>) {
        let mut check = tokio::time::interval(ALIVE_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                work = rx.recv() => match work {
                    Some(Work::Out(work)) => self.work(work).await,
                    Some(Work::Recheck { app, user }) => self.recheck(app, user).await,
                    Some(Work::Release { node }) => self.release(node).await,
                    None => return,
                },
                _ = check.tick() => self.check_peers().await,
            }
        }
    }

    async fn tell(&self, input: NodeInput) {
        let _ = self.driver.send(Input::Node(input)).await;
    }

    /// Whether `node` is alive, asking Redis at most once per [`ALIVE_EVERY`] per node.
    async fn alive(&mut self, node: &str) -> bool {
        if self.peers.get(node).is_some_and(|at| at.elapsed() < ALIVE_EVERY) {
            return true;
        }
        match self.outbox.is_alive(node).await {
            Ok(true) => {
                self.peers.insert(node.to_owned(), Instant::now());
                true
            }
            Ok(false) => false,
            // Redis is down: the send fails too, and says so.
            Err(_) => true,
        }
    }

    /// Tells the driver about every node routed to that stopped renewing its liveness key: the
    /// key expired ([`ALIVE_TTL`] after its last renewal) and stayed missing for
    /// [`LOST_AFTER`].
    async fn check_peers(&mut self) {
        for node in std::mem::take(&mut self.untried) {
            self.take_over(node).await;
        }
        let stale: Vec<String> =
            self.peers.iter().filter(|(_, at)| at.elapsed() >= ALIVE_EVERY).map(|(n, _)| n.clone()).collect();
        for node in stale {
            match self.outbox.is_alive(&node).await {
                Ok(true) => {
                    self.peers.insert(node, Instant::now());
                }
                // Missing for a moment (Redis restarted without its data, the node has not
                // written its key back yet): not lost yet.
                Ok(false) if self.peers.get(&node).is_some_and(|at| at.elapsed() < LOST_AFTER) => {}
                Ok(false) => {
                    tracing::warn!(%node, ttl_ms = ALIVE_TTL.as_millis(), "node gone (its liveness key expired)");
                    self.peers.remove(&node);
                    self.tell(NodeInput::NodeLost { node }).await;
                }
                Err(_) => {}
            }
        }
    }

    async fn work(&mut self, work: NodeOutput) {
        match work {
            NodeOutput::AcquireTakeover { node } => self.take_over(node).await,
            NodeOutput::Send { node, message } => self.send(node, *message).await,
            NodeOutput::Locate { id, app, user } => {
                let devices = match self.presence.lookup(app.as_str(), user.as_str()).await {
                    Ok(found) => found
                        .into_iter()
                        .filter(|d| d.node_id != self.node.as_str())
                        .filter_map(|d| {
                            Some(RemoteDevice {
                                node: d.node_id,
                                device: DeviceId::new(&d.device_id).ok()?,
                                session_id: d.session_id,
                            })
                        })
                        .collect(),
                    Err(e) => {
                        self.metrics.count_node("error");
                        tracing::warn!(error = %e, "presence lookup failed; only this node's devices are rung");
                        Vec::new()
                    }
                };
                for d in &devices {
                    self.peers.entry(d.node.clone()).or_insert_with(Instant::now);
                }
                self.tell(NodeInput::Located { id, devices }).await;
            }
            NodeOutput::InCall { app, user, call_id, mark } => {
                let mark = mark.map(CallMark::as_str);
                if let Err(e) = self.marks.set(app.as_str(), user.as_str(), call_id.as_str(), mark).await {
                    self.metrics.count_node("error");
                    tracing::warn!(error = %e, "in-call mark not written");
                }
            }
            NodeOutput::CheckBusy { id, app, users } => {
                let calls = self.marked(&app, &users, CallMark::Connected).await;
                self.tell(NodeInput::BusyFound { id, calls }).await;
            }
            NodeOutput::FindRinging { app, user, device, session_id } => {
                // In presence first, then the marks (`NodeOutput::Locate` says why). The presence
                // task registers the session too, but on its own schedule; this write (the same
                // entry) orders the two reads. A failure leaves it to that task.
                let registered =
                    self.presence.register(app.as_str(), user.as_str(), device.as_str(), &session_id).await;
                if let Err(e) = registered {
                    tracing::debug!(error = %e, "presence not written before reading the ringing marks");
                }
                let found = self.marked(&app, std::slice::from_ref(&user), CallMark::Ringing).await;
                let mut owners: Vec<String> =
                    found.iter().filter_map(|(_, call)| owner_node(call).map(str::to_owned)).collect();
                owners.sort();
                owners.dedup();
                for node in owners {
                    let message = NodeMessage::DeviceOnline {
                        app: app.clone(),
                        user: user.clone(),
                        device: device.clone(),
                        session_id: session_id.clone(),
                    };
                    self.send_to(&node, &message).await;
                }
            }
            NodeOutput::KickElsewhere { app, user, device, at_ms } => {
                let failed = "presence lookup failed; older logins elsewhere not kicked";
                let nodes = self.other_nodes(&app, &user, Some(&device), failed).await;
                for node in nodes {
                    if self.alive(&node).await {
                        let message = NodeMessage::LoggedIn {
                            app: app.clone(),
                            user: user.clone(),
                            device: device.clone(),
                            at_ms,
                        };
                        self.send_to(&node, &message).await;
                    }
                }
            }
            NodeOutput::Route { app, user, event, store_if_absent } => {
                let failed = "presence lookup failed; the event is kept for the user";
                let nodes = self.other_nodes(&app, &user, None, failed).await;
                let mut sent = false;
                for node in nodes {
                    if self.alive(&node).await {
                        let message = NodeMessage::UserEvent {
                            app: app.clone(),
                            user: user.clone(),
                            event: event.clone(),
                        };
                        sent |= self.send_to(&node, &message).await;
                    }
                }
                if !sent && store_if_absent {
                    self.tell(NodeInput::Store { app, user, event: Box::new(event) }).await;
                }
            }
        }
    }

    /// The other nodes holding a device of `user` (but `except`), by presence, each once; none
    /// when the lookup fails, which is counted and logged as `failed`.
    async fn other_nodes(
        &self,
        app: &AppKey,
        user: &UserId,
        except: Option<&DeviceId>,
        failed: &str,
    ) -> Vec<String> {
        match self.presence.lookup(app.as_str(), user.as_str()).await {
            Ok(found) => {
                let mut nodes: Vec<String> = found
                    .into_iter()
                    .filter(|d| d.node_id != self.node.as_str())
                    .filter(|d| except.is_none_or(|device| d.device_id != device.as_str()))
                    .map(|d| d.node_id)
                    .collect();
                nodes.sort();
                nodes.dedup();
                nodes
            }
            Err(e) => {
                self.metrics.count_node("error");
                tracing::warn!(error = %e, "{failed}");
                Vec::new()
            }
        }
    }

    /// The (user, call) marks `wanted` of `users` whose owner is another node that is alive
    /// (this node's own calls are judged by its switchboard; a lost node's marks count for
    /// nothing). A failed lookup finds none: nobody busy, no late ringing.
    async fn marked(&mut self, app: &AppKey, users: &[UserId], wanted: CallMark) -> Vec<(UserId, CallId)> {
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let found = match self.marks.read(app.as_str(), &names).await {
            Ok(found) => found,
            Err(e) => {
                self.metrics.count_node("error");
                tracing::warn!(error = %e, "in-call marks not read; none counts");
                return Vec::new();
            }
        };
        let mut calls = Vec::new();
        for (user, call, mark) in found {
            if CallMark::parse(&mark) != Some(wanted) {
                continue;
            }
            let (Ok(user), Ok(call)) = (UserId::new(&user), CallId::new(&call)) else { continue };
            let Some(owner) = owner_node(&call).map(str::to_owned) else { continue };
            if owner != self.node.as_str() && self.alive(&owner).await {
                calls.push((user, call));
            }
        }
        calls
    }

    /// Tries the lost `node`'s takeover lock; the winner's driver ends the node's calls.
    async fn take_over(&mut self, node: String) {
        match self.takeovers.acquire(&node).await {
            Ok(true) => {
                tracing::info!(%node, "ending the calls of a lost node");
                self.tell(NodeInput::TakeoverWon { node }).await;
            }
            Ok(false) => tracing::debug!(%node, "another node ends the lost node's calls"),
            Err(e) => {
                self.metrics.count_node("error");
                tracing::warn!(%node, error = %e, "takeover lock not tried; trying again");
                self.untried.push(node);
            }
        }
    }

    async fn release(&mut self, node: String) {
        match self.takeovers.release(&node).await {
            Ok(true) => tracing::debug!(%node, "takeover done"),
            Ok(false) => tracing::warn!(%node, "takeover lock expired before the calls were ended"),
            Err(e) => tracing::warn!(%node, error = %e, "takeover lock not released; it expires"),
        }
    }

    async fn recheck(&mut self, app: AppKey, user: UserId) {
        let Ok(found) = self.presence.lookup(app.as_str(), user.as_str()).await else { return };
        let mut nodes: Vec<String> =
            found.into_iter().map(|d| d.node_id).filter(|n| n != self.node.as_str()).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let message = NodeMessage::OfflineWaiting { app: app.clone(), user: user.clone() };
            self.send_to(&node, &message).await;
        }
    }

    async fn send(&mut self, node: String, message: NodeMessage) {
        let sent = self.alive(&node).await && self.send_to(&node, &message).await;
        if sent {
            return;
        }
        self.metrics.count_node("unroutable");
        match message {
            NodeMessage::Request { app, user, session_id, request_id, .. } => {
                tracing::debug!(%node, "the call's node cannot be reached; request refused");
                self.tell(NodeInput::Unroutable { app, user, session_id, request_id }).await;
            }
            other => tracing::debug!(%node, message = ?other, "node cannot be reached; message dropped"),
        }
    }

    async fn send_to(&mut self, node: &str, message: &NodeMessage) -> bool {
        match self.outbox.send(node, message).await {
            Ok(()) => {
                self.metrics.count_node("sent");
                true
            }
            Err(e) => {
                self.metrics.count_node("error");
                tracing::warn!(%node, error = %e, "message to another node not sent");
                false
            }
        }
    }
}
