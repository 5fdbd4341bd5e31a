//! Test vocabulary over the simulation: place calls, answer them, and ask what each device saw.

use callplus_session::client::{CallOptions, ClientEvent, DriverEvent, RequestId};
use callplus_session::{
    CallId, CallRecord, CallState, CallSummary, CallType, ChangeMediaTypeResult, Code, Delivery, EndReason,
    Error, MediaKind, MediaType, ParticipantState, RecordOrder, RecordPage, ResponseBody, TransactionId,
    UserId,
};

use super::{Sim, user};

fn ok<T>(what: &str, r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

impl Sim {
    /// Runs until the request completes and returns its result.
    pub fn wait_request(&mut self, idx: usize, id: RequestId) -> Result<ResponseBody, Error> {
        self.run_until(15_000, "request completes", |s| s.request_done(idx, id));
        let device = &self.devices[idx];
        device.driver_events[device.epoch..]
            .iter()
            .find_map(|(_, e)| match e {
                DriverEvent::RequestCompleted { request_id, result } if *request_id == id => {
                    Some(result.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("request {id} vanished"))
    }

    pub fn request_done(&self, idx: usize, id: RequestId) -> bool {
        let device = &self.devices[idx];
        device.driver_events[device.epoch..]
            .iter()
            .any(|(_, e)| matches!(e, DriverEvent::RequestCompleted { request_id, .. } if *request_id == id))
    }

    pub fn try_start(
        &mut self,
        idx: usize,
        callees: &[&str],
        call_type: CallType,
        media: MediaType,
    ) -> Result<(CallId, Vec<UserId>), Error> {
        self.try_start_with(idx, callees, call_type, media, CallOptions::default())
    }

    pub fn try_start_with(
        &mut self,
        idx: usize,
        callees: &[&str],
        call_type: CallType,
        media: MediaType,
        options: CallOptions,
    ) -> Result<(CallId, Vec<UserId>), Error> {
        let now = self.device_now(idx);
        let callees: Vec<String> = callees.iter().map(|s| s.to_string()).collect();
        let id = self.devices[idx].engine.start_call(now, &callees, call_type, media, options)?;
        match self.wait_request(idx, id)? {
            ResponseBody::Started { call, busy } => Ok((call.call_id.clone(), busy)),
            other => panic!("start_call answered {other:?}"),
        }
    }

    pub fn start(&mut self, idx: usize, callees: &[&str], call_type: CallType, media: MediaType) -> CallId {
        ok("start_call", self.try_start(idx, callees, call_type, media)).0
    }

    pub fn start_reporting_busy(
        &mut self,
        idx: usize,
        callees: &[&str],
        call_type: CallType,
        media: MediaType,
    ) -> (CallId, Vec<UserId>) {
        ok("start_call", self.try_start(idx, callees, call_type, media))
    }

    pub fn start_with_timeout(&mut self, idx: usize, callees: &[&str], ring_timeout_ms: u32) -> CallId {
        let options = CallOptions { ring_timeout_ms: Some(ring_timeout_ms), ..CallOptions::default() };
        ok("start_call", self.try_start_with(idx, callees, CallType::Single, MediaType::Audio, options)).0
    }

    /// The code of a start_call refused by the engine itself, before anything is sent.
    pub fn try_start_local(&mut self, idx: usize, callees: &[&str], call_type: CallType) -> Option<Code> {
        let now = self.device_now(idx);
        let callees: Vec<String> = callees.iter().map(|s| s.to_string()).collect();
        self.devices[idx]
            .engine
            .start_call(now, &callees, call_type, MediaType::Audio, CallOptions::default())
            .err()
            .map(|e| e.code)
    }

    /// Device `caller` calls `callee_name` (on device `callee`), who accepts; returns once both
    /// sides are connected.
    pub fn answered_call(
        &mut self,
        caller: usize,
        callee: usize,
        callee_name: &str,
        media: MediaType,
    ) -> CallId {
        let call = self.start(caller, &[callee_name], CallType::Single, media);
        self.run_until(1_000, "the callee rings", |s| s.incoming(callee).as_ref() == Some(&call));
        self.accept(callee, &call);
        self.run_until(1_000, "both connected", |s| s.connected(caller, &call) && s.connected(callee, &call));
        call
    }

    pub fn accept(&mut self, idx: usize, call: &CallId) {
        let now = self.device_now(idx);
        let id = ok("accept", self.devices[idx].engine.accept(now, call));
        ok("accept answered", self.wait_request(idx, id));
    }

    pub fn hangup(&mut self, idx: usize, call: &CallId) {
        let now = self.device_now(idx);
        let id = ok("hangup", self.devices[idx].engine.hangup(now, Some(call), None));
        ok("hangup answered", self.wait_request(idx, id));
    }

    pub fn join(&mut self, idx: usize, call: &CallId) -> Result<(), Error> {
        let now = self.device_now(idx);
        let id = self.devices[idx].engine.join_call(now, call)?;
        self.wait_request(idx, id).map(|_| ())
    }

    pub fn try_invite(&mut self, idx: usize, _call: &CallId, users: &[&str]) -> Result<Vec<UserId>, Error> {
        let now = self.device_now(idx);
        let users: Vec<String> = users.iter().map(|s| s.to_string()).collect();
        let id = self.devices[idx].engine.invite(now, &users, None, String::new())?;
        match self.wait_request(idx, id)? {
            ResponseBody::Busy(busy) => Ok(busy),
            ResponseBody::Empty => Ok(Vec::new()),
            other => panic!("invite answered {other:?}"),
        }
    }

    pub fn invite(&mut self, idx: usize, users: &[&str]) -> Vec<UserId> {
        let call = self.current_call_id(idx).unwrap_or_else(|| panic!("no current call"));
        ok("invite", self.try_invite(idx, &call, users))
    }

    pub fn get_call(&mut self, idx: usize, call: &CallId) -> callplus_session::CallInfo {
        let now = self.device_now(idx);
        let id = ok("get_call", self.devices[idx].engine.get_call(now, call));
        match ok("get_call answered", self.wait_request(idx, id)) {
            ResponseBody::Call(info) => std::sync::Arc::unwrap_or_clone(info),
            other => panic!("get_call answered {other:?}"),
        }
    }

    pub fn available_calls(&mut self, idx: usize) -> Vec<CallId> {
        let now = self.device_now(idx);
        let id = ok("get_available_calls", self.devices[idx].engine.get_available_calls(now));
        match ok("available", self.wait_request(idx, id)) {
            ResponseBody::Calls(calls) => calls.into_iter().map(|c| c.call_id).collect(),
            other => panic!("get_available_calls answered {other:?}"),
        }
    }

    pub fn request_media_nowait(&mut self, idx: usize, media: MediaType) -> RequestId {
        let now = self.device_now(idx);
        ok("request_change_media_type", self.devices[idx].engine.request_change_media_type(now, media))
    }

    pub fn request_media(&mut self, idx: usize, media: MediaType) -> TransactionId {
        let id = self.request_media_nowait(idx, media);
        match ok("change media answered", self.wait_request(idx, id)) {
            ResponseBody::Transaction(tx) => tx,
            other => panic!("request_change_media_type answered {other:?}"),
        }
    }

    pub fn reply_media(&mut self, idx: usize, tx: &TransactionId, agree: bool) {
        let now = self.device_now(idx);
        let id = ok("reply", self.devices[idx].engine.reply_change_media_type(now, tx, agree));
        ok("reply answered", self.wait_request(idx, id));
    }

    pub fn cancel_media(&mut self, idx: usize, tx: &TransactionId) {
        let now = self.device_now(idx);
        let id = ok("cancel", self.devices[idx].engine.cancel_change_media_type(now, tx));
        ok("cancel answered", self.wait_request(idx, id));
    }

    pub fn set_camera(&mut self, idx: usize, enabled: bool) {
        let now = self.device_now(idx);
        ok("camera", self.devices[idx].engine.set_camera_enabled(now, enabled));
    }

    pub fn set_microphone(&mut self, idx: usize, enabled: bool) {
        let now = self.device_now(idx);
        ok("microphone", self.devices[idx].engine.set_microphone_enabled(now, enabled));
    }

    pub fn report_first_frame(&mut self, idx: usize, call: &CallId) {
        let now = self.device_now(idx);
        ok("first frame", self.devices[idx].engine.report_first_frame(now, call));
    }

    pub fn ringing(&mut self, idx: usize, call: &CallId) {
        let now = self.device_now(idx);
        ok("ringing", self.devices[idx].engine.ringing(now, call));
    }

    pub fn records_page(&mut self, idx: usize, sync_time: i64, count: u32, order: RecordOrder) -> RecordPage {
        let now = self.device_now(idx);
        let id = ok("records", self.devices[idx].engine.get_call_records(now, sync_time, count, order));
        match ok("records answered", self.wait_request(idx, id)) {
            ResponseBody::Records(page) => page,
            other => panic!("get_call_records answered {other:?}"),
        }
    }

    pub fn delete_records(&mut self, idx: usize, calls: Vec<CallId>) {
        let now = self.device_now(idx);
        let id = ok("delete", self.devices[idx].engine.delete_call_records(now, calls));
        ok("delete answered", self.wait_request(idx, id));
    }

    pub fn delete_all_records(&mut self, idx: usize) {
        let now = self.device_now(idx);
        let id = ok("delete all", self.devices[idx].engine.delete_all_call_records(now));
        ok("delete all answered", self.wait_request(idx, id));
    }

    // ---- what a device saw ----

    pub fn incoming(&self, idx: usize) -> Option<CallId> {
        self.devices[idx].events.iter().rev().find_map(|(_, e)| match e {
            ClientEvent::ReceivedCall { session, .. } => Some(session.call_id().clone()),
            _ => None,
        })
    }

    pub fn connected(&self, idx: usize, call: &CallId) -> bool {
        self.devices[idx]
            .events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::CallConnected { session } if session.call_id() == call))
    }

    pub fn ended(&self, idx: usize, call: &CallId) -> Option<EndReason> {
        self.devices[idx].events.iter().find_map(|(_, e)| match e {
            ClientEvent::CallEnded { session, reason } if session.call_id() == call => Some(*reason),
            _ => None,
        })
    }

    pub fn ended_count(&self, idx: usize, call: &CallId) -> usize {
        self.devices[idx]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::CallEnded { session, .. } if session.call_id() == call))
            .count()
    }

    pub fn state_of(&self, idx: usize, call: &CallId) -> Option<CallState> {
        self.devices[idx].engine.session(call).map(|s| s.state())
    }

    pub fn session_type(&self, idx: usize, call: &CallId) -> Option<CallType> {
        self.devices[idx].engine.session(call).map(|s| s.call_type())
    }

    pub fn session_media(&self, idx: usize, call: &CallId) -> Option<MediaType> {
        self.devices[idx].engine.session(call).map(|s| s.media_type())
    }

    pub fn current_call_id(&self, idx: usize) -> Option<CallId> {
        self.devices[idx].engine.current_call().map(|s| s.call_id().clone())
    }

    /// Every record written for the call, across all owners.
    pub fn all_records(&self, call: &CallId) -> Vec<CallRecord> {
        self.storage.written.iter().filter(|(_, r)| &r.call.call_id == call).map(|(_, r)| r.clone()).collect()
    }

    pub fn records_received(&self, idx: usize, call: &CallId) -> usize {
        self.devices[idx]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::ReceivedCallRecord(r) if &r.call.call_id == call))
            .count()
    }

    pub fn summaries_received(&self, idx: usize, call: &CallId) -> usize {
        self.devices[idx]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::SummaryMessage(s) if &s.call_id == call))
            .count()
    }

    pub fn summary(&self, idx: usize, call: &CallId) -> Option<CallSummary> {
        self.devices[idx].events.iter().find_map(|(_, e)| match e {
            ClientEvent::SummaryMessage(s) if &s.call_id == call => Some(s.clone()),
            _ => None,
        })
    }

    pub fn saw_type_change(&self, idx: usize, call: &CallId, to: CallType) -> bool {
        self.devices[idx].events.iter().any(|(_, e)| {
            matches!(e, ClientEvent::CallTypeChanged { call_id, call_type } if call_id == call && *call_type == to)
        })
    }

    pub fn saw_invited(&self, idx: usize, call: &CallId, who: &str) -> bool {
        let who = user(who);
        self.devices[idx].events.iter().any(|(_, e)| {
            matches!(e, ClientEvent::RemoteUserInvited { call_id, invitees, .. } if call_id == call && invitees.contains(&who))
        })
    }

    pub fn saw_state(&self, idx: usize, call: &CallId, who: &str, state: ParticipantState) -> bool {
        let who = user(who);
        self.devices[idx].events.iter().any(|(_, e)| {
            matches!(e, ClientEvent::RemoteUserStateChanged { call_id, user_id, state: s, .. }
                if call_id == call && *user_id == who && *s == state)
        })
    }

    pub fn media_request(&self, idx: usize) -> Option<TransactionId> {
        self.devices[idx].events.iter().rev().find_map(|(_, e)| match e {
            ClientEvent::ChangeMediaTypeRequest { transaction_id, .. } => Some(transaction_id.clone()),
            _ => None,
        })
    }

    pub fn media_result(&self, idx: usize, tx: &TransactionId) -> Option<ChangeMediaTypeResult> {
        self.devices[idx].events.iter().find_map(|(_, e)| match e {
            ClientEvent::ChangeMediaTypeResult { transaction_id, result, .. } if transaction_id == tx => {
                Some(*result)
            }
            _ => None,
        })
    }

    pub fn any_media_result(&self, idx: usize) -> Option<ChangeMediaTypeResult> {
        self.devices[idx].events.iter().find_map(|(_, e)| match e {
            ClientEvent::ChangeMediaTypeResult { result, .. } => Some(*result),
            _ => None,
        })
    }

    fn media_states(&self, idx: usize, call: &CallId, who: &str, kind: MediaKind) -> Vec<bool> {
        let who = user(who);
        self.devices[idx]
            .events
            .iter()
            .filter_map(|(_, e)| match (e, kind) {
                (ClientEvent::RemoteCameraStateChanged { call_id, user_id, disabled }, MediaKind::Video)
                | (
                    ClientEvent::RemoteMicrophoneStateChanged { call_id, user_id, disabled },
                    MediaKind::Audio,
                ) if call_id == call && *user_id == who => Some(*disabled),
                _ => None,
            })
            .collect()
    }

    /// The last camera state (`disabled`) the device was told for `who`.
    pub fn camera_state(&self, idx: usize, call: &CallId, who: &str) -> Option<bool> {
        self.media_states(idx, call, who, MediaKind::Video).last().copied()
    }

    pub fn microphone_state(&self, idx: usize, call: &CallId, who: &str) -> Option<bool> {
        self.media_states(idx, call, who, MediaKind::Audio).last().copied()
    }

    /// Every camera event (`disabled`) about the call's other participant(s), in order.
    pub fn camera_events(&self, idx: usize, call: &CallId) -> Vec<bool> {
        self.devices[idx]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                ClientEvent::RemoteCameraStateChanged { call_id, disabled, .. } if call_id == call => {
                    Some(*disabled)
                }
                _ => None,
            })
            .collect()
    }

    pub fn first_frame(&self, idx: usize, call: &CallId) -> Option<i64> {
        self.devices[idx].events.iter().find_map(|(_, e)| match e {
            ClientEvent::CallFirstFrameTime { call_id, at_ms } if call_id == call => Some(*at_ms),
            _ => None,
        })
    }

    pub fn delivery(&self, idx: usize, call: &CallId, who: &str) -> Option<Delivery> {
        let who = user(who);
        self.devices[idx].events.iter().rev().find_map(|(_, e)| match e {
            ClientEvent::DeliveryChanged { call_id, user_id, delivery }
                if call_id == call && *user_id == who =>
            {
                Some(*delivery)
            }
            _ => None,
        })
    }

    pub fn kicked(&self, idx: usize) -> Option<EndReason> {
        use callplus_session::client::ConnectionState;
        self.devices[idx].events.iter().find_map(|(_, e)| match e {
            ClientEvent::ConnectionStateChanged(ConnectionState::Kicked(reason)) => Some(*reason),
            _ => None,
        })
    }
}

impl Sim {
    /// Calls the device's engine still knows (current and incoming).
    pub fn known_calls(&self, idx: usize) -> Vec<CallId> {
        let mut calls = Vec::new();
        for (_, e) in &self.devices[idx].events {
            if let ClientEvent::ReceivedCall { session, .. } | ClientEvent::CallConnected { session } = e
                && self.devices[idx].engine.session(session.call_id()).is_some()
                && !calls.contains(session.call_id())
            {
                calls.push(session.call_id().clone());
            }
        }
        if let Some(current) = self.current_call_id(idx)
            && !calls.contains(&current)
        {
            calls.push(current);
        }
        calls
    }
}
