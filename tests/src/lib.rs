//! The shared harness of the end-to-end suites (`tests/tests/*.rs`): a real callplus server on
//! `127.0.0.1` with ephemeral ports, real [`Client`]s talking gRPC to it, a severable TCP proxy
//! for fault injection, a raw signalling stream for hand-made (hostile) frames, and a local HTTP
//! receiver for the push webhook.
//!
//! Nothing here sleeps to synchronise: every wait is for an actual event or answer, bounded by
//! [`WAIT`] so that a missing event fails the test with a log instead of hanging it.
#![allow(clippy::expect_used)]

pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;
use callplus_proto::v1::server_frame::Body as ServerBody;
use callplus_proto::v1::signal_client::SignalClient;
use callplus_session::client::CallOptions;
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{CallId, DeviceId, EndReason, ParticipantState, UserId};
use callplus_signal::server::{RunningServer, Server, ServerTls, sign_request};
use callplus_signal::storage::Storage;
use callplus_signal::token::{self, AppCredentials};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_stream::wrappers::ReceiverStream;

pub use callplus_session::{
    CallState, CallType, ChangeMediaTypeResult, Code, Delivery, Direction, MediaType, RecordOrder,
};
pub use callplus_signal::client::{Client, ClientOptions, ConnectionState, Event, EventStream, TlsOptions};

/// Upper bound of any single wait: a failure guard, never a synchronisation device.
pub const WAIT: Duration = Duration::from_secs(10);

/// A user id (panics on an invalid one: test data).
pub fn uid(s: &str) -> UserId {
    UserId::new(s).expect("a valid user id")
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

/// Switchboard settings with short timers for tests: heartbeats every 100 ms, liveness 2 s (long
/// enough not to trip on a loaded machine; fault tests shorten it), ring and media-change
/// timeouts long unless a test shortens them.
pub fn config() -> SwitchboardConfig {
    SwitchboardConfig {
        ring_timeout_ms: 20_000,
        change_media_type_timeout_ms: 20_000,
        heartbeat_interval_ms: 100,
        liveness_timeout_ms: 2_000,
        resume_window_ms: 10_000,
        ..SwitchboardConfig::default()
    }
}

/// Client options with fast reconnects.
pub fn client_options(device: &str) -> ClientOptions {
    ClientOptions {
        device_id: Some(DeviceId::new(device).expect("a valid device id")),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..ClientOptions::default()
    }
}

/// Call options with a ring timeout.
pub fn ring_for(ms: u32) -> CallOptions {
    CallOptions { ring_timeout_ms: Some(ms), ..CallOptions::default() }
}

/// How to start a [`TestServer`].
#[derive(Default)]
pub struct Setup {
    /// The switchboard's rules; [`config()`] when `None`.
    pub config: Option<SwitchboardConfig>,
    /// A data directory (SQLite); in memory when `None`.
    pub data_dir: Option<PathBuf>,
    /// A storage engine (overrides `data_dir`).
    pub storage: Option<Arc<dyn Storage>>,
    /// The push webhook URL.
    pub push_webhook: Option<String>,
    /// The authorities the server trusts for an `https://` webhook (PEM).
    pub push_webhook_ca: Option<String>,
    /// Serve devices over TLS with this certificate; the server's own parties trust it.
    pub tls: Option<TestCertificate>,
    /// How long a new connection may take to send its Hello; 5 s when `None`.
    pub hello_timeout: Option<Duration>,
    /// MULTI calls made with at most this many participants stay peer to peer; when `None`,
    /// every MULTI call's media goes through the server's SFU (the default).
    pub mesh_max: Option<usize>,
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made fresh for a test.
#[derive(Debug, Clone)]
pub struct TestCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl TestCertificate {
    /// A new key pair and certificate.
    pub fn generate() -> TestCertificate {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = rcgen::generate_simple_self_signed(names).expect("a self-signed certificate");
        TestCertificate { cert_pem: made.cert.pem(), key_pem: made.signing_key.serialize_pem() }
    }

    /// Client settings that trust this certificate.
    pub fn trusted(&self) -> TlsOptions {
        TlsOptions::default().with_ca_pem(self.cert_pem.clone())
    }
}

/// A running server on ephemeral ports of 127.0.0.1.
pub struct TestServer {
    server: RunningServer,
    /// How its parties check the server's certificate (TLS servers).
    client_tls: TlsOptions,
}

/// One HTTP/1.1 GET to the server's device port: the status line, the headers (lower-cased
/// names) and the body.
pub async fn http_get(server: &TestServer, path: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    http_request(server, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
        .await
}

/// `request`, written as it is to the server's device port, and the response as [`http_get`]
/// gives it: the body as long as its `Content-Length`, or up to the end of the connection.
pub async fn http_request(server: &TestServer, request: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut tcp = TcpStream::connect(server.addr()).await.expect("the device port accepts");
    tcp.write_all(request.as_bytes()).await.expect("the request is written");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length = http_header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
                if let Some(length) = length
                    && raw.len() >= split + 4 + length
                {
                    return (status, headers, raw[split + 4..split + 4 + length].to_vec());
                }
                let n = tcp.read(&mut chunk).await.expect("readable");
                if n == 0 {
                    return (status, headers, raw[split + 4..].to_vec());
                }
                raw.extend_from_slice(&chunk[..n]);
                continue;
            }
            let n = tcp.read(&mut chunk).await.expect("readable");
            assert!(n > 0, "the connection closed before a whole response head");
            raw.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(WAIT, read).await.expect("the response in time")
}

/// The value of header `name` (lower-case) in [`http_get`]'s headers.
pub fn http_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl TestServer {
    /// An in-memory server with `config`.
    pub async fn start(config: SwitchboardConfig) -> TestServer {
        TestServer::start_with(Setup { config: Some(config), ..Setup::default() }).await
    }

    /// A server on the data directory `dir` with `config`.
    pub async fn start_in(dir: &Path, config: SwitchboardConfig) -> TestServer {
        TestServer::start_with(Setup {
            config: Some(config),
            data_dir: Some(dir.to_owned()),
            ..Setup::default()
        })
        .await
    }

    /// A server as `setup` says.
    pub async fn start_with(setup: Setup) -> TestServer {
        let Setup {
            config: cfg,
            data_dir,
            storage,
            push_webhook,
            push_webhook_ca,
            tls,
            hello_timeout,
            mesh_max,
        } = setup;
        let mut builder = Server::builder()
            .listen("127.0.0.1:0")
            .admin_listen("127.0.0.1:0")
            .media_listen("127.0.0.1:0")
            .config(cfg.unwrap_or_else(config))
            .hello_timeout(hello_timeout.unwrap_or(Duration::from_secs(5)));
        builder = match (storage, data_dir) {
            (Some(storage), _) => builder.storage(storage),
            (None, Some(dir)) => builder.data_dir(dir),
            (None, None) => builder.in_memory(),
        };
        if let Some(n) = mesh_max {
            builder = builder.mesh_max(n);
        }
        if let Some(url) = push_webhook {
            builder = builder.push_webhook(url);
        }
        if let Some(pem) = push_webhook_ca {
            builder = builder.push_webhook_ca(pem);
        }
        let client_tls = match &tls {
            Some(cert) => {
                builder = builder.tls(ServerTls::from_pem(cert.cert_pem.clone(), cert.key_pem.clone()));
                cert.trusted()
            }
            None => TlsOptions::default(),
        };
        let server =
            timeout(WAIT, builder.start()).await.expect("server starts in time").expect("server starts");
        TestServer { server, client_tls }
    }

    /// The running server.
    pub fn running(&self) -> &RunningServer {
        &self.server
    }

    /// Where devices connect.
    pub fn addr(&self) -> SocketAddr {
        self.server.grpc_addr()
    }

    /// `http://…` (`https://…` with TLS) of the gRPC listener.
    pub fn endpoint(&self) -> String {
        self.server.grpc_url()
    }

    /// The server's (first) app.
    pub fn app(&self) -> &AppCredentials {
        self.server.app_credentials()
    }

    /// A token for `user` valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.server.mint_token(user, Duration::from_secs(3600)).expect("token minted")
    }

    /// `user` connected from the device `{user}-phone`.
    pub async fn user(&self, user: &str) -> Party {
        self.device(user, &format!("{user}-phone")).await
    }

    /// `user` connected from `device`.
    pub async fn device(&self, user: &str, device: &str) -> Party {
        let options = client_options(device).with_tls(self.client_tls.clone());
        Party::connect_with(&self.endpoint(), &self.token(user), user, device, options).await
    }

    /// `user` connected from the device `{user}-phone` with `options` (media, say).
    pub async fn user_with(&self, user: &str, options: ClientOptions) -> Party {
        let options = options.with_tls(self.client_tls.clone());
        Party::connect_with(&self.endpoint(), &self.token(user), user, &format!("{user}-phone"), options)
            .await
    }

    /// `user` connected from `device` through another endpoint (a [`TcpProxy`]).
    pub async fn device_via(&self, endpoint: &str, user: &str, device: &str) -> Party {
        Party::connect(endpoint, &self.token(user), user, device).await
    }

    /// A raw signalling stream welcomed as `user` on `device`.
    pub async fn raw(&self, user: &str, device: &str) -> RawStream {
        let mut s = RawStream::open(self.addr()).await;
        let welcome = s.hello(&self.token(user), device).await.expect("welcomed");
        assert_eq!(welcome.user_id, user);
        s
    }

    /// A raw WebSocket welcomed as `user` on `device`.
    pub async fn ws(&self, user: &str, device: &str) -> ws::WsStream {
        let mut s = ws::WsStream::open_url(&self.server.websocket_url()).await;
        let welcome = s.hello(&self.token(user), device).await.expect("welcomed");
        assert_eq!(welcome.user_id, user);
        s
    }

    /// `body` POSTed to the admin API's `path`, signed with the app's secret under a fresh
    /// nonce: the status and the JSON reply.
    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.admin_post_signed_for(path, path, body).await
    }

    /// `body` POSTed to the admin API's `path`, signed as a request to `signed_path` (a replay
    /// of a request signed for another endpoint when they differ).
    pub async fn admin_post_signed_for(
        &self,
        signed_path: &str,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        static NONCES: AtomicU64 = AtomicU64::new(0);
        let admin = self.server.admin_url().expect("an admin listener");
        let app = self.app();
        let nonce = format!("e2e-{}-{}", now_ms(), NONCES.fetch_add(1, Ordering::Relaxed));
        let ts = now_secs().to_string();
        let reply = reqwest::Client::new()
            .post(format!("{admin}{path}"))
            .header("X-App-Key", &app.app_key)
            .header("X-Nonce", &nonce)
            .header("X-Timestamp", &ts)
            .header("X-Signature", sign_request(&app.app_secret, signed_path, &nonce, &ts, body.as_bytes()))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send();
        let reply = timeout(WAIT, reply).await.expect("the admin API answers in time").expect("an answer");
        let status = reply.status().as_u16();
        let json = timeout(WAIT, reply.json()).await.expect("the reply in time").expect("a JSON reply");
        (status, json)
    }

    /// Graceful shutdown.
    pub async fn shutdown(self) {
        timeout(WAIT, self.server.shutdown()).await.expect("shutdown in time").expect("clean shutdown");
    }
}

/// `http://addr`.
pub fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A connected client and every event it received.
pub struct Party {
    /// The user.
    pub name: String,
    /// The device id.
    pub device: String,
    /// The SDK handle.
    pub client: Client,
    /// The event stream (use [`Party::expect`] rather than reading it directly).
    pub events: EventStream,
    /// Every event received so far, in order.
    pub log: Vec<Event>,
    /// Which entries of `log` an `expect` already returned.
    taken: Vec<bool>,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party").field("name", &self.name).field("device", &self.device).finish()
    }
}

impl Party {
    /// Connects `user` on `device` with `token`; panics if refused.
    pub async fn connect(endpoint: &str, token: &str, user: &str, device: &str) -> Party {
        Party::connect_with(endpoint, token, user, device, client_options(device)).await
    }

    /// Connects `user` with `options` (whose device id is set to `device`); panics if refused.
    pub async fn connect_with(
        endpoint: &str,
        token: &str,
        user: &str,
        device: &str,
        options: ClientOptions,
    ) -> Party {
        let options = options.with_device_id(DeviceId::new(device).expect("a valid device id"));
        let (client, events) = timeout(WAIT, Client::connect(endpoint, token, options))
            .await
            .unwrap_or_else(|_| panic!("{user}@{device}: connect timed out"))
            .unwrap_or_else(|e| panic!("{user}@{device}: connect refused: {e}"));
        assert_eq!(client.connection_state(), ConnectionState::Connected);
        assert_eq!(client.user_id().map(|u| u.to_string()).as_deref(), Some(user));
        Party {
            name: user.to_owned(),
            device: device.to_owned(),
            client,
            events,
            log: Vec::new(),
            taken: Vec::new(),
        }
    }

    fn record(&mut self, event: Event) {
        self.log.push(event);
        self.taken.push(false);
    }

    /// The first event not returned by an earlier `expect` that matches `pred`: from the log,
    /// else the next ones to arrive. Panics with the log on timeout or end of stream.
    pub async fn expect(&mut self, pred: impl Fn(&Event) -> bool, what: &str) -> Event {
        self.expect_within(WAIT, pred, what).await
    }

    /// As [`Party::expect`], waiting up to `wait` instead of [`WAIT`] (for events due after
    /// a server-side bound longer than it).
    pub async fn expect_within(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Event) -> bool,
        what: &str,
    ) -> Event {
        if let Some(i) = (0..self.log.len()).find(|&i| !self.taken[i] && pred(&self.log[i])) {
            self.taken[i] = true;
            return self.log[i].clone();
        }
        let deadline = Instant::now() + wait;
        loop {
            match timeout_at(deadline, self.events.next()).await {
                Ok(Some(event)) => {
                    let hit = pred(&event);
                    self.record(event.clone());
                    if hit {
                        if let Some(t) = self.taken.last_mut() {
                            *t = true;
                        }
                        return event;
                    }
                }
                Ok(None) => panic!("{}: stream ended waiting for {what}; log: {:#?}", self.name, self.log),
                Err(_) => panic!("{}: timed out waiting for {what}; log: {:#?}", self.name, self.log),
            }
        }
    }

    /// How many events of the log match `pred`.
    pub fn seen(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.log.iter().filter(|e| pred(e)).count()
    }

    /// Takes every event already waiting into the log.
    pub fn drain(&mut self) {
        while let Some(event) = self.events.try_next() {
            self.record(event);
        }
    }

    /// A barrier: one request round trip, then every waiting event into the log. Afterwards
    /// the log holds every event the server sent this device before it answered — so
    /// everything caused by requests the server handled earlier.
    pub async fn sync(&mut self) {
        timeout(WAIT, self.client.get_available_calls())
            .await
            .expect("sync answered in time")
            .unwrap_or_else(|e| panic!("{}: sync request failed: {e}", self.name));
        self.drain();
    }

    /// Disconnects (Goodbye) and returns the whole log, to the end of the stream.
    pub async fn finish(mut self) -> Vec<Event> {
        timeout(WAIT, self.client.disconnect()).await.expect("disconnect completes");
        while let Some(event) =
            timeout(WAIT, self.events.next()).await.expect("the stream ends after disconnect")
        {
            self.record(event);
        }
        self.log
    }

    /// Starts a SINGLE call to `callee`; returns its id.
    pub async fn call(&self, callee: &str, media_type: MediaType) -> CallId {
        self.call_with(callee, media_type, CallOptions::default()).await
    }

    /// Starts a SINGLE call to `callee` with `options`; returns its id.
    pub async fn call_with(&self, callee: &str, media_type: MediaType, options: CallOptions) -> CallId {
        let started = timeout(WAIT, self.client.start_call(&[callee], CallType::Single, media_type, options))
            .await
            .expect("start_call answered in time")
            .unwrap_or_else(|e| panic!("{} → {callee}: start_call failed: {e}", self.name));
        started.call_id().clone()
    }

    /// Waits for the invitation to `call` and answers it (ringing, then accept); returns when
    /// this device is connected.
    pub async fn answer(&mut self, call: &CallId) {
        self.expect(received(call), "the invitation").await;
        self.client.ringing(call).await.unwrap_or_else(|e| panic!("{}: ringing failed: {e}", self.name));
        self.client.accept(call).await.unwrap_or_else(|e| panic!("{}: accept failed: {e}", self.name));
        self.expect(connected(call), "connected").await;
    }
}

/// `caller` calls `callee` (SINGLE), `callee` answers, both are connected.
pub async fn establish(caller: &mut Party, callee: &mut Party, media_type: MediaType) -> CallId {
    let call = caller.call(&callee.name, media_type).await;
    callee.answer(&call).await;
    caller.expect(connected(&call), "connected").await;
    call
}

// ----- event predicates ---------------------------------------------------------------------

/// `ReceivedCall` of `call`.
pub fn received(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCall { session, .. } if session.call_id() == call)
}

/// `CallConnected` of `call`.
pub fn connected(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallConnected { session } if session.call_id() == call)
}

/// `CallEnded` of `call`, any reason.
pub fn ended(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallEnded { session, .. } if session.call_id() == call)
}

/// `CallEnded` of `call` with `reason`.
pub fn ended_with(call: &CallId, reason: EndReason) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallEnded { session, reason: r } if session.call_id() == call && *r == reason)
}

/// `ReceivedCallRecord` of `call`.
pub fn record_of(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCallRecord(r) if &r.call.call_id == call)
}

/// `SummaryMessage` of `call`.
pub fn summary_of(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::SummaryMessage(s) if &s.call_id == call)
}

/// `RemoteUserStateChanged` of `user` in `call` to `state`.
pub fn remote_state<'a>(
    call: &'a CallId,
    user: &'a str,
    state: ParticipantState,
) -> impl Fn(&Event) -> bool + 'a {
    move |e| {
        matches!(e, Event::RemoteUserStateChanged { call_id, user_id, state: s, .. }
            if call_id == call && user_id.as_str() == user && *s == state)
    }
}

/// A connection state change to `state`.
pub fn state_is(state: ConnectionState) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::ConnectionStateChanged(s) if *s == state)
}

/// The end reason of a `CallEnded` event.
pub fn end_reason(event: &Event) -> Option<EndReason> {
    match event {
        Event::CallEnded { reason, .. } => Some(*reason),
        _ => None,
    }
}

// ----- TCP proxy ------------------------------------------------------------------------------

/// One proxied connection: its task and whether each direction currently drops its bytes.
struct Link {
    task: AbortHandle,
    /// Client → server bytes are dropped.
    up_frozen: Arc<AtomicBool>,
    /// Server → client bytes are dropped.
    down_frozen: Arc<AtomicBool>,
}

struct ProxyState {
    target: Mutex<SocketAddr>,
    links: Mutex<Vec<Link>>,
    paused: AtomicBool,
}

impl ProxyState {
    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Copies `from` to `to` until either side ends, dropping the bytes while `frozen`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP proxy on 127.0.0.1:0 forwarding to the server, whose connections a test can cut,
/// black-hole or refuse.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept_task: AbortHandle,
}

impl TcpProxy {
    /// A proxy to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState {
            target: Mutex::new(target),
            links: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if st.paused.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = *st.target.lock().unwrap_or_else(PoisonError::into_inner);
                let (up_frozen, down_frozen) =
                    (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
                let (up, down) = (up_frozen.clone(), down_frozen.clone());
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (client_r, client_w) = inbound.into_split();
                        let (server_r, server_w) = outbound.into_split();
                        tokio::join!(pump(client_r, server_w, up), pump(server_r, client_w, down));
                    }
                });
                let mut links = st.links();
                links.retain(|l| !l.task.is_finished());
                links.push(Link { task: task.abort_handle(), up_frozen, down_frozen });
            }
        })
        .abort_handle();
        TcpProxy { addr, state, accept_task }
    }

    /// `http://…` of the proxy.
    pub fn endpoint(&self) -> String {
        endpoint(self.addr)
    }

    /// Cuts every live connection (both sockets close).
    pub fn sever(&self) {
        for link in self.state.links().drain(..) {
            link.task.abort();
        }
    }

    /// Black-holes every live connection: the sockets stay open, bytes in both directions are
    /// dropped (a dead network path nobody closes). New connections are not affected.
    pub fn freeze(&self) {
        for link in self.state.links().iter() {
            link.up_frozen.store(true, Ordering::SeqCst);
            link.down_frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Drops the server → client bytes of every live connection (answers get lost, requests
    /// still arrive).
    pub fn freeze_downstream(&self) {
        for link in self.state.links().iter() {
            link.down_frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Refuses new connections (accepted and closed at once).
    pub fn pause(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    /// Accepts new connections again.
    pub fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }

    /// Forwards new connections to `target` (e.g. a restarted server).
    pub fn retarget(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap_or_else(PoisonError::into_inner) = target;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.sever();
    }
}

// ----- push webhook receiver ------------------------------------------------------------------

/// A local HTTP receiver for the push webhook: every JSON body POSTed to it.
pub struct PushReceiver {
    /// The webhook URL to give the server.
    pub url: String,
    rx: mpsc::UnboundedReceiver<serde_json::Value>,
    task: AbortHandle,
}

impl PushReceiver {
    /// Listens on 127.0.0.1:0 (plain HTTP).
    pub async fn start() -> PushReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("webhook binds");
        let addr = listener.local_addr().expect("webhook address");
        let (app, rx) = PushReceiver::app();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
        .abort_handle();
        PushReceiver { url: format!("http://{addr}/push"), rx, task }
    }

    /// Listens on 127.0.0.1:0 over HTTPS with `cert` (which names 127.0.0.1).
    pub async fn start_tls(cert: &TestCertificate) -> PushReceiver {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("certificate PEM")];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key PEM");
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("certificate and key");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("webhook binds");
        let addr = tcp.local_addr().expect("webhook address");
        let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
        let (app, rx) = PushReceiver::app();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
        .abort_handle();
        PushReceiver { url: format!("https://{addr}/push"), rx, task }
    }

    /// The webhook route, and the receiver of every body POSTed to it.
    fn app() -> (axum::Router, mpsc::UnboundedReceiver<serde_json::Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/push",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body);
                    axum::http::StatusCode::OK
                }
            }),
        );
        (app, rx)
    }

    /// The next payload.
    pub async fn next(&mut self) -> serde_json::Value {
        timeout(WAIT, self.rx.recv()).await.expect("a push in time").expect("the receiver runs")
    }

    /// A payload already received, if any.
    pub fn try_next(&mut self) -> Option<serde_json::Value> {
        self.rx.try_recv().ok()
    }
}

/// TCP connections of 127.0.0.1 that completed a TLS handshake; failed handshakes are
/// dropped (the client sees the failure).
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ----- raw signalling stream ------------------------------------------------------------------

/// A raw `Signal/Connect` stream for hand-made frames (no client-side validation).
pub struct RawStream {
    tx: mpsc::Sender<pb::ClientFrame>,
    rx: tonic::Streaming<pb::ServerFrame>,
    next_seq: u64,
    next_request: u64,
    /// Highest server seq received.
    pub ack: u64,
    /// Events received while waiting for responses.
    pub events: Vec<pb::event::Kind>,
}

impl RawStream {
    /// Opens a stream to `addr` (no Hello yet).
    pub async fn open(addr: SocketAddr) -> RawStream {
        let channel = tonic::transport::Endpoint::from_shared(endpoint(addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("raw stream connects");
        // Large encodes allowed so that oversized frames reach the server.
        let mut client = SignalClient::new(channel)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(64);
        let response = timeout(WAIT, client.connect(ReceiverStream::new(rx)))
            .await
            .expect("stream opens in time")
            .expect("stream opens");
        RawStream {
            tx,
            rx: response.into_inner(),
            next_seq: 1,
            next_request: 100,
            ack: 0,
            events: Vec::new(),
        }
    }

    /// Sends a frame as is; false if the stream is closed.
    pub async fn send(&self, frame: pb::ClientFrame) -> bool {
        self.tx.send(frame).await.is_ok()
    }

    /// Sends a Hello and returns the Welcome, or the refusal.
    pub async fn hello(&mut self, token: &str, device: &str) -> Result<pb::Welcome, pb::Response> {
        let hello = pb::Hello {
            token: token.to_owned(),
            device_id: device.to_owned(),
            resume: None,
            client_version: "callplus-tests".into(),
        };
        assert!(
            self.send(pb::ClientFrame { seq: 0, ack: 0, request_id: 1, body: Some(Body::Hello(hello)) })
                .await
        );
        loop {
            match self.next().await.and_then(|f| f.body) {
                Some(ServerBody::Welcome(w)) => return Ok(w),
                Some(ServerBody::Response(r)) => return Err(r),
                Some(_) => continue,
                None => panic!("the stream ended without Welcome or refusal"),
            }
        }
    }

    /// The next frame; `None` when the server ended the stream (or it failed).
    pub async fn next(&mut self) -> Option<pb::ServerFrame> {
        match timeout(WAIT, self.rx.message()).await.expect("a frame or the end in time") {
            Ok(Some(frame)) => {
                self.ack = self.ack.max(frame.seq);
                Some(frame)
            }
            Ok(None) | Err(_) => None,
        }
    }

    /// Sends `body` as the next reliable request; returns its request id.
    pub async fn request(&mut self, body: Body) -> u64 {
        self.request_frame(Some(body)).await
    }

    /// Sends a reliable frame with `body` (possibly none); returns its request id.
    pub async fn request_frame(&mut self, body: Option<Body>) -> u64 {
        let (seq, request_id) = (self.next_seq, self.next_request);
        self.next_seq += 1;
        self.next_request += 1;
        assert!(self.send(pb::ClientFrame { seq, ack: self.ack, request_id, body }).await, "stream open");
        request_id
    }

    /// The response to `request_id` (events on the way are kept in `events`); `None` if the
    /// stream ended first.
    pub async fn response_to(&mut self, request_id: u64) -> Option<pb::Response> {
        loop {
            match self.next().await?.body {
                Some(ServerBody::Response(r)) if r.request_id == request_id => return Some(r),
                Some(ServerBody::Event(pb::Event { kind: Some(kind) })) => self.events.push(kind),
                _ => {}
            }
        }
    }

    /// Sends `body` and returns the response's code (`Err` with the raw number if unknown).
    pub async fn call(&mut self, body: Body) -> Result<pb::ResultCode, i32> {
        let id = self.request(body).await;
        let r = self.response_to(id).await.expect("a response before the stream ends");
        pb::ResultCode::try_from(r.code).map_err(|_| r.code)
    }
}

/// A token of another app (unknown to the server) for `user`.
pub fn foreign_token(user: &str) -> String {
    let other = token::generate_app();
    token::mint(&other.app_key, &other.app_secret, user, now_secs(), 3600).expect("token minted")
}
