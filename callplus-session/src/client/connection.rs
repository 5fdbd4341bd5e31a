//! The engine's connection: Hello and Welcome, resume, heartbeats, acks, liveness, the
//! transport's lifecycle, and losing or being kicked from the session.

use crate::error::{Code, Error};
use crate::link::{Inbox, Outbox, Received};
use crate::model::ids::CallId;
use crate::model::kinds::EndReason;
use crate::model::message::{
    ClientBody, ClientFrame, Event, Hello, Request, Response, Resume, ServerBody, ServerFrame, Welcome,
};
use crate::model::snapshot::CallInfo;

use super::engine::{ACK_DELAY_MS, ACK_EVERY, ClientEngine, MAX_HELD_FRAMES, MIN_HEARTBEAT_MS};
use super::event::{ClientEvent, ConnectionState, DriverEvent, RequestId};
use super::requests::{Op, Pending};
use super::session::LiveCall;
use super::timers::Timer;

impl ClientEngine {
    // ----------------------------------------------------------------------------------------
    // Transport lifecycle

    /// A transport connection is up: queues a Hello (resuming the session if one exists).
    ///
    /// The state becomes `Connecting` (no session yet) or stays `Reconnecting` (a session
    /// exists); from `Connected` (the driver did not report the loss) it becomes
    /// `Reconnecting`. After `Disconnected` or `Kicked` this starts a fresh session.
    pub fn transport_connected(&mut self, now_ms: i64) {
        if self.transport_up {
            self.transport_lost(now_ms);
        }
        self.transport_up = true;
        self.awaiting_welcome = true;
        self.timers.stop_all();
        self.timers.set(Timer::Hello, now_ms.saturating_add(i64::from(self.config.request_timeout_ms)));
        self.transmits.clear();
        let resume = self.session_id.as_ref().map(|session_id| Resume {
            session_id: session_id.clone(),
            last_received_seq: self.inbox.last_in_order(),
        });
        self.set_state(if resume.is_some() {
            ConnectionState::Reconnecting
        } else {
            ConnectionState::Connecting
        });
        let hello = Hello {
            token: self.config.token.clone(),
            device_id: self.config.device_id.clone(),
            resume,
            client_version: self.config.client_version.clone(),
        };
        self.queue_unsequenced(ClientBody::Hello(hello));
    }

    /// The transport broke. From `Connected` the state becomes `Reconnecting`; unacked request
    /// frames are kept and replayed after the resume. Frames not yet drained from
    /// [`poll_transmit`](Self::poll_transmit) are dropped (requests among them are replayed).
    pub fn transport_lost(&mut self, _now_ms: i64) {
        self.transport_up = false;
        self.awaiting_welcome = false;
        self.timers.stop_all();
        self.transmits.clear();
        if self.state == ConnectionState::Connected {
            self.set_state(ConnectionState::Reconnecting);
        }
    }

    /// The app disconnects: queues a Goodbye (when connected), ends every local call
    /// (`CallEnded` with `Cancel`, `Reject` or `Hangup` by the call's state, as the server does), fails pending requests with `NotConnected`, forgets the
    /// session, and the state becomes `Disconnected`. Drain
    /// [`poll_transmit`](Self::poll_transmit) before closing the transport.
    pub fn disconnect(&mut self, now_ms: i64) {
        if matches!(self.state, ConnectionState::Idle | ConnectionState::Disconnected)
            && self.calls.is_empty()
        {
            self.transmits.clear();
            self.transport_up = false;
            return;
        }
        let send_goodbye =
            self.transport_up && !self.awaiting_welcome && self.state == ConnectionState::Connected;
        self.transmits.clear();
        if send_goodbye {
            self.queue_unsequenced(ClientBody::Goodbye);
        }
        // A Goodbye ends each call on the server as a hangup from this device would (cancel,
        // reject or hang up by state); say the same here so the app and the record agree.
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            let reason = self.calls.get(&id).map_or(EndReason::Hangup, LiveCall::local_hangup_reason);
            self.end_call(now_ms, &id, reason, None);
        }
        self.lose_session(now_ms, EndReason::Hangup);
        self.transport_up = false;
        self.awaiting_welcome = false;
        self.timers.stop_all();
        self.set_state(ConnectionState::Disconnected);
    }

    /// Replaces the token sent in the next Hello (after `TokenExpired`, say).
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.config.token = token.into();
    }

    // ----------------------------------------------------------------------------------------
    // Inputs

    /// A frame arrived from the server. Hostile or out-of-protocol frames are ignored.
    pub fn handle_frame(&mut self, now_ms: i64, frame: ServerFrame) {
        if !self.transport_up {
            return;
        }
        let ServerFrame { seq, ack, body } = frame;
        if self.awaiting_welcome {
            match body {
                ServerBody::Welcome(welcome) => self.on_welcome(now_ms, ack, welcome),
                ServerBody::Response(Response { request_id: 0, result: Err(error) }) => {
                    self.on_hello_refused(now_ms, error);
                }
                ServerBody::Event(Event::Kicked { reason, .. }) => self.on_kicked(now_ms, reason),
                // Anything else before the Welcome is out of protocol; the server replays
                // sequenced frames after the Welcome.
                _ => {}
            }
            return;
        }
        if self.state != ConnectionState::Connected {
            return;
        }
        self.arm_liveness(now_ms);
        self.outbox.ack(ack, |_, _| {});
        match body {
            ServerBody::Welcome(_) => {}
            ServerBody::Pong { server_time_ms } => {
                self.clock_offset_ms = Some(server_time_ms.saturating_sub(now_ms));
            }
            body if seq == 0 => self.process_body(now_ms, body),
            body => {
                match self.inbox.receive(seq, body) {
                    Received::Deliver(bodies) => {
                        for body in bodies {
                            self.rx_unacked = self.rx_unacked.saturating_add(1);
                            if self.state != ConnectionState::Connected {
                                break;
                            }
                            self.process_body(now_ms, body);
                        }
                    }
                    // The server did not get our ack yet: repeat it.
                    Received::Duplicate => self.rx_unacked = self.rx_unacked.max(1),
                    Received::Held | Received::Dropped => {}
                }
                if self.state == ConnectionState::Connected && self.rx_unacked > 0 {
                    if self.rx_unacked >= ACK_EVERY {
                        self.queue_ping(now_ms);
                    } else if !self.timers.is_set(Timer::Ack) {
                        self.timers.set(Timer::Ack, now_ms.saturating_add(ACK_DELAY_MS));
                    }
                }
            }
        }
    }

    /// The clock reached (or passed) [`poll_timeout`](Self::poll_timeout): sends heartbeats,
    /// times out requests, and detects a dead transport (no Welcome in time, or a server
    /// silent past its liveness timeout; see [`DriverEvent::TransportStale`]).
    pub fn handle_timeout(&mut self, now_ms: i64) {
        if self.awaiting_welcome && self.timers.is_due(Timer::Hello, now_ms) {
            self.transport_stale(now_ms);
        }
        if self.state == ConnectionState::Connected && self.transport_up {
            if self.timers.is_due(Timer::Liveness, now_ms) {
                self.transport_stale(now_ms);
            } else if self.timers.is_due(Timer::Heartbeat, now_ms) || self.timers.is_due(Timer::Ack, now_ms) {
                self.queue_ping(now_ms);
            }
        }
        while let Some((request_id, pending)) = self.requests.pop_expired(now_ms) {
            self.on_request_timeout(now_ms, request_id, pending);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Link internals

    /// Request frames awaiting the server's ack.
    pub(super) fn unacked_frames(&self) -> usize {
        self.outbox.len()
    }

    /// The server just spoke: it is alive until the liveness timeout from now.
    pub(super) fn arm_liveness(&mut self, now_ms: i64) {
        if self.liveness_ms > 0 {
            self.timers.set(Timer::Liveness, now_ms.saturating_add(i64::from(self.liveness_ms)));
        } else {
            self.timers.stop(Timer::Liveness);
        }
    }

    pub(super) fn arm_heartbeat(&mut self, now_ms: i64) {
        if self.heartbeat_ms > 0 {
            self.timers.set(Timer::Heartbeat, now_ms.saturating_add(i64::from(self.heartbeat_ms)));
        } else {
            self.timers.stop(Timer::Heartbeat);
        }
    }

    pub(super) fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            self.state = state;
            self.events.push_back(ClientEvent::ConnectionStateChanged(state));
        }
    }

    pub(super) fn frame(&mut self, seq: u64, request_id: u64, body: ClientBody) -> ClientFrame {
        self.rx_unacked = 0;
        self.timers.stop(Timer::Ack);
        ClientFrame { seq, ack: self.inbox.last_in_order(), request_id, body }
    }

    pub(super) fn queue_unsequenced(&mut self, body: ClientBody) {
        let frame = self.frame(0, 0, body);
        self.transmits.push_back(frame);
    }

    pub(super) fn queue_ping(&mut self, now_ms: i64) {
        self.queue_unsequenced(ClientBody::Ping);
        self.arm_heartbeat(now_ms);
    }

    /// Numbers a request, keeps it until acked, sends it now when connected (else it is sent
    /// by the replay after the resume) and tracks its response.
    pub(super) fn send_request(
        &mut self,
        now_ms: i64,
        op: Op,
        request: Request,
        internal: bool,
    ) -> RequestId {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.saturating_add(1);
        let seq = self.outbox.push((request_id, request.clone()));
        if self.state == ConnectionState::Connected && self.transport_up && !self.awaiting_welcome {
            let frame = self.frame(seq, request_id, ClientBody::Request(request));
            self.transmits.push_back(frame);
        }
        let deadline_ms = now_ms.saturating_add(i64::from(self.config.request_timeout_ms));
        self.requests.insert(request_id, Pending { op, deadline_ms, internal });
        request_id
    }

    pub(super) fn transport_stale(&mut self, now_ms: i64) {
        self.transport_lost(now_ms);
        self.driver_events.push_back(DriverEvent::TransportStale);
    }

    pub(super) fn on_welcome(&mut self, now_ms: i64, ack: u64, w: Welcome) {
        let resumable = w.resumed
            && self.session_id.as_deref() == Some(w.session_id.as_str())
            && self.user_id.as_ref() == Some(&w.user_id);
        if !resumable {
            // A fresh session: whatever the old one held is gone.
            self.lose_session(now_ms, EndReason::NetworkError);
        }
        self.session_id = Some(w.session_id);
        self.user_id = Some(w.user_id);
        self.heartbeat_ms = match w.heartbeat_interval_ms {
            0 => self.config.default_heartbeat_interval_ms,
            n => n,
        };
        if self.heartbeat_ms > 0 {
            self.heartbeat_ms = self.heartbeat_ms.max(MIN_HEARTBEAT_MS);
        }
        self.liveness_ms = match w.liveness_timeout_ms {
            0 => 0,
            n => n.max(self.heartbeat_ms.saturating_mul(2)).max(MIN_HEARTBEAT_MS.saturating_mul(2)),
        };
        self.ice_servers = w.ice_servers;
        self.clock_offset_ms = Some(w.server_time_ms.saturating_sub(now_ms));
        self.awaiting_welcome = false;
        self.timers.stop(Timer::Hello);
        self.arm_liveness(now_ms);
        self.rx_unacked = 0;
        self.arm_heartbeat(now_ms);
        if resumable {
            let acked = w.last_received_seq.max(ack);
            self.outbox.ack(acked, |_, _| {});
            let replay: Vec<(u64, RequestId, Request)> = self
                .outbox
                .pending()
                .filter(|(seq, _)| *seq > acked)
                .map(|(seq, (request_id, request))| (seq, *request_id, request.clone()))
                .collect();
            for (seq, request_id, request) in replay {
                let frame = self.frame(seq, request_id, ClientBody::Request(request));
                self.transmits.push_back(frame);
            }
        }
        self.set_state(ConnectionState::Connected);
    }

    pub(super) fn on_hello_refused(&mut self, now_ms: i64, error: Error) {
        match error.code {
            Code::ResumeRejected => {
                // The session is gone: start over with a fresh Hello on a new transport.
                self.lose_session(now_ms, EndReason::NetworkError);
                self.transport_lost(now_ms);
                self.set_state(ConnectionState::Connecting);
                self.driver_events.push_back(DriverEvent::TransportStale);
            }
            Code::Internal | Code::RateLimited | Code::Timeout | Code::RtcServiceUnavailable => {
                self.transport_stale(now_ms);
            }
            _ => {
                self.events.push_back(ClientEvent::ConnectionRejected(error));
                self.lose_session(now_ms, EndReason::NetworkError);
                self.transport_lost(now_ms);
                self.set_state(ConnectionState::Disconnected);
            }
        }
    }

    /// `Kicked{ENDED_BY_SERVER}` is a server going away (a graceful shutdown), not a kick:
    /// the session is gone with it, but the next server (or the same one restarted) takes a
    /// fresh Hello, so the driver reconnects with backoff. Kicks by another login or by the
    /// operator stay final.
    pub(super) fn on_kicked(&mut self, now_ms: i64, reason: EndReason) {
        self.lose_session(now_ms, reason);
        self.transport_lost(now_ms);
        if reason == EndReason::EndedByServer {
            self.set_state(ConnectionState::Connecting);
            self.driver_events.push_back(DriverEvent::TransportStale);
        } else {
            self.set_state(ConnectionState::Kicked(reason));
        }
    }

    /// Ends every call with `reason`, fails every request with `NotConnected` and forgets the
    /// session, so the next Hello starts a fresh one.
    pub(super) fn lose_session(&mut self, now_ms: i64, reason: EndReason) {
        let mut ids: Vec<CallId> = Vec::with_capacity(self.calls.len());
        ids.extend(self.current.clone());
        ids.extend(self.calls.keys().filter(|id| Some(*id) != self.current.as_ref()).cloned());
        for id in ids {
            self.end_call(now_ms, &id, reason, None);
        }
        for (request_id, pending) in self.requests.drain() {
            if !pending.internal {
                self.driver_events.push_back(DriverEvent::RequestCompleted {
                    request_id,
                    result: Err(Error::new(
                        Code::NotConnected,
                        "the session was lost before the answer came",
                    )),
                });
            }
        }
        self.current = None;
        self.early.clear();
        self.abandoned_starts.clear();
        self.session_id = None;
        self.outbox = Outbox::new();
        self.inbox = Inbox::new(MAX_HELD_FRAMES);
        self.rx_unacked = 0;
        self.timers.stop(Timer::Ack);
    }

    /// Ends a live call here: `CallEnded`, and the call leaves the current / incoming slots.
    pub(super) fn end_call(&mut self, now_ms: i64, id: &CallId, reason: EndReason, last: Option<&CallInfo>) {
        let Some(call) = self.calls.remove(id) else { return };
        if self.current.as_ref() == Some(id) {
            self.current = None;
        }
        let at = self.server_time_ms(now_ms);
        let session = call.end(at, reason, last, &mut self.events);
        self.ended.insert(id.clone(), session.version());
    }
}
