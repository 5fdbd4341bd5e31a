//! `callplus sfu`: a selective forwarding unit as its own process, driven by signalling servers
//! over `MediaRelay.Attach` streams.
//!
//! Each attached server sends the SFU work of its calls; the SFU's events for a call go back on
//! the stream that last sent work for that call, so several servers (the nodes of one
//! deployment) can share one SFU. A stream that ends takes its calls' connections with it: the
//! server, when it attaches again, reports its participants' media as failed and the
//! switchboard routes them afresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use callplus_proto::v1 as pb;
use callplus_proto::v1::media_relay_server::{MediaRelay, MediaRelayServer};
use callplus_session::{CallId, MediaKind};
use callplus_sfu::{Sfu, SfuConfig, SfuEvent, SfuEvents};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::secret::MediaSecret;
use super::wire::{self, Participant};
use crate::server::ServerTls;

/// What the attach refusal says: the one configuration mistake it can be.
pub const WRONG_SECRET: &str =
    "wrong media secret: the signalling server's --media-secret-file differs from the SFU's";

/// How long a shutdown waits for the attached servers to close their streams.
pub const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings of an SFU process.
#[derive(Debug, Clone)]
pub struct SfuNodeOptions {
    /// TCP address of the relay service signalling servers attach to.
    pub listen: String,
    /// UDP addresses the media connections bind to.
    pub media_listen: Vec<String>,
    /// The secret shared with the signalling servers.
    pub secret: MediaSecret,
    /// The certificate and key the relay service presents; plaintext HTTP/2 without. The
    /// attach proof and the participants' media tokens cross this link, so anything beyond a
    /// private network wants it.
    pub tls: Option<ServerTls>,
}

/// Why an SFU process cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SfuNodeError {
    /// The relay address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("invalid relay TLS certificate or key: {0}")]
    Tls(String),
}

/// A running SFU process: its relay service and the SFU.
pub struct SfuNode {
    addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl std::fmt::Debug for SfuNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuNode").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl SfuNode {
    /// Binds the relay service and starts the SFU.
    ///
    /// # Errors
    /// The relay address cannot be bound.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(options: SfuNodeOptions) -> Result<SfuNode, SfuNodeError> {
        let bind = |source| SfuNodeError::Bind { addr: options.listen.clone(), source };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &options.tls {
            builder = builder.tls_config(tls.tonic_config()).map_err(|e| SfuNodeError::Tls(e.to_string()))?;
        }
        let listener = TcpListener::bind(&options.listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (sfu, events) = Sfu::new(SfuConfig {
            bind_addrs: options.media_listen.clone(),
            ice_servers: Vec::new(),
            token_secret: options.secret.token_key(),
        });
        let routes = Arc::new(Mutex::new(Routes::default()));
        tokio::spawn(pump_events(events, routes.clone()));
        let relay = Relay {
            sfu: Arc::new(sfu),
            secret: options.secret,
            routes: routes.clone(),
            next_id: AtomicU64::new(1),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(
            builder.add_service(MediaRelayServer::new(relay)).serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
        );
        Ok(SfuNode { addr, routes, stop: Some(stop), task })
    }

    /// The relay service's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the relay service stops (it fails, or [`SfuNode::shutdown`]).
    ///
    /// # Errors
    /// The service failed.
    pub async fn stopped(&mut self) -> Result<(), tonic::transport::Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "sfu relay task ended");
                Ok(())
            }
        }
    }

    /// Stops accepting and closes the attached streams (their servers then attach elsewhere or
    /// again later); waits at most [`SHUTDOWN_WAIT`] for them to go.
    ///
    /// # Errors
    /// The service failed.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // An attach stream lasts as long as its server: end the event half here, or the
        // graceful shutdown would wait for it forever.
        lock(&self.routes).attachments.clear();
        match tokio::time::timeout(SHUTDOWN_WAIT, self.stopped()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("attached servers did not close their streams; stopping anyway");
                self.task.abort();
                Ok(())
            }
        }
    }
}

type EventTx = mpsc::UnboundedSender<Result<pb::RelayEvent, Status>>;

/// Which attached stream each call's events go to.
#[derive(Default)]
struct Routes {
    attachments: HashMap<u64, EventTx>,
    calls: HashMap<CallId, u64>,
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    // The map stays consistent under every operation: a panic elsewhere does not spoil it.
    routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends each SFU event on the stream of the server that owns its call.
async fn pump_events(mut events: SfuEvents, routes: Arc<Mutex<Routes>>) {
    use pb::relay_event::Body;
    while let Some(event) = events.recv().await {
        let (call_id, body) = match event {
            SfuEvent::Signal { call_id, to_user, to_device, payload } => {
                let signal = wire::signal_to_wire(&call_id, &to_user, &to_device, &payload);
                (call_id, Body::Signal(signal))
            }
            SfuEvent::ParticipantConnected { call_id, user, device } => {
                let p = wire::participant_to_wire(&call_id, &user, &device);
                (call_id, Body::Connected(p))
            }
            SfuEvent::ParticipantFailed { call_id, user, device } => {
                let p = wire::participant_to_wire(&call_id, &user, &device);
                (call_id, Body::Failed(p))
            }
            other => {
                tracing::debug!(event = ?other, "sfu event not relayed");
                continue;
            }
        };
        let routes = lock(&routes);
        let tx = routes.calls.get(&call_id).and_then(|id| routes.attachments.get(id));
        match tx {
            Some(tx) => {
                let _ = tx.send(Ok(pb::RelayEvent { body: Some(body) }));
            }
            None => tracing::debug!(call = %call_id, "sfu event for a call no server drives"),
        }
    }
}

struct Relay {
    sfu: Arc<Sfu>,
    secret: MediaSecret,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
}

#[tonic::async_trait]
impl MediaRelay for Relay {
    type AttachStream = UnboundedReceiverStream<Result<pb::RelayEvent, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::RelayCommand>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = request.remote_addr();
        let proof = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !proof.is_some_and(|p| self.secret.verify_attach_proof(p)) {
            tracing::warn!(?peer, "refused a signalling server: wrong media secret");
            return Err(Status::unauthenticated(WRONG_SECRET));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.routes).attachments.insert(id, tx);
        tracing::info!(?peer, attachment = id, "signalling server attached");
        let (sfu, routes) = (self.sfu.clone(), self.routes.clone());
        tokio::spawn(apply_commands(id, request.into_inner(), sfu, routes));
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// Applies one server's commands in order; when its stream ends, ends the calls it drove.
async fn apply_commands(
    id: u64,
    mut commands: Streaming<pb::RelayCommand>,
    sfu: Arc<Sfu>,
    routes: Arc<Mutex<Routes>>,
) {
    loop {
        match commands.next().await {
            Some(Ok(command)) => apply(id, command, &sfu, &routes).await,
            Some(Err(status)) => {
                tracing::info!(attachment = id, error = %status, "signalling server stream failed");
                break;
            }
            None => break,
        }
    }
    let calls: Vec<CallId> = {
        let mut routes = lock(&routes);
        routes.attachments.remove(&id);
        let calls = routes.calls.iter().filter(|(_, a)| **a == id).map(|(c, _)| c.clone()).collect();
        routes.calls.retain(|_, a| *a != id);
        calls
    };
    tracing::info!(attachment = id, calls = calls.len(), "signalling server detached; ending its calls");
    for call_id in calls {
        if let Err(e) = sfu.end_call(&call_id).await {
            tracing::debug!(call = %call_id, error = %e, "sfu end of call");
        }
    }
}

async fn apply(id: u64, command: pb::RelayCommand, sfu: &Sfu, routes: &Mutex<Routes>) {
    use pb::relay_command::Body;
    let result = match command.body {
        Some(Body::Signal(signal)) => match wire::signal_from_wire(signal) {
            Ok((Participant { call_id, user, device }, payload)) => {
                lock(routes).calls.insert(call_id.clone(), id);
                sfu.handle_signal(&call_id, &user, &device, payload).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
        Some(Body::Leave(p)) => match wire::participant_from_wire(&p) {
            Ok(Participant { call_id, user, device }) => {
                sfu.remove_participant(&call_id, &user, &device).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
        Some(Body::Pause(pause)) => {
            let who = pause.participant.as_ref().map(wire::participant_from_wire);
            match (who, MediaKind::try_from(pause.kind)) {
                (Some(Ok(Participant { call_id, user, device })), Ok(kind)) => sfu
                    .set_paused(&call_id, &user, &device, kind, pause.paused)
                    .await
                    .map_err(|e| e.to_string()),
                (Some(Err(e)), _) => Err(e.to_string()),
                (None, _) => Err("a pause without its participant".to_owned()),
                (_, Err(e)) => Err(e.to_string()),
            }
        }
        Some(Body::EndCall(end)) => match CallId::new(&end.call_id) {
            Ok(call_id) => {
                lock(routes).calls.remove(&call_id);
                sfu.end_call(&call_id).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
        None => Err("an empty command".to_owned()),
    };
    if let Err(error) = result {
        tracing::info!(attachment = id, %error, "sfu refused a relay command");
    }
}
