//! Calls the operator ends, and participants the operator removes (the admin API's
//! `POST /v1/calls/end`), as the vendors' server APIs do ("remove a user from the room").
//!
//! Ending a call ends every participant still in it with `ENDED_BY_SERVER`. Removing a user
//! ends their leg with `KICKED_BY_SERVER`; the others see the participant end with that reason,
//! and if the call can no longer go on (fewer than two connected and nobody rung) it ends for
//! them with `REMOTE_KICKED_BY_SERVER`, as it would after a hangup. Records, summaries and the
//! SFU follow the same paths as any other end.

use super::{NodeMessage, NodeOutput, Output, Switchboard};
use crate::error::{Code, Error};
use crate::model::ids::{AppKey, CallId, UserId};
use crate::model::kinds::EndReason;

/// What an operator's end or removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEnd {
    /// Done on this node.
    Done,
    /// The call is held by another node (`serve --redis`): the request went to it.
    Forwarded {
        /// That node's id.
        node: String,
    },
}

impl Switchboard {
    /// Ends call `call_id` of `app` for everyone (`user` is `None`), or removes `user` from it.
    ///
    /// A removed user may come back only when invited again (`join_call` is refused, and the
    /// call is not among their available calls).
    ///
    /// Errors: the call is not live in this app → `CALL_NOT_FOUND`; `user` has no place in the
    /// call any more (never invited, or already left) → `NOT_IN_CALL`; the server is shutting
    /// down → `INVALID_STATE`.
    ///
    /// ```
    /// use callplus_session::switchboard::{ServerEnd, Switchboard, SwitchboardConfig};
    /// use callplus_session::{AppKey, CallId, Code};
    ///
    /// let mut sb = Switchboard::new(SwitchboardConfig::default());
    /// let (app, call) = (AppKey::new("app").unwrap(), CallId::new("c1").unwrap());
    /// let unknown = sb.end_call_by_server(0, &app, &call, None).unwrap_err();
    /// assert_eq!(unknown.code, Code::CallNotFound);
    /// ```
    pub fn end_call_by_server(
        &mut self,
        now_ms: i64,
        app: &AppKey,
        call_id: &CallId,
        user: Option<&UserId>,
    ) -> Result<ServerEnd, Error> {
        self.init_prefix(now_ms);
        let result = self.server_end(now_ms, app, call_id, user);
        self.finish_input(now_ms);
        result
    }

    pub(super) fn server_end(
        &mut self,
        now_ms: i64,
        app: &AppKey,
        call_id: &CallId,
        user: Option<&UserId>,
    ) -> Result<ServerEnd, Error> {
        let not_found = || Error::new(Code::CallNotFound, "no live call with this id in this app");
        if self.stopped {
            return Err(Error::new(Code::InvalidState, "the server is shutting down"));
        }
        let Some(call) = self.calls.get(call_id) else {
            if let Some(node) = self.remote_owner_of(call_id) {
                let message =
                    NodeMessage::EndCall { app: app.clone(), call_id: call_id.clone(), user: user.cloned() };
                let send = NodeOutput::Send { node: node.clone(), message: Box::new(message) };
                self.net.outputs.push_back(Output::Node(send));
                return Ok(ServerEnd::Forwarded { node });
            }
            return Err(not_found());
        };
        if &call.app != app || call.is_ended() {
            return Err(not_found());
        }
        match user {
            None => self.finish_call(now_ms, call_id, EndReason::EndedByServer, None),
            Some(user) => {
                let idx = call
                    .index_of(user)
                    .filter(|&i| call.party(i).is_some_and(|p| p.state.is_active()))
                    .ok_or_else(|| Error::new(Code::NotInCall, "the user has no place in this call"))?;
                let reason = EndReason::KickedByServer;
                self.leave(now_ms, call_id, idx, reason, None, reason);
                if let Some(party) = self.calls.get_mut(call_id).and_then(|c| c.party_mut(idx)) {
                    party.removed = true;
                }
            }
        }
        tracing::info!(app = %app, call = %call_id, user = ?user.map(UserId::as_str), "ended by the operator");
        Ok(ServerEnd::Done)
    }
}
