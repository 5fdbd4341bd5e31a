//! Call requests and call endings: the switchboard side of [`crate::call`].

use std::sync::Arc;

use crate::call::{Answered, Call, Holders, MediaChange, NewCall, Party, Rang, SessionKey, remote_view};
use crate::error::{Code, Error};
use crate::model::ids::{CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{
    CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaKind, MediaType, ParticipantState,
};
use crate::model::message::{Event, MediaPayload, Request, ResponseBody, StartCall};
use crate::model::snapshot::PushConfig;

use super::Output;
use super::fasthash::FastMap;
use super::media_route::send_route;
use super::{BusyPolicy, Ctx, Net, PushKind, PushRequest, Query, Switchboard, Timer};

/// The participant whose departure is being processed, and the device sessions that held the
/// call for it.
pub(super) struct Leaver {
    idx: usize,
    sessions: Holders,
    /// The device that acted (hung up / rejected); the others get `other_devices`.
    acting: Option<SessionKey>,
    other_devices: EndReason,
}

fn err(code: Code, message: &str) -> Error {
    Error::new(code, message)
}

/// The call `id` of the requester's app and the requester's participant index.
fn find<'a>(
    calls: &'a mut FastMap<CallId, Box<Call>>,
    ctx: &Ctx,
    id: &CallId,
) -> Result<(&'a mut Call, usize), Error> {
    // A stranger is told exactly what a missing call gets, so call ids cannot be probed
    // (docs/protocol.md#server-rules: no user learns about calls they are not in).
    let call = calls
        .get_mut(id)
        .filter(|c| c.app == ctx.app && c.index_of(&ctx.user).is_some())
        .ok_or_else(|| Error::from_code(Code::CallNotFound))?;
    let idx = call.index_of(&ctx.user).ok_or_else(|| Error::from_code(Code::CallNotFound))?;
    Ok((call, idx))
}

fn not_ended(call: &Call) -> Result<(), Error> {
    if call.is_ended() { Err(Error::from_code(Code::CallEnded)) } else { Ok(()) }
}

/// The requester must hold the participant's live leg on this very device.
fn holds_leg(call: &Call, idx: usize, sk: SessionKey) -> Result<(), Error> {
    match call.party(idx) {
        Some(p) if p.is_leg(sk) => Ok(()),
        Some(p) if p.state.is_connected() => {
            Err(err(Code::NotInCall, "the call is held by another device of this user"))
        }
        _ => Err(err(Code::NotInCall, "you are not connected in this call")),
    }
}

/// Sends `event` to the devices of every active participant but `except`.
fn notify_others(net: &mut Net, call: &Call, except: &[usize], event: Event) {
    notify(net, call, |j, p| p.state.is_active() && !except.contains(&j), event);
}

/// Sends `event` to the devices of the participants `to` selects; the last one gets the event
/// itself, the others clones.
fn notify(net: &mut Net, call: &Call, to: impl Fn(usize, &Party) -> bool, event: Event) {
    let mut pending: Option<SessionKey> = None;
    for (j, p) in call.parties.iter().enumerate() {
        if to(j, p) {
            for &sk in p.sessions() {
                if let Some(prev) = pending.replace(sk) {
                    net.send(prev, event.clone());
                }
            }
        }
    }
    if let Some(last) = pending {
        net.send(last, event);
    }
}

/// Tells the inviter of participant `idx` how far the invitation got (docs/protocol.md#delivery-states).
fn notify_inviter(net: &mut Net, call: &Call, idx: usize) {
    let Some(party) = call.party(idx) else { return };
    let inviter = party.inviter.as_ref().unwrap_or(&call.creator);
    let Some(inviter) = call.index_of(inviter).and_then(|j| call.party(j)) else { return };
    if !inviter.state.is_active() {
        return;
    }
    let event = Event::DeliveryChanged {
        call_id: call.id.clone(),
        user_id: party.user.clone(),
        delivery: party.delivery,
        devices: party.devices.clone(),
    };
    net.send_all(inviter.sessions(), event);
}

/// The CallEnded of the participant whose departure is processed, to each device that held the
/// call for it but the one whose own request (hangup, reject, cancel) caused it: that device
/// learns it from its response (and later gets the record and summary).
fn send_leaver_ended(
    net: &mut Net,
    call: &Call,
    leaver: &Leaver,
    snapshot: &Arc<crate::model::snapshot::CallInfo>,
) {
    let reason = call.party(leaver.idx).and_then(|p| p.reason).unwrap_or(EndReason::Hangup);
    for &sk in leaver.sessions.as_slice() {
        let reason = match leaver.acting {
            Some(acting) if acting == sk => continue,
            Some(_) => leaver.other_devices,
            None => reason,
        };
        net.send(sk, Event::CallEnded { call: snapshot.clone(), reason });
    }
}

/// The push for `party` of `call`, from `caller` (the inviter, or who hung up), with `push`'s
/// settings and the party's own extra data (the call's when the invitation had none).
fn push_request(
    call: &Call,
    party: &Party,
    kind: PushKind,
    caller: &UserId,
    push: Option<&PushConfig>,
) -> PushRequest {
    PushRequest {
        kind,
        app: call.app.clone(),
        callee: party.user.clone(),
        call_id: call.id.clone(),
        caller: caller.clone(),
        media_type: call.media_type,
        push_config: push.map(|p| Box::new(p.clone())),
        extra: party.extra.clone().unwrap_or_else(|| call.extra.clone()),
    }
}

/// Whether the operator removed `user` from `call` (and nobody invited them back since).
fn removed_by_operator(call: &Call, user: &UserId) -> bool {
    call.index_of(user).and_then(|i| call.party(i)).is_some_and(|p| p.removed)
}

fn push_allowed(enabled: bool, push: Option<&PushConfig>) -> bool {
    enabled && !push.is_some_and(|p| p.disable_push)
}

impl Switchboard {
    pub(super) fn request(&mut self, now: i64, ctx: &Ctx, rid: u64, request: Request) {
        let Some(request) = self.check_busy_first(ctx, rid, request) else { return };
        let result = match request {
            Request::StartCall(start) => self.start_call(now, ctx, rid, start),
            Request::Accept { call_id } => self.accept(now, ctx, rid, &call_id, false),
            Request::JoinCall { call_id } => self.accept(now, ctx, rid, &call_id, true),
            Request::Hangup { call_id, push } => self.hangup(now, ctx, rid, &call_id, push.as_deref()),
            Request::Ringing { call_id } => self.ringing(ctx, rid, &call_id),
            Request::Invite { call_id, users, push, extra } => {
                self.invite(now, ctx, rid, &call_id, users, push, extra)
            }
            Request::RequestChangeMediaType { call_id, media_type } => {
                self.request_change(now, ctx, rid, &call_id, media_type)
            }
            Request::CancelChangeMediaType { call_id, transaction_id } => {
                self.answer_change(ctx, rid, &call_id, &transaction_id, None)
            }
            Request::ReplyChangeMediaType { call_id, transaction_id, agree } => {
                self.answer_change(ctx, rid, &call_id, &transaction_id, Some(agree))
            }
            Request::SetMediaState { call_id, kind, disabled } => {
                self.set_media_state(ctx, rid, &call_id, kind, disabled)
            }
            Request::ReportFirstFrame { call_id } => self.first_frame(now, ctx, rid, &call_id),
            Request::MediaSignal { call_id, to_user, to_device, payload } => {
                self.media_signal(ctx, rid, &call_id, &to_user, &to_device, payload)
            }
            Request::GetCall { call_id } => self.get_call(ctx, rid, &call_id),
            Request::GetAvailableCalls => {
                let mut list = Vec::new();
                for id in self.net.user_calls(&ctx.app, &ctx.user) {
                    if let Some(call) = self.calls.get(&id)
                        && call.call_type == CallType::Multi
                        && !call.is_ended()
                        && !removed_by_operator(call, &ctx.user)
                    {
                        list.push(Arc::unwrap_or_clone(call.snapshot()));
                    }
                }
                self.net.respond(ctx.sk, rid, Ok(ResponseBody::Calls(list)));
                Ok(())
            }
            Request::GetCallRecords { sync_time, count, order } => {
                if count == 0 || count > crate::limits::MAX_RECORD_PAGE {
                    Err(err(Code::ParamError, "count must be 1-100"))
                } else {
                    self.query(ctx, rid, Query::Records { sync_time, count, order });
                    Ok(())
                }
            }
            Request::DeleteCallRecords { call_ids } => {
                if call_ids.is_empty() || call_ids.len() > crate::limits::MAX_DELETE_IDS {
                    Err(err(Code::ParamError, "give 1-100 call ids"))
                } else {
                    self.query(ctx, rid, Query::DeleteRecords { call_ids });
                    Ok(())
                }
            }
            Request::DeleteAllCallRecords => {
                self.query(ctx, rid, Query::DeleteAllRecords);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.net.respond(ctx.sk, rid, Err(e));
        }
    }

    fn query(&mut self, ctx: &Ctx, rid: u64, query: Query) {
        self.next_query += 1;
        let id = self.next_query;
        self.queries.insert(id, super::QueryFor::Request(ctx.sk, rid));
        self.net.outputs.push_back(Output::Query { id, app: ctx.app.clone(), user: ctx.user.clone(), query });
    }

    /// Whether `user` has a live leg (connected, or dialing) in another unended call, held by a
    /// live device session (docs/protocol.md#busy-and-liveness: a crashed app never makes its
    /// user look busy).
    /// On a node of several, a user marked in a call another node owns is busy too
    /// (`remote_busy`, read just before this request: `cluster::check_busy_first`).
    fn is_busy(&self, ctx: &Ctx, user: &UserId, except: Option<&CallId>) -> bool {
        if self.remote_busy.as_ref().is_some_and(|busy| busy.contains(user)) {
            return true;
        }
        let Some(entry) = self.net.user(&ctx.app, user) else { return false };
        entry.calls.iter().filter(|id| Some(*id) != except).any(|id| {
            self.calls.get(id).is_some_and(|call| {
                !call.is_ended()
                    && call.index_of(user).and_then(|i| call.party(i)).is_some_and(|p| {
                        p.state.is_connected() && p.bound.is_some_and(|sk| self.net.is_live(sk))
                    })
            })
        })
    }

    /// The live leg this device holds in an unended call other than `except`.
    fn device_leg(&self, ctx: &Ctx, except: Option<&CallId>) -> Option<(CallId, usize)> {
        let entry = self.net.user(&ctx.app, &ctx.user)?;
        entry.calls.iter().filter(|id| Some(*id) != except).find_map(|id| {
            let call = self.calls.get(id)?;
            if call.is_ended() {
                return None;
            }
            call.leg_of(ctx.sk).map(|idx| (id.clone(), idx))
        })
    }

    /// Rings participant `idx`: arms its ring timeout and offers the invitation to the user's
    /// live devices, or requests a push when there are none.
    fn ring(&mut self, now: i64, call: &mut Call, idx: usize, inviter: &UserId, push: Option<&PushConfig>) {
        let ring_ms = call.ring_timeout_ms;
        let live = match call.party(idx) {
            Some(p) => self.net.live_sessions(&call.app, &p.user),
            None => return,
        };
        let mut pushed = live.is_empty() && push_allowed(self.cfg.push_enabled, push);
        if self.clustered()
            && let Some(p) = call.party(idx)
        {
            // The user's devices on other nodes are looked up first; the push waits for the
            // answer and goes only if no device anywhere got the invitation.
            let push = pushed.then(|| (inviter.clone(), push.cloned()));
            pushed = false;
            let locating = super::cluster::Locating {
                app: call.app.clone(),
                user: p.user.clone(),
                call: call.id.clone(),
                idx,
                push,
            };
            self.locate(locating);
        }
        let Some(party) = call.parties.get_mut(idx) else { return };
        if ring_ms > 0 {
            let at = now.saturating_add(i64::from(ring_ms));
            party.ring_deadline = Some(at);
            self.timers.set(at, Timer::Ring(call.id.clone(), idx));
        }
        party.offered = live;
        if pushed && let Some(party) = call.party(idx) {
            let request = push_request(call, party, PushKind::Invite, inviter, push);
            self.net.outputs.push_back(Output::Push(request));
            call.mark_pushed(idx);
        }
    }

    fn start_call(&mut self, now: i64, ctx: &Ctx, rid: u64, start: StartCall) -> Result<(), Error> {
        let StartCall { callees, call_type, media_type, push, extra, ring_timeout_ms } = start;
        if callees.is_empty() {
            return Err(err(Code::UserListInvalid, "the callee list is empty"));
        }
        if callees.contains(&ctx.user) {
            return Err(err(Code::UserListInvalid, "a user cannot call themselves"));
        }
        if callees.iter().enumerate().any(|(i, c)| callees.iter().take(i).any(|d| d == c)) {
            return Err(err(Code::UserListInvalid, "a callee is listed twice"));
        }
        if call_type == CallType::Single && callees.len() != 1 {
            return Err(Error::from_code(Code::SingleCallNotSupportMultiPerson));
        }
        let limit = Call::limit(media_type, self.cfg.max_video_participants, self.cfg.max_audio_participants);
        if callees.len() + 1 > limit {
            return Err(err(Code::CallFull, "too many participants for this media type"));
        }
        if self.device_leg(ctx, None).is_some() {
            return Err(err(Code::SessionExist, "this device is already in a call"));
        }
        let id = self.new_call_id(now)?;
        let mut call = Call::new(
            NewCall {
                app: ctx.app.clone(),
                id: id.clone(),
                call_type,
                media_type,
                creator: ctx.user.clone(),
                creator_session: ctx.sk,
                creator_device: ctx.device.clone(),
                extra,
                ring_timeout_ms: ring_timeout_ms.unwrap_or(self.cfg.ring_timeout_ms),
                push,
                capacity: (callees.len() + 1).min(crate::limits::MAX_USER_LIST + 1),
            },
            now,
        );
        call.via_sfu = self.router.as_ref().is_some_and(|r| r.routes(call_type, callees.len() + 1));
        let auto_reject = self.cfg.busy_policy == BusyPolicy::AutoReject;
        let mut busy = Vec::new();
        let mut rejected = None;
        let push = call.push.take();
        let push_ref = push.as_deref();
        for callee in &callees {
            let Some(idx) = call.invite(callee, &ctx.user, None, now) else { continue };
            if self.is_busy(ctx, callee, None) {
                busy.push(callee.clone());
                if auto_reject {
                    call.end_party(idx, EndReason::Busy, now);
                    rejected.get_or_insert(idx);
                    continue;
                }
            }
            self.ring(now, &mut call, idx, &ctx.user, push_ref);
        }
        call.push = push;
        let snapshot = call.snapshot();
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Started { call: snapshot.clone(), busy }));
        send_route(self.router.as_ref(), &mut self.net, &call, ctx.sk, &ctx.user, &ctx.device);
        for party in call.parties.iter().skip(1) {
            if party.state.is_ringing() && !party.offered.is_empty() {
                let event = Event::IncomingCall {
                    call: snapshot.clone(),
                    inviter: ctx.user.clone(),
                    extra: call.extra.clone(),
                };
                self.net.send_all(&party.offered, event);
            }
        }
        for party in &call.parties {
            self.net.add_call(&ctx.app, &party.user, &id);
        }
        self.net.outputs.push_back(Output::SaveCall { app: ctx.app.clone(), call: snapshot });
        let should_end = call.should_end();
        self.calls.insert(id.clone(), Box::new(call));
        self.live += 1;
        if should_end {
            let leaver = rejected.map(|idx| Leaver {
                idx,
                sessions: Holders::Many(Vec::new()),
                acting: None,
                other_devices: EndReason::Busy,
            });
            self.finish_call(now, &id, remote_view(EndReason::Busy), leaver);
        }
        Ok(())
    }

    /// Accept (`join == false`) or JoinCall (`join == true`).
    fn accept(&mut self, now: i64, ctx: &Ctx, rid: u64, id: &CallId, join: bool) -> Result<(), Error> {
        let limit_video = self.cfg.max_video_participants;
        let limit_audio = self.cfg.max_audio_participants;
        {
            let (call, idx) = find(&mut self.calls, ctx, id)?;
            not_ended(call)?;
            if join && call.call_type == CallType::Single {
                return Err(err(Code::SingleCallNotSupportMultiPerson, "only MULTI calls can be joined"));
            }
            let Some(party) = call.party(idx) else { return Err(Error::from_code(Code::Internal)) };
            // The creator's own leg (never invited: no inviter) has nothing to answer; only a
            // creator who left a group call and was invited back is rung again.
            if !join && party.inviter.is_none() && party.state.is_connected() {
                return Err(err(
                    Code::InvalidState,
                    "this is your own outgoing call: only a callee can accept it",
                ));
            }
            if party.state.is_connected() {
                if party.bound == Some(ctx.sk) {
                    let snapshot = call.snapshot();
                    self.net.respond(ctx.sk, rid, Ok(ResponseBody::Call(snapshot)));
                    return Ok(());
                }
                return Err(err(Code::InvalidState, "the call was answered on another device"));
            }
            if !party.state.is_ringing() {
                if !join {
                    return Err(err(Code::NotInCall, "you are no longer invited to this call"));
                }
                // Removed by the operator: back only if someone invites them again.
                if party.removed {
                    return Err(err(Code::NotInCall, "the operator removed you from this call"));
                }
                if call.active() + 1 > Call::limit(call.media_type, limit_video, limit_audio) {
                    return Err(err(Code::CallFull, "the call is full"));
                }
            }
        }
        // No hold: this device's other call ends first.
        if let Some((other, idx)) = self.device_leg(ctx, Some(id)) {
            let reason = EndReason::AcceptedAnotherCall;
            self.leave(now, &other, idx, reason, None, reason);
        }
        self.connect_party(now, ctx, rid, id)
    }

    /// The requester's participant answers (or rejoins) on this device.
    fn connect_party(&mut self, now: i64, ctx: &Ctx, rid: u64, id: &CallId) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        let Some(Answered { stop_ringing, creator_connected: creator_on, started, version }) =
            call.answer(idx, ctx.sk, &ctx.device, now)
        else {
            return Err(Error::from_code(Code::Internal));
        };
        // A mesh that grows past the mesh size moves to the SFU (the others are told here,
        // this device with its route below).
        self.reroute_if_outgrown(id, Some(ctx.sk));
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        let snapshot = call.snapshot();
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Call(snapshot.clone())));
        send_route(self.router.as_ref(), &mut self.net, call, ctx.sk, &ctx.user, &ctx.device);
        if !stop_ringing.is_empty() {
            let event = Event::CallEnded { call: snapshot.clone(), reason: EndReason::AcceptedOnOtherDevice };
            self.net.send_all(&stop_ringing, event);
        }
        let changed = |user: &UserId, device: Option<DeviceId>| Event::ParticipantChanged {
            call_id: id.clone(),
            user_id: user.clone(),
            state: ParticipantState::OnCall,
            reason: None,
            version,
            device_id: device,
        };
        // The creator hears of its own ON_CALL too (its session must not keep saying
        // CONNECTING), and before the callee's: the callee's change is what connects the call
        // on the creator's side, and the session it then reports must already be right.
        if creator_on {
            let device = call.party(0).and_then(|p| p.device.clone());
            notify_others(&mut self.net, call, &[idx], changed(&call.creator, device));
        }
        notify_others(&mut self.net, call, &[idx], changed(&ctx.user, Some(ctx.device.clone())));
        if started {
            let event = Event::CallStarted {
                call_id: id.clone(),
                call_type: call.call_type,
                started_at_ms: now,
                version,
            };
            notify(&mut self.net, call, |_, p| p.state.is_connected(), event);
        } else if let Some(started_at_ms) = call.started_at_ms {
            // A late joiner (a third participant, a later invitee, a rejoin) starts its call
            // timer from the call's start, as the others did.
            let event =
                Event::CallStarted { call_id: id.clone(), call_type: call.call_type, started_at_ms, version };
            self.net.send(ctx.sk, event);
        }
        if let Some(at_ms) = call.first_frame_at_ms {
            self.net.send(ctx.sk, Event::FirstFrame { call_id: id.clone(), at_ms });
        }
        self.net.outputs.push_back(Output::SaveCall { app: ctx.app.clone(), call: snapshot });
        Ok(())
    }

    fn hangup(
        &mut self,
        now: i64,
        ctx: &Ctx,
        rid: u64,
        id: &CallId,
        push: Option<&PushConfig>,
    ) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        let Some(party) = call.party(idx) else { return Err(Error::from_code(Code::Internal)) };
        if !party.state.is_active() {
            return Err(err(Code::NotInCall, "you already left this call"));
        }
        if party.state.is_connected() {
            holds_leg(call, idx, ctx.sk)?;
        }
        let reason = call.hangup_reason(idx);
        let other_devices =
            if reason == EndReason::Reject { EndReason::RejectedOnOtherDevice } else { reason };
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
        self.leave(now, id, idx, reason, Some(ctx.sk), other_devices);
        self.push_cancels(id, &ctx.user, push);
        Ok(())
    }

    /// After a hangup that ended the call and carried push settings: each callee who was
    /// pushed the invitation and was still being rung gets a cancel push with those settings,
    /// so the notification on their phone can be withdrawn. A hangup without push settings
    /// pushes nothing (a webhook written before cancel pushes existed sees no new kind).
    fn push_cancels(&mut self, id: &CallId, by: &UserId, push: Option<&PushConfig>) {
        if push.is_none() || !push_allowed(self.cfg.push_enabled, push) {
            return;
        }
        let Some(call) = self.calls.get(id).filter(|c| c.is_ended()) else { return };
        let cancelled = call.parties.iter().filter(|p| p.pushed && p.reason == Some(EndReason::RemoteCancel));
        for party in cancelled {
            let request = push_request(call, party, PushKind::Cancel, by, push);
            self.net.outputs.push_back(Output::Push(request));
        }
    }

    fn ringing(&mut self, ctx: &Ctx, rid: u64, id: &CallId) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        let Some(Rang { state_changed, delivery_changed, version }) = call.ring_on(idx, ctx.sk, &ctx.device)
        else {
            return Err(err(Code::InvalidState, "the call is not ringing for you"));
        };
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
        if state_changed {
            let event = Event::ParticipantChanged {
                call_id: id.clone(),
                user_id: ctx.user.clone(),
                state: ParticipantState::Ringing,
                reason: None,
                version,
                device_id: None,
            };
            notify_others(&mut self.net, call, &[idx], event);
        }
        if delivery_changed {
            notify_inviter(&mut self.net, call, idx);
        }
        Ok(())
    }

    /// Tells the participants who left a group call, or refused it, whom it invited
    /// (`remote_user_invited`), as the vendors' SDKs do: they may join again, and learn who is
    /// now in it. Only those whose devices knew of the call (they were on it, a device received
    /// the invitation, or they refused it): not a user turned away as busy or never reached,
    /// whose app never had the call's id. Not those the operator removed (they may not come
    /// back by themselves).
    fn tell_those_who_left(&mut self, call: &Call, just_ended: &[usize], event: &Event) {
        for (j, p) in call.parties.iter().enumerate() {
            let knew_of_it = p.connected_at_ms.is_some()
                || p.delivery >= Delivery::Delivered
                || p.reason == Some(EndReason::Reject);
            if p.state != ParticipantState::Ended || just_ended.contains(&j) || p.removed || !knew_of_it {
                continue;
            }
            for sk in self.net.live_sessions(&call.app, &p.user) {
                self.net.send(sk, event.clone());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invite(
        &mut self,
        now: i64,
        ctx: &Ctx,
        rid: u64,
        id: &CallId,
        users: Vec<UserId>,
        push: Option<Box<PushConfig>>,
        extra: String,
    ) -> Result<(), Error> {
        // Checks first (busy needs the other calls, so no mutable borrow yet).
        let (targets, busy) = {
            let call = self
                .calls
                .get(id)
                .filter(|c| c.app == ctx.app && c.index_of(&ctx.user).is_some())
                .ok_or(Code::CallNotFound)?;
            let idx = call.index_of(&ctx.user).ok_or(Code::CallNotFound)?;
            not_ended(call)?;
            holds_leg(call, idx, ctx.sk)?;
            if users.is_empty() {
                return Err(err(Code::UserListInvalid, "the invitee list is empty"));
            }
            let mut targets: Vec<UserId> = Vec::with_capacity(users.len());
            for u in users {
                let active =
                    call.index_of(&u).and_then(|j| call.party(j)).is_some_and(|p| p.state.is_active());
                if u != ctx.user && !active && !targets.contains(&u) {
                    targets.push(u);
                }
            }
            let limit = Call::limit(
                call.media_type,
                self.cfg.max_video_participants,
                self.cfg.max_audio_participants,
            );
            if call.active() + targets.len() > limit {
                return Err(err(Code::CallFull, "the call would have too many participants"));
            }
            let busy: Vec<UserId> =
                targets.iter().filter(|u| self.is_busy(ctx, u, Some(id))).cloned().collect();
            (targets, busy)
        };
        let Some(mut call) = self.calls.remove(id) else { return Err(Error::from_code(Code::Internal)) };
        let mut type_changed = false;
        let mut cancelled = None;
        if call.call_type == CallType::Single && !targets.is_empty() {
            call.call_type = CallType::Multi;
            call.bump();
            type_changed = true;
            cancelled = call.change.take();
        }
        let auto_reject = self.cfg.busy_policy == BusyPolicy::AutoReject;
        let mut invited = Vec::new();
        let mut rejected = Vec::new();
        for u in &targets {
            let Some(j) = call.invite(u, &ctx.user, Some(extra.clone()), now) else { continue };
            if auto_reject && busy.contains(u) {
                call.end_party(j, EndReason::Busy, now);
                rejected.push(j);
                continue;
            }
            self.ring(now, &mut call, j, &ctx.user, push.as_deref());
            invited.push(j);
            self.net.add_call(&ctx.app, u, id);
        }
        let version = call.bump();
        let snapshot = call.snapshot();
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Busy(busy)));
        if let Some(change) = cancelled {
            self.finish_change(&call, change, ChangeMediaTypeResult::Cancelled);
        }
        if type_changed {
            let event = Event::CallTypeChanged { call_id: id.clone(), call_type: CallType::Multi, version };
            notify_others(&mut self.net, &call, &invited, event);
            // The media route is decided again for the group it becomes; the devices already in
            // the call are told (through the SFU, they move their media there).
            call.via_sfu = self.router.as_ref().is_some_and(|r| r.routes(CallType::Multi, call.active()));
            for p in call.parties.iter().filter(|p| p.state.is_connected()) {
                if let (Some(sk), Some(device)) = (p.bound, &p.device) {
                    send_route(self.router.as_ref(), &mut self.net, &call, sk, &p.user, device);
                }
            }
        }
        if !invited.is_empty() {
            let invitees = invited.iter().filter_map(|&j| call.party(j)).map(|p| p.user.clone()).collect();
            let event =
                Event::UsersInvited { call_id: id.clone(), inviter: ctx.user.clone(), invitees, version };
            self.tell_those_who_left(&call, &rejected, &event);
            notify_others(&mut self.net, &call, &invited, event);
        }
        for &j in &rejected {
            if let Some(p) = call.party(j) {
                let event = Event::ParticipantChanged {
                    call_id: id.clone(),
                    user_id: p.user.clone(),
                    state: ParticipantState::Ended,
                    reason: Some(EndReason::Busy),
                    version,
                    device_id: None,
                };
                notify_others(&mut self.net, &call, &invited, event);
            }
        }
        for &j in &invited {
            if let Some(p) = call.party(j)
                && !p.offered.is_empty()
            {
                let event = Event::IncomingCall {
                    call: snapshot.clone(),
                    inviter: ctx.user.clone(),
                    extra: extra.clone(),
                };
                self.net.send_all(&p.offered, event);
            }
        }
        for &j in &rejected {
            if let Some(p) = call.party(j) {
                self.net.add_call(&ctx.app, &p.user, id);
            }
        }
        self.net.outputs.push_back(Output::SaveCall { app: ctx.app.clone(), call: snapshot });
        self.calls.insert(id.clone(), call);
        // A group call kept as a mesh that the invitees make larger than the mesh size moves
        // to the SFU now, before they answer.
        self.reroute_if_outgrown(id, None);
        Ok(())
    }

    fn request_change(
        &mut self,
        now: i64,
        ctx: &Ctx,
        rid: u64,
        id: &CallId,
        media_type: MediaType,
    ) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        if call.call_type != CallType::Single {
            return Err(err(Code::InvalidState, "the media type can change only in SINGLE calls"));
        }
        holds_leg(call, idx, ctx.sk)?;
        let peer = call.peer_of(idx).ok_or(Code::Internal)?;
        if !call.party(peer).is_some_and(|p| p.state.is_connected()) {
            return Err(err(Code::InvalidState, "the call is not connected yet"));
        }
        if media_type == call.media_type {
            return Err(err(Code::MediaTypeInvalid, "the call already has this media type"));
        }
        if call.change.as_ref().is_some_and(|c| c.requester == idx) {
            return Err(err(Code::InvalidState, "your change of media type is still pending"));
        }
        self.next_tx += 1;
        let seq = self.next_tx;
        let tx = TransactionId::new(&format!("t{seq}")).map_err(|_| Error::from_code(Code::Internal))?;
        let change = MediaChange { tx: tx.clone(), seq, requester: idx, media_type };
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Transaction(tx)));
        if media_type == MediaType::Audio {
            // A downgrade needs no agreement (no upgrade can be pending: the call is on video).
            call.media_type = media_type;
            call.bump();
            Self::finish_change_on(&mut self.net, call, change, ChangeMediaTypeResult::Accepted);
            self.net.outputs.push_back(Output::SaveCall { app: call.app.clone(), call: call.snapshot() });
        } else if let Some(pending) = call.change.take() {
            // Both sides asked at once: neither request takes effect.
            Self::finish_change_on(&mut self.net, call, pending, ChangeMediaTypeResult::Conflict);
            Self::finish_change_on(&mut self.net, call, change, ChangeMediaTypeResult::Conflict);
        } else {
            let event = Event::ChangeMediaTypeRequested {
                call_id: id.clone(),
                user_id: ctx.user.clone(),
                transaction_id: change.tx.clone(),
                media_type,
            };
            if let Some(p) = call.party(peer) {
                self.net.send_all(p.sessions(), event);
            }
            let timeout = self.cfg.change_media_type_timeout_ms;
            if timeout > 0 {
                self.timers.set(now.saturating_add(i64::from(timeout)), Timer::Change(id.clone(), seq));
            }
            call.change = Some(change);
        }
        Ok(())
    }

    /// Cancel (`agree == None`, by the requester) or reply (by the peer).
    fn answer_change(
        &mut self,
        ctx: &Ctx,
        rid: u64,
        id: &CallId,
        tx: &TransactionId,
        agree: Option<bool>,
    ) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        holds_leg(call, idx, ctx.sk)?;
        let valid = call.change.as_ref().is_some_and(|c| {
            &c.tx == tx && if agree.is_none() { c.requester == idx } else { c.requester != idx }
        });
        if !valid {
            return Err(err(Code::TransactionIdInvalid, "no such pending transaction for you"));
        }
        let Some(change) = call.change.take() else { return Err(Error::from_code(Code::Internal)) };
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
        let result = match agree {
            None => ChangeMediaTypeResult::Cancelled,
            Some(false) => ChangeMediaTypeResult::Rejected,
            Some(true) => {
                call.media_type = change.media_type;
                call.bump();
                self.net.outputs.push_back(Output::SaveCall { app: call.app.clone(), call: call.snapshot() });
                ChangeMediaTypeResult::Accepted
            }
        };
        let call = &*call;
        Self::finish_change_on(&mut self.net, call, change, result);
        Ok(())
    }

    fn finish_change(&mut self, call: &Call, change: MediaChange, result: ChangeMediaTypeResult) {
        Self::finish_change_on(&mut self.net, call, change, result);
    }

    /// ChangeMediaTypeFinished to both sides.
    fn finish_change_on(net: &mut Net, call: &Call, change: MediaChange, result: ChangeMediaTypeResult) {
        let Some(requester) = call.party(change.requester) else { return };
        let event = Event::ChangeMediaTypeFinished {
            call_id: call.id.clone(),
            user_id: requester.user.clone(),
            transaction_id: change.tx,
            media_type: call.media_type,
            result,
            version: call.version,
        };
        notify_others(net, call, &[], event);
    }

    pub(super) fn change_timer(&mut self, _now: i64, id: &CallId, seq: u64) {
        let Some(call) = self.calls.get_mut(id) else { return };
        if call.is_ended() || call.change.as_ref().is_none_or(|c| c.seq != seq) {
            return;
        }
        if let Some(change) = call.change.take() {
            Self::finish_change_on(&mut self.net, call, change, ChangeMediaTypeResult::Timeout);
        }
    }

    fn set_media_state(
        &mut self,
        ctx: &Ctx,
        rid: u64,
        id: &CallId,
        kind: MediaKind,
        disabled: bool,
    ) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        holds_leg(call, idx, ctx.sk)?;
        if kind == MediaKind::Video && !disabled && call.media_type == MediaType::Audio {
            return Err(Error::from_code(Code::NotVideoCall));
        }
        let Some(party) = call.party_mut(idx) else { return Err(Error::from_code(Code::Internal)) };
        let slot = match kind {
            MediaKind::Video => &mut party.camera_disabled,
            MediaKind::Audio => &mut party.microphone_disabled,
        };
        let changed = *slot != disabled;
        *slot = disabled;
        if changed {
            call.bump();
        }
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
        if changed {
            let event =
                Event::MediaStateChanged { call_id: id.clone(), user_id: ctx.user.clone(), kind, disabled };
            notify_others(&mut self.net, call, &[idx], event);
            self.sfu_pause(id, &ctx.user, kind, disabled);
        }
        Ok(())
    }

    fn first_frame(&mut self, now: i64, ctx: &Ctx, rid: u64, id: &CallId) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        holds_leg(call, idx, ctx.sk)?;
        let first = call.first_frame_at_ms.is_none();
        if first {
            call.first_frame_at_ms = Some(now);
            call.bump();
        }
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
        if first {
            // Those still ringing hear of it when they answer (`connect_party`).
            let event = Event::FirstFrame { call_id: id.clone(), at_ms: now };
            notify(&mut self.net, call, |_, p| p.state.is_connected(), event);
        }
        Ok(())
    }

    fn media_signal(
        &mut self,
        ctx: &Ctx,
        rid: u64,
        id: &CallId,
        to_user: &UserId,
        to_device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), Error> {
        let (call, idx) = find(&mut self.calls, ctx, id)?;
        not_ended(call)?;
        holds_leg(call, idx, ctx.sk)?;
        if self.router.as_ref().is_some_and(|r| r.is_sfu(call, to_user, to_device)) {
            self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
            self.net.outputs.push_back(Output::SfuSignal {
                call_id: id.clone(),
                from_user: ctx.user.clone(),
                from_device: ctx.device.clone(),
                payload,
            });
            return Ok(());
        }
        if to_user == &ctx.user {
            return Err(err(Code::ParamError, "media signals go to another participant"));
        }
        let target = call
            .index_of(to_user)
            .and_then(|j| call.party(j))
            .filter(|p| p.state.is_connected())
            .and_then(|p| p.bound)
            .filter(|sk| self.net.sessions.get(sk).is_some_and(|s| &s.device == to_device))
            .ok_or_else(|| err(Code::NotInCall, "the target device is not connected in this call"))?;
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Empty));
        let event = Event::MediaSignal {
            call_id: id.clone(),
            from_user: ctx.user.clone(),
            from_device: ctx.device.clone(),
            payload,
        };
        self.net.send(target, event);
        Ok(())
    }

    /// A call the switchboard holds is answered from memory. One it does not hold (ended and
    /// past its retention, or never made here) is looked up in the requester's records: every
    /// participant's record of an ended call holds the call as it ended, so memory holds ended
    /// calls only briefly (`ended_call_retention_ms`) while a device woken by a late push can
    /// still learn that its call ended. A stranger to a held call is told it is not found, as
    /// a stranger has no record to find.
    fn get_call(&mut self, ctx: &Ctx, rid: u64, id: &CallId) -> Result<(), Error> {
        if !self.calls.contains_key(id) {
            self.query(ctx, rid, Query::EndedCall { call_id: id.clone() });
            return Ok(());
        }
        let (call, _) = find(&mut self.calls, ctx, id)?;
        let snapshot = call.snapshot();
        self.net.respond(ctx.sk, rid, Ok(ResponseBody::Call(snapshot)));
        Ok(())
    }

    /// A node of several found no device of participant `idx` anywhere while it is still rung
    /// and offered to no device: the push deferred by `ring` goes now.
    pub(super) fn push_unreached(
        &mut self,
        id: &CallId,
        idx: usize,
        inviter: &UserId,
        push: Option<&PushConfig>,
    ) {
        let Some(call) = self.calls.get_mut(id) else { return };
        let Some(party) = call.party(idx) else { return };
        if call.is_ended() || !party.state.is_ringing() || !party.offered.is_empty() || party.pushed {
            return;
        }
        let request = push_request(call, party, PushKind::Invite, inviter, push);
        self.net.outputs.push_back(Output::Push(request));
        call.mark_pushed(idx);
        notify_inviter(&mut self.net, call, idx);
    }

    /// An invitation (or ack of one) reached a device: record it and tell the inviter.
    pub(super) fn mark_delivery(
        &mut self,
        id: &CallId,
        user: &UserId,
        device: &DeviceId,
        delivery: Delivery,
    ) {
        let Some(call) = self.calls.get_mut(id) else { return };
        if call.is_ended() {
            return;
        }
        let Some(idx) = call.index_of(user) else { return };
        if !call.party(idx).is_some_and(|p| p.state.is_ringing()) {
            return;
        }
        if call.mark_device(idx, device, delivery) {
            notify_inviter(&mut self.net, call, idx);
        }
    }

    pub(super) fn ring_timer(&mut self, now: i64, id: &CallId, idx: usize, at: i64) {
        let Some(call) = self.calls.get(id) else { return };
        let Some(party) = call.party(idx) else { return };
        if call.is_ended() || !party.state.is_ringing() || party.ring_deadline != Some(at) {
            return;
        }
        // docs/protocol.md#delivery-states: a callee no device of whom was reached (and who was
        // not pushed) is unreachable, which is not the same as not answering.
        let reason =
            if party.delivery == Delivery::Unreachable { EndReason::Offline } else { EndReason::NoResponse };
        self.leave(now, id, idx, reason, None, reason);
    }

    /// Participant `idx` leaves now with `reason` (its own point of view). The call ends when
    /// the rest cannot carry it on; otherwise (MULTI) the others are told.
    pub(super) fn leave(
        &mut self,
        now: i64,
        id: &CallId,
        idx: usize,
        reason: EndReason,
        acting: Option<SessionKey>,
        other_devices: EndReason,
    ) {
        self.leave_at(now, now, id, idx, reason, acting, other_devices);
    }

    /// [`leave`](Self::leave), with the departure (and the call's end, if it ends) placed at
    /// `at` rather than `now`: a device lost to the network leaves at its last sign of life,
    /// so the time it took to notice is not counted as talk time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn leave_at(
        &mut self,
        now: i64,
        at: i64,
        id: &CallId,
        idx: usize,
        reason: EndReason,
        acting: Option<SessionKey>,
        other_devices: EndReason,
    ) {
        let Some(call) = self.calls.get_mut(id) else { return };
        if call.is_ended() {
            return;
        }
        let sfu_leaver = call
            .party(idx)
            .filter(|p| call.via_sfu && p.state.is_connected())
            .map(|p| (p.user.clone(), p.device.clone()));
        let Some(sessions) = call.end_party(idx, reason, at.min(now)) else { return };
        let leaver = Leaver { idx, sessions, acting, other_devices };
        if let Some((user, device)) = sfu_leaver {
            self.sfu_leave(id, user, device);
        }
        let Some(call) = self.calls.get_mut(id) else { return };
        if call.should_end() {
            self.finish_call_at(now, at, id, remote_view(reason), Some(leaver));
            return;
        }
        let snapshot = call.snapshot();
        send_leaver_ended(&mut self.net, call, &leaver, &snapshot);
        if let Some(p) = call.party(idx) {
            let event = Event::ParticipantChanged {
                call_id: id.clone(),
                user_id: p.user.clone(),
                state: ParticipantState::Ended,
                reason: Some(reason),
                version: call.version,
                device_id: None,
            };
            notify_others(&mut self.net, call, &[idx], event);
        }
        self.net.outputs.push_back(Output::SaveCall { app: call.app.clone(), call: snapshot });
    }

    /// Ends the call now: every participant still active ends with `others` (the leaver, if
    /// any, already ended), then CallEnded to every device that held it, one record per
    /// participant, summaries for SINGLE calls, ForgetCall.
    pub(super) fn finish_call(&mut self, now: i64, id: &CallId, others: EndReason, leaver: Option<Leaver>) {
        self.finish_call_at(now, now, id, others, leaver);
    }

    /// [`finish_call`](Self::finish_call) with the end placed at `at` (no later than `now`,
    /// no earlier than anything the call already recorded): the last moment the call was known
    /// to be alive. Records are still numbered (`sync_time`) and retained from `now`.
    pub(super) fn finish_call_at(
        &mut self,
        now: i64,
        at: i64,
        id: &CallId,
        others: EndReason,
        leaver: Option<Leaver>,
    ) {
        // A call ended from its saved snapshot on a node of several has no sessions bound
        // here: its participants' devices are told wherever they are.
        let route_ends = self.ending_saved && self.clustered();
        let Some(call) = self.calls.get_mut(id) else { return };
        if call.is_ended() {
            return;
        }
        let at = at.min(now).max(call.last_event_ms());
        if call.via_sfu {
            self.net.outputs.push_back(Output::SfuEndCall { call_id: id.clone() });
        }
        let ended = call.finish(others, at);
        let snapshot = call.snapshot();
        if let Some(leaver) = &leaver {
            send_leaver_ended(&mut self.net, call, leaver, &snapshot);
        }
        let mut to_route = Vec::new();
        let fenced = self.fenced;
        for (j, sessions) in ended {
            if let Some(p) = call.party(j)
                && let Some(reason) = p.reason
            {
                let event = Event::CallEnded { call: snapshot.clone(), reason };
                if route_ends {
                    to_route.push((p.user.clone(), event));
                } else if fenced {
                    // The successor told every device it could reach; the ones left are this
                    // node's own, which it took for lost.
                    let own: Vec<SessionKey> = sessions
                        .as_slice()
                        .iter()
                        .copied()
                        .filter(|sk| self.net.sessions.get(sk).is_some_and(|s| s.remote.is_none()))
                        .collect();
                    self.net.send_all(&own, event);
                } else {
                    self.net.send_all(sessions.as_slice(), event);
                }
            }
        }
        let app = call.app.clone();
        for (user, event) in to_route {
            self.route_call_ended(&app, &user, event);
        }
        let Some(call) = self.calls.get_mut(id) else { return };
        let single = call.call_type == CallType::Single;
        // Fenced: the records and summaries are the successor's to write.
        let n = if fenced { 0 } else { call.parties.len() };
        for j in 0..n {
            self.last_sync_time = now.max(self.last_sync_time.saturating_add(1));
            let sync_time = self.last_sync_time;
            let Some(record) = call.record(j, sync_time, Arc::clone(&snapshot)) else { continue };
            let owner = record.owner.clone();
            self.net.outputs.push_back(Output::StoreRecord { app: app.clone(), record: record.clone() });
            let devices = self.net.user_devices(&app, &owner, Some(id));
            self.net.deliver(&devices, &app, &owner, Event::CallRecord(record));
            if single && let Some(summary) = call.summary(j) {
                self.net.deliver(&devices, &app, &owner, Event::Summary(summary));
            }
        }
        self.net.outputs.push_back(Output::ForgetCall { app, call_id: id.clone() });
        self.live = self.live.saturating_sub(1);
        let retention = now.saturating_add(i64::from(self.cfg.ended_call_retention_ms));
        self.timers.set(retention, Timer::Retention(id.clone()));
    }
}
