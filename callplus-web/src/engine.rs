//! [`WebEngine`]: the client engine with a page's vocabulary — frames as protobuf bytes (one
//! per WebSocket message), events, driver events and media commands as JSON text, ids and enum
//! values as strings, times as milliseconds in `f64` (JavaScript numbers).
//!
//! It holds no logic of its own beyond conversions: every decision is the engine's. It is plain
//! Rust, so it is tested natively; `lib.rs` exports it to JavaScript on wasm32.

use callplus_proto::v1 as pb;
use callplus_session::PushConfig;
use callplus_session::client::{CallOptions, ClientConfig, ClientEngine, RequestId};
use callplus_session::wire::server_frame_from_wire;
use callplus_session::{
    CallId, CallType, Code, DeviceId, Error, MediaPayload, MediaType, RecordOrder, TransactionId, UserId,
};
use prost::Message as _;

use crate::json;

/// A JavaScript number of milliseconds as the engine's clock.
fn ms(now: f64) -> i64 {
    if now.is_finite() { now as i64 } else { 0 }
}

fn call_id(s: &str) -> Result<CallId, Error> {
    CallId::new(s)
}

fn parse_call_type(s: &str) -> Result<CallType, Error> {
    let n = pb::CallType::from_str_name(&format!("CALL_TYPE_{s}")).map(|v| v as i32).unwrap_or(0);
    CallType::try_from(n)
        .map_err(|_| Error::new(Code::ParamError, format!("unknown call type {s:?}: SINGLE or MULTI")))
}

fn parse_media_type(s: &str) -> Result<MediaType, Error> {
    let n = pb::MediaType::from_str_name(&format!("MEDIA_TYPE_{s}")).map(|v| v as i32).unwrap_or(0);
    MediaType::try_from(n).map_err(|_| {
        Error::new(Code::MediaTypeInvalid, format!("unknown media type {s:?}: AUDIO or AUDIO_VIDEO"))
    })
}

/// A push configuration from a page: `{title, content, templateId, disablePush, customData,
/// ios: {threadId, apnsCollapseId, category, richMediaUri}, android: {…}}` as JSON (the seed's
/// `IRCCallPlusPushConfig`); an empty string or `null` for none. Unknown fields are ignored.
fn push_config(text: &str) -> Result<Option<PushConfig>, Error> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| Error::new(Code::ParamError, format!("invalid pushConfig: {why}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Object(map) => json::push_config(&map).map(Some).map_err(|e| bad(&e)),
        _ => Err(bad("expected an object")),
    }
}

/// The client engine for a web page. See the [module docs](self).
#[derive(Debug)]
pub struct WebEngine {
    engine: ClientEngine,
    /// Stands in for the user until the Welcome names it (frames before it are not about calls).
    anonymous: UserId,
}

impl WebEngine {
    /// An engine for this device and token (see [`ClientEngine::new`]).
    ///
    /// # Errors
    /// `PARAM_ERROR` for a malformed device id.
    pub fn new(device_id: &str, token: &str, client_version: &str) -> Result<WebEngine, Error> {
        let mut config = ClientConfig::new(DeviceId::new(device_id)?, token);
        config.client_version = client_version.to_owned();
        Ok(WebEngine { engine: ClientEngine::new(config), anonymous: UserId::new("anonymous")? })
    }

    /// The WebSocket opened.
    pub fn transport_connected(&mut self, now: f64) {
        self.engine.transport_connected(ms(now));
    }

    /// The WebSocket closed or failed.
    pub fn transport_lost(&mut self, now: f64) {
        self.engine.transport_lost(ms(now));
    }

    /// One binary WebSocket message from the server.
    ///
    /// # Errors
    /// `FRAME_INVALID` when the bytes are not a valid `ServerFrame` (the frame is ignored).
    pub fn handle_frame(&mut self, now: f64, bytes: &[u8]) -> Result<(), Error> {
        let frame = pb::ServerFrame::decode(bytes)
            .map_err(|e| Error::new(Code::FrameInvalid, format!("undecodable server frame: {e}")))?;
        let me = self.engine.user_id().cloned().unwrap_or_else(|| self.anonymous.clone());
        let frame =
            server_frame_from_wire(frame, &me).map_err(|e| Error::new(Code::FrameInvalid, e.to_string()))?;
        self.engine.handle_frame(ms(now), frame);
        Ok(())
    }

    /// The time given by [`poll_timeout`](Self::poll_timeout) came.
    pub fn handle_timeout(&mut self, now: f64) {
        self.engine.handle_timeout(ms(now));
    }

    /// The next frame to send, as the bytes of one binary WebSocket message.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.engine.poll_transmit().map(|frame| pb::ClientFrame::from(&frame).encode_to_vec())
    }

    /// The next app event, as JSON.
    pub fn poll_event(&mut self) -> Option<String> {
        self.engine.poll_event().map(|e| json::event(&e).to_string())
    }

    /// The next driver event (a request's outcome, a stale transport), as JSON.
    pub fn poll_driver_event(&mut self) -> Option<String> {
        self.engine.poll_driver_event().map(|e| json::driver_event(&e).to_string())
    }

    /// The next media command, as JSON.
    pub fn poll_media(&mut self) -> Option<String> {
        self.engine.poll_media().map(|c| json::media_command(&c).to_string())
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, on the same clock as `now`.
    pub fn poll_timeout(&self) -> Option<f64> {
        self.engine.poll_timeout().map(|t| t as f64)
    }

    /// The connection state's name (`"CONNECTED"`, …).
    pub fn connection_state(&self) -> String {
        json::connection_state_name(self.engine.connection_state()).to_owned()
    }

    /// The user the server's Welcome named, once connected.
    pub fn user_id(&self) -> Option<String> {
        self.engine.user_id().map(|u| u.as_str().to_owned())
    }

    /// The current call as JSON, or `None`.
    pub fn current_call(&self) -> Option<String> {
        self.engine.current_call().map(|s| json::session(s).to_string())
    }

    /// The server's clock at `now` (for talk time and first-frame times).
    pub fn server_time(&self, now: f64) -> f64 {
        self.engine.server_time_ms(ms(now)) as f64
    }

    /// The app disconnects (a Goodbye is queued).
    pub fn disconnect(&mut self, now: f64) {
        self.engine.disconnect(ms(now));
    }

    /// Replaces the token of the next Hello.
    pub fn set_token(&mut self, token: &str) {
        self.engine.set_token(token);
    }

    /// `startCall`: `call_type` is `SINGLE` or `MULTI`, `media_type` `AUDIO` or `AUDIO_VIDEO`;
    /// `ring_timeout_ms` < 0 keeps the server's default; `push` is the push configuration as
    /// JSON (see [`push_config`]), empty for none.
    ///
    /// # Errors
    /// The engine's local checks (see [`ClientEngine::start_call`]) and `PARAM_ERROR` for an
    /// unknown type name or a malformed push configuration.
    #[allow(clippy::too_many_arguments)]
    pub fn start_call(
        &mut self,
        now: f64,
        user_ids: &[String],
        call_type: &str,
        media_type: &str,
        extra: &str,
        ring_timeout_ms: f64,
        push: &str,
    ) -> Result<RequestId, Error> {
        let options = CallOptions {
            push: push_config(push)?,
            extra: extra.to_owned(),
            ring_timeout_ms: (ring_timeout_ms >= 0.0)
                .then(|| ring_timeout_ms.min(f64::from(u32::MAX)) as u32),
        };
        let (call_type, media_type) = (parse_call_type(call_type)?, parse_media_type(media_type)?);
        self.engine.start_call(ms(now), user_ids, call_type, media_type, options)
    }

    /// `accept`.
    ///
    /// # Errors
    /// See [`ClientEngine::accept`].
    pub fn accept(&mut self, now: f64, call_id_: &str) -> Result<RequestId, Error> {
        self.engine.accept(ms(now), &call_id(call_id_)?)
    }

    /// `hangup`; an empty id means the current call. `push` (JSON, empty for none) is for the
    /// "call cancelled" push to callees that were pushed the invitation.
    ///
    /// # Errors
    /// `PARAM_ERROR` for a push config that does not read; see [`ClientEngine::hangup`].
    pub fn hangup(&mut self, now: f64, call_id_: &str, push: &str) -> Result<RequestId, Error> {
        let id = if call_id_.is_empty() { None } else { Some(call_id(call_id_)?) };
        self.engine.hangup(ms(now), id.as_ref(), push_config(push)?)
    }

    /// `joinCall`.
    ///
    /// # Errors
    /// See [`ClientEngine::join_call`].
    pub fn join_call(&mut self, now: f64, call_id_: &str) -> Result<RequestId, Error> {
        self.engine.join_call(ms(now), &call_id(call_id_)?)
    }

    /// `invite` into the current call; `push` as for [`start_call`](Self::start_call).
    ///
    /// # Errors
    /// See [`ClientEngine::invite`]; `PARAM_ERROR` for a malformed push configuration.
    pub fn invite(
        &mut self,
        now: f64,
        user_ids: &[String],
        extra: &str,
        push: &str,
    ) -> Result<RequestId, Error> {
        self.engine.invite(ms(now), user_ids, push_config(push)?, extra.to_owned())
    }

    /// `requestChangeMediaType`.
    ///
    /// # Errors
    /// See [`ClientEngine::request_change_media_type`].
    pub fn request_change_media_type(&mut self, now: f64, media_type: &str) -> Result<RequestId, Error> {
        self.engine.request_change_media_type(ms(now), parse_media_type(media_type)?)
    }

    /// `cancelChangeMediaType`.
    ///
    /// # Errors
    /// See [`ClientEngine::cancel_change_media_type`].
    pub fn cancel_change_media_type(&mut self, now: f64, transaction_id: &str) -> Result<RequestId, Error> {
        self.engine.cancel_change_media_type(ms(now), &TransactionId::new(transaction_id)?)
    }

    /// `replyChangeMediaType`.
    ///
    /// # Errors
    /// See [`ClientEngine::reply_change_media_type`].
    pub fn reply_change_media_type(
        &mut self,
        now: f64,
        transaction_id: &str,
        agree: bool,
    ) -> Result<RequestId, Error> {
        self.engine.reply_change_media_type(ms(now), &TransactionId::new(transaction_id)?, agree)
    }

    /// Camera on/off in the current call (`startCamera` / `stopCamera`).
    ///
    /// # Errors
    /// See [`ClientEngine::set_camera_enabled`].
    pub fn set_camera_enabled(&mut self, now: f64, enabled: bool) -> Result<RequestId, Error> {
        self.engine.set_camera_enabled(ms(now), enabled)
    }

    /// Microphone on/off in the current call (`startMicrophone` / `stopMicrophone`).
    ///
    /// # Errors
    /// See [`ClientEngine::set_microphone_enabled`].
    pub fn set_microphone_enabled(&mut self, now: f64, enabled: bool) -> Result<RequestId, Error> {
        self.engine.set_microphone_enabled(ms(now), enabled)
    }

    /// This device shows the incoming call.
    ///
    /// # Errors
    /// See [`ClientEngine::ringing`].
    pub fn ringing(&mut self, now: f64, call_id_: &str) -> Result<RequestId, Error> {
        self.engine.ringing(ms(now), &call_id(call_id_)?)
    }

    /// A page of call records (`sync_time` -1 for the first; `order` `ASC` or `DESC`).
    ///
    /// # Errors
    /// See [`ClientEngine::get_call_records`].
    pub fn get_call_records(
        &mut self,
        now: f64,
        sync_time: f64,
        count: u32,
        order: &str,
    ) -> Result<RequestId, Error> {
        let order = if order.eq_ignore_ascii_case("asc") { RecordOrder::Asc } else { RecordOrder::Desc };
        self.engine.get_call_records(ms(now), ms(sync_time), count, order)
    }

    /// Deletes some of this user's call records.
    ///
    /// # Errors
    /// See [`ClientEngine::delete_call_records`].
    pub fn delete_call_records(&mut self, now: f64, call_ids: &[String]) -> Result<RequestId, Error> {
        let ids = call_ids.iter().map(|s| call_id(s)).collect::<Result<Vec<_>, _>>()?;
        self.engine.delete_call_records(ms(now), ids)
    }

    /// Deletes all of this user's call records.
    ///
    /// # Errors
    /// See [`ClientEngine::delete_all_call_records`].
    pub fn delete_all_call_records(&mut self, now: f64) -> Result<RequestId, Error> {
        self.engine.delete_all_call_records(ms(now))
    }

    /// `getCall`: the server's current view of one call this user is or was in.
    ///
    /// # Errors
    /// `CALL_ID_INVALID` for a malformed id; see [`ClientEngine::get_call`].
    pub fn get_call(&mut self, now: f64, call_id_: &str) -> Result<RequestId, Error> {
        self.engine.get_call(ms(now), &call_id(call_id_)?)
    }

    /// Unended group calls this user can join.
    ///
    /// # Errors
    /// See [`ClientEngine::get_available_calls`].
    pub fn get_available_calls(&mut self, now: f64) -> Result<RequestId, Error> {
        self.engine.get_available_calls(ms(now))
    }

    /// The page's `RTCPeerConnection` produced SDP (`kind` `offer` or `answer`) or an ICE
    /// candidate (`kind` `candidate`, with `sdp_mid` and `mline_index`) for one peer device.
    ///
    /// # Errors
    /// See [`ClientEngine::send_media_signal`]; `PARAM_ERROR` for an unknown kind.
    #[allow(clippy::too_many_arguments)]
    pub fn send_media_signal(
        &mut self,
        now: f64,
        call_id_: &str,
        to_user: &str,
        to_device: &str,
        kind: &str,
        text: &str,
        sdp_mid: &str,
        mline_index: u32,
    ) -> Result<RequestId, Error> {
        let payload = match kind {
            "offer" => MediaPayload::SdpOffer(text.to_owned()),
            "answer" => MediaPayload::SdpAnswer(text.to_owned()),
            "candidate" => MediaPayload::IceCandidate {
                candidate: text.to_owned(),
                sdp_mid: sdp_mid.to_owned(),
                sdp_mline_index: mline_index,
            },
            other => return Err(Error::new(Code::ParamError, format!("unknown signal kind {other:?}"))),
        };
        self.engine.send_media_signal(
            ms(now),
            &call_id(call_id_)?,
            &UserId::new(to_user)?,
            &DeviceId::new(to_device)?,
            payload,
        )
    }

    /// The page rendered a remote frame of a call (the engine reports the first one).
    ///
    /// # Errors
    /// `CALL_ID_INVALID` for a malformed id.
    pub fn media_first_frame(&mut self, now: f64, call_id_: &str) -> Result<(), Error> {
        self.engine.media_first_frame(ms(now), &call_id(call_id_)?);
        Ok(())
    }
}

/// An error as the JSON a page gets in an exception.
pub fn error_json(e: &Error) -> String {
    json::error(e).to_string()
}
