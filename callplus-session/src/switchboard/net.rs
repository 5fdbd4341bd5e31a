//! The delivery half of the switchboard ([`Net`]): device sessions by connection, presence and
//! the per-user call index, and the output queue every frame goes through.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::fasthash::FastMap;
use super::queue::Outputs;

use crate::call::SessionKey;
use crate::error::Error;
use crate::model::ids::{AppKey, CallId, UserId};
use crate::model::message::{Event, OutFrame, Response, ResponseBody, ServerBody};

use super::output::{ConnId, Output};

use super::session::Session;
use super::weight::body_frame_bytes;

/// What the switchboard knows about one user.
#[derive(Debug, Default)]
pub(super) struct UserEntry {
    /// The user's device sessions (live, or stale and still resumable).
    pub(super) sessions: Vec<SessionKey>,
    /// Unended calls the user is (or was) a participant of.
    pub(super) calls: Vec<CallId>,
    /// The unacked bytes of all the user's sessions, shared with each of them so a frame
    /// queued or acked updates it without looking the user up. (An atomic only so the
    /// switchboard stays `Send`; it is never touched from two threads.)
    pub(super) bytes: Option<Arc<AtomicUsize>>,
}

/// A user's live device sessions (a few, kept inline).
#[derive(Debug, Default)]
pub(super) struct Devices {
    pub(super) inline: [SessionKey; 4],
    pub(super) n: usize,
    pub(super) spill: Vec<SessionKey>,
}

impl Devices {
    pub(super) fn push(&mut self, sk: SessionKey) {
        match self.inline.get_mut(self.n) {
            Some(slot) => {
                *slot = sk;
                self.n += 1;
            }
            None => self.spill.push(sk),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.n + self.spill.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = SessionKey> + '_ {
        self.inline.iter().take(self.n).chain(&self.spill).copied()
    }
}

/// The delivery half of the switchboard: sessions, presence and the output queue. Kept apart
/// from the calls so a handler can hold a call and send at the same time.
#[derive(Debug)]
pub(super) struct Net {
    pub(super) sessions: FastMap<SessionKey, Session>,
    pub(super) conns: FastMap<ConnId, SessionKey>,
    /// Presence and the per-user call index, by app then user. User ids come from clients, so
    /// the inner maps keep the standard keyed hasher.
    pub(super) users: FastMap<AppKey, HashMap<UserId, UserEntry>>,
    pub(super) outputs: Outputs,
    /// Sessions dropped while frames of theirs wait in `outputs`; kept until the queue drains.
    pub(super) graveyard: FastMap<SessionKey, Session>,
    /// Sessions over their bounds, dropped as too slow when the current input ends.
    pub(super) to_drop: Vec<SessionKey>,
    /// Sessions whose user went over its unacked bytes during the current input: checked when
    /// the input ends.
    pub(super) grown: Vec<SessionKey>,
    pub(super) limits: Limits,
    /// While shutting down, user events are stored rather than sent.
    pub(super) store_user_events: bool,
    /// A node of several: user events also go to the user's devices on other nodes
    /// ([`super::cluster::NodeOutput::Route`]).
    pub(super) clustered: bool,
}

/// What one device, and one user, may leave unacked before being dropped as too slow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) frames: usize,
    pub(super) bytes: usize,
    pub(super) user_bytes: usize,
}

impl Limits {
    /// Whether a session holding `frames` frames of `bytes` is over its own bounds. A single
    /// frame is always allowed, however large.
    fn over(&self, frames: usize, bytes: usize) -> bool {
        frames > self.frames || (bytes > self.bytes && frames > 1)
    }
}

impl Net {
    /// Queues a reliable frame on a session (and transmits it when connected). Its estimated
    /// size ([`frame_bytes`]) is counted once here, for the session and its user, and kept
    /// until the frame is acked; a session (or user) over its bounds is marked for dropping.
    pub(super) fn push_body(&mut self, sk: SessionKey, body: ServerBody) -> Option<u64> {
        let s = self.sessions.get_mut(&sk)?;
        if let Some(node) = &s.remote {
            let output = super::cluster::deliver_output(s, node, body);
            self.outputs.push_back(output);
            return None;
        }
        let bytes = body_frame_bytes(&body);
        s.outbox_bytes = s.outbox_bytes.saturating_add(bytes);
        s.sizes.push_back(bytes);
        let user_total = s.user_bytes.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        let seq = s.outbox.push(Arc::new(body));
        if let Some(conn) = s.conn {
            self.outputs.frame(conn, sk, seq, s.epoch);
        }
        if self.limits.over(s.outbox.len(), s.outbox_bytes) && !self.to_drop.contains(&sk) {
            self.to_drop.push(sk);
        }
        if user_total > self.limits.user_bytes && !s.grown {
            s.grown = true;
            self.grown.push(sk);
        }
        Some(seq)
    }

    /// Marks for dropping, biggest first, the sessions of `sk`'s user until the user's unacked
    /// bytes are within bounds again. Sessions holding a single frame are left alone.
    pub(super) fn check_user_bytes(&mut self, sk: SessionKey) {
        let Some(s) = self.sessions.get_mut(&sk) else { return };
        s.grown = false;
        if s.user_bytes.load(Ordering::Relaxed) <= self.limits.user_bytes {
            return;
        }
        let (app, user) = (s.app.clone(), s.user.clone());
        let Some(entry) = self.user(&app, &user) else { return };
        let mut held: Vec<(usize, SessionKey)> = entry
            .sessions
            .iter()
            .filter(|o| !self.to_drop.contains(o))
            .filter_map(|o| self.sessions.get(o).map(|s| (s.outbox_bytes, *o)))
            .collect();
        let mut total = held.iter().map(|(b, _)| *b).fold(0, usize::saturating_add);
        if total <= self.limits.user_bytes {
            return;
        }
        held.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, o) in held {
            if total <= self.limits.user_bytes {
                break;
            }
            if self.sessions.get(&o).is_some_and(|s| s.outbox.len() > 1) {
                tracing::debug!(session = o, bytes, total, "user over its unacked bytes");
                self.to_drop.push(o);
                total = total.saturating_sub(bytes);
            }
        }
    }

    pub(super) fn send(&mut self, sk: SessionKey, event: Event) {
        self.push_body(sk, ServerBody::Event(event));
    }

    /// Sends one event to several sessions.
    pub(super) fn send_all(&mut self, sks: &[SessionKey], event: Event) {
        let mut event = Some(event);
        let n = sks.len();
        for (i, &sk) in sks.iter().enumerate() {
            let e = if i + 1 == n { event.take() } else { event.clone() };
            if let Some(e) = e {
                self.send(sk, e);
            }
        }
    }

    pub(super) fn respond(&mut self, sk: SessionKey, request_id: u64, result: Result<ResponseBody, Error>) {
        if request_id == 0 {
            return;
        }
        self.push_body(sk, ServerBody::Response(Response { request_id, result }));
    }

    /// An unsequenced frame (Welcome, Pong, Kicked), transmitted only when connected.
    pub(super) fn unsequenced(&mut self, sk: SessionKey, body: ServerBody) {
        if let Some(s) = self.sessions.get(&sk)
            && let Some(conn) = s.conn
        {
            let frame = OutFrame { seq: 0, ack: s.ack(), body: Arc::new(body) };
            self.outputs.push_back(Output::Transmit { conn, frame });
        }
    }

    pub(super) fn is_live(&self, sk: SessionKey) -> bool {
        self.sessions.get(&sk).is_some_and(|s| !s.stale)
    }

    pub(super) fn user(&self, app: &AppKey, user: &UserId) -> Option<&UserEntry> {
        self.users.get(app)?.get(user)
    }

    pub(super) fn user_mut(&mut self, app: &AppKey, user: &UserId) -> Option<&mut UserEntry> {
        self.users.get_mut(app)?.get_mut(user)
    }

    /// The user's entry, made if missing.
    pub(super) fn user_entry(&mut self, app: &AppKey, user: &UserId) -> &mut UserEntry {
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
    pub(super) fn prune_user(&mut self, app: &AppKey, user: &UserId) {
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
    pub(super) fn live_sessions(&self, app: &AppKey, user: &UserId) -> Vec<SessionKey> {
        match self.user(app, user) {
            Some(entry) => entry.sessions.iter().copied().filter(|&sk| self.is_live(sk)).collect(),
            None => Vec::new(),
        }
    }

    /// Whether the user has a live device session on this node (remote sessions do not count).
    pub(super) fn has_live_session(&self, app: &AppKey, user: &UserId) -> bool {
        self.user(app, user).is_some_and(|e| {
            e.sessions.iter().any(|sk| self.sessions.get(sk).is_some_and(|s| !s.stale && s.remote.is_none()))
        })
    }

    /// The user's live devices, for events that belong to the user rather than a device.
    /// With `ended`, that call also leaves the user's call index (one lookup for both).
    pub(super) fn user_devices(&mut self, app: &AppKey, user: &UserId, ended: Option<&CallId>) -> Devices {
        let mut devices = Devices::default();
        let Some(entry) = self.users.get_mut(app).and_then(|u| u.get_mut(user)) else { return devices };
        if let Some(call) = ended {
            entry.calls.retain(|c| c != call);
        }
        let prune = entry.calls.is_empty() && entry.sessions.is_empty();
        if !self.store_user_events {
            for &sk in &entry.sessions {
                if self.sessions.get(&sk).is_some_and(|s| !s.stale && s.remote.is_none()) {
                    devices.push(sk);
                }
            }
        }
        if prune {
            self.prune_user(app, user);
        }
        devices
    }

    /// An event for a user: to each of `devices`, or stored when there is none. On a node of
    /// several it also goes to the user's devices on the other nodes, and is stored only when
    /// the user has no device anywhere (the driver decides with the presence registry).
    pub(super) fn deliver(&mut self, devices: &Devices, app: &AppKey, user: &UserId, event: Event) {
        let n = devices.len();
        if self.clustered && !self.store_user_events {
            let route = super::cluster::NodeOutput::Route {
                app: app.clone(),
                user: user.clone(),
                event: event.clone(),
                store_if_absent: n == 0,
            };
            self.outputs.push_back(Output::Node(route));
            if n == 0 {
                return;
            }
        }
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

    pub(super) fn add_call(&mut self, app: &AppKey, user: &UserId, call: &CallId) {
        let entry = match self.user_mut(app, user) {
            Some(entry) => entry,
            None => self.user_entry(app, user),
        };
        if !entry.calls.contains(call) {
            entry.calls.push(call.clone());
        }
    }

    pub(super) fn user_calls(&self, app: &AppKey, user: &UserId) -> Vec<CallId> {
        self.user(app, user).map(|e| e.calls.clone()).unwrap_or_default()
    }
}
