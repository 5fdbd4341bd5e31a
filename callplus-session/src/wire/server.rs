//! Server frames (server → device) to and from the wire.

use std::sync::Arc;

use callplus_proto::v1 as pb;
use callplus_proto::v1::event::Kind;
use callplus_proto::v1::response::Result as PbResult;
use callplus_proto::v1::server_frame::Body;

use super::owned;
use crate::error::{Code, Error};
use crate::model::ids::{CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{
    CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaKind, MediaType, ParticipantState,
};
use crate::model::message::{
    Event, MediaPayload, Response, ResponseBody, ServerBody, ServerFrame, SfuRoute, Welcome,
};
use crate::model::snapshot::{CallInfo, CallRecord, DeviceLeg, RecordPage};

use super::client::payload_to_wire;
use super::snapshot::{reason_from_wire, required_call, summary_from_wire};

impl From<&ServerFrame> for pb::ServerFrame {
    fn from(frame: &ServerFrame) -> Self {
        pb::ServerFrame { seq: frame.seq, ack: frame.ack, body: Some(body_to_wire(&frame.body)) }
    }
}

fn body_to_wire(body: &ServerBody) -> Body {
    match body {
        ServerBody::Welcome(w) => Body::Welcome(pb::Welcome {
            session_id: w.session_id.clone(),
            user_id: owned(&w.user_id),
            server_time_ms: w.server_time_ms,
            resumed: w.resumed,
            heartbeat_interval_ms: w.heartbeat_interval_ms,
            liveness_timeout_ms: w.liveness_timeout_ms,
            ice_servers: w.ice_servers.clone(),
            last_received_seq: w.last_received_seq,
        }),
        ServerBody::Pong { server_time_ms } => Body::Pong(pb::Pong { server_time_ms: *server_time_ms }),
        ServerBody::Response(r) => Body::Response(response_to_wire(r)),
        ServerBody::Event(e) => Body::Event(event_to_wire(e)),
    }
}

fn ids(users: &[UserId]) -> Vec<String> {
    users.iter().map(owned).collect()
}

fn response_to_wire(r: &Response) -> pb::Response {
    match &r.result {
        Err(e) => pb::Response {
            request_id: r.request_id,
            code: e.code.number(),
            message: e.message.clone(),
            result: None,
        },
        Ok(body) => pb::Response {
            request_id: r.request_id,
            code: pb::ResultCode::Success as i32,
            message: String::new(),
            result: match body {
                ResponseBody::Empty => None,
                ResponseBody::Call(c) => Some(PbResult::Call(c.as_ref().into())),
                ResponseBody::Started { call, busy } => Some(PbResult::Started(pb::StartCallResult {
                    call: Some(call.as_ref().into()),
                    busy_user_ids: ids(busy),
                })),
                ResponseBody::Busy(users) => Some(PbResult::Busy(pb::BusyUsers { user_ids: ids(users) })),
                ResponseBody::Transaction(tx) => Some(PbResult::TransactionId(owned(&tx))),
                ResponseBody::Records(page) => Some(PbResult::Records(page.into())),
                ResponseBody::Calls(calls) => {
                    Some(PbResult::Calls(pb::CallList { calls: calls.iter().map(Into::into).collect() }))
                }
            },
        },
    }
}

/// Converts an event to the wire (used to store offline events).
pub fn event_to_wire(e: &Event) -> pb::Event {
    pb::Event { kind: Some(event_kind_to_wire(e)) }
}

/// Converts a stored or received event from the wire. `me` is the user it is addressed to.
pub fn event_from_wire(e: pb::Event, me: &UserId) -> Result<Event, Error> {
    match e.kind {
        None => Err(Error::new(Code::FrameInvalid, "event has no kind")),
        Some(kind) => event_from_kind(kind, me),
    }
}

fn event_kind_to_wire(e: &Event) -> Kind {
    match e {
        Event::IncomingCall { call, inviter, extra } => Kind::IncomingCall(pb::IncomingCall {
            call: Some(call.as_ref().into()),
            inviter_id: owned(&inviter),
            extra: extra.clone(),
        }),
        Event::UsersInvited { call_id, inviter, invitees, version } => Kind::UsersInvited(pb::UsersInvited {
            call_id: owned(&call_id),
            inviter_id: owned(&inviter),
            invitee_ids: ids(invitees),
            version: *version,
        }),
        Event::ParticipantChanged { call_id, user_id, state, reason, version, device_id } => {
            Kind::ParticipantChanged(pb::ParticipantChanged {
                call_id: owned(&call_id),
                user_id: owned(&user_id),
                state: (*state).into(),
                reason: reason.map_or(0, i32::from),
                version: *version,
                device_id: device_id.as_ref().map(owned).unwrap_or_default(),
            })
        }
        Event::CallTypeChanged { call_id, call_type, version } => {
            Kind::CallTypeChanged(pb::CallTypeChanged {
                call_id: owned(&call_id),
                call_type: (*call_type).into(),
                version: *version,
            })
        }
        Event::CallStarted { call_id, call_type, started_at_ms, version } => {
            Kind::CallStarted(pb::CallStarted {
                call_id: owned(&call_id),
                call_type: (*call_type).into(),
                started_at_ms: *started_at_ms,
                version: *version,
            })
        }
        Event::CallEnded { call, reason } => {
            Kind::CallEnded(pb::CallEnded { call: Some(call.as_ref().into()), reason: (*reason).into() })
        }
        Event::MediaStateChanged { call_id, user_id, kind, disabled } => {
            Kind::MediaStateChanged(pb::MediaStateChanged {
                call_id: owned(&call_id),
                user_id: owned(&user_id),
                kind: (*kind).into(),
                disabled: *disabled,
            })
        }
        Event::ChangeMediaTypeRequested { call_id, user_id, transaction_id, media_type } => {
            Kind::ChangeMediaTypeRequested(pb::ChangeMediaTypeRequested {
                call_id: owned(&call_id),
                user_id: owned(&user_id),
                transaction_id: owned(&transaction_id),
                media_type: (*media_type).into(),
            })
        }
        Event::ChangeMediaTypeFinished { call_id, user_id, transaction_id, media_type, result, version } => {
            Kind::ChangeMediaTypeFinished(pb::ChangeMediaTypeFinished {
                call_id: owned(&call_id),
                user_id: owned(&user_id),
                transaction_id: owned(&transaction_id),
                media_type: (*media_type).into(),
                result: (*result).into(),
                version: *version,
            })
        }
        Event::FirstFrame { call_id, at_ms } => {
            Kind::FirstFrame(pb::FirstFrame { call_id: owned(&call_id), at_ms: *at_ms })
        }
        Event::CallRecord(r) => Kind::CallRecord(r.into()),
        Event::Summary(s) => Kind::Summary(s.into()),
        Event::MediaSignal { call_id, from_user, from_device, payload } => {
            use pb::media_signal_event::Payload as P;
            let payload = match payload_to_wire(payload) {
                pb::media_signal::Payload::SdpOffer(s) => P::SdpOffer(s),
                pb::media_signal::Payload::SdpAnswer(s) => P::SdpAnswer(s),
                pb::media_signal::Payload::IceCandidate(c) => P::IceCandidate(c),
            };
            Kind::MediaSignal(pb::MediaSignalEvent {
                call_id: owned(&call_id),
                from_user_id: owned(&from_user),
                from_device_id: owned(&from_device),
                payload: Some(payload),
            })
        }
        Event::MediaRoute { call_id, sfu } => Kind::MediaRoute(pb::MediaRoute {
            call_id: call_id.to_string(),
            sfu_user_id: sfu.as_ref().map(|r| r.user_id.to_string()).unwrap_or_default(),
            sfu_device_id: sfu.as_ref().map(|r| r.device_id.to_string()).unwrap_or_default(),
            media_token: sfu.as_ref().map(|r| r.token.clone()).unwrap_or_default(),
        }),
        Event::DeliveryChanged { call_id, user_id, delivery, devices } => {
            Kind::DeliveryChanged(pb::DeliveryChanged {
                call_id: owned(&call_id),
                user_id: owned(&user_id),
                delivery: (*delivery).into(),
                devices: devices.iter().map(Into::into).collect(),
            })
        }
        Event::Kicked { reason, message } => {
            Kind::Kicked(pb::Kicked { reason: (*reason).into(), message: message.clone() })
        }
    }
}

/// Converts a server frame from the wire, on the client. `me` is the connected user (the wire
/// leaves it implicit in summaries).
pub fn server_frame_from_wire(frame: pb::ServerFrame, me: &UserId) -> Result<ServerFrame, Error> {
    let body = match frame.body {
        None => return Err(Error::new(Code::FrameInvalid, "server frame has no body")),
        Some(Body::Welcome(w)) => ServerBody::Welcome(Welcome {
            session_id: w.session_id,
            user_id: UserId::new(&w.user_id)?,
            server_time_ms: w.server_time_ms,
            resumed: w.resumed,
            heartbeat_interval_ms: w.heartbeat_interval_ms,
            liveness_timeout_ms: w.liveness_timeout_ms,
            ice_servers: w.ice_servers,
            last_received_seq: w.last_received_seq,
        }),
        Some(Body::Pong(p)) => ServerBody::Pong { server_time_ms: p.server_time_ms },
        Some(Body::Response(r)) => ServerBody::Response(response_from_wire(r)?),
        Some(Body::Event(e)) => ServerBody::Event(event_from_wire(e, me)?),
    };
    Ok(ServerFrame { seq: frame.seq, ack: frame.ack, body })
}

fn users(ids: &[String]) -> Result<Vec<UserId>, Error> {
    ids.iter().map(|s| UserId::new(s)).collect()
}

fn response_from_wire(r: pb::Response) -> Result<Response, Error> {
    let request_id = r.request_id;
    let code = pb::ResultCode::try_from(r.code).ok().map_or(Some(Code::Internal), Code::from_proto);
    if let Some(code) = code {
        let message = if r.message.is_empty() { code.describe().to_owned() } else { r.message };
        return Ok(Response { request_id, result: Err(Error::new(code, message)) });
    }
    let body = match r.result {
        None => ResponseBody::Empty,
        Some(PbResult::Call(c)) => ResponseBody::Call(Arc::new(CallInfo::try_from(&c)?)),
        Some(PbResult::Started(s)) => {
            ResponseBody::Started { call: required_call(s.call.as_ref())?, busy: users(&s.busy_user_ids)? }
        }
        Some(PbResult::Busy(b)) => ResponseBody::Busy(users(&b.user_ids)?),
        Some(PbResult::TransactionId(tx)) => ResponseBody::Transaction(TransactionId::new(&tx)?),
        Some(PbResult::Records(page)) => ResponseBody::Records(RecordPage::try_from(&page)?),
        Some(PbResult::Calls(list)) => {
            ResponseBody::Calls(list.calls.iter().map(CallInfo::try_from).collect::<Result<_, _>>()?)
        }
    };
    Ok(Response { request_id, result: Ok(body) })
}

fn event_from_kind(kind: Kind, me: &UserId) -> Result<Event, Error> {
    Ok(match kind {
        Kind::IncomingCall(i) => Event::IncomingCall {
            call: required_call(i.call.as_ref())?,
            inviter: UserId::new(&i.inviter_id)?,
            extra: i.extra,
        },
        Kind::UsersInvited(u) => Event::UsersInvited {
            call_id: CallId::new(&u.call_id)?,
            inviter: UserId::new(&u.inviter_id)?,
            invitees: users(&u.invitee_ids)?,
            version: u.version,
        },
        Kind::ParticipantChanged(p) => Event::ParticipantChanged {
            call_id: CallId::new(&p.call_id)?,
            user_id: UserId::new(&p.user_id)?,
            state: ParticipantState::try_from(p.state)?,
            reason: reason_from_wire(p.reason)?,
            version: p.version,
            device_id: if p.device_id.is_empty() { None } else { Some(DeviceId::new(&p.device_id)?) },
        },
        Kind::CallTypeChanged(c) => Event::CallTypeChanged {
            call_id: CallId::new(&c.call_id)?,
            call_type: CallType::try_from(c.call_type)?,
            version: c.version,
        },
        Kind::CallStarted(c) => Event::CallStarted {
            call_id: CallId::new(&c.call_id)?,
            call_type: CallType::try_from(c.call_type)?,
            started_at_ms: c.started_at_ms,
            version: c.version,
        },
        Kind::CallEnded(c) => {
            Event::CallEnded { call: required_call(c.call.as_ref())?, reason: EndReason::try_from(c.reason)? }
        }
        Kind::MediaStateChanged(m) => Event::MediaStateChanged {
            call_id: CallId::new(&m.call_id)?,
            user_id: UserId::new(&m.user_id)?,
            kind: MediaKind::try_from(m.kind)?,
            disabled: m.disabled,
        },
        Kind::ChangeMediaTypeRequested(c) => Event::ChangeMediaTypeRequested {
            call_id: CallId::new(&c.call_id)?,
            user_id: UserId::new(&c.user_id)?,
            transaction_id: TransactionId::new(&c.transaction_id)?,
            media_type: MediaType::try_from(c.media_type)?,
        },
        Kind::ChangeMediaTypeFinished(c) => Event::ChangeMediaTypeFinished {
            call_id: CallId::new(&c.call_id)?,
            user_id: UserId::new(&c.user_id)?,
            transaction_id: TransactionId::new(&c.transaction_id)?,
            media_type: MediaType::try_from(c.media_type)?,
            result: ChangeMediaTypeResult::try_from(c.result)?,
            version: c.version,
        },
        Kind::FirstFrame(f) => Event::FirstFrame { call_id: CallId::new(&f.call_id)?, at_ms: f.at_ms },
        Kind::CallRecord(r) => Event::CallRecord(CallRecord::try_from(&r)?),
        Kind::Summary(s) => Event::Summary(summary_from_wire(&s, me.clone())?),
        Kind::MediaSignal(m) => {
            use pb::media_signal_event::Payload as P;
            let payload = match m.payload {
                Some(P::SdpOffer(s)) => MediaPayload::SdpOffer(s),
                Some(P::SdpAnswer(s)) => MediaPayload::SdpAnswer(s),
                Some(P::IceCandidate(c)) => MediaPayload::IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index,
                },
                None => return Err(Error::new(Code::FrameInvalid, "media signal has no payload")),
            };
            Event::MediaSignal {
                call_id: CallId::new(&m.call_id)?,
                from_user: UserId::new(&m.from_user_id)?,
                from_device: DeviceId::new(&m.from_device_id)?,
                payload,
            }
        }
        Kind::MediaRoute(r) => Event::MediaRoute {
            call_id: CallId::new(&r.call_id)?,
            sfu: if r.sfu_user_id.is_empty() {
                None
            } else {
                Some(SfuRoute {
                    user_id: UserId::new(&r.sfu_user_id)?,
                    device_id: DeviceId::new(&r.sfu_device_id)?,
                    token: r.media_token,
                })
            },
        },
        Kind::DeliveryChanged(d) => Event::DeliveryChanged {
            call_id: CallId::new(&d.call_id)?,
            user_id: UserId::new(&d.user_id)?,
            delivery: Delivery::try_from(d.delivery)?,
            devices: d.devices.iter().map(DeviceLeg::try_from).collect::<Result<_, _>>()?,
        },
        Kind::Kicked(k) => Event::Kicked { reason: EndReason::try_from(k.reason)?, message: k.message },
    })
}
