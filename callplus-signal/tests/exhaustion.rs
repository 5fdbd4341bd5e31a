//! Resource exhaustion through the real server on 127.0.0.1: a device that never reads, too
//! many devices for one user, connections that never speak (raw TCP, an HTTP/2 preface with no
//! stream, an HTTP/1.1 request or a WebSocket that never gets to a Hello, a slow admin request,
//! the same under TLS), a process out of file descriptors, and a WebSocket device that stops
//! reading for a while.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;
use callplus_proto::v1::server_frame::Body as ServerBody;
use callplus_proto::v1::signal_client::SignalClient;
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{
    AppKey, CallId, CallInfo, CallRecord, CallType, Delivery, Direction, EndReason, MediaType, Participant,
    ParticipantState, UserId,
};
use callplus_signal::server::{RunningServer, Server};
use callplus_signal::storage::{RecordRow, Storage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Longest wait for any expected frame or reply.
const WAIT: Duration = Duration::from_secs(10);

/// One raw signalling stream.
struct Stream {
    tx: mpsc::Sender<pb::ClientFrame>,
    rx: tonic::Streaming<pb::ServerFrame>,
}

impl Stream {
    async fn open(endpoint: tonic::transport::Endpoint) -> Stream {
        let channel = endpoint.connect().await.expect("connects");
        let mut client = SignalClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        let response = tokio::time::timeout(WAIT, client.connect(ReceiverStream::new(rx)))
            .await
            .expect("response headers in time")
            .expect("stream opens");
        Stream { tx, rx: response.into_inner() }
    }

    async fn plain(addr: SocketAddr) -> Stream {
        Stream::open(tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap()).await
    }

    async fn send(&self, seq: u64, request_id: u64, body: Body) -> bool {
        self.tx.send(pb::ClientFrame { seq, ack: 0, request_id, body: Some(body) }).await.is_ok()
    }

    async fn hello(&self, device: &str, token: &str) {
        let hello = pb::Hello {
            token: token.to_owned(),
            device_id: device.into(),
            resume: None,
            client_version: "tests".into(),
        };
        assert!(self.send(0, 1, Body::Hello(hello)).await);
    }

    /// The next frame, or `None` when the server ended the stream.
    async fn next(&mut self) -> Option<pb::ServerFrame> {
        // A stream the server closed may end with an error status rather than cleanly.
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a frame or the end in time")
            .ok()
            .flatten()
    }

    async fn welcomed(&mut self) {
        match self.next().await.and_then(|f| f.body) {
            Some(ServerBody::Welcome(_)) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

/// A counter or gauge from `/metrics` (the sum over its labels).
async fn metric(server: &RunningServer, name: &str) -> u64 {
    let url = format!("{}/metrics", server.admin_url().unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until `metric` reaches `at_least`, or fails after `within`.
async fn metric_reaches(server: &RunningServer, name: &str, at_least: u64, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let value = metric(server, name).await;
        if value >= at_least {
            return;
        }
        assert!(Instant::now() < until, "{name} is {value}, expected at least {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn record(owner: &str, n: usize, extra: usize) -> RecordRow {
    let owner_id = UserId::new(owner).unwrap();
    let call_id = CallId::new(&format!("call-{n}")).unwrap();
    let participant = Participant {
        user_id: owner_id.clone(),
        state: ParticipantState::Ended,
        reason: Some(EndReason::Hangup),
        inviter: None,
        invited_at_ms: 1_000,
        connected_at_ms: Some(1_500),
        ended_at_ms: Some(2_000),
        devices: Vec::new(),
        delivery: Delivery::Ringing,
        camera_disabled: false,
        microphone_disabled: false,
        device_id: None,
    };
    let call = CallInfo {
        call_id: call_id.clone(),
        call_type: CallType::Single,
        media_type: MediaType::Audio,
        creator: owner_id.clone(),
        participants: vec![participant],
        created_at_ms: 1_000,
        started_at_ms: Some(1_500),
        first_frame_at_ms: None,
        ended_at_ms: Some(2_000),
        version: 3,
        extra: "x".repeat(extra),
        ring_timeout_ms: 0,
    };
    let sync_time = i64::try_from(n).unwrap() + 1;
    let record = CallRecord {
        owner: owner_id,
        call: call.into(),
        inviter: None,
        end_reason: EndReason::Hangup,
        direction: Direction::Outgoing,
        duration_ms: 500,
        sync_time,
    };
    RecordRow {
        app_key: String::new(),
        owner_id: owner.to_owned(),
        call_id: call_id.as_str().to_owned(),
        sync_time,
        body: pb::CallRecord::from(&record).encode_to_vec(),
        fence: 0,
    }
}

/// Stores 100 records of about 1.5 KiB for `owner` (a page of 100 is about 160 KB).
fn store_records(storage: &dyn Storage, app: &AppKey, owner: &str) {
    let rows: Vec<RecordRow> =
        (0..100).map(|n| RecordRow { app_key: app.as_str().to_owned(), ..record(owner, n, 1500) }).collect();
    storage.append_records(&rows).unwrap();
}

/// A server on 127.0.0.1 with `config`, 100 stored records of `owner`'s, and a token for them.
async fn server_with_records(config: SwitchboardConfig, owner: &str) -> (RunningServer, String) {
    let server = Server::builder()
        .in_memory()
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .config(config)
        .start()
        .await
        .unwrap();
    let app = AppKey::new(&server.app_credentials().app_key).unwrap();
    store_records(&*server.storage(), &app, owner);
    let token = server.mint_token(owner, Duration::from_secs(60)).unwrap();
    (server, token)
}

/// A device that asks for pages of 100 records at the rate limit and never reads nor acks.
async fn flood_records(stream: &Stream, pages: u64) {
    for seq in 1..=pages {
        let get = pb::GetCallRecords { sync_time: -1, count: 100, order: pb::RecordOrder::Desc as i32 };
        if !stream.send(seq, seq + 1, Body::GetCallRecords(get)).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_device_that_never_reads_is_cut_at_its_byte_bound() {
    let config = SwitchboardConfig { max_unacked_bytes: 2 << 20, ..SwitchboardConfig::default() };
    let (server, token) = server_with_records(config, "slow").await;
    // Small HTTP/2 windows, so the transport buffers little of what the device does not read.
    let endpoint = tonic::transport::Endpoint::from_shared(server.grpc_url())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024);
    let mut slow = Stream::open(endpoint).await;
    slow.hello("phone", &token).await;
    slow.welcomed().await;
    // 2 MiB is about a dozen pages; the frame bound (4096) is never reached.
    let flood = flood_records(&slow, 200);
    tokio::select! {
        () = flood => {}
        () = metric_reaches(&server, "callplus_slow_consumers_total", 1, Duration::from_secs(20)) => {}
    }
    metric_reaches(&server, "callplus_slow_consumers_total", 1, WAIT).await;
    // The stream ends once what was queued is read.
    let until = Instant::now() + Duration::from_secs(30);
    while slow.next().await.is_some() {
        assert!(Instant::now() < until, "the stream of the cut device ends");
    }
    // Others are served.
    let alice = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut other = Stream::plain(server.grpc_addr()).await;
    other.hello("phone", &alice).await;
    other.welcomed().await;
    drop((slow, other));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_user_may_have_only_so_many_devices() {
    let server = Server::builder()
        .in_memory()
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .max_devices_per_user(2)
        .start()
        .await
        .unwrap();
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut devices = Vec::new();
    for device in ["d1", "d2"] {
        let mut s = Stream::plain(server.grpc_addr()).await;
        s.hello(device, &token).await;
        s.welcomed().await;
        devices.push(s);
    }
    let mut third = Stream::plain(server.grpc_addr()).await;
    third.hello("d3", &token).await;
    match third.next().await.and_then(|f| f.body) {
        Some(ServerBody::Response(r)) => {
            assert_eq!(r.request_id, 1);
            assert_eq!(r.code, pb::ResultCode::TooManyDevices as i32, "{r:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(third.next().await.is_none(), "the stream ends after the refusal");
    assert_eq!(metric(&server, "callplus_auth_failures_total{result=\"TOO_MANY_DEVICES\"}").await, 1);
    // A known device reconnecting is not a further device.
    let mut again = Stream::plain(server.grpc_addr()).await;
    again.hello("d1", &token).await;
    again.welcomed().await;
    drop((devices, third, again));
    server.shutdown().await.unwrap();
}

async fn silent_server(hello_timeout: Duration, admin_timeout: Duration) -> RunningServer {
    Server::builder()
        .in_memory()
        .listen("127.0.0.1:0")
        .admin_listen("127.0.0.1:0")
        .hello_timeout(hello_timeout)
        .admin_request_timeout(admin_timeout)
        .start()
        .await
        .unwrap()
}

/// Reads (and discards) until the peer closes; returns how long that took from `since`.
async fn closed_after(socket: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((since + within).into(), socket.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_silent_tcp_connection_on_the_device_port_is_closed() {
    let server = silent_server(Duration::from_millis(500), Duration::from_secs(60)).await;
    let since = Instant::now();
    let mut socket = TcpStream::connect(server.grpc_addr()).await.unwrap();
    let took = closed_after(&mut socket, since, Duration::from_secs(10)).await;
    // Hello timeout (500 ms) + 1 s grace.
    assert!(took >= Duration::from_millis(1400), "closed too early: {took:?}");
    println!("silent TCP connection closed after {took:?}");
    metric_reaches(&server, "callplus_silent_connections_closed_total{port=\"device\"}", 1, WAIT).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_http2_preface_without_a_stream_is_closed() {
    let server = silent_server(Duration::from_millis(500), Duration::from_secs(60)).await;
    let since = Instant::now();
    let mut socket = TcpStream::connect(server.grpc_addr()).await.unwrap();
    // The client preface and an empty SETTINGS frame, then a PING now and then: a live
    // HTTP/2 connection that never opens a stream.
    socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let pinger = tokio::spawn(async move {
        for n in 0u8..50 {
            let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, n, 0, 0, 0, 0, 0, 0, 0];
            if write.write_all(&ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = [0u8; 4096];
    let until = since + Duration::from_secs(10);
    let took = loop {
        match tokio::time::timeout_at(until.into(), read.read(&mut buf)).await {
            Err(_) => panic!("the HTTP/2 connection is still open"),
            Ok(Ok(0) | Err(_)) => break since.elapsed(),
            Ok(Ok(_)) => {}
        }
    };
    pinger.abort();
    assert!(took >= Duration::from_millis(1400), "closed too early: {took:?}");
    println!("HTTP/2 connection without a stream closed after {took:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_trickled_http1_request_on_the_device_port_is_closed() {
    let server = silent_server(Duration::from_millis(500), Duration::from_secs(60)).await;
    let since = Instant::now();
    let socket = TcpStream::connect(server.grpc_addr()).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    // Request headers a line at a time, never finished (the HTTP server has no header timeout).
    let trickle = tokio::spawn(async move {
        let _ = write.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n").await;
        for n in 0..100 {
            if write.write_all(format!("X-{n}: y\r\n").as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let took = loop {
        match tokio::time::timeout_at((since + Duration::from_secs(10)).into(), read.read(&mut buf)).await {
            Err(_) => panic!("the trickled request is still open"),
            Ok(Ok(0) | Err(_)) => break since.elapsed(),
            Ok(Ok(_)) => {}
        }
    };
    trickle.abort();
    assert!(took >= Duration::from_millis(1400), "closed too early: {took:?}");
    metric_reaches(&server, "callplus_silent_connections_closed_total{port=\"device\"}", 1, WAIT).await;
    server.shutdown().await.unwrap();
}

/// Opens a WebSocket on `socket` by hand (HTTP/1.1 upgrade) and returns once the server
/// switched protocols.
async fn upgrade_websocket(socket: &mut TcpStream) {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        callplus_signal::server::WEBSOCKET_PATH
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "the server closed during the upgrade: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
}

#[tokio::test]
async fn a_websocket_that_never_says_hello_is_closed() {
    let server = silent_server(Duration::from_millis(500), Duration::from_secs(60)).await;
    let since = Instant::now();
    let mut socket = TcpStream::connect(server.grpc_addr()).await.unwrap();
    upgrade_websocket(&mut socket).await;
    // The first two bytes of a masked binary frame that never comes: the socket is open and
    // mid-message, with no Hello.
    socket.write_all(&[0x82, 0xfe]).await.unwrap();
    let took = closed_after(&mut socket, since, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(450), "closed too early: {took:?}");
    println!("WebSocket without a Hello closed after {took:?}");
    server.shutdown().await.unwrap();
}

/// Sends `frame` as one masked binary WebSocket message (the mask key is zero).
async fn ws_send(socket: &mut TcpStream, frame: &pb::ClientFrame) {
    let payload = frame.encode_to_vec();
    let mut message = vec![0x82];
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => message.push(0x80 | u8::try_from(n).unwrap()),
        Ok(n) => {
            message.push(0x80 | 126);
            message.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => panic!("a test frame over 64 KiB"),
    }
    message.extend_from_slice(&[0, 0, 0, 0]);
    message.extend_from_slice(&payload);
    socket.write_all(&message).await.unwrap();
}

/// The next binary WebSocket message from the server, decoded.
async fn ws_recv(socket: &mut TcpStream) -> pb::ServerFrame {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, socket.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(head[0], 0x82, "a binary message");
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            socket.read_exact(&mut n).await.unwrap();
            usize::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            socket.read_exact(&mut n).await.unwrap();
            usize::try_from(u64::from_be_bytes(n)).unwrap()
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    tokio::time::timeout(WAIT, socket.read_exact(&mut payload)).await.unwrap().unwrap();
    pb::ServerFrame::decode(payload.as_slice()).unwrap()
}

/// A WebSocket device that stops reading while the server answers it: the server's driver
/// writes frames to the socket itself until the socket is full, then leaves them to the
/// connection's writer task. Once the device reads again it gets every frame, in order, none
/// twice. Two workers, so the driver, the writer and the reader can race for the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_device_that_stops_reading_gets_every_frame_in_order_afterwards() {
    // Pages of about 7 KB are asked for in batches of this many, up to this many in all.
    const BATCH: u64 = 50;
    const MAX_PAGES: u64 = 3000;
    let config = SwitchboardConfig {
        max_unacked_bytes: 64 << 20,
        max_user_unacked_bytes: 64 << 20,
        requests_per_second: 100_000,
        request_burst: 100_000,
        ..SwitchboardConfig::default()
    };
    let (server, token) = server_with_records(config, "reader").await;
    // A small receive buffer, so the pages fill the socket early.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(64 * 1024).unwrap();
    let mut socket = tcp.connect(server.grpc_addr()).await.unwrap();
    upgrade_websocket(&mut socket).await;
    let hello =
        pb::Hello { token, device_id: "browser".into(), resume: None, client_version: "tests".into() };
    ws_send(&mut socket, &pb::ClientFrame { seq: 0, ack: 0, request_id: 1, body: Some(Body::Hello(hello)) })
        .await;
    assert!(matches!(ws_recv(&mut socket).await.body, Some(ServerBody::Welcome(_))));
    let direct_before = metric(&server, "callplus_frames_out_direct_total").await;
    let out_before = metric(&server, "callplus_frames_out_total").await;
    // Pages asked for in batches and none read, until the socket is full and the frames go
    // through the writer task (however large this machine's socket buffers are), then one
    // batch more.
    let mut asked = 0;
    let mut batches_after = 0;
    while batches_after < 2 {
        for _ in 0..BATCH {
            asked += 1;
            let get = pb::GetCallRecords { sync_time: -1, count: 100, order: pb::RecordOrder::Desc as i32 };
            let frame = pb::ClientFrame {
                seq: asked,
                ack: 0,
                request_id: asked + 1,
                body: Some(Body::GetCallRecords(get)),
            };
            ws_send(&mut socket, &frame).await;
        }
        metric_reaches(&server, "callplus_frames_out_total", out_before + asked, WAIT).await;
        let direct = metric(&server, "callplus_frames_out_direct_total").await - direct_before;
        if direct < asked {
            batches_after += 1;
        }
        assert!(asked < MAX_PAGES, "{asked} pages and the socket never filled");
    }
    let direct = metric(&server, "callplus_frames_out_direct_total").await - direct_before;
    let queued = asked - direct;
    assert!(direct > 0, "the first pages went to the socket from the driver");
    assert!(queued > BATCH, "the pages after the socket filled went through the writer task");
    // The frames come in the switchboard's order (their seq); the pages are queries, answered
    // in whatever order they finish.
    let mut last_seq = 0;
    let mut answered = std::collections::HashSet::new();
    for _ in 0..asked {
        let frame = ws_recv(&mut socket).await;
        assert_eq!(frame.seq, last_seq + 1, "frames in order, none missing or twice");
        last_seq = frame.seq;
        match frame.body {
            Some(ServerBody::Response(response)) => {
                assert_eq!(response.code, pb::ResultCode::Success as i32, "{}", response.message);
                assert!(
                    answered.insert(response.request_id),
                    "request {} answered twice",
                    response.request_id
                );
            }
            other => panic!("expected a page, got {other:?}"),
        }
    }
    assert_eq!(
        answered,
        (2..=asked + 1).collect::<std::collections::HashSet<u64>>(),
        "every page asked for is answered"
    );
    println!("{direct} frames written by the driver, {queued} by the writer task");
    // The connection still works both ways.
    ws_send(
        &mut socket,
        &pb::ClientFrame { seq: 0, ack: last_seq, request_id: 0, body: Some(Body::Ping(pb::Ping {})) },
    )
    .await;
    assert!(matches!(ws_recv(&mut socket).await.body, Some(ServerBody::Pong(_))));
    drop(socket);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_websocket_device_that_said_hello_outlives_the_silent_connection_deadline() {
    let server = silent_server(Duration::from_millis(300), Duration::from_secs(60)).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut socket = TcpStream::connect(server.grpc_addr()).await.unwrap();
    upgrade_websocket(&mut socket).await;
    let hello =
        pb::Hello { token, device_id: "browser".into(), resume: None, client_version: "tests".into() };
    let frame = pb::ClientFrame { seq: 0, ack: 0, request_id: 1, body: Some(Body::Hello(hello)) };
    ws_send(&mut socket, &frame).await;
    assert!(matches!(ws_recv(&mut socket).await.body, Some(ServerBody::Welcome(_))));
    // Past the connection deadline (300 ms + 1 s): the greeted connection stays.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let ping = pb::ClientFrame { seq: 0, ack: 0, request_id: 0, body: Some(Body::Ping(pb::Ping {})) };
    ws_send(&mut socket, &ping).await;
    loop {
        match ws_recv(&mut socket).await.body {
            Some(ServerBody::Pong(_)) => break,
            // Offline events and the like may come first.
            Some(ServerBody::Event(_) | ServerBody::Response(_)) => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }
    assert_eq!(metric(&server, "callplus_silent_connections_closed_total").await, 0);
    drop(socket);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_device_that_said_hello_outlives_the_silent_connection_deadline() {
    let server = silent_server(Duration::from_millis(300), Duration::from_secs(60)).await;
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let mut s = Stream::plain(server.grpc_addr()).await;
    s.hello("phone", &token).await;
    s.welcomed().await;
    // Past the connection deadline (300 ms + 1 s): the greeted connection stays.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(s.send(0, 0, Body::Ping(pb::Ping {})).await);
    assert!(matches!(s.next().await.and_then(|f| f.body), Some(ServerBody::Pong(_))));
    drop(s);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_admin_slowloris_is_closed_and_a_complete_request_is_answered() {
    let server = silent_server(Duration::from_secs(60), Duration::from_secs(1)).await;
    let admin = server.admin_addr().unwrap();

    // Headers a line at a time, never finished.
    let since = Instant::now();
    let socket = TcpStream::connect(admin).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let trickle = tokio::spawn(async move {
        let _ = write.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        for n in 0..100 {
            if write.write_all(format!("X-{n}: y\r\n").as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let took = loop {
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
            Err(_) => panic!("the slow admin request is still open"),
            Ok(Ok(0) | Err(_)) => break since.elapsed(),
            Ok(Ok(_)) => {}
        }
    };
    trickle.abort();
    println!("admin slowloris closed after {took:?}");

    // A silent admin connection too.
    let since = Instant::now();
    let mut silent = TcpStream::connect(admin).await.unwrap();
    let took = closed_after(&mut silent, since, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // A complete request is answered, and the connection may ask again within the timeout.
    let mut socket = TcpStream::connect(admin).await.unwrap();
    for _ in 0..2 {
        socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
    assert!(metric(&server, "callplus_silent_connections_closed_total{port=\"admin\"}").await >= 2);
    server.shutdown().await.unwrap();
}

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 14th field of the
    // line, stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn out_of_file_descriptors_the_server_backs_off_logs_and_recovers() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt as _;
    use tokio::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    // The real binary with an open-file limit of 48 (soft and hard, so it cannot raise it).
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n 48 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_callplus")])
        .args(["serve", "--data-dir", &data, "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--hello-timeout", "1s", "--log", "info", "--log-format", "human"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = log_tx.send(line);
        }
    });
    let (mut addr, mut app_key, mut app_secret) = (None, None, None);
    while addr.is_none() || app_secret.is_none() {
        let line =
            tokio::time::timeout(WAIT, stdout.next_line()).await.unwrap().unwrap().expect("serve prints");
        let line = line.trim();
        if let Some(url) = line.strip_prefix("gRPC (devices):") {
            addr = Some(url.trim().trim_start_matches("http://").parse::<SocketAddr>().unwrap());
        } else if let Some(key) = line.strip_prefix("app key:") {
            app_key = Some(key.trim().to_owned());
        } else if let Some(secret) = line.strip_prefix("app secret:") {
            app_secret = Some(secret.trim().to_owned());
        }
    }
    let addr = addr.unwrap();
    let mut logs = Vec::new();
    let mut log_has = |logs: &mut Vec<String>, what: &str| {
        while let Ok(line) = log_rx.try_recv() {
            logs.push(line);
        }
        logs.iter().any(|l| l.contains(what))
    };
    let until = Instant::now() + WAIT;
    while !log_has(&mut logs, "open-file limit (RLIMIT_NOFILE) is lower") {
        assert!(Instant::now() < until, "no open-file limit warning: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // More silent connections than descriptors: accept fails with EMFILE.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let until = Instant::now() + WAIT;
    while !log_has(&mut logs, "accept failed") {
        assert!(Instant::now() < until, "no accept failure logged: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Out of descriptors for the next second or so (the silent ones are closed after 2 s):
    // a spinning accept loop would burn a whole core; backing off burns next to nothing.
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used < 20, "{used} ticks of CPU in 0.8 s while out of descriptors");
    // Retries back off (10 ms, doubling to 1 s): a handful of failures, not one per millisecond.
    log_has(&mut logs, "");
    let failures = logs.iter().filter(|l| l.contains("accept failed")).count();
    assert!(failures < 20, "{failures} accept failures logged: it retries too often");

    // The silent connections are closed by the server; once they are gone, service resumes.
    for mut socket in silent.drain(..) {
        let _ = closed_after(&mut socket, Instant::now(), Duration::from_secs(20)).await;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token =
        callplus_signal::token::mint(&app_key.unwrap(), &app_secret.unwrap(), "alice", now, 60).unwrap();
    let mut s = Stream::plain(addr).await;
    s.hello("phone", &token).await;
    s.welcomed().await;
    drop(s);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The figures in docs/performance.md: the real binary (`CALLPLUS_MEASURE_BIN`, else this
/// build's) serving ten devices of one user that each ask for pages of 100 records (about
/// 160 KB each) at the default rate limit for 20 s and never read nor ack. Prints the server's
/// resident memory. Run with `--ignored --nocapture`.
#[cfg(target_os = "linux")]
#[tokio::test]
#[ignore = "a 25 s measurement, not a check"]
async fn measure_memory_held_by_devices_that_never_read() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt as _;
    use tokio::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let app = callplus_signal::token::generate_app();
    {
        let storage = callplus_signal::storage::SqliteStorage::open(dir.path()).unwrap();
        storage.insert_app(&app).unwrap();
        store_records(&storage, &AppKey::new(&app.app_key).unwrap(), "slow");
    }
    let bin =
        std::env::var("CALLPLUS_MEASURE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_callplus").to_owned());
    let mut child = Command::new(bin)
        .args(["serve", "--data-dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off", "--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line =
            tokio::time::timeout(WAIT, stdout.next_line()).await.unwrap().unwrap().expect("serve prints");
        if let Some(url) = line.trim().strip_prefix("gRPC (devices):") {
            break url.trim().to_owned();
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = callplus_signal::token::mint(&app.app_key, &app.app_secret, "slow", now, 600).unwrap();
    let idle = rss_kib(pid);
    let mut devices = Vec::new();
    for d in 0..10 {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
        let mut s = Stream::open(endpoint).await;
        s.hello(&format!("device-{d}"), &token).await;
        s.welcomed().await;
        devices.push(s);
    }
    let floods: Vec<_> = devices
        .iter()
        .map(|s| {
            let tx = s.tx.clone();
            tokio::spawn(async move {
                for seq in 1..=1000u64 {
                    let get =
                        pb::GetCallRecords { sync_time: -1, count: 100, order: pb::RecordOrder::Desc as i32 };
                    let frame = pb::ClientFrame {
                        seq,
                        ack: 0,
                        request_id: seq + 1,
                        body: Some(Body::GetCallRecords(get)),
                    };
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let mut peak = idle;
    for second in 1..=20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(pid);
        peak = peak.max(rss);
        println!("t={second:2}s rss={} MiB", rss / 1024);
    }
    for f in floods {
        f.abort();
    }
    println!("idle {} MiB, peak {} MiB, after 20 s {} MiB", idle / 1024, peak / 1024, rss_kib(pid) / 1024);
    drop(devices);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test]
async fn a_device_that_said_hello_over_tls_outlives_the_silent_connection_deadline() {
    use callplus_signal::server::ServerTls;
    use tonic::transport::{Certificate, ClientTlsConfig};

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = ServerTls::from_pem(made.cert.pem(), made.signing_key.serialize_pem());
    let server = Server::builder()
        .in_memory()
        .listen("127.0.0.1:0")
        .no_admin()
        .tls(tls)
        .hello_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let token = server.mint_token("alice", Duration::from_secs(60)).unwrap();
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(made.cert.pem()))
        .domain_name("localhost");
    let endpoint =
        tonic::transport::Endpoint::from_shared(server.grpc_url()).unwrap().tls_config(client_tls).unwrap();
    let mut s = Stream::open(endpoint).await;
    s.hello("phone", &token).await;
    s.welcomed().await;
    // Past the connection deadline (300 ms + 1 s): the greeted connection stays.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(s.send(0, 0, Body::Ping(pb::Ping {})).await);
    assert!(matches!(s.next().await.and_then(|f| f.body), Some(ServerBody::Pong(_))));
    // A TLS connection that never says Hello is still closed.
    let since = Instant::now();
    let mut silent = TcpStream::connect(server.grpc_addr()).await.unwrap();
    let took = closed_after(&mut silent, since, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(1200), "{took:?}");
    drop(s);
    server.shutdown().await.unwrap();
}
