//! The signalling server: storage, the switchboard driver, the gRPC and WebSocket transports,
//! the push webhook and the admin HTTP API, started together by [`Server::builder`].
//!
//! ```no_run
//! # async fn run() -> Result<(), callplus_server::server::ServerError> {
//! use callplus_server::server::Server;
//!
//! let server = Server::builder()
//!     .data_dir("./callplus-data")
//!     .listen("127.0.0.1:7700")
//!     .admin_listen("127.0.0.1:7701")
//!     .start()
//!     .await?;
//! println!("gRPC on {}, admin on {:?}", server.grpc_addr(), server.admin_addr());
//! callplus_server::server::shutdown::signal().await;
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Shutdown stops accepting, lets the switchboard end every session and call
//! (`ENDED_BY_SERVER`), writes their last frames, records and offline events, and flushes
//! storage before it returns. Calls that were live when a server crashed are ended on the next
//! start, with NETWORK_ERROR, at the last moment the crashed server noted it was running.

mod admin;
mod auth;
pub mod config;
mod connection;
mod deadline_timer;
mod device_port;
mod driver;
mod driver_reads;
mod fd_limit;
mod frame_scratch;
mod grpc;
mod grpc_framing;
mod inbound_frames;
mod media_relay;
mod media_relay_pool;
mod media_relay_remote;
mod media_token_issuer;
mod metrics;
mod outbound;
mod presence;
mod push;
mod push_lanes;
mod routing;
pub mod shutdown;
mod signal_thread;
mod silence;
mod tls;
mod tls_listener;
mod web_page;
mod websocket;
mod ws_framing;
mod ws_handshake;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use callplus_session::CallId;
use callplus_session::switchboard::{Switchboard, SwitchboardConfig, owner_node};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use admin::{MAX_CLOCK_SKEW_SECS, sign_request};
pub use config::ServerOptions;
pub use media_relay::{SFU_DEVICE, SFU_USER};
pub use push::{PushPayload, push_config_json};
pub use tls::ServerTls;
pub use websocket::{PATH as WEBSOCKET_PATH, SUBPROTOCOL as WEBSOCKET_SUBPROTOCOL};

use crate::storage::{BatchWriter, PostgresStorage, SqliteStorage, Storage, StorageError, WriteOp};
use crate::token::{self, AppCredentials};
use driver::{Driver, DriverHandle, Input};

/// Where `callplus serve` listens for devices by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
/// Where the admin API listens by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7701";
/// Room in a connection's queue beyond `max_unacked_frames`, for unsequenced frames.
const OUTBOUND_SLACK: usize = 256;
/// Room in a connection's queue beyond `max_unacked_bytes`, for unsequenced frames.
const OUTBOUND_SLACK_BYTES: usize = 1 << 20;
/// How long past the Hello timeout a device-port connection with no authenticated Hello is
/// kept (the stream's own timeout answers first, with TIMEOUT).
const SILENT_CONNECTION_GRACE: Duration = Duration::from_secs(1);
/// Most admin-port connections open at once.
const MAX_ADMIN_CONNECTIONS: usize = 256;

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./callplus-data";

/// Why a server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Storage could not be opened, read or flushed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The push webhook's URL or CA is unusable.
    #[error("push webhook: {0}")]
    Push(String),
    /// The TLS certificate or key cannot be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The switchboard settings cannot work together.
    #[error("configuration: {0}")]
    Config(#[from] callplus_session::switchboard::ConfigError),
    /// Storage holds no app and creating one was disabled.
    #[error("storage holds no app; start once with default app creation enabled")]
    NoApp,
    /// A background task failed.
    #[error("internal: {0}")]
    Internal(String),
    /// Redis (`serve --redis`) could not be reached at start.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Entry point: [`Server::builder`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with the defaults of `callplus serve`.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

/// Whether a node of several holds its own takeover lock while it ends the calls saved by its
/// last run.
enum OwnLock {
    /// Held: the calls are taken over (their leases, for the fencing token of their ends'
    /// writes) and ended; the lock is released once the ends are committed.
    Held(Box<(crate::cluster::Takeovers, crate::cluster::CallLeases)>),
    /// Another node holds it: that node is ending them.
    Taken,
    /// Not tried (no Redis, or Redis refused): they are ended here, as a single node does.
    Untried,
}

enum StorageSpec {
    DataDir(PathBuf),
    InMemory,
    Postgres(String),
    Custom(Arc<dyn Storage>),
}

/// Configures and starts a server.
pub struct ServerBuilder {
    storage: StorageSpec,
    listen: String,
    admin_listen: Option<String>,
    config: SwitchboardConfig,
    options: ServerOptions,
    tls: Option<ServerTls>,
    admin_tls: Option<ServerTls>,
    cluster: Option<crate::cluster::ClusterConfig>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("config", &self.config)
            .field("options", &self.options)
            .field("tls", &self.tls)
            .field("admin_tls", &self.admin_tls)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            storage: StorageSpec::DataDir(PathBuf::from(DEFAULT_DATA_DIR)),
            listen: DEFAULT_LISTEN.to_owned(),
            admin_listen: Some(DEFAULT_ADMIN_LISTEN.to_owned()),
            config: SwitchboardConfig::default(),
            options: ServerOptions::default(),
            tls: None,
            admin_tls: None,
            cluster: None,
        }
    }
}

impl ServerBuilder {
    /// Stores everything in SQLite under `dir` (created if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = StorageSpec::DataDir(dir.into());
        self
    }

    /// Stores everything in a private in-memory database (lost at shutdown; for tests).
    pub fn in_memory(mut self) -> Self {
        self.storage = StorageSpec::InMemory;
        self
    }

    /// Stores everything in the PostgreSQL database at `url` (migrated at start) instead of
    /// SQLite.
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.storage = StorageSpec::Postgres(url.into());
        self
    }

    /// Uses this storage engine.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = StorageSpec::Custom(storage);
        self
    }

    /// The device port's listen address, gRPC and WebSocket (`127.0.0.1:0` for an ephemeral
    /// port).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// The admin HTTP listen address.
    pub fn admin_listen(mut self, addr: impl Into<String>) -> Self {
        self.admin_listen = Some(addr.into());
        self
    }

    /// Serves devices over TLS with this certificate and key (`https://` and `wss://`
    /// endpoints); without it the device port is plaintext.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves the admin API over TLS with this certificate and key (`https://`); without it
    /// the admin API is plaintext HTTP.
    pub fn admin_tls(mut self, tls: ServerTls) -> Self {
        self.admin_tls = Some(tls);
        self
    }

    /// Runs no admin API.
    pub fn no_admin(mut self) -> Self {
        self.admin_listen = None;
        self
    }

    /// Runs as one node of several (`serve --redis URL --node-id ID`): the node id leads every
    /// call and session id, and each device's session is kept in Redis presence (registered at
    /// its Welcome, renewed by its heartbeats, removed when the session ends). Redis must be
    /// reachable at start; later outages do not stop signalling. Routing between nodes is not
    /// wired yet.
    pub fn cluster(mut self, cluster: crate::cluster::ClusterConfig) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The switchboard's rules and timers.
    pub fn config(mut self, config: SwitchboardConfig) -> Self {
        self.config = config;
        self
    }

    /// Transport and delivery settings.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// POSTs push notifications for offline callees to `url`.
    pub fn push_webhook(mut self, url: impl Into<String>) -> Self {
        self.options.push_webhook = Some(url.into());
        self
    }

    /// Trusts only the authorities in `pem` for an `https://` push webhook.
    pub fn push_webhook_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.options.push_webhook_ca_pem = Some(pem.into());
        self
    }

    /// How long a new stream may take to send its Hello.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.options.hello_timeout = timeout;
        self
    }

    /// Frames queued per connection before a slow connection is closed.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.options.outbound_queue = frames;
        self
    }

    /// How long an admin-port connection may take to send a complete request.
    pub fn admin_request_timeout(mut self, timeout: Duration) -> Self {
        self.options.admin_request_timeout = timeout;
        self
    }

    /// Most device-port connections open at once (0 = no limit).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.options.max_connections = connections;
        self
    }

    /// Most device sessions one user may have at once (0 = no limit); a Hello from a further
    /// device is refused with TOO_MANY_DEVICES. Sets the switchboard's `max_devices_per_user`.
    pub fn max_devices_per_user(mut self, devices: usize) -> Self {
        self.config.max_devices_per_user = devices;
        self
    }

    /// Runs the selective forwarding unit MULTI calls' media goes through (on by default), or
    /// not (every call's media peer to peer).
    pub fn sfu(mut self, enabled: bool) -> Self {
        self.options.sfu = enabled;
        self
    }

    /// MULTI calls made with at most `participants` (creator included) stay peer to peer; 0
    /// (the default) sends every MULTI call's media through the SFU.
    pub fn mesh_max(mut self, participants: usize) -> Self {
        self.options.mesh_max = participants;
        self
    }

    /// The local UDP address the SFU's connections bind to (`"127.0.0.1:0"` in tests).
    pub fn media_listen(mut self, addr: impl Into<String>) -> Self {
        self.options.media_listen = vec![addr.into()];
        self
    }

    /// Drives the SFU process (`callplus sfu`) `remote` names instead of running the SFU in
    /// this server (`serve --sfu-url`). Called again, adds another: each call's media is then
    /// placed on one of them, and moves to another when its SFU is lost. They all share one
    /// media secret.
    pub fn remote_sfu(mut self, remote: crate::relay::RemoteSfu) -> Self {
        self.options.remote_sfus.push(remote);
        self
    }

    /// Opens storage, ends calls interrupted by the last stop, binds the listeners and starts
    /// serving.
    ///
    /// # Errors
    /// [`ServerError::Storage`] when storage cannot be opened or read, [`ServerError::Bind`]
    /// when an address cannot be bound, [`ServerError::Tls`] for an unusable certificate or
    /// key, [`ServerError::Push`] for an unusable webhook URL or CA, [`ServerError::Config`] for
    /// settings that cannot work together (a liveness timeout under twice the heartbeat),
    /// [`ServerError::NoApp`].
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let ServerBuilder { storage, listen, admin_listen, mut config, options, tls, admin_tls, cluster } =
            self;
        if let Some(cluster) = &cluster {
            // The node id leads this node's call and session ids.
            config.node_id = cluster.node_id.as_str().to_owned();
        }
        config.validate()?;
        // Presence entries live three heartbeat intervals unless renewed (docs/architecture.md).
        let presence_ttl = Duration::from_millis(u64::from(config.heartbeat_interval_ms) * 3);
        let (presence, routing, own_lock) = match &cluster {
            Some(cluster) => {
                let conn = crate::cluster::connect(&cluster.client).await?;
                let presence =
                    crate::cluster::Presence::new(conn.clone(), cluster.node_id.clone(), presence_ttl);
                // The inbox reader blocks its connection while it waits: it gets its own.
                let reader_conn = crate::cluster::connect(&cluster.client).await?;
                let routing = routing::Routing {
                    node: cluster.node_id.clone(),
                    outbox: crate::cluster::Outbox::new(conn.clone(), cluster.node_id.clone()),
                    takeovers: crate::cluster::Takeovers::new(conn.clone(), cluster.node_id.clone()),
                    leases: crate::cluster::CallLeases::new(
                        conn,
                        cluster.node_id.clone(),
                        crate::cluster::LEASE_TTL,
                    ),
                    presence: presence.clone(),
                    reader: crate::cluster::InboxReader::new(reader_conn, &cluster.node_id),
                };
                // This node's own calls saved by its last run are ended either here (below) or
                // by the survivor that noticed it was lost, never both: whoever holds this
                // node's takeover lock ends them (docs/architecture.md, "Owner death").
                let own_lock = match routing.takeovers.acquire(cluster.node_id.as_str()).await {
                    Ok(true) => OwnLock::Held(Box::new((routing.takeovers.clone(), routing.leases.clone()))),
                    Ok(false) => OwnLock::Taken,
                    Err(e) => {
                        tracing::warn!(error = %e, "own takeover lock not tried; ending own saved calls");
                        OwnLock::Untried
                    }
                };
                (Some(presence), Some(routing), own_lock)
            }
            None => (None, None, OwnLock::Untried),
        };
        let device_acceptor = tls.as_ref().map(ServerTls::acceptor).transpose()?;
        let admin_acceptor = match (&admin_tls, &admin_listen) {
            (Some(tls), Some(_)) => Some(tls.acceptor()?),
            _ => None,
        };
        let push_client = match &options.push_webhook {
            Some(url) => Some(
                push::http_client(url, options.push_webhook_ca_pem.as_deref(), options.push_timeout)
                    .map_err(ServerError::Push)?,
            ),
            None => None,
        };
        let (storage, data_dir): (Arc<dyn Storage>, Option<PathBuf>) = match storage {
            StorageSpec::DataDir(dir) => {
                let d = dir.clone();
                let opened = blocking(move || SqliteStorage::open(&d)).await??;
                (Arc::new(opened), Some(dir))
            }
            StorageSpec::InMemory => (Arc::new(SqliteStorage::open_in_memory()?), None),
            StorageSpec::Postgres(url) => {
                (Arc::new(blocking(move || PostgresStorage::open(&url)).await??), None)
            }
            StorageSpec::Custom(s) => (s, None),
        };
        let create = options.create_default_app;
        let st = storage.clone();
        let loaded = blocking(move || -> Result<_, StorageError> {
            let mut apps = st.apps()?;
            let mut created = false;
            if apps.is_empty() && create {
                let app = token::generate_app();
                st.insert_app(&app)?;
                apps.push(app);
                created = true;
            }
            Ok((apps, created, st.max_sync_time()?, st.active_calls()?, st.alive_mark()?))
        })
        .await??;
        let (apps, created, max_sync_time, active_calls, alive_mark) = loaded;
        let app = apps.first().cloned().ok_or(ServerError::NoApp)?;
        if created {
            tracing::info!(app_key = %app.app_key, "created the default app");
        }

        let listener = bind(&listen).await?;
        let grpc_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: listen, source })?;
        let admin_listener = match &admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin_addr = match (&admin_listener, admin_listen) {
            (Some(l), Some(addr)) => {
                Some(l.local_addr().map_err(|source| ServerError::Bind { addr, source })?)
            }
            _ => None,
        };

        let metrics = Arc::new(metrics::Metrics::new());
        let writer = Arc::new(BatchWriter::spawn(storage.clone()));
        config.push_enabled = config.push_enabled && options.push_webhook.is_some();
        // A resuming device gets up to `max_unacked_frames` frames at once: they must fit.
        let outbound_queue =
            options.outbound_queue.max(config.max_unacked_frames.saturating_add(OUTBOUND_SLACK));
        let outbound_queue_bytes =
            options.outbound_queue_bytes.max(config.max_unacked_bytes.saturating_add(OUTBOUND_SLACK_BYTES));
        let admin_connections = if admin_listener.is_some() { MAX_ADMIN_CONNECTIONS } else { 0 };
        fd_limit::check(
            fd_limit::needed(options.max_connections, admin_connections),
            options.max_connections,
        );
        let mut switchboard = Switchboard::new(config);
        switchboard.set_min_sync_time(max_sync_time);
        let (push_tx, push_rx) = match &options.push_webhook {
            Some(_) => {
                let (tx, rx) = mpsc::channel(push::PUSH_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let sfu = options.sfu.then(|| {
            media_relay::start(&media_relay::SfuSettings {
                bind_addrs: options.media_listen.clone(),
                mesh_max: options.mesh_max,
                token_ttl: options.media_token_ttl,
                remote: options.remote_sfus.clone(),
            })
        });
        let sfu_task = sfu.map(|(router, commands, task)| {
            switchboard.set_media_router(router);
            (commands, task)
        });
        let (mut driver, handle) =
            Driver::new(switchboard, storage.clone(), writer.clone(), push_tx, metrics.clone());
        if let Some((commands, task)) = sfu_task {
            driver.set_sfu(commands);
            tokio::spawn(task.run(handle.clone()));
        }
        if let Some(presence) = presence {
            driver.set_presence(presence::spawn(presence, metrics.clone()));
        }
        if let Some(routing) = routing {
            driver.set_routing(routing::spawn(routing, handle.clone(), metrics.clone()));
        }
        // A node of several shares the table with the other nodes: it ends only the calls it
        // owned itself (their ids lead with its node id); the others' calls are live.
        let node = cluster.as_ref().map(|c| c.node_id.as_str().to_owned());
        let active_calls: Vec<_> = active_calls
            .into_iter()
            .filter(|row| match &node {
                Some(node) => {
                    CallId::new(&row.call_id).ok().as_ref().and_then(owner_node) == Some(node.as_str())
                }
                None => true,
            })
            .collect();
        let (recovered, undecodable) = driver::decode_calls(active_calls);
        if !undecodable.is_empty() {
            writer.submit(WriteOp::RemoveCalls(undecodable));
        }
        match own_lock {
            OwnLock::Taken => {
                tracing::warn!(
                    calls = recovered.len(),
                    "another node is ending this node's calls from its last run; not ending them here"
                );
                driver.recover(Vec::new(), alive_mark);
            }
            OwnLock::Untried => driver.recover(recovered, alive_mark),
            OwnLock::Held(held) => {
                let (takeovers, leases) = *held;
                // The previous run of this node may only have paused: the ends carry a fencing
                // token past its own (docs/architecture.md, "Fencing").
                let taken =
                    routing::take_calls(&leases, node.as_deref().unwrap_or_default(), recovered).await;
                let recovered = driver.taken_over(taken);
                driver.recover(recovered, alive_mark);
                // Given back once the ends are committed.
                let (writer, node) = (writer.clone(), node.clone().unwrap_or_default());
                tokio::spawn(async move {
                    let flushed = blocking(move || writer.flush()).await;
                    if matches!(flushed, Ok(Ok(()))) {
                        let _ = takeovers.release(&node).await;
                    }
                });
            }
        }

        // The driver and the device port run on the signalling thread (see `signal_thread`).
        let signal = signal_thread::SignalThread::start()
            .map_err(|e| ServerError::Internal(format!("cannot start the signalling thread: {e}")))?;
        let (fatal_tx, fatal_rx) = watch::channel(false);
        let driver_join = signal.handle().spawn(driver.run());
        let fatal = fatal_tx.clone();
        let driver_task = tokio::spawn(async move {
            if let Err(e) = driver_join.await {
                tracing::error!(error = %e, "the switchboard driver failed");
                let _ = fatal.send(true);
            }
        });

        let push_task = match (push_rx, push_client, &options.push_webhook) {
            (Some(rx), Some(client), Some(url)) => {
                let settings = push::PushSettings {
                    url: url.clone(),
                    attempts: options.push_attempts,
                    backoff: options.push_backoff,
                };
                Some(tokio::spawn(push::run(settings, client, rx, handle.clone(), metrics.clone())))
            }
            _ => None,
        };

        let auth = Arc::new(auth::Auth::new(storage.clone(), &apps));
        let (stopping, stopping_rx) = watch::channel(false);
        let shared = Arc::new(connection::Shared {
            driver: handle.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            hello_timeout: options.hello_timeout,
            outbound_queue,
            outbound_queue_bytes,
            next_conn: AtomicU64::new(1),
            stopping: stopping_rx,
        });
        let device_app = grpc::router(shared.clone())
            .merge(websocket::router(shared))
            .merge(web_page::router())
            .fallback(grpc::unimplemented);
        let (grpc_stop, grpc_stop_rx) = oneshot::channel::<()>();
        let fatal = fatal_tx.clone();
        let device_guard = silence::Guard {
            mode: silence::Mode::UntilGreeted,
            timeout: options.hello_timeout.saturating_add(SILENT_CONNECTION_GRACE),
            port: "device",
            metrics: metrics.clone(),
        };
        let max_connections = options.max_connections;
        // Registered again with the signalling thread's I/O driver, as the connections it
        // accepts will be.
        let listener = listener
            .into_std()
            .map_err(|source| ServerError::Bind { addr: grpc_addr.to_string(), source })?;
        let grpc_task = signal.handle().spawn(async move {
            let served = match TcpListener::from_std(listener) {
                Ok(listener) => {
                    let listener =
                        silence::GuardedListener::spawn(listener, grpc_addr, device_guard, max_connections);
                    device_port::serve(listener, device_acceptor, device_app, grpc_stop_rx).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "the device port failed");
                let _ = fatal.send(true);
            }
        });

        let (admin_stop, admin_task) = match (admin_listener, admin_addr) {
            (Some(listener), Some(local)) => {
                let state = Arc::new(admin::AdminState {
                    auth,
                    metrics: metrics.clone(),
                    driver: handle.clone(),
                    storage: storage.clone(),
                });
                let (stop, stop_rx) = oneshot::channel::<()>();
                let app = admin::router(state);
                let fatal = fatal_tx.clone();
                let admin_guard = silence::Guard {
                    mode: silence::Mode::PerRequest,
                    timeout: options.admin_request_timeout,
                    port: "admin",
                    metrics: metrics.clone(),
                };
                let task = tokio::spawn(async move {
                    let listener =
                        silence::GuardedListener::spawn(listener, local, admin_guard, MAX_ADMIN_CONNECTIONS);
                    let served = match admin_acceptor {
                        Some(acceptor) => {
                            let listener = tls_listener::TlsListener::new(listener, acceptor);
                            serve_admin(listener, app, stop_rx).await
                        }
                        None => serve_admin(listener, app, stop_rx).await,
                    };
                    if let Err(e) = served {
                        tracing::error!(error = %e, "the admin server failed");
                        let _ = fatal.send(true);
                    }
                });
                (Some(stop), Some(task))
            }
            _ => (None, None),
        };
        tracing::info!(%grpc_addr, ?admin_addr, "callplus server started");

        Ok(RunningServer {
            grpc_addr,
            tls: tls.is_some(),
            admin_tls: admin_tls.is_some(),
            admin_addr,
            app,
            created_app: created,
            data_dir,
            storage,
            writer,
            driver: handle,
            drain_timeout: options.drain_timeout,
            stopping,
            grpc_stop: Some(grpc_stop),
            admin_stop,
            grpc_task,
            admin_task,
            driver_task,
            push_task,
            fatal: fatal_rx,
            _signal: signal,
        })
    }
}

/// Serves the admin API on `listener` (plain TCP, or TLS) until `stop` fires.
async fn serve_admin<L>(listener: L, app: axum::Router, stop: oneshot::Receiver<()>) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await
}

async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr: addr.to_owned(), source })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServerError::Internal(format!("blocking task: {e}")))
}

/// A started server. Stop it with [`RunningServer::shutdown`]. Dropping it without shutdown
/// stops the device port and the switchboard at once, as a crash would (no goodbyes, no last
/// frames; what the storage writer already has is still written); its other tasks run until
/// the runtime stops.
pub struct RunningServer {
    grpc_addr: SocketAddr,
    tls: bool,
    admin_tls: bool,
    admin_addr: Option<SocketAddr>,
    app: AppCredentials,
    created_app: bool,
    data_dir: Option<PathBuf>,
    storage: Arc<dyn Storage>,
    writer: Arc<BatchWriter>,
    driver: DriverHandle,
    drain_timeout: Duration,
    stopping: watch::Sender<bool>,
    grpc_stop: Option<oneshot::Sender<()>>,
    admin_stop: Option<oneshot::Sender<()>>,
    grpc_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    driver_task: JoinHandle<()>,
    push_task: Option<JoinHandle<()>>,
    fatal: watch::Receiver<bool>,
    /// Last, so that it stops after everything above is dropped.
    _signal: signal_thread::SignalThread,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("app", &self.app)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// Where devices connect (gRPC over HTTP/2; TLS when [`ServerBuilder::tls`] was given).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The endpoint devices pass to `Client::connect`: `https://ADDR` with TLS, else
    /// `http://ADDR`.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// The URL browsers (and other WebSocket clients) open: `wss://ADDR/v1/ws` with TLS, else
    /// `ws://ADDR/v1/ws`.
    pub fn websocket_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.grpc_addr, websocket::PATH)
    }

    /// Where the admin API listens, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The admin API's base URL (`https://ADDR` with [`ServerBuilder::admin_tls`], else
    /// `http://ADDR`), if it runs.
    pub fn admin_url(&self) -> Option<String> {
        let scheme = if self.admin_tls { "https" } else { "http" };
        self.admin_addr.map(|addr| format!("{scheme}://{addr}"))
    }

    /// The first app in storage (the default app on a fresh data directory).
    pub fn app_credentials(&self) -> &AppCredentials {
        &self.app
    }

    /// Whether this start created the default app (a fresh data directory).
    pub fn created_app(&self) -> bool {
        self.created_app
    }

    /// The data directory, for a file-backed server.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The storage engine.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// Mints a token for `user_id` of the server's first app, valid for `ttl`.
    ///
    /// # Errors
    /// When the user id is invalid or the TTL is zero.
    pub fn mint_token(&self, user_id: &str, ttl: Duration) -> Result<String, token::TokenError> {
        let now = u64::try_from(driver::unix_ms() / 1000).unwrap_or(0);
        token::mint(&self.app.app_key, &self.app.app_secret, user_id, now, ttl.as_secs())
    }

    /// Resolves if a part of the server stopped unexpectedly (then call `shutdown` and exit).
    pub async fn failed(&mut self) {
        while !*self.fatal.borrow_and_update() {
            if self.fatal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops gracefully: stops accepting, ends every session and call (`ENDED_BY_SERVER`),
    /// writes the last frames, records and offline events, flushes storage, and waits for the
    /// listeners to close.
    ///
    /// # Errors
    /// [`ServerError::Storage`] when the final flush reported failed writes.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        tracing::info!("stopping: no new connections");
        let _ = self.stopping.send(true);
        if let Some(stop) = self.grpc_stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.admin_stop.take() {
            let _ = stop.send(());
        }
        let (done, flushed) = oneshot::channel();
        let flushed = if self.driver.send(Input::Shutdown { done }).await {
            flushed.await.unwrap_or(Err(StorageError::Closed))
        } else {
            Err(StorageError::Closed)
        };
        let _ = (&mut self.driver_task).await;
        if tokio::time::timeout(self.drain_timeout, &mut self.grpc_task).await.is_err() {
            tracing::warn!("connections did not close in time; dropping them");
            self.grpc_task.abort();
        }
        if let Some(mut task) = self.admin_task.take()
            && tokio::time::timeout(self.drain_timeout, &mut task).await.is_err()
        {
            task.abort();
        }
        if let Some(task) = self.push_task.take() {
            task.abort();
        }
        let writer = self.writer.clone();
        drop(self);
        // The last handle stops the writer thread after a final flush.
        let stopped = match Arc::try_unwrap(writer) {
            Ok(writer) => blocking(move || writer.shutdown()).await?,
            Err(writer) => blocking(move || writer.flush()).await?,
        };
        tracing::info!("stopped");
        flushed?;
        stopped?;
        Ok(())
    }
}
