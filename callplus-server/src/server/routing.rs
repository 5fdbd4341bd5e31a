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
//! The routing task also holds the leases of the calls this node owns ([`RoutingQueue::hold`],
//! [`RoutingQueue::drop_lease`]) and renews them together every third of [`LEASE_TTL`]; a
//! lease found taken over by another node is reported to the driver
//! ([`NodeInput::LeaseLost`]), whose switchboard stops acting for the call. [`take_calls`]
//! takes a lost node's calls over before they are ended, for the fencing token their writes
//! carry.
//!
//! Redis I/O therefore never runs on the switchboard's task. When Redis is down, sends fail
//! (counted); a forwarded request that cannot be sent is answered CALL_NOT_FOUND, and the
//! calls concerned recover by the liveness rules (docs/architecture.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use callplus_session::switchboard::{NodeMessage, NodeOutput, QueryId, RemoteDevice};
use callplus_session::{AppKey, CallId, CallInfo, Event, UserId};
use tokio::sync::mpsc;
use tokio::time::Instant;

mod batch;

use super::driver::{DriverHandle, Input};
use super::metrics::Metrics;
use crate::cluster::{
    ALIVE_TTL, CallLeases, InboxReader, LEASE_TTL, Lease, NodeId, Outbox, Presence, TakeOver, Takeovers,
};

/// Work queued for the routing task before further work is dropped.
pub(crate) const ROUTING_QUEUE: usize = 16_384;

/// At most how much queued work one run of round trips carries (`routing/batch.rs`).
const RUN: usize = 512;

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
    NodeLost {
        node: String,
        /// About how long ago it stopped: its key was last renewed [`ALIVE_TTL`] before it
        /// expired, and the node renews it every [`ALIVE_EVERY`]; it was last seen alive
        /// before that expiry. The estimate is within a renewal interval of the truth.
        stopped_ago: Duration,
    },
    /// What this node keeps in Redis may be gone (its liveness key was): publish it again.
    SharedStateLost,
    /// This node won the right to end the lost `node`'s calls: read them and end them.
    TakeoverWon { node: String },
    /// The lost `node`'s saved calls, read after winning its takeover lock, each with the
    /// lease taken on it ([`take_calls`]).
    Takeover { node: String, calls: Vec<(AppKey, CallInfo, Lease)> },
    /// Another node took over the call this node owns (its lease renewal was refused).
    LeaseLost { app: AppKey, call_id: CallId },
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
    /// Hold (and renew) the lease of a call this node owns.
    Hold { app: AppKey, call_id: CallId, lease: Lease },
    /// The call ended here: give its lease up.
    DropLease { app: AppKey, call_id: CallId },
}

/// The driver's end of the routing queue.
#[derive(Debug)]
pub(crate) struct RoutingQueue {
    tx: mpsc::Sender<Work>,
    node: NodeId,
    leases: CallLeases,
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

    /// Holds the lease of a call this node owns from now on: the creator's ([`Lease::first`],
    /// written at its first renewal), or one taken over ([`take_calls`]).
    pub(crate) fn hold(&self, app: AppKey, call_id: CallId, lease: Lease) {
        self.queue(Work::Hold { app, call_id, lease });
    }

    /// Gives up the lease of a call that ended here.
    pub(crate) fn drop_lease(&self, app: AppKey, call_id: CallId) {
        self.queue(Work::DropLease { app, call_id });
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &NodeId {
        &self.node
    }

    /// The leases' handle, to take calls over ([`take_calls`]).
    pub(crate) fn leases(&self) -> CallLeases {
        self.leases.clone()
    }

    fn queue(&self, work: Work) {
        if let Err(e) = self.tx.try_send(work) {
            self.metrics.count_node("dropped");
            tracing::warn!(work = ?e.into_inner(), "routing queue full; lease work dropped");
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
    pub(crate) leases: CallLeases,
}

/// Starts the routing and inbox tasks; they stop when the [`RoutingQueue`] is closed.
pub(crate) fn spawn(routing: Routing, driver: DriverHandle, metrics: Arc<Metrics>) -> RoutingQueue {
    let (tx, rx) = mpsc::channel(ROUTING_QUEUE);
    let Routing { node, outbox, presence, reader, takeovers, leases } = routing;
    let reader = tokio::spawn(read_inbox(reader, outbox.clone(), driver.clone(), metrics.clone()));
    let worker = Worker {
        node: node.clone(),
        leases: leases.clone(),
        held: HashMap::new(),
        to_release: Vec::new(),
        conn: outbox.connection(),
        outbox,
        presence,
        takeovers,
        driver,
        metrics: metrics.clone(),
        peers: HashMap::new(),
        untried: Vec::new(),
    };
    let task = tokio::spawn(worker.run(rx));
    RoutingQueue { tx, node, leases, metrics, task, reader }
}

/// Reads this node's inbox until aborted, and keeps the node's liveness key fresh.
async fn read_inbox(mut reader: InboxReader, outbox: Outbox, driver: DriverHandle, metrics: Arc<Metrics>) {
    let mut failing = false;
    let mut marked: Option<Instant> = None;
    loop {
        if marked.is_none_or(|at| at.elapsed() >= ALIVE_EVERY) {
            match outbox.mark_alive().await {
                Ok(was_there) => {
                    if !was_there && marked.is_some() {
                        // The key this node renews every second is gone: Redis lost its data
                        // (or this node went unseen past its TTL). Presence comes back with the
                        // devices' renewals; the in-call marks are written again now.
                        tracing::warn!("this node's liveness key was gone; writing its in-call marks again");
                        if !driver.send(Input::Node(NodeInput::SharedStateLost)).await {
                            return;
                        }
                    }
                    marked = Some(Instant::now());
                }
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
    leases: CallLeases,
    /// The leases of the calls this node owns, and whether each was written to Redis yet (a
    /// creator's lease is written by its first renewal).
    held: HashMap<(AppKey, CallId), (Lease, bool)>,
    /// Written leases of calls that ended, to give up at the next renewal.
    to_release: Vec<Lease>,
    outbox: Outbox,
    presence: Presence,
    takeovers: Takeovers,
    /// The connection the runs' batches go on (the outbox's).
    conn: redis::aio::ConnectionManager,
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
        let mut run = Vec::with_capacity(RUN);
        let mut check = tokio::time::interval(ALIVE_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(LEASE_TTL / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = rx.recv_many(&mut run, RUN) => {
                    if got == 0 {
                        return;
                    }
                    self.run_batch(&mut run).await;
                }
                _ = check.tick() => self.check_peers().await,
                _ = renew.tick() => self.renew_leases().await,
            }
        }
    }

    async fn tell(&self, input: NodeInput) {
        let _ = self.driver.send(Input::Node(input)).await;
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
                    let seen = self.peers.remove(&node).map_or(Duration::ZERO, |at| at.elapsed());
                    let stopped_ago = (seen + ALIVE_TTL).saturating_sub(ALIVE_EVERY);
                    self.tell(NodeInput::NodeLost { node, stopped_ago }).await;
                }
                Err(_) => {}
            }
        }
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

    /// Notes lease work of a run (the run's other work goes to Redis in `batch`).
    fn lease_work(&mut self, work: Work) {
        match work {
            Work::Hold { app, call_id, lease } => {
                // A lease taken over is in Redis already; a creator's is written on renewal.
                let written = lease.token > 1;
                self.held.insert((app, call_id), (lease, written));
            }
            Work::DropLease { app, call_id } => {
                if let Some((lease, true)) = self.held.remove(&(app, call_id)) {
                    self.to_release.push(lease);
                }
            }
            _ => {}
        }
    }

    /// Renews every lease held, in one round trip, and reports those another node took over;
    /// gives up those of the calls that ended since.
    async fn renew_leases(&mut self) {
        if !self.to_release.is_empty() {
            let released = std::mem::take(&mut self.to_release);
            if let Err(e) = self.leases.release_all(&released).await {
                // They expire by themselves.
                tracing::debug!(error = %e, leases = released.len(), "leases not released");
            }
        }
        if self.held.is_empty() {
            return;
        }
        let keys: Vec<(AppKey, CallId)> = self.held.keys().cloned().collect();
        let leases: Vec<Lease> =
            keys.iter().filter_map(|k| self.held.get(k).map(|(l, _)| l.clone())).collect();
        match self.leases.renew_all(&leases).await {
            Ok(kept) => {
                for ((app, call_id), kept) in keys.into_iter().zip(kept) {
                    if kept {
                        if let Some(entry) = self.held.get_mut(&(app, call_id)) {
                            entry.1 = true;
                        }
                    } else {
                        self.held.remove(&(app.clone(), call_id.clone()));
                        self.metrics.count_node("lease_lost");
                        self.tell(NodeInput::LeaseLost { app, call_id }).await;
                    }
                }
            }
            Err(e) => {
                // Still ours until they expire: the next renewal tries again.
                self.metrics.count_node("error");
                tracing::warn!(error = %e, leases = leases.len(), "call leases not renewed");
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
}

/// How long [`take_calls`] keeps trying a call's lease while Redis cannot be reached.
const TAKE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Takes over the calls of the lost node `lost` (this node won its takeover lock, or is `lost`
/// itself restarted) before they are ended: each call's lease, with a fencing token larger
/// than any its owner had, so the ends' writes win over anything the lost owner writes if it
/// was only paused. A lease the lost node still holds is waited for (it expires within
/// [`LEASE_TTL`] of the node's last renewal; a survivor notices the loss later than that, so
/// usually there is no wait). A call another node took over already is left out, and so is one
/// whose lease could not be taken while Redis was unreachable (it stays saved, and is ended when
/// a node with the lost node's id starts again).
pub(crate) async fn take_calls(
    leases: &CallLeases,
    lost: &str,
    calls: Vec<(AppKey, CallInfo)>,
) -> Vec<(AppKey, CallInfo, Lease)> {
    let mut taken = Vec::with_capacity(calls.len());
    for (app, info) in calls {
        let started = Instant::now();
        loop {
            match leases.take_over(app.as_str(), info.call_id.as_str(), lost).await {
                Ok(TakeOver::Taken(lease)) => {
                    taken.push((app, info, lease));
                    break;
                }
                Ok(TakeOver::TakenElsewhere) => {
                    tracing::info!(call = %info.call_id, "call already taken over by another node");
                    break;
                }
                Ok(TakeOver::Wait(left)) => tokio::time::sleep(left.min(LEASE_TTL)).await,
                Err(e) if started.elapsed() < TAKE_RETRY_FOR => {
                    tracing::debug!(call = %info.call_id, error = %e, "call lease not taken; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::error!(call = %info.call_id, error = %e, "call lease not taken; call left saved");
                    break;
                }
            }
        }
    }
    taken
}
