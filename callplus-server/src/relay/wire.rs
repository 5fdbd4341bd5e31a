//! Conversions between the relay's protobuf messages and the session model's ids and payloads.

use callplus_proto::v1 as pb;
use callplus_session::{CallId, DeviceId, MediaPayload, UserId};

/// A relay message that does not make sense.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// An id is empty or malformed.
    #[error("invalid {what}: {detail}")]
    Id {
        /// Which id.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A required part is missing.
    #[error("missing {0}")]
    Missing(&'static str),
}

/// One participant device of a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Participant {
    pub(crate) call_id: CallId,
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
}

fn ids(call_id: &str, user_id: &str, device_id: &str) -> Result<Participant, WireError> {
    let id = |what, detail: String| WireError::Id { what, detail };
    Ok(Participant {
        call_id: CallId::new(call_id).map_err(|e| id("call id", e.to_string()))?,
        user: UserId::new(user_id).map_err(|e| id("user id", e.to_string()))?,
        device: DeviceId::new(device_id).map_err(|e| id("device id", e.to_string()))?,
    })
}

pub(crate) fn participant_to_wire(
    call_id: &CallId,
    user: &UserId,
    device: &DeviceId,
) -> pb::RelayParticipant {
    pb::RelayParticipant {
        call_id: call_id.as_str().to_owned(),
        user_id: user.as_str().to_owned(),
        device_id: device.as_str().to_owned(),
    }
}

pub(crate) fn participant_from_wire(p: &pb::RelayParticipant) -> Result<Participant, WireError> {
    ids(&p.call_id, &p.user_id, &p.device_id)
}

pub(crate) fn signal_to_wire(
    call_id: &CallId,
    user: &UserId,
    device: &DeviceId,
    payload: &MediaPayload,
) -> pb::RelaySignal {
    use pb::relay_signal::Payload;
    let payload = match payload {
        MediaPayload::SdpOffer(s) => Payload::SdpOffer(s.clone()),
        MediaPayload::SdpAnswer(s) => Payload::SdpAnswer(s.clone()),
        MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
            Payload::IceCandidate(pb::IceCandidate {
                candidate: candidate.clone(),
                sdp_mid: sdp_mid.clone(),
                sdp_mline_index: *sdp_mline_index,
            })
        }
    };
    pb::RelaySignal {
        call_id: call_id.as_str().to_owned(),
        user_id: user.as_str().to_owned(),
        device_id: device.as_str().to_owned(),
        payload: Some(payload),
    }
}

pub(crate) fn signal_from_wire(s: pb::RelaySignal) -> Result<(Participant, MediaPayload), WireError> {
    use pb::relay_signal::Payload;
    let who = ids(&s.call_id, &s.user_id, &s.device_id)?;
    let payload = match s.payload.ok_or(WireError::Missing("signal payload"))? {
        Payload::SdpOffer(sdp) => MediaPayload::SdpOffer(sdp),
        Payload::SdpAnswer(sdp) => MediaPayload::SdpAnswer(sdp),
        Payload::IceCandidate(c) => MediaPayload::IceCandidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
        },
    };
    Ok((who, payload))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_participants_round_trip() {
        let (call, user, device) =
            (CallId::new("c1").unwrap(), UserId::new("alice").unwrap(), DeviceId::new("d1").unwrap());
        for payload in [
            MediaPayload::SdpOffer("v=0".into()),
            MediaPayload::SdpAnswer("v=0 answer".into()),
            MediaPayload::IceCandidate {
                candidate: "candidate:1".into(),
                sdp_mid: "0".into(),
                sdp_mline_index: 2,
            },
        ] {
            let (who, back) = signal_from_wire(signal_to_wire(&call, &user, &device, &payload)).unwrap();
            assert_eq!(back, payload);
            assert_eq!((who.call_id, who.user, who.device), (call.clone(), user.clone(), device.clone()));
        }
        let p = participant_from_wire(&participant_to_wire(&call, &user, &device)).unwrap();
        assert_eq!(p.user, user);
        let empty =
            pb::RelayParticipant { call_id: String::new(), user_id: "u".into(), device_id: "d".into() };
        assert!(participant_from_wire(&empty).is_err());
        let no_payload = pb::RelaySignal {
            payload: None,
            ..signal_to_wire(&call, &user, &device, &MediaPayload::SdpOffer(String::new()))
        };
        assert!(signal_from_wire(no_payload).is_err());
    }
}
