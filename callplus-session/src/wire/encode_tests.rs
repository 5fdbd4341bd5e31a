//! The direct encoder against prost: the same bytes for arbitrary frames of every kind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use callplus_proto::prost::Message;
use proptest::prelude::*;

use super::*;
use crate::error::{Code, Error};
use crate::model::ids::{CallId, DeviceId, TransactionId};
use crate::model::kinds::{
    CallType, ChangeMediaTypeResult, Delivery, Direction, EndReason, MediaKind, MediaType, ParticipantState,
};
use crate::model::message::{ServerFrame, SfuRoute};

/// Every value of a domain enum (they convert from the protocol's numbers, 1 and up).
fn every<T: TryFrom<i32> + Clone + std::fmt::Debug + 'static>() -> impl Strategy<Value = T> {
    let all: Vec<T> = (1..128).filter_map(|n| T::try_from(n).ok()).collect();
    assert!(!all.is_empty());
    prop::sample::select(all)
}

const ID: &str = "[A-Za-z0-9_-]{1,12}";

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,24}"]
}

fn user() -> impl Strategy<Value = UserId> {
    ID.prop_map(|s| UserId::new(&s).unwrap())
}

fn users() -> impl Strategy<Value = Vec<UserId>> {
    prop::collection::vec(user(), 0..4)
}

fn call_id() -> impl Strategy<Value = CallId> {
    ID.prop_map(|s| CallId::new(&s).unwrap())
}

fn device() -> impl Strategy<Value = DeviceId> {
    ID.prop_map(|s| DeviceId::new(&s).unwrap())
}

fn tx() -> impl Strategy<Value = TransactionId> {
    ID.prop_map(|s| TransactionId::new(&s).unwrap())
}

/// Mostly small or zero (left out on the wire), sometimes anything (negative: ten bytes).
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0), 0i64..100_000, any::<i64>()]
}

fn opt_int() -> impl Strategy<Value = Option<i64>> {
    prop::option::of(int())
}

fn leg() -> impl Strategy<Value = DeviceLeg> {
    (device(), every::<Delivery>()).prop_map(|(device_id, delivery)| DeviceLeg { device_id, delivery })
}

fn participant() -> impl Strategy<Value = Participant> {
    (
        (
            user(),
            every::<ParticipantState>(),
            prop::option::of(every::<EndReason>()),
            prop::option::of(user()),
        ),
        (int(), opt_int(), opt_int(), prop::collection::vec(leg(), 0..3)),
        (every::<Delivery>(), any::<bool>(), any::<bool>(), prop::option::of(device())),
    )
        .prop_map(
            |(
                (user_id, state, reason, inviter),
                (invited_at_ms, connected_at_ms, ended_at_ms, devices),
                (delivery, camera_disabled, microphone_disabled, device_id),
            )| Participant {
                user_id,
                state,
                reason,
                inviter,
                invited_at_ms,
                connected_at_ms,
                ended_at_ms,
                devices,
                delivery,
                camera_disabled,
                microphone_disabled,
                device_id,
            },
        )
}

fn call() -> impl Strategy<Value = CallInfo> {
    (
        (call_id(), every::<CallType>(), every::<MediaType>(), user()),
        (prop::collection::vec(participant(), 0..3), int(), opt_int(), opt_int()),
        (opt_int(), any::<u64>(), text(), any::<u32>()),
    )
        .prop_map(
            |(
                (call_id, call_type, media_type, creator),
                (participants, created_at_ms, started_at_ms, first_frame_at_ms),
                (ended_at_ms, version, extra, ring_timeout_ms),
            )| CallInfo {
                call_id,
                call_type,
                media_type,
                creator,
                participants,
                created_at_ms,
                started_at_ms,
                first_frame_at_ms,
                ended_at_ms,
                version,
                extra,
                ring_timeout_ms,
            },
        )
}

fn record() -> impl Strategy<Value = CallRecord> {
    (user(), call(), prop::option::of(user()), every::<EndReason>(), every::<Direction>(), int(), int())
        .prop_map(|(owner, call, inviter, end_reason, direction, duration_ms, sync_time)| CallRecord {
            owner,
            call: call.into(),
            inviter,
            end_reason,
            direction,
            duration_ms,
            sync_time,
        })
}

fn summary() -> impl Strategy<Value = CallSummary> {
    (
        (user(), call_id(), user(), user(), every::<MediaType>()),
        (int(), opt_int(), int(), int(), every::<EndReason>(), every::<Direction>()),
    )
        .prop_map(
            |(
                (owner, call_id, caller, peer, media_type),
                (created_at_ms, started_at_ms, ended_at_ms, duration_ms, end_reason, direction),
            )| CallSummary {
                owner,
                call_id,
                caller,
                peer,
                media_type,
                created_at_ms,
                started_at_ms,
                ended_at_ms,
                duration_ms,
                end_reason,
                direction,
            },
        )
}

fn payload() -> impl Strategy<Value = MediaPayload> {
    prop_oneof![
        text().prop_map(MediaPayload::SdpOffer),
        text().prop_map(MediaPayload::SdpAnswer),
        (text(), text(), any::<u32>()).prop_map(|(candidate, sdp_mid, sdp_mline_index)| {
            MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index }
        }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let v = any::<u64>;
    prop_oneof![
        (call(), user(), text()).prop_map(|(call, inviter, extra)| Event::IncomingCall {
            call: call.into(),
            inviter,
            extra
        }),
        (call_id(), user(), users(), v()).prop_map(|(call_id, inviter, invitees, version)| {
            Event::UsersInvited { call_id, inviter, invitees, version }
        }),
        (
            call_id(),
            user(),
            every::<ParticipantState>(),
            prop::option::of(every::<EndReason>()),
            v(),
            prop::option::of(device())
        )
            .prop_map(|(call_id, user_id, state, reason, version, device_id)| {
                Event::ParticipantChanged { call_id, user_id, state, reason, version, device_id }
            }),
        (call_id(), every::<CallType>(), v())
            .prop_map(|(call_id, call_type, version)| Event::CallTypeChanged { call_id, call_type, version }),
        (call_id(), every::<CallType>(), int(), v()).prop_map(
            |(call_id, call_type, started_at_ms, version)| {
                Event::CallStarted { call_id, call_type, started_at_ms, version }
            }
        ),
        (call(), every::<EndReason>())
            .prop_map(|(call, reason)| Event::CallEnded { call: call.into(), reason }),
        (call_id(), user(), every::<MediaKind>(), any::<bool>()).prop_map(
            |(call_id, user_id, kind, disabled)| {
                Event::MediaStateChanged { call_id, user_id, kind, disabled }
            }
        ),
        (call_id(), user(), tx(), every::<MediaType>()).prop_map(
            |(call_id, user_id, transaction_id, media_type)| Event::ChangeMediaTypeRequested {
                call_id,
                user_id,
                transaction_id,
                media_type
            }
        ),
        (call_id(), user(), tx(), every::<MediaType>(), every::<ChangeMediaTypeResult>(), v()).prop_map(
            |(call_id, user_id, transaction_id, media_type, result, version)| {
                Event::ChangeMediaTypeFinished {
                    call_id,
                    user_id,
                    transaction_id,
                    media_type,
                    result,
                    version,
                }
            }
        ),
        (call_id(), int()).prop_map(|(call_id, at_ms)| Event::FirstFrame { call_id, at_ms }),
        record().prop_map(Event::CallRecord),
        summary().prop_map(Event::Summary),
        (call_id(), user(), device(), payload()).prop_map(|(call_id, from_user, from_device, payload)| {
            Event::MediaSignal { call_id, from_user, from_device, payload }
        }),
        (call_id(), user(), every::<Delivery>(), prop::collection::vec(leg(), 0..3)).prop_map(
            |(call_id, user_id, delivery, devices)| Event::DeliveryChanged {
                call_id,
                user_id,
                delivery,
                devices
            }
        ),
        (every::<EndReason>(), text()).prop_map(|(reason, message)| Event::Kicked { reason, message }),
        (call_id(), prop::option::of((user(), device(), text()))).prop_map(|(call_id, sfu)| {
            Event::MediaRoute {
                call_id,
                sfu: sfu.map(|(user_id, device_id, token)| SfuRoute { user_id, device_id, token }),
            }
        }),
    ]
}

fn code() -> impl Strategy<Value = Code> {
    let all: Vec<Code> =
        (1..100_000).filter_map(|n| pb::ResultCode::try_from(n).ok()).filter_map(Code::from_proto).collect();
    prop::sample::select(all)
}

fn response_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        Just(ResponseBody::Empty),
        call().prop_map(|call| ResponseBody::Call(call.into())),
        (call(), users()).prop_map(|(call, busy)| ResponseBody::Started { call: call.into(), busy }),
        users().prop_map(ResponseBody::Busy),
        tx().prop_map(ResponseBody::Transaction),
        (prop::collection::vec(record(), 0..3), any::<bool>(), int()).prop_map(
            |(records, has_more, sync_time)| ResponseBody::Records(RecordPage {
                records,
                has_more,
                sync_time
            })
        ),
        prop::collection::vec(call(), 0..3).prop_map(ResponseBody::Calls),
    ]
}

fn ice_server() -> impl Strategy<Value = IceServer> {
    (prop::collection::vec(text(), 0..3), text(), text()).prop_map(|(urls, username, credential)| IceServer {
        urls,
        username,
        credential,
    })
}

fn body() -> impl Strategy<Value = ServerBody> {
    prop_oneof![
        (
            (text(), user(), int(), any::<bool>()),
            (any::<u32>(), any::<u32>(), prop::collection::vec(ice_server(), 0..3), any::<u64>())
        )
            .prop_map(
                |(
                    (session_id, user_id, server_time_ms, resumed),
                    (heartbeat_interval_ms, liveness_timeout_ms, ice_servers, last_received_seq),
                )| ServerBody::Welcome(Welcome {
                    session_id,
                    user_id,
                    server_time_ms,
                    resumed,
                    heartbeat_interval_ms,
                    liveness_timeout_ms,
                    ice_servers,
                    last_received_seq,
                })
            ),
        int().prop_map(|server_time_ms| ServerBody::Pong { server_time_ms }),
        (any::<u64>(), response_body())
            .prop_map(|(request_id, body)| ServerBody::Response(Response { request_id, result: Ok(body) })),
        (any::<u64>(), code(), text()).prop_map(|(request_id, code, message)| ServerBody::Response(
            Response { request_id, result: Err(Error::new(code, message)) }
        )),
        event().prop_map(ServerBody::Event),
    ]
}

/// Which kind of frame `body` is: every event kind and response result apart. The match has
/// no wildcard, so a new kind does not compile until it is listed here, and then
/// `every_kind_is_generated` fails until the strategies make it.
fn kind(body: &ServerBody) -> String {
    match body {
        ServerBody::Welcome(_) => "welcome".into(),
        ServerBody::Pong { .. } => "pong".into(),
        ServerBody::Response(Response { result: Err(_), .. }) => "error".into(),
        ServerBody::Response(Response { result: Ok(r), .. }) => match r {
            ResponseBody::Empty => "empty",
            ResponseBody::Call(_) => "call",
            ResponseBody::Started { .. } => "started",
            ResponseBody::Busy(_) => "busy",
            ResponseBody::Transaction(_) => "transaction",
            ResponseBody::Records(_) => "records",
            ResponseBody::Calls(_) => "calls",
        }
        .into(),
        ServerBody::Event(e) => format!("event {}", event_tag(e)),
    }
}

const KINDS: usize = 3 + 7 + 16;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn the_bytes_are_prosts(seq in any::<u64>(), ack in any::<u64>(), body in body()) {
        let frame = ServerFrame { seq, ack, body };
        let expected = pb::ServerFrame::from(&frame).encode_to_vec();
        let bytes = server_frame_to_vec(seq, ack, &frame.body);
        prop_assert_eq!(server_frame_len(seq, ack, &frame.body), expected.len());
        prop_assert_eq!(bytes, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// What storage keeps: records and call snapshots on their own, as prost writes them.
    #[test]
    fn stored_records_and_snapshots_are_prosts(record in record(), call in call()) {
        prop_assert_eq!(call_record_to_vec(&record), pb::CallRecord::from(&record).encode_to_vec());
        prop_assert_eq!(call_info_to_vec(&call), pb::CallInfo::from(&call).encode_to_vec());
    }
}

#[test]
fn every_kind_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = body();
    let mut seen = BTreeSet::new();
    for _ in 0..4000 {
        seen.insert(kind(&strategy.new_tree(&mut runner).unwrap().current()));
    }
    assert_eq!(seen.len(), KINDS, "kinds generated: {seen:?}");
}

#[test]
fn zero_seq_and_ack_are_left_out() {
    let body = ServerBody::Pong { server_time_ms: 0 };
    // Field 11 (Pong), length-delimited, empty.
    assert_eq!(server_frame_to_vec(0, 0, &body), vec![(11 << 3) | 2, 0]);
}

#[test]
fn a_large_page_moves_its_messages_up_for_long_lengths_and_keeps_prosts_bytes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let records = prop::collection::vec(record(), 200).new_tree(&mut runner).unwrap().current();
    let page = RecordPage { records, has_more: true, sync_time: 7 };
    let body = ServerBody::Response(Response { request_id: 3, result: Ok(ResponseBody::Records(page)) });
    let frame = ServerFrame { seq: 9, ack: 4, body };
    let expected = pb::ServerFrame::from(&frame).encode_to_vec();
    // The page's length takes three bytes, its records' one or two: every case of the length
    // written after the message.
    assert!(expected.len() > 16_384, "{} bytes", expected.len());
    assert_eq!(server_frame_to_vec(9, 4, &frame.body), expected);
    let mut buf = Vec::new();
    encode_server_frame(9, 4, &frame.body, &mut buf);
    assert_eq!(buf, expected);
}

/// A frame carrying one of `snapshots` (by index), or none: what a thread's frames and stored
/// records hold one after the other.
#[derive(Debug, Clone)]
enum Carrier {
    Started(usize),
    Call(usize),
    Incoming(usize),
    Ended(usize),
    Record(usize, UserId),
    Stored(usize, UserId),
    Listed(usize),
    Other,
}

/// How many snapshots the frames of one sequence share.
const SHARED_SNAPSHOTS: usize = 3;

fn carriers(snapshots: usize) -> impl Strategy<Value = Vec<Carrier>> {
    let carrier = (0..snapshots, user(), 0..8u8).prop_map(|(i, owner, kind)| match kind {
        0 => Carrier::Started(i),
        1 => Carrier::Call(i),
        2 => Carrier::Incoming(i),
        3 => Carrier::Ended(i),
        4 => Carrier::Record(i, owner),
        5 => Carrier::Stored(i, owner),
        6 => Carrier::Listed(i),
        _ => Carrier::Other,
    });
    prop::collection::vec(carrier, 1..12)
}

fn shared_record(owner: &UserId, call: &Arc<CallInfo>) -> CallRecord {
    CallRecord {
        owner: owner.clone(),
        call: Arc::clone(call),
        inviter: None,
        end_reason: EndReason::Hangup,
        direction: Direction::Outgoing,
        duration_ms: 5,
        sync_time: 9,
    }
}

/// The bytes of `carrier` through `cache`, and the bytes prost writes for the same message.
fn encode_both(
    carrier: &Carrier,
    snapshots: &[Arc<CallInfo>],
    cache: &mut SnapshotCache,
) -> (Vec<u8>, Vec<u8>) {
    let body = |result| ServerBody::Response(Response { request_id: 2, result: Ok(result) });
    let body = match carrier {
        Carrier::Started(i) => body(ResponseBody::Started { call: Arc::clone(&snapshots[*i]), busy: vec![] }),
        Carrier::Call(i) => body(ResponseBody::Call(Arc::clone(&snapshots[*i]))),
        Carrier::Listed(i) => body(ResponseBody::Calls(vec![(*snapshots[*i]).clone()])),
        Carrier::Incoming(i) => ServerBody::Event(Event::IncomingCall {
            call: Arc::clone(&snapshots[*i]),
            inviter: snapshots[*i].creator.clone(),
            extra: String::new(),
        }),
        Carrier::Ended(i) => ServerBody::Event(Event::CallEnded {
            call: Arc::clone(&snapshots[*i]),
            reason: EndReason::Hangup,
        }),
        Carrier::Record(i, owner) => {
            ServerBody::Event(Event::CallRecord(shared_record(owner, &snapshots[*i])))
        }
        Carrier::Stored(i, owner) => {
            let record = shared_record(owner, &snapshots[*i]);
            return (call_record_to_vec_with(&record, cache), pb::CallRecord::from(&record).encode_to_vec());
        }
        Carrier::Other => ServerBody::Pong { server_time_ms: 4 },
    };
    let mut bytes = vec![0xff];
    append_server_frame_with(3, 1, &body, &mut bytes, cache);
    let frame = ServerFrame { seq: 3, ack: 1, body };
    let mut expected = vec![0xff];
    expected.extend(pb::ServerFrame::from(&frame).encode_to_vec());
    (bytes, expected)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Frames and records that share snapshots, in any order through one cache, are the bytes
    /// prost writes for each on its own.
    #[test]
    fn frames_sharing_snapshots_through_one_cache_are_prosts(
        snapshots in prop::collection::vec(call(), SHARED_SNAPSHOTS),
        carriers in carriers(SHARED_SNAPSHOTS),
    ) {
        let snapshots: Vec<Arc<CallInfo>> = snapshots.into_iter().map(Arc::new).collect();
        let mut cache = SnapshotCache::default();
        for carrier in &carriers {
            let (bytes, expected) = encode_both(carrier, &snapshots, &mut cache);
            prop_assert_eq!(bytes, expected, "{:?}", carrier);
        }
    }
}

fn snapshot_with(participants: usize) -> Arc<CallInfo> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut call = call().new_tree(&mut runner).unwrap().current();
    call.participants =
        prop::collection::vec(participant(), participants).new_tree(&mut runner).unwrap().current();
    Arc::new(call)
}

/// The second frame of a snapshot takes its participants from the cache: the kept bytes, not
/// an encoding of the snapshot (here the kept bytes are altered to tell them apart).
#[test]
fn a_frame_sharing_the_kept_snapshot_copies_its_participants() {
    let call = snapshot_with(2);
    let ended = ServerBody::Event(Event::CallEnded { call: Arc::clone(&call), reason: EndReason::Hangup });
    let mut cache = SnapshotCache::default();
    let mut first = Vec::new();
    append_server_frame_with(1, 0, &ended, &mut first, &mut cache);
    assert!(cache.holds(&call));
    assert_eq!(cache.ends.len(), 2);

    let marker = cache.bytes.len() - 1;
    cache.bytes[marker] ^= 0x55;
    let mut second = Vec::new();
    append_server_frame_with(1, 0, &ended, &mut second, &mut cache);
    assert_eq!(second.len(), first.len());
    assert_ne!(second, first, "the second frame was encoded again rather than copied");

    // An equal snapshot in another `Arc` is encoded, and replaces the kept one.
    let twin = Arc::new((*call).clone());
    let twin_ended =
        ServerBody::Event(Event::CallEnded { call: Arc::clone(&twin), reason: EndReason::Hangup });
    let mut third = Vec::new();
    append_server_frame_with(1, 0, &twin_ended, &mut third, &mut cache);
    assert_eq!(third, first);
    assert!(cache.holds(&twin) && !cache.holds(&call));
}

/// A snapshot whose participants take more than the cache keeps (a large group call) is
/// encoded every time, correctly, and not kept.
#[test]
fn a_large_snapshot_is_not_kept() {
    let call = snapshot_with(200);
    let ended = ServerBody::Event(Event::CallEnded { call: Arc::clone(&call), reason: EndReason::Hangup });
    let mut cache = SnapshotCache::default();
    let expected = server_frame_to_vec(1, 0, &ended);
    assert!(expected.len() > SnapshotCache::MAX_BYTES, "{} bytes", expected.len());
    for _ in 0..2 {
        let mut bytes = Vec::new();
        append_server_frame_with(1, 0, &ended, &mut bytes, &mut cache);
        assert_eq!(bytes, expected);
        assert!(!cache.holds(&call));
        assert!(cache.bytes.is_empty() && cache.bytes.capacity() <= SnapshotCache::MAX_BYTES);
    }
}
