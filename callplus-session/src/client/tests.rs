//! Unit tests of the client engine, driven with hand-made server frames.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::error::Code;
use crate::model::ids::{CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{
    CallState, CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaKind, MediaType, ParticipantState,
    RecordOrder,
};
use crate::model::message::{
    ClientBody, ClientFrame, Event, Request, Response, ResponseBody, ServerBody, ServerFrame, Welcome,
};
use crate::model::snapshot::{CallInfo, Participant};

pub(super) const T0: i64 = 1_700_000_000_000;

pub(super) fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub(super) fn cid(s: &str) -> CallId {
    CallId::new(s).unwrap()
}

pub(super) fn engine() -> ClientEngine {
    ClientEngine::new(ClientConfig::new(DeviceId::new("dev-a").unwrap(), "tok"))
}

pub(super) fn welcome(session: &str, user: &str, resumed: bool, last_received_seq: u64) -> ServerFrame {
    ServerFrame {
        seq: 0,
        ack: 0,
        body: ServerBody::Welcome(Welcome {
            session_id: session.into(),
            user_id: uid(user),
            server_time_ms: T0,
            resumed,
            heartbeat_interval_ms: 5_000,
            liveness_timeout_ms: 20_000,
            ice_servers: vec![],
            last_received_seq,
        }),
    }
}

fn resp(seq: u64, request_id: u64, result: Result<ResponseBody, crate::Error>) -> ServerFrame {
    ServerFrame { seq, ack: 0, body: ServerBody::Response(Response { request_id, result }) }
}

fn ev(seq: u64, event: Event) -> ServerFrame {
    ServerFrame { seq, ack: 0, body: ServerBody::Event(event) }
}

pub(super) fn participant(user: &str, state: ParticipantState) -> Participant {
    Participant {
        user_id: uid(user),
        state,
        reason: None,
        inviter: None,
        invited_at_ms: T0,
        connected_at_ms: None,
        ended_at_ms: None,
        devices: vec![],
        delivery: Delivery::Delivered,
        camera_disabled: false,
        microphone_disabled: false,
        device_id: None,
    }
}

pub(super) fn info(
    id: &str,
    call_type: CallType,
    media: MediaType,
    creator: &str,
    parts: &[(&str, ParticipantState)],
) -> CallInfo {
    CallInfo {
        call_id: cid(id),
        call_type,
        media_type: media,
        creator: uid(creator),
        participants: parts.iter().map(|(u, s)| participant(u, *s)).collect(),
        created_at_ms: T0,
        started_at_ms: None,
        first_frame_at_ms: None,
        ended_at_ms: None,
        version: 1,
        extra: String::new(),
        ring_timeout_ms: 60_000,
    }
}

fn changed(id: &str, user: &str, state: ParticipantState, version: u64) -> Event {
    Event::ParticipantChanged {
        call_id: cid(id),
        user_id: uid(user),
        state,
        reason: None,
        version,
        device_id: None,
    }
}

fn events(e: &mut ClientEngine) -> Vec<ClientEvent> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn transmits(e: &mut ClientEngine) -> Vec<ClientFrame> {
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

/// An engine connected as alice.
fn connected() -> ClientEngine {
    let mut e = engine();
    e.transport_connected(T0);
    let _ = transmits(&mut e);
    e.handle_frame(T0, welcome("s1", "alice", false, 0));
    let _ = events(&mut e);
    e
}

fn code<T: std::fmt::Debug>(r: Result<T, crate::Error>) -> Code {
    r.unwrap_err().code
}

/// Drains the driver's queue (request outcomes, stale transports).
fn driver(e: &mut ClientEngine) -> Vec<DriverEvent> {
    std::iter::from_fn(|| e.poll_driver_event()).collect()
}

fn completed(events: &[DriverEvent], id: RequestId) -> Option<Result<ResponseBody, crate::Error>> {
    events.iter().find_map(|ev| match ev {
        DriverEvent::RequestCompleted { request_id, result } if *request_id == id => Some(result.clone()),
        _ => None,
    })
}

fn ended_reason(events: &[ClientEvent], id: &str) -> Option<EndReason> {
    events.iter().find_map(|ev| match ev {
        ClientEvent::CallEnded { session, reason } if session.call_id().as_str() == id => Some(*reason),
        _ => None,
    })
}

/// alice starts a SINGLE audio call to bob, answered with call `c1` at server seq `seq`.
fn start_single(e: &mut ClientEngine, seq: u64) -> RequestId {
    let rid = e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).unwrap();
    let _ = transmits(e);
    let call = info(
        "c1",
        CallType::Single,
        MediaType::Audio,
        "alice",
        &[("alice", ParticipantState::OnCall), ("bob", ParticipantState::Incoming)],
    );
    e.handle_frame(T0, resp(seq, rid, Ok(ResponseBody::Started { call: call.into(), busy: vec![] })));
    rid
}

/// bob calls alice: IncomingCall for `id` at server seq `seq`.
fn incoming(e: &mut ClientEngine, seq: u64, id: &str, media: MediaType) {
    let call = info(
        id,
        CallType::Single,
        media,
        "bob",
        &[("bob", ParticipantState::OnCall), ("alice", ParticipantState::Incoming)],
    );
    e.handle_frame(
        T0,
        ev(seq, Event::IncomingCall { call: call.into(), inviter: uid("bob"), extra: "hi".into() }),
    );
}

/// alice in an accepted call `c9` with bob (seq 1 IncomingCall, seq 2 Accept response).
fn on_call(e: &mut ClientEngine, media: MediaType) {
    incoming(e, 1, "c9", media);
    let rid = e.accept(T0, &cid("c9")).unwrap();
    let call = info(
        "c9",
        CallType::Single,
        media,
        "bob",
        &[("bob", ParticipantState::OnCall), ("alice", ParticipantState::OnCall)],
    );
    e.handle_frame(T0, resp(2, rid, Ok(ResponseBody::Call(call.into()))));
    let _ = transmits(e);
    let _ = events(e);
}

#[test]
fn validation_codes() {
    let mut idle = engine();
    let opts = CallOptions::default;
    assert_eq!(
        code(idle.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, opts())),
        Code::NotConnected
    );
    idle.transport_connected(T0);
    assert_eq!(code(idle.get_available_calls(T0)), Code::NotConnected, "no Welcome yet");

    let mut e = connected();
    let empty: [&str; 0] = [];
    assert_eq!(
        code(e.start_call(T0, &empty, CallType::Single, MediaType::Audio, opts())),
        Code::UserListInvalid
    );
    assert_eq!(
        code(e.start_call(T0, &["bob", "carol"], CallType::Single, MediaType::Audio, opts())),
        Code::SingleCallNotSupportMultiPerson
    );
    assert_eq!(
        code(e.start_call(T0, &["b b"], CallType::Single, MediaType::Audio, opts())),
        Code::ParamError
    );
    assert_eq!(
        code(e.start_call(T0, &["alice"], CallType::Single, MediaType::Audio, opts())),
        Code::UserListInvalid
    );
    assert_eq!(
        code(e.start_call(T0, &["bob", "bob"], CallType::Multi, MediaType::Audio, opts())),
        Code::UserListInvalid
    );
    let big = CallOptions { extra: "x".repeat(5000), ..CallOptions::default() };
    assert_eq!(code(e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, big)), Code::ParamError);

    // No current call.
    assert_eq!(code(e.hangup(T0, None, None)), Code::NotInCall);
    assert_eq!(code(e.invite(T0, &["carol"], None, "")), Code::NotInCall);
    assert_eq!(code(e.set_camera_enabled(T0, false)), Code::NotInCall);
    assert_eq!(code(e.set_microphone_enabled(T0, false)), Code::NotInCall);
    assert_eq!(code(e.request_change_media_type(T0, MediaType::AudioVideo)), Code::NotInCall);
    assert_eq!(code(e.accept(T0, &cid("nope"))), Code::CallIdInvalid);
    assert_eq!(code(e.hangup(T0, Some(&cid("nope")), None)), Code::CallIdInvalid);
    assert_eq!(code(e.ringing(T0, &cid("nope"))), Code::CallIdInvalid);

    // Records.
    assert_eq!(code(e.get_call_records(T0, -1, 0, RecordOrder::Desc)), Code::ParamError);
    assert_eq!(code(e.get_call_records(T0, -1, 101, RecordOrder::Desc)), Code::ParamError);
    assert!(e.get_call_records(T0, -1, 100, RecordOrder::Asc).is_ok());
    assert_eq!(code(e.delete_call_records(T0, vec![])), Code::ParamError);

    // A start in flight already claims the current slot.
    e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, opts()).unwrap();
    assert_eq!(
        code(e.start_call(T0, &["carol"], CallType::Single, MediaType::Audio, opts())),
        Code::SessionExist
    );
    assert_eq!(code(e.join_call(T0, &cid("c7"))), Code::SessionExist);
}

#[test]
fn validation_codes_in_a_call() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let opts = CallOptions::default;
    assert_eq!(
        code(e.start_call(T0, &["carol"], CallType::Single, MediaType::Audio, opts())),
        Code::SessionExist
    );
    assert_eq!(code(e.set_camera_enabled(T0, true)), Code::NotVideoCall);
    assert!(e.set_camera_enabled(T0, false).is_ok(), "turning the camera off is always accepted");
    assert!(e.set_microphone_enabled(T0, false).is_ok());
    assert_eq!(code(e.request_change_media_type(T0, MediaType::Audio)), Code::MediaTypeInvalid);
    let tx = TransactionId::new("tx1").unwrap();
    assert_eq!(code(e.cancel_change_media_type(T0, &tx)), Code::TransactionIdInvalid);
    assert_eq!(code(e.reply_change_media_type(T0, &tx, true)), Code::TransactionIdInvalid);
    assert_eq!(code(e.accept(T0, &cid("c9"))), Code::InvalidState, "already answered");
    assert_eq!(code(e.invite(T0, &[] as &[&str], None, "")), Code::UserListInvalid);

    // The call becomes MULTI: no media type change any more.
    e.handle_frame(
        T0,
        ev(3, Event::CallTypeChanged { call_id: cid("c9"), call_type: CallType::Multi, version: 3 }),
    );
    assert_eq!(code(e.request_change_media_type(T0, MediaType::AudioVideo)), Code::InvalidState);

    // Ended calls answer NotInCall.
    let call = info("c9", CallType::Multi, MediaType::Audio, "bob", &[]);
    e.handle_frame(T0, ev(4, Event::CallEnded { call: call.into(), reason: EndReason::RemoteHangup }));
    assert_eq!(code(e.hangup(T0, Some(&cid("c9")), None)), Code::NotInCall);
    assert_eq!(code(e.accept(T0, &cid("c9"))), Code::NotInCall);
    assert_eq!(code(e.report_first_frame(T0, &cid("c9"))), Code::NotInCall);
}

#[test]
fn hello_welcome_handshake_and_numbering() {
    let mut e = engine();
    assert_eq!(e.connection_state(), ConnectionState::Idle);
    e.transport_connected(T0);
    assert_eq!(events(&mut e), vec![ClientEvent::ConnectionStateChanged(ConnectionState::Connecting)]);
    let tx = transmits(&mut e);
    assert_eq!(tx.len(), 1);
    let ClientBody::Hello(hello) = &tx[0].body else { panic!("expected Hello, got {:?}", tx[0]) };
    assert_eq!((tx[0].seq, tx[0].ack, tx[0].request_id), (0, 0, 0));
    assert_eq!(hello.token, "tok");
    assert_eq!(hello.device_id.as_str(), "dev-a");
    assert!(hello.resume.is_none());

    e.handle_frame(T0, welcome("s1", "alice", false, 0));
    assert_eq!(events(&mut e), vec![ClientEvent::ConnectionStateChanged(ConnectionState::Connected)]);
    assert_eq!(e.user_id(), Some(&uid("alice")));

    let r1 = e.get_available_calls(T0).unwrap();
    let r2 = e.delete_all_call_records(T0).unwrap();
    assert_ne!(r1, r2);
    let tx = transmits(&mut e);
    assert_eq!(tx.iter().map(|f| (f.seq, f.request_id)).collect::<Vec<_>>(), vec![(1, r1), (2, r2)]);
    assert_eq!(tx[0].body, ClientBody::Request(Request::GetAvailableCalls));

    // Server frames are acked in every frame sent.
    e.handle_frame(T0, resp(1, r1, Ok(ResponseBody::Calls(vec![]))));
    e.get_available_calls(T0).unwrap();
    assert_eq!(transmits(&mut e)[0].ack, 1);
}

#[test]
fn responses_are_matched_by_request_id() {
    let mut e = connected();
    let a = e.get_call_records(T0, -1, 10, RecordOrder::Desc).unwrap();
    let b = e.get_available_calls(T0).unwrap();
    e.handle_frame(T0, resp(1, b, Ok(ResponseBody::Calls(vec![]))));
    e.handle_frame(T0, resp(2, 9_999, Ok(ResponseBody::Empty)));
    e.handle_frame(T0, resp(3, a, Err(crate::Error::from_code(Code::RateLimited))));
    let drv = driver(&mut e);
    assert_eq!(drv.len(), 2, "{drv:?}");
    assert_eq!(completed(&drv, b), Some(Ok(ResponseBody::Calls(vec![]))));
    assert_eq!(completed(&drv, a).map(|r| r.unwrap_err().code), Some(Code::RateLimited));
}

#[test]
fn outgoing_call_lifecycle() {
    let mut e = connected();
    let rid = start_single(&mut e, 1);
    let _ = events(&mut e);
    let drv = driver(&mut e);
    assert!(matches!(completed(&drv, rid), Some(Ok(ResponseBody::Started { .. }))));
    let s = e.current_call().unwrap();
    assert_eq!((s.call_id().as_str(), s.state(), s.is_outgoing()), ("c1", CallState::Dialing, true));
    assert_eq!(s.inviter(), None);

    e.handle_frame(
        T0,
        ev(
            2,
            Event::DeliveryChanged {
                call_id: cid("c1"),
                user_id: uid("bob"),
                delivery: Delivery::Ringing,
                devices: vec![],
            },
        ),
    );
    e.handle_frame(T0 + 10, ev(3, changed("c1", "bob", ParticipantState::Ringing, 2)));
    let evs = events(&mut e);
    assert!(matches!(&evs[0], ClientEvent::DeliveryChanged { delivery: Delivery::Ringing, .. }), "{evs:?}");
    assert!(matches!(&evs[1], ClientEvent::RemoteUserStateChanged { state: ParticipantState::Ringing, .. }));
    assert_eq!(e.current_call().unwrap().state(), CallState::Dialing);

    e.handle_frame(T0 + 20, ev(4, changed("c1", "bob", ParticipantState::OnCall, 3)));
    e.handle_frame(
        T0 + 20,
        ev(
            5,
            Event::CallStarted {
                call_id: cid("c1"),
                call_type: CallType::Single,
                started_at_ms: T0 + 20,
                version: 3,
            },
        ),
    );
    let evs = events(&mut e);
    assert!(matches!(&evs[0], ClientEvent::RemoteUserStateChanged { state: ParticipantState::OnCall, .. }));
    let ClientEvent::CallConnected { session } = &evs[1] else { panic!("{evs:?}") };
    assert_eq!(session.state(), CallState::OnCall);
    assert_eq!(
        evs[2],
        ClientEvent::CallStartTime {
            call_id: cid("c1"),
            call_type: CallType::Single,
            started_at_ms: T0 + 20
        }
    );
    assert_eq!(e.current_call().unwrap().duration_ms(T0 + 1_020), 1_000);

    let hang = e.hangup(T0 + 1_000, None, None).unwrap();
    let tx = transmits(&mut e);
    assert!(
        matches!(&tx[0].body, ClientBody::Request(Request::Hangup { call_id, .. }) if call_id.as_str() == "c1")
    );
    e.handle_frame(T0 + 1_010, resp(6, hang, Ok(ResponseBody::Empty)));
    let evs = events(&mut e);
    let drv = driver(&mut e);
    assert!(completed(&drv, hang).is_some());
    assert_eq!(ended_reason(&evs, "c1"), Some(EndReason::Hangup));
    assert!(e.current_call().is_none());

    // The server's CallEnded and anything else about c1 come too late: no event.
    let mut last = info("c1", CallType::Single, MediaType::Audio, "alice", &[]);
    last.ended_at_ms = Some(T0 + 1_005);
    e.handle_frame(T0, ev(7, Event::CallEnded { call: last.into(), reason: EndReason::Hangup }));
    e.handle_frame(T0, ev(8, changed("c1", "bob", ParticipantState::Ended, 5)));
    assert_eq!(events(&mut e), vec![]);
    // A new call may start at once.
    assert!(e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).is_ok());
}

#[test]
fn cancel_before_answer_and_remote_end() {
    let mut e = connected();
    start_single(&mut e, 1);
    let hang = e.hangup(T0, None, None).unwrap();
    e.handle_frame(T0, resp(2, hang, Ok(ResponseBody::Empty)));
    assert_eq!(ended_reason(&events(&mut e), "c1"), Some(EndReason::Cancel));

    let mut e = connected();
    start_single(&mut e, 1);
    let mut last = info("c1", CallType::Single, MediaType::Audio, "alice", &[]);
    last.ended_at_ms = Some(T0 + 5);
    e.handle_frame(T0 + 9, ev(2, Event::CallEnded { call: last.into(), reason: EndReason::RemoteReject }));
    let evs = events(&mut e);
    let Some(ClientEvent::CallEnded { session, reason }) = evs.last() else { panic!("{evs:?}") };
    assert_eq!(
        (*reason, session.state(), session.ended_at_ms()),
        (EndReason::RemoteReject, CallState::Ended, Some(T0 + 5))
    );
    assert!(e.current_call().is_none());
}

#[test]
fn incoming_call_accept() {
    let mut e = connected();
    incoming(&mut e, 1, "c2", MediaType::AudioVideo);
    let evs = events(&mut e);
    let ClientEvent::ReceivedCall { session, inviter, extra } = &evs[0] else { panic!("{evs:?}") };
    assert_eq!((session.state(), inviter.as_str(), extra.as_str()), (CallState::Incoming, "bob", "hi"));
    assert_eq!(session.inviter(), Some(&uid("bob")));
    assert_eq!(e.incoming_calls().count(), 1);
    assert!(e.current_call().is_none());

    e.ringing(T0, &cid("c2")).unwrap();
    let rid = e.accept(T0, &cid("c2")).unwrap();
    let tx = transmits(&mut e);
    assert!(matches!(&tx[0].body, ClientBody::Request(Request::Ringing { .. })));
    assert!(
        matches!(&tx[1].body, ClientBody::Request(Request::Accept { call_id }) if call_id.as_str() == "c2")
    );

    let call = info(
        "c2",
        CallType::Single,
        MediaType::AudioVideo,
        "bob",
        &[("bob", ParticipantState::OnCall), ("alice", ParticipantState::Connecting)],
    );
    e.handle_frame(T0, resp(2, rid, Ok(ResponseBody::Call(call.into()))));
    let _ = events(&mut e);
    let drv = driver(&mut e);
    assert!(completed(&drv, rid).is_some());
    assert_eq!(e.current_call().unwrap().state(), CallState::Connecting);
    assert_eq!(e.incoming_calls().count(), 0);

    e.handle_frame(T0, ev(3, changed("c2", "alice", ParticipantState::OnCall, 3)));
    let evs = events(&mut e);
    assert!(
        matches!(&evs[..], [ClientEvent::CallConnected { session }] if session.state() == CallState::OnCall),
        "{evs:?}"
    );

    // Camera off, confirmed by the server.
    let cam = e.set_camera_enabled(T0, false).unwrap();
    assert!(e.current_call().unwrap().camera_enabled());
    e.handle_frame(T0, resp(4, cam, Ok(ResponseBody::Empty)));
    assert!(!e.current_call().unwrap().camera_enabled());
    e.handle_frame(
        T0,
        ev(
            5,
            Event::MediaStateChanged {
                call_id: cid("c2"),
                user_id: uid("bob"),
                kind: MediaKind::Audio,
                disabled: true,
            },
        ),
    );
    let evs = events(&mut e);
    assert_eq!(
        evs.last(),
        Some(&ClientEvent::RemoteMicrophoneStateChanged {
            call_id: cid("c2"),
            user_id: uid("bob"),
            disabled: true
        })
    );
}

#[test]
fn reject_incoming_call() {
    let mut e = connected();
    incoming(&mut e, 1, "c2", MediaType::Audio);
    let rid = e.hangup(T0, Some(&cid("c2")), None).unwrap();
    e.handle_frame(T0, resp(2, rid, Err(crate::Error::from_code(Code::CallNotFound))));
    assert_eq!(ended_reason(&events(&mut e), "c2"), Some(EndReason::Reject));
    assert_eq!(e.incoming_calls().count(), 0);
}

#[test]
fn accept_while_in_another_call() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let call = info(
        "c5",
        CallType::Single,
        MediaType::Audio,
        "carol",
        &[("carol", ParticipantState::OnCall), ("alice", ParticipantState::Incoming)],
    );
    e.handle_frame(
        T0,
        ev(3, Event::IncomingCall { call: call.into(), inviter: uid("carol"), extra: String::new() }),
    );
    assert!(matches!(&events(&mut e)[..], [ClientEvent::ReceivedCall { .. }]));
    assert_eq!(e.current_call().unwrap().call_id().as_str(), "c9");

    let rid = e.accept(T0, &cid("c5")).unwrap();
    // The server ends the old call first, then answers.
    let mut old = info("c9", CallType::Single, MediaType::Audio, "bob", &[]);
    old.ended_at_ms = Some(T0);
    e.handle_frame(T0, ev(4, Event::CallEnded { call: old.into(), reason: EndReason::AcceptedAnotherCall }));
    let call = info(
        "c5",
        CallType::Single,
        MediaType::Audio,
        "carol",
        &[("carol", ParticipantState::OnCall), ("alice", ParticipantState::OnCall)],
    );
    e.handle_frame(T0, resp(5, rid, Ok(ResponseBody::Call(call.into()))));
    let evs = events(&mut e);
    assert_eq!(ended_reason(&evs, "c9"), Some(EndReason::AcceptedAnotherCall));
    assert!(evs.iter().any(
        |ev| matches!(ev, ClientEvent::CallConnected { session } if session.call_id().as_str() == "c5")
    ));
    assert_eq!(e.current_call().unwrap().call_id().as_str(), "c5");
    assert!(e.session(&cid("c9")).is_none());
}

#[test]
fn accept_response_before_old_call_ends() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    incoming(&mut e, 3, "c5", MediaType::Audio);
    let rid = e.accept(T0, &cid("c5")).unwrap();
    e.handle_frame(T0, resp(4, rid, Ok(ResponseBody::Empty)));
    assert_eq!(e.current_call().unwrap().call_id().as_str(), "c5");
    let old = info("c9", CallType::Single, MediaType::Audio, "bob", &[]);
    e.handle_frame(T0, ev(5, Event::CallEnded { call: old.into(), reason: EndReason::AcceptedAnotherCall }));
    assert_eq!(ended_reason(&events(&mut e), "c9"), Some(EndReason::AcceptedAnotherCall));
    assert_eq!(e.current_call().unwrap().call_id().as_str(), "c5", "the accepted call stays current");
}

#[test]
fn resume_replays_exactly_the_unacked_requests() {
    let mut e = connected();
    let r1 = e.get_available_calls(T0).unwrap();
    let r2 = e.get_available_calls(T0).unwrap();
    let r3 = e.get_available_calls(T0).unwrap();
    assert_eq!(transmits(&mut e).len(), 3);
    // Server frames 1 and 2 arrive; frame 2 acks our seq 1.
    e.handle_frame(T0, resp(1, r1, Ok(ResponseBody::Calls(vec![]))));
    e.handle_frame(T0, ServerFrame { seq: 2, ack: 1, body: ServerBody::Pong { server_time_ms: T0 } });
    e.handle_frame(T0, ev(2, changed("zz", "bob", ParticipantState::Ringing, 1)));
    let _ = events(&mut e);

    e.transport_lost(T0 + 1);
    assert_eq!(e.connection_state(), ConnectionState::Reconnecting);
    assert_eq!(events(&mut e), vec![ClientEvent::ConnectionStateChanged(ConnectionState::Reconnecting)]);
    // A request while reconnecting is queued, not sent.
    let r4 = e.get_available_calls(T0 + 2).unwrap();
    assert!(transmits(&mut e).is_empty());
    assert_eq!(
        code(e.start_call(T0, &[] as &[&str], CallType::Single, MediaType::Audio, CallOptions::default())),
        Code::UserListInvalid
    );

    e.transport_connected(T0 + 3);
    let tx = transmits(&mut e);
    let ClientBody::Hello(hello) = &tx[0].body else { panic!("{tx:?}") };
    let resume = hello.resume.as_ref().unwrap();
    assert_eq!((resume.session_id.as_str(), resume.last_received_seq), ("s1", 2));

    // The server had processed seq 2 as well: replay 3 and 4 only.
    e.handle_frame(T0 + 4, welcome("s1", "alice", true, 2));
    let tx = transmits(&mut e);
    assert_eq!(tx.iter().map(|f| (f.seq, f.request_id)).collect::<Vec<_>>(), vec![(3, r3), (4, r4)]);
    assert!(tx.iter().all(|f| f.ack == 2));
    assert_eq!(events(&mut e), vec![ClientEvent::ConnectionStateChanged(ConnectionState::Connected)]);
    let _ = driver(&mut e);

    // The server replays its frames after 2: duplicates are dropped, a gap is held.
    e.handle_frame(T0, resp(2, r2, Ok(ResponseBody::Calls(vec![]))));
    e.handle_frame(T0, resp(4, r4, Ok(ResponseBody::Calls(vec![]))));
    assert!(driver(&mut e).is_empty(), "seq 2 is a duplicate, seq 4 waits for seq 3");
    e.handle_frame(T0, resp(3, r2, Ok(ResponseBody::Calls(vec![]))));
    e.handle_frame(T0, resp(3, r2, Ok(ResponseBody::Calls(vec![]))));
    let drv = driver(&mut e);
    assert_eq!(drv.len(), 2, "{drv:?}");
    assert!(completed(&drv, r2).is_some() && completed(&drv, r4).is_some());
    // The calls continue; new requests continue the numbering.
    e.get_available_calls(T0).unwrap();
    assert_eq!(transmits(&mut e)[0].seq, 5);
}

#[test]
fn fresh_session_after_loss_ends_calls_with_network_error() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    incoming(&mut e, 3, "c3", MediaType::Audio);
    e.transport_lost(T0);
    let pending = e.get_available_calls(T0).unwrap();
    let _ = events(&mut e);
    e.transport_connected(T0 + 100);
    let _ = transmits(&mut e);
    e.handle_frame(T0 + 200, welcome("s2", "alice", false, 0));
    let evs = events(&mut e);
    assert_eq!(ended_reason(&evs, "c9"), Some(EndReason::NetworkError));
    assert_eq!(ended_reason(&evs, "c3"), Some(EndReason::NetworkError));
    let drv = driver(&mut e);
    assert_eq!(completed(&drv, pending).map(|r| r.unwrap_err().code), Some(Code::NotConnected));
    assert_eq!(evs.last(), Some(&ClientEvent::ConnectionStateChanged(ConnectionState::Connected)));
    assert!(transmits(&mut e).is_empty(), "requests of the old session are not resent");
    assert!(e.current_call().is_none() && e.calls().next().is_none());

    // Both directions restart their numbering.
    e.get_available_calls(T0).unwrap();
    assert_eq!(transmits(&mut e)[0].seq, 1);
    incoming(&mut e, 1, "c4", MediaType::Audio);
    assert!(matches!(&events(&mut e)[..], [ClientEvent::ReceivedCall { .. }]));
}

#[test]
fn request_timeout() {
    let mut e = connected();
    let rid = e.get_call(T0 + 1_000, &cid("c1")).unwrap();
    assert_eq!(e.poll_timeout(), Some(T0 + 5_000), "the heartbeat comes first");
    e.handle_timeout(T0 + 5_000);
    let _ = transmits(&mut e);
    e.handle_frame(T0 + 5_001, ServerFrame { seq: 0, ack: 1, body: ServerBody::Pong { server_time_ms: T0 } });
    assert_eq!(e.poll_timeout(), Some(T0 + 10_000));
    e.handle_timeout(T0 + 10_000);
    let _ = transmits(&mut e);
    assert_eq!(e.poll_timeout(), Some(T0 + 11_000));
    e.handle_timeout(T0 + 10_999);
    assert!(events(&mut e).is_empty());
    e.handle_timeout(T0 + 11_000);
    let _ = events(&mut e);
    let drv = driver(&mut e);
    assert_eq!(completed(&drv, rid).map(|r| r.unwrap_err().code), Some(Code::Timeout));
    // A late answer is ignored.
    e.handle_frame(T0 + 12_000, resp(1, rid, Ok(ResponseBody::Empty)));
    assert!(events(&mut e).is_empty());
}

#[test]
fn hangup_timeout_ends_the_call_here() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    e.transport_lost(T0);
    e.hangup(T0, None, None).unwrap();
    e.handle_timeout(T0 + 10_000);
    let evs = events(&mut e);
    assert_eq!(ended_reason(&evs, "c9"), Some(EndReason::Hangup));
    assert!(e.current_call().is_none());
}

#[test]
fn start_answered_after_timeout_is_hung_up() {
    let mut e = connected();
    let rid = e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).unwrap();
    let _ = transmits(&mut e);
    e.handle_timeout(T0 + 10_000);
    let _ = events(&mut e);
    let _ = transmits(&mut e);
    let call =
        info("c1", CallType::Single, MediaType::Audio, "alice", &[("alice", ParticipantState::OnCall)]);
    e.handle_frame(T0 + 10_500, resp(1, rid, Ok(ResponseBody::Started { call: call.into(), busy: vec![] })));
    assert!(events(&mut e).is_empty());
    let tx = transmits(&mut e);
    assert!(
        matches!(&tx[..], [ClientFrame { body: ClientBody::Request(Request::Hangup { call_id, .. }), .. }] if call_id.as_str() == "c1")
    );
    assert!(e.current_call().is_none());
}

#[test]
fn heartbeats_and_liveness() {
    let mut e = connected();
    assert_eq!(e.poll_timeout(), Some(T0 + 5_000));
    e.handle_timeout(T0 + 4_999);
    assert!(transmits(&mut e).is_empty());
    e.handle_timeout(T0 + 5_000);
    let tx = transmits(&mut e);
    assert_eq!(tx.iter().map(|f| (&f.body, f.seq)).collect::<Vec<_>>(), vec![(&ClientBody::Ping, 0)]);
    assert_eq!(e.poll_timeout(), Some(T0 + 10_000));
    e.handle_frame(
        T0 + 5_010,
        ServerFrame { seq: 0, ack: 0, body: ServerBody::Pong { server_time_ms: T0 + 6_000 } },
    );
    assert_eq!(e.server_clock_offset_ms(), Some(990));

    // The server goes silent: after its liveness timeout the transport is declared stale.
    for t in [10_000, 15_000, 20_000] {
        e.handle_timeout(T0 + t);
        let _ = transmits(&mut e);
    }
    assert_eq!(e.poll_timeout(), Some(T0 + 25_000), "the next ping");
    e.handle_timeout(T0 + 25_000);
    assert_eq!(transmits(&mut e).len(), 1);
    assert_eq!(e.poll_timeout(), Some(T0 + 5_010 + 20_000), "the liveness deadline");
    e.handle_timeout(T0 + 25_010);
    let evs = events(&mut e);
    assert_eq!(evs, vec![ClientEvent::ConnectionStateChanged(ConnectionState::Reconnecting)]);
    assert_eq!(driver(&mut e), vec![DriverEvent::TransportStale]);
    assert_eq!(e.poll_timeout(), None, "no timers without a transport");
}

#[test]
fn received_frames_are_acked_promptly() {
    let mut e = connected();
    incoming(&mut e, 1, "c2", MediaType::Audio);
    assert_eq!(e.poll_timeout(), Some(T0 + 25), "the delayed ack comes before the heartbeat");
    e.handle_timeout(T0 + 25);
    let tx = transmits(&mut e);
    assert_eq!(tx.iter().map(|f| (&f.body, f.ack)).collect::<Vec<_>>(), vec![(&ClientBody::Ping, 1)]);
    assert_eq!(e.poll_timeout(), Some(T0 + 25 + 5_000));

    // A request going out carries the ack: no extra Ping.
    incoming(&mut e, 2, "c3", MediaType::Audio);
    e.ringing(T0 + 30, &cid("c3")).unwrap();
    let tx = transmits(&mut e);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].ack, 2);
    e.handle_timeout(T0 + 100);
    assert!(transmits(&mut e).is_empty());

    // A repeated frame means the ack was lost: ack again.
    e.handle_frame(T0 + 200, ev(2, Event::FirstFrame { call_id: cid("c3"), at_ms: 1 }));
    assert_eq!(e.poll_timeout(), Some(T0 + 225));
}

#[test]
fn hello_without_welcome_is_stale() {
    let mut e = engine();
    e.transport_connected(T0);
    let _ = events(&mut e);
    assert_eq!(e.poll_timeout(), Some(T0 + 10_000));
    e.handle_timeout(T0 + 10_000);
    assert!(events(&mut e).is_empty());
    assert_eq!(driver(&mut e), vec![DriverEvent::TransportStale]);
    assert_eq!(e.connection_state(), ConnectionState::Connecting);
}

#[test]
fn refused_hello() {
    let mut e = engine();
    e.transport_connected(T0);
    let _ = events(&mut e);
    e.handle_frame(T0, resp(0, 0, Err(crate::Error::from_code(Code::TokenExpired))));
    let evs = events(&mut e);
    assert!(matches!(&evs[0], ClientEvent::ConnectionRejected(err) if err.code == Code::TokenExpired));
    assert_eq!(e.connection_state(), ConnectionState::Disconnected);
    e.set_token("fresh");
    e.transport_connected(T0);
    let tx = transmits(&mut e);
    assert!(matches!(&tx[0].body, ClientBody::Hello(h) if h.token == "fresh" && h.resume.is_none()));
}

#[test]
fn kicked_ends_everything() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let pending = e.get_available_calls(T0).unwrap();
    e.handle_frame(
        T0,
        ev(0, Event::Kicked { reason: EndReason::KickedOtherLogin, message: "elsewhere".into() }),
    );
    let evs = events(&mut e);
    assert_eq!(ended_reason(&evs, "c9"), Some(EndReason::KickedOtherLogin));
    let drv = driver(&mut e);
    assert_eq!(completed(&drv, pending).map(|r| r.unwrap_err().code), Some(Code::NotConnected));
    assert_eq!(
        evs.last(),
        Some(&ClientEvent::ConnectionStateChanged(ConnectionState::Kicked(EndReason::KickedOtherLogin)))
    );
    assert_eq!(code(e.get_available_calls(T0)), Code::NotConnected);
    incoming(&mut e, 3, "c3", MediaType::Audio);
    assert!(events(&mut e).is_empty() && transmits(&mut e).is_empty());
    assert_eq!(e.poll_timeout(), None);
    // Only an explicit reconnect starts again, with a fresh session.
    e.transport_connected(T0);
    let tx = transmits(&mut e);
    assert!(matches!(&tx[0].body, ClientBody::Hello(h) if h.resume.is_none()));
}

#[test]
fn a_server_shutting_down_is_not_a_kick() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let pending = e.get_available_calls(T0).unwrap();
    e.handle_frame(
        T0,
        ev(
            0,
            Event::Kicked { reason: EndReason::EndedByServer, message: "the server is shutting down".into() },
        ),
    );
    let evs = events(&mut e);
    assert_eq!(ended_reason(&evs, "c9"), Some(EndReason::EndedByServer));
    let drv = driver(&mut e);
    assert_eq!(completed(&drv, pending).map(|r| r.unwrap_err().code), Some(Code::NotConnected));
    assert!(evs.contains(&ClientEvent::ConnectionStateChanged(ConnectionState::Connecting)), "{evs:?}");
    assert_eq!(drv.last(), Some(&DriverEvent::TransportStale), "the driver reconnects: {drv:?}");
    assert!(
        !evs.iter().any(|e| matches!(e, ClientEvent::ConnectionStateChanged(ConnectionState::Kicked(_))))
    );
    // The reconnect starts a fresh session (the old one went with the server).
    e.transport_connected(T0 + 1_000);
    let tx = transmits(&mut e);
    assert!(matches!(&tx[0].body, ClientBody::Hello(h) if h.resume.is_none()));
}

#[test]
fn disconnect_says_goodbye() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let pending = e.get_available_calls(T0).unwrap();
    let _ = transmits(&mut e);
    e.disconnect(T0);
    let tx = transmits(&mut e);
    assert_eq!(tx.iter().map(|f| &f.body).collect::<Vec<_>>(), vec![&ClientBody::Goodbye]);
    let evs = events(&mut e);
    assert_eq!(ended_reason(&evs, "c9"), Some(EndReason::Hangup));
    let drv = driver(&mut e);
    assert_eq!(completed(&drv, pending).map(|r| r.unwrap_err().code), Some(Code::NotConnected));
    assert_eq!(e.connection_state(), ConnectionState::Disconnected);
    assert_eq!(code(e.get_available_calls(T0)), Code::NotConnected);
}

#[test]
fn change_media_type_transactions() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let rid = e.request_change_media_type(T0, MediaType::AudioVideo).unwrap();
    assert_eq!(code(e.request_change_media_type(T0, MediaType::AudioVideo)), Code::InvalidState);
    let tx1 = TransactionId::new("tx1").unwrap();
    e.handle_frame(T0, resp(3, rid, Ok(ResponseBody::Transaction(tx1.clone()))));
    assert_eq!(
        code(e.cancel_change_media_type(T0, &TransactionId::new("other").unwrap())),
        Code::TransactionIdInvalid
    );
    e.cancel_change_media_type(T0, &tx1).unwrap();
    e.handle_frame(
        T0,
        ev(
            4,
            Event::ChangeMediaTypeFinished {
                call_id: cid("c9"),
                user_id: uid("alice"),
                transaction_id: tx1.clone(),
                media_type: MediaType::Audio,
                result: ChangeMediaTypeResult::Cancelled,
                version: 4,
            },
        ),
    );
    assert_eq!(code(e.cancel_change_media_type(T0, &tx1)), Code::TransactionIdInvalid);

    // The peer asks; alice agrees.
    let tx2 = TransactionId::new("tx2").unwrap();
    e.handle_frame(
        T0,
        ev(
            5,
            Event::ChangeMediaTypeRequested {
                call_id: cid("c9"),
                user_id: uid("bob"),
                transaction_id: tx2.clone(),
                media_type: MediaType::AudioVideo,
            },
        ),
    );
    e.reply_change_media_type(T0, &tx2, true).unwrap();
    assert_eq!(code(e.reply_change_media_type(T0, &tx2, true)), Code::TransactionIdInvalid, "answered once");
    e.handle_frame(
        T0,
        ev(
            6,
            Event::ChangeMediaTypeFinished {
                call_id: cid("c9"),
                user_id: uid("bob"),
                transaction_id: tx2.clone(),
                media_type: MediaType::AudioVideo,
                result: ChangeMediaTypeResult::Accepted,
                version: 5,
            },
        ),
    );
    let evs = events(&mut e);
    assert!(evs.contains(&ClientEvent::ChangeMediaTypeRequest {
        call_id: cid("c9"),
        user_id: uid("bob"),
        transaction_id: tx2.clone(),
        media_type: MediaType::AudioVideo,
    }));
    assert_eq!(
        evs.last(),
        Some(&ClientEvent::ChangeMediaTypeResult {
            call_id: cid("c9"),
            user_id: uid("bob"),
            transaction_id: tx2,
            media_type: MediaType::AudioVideo,
            result: ChangeMediaTypeResult::Accepted,
        })
    );
    assert_eq!(e.current_call().unwrap().media_type(), MediaType::AudioVideo);
    assert!(e.set_camera_enabled(T0, true).is_ok(), "a video call now");
}

#[test]
fn events_before_the_start_response_are_kept() {
    let mut e = connected();
    let rid = e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).unwrap();
    e.handle_frame(T0, ev(1, changed("c1", "bob", ParticipantState::Ringing, 2)));
    assert!(events(&mut e).is_empty());
    let call = info(
        "c1",
        CallType::Single,
        MediaType::Audio,
        "alice",
        &[("alice", ParticipantState::OnCall), ("bob", ParticipantState::Incoming)],
    );
    e.handle_frame(T0, resp(2, rid, Ok(ResponseBody::Started { call: call.into(), busy: vec![] })));
    let evs = events(&mut e);
    let drv = driver(&mut e);
    assert!(completed(&drv, rid).is_some());
    assert!(matches!(
        evs.last(),
        Some(ClientEvent::RemoteUserStateChanged { state: ParticipantState::Ringing, .. })
    ));
    assert_eq!(e.current_call().unwrap().participant(&uid("bob")).unwrap().state, ParticipantState::Ringing);
}

#[test]
fn multi_call_invite_and_type_change() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let rid = e.invite(T0, &["carol"], None, "join us").unwrap();
    e.handle_frame(T0, resp(3, rid, Ok(ResponseBody::Busy(vec![]))));
    e.handle_frame(
        T0,
        ev(
            4,
            Event::UsersInvited {
                call_id: cid("c9"),
                inviter: uid("alice"),
                invitees: vec![uid("carol")],
                version: 4,
            },
        ),
    );
    e.handle_frame(
        T0,
        ev(5, Event::CallTypeChanged { call_id: cid("c9"), call_type: CallType::Multi, version: 4 }),
    );
    e.handle_frame(
        T0,
        ev(6, Event::CallTypeChanged { call_id: cid("c9"), call_type: CallType::Multi, version: 4 }),
    );
    let evs = events(&mut e);
    assert!(evs.contains(&ClientEvent::RemoteUserInvited {
        call_id: cid("c9"),
        inviter: uid("alice"),
        invitees: vec![uid("carol")]
    }));
    assert_eq!(evs.iter().filter(|ev| matches!(ev, ClientEvent::CallTypeChanged { .. })).count(), 1);
    let s = e.current_call().unwrap();
    assert_eq!(s.call_type(), CallType::Multi);
    assert_eq!(s.participant(&uid("carol")).unwrap().state, ParticipantState::Incoming);
}

#[test]
fn join_reopens_an_ended_multi_call() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let call = info("c9", CallType::Multi, MediaType::Audio, "bob", &[]);
    e.handle_frame(T0, ev(3, Event::CallEnded { call: call.into(), reason: EndReason::NetworkError }));
    let _ = events(&mut e);
    let rid = e.join_call(T0, &cid("c9")).unwrap();
    let mut call = info(
        "c9",
        CallType::Multi,
        MediaType::Audio,
        "bob",
        &[
            ("bob", ParticipantState::OnCall),
            ("carol", ParticipantState::OnCall),
            ("alice", ParticipantState::OnCall),
        ],
    );
    call.version = 9;
    e.handle_frame(T0, resp(4, rid, Ok(ResponseBody::Call(call.into()))));
    let evs = events(&mut e);
    assert!(evs.iter().any(|ev| matches!(ev, ClientEvent::CallConnected { .. })), "{evs:?}");
    assert_eq!(e.current_call().unwrap().state(), CallState::OnCall);
}

#[test]
fn a_group_call_left_still_reports_whom_it_invited() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let call = info("c9", CallType::Multi, MediaType::Audio, "bob", &[]);
    e.handle_frame(T0, ev(3, Event::CallEnded { call: call.into(), reason: EndReason::Hangup }));
    let _ = events(&mut e);
    let invited = |invitees: &[&str]| Event::UsersInvited {
        call_id: cid("c9"),
        inviter: uid("bob"),
        invitees: invitees.iter().map(|u| uid(u)).collect(),
        version: 7,
    };
    e.handle_frame(T0, ev(4, invited(&["dave", "erin"])));
    assert_eq!(
        events(&mut e),
        vec![ClientEvent::RemoteUserInvited {
            call_id: cid("c9"),
            inviter: uid("bob"),
            invitees: vec![uid("dave"), uid("erin")]
        }]
    );
    // The call stays ended here: hearing of it is not joining it.
    assert!(e.current_call().is_none());
    // This user among the invitees is told of the others only (its own invitation rings).
    e.handle_frame(T0, ev(5, invited(&["alice", "frank"])));
    let evs = events(&mut e);
    assert!(
        matches!(evs.as_slice(), [ClientEvent::RemoteUserInvited { invitees, .. }] if invitees == &vec![uid("frank")]),
        "{evs:?}"
    );
    e.handle_frame(T0, ev(6, invited(&["alice"])));
    assert!(events(&mut e).is_empty());
    // A call being started here does not hold back news of another call.
    e.start_call(T0, &["carol"], CallType::Single, MediaType::Audio, CallOptions::default()).unwrap();
    let elsewhere = Event::UsersInvited {
        call_id: cid("c7"),
        inviter: uid("bob"),
        invitees: vec![uid("gina")],
        version: 3,
    };
    e.handle_frame(T0, ev(7, elsewhere));
    let evs = events(&mut e);
    assert!(
        matches!(evs.as_slice(), [ClientEvent::RemoteUserInvited { call_id, .. }] if call_id == &cid("c7")),
        "{evs:?}"
    );
}

#[test]
fn other_device_answering_does_not_connect_here() {
    let mut e = connected();
    incoming(&mut e, 1, "c2", MediaType::Audio);
    let _ = events(&mut e);
    e.handle_frame(T0, ev(2, changed("c2", "alice", ParticipantState::OnCall, 3)));
    assert!(events(&mut e).is_empty());
    assert!(e.current_call().is_none());
    let call = info("c2", CallType::Single, MediaType::Audio, "bob", &[]);
    e.handle_frame(
        T0,
        ev(3, Event::CallEnded { call: call.into(), reason: EndReason::AcceptedOnOtherDevice }),
    );
    assert_eq!(ended_reason(&events(&mut e), "c2"), Some(EndReason::AcceptedOnOtherDevice));
}

#[test]
fn hostile_frames_are_ignored() {
    let mut e = connected();
    // Events about unknown calls.
    e.handle_frame(T0, ev(1, changed("ghost", "bob", ParticipantState::OnCall, 1)));
    e.handle_frame(T0, ev(2, Event::FirstFrame { call_id: cid("ghost"), at_ms: 1 }));
    let ghost = info("ghost", CallType::Single, MediaType::Audio, "bob", &[]);
    e.handle_frame(T0, ev(3, Event::CallEnded { call: ghost.clone().into(), reason: EndReason::Hangup }));
    // An invitation that is already over.
    let mut over = ghost.clone();
    over.ended_at_ms = Some(T0);
    e.handle_frame(
        T0,
        ev(4, Event::IncomingCall { call: over.into(), inviter: uid("bob"), extra: String::new() }),
    );
    // A second Welcome, a Welcome for a session never asked for, absurd acks and seqs.
    e.handle_frame(T0, welcome("s9", "mallory", true, u64::MAX));
    e.handle_frame(
        T0,
        ServerFrame { seq: u64::MAX, ack: u64::MAX, body: ServerBody::Pong { server_time_ms: i64::MIN } },
    );
    e.handle_frame(T0, resp(u64::MAX, u64::MAX, Ok(ResponseBody::Empty)));
    assert!(events(&mut e).is_empty());
    assert_eq!(e.connection_state(), ConnectionState::Connected);
    assert_eq!(e.user_id(), Some(&uid("alice")));

    // Events after the end, and a replayed invitation of the ended call, stay silent.
    incoming(&mut e, 5, "c2", MediaType::Audio);
    let call = info("c2", CallType::Single, MediaType::Audio, "bob", &[]);
    e.handle_frame(
        T0,
        ev(6, Event::CallEnded { call: call.clone().into(), reason: EndReason::RemoteCancel }),
    );
    let _ = events(&mut e);
    e.handle_frame(T0, ev(7, Event::CallEnded { call: call.into(), reason: EndReason::RemoteCancel }));
    e.handle_frame(T0, ev(8, changed("c2", "bob", ParticipantState::Ended, 2)));
    incoming(&mut e, 9, "c2", MediaType::Audio);
    e.handle_frame(
        T0,
        ev(
            10,
            Event::MediaSignal {
                call_id: cid("c2"),
                from_user: uid("bob"),
                from_device: DeviceId::new("d").unwrap(),
                payload: crate::MediaPayload::SdpOffer("v=0".into()),
            },
        ),
    );
    assert!(events(&mut e).is_empty());
    // Extreme times do not overflow.
    e.get_available_calls(i64::MAX).unwrap();
    e.handle_timeout(i64::MAX);
    e.handle_timeout(i64::MIN);
}

#[test]
fn get_call_refresh_ends_a_dead_call() {
    let mut e = connected();
    incoming(&mut e, 1, "c2", MediaType::Audio);
    let _ = events(&mut e);
    let rid = e.get_call(T0, &cid("c2")).unwrap();
    let mut call =
        info("c2", CallType::Single, MediaType::Audio, "bob", &[("alice", ParticipantState::Ended)]);
    call.ended_at_ms = Some(T0 + 3);
    call.participants[0].reason = Some(EndReason::RemoteCancel);
    call.version = 7;
    e.handle_frame(T0 + 10, resp(2, rid, Ok(ResponseBody::Call(call.into()))));
    assert_eq!(ended_reason(&events(&mut e), "c2"), Some(EndReason::RemoteCancel));
    assert_eq!(e.incoming_calls().count(), 0);
}

#[test]
fn events_older_than_the_snapshot_are_ignored() {
    let mut e = connected();
    on_call(&mut e, MediaType::Audio);
    let rid = e.get_call(T0, &cid("c9")).unwrap();
    let mut call = info(
        "c9",
        CallType::Single,
        MediaType::Audio,
        "bob",
        &[("bob", ParticipantState::OnCall), ("alice", ParticipantState::OnCall)],
    );
    call.version = 5;
    e.handle_frame(T0, resp(3, rid, Ok(ResponseBody::Call(call.into()))));
    let _ = events(&mut e);
    e.handle_frame(T0, ev(4, changed("c9", "bob", ParticipantState::Ringing, 3)));
    assert!(events(&mut e).is_empty());
    let s = e.current_call().unwrap();
    assert_eq!((s.version(), s.participant(&uid("bob")).unwrap().state), (5, ParticipantState::OnCall));
}

#[test]
fn start_answered_with_an_ended_call_ends_at_once() {
    let mut e = connected();
    let rid = e.start_call(T0, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default()).unwrap();
    let mut call = info(
        "c1",
        CallType::Single,
        MediaType::Audio,
        "alice",
        &[("alice", ParticipantState::Ended), ("bob", ParticipantState::Ended)],
    );
    call.participants[0].reason = Some(EndReason::RemoteBusy);
    call.ended_at_ms = Some(T0);
    e.handle_frame(
        T0,
        resp(1, rid, Ok(ResponseBody::Started { call: call.clone().into(), busy: vec![uid("bob")] })),
    );
    let evs = events(&mut e);
    let drv = driver(&mut e);
    assert!(completed(&drv, rid).is_some());
    assert_eq!(ended_reason(&evs, "c1"), Some(EndReason::RemoteBusy));
    assert!(e.current_call().is_none());
    e.handle_frame(T0, ev(2, Event::CallEnded { call: call.into(), reason: EndReason::RemoteBusy }));
    assert!(events(&mut e).is_empty(), "ended once");
}
