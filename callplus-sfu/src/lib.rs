//! The selective forwarding unit (SFU) of callplus: group calls without a full mesh.
//!
//! Each participant device of a MULTI call has one WebRTC connection to the SFU. It publishes its
//! audio and video once; the SFU forwards every RTP packet, undecoded, to each other participant
//! on that participant's own connection. Only devices holding a media token issued for their
//! (call, user, device) get an answer ([`MediaTokens`]); DTLS-SRTP protects every connection.
//!
//! Per subscriber: the SFU answers its NACKs from the packets it sent on that connection (the
//! stack's NACK responder), asks the publisher itself for what never reached the SFU, and passes
//! its key-frame requests (PLI/FIR) on to the publisher at most once per 500 ms
//! ([`keyframe_gate`]).
//!
//! Simulcast: a publisher's video may come in two layers (`rid` "f" and "q"); each subscriber gets
//! one layer per publisher, chosen over its control data channel ([`control`]), and is moved
//! between layers at a key frame with its numbering kept continuous ([`layers`]). See
//! `docs/media.md`, "Group calls through the SFU".
//!
//! Audio levels: the publishers' RFC 6464 audio-level header extension gives each publisher's
//! level without decoding; a few times a second the SFU sends every participant the levels and
//! the active speaker on the control channel ([`levels`]).
//!
//! Built on the `webrtc`/`rtc` 0.21 stack the clients use; no codec and no system library.
#![forbid(unsafe_code)]

mod codecs;
mod connection;
pub mod control;
mod error;
mod feedback;
mod forward;
pub mod keyframe_gate;
pub mod layers;
pub mod levels;
mod loss_guard;
mod sfu;
mod simulcast_sdp;
mod token;
mod vp8;

pub use control::{CONTROL_LABEL, ControlMessage};
pub use error::SfuError;
pub use layers::Layer;
pub use levels::AudioLevels;
pub use sfu::{Sfu, SfuConfig, SfuEvent, SfuEvents, SfuStats};
pub use token::{MediaTokens, TokenError};
