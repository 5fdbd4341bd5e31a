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
//!
//! # Layout
//! This file holds the switchboard and its API (inputs, getters, outputs); `net` the delivery
//! half (sessions by connection, presence, the output queue); `sessions` the handling of device
//! sessions (welcome, resume, acks, liveness, dispatch, drop); `calls` the call requests.

mod calls;
mod cluster;
mod config;
mod fasthash;
mod media_route;
mod net;
mod output;
mod queue;
mod server_end;
mod session;
mod sessions;
mod sign_out;
mod timer;
mod weight;

#[cfg(test)]
mod tests;

use queue::{Outputs, Slot};

use crate::call::{Call, SessionKey};
use crate::error::{Code, Error};
use crate::model::ids::{AppKey, CallId, DeviceId, UserId};
use crate::model::kinds::EndReason;
use crate::model::message::{ClientFrame, Event, Hello, OutFrame, Response, ResponseBody, ServerBody};
use crate::model::snapshot::CallInfo;
use crate::wire::FrameError;
use std::sync::Arc;

pub use cluster::{CallMark, NodeMessage, NodeOutput, RemoteDevice, owner_node};
pub use config::{
    BusyPolicy, ConfigError, DevicePolicy, MAX_NODE_ID_LEN, MEDIA_RECOVERY_MS, SwitchboardConfig,
    valid_node_id,
};
pub use fasthash::{FastHasher, FastMap, FastSet};
pub use media_route::{MediaRouter, TokenSigner};
pub use output::{
    ConnId, DevicePresence, OfflineEvent, Output, PushKind, PushRequest, Query, QueryAnswer, QueryId,
};
pub use server_end::ServerEnd;

pub use output::QueryResult;
pub use weight::{body_frame_bytes, frame_bytes};

use session::{Inbound, Session};
use timer::{Timer, Timers};

use net::{Limits, Net};
use sessions::{Leftovers, LegEnd};

/// Who acted on a request: the session and its identity.
#[derive(Debug, Clone)]
struct Ctx {
    sk: SessionKey,
    app: AppKey,
    user: UserId,
    device: DeviceId,
}

/// Whom a storage query answers.
#[derive(Debug, Clone, Copy)]
pub(super) enum QueryFor {
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
    /// Sessions the operator signed out, by id: their user and until when a resume of them is
    /// answered with the kick (a device that was away when it was sent learns it on return).
    signed_out: FastMap<String, (UserId, i64)>,
    /// Sessions dropped so far for holding too much unacked (frames or bytes).
    slow_dropped: u64,
    scratch: Vec<CallId>,
    id_buf: String,
    /// The SFU MULTI calls go through, if the server runs one.
    router: Option<media_route::MediaRouter>,
    /// Participants of SFU calls whose media connection failed: the device, and when it must
    /// be back (`media_route`).
    media_lost: FastMap<(CallId, UserId), (DeviceId, i64)>,
    /// A node of several: remote sessions by (node, session id) (`cluster`).
    remotes: FastMap<(String, String), SessionKey>,
    /// A node of several, on a device's own node: the calls another node owns that each local
    /// session was invited to (the `IncomingCall` delivered to it), until their end reaches it.
    /// If that owner is lost they end here at once (`cluster::node_lost`): a call whose saved
    /// snapshot died with its owner is known to no survivor, and must not live on in a device.
    held_elsewhere: FastMap<SessionKey, Vec<Arc<CallInfo>>>,
    /// A node of several: when each lost node is thought to have died (`node_lost`), so the
    /// calls taken over from it end then rather than when the loss was noticed.
    lost_at: FastMap<String, i64>,
    /// A node of several: presence lookups in flight (`cluster`).
    locates: FastMap<QueryId, cluster::Locating>,
    /// Set while a call is ended from its saved snapshot (`end_recovered_calls`,
    /// `takeover_granted`): on a node of several its participants' devices are told through
    /// routing, as none is bound to it here.
    ending_saved: bool,
    /// Set while a call whose lease another node took is ended here
    /// ([`Switchboard::lease_lost`]): only this node's own devices are told, and nothing durable
    /// is written or routed (the successor did that).
    fenced: bool,
    /// A node of several: StartCall / Invite requests waiting for their callees' in-call
    /// marks (`cluster`).
    busy_checks: FastMap<QueryId, cluster::BusyCheck>,
    /// While such a request is handled: the callees marked busy in calls other nodes own.
    remote_busy: Option<Vec<UserId>>,
    /// A node of several: the users marked in a call, per call this node owns (`cluster`).
    marked: FastMap<CallId, (AppKey, Vec<(UserId, cluster::CallMark)>)>,
}

impl Switchboard {
    /// A switchboard with no sessions and no calls.
    pub fn new(config: SwitchboardConfig) -> Self {
        let clustered = !config.node_id.is_empty();
        let limits = Limits {
            frames: config.max_unacked_frames.max(1),
            bytes: config.max_unacked_bytes.max(1),
            user_bytes: config.max_user_unacked_bytes.max(1),
        };
        Switchboard {
            cfg: config,
            net: Net {
                sessions: FastMap::default(),
                conns: FastMap::default(),
                users: FastMap::default(),
                outputs: Outputs::new(clustered),
                graveyard: FastMap::default(),
                to_drop: Vec::new(),
                grown: Vec::new(),
                limits,
                store_user_events: false,
                clustered,
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
            signed_out: FastMap::default(),
            slow_dropped: 0,
            scratch: Vec::new(),
            id_buf: String::new(),
            router: None,
            media_lost: FastMap::default(),
            remotes: FastMap::default(),
            lost_at: FastMap::default(),
            held_elsewhere: FastMap::default(),
            locates: FastMap::default(),
            ending_saved: false,
            fenced: false,
            busy_checks: FastMap::default(),
            remote_busy: None,
            marked: FastMap::default(),
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
            let frame = OutFrame {
                seq: 0,
                ack: 0,
                body: Arc::new(ServerBody::Event(Event::Kicked {
                    reason: EndReason::EndedByServer,
                    message: "the server is shutting down".to_owned(),
                })),
            };
            self.net.outputs.push_back(Output::Transmit { conn, frame });
            self.net.outputs.push_back(Output::Close { conn });
            return;
        }
        if let Err(error) = self.admit(&app, &user, &hello.device_id) {
            let body = ServerBody::Response(Response { request_id: 0, result: Err(error) });
            let frame = OutFrame { seq: 0, ack: 0, body: Arc::new(body) };
            self.net.outputs.push_back(Output::Transmit { conn, frame });
            self.net.outputs.push_back(Output::Close { conn });
            return;
        }
        if let Some(resume) = &hello.resume
            && self.was_signed_out(now_ms, &user, &resume.session_id)
        {
            self.refuse_signed_out(conn);
            return;
        }
        let existing = self.net.user(&app, &user).and_then(|entry| {
            entry.sessions.iter().copied().find(|sk| {
                self.net.sessions.get(sk).is_some_and(|s| s.device == hello.device_id && s.remote.is_none())
            })
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
        let mut session = Session::new(
            id,
            app.clone(),
            user.clone(),
            hello.device_id,
            conn,
            now_ms,
            self.cfg.request_burst,
        );
        let entry = self.net.user_entry(&app, &user);
        entry.sessions.push(sk);
        session.user_bytes = entry.bytes.get_or_insert_with(Default::default).clone();
        self.net.sessions.insert(sk, session);
        self.net.conns.insert(conn, sk);
        self.arm_session(sk, now_ms.saturating_add(i64::from(self.cfg.liveness_timeout_ms)));
        self.send_welcome(now_ms, sk, false);

        if let Some(old) = existing {
            self.drop_session(now_ms, old, LegEnd::Reason(EndReason::NetworkError), Leftovers::CarryTo(sk));
        }
        if self.cfg.device_policy == DevicePolicy::SingleDevice {
            let others: Vec<SessionKey> = self
                .net
                .user(&app, &user)
                .map(|e| {
                    // Devices on other nodes are their nodes' to kick.
                    let local = |o: &SessionKey| self.net.sessions.get(o).is_some_and(|s| s.remote.is_none());
                    e.sessions.iter().copied().filter(|&o| o != sk).filter(local).collect()
                })
                .unwrap_or_default();
            for other in others {
                self.kick(now_ms, other, EndReason::KickedOtherLogin, "the user logged in on another device");
            }
        }
        self.offer_ringing(sk);
        self.announce(sk, self.cfg.device_policy == DevicePolicy::SingleDevice);
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
                    // Not found, as a stranger to the call is told (`calls::find`).
                    QueryAnswer::EndedCall(call) => {
                        call.map(ResponseBody::Call).ok_or_else(|| Error::from_code(Code::CallNotFound))
                    }
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
                Timer::MediaLost(id, idx) => self.media_lost_timer(now_ms, &id, idx, at),
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
            self.session_ended(sk);
            self.tell_peers_gone(sk, LegEnd::Reason(EndReason::EndedByServer));
        }
        let sessions = std::mem::take(&mut self.net.sessions);
        self.net.graveyard.extend(sessions);
        self.net.conns.clear();
        self.net.users.clear();
        self.remotes.clear();
        self.locates.clear();
        self.net.to_drop.clear();
        self.net.grown.clear();
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
            self.clear_marks_of_saved(&call);
            let id = call.id.clone();
            for p in &call.parties {
                self.net.add_call(&call.app, &p.user, &id);
            }
            let at = alive_until_ms.unwrap_or_else(|| call.last_event_ms());
            self.calls.insert(id.clone(), Box::new(call));
            self.live += 1;
            self.ending_saved = true;
            self.finish_call_at(now_ms, at, &id, EndReason::NetworkError, None);
            self.ending_saved = false;
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
        self.calls.get(call_id).filter(|c| &c.app == app).map(|c| Arc::unwrap_or_clone(c.snapshot()))
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

    /// Device sessions dropped since the start because they held more unacked frames or bytes
    /// than allowed (`max_unacked_frames`, `max_unacked_bytes`, `max_user_unacked_bytes`).
    pub fn slow_sessions_dropped(&self) -> u64 {
        self.slow_dropped
    }

    /// Whether a Hello from `device` of `user` may open a session: refused with
    /// TOO_MANY_DEVICES when the user already has `max_devices_per_user` sessions of other
    /// devices (connected or kept for a resume). A driver calls this before
    /// [`Switchboard::connect`] to answer the Hello with the error; `connect` refuses such a
    /// Hello too (Close, with a response carrying request id 0).
    ///
    /// # Errors
    /// TOO_MANY_DEVICES, as above.
    pub fn admit(&self, app: &AppKey, user: &UserId, device: &DeviceId) -> Result<(), Error> {
        let max = self.cfg.max_devices_per_user;
        if max == 0 || self.stopped || self.cfg.device_policy == DevicePolicy::SingleDevice {
            return Ok(());
        }
        let others = self.net.user(app, user).map_or(0, |entry| {
            entry
                .sessions
                .iter()
                .filter(|sk| {
                    self.net.sessions.get(sk).is_some_and(|s| &s.device != device && s.remote.is_none())
                })
                .count()
        });
        if others >= max {
            return Err(Error::new(
                Code::TooManyDevices,
                format!("the user already has {others} devices connected (the limit is {max})"),
            ));
        }
        Ok(())
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
            let Some((_, body)) = s.outbox.pending().nth(k) else { continue };
            let frame = OutFrame { seq, ack: s.ack(), body: Arc::clone(body) };
            return Some(Output::Transmit { conn, frame });
        }
    }

    /// When [`Switchboard::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<i64> {
        self.timers.next()
    }
}
