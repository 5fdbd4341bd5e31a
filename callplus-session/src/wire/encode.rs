//! Server frames straight to protobuf bytes.
//!
//! The server sends every frame it makes: converting each domain frame into the generated
//! `pb::ServerFrame` (a fresh `String` for every id, a `Vec` for every list) only for prost to
//! encode that struct and drop it cost about a sixth of the server's instructions per call cycle
//! (docs/performance.md). This module writes the same bytes from the domain frame itself, with
//! prost's encoding primitives and no intermediate values.
//!
//! The bytes are exactly those prost writes for `pb::ServerFrame::from(frame)` (fields in tag
//! order, proto3 defaults left out, oneof members and repeated elements always written); the
//! property test below checks that byte for byte for arbitrary frames of every kind, so a field
//! added to the protocol and its conversion but not here fails it.
//!
//! Each message is written once by a generic `fields` function over an [`Out`]: [`Backfill`]
//! writes the bytes in one pass, leaving one byte for each nested message's length and filling it
//! in (moving the message up when its length needs more bytes) once the message is written;
//! [`Len`] only counts, for [`server_frame_len`]. One pass over the frame, where measuring each
//! nested message first (as prost's `encoded_len` does, once per level of nesting) would walk
//! every field again.

use std::sync::Arc;

use callplus_proto::prost::bytes::BufMut;
use callplus_proto::prost::encoding::{WireType, encoded_len_varint, key_len};
use callplus_proto::v1 as pb;

use crate::model::ids::UserId;
use crate::model::message::{Event, MediaPayload, Response, ResponseBody, ServerBody, Welcome};
use crate::model::snapshot::{
    CallInfo, CallRecord, CallSummary, DeviceLeg, IceServer, Participant, RecordPage,
};

/// The encoded length of the frame (`seq`, `ack`, `body`) in bytes, without a length prefix.
#[must_use]
pub fn server_frame_len(seq: u64, ack: u64, body: &ServerBody) -> usize {
    let mut len = Len { total: 0 };
    Frame { seq, ack, body }.fields(&mut len);
    len.total
}

/// Writes the frame (`seq`, `ack`, `body`) as a protobuf `ServerFrame` (no length prefix): the
/// bytes prost writes for the generated message converted from the same frame. `buf` must have
/// room for [`server_frame_len`] bytes (a `Vec` grows; tonic's encode buffer does too).
///
/// The frame is written into a `Vec` first and copied into `buf` whole: one copy of the frame
/// costs less than handing `buf` its bytes one by one (see [`put_varint`]).
pub fn encode_server_frame(seq: u64, ack: u64, body: &ServerBody, buf: &mut impl BufMut) {
    buf.put_slice(&server_frame_to_vec(seq, ack, body));
}

/// [`encode_server_frame`] into a new `Vec`.
#[must_use]
pub fn server_frame_to_vec(seq: u64, ack: u64, body: &ServerBody) -> Vec<u8> {
    message_to_vec(&Frame { seq, ack, body })
}

/// Appends the frame's bytes (those of [`server_frame_to_vec`]) to `buf`: a transport that
/// keeps one buffer for the frames it encodes allocates nothing per frame.
///
/// ```
/// use callplus_session::wire::{append_server_frame, server_frame_to_vec};
/// use callplus_session::{EndReason, Event, ServerBody};
///
/// let body = ServerBody::Event(Event::Kicked { reason: EndReason::Hangup, message: "bye".into() });
/// let mut buf = vec![0xff];
/// append_server_frame(1, 0, &body, &mut buf);
/// assert_eq!(buf[1..], server_frame_to_vec(1, 0, &body)[..]);
/// ```
pub fn append_server_frame(seq: u64, ack: u64, body: &ServerBody, buf: &mut Vec<u8>) {
    Frame { seq, ack, body }.fields(&mut Backfill { buf, cache: None });
}

/// [`append_server_frame`], taking the participants of a call snapshot the frame shares with
/// the frames before it from `cache` instead of encoding them again (see [`SnapshotCache`]).
/// The bytes are the same.
///
/// ```
/// use callplus_session::wire::{SnapshotCache, append_server_frame_with, server_frame_to_vec};
/// use callplus_session::{EndReason, Event, ServerBody};
///
/// // One cache for every frame an encoder writes, kept from one frame to the next.
/// let mut cache = SnapshotCache::default();
/// let body = ServerBody::Event(Event::Kicked { reason: EndReason::Hangup, message: "bye".into() });
/// let mut buf = Vec::new();
/// append_server_frame_with(1, 0, &body, &mut buf, &mut cache);
/// assert_eq!(buf, server_frame_to_vec(1, 0, &body));
/// ```
pub fn append_server_frame_with(
    seq: u64,
    ack: u64,
    body: &ServerBody,
    buf: &mut Vec<u8>,
    cache: &mut SnapshotCache,
) {
    Frame { seq, ack, body }.fields(&mut Backfill { buf, cache: Some(cache) });
}

/// The participants of the last shared call snapshot written, kept encoded.
///
/// One change of a call makes one snapshot (`Arc<CallInfo>`), and several frames carry it:
/// the caller's `Started` and each callee's `IncomingCall`; the callee's `CallEnded` and every
/// participant's `CallRecord` (and the stored records). Its participants are most of each of
/// those frames' bytes, and they are the same bytes every time. An encoder that keeps one
/// cache writes them once per snapshot and copies them into the frames after.
///
/// The cache holds the snapshot it describes, so no other snapshot can be at its address while
/// it is kept; an `Arc`'s value cannot change while another `Arc` to it exists. Only snapshots
/// held in an `Arc` are kept, and only while their participants take at most
/// [`SnapshotCache::MAX_BYTES`].
#[derive(Debug, Default)]
pub struct SnapshotCache {
    /// The snapshot whose participants `bytes` holds.
    call: Option<Arc<CallInfo>>,
    /// Each participant's message as it follows its field's key: its length, then its fields.
    bytes: Vec<u8>,
    /// Where each participant's message ends in `bytes`.
    ends: Vec<usize>,
}

impl SnapshotCache {
    /// A snapshot whose participants take more bytes than this (a large group call) is not
    /// kept, so the cache never holds much.
    pub const MAX_BYTES: usize = 4096;

    fn holds(&self, call: &Arc<CallInfo>) -> bool {
        self.call.as_ref().is_some_and(|held| Arc::ptr_eq(held, call))
    }

    /// Each kept participant's message, in order.
    fn messages(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).filter_map(|(start, end)| self.bytes.get(start..end))
    }

    fn forget(&mut self) {
        self.call = None;
        self.bytes.clear();
        self.ends.clear();
        if self.bytes.capacity() > Self::MAX_BYTES {
            self.bytes = Vec::new();
        }
    }
}

/// A call record as the protobuf `CallRecord` (the bytes prost writes for the generated
/// message converted from it): how storage keeps records.
#[must_use]
pub fn call_record_to_vec(record: &CallRecord) -> Vec<u8> {
    message_to_vec(&RecordMsg(record))
}

/// A call snapshot as the protobuf `CallInfo` (the bytes prost writes for the generated message
/// converted from it): how storage keeps live calls.
#[must_use]
pub fn call_info_to_vec(call: &CallInfo) -> Vec<u8> {
    message_to_vec(&CallMsg(call, None))
}

/// [`call_record_to_vec`], with the participants of a snapshot shared with the records before
/// it taken from `cache` (see [`SnapshotCache`]). The bytes are the same.
#[must_use]
pub fn call_record_to_vec_with(record: &CallRecord, cache: &mut SnapshotCache) -> Vec<u8> {
    let mut buf = Vec::with_capacity(FIRST_CAPACITY);
    RecordMsg(record).fields(&mut Backfill { buf: &mut buf, cache: Some(cache) });
    buf
}

fn message_to_vec<M: Msg>(message: &M) -> Vec<u8> {
    let mut buf = Vec::with_capacity(FIRST_CAPACITY);
    message.fields(&mut Backfill { buf: &mut buf, cache: None });
    buf
}

/// What a frame's `Vec` starts with: most frames (events, replies, a call's snapshot with a few
/// participants) fit; a page of records grows it a few times.
const FIRST_CAPACITY: usize = 512;

/// Where fields go: counted or written. Every method writes its field unconditionally; the
/// free functions below leave out proto3 defaults.
trait Out {
    fn varint(&mut self, tag: u32, value: u64);
    fn bytes(&mut self, tag: u32, value: &[u8]);
    fn message<M: Msg>(&mut self, tag: u32, message: &M);

    /// The participants of `call` as the repeated field `tag`; `shared` is the `Arc` the call
    /// is held in, when it is (an encoder may then reuse their bytes).
    fn participants(&mut self, tag: u32, call: &CallInfo, shared: Option<&Arc<CallInfo>>) {
        let _ = shared;
        each_participant(self, tag, call);
    }
}

/// Writes each participant of `call` as the repeated field `tag`.
fn each_participant<O: Out + ?Sized>(o: &mut O, tag: u32, call: &CallInfo) {
    for p in &call.participants {
        o.message(tag, &ParticipantMsg(p));
    }
}

/// A message: its fields in tag order.
trait Msg {
    fn fields<O: Out>(&self, o: &mut O);
}

fn usize_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Counts the bytes a message takes.
struct Len {
    total: usize,
}

impl Out for Len {
    fn varint(&mut self, tag: u32, value: u64) {
        self.total += key_len(tag) + encoded_len_varint(value);
    }

    fn bytes(&mut self, tag: u32, value: &[u8]) {
        self.total += key_len(tag) + encoded_len_varint(usize_u64(value.len())) + value.len();
    }

    fn message<M: Msg>(&mut self, tag: u32, message: &M) {
        let start = self.total;
        message.fields(self);
        let len = self.total - start;
        self.total += key_len(tag) + encoded_len_varint(usize_u64(len));
    }
}

/// Writes `value` as a varint.
///
/// A frame is mostly one- and two-byte varints (keys, small numbers, lengths). Through `BufMut`
/// every byte is a slice of one (a capacity check and a copy call each), which made prost's
/// byte-at-a-time `encode_varint` the largest single cost of encoding a frame; a `Vec` with room
/// takes a byte as a plain store.
fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        #[allow(clippy::cast_possible_truncation)]
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    buf.push(value as u8);
}

/// Writes a field's key.
fn put_key(buf: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    put_varint(buf, (u64::from(tag) << 3) | wire_type as u64);
}

/// Writes a message in one pass. A nested message's length precedes it but is known only once
/// it is written: one byte is left for it, which holds any length under 128 (most nested
/// messages: participants, device legs, ICE servers); a longer message is moved up by the
/// length's extra bytes, one `memmove` of bytes just written.
struct Backfill<'a> {
    buf: &'a mut Vec<u8>,
    cache: Option<&'a mut SnapshotCache>,
}

impl Out for Backfill<'_> {
    fn varint(&mut self, tag: u32, value: u64) {
        put_key(self.buf, tag, WireType::Varint);
        put_varint(self.buf, value);
    }

    fn bytes(&mut self, tag: u32, value: &[u8]) {
        put_key(self.buf, tag, WireType::LengthDelimited);
        put_varint(self.buf, usize_u64(value.len()));
        self.buf.extend_from_slice(value);
    }

    fn message<M: Msg>(&mut self, tag: u32, message: &M) {
        put_key(self.buf, tag, WireType::LengthDelimited);
        self.nested(message);
    }

    fn participants(&mut self, tag: u32, call: &CallInfo, shared: Option<&Arc<CallInfo>>) {
        let Some((cache, shared)) = shared.and_then(|shared| Some((self.cache.take()?, shared))) else {
            each_participant(self, tag, call);
            return;
        };
        if cache.holds(shared) {
            for message in cache.messages() {
                put_key(self.buf, tag, WireType::LengthDelimited);
                self.buf.extend_from_slice(message);
            }
        } else {
            cache.forget();
            let mut keep = true;
            for p in &call.participants {
                put_key(self.buf, tag, WireType::LengthDelimited);
                let at = self.buf.len();
                self.nested(&ParticipantMsg(p));
                let message = self.buf.get(at..).unwrap_or_default();
                keep = keep && cache.bytes.len() + message.len() <= SnapshotCache::MAX_BYTES;
                if keep {
                    cache.bytes.extend_from_slice(message);
                    cache.ends.push(cache.bytes.len());
                }
            }
            if keep {
                cache.call = Some(Arc::clone(shared));
            } else {
                cache.forget();
            }
        }
        self.cache = Some(cache);
    }
}

impl Backfill<'_> {
    /// Writes a nested message after its key: its length, then its fields.
    fn nested<M: Msg>(&mut self, message: &M) {
        let at = self.buf.len();
        self.buf.push(0);
        message.fields(self);
        let end = self.buf.len();
        let len = end - at - 1;
        if len < 0x80 {
            if let Some(byte) = self.buf.get_mut(at) {
                #[allow(clippy::cast_possible_truncation)]
                let short = len as u8;
                *byte = short;
            }
            return;
        }
        let mut prefix = [0u8; 10];
        let n = varint_into(&mut prefix, usize_u64(len));
        let extra = n - 1;
        self.buf.resize(end + extra, 0);
        self.buf.copy_within(at + 1..end, at + n);
        if let (Some(room), Some(prefix)) = (self.buf.get_mut(at..at + n), prefix.get(..n)) {
            room.copy_from_slice(prefix);
        }
    }
}

/// Writes `value` as a varint at the start of `out` and returns how many bytes it took.
fn varint_into(out: &mut [u8; 10], mut value: u64) -> usize {
    let mut n = 0;
    for byte in out.iter_mut() {
        n += 1;
        if value < 0x80 {
            #[allow(clippy::cast_possible_truncation)]
            let last = value as u8;
            *byte = last;
            break;
        }
        #[allow(clippy::cast_possible_truncation)]
        let more = (value as u8) | 0x80;
        *byte = more;
        value >>= 7;
    }
    n
}

// Scalar fields, left out when they hold the default (proto3).

fn u64_field<O: Out>(o: &mut O, tag: u32, value: u64) {
    if value != 0 {
        o.varint(tag, value);
    }
}

fn u32_field<O: Out>(o: &mut O, tag: u32, value: u32) {
    u64_field(o, tag, u64::from(value));
}

fn i64_field<O: Out>(o: &mut O, tag: u32, value: i64) {
    // Protobuf's int64: the two's complement bits as a varint.
    #[allow(clippy::cast_sign_loss)]
    u64_field(o, tag, value as u64);
}

/// An int32 or enum field (negative values take ten bytes, as in prost).
fn i32_field<O: Out>(o: &mut O, tag: u32, value: i32) {
    i64_field(o, tag, i64::from(value));
}

fn bool_field<O: Out>(o: &mut O, tag: u32, value: bool) {
    u64_field(o, tag, u64::from(value));
}

fn str_field<O: Out>(o: &mut O, tag: u32, value: &str) {
    if !value.is_empty() {
        o.bytes(tag, value.as_bytes());
    }
}

fn opt_str_field<O: Out, S: AsRef<str>>(o: &mut O, tag: u32, value: Option<&S>) {
    if let Some(value) = value {
        str_field(o, tag, value.as_ref());
    }
}

/// A repeated string: every element, empty ones included.
fn strs_field<O: Out, S: AsRef<str>>(o: &mut O, tag: u32, values: &[S]) {
    for value in values {
        o.bytes(tag, value.as_ref().as_bytes());
    }
}

fn end_reason(reason: Option<crate::model::kinds::EndReason>) -> i32 {
    reason.map_or(pb::EndReason::Unspecified as i32, i32::from)
}

// Messages.

struct Frame<'a> {
    seq: u64,
    ack: u64,
    body: &'a ServerBody,
}

impl Msg for Frame<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        u64_field(o, 1, self.seq);
        u64_field(o, 2, self.ack);
        match self.body {
            ServerBody::Welcome(w) => o.message(10, &WelcomeMsg(w)),
            ServerBody::Pong { server_time_ms } => o.message(11, &PongMsg(*server_time_ms)),
            ServerBody::Response(r) => o.message(12, &ResponseMsg(r)),
            ServerBody::Event(e) => o.message(13, &EventMsg(e)),
        }
    }
}

struct WelcomeMsg<'a>(&'a Welcome);

impl Msg for WelcomeMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        let w = self.0;
        str_field(o, 1, &w.session_id);
        str_field(o, 2, w.user_id.as_str());
        i64_field(o, 3, w.server_time_ms);
        bool_field(o, 4, w.resumed);
        u32_field(o, 5, w.heartbeat_interval_ms);
        u32_field(o, 6, w.liveness_timeout_ms);
        for server in &w.ice_servers {
            o.message(7, &IceServerMsg(server));
        }
        u64_field(o, 8, w.last_received_seq);
    }
}

struct IceServerMsg<'a>(&'a IceServer);

impl Msg for IceServerMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        strs_field(o, 1, &self.0.urls);
        str_field(o, 2, &self.0.username);
        str_field(o, 3, &self.0.credential);
    }
}

struct PongMsg(i64);

impl Msg for PongMsg {
    fn fields<O: Out>(&self, o: &mut O) {
        i64_field(o, 1, self.0);
    }
}

struct ResponseMsg<'a>(&'a Response);

impl Msg for ResponseMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        u64_field(o, 1, self.0.request_id);
        let body = match &self.0.result {
            Err(e) => {
                i32_field(o, 2, e.code.number());
                str_field(o, 3, &e.message);
                return;
            }
            Ok(body) => body,
        };
        i32_field(o, 2, pb::ResultCode::Success as i32);
        match body {
            ResponseBody::Empty => {}
            ResponseBody::Call(call) => o.message(10, &CallMsg::shared(call)),
            ResponseBody::Busy(users) => o.message(11, &UsersMsg(users)),
            ResponseBody::Transaction(tx) => o.bytes(12, tx.as_str().as_bytes()),
            ResponseBody::Records(page) => o.message(13, &PageMsg(page)),
            ResponseBody::Calls(calls) => o.message(14, &CallsMsg(calls)),
            ResponseBody::Started { call, busy } => o.message(15, &StartedMsg(call, busy)),
        }
    }
}

/// `BusyUsers`: the user ids in field 1.
struct UsersMsg<'a>(&'a [UserId]);

impl Msg for UsersMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        strs_field(o, 1, self.0);
    }
}

struct StartedMsg<'a>(&'a Arc<CallInfo>, &'a [UserId]);

impl Msg for StartedMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        o.message(1, &CallMsg::shared(self.0));
        strs_field(o, 2, self.1);
    }
}

struct CallsMsg<'a>(&'a [CallInfo]);

impl Msg for CallsMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        for call in self.0 {
            o.message(1, &CallMsg(call, None));
        }
    }
}

struct PageMsg<'a>(&'a RecordPage);

impl Msg for PageMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        for record in &self.0.records {
            o.message(1, &RecordMsg(record));
        }
        bool_field(o, 2, self.0.has_more);
        i64_field(o, 3, self.0.sync_time);
    }
}

struct DeviceLegMsg<'a>(&'a DeviceLeg);

impl Msg for DeviceLegMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        str_field(o, 1, self.0.device_id.as_str());
        i32_field(o, 2, self.0.delivery.into());
    }
}

struct ParticipantMsg<'a>(&'a Participant);

impl Msg for ParticipantMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        let p = self.0;
        str_field(o, 1, p.user_id.as_str());
        i32_field(o, 2, p.state.into());
        i32_field(o, 3, end_reason(p.reason));
        opt_str_field(o, 4, p.inviter.as_ref());
        i64_field(o, 5, p.invited_at_ms);
        i64_field(o, 6, p.connected_at_ms.unwrap_or(0));
        i64_field(o, 7, p.ended_at_ms.unwrap_or(0));
        for leg in &p.devices {
            o.message(8, &DeviceLegMsg(leg));
        }
        i32_field(o, 9, p.delivery.into());
        bool_field(o, 10, p.camera_disabled);
        bool_field(o, 11, p.microphone_disabled);
        opt_str_field(o, 12, p.device_id.as_ref());
    }
}

/// A `CallInfo`, and the `Arc` it is shared in when a frame holds it in one.
struct CallMsg<'a>(&'a CallInfo, Option<&'a Arc<CallInfo>>);

impl<'a> CallMsg<'a> {
    fn shared(call: &'a Arc<CallInfo>) -> Self {
        Self(call, Some(call))
    }
}

impl Msg for CallMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        let c = self.0;
        str_field(o, 1, c.call_id.as_str());
        i32_field(o, 2, c.call_type.into());
        i32_field(o, 3, c.media_type.into());
        str_field(o, 4, c.creator.as_str());
        o.participants(5, c, self.1);
        i64_field(o, 6, c.created_at_ms);
        i64_field(o, 7, c.started_at_ms.unwrap_or(0));
        i64_field(o, 8, c.first_frame_at_ms.unwrap_or(0));
        i64_field(o, 9, c.ended_at_ms.unwrap_or(0));
        u64_field(o, 10, c.version);
        bool_field(o, 11, c.ended_at_ms.is_some());
        str_field(o, 12, &c.extra);
        u32_field(o, 13, c.ring_timeout_ms);
    }
}

struct RecordMsg<'a>(&'a CallRecord);

impl Msg for RecordMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        let (r, c) = (self.0, &self.0.call);
        str_field(o, 1, c.call_id.as_str());
        i32_field(o, 2, c.call_type.into());
        i32_field(o, 3, c.media_type.into());
        str_field(o, 4, c.creator.as_str());
        opt_str_field(o, 5, r.inviter.as_ref());
        o.participants(6, c, Some(&r.call));
        i64_field(o, 7, c.created_at_ms);
        i64_field(o, 8, c.started_at_ms.unwrap_or(0));
        i64_field(o, 9, c.first_frame_at_ms.unwrap_or(0));
        i64_field(o, 10, c.ended_at_ms.unwrap_or(0));
        i64_field(o, 11, r.duration_ms);
        i32_field(o, 12, r.end_reason.into());
        i32_field(o, 13, r.direction.into());
        i64_field(o, 14, r.sync_time);
        str_field(o, 15, r.owner.as_str());
    }
}

struct SummaryMsg<'a>(&'a CallSummary);

impl Msg for SummaryMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        let s = self.0;
        str_field(o, 1, s.call_id.as_str());
        str_field(o, 2, s.caller.as_str());
        str_field(o, 3, s.peer.as_str());
        i32_field(o, 4, s.media_type.into());
        i64_field(o, 5, s.started_at_ms.unwrap_or(0));
        i64_field(o, 6, s.ended_at_ms);
        i64_field(o, 7, s.duration_ms);
        i32_field(o, 8, s.end_reason.into());
        i32_field(o, 9, s.direction.into());
        i64_field(o, 10, s.created_at_ms);
    }
}

/// `pb::Event`: the kind (a oneof of messages).
struct EventMsg<'a>(&'a Event);

impl Msg for EventMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        match self.0 {
            Event::CallRecord(r) => o.message(11, &RecordMsg(r)),
            Event::Summary(s) => o.message(12, &SummaryMsg(s)),
            e => o.message(event_tag(e), &KindMsg(e)),
        }
    }
}

fn event_tag(e: &Event) -> u32 {
    match e {
        Event::IncomingCall { .. } => 1,
        Event::UsersInvited { .. } => 2,
        Event::ParticipantChanged { .. } => 3,
        Event::CallTypeChanged { .. } => 4,
        Event::CallStarted { .. } => 5,
        Event::CallEnded { .. } => 6,
        Event::MediaStateChanged { .. } => 7,
        Event::ChangeMediaTypeRequested { .. } => 8,
        Event::ChangeMediaTypeFinished { .. } => 9,
        Event::FirstFrame { .. } => 10,
        Event::CallRecord(_) => 11,
        Event::Summary(_) => 12,
        Event::MediaSignal { .. } => 13,
        Event::DeliveryChanged { .. } => 14,
        Event::Kicked { .. } => 15,
        Event::MediaRoute { .. } => 16,
    }
}

/// The message of an event's kind (the fields of `pb::IncomingCall`, `pb::UsersInvited` …).
struct KindMsg<'a>(&'a Event);

impl Msg for KindMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        match self.0 {
            Event::IncomingCall { call, inviter, extra } => {
                o.message(1, &CallMsg::shared(call));
                str_field(o, 2, inviter.as_str());
                str_field(o, 3, extra);
            }
            Event::UsersInvited { call_id, inviter, invitees, version } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, inviter.as_str());
                strs_field(o, 3, invitees);
                u64_field(o, 4, *version);
            }
            Event::ParticipantChanged { call_id, user_id, state, reason, version, device_id } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, user_id.as_str());
                i32_field(o, 3, (*state).into());
                i32_field(o, 4, reason.map_or(0, i32::from));
                u64_field(o, 5, *version);
                opt_str_field(o, 6, device_id.as_ref());
            }
            Event::CallTypeChanged { call_id, call_type, version } => {
                str_field(o, 1, call_id.as_str());
                i32_field(o, 2, (*call_type).into());
                u64_field(o, 3, *version);
            }
            Event::CallStarted { call_id, call_type, started_at_ms, version } => {
                str_field(o, 1, call_id.as_str());
                i32_field(o, 2, (*call_type).into());
                i64_field(o, 3, *started_at_ms);
                u64_field(o, 4, *version);
            }
            Event::CallEnded { call, reason } => {
                o.message(1, &CallMsg::shared(call));
                i32_field(o, 2, (*reason).into());
            }
            Event::MediaStateChanged { call_id, user_id, kind, disabled } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, user_id.as_str());
                i32_field(o, 3, (*kind).into());
                bool_field(o, 4, *disabled);
            }
            Event::ChangeMediaTypeRequested { call_id, user_id, transaction_id, media_type } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, user_id.as_str());
                str_field(o, 3, transaction_id.as_str());
                i32_field(o, 4, (*media_type).into());
            }
            Event::ChangeMediaTypeFinished {
                call_id,
                user_id,
                transaction_id,
                media_type,
                result,
                version,
            } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, user_id.as_str());
                str_field(o, 3, transaction_id.as_str());
                i32_field(o, 4, (*media_type).into());
                i32_field(o, 5, (*result).into());
                u64_field(o, 6, *version);
            }
            Event::FirstFrame { call_id, at_ms } => {
                str_field(o, 1, call_id.as_str());
                i64_field(o, 2, *at_ms);
            }
            Event::CallRecord(r) => RecordMsg(r).fields(o),
            Event::Summary(s) => SummaryMsg(s).fields(o),
            Event::MediaSignal { call_id, from_user, from_device, payload } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, from_user.as_str());
                str_field(o, 3, from_device.as_str());
                match payload {
                    MediaPayload::SdpOffer(sdp) => o.bytes(10, sdp.as_bytes()),
                    MediaPayload::SdpAnswer(sdp) => o.bytes(11, sdp.as_bytes()),
                    MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
                        o.message(12, &CandidateMsg(candidate, sdp_mid, *sdp_mline_index));
                    }
                }
            }
            Event::DeliveryChanged { call_id, user_id, delivery, devices } => {
                str_field(o, 1, call_id.as_str());
                str_field(o, 2, user_id.as_str());
                i32_field(o, 3, (*delivery).into());
                for leg in devices {
                    o.message(4, &DeviceLegMsg(leg));
                }
            }
            Event::Kicked { reason, message } => {
                i32_field(o, 1, (*reason).into());
                str_field(o, 2, message);
            }
            Event::MediaRoute { call_id, sfu } => {
                str_field(o, 1, call_id.as_str());
                if let Some(sfu) = sfu {
                    str_field(o, 2, sfu.user_id.as_str());
                    str_field(o, 3, sfu.device_id.as_str());
                    str_field(o, 4, &sfu.token);
                }
            }
        }
    }
}

struct CandidateMsg<'a>(&'a str, &'a str, u32);

impl Msg for CandidateMsg<'_> {
    fn fields<O: Out>(&self, o: &mut O) {
        str_field(o, 1, self.0);
        str_field(o, 2, self.1);
        u32_field(o, 3, self.2);
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
