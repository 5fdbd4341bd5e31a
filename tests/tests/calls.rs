//! Every call flow of the core, again through real gRPC: a real server on 127.0.0.1, real
//! clients, each step waiting for the event it needs.
#![allow(clippy::expect_used)]

use callplus_session::client::CallOptions;
use callplus_session::switchboard::{BusyPolicy, SwitchboardConfig};
use callplus_session::{CallId, EndReason, ParticipantState, TransactionId};
use callplus_tests::{
    CallState, CallType, ChangeMediaTypeResult, Code, Delivery, Direction, Event, MediaType, Party,
    RecordOrder, TestServer, config, connected, end_reason, ended, ended_with, establish, received,
    record_of, remote_state, ring_for, summary_of, uid,
};

fn count_is(log: &[Event], pred: impl Fn(&Event) -> bool, n: usize, who: &str, what: &str) {
    let seen = log.iter().filter(|e| pred(e)).count();
    assert_eq!(seen, n, "{who}: expected {what} {n} time(s), saw {seen}; log: {log:#?}");
}

fn is_start_time(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallStartTime { call_id, .. } if call_id == call)
}

/// Starts a MULTI call from `caller` to `callees`.
async fn multi(caller: &Party, callees: &[&str], media_type: MediaType) -> CallId {
    caller
        .client
        .start_call(callees, CallType::Multi, media_type, CallOptions::default())
        .await
        .expect("multi start_call")
        .call_id()
        .clone()
}

#[tokio::test]
async fn audio_call_accepted_then_hung_up_by_the_caller() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;

    let call = alice.call("bob", MediaType::Audio).await;
    let mine = alice.client.current_call().expect("the call is current for alice");
    assert_eq!(mine.call_id(), &call);
    assert_eq!(mine.state(), CallState::Dialing);

    let Event::ReceivedCall { session, inviter, .. } = bob.expect(received(&call), "invitation").await else {
        unreachable!()
    };
    assert_eq!(inviter.as_str(), "alice");
    assert_eq!(
        (session.state(), session.call_type(), session.media_type()),
        (CallState::Incoming, CallType::Single, MediaType::Audio)
    );
    assert!(bob.client.current_call().is_none(), "an incoming call is not current before accept");

    bob.client.ringing(&call).await.expect("ringing");
    alice.expect(remote_state(&call, "bob", ParticipantState::Ringing), "bob ringing").await;
    alice
        .expect(
            |e| matches!(e, Event::DeliveryChanged { user_id, delivery: Delivery::Ringing, .. } if user_id.as_str() == "bob"),
            "delivery RINGING at bob",
        )
        .await;

    bob.client.accept(&call).await.expect("accept");
    bob.expect(connected(&call), "bob connected").await;
    alice.expect(connected(&call), "alice connected").await;
    alice.expect(remote_state(&call, "bob", ParticipantState::OnCall), "bob on call").await;
    let Event::CallStartTime { started_at_ms, call_type, .. } =
        alice.expect(is_start_time(&call), "call start time").await
    else {
        unreachable!()
    };
    assert_eq!(call_type, CallType::Single);
    // The server's clock as the client measures it: the server runs on this machine, so it
    // reads this machine's clock within the measurement, and it never goes back.
    let server_now = alice.client.server_time_ms();
    let here = callplus_tests::now_ms();
    assert!((server_now - here).abs() < 2_000, "server {server_now}, here {here}");
    assert!(alice.client.server_time_ms() >= server_now);
    assert!(server_now >= started_at_ms - 2_000, "the call started before now");
    bob.expect(is_start_time(&call), "call start time").await;
    assert_eq!(bob.client.current_call().map(|s| s.state()), Some(CallState::OnCall));

    alice.client.hangup(None).await.expect("hangup");
    alice.expect(ended_with(&call, EndReason::Hangup), "alice ended HANGUP").await;
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "bob ended REMOTE_HANGUP").await;
    assert!(alice.client.current_call().is_none() && bob.client.current_call().is_none());

    let Event::ReceivedCallRecord(rec) = alice.expect(record_of(&call), "alice's record").await else {
        unreachable!()
    };
    assert_eq!(
        (rec.owner.as_str(), rec.end_reason, rec.direction),
        ("alice", EndReason::Hangup, Direction::Outgoing)
    );
    assert_eq!(rec.call.started_at_ms, Some(started_at_ms));
    let ended_at = rec.call.ended_at_ms.expect("the record's call has ended");
    assert!(rec.call.created_at_ms <= started_at_ms && started_at_ms <= ended_at, "{rec:?}");
    assert_eq!(rec.duration_ms, ended_at - started_at_ms);
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(
        (rec.owner.as_str(), rec.end_reason, rec.direction),
        ("bob", EndReason::RemoteHangup, Direction::Incoming)
    );
    assert_eq!(rec.inviter.as_ref().map(|u| u.as_str()), Some("alice"));

    let Event::SummaryMessage(sum) = bob.expect(summary_of(&call), "bob's summary").await else {
        unreachable!()
    };
    assert_eq!(
        (sum.caller.as_str(), sum.peer.as_str(), sum.media_type),
        ("alice", "alice", MediaType::Audio)
    );
    assert_eq!(
        (sum.end_reason, sum.direction, sum.started_at_ms),
        (EndReason::RemoteHangup, Direction::Incoming, Some(started_at_ms))
    );
    let Event::SummaryMessage(sum) = alice.expect(summary_of(&call), "alice's summary").await else {
        unreachable!()
    };
    assert_eq!((sum.caller.as_str(), sum.peer.as_str()), ("alice", "bob"));

    for party in [alice, bob] {
        let who = party.name.clone();
        let log = party.finish().await;
        count_is(&log, connected(&call), 1, &who, "CallConnected");
        count_is(&log, ended(&call), 1, &who, "CallEnded");
        count_is(&log, record_of(&call), 1, &who, "ReceivedCallRecord");
        count_is(&log, summary_of(&call), 1, &who, "SummaryMessage");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn video_call_hung_up_by_the_callee() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;
    assert_eq!(bob.client.current_call().map(|s| s.media_type()), Some(MediaType::AudioVideo));

    bob.client.hangup(Some(&call)).await.expect("bob hangs up");
    bob.expect(ended_with(&call, EndReason::Hangup), "bob ended HANGUP").await;
    alice.expect(ended_with(&call, EndReason::RemoteHangup), "alice ended REMOTE_HANGUP").await;
    let Event::ReceivedCallRecord(rec) = alice.expect(record_of(&call), "record").await else {
        unreachable!()
    };
    assert_eq!((rec.call.media_type, rec.end_reason), (MediaType::AudioVideo, EndReason::RemoteHangup));
    server.shutdown().await;
}

#[tokio::test]
async fn callee_rejects() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = alice.call("bob", MediaType::Audio).await;
    bob.expect(received(&call), "invitation").await;

    bob.client.hangup(Some(&call)).await.expect("reject");
    bob.expect(ended_with(&call, EndReason::Reject), "bob ended REJECT").await;
    alice.expect(ended_with(&call, EndReason::RemoteReject), "alice ended REMOTE_REJECT").await;
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!((rec.end_reason, rec.duration_ms, rec.call.started_at_ms), (EndReason::Reject, 0, None));
    let alice_log = alice.finish().await;
    count_is(&alice_log, connected(&call), 0, "alice", "CallConnected");
    server.shutdown().await;
}

#[tokio::test]
async fn caller_cancels() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = alice.call("bob", MediaType::AudioVideo).await;
    bob.expect(received(&call), "invitation").await;

    alice.client.hangup(None).await.expect("cancel");
    alice.expect(ended_with(&call, EndReason::Cancel), "alice ended CANCEL").await;
    bob.expect(ended_with(&call, EndReason::RemoteCancel), "bob ended REMOTE_CANCEL").await;
    let Event::SummaryMessage(sum) = bob.expect(summary_of(&call), "bob's summary").await else {
        unreachable!()
    };
    assert_eq!((sum.end_reason, sum.duration_ms, sum.started_at_ms), (EndReason::RemoteCancel, 0, None));
    // The call is over: answering it now is refused.
    let err = bob.client.accept(&call).await.expect_err("accepting an ended call");
    assert!(matches!(err.code, Code::CallIdInvalid | Code::NotInCall | Code::CallEnded), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn unanswered_call_times_out() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let started = std::time::Instant::now();
    let call = alice.call_with("bob", MediaType::Audio, ring_for(300)).await;
    bob.expect(received(&call), "invitation").await;
    bob.client.ringing(&call).await.expect("ringing");

    bob.expect(ended_with(&call, EndReason::NoResponse), "bob ended NO_RESPONSE").await;
    alice.expect(ended_with(&call, EndReason::RemoteNoResponse), "alice ended REMOTE_NO_RESPONSE").await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "ended before the ring timeout");
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "record").await else { unreachable!() };
    assert_eq!(rec.end_reason, EndReason::NoResponse);
    server.shutdown().await;
}

#[tokio::test]
async fn callee_with_no_device_and_no_push_is_unreachable() {
    // No push webhook: nobody can wake bob.
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let call = alice.call_with("bob", MediaType::Audio, ring_for(300)).await;
    let info = alice.client.get_call(&call).await.expect("get_call");
    let bob_id = uid("bob");
    assert_eq!(info.participant(&bob_id).map(|p| p.delivery), Some(Delivery::Unreachable));

    alice.expect(ended_with(&call, EndReason::RemoteOffline), "alice ended REMOTE_OFFLINE").await;

    // Bob's log has it when he shows up, as OFFLINE.
    let mut bob = server.user("bob").await;
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&call), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(rec.end_reason, EndReason::Offline);
    let Event::SummaryMessage(sum) = bob.expect(summary_of(&call), "bob's summary").await else {
        unreachable!()
    };
    assert_eq!(sum.end_reason, EndReason::Offline);
    bob.sync().await;
    assert_eq!(bob.seen(received(&call)), 0, "an ended call never rings");
    server.shutdown().await;
}

#[tokio::test]
async fn busy_callee_is_rung_and_the_caller_told() {
    let server = TestServer::start(config()).await;
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let first = establish(&mut carol, &mut bob, MediaType::Audio).await;

    let started = alice
        .client
        .start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default())
        .await
        .expect("start_call to a busy user");
    let second = started.call_id().clone();
    assert_eq!(started.busy_users.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["bob"]);
    // Call waiting: bob's device rings while his call goes on.
    bob.expect(received(&second), "the waiting call").await;
    assert_eq!(bob.client.current_call().map(|s| s.call_id().clone()), Some(first.clone()));

    alice.client.hangup(None).await.expect("alice gives up");
    bob.expect(ended_with(&second, EndReason::RemoteCancel), "waiting call cancelled").await;
    let info = carol.client.get_call(&first).await.expect("get_call");
    assert!(!info.is_ended(), "the first call is untouched");
    carol.sync().await;
    assert_eq!(carol.seen(ended(&first)), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn busy_callee_is_auto_rejected_when_configured() {
    let server =
        TestServer::start(SwitchboardConfig { busy_policy: BusyPolicy::AutoReject, ..config() }).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let first = establish(&mut carol, &mut bob, MediaType::Audio).await;

    let started = alice
        .client
        .start_call(&["bob"], CallType::Single, MediaType::Audio, CallOptions::default())
        .await
        .expect("start_call to a busy user");
    let second = started.call_id().clone();
    assert_eq!(started.busy_users.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["bob"]);
    alice.expect(ended_with(&second, EndReason::RemoteBusy), "alice ended REMOTE_BUSY").await;
    let Event::ReceivedCallRecord(rec) = bob.expect(record_of(&second), "bob's record").await else {
        unreachable!()
    };
    assert_eq!(rec.end_reason, EndReason::Busy);
    bob.sync().await;
    assert_eq!(bob.seen(received(&second)), 0, "an auto-rejected call does not ring");
    assert_eq!(bob.seen(ended(&first)), 0);
    assert_eq!(bob.client.current_call().map(|s| s.call_id().clone()), Some(first));
    server.shutdown().await;
}

#[tokio::test]
async fn two_devices_ring_and_one_accepts() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut phone = server.device("bob", "bob-phone").await;
    let mut tablet = server.device("bob", "bob-tablet").await;

    let call = alice.call("bob", MediaType::AudioVideo).await;
    phone.expect(received(&call), "phone rings").await;
    tablet.expect(received(&call), "tablet rings").await;
    tablet.client.ringing(&call).await.expect("tablet ringing");
    phone.client.ringing(&call).await.expect("phone ringing");

    phone.client.accept(&call).await.expect("phone accepts");
    phone.expect(connected(&call), "phone connected").await;
    tablet.expect(ended_with(&call, EndReason::AcceptedOnOtherDevice), "tablet stops").await;
    alice.expect(connected(&call), "alice connected").await;
    assert!(tablet.client.current_call().is_none());
    let err = tablet.client.accept(&call).await.expect_err("the tablet can no longer answer");
    assert!(matches!(err.code, Code::CallIdInvalid | Code::NotInCall | Code::InvalidState), "{err}");

    alice.client.hangup(None).await.expect("hangup");
    phone.expect(ended_with(&call, EndReason::RemoteHangup), "phone ended").await;
    tablet.expect(record_of(&call), "the user's record reaches every device").await;
    let log = tablet.finish().await;
    count_is(&log, ended(&call), 1, "tablet", "CallEnded");
    count_is(&log, connected(&call), 0, "tablet", "CallConnected");
    server.shutdown().await;
}

#[tokio::test]
async fn two_devices_ring_and_one_rejects() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut phone = server.device("bob", "bob-phone").await;
    let mut tablet = server.device("bob", "bob-tablet").await;

    let call = alice.call("bob", MediaType::Audio).await;
    phone.expect(received(&call), "phone rings").await;
    tablet.expect(received(&call), "tablet rings").await;

    tablet.client.hangup(Some(&call)).await.expect("tablet rejects");
    tablet.expect(ended_with(&call, EndReason::Reject), "tablet ended REJECT").await;
    phone.expect(ended_with(&call, EndReason::RejectedOnOtherDevice), "phone stops").await;
    alice.expect(ended_with(&call, EndReason::RemoteReject), "alice ended REMOTE_REJECT").await;
    server.shutdown().await;
}

#[tokio::test]
async fn accepting_while_in_a_call_hangs_that_call_up() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let first = establish(&mut carol, &mut bob, MediaType::Audio).await;

    let second = alice.call("bob", MediaType::Audio).await;
    bob.expect(received(&second), "the second call").await;
    bob.client.accept(&second).await.expect("accept the second call");
    bob.expect(ended_with(&first, EndReason::AcceptedAnotherCall), "first ends for bob").await;
    carol.expect(ended_with(&first, EndReason::RemoteAcceptedAnotherCall), "first ends for carol").await;
    bob.expect(connected(&second), "bob connected").await;
    alice.expect(connected(&second), "alice connected").await;
    assert_eq!(bob.client.current_call().map(|s| s.call_id().clone()), Some(second));
    server.shutdown().await;
}

#[tokio::test]
async fn invite_turns_a_single_call_into_a_group_call() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let mut dave = server.user("dave").await;
    let mut erin = server.user("erin").await;
    let elsewhere = establish(&mut erin, &mut dave, MediaType::Audio).await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;

    let busy = alice.client.invite(&["carol", "dave"]).await.expect("invite");
    assert_eq!(busy.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["dave"], "dave is in another call");
    dave.expect(received(&call), "dave's call waiting").await;
    assert_eq!(dave.client.current_call().map(|s| s.call_id().clone()), Some(elsewhere));
    for party in [&mut alice, &mut bob] {
        party
            .expect(
                |e| matches!(e, Event::CallTypeChanged { call_id, call_type: CallType::Multi } if *call_id == call),
                "call_type_changed",
            )
            .await;
        let Event::RemoteUserInvited { inviter, invitees, .. } = party
            .expect(
                |e| matches!(e, Event::RemoteUserInvited { call_id, .. } if *call_id == call),
                "remote_user_invited",
            )
            .await
        else {
            unreachable!()
        };
        assert_eq!(inviter.as_str(), "alice");
        assert_eq!(invitees.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["carol", "dave"]);
        assert_eq!(party.client.current_call().map(|s| s.call_type()), Some(CallType::Multi));
    }
    let Event::ReceivedCall { session, inviter, .. } = carol.expect(received(&call), "carol invited").await
    else {
        unreachable!()
    };
    assert_eq!((session.call_type(), inviter.as_str()), (CallType::Multi, "alice"));

    carol.client.accept(&call).await.expect("carol accepts");
    carol.expect(connected(&call), "carol connected").await;
    alice.expect(remote_state(&call, "carol", ParticipantState::OnCall), "carol on call (alice)").await;
    bob.expect(remote_state(&call, "carol", ParticipantState::OnCall), "carol on call (bob)").await;

    // Change of media type is for SINGLE calls only.
    let err = alice.client.request_change_media_type(MediaType::AudioVideo).await.expect_err("MULTI");
    assert_eq!(err.code, Code::InvalidState, "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_unended_group_call_can_be_joined_but_not_by_a_stranger() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let mut dave = server.user("dave").await;

    let call = multi(&alice, &["bob", "carol"], MediaType::Audio).await;
    bob.answer(&call).await;
    carol.answer(&call).await;
    carol.client.hangup(None).await.expect("carol leaves");
    carol.expect(ended_with(&call, EndReason::Hangup), "carol left").await;
    alice.expect(remote_state(&call, "carol", ParticipantState::Ended), "carol left (alice)").await;

    // One who left hears whom the call invites, as those in it do.
    let mut erin = server.user("erin").await;
    alice.client.invite(&["erin"]).await.expect("invite erin");
    erin.expect(received(&call), "erin invited").await;
    for party in [&mut carol, &mut bob] {
        let Event::RemoteUserInvited { inviter, invitees, .. } = party
            .expect(|e| matches!(e, Event::RemoteUserInvited { call_id, .. } if *call_id == call), "invited")
            .await
        else {
            unreachable!()
        };
        assert_eq!(
            (inviter.as_str(), invitees.iter().map(|u| u.as_str()).collect::<Vec<_>>()),
            ("alice", vec!["erin"])
        );
    }
    assert!(carol.client.current_call().is_none(), "hearing of the call is not joining it");

    let available = carol.client.get_available_calls().await.expect("available calls");
    assert_eq!(available.iter().map(|c| &c.call_id).collect::<Vec<_>>(), [&call]);
    carol.client.join_call(&call).await.expect("carol joins again");
    carol.expect(connected(&call), "carol connected again").await;
    alice.expect(remote_state(&call, "carol", ParticipantState::OnCall), "carol back (alice)").await;
    bob.expect(remote_state(&call, "carol", ParticipantState::OnCall), "carol back (bob)").await;

    assert!(dave.client.get_available_calls().await.expect("dave's list").is_empty());
    let err = dave.client.join_call(&call).await.expect_err("a stranger cannot join");
    assert!(err.code == Code::CallNotFound, "{err}");
    dave.sync().await;
    assert_eq!(dave.seen(|e| e.call_id() == Some(&call)), 0, "dave learns nothing of the call");
    server.shutdown().await;
}

/// Whoever answers a group call after it started counts its time from the call's start: the
/// third participant gets the same start time as the first two.
#[tokio::test]
async fn a_late_participant_gets_the_call_s_start_time() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let call = multi(&alice, &["bob", "carol"], MediaType::Audio).await;
    bob.answer(&call).await;
    let Event::CallStartTime { started_at_ms, .. } = alice.expect(is_start_time(&call), "start time").await
    else {
        unreachable!()
    };
    bob.expect(is_start_time(&call), "start time").await;
    carol.answer(&call).await;
    let Event::CallStartTime { started_at_ms: carol_start, call_type, .. } =
        carol.expect(is_start_time(&call), "carol's start time").await
    else {
        unreachable!()
    };
    assert_eq!((carol_start, call_type), (started_at_ms, CallType::Multi));
    alice.sync().await;
    assert_eq!(alice.seen(is_start_time(&call)), 1, "told once");
    server.shutdown().await;
}

#[tokio::test]
async fn a_group_call_survives_one_leaving_and_ends_under_two() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let call = multi(&alice, &["bob", "carol"], MediaType::AudioVideo).await;
    bob.answer(&call).await;
    carol.answer(&call).await;
    alice.expect(connected(&call), "alice connected").await;

    bob.client.hangup(None).await.expect("bob leaves");
    bob.expect(ended_with(&call, EndReason::Hangup), "bob ended").await;
    for party in [&mut alice, &mut carol] {
        let Event::RemoteUserStateChanged { reason, .. } =
            party.expect(remote_state(&call, "bob", ParticipantState::Ended), "bob left").await
        else {
            unreachable!()
        };
        assert_eq!(reason, Some(EndReason::Hangup));
    }
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert!(!info.is_ended(), "two remain: the call goes on");

    carol.client.hangup(None).await.expect("carol leaves");
    carol.expect(ended_with(&call, EndReason::Hangup), "carol ended").await;
    let last = alice.expect(ended(&call), "alice alone: the call ends").await;
    assert_eq!(end_reason(&last), Some(EndReason::RemoteHangup));
    for party in [&mut alice, &mut bob, &mut carol] {
        let Event::ReceivedCallRecord(rec) = party.expect(record_of(&call), "record").await else {
            unreachable!()
        };
        assert_eq!(rec.call.call_type, CallType::Multi);
    }
    alice.sync().await;
    assert_eq!(alice.seen(summary_of(&call)), 0, "summaries are for SINGLE calls only");
    server.shutdown().await;
}

#[tokio::test]
async fn group_size_limits_refuse_with_call_full() {
    let cfg = SwitchboardConfig { max_video_participants: 3, max_audio_participants: 4, ..config() };
    let server = TestServer::start(cfg).await;
    let alice = server.user("alice").await;

    let err = alice
        .client
        .start_call(&["b1", "b2", "b3"], CallType::Multi, MediaType::AudioVideo, CallOptions::default())
        .await
        .expect_err("4 > 3 with video");
    assert_eq!(err.code, Code::CallFull, "{err}");

    let call = multi(&alice, &["b1", "b2", "b3"], MediaType::Audio).await;
    let err = alice.client.invite(&["b4"]).await.expect_err("5 > 4 audio-only");
    assert_eq!(err.code, Code::CallFull, "{err}");
    alice.client.hangup(Some(&call)).await.expect("cancel");

    let call = multi(&alice, &["b1", "b2"], MediaType::AudioVideo).await;
    let err = alice.client.invite(&["b3"]).await.expect_err("4 > 3 with video");
    assert_eq!(err.code, Code::CallFull, "{err}");
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert_eq!(info.participants.len(), 3, "the refused invitee was not added");
    server.shutdown().await;
}

// ----- media type changes -----------------------------------------------------------------------

fn is_request(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ChangeMediaTypeRequest { call_id, .. } if call_id == call)
}

fn is_result<'a>(tx: &'a TransactionId) -> impl Fn(&Event) -> bool + 'a {
    move |e| matches!(e, Event::ChangeMediaTypeResult { transaction_id, .. } if transaction_id == tx)
}

/// The result of transaction `tx` as `party` sees it: (requester, media type after, result).
async fn result_of(party: &mut Party, tx: &TransactionId) -> (String, MediaType, ChangeMediaTypeResult) {
    match party.expect(is_result(tx), "change media type result").await {
        Event::ChangeMediaTypeResult { user_id, media_type, result, .. } => {
            (user_id.to_string(), media_type, result)
        }
        _ => unreachable!(),
    }
}

async fn audio_call(server: &TestServer) -> (Party, Party, CallId) {
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;
    (alice, bob, call)
}

#[tokio::test]
async fn media_type_change_accepted() {
    let server = TestServer::start(config()).await;
    let (mut alice, mut bob, call) = audio_call(&server).await;
    let tx = alice.client.request_change_media_type(MediaType::AudioVideo).await.expect("request");
    let Event::ChangeMediaTypeRequest { user_id, transaction_id, media_type, .. } =
        bob.expect(is_request(&call), "the request").await
    else {
        unreachable!()
    };
    assert_eq!((user_id.as_str(), &transaction_id, media_type), ("alice", &tx, MediaType::AudioVideo));
    bob.client.reply_change_media_type(&tx, true).await.expect("agree");
    for party in [&mut alice, &mut bob] {
        let expected = ("alice".to_owned(), MediaType::AudioVideo, ChangeMediaTypeResult::Accepted);
        assert_eq!(result_of(party, &tx).await, expected);
        assert_eq!(party.client.current_call().map(|s| s.media_type()), Some(MediaType::AudioVideo));
    }
    let info = bob.client.get_call(&call).await.expect("get_call");
    assert_eq!(info.media_type, MediaType::AudioVideo);
    server.shutdown().await;
}

#[tokio::test]
async fn media_type_change_rejected() {
    let server = TestServer::start(config()).await;
    let (mut alice, mut bob, call) = audio_call(&server).await;
    let tx = bob.client.request_change_media_type(MediaType::AudioVideo).await.expect("request");
    alice.expect(is_request(&call), "the request").await;
    alice.client.reply_change_media_type(&tx, false).await.expect("refuse");
    for party in [&mut alice, &mut bob] {
        let expected = ("bob".to_owned(), MediaType::Audio, ChangeMediaTypeResult::Rejected);
        assert_eq!(result_of(party, &tx).await, expected);
        assert_eq!(party.client.current_call().map(|s| s.media_type()), Some(MediaType::Audio));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn media_type_change_cancelled() {
    let server = TestServer::start(config()).await;
    let (mut alice, mut bob, call) = audio_call(&server).await;
    let tx = alice.client.request_change_media_type(MediaType::AudioVideo).await.expect("request");
    bob.expect(is_request(&call), "the request").await;
    alice.client.cancel_change_media_type(&tx).await.expect("cancel");
    for party in [&mut alice, &mut bob] {
        let expected = ("alice".to_owned(), MediaType::Audio, ChangeMediaTypeResult::Cancelled);
        assert_eq!(result_of(party, &tx).await, expected);
    }
    let err = bob.client.reply_change_media_type(&tx, true).await.expect_err("too late");
    assert_eq!(err.code, Code::TransactionIdInvalid, "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn media_type_change_times_out() {
    let server = TestServer::start(SwitchboardConfig { change_media_type_timeout_ms: 300, ..config() }).await;
    let (mut alice, mut bob, call) = audio_call(&server).await;
    let tx = alice.client.request_change_media_type(MediaType::AudioVideo).await.expect("request");
    bob.expect(is_request(&call), "the request").await;
    for party in [&mut alice, &mut bob] {
        let expected = ("alice".to_owned(), MediaType::Audio, ChangeMediaTypeResult::Timeout);
        assert_eq!(result_of(party, &tx).await, expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn media_type_changes_asked_by_both_sides_conflict() {
    let server = TestServer::start(config()).await;
    let (mut alice, mut bob, call) = audio_call(&server).await;
    let first = alice.client.request_change_media_type(MediaType::AudioVideo).await.expect("alice asks");
    let second = bob.client.request_change_media_type(MediaType::AudioVideo).await.expect("bob asks");
    for party in [&mut alice, &mut bob] {
        assert_eq!(
            result_of(party, &first).await,
            ("alice".to_owned(), MediaType::Audio, ChangeMediaTypeResult::Conflict)
        );
        assert_eq!(
            result_of(party, &second).await,
            ("bob".to_owned(), MediaType::Audio, ChangeMediaTypeResult::Conflict)
        );
        assert_eq!(party.client.current_call().map(|s| s.media_type()), Some(MediaType::Audio));
    }
    let info = alice.client.get_call(&call).await.expect("get_call");
    assert_eq!(info.media_type, MediaType::Audio);
    server.shutdown().await;
}

#[tokio::test]
async fn downgrade_to_audio_needs_no_agreement() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;
    let tx = bob.client.request_change_media_type(MediaType::Audio).await.expect("downgrade");
    for party in [&mut alice, &mut bob] {
        assert_eq!(
            result_of(party, &tx).await,
            ("bob".to_owned(), MediaType::Audio, ChangeMediaTypeResult::Accepted)
        );
        assert_eq!(party.client.current_call().map(|s| s.media_type()), Some(MediaType::Audio));
    }
    alice.sync().await;
    assert_eq!(alice.seen(is_request(&call)), 0, "alice was not asked");
    server.shutdown().await;
}

#[tokio::test]
async fn camera_and_microphone_states_reach_the_peer() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::AudioVideo).await;

    let camera = |disabled: bool| move |e: &Event| matches!(e, Event::RemoteCameraStateChanged { user_id, disabled: d, .. } if user_id.as_str() == "alice" && *d == disabled);
    let microphone = |disabled: bool| move |e: &Event| matches!(e, Event::RemoteMicrophoneStateChanged { user_id, disabled: d, .. } if user_id.as_str() == "alice" && *d == disabled);
    alice.client.set_camera_enabled(false).await.expect("camera off");
    bob.expect(camera(true), "camera off").await;
    alice.client.set_microphone_enabled(false).await.expect("microphone off");
    bob.expect(microphone(true), "microphone off").await;
    alice.client.set_camera_enabled(true).await.expect("camera on");
    bob.expect(camera(false), "camera on").await;
    let info = bob.client.get_call(&call).await.expect("get_call");
    let me = info.participant(&uid("alice")).expect("alice in the call");
    assert!(!me.camera_disabled && me.microphone_disabled);

    // Audio calls have no camera.
    alice.client.hangup(None).await.expect("hangup");
    alice.expect(ended(&call), "ended").await;
    let audio = establish(&mut alice, &mut bob, MediaType::Audio).await;
    let err = alice.client.set_camera_enabled(true).await.expect_err("no camera in an audio call");
    assert_eq!(err.code, Code::NotVideoCall, "{err}");
    alice.client.set_microphone_enabled(false).await.expect("microphone off");
    bob.expect(|e| matches!(e, Event::RemoteMicrophoneStateChanged { call_id, disabled: true, .. } if *call_id == audio), "mute").await;
    server.shutdown().await;
}

// ----- records and queries ----------------------------------------------------------------------

async fn page_ids(party: &Party, sync_time: i64, count: u32, order: RecordOrder) -> (Vec<CallId>, bool, i64) {
    let page = party.client.get_call_records(sync_time, count, order).await.expect("get_call_records");
    let ids = page.records.iter().map(|r| r.call.call_id.clone()).collect();
    (ids, page.has_more, page.sync_time)
}

/// Every page from the start, `count` at a time.
async fn all_pages(party: &Party, count: u32, order: RecordOrder) -> Vec<Vec<CallId>> {
    let mut pages = Vec::new();
    let mut sync_time = -1;
    loop {
        let (ids, more, next) = page_ids(party, sync_time, count, order).await;
        pages.push(ids);
        if !more {
            return pages;
        }
        assert!(pages.len() < 100, "paging does not terminate");
        sync_time = next;
    }
}

#[tokio::test]
async fn call_records_page_both_ways_and_delete() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut calls = Vec::new();
    for _ in 0..5 {
        let call = alice.call("bob", MediaType::Audio).await;
        alice.client.hangup(None).await.expect("cancel");
        alice.expect(record_of(&call), "alice's record").await;
        bob.expect(record_of(&call), "bob's record").await;
        calls.push(call);
    }
    let c = |i: usize| calls[i].clone();

    assert_eq!(
        all_pages(&alice, 2, RecordOrder::Desc).await,
        vec![vec![c(4), c(3)], vec![c(2), c(1)], vec![c(0)]]
    );
    assert_eq!(
        all_pages(&alice, 2, RecordOrder::Asc).await,
        vec![vec![c(0), c(1)], vec![c(2), c(3)], vec![c(4)]]
    );
    let (ids, more, _) = page_ids(&alice, -1, 5, RecordOrder::Desc).await;
    assert_eq!((ids.len(), more), (5, false), "an exact fit has no more");
    let page = bob.client.get_call_records(-1, 100, RecordOrder::Asc).await.expect("bob's records");
    assert_eq!(page.records.iter().map(|r| r.call.call_id.clone()).collect::<Vec<_>>(), calls);
    assert!(
        page.records
            .iter()
            .all(|r| r.direction == Direction::Incoming && r.end_reason == EndReason::RemoteCancel)
    );
    assert!(page.records.windows(2).all(|w| w[0].sync_time < w[1].sync_time));

    for bad in [0, 101] {
        let err = alice.client.get_call_records(-1, bad, RecordOrder::Desc).await.expect_err("bad count");
        assert_eq!(err.code, Code::ParamError, "count {bad}: {err}");
    }

    alice.client.delete_call_records(vec![c(1), c(3)]).await.expect("delete two");
    assert_eq!(all_pages(&alice, 100, RecordOrder::Desc).await, vec![vec![c(4), c(2), c(0)]]);
    alice.client.delete_all_call_records().await.expect("delete all");
    let (ids, more, _) = page_ids(&alice, -1, 10, RecordOrder::Desc).await;
    assert!(ids.is_empty() && !more, "{ids:?} {more}");
    // Deletes are per user.
    let (ids, _, _) = page_ids(&bob, -1, 100, RecordOrder::Asc).await;
    assert_eq!(ids, calls);
    server.shutdown().await;
}

#[tokio::test]
async fn available_calls_list_unended_group_calls_of_the_user() {
    let server = TestServer::start(config()).await;
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;

    let group = multi(&alice, &["bob", "carol"], MediaType::Audio).await;
    bob.expect(received(&group), "bob invited").await;
    let single = dave.call("carol", MediaType::Audio).await;

    for party in [&alice, &bob, &carol] {
        let list = party.client.get_available_calls().await.expect("available");
        assert_eq!(list.iter().map(|c| &c.call_id).collect::<Vec<_>>(), [&group], "{}", party.name);
        assert_eq!(list[0].call_type, CallType::Multi);
    }
    assert!(dave.client.get_available_calls().await.expect("dave").is_empty(), "SINGLE calls are not listed");

    alice.client.hangup(None).await.expect("alice cancels");
    bob.expect(ended(&group), "group ended").await;
    for party in [&alice, &bob, &carol] {
        assert!(party.client.get_available_calls().await.expect("available").is_empty(), "{}", party.name);
    }
    dave.client.hangup(Some(&single)).await.expect("dave cancels");
    server.shutdown().await;
}

#[tokio::test]
async fn get_call_tells_an_invitee_whether_it_still_rings() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let dave = server.user("dave").await;
    let bob_id = uid("bob");

    let call = alice.call("bob", MediaType::Audio).await;
    bob.expect(received(&call), "invitation").await;
    let v1 = bob.client.get_call(&call).await.expect("get_call");
    assert!(!v1.is_ended());
    assert_eq!(v1.participant(&bob_id).map(|p| p.state), Some(ParticipantState::Incoming));

    bob.client.ringing(&call).await.expect("ringing");
    let v2 = bob.client.get_call(&call).await.expect("get_call");
    assert_eq!(v2.participant(&bob_id).map(|p| p.state), Some(ParticipantState::Ringing));
    assert!(v2.version > v1.version, "{} > {}", v2.version, v1.version);

    alice.client.hangup(None).await.expect("cancel");
    bob.expect(ended(&call), "ended").await;
    let v3 = bob.client.get_call(&call).await.expect("get_call of an ended call");
    assert!(v3.is_ended(), "an ended call reads as ended");
    assert!(v3.version > v2.version);
    let p = v3.participant(&bob_id).expect("bob");
    assert_eq!((p.state, p.reason), (ParticipantState::Ended, Some(EndReason::RemoteCancel)));
    alice.expect(ended(&call), "alice ended").await;

    let err = dave.client.get_call(&call).await.expect_err("dave was never invited");
    assert!(err.code == Code::CallNotFound, "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_group_call_outlives_its_creator_while_someone_still_rings() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let call = multi(&alice, &["bob", "carol"], MediaType::Audio).await;
    bob.answer(&call).await;
    carol.expect(received(&call), "carol rings").await;

    // One connected and one still ringing: the call must wait for carol.
    alice.client.hangup(None).await.expect("alice leaves");
    alice.expect(ended_with(&call, EndReason::Hangup), "alice ended").await;
    bob.expect(remote_state(&call, "alice", ParticipantState::Ended), "alice left").await;
    carol.client.accept(&call).await.expect("carol answers after the creator left");
    carol.expect(connected(&call), "carol connected").await;
    bob.expect(remote_state(&call, "carol", ParticipantState::OnCall), "carol on call").await;

    carol.client.hangup(None).await.expect("carol leaves");
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "bob alone: ended").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_group_invitee_who_does_not_answer_times_out_alone() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let call = alice
        .client
        .start_call(&["bob", "carol"], CallType::Multi, MediaType::Audio, ring_for(400))
        .await
        .expect("start")
        .call_id()
        .clone();
    bob.answer(&call).await;
    carol.expect(received(&call), "carol rings").await;

    carol.expect(ended_with(&call, EndReason::NoResponse), "carol NO_RESPONSE").await;
    for party in [&mut alice, &mut bob] {
        let Event::RemoteUserStateChanged { reason, .. } =
            party.expect(remote_state(&call, "carol", ParticipantState::Ended), "carol timed out").await
        else {
            unreachable!()
        };
        assert_eq!(reason, Some(EndReason::NoResponse));
    }
    assert!(!alice.client.get_call(&call).await.expect("get_call").is_ended(), "alice and bob go on");
    alice.sync().await;
    assert_eq!(alice.seen(ended(&call)), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn disconnecting_mid_call_hangs_up() {
    let server = TestServer::start(config()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;
    let log = bob.finish().await;
    assert_eq!(log.iter().filter(|e| ended(&call)(e)).count(), 1, "{log:#?}");
    alice.expect(ended_with(&call, EndReason::RemoteHangup), "alice told at once").await;
    server.shutdown().await;
}

#[tokio::test]
async fn single_device_policy_kicks_the_older_login() {
    use callplus_session::switchboard::DevicePolicy;
    use callplus_tests::{ConnectionState, state_is};

    let server =
        TestServer::start(SwitchboardConfig { device_policy: DevicePolicy::SingleDevice, ..config() }).await;
    let mut phone = server.device("alice", "alice-phone").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut phone, &mut bob, MediaType::Audio).await;

    let mut tablet = server.device("alice", "alice-tablet").await;
    phone.expect(state_is(ConnectionState::Kicked(EndReason::KickedOtherLogin)), "phone kicked").await;
    phone.expect(ended_with(&call, EndReason::KickedOtherLogin), "phone's call ended").await;
    bob.expect(ended_with(&call, EndReason::RemoteKickedOtherLogin), "bob told").await;
    assert_eq!(
        phone.client.get_available_calls().await.map_err(|e| e.code).expect_err("stopped"),
        Code::NotConnected
    );

    let second = tablet.call("bob", MediaType::Audio).await;
    bob.answer(&second).await;
    tablet.expect(connected(&second), "the new login calls").await;
    server.shutdown().await;
}

#[tokio::test]
async fn frames_larger_than_the_stream_buffers_arrive_whole() {
    // The signalling codec starts each stream's buffers at 1 KiB; a frame several times that
    // (the largest `extra` allowed) must grow them, not be cut or refused, both ways.
    let server = TestServer::start(config()).await;
    let alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let extra: String =
        (0..callplus_session::limits::MAX_EXTRA_BYTES).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    assert!(extra.len() > 3 * callplus_proto::codec::BUFFER_SIZE);
    let options = CallOptions { extra: extra.clone(), ..CallOptions::default() };
    let call = alice.call_with("bob", MediaType::AudioVideo, options).await;
    let Event::ReceivedCall { extra: received_extra, .. } = bob.expect(received(&call), "invitation").await
    else {
        unreachable!()
    };
    assert_eq!(received_extra, extra);
    bob.client.accept(&call).await.expect("accept");
    bob.expect(connected(&call), "bob connected").await;
}

#[tokio::test]
async fn a_call_over_tls_works_like_one_over_plaintext() {
    use callplus_tests::{Setup, TestCertificate};

    let server =
        TestServer::start_with(Setup { tls: Some(TestCertificate::generate()), ..Setup::default() }).await;
    assert!(server.endpoint().starts_with("https://127.0.0.1:"), "{}", server.endpoint());
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let call = establish(&mut alice, &mut bob, MediaType::Audio).await;
    alice.client.hangup(Some(&call)).await.expect("hangup");
    bob.expect(ended_with(&call, EndReason::RemoteHangup), "bob told").await;
    bob.expect(record_of(&call), "bob's record").await;
    alice.expect(record_of(&call), "alice's record").await;
    let page = alice.client.get_call_records(-1, 10, RecordOrder::Desc).await.expect("records");
    assert_eq!(page.records.first().map(|r| &r.call.call_id), Some(&call));
    server.shutdown().await;
}
