//! The WebSocket transport of the device port, through the real server on 127.0.0.1: calls
//! between a WebSocket party (raw protobuf frames, as a browser sends them) and a gRPC party
//! (the Rust client), resume after a dropped socket, TLS, and hostile input answered with the
//! same codes as over gRPC.
#![allow(clippy::expect_used)]

use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;
use callplus_session::limits::MAX_FRAME_BYTES;
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{CallId, EndReason};
use callplus_signal::server::WEBSOCKET_SUBPROTOCOL;
use callplus_tests::ws::WsStream;
use callplus_tests::*;
use pb::ResultCode as R;
use tokio_tungstenite::tungstenite::Message;

/// Test timers, with liveness long enough that a raw socket need not ping while a test waits.
fn ws_config() -> SwitchboardConfig {
    SwitchboardConfig { liveness_timeout_ms: 20_000, ..config() }
}

fn start_call(callee: &str) -> Body {
    Body::StartCall(pb::StartCall {
        callee_ids: vec![callee.to_owned()],
        call_type: pb::CallType::Single as i32,
        media_type: pb::MediaType::Audio as i32,
        push_config: None,
        extra: "from a browser".into(),
        ring_timeout_ms: None,
    })
}

fn set_microphone(call: &CallId, disabled: bool) -> Body {
    Body::SetMediaState(pb::SetMediaState {
        call_id: call.as_str().to_owned(),
        kind: pb::MediaKind::Audio as i32,
        disabled,
    })
}

fn is_call_started(call: &CallId) -> impl Fn(&pb::event::Kind) -> bool + '_ {
    move |k| matches!(k, pb::event::Kind::CallStarted(s) if s.call_id == call.as_str())
}

fn is_call_ended(call: &CallId) -> impl Fn(&pb::event::Kind) -> bool + '_ {
    move |k| matches!(k, pb::event::Kind::CallEnded(e) if e.call.as_ref().is_some_and(|c| c.call_id == call.as_str()))
}

fn is_record_of(call: &CallId) -> impl Fn(&pb::event::Kind) -> bool + '_ {
    move |k| matches!(k, pb::event::Kind::CallRecord(r) if r.call_id == call.as_str())
}

fn is_microphone_of<'a>(user: &'a str, disabled: bool) -> impl Fn(&pb::event::Kind) -> bool + 'a {
    move |k| {
        matches!(k, pb::event::Kind::MediaStateChanged(m)
            if m.user_id == user && m.kind == pb::MediaKind::Audio as i32 && m.disabled == disabled)
    }
}

/// The WebSocket party `ws` calls the gRPC party `callee`, who answers; returns the call.
async fn ws_calls(ws: &mut WsStream, callee: &mut Party) -> CallId {
    let id = ws.request(start_call(&callee.name)).await;
    let r = ws.response_to(id).await.expect("StartCall answered");
    assert_eq!(R::try_from(r.code), Ok(R::Success), "{r:?}");
    let call_id = match r.result {
        Some(pb::response::Result::Started(s)) => s.call.expect("the started call").call_id,
        other => panic!("expected a started call, got {other:?}"),
    };
    let call = CallId::new(&call_id).expect("a valid call id");
    callee.answer(&call).await;
    ws.event(is_call_started(&call), "CallStarted").await;
    call
}

#[tokio::test]
async fn a_websocket_party_and_a_grpc_party_call_each_other() {
    let server = TestServer::start(ws_config()).await;
    let mut bob = server.user("bob").await;
    let mut alice = server.ws("alice", "alice-browser").await;
    assert_eq!(alice.protocol.as_deref(), Some(WEBSOCKET_SUBPROTOCOL), "the offered subprotocol is selected");

    // WebSocket → gRPC: ring, accept, media state both ways, hang up from gRPC, records.
    let call = ws_calls(&mut alice, &mut bob).await;
    assert_eq!(alice.call(set_microphone(&call, true)).await, Ok(R::Success));
    bob.expect(|e| matches!(e, Event::RemoteMicrophoneStateChanged { disabled: true, .. }), "alice muted")
        .await;
    bob.client.set_microphone_enabled(false).await.expect("bob mutes");
    alice.event(is_microphone_of("bob", true), "bob muted").await;
    bob.client.hangup(None).await.expect("bob hangs up");
    alice.event(is_call_ended(&call), "CallEnded").await;
    alice.event(is_record_of(&call), "alice's record").await;
    bob.expect(record_of(&call), "bob's record").await;

    // gRPC → WebSocket: the invitation, ringing, accept, hang up from WebSocket.
    let call = bob.call("alice", MediaType::Audio).await;
    let (_, incoming) = alice
        .event(|k| matches!(k, pb::event::Kind::IncomingCall(i) if i.inviter_id == "bob"), "IncomingCall")
        .await;
    let pb::event::Kind::IncomingCall(incoming) = incoming else { unreachable!("matched above") };
    assert_eq!(incoming.call.map(|c| c.call_id).as_deref(), Some(call.as_str()));
    let id = call.as_str().to_owned();
    assert_eq!(alice.call(Body::Ringing(pb::Ringing { call_id: id.clone() })).await, Ok(R::Success));
    assert_eq!(alice.call(Body::Accept(pb::Accept { call_id: id.clone() })).await, Ok(R::Success));
    bob.expect(connected(&call), "connected").await;
    alice.event(is_call_started(&call), "CallStarted").await;
    assert_eq!(alice.call(Body::Hangup(pb::Hangup { call_id: id, push_config: None })).await, Ok(R::Success));
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "ended by alice").await;
    // The party that hangs up learns the end from its Response; its record follows.
    alice.event(is_record_of(&call), "alice's record").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_dropped_websocket_resumes_without_loss_or_duplicates() {
    let server = TestServer::start(ws_config()).await;
    let mut bob = server.user("bob").await;
    let mut alice = WsStream::open(server.addr()).await;
    let welcome = alice.hello(&server.token("alice"), "alice-browser").await.expect("welcomed");
    let call = ws_calls(&mut alice, &mut bob).await;
    alice.ping().await;
    let last_received_seq = alice.ack;
    let (next_seq, next_request) = (alice.next_seq, alice.next_request);
    alice.drop_connection();

    // While alice is away, bob mutes: the event waits in her session.
    bob.client.set_microphone_enabled(false).await.expect("bob mutes");

    let mut again = WsStream::open(server.addr()).await;
    let resume = pb::Resume { session_id: welcome.session_id.clone(), last_received_seq };
    let resumed = again
        .hello_resuming(&server.token("alice"), "alice-browser", Some(resume))
        .await
        .expect("welcomed back");
    assert!(resumed.resumed, "the session is resumed: {resumed:?}");
    assert_eq!(resumed.session_id, welcome.session_id);
    (again.ack, again.next_seq, again.next_request) = (last_received_seq, next_seq, next_request);

    // The missed event arrives, after what alice had, and only once.
    let (seq, _) = again.event(is_microphone_of("bob", true), "the missed mute").await;
    assert!(seq > last_received_seq, "replayed after seq {last_received_seq}, got {seq}");
    // A round trip: anything still queued for alice arrives before its answer.
    assert_eq!(again.call(Body::GetAvailableCalls(pb::GetAvailableCalls {})).await, Ok(R::Success));
    assert!(
        !again.events.iter().any(|(_, k)| is_microphone_of("bob", true)(k)),
        "the mute is delivered twice: {:?}",
        again.events
    );
    let seqs: Vec<u64> = again.events.iter().map(|(s, _)| *s).collect();
    assert!(seqs.iter().all(|s| *s > last_received_seq && *s != seq), "nothing replayed twice: {seqs:?}");

    // The call went on; alice's next requests continue her sequence.
    assert_eq!(again.call(set_microphone(&call, true)).await, Ok(R::Success));
    bob.expect(|e| matches!(e, Event::RemoteMicrophoneStateChanged { disabled: true, .. }), "alice muted")
        .await;
    assert_eq!(bob.seen(ended(&call)), 0, "the call survived the drop: {:#?}", bob.log);
    bob.client.hangup(None).await.expect("bob hangs up");
    again.event(is_call_ended(&call), "CallEnded").await;
    server.shutdown().await;
}

#[tokio::test]
async fn wss_on_a_tls_port_serves_websocket_and_grpc_together() {
    let cert = TestCertificate::generate();
    let server = TestServer::start_with(Setup {
        config: Some(ws_config()),
        tls: Some(cert.clone()),
        ..Setup::default()
    })
    .await;
    let mut bob = server.user("bob").await;
    let mut alice = WsStream::open_tls(server.addr(), &cert.cert_pem).await;
    alice.hello(&server.token("alice"), "alice-browser").await.expect("welcomed over wss");
    let call = ws_calls(&mut alice, &mut bob).await;
    assert_eq!(
        alice.call(Body::Hangup(pb::Hangup { call_id: call.as_str().into(), push_config: None })).await,
        Ok(R::Success)
    );
    bob.expect(ended(&call), "ended").await;
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_over_http2_extended_connect_is_served() {
    let server = TestServer::start(ws_config()).await;
    let mut bob = server.user("bob").await;
    let mut alice = WsStream::open_h2(server.addr()).await;
    assert_eq!(alice.protocol.as_deref(), Some(WEBSOCKET_SUBPROTOCOL));
    alice.hello(&server.token("alice"), "alice-browser").await.expect("welcomed over HTTP/2");
    let call = ws_calls(&mut alice, &mut bob).await;
    bob.client.hangup(None).await.expect("bob hangs up");
    alice.event(is_call_ended(&call), "CallEnded").await;
    server.shutdown().await;
}

/// The response that precedes the server's close, and the close itself.
async fn refused_then_closed(s: &mut WsStream) -> pb::Response {
    let r = s.next_response().await.expect("a Response before the socket closes");
    assert!(s.next().await.is_none(), "the socket closes after the refusal");
    assert!(s.close.is_some(), "with a Close frame");
    r
}

async fn still_serves(server: &TestServer) {
    let mut s = server.ws("carol", "carol-browser").await;
    assert_eq!(s.call(Body::GetAvailableCalls(pb::GetAvailableCalls {})).await, Ok(R::Success));
}

#[tokio::test]
async fn text_messages_and_garbage_bytes_get_frame_invalid() {
    let server = TestServer::start(ws_config()).await;
    let token = server.token("mallory");
    let text = || Message::Text("{\"hello\": {}}".into());
    let garbage = || Message::Binary(vec![0xff; 16].into());
    for (what, message) in [("text", text()), ("garbage", garbage())] {
        // Instead of the Hello…
        let mut s = WsStream::open(server.addr()).await;
        assert!(s.send_message(message.clone()).await);
        let r = refused_then_closed(&mut s).await;
        assert_eq!(R::try_from(r.code), Ok(R::FrameInvalid), "{what} before the Hello: {r:?}");
        assert_eq!(r.request_id, 0);
        assert!(!r.message.is_empty(), "the reason is told");
        // …and after it.
        let mut s = WsStream::open(server.addr()).await;
        s.hello(&token, "mallory-browser").await.expect("welcomed");
        assert!(s.send_message(message).await);
        let r = refused_then_closed(&mut s).await;
        assert_eq!(R::try_from(r.code), Ok(R::FrameInvalid), "{what} after the Hello: {r:?}");
    }
    still_serves(&server).await;
    server.shutdown().await;
}

/// Frames RFC 6455 does not allow a client to send, written raw after a hand-made handshake,
/// get the same FRAME_INVALID as a message that does not decode; a request that is not a
/// handshake gets an HTTP error, not an upgrade.
#[tokio::test]
async fn websocket_protocol_errors_are_refused_with_a_code() {
    let server = TestServer::start(ws_config()).await;
    let mask = [1, 2, 3, 4];
    for (what, raw) in [
        ("an unmasked frame", vec![0x82, 0x02, 0x08, 0x05]),
        ("a reserved bit", vec![0xc2, 0x80, mask[0], mask[1], mask[2], mask[3]]),
        ("a fragmented ping", vec![0x09, 0x80, mask[0], mask[1], mask[2], mask[3]]),
        ("a continuation of nothing", vec![0x80, 0x80, mask[0], mask[1], mask[2], mask[3]]),
    ] {
        let mut s = WsStream::open_then_write(server.addr(), &raw).await;
        let r = refused_then_closed(&mut s).await;
        assert_eq!(R::try_from(r.code), Ok(R::FrameInvalid), "{what}: {r:?}");
        assert!(r.message.contains("WebSocket protocol error"), "{what}: {}", r.message);
    }
    let path = callplus_signal::server::WEBSOCKET_PATH;
    let (status, _, body) = http_get(&server, path).await;
    assert!(status.starts_with("HTTP/1.1 400"), "not a handshake: {status}");
    assert!(!body.is_empty(), "the refusal says why");
    let handshake = |method: &str, version: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let (status, _, _) = http_request(&server, &handshake("POST", "13")).await;
    assert!(status.starts_with("HTTP/1.1 405"), "a handshake is a GET: {status}");
    let (status, headers, body) = http_request(&server, &handshake("GET", "8")).await;
    assert!(status.starts_with("HTTP/1.1 426"), "another WebSocket version: {status}");
    assert_eq!(http_header(&headers, "sec-websocket-version"), Some("13"), "the version it speaks");
    assert!(!body.is_empty(), "the refusal says why");
    still_serves(&server).await;
    server.shutdown().await;
}

/// A WebSocket ping (which a browser never sends, but other clients do) is answered with a
/// pong carrying its payload, between the frames of the protocol.
#[tokio::test]
async fn websocket_pings_are_answered() {
    let server = TestServer::start(ws_config()).await;
    let mut s = WsStream::open(server.addr()).await;
    s.hello(&server.token("dave"), "dave-browser").await.expect("welcomed");
    assert!(s.send_message(Message::Ping(b"still there?".to_vec().into())).await);
    // The protocol's own ping, answered after it.
    s.ping().await;
    loop {
        let frame = s.next().await.expect("the protocol's Pong");
        if matches!(frame.body, Some(pb::server_frame::Body::Pong(_))) {
            break;
        }
    }
    assert_eq!(s.pongs, [b"still there?".to_vec()]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_first_frame_must_be_a_hello_with_a_valid_token() {
    let server = TestServer::start(ws_config()).await;
    let mut s = WsStream::open(server.addr()).await;
    let ping = pb::ClientFrame { seq: 0, ack: 0, request_id: 7, body: Some(Body::Ping(pb::Ping {})) };
    assert!(s.send(ping).await);
    let r = refused_then_closed(&mut s).await;
    assert_eq!(R::try_from(r.code), Ok(R::InvalidState), "{r:?}");
    assert_eq!(r.request_id, 7);

    let mut s = WsStream::open(server.addr()).await;
    let r = s.hello("not-a-token", "mallory-browser").await.expect_err("refused");
    assert_eq!(R::try_from(r.code), Ok(R::TokenInvalid), "{r:?}");
    assert!(s.next().await.is_none(), "closed after the refusal");

    // No subprotocol offered: served all the same.
    let mut s = WsStream::open_without_subprotocol(server.addr()).await;
    assert_eq!(s.protocol, None);
    s.hello(&server.token("alice"), "alice-browser").await.expect("welcomed");
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_gets_message_too_large() {
    let server = TestServer::start(ws_config()).await;
    let mut bob = server.user("bob").await;
    let mut s = server.ws("mallory", "mallory-browser").await;
    // One byte over the limit, as the gRPC decoder's.
    let mut big = pb::ClientFrame { seq: 1, ack: 0, request_id: 9, body: Some(start_call("bob")) };
    if let Some(Body::StartCall(start)) = &mut big.body {
        start.extra = "x".repeat(MAX_FRAME_BYTES);
    }
    let mut bytes = prost::Message::encode_to_vec(&big);
    bytes.truncate(MAX_FRAME_BYTES + 1);
    assert!(s.send_message(Message::Binary(bytes.into())).await);
    let r = refused_then_closed(&mut s).await;
    assert_eq!(R::try_from(r.code), Ok(R::MessageTooLarge), "{r:?}");

    // Exactly at the limit is a frame like any other (here a StartCall with a long extra,
    // refused for its content, not its size).
    let mut s = server.ws("mallory", "mallory-browser").await;
    let mut fits = pb::ClientFrame { seq: 1, ack: 0, request_id: 9, body: Some(start_call("bob")) };
    let overhead = prost::Message::encoded_len(&fits);
    if let Some(Body::StartCall(start)) = &mut fits.body {
        // A length prefix grows by two bytes past 127.
        start.extra = "x".repeat(MAX_FRAME_BYTES - overhead - 3);
    }
    assert!(prost::Message::encoded_len(&fits) <= MAX_FRAME_BYTES);
    assert!(s.send(fits).await);
    let r = s.response_to(9).await.expect("answered");
    assert_ne!(R::try_from(r.code), Ok(R::MessageTooLarge), "{r:?}");

    // Bob was never rung by an oversized frame; the server goes on.
    bob.sync().await;
    assert_eq!(bob.seen(|e| matches!(e, Event::ReceivedCall { .. })), 0, "{:#?}", bob.log);
    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_flood_over_websocket_is_rate_limited() {
    let cfg = SwitchboardConfig { requests_per_second: 5, request_burst: 5, ..ws_config() };
    let server = TestServer::start(cfg).await;
    let mut s = server.ws("mallory", "mallory-browser").await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(s.request(Body::GetAvailableCalls(pb::GetAvailableCalls {})).await);
    }
    let (mut served, mut limited) = (0, 0);
    for id in ids {
        let r = s.response_to(id).await.expect("every request is answered");
        match R::try_from(r.code) {
            Ok(R::Success) => served += 1,
            Ok(R::RateLimited) => limited += 1,
            other => panic!("unexpected {other:?}: {r:?}"),
        }
    }
    assert!(served >= 5, "the burst is served ({served})");
    assert!(limited >= 10, "the flood is limited ({limited} of 40)");
    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_never_sends_hello_is_timed_out() {
    let server = TestServer::start_with(Setup {
        config: Some(ws_config()),
        hello_timeout: Some(Duration::from_millis(300)),
        ..Setup::default()
    })
    .await;
    let mut s = WsStream::open(server.addr()).await;
    // WebSocket pings keep nothing alive: only a Hello counts.
    assert!(s.send_message(Message::Ping(b"still here".to_vec().into())).await);
    let r = refused_then_closed(&mut s).await;
    assert_eq!(R::try_from(r.code), Ok(R::Timeout), "{r:?}");
    assert_eq!(r.request_id, 0);
    server.shutdown().await;
}

// ----- the Rust client on the WebSocket transport ---------------------------------------------

fn microphone_off(e: &Event) -> bool {
    matches!(e, Event::RemoteMicrophoneStateChanged { disabled: true, .. })
}

#[tokio::test]
async fn the_rust_client_over_websocket_resumes_after_a_cut() {
    let server = TestServer::start(SwitchboardConfig { liveness_timeout_ms: 5_000, ..config() }).await;
    let proxy = TcpProxy::start(server.addr()).await;
    let ws_endpoint = proxy.endpoint().replacen("http://", "ws://", 1);
    let mut alice = server.device_via(&ws_endpoint, "alice", "alice-browser").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;

    proxy.pause();
    proxy.sever();
    alice.expect(state_is(ConnectionState::Reconnecting), "reconnecting").await;
    bob.client.set_microphone_enabled(false).await.expect("bob mutes while alice is away");
    let queued = {
        let (client, call) = (alice.client.clone(), call.clone());
        tokio::spawn(async move { client.get_call(&call).await })
    };
    proxy.resume();
    alice.expect(state_is(ConnectionState::Connected), "connected again").await;
    alice.expect(microphone_off, "the missed mute").await;
    let info = tokio::time::timeout(WAIT, queued).await.expect("answered").expect("task").expect("get_call");
    assert!(!info.is_ended(), "the call survived the cut");

    alice.client.hangup(None).await.expect("hangup");
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "bob ended").await;
    alice.expect(record_of(&call), "alice's record").await;
    let log = alice.finish().await;
    assert_eq!(log.iter().filter(|e| microphone_off(e)).count(), 1, "once: {log:#?}");
    assert_eq!(log.iter().filter(|e| connected(&call)(e)).count(), 1, "{log:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_rust_client_over_wss_calls_a_grpc_client() {
    let cert = TestCertificate::generate();
    let server = TestServer::start_with(Setup { tls: Some(cert.clone()), ..Setup::default() }).await;
    let wss = format!("wss://127.0.0.1:{}", server.addr().port());
    let options = client_options("alice-browser").with_tls(cert.trusted());
    let mut alice =
        Party::connect_with(&wss, &server.token("alice"), "alice", "alice-browser", options).await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut bob, &mut alice, MediaType::Audio).await;
    alice.client.hangup(None).await.expect("hangup");
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "bob ended").await;

    // An untrusted certificate is refused, never downgraded.
    let untrusted = client_options("eve-browser").with_tls(TestCertificate::generate().trusted());
    let Err(err) = Client::connect(&wss, &server.token("eve"), untrusted).await else {
        panic!("an untrusted certificate is accepted")
    };
    assert_eq!(err.code, Code::NotConnected, "{err}");
    server.shutdown().await;
}

/// The device port and the switchboard run on the server's own signalling thread, not on the
/// runtime that started the server: a device is welcomed while that runtime's only thread is
/// blocked. (Were they spawned on the caller's runtime, as before the signalling thread, the
/// device would get nothing until its deadline.)
#[tokio::test]
async fn a_device_is_welcomed_while_the_runtime_that_started_the_server_is_blocked() {
    let server = TestServer::start(ws_config()).await;
    let (addr, token) = (server.addr(), server.token("alice"));
    let device = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            tokio::time::timeout(WAIT, async {
                let mut ws = WsStream::open(addr).await;
                ws.hello(&token, "alice-phone").await
            })
            .await
        })
    });
    // This test's runtime has one thread, blocked here until the device is done.
    let welcome = device.join().expect("device thread");
    let welcome = welcome.expect("welcomed before the deadline").expect("a Welcome, not a refusal");
    assert_eq!(welcome.user_id, "alice");
    assert!(!welcome.session_id.is_empty());
    server.shutdown().await;
}
