//! Snapshots (calls, participants, records, summaries) to and from the wire.

use std::sync::Arc;

use callplus_proto::v1 as pb;

use super::owned;
use crate::error::{Code, Error};
use crate::model::ids::{CallId, DeviceId, UserId};
use crate::model::kinds::{CallType, Delivery, Direction, EndReason, MediaType, ParticipantState};
use crate::model::snapshot::{CallInfo, CallRecord, CallSummary, DeviceLeg, Participant, RecordPage};

use super::opt_ms;

fn reason_to_wire(reason: Option<EndReason>) -> i32 {
    reason.map_or(pb::EndReason::Unspecified as i32, i32::from)
}

pub(crate) fn reason_from_wire(n: i32) -> Result<Option<EndReason>, Error> {
    if n == pb::EndReason::Unspecified as i32 { Ok(None) } else { EndReason::try_from(n).map(Some) }
}

fn opt_user(s: &str) -> Result<Option<UserId>, Error> {
    if s.is_empty() { Ok(None) } else { UserId::new(s).map(Some) }
}

impl From<&DeviceLeg> for pb::DeviceLeg {
    fn from(leg: &DeviceLeg) -> Self {
        pb::DeviceLeg { device_id: owned(&leg.device_id), delivery: leg.delivery.into() }
    }
}

impl TryFrom<&pb::DeviceLeg> for DeviceLeg {
    type Error = Error;
    fn try_from(leg: &pb::DeviceLeg) -> Result<Self, Error> {
        Ok(DeviceLeg {
            device_id: DeviceId::new(&leg.device_id)?,
            delivery: Delivery::try_from(leg.delivery)?,
        })
    }
}

impl From<&Participant> for pb::Participant {
    fn from(p: &Participant) -> Self {
        pb::Participant {
            user_id: owned(&p.user_id),
            state: p.state.into(),
            reason: reason_to_wire(p.reason),
            inviter_id: p.inviter.as_ref().map(owned).unwrap_or_default(),
            invited_at_ms: p.invited_at_ms,
            connected_at_ms: p.connected_at_ms.unwrap_or(0),
            ended_at_ms: p.ended_at_ms.unwrap_or(0),
            devices: p.devices.iter().map(Into::into).collect(),
            delivery: p.delivery.into(),
            camera_disabled: p.camera_disabled,
            microphone_disabled: p.microphone_disabled,
            device_id: p.device_id.as_ref().map(owned).unwrap_or_default(),
        }
    }
}

impl TryFrom<&pb::Participant> for Participant {
    type Error = Error;
    fn try_from(p: &pb::Participant) -> Result<Self, Error> {
        Ok(Participant {
            user_id: UserId::new(&p.user_id)?,
            state: ParticipantState::try_from(p.state)?,
            reason: reason_from_wire(p.reason)?,
            inviter: opt_user(&p.inviter_id)?,
            invited_at_ms: p.invited_at_ms,
            connected_at_ms: opt_ms(p.connected_at_ms),
            ended_at_ms: opt_ms(p.ended_at_ms),
            devices: p.devices.iter().map(DeviceLeg::try_from).collect::<Result<_, _>>()?,
            delivery: Delivery::try_from(p.delivery)?,
            camera_disabled: p.camera_disabled,
            microphone_disabled: p.microphone_disabled,
            device_id: if p.device_id.is_empty() { None } else { Some(DeviceId::new(&p.device_id)?) },
        })
    }
}

impl From<&CallInfo> for pb::CallInfo {
    fn from(c: &CallInfo) -> Self {
        pb::CallInfo {
            call_id: owned(&c.call_id),
            call_type: c.call_type.into(),
            media_type: c.media_type.into(),
            creator_id: owned(&c.creator),
            participants: c.participants.iter().map(Into::into).collect(),
            created_at_ms: c.created_at_ms,
            started_at_ms: c.started_at_ms.unwrap_or(0),
            first_frame_at_ms: c.first_frame_at_ms.unwrap_or(0),
            ended_at_ms: c.ended_at_ms.unwrap_or(0),
            version: c.version,
            ended: c.ended_at_ms.is_some(),
            extra: c.extra.clone(),
            ring_timeout_ms: c.ring_timeout_ms,
        }
    }
}

impl TryFrom<&pb::CallInfo> for CallInfo {
    type Error = Error;
    fn try_from(c: &pb::CallInfo) -> Result<Self, Error> {
        Ok(CallInfo {
            call_id: CallId::new(&c.call_id)?,
            call_type: CallType::try_from(c.call_type)?,
            media_type: MediaType::try_from(c.media_type)?,
            creator: UserId::new(&c.creator_id)?,
            participants: c.participants.iter().map(Participant::try_from).collect::<Result<_, _>>()?,
            created_at_ms: c.created_at_ms,
            started_at_ms: opt_ms(c.started_at_ms),
            first_frame_at_ms: opt_ms(c.first_frame_at_ms),
            ended_at_ms: if c.ended { Some(c.ended_at_ms) } else { None },
            version: c.version,
            extra: c.extra.clone(),
            ring_timeout_ms: c.ring_timeout_ms,
        })
    }
}

/// A call snapshot that must be present in a message.
pub(crate) fn required_call(c: Option<&pb::CallInfo>) -> Result<Arc<CallInfo>, Error> {
    match c {
        Some(c) => CallInfo::try_from(c).map(Arc::new),
        None => Err(Error::new(Code::FrameInvalid, "a call snapshot is missing")),
    }
}

impl From<&CallRecord> for pb::CallRecord {
    fn from(r: &CallRecord) -> Self {
        let call = pb::CallInfo::from(&*r.call);
        pb::CallRecord {
            call_id: call.call_id,
            call_type: call.call_type,
            media_type: call.media_type,
            creator_id: call.creator_id,
            inviter_id: r.inviter.as_ref().map(owned).unwrap_or_default(),
            participants: call.participants,
            created_at_ms: call.created_at_ms,
            started_at_ms: call.started_at_ms,
            first_frame_at_ms: call.first_frame_at_ms,
            ended_at_ms: call.ended_at_ms,
            duration_ms: r.duration_ms,
            end_reason: r.end_reason.into(),
            direction: r.direction.into(),
            sync_time: r.sync_time,
            owner_id: owned(&r.owner),
        }
    }
}

impl TryFrom<&pb::CallRecord> for CallRecord {
    type Error = Error;
    fn try_from(r: &pb::CallRecord) -> Result<Self, Error> {
        let call = CallInfo {
            call_id: CallId::new(&r.call_id)?,
            call_type: CallType::try_from(r.call_type)?,
            media_type: MediaType::try_from(r.media_type)?,
            creator: UserId::new(&r.creator_id)?,
            participants: r.participants.iter().map(Participant::try_from).collect::<Result<_, _>>()?,
            created_at_ms: r.created_at_ms,
            started_at_ms: opt_ms(r.started_at_ms),
            first_frame_at_ms: opt_ms(r.first_frame_at_ms),
            ended_at_ms: Some(r.ended_at_ms),
            version: 0,
            extra: String::new(),
            ring_timeout_ms: 0,
        };
        Ok(CallRecord {
            owner: UserId::new(&r.owner_id)?,
            call: Arc::new(call),
            inviter: opt_user(&r.inviter_id)?,
            end_reason: EndReason::try_from(r.end_reason)?,
            direction: Direction::try_from(r.direction)?,
            duration_ms: r.duration_ms,
            sync_time: r.sync_time,
        })
    }
}

impl From<&CallSummary> for pb::CallSummary {
    fn from(s: &CallSummary) -> Self {
        pb::CallSummary {
            call_id: owned(&s.call_id),
            caller_id: owned(&s.caller),
            peer_id: owned(&s.peer),
            media_type: s.media_type.into(),
            started_at_ms: s.started_at_ms.unwrap_or(0),
            ended_at_ms: s.ended_at_ms,
            duration_ms: s.duration_ms,
            end_reason: s.end_reason.into(),
            direction: s.direction.into(),
            created_at_ms: s.created_at_ms,
        }
    }
}

/// Converts a summary from the wire; the owner is the receiving user, which the wire omits.
pub(crate) fn summary_from_wire(s: &pb::CallSummary, owner: UserId) -> Result<CallSummary, Error> {
    Ok(CallSummary {
        owner,
        call_id: CallId::new(&s.call_id)?,
        caller: UserId::new(&s.caller_id)?,
        peer: UserId::new(&s.peer_id)?,
        media_type: MediaType::try_from(s.media_type)?,
        created_at_ms: s.created_at_ms,
        started_at_ms: opt_ms(s.started_at_ms),
        ended_at_ms: s.ended_at_ms,
        duration_ms: s.duration_ms,
        end_reason: EndReason::try_from(s.end_reason)?,
        direction: Direction::try_from(s.direction)?,
    })
}

impl From<&RecordPage> for pb::CallRecordPage {
    fn from(p: &RecordPage) -> Self {
        pb::CallRecordPage {
            records: p.records.iter().map(Into::into).collect(),
            has_more: p.has_more,
            sync_time: p.sync_time,
        }
    }
}

impl TryFrom<&pb::CallRecordPage> for RecordPage {
    type Error = Error;
    fn try_from(p: &pb::CallRecordPage) -> Result<Self, Error> {
        Ok(RecordPage {
            records: p.records.iter().map(CallRecord::try_from).collect::<Result<_, _>>()?,
            has_more: p.has_more,
            sync_time: p.sync_time,
        })
    }
}
