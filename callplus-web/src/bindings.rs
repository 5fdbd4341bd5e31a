//! The JavaScript face of [`WebEngine`] (wasm32 only): the same methods in camelCase, errors
//! thrown as `Error`s whose message is the error's JSON.

use wasm_bindgen::prelude::*;

use crate::engine::{WebEngine, error_json};

fn js(e: callplus_session::Error) -> JsError {
    JsError::new(&error_json(&e))
}

fn id(r: Result<u64, callplus_session::Error>) -> Result<f64, JsError> {
    r.map(|id| id as f64).map_err(js)
}

/// The client engine (`new Engine(deviceId, token, clientVersion)`).
#[wasm_bindgen]
pub struct Engine {
    inner: WebEngine,
}

#[wasm_bindgen]
impl Engine {
    /// The SDK's version (the engine's crate version), as `CallPlusClient.version()` reports it.
    #[wasm_bindgen(js_name = sdkVersion)]
    pub fn sdk_version() -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// A new engine; throws for a malformed device id.
    #[wasm_bindgen(constructor)]
    pub fn new(device_id: &str, token: &str, client_version: &str) -> Result<Engine, JsError> {
        WebEngine::new(device_id, token, client_version).map(|inner| Engine { inner }).map_err(js)
    }

    /// The WebSocket opened.
    #[wasm_bindgen(js_name = transportConnected)]
    pub fn transport_connected(&mut self, now: f64) {
        self.inner.transport_connected(now);
    }

    /// The WebSocket closed.
    #[wasm_bindgen(js_name = transportLost)]
    pub fn transport_lost(&mut self, now: f64) {
        self.inner.transport_lost(now);
    }

    /// One binary message from the server.
    #[wasm_bindgen(js_name = handleFrame)]
    pub fn handle_frame(&mut self, now: f64, bytes: &[u8]) -> Result<(), JsError> {
        self.inner.handle_frame(now, bytes).map_err(js)
    }

    /// A timer came due.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now: f64) {
        self.inner.handle_timeout(now);
    }

    /// The next binary message to send.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.inner.poll_transmit()
    }

    /// The next app event (JSON).
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> Option<String> {
        self.inner.poll_event()
    }

    /// The next driver event (JSON).
    #[wasm_bindgen(js_name = pollDriverEvent)]
    pub fn poll_driver_event(&mut self) -> Option<String> {
        self.inner.poll_driver_event()
    }

    /// The next media command (JSON).
    #[wasm_bindgen(js_name = pollMedia)]
    pub fn poll_media(&mut self) -> Option<String> {
        self.inner.poll_media()
    }

    /// When to call `handleTimeout` next.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Option<f64> {
        self.inner.poll_timeout()
    }

    /// The connection state's name.
    #[wasm_bindgen(js_name = connectionState)]
    pub fn connection_state(&self) -> String {
        self.inner.connection_state()
    }

    /// The signed-in user (from the Welcome) or undefined.
    #[wasm_bindgen(js_name = userId)]
    pub fn user_id(&self) -> Option<String> {
        self.inner.user_id()
    }

    /// The current call (JSON) or undefined.
    #[wasm_bindgen(js_name = currentCall)]
    pub fn current_call(&self) -> Option<String> {
        self.inner.current_call()
    }

    /// The server's clock at `now`.
    #[wasm_bindgen(js_name = serverTime)]
    pub fn server_time(&self, now: f64) -> f64 {
        self.inner.server_time(now)
    }

    /// Disconnect (queues a Goodbye).
    pub fn disconnect(&mut self, now: f64) {
        self.inner.disconnect(now);
    }

    /// Replace the token of the next Hello.
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&mut self, token: &str) {
        self.inner.set_token(token);
    }

    /// Start a call.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = startCall)]
    pub fn start_call(
        &mut self,
        now: f64,
        user_ids: Vec<String>,
        call_type: &str,
        media_type: &str,
        extra: &str,
        ring_timeout_ms: f64,
        push: &str,
    ) -> Result<f64, JsError> {
        id(self.inner.start_call(now, &user_ids, call_type, media_type, extra, ring_timeout_ms, push))
    }

    /// Accept a call.
    pub fn accept(&mut self, now: f64, call_id: &str) -> Result<f64, JsError> {
        id(self.inner.accept(now, call_id))
    }

    /// Hang up (empty id: the current call).
    pub fn hangup(&mut self, now: f64, call_id: &str, push: &str) -> Result<f64, JsError> {
        id(self.inner.hangup(now, call_id, push))
    }

    /// Join a group call.
    #[wasm_bindgen(js_name = joinCall)]
    pub fn join_call(&mut self, now: f64, call_id: &str) -> Result<f64, JsError> {
        id(self.inner.join_call(now, call_id))
    }

    /// Invite users into the current call.
    pub fn invite(
        &mut self,
        now: f64,
        user_ids: Vec<String>,
        extra: &str,
        push: &str,
    ) -> Result<f64, JsError> {
        id(self.inner.invite(now, &user_ids, extra, push))
    }

    /// Ask to change the media type.
    #[wasm_bindgen(js_name = requestChangeMediaType)]
    pub fn request_change_media_type(&mut self, now: f64, media_type: &str) -> Result<f64, JsError> {
        id(self.inner.request_change_media_type(now, media_type))
    }

    /// Withdraw a change request.
    #[wasm_bindgen(js_name = cancelChangeMediaType)]
    pub fn cancel_change_media_type(&mut self, now: f64, transaction_id: &str) -> Result<f64, JsError> {
        id(self.inner.cancel_change_media_type(now, transaction_id))
    }

    /// Answer a change request.
    #[wasm_bindgen(js_name = replyChangeMediaType)]
    pub fn reply_change_media_type(
        &mut self,
        now: f64,
        transaction_id: &str,
        agree: bool,
    ) -> Result<f64, JsError> {
        id(self.inner.reply_change_media_type(now, transaction_id, agree))
    }

    /// Camera on or off.
    #[wasm_bindgen(js_name = setCameraEnabled)]
    pub fn set_camera_enabled(&mut self, now: f64, enabled: bool) -> Result<f64, JsError> {
        id(self.inner.set_camera_enabled(now, enabled))
    }

    /// Microphone on or off.
    #[wasm_bindgen(js_name = setMicrophoneEnabled)]
    pub fn set_microphone_enabled(&mut self, now: f64, enabled: bool) -> Result<f64, JsError> {
        id(self.inner.set_microphone_enabled(now, enabled))
    }

    /// This device shows the call.
    pub fn ringing(&mut self, now: f64, call_id: &str) -> Result<f64, JsError> {
        id(self.inner.ringing(now, call_id))
    }

    /// A page of call records.
    #[wasm_bindgen(js_name = getCallRecords)]
    pub fn get_call_records(
        &mut self,
        now: f64,
        sync_time: f64,
        count: u32,
        order: &str,
    ) -> Result<f64, JsError> {
        id(self.inner.get_call_records(now, sync_time, count, order))
    }

    /// Delete some call records.
    #[wasm_bindgen(js_name = deleteCallRecords)]
    pub fn delete_call_records(&mut self, now: f64, call_ids: Vec<String>) -> Result<f64, JsError> {
        id(self.inner.delete_call_records(now, &call_ids))
    }

    /// Delete all call records.
    #[wasm_bindgen(js_name = deleteAllCallRecords)]
    pub fn delete_all_call_records(&mut self, now: f64) -> Result<f64, JsError> {
        id(self.inner.delete_all_call_records(now))
    }

    /// One call as the server sees it.
    #[wasm_bindgen(js_name = getCall)]
    pub fn get_call(&mut self, now: f64, call_id: &str) -> Result<f64, JsError> {
        id(self.inner.get_call(now, call_id))
    }

    /// Group calls this user can join.
    #[wasm_bindgen(js_name = getAvailableCalls)]
    pub fn get_available_calls(&mut self, now: f64) -> Result<f64, JsError> {
        id(self.inner.get_available_calls(now))
    }

    /// SDP or a candidate for one peer device.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = sendMediaSignal)]
    pub fn send_media_signal(
        &mut self,
        now: f64,
        call_id: &str,
        to_user: &str,
        to_device: &str,
        kind: &str,
        text: &str,
        sdp_mid: &str,
        mline_index: u32,
    ) -> Result<f64, JsError> {
        id(self.inner.send_media_signal(now, call_id, to_user, to_device, kind, text, sdp_mid, mline_index))
    }

    /// A remote frame of a call was rendered.
    #[wasm_bindgen(js_name = mediaFirstFrame)]
    pub fn media_first_frame(&mut self, now: f64, call_id: &str) -> Result<(), JsError> {
        self.inner.media_first_frame(now, call_id).map_err(js)
    }
}
