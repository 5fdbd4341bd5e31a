//! Value types that describe calls: snapshots, participants, records and summaries.

use std::sync::Arc;

use super::ids::{CallId, DeviceId, UserId};
use super::kinds::{CallType, Delivery, Direction, EndReason, MediaType, ParticipantState};

/// Push settings, forwarded verbatim to the push webhook; the core only reads `disable_push`.
pub type PushConfig = callplus_proto::v1::PushConfig;

/// A STUN/TURN server handed to clients.
pub type IceServer = callplus_proto::v1::IceServer;

/// One device of a callee and how far the invitation got to it (docs/protocol.md#delivery-states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLeg {
    /// The device.
    pub device_id: DeviceId,
    /// Progress of the invitation on it.
    pub delivery: Delivery,
}

/// A user in a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// The user.
    pub user_id: UserId,
    /// Current state.
    pub state: ParticipantState,
    /// Why the participant ended (from its own point of view), once `state` is `Ended`.
    pub reason: Option<EndReason>,
    /// Who invited this user; `None` for the creator.
    pub inviter: Option<UserId>,
    /// When the user was invited (the creator: when the call was created).
    pub invited_at_ms: i64,
    /// When the user became ON_CALL.
    pub connected_at_ms: Option<i64>,
    /// When the user ended.
    pub ended_at_ms: Option<i64>,
    /// The user's devices the invitation reached (or was pushed to).
    pub devices: Vec<DeviceLeg>,
    /// Best delivery over all devices.
    pub delivery: Delivery,
    /// Whether the camera is off.
    pub camera_disabled: bool,
    /// Whether the microphone is off.
    pub microphone_disabled: bool,
    /// The device that answered for this user (the creator: the calling device); media
    /// negotiation is addressed to it.
    pub device_id: Option<DeviceId>,
}

/// A snapshot of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The call.
    pub call_id: CallId,
    /// SINGLE or MULTI.
    pub call_type: CallType,
    /// AUDIO or AUDIO_VIDEO.
    pub media_type: MediaType,
    /// Who started it.
    pub creator: UserId,
    /// Everyone ever invited, the creator first.
    pub participants: Vec<Participant>,
    /// Creation time.
    pub created_at_ms: i64,
    /// When the first two participants connected.
    pub started_at_ms: Option<i64>,
    /// When the first media frame was reported.
    pub first_frame_at_ms: Option<i64>,
    /// When the call ended.
    pub ended_at_ms: Option<i64>,
    /// Increases on every change.
    pub version: u64,
    /// Data the caller attached.
    pub extra: String,
    /// Ring timeout in ms; 0 = none.
    pub ring_timeout_ms: u32,
}

impl CallInfo {
    /// The participant entry of `user`.
    pub fn participant(&self, user: &UserId) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.user_id == user)
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.ended_at_ms.is_some()
    }
}

/// A user's log entry of a finished call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The owner of the record.
    pub owner: UserId,
    /// The call as it ended, shared by every participant's record of it.
    pub call: Arc<CallInfo>,
    /// Who invited the owner (`None` for the creator).
    pub inviter: Option<UserId>,
    /// Why the call ended for the owner.
    pub end_reason: EndReason,
    /// Outgoing for the creator, incoming for the others.
    pub direction: Direction,
    /// `ended - started` when the call connected, else 0.
    pub duration_ms: i64,
    /// Paging key: unique and increasing per server.
    pub sync_time: i64,
}

/// The end-of-call message of a SINGLE call, one per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummary {
    /// The recipient.
    pub owner: UserId,
    /// The call.
    pub call_id: CallId,
    /// Who placed the call.
    pub caller: UserId,
    /// The other user.
    pub peer: UserId,
    /// Media type at the end.
    pub media_type: MediaType,
    /// Creation time.
    pub created_at_ms: i64,
    /// Connection time.
    pub started_at_ms: Option<i64>,
    /// End time.
    pub ended_at_ms: i64,
    /// Duration (0 if never connected).
    pub duration_ms: i64,
    /// Why it ended for the recipient.
    pub end_reason: EndReason,
    /// The recipient's direction.
    pub direction: Direction,
}

/// One page of call records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordPage {
    /// The records.
    pub records: Vec<CallRecord>,
    /// Whether more follow.
    pub has_more: bool,
    /// Pass back to get the next page.
    pub sync_time: i64,
}
