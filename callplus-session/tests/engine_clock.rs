//! The client engine's clock is any monotonic clock the driver has, not the wall clock: its
//! timers run on it, and the timestamps it puts in sessions are on the server's clock, so a
//! device whose clock is days off (or whose driver counts from its own start) neither drops
//! healthy connections nor reports wrong call times.
#![allow(clippy::expect_used)]

mod sim;

use callplus_session::client::{ClientEvent, DriverEvent};
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{EndReason, MediaType};
use sim::{Sim, user};

const DAY_MS: i64 = 24 * 3_600_000;

#[test]
fn devices_on_clocks_far_from_the_server_keep_their_calls_and_stamp_server_time() {
    let mut sim = Sim::new(SwitchboardConfig::default());
    let alice = sim.add_device("alice", "a1");
    let bob = sim.add_device("bob", "b1");
    // Alice's engine clock runs three days behind, Bob's a day ahead (say, milliseconds since
    // their process started, offset from the Unix epoch).
    sim.devices[alice].clock_offset_ms = -3 * DAY_MS;
    sim.devices[bob].clock_offset_ms = DAY_MS;
    sim.cut_and_reconnect(alice);
    sim.cut_and_reconnect(bob);
    sim.settle();

    let call = sim.answered_call(alice, bob, "bob", MediaType::Audio);
    // A minute of talk: heartbeats and liveness run on the devices' own clocks.
    sim.run_for(60_000);
    for idx in [alice, bob] {
        let stale = sim.devices[idx].driver_events.iter().any(|(_, e)| *e == DriverEvent::TransportStale);
        assert!(!stale, "device {idx} saw its connection as stale");
        assert!(sim.connected(idx, &call) && sim.ended(idx, &call).is_none());
    }

    // Bob's connect time in Alice's session is the server's moment, not Alice's clock.
    let started = sim.engine(alice).session(&call).and_then(|s| s.started_at_ms()).expect("started");
    let bob_connected = sim
        .engine(alice)
        .session(&call)
        .and_then(|s| s.participant(&user("bob")).and_then(|p| p.connected_at_ms))
        .expect("bob connected");
    assert!(
        (bob_connected - started).abs() < 100,
        "bob connected at {bob_connected}, call started at {started}"
    );

    sim.hangup(alice, &call);
    sim.run_until(1_000, "both ended", |s| s.ended(alice, &call).is_some() && s.ended(bob, &call).is_some());
    assert_eq!(sim.ended(bob, &call), Some(EndReason::RemoteHangup));
    let server_end =
        sim.all_records(&call).first().and_then(|r| r.call.ended_at_ms).expect("a record with the end time");
    for idx in [alice, bob] {
        let ended_at = sim.devices[idx]
            .events
            .iter()
            .find_map(|(_, e)| match e {
                ClientEvent::CallEnded { session, .. } if session.call_id() == &call => session.ended_at_ms(),
                _ => None,
            })
            .expect("an end time");
        assert!(
            (ended_at - server_end).abs() < 100,
            "device {idx}: ended at {ended_at}, server says {server_end}"
        );
    }
}
