//! The switchboard: the server's brain over many devices and calls.
//!
//! It owns every device session (sequence numbers, acks, resume buffers, liveness), every live
//! call (through [`crate::call`]), presence, routing, busy detection and timers. It is sans-IO in
//! the style of `quinn-proto`: the network layer feeds it inputs with the current time and drains
//! its outputs.
//!
//! # Driving it
//! 1. When a transport connection delivers an authenticated `Hello`, call [`Switchboard::connect`];
//!    for every later frame call [`Switchboard::handle_frame`] (or
//!    [`Switchboard::handle_invalid_frame`] when the bytes did not convert); when the transport
//!    closes call [`Switchboard::connection_lost`].
//! 2. After each input, drain [`Switchboard::poll_output`] until it returns `None` and act on each
//!    output (write the frame to the connection, store the record, send the push, run the query
//!    and answer with [`Switchboard::complete_query`]).
//! 3. Call [`Switchboard::handle_timeout`] when the clock reaches [`Switchboard::poll_timeout`],
//!    then drain outputs again.
//!
//! Methods fall into four groups: getters (`&self`), inputs (`connect`, `handle_frame`,
//! `connection_lost`, `complete_query`, `handle_timeout`), operator commands (`shutdown`,
//! `end_recovered_calls`) and outputs (`poll_output`, `poll_timeout`).
//!
//! # Delivery
//! Every Response and Event to a device is a reliable frame: it gets the next seq of the device
//! session's outbox and stays there until a client frame acks it, so a device that resumes gets
//! exactly the frames it missed. Welcome, Pong and Kicked are unsequenced (seq 0). Frames for a
//! session without a connection wait in its outbox. Events that belong to a user rather than to
//! a device (call records, summaries) go to every live device of the user, or are stored
//! ([`Output::StoreOffline`]) when the user has none.
//!
//! A reliable frame's [`Output::Transmit`] is made when it is polled: a frame whose connection
//! closed (or was replaced by a resume) before the driver polled it is not written there; it
//! stays in the outbox and the resume replays it. Requests are answered before the events they
//! cause are sent to the same device. The device whose own request (hangup, reject, cancel)
//! ended its part in a call learns it from the response; every other device that held the call
//! gets `Event::CallEnded`.
//!
//! # Liveness
//! Every frame refreshes its session's last-seen time. A session silent for
//! `liveness_timeout_ms` is stale: its live legs end with NETWORK_ERROR (so it never looks
//! busy), it is offered no new calls, and it can still be resumed until `resume_window_ms`
//! after it was last seen; then it is dropped, and records and summaries it never acked are
//! stored for the user if no other device of theirs is live.

mod calls;
mod config;
mod fasthash;
mod output;
mod queue;
mod session;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;

use fasthash::FastMap;
use queue::{Outputs, Slot};

use crate::call::{Call, SessionKey};
use crate::error::{Code, Error};
use crate::link::Received;
use crate::model::ids::{AppKey, CallId, DeviceId, UserId};
use crate::model::kinds::{Delivery, EndReason};
use crate::model::message::{
    ClientBody, ClientFrame, Event, Hello, Response, ResponseBody, ServerBody, ServerFrame, Welcome,
};
use crate::model::snapshot::CallInfo;
use crate::wire::FrameError;

pub use config::{BusyPolicy, ConfigError, DevicePolicy, SwitchboardConfig};
pub use output::{ConnId, OfflineEvent, Output, PushRequest, Query, QueryAnswer, QueryId};

pub use output::QueryResult;

use session::{Inbound, Session};
use timer::{Timer, Timers};

/// What the switchboard knows about one user.
#[derive(Debug, Default)]
struct UserEntry {
    /// The user's device sessions (live, or stale and still resumable).
    sessions: Vec<SessionKey>,
    /// Unended calls the user is (or was) a participant of.
    calls: Vec<CallId>,
}

/// A user's live device sessions (a few, kept inline).
#[derive(Debug, Default)]
struct Devices {
    inline: [SessionKey; 4],
    n: usize,
    spill: Vec<SessionKey>,
}

impl Devices {
    fn push(&mut self, sk: SessionKey) {
        match self.inline.get_mut(self.n) {
            Some(slot) => {
                *slot = sk;
                self.n += 1;
            }
            None => self.spill.push(sk),
        }
    }

    fn len(&self) -> usize {
        self.n + self.spill.len()
    }

    fn iter(&self) -> impl Iterator<Item = SessionKey> + '_ {
        self.inline.iter().take(self.n).chain(&self.spill).copied()
    }
}

/// Who acted on a request: the session and its identity.
#[derive(Debug, Clone)]
struct Ctx {
    sk: SessionKey,
    app: AppKey,
    user: UserId,
    device: DeviceId,
}

/// The delivery half of the switchboard: sessions, presence and the output queue. Kept apart
/// from the calls so a handler can hold a call and send at the same time.
#[derive(Debug)]
struct Net {
    sessions: FastMap<SessionKey, Session>,
    conns: FastMap<ConnId, SessionKey>,
    /// Presence and the per-user call index, by app then user. User ids come from clients, so
    /// the inner maps keep the standard keyed hasher.
    users: FastMap<AppKey, HashMap<UserId, UserEntry>>,
    outputs: Outputs,
    /// Sessions dropped while frames of theirs wait in `outputs`; kept until the queue drains.
    graveyard: FastMap<SessionKey, Session>,
    to_drop: Vec<SessionKey>,
    max_unacked: usize,
    /// While shutting down, user events are stored rather than sent.
    store_user_events: bool,
}

/// Queues a reliable frame on a session (and transmits it when connected). A free function so
/// callers can hold other parts of [`Net`] at the same time.
#[inline]
fn push_frame(
    sessions: &mut FastMap<SessionKey, Session>,
    outputs: &mut Outputs,
    to_drop: &mut Vec<SessionKey>,
    max_unacked: usize,
    sk: SessionKey,
    body: ServerBody,
) -> Option<u64> {
    let s = sessions.get_mut(&sk)?;
    let seq = s.outbox.next_seq();
    let ack = s.ack();
    s.outbox.push(Box::new(ServerFrame { seq, ack, body }));
    if let Some(conn) = s.conn {
        outputs.frame(conn, sk, seq, s.epoch);
    }
    if s.outbox.len() > max_unacked && !to_drop.contains(&sk) {
        to_drop.push(sk);
    }
    Some(seq)
}

impl Net {
    fn push_body(&mut self, sk: SessionKey, body: ServerBody) -> Option<u64> {
        push_frame(&mut self.sessions, &mut self.outputs, &mut self.to_drop, self.max_unacked, sk, body)
    }

    fn send(&mut self, sk: SessionKey, event: Event) {
        self.push_body(sk, ServerBody::Event(event));
    }

    /// Sends one event to several sessions.
    fn send_all(&mut self, sks: &[SessionKey], event: Event) {
        let mut event = Some(event);
        let n = sks.len();
        for (i, &sk) in sks.iter().enumerate() {
            let e = if i + 1 == n { event.take() } else { event.clone() };
            if let Some(e) = e {
                self.send(sk, e);
            }
        }
    }

    fn respond(&mut self, sk: SessionKey, request_id: u64, result: Result<ResponseBody, Error>) {
        if request_id == 0 {
            return;
        }
        self.push_body(sk, ServerBody::Response(Response { request_id, result }));
    }

    /// An unsequenced frame (Welcome, Pong, Kicked), transmitted only when connected.
    fn unsequenced(&mut self, sk: SessionKey, body: ServerBody) {
        if let Some(s) = self.sessions.get(&sk)
            && let Some(conn) = s.conn
        {
            let frame = ServerFrame { seq: 0, ack: s.ack(), body };
            self.outputs.push_back(Output::Transmit { conn, frame });
        }
    }

    fn is_live(&self, sk: SessionKey) -> bool {
        self.sessions.get(&sk).is_some_and(|s| !s.stale)
    }

    fn user(&self, app: &AppKey, user: &UserId) -> Option<&UserEntry> {
        self.users.get(app)?.get(user)
    }

    fn user_mut(&mut self, app: &AppKey, user: &UserId) -> Option<&mut UserEntry> {
        self.users.get_mut(app)?.get_mut(user)
    }

    /// The user's entry, made if missing.
    fn user_entry(&mut self, app: &AppKey, user: &UserId) -> &mut UserEntry {
        if !self.users.contains_key(app) {
            self.users.insert(app.clone(), HashMap::new());
        }
        let users = self.users.entry(app.clone()).or_default();
        if !users.contains_key(user) {
            users.insert(user.clone(), UserEntry::default());
        }
        users.entry(user.clone()).or_default()
    }

    /// Forgets a user with no sessions and no calls.
    fn prune_user(&mut self, app: &AppKey, user: &UserId) {
        if let Some(users) = self.users.get_mut(app) {
            if users.get(user).is_some_and(|e| e.sessions.is_empty() && e.calls.is_empty()) {
                users.remove(user);
            }
            if users.is_empty() {
                self.users.remove(app);
            }
        }
    }

    /// The user's live device sessions.
    fn live_sessions(&self, app: &AppKey, user: &UserId) -> Vec<SessionKey> {
        match self.user(app, user) {
            Some(entry) => entry.sessions.iter().copied().filter(|&sk| self.is_live(sk)).collect(),
            None => Vec::new(),
        }
    }

    fn has_live_session(&self, app: &AppKey, user: &UserId) -> bool {
        self.user(app, user).is_some_and(|e| e.sessions.iter().any(|&sk| self.is_live(sk)))
    }

    /// The user's live devices, for events that belong to the user rather than a device.
    /// With `ended`, that call also leaves the user's call index (one lookup for both).
    fn user_devices(&mut self, app: &AppKey, user: &UserId, ended: Option<&CallId>) -> Devices {
        let mut devices = Devices::default();
        let Some(entry) = self.users.get_mut(app).and_then(|u| u.get_mut(user)) else { return devices };
        if let Some(call) = ended {
            entry.calls.retain(|c| c != call);
        }
        let prune = entry.calls.is_empty() && entry.sessions.is_empty();
        if !self.store_user_events {
            for &sk in &entry.sessions {
                if self.sessions.get(&sk).is_some_and(|s| !s.stale) {
                    devices.push(sk);
                }
            }
        }
        if prune {
            self.prune_user(app, user);
        }
        devices
    }

    /// An event for a user: to each of `devices`, or stored when there is none.
    fn deliver(&mut self, devices: &Devices, app: &AppKey, user: &UserId, event: Event) {
        let n = devices.len();
        if n == 0 {
            self.outputs.push_back(Output::StoreOffline { app: app.clone(), user: user.clone(), event });
            return;
        }
        let mut event = Some(event);
        for (i, sk) in devices.iter().enumerate() {
            let e = if i + 1 == n { event.take() } else { event.clone() };
            if let Some(e) = e {
                self.send(sk, e);
            }
        }
    }

    fn add_call(&mut self, app: &AppKey, user: &UserId, call: &CallId) {
        let entry = match self.user_mut(app, user) {
            Some(entry) => entry,
            None => self.user_entry(app, user),
        };
        if !entry.calls.contains(call) {
            entry.calls.push(call.clone());
        }
    }

    fn user_calls(&self, app: &AppKey, user: &UserId) -> Vec<CallId> {
        self.user(app, user).map(|e| e.calls.clone()).unwrap_or_default()
    }
}

/// How a dropped session's legs end.
#[derive(Debug, Clone, Copy)]
enum LegEnd {
    /// With this reason (NETWORK_ERROR, KICKED_OTHER_LOGIN …).
    Reason(EndReason),
    /// As if the device hung up (Goodbye): cancel, reject or hang up by state.
    Hangup,
}

/// What happens to the unacked user events (records, summaries) of a dropped session.
#[derive(Debug, Clone, Copy)]
enum Leftovers {
    /// Stored for the user when no other device of theirs is live.
    Store,
    /// Handed to the session that replaces it.
    CarryTo(SessionKey),
}

/// Whom a storage query answers.
#[derive(Debug, Clone, Copy)]
enum QueryFor {
    /// A device's request (session, request id).
    Request(SessionKey, u64),
    /// A session that just connected waits for the user's stored offline events.
    Offline(SessionKey),
}

/// The server's switchboard. See the [module docs](self) for how to drive it.
#[derive(Debug)]
pub struct Switchboard {
    cfg: SwitchboardConfig,
    net: Net,
    /// Boxed so the table stays small and cache-friendly.
    calls: FastMap<CallId, Box<Call>>,
    live: usize,
    timers: Timers,
    queries: FastMap<QueryId, QueryFor>,
    next_session: u64,
    next_call: u64,
    next_tx: u64,
    next_query: u64,
    /// Makes call and session ids of this switchboard instance unique (derived from the first
    /// input's time and the storage's max sync time).
    prefix: Option<String>,
    min_sync_time: i64,
    last_sync_time: i64,
    stopped: bool,
    scratch: Vec<CallId>,
    id_buf: String,
}

impl Switchboard {
    /// A switchboard with no sessions and no calls.
    pub fn new(config: SwitchboardConfig) -> Self {
        let max_unacked = config.max_unacked_frames.max(1);
        Switchboard {
            cfg: config,
            net: Net {
                sessions: FastMap::default(),
                conns: FastMap::default(),
                users: FastMap::default(),
                outputs: Outputs::default(),
                graveyard: FastMap::default(),
                to_drop: Vec::new(),
                max_unacked,
                store_user_events: false,
            },
            calls: FastMap::default(),
            live: 0,
            timers: Timers::default(),
            queries: FastMap::default(),
            next_session: 0,
            next_call: 0,
            next_tx: 0,
            next_query: 0,
            prefix: None,
            min_sync_time: 0,
            last_sync_time: 0,
            stopped: false,
            scratch: Vec::new(),
            id_buf: String::new(),
        }
    }

    /// Records written after a restart keep increasing past this (storage's max sync_time).
    pub fn set_min_sync_time(&mut self, sync_time: i64) {
        self.min_sync_time = self.min_sync_time.max(sync_time);
        self.last_sync_time = self.last_sync_time.max(sync_time);
    }

    // ----- inputs -----------------------------------------------------------------------------

    /// A transport connection presented a Hello whose token the driver already verified as
    /// (`app`, `user`).
    ///
    /// A fresh session gets `Welcome{resumed: false}`, then an IncomingCall for every live call
    /// in which the user is still being rung, and a [`Query::OfflineEvents`]: the user's stored
    /// events follow as reliable frames when the driver answers it (acking them yields
    /// [`Output::OfflineDelivered`]). A resume (`hello.resume` names the
    /// kept session of this device and its outbox still holds every frame after
    /// `last_received_seq`) gets `Welcome{resumed: true, last_received_seq}` and the replay of the
    /// missed frames, in order, exactly once. A failed resume, or a fresh Hello from a device
    /// that still has a session, replaces the old session: its calls end for it with
    /// NETWORK_ERROR first, and its undelivered records and summaries move to the new session.
    pub fn connect(&mut self, now_ms: i64, conn: ConnId, app: AppKey, user: UserId, hello: Hello) {
        self.init_prefix(now_ms);
        if let Some(old) = self.net.conns.remove(&conn)
            && let Some(s) = self.net.sessions.get_mut(&old)
        {
            s.set_conn(None);
        }
        if self.stopped {
            let frame = ServerFrame {
                seq: 0,
                ack: 0,
                body: ServerBody::Event(Event::Kicked {
                    reason: EndReason::EndedByServer,
                    message: "the server is shutting down".to_owned(),
                }),
            };
            self.net.outputs.push_back(Output::Transmit { conn, frame });
            self.net.outputs.push_back(Output::Close { conn });
            return;
        }
        let existing = self.net.user(&app, &user).and_then(|entry| {
            entry
                .sessions
                .iter()
                .copied()
                .find(|sk| self.net.sessions.get(sk).is_some_and(|s| s.device == hello.device_id))
        });
        if let (Some(resume), Some(sk)) = (&hello.resume, existing) {
            let resumable = self.net.sessions.get(&sk).is_some_and(|s| {
                s.id == resume.session_id && s.outbox.replay_after(resume.last_received_seq).is_ok()
            });
            if resumable {
                self.resume(now_ms, conn, sk, resume.last_received_seq);
                self.finish_input(now_ms);
                return;
            }
        }

        // A fresh session.
        self.next_session += 1;
        let sk = self.next_session;
        let id = format!("s{}-{}", self.prefix.as_deref().unwrap_or(""), sk);
        let session = Session::new(
            id,
            app.clone(),
            user.clone(),
            hello.device_id,
            conn,
            now_ms,
            self.cfg.request_burst,
        );
        self.net.sessions.insert(sk, session);
        self.net.conns.insert(conn, sk);
        self.net.user_entry(&app, &user).sessions.push(sk);
        self.arm_session(sk, now_ms.saturating_add(i64::from(self.cfg.liveness_timeout_ms)));
        self.send_welcome(now_ms, sk, false);

        if let Some(old) = existing {
            self.drop_session(now_ms, old, LegEnd::Reason(EndReason::NetworkError), Leftovers::CarryTo(sk));
        }
        if self.cfg.device_policy == DevicePolicy::SingleDevice {
            let others: Vec<SessionKey> = self
                .net
                .user(&app, &user)
                .map(|e| e.sessions.iter().copied().filter(|&o| o != sk).collect())
                .unwrap_or_default();
            for other in others {
                self.kick(now_ms, other, EndReason::KickedOtherLogin, "the user logged in on another device");
            }
        }
        self.offer_ringing(sk);
        self.load_offline(sk);
        self.finish_input(now_ms);
    }

    /// A frame from a connection. Frames with `seq > 0` go through the session's inbox (so a
    /// frame replayed after a resume is never processed twice); every frame's `ack` acks the
    /// session's outbox and refreshes its liveness.
    pub fn handle_frame(&mut self, now_ms: i64, conn: ConnId, frame: ClientFrame) {
        let Some(&sk) = self.net.conns.get(&conn) else { return };
        self.touch(now_ms, sk, frame.ack);
        if frame.seq == 0 {
            self.dispatch(now_ms, sk, Inbound::Frame(frame));
        } else {
            self.receive(now_ms, sk, frame.seq, Inbound::Frame(frame));
        }
        self.finish_input(now_ms);
    }

    /// The frame's bytes did not convert (wire::FrameError): its request is answered with the
    /// error (if it had a seq, it still counts as received so numbering stays intact); the
    /// session keeps being served.
    pub fn handle_invalid_frame(&mut self, now_ms: i64, conn: ConnId, error: FrameError) {
        let Some(&sk) = self.net.conns.get(&conn) else { return };
        self.touch(now_ms, sk, error.ack);
        let inbound = Inbound::Invalid { request_id: error.request_id, error: error.error };
        if error.seq == 0 {
            self.dispatch(now_ms, sk, inbound);
        } else {
            self.receive(now_ms, sk, error.seq, inbound);
        }
        self.finish_input(now_ms);
    }

    /// The transport closed (not a Goodbye). The session stays resumable; liveness keeps
    /// running.
    pub fn connection_lost(&mut self, now_ms: i64, conn: ConnId) {
        let _ = now_ms;
        if let Some(sk) = self.net.conns.remove(&conn)
            && let Some(s) = self.net.sessions.get_mut(&sk)
            && s.conn == Some(conn)
        {
            s.set_conn(None);
        }
    }

    /// The driver's answer to an [`Output::Query`]: answers the request that caused it.
    pub fn complete_query(&mut self, now_ms: i64, id: QueryId, result: QueryResult) {
        match self.queries.remove(&id) {
            Some(QueryFor::Request(sk, request_id)) => {
                let result = result.and_then(|answer| match answer {
                    QueryAnswer::Records(page) => Ok(ResponseBody::Records(page)),
                    QueryAnswer::Deleted => Ok(ResponseBody::Empty),
                    QueryAnswer::OfflineEvents(_) => {
                        Err(Error::new(Code::Internal, "a request got offline events"))
                    }
                });
                self.net.respond(sk, request_id, result);
            }
            Some(QueryFor::Offline(sk)) => match result {
                // The session may have gone meanwhile: the events stay stored for the next one.
                Ok(QueryAnswer::OfflineEvents(events)) => self.send_offline(sk, events),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "stored offline events could not be loaded"),
            },
            None => {}
        }
        self.finish_input(now_ms);
    }

    /// Runs every timer due at `now_ms`: ring timeouts, change-media-type timeouts, liveness,
    /// resume windows, ended-call retention.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        while let Some((at, timer)) = self.timers.pop_due(now_ms) {
            match timer {
                Timer::Session(sk) => self.session_timer(now_ms, sk, at),
                Timer::Ring(id, idx) => self.ring_timer(now_ms, &id, idx, at),
                Timer::Change(id, seq) => self.change_timer(now_ms, &id, seq),
                Timer::Retention(id) => {
                    let retention = i64::from(self.cfg.ended_call_retention_ms);
                    let expired = self
                        .calls
                        .get(&id)
                        .and_then(|c| c.ended_at_ms)
                        .is_some_and(|end| end.saturating_add(retention) <= now_ms);
                    if expired {
                        self.calls.remove(&id);
                    }
                }
            }
        }
        self.finish_input(now_ms);
    }

    // ----- operator commands ----------------------------------------------------------------

    /// Graceful stop: every live call ends with ENDED_BY_SERVER (records and summaries are
    /// stored as offline events so nothing is lost), every connected device gets
    /// `Event::Kicked{EndedByServer}` (which clients take as "reconnect later", not as a
    /// kick) then Close. Later connects are refused the same way.
    pub fn shutdown(&mut self, now_ms: i64) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.net.store_user_events = true;
        let mut live: Vec<CallId> =
            self.calls.iter().filter(|(_, c)| !c.is_ended()).map(|(id, _)| id.clone()).collect();
        live.sort();
        for id in live {
            self.finish_call(now_ms, &id, EndReason::EndedByServer, None);
        }
        let mut sessions: Vec<SessionKey> = self.net.sessions.keys().copied().collect();
        sessions.sort_unstable();
        for sk in sessions {
            let kicked = Event::Kicked {
                reason: EndReason::EndedByServer,
                message: "the server is shutting down".to_owned(),
            };
            self.net.unsequenced(sk, ServerBody::Event(kicked));
            if let Some(conn) = self.net.sessions.get(&sk).and_then(|s| s.conn) {
                self.net.outputs.push_back(Output::Close { conn });
            }
        }
        let sessions = std::mem::take(&mut self.net.sessions);
        self.net.graveyard.extend(sessions);
        self.net.conns.clear();
        self.net.users.clear();
        self.net.to_drop.clear();
        self.queries.clear();
        self.timers.clear();
    }

    /// After a crash: calls found saved ([`Output::SaveCall`] snapshots) end with
    /// NETWORK_ERROR, producing their records and summaries (stored as offline events for
    /// users with no live device) and [`Output::ForgetCall`].
    ///
    /// Each call ends at `alive_until_ms`, the last moment the stopped server was known to be
    /// running (a mark the driver keeps in storage), so the downtime is not counted as talk
    /// time; never before the latest moment its snapshot records, nor after `now_ms`. Without
    /// a mark, that latest moment. NETWORK_ERROR is what every device of the call saw (its
    /// connection broke and its session could not be resumed), so the records say the same.
    pub fn end_recovered_calls(
        &mut self,
        now_ms: i64,
        alive_until_ms: Option<i64>,
        calls: Vec<(AppKey, CallInfo)>,
    ) {
        self.init_prefix(now_ms);
        for (app, info) in calls {
            if self.calls.contains_key(&info.call_id) {
                continue;
            }
            if info.is_ended() {
                self.net.outputs.push_back(Output::ForgetCall { app, call_id: info.call_id });
                continue;
            }
            let call = Call::from_info(app, info);
            let id = call.id.clone();
            for p in &call.parties {
                self.net.add_call(&call.app, &p.user, &id);
            }
            let at = alive_until_ms.unwrap_or_else(|| call.last_event_ms());
            self.calls.insert(id.clone(), Box::new(call));
            self.live += 1;
            self.finish_call_at(now_ms, at, &id, EndReason::NetworkError, None);
        }
        self.finish_input(now_ms);
    }

    // ----- getters ----------------------------------------------------------------------------

    /// Whether the call exists in this app and has not ended.
    pub fn is_call_live(&self, app: &AppKey, call_id: &CallId) -> bool {
        self.calls.get(call_id).is_some_and(|c| &c.app == app && !c.is_ended())
    }

    /// A snapshot of a live call, or of an ended one still retained.
    pub fn call(&self, app: &AppKey, call_id: &CallId) -> Option<CallInfo> {
        self.calls.get(call_id).filter(|c| &c.app == app).map(|c| c.snapshot())
    }

    /// Device sessions that currently have a transport connection. O(1): every attached
    /// connection has exactly one entry in the connection index.
    pub fn connected_devices(&self) -> usize {
        debug_assert_eq!(
            self.net.conns.len(),
            self.net.sessions.values().filter(|s| s.conn.is_some()).count(),
            "the connection index and the sessions' connections disagree"
        );
        self.net.conns.len()
    }

    /// Calls that have not ended.
    pub fn live_calls(&self) -> usize {
        self.live
    }

    // ----- outputs ----------------------------------------------------------------------------

    /// The next thing the driver must do; drain until `None` after every input. Outputs come
    /// in the order they were caused; frames for one connection are in seq order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            let Some(slot) = self.net.outputs.pop_slot() else {
                self.net.graveyard.clear();
                return None;
            };
            let Slot::Frame { conn, sk, seq, epoch } = slot else { return self.net.outputs.pop_other() };
            let Some(s) = self.net.sessions.get(&sk).or_else(|| self.net.graveyard.get(&sk)) else {
                continue;
            };
            // Skipped when the session moved to another connection (the resume replayed the
            // frame there) or the frame was acked already (the device has it).
            if s.conn != Some(conn) || s.epoch != epoch {
                continue;
            }
            let Some((first, _)) = s.outbox.pending().next() else { continue };
            let Some(Ok(k)) = seq.checked_sub(first).map(usize::try_from) else { continue };
            let Some((_, frame)) = s.outbox.pending().nth(k) else { continue };
            let frame = ServerFrame { seq, ack: s.ack(), body: frame.body.clone() };
            return Some(Output::Transmit { conn, frame });
        }
    }

    /// When [`Switchboard::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<i64> {
        self.timers.next()
    }

    // ----- sessions ---------------------------------------------------------------------------

    fn init_prefix(&mut self, now_ms: i64) {
        if self.prefix.is_some() {
            return;
        }
        let mut x = (now_ms as u64) ^ (self.min_sync_time as u64).rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut s = String::with_capacity(10);
        for _ in 0..10 {
            let d = (x % 36) as usize;
            s.push(char::from(DIGITS.get(d).copied().unwrap_or(b'0')));
            x /= 36;
        }
        self.prefix = Some(s);
    }

    fn new_call_id(&mut self, now_ms: i64) -> Result<CallId, Error> {
        self.init_prefix(now_ms);
        self.next_call += 1;
        let mut buf = std::mem::take(&mut self.id_buf);
        buf.clear();
        let _ = write!(buf, "{}-{:x}", self.prefix.as_deref().unwrap_or("c"), self.next_call);
        let id = CallId::new(&buf).map_err(|_| Error::new(Code::Internal, "could not make a call id"));
        self.id_buf = buf;
        id
    }

    fn arm_session(&mut self, sk: SessionKey, at: i64) {
        if let Some(s) = self.net.sessions.get_mut(&sk)
            && s.timer_at != at
        {
            s.timer_at = at;
            self.timers.set(at, Timer::Session(sk));
        }
    }

    fn send_welcome(&mut self, now_ms: i64, sk: SessionKey, resumed: bool) {
        let Some(s) = self.net.sessions.get(&sk) else { return };
        let welcome = Welcome {
            session_id: s.id.clone(),
            user_id: s.user.clone(),
            server_time_ms: now_ms,
            resumed,
            heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
            liveness_timeout_ms: self.cfg.liveness_timeout_ms,
            ice_servers: self.cfg.ice_servers.clone(),
            last_received_seq: s.ack(),
        };
        self.net.unsequenced(sk, ServerBody::Welcome(welcome));
    }

    fn resume(&mut self, now_ms: i64, conn: ConnId, sk: SessionKey, last_received: u64) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        if let Some(old) = s.set_conn(Some(conn))
            && old != conn
        {
            self.net.conns.remove(&old);
            self.net.outputs.push_back(Output::Close { conn: old });
        }
        self.net.conns.insert(conn, sk);
        self.touch(now_ms, sk, last_received);
        self.send_welcome(now_ms, sk, true);
        if let Some(s) = self.net.sessions.get(&sk) {
            let ack = s.ack();
            for (_, frame) in s.outbox.pending() {
                let mut frame = ServerFrame::clone(frame);
                frame.ack = ack;
                self.net.outputs.push_back(Output::Transmit { conn, frame });
            }
        }
        self.offer_ringing(sk);
        self.load_offline(sk);
    }

    /// Asks the driver for the session's user's stored offline events ([`Query::OfflineEvents`]).
    fn load_offline(&mut self, sk: SessionKey) {
        let Some(s) = self.net.sessions.get(&sk) else { return };
        let (app, user) = (s.app.clone(), s.user.clone());
        self.next_query += 1;
        let id = self.next_query;
        self.queries.insert(id, QueryFor::Offline(sk));
        self.net.outputs.push_back(Output::Query { id, app, user, query: Query::OfflineEvents });
    }

    /// Sends stored events to a session, skipping those it already holds.
    fn send_offline(&mut self, sk: SessionKey, offline: Vec<OfflineEvent>) {
        for ev in offline {
            let held = self.net.sessions.get(&sk).is_none_or(|s| s.holds_offline(ev.id));
            if held {
                continue;
            }
            if let Some(seq) = self.net.push_body(sk, ServerBody::Event(ev.event))
                && let Some(s) = self.net.sessions.get_mut(&sk)
            {
                s.offline.push((seq, ev.id));
            }
        }
    }

    /// Offers to a (live) session every call in which its user is still being rung and that it
    /// was not offered yet (SPEC §5: a device that connects in time still rings).
    fn offer_ringing(&mut self, sk: SessionKey) {
        let Some(s) = self.net.sessions.get(&sk) else { return };
        if s.stale {
            return;
        }
        let (app, user) = (s.app.clone(), s.user.clone());
        for id in self.net.user_calls(&app, &user) {
            let Some(call) = self.calls.get_mut(&id) else { continue };
            if call.is_ended() {
                continue;
            }
            let Some(idx) = call.index_of(&user) else { continue };
            let Some(party) = call.parties.get_mut(idx) else { continue };
            if !party.state.is_ringing() || party.offered.contains(&sk) {
                continue;
            }
            party.offered.push(sk);
            let inviter = party.inviter.clone().unwrap_or_else(|| call.creator.clone());
            let extra = party.extra.clone().unwrap_or_else(|| call.extra.clone());
            let event = Event::IncomingCall { call: call.snapshot(), inviter, extra };
            self.net.send(sk, event);
        }
    }

    /// Any frame: refreshes liveness (a stale session that speaks is live again) and processes
    /// the ack.
    fn touch(&mut self, now_ms: i64, sk: SessionKey, ack: u64) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        s.last_seen = s.last_seen.max(now_ms);
        if s.stale {
            s.stale = false;
            let at = now_ms.saturating_add(i64::from(self.cfg.liveness_timeout_ms));
            self.arm_session(sk, at);
        }
        self.process_ack(sk, ack);
    }

    fn process_ack(&mut self, sk: SessionKey, ack: u64) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        let mut acked = std::mem::take(&mut self.scratch);
        s.outbox.ack(ack, |_, frame| {
            if let ServerBody::Event(Event::IncomingCall { call, .. }) = &frame.body {
                acked.push(call.call_id.clone());
            }
        });
        let n = s.offline.partition_point(|(seq, _)| *seq <= ack);
        if n > 0 {
            let ids: Vec<i64> = s.offline.drain(..n).map(|(_, id)| id).collect();
            s.offline_delivered(&ids);
            self.net.outputs.push_back(Output::OfflineDelivered {
                app: s.app.clone(),
                user: s.user.clone(),
                ids,
            });
        }
        if !acked.is_empty() {
            let (user, device) = (s.user.clone(), s.device.clone());
            for id in acked.drain(..) {
                self.mark_delivery(&id, &user, &device, Delivery::Delivered);
            }
        }
        self.scratch = acked;
    }

    fn receive(&mut self, now_ms: i64, sk: SessionKey, seq: u64, inbound: Inbound) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        match s.inbox.receive(seq, ()) {
            Received::Deliver(units) => {
                let n = units.len() as u64;
                self.dispatch(now_ms, sk, inbound);
                // Held frames that followed it, now in order.
                for next in seq.saturating_add(1)..seq.saturating_add(n) {
                    let Some(item) = self.net.sessions.get_mut(&sk).and_then(|s| s.held.remove(&next)) else {
                        continue;
                    };
                    self.dispatch(now_ms, sk, item);
                }
            }
            Received::Held => {
                s.held.insert(seq, inbound);
            }
            Received::Duplicate | Received::Dropped => {}
        }
    }

    fn dispatch(&mut self, now_ms: i64, sk: SessionKey, inbound: Inbound) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        match inbound {
            Inbound::Invalid { request_id, error } => self.net.respond(sk, request_id, Err(error)),
            Inbound::Frame(frame) => match frame.body {
                ClientBody::Ping => self.net.unsequenced(sk, ServerBody::Pong { server_time_ms: now_ms }),
                ClientBody::Goodbye => {
                    self.drop_session(now_ms, sk, LegEnd::Hangup, Leftovers::Store);
                }
                ClientBody::Hello(_) => {
                    let e = Error::new(Code::InvalidState, "the session is already open");
                    self.net.respond(sk, frame.request_id, Err(e));
                }
                ClientBody::Request(request) => {
                    if !s.take_token(now_ms, self.cfg.requests_per_second, self.cfg.request_burst) {
                        let e = Error::from_code(Code::RateLimited);
                        self.net.respond(sk, frame.request_id, Err(e));
                        return;
                    }
                    let ctx = Ctx { sk, app: s.app.clone(), user: s.user.clone(), device: s.device.clone() };
                    self.request(now_ms, &ctx, frame.request_id, request);
                }
            },
        }
    }

    fn session_timer(&mut self, now_ms: i64, sk: SessionKey, at: i64) {
        let Some(s) = self.net.sessions.get(&sk) else { return };
        if s.timer_at != at {
            return;
        }
        if !s.stale {
            let due = s.last_seen.saturating_add(i64::from(self.cfg.liveness_timeout_ms));
            if due > now_ms {
                self.arm_session(sk, due);
            } else {
                self.expire(now_ms, sk);
            }
        } else {
            let due = s.last_seen.saturating_add(i64::from(self.cfg.resume_window_ms));
            if due > now_ms {
                self.arm_session(sk, due);
            } else {
                tracing::debug!(session = sk, "resume window over; session dropped");
                self.drop_session(now_ms, sk, LegEnd::Reason(EndReason::NetworkError), Leftovers::Store);
            }
        }
    }

    /// A session went silent past the liveness timeout: its live legs end with NETWORK_ERROR
    /// at its last sign of life (the timeout spent noticing is not talk time); the session is
    /// kept for a resume until the resume window closes.
    fn expire(&mut self, now_ms: i64, sk: SessionKey) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        tracing::debug!(session = sk, "device silent past the liveness timeout");
        s.stale = true;
        let (app, user, last_seen) = (s.app.clone(), s.user.clone(), s.last_seen);
        let drop_at = s.last_seen.saturating_add(i64::from(self.cfg.resume_window_ms));
        for (id, idx) in self.legs_of(sk, &app, &user) {
            let reason = EndReason::NetworkError;
            self.leave_at(now_ms, last_seen, &id, idx, reason, None, reason);
        }
        if drop_at <= now_ms {
            self.drop_session(now_ms, sk, LegEnd::Reason(EndReason::NetworkError), Leftovers::Store);
        } else {
            self.arm_session(sk, drop_at);
        }
    }

    /// The (call, participant) legs a session holds.
    fn legs_of(&self, sk: SessionKey, app: &AppKey, user: &UserId) -> Vec<(CallId, usize)> {
        let mut legs = Vec::new();
        if let Some(entry) = self.net.user(app, user) {
            for id in &entry.calls {
                if let Some(call) = self.calls.get(id)
                    && let Some(idx) = call.index_of(user)
                    && call.party(idx).is_some_and(|p| p.bound == Some(sk) && p.state.is_active())
                {
                    legs.push((id.clone(), idx));
                }
            }
        }
        legs
    }

    /// The server closes a session: Kicked (unsequenced), then Close; its legs end with `reason`.
    fn kick(&mut self, now_ms: i64, sk: SessionKey, reason: EndReason, message: &str) {
        let kicked = Event::Kicked { reason, message: message.to_owned() };
        self.net.unsequenced(sk, ServerBody::Event(kicked));
        self.drop_session(now_ms, sk, LegEnd::Reason(reason), Leftovers::Store);
    }

    /// Removes a session for good: Close its connection, end its legs, take it off every
    /// invitation, and save its undelivered records and summaries. Legs lost to the network
    /// (NETWORK_ERROR) end at the device's last sign of life; the others now.
    fn drop_session(&mut self, now_ms: i64, sk: SessionKey, how: LegEnd, leftovers: Leftovers) {
        let Some(s) = self.net.sessions.remove(&sk) else { return };
        if let Some(conn) = s.conn {
            self.net.conns.remove(&conn);
            self.net.outputs.push_back(Output::Close { conn });
        }
        let calls = match self.net.user_mut(&s.app, &s.user) {
            Some(entry) => {
                entry.sessions.retain(|&o| o != sk);
                entry.calls.clone()
            }
            None => Vec::new(),
        };
        let mut legs = Vec::new();
        for id in &calls {
            let Some(call) = self.calls.get_mut(id) else { continue };
            let Some(idx) = call.index_of(&s.user) else { continue };
            let reason = match how {
                LegEnd::Reason(r) => r,
                LegEnd::Hangup => call.hangup_reason(idx),
            };
            if let Some(party) = call.party_mut(idx) {
                party.offered.retain(|&o| o != sk);
                if party.bound == Some(sk) && party.state.is_active() {
                    legs.push((id.clone(), idx, reason));
                }
            }
        }
        let at = match how {
            LegEnd::Reason(EndReason::NetworkError) => s.last_seen,
            LegEnd::Reason(_) | LegEnd::Hangup => now_ms,
        };
        for (id, idx, reason) in legs {
            self.leave_at(now_ms, at, &id, idx, reason, None, reason);
        }
        // Records and summaries the device never acked.
        let carry = |frame: &ServerFrame| match &frame.body {
            ServerBody::Event(e @ (Event::CallRecord(_) | Event::Summary(_))) => Some(e.clone()),
            _ => None,
        };
        let leftovers_events: Vec<Event> = s
            .outbox
            .pending()
            .filter(|(seq, _)| !s.offline.iter().any(|(o, _)| o == seq))
            .filter_map(|(_, frame)| carry(frame))
            .collect();
        match leftovers {
            Leftovers::CarryTo(new) => {
                for event in leftovers_events {
                    self.net.send(new, event);
                }
            }
            Leftovers::Store => {
                if !self.net.has_live_session(&s.app, &s.user) {
                    for event in leftovers_events {
                        self.net.outputs.push_back(Output::StoreOffline {
                            app: s.app.clone(),
                            user: s.user.clone(),
                            event,
                        });
                    }
                }
            }
        }
        self.net.prune_user(&s.app, &s.user);
        if s.conn.is_some() {
            self.net.graveyard.insert(sk, s);
        }
    }

    /// Ends the inputs: sessions whose outbox overflowed are dropped as too slow.
    fn finish_input(&mut self, now_ms: i64) {
        while let Some(sk) = self.net.to_drop.pop() {
            tracing::debug!(session = sk, "device too slow; session dropped");
            self.drop_session(now_ms, sk, LegEnd::Reason(EndReason::NetworkError), Leftovers::Store);
        }
    }
}
