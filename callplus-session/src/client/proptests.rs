//! Property test: arbitrary sequences of app commands, server frames built from arbitrary parts
//! and timeouts never panic the engine, and no event about a call follows its `CallEnded`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{T0, cid, engine, participant, uid};
use super::*;
use crate::error::{Code, Error};
use crate::model::ids::{CallId, DeviceId, TransactionId};
use crate::model::kinds::{
    CallState, CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaKind, MediaType, ParticipantState,
    RecordOrder,
};
use crate::model::message::{
    ClientBody, Event, MediaPayload, Response, ResponseBody, ServerBody, ServerFrame, Welcome,
};
use crate::model::snapshot::CallInfo;

const CALLS: [&str; 3] = ["c0", "c1", "c2"];
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const TXS: [&str; 2] = ["t0", "t1"];
/// A response `request_id` the harness replaces with the latest request id issued.
const LATEST: u64 = 999_999;

fn call_type() -> impl Strategy<Value = CallType> {
    prop_oneof![Just(CallType::Single), Just(CallType::Multi)]
}

fn media_type() -> impl Strategy<Value = MediaType> {
    prop_oneof![Just(MediaType::Audio), Just(MediaType::AudioVideo)]
}

fn pstate() -> impl Strategy<Value = ParticipantState> {
    prop_oneof![
        Just(ParticipantState::Incoming),
        Just(ParticipantState::Ringing),
        Just(ParticipantState::Connecting),
        Just(ParticipantState::OnCall),
        Just(ParticipantState::Ended),
    ]
}

fn reason() -> impl Strategy<Value = EndReason> {
    prop_oneof![
        Just(EndReason::Hangup),
        Just(EndReason::RemoteHangup),
        Just(EndReason::Reject),
        Just(EndReason::NetworkError),
        Just(EndReason::AcceptedAnotherCall),
        Just(EndReason::KickedOtherLogin),
    ]
}

fn call_id() -> impl Strategy<Value = CallId> {
    (0..CALLS.len()).prop_map(|i| cid(CALLS[i]))
}

fn user() -> impl Strategy<Value = crate::UserId> {
    (0..USERS.len()).prop_map(|i| uid(USERS[i]))
}

fn tx() -> impl Strategy<Value = TransactionId> {
    (0..TXS.len()).prop_map(|i| TransactionId::new(TXS[i]).unwrap())
}

fn call_info() -> impl Strategy<Value = CallInfo> {
    (
        call_id(),
        call_type(),
        media_type(),
        user(),
        prop::collection::vec((user(), pstate(), prop::option::of(reason())), 0..4),
        prop::bool::weighted(0.2),
        0u64..6,
        prop::option::of(0i64..10_000),
    )
        .prop_map(|(call_id, call_type, media_type, creator, parts, ended, version, started)| CallInfo {
            call_id,
            call_type,
            media_type,
            creator,
            participants: parts
                .into_iter()
                .map(|(u, s, r)| {
                    let mut p = participant(u.as_str(), s);
                    p.reason = r;
                    p
                })
                .collect(),
            created_at_ms: T0,
            started_at_ms: started.map(|s| T0 + s),
            first_frame_at_ms: None,
            ended_at_ms: ended.then_some(T0 + 1),
            version,
            extra: String::new(),
            ring_timeout_ms: 0,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (call_info(), user(), pstate()).prop_map(|(mut call, inviter, mine)| {
            // Mostly a real invitation of this user.
            if mine.is_ringing() {
                call.participants.push(participant("alice", mine));
            }
            Event::IncomingCall { call: call.into(), inviter, extra: String::new() }
        }),
        1 => (call_id(), user(), prop::collection::vec(user(), 0..3)).prop_map(|(call_id, inviter, invitees)| {
            Event::UsersInvited { call_id, inviter, invitees, version: 1 }
        }),
        4 => (call_id(), user(), pstate(), prop::option::of(reason()), 0u64..6).prop_map(
            |(call_id, user_id, state, reason, version)| Event::ParticipantChanged {
                call_id,
                user_id,
                state,
                reason,
                version,
                device_id: None,
            }
        ),
        1 => (call_id(), call_type()).prop_map(|(call_id, call_type)| Event::CallTypeChanged {
            call_id,
            call_type,
            version: 1
        }),
        1 => (call_id(), call_type()).prop_map(|(call_id, call_type)| Event::CallStarted {
            call_id,
            call_type,
            started_at_ms: T0,
            version: 1
        }),
        2 => (call_info(), reason()).prop_map(|(call, reason)| Event::CallEnded { call: call.into(), reason }),
        1 => (call_id(), user(), any::<bool>(), any::<bool>()).prop_map(|(call_id, user_id, video, disabled)| {
            let kind = if video { MediaKind::Video } else { MediaKind::Audio };
            Event::MediaStateChanged { call_id, user_id, kind, disabled }
        }),
        1 => (call_id(), user(), tx(), media_type()).prop_map(|(call_id, user_id, transaction_id, media_type)| {
            Event::ChangeMediaTypeRequested { call_id, user_id, transaction_id, media_type }
        }),
        1 => (call_id(), user(), tx(), media_type()).prop_map(|(call_id, user_id, transaction_id, media_type)| {
            Event::ChangeMediaTypeFinished {
                call_id,
                user_id,
                transaction_id,
                media_type,
                result: ChangeMediaTypeResult::Accepted,
                version: 1,
            }
        }),
        1 => call_id().prop_map(|call_id| Event::FirstFrame { call_id, at_ms: T0 }),
        1 => (call_id(), user()).prop_map(|(call_id, from_user)| Event::MediaSignal {
            call_id,
            from_user,
            from_device: DeviceId::new("d1").unwrap(),
            payload: MediaPayload::SdpOffer("v=0".into()),
        }),
        1 => (call_id(), user()).prop_map(|(call_id, user_id)| Event::DeliveryChanged {
            call_id,
            user_id,
            delivery: Delivery::Pushed,
            devices: vec![],
        }),
        1 => (reason(), prop::bool::weighted(0.2)).prop_map(|(reason, kick)| if kick {
            Event::Kicked { reason, message: String::new() }
        } else {
            Event::FirstFrame { call_id: cid("c0"), at_ms: T0 }
        }),
    ]
}

fn response_result() -> impl Strategy<Value = Result<ResponseBody, Error>> {
    prop_oneof![
        Just(Ok(ResponseBody::Empty)),
        call_info().prop_map(|call| Ok(ResponseBody::Call(call.into()))),
        call_info().prop_map(|call| Ok(ResponseBody::Started { call: call.into(), busy: vec![] })),
        tx().prop_map(|tx| Ok(ResponseBody::Transaction(tx))),
        Just(Ok(ResponseBody::Busy(vec![]))),
        prop_oneof![
            Just(Code::CallNotFound),
            Just(Code::NotInCall),
            Just(Code::Internal),
            Just(Code::TokenInvalid),
            Just(Code::ResumeRejected),
            Just(Code::TransactionIdInvalid),
        ]
        .prop_map(|code| Err(Error::from_code(code))),
    ]
}

fn body() -> impl Strategy<Value = ServerBody> {
    prop_oneof![
        2 => (any::<bool>(), 0usize..2, prop_oneof![4 => Just(0usize), 1 => 1usize..3], 0u64..8).prop_map(
            |(resumed, session, user, last)| ServerBody::Welcome(Welcome {
                session_id: format!("s{session}"),
                user_id: uid(USERS[user]),
                server_time_ms: T0,
                resumed,
                heartbeat_interval_ms: 5_000,
                liveness_timeout_ms: 20_000,
                ice_servers: vec![],
                last_received_seq: last,
            })
        ),
        1 => Just(ServerBody::Pong { server_time_ms: T0 }),
        6 => (prop_oneof![3 => Just(LATEST), 1 => 0u64..16], response_result()).prop_map(|(request_id, result)| ServerBody::Response(Response {
            request_id,
            result
        })),
        16 => event().prop_map(ServerBody::Event),
    ]
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Step {
    Api(u8, usize, usize, bool),
    /// A server frame: `None` takes the next in-order seq.
    Frame(Option<u64>, u64, ServerBody),
    /// Something plausible about a live call of the engine (picked at run time): kind, pick, user.
    Live(u8, usize, usize),
    Timeout(i64),
    Connected,
    Lost,
    Disconnect,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0u8..20, 0..CALLS.len(), 0..USERS.len() + 1, any::<bool>())
            .prop_map(|(op, c, u, b)| Step::Api(op, c, u, b)),
        24 => (prop_oneof![4 => Just(None), 1 => (0u64..10).prop_map(Some)], 0u64..8, body())
            .prop_map(|(seq, ack, body)| Step::Frame(seq, ack, body)),
        8 => (0u8..10, 0usize..4, 0..USERS.len()).prop_map(|(k, p, u)| Step::Live(k, p, u)),
        3 => prop_oneof![4 => 0i64..2_000, 1 => 0i64..15_000].prop_map(Step::Timeout),
        1 => Just(Step::Connected),
        1 => Just(Step::Lost),
        1 => prop::bool::weighted(0.3).prop_map(|d| if d { Step::Disconnect } else { Step::Timeout(1) }),
    ]
}

/// Runs one app command; returns the request id issued and whether it was a join.
fn api(
    e: &mut ClientEngine,
    now: i64,
    op: u8,
    c: usize,
    u: usize,
    flag: bool,
) -> (Option<RequestId>, Option<CallId>) {
    let call = cid(CALLS[c]);
    let users: Vec<&str> = match u {
        3 => vec!["bad id"],
        u => vec![USERS[u]],
    };
    let media = if flag { MediaType::AudioVideo } else { MediaType::Audio };
    let tx = TransactionId::new(TXS[c % TXS.len()]).unwrap();
    let result = match op {
        0 => e.start_call(now, &users, CallType::Single, media, CallOptions::default()),
        1 => e.start_call(now, &["bob", "carol"], CallType::Multi, media, CallOptions::default()),
        2 => e.accept(now, &call),
        3 => e.hangup(now, None, None),
        4 => e.hangup(now, Some(&call), None),
        5 => return (e.join_call(now, &call).ok(), Some(call)),
        6 => e.invite(now, &users, None, ""),
        7 => e.request_change_media_type(now, media),
        8 => e.cancel_change_media_type(now, &tx),
        9 => e.reply_change_media_type(now, &tx, flag),
        10 => e.set_camera_enabled(now, flag),
        11 => e.set_microphone_enabled(now, flag),
        12 => e.report_first_frame(now, &call),
        13 => e.send_media_signal(
            now,
            &call,
            &uid("bob"),
            &DeviceId::new("d1").unwrap(),
            MediaPayload::SdpAnswer("v=0".into()),
        ),
        14 => e.get_call(now, &call),
        15 => e.get_call_records(now, -1, if flag { 0 } else { 20 }, RecordOrder::Desc),
        16 => e.delete_call_records(now, vec![call]),
        17 => e.get_available_calls(now),
        18 => e.ringing(now, &call),
        _ => e.delete_all_call_records(now),
    };
    (result.ok(), None)
}

/// Builds a plausible input about a live call: an answer, a state change, an end.
fn live_step(
    e: &mut ClientEngine,
    now: i64,
    kind: u8,
    pick: usize,
    user: usize,
    latest: &mut RequestId,
) -> Option<ServerBody> {
    if kind >= 8 {
        // A call placed and answered at once by a well-behaved server.
        let id = e
            .start_call(now, &["bob"], CallType::Single, MediaType::AudioVideo, CallOptions::default())
            .ok()?;
        *latest = id;
        let call = CallInfo {
            call_id: cid(CALLS[pick % CALLS.len()]),
            call_type: CallType::Single,
            media_type: MediaType::AudioVideo,
            creator: uid("alice"),
            participants: vec![
                participant("alice", ParticipantState::OnCall),
                participant("bob", ParticipantState::Incoming),
            ],
            created_at_ms: T0,
            started_at_ms: None,
            first_frame_at_ms: None,
            ended_at_ms: None,
            version: 10,
            extra: String::new(),
            ring_timeout_ms: 0,
        };
        return Some(ServerBody::Response(Response {
            request_id: id,
            result: Ok(ResponseBody::Started { call: call.into(), busy: vec![] }),
        }));
    }
    let calls: Vec<CallSession> = e.calls().cloned().collect();
    let session = calls.get(pick % calls.len().max(1))?;
    let call_id = session.call_id().clone();
    let user_id = uid(USERS[user]);
    let snapshot = |state: ParticipantState| CallInfo {
        call_id: call_id.clone(),
        call_type: session.call_type(),
        media_type: session.media_type(),
        creator: session.creator().clone(),
        participants: USERS.iter().map(|u| participant(u, state)).collect(),
        created_at_ms: T0,
        started_at_ms: None,
        first_frame_at_ms: None,
        ended_at_ms: None,
        version: session.version() + 1,
        extra: String::new(),
        ring_timeout_ms: 0,
    };
    let event = match kind {
        0 => Event::ParticipantChanged {
            call_id,
            user_id,
            state: ParticipantState::OnCall,
            reason: None,
            version: 1,
            device_id: Some(DeviceId::new("peer-device").unwrap()),
        },
        1 => Event::ParticipantChanged {
            call_id,
            user_id,
            state: ParticipantState::Ended,
            reason: Some(EndReason::Hangup),
            version: 1,
            device_id: None,
        },
        2 => Event::CallEnded {
            call: snapshot(ParticipantState::Ended).into(),
            reason: EndReason::RemoteHangup,
        },
        3 => Event::ChangeMediaTypeRequested {
            call_id,
            user_id,
            transaction_id: TransactionId::new(TXS[user % TXS.len()]).unwrap(),
            media_type: MediaType::AudioVideo,
        },
        4 => {
            // Accepted, and answered by a well-behaved server.
            let id = e.accept(now, &call_id).ok()?;
            *latest = id;
            return Some(ServerBody::Response(Response {
                request_id: id,
                result: Ok(ResponseBody::Call(snapshot(ParticipantState::OnCall).into())),
            }));
        }
        5 => {
            if let Ok(id) = e.hangup(now, Some(&call_id), None) {
                *latest = id;
            }
            return None;
        }
        6 => {
            return Some(ServerBody::Response(Response {
                request_id: *latest,
                result: Ok(ResponseBody::Call(snapshot(ParticipantState::OnCall).into())),
            }));
        }
        _ => Event::CallStarted { call_id, call_type: session.call_type(), started_at_ms: T0, version: 1 },
    };
    Some(ServerBody::Event(event))
}

/// Checks the invariants on everything the engine put out since the last step.
struct Checker {
    ended: BTreeSet<CallId>,
    joins: BTreeMap<RequestId, CallId>,
    /// Calls whose media was started and not stopped.
    media: BTreeSet<CallId>,
}

impl Checker {
    fn drain(&mut self, e: &mut ClientEngine) -> Result<(), TestCaseError> {
        while let Some(frame) = e.poll_transmit() {
            match frame.body {
                ClientBody::Request(_) => prop_assert!(frame.seq > 0 && frame.request_id > 0, "{frame:?}"),
                _ => prop_assert!(frame.seq == 0 && frame.request_id == 0, "{frame:?}"),
            }
        }
        // A join's answer comes before the events of the call it opens.
        while let Some(event) = e.poll_driver_event() {
            if let DriverEvent::RequestCompleted { request_id, result: Ok(ResponseBody::Call(info)) } = &event
                && self.joins.get(request_id) == Some(&info.call_id)
            {
                self.ended.remove(&info.call_id);
            }
        }
        while let Some(event) = e.poll_event() {
            if let ClientEvent::ReceivedCall { session, .. } = &event {
                self.ended.remove(session.call_id());
            }
            // Whom a group call invited is told to those who left it too (they may join again).
            if let Some(id) = event.call_id()
                && !matches!(event, ClientEvent::RemoteUserInvited { .. })
            {
                prop_assert!(!self.ended.contains(id), "event about {id} after its CallEnded: {event:?}");
            }
            if let ClientEvent::CallEnded { session, .. } = &event {
                prop_assert_eq!(session.state(), CallState::Ended);
                self.ended.insert(session.call_id().clone());
            }
        }
        // Media only for calls connected on this device; every stop matches a start.
        while let Some(command) = e.poll_media() {
            match &command {
                MediaCommand::SetDevice { .. } => {}
                MediaCommand::Stop { call_id } => {
                    prop_assert!(self.media.remove(call_id), "stop without start: {command:?}");
                }
                other => {
                    let Some(id) = other.call_id() else { continue };
                    let state = e.session(id).map(CallSession::state);
                    prop_assert_eq!(
                        state,
                        Some(CallState::OnCall),
                        "media for a call not connected here: {:?}",
                        other
                    );
                    if matches!(other, MediaCommand::Start { .. }) {
                        prop_assert!(self.media.insert(id.clone()), "started twice: {other:?}");
                    } else {
                        prop_assert!(self.media.contains(id), "media before start: {other:?}");
                    }
                }
            }
        }
        if let Some(current) = e.current_call() {
            prop_assert!(current.state() != CallState::Ended);
        }
        for session in e.calls() {
            prop_assert!(!session.is_ended());
            prop_assert!(!self.ended.contains(session.call_id()), "{} is live but ended", session.call_id());
        }
        if let Some(t) = e.poll_timeout() {
            prop_assert!(t >= T0);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_inputs_never_panic_and_ended_calls_stay_silent(
        connect_first in any::<bool>(),
        steps in prop::collection::vec(step(), 0..80),
    ) {
        let mut e = engine();
        let mut now = T0;
        let mut next_seq = 1u64;
        let mut latest = 0;
        let mut checker = Checker { ended: BTreeSet::new(), joins: BTreeMap::new(), media: BTreeSet::new() };
        if connect_first {
            e.transport_connected(now);
            e.handle_frame(now, ServerFrame {
                seq: 0,
                ack: 0,
                body: ServerBody::Welcome(Welcome {
                    session_id: "s0".into(),
                    user_id: uid("alice"),
                    server_time_ms: T0,
                    resumed: false,
                    heartbeat_interval_ms: 5_000,
                    liveness_timeout_ms: 20_000,
                    ice_servers: vec![],
                    last_received_seq: 0,
                }),
            });
        }
        checker.drain(&mut e)?;
        for step in steps {
            match step {
                Step::Api(op, c, u, flag) => {
                    let (issued, joined) = api(&mut e, now, op, c, u, flag);
                    if let Some(id) = issued {
                        latest = id;
                        if let Some(call) = joined {
                            checker.joins.insert(id, call);
                        }
                    }
                }
                Step::Frame(seq, ack, mut body) => {
                    match &mut body {
                        ServerBody::Response(r) if r.request_id == LATEST => r.request_id = latest,
                        ServerBody::Welcome(w) if !w.resumed => next_seq = 1,
                        _ => {}
                    }
                    let seq = match (seq, &body) {
                        (Some(seq), _) => seq,
                        (None, ServerBody::Welcome(_) | ServerBody::Pong { .. }) => 0,
                        (None, _) => {
                            next_seq += 1;
                            next_seq - 1
                        }
                    };
                    e.handle_frame(now, ServerFrame { seq, ack, body });
                }
                Step::Live(kind, pick, user) => {
                    if let Some(body) = live_step(&mut e, now, kind, pick, user, &mut latest) {
                        next_seq += 1;
                        e.handle_frame(now, ServerFrame { seq: next_seq - 1, ack: 0, body });
                    }
                }
                Step::Timeout(dt) => {
                    now += dt;
                    e.handle_timeout(now);
                }
                Step::Connected => e.transport_connected(now),
                Step::Lost => e.transport_lost(now),
                Step::Disconnect => e.disconnect(now),
            }
            checker.drain(&mut e)?;
        }
    }
}
