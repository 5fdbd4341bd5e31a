//! How many bytes a server frame holds in memory, so the switchboard (and a driver's
//! connection queues) can bound what a device that never reads or acks makes the server keep.
//!
//! The figure is an estimate of the frame's heap and inline size: the size of each struct plus
//! the length of every string and list it owns. It does not need to be exact, only
//! proportional: a page of 100 call records must weigh about 100 times one record.

use std::mem::size_of;

use crate::model::message::{Event, MediaPayload, Response, ResponseBody, ServerBody, ServerFrame};
use crate::model::snapshot::{CallInfo, CallRecord, Participant};

/// The estimated bytes `frame` holds (at least `size_of::<ServerFrame>()`).
pub fn frame_bytes(frame: &ServerFrame) -> usize {
    body_frame_bytes(&frame.body)
}

/// The estimated bytes a frame carrying `body` holds (as [`frame_bytes`]).
pub fn body_frame_bytes(body: &ServerBody) -> usize {
    size_of::<ServerFrame>().saturating_add(body_bytes(body))
}

fn body_bytes(body: &ServerBody) -> usize {
    match body {
        ServerBody::Welcome(w) => w.session_id.len().saturating_add(w.user_id.as_str().len()).saturating_add(
            w.ice_servers
                .iter()
                .map(|s| {
                    s.urls.iter().map(|u| u.len().saturating_add(24)).sum::<usize>()
                        + s.username.len()
                        + s.credential.len()
                        + 72
                })
                .sum::<usize>(),
        ),
        ServerBody::Pong { .. } => 0,
        ServerBody::Response(Response { result, .. }) => match result {
            Ok(body) => response_bytes(body),
            Err(e) => e.message.len(),
        },
        ServerBody::Event(event) => event_bytes(event),
    }
}

fn response_bytes(body: &ResponseBody) -> usize {
    match body {
        ResponseBody::Empty | ResponseBody::Transaction(_) => 32,
        ResponseBody::Call(call) => call_bytes(call),
        ResponseBody::Started { call, busy } => call_bytes(call).saturating_add(ids_bytes(busy.len())),
        ResponseBody::Busy(users) => ids_bytes(users.len()),
        ResponseBody::Records(page) => page.records.iter().map(record_bytes).fold(0, usize::saturating_add),
        ResponseBody::Calls(calls) => calls.iter().map(call_bytes).fold(0, usize::saturating_add),
    }
}

fn event_bytes(event: &Event) -> usize {
    match event {
        Event::IncomingCall { call, extra, .. } => call_bytes(call).saturating_add(extra.len()),
        Event::CallEnded { call, .. } => call_bytes(call),
        Event::UsersInvited { invitees, .. } => ids_bytes(invitees.len()),
        Event::CallRecord(record) => record_bytes(record),
        Event::MediaSignal { payload, .. } => match payload {
            MediaPayload::SdpOffer(s) | MediaPayload::SdpAnswer(s) => s.len(),
            MediaPayload::IceCandidate { candidate, sdp_mid, .. } => {
                candidate.len().saturating_add(sdp_mid.len())
            }
        },
        Event::DeliveryChanged { devices, .. } => ids_bytes(devices.len()),
        Event::MediaRoute { sfu: Some(route), .. } => route.token.len().saturating_add(64),
        Event::Kicked { message, .. } => message.len(),
        // Ids and numbers only.
        _ => 64,
    }
}

/// An id is a short string: its heap bytes plus the string header.
fn ids_bytes(n: usize) -> usize {
    n.saturating_mul(64)
}

fn record_bytes(record: &CallRecord) -> usize {
    size_of::<CallRecord>().saturating_add(call_bytes(&record.call))
}

fn call_bytes(call: &CallInfo) -> usize {
    let parties = call.participants.iter().map(participant_bytes).fold(0, usize::saturating_add);
    size_of::<CallInfo>()
        .saturating_add(call.extra.len())
        .saturating_add(ids_bytes(2))
        .saturating_add(parties)
}

fn participant_bytes(p: &Participant) -> usize {
    size_of::<Participant>().saturating_add(ids_bytes(3)).saturating_add(ids_bytes(p.devices.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::{CallId, UserId};
    use crate::model::kinds::{CallType, Delivery, Direction, EndReason, MediaType, ParticipantState};
    use crate::model::snapshot::RecordPage;

    fn record(extra: usize) -> Option<CallRecord> {
        let user = UserId::new("alice").ok()?;
        let participant = Participant {
            user_id: user.clone(),
            state: ParticipantState::Ended,
            reason: Some(EndReason::Hangup),
            inviter: None,
            invited_at_ms: 0,
            connected_at_ms: None,
            ended_at_ms: Some(1),
            devices: Vec::new(),
            delivery: Delivery::Ringing,
            camera_disabled: false,
            microphone_disabled: false,
            device_id: None,
        };
        let call = CallInfo {
            call_id: CallId::new("c1").ok()?,
            call_type: CallType::Single,
            media_type: MediaType::Audio,
            creator: user.clone(),
            participants: vec![participant],
            created_at_ms: 0,
            started_at_ms: None,
            first_frame_at_ms: None,
            ended_at_ms: Some(1),
            version: 1,
            extra: "x".repeat(extra),
            ring_timeout_ms: 0,
        };
        Some(CallRecord {
            owner: user,
            call: call.into(),
            inviter: None,
            end_reason: EndReason::Hangup,
            direction: Direction::Outgoing,
            duration_ms: 0,
            sync_time: 1,
        })
    }

    fn page(n: usize, extra: usize) -> ServerFrame {
        let records = (0..n).filter_map(|_| record(extra)).collect();
        let page = RecordPage { records, has_more: false, sync_time: 0 };
        let body = ServerBody::Response(Response { request_id: 1, result: Ok(ResponseBody::Records(page)) });
        ServerFrame { seq: 1, ack: 0, body }
    }

    #[test]
    fn a_page_weighs_in_proportion_to_its_records_and_their_data() {
        let one = frame_bytes(&page(1, 1000));
        let hundred = frame_bytes(&page(100, 1000));
        assert!(one > 1000, "{one}");
        assert!(hundred > 99 * (one - size_of::<ServerFrame>()), "{one} {hundred}");
        assert!(frame_bytes(&page(1, 0)) < one, "extra data counts");
        let pong = ServerFrame { seq: 0, ack: 0, body: ServerBody::Pong { server_time_ms: 0 } };
        assert_eq!(frame_bytes(&pong), size_of::<ServerFrame>());
    }
}
