//! The client's background task: owns the [`ClientEngine`] and the transport.
//!
//! One loop, in the order the engine documents: after every input (a server frame, an app
//! command, a timer, a transport change) drain `poll_transmit` into the connection,
//! `poll_driver_event` into the driver's own bookkeeping (request completions go to the awaiting
//! caller, a stale transport is replaced), `poll_event` into the app's stream (every event, none
//! filtered) and `poll_media` into the media executor, publish the getters' snapshot, then wait
//! for the next input or `poll_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use callplus_proto::v1 as pb;
use callplus_session::client::{
    ClientEngine, ClientEvent, ConnectionState, DriverEvent, MediaCommand, RequestId,
};
use callplus_session::{Code, Error, ResponseBody, UserId, wire};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::clock::EngineClock;
use super::transport::{Connecting, Connection, Transport, TransportError};
use super::{Command, Snapshot};

/// Where the engine's media commands go (the media executor), in order.
pub(super) type MediaSink = mpsc::UnboundedSender<MediaCommand>;

/// How long `disconnect` waits for the server to close the stream after the Goodbye.
const GOODBYE_LINGER: Duration = Duration::from_secs(2);

/// Jittered exponential backoff between reconnect attempts.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff { min, max: max.max(min), attempt: 0 }
    }

    /// The next delay: `min · 2^attempt`, capped at `max`, then a random point in its upper half.
    pub(super) fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let base = self.min.saturating_mul(factor).min(self.max);
        let half = base / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn connecting(attempt: &mut Option<Connecting>) -> Result<Connection, TransportError> {
    match attempt {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn receive(conn: &mut Option<Connection>) -> Option<Result<pb::ServerFrame, TransportError>> {
    match conn {
        Some(conn) => conn.rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) struct Driver {
    engine: ClientEngine,
    clock: EngineClock,
    transport: Arc<dyn Transport>,
    backoff: Backoff,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    events: mpsc::UnboundedSender<ClientEvent>,
    media: Option<MediaSink>,
    snapshot: Arc<Mutex<Snapshot>>,
    /// Answers `Client::connect` once: Welcome or why not.
    ready: Option<oneshot::Sender<Result<(), Error>>>,
    pending: HashMap<RequestId, oneshot::Sender<Result<ResponseBody, Error>>>,
    conn: Option<Connection>,
    attempt: Option<Connecting>,
    retry_at: Option<Instant>,
    /// Placeholder "me" for converting frames before the Welcome names the user.
    anonymous: UserId,
    finished: bool,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        engine: ClientEngine,
        clock: EngineClock,
        transport: Arc<dyn Transport>,
        backoff: Backoff,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<ClientEvent>,
        snapshot: Arc<Mutex<Snapshot>>,
        ready: oneshot::Sender<Result<(), Error>>,
    ) -> Self {
        #[allow(clippy::expect_used)]
        let anonymous = UserId::new("anonymous").expect("a valid id literal");
        Driver {
            engine,
            clock,
            transport,
            backoff,
            commands,
            commands_open: true,
            events,
            media: None,
            snapshot,
            ready: Some(ready),
            pending: HashMap::new(),
            conn: None,
            attempt: None,
            retry_at: None,
            anonymous,
            finished: false,
        }
    }

    /// Hands the engine's media commands to `media` (without it, media commands are dropped:
    /// the client runs no media).
    pub(super) fn with_media(mut self, media: Option<MediaSink>) -> Self {
        self.media = media;
        self
    }

    pub(super) async fn run(mut self) {
        self.attempt = Some(self.transport.connect());
        loop {
            self.drain();
            if self.finished {
                break;
            }
            let timer = self.engine.poll_timeout().map(|t| self.clock.instant_at(t));
            tokio::select! {
                frame = receive(&mut self.conn) => self.on_receive(frame),
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => self.on_command(command).await,
                    None => {
                        // Every Client handle is gone: leave cleanly.
                        self.commands_open = false;
                        self.goodbye().await;
                    }
                },
                result = connecting(&mut self.attempt) => {
                    self.attempt = None;
                    self.on_connected(result);
                }
                () = sleep_until_opt(timer) => self.engine.handle_timeout(self.clock.now_ms()),
                () = sleep_until_opt(self.retry_at) => {
                    self.retry_at = None;
                    tracing::debug!("reconnecting");
                    self.attempt = Some(self.transport.connect());
                }
            }
        }
        // Requests still waiting fail with NOT_CONNECTED when their senders drop here.
        self.publish();
        tracing::debug!(state = ?self.engine.connection_state(), "client task ends");
    }

    fn on_connected(&mut self, result: Result<Connection, TransportError>) {
        match result {
            Ok(conn) => {
                tracing::debug!("transport connected");
                self.conn = Some(conn);
                self.engine.transport_connected(self.clock.now_ms());
            }
            Err(TransportError::Refused(error)) => self.refused(error),
            Err(TransportError::Io(message)) => {
                tracing::debug!(%message, "connect attempt failed");
                if let Some(ready) = self.ready.take() {
                    let _ =
                        ready.send(Err(Error::new(Code::NotConnected, format!("cannot connect: {message}"))));
                    self.finished = true;
                } else {
                    self.schedule_retry();
                }
            }
        }
    }

    fn on_receive(&mut self, frame: Option<Result<pb::ServerFrame, TransportError>>) {
        match frame {
            Some(Ok(frame)) => {
                let me = self.engine.user_id().cloned().unwrap_or_else(|| self.anonymous.clone());
                match wire::server_frame_from_wire(frame, &me) {
                    Ok(frame) => self.engine.handle_frame(self.clock.now_ms(), frame),
                    Err(e) => tracing::warn!(error = %e, "dropping a server frame that does not convert"),
                }
            }
            Some(Err(TransportError::Refused(error))) => self.refused(error),
            Some(Err(TransportError::Io(message))) => self.lost(&message),
            None => self.lost("the server closed the stream"),
        }
    }

    /// The server refused the stream at the transport level (not in-band).
    fn refused(&mut self, error: Error) {
        tracing::info!(%error, "connection refused");
        self.conn = None;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        } else {
            let _ = self.events.send(ClientEvent::ConnectionRejected(error));
            self.engine.disconnect(self.clock.now_ms());
        }
        self.finished = true;
    }

    fn lost(&mut self, why: &str) {
        self.conn = None;
        if self.ready.is_some() && self.engine.connection_state() != ConnectionState::Connected {
            // The first connection never got its Welcome: report instead of retrying; the
            // engine may already have said why (ConnectionRejected) while draining.
            self.engine.transport_lost(self.clock.now_ms());
            self.drain();
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Err(Error::new(Code::NotConnected, format!("connection lost: {why}"))));
            }
            self.finished = true;
            return;
        }
        if self.stopped() {
            self.finished = true;
            return;
        }
        tracing::info!(why, "transport lost");
        self.engine.transport_lost(self.clock.now_ms());
        self.schedule_retry();
    }

    fn stopped(&self) -> bool {
        matches!(self.engine.connection_state(), ConnectionState::Disconnected | ConnectionState::Kicked(_))
    }

    fn schedule_retry(&mut self) {
        if self.attempt.is_some() || self.retry_at.is_some() || self.finished {
            return;
        }
        let delay = self.backoff.next_delay();
        tracing::debug!(?delay, "next reconnect attempt");
        self.retry_at = Some(Instant::now() + delay);
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Request { op, reply } => match op(&mut self.engine, self.clock.now_ms()) {
                Ok(id) => {
                    self.pending.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Input(input) => input(&mut self.engine, self.clock.now_ms()),
            Command::SetToken(token) => self.engine.set_token(token),
            Command::Disconnect { done } => {
                self.goodbye().await;
                let _ = done.send(());
            }
        }
    }

    /// Sends Goodbye, lets the server close the stream (bounded wait) and stops.
    async fn goodbye(&mut self) {
        self.engine.disconnect(self.clock.now_ms());
        self.drain();
        self.attempt = None;
        self.retry_at = None;
        if let Some(mut conn) = self.conn.take() {
            conn.close_send();
            let _ = tokio::time::timeout(GOODBYE_LINGER, async {
                while let Some(Ok(_)) = conn.rx.recv().await {}
            })
            .await;
        }
        self.finished = true;
    }

    /// Drains the engine's outputs: frames to the connection, events to their owners.
    ///
    /// The getters' snapshot is published before any event or answer is handed out, so an app
    /// that reacts to one (say, to `start_call` returning) sees the state that produced it.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(frame) = self.engine.poll_transmit() {
                progressed = true;
                if let Some(conn) = &self.conn {
                    conn.send(pb::ClientFrame::from(&frame));
                }
            }
            let mut driver_events = Vec::new();
            while let Some(event) = self.engine.poll_driver_event() {
                driver_events.push(event);
            }
            let mut batch = Vec::new();
            while let Some(event) = self.engine.poll_event() {
                batch.push(event);
            }
            let mut media = Vec::new();
            while let Some(command) = self.engine.poll_media() {
                media.push(command);
            }
            if batch.is_empty() && driver_events.is_empty() && media.is_empty() && !progressed {
                break;
            }
            self.publish();
            // Media first: a `CallConnected` the app reacts to (say, with a mute) finds the
            // call's media already on its way.
            if let Some(sink) = &self.media {
                for command in media {
                    let _ = sink.send(command);
                }
            }
            for event in driver_events {
                self.on_driver_event(event);
            }
            for event in batch {
                self.route(event);
            }
        }
        self.publish();
    }

    fn on_driver_event(&mut self, event: DriverEvent) {
        match event {
            DriverEvent::RequestCompleted { request_id, result } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(result);
                }
            }
            DriverEvent::TransportStale => {
                // The engine already counts the transport as lost; close it and retry.
                tracing::info!("transport stale");
                self.conn = None;
                self.attempt = None;
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(Error::new(Code::NotConnected, "no answer from the server")));
                    self.finished = true;
                } else if !self.stopped() {
                    self.schedule_retry();
                }
            }
        }
    }

    fn route(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::ConnectionRejected(error) => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(error.clone()));
                }
                let _ = self.events.send(ClientEvent::ConnectionRejected(error));
            }
            ClientEvent::ConnectionStateChanged(state) => {
                // Queued before `connect` returns, so the stream starts with it.
                let _ = self.events.send(ClientEvent::ConnectionStateChanged(state));
                match state {
                    ConnectionState::Connected => {
                        self.backoff.reset();
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    ConnectionState::Disconnected | ConnectionState::Kicked(_) => {
                        self.finished = true;
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Err(Error::new(Code::NotConnected, format!("{state:?}"))));
                        }
                    }
                    ConnectionState::Idle | ConnectionState::Connecting | ConnectionState::Reconnecting => {}
                }
            }
            other => {
                let _ = self.events.send(other);
            }
        }
    }

    fn publish(&self) {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now_ms();
        snapshot.server_offset_ms = self.engine.server_time_ms(now).saturating_sub(now);
        snapshot.state = self.engine.connection_state();
        snapshot.user_id = self.engine.user_id().cloned();
        snapshot.current = self.engine.current_call().cloned();
        if snapshot.ice_servers.as_slice() != self.engine.ice_servers() {
            snapshot.ice_servers = self.engine.ice_servers().to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jitters_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[2] >= Duration::from_millis(200) && delays[2] <= Duration::from_millis(400));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1000)));
        assert!(delays[7] >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
