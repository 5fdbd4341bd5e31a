//! [`Sfu`]: the forwarding unit. One task owns every call's participants; the public methods and
//! the connections' callbacks post commands to it, so no lock is held across the stack's awaits.
//!
//! Negotiation: a participant offers first (its audio and video, and its media token); the SFU
//! answers, then adds one outgoing track per stream of every other participant and offers them
//! (renegotiation). The SFU never has two offers out to one participant: tracks added while an
//! offer waits for its answer are offered after that answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use callplus_session::media_token::media_token;
use callplus_session::{CallId, DeviceId, IceServer, MediaKind, MediaPayload, UserId};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};
use webrtc::rtp_transceiver::RtpSender;

use crate::codecs::{opus_codec, vp8_codec};
use crate::connection::{Shared, connect};
use crate::error::SfuError;
use crate::forward::{Fanout, LayerSsrcs, LevelTap, Target, forward};
use crate::layers::Layer;
use crate::levels::{CallLevels, audio_level_extension_id};
use crate::token::MediaTokens;

mod pause;
mod speakers;

/// Settings of an [`Sfu`].
#[derive(Clone)]
pub struct SfuConfig {
    /// Local UDP addresses the connections bind to (`"127.0.0.1:0"` in tests; a public address
    /// in production).
    pub bind_addrs: Vec<String>,
    /// STUN/TURN servers for the SFU's own candidates (usually none: it has a public address).
    pub ice_servers: Vec<IceServer>,
    /// The secret media tokens are signed with (shared with the signalling server).
    pub token_secret: Vec<u8>,
}

impl std::fmt::Debug for SfuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuConfig").field("bind_addrs", &self.bind_addrs).finish_non_exhaustive()
    }
}

/// What the SFU tells the signalling layer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SfuEvent {
    /// Send this SDP/ICE message to one participant device (`MediaSignal`).
    Signal {
        /// The call.
        call_id: CallId,
        /// Recipient user.
        to_user: UserId,
        /// Recipient device.
        to_device: DeviceId,
        /// The message.
        payload: MediaPayload,
    },
    /// ICE + DTLS up with this participant.
    ParticipantConnected {
        /// The call.
        call_id: CallId,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// The connection to this participant failed.
    ParticipantFailed {
        /// The call.
        call_id: CallId,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
}

/// The stream of [`SfuEvent`]s, returned by [`Sfu::new`].
#[derive(Debug)]
pub struct SfuEvents {
    rx: mpsc::UnboundedReceiver<SfuEvent>,
}

impl SfuEvents {
    /// The next event; `None` once the SFU is gone.
    pub async fn recv(&mut self) -> Option<SfuEvent> {
        self.rx.recv().await
    }
}

/// Counters of the SFU, for tests, logs and the load tool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Calls with at least one participant.
    pub calls: usize,
    /// Participant connections.
    pub participants: usize,
    /// Streams published to the SFU.
    pub published_streams: usize,
    /// Streams forwarded (one per subscriber per published stream).
    pub forwarded_streams: usize,
    /// Subscribers' key-frame requests passed on to publishers.
    pub keyframe_requests_forwarded: u64,
    /// Subscribers' key-frame requests held back by the per-subscriber rate limit.
    pub keyframe_requests_held: u64,
    /// Packets not forwarded because a subscriber's queue was full (its path is too slow).
    pub packets_dropped: u64,
    /// Key frames asked of publishers so that a subscriber could switch simulcast layers.
    pub layer_keyframe_requests: u64,
    /// Simulcast layer switches made (a subscriber moved to the tiny or the full layer).
    pub layer_switches: u64,
    /// Times a subscriber's reported loss held it at the tiny layer of a stream.
    pub loss_caps: u64,
    /// Forwarded streams held at the tiny layer by their subscriber's loss now.
    pub loss_capped_streams: usize,
}

/// One participant device of one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ParticipantKey {
    pub(crate) call_id: CallId,
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
}

impl ParticipantKey {
    fn member(&self) -> Member {
        (self.user.clone(), self.device.clone())
    }
}

type Member = (UserId, DeviceId);

pub(crate) enum Command {
    Signal {
        key: ParticipantKey,
        payload: MediaPayload,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Remove {
        key: ParticipantKey,
        reply: oneshot::Sender<bool>,
    },
    EndCall {
        call_id: CallId,
        reply: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<SfuStats>,
    },
    /// Stop or resume forwarding a publisher's stream (`pause`).
    Pause {
        call_id: CallId,
        publisher: Member,
        kind: MediaKind,
        paused: bool,
        reply: oneshot::Sender<()>,
    },
    /// A publisher's track arrived (from the connection's callback).
    Track {
        key: ParticipantKey,
        track: Arc<dyn TrackRemote>,
    },
    /// A subscriber asked for a key frame of the stream `ssrc` on its connection.
    Keyframe {
        key: ParticipantKey,
        ssrc: u32,
        at: Instant,
    },
    /// A subscriber reported losing `fraction_lost`/256 of the stream `ssrc` on its
    /// connection.
    Loss {
        key: ParticipantKey,
        ssrc: u32,
        fraction_lost: u8,
        at: Instant,
    },
    /// A subscriber chose a layer of a publisher's video (its control channel).
    VideoView {
        key: ParticipantKey,
        publisher: UserId,
        layer: Layer,
    },
}

/// The selective forwarding unit. Must be created inside a tokio runtime.
///
/// ```no_run
/// # async fn demo(signal: callplus_session::MediaPayload) -> Result<(), callplus_sfu::SfuError> {
/// use callplus_sfu::{Sfu, SfuConfig};
/// let (sfu, mut events) = Sfu::new(SfuConfig {
///     bind_addrs: vec!["127.0.0.1:0".into()],
///     ice_servers: vec![],
///     token_secret: b"shared with the signalling server".to_vec(),
/// });
/// # let (call, user, device) = todo!();
/// sfu.handle_signal(&call, &user, &device, signal).await?;   // an offer, answer or candidate
/// while let Some(event) = events.recv().await { /* SfuEvent::Signal -> that device */ }
/// # Ok(()) }
/// ```
pub struct Sfu {
    commands: mpsc::UnboundedSender<Command>,
    tokens: MediaTokens,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu").finish_non_exhaustive()
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Sfu {
    /// Starts the SFU task; the events say what to send to whom.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: SfuConfig) -> (Sfu, SfuEvents) {
        let (events, rx) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let tokens = MediaTokens::new(config.token_secret.clone());
        let task = Task {
            tokens: tokens.clone(),
            config,
            events,
            me: commands.downgrade(),
            calls: HashMap::new(),
            keyframes_forwarded: 0,
            keyframes_held: 0,
            dropped: Arc::new(AtomicU64::new(0)),
            paused: HashMap::new(),
            layer_keyframes: Arc::new(AtomicU64::new(0)),
            levels: HashMap::new(),
        };
        tokio::spawn(task.run(commands_rx));
        (Sfu { commands, tokens }, SfuEvents { rx })
    }

    /// A media token for this device of this call, valid until `expires_s` (Unix seconds); the
    /// signalling server hands it to the device with the SFU's address.
    pub fn issue_token(&self, call_id: &CallId, user: &UserId, device: &DeviceId, expires_s: u64) -> String {
        self.tokens.issue(call_id, user, device, expires_s)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)
    }

    /// Applies an SDP offer or answer or an ICE candidate from a participant device. The first
    /// offer of a device must carry its media token.
    ///
    /// # Errors
    /// [`SfuError::Unauthorized`] for an offer without a valid token (nothing is answered),
    /// [`SfuError::UnknownParticipant`] for an answer or candidate from a device without a
    /// connection, [`SfuError::InvalidSignal`], stack failures.
    pub async fn handle_signal(
        &self,
        call_id: &CallId,
        from_user: &UserId,
        from_device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), SfuError> {
        let key =
            ParticipantKey { call_id: call_id.clone(), user: from_user.clone(), device: from_device.clone() };
        self.ask(|reply| Command::Signal { key, payload, reply }).await?
    }

    /// A participant left: its connection closes, the others stop receiving its streams.
    /// `false` when it had no connection.
    pub async fn remove_participant(
        &self,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<bool, SfuError> {
        let key = ParticipantKey { call_id: call_id.clone(), user: user.clone(), device: device.clone() };
        self.ask(|reply| Command::Remove { key, reply }).await
    }

    /// The call ended: every connection of it closes.
    pub async fn end_call(&self, call_id: &CallId) -> Result<(), SfuError> {
        let call_id = call_id.clone();
        self.ask(|reply| Command::EndCall { call_id, reply }).await
    }

    /// Stops (`paused`) or resumes forwarding `user`'s stream of `kind` to the call's other
    /// participants: its camera (video) or microphone (audio) went off or on. Resuming video
    /// asks the publisher for a key frame. Holds across the publisher's reconnections until the
    /// call ends.
    pub async fn set_paused(
        &self,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
        kind: MediaKind,
        paused: bool,
    ) -> Result<(), SfuError> {
        let (call_id, publisher) = (call_id.clone(), (user.clone(), device.clone()));
        self.ask(|reply| Command::Pause { call_id, publisher, kind, paused, reply }).await
    }

    /// The SFU's counters now.
    pub async fn stats(&self) -> Result<SfuStats, SfuError> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}

/// A stream a participant publishes.
struct Published {
    track: Arc<dyn TrackRemote>,
    /// The stream's SSRC when the track was announced; `None` for a simulcast track announced
    /// before its streams were bound (`layers` has them then).
    ssrc: Option<u32>,
    /// The SSRC of each simulcast layer (video), as its packets arrive.
    layers: Arc<LayerSsrcs>,
    fanout: Arc<Fanout>,
    task: JoinHandle<()>,
}

/// Another participant's stream, forwarded to this one.
struct Subscription {
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// The subscriber's copy of the stream (with its layer and key-frame gate), live once an
    /// answer covers it.
    target: Arc<Target>,
    /// Named in an offer already sent, so the next answer covers it.
    offered: bool,
}

struct Participant {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    /// Our offer is out and its answer not in yet.
    awaiting_answer: bool,
    /// Tracks changed since the last offer.
    renegotiate: bool,
    published: HashMap<MediaKind, Published>,
    subscriptions: HashMap<(Member, MediaKind), Subscription>,
    /// The layer this participant asked for per publisher (full when not asked); kept for
    /// publishers that are not forwarded yet.
    views: HashMap<UserId, Layer>,
    /// The id this participant's offer gives the audio-level header extension.
    audio_level_ext: Option<u8>,
}

impl Participant {
    /// The video this participant subscribes to whose copy on its connection has `ssrc` (what
    /// its RTCP names), with the publisher.
    fn video_subscription(&self, ssrc: u32) -> Option<(&Member, &Subscription)> {
        self.subscriptions
            .iter()
            .find(|((_, kind), s)| *kind == MediaKind::Video && s.ssrc == ssrc)
            .map(|((publisher, _), s)| (publisher, s))
    }

    /// A description of this participant after its first: once its video is published, its
    /// simulcast section keeps the receiver (and the layers' SSRCs) the stack has
    /// ([`crate::simulcast_sdp`]).
    fn later_description(&self, sdp: String) -> String {
        if self.published.contains_key(&MediaKind::Video) {
            crate::simulcast_sdp::keep_simulcast_receivers(&sdp)
        } else {
            sdp
        }
    }
}

struct Task {
    config: SfuConfig,
    tokens: MediaTokens,
    events: mpsc::UnboundedSender<SfuEvent>,
    me: mpsc::WeakUnboundedSender<Command>,
    calls: HashMap<CallId, HashMap<Member, Participant>>,
    keyframes_forwarded: u64,
    keyframes_held: u64,
    /// Packets dropped at full subscriber queues.
    dropped: Arc<AtomicU64>,
    /// Streams whose forwarding is paused, with the subscribers' copies held back (`pause`).
    paused: HashMap<pause::PausedKey, pause::Held>,
    /// Key frames asked for layer switches (by the forwarding tasks).
    layer_keyframes: Arc<AtomicU64>,
    /// Each call's audio levels and active speaker (`speakers`).
    levels: HashMap<CallId, Arc<std::sync::Mutex<CallLevels>>>,
}

fn invalid(key: &ParticipantKey, reason: impl ToString) -> SfuError {
    SfuError::InvalidSignal { user: key.user.clone(), device: key.device.clone(), reason: reason.to_string() }
}

fn media_kind(kind: RtpCodecKind) -> Option<MediaKind> {
    match kind {
        RtpCodecKind::Audio => Some(MediaKind::Audio),
        RtpCodecKind::Video => Some(MediaKind::Video),
        _ => None,
    }
}

/// A random SSRC, from the std hasher's randomly keyed SipHash (no extra dependency).
fn rand_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (h.finish() as u32).max(1)
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut report = tokio::time::interval(crate::levels::REPORT_INTERVAL);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = report.tick() => {
                    self.report_levels();
                    continue;
                }
            };
            let Some(command) = command else { break };
            match command {
                Command::Signal { key, payload, reply } => {
                    let result = self.on_signal(&key, payload).await;
                    self.hold_paused(&key.call_id);
                    if let Err(e) = &result {
                        tracing::info!(call = %key.call_id, user = %key.user, device = %key.device, error = %e, "sfu: signal refused");
                    }
                    let _ = reply.send(result);
                }
                Command::Remove { key, reply } => {
                    let removed = self.remove(&key).await;
                    let _ = reply.send(removed);
                }
                Command::EndCall { call_id, reply } => {
                    let members: Vec<Member> =
                        self.calls.get(&call_id).map(|c| c.keys().cloned().collect()).unwrap_or_default();
                    for (user, device) in members {
                        self.remove(&ParticipantKey { call_id: call_id.clone(), user, device }).await;
                    }
                    self.forget_paused(&call_id);
                    let _ = reply.send(());
                }
                Command::Pause { call_id, publisher, kind, paused, reply } => {
                    self.set_paused(&call_id, publisher, kind, paused).await;
                    let _ = reply.send(());
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Command::Track { key, track } => {
                    self.on_track(&key, track).await;
                    self.hold_paused(&key.call_id);
                }
                Command::Keyframe { key, ssrc, at } => self.on_keyframe_request(&key, ssrc, at).await,
                Command::Loss { key, ssrc, fraction_lost, at } => self.on_loss(&key, ssrc, fraction_lost, at),
                Command::VideoView { key, publisher, layer } => self.on_video_view(&key, publisher, layer),
            }
        }
        // The Sfu is gone: close everything.
        let calls: Vec<CallId> = self.calls.keys().cloned().collect();
        for call_id in calls {
            let members: Vec<Member> =
                self.calls.get(&call_id).map(|c| c.keys().cloned().collect()).unwrap_or_default();
            for (user, device) in members {
                self.remove(&ParticipantKey { call_id: call_id.clone(), user, device }).await;
            }
        }
    }

    fn stats(&self) -> SfuStats {
        let participants = self.calls.values().flat_map(|c| c.values());
        let mut stats = SfuStats {
            calls: self.calls.len(),
            keyframe_requests_forwarded: self.keyframes_forwarded,
            keyframe_requests_held: self.keyframes_held,
            packets_dropped: self.dropped.load(Ordering::Relaxed),
            layer_keyframe_requests: self.layer_keyframes.load(Ordering::Relaxed),
            ..SfuStats::default()
        };
        for p in participants {
            stats.participants += 1;
            stats.published_streams += p.published.len();
            stats.forwarded_streams += p.subscriptions.len();
            for s in p.subscriptions.values() {
                let state = crate::connection::lock(&s.target.state);
                stats.layer_switches += state.layers.switches;
                stats.loss_caps += state.loss.caps;
                stats.loss_capped_streams += usize::from(state.loss.capped());
            }
        }
        stats
    }

    fn participant(&mut self, key: &ParticipantKey) -> Result<&mut Participant, SfuError> {
        self.calls.get_mut(&key.call_id).and_then(|c| c.get_mut(&key.member())).ok_or_else(|| {
            SfuError::UnknownParticipant {
                call_id: key.call_id.clone(),
                user: key.user.clone(),
                device: key.device.clone(),
            }
        })
    }

    async fn on_signal(&mut self, key: &ParticipantKey, payload: MediaPayload) -> Result<(), SfuError> {
        let known = self.calls.get(&key.call_id).is_some_and(|c| c.contains_key(&key.member()));
        match payload {
            MediaPayload::SdpOffer(sdp) if !known => self.join(key, sdp).await,
            MediaPayload::SdpOffer(sdp) => {
                // The device renegotiates (an ICE restart, say). If our own offer is out, ours
                // wins: the device applies it and offers again later.
                let p = self.participant(key)?;
                if p.awaiting_answer {
                    return Err(invalid(key, "offer while the SFU's offer is pending"));
                }
                if let Some(id) = audio_level_extension_id(&sdp) {
                    p.audio_level_ext = Some(id);
                }
                let sdp = p.later_description(sdp);
                let offer = RTCSessionDescription::offer(sdp).map_err(|e| invalid(key, e))?;
                p.pc.set_remote_description(offer).await.map_err(|e| invalid(key, e))?;
                let answer = p.pc.create_answer(None).await?;
                p.pc.set_local_description(answer).await?;
                let sdp =
                    p.pc.local_description().await.ok_or_else(|| SfuError::WebRtc("no answer".into()))?.sdp;
                p.shared.send_signal(MediaPayload::SdpAnswer(sdp));
                Ok(())
            }
            MediaPayload::SdpAnswer(sdp) => {
                let p = self.participant(key)?;
                if !p.awaiting_answer {
                    return Err(invalid(key, "answer without an offer"));
                }
                let sdp = p.later_description(sdp);
                let answer = RTCSessionDescription::answer(sdp).map_err(|e| invalid(key, e))?;
                p.pc.set_remote_description(answer).await.map_err(|e| invalid(key, e))?;
                p.awaiting_answer = false;
                for subscription in p.subscriptions.values().filter(|s| s.offered) {
                    subscription.target.go_live();
                }
                if p.renegotiate {
                    Self::negotiate(key, p).await?;
                }
                Ok(())
            }
            MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
                let p = self.participant(key)?;
                if candidate.is_empty() {
                    return Ok(()); // end of candidates
                }
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid: (!sdp_mid.is_empty()).then_some(sdp_mid),
                    sdp_mline_index: Some(
                        u16::try_from(sdp_mline_index)
                            .map_err(|_| invalid(key, "m-line index out of range"))?,
                    ),
                    ..Default::default()
                };
                // A participant exists once its offer was applied: the candidate has its
                // description.
                p.pc.add_ice_candidate(init).await.map_err(|e| invalid(key, e))?;
                Ok(())
            }
        }
    }

    /// A device's first offer: check its token, answer, then offer it the others' streams.
    async fn join(&mut self, key: &ParticipantKey, sdp: String) -> Result<(), SfuError> {
        let unauthorized = |reason| SfuError::Unauthorized {
            call_id: key.call_id.clone(),
            user: key.user.clone(),
            device: key.device.clone(),
            reason,
        };
        let token = media_token(&sdp).ok_or_else(|| unauthorized(crate::TokenError::Missing))?;
        self.tokens.verify(token, &key.call_id, &key.user, &key.device, now_s()).map_err(unauthorized)?;
        let audio_level_ext = audio_level_extension_id(&sdp);
        let offer = RTCSessionDescription::offer(sdp).map_err(|e| invalid(key, e))?;
        let (pc, shared) = connect(
            key.clone(),
            &self.config.bind_addrs,
            &self.config.ice_servers,
            self.events.clone(),
            self.me.clone(),
        )
        .await?;
        let answered = async {
            pc.set_remote_description(offer).await.map_err(|e| invalid(key, e))?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            pc.local_description().await.ok_or_else(|| SfuError::WebRtc("no answer".into()))
        }
        .await;
        let answer = match answered {
            Ok(answer) => answer,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        shared.send_signal(MediaPayload::SdpAnswer(answer.sdp));
        shared.release_candidates();
        tracing::info!(call = %key.call_id, user = %key.user, device = %key.device, "sfu: participant joined");
        let mut participant = Participant {
            pc,
            shared,
            awaiting_answer: false,
            renegotiate: false,
            published: HashMap::new(),
            subscriptions: HashMap::new(),
            views: HashMap::new(),
            audio_level_ext,
        };
        let call = self.calls.entry(key.call_id.clone()).or_default();
        let others: Vec<(Member, MediaKind, Arc<Fanout>)> = call
            .iter()
            .flat_map(|(member, p)| {
                p.published
                    .iter()
                    .map(move |(kind, published)| (member.clone(), *kind, Arc::clone(&published.fanout)))
            })
            .collect();
        // The participant is in from here on: a stream that cannot be added is logged and the
        // rest still offered (it has its answer already).
        for (publisher, kind, fanout) in others {
            if let Err(e) =
                Self::subscribe(key, &mut participant, &publisher, kind, &fanout, &self.dropped).await
            {
                tracing::warn!(call = %key.call_id, user = %key.user, publisher = %publisher.0, error = %e, "sfu: cannot forward a track");
            }
        }
        let offered =
            if participant.renegotiate { Self::negotiate(key, &mut participant).await } else { Ok(()) };
        call.insert(key.member(), participant);
        offered
    }

    /// Adds an outgoing track to `subscriber` carrying `publisher`'s stream of `kind`. The track
    /// is offered at the next negotiation.
    async fn subscribe(
        key: &ParticipantKey,
        subscriber: &mut Participant,
        publisher: &Member,
        kind: MediaKind,
        fanout: &Arc<Fanout>,
        dropped: &Arc<AtomicU64>,
    ) -> Result<(), SfuError> {
        let ssrc = rand_ssrc();
        let (codec_kind, codec, name) = match kind {
            MediaKind::Audio => (RtpCodecKind::Audio, opus_codec(), "audio"),
            MediaKind::Video => (RtpCodecKind::Video, vp8_codec(), "video"),
        };
        // The stream id is the publisher's user id: the subscriber's adapter tells by it whose
        // media a track carries. The track id is new for every subscription (it ends in the
        // subscription's SSRC): the subscriber's stack routes packets and track events by track
        // id, and a publisher that left and came back must not get the id of its old track, whose
        // receiver is still known there (its media section went inactive, it did not end). With
        // the old id the new stream went to the old receiver, which dropped it.
        let track = MediaStreamTrack::new(
            publisher.0.to_string(),
            format!("{}-{}-{name}-{ssrc:08x}", publisher.0, publisher.1),
            name.to_owned(),
            codec_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        );
        let track = Arc::new(TrackLocalStaticRTP::new(track));
        let sender = match kind {
            MediaKind::Audio => subscriber.pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>).await?,
            // Video always gets a send-only section of its own. `add_track` would reuse the
            // subscriber's own video section, whose `a=rid`/`a=simulcast:recv` lines (we receive
            // its simulcast there) make the subscriber's stack take the forwarded track for a
            // simulcast one and wait for `rid` header extensions that never come.
            MediaKind::Video => {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                };
                let transceiver = subscriber
                    .pc
                    .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal>, Some(init))
                    .await?;
                transceiver
                    .sender()
                    .await?
                    .ok_or_else(|| SfuError::WebRtc("no sender for a new track".into()))?
            }
        };
        let layer = match kind {
            MediaKind::Video => subscriber.views.get(&publisher.0).copied().unwrap_or(Layer::Full),
            MediaKind::Audio => Layer::Full,
        };
        let target = Target::spawn(track, ssrc, layer, Arc::clone(dropped));
        fanout.write().unwrap_or_else(|p| p.into_inner()).insert(key.member(), Arc::clone(&target));
        subscriber
            .subscriptions
            .insert((publisher.clone(), kind), Subscription { sender, ssrc, target, offered: false });
        subscriber.renegotiate = true;
        Ok(())
    }

    /// Offers the participant its current tracks, unless an offer is already out (then after
    /// its answer).
    async fn negotiate(key: &ParticipantKey, p: &mut Participant) -> Result<(), SfuError> {
        if p.awaiting_answer {
            p.renegotiate = true;
            return Ok(());
        }
        let offer = p.pc.create_offer(None).await?;
        p.pc.set_local_description(offer).await?;
        let sdp = p.pc.local_description().await.ok_or_else(|| SfuError::WebRtc("no offer".into()))?.sdp;
        tracing::debug!(call = %key.call_id, user = %key.user, tracks = p.subscriptions.len(), "sfu: offering tracks");
        p.shared.send_signal(MediaPayload::SdpOffer(sdp));
        p.awaiting_answer = true;
        p.renegotiate = false;
        for subscription in p.subscriptions.values_mut() {
            subscription.offered = true;
        }
        Ok(())
    }

    /// A participant's track arrived: forward it to everyone else in the call.
    async fn on_track(&mut self, key: &ParticipantKey, track: Arc<dyn TrackRemote>) {
        let Some(kind) = media_kind(track.kind().await) else {
            tracing::warn!(call = %key.call_id, user = %key.user, "sfu: track of unknown kind ignored");
            return;
        };
        // A simulcast track can be announced before the stack has bound any of its SSRCs (its
        // streams' `OnOpen` come on another queue): the forwarding task learns them as packets
        // arrive, so the track must not wait for one here; left unread, its queue fills and
        // nobody gets the publisher's video.
        let ssrc = track.ssrcs().await.first().copied();
        let Some(call) = self.calls.get_mut(&key.call_id) else { return };
        let Some(publisher) = call.get_mut(&key.member()) else { return };
        tracing::debug!(call = %key.call_id, user = %key.user, ?kind, ?ssrc, "sfu: track published");
        let fanout = Arc::new(Fanout::default());
        let layers = Arc::new(LayerSsrcs::default());
        let level_tap = match (kind, publisher.audio_level_ext) {
            (MediaKind::Audio, Some(extension)) => {
                let levels = Arc::clone(self.levels.entry(key.call_id.clone()).or_default());
                crate::connection::lock(&levels).add(&key.user);
                Some(LevelTap { levels, user: key.user.clone(), extension })
            }
            _ => None,
        };
        let task = tokio::spawn(forward(
            Arc::clone(&track),
            kind,
            Arc::clone(&fanout),
            Arc::clone(&layers),
            Arc::clone(&self.layer_keyframes),
            level_tap,
        ));
        if let Some(old) = publisher
            .published
            .insert(kind, Published { track, ssrc, layers, fanout: Arc::clone(&fanout), task })
        {
            old.task.abort();
        }
        let member = key.member();
        for (other, subscriber) in call.iter_mut().filter(|(m, _)| **m != member) {
            let sub_key = ParticipantKey {
                call_id: key.call_id.clone(),
                user: other.0.clone(),
                device: other.1.clone(),
            };
            let done = async {
                if !subscriber.subscriptions.contains_key(&(member.clone(), kind)) {
                    Self::subscribe(&sub_key, subscriber, &member, kind, &fanout, &self.dropped).await?;
                }
                Self::negotiate(&sub_key, subscriber).await
            }
            .await;
            if let Err(e) = done {
                tracing::warn!(call = %key.call_id, user = %other.0, error = %e, "sfu: cannot forward a track");
            }
        }
    }

    /// A subscriber asked for a key frame of stream `ssrc` on its connection: pass it on to the
    /// publisher, at most once per [`crate::keyframe_gate::MIN_INTERVAL`] for this subscriber.
    async fn on_keyframe_request(&mut self, key: &ParticipantKey, ssrc: u32, at: Instant) {
        let Some(call) = self.calls.get_mut(&key.call_id) else { return };
        let Some(subscriber) = call.get(&key.member()) else { return };
        let Some((publisher, subscription)) = subscriber.video_subscription(ssrc) else { return };
        let layer = {
            let mut state = crate::connection::lock(&subscription.target.state);
            if !state.gate.allow(at) {
                self.keyframes_held += 1;
                return;
            }
            // The layer it gets, or the one it waits to switch to.
            state.layers.keyframe_layer()
        };
        let publisher = publisher.clone();
        let Some(published) = call.get(&publisher).and_then(|p| p.published.get(&MediaKind::Video)) else {
            return;
        };
        self.keyframes_forwarded += 1;
        let known = published.layers.get(layer).or(published.ssrc).or_else(|| published.layers.any());
        let Some(media_ssrc) = known else {
            tracing::debug!(call = %key.call_id, "sfu: key frame asked before any packet of the stream");
            return;
        };
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
        tracing::debug!(call = %key.call_id, subscriber = %key.user, publisher = %publisher.0, "sfu: key frame requested");
        if let Err(e) = published.track.write_rtcp(vec![Box::new(pli)]).await {
            tracing::debug!(error = %e, "sfu: PLI not sent");
        }
    }

    /// A subscriber reported loss on the video stream `ssrc` forwarded to it: while its link
    /// loses the full layer it is held at the tiny one (`loss_guard`); the switch happens at the
    /// layer's next key frame, which the forwarding task asks for.
    fn on_loss(&mut self, key: &ParticipantKey, ssrc: u32, fraction_lost: u8, at: Instant) {
        let Ok(subscriber) = self.participant(key) else { return };
        let Some((publisher, subscription)) = subscriber.video_subscription(ssrc) else { return };
        let mut state = crate::connection::lock(&subscription.target.state);
        if let Some(capped) = state.loss.on_report(fraction_lost, at) {
            tracing::info!(
                call = %key.call_id, subscriber = %key.user, publisher = %publisher.0, fraction_lost, capped,
                "sfu: subscriber's loss moves its layer"
            );
            state.layers.cap(capped);
        }
    }

    /// A subscriber chose the layer of `publisher`'s video it wants: remembered for streams
    /// forwarded later, and applied to the ones forwarded now (at the layer's next key frame,
    /// which the forwarding task asks for).
    fn on_video_view(&mut self, key: &ParticipantKey, publisher: UserId, layer: Layer) {
        let Ok(subscriber) = self.participant(key) else { return };
        tracing::debug!(call = %key.call_id, subscriber = %key.user, publisher = %publisher, ?layer, "sfu: video view");
        for (_, subscription) in subscriber
            .subscriptions
            .iter()
            .filter(|((member, kind), _)| member.0 == publisher && *kind == MediaKind::Video)
        {
            crate::connection::lock(&subscription.target.state).layers.want(layer);
        }
        subscriber.views.insert(publisher, layer);
    }

    /// Closes a participant's connection and takes its streams away from the others.
    async fn remove(&mut self, key: &ParticipantKey) -> bool {
        let Some(call) = self.calls.get_mut(&key.call_id) else { return false };
        let member = key.member();
        let Some(gone) = call.remove(&member) else { return false };
        gone.shared.closed.store(true, std::sync::atomic::Ordering::Release);
        for published in gone.published.values() {
            published.task.abort();
        }
        for (other, p) in call.iter_mut() {
            for published in p.published.values() {
                published.fanout.write().unwrap_or_else(|e| e.into_inner()).remove(&member);
            }
            let theirs: Vec<(Member, MediaKind)> =
                p.subscriptions.keys().filter(|(publisher, _)| *publisher == member).cloned().collect();
            for sub in &theirs {
                if let Some(s) = p.subscriptions.remove(sub)
                    && let Err(e) = p.pc.remove_track(&s.sender).await
                {
                    tracing::debug!(error = %e, "sfu: removing a forwarded track");
                }
            }
            if !theirs.is_empty() {
                let sub_key = ParticipantKey {
                    call_id: key.call_id.clone(),
                    user: other.0.clone(),
                    device: other.1.clone(),
                };
                if let Err(e) = Self::negotiate(&sub_key, p).await {
                    tracing::debug!(error = %e, "sfu: renegotiating after a leave");
                }
            }
        }
        let user_left = !call.keys().any(|(user, _)| *user == key.user);
        if call.is_empty() {
            self.calls.remove(&key.call_id);
            self.levels.remove(&key.call_id);
        } else if user_left && let Some(levels) = self.levels.get(&key.call_id) {
            crate::connection::lock(levels).remove(&key.user);
        }
        if let Err(e) = gone.pc.close().await {
            tracing::debug!(error = %e, "sfu: closing a connection");
        }
        tracing::info!(call = %key.call_id, user = %key.user, device = %key.device, "sfu: participant left");
        true
    }
}
