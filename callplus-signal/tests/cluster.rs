//! Three real `callplus serve` nodes sharing one PostgreSQL and one Redis, all started by the
//! test on 127.0.0.1 in temporary directories: calls whose participants sit on different nodes,
//! a callee ringing on two nodes, a group call across all three, records read from any node, an
//! offline user's summary handed to whichever node they connect to, a callee busy in a call
//! another node owns, a device connecting late to another node, and the single-device policy
//! across nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use callplus_session::client::CallOptions;
use callplus_session::{CallId, CallType, EndReason, MediaType, RecordOrder};
use callplus_signal::client::{Client, Event, EventStream};
use support::cluster::Node;
use support::redis::OwnedRedis;
use tokio::time::{Instant, timeout_at};

/// Upper bound for any wait on a condition.
const WAIT: Duration = Duration::from_secs(15);

async fn wait_for(events: &mut EventStream, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout_at(deadline, events.next()).await {
            Ok(Some(event)) if pred(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn rings(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCall { session, .. } if session.call_id() == call)
}

fn connected(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallConnected { session } if session.call_id() == call)
}

fn ended(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallEnded { session, .. } if session.call_id() == call)
}

fn record(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCallRecord(r) if &r.call.call_id == call)
}

/// The wall clock in ms, as the nodes stamp calls.
fn wall_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn reason(event: &Event) -> Option<EndReason> {
    match event {
        Event::CallEnded { reason, .. } => Some(*reason),
        _ => None,
    }
}

async fn record_ids(client: &Client) -> Vec<CallId> {
    let page = client.get_call_records(-1, 20, RecordOrder::Desc).await.expect("records");
    page.records.into_iter().map(|r| r.call.call_id.clone()).collect()
}

/// The user's record ids once they are `expected`. The call's owner writes the records through
/// its storage writer; its record event can reach a device on another node before that write
/// commits, so a page read there right away may not show it yet (docs/architecture.md).
async fn records_become(client: &Client, expected: &[CallId]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = record_ids(client).await;
        if ids == expected {
            return;
        }
        assert!(Instant::now() < deadline, "records are {ids:?}, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_span_three_nodes_on_one_postgres_and_one_redis() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    // The first node makes the app in the empty database; the others find it.
    let a = Node::start(&postgres, &redis, "node-a").await;
    let b = Node::start(&postgres, &redis, "node-b").await;
    let c = Node::start(&postgres, &redis, "node-c").await;
    assert_eq!(a.value("app key:"), c.value("app key:"), "one app for the deployment");
    let secret = a.value("app secret:");

    // --- alice on A calls carol on B: the full 1:1 flow, with records for both. -------------
    let (alice, mut alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let (carol, mut carol_ev) = b.connect(&secret, "carol", "carol-phone").await;
    let call = alice.start_call(&["carol"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let call = call.expect("start_call").call_id().clone();
    assert!(call.as_str().starts_with("node-a_"), "{call:?}");
    wait_for(&mut carol_ev, "carol rings on node B", rings(&call)).await;
    carol.accept(&call).await.expect("carol's accept, forwarded to node A");
    wait_for(&mut alice_ev, "alice connected", connected(&call)).await;
    wait_for(&mut carol_ev, "carol connected", connected(&call)).await;
    carol.hangup(Some(&call)).await.expect("carol's hangup, forwarded to node A");
    let end = wait_for(&mut alice_ev, "alice sees the end", ended(&call)).await;
    assert_eq!(reason(&end), Some(EndReason::RemoteHangup));
    wait_for(&mut alice_ev, "alice's record", record(&call)).await;
    wait_for(&mut carol_ev, "carol's record, routed to node B", record(&call)).await;
    records_become(&alice, std::slice::from_ref(&call)).await;
    records_become(&carol, std::slice::from_ref(&call)).await;

    // --- bob rings on B and C; the tablet on C answers, the phone on B stops. ---------------
    let (bob_phone, mut phone_ev) = b.connect(&secret, "bob", "bob-phone").await;
    let (bob_tablet, mut tablet_ev) = c.connect(&secret, "bob", "bob-tablet").await;
    let call2 = alice.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let call2 = call2.expect("start_call").call_id().clone();
    wait_for(&mut phone_ev, "bob's phone rings on B", rings(&call2)).await;
    wait_for(&mut tablet_ev, "bob's tablet rings on C", rings(&call2)).await;
    bob_tablet.accept(&call2).await.expect("accept on C");
    let stop = wait_for(&mut phone_ev, "the phone stops", ended(&call2)).await;
    assert_eq!(reason(&stop), Some(EndReason::AcceptedOnOtherDevice));
    wait_for(&mut alice_ev, "alice connected to bob", connected(&call2)).await;
    wait_for(&mut tablet_ev, "the tablet connected", connected(&call2)).await;
    assert!(bob_phone.accept(&call2).await.is_err(), "the phone cannot take the call any more");
    alice.hangup(Some(&call2)).await.expect("hangup");
    let end = wait_for(&mut tablet_ev, "the tablet sees the end", ended(&call2)).await;
    assert_eq!(reason(&end), Some(EndReason::RemoteHangup));
    wait_for(&mut phone_ev, "bob's record on B", record(&call2)).await;
    wait_for(&mut tablet_ev, "bob's record on C", record(&call2)).await;
    // Records page the same from any node: one database.
    records_become(&bob_phone, std::slice::from_ref(&call2)).await;
    records_become(&bob_tablet, std::slice::from_ref(&call2)).await;
    records_become(&alice, &[call2.clone(), call.clone()]).await;

    // --- a group call with one participant on each node, made on C. -------------------------
    let group = bob_tablet
        .start_call(&["alice", "carol"], CallType::Multi, MediaType::Audio, CallOptions::default())
        .await;
    let group = group.expect("start a MULTI call").call_id().clone();
    assert!(group.as_str().starts_with("node-c_"), "{group:?}");
    wait_for(&mut alice_ev, "alice rings on A", rings(&group)).await;
    wait_for(&mut carol_ev, "carol rings on B", rings(&group)).await;
    alice.accept(&group).await.expect("alice joins from A");
    carol.accept(&group).await.expect("carol joins from B");
    wait_for(&mut alice_ev, "alice in the group", connected(&group)).await;
    wait_for(&mut carol_ev, "carol in the group", connected(&group)).await;
    wait_for(&mut tablet_ev, "bob in the group", connected(&group)).await;
    carol.hangup(Some(&group)).await.expect("carol leaves");
    alice.hangup(Some(&group)).await.expect("alice leaves");
    wait_for(&mut tablet_ev, "the group ends for bob", ended(&group)).await;
    for (who, events) in [("alice", &mut alice_ev), ("carol", &mut carol_ev), ("bob", &mut tablet_ev)] {
        wait_for(events, &format!("{who}'s group record"), record(&group)).await;
    }
    records_become(&carol, &[group.clone(), call.clone()]).await;

    // --- dave has no device anywhere: his summary waits for him on whichever node. ---------
    let options = CallOptions { ring_timeout_ms: Some(1_500), ..CallOptions::default() };
    let missed = alice.start_call(&["dave"], CallType::Single, MediaType::Audio, options).await;
    let missed = missed.expect("start_call").call_id().clone();
    let end = wait_for(&mut alice_ev, "the ring times out", ended(&missed)).await;
    assert_eq!(reason(&end), Some(EndReason::RemoteOffline));
    let (dave, mut dave_ev) = c.connect(&secret, "dave", "dave-phone").await;
    let summary = wait_for(
        &mut dave_ev,
        "dave's summary on node C",
        |e| matches!(e, Event::SummaryMessage(s) if s.call_id == missed),
    )
    .await;
    assert!(matches!(summary, Event::SummaryMessage(_)));
    records_become(&dave, &[missed]).await;

    for client in [alice, carol, bob_phone, bob_tablet, dave] {
        client.disconnect().await;
    }
}

/// The node holding a callee's connection is killed mid-call (SIGKILL): the call's owner notices
/// that node's liveness key expire and ends the call for the caller with NETWORK_ERROR, once,
/// with a record, within the liveness key's TTL (5 s), the 3 s it must stay missing, and one
/// check interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_ends_its_devices_legs_on_the_calls_owner() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let a = Node::start(&postgres, &redis, "node-a").await;
    let secret = a.value("app secret:");
    let mut b = Node::start(&postgres, &redis, "node-b").await;
    let (alice, mut alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let (bob, mut bob_ev) = b.connect(&secret, "bob", "bob-phone").await;
    let call = alice.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let call = call.expect("start_call").call_id().clone();
    wait_for(&mut bob_ev, "bob rings on B", rings(&call)).await;
    bob.accept(&call).await.expect("accept");
    wait_for(&mut alice_ev, "alice connected", connected(&call)).await;

    // A node starting now shares the live-calls table: it ends only calls it owned itself.
    let c = Node::start(&postgres, &redis, "node-c").await;
    let (carol, _carol_ev) = c.connect(&secret, "carol", "carol-phone").await;
    // A records read on C runs after every write C queued (its start's included).
    assert!(record_ids(&carol).await.is_empty());
    assert!(record_ids(&alice).await.is_empty(), "node C did not end node A's call");
    let live = bob.get_call(&call).await.expect("the call, asked through node B");
    assert!(live.ended_at_ms.is_none(), "{live:?}");

    b.child.start_kill().expect("SIGKILL node B");
    let killed = Instant::now();
    let end = wait_for(&mut alice_ev, "the call ends for alice", ended(&call)).await;
    let took = killed.elapsed();
    assert_eq!(reason(&end), Some(EndReason::RemoteNetworkError));
    assert!(took < Duration::from_secs(12), "ended {took:?} after the kill");
    wait_for(&mut alice_ev, "alice's record", record(&call)).await;
    records_become(&alice, std::slice::from_ref(&call)).await;
    alice.disconnect().await;
    drop(bob);
}

/// Three nodes on one PostgreSQL and one Redis, a device on each (host on A, bob on B, carol
/// on C), and a MULTI call host made that bob and carol joined: owned by A, connected for all.
struct GroupOnThreeNodes {
    a: Node,
    b: Node,
    c: Node,
    secret: String,
    host: Client,
    bob: Client,
    bob_ev: EventStream,
    carol: Client,
    carol_ev: EventStream,
    group: CallId,
}

impl GroupOnThreeNodes {
    async fn start(postgres: &str, redis: &OwnedRedis) -> GroupOnThreeNodes {
        let a = Node::start(postgres, redis, "node-a").await;
        let secret = a.value("app secret:");
        let b = Node::start(postgres, redis, "node-b").await;
        let c = Node::start(postgres, redis, "node-c").await;
        let (host, mut host_ev) = a.connect(&secret, "host", "host-phone").await;
        let (bob, mut bob_ev) = b.connect(&secret, "bob", "bob-phone").await;
        let (carol, mut carol_ev) = c.connect(&secret, "carol", "carol-phone").await;
        let group = host
            .start_call(&["bob", "carol"], CallType::Multi, MediaType::Audio, CallOptions::default())
            .await;
        let group = group.expect("start a MULTI call").call_id().clone();
        assert!(group.as_str().starts_with("node-a_"), "{group:?}");
        wait_for(&mut bob_ev, "bob rings on B", rings(&group)).await;
        wait_for(&mut carol_ev, "carol rings on C", rings(&group)).await;
        bob.accept(&group).await.expect("bob joins from B");
        carol.accept(&group).await.expect("carol joins from C");
        wait_for(&mut bob_ev, "bob in the group", connected(&group)).await;
        wait_for(&mut carol_ev, "carol in the group", connected(&group)).await;
        wait_for(&mut host_ev, "host in the group", connected(&group)).await;
        GroupOnThreeNodes { a, b, c, secret, host, bob, bob_ev, carol, carol_ev, group }
    }
}

/// The node that owns a live call is killed (SIGKILL) while the call's participants sit on the
/// two other nodes: both notice the node's liveness key expire, exactly one of them wins the
/// lost node's takeover lock and ends the call from its saved snapshot, and both participants
/// get CallEnded with NETWORK_ERROR, within the liveness key's TTL (5 s), the 3 s it must stay
/// missing and one check interval. Each participant has one record (the creator's, whose device
/// died with the node, included), nothing is left saved, and the two can call each other
/// afterwards: nobody is left busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_node_has_its_call_ended_for_everyone() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    // Every node lives to the end of the test (a dropped `Node` is stopped).
    let GroupOnThreeNodes { mut a, b: _b, c, secret, host, bob, mut bob_ev, carol, mut carol_ev, group } =
        GroupOnThreeNodes::start(&postgres, &redis).await;

    // host leaves: the call goes on between B's and C's devices, still owned by A.
    host.hangup(Some(&group)).await.expect("host leaves");
    let live = bob.get_call(&group).await.expect("the call, asked through node B");
    assert!(live.ended_at_ms.is_none(), "{live:?}");
    // A records read on A runs after every write A queued: the call's snapshot is committed
    // (a call whose snapshot is not yet written when its owner dies gets no records).
    record_ids(&host).await;

    a.child.start_kill().expect("SIGKILL node A");
    let killed = Instant::now();
    let killed_ms = wall_ms();
    let bob_end = wait_for(&mut bob_ev, "the call ends for bob", ended(&group)).await;
    let carol_end = wait_for(&mut carol_ev, "the call ends for carol", ended(&group)).await;
    let took = killed.elapsed();
    assert_eq!(reason(&bob_end), Some(EndReason::NetworkError));
    assert_eq!(reason(&carol_end), Some(EndReason::NetworkError));
    println!("owner killed: the call ended for both participants {} ms later", took.as_millis());
    assert!(took < Duration::from_secs(12), "ended {took:?} after the kill");
    let bob_record = wait_for(&mut bob_ev, "bob's record", record(&group)).await;
    wait_for(&mut carol_ev, "carol's record", record(&group)).await;
    // The record ends when A died (estimated from its liveness key, within a renewal interval),
    // not when the loss was noticed some 8 s later: the detection delay is not talk time.
    let Event::ReceivedCallRecord(bob_record) = bob_record else { unreachable!("matched a record") };
    let ended_at = bob_record.call.ended_at_ms.expect("an ended call's record");
    assert!(ended_at <= killed_ms + 2_500, "ended at {ended_at}, A killed at {killed_ms}");
    records_become(&bob, std::slice::from_ref(&group)).await;
    records_become(&carol, std::slice::from_ref(&group)).await;
    // The call is gone: asked again, it has ended.
    if let Ok(info) = bob.get_call(&group).await {
        assert!(info.ended_at_ms.is_some(), "{info:?}");
    }

    // Nobody is busy: bob calls carol, she answers.
    let again = bob.start_call(&["carol"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let again = again.expect("bob is in no call").call_id().clone();
    assert!(again.as_str().starts_with("node-b_"), "{again:?}");
    wait_for(&mut carol_ev, "carol rings", rings(&again)).await;
    carol.accept(&again).await.expect("carol is in no call");
    wait_for(&mut bob_ev, "bob connected", connected(&again)).await;
    wait_for(&mut carol_ev, "carol connected", connected(&again)).await;
    bob.hangup(Some(&again)).await.expect("hangup");
    wait_for(&mut carol_ev, "carol sees the end", ended(&again)).await;

    // The creator, whose device died with node A, has one record of the call too.
    let (host2, _host2_ev) = c.connect(&secret, "host", "host-tablet").await;
    records_become(&host2, std::slice::from_ref(&group)).await;
    for client in [bob, carol, host2] {
        client.disconnect().await;
    }
    drop(host);
}

/// The owner of a live call is killed and started again (same node id) before the others count
/// it lost: it ends the calls of its last run itself, holding its own takeover lock so that no
/// survivor ends them too, and the end reaches the participants on the other nodes (CallEnded
/// with NETWORK_ERROR, one record each); the lock is given back afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_owner_ends_its_calls_for_the_participants_on_other_nodes() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    // Every node lives to the end of the test (a dropped `Node` is stopped).
    let GroupOnThreeNodes {
        mut a,
        b: _b,
        c: _c,
        secret: _,
        host,
        bob,
        mut bob_ev,
        carol,
        mut carol_ev,
        group,
    } = GroupOnThreeNodes::start(&postgres, &redis).await;
    // A records read on A runs after every write A queued: the call's snapshot is committed.
    assert!(record_ids(&host).await.is_empty());

    a.child.start_kill().expect("SIGKILL node A");
    let _ = a.child.wait().await;
    let restarted = Node::start(&postgres, &redis, "node-a").await;
    let bob_end = wait_for(&mut bob_ev, "the call ends for bob", ended(&group)).await;
    let carol_end = wait_for(&mut carol_ev, "the call ends for carol", ended(&group)).await;
    assert_eq!(reason(&bob_end), Some(EndReason::NetworkError));
    assert_eq!(reason(&carol_end), Some(EndReason::NetworkError));
    wait_for(&mut bob_ev, "bob's record", record(&group)).await;
    wait_for(&mut carol_ev, "carol's record", record(&group)).await;
    records_become(&bob, std::slice::from_ref(&group)).await;
    records_become(&carol, std::slice::from_ref(&group)).await;

    // The restarted node's own takeover lock is free again.
    let config = callplus_signal::cluster::ClusterConfig::new(&redis.url(), "node-x").unwrap();
    let locks = callplus_signal::cluster::Takeovers::new(
        callplus_signal::cluster::connect(&config.client).await.unwrap(),
        config.node_id,
    );
    let deadline = Instant::now() + WAIT;
    while locks.holder("node-a").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "node A's takeover lock was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Nobody is busy.
    let again = carol.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let again = again.expect("carol is in no call").call_id().clone();
    wait_for(&mut bob_ev, "bob rings", rings(&again)).await;
    bob.accept(&again).await.expect("bob is in no call");
    wait_for(&mut carol_ev, "carol connected", connected(&again)).await;
    for client in [bob, carol] {
        client.disconnect().await;
    }
    drop((host, restarted));
}

/// Sends `signal` (`-STOP`, `-CONT`) to the node's process.
async fn signal(node: &Node, signal: &str) {
    let pid = node.child.id().expect("the node runs").to_string();
    let sent = tokio::process::Command::new("kill").args([signal, &pid]).status().await.unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// The owner of a live call is paused (SIGSTOP) past its loss rather than killed: a survivor
/// takes the call over (its lease, with a fencing token past the owner's) and ends it for
/// everyone, as for a dead owner. When the owner wakes (SIGCONT), its next lease renewal is
/// refused and it lets the call go at once: asked through it, the call has ended; it wrote no
/// record and brought no snapshot back, so the survivor's records stand; its in-call marks,
/// written again when it found its liveness key gone, are cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_wakes_to_find_its_call_taken_over_and_lets_it_go() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let GroupOnThreeNodes { a, b: _b, c: _c, secret, host, bob, mut bob_ev, carol, mut carol_ev, group } =
        GroupOnThreeNodes::start(&postgres, &redis).await;
    let app = a.value("app key:");
    host.hangup(Some(&group)).await.expect("host leaves");
    // A records read on A runs after every write A queued: the call's snapshot is committed.
    record_ids(&host).await;
    // The owner writes its lease at its first renewal (every 2 s).
    let config = callplus_signal::cluster::ClusterConfig::new(&redis.url(), "node-x").unwrap();
    let leases = callplus_signal::cluster::CallLeases::new(
        callplus_signal::cluster::connect(&config.client).await.unwrap(),
        config.node_id,
        callplus_signal::cluster::LEASE_TTL,
    );
    let deadline = Instant::now() + WAIT;
    while leases.owner(&app, group.as_str()).await.unwrap() != Some(("node-a".into(), 1)) {
        assert!(Instant::now() < deadline, "node A never wrote its lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    signal(&a, "-STOP").await;
    let paused_ms = wall_ms();
    let bob_end = wait_for(&mut bob_ev, "the call ends for bob", ended(&group)).await;
    let carol_end = wait_for(&mut carol_ev, "the call ends for carol", ended(&group)).await;
    assert_eq!(reason(&bob_end), Some(EndReason::NetworkError));
    assert_eq!(reason(&carol_end), Some(EndReason::NetworkError));
    wait_for(&mut bob_ev, "bob's record", record(&group)).await;
    records_become(&bob, std::slice::from_ref(&group)).await;

    signal(&a, "-CONT").await;
    // Node A lets the call go: asked through it, the call has ended.
    let (host2, _host2_ev) = a.connect(&secret, "host", "host-tablet").await;
    let deadline = Instant::now() + WAIT;
    loop {
        match host2.get_call(&group).await {
            Ok(info) if info.ended_at_ms.is_some() => break,
            Ok(info) => assert!(Instant::now() < deadline, "node A still holds the call live: {info:?}"),
            Err(e) => panic!("asked through node A: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bob's mark, written again by A when it woke, is gone with the call.
    let deadline = Instant::now() + WAIT;
    while !marks_of(&redis, &app, "bob").await.is_empty() {
        assert!(Instant::now() < deadline, "bob is still marked in a call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The survivor's end stands: one record each, ended when A stopped, nothing saved.
    let page = bob.get_call_records(-1, 20, RecordOrder::Desc).await.expect("records");
    assert_eq!(page.records.len(), 1, "{page:?}");
    let kept = &page.records[0];
    assert_eq!(kept.end_reason, EndReason::NetworkError, "{kept:?}");
    let ended_at = kept.call.ended_at_ms.expect("an ended call's record");
    assert!(ended_at <= paused_ms + 2_500, "ended at {ended_at}, A paused at {paused_ms}");
    let storage = callplus_signal::storage::PostgresStorage::open(&postgres).unwrap();
    let saved = callplus_signal::storage::Storage::active_calls(&storage).unwrap();
    assert!(saved.iter().all(|c| c.call_id != group.as_str()), "{saved:?}");
    // The survivor gives the lease up at its next renewal after the end.
    let deadline = Instant::now() + WAIT;
    while let Some(holder) = leases.owner(&app, group.as_str()).await.unwrap() {
        assert!(["node-b", "node-c"].contains(&holder.0.as_str()) && holder.1 == 2, "{holder:?}");
        assert!(Instant::now() < deadline, "the survivor never released the call's lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for client in [bob, carol, host2] {
        client.disconnect().await;
    }
    drop(host);
}

/// The in-call marks of `user` in Redis (the calls their owners marked them in).
async fn marks_of(redis: &OwnedRedis, app: &str, user: &str) -> Vec<(String, String, String)> {
    let config = callplus_signal::cluster::ClusterConfig::new(&redis.url(), "node-x").unwrap();
    let marks = callplus_signal::cluster::InCallMarks::new(
        callplus_signal::cluster::connect(&config.client).await.unwrap(),
    );
    marks.read(app, &[user]).await.unwrap()
}

/// Busy across owners: bob is in a call node A owns (with his device on A); carol, on node B,
/// calls him through a call node B owns and is told he is busy, as on one node, and he is rung
/// anyway (call waiting). Once his call ends his in-call mark is gone and he is free for her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_in_a_call_another_node_owns_is_busy() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let a = Node::start(&postgres, &redis, "node-a").await;
    let secret = a.value("app secret:");
    let app = a.value("app key:");
    let b = Node::start(&postgres, &redis, "node-b").await;
    let (alice, mut alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let (bob, mut bob_ev) = a.connect(&secret, "bob", "bob-phone").await;
    let (carol, mut carol_ev) = b.connect(&secret, "carol", "carol-phone").await;

    let first = alice.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let first = first.expect("start_call").call_id().clone();
    wait_for(&mut bob_ev, "bob rings on A", rings(&first)).await;
    bob.accept(&first).await.expect("accept");
    wait_for(&mut alice_ev, "alice connected", connected(&first)).await;
    // The owner writes the mark from its routing task right after the leg connects (the
    // device may hear of its connection a moment before): wait for it.
    let deadline = Instant::now() + WAIT;
    loop {
        let marks = marks_of(&redis, &app, "bob").await;
        if marks.iter().any(|(_, call, mark)| call == first.as_str() && mark == "connected") {
            break;
        }
        assert!(Instant::now() < deadline, "bob is not marked in his call: {marks:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let second = carol.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let second = second.expect("start_call on B");
    assert!(second.call_id().as_str().starts_with("node-b_"), "{:?}", second.call_id());
    assert_eq!(second.busy_users, [callplus_session::UserId::new("bob").unwrap()], "bob is busy on node A");
    let second = second.call_id().clone();
    wait_for(&mut bob_ev, "bob is rung anyway (call waiting)", rings(&second)).await;
    carol.hangup(Some(&second)).await.expect("carol cancels");
    wait_for(&mut carol_ev, "carol's record", record(&second)).await;

    alice.hangup(Some(&first)).await.expect("alice hangs up");
    wait_for(&mut bob_ev, "bob's call ends", ended(&first)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let marks = marks_of(&redis, &app, "bob").await;
        if marks.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "bob's in-call marks stay: {marks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = carol.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let third = third.expect("start_call on B");
    assert!(third.busy_users.is_empty(), "bob is free: {:?}", third.busy_users);
    let third = third.call_id().clone();
    wait_for(&mut bob_ev, "bob rings", rings(&third)).await;
    bob.accept(&third).await.expect("bob answers carol");
    wait_for(&mut carol_ev, "carol connected", connected(&third)).await;
    carol.hangup(Some(&third)).await.expect("hangup");
    wait_for(&mut bob_ev, "bob sees the end", ended(&third)).await;
    for client in [alice, bob, carol] {
        client.disconnect().await;
    }
}

/// Late devices: bob has no device when alice's call (owned by node A) starts ringing him; his
/// phone then connects to node B and is offered the call, as on one node, and answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_to_another_node_after_the_ringing_started_rings() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let a = Node::start(&postgres, &redis, "node-a").await;
    let secret = a.value("app secret:");
    let b = Node::start(&postgres, &redis, "node-b").await;
    let (alice, mut alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let options = CallOptions { ring_timeout_ms: Some(30_000), ..CallOptions::default() };
    let call = alice.start_call(&["bob"], CallType::Single, MediaType::Audio, options).await;
    let call = call.expect("start_call").call_id().clone();
    assert!(call.as_str().starts_with("node-a_"), "{call:?}");

    let (bob, mut bob_ev) = b.connect(&secret, "bob", "bob-phone").await;
    wait_for(&mut bob_ev, "bob's late phone rings on node B", rings(&call)).await;
    bob.accept(&call).await.expect("bob answers from node B");
    wait_for(&mut alice_ev, "alice connected", connected(&call)).await;
    wait_for(&mut bob_ev, "bob connected", connected(&call)).await;
    alice.hangup(Some(&call)).await.expect("hangup");
    wait_for(&mut bob_ev, "bob sees the end", ended(&call)).await;
    for client in [alice, bob] {
        client.disconnect().await;
    }
}

/// The single-device policy holds across nodes: bob's phone is on node A, his tablet logs in
/// on node B, and the phone is kicked with KICKED_OTHER_LOGIN as on one node; the tablet is
/// the one rung afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_device_policy_kicks_the_older_login_on_another_node() {
    use callplus_signal::client::ConnectionState;
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let single = ["--device-policy", "single"];
    let a = Node::start_with(&postgres, &redis, "node-a", &single).await;
    let secret = a.value("app secret:");
    let b = Node::start_with(&postgres, &redis, "node-b", &single).await;
    let (phone, mut phone_ev) = a.connect(&secret, "bob", "bob-phone").await;
    let (tablet, mut tablet_ev) = b.connect(&secret, "bob", "bob-tablet").await;
    wait_for(&mut phone_ev, "the phone on A is kicked", |e| {
        matches!(e, Event::ConnectionStateChanged(ConnectionState::Kicked(EndReason::KickedOtherLogin)))
    })
    .await;

    let (alice, _alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let call = alice.start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let call = call.expect("start_call").call_id().clone();
    wait_for(&mut tablet_ev, "the tablet rings", rings(&call)).await;
    assert!(
        matches!(tablet.connection_state(), ConnectionState::Connected),
        "{:?}",
        tablet.connection_state()
    );
    alice.hangup(Some(&call)).await.expect("cancel");
    for client in [alice, tablet] {
        client.disconnect().await;
    }
    drop(phone);
}

/// The operator asks node B's admin API to end a call node A holds: B forwards it (202), A ends
/// it, and the participants on both nodes see ENDED_BY_SERVER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_ends_a_call_through_another_nodes_admin_api() {
    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let a = Node::start(&postgres, &redis, "node-a").await;
    let secret = a.value("app secret:");
    let app_key = a.value("app key:");
    let b = Node::start(&postgres, &redis, "node-b").await;
    let (alice, mut alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let (carol, mut carol_ev) = b.connect(&secret, "carol", "carol-phone").await;
    let call = alice.start_call(&["carol"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let call = call.expect("start_call").call_id().clone();
    wait_for(&mut carol_ev, "carol rings on node B", rings(&call)).await;
    carol.accept(&call).await.expect("accept");
    wait_for(&mut alice_ev, "alice connected", connected(&call)).await;

    let body = serde_json::json!({ "call_id": call.as_str() });
    let (status, reply) = admin_post(&b, (&app_key, &secret), "/v1/calls/end", &body).await;
    assert_eq!(status, 202);
    assert_eq!(reply["forwarded_to"], "node-a");
    for (events, who) in [(&mut alice_ev, "alice on A"), (&mut carol_ev, "carol on B")] {
        let end = wait_for(events, who, ended(&call)).await;
        assert_eq!(reason(&end), Some(EndReason::EndedByServer), "{who}");
    }
    for client in [alice, carol] {
        client.disconnect().await;
    }
}

/// `body` POSTed to `node`'s admin API at `path`, signed with the app's (key, secret): the
/// status and the JSON reply.
async fn admin_post(
    node: &Node,
    (app_key, secret): (&str, &str),
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let admin = node.value("admin API:");
    let admin = admin.split_whitespace().next().expect("the admin URL");
    let body = body.to_string();
    let (nonce, ts) = (format!("{path}-{}", wall_ms()), (wall_ms() / 1000).to_string());
    let reply = reqwest::Client::new()
        .post(format!("{admin}{path}"))
        .header("X-App-Key", app_key)
        .header("X-Nonce", &nonce)
        .header("X-Timestamp", &ts)
        .header(
            "X-Signature",
            callplus_signal::server::sign_request(secret, path, &nonce, &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("the admin API answers");
    let status = reply.status().as_u16();
    (status, reply.json().await.expect("JSON"))
}

/// A sign-out asked of one node reaches the user's device on another: the device is told
/// `KICKED_BY_SERVER` and stops, and its call ends for the peer on the first node.
#[tokio::test]
async fn the_operator_signs_out_a_user_whose_device_is_on_another_node() {
    use callplus_signal::client::ConnectionState;

    let Some(redis) = OwnedRedis::start() else { return };
    let postgres = support::postgres::fresh_database();
    let a = Node::start(&postgres, &redis, "node-a").await;
    let secret = a.value("app secret:");
    let app_key = a.value("app key:");
    let b = Node::start(&postgres, &redis, "node-b").await;
    let (alice, mut alice_ev) = a.connect(&secret, "alice", "alice-phone").await;
    let (carol, mut carol_ev) = b.connect(&secret, "carol", "carol-phone").await;
    let call = alice.start_call(&["carol"], CallType::Single, MediaType::Audio, CallOptions::default()).await;
    let call = call.expect("start_call").call_id().clone();
    wait_for(&mut carol_ev, "carol rings on node B", rings(&call)).await;
    carol.accept(&call).await.expect("accept");
    wait_for(&mut alice_ev, "alice connected", connected(&call)).await;

    let body = serde_json::json!({ "user_id": "carol" });
    let (status, reply) = admin_post(&a, (&app_key, &secret), "/v1/users/sign_out", &body).await;
    assert_eq!(status, 200);
    assert_eq!(reply["signed_out"], 0, "carol has no device on node A");
    let kicked = |e: &Event| {
        matches!(e, Event::ConnectionStateChanged(ConnectionState::Kicked(EndReason::KickedByServer)))
    };
    wait_for(&mut carol_ev, "carol on B signed out", kicked).await;
    let end = wait_for(&mut alice_ev, "alice's call ends", ended(&call)).await;
    assert_eq!(reason(&end), Some(EndReason::RemoteKickedByServer));
    alice.disconnect().await;
    carol.disconnect().await;
}
