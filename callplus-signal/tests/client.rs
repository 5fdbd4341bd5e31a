//! The async client against the real server on 127.0.0.1: a whole call, refused tokens, and a
//! TCP connection cut mid-call (through a severable proxy) that the client resumes.
//!
//! No sleeps stand in for synchronisation: every step waits for the event it needs, bounded by
//! a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_session::client::CallOptions;
use callplus_session::{
    CallId, CallState, CallType, Code, EndReason, MediaType, ParticipantState, RecordOrder,
};
use callplus_signal::client::{Client, ClientOptions, ConnectionState, Event, EventStream, TlsOptions};
use callplus_signal::server::{RunningServer, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout, timeout_at};

/// Upper bound for any single wait.
const WAIT: Duration = Duration::from_secs(10);

async fn start_server() -> RunningServer {
    Server::builder().in_memory().listen("127.0.0.1:0").no_admin().start().await.expect("server starts")
}

fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(server: &RunningServer, user: &str) -> String {
    let app = server.app_credentials();
    callplus_signal::token::mint(&app.app_key, &app.app_secret, user, now_secs(), 3600).unwrap()
}

fn options() -> ClientOptions {
    ClientOptions {
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..ClientOptions::default()
    }
}

/// A connected user with the log of every event it received.
struct Party {
    name: &'static str,
    client: Client,
    events: EventStream,
    log: Vec<Event>,
}

impl Party {
    async fn connect(name: &'static str, endpoint: &str, token: &str) -> Party {
        let (client, events) = Client::connect(endpoint, token, options()).await.expect("connects");
        assert_eq!(client.user_id().map(|u| u.to_string()).as_deref(), Some(name));
        assert_eq!(client.connection_state(), ConnectionState::Connected);
        Party { name, client, events, log: Vec::new() }
    }

    /// Takes events until one matches `pred`; panics (with the log) on timeout or stream end.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout_at(deadline, self.events.next()).await {
                Ok(Some(event)) => {
                    self.log.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("{}: stream ended waiting for {what}; log: {:#?}", self.name, self.log),
                Err(_) => panic!("{}: timed out waiting for {what}; log: {:#?}", self.name, self.log),
            }
        }
    }

    /// Disconnects and returns every event received, up to the end of the stream.
    async fn finish(mut self) -> Vec<Event> {
        timeout(WAIT, self.client.disconnect()).await.expect("disconnect completes");
        while let Some(event) = timeout(WAIT, self.events.next()).await.expect("stream ends after disconnect")
        {
            self.log.push(event);
        }
        assert_eq!(self.client.connection_state(), ConnectionState::Disconnected);
        self.log
    }
}

fn count(log: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    log.iter().filter(|e| pred(e)).count()
}

fn is_connected(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallConnected { session } if session.call_id() == call)
}

fn is_ended(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallEnded { session, .. } if session.call_id() == call)
}

fn is_record(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCallRecord(r) if &r.call.call_id == call)
}

/// alice calls bob; bob is told, rings, accepts; both connect. Returns the call id.
async fn establish(alice: &mut Party, bob: &mut Party) -> CallId {
    let started = alice
        .client
        .start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default())
        .await
        .expect("start_call");
    let call_id = started.call_id().clone();
    assert!(started.busy_users.is_empty());
    assert_eq!(alice.client.current_call().map(|s| s.call_id().clone()), Some(call_id.clone()));

    let received = bob.wait_for("received_call", |e| matches!(e, Event::ReceivedCall { .. })).await;
    let Event::ReceivedCall { session, inviter, .. } = received else { unreachable!() };
    assert_eq!(session.call_id(), &call_id);
    assert_eq!(inviter.as_str(), "alice");
    assert_eq!(session.state(), CallState::Incoming);

    bob.client.ringing(&call_id).await.expect("ringing");
    alice
        .wait_for("bob ringing", |e| {
            matches!(e, Event::RemoteUserStateChanged { user_id, state: ParticipantState::Ringing, .. }
                if user_id.as_str() == "bob")
        })
        .await;

    bob.client.accept(&call_id).await.expect("accept");
    bob.wait_for("bob connected", is_connected(&call_id)).await;
    alice.wait_for("alice connected", is_connected(&call_id)).await;
    assert_eq!(bob.client.current_call().map(|s| s.call_id().clone()), Some(call_id.clone()));
    call_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_accept_hangup_and_records() {
    let server = start_server().await;
    let url = endpoint(server.grpc_addr());
    let mut alice = Party::connect("alice", &url, &token(&server, "alice")).await;
    let mut bob = Party::connect("bob", &url, &token(&server, "bob")).await;
    assert!(!Client::version().is_empty());

    let call_id = establish(&mut alice, &mut bob).await;
    let info = alice.client.get_call(&call_id).await.expect("get_call");
    assert_eq!(info.call_id, call_id);
    assert!(info.started_at_ms.is_some());

    alice.client.hangup(None).await.expect("hangup");
    let ended = alice.wait_for("alice ended", is_ended(&call_id)).await;
    assert!(matches!(ended, Event::CallEnded { reason: EndReason::Hangup, .. }), "{ended:?}");
    let ended = bob.wait_for("bob ended", is_ended(&call_id)).await;
    assert!(matches!(ended, Event::CallEnded { reason: EndReason::RemoteHangup, .. }), "{ended:?}");
    assert!(alice.client.current_call().is_none());
    assert!(bob.client.current_call().is_none());

    for party in [&mut alice, &mut bob] {
        if !party.log.iter().any(is_record(&call_id)) {
            party.wait_for("call record", is_record(&call_id)).await;
        }
        let page = party.client.get_call_records(-1, 10, RecordOrder::Desc).await.expect("records");
        assert!(
            page.records.iter().any(|r| r.call.call_id == call_id),
            "{}: no record of {call_id} in {page:?}",
            party.name
        );
    }

    // Errors keep their SPEC codes.
    let err = alice.client.hangup(None).await.expect_err("no current call");
    assert_eq!(err.code, Code::NotInCall);
    let err =
        alice.client.start_call(&[] as &[&str], CallType::Single, MediaType::Audio, CallOptions::default());
    assert_eq!(err.await.expect_err("empty list").code, Code::UserListInvalid);
    let err = alice
        .client
        .start_call(&["bob", "carol"], CallType::Single, MediaType::Audio, CallOptions::default())
        .await
        .expect_err("two callees");
    assert_eq!(err.code, Code::SingleCallNotSupportMultiPerson);

    let alice_log = alice.finish().await;
    let bob_log = bob.finish().await;
    for (name, log) in [("alice", &alice_log), ("bob", &bob_log)] {
        assert_eq!(count(log, is_connected(&call_id)), 1, "{name}: {log:#?}");
        assert_eq!(count(log, is_ended(&call_id)), 1, "{name}: {log:#?}");
        assert_eq!(count(log, is_record(&call_id)), 1, "{name}: {log:#?}");
        assert!(matches!(log.last(), Some(Event::ConnectionStateChanged(ConnectionState::Disconnected))));
    }
    assert_eq!(count(&bob_log, |e| matches!(e, Event::ReceivedCall { .. })), 1);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn refused_tokens_and_unreachable_servers_fail_with_their_codes() {
    let server = start_server().await;
    let url = endpoint(server.grpc_addr());

    let err = Client::connect(&url, "not-a-token", options()).await.expect_err("garbage token");
    assert_eq!(err.code, Code::TokenInvalid, "{err}");

    let app = server.app_credentials();
    let forged =
        callplus_signal::token::mint(&app.app_key, "another-secret", "alice", now_secs(), 60).unwrap();
    let err = Client::connect(&url, &forged, options()).await.expect_err("bad signature");
    assert_eq!(err.code, Code::TokenInvalid, "{err}");

    let expired =
        callplus_signal::token::mint(&app.app_key, &app.app_secret, "alice", now_secs() - 7200, 60).unwrap();
    let err = Client::connect(&url, &expired, options()).await.expect_err("expired token");
    assert_eq!(err.code, Code::TokenExpired, "{err}");

    let foreign = callplus_signal::token::mint("app_other", "secret", "alice", now_secs(), 60).unwrap();
    let err = Client::connect(&url, &foreign, options()).await.expect_err("unknown app");
    assert_eq!(err.code, Code::TokenInvalid, "an unknown app is not told apart: {err}");

    // Nothing listens on a port that was just released.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let err =
        Client::connect(&endpoint(closed), &token(&server, "alice"), options()).await.expect_err("no server");
    assert_eq!(err.code, Code::NotConnected, "{err}");

    server.shutdown().await.expect("shutdown");
}

/// A TCP proxy whose connections the test can cut, and which can refuse new ones for a while.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    refusing: Arc<AtomicBool>,
    accept_task: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (l, r) = (links.clone(), refusing.clone());
        let accept_task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        })
        .abort_handle();
        Proxy { addr, links, refusing, accept_task }
    }

    /// Cuts every open connection (both sockets are dropped).
    fn sever(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn refuse_new(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.sever();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_survives_a_cut_tcp_connection() {
    let server = start_server().await;
    let proxy = Proxy::start(server.grpc_addr()).await;
    let mut alice = Party::connect("alice", &endpoint(proxy.addr), &token(&server, "alice")).await;
    let mut bob = Party::connect("bob", &endpoint(server.grpc_addr()), &token(&server, "bob")).await;
    let call_id = establish(&mut alice, &mut bob).await;

    // Cut alice's connection and keep her out while bob acts.
    proxy.refuse_new(true);
    proxy.sever();
    alice
        .wait_for("reconnecting", |e| {
            matches!(e, Event::ConnectionStateChanged(ConnectionState::Reconnecting))
        })
        .await;
    assert_eq!(alice.client.connection_state(), ConnectionState::Reconnecting);
    assert_eq!(alice.client.current_call().map(|s| s.call_id().clone()), Some(call_id.clone()));

    bob.client.set_microphone_enabled(false).await.expect("bob mutes while alice is away");
    // A request made while reconnecting is queued and answered after the resume.
    let queued = {
        let (client, call_id) = (alice.client.clone(), call_id.clone());
        tokio::spawn(async move { client.get_call(&call_id).await })
    };

    proxy.refuse_new(false);
    alice
        .wait_for("connected again", |e| {
            matches!(e, Event::ConnectionStateChanged(ConnectionState::Connected))
        })
        .await;
    alice
        .wait_for("bob's microphone", |e| {
            matches!(e, Event::RemoteMicrophoneStateChanged { user_id, disabled: true, .. } if user_id.as_str() == "bob")
        })
        .await;
    let info = timeout(WAIT, queued).await.expect("queued request completes").unwrap().expect("get_call");
    assert_eq!(info.call_id, call_id);
    assert!(info.ended_at_ms.is_none(), "the call survived the cut");

    // The call continues: alice's hangup after the resume reaches bob.
    alice.client.hangup(Some(&call_id)).await.expect("hangup after resume");
    let ended = bob.wait_for("bob ended", is_ended(&call_id)).await;
    assert!(matches!(ended, Event::CallEnded { reason: EndReason::RemoteHangup, .. }), "{ended:?}");
    let ended = alice.wait_for("alice ended", is_ended(&call_id)).await;
    assert!(matches!(ended, Event::CallEnded { reason: EndReason::Hangup, .. }), "{ended:?}");
    alice.wait_for("alice record", is_record(&call_id)).await;

    let alice_log = alice.finish().await;
    let bob_log = bob.finish().await;
    // Nothing lost, nothing twice.
    for (name, log) in [("alice", &alice_log), ("bob", &bob_log)] {
        assert_eq!(count(log, is_connected(&call_id)), 1, "{name}: {log:#?}");
        assert_eq!(count(log, is_ended(&call_id)), 1, "{name}: {log:#?}");
        assert_eq!(count(log, is_record(&call_id)), 1, "{name}: {log:#?}");
    }
    assert_eq!(
        count(&alice_log, |e| matches!(e, Event::RemoteMicrophoneStateChanged { .. })),
        1,
        "{alice_log:#?}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dropping_every_handle_says_goodbye() {
    let server = start_server().await;
    let url = endpoint(server.grpc_addr());
    let mut alice = Party::connect("alice", &url, &token(&server, "alice")).await;
    let bob = Party::connect("bob", &url, &token(&server, "bob")).await;
    let started = bob
        .client
        .start_call(&["alice"], CallType::Single, MediaType::AudioVideo, CallOptions::default())
        .await
        .expect("start_call");
    alice.wait_for("incoming", |e| matches!(e, Event::ReceivedCall { .. })).await;
    let Party { client, mut events, .. } = bob;
    drop(client);
    // bob's task says Goodbye: his call ends for alice at once, and his stream ends.
    let ended = alice.wait_for("bob gone", is_ended(started.call_id())).await;
    assert!(matches!(
        ended,
        Event::CallEnded { reason: EndReason::RemoteCancel | EndReason::RemoteHangup, .. }
    ));
    while timeout(WAIT, events.next()).await.expect("bob's stream ends").is_some() {}
    alice.finish().await;
    server.shutdown().await.expect("shutdown");
}

/// Reads lines of a child's stdout until one contains `needle`; returns all lines read.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match timeout(WAIT, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            other => panic!("no line with {needle:?} ({other:?}); output so far: {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn softphone_dial_and_listen() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt as _;
    use tokio::process::Command;

    let bin = env!("CARGO_BIN_EXE_callplus");
    for command in ["dial", "listen"] {
        let help = Command::new(bin).args([command, "--help"]).output().await.unwrap();
        assert!(help.status.success());
        assert!(String::from_utf8_lossy(&help.stdout).contains("--token"));
    }

    let server = start_server().await;
    let url = endpoint(server.grpc_addr());
    let bob_token = token(&server, "bob");
    let mut listen = Command::new(bin)
        .args(["listen", "--server", &url, "--token", &bob_token, "--auto-accept", "--exit-after-calls", "1"])
        .env_remove("CALLPLUS_DEVICE_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(listen.stdout.take().unwrap()).lines();
    let mut listen_out = read_until(&mut lines, "waiting for calls").await;

    let alice_token = token(&server, "alice");
    let dial = Command::new(bin)
        .args(["dial", "--server", &url, "--token", &alice_token, "--hangup-after-secs", "0", "bob"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let dial = timeout(WAIT, dial).await.expect("dial exits").unwrap();
    let dial_out = String::from_utf8_lossy(&dial.stdout);
    assert!(dial.status.success(), "{dial_out}\n{}", String::from_utf8_lossy(&dial.stderr));
    assert!(dial_out.contains("[alice] call") && dial_out.contains("ringing at bob"), "{dial_out}");
    assert!(dial_out.contains("ended: HANGUP"), "{dial_out}");

    listen_out.extend(read_until(&mut lines, "ended: REMOTE_HANGUP").await);
    while let Ok(Ok(Some(line))) = timeout(WAIT, lines.next_line()).await {
        listen_out.push(line);
    }
    let status = timeout(WAIT, listen.wait()).await.expect("listen exits").unwrap();
    assert!(status.success(), "{listen_out:#?}");
    assert!(listen_out.iter().any(|l| l.starts_with("[bob] incoming 1:1 audio call")), "{listen_out:#?}");
    assert!(
        listen_out.iter().any(|l| l.contains("connected") && l.contains("[bob] call")),
        "{listen_out:#?}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_kicked_client_stops_and_does_not_reconnect() {
    use callplus_session::switchboard::{DevicePolicy, SwitchboardConfig};

    let config =
        SwitchboardConfig { device_policy: DevicePolicy::SingleDevice, ..SwitchboardConfig::default() };
    let server =
        Server::builder().in_memory().listen("127.0.0.1:0").no_admin().config(config).start().await.unwrap();
    let url = endpoint(server.grpc_addr());
    let mut first = Party::connect("alice", &url, &token(&server, "alice")).await;
    let second = Party::connect("alice", &url, &token(&server, "alice")).await;
    first
        .wait_for("kicked", |e| {
            matches!(e, Event::ConnectionStateChanged(ConnectionState::Kicked(EndReason::KickedOtherLogin)))
        })
        .await;
    // The stream ends and nothing tries to reconnect (which would kick the second device).
    while timeout(WAIT, first.events.next()).await.expect("the kicked stream ends").is_some() {}
    assert!(matches!(first.client.connection_state(), ConnectionState::Kicked(_)));
    let err = first.client.get_available_calls().await.expect_err("a kicked client is stopped");
    assert_eq!(err.code, Code::NotConnected);
    assert_eq!(second.client.connection_state(), ConnectionState::Connected);
    assert!(second.client.get_available_calls().await.expect("still serving the new device").is_empty());
    second.finish().await;
    server.shutdown().await.expect("shutdown");
}

/// The value after `label` on the first banner line holding it.
fn banner_value(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {label:?} in the banner: {lines:#?}"))
}

#[tokio::test]
async fn serve_and_dial_over_tls_from_the_command_line() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt as _;
    use tokio::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();

    let bin = env!("CARGO_BIN_EXE_callplus");
    let mut serve = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--admin-tls"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("CALLPLUS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let banner = read_until(&mut lines, "Stop with Ctrl-C").await;
    let url = banner_value(&banner, "gRPC (devices):");
    assert!(url.starts_with("https://127.0.0.1:"), "{banner:#?}");
    let ws_url = banner_value(&banner, "WebSocket:");
    assert_eq!(ws_url, format!("{}/v1/ws", url.replacen("https://", "wss://", 1)), "{banner:#?}");
    assert!(banner_value(&banner, "admin API:").starts_with("https://127.0.0.1:"), "{banner:#?}");
    let (app_key, app_secret) = (banner_value(&banner, "app key:"), banner_value(&banner, "app secret:"));
    let mint =
        |user: &str| callplus_signal::token::mint(&app_key, &app_secret, user, now_secs(), 3600).unwrap();

    // Bob, in Rust, trusts the certificate and checks it for the name it carries.
    let tls = TlsOptions::default().with_ca_pem(made.cert.pem()).with_domain("localhost");
    let (bob, mut bob_events) =
        Client::connect(&url, &mint("bob"), options().with_tls(tls)).await.expect("bob connects over TLS");
    // Alice dials from the command line with the same trust.
    let dial = Command::new(bin)
        .args(["dial", "--server", &url, "--token", &mint("alice"), "--tls-domain", "localhost"])
        .arg("--tls-ca")
        .arg(&cert)
        .args(["--hangup-after-secs", "0", "bob"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let answer = async {
        loop {
            match timeout(WAIT, bob_events.next()).await.expect("bob is rung").expect("events go on") {
                Event::ReceivedCall { session, .. } => {
                    bob.accept(session.call_id()).await.expect("accept");
                    return;
                }
                _ => continue,
            }
        }
    };
    let (dial, ()) = tokio::join!(timeout(WAIT, dial), answer);
    let dial = dial.expect("dial exits").unwrap();
    let dial_out = String::from_utf8_lossy(&dial.stdout);
    assert!(dial.status.success(), "{dial_out}\n{}", String::from_utf8_lossy(&dial.stderr));
    assert!(dial_out.contains("signed in to https://"), "{dial_out}");
    assert!(dial_out.contains("ended: HANGUP"), "{dial_out}");

    // Without the CA the command line refuses the server's certificate.
    let untrusted = Command::new(bin)
        .args(["dial", "--server", &url, "--token", &mint("carol"), "bob"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let untrusted = timeout(WAIT, untrusted).await.expect("dial exits").unwrap();
    assert!(!untrusted.status.success());
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("certificate"), "{untrusted:?}");
}
