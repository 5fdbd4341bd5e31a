//! What a web page reads: the engine's events, driver events, media commands, sessions and
//! records as JSON objects, with camelCase fields and the protocol's SCREAMING_CASE enum names
//! (`"ON_CALL"`, `"AUDIO_VIDEO"`, `"REMOTE_HANGUP"`), as the seeds' Web SDKs show them.
//!
//! Event objects carry a `type` named after the seeds' callbacks without the `on` prefix
//! (`receivedCall` for `onReceivedCall`, `callEnded` for `onCallEnded`, …).

use callplus_proto::v1 as pb;
use callplus_session::client::{
    CallSession, ClientEvent, ConnectionState, DriverEvent, MediaCommand, MediaPeer,
};
use callplus_session::{
    CallInfo, CallRecord, CallState, CallSummary, CallType, ChangeMediaTypeResult, Delivery, DeviceLeg,
    Direction, EndReason, Error, IceServer, MediaKind, MediaPayload, MediaType, Participant,
    ParticipantState, RecordPage, ResponseBody,
};
use serde_json::{Map, Value, json};

/// The protocol's name of an enum value without its type prefix (`END_REASON_HANGUP` → `HANGUP`).
fn short(full: &str, prefix: &str) -> Value {
    Value::from(full.strip_prefix(prefix).unwrap_or(full))
}

pub(crate) fn call_type(v: CallType) -> Value {
    short(pb::CallType::from(v).as_str_name(), "CALL_TYPE_")
}

pub(crate) fn media_type(v: MediaType) -> Value {
    short(pb::MediaType::from(v).as_str_name(), "MEDIA_TYPE_")
}

pub(crate) fn media_kind(v: MediaKind) -> Value {
    short(pb::MediaKind::from(v).as_str_name(), "MEDIA_KIND_")
}

fn call_state(v: CallState) -> Value {
    short(pb::CallState::from(v).as_str_name(), "CALL_STATE_")
}

fn participant_state(v: ParticipantState) -> Value {
    short(pb::ParticipantState::from(v).as_str_name(), "PARTICIPANT_STATE_")
}

fn end_reason(v: EndReason) -> Value {
    short(pb::EndReason::from(v).as_str_name(), "END_REASON_")
}

fn delivery(v: Delivery) -> Value {
    short(pb::Delivery::from(v).as_str_name(), "DELIVERY_")
}

fn direction(v: Direction) -> Value {
    short(pb::Direction::from(v).as_str_name(), "DIRECTION_")
}

fn change_result(v: ChangeMediaTypeResult) -> Value {
    short(pb::ChangeMediaTypeResult::from(v).as_str_name(), "CHANGE_MEDIA_TYPE_RESULT_")
}

/// The name a page sees for a connection state.
pub(crate) fn connection_state_name(v: ConnectionState) -> &'static str {
    match v {
        ConnectionState::Idle => "IDLE",
        ConnectionState::Connecting => "CONNECTING",
        ConnectionState::Connected => "CONNECTED",
        ConnectionState::Reconnecting => "RECONNECTING",
        ConnectionState::Disconnected => "DISCONNECTED",
        ConnectionState::Kicked(_) => "KICKED",
    }
}

fn connection_state(v: ConnectionState) -> Value {
    match v {
        ConnectionState::Kicked(reason) => json!({ "state": "KICKED", "reason": end_reason(reason) }),
        other => json!({ "state": connection_state_name(other) }),
    }
}

/// An error as a page sees it: the numeric code (the seeds' numbers), its name and the message.
pub(crate) fn error(e: &Error) -> Value {
    json!({
        "code": e.code.to_proto() as i32,
        "name": short(e.code.to_proto().as_str_name(), "RESULT_CODE_"),
        "message": e.message,
    })
}

fn leg(l: &DeviceLeg) -> Value {
    json!({ "deviceId": l.device_id.as_str(), "delivery": delivery(l.delivery) })
}

fn participant(p: &Participant) -> Value {
    json!({
        "userId": p.user_id.as_str(),
        "state": participant_state(p.state),
        "reason": p.reason.map(end_reason),
        "inviter": p.inviter.as_ref().map(|u| u.as_str()),
        "invitedAt": p.invited_at_ms,
        "connectedAt": p.connected_at_ms,
        "endedAt": p.ended_at_ms,
        "devices": p.devices.iter().map(leg).collect::<Vec<_>>(),
        "delivery": delivery(p.delivery),
        "cameraDisabled": p.camera_disabled,
        "microphoneDisabled": p.microphone_disabled,
        "deviceId": p.device_id.as_ref().map(|d| d.as_str()),
    })
}

pub(crate) fn session(s: &CallSession) -> Value {
    json!({
        "callId": s.call_id().as_str(),
        "localUser": s.local_user().as_str(),
        "state": call_state(s.state()),
        "callType": call_type(s.call_type()),
        "mediaType": media_type(s.media_type()),
        "creator": s.creator().as_str(),
        "inviter": s.inviter().map(|u| u.as_str()),
        "participants": s.participants().iter().map(participant).collect::<Vec<_>>(),
        "createdAt": s.created_at_ms(),
        "startedAt": s.started_at_ms(),
        "firstFrameAt": s.first_frame_at_ms(),
        "endedAt": s.ended_at_ms(),
        "endReason": s.end_reason().map(end_reason),
        "extra": s.extra(),
        "outgoing": s.is_outgoing(),
        "cameraEnabled": s.camera_enabled(),
        "microphoneEnabled": s.microphone_enabled(),
        "version": s.version(),
    })
}

pub(crate) fn call_info(c: &CallInfo) -> Value {
    json!({
        "callId": c.call_id.as_str(),
        "callType": call_type(c.call_type),
        "mediaType": media_type(c.media_type),
        "creator": c.creator.as_str(),
        "participants": c.participants.iter().map(participant).collect::<Vec<_>>(),
        "createdAt": c.created_at_ms,
        "startedAt": c.started_at_ms,
        "firstFrameAt": c.first_frame_at_ms,
        "endedAt": c.ended_at_ms,
        "extra": c.extra,
        "version": c.version,
    })
}

fn record(r: &CallRecord) -> Value {
    json!({
        "owner": r.owner.as_str(),
        "call": call_info(&r.call),
        "inviter": r.inviter.as_ref().map(|u| u.as_str()),
        "endReason": end_reason(r.end_reason),
        "direction": direction(r.direction),
        "duration": r.duration_ms,
        "syncTime": r.sync_time,
    })
}

fn summary(s: &CallSummary) -> Value {
    json!({
        "owner": s.owner.as_str(),
        "callId": s.call_id.as_str(),
        "caller": s.caller.as_str(),
        "peer": s.peer.as_str(),
        "mediaType": media_type(s.media_type),
        "createdAt": s.created_at_ms,
        "startedAt": s.started_at_ms,
        "endedAt": s.ended_at_ms,
        "endReason": end_reason(s.end_reason),
        "direction": direction(s.direction),
        "duration": s.duration_ms,
    })
}

fn page(p: &RecordPage) -> Value {
    json!({
        "records": p.records.iter().map(record).collect::<Vec<_>>(),
        "hasMore": p.has_more,
        "syncTime": p.sync_time,
    })
}

fn response(body: &ResponseBody) -> Value {
    match body {
        ResponseBody::Empty => Value::Null,
        ResponseBody::Started { call, busy } => json!({
            "call": call_info(call),
            "busyUsers": busy.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        }),
        ResponseBody::Call(call) => call_info(call),
        ResponseBody::Busy(busy) => {
            json!({ "busyUsers": busy.iter().map(|u| u.as_str()).collect::<Vec<_>>() })
        }
        ResponseBody::Transaction(tx) => json!({ "transactionId": tx.as_str() }),
        ResponseBody::Records(p) => page(p),
        ResponseBody::Calls(calls) => json!({ "calls": calls.iter().map(call_info).collect::<Vec<_>>() }),
    }
}

fn with_type(kind: &str, mut fields: Value) -> Value {
    if let Value::Object(map) = &mut fields {
        map.insert("type".to_owned(), Value::from(kind));
        fields
    } else {
        let mut map = Map::new();
        map.insert("type".to_owned(), Value::from(kind));
        Value::Object(map)
    }
}

/// An app event (what the seeds' `on…` callbacks receive).
pub(crate) fn event(e: &ClientEvent) -> Value {
    match e {
        ClientEvent::ConnectionStateChanged(state) => {
            with_type("connectionStateChanged", connection_state(*state))
        }
        ClientEvent::ConnectionRejected(err) => {
            with_type("connectionRejected", json!({ "error": error(err) }))
        }
        ClientEvent::ReceivedCall { session: s, inviter, extra } => with_type(
            "receivedCall",
            json!({ "session": session(s), "inviter": inviter.as_str(), "extra": extra }),
        ),
        ClientEvent::RemoteUserInvited { call_id, inviter, invitees } => with_type(
            "remoteUserInvited",
            json!({
                "callId": call_id.as_str(),
                "inviter": inviter.as_str(),
                "invitees": invitees.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
            }),
        ),
        ClientEvent::CallConnected { session: s } => {
            with_type("callConnected", json!({ "session": session(s) }))
        }
        ClientEvent::CallTypeChanged { call_id, call_type: t } => {
            with_type("callTypeChanged", json!({ "callId": call_id.as_str(), "callType": call_type(*t) }))
        }
        ClientEvent::RemoteUserStateChanged { call_id, user_id, state, reason } => with_type(
            "remoteUserStateChanged",
            json!({
                "callId": call_id.as_str(),
                "userId": user_id.as_str(),
                "state": participant_state(*state),
                "reason": reason.map(end_reason),
            }),
        ),
        ClientEvent::CallEnded { session: s, reason } => {
            with_type("callEnded", json!({ "session": session(s), "reason": end_reason(*reason) }))
        }
        ClientEvent::RemoteCameraStateChanged { call_id, user_id, disabled } => with_type(
            "remoteCameraStateChanged",
            json!({ "callId": call_id.as_str(), "userId": user_id.as_str(), "disabled": disabled }),
        ),
        ClientEvent::RemoteMicrophoneStateChanged { call_id, user_id, disabled } => with_type(
            "remoteMicrophoneStateChanged",
            json!({ "callId": call_id.as_str(), "userId": user_id.as_str(), "disabled": disabled }),
        ),
        ClientEvent::ReceivedCallRecord(r) => with_type("receivedCallRecord", json!({ "record": record(r) })),
        ClientEvent::ChangeMediaTypeRequest { call_id, user_id, transaction_id, media_type: m } => with_type(
            "changeMediaTypeRequest",
            json!({
                "callId": call_id.as_str(),
                "userId": user_id.as_str(),
                "transactionId": transaction_id.as_str(),
                "mediaType": media_type(*m),
            }),
        ),
        ClientEvent::ChangeMediaTypeResult { call_id, user_id, transaction_id, media_type: m, result } => {
            with_type(
                "changeMediaTypeResult",
                json!({
                    "callId": call_id.as_str(),
                    "userId": user_id.as_str(),
                    "transactionId": transaction_id.as_str(),
                    "mediaType": media_type(*m),
                    "result": change_result(*result),
                }),
            )
        }
        ClientEvent::CallStartTime { call_id, call_type: t, started_at_ms } => with_type(
            "callStartTime",
            json!({ "callId": call_id.as_str(), "callType": call_type(*t), "time": started_at_ms }),
        ),
        ClientEvent::CallFirstFrameTime { call_id, at_ms } => {
            with_type("callFirstFrameTime", json!({ "callId": call_id.as_str(), "time": at_ms }))
        }
        ClientEvent::SummaryMessage(s) => {
            with_type("receivedCallPlusSummaryMessage", json!({ "summary": summary(s) }))
        }
        ClientEvent::DeliveryChanged { call_id, user_id, delivery: d } => with_type(
            "deliveryChanged",
            json!({ "callId": call_id.as_str(), "userId": user_id.as_str(), "delivery": delivery(*d) }),
        ),
    }
}

/// A driver event: a request's outcome (`{type: "requestCompleted", requestId, result | error}`)
/// or a stale transport.
pub(crate) fn driver_event(e: &DriverEvent) -> Value {
    match e {
        DriverEvent::TransportStale => with_type("transportStale", Value::Null),
        DriverEvent::RequestCompleted { request_id, result } => match result {
            Ok(body) => {
                with_type("requestCompleted", json!({ "requestId": request_id, "result": response(body) }))
            }
            Err(e) => with_type("requestCompleted", json!({ "requestId": request_id, "error": error(e) })),
        },
    }
}

fn peer(p: &MediaPeer) -> Value {
    json!({ "userId": p.user_id.as_str(), "deviceId": p.device_id.as_str(), "offerer": p.offerer })
}

fn ice_server(s: &IceServer) -> Value {
    json!({ "urls": s.urls, "username": s.username, "credential": s.credential })
}

fn payload(p: &MediaPayload) -> Value {
    match p {
        MediaPayload::SdpOffer(sdp) => json!({ "kind": "offer", "sdp": sdp }),
        MediaPayload::SdpAnswer(sdp) => json!({ "kind": "answer", "sdp": sdp }),
        MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => json!({
            "kind": "candidate",
            "candidate": candidate,
            "sdpMid": sdp_mid,
            "sdpMLineIndex": sdp_mline_index,
        }),
    }
}

/// A media command for the page's `RTCPeerConnection`s.
pub(crate) fn media_command(c: &MediaCommand) -> Value {
    match c {
        MediaCommand::Start {
            call_id,
            local_user,
            local_device,
            media_type: m,
            peers,
            ice_servers,
            microphone_enabled,
            camera_enabled,
            sfu,
        } => with_type(
            "start",
            json!({
                "callId": call_id.as_str(),
                "localUser": local_user.as_str(),
                "localDevice": local_device.as_str(),
                "mediaType": media_type(*m),
                "peers": peers.iter().map(peer).collect::<Vec<_>>(),
                "iceServers": ice_servers.iter().map(ice_server).collect::<Vec<_>>(),
                "microphoneEnabled": microphone_enabled,
                "cameraEnabled": camera_enabled,
                "sfu": sfu.as_ref().map(|r| json!({
                    "userId": r.user_id.as_str(),
                    "deviceId": r.device_id.as_str(),
                    "token": r.token,
                })),
            }),
        ),
        MediaCommand::AddPeer { call_id, peer: p } => {
            with_type("addPeer", json!({ "callId": call_id.as_str(), "peer": peer(p) }))
        }
        MediaCommand::RemovePeer { call_id, user_id, device_id } => with_type(
            "removePeer",
            json!({ "callId": call_id.as_str(), "userId": user_id.as_str(), "deviceId": device_id.as_str() }),
        ),
        MediaCommand::SetMediaType { call_id, media_type: m } => {
            with_type("setMediaType", json!({ "callId": call_id.as_str(), "mediaType": media_type(*m) }))
        }
        MediaCommand::ApplySignal { call_id, from_user, from_device, payload: p } => with_type(
            "applySignal",
            json!({
                "callId": call_id.as_str(),
                "fromUser": from_user.as_str(),
                "fromDevice": from_device.as_str(),
                "signal": payload(p),
            }),
        ),
        MediaCommand::SetDevice { kind, enabled } => {
            with_type("setDevice", json!({ "kind": media_kind(*kind), "enabled": enabled }))
        }
        MediaCommand::Stop { call_id } => with_type("stop", json!({ "callId": call_id.as_str() })),
    }
}

fn text(map: &Map<String, Value>, key: &str) -> Result<String, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn flag(map: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{key} must be a boolean")),
    }
}

fn object<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(format!("{key} must be an object")),
    }
}

/// A page's push configuration (camelCase fields of `PushConfig`) as the wire message.
pub(crate) fn push_config(map: &Map<String, Value>) -> Result<pb::PushConfig, String> {
    let ios = object(map, "ios")?
        .map(|ios| {
            Ok::<_, String>(pb::IosPushConfig {
                thread_id: text(ios, "threadId")?,
                apns_collapse_id: text(ios, "apnsCollapseId")?,
                category: text(ios, "category")?,
                rich_media_uri: text(ios, "richMediaUri")?,
                voip: flag(ios, "voip")?,
            })
        })
        .transpose()?;
    let android = object(map, "android")?
        .map(|android| {
            Ok::<_, String>(pb::AndroidPushConfig {
                channel_id: text(android, "channelId")?,
                collapse_key: text(android, "collapseKey")?,
                vendor: match object(android, "vendor")? {
                    None => Default::default(),
                    Some(vendor) => vendor
                        .iter()
                        .map(|(k, v)| match v {
                            Value::String(s) => Ok((k.clone(), s.clone())),
                            _ => Err(format!("android.vendor.{k} must be a string")),
                        })
                        .collect::<Result<_, String>>()?,
                },
            })
        })
        .transpose()?;
    Ok(pb::PushConfig {
        title: text(map, "title")?,
        content: text(map, "content")?,
        template_id: text(map, "templateId")?,
        disable_push: flag(map, "disablePush")?,
        ios,
        android,
        custom_data: text(map, "customData")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_page_push_config_becomes_the_wire_message() {
        let page = json!({
            "title": "Alice calls", "content": "video call", "templateId": "t1", "disablePush": true,
            "customData": "{}", "ios": {"threadId": "th", "voip": true},
            "android": {"channelId": "calls", "vendor": {"huawei.importance": "high"}},
        });
        let Value::Object(map) = page else { unreachable!() };
        let push = push_config(&map).unwrap();
        assert_eq!((push.title.as_str(), push.content.as_str()), ("Alice calls", "video call"));
        assert_eq!(
            (push.template_id.as_str(), push.disable_push, push.custom_data.as_str()),
            ("t1", true, "{}")
        );
        let ios = push.ios.unwrap();
        assert_eq!((ios.thread_id.as_str(), ios.voip, ios.category.as_str()), ("th", true, ""));
        let android = push.android.unwrap();
        assert_eq!(android.channel_id, "calls");
        assert_eq!(android.vendor.get("huawei.importance").map(String::as_str), Some("high"));
    }
}
