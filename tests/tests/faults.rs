//! Faults: a TCP connection cut mid-call (through a severable proxy) is resumed with no event
//! lost or repeated; a client that dies without goodbye is noticed within the liveness timeout
//! (or at once when the app restarts) and never locks its user out, and its calls end at its
//! last sign of life; a server stopped and restarted on the same data directory keeps its
//! records, ends the interrupted calls with ENDED_BY_SERVER and its clients reconnect; a server
//! crashed and restarted ends them with NETWORK_ERROR, which is what its clients saw.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{CallId, EndReason};
use callplus_signal::token;
use callplus_tests::{
    CallType, Code, ConnectionState, Event, MediaType, Party, RecordOrder, TcpProxy, TestServer, WAIT,
    config, connected, ended, ended_with, establish, now_secs, received, record_of, state_is, summary_of,
};
use tokio::sync::oneshot;
use tokio::time::timeout;

fn media_event(e: &Event) -> Option<(&'static str, bool)> {
    match e {
        Event::RemoteCameraStateChanged { disabled, .. } => Some(("camera", *disabled)),
        Event::RemoteMicrophoneStateChanged { disabled, .. } => Some(("microphone", *disabled)),
        _ => None,
    }
}

fn count(log: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    log.iter().filter(|e| pred(e)).count()
}

#[tokio::test]
async fn a_cut_connection_resumes_and_missed_events_arrive_once_in_order() {
    // Liveness well above the cut, so the call survives it.
    let server = TestServer::start(SwitchboardConfig { liveness_timeout_ms: 5_000, ..config() }).await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = server.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;

    proxy.pause();
    proxy.sever();
    alice.expect(state_is(ConnectionState::Reconnecting), "reconnecting").await;
    assert_eq!(alice.client.current_call().map(|s| s.call_id().clone()), Some(call.clone()));

    // Bob acts while alice is away: each request is done on the server before the next.
    bob.client.set_camera_enabled(false).await.expect("camera off");
    bob.client.set_camera_enabled(true).await.expect("camera on");
    bob.client.set_camera_enabled(false).await.expect("camera off again");
    bob.client.set_microphone_enabled(false).await.expect("microphone off");
    // A request alice makes while cut is queued and answered after the resume.
    let queued = {
        let (client, call) = (alice.client.clone(), call.clone());
        tokio::spawn(async move { client.get_call(&call).await })
    };

    proxy.resume();
    alice.expect(state_is(ConnectionState::Connected), "connected again").await;
    alice.expect(|e| media_event(e) == Some(("microphone", true)), "the last missed event").await;
    let info =
        timeout(WAIT, queued).await.expect("queued request answered").expect("task").expect("get_call");
    assert!(!info.is_ended(), "the call survived the cut");

    alice.client.hangup(None).await.expect("hangup after the resume");
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "bob ended").await;
    alice.expect(record_of(&call), "alice's record").await;

    let log = alice.finish().await;
    let media: Vec<_> = log.iter().filter_map(media_event).collect();
    assert_eq!(
        media,
        [("camera", true), ("camera", false), ("camera", true), ("microphone", true)],
        "in order, each once: {log:#?}"
    );
    assert_eq!(count(&log, connected(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, ended(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, record_of(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, |e| matches!(e, Event::ReceivedCall { .. })), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_hangup_while_cut_reaches_the_resumed_client_once() {
    let server = TestServer::start(SwitchboardConfig { liveness_timeout_ms: 5_000, ..config() }).await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = server.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut bob, &mut alice, MediaType::Audio).await;

    proxy.pause();
    proxy.sever();
    alice.expect(state_is(ConnectionState::Reconnecting), "reconnecting").await;
    bob.client.hangup(None).await.expect("bob hangs up");
    bob.expect(ended_with(&call, EndReason::Hangup), "bob ended").await;

    proxy.resume();
    alice.expect(ended_with(&call, EndReason::RemoteHangup), "alice told after the resume").await;
    alice.expect(summary_of(&call), "summary").await;
    let log = alice.finish().await;
    assert_eq!(count(&log, ended(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, record_of(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, summary_of(&call)), 1, "{log:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_device_is_dropped_within_the_liveness_timeout_and_its_user_calls_again_at_once() {
    const LIVENESS: u64 = 600;
    let server = TestServer::start(SwitchboardConfig {
        liveness_timeout_ms: LIVENESS as u32,
        heartbeat_interval_ms: 100,
        ..config()
    })
    .await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = server.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;

    // Alice vanishes: her connection is cut and she can never come back through the proxy.
    let cut = Instant::now();
    proxy.pause();
    proxy.sever();
    bob.expect(ended_with(&call, EndReason::RemoteNetworkError), "bob told REMOTE_NETWORK_ERROR").await;
    let waited = cut.elapsed();
    assert!(
        waited >= Duration::from_millis(LIVENESS - 200),
        "ended after {waited:?}: before the liveness timeout"
    );
    assert!(waited < Duration::from_millis(LIVENESS + 3_000), "ended after {waited:?}");
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(rec.end_reason, EndReason::RemoteNetworkError);

    // The app restarts (same device id, new client) and calls at once: no lock-out, nobody busy.
    let mut again = server.device("alice", "alice-phone").await;
    let started = again
        .client
        .start_call(&["bob"], CallType::Single, MediaType::Audio, Default::default())
        .await
        .expect("alice can call again at once");
    assert!(started.busy_users.is_empty(), "bob is not busy with the dead call");
    let second = started.call_id().clone();
    bob.answer(&second).await;
    again.expect(connected(&second), "connected").await;
    // Alice's record of the first call says NETWORK_ERROR.
    let page = again.client.get_call_records(-1, 10, RecordOrder::Desc).await.expect("records");
    let first = page.records.iter().find(|r| r.call.call_id == call).expect("the first call's record");
    assert_eq!(first.end_reason, EndReason::NetworkError);
    drop(alice);
    server.shutdown().await;
}

#[tokio::test]
async fn a_call_whose_peer_vanished_ends_at_its_last_sign_of_life() {
    const LIVENESS: u64 = 4_000;
    let server = TestServer::start(SwitchboardConfig {
        liveness_timeout_ms: LIVENESS as u32,
        heartbeat_interval_ms: 100,
        ..config()
    })
    .await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = server.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;
    let connected_at = Instant::now();
    // They talk for a second (the duration under test), then alice's phone vanishes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.pause();
    proxy.sever();
    let talked = connected_at.elapsed();
    bob.expect(ended_with(&call, EndReason::RemoteNetworkError), "bob told REMOTE_NETWORK_ERROR").await;
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    let duration = Duration::from_millis(u64::try_from(rec.duration_ms).expect("a duration"));
    // (The server started the call a few ms before the test saw it connected.)
    assert!(
        duration <= talked + Duration::from_millis(100),
        "{duration:?} counts the liveness timeout (talked {talked:?})"
    );
    // Alice's client pings at least every 0.5 s: her last sign of life is that recent.
    assert!(duration + Duration::from_millis(800) >= talked, "{duration:?} for {talked:?} of talk");
    drop(alice);
    server.shutdown().await;
}

#[tokio::test]
async fn a_black_holed_connection_is_noticed_by_liveness_and_the_device_learns_on_resume() {
    const LIVENESS: u64 = 600;
    let server = TestServer::start(SwitchboardConfig {
        liveness_timeout_ms: LIVENESS as u32,
        heartbeat_interval_ms: 100,
        resume_window_ms: 30_000,
        ..config()
    })
    .await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = server.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;

    // The path dies silently: no FIN, no RST, nothing gets through; no way back for now.
    let frozen = Instant::now();
    proxy.pause();
    proxy.freeze();
    bob.expect(ended_with(&call, EndReason::RemoteNetworkError), "bob told REMOTE_NETWORK_ERROR").await;
    let waited = frozen.elapsed();
    assert!(
        waited >= Duration::from_millis(LIVENESS - 200),
        "ended after {waited:?}: before the liveness timeout"
    );
    // Alice's client notices the silent server too, and tries to reconnect.
    alice.expect(state_is(ConnectionState::Reconnecting), "alice notices").await;

    // The network comes back within the resume window: alice learns what happened, once.
    proxy.resume();
    alice.expect(state_is(ConnectionState::Connected), "connected again").await;
    alice.expect(ended_with(&call, EndReason::NetworkError), "alice ended NETWORK_ERROR").await;
    let Event::ReceivedCallRecord(rec) = alice.expect(record_of(&call), "alice's record").await else {
        unreachable!()
    };
    assert_eq!(rec.end_reason, EndReason::NetworkError);
    alice.expect(summary_of(&call), "alice's summary").await;
    let log = alice.finish().await;
    assert_eq!(count(&log, ended(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, record_of(&call)), 1, "{log:#?}");
    assert_eq!(count(&log, summary_of(&call)), 1, "{log:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_answer_was_lost_is_answered_on_resume_and_done_once() {
    let server = TestServer::start(SwitchboardConfig { liveness_timeout_ms: 5_000, ..config() }).await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = server.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;

    // Answers to alice get lost; her requests still arrive.
    proxy.pause();
    proxy.freeze_downstream();
    let muting = {
        let client = alice.client.clone();
        tokio::spawn(async move { client.set_microphone_enabled(false).await })
    };
    bob.expect(|e| media_event(e) == Some(("microphone", true)), "the server did it").await;
    assert!(!muting.is_finished(), "the answer was lost");

    // The connection breaks; the resumed session answers the request instead of redoing it.
    proxy.sever();
    proxy.resume();
    timeout(WAIT, muting)
        .await
        .expect("answered after the resume")
        .expect("task")
        .expect("set_microphone_enabled");
    alice.expect(state_is(ConnectionState::Connected), "connected again").await;
    bob.client.set_camera_enabled(false).await.expect("bob's camera off");
    alice.expect(|e| media_event(e) == Some(("camera", true)), "the call goes on").await;
    alice.client.hangup(None).await.expect("hangup");
    bob.expect(ended(&call), "ended").await;
    let log = bob.finish().await;
    assert_eq!(count(&log, |e| media_event(e) == Some(("microphone", true))), 1, "done once: {log:#?}");
    server.shutdown().await;
}

/// Runs alice's client on its own runtime in a thread; on `die` the runtime is dropped with the
/// client inside: no Goodbye, sockets closed by the OS — a crashed app.
fn crashing_alice(
    endpoint: String,
    token: String,
    call_to: &'static str,
) -> (oneshot::Receiver<CallId>, oneshot::Sender<()>, oneshot::Receiver<()>, std::thread::JoinHandle<()>) {
    let (call_tx, call_rx) = oneshot::channel();
    let (die_tx, die_rx) = oneshot::channel::<()>();
    let (connected_tx, connected_rx) = oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let alice = rt.block_on(async move {
            let mut alice = Party::connect(&endpoint, &token, "alice", "alice-phone").await;
            let call = alice.call(call_to, MediaType::Audio).await;
            let _ = call_tx.send(call.clone());
            alice.expect(connected(&call), "alice connected").await;
            let _ = connected_tx.send(());
            let _ = die_rx.await;
            alice
        });
        // The runtime goes first: the client's task is dropped mid-flight, nothing is said.
        drop(rt);
        drop(alice);
    });
    (call_rx, die_tx, connected_rx, thread)
}

#[tokio::test]
async fn a_crashed_app_that_restarts_replaces_its_old_session_at_once() {
    // Liveness long: what ends the old call must be the new session, not the silence.
    let server = TestServer::start(SwitchboardConfig { liveness_timeout_ms: 30_000, ..config() }).await;
    let mut bob = server.user("bob").await;
    let (call_rx, die, alice_connected, thread) =
        crashing_alice(server.endpoint(), server.token("alice"), "bob");
    let call = timeout(WAIT, call_rx).await.expect("alice calls in time").expect("alice's thread");
    bob.answer(&call).await;
    timeout(WAIT, alice_connected).await.expect("alice connected in time").expect("alice's thread");

    let _ = die.send(());
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("alice's thread ends cleanly");
    let restarted = Instant::now();
    let mut alice = server.device("alice", "alice-phone").await;
    bob.expect(ended_with(&call, EndReason::RemoteNetworkError), "the old call ends").await;
    // Far below the 30 s liveness timeout, with room for a slow machine.
    assert!(restarted.elapsed() < Duration::from_secs(15), "ended by the new session, not by liveness");

    let second = alice.call("bob", MediaType::Audio).await;
    bob.answer(&second).await;
    alice.expect(connected(&second), "alice connected again").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_restart_keeps_records_and_ends_the_interrupted_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestServer::start_in(dir.path(), config()).await;
    let proxy = TcpProxy::start(first.addr()).await;
    let mut alice = first.device_via(&proxy.endpoint(), "alice", "alice-phone").await;
    let mut bob = first.device_via(&proxy.endpoint(), "bob", "bob-phone").await;

    let done = establish(&mut alice, &mut bob, MediaType::Audio).await;
    bob.client.hangup(None).await.expect("hangup");
    alice.expect(record_of(&done), "record of the finished call").await;
    bob.expect(record_of(&done), "record of the finished call").await;
    let live = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;

    first.shutdown().await;
    for party in [&mut alice, &mut bob] {
        party.expect(ended_with(&live, EndReason::EndedByServer), "ENDED_BY_SERVER").await;
        // A shutdown is not a kick: the client goes on trying to connect.
        party.expect(state_is(ConnectionState::Connecting), "reconnecting after the stop").await;
    }

    let second = TestServer::start_in(dir.path(), config()).await;
    proxy.retarget(second.addr());
    for (user, mut party) in [("alice", alice), ("bob", bob)] {
        party.expect(state_is(ConnectionState::Connected), "back on the restarted server").await;
        let kicked = |e: &Event| matches!(e, Event::ConnectionStateChanged(ConnectionState::Kicked(_)));
        assert_eq!(party.seen(kicked), 0, "{user}: {:#?}", party.log);
        // From here on, only what the restarted server sent.
        party.log.clear();
        let Event::ReceivedCallRecord(rec) =
            party.expect(record_of(&live), "record of the interrupted call").await
        else {
            unreachable!()
        };
        assert_eq!(rec.end_reason, EndReason::EndedByServer, "{user}");
        let Event::SummaryMessage(sum) =
            party.expect(summary_of(&live), "summary of the interrupted call").await
        else {
            unreachable!()
        };
        assert_eq!(sum.end_reason, EndReason::EndedByServer, "{user}");
        party.sync().await;
        assert_eq!(party.seen(record_of(&live)), 1, "{user}: {:#?}", party.log);
        assert_eq!(party.seen(record_of(&done)), 0, "{user}: an old record came again: {:#?}", party.log);

        let page = party.client.get_call_records(-1, 10, RecordOrder::Desc).await.expect("records");
        let ids: Vec<_> = page.records.iter().map(|r| r.call.call_id.clone()).collect();
        assert_eq!(ids, [live.clone(), done.clone()], "{user}: records intact");
        let old = &page.records[1];
        assert!(old.call.started_at_ms.is_some() && old.duration_ms >= 0, "{old:?}");
        assert_eq!(old.end_reason, if user == "alice" { EndReason::RemoteHangup } else { EndReason::Hangup });
        match party.client.get_call(&live).await {
            Ok(info) => assert!(info.is_ended(), "{user}: the interrupted call is not live: {info:?}"),
            Err(e) => assert_eq!(e.code, Code::CallNotFound, "{user}: {e}"),
        }
        // The call that ended before the restart is not in the restarted server's memory:
        // GetCall answers from the user's own record of it, the call as it ended.
        let info = party.client.get_call(&done).await.expect("an ended call, from the record");
        assert_eq!(info.call_id, done, "{user}");
        assert!(info.is_ended() && info.started_at_ms.is_some(), "{user}: {info:?}");
        let users: Vec<_> = info.participants.iter().map(|p| p.user_id.as_str()).collect();
        assert_eq!(users, ["alice", "bob"], "{user}");
        if user == "bob" {
            // Without the record, the call is not found, as for a stranger.
            party.client.delete_call_records(vec![done.clone()]).await.expect("delete");
            let gone = party.client.get_call(&done).await.expect_err("no record, no call");
            assert_eq!(gone.code, Code::CallNotFound);
        }
        party.finish().await;
    }
    let carol = second.user("carol").await;
    let stranger = carol.client.get_call(&done).await.expect_err("a stranger finds no call");
    assert_eq!(stranger.code, Code::CallNotFound);
    carol.finish().await;
    // And the restarted server serves calls.
    let mut alice = second.user("alice").await;
    let mut bob = second.user("bob").await;
    establish(&mut alice, &mut bob, MediaType::Audio).await;
    second.shutdown().await;
}

#[tokio::test]
async fn clients_ride_out_a_server_crash_and_get_the_interrupted_call_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    // The first server lives on its own runtime, dropped without shutdown: a crash.
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let server = TestServer::start_in(&path, config()).await;
            let _ = ready_tx.send((server.addr(), server.app().clone()));
            let _ = kill_rx.await;
            // Dropped without shutdown; the runtime's end stops everything mid-flight.
            drop(server);
        });
        drop(rt);
    });
    let (addr, app) = timeout(WAIT, ready_rx).await.expect("first server in time").expect("server thread");
    let token =
        |user: &str| token::mint(&app.app_key, &app.app_secret, user, now_secs(), 3600).expect("token");
    let proxy = TcpProxy::start(addr).await;
    let mut alice = Party::connect(&proxy.endpoint(), &token("alice"), "alice", "alice-phone").await;
    let mut bob = Party::connect(&proxy.endpoint(), &token("bob"), "bob", "bob-phone").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;
    // A storage query flushes the writer: the live call is on disk.
    alice.client.get_call_records(-1, 1, RecordOrder::Desc).await.expect("records");

    let _ = kill_tx.send(());
    tokio::task::spawn_blocking(move || thread.join()).await.expect("join").expect("server thread");
    for party in [&mut alice, &mut bob] {
        party.expect(state_is(ConnectionState::Reconnecting), "reconnecting").await;
    }

    let second = TestServer::start_in(dir.path(), config()).await;
    proxy.retarget(second.addr());
    for party in [&mut alice, &mut bob] {
        party.expect(state_is(ConnectionState::Connected), "connected to the new server").await;
        // The session could not be resumed: the phone says NETWORK_ERROR, and so do the
        // record and the summary.
        party.expect(ended_with(&call, EndReason::NetworkError), "the interrupted call ends").await;
        let Event::ReceivedCallRecord(rec) = party.expect(record_of(&call), "its record").await else {
            unreachable!()
        };
        assert_eq!(rec.end_reason, EndReason::NetworkError);
        let Event::SummaryMessage(sum) = party.expect(summary_of(&call), "its summary").await else {
            unreachable!()
        };
        assert_eq!(sum.end_reason, EndReason::NetworkError);
        party.sync().await;
        assert_eq!(party.seen(record_of(&call)), 1, "{:#?}", party.log);
        assert_eq!(party.seen(summary_of(&call)), 1, "{:#?}", party.log);
        assert!(party.client.current_call().is_none());
    }
    let again = alice.call("bob", MediaType::Audio).await;
    bob.expect(received(&again), "a new call after the crash").await;
    second.shutdown().await;
}
