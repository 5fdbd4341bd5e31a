//! The app-facing call session and the engine's per-call bookkeeping.

use std::collections::VecDeque;

use crate::model::ids::{CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{
    CallState, CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaKind, MediaType, ParticipantState,
};
use crate::model::message::SfuRoute;
use crate::model::snapshot::{CallInfo, DeviceLeg, Participant};

use super::event::ClientEvent;

/// Most participants kept per call (the server's limits are far lower; this bounds memory
/// against a hostile server).
const MAX_PARTICIPANTS: usize = 256;
/// Most open change-media-type requests of the peer remembered per call.
const MAX_PEER_TRANSACTIONS: usize = 8;
/// Finished transactions remembered per call, so a late answer does not revive one.
const MAX_FINISHED_TRANSACTIONS: usize = 16;

/// One call as this device sees it (CallPlus's `RCCallPlusSession`): id, state, type, media
/// type, the user list with states, creator, inviter, times.
///
/// Sessions are snapshots: the engine hands out clones in events and borrows through its
/// getters ([`ClientEngine::current_call`](super::ClientEngine::current_call),
/// [`ClientEngine::session`](super::ClientEngine::session)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSession {
    call_id: CallId,
    local_user: UserId,
    state: CallState,
    call_type: CallType,
    media_type: MediaType,
    creator: UserId,
    inviter: Option<UserId>,
    participants: Vec<Participant>,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    first_frame_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    end_reason: Option<EndReason>,
    extra: String,
    outgoing: bool,
    camera_enabled: bool,
    microphone_enabled: bool,
    version: u64,
    ring_timeout_ms: u32,
}

impl CallSession {
    /// The call id.
    pub fn call_id(&self) -> &CallId {
        &self.call_id
    }

    /// The user of this device.
    pub fn local_user(&self) -> &UserId {
        &self.local_user
    }

    /// The call's state on this device.
    pub fn state(&self) -> CallState {
        self.state
    }

    /// SINGLE or MULTI.
    pub fn call_type(&self) -> CallType {
        self.call_type
    }

    /// AUDIO or AUDIO_VIDEO.
    pub fn media_type(&self) -> MediaType {
        self.media_type
    }

    /// Who started the call.
    pub fn creator(&self) -> &UserId {
        &self.creator
    }

    /// Who invited this user; `None` when this user started the call.
    pub fn inviter(&self) -> Option<&UserId> {
        self.inviter.as_ref()
    }

    /// Everyone ever invited, with their states, the creator first.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// The entry of one participant.
    pub fn participant(&self, user: &UserId) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.user_id == user)
    }

    /// The other participants (everyone but this user).
    pub fn remote_participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.iter().filter(move |p| p.user_id != self.local_user)
    }

    /// When the call was created (server clock).
    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }

    /// When the first two participants connected (billing start).
    pub fn started_at_ms(&self) -> Option<i64> {
        self.started_at_ms
    }

    /// When the first media frame was rendered.
    pub fn first_frame_at_ms(&self) -> Option<i64> {
        self.first_frame_at_ms
    }

    /// When the call ended for this user.
    pub fn ended_at_ms(&self) -> Option<i64> {
        self.ended_at_ms
    }

    /// Why the call ended for this user.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason
    }

    /// Data the caller attached to the call.
    pub fn extra(&self) -> &str {
        &self.extra
    }

    /// Whether this user placed the call.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// Whether this user's camera is on (as last confirmed by the server).
    pub fn camera_enabled(&self) -> bool {
        self.camera_enabled
    }

    /// Whether this user's microphone is on (as last confirmed by the server).
    pub fn microphone_enabled(&self) -> bool {
        self.microphone_enabled
    }

    /// The call version of the latest snapshot seen (increases on every change).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The call's ring timeout in ms (0 = none).
    pub fn ring_timeout_ms(&self) -> u32 {
        self.ring_timeout_ms
    }

    /// Whether the call has ended for this user.
    pub fn is_ended(&self) -> bool {
        self.state == CallState::Ended
    }

    /// Talk time so far: from the start time to the end (or `now_ms` while the call lasts);
    /// 0 when the call never connected. Never negative.
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        match self.started_at_ms {
            Some(start) => self.ended_at_ms.unwrap_or(now_ms).saturating_sub(start).max(0),
            None => 0,
        }
    }
}

/// How this device relates to a live call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Placed from this device.
    Caller,
    /// Rings here; not answered from this device.
    Invited,
    /// Accepted or joined from this device.
    Answered,
}

/// A live call and what the engine tracks about it besides the app-facing session.
#[derive(Debug, Clone)]
pub(super) struct LiveCall {
    pub(super) session: CallSession,
    pub(super) role: Role,
    /// An Accept from this device is in flight.
    pub(super) accepting: bool,
    /// Where a MULTI call's media goes, once the server said (`Some(None)`: mesh). A MULTI
    /// call's media waits for it; SINGLE calls are always peer to peer.
    pub(super) media_route: Option<Option<SfuRoute>>,
    connected_emitted: bool,
    start_time_emitted: bool,
    first_frame_emitted: bool,
    /// This device's open change-media-type transaction.
    pub(super) my_transaction: Option<TransactionId>,
    /// A RequestChangeMediaType from this device awaits its response.
    pub(super) requesting_change: bool,
    /// The peer's open requests.
    pub(super) peer_transactions: Vec<TransactionId>,
    finished_transactions: VecDeque<TransactionId>,
}

fn rank(state: CallState) -> u8 {
    match state {
        CallState::Idle | CallState::Dialing | CallState::Incoming => 0,
        CallState::Connecting => 1,
        CallState::OnCall => 2,
        CallState::Ended => 3,
    }
}

fn new_participant(
    user: &UserId,
    state: ParticipantState,
    inviter: Option<UserId>,
    now_ms: i64,
) -> Participant {
    Participant {
        user_id: user.clone(),
        state,
        reason: None,
        inviter,
        invited_at_ms: now_ms,
        connected_at_ms: None,
        ended_at_ms: None,
        devices: Vec::new(),
        delivery: Delivery::Unreachable,
        camera_disabled: false,
        microphone_disabled: false,
        device_id: None,
    }
}

impl LiveCall {
    /// A live call from a server snapshot.
    pub(super) fn new(info: &CallInfo, me: &UserId, role: Role, inviter: Option<UserId>) -> LiveCall {
        let mine = info.participant(me);
        let session = CallSession {
            call_id: info.call_id.clone(),
            local_user: me.clone(),
            state: match role {
                Role::Caller => CallState::Dialing,
                Role::Invited => CallState::Incoming,
                Role::Answered => CallState::Connecting,
            },
            call_type: info.call_type,
            media_type: info.media_type,
            creator: info.creator.clone(),
            inviter: inviter.or_else(|| mine.and_then(|p| p.inviter.clone())),
            participants: info.participants.iter().take(MAX_PARTICIPANTS).cloned().collect(),
            created_at_ms: info.created_at_ms,
            started_at_ms: info.started_at_ms,
            first_frame_at_ms: info.first_frame_at_ms,
            ended_at_ms: None,
            end_reason: None,
            extra: info.extra.clone(),
            outgoing: role == Role::Caller || (role == Role::Answered && &info.creator == me),
            camera_enabled: !mine.is_some_and(|p| p.camera_disabled),
            microphone_enabled: !mine.is_some_and(|p| p.microphone_disabled),
            version: info.version,
            ring_timeout_ms: info.ring_timeout_ms,
        };
        LiveCall {
            session,
            role,
            accepting: false,
            media_route: None,
            connected_emitted: false,
            start_time_emitted: false,
            first_frame_emitted: false,
            my_transaction: None,
            requesting_change: false,
            peer_transactions: Vec::new(),
            finished_transactions: VecDeque::new(),
        }
    }

    pub(super) fn call_id(&self) -> &CallId {
        &self.session.call_id
    }

    /// Whether the call's media belongs on this device: placed, accepted or joined here, and
    /// connected (`CallConnected` was told), not merely ringing or answered elsewhere.
    pub(super) fn media_runs_here(&self) -> bool {
        self.role != Role::Invited && self.connected_emitted && self.session.state == CallState::OnCall
    }

    fn me(&self) -> &UserId {
        &self.session.local_user
    }

    /// This user's own participant state, if listed.
    pub(super) fn my_state(&self) -> Option<ParticipantState> {
        self.session.participant(&self.session.local_user).map(|p| p.state)
    }

    /// Whether an event of call version `version` is older than the snapshot applied last
    /// (0 means the server did not say).
    pub(super) fn is_stale(&self, version: u64) -> bool {
        version != 0 && version < self.session.version
    }

    /// Whether the snapshot says the call is over for this user.
    pub(super) fn snapshot_ends_me(info: &CallInfo, me: &UserId) -> Option<EndReason> {
        let mine = info.participant(me);
        if info.is_ended() || mine.is_some_and(|p| p.state == ParticipantState::Ended) {
            Some(mine.and_then(|p| p.reason).unwrap_or(EndReason::EndedByServer))
        } else {
            None
        }
    }

    /// The reason a hangup from this device gives, from this user's point of view.
    pub(super) fn local_hangup_reason(&self) -> EndReason {
        match (self.role, self.session.state) {
            (Role::Caller, CallState::Dialing) => EndReason::Cancel,
            (Role::Invited, _) => EndReason::Reject,
            _ => EndReason::Hangup,
        }
    }

    /// Re-derives the session state from the role and participant states; the state only moves
    /// forward. Emits `CallConnected` the first time it reaches `OnCall`.
    pub(super) fn recompute(&mut self, out: &mut VecDeque<ClientEvent>) {
        let me = self.me().clone();
        let derived = match self.role {
            Role::Invited => CallState::Incoming,
            Role::Answered => match self.my_state() {
                Some(ParticipantState::OnCall) => CallState::OnCall,
                _ => CallState::Connecting,
            },
            Role::Caller => {
                let others = || self.session.participants.iter().filter(|p| p.user_id != me);
                if others().any(|p| p.state == ParticipantState::OnCall) {
                    CallState::OnCall
                } else if others().any(|p| p.state == ParticipantState::Connecting) {
                    CallState::Connecting
                } else {
                    CallState::Dialing
                }
            }
        };
        let old = self.session.state;
        if old == CallState::Ended {
            return;
        }
        if rank(derived) > rank(old) {
            self.session.state = derived;
        }
        if self.session.state == CallState::OnCall && !self.connected_emitted {
            self.connected_emitted = true;
            out.push_back(ClientEvent::CallConnected { session: self.session.clone() });
        }
    }

    /// Applies a newer server snapshot. With `diff`, changes of other participants and of the
    /// call type are reported as events.
    pub(super) fn apply_snapshot(&mut self, info: &CallInfo, diff: bool, out: &mut VecDeque<ClientEvent>) {
        if info.call_id != self.session.call_id || info.version < self.session.version {
            return;
        }
        let call_id = self.session.call_id.clone();
        if diff {
            if info.call_type != self.session.call_type {
                out.push_back(ClientEvent::CallTypeChanged {
                    call_id: call_id.clone(),
                    call_type: info.call_type,
                });
            }
            for new in info.participants.iter().take(MAX_PARTICIPANTS) {
                if &new.user_id == self.me() {
                    continue;
                }
                let old = self.session.participant(&new.user_id);
                if old.is_none_or(|o| o.state != new.state || o.reason != new.reason) {
                    out.push_back(ClientEvent::RemoteUserStateChanged {
                        call_id: call_id.clone(),
                        user_id: new.user_id.clone(),
                        state: new.state,
                        reason: new.reason,
                    });
                }
                if let Some(old) = old {
                    if old.camera_disabled != new.camera_disabled {
                        out.push_back(ClientEvent::RemoteCameraStateChanged {
                            call_id: call_id.clone(),
                            user_id: new.user_id.clone(),
                            disabled: new.camera_disabled,
                        });
                    }
                    if old.microphone_disabled != new.microphone_disabled {
                        out.push_back(ClientEvent::RemoteMicrophoneStateChanged {
                            call_id: call_id.clone(),
                            user_id: new.user_id.clone(),
                            disabled: new.microphone_disabled,
                        });
                    }
                }
            }
        }
        let s = &mut self.session;
        s.call_type = info.call_type;
        s.media_type = info.media_type;
        s.participants = info.participants.iter().take(MAX_PARTICIPANTS).cloned().collect();
        s.started_at_ms = info.started_at_ms.or(s.started_at_ms);
        s.first_frame_at_ms = info.first_frame_at_ms.or(s.first_frame_at_ms);
        s.extra.clone_from(&info.extra);
        s.ring_timeout_ms = info.ring_timeout_ms;
        s.version = info.version;
        if let Some(mine) = info.participant(&s.local_user) {
            s.camera_enabled = !mine.camera_disabled;
            s.microphone_enabled = !mine.microphone_disabled;
        }
        self.recompute(out);
    }

    fn participant_mut(&mut self, user: &UserId, now_ms: i64) -> Option<&mut Participant> {
        let idx = match self.session.participants.iter().position(|p| &p.user_id == user) {
            Some(idx) => idx,
            None if self.session.participants.len() < MAX_PARTICIPANTS => {
                self.session.participants.push(new_participant(
                    user,
                    ParticipantState::Incoming,
                    None,
                    now_ms,
                ));
                self.session.participants.len() - 1
            }
            None => return None,
        };
        self.session.participants.get_mut(idx)
    }

    /// A participant (possibly this user) changed state.
    pub(super) fn participant_changed(
        &mut self,
        now_ms: i64,
        user: &UserId,
        state: ParticipantState,
        reason: Option<EndReason>,
        device: Option<DeviceId>,
        out: &mut VecDeque<ClientEvent>,
    ) {
        let is_me = user == self.me();
        let Some(p) = self.participant_mut(user, now_ms) else { return };
        let changed = p.state != state || p.reason != reason;
        p.state = state;
        p.reason = reason;
        if device.is_some() {
            p.device_id = device;
        }
        if state == ParticipantState::OnCall && p.connected_at_ms.is_none() {
            p.connected_at_ms = Some(now_ms);
        }
        if state == ParticipantState::Ended && p.ended_at_ms.is_none() {
            p.ended_at_ms = Some(now_ms);
        }
        if is_me {
            // Only this device's own answer makes the call live here; another device of the
            // user answering ends it here (the server sends CallEnded with
            // ACCEPTED_ON_OTHER_DEVICE).
            if state.is_connected() && self.role == Role::Invited && self.accepting {
                self.role = Role::Answered;
                self.accepting = false;
            }
        } else if changed {
            out.push_back(ClientEvent::RemoteUserStateChanged {
                call_id: self.session.call_id.clone(),
                user_id: user.clone(),
                state,
                reason,
            });
        }
        self.recompute(out);
    }

    /// Camera or microphone of a participant.
    pub(super) fn media_state_changed(
        &mut self,
        now_ms: i64,
        user: &UserId,
        kind: MediaKind,
        disabled: bool,
        out: &mut VecDeque<ClientEvent>,
    ) {
        let is_me = user == self.me();
        let call_id = self.session.call_id.clone();
        let Some(p) = self.participant_mut(user, now_ms) else { return };
        let flag = match kind {
            MediaKind::Video => &mut p.camera_disabled,
            MediaKind::Audio => &mut p.microphone_disabled,
        };
        let changed = *flag != disabled;
        *flag = disabled;
        if is_me {
            self.set_local_media(kind, disabled);
        } else if changed {
            let user_id = user.clone();
            out.push_back(match kind {
                MediaKind::Video => ClientEvent::RemoteCameraStateChanged { call_id, user_id, disabled },
                MediaKind::Audio => ClientEvent::RemoteMicrophoneStateChanged { call_id, user_id, disabled },
            });
        }
    }

    /// This user's camera or microphone, confirmed by the server.
    pub(super) fn set_local_media(&mut self, kind: MediaKind, disabled: bool) {
        match kind {
            MediaKind::Video => self.session.camera_enabled = !disabled,
            MediaKind::Audio => self.session.microphone_enabled = !disabled,
        }
        let me = self.me().clone();
        if let Some(p) = self.session.participants.iter_mut().find(|p| p.user_id == me) {
            match kind {
                MediaKind::Video => p.camera_disabled = disabled,
                MediaKind::Audio => p.microphone_disabled = disabled,
            }
        }
    }

    /// Users were invited into the call.
    pub(super) fn users_invited(
        &mut self,
        now_ms: i64,
        inviter: &UserId,
        invitees: &[UserId],
        out: &mut VecDeque<ClientEvent>,
    ) {
        let others: Vec<UserId> = invitees.iter().filter(|u| *u != self.me()).cloned().collect();
        if others.is_empty() {
            return;
        }
        for user in &others {
            let known = self.session.participants.iter().any(|p| &p.user_id == user);
            if !known && self.session.participants.len() < MAX_PARTICIPANTS {
                self.session.participants.push(new_participant(
                    user,
                    ParticipantState::Incoming,
                    Some(inviter.clone()),
                    now_ms,
                ));
            }
        }
        out.push_back(ClientEvent::RemoteUserInvited {
            call_id: self.session.call_id.clone(),
            inviter: inviter.clone(),
            invitees: others,
        });
    }

    /// The call's type changed.
    pub(super) fn call_type_changed(&mut self, call_type: CallType, out: &mut VecDeque<ClientEvent>) {
        if self.session.call_type != call_type {
            self.session.call_type = call_type;
            out.push_back(ClientEvent::CallTypeChanged { call_id: self.session.call_id.clone(), call_type });
        }
    }

    /// The call connected (billing start). Reported once.
    pub(super) fn call_started(
        &mut self,
        call_type: CallType,
        started_at_ms: i64,
        out: &mut VecDeque<ClientEvent>,
    ) {
        self.session.started_at_ms = Some(started_at_ms);
        if !self.start_time_emitted {
            self.start_time_emitted = true;
            out.push_back(ClientEvent::CallStartTime {
                call_id: self.session.call_id.clone(),
                call_type,
                started_at_ms,
            });
        }
    }

    /// The first media frame was rendered. Reported once.
    pub(super) fn first_frame(&mut self, at_ms: i64, out: &mut VecDeque<ClientEvent>) {
        self.session.first_frame_at_ms = Some(at_ms);
        if !self.first_frame_emitted {
            self.first_frame_emitted = true;
            out.push_back(ClientEvent::CallFirstFrameTime { call_id: self.session.call_id.clone(), at_ms });
        }
    }

    /// Invitation progress of a callee.
    pub(super) fn delivery_changed(
        &mut self,
        now_ms: i64,
        user: &UserId,
        delivery: Delivery,
        devices: Vec<DeviceLeg>,
        out: &mut VecDeque<ClientEvent>,
    ) {
        if let Some(p) = self.participant_mut(user, now_ms) {
            p.delivery = delivery;
            p.devices = devices;
        }
        out.push_back(ClientEvent::DeliveryChanged {
            call_id: self.session.call_id.clone(),
            user_id: user.clone(),
            delivery,
        });
    }

    fn is_finished(&self, tx: &TransactionId) -> bool {
        self.finished_transactions.contains(tx)
    }

    /// The response to this device's RequestChangeMediaType named its transaction.
    pub(super) fn own_transaction_opened(&mut self, tx: TransactionId) {
        self.requesting_change = false;
        if !self.is_finished(&tx) {
            self.my_transaction = Some(tx);
        }
    }

    /// The peer asks to change the media type.
    pub(super) fn change_requested(
        &mut self,
        user: &UserId,
        tx: &TransactionId,
        media_type: MediaType,
        out: &mut VecDeque<ClientEvent>,
    ) {
        if user == self.me() || self.is_finished(tx) || self.peer_transactions.contains(tx) {
            return;
        }
        if self.peer_transactions.len() >= MAX_PEER_TRANSACTIONS {
            self.peer_transactions.remove(0);
        }
        self.peer_transactions.push(tx.clone());
        out.push_back(ClientEvent::ChangeMediaTypeRequest {
            call_id: self.session.call_id.clone(),
            user_id: user.clone(),
            transaction_id: tx.clone(),
            media_type,
        });
    }

    /// Forgets a transaction (finished, or refused by the server).
    pub(super) fn forget_transaction(&mut self, tx: &TransactionId) {
        if self.my_transaction.as_ref() == Some(tx) {
            self.my_transaction = None;
        }
        self.peer_transactions.retain(|t| t != tx);
        if !self.is_finished(tx) {
            if self.finished_transactions.len() >= MAX_FINISHED_TRANSACTIONS {
                self.finished_transactions.pop_front();
            }
            self.finished_transactions.push_back(tx.clone());
        }
    }

    /// A change-media-type transaction finished.
    pub(super) fn change_finished(
        &mut self,
        user: &UserId,
        tx: &TransactionId,
        media_type: MediaType,
        result: ChangeMediaTypeResult,
        out: &mut VecDeque<ClientEvent>,
    ) {
        if self.is_finished(tx) {
            return;
        }
        self.forget_transaction(tx);
        self.session.media_type = media_type;
        out.push_back(ClientEvent::ChangeMediaTypeResult {
            call_id: self.session.call_id.clone(),
            user_id: user.clone(),
            transaction_id: tx.clone(),
            media_type,
            result,
        });
    }

    /// Ends the session: final snapshot (if any), state `Ended`, and the `CallEnded` event.
    pub(super) fn end(
        mut self,
        now_ms: i64,
        reason: EndReason,
        last: Option<&CallInfo>,
        out: &mut VecDeque<ClientEvent>,
    ) -> CallSession {
        let mut silent = VecDeque::new();
        if let Some(info) = last {
            self.apply_snapshot(info, false, &mut silent);
        }
        let ended_at = last
            .and_then(|i| {
                i.participant(&self.session.local_user).and_then(|p| p.ended_at_ms).or(i.ended_at_ms)
            })
            .unwrap_or(now_ms);
        let s = &mut self.session;
        s.state = CallState::Ended;
        s.end_reason = Some(reason);
        s.ended_at_ms = Some(ended_at);
        out.push_back(ClientEvent::CallEnded { session: s.clone(), reason });
        self.session
    }
}
