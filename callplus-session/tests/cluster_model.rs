//! A model of several nodes (docs/architecture.md, "Several nodes"): one switchboard per node,
//! each over the simulated network of `sim`, call-ownership leases in a simulated Redis on the
//! same virtual clock, and one node lost at a random moment. It checks the design's promises for
//! a lost owner: its calls are ended by exactly one surviving node once the lease expires, each
//! participant gets exactly one record, nothing is left live or leased (no zombie call), and the
//! other nodes' calls go on untouched.
//!
//! This models only what the lease design decides. Cross-node routing (a call whose participants
//! sit on several nodes) is not built yet, so each node's calls here are between its own devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::collections::{BTreeMap, BTreeSet};

use callplus_session::switchboard::{NodeOutput, Output, SwitchboardConfig};
use callplus_session::{AppKey, CallId, CallInfo, CallType, EndReason, MediaType};
use sim::{Rng, Sim, default_app};

/// The lease time (ms): the owner renews every third of it.
const LEASE_MS: i64 = 3_000;

/// How far the model advances all nodes at a time (ms).
const TICK_MS: i64 = 100;

/// The Redis the nodes share: keys with an expiry on the virtual clock, and the epoch counters
/// behind the fencing tokens. Same semantics as the Lua scripts in `callplus-server`'s
/// `cluster::lease`.
#[derive(Default)]
struct SimRedis {
    owners: BTreeMap<String, (String, u64, i64)>,
    epochs: BTreeMap<String, u64>,
}

impl SimRedis {
    fn live(&mut self, now: i64, call: &str) -> Option<&(String, u64, i64)> {
        if self.owners.get(call).is_some_and(|(_, _, expires)| *expires <= now) {
            self.owners.remove(call);
        }
        self.owners.get(call)
    }

    fn acquire(&mut self, now: i64, call: &str, node: &str) -> Option<u64> {
        if self.live(now, call).is_some() {
            return None;
        }
        let epoch = self.epochs.entry(call.to_owned()).or_default();
        *epoch += 1;
        let token = *epoch;
        self.owners.insert(call.to_owned(), (node.to_owned(), token, now + LEASE_MS));
        Some(token)
    }

    fn renew(&mut self, now: i64, call: &str, node: &str, token: u64) -> bool {
        match self.live(now, call) {
            Some((owner, held, _)) if owner == node && *held == token => {
                self.owners.insert(call.to_owned(), (node.to_owned(), token, now + LEASE_MS));
                true
            }
            Some(_) => false,
            None => {
                self.owners.insert(call.to_owned(), (node.to_owned(), token, now + LEASE_MS));
                true
            }
        }
    }

    fn release(&mut self, now: i64, call: &str, node: &str, token: u64) -> bool {
        let ours = self.live(now, call).is_some_and(|(owner, held, _)| owner == node && *held == token);
        if ours {
            self.owners.remove(call);
        }
        ours
    }
}

struct Node {
    name: String,
    sim: Sim,
    alive: bool,
    /// Leases this node holds: call → token.
    leases: BTreeMap<CallId, u64>,
    /// When it last renewed its leases.
    renewed_at: i64,
}

impl Node {
    fn new(name: &str) -> Node {
        Node {
            name: name.to_owned(),
            sim: Sim::new(SwitchboardConfig { node_id: name.to_owned(), ..SwitchboardConfig::default() }),
            alive: true,
            leases: BTreeMap::new(),
            renewed_at: 0,
        }
    }

    /// The driver's lease duties at `now`: take a lease for every call this switchboard saved,
    /// renew them every third of the lease time, release those of ended calls.
    fn lease_duties(&mut self, now: i64, redis: &mut SimRedis) {
        let saved: Vec<CallId> = self.sim.storage.calls.keys().map(|(_, id)| id.clone()).collect();
        for id in &saved {
            if !self.leases.contains_key(id) {
                let token = redis.acquire(now, id.as_str(), &self.name).expect("a new call's lease is free");
                self.leases.insert(id.clone(), token);
            }
        }
        if now - self.renewed_at >= LEASE_MS / 3 {
            self.renewed_at = now;
            for (id, token) in &self.leases {
                assert!(redis.renew(now, id.as_str(), &self.name, *token), "a live owner keeps its lease");
            }
        }
        let ended: Vec<(CallId, u64)> = self
            .leases
            .iter()
            .filter(|(id, _)| !saved.contains(id))
            .map(|(id, t)| (id.clone(), *t))
            .collect();
        for (id, token) in ended {
            assert!(redis.release(now, id.as_str(), &self.name, token));
            self.leases.remove(&id);
        }
    }
}

/// Advances every live node to `until`, doing the lease duties on each tick.
fn run(nodes: &mut [Node], redis: &mut SimRedis, until: i64) {
    let mut now = nodes.iter().filter(|n| n.alive).map(|n| n.sim.now).max().unwrap_or(until);
    while now < until {
        now = (now + TICK_MS).min(until);
        for node in nodes.iter_mut().filter(|n| n.alive) {
            if node.sim.now < now {
                node.sim.run_for(now - node.sim.now);
            }
            node.lease_duties(now, redis);
        }
    }
}

/// Surviving nodes look at the lost node's saved calls (the shared `active_calls` table); the
/// first to get a call's lease ends it. Returns who ended which call.
fn take_over(
    nodes: &mut [Node],
    redis: &mut SimRedis,
    lost: usize,
    order: &[usize],
) -> Vec<(usize, CallId, u64)> {
    let mut ended = Vec::new();
    let orphans: Vec<(AppKey, CallInfo)> = nodes[lost]
        .sim
        .storage
        .calls
        .iter()
        .map(|((app, _), info)| (app.clone(), CallInfo::clone(info)))
        .collect();
    for (app, info) in orphans {
        for &idx in order {
            let now = nodes[idx].sim.now;
            let name = nodes[idx].name.clone();
            let Some(token) = redis.acquire(now, info.call_id.as_str(), &name) else { continue };
            // Read the snapshot again under the lease: a node that read the table before another
            // ended the call (and released its lease) must not end it a second time.
            let key = (app.clone(), info.call_id.clone());
            let Some(info) = nodes[lost].sim.storage.calls.get(&key).map(|info| CallInfo::clone(info)) else {
                assert!(redis.release(now, key.1.as_str(), &name, token));
                continue;
            };
            let node = &mut nodes[idx];
            let seen = node.sim.outputs.len();
            node.sim.switchboard.end_recovered_calls(now, None, vec![(app.clone(), info.clone())]);
            node.sim.settle();
            // The driver's routing: the participants have no device on any node, so their
            // records and summaries are stored for their next connect.
            let routed: Vec<Output> = node.sim.outputs[seen..].to_vec();
            for output in routed {
                if let Output::Node(NodeOutput::Route { app, user, event, store_if_absent: true }) = output {
                    node.sim.storage.apply(&Output::StoreOffline { app, user, event });
                }
            }
            // The shared table forgets the call (the winner's ForgetCall).
            nodes[lost].sim.storage.calls.remove(&(app.clone(), info.call_id.clone()));
            assert!(redis.release(nodes[idx].sim.now, info.call_id.as_str(), &name, token));
            ended.push((idx, info.call_id.clone(), token));
        }
    }
    ended
}

fn scenario(seed: u64) {
    let mut rng = Rng::new(seed);
    let mut redis = SimRedis::default();
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"].iter().map(|n| Node::new(n)).collect();
    // On each node a caller and a callee of its own.
    let mut pairs = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        // All nodes start in the same millisecond: their node ids keep their call ids apart.
        let caller = node.sim.add_device(&format!("caller{i}"), &format!("caller{i}-phone"));
        let callee = node.sim.add_device(&format!("callee{i}"), &format!("callee{i}-phone"));
        node.sim.settle();
        pairs.push((caller, callee));
        // Each node registers its own devices' sessions, minted with its node id.
        let presence = &node.sim.storage.presence;
        assert_eq!(presence.len(), 2, "{presence:?}");
        let minted = format!("s{}_", node.name);
        assert!(presence.values().all(|session| session.starts_with(&minted)), "{presence:?}");
    }
    let start = nodes.iter().map(|n| n.sim.now).max().unwrap_or(0);
    run(&mut nodes, &mut redis, start);

    // Each node's call, answered or (by the seed) still ringing when the node is lost.
    let lost = rng.below(3) as usize;
    let answered = rng.chance(0.5);
    let mut calls = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let (caller, callee) = pairs[i];
        let call = if i != lost || answered {
            node.sim.answered_call(caller, callee, &format!("callee{i}"), MediaType::Audio)
        } else {
            let call = node.sim.start(caller, &[&format!("callee{i}")], CallType::Single, MediaType::Audio);
            let callee_of = callee;
            node.sim.run_until(1_000, "the callee rings", |s| s.incoming(callee_of).as_ref() == Some(&call));
            call
        };
        calls.push(call);
    }
    let distinct: BTreeSet<&CallId> = calls.iter().collect();
    assert_eq!(distinct.len(), calls.len(), "nodes started together mint distinct call ids: {calls:?}");
    let t = nodes.iter().map(|n| n.sim.now).max().unwrap_or(0) + rng.below(5_000) as i64;
    run(&mut nodes, &mut redis, t);
    let lost_call = calls[lost].clone();
    assert_eq!(
        redis.live(t, lost_call.as_str()).map(|(n, _, _)| n.clone()),
        Some(nodes[lost].name.clone()),
        "the owner holds its call's lease"
    );

    // The node is lost (SIGKILL): no more renewals, its devices gone with it.
    nodes[lost].alive = false;
    let died_at = t;
    let mut survivors: Vec<usize> = (0..3).filter(|&i| i != lost).collect();
    if rng.chance(0.5) {
        survivors.reverse();
    }
    // Survivors try to take the call over on every tick; nobody can before the lease expires.
    let mut taken = Vec::new();
    let mut now = died_at;
    while taken.is_empty() {
        now += TICK_MS;
        assert!(now <= died_at + LEASE_MS + 2 * TICK_MS, "the lost node's call was never taken over");
        run(&mut nodes, &mut redis, now);
        taken = take_over(&mut nodes, &mut redis, lost, &survivors);
        assert!(
            taken.is_empty() || now >= died_at + LEASE_MS - LEASE_MS / 3,
            "taken over while the lease could still be live"
        );
    }
    // Every survivor keeps trying: the call is gone, so nobody ends it again.
    for _ in 0..5 {
        now += TICK_MS;
        run(&mut nodes, &mut redis, now);
        assert!(take_over(&mut nodes, &mut redis, lost, &survivors).is_empty(), "a call ends once");
    }

    // Exactly once, by one node, with a new fencing token; one NETWORK_ERROR record each.
    assert_eq!(taken.len(), 1);
    let (winner, call, token) = taken.remove(0);
    assert_eq!(call, lost_call);
    assert!(token > 1, "the new owner's token is larger than the lost owner's");
    let records: Vec<_> = nodes
        .iter()
        .flat_map(|n| n.sim.storage.written.iter())
        .filter(|(_, r)| r.call.call_id == lost_call)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(records.len(), 2, "one record per participant: {records:?}");
    let mut owners: Vec<String> = records.iter().map(|r| r.owner.to_string()).collect();
    owners.sort();
    assert_eq!(owners, [format!("callee{lost}"), format!("caller{lost}")]);
    assert!(records.iter().all(|r| r.end_reason == EndReason::NetworkError));
    // The participants had no device on the winner: their summaries wait in durable storage.
    for who in [format!("caller{lost}"), format!("callee{lost}")] {
        let waiting = nodes[winner].sim.storage.offline_for(&default_app(), &sim::user(&who));
        assert!(!waiting.is_empty(), "{who} gets the call's end on their next connect");
    }

    // No zombie: nothing live, saved or leased for the lost call anywhere.
    let app = default_app();
    for node in nodes.iter().filter(|n| n.alive) {
        assert!(!node.sim.switchboard.is_call_live(&app, &lost_call), "{} still runs the call", node.name);
        assert!(!node.sim.storage.calls.keys().any(|(_, id)| *id == lost_call));
    }
    assert!(nodes[lost].sim.storage.calls.is_empty(), "the shared table forgot the call");
    assert!(redis.live(now, lost_call.as_str()).is_none(), "no lease left behind");

    // The other nodes' calls went on; each ends once when hung up, its lease released.
    for &i in &survivors {
        let (caller, callee) = pairs[i];
        let call = calls[i].clone();
        assert!(nodes[i].sim.connected(caller, &call) && nodes[i].sim.connected(callee, &call));
        nodes[i].sim.hangup(caller, &call);
        nodes[i].sim.run_until(1_000, "ended", |s| s.ended(callee, &call).is_some());
        nodes[i].sim.settle();
        assert_eq!(nodes[i].sim.ended_count(callee, &call), 1);
        assert_eq!(nodes[i].sim.all_records(&call).len(), 2);
    }
    now = nodes.iter().filter(|n| n.alive).map(|n| n.sim.now).max().unwrap_or(now) + TICK_MS;
    run(&mut nodes, &mut redis, now);
    for &i in &survivors {
        assert!(redis.live(now, calls[i].as_str()).is_none(), "ended calls release their lease");
        assert!(nodes[i].leases.is_empty());
    }
}

#[test]
fn a_lost_owner_node_has_its_calls_ended_once_by_one_survivor() {
    for seed in 1..=40 {
        scenario(seed);
    }
}

// ----- routing between nodes ------------------------------------------------------------------

mod routing {
    use callplus_session::client::CallOptions;
    use callplus_session::switchboard::{NodeMessage, owner_node};
    use callplus_session::{CallId, CallType, EndReason, MediaType, RecordOrder, ResponseBody};

    use super::sim::cluster::Cluster;
    use super::sim::{default_app, user};

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;

    fn cluster() -> Cluster {
        Cluster::new(&["node-a", "node-b", "node-c"])
    }

    fn start(c: &mut Cluster, node: usize, idx: usize, callees: &[&str], call_type: CallType) -> CallId {
        c.start_call(node, idx, callees, call_type, CallOptions::default()).0
    }

    fn accept(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.accept(node, idx, call);
    }

    fn hangup(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.hangup(node, idx, call);
    }

    fn rings(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.rings(node, idx, call);
    }

    /// Alice (on node A) calls bob (on node B), whose device rings and answers: their devices
    /// and the call, which node A owns.
    fn answered_across_nodes(c: &mut Cluster) -> (usize, usize, CallId) {
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob = c.add_device(B, "bob", "bob-phone");
        let call = start(c, A, alice, &["bob"], CallType::Single);
        rings(c, B, bob, &call);
        accept(c, B, bob, &call);
        (alice, bob, call)
    }

    /// Only the owner ever holds the call; every other node only routes it.
    fn only_owner_holds(c: &Cluster, owner: usize, call: &CallId) {
        for (n, node) in c.nodes.iter().enumerate() {
            if n != owner {
                assert!(node.switchboard.call(&default_app(), call).is_none(), "node {n} holds {call}");
            }
        }
    }

    fn records_for(c: &Cluster, call: &CallId) -> Vec<String> {
        c.records_for(call)
    }

    #[test]
    fn a_call_from_one_node_to_another_connects_ends_once_and_records_both() {
        let mut c = cluster();
        let (alice, bob, call) = answered_across_nodes(&mut c);
        assert_eq!(owner_node(&call), Some("node-a"));
        let call2 = call.clone();
        c.run_until(2_000, "both connected", move |c| {
            c.nodes[A].connected(alice, &call2) && c.nodes[B].connected(bob, &call2)
        });
        // Bob's accept went to the owner, its answer came back to bob's node.
        assert!(c.sent.iter().any(|(from, to, m)| *from == B
            && *to == A
            && matches!(m, NodeMessage::Request { request_id, .. } if *request_id > 0)));
        only_owner_holds(&c, A, &call);

        // Bob hangs up from his node: forwarded, and the call ends once for both.
        hangup(&mut c, B, bob, &call);
        let call2 = call.clone();
        c.run_until(2_000, "the caller sees the end", move |c| c.nodes[A].ended(alice, &call2).is_some());
        c.settle();
        assert_eq!(c.nodes[A].ended_count(alice, &call), 1);
        assert_eq!(c.nodes[B].ended_count(bob, &call), 1);
        assert_eq!(c.nodes[A].ended(alice, &call), Some(EndReason::RemoteHangup));
        assert_eq!(records_for(&c, &call), ["alice", "bob"], "one record per participant");
        // Bob's record and summary reached him on his node, nothing was stored offline.
        assert_eq!(c.nodes[B].records_received(bob, &call), 1);
        assert_eq!(c.nodes[B].summaries_received(bob, &call), 1);
        assert!(c.db.borrow().offline.values().all(|q| q.is_empty()));
        assert!(!c.nodes[A].switchboard.is_call_live(&default_app(), &call));
        // Records page the same from any node (one shared database).
        let from_b = c.nodes[B].records_page(bob, -1, 10, RecordOrder::Desc);
        assert_eq!(from_b.records.len(), 1);
        assert_eq!(from_b.records[0].call.call_id, call);
    }

    /// A call its owner node has ended and since forgotten (past the retention) is still
    /// answered to a participant on another node: the request goes to the owner, which finds
    /// the participant's record in the shared database.
    #[test]
    fn an_ended_call_past_its_retention_is_answered_from_the_shared_records() {
        let mut c = cluster();
        let (alice, bob, call) = answered_across_nodes(&mut c);
        hangup(&mut c, A, alice, &call);
        c.settle();
        c.run_for(31_000);
        assert!(c.nodes[A].switchboard.call(&default_app(), &call).is_none(), "forgotten by its owner");
        let now = c.device_now(B, bob);
        let id = c.nodes[B].devices[bob].engine.get_call(now, &call).expect("asked");
        match c.wait_request(B, bob, id) {
            Ok(ResponseBody::Call(info)) => {
                assert_eq!(info.call_id, call);
                assert!(info.is_ended(), "{info:?}");
            }
            other => panic!("get_call answered {other:?}"),
        }
    }

    #[test]
    fn a_callee_ringing_on_two_nodes_stops_on_the_other_when_one_answers() {
        let mut c = cluster();
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob_b = c.add_device(B, "bob", "bob-phone");
        let bob_c = c.add_device(C, "bob", "bob-tablet");
        let call = start(&mut c, A, alice, &["bob"], CallType::Single);
        rings(&mut c, B, bob_b, &call);
        rings(&mut c, C, bob_c, &call);
        accept(&mut c, C, bob_c, &call);
        let call2 = call.clone();
        c.run_until(2_000, "the phone stops ringing", move |c| c.nodes[B].ended(bob_b, &call2).is_some());
        assert_eq!(c.nodes[B].ended(bob_b, &call), Some(EndReason::AcceptedOnOtherDevice));
        let call2 = call.clone();
        c.run_until(2_000, "connected", move |c| {
            c.nodes[A].connected(alice, &call2) && c.nodes[C].connected(bob_c, &call2)
        });
        // The phone, no longer ringing, cannot take the call any more.
        let now = c.device_now(B, bob_b);
        assert!(c.nodes[B].devices[bob_b].engine.accept(now, &call).is_err());

        // Busy across nodes: bob holds his leg of alice's call (owned by node A) on node C;
        // dave, on node A, calling bob is told bob is busy.
        let dave = c.add_device(A, "dave", "dave-phone");
        let now = c.device_now(A, dave);
        let rid = c.nodes[A].devices[dave]
            .engine
            .start_call(now, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default())
            .unwrap();
        let daves = match c.wait_request(A, dave, rid) {
            Ok(ResponseBody::Started { call, busy }) => {
                assert_eq!(busy, [user("bob")]);
                call.call_id.clone()
            }
            other => panic!("{other:?}"),
        };
        hangup(&mut c, A, dave, &daves);
        c.settle();

        hangup(&mut c, A, alice, &call);
        let call2 = call.clone();
        c.run_until(2_000, "bob sees the end", move |c| c.nodes[C].ended(bob_c, &call2).is_some());
        c.settle();
        assert_eq!(c.nodes[C].ended_count(bob_c, &call), 1);
        assert_eq!(c.nodes[B].ended_count(bob_b, &call), 1);
        assert_eq!(records_for(&c, &call), ["alice", "bob"]);
        // Bob's record reached both his devices, each on its own node.
        assert_eq!(c.nodes[B].records_received(bob_b, &call), 1);
        assert_eq!(c.nodes[C].records_received(bob_c, &call), 1);
    }

    #[test]
    fn a_group_call_with_participants_on_three_nodes() {
        let mut c = cluster();
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob = c.add_device(B, "bob", "bob-phone");
        let carol = c.add_device(C, "carol", "carol-phone");
        let call = start(&mut c, B, bob, &["alice", "carol"], CallType::Multi);
        assert_eq!(owner_node(&call), Some("node-b"));
        rings(&mut c, A, alice, &call);
        rings(&mut c, C, carol, &call);
        accept(&mut c, A, alice, &call);
        accept(&mut c, C, carol, &call);
        let call2 = call.clone();
        c.run_until(3_000, "all three connected", move |c| {
            c.nodes[A].connected(alice, &call2)
                && c.nodes[B].connected(bob, &call2)
                && c.nodes[C].connected(carol, &call2)
        });
        only_owner_holds(&c, B, &call);
        // Carol leaves; the others carry on; then alice and bob.
        hangup(&mut c, C, carol, &call);
        c.settle();
        assert!(c.nodes[B].switchboard.is_call_live(&default_app(), &call));
        hangup(&mut c, A, alice, &call);
        let call2 = call.clone();
        c.run_until(3_000, "the call ends for bob", move |c| c.nodes[B].ended(bob, &call2).is_some());
        c.settle();
        for (n, idx) in [(A, alice), (B, bob), (C, carol)] {
            assert_eq!(c.nodes[n].ended_count(idx, &call), 1, "node {n}");
            assert_eq!(c.nodes[n].records_received(idx, &call), 1, "node {n}");
        }
        assert_eq!(records_for(&c, &call), ["alice", "bob", "carol"]);
    }

    #[test]
    fn a_user_with_no_device_anywhere_is_pushed_and_gets_the_summary_on_any_node() {
        let mut c = cluster();
        let alice = c.add_device(A, "alice", "alice-phone");
        let now = c.device_now(A, alice);
        let options = CallOptions { ring_timeout_ms: Some(2_000), ..CallOptions::default() };
        let rid = c.nodes[A].devices[alice]
            .engine
            .start_call(now, &["dave"], CallType::Single, MediaType::Audio, options)
            .unwrap();
        let call = match c.wait_request(A, alice, rid) {
            Ok(ResponseBody::Started { call, .. }) => call.call_id.clone(),
            other => panic!("{other:?}"),
        };
        let call2 = call.clone();
        c.run_until(5_000, "the ring times out", move |c| c.nodes[A].ended(alice, &call2).is_some());
        c.settle();
        assert_eq!(c.db.borrow().pushes.len(), 1, "pushed once, after presence found no device");
        let stored = c.db.borrow().offline_for(&default_app(), &user("dave"));
        assert_eq!(stored.len(), 2, "dave's record and summary wait in the shared database: {stored:?}");
        // Dave connects to node C: he gets them there, once.
        let dave = c.add_device(C, "dave", "dave-phone");
        let call2 = call.clone();
        c.run_until(2_000, "dave gets the summary", move |c| {
            c.nodes[C].summaries_received(dave, &call2) == 1
        });
        c.settle();
        assert_eq!(c.nodes[C].records_received(dave, &call), 1);
        assert!(c.db.borrow().offline_for(&default_app(), &user("dave")).is_empty(), "delivered and deleted");
    }

    #[test]
    fn a_device_silent_on_its_node_ends_its_leg_on_the_owner() {
        let mut c = cluster();
        let (alice, bob, call) = answered_across_nodes(&mut c);
        c.settle();
        // A minute of talk, bob's phone pinging its own node only.
        c.run_for(60_000);
        c.nodes[B].crash(bob);
        let crashed_at = c.now;
        let call2 = call.clone();
        c.run_until(60_000, "the call ends for alice", move |c| c.nodes[A].ended(alice, &call2).is_some());
        assert_eq!(c.nodes[A].ended(alice, &call), Some(EndReason::RemoteNetworkError));
        c.settle();
        assert_eq!(records_for(&c, &call), ["alice", "bob"]);
        // The call ended at bob's last sign of life on node B (a ping shortly before the
        // crash), not at his accept a minute earlier nor when his silence was noticed.
        let ends = c.ends_of(&call);
        assert_eq!(ends.len(), 2);
        for end in ends {
            assert!(
                (crashed_at - 30_000..=crashed_at).contains(&end),
                "ended at {end}, crashed at {crashed_at}"
            );
        }
        assert_eq!(c.nodes[A].switchboard.live_calls(), 0);
    }

    #[test]
    fn a_lost_node_ends_its_devices_legs_on_the_owner() {
        let mut c = cluster();
        let (alice, _bob, call) = answered_across_nodes(&mut c);
        c.settle();
        assert_eq!(c.nodes[A].switchboard.remote_sessions(), 1);
        // A minute of talk with nothing to signal: bob's node says nothing about him meanwhile.
        c.run_for(60_000);
        let killed_at = c.now;
        c.kill(B, 15_000);
        let call2 = call.clone();
        c.run_until(1_000, "the call ends for alice", move |c| c.nodes[A].ended(alice, &call2).is_some());
        assert_eq!(c.nodes[A].ended(alice, &call), Some(EndReason::RemoteNetworkError));
        c.settle();
        assert_eq!(c.nodes[A].ended_count(alice, &call), 1);
        assert_eq!(records_for(&c, &call), ["alice", "bob"]);
        // The call ended when bob's node died: not at his last request (the minute of talk
        // counts), not when the loss was noticed (the detection delay does not).
        let ends = c.ends_of(&call);
        assert!(ends.len() == 2 && ends.iter().all(|end| *end == killed_at), "{ends:?} != {killed_at}");
        assert_eq!(c.nodes[A].switchboard.remote_sessions(), 0);
        assert_eq!(c.nodes[A].switchboard.live_calls(), 0);
    }
}

mod busy_across_owners {
    //! A callee in a call another node owns is busy for a caller on any node: the owner marks
    //! its participants' connected legs (`NodeOutput::InCall`), a node starting a call reads the
    //! marks first (`NodeOutput::CheckBusy`), and marks of a lost node count for nothing and are
    //! cleared by the survivor that ends its calls.
    use callplus_session::client::CallOptions;
    use callplus_session::switchboard::{BusyPolicy, SwitchboardConfig};
    use callplus_session::{CallId, CallType, EndReason, UserId};

    use super::sim::cluster::Cluster;
    use super::sim::{default_app, user};

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;
    const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

    fn start(c: &mut Cluster, node: usize, idx: usize, callee: &str) -> (CallId, Vec<UserId>) {
        c.start_call(node, idx, &[callee], CallType::Single, CallOptions::default())
    }

    fn accept(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.rings(node, idx, call);
        c.accept(node, idx, call);
    }

    fn hangup(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.hangup(node, idx, call);
    }

    fn marks_of(c: &Cluster, name: &str) -> usize {
        c.in_call.get(&(default_app(), user(name))).map_or(0, |calls| calls.len())
    }

    #[test]
    fn a_callee_in_a_call_another_node_owns_is_reported_busy_and_still_rung() {
        let mut c = Cluster::new(&NAMES);
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob = c.add_device(A, "bob", "bob-phone");
        let carol = c.add_device(B, "carol", "carol-phone");
        let (call, busy) = start(&mut c, A, alice, "bob");
        assert!(busy.is_empty());
        accept(&mut c, A, bob, &call);
        c.settle();
        assert_eq!(marks_of(&c, "bob"), 1, "the owner marks bob in its call");

        // Carol, on node B, calls bob: his call is node A's, and he is busy all the same.
        let (second, busy) = start(&mut c, B, carol, "bob");
        assert_eq!(busy, [user("bob")]);
        // Call waiting: bob's phone rings for the second call too, as on one node.
        let second2 = second.clone();
        c.run_until(2_000, "bob is offered the second call", move |c| {
            c.nodes[A].incoming(bob).as_ref() == Some(&second2)
        });
        hangup(&mut c, B, carol, &second);
        hangup(&mut c, A, alice, &call);
        c.settle();
        assert_eq!(marks_of(&c, "bob"), 0, "the marks go with the call");
        assert_eq!(marks_of(&c, "alice"), 0);
        assert_eq!(marks_of(&c, "carol"), 0);

        let (third, busy) = start(&mut c, B, carol, "bob");
        assert!(busy.is_empty(), "bob is free again: {busy:?}");
        hangup(&mut c, B, carol, &third);
    }

    /// Redis loses its data: the owner is told (`marks_lost`) and writes its marks again, so a
    /// callee in its call is busy for a caller on another node as before.
    #[test]
    fn marks_lost_with_redis_data_are_written_again() {
        let mut c = Cluster::new(&NAMES);
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob = c.add_device(A, "bob", "bob-phone");
        let carol = c.add_device(B, "carol", "carol-phone");
        let (call, _) = start(&mut c, A, alice, "bob");
        accept(&mut c, A, bob, &call);
        c.settle();
        let before = c.in_call.clone();
        assert_eq!(marks_of(&c, "bob"), 1);

        c.in_call.clear();
        let now = c.now;
        c.nodes[A].switchboard.marks_lost(now);
        c.settle();
        assert_eq!(c.in_call, before, "every mark is back, as it was");
        let (second, busy) = start(&mut c, B, carol, "bob");
        assert_eq!(busy, [user("bob")], "bob is busy across nodes again");
        hangup(&mut c, B, carol, &second);
    }

    #[test]
    fn auto_reject_ends_a_call_to_a_callee_busy_on_another_owner() {
        let config =
            SwitchboardConfig { busy_policy: BusyPolicy::AutoReject, ..SwitchboardConfig::default() };
        let mut c = Cluster::with_config(&NAMES, &config);
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob = c.add_device(C, "bob", "bob-phone");
        let carol = c.add_device(B, "carol", "carol-phone");
        let (call, _) = start(&mut c, A, alice, "bob");
        accept(&mut c, C, bob, &call);
        c.settle();

        let (second, busy) = start(&mut c, B, carol, "bob");
        assert_eq!(busy, [user("bob")]);
        let second2 = second.clone();
        c.run_until(2_000, "carol's call ends", move |c| c.nodes[B].ended(carol, &second2).is_some());
        assert_eq!(c.nodes[B].ended(carol, &second), Some(EndReason::RemoteBusy));
        c.settle();
        assert_ne!(c.nodes[C].incoming(bob).as_ref(), Some(&second), "a busy callee is not rung");
        assert!(c.nodes[C].connected(bob, &call), "bob's call goes on");
    }

    #[test]
    fn a_lost_owners_marks_do_not_keep_anyone_busy() {
        let mut c = Cluster::new(&NAMES);
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob = c.add_device(C, "bob", "bob-phone");
        let carol = c.add_device(B, "carol", "carol-phone");
        let (call, _) = start(&mut c, A, alice, "bob");
        accept(&mut c, C, bob, &call);
        c.settle();
        assert_eq!(marks_of(&c, "bob"), 1);

        c.kill(A, 15_000);
        let call2 = call.clone();
        c.run_until(2_000, "bob's call is ended by a survivor", move |c| {
            c.nodes[C].ended(bob, &call2).is_some()
        });
        c.settle();
        assert_eq!(marks_of(&c, "bob"), 0, "the survivor that ended the call cleared its marks");
        assert_eq!(marks_of(&c, "alice"), 0);
        let (_, busy) = start(&mut c, B, carol, "bob");
        assert!(busy.is_empty(), "{busy:?}");
    }
}

mod late_devices {
    //! A device that connects after the ringing started, on a node that does not own the call,
    //! is offered the call as on one node: the owner marks its callees ringing
    //! (`NodeOutput::InCall`), the device's node finds the marks (`NodeOutput::FindRinging`) and
    //! tells the owner (`NodeMessage::DeviceOnline`), which offers the call there.
    use callplus_session::client::CallOptions;
    use callplus_session::switchboard::{DevicePolicy, SwitchboardConfig};
    use callplus_session::{CallId, CallType, EndReason};

    use super::sim::cluster::Cluster;

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;
    const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

    fn start(c: &mut Cluster, node: usize, idx: usize, callee: &str) -> CallId {
        let options = CallOptions { ring_timeout_ms: Some(30_000), ..CallOptions::default() };
        c.start_call(node, idx, &[callee], CallType::Single, options).0
    }

    #[test]
    fn a_device_connecting_after_the_ringing_started_rings_and_answers() {
        let mut c = Cluster::new(&NAMES);
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob_c = c.add_device(C, "bob", "bob-tablet");
        let call = start(&mut c, A, alice, "bob");
        let call2 = call.clone();
        c.run_until(2_000, "the tablet rings", move |c| c.nodes[C].incoming(bob_c).as_ref() == Some(&call2));

        // Bob's phone connects to node B only now: it rings too, and answers.
        let bob_b = c.add_device(B, "bob", "bob-phone");
        let call2 = call.clone();
        c.run_until(2_000, "the late phone rings", move |c| {
            c.nodes[B].incoming(bob_b).as_ref() == Some(&call2)
        });
        let now = c.device_now(B, bob_b);
        let rid = c.nodes[B].devices[bob_b].engine.accept(now, &call).unwrap();
        c.wait_request(B, bob_b, rid).unwrap();
        let call2 = call.clone();
        c.run_until(2_000, "connected", move |c| {
            c.nodes[A].connected(alice, &call2) && c.nodes[B].connected(bob_b, &call2)
        });
        let call2 = call.clone();
        c.run_until(2_000, "the tablet stops", move |c| c.nodes[C].ended(bob_c, &call2).is_some());
        assert_eq!(c.nodes[C].ended(bob_c, &call), Some(EndReason::AcceptedOnOtherDevice));
    }

    #[test]
    fn a_device_connecting_once_the_call_was_answered_is_not_rung() {
        let mut c = Cluster::new(&NAMES);
        let alice = c.add_device(A, "alice", "alice-phone");
        let bob_c = c.add_device(C, "bob", "bob-tablet");
        let call = start(&mut c, A, alice, "bob");
        let call2 = call.clone();
        c.run_until(2_000, "the tablet rings", move |c| c.nodes[C].incoming(bob_c).as_ref() == Some(&call2));
        let now = c.device_now(C, bob_c);
        let rid = c.nodes[C].devices[bob_c].engine.accept(now, &call).unwrap();
        c.wait_request(C, bob_c, rid).unwrap();
        c.settle();
        let bob_b = c.add_device(B, "bob", "bob-phone");
        c.settle();
        assert_eq!(c.nodes[B].incoming(bob_b), None, "an answered call is not offered");
    }

    /// Under the single-device policy a login on node B kicks the user's older device on node
    /// A (KICKED_OTHER_LOGIN), as on one node; the new device stays.
    #[test]
    fn single_device_policy_kicks_the_older_device_on_another_node() {
        let config =
            SwitchboardConfig { device_policy: DevicePolicy::SingleDevice, ..SwitchboardConfig::default() };
        let mut c = Cluster::with_config(&NAMES, &config);
        let old = c.add_device(A, "bob", "bob-phone");
        let new = c.add_device(B, "bob", "bob-tablet");
        c.run_until(2_000, "the phone on A is kicked", move |c| {
            c.nodes[A].kicked(old) == Some(EndReason::KickedOtherLogin)
        });
        c.settle();
        assert_eq!(c.nodes[B].kicked(new), None, "the new login stays");
    }
}

mod stale_presence {
    use callplus_session::client::CallOptions;
    use callplus_session::switchboard::NodeMessage;
    use callplus_session::{CallType, DeviceId, EndReason, MediaType, ResponseBody};

    use super::sim::cluster::Cluster;
    use super::sim::{default_app, user};

    /// A presence entry that outlived its session (its node restarted, the entry has not expired
    /// yet): the owner offers the call there, the node answers that no such session exists, the
    /// owner forgets it and pushes the callee as if no device had been found.
    #[test]
    fn a_presence_entry_without_a_session_is_dropped_and_the_callee_pushed() {
        let mut c = Cluster::new(&["node-a", "node-b"]);
        let alice = c.add_device(0, "alice", "alice-phone");
        let key = (default_app(), user("dave"), DeviceId::new("dave-phone").unwrap());
        c.presence.insert(key, (1, "snode-b_gone-1".to_owned()));
        let now = c.device_now(0, alice);
        let options = CallOptions { ring_timeout_ms: Some(3_000), ..CallOptions::default() };
        let rid = c.nodes[0].devices[alice]
            .engine
            .start_call(now, &["dave"], CallType::Single, MediaType::Audio, options)
            .unwrap();
        let call = match c.wait_request(0, alice, rid) {
            Ok(ResponseBody::Started { call, .. }) => call.call_id.clone(),
            other => panic!("{other:?}"),
        };
        c.run_until(1_000, "the owner forgets the stale session", |c| {
            c.sent
                .iter()
                .any(|(from, to, m)| *from == 1 && *to == 0 && matches!(m, NodeMessage::SessionGone { .. }))
                && c.nodes[0].switchboard.remote_sessions() == 0
        });
        c.settle();
        assert_eq!(c.db.borrow().pushes.len(), 1, "pushed once no device was left");
        let call2 = call.clone();
        c.run_until(5_000, "the ring times out", move |c| c.nodes[0].ended(alice, &call2).is_some());
        // Pushed but not answered: not reached, not declined.
        assert_eq!(c.nodes[0].ended(alice, &call), Some(EndReason::RemoteNoResponse));
    }
}

mod offline_waiting {
    use callplus_session::switchboard::{NodeMessage, Output};
    use callplus_session::{CallId, CallSummary, EndReason, Event, MediaType};

    use super::sim::cluster::Cluster;
    use super::sim::{default_app, user};

    /// Another node stored a summary for dave just as he connected here: told so, this node
    /// loads his stored events again and he gets it, once, however often it is told.
    #[test]
    fn stored_events_are_loaded_again_when_another_node_says_so() {
        let mut c = Cluster::new(&["node-a", "node-b"]);
        let dave = c.add_device(1, "dave", "dave-phone");
        let call = CallId::new("node-a_x-1").unwrap();
        let summary = CallSummary {
            call_id: call.clone(),
            owner: user("dave"),
            caller: user("alice"),
            peer: user("alice"),
            started_at_ms: None,
            media_type: MediaType::Audio,
            direction: callplus_session::Direction::Incoming,
            end_reason: EndReason::Offline,
            duration_ms: 0,
            created_at_ms: c.now,
            ended_at_ms: c.now,
        };
        let stored =
            Output::StoreOffline { app: default_app(), user: user("dave"), event: Event::Summary(summary) };
        c.db.borrow_mut().apply(&stored);
        for _ in 0..2 {
            c.inject(0, 1, NodeMessage::OfflineWaiting { app: default_app(), user: user("dave") });
            c.settle();
        }
        assert_eq!(c.nodes[1].summaries_received(dave, &call), 1);
        assert!(
            c.db.borrow().offline_for(&default_app(), &user("dave")).is_empty(),
            "delivered, then deleted"
        );
    }
}

mod owner_takeover {
    use callplus_session::client::CallOptions;
    use callplus_session::switchboard::owner_node;
    use callplus_session::{CallId, CallType, EndReason};

    use super::sim::cluster::Cluster;
    use super::sim::{Rng, default_app, user};

    /// How long after a SIGKILL the survivors are told the node is lost (its liveness key's
    /// TTL plus the grace the driver gives it).
    const LOST_AFTER_MS: i64 = 8_000;

    fn start(c: &mut Cluster, node: usize, idx: usize, callees: &[&str], call_type: CallType) -> CallId {
        let (call, busy) = c.start_call(node, idx, callees, call_type, CallOptions::default());
        assert!(busy.is_empty(), "nobody is busy: {busy:?}");
        call
    }

    fn accept(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.accept(node, idx, call);
    }

    fn rings(c: &mut Cluster, node: usize, idx: usize, call: &CallId) {
        c.rings(node, idx, call);
    }

    fn records_for(c: &Cluster, call: &CallId) -> Vec<String> {
        c.records_for(call)
    }

    /// The owner of a group call (participants on the two other nodes) and of a 1:1 call
    /// (callee on another node) is lost at a random moment: exactly one survivor ends both
    /// calls, each participant's device on a surviving node sees each call end once with
    /// NETWORK_ERROR, each participant gets one record, nothing stays live or saved, and the
    /// participants can call each other afterwards without being busy.
    fn scenario(seed: u64) {
        let mut rng = Rng::new(seed);
        let mut c = Cluster::new(&["node-a", "node-b", "node-c"]);
        let owner = rng.below(3) as usize;
        let p = (owner + 1) % 3;
        let q = (owner + 2) % 3;
        let host = c.add_device(owner, "host", "host-phone");
        let dan = c.add_device(owner, "dan", "dan-phone");
        let bob = c.add_device(p, "bob", "bob-phone");
        let carol = c.add_device(q, "carol", "carol-phone");
        let erin = c.add_device(if rng.chance(0.5) { p } else { q }, "erin", "erin-phone");
        let erin_node = if c.nodes[p].devices.len() > bob + 1 { p } else { q };

        // The group call: bob answers; carol answers or is still ringing; the host stays or
        // leaves (then the call runs between the other nodes' devices only).
        let group = start(&mut c, owner, host, &["bob", "carol"], CallType::Multi);
        assert_eq!(owner_node(&group), Some(c.names[owner].as_str()));
        rings(&mut c, p, bob, &group);
        rings(&mut c, q, carol, &group);
        accept(&mut c, p, bob, &group);
        let carol_answers = rng.chance(0.7);
        if carol_answers {
            accept(&mut c, q, carol, &group);
            if rng.chance(0.5) {
                let now = c.device_now(owner, host);
                let id = c.nodes[owner].devices[host].engine.hangup(now, Some(&group), None).unwrap();
                c.wait_request(owner, host, id).unwrap();
            }
        }
        // The 1:1 call: answered or ringing.
        let single = start(&mut c, owner, dan, &["erin"], CallType::Single);
        rings(&mut c, erin_node, erin, &single);
        if rng.chance(0.5) {
            accept(&mut c, erin_node, erin, &single);
        }
        c.run_for(rng.below(3_000) as i64);
        assert!(c.nodes[owner].switchboard.is_call_live(&default_app(), &group));

        // SIGKILL the owner.
        let killed_at = c.now;
        c.kill(owner, LOST_AFTER_MS);
        let (group2, single2) = (group.clone(), single.clone());
        c.run_until(1_000, "every survivor's device sees the calls end", move |c| {
            c.nodes[p].ended(bob, &group2).is_some()
                && c.nodes[q].ended(carol, &group2).is_some()
                && c.nodes[erin_node].ended(erin, &single2).is_some()
        });
        c.settle();

        // Both survivors asked; exactly one won and ended the calls.
        let lost = c.names[owner].clone();
        let asked: Vec<usize> =
            c.takeover_attempts.iter().filter(|(_, n)| *n == lost).map(|(by, _)| *by).collect();
        assert_eq!(asked.len(), 2, "{asked:?}");
        let winner = c.takeovers[&lost];
        assert!(winner == p || winner == q);
        for (node, idx, call) in [(p, bob, &group), (q, carol, &group), (erin_node, erin, &single)] {
            assert_eq!(c.nodes[node].ended_count(idx, call), 1, "seed {seed}: ends once");
            assert_eq!(c.nodes[node].ended(idx, call), Some(EndReason::NetworkError), "seed {seed}");
            assert!(c.nodes[node].devices[idx].engine.calls().next().is_none(), "seed {seed}: in no call");
        }
        assert_eq!(records_for(&c, &group), ["bob", "carol", "host"], "seed {seed}");
        assert_eq!(records_for(&c, &single), ["dan", "erin"], "seed {seed}");
        // The calls ended when the owner died, not when its loss was noticed 8 s later: no
        // record counts the detection delay as talk time.
        for call in [&group, &single] {
            let ends = c.ends_of(call);
            assert!(
                !ends.is_empty() && ends.iter().all(|end| *end == killed_at),
                "seed {seed}: {ends:?} != {killed_at}"
            );
        }
        assert_eq!(c.nodes[erin_node].records_received(erin, &single), 1, "seed {seed}");
        assert_eq!(c.nodes[erin_node].summaries_received(erin, &single), 1, "seed {seed}");
        // Dan had no device left anywhere: his summary waits for his next connect.
        let dans = c.db.borrow().offline_for(&default_app(), &user("dan"));
        assert!(
            dans.iter()
                .any(|e| matches!(&e.event, callplus_session::Event::Summary(s) if s.call_id == single)),
            "seed {seed}: {dans:?}"
        );
        // No zombie: nothing live or saved anywhere.
        assert!(c.db.borrow().calls.is_empty(), "seed {seed}: the saved calls are forgotten");
        for n in [p, q] {
            assert_eq!(c.nodes[n].switchboard.live_calls(), 0, "seed {seed}");
        }
        let _ = (host, dan);

        // Nobody is left busy: bob calls carol, she answers.
        let again = start(&mut c, p, bob, &["carol"], CallType::Single);
        rings(&mut c, q, carol, &again);
        accept(&mut c, q, carol, &again);
        let again2 = again.clone();
        c.run_until(2_000, "connected", move |c| {
            c.nodes[p].connected(bob, &again2) && c.nodes[q].connected(carol, &again2)
        });
    }

    /// The owner dies before its storage committed the snapshots of two calls (a 1:1 call
    /// answered on another node, a group call still ringing on a third): no survivor can know
    /// them from storage, yet each participant's own node ends them for its device
    /// (NETWORK_ERROR, once), so no device keeps a call nobody owns, and nobody stays busy.
    #[test]
    fn calls_whose_snapshots_died_with_their_owner_still_end_on_the_participants_nodes() {
        let mut c = Cluster::new(&["node-a", "node-b", "node-c"]);
        let dan = c.add_device(0, "dan", "dan-phone");
        let host = c.add_device(0, "host", "host-phone");
        let erin = c.add_device(1, "erin", "erin-phone");
        let carol = c.add_device(2, "carol", "carol-phone");
        let single = start(&mut c, 0, dan, &["erin"], CallType::Single);
        rings(&mut c, 1, erin, &single);
        accept(&mut c, 1, erin, &single);
        let group = start(&mut c, 0, host, &["carol"], CallType::Multi);
        rings(&mut c, 2, carol, &group);
        c.db.borrow_mut().calls.clear();

        let killed_at = c.now;
        c.kill(0, LOST_AFTER_MS);
        let (single2, group2) = (single.clone(), group.clone());
        c.run_until(1_000, "both calls end on the participants' nodes", move |c| {
            c.nodes[1].ended(erin, &single2).is_some() && c.nodes[2].ended(carol, &group2).is_some()
        });
        c.settle();
        for (node, idx, call) in [(1, erin, &single), (2, carol, &group)] {
            assert_eq!(c.nodes[node].ended_count(idx, call), 1, "ends once");
            assert_eq!(c.nodes[node].ended(idx, call), Some(EndReason::NetworkError));
            assert!(c.nodes[node].devices[idx].engine.calls().next().is_none(), "in no call");
        }
        assert!(killed_at < c.now);
        for n in [1, 2] {
            assert_eq!(c.nodes[n].switchboard.live_calls(), 0);
        }

        // Nobody is busy: erin calls carol, she answers.
        let again = start(&mut c, 1, erin, &["carol"], CallType::Single);
        rings(&mut c, 2, carol, &again);
        accept(&mut c, 2, carol, &again);
        let again2 = again.clone();
        c.run_until(2_000, "connected", move |c| {
            c.nodes[1].connected(erin, &again2) && c.nodes[2].connected(carol, &again2)
        });
        let _ = (dan, host);
    }

    /// How long a callee is rung before the call ends unanswered (the default).
    const RING_TIMEOUT_MS: i64 = 60_000;

    /// The owner of a group call (participants on the two other nodes, the host still in it or
    /// gone) and of a 1:1 call still ringing is paused past its loss and past the ring timeout,
    /// not killed: a survivor takes both calls over (their leases, with a larger token) and ends
    /// them. When the owner wakes, its overdue ring timer ends the 1:1 call its own way, and
    /// those writes carry its creator's token, which storage refuses; its lease renewal is then
    /// refused and it lets the group call go. Each participant has the survivor's records only
    /// (NETWORK_ERROR, ended when the owner stopped), each surviving device saw each call end
    /// once, the owner's own devices are told once too, and nothing is live or saved anywhere.
    fn paused_scenario(seed: u64) {
        let mut rng = Rng::new(seed);
        let mut c = Cluster::new(&["node-a", "node-b", "node-c"]);
        let owner = rng.below(3) as usize;
        let (p, q) = ((owner + 1) % 3, (owner + 2) % 3);
        let host = c.add_device(owner, "host", "host-phone");
        let dan = c.add_device(owner, "dan", "dan-phone");
        let bob = c.add_device(p, "bob", "bob-phone");
        let carol = c.add_device(q, "carol", "carol-phone");
        let erin = c.add_device(q, "erin", "erin-phone");
        let group = start(&mut c, owner, host, &["bob", "carol"], CallType::Multi);
        rings(&mut c, p, bob, &group);
        rings(&mut c, q, carol, &group);
        accept(&mut c, p, bob, &group);
        accept(&mut c, q, carol, &group);
        let host_stays = rng.chance(0.5);
        if !host_stays {
            let now = c.device_now(owner, host);
            let id = c.nodes[owner].devices[host].engine.hangup(now, Some(&group), None).unwrap();
            c.wait_request(owner, host, id).unwrap();
        }
        let single = start(&mut c, owner, dan, &["erin"], CallType::Single);
        rings(&mut c, q, erin, &single);
        c.run_for(rng.below(3_000) as i64);

        let paused_at = c.now;
        c.kill(owner, LOST_AFTER_MS);
        let (group2, single2) = (group.clone(), single.clone());
        c.run_until(1_000, "the survivors' devices see the calls end", move |c| {
            c.nodes[p].ended(bob, &group2).is_some()
                && c.nodes[q].ended(carol, &group2).is_some()
                && c.nodes[q].ended(erin, &single2).is_some()
        });
        c.settle();
        assert!(c.db.borrow().refused.is_empty(), "seed {seed}");
        // Still asleep when the 1:1 call's ring timer falls due.
        c.run_for(RING_TIMEOUT_MS);
        c.wake(owner);
        c.run_until(2_000, "the woken owner lets its calls go", |c| {
            c.nodes[owner].switchboard.live_calls() == 0
        });
        c.settle();

        // Its own end of the 1:1 call was refused by the survivor's larger token.
        let refused = c.db.borrow().refused.clone();
        assert!(refused.iter().any(|(_, id)| *id == single), "seed {seed}: {refused:?}");
        for (node, idx, call) in [(p, bob, &group), (q, carol, &group), (q, erin, &single)] {
            assert_eq!(c.nodes[node].ended_count(idx, call), 1, "seed {seed}: ends once");
            assert_eq!(c.nodes[node].ended(idx, call), Some(EndReason::NetworkError), "seed {seed}");
        }
        assert_eq!(c.nodes[owner].ended_count(dan, &single), 1, "seed {seed}");
        if host_stays {
            assert_eq!(c.nodes[owner].ended_count(host, &group), 1, "seed {seed}");
        }
        assert_eq!(records_for(&c, &group), ["bob", "carol", "host"], "seed {seed}");
        assert_eq!(records_for(&c, &single), ["dan", "erin"], "seed {seed}");
        let db = c.db.borrow();
        for (_, record) in db.written.iter() {
            // The host who left before the pause keeps his own reason.
            if host_stays || record.owner.as_str() != "host" {
                assert_eq!(record.end_reason, EndReason::NetworkError, "seed {seed}: {record:?}");
            }
            assert_eq!(record.call.ended_at_ms, Some(paused_at), "seed {seed}");
        }
        assert!(db.calls.is_empty(), "seed {seed}: nothing saved");
        drop(db);
        for n in 0..3 {
            assert_eq!(c.nodes[n].switchboard.live_calls(), 0, "seed {seed}: node {n}");
        }
    }

    #[test]
    fn a_paused_owner_wakes_and_neither_overwrites_nor_keeps_what_a_survivor_ended() {
        for seed in 1..=12 {
            paused_scenario(seed);
        }
    }

    #[test]
    fn a_lost_owner_has_its_calls_ended_once_for_every_participant_by_one_survivor() {
        for seed in 1..=24 {
            scenario(seed);
        }
    }
}
