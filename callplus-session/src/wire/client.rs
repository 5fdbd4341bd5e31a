//! Client frames (device → server) to and from the wire.

use callplus_proto::v1 as pb;
use callplus_proto::v1::client_frame::Body;

use crate::error::{Code, Error};
use crate::limits;
use crate::model::ids::{CallId, DeviceId, TransactionId, UserId};
use crate::model::kinds::{CallType, MediaKind, MediaType, RecordOrder};
use crate::model::message::{ClientBody, ClientFrame, Hello, MediaPayload, Request, Resume, StartCall};

use super::{bounded, call_id, user_list};

/// A client frame that could not be converted. Carries the frame's `seq` and `request_id` so the
/// server can still answer the request with the error and keep the stream's numbering intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid frame (seq {seq}, request {request_id}): {error}")]
pub struct FrameError {
    /// The frame's seq.
    pub seq: u64,
    /// The frame's ack.
    pub ack: u64,
    /// The frame's request id.
    pub request_id: u64,
    /// What is wrong.
    pub error: Error,
}

impl TryFrom<pb::ClientFrame> for ClientFrame {
    type Error = FrameError;

    fn try_from(frame: pb::ClientFrame) -> Result<Self, FrameError> {
        let pb::ClientFrame { seq, ack, request_id, body } = frame;
        let fail = |error| FrameError { seq, ack, request_id, error };
        let body = match body {
            None => return Err(fail(Error::new(Code::FrameInvalid, "the frame has no body"))),
            Some(body) => body_from_wire(body).map_err(fail)?,
        };
        Ok(ClientFrame { seq, ack, request_id, body })
    }
}

fn push(p: Option<pb::PushConfig>) -> Result<Option<Box<pb::PushConfig>>, Error> {
    if let Some(p) = &p {
        let size = callplus_proto::prost::Message::encoded_len(p);
        if size > limits::MAX_PUSH_CONFIG_BYTES {
            return Err(Error::new(
                Code::ParamError,
                format!("push config is {size} bytes; at most {} are allowed", limits::MAX_PUSH_CONFIG_BYTES),
            ));
        }
    }
    Ok(p.map(Box::new))
}

fn media_type(n: i32) -> Result<MediaType, Error> {
    MediaType::try_from(n)
}

fn transaction(s: &str) -> Result<TransactionId, Error> {
    TransactionId::new(s)
}

fn payload_from_wire(p: Option<pb::media_signal::Payload>) -> Result<MediaPayload, Error> {
    use pb::media_signal::Payload;
    let sdp = |s: String| bounded("sdp", s, limits::MAX_SDP_BYTES);
    match p {
        Some(Payload::SdpOffer(s)) => Ok(MediaPayload::SdpOffer(sdp(s)?)),
        Some(Payload::SdpAnswer(s)) => Ok(MediaPayload::SdpAnswer(sdp(s)?)),
        Some(Payload::IceCandidate(c)) => Ok(MediaPayload::IceCandidate {
            candidate: bounded("ice candidate", c.candidate, limits::MAX_CANDIDATE_BYTES)?,
            sdp_mid: bounded("sdp mid", c.sdp_mid, limits::MAX_CANDIDATE_BYTES)?,
            sdp_mline_index: c.sdp_mline_index,
        }),
        None => Err(Error::new(Code::ParamError, "media signal has no payload")),
    }
}

pub(crate) fn payload_to_wire(p: &MediaPayload) -> pb::media_signal::Payload {
    use pb::media_signal::Payload;
    match p {
        MediaPayload::SdpOffer(s) => Payload::SdpOffer(s.clone()),
        MediaPayload::SdpAnswer(s) => Payload::SdpAnswer(s.clone()),
        MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
            Payload::IceCandidate(pb::IceCandidate {
                candidate: candidate.clone(),
                sdp_mid: sdp_mid.clone(),
                sdp_mline_index: *sdp_mline_index,
            })
        }
    }
}

/// A Hello's token: one longer than any token this server mints is not a token
/// (`TOKEN_INVALID`, as a forged one of normal size is; not a parameter error).
fn token(token: String) -> Result<String, Error> {
    if token.len() > limits::MAX_TOKEN_BYTES {
        return Err(Error::new(
            Code::TokenInvalid,
            format!("the token is {} bytes; tokens are at most {}", token.len(), limits::MAX_TOKEN_BYTES),
        ));
    }
    Ok(token)
}

fn body_from_wire(body: Body) -> Result<ClientBody, Error> {
    Ok(match body {
        Body::Hello(h) => ClientBody::Hello(Hello {
            token: token(h.token)?,
            device_id: DeviceId::new(&h.device_id)?,
            resume: h
                .resume
                .map(|r| -> Result<Resume, Error> {
                    Ok(Resume {
                        session_id: bounded("session id", r.session_id, limits::MAX_SESSION_ID_BYTES)?,
                        last_received_seq: r.last_received_seq,
                    })
                })
                .transpose()?,
            client_version: bounded("client version", h.client_version, 128)?,
        }),
        Body::Ping(_) => ClientBody::Ping,
        Body::Goodbye(_) => ClientBody::Goodbye,
        Body::StartCall(s) => ClientBody::Request(Request::StartCall(StartCall {
            callees: user_list(&s.callee_ids)?,
            call_type: CallType::try_from(s.call_type)?,
            media_type: media_type(s.media_type)?,
            push: push(s.push_config)?,
            extra: bounded("extra", s.extra, limits::MAX_EXTRA_BYTES)?,
            ring_timeout_ms: s.ring_timeout_ms,
        })),
        Body::Accept(a) => ClientBody::Request(Request::Accept { call_id: call_id(&a.call_id)? }),
        Body::Hangup(h) => {
            ClientBody::Request(Request::Hangup { call_id: call_id(&h.call_id)?, push: push(h.push_config)? })
        }
        Body::Ringing(r) => ClientBody::Request(Request::Ringing { call_id: call_id(&r.call_id)? }),
        Body::JoinCall(j) => ClientBody::Request(Request::JoinCall { call_id: call_id(&j.call_id)? }),
        Body::Invite(i) => ClientBody::Request(Request::Invite {
            call_id: call_id(&i.call_id)?,
            users: user_list(&i.user_ids)?,
            push: push(i.push_config)?,
            extra: bounded("extra", i.extra, limits::MAX_EXTRA_BYTES)?,
        }),
        Body::RequestChangeMediaType(r) => ClientBody::Request(Request::RequestChangeMediaType {
            call_id: call_id(&r.call_id)?,
            media_type: media_type(r.media_type)?,
        }),
        Body::CancelChangeMediaType(c) => ClientBody::Request(Request::CancelChangeMediaType {
            call_id: call_id(&c.call_id)?,
            transaction_id: transaction(&c.transaction_id)?,
        }),
        Body::ReplyChangeMediaType(r) => ClientBody::Request(Request::ReplyChangeMediaType {
            call_id: call_id(&r.call_id)?,
            transaction_id: transaction(&r.transaction_id)?,
            agree: r.agree,
        }),
        Body::SetMediaState(s) => ClientBody::Request(Request::SetMediaState {
            call_id: call_id(&s.call_id)?,
            kind: MediaKind::try_from(s.kind)?,
            disabled: s.disabled,
        }),
        Body::ReportFirstFrame(r) => {
            ClientBody::Request(Request::ReportFirstFrame { call_id: call_id(&r.call_id)? })
        }
        Body::MediaSignal(m) => ClientBody::Request(Request::MediaSignal {
            call_id: call_id(&m.call_id)?,
            to_user: UserId::new(&m.to_user_id)?,
            to_device: DeviceId::new(&m.to_device_id)?,
            payload: payload_from_wire(m.payload)?,
        }),
        Body::GetCall(g) => ClientBody::Request(Request::GetCall { call_id: call_id(&g.call_id)? }),
        Body::GetCallRecords(g) => {
            if g.count == 0 || g.count > limits::MAX_RECORD_PAGE {
                return Err(Error::new(
                    Code::ParamError,
                    format!("count must be 1..={}, got {}", limits::MAX_RECORD_PAGE, g.count),
                ));
            }
            ClientBody::Request(Request::GetCallRecords {
                sync_time: g.sync_time,
                count: g.count,
                order: RecordOrder::try_from(g.order)?,
            })
        }
        Body::DeleteCallRecords(d) => {
            if d.call_ids.len() > limits::MAX_DELETE_IDS {
                return Err(Error::new(
                    Code::ParamError,
                    format!("at most {} call ids may be deleted at once", limits::MAX_DELETE_IDS),
                ));
            }
            ClientBody::Request(Request::DeleteCallRecords {
                call_ids: d.call_ids.iter().map(|c| CallId::new(c)).collect::<Result<_, _>>()?,
            })
        }
        Body::DeleteAllCallRecords(_) => ClientBody::Request(Request::DeleteAllCallRecords),
        Body::GetAvailableCalls(_) => ClientBody::Request(Request::GetAvailableCalls),
    })
}

impl From<&ClientFrame> for pb::ClientFrame {
    fn from(frame: &ClientFrame) -> Self {
        pb::ClientFrame {
            seq: frame.seq,
            ack: frame.ack,
            request_id: frame.request_id,
            body: Some(body_to_wire(&frame.body)),
        }
    }
}

fn ids(users: &[UserId]) -> Vec<String> {
    users.iter().map(ToString::to_string).collect()
}

fn body_to_wire(body: &ClientBody) -> Body {
    match body {
        ClientBody::Hello(h) => Body::Hello(pb::Hello {
            token: h.token.clone(),
            device_id: h.device_id.to_string(),
            resume: h.resume.as_ref().map(|r| pb::Resume {
                session_id: r.session_id.clone(),
                last_received_seq: r.last_received_seq,
            }),
            client_version: h.client_version.clone(),
        }),
        ClientBody::Ping => Body::Ping(pb::Ping {}),
        ClientBody::Goodbye => Body::Goodbye(pb::Goodbye {}),
        ClientBody::Request(r) => request_to_wire(r),
    }
}

fn request_to_wire(r: &Request) -> Body {
    match r {
        Request::StartCall(s) => Body::StartCall(pb::StartCall {
            callee_ids: ids(&s.callees),
            call_type: s.call_type.into(),
            media_type: s.media_type.into(),
            push_config: s.push.as_deref().cloned(),
            extra: s.extra.clone(),
            ring_timeout_ms: s.ring_timeout_ms,
        }),
        Request::Accept { call_id } => Body::Accept(pb::Accept { call_id: call_id.to_string() }),
        Request::Hangup { call_id, push } => {
            Body::Hangup(pb::Hangup { call_id: call_id.to_string(), push_config: push.as_deref().cloned() })
        }
        Request::Ringing { call_id } => Body::Ringing(pb::Ringing { call_id: call_id.to_string() }),
        Request::JoinCall { call_id } => Body::JoinCall(pb::JoinCall { call_id: call_id.to_string() }),
        Request::Invite { call_id, users, push, extra } => Body::Invite(pb::Invite {
            call_id: call_id.to_string(),
            user_ids: ids(users),
            push_config: push.as_deref().cloned(),
            extra: extra.clone(),
        }),
        Request::RequestChangeMediaType { call_id, media_type } => {
            Body::RequestChangeMediaType(pb::RequestChangeMediaType {
                call_id: call_id.to_string(),
                media_type: (*media_type).into(),
            })
        }
        Request::CancelChangeMediaType { call_id, transaction_id } => {
            Body::CancelChangeMediaType(pb::CancelChangeMediaType {
                call_id: call_id.to_string(),
                transaction_id: transaction_id.to_string(),
            })
        }
        Request::ReplyChangeMediaType { call_id, transaction_id, agree } => {
            Body::ReplyChangeMediaType(pb::ReplyChangeMediaType {
                call_id: call_id.to_string(),
                transaction_id: transaction_id.to_string(),
                agree: *agree,
            })
        }
        Request::SetMediaState { call_id, kind, disabled } => Body::SetMediaState(pb::SetMediaState {
            call_id: call_id.to_string(),
            kind: (*kind).into(),
            disabled: *disabled,
        }),
        Request::ReportFirstFrame { call_id } => {
            Body::ReportFirstFrame(pb::ReportFirstFrame { call_id: call_id.to_string() })
        }
        Request::MediaSignal { call_id, to_user, to_device, payload } => Body::MediaSignal(pb::MediaSignal {
            call_id: call_id.to_string(),
            to_user_id: to_user.to_string(),
            to_device_id: to_device.to_string(),
            payload: Some(payload_to_wire(payload)),
        }),
        Request::GetCall { call_id } => Body::GetCall(pb::GetCall { call_id: call_id.to_string() }),
        Request::GetCallRecords { sync_time, count, order } => Body::GetCallRecords(pb::GetCallRecords {
            sync_time: *sync_time,
            count: *count,
            order: (*order).into(),
        }),
        Request::DeleteCallRecords { call_ids } => Body::DeleteCallRecords(pb::DeleteCallRecords {
            call_ids: call_ids.iter().map(ToString::to_string).collect(),
        }),
        Request::DeleteAllCallRecords => Body::DeleteAllCallRecords(pb::DeleteAllCallRecords {}),
        Request::GetAvailableCalls => Body::GetAvailableCalls(pb::GetAvailableCalls {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(token: String) -> pb::ClientFrame {
        let hello =
            pb::Hello { token, device_id: "phone".into(), resume: None, client_version: String::new() };
        pb::ClientFrame { seq: 0, ack: 0, request_id: 3, body: Some(Body::Hello(hello)) }
    }

    #[test]
    fn an_oversized_token_is_token_invalid() {
        let err =
            ClientFrame::try_from(hello("t".repeat(200_000))).err().map(|e| (e.request_id, e.error.code));
        assert_eq!(err, Some((3, Code::TokenInvalid)));
        assert!(ClientFrame::try_from(hello("t".repeat(limits::MAX_TOKEN_BYTES))).is_ok());
    }
}
