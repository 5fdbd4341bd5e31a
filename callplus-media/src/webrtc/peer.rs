//! One peer connection per remote device: its callbacks (ICE, state, remote tracks), what its
//! tasks share, and how the adapter creates, negotiates, connects and closes it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Instant;

use callplus_session::media_token::attach_media_token;
use callplus_session::{CallId, Code, DeviceId, IceServer, MediaKind, MediaPayload, MediaType, UserId};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use super::codecs::{OPUS_PT, RTCP_OBSERVER_SLOT, VP8_PT, interceptors, opus_codec, vp8_codec};
use super::receive::receive_loop;
use super::send::{FULL_RID, PumpCmd, SendTarget, Simulcast, TINY_RID, Targets};
use super::{Inner, PeerKey, Sinks, State, lock, now_ms};
use crate::adapter::{MediaEvent, PeerSpec};
use crate::error::MediaError;
use crate::rtcp_observer::{RemoteReports, RtcpObserver};
use crate::sink::RemoteFrame;

pub(super) struct LocalTrack {
    pub(super) track: Arc<TrackLocalStaticSample>,
    pub(super) sender: Arc<dyn RtpSender>,
    pub(super) ssrc: u32,
    /// Simulcast video (to the SFU): the SSRC of the tiny layer.
    pub(super) tiny_ssrc: Option<u32>,
}

/// The label of the control data channel to the SFU (`callplus_sfu::CONTROL_LABEL`).
pub(super) const CONTROL_LABEL: &str = "callplus-sfu";

pub(super) struct PeerEntry {
    pub(super) pc: Arc<dyn PeerConnection>,
    pub(super) shared: Arc<PeerShared>,
    pub(super) audio: LocalTrack,
    pub(super) video: LocalTrack,
    pub(super) audio_target: Option<Arc<SendTarget>>,
    pub(super) video_target: Option<Arc<SendTarget>>,
    pub(super) remote_set: bool,
    pub(super) pending_candidates: Vec<RTCIceCandidateInit>,
}

/// What the peer's callbacks and receive tasks share.
pub(super) struct PeerShared {
    pub(super) call_id: CallId,
    pub(super) user: UserId,
    pub(super) device: DeviceId,
    pub(super) events: mpsc::UnboundedSender<MediaEvent>,
    pub(super) inner: Weak<Inner>,
    pub(super) sinks: Sinks,
    /// Local ICE candidates held until our offer/answer went out (so it is sent first).
    pub(super) held_candidates: StdMutex<Option<Vec<MediaPayload>>>,
    pub(super) connected: AtomicBool,
    pub(super) closed: AtomicBool,
    /// `Some` when this connection goes to an SFU: the media token our offer carries. Its remote
    /// tracks then belong to several users, told apart by their stream id.
    pub(super) sfu_token: Option<String>,
    /// The local user (an SFU track naming it is never delivered).
    pub(super) local_user: UserId,
    /// (user, kind) whose first decodable frame was reported.
    pub(super) first_frames: StdMutex<HashSet<(UserId, MediaKind)>>,
    /// Per remote user: sum of squares and count of decoded samples since the last level report.
    pub(super) levels: StdMutex<HashMap<UserId, (f64, u64)>>,
    /// Through an SFU: the users whose tracks arrived on this connection.
    pub(super) sfu_users: StdMutex<HashSet<UserId>>,
    /// The peer's reception reports and key-frame requests about what we send.
    pub(super) reports: Arc<StdMutex<RemoteReports>>,
    /// SSRC of the video we send to this peer (the sender SSRC of our PLIs).
    pub(super) video_ssrc: u32,
    /// PLIs sent to this peer since the last status report.
    pub(super) plis_sent: AtomicU32,
    /// Video packets from this peer put back in place by the reorder buffer, and missing ones it
    /// gave up, since the last status report.
    pub(super) video_recovered: AtomicU32,
    pub(super) video_lost: AtomicU32,
    /// The adapter's `mute_all_remote_audio` switch.
    pub(super) remote_audio_muted: Arc<AtomicBool>,
    /// Through an SFU: the control data channel, where this device's layer choices go.
    pub(super) control: StdMutex<Option<Arc<dyn DataChannel>>>,
    /// Through an SFU: what its audio-level messages said last.
    pub(super) sfu_levels: StdMutex<super::sfu_levels::SfuLevels>,
    /// The SFU sends audio levels: remote levels are no longer taken from decoding.
    pub(super) sfu_levels_seen: AtomicBool,
}

impl PeerShared {
    /// Tells the SFU which layer of `user`'s video this device wants, if the control channel is
    /// open (when it opens, every choice made so far is sent).
    pub(super) async fn send_video_view(&self, user: &UserId, tiny: bool) {
        let control = lock(&self.control).clone();
        if let Some(control) = control {
            let text =
                format!(r#"{{"type":"video_view","user":{},"tiny":{tiny}}}"#, json_string(user.as_str()));
            if let Err(e) = control.send_text(&text).await {
                tracing::debug!(error = %e, "video view not sent yet");
            }
        }
    }

    pub(super) fn emit(&self, event: MediaEvent) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.events.send(event);
        }
    }

    pub(super) fn send_signal(&self, payload: MediaPayload) {
        self.emit(MediaEvent::Signal {
            call_id: self.call_id.clone(),
            to_user: self.user.clone(),
            to_device: self.device.clone(),
            payload,
        });
    }

    /// Our description went out: release the held candidates behind it.
    pub(super) fn release_candidates(&self) {
        let held = lock(&self.held_candidates).take();
        for payload in held.unwrap_or_default() {
            self.send_signal(payload);
        }
    }

    /// Hands a frame of `user`'s media to that user's sink.
    pub(super) fn deliver(&self, user: &UserId, frame: RemoteFrame) {
        // The first *decodable* frame: for video, a key frame.
        if frame.keyframe && lock(&self.first_frames).insert((user.clone(), frame.kind)) {
            tracing::debug!(call = %self.call_id, user = %user, kind = ?frame.kind, "first remote frame");
            self.emit(MediaEvent::FirstFrame {
                call_id: self.call_id.clone(),
                user: user.clone(),
                kind: frame.kind,
                at_ms: now_ms(),
            });
        }
        if frame.kind == MediaKind::Audio && self.remote_audio_muted.load(Ordering::Acquire) {
            // Still received (levels, stats and the first frame go on), just not played.
            return;
        }
        let mut sinks = lock(&self.sinks);
        let key = (user.clone(), frame.kind);
        if let Some(sink) = sinks.get_mut(&key)
            && let Err(e) = sink.on_frame(&frame)
        {
            tracing::warn!(user = %user, error = %e, "sink failed; removed");
            if let Some(mut sink) = sinks.remove(&key) {
                sink.on_end();
            }
            self.emit(MediaEvent::FetchRemoteMediaError {
                call_id: self.call_id.clone(),
                user: user.clone(),
                code: Code::PlayMediaFailed,
            });
        }
    }
}

pub(super) struct PeerHandler {
    pub(super) shared: Arc<PeerShared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
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
        {
            let mut held = lock(&self.shared.held_candidates);
            if let Some(held) = held.as_mut() {
                held.push(payload);
                return;
            }
        }
        self.shared.send_signal(payload);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let s = &self.shared;
        tracing::debug!(call = %s.call_id, peer = %s.user, device = %s.device, ?state, "peer connection state");
        match state {
            RTCPeerConnectionState::Connected if !s.connected.swap(true, Ordering::AcqRel) => {
                s.emit(MediaEvent::PeerConnected {
                    call_id: s.call_id.clone(),
                    user: s.user.clone(),
                    device: s.device.clone(),
                });
                // The driver is calling us: query it from another task.
                let inner = s.inner.clone();
                let key = (s.call_id.clone(), (s.user.clone(), s.device.clone()));
                tokio::spawn(async move {
                    if let Some(inner) = inner.upgrade() {
                        inner.peer_connected(&key.0, &key.1).await;
                    }
                });
            }
            RTCPeerConnectionState::Failed => {
                s.emit(MediaEvent::FetchRemoteMediaError {
                    call_id: s.call_id.clone(),
                    user: s.user.clone(),
                    code: Code::RtcServiceUnavailable,
                });
                s.emit(MediaEvent::Error {
                    call_id: Some(s.call_id.clone()),
                    message: format!("media connection to {}/{} failed", s.user, s.device),
                });
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(receive_loop(shared, track));
    }
}

pub(super) fn ice_server(server: &IceServer) -> RTCIceServer {
    RTCIceServer {
        urls: server.urls.clone(),
        username: server.username.clone(),
        credential: server.credential.clone(),
    }
}

impl Inner {
    /// Rebuilds the send-target lists from every call and wakes the pumps.
    pub(super) fn sync_targets(&self, state: &State, keyframe: bool) {
        let mut fresh = Targets::default();
        for call in state.calls.values() {
            for peer in call.peers.values() {
                if let Some(t) = &peer.audio_target {
                    fresh.audio.push(Arc::clone(t));
                }
                if call.media_type == MediaType::AudioVideo
                    && let Some(t) = &peer.video_target
                {
                    fresh.video.push(Arc::clone(t));
                }
            }
        }
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        let _ = self.audio_pump.send(PumpCmd::Wake { keyframe: false });
        let _ = self.video_pump.send(PumpCmd::Wake { keyframe });
    }

    /// A peer's connection came up: find the negotiated payload types and start sending to it.
    pub(super) async fn peer_connected(&self, call_id: &CallId, key: &PeerKey) {
        let mut state = self.state.lock().await;
        let Some(peer) = state.calls.get_mut(call_id).and_then(|c| c.peers.get_mut(key)) else { return };
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let local = match kind {
                MediaKind::Audio => &peer.audio,
                MediaKind::Video => &peer.video,
            };
            let payload_type = match local.sender.get_parameters().await {
                Ok(p) => p.rtp_parameters.codecs.first().map(|c| c.payload_type),
                Err(e) => {
                    tracing::warn!(error = %e, "sender parameters unavailable");
                    None
                }
            };
            let Some(payload_type) = payload_type else {
                tracing::debug!(?kind, peer = %key.0, "nothing negotiated to send");
                continue;
            };
            let simulcast = match local.tiny_ssrc {
                Some(tiny_ssrc) => match mid_of(peer.pc.as_ref(), &local.sender).await {
                    Some(mid) => Some(Simulcast { tiny_ssrc, mid }),
                    None => {
                        tracing::warn!(peer = %key.0, "no mid for the video sender: one layer only");
                        None
                    }
                },
                None => None,
            };
            let target = Arc::new(SendTarget {
                track: Arc::clone(&local.track),
                ssrc: local.ssrc,
                payload_type,
                simulcast,
                carries_level: kind == MediaKind::Audio && peer.shared.sfu_token.is_some(),
            });
            match kind {
                MediaKind::Audio => peer.audio_target = Some(target),
                MediaKind::Video => peer.video_target = Some(target),
            }
        }
        self.sync_targets(&state, true);
    }

    pub(super) async fn new_peer(
        self: &Arc<Self>,
        call_id: &CallId,
        local_user: &UserId,
        ice_servers: &[IceServer],
        spec: &PeerSpec,
        sfu_token: Option<String>,
    ) -> Result<PeerEntry, MediaError> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PT },
            RtpCodecKind::Audio,
        )?;
        media.register_codec(
            RTCRtpCodecParameters { rtp_codec: vp8_codec(), payload_type: VP8_PT },
            RtpCodecKind::Video,
        )?;
        let (audio_ssrc, video_ssrc) = (rand_ssrc(), rand_ssrc());
        // Through the SFU, video goes out in two simulcast layers (unless configured off).
        let tiny_ssrc = (sfu_token.is_some() && self.config.simulcast).then(rand_ssrc);
        let mut reports = RemoteReports::new(video_ssrc);
        if let Some(tiny) = tiny_ssrc {
            reports = reports.with_tiny_layer(tiny);
        }
        let reports = Arc::new(StdMutex::new(reports));
        // Weak: a connection outliving the adapter must not keep the pump (and the camera) alive.
        let video_pump = self.video_pump.downgrade();
        let on_keyframe_request = Box::new(move |layer| {
            if let Some(pump) = video_pump.upgrade() {
                let _ = pump.send(PumpCmd::LayerKeyframe(layer));
            }
        });
        let observer = RtcpObserver::new(Arc::clone(&reports), on_keyframe_request);
        let registry = interceptors(&mut media)?.with(Slot::from(RTCP_OBSERVER_SLOT), observer);
        let settings =
            SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled).build();
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers.iter().map(ice_server).collect())
            .build();
        let shared = Arc::new(PeerShared {
            call_id: call_id.clone(),
            user: spec.user_id.clone(),
            device: spec.device_id.clone(),
            events: self.events.clone(),
            inner: Arc::downgrade(self),
            sinks: Arc::clone(&self.sinks),
            held_candidates: StdMutex::new(Some(Vec::new())),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            sfu_token,
            local_user: local_user.clone(),
            first_frames: StdMutex::new(HashSet::new()),
            levels: StdMutex::new(HashMap::new()),
            sfu_users: StdMutex::new(HashSet::new()),
            reports,
            video_ssrc,
            plis_sent: AtomicU32::new(0),
            video_recovered: AtomicU32::new(0),
            video_lost: AtomicU32::new(0),
            remote_audio_muted: Arc::clone(&self.remote_audio_muted),
            control: StdMutex::new(None),
            sfu_levels: StdMutex::new(Default::default()),
            sfu_levels_seen: AtomicBool::new(false),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(PeerHandler { shared: Arc::clone(&shared) }))
            .with_udp_addrs(self.config.bind_addrs.clone())
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let audio = add_track(&pc, local_user, RtpCodecKind::Audio, opus_codec(), audio_ssrc, None).await;
        let audio = match audio {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let video =
            match add_track(&pc, local_user, RtpCodecKind::Video, vp8_codec(), video_ssrc, tiny_ssrc).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = pc.close().await;
                    return Err(e);
                }
            };
        if shared.sfu_token.is_some() {
            // Made before our offer, so the offer carries it (`m=application`).
            match pc.create_data_channel(CONTROL_LABEL, None).await {
                Ok(channel) => {
                    *lock(&shared.control) = Some(Arc::clone(&channel));
                    tokio::spawn(control_loop(Arc::downgrade(&shared), channel));
                }
                Err(e) => {
                    let _ = pc.close().await;
                    return Err(e.into());
                }
            }
        }
        Ok(PeerEntry {
            pc,
            shared,
            audio,
            video,
            audio_target: None,
            video_target: None,
            remote_set: false,
            pending_candidates: Vec::new(),
        })
    }

    /// Sends the offer to a peer this side offers to.
    pub(super) async fn offer(peer: &PeerEntry) -> Result<(), MediaError> {
        let offer = peer.pc.create_offer(None).await?;
        peer.pc.set_local_description(offer).await?;
        let sdp = peer
            .pc
            .local_description()
            .await
            .ok_or_else(|| MediaError::WebRtc("no local description after set_local_description".into()))?
            .sdp;
        let sdp = match &peer.shared.sfu_token {
            Some(token) => attach_media_token(&sdp, token),
            None => sdp,
        };
        peer.shared.send_signal(MediaPayload::SdpOffer(sdp));
        peer.shared.release_candidates();
        Ok(())
    }

    /// Creates and registers a peer in a call (and offers, if it is our turn).
    pub(super) async fn add_peer_locked(
        self: &Arc<Self>,
        state: &mut State,
        call_id: &CallId,
        spec: PeerSpec,
        sfu_token: Option<String>,
    ) -> Result<(), MediaError> {
        let call = state.calls.get(call_id).ok_or_else(|| MediaError::UnknownCall(call_id.clone()))?;
        let (local_user, ice_servers) = (call.local_user.clone(), call.ice_servers.clone());
        let peer = self.new_peer(call_id, &local_user, &ice_servers, &spec, sfu_token).await?;
        if spec.offerer
            && let Err(e) = Self::offer(&peer).await
        {
            let _ = peer.pc.close().await;
            return Err(e);
        }
        let key = (spec.user_id.clone(), spec.device_id.clone());
        if let Some(call) = state.calls.get_mut(call_id) {
            call.peers.insert(key, peer);
        }
        Ok(())
    }

    /// Applies one signal to a known peer.
    pub(super) async fn apply_signal(
        state: &mut State,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), MediaError> {
        let key = (user.clone(), device.clone());
        let peer = state.calls.get_mut(call_id).and_then(|c| c.peers.get_mut(&key)).ok_or_else(|| {
            MediaError::UnknownPeer { call_id: call_id.clone(), user: user.clone(), device: device.clone() }
        })?;
        let invalid =
            |reason: String| MediaError::InvalidSignal { user: user.clone(), device: device.clone(), reason };
        match payload {
            MediaPayload::SdpOffer(sdp) => {
                let offer = RTCSessionDescription::offer(sdp).map_err(|e| invalid(e.to_string()))?;
                peer.pc.set_remote_description(offer).await.map_err(|e| invalid(e.to_string()))?;
                peer.remote_set = true;
                flush_candidates(peer).await;
                let answer = peer.pc.create_answer(None).await?;
                peer.pc.set_local_description(answer).await?;
                let sdp = peer
                    .pc
                    .local_description()
                    .await
                    .ok_or_else(|| MediaError::WebRtc("no local description after answer".into()))?
                    .sdp;
                peer.shared.send_signal(MediaPayload::SdpAnswer(sdp));
                peer.shared.release_candidates();
            }
            MediaPayload::SdpAnswer(sdp) => {
                let answer = RTCSessionDescription::answer(sdp).map_err(|e| invalid(e.to_string()))?;
                peer.pc.set_remote_description(answer).await.map_err(|e| invalid(e.to_string()))?;
                peer.remote_set = true;
                flush_candidates(peer).await;
            }
            MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
                if candidate.is_empty() {
                    return Ok(()); // end-of-candidates
                }
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid: (!sdp_mid.is_empty()).then_some(sdp_mid),
                    sdp_mline_index: Some(
                        u16::try_from(sdp_mline_index)
                            .map_err(|_| invalid("m-line index out of range".into()))?,
                    ),
                    ..Default::default()
                };
                if peer.remote_set {
                    peer.pc.add_ice_candidate(init).await.map_err(|e| invalid(e.to_string()))?;
                } else if peer.pending_candidates.len() < 64 {
                    peer.pending_candidates.push(init);
                }
            }
        }
        Ok(())
    }

    pub(super) fn mesh_limit(&self, media_type: MediaType) -> usize {
        match media_type {
            MediaType::Audio => self.config.max_mesh_audio,
            MediaType::AudioVideo => self.config.max_mesh_video,
        }
    }

    /// Closes a peer: no more events, its sinks are told the stream ended.
    pub(super) async fn close_peer(&self, peer: PeerEntry) {
        peer.shared.closed.store(true, Ordering::Release);
        if let Err(e) = peer.pc.close().await {
            tracing::debug!(error = %e, "closing peer connection");
        }
        // Through an SFU, the connection carried every other user's media.
        let users: Vec<UserId> = if peer.shared.sfu_token.is_some() {
            lock(&peer.shared.sfu_users).iter().cloned().collect()
        } else {
            vec![peer.shared.user.clone()]
        };
        let mut sinks = lock(&self.sinks);
        for user in users {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                if let Some(sink) = sinks.get_mut(&(user.clone(), kind)) {
                    sink.on_end();
                }
            }
        }
    }
}

pub(super) async fn flush_candidates(peer: &mut PeerEntry) {
    for candidate in std::mem::take(&mut peer.pending_candidates) {
        if let Err(e) = peer.pc.add_ice_candidate(candidate).await {
            tracing::debug!(error = %e, "queued remote candidate refused");
        }
    }
}

/// Adds our sending track of `kind`; with `tiny_ssrc`, a simulcast track of two encodings
/// (`rid` "f" on `ssrc`, "q" on `tiny_ssrc`), which the offer declares with `a=rid` and
/// `a=simulcast:send f;q`.
pub(super) async fn add_track(
    pc: &Arc<dyn PeerConnection>,
    local_user: &UserId,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
    tiny_ssrc: Option<u32>,
) -> Result<LocalTrack, MediaError> {
    let name = match kind {
        RtpCodecKind::Video => "video",
        _ => "audio",
    };
    let coding = |ssrc: u32, rid: &str| RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            rid: rid.to_owned(),
            ssrc: Some(ssrc),
            ..Default::default()
        },
        codec: codec.clone(),
        ..Default::default()
    };
    let codings = match tiny_ssrc {
        Some(tiny) => vec![coding(ssrc, FULL_RID), coding(tiny, TINY_RID)],
        None => vec![coding(ssrc, "")],
    };
    let track = MediaStreamTrack::new(
        local_user.to_string(),
        format!("{local_user}-{name}"),
        name.to_owned(),
        kind,
        codings,
    );
    let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), track)?);
    let sender = pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>).await?;
    Ok(LocalTrack { track, sender, ssrc, tiny_ssrc })
}

/// The `mid` of the media section `sender` sends on (known once negotiated).
async fn mid_of(pc: &dyn PeerConnection, sender: &Arc<dyn RtpSender>) -> Option<String> {
    for transceiver in pc.get_transceivers().await {
        if let Ok(Some(s)) = transceiver.sender().await
            && s.id() == sender.id()
        {
            return transceiver.mid().await.ok().flatten();
        }
    }
    None
}

/// Reads the control channel to the SFU until it closes: once it opens, every layer choice made
/// so far is sent (later ones go as they are made); the SFU's audio levels come in on it.
async fn control_loop(shared: Weak<PeerShared>, channel: Arc<dyn DataChannel>) {
    while let Some(event) = channel.poll().await {
        let Some(shared) = shared.upgrade() else { break };
        match event {
            DataChannelEvent::OnOpen => {
                let views: Vec<(UserId, bool)> = match shared.inner.upgrade() {
                    Some(inner) => lock(&inner.video_views).iter().map(|(u, t)| (u.clone(), *t)).collect(),
                    None => break,
                };
                tracing::debug!(call = %shared.call_id, views = views.len(), "SFU control channel open");
                for (user, tiny) in views {
                    shared.send_video_view(&user, tiny).await;
                }
            }
            DataChannelEvent::OnMessage(message) => {
                super::sfu_levels::on_control_message(&shared, &message.data)
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A random SSRC, from the std hasher's randomly keyed SipHash (no extra dependency).
pub(super) fn rand_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() as u32).max(1)
}
