//! Offline callees: the push webhook (a local HTTP receiver on 127.0.0.1) is called, the call is
//! recorded, and the summary and record reach the callee's next connection exactly once; a
//! device that connects while the call still rings gets it.
#![allow(clippy::expect_used)]

use callplus_session::client::CallOptions;
use callplus_session::{EndReason, PushConfig};
use callplus_tests::{
    CallState, Delivery, Direction, Event, MediaType, PushReceiver, Setup, TestServer, connected, ended,
    ended_with, received, record_of, ring_for, summary_of, uid,
};

async fn server_with_push(push: &PushReceiver) -> TestServer {
    TestServer::start_with(Setup { push_webhook: Some(push.url.clone()), ..Setup::default() }).await
}

fn push_config() -> PushConfig {
    PushConfig {
        title: "Alice is calling".into(),
        content: "Tap to answer".into(),
        template_id: "tpl-7".into(),
        custom_data: r#"{"room":"42"}"#.into(),
        ..PushConfig::default()
    }
}

#[tokio::test]
async fn offline_callee_is_pushed_then_gets_summary_and_record_exactly_once() {
    let mut push = PushReceiver::start().await;
    let server = server_with_push(&push).await;
    let mut alice = server.user("alice").await;

    let options =
        CallOptions { push: Some(push_config()), extra: "from the lobby".into(), ring_timeout_ms: None };
    let call = alice.call_with("bob", MediaType::AudioVideo, options).await;
    let payload = push.next().await;
    assert_eq!(payload["callee"], "bob", "{payload}");
    assert_eq!(payload["caller"], "alice", "{payload}");
    assert_eq!(payload["call_id"], call.as_str(), "{payload}");
    assert_eq!(payload["app_key"], server.app().app_key.as_str(), "{payload}");
    assert_eq!(payload["media_type"], "AUDIO_VIDEO", "{payload}");
    assert_eq!(payload["extra"], "from the lobby", "{payload}");
    assert_eq!(payload["push_config"]["title"], "Alice is calling", "{payload}");
    assert_eq!(payload["push_config"]["content"], "Tap to answer", "{payload}");
    assert_eq!(payload["push_config"]["template_id"], "tpl-7", "{payload}");
    assert_eq!(payload["push_config"]["custom_data"], r#"{"room":"42"}"#, "{payload}");
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert_eq!(info.participant(&uid("bob")).map(|p| p.delivery), Some(Delivery::Pushed));

    assert_eq!(payload["kind"], "invite", "{payload}");

    // Alice gives up: bob's phone is told the call was cancelled, with her hangup's settings.
    let cancelled = PushConfig { title: "Missed call from Alice".into(), ..PushConfig::default() };
    alice.client.hangup_with_push(None, Some(cancelled)).await.expect("cancel");
    alice.expect(ended_with(&call, EndReason::Cancel), "alice ended CANCEL").await;
    let payload = push.next().await;
    assert_eq!((&payload["kind"], &payload["callee"]), (&"cancel".into(), &"bob".into()), "{payload}");
    assert_eq!(payload["call_id"], call.as_str(), "{payload}");
    assert_eq!(payload["push_config"]["title"], "Missed call from Alice", "{payload}");

    // Bob comes online: the summary and the record are waiting for him, the call does not ring.
    let mut bob = server.user("bob").await;
    let Event::SummaryMessage(sum) = bob.expect(summary_of(&call), "bob's summary").await else {
        unreachable!()
    };
    assert_eq!((sum.owner.as_str(), sum.caller.as_str(), sum.peer.as_str()), ("bob", "alice", "alice"));
    assert_eq!(
        (sum.end_reason, sum.direction, sum.media_type),
        (EndReason::RemoteCancel, Direction::Incoming, MediaType::AudioVideo)
    );
    assert_eq!((sum.started_at_ms, sum.duration_ms), (None, 0));
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(
        (rec.owner.as_str(), rec.end_reason, rec.direction),
        ("bob", EndReason::RemoteCancel, Direction::Incoming)
    );
    // "Is it still ringing?" — a device woken by a late push asks first.
    assert!(bob.client.get_call(&call).await.expect("get_call").is_ended());
    bob.sync().await;
    assert_eq!(bob.seen(summary_of(&call)), 1, "{:#?}", bob.log);
    assert_eq!(bob.seen(record_of(&call)), 1, "{:#?}", bob.log);
    assert_eq!(bob.seen(received(&call)), 0, "an ended call never rings");
    let page = bob.client.get_call_records(-1, 10, callplus_tests::RecordOrder::Desc).await.expect("records");
    assert_eq!(page.records.first().map(|r| r.call.call_id.clone()), Some(call.clone()));
    let log = bob.finish().await;
    assert_eq!(log.iter().filter(|e| summary_of(&call)(e)).count(), 1, "{log:#?}");

    // Delivered means delivered: neither the same device again nor another one gets them twice.
    for device in ["bob-phone", "bob-tablet"] {
        let mut again = server.device("bob", device).await;
        again.sync().await;
        assert_eq!(again.seen(summary_of(&call)), 0, "{device}: summary repeated: {:#?}", again.log);
        assert_eq!(again.seen(record_of(&call)), 0, "{device}: record repeated: {:#?}", again.log);
        again.finish().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_device_connecting_while_the_call_rings_gets_it() {
    let mut push = PushReceiver::start().await;
    let server = server_with_push(&push).await;
    let mut alice = server.user("alice").await;
    let call = alice
        .call_with(
            "bob",
            MediaType::Audio,
            CallOptions { push: Some(push_config()), ..CallOptions::default() },
        )
        .await;
    assert_eq!(push.next().await["call_id"], call.as_str());

    // The push woke bob's phone: it connects while the call still rings (forceKeepCalling).
    let mut bob = server.user("bob").await;
    let Event::ReceivedCall { session, inviter, .. } = bob.expect(received(&call), "the ringing call").await
    else {
        unreachable!()
    };
    assert_eq!((session.state(), inviter.as_str()), (CallState::Incoming, "alice"));
    assert!(!bob.client.get_call(&call).await.expect("get_call").is_ended(), "still ringing");
    bob.client.ringing(&call).await.expect("ringing");
    bob.client.accept(&call).await.expect("accept");
    bob.expect(connected(&call), "bob connected").await;
    alice.expect(connected(&call), "alice connected").await;

    bob.client.hangup(None).await.expect("hangup");
    alice.expect(ended_with(&call, EndReason::RemoteHangup), "alice ended").await;
    bob.expect(ended_with(&call, EndReason::Hangup), "bob ended").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_pushed_callee_who_never_answers_is_no_response_not_offline() {
    let mut push = PushReceiver::start().await;
    let server = server_with_push(&push).await;
    let mut alice = server.user("alice").await;
    let options = CallOptions { push: Some(push_config()), ..ring_for(300) };
    let call = alice.call_with("bob", MediaType::Audio, options).await;
    assert_eq!(push.next().await["callee"], "bob");
    alice.expect(ended_with(&call, EndReason::RemoteNoResponse), "alice ended REMOTE_NO_RESPONSE").await;

    let mut bob = server.user("bob").await;
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(rec.end_reason, EndReason::NoResponse);
    server.shutdown().await;
}

#[tokio::test]
async fn push_disabled_by_the_caller_leaves_the_callee_unreachable() {
    let mut push = PushReceiver::start().await;
    let server = server_with_push(&push).await;
    let mut alice = server.user("alice").await;
    let silent = PushConfig { disable_push: true, ..push_config() };
    let first =
        alice.call_with("bob", MediaType::Audio, CallOptions { push: Some(silent), ..ring_for(300) }).await;
    alice.expect(ended_with(&first, EndReason::RemoteOffline), "unreachable").await;

    // The next call is pushed; the first one never was.
    let second = alice
        .call_with("bob", MediaType::Audio, CallOptions { push: Some(push_config()), ..ring_for(300) })
        .await;
    assert_eq!(push.next().await["call_id"], second.as_str(), "the first push is the second call's");
    alice.expect(ended(&second), "second ended").await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_caller_sees_the_invitation_progress() {
    let mut push = PushReceiver::start().await;
    let server = server_with_push(&push).await;
    let mut alice = server.user("alice").await;
    let call = alice
        .call_with(
            "bob",
            MediaType::Audio,
            CallOptions { push: Some(push_config()), ..CallOptions::default() },
        )
        .await;
    push.next().await;
    let bob_id = uid("bob");
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert_eq!(info.participant(&bob_id).map(|p| p.delivery), Some(Delivery::Pushed));

    let mut bob = server.user("bob").await;
    bob.expect(received(&call), "bob's phone gets the call").await;
    let delivery = |d: Delivery| move |e: &Event| matches!(e, Event::DeliveryChanged { user_id, delivery, .. } if user_id.as_str() == "bob" && *delivery == d);
    alice.expect(delivery(Delivery::Delivered), "DELIVERED once the phone acked").await;
    bob.client.ringing(&call).await.expect("ringing");
    alice.expect(delivery(Delivery::Ringing), "RINGING once the phone shows it").await;
    let info = alice.client.get_call(&call).await.expect("get_call");
    let legs = &info.participant(&bob_id).expect("bob").devices;
    assert!(
        legs.iter().any(|l| l.device_id.as_str() == "bob-phone" && l.delivery == Delivery::Ringing),
        "per-device delivery: {legs:?}"
    );
    alice.client.hangup(None).await.expect("cancel");
    bob.expect(ended_with(&call, EndReason::RemoteCancel), "cancelled").await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_offline_group_invitee_can_join_later_and_gets_its_record_but_no_summary() {
    let server = TestServer::start(callplus_tests::config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = alice
        .client
        .start_call(&["bob", "carol"], callplus_tests::CallType::Multi, MediaType::Audio, ring_for(300))
        .await
        .expect("start")
        .call_id()
        .clone();
    bob.answer(&call).await;
    // No device, no push: carol is unreachable when her ringing times out; the call goes on.
    let carol_gone = |e: &Event| matches!(e, Event::RemoteUserStateChanged { user_id, reason: Some(EndReason::Offline), .. } if user_id.as_str() == "carol");
    alice.expect(carol_gone, "carol unreachable").await;

    // Carol shows up, finds the call and joins it.
    let mut carol = server.user("carol").await;
    let available = carol.client.get_available_calls().await.expect("available");
    assert_eq!(available.iter().map(|c| &c.call_id).collect::<Vec<_>>(), [&call]);
    carol.client.join_call(&call).await.expect("join");
    carol.expect(connected(&call), "carol connected").await;
    bob.expect(
        |e| matches!(e, Event::RemoteUserStateChanged { user_id, state: callplus_session::ParticipantState::OnCall, .. } if user_id.as_str() == "carol"),
        "carol joined",
    )
    .await;

    // She leaves by disconnecting; the call ends later while she is offline.
    carol.finish().await;
    alice.client.hangup(None).await.expect("alice leaves");
    bob.expect(ended(&call), "bob alone: ended").await;
    let mut carol = server.user("carol").await;
    let Event::ReceivedCallRecord(rec) = carol.expect(record_of(&call), "carol's record").await else {
        unreachable!()
    };
    assert_eq!(rec.call.call_type, callplus_tests::CallType::Multi);
    assert_eq!(rec.end_reason, EndReason::Hangup, "her own leaving is her end");
    carol.sync().await;
    assert_eq!(carol.seen(record_of(&call)), 1, "{:#?}", carol.log);
    assert_eq!(carol.seen(summary_of(&call)), 0, "no summary for group calls");
    server.shutdown().await;
}

#[tokio::test]
async fn an_https_webhook_with_a_private_ca_is_pushed() {
    use callplus_tests::TestCertificate;

    let cert = TestCertificate::generate();
    let mut push = PushReceiver::start_tls(&cert).await;
    assert!(push.url.starts_with("https://127.0.0.1:"), "{}", push.url);
    let server = TestServer::start_with(Setup {
        push_webhook: Some(push.url.clone()),
        push_webhook_ca: Some(cert.cert_pem.clone()),
        ..Setup::default()
    })
    .await;
    let alice = server.user("alice").await;
    let options = CallOptions { push: Some(push_config()), ..CallOptions::default() };
    let call = alice.call_with("bob", MediaType::Audio, options).await;
    let payload = push.next().await;
    assert_eq!(payload["call_id"], call.as_str(), "{payload}");
    assert_eq!(payload["push_config"]["title"], "Alice is calling", "{payload}");
    server.shutdown().await;
}

/// An invitee with no device is pushed with the invitation's own settings and extra, from the
/// inviter, not the caller.
#[tokio::test]
async fn an_offline_invitee_is_pushed_with_the_invitation_s_settings() {
    let mut push = PushReceiver::start().await;
    let server = server_with_push(&push).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = callplus_tests::establish(&mut alice, &mut bob, MediaType::Audio).await;
    let settings = PushConfig { title: "Bob asks you to join".into(), ..PushConfig::default() };
    let busy = bob.client.invite_with(&["carol"], Some(settings), "room 7".into()).await.expect("invite");
    assert!(busy.is_empty());
    let payload = push.next().await;
    assert_eq!((&payload["kind"], &payload["callee"]), (&"invite".into(), &"carol".into()), "{payload}");
    assert_eq!(
        (&payload["call_id"], &payload["caller"]),
        (&call.as_str().into(), &"bob".into()),
        "{payload}"
    );
    assert_eq!(payload["push_config"]["title"], "Bob asks you to join", "{payload}");
    assert_eq!(payload["extra"], "room 7", "{payload}");
    server.shutdown().await;
}
