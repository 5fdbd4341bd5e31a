//! The client engine's media decisions, through the real switchboard and real engines over the
//! simulated network: the exact media commands each device gets in every flow, executed by a
//! simulated media stack that negotiates offer → answer over signalling.
//!
//! The rule checked throughout: a device gets media commands only for a call it is connected in,
//! and every pair of connected devices ends up with exactly one offerer and working media.

mod sim;

use callplus_session::client::{MediaCommand, MediaPeer};
use callplus_session::media_token::media_token;
use callplus_session::switchboard::{MediaRouter, Output, SwitchboardConfig};
use callplus_session::{CallId, CallType, DeviceId, MediaKind, MediaPayload, MediaType, SfuRoute};
use sim::{Sim, user};

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
