//! The server's switchboard fed arbitrary request sequences from several devices of several
//! users (in two apps): connects and resumes, well-formed requests on ids it handed out, raw
//! decoded-or-garbage frames, lost connections, clock jumps, storage answers, the operator's
//! ends, removals and sign-outs (the admin API), and a final shutdown. With an SFU (when the
//! setup says so) MULTI calls are routed through it, and the SFU's reports come in too: its
//! signals, participant connections failed or up again, against a media recovery bound
//! (`media_recovery_ms`) the setup picks, from 0 to about a minute.
//!
//! Checked: no panic; every connection sees its sequenced frames in order without gaps
//! (resumes replay exactly the missed ones); after shutdown no call is live.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_session::switchboard::{
    BusyPolicy, DevicePolicy, MediaRouter, Output, Query, QueryAnswer, QueryId, Switchboard,
    SwitchboardConfig,
};
use callplus_session::{
    AppKey, CallId, CallType, ClientBody, ClientFrame, Code, DeviceId, Error, Event, Hello, MediaKind,
    MediaPayload, MediaType, RecordOrder, RecordPage, Request, ResponseBody, Resume, ServerBody, StartCall,
    TransactionId, UserId,
};
use libfuzzer_sys::fuzz_target;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const APPS: [&str; 2] = ["app-one", "app-two"];
const CONNS: u64 = 8;
const START_MS: i64 = 1_800_000_000_000;

#[derive(Debug, Arbitrary)]
struct Setup {
    auto_reject_busy: bool,
    single_device: bool,
    small_queues: bool,
    ring_timeout_s: u8,
    /// Route MULTI calls through an SFU, those made with at most this many participants (mod 4)
    /// staying a mesh.
    sfu_mesh_max: Option<u8>,
    /// `media_recovery_ms`, in ms.
    media_recovery_ms: u16,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Connect {
        conn: u8,
        second_app: bool,
        user: u8,
        device: u8,
        resume: Option<(u8, u16)>,
    },
    Request {
        conn: u8,
        seq: Option<u16>,
        request: Req,
    },
    Ping {
        conn: u8,
        ack: Option<u16>,
    },
    Goodbye {
        conn: u8,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    Lost {
        conn: u8,
    },
    Advance {
        ms: u32,
    },
    Complete {
        query: u8,
        ok: bool,
    },
    Sfu {
        call: u8,
        user: u8,
        device: u8,
        report: SfuReport,
    },
    /// The operator ends a call, or removes a user from it (the admin API).
    EndCall {
        call: u8,
        user: Option<u8>,
        second_app: bool,
    },
    /// The operator signs a user out, every device or one (the admin API).
    SignOut {
        user: u8,
        device: Option<u8>,
        second_app: bool,
    },
    Shutdown,
}

/// What the SFU reports about a participant device of a call ([`Op::Sfu`]).
#[derive(Debug, Arbitrary)]
enum SfuReport {
    Signal,
    Failed,
    Connected,
}

#[derive(Debug, Arbitrary)]
enum Req {
    Start { callees: Vec<u8>, multi: bool, video: bool, ring_timeout_s: Option<u8>, extra: bool },
    Accept(u8),
    Hangup(u8),
    Ringing(u8),
    Join(u8),
    Invite(u8, Vec<u8>),
    ChangeMediaType(u8, bool),
    CancelChangeMediaType(u8, u8),
    ReplyChangeMediaType(u8, u8, bool),
    SetMediaState(u8, bool, bool),
    FirstFrame(u8),
    MediaSignal(u8, u8, u8),
    GetCall(u8),
    Records { sync_time: i64, count: u8, asc: bool },
    Delete(Vec<u8>),
    DeleteAll,
    Available,
}

#[derive(Debug, Arbitrary)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// What the harness knows: ids handed out, per-connection sequencing, pending queries.
#[derive(Default)]
struct World {
    calls: Vec<CallId>,
    transactions: Vec<TransactionId>,
    sessions: Vec<String>,
    queries: Vec<(QueryId, Query)>,
    /// Per connection: next seq to send, highest server seq seen, last sequenced seq received.
    next_seq: HashMap<u64, u64>,
    acked: HashMap<u64, u64>,
    last_rx: HashMap<u64, u64>,
}

fn user(n: u8) -> UserId {
    UserId::new(USERS[usize::from(n) % USERS.len()]).expect("valid")
}

fn users(ns: &[u8]) -> Vec<UserId> {
    ns.iter().take(6).map(|&n| user(n)).collect()
}

impl World {
    fn call(&self, n: u8) -> CallId {
        match self.calls.get(usize::from(n)) {
            Some(id) => id.clone(),
            None => CallId::new("no-such-call").expect("valid"),
        }
    }

    fn tx(&self, n: u8) -> TransactionId {
        match self.transactions.get(usize::from(n)) {
            Some(id) => id.clone(),
            None => TransactionId::new("no-such-tx").expect("valid"),
        }
    }

    fn request(&self, r: &Req) -> Request {
        match r {
            Req::Start { callees, multi, video, ring_timeout_s, extra } => Request::StartCall(StartCall {
                callees: users(callees),
                call_type: if *multi { CallType::Multi } else { CallType::Single },
                media_type: if *video { MediaType::AudioVideo } else { MediaType::Audio },
                push: None,
                extra: if *extra { "x".repeat(100) } else { String::new() },
                ring_timeout_ms: ring_timeout_s.map(|s| u32::from(s) * 1000),
            }),
            Req::Accept(c) => Request::Accept { call_id: self.call(*c) },
            Req::Hangup(c) => Request::Hangup { call_id: self.call(*c), push: None },
            Req::Ringing(c) => Request::Ringing { call_id: self.call(*c) },
            Req::Join(c) => Request::JoinCall { call_id: self.call(*c) },
            Req::Invite(c, us) => {
                Request::Invite { call_id: self.call(*c), users: users(us), push: None, extra: String::new() }
            }
            Req::ChangeMediaType(c, video) => Request::RequestChangeMediaType {
                call_id: self.call(*c),
                media_type: if *video { MediaType::AudioVideo } else { MediaType::Audio },
            },
            Req::CancelChangeMediaType(c, t) => {
                Request::CancelChangeMediaType { call_id: self.call(*c), transaction_id: self.tx(*t) }
            }
            Req::ReplyChangeMediaType(c, t, agree) => Request::ReplyChangeMediaType {
                call_id: self.call(*c),
                transaction_id: self.tx(*t),
                agree: *agree,
            },
            Req::SetMediaState(c, video, disabled) => Request::SetMediaState {
                call_id: self.call(*c),
                kind: if *video { MediaKind::Video } else { MediaKind::Audio },
                disabled: *disabled,
            },
            Req::FirstFrame(c) => Request::ReportFirstFrame { call_id: self.call(*c) },
            Req::MediaSignal(c, u, d) => Request::MediaSignal {
                call_id: self.call(*c),
                to_user: user(*u),
                to_device: device(*d),
                payload: MediaPayload::SdpOffer("v=0".to_owned()),
            },
            Req::GetCall(c) => Request::GetCall { call_id: self.call(*c) },
            Req::Records { sync_time, count, asc } => Request::GetCallRecords {
                sync_time: *sync_time,
                count: u32::from(*count),
                order: if *asc { RecordOrder::Asc } else { RecordOrder::Desc },
            },
            Req::Delete(cs) => {
                Request::DeleteCallRecords { call_ids: cs.iter().take(8).map(|&c| self.call(c)).collect() }
            }
            Req::DeleteAll => Request::DeleteAllCallRecords,
            Req::Available => Request::GetAvailableCalls,
        }
    }

    fn remember(&mut self, body: &ServerBody) {
        let mut call = |id: &CallId| {
            if !self.calls.contains(id) && self.calls.len() < 32 {
                self.calls.push(id.clone());
            }
        };
        match body {
            ServerBody::Welcome(w) => {
                if !self.sessions.contains(&w.session_id) && self.sessions.len() < 32 {
                    self.sessions.push(w.session_id.clone());
                }
            }
            ServerBody::Response(r) => match &r.result {
                Ok(ResponseBody::Started { call: info, .. } | ResponseBody::Call(info)) => {
                    call(&info.call_id)
                }
                Ok(ResponseBody::Transaction(tx)) if self.transactions.len() < 32 => {
                    self.transactions.push(tx.clone());
                }
                _ => {}
            },
            ServerBody::Event(e) => {
                if let Some(id) = e.call_id() {
                    call(id);
                }
                if let Event::ChangeMediaTypeRequested { transaction_id, .. } = e
                    && self.transactions.len() < 32
                {
                    self.transactions.push(transaction_id.clone());
                }
            }
            ServerBody::Pong { .. } => {}
        }
    }
}

fn device(n: u8) -> DeviceId {
    DeviceId::new(&format!("dev-{}", n % 3)).expect("valid")
}

/// Drains the switchboard's outputs, checking the per-connection ordering of sequenced frames.
fn drain(sb: &mut Switchboard, world: &mut World) {
    while let Some(output) = sb.poll_output() {
        match output {
            Output::Transmit { conn, frame } => {
                if frame.seq > 0 {
                    if let Some(&last) = world.last_rx.get(&conn) {
                        assert_eq!(
                            frame.seq,
                            last + 1,
                            "connection {conn}: sequenced frames must arrive in order without gaps"
                        );
                    }
                    world.last_rx.insert(conn, frame.seq);
                    let acked = world.acked.entry(conn).or_default();
                    *acked = (*acked).max(frame.seq);
                }
                world.remember(&frame.body);
            }
            Output::Close { conn } => {
                world.next_seq.remove(&conn);
                world.last_rx.remove(&conn);
            }
            Output::Query { id, query, .. } if world.queries.len() < 64 => {
                world.queries.push((id, query));
            }
            Output::SaveCall { call, .. } => {
                world.remember(&ServerBody::Response(callplus_session::Response {
                    request_id: 0,
                    result: Ok(ResponseBody::Call(call)),
                }))
            }
            _ => {}
        }
    }
}

fn send(
    sb: &mut Switchboard,
    world: &mut World,
    now: i64,
    conn: u64,
    seq: Option<u64>,
    request_id: u64,
    body: ClientBody,
) {
    let ack = world.acked.get(&conn).copied().unwrap_or(0);
    let seq = match seq {
        Some(seq) => seq,
        None if matches!(body, ClientBody::Request(_)) => {
            let next = world.next_seq.entry(conn).or_insert(1);
            *next += 1;
            *next - 1
        }
        None => 0,
    };
    sb.handle_frame(now, conn, ClientFrame { seq, ack, request_id, body });
}

fuzz_target!(|input: Input| {
    let Input { setup, ops } = input;
    let mut config = SwitchboardConfig {
        busy_policy: if setup.auto_reject_busy { BusyPolicy::AutoReject } else { BusyPolicy::RingBusy },
        device_policy: if setup.single_device {
            DevicePolicy::SingleDevice
        } else {
            DevicePolicy::MultiDevice
        },
        ring_timeout_ms: u32::from(setup.ring_timeout_s) * 1000,
        media_recovery_ms: u32::from(setup.media_recovery_ms),
        ..SwitchboardConfig::default()
    };
    if setup.small_queues {
        config.max_unacked_frames = 8;
        config.requests_per_second = 2;
        config.request_burst = 4;
        config.max_audio_participants = 3;
        config.max_video_participants = 2;
    }
    let mut sb = Switchboard::new(config);
    if let Some(mesh_max) = setup.sfu_mesh_max {
        sb.set_media_router(MediaRouter {
            sfu_user: UserId::new("sfu").expect("valid"),
            sfu_device: DeviceId::new("sfu-1").expect("valid"),
            mesh_max: usize::from(mesh_max % 4),
            sign: Box::new(|call, user, device| format!("token-{call}-{user}-{device}")),
        });
    }
    let mut world = World::default();
    let mut now = START_MS;
    let mut request_id = 0u64;

    for op in ops.into_iter().take(256) {
        match op {
            Op::Connect { conn, second_app, user: u, device: d, resume } => {
                let conn = u64::from(conn) % CONNS;
                let resume = resume.and_then(|(s, last)| {
                    world
                        .sessions
                        .get(usize::from(s))
                        .map(|id| Resume { session_id: id.clone(), last_received_seq: u64::from(last) })
                });
                let last = resume.as_ref().map(|r| r.last_received_seq);
                let hello = Hello {
                    token: String::new(),
                    device_id: device(d),
                    resume,
                    client_version: "fuzz".to_owned(),
                };
                let app = AppKey::new(APPS[usize::from(second_app)]).expect("valid");
                world.next_seq.insert(conn, 1);
                world.acked.insert(conn, last.unwrap_or(0));
                world.last_rx.remove(&conn);
                sb.connect(now, conn, app, user(u), hello);
            }
            Op::Request { conn, seq, request } => {
                request_id += 1;
                let body = ClientBody::Request(world.request(&request));
                send(&mut sb, &mut world, now, u64::from(conn) % CONNS, seq.map(u64::from), request_id, body);
            }
            Op::Ping { conn, ack } => {
                let conn = u64::from(conn) % CONNS;
                if let Some(ack) = ack {
                    world.acked.insert(conn, u64::from(ack));
                }
                send(&mut sb, &mut world, now, conn, None, 0, ClientBody::Ping);
            }
            Op::Goodbye { conn } => {
                send(&mut sb, &mut world, now, u64::from(conn) % CONNS, None, 0, ClientBody::Goodbye)
            }
            Op::Raw { conn, bytes } => {
                let conn = u64::from(conn) % CONNS;
                if let Ok(wire) = pb::ClientFrame::decode(bytes.as_slice()) {
                    match ClientFrame::try_from(wire) {
                        Ok(frame) => sb.handle_frame(now, conn, frame),
                        Err(error) => sb.handle_invalid_frame(now, conn, error),
                    }
                }
            }
            Op::Lost { conn } => {
                let conn = u64::from(conn) % CONNS;
                world.last_rx.remove(&conn);
                sb.connection_lost(now, conn);
            }
            Op::Advance { ms } => {
                now += i64::from(ms % 200_000);
                if sb.poll_timeout().is_some_and(|t| t <= now) {
                    sb.handle_timeout(now);
                }
            }
            Op::Complete { query, ok } => {
                if !world.queries.is_empty() {
                    let (id, q) = world.queries.remove(usize::from(query) % world.queries.len());
                    let result = if !ok {
                        Err(Error::new(Code::Internal, "storage failed"))
                    } else if matches!(q, Query::Records { .. }) {
                        Ok(QueryAnswer::Records(RecordPage::default()))
                    } else if matches!(q, Query::OfflineEvents) {
                        Ok(QueryAnswer::OfflineEvents(Vec::new()))
                    } else {
                        Ok(QueryAnswer::Deleted)
                    };
                    sb.complete_query(now, id, result);
                }
            }
            Op::Sfu { call, user: u, device: d, report } => {
                let (call, user, device) = (world.call(call), user(u), device(d));
                match report {
                    SfuReport::Signal => {
                        let payload = MediaPayload::SdpAnswer("v=0".to_owned());
                        sb.sfu_signal(now, &call, &user, &device, payload);
                    }
                    SfuReport::Failed => sb.sfu_participant_failed(now, &call, &user, &device),
                    SfuReport::Connected => sb.sfu_participant_connected(now, &call, &user, &device),
                }
            }
            Op::EndCall { call, user: u, second_app } => {
                let app = AppKey::new(APPS[usize::from(second_app)]).expect("valid");
                let _ = sb.end_call_by_server(now, &app, &world.call(call), u.map(user).as_ref());
            }
            Op::SignOut { user: u, device: d, second_app } => {
                let app = AppKey::new(APPS[usize::from(second_app)]).expect("valid");
                let _ = sb.sign_out_by_server(now, &app, &user(u), d.map(device).as_ref());
            }
            Op::Shutdown => sb.shutdown(now),
        }
        drain(&mut sb, &mut world);
    }

    sb.shutdown(now);
    drain(&mut sb, &mut world);
    // Timers that fire after shutdown must not revive anything.
    now += 3_600_000;
    sb.handle_timeout(now);
    drain(&mut sb, &mut world);
    assert_eq!(sb.live_calls(), 0, "shutdown ends every call");
});
