//! Devices the operator signs out (the admin API's `POST /v1/users/sign_out`), as the vendors'
//! server APIs can log a user out: each of the user's sessions (or one device's) gets `Kicked`
//! with `KICKED_BY_SERVER` and is closed, and its call legs end with that reason, so the others
//! in a call see `REMOTE_KICKED_BY_SERVER` when it cannot go on without them.
//!
//! The client takes the kick as final and does not reconnect by itself. The user's token stays
//! valid until it expires: an app that wants the user out for good stops minting tokens for
//! them and signs them out.

use std::sync::Arc;

use super::{ConnId, NodeOutput, Output, Switchboard};
use crate::call::SessionKey;
use crate::error::{Code, Error};
use crate::model::ids::{AppKey, DeviceId, UserId};
use crate::model::kinds::EndReason;
use crate::model::message::{Event, OutFrame, ServerBody};

/// What a signed-out device is told.
const SIGNED_OUT: &str = "the operator signed this device out";

impl Switchboard {
    /// Signs `user` of `app` out: every device, or only `device`. Returns how many sessions were
    /// closed on this node; on a node of several (`serve --redis`) the other nodes holding a
    /// device of the user are told too ([`NodeOutput::SignOutElsewhere`]) and close theirs.
    ///
    /// Errors: the server is shutting down → `INVALID_STATE`.
    ///
    /// ```
    /// use callplus_session::switchboard::{Switchboard, SwitchboardConfig};
    /// use callplus_session::{AppKey, UserId};
    ///
    /// let mut sb = Switchboard::new(SwitchboardConfig::default());
    /// let (app, user) = (AppKey::new("app").unwrap(), UserId::new("bob").unwrap());
    /// assert_eq!(sb.sign_out_by_server(0, &app, &user, None), Ok(0), "no device of bob is here");
    /// ```
    pub fn sign_out_by_server(
        &mut self,
        now_ms: i64,
        app: &AppKey,
        user: &UserId,
        device: Option<&DeviceId>,
    ) -> Result<usize, Error> {
        if self.stopped {
            return Err(Error::new(Code::InvalidState, "the server is shutting down"));
        }
        self.init_prefix(now_ms);
        let closed = self.sign_out_here(now_ms, app, user, device);
        if self.clustered() {
            let elsewhere = NodeOutput::SignOutElsewhere {
                app: app.clone(),
                user: user.clone(),
                device: device.cloned(),
            };
            self.net.outputs.push_back(Output::Node(elsewhere));
        }
        self.finish_input(now_ms);
        tracing::info!(app = %app, user = %user, device = ?device.map(DeviceId::as_str), closed, "signed out by the operator");
        Ok(closed)
    }

    /// Closes this node's own sessions of `user` (of `device` only, when given); sessions of
    /// other nodes are theirs to close.
    pub(super) fn sign_out_here(
        &mut self,
        now_ms: i64,
        app: &AppKey,
        user: &UserId,
        device: Option<&DeviceId>,
    ) -> usize {
        let sessions: Vec<SessionKey> = self
            .net
            .user(app, user)
            .map(|entry| {
                entry
                    .sessions
                    .iter()
                    .copied()
                    .filter(|sk| {
                        self.net
                            .sessions
                            .get(sk)
                            .is_some_and(|s| s.remote.is_none() && device.is_none_or(|d| &s.device == d))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let until = now_ms.saturating_add(i64::from(self.cfg.resume_window_ms));
        self.signed_out.retain(|_, (_, expiry)| *expiry > now_ms);
        for &sk in &sessions {
            if let Some(s) = self.net.sessions.get(&sk) {
                self.signed_out.insert(s.id.clone(), (user.clone(), until));
            }
            self.kick(now_ms, sk, EndReason::KickedByServer, SIGNED_OUT);
        }
        sessions.len()
    }

    /// Whether `user`'s session `session_id` was signed out within the resume window.
    pub(super) fn was_signed_out(&mut self, now_ms: i64, user: &UserId, session_id: &str) -> bool {
        self.signed_out.retain(|_, (_, expiry)| *expiry > now_ms);
        self.signed_out.get(session_id).is_some_and(|(who, _)| who == user)
    }

    /// Answers a resume of a signed-out session with the kick it missed, then closes.
    pub(super) fn refuse_signed_out(&mut self, conn: ConnId) {
        let kicked = Event::Kicked { reason: EndReason::KickedByServer, message: SIGNED_OUT.to_owned() };
        let frame = OutFrame { seq: 0, ack: 0, body: Arc::new(ServerBody::Event(kicked)) };
        self.net.outputs.push_back(Output::Transmit { conn, frame });
        self.net.outputs.push_back(Output::Close { conn });
    }
}
