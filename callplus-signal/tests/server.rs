//! The server over real sockets on 127.0.0.1: Hello and token checks, invalid frames, the admin
//! API, metrics, and a restart on the same data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;
use callplus_proto::v1::server_frame::Body as ServerBody;
use callplus_proto::v1::signal_client::SignalClient;
use callplus_session::switchboard::SwitchboardConfig;
use callplus_signal::server::{RunningServer, Server, sign_request};
use callplus_signal::token;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

/// Longest wait for any expected frame or reply.
const WAIT: Duration = Duration::from_secs(10);

async fn start(dir: &std::path::Path) -> RunningServer {
    Server::builder()
        .data_dir(dir)
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .hello_timeout(Duration::from_millis(500))
        .start()
        .await
        .expect("server starts")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// One raw signalling stream.
struct Stream {
    tx: mpsc::Sender<pb::ClientFrame>,
    rx: tonic::Streaming<pb::ServerFrame>,
}

impl Stream {
    async fn open(addr: SocketAddr) -> Stream {
        Stream::open_with(tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap()).await
    }

    async fn open_with(endpoint: tonic::transport::Endpoint) -> Stream {
        let channel = endpoint.connect().await.expect("connects");
        let mut client = SignalClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let response = tokio::time::timeout(WAIT, client.connect(ReceiverStream::new(rx)))
            .await
            .expect("response headers in time")
            .expect("stream opens");
        Stream { tx, rx: response.into_inner() }
    }

    async fn send(&self, request_id: u64, body: Option<Body>) {
        self.tx.send(pb::ClientFrame { seq: 0, ack: 0, request_id, body }).await.expect("stream open");
    }

    async fn hello(&self, request_id: u64, token: &str) {
        let hello = pb::Hello {
            token: token.to_owned(),
            device_id: "test-device".into(),
            resume: None,
            client_version: "tests".into(),
        };
        self.send(request_id, Some(Body::Hello(hello))).await;
    }

    /// The next frame, or `None` when the server ended the stream.
    async fn next(&mut self) -> Option<pb::ServerFrame> {
        match tokio::time::timeout(WAIT, self.rx.message()).await.expect("a frame or the end in time") {
            Ok(frame) => frame,
            Err(status) => panic!("stream failed: {status}"),
        }
    }

    /// The next frame's response (skipping events).
    async fn response(&mut self) -> pb::Response {
        loop {
            match self.next().await.expect("a response").body {
                Some(ServerBody::Response(r)) => return r,
                Some(ServerBody::Event(_)) => continue,
                other => panic!("expected a response, got {other:?}"),
            }
        }
    }
}

async fn welcome(addr: SocketAddr, token: &str) -> Stream {
    welcome_as(addr, token, "alice").await
}

async fn welcome_as(addr: SocketAddr, token: &str, user: &str) -> Stream {
    let mut s = Stream::open(addr).await;
    s.hello(1, token).await;
    match s.next().await.and_then(|f| f.body) {
        Some(ServerBody::Welcome(w)) => assert_eq!(w.user_id, user),
        other => panic!("expected Welcome, got {other:?}"),
    }
    s
}

/// `token` with the app field of its payload replaced (the signature is left as it was).
fn with_app(token: &str, app_key: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["app"] = app_key.into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    format!("cp1.{payload}.{}", parts[2])
}

async fn refused(addr: SocketAddr, token: &str) -> pb::Response {
    let mut s = Stream::open(addr).await;
    s.hello(7, token).await;
    let r = s.response().await;
    assert_eq!(r.request_id, 7);
    assert!(s.next().await.is_none(), "the stream ends after a refusal");
    r
}

#[tokio::test]
async fn hello_with_a_valid_token_is_welcomed_and_pings_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut s = welcome(server.grpc_addr(), &token).await;
    s.send(0, Some(Body::Ping(pb::Ping {}))).await;
    assert!(matches!(s.next().await.and_then(|f| f.body), Some(ServerBody::Pong(_))));
    drop(s);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_expired_and_foreign_tokens_are_refused_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.grpc_addr();
    let app = server.app_credentials().clone();

    let r = refused(addr, "not-a-token").await;
    assert_eq!(r.code, pb::ResultCode::TokenInvalid as i32, "{r:?}");

    let forged = token::mint(&app.app_key, "another-secret", "alice", now_secs(), 60).unwrap();
    assert_eq!(refused(addr, &forged).await.code, pb::ResultCode::TokenInvalid as i32);

    let expired = token::mint(&app.app_key, &app.app_secret, "alice", now_secs() - 7200, 3600).unwrap();
    assert_eq!(refused(addr, &expired).await.code, pb::ResultCode::TokenExpired as i32);

    // Whether an app key exists cannot be probed: a token of an unknown app, or one whose app
    // field was altered (to a key that exists or to one that does not), is refused exactly as a
    // forged one is.
    let forged_refusal = refused(addr, &forged).await;
    let other = token::generate_app();
    let foreign = token::mint(&other.app_key, &other.app_secret, "alice", now_secs(), 60).unwrap();
    let good = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    for (what, token) in [
        ("foreign app", foreign.clone()),
        ("app altered to an unknown key", with_app(&good, "app_nobody")),
        ("app altered to this server's key", with_app(&foreign, &app.app_key)),
    ] {
        let r = refused(addr, &token).await;
        assert_eq!(r.code, pb::ResultCode::TokenInvalid as i32, "{what}: {r:?}");
        assert_eq!(r.message, forged_refusal.message, "{what}: the refusal tells nothing more");
        assert!(!r.message.contains("app_"), "{what}: {}", r.message);
    }

    // A 200 KB token is not a token either (not a parameter error).
    let huge = format!("cp1.{}.x", "A".repeat(200_000));
    let r = refused(addr, &huge).await;
    assert_eq!(r.code, pb::ResultCode::TokenInvalid as i32, "{r:?}");

    // The server still serves good tokens.
    let good = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    drop(welcome(addr, &good).await);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_first_frame_must_be_a_hello_sent_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;

    let mut s = Stream::open(server.grpc_addr()).await;
    s.send(3, Some(Body::Ping(pb::Ping {}))).await;
    let r = s.response().await;
    assert_eq!((r.request_id, r.code), (3, pb::ResultCode::InvalidState as i32));
    assert!(s.next().await.is_none());

    // Silent stream: closed after the Hello timeout (500 ms here).
    let mut s = Stream::open(server.grpc_addr()).await;
    assert_eq!(s.response().await.code, pb::ResultCode::Timeout as i32);
    assert!(s.next().await.is_none());

    // An oversized Hello is refused without being decoded.
    let mut s = Stream::open(server.grpc_addr()).await;
    s.hello(4, &"x".repeat(callplus_session::limits::MAX_FRAME_BYTES + 1)).await;
    assert_eq!(s.response().await.code, pb::ResultCode::MessageTooLarge as i32);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_frame_without_body_gets_frame_invalid_and_the_stream_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut s = welcome(server.grpc_addr(), &token).await;

    s.send(42, None).await;
    let r = s.response().await;
    assert_eq!((r.request_id, r.code), (42, pb::ResultCode::FrameInvalid as i32), "{r:?}");

    s.send(0, Some(Body::Ping(pb::Ping {}))).await;
    loop {
        match s.next().await.and_then(|f| f.body) {
            Some(ServerBody::Pong(_)) => break,
            Some(ServerBody::Event(_) | ServerBody::Response(_)) => continue,
            other => panic!("expected Pong, got {other:?}"),
        }
    }
    drop(s);
    server.shutdown().await.unwrap();
}

async fn post_token(
    http: &reqwest::Client,
    admin: &str,
    app_key: &str,
    secret: &str,
    nonce: &str,
    timestamp: u64,
    body: &str,
) -> reqwest::Response {
    let ts = timestamp.to_string();
    http.post(format!("{admin}/v1/tokens"))
        .header("X-App-Key", app_key)
        .header("X-Nonce", nonce)
        .header("X-Timestamp", &ts)
        .header("X-Signature", sign_request(secret, "/v1/tokens", nonce, &ts, body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("admin answers")
}

#[tokio::test]
async fn admin_api_mints_tokens_for_signed_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin = server.admin_url().unwrap();
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    let admin = admin.as_str();
    let app = server.app_credentials().clone();
    let http = reqwest::Client::new();
    let body = r#"{"user_id":"alice","ttl_secs":3600}"#;

    let ok = post_token(&http, admin, &app.app_key, &app.app_secret, "n-1", now_secs(), body).await;
    assert_eq!(ok.status(), 200);
    let reply: serde_json::Value = ok.json().await.unwrap();
    let minted = reply["token"].as_str().unwrap();
    let claims = token::verify(minted, &app.app_secret, now_secs()).unwrap();
    assert_eq!(claims.user_id, "alice");
    assert_eq!(reply["expires_at"].as_u64(), Some(claims.expires_at));
    drop(welcome(server.grpc_addr(), minted).await);

    let bad_sig = post_token(&http, admin, &app.app_key, "wrong-secret", "n-2", now_secs(), body).await;
    assert_eq!(bad_sig.status(), 401);
    let err: serde_json::Value = bad_sig.json().await.unwrap();
    assert!(err["error"].is_string());

    let stale = post_token(&http, admin, &app.app_key, &app.app_secret, "n-3", now_secs() - 600, body).await;
    assert_eq!(stale.status(), 401);

    let replay = post_token(&http, admin, &app.app_key, &app.app_secret, "n-1", now_secs(), body).await;
    assert_eq!(replay.status(), 401, "a nonce is used once");

    // A captured request cannot be turned into a new one by moving characters between the
    // nonce and the timestamp (a leading 0 or + once kept the timestamp's value).
    let ts = now_secs().to_string();
    let signature = sign_request(&app.app_secret, "/v1/tokens", "n-60", &ts, body.as_bytes());
    let send = |nonce: &str, timestamp: String| {
        http.post(format!("{admin}/v1/tokens"))
            .header("X-App-Key", &app.app_key)
            .header("X-Nonce", nonce)
            .header("X-Timestamp", timestamp)
            .header("X-Signature", &signature)
            .body(body)
            .send()
    };
    assert_eq!(send("n-60", ts.clone()).await.unwrap().status(), 200);
    for (nonce, timestamp) in
        [("n-6", format!("0{ts}")), ("n-", format!("60{ts}")), ("n-6", format!("0+{ts}"))]
    {
        let split = send(nonce, timestamp.clone()).await.unwrap();
        assert_eq!(split.status(), 401, "nonce {nonce:?} with timestamp {timestamp:?}");
    }
    let signature = sign_request(&app.app_secret, "/v1/tokens", "n-61+", &ts, body.as_bytes());
    let plus = http
        .post(format!("{admin}/v1/tokens"))
        .header("X-App-Key", &app.app_key)
        .header("X-Nonce", "n-61")
        .header("X-Timestamp", format!("+{ts}"))
        .header("X-Signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(plus.status(), 401, "a signed timestamp is not a timestamp");

    let unknown = post_token(&http, admin, "app_nobody", "x", "n-4", now_secs(), body).await;
    assert_eq!(unknown.status(), 401);

    let bad_user = r#"{"user_id":"no spaces allowed"}"#;
    let r = post_token(&http, admin, &app.app_key, &app.app_secret, "n-5", now_secs(), bad_user).await;
    assert_eq!(r.status(), 400);

    let unsigned = http.post(format!("{admin}/v1/tokens")).body(body).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_and_health_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let s = welcome(server.grpc_addr(), &token).await;
    let admin = server.admin_addr().unwrap();
    let http = reqwest::Client::new();

    let health = http.get(format!("http://{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let metrics = http.get(format!("http://{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "callplus_connected_devices",
        "callplus_live_calls",
        "callplus_calls_started_total",
        "callplus_frames_in_total",
        "callplus_frames_out_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("callplus_connected_devices 1"), "{text}");
    drop(s);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path()).await;
    assert!(first.created_app());
    let app = first.app_credentials().clone();
    let token = first.mint_token("alice", Duration::from_secs(600)).unwrap();
    let mut s = welcome(first.grpc_addr(), &token).await;
    first.shutdown().await.unwrap();
    // The old stream was ended by the shutdown (after any goodbye frames).
    while s.next().await.is_some() {}

    let second = start(dir.path()).await;
    assert!(!second.created_app());
    assert_eq!(second.app_credentials().app_key, app.app_key);
    assert_eq!(second.app_credentials().app_secret, app.app_secret);
    drop(welcome(second.grpc_addr(), &token).await);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_memory_server_without_admin() {
    let server = Server::builder().in_memory().listen("127.0.0.1:0").no_admin().start().await.unwrap();
    assert!(server.admin_addr().is_none());
    assert!(server.data_dir().is_none());
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    drop(welcome(server.grpc_addr(), &token).await);
    server.shutdown().await.unwrap();
}

impl Stream {
    /// Sends a reliable request (`seq` numbers them per session).
    async fn request(&self, seq: u64, request_id: u64, body: Body) {
        self.tx
            .send(pb::ClientFrame { seq, ack: 0, request_id, body: Some(body) })
            .await
            .expect("stream open");
    }

    /// Frames until the response to `request_id`; the events seen on the way are returned too.
    async fn response_to(&mut self, request_id: u64) -> (pb::Response, Vec<pb::Event>) {
        let mut events = Vec::new();
        loop {
            match self.next().await.expect("a response").body {
                Some(ServerBody::Response(r)) if r.request_id == request_id => return (r, events),
                Some(ServerBody::Event(e)) => events.push(e),
                _ => {}
            }
        }
    }

    /// Events until one matches.
    async fn event_where(&mut self, what: impl Fn(&pb::event::Kind) -> bool) -> pb::event::Kind {
        loop {
            if let Some(ServerBody::Event(pb::Event { kind: Some(kind) })) =
                self.next().await.expect("an event").body
                && what(&kind)
            {
                return kind;
            }
        }
    }
}

fn start_call_to(callee: &str) -> Body {
    Body::StartCall(pb::StartCall {
        callee_ids: vec![callee.to_owned()],
        call_type: pb::CallType::Single as i32,
        media_type: pb::MediaType::Audio as i32,
        push_config: Some(pb::PushConfig { title: "Incoming call".into(), ..Default::default() }),
        extra: "hello".into(),
        ring_timeout_ms: None,
    })
}

fn started_call_id(r: &pb::Response) -> String {
    assert_eq!(r.code, pb::ResultCode::Success as i32, "{r:?}");
    match &r.result {
        Some(pb::response::Result::Started(s)) => s.call.as_ref().unwrap().call_id.clone(),
        Some(pb::response::Result::Call(c)) => c.call_id.clone(),
        other => panic!("expected a started call, got {other:?}"),
    }
}

async fn records(s: &mut Stream, seq: u64, request_id: u64) -> Vec<pb::CallRecord> {
    let get = pb::GetCallRecords { sync_time: -1, count: 100, order: pb::RecordOrder::Desc as i32 };
    s.request(seq, request_id, Body::GetCallRecords(get)).await;
    let (r, _) = s.response_to(request_id).await;
    assert_eq!(r.code, pb::ResultCode::Success as i32, "{r:?}");
    match r.result {
        Some(pb::response::Result::Records(page)) => page.records,
        other => panic!("expected records, got {other:?}"),
    }
}

/// A local webhook receiver; every JSON body it gets arrives on the channel.
async fn webhook() -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    webhook_answering(axum::http::StatusCode::OK).await
}

/// A webhook receiver that answers every request with `status`.
async fn webhook_answering(
    status: axum::http::StatusCode,
) -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/push"), rx)
}

#[tokio::test]
async fn offline_callee_is_pushed_and_gets_the_record_later() {
    let (url, mut pushes) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .data_dir(dir.path())
        .listen("127.0.0.1:0")
        .no_admin()
        .push_webhook(url)
        .start()
        .await
        .unwrap();
    let alice_token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let bob_token = server.mint_token("bob", Duration::from_secs(60)).unwrap();
    let mut alice = welcome(server.grpc_addr(), &alice_token).await;

    alice.request(1, 10, start_call_to("bob")).await;
    let call_id = started_call_id(&alice.response_to(10).await.0);

    let push = tokio::time::timeout(WAIT, pushes.recv()).await.expect("push in time").unwrap();
    assert_eq!(push["app_key"], server.app_credentials().app_key.as_str());
    assert_eq!(push["callee"], "bob");
    assert_eq!(push["caller"], "alice");
    assert_eq!(push["call_id"], call_id.as_str());
    assert_eq!(push["media_type"], "AUDIO");
    assert_eq!(push["extra"], "hello");
    assert_eq!(push["push_config"]["title"], "Incoming call");

    alice.request(2, 11, Body::Hangup(pb::Hangup { call_id: call_id.clone(), push_config: None })).await;
    let (r, _) = alice.response_to(11).await;
    assert_eq!(r.code, pb::ResultCode::Success as i32, "{r:?}");

    // Bob comes online later: the stored record reaches him, and his call log has it.
    let mut bob = welcome_as(server.grpc_addr(), &bob_token, "bob").await;
    let record =
        bob.event_where(|k| matches!(k, pb::event::Kind::CallRecord(r) if r.call_id == call_id)).await;
    let pb::event::Kind::CallRecord(record) = record else { unreachable!() };
    assert_eq!(record.owner_id, "bob");
    assert_eq!(record.end_reason, pb::EndReason::RemoteCancel as i32);
    let log = records(&mut bob, 1, 20).await;
    assert!(log.iter().any(|r| r.call_id == call_id), "{log:?}");
    let log = records(&mut alice, 3, 12).await;
    assert!(log.iter().any(|r| r.call_id == call_id && r.end_reason == pb::EndReason::Cancel as i32));
    drop((alice, bob));
    server.shutdown().await.unwrap();
}

#[test]
fn calls_interrupted_by_a_crash_end_with_network_error_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // A server that dies without shutdown: its runtime is dropped with the call ringing.
    let (token, call_id) = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let server =
                Server::builder().data_dir(&path).listen("127.0.0.1:0").no_admin().start().await.unwrap();
            let token = server.mint_token("alice", Duration::from_secs(600)).unwrap();
            let mut alice = welcome(server.grpc_addr(), &token).await;
            alice.request(1, 10, start_call_to("bob")).await;
            let call_id = started_call_id(&alice.response_to(10).await.0);
            (token, call_id)
        })
    })
    .join()
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server =
            Server::builder().data_dir(dir.path()).listen("127.0.0.1:0").no_admin().start().await.unwrap();
        let mut alice = welcome(server.grpc_addr(), &token).await;
        let log = records(&mut alice, 1, 10).await;
        let record = log.iter().find(|r| r.call_id == call_id).expect("the interrupted call has a record");
        assert_eq!(record.end_reason, pb::EndReason::NetworkError as i32);
        assert!(server.storage().active_calls().unwrap().is_empty(), "the saved call is forgotten");
        drop(alice);
        server.shutdown().await.unwrap();
    });
}

#[tokio::test]
async fn graceful_shutdown_ends_live_calls_and_keeps_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let token = server.mint_token("alice", Duration::from_secs(600)).unwrap();
    let mut alice = welcome(server.grpc_addr(), &token).await;
    alice.request(1, 10, start_call_to("bob")).await;
    let call_id = started_call_id(&alice.response_to(10).await.0);
    server.shutdown().await.unwrap();
    // Alice is told the server stopped, then the stream ends.
    alice.event_where(|k| matches!(k, pb::event::Kind::Kicked(_))).await;
    while alice.next().await.is_some() {}

    let server = start(dir.path()).await;
    assert!(server.storage().active_calls().unwrap().is_empty());
    let mut alice = welcome(server.grpc_addr(), &token).await;
    let log = records(&mut alice, 1, 10).await;
    let record = log.iter().find(|r| r.call_id == call_id).expect("record kept");
    assert_eq!(record.end_reason, pb::EndReason::EndedByServer as i32);
    drop(alice);
    server.shutdown().await.unwrap();
}

/// A server on `dir` with `options`, its device and admin ports on 127.0.0.1.
async fn start_with(dir: &std::path::Path, options: callplus_signal::server::ServerOptions) -> RunningServer {
    Server::builder()
        .data_dir(dir)
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .options(options)
        .start()
        .await
        .unwrap()
}

/// Waits (up to `WAIT`) until the server's `/metrics` holds `line`.
async fn metric_reaches(server: &RunningServer, line: &str, what: &str) {
    let metrics = format!("http://{}/metrics", server.admin_addr().unwrap());
    let http = reqwest::Client::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let text = http.get(&metrics).send().await.unwrap().text().await.unwrap();
            if text.contains(line) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect(what);
}

/// A webhook that answers the first body only once `release` fires (the others at once), and
/// records every body as it arrives with whether the first had been answered by then.
async fn webhook_holding_the_first()
-> (String, mpsc::UnboundedReceiver<(serde_json::Value, bool)>, oneshot::Sender<()>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (tx, rx) = mpsc::unbounded_channel();
    let (release, released) = oneshot::channel::<()>();
    let held = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let first_answered = Arc::new(AtomicBool::new(false));
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (tx, held, first_answered) = (tx.clone(), held.clone(), first_answered.clone());
            async move {
                let _ = tx.send((body, first_answered.load(Ordering::SeqCst)));
                if let Some(released) = held.lock().await.take() {
                    let _ = released.await;
                    first_answered.store(true, Ordering::SeqCst);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/push"), rx, release)
}

/// The webhook is still busy with an invitation when the caller hangs up: the cancellation
/// waits for it (the metrics count the wait) and is posted only after the invitation's answer.
#[tokio::test]
async fn a_cancellation_waits_for_the_invitation_still_in_flight() {
    let (url, mut pushes, release) = webhook_holding_the_first().await;
    let dir = tempfile::tempdir().unwrap();
    let options = callplus_signal::server::ServerOptions { push_webhook: Some(url), ..Default::default() };
    let server = start_with(dir.path(), options).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut alice = welcome(server.grpc_addr(), &token).await;
    alice.request(1, 10, start_call_to("bob")).await;
    let call_id = started_call_id(&alice.response_to(10).await.0);
    let (invite, _) =
        tokio::time::timeout(WAIT, pushes.recv()).await.expect("the invitation in time").unwrap();
    assert_eq!(invite["kind"], "invite");

    let cancel_config = pb::PushConfig { title: "Missed call".into(), ..Default::default() };
    alice
        .request(
            2,
            11,
            Body::Hangup(pb::Hangup { call_id: call_id.clone(), push_config: Some(cancel_config) }),
        )
        .await;
    alice.response_to(11).await;
    metric_reaches(&server, "callplus_push_waits_total 1", "the cancellation queued behind the invitation")
        .await;
    assert!(pushes.try_recv().is_err(), "nothing posted while the invitation is in flight");

    release.send(()).unwrap();
    let (cancel, after_the_invitation) =
        tokio::time::timeout(WAIT, pushes.recv()).await.expect("the cancellation in time").unwrap();
    assert!(after_the_invitation, "the cancellation arrived while the invitation was unanswered");
    assert_eq!(
        (&cancel["kind"], &cancel["call_id"]),
        (&"cancel".into(), &call_id.as_str().into()),
        "{cancel}"
    );
    assert_eq!(cancel["push_config"]["title"], "Missed call");
    drop(alice);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_push_is_not_retried_once_the_call_ended() {
    let (url, mut pushes) = webhook_answering(axum::http::StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = tempfile::tempdir().unwrap();
    let options = callplus_signal::server::ServerOptions {
        push_webhook: Some(url),
        push_attempts: 5,
        push_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let server = start_with(dir.path(), options).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut alice = welcome(server.grpc_addr(), &token).await;
    alice.request(1, 10, start_call_to("bob")).await;
    let call_id = started_call_id(&alice.response_to(10).await.0);
    let first = tokio::time::timeout(WAIT, pushes.recv()).await.expect("first try in time").unwrap();
    assert_eq!(first["kind"], "invite");
    alice.request(2, 11, Body::Hangup(pb::Hangup { call_id, push_config: None })).await;
    alice.response_to(11).await;

    // The next try finds the call ended and gives up: the metrics say so, the webhook saw one try.
    metric_reaches(&server, r#"callplus_pushes_total{result="skipped_ended"} 1"#, "push given up in time")
        .await;
    // (A hangup without push settings pushes no cancellation either.)
    assert!(pushes.try_recv().is_err(), "no second try for an ended call");
    drop(alice);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_streams_that_never_said_hello() {
    let server = Server::builder()
        .in_memory()
        .listen("127.0.0.1:0")
        .no_admin()
        .hello_timeout(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let mut silent = Stream::open(server.grpc_addr()).await;
    tokio::time::timeout(Duration::from_secs(3), server.shutdown())
        .await
        .expect("shutdown is prompt")
        .unwrap();
    assert!(silent.next().await.is_none(), "the silent stream was closed");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_without_stalling_others() {
    let server = Server::builder()
        .in_memory()
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .config(SwitchboardConfig { max_unacked_frames: 8, ..SwitchboardConfig::default() })
        .outbound_queue(8)
        .start()
        .await
        .unwrap();
    let slow_token = server.mint_token("slow", Duration::from_secs(60)).unwrap();
    // Small HTTP/2 windows, so the transport buffers little of what the client does not read.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024);
    let mut slow = Stream::open_with(endpoint).await;
    slow.hello(1, &slow_token).await;
    assert!(matches!(slow.next().await.and_then(|f| f.body), Some(ServerBody::Welcome(_))));
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut alice = welcome(server.grpc_addr(), &token).await;

    // The slow client asks for far more Pongs than its transport buffers hold, and never reads.
    let flood = async {
        for _ in 0..100_000 {
            if slow
                .tx
                .send(pb::ClientFrame { body: Some(Body::Ping(pb::Ping {})), ..Default::default() })
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, flood).await.expect("the server keeps reading");

    // Others are still served at once.
    alice.send(0, Some(Body::Ping(pb::Ping {}))).await;
    loop {
        if let Some(ServerBody::Pong(_)) = alice.next().await.and_then(|f| f.body) {
            break;
        }
    }
    let metrics = format!("http://{}/metrics", server.admin_addr().unwrap());
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(text.contains("callplus_slow_consumers_total 1"), "{text}");
    drop((slow, alice));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_admin_api_can_be_served_over_tls() {
    use callplus_signal::server::ServerTls;

    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let tls = ServerTls::from_pem(made.cert.pem(), made.signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .data_dir(dir.path())
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .tls(tls.clone())
        .admin_tls(tls)
        .start()
        .await
        .expect("server starts");
    let admin = server.admin_url().unwrap();
    assert!(admin.starts_with("https://127.0.0.1:"), "{admin}");
    let ca = reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap();
    // The timeout is shorter than the server's handshake timeout (10 s): a request waiting
    // behind the silent connection below would fail.
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // A client that holds a TCP connection open without a handshake does not block others.
    let silent = tokio::net::TcpStream::connect(server.admin_addr().unwrap()).await.unwrap();
    let health = https.get(format!("{admin}/healthz")).send().await.expect("healthz over TLS");
    assert_eq!(health.status(), 200);
    drop(silent);

    let app = server.app_credentials().clone();
    let body = r#"{"user_id":"alice"}"#;
    let minted = post_token(&https, &admin, &app.app_key, &app.app_secret, "tls-1", now_secs(), body).await;
    assert_eq!(minted.status(), 200);
    let reply: serde_json::Value = minted.json().await.unwrap();
    assert!(token::verify(reply["token"].as_str().unwrap(), &app.app_secret, now_secs()).is_ok());

    // Plaintext to the TLS port, and TLS without trusting the certificate, get nothing.
    let plaintext = admin.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plaintext}/healthz")).await.is_err());
    assert!(reqwest::get(format!("{admin}/healthz")).await.is_err());
    server.shutdown().await.unwrap();
}
