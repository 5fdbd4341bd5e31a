//! The media adapter of callplus: real WebRTC audio and video between the participants of a call.
//!
//! The client drives a [`MediaAdapter`] from the signalling engine's outputs (start media for a
//! call with its peers, stop, mute, switch source, apply config, relay SDP/ICE) and reads
//! [`MediaEvent`]s back (signalling messages to send, remote media available, first frame, stats,
//! audio levels, errors). [`WebRtcMediaAdapter`] implements it on the `webrtc` crate: 1:1 calls
//! peer-to-peer, small MULTI calls as a full mesh, larger ones over one connection to the SFU
//! (`callplus-sfu`, [`SfuRoute`]; see `docs/media.md`).
//!
//! Local media comes from the app as encoded samples through a [`MediaSource`] (Opus audio, VP8
//! video); remote media goes to a per-user [`MediaSink`]. The crate ships test sources (an Opus
//! sine [`ToneSource`], a VP8 [`TestPatternSource`]) and file sinks ([`OggOpusSink`],
//! [`IvfSink`]) so a call can be checked with `ffprobe` or `sox`.
//!
//! Who offers is decided by the client engine ([`PeerSpec::offerer`], from its media commands),
//! by a rule both ends compute alike, so two peers never offer at once.
// Denied, not forbidden: the libvpx encoder (`vp8_encoder`) alone allows it.
#![deny(unsafe_code)]

mod adapter;
mod error;
mod files;
pub mod inspect;
mod keyframe_requests;
mod level;
#[cfg(feature = "test-support")]
pub mod lossy_relay;
pub mod opus_packet;
mod pli_pacer;
mod reorder;
mod rtcp_observer;
mod rtp_seq;
mod sink;
mod source;
mod testsrc;
pub mod vp8;
mod vp8_encoder;
mod webrtc;

pub use adapter::{
    MediaAdapter, MediaEvent, MediaEvents, MediaStats, PeerSpec, PeerStats, SfuRoute, StartMedia,
};
pub use error::MediaError;
pub use files::{IvfSink, OggOpusSink};
pub use level::audio_level;
pub use sink::{ChannelSink, MediaSink, RemoteFrame, TeeSink};
pub use source::{AudioConfig, EncodedSample, MediaSource, VideoConfig, VideoLayer};
pub use testsrc::{TestPatternSource, ToneSource};
pub use webrtc::{WebRtcConfig, WebRtcMediaAdapter};

pub use callplus_session::{CallId, DeviceId, IceServer, MediaKind, MediaPayload, MediaType, UserId};
