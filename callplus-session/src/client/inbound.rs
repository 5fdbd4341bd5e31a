//! What the server's responses and events do to this device's calls.

use std::sync::Arc;

use crate::error::{Code, Error};
use crate::model::ids::{CallId, UserId};
use crate::model::kinds::EndReason;
use crate::model::message::{Event, Request, Response, ResponseBody, ServerBody};
use crate::model::snapshot::CallInfo;

use super::engine::{ClientEngine, MAX_ABANDONED_STARTS, MAX_EARLY_EVENTS, MAX_LIVE_CALLS};
use super::event::{ClientEvent, DriverEvent, RequestId};
use super::requests::{Op, Pending};
use super::session::{LiveCall, Role};

impl ClientEngine {
    // ----------------------------------------------------------------------------------------
    // Inbound: responses

    pub(super) fn process_body(&mut self, now_ms: i64, body: ServerBody) {
        match body {
            ServerBody::Response(response) => self.on_response(now_ms, response),
            ServerBody::Event(event) => self.on_event(now_ms, event),
            ServerBody::Welcome(_) | ServerBody::Pong { .. } => {}
        }
    }

    pub(super) fn on_response(&mut self, now_ms: i64, response: Response) {
        let Response { request_id, result } = response;
        let Some(pending) = self.requests.remove(request_id) else {
            self.on_late_response(now_ms, request_id, &result);
            return;
        };
        if !pending.internal {
            self.driver_events
                .push_back(DriverEvent::RequestCompleted { request_id, result: result.clone() });
        }
        let me = self.user_id.clone();
        match (pending.op, result) {
            (Op::StartCall, Ok(ResponseBody::Started { call, .. })) => {
                let fresh = !self.calls.contains_key(&call.call_id) && !self.ended.contains(&call.call_id);
                match (fresh, me) {
                    (true, Some(me)) => {
                        self.open_call(now_ms, &call, &me, Role::Caller, None);
                        self.flush_early(now_ms, Some(&call.call_id));
                    }
                    _ => self.flush_early(now_ms, None),
                }
            }
            (Op::StartCall, _) => self.flush_early(now_ms, None),
            (Op::Accept(id), Ok(body)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                    if call.role == Role::Invited {
                        call.role = Role::Answered;
                    }
                    call.recompute(&mut self.events);
                    self.current = Some(id.clone());
                    match body {
                        ResponseBody::Call(info) if info.call_id == id => self.refresh(now_ms, &id, &info),
                        _ => {}
                    }
                }
                self.flush_early(now_ms, None);
            }
            (Op::Accept(id), Err(e)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                }
                if matches!(e.code, Code::CallNotFound | Code::CallEnded) {
                    self.end_call(now_ms, &id, EndReason::EndedByServer, None);
                }
                self.flush_early(now_ms, None);
            }
            (Op::Join(id), Ok(ResponseBody::Call(info))) => {
                if info.call_id == id && self.current.as_ref().is_none_or(|c| c == &id) {
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.accepting = false;
                        call.role = Role::Answered;
                        self.current = Some(id.clone());
                        self.refresh(now_ms, &id, &info);
                    } else if let Some(me) = me {
                        self.ended.remove(&id);
                        self.open_call(now_ms, &info, &me, Role::Answered, None);
                        self.flush_early(now_ms, Some(&id));
                    }
                }
                self.flush_early(now_ms, None);
            }
            (Op::Join(id), _) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                }
                self.flush_early(now_ms, None);
            }
            (Op::Hangup(id), result) => {
                let gone = match &result {
                    Ok(_) => true,
                    Err(e) => matches!(
                        e.code,
                        Code::NotInCall
                            | Code::CallNotFound
                            | Code::CallEnded
                            | Code::CallIdInvalid
                            | Code::Forbidden
                    ),
                };
                if gone {
                    self.end_locally(now_ms, &id);
                }
            }
            (Op::RequestChangeMediaType(id), result) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.requesting_change = false;
                    if let Ok(ResponseBody::Transaction(tx)) = result {
                        call.own_transaction_opened(tx);
                    }
                }
            }
            (Op::Transaction(id, tx), Err(e)) if e.code == Code::TransactionIdInvalid => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.forget_transaction(&tx);
                }
            }
            (Op::SetMediaState(id, kind, disabled), Ok(_)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.set_local_media(kind, disabled);
                }
            }
            (Op::GetCall(id), Ok(ResponseBody::Call(info))) if info.call_id == id => {
                self.refresh(now_ms, &id, &info);
            }
            _ => {}
        }
    }

    /// A response to a request that already timed out: a call started too late is hung up so
    /// it does not ring on unanswered.
    pub(super) fn on_late_response(
        &mut self,
        now_ms: i64,
        request_id: RequestId,
        result: &Result<ResponseBody, Error>,
    ) {
        let Some(pos) = self.abandoned_starts.iter().position(|id| *id == request_id) else { return };
        self.abandoned_starts.remove(pos);
        match result {
            Ok(ResponseBody::Started { call, .. })
                if !call.is_ended() && !self.calls.contains_key(&call.call_id) =>
            {
                let request = Request::Hangup { call_id: call.call_id.clone(), push: None };
                self.send_request(now_ms, Op::Hangup(call.call_id.clone()), request, true);
            }
            _ => {}
        }
    }

    pub(super) fn on_request_timeout(&mut self, now_ms: i64, request_id: RequestId, pending: Pending) {
        if !pending.internal {
            self.driver_events.push_back(DriverEvent::RequestCompleted {
                request_id,
                result: Err(Error::new(Code::Timeout, "no answer from the server in time")),
            });
        }
        match pending.op {
            Op::StartCall => {
                if self.abandoned_starts.len() >= MAX_ABANDONED_STARTS {
                    self.abandoned_starts.pop_front();
                }
                self.abandoned_starts.push_back(request_id);
                self.flush_early(now_ms, None);
            }
            Op::Accept(id) | Op::Join(id) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                }
                self.flush_early(now_ms, None);
            }
            // The hangup stays queued and reaches the server after a resume; here the call is
            // over now.
            Op::Hangup(id) => self.end_locally(now_ms, &id),
            Op::RequestChangeMediaType(id) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.requesting_change = false;
                }
            }
            Op::Transaction(..) | Op::SetMediaState(..) | Op::GetCall(_) | Op::Plain => {}
        }
    }

    /// Ends a call this device hung up, with the reason the server would give.
    pub(super) fn end_locally(&mut self, now_ms: i64, id: &CallId) {
        if let Some(call) = self.calls.get(id) {
            let reason = call.local_hangup_reason();
            self.end_call(now_ms, id, reason, None);
        }
    }

    /// Creates a live call from a snapshot (or ends it at once when the snapshot says it is
    /// over), then processes events that arrived before it was known.
    pub(super) fn open_call(
        &mut self,
        now_ms: i64,
        info: &CallInfo,
        me: &UserId,
        role: Role,
        inviter: Option<UserId>,
    ) {
        let mut call = LiveCall::new(info, me, role, inviter);
        let id = info.call_id.clone();
        let ends = LiveCall::snapshot_ends_me(info, me);
        if role != Role::Invited {
            self.current = Some(id.clone());
        }
        call.recompute(&mut self.events);
        self.calls.insert(id.clone(), call);
        if let Some(reason) = ends {
            self.end_call(now_ms, &id, reason, Some(info));
        }
    }

    /// Applies a newer snapshot to a live call; ends it when the snapshot says it is over.
    pub(super) fn refresh(&mut self, now_ms: i64, id: &CallId, info: &CallInfo) {
        let Some(me) = self.user_id.clone() else { return };
        let Some(call) = self.calls.get_mut(id) else { return };
        if let Some(reason) = LiveCall::snapshot_ends_me(info, &me) {
            self.end_call(now_ms, id, reason, Some(info));
        } else {
            call.apply_snapshot(info, true, &mut self.events);
        }
    }

    /// Re-runs events held while a call-making request was in flight: those about the call the
    /// answer just `opened` are processed (they came after the request, before its answer);
    /// the others wait while such a request remains, else are dropped.
    pub(super) fn flush_early(&mut self, now_ms: i64, opened: Option<&CallId>) {
        if self.early.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.early);
        let mut keep = Vec::new();
        for event in held {
            if opened.is_some_and(|id| event.call_id() == Some(id)) {
                // Events replayed in order; once one ends the call the rest are dropped.
                if opened.is_some_and(|id| self.calls.contains_key(id)) {
                    self.on_event(now_ms, event);
                }
            } else {
                keep.push(event);
            }
        }
        if self.requests.claims_current() {
            keep.append(&mut self.early);
            self.early = keep;
        }
    }

    // ----------------------------------------------------------------------------------------
    // Inbound: events

    pub(super) fn on_event(&mut self, now_ms: i64, event: Event) {
        let Some(me) = self.user_id.clone() else { return };
        match event {
            Event::Kicked { reason, .. } => self.on_kicked(now_ms, reason),
            Event::CallRecord(record) => self.events.push_back(ClientEvent::ReceivedCallRecord(record)),
            Event::Summary(summary) => self.events.push_back(ClientEvent::SummaryMessage(summary)),
            Event::IncomingCall { call, inviter, extra } => self.on_incoming(&me, call, inviter, extra),
            event => {
                let Some(id) = event.call_id().cloned() else { return };
                if let Event::UsersInvited { inviter, invitees, .. } = &event
                    && !self.calls.contains_key(&id)
                    && !self.requests.opens(&id)
                {
                    // A group call this user left: the server tells those who may join again
                    // whom it invited.
                    let invitees: Vec<UserId> = invitees.iter().filter(|u| **u != me).cloned().collect();
                    if !invitees.is_empty() {
                        let inviter = inviter.clone();
                        self.events.push_back(ClientEvent::RemoteUserInvited {
                            call_id: id,
                            inviter,
                            invitees,
                        });
                    }
                    return;
                }
                if !self.calls.contains_key(&id) {
                    if self.requests.claims_current() && self.early.len() < MAX_EARLY_EVENTS {
                        self.early.push(event);
                    }
                    return;
                }
                self.on_call_event(now_ms, &id, event);
            }
        }
    }

    pub(super) fn on_incoming(&mut self, me: &UserId, info: Arc<CallInfo>, inviter: UserId, extra: String) {
        let id = info.call_id.clone();
        if let Some(call) = self.calls.get_mut(&id) {
            // A repeated invitation to a call already known: just newer information.
            if LiveCall::snapshot_ends_me(&info, me).is_none() {
                call.apply_snapshot(&info, true, &mut self.events);
            }
            return;
        }
        if LiveCall::snapshot_ends_me(&info, me).is_some() || self.calls.len() >= MAX_LIVE_CALLS {
            return;
        }
        if let Some(version) = self.ended.version(&id) {
            // Invited again into a call that ended for this user: only a newer call version
            // (a real re-invitation) opens it again.
            if info.version <= version {
                return;
            }
            self.ended.remove(&id);
        }
        let call = LiveCall::new(&info, me, Role::Invited, Some(inviter.clone()));
        let session = call.session.clone();
        self.calls.insert(id, call);
        self.events.push_back(ClientEvent::ReceivedCall { session, inviter, extra });
    }

    pub(super) fn on_call_event(&mut self, now_ms: i64, id: &CallId, event: Event) {
        if let Event::CallEnded { call: info, reason } = &event {
            if &info.call_id == id {
                self.end_call(now_ms, id, *reason, Some(info));
            }
            return;
        }
        // Session timestamps are on the server's clock, like every time the server sends.
        let now_ms = self.server_time_ms(now_ms);
        let Some(call) = self.calls.get_mut(id) else { return };
        let out = &mut self.events;
        match event {
            Event::UsersInvited { inviter, invitees, .. } => {
                call.users_invited(now_ms, &inviter, &invitees, out)
            }
            Event::ParticipantChanged { user_id, state, reason, version, device_id, .. } => {
                if call.is_stale(version) {
                    // Older than the snapshot already applied (which includes it).
                    return;
                }
                call.participant_changed(now_ms, &user_id, state, reason, device_id, out);
                if call.role == Role::Answered && self.current.is_none() {
                    // This device's answer took effect before its response arrived.
                    self.current = Some(id.clone());
                }
            }
            Event::CallTypeChanged { call_type, version, .. } => {
                if !call.is_stale(version) {
                    call.call_type_changed(call_type, out);
                }
            }
            Event::CallStarted { call_type, started_at_ms, .. } => {
                call.call_started(call_type, started_at_ms, out)
            }
            Event::MediaStateChanged { user_id, kind, disabled, .. } => {
                call.media_state_changed(now_ms, &user_id, kind, disabled, out);
            }
            Event::ChangeMediaTypeRequested { user_id, transaction_id, media_type, .. } => {
                call.change_requested(&user_id, &transaction_id, media_type, out);
            }
            Event::ChangeMediaTypeFinished {
                user_id, transaction_id, media_type, result, version, ..
            } => {
                let media_type = if call.is_stale(version) { call.session.media_type() } else { media_type };
                call.change_finished(&user_id, &transaction_id, media_type, result, out);
            }
            Event::FirstFrame { at_ms, .. } => call.first_frame(at_ms, out),
            Event::MediaSignal { from_user, from_device, payload, .. } => {
                // Held while this device's answer is on its way; dropped when the call does
                // not run here (it rings here, or another device answered).
                let may_hold = call.role != Role::Invited || call.accepting;
                self.reconcile_media();
                self.media.signal(id, from_user, from_device, payload, may_hold);
            }
            Event::MediaRoute { sfu, .. } => {
                call.media_route = Some(sfu);
                self.reconcile_media();
            }
            Event::DeliveryChanged { user_id, delivery, devices, .. } => {
                call.delivery_changed(now_ms, &user_id, delivery, devices, out);
            }
            Event::IncomingCall { .. }
            | Event::CallEnded { .. }
            | Event::CallRecord(_)
            | Event::Summary(_)
            | Event::Kicked { .. } => {}
        }
    }
}
