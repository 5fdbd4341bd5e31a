//! The [client operations](docs/protocol.md#client-operations): local validation, then a request frame.

use crate::error::{Code, Error};
use crate::limits;
use crate::model::ids::{CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{CallState, CallType, MediaKind, MediaType, RecordOrder};
use crate::model::message::{MediaPayload, Request, StartCall};
use crate::model::snapshot::PushConfig;

use super::config::CallOptions;
use super::engine::{ClientEngine, MAX_PENDING_REQUESTS, MAX_UNACKED_FRAMES};
use super::event::RequestId;
use super::media::MediaCommand;
use super::requests::Op;
use super::session::{LiveCall, Role};

fn err(code: Code, message: impl Into<String>) -> Error {
    Error::new(code, message)
}

/// Validates a user list: not empty, within the limit, well-formed ids (else `ParamError`), no
/// duplicates, not this user.
fn user_list<S: AsRef<str>>(ids: &[S], me: Option<&UserId>) -> Result<Vec<UserId>, Error> {
    if ids.is_empty() {
        return Err(err(Code::UserListInvalid, "the user list is empty"));
    }
    if ids.len() > limits::MAX_USER_LIST {
        return Err(err(
            Code::UserListInvalid,
            format!("the user list has {} entries; at most {} are allowed", ids.len(), limits::MAX_USER_LIST),
        ));
    }
    let mut users: Vec<UserId> = Vec::with_capacity(ids.len());
    for id in ids {
        let user = UserId::new(id.as_ref()).map_err(|e| err(Code::ParamError, e.message))?;
        if users.contains(&user) {
            return Err(err(Code::UserListInvalid, format!("user {user} is listed twice")));
        }
        if me == Some(&user) {
            return Err(err(Code::UserListInvalid, format!("user {user} is this user")));
        }
        users.push(user);
    }
    Ok(users)
}

fn check_extra(extra: &str) -> Result<(), Error> {
    if extra.len() > limits::MAX_EXTRA_BYTES {
        return Err(err(
            Code::ParamError,
            format!("extra is {} bytes; at most {} are allowed", extra.len(), limits::MAX_EXTRA_BYTES),
        ));
    }
    Ok(())
}

fn check_push(push: Option<&PushConfig>) -> Result<(), Error> {
    if let Some(push) = push {
        let size = callplus_proto::prost::Message::encoded_len(push);
        if size > limits::MAX_PUSH_CONFIG_BYTES {
            return Err(err(
                Code::ParamError,
                format!("push config is {size} bytes; at most {} are allowed", limits::MAX_PUSH_CONFIG_BYTES),
            ));
        }
    }
    Ok(())
}

fn check_payload(payload: &MediaPayload) -> Result<(), Error> {
    let (what, len, max) = match payload {
        MediaPayload::SdpOffer(s) | MediaPayload::SdpAnswer(s) => ("sdp", s.len(), limits::MAX_SDP_BYTES),
        MediaPayload::IceCandidate { candidate, sdp_mid, .. } => {
            ("ice candidate", candidate.len().max(sdp_mid.len()), limits::MAX_CANDIDATE_BYTES)
        }
    };
    if len > max {
        return Err(err(Code::ParamError, format!("{what} is {len} bytes; at most {max} are allowed")));
    }
    Ok(())
}

impl ClientEngine {
    /// Requests are accepted while connected (sent at once) and while reconnecting (queued).
    fn ready(&self) -> Result<(), Error> {
        if !self.state.accepts_requests() {
            return Err(err(Code::NotConnected, format!("not connected ({:?})", self.state)));
        }
        if self.requests.len() >= MAX_PENDING_REQUESTS || self.unacked_frames() >= MAX_UNACKED_FRAMES {
            return Err(err(Code::RateLimited, "too many requests awaiting an answer"));
        }
        Ok(())
    }

    /// A live call: `CallIdInvalid` for an id never seen, `NotInCall` for a call that ended.
    fn live(&self, call_id: &CallId) -> Result<&LiveCall, Error> {
        match self.calls.get(call_id) {
            Some(call) => Ok(call),
            None if self.ended.contains(call_id) => {
                Err(err(Code::NotInCall, format!("call {call_id} has ended")))
            }
            None => Err(err(Code::CallIdInvalid, format!("no call {call_id} on this device"))),
        }
    }

    /// The current call, or `NotInCall`.
    fn current_live(&self) -> Result<&LiveCall, Error> {
        self.current
            .as_ref()
            .and_then(|id| self.calls.get(id))
            .ok_or_else(|| err(Code::NotInCall, "there is no current call"))
    }

    /// `SessionExist` when a call is current or a request that makes one current is in flight.
    fn ensure_no_current(&self) -> Result<(), Error> {
        if self.current.is_some() || self.requests.claims_current() {
            return Err(err(Code::SessionExist, "a call is already in progress"));
        }
        Ok(())
    }

    /// Starts a call (`startCall`). The response ([`ResponseBody::Started`](crate::ResponseBody::Started))
    /// carries the call and the callees found busy; the call becomes current.
    ///
    /// Errors: empty list → `UserListInvalid`; SINGLE with several callees →
    /// `SingleCallNotSupportMultiPerson`; malformed id → `ParamError`; duplicate or own id →
    /// `UserListInvalid`; oversized extra / push → `ParamError`; not connected →
    /// `NotConnected`; a current call (or a start, accept or join in flight) → `SessionExist`.
    pub fn start_call<S: AsRef<str>>(
        &mut self,
        now_ms: i64,
        callees: &[S],
        call_type: CallType,
        media_type: MediaType,
        options: CallOptions,
    ) -> Result<RequestId, Error> {
        if callees.is_empty() {
            return Err(err(Code::UserListInvalid, "the callee list is empty"));
        }
        if call_type == CallType::Single && callees.len() > 1 {
            return Err(err(Code::SingleCallNotSupportMultiPerson, "a SINGLE call has exactly one callee"));
        }
        let callees = user_list(callees, self.user_id.as_ref())?;
        check_extra(&options.extra)?;
        check_push(options.push.as_ref())?;
        self.ready()?;
        self.ensure_no_current()?;
        let CallOptions { push, extra, ring_timeout_ms } = options;
        let request = Request::StartCall(StartCall {
            callees,
            call_type,
            media_type,
            push: push.map(Box::new),
            extra,
            ring_timeout_ms,
        });
        Ok(self.send_request(now_ms, Op::StartCall, request, false))
    }

    /// Accepts an incoming call (`accept`). If another call is current, the server ends it
    /// (`AcceptedAnotherCall`: its `CallEnded` follows); the accepted call becomes current.
    ///
    /// Errors: unknown id → `CallIdInvalid`; ended → `NotInCall`; not an unanswered incoming
    /// call → `InvalidState`; a start, accept or join in flight → `SessionExist`.
    pub fn accept(&mut self, now_ms: i64, call_id: &CallId) -> Result<RequestId, Error> {
        self.ready()?;
        let call = self.live(call_id)?;
        if call.role != Role::Invited || call.accepting {
            return Err(err(
                Code::InvalidState,
                format!("call {call_id} is not an unanswered incoming call"),
            ));
        }
        if self.requests.claims_current() {
            return Err(err(Code::SessionExist, "another call is being started, accepted or joined"));
        }
        if let Some(call) = self.calls.get_mut(call_id) {
            call.accepting = true;
        }
        let request = Request::Accept { call_id: call_id.clone() };
        Ok(self.send_request(now_ms, Op::Accept(call_id.clone()), request, false))
    }

    /// Hangs up (`hangup`): the current call without an id, else the named live call. Before
    /// an answer it is a cancel (caller) or a reject (callee). The call ends on this device
    /// (`CallEnded`) when the server confirms, or when the request times out.
    ///
    /// Errors: no current call (without id) → `NotInCall`; unknown id → `CallIdInvalid`;
    /// ended → `NotInCall`; oversized push → `ParamError`.
    pub fn hangup(
        &mut self,
        now_ms: i64,
        call_id: Option<&CallId>,
        push: Option<PushConfig>,
    ) -> Result<RequestId, Error> {
        check_push(push.as_ref())?;
        self.ready()?;
        let id = match call_id {
            Some(id) => self.live(id)?.call_id().clone(),
            None => self.current_live()?.call_id().clone(),
        };
        let request = Request::Hangup { call_id: id.clone(), push: push.map(Box::new) };
        Ok(self.send_request(now_ms, Op::Hangup(id), request, false))
    }

    /// Joins an unended MULTI call this user was in or is invited to (`joinCall`); it becomes
    /// current. The server checks the right to join.
    ///
    /// Errors: a current call (or a start, accept or join in flight) → `SessionExist`.
    pub fn join_call(&mut self, now_ms: i64, call_id: &CallId) -> Result<RequestId, Error> {
        self.ready()?;
        self.ensure_no_current()?;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.accepting = true;
        }
        let request = Request::JoinCall { call_id: call_id.clone() };
        Ok(self.send_request(now_ms, Op::Join(call_id.clone()), request, false))
    }

    /// Invites users into the current call (`invite`); a SINGLE call becomes MULTI. The
    /// response ([`ResponseBody::Busy`](crate::ResponseBody::Busy)) lists invitees found busy.
    ///
    /// Errors: as for `start_call`'s list; no current call → `NotInCall`.
    pub fn invite<S: AsRef<str>>(
        &mut self,
        now_ms: i64,
        user_ids: &[S],
        push: Option<PushConfig>,
        extra: impl Into<String>,
    ) -> Result<RequestId, Error> {
        let users = user_list(user_ids, self.user_id.as_ref())?;
        let extra = extra.into();
        check_extra(&extra)?;
        check_push(push.as_ref())?;
        self.ready()?;
        let call_id = self.current_live()?.call_id().clone();
        let request = Request::Invite { call_id, users, push: push.map(Box::new), extra };
        Ok(self.send_request(now_ms, Op::Plain, request, false))
    }

    /// Asks the peer of the current SINGLE call to change the media type. The response
    /// ([`ResponseBody::Transaction`](crate::ResponseBody::Transaction)) names the transaction;
    /// the outcome arrives as [`ClientEvent::ChangeMediaTypeResult`](super::ClientEvent::ChangeMediaTypeResult).
    ///
    /// Errors: no current call → `NotInCall`; MULTI call, call not connected, or a change of
    /// this device already open → `InvalidState`; same media type → `MediaTypeInvalid`.
    pub fn request_change_media_type(
        &mut self,
        now_ms: i64,
        media_type: MediaType,
    ) -> Result<RequestId, Error> {
        self.ready()?;
        let call = self.current_live()?;
        if call.session.call_type() == CallType::Multi {
            return Err(err(Code::InvalidState, "the media type of a MULTI call cannot be changed"));
        }
        if call.session.media_type() == media_type {
            return Err(err(Code::MediaTypeInvalid, format!("the call already is {media_type:?}")));
        }
        if !matches!(call.session.state(), CallState::OnCall | CallState::Connecting) {
            return Err(err(Code::InvalidState, "the call is not connected"));
        }
        if call.my_transaction.is_some() || call.requesting_change {
            return Err(err(Code::InvalidState, "a media type change of this device is already open"));
        }
        let call_id = call.call_id().clone();
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.requesting_change = true;
        }
        let request = Request::RequestChangeMediaType { call_id: call_id.clone(), media_type };
        Ok(self.send_request(now_ms, Op::RequestChangeMediaType(call_id), request, false))
    }

    /// Cancels this device's open media type change on the current call.
    ///
    /// Errors: no current call → `NotInCall`; not this device's open transaction →
    /// `TransactionIdInvalid`.
    pub fn cancel_change_media_type(
        &mut self,
        now_ms: i64,
        transaction_id: &TransactionId,
    ) -> Result<RequestId, Error> {
        self.ready()?;
        let call = self.current_live()?;
        if call.my_transaction.as_ref() != Some(transaction_id) {
            return Err(err(
                Code::TransactionIdInvalid,
                format!("no open change {transaction_id} of this device"),
            ));
        }
        let call_id = call.call_id().clone();
        let request = Request::CancelChangeMediaType {
            call_id: call_id.clone(),
            transaction_id: transaction_id.clone(),
        };
        Ok(self.send_request(now_ms, Op::Transaction(call_id, transaction_id.clone()), request, false))
    }

    /// Answers the peer's media type change request on the current call.
    ///
    /// Errors: no current call → `NotInCall`; not an open request of the peer (or already
    /// answered) → `TransactionIdInvalid`.
    pub fn reply_change_media_type(
        &mut self,
        now_ms: i64,
        transaction_id: &TransactionId,
        agree: bool,
    ) -> Result<RequestId, Error> {
        self.ready()?;
        let call = self.current_live()?;
        if !call.peer_transactions.contains(transaction_id) {
            return Err(err(Code::TransactionIdInvalid, format!("no open change request {transaction_id}")));
        }
        let call_id = call.call_id().clone();
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.peer_transactions.retain(|t| t != transaction_id);
        }
        let request = Request::ReplyChangeMediaType {
            call_id: call_id.clone(),
            transaction_id: transaction_id.clone(),
            agree,
        };
        Ok(self.send_request(now_ms, Op::Transaction(call_id, transaction_id.clone()), request, false))
    }

    /// Turns this user's camera on or off in the current call; the others get
    /// `RemoteCameraStateChanged`. The session's `camera_enabled` follows once confirmed.
    ///
    /// Turning it off is accepted in an AUDIO call too (the server's rule), so a camera turned
    /// off beforehand stays off if the call later becomes a video call.
    ///
    /// Errors: no current call → `NotInCall`; turning it on in an AUDIO call → `NotVideoCall`.
    pub fn set_camera_enabled(&mut self, now_ms: i64, enabled: bool) -> Result<RequestId, Error> {
        self.ready()?;
        let call = self.current_live()?;
        if enabled && call.session.media_type() == MediaType::Audio {
            return Err(err(Code::NotVideoCall, "the current call is audio only"));
        }
        let call_id = call.call_id().clone();
        Ok(self.set_media_state(now_ms, call_id, MediaKind::Video, !enabled))
    }

    /// Turns this user's microphone on or off in the current call; the others get
    /// `RemoteMicrophoneStateChanged`.
    ///
    /// Errors: no current call → `NotInCall`.
    pub fn set_microphone_enabled(&mut self, now_ms: i64, enabled: bool) -> Result<RequestId, Error> {
        self.ready()?;
        let call_id = self.current_live()?.call_id().clone();
        Ok(self.set_media_state(now_ms, call_id, MediaKind::Audio, !enabled))
    }

    fn set_media_state(
        &mut self,
        now_ms: i64,
        call_id: CallId,
        kind: MediaKind,
        disabled: bool,
    ) -> RequestId {
        // The device switches at once, after whatever media commands are already due (a
        // mute asked for right after `CallConnected` lands after that call's `Start`).
        self.reconcile_media();
        self.media.push(MediaCommand::SetDevice { kind, enabled: !disabled });
        let request = Request::SetMediaState { call_id: call_id.clone(), kind, disabled };
        self.send_request(now_ms, Op::SetMediaState(call_id, kind, disabled), request, false)
    }

    /// The driver's media stack rendered the first remote frame of a call. The engine reports
    /// it to the server once per call (the server stamps the call's first-frame time and tells
    /// every participant); later frames, and calls whose media does not run here, are ignored.
    pub fn media_first_frame(&mut self, now_ms: i64, call_id: &CallId) {
        if self.ready().is_err() || !self.media.first_frame(call_id) {
            return;
        }
        let request = Request::ReportFirstFrame { call_id: call_id.clone() };
        self.send_request(now_ms, Op::Plain, request, true);
    }

    /// Reports that the first media frame of a live call was rendered (the server stamps the
    /// call's first-frame time).
    ///
    /// Errors: unknown id → `CallIdInvalid`; ended → `NotInCall`.
    pub fn report_first_frame(&mut self, now_ms: i64, call_id: &CallId) -> Result<RequestId, Error> {
        self.ready()?;
        self.live(call_id)?;
        let request = Request::ReportFirstFrame { call_id: call_id.clone() };
        Ok(self.send_request(now_ms, Op::Plain, request, false))
    }

    /// Sends SDP / ICE to one device of another participant of a live call (media adapter).
    ///
    /// Errors: unknown id → `CallIdInvalid`; ended → `NotInCall`; oversized payload →
    /// `ParamError`.
    pub fn send_media_signal(
        &mut self,
        now_ms: i64,
        call_id: &CallId,
        to_user: &UserId,
        to_device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<RequestId, Error> {
        check_payload(&payload)?;
        self.ready()?;
        self.live(call_id)?;
        let request = Request::MediaSignal {
            call_id: call_id.clone(),
            to_user: to_user.clone(),
            to_device: to_device.clone(),
            payload,
        };
        Ok(self.send_request(now_ms, Op::Plain, request, false))
    }

    /// Asks for a call's current state ([call state query](docs/protocol.md#call-state-query): "is this call still ringing?"). Any call
    /// this user is or was invited to; a live session is refreshed from the answer (and ends
    /// if the answer says it is over).
    pub fn get_call(&mut self, now_ms: i64, call_id: &CallId) -> Result<RequestId, Error> {
        self.ready()?;
        let request = Request::GetCall { call_id: call_id.clone() };
        Ok(self.send_request(now_ms, Op::GetCall(call_id.clone()), request, false))
    }

    /// Asks for a page of this user's call records: `sync_time` -1 for the first page, then
    /// the page's `sync_time`.
    ///
    /// Errors: `count` 0 or above 100 → `ParamError`.
    pub fn get_call_records(
        &mut self,
        now_ms: i64,
        sync_time: i64,
        count: u32,
        order: RecordOrder,
    ) -> Result<RequestId, Error> {
        if count == 0 || count > limits::MAX_RECORD_PAGE {
            return Err(err(
                Code::ParamError,
                format!("count is {count}; it must be 1-{}", limits::MAX_RECORD_PAGE),
            ));
        }
        self.ready()?;
        let request = Request::GetCallRecords { sync_time, count, order };
        Ok(self.send_request(now_ms, Op::Plain, request, false))
    }

    /// Deletes some of this user's call records.
    ///
    /// Errors: empty list or more than 100 ids → `ParamError`.
    pub fn delete_call_records(&mut self, now_ms: i64, call_ids: Vec<CallId>) -> Result<RequestId, Error> {
        if call_ids.is_empty() || call_ids.len() > limits::MAX_DELETE_IDS {
            return Err(err(
                Code::ParamError,
                format!("{} call ids; 1-{} are allowed", call_ids.len(), limits::MAX_DELETE_IDS),
            ));
        }
        self.ready()?;
        Ok(self.send_request(now_ms, Op::Plain, Request::DeleteCallRecords { call_ids }, false))
    }

    /// Deletes all of this user's call records.
    pub fn delete_all_call_records(&mut self, now_ms: i64) -> Result<RequestId, Error> {
        self.ready()?;
        Ok(self.send_request(now_ms, Op::Plain, Request::DeleteAllCallRecords, false))
    }

    /// Asks for the unended MULTI calls this user took part in or was invited to
    /// ([`ResponseBody::Calls`](crate::ResponseBody::Calls)); join one with `join_call`.
    pub fn get_available_calls(&mut self, now_ms: i64) -> Result<RequestId, Error> {
        self.ready()?;
        Ok(self.send_request(now_ms, Op::Plain, Request::GetAvailableCalls, false))
    }

    /// Reports that the app shows (rings) an incoming call; the caller sees the callee's
    /// delivery become `Ringing`.
    ///
    /// Errors: unknown id → `CallIdInvalid`; ended → `NotInCall`; not an unanswered incoming
    /// call → `InvalidState`.
    pub fn ringing(&mut self, now_ms: i64, call_id: &CallId) -> Result<RequestId, Error> {
        self.ready()?;
        if self.live(call_id)?.role != Role::Invited {
            return Err(err(
                Code::InvalidState,
                format!("call {call_id} is not an unanswered incoming call"),
            ));
        }
        let request = Request::Ringing { call_id: call_id.clone() };
        Ok(self.send_request(now_ms, Op::Plain, request, false))
    }
}
