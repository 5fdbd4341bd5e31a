//! Property tests: random sequences of API calls, network faults and time over the simulation,
//! with the invariants the call system must keep whatever happens.
//!
//! Invariants checked after every run:
//! 1. nothing panics (the switchboard, the engines and the wire conversions all see the run);
//! 2. terminal states absorb: after a device saw `CallEnded` for a call it sees no further
//!    event about that call, except the call's record and summary, which come after the end,
//!    and a new invitation into the same group call, which starts a new leg;
//! 3. each participant ends exactly once: at most one `CallEnded` per device and call, and
//!    exactly one record per participant of every call;
//! 4. records match what the participants saw: the reason in a user's record is the reason
//!    their device was told;
//! 5. every timer eventually fires or is cancelled: once every device has said goodbye and the
//!    resume window has passed, no call is live and the switchboard has no deadline left.

mod sim;

use std::collections::HashMap;

use callplus_session::client::{CallOptions, ClientEvent};
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{CallId, CallType, MediaType};
use proptest::prelude::*;
use sim::{Faults, Sim};

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];

#[derive(Debug, Clone)]
enum Op {
    Start { from: usize, to: Vec<usize>, multi: bool, video: bool },
    AcceptIncoming { who: usize },
    Hangup { who: usize },
    Invite { who: usize, whom: usize },
    ToggleCamera { who: usize, on: bool },
    ChangeMedia { who: usize, video: bool },
    ReplyMedia { who: usize, agree: bool },
    Ringing { who: usize },
    Cut { who: usize },
    Crash { who: usize },
    RestartApp { who: usize },
    Advance { ms: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..USERS.len();
    prop_oneof![
        3 => (who.clone(), prop::collection::vec(0..USERS.len(), 1..3), any::<bool>(), any::<bool>())
            .prop_map(|(from, to, multi, video)| Op::Start { from, to, multi, video }),
        3 => who.clone().prop_map(|who| Op::AcceptIncoming { who }),
        2 => who.clone().prop_map(|who| Op::Hangup { who }),
        1 => (who.clone(), who.clone()).prop_map(|(who, whom)| Op::Invite { who, whom }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, on)| Op::ToggleCamera { who, on }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, video)| Op::ChangeMedia { who, video }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, agree)| Op::ReplyMedia { who, agree }),
        1 => who.clone().prop_map(|who| Op::Ringing { who }),
        1 => who.clone().prop_map(|who| Op::Cut { who }),
        1 => who.clone().prop_map(|who| Op::Crash { who }),
        1 => who.clone().prop_map(|who| Op::RestartApp { who }),
        2 => (1i64..5_000).prop_map(|ms| Op::Advance { ms }),
        1 => (5_000i64..70_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn apply(sim: &mut Sim, op: &Op) {
    let now = sim.now;
    // API errors are legitimate outcomes here (busy, not in call, …); only panics are bugs.
    match op {
        Op::Start { from, to, multi, video } => {
            let callees: Vec<String> = to.iter().map(|i| USERS[*i].to_owned()).collect();
            let call_type = if *multi { CallType::Multi } else { CallType::Single };
            let media = if *video { MediaType::AudioVideo } else { MediaType::Audio };
            let _ = sim.engine(*from).start_call(now, &callees, call_type, media, CallOptions::default());
        }
        Op::AcceptIncoming { who } => {
            if let Some(call) = sim.incoming(*who) {
                let _ = sim.engine(*who).accept(now, &call);
            }
        }
        Op::Hangup { who } => {
            let _ = sim.engine(*who).hangup(now, None, None);
        }
        Op::Invite { who, whom } => {
            let _ = sim.engine(*who).invite(now, &[USERS[*whom].to_owned()], None, String::new());
        }
        Op::ToggleCamera { who, on } => {
            let _ = sim.engine(*who).set_camera_enabled(now, *on);
        }
        Op::ChangeMedia { who, video } => {
            let media = if *video { MediaType::AudioVideo } else { MediaType::Audio };
            let _ = sim.engine(*who).request_change_media_type(now, media);
        }
        Op::ReplyMedia { who, agree } => {
            if let Some(tx) = sim.media_request(*who) {
                let _ = sim.engine(*who).reply_change_media_type(now, &tx, *agree);
            }
        }
        Op::Ringing { who } => {
            if let Some(call) = sim.incoming(*who) {
                let _ = sim.engine(*who).ringing(now, &call);
            }
        }
        Op::Cut { who } => {
            if sim.devices[*who].online {
                sim.cut_and_reconnect(*who);
            }
        }
        Op::Crash { who } => sim.crash(*who),
        Op::RestartApp { who } => {
            if !sim.devices[*who].online {
                sim.restart_app(*who);
            }
        }
        Op::Advance { ms } => sim.run_for(*ms),
    }
    sim.run_for(50);
}

fn check_invariants(sim: &Sim, disconnected_at: i64) -> Result<(), TestCaseError> {
    // Devices are replaced by `restart_app`, but the event log of a slot carries on; a restarted
    // app may legitimately hear of a call again (it rings anew), so the absorb rule is checked
    // per engine lifetime: between restarts, which the log marks with a fresh Connecting state.
    for device in &sim.devices {
        let mut ended: HashMap<CallId, usize> = HashMap::new();
        for (_, event) in &device.events {
            if let ClientEvent::ConnectionStateChanged(
                callplus_session::client::ConnectionState::Connecting,
            ) = event
            {
                ended.clear();
            }
            // `call_id()` leaves out records and summaries, which legitimately follow the end;
            // so does whom a group call invited, told to those who left it (they may rejoin).
            if let Some(call) = event.call_id()
                && !matches!(event, ClientEvent::RemoteUserInvited { .. })
            {
                // A re-invitation after leaving is a new leg in the same call
                // (`invite` in docs/protocol.md#client-operations).
                if let ClientEvent::ReceivedCall { .. } = event {
                    ended.remove(call);
                }
                prop_assert!(
                    !ended.contains_key(call),
                    "{}: event after the call ended: {event:?}",
                    device.name
                );
                if let ClientEvent::CallEnded { .. } = event {
                    *ended.entry(call.clone()).or_default() += 1;
                }
            }
        }
    }
    // Exactly one record per participant per call.
    let mut per_call: HashMap<(CallId, String), usize> = HashMap::new();
    for (_, record) in &sim.storage.written {
        *per_call.entry((record.call.call_id.clone(), record.owner.to_string())).or_default() += 1;
        let participants = record.call.participants.len();
        prop_assert!(participants >= 2, "a record lists the participants: {record:?}");
    }
    for ((call, owner), n) in &per_call {
        prop_assert_eq!(*n, 1, "{} has {} records of {}", owner, n, call);
    }
    // Records match what the (single) device of each user was told, when it was told.
    for (_, record) in &sim.storage.written {
        let Some(device) = sim.devices.iter().find(|d| d.user == record.owner) else { continue };
        // Only the owner's last leg counts: a user who left a group call and was invited back
        // has one record, whose reason is the one of the last leg.
        let leg_start = record.call.participant(&record.owner).map_or(i64::MIN, |p| p.invited_at_ms);
        let told: Vec<_> = device
            .events
            .iter()
            // A device that disconnects ends its calls locally without waiting for the server's
            // verdict, which may differ when the peer hung up at the same moment: only what the
            // server told the device counts here.
            .filter(|(at, _)| *at < disconnected_at && *at >= leg_start)
            .filter_map(|(_, e)| match e {
                ClientEvent::CallEnded { session, reason } if *session.call_id() == record.call.call_id => {
                    Some(*reason)
                }
                _ => None,
            })
            .collect();
        if let Some(last) = told.last() {
            prop_assert!(
                *last == record.end_reason,
                "{}'s record says {:?}, the device was told {:?}",
                record.owner,
                record.end_reason,
                told
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_call_traffic_keeps_the_invariants(
        ops in prop::collection::vec(op(), 1..60),
        seed in any::<u64>(),
        jitter in 0i64..30,
        duplicate in 0.0f64..0.2,
    ) {
        let faults = Faults { latency_ms: 5, jitter_ms: jitter, duplicate };
        let mut sim = Sim::with_faults(SwitchboardConfig::default(), faults, seed);
        for user in USERS {
            sim.add_device(user, &format!("{user}-dev"));
        }
        sim.settle();
        prop_assert_eq!(sim.switchboard.connected_devices(), USERS.len());
        for op in &ops {
            apply(&mut sim, op);
        }
        // Wind down: everyone back online, hang everything up, say goodbye, let time pass.
        for idx in 0..sim.devices.len() {
            if !sim.devices[idx].online {
                sim.restart_app(idx);
            }
        }
        sim.run_for(1_000);
        for idx in 0..sim.devices.len() {
            let now = sim.now;
            for call in sim.known_calls(idx) {
                let _ = sim.engine(idx).hangup(now, Some(&call), None);
            }
        }
        sim.run_for(5_000);
        let disconnected_at = sim.now;
        for idx in 0..sim.devices.len() {
            let now = sim.now;
            sim.engine(idx).disconnect(now);
        }
        // Past the resume window and the ended-call retention, every timer must have fired.
        let config = SwitchboardConfig::default();
        sim.run_for(i64::from(config.resume_window_ms.max(config.ended_call_retention_ms)) + 60_000);
        check_invariants(&sim, disconnected_at)?;
        prop_assert_eq!(sim.switchboard.live_calls(), 0, "every call ended");
        prop_assert_eq!(sim.switchboard.connected_devices(), 0);
        prop_assert_eq!(sim.switchboard.poll_timeout(), None, "no timer left behind");
    }
}
