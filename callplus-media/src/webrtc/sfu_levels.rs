//! The SFU's audio levels and active speaker, read from its control channel: the SFU sends
//! `{"type":"audio_levels","levels":{"alice":0.42},"active_speaker":"alice"}` (levels 0–1) when
//! they change (`callplus_sfu::levels`). They become [`MediaEvent::AudioLevel`] (0–100) for the
//! remote users whose level changed and [`MediaEvent::ActiveSpeaker`] when the speaker changes.
//! Once the SFU sends levels, remote levels come from it alone, not also from our decoding.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use callplus_session::UserId;
use serde::Deserialize;

use super::lock;
use super::peer::PeerShared;
use crate::adapter::MediaEvent;

/// Longest message read; longer ones are ignored.
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(tag = "type", rename = "audio_levels")]
struct AudioLevels {
    levels: BTreeMap<String, f32>,
    active_speaker: Option<String>,
}

/// What was last reported from the SFU's messages.
#[derive(Debug, Default)]
pub(super) struct SfuLevels {
    levels: HashMap<UserId, u8>,
    /// `None` before the first message.
    speaker: Option<Option<UserId>>,
}

/// Handles one message from the SFU's control channel; anything but audio levels is ignored.
pub(super) fn on_control_message(shared: &PeerShared, data: &[u8]) {
    if data.len() > MAX_MESSAGE {
        return;
    }
    let Ok(message) = serde_json::from_slice::<AudioLevels>(data) else {
        tracing::debug!(call = %shared.call_id, "SFU control message ignored");
        return;
    };
    shared.sfu_levels_seen.store(true, Ordering::Release);
    let mut events = Vec::new();
    {
        let mut last = lock(&shared.sfu_levels);
        for (user, level) in &message.levels {
            let Ok(user) = UserId::new(user) else { continue };
            if user == shared.local_user {
                continue; // our own level comes from our source
            }
            let level = (level.clamp(0.0, 1.0) * 100.0).round() as u8;
            if last.levels.insert(user.clone(), level) != Some(level) {
                events.push(MediaEvent::AudioLevel { call_id: shared.call_id.clone(), user, level });
            }
        }
        last.levels.retain(|user, _| message.levels.contains_key(user.as_str()));
        let speaker = message.active_speaker.as_deref().and_then(|u| UserId::new(u).ok());
        if last.speaker.as_ref() != Some(&speaker) {
            last.speaker = Some(speaker.clone());
            events.push(MediaEvent::ActiveSpeaker { call_id: shared.call_id.clone(), user: speaker });
        }
    }
    for event in events {
        shared.emit(event);
    }
}
