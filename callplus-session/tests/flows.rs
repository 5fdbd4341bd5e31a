//! Every call flow of docs/protocol.md (docs/protocol.md#client-operations to
//! docs/protocol.md#result-codes), run through the real switchboard and real client engines over
//! the simulated network (see `sim`). Time is virtual: a 60 s ring timeout costs nothing.

mod sim;

use callplus_session::switchboard::{BusyPolicy, DevicePolicy, Output, SwitchboardConfig};
use callplus_session::{
    CallState, CallType, ChangeMediaTypeResult, Code, Delivery, Direction, EndReason, MediaType,
    ParticipantState, RecordOrder,
};
use sim::{Sim, T0, user};

fn sim() -> Sim {
    Sim::new(SwitchboardConfig::default())
}

/// Alice and Bob, each with one connected device.
fn alice_and_bob() -> (Sim, usize, usize) {
    let mut sim = sim();
    let alice = sim.add_device("alice", "alice-phone");
    let bob = sim.add_device("bob", "bob-phone");
    sim.settle();
    (sim, alice, bob)
}

#[test]
fn audio_call_accepted_and_hung_up_by_caller() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "bob receives the call", |s| s.incoming(bob).is_some());
    assert_eq!(sim.incoming(bob).as_ref(), Some(&call));
    assert_eq!(sim.state_of(alice, &call), Some(CallState::Dialing));
    sim.run_for(3_000);
    sim.accept(bob, &call);
    sim.run_until(1_000, "both connected", |s| s.connected(alice, &call) && s.connected(bob, &call));
    sim.run_for(10_000);
    sim.hangup(alice, &call);
    sim.run_until(1_000, "both ended", |s| s.ended(alice, &call).is_some() && s.ended(bob, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::Hangup));
    assert_eq!(sim.ended(bob, &call), Some(EndReason::RemoteHangup));

    // One record per participant, with timestamps that bracket what happened.
    let records = sim.all_records(&call);
    assert_eq!(records.len(), 2, "one record for each participant");
    for record in &records {
        let started =
            record.call.started_at_ms.unwrap_or_else(|| panic!("call connected, start time missing"));
        let ended = record.call.ended_at_ms.unwrap_or_else(|| panic!("end time missing"));
        assert!(record.call.created_at_ms >= T0 && started > record.call.created_at_ms);
        assert!(ended - started >= 10_000, "the call lasted the 10 s we ran it");
        assert_eq!(record.duration_ms, ended - started);
    }
    let alice_record =
        records.iter().find(|r| r.owner == user("alice")).unwrap_or_else(|| panic!("alice record"));
    assert_eq!(alice_record.direction, Direction::Outgoing);
    assert_eq!(alice_record.end_reason, EndReason::Hangup);
    let bob_record = records.iter().find(|r| r.owner == user("bob")).unwrap_or_else(|| panic!("bob record"));
    assert_eq!(bob_record.direction, Direction::Incoming);
    assert_eq!(bob_record.end_reason, EndReason::RemoteHangup);
    // Both were online: they got the record and the SINGLE-call summary live.
    for idx in [alice, bob] {
        assert_eq!(sim.records_received(idx, &call), 1);
        assert_eq!(sim.summaries_received(idx, &call), 1);
    }
}

#[test]
fn both_sessions_say_everyone_is_on_call_once_connected() {
    use callplus_session::client::ClientEvent;

    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    for idx in [alice, bob] {
        // The session the CallConnected event carried, and the session now.
        let connected = sim
            .events(idx)
            .into_iter()
            .find_map(|e| match e {
                ClientEvent::CallConnected { session } if session.call_id() == &call => Some(session.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("device {idx}: no CallConnected"));
        let now = sim.engine(idx).current_call().cloned().unwrap_or_else(|| panic!("device {idx}: no call"));
        for session in [connected, now] {
            for name in ["alice", "bob"] {
                let state = session.participant(&user(name)).map(|p| p.state);
                assert_eq!(state, Some(ParticipantState::OnCall), "device {idx}: {name} in {session:?}");
            }
        }
    }
}

#[test]
fn video_call_hung_up_by_callee() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.answered_call(alice, bob, "bob", MediaType::AudioVideo);
    sim.hangup(bob, &call);
    sim.run_until(1_000, "ended", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteHangup));
    assert_eq!(sim.ended(bob, &call), Some(EndReason::Hangup));
    assert_eq!(sim.all_records(&call)[0].call.media_type, MediaType::AudioVideo);
}

#[test]
fn callee_rejects() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "incoming", |s| s.incoming(bob).is_some());
    sim.hangup(bob, &call);
    sim.run_until(1_000, "ended", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteReject));
    assert_eq!(sim.ended(bob, &call), Some(EndReason::Reject));
    let records = sim.all_records(&call);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.call.started_at_ms.is_none() && r.duration_ms == 0));
}

#[test]
fn caller_cancels() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "incoming", |s| s.incoming(bob).is_some());
    sim.hangup(alice, &call);
    sim.run_until(1_000, "ended", |s| s.ended(bob, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::Cancel));
    assert_eq!(sim.ended(bob, &call), Some(EndReason::RemoteCancel));
}

#[test]
fn ring_timeout_gives_no_response() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "incoming", |s| s.incoming(bob).is_some());
    sim.run_for(59_000);
    assert_eq!(sim.ended(alice, &call), None, "still ringing before 60 s");
    sim.run_until(2_000, "timeout", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteNoResponse));
    assert_eq!(sim.ended(bob, &call), Some(EndReason::NoResponse));
}

#[test]
fn per_call_ring_timeout_overrides_default() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start_with_timeout(alice, &["bob"], 5_000);
    sim.run_until(1_000, "incoming", |s| s.incoming(bob).is_some());
    sim.run_until(6_000, "timeout", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteNoResponse));
    assert!(sim.now - T0 < 7_000);
}

#[test]
fn unreachable_callee_is_told_apart_from_no_answer() {
    let mut sim = Sim::new(SwitchboardConfig { push_enabled: false, ..SwitchboardConfig::default() });
    let alice = sim.add_device("alice", "alice-phone");
    sim.settle();
    let call = sim.start(alice, &["carol"], CallType::Single, MediaType::Audio);
    sim.run_until(61_000, "timeout", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteOffline));
}

#[test]
fn busy_callee_is_rung_and_reported() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    sim.settle();
    let first = sim.answered_call(bob, carol, "carol", MediaType::Audio);
    let (second, busy) = sim.start_reporting_busy(alice, &["bob"], CallType::Single, MediaType::Audio);
    assert_eq!(busy, vec![user("bob")]);
    sim.run_until(1_000, "call waiting rings bob", |s| s.incoming(bob).as_ref() == Some(&second));
    assert!(sim.connected(bob, &first), "the first call goes on");
}

#[test]
fn busy_callee_auto_rejected() {
    let mut sim =
        Sim::new(SwitchboardConfig { busy_policy: BusyPolicy::AutoReject, ..SwitchboardConfig::default() });
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    sim.settle();
    let first = sim.answered_call(bob, carol, "carol", MediaType::Audio);
    let (second, busy) = sim.start_reporting_busy(alice, &["bob"], CallType::Single, MediaType::Audio);
    assert_eq!(busy, vec![user("bob")]);
    sim.run_until(1_000, "ended", |s| s.ended(alice, &second).is_some());
    assert_eq!(sim.ended(alice, &second), Some(EndReason::RemoteBusy));
    assert!(sim.connected(bob, &first));
    assert_ne!(sim.incoming(bob).as_ref(), Some(&second), "a busy callee is not rung");
}

#[test]
fn two_devices_ring_one_accepts() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob_phone = sim.add_device("bob", "bob-phone");
    let bob_tablet = sim.add_device("bob", "bob-tablet");
    sim.settle();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "both ring", |s| {
        s.incoming(bob_phone).is_some() && s.incoming(bob_tablet).is_some()
    });
    sim.accept(bob_tablet, &call);
    sim.run_until(1_000, "phone stops", |s| s.ended(bob_phone, &call).is_some());
    assert_eq!(sim.ended(bob_phone, &call), Some(EndReason::AcceptedOnOtherDevice));
    assert!(sim.connected(bob_tablet, &call));
    assert!(sim.connected(alice, &call));
    sim.hangup(alice, &call);
    sim.run_until(1_000, "ended", |s| s.ended(bob_tablet, &call).is_some());
    assert_eq!(sim.ended_count(bob_phone, &call), 1, "the other device hears nothing more about the call");
}

#[test]
fn two_devices_ring_one_rejects() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob_phone = sim.add_device("bob", "bob-phone");
    let bob_tablet = sim.add_device("bob", "bob-tablet");
    sim.settle();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "both ring", |s| {
        s.incoming(bob_phone).is_some() && s.incoming(bob_tablet).is_some()
    });
    sim.hangup(bob_phone, &call);
    sim.run_until(1_000, "ended", |s| {
        s.ended(bob_tablet, &call).is_some() && s.ended(alice, &call).is_some()
    });
    assert_eq!(sim.ended(bob_tablet, &call), Some(EndReason::RejectedOnOtherDevice));
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteReject));
}

#[test]
fn accepting_another_call_hangs_up_the_current_one() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    sim.settle();
    let first = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    let second = sim.start(carol, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "second rings", |s| s.incoming(bob).as_ref() == Some(&second));
    sim.accept(bob, &second);
    sim.run_until(1_000, "switch", |s| s.connected(bob, &second) && s.ended(bob, &first).is_some());
    assert_eq!(sim.ended(bob, &first), Some(EndReason::AcceptedAnotherCall));
    assert_eq!(sim.ended(alice, &first), Some(EndReason::RemoteAcceptedAnotherCall));
    assert_eq!(sim.current_call_id(bob).as_ref(), Some(&second));
}

#[test]
fn invite_turns_single_into_multi() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    sim.settle();
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    let busy = sim.invite(alice, &["carol"]);
    assert!(busy.is_empty());
    sim.run_until(1_000, "carol rings", |s| s.incoming(carol).as_ref() == Some(&call));
    for idx in [alice, bob] {
        assert!(sim.saw_type_change(idx, &call, CallType::Multi), "device {idx} got call_type_changed");
        assert!(sim.saw_invited(idx, &call, "carol"), "device {idx} got remote_user_invited");
    }
    sim.accept(carol, &call);
    sim.run_until(1_000, "carol connected", |s| s.connected(carol, &call));
    assert_eq!(sim.session_type(carol, &call), Some(CallType::Multi));
}

#[test]
fn multi_call_continues_when_one_leaves_and_ends_below_two() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    sim.settle();
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::Audio);
    sim.run_until(1_000, "both ring", |s| s.incoming(bob).is_some() && s.incoming(carol).is_some());
    sim.accept(bob, &call);
    sim.accept(carol, &call);
    sim.run_until(1_000, "all connected", |s| s.connected(bob, &call) && s.connected(carol, &call));
    sim.hangup(alice, &call);
    sim.run_until(1_000, "alice left", |s| s.ended(alice, &call).is_some());
    sim.settle();
    assert_eq!(sim.ended(bob, &call), None, "two remain: the call goes on");
    assert!(sim.saw_state(bob, &call, "alice", ParticipantState::Ended));
    sim.hangup(bob, &call);
    sim.run_until(1_000, "carol ends", |s| s.ended(carol, &call).is_some());
    assert_eq!(sim.all_records(&call).len(), 3);
}

#[test]
fn join_unended_multi_call_and_stranger_refused() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    let mallory = sim.add_device("mallory", "m");
    sim.settle();
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::Audio);
    sim.run_until(1_000, "ring", |s| s.incoming(bob).is_some() && s.incoming(carol).is_some());
    sim.accept(bob, &call);
    sim.run_until(1_000, "connected", |s| s.connected(bob, &call));
    sim.hangup(carol, &call);
    sim.run_until(1_000, "carol declined", |s| s.ended(carol, &call).is_some());
    let available = sim.available_calls(carol);
    assert!(available.contains(&call), "carol was invited: the call is available to her");
    sim.join(carol, &call).unwrap_or_else(|e| panic!("carol may join: {e}"));
    sim.run_until(1_000, "carol on call", |s| s.connected(carol, &call));
    let refused = sim.join(mallory, &call).err().map(|e| e.code);
    assert!(refused == Some(Code::CallNotFound), "{refused:?}");
    assert!(sim.available_calls(mallory).is_empty());
}

#[test]
fn group_size_limit() {
    let mut sim = Sim::new(SwitchboardConfig { max_audio_participants: 3, ..SwitchboardConfig::default() });
    let alice = sim.add_device("alice", "a");
    for name in ["bob", "carol", "dave"] {
        sim.add_device(name, name);
    }
    sim.settle();
    let err = sim.try_start(alice, &["bob", "carol", "dave"], CallType::Multi, MediaType::Audio).err();
    assert_eq!(err.map(|e| e.code), Some(Code::CallFull));
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::Audio);
    let err = sim.try_invite(alice, &call, &["dave"]).err();
    assert_eq!(err.map(|e| e.code), Some(Code::CallFull));
}

fn connected_pair(media: MediaType) -> (Sim, usize, usize, callplus_session::CallId) {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start(alice, &["bob"], CallType::Single, media);
    sim.run_until(1_000, "incoming", |s| s.incoming(bob).is_some());
    sim.accept(bob, &call);
    sim.run_until(1_000, "connected", |s| s.connected(alice, &call) && s.connected(bob, &call));
    (sim, alice, bob, call)
}

#[test]
fn change_media_type_accepted() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    let tx = sim.request_media(alice, MediaType::AudioVideo);
    sim.run_until(1_000, "bob asked", |s| s.media_request(bob).is_some());
    sim.reply_media(bob, &tx, true);
    sim.run_until(1_000, "result", |s| {
        s.media_result(alice, &tx).is_some() && s.media_result(bob, &tx).is_some()
    });
    assert_eq!(sim.media_result(alice, &tx), Some(ChangeMediaTypeResult::Accepted));
    assert_eq!(sim.session_media(alice, &call), Some(MediaType::AudioVideo));
    assert_eq!(sim.session_media(bob, &call), Some(MediaType::AudioVideo));
}

#[test]
fn change_media_type_rejected() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    let tx = sim.request_media(alice, MediaType::AudioVideo);
    sim.run_until(1_000, "bob asked", |s| s.media_request(bob).is_some());
    sim.reply_media(bob, &tx, false);
    sim.run_until(1_000, "result", |s| s.media_result(alice, &tx).is_some());
    assert_eq!(sim.media_result(alice, &tx), Some(ChangeMediaTypeResult::Rejected));
    assert_eq!(sim.session_media(alice, &call), Some(MediaType::Audio));
}

#[test]
fn change_media_type_cancelled() {
    let (mut sim, alice, bob, _call) = connected_pair(MediaType::Audio);
    let tx = sim.request_media(alice, MediaType::AudioVideo);
    sim.run_until(1_000, "bob asked", |s| s.media_request(bob).is_some());
    sim.cancel_media(alice, &tx);
    sim.run_until(1_000, "result", |s| s.media_result(bob, &tx).is_some());
    assert_eq!(sim.media_result(bob, &tx), Some(ChangeMediaTypeResult::Cancelled));
}

#[test]
fn change_media_type_times_out() {
    let (mut sim, alice, bob, _call) = connected_pair(MediaType::Audio);
    let tx = sim.request_media(alice, MediaType::AudioVideo);
    sim.run_until(1_000, "bob asked", |s| s.media_request(bob).is_some());
    sim.run_until(31_000, "timeout", |s| s.media_result(alice, &tx).is_some());
    assert_eq!(sim.media_result(alice, &tx), Some(ChangeMediaTypeResult::Timeout));
    assert_eq!(sim.media_result(bob, &tx), Some(ChangeMediaTypeResult::Timeout));
}

#[test]
fn change_media_type_conflict() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    let tx_a = sim.request_media_nowait(alice, MediaType::AudioVideo);
    let tx_b = sim.request_media_nowait(bob, MediaType::AudioVideo);
    sim.run_until(1_000, "both answered", |s| s.request_done(alice, tx_a) && s.request_done(bob, tx_b));
    sim.run_until(1_000, "conflict", |s| s.any_media_result(alice) == Some(ChangeMediaTypeResult::Conflict));
    assert_eq!(sim.any_media_result(bob), Some(ChangeMediaTypeResult::Conflict));
    assert_eq!(sim.session_media(alice, &call), Some(MediaType::Audio));
}

#[test]
fn downgrade_to_audio_needs_no_agreement() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::AudioVideo);
    let tx = sim.request_media(alice, MediaType::Audio);
    sim.run_until(1_000, "result", |s| s.media_result(bob, &tx).is_some());
    assert_eq!(sim.media_result(bob, &tx), Some(ChangeMediaTypeResult::Accepted));
    assert_eq!(sim.session_media(bob, &call), Some(MediaType::Audio));
    assert!(sim.media_request(bob).is_none(), "bob was never asked");
}

#[test]
fn camera_and_microphone_state_relayed() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::AudioVideo);
    sim.set_camera(alice, false);
    sim.set_microphone(alice, false);
    sim.run_until(1_000, "relayed", |s| {
        s.camera_state(bob, &call, "alice") == Some(true)
            && s.microphone_state(bob, &call, "alice") == Some(true)
    });
    sim.set_camera(alice, true);
    sim.run_until(1_000, "camera back", |s| s.camera_state(bob, &call, "alice") == Some(false));
}

#[test]
fn offline_callee_gets_summary_on_next_connect() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_offline_device("bob", "b");
    sim.settle();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_for(2_000);
    assert_eq!(sim.storage.pushes.len(), 1, "bob had no device: a push was requested");
    assert_eq!(sim.storage.pushes[0].callee, user("bob"));
    sim.hangup(alice, &call);
    sim.run_until(1_000, "alice ended", |s| s.ended(alice, &call).is_some());
    sim.run_for(5_000);
    sim.restart_app(bob);
    sim.run_until(2_000, "bob gets the summary", |s| s.summaries_received(bob, &call) == 1);
    sim.run_for(2_000);
    assert_eq!(sim.summaries_received(bob, &call), 1, "exactly once");
    assert_eq!(sim.records_received(bob, &call), 1);
    let summary = sim.summary(bob, &call).unwrap_or_else(|| panic!("summary"));
    assert_eq!(summary.end_reason, EndReason::RemoteCancel);
    assert_eq!(summary.direction, Direction::Incoming);
    assert!(
        sim.storage.offline_for(&sim::default_app(), &user("bob")).is_empty(),
        "acked offline events are deleted"
    );
    // A reconnect later does not deliver them again.
    sim.cut_and_reconnect(bob);
    sim.run_for(2_000);
    assert_eq!(sim.summaries_received(bob, &call), 1);
}

#[test]
fn late_device_still_rings_while_call_rings() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_offline_device("bob", "b");
    sim.settle();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_for(10_000);
    sim.restart_app(bob);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob).as_ref() == Some(&call));
    sim.accept(bob, &call);
    sim.run_until(1_000, "connected", |s| s.connected(alice, &call));
}

#[test]
fn crashed_device_ends_with_network_error_and_can_call_again_at_once() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    sim.crash(bob);
    sim.run_until(30_000, "liveness", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteNetworkError));
    let records = sim.all_records(&call);
    let bob_record = records.iter().find(|r| r.owner == user("bob")).unwrap_or_else(|| panic!("bob record"));
    assert_eq!(bob_record.end_reason, EndReason::NetworkError);
    // Bob's app restarts and calls at once: no lock-out.
    sim.restart_app(bob);
    sim.settle();
    let again = sim.start(bob, &["alice"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "alice rings", |s| s.incoming(alice).as_ref() == Some(&again));
}

#[test]
fn restarted_app_replaces_its_old_session_immediately() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    sim.crash(bob);
    sim.restart_app(bob);
    sim.run_until(1_000, "old leg ended", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteNetworkError));
    let again = sim.start(bob, &["alice"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "alice rings", |s| s.incoming(alice).as_ref() == Some(&again));
}

#[test]
fn connection_cut_mid_call_resumes_without_loss_or_duplicates() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::AudioVideo);
    sim.cut(bob);
    // While bob is cut off, alice turns her camera off and on: bob must see both, once, in order.
    sim.set_camera(alice, false);
    sim.set_camera(alice, true);
    sim.run_for(1_000);
    sim.power_on(bob);
    sim.run_until(2_000, "bob sees the camera events", |s| s.camera_events(bob, &call).len() == 2);
    assert_eq!(sim.camera_events(bob, &call), vec![true, false]);
    sim.hangup(bob, &call);
    sim.run_until(1_000, "ended", |s| s.ended(alice, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::RemoteHangup));
    assert_eq!(sim.ended_count(bob, &call), 1);
}

#[test]
fn stranger_cannot_act_on_a_call() {
    let (mut sim, _alice, _bob, call) = connected_pair(MediaType::Audio);
    let mallory = sim.add_device("mallory", "m");
    sim.settle();
    for code in
        [sim.raw_hangup(mallory, &call), sim.raw_accept(mallory, &call), sim.raw_get_call(mallory, &call)]
    {
        assert!(code == Some(Code::CallNotFound), "got {code:?}");
    }
}

#[test]
fn single_device_policy_kicks_the_older_login() {
    let mut sim = Sim::new(SwitchboardConfig {
        device_policy: DevicePolicy::SingleDevice,
        ..SwitchboardConfig::default()
    });
    let old = sim.add_device("alice", "old-phone");
    sim.settle();
    let _new = sim.add_device("alice", "new-phone");
    sim.run_until(1_000, "kicked", |s| s.kicked(old) == Some(EndReason::KickedOtherLogin));
}

#[test]
fn local_validation_codes() {
    let (mut sim, alice, _bob) = alice_and_bob();
    assert_eq!(sim.try_start_local(alice, &[], CallType::Single), Some(Code::UserListInvalid));
    assert_eq!(
        sim.try_start_local(alice, &["bob", "carol"], CallType::Single),
        Some(Code::SingleCallNotSupportMultiPerson)
    );
    assert_eq!(sim.try_start_local(alice, &["not valid!"], CallType::Single), Some(Code::ParamError));
    let _call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    assert_eq!(sim.try_start_local(alice, &["carol"], CallType::Single), Some(Code::SessionExist));
}

#[test]
fn records_paging_and_deletes() {
    let (mut sim, alice, bob) = alice_and_bob();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
        sim.run_until(1_000, "incoming", |s| s.incoming(bob).as_ref() == Some(&call));
        sim.hangup(alice, &call);
        sim.run_until(1_000, "ended", |s| s.ended(bob, &call).is_some());
        calls.push(call);
    }
    let first = sim.records_page(alice, -1, 2, RecordOrder::Desc);
    assert_eq!(
        first.records.iter().map(|r| r.call.call_id.clone()).collect::<Vec<_>>(),
        vec![calls[4].clone(), calls[3].clone()]
    );
    assert!(first.has_more);
    let second = sim.records_page(alice, first.sync_time, 2, RecordOrder::Desc);
    assert_eq!(
        second.records.iter().map(|r| r.call.call_id.clone()).collect::<Vec<_>>(),
        vec![calls[2].clone(), calls[1].clone()]
    );
    let third = sim.records_page(alice, second.sync_time, 2, RecordOrder::Desc);
    assert_eq!(third.records.len(), 1);
    assert!(!third.has_more);
    let asc = sim.records_page(alice, -1, 100, RecordOrder::Asc);
    assert_eq!(asc.records.iter().map(|r| r.call.call_id.clone()).collect::<Vec<_>>(), calls);
    sim.delete_records(alice, vec![calls[0].clone()]);
    assert_eq!(sim.records_page(alice, -1, 100, RecordOrder::Asc).records.len(), 4);
    sim.delete_all_records(alice);
    assert!(sim.records_page(alice, -1, 100, RecordOrder::Asc).records.is_empty());
    assert_eq!(
        sim.records_page(bob, -1, 100, RecordOrder::Asc).records.len(),
        5,
        "bob's records are his own"
    );
}

#[test]
fn first_frame_time_reaches_both_and_the_record() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    sim.report_first_frame(bob, &call);
    sim.run_until(1_000, "first frame", |s| s.first_frame(alice, &call).is_some());
    sim.hangup(alice, &call);
    sim.run_until(1_000, "ended", |s| s.ended(bob, &call).is_some());
    let at = sim.first_frame(alice, &call);
    assert!(sim.all_records(&call).iter().all(|r| r.call.first_frame_at_ms == at));
}

#[test]
fn caller_sees_delivery_progress() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "delivered", |s| s.delivery(alice, &call, "bob") == Some(Delivery::Delivered));
    sim.ringing(bob, &call);
    sim.run_until(1_000, "ringing", |s| s.delivery(alice, &call, "bob") == Some(Delivery::Ringing));
    assert!(sim.saw_state(alice, &call, "bob", ParticipantState::Ringing));
}

#[test]
fn server_shutdown_ends_calls_with_ended_by_server() {
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    let now = sim.now;
    sim.switchboard.shutdown(now);
    sim.run_until(1_000, "ended", |s| s.ended(alice, &call).is_some() && s.ended(bob, &call).is_some());
    assert_eq!(sim.ended(alice, &call), Some(EndReason::EndedByServer));
    assert_eq!(sim.all_records(&call).len(), 2);
    assert!(sim.outputs.iter().any(|o| matches!(o, Output::ForgetCall { .. })));
}

#[test]
fn devices_reconnect_to_the_server_that_replaces_a_stopped_one() {
    use callplus_session::client::{ClientEvent, ConnectionState, DriverEvent};
    let (mut sim, alice, bob, call) = connected_pair(MediaType::Audio);
    let now = sim.now;
    sim.switchboard.shutdown(now);
    let stale = |s: &Sim, idx: usize| {
        s.devices[idx].driver_events.iter().any(|(_, e)| matches!(e, DriverEvent::TransportStale))
    };
    sim.run_until(1_000, "told to reconnect", |s| stale(s, alice) && stale(s, bob));
    for idx in [alice, bob] {
        assert_eq!(sim.kicked(idx), None, "a shutdown is not a kick");
        assert_eq!(sim.engine(idx).connection_state(), ConnectionState::Connecting);
    }
    assert_eq!(sim.ended(alice, &call), Some(EndReason::EndedByServer));

    sim.replace_server(SwitchboardConfig::default());
    sim.clear_events();
    sim.reconnect(alice);
    sim.reconnect(bob);
    sim.run_until(1_000, "connected again", |s| {
        [alice, bob]
            .iter()
            .all(|&i| s.events(i).contains(&&ClientEvent::ConnectionStateChanged(ConnectionState::Connected)))
    });
    let again = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob).as_ref() == Some(&again));
}

#[test]
fn accepting_while_dialing_then_hanging_up_at_once_keeps_one_story() {
    let mut sim = sim();
    let alice = sim.add_device("alice", "a");
    let bob = sim.add_device("bob", "b");
    let carol = sim.add_device("carol", "c");
    sim.settle();
    // Bob is dialing Carol when Alice's call reaches him.
    let dialing = sim.start(bob, &["carol"], CallType::Single, MediaType::Audio);
    let incoming = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob).as_ref() == Some(&incoming));
    // He accepts it and, before any answer, hangs up his current call.
    let now = sim.now;
    let _ = sim.engine(bob).accept(now, &incoming);
    let _ = sim.engine(bob).hangup(now, None, None);
    sim.run_for(2_000);
    let told = sim.ended(bob, &dialing);
    let record = sim
        .all_records(&dialing)
        .into_iter()
        .find(|r| r.owner == user("bob"))
        .unwrap_or_else(|| panic!("bob's record of the call he was dialing"));
    assert_eq!(told, Some(record.end_reason), "what bob was told matches his record");
    let _ = carol;
}

#[test]
fn the_call_snapshot_names_the_device_that_answered() {
    let (mut sim, alice, bob) = alice_and_bob();
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    // Media negotiation is addressed to these devices.
    let info = sim.get_call(alice, &call);
    let device =
        |who: &str| info.participant(&user(who)).and_then(|p| p.device_id.clone()).map(|d| d.to_string());
    assert_eq!(device("bob").as_deref(), Some("bob-phone"));
    assert_eq!(device("alice").as_deref(), Some("alice-phone"));
}
