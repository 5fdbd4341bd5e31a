//! Switchboard settings.

use crate::model::snapshot::IceServer;

/// What happens to a callee who is already in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusyPolicy {
    /// Ring anyway (call waiting) and tell the caller the callee is busy.
    #[default]
    RingBusy,
    /// Reject at once with BUSY / REMOTE_BUSY.
    AutoReject,
}

/// Whether a user may be connected from several devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Every device rings; the first to answer takes the call.
    #[default]
    MultiDevice,
    /// A new login kicks the older device (KICKED_OTHER_LOGIN).
    SingleDevice,
}

/// Switchboard settings. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchboardConfig {
    /// Ring timeout when a call does not set one (0 = ring until answered or cancelled).
    pub ring_timeout_ms: u32,
    /// How long a change-media-type request waits for the peer.
    pub change_media_type_timeout_ms: u32,
    /// How often clients should ping (told in Welcome).
    pub heartbeat_interval_ms: u32,
    /// A device silent this long is gone: its calls end for it with NETWORK_ERROR.
    pub liveness_timeout_ms: u32,
    /// How long after its last frame a device session can still be resumed.
    pub resume_window_ms: u32,
    /// Most participants of a call with video.
    pub max_video_participants: usize,
    /// Most participants of an audio-only call.
    pub max_audio_participants: usize,
    /// Busy callees.
    pub busy_policy: BusyPolicy,
    /// Several devices per user, or one.
    pub device_policy: DevicePolicy,
    /// Whether push requests are emitted for offline callees.
    pub push_enabled: bool,
    /// STUN/TURN servers handed to clients.
    pub ice_servers: Vec<IceServer>,
    /// Most unacked frames kept per device before the device is dropped as too slow.
    pub max_unacked_frames: usize,
    /// Most bytes of unacked frames kept per device (estimated by
    /// [`frame_bytes`](super::frame_bytes)) before the device is dropped as too slow. A device
    /// always gets at least one frame, however large.
    pub max_unacked_bytes: usize,
    /// Most bytes of unacked frames kept for all the devices of one user together; past it the
    /// device holding the most is dropped as too slow.
    pub max_user_unacked_bytes: usize,
    /// Most device sessions (connected or kept for a resume) one user may have; a Hello from
    /// another device is refused with TOO_MANY_DEVICES. 0 = no limit. Not applied with
    /// [`DevicePolicy::SingleDevice`] (a new login replaces the old one there).
    pub max_devices_per_user: usize,
    /// Sustained requests per second allowed per device.
    pub requests_per_second: u32,
    /// Burst of requests allowed per device above the sustained rate.
    pub request_burst: u32,
    /// How long an ended call stays in memory, answered from there by GetCall. After it, GetCall
    /// asks storage for the requester's record of the call ([`Query::EndedCall`]), which holds
    /// the call as it ended: held for ten minutes, ended calls took about 1 KiB each, 600 MB at
    /// 1,000 calls/s (docs/performance.md, "Ended calls answered from the records").
    ///
    /// [`Query::EndedCall`]: super::Query::EndedCall
    pub ended_call_retention_ms: u32,
    /// This node's id in a deployment of several nodes; empty for a single node. It leads every
    /// call and session id this switchboard mints, so nodes started in the same millisecond
    /// cannot mint the same ids. 0-[`MAX_NODE_ID_LEN`] characters of `[A-Za-z0-9_-]`.
    pub node_id: String,
    /// How long a participant whose connection to the SFU failed has to connect again before it
    /// is removed from the call with NETWORK_ERROR (see
    /// [`Switchboard::sfu_participant_failed`](super::Switchboard::sfu_participant_failed)).
    /// Shorter: a participant on a dead network leaves the others' view sooner; longer: a
    /// slow network has more time to bring media back. Default [`MEDIA_RECOVERY_MS`].
    pub media_recovery_ms: u32,
}

/// The default of [`SwitchboardConfig::media_recovery_ms`]: it covers the SFU noticing the
/// failure of a reconnection too, plus an ICE and DTLS setup over a poor network.
pub const MEDIA_RECOVERY_MS: u32 = 20_000;

/// Longest node id: with the separator, the 10-character start prefix and a 16-digit counter,
/// a call id stays within the 64 characters an id may have.
pub const MAX_NODE_ID_LEN: usize = 32;

/// A [`SwitchboardConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Devices ping every `heartbeat_interval_ms`; a liveness timeout that is not at least twice
    /// that would end healthy calls at the first ping that arrives a little late.
    #[error(
        "the liveness timeout ({liveness_ms} ms) must be at least twice the heartbeat interval \
         ({heartbeat_ms} ms), so that one late ping does not end a healthy call"
    )]
    LivenessTooShort {
        /// `liveness_timeout_ms`.
        liveness_ms: u32,
        /// `heartbeat_interval_ms`.
        heartbeat_ms: u32,
    },
    /// A heartbeat interval of 0 would leave the ping rate to each client.
    #[error("the heartbeat interval must be positive")]
    NoHeartbeat,
    /// A node id that would make call ids invalid.
    #[error("the node id {0:?} must be at most 32 characters of A-Z a-z 0-9 _ -")]
    NodeId(String),
}

impl SwitchboardConfig {
    /// Checks the settings that depend on each other: the liveness timeout must be at least
    /// twice the (positive) heartbeat interval.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::NoHeartbeat);
        }
        if u64::from(self.liveness_timeout_ms) < 2 * u64::from(self.heartbeat_interval_ms) {
            return Err(ConfigError::LivenessTooShort {
                liveness_ms: self.liveness_timeout_ms,
                heartbeat_ms: self.heartbeat_interval_ms,
            });
        }
        if !valid_node_id(&self.node_id) {
            return Err(ConfigError::NodeId(self.node_id.clone()));
        }
        Ok(())
    }
}

/// Whether `id` can lead call ids: empty (a single node), or 1-[`MAX_NODE_ID_LEN`] characters of
/// `[A-Za-z0-9_-]`.
pub fn valid_node_id(id: &str) -> bool {
    id.len() <= MAX_NODE_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Default for SwitchboardConfig {
    fn default() -> Self {
        SwitchboardConfig {
            ring_timeout_ms: 60_000,
            change_media_type_timeout_ms: 30_000,
            heartbeat_interval_ms: 5_000,
            liveness_timeout_ms: 20_000,
            resume_window_ms: 60_000,
            max_video_participants: 16,
            max_audio_participants: 32,
            busy_policy: BusyPolicy::default(),
            device_policy: DevicePolicy::default(),
            push_enabled: true,
            ice_servers: Vec::new(),
            max_unacked_frames: 4096,
            max_unacked_bytes: 8 << 20,
            max_user_unacked_bytes: 32 << 20,
            max_devices_per_user: 16,
            requests_per_second: 50,
            request_burst: 200,
            ended_call_retention_ms: 30_000,
            node_id: String::new(),
            media_recovery_ms: MEDIA_RECOVERY_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_must_be_at_least_twice_the_heartbeat() {
        assert_eq!(SwitchboardConfig::default().validate(), Ok(()));
        let cfg = |heartbeat_interval_ms, liveness_timeout_ms| SwitchboardConfig {
            heartbeat_interval_ms,
            liveness_timeout_ms,
            ..SwitchboardConfig::default()
        };
        assert_eq!(cfg(5_000, 10_000).validate(), Ok(()));
        for (heartbeat, liveness) in [(5_000, 5_000), (5_000, 4_000), (5_000, 9_999), (5_000, 0)] {
            assert_eq!(
                cfg(heartbeat, liveness).validate(),
                Err(ConfigError::LivenessTooShort { liveness_ms: liveness, heartbeat_ms: heartbeat })
            );
        }
        assert_eq!(cfg(0, 20_000).validate(), Err(ConfigError::NoHeartbeat));
        assert!(cfg(u32::MAX, u32::MAX).validate().is_err(), "no overflow hides a short timeout");
    }

    #[test]
    fn node_ids_must_fit_in_call_ids() {
        let cfg =
            |node_id: &str| SwitchboardConfig { node_id: node_id.to_owned(), ..SwitchboardConfig::default() };
        for ok in ["", "node-1", "a_b", &"n".repeat(MAX_NODE_ID_LEN)] {
            assert_eq!(cfg(ok).validate(), Ok(()), "{ok:?}");
        }
        for bad in ["no spaces", "dot.ted", &"n".repeat(MAX_NODE_ID_LEN + 1)] {
            assert_eq!(cfg(bad).validate(), Err(ConfigError::NodeId(bad.to_owned())), "{bad:?}");
        }
    }
}
