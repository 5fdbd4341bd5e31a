//! Several simulated nodes in one deployment: one [`Sim`] per node (a switchboard with its own
//! devices and network), one database they share, a presence registry fed by the switchboards'
//! `SessionOnline` / `SessionEnded`, and a per-node inbox that carries `NodeMessage`s with a
//! latency. It does what the server's cluster driver does with `Output::Node`: messages go to
//! the named node's inbox, presence lookups are answered from the registry (other nodes'
//! entries), and an event routed to a user goes to every other node holding one of their
//! devices, or is stored when they have none anywhere. All nodes advance together on one
//! virtual clock, a tick at a time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use callplus_session::client::{CallOptions, ConnectionState, DriverEvent, RequestId};
use callplus_session::switchboard::{
    CallMark, NodeMessage, NodeOutput, Output, QueryId, RemoteDevice, SwitchboardConfig, owner_node,
};
use callplus_session::{
    AppKey, CallId, CallInfo, CallType, DeviceId, Error, MediaType, ResponseBody, UserId,
};

use super::Sim;
use super::storage::SimStorage;

/// How far all nodes advance at a time (ms).
pub const TICK_MS: i64 = 5;

/// How long a message takes from one node's outputs to another's inbox reader (ms).
pub const NODE_LATENCY_MS: i64 = 3;

/// A message on its way to a node's inbox.
#[derive(Debug, Clone)]
struct InFlight {
    to: usize,
    from: usize,
    message: NodeMessage,
}

/// A busy lookup on its way: the asking node, the lookup's id, the app and the callees.
type BusyCheck = (usize, QueryId, AppKey, Vec<UserId>);

/// The simulated deployment.
pub struct Cluster {
    pub nodes: Vec<Sim>,
    pub names: Vec<String>,
    pub alive: Vec<bool>,
    /// The database every node shares.
    pub db: Rc<RefCell<SimStorage>>,
    /// Presence: device → (node, session id), written and removed compare-and-delete.
    pub presence: BTreeMap<(AppKey, UserId, DeviceId), (usize, String)>,
    /// Every message any node put on another's inbox: (from, to, message).
    pub sent: Vec<(usize, usize, NodeMessage)>,
    inbox: BTreeMap<(i64, u64), InFlight>,
    locates: BTreeMap<(i64, u64), (usize, QueryId, AppKey, UserId)>,
    /// The takeover locks (`SET NX` on a lost node's takeover key): lost node → the node that
    /// won the right to end its calls.
    pub takeovers: BTreeMap<String, usize>,
    /// Every attempt at a lost node's takeover lock: (node that asked, lost node).
    pub takeover_attempts: Vec<(usize, String)>,
    /// The highest fencing token handed out per call (a call's epoch in Redis): a node that
    /// takes a lost owner's call over gets the next one, at least 2 (the creator holds 1).
    pub epochs: BTreeMap<(AppKey, CallId), i64>,
    /// Won takeovers whose saved calls are being read: answered a latency later.
    grants: BTreeMap<(i64, u64), (usize, String)>,
    /// The in-call marks (`NodeOutput::InCall`): (app, user) → calls, each with the node that
    /// marked it and the mark.
    pub in_call: BTreeMap<(AppKey, UserId), BTreeMap<CallId, (usize, CallMark)>>,
    /// Busy lookups waiting for their answer.
    busy_checks: BTreeMap<(i64, u64), BusyCheck>,
    cursors: Vec<usize>,
    seq: u64,
    pub now: i64,
}

impl Cluster {
    /// Nodes named `names`, started in the same millisecond on one shared database.
    pub fn new(names: &[&str]) -> Cluster {
        Cluster::with_config(names, &SwitchboardConfig::default())
    }

    /// Like [`Cluster::new`], every node with `base` (and its own node id).
    pub fn with_config(names: &[&str], base: &SwitchboardConfig) -> Cluster {
        let db = Rc::new(RefCell::new(SimStorage::default()));
        let mut nodes = Vec::new();
        for name in names {
            let config = SwitchboardConfig { node_id: (*name).to_owned(), ..base.clone() };
            let mut sim = Sim::new(config);
            sim.routed = true;
            sim.storage.shared = Some(db.clone());
            sim.storage.fenced = true;
            nodes.push(sim);
        }
        let now = nodes.first().map_or(0, |n| n.now);
        Cluster {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            alive: vec![true; nodes.len()],
            cursors: vec![0; nodes.len()],
            nodes,
            db,
            presence: BTreeMap::new(),
            sent: Vec::new(),
            inbox: BTreeMap::new(),
            locates: BTreeMap::new(),
            takeovers: BTreeMap::new(),
            takeover_attempts: Vec::new(),
            epochs: BTreeMap::new(),
            grants: BTreeMap::new(),
            in_call: BTreeMap::new(),
            busy_checks: BTreeMap::new(),
            seq: 0,
            now,
        }
    }

    /// Connects a device of `user` to node `node`; returns its index on that node.
    pub fn add_device(&mut self, node: usize, user: &str, device: &str) -> usize {
        let idx = self.nodes[node].add_device(user, device);
        let key = (
            super::default_app(),
            super::user(user),
            DeviceId::new(device).unwrap_or_else(|e| panic!("{e}")),
        );
        self.run_until(1_000, "the device is welcomed", |c| {
            c.presence.get(&key).is_some_and(|(n, _)| *n == node)
                && c.nodes[node].devices[idx].engine.connection_state() == ConnectionState::Connected
        });
        idx
    }

    /// The device's engine clock on its node.
    pub fn device_now(&self, node: usize, idx: usize) -> i64 {
        self.nodes[node].device_now(idx)
    }

    fn schedule_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Carries every new output of every node the way the cluster driver does.
    fn collect(&mut self) {
        for n in 0..self.nodes.len() {
            let outputs: Vec<Output> = self.nodes[n].outputs[self.cursors[n]..].to_vec();
            self.cursors[n] = self.nodes[n].outputs.len();
            for output in outputs {
                self.carry(n, output);
            }
        }
    }

    fn carry(&mut self, n: usize, output: Output) {
        match output {
            Output::SessionOnline { device, .. } => {
                let key = (device.app, device.user, device.device);
                self.presence.insert(key, (n, device.session_id));
            }
            Output::SessionEnded { device } => {
                let key = (device.app, device.user, device.device);
                if self.presence.get(&key) == Some(&(n, device.session_id.clone())) {
                    self.presence.remove(&key);
                }
            }
            Output::Node(NodeOutput::Send { node, message }) => {
                let to = self.names.iter().position(|x| *x == node).unwrap_or_else(|| {
                    panic!("{} sent to an unknown node {node}: {message:?}", self.names[n])
                });
                self.post(n, to, *message);
            }
            Output::Node(NodeOutput::Locate { id, app, user }) => {
                let at = self.now + NODE_LATENCY_MS;
                let s = self.schedule_seq();
                self.locates.insert((at, s), (n, id, app, user));
            }
            Output::Node(NodeOutput::InCall { app, user, call_id, mark }) => {
                let calls = self.in_call.entry((app, user)).or_default();
                match mark {
                    Some(mark) => {
                        calls.insert(call_id, (n, mark));
                    }
                    None => {
                        calls.remove(&call_id);
                    }
                }
            }
            Output::Node(NodeOutput::FindRinging { app, user, device, session_id }) => {
                let mut owners: Vec<usize> = self
                    .in_call
                    .get(&(app.clone(), user.clone()))
                    .map(|calls| {
                        calls
                            .values()
                            .filter(|(o, m)| *m == CallMark::Ringing && *o != n && self.alive[*o])
                            .map(|(o, _)| *o)
                            .collect()
                    })
                    .unwrap_or_default();
                owners.sort_unstable();
                owners.dedup();
                for to in owners {
                    let message = NodeMessage::DeviceOnline {
                        app: app.clone(),
                        user: user.clone(),
                        device: device.clone(),
                        session_id: session_id.clone(),
                    };
                    self.post(n, to, message);
                }
            }
            Output::Node(NodeOutput::KickElsewhere { app, user, device, at_ms }) => {
                let mut nodes: Vec<usize> = self
                    .presence
                    .iter()
                    .filter(|((a, u, d), (o, _))| *a == app && *u == user && *d != device && *o != n)
                    .map(|(_, (o, _))| *o)
                    .collect();
                nodes.sort_unstable();
                nodes.dedup();
                for to in nodes {
                    let message = NodeMessage::LoggedIn {
                        app: app.clone(),
                        user: user.clone(),
                        device: device.clone(),
                        at_ms,
                    };
                    self.post(n, to, message);
                }
            }
            Output::Node(NodeOutput::CheckBusy { id, app, users }) => {
                let at = self.now + NODE_LATENCY_MS;
                let s = self.schedule_seq();
                self.busy_checks.insert((at, s), (n, id, app, users));
            }
            Output::Node(NodeOutput::AcquireTakeover { node }) => {
                self.takeover_attempts.push((n, node.clone()));
                if !self.takeovers.contains_key(&node) {
                    self.takeovers.insert(node.clone(), n);
                    let at = self.now + NODE_LATENCY_MS;
                    let s = self.schedule_seq();
                    self.grants.insert((at, s), (n, node));
                }
            }
            Output::Node(NodeOutput::Route { app, user, event, store_if_absent }) => {
                let mut nodes: Vec<usize> = self
                    .presence
                    .iter()
                    .filter(|((a, u, _), _)| *a == app && *u == user)
                    .map(|(_, (node, _))| *node)
                    .collect();
                nodes.sort_unstable();
                nodes.dedup();
                let others: Vec<usize> = nodes.iter().copied().filter(|&o| o != n).collect();
                if others.is_empty() {
                    if store_if_absent {
                        self.db.borrow_mut().apply(&Output::StoreOffline { app, user, event });
                    }
                    return;
                }
                for to in others {
                    let message =
                        NodeMessage::UserEvent { app: app.clone(), user: user.clone(), event: event.clone() };
                    self.post(n, to, message);
                }
            }
            _ => {}
        }
    }

    /// Puts a message on node `to`'s inbox as if node `from` had sent it.
    pub fn inject(&mut self, from: usize, to: usize, message: NodeMessage) {
        self.post(from, to, message);
    }

    fn post(&mut self, from: usize, to: usize, message: NodeMessage) {
        self.sent.push((from, to, message.clone()));
        if !self.alive[to] {
            return;
        }
        let at = self.now + NODE_LATENCY_MS;
        let s = self.schedule_seq();
        self.inbox.insert((at, s), InFlight { to, from, message });
    }

    /// Feeds each node what is due on its inbox and the presence answers it waits for.
    fn deliver_due(&mut self) {
        loop {
            let due = self.inbox.keys().next().copied().filter(|(t, _)| *t <= self.now);
            let Some(key) = due else { break };
            let Some(f) = self.inbox.remove(&key) else { break };
            if !self.alive[f.to] {
                continue;
            }
            let from = self.names[f.from].clone();
            let now = self.now;
            self.nodes[f.to].switchboard.handle_node_message(now, &from, f.message);
            self.nodes[f.to].run_for(0);
            self.collect();
        }
        loop {
            let due = self.locates.keys().next().copied().filter(|(t, _)| *t <= self.now);
            let Some(key) = due else { break };
            let Some((n, id, app, user)) = self.locates.remove(&key) else { break };
            if !self.alive[n] {
                continue;
            }
            let devices: Vec<RemoteDevice> = self
                .presence
                .iter()
                .filter(|((a, u, _), _)| *a == app && *u == user)
                .map(|((_, _, device), (node, session_id))| RemoteDevice {
                    node: self.names[*node].clone(),
                    device: device.clone(),
                    session_id: session_id.clone(),
                })
                .collect();
            let now = self.now;
            self.nodes[n].switchboard.complete_locate(now, id, devices);
            self.nodes[n].run_for(0);
            self.collect();
        }
        loop {
            let due = self.busy_checks.keys().next().copied().filter(|(t, _)| *t <= self.now);
            let Some(key) = due else { break };
            let Some((n, id, app, users)) = self.busy_checks.remove(&key) else { break };
            if !self.alive[n] {
                continue;
            }
            // Marks of lost nodes are skipped, as the driver skips nodes whose liveness key
            // is gone.
            let mut found = Vec::new();
            for user in users {
                let Some(calls) = self.in_call.get(&(app.clone(), user.clone())) else { continue };
                for (call, (node, mark)) in calls {
                    if *mark == CallMark::Connected && self.alive[*node] {
                        found.push((user.clone(), call.clone()));
                    }
                }
            }
            let now = self.now;
            self.nodes[n].switchboard.complete_busy(now, id, found);
            self.nodes[n].run_for(0);
            self.collect();
        }
        loop {
            let due = self.grants.keys().next().copied().filter(|(t, _)| *t <= self.now);
            let Some(key) = due else { break };
            let Some((n, lost)) = self.grants.remove(&key) else { break };
            if !self.alive[n] {
                continue;
            }
            // The saved calls are read after the lock was won (what the driver does).
            let calls: Vec<(AppKey, CallInfo)> = self
                .db
                .borrow()
                .calls
                .iter()
                .filter(|((_, id), _)| owner_node(id) == Some(lost.as_str()))
                .map(|((app, _), info)| (app.clone(), CallInfo::clone(info)))
                .collect();
            // Each call's lease is taken over before it is ended (`take_calls`), with a token
            // past any its owners had; the ends' writes carry it.
            for (app, info) in &calls {
                let epoch = self.epochs.entry((app.clone(), info.call_id.clone())).or_insert(1);
                *epoch = (*epoch).max(1) + 1;
                self.nodes[n].storage.lease_tokens.insert(info.call_id.clone(), *epoch);
            }
            let now = self.now;
            self.nodes[n].switchboard.takeover_granted(now, &lost, calls);
            self.nodes[n].run_for(0);
            self.collect();
        }
    }

    /// Advances every live node by one tick.
    pub fn tick(&mut self) {
        self.now += TICK_MS;
        for n in 0..self.nodes.len() {
            if self.alive[n] && self.nodes[n].now < self.now {
                let ms = self.now - self.nodes[n].now;
                self.nodes[n].run_for(ms);
            }
        }
        self.collect();
        self.deliver_due();
    }

    pub fn run_for(&mut self, ms: i64) {
        let until = self.now + ms;
        while self.now < until {
            self.tick();
        }
    }

    /// Runs until `done` holds, for at most `max_ms`; panics if it never does.
    pub fn run_until(&mut self, max_ms: i64, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        let until = self.now + max_ms;
        self.collect();
        while !done(self) {
            assert!(self.now < until, "cluster: {what} did not happen within {max_ms} ms");
            self.tick();
        }
    }

    /// Lets in-flight frames and node messages land.
    pub fn settle(&mut self) {
        self.run_for(200);
    }

    /// Runs until device `idx` of node `node` has the outcome of request `id`; returns it.
    pub fn wait_request(&mut self, node: usize, idx: usize, id: RequestId) -> Result<ResponseBody, Error> {
        self.run_until(15_000, "the request completes", |c| c.nodes[node].request_done(idx, id));
        let device = &self.nodes[node].devices[idx];
        device.driver_events[device.epoch..]
            .iter()
            .find_map(|(_, e)| match e {
                DriverEvent::RequestCompleted { request_id, result } if *request_id == id => {
                    Some(result.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("request {id} vanished"))
    }

    /// Whose records of `call` were written, sorted.
    pub fn records_for(&self, call: &CallId) -> Vec<String> {
        let mut owners: Vec<String> = self
            .db
            .borrow()
            .written
            .iter()
            .filter(|(_, r)| &r.call.call_id == call)
            .map(|(_, r)| r.owner.to_string())
            .collect();
        owners.sort();
        owners
    }

    /// When each written record of `call` says it ended.
    pub fn ends_of(&self, call: &CallId) -> Vec<i64> {
        self.db
            .borrow()
            .written
            .iter()
            .filter(|(_, r)| &r.call.call_id == call)
            .filter_map(|(_, r)| r.call.ended_at_ms)
            .collect()
    }

    /// Device `idx` of `node` starts an AUDIO call to `callees` and waits for the answer: the
    /// call and the callees reported busy.
    pub fn start_call(
        &mut self,
        node: usize,
        idx: usize,
        callees: &[&str],
        call_type: CallType,
        options: CallOptions,
    ) -> (CallId, Vec<UserId>) {
        let now = self.device_now(node, idx);
        let engine = &mut self.nodes[node].devices[idx].engine;
        let id = engine
            .start_call(now, callees, call_type, MediaType::Audio, options)
            .unwrap_or_else(|e| panic!("start_call refused: {e:?}"));
        match self.wait_request(node, idx, id) {
            Ok(ResponseBody::Started { call, busy }) => (call.call_id.clone(), busy),
            other => panic!("start_call answered {other:?}"),
        }
    }

    /// Device `idx` of `node` answers `call` and waits for the answer.
    pub fn accept(&mut self, node: usize, idx: usize, call: &CallId) {
        let now = self.device_now(node, idx);
        let id = self.nodes[node].devices[idx].engine.accept(now, call);
        let id = id.unwrap_or_else(|e| panic!("accept refused: {e:?}"));
        if let Err(e) = self.wait_request(node, idx, id) {
            panic!("accept answered {e:?}");
        }
    }

    /// Device `idx` of `node` hangs `call` up and waits for the answer.
    pub fn hangup(&mut self, node: usize, idx: usize, call: &CallId) {
        let now = self.device_now(node, idx);
        let id = self.nodes[node].devices[idx].engine.hangup(now, Some(call), None);
        let id = id.unwrap_or_else(|e| panic!("hangup refused: {e:?}"));
        if let Err(e) = self.wait_request(node, idx, id) {
            panic!("hangup answered {e:?}");
        }
    }

    /// Runs until device `idx` of `node` rings for `call`.
    pub fn rings(&mut self, node: usize, idx: usize, call: &CallId) {
        let call = call.clone();
        self.run_until(2_000, "the callee rings", move |c| {
            c.nodes[node].incoming(idx).as_ref() == Some(&call)
        });
    }

    /// The node is lost (SIGKILL): it runs no more, messages to it are dropped. After
    /// `presence_ttl_ms` its presence entries expire and every survivor is told
    /// (`node_lost`), as the driver does when the node's liveness key expires; each then asks
    /// for the node's takeover lock, and the one that gets it ends the node's saved calls. The
    /// survivors are told the moment it died, as the driver estimates it from the liveness key.
    pub fn kill(&mut self, node: usize, presence_ttl_ms: i64) {
        let died_at = self.now;
        self.alive[node] = false;
        self.inbox.retain(|_, f| f.to != node);
        self.run_for(presence_ttl_ms);
        self.presence.retain(|_, (n, _)| *n != node);
        let name = self.names[node].clone();
        for n in 0..self.nodes.len() {
            if self.alive[n] {
                let now = self.now;
                self.nodes[n].switchboard.node_lost(now, &name, died_at);
                self.nodes[n].run_for(0);
            }
        }
        self.collect();
    }

    /// The node stopped by [`Cluster::kill`] only paused (SIGSTOP, not SIGKILL) and runs again
    /// with everything it held: it first catches up on what fell due while it slept (its timers
    /// fire at once, as the server's do when it wakes), then its lease renewal reaches Redis a
    /// moment later and is refused for every call a survivor took over (the call's epoch is past
    /// its token): it is told [`Switchboard::lease_lost`] for each.
    ///
    /// [`Switchboard::lease_lost`]: callplus_session::switchboard::Switchboard::lease_lost
    pub fn wake(&mut self, node: usize) {
        self.alive[node] = true;
        self.tick();
        self.run_for(NODE_LATENCY_MS);
        let name = self.names[node].clone();
        let taken: Vec<(AppKey, CallId)> = self
            .epochs
            .iter()
            .filter(|((_, id), epoch)| owner_node(id) == Some(name.as_str()) && **epoch > 1)
            .map(|(key, _)| key.clone())
            .collect();
        for (app, id) in taken {
            let now = self.now;
            self.nodes[node].switchboard.lease_lost(now, &app, &id);
            self.nodes[node].run_for(0);
            self.collect();
        }
    }
}
