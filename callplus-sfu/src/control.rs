//! The control channel between a participant and the SFU: a WebRTC data channel on the
//! participant's own connection, opened by the participant (label [`CONTROL_LABEL`]).
//!
//! It carries the subscriber's layer choices: one JSON text message per choice,
//! `{"type":"video_view","user":"<publisher user id>","tiny":true}`. A data channel needs no
//! round trip through the signalling server, arrives over the connection whose forwarding it
//! changes (so it cannot overtake or outlive it), and is what a browser can open too
//! (`pc.createDataChannel("callplus-sfu")`); RTCP, the other in-band path, cannot be written from
//! a page.

use callplus_session::UserId;
use serde::{Deserialize, Serialize};

use crate::layers::Layer;

/// The label of the control data channel.
pub const CONTROL_LABEL: &str = "callplus-sfu";

/// Longest control message read; longer ones are ignored.
pub(crate) const MAX_MESSAGE: usize = 1024;

/// One message from a participant to the SFU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlMessage {
    /// Which layer of `user`'s video this participant wants: the tiny one for a small view.
    VideoView {
        /// The publisher.
        user: String,
        /// The tiny layer (`true`) or the full one.
        tiny: bool,
    },
}

impl ControlMessage {
    /// The message asking for `user`'s video in its tiny or full layer.
    pub fn video_view(user: &UserId, tiny: bool) -> Self {
        ControlMessage::VideoView { user: user.to_string(), tiny }
    }

    /// The text sent on the channel.
    pub fn to_text(&self) -> String {
        // A derived Serialize of strings and bools cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads one message; `None` for anything else (too long, not JSON, an unknown type).
    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.len() > MAX_MESSAGE {
            return None;
        }
        serde_json::from_slice(text).ok()
    }

    /// The publisher and layer of a `video_view` message, with a valid user id.
    pub(crate) fn view(&self) -> Option<(UserId, Layer)> {
        match self {
            ControlMessage::VideoView { user, tiny } => {
                let user = UserId::new(user).ok()?;
                Some((user, if *tiny { Layer::Tiny } else { Layer::Full }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_view_round_trips_and_junk_is_ignored() {
        let bob = UserId::new("bob").unwrap_or_else(|e| panic!("{e}"));
        let text = ControlMessage::video_view(&bob, true).to_text();
        assert_eq!(text, r#"{"type":"video_view","user":"bob","tiny":true}"#);
        let parsed = ControlMessage::parse(text.as_bytes());
        assert_eq!(parsed.and_then(|m| m.view()), Some((bob, Layer::Tiny)));
        assert_eq!(ControlMessage::parse(br#"{"type":"dance"}"#), None);
        assert_eq!(ControlMessage::parse(b"not json"), None);
        let long = format!(r#"{{"type":"video_view","user":"{}","tiny":false}}"#, "b".repeat(MAX_MESSAGE));
        assert_eq!(ControlMessage::parse(long.as_bytes()), None);
    }
}
