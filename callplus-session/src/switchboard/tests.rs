//! Switchboard scenarios driven directly with hand-made frames and a virtual clock.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::error::{Code, Error};
use crate::model::ids::TransactionId;
use crate::model::kinds::{
    CallType, ChangeMediaTypeResult, Delivery, Direction, MediaKind, MediaType, ParticipantState,
};
use crate::model::message::{ClientBody, MediaPayload, Request, Resume, ServerFrame, StartCall};
use crate::model::snapshot::{CallRecord, PushConfig};

fn ok<T>(r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

fn uid(s: &str) -> UserId {
    ok(UserId::new(s))
}

fn app() -> AppKey {
    ok(AppKey::new("app"))
}

/// One simulated device: its numbering, what it received, and whether it hears the network.
#[derive(Debug)]
struct Dev {
    user: UserId,
    device: DeviceId,
    app: AppKey,
    next_seq: u64,
    ack: u64,
    next_rid: u64,
    inbox: Vec<ServerFrame>,
    session_id: String,
    /// Frames transmitted to a deaf device are lost in flight.
    deaf: bool,
}

struct H {
    sb: Switchboard,
    now: i64,
    devs: HashMap<ConnId, Dev>,
    outputs: Vec<Output>,
    closed: Vec<ConnId>,
    next_conn: ConnId,
    /// What storage holds for the next device that connects.
    stored_offline: Vec<OfflineEvent>,
    /// The bodies of every frame transmitted, as the switchboard shared them.
    sent: Vec<Arc<ServerBody>>,
}

impl H {
    fn new(cfg: SwitchboardConfig) -> H {
        H {
            sb: Switchboard::new(cfg),
            now: 1_000_000,
            devs: HashMap::new(),
            stored_offline: Vec::new(),
            outputs: Vec::new(),
            closed: Vec::new(),
            next_conn: 0,
            sent: Vec::new(),
        }
    }

    fn default() -> H {
        H::new(SwitchboardConfig { push_enabled: false, ..SwitchboardConfig::default() })
    }

    fn drain(&mut self) {
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Transmit { conn, frame } => {
                    let Some(d) = self.devs.get_mut(&conn) else { continue };
                    if d.deaf {
                        continue;
                    }
                    if let ServerBody::Welcome(w) = &*frame.body {
                        d.session_id = w.session_id.clone();
                        if !w.resumed {
                            d.ack = 0;
                        }
                    }
                    if frame.seq != 0 {
                        assert_eq!(frame.seq, d.ack + 1, "frames arrive in order, exactly once: {frame:?}");
                        d.ack = frame.seq;
                    }
                    d.inbox.push(frame.to_frame());
                    self.sent.push(Arc::clone(&frame.body));
                }
                Output::Close { conn } => self.closed.push(conn),
                // The storage answers a connecting device with what the test stored for it.
                Output::Query { id, query: Query::OfflineEvents, .. } => {
                    let events = std::mem::take(&mut self.stored_offline);
                    self.sb.complete_query(self.now, id, Ok(QueryAnswer::OfflineEvents(events)));
                }
                // A node alone: no other node marks anyone in a call.
                Output::Node(super::NodeOutput::CheckBusy { id, .. }) => {
                    self.sb.complete_busy(self.now, id, Vec::new());
                }
                other => self.outputs.push(other),
            }
        }
    }

    fn hello(device: &DeviceId, resume: Option<Resume>) -> Hello {
        Hello { token: "t".into(), device_id: device.clone(), resume, client_version: "test".into() }
    }

    fn connect_app(&mut self, app: AppKey, user: &str, device: &str) -> ConnId {
        self.next_conn += 1;
        let conn = self.next_conn;
        let dev = Dev {
            user: uid(user),
            device: ok(DeviceId::new(device)),
            app: app.clone(),
            next_seq: 1,
            ack: 0,
            next_rid: 1,
            inbox: Vec::new(),
            session_id: String::new(),
            deaf: false,
        };
        let hello = H::hello(&dev.device, None);
        self.devs.insert(conn, dev);
        self.sb.connect(self.now, conn, app, uid(user), hello);
        self.drain();
        conn
    }

    fn connect(&mut self, user: &str, device: &str) -> ConnId {
        self.connect_app(app(), user, device)
    }

    /// The device reconnects on a new connection, resuming (or not) its session.
    fn reconnect(&mut self, old: ConnId, resume: bool, offline: Vec<OfflineEvent>) -> ConnId {
        let Some(mut dev) = self.devs.remove(&old) else { panic!("no device {old}") };
        self.next_conn += 1;
        let conn = self.next_conn;
        dev.deaf = false;
        dev.inbox.retain(|f| !matches!(f.body, ServerBody::Welcome(_)));
        let r = resume.then(|| Resume { session_id: dev.session_id.clone(), last_received_seq: dev.ack });
        if !resume {
            dev.next_seq = 1;
        }
        let hello = H::hello(&dev.device, r);
        let (app, user) = (dev.app.clone(), dev.user.clone());
        self.devs.insert(conn, dev);
        self.stored_offline = offline;
        self.sb.connect(self.now, conn, app, user, hello);
        self.drain();
        conn
    }

    fn frame(&mut self, conn: ConnId, body: ClientBody, sequenced: bool) -> ClientFrame {
        let Some(d) = self.devs.get_mut(&conn) else { panic!("no device {conn}") };
        let seq = if sequenced {
            d.next_seq += 1;
            d.next_seq - 1
        } else {
            0
        };
        let request_id = if sequenced {
            d.next_rid += 1;
            d.next_rid - 1
        } else {
            0
        };
        ClientFrame { seq, ack: d.ack, request_id, body }
    }

    fn send_frame(&mut self, conn: ConnId, frame: ClientFrame) {
        self.sb.handle_frame(self.now, conn, frame);
        self.drain();
    }

    fn response(&mut self, conn: ConnId, rid: u64) -> Option<Result<ResponseBody, Error>> {
        let d = self.devs.get_mut(&conn)?;
        let pos =
            d.inbox.iter().position(|f| matches!(&f.body, ServerBody::Response(r) if r.request_id == rid))?;
        match d.inbox.remove(pos).body {
            ServerBody::Response(r) => Some(r.result),
            _ => None,
        }
    }

    fn req(&mut self, conn: ConnId, request: Request) -> Result<ResponseBody, Error> {
        let frame = self.frame(conn, ClientBody::Request(request), true);
        let rid = frame.request_id;
        self.send_frame(conn, frame);
        self.response(conn, rid).unwrap_or_else(|| panic!("no response to request {rid}"))
    }

    fn ping(&mut self, conn: ConnId) {
        let frame = self.frame(conn, ClientBody::Ping, false);
        self.send_frame(conn, frame);
    }

    /// Events received (and not yet looked at) by a device; other frames are discarded.
    fn events(&mut self, conn: ConnId) -> Vec<Event> {
        let Some(d) = self.devs.get_mut(&conn) else { return Vec::new() };
        let frames = std::mem::take(&mut d.inbox);
        frames
            .into_iter()
            .filter_map(|f| match f.body {
                ServerBody::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        while self.sb.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sb.handle_timeout(self.now);
            self.drain();
        }
    }

    /// Advances in steps, pinging from `alive` devices so they stay live.
    fn advance_pinging(&mut self, ms: i64, alive: &[ConnId]) {
        let step = 5_000;
        let mut left = ms;
        while left > 0 {
            let d = left.min(step);
            self.advance(d);
            left -= d;
            for &c in alive {
                self.ping(c);
            }
        }
    }

    fn start(&mut self, conn: ConnId, callees: &[&str], call_type: CallType, media: MediaType) -> CallInfo {
        match self.start_full(conn, callees, call_type, media, None) {
            Ok(ResponseBody::Started { call, .. }) => Arc::unwrap_or_clone(call),
            other => panic!("start failed: {other:?}"),
        }
    }

    fn start_full(
        &mut self,
        conn: ConnId,
        callees: &[&str],
        call_type: CallType,
        media: MediaType,
        ring_timeout_ms: Option<u32>,
    ) -> Result<ResponseBody, Error> {
        self.req(
            conn,
            Request::StartCall(StartCall {
                callees: callees.iter().map(|c| uid(c)).collect(),
                call_type,
                media_type: media,
                push: None,
                extra: String::new(),
                ring_timeout_ms,
            }),
        )
    }

    fn single(&mut self, conn: ConnId, callee: &str) -> CallId {
        self.start(conn, &[callee], CallType::Single, MediaType::AudioVideo).call_id
    }

    fn accept(&mut self, conn: ConnId, id: &CallId) -> Result<ResponseBody, Error> {
        self.req(conn, Request::Accept { call_id: id.clone() })
    }

    fn hangup(&mut self, conn: ConnId, id: &CallId) -> Result<ResponseBody, Error> {
        self.req(conn, Request::Hangup { call_id: id.clone(), push: None })
    }

    /// A connected 1:1 call between a1 (caller) and b1.
    fn connected_pair(&mut self) -> (ConnId, ConnId, CallId) {
        let a = self.connect("alice", "a1");
        let b = self.connect("bob", "b1");
        let id = self.single(a, "bob");
        ok(self.accept(b, &id));
        self.events(a);
        self.events(b);
        (a, b, id)
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    match r {
        Err(e) => e.code,
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn ended_reason(events: &[Event], id: &CallId) -> Option<EndReason> {
    let mut reasons = events.iter().filter_map(|e| match e {
        Event::CallEnded { call, reason } if &call.call_id == id => Some(*reason),
        _ => None,
    });
    let first = reasons.next();
    assert!(reasons.next().is_none(), "CallEnded at most once per device: {events:?}");
    first
}

fn records(outputs: &[Output]) -> Vec<&CallRecord> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::StoreRecord { record, .. } => Some(record),
            _ => None,
        })
        .collect()
}

fn has_summary(events: &[Event], id: &CallId) -> bool {
    events.iter().any(|e| matches!(e, Event::Summary(s) if &s.call_id == id))
}

fn stored_offline<'a>(outputs: &'a [Output], who: &str) -> Vec<&'a Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::StoreOffline { user, event, .. } if user.as_str() == who => Some(event),
            _ => None,
        })
        .collect()
}

// ----- 1:1 calls ---------------------------------------------------------------------------------

#[test]
fn one_to_one_accept_and_hangup() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let t0 = h.now;
    let id = h.single(a, "bob");
    assert_eq!(h.sb.live_calls(), 1);
    let ev = h.events(b);
    assert!(
        matches!(&ev[..], [Event::IncomingCall { call, inviter, .. }] if call.call_id == id && inviter.as_str() == "alice")
    );
    // The callee's device acks the invitation: the caller sees it delivered.
    h.ping(b);
    let ev = h.events(a);
    assert!(
        ev.iter().any(|e| matches!(e, Event::DeliveryChanged { delivery: Delivery::Delivered, devices, .. } if devices.len() == 1)),
        "{ev:?}"
    );
    h.advance_pinging(2_000, &[a, b]);
    let t_accept = h.now;
    let info = match h.accept(b, &id) {
        Ok(ResponseBody::Call(info)) => info,
        other => panic!("{other:?}"),
    };
    assert_eq!(info.started_at_ms, Some(t_accept));
    assert!(info.participants.iter().all(|p| p.state == ParticipantState::OnCall));
    let ev = h.events(a);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::CallStarted { started_at_ms, .. } if *started_at_ms == t_accept))
    );
    assert!(
        ev.iter().any(|e| matches!(e, Event::ParticipantChanged { state: ParticipantState::OnCall, .. }))
    );
    assert!(h.events(b).iter().any(|e| matches!(e, Event::CallStarted { .. })));
    h.advance_pinging(10_000, &[a, b]);
    let t_end = h.now;
    h.outputs();
    assert_eq!(h.hangup(a, &id), Ok(ResponseBody::Empty));
    let (ea, eb) = (h.events(a), h.events(b));
    assert_eq!(ended_reason(&ea, &id), None, "the response tells the device that hung up");
    assert!(ea.iter().any(|e| matches!(e, Event::Summary(s) if s.end_reason == EndReason::Hangup)));
    assert_eq!(ended_reason(&eb, &id), Some(EndReason::RemoteHangup));
    assert!(has_summary(&ea, &id) && has_summary(&eb, &id));
    assert!(ea.iter().any(|e| matches!(e, Event::CallRecord(r) if r.owner.as_str() == "alice")));
    let out = h.outputs();
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert_eq!(r.call.created_at_ms, t0);
        assert_eq!(r.call.started_at_ms, Some(t_accept));
        assert_eq!(r.call.ended_at_ms, Some(t_end));
        assert_eq!(r.duration_ms, t_end - t_accept);
    }
    assert_eq!(recs[0].direction, Direction::Outgoing);
    assert_eq!(recs[1].direction, Direction::Incoming);
    assert_eq!(recs[1].end_reason, EndReason::RemoteHangup);
    assert!(recs[1].sync_time > recs[0].sync_time);
    assert!(recs[1].call.participants[1].devices.iter().any(|d| d.delivery == Delivery::Delivered));
    assert!(out.iter().any(|o| matches!(o, Output::ForgetCall { call_id, .. } if call_id == &id)));
    assert_eq!(h.sb.live_calls(), 0);
    assert!(!h.sb.is_call_live(&app(), &id));
    // Ended calls stay visible to participants for a while (docs/protocol.md#call-state-query).
    assert!(
        matches!(h.req(b, Request::GetCall { call_id: id.clone() }), Ok(ResponseBody::Call(c)) if c.is_ended())
    );
    // Acting on it now says so.
    assert_eq!(code(h.hangup(b, &id)), Code::CallEnded);
}

#[test]
fn reject_and_cancel() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.single(a, "bob");
    h.events(b);
    ok(h.hangup(b, &id));
    let eb = h.events(b);
    assert_eq!(ended_reason(&eb, &id), None);
    assert!(eb.iter().any(|e| matches!(e, Event::Summary(s) if s.end_reason == EndReason::Reject)));
    let ea = h.events(a);
    assert_eq!(ended_reason(&ea, &id), Some(EndReason::RemoteReject));
    assert!(ea.iter().any(
        |e| matches!(e, Event::Summary(s) if s.end_reason == EndReason::RemoteReject && s.duration_ms == 0)
    ));

    let id = h.single(a, "bob");
    ok(h.hangup(a, &id));
    assert!(h.events(a).iter().any(|e| matches!(e, Event::Summary(s) if s.end_reason == EndReason::Cancel)));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteCancel));
    let out = h.outputs();
    let recs = records(&out);
    assert_eq!(recs.len(), 4);
    assert!(recs.iter().all(|r| r.duration_ms == 0 && r.call.started_at_ms.is_none()));
}

#[test]
fn ring_timeout_is_no_response_when_delivered() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.single(a, "bob");
    h.ping(b); // acks the invitation
    h.advance_pinging(59_000, &[a, b]);
    assert!(h.sb.is_call_live(&app(), &id));
    h.advance_pinging(1_000, &[a, b]);
    assert!(!h.sb.is_call_live(&app(), &id));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::NoResponse));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteNoResponse));
}

#[test]
fn unreachable_callee_is_offline_and_gets_the_summary_stored() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let id = h.single(a, "bob");
    assert!(h.outputs().iter().all(|o| !matches!(o, Output::Push(_))), "push is disabled");
    h.advance_pinging(60_000, &[a]);
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteOffline));
    let out = h.outputs();
    let stored = stored_offline(&out, "bob");
    assert!(stored.iter().any(|e| matches!(e, Event::Summary(s) if s.end_reason == EndReason::Offline)));
    assert!(stored.iter().any(|e| matches!(e, Event::CallRecord(_))));
    // Bob connects later and gets them; acking deletes them from storage.
    let offline: Vec<OfflineEvent> = stored
        .into_iter()
        .enumerate()
        .map(|(i, e)| OfflineEvent { id: i as i64 + 10, event: e.clone() })
        .collect();
    let n = offline.len();
    h.next_conn += 1;
    let conn = h.next_conn;
    let device = ok(DeviceId::new("b1"));
    h.devs.insert(
        conn,
        Dev {
            user: uid("bob"),
            device: device.clone(),
            app: app(),
            next_seq: 1,
            ack: 0,
            next_rid: 1,
            inbox: Vec::new(),
            session_id: String::new(),
            deaf: false,
        },
    );
    h.stored_offline = offline;
    h.sb.connect(h.now, conn, app(), uid("bob"), H::hello(&device, None));
    h.drain();
    let ev = h.events(conn);
    assert_eq!(ev.len(), n);
    assert!(has_summary(&ev, &id));
    h.ping(conn);
    let out = h.outputs();
    assert!(out.iter().any(|o| matches!(o, Output::OfflineDelivered { ids, .. } if ids.len() == n)));
}

#[test]
fn pushed_callee_times_out_as_no_response() {
    let mut h = H::new(SwitchboardConfig::default());
    let a = h.connect("alice", "a1");
    let id = h.single(a, "bob");
    let out = h.outputs();
    assert!(
        out.iter().any(|o| matches!(o, Output::Push(p) if p.callee.as_str() == "bob" && p.call_id == id))
    );
    // forceKeepCalling: a device that connects in time still rings.
    h.advance_pinging(30_000, &[a]);
    let b = h.connect("bob", "b1");
    assert!(h.events(b).iter().any(|e| matches!(e, Event::IncomingCall { call, .. } if call.call_id == id)));
    // The invitation is marked delivered once that device acks it.
    h.ping(b);
    assert!(
        h.events(a).iter().any(|e| matches!(e, Event::DeliveryChanged { delivery: Delivery::Delivered, .. }))
    );
    h.advance_pinging(30_000, &[a, b]);
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteNoResponse));
}

/// A caller who cancels sends a cancel push, with the push config of the hangup, to each
/// callee who was pushed the invitation and was still being rung; not to a callee reached on a
/// device only, not after an answer, and not with `disable_push`.
#[test]
fn a_cancelled_call_pushes_its_cancel_to_the_pushed_callees() {
    let cancels = |out: &[Output]| -> Vec<(String, Option<String>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Push(p) if p.kind == PushKind::Cancel => {
                    Some((p.callee.as_str().to_owned(), p.push_config.as_ref().map(|c| c.title.clone())))
                }
                _ => None,
            })
            .collect()
    };
    let hangup_with = |call_id: &CallId, title: &str, disable_push: bool| Request::Hangup {
        call_id: call_id.clone(),
        push: Some(Box::new(PushConfig { title: title.into(), disable_push, ..PushConfig::default() })),
    };
    let mut h = H::new(SwitchboardConfig::default());
    let a = h.connect("alice", "a1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol", "dave"], CallType::Multi, MediaType::Audio).call_id;
    let invites: Vec<String> = h
        .outputs()
        .iter()
        .filter_map(|o| match o {
            Output::Push(p) if p.kind == PushKind::Invite => Some(p.callee.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(invites, vec!["bob", "dave"], "carol has a device: not pushed");
    h.events(c);
    ok(h.req(a, hangup_with(&id, "Missed call", false)));
    assert_eq!(ended_reason(&h.events(c), &id), Some(EndReason::RemoteCancel));
    let out = h.outputs();
    assert_eq!(
        cancels(&out),
        vec![("bob".into(), Some("Missed call".into())), ("dave".into(), Some("Missed call".into()))]
    );

    // disable_push, or no push settings at all: nothing.
    let id = h.single(a, "bob");
    h.outputs();
    ok(h.req(a, hangup_with(&id, "t", true)));
    assert_eq!(cancels(&h.outputs()), vec![]);
    let id = h.single(a, "bob");
    h.outputs();
    ok(h.hangup(a, &id));
    assert_eq!(cancels(&h.outputs()), vec![]);

    // Answered, then hung up: no cancel.
    let id = h.single(a, "bob");
    let b = h.connect("bob", "b1");
    ok(h.accept(b, &id));
    h.outputs();
    ok(h.req(a, hangup_with(&id, "t", false)));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteHangup));
    assert_eq!(cancels(&h.outputs()), vec![]);
}

#[test]
fn ring_timeout_override_and_never() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = match h.start_full(a, &["bob"], CallType::Single, MediaType::Audio, Some(5_000)) {
        Ok(ResponseBody::Started { call, .. }) => call.call_id.clone(),
        other => panic!("{other:?}"),
    };
    h.advance_pinging(5_000, &[a, b]);
    assert!(!h.sb.is_call_live(&app(), &id));
    let id = match h.start_full(a, &["bob"], CallType::Single, MediaType::Audio, Some(0)) {
        Ok(ResponseBody::Started { call, .. }) => call.call_id.clone(),
        other => panic!("{other:?}"),
    };
    h.advance_pinging(600_000, &[a, b]);
    assert!(h.sb.is_call_live(&app(), &id), "0 = ring until answered");
}

// ----- busy, multi-device, accept another call -----------------------------------------------------

#[test]
fn busy_callee_still_rings_and_caller_is_told() {
    let mut h = H::default();
    let (_a, b, _id) = h.connected_pair();
    let c = h.connect("carol", "c1");
    match h.start_full(c, &["bob"], CallType::Single, MediaType::Audio, None) {
        Ok(ResponseBody::Started { busy, .. }) => assert_eq!(busy, vec![uid("bob")]),
        other => panic!("{other:?}"),
    }
    assert!(h.events(b).iter().any(|e| matches!(e, Event::IncomingCall { .. })), "call waiting");
}

#[test]
fn busy_callee_auto_rejected() {
    let mut h = H::new(SwitchboardConfig {
        busy_policy: BusyPolicy::AutoReject,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let (_a, b, _id) = h.connected_pair();
    let c = h.connect("carol", "c1");
    let call = match h.start_full(c, &["bob"], CallType::Single, MediaType::Audio, None) {
        Ok(ResponseBody::Started { call, busy }) => {
            assert_eq!(busy, vec![uid("bob")]);
            call
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(ended_reason(&h.events(c), &call.call_id), Some(EndReason::RemoteBusy));
    let eb = h.events(b);
    assert!(!eb.iter().any(|e| matches!(e, Event::IncomingCall { .. })), "never rung");
    assert!(eb.iter().any(|e| matches!(e, Event::Summary(s) if s.end_reason == EndReason::Busy)));
    assert_eq!(h.sb.live_calls(), 1);
}

#[test]
fn multi_device_accept_on_other_device() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b1 = h.connect("bob", "b1");
    let b2 = h.connect("bob", "b2");
    let id = h.single(a, "bob");
    assert!(h.events(b1).iter().any(|e| matches!(e, Event::IncomingCall { .. })));
    assert!(h.events(b2).iter().any(|e| matches!(e, Event::IncomingCall { .. })));
    ok(h.req(b1, Request::Ringing { call_id: id.clone() }));
    let ea = h.events(a);
    assert!(
        ea.iter().any(|e| matches!(e, Event::ParticipantChanged { state: ParticipantState::Ringing, .. }))
    );
    assert!(ea.iter().any(|e| matches!(e, Event::DeliveryChanged { delivery: Delivery::Ringing, .. })));
    ok(h.accept(b2, &id));
    assert_eq!(ended_reason(&h.events(b1), &id), Some(EndReason::AcceptedOnOtherDevice));
    assert_eq!(code(h.accept(b1, &id)), Code::InvalidState);
    h.events(b2);
    ok(h.req(a, Request::SetMediaState { call_id: id.clone(), kind: MediaKind::Audio, disabled: true }));
    assert!(h.events(b1).is_empty(), "only the answering device follows the call");
    assert!(!h.events(b2).is_empty());
    ok(h.hangup(a, &id));
    let e1 = h.events(b1);
    assert_eq!(ended_reason(&e1, &id), None);
    assert!(has_summary(&e1, &id), "summaries go to every device of the user");
    assert_eq!(ended_reason(&h.events(b2), &id), Some(EndReason::RemoteHangup));
}

#[test]
fn multi_device_reject_on_other_device() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b1 = h.connect("bob", "b1");
    let b2 = h.connect("bob", "b2");
    let id = h.single(a, "bob");
    ok(h.hangup(b1, &id));
    assert_eq!(ended_reason(&h.events(b1), &id), None, "the rejecting device has its response");
    assert_eq!(ended_reason(&h.events(b2), &id), Some(EndReason::RejectedOnOtherDevice));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteReject));
}

#[test]
fn accept_while_in_another_call_ends_the_old_one() {
    let mut h = H::default();
    let (a, b, first) = h.connected_pair();
    let c = h.connect("carol", "c1");
    let second = h.single(c, "bob");
    h.events(b);
    ok(h.accept(b, &second));
    let eb = h.events(b);
    assert_eq!(ended_reason(&eb, &first), Some(EndReason::AcceptedAnotherCall));
    assert_eq!(ended_reason(&h.events(a), &first), Some(EndReason::RemoteAcceptedAnotherCall));
    assert!(h.sb.is_call_live(&app(), &second));
    assert!(!h.sb.is_call_live(&app(), &first));
    assert!(h.events(c).iter().any(|e| matches!(e, Event::CallStarted { .. })));
}

#[test]
fn session_exist_on_the_server() {
    let mut h = H::default();
    let (a, _b, _id) = h.connected_pair();
    let r = h.start_full(a, &["carol"], CallType::Single, MediaType::Audio, None);
    assert_eq!(code(r), Code::SessionExist);
    // Another device of the same user may call.
    let a2 = h.connect("alice", "a2");
    assert!(h.start_full(a2, &["carol"], CallType::Single, MediaType::Audio, None).is_ok());
}

#[test]
fn start_call_validation() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let r = h.start_full(a, &["bob", "carol"], CallType::Single, MediaType::Audio, None);
    assert_eq!(code(r), Code::SingleCallNotSupportMultiPerson);
    assert_eq!(code(h.start_full(a, &[], CallType::Multi, MediaType::Audio, None)), Code::UserListInvalid);
    assert_eq!(
        code(h.start_full(a, &["alice"], CallType::Single, MediaType::Audio, None)),
        Code::UserListInvalid
    );
    assert_eq!(h.sb.live_calls(), 0);
}

// ----- group calls ---------------------------------------------------------------------------------

#[test]
fn invite_turns_single_into_multi() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    let c = h.connect("carol", "c1");
    let r = h.req(
        a,
        Request::Invite { call_id: id.clone(), users: vec![uid("carol")], push: None, extra: "x".into() },
    );
    assert_eq!(r, Ok(ResponseBody::Busy(Vec::new())));
    for conn in [a, b] {
        let ev = h.events(conn);
        assert!(ev.iter().any(|e| matches!(e, Event::CallTypeChanged { call_type: CallType::Multi, .. })));
        assert!(
            ev.iter().any(
                |e| matches!(e, Event::UsersInvited { invitees, .. } if invitees == &vec![uid("carol")])
            )
        );
    }
    let ec = h.events(c);
    assert!(
        matches!(&ec[..], [Event::IncomingCall { call, extra, .. }] if call.call_type == CallType::Multi && extra == "x")
    );
    // Re-inviting an active participant is a no-op; a stranger cannot invite.
    let r = h.req(
        a,
        Request::Invite { call_id: id.clone(), users: vec![uid("carol")], push: None, extra: String::new() },
    );
    assert!(r.is_ok());
    assert!(h.events(c).is_empty());
    let d = h.connect("dave", "d1");
    let r = h.req(
        d,
        Request::Invite { call_id: id.clone(), users: vec![uid("erin")], push: None, extra: String::new() },
    );
    assert_eq!(code(r), Code::CallNotFound);
}

#[test]
fn multi_leave_continue_and_end() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    ok(h.accept(c, &id));
    h.events(a);
    h.events(b);
    h.events(c);
    ok(h.hangup(b, &id));
    assert!(h.sb.is_call_live(&app(), &id), "a group call goes on");
    assert!(h.events(b).is_empty(), "nothing more about the call for the device that left");
    for conn in [a, c] {
        assert!(h.events(conn).iter().any(|e| matches!(e,
            Event::ParticipantChanged { state: ParticipantState::Ended, reason: Some(EndReason::Hangup), user_id, .. }
            if user_id.as_str() == "bob")));
    }
    // Available calls list it for a participant.
    assert!(matches!(h.req(b, Request::GetAvailableCalls), Ok(ResponseBody::Calls(l)) if l.len() == 1));
    h.outputs();
    ok(h.hangup(c, &id));
    assert!(!h.sb.is_call_live(&app(), &id));
    let ea = h.events(a);
    assert_eq!(ended_reason(&ea, &id), Some(EndReason::RemoteHangup));
    assert!(!has_summary(&ea, &id), "no summary for group calls");
    let out = h.outputs();
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    let bob = recs.iter().find(|r| r.owner.as_str() == "bob").map(|r| r.end_reason);
    assert_eq!(bob, Some(EndReason::Hangup));
}

#[test]
fn those_who_left_a_group_call_hear_whom_it_invited() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let d = h.connect("dave", "d1");
    let f = h.connect("frank", "f1");
    // Gina is offline: never reached, her invitation times out.
    let id =
        h.start(a, &["bob", "carol", "dave", "frank", "gina"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    ok(h.accept(c, &id));
    ok(h.hangup(d, &id)); // dave refuses
    ok(h.accept(f, &id));
    ok(h.hangup(b, &id)); // bob leaves
    assert_eq!(h.sb.end_call_by_server(h.now, &app(), &id, Some(&uid("frank"))), Ok(ServerEnd::Done));
    h.drain();
    h.advance_pinging(61_000, &[a, b, c, d, f]);
    assert!(h.sb.is_call_live(&app(), &id));
    let g = h.connect("gina", "g1");
    for conn in [a, b, c, d, f, g] {
        h.events(conn);
    }
    let e = h.connect("erin", "e1");
    let r = h.req(
        a,
        Request::Invite { call_id: id.clone(), users: vec![uid("erin")], push: None, extra: String::new() },
    );
    assert_eq!(r, Ok(ResponseBody::Busy(Vec::new())));
    let told = |events: &[Event]| {
        events.iter().any(|ev| {
            matches!(ev, Event::UsersInvited { invitees, inviter, call_id, .. }
                if invitees == &vec![uid("erin")] && inviter == &uid("alice") && call_id == &id)
        })
    };
    assert!(told(&h.events(c)), "a participant on the call");
    assert!(told(&h.events(b)), "one who left");
    assert!(told(&h.events(d)), "one who refused");
    let ef = h.events(f);
    assert!(ef.is_empty(), "one the operator removed hears nothing: {ef:?}");
    assert!(!told(&h.events(e)), "the invitee is rung instead");
    assert!(!told(&h.events(g)), "one whose app never had the call");
    assert!(told(&h.events(a)), "the inviter, as every participant");
}

#[test]
fn the_operator_signs_out_one_device_then_every_device() {
    let mut h = H::default();
    let (a, phone, id) = h.connected_pair();
    let tablet = h.connect("bob", "b2");
    let other_app_bob = h.connect_app(ok(AppKey::new("other")), "bob", "b1");
    h.outputs();
    let kicked = |events: &[Event]| {
        events.iter().any(|e| matches!(e, Event::Kicked { reason: EndReason::KickedByServer, .. }))
    };
    let bob = uid("bob");
    let b2 = ok(DeviceId::new("b2"));
    assert_eq!(h.sb.sign_out_by_server(h.now, &app(), &bob, Some(&b2)), Ok(1));
    h.drain();
    assert!(kicked(&h.events(tablet)) && h.closed.contains(&tablet), "the tablet is told and closed");
    assert!(h.sb.is_call_live(&app(), &id), "the phone's call goes on");
    assert!(h.events(phone).is_empty() && h.events(a).is_empty());

    assert_eq!(h.sb.sign_out_by_server(h.now, &app(), &bob, None), Ok(1));
    h.drain();
    assert!(kicked(&h.events(phone)) && h.closed.contains(&phone));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteKickedByServer));
    assert!(!h.sb.is_call_live(&app(), &id));
    assert!(
        h.events(other_app_bob).is_empty() && !h.closed.contains(&other_app_bob),
        "another app's bob stays"
    );
    assert_eq!(h.sb.sign_out_by_server(h.now, &app(), &bob, None), Ok(0), "nobody left");
}

#[test]
fn a_device_signed_out_of_a_group_call_is_no_removal_of_its_user() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let tablet = h.connect("bob", "b1");
    let phone = h.connect("bob", "b2");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(tablet, &id));
    ok(h.accept(c, &id));
    let b1 = ok(DeviceId::new("b1"));
    assert_eq!(h.sb.sign_out_by_server(h.now, &app(), &uid("bob"), Some(&b1)), Ok(1));
    h.drain();
    assert!(h.sb.is_call_live(&app(), &id), "alice and carol go on");
    // Bob's phone may take him back: the call is listed, joining works.
    h.events(phone);
    assert!(matches!(h.req(phone, Request::GetAvailableCalls), Ok(ResponseBody::Calls(l)) if l.len() == 1));
    ok(h.req(phone, Request::JoinCall { call_id: id.clone() }));
}

#[test]
fn a_device_away_when_signed_out_is_told_on_its_return() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    h.sb.connection_lost(h.now, b);
    assert_eq!(h.sb.sign_out_by_server(h.now, &app(), &uid("bob"), None), Ok(1));
    h.drain();
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteKickedByServer));
    h.advance(1_000);
    let back = h.reconnect(b, true, Vec::new());
    let frames = h.devs.get(&back).map(|d| d.inbox.clone()).unwrap_or_default();
    assert!(
        matches!(frames.as_slice(), [f] if matches!(&f.body,
            ServerBody::Event(Event::Kicked { reason: EndReason::KickedByServer, .. }))),
        "the resume is answered with the kick, not a Welcome: {frames:?}"
    );
    assert!(h.closed.contains(&back));
    // Past the resume window it is an ordinary device again (a fresh Hello was always one).
    h.advance(i64::from(SwitchboardConfig::default().resume_window_ms));
    let later = h.reconnect(back, true, Vec::new());
    let frames = h.devs.get(&later).map(|d| d.inbox.clone()).unwrap_or_default();
    assert!(frames.iter().any(|f| matches!(&f.body, ServerBody::Welcome(w) if !w.resumed)), "{frames:?}");
}

#[test]
fn a_late_joiner_is_told_when_the_call_started_and_its_first_frame() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    h.advance_pinging(1_000, &[a, b, c]);
    let started = h.now;
    ok(h.accept(b, &id));
    h.advance_pinging(500, &[a, b, c]);
    let first_frame = h.now;
    ok(h.req(b, Request::ReportFirstFrame { call_id: id.clone() }));
    h.events(a);
    h.events(b);
    let before_answer = h.events(c);
    assert!(!before_answer.iter().any(|e| matches!(e, Event::CallStarted { .. } | Event::FirstFrame { .. })));
    h.advance_pinging(2_000, &[a, b, c]);
    ok(h.accept(c, &id));
    let times = |events: &[Event]| {
        let started = events.iter().find_map(|e| match e {
            Event::CallStarted { started_at_ms, .. } => Some(*started_at_ms),
            _ => None,
        });
        let first = events.iter().find_map(|e| match e {
            Event::FirstFrame { at_ms, .. } => Some(*at_ms),
            _ => None,
        });
        (started, first)
    };
    assert_eq!(
        times(&h.events(c)),
        (Some(started), Some(first_frame)),
        "carol's timer starts with the call's"
    );
    assert_eq!(times(&h.events(a)), (None, None), "the others were told once");
    // Leaving and joining again: told again, on the device that joins.
    ok(h.hangup(c, &id));
    h.events(c);
    h.advance_pinging(1_000, &[a, b, c]);
    ok(h.req(c, Request::JoinCall { call_id: id.clone() }));
    assert_eq!(times(&h.events(c)), (Some(started), Some(first_frame)));
    assert_eq!(times(&h.events(b)), (None, None));
}

#[test]
fn multi_creator_cancel_stops_the_ringing() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.hangup(a, &id));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteCancel));
    let out = h.outputs();
    let alice = records(&out).into_iter().find(|r| r.owner.as_str() == "alice").map(|r| r.end_reason);
    assert_eq!(alice, Some(EndReason::Cancel));
}

#[test]
fn join_and_stranger_refused() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let d = h.connect("dave", "d1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    ok(h.hangup(c, &id)); // rejects
    assert_eq!(code(h.accept(c, &id)), Code::NotInCall);
    match h.req(c, Request::JoinCall { call_id: id.clone() }) {
        Ok(ResponseBody::Call(info)) => {
            assert_eq!(info.participant(&uid("carol")).map(|p| p.state), Some(ParticipantState::OnCall));
        }
        other => panic!("{other:?}"),
    }
    assert!(h.events(a).iter().any(|e| matches!(e, Event::ParticipantChanged { state: ParticipantState::OnCall, user_id, .. } if user_id.as_str() == "carol")));
    assert_eq!(code(h.req(d, Request::JoinCall { call_id: id.clone() })), Code::CallNotFound);
    assert_eq!(code(h.req(d, Request::GetCall { call_id: id.clone() })), Code::CallNotFound);
    // SINGLE calls cannot be joined.
    let e = h.connect("erin", "e1");
    let single = h.single(e, "dave");
    assert_eq!(code(h.req(d, Request::JoinCall { call_id: single })), Code::SingleCallNotSupportMultiPerson);
}

#[test]
fn group_limit_is_call_full() {
    let mut h = H::new(SwitchboardConfig {
        max_audio_participants: 3,
        max_video_participants: 2,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let a = h.connect("alice", "a1");
    let r = h.start_full(a, &["b", "c", "d"], CallType::Multi, MediaType::Audio, None);
    assert_eq!(code(r), Code::CallFull);
    let r = h.start_full(a, &["b", "c"], CallType::Multi, MediaType::AudioVideo, None);
    assert_eq!(code(r), Code::CallFull);
    let id = h.start(a, &["b", "c"], CallType::Multi, MediaType::Audio).call_id;
    let b = h.connect("b", "b1");
    ok(h.accept(b, &id));
    let r = h.req(
        a,
        Request::Invite { call_id: id.clone(), users: vec![uid("d")], push: None, extra: String::new() },
    );
    assert_eq!(code(r), Code::CallFull);
    // c declines; now d fits, and c cannot join back while full.
    let c = h.connect("c", "c1");
    ok(h.hangup(c, &id));
    let r = h.req(
        a,
        Request::Invite { call_id: id.clone(), users: vec![uid("d")], push: None, extra: String::new() },
    );
    assert!(r.is_ok());
    assert_eq!(code(h.req(c, Request::JoinCall { call_id: id.clone() })), Code::CallFull);
}

// ----- media -------------------------------------------------------------------------------------

fn tx_of(r: Result<ResponseBody, Error>) -> TransactionId {
    match r {
        Ok(ResponseBody::Transaction(tx)) => tx,
        other => panic!("{other:?}"),
    }
}

fn finished(events: &[Event]) -> Vec<(TransactionId, ChangeMediaTypeResult, MediaType)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChangeMediaTypeFinished { transaction_id, result, media_type, .. } => {
                Some((transaction_id.clone(), *result, *media_type))
            }
            _ => None,
        })
        .collect()
}

fn audio_pair(h: &mut H) -> (ConnId, ConnId, CallId) {
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.start(a, &["bob"], CallType::Single, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    h.events(a);
    h.events(b);
    (a, b, id)
}

#[test]
fn change_media_type_outcomes() {
    let mut h = H::default();
    let (a, b, id) = audio_pair(&mut h);
    let change = |m| Request::RequestChangeMediaType { call_id: id.clone(), media_type: m };
    // Same type.
    assert_eq!(code(h.req(a, change(MediaType::Audio))), Code::MediaTypeInvalid);
    // Rejected.
    let tx = tx_of(h.req(a, change(MediaType::AudioVideo)));
    assert!(h.events(b).iter().any(
        |e| matches!(e, Event::ChangeMediaTypeRequested { transaction_id, .. } if transaction_id == &tx)
    ));
    assert_eq!(code(h.req(a, change(MediaType::AudioVideo))), Code::InvalidState, "already pending");
    let reply = |tx: &TransactionId, agree| Request::ReplyChangeMediaType {
        call_id: id.clone(),
        transaction_id: tx.clone(),
        agree,
    };
    assert_eq!(code(h.req(a, reply(&tx, true))), Code::TransactionIdInvalid, "requester cannot reply");
    ok(h.req(b, reply(&tx, false)));
    for conn in [a, b] {
        assert_eq!(
            finished(&h.events(conn)),
            vec![(tx.clone(), ChangeMediaTypeResult::Rejected, MediaType::Audio)]
        );
    }
    // Cancelled.
    let tx = tx_of(h.req(a, change(MediaType::AudioVideo)));
    ok(h.req(a, Request::CancelChangeMediaType { call_id: id.clone(), transaction_id: tx.clone() }));
    assert_eq!(
        finished(&h.events(b)),
        vec![(tx.clone(), ChangeMediaTypeResult::Cancelled, MediaType::Audio)]
    );
    assert_eq!(code(h.req(b, reply(&tx, true))), Code::TransactionIdInvalid, "finished");
    // Timeout.
    let tx = tx_of(h.req(b, change(MediaType::AudioVideo)));
    h.events(a);
    h.advance_pinging(30_000, &[a, b]);
    assert_eq!(finished(&h.events(a)), vec![(tx.clone(), ChangeMediaTypeResult::Timeout, MediaType::Audio)]);
    assert_eq!(finished(&h.events(b)), vec![(tx, ChangeMediaTypeResult::Timeout, MediaType::Audio)]);
    // Conflict: both ask at once.
    let t1 = tx_of(h.req(a, change(MediaType::AudioVideo)));
    let t2 = tx_of(h.req(b, change(MediaType::AudioVideo)));
    let fa = finished(&h.events(a));
    assert_eq!(
        fa,
        vec![
            (t1.clone(), ChangeMediaTypeResult::Conflict, MediaType::Audio),
            (t2.clone(), ChangeMediaTypeResult::Conflict, MediaType::Audio)
        ]
    );
    assert_eq!(finished(&h.events(b)), fa);
    // Accepted.
    let tx = tx_of(h.req(a, change(MediaType::AudioVideo)));
    let v0 = h.sb.call(&app(), &id).map(|c| c.version).unwrap_or_default();
    ok(h.req(b, reply(&tx, true)));
    assert_eq!(finished(&h.events(a)), vec![(tx, ChangeMediaTypeResult::Accepted, MediaType::AudioVideo)]);
    let info = h.sb.call(&app(), &id).unwrap_or_else(|| panic!("call"));
    assert_eq!(info.media_type, MediaType::AudioVideo);
    assert!(info.version > v0);
    // Downgrade needs no agreement.
    h.events(b);
    let tx = tx_of(h.req(b, change(MediaType::Audio)));
    assert_eq!(finished(&h.events(a)), vec![(tx, ChangeMediaTypeResult::Accepted, MediaType::Audio)]);
    // Unknown transaction.
    let bogus = ok(TransactionId::new("nope"));
    assert_eq!(code(h.req(b, reply(&bogus, true))), Code::TransactionIdInvalid);
}

#[test]
fn change_media_type_not_in_multi() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    let r = h.req(a, Request::RequestChangeMediaType { call_id: id, media_type: MediaType::AudioVideo });
    assert_eq!(code(r), Code::InvalidState);
}

#[test]
fn media_state_first_frame_and_signals() {
    let mut h = H::default();
    let (a, b, id) = audio_pair(&mut h);
    let set = |kind, disabled| Request::SetMediaState { call_id: id.clone(), kind, disabled };
    assert_eq!(code(h.req(a, set(MediaKind::Video, false))), Code::NotVideoCall);
    ok(h.req(a, set(MediaKind::Audio, true)));
    assert!(h.events(b).iter().any(|e| matches!(e, Event::MediaStateChanged { kind: MediaKind::Audio, disabled: true, user_id, .. } if user_id.as_str() == "alice")));
    assert_eq!(
        h.sb.call(&app(), &id).and_then(|c| c.participant(&uid("alice")).map(|p| p.microphone_disabled)),
        Some(true)
    );
    let t = h.now;
    ok(h.req(b, Request::ReportFirstFrame { call_id: id.clone() }));
    ok(h.req(a, Request::ReportFirstFrame { call_id: id.clone() }));
    let ea = h.events(a);
    assert_eq!(ea.iter().filter(|e| matches!(e, Event::FirstFrame { .. })).count(), 1);
    assert_eq!(h.sb.call(&app(), &id).and_then(|c| c.first_frame_at_ms), Some(t));
    h.events(b);
    let signal = |to: &str, dev: &str| Request::MediaSignal {
        call_id: id.clone(),
        to_user: uid(to),
        to_device: ok(DeviceId::new(dev)),
        payload: MediaPayload::SdpOffer("v=0".into()),
    };
    ok(h.req(a, signal("bob", "b1")));
    assert!(
        matches!(&h.events(b)[..], [Event::MediaSignal { from_device, .. }] if from_device.as_str() == "a1")
    );
    assert_eq!(code(h.req(a, signal("bob", "b9"))), Code::NotInCall);
    let c = h.connect("carol", "c1");
    assert_eq!(code(h.req(c, signal("bob", "b1"))), Code::CallNotFound);
    assert!(h.events(b).is_empty());
}

#[test]
fn multi_calls_are_routed_through_the_sfu_and_only_participants_reach_it() {
    let mut h = H::default();
    h.sb.set_media_router(MediaRouter {
        sfu_user: uid("callplus-sfu"),
        sfu_device: ok(DeviceId::new("sfu")),
        mesh_max: 0,
        sign: Box::new(|call, user, device| format!("tok.{call}.{user}.{device}")),
    });
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let m = h.connect("mallory", "m1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    let route = |e: &Event| match e {
        Event::MediaRoute { sfu: Some(r), .. } => {
            Some((r.user_id.to_string(), r.device_id.to_string(), r.token.clone()))
        }
        _ => None,
    };
    let routes = |h: &mut H, conn| h.events(conn).iter().filter_map(route).collect::<Vec<_>>();
    assert_eq!(routes(&mut h, a), vec![("callplus-sfu".into(), "sfu".into(), format!("tok.{id}.alice.a1"))]);
    ok(h.accept(b, &id));
    assert_eq!(routes(&mut h, b), vec![("callplus-sfu".into(), "sfu".into(), format!("tok.{id}.bob.b1"))]);

    // A participant's signal to the SFU's address goes to the SFU, not to a device.
    let to_sfu = Request::MediaSignal {
        call_id: id.clone(),
        to_user: uid("callplus-sfu"),
        to_device: ok(DeviceId::new("sfu")),
        payload: MediaPayload::SdpOffer("v=0".into()),
    };
    h.outputs();
    ok(h.req(b, to_sfu.clone()));
    let sent = Output::SfuSignal {
        call_id: id.clone(),
        from_user: uid("bob"),
        from_device: ok(DeviceId::new("b1")),
        payload: MediaPayload::SdpOffer("v=0".into()),
    };
    assert_eq!(h.outputs(), vec![sent]);
    // Carol still rings and mallory is not in the call: neither reaches the SFU.
    assert_eq!(code(h.req(c, to_sfu.clone())), Code::NotInCall);
    assert_eq!(code(h.req(m, to_sfu)), Code::CallNotFound);
    assert!(h.outputs().iter().all(|o| !matches!(o, Output::SfuSignal { .. })));

    // The SFU's answer reaches bob from the SFU's address; one for carol (not connected) is dropped.
    h.events(b);
    h.events(c);
    let answer = MediaPayload::SdpAnswer("v=0".into());
    h.sb.sfu_signal(h.now, &id, &uid("bob"), &ok(DeviceId::new("b1")), answer.clone());
    h.sb.sfu_signal(h.now, &id, &uid("carol"), &ok(DeviceId::new("c1")), answer);
    h.drain();
    assert!(
        matches!(&h.events(b)[..], [Event::MediaSignal { from_user, .. }] if from_user.as_str() == "callplus-sfu")
    );
    assert!(h.events(c).iter().all(|e| !matches!(e, Event::MediaSignal { .. })));

    // Bob leaves: the SFU closes his connection; the call ends: the SFU closes the call.
    ok(h.hangup(b, &id));
    assert!(h.outputs().contains(&Output::SfuLeave {
        call_id: id.clone(),
        user: uid("bob"),
        device: ok(DeviceId::new("b1"))
    }));
    ok(h.hangup(a, &id));
    let _ = h.hangup(c, &id);
    assert!(h.outputs().contains(&Output::SfuEndCall { call_id: id.clone() }));

    // A one-to-one call gets no route and has no SFU address.
    let single = h.start(a, &["bob"], CallType::Single, MediaType::Audio).call_id;
    ok(h.accept(b, &single));
    assert!(h.events(a).iter().chain(h.events(b).iter()).all(|e| !matches!(e, Event::MediaRoute { .. })));
}

/// A router for the SFU at `callplus-sfu`/`sfu` whose every token is new (`tok.<n>`).
fn fresh_token_router(mesh_max: usize) -> MediaRouter {
    let issued = std::sync::atomic::AtomicU64::new(0);
    MediaRouter {
        sfu_user: uid("callplus-sfu"),
        sfu_device: ok(DeviceId::new("sfu")),
        mesh_max,
        sign: Box::new(move |_, _, _| {
            format!("tok.{}", issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        }),
    }
}

fn routes_of(events: &[Event]) -> Vec<Option<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MediaRoute { sfu, .. } => Some(sfu.as_ref().map(|r| r.token.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_mesh_that_outgrows_the_mesh_size_is_routed_through_the_sfu() {
    let mut h = H::default();
    h.sb.set_media_router(fresh_token_router(2));
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    assert_eq!(routes_of(&h.events(a)), vec![None], "two: a mesh");
    assert_eq!(routes_of(&h.events(b)), vec![None]);

    let invite =
        Request::Invite { call_id: id.clone(), users: vec![uid("carol")], push: None, extra: String::new() };
    ok(h.req(a, invite));
    // Both connected devices get the SFU (each its own token); the invitee not yet.
    assert!(matches!(&routes_of(&h.events(a))[..], [Some(_)]));
    assert!(matches!(&routes_of(&h.events(b))[..], [Some(_)]));
    assert!(routes_of(&h.events(c)).is_empty());
    ok(h.accept(c, &id));
    assert!(matches!(&routes_of(&h.events(c))[..], [Some(_)]));
    assert!(routes_of(&h.events(a)).is_empty(), "moved once");

    // Shrinking does not move it back.
    ok(h.hangup(c, &id));
    assert!(h.outputs().iter().any(|o| matches!(o, Output::SfuLeave { .. })));
    assert!(routes_of(&h.events(a)).is_empty() && routes_of(&h.events(b)).is_empty());
}

#[test]
fn a_failed_sfu_connection_is_rerouted_and_removed_if_it_does_not_come_back() {
    let mut h = H::default();
    h.sb.set_media_router(fresh_token_router(0));
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    let before = routes_of(&h.events(b));
    h.events(a);
    h.events(c);
    h.outputs();

    // Reports about a ringing participant, a device not in the call, or an unknown call do nothing.
    h.sb.sfu_participant_failed(h.now, &id, &uid("carol"), &ok(DeviceId::new("c1")));
    h.sb.sfu_participant_failed(h.now, &id, &uid("bob"), &ok(DeviceId::new("b2")));
    h.sb.sfu_participant_failed(h.now, &ok(CallId::new("nope")), &uid("bob"), &ok(DeviceId::new("b1")));
    h.drain();
    assert!(h.outputs().is_empty());
    assert!(h.events(b).is_empty() && h.events(c).is_empty());

    // Bob's failed: his connection is closed at the SFU and he gets a fresh route.
    h.sb.sfu_participant_failed(h.now, &id, &uid("bob"), &ok(DeviceId::new("b1")));
    h.drain();
    let left = Output::SfuLeave { call_id: id.clone(), user: uid("bob"), device: ok(DeviceId::new("b1")) };
    assert_eq!(h.outputs(), vec![left]);
    let after = routes_of(&h.events(b));
    assert!(matches!(&after[..], [Some(_)]) && after != before, "a fresh token: {before:?} -> {after:?}");
    assert!(h.events(a).is_empty(), "nobody else hears of it");

    // He connects again: nothing happens at the bound.
    h.sb.sfu_participant_connected(h.now, &id, &uid("bob"), &ok(DeviceId::new("b1")));
    h.drain();
    h.advance_pinging(i64::from(MEDIA_RECOVERY_MS) + 5_000, &[a, b, c]);
    assert!(h.events(a).iter().all(|e| !matches!(e, Event::ParticipantChanged { .. })));

    // He fails again and stays away: at the bound he leaves with NETWORK_ERROR.
    h.sb.sfu_participant_failed(h.now, &id, &uid("bob"), &ok(DeviceId::new("b1")));
    h.drain();
    h.advance_pinging(i64::from(MEDIA_RECOVERY_MS) - 5_000, &[a, b, c]);
    assert!(
        h.events(a).iter().all(|e| !matches!(e, Event::ParticipantChanged { .. })),
        "not before the bound"
    );
    h.advance_pinging(5_000, &[a, b, c]);
    let gone = h.events(a).into_iter().any(|e| {
        matches!(e, Event::ParticipantChanged { user_id, state: ParticipantState::Ended, reason: Some(EndReason::NetworkError), .. } if user_id.as_str() == "bob")
    });
    assert!(gone, "alice sees bob leave with NETWORK_ERROR");
    assert!(
        h.events(b).iter().any(|e| matches!(e, Event::CallEnded { reason: EndReason::NetworkError, .. })),
        "bob's device is told"
    );
    assert!(h.sb.is_call_live(&app(), &id), "alice and carol's call goes on");
}

#[test]
fn the_media_recovery_bound_is_the_configured_one() {
    let mut h = H::new(SwitchboardConfig { media_recovery_ms: 2_000, ..SwitchboardConfig::default() });
    h.sb.set_media_router(fresh_token_router(0));
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    ok(h.accept(c, &id));
    h.events(a);

    h.sb.sfu_participant_failed(h.now, &id, &uid("bob"), &ok(DeviceId::new("b1")));
    h.drain();
    let bob_left = |events: Vec<Event>| {
        events.into_iter().any(|e| {
            matches!(e, Event::ParticipantChanged { user_id, state: ParticipantState::Ended, reason: Some(EndReason::NetworkError), .. } if user_id.as_str() == "bob")
        })
    };
    h.advance_pinging(1_900, &[a, b, c]);
    assert!(!bob_left(h.events(a)), "not before the configured bound");
    h.advance_pinging(200, &[a, b, c]);
    assert!(bob_left(h.events(a)), "at the configured 2 s, far before the default 20 s");
}

#[test]
fn camera_changes_in_an_sfu_call_pause_and_resume_forwarding() {
    let mut h = H::default();
    h.sb.set_media_router(fresh_token_router(0));
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.start(a, &["bob"], CallType::Multi, MediaType::AudioVideo).call_id;
    ok(h.accept(b, &id));
    h.outputs();
    let state = |disabled| Request::SetMediaState { call_id: id.clone(), kind: MediaKind::Video, disabled };
    ok(h.req(a, state(true)));
    ok(h.req(a, state(true)));
    ok(h.req(a, state(false)));
    let pauses: Vec<bool> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::SfuPause { user, kind: MediaKind::Video, paused, .. } if user.as_str() == "alice" => {
                Some(paused)
            }
            _ => None,
        })
        .collect();
    assert_eq!(pauses, vec![true, false], "one per change");
}

// ----- liveness, resume, reliability ------------------------------------------------------------

#[test]
fn liveness_expiry_ends_calls_and_user_can_call_again_at_once() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    h.sb.connection_lost(h.now, a); // the app crashed; nothing more from a1
    h.advance_pinging(19_000, &[b]);
    assert!(h.sb.is_call_live(&app(), &id), "not yet");
    h.advance_pinging(1_000, &[b]);
    assert!(!h.sb.is_call_live(&app(), &id));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteNetworkError));
    // The restarted app (fresh session, same device) can call at once, and bob is not busy.
    let a2 = h.reconnect(a, false, Vec::new());
    match h.start_full(a2, &["bob"], CallType::Single, MediaType::Audio, None) {
        Ok(ResponseBody::Started { busy, .. }) => assert!(busy.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn crashed_app_restarting_before_liveness_is_never_locked_out() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    h.sb.connection_lost(h.now, a);
    h.advance(1_000);
    let a2 = h.reconnect(a, false, Vec::new());
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteNetworkError));
    // The new session gets the ended call's summary and record.
    let ea = h.events(a2);
    assert!(has_summary(&ea, &id), "{ea:?}");
    let c = h.connect("carol", "c1");
    assert!(h.start_full(a2, &["carol"], CallType::Single, MediaType::Audio, None).is_ok());
    h.events(c);
}

#[test]
fn resume_replays_missed_frames_exactly_once() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    // Frames to b are lost in flight, then the connection drops.
    if let Some(d) = h.devs.get_mut(&b) {
        d.deaf = true;
    }
    ok(h.req(a, Request::SetMediaState { call_id: id.clone(), kind: MediaKind::Audio, disabled: true }));
    h.sb.connection_lost(h.now, b);
    ok(h.req(a, Request::SetMediaState { call_id: id.clone(), kind: MediaKind::Audio, disabled: false }));
    h.advance(3_000);
    let b2 = h.reconnect(b, true, Vec::new());
    let frames = h.devs.get(&b2).map(|d| d.inbox.clone()).unwrap_or_default();
    assert!(matches!(&frames[0].body, ServerBody::Welcome(w) if w.resumed));
    let ev = h.events(b2);
    let states: Vec<bool> = ev
        .iter()
        .filter_map(|e| match e {
            Event::MediaStateChanged { disabled, .. } => Some(*disabled),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![true, false], "in order, exactly once (the harness checks seqs)");
    assert!(h.sb.is_call_live(&app(), &id), "the call continues");
    ok(h.hangup(b2, &id));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteHangup));
}

#[test]
fn failed_resume_is_a_fresh_session() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    if let Some(d) = h.devs.get_mut(&b) {
        d.session_id = "bogus".into();
    }
    let b2 = h.reconnect(b, true, Vec::new());
    let frames = h.devs.get(&b2).map(|d| d.inbox.clone()).unwrap_or_default();
    assert!(matches!(&frames[0].body, ServerBody::Welcome(w) if !w.resumed));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteNetworkError));
}

#[test]
fn duplicate_request_is_processed_once() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let _b = h.connect("bob", "b1");
    let frame = h.frame(
        a,
        ClientBody::Request(Request::StartCall(StartCall {
            callees: vec![uid("bob")],
            call_type: CallType::Single,
            media_type: MediaType::Audio,
            push: None,
            extra: String::new(),
            ring_timeout_ms: None,
        })),
        true,
    );
    h.send_frame(a, frame.clone());
    h.send_frame(a, frame.clone());
    // Also across a resume.
    let a2 = h.reconnect(a, true, Vec::new());
    let welcome =
        h.devs.get(&a2).and_then(|d| d.inbox.iter().rev().find(|f| matches!(f.body, ServerBody::Welcome(_))));
    assert!(
        matches!(welcome.map(|f| &f.body), Some(ServerBody::Welcome(w)) if w.resumed && w.last_received_seq == frame.seq),
        "{welcome:?}"
    );
    h.send_frame(a2, frame);
    assert_eq!(h.sb.live_calls(), 1);
    let responses = h
        .devs
        .get(&a2)
        .map(|d| d.inbox.iter().filter(|f| matches!(f.body, ServerBody::Response(_))).count())
        .unwrap_or_default();
    assert!(responses <= 1);
}

#[test]
fn strangers_and_other_apps_are_refused() {
    let mut h = H::default();
    let (_a, _b, id) = h.connected_pair();
    let c = h.connect("carol", "c1");
    assert_eq!(code(h.hangup(c, &id)), Code::CallNotFound);
    assert_eq!(code(h.accept(c, &id)), Code::CallNotFound);
    assert_eq!(code(h.req(c, Request::GetCall { call_id: id.clone() })), Code::CallNotFound);
    let other = h.connect_app(ok(AppKey::new("other")), "bob", "b1");
    assert_eq!(code(h.hangup(other, &id)), Code::CallNotFound);
    assert_eq!(code(h.req(other, Request::GetCall { call_id: id.clone() })), Code::CallNotFound);
    assert_eq!(code(h.hangup(c, &ok(CallId::new("unknown")))), Code::CallNotFound);
    assert!(h.sb.is_call_live(&app(), &id));
}

#[test]
fn invalid_frame_is_answered_and_numbering_kept() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let seq = h.devs.get_mut(&a).map(|d| {
        d.next_seq += 1;
        d.next_seq - 1
    });
    let error = FrameError {
        seq: seq.unwrap_or(1),
        ack: 0,
        request_id: 77,
        error: Error::from_code(Code::FrameInvalid),
    };
    h.sb.handle_invalid_frame(h.now, a, error);
    h.drain();
    assert_eq!(h.response(a, 77).map(|r| r.map_err(|e| e.code)), Some(Err(Code::FrameInvalid)));
    // The next numbered request is processed.
    assert!(h.req(a, Request::GetAvailableCalls).is_ok());
}

#[test]
fn rate_limit() {
    let mut h = H::new(SwitchboardConfig {
        requests_per_second: 1,
        request_burst: 2,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let a = h.connect("alice", "a1");
    assert!(h.req(a, Request::GetAvailableCalls).is_ok());
    assert!(h.req(a, Request::GetAvailableCalls).is_ok());
    assert_eq!(code(h.req(a, Request::GetAvailableCalls)), Code::RateLimited);
    h.advance(1_000);
    assert!(h.req(a, Request::GetAvailableCalls).is_ok());
}

#[test]
fn goodbye_hangs_up_and_closes() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    let frame = h.frame(a, ClientBody::Goodbye, false);
    h.send_frame(a, frame);
    assert!(h.closed.contains(&a));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteHangup));
    assert_eq!(h.sb.connected_devices(), 1);
    // Alice had no other device: her summary is stored.
    let out = h.outputs();
    assert!(stored_offline(&out, "alice").iter().any(|e| matches!(e, Event::Summary(_))));
}

#[test]
fn single_device_policy_kicks_the_older_device() {
    let mut h = H::new(SwitchboardConfig {
        device_policy: DevicePolicy::SingleDevice,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let (a, b, id) = h.connected_pair();
    let a2 = h.connect("alice", "a2");
    let ea = h.events(a);
    assert!(ea.iter().any(|e| matches!(e, Event::Kicked { reason: EndReason::KickedOtherLogin, .. })));
    assert!(h.closed.contains(&a));
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteKickedOtherLogin));
    assert!(has_summary(&h.events(a2), &id));
}

#[test]
fn too_slow_device_is_dropped() {
    // Room for what a caller receives while its call connects before its next frame acks it.
    let mut h = H::new(SwitchboardConfig {
        max_unacked_frames: 6,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let (a, b, id) = h.connected_pair();
    // b never acks (it only receives); a keeps toggling the microphone.
    for i in 0..12 {
        ok(h.req(
            a,
            Request::SetMediaState { call_id: id.clone(), kind: MediaKind::Audio, disabled: i % 2 == 0 },
        ));
        if !h.sb.is_call_live(&app(), &id) {
            break;
        }
    }
    assert!(h.closed.contains(&b));
    assert!(!h.sb.is_call_live(&app(), &id));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteNetworkError));
}

/// A device asks for pages of records and never acks: the switchboard answers each query with
/// a page of `records` records of `extra` bytes of data each.
fn records_without_acks(h: &mut H, conn: ConnId, pages: usize, records: usize, extra: usize) {
    for _ in 0..pages {
        let body = ClientBody::Request(Request::GetCallRecords {
            sync_time: -1,
            count: 100,
            order: crate::RecordOrder::Desc,
        });
        let mut frame = h.frame(conn, body, true);
        frame.ack = 0;
        h.send_frame(conn, frame);
        let Some(qid) = h.outputs().iter().find_map(|o| match o {
            Output::Query { id, .. } => Some(*id),
            _ => None,
        }) else {
            return;
        };
        let owner = h.devs.get(&conn).map(|d| d.user.clone()).unwrap_or_else(|| uid("x"));
        let record = big_record(&owner, extra);
        let page = crate::RecordPage { records: vec![record; records], has_more: true, sync_time: 5 };
        h.sb.complete_query(h.now, qid, Ok(QueryAnswer::Records(page)));
        h.drain();
        h.advance(20);
    }
}

fn big_record(owner: &UserId, extra: usize) -> CallRecord {
    let call = CallInfo {
        call_id: ok(CallId::new("c1")),
        call_type: CallType::Single,
        media_type: MediaType::Audio,
        creator: owner.clone(),
        participants: Vec::new(),
        created_at_ms: 0,
        started_at_ms: None,
        first_frame_at_ms: None,
        ended_at_ms: Some(1),
        version: 1,
        extra: "x".repeat(extra),
        ring_timeout_ms: 0,
    };
    CallRecord {
        owner: owner.clone(),
        call: call.into(),
        inviter: None,
        end_reason: EndReason::Hangup,
        direction: Direction::Outgoing,
        duration_ms: 0,
        sync_time: 1,
    }
}

#[test]
fn a_device_holding_too_many_unacked_bytes_is_dropped_for_good() {
    let mut h = H::new(SwitchboardConfig {
        max_unacked_bytes: 1 << 20,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let a = h.connect("alice", "a1");
    let session = h.devs.get(&a).map(|d| d.session_id.clone()).unwrap_or_default();
    // 100 records of 1 KiB: about 100 KiB a page, far below the frame bound (4096).
    records_without_acks(&mut h, a, 30, 100, 1024);
    assert!(h.closed.contains(&a), "dropped once over 1 MiB");
    assert_eq!(h.sb.slow_sessions_dropped(), 1);
    assert!(h.sb.net.sessions.is_empty(), "nothing is kept for it");
    // Its resume is refused: it starts again.
    let a2 = h.reconnect(a, true, Vec::new());
    let welcome = h.devs.get(&a2).and_then(|d| {
        d.inbox.iter().find_map(|f| match &f.body {
            ServerBody::Welcome(w) => Some(w.clone()),
            _ => None,
        })
    });
    assert!(welcome.is_some_and(|w| !w.resumed && w.session_id != session));
}

#[test]
fn a_single_frame_over_the_byte_bound_is_still_delivered() {
    let mut h = H::new(SwitchboardConfig {
        max_unacked_bytes: 1024,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let a = h.connect("alice", "a1");
    records_without_acks(&mut h, a, 1, 10, 1024);
    assert!(!h.closed.contains(&a));
    assert_eq!(h.sb.slow_sessions_dropped(), 0);
}

#[test]
fn a_device_that_acks_keeps_its_session_however_much_it_reads() {
    let mut h = H::new(SwitchboardConfig {
        max_unacked_bytes: 1 << 20,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let a = h.connect("alice", "a1");
    for _ in 0..30 {
        records_without_acks(&mut h, a, 1, 100, 1024);
        h.ping(a);
    }
    assert!(!h.closed.contains(&a));
    let held = h.sb.net.sessions.values().map(|s| s.outbox_bytes).sum::<usize>();
    assert_eq!(held, 0, "acked frames are no longer counted");
    let user_held: Vec<usize> =
        h.sb.net.sessions.values().map(|s| s.user_bytes.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert_eq!(user_held, vec![0], "nor in the user's total");
}

#[test]
fn a_user_over_its_unacked_bytes_loses_the_device_holding_most() {
    let mut h = H::new(SwitchboardConfig {
        max_unacked_bytes: 1 << 20,
        max_user_unacked_bytes: 2 << 20,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let devices: Vec<ConnId> = (0..4).map(|i| h.connect("alice", &format!("d{i}"))).collect();
    // Each device stays under its own bound (about 700 KiB); together they pass 2 MiB.
    for &d in &devices {
        records_without_acks(&mut h, d, 5, 100, 1024);
    }
    let one = h.sb.net.sessions.values().map(|s| s.outbox_bytes).max().unwrap_or(0);
    assert!(one < 1 << 20 && one > 600 << 10, "{one}");
    let closed: Vec<&ConnId> = devices.iter().filter(|d| h.closed.contains(d)).collect();
    assert!(!closed.is_empty() && closed.len() < devices.len(), "{closed:?}");
    let held: usize = h.sb.net.sessions.values().map(|s| s.outbox_bytes).sum();
    assert!(held <= 2 << 20, "{held}");
    assert_eq!(h.sb.slow_sessions_dropped(), u64::try_from(closed.len()).unwrap_or(0));
    // Another user is not affected.
    let b = h.connect("bob", "b1");
    records_without_acks(&mut h, b, 5, 100, 1024);
    assert!(!h.closed.contains(&b));
}

#[test]
fn devices_per_user_are_capped() {
    let mut h = H::new(SwitchboardConfig {
        max_devices_per_user: 2,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let d1 = h.connect("alice", "d1");
    let _d2 = h.connect("alice", "d2");
    let refused = h.sb.admit(&app(), &uid("alice"), &ok(DeviceId::new("d3")));
    assert_eq!(refused.map_err(|e| e.code), Err(Code::TooManyDevices));
    assert!(
        h.sb.admit(&app(), &uid("alice"), &ok(DeviceId::new("d1"))).is_ok(),
        "the same device may reconnect"
    );
    assert!(h.sb.admit(&app(), &uid("bob"), &ok(DeviceId::new("d3"))).is_ok());
    // connect refuses too, whatever the driver did.
    let d3 = h.connect("alice", "d3");
    assert!(h.closed.contains(&d3));
    let frames = h.devs.get(&d3).map(|d| d.inbox.clone()).unwrap_or_default();
    assert!(
        matches!(&frames[..], [ServerFrame { body: ServerBody::Response(Response { result: Err(e), .. }), .. }]
            if e.code == Code::TooManyDevices),
        "{frames:?}"
    );
    // A session kept for a resume still counts; once it is gone there is room.
    h.sb.connection_lost(h.now, d1);
    assert!(h.sb.admit(&app(), &uid("alice"), &ok(DeviceId::new("d3"))).is_err());
    h.advance(70_000);
    assert!(h.sb.admit(&app(), &uid("alice"), &ok(DeviceId::new("d3"))).is_ok());
}

#[test]
fn resume_window_expiry_drops_the_session() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    h.sb.connection_lost(h.now, a);
    h.advance(20_000);
    assert_eq!(h.sb.net.sessions.len(), 1, "stale but resumable");
    h.advance(40_000);
    assert!(h.sb.net.sessions.is_empty());
    let a2 = h.reconnect(a, true, Vec::new());
    let frames = h.devs.get(&a2).map(|d| d.inbox.clone()).unwrap_or_default();
    assert!(matches!(&frames[0].body, ServerBody::Welcome(w) if !w.resumed));
}

#[test]
fn record_queries_round_trip() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let frame = h.frame(
        a,
        ClientBody::Request(Request::GetCallRecords {
            sync_time: -1,
            count: 20,
            order: crate::RecordOrder::Desc,
        }),
        true,
    );
    let rid = frame.request_id;
    h.send_frame(a, frame);
    let out = h.outputs();
    let qid = out
        .iter()
        .find_map(|o| match o {
            Output::Query { id, query: Query::Records { count: 20, .. }, .. } => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no query: {out:?}"));
    let page = crate::RecordPage { records: Vec::new(), has_more: false, sync_time: 5 };
    h.sb.complete_query(h.now, qid, Ok(QueryAnswer::Records(page.clone())));
    h.drain();
    assert_eq!(h.response(a, rid), Some(Ok(ResponseBody::Records(page))));
    let r = h.req(a, Request::GetCallRecords { sync_time: -1, count: 0, order: crate::RecordOrder::Asc });
    assert_eq!(code(r), Code::ParamError);
}

// ----- operator commands -------------------------------------------------------------------------

#[test]
fn shutdown_ends_everything() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    h.sb.shutdown(h.now);
    h.drain();
    for conn in [a, b] {
        let ev = h.events(conn);
        assert_eq!(ended_reason(&ev, &id), Some(EndReason::EndedByServer));
        assert!(matches!(ev.last(), Some(Event::Kicked { reason: EndReason::EndedByServer, .. })));
        assert!(h.closed.contains(&conn));
    }
    let out = h.outputs();
    assert_eq!(records(&out).len(), 2);
    assert!(stored_offline(&out, "alice").iter().any(|e| matches!(e, Event::Summary(_))));
    assert!(stored_offline(&out, "bob").iter().any(|e| matches!(e, Event::Summary(_))));
    assert!(out.iter().any(|o| matches!(o, Output::ForgetCall { .. })));
    assert_eq!(h.sb.live_calls(), 0);
    assert_eq!(h.sb.connected_devices(), 0);
}

/// The call snapshots in transmitted frames and in storage writes, in order.
fn snapshots(sent: &[Arc<ServerBody>], outputs: &[Output]) -> Vec<(&'static str, Arc<CallInfo>)> {
    let mut found = Vec::new();
    for body in sent {
        match &**body {
            ServerBody::Response(Response { result: Ok(ResponseBody::Started { call, .. }), .. }) => {
                found.push(("Started", Arc::clone(call)));
            }
            ServerBody::Response(Response { result: Ok(ResponseBody::Call(call)), .. }) => {
                found.push(("Call", Arc::clone(call)));
            }
            ServerBody::Event(Event::IncomingCall { call, .. }) => {
                found.push(("IncomingCall", Arc::clone(call)))
            }
            ServerBody::Event(Event::CallEnded { call, .. }) => found.push(("CallEnded", Arc::clone(call))),
            ServerBody::Event(Event::CallRecord(record)) => {
                found.push(("CallRecord", Arc::clone(&record.call)))
            }
            _ => {}
        }
    }
    for output in outputs {
        match output {
            Output::SaveCall { call, .. } => found.push(("SaveCall", Arc::clone(call))),
            Output::StoreRecord { record, .. } => found.push(("StoreRecord", Arc::clone(&record.call))),
            _ => {}
        }
    }
    found
}

/// A change of a call is snapshot once: every frame and storage write that carries the call
/// after it shares that one snapshot (a reference count each, not a copy of the participants).
#[test]
fn the_frames_and_writes_of_one_change_share_its_snapshot() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    h.sent.clear();
    h.outputs();

    let id = h.single(a, "bob");
    let outputs = h.outputs();
    let started = snapshots(&h.sent, &outputs);
    let kinds: Vec<_> = started.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, ["Started", "IncomingCall", "SaveCall"]);
    assert!(started.iter().all(|(_, call)| Arc::ptr_eq(call, &started[0].1)), "{started:?}");

    ok(h.accept(b, &id));
    h.sent.clear();
    h.outputs();
    ok(h.hangup(a, &id));
    let outputs = h.outputs();
    let ended = snapshots(&h.sent, &outputs);
    let mut kinds: Vec<_> = ended.iter().map(|(kind, _)| *kind).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["CallEnded", "CallRecord", "CallRecord", "StoreRecord", "StoreRecord"]);
    assert!(ended.iter().all(|(_, call)| Arc::ptr_eq(call, &ended[0].1)), "{ended:?}");
    assert!(ended[0].1.is_ended());
    assert!(!Arc::ptr_eq(&ended[0].1, &started[0].1));
}

/// A connected 1:1 call's last saved snapshot, and when it was accepted.
fn saved_connected_call(h: &mut H) -> ((AppKey, Arc<CallInfo>), i64) {
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.single(a, "bob");
    ok(h.accept(b, &id));
    let out = h.outputs();
    let saved = out
        .into_iter()
        .filter_map(|o| match o {
            Output::SaveCall { app, call } => Some((app, call)),
            _ => None,
        })
        .last()
        .unwrap_or_else(|| panic!("no SaveCall"));
    (saved, h.now)
}

#[test]
fn recovered_calls_end_with_records() {
    let mut h = H::default();
    let (saved, _) = saved_connected_call(&mut h);
    let id = saved.1.call_id.clone();
    let mut fresh = H::default();
    fresh.sb.set_min_sync_time(i64::MAX / 2);
    fresh.sb.end_recovered_calls(fresh.now, None, vec![(saved.0, Arc::unwrap_or_clone(saved.1))]);
    fresh.drain();
    let out = fresh.outputs();
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    // What each device saw (its session could not be resumed) is what its record says.
    assert!(recs.iter().all(|r| r.end_reason == EndReason::NetworkError && r.sync_time > i64::MAX / 2));
    assert_eq!(stored_offline(&out, "alice").len(), 2, "record and summary");
    assert_eq!(stored_offline(&out, "bob").len(), 2);
    assert!(out.iter().any(|o| matches!(o, Output::ForgetCall { call_id, .. } if call_id == &id)));
    assert_eq!(fresh.sb.live_calls(), 0);
}

#[test]
fn a_recovered_call_ends_when_the_stopped_server_was_last_known_alive() {
    let mut h = H::default();
    let (saved, accepted_at) = saved_connected_call(&mut h);
    // Talked 1 s before the crash was last marked; restarted 30 s after that.
    let alive_until = accepted_at + 1_000;
    let mut fresh = H::default();
    fresh.now = alive_until + 30_000;
    fresh.sb.end_recovered_calls(
        fresh.now,
        Some(alive_until),
        vec![(saved.0.clone(), CallInfo::clone(&saved.1))],
    );
    fresh.drain();
    let out = fresh.outputs();
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert_eq!(r.duration_ms, 1_000, "the downtime is not talk time: {r:?}");
        assert_eq!(r.call.ended_at_ms, Some(alive_until));
    }

    // A mark older than the call (the server was idle before it) never ends it before its
    // latest recorded moment; no mark at all does the same.
    for mark in [Some(accepted_at - 60_000), None] {
        let mut fresh = H::default();
        fresh.now = accepted_at + 30_000;
        fresh.sb.end_recovered_calls(fresh.now, mark, vec![(saved.0.clone(), CallInfo::clone(&saved.1))]);
        fresh.drain();
        let out = fresh.outputs();
        let recs = records(&out);
        assert!(
            recs.iter().all(|r| r.duration_ms == 0 && r.call.ended_at_ms == Some(accepted_at)),
            "{recs:?}"
        );
    }
}

#[test]
fn a_peer_lost_to_the_network_ends_the_call_at_its_last_sign_of_life() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    let accepted_at = h.now;
    // Both talk for 3 s, then bob's phone dies: nothing more from b1.
    h.advance_pinging(3_000, &[a, b]);
    let last_seen = h.now;
    h.sb.connection_lost(h.now, b);
    h.advance_pinging(25_000, &[a]);
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteNetworkError));
    let out = h.outputs();
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert_eq!(r.call.ended_at_ms, Some(last_seen), "{r:?}");
        assert_eq!(r.duration_ms, last_seen - accepted_at, "the liveness timeout is not talk time: {r:?}");
    }
}

#[test]
fn a_crashed_app_that_comes_back_ends_its_old_call_at_its_last_sign_of_life() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    let accepted_at = h.now;
    h.advance_pinging(2_000, &[a, b]);
    let last_seen = h.now;
    h.sb.connection_lost(h.now, a);
    h.advance_pinging(5_000, &[b]);
    let _a2 = h.reconnect(a, false, Vec::new());
    assert_eq!(ended_reason(&h.events(b), &id), Some(EndReason::RemoteNetworkError));
    let out = h.outputs();
    let recs = records(&out);
    assert!(recs.iter().all(|r| r.duration_ms == last_seen - accepted_at), "{recs:?}");
}

#[test]
fn the_caller_cannot_accept_her_own_call() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let id = h.single(a, "bob");
    let refused = h.accept(a, &id);
    assert_eq!(code(refused.clone()), Code::InvalidState);
    assert!(refused.err().is_some_and(|e| e.message.contains("own outgoing call")));
    // Nothing changed: bob still rings and can answer; then neither can alice accept.
    assert!(h.events(b).iter().all(|e| !matches!(e, Event::CallEnded { .. })));
    ok(h.accept(b, &id));
    assert_eq!(code(h.accept(a, &id)), Code::InvalidState);
    ok(h.hangup(a, &id));
    // A group call's creator who left and was invited back answers like anyone else.
    let c = h.connect("carol", "c1");
    let group = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(c, &group));
    ok(h.hangup(a, &group));
    ok(h.req(
        c,
        Request::Invite {
            call_id: group.clone(),
            users: vec![uid("alice")],
            push: None,
            extra: String::new(),
        },
    ));
    ok(h.accept(a, &group));
}

#[test]
fn call_ids_are_unique_and_valid() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let id = h.single(a, "bob");
        ok(h.hangup(a, &id));
        assert!(seen.insert(id));
    }
}

#[test]
fn early_frames_are_held_until_the_gap_fills() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let _b = h.connect("bob", "b1");
    let start = h.frame(
        a,
        ClientBody::Request(Request::StartCall(StartCall {
            callees: vec![uid("bob")],
            call_type: CallType::Single,
            media_type: MediaType::Audio,
            push: None,
            extra: String::new(),
            ring_timeout_ms: None,
        })),
        true,
    );
    let available = h.frame(a, ClientBody::Request(Request::GetAvailableCalls), true);
    let (r1, r2) = (start.request_id, available.request_id);
    h.send_frame(a, available);
    assert!(h.response(a, r2).is_none(), "held until seq 1 arrives");
    h.send_frame(a, start);
    let d = h.devs.get(&a).map(|d| d.inbox.clone()).unwrap_or_default();
    let order: Vec<u64> = d
        .iter()
        .filter_map(|f| match &f.body {
            ServerBody::Response(r) => Some(r.request_id),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![r1, r2]);
}

#[test]
fn frames_queued_when_the_connection_drops_are_replayed_once() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    // The driver has not drained yet when the transport closes.
    let frame = h.frame(
        a,
        ClientBody::Request(Request::SetMediaState {
            call_id: id.clone(),
            kind: MediaKind::Audio,
            disabled: true,
        }),
        true,
    );
    h.sb.handle_frame(h.now, a, frame);
    h.sb.connection_lost(h.now, b);
    h.drain();
    assert!(h.events(b).is_empty(), "nothing is written to a closed connection");
    let b2 = h.reconnect(b, true, Vec::new());
    let ev = h.events(b2);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::MediaStateChanged { .. })).count(), 1);
}

#[test]
fn invite_auto_rejects_busy_users_and_cancels_a_pending_change() {
    let mut h = H::new(SwitchboardConfig {
        busy_policy: BusyPolicy::AutoReject,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let (c, _d, _other) = {
        let c = h.connect("carol", "c1");
        let d = h.connect("dave", "d1");
        let id = h.single(c, "dave");
        ok(h.accept(d, &id));
        (c, d, id)
    };
    let (a, b, id) = audio_pair(&mut h);
    let tx = tx_of(
        h.req(a, Request::RequestChangeMediaType { call_id: id.clone(), media_type: MediaType::AudioVideo }),
    );
    h.events(b);
    let r = h.req(
        a,
        Request::Invite {
            call_id: id.clone(),
            users: vec![uid("carol"), uid("erin")],
            push: None,
            extra: String::new(),
        },
    );
    assert_eq!(r, Ok(ResponseBody::Busy(vec![uid("carol")])));
    let eb = h.events(b);
    assert_eq!(finished(&eb), vec![(tx, ChangeMediaTypeResult::Cancelled, MediaType::Audio)]);
    assert!(
        eb.iter()
            .any(|e| matches!(e, Event::UsersInvited { invitees, .. } if invitees == &vec![uid("erin")]))
    );
    assert!(eb.iter().any(|e| matches!(e,
        Event::ParticipantChanged { user_id, state: ParticipantState::Ended, reason: Some(EndReason::Busy), .. }
        if user_id.as_str() == "carol")));
    assert!(!h.events(c).iter().any(|e| matches!(e, Event::IncomingCall { .. })), "carol is not rung");
    let info = h.sb.call(&app(), &id).unwrap_or_else(|| panic!("call"));
    assert_eq!(info.call_type, CallType::Multi);
    assert_eq!(info.participant(&uid("carol")).and_then(|p| p.reason), Some(EndReason::Busy));
}

#[test]
fn offline_events_are_not_sent_twice_on_resume() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    h.sb.connection_lost(h.now, a);
    let ev = Event::FirstFrame { call_id: ok(CallId::new("x")), at_ms: 1 };
    let offline = vec![OfflineEvent { id: 7, event: ev.clone() }];
    // The driver hands the stored events on the fresh connect and again on the resume.
    let a2 = h.reconnect(a, false, offline.clone());
    assert_eq!(h.events(a2).len(), 1);
    h.sb.connection_lost(h.now, a2);
    let a3 = h.reconnect(a2, true, offline.clone());
    // The resume's last_received_seq acked it: its deletion is requested, and the copy the
    // driver fetched before that is not delivered again.
    assert!(h.outputs().iter().any(|o| matches!(o, Output::OfflineDelivered { ids, .. } if ids == &vec![7])));
    assert_eq!(h.events(a3).len(), 0);
    h.sb.connection_lost(h.now, a3);
    let a4 = h.reconnect(a3, true, offline);
    assert_eq!(h.events(a4).len(), 0);
}

#[test]
fn rejected_participant_can_still_look_the_call_up() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    ok(h.hangup(c, &id));
    match h.req(c, Request::GetCall { call_id: id.clone() }) {
        Ok(ResponseBody::Call(info)) => {
            assert!(!info.is_ended());
            assert_eq!(info.participant(&uid("carol")).and_then(|p| p.reason), Some(EndReason::Reject));
            assert!(info.version > 1);
        }
        other => panic!("{other:?}"),
    }
    // Acting on it as if still invited is refused.
    assert_eq!(code(h.req(c, Request::Ringing { call_id: id.clone() })), Code::InvalidState);
    assert_eq!(code(h.hangup(c, &id)), Code::NotInCall);
}

/// An ended call is held in memory for its retention, then forgotten; `GetCall` then asks the
/// requester's record of it, which has the call as it ended.
#[test]
fn retention_forgets_ended_calls_and_get_call_then_asks_the_records() {
    let mut h = H::new(SwitchboardConfig {
        ended_call_retention_ms: 10_000,
        push_enabled: false,
        ..SwitchboardConfig::default()
    });
    let (a, b, id) = h.connected_pair();
    ok(h.hangup(a, &id));
    let Ok(ResponseBody::Call(held)) = h.req(b, Request::GetCall { call_id: id.clone() }) else {
        panic!("a held call is answered from memory")
    };
    assert!(held.is_ended());
    assert!(h.outputs().iter().all(|o| !matches!(o, Output::Query { .. })), "no storage query for it");
    h.advance_pinging(10_000, &[a, b]);
    assert!(h.sb.call(&app(), &id).is_none());

    // What storage has for the requester: the call as it ended, or no record at all.
    for (stored, want) in
        [(Some(held.clone()), Ok(ResponseBody::Call(held.clone()))), (None, Err(Code::CallNotFound))]
    {
        h.outputs();
        let frame = h.frame(b, ClientBody::Request(Request::GetCall { call_id: id.clone() }), true);
        let rid = frame.request_id;
        h.send_frame(b, frame);
        assert!(h.response(b, rid).is_none(), "answered once storage is asked");
        let asked: Vec<_> = h
            .outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Query { id: query, app, user, query: Query::EndedCall { call_id } } => {
                    Some((query, app, user, call_id))
                }
                _ => None,
            })
            .collect();
        let [(query, asked_app, asked_user, asked_call)] = asked.as_slice() else {
            panic!("one record lookup: {asked:?}")
        };
        assert_eq!((asked_app, asked_user, asked_call), (&app(), &uid("bob"), &id));
        h.sb.complete_query(h.now, *query, Ok(QueryAnswer::EndedCall(stored)));
        h.drain();
        let got = h.response(b, rid).unwrap_or_else(|| panic!("a response")).map_err(|e| e.code);
        assert_eq!(got, want);
    }
}

#[test]
fn undelivered_summaries_are_stored_when_the_session_is_dropped() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    h.sb.connection_lost(h.now, b);
    ok(h.hangup(a, &id)); // bob's device is still live: its summary waits in the outbox
    let out = h.outputs();
    assert!(stored_offline(&out, "bob").is_empty());
    h.advance_pinging(60_000, &[a]);
    let out = h.outputs();
    let stored = stored_offline(&out, "bob");
    assert!(stored.iter().any(|e| matches!(e, Event::Summary(s) if s.call_id == id)), "{stored:?}");
    assert!(stored.iter().any(|e| matches!(e, Event::CallRecord(_))));
}

#[test]
fn a_reused_connection_id_never_gets_a_frame_twice() {
    let mut h = H::default();
    let (a, b, id) = h.connected_pair();
    let frame = h.frame(
        a,
        ClientBody::Request(Request::SetMediaState {
            call_id: id.clone(),
            kind: MediaKind::Audio,
            disabled: true,
        }),
        true,
    );
    h.sb.handle_frame(h.now, a, frame);
    // Before the driver drains, b's transport drops and the device resumes on the same id.
    h.sb.connection_lost(h.now, b);
    let (session_id, ack, device) = match h.devs.get(&b) {
        Some(d) => (d.session_id.clone(), d.ack, d.device.clone()),
        None => panic!("no device"),
    };
    let resume = Resume { session_id, last_received_seq: ack };
    h.sb.connect(h.now, b, app(), uid("bob"), H::hello(&device, Some(resume)));
    h.drain(); // the harness asserts every seq arrives once, in order
    let ev = h.events(b);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::MediaStateChanged { .. })).count(), 1);
}

/// Two nodes started in the same millisecond, with the same storage, mint disjoint call and
/// session ids because each id leads with the node id; a single node keeps the old form.
#[test]
fn nodes_started_together_mint_disjoint_ids() {
    let node = |node_id: &str| {
        let mut h = H::new(SwitchboardConfig {
            push_enabled: false,
            node_id: node_id.to_owned(),
            ..SwitchboardConfig::default()
        });
        h.sb.set_min_sync_time(42);
        let a = h.connect("alice", "a1");
        h.connect("bob", "b1");
        let calls: Vec<CallId> = (0..3)
            .map(|_| {
                let id = h.single(a, "bob");
                ok(h.hangup(a, &id));
                id
            })
            .collect();
        let session = h.devs.get(&a).map(|d| d.session_id.clone()).unwrap_or_default();
        (calls, session)
    };
    let (ids_a, session_a) = node("node-a");
    let (ids_b, session_b) = node("node-b");
    assert!(ids_a.iter().all(|id| id.as_str().starts_with("node-a_")), "{ids_a:?}");
    assert!(ids_b.iter().all(|id| id.as_str().starts_with("node-b_")), "{ids_b:?}");
    assert!(ids_a.iter().all(|id| !ids_b.contains(id)), "{ids_a:?} vs {ids_b:?}");
    assert_ne!(session_a, session_b);
    // A single node's ids are unchanged: `{10-character prefix}-{counter}`.
    let (single, _) = node("");
    assert!(
        single.iter().all(|id| id.as_str().split_once('-').is_some_and(|(p, _)| p.len() == 10)),
        "{single:?}"
    );
    // The same instant without node ids: the collision the node id prevents.
    let (again, _) = node("");
    assert_eq!(single, again);
}

/// A node of several is told when a device's session comes online (each Welcome, fresh or
/// resumed, with its connection) and when it ends for good — not when a connection drops while
/// the session can still resume. A single node is told nothing.
#[test]
fn presence_follows_sessions_not_connections() {
    let presence = |outputs: Vec<Output>| -> Vec<(&'static str, Option<ConnId>, String, String)> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::SessionOnline { conn, device } => {
                    Some(("online", Some(conn), device.device.as_str().to_owned(), device.session_id))
                }
                Output::SessionEnded { device } => {
                    Some(("ended", None, device.device.as_str().to_owned(), device.session_id))
                }
                _ => None,
            })
            .collect()
    };
    let cfg = node_a_config();
    let resume_window = i64::from(cfg.resume_window_ms);
    let mut h = H::new(cfg);
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let (sa, sb) = (h.devs[&a].session_id.clone(), h.devs[&b].session_id.clone());
    assert_eq!(
        presence(h.outputs()),
        vec![
            ("online", Some(a), "a1".to_owned(), sa.clone()),
            ("online", Some(b), "b1".to_owned(), sb.clone())
        ]
    );

    // a1's connection drops: its session waits for a resume, so its presence stays.
    h.sb.connection_lost(h.now, a);
    h.drain();
    assert_eq!(presence(h.outputs()), vec![]);
    let a2 = h.reconnect(a, true, Vec::new());
    assert_eq!(h.devs[&a2].session_id, sa, "resumed");
    assert_eq!(presence(h.outputs()), vec![("online", Some(a2), "a1".to_owned(), sa.clone())]);

    // b1 says Goodbye: its session ends.
    let bye = h.frame(b, ClientBody::Goodbye, false);
    h.send_frame(b, bye);
    assert_eq!(presence(h.outputs()), vec![("ended", None, "b1".to_owned(), sb)]);

    // a1 drops again and never comes back: its session ends when the resume window closes.
    h.sb.connection_lost(h.now, a2);
    h.drain();
    h.advance(resume_window + 1);
    assert_eq!(presence(h.outputs()), vec![("ended", None, "a1".to_owned(), sa)]);

    // The server stops: every session ends.
    let c = h.connect("carol", "c1");
    let sc = h.devs[&c].session_id.clone();
    h.outputs();
    h.sb.shutdown(h.now);
    h.drain();
    assert_eq!(presence(h.outputs()), vec![("ended", None, "c1".to_owned(), sc)]);

    // A single node (no node id) is told nothing.
    let mut single = H::default();
    let c = single.connect("carol", "c1");
    let bye = single.frame(c, ClientBody::Goodbye, false);
    single.send_frame(c, bye);
    assert_eq!(presence(single.outputs()), vec![]);
}

/// The configuration of node `node-a` of several, without push.
fn node_a_config() -> SwitchboardConfig {
    SwitchboardConfig { push_enabled: false, node_id: "node-a".into(), ..SwitchboardConfig::default() }
}

/// On a node of several, the owner marks a callee ringing before it looks the callee's devices
/// up: the driver runs node work in order, and a device connecting elsewhere meanwhile writes
/// its presence before reading the marks, so one of the two always sees the other.
#[test]
fn a_callee_is_marked_ringing_before_their_devices_are_looked_up() {
    let cfg = node_a_config();
    let mut h = H::new(cfg);
    let a = h.connect("alice", "a1");
    h.outputs();
    let call = h.start(a, &["bob"], CallType::Single, MediaType::Audio);
    let work: Vec<&'static str> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Node(NodeOutput::InCall { user, call_id, mark: Some(CallMark::Ringing), .. })
                if user.as_str() == "bob" && call_id == call.call_id =>
            {
                Some("marked ringing")
            }
            Output::Node(NodeOutput::Locate { user, .. }) if user.as_str() == "bob" => Some("looked up"),
            _ => None,
        })
        .collect();
    assert_eq!(work, vec!["marked ringing", "looked up"]);
}

/// A node that paused past its loss finds, on waking, that another node took its call over
/// (the lease renewal is refused): its own devices are told the call ended with
/// NETWORK_ERROR, and nothing durable is written or routed for it (the successor wrote the
/// records and summaries); its in-call marks are cleared and the call is no longer live.
#[test]
fn a_call_whose_lease_was_taken_over_ends_here_without_records() {
    let cfg = node_a_config();
    let mut h = H::new(cfg);
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let call = h.single(a, "bob");
    ok(h.accept(b, &call));
    h.events(a);
    h.events(b);
    h.outputs();
    assert_eq!(h.sb.live_calls(), 1);

    h.sb.lease_lost(h.now, &app(), &call);
    h.drain();
    for conn in [a, b] {
        let ends: Vec<EndReason> = h
            .events(conn)
            .into_iter()
            .filter_map(|e| match e {
                Event::CallEnded { call: info, reason } if info.call_id == call => Some(reason),
                Event::CallRecord(_) | Event::Summary(_) => panic!("no record from a fenced owner"),
                _ => None,
            })
            .collect();
        assert_eq!(ends, vec![EndReason::NetworkError]);
    }
    let outputs = h.outputs();
    assert!(
        !outputs.iter().any(|o| matches!(
            o,
            Output::StoreRecord { .. }
                | Output::StoreOffline { .. }
                | Output::SaveCall { .. }
                | Output::Node(NodeOutput::Route { .. })
        )),
        "{outputs:?}"
    );
    assert!(outputs.iter().any(|o| matches!(o, Output::ForgetCall { call_id, .. } if call_id == &call)));
    let cleared: Vec<&str> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Node(NodeOutput::InCall { user, call_id, mark: None, .. }) if call_id == &call => {
                Some(user.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(cleared.len(), 2, "both marks cleared: {cleared:?}");
    assert_eq!(h.sb.live_calls(), 0);
    // Told again (a second renewal), or about a call it never held: nothing happens.
    h.sb.lease_lost(h.now, &app(), &call);
    h.drain();
    assert!(h.events(a).is_empty());
    assert!(h.outputs().is_empty());
}

/// Call ids of one run sort in the order they were made, across every change in the number of
/// the counter's digits, so storage keyed by call id appends instead of splitting mid-tree.
#[test]
fn call_ids_sort_in_the_order_they_were_made() {
    let mut sb = Switchboard::new(SwitchboardConfig::default());
    let mut made = Vec::new();
    for next in [0, 0xe, 0xfe, 0xffe, 0xfff_fffe, u64::MAX - 2] {
        sb.next_call = next;
        made.push(ok(sb.new_call_id(1_000)));
        made.push(ok(sb.new_call_id(1_000)));
    }
    let mut sorted = made.clone();
    sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(sorted, made, "{made:?}");
    let prefix = made[0].as_str().rsplit_once('-').map(|(p, _)| p.to_owned()).unwrap_or_default();
    assert_eq!(made[0].as_str(), format!("{prefix}-01"));
    assert_eq!(made[3].as_str(), format!("{prefix}-110"));
    assert_eq!(made[11].as_str(), format!("{prefix}-f{:x}", u64::MAX));
}

/// The operator ends a call: every participant, connected or still rung, ends with
/// ENDED_BY_SERVER, and each gets a record saying so.
#[test]
fn the_operator_ends_a_call_for_everyone() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b = h.connect("bob", "b1");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(b, &id));
    h.outputs();
    assert_eq!(h.sb.end_call_by_server(h.now, &app(), &id, None), Ok(ServerEnd::Done));
    h.drain();
    assert!(!h.sb.is_call_live(&app(), &id));
    for conn in [a, b, c] {
        assert_eq!(ended_reason(&h.events(conn), &id), Some(EndReason::EndedByServer));
    }
    let out = h.outputs();
    let reasons: Vec<EndReason> = records(&out).iter().map(|r| r.end_reason).collect();
    assert_eq!(reasons, vec![EndReason::EndedByServer; 3], "one record per participant");
    // Once ended, or unknown, or another app's: not found, and nothing else is touched.
    let unknown = ok(CallId::new("no-such-call"));
    for call in [&id, &unknown] {
        assert_eq!(code(h.sb.end_call_by_server(h.now, &app(), call, None)), Code::CallNotFound);
    }
    let d = h.connect("dave", "d1");
    let live = h.single(d, "erin");
    let other_app = ok(AppKey::new("other-app"));
    assert_eq!(code(h.sb.end_call_by_server(h.now, &other_app, &live, None)), Code::CallNotFound);
    assert!(h.sb.is_call_live(&app(), &live));
}

/// The operator removes one participant: their devices end with KICKED_BY_SERVER, the others
/// see them leave with that reason and go on; removing the last but one ends the call for the
/// other with REMOTE_KICKED_BY_SERVER.
#[test]
fn the_operator_removes_a_participant() {
    let mut h = H::default();
    let a = h.connect("alice", "a1");
    let b1 = h.connect("bob", "b1");
    let b2 = h.connect("bob", "b2");
    let c = h.connect("carol", "c1");
    let id = h.start(a, &["bob", "carol"], CallType::Multi, MediaType::Audio).call_id;
    ok(h.accept(c, &id));
    h.events(a);
    h.events(c);
    // Bob is still being rung on two devices: both stop.
    let bob = uid("bob");
    assert_eq!(h.sb.end_call_by_server(h.now, &app(), &id, Some(&bob)), Ok(ServerEnd::Done));
    h.drain();
    for conn in [b1, b2] {
        assert_eq!(ended_reason(&h.events(conn), &id), Some(EndReason::KickedByServer));
    }
    assert!(h.sb.is_call_live(&app(), &id), "alice and carol go on");
    assert!(h.events(a).iter().any(|e| matches!(e,
        Event::ParticipantChanged { state: ParticipantState::Ended, reason: Some(EndReason::KickedByServer), user_id, .. }
        if user_id.as_str() == "bob")));
    assert_eq!(code(h.sb.end_call_by_server(h.now, &app(), &id, Some(&bob))), Code::NotInCall, "already out");
    // Bob cannot come back by himself: the call is not his to join, until he is invited again.
    assert_eq!(code(h.req(b1, Request::JoinCall { call_id: id.clone() })), Code::NotInCall);
    assert!(matches!(h.req(b1, Request::GetAvailableCalls), Ok(ResponseBody::Calls(l)) if l.is_empty()));
    let invite =
        Request::Invite { call_id: id.clone(), users: vec![bob.clone()], push: None, extra: String::new() };
    ok(h.req(a, invite));
    assert!(matches!(h.req(b2, Request::GetAvailableCalls), Ok(ResponseBody::Calls(l)) if l.len() == 1));
    ok(h.accept(b2, &id));
    ok(h.hangup(b2, &id));
    h.drain();
    h.events(a);
    h.events(b1);
    h.events(b2);
    let stranger = uid("mallory");
    assert_eq!(code(h.sb.end_call_by_server(h.now, &app(), &id, Some(&stranger))), Code::NotInCall);
    h.outputs();
    ok(h.sb.end_call_by_server(h.now, &app(), &id, Some(&uid("carol"))));
    h.drain();
    assert_eq!(ended_reason(&h.events(c), &id), Some(EndReason::KickedByServer));
    assert_eq!(ended_reason(&h.events(a), &id), Some(EndReason::RemoteKickedByServer));
    assert!(!h.sb.is_call_live(&app(), &id));
    let out = h.outputs();
    let of = |who: &str| records(&out).iter().find(|r| r.owner.as_str() == who).map(|r| r.end_reason);
    assert_eq!(of("carol"), Some(EndReason::KickedByServer));
    assert_eq!(of("alice"), Some(EndReason::RemoteKickedByServer));
}

/// On a node of several, an end asked for a call another node owns goes to that node; the
/// owner ends it as if asked on its own admin API.
#[test]
fn the_operator_ending_another_nodes_call_is_forwarded_to_its_owner() {
    let mut owner = H::new(node_a_config());
    let a = owner.connect("alice", "a1");
    let b = owner.connect("bob", "b1");
    let id = owner.single(a, "bob");
    ok(owner.accept(b, &id));
    owner.events(a);
    owner.events(b);

    let mut other = H::new(SwitchboardConfig { node_id: "node-b".into(), ..node_a_config() });
    let forwarded = other.sb.end_call_by_server(other.now, &app(), &id, None);
    assert_eq!(forwarded, Ok(ServerEnd::Forwarded { node: "node-a".into() }));
    other.drain();
    let sent = other.outputs().into_iter().find_map(|o| match o {
        Output::Node(NodeOutput::Send { node, message }) if node == "node-a" => Some(*message),
        _ => None,
    });
    let Some(message) = sent else { panic!("the end did not go to the owner") };
    assert!(matches!(&message, NodeMessage::EndCall { call_id, user: None, .. } if *call_id == id));
    owner.sb.handle_node_message(owner.now, "node-b", message);
    owner.drain();
    for conn in [a, b] {
        assert_eq!(ended_reason(&owner.events(conn), &id), Some(EndReason::EndedByServer));
    }
    // A call id of this node's that it does not hold is simply not found (never sent around).
    let own = ok(CallId::new("node-b_zzzz-1"));
    assert_eq!(code(other.sb.end_call_by_server(other.now, &app(), &own, None)), Code::CallNotFound);
}
