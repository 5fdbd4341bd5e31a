//! The multi-node building blocks against a real `redis-server` on 127.0.0.1: call-ownership
//! leases, the presence registry, and both surviving a Redis restart under a live node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use callplus_signal::cluster::{
    Batch, CallLeases, ClusterConfig, DeviceLocation, InCallMarks, Lease, NodeId, Presence, TakeOver,
    Takeovers, connect,
};
use support::process::{self, Banner};
use support::redis::OwnedRedis;
use tokio::time::Instant;

/// Upper bound for any wait on a condition.
const WAIT: Duration = Duration::from_secs(15);

async fn node(redis: &OwnedRedis, id: &str, ttl: Duration) -> (CallLeases, Presence) {
    let config = ClusterConfig::new(&redis.url(), id).unwrap();
    let conn = connect(&config.client).await.unwrap();
    (CallLeases::new(conn.clone(), config.node_id.clone(), ttl), Presence::new(conn, config.node_id, ttl))
}

/// Polls `check` until it returns `Some`, within [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn at(device: &str, node: &str, session: &str) -> DeviceLocation {
    DeviceLocation { device_id: device.into(), node_id: node.into(), session_id: session.into() }
}

#[tokio::test]
async fn a_call_lease_has_one_owner_and_growing_fencing_tokens() {
    let Some(redis) = OwnedRedis::start() else { return };
    let (a, _) = node(&redis, "node-a", Duration::from_millis(400)).await;
    let (b, _) = node(&redis, "node-b", Duration::from_secs(30)).await;

    let first = a.acquire("app", "call-1").await.unwrap().expect("a free call is taken");
    assert_eq!(first.token, 1);
    assert_eq!(b.acquire("app", "call-1").await.unwrap(), None, "one owner at a time");
    assert_eq!(a.acquire("app", "call-1").await.unwrap(), None, "not even twice by the owner");
    assert_eq!(a.owner("app", "call-1").await.unwrap(), Some(("node-a".into(), 1)));
    assert!(a.renew(&first).await.unwrap());

    // The owner stops renewing (it died): the lease expires and another node takes the call.
    let second = eventually("the lease to expire and node B to take the call", || async {
        b.acquire("app", "call-1").await.unwrap()
    })
    .await;
    assert!(second.token > first.token, "a new owner gets a larger fencing token");
    assert_eq!(b.owner("app", "call-1").await.unwrap(), Some(("node-b".into(), second.token)));

    // The old owner wakes up: it can neither extend nor delete its successor's lease.
    assert!(!a.renew(&first).await.unwrap(), "the old owner learns it lost the call");
    assert!(!a.release(&first).await.unwrap());
    assert_eq!(b.owner("app", "call-1").await.unwrap(), Some(("node-b".into(), second.token)));

    assert!(b.release(&second).await.unwrap(), "the owner releases when the call ends");
    assert_eq!(b.owner("app", "call-1").await.unwrap(), None);
    let third = a.acquire("app", "call-1").await.unwrap().expect("free again");
    assert!(third.token > second.token);
    // Leases of different calls are independent.
    assert!(b.acquire("app", "call-2").await.unwrap().is_some());
}

/// Leases as the server holds them: the creator's (token 1) is written by its first renewal, a
/// survivor taking the call over waits for it to expire and gets a larger token, and once the
/// survivor has ended and released the call the woken creator still cannot renew it: the epoch is
/// past its token. A call whose creator never wrote its lease is taken at once, still with a
/// token past the creator's; a node restarted with the same id takes its previous run's calls at
/// once.
#[tokio::test]
async fn a_taken_over_call_is_never_renewed_by_its_woken_creator() {
    let Some(redis) = OwnedRedis::start() else { return };
    let (a, _) = node(&redis, "node-a", Duration::from_millis(400)).await;
    let (b, _) = node(&redis, "node-b", Duration::from_secs(30)).await;
    let (c, _) = node(&redis, "node-c", Duration::from_secs(30)).await;
    let node_a = NodeId::new("node-a").unwrap();

    // Never renewed (the call was younger than a renewal interval): nothing to wait for.
    let short = Lease::first(&node_a, "app", "node-a_short");
    assert_eq!(a.owner("app", "node-a_short").await.unwrap(), None);
    let TakeOver::Taken(taken) = b.take_over("app", "node-a_short", "node-a").await.unwrap() else {
        panic!("a call with no lease is taken at once")
    };
    assert_eq!(taken.token, 2, "past the creator's token even though it never wrote it");
    assert_eq!(a.renew_all(std::slice::from_ref(&short)).await.unwrap(), vec![false]);

    // Renewed once: written with the creator's token.
    let first = Lease::first(&node_a, "app", "node-a_1");
    assert_eq!(a.renew_all(std::slice::from_ref(&first)).await.unwrap(), vec![true]);
    assert_eq!(a.owner("app", "node-a_1").await.unwrap(), Some(("node-a".into(), 1)));
    match b.take_over("app", "node-a_1", "node-a").await.unwrap() {
        TakeOver::Wait(left) => assert!(left <= Duration::from_millis(400), "{left:?}"),
        other => panic!("the lost node's lease is still running: {other:?}"),
    }
    assert_eq!(
        c.take_over("app", "node-a_1", "node-x").await.unwrap(),
        TakeOver::TakenElsewhere,
        "held by a node that is not the lost one"
    );
    let second = eventually("the creator's lease to expire", || async {
        match b.take_over("app", "node-a_1", "node-a").await.unwrap() {
            TakeOver::Taken(lease) => Some(lease),
            _ => None,
        }
    })
    .await;
    assert_eq!(second.token, 2);
    assert_eq!(
        c.take_over("app", "node-a_1", "node-a").await.unwrap(),
        TakeOver::TakenElsewhere,
        "one successor"
    );
    b.release_all(std::slice::from_ref(&second)).await.unwrap();
    assert_eq!(b.owner("app", "node-a_1").await.unwrap(), None);
    // The creator wakes up after the call was ended and released: it cannot take it back.
    assert_eq!(a.renew_all(std::slice::from_ref(&first)).await.unwrap(), vec![false]);
    assert_eq!(a.owner("app", "node-a_1").await.unwrap(), None);

    // Several leases in one round trip, each answered on its own.
    let mine = Lease::first(&node_a, "app", "node-a_2");
    assert_eq!(a.renew_all(&[mine.clone(), first]).await.unwrap(), vec![true, false]);
    // Restarted with the same id, node A takes over its previous run's call without waiting.
    let TakeOver::Taken(again) = a.take_over("app", "node-a_2", "node-a").await.unwrap() else {
        panic!("a restarted node takes its own calls at once")
    };
    assert_eq!(again.token, 2);
    assert_eq!(a.renew_all(&[mine]).await.unwrap(), vec![false], "the previous run's lease is fenced");
    a.release_all(&[again]).await.unwrap();
    assert_eq!(a.owner("app", "node-a_2").await.unwrap(), None);
}

/// Both survivors of a lost node try its takeover lock: exactly one wins; the loser cannot give
/// it back; once the winner does, a node that notices the loss later can take it (and finds the
/// lost node's calls already ended and forgotten).
#[tokio::test]
async fn a_lost_nodes_takeover_lock_has_one_winner() {
    let Some(redis) = OwnedRedis::start() else { return };
    let url = redis.url();
    let takeovers = |id: &'static str| {
        let url = url.clone();
        async move {
            let config = ClusterConfig::new(&url, id).unwrap();
            Takeovers::new(connect(&config.client).await.unwrap(), config.node_id)
        }
    };
    let b = takeovers("node-b").await;
    let c = takeovers("node-c").await;
    let (won_b, won_c) = tokio::join!(b.acquire("node-a"), c.acquire("node-a"));
    let (won_b, won_c) = (won_b.unwrap(), won_c.unwrap());
    assert!(won_b ^ won_c, "exactly one winner: b {won_b}, c {won_c}");
    let (winner, loser, name) = if won_b { (&b, &c, "node-b") } else { (&c, &b, "node-c") };
    assert_eq!(winner.holder("node-a").await.unwrap().as_deref(), Some(name));
    assert!(!loser.acquire("node-a").await.unwrap(), "held: nobody else wins it");
    assert!(!loser.release("node-a").await.unwrap(), "a loser never deletes the winner's lock");
    assert!(winner.acquire("node-x").await.unwrap(), "locks are per lost node");
    assert!(winner.release("node-a").await.unwrap());
    assert_eq!(winner.holder("node-a").await.unwrap(), None);
    assert!(loser.acquire("node-a").await.unwrap(), "given back: the next to notice may take it");
}

#[tokio::test]
async fn presence_finds_devices_on_any_node_and_forgets_silent_ones() {
    let Some(redis) = OwnedRedis::start() else { return };
    let (_, a) = node(&redis, "node-a", Duration::from_secs(30)).await;
    let (_, b) = node(&redis, "node-b", Duration::from_millis(400)).await;

    a.register("app", "bob", "phone", "s1").await.unwrap();
    b.register("app", "bob", "laptop", "s2").await.unwrap();
    assert_eq!(
        a.lookup("app", "bob").await.unwrap(),
        vec![at("laptop", "node-b", "s2"), at("phone", "node-a", "s1")]
    );
    assert_eq!(b.lookup("app", "alice").await.unwrap(), vec![], "nobody connected");

    // The phone reconnects through node B: node A's old connection is stale and cannot erase it.
    b.register("app", "bob", "phone", "s3").await.unwrap();
    assert!(!a.renew("app", "bob", "phone", "s1").await.unwrap(), "the old connection learns it moved");
    assert!(!a.unregister("app", "bob", "phone", "s1").await.unwrap());
    assert!(a.lookup("app", "bob").await.unwrap().contains(&at("phone", "node-b", "s3")));

    // A clean disconnect removes the device at once.
    assert!(b.unregister("app", "bob", "phone", "s3").await.unwrap());
    assert_eq!(a.lookup("app", "bob").await.unwrap(), vec![at("laptop", "node-b", "s2")]);

    // The laptop's heartbeats stop (its node died): it vanishes within the TTL.
    eventually("the silent laptop to vanish", || async {
        a.lookup("app", "bob").await.unwrap().is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_batch_runs_in_order_keeps_each_reply_and_loads_its_scripts() {
    let Some(redis) = OwnedRedis::start() else { return };
    let config = ClusterConfig::new(&redis.url(), "node-a").unwrap();
    let mut conn = connect(&config.client).await.unwrap();
    let presence = Presence::new(conn.clone(), config.node_id.clone(), Duration::from_secs(30));
    // Redis forgot every script (as after a restart): a batch loads what it invokes.
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut conn).await.unwrap();

    let mut batch = Batch::default();
    let registered = presence.register_in(&mut batch, "app", "bob", "phone", "s1");
    let found = presence.lookup_in(&mut batch, "app", "bob");
    let marked = InCallMarks::set_in(&mut batch, "app", "bob", "node-b_1", Some("ringing"));
    let mut wrong = redis::cmd("HGETALL");
    wrong.arg("callplus:node:node-a:wrong-type");
    let refused = batch.push(wrong);
    let read = InCallMarks::read_in(&mut batch, "app", "bob");
    let found_again = presence.lookup_in(&mut batch, "app", "bob");
    redis::cmd("SET")
        .arg("callplus:node:node-a:wrong-type")
        .arg("a string")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut replies = batch.run(&mut conn).await.unwrap();

    Presence::registered(&mut replies, registered).unwrap();
    // Each read sees the writes queued before it in the same round trip.
    assert_eq!(Presence::found(&mut replies, found).unwrap(), vec![at("phone", "node-a", "s1")]);
    replies.take::<redis::Value>(marked).unwrap();
    assert!(replies.take::<Vec<(String, String)>>(refused).is_err(), "WRONGTYPE fails its own command");
    assert_eq!(
        InCallMarks::marks(&mut replies, read).unwrap(),
        vec![("node-b_1".to_owned(), "ringing".to_owned())],
        "the commands after a refused one still ran"
    );
    assert_eq!(Presence::found(&mut replies, found_again).unwrap(), vec![at("phone", "node-a", "s1")]);
    assert!(replies.take::<redis::Value>(read).is_err(), "a reply is taken once");
}

#[tokio::test]
async fn a_lookup_drops_the_index_fields_of_expired_devices() {
    let Some(redis) = OwnedRedis::start() else { return };
    let (_, a) = node(&redis, "node-a", Duration::from_secs(30)).await;
    let (_, b) = node(&redis, "node-b", Duration::from_millis(300)).await;
    a.register("app", "bob", "phone", "s1").await.unwrap();
    b.register("app", "bob", "laptop", "s2").await.unwrap();
    let mut conn = connect(&ClusterConfig::new(&redis.url(), "reader").unwrap().client).await.unwrap();

    eventually("the laptop's own key to expire", || async {
        (a.lookup("app", "bob").await.unwrap() == vec![at("phone", "node-a", "s1")]).then_some(())
    })
    .await;
    let index: Vec<(String, String)> =
        redis::cmd("HGETALL").arg("callplus:app:presence:bob").query_async(&mut conn).await.unwrap();
    assert_eq!(index, vec![("phone".to_owned(), "node-a|s1".to_owned())], "the lookup cleaned the index");
}

/// Waits until `user`'s in-call marks in Redis are `want` (call id, mark).
async fn marks_become(
    conn: &redis::aio::ConnectionManager,
    app: &str,
    user: &str,
    want: &[(String, String)],
) {
    let key = format!("callplus:{app}:incall:{user}");
    eventually("the in-call marks", || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let marks: Vec<(String, String)> =
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.ok()?;
            (marks == want).then_some(())
        }
    })
    .await;
}

/// Redis restarts without its data while a node owns a live call: the node notices its own
/// liveness key gone and writes the call's in-call marks again (they are what makes a callee
/// busy for callers on other nodes), without waiting for the call to change.
#[tokio::test]
async fn a_node_writes_its_in_call_marks_again_after_redis_lost_them() {
    use callplus_session::{CallType, DeviceId, MediaType};
    use callplus_signal::client::{Client, ClientOptions, Event};
    let Some(mut redis) = OwnedRedis::start() else { return };
    let serve = Serve::start(&redis, "node-a").await;
    let url = serve.value("gRPC (devices):");
    let app = serve.value("app key:");
    let options = |device: &str| ClientOptions::default().with_device_id(DeviceId::new(device).unwrap());
    let (alice, _alice_events) =
        Client::connect(&url, &serve.token("alice"), options("alice-phone")).await.unwrap();
    let (bob, mut bob_events) =
        Client::connect(&url, &serve.token("bob"), options("bob-phone")).await.unwrap();
    let call =
        alice.start_call(&["bob"], CallType::Single, MediaType::Audio, Default::default()).await.unwrap();
    let call = call.call_id().clone();
    loop {
        match tokio::time::timeout(WAIT, bob_events.next()).await.expect("bob rings").expect("events") {
            Event::ReceivedCall { session, .. } if session.call_id() == &call => break,
            _ => continue,
        }
    }
    bob.accept(&call).await.unwrap();
    let conn = connect(&ClusterConfig::new(&redis.url(), "reader").unwrap().client).await.unwrap();
    let connected = [(call.as_str().to_owned(), "connected".to_owned())];
    for user in ["alice", "bob"] {
        marks_become(&conn, &app, user, &connected).await;
    }

    redis.stop();
    redis.resume();
    for user in ["alice", "bob"] {
        marks_become(&conn, &app, user, &connected).await;
    }
    alice.hangup(Some(&call)).await.unwrap();
    marks_become(&conn, &app, "bob", &[]).await;
}

#[tokio::test]
async fn a_live_node_recovers_when_redis_restarts() {
    let Some(mut redis) = OwnedRedis::start() else { return };
    let (leases, presence) = node(&redis, "node-a", Duration::from_secs(30)).await;
    let (other_leases, _) = node(&redis, "node-b", Duration::from_secs(30)).await;
    let lease = leases.acquire("app", "call-1").await.unwrap().expect("taken");
    presence.register("app", "bob", "phone", "s1").await.unwrap();

    // Redis restarts and loses everything (no persistence).
    redis.stop();
    assert!(presence.lookup("app", "bob").await.is_err(), "Redis is down");
    redis.resume();

    // Same node objects, same connection manager: the next heartbeat renewals work again and
    // put back what the node still holds.
    eventually("presence renewal after the restart", || async {
        presence.renew("app", "bob", "phone", "s1").await.ok().filter(|renewed| *renewed)
    })
    .await;
    assert_eq!(presence.lookup("app", "bob").await.unwrap(), vec![at("phone", "node-a", "s1")]);
    assert!(leases.renew(&lease).await.unwrap(), "the owner keeps its call");
    assert_eq!(leases.owner("app", "call-1").await.unwrap(), Some(("node-a".into(), lease.token)));
    // Node B's idle connection learns of the restart on its first command (an error), then
    // reconnects by itself.
    let taken = eventually("node B to reach Redis again", || async {
        other_leases.acquire("app", "call-1").await.ok()
    })
    .await;
    assert_eq!(taken, None, "still one owner");

    // The restored epoch keeps fencing tokens growing past the ones handed out before.
    assert!(leases.release(&lease).await.unwrap());
    let next = other_leases.acquire("app", "call-1").await.unwrap().expect("free");
    assert!(next.token > lease.token, "{} > {}", next.token, lease.token);
}

#[test]
fn cluster_settings_are_checked() {
    assert!(ClusterConfig::new("redis://127.0.0.1:6379/", "node-1").is_ok());
    assert!(ClusterConfig::new("redis://127.0.0.1:6379/", "").is_err());
    assert!(ClusterConfig::new("redis://127.0.0.1:6379/", "node|1").is_err());
    assert!(ClusterConfig::new("not a url", "node-1").is_err());
}

/// `rediss://` connects with TLS, checking the certificate against the given CA; a plaintext
/// client cannot talk to a TLS-only Redis, nor a client that does not trust the certificate.
#[tokio::test]
async fn rediss_urls_connect_with_tls() {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let Some(redis) =
        support::redis::OwnedTlsRedis::start(&made.cert.pem(), &made.signing_key.serialize_pem())
    else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}/", redis.port);
    let config = ClusterConfig::with_tls_ca(&url, "node-a", Some(made.cert.pem().into_bytes())).unwrap();
    let conn = connect(&config.client).await.expect("TLS connection with the CA");
    let presence = Presence::new(conn, config.node_id, Duration::from_secs(30));
    presence.register("app", "bob", "phone", "s1").await.unwrap();
    assert_eq!(presence.lookup("app", "bob").await.unwrap(), vec![at("phone", "node-a", "s1")]);

    let plaintext = ClusterConfig::new(&format!("redis://127.0.0.1:{}/", redis.port), "node-b").unwrap();
    // One attempt each (the connection manager would retry with backoff).
    assert!(
        plaintext.client.get_multiplexed_async_connection().await.is_err(),
        "a TLS-only Redis refuses plaintext"
    );
    let untrusted = ClusterConfig::new(&url, "node-c").unwrap();
    assert!(
        untrusted.client.get_multiplexed_async_connection().await.is_err(),
        "an untrusted certificate is refused"
    );
    assert!(ClusterConfig::with_tls_ca("redis://127.0.0.1:1/", "n", Some(Vec::new())).is_err());
}

/// A running `callplus serve --redis URL --node-id ID` (the real binary).
struct Serve {
    child: tokio::process::Child,
    banner: Banner,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Heartbeats every 2 s, so presence entries live 6 s unless renewed.
    async fn start(redis: &OwnedRedis, node_id: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let (child, banner, lines) = process::spawn(
            process::callplus()
                .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(["--heartbeat-interval", "2s", "--liveness-timeout", "8s"])
                .args(["--redis", &redis.url(), "--node-id", node_id])
                .arg("--data-dir")
                .arg(dir.path())
                .env("CALLPLUS_LOG", "warn"),
        )
        .await;
        process::drain(lines);
        Serve { child, banner, _dir: dir }
    }

    fn value(&self, label: &str) -> String {
        self.banner.value(label)
    }

    fn token(&self, user: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        callplus_signal::token::mint(&self.value("app key:"), &self.value("app secret:"), user, now, 3600)
            .unwrap()
    }

    /// The sum of a `/metrics` counter over the label `result="{result}"`.
    async fn presence_updates(&self, result: &str) -> f64 {
        let admin = self.value("admin API:").split_whitespace().next().unwrap().to_owned();
        let text = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
        let prefix = format!("callplus_presence_updates_total{{result=\"{result}\"}} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn a_node_keeps_its_devices_sessions_in_presence() {
    use callplus_session::{CallType, DeviceId, MediaType};
    use callplus_signal::client::{Client, ClientOptions};
    let Some(mut redis) = OwnedRedis::start() else { return };
    let serve = Serve::start(&redis, "node-a").await;
    let url = serve.value("gRPC (devices):");
    let (_, reader) = node(&redis, "reader", Duration::from_secs(30)).await;
    let options = |device: &str| ClientOptions {
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..ClientOptions::default().with_device_id(DeviceId::new(device).unwrap())
    };
    let (alice, _alice_events) =
        Client::connect(&url, &serve.token("alice"), options("alice-phone")).await.unwrap();
    let (bob, _bob_events) = Client::connect(&url, &serve.token("bob"), options("bob-phone")).await.unwrap();
    let app = serve.value("app key:");
    let on_node = |found: Vec<DeviceLocation>, device: &str| {
        found.into_iter().find(|d| d.device_id == device && d.node_id == "node-a")
    };

    // Both devices are registered on this node, with sessions minted by this node.
    let alice_at = eventually("alice's presence", || async {
        on_node(reader.lookup(&app, "alice").await.ok()?, "alice-phone")
    })
    .await;
    let bob_at = eventually("bob's presence", || async {
        on_node(reader.lookup(&app, "bob").await.ok()?, "bob-phone")
    })
    .await;
    assert!(alice_at.session_id.starts_with("snode-a_"), "{alice_at:?}");
    assert_ne!(alice_at.session_id, bob_at.session_id);
    // Call ids lead with the node id too.
    let call =
        alice.start_call(&["bob"], CallType::Single, MediaType::Audio, Default::default()).await.unwrap();
    assert!(call.call_id().as_str().starts_with("node-a_"), "{:?}", call.call_id());
    alice.hangup(Some(call.call_id())).await.unwrap();

    // Bob logs out: his session ends and his entry goes at once, well before its TTL (6 s from
    // its last renewal, at most 2 s ago) could expire it.
    let ended = Instant::now();
    bob.disconnect().await;
    eventually("bob's presence removed", || async {
        reader.lookup(&app, "bob").await.ok().filter(Vec::is_empty)
    })
    .await;
    assert!(ended.elapsed() < Duration::from_secs(3), "removed by the session's end, not by expiry");
    assert!(on_node(reader.lookup(&app, "alice").await.unwrap(), "alice-phone").is_some(), "alice stays");

    // Redis restarts empty: signalling goes on (errors counted), and alice's next heartbeat
    // renewals write her entry back.
    redis.stop();
    eventually("a failed presence update counted", || async {
        let errors = serve.presence_updates("error").await;
        (errors > 0.0).then_some(errors)
    })
    .await;
    assert!(
        alice.get_call_records(-1, 10, callplus_session::RecordOrder::Desc).await.is_ok(),
        "signalling works"
    );
    redis.resume();
    let restored = eventually("alice's presence restored", || async {
        on_node(reader.lookup(&app, "alice").await.ok()?, "alice-phone")
    })
    .await;
    assert_eq!(restored, alice_at, "the same session, restored by its renewals");

    // A stopping server ends its sessions and removes their entries before it exits.
    let pid = serve.child.id().unwrap().to_string();
    let stopping = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    eventually("alice's presence removed at stop", || async {
        reader.lookup(&app, "alice").await.ok().filter(Vec::is_empty)
    })
    .await;
    assert!(stopping.elapsed() < Duration::from_secs(3), "removed by the stop, not by expiry");
    drop(alice);
}
