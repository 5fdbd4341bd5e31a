//! The client engine fed arbitrary server frames (structured ones on a small pool of ids, and
//! raw decoded bytes) interleaved with every API call, transport events and clock jumps.
//!
//! Checked: no panic; the engine's documented event invariant: after `CallEnded` for a call,
//! no event about that call follows unless the user is in it again (a new `ReceivedCall`, or a
//! successful `join_call` / `accept`), but `RemoteUserInvited`: whom a group call invited is
//! told to those who left it too.
#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::Arbitrary;
use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_session::client::{
    CallOptions, ClientConfig, ClientEngine, ClientEvent, DriverEvent, MediaCommand, RequestId,
};
use callplus_session::wire::server_frame_from_wire;
use callplus_session::{
    CallId, CallInfo, CallRecord, CallState, CallSummary, CallType, ChangeMediaTypeResult, Code, Delivery,
    DeviceId, Direction, EndReason, Error, Event, MediaKind, MediaType, Participant, ParticipantState,
    RecordOrder, RecordPage, Response, ResponseBody, ServerBody, ServerFrame, TransactionId, UserId, Welcome,
};
use libfuzzer_sys::fuzz_target;

const ME: &str = "alice";
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const CALLS: [&str; 4] = ["call-0", "call-1", "call-2", "call-3"];
const TXS: [&str; 2] = ["tx-0", "tx-1"];
const START_MS: i64 = 1_800_000_000_000;
const CODES: [Code; 6] = [
    Code::ParamError,
    Code::SessionExist,
    Code::NotInCall,
    Code::CallNotFound,
    Code::Timeout,
    Code::CallEnded,
];

#[derive(Debug, Arbitrary)]
enum Op {
    TransportUp,
    TransportLost,
    Disconnect,
    Api(Api),
    Welcome { resumed: bool, other_user: bool, heartbeat_ms: u16, liveness_ms: u16, last_received: u8 },
    HelloRefused(u8),
    Respond { request: u8, seq: Option<u8>, outcome: Outcome },
    Event { seq: Option<u8>, event: Ev },
    Raw { bytes: Vec<u8> },
    Pong,
    Advance { ms: u32 },
}

#[derive(Debug, Arbitrary)]
enum Api {
    Start { callees: Vec<u8>, multi: bool, video: bool },
    Accept(u8),
    Hangup(Option<u8>),
    Ringing(u8),
    Join(u8),
    Invite(Vec<u8>),
    RequestChange(bool),
    CancelChange(u8),
    ReplyChange(u8, bool),
    Camera(bool),
    Microphone(bool),
    FirstFrame(u8),
    GetCall(u8),
    Records { sync_time: i64, count: u8, asc: bool },
    Delete(Vec<u8>),
    DeleteAll,
    Available,
}

#[derive(Debug, Arbitrary)]
enum Outcome {
    Empty,
    Error(u8),
    Started { call: Template },
    Call(Template),
    Busy(Vec<u8>),
    Transaction(u8),
    Records(Vec<Template>),
    Calls(Vec<Template>),
}

/// A call snapshot built from a few choices.
#[derive(Debug, Arbitrary)]
struct Template {
    call: u8,
    creator: u8,
    others: Vec<(u8, u8)>,
    multi: bool,
    video: bool,
    started: bool,
    ended: bool,
    version: u8,
}

#[derive(Debug, Arbitrary)]
enum Ev {
    Incoming { call: Template, inviter: u8 },
    Invited { call: u8, inviter: u8, invitees: Vec<u8>, version: u8 },
    Participant { call: u8, user: u8, state: u8, reason: Option<u8>, version: u8 },
    TypeChanged { call: u8, multi: bool, version: u8 },
    Started { call: u8, multi: bool, version: u8 },
    Ended { call: Template, reason: u8 },
    MediaState { call: u8, user: u8, video: bool, disabled: bool },
    ChangeRequested { call: u8, user: u8, tx: u8, video: bool },
    ChangeFinished { call: u8, user: u8, tx: u8, video: bool, result: u8, version: u8 },
    FirstFrame { call: u8 },
    Record { call: Template, reason: u8 },
    Summary { call: u8, reason: u8 },
    Delivery { call: u8, user: u8, delivery: u8 },
    Kicked { reason: u8 },
}

fn pick<T: Copy>(items: &[T], n: u8) -> T {
    items[usize::from(n) % items.len()]
}

fn user(n: u8) -> UserId {
    UserId::new(pick(&USERS, n)).expect("valid")
}

fn call_id(n: u8) -> CallId {
    CallId::new(pick(&CALLS, n)).expect("valid")
}

fn tx(n: u8) -> TransactionId {
    TransactionId::new(pick(&TXS, n)).expect("valid")
}

fn reason(n: u8) -> EndReason {
    EndReason::try_from(i32::from(n % 25) + 1).expect("valid")
}

fn state(n: u8) -> ParticipantState {
    ParticipantState::try_from(i32::from(n % 6) + 1).expect("valid")
}

fn media(video: bool) -> MediaType {
    if video { MediaType::AudioVideo } else { MediaType::Audio }
}

fn kind(multi: bool) -> CallType {
    if multi { CallType::Multi } else { CallType::Single }
}

fn participant(user_id: UserId, state: ParticipantState, at: i64) -> Participant {
    Participant {
        user_id,
        state,
        reason: (state == ParticipantState::Ended).then_some(EndReason::Hangup),
        inviter: None,
        invited_at_ms: at,
        connected_at_ms: None,
        ended_at_ms: None,
        devices: Vec::new(),
        delivery: Delivery::Delivered,
        camera_disabled: false,
        microphone_disabled: false,
        device_id: None,
    }
}

fn info(t: &Template, now: i64) -> CallInfo {
    let creator = user(t.creator);
    let mut participants = vec![participant(creator.clone(), ParticipantState::OnCall, now)];
    for &(u, s) in t.others.iter().take(4) {
        let u = user(u);
        if participants.iter().all(|p| p.user_id != u) {
            participants.push(participant(u, state(s), now));
        }
    }
    CallInfo {
        call_id: call_id(t.call),
        call_type: kind(t.multi),
        media_type: media(t.video),
        creator,
        participants,
        created_at_ms: now - 1000,
        started_at_ms: t.started.then_some(now - 500),
        first_frame_at_ms: None,
        ended_at_ms: t.ended.then_some(now),
        version: u64::from(t.version),
        extra: String::new(),
        ring_timeout_ms: 60_000,
    }
}

fn event(e: &Ev, now: i64) -> Event {
    match e {
        Ev::Incoming { call, inviter } => Event::IncomingCall {
            call: info(call, now).into(),
            inviter: user(*inviter),
            extra: String::new(),
        },
        Ev::Invited { call, inviter, invitees, version } => Event::UsersInvited {
            call_id: call_id(*call),
            inviter: user(*inviter),
            invitees: invitees.iter().take(4).map(|&u| user(u)).collect(),
            version: u64::from(*version),
        },
        Ev::Participant { call, user: u, state: s, reason: r, version } => Event::ParticipantChanged {
            call_id: call_id(*call),
            user_id: user(*u),
            state: state(*s),
            reason: r.map(reason),
            version: u64::from(*version),
            // The peer's device, so connected participants become media peers.
            device_id: DeviceId::new(&format!("{}-device", user(*u))).ok(),
        },
        Ev::TypeChanged { call, multi, version } => Event::CallTypeChanged {
            call_id: call_id(*call),
            call_type: kind(*multi),
            version: u64::from(*version),
        },
        Ev::Started { call, multi, version } => Event::CallStarted {
            call_id: call_id(*call),
            call_type: kind(*multi),
            started_at_ms: now,
            version: u64::from(*version),
        },
        Ev::Ended { call, reason: r } => {
            Event::CallEnded { call: info(call, now).into(), reason: reason(*r) }
        }
        Ev::MediaState { call, user: u, video, disabled } => Event::MediaStateChanged {
            call_id: call_id(*call),
            user_id: user(*u),
            kind: if *video { MediaKind::Video } else { MediaKind::Audio },
            disabled: *disabled,
        },
        Ev::ChangeRequested { call, user: u, tx: t, video } => Event::ChangeMediaTypeRequested {
            call_id: call_id(*call),
            user_id: user(*u),
            transaction_id: tx(*t),
            media_type: media(*video),
        },
        Ev::ChangeFinished { call, user: u, tx: t, video, result, version } => {
            Event::ChangeMediaTypeFinished {
                call_id: call_id(*call),
                user_id: user(*u),
                transaction_id: tx(*t),
                media_type: media(*video),
                result: ChangeMediaTypeResult::try_from(i32::from(result % 5) + 1).expect("valid"),
                version: u64::from(*version),
            }
        }
        Ev::FirstFrame { call } => Event::FirstFrame { call_id: call_id(*call), at_ms: now },
        Ev::Record { call, reason: r } => Event::CallRecord(CallRecord {
            owner: user(0),
            call: info(call, now).into(),
            inviter: None,
            end_reason: reason(*r),
            direction: Direction::Outgoing,
            duration_ms: 0,
            sync_time: now,
        }),
        Ev::Summary { call, reason: r } => Event::Summary(CallSummary {
            owner: user(0),
            call_id: call_id(*call),
            caller: user(0),
            peer: user(1),
            media_type: MediaType::Audio,
            created_at_ms: now - 1000,
            started_at_ms: None,
            ended_at_ms: now,
            duration_ms: 0,
            end_reason: reason(*r),
            direction: Direction::Outgoing,
        }),
        Ev::Delivery { call, user: u, delivery } => Event::DeliveryChanged {
            call_id: call_id(*call),
            user_id: user(*u),
            delivery: Delivery::try_from(i32::from(delivery % 4)).expect("valid"),
            devices: Vec::new(),
        },
        Ev::Kicked { reason: r } => Event::Kicked { reason: reason(*r), message: String::new() },
    }
}

fn outcome(o: &Outcome, now: i64) -> Result<ResponseBody, Error> {
    Ok(match o {
        Outcome::Empty => ResponseBody::Empty,
        Outcome::Error(n) => return Err(Error::from_code(pick(&CODES, *n))),
        Outcome::Started { call } => ResponseBody::Started { call: info(call, now).into(), busy: Vec::new() },
        Outcome::Call(t) => ResponseBody::Call(info(t, now).into()),
        Outcome::Busy(us) => ResponseBody::Busy(us.iter().take(4).map(|&u| user(u)).collect()),
        Outcome::Transaction(t) => ResponseBody::Transaction(tx(*t)),
        Outcome::Records(ts) => ResponseBody::Records(RecordPage {
            records: ts
                .iter()
                .take(4)
                .map(|t| CallRecord {
                    owner: user(0),
                    call: info(t, now).into(),
                    inviter: None,
                    end_reason: EndReason::Hangup,
                    direction: Direction::Incoming,
                    duration_ms: 0,
                    sync_time: now,
                })
                .collect(),
            has_more: false,
            sync_time: now,
        }),
        Outcome::Calls(ts) => ResponseBody::Calls(ts.iter().take(4).map(|t| info(t, now)).collect()),
    })
}

/// The harness's view: request ids sent, the server's seq counter, and the invariant's state.
#[derive(Default)]
struct Harness {
    requests: Vec<RequestId>,
    /// Requests that put this user (back) into a call: join and accept, by call.
    rejoins: HashMap<RequestId, CallId>,
    server_seq: u64,
    ended: HashSet<CallId>,
}

impl Harness {
    fn next_seq(&mut self, given: Option<u8>) -> u64 {
        match given {
            Some(s) => u64::from(s),
            None => {
                self.server_seq += 1;
                self.server_seq
            }
        }
    }

    fn drain(&mut self, engine: &mut ClientEngine) {
        while let Some(frame) = engine.poll_transmit() {
            if frame.request_id > 0 && self.requests.len() < 64 {
                self.requests.push(frame.request_id);
            }
        }
        while let Some(event) = engine.poll_driver_event() {
            if let DriverEvent::RequestCompleted { request_id, result: Ok(_) } = &event
                && let Some(call) = self.rejoins.remove(request_id)
            {
                self.ended.remove(&call);
            }
        }
        // Media only for calls connected on this device.
        while let Some(command) = engine.poll_media() {
            if let MediaCommand::Start { call_id, .. } | MediaCommand::AddPeer { call_id, .. } = &command {
                let state = engine.session(call_id).map(|s| s.state());
                assert_eq!(
                    state,
                    Some(CallState::OnCall),
                    "media for a call not connected here: {command:?}"
                );
            }
        }
        while let Some(event) = engine.poll_event() {
            match &event {
                ClientEvent::ReceivedCall { session, .. } => {
                    self.ended.remove(session.call_id());
                }
                ClientEvent::CallEnded { session, .. } => {
                    let rejoining = self.rejoins.values().any(|c| c == session.call_id());
                    assert!(
                        self.ended.insert(session.call_id().clone()) || rejoining,
                        "CallEnded twice for {} without rejoining",
                        session.call_id()
                    );
                    continue;
                }
                _ => {}
            }
            if let Some(id) = event.call_id()
                && !matches!(event, ClientEvent::RemoteUserInvited { .. })
            {
                // A join or accept in flight may bring the user back before its answer lands.
                let rejoining = self.rejoins.values().any(|c| c == id);
                assert!(rejoining || !self.ended.contains(id), "event after CallEnded: {event:?}");
                if rejoining {
                    self.ended.remove(id);
                }
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let Ok(device) = DeviceId::new("fuzz-device") else { return };
    let mut engine = ClientEngine::new(ClientConfig::new(device, "token"));
    let mut h = Harness::default();
    let mut now = START_MS;
    let me = UserId::new(ME).expect("valid");

    for op in ops.into_iter().take(256) {
        match op {
            Op::TransportUp => {
                h.server_seq = 0;
                engine.transport_connected(now);
            }
            Op::TransportLost => engine.transport_lost(now),
            Op::Disconnect => engine.disconnect(now),
            Op::Api(api) => {
                let result = match api {
                    Api::Start { callees, multi, video } => {
                        let callees: Vec<&str> = callees.iter().take(4).map(|&u| pick(&USERS, u)).collect();
                        engine.start_call(now, &callees, kind(multi), media(video), CallOptions::default())
                    }
                    Api::Accept(c) => {
                        let r = engine.accept(now, &call_id(c));
                        if let Ok(id) = r {
                            h.rejoins.insert(id, call_id(c));
                        }
                        r
                    }
                    Api::Hangup(c) => engine.hangup(now, c.map(call_id).as_ref(), None),
                    Api::Ringing(c) => engine.ringing(now, &call_id(c)),
                    Api::Join(c) => {
                        let r = engine.join_call(now, &call_id(c));
                        if let Ok(id) = r {
                            h.rejoins.insert(id, call_id(c));
                        }
                        r
                    }
                    Api::Invite(us) => {
                        let us: Vec<&str> = us.iter().take(4).map(|&u| pick(&USERS, u)).collect();
                        engine.invite(now, &us, None, String::new())
                    }
                    Api::RequestChange(video) => engine.request_change_media_type(now, media(video)),
                    Api::CancelChange(t) => engine.cancel_change_media_type(now, &tx(t)),
                    Api::ReplyChange(t, agree) => engine.reply_change_media_type(now, &tx(t), agree),
                    Api::Camera(on) => engine.set_camera_enabled(now, on),
                    Api::Microphone(on) => engine.set_microphone_enabled(now, on),
                    Api::FirstFrame(c) => engine.report_first_frame(now, &call_id(c)),
                    Api::GetCall(c) => engine.get_call(now, &call_id(c)),
                    Api::Records { sync_time, count, asc } => engine.get_call_records(
                        now,
                        sync_time,
                        u32::from(count),
                        if asc { RecordOrder::Asc } else { RecordOrder::Desc },
                    ),
                    Api::Delete(cs) => {
                        engine.delete_call_records(now, cs.iter().take(4).map(|&c| call_id(c)).collect())
                    }
                    Api::DeleteAll => engine.delete_all_call_records(now),
                    Api::Available => engine.get_available_calls(now),
                };
                let _ = result;
            }
            Op::Welcome { resumed, other_user, heartbeat_ms, liveness_ms, last_received } => {
                let welcome = Welcome {
                    session_id: "session-1".to_owned(),
                    user_id: if other_user { user(1) } else { me.clone() },
                    server_time_ms: now,
                    resumed,
                    heartbeat_interval_ms: u32::from(heartbeat_ms),
                    liveness_timeout_ms: u32::from(liveness_ms),
                    ice_servers: Vec::new(),
                    last_received_seq: u64::from(last_received),
                };
                engine.handle_frame(now, ServerFrame { seq: 0, ack: 0, body: ServerBody::Welcome(welcome) });
            }
            Op::HelloRefused(n) => {
                let body = ServerBody::Response(Response {
                    request_id: 0,
                    result: Err(Error::from_code(pick(&CODES, n))),
                });
                engine.handle_frame(now, ServerFrame { seq: 0, ack: 0, body });
            }
            Op::Respond { request, seq, outcome: o } => {
                let request_id = h.requests.get(usize::from(request)).copied().unwrap_or(u64::from(request));
                let seq = h.next_seq(seq);
                let body = ServerBody::Response(Response { request_id, result: outcome(&o, now) });
                engine.handle_frame(now, ServerFrame { seq, ack: 0, body });
            }
            Op::Event { seq, event: e } => {
                let seq = h.next_seq(seq);
                engine
                    .handle_frame(now, ServerFrame { seq, ack: 0, body: ServerBody::Event(event(&e, now)) });
            }
            Op::Raw { bytes } => {
                if let Ok(wire) = pb::ServerFrame::decode(bytes.as_slice()) {
                    let me = engine.user_id().cloned().unwrap_or_else(|| me.clone());
                    if let Ok(frame) = server_frame_from_wire(wire, &me) {
                        engine.handle_frame(now, frame);
                    }
                }
            }
            Op::Pong => {
                engine.handle_frame(
                    now,
                    ServerFrame { seq: 0, ack: 0, body: ServerBody::Pong { server_time_ms: now } },
                );
            }
            Op::Advance { ms } => {
                now += i64::from(ms % 120_000);
                if engine.poll_timeout().is_some_and(|t| t <= now) {
                    engine.handle_timeout(now);
                }
            }
        }
        h.drain(&mut engine);
    }
});
