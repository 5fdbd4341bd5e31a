//! One-line, human-readable descriptions of client events (used by `callplus dial/listen` and
//! the examples).

use callplus_session::client::{ClientEvent, ConnectionState};
use callplus_session::{EndReason, ParticipantState};

use super::Event;

/// A one-line description of `event`, e.g. `call c_123 ringing at bob`.
pub fn describe_event(event: &Event) -> String {
    match event {
        ClientEvent::ConnectionStateChanged(state) => format!("connection {}", connection_state(*state)),
        ClientEvent::ConnectionRejected(e) => format!("connection refused: {e}"),
        ClientEvent::ReceivedCall { session, inviter, extra } => {
            let extra = if extra.is_empty() { String::new() } else { format!(" (extra {extra:?})") };
            format!(
                "incoming {} {} call {} from {inviter}{extra}",
                call_type(session.call_type()),
                media_type(session.media_type()),
                session.call_id()
            )
        }
        ClientEvent::RemoteUserInvited { call_id, inviter, invitees } => {
            format!("call {call_id}: {inviter} invited {}", join(invitees))
        }
        ClientEvent::CallConnected { session } => format!("call {} connected", session.call_id()),
        ClientEvent::CallTypeChanged { call_id, call_type: t } => {
            format!("call {call_id} is now a {} call", call_type(*t))
        }
        ClientEvent::RemoteUserStateChanged { call_id, user_id, state, reason } => match state {
            ParticipantState::Ended => {
                format!(
                    "call {call_id}: {user_id} left ({})",
                    reason.map_or("no reason".to_owned(), end_reason)
                )
            }
            other => format!("call {call_id} {} at {user_id}", participant_state(*other)),
        },
        ClientEvent::CallEnded { session, reason } => {
            let duration = match (session.started_at_ms(), session.ended_at_ms()) {
                (Some(start), Some(end)) => format!(" after {:.1} s", (end - start) as f64 / 1000.0),
                _ => String::new(),
            };
            format!("call {} ended: {}{duration}", session.call_id(), end_reason(*reason))
        }
        ClientEvent::RemoteCameraStateChanged { call_id, user_id, disabled } => {
            format!("call {call_id}: {user_id} turned the camera {}", on_off(*disabled))
        }
        ClientEvent::RemoteMicrophoneStateChanged { call_id, user_id, disabled } => {
            format!("call {call_id}: {user_id} turned the microphone {}", on_off(*disabled))
        }
        ClientEvent::ReceivedCallRecord(record) => format!(
            "record: call {} {:?} with {}, {}, {:.1} s",
            record.call.call_id,
            record.direction,
            join(
                &record
                    .call
                    .participants
                    .iter()
                    .map(|p| p.user_id.clone())
                    .filter(|u| *u != record.owner)
                    .collect::<Vec<_>>()
            ),
            end_reason(record.end_reason),
            record.duration_ms as f64 / 1000.0
        ),
        ClientEvent::ChangeMediaTypeRequest { call_id, user_id, transaction_id, media_type: m } => {
            format!(
                "call {call_id}: {user_id} asks to switch to {} (transaction {transaction_id})",
                media_type(*m)
            )
        }
        ClientEvent::ChangeMediaTypeResult { call_id, user_id, transaction_id, media_type: m, result } => {
            format!(
                "call {call_id}: media change {transaction_id} by {user_id}: {result:?}, now {}",
                media_type(*m)
            )
        }
        ClientEvent::CallStartTime { call_id, started_at_ms, .. } => {
            format!("call {call_id} started at {started_at_ms} ms")
        }
        ClientEvent::CallFirstFrameTime { call_id, at_ms } => {
            format!("call {call_id}: first frame at {at_ms} ms")
        }
        ClientEvent::SummaryMessage(s) => format!(
            "summary: {:?} {} call {} between {} and {}, {}, {:.1} s",
            s.direction,
            media_type(s.media_type),
            s.call_id,
            s.caller,
            if s.caller == s.peer { &s.owner } else { &s.peer },
            end_reason(s.end_reason),
            s.duration_ms as f64 / 1000.0
        ),
        ClientEvent::DeliveryChanged { call_id, user_id, delivery, .. } => {
            format!("call {call_id}: invitation to {user_id} {}", format!("{delivery:?}").to_lowercase())
        }
    }
}

/// Lower-case name of a connection state.
pub(crate) fn connection_state(state: ConnectionState) -> String {
    match state {
        ConnectionState::Idle => "idle".to_owned(),
        ConnectionState::Connecting => "connecting".to_owned(),
        ConnectionState::Connected => "connected".to_owned(),
        ConnectionState::Reconnecting => "reconnecting".to_owned(),
        ConnectionState::Disconnected => "disconnected".to_owned(),
        ConnectionState::Kicked(reason) => format!("kicked ({})", end_reason(reason)),
    }
}

/// SCREAMING_CASE name of an end reason, as in the SPEC.
pub fn end_reason(reason: EndReason) -> String {
    let name = callplus_proto::v1::EndReason::from(reason).as_str_name();
    name.strip_prefix("END_REASON_").unwrap_or(name).to_owned()
}

fn participant_state(state: ParticipantState) -> &'static str {
    match state {
        ParticipantState::Idle => "idle",
        ParticipantState::Incoming => "invited",
        ParticipantState::Ringing => "ringing",
        ParticipantState::Connecting => "connecting",
        ParticipantState::OnCall => "on call",
        ParticipantState::Ended => "ended",
    }
}

fn call_type(t: callplus_session::CallType) -> &'static str {
    match t {
        callplus_session::CallType::Single => "1:1",
        callplus_session::CallType::Multi => "group",
    }
}

fn media_type(m: callplus_session::MediaType) -> &'static str {
    match m {
        callplus_session::MediaType::Audio => "audio",
        callplus_session::MediaType::AudioVideo => "video",
    }
}

fn on_off(disabled: bool) -> &'static str {
    if disabled { "off" } else { "on" }
}

fn join(users: &[callplus_session::UserId]) -> String {
    users.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
}
