//! The authoritative state of one call on the server.
//!
//! A [`Call`] holds everything the switchboard knows about a call: its type and media type, its
//! participants (with their states, end reasons, per-device ring delivery and the device session
//! that holds each answered leg), its version, and a pending change-media-type transaction. It
//! knows the rules that depend only on the call itself — its transitions (answer, ring, leave,
//! finish: `transitions.rs`), when it must end, what each viewer's end reason is, what its
//! snapshot, records and summaries look like — while the switchboard
//! (`crate::switchboard`) routes the resulting events to devices and runs the timers.
//!
//! Participant states on the server: the creator is `Connecting` while dialing and `OnCall` once
//! someone answered; an invitee is `Incoming`, then `Ringing` once one of their devices reports
//! that it shows the call, then `OnCall` when a device accepts (the SDK's `CONNECTING` is a
//! client-side transient while media is set up), and finally `Ended` with a reason.

mod transitions;

pub(crate) use transitions::{Answered, Rang};

use std::sync::Arc;

use crate::model::ids::{AppKey, CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{CallType, Delivery, Direction, EndReason, MediaType, ParticipantState};
use crate::model::snapshot::{CallInfo, CallRecord, CallSummary, DeviceLeg, Participant, PushConfig};

/// Identifies a device session inside the switchboard.
pub type SessionKey = u64;

/// One participant of a call, with the server-side routing data the snapshot does not show.
#[derive(Debug, Clone)]
pub(crate) struct Party {
    pub(crate) user: UserId,
    pub(crate) state: ParticipantState,
    pub(crate) reason: Option<EndReason>,
    pub(crate) inviter: Option<UserId>,
    pub(crate) invited_at_ms: i64,
    pub(crate) connected_at_ms: Option<i64>,
    pub(crate) ended_at_ms: Option<i64>,
    pub(crate) devices: Vec<DeviceLeg>,
    pub(crate) delivery: Delivery,
    pub(crate) pushed: bool,
    pub(crate) camera_disabled: bool,
    pub(crate) microphone_disabled: bool,
    /// The device session holding the answered (or, for the creator, dialing) leg.
    pub(crate) bound: Option<SessionKey>,
    /// The device behind `bound` (kept after the leg ends, for the record).
    pub(crate) device: Option<DeviceId>,
    /// Device sessions the invitation was offered to while the user is being rung.
    pub(crate) offered: Vec<SessionKey>,
    /// When the ringing of this participant times out.
    pub(crate) ring_deadline: Option<i64>,
    /// The invitation's extra when it differs from the call's (invited later).
    pub(crate) extra: Option<String>,
    /// The operator removed this user from the call (`POST /v1/calls/end` with a user): they
    /// may not come back by themselves. A new invitation makes a new party, which clears it. A
    /// device signed out also ends its leg with `KICKED_BY_SERVER`, but is not a removal.
    pub(crate) removed: bool,
}

impl Party {
    fn new(user: UserId, inviter: Option<UserId>, state: ParticipantState, now_ms: i64) -> Party {
        Party {
            user,
            state,
            reason: None,
            inviter,
            invited_at_ms: now_ms,
            connected_at_ms: None,
            ended_at_ms: None,
            devices: Vec::new(),
            delivery: Delivery::Unreachable,
            pushed: false,
            camera_disabled: false,
            microphone_disabled: false,
            bound: None,
            device: None,
            offered: Vec::new(),
            ring_deadline: None,
            extra: None,
            removed: false,
        }
    }

    /// The device sessions that get this participant's events: the answering device once there
    /// is one, else every device the invitation was offered to.
    pub(crate) fn sessions(&self) -> &[SessionKey] {
        match &self.bound {
            Some(sk) => std::slice::from_ref(sk),
            None => &self.offered,
        }
    }

    /// Whether `sk` holds this participant's live leg.
    pub(crate) fn is_leg(&self, sk: SessionKey) -> bool {
        self.bound == Some(sk) && self.state.is_connected()
    }

    fn best_delivery(&self) -> Delivery {
        let base = if self.pushed { Delivery::Pushed } else { Delivery::Unreachable };
        self.devices.iter().map(|d| d.delivery).fold(base, Ord::max)
    }

    fn to_participant(&self) -> Participant {
        Participant {
            user_id: self.user.clone(),
            state: self.state,
            reason: self.reason,
            inviter: self.inviter.clone(),
            invited_at_ms: self.invited_at_ms,
            connected_at_ms: self.connected_at_ms,
            ended_at_ms: self.ended_at_ms,
            devices: self.devices.clone(),
            delivery: self.delivery,
            camera_disabled: self.camera_disabled,
            microphone_disabled: self.microphone_disabled,
            device_id: self.device.clone(),
        }
    }
}

/// The device sessions that held a call for a participant: its answering device, or the
/// devices the invitation was offered to.
#[derive(Debug, Clone)]
pub(crate) enum Holders {
    One(SessionKey),
    Many(Vec<SessionKey>),
}

impl Holders {
    pub(crate) fn as_slice(&self) -> &[SessionKey] {
        match self {
            Holders::One(sk) => std::slice::from_ref(sk),
            Holders::Many(v) => v,
        }
    }
}

/// A pending change-media-type transaction (only upgrades wait for the peer).
#[derive(Debug, Clone)]
pub(crate) struct MediaChange {
    pub(crate) tx: TransactionId,
    pub(crate) seq: u64,
    pub(crate) requester: usize,
    pub(crate) media_type: MediaType,
}

/// One call as the server sees it. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Call {
    pub(crate) app: AppKey,
    pub(crate) id: CallId,
    pub(crate) call_type: CallType,
    pub(crate) media_type: MediaType,
    pub(crate) creator: UserId,
    pub(crate) created_at_ms: i64,
    pub(crate) started_at_ms: Option<i64>,
    pub(crate) first_frame_at_ms: Option<i64>,
    pub(crate) ended_at_ms: Option<i64>,
    pub(crate) version: u64,
    pub(crate) extra: String,
    pub(crate) ring_timeout_ms: u32,
    pub(crate) push: Option<Box<PushConfig>>,
    /// Everyone ever invited; the creator first. Never shrinks, so indexes are stable.
    pub(crate) parties: Vec<Party>,
    pub(crate) change: Option<MediaChange>,
    /// Whether the call's media goes through the SFU (decided when the call is made).
    pub(crate) via_sfu: bool,
}

/// What a new call is made of.
pub(crate) struct NewCall {
    pub(crate) app: AppKey,
    pub(crate) id: CallId,
    pub(crate) call_type: CallType,
    pub(crate) media_type: MediaType,
    pub(crate) creator: UserId,
    pub(crate) creator_session: SessionKey,
    pub(crate) creator_device: DeviceId,
    pub(crate) extra: String,
    pub(crate) ring_timeout_ms: u32,
    pub(crate) push: Option<Box<PushConfig>>,
    /// How many participants to make room for.
    pub(crate) capacity: usize,
}

impl Call {
    /// A new call, version 1, whose creator dials from `creator_session`.
    pub(crate) fn new(spec: NewCall, now_ms: i64) -> Call {
        let mut creator = Party::new(spec.creator.clone(), None, ParticipantState::Connecting, now_ms);
        creator.bound = Some(spec.creator_session);
        creator.device = Some(spec.creator_device.clone());
        Call {
            app: spec.app,
            id: spec.id,
            call_type: spec.call_type,
            media_type: spec.media_type,
            creator: spec.creator,
            created_at_ms: now_ms,
            started_at_ms: None,
            first_frame_at_ms: None,
            ended_at_ms: None,
            version: 1,
            extra: spec.extra,
            ring_timeout_ms: spec.ring_timeout_ms,
            push: spec.push,
            parties: {
                let mut parties = Vec::with_capacity(spec.capacity.max(2));
                parties.push(creator);
                parties
            },
            change: None,
            via_sfu: false,
        }
    }

    /// Rebuilds a call from a saved snapshot (after a restart). No device holds a leg any more.
    pub(crate) fn from_info(app: AppKey, info: CallInfo) -> Call {
        let parties = info
            .participants
            .into_iter()
            .map(|p| Party {
                user: p.user_id,
                state: p.state,
                reason: p.reason,
                inviter: p.inviter,
                invited_at_ms: p.invited_at_ms,
                connected_at_ms: p.connected_at_ms,
                ended_at_ms: p.ended_at_ms,
                devices: p.devices,
                delivery: p.delivery,
                pushed: p.delivery == Delivery::Pushed,
                camera_disabled: p.camera_disabled,
                microphone_disabled: p.microphone_disabled,
                bound: None,
                device: p.device_id,
                offered: Vec::new(),
                ring_deadline: None,
                extra: None,
                // A rebuilt call is only ended; its removals still read as such.
                removed: p.reason == Some(EndReason::KickedByServer),
            })
            .collect();
        Call {
            app,
            id: info.call_id,
            call_type: info.call_type,
            media_type: info.media_type,
            creator: info.creator,
            created_at_ms: info.created_at_ms,
            started_at_ms: info.started_at_ms,
            first_frame_at_ms: info.first_frame_at_ms,
            ended_at_ms: info.ended_at_ms,
            version: info.version,
            extra: info.extra,
            ring_timeout_ms: info.ring_timeout_ms,
            push: None,
            parties,
            change: None,
            via_sfu: false,
        }
    }

    /// The call id.
    pub fn id(&self) -> &CallId {
        &self.id
    }

    /// The app the call belongs to.
    pub fn app(&self) -> &AppKey {
        &self.app
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.ended_at_ms.is_some()
    }

    /// The call's version (increases on every change).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A snapshot of the call as clients see it, made once per change and shared (a reference
    /// count each) by that change's responses, events, records and saved state.
    pub fn snapshot(&self) -> Arc<CallInfo> {
        Arc::new(CallInfo {
            call_id: self.id.clone(),
            call_type: self.call_type,
            media_type: self.media_type,
            creator: self.creator.clone(),
            participants: self.parties.iter().map(Party::to_participant).collect(),
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            first_frame_at_ms: self.first_frame_at_ms,
            ended_at_ms: self.ended_at_ms,
            version: self.version,
            extra: self.extra.clone(),
            ring_timeout_ms: self.ring_timeout_ms,
        })
    }

    pub(crate) fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub(crate) fn party(&self, idx: usize) -> Option<&Party> {
        self.parties.get(idx)
    }

    pub(crate) fn party_mut(&mut self, idx: usize) -> Option<&mut Party> {
        self.parties.get_mut(idx)
    }

    /// The index of `user`'s participant entry.
    pub(crate) fn index_of(&self, user: &UserId) -> Option<usize> {
        self.parties.iter().position(|p| &p.user == user)
    }

    /// Index of the participant whose live leg `sk` holds.
    pub(crate) fn leg_of(&self, sk: SessionKey) -> Option<usize> {
        self.parties.iter().position(|p| p.is_leg(sk))
    }

    /// The greatest number of participants (not ended) the call's media type allows.
    pub(crate) fn limit(media_type: MediaType, max_video: usize, max_audio: usize) -> usize {
        match media_type {
            MediaType::AudioVideo => max_video,
            MediaType::Audio => max_audio,
        }
    }

    /// Participants still holding a place (ringing or connected).
    pub(crate) fn active(&self) -> usize {
        self.parties.iter().filter(|p| p.state.is_active()).count()
    }

    /// Participants connected (dialing creator included).
    pub(crate) fn connected(&self) -> usize {
        self.parties.iter().filter(|p| p.state.is_connected()).count()
    }

    /// Participants answered and in the call (`OnCall`).
    pub(crate) fn on_call(&self) -> usize {
        self.parties.iter().filter(|p| p.state == ParticipantState::OnCall).count()
    }

    /// Whether anybody is still being rung.
    pub(crate) fn any_ringing(&self) -> bool {
        self.parties.iter().any(|p| p.state.is_ringing())
    }

    /// Whether the remaining participants cannot carry the call on. SINGLE: as soon as one side
    /// is gone. MULTI: when nobody is connected, or fewer than two are and nobody is rung.
    pub(crate) fn should_end(&self) -> bool {
        if self.is_ended() {
            return false;
        }
        match self.call_type {
            CallType::Single => self.active() < 2,
            CallType::Multi => {
                let connected = self.connected();
                connected == 0 || (connected < 2 && !self.any_ringing())
            }
        }
    }

    /// Adds (or re-invites an ended) participant in state `Incoming`. `None` when `user` is
    /// still active in the call.
    pub(crate) fn invite(
        &mut self,
        user: &UserId,
        inviter: &UserId,
        extra: Option<String>,
        now_ms: i64,
    ) -> Option<usize> {
        let mut party = Party::new(user.clone(), Some(inviter.clone()), ParticipantState::Incoming, now_ms);
        party.extra = extra;
        match self.index_of(user) {
            Some(idx) => {
                let slot = self.parties.get_mut(idx)?;
                if slot.state.is_active() {
                    return None;
                }
                *slot = party;
                Some(idx)
            }
            None => {
                self.parties.push(party);
                Some(self.parties.len() - 1)
            }
        }
    }

    /// The latest moment the call's state names: its creation, start, first frame, and every
    /// participant's invitation, connection and end. An end is never placed before it.
    pub(crate) fn last_event_ms(&self) -> i64 {
        let call = [Some(self.created_at_ms), self.started_at_ms, self.first_frame_at_ms];
        let parties =
            self.parties.iter().flat_map(|p| [Some(p.invited_at_ms), p.connected_at_ms, p.ended_at_ms]);
        call.into_iter().chain(parties).flatten().max().unwrap_or(self.created_at_ms)
    }

    /// Records how far the invitation got on one device of a participant; true when anything
    /// changed (the best delivery or the device's own).
    pub(crate) fn mark_device(&mut self, idx: usize, device: &DeviceId, delivery: Delivery) -> bool {
        let Some(party) = self.parties.get_mut(idx) else { return false };
        match party.devices.iter_mut().find(|d| &d.device_id == device) {
            Some(leg) if leg.delivery >= delivery => return false,
            Some(leg) => leg.delivery = delivery,
            None => party.devices.push(DeviceLeg { device_id: device.clone(), delivery }),
        }
        party.delivery = party.best_delivery();
        self.version += 1;
        true
    }

    /// Marks that a push was requested for a participant.
    pub(crate) fn mark_pushed(&mut self, idx: usize) {
        if let Some(party) = self.parties.get_mut(idx) {
            party.pushed = true;
            party.delivery = party.best_delivery();
        }
    }

    /// The reason a participant gets when it hangs up now: a dialing creator cancels, a rung
    /// invitee rejects, a connected participant hangs up.
    pub(crate) fn hangup_reason(&self, idx: usize) -> EndReason {
        match self.parties.get(idx).map(|p| p.state) {
            Some(ParticipantState::Connecting) if idx == 0 => EndReason::Cancel,
            Some(s) if s.is_ringing() => EndReason::Reject,
            _ => EndReason::Hangup,
        }
    }

    /// The other participant of a SINGLE call.
    pub(crate) fn peer_of(&self, idx: usize) -> Option<usize> {
        if self.call_type != CallType::Single {
            return None;
        }
        (0..self.parties.len()).find(|&j| j != idx)
    }

    /// The call record of participant `idx`, with the ended call's snapshot `call`.
    pub(crate) fn record(&self, idx: usize, sync_time: i64, call: Arc<CallInfo>) -> Option<CallRecord> {
        let party = self.parties.get(idx)?;
        Some(CallRecord {
            owner: party.user.clone(),
            call,
            inviter: party.inviter.clone(),
            end_reason: party.reason.unwrap_or(EndReason::EndedByServer),
            direction: if idx == 0 { Direction::Outgoing } else { Direction::Incoming },
            duration_ms: self.duration_of(idx),
            sync_time,
        })
    }

    /// How long participant `idx` was in the connected call: from the later of its own connect
    /// time and the call's start, to the earlier of its own end and the call's end.
    pub(crate) fn duration_of(&self, idx: usize) -> i64 {
        let Some(party) = self.parties.get(idx) else { return 0 };
        let (Some(started), Some(connected)) = (self.started_at_ms, party.connected_at_ms) else { return 0 };
        let end = match (party.ended_at_ms, self.ended_at_ms) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return 0,
        };
        end.saturating_sub(started.max(connected)).max(0)
    }

    /// The end-of-call summary of a SINGLE call for participant `idx`.
    pub(crate) fn summary(&self, idx: usize) -> Option<CallSummary> {
        let party = self.parties.get(idx)?;
        let peer = self.parties.get(self.peer_of(idx)?)?;
        Some(CallSummary {
            owner: party.user.clone(),
            call_id: self.id.clone(),
            caller: self.creator.clone(),
            peer: peer.user.clone(),
            media_type: self.media_type,
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms.unwrap_or(self.created_at_ms),
            duration_ms: self.duration_of(idx),
            end_reason: party.reason.unwrap_or(EndReason::EndedByServer),
            direction: if idx == 0 { Direction::Outgoing } else { Direction::Incoming },
        })
    }
}

/// How the participants who remain see the departure that ended the call: the remote form of
/// the leaver's reason (`Hangup` → `RemoteHangup`, `NoResponse` → `RemoteNoResponse`, …).
pub(crate) fn remote_view(reason: EndReason) -> EndReason {
    reason.to_remote()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T>(r: Result<T, crate::Error>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    fn call(call_type: CallType) -> Call {
        Call::new(
            NewCall {
                app: id(AppKey::new("app")),
                id: id(CallId::new("c1")),
                call_type,
                media_type: MediaType::Audio,
                creator: id(UserId::new("a")),
                creator_session: 1,
                creator_device: id(DeviceId::new("a1")),
                extra: String::new(),
                ring_timeout_ms: 0,
                push: None,
                capacity: 2,
            },
            100,
        )
    }

    #[test]
    fn single_ends_when_one_side_leaves() {
        let mut c = call(CallType::Single);
        let b = id(UserId::new("b"));
        let a = id(UserId::new("a"));
        assert_eq!(c.invite(&b, &a, None, 100), Some(1));
        assert!(!c.should_end());
        assert_eq!(c.hangup_reason(0), EndReason::Cancel);
        assert_eq!(c.hangup_reason(1), EndReason::Reject);
        assert!(c.end_party(1, EndReason::Reject, 200).is_some());
        assert!(c.should_end());
        assert!(c.end_party(1, EndReason::Reject, 200).is_none(), "ends once");
    }

    #[test]
    fn multi_continues_while_someone_rings() {
        let mut c = call(CallType::Multi);
        let a = id(UserId::new("a"));
        for u in ["b", "c"] {
            assert!(c.invite(&id(UserId::new(u)), &a, None, 100).is_some());
        }
        assert!(c.invite(&id(UserId::new("b")), &a, None, 100).is_none(), "still active");
        assert!(c.end_party(1, EndReason::Reject, 150).is_some());
        assert!(!c.should_end(), "c still rings");
        assert!(c.end_party(2, EndReason::Reject, 160).is_some());
        assert!(c.should_end());
    }

    #[test]
    fn delivery_only_improves() {
        let mut c = call(CallType::Single);
        let a = id(UserId::new("a"));
        let dev = id(DeviceId::new("d1"));
        assert!(c.invite(&id(UserId::new("b")), &a, None, 100).is_some());
        assert!(c.mark_device(1, &dev, Delivery::Ringing));
        assert!(!c.mark_device(1, &dev, Delivery::Delivered));
        assert_eq!(c.party(1).map(|p| p.delivery), Some(Delivery::Ringing));
    }

    #[test]
    fn duration_is_per_participant() {
        let mut c = call(CallType::Single);
        let a = id(UserId::new("a"));
        assert!(c.invite(&id(UserId::new("b")), &a, None, 100).is_some());
        for p in &mut c.parties {
            p.state = ParticipantState::OnCall;
            p.connected_at_ms = Some(1_000);
        }
        c.started_at_ms = Some(1_000);
        assert!(c.end_party(0, EndReason::Hangup, 4_000).is_some());
        assert!(c.end_party(1, EndReason::RemoteHangup, 4_000).is_some());
        c.ended_at_ms = Some(4_000);
        assert_eq!(c.duration_of(0), 3_000);
        let s = c.summary(1).map(|s| (s.duration_ms, s.direction, s.peer));
        assert_eq!(s, Some((3_000, Direction::Incoming, a)));
    }
}
