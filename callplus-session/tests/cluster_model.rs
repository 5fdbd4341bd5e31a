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

use callplus_session::switchboard::SwitchboardConfig;
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
    let orphans: Vec<(AppKey, CallInfo)> =
        nodes[lost].sim.storage.calls.iter().map(|((app, _), info)| (app.clone(), info.clone())).collect();
    for (app, info) in orphans {
        for &idx in order {
            let now = nodes[idx].sim.now;
            let name = nodes[idx].name.clone();
            let Some(token) = redis.acquire(now, info.call_id.as_str(), &name) else { continue };
            // Read the snapshot again under the lease: a node that read the table before another
            // ended the call (and released its lease) must not end it a second time.
            let key = (app.clone(), info.call_id.clone());
            let Some(info) = nodes[lost].sim.storage.calls.get(&key).cloned() else {
                assert!(redis.release(now, key.1.as_str(), &name, token));
                continue;
            };
            let node = &mut nodes[idx];
            node.sim.switchboard.end_recovered_calls(now, None, vec![(app.clone(), info.clone())]);
            node.sim.settle();
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
