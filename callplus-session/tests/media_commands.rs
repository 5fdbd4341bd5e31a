//! The client engine's media decisions, through the real switchboard and real engines over the
//! simulated network: the exact media commands each device gets in every flow, executed by a
//! simulated media stack that negotiates offer → answer over signalling.
//!
//! The rule checked throughout: a device gets media commands only for a call it is connected in,
//! and every pair of connected devices ends up with exactly one offerer and working media.

mod sim;

use callplus_session::client::ClientEvent;
use callplus_session::client::{MediaCommand, MediaPeer};
use callplus_session::media_token::media_token;
use callplus_session::switchboard::{MEDIA_RECOVERY_MS, MediaRouter, Output, SwitchboardConfig};
use callplus_session::{
    CallId, CallType, DeviceId, EndReason, MediaKind, MediaPayload, MediaType, ParticipantState, SfuRoute,
};
use sim::{Sim, user};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn device(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn peer(user_name: &str, device_name: &str, offerer: bool) -> MediaPeer {
    MediaPeer { user_id: user(user_name), device_id: device(device_name), offerer }
}

fn start(
    call: &CallId,
    me: &str,
    my_device: &str,
    media_type: MediaType,
    peers: Vec<MediaPeer>,
) -> MediaCommand {
    MediaCommand::Start {
        call_id: call.clone(),
        local_user: user(me),
        local_device: device(my_device),
        media_type,
        peers,
        ice_servers: Vec::new(),
        microphone_enabled: true,
        camera_enabled: true,
        sfu: None,
    }
}

fn signal(call: &CallId, from: &str, from_device: &str, payload: MediaPayload) -> MediaCommand {
    MediaCommand::ApplySignal {
        call_id: call.clone(),
        from_user: user(from),
        from_device: device(from_device),
        payload,
    }
}

fn offer() -> MediaPayload {
    MediaPayload::SdpOffer("offer".to_owned())
}

fn answer() -> MediaPayload {
    MediaPayload::SdpAnswer("answer".to_owned())
}

fn stop(call: &CallId) -> MediaCommand {
    MediaCommand::Stop { call_id: call.clone() }
}

fn owned(commands: Vec<&MediaCommand>) -> Vec<MediaCommand> {
    commands.into_iter().cloned().collect()
}

/// No simulated stack saw a command that makes no sense for its state.
fn assert_no_violations(sim: &Sim) {
    for d in &sim.devices {
        assert!(d.stack.violations.is_empty(), "{}: {:?}", d.name, d.stack.violations);
    }
}

fn setup(devices: &[(&str, &str)]) -> (Sim, Vec<usize>) {
    let mut sim = Sim::new(SwitchboardConfig::default());
    let idx = devices.iter().map(|(u, d)| sim.add_device(u, d)).collect();
    sim.settle();
    (sim, idx)
}

#[test]
fn one_to_one_call_starts_negotiates_and_stops_media_on_both_sides() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1")]);
    let (alice, bob) = (d[0], d[1]);
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob).is_some());
    assert!(sim.media(alice).is_empty(), "no media while dialing");
    assert!(sim.media(bob).is_empty(), "no media while ringing");

    sim.accept(bob, &call);
    sim.run_until(1_000, "media up on both sides", |s| {
        s.devices[alice].stack.connected_with(&call, "bob", "b1")
            && s.devices[bob].stack.connected_with(&call, "alice", "a1")
    });
    // ("alice", "a1") < ("bob", "b1"): alice offers, bob answers.
    assert_eq!(
        owned(sim.media(alice)),
        vec![
            start(&call, "alice", "a1", MediaType::Audio, vec![peer("bob", "b1", true)]),
            signal(&call, "bob", "b1", answer())
        ]
    );
    assert_eq!(
        owned(sim.media(bob)),
        vec![
            start(&call, "bob", "b1", MediaType::Audio, vec![peer("alice", "a1", false)]),
            signal(&call, "alice", "a1", offer())
        ]
    );
    // The engine reported the first frame once: every participant hears of it.
    sim.run_until(1_000, "first frame time", |s| {
        s.first_frame(alice, &call).is_some() && s.first_frame(bob, &call).is_some()
    });

    sim.clear_media();
    sim.hangup(alice, &call);
    sim.run_until(1_000, "both ended", |s| s.ended(alice, &call).is_some() && s.ended(bob, &call).is_some());
    assert_eq!(owned(sim.media(alice)), vec![stop(&call)]);
    assert_eq!(owned(sim.media(bob)), vec![stop(&call)]);
    sim.run_for(5_000);
    assert_eq!(sim.media(alice).len(), 1, "nothing after the stop");
    assert_no_violations(&sim);
}

#[test]
fn only_the_answering_device_gets_media() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1"), ("bob", "b2")]);
    let (alice, bob1, bob2) = (d[0], d[1], d[2]);
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::AudioVideo);
    sim.run_until(1_000, "both of bob's devices ring", |s| {
        s.incoming(bob1).is_some() && s.incoming(bob2).is_some()
    });
    sim.accept(bob2, &call);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b2"));
    sim.run_for(2_000);
    assert!(
        sim.media(bob1).is_empty(),
        "the device that did not answer gets no media: {:?}",
        sim.media(bob1)
    );
    assert_eq!(
        owned(sim.media(alice)),
        vec![
            start(&call, "alice", "a1", MediaType::AudioVideo, vec![peer("bob", "b2", true)]),
            signal(&call, "bob", "b2", answer()),
        ]
    );
    assert_eq!(sim.devices[bob2].stack.peers(&call), vec!["alice/a1".to_owned()]);
    assert_no_violations(&sim);
}

#[test]
fn invite_into_a_single_call_adds_the_new_participant_to_everyone_media() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")]);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    sim.clear_media();

    sim.invite(bob, &["carol"]);
    sim.run_until(1_000, "carol rings", |s| s.incoming(carol).is_some());
    assert!(sim.media(alice).is_empty() && sim.media(bob).is_empty(), "nothing changes while carol rings");
    sim.accept(carol, &call);
    sim.run_until(1_000, "carol's media up with both", |s| {
        s.devices[carol].stack.connected_with(&call, "alice", "a1")
            && s.devices[carol].stack.connected_with(&call, "bob", "b1")
            && s.devices[alice].stack.connected_with(&call, "carol", "c1")
            && s.devices[bob].stack.connected_with(&call, "carol", "c1")
    });
    // Carol offers to nobody: both others sort before her and offer to her.
    assert_eq!(
        sim.media(carol).first().cloned().cloned(),
        Some(start(
            &call,
            "carol",
            "c1",
            MediaType::Audio,
            vec![peer("alice", "a1", false), peer("bob", "b1", false)]
        ))
    );
    assert_eq!(
        owned(sim.media(alice)),
        vec![
            MediaCommand::AddPeer { call_id: call.clone(), peer: peer("carol", "c1", true) },
            signal(&call, "carol", "c1", answer()),
        ]
    );
    assert_eq!(
        owned(sim.media(bob)),
        vec![
            MediaCommand::AddPeer { call_id: call.clone(), peer: peer("carol", "c1", true) },
            signal(&call, "carol", "c1", answer()),
        ]
    );
    assert_no_violations(&sim);
}

#[test]
fn leaving_and_joining_a_group_call_remove_and_add_the_peer() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")]);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::Audio);
    sim.run_until(1_000, "both ring", |s| s.incoming(bob).is_some() && s.incoming(carol).is_some());
    sim.accept(bob, &call);
    sim.accept(carol, &call);
    sim.run_until(2_000, "full mesh up", |s| {
        s.devices[bob].stack.connected_with(&call, "carol", "c1")
            && s.devices[alice].stack.connected_with(&call, "bob", "b1")
            && s.devices[alice].stack.connected_with(&call, "carol", "c1")
    });
    sim.clear_media();

    sim.hangup(carol, &call);
    sim.run_until(1_000, "carol left", |s| s.ended(carol, &call).is_some());
    sim.settle();
    let removed =
        MediaCommand::RemovePeer { call_id: call.clone(), user_id: user("carol"), device_id: device("c1") };
    assert_eq!(owned(sim.media(alice)), vec![removed.clone()]);
    assert_eq!(owned(sim.media(bob)), vec![removed]);
    assert_eq!(owned(sim.media(carol)), vec![stop(&call)]);
    sim.clear_media();

    sim.join(carol, &call).unwrap_or_else(|e| panic!("join: {e}"));
    sim.run_until(1_000, "carol's media up again", |s| {
        s.devices[carol].stack.connected_with(&call, "alice", "a1")
            && s.devices[carol].stack.connected_with(&call, "bob", "b1")
    });
    assert_eq!(
        sim.media(carol).first().cloned().cloned(),
        Some(start(
            &call,
            "carol",
            "c1",
            MediaType::Audio,
            vec![peer("alice", "a1", false), peer("bob", "b1", false)]
        ))
    );
    assert_eq!(
        sim.media(alice).first().cloned().cloned(),
        Some(MediaCommand::AddPeer { call_id: call.clone(), peer: peer("carol", "c1", true) })
    );
    assert_no_violations(&sim);
}

#[test]
fn an_accepted_media_type_change_switches_both_sides_and_a_refused_one_does_not() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1")]);
    let (alice, bob) = (d[0], d[1]);
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    sim.clear_media();

    let tx = sim.request_media(alice, MediaType::AudioVideo);
    sim.run_until(1_000, "bob is asked", |s| s.media_request(bob).is_some());
    sim.reply_media(bob, &tx, false);
    sim.settle();
    assert!(sim.media(alice).is_empty() && sim.media(bob).is_empty(), "a refused change changes nothing");

    let tx = sim.request_media(alice, MediaType::AudioVideo);
    sim.run_until(1_000, "bob is asked again", |s| s.media_request(bob).as_ref() == Some(&tx));
    sim.reply_media(bob, &tx, true);
    sim.settle();
    let switched = MediaCommand::SetMediaType { call_id: call.clone(), media_type: MediaType::AudioVideo };
    assert_eq!(owned(sim.media(alice)), vec![switched.clone()]);
    assert_eq!(owned(sim.media(bob)), vec![switched]);
    assert_no_violations(&sim);
}

#[test]
fn a_resumed_connection_keeps_media_as_it_is() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1")]);
    let (alice, bob) = (d[0], d[1]);
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    sim.clear_media();
    sim.cut_and_reconnect(bob);
    sim.run_for(3_000);
    assert!(sim.connected(bob, &call));
    assert!(sim.media(alice).is_empty(), "{:?}", sim.media(alice));
    assert!(sim.media(bob).is_empty(), "{:?}", sim.media(bob));
}

#[test]
fn a_crashed_app_restarts_without_media_and_the_peer_stops_its_own() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1")]);
    let (alice, bob) = (d[0], d[1]);
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    sim.clear_media();
    sim.crash(bob);
    sim.run_until(60_000, "alice's call ends by liveness", |s| s.ended(alice, &call).is_some());
    assert_eq!(owned(sim.media(alice)), vec![stop(&call)]);
    sim.restart_app(bob);
    sim.settle();
    assert!(sim.media(bob).is_empty(), "a fresh engine starts no media for a call it is not in");
    assert_no_violations(&sim);
}

#[test]
fn camera_and_microphone_switches_reach_the_media_stack_in_order() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1")]);
    let (alice, bob) = (d[0], d[1]);
    let call = sim.answered_call(alice, bob, "bob", MediaType::AudioVideo);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    sim.clear_media();
    sim.set_camera(alice, false);
    sim.set_microphone(alice, false);
    sim.set_camera(alice, true);
    sim.settle();
    assert_eq!(
        owned(sim.media(alice)),
        vec![
            MediaCommand::SetDevice { kind: MediaKind::Video, enabled: false },
            MediaCommand::SetDevice { kind: MediaKind::Audio, enabled: false },
            MediaCommand::SetDevice { kind: MediaKind::Video, enabled: true },
        ]
    );
    assert!(sim.media(bob).is_empty());
}

#[test]
fn signals_for_a_call_this_device_is_not_connected_in_are_dropped() {
    let (mut sim, d) = setup(&[("alice", "a1"), ("bob", "b1"), ("bob", "b2")]);
    let (alice, bob1, bob2) = (d[0], d[1], d[2]);
    let call = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob1).is_some() && s.incoming(bob2).is_some());
    sim.accept(bob2, &call);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b2"));
    // Alice's app addresses the device that did not answer (a stale or hostile peer).
    let now = sim.now;
    let sent = sim.engine(alice).send_media_signal(now, &call, &user("bob"), &device("b1"), offer());
    assert!(sent.is_ok());
    sim.settle();
    assert!(sim.media(bob1).is_empty(), "{:?}", sim.media(bob1));
}

/// A simulation whose switchboard routes MULTI calls made with more than `mesh_max`
/// participants through an SFU at `callplus-sfu`/`sfu` (the simulated SFU answers every offer);
/// tokens are `tok.<call>.<user>.<device>`.
fn setup_with_sfu(devices: &[(&str, &str)], mesh_max: usize) -> (Sim, Vec<usize>) {
    let (mut sim, idx) = setup(devices);
    sim.switchboard.set_media_router(MediaRouter {
        sfu_user: user("callplus-sfu"),
        sfu_device: device("sfu"),
        mesh_max,
        sign: Box::new(|call, user, device| format!("tok.{call}.{user}.{device}")),
    });
    (sim, idx)
}

fn sfu_route(call: &CallId, me: &str, my_device: &str) -> SfuRoute {
    SfuRoute {
        user_id: user("callplus-sfu"),
        device_id: device("sfu"),
        token: format!("tok.{call}.{me}.{my_device}"),
    }
}

/// The offers that reached the SFU: (user, device, token).
fn offers_to_sfu(sim: &Sim, call: &CallId) -> Vec<(String, String, Option<String>)> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::SfuSignal { call_id, from_user, from_device, payload: MediaPayload::SdpOffer(sdp) }
                if call_id == call =>
            {
                Some((from_user.to_string(), from_device.to_string(), media_token(sdp).map(str::to_owned)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_group_call_starts_media_through_the_sfu_and_a_one_to_one_call_stays_peer_to_peer() {
    let (mut sim, d) = setup_with_sfu(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 0);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::AudioVideo);
    sim.run_until(1_000, "both ring", |s| s.incoming(bob).is_some() && s.incoming(carol).is_some());
    sim.accept(bob, &call);
    sim.accept(carol, &call);
    sim.run_until(2_000, "everyone connected to the sfu", |s| {
        [alice, bob, carol].iter().all(|&i| s.devices[i].stack.connected_to_sfu(&call))
    });
    sim.settle();

    // Each device starts with the SFU's route and its own token; its only offer goes there.
    let with_sfu = |me: &str, my_device: &str, peers: Vec<MediaPeer>| {
        let mut command = start(&call, me, my_device, MediaType::AudioVideo, peers);
        if let MediaCommand::Start { sfu, .. } = &mut command {
            *sfu = Some(sfu_route(&call, me, my_device));
        }
        command
    };
    assert_eq!(
        sim.media(alice).first().cloned().cloned(),
        Some(with_sfu("alice", "a1", vec![peer("bob", "b1", true)]))
    );
    assert_eq!(
        sim.media(carol).first().cloned().cloned(),
        Some(with_sfu("carol", "c1", vec![peer("alice", "a1", false), peer("bob", "b1", false)]))
    );
    let mut offers = offers_to_sfu(&sim, &call);
    offers.sort();
    let expected: Vec<(String, String, Option<String>)> = [("alice", "a1"), ("bob", "b1"), ("carol", "c1")]
        .iter()
        .map(|(u, dev)| (u.to_string(), dev.to_string(), Some(format!("tok.{call}.{u}.{dev}"))))
        .collect();
    assert_eq!(offers, expected, "one offer per device, to the sfu, with that device's token");
    // Every signal a device applied came from the SFU (the stack flags any other).
    for &i in &[alice, bob, carol] {
        let from_devices = sim.media(i).into_iter().any(|c| {
            matches!(c, MediaCommand::ApplySignal { from_user, .. } if from_user.as_str() != "callplus-sfu")
        });
        assert!(!from_devices, "{}: a signal from another device", sim.devices[i].name);
    }
    assert_no_violations(&sim);

    // Carol leaves: the SFU is told (it renegotiates the others' connections).
    sim.hangup(carol, &call);
    sim.run_until(1_000, "carol left", |s| s.ended(carol, &call).is_some());
    let left = Output::SfuLeave { call_id: call.clone(), user: user("carol"), device: device("c1") };
    assert!(sim.outputs.contains(&left), "the sfu hears of carol's leave");
    sim.hangup(alice, &call);
    sim.run_until(1_000, "the call ended", |s| s.ended(bob, &call).is_some());
    assert!(sim.outputs.contains(&Output::SfuEndCall { call_id: call.clone() }));

    // A one-to-one call on the same server: peer to peer, no route, nothing for the SFU.
    sim.clear_media();
    let single = sim.start(alice, &["bob"], CallType::Single, MediaType::Audio);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob) == Some(single.clone()));
    sim.accept(bob, &single);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&single, "bob", "b1"));
    assert_eq!(
        sim.media(alice).first().cloned().cloned(),
        Some(start(&single, "alice", "a1", MediaType::Audio, vec![peer("bob", "b1", true)]))
    );
    assert!(offers_to_sfu(&sim, &single).is_empty());
    assert_no_violations(&sim);
}

#[test]
fn a_group_call_within_the_mesh_size_stays_peer_to_peer() {
    let (mut sim, d) = setup_with_sfu(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 3);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::Audio);
    sim.run_until(1_000, "both ring", |s| s.incoming(bob).is_some() && s.incoming(carol).is_some());
    sim.accept(bob, &call);
    sim.accept(carol, &call);
    sim.run_until(2_000, "full mesh up", |s| {
        s.devices[alice].stack.connected_with(&call, "bob", "b1")
            && s.devices[alice].stack.connected_with(&call, "carol", "c1")
            && s.devices[bob].stack.connected_with(&call, "carol", "c1")
    });
    assert_eq!(
        sim.media(alice).first().cloned().cloned(),
        Some(start(&call, "alice", "a1", MediaType::Audio, vec![peer("bob", "b1", true)]))
    );
    assert!(offers_to_sfu(&sim, &call).is_empty());
    assert_no_violations(&sim);
}

#[test]
fn invite_into_a_single_call_moves_its_media_to_the_sfu() {
    let (mut sim, d) = setup_with_sfu(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 0);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    sim.run_until(1_000, "media up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    sim.clear_media();

    sim.invite(bob, &["carol"]);
    sim.run_until(1_000, "alice and bob connected to the sfu", |s| {
        s.devices[alice].stack.connected_to_sfu(&call) && s.devices[bob].stack.connected_to_sfu(&call)
    });
    // The peer-to-peer media stops and starts again through the SFU, without ending the call.
    let moved = |me: &str, my_device: &str, peer: MediaPeer| {
        let mut command = start(&call, me, my_device, MediaType::Audio, vec![peer]);
        if let MediaCommand::Start { sfu, .. } = &mut command {
            *sfu = Some(sfu_route(&call, me, my_device));
        }
        owned(vec![&stop(&call), &command])
    };
    assert_eq!(owned(sim.media(alice))[..2], moved("alice", "a1", peer("bob", "b1", true))[..]);
    assert_eq!(owned(sim.media(bob))[..2], moved("bob", "b1", peer("alice", "a1", false))[..]);
    assert!(sim.ended(alice, &call).is_none() && sim.ended(bob, &call).is_none());

    sim.run_until(1_000, "carol rings", |s| s.incoming(carol).is_some());
    sim.accept(carol, &call);
    sim.run_until(1_000, "carol connected to the sfu", |s| s.devices[carol].stack.connected_to_sfu(&call));
    let mut offers = offers_to_sfu(&sim, &call);
    offers.sort();
    let users: Vec<String> = offers.iter().map(|(u, _, _)| u.clone()).collect();
    assert_eq!(users, vec!["alice", "bob", "carol"]);
    assert_no_violations(&sim);
}

/// Like [`setup_with_sfu`], but every token the signer makes is new (`tok.<n>`), as a real
/// signer's are (each carries its expiry): a route sent again is a fresh one.
fn setup_with_fresh_tokens(devices: &[(&str, &str)], mesh_max: usize) -> (Sim, Vec<usize>) {
    let (mut sim, idx) = setup(devices);
    let issued = Arc::new(AtomicU64::new(0));
    sim.switchboard.set_media_router(MediaRouter {
        sfu_user: user("callplus-sfu"),
        sfu_device: device("sfu"),
        mesh_max,
        sign: Box::new(move |_, _, _| format!("tok.{}", issued.fetch_add(1, Ordering::Relaxed))),
    });
    (sim, idx)
}

/// The token of the `Start` commands a device got for `call`, in order (`None` for a mesh).
fn started_tokens(sim: &Sim, idx: usize) -> Vec<Option<String>> {
    sim.media(idx)
        .into_iter()
        .filter_map(|c| match c {
            MediaCommand::Start { sfu, .. } => Some(sfu.as_ref().map(|r| r.token.clone())),
            _ => None,
        })
        .collect()
}

/// A three-party call through the (simulated) SFU with everyone connected to it.
fn sfu_call(sim: &mut Sim, alice: usize, bob: usize, carol: usize) -> CallId {
    let call = sim.start(alice, &["bob", "carol"], CallType::Multi, MediaType::AudioVideo);
    sim.run_until(1_000, "both ring", |s| s.incoming(bob).is_some() && s.incoming(carol).is_some());
    sim.accept(bob, &call);
    sim.accept(carol, &call);
    sim.run_until(2_000, "everyone connected to the sfu", |s| {
        [alice, bob, carol].iter().all(|&i| s.devices[i].stack.connected_to_sfu(&call))
    });
    sim.settle();
    call
}

#[test]
fn a_mesh_call_that_grows_past_the_mesh_size_moves_to_the_sfu() {
    let (mut sim, d) = setup_with_sfu(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 2);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    // Two participants, within the mesh size: peer to peer.
    let call = sim.start(alice, &["bob"], CallType::Multi, MediaType::Audio);
    sim.run_until(1_000, "bob rings", |s| s.incoming(bob).is_some());
    sim.accept(bob, &call);
    sim.run_until(1_000, "mesh up", |s| s.devices[alice].stack.connected_with(&call, "bob", "b1"));
    assert!(offers_to_sfu(&sim, &call).is_empty());
    sim.clear_media();

    // Carol makes three: alice's and bob's media move to the SFU before she even answers.
    sim.invite(alice, &["carol"]);
    sim.run_until(1_000, "alice and bob connected to the sfu", |s| {
        s.devices[alice].stack.connected_to_sfu(&call) && s.devices[bob].stack.connected_to_sfu(&call)
    });
    let moved = |me: &str, my_device: &str, peer: MediaPeer| {
        let mut command = start(&call, me, my_device, MediaType::Audio, vec![peer]);
        if let MediaCommand::Start { sfu, .. } = &mut command {
            *sfu = Some(sfu_route(&call, me, my_device));
        }
        owned(vec![&stop(&call), &command])
    };
    assert_eq!(owned(sim.media(alice))[..2], moved("alice", "a1", peer("bob", "b1", true))[..]);
    assert_eq!(owned(sim.media(bob))[..2], moved("bob", "b1", peer("alice", "a1", false))[..]);
    assert!(sim.ended(alice, &call).is_none() && sim.ended(bob, &call).is_none(), "the call goes on");

    sim.run_until(1_000, "carol rings", |s| s.incoming(carol).is_some());
    sim.accept(carol, &call);
    sim.run_until(1_000, "carol connected to the sfu", |s| s.devices[carol].stack.connected_to_sfu(&call));
    let mut users: Vec<String> = offers_to_sfu(&sim, &call).into_iter().map(|(u, _, _)| u).collect();
    users.sort();
    assert_eq!(users, vec!["alice", "bob", "carol"], "one offer each, all to the sfu");
    assert!(!sim.devices[alice].stack.connected_with(&call, "bob", "b1"), "no mesh connection left");
    assert_no_violations(&sim);
}

#[test]
fn a_device_whose_sfu_connection_failed_gets_a_fresh_route_and_reconnects() {
    let (mut sim, d) = setup_with_fresh_tokens(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 0);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sfu_call(&mut sim, alice, bob, carol);
    let first = started_tokens(&sim, bob);
    assert_eq!(first.len(), 1);
    sim.clear_media();
    sim.outputs.clear();

    // The SFU reports bob's connection failed: it is closed there, and bob gets a new route.
    let now = sim.now;
    sim.switchboard.sfu_participant_failed(now, &call, &user("bob"), &device("b1"));
    sim.run_until(1_000, "bob back on the sfu", |s| {
        started_tokens(s, bob).len() == 1 && s.devices[bob].stack.connected_to_sfu(&call)
    });
    let left = Output::SfuLeave { call_id: call.clone(), user: user("bob"), device: device("b1") };
    let leave_at = sim.outputs.iter().position(|o| *o == left);
    let leave_at = leave_at.unwrap_or_else(|| panic!("the failed connection is closed"));
    let offers: Vec<usize> = sim
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Output::SfuSignal { from_user, payload: MediaPayload::SdpOffer(_), .. } if from_user.as_str() == "bob"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(offers.len(), 1, "bob offers once more");
    assert!(leave_at < offers[0], "the old connection is gone before the new offer reaches the sfu");
    let commands = owned(sim.media(bob));
    assert!(
        matches!(commands[..], [MediaCommand::Stop { .. }, MediaCommand::Start { .. }, ..]),
        "{commands:?}"
    );
    let again = started_tokens(&sim, bob);
    assert_eq!(again.len(), 1);
    assert_ne!(again, first, "a fresh token");
    assert!(sim.media(alice).is_empty() && sim.media(carol).is_empty(), "nobody else restarts");

    // The SFU sees bob connect again: he stays, well past the recovery bound.
    let now = sim.now;
    sim.switchboard.sfu_participant_connected(now, &call, &user("bob"), &device("b1"));
    sim.run_for(i64::from(MEDIA_RECOVERY_MS) + 5_000);
    for &i in &[alice, bob, carol] {
        assert!(sim.ended(i, &call).is_none(), "{}: still in the call", sim.devices[i].name);
    }
    assert_no_violations(&sim);
}

#[test]
fn a_participant_whose_sfu_connection_does_not_come_back_is_removed() {
    let (mut sim, d) = setup_with_fresh_tokens(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 0);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sfu_call(&mut sim, alice, bob, carol);
    sim.clear_events();
    let failed_at = sim.now;
    sim.switchboard.sfu_participant_failed(failed_at, &call, &user("bob"), &device("b1"));
    // A second report (the reconnection failed too) does not move the deadline.
    sim.run_for(i64::from(MEDIA_RECOVERY_MS) / 2);
    let now = sim.now;
    sim.switchboard.sfu_participant_failed(now, &call, &user("bob"), &device("b1"));
    sim.run_for(i64::from(MEDIA_RECOVERY_MS) / 2 - 1_000);
    assert!(sim.ended(bob, &call).is_none(), "within the bound bob is still in");

    sim.run_until(3_000, "bob removed", |s| s.ended(bob, &call).is_some());
    assert!(sim.now - failed_at <= i64::from(MEDIA_RECOVERY_MS) + 1_000, "removed at the bound, not later");
    assert_eq!(sim.ended(bob, &call), Some(EndReason::NetworkError));
    for &i in &[alice, carol] {
        let left = sim.events(i).into_iter().any(|e| {
            matches!(e, ClientEvent::RemoteUserStateChanged { call_id, user_id, state: ParticipantState::Ended, reason: Some(EndReason::NetworkError) }
                if call_id == &call && user_id.as_str() == "bob")
        });
        assert!(left, "{}: bob left with NETWORK_ERROR", sim.devices[i].name);
        assert!(sim.ended(i, &call).is_none(), "{}: the call goes on", sim.devices[i].name);
    }
    assert!(
        sim.media(bob).last().is_some_and(|c| matches!(c, MediaCommand::Stop { .. })),
        "bob's media stops"
    );
    let removed = owned(sim.media(alice))
        .into_iter()
        .any(|c| matches!(c, MediaCommand::RemovePeer { user_id, .. } if user_id.as_str() == "bob"));
    assert!(removed, "alice drops bob");
    assert_no_violations(&sim);
}

#[test]
fn camera_off_and_on_pauses_and_resumes_forwarding_at_the_sfu() {
    let (mut sim, d) = setup_with_sfu(&[("alice", "a1"), ("bob", "b1"), ("carol", "c1")], 0);
    let (alice, bob, carol) = (d[0], d[1], d[2]);
    let call = sfu_call(&mut sim, alice, bob, carol);
    sim.outputs.clear();
    sim.clear_events();
    sim.set_camera(alice, false);
    sim.run_until(1_000, "bob sees the camera event", |s| {
        s.events(bob).iter().any(|e| matches!(e, ClientEvent::RemoteCameraStateChanged { .. }))
    });
    sim.set_camera(alice, true);
    sim.settle();
    let pauses: Vec<(String, MediaKind, bool)> = sim
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::SfuPause { call_id, user, device, kind, paused } if call_id == &call => {
                assert_eq!(device.as_str(), "a1");
                Some((user.to_string(), *kind, *paused))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        pauses,
        vec![("alice".into(), MediaKind::Video, true), ("alice".into(), MediaKind::Video, false)]
    );

    // A mesh call tells no SFU anything.
    let (mut sim, d) = setup_with_sfu(&[("alice", "a1"), ("bob", "b1")], 0);
    let mesh = sim.answered_call(d[0], d[1], "bob", MediaType::AudioVideo);
    sim.outputs.clear();
    sim.set_camera(d[0], false);
    sim.settle();
    assert!(!sim.outputs.iter().any(|o| matches!(o, Output::SfuPause { call_id, .. } if call_id == &mesh)));
}
