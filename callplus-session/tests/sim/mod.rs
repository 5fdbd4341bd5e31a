//! A deterministic simulation of one switchboard, many client engines and the network between
//! them, in the style of quinn's test `Pair`: a virtual clock jumps straight to the next thing
//! that happens, so a 60 s ring timeout takes microseconds and no test ever sleeps.
//!
//! Frames cross the simulated network encoded as protobuf bytes, exactly as on a real
//! connection, so the wire conversions are exercised on every step. The network can delay,
//! duplicate and reorder frames, and cut (partition) a device's connection; a cut connection is
//! noticed by both ends and the device reconnects with the envelope's resume logic.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cluster;
pub mod media;
pub mod ops;
pub mod raw;
pub mod storage;

use std::collections::{BTreeMap, HashMap};

use callplus_proto::prost::Message;
use callplus_proto::v1 as pb;
use callplus_session::client::{ClientConfig, ClientEngine, ClientEvent, DriverEvent, MediaCommand};
use callplus_session::switchboard::{ConnId, NodeOutput, Output, Switchboard, SwitchboardConfig};
use callplus_session::wire::{server_frame_from_wire, server_frame_to_vec};
use callplus_session::{AppKey, ClientBody, ClientFrame, DeviceId, MediaPayload, ServerFrame, UserId};

use storage::SimStorage;

/// The start of simulated time (2026-01-01T00:00:00Z), so timestamps look like real ones.
pub const T0: i64 = 1_767_225_600_000;

/// A small deterministic PRNG (xorshift64*), enough to pick faults reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() % 1_000_000) < (p * 1_000_000.0) as u64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// How bad the simulated network is.
///
/// A connection is a stream (gRPC over TCP, or a WebSocket): whatever the delay, frames on one
/// connection arrive in the order they were sent. Reordering happens between connections, when a
/// device reconnects while frames of the old connection are still on their way, and inside the
/// link layer's own tests (`link.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// One-way latency, ms.
    pub latency_ms: i64,
    /// Extra random delay per frame, 0..jitter_ms.
    pub jitter_ms: i64,
    /// Probability that a frame is delivered twice (as a sender replaying it would).
    pub duplicate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { latency_ms: 5, jitter_ms: 0, duplicate: 0.0 }
    }
}

/// Which way a frame travels.
#[derive(Debug, Clone)]
enum Flight {
    ToServer { conn: ConnId, bytes: Vec<u8> },
    ToClient { client: usize, conn: ConnId, bytes: Vec<u8> },
}

/// One simulated device.
pub struct Device {
    pub name: String,
    pub app: AppKey,
    pub user: UserId,
    pub engine: ClientEngine,
    /// The connection it is on, if any.
    pub conn: Option<ConnId>,
    /// Whether the device is switched on (a crashed or partitioned device does not reconnect).
    pub online: bool,
    /// Everything the engine told the app, with the time.
    pub events: Vec<(i64, ClientEvent)>,
    /// Everything the engine told the driver (request outcomes, stale transports), with the time.
    pub driver_events: Vec<(i64, DriverEvent)>,
    /// Every media command the engine gave, with the time.
    pub media: Vec<(i64, MediaCommand)>,
    /// The simulated media stack that executes those commands.
    pub stack: media::SimMediaStack,
    /// Whether a Hello on the current connection has been authenticated.
    hello_seen: bool,
    /// The device's engine clock minus simulated time: a driver may feed its engine any
    /// monotonic clock, not the wall clock (0 unless a test says otherwise).
    pub clock_offset_ms: i64,
    /// Index in `driver_events` where the current engine's life began (request ids restart with it).
    pub epoch: usize,
}

/// The simulated world.
pub struct Sim {
    pub now: i64,
    pub switchboard: Switchboard,
    pub devices: Vec<Device>,
    pub storage: SimStorage,
    pub faults: Faults,
    pub rng: Rng,
    flights: BTreeMap<(i64, u64), Flight>,
    flight_seq: u64,
    /// Latest delivery time scheduled per connection and direction, to keep each stream in order.
    stream_tail: HashMap<(ConnId, bool), i64>,
    next_conn: ConnId,
    conn_owner: HashMap<ConnId, usize>,
    /// Every output the switchboard produced, for assertions.
    pub outputs: Vec<Output>,
    /// Work across nodes is carried by a simulated deployment (`cluster::Cluster`); without
    /// one, a node of several finds no in-call mark of another node (nobody else is there).
    pub routed: bool,
}

/// The app every simulated device belongs to unless a test says otherwise.
pub fn default_app() -> AppKey {
    AppKey::new("app_sim").unwrap_or_else(|e| panic!("{e}"))
}

pub fn user(s: &str) -> UserId {
    UserId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

impl Sim {
    pub fn new(config: SwitchboardConfig) -> Self {
        Sim::with_faults(config, Faults::default(), 1)
    }

    pub fn with_faults(config: SwitchboardConfig, faults: Faults, seed: u64) -> Self {
        Sim {
            now: T0,
            switchboard: Switchboard::new(config),
            devices: Vec::new(),
            storage: SimStorage::default(),
            faults,
            rng: Rng::new(seed),
            flights: BTreeMap::new(),
            flight_seq: 0,
            stream_tail: HashMap::new(),
            next_conn: 1,
            conn_owner: HashMap::new(),
            outputs: Vec::new(),
            routed: false,
        }
    }

    /// Adds a device of `user` (in the default app) and connects it; returns its index.
    pub fn add_device(&mut self, user_name: &str, device_name: &str) -> usize {
        self.add_device_in(default_app(), user_name, device_name)
    }

    pub fn add_device_in(&mut self, app: AppKey, user_name: &str, device_name: &str) -> usize {
        let config = ClientConfig {
            device_id: DeviceId::new(device_name).unwrap_or_else(|e| panic!("{e}")),
            // The simulation trusts the token: it is the user id (the network layer checks real ones).
            token: user_name.to_owned(),
            client_version: "sim".to_owned(),
            request_timeout_ms: 10_000,
            default_heartbeat_interval_ms: 5_000,
        };
        self.devices.push(Device {
            name: device_name.to_owned(),
            app,
            user: user(user_name),
            engine: ClientEngine::new(config),
            conn: None,
            online: true,
            events: Vec::new(),
            driver_events: Vec::new(),
            media: Vec::new(),
            stack: media::SimMediaStack::default(),
            clock_offset_ms: 0,
            hello_seen: false,
            epoch: 0,
        });
        let idx = self.devices.len() - 1;
        self.open_connection(idx);
        idx
    }

    /// Adds a device that is switched off (an offline user); `power_on` connects it later.
    pub fn add_offline_device(&mut self, user_name: &str, device_name: &str) -> usize {
        let idx = self.add_device(user_name, device_name);
        self.crash(idx);
        idx
    }

    /// The engine clock of device `idx` now.
    pub fn device_now(&self, idx: usize) -> i64 {
        self.now + self.devices[idx].clock_offset_ms
    }

    fn open_connection(&mut self, idx: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conn_owner.insert(conn, idx);
        let now = self.device_now(idx);
        let device = &mut self.devices[idx];
        device.conn = Some(conn);
        device.hello_seen = false;
        device.engine.transport_connected(now);
    }

    /// Cuts the device's connection: frames in flight are lost; both ends notice.
    pub fn cut(&mut self, idx: usize) {
        let Some(conn) = self.devices[idx].conn.take() else { return };
        self.flights.retain(|_, f| match f {
            Flight::ToServer { conn: c, .. } | Flight::ToClient { conn: c, .. } => *c != conn,
        });
        self.conn_owner.remove(&conn);
        let now = self.now;
        self.switchboard.connection_lost(now, conn);
        let device_now = self.device_now(idx);
        self.devices[idx].engine.transport_lost(device_now);
    }

    /// Cuts the connection and reconnects at once (a TCP reset followed by a resume).
    pub fn cut_and_reconnect(&mut self, idx: usize) {
        self.cut(idx);
        self.open_connection(idx);
    }

    /// The app dies without a goodbye: the server only notices by silence (liveness).
    pub fn crash(&mut self, idx: usize) {
        let Some(conn) = self.devices[idx].conn.take() else { return };
        self.flights.retain(|_, f| match f {
            Flight::ToServer { conn: c, .. } | Flight::ToClient { conn: c, .. } => *c != conn,
        });
        self.conn_owner.remove(&conn);
        self.devices[idx].online = false;
        // The server side of a dead TCP connection often does not notice at all; tell it nothing.
    }

    /// A crashed device's app starts again: a brand-new engine (no session to resume).
    pub fn restart_app(&mut self, idx: usize) {
        let device = &self.devices[idx];
        let config = ClientConfig {
            device_id: DeviceId::new(&device.name).unwrap_or_else(|e| panic!("{e}")),
            token: device.user.to_string(),
            client_version: "sim".to_owned(),
            request_timeout_ms: 10_000,
            default_heartbeat_interval_ms: 5_000,
        };
        self.devices[idx].engine = ClientEngine::new(config);
        self.devices[idx].epoch = self.devices[idx].driver_events.len();
        // The app's process died: its media stack is gone with it.
        self.devices[idx].stack = media::SimMediaStack::default();
        self.devices[idx].online = true;
        self.open_connection(idx);
    }

    /// The server process is replaced by a fresh one on the same storage (after a shutdown):
    /// every connection and every session is gone.
    pub fn replace_server(&mut self, config: SwitchboardConfig) {
        self.flights.clear();
        self.conn_owner.clear();
        for device in &mut self.devices {
            device.conn = None;
        }
        self.switchboard = Switchboard::new(config);
    }

    /// What the driver does after [`DriverEvent::TransportStale`] (once its backoff is over):
    /// a new connection on the same engine.
    pub fn reconnect(&mut self, idx: usize) {
        self.open_connection(idx);
    }

    /// The device comes back on the same engine (reconnect and resume).
    pub fn power_on(&mut self, idx: usize) {
        self.devices[idx].online = true;
        let now = self.device_now(idx);
        self.devices[idx].engine.transport_lost(now);
        self.open_connection(idx);
    }

    fn send(&mut self, at: i64, flight: Flight) {
        let jitter =
            if self.faults.jitter_ms > 0 { self.rng.below(self.faults.jitter_ms as u64) as i64 } else { 0 };
        let stream = match &flight {
            Flight::ToServer { conn, .. } => (*conn, true),
            Flight::ToClient { conn, .. } => (*conn, false),
        };
        let tail = self.stream_tail.entry(stream).or_insert(i64::MIN);
        let deliver = (at + self.faults.latency_ms + jitter).max(*tail);
        *tail = deliver;
        let dup = self.rng.chance(self.faults.duplicate);
        self.flight_seq += 1;
        self.flights.insert((deliver, self.flight_seq), flight.clone());
        if dup {
            self.flight_seq += 1;
            self.flights.insert((deliver, self.flight_seq), flight);
        }
    }

    /// Moves every pending output of every engine into the network (or storage).
    fn flush(&mut self) {
        loop {
            let mut progressed = false;
            for idx in 0..self.devices.len() {
                while let Some(frame) = self.devices[idx].engine.poll_transmit() {
                    progressed = true;
                    if let Some(conn) = self.devices[idx].conn {
                        let bytes = pb::ClientFrame::from(&frame).encode_to_vec();
                        self.send(self.now, Flight::ToServer { conn, bytes });
                    }
                }
                while let Some(event) = self.devices[idx].engine.poll_event() {
                    progressed = true;
                    self.devices[idx].events.push((self.now, event));
                }
                while let Some(event) = self.devices[idx].engine.poll_driver_event() {
                    progressed = true;
                    self.devices[idx].driver_events.push((self.now, event));
                }
                while let Some(command) = self.devices[idx].engine.poll_media() {
                    progressed = true;
                    let now = self.device_now(idx);
                    let device = &mut self.devices[idx];
                    device.media.push((now, command.clone()));
                    device.stack.execute(now, &mut device.engine, command);
                }
            }
            while let Some(output) = self.switchboard.poll_output() {
                progressed = true;
                self.handle_output(output);
            }
            if !progressed {
                break;
            }
        }
    }

    fn handle_output(&mut self, output: Output) {
        match &output {
            Output::Transmit { conn, frame } => {
                if let Some(&client) = self.conn_owner.get(conn) {
                    // As the server does: straight from the domain frame.
                    let bytes = server_frame_to_vec(frame.seq, frame.ack, &frame.body);
                    let at = self.now;
                    self.send(at, Flight::ToClient { client, conn: *conn, bytes });
                }
            }
            Output::Close { conn } => {
                if let Some(client) = self.conn_owner.remove(conn) {
                    // Frames already sent on it still arrive (the server closes after writing).
                    let _ = client;
                }
            }
            Output::Query { id, app, user, query } => {
                let answer = self.storage.run_query(app, user, query);
                let (id, now) = (*id, self.now);
                self.switchboard.complete_query(now, id, answer);
            }
            Output::SfuSignal { call_id, from_user, from_device, payload: MediaPayload::SdpOffer(_) } => {
                // A simulated SFU: answers every offer at once.
                let answer = MediaPayload::SdpAnswer("sfu answer".to_owned());
                let now = self.now;
                self.switchboard.sfu_signal(now, call_id, from_user, from_device, answer);
            }
            Output::Node(NodeOutput::CheckBusy { id, .. }) if !self.routed => {
                let (id, now) = (*id, self.now);
                self.switchboard.complete_busy(now, id, Vec::new());
            }
            other => self.storage.apply(other),
        }
        self.outputs.push(output);
    }

    fn deliver(&mut self, flight: Flight) {
        let now = self.now;
        match flight {
            Flight::ToServer { conn, bytes } => {
                let Some(&idx) = self.conn_owner.get(&conn) else { return };
                let decoded = match pb::ClientFrame::decode(bytes.as_slice()) {
                    Ok(frame) => frame,
                    Err(e) => panic!("the simulation encoded an undecodable client frame: {e}"),
                };
                match ClientFrame::try_from(decoded) {
                    Ok(frame) => {
                        if let ClientBody::Hello(hello) = &frame.body {
                            let device = &mut self.devices[idx];
                            if !device.hello_seen {
                                device.hello_seen = true;
                                let app = device.app.clone();
                                let user = device.user.clone();
                                self.switchboard.connect(now, conn, app, user, hello.clone());
                                return;
                            }
                        }
                        self.switchboard.handle_frame(now, conn, frame);
                    }
                    Err(error) => self.switchboard.handle_invalid_frame(now, conn, error),
                }
            }
            Flight::ToClient { client, conn, bytes } => {
                let device = &mut self.devices[client];
                if device.conn != Some(conn) {
                    return;
                }
                let decoded = match pb::ServerFrame::decode(bytes.as_slice()) {
                    Ok(frame) => frame,
                    Err(e) => panic!("the switchboard produced an undecodable frame: {e}"),
                };
                let frame: ServerFrame = match server_frame_from_wire(decoded, &device.user) {
                    Ok(frame) => frame,
                    Err(e) => panic!("the switchboard produced an invalid frame: {e}"),
                };
                let device_now = now + device.clock_offset_ms;
                device.engine.handle_frame(device_now, frame);
            }
        }
    }

    /// The earliest time anything wants to happen.
    fn next_wakeup(&self) -> Option<i64> {
        let mut next = self.flights.keys().next().map(|(t, _)| *t);
        let mut consider = |t: Option<i64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: i64| n.min(t)));
            }
        };
        consider(self.switchboard.poll_timeout());
        for device in &self.devices {
            if device.online {
                consider(device.engine.poll_timeout().map(|t| t - device.clock_offset_ms));
            }
        }
        next
    }

    /// Runs one step: flush outputs, then advance the clock to the next event and process it.
    /// Returns false when nothing is scheduled before `deadline`.
    pub fn step(&mut self, deadline: i64) -> bool {
        self.flush();
        let Some(next) = self.next_wakeup() else { return false };
        if next > deadline {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        while let Some((&(t, s), _)) = self.flights.iter().next() {
            if t > now {
                break;
            }
            if let Some(flight) = self.flights.remove(&(t, s)) {
                self.deliver(flight);
            }
            self.flush();
        }
        if self.switchboard.poll_timeout().is_some_and(|t| t <= now) {
            self.switchboard.handle_timeout(now);
        }
        for idx in 0..self.devices.len() {
            let device_now = self.device_now(idx);
            if self.devices[idx].online
                && self.devices[idx].engine.poll_timeout().is_some_and(|t| t <= device_now)
            {
                self.devices[idx].engine.handle_timeout(device_now);
            }
        }
        self.flush();
        true
    }

    /// Runs until the network is quiet and no timer is due within `ms` (heartbeats keep
    /// running, so this stops at the horizon rather than at "idle").
    pub fn run_for(&mut self, ms: i64) {
        let deadline = self.now + ms;
        while self.step(deadline) {}
        self.now = self.now.max(deadline);
        self.flush();
    }

    /// Runs until `done` holds, for at most `max_ms` of simulated time; panics if it never does.
    pub fn run_until(&mut self, max_ms: i64, what: &str, mut done: impl FnMut(&Sim) -> bool) {
        let deadline = self.now + max_ms;
        loop {
            self.flush();
            if done(self) {
                return;
            }
            if !self.step(deadline) {
                self.flush();
                if done(self) {
                    return;
                }
                panic!("simulation: {what} did not happen within {max_ms} ms (now {})", self.now - T0);
            }
        }
    }

    /// Lets in-flight frames land (a few round trips) without reaching any long timer.
    pub fn settle(&mut self) {
        self.run_for(200);
    }

    pub fn device(&mut self, idx: usize) -> &mut Device {
        &mut self.devices[idx]
    }

    pub fn engine(&mut self, idx: usize) -> &mut ClientEngine {
        &mut self.devices[idx].engine
    }

    /// Events of a device, without times.
    pub fn events(&self, idx: usize) -> Vec<&ClientEvent> {
        self.devices[idx].events.iter().map(|(_, e)| e).collect()
    }

    /// Forgets the events collected so far for every device.
    pub fn clear_events(&mut self) {
        for device in &mut self.devices {
            device.events.clear();
        }
    }

    /// Media commands a device got, without times.
    pub fn media(&self, idx: usize) -> Vec<&MediaCommand> {
        self.devices[idx].media.iter().map(|(_, c)| c).collect()
    }

    /// Forgets the media commands collected so far for every device.
    pub fn clear_media(&mut self) {
        for device in &mut self.devices {
            device.media.clear();
        }
    }
}
