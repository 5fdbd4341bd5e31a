//! The backend-neutral surface: the [`MediaAdapter`] trait the client drives and the
//! [`MediaEvent`]s it reads back.

use callplus_session::client::MediaPeer;
use callplus_session::{CallId, DeviceId, IceServer, MediaKind, MediaPayload, MediaType, UserId};
use tokio::sync::mpsc;

use crate::error::MediaError;
use crate::sink::MediaSink;
use crate::source::{AudioConfig, MediaSource, VideoConfig};

/// A remote participant device to exchange media with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The remote user.
    pub user_id: UserId,
    /// The remote user's device in the call.
    pub device_id: DeviceId,
    /// Whether the local side sends the offer to this peer: the client engine decides it
    /// ([`callplus_session::client::offers_to`]) and says so in its media commands.
    pub offerer: bool,
}

impl From<MediaPeer> for PeerSpec {
    fn from(peer: MediaPeer) -> Self {
        PeerSpec { user_id: peer.user_id, device_id: peer.device_id, offerer: peer.offerer }
    }
}

/// Where a call's media goes when it runs through a selective forwarding unit: the client
/// engine's route (the SFU's signalling address and this device's media token), used as is.
pub use callplus_session::SfuRoute;

/// Everything [`MediaAdapter::start`] needs for one call.
#[derive(Debug, Clone)]
pub struct StartMedia {
    /// The call.
    pub call_id: CallId,
    /// The local user.
    pub local_user: UserId,
    /// The local device.
    pub local_device: DeviceId,
    /// The other participants' devices (the local user never appears here).
    pub peers: Vec<PeerSpec>,
    /// AUDIO or AUDIO_VIDEO.
    pub media_type: MediaType,
    /// STUN/TURN servers handed out by the signalling server (may be empty on a LAN).
    pub ice_servers: Vec<IceServer>,
    /// `Some`: the call's media goes through this SFU, over one connection, instead of a mesh;
    /// `peers` are then only the other participants (no connection is made to them, and the
    /// mesh limits do not apply).
    pub sfu: Option<SfuRoute>,
}

/// Receive statistics for one remote peer over the last report interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The remote user.
    pub user: UserId,
    /// The remote device.
    pub device: DeviceId,
    /// Packets lost / packets expected from this peer in the interval, in percent (0–100).
    pub recv_loss_pct: f64,
    /// Received media bitrate from this peer (RTP payload and headers), kbit/s.
    pub bitrate_kbps: f64,
    /// Key-frame requests (RTCP PLI) we sent this peer in the interval: its video could not be
    /// decoded until a key frame (loss, or no key frame yet).
    pub keyframe_requests_sent: u32,
    /// Key-frame requests (RTCP PLI and FIR, before coalescing) this peer sent about our video in
    /// the interval.
    pub keyframe_requests_received: u32,
    /// Video packets from this peer that arrived late (after newer ones) and were still put back
    /// in place in the interval: retransmissions answering our NACKs, or reordering.
    pub video_packets_recovered: u32,
    /// Missing video packets from this peer given up in the interval (not retransmitted in time):
    /// each such gap makes the video undecodable until a key frame.
    pub video_packets_lost: u32,
}

/// One status report (the status reports of [client operations](docs/protocol.md#client-operations)), built from the WebRTC stack's own stats.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaStats {
    /// The call.
    pub call_id: CallId,
    /// Loss of our sent packets as the peers report it (RTCP receiver reports), in percent;
    /// the mean over the peers that reported.
    pub send_loss_pct: f64,
    /// Round-trip time in milliseconds (RTCP, else ICE); the mean over the peers, `None` before
    /// the first measurement.
    pub rtt_ms: Option<f64>,
    /// One entry per connected peer.
    pub per_peer: Vec<PeerStats>,
}

/// What a media backend tells the client.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MediaEvent {
    /// Send this SDP/ICE message to one device over signalling (`MediaSignal` request).
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
    /// The media path to a peer device is up (ICE + DTLS connected).
    PeerConnected {
        /// The call.
        call_id: CallId,
        /// The peer.
        user: UserId,
        /// The peer's device.
        device: DeviceId,
    },
    /// A remote user's track started (`user_media_available`).
    UserMediaAvailable {
        /// The call.
        call_id: CallId,
        /// The remote user.
        user: UserId,
        /// Audio or video.
        kind: MediaKind,
    },
    /// The first complete remote frame of this kind from this user arrived.
    FirstFrame {
        /// The call.
        call_id: CallId,
        /// The remote user.
        user: UserId,
        /// Audio or video.
        kind: MediaKind,
        /// Arrival time, milliseconds since the Unix epoch.
        at_ms: i64,
    },
    /// The once-a-second status report.
    Stats(MediaStats),
    /// A user's audio level, 0–100 (linear RMS; a full-scale sine is 100). Reported for remote
    /// users from their decoded audio (once a second) or, through an SFU that sends levels, from
    /// the SFU's messages (when they change, up to five times a second); for the local user when
    /// its source gives a level.
    AudioLevel {
        /// The call.
        call_id: CallId,
        /// The user.
        user: UserId,
        /// Level 0–100.
        level: u8,
    },
    /// Through the SFU: the active speaker changed, the loudest user for a moment (`None` until
    /// someone has spoken, or once the speaker left). Its levels come as
    /// [`MediaEvent::AudioLevel`].
    ActiveSpeaker {
        /// The call.
        call_id: CallId,
        /// The speaker.
        user: Option<UserId>,
    },
    /// Remote media of this user could not be received or played (`fetch_remote_media_error`).
    FetchRemoteMediaError {
        /// The call.
        call_id: CallId,
        /// The remote user.
        user: UserId,
        /// Why, as an SDK result code.
        code: callplus_session::Code,
    },
    /// Any other failure worth telling the app.
    Error {
        /// The call, when the error belongs to one.
        call_id: Option<CallId>,
        /// What happened.
        message: String,
    },
}

/// The stream of [`MediaEvent`]s a backend produces; returned by the backend's constructor.
#[derive(Debug)]
pub struct MediaEvents {
    rx: mpsc::UnboundedReceiver<MediaEvent>,
}

impl MediaEvents {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<MediaEvent>) -> Self {
        MediaEvents { rx }
    }

    /// The next event; `None` once the adapter is dropped.
    pub async fn recv(&mut self) -> Option<MediaEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<MediaEvent> {
        self.rx.try_recv().ok()
    }
}

/// What the client needs from a media backend. [`crate::WebRtcMediaAdapter`] is one: a mesh of
/// peer connections, or one connection to a selective forwarding unit ([`StartMedia::sfu`]), with
/// the same calls and the same events either way.
///
/// Devices (sources, mute state, configs) and sinks belong to the adapter, not to a call: the
/// app sets its camera once and it is used by whichever call runs.
///
/// Events come out of the [`MediaEvents`] stream that the backend's constructor returned.
#[async_trait::async_trait]
pub trait MediaAdapter: Send + Sync {
    /// Starts media for a call with these peers: creates the peer connections and sends the
    /// offers this side owes ([`PeerSpec::offerer`]). Signals that arrived for the call before
    /// `start` are applied now.
    ///
    /// # Errors
    /// [`MediaError::MeshTooLarge`] beyond the mesh size, [`MediaError::CallExists`],
    /// [`MediaError::InvalidPeer`] for the local user or a duplicate, stack failures.
    async fn start(&self, start: StartMedia) -> Result<(), MediaError>;

    /// Adds a peer to a running call (someone joined a MULTI call).
    async fn add_peer(&self, call_id: &CallId, peer: PeerSpec) -> Result<(), MediaError>;

    /// Removes a peer from a running call (someone left) and closes its connection.
    async fn remove_peer(&self, call_id: &CallId, user: &UserId, device: &DeviceId)
    -> Result<(), MediaError>;

    /// Stops all media of a call and closes its connections; the sinks of its users are told
    /// the stream ended. Signals that arrive for the call later are dropped.
    async fn stop(&self, call_id: &CallId) -> Result<(), MediaError>;

    /// Applies an SDP offer/answer or ICE candidate from a peer device of the call.
    async fn handle_signal(
        &self,
        call_id: &CallId,
        from_user: &UserId,
        from_device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), MediaError>;

    /// Switches a running call between AUDIO and AUDIO_VIDEO without renegotiation (video
    /// stops or starts being sent).
    async fn set_media_type(&self, call_id: &CallId, media_type: MediaType) -> Result<(), MediaError>;

    /// Camera on/off: when off, no video packet is sent. Returns once the change is in effect.
    async fn set_camera_enabled(&self, enabled: bool) -> Result<(), MediaError>;

    /// Microphone on/off: when off, no audio packet is sent. Returns once in effect.
    async fn set_microphone_enabled(&self, enabled: bool) -> Result<(), MediaError>;

    /// Replaces the video source (or sets the first one); no renegotiation.
    async fn switch_camera(&self, source: Box<dyn MediaSource>) -> Result<(), MediaError>;

    /// Replaces the audio source (or sets the first one); no renegotiation.
    async fn switch_microphone(&self, source: Box<dyn MediaSource>) -> Result<(), MediaError>;

    /// Hands the video config to the current and future video sources.
    async fn apply_video_config(&self, config: VideoConfig) -> Result<(), MediaError>;

    /// Hands the audio config to the current and future audio sources.
    async fn apply_audio_config(&self, config: AudioConfig) -> Result<(), MediaError>;

    /// Sets where a remote user's media of this kind goes (`set_video_view` / `play_media`).
    /// The local user's own media is never delivered to a sink.
    fn set_sink(&self, user: UserId, kind: MediaKind, sink: Box<dyn MediaSink>);

    /// Removes a sink (it is told the stream ended).
    fn remove_sink(&self, user: &UserId, kind: MediaKind);

    /// Which layer of `user`'s video to receive: the tiny one (a quarter of the pixels) for a
    /// small view, or the full one (the default). Through the SFU, the choice goes to the SFU,
    /// which switches at the layer's next key frame; it holds across calls until changed. A
    /// peer-to-peer call sends one layer only, so it changes nothing there.
    async fn set_video_tiny(&self, user: &UserId, tiny: bool);

    /// `set_video_view(user, sink, tiny)`: where `user`'s video goes, and in which layer.
    async fn set_video_view(&self, user: UserId, sink: Box<dyn MediaSink>, tiny: bool) {
        self.set_video_tiny(&user, tiny).await;
        self.set_sink(user, MediaKind::Video, sink);
    }

    /// `mute_all_remote_audio`: while muted, no remote user's audio reaches a sink (nothing is
    /// played); it is still received, so audio levels, status reports and first-frame times go
    /// on, and unmuting resumes at once without renegotiation. The switch holds across calls
    /// until changed; it does not touch what this user sends.
    fn set_remote_audio_muted(&self, muted: bool);

    /// Whether remote audio is muted ([`MediaAdapter::set_remote_audio_muted`]).
    fn remote_audio_muted(&self) -> bool;
}
