//! The switchboard's side of device sessions: ids, welcome and resume, acks and liveness,
//! dispatch of inbound frames, kicks and dropping a session with its legs.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::call::SessionKey;
use crate::error::{Code, Error};
use crate::link::Received;
use crate::model::ids::{AppKey, CallId, UserId};
use crate::model::kinds::EndReason;
use crate::model::message::{ClientBody, Event, OutFrame, ServerBody, Welcome};
use std::sync::Arc;

use super::output::{ConnId, DevicePresence, OfflineEvent, Output, Query};

use super::session::Inbound;
use super::timer::Timer;
use super::{Ctx, QueryFor, Switchboard};

/// How a dropped session's legs end.
#[derive(Debug, Clone, Copy)]
pub(super) enum LegEnd {
    /// With this reason (NETWORK_ERROR, KICKED_OTHER_LOGIN …).
    Reason(EndReason),
    /// As if the device hung up (Goodbye): cancel, reject or hang up by state.
    Hangup,
}

/// What happens to the unacked user events (records, summaries) of a dropped session.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leftovers {
    /// Stored for the user when no other device of theirs is live.
    Store,
    /// Handed to the session that replaces it.
    CarryTo(SessionKey),
}

impl Switchboard {
    // ----- sessions ---------------------------------------------------------------------------

    pub(super) fn init_prefix(&mut self, now_ms: i64) {
        if self.prefix.is_some() {
            return;
        }
        let mut x = (now_ms as u64) ^ (self.min_sync_time as u64).rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        // `{node}_{time}`: the time part has no `_`, so the node id is everything before the
        // last `_` and two nodes' ids can never be equal; a single node keeps `{time}`.
        let node = self.cfg.node_id.as_str();
        let mut s = String::with_capacity(node.len() + 11);
        if !node.is_empty() {
            s.push_str(node);
            s.push('_');
        }
        for _ in 0..10 {
            let d = (x % 36) as usize;
            s.push(char::from(DIGITS.get(d).copied().unwrap_or(b'0')));
            x /= 36;
        }
        self.prefix = Some(s);
    }

    pub(super) fn new_call_id(&mut self, now_ms: i64) -> Result<CallId, Error> {
        self.init_prefix(now_ms);
        self.next_call += 1;
        let mut buf = std::mem::take(&mut self.id_buf);
        buf.clear();
        // The counter in hex after one hex digit that says how many digits follow (less one):
        // ids of one run then sort in the order they were made, so a B-tree keyed by call id
        // (the call records', the live calls') takes each new one at its right edge.
        let digits = (u64::BITS - self.next_call.leading_zeros()).div_ceil(4).max(1) - 1;
        let _ = write!(buf, "{}-{digits:x}{:x}", self.prefix.as_deref().unwrap_or("c"), self.next_call);
        let id = CallId::new(&buf).map_err(|_| Error::new(Code::Internal, "could not make a call id"));
        self.id_buf = buf;
        id
    }

    pub(super) fn arm_session(&mut self, sk: SessionKey, at: i64) {
        if let Some(s) = self.net.sessions.get_mut(&sk)
            && s.timer_at != at
        {
            s.timer_at = at;
            self.timers.set(at, Timer::Session(sk));
        }
    }

    /// Tells a node of several (one with a node id) that the session ends for good, so its
    /// presence entry goes.
    pub(super) fn session_ended(&mut self, sk: SessionKey) {
        if self.cfg.node_id.is_empty() {
            return;
        }
        let Some(s) = self.net.sessions.get(&sk).filter(|s| s.remote.is_none()) else { return };
        let device = DevicePresence {
            app: s.app.clone(),
            user: s.user.clone(),
            device: s.device.clone(),
            session_id: s.id.clone(),
        };
        self.net.outputs.push_back(Output::SessionEnded { device });
    }

    pub(super) fn send_welcome(&mut self, now_ms: i64, sk: SessionKey, resumed: bool) {
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
        if !self.cfg.node_id.is_empty()
            && let Some(conn) = s.conn
        {
            let device = DevicePresence {
                app: s.app.clone(),
                user: s.user.clone(),
                device: s.device.clone(),
                session_id: s.id.clone(),
            };
            self.net.outputs.push_back(Output::SessionOnline { conn, device });
        }
        self.net.unsequenced(sk, ServerBody::Welcome(welcome));
    }

    pub(super) fn resume(&mut self, now_ms: i64, conn: ConnId, sk: SessionKey, last_received: u64) {
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
            for (seq, body) in s.outbox.pending() {
                let frame = OutFrame { seq, ack, body: Arc::clone(body) };
                self.net.outputs.push_back(Output::Transmit { conn, frame });
            }
        }
        self.offer_ringing(sk);
        self.load_offline(sk);
    }

    /// Asks the driver for the session's user's stored offline events ([`Query::OfflineEvents`]).
    pub(super) fn load_offline(&mut self, sk: SessionKey) {
        let Some(s) = self.net.sessions.get(&sk) else { return };
        let (app, user) = (s.app.clone(), s.user.clone());
        self.next_query += 1;
        let id = self.next_query;
        self.queries.insert(id, QueryFor::Offline(sk));
        self.net.outputs.push_back(Output::Query { id, app, user, query: Query::OfflineEvents });
    }

    /// Sends stored events to a session, skipping those it already holds.
    pub(super) fn send_offline(&mut self, sk: SessionKey, offline: Vec<OfflineEvent>) {
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
    /// was not offered yet (docs/protocol.md#server-rules: a device that connects in time still
    /// rings).
    pub(super) fn offer_ringing(&mut self, sk: SessionKey) {
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
    pub(super) fn touch(&mut self, now_ms: i64, sk: SessionKey, ack: u64) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        s.last_seen = s.last_seen.max(now_ms);
        if s.stale {
            s.stale = false;
            let at = now_ms.saturating_add(i64::from(self.cfg.liveness_timeout_ms));
            self.arm_session(sk, at);
        }
        self.process_ack(sk, ack);
    }

    pub(super) fn process_ack(&mut self, sk: SessionKey, ack: u64) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        let mut acked = std::mem::take(&mut self.scratch);
        let mut n = 0usize;
        s.outbox.ack(ack, |_, frame| {
            n += 1;
            if let ServerBody::Event(Event::IncomingCall { call, .. }) = &*frame {
                acked.push(call.call_id.clone());
            }
        });
        // The sizes kept when the frames were queued, not estimated again.
        let freed = s.sizes.drain(..n.min(s.sizes.len())).fold(0, usize::saturating_add);
        s.outbox_bytes = s.outbox_bytes.saturating_sub(freed);
        s.user_bytes.fetch_sub(freed.min(s.user_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
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
                self.invitation_acked(sk, &id, &user, &device);
            }
        }
        self.scratch = acked;
    }

    pub(super) fn receive(&mut self, now_ms: i64, sk: SessionKey, seq: u64, inbound: Inbound) {
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

    pub(super) fn dispatch(&mut self, now_ms: i64, sk: SessionKey, inbound: Inbound) {
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
                    if let Some(request) = self.forward_request(&ctx, frame.request_id, request) {
                        self.request(now_ms, &ctx, frame.request_id, request);
                    }
                }
            },
        }
    }

    pub(super) fn session_timer(&mut self, now_ms: i64, sk: SessionKey, at: i64) {
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
    pub(super) fn expire(&mut self, now_ms: i64, sk: SessionKey) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        tracing::debug!(session = sk, "device silent past the liveness timeout");
        s.stale = true;
        let (app, user, last_seen) = (s.app.clone(), s.user.clone(), s.last_seen);
        let drop_at = s.last_seen.saturating_add(i64::from(self.cfg.resume_window_ms));
        for (id, idx) in self.legs_of(sk, &app, &user) {
            let reason = EndReason::NetworkError;
            self.leave_at(now_ms, last_seen, &id, idx, reason, None, reason);
        }
        // Its legs in other nodes' calls end there the same way.
        self.tell_peers_gone(sk, LegEnd::Reason(EndReason::NetworkError));
        if drop_at <= now_ms {
            self.drop_session(now_ms, sk, LegEnd::Reason(EndReason::NetworkError), Leftovers::Store);
        } else {
            self.arm_session(sk, drop_at);
        }
    }

    /// The (call, participant) legs a session holds.
    pub(super) fn legs_of(&self, sk: SessionKey, app: &AppKey, user: &UserId) -> Vec<(CallId, usize)> {
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
    pub(super) fn kick(&mut self, now_ms: i64, sk: SessionKey, reason: EndReason, message: &str) {
        let kicked = Event::Kicked { reason, message: message.to_owned() };
        self.net.unsequenced(sk, ServerBody::Event(kicked));
        self.drop_session(now_ms, sk, LegEnd::Reason(reason), Leftovers::Store);
    }

    /// Removes a session for good: Close its connection, end its legs, take it off every
    /// invitation, and save its undelivered records and summaries. Legs lost to the network
    /// (NETWORK_ERROR) end at the device's last sign of life; the others now.
    pub(super) fn drop_session(&mut self, now_ms: i64, sk: SessionKey, how: LegEnd, leftovers: Leftovers) {
        self.session_ended(sk);
        self.held_elsewhere.remove(&sk);
        let Some(s) = self.net.sessions.remove(&sk) else { return };
        if !s.peers.is_empty() {
            let peers = s.peers.clone();
            self.send_gone(&s.app, &s.user, &s.id, peers, how, s.last_seen);
        }
        s.user_bytes.fetch_sub(s.outbox_bytes.min(s.user_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
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
        let carry = |body: &ServerBody| match body {
            ServerBody::Event(e @ (Event::CallRecord(_) | Event::Summary(_))) => Some(e.clone()),
            _ => None,
        };
        let leftovers_events: Vec<Event> = s
            .outbox
            .pending()
            .filter(|(seq, _)| !s.offline.iter().any(|(o, _)| o == seq))
            .filter_map(|(_, body)| carry(body))
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

    /// Ends the inputs: sessions holding more unacked frames or bytes than allowed (on their
    /// own, or with the other devices of their user) are dropped as too slow. Dropping is final:
    /// the device must start a fresh session (its resume is rejected), since keeping the
    /// session for a resume would keep the very frames that were too many.
    pub(super) fn finish_input(&mut self, now_ms: i64) {
        while let Some(sk) = self.net.grown.pop() {
            self.net.check_user_bytes(sk);
        }
        while let Some(sk) = self.net.to_drop.pop() {
            if let Some(s) = self.net.sessions.get(&sk) {
                tracing::debug!(
                    session = sk,
                    frames = s.outbox.len(),
                    bytes = s.outbox_bytes,
                    "device too slow; session dropped"
                );
                self.slow_dropped += 1;
            }
            self.drop_session(now_ms, sk, LegEnd::Reason(EndReason::NetworkError), Leftovers::Store);
        }
        if self.clustered() {
            self.sync_marks();
        }
        for output in std::mem::take(&mut self.net.outputs.after_marks) {
            self.net.outputs.push_back(output);
        }
    }
}
