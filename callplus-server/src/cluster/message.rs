//! The wire form of a [`NodeMessage`] on a node's inbox stream: one stream entry whose fields
//! name the message's kind, its routing keys, and its payload as the protobuf bytes devices
//! already speak (a `ClientFrame` for a forwarded request, a `ServerFrame` for a delivered
//! frame, an `Event` for a user's event), so no second schema has to be kept in step.

use callplus_proto::prost::Message as _;
use callplus_proto::v1 as pb;
use callplus_session::switchboard::NodeMessage;
use callplus_session::wire::{event_from_wire, event_to_wire, server_frame_from_wire};
use callplus_session::{AppKey, CallId, ClientBody, ClientFrame, DeviceId, EndReason, ServerFrame, UserId};

use super::ClusterError;

/// The fields of one stream entry.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

fn bad(what: &str) -> ClusterError {
    ClusterError::Message(what.to_owned())
}

/// The stream entry for `message` sent by node `from`.
pub fn encode(from: &str, message: &NodeMessage) -> Fields {
    let mut f: Fields = vec![("from", from.as_bytes().to_vec())];
    let text = |f: &mut Fields, k: &'static str, v: &str| f.push((k, v.as_bytes().to_vec()));
    match message {
        NodeMessage::Request { app, user, device, session_id, request_id, request } => {
            text(&mut f, "kind", "request");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            text(&mut f, "device", device.as_str());
            text(&mut f, "session", session_id);
            let frame = ClientFrame {
                seq: 0,
                ack: 0,
                request_id: *request_id,
                body: ClientBody::Request(request.clone()),
            };
            f.push(("body", pb::ClientFrame::from(&frame).encode_to_vec()));
        }
        NodeMessage::Deliver { app, user, session_id, body } => {
            text(&mut f, "kind", "deliver");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            text(&mut f, "session", session_id);
            let frame = ServerFrame { seq: 0, ack: 0, body: body.clone() };
            f.push(("body", pb::ServerFrame::from(&frame).encode_to_vec()));
        }
        NodeMessage::UserEvent { app, user, event } => {
            text(&mut f, "kind", "user_event");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            f.push(("body", event_to_wire(event).encode_to_vec()));
        }
        NodeMessage::OfflineWaiting { app, user } => {
            text(&mut f, "kind", "offline");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
        }
        NodeMessage::Delivered { app, user, device, session_id, call_id } => {
            text(&mut f, "kind", "delivered");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            text(&mut f, "device", device.as_str());
            text(&mut f, "session", session_id);
            text(&mut f, "call", call_id.as_str());
        }
        NodeMessage::EndCall { app, call_id, user } => {
            text(&mut f, "kind", "end_call");
            text(&mut f, "app", app.as_str());
            text(&mut f, "call", call_id.as_str());
            // Absent: the whole call ends.
            if let Some(user) = user {
                text(&mut f, "user", user.as_str());
            }
        }
        NodeMessage::SignOut { app, user, device } => {
            text(&mut f, "kind", "sign_out");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            // Absent: every device of the user.
            if let Some(device) = device {
                text(&mut f, "device", device.as_str());
            }
        }
        NodeMessage::DeviceOnline { app, user, device, session_id } => {
            text(&mut f, "kind", "online");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            text(&mut f, "device", device.as_str());
            text(&mut f, "session", session_id);
        }
        NodeMessage::LoggedIn { app, user, device, at_ms } => {
            text(&mut f, "kind", "logged_in");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            text(&mut f, "device", device.as_str());
            text(&mut f, "at", &at_ms.to_string());
        }
        NodeMessage::SessionGone { app, user, session_id, reason, last_seen_ms } => {
            text(&mut f, "kind", "gone");
            text(&mut f, "app", app.as_str());
            text(&mut f, "user", user.as_str());
            text(&mut f, "session", session_id);
            let reason = reason.map_or(0, i32::from);
            text(&mut f, "reason", &reason.to_string());
            text(&mut f, "seen", &last_seen_ms.to_string());
        }
    }
    f
}

/// Reads a stream entry's alternating field names and values.
struct Entry<'a>(&'a [Vec<u8>]);

impl Entry<'_> {
    fn bytes(&self, name: &str) -> Result<&[u8], ClusterError> {
        self.0
            .chunks(2)
            .find_map(|kv| match kv {
                [k, v] if k.as_slice() == name.as_bytes() => Some(v.as_slice()),
                _ => None,
            })
            .ok_or_else(|| bad(&format!("field {name} missing")))
    }

    fn text(&self, name: &str) -> Result<&str, ClusterError> {
        std::str::from_utf8(self.bytes(name)?).map_err(|_| bad(&format!("field {name} is not text")))
    }

    fn app(&self) -> Result<AppKey, ClusterError> {
        AppKey::new(self.text("app")?).map_err(|e| bad(&e.to_string()))
    }

    fn user(&self) -> Result<UserId, ClusterError> {
        UserId::new(self.text("user")?).map_err(|e| bad(&e.to_string()))
    }

    fn device(&self) -> Result<DeviceId, ClusterError> {
        DeviceId::new(self.text("device")?).map_err(|e| bad(&e.to_string()))
    }
}

/// The sending node and the message of a stream entry (`fields`: names and values
/// alternating, as `XREAD` returns them).
///
/// # Errors
/// [`ClusterError::Message`] for an entry that is not a node message.
pub fn decode(fields: &[Vec<u8>]) -> Result<(String, NodeMessage), ClusterError> {
    let e = Entry(fields);
    let from = e.text("from")?.to_owned();
    let message = match e.text("kind")? {
        "request" => {
            let pb = pb::ClientFrame::decode(e.bytes("body")?).map_err(|e| bad(&e.to_string()))?;
            let frame = ClientFrame::try_from(pb).map_err(|e| bad(&e.error.to_string()))?;
            let ClientBody::Request(request) = frame.body else { return Err(bad("not a request")) };
            NodeMessage::Request {
                app: e.app()?,
                user: e.user()?,
                device: e.device()?,
                session_id: e.text("session")?.to_owned(),
                request_id: frame.request_id,
                request,
            }
        }
        "deliver" => {
            let user = e.user()?;
            let pb = pb::ServerFrame::decode(e.bytes("body")?).map_err(|e| bad(&e.to_string()))?;
            let frame = server_frame_from_wire(pb, &user).map_err(|e| bad(&e.to_string()))?;
            NodeMessage::Deliver {
                app: e.app()?,
                user,
                session_id: e.text("session")?.to_owned(),
                body: frame.body,
            }
        }
        "user_event" => {
            let user = e.user()?;
            let pb = pb::Event::decode(e.bytes("body")?).map_err(|e| bad(&e.to_string()))?;
            let event = event_from_wire(pb, &user).map_err(|e| bad(&e.to_string()))?;
            NodeMessage::UserEvent { app: e.app()?, user, event }
        }
        "offline" => NodeMessage::OfflineWaiting { app: e.app()?, user: e.user()? },
        "delivered" => NodeMessage::Delivered {
            app: e.app()?,
            user: e.user()?,
            device: e.device()?,
            session_id: e.text("session")?.to_owned(),
            call_id: CallId::new(e.text("call")?).map_err(|e| bad(&e.to_string()))?,
        },
        "end_call" => NodeMessage::EndCall {
            app: e.app()?,
            call_id: CallId::new(e.text("call")?).map_err(|e| bad(&e.to_string()))?,
            user: if e.bytes("user").is_ok() { Some(e.user()?) } else { None },
        },
        "sign_out" => NodeMessage::SignOut {
            app: e.app()?,
            user: e.user()?,
            device: if e.bytes("device").is_ok() { Some(e.device()?) } else { None },
        },
        "online" => NodeMessage::DeviceOnline {
            app: e.app()?,
            user: e.user()?,
            device: e.device()?,
            session_id: e.text("session")?.to_owned(),
        },
        "logged_in" => NodeMessage::LoggedIn {
            app: e.app()?,
            user: e.user()?,
            device: e.device()?,
            at_ms: e.text("at")?.parse().map_err(|_| bad("at is not a number"))?,
        },
        "gone" => {
            let n: i32 = e.text("reason")?.parse().map_err(|_| bad("reason is not a number"))?;
            let reason =
                if n == 0 { None } else { Some(EndReason::try_from(n).map_err(|e| bad(&e.to_string()))?) };
            NodeMessage::SessionGone {
                app: e.app()?,
                user: e.user()?,
                session_id: e.text("session")?.to_owned(),
                reason,
                // Absent from a node of an older version: not known.
                last_seen_ms: match e.text("seen") {
                    Ok(seen) => seen.parse().map_err(|_| bad("seen is not a number"))?,
                    Err(_) => 0,
                },
            }
        }
        other => return Err(bad(&format!("unknown kind {other}"))),
    };
    Ok((from, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callplus_session::{Request, ServerBody};

    fn roundtrip(message: NodeMessage) {
        let fields = encode("node-a", &message);
        let flat: Vec<Vec<u8>> = fields.into_iter().flat_map(|(k, v)| [k.as_bytes().to_vec(), v]).collect();
        match decode(&flat) {
            Ok((from, back)) => {
                assert_eq!(from, "node-a");
                assert_eq!(back, message);
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_kind_survives_the_stream() -> Result<(), callplus_session::Error> {
        let (app, user, device) = (AppKey::new("app")?, UserId::new("bob")?, DeviceId::new("phone")?);
        let call_id = CallId::new("node-b_0123456789-1")?;
        roundtrip(NodeMessage::Request {
            app: app.clone(),
            user: user.clone(),
            device: device.clone(),
            session_id: "snode-a_x-1".into(),
            request_id: 7,
            request: Request::Accept { call_id: call_id.clone() },
        });
        roundtrip(NodeMessage::Deliver {
            app: app.clone(),
            user: user.clone(),
            session_id: "s1".into(),
            body: ServerBody::Response(callplus_session::Response {
                request_id: 7,
                result: Err(callplus_session::Error::from_code(callplus_session::Code::CallNotFound)),
            }),
        });
        roundtrip(NodeMessage::DeviceOnline {
            app: app.clone(),
            user: user.clone(),
            device: device.clone(),
            session_id: "s2".into(),
        });
        roundtrip(NodeMessage::LoggedIn {
            app: app.clone(),
            user: user.clone(),
            device: device.clone(),
            at_ms: 1_764_800_000_123,
        });
        roundtrip(NodeMessage::Delivered {
            app: app.clone(),
            user: user.clone(),
            device,
            session_id: "s1".into(),
            call_id,
        });
        roundtrip(NodeMessage::SessionGone {
            app: app.clone(),
            user: user.clone(),
            session_id: "s1".into(),
            reason: Some(EndReason::NetworkError),
            last_seen_ms: 1_767_225_600_085,
        });
        roundtrip(NodeMessage::OfflineWaiting { app: app.clone(), user: user.clone() });
        let ended = CallId::new("node-b_0123456789-2")?;
        roundtrip(NodeMessage::EndCall { app: app.clone(), call_id: ended.clone(), user: None });
        roundtrip(NodeMessage::EndCall { app: app.clone(), call_id: ended, user: Some(user.clone()) });
        roundtrip(NodeMessage::SignOut { app: app.clone(), user: user.clone(), device: None });
        roundtrip(NodeMessage::SignOut {
            app: app.clone(),
            user: user.clone(),
            device: Some(DeviceId::new("tablet")?),
        });
        roundtrip(NodeMessage::SessionGone {
            app,
            user,
            session_id: "s1".into(),
            reason: None,
            last_seen_ms: 0,
        });
        Ok(())
    }

    #[test]
    fn a_session_gone_from_an_older_node_has_no_last_sign_of_life() {
        let fields: Vec<Vec<u8>> =
            ["from", "node-b", "kind", "gone", "app", "app_1", "user", "bob", "session", "s1", "reason", "0"]
                .iter()
                .map(|f| f.as_bytes().to_vec())
                .collect();
        match decode(&fields) {
            Ok((from, NodeMessage::SessionGone { last_seen_ms, .. })) => {
                assert_eq!((from.as_str(), last_seen_ms), ("node-b", 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_foreign_entry_is_refused() {
        assert!(decode(&[b"from".to_vec(), b"x".to_vec(), b"kind".to_vec(), b"what".to_vec()]).is_err());
        assert!(decode(&[]).is_err());
    }
}
