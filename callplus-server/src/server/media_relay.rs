//! The selective forwarding unit inside `callplus serve`: MULTI calls' media goes through it.
//!
//! The switchboard decides the route and asks for SFU work with outputs (a participant's signal
//! to the SFU, a leave, a call's end); the driver queues them here in order, and one task applies
//! them to the [`Sfu`] one after another (an offer is applied before the candidates behind it).
//! The SFU's own signals go back to the driver as [`Input::SfuSignal`], and from there to the
//! participant device as a `MediaSignal` from the SFU's address; its connection reports (up,
//! failed) go to the switchboard, which recovers a failed connection or removes the participant.
//! The token key is made at start and never leaves the process: the switchboard gets a signer,
//! the SFU the same key.
//!
//! With a remote SFU (`serve --sfu-url`, [`RemoteSfu`]) the same work goes down a
//! `MediaRelay.Attach` stream to a `callplus sfu` process and its events come back up it; the
//! token key is then the media secret shared with that process. The stream is opened again with
//! backoff when it breaks; after each (re)attach every participant whose connection may have
//! been on the lost SFU is reported failed, so the switchboard routes it afresh (new token, new
//! connection) as for any failed SFU connection. With several SFU processes
//! (`--sfu-url URL,URL,…`) each call is placed on one of them ([`super::media_relay_pool`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_session::switchboard::MediaRouter;
use callplus_session::{CallId, DeviceId, MediaKind, MediaPayload, UserId};
use callplus_sfu::{MediaTokens, Sfu, SfuConfig, SfuEvent, SfuEvents};
use rand::RngCore as _;
use tokio::sync::mpsc;

use super::driver::{DriverHandle, Input};
use super::media_token_issuer::TokenIssuer;
use crate::relay::RemoteSfu;

/// The user id the SFU's signals carry (its signalling address).
pub const SFU_USER: &str = "callplus-sfu";
/// The device id the SFU's signals carry.
pub const SFU_DEVICE: &str = "sfu";

/// SFU work the switchboard asked for, in order.
#[derive(Debug)]
pub(crate) enum SfuCommand {
    /// SDP/ICE from a participant device.
    Signal { call_id: CallId, user: UserId, device: DeviceId, payload: MediaPayload },
    /// A participant device left the call.
    Leave { call_id: CallId, user: UserId, device: DeviceId },
    /// A participant's camera (video) or microphone (audio) went off (`paused`) or on again.
    Pause { call_id: CallId, user: UserId, device: DeviceId, kind: MediaKind, paused: bool },
    /// The call ended.
    EndCall { call_id: CallId },
}

impl SfuCommand {
    /// The call the work is for.
    pub(crate) fn call_id(&self) -> &CallId {
        match self {
            SfuCommand::Signal { call_id, .. }
            | SfuCommand::Leave { call_id, .. }
            | SfuCommand::Pause { call_id, .. }
            | SfuCommand::EndCall { call_id } => call_id,
        }
    }
}

/// The SFU's settings in a server.
#[derive(Debug, Clone)]
pub(crate) struct SfuSettings {
    /// UDP addresses its connections bind to.
    pub(crate) bind_addrs: Vec<String>,
    /// MULTI calls made with at most this many participants stay a mesh.
    pub(crate) mesh_max: usize,
    /// How long a media token is valid.
    pub(crate) token_ttl: Duration,
    /// Drive these SFU processes instead of an SFU in this server (empty: the SFU in this
    /// server).
    pub(crate) remote: Vec<RemoteSfu>,
}

/// Starts the SFU (inside the runtime) with a fresh token key: the switchboard's router, the
/// queue the driver sends SFU work to, and the task to spawn with the driver's handle.
pub(crate) fn start(settings: &SfuSettings) -> (MediaRouter, mpsc::UnboundedSender<SfuCommand>, SfuTask) {
    let (secret, backend) = match settings.remote.first() {
        // Every SFU of the list shares the one media secret (`--media-secret-file`).
        Some(remote) => (remote.secret.token_key(), Backend::Remote(settings.remote.clone())),
        None => {
            let mut secret = vec![0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let (sfu, events) = Sfu::new(SfuConfig {
                bind_addrs: settings.bind_addrs.clone(),
                ice_servers: Vec::new(),
                token_secret: secret.clone(),
            });
            (secret, Backend::Local { sfu, events })
        }
    };
    let issuer = TokenIssuer::new(MediaTokens::new(secret), settings.token_ttl.as_secs());
    let router = MediaRouter {
        sfu_user: UserId::new(SFU_USER).unwrap_or_else(|_| unreachable!("a valid constant id")),
        sfu_device: DeviceId::new(SFU_DEVICE).unwrap_or_else(|_| unreachable!("a valid constant id")),
        mesh_max: settings.mesh_max,
        sign: Box::new(move |call, user, device| issuer.issue(call, user, device, now_s())),
    };
    let (commands, rx) = mpsc::unbounded_channel();
    (router, commands, SfuTask { backend, rx })
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The task applying the switchboard's SFU work and passing the SFU's signals to the driver.
pub(crate) struct SfuTask {
    backend: Backend,
    rx: mpsc::UnboundedReceiver<SfuCommand>,
}

/// Where the SFU runs.
enum Backend {
    /// In this server.
    Local { sfu: Sfu, events: SfuEvents },
    /// In `callplus sfu` processes (at least one).
    Remote(Vec<RemoteSfu>),
}

impl SfuTask {
    /// Runs until the driver is gone.
    pub(crate) async fn run(self, driver: DriverHandle) {
        match self.backend {
            Backend::Local { sfu, events } => run_local(sfu, events, self.rx, driver).await,
            Backend::Remote(mut remotes) if remotes.len() == 1 => {
                let remote = remotes.remove(0);
                super::media_relay_remote::run(remote, self.rx, driver, |_| {}).await;
            }
            Backend::Remote(remotes) => super::media_relay_pool::run(remotes, self.rx, driver).await,
        }
        tracing::debug!("sfu task stopped");
    }
}

async fn run_local(
    sfu: Sfu,
    mut events: SfuEvents,
    mut rx: mpsc::UnboundedReceiver<SfuCommand>,
    driver: DriverHandle,
) {
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(command) => apply(&sfu, command).await,
                None => break,
            },
            event = events.recv() => match event {
                Some(SfuEvent::Signal { call_id, to_user, to_device, payload }) => {
                    let input = Input::SfuSignal { call_id, to_user, to_device, payload };
                    if !driver.send(input).await {
                        break;
                    }
                }
                // The switchboard recovers a failed connection (fresh route) and removes
                // a participant that does not come back.
                Some(SfuEvent::ParticipantConnected { call_id, user, device }) => {
                    let input = Input::SfuConnection { call_id, user, device, connected: true };
                    if !driver.send(input).await {
                        break;
                    }
                }
                Some(SfuEvent::ParticipantFailed { call_id, user, device }) => {
                    tracing::info!(call = %call_id, %user, %device, "sfu connection failed");
                    let input = Input::SfuConnection { call_id, user, device, connected: false };
                    if !driver.send(input).await {
                        break;
                    }
                }
                Some(other) => tracing::debug!(event = ?other, "sfu"),
                None => break,
            },
        }
    }
}

async fn apply(sfu: &Sfu, command: SfuCommand) {
    match command {
        SfuCommand::Signal { call_id, user, device, payload } => {
            if let Err(e) = sfu.handle_signal(&call_id, &user, &device, payload).await {
                tracing::info!(call = %call_id, %user, %device, error = %e, "sfu refused a media signal");
            }
        }
        SfuCommand::Leave { call_id, user, device } => {
            if let Err(e) = sfu.remove_participant(&call_id, &user, &device).await {
                tracing::debug!(call = %call_id, %user, error = %e, "sfu leave");
            }
        }
        SfuCommand::Pause { call_id, user, device, kind, paused } => {
            if let Err(e) = sfu.set_paused(&call_id, &user, &device, kind, paused).await {
                tracing::debug!(call = %call_id, %user, error = %e, "sfu pause");
            }
        }
        SfuCommand::EndCall { call_id } => {
            if let Err(e) = sfu.end_call(&call_id).await {
                tracing::debug!(call = %call_id, error = %e, "sfu end of call");
            }
        }
    }
}
