//! Hostile input over real gRPC: refused tokens, devices acting on calls that are not theirs
//! (hand-made frames on a raw stream, so no client-side check hides anything), malformed and
//! oversized frames, unknown ids, request floods — each answered with a clear code, and the
//! server keeps serving everyone else.
#![allow(clippy::expect_used)]

use std::sync::Arc;

use callplus_proto::v1 as pb;
use callplus_proto::v1::ResultCode as R;
use callplus_proto::v1::client_frame::Body;
use callplus_session::client::CallOptions;
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{CallId, EndReason};
use callplus_signal::storage::{SqliteStorage, Storage};
use callplus_signal::token;
use callplus_tests::{
    CallType, Client, Code, Event, MediaType, Party, RawStream, Setup, TestServer, WAIT, client_options,
    config, connected, ended, ended_with, establish, foreign_token, now_secs, received,
};
use tokio::time::timeout;

/// After whatever happened, two fresh users still get a whole call.
async fn still_serves(server: &TestServer) {
    let mut caller = server.user("zoe").await;
    let mut callee = server.user("yann").await;
    let call = establish(&mut caller, &mut callee, MediaType::Audio).await;
    caller.client.hangup(None).await.expect("hangup");
    callee.expect(ended_with(&call, EndReason::RemoteHangup), "normal end").await;
}

fn start_call(callees: &[&str], call_type: pb::CallType, media_type: pb::MediaType, extra: String) -> Body {
    Body::StartCall(pb::StartCall {
        callee_ids: callees.iter().map(|s| (*s).to_owned()).collect(),
        call_type: call_type as i32,
        media_type: media_type as i32,
        push_config: None,
        extra,
        ring_timeout_ms: None,
    })
}

fn single_to(callee: &str) -> Body {
    start_call(&[callee], pb::CallType::Single, pb::MediaType::Audio, String::new())
}

/// A refused Hello: the code, and the stream ends.
async fn refused(server: &TestServer, token: &str, device: &str) -> R {
    let mut s = RawStream::open(server.addr()).await;
    let refusal = s.hello(token, device).await.expect_err("refused");
    assert!(s.next().await.is_none(), "the stream ends after a refusal");
    R::try_from(refusal.code).expect("a known code")
}

#[tokio::test]
async fn bad_expired_and_foreign_tokens_are_refused() {
    let server = TestServer::start(config()).await;
    let app = server.app().clone();
    let forged = token::mint(&app.app_key, "not-the-secret", "alice", now_secs(), 3600).expect("mint");
    let expired = token::mint(&app.app_key, &app.app_secret, "alice", now_secs() - 7200, 60).expect("mint");
    let mut tampered: Vec<char> = server.token("alice").chars().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();

    let cases = [
        ("garbage", "not-a-token".to_owned(), Code::TokenInvalid),
        ("wrong signature", forged, Code::TokenInvalid),
        ("tampered", tampered, Code::TokenInvalid),
        ("expired", expired, Code::TokenExpired),
        ("unknown app", foreign_token("alice"), Code::TokenInvalid),
        ("empty", String::new(), Code::TokenInvalid),
    ];
    for (what, token, code) in &cases {
        // Through the SDK…
        let refused_sdk = Client::connect(&server.endpoint(), token, client_options("alice-phone")).await;
        let err = refused_sdk.expect_err(what);
        assert_eq!(err.code, *code, "{what}: {err}");
        // …and on a raw stream.
        assert_eq!(refused(&server, token, "alice-phone").await, code.to_proto(), "{what}");
    }
    // A Hello with a malformed device id is refused too.
    let code = refused(&server, &server.token("alice"), "no spaces allowed").await;
    assert_ne!(code, R::Success);

    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_stranger_cannot_touch_someone_elses_call() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;
    let id = call.as_str().to_owned();

    let mut mallory = server.raw("mallory", "mallory-laptop").await;
    let attempts: Vec<(&str, Body)> = vec![
        ("accept", Body::Accept(pb::Accept { call_id: id.clone() })),
        ("hangup", Body::Hangup(pb::Hangup { call_id: id.clone(), push_config: None })),
        ("ringing", Body::Ringing(pb::Ringing { call_id: id.clone() })),
        ("join", Body::JoinCall(pb::JoinCall { call_id: id.clone() })),
        (
            "invite",
            Body::Invite(pb::Invite {
                call_id: id.clone(),
                user_ids: vec!["mallory".into()],
                push_config: None,
                extra: String::new(),
            }),
        ),
        (
            "camera",
            Body::SetMediaState(pb::SetMediaState {
                call_id: id.clone(),
                kind: pb::MediaKind::Video as i32,
                disabled: true,
            }),
        ),
        (
            "change media type",
            Body::RequestChangeMediaType(pb::RequestChangeMediaType {
                call_id: id.clone(),
                media_type: pb::MediaType::Audio as i32,
            }),
        ),
        (
            "reply",
            Body::ReplyChangeMediaType(pb::ReplyChangeMediaType {
                call_id: id.clone(),
                transaction_id: "t1".into(),
                agree: true,
            }),
        ),
        ("first frame", Body::ReportFirstFrame(pb::ReportFirstFrame { call_id: id.clone() })),
        (
            "media signal",
            Body::MediaSignal(pb::MediaSignal {
                call_id: id.clone(),
                to_user_id: "alice".into(),
                to_device_id: "alice-phone".into(),
                payload: Some(pb::media_signal::Payload::SdpOffer("v=0".into())),
            }),
        ),
        ("get call", Body::GetCall(pb::GetCall { call_id: id.clone() })),
    ];
    for (what, body) in attempts {
        let code = mallory.call(body).await;
        assert!(code == Ok(R::CallNotFound), "{what}: {code:?}");
    }
    // Nothing about the call ever reached mallory.
    let leaked: Vec<_> = mallory.events.iter().filter(|e| format!("{e:?}").contains(&id)).collect();
    assert!(leaked.is_empty(), "{leaked:?}");

    // Bob's other device did not take the call: it cannot hang it up or speak for it.
    let mut tablet = server.raw("bob", "bob-tablet").await;
    let code = tablet.call(Body::Hangup(pb::Hangup { call_id: id.clone(), push_config: None })).await;
    assert_eq!(code, Ok(R::NotInCall));
    let mute = pb::SetMediaState { call_id: id.clone(), kind: pb::MediaKind::Audio as i32, disabled: true };
    assert_eq!(tablet.call(Body::SetMediaState(mute)).await, Ok(R::NotInCall));

    // The call is untouched.
    for party in [&mut alice, &mut bob] {
        party.sync().await;
        assert_eq!(party.seen(ended(&call)), 0, "{}: {:#?}", party.name, party.log);
        assert_eq!(party.seen(|e| matches!(e, Event::RemoteCameraStateChanged { .. })), 0);
    }
    assert_eq!(alice.client.get_call(&call).await.expect("get_call").participants.len(), 2);
    alice.client.hangup(None).await.expect("hangup");
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "normal end").await;
    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn apps_are_isolated_from_each_other() {
    let storage = SqliteStorage::open_in_memory().expect("storage");
    let (app_a, app_b) = (token::generate_app(), token::generate_app());
    storage.insert_app(&app_a).expect("app a");
    storage.insert_app(&app_b).expect("app b");
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let server = TestServer::start_with(Setup { storage: Some(storage), ..Setup::default() }).await;
    let mint = |app: &token::AppCredentials, user: &str| {
        token::mint(&app.app_key, &app.app_secret, user, now_secs(), 3600).expect("mint")
    };
    let endpoint = server.endpoint();
    let alice = Party::connect(&endpoint, &mint(&app_a, "alice"), "alice", "alice-phone").await;
    let mut bob = Party::connect(&endpoint, &mint(&app_a, "bob"), "bob", "bob-phone").await;
    let call = alice.call("bob", MediaType::Audio).await;
    bob.expect(received(&call), "bob rings").await;

    // A user of app B with the same name as bob, on a raw stream.
    let mut other = RawStream::open(server.addr()).await;
    other.hello(&mint(&app_b, "bob"), "bob-phone").await.expect("welcomed in app b");
    for body in [
        Body::Accept(pb::Accept { call_id: call.as_str().into() }),
        Body::GetCall(pb::GetCall { call_id: call.as_str().into() }),
        Body::Hangup(pb::Hangup { call_id: call.as_str().into(), push_config: None }),
    ] {
        assert_eq!(other.call(body).await, Ok(R::CallNotFound));
    }
    // A call in app B to "alice" does not reach app A's alice.
    let mut alice_b = RawStream::open(server.addr()).await;
    alice_b.hello(&mint(&app_b, "alice"), "alice-b").await.expect("welcomed");
    let rid = other.request(single_to("alice")).await;
    let started = other.response_to(rid).await.expect("response");
    assert_eq!(started.code, R::Success as i32, "{started:?}");
    let mut alice = alice;
    alice.sync().await;
    assert_eq!(alice.seen(|e| matches!(e, Event::ReceivedCall { .. })), 0, "{:#?}", alice.log);
    let got = timeout(WAIT, async {
        loop {
            if let Some(pb::server_frame::Body::Event(pb::Event {
                kind: Some(pb::event::Kind::IncomingCall(c)),
            })) = alice_b.next().await.and_then(|f| f.body)
            {
                return c;
            }
        }
    })
    .await
    .expect("app b's alice rings");
    assert_eq!(got.inviter_id, "bob");
    // App A's call is untouched.
    bob.client.accept(&call).await.expect("bob answers app a's call");
    bob.expect(connected(&call), "connected").await;
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_get_clear_codes_and_the_stream_keeps_working() {
    let server = TestServer::start(config()).await;
    let mut s = server.raw("mallory", "mallory-laptop").await;
    let call = |call_id: &str| Body::Accept(pb::Accept { call_id: call_id.to_owned() });
    let many: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let hundred_one: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let big_push = pb::PushConfig { custom_data: "x".repeat(9_000), ..Default::default() };

    let cases: Vec<(&str, Option<Body>, R)> = vec![
        ("no body", None, R::FrameInvalid),
        (
            "bad call type",
            Some(start_call(&["bob"], pb::CallType::Single, pb::MediaType::Audio, String::new())).map(|b| {
                match b {
                    Body::StartCall(mut s) => {
                        s.call_type = 99;
                        Body::StartCall(s)
                    }
                    other => other,
                }
            }),
            R::ParamError,
        ),
        (
            "unspecified media type",
            Some(Body::StartCall(pb::StartCall {
                callee_ids: vec!["bob".into()],
                call_type: pb::CallType::Single as i32,
                media_type: 0,
                ..Default::default()
            })),
            R::MediatypeInvalid,
        ),
        ("bad user id", Some(single_to("bob smith")), R::ParamError),
        (
            "empty user list",
            Some(start_call(&[], pb::CallType::Multi, pb::MediaType::Audio, String::new())),
            R::UserListInvalid,
        ),
        (
            "1000 callees",
            Some(start_call(&many, pb::CallType::Multi, pb::MediaType::Audio, String::new())),
            R::UserListInvalid,
        ),
        (
            "duplicate callees",
            Some(start_call(&["bob", "bob"], pb::CallType::Multi, pb::MediaType::Audio, String::new())),
            R::UserListInvalid,
        ),
        ("calling oneself", Some(single_to("mallory")), R::UserListInvalid),
        (
            "SINGLE to two",
            Some(start_call(&["bob", "carol"], pb::CallType::Single, pb::MediaType::Audio, String::new())),
            R::SingleCallNotSupportMultiPerson,
        ),
        (
            "5 KiB extra",
            Some(start_call(&["bob"], pb::CallType::Single, pb::MediaType::Audio, "x".repeat(5 * 1024))),
            R::ParamError,
        ),
        (
            "9 KB push config",
            Some(Body::StartCall(pb::StartCall {
                callee_ids: vec!["bob".into()],
                call_type: pb::CallType::Single as i32,
                media_type: pb::MediaType::Audio as i32,
                push_config: Some(big_push),
                ..Default::default()
            })),
            R::ParamError,
        ),
        ("empty call id", Some(call("")), R::CallIdInvalid),
        ("bad call id", Some(call("../../etc/passwd")), R::CallIdInvalid),
        ("unknown call id", Some(call("c-does-not-exist")), R::CallNotFound),
        (
            "unknown call (hangup)",
            Some(Body::Hangup(pb::Hangup { call_id: "nope".into(), push_config: None })),
            R::CallNotFound,
        ),
        ("unknown call (get)", Some(Body::GetCall(pb::GetCall { call_id: "nope".into() })), R::CallNotFound),
        (
            "unknown call (invite)",
            Some(Body::Invite(pb::Invite {
                call_id: "nope".into(),
                user_ids: vec!["bob".into()],
                push_config: None,
                extra: String::new(),
            })),
            R::CallNotFound,
        ),
        (
            "bad media kind",
            Some(Body::SetMediaState(pb::SetMediaState { call_id: "nope".into(), kind: 42, disabled: true })),
            R::ParamError,
        ),
        (
            "bad transaction id",
            Some(Body::ReplyChangeMediaType(pb::ReplyChangeMediaType {
                call_id: "nope".into(),
                transaction_id: "no way".into(),
                agree: true,
            })),
            R::TransactionIdInvalid,
        ),
        (
            "media signal without payload",
            Some(Body::MediaSignal(pb::MediaSignal {
                call_id: "nope".into(),
                to_user_id: "bob".into(),
                to_device_id: "d".into(),
                payload: None,
            })),
            R::ParamError,
        ),
        (
            "media signal to a bad user",
            Some(Body::MediaSignal(pb::MediaSignal {
                call_id: "nope".into(),
                to_user_id: "bob!".into(),
                to_device_id: "d".into(),
                payload: Some(pb::media_signal::Payload::SdpAnswer("v=0".into())),
            })),
            R::UserIdInvalid,
        ),
        (
            "records count 0",
            Some(Body::GetCallRecords(pb::GetCallRecords { sync_time: -1, count: 0, order: 0 })),
            R::ParamError,
        ),
        (
            "records count 101",
            Some(Body::GetCallRecords(pb::GetCallRecords { sync_time: -1, count: 101, order: 0 })),
            R::ParamError,
        ),
        (
            "records bad order",
            Some(Body::GetCallRecords(pb::GetCallRecords { sync_time: -1, count: 10, order: 17 })),
            R::ParamError,
        ),
        (
            "delete 101 records",
            Some(Body::DeleteCallRecords(pb::DeleteCallRecords { call_ids: hundred_one })),
            R::ParamError,
        ),
        (
            "delete a bad id",
            Some(Body::DeleteCallRecords(pb::DeleteCallRecords { call_ids: vec!["a b".into()] })),
            R::CallIdInvalid,
        ),
        (
            "second hello",
            Some(Body::Hello(pb::Hello {
                token: server.token("mallory"),
                device_id: "x".into(),
                resume: None,
                client_version: String::new(),
            })),
            R::InvalidState,
        ),
    ];
    for (what, body, expected) in cases {
        let id = s.request_frame(body).await;
        let r = s.response_to(id).await.unwrap_or_else(|| panic!("{what}: the stream ended"));
        assert_eq!(R::try_from(r.code), Ok(expected), "{what}: {r:?}");
        assert!(!r.message.is_empty(), "{what}: a refusal explains itself");
    }
    // The same stream still works.
    assert_eq!(s.call(Body::GetAvailableCalls(pb::GetAvailableCalls {})).await, Ok(R::Success));
    assert!(
        s.send(pb::ClientFrame { seq: 0, ack: s.ack, request_id: 0, body: Some(Body::Ping(pb::Ping {})) })
            .await
    );
    let pong = timeout(WAIT, async {
        loop {
            match s.next().await.and_then(|f| f.body) {
                Some(pb::server_frame::Body::Pong(_)) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await
    .expect("pong in time");
    assert!(pong, "the stream was closed");
    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_without_harm() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;

    let mut s = server.raw("mallory", "mallory-laptop").await;
    let id = s
        .request(start_call(&["bob"], pb::CallType::Single, pb::MediaType::Audio, "x".repeat(1 << 20)))
        .await;
    // Either a MESSAGE_TOO_LARGE answer or the stream closed; never anything else.
    let mut answer = None;
    while let Some(frame) = s.next().await {
        if let Some(pb::server_frame::Body::Response(r)) = frame.body {
            answer = Some(r);
            break;
        }
    }
    if let Some(r) = &answer {
        assert_eq!(R::try_from(r.code), Ok(R::MessageTooLarge), "{r:?}");
        assert!(r.request_id == id || r.request_id == 0, "{r:?}");
    }
    // Mallory can reconnect; bob was never rung; the call goes on.
    let mut again = server.raw("mallory", "mallory-laptop").await;
    assert_eq!(again.call(Body::GetAvailableCalls(pb::GetAvailableCalls {})).await, Ok(R::Success));
    bob.sync().await;
    assert_eq!(
        bob.seen(|e| matches!(e, Event::ReceivedCall { .. })),
        1,
        "only alice's call rang: {:#?}",
        bob.log
    );
    assert!(!alice.client.get_call(&call).await.expect("get_call").is_ended());
    alice.client.hangup(None).await.expect("hangup");
    bob.expect(ended(&call), "ended").await;
    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_call_ids_through_the_sdk_are_call_not_found() {
    let server = TestServer::start(config()).await;
    let alice = server.user("alice").await;
    let unknown = CallId::new("c-never-made").expect("id");
    let err = alice.client.get_call(&unknown).await.expect_err("get_call");
    assert_eq!(err.code, Code::CallNotFound, "{err}");
    let err = alice.client.join_call(&unknown).await.expect_err("join_call");
    assert_eq!(err.code, Code::CallNotFound, "{err}");
    // Local checks need no server round trip but still name the problem.
    let err = alice.client.accept(&unknown).await.expect_err("accept");
    assert!(matches!(err.code, Code::CallIdInvalid | Code::CallNotFound), "{err}");
    let err = alice.client.hangup(Some(&unknown)).await.expect_err("hangup");
    assert!(matches!(err.code, Code::CallIdInvalid | Code::CallNotFound | Code::NotInCall), "{err}");
    let err = alice
        .client
        .start_call(&["bob smith"], CallType::Single, MediaType::Audio, CallOptions::default())
        .await
        .expect_err("bad id");
    assert_eq!(err.code, Code::ParamError, "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_flood_is_rate_limited_without_hurting_others() {
    let cfg = SwitchboardConfig { requests_per_second: 5, request_burst: 5, ..config() };
    let server = TestServer::start(cfg).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;

    let mut s = server.raw("mallory", "mallory-laptop").await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(s.request(Body::GetAvailableCalls(pb::GetAvailableCalls {})).await);
    }
    let mut limited = 0;
    let mut served = 0;
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

    // Others are unaffected.
    alice.client.set_microphone_enabled(false).await.expect("alice is served");
    bob.expect(|e| matches!(e, Event::RemoteMicrophoneStateChanged { disabled: true, .. }), "mute").await;
    alice.client.hangup(None).await.expect("hangup");
    bob.expect(ended(&call), "ended").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_stranger_cannot_tell_an_existing_call_from_a_missing_one() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;
    let (prefix, _) = call.as_str().rsplit_once('-').expect("ids are <prefix>-<counter>");
    let missing = format!("{prefix}-fffff");

    let mut mallory = server.raw("mallory", "mallory-laptop").await;
    type Probe = (&'static str, fn(String) -> Body);
    let probes: [Probe; 4] = [
        ("get_call", |id| Body::GetCall(pb::GetCall { call_id: id })),
        ("accept", |id| Body::Accept(pb::Accept { call_id: id })),
        ("join", |id| Body::JoinCall(pb::JoinCall { call_id: id })),
        ("hangup", |id| Body::Hangup(pb::Hangup { call_id: id, push_config: None })),
    ];
    for (what, body) in probes {
        let existing = mallory.call(body(call.as_str().to_owned())).await;
        let absent = mallory.call(body(missing.clone())).await;
        assert_eq!(
            existing, absent,
            "{what}: a stranger can tell that {call} exists (docs/protocol.md#server-rules)"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_after_the_hello_is_answered_message_too_large() {
    let server = TestServer::start(config()).await;
    let mut s = server.raw("mallory", "mallory-laptop").await;
    s.request(start_call(&["bob"], pb::CallType::Single, pb::MediaType::Audio, "x".repeat(1 << 20))).await;
    let mut answer = None;
    while let Some(frame) = s.next().await {
        if let Some(pb::server_frame::Body::Response(r)) = frame.body {
            answer = Some(r);
            break;
        }
    }
    let r =
        answer.expect("a MESSAGE_TOO_LARGE answer before the stream closes (docs/protocol.md#server-rules: a clear error code)");
    assert_eq!(R::try_from(r.code), Ok(R::MessageTooLarge), "{r:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn tls_is_refused_when_not_trusted_and_never_downgraded() {
    use callplus_signal::server::{Server, ServerError, ServerTls};
    use callplus_tests::{TestCertificate, TlsOptions};

    let cert = TestCertificate::generate();
    let server = TestServer::start_with(Setup { tls: Some(cert.clone()), ..Setup::default() }).await;
    let (https, token) = (server.endpoint(), server.token("mallory"));
    let connect = |endpoint: String, tls: TlsOptions| {
        let token = token.clone();
        async move {
            let options = client_options("mallory-phone").with_tls(tls);
            timeout(WAIT, Client::connect(&endpoint, &token, options)).await.expect("answered in time")
        }
    };

    // The public roots do not vouch for a self-signed certificate.
    let err = connect(https.clone(), TlsOptions::default()).await.expect_err("untrusted certificate");
    assert_eq!(err.code, Code::NotConnected, "{err}");
    assert!(err.message.to_lowercase().contains("certificate"), "{err}");

    // Another certificate as the CA does not either.
    let other = TestCertificate::generate().trusted();
    let err = connect(https.clone(), other).await.expect_err("wrong CA");
    assert_eq!(err.code, Code::NotConnected, "{err}");

    // The right CA with a name the certificate does not carry.
    let err = connect(https.clone(), cert.trusted().with_domain("calls.example.org"))
        .await
        .expect_err("wrong name");
    assert_eq!(err.code, Code::NotConnected, "{err}");

    // Plaintext HTTP/2 to the TLS listener gets nowhere.
    let plaintext = https.replacen("https://", "http://", 1);
    let err = connect(plaintext.clone(), TlsOptions::default()).await.expect_err("plaintext to TLS");
    assert_eq!(err.code, Code::NotConnected, "{err}");

    // Trust settings with an http:// endpoint are an error, not a silent plaintext connection.
    let err = connect(plaintext, cert.trusted()).await.expect_err("TLS settings on http://");
    assert_eq!(err.code, Code::ParamError, "{err}");

    // The server is unharmed: a trusting client still calls.
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    establish(&mut alice, &mut bob, MediaType::Audio).await;

    // A key that does not parse, a key of another certificate, or files that do not exist stop
    // the start with TLS errors.
    let bad = ServerTls::from_pem(
        cert.cert_pem.clone(),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let started = Server::builder().in_memory().listen("127.0.0.1:0").no_admin().tls(bad).start().await;
    assert!(matches!(started, Err(ServerError::Tls(_))), "{started:?}");
    let mismatched = ServerTls::from_pem(cert.cert_pem.clone(), TestCertificate::generate().key_pem);
    let started =
        Server::builder().in_memory().listen("127.0.0.1:0").no_admin().tls(mismatched).start().await;
    assert!(matches!(&started, Err(ServerError::Tls(m)) if m.contains("KeyMismatch")), "{started:?}");
    let missing = std::path::Path::new("/nonexistent/callplus/cert.pem");
    let read = ServerTls::from_files(missing, missing);
    assert!(
        matches!(&read, Err(ServerError::Tls(m)) if m.contains("/nonexistent/callplus/cert.pem")),
        "{read:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn unusable_push_webhook_settings_stop_the_start() {
    use callplus_signal::server::{Server, ServerError};
    use callplus_tests::TestCertificate;

    let ca = TestCertificate::generate().cert_pem;
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("not a url", None, "invalid webhook URL"),
        ("ftp://127.0.0.1/push", None, "must be http:// or https://"),
        ("http://127.0.0.1:9/push", Some(ca.as_str()), "not an https:// URL"),
        ("https://127.0.0.1:9/push", Some("no certificate here"), "no PEM certificate"),
        (
            "https://127.0.0.1:9/push",
            Some("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"),
            "CA",
        ),
    ];
    for (url, ca, expected) in cases {
        let mut builder = Server::builder().in_memory().listen("127.0.0.1:0").no_admin().push_webhook(url);
        if let Some(pem) = ca {
            builder = builder.push_webhook_ca(pem);
        }
        let started = builder.start().await;
        assert!(
            matches!(&started, Err(ServerError::Push(m)) if m.contains(expected)),
            "{url} with CA {ca:?}: {started:?}"
        );
    }
}

/// Sends byte strings as gRPC messages as they are (so a test can send what no encoder
/// would) and decodes server frames.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::ServerFrame;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = pb::ServerFrame;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<pb::ServerFrame>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        callplus_proto::prost::Message::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test]
async fn an_undecodable_frame_right_after_the_hello_is_answered_after_the_welcome_then_the_stream_closes() {
    use callplus_proto::prost::Message as _;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::codegen::http::uri::PathAndQuery;

    let server = TestServer::start(config()).await;
    let hello = pb::ClientFrame {
        seq: 0,
        ack: 0,
        request_id: 1,
        body: Some(Body::Hello(pb::Hello {
            token: server.token("mallory"),
            device_id: "mallory-laptop".into(),
            resume: None,
            client_version: "tests".into(),
        })),
    };
    // Field 1 with wire type 7, which does not exist: no protobuf decoder takes it.
    let garbage = vec![0x0f, 0x00];
    // The race is between the Welcome and the answer to the garbage: try it many times.
    for attempt in 0..20 {
        let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connects");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello.encode_to_vec()).await.expect("queued");
        tx.send(garbage.clone()).await.expect("queued");
        let path = PathAndQuery::from_static("/callplus.v1.Signal/Connect");
        let response =
            timeout(WAIT, grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec))
                .await
                .expect("answered in time")
                .expect("stream opens");
        let mut inbound = response.into_inner();
        let mut frames = Vec::new();
        while let Ok(Some(frame)) =
            timeout(WAIT, inbound.message()).await.expect("a frame or the end in time")
        {
            frames.push(frame.body);
        }
        drop(tx);
        assert!(
            matches!(frames.first(), Some(Some(pb::server_frame::Body::Welcome(_)))),
            "attempt {attempt}: the Welcome comes first: {frames:?}"
        );
        assert!(
            matches!(
                frames.get(1),
                Some(Some(pb::server_frame::Body::Response(r)))
                    if r.request_id == 0 && r.code == R::FrameInvalid as i32 && !r.message.is_empty()
            ),
            "attempt {attempt}: then FRAME_INVALID: {frames:?}"
        );
        assert_eq!(frames.len(), 2, "attempt {attempt}: then the stream closes: {frames:?}");
    }
    still_serves(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_caller_cannot_accept_her_own_outgoing_call() {
    let server = TestServer::start(config()).await;
    let mut bob = server.user("bob").await;
    let mut alice = server.raw("alice", "alice-phone").await;
    let id = alice.request(single_to("bob")).await;
    let started = alice.response_to(id).await.expect("started");
    let call_id = match started.result {
        Some(pb::response::Result::Started(s)) => s.call.expect("a call").call_id,
        other => panic!("{other:?}"),
    };
    let id = alice.request(Body::Accept(pb::Accept { call_id: call_id.clone() })).await;
    let refused = alice.response_to(id).await.expect("answered");
    assert_eq!(R::try_from(refused.code), Ok(R::InvalidState), "{refused:?}");
    assert!(refused.message.contains("own outgoing call"), "{}", refused.message);
    // Nothing happened to the call: bob still rings and answers it.
    let call = CallId::new(&call_id).expect("id");
    bob.answer(&call).await;
    server.shutdown().await;
}

/// gRPC messages no gRPC library sends, on a stream opened by hand over HTTP/2: a message
/// flagged compressed (no compression is ever negotiated) and a request stream that ends
/// inside a message. Each is answered with FRAME_INVALID (request id 0), then the response
/// ends with `grpc-status: 0`, as after any frame the server cannot read. A request that is not
/// gRPC at all (another content type) gets HTTP 415.
#[tokio::test]
async fn grpc_messages_that_break_the_framing_get_frame_invalid() {
    use http_body_util::BodyExt as _;
    use prost::Message as _;

    let server = TestServer::start(config()).await;
    for (what, bytes) in [
        ("a compressed message", vec![1, 0, 0, 0, 2, 8, 1]),
        ("a stream that ends inside a message", vec![0, 0, 0, 0, 9, 8]),
    ] {
        let response = post_connect(server.addr(), "application/grpc", bytes).await;
        assert_eq!(response.status(), hyper::StatusCode::OK, "{what}");
        let body = timeout(WAIT, response.into_body().collect())
            .await
            .expect("the whole body in time")
            .expect("readable");
        let trailers = body.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]), "{what}");
        let data = body.to_bytes();
        assert!(data.len() > 5 && data[0] == 0, "{what}: one uncompressed message: {data:?}");
        let length = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(data.len(), 5 + length, "{what}: exactly one message");
        let frame = pb::ServerFrame::decode(&data[5..]).expect("a ServerFrame");
        let Some(pb::server_frame::Body::Response(r)) = frame.body else { panic!("{what}: a Response") };
        assert_eq!(R::try_from(r.code), Ok(R::FrameInvalid), "{what}: {r:?}");
        assert_eq!(r.request_id, 0, "{what}");
    }

    // A request that is not gRPC is refused as gRPC's protocol asks, with HTTP 415, not the
    // 200 of a gRPC error a plain HTTP client would take for success.
    let response = post_connect(server.addr(), "application/json", b"{}".to_vec()).await;
    assert_eq!(response.status(), hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    server.shutdown().await;
}

/// `Signal.Connect` posted by hand on a new HTTP/2 connection: `body` as the request body, with
/// the given content type.
async fn post_connect(
    addr: std::net::SocketAddr,
    content_type: &str,
    body: Vec<u8>,
) -> hyper::Response<hyper::body::Incoming> {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("the device port accepts");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{addr}/callplus.v1.Signal/Connect"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a request");
    timeout(WAIT, sender.send_request(request)).await.expect("answered in time").expect("answered")
}
