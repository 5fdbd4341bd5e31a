//! One participant's peer connection at the SFU: how it is built, and its callbacks (local ICE
//! candidates held behind our description, connection state, incoming tracks, key-frame
//! requests, the participant's control channel), which only post to the SFU task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use callplus_session::{IceServer, MediaPayload};
use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, SettingEngineBuilder,
};

use crate::codecs::media_engine_and_interceptors;
use crate::control::{CONTROL_LABEL, ControlMessage};
use crate::error::SfuError;
use crate::feedback::{Feedback, FeedbackTap};
use crate::sfu::{Command, ParticipantKey, SfuEvent};

/// No packet from the device for this long: disconnected (the stack's default is 5 s).
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(3);
/// Disconnected for this long more: failed, and the signalling layer starts the device's
/// recovery (a fresh route). The stack's default, 25 s, would leave the others looking at a
/// frozen picture for half a minute; media that pauses for 5 s is gone for a call anyway.
const ICE_FAILED_AFTER: Duration = Duration::from_secs(5);
/// Keepalives (consent checks) when nothing else is sent (the stack's default is 2 s).
const ICE_KEEPALIVE: Duration = Duration::from_secs(1);

pub(crate) fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the callbacks of one connection share with the SFU task.
pub(crate) struct Shared {
    pub(crate) key: ParticipantKey,
    events: mpsc::UnboundedSender<SfuEvent>,
    /// Weak: a connection must not keep the SFU task alive.
    commands: mpsc::WeakUnboundedSender<Command>,
    /// Local candidates held until our first description went out (it must come first).
    held: StdMutex<Option<Vec<MediaPayload>>>,
    pub(crate) closed: AtomicBool,
    connected: AtomicBool,
    /// The participant's control channel once it opened it: where audio levels go.
    pub(crate) control: StdMutex<Option<Arc<dyn DataChannel>>>,
}

impl Shared {
    pub(crate) fn emit(&self, event: SfuEvent) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.events.send(event);
        }
    }

    pub(crate) fn send_signal(&self, payload: MediaPayload) {
        self.emit(SfuEvent::Signal {
            call_id: self.key.call_id.clone(),
            to_user: self.key.user.clone(),
            to_device: self.key.device.clone(),
            payload,
        });
    }

    /// Our description went out: the candidates behind it may follow.
    pub(crate) fn release_candidates(&self) {
        let mut held = lock(&self.held);
        for payload in held.take().unwrap_or_default() {
            self.send_signal(payload);
        }
    }

    fn command(&self, command: Command) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(command);
        }
    }
}

struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let init = match event.candidate.to_json() {
            Ok(init) => init,
            Err(e) => {
                tracing::debug!(error = %e, "unserializable local candidate skipped");
                return;
            }
        };
        let payload = MediaPayload::IceCandidate {
            candidate: init.candidate,
            sdp_mid: init.sdp_mid.unwrap_or_default(),
            sdp_mline_index: u32::from(init.sdp_mline_index.unwrap_or(0)),
        };
        // Under the lock, so a candidate cannot overtake the release of the held ones.
        let mut held = lock(&self.shared.held);
        match held.as_mut() {
            Some(held) => held.push(payload),
            None => self.shared.send_signal(payload),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let s = &self.shared;
        tracing::debug!(call = %s.key.call_id, user = %s.key.user, device = %s.key.device, ?state, "sfu connection state");
        match state {
            RTCPeerConnectionState::Connected if !s.connected.swap(true, Ordering::AcqRel) => {
                s.emit(SfuEvent::ParticipantConnected {
                    call_id: s.key.call_id.clone(),
                    user: s.key.user.clone(),
                    device: s.key.device.clone(),
                });
            }
            // Closed without the SFU closing it (`closed` is set first when it does): the
            // device's side went away; as good as failed.
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                s.emit(SfuEvent::ParticipantFailed {
                    call_id: s.key.call_id.clone(),
                    user: s.key.user.clone(),
                    device: s.key.device.clone(),
                })
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.shared.command(Command::Track { key: self.shared.key.clone(), track });
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let label = channel.label().await.unwrap_or_default();
        if label != CONTROL_LABEL {
            tracing::debug!(label, "sfu: data channel of unknown purpose ignored");
            return;
        }
        *lock(&self.shared.control) = Some(Arc::clone(&channel));
        // Weak: the channel's task must not keep the participant's state alive.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                let DataChannelEvent::OnMessage(message) = event else { continue };
                let Some(shared) = shared.upgrade() else { break };
                match ControlMessage::parse(&message.data).and_then(|m| m.view()) {
                    Some((publisher, layer)) => {
                        shared.command(Command::VideoView { key: shared.key.clone(), publisher, layer })
                    }
                    None => tracing::debug!(user = %shared.key.user, "sfu: control message ignored"),
                }
            }
        });
    }
}

fn ice_server(server: &IceServer) -> RTCIceServer {
    RTCIceServer {
        urls: server.urls.clone(),
        username: server.username.clone(),
        credential: server.credential.clone(),
    }
}

/// Builds the connection of one participant (no description set yet).
pub(crate) async fn connect(
    key: ParticipantKey,
    bind_addrs: &[String],
    ice_servers: &[IceServer],
    events: mpsc::UnboundedSender<SfuEvent>,
    commands: mpsc::WeakUnboundedSender<Command>,
) -> Result<(Arc<dyn PeerConnection>, Arc<Shared>), SfuError> {
    let shared = Arc::new(Shared {
        key,
        events,
        commands,
        held: StdMutex::new(Some(Vec::new())),
        closed: AtomicBool::new(false),
        connected: AtomicBool::new(false),
        control: StdMutex::new(None),
    });
    let tap_shared = Arc::downgrade(&shared);
    let tap = FeedbackTap::new(Box::new(move |feedback: Feedback, at: Instant| {
        if let Some(shared) = tap_shared.upgrade() {
            let key = shared.key.clone();
            shared.command(match feedback {
                Feedback::Keyframe { ssrc } => Command::Keyframe { key, ssrc, at },
                Feedback::Loss { ssrc, fraction_lost } => Command::Loss { key, ssrc, fraction_lost, at },
            });
        }
    }));
    let (media, registry) = media_engine_and_interceptors(tap)?;
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), Some(ICE_KEEPALIVE))
        .build();
    let configuration =
        RTCConfigurationBuilder::new().with_ice_servers(ice_servers.iter().map(ice_server).collect()).build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(Arc::new(Handler { shared: Arc::clone(&shared) }))
        .with_udp_addrs(bind_addrs.to_vec())
        .build()
        .await?;
    Ok((Arc::new(pc), shared))
}
