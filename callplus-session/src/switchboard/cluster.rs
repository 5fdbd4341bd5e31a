//! Routing between the nodes of a deployment (docs/architecture.md, "Several nodes").
//!
//! Every call is owned by the switchboard of the node that created it (the node id leads its
//! call id). A device connected to another node takes part through two halves:
//!
//! - **On the owner**, the device is a *remote session*: a session like any other in the
//!   switchboard's tables (so invitations, busy checks, ACCEPTED_ON_OTHER_DEVICE and the end of
//!   a call treat it exactly like a local device), but with no connection and no outbox: every
//!   frame queued on it leaves at once as [`NodeMessage::Deliver`] to the device's node. The
//!   owner learns of remote devices from the presence registry ([`NodeOutput::Locate`] when it
//!   rings a user) and from the requests other nodes forward to it.
//! - **On the device's node**, the device keeps its one real session: seq, ack and resume with
//!   the device are unchanged. A request about a call this node does not own is forwarded to the
//!   owner ([`NodeMessage::Request`]); what the owner delivers is queued on the session's
//!   reliable link like any local frame. When the session ends (or goes silent), every owner it
//!   dealt with is told ([`NodeMessage::SessionGone`]) so the remote session's legs end there.
//!
//! Events that belong to a user rather than a device (records, summaries) go to the user's
//! devices on this node and, through [`NodeOutput::Route`], to their devices on every other
//! node; the driver stores them for the next connect when the user has no device anywhere.

use std::sync::Arc;

use crate::call::{Call, SessionKey};
use crate::error::{Code, Error};
use crate::model::ids::{AppKey, CallId, DeviceId, UserId};
use crate::model::kinds::{Delivery, EndReason};
use crate::model::message::{Event, Request, ServerBody};
use crate::model::snapshot::{CallInfo, PushConfig};

use super::output::{Output, QueryId};
use super::session::Session;
use super::sessions::{Leftovers, LegEnd};
use super::{Ctx, Switchboard};

/// One device of a user as the presence registry has it: the node holding its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDevice {
    /// The node the device is connected to.
    pub node: String,
    /// The device.
    pub device: DeviceId,
    /// The id of its session on that node.
    pub session_id: String,
}

/// What one node's switchboard tells another's (the driver carries it on the receiving node's
/// inbox and hands it to [`Switchboard::handle_node_message`] there).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeMessage {
    /// A device's request about a call the receiving node owns (origin → owner).
    Request {
        /// The app.
        app: AppKey,
        /// The requesting user.
        user: UserId,
        /// The requesting device.
        device: DeviceId,
        /// The device's session on the origin node.
        session_id: String,
        /// Echoed in the response.
        request_id: u64,
        /// The request.
        request: Request,
    },
    /// A reliable frame's body for one device session (owner → the device's node), queued
    /// there on the session's link.
    Deliver {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The session on the receiving node.
        session_id: String,
        /// A Response or an Event.
        body: ServerBody,
    },
    /// An event for every device of a user on the receiving node (records, summaries).
    UserEvent {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The event.
        event: Event,
    },
    /// A device acked the invitation to a call the receiving node owns (origin → owner).
    Delivered {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// Its session on the origin node.
        session_id: String,
        /// The call.
        call_id: CallId,
    },
    /// The operator ended the call, or removed `user` from it, through the sending node's admin
    /// API (that node → the call's owner; see [`Switchboard::end_call_by_server`]).
    EndCall {
        /// The app.
        app: AppKey,
        /// The call.
        call_id: CallId,
        /// The user removed, or `None` to end the call.
        user: Option<UserId>,
    },
    /// The operator signed `user` out through the sending node's admin API (that node → every
    /// node holding a device of the user): the receiving node closes its own sessions of the
    /// user, or of `device` only, with `KICKED_BY_SERVER` (see
    /// [`Switchboard::sign_out_by_server`]).
    SignOut {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The one device to sign out, or `None` for all.
        device: Option<DeviceId>,
    },
    /// Events were stored for a user who has no device on the sending node, and presence then
    /// found devices of theirs on the receiving node: those sessions load the user's stored
    /// events again (a device that connected while the event was being stored may have looked
    /// before it was there). Events a session holds already are not sent twice.
    OfflineWaiting {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
    },
    /// A device of the user opened a fresh session on the sending node (device's node → a
    /// node that marked the user ringing): the receiving node offers it every call it owns in
    /// which the user is still being rung.
    DeviceOnline {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// Its session on the sending node.
        session_id: String,
    },
    /// Under the single-device policy, the user logged in on the sending node with `device`
    /// at `at_ms`: the receiving node kicks its own sessions of the user that are older
    /// (KICKED_OTHER_LOGIN). Two logins in the same millisecond on two nodes are ordered by
    /// node id, so exactly one survives.
    LoggedIn {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The device that logged in.
        device: DeviceId,
        /// When its session opened.
        at_ms: i64,
    },
    /// A device session the receiving node routed for has ended or gone silent (origin →
    /// owner): its legs end, as a local session's would.
    SessionGone {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The session.
        session_id: String,
        /// How its legs end: a reason (NETWORK_ERROR when it went silent), or `None` when the
        /// device said Goodbye (hang up, reject or cancel, by state).
        reason: Option<EndReason>,
        /// The device's last sign of life on its own node (ms), where its legs lost to the
        /// network end; 0 when that node does not know it (then: when the message arrives).
        last_seen_ms: i64,
    },
}

/// What a node of several asks its driver to do across nodes ([`Output::Node`]).
// Moved once, from the switchboard to its driver, like `Output::StoreOffline` with its event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOutput {
    /// Put the message on `node`'s inbox.
    Send {
        /// The receiving node.
        node: String,
        /// The message (boxed: it is much larger than the other outputs).
        message: Box<NodeMessage>,
    },
    /// Look the user's devices up in the presence registry and answer with
    /// [`Switchboard::complete_locate`] (an empty list when there is none or the lookup failed).
    ///
    /// It comes after the [`NodeOutput::InCall`] ringing mark of the same input, and the driver
    /// must finish each before starting the next; a late device's node, for its part, has the
    /// device in presence before it reads the marks ([`NodeOutput::FindRinging`]). Each side
    /// writes, then reads what the other writes, so at least one sees the other: a device that
    /// connects while its user is being rung is either found here or finds the mark there.
    Locate {
        /// The lookup's id.
        id: QueryId,
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
    },
    /// Send `event` as [`NodeMessage::UserEvent`] to every other node holding a device of the
    /// user; with `store_if_absent` (the user has no device on this node), store it as an
    /// offline event when no node does.
    Route {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The event.
        event: Event,
        /// Store it when the user has no device anywhere.
        store_if_absent: bool,
    },
    /// Node `node` is lost: try to win the right to end its calls (in Redis, `SET NX` on the
    /// node's takeover key, so exactly one surviving node does it). The winner reads the lost
    /// node's saved calls from durable storage *after* winning and answers
    /// [`Switchboard::takeover_granted`]; a loser does nothing.
    AcquireTakeover {
        /// The lost node.
        node: String,
    },
    /// The owner's mark of where `user` stands in `call_id`: being rung, holding a connected
    /// leg, or (`None`) neither any more. Other nodes read the marks to tell a caller that a
    /// callee is busy in a call owned elsewhere ([`NodeOutput::CheckBusy`]) and to offer a
    /// device that connects late the calls it rings in ([`NodeOutput::FindRinging`]); in
    /// Redis a hash per user, one field per call.
    InCall {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The call (its id names the owner).
        call_id: CallId,
        /// The mark, or `None` to clear it.
        mark: Option<CallMark>,
    },
    /// Before starting a call or inviting into one: read the [`CallMark::Connected`] marks of
    /// `users` and answer [`Switchboard::complete_busy`] with each (user, call) marked by a
    /// node that is alive (an empty list when the lookup failed: nobody is busy).
    CheckBusy {
        /// The lookup's id.
        id: QueryId,
        /// The app.
        app: AppKey,
        /// The callees or invitees.
        users: Vec<UserId>,
    },
    /// A device of `user` opened a fresh session here: send [`NodeMessage::DeviceOnline`] to
    /// every other live node that marked the user [`CallMark::Ringing`] in a call it owns, so
    /// the device rings as it would on one node. The driver reads the marks only once the device
    /// is in presence (see [`NodeOutput::Locate`] for why).
    FindRinging {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// Its new session here.
        session_id: String,
    },
    /// Under the single-device policy, `user` logged in here with `device` at `at_ms`: send
    /// [`NodeMessage::LoggedIn`] to every other node holding a device of theirs (presence),
    /// which kicks its older sessions of the user.
    KickElsewhere {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The device that logged in.
        device: DeviceId,
        /// When its session opened (this node's clock).
        at_ms: i64,
    },
    /// The operator signed `user` out here: send [`NodeMessage::SignOut`] to every other node
    /// holding a device of theirs (presence).
    SignOutElsewhere {
        /// The app.
        app: AppKey,
        /// The user.
        user: UserId,
        /// The one device to sign out, or `None` for all.
        device: Option<DeviceId>,
    },
}

/// Where a user stands in a call, as its owner marks it for the other nodes
/// ([`NodeOutput::InCall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMark {
    /// Being rung.
    Ringing,
    /// Holding a connected leg (dialing, for the caller): busy.
    Connected,
}

impl CallMark {
    /// The mark as stored (`"ringing"`, `"connected"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallMark::Ringing => "ringing",
            CallMark::Connected => "connected",
        }
    }

    /// The mark stored as `s`, if it is one.
    pub fn parse(s: &str) -> Option<CallMark> {
        match s {
            "ringing" => Some(CallMark::Ringing),
            "connected" => Some(CallMark::Connected),
            _ => None,
        }
    }
}

/// The node that owns a call: its id's part before the last `_` (ids minted by a node of
/// several are `{node}_{time}-{n}`; a single node's ids have no `_`).
pub fn owner_node(call_id: &CallId) -> Option<&str> {
    call_id.as_str().rsplit_once('_').map(|(node, _)| node).filter(|n| !n.is_empty())
}

/// A user being rung whose devices on other nodes are being looked up.
#[derive(Debug, Clone)]
pub(super) struct Locating {
    pub(super) app: AppKey,
    pub(super) user: UserId,
    pub(super) call: CallId,
    pub(super) idx: usize,
    /// The push to send when no device anywhere gets the invitation (when pushing is allowed).
    pub(super) push: Option<(UserId, Option<PushConfig>)>,
}

/// A StartCall or Invite waiting for the callees' in-call marks ([`NodeOutput::CheckBusy`]).
#[derive(Debug, Clone)]
pub(super) struct BusyCheck {
    ctx: Ctx,
    rid: u64,
    request: Request,
}

impl Switchboard {
    /// Whether this switchboard is a node of several.
    pub(super) fn clustered(&self) -> bool {
        !self.cfg.node_id.is_empty()
    }

    /// The other node that owns the call `request` is about, when there is one: the request is
    /// forwarded there. A call this switchboard holds (created or recovered here) is its own.
    fn remote_owner(&self, request: &Request) -> Option<String> {
        self.remote_owner_of(request.call_id()?)
    }

    /// The other node that owns call `id`, when there is one.
    pub(super) fn remote_owner_of(&self, id: &CallId) -> Option<String> {
        if !self.clustered() {
            return None;
        }
        if self.calls.contains_key(id) {
            return None;
        }
        owner_node(id).filter(|n| *n != self.cfg.node_id).map(str::to_owned)
    }

    /// On the device's node: sends a request about another node's call to that node, when it
    /// is one. Returns the request back when it is this node's to handle.
    pub(super) fn forward_request(&mut self, ctx: &Ctx, rid: u64, request: Request) -> Option<Request> {
        let Some(node) = self.remote_owner(&request) else { return Some(request) };
        let s = self.net.sessions.get_mut(&ctx.sk)?;
        if !s.peers.contains(&node) {
            s.peers.push(node.clone());
        }
        let message = NodeMessage::Request {
            app: ctx.app.clone(),
            user: ctx.user.clone(),
            device: ctx.device.clone(),
            session_id: s.id.clone(),
            request_id: rid,
            request,
        };
        self.net.outputs.push_back(Output::Node(NodeOutput::Send { node, message: Box::new(message) }));
        None
    }

    /// On the device's node: a device acked the invitation to a call; the owner records the
    /// delivery (and tells the inviter).
    pub(super) fn invitation_acked(&mut self, sk: SessionKey, id: &CallId, user: &UserId, device: &DeviceId) {
        if !self.clustered() || self.calls.contains_key(id) {
            self.mark_delivery(id, user, device, Delivery::Delivered);
            return;
        }
        let Some(node) = owner_node(id).filter(|n| *n != self.cfg.node_id) else { return };
        let Some(s) = self.net.sessions.get(&sk) else { return };
        let message = NodeMessage::Delivered {
            app: s.app.clone(),
            user: user.clone(),
            device: device.clone(),
            session_id: s.id.clone(),
            call_id: id.clone(),
        };
        self.net
            .outputs
            .push_back(Output::Node(NodeOutput::Send { node: node.to_owned(), message: Box::new(message) }));
    }

    /// On the device's node: a session ended (`how`) or went silent; each owner it dealt with
    /// ends its legs there. Its peers are forgotten (a resumed session finds them again).
    pub(super) fn tell_peers_gone(&mut self, sk: SessionKey, how: LegEnd) {
        let Some(s) = self.net.sessions.get_mut(&sk) else { return };
        let peers = std::mem::take(&mut s.peers);
        let (app, user, session_id, last_seen) = (s.app.clone(), s.user.clone(), s.id.clone(), s.last_seen);
        self.send_gone(&app, &user, &session_id, peers, how, last_seen);
    }

    /// Sends [`NodeMessage::SessionGone`] to each of `peers`.
    pub(super) fn send_gone(
        &mut self,
        app: &AppKey,
        user: &UserId,
        session_id: &str,
        peers: Vec<String>,
        how: LegEnd,
        last_seen_ms: i64,
    ) {
        let reason = match how {
            LegEnd::Reason(r) => Some(r),
            LegEnd::Hangup => None,
        };
        for node in peers {
            let message = NodeMessage::SessionGone {
                app: app.clone(),
                user: user.clone(),
                session_id: session_id.to_owned(),
                reason,
                last_seen_ms,
            };
            self.net.outputs.push_back(Output::Node(NodeOutput::Send { node, message: Box::new(message) }));
        }
    }

    /// On the owner: asks the driver where the user's devices are, to offer them the call
    /// being rung (and push only when none is found).
    pub(super) fn locate(&mut self, locating: Locating) {
        self.next_query += 1;
        let id = self.next_query;
        let (app, user) = (locating.app.clone(), locating.user.clone());
        self.locates.insert(id, locating);
        self.net.outputs.after_marks.push(Output::Node(NodeOutput::Locate { id, app, user }));
    }

    /// The remote session of a device on another node, made if missing.
    fn remote_session(
        &mut self,
        node: &str,
        app: &AppKey,
        user: &UserId,
        device: &DeviceId,
        session_id: &str,
    ) -> SessionKey {
        let key = (node.to_owned(), session_id.to_owned());
        if let Some(&sk) = self.remotes.get(&key)
            && self.net.sessions.get(&sk).is_some_and(|s| &s.app == app && &s.user == user)
        {
            return sk;
        }
        self.next_session += 1;
        let sk = self.next_session;
        let mut session =
            Session::new(session_id.to_owned(), app.clone(), user.clone(), device.clone(), 0, 0, 1);
        session.set_conn(None);
        session.remote = Some(node.to_owned());
        let entry = self.net.user_entry(app, user);
        entry.sessions.push(sk);
        self.net.sessions.insert(sk, session);
        self.remotes.insert(key, sk);
        sk
    }

    /// Drops the remote session of (`node`, `session_id`), ending its legs as `how` says.
    /// A user it was the only device offered to (its presence entry outlived the session) is
    /// pushed then, as if no device had been found.
    ///
    /// `last_sign_ms` is when the device was last known to be there: a remote session hears
    /// from its device only when it asks something, so its own `last_seen` can be minutes old
    /// in a quiet call, and legs lost to the network end at the session's last sign of life.
    fn drop_remote(&mut self, now_ms: i64, node: &str, session_id: &str, how: LegEnd, last_sign_ms: i64) {
        let Some(sk) = self.remotes.remove(&(node.to_owned(), session_id.to_owned())) else { return };
        {
            let Some(s) = self.net.sessions.get_mut(&sk).filter(|s| s.remote.is_some()) else { return };
            s.last_seen = s.last_seen.max(last_sign_ms.min(now_ms));
        }
        let Some(s) = self.net.sessions.get(&sk) else { return };
        let ringing: Vec<(CallId, usize)> = self
            .net
            .user_calls(&s.app, &s.user)
            .into_iter()
            .filter_map(|id| {
                let call = self.calls.get(&id)?;
                let idx = call.index_of(&s.user)?;
                call.party(idx).is_some_and(|p| p.offered.contains(&sk)).then_some((id, idx))
            })
            .collect();
        self.drop_session(now_ms, sk, how, Leftovers::Store);
        for (id, idx) in ringing {
            let Some(call) = self.calls.get(&id) else { continue };
            let push = call.push.as_deref().cloned();
            if !self.cfg.push_enabled || push.as_ref().is_some_and(|p| p.disable_push) {
                continue;
            }
            let inviter =
                call.party(idx).and_then(|p| p.inviter.clone()).unwrap_or_else(|| call.creator.clone());
            self.push_unreached(&id, idx, &inviter, push.as_ref());
        }
    }

    /// Before a StartCall or Invite on a node of several: the callees may be in calls other
    /// nodes own, which this node cannot see. The request waits for their in-call marks
    /// ([`NodeOutput::CheckBusy`]) and is handled with them ([`Switchboard::complete_busy`]).
    /// Returns the request back when it is to be handled now.
    pub(super) fn check_busy_first(&mut self, ctx: &Ctx, rid: u64, request: Request) -> Option<Request> {
        if !self.clustered() || self.remote_busy.is_some() {
            return Some(request);
        }
        let users = match &request {
            Request::StartCall(start) => start.callees.clone(),
            Request::Invite { users, .. } => users.clone(),
            _ => return Some(request),
        };
        if users.is_empty() {
            return Some(request);
        }
        self.next_query += 1;
        let id = self.next_query;
        self.busy_checks.insert(id, BusyCheck { ctx: ctx.clone(), rid, request });
        self.net.outputs.push_back(Output::Node(NodeOutput::CheckBusy { id, app: ctx.app.clone(), users }));
        None
    }

    /// Keeps the in-call marks of the calls this input changed in step with them: a user being
    /// rung is marked ringing, one holding a connected leg connected, one who is neither any
    /// more is cleared ([`NodeOutput::InCall`]).
    pub(super) fn sync_marks(&mut self) {
        let touched = std::mem::take(&mut self.net.outputs.touched);
        for id in touched {
            let (app, want): (Option<AppKey>, Vec<(UserId, CallMark)>) = match self.calls.get(&id) {
                Some(call) if !call.is_ended() => (
                    Some(call.app.clone()),
                    call.parties
                        .iter()
                        .filter_map(|p| {
                            if p.state.is_connected() && p.bound.is_some() {
                                Some((p.user.clone(), CallMark::Connected))
                            } else if p.state.is_ringing() {
                                Some((p.user.clone(), CallMark::Ringing))
                            } else {
                                None
                            }
                        })
                        .collect(),
                ),
                Some(call) => (Some(call.app.clone()), Vec::new()),
                None => (None, Vec::new()),
            };
            let had = self.marked.remove(&id);
            let Some(app) = app.or_else(|| had.as_ref().map(|(a, _)| a.clone())) else { continue };
            let had = had.map(|(_, marks)| marks).unwrap_or_default();
            let set = want.iter().filter(|m| !had.contains(m)).map(|(u, m)| (u, Some(*m)));
            let cleared =
                had.iter().filter(|(u, _)| !want.iter().any(|(w, _)| w == u)).map(|(u, _)| (u, None));
            for (user, mark) in set.chain(cleared) {
                let mark =
                    NodeOutput::InCall { app: app.clone(), user: user.clone(), call_id: id.clone(), mark };
                self.net.outputs.push_back(Output::Node(mark));
            }
            if !want.is_empty() {
                self.marked.insert(id, (app, want));
            }
        }
    }

    /// On a node of several, a fresh session of a device: the calls other nodes ring its user
    /// in are offered to it ([`NodeOutput::FindRinging`]), and under the single-device policy
    /// the user's older sessions on other nodes are kicked ([`NodeOutput::KickElsewhere`]).
    pub(super) fn announce(&mut self, sk: SessionKey, single_device: bool) {
        if !self.clustered() {
            return;
        }
        let Some(s) = self.net.sessions.get(&sk) else { return };
        let (app, user, device) = (s.app.clone(), s.user.clone(), s.device.clone());
        if single_device {
            let kick = NodeOutput::KickElsewhere {
                app: app.clone(),
                user: user.clone(),
                device: device.clone(),
                at_ms: s.since,
            };
            self.net.outputs.push_back(Output::Node(kick));
        }
        let find = NodeOutput::FindRinging { app, user, device, session_id: s.id.clone() };
        self.net.outputs.push_back(Output::Node(find));
    }

    /// A login on node `from` at `at_ms` under the single-device policy: this node's sessions
    /// of the user on other devices that opened earlier are kicked (same instant: the node
    /// with the larger id wins).
    fn logged_in_elsewhere(
        &mut self,
        now_ms: i64,
        from: &str,
        app: &AppKey,
        user: &UserId,
        device: &DeviceId,
        at_ms: i64,
    ) {
        let me = self.cfg.node_id.as_str();
        let older: Vec<SessionKey> = self
            .net
            .user(app, user)
            .map(|e| {
                e.sessions
                    .iter()
                    .copied()
                    .filter(|sk| {
                        self.net.sessions.get(sk).is_some_and(|s| {
                            s.remote.is_none() && &s.device != device && (s.since, me) < (at_ms, from)
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        for sk in older {
            self.kick(now_ms, sk, EndReason::KickedOtherLogin, "the user logged in on another device");
        }
    }

    /// A call ended from its saved snapshot here was marked by its former owner: every
    /// participant's mark is cleared when it ends.
    pub(super) fn clear_marks_of_saved(&mut self, call: &Call) {
        if self.clustered() {
            let marks = call.parties.iter().map(|p| (p.user.clone(), CallMark::Connected)).collect();
            self.marked.insert(call.id.clone(), (call.app.clone(), marks));
        }
    }

    // ----- inputs -----------------------------------------------------------------------------

    /// The driver's answer to [`NodeOutput::CheckBusy`]: `calls` are the (user, call) in-call
    /// marks found, of nodes that are alive. The waiting request is handled now; a callee
    /// marked in a call another node owns counts as busy exactly like one in a call here
    /// (calls this node owns are judged from its own state, which is never stale).
    pub fn complete_busy(&mut self, now_ms: i64, id: QueryId, calls: Vec<(UserId, CallId)>) {
        if let Some(BusyCheck { ctx, rid, request }) = self.busy_checks.remove(&id)
            && self.net.sessions.contains_key(&ctx.sk)
        {
            let this_call = request.call_id().cloned();
            let me = self.cfg.node_id.as_str();
            let busy: Vec<UserId> = calls
                .into_iter()
                .filter(|(_, c)| {
                    Some(c) != this_call.as_ref() && !self.calls.contains_key(c) && owner_node(c) != Some(me)
                })
                .map(|(u, _)| u)
                .collect();
            self.remote_busy = Some(busy);
            self.request(now_ms, &ctx, rid, request);
            self.remote_busy = None;
        }
        self.finish_input(now_ms);
    }

    /// The shared state in Redis was lost (Redis restarted without its data, or this node's
    /// own liveness key was found gone): every in-call mark this node published is written
    /// again ([`NodeOutput::InCall`] for each party of each live call it owns), so busy and
    /// late ringing across nodes keep working without waiting for each call to change.
    pub fn marks_lost(&mut self, now_ms: i64) {
        let calls: Vec<CallId> = self.marked.keys().cloned().collect();
        self.marked.clear();
        self.net.outputs.touched.extend(calls);
        self.finish_input(now_ms);
    }

    /// A message from node `from` (read from this node's inbox).
    pub fn handle_node_message(&mut self, now_ms: i64, from: &str, message: NodeMessage) {
        self.init_prefix(now_ms);
        match message {
            NodeMessage::Request { app, user, device, session_id, request_id, request } => {
                let sk = self.remote_session(from, &app, &user, &device, &session_id);
                let ctx = Ctx { sk, app, user, device };
                if self.stopped {
                    let e = Error::new(Code::CallNotFound, "the call's node is shutting down");
                    self.net.respond(sk, request_id, Err(e));
                } else {
                    self.request(now_ms, &ctx, request_id, request);
                }
            }
            NodeMessage::Deliver { app, user, session_id, body } => {
                let sk = self.net.user(&app, &user).and_then(|entry| {
                    entry.sessions.iter().copied().find(|sk| {
                        self.net.sessions.get(sk).is_some_and(|s| s.remote.is_none() && s.id == session_id)
                    })
                });
                match sk {
                    Some(sk) => {
                        if let Some(s) = self.net.sessions.get_mut(&sk)
                            && !s.peers.iter().any(|p| p == from)
                        {
                            s.peers.push(from.to_owned());
                        }
                        self.note_held_elsewhere(sk, from, &body);
                        self.net.push_body(sk, body);
                    }
                    None => {
                        // No such session here (it ended, or the presence entry that named it
                        // outlived it): the owner is told so it stops routing to it. A record
                        // or summary meant for it is kept for the user.
                        let how = LegEnd::Reason(EndReason::NetworkError);
                        self.send_gone(&app, &user, &session_id, vec![from.to_owned()], how, 0);
                        if let ServerBody::Event(e @ (Event::CallRecord(_) | Event::Summary(_))) = body {
                            self.user_event(app, user, e);
                        }
                    }
                }
            }
            NodeMessage::UserEvent { app, user, event } => self.user_event(app, user, event),
            NodeMessage::OfflineWaiting { app, user } => {
                for sk in self.net.user_devices(&app, &user, None).iter() {
                    self.load_offline(sk);
                }
            }
            NodeMessage::EndCall { app, call_id, user } => {
                if let Err(e) = self.server_end(now_ms, &app, &call_id, user.as_ref()) {
                    tracing::warn!(from, call = %call_id, error = %e, "an operator's end from another node not done");
                }
            }
            NodeMessage::Delivered { app, user, device, session_id, call_id } => {
                self.remote_session(from, &app, &user, &device, &session_id);
                self.mark_delivery(&call_id, &user, &device, Delivery::Delivered);
            }
            NodeMessage::DeviceOnline { app, user, device, session_id } => {
                let rung = self.net.user_calls(&app, &user).into_iter().any(|id| {
                    self.calls.get(&id).is_some_and(|call| {
                        !call.is_ended()
                            && call
                                .index_of(&user)
                                .and_then(|i| call.party(i))
                                .is_some_and(|p| p.state.is_ringing())
                    })
                });
                if rung {
                    let sk = self.remote_session(from, &app, &user, &device, &session_id);
                    self.offer_ringing(sk);
                }
            }
            NodeMessage::SignOut { app, user, device } => {
                self.sign_out_here(now_ms, &app, &user, device.as_ref());
            }
            NodeMessage::LoggedIn { app, user, device, at_ms } => {
                if self.cfg.device_policy == super::DevicePolicy::SingleDevice {
                    self.logged_in_elsewhere(now_ms, from, &app, &user, &device, at_ms);
                }
            }
            NodeMessage::SessionGone { app: _, user: _, session_id, reason, last_seen_ms } => {
                let how = reason.map_or(LegEnd::Hangup, LegEnd::Reason);
                // Its legs lost to the network end at its last sign of life on its own node,
                // as a local session's do; unknown there, when the news arrives.
                let last_sign = if last_seen_ms > 0 { last_seen_ms } else { now_ms };
                self.drop_remote(now_ms, from, &session_id, how, last_sign);
            }
        }
        self.finish_input(now_ms);
    }

    /// An event for a user's devices on this node, stored when there is none (a record or
    /// summary routed here just as the device left is kept rather than lost; another node
    /// holding a device of the user may then deliver it too).
    /// A call's end routed here (a taken-over call) is only for devices present now: a device
    /// that connects later never had the call.
    fn user_event(&mut self, app: AppKey, user: UserId, event: Event) {
        // Delivered here only: the sending node routed it to every node concerned.
        let devices = self.net.user_devices(&app, &user, None);
        if devices.len() == 0 {
            if matches!(event, Event::CallRecord(_) | Event::Summary(_)) {
                self.net.outputs.push_back(Output::StoreOffline { app, user, event });
            }
        } else {
            for sk in devices.iter() {
                self.net.send(sk, event.clone());
            }
        }
    }

    /// The driver's answer to [`NodeOutput::Locate`]: the user's devices by the presence
    /// registry (entries of this node are ignored: its own sessions are known). Each device on
    /// another node is offered the calls its user is still being rung in; when no device at all
    /// got the invitation, the push is sent now.
    pub fn complete_locate(&mut self, now_ms: i64, id: QueryId, devices: Vec<RemoteDevice>) {
        if let Some(locating) = self.locates.remove(&id) {
            for d in devices {
                if d.node == self.cfg.node_id || d.node.is_empty() {
                    continue;
                }
                let sk =
                    self.remote_session(&d.node, &locating.app, &locating.user, &d.device, &d.session_id);
                self.offer_ringing(sk);
            }
            if let Some((inviter, push)) = locating.push {
                self.push_unreached(&locating.call, locating.idx, &inviter, push.as_ref());
            }
        }
        self.finish_input(now_ms);
    }

    /// A forwarded request could not be put on its owner's inbox (no such node, or it is gone):
    /// the device is answered CALL_NOT_FOUND, as for a call that does not exist.
    pub fn forward_failed(
        &mut self,
        now_ms: i64,
        app: &AppKey,
        user: &UserId,
        session_id: &str,
        request_id: u64,
    ) {
        let sk = self.net.user(app, user).and_then(|entry| {
            entry.sessions.iter().copied().find(|sk| {
                self.net.sessions.get(sk).is_some_and(|s| s.remote.is_none() && s.id == session_id)
            })
        });
        if let Some(sk) = sk {
            self.net.respond(sk, request_id, Err(Error::from_code(Code::CallNotFound)));
        }
        self.finish_input(now_ms);
    }

    /// Node `node` is gone (its presence and liveness expired): the legs its devices held in
    /// this node's calls end with NETWORK_ERROR, as for a device silent past the liveness
    /// timeout, and the calls it owned end at once for this node's devices in them
    /// (`Event::CallEnded`, NETWORK_ERROR), even one whose snapshot was never saved.
    ///
    /// The calls the lost node owned are then ended by exactly one surviving node: this one
    /// asks for the right to do it ([`NodeOutput::AcquireTakeover`]), and the node that wins
    /// it ends them from their saved snapshots ([`Switchboard::takeover_granted`]). The lost
    /// node is also forgotten as a peer of this node's sessions (nothing is sent to it any
    /// more).
    ///
    /// `died_at_ms` is the driver's estimate of when the node stopped (its liveness key's last
    /// renewal), earlier than `now_ms` by the time the loss took to notice: the calls taken over
    /// from it end at that moment (never before their last change), so no record counts the
    /// detection delay as talk time.
    pub fn node_lost(&mut self, now_ms: i64, node: &str, died_at_ms: i64) {
        let died_at_ms = died_at_ms.min(now_ms);
        self.lost_at.insert(node.to_owned(), died_at_ms);
        self.end_held_elsewhere(node, died_at_ms);
        let gone: Vec<String> =
            self.remotes.keys().filter(|(n, _)| n == node).map(|(_, session)| session.clone()).collect();
        for session_id in gone {
            self.drop_remote(now_ms, node, &session_id, LegEnd::Reason(EndReason::NetworkError), died_at_ms);
        }
        for s in self.net.sessions.values_mut() {
            s.peers.retain(|p| p != node);
        }
        if self.clustered() && node != self.cfg.node_id && !self.stopped {
            let node = node.to_owned();
            self.net.outputs.push_back(Output::Node(NodeOutput::AcquireTakeover { node }));
        }
        self.finish_input(now_ms);
    }

    /// Keeps [`Switchboard::held_elsewhere`] in step with a frame `from` a call's owner to the
    /// local session `sk`: an invitation adds the call, its end removes it.
    fn note_held_elsewhere(&mut self, sk: SessionKey, from: &str, body: &ServerBody) {
        match body {
            ServerBody::Event(Event::IncomingCall { call, .. })
                if owner_node(&call.call_id) == Some(from) =>
            {
                let held = self.held_elsewhere.entry(sk).or_default();
                held.retain(|c| c.call_id != call.call_id);
                held.push(call.clone());
            }
            ServerBody::Event(Event::CallEnded { call, .. }) => {
                if let Some(held) = self.held_elsewhere.get_mut(&sk) {
                    held.retain(|c| c.call_id != call.call_id);
                    if held.is_empty() {
                        self.held_elsewhere.remove(&sk);
                    }
                }
            }
            _ => {}
        }
    }

    /// Ends, for this node's devices, every call the lost `node` owned that they hold: the end
    /// the survivor that takes the node's calls over sends later is then ignored by the device
    /// (it no longer holds the call), and a call no survivor knows of (its snapshot died with
    /// its owner) does not live on. Records are the survivor's to write; such a call has none.
    fn end_held_elsewhere(&mut self, node: &str, died_at_ms: i64) {
        let mut ends = Vec::new();
        for (sk, held) in self.held_elsewhere.iter_mut() {
            held.retain(|call| {
                let owned = owner_node(&call.call_id) == Some(node);
                if owned {
                    ends.push((*sk, call.clone()));
                }
                !owned
            });
        }
        self.held_elsewhere.retain(|_, held| !held.is_empty());
        ends.sort_by(|a, b| (a.0, &a.1.call_id).cmp(&(b.0, &b.1.call_id)));
        for (sk, mut call) in ends {
            let ended = Arc::make_mut(&mut call);
            ended.ended_at_ms = Some(died_at_ms.max(ended.created_at_ms));
            self.net.send(sk, Event::CallEnded { call, reason: EndReason::NetworkError });
        }
    }

    /// This node won the right to end the calls of the lost node `node`
    /// ([`NodeOutput::AcquireTakeover`]); `calls` are the saved snapshots the driver read from
    /// durable storage after winning it (calls of other nodes among them are ignored).
    ///
    /// Each live one ends with NETWORK_ERROR for every participant still in it, at the moment
    /// the node died (as [`Switchboard::node_lost`] was told; never before the call's last
    /// change): one record
    /// per participant (routed to their devices wherever they are, stored when they have none),
    /// a summary for 1:1 calls, `Event::CallEnded` sent to each participant's devices on every
    /// node (so no device keeps the call), and [`Output::ForgetCall`]. The call is held here
    /// afterwards like any ended call, so a late request about it is answered as for an ended
    /// call. Taking over and continuing the call is not attempted: the snapshot lacks the ring
    /// timers and the per-device link state needed to continue it faithfully.
    pub fn takeover_granted(&mut self, now_ms: i64, node: &str, calls: Vec<(AppKey, CallInfo)>) {
        self.init_prefix(now_ms);
        // When the node died, as `node_lost` was told; a node that was not reported lost here
        // (the caller's own bookkeeping) has its calls end now.
        let died_at = self.lost_at.remove(node).unwrap_or(now_ms);
        for (app, info) in calls {
            if owner_node(&info.call_id) != Some(node) || node == self.cfg.node_id {
                continue;
            }
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
            self.calls.insert(id.clone(), Box::new(call));
            self.live += 1;
            self.ending_saved = true;
            self.finish_call_at(now_ms, died_at, &id, EndReason::NetworkError, None);
            self.ending_saved = false;
        }
        self.finish_input(now_ms);
    }

    /// The lease of the call `call_id`, which this node owns, was found held by another node,
    /// or released by one that took it over: a node that took this one for lost (it paused, or
    /// lost Redis, past the liveness timeout) ended the call for everyone, with its records. This
    /// node stops acting for the call at once: its own devices still in it are told it ended
    /// (NETWORK_ERROR, as the others were), the SFU drops it, and nothing durable is written or
    /// routed for it (the successor's records stand: storage refuses this node's older fencing
    /// token anyway). A call not held here, or already ended, is left alone.
    ///
    /// ```
    /// use callplus_session::switchboard::{Switchboard, SwitchboardConfig};
    /// use callplus_session::{AppKey, CallId};
    /// let mut sb = Switchboard::new(SwitchboardConfig { node_id: "node-a".into(), ..Default::default() });
    /// let (app, call) = (AppKey::new("app").unwrap(), CallId::new("node-a_x-1").unwrap());
    /// sb.lease_lost(0, &app, &call);
    /// assert_eq!(sb.live_calls(), 0);
    /// ```
    pub fn lease_lost(&mut self, now_ms: i64, app: &AppKey, call_id: &CallId) {
        if self.calls.get(call_id).is_some_and(|call| &call.app == app && !call.is_ended()) {
            tracing::warn!(call = %call_id, "call taken over by another node; this node stops acting for it");
            self.fenced = true;
            self.finish_call(now_ms, call_id, EndReason::NetworkError, None);
            self.fenced = false;
        }
        self.finish_input(now_ms);
    }

    /// A call ended from its saved snapshot (taken over from a lost node, or this node's own
    /// after a restart) ended for `user`: no session of theirs is bound to it here, so
    /// `Event::CallEnded` goes to their devices on this node and on every other (a device that
    /// does not hold the call ignores it).
    pub(super) fn route_call_ended(&mut self, app: &AppKey, user: &UserId, event: Event) {
        let devices = self.net.user_devices(app, user, None);
        for sk in devices.iter() {
            self.net.send(sk, event.clone());
        }
        let route = NodeOutput::Route { app: app.clone(), user: user.clone(), event, store_if_absent: false };
        self.net.outputs.push_back(Output::Node(route));
    }

    /// Remote sessions this node holds for devices on other nodes (a getter for tests and
    /// metrics).
    pub fn remote_sessions(&self) -> usize {
        self.remotes.len()
    }
}

/// Turns a reliable frame body for a remote session into the message to its node.
pub(super) fn deliver_output(s: &Session, node: &str, body: ServerBody) -> Output {
    let message =
        NodeMessage::Deliver { app: s.app.clone(), user: s.user.clone(), session_id: s.id.clone(), body };
    Output::Node(NodeOutput::Send { node: node.to_owned(), message: Box::new(message) })
}
