//! The transitions of a call: a device answers, a device rings, a participant leaves, the call
//! finishes. Each changes the [`Call`] and returns what changed, so the switchboard only decides
//! whom to tell (it never sets a participant's state itself).

use crate::model::ids::DeviceId;
use crate::model::kinds::{CallType, Delivery, EndReason, ParticipantState};

use super::{Call, Holders, SessionKey};

/// What answering changed (see [`Call::answer`]).
#[derive(Debug)]
pub(crate) struct Answered {
    /// The answering user's other devices that were rung: they stop
    /// (`ACCEPTED_ON_OTHER_DEVICE`).
    pub(crate) stop_ringing: Vec<SessionKey>,
    /// The creator went from dialing to ON_CALL with this answer.
    pub(crate) creator_connected: bool,
    /// Billing started with this answer (the first two participants are connected).
    pub(crate) started: bool,
    /// The call's version after the change.
    pub(crate) version: u64,
}

/// What a device's ringing changed (see [`Call::ring_on`]).
#[derive(Debug)]
pub(crate) struct Rang {
    /// The participant went from INCOMING to RINGING.
    pub(crate) state_changed: bool,
    /// The participant's delivery progressed (the inviter is told).
    pub(crate) delivery_changed: bool,
    /// The call's version after the change.
    pub(crate) version: u64,
}

impl Call {
    /// Participant `idx` answered on device session `sk` (device `device`): it is ON_CALL on
    /// that device, the creator too if it was still dialing, and billing starts when two are
    /// connected.
    pub(crate) fn answer(
        &mut self,
        idx: usize,
        sk: SessionKey,
        device: &DeviceId,
        now_ms: i64,
    ) -> Option<Answered> {
        let party = self.parties.get_mut(idx)?;
        let stop_ringing = party.offered.iter().copied().filter(|&s| s != sk).collect();
        party.state = ParticipantState::OnCall;
        party.reason = None;
        party.ended_at_ms = None;
        party.connected_at_ms = Some(now_ms);
        party.bound = Some(sk);
        party.device = Some(device.clone());
        party.offered.clear();
        party.ring_deadline = None;
        self.bump();
        if idx != 0 {
            self.mark_device(idx, device, Delivery::Delivered);
        }
        let mut creator_connected = false;
        if idx != 0
            && let Some(creator) = self.parties.first_mut()
            && creator.state == ParticipantState::Connecting
        {
            creator.state = ParticipantState::OnCall;
            creator.connected_at_ms = Some(now_ms);
            creator_connected = true;
        }
        let started = self.started_at_ms.is_none() && self.on_call() >= 2;
        if started {
            self.started_at_ms = Some(now_ms);
        }
        let version = self.bump();
        Some(Answered { stop_ringing, creator_connected, started, version })
    }

    /// A device session `sk` of participant `idx` (device `device`) shows the call. `None`
    /// when the participant is not being rung.
    pub(crate) fn ring_on(&mut self, idx: usize, sk: SessionKey, device: &DeviceId) -> Option<Rang> {
        let party = self.parties.get_mut(idx)?;
        if !party.state.is_ringing() {
            return None;
        }
        let state_changed = party.state == ParticipantState::Incoming;
        party.state = ParticipantState::Ringing;
        if !party.offered.contains(&sk) {
            party.offered.push(sk);
        }
        let version = if state_changed { self.bump() } else { self.version };
        let delivery_changed = self.mark_device(idx, device, Delivery::Ringing);
        Some(Rang { state_changed, delivery_changed, version })
    }

    /// Ends one participant with `reason` (its own point of view) at `at_ms` (never before it
    /// was invited or connected) and returns the device sessions that held the call for it.
    /// `None` when it was not active.
    pub(crate) fn end_party(&mut self, idx: usize, reason: EndReason, at_ms: i64) -> Option<Holders> {
        let party = self.parties.get_mut(idx)?;
        if !party.state.is_active() {
            return None;
        }
        let at_ms = at_ms.max(party.invited_at_ms).max(party.connected_at_ms.unwrap_or(i64::MIN));
        party.state = ParticipantState::Ended;
        party.reason = Some(reason);
        party.ended_at_ms = Some(at_ms);
        party.ring_deadline = None;
        let sessions = match party.bound.take() {
            Some(sk) => Holders::One(sk),
            None => Holders::Many(std::mem::take(&mut party.offered)),
        };
        party.offered.clear();
        if self.change.as_ref().is_some_and(|c| c.requester == idx || self.call_type == CallType::Single) {
            self.change = None;
        }
        self.version += 1;
        Some(sessions)
    }

    /// Ends the call: every participant still active ends with `others` (one still rung when
    /// the others hung up sees a cancel). Returns each participant ended now, with the device
    /// sessions that held the call for it. Nothing when the call had already ended.
    pub(crate) fn finish(&mut self, others: EndReason, now_ms: i64) -> Vec<(usize, Holders)> {
        if self.is_ended() {
            return Vec::new();
        }
        let mut ended = Vec::new();
        for j in 0..self.parties.len() {
            let ringing = self.parties.get(j).is_some_and(|p| p.state.is_ringing());
            let reason =
                if ringing && others == EndReason::RemoteHangup { EndReason::RemoteCancel } else { others };
            if let Some(sessions) = self.end_party(j, reason, now_ms) {
                ended.push((j, sessions));
            }
        }
        self.ended_at_ms = Some(now_ms);
        self.change = None;
        self.bump();
        ended
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::call::NewCall;
    use crate::model::ids::{AppKey, CallId, UserId};
    use crate::model::kinds::MediaType;

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn did(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    /// Alice (session 1) calls Bob; Bob's devices are sessions 2 and 3.
    fn call(call_type: CallType) -> (Call, usize) {
        let spec = NewCall {
            app: AppKey::new("app").unwrap(),
            id: CallId::new("c1").unwrap(),
            call_type,
            media_type: MediaType::Audio,
            creator: uid("alice"),
            creator_session: 1,
            creator_device: did("a1"),
            extra: String::new(),
            ring_timeout_ms: 0,
            push: None,
            capacity: 2,
        };
        let mut call = Call::new(spec, 1_000);
        let bob = call.invite(&uid("bob"), &uid("alice"), None, 1_000).unwrap();
        call.parties[bob].offered = vec![2, 3];
        (call, bob)
    }

    #[test]
    fn ringing_once_changes_the_state_and_again_only_the_delivery() {
        let (mut call, bob) = call(CallType::Single);
        let first = call.ring_on(bob, 2, &did("b1")).unwrap();
        assert!(first.state_changed && first.delivery_changed);
        assert_eq!(call.parties[bob].state, ParticipantState::Ringing);
        let second = call.ring_on(bob, 3, &did("b2")).unwrap();
        assert!(!second.state_changed && second.delivery_changed, "a second device rings: a new leg");
        let again = call.ring_on(bob, 3, &did("b2")).unwrap();
        assert!(!again.state_changed && !again.delivery_changed, "nothing new");
        assert_eq!(call.ring_on(0, 1, &did("a1")).map(|r| r.version), None, "the creator is not rung");
    }

    #[test]
    fn answering_binds_the_device_connects_the_creator_and_starts_billing() {
        let (mut call, bob) = call(CallType::Single);
        let before = call.version;
        let answered = call.answer(bob, 3, &did("b2"), 5_000).unwrap();
        assert_eq!(answered.stop_ringing, vec![2], "bob's other device stops ringing");
        assert!(answered.creator_connected && answered.started);
        assert!(answered.version > before && answered.version == call.version);
        assert_eq!(call.started_at_ms, Some(5_000));
        let party = &call.parties[bob];
        assert_eq!(
            (party.state, party.bound, party.device.clone()),
            (ParticipantState::OnCall, Some(3), Some(did("b2")))
        );
        assert_eq!(call.parties[0].state, ParticipantState::OnCall);
    }

    #[test]
    fn finishing_ends_everyone_once_and_a_ringing_party_sees_a_cancel() {
        let (mut call, bob) = call(CallType::Multi);
        let carol = call.invite(&uid("carol"), &uid("alice"), None, 1_000).unwrap();
        call.answer(bob, 2, &did("b1"), 2_000).unwrap();
        let ended = call.finish(EndReason::RemoteHangup, 3_000);
        assert_eq!(ended.len(), 3);
        assert_eq!(call.parties[carol].reason, Some(EndReason::RemoteCancel));
        assert_eq!(call.parties[bob].reason, Some(EndReason::RemoteHangup));
        assert_eq!(call.ended_at_ms, Some(3_000));
        assert!(call.finish(EndReason::RemoteHangup, 4_000).is_empty(), "a call finishes once");
    }
}
