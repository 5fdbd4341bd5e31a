//! The client: connection, call operations, records, and event delivery.

use std::ffi::{CString, c_char, c_void};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::callplus_client::{Client, ClientOptions};
use callplus_session::client::CallOptions;
use callplus_session::{CallId, DeviceId, PushConfig, TransactionId, UserId};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::calls::{
    callplus_call_info, callplus_call_info_list, callplus_call_session, callplus_record_page, new_info,
    new_info_list, new_page, new_session,
};
use crate::client_options::{ConnectSettings, callplus_client_options, client_options_arg};
use crate::enums::{call_type_arg, callplus_connection_state, media_type_arg, record_order_arg};
use crate::events::{EventData, Events, callback as make_callback, callplus_event, callplus_event_callback};
use crate::ffi::{
    Opaque, boundary, boundary_result, check_out, cstring, free_boxed, opt_str_arg, str_arg, str_array_arg,
    to_boxed, try_ref, with_ref, write_out,
};
use crate::media::ClientMedia;
use crate::options::{call_options_arg, callplus_call_options, hangup_push_arg, invite_options_arg};
use crate::result::callplus_result;
use crate::string::{callplus_string, callplus_string_list, new_string, new_string_list};

/// How long `callplus_client_free` waits for the Goodbye to go out.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `callplus_client_free` waits for the runtime's threads to finish.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a callplus server, acting as one user on one device.
///
/// Made by `callplus_client_connect`, freed by `callplus_client_free`. Every other function
/// may be called from any thread, also concurrently; `callplus_client_free` must be the last
/// call. The client runs its own background thread (a small tokio runtime); operations block
/// the calling thread until the server answered (at most the request timeout, 10 s).
pub struct callplus_client {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_client`.
pub(crate) struct ClientHandle {
    runtime: Option<Runtime>,
    client: Option<Client>,
    events: Arc<Events>,
    pump: Option<JoinHandle<()>>,
    user_id: CString,
    device_id: CString,
    /// The built-in media's C side, when connected with `enable_media`.
    pub(crate) media: Option<ClientMedia>,
}

// The C API lets any thread use a client, also concurrently.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ClientHandle>();
};

// SAFETY: `callplus_client` pointers always point at a `ClientHandle`.
unsafe impl Opaque for callplus_client {
    type Rust = ClientHandle;
}

impl ClientHandle {
    fn runtime(&self) -> Result<&Runtime, callplus_result> {
        self.runtime.as_ref().ok_or(callplus_result::NotConnected)
    }

    pub(crate) fn client(&self) -> Result<&Client, callplus_result> {
        self.client.as_ref().ok_or(callplus_result::NotConnected)
    }

    /// Runs an operation of the async client to completion on the calling thread.
    fn run<T, F: Future<Output = Result<T, callplus_session::Error>>>(
        &self,
        op: impl FnOnce(Client) -> F,
    ) -> Result<T, callplus_result> {
        ensure_blocking_allowed()?;
        let client = self.client()?.clone();
        self.runtime()?.block_on(op(client)).map_err(callplus_result::from)
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        // Sessions may outlive the client; they must not keep its connection alive.
        self.events.clock().detach();
        self.events.stop();
        if let Some(media) = &self.media {
            media.stop();
        }
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        let client = self.client.take();
        let pump = self.pump.take();
        if let Some(runtime) = self.runtime.take() {
            if !in_runtime {
                runtime.block_on(async {
                    if let Some(client) = &client {
                        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.disconnect()).await;
                    }
                    if let Some(pump) = pump {
                        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, pump).await;
                    }
                });
            }
            drop(client);
            if in_runtime {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
            }
        }
    }
}

/// Blocking functions cannot run on a thread that drives a tokio runtime (the client's own, or
/// an app's): they would stall it.
fn ensure_blocking_allowed() -> Result<(), callplus_result> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(callplus_result::InvalidState),
        Err(_) => Ok(()),
    }
}

fn call_id_arg(s: &str) -> Result<CallId, callplus_result> {
    CallId::new(s).map_err(callplus_result::from)
}

fn transaction_arg(s: &str) -> Result<TransactionId, callplus_result> {
    TransactionId::new(s).map_err(callplus_result::from)
}

/// Connects to a callplus server and waits until the server accepted the token; signalling
/// only (see `callplus_client_connect_with_options` for built-in media).
///
/// - `endpoint`: the server's address, `http://host:port` (e.g. `http://127.0.0.1:7700`), or
///   `https://host:port` for a server with TLS whose certificate a public authority signed
///   (for a private CA use `callplus_client_connect_with_options`).
/// - `token`: a token minted by the app's backend (or `callplus token`) for this user.
/// - `device_id`: this installation's id (1–64 of `[A-Za-z0-9_-]`, stable across restarts so
///   a restarted app replaces its old session); NULL picks a random one.
/// - `client_out`: receives the client on success; free it with `callplus_client_free`.
///
/// Returns `CALLPLUS_RESULT_OK`; the server's refusal (`TOKEN_INVALID`, `TOKEN_EXPIRED`);
/// `NOT_CONNECTED` when the server cannot be reached or its certificate is not trusted; `PARAM_ERROR` for a
/// malformed endpoint or device id; `NULL_PARAMETER`. Blocks for at most about 5 s (connect
/// timeout) plus the server's answer.
///
/// After connecting, the client reconnects by itself when the network drops and resumes the
/// session: no event is lost or delivered twice. Take events with `callplus_client_poll_event`
/// or install a callback with `callplus_client_set_event_callback`.
///
/// # Safety
/// String arguments must be NULL or NUL-terminated; `client_out` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_connect(
    endpoint: *const c_char,
    token: *const c_char,
    device_id: *const c_char,
    client_out: *mut *mut callplus_client,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (endpoint, token, device_id) =
            unsafe { (str_arg(endpoint)?, str_arg(token)?, opt_str_arg(device_id)?) };
        check_out(client_out)?;
        let device_id = device_id.map(DeviceId::new).transpose()?;
        let handle = connect(endpoint, token, ConnectSettings::with_device(device_id))?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(client_out, to_boxed::<callplus_client>(handle)) };
        Ok(())
    })
}

/// As `callplus_client_connect`, with optional settings (`struct callplus_client_options`;
/// NULL or all-zero: the defaults). With `enable_media` the client sets up real WebRTC media
/// by itself for every call it is connected in: it publishes its microphone (and camera in
/// AUDIO_VIDEO calls) once a call connects, stops at the call's end, and
/// `callplus_client_set_camera_enabled` / `_set_microphone_enabled` mute the real tracks.
/// Local media comes from a built-in test source or from the app
/// (`callplus_client_push_audio_sample`, `_push_video_sample`); remote media goes to the
/// callback of `callplus_client_set_media_sink`; media events (first frames, audio levels,
/// status reports, errors) arrive with the other events.
///
/// With `tls_ca_pem` / `tls_domain` the certificate of an `https://` server is checked against
/// a CA of the app's own and another name.
///
/// Errors as `callplus_client_connect`, and `PARAM_ERROR` for inconsistent options (a media
/// field without `enable_media`, two sources for one device, a tone above 20000 Hz, a bind
/// address that is not an IP address, TLS settings with an `http://` endpoint).
///
/// # Safety
/// String arguments must be NULL or NUL-terminated; `options` NULL or a readable
/// `callplus_client_options` whose strings are NULL or NUL-terminated; `client_out` NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_connect_with_options(
    endpoint: *const c_char,
    token: *const c_char,
    options: *const callplus_client_options,
    client_out: *mut *mut callplus_client,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (endpoint, token, settings) =
            unsafe { (str_arg(endpoint)?, str_arg(token)?, client_options_arg(options)?) };
        check_out(client_out)?;
        let handle = connect(endpoint, token, settings)?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(client_out, to_boxed::<callplus_client>(handle)) };
        Ok(())
    })
}

/// The body of both connect functions, once every argument is checked.
fn connect(endpoint: &str, token: &str, settings: ConnectSettings) -> Result<ClientHandle, callplus_result> {
    ensure_blocking_allowed()?;
    let mut options =
        ClientOptions { device_id: settings.device_id, tls: settings.tls, ..ClientOptions::default() };
    let events = Arc::new(Events::default());
    let media = settings.media.map(|settings| {
        let (media, media_options) = ClientMedia::new(&settings, &events);
        options.media = Some(media_options);
        media
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .thread_name("callplus-client")
        .enable_all()
        .build()
        .map_err(|_| callplus_result::Internal)?;
    let (client, stream) = match runtime.block_on(Client::connect(endpoint, token, options)) {
        Ok(connected) => connected,
        Err(e) => {
            runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
            return Err(e.into());
        }
    };
    events.clock().attach(client.clone());
    let pump = runtime.spawn(Arc::clone(&events).pump(stream));
    if let Some(media_events) = client.media_events() {
        // Ends by itself once the client stops.
        drop(runtime.spawn(Arc::clone(&events).pump_media(media_events)));
    }
    Ok(ClientHandle {
        user_id: cstring(client.user_id().as_ref().map_or("", |u| u.as_str())),
        device_id: cstring(client.device_id().as_str()),
        runtime: Some(runtime),
        client: Some(client),
        events,
        pump: Some(pump),
        media,
    })
}

/// Disconnects (if still connected: the user's calls end for this device), stops event and
/// media frame delivery (waiting for a running callback to return, unless called from that
/// callback), stops the client's threads and frees the client. Events not yet taken are dropped. NULL is
/// ignored. Blocks for at most a few seconds.
///
/// **Guarantee:** when it returns, no event callback or media sink callback of this client is
/// running and none will start again, and no `user_data` given to the client is touched again:
/// the app may free its user data right away. (Called from inside a callback, that one
/// invocation is of course still running until it returns; nothing else runs.)
///
/// # Safety
/// `client` must be NULL or a client from `callplus_client_connect` not freed before, and no
/// other thread may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_free(client: *mut callplus_client) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(client) }))
}

/// Says goodbye to the server: the user's calls end for this device (HANGUP), pending
/// operations fail with `NOT_CONNECTED`, and the client does not reconnect. The last events
/// (CALL_ENDED, the DISCONNECTED state) can still be taken; after them
/// `callplus_client_poll_event` returns `NOT_CONNECTED`. The client must still be freed.
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_disconnect(client: *const callplus_client) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        ensure_blocking_allowed()?;
        let client = handle.client()?.clone();
        handle.runtime()?.block_on(async move { client.disconnect().await });
        Ok(())
    })
}

/// The server's clock now (Unix ms), as measured at the latest Welcome or heartbeat answer;
/// this machine's clock before any. `callplus_call_session_duration_ms` counts on it for the
/// sessions of this client; `callplus_call_session_duration_at_ms` takes one reading (e.g. to
/// show several calls' talk times as of the same instant).
///
/// # Safety
/// `client` must be NULL or a live client; `now_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_server_time_ms(
    client: *const callplus_client,
    now_out: *mut i64,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        check_out(now_out)?;
        let now = handle.client()?.server_time_ms();
        // SAFETY: checked non-NULL above.
        unsafe { write_out(now_out, now) };
        Ok(())
    })
}

/// The connection's state now. NONE when `client` is NULL.
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_connection_state(
    client: *const callplus_client,
) -> callplus_connection_state {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(client, |h| {
            h.client().map_or(callplus_connection_state::None, |c| c.connection_state().into())
        })
    }
}

/// The user the token names (valid until the client is freed).
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_user_id(client: *const callplus_client) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(client, |h| h.user_id.as_ptr()) }
}

/// This client's device id (valid until the client is freed).
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_device_id(client: *const callplus_client) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(client, |h| h.device_id.as_ptr()) }
}

/// Replaces the token sent when the client reconnects (tokens expire; the app's backend mints
/// a new one).
///
/// # Safety
/// `client` must be NULL or a live client; `token` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_set_token(
    client: *const callplus_client,
    token: *const c_char,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, token) = unsafe { (try_ref(client)?, str_arg(token)?) };
        handle.client()?.set_token(token);
        Ok(())
    })
}

/// Starts a call to `callees` (`callee_count` user ids; exactly one for a SINGLE call).
///
/// - `call_type`: a `callplus_call_type` (SINGLE or MULTI).
/// - `media_type`: a `callplus_media_type` (AUDIO or AUDIO_VIDEO).
/// - `extra`: data for the callees (at most 4 KiB), or NULL.
/// - `call_id_out`: receives the new call's id; free it with `callplus_string_free`.
///
/// The call becomes the current call; its progress arrives as events. Errors:
/// `USER_LIST_INVALID` (empty list, more than 64 ids, duplicates, oneself),
/// `SINGLE_CALL_NOT_SUPPORT_MULTI_PERSON`, `SESSION_EXIST` (a call is current), `PARAM_ERROR`
/// (a malformed user id, bad call type, extra too long), `MEDIATYPE_INVALID`, `CALL_FULL` (more
/// participants than the server allows: by default 16 with video, 32 audio-only, the caller
/// included), and the server's refusals.
///
/// # Safety
/// `client` must be NULL or a live client; `callees` NULL or `callee_count` pointers to
/// NUL-terminated strings; `extra` NULL or NUL-terminated; `call_id_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_start_call(
    client: *const callplus_client,
    callees: *const *const c_char,
    callee_count: usize,
    call_type: u32,
    media_type: u32,
    extra: *const c_char,
    call_id_out: *mut *mut callplus_string,
) -> callplus_result {
    let outputs = StartOutputs { call_id: call_id_out, busy: std::ptr::null_mut() };
    // SAFETY: forwarded contract.
    unsafe {
        start_call(client, callees, callee_count, call_type, media_type, outputs, || {
            Ok(CallOptions {
                extra: opt_str_arg(extra)?.unwrap_or_default().to_owned(),
                ..CallOptions::default()
            })
        })
    }
}

/// As `callplus_client_start_call`, with optional settings: the invitation's `extra`, the ring
/// timeout, and the push notification for callees with no connected device. `options` may be
/// NULL (all defaults); see `struct callplus_call_options`.
///
/// `busy_out` may be NULL; otherwise it receives, on success, the callees already busy in
/// another call (possibly an empty list; free it with `callplus_string_list_free`). They are
/// rung all the same (call waiting) unless the server rejects busy callees.
///
/// Errors as `callplus_client_start_call`, and `PARAM_ERROR` for a ring timeout below
/// `CALLPLUS_RING_UNTIL_ANSWERED` or above `UINT32_MAX`, for a string that is not UTF-8, for
/// push settings over 8 KiB in all, or for a vendor key given twice; `NULL_PARAMETER` for a
/// NULL vendor key or value, or a NULL `vendor` with a non-zero `vendor_len`. The invite and
/// hangup functions refuse their options the same way.
///
/// # Safety
/// As `callplus_client_start_call`; `options` NULL or a readable `callplus_call_options` as its
/// doc says (strings NULL or NUL-terminated, `push_ios` / `push_android` NULL or readable);
/// `busy_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_start_call_with_options(
    client: *const callplus_client,
    callees: *const *const c_char,
    callee_count: usize,
    call_type: u32,
    media_type: u32,
    options: *const callplus_call_options,
    call_id_out: *mut *mut callplus_string,
    busy_out: *mut *mut callplus_string_list,
) -> callplus_result {
    let outputs = StartOutputs { call_id: call_id_out, busy: busy_out };
    // SAFETY: forwarded contract.
    unsafe {
        start_call(client, callees, callee_count, call_type, media_type, outputs, || {
            call_options_arg(options)
        })
    }
}

/// Where a start-call function writes: the call id (required) and the busy callees (optional).
struct StartOutputs {
    call_id: *mut *mut callplus_string,
    busy: *mut *mut callplus_string_list,
}

/// The body of both start-call functions: every argument is checked inside the panic boundary
/// before anything is sent.
///
/// # Safety
/// As `callplus_client_start_call`; `options` reads only what the caller's contract allows.
unsafe fn start_call(
    client: *const callplus_client,
    callees: *const *const c_char,
    callee_count: usize,
    call_type: u32,
    media_type: u32,
    outputs: StartOutputs,
    options: impl FnOnce() -> Result<CallOptions, callplus_result>,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, callees) = unsafe { (try_ref(client)?, str_array_arg(callees, callee_count)?) };
        let options = options()?;
        check_out(outputs.call_id)?;
        let (call_type, media_type) = (call_type_arg(call_type)?, media_type_arg(media_type)?);
        let callees: Vec<String> = callees.into_iter().map(str::to_owned).collect();
        let started =
            handle.run(|c| async move { c.start_call(&callees, call_type, media_type, options).await })?;
        // SAFETY: checked non-NULL above; `busy` is written only when the caller gave one.
        unsafe {
            write_out(outputs.call_id, new_string(started.call_id().as_str()));
            if !outputs.busy.is_null() {
                write_out(outputs.busy, new_string_list(&started.busy_users));
            }
        }
        Ok(())
    })
}

/// The body shared by the exported operations that take only a call id: checks both arguments
/// (NULL, UTF-8, id syntax) inside the panic boundary, then runs `op` on the client.
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated.
unsafe fn call_op<F: Future<Output = Result<(), callplus_session::Error>>>(
    client: *const callplus_client,
    call_id: *const c_char,
    op: impl FnOnce(Client, CallId) -> F,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, call_id) = unsafe { (try_ref(client)?, str_arg(call_id)?) };
        let call_id = call_id_arg(call_id)?;
        handle.run(|c| op(c, call_id))
    })
}

/// Answers the incoming call `call_id`. A current call, if any, is hung up first (reason
/// ACCEPTED_ANOTHER_CALL). CALL_CONNECTED follows.
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_accept(
    client: *const callplus_client,
    call_id: *const c_char,
) -> callplus_result {
    // SAFETY: forwarded contract.
    unsafe { call_op(client, call_id, |c, id| async move { c.accept(&id).await }) }
}

/// Hangs up `call_id`, or the current call when `call_id` is NULL. Before an answer this is a
/// reject (callee) or a cancel (caller). `NOT_IN_CALL` when there is no such call.
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_hangup(
    client: *const callplus_client,
    call_id: *const c_char,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, call_id) = unsafe { (try_ref(client)?, opt_str_arg(call_id)?) };
        let call_id = call_id.map(call_id_arg).transpose()?;
        handle.run(|c| async move { c.hangup(call_id.as_ref()).await })
    })
}

/// `callplus_client_hangup` with push settings for the "call cancelled" notification that
/// callees who were pushed the invitation get when the caller cancels. Only the push fields of
/// `options` are read (`extra` or `ring_timeout_ms` set: `PARAM_ERROR`); NULL: none.
///
/// ```c
/// struct callplus_call_options push = {0};
/// push.push_title = "Missed call";
/// callplus_client_hangup_with_options(client, NULL, &push);
/// ```
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated; `options` NULL or
/// a readable `callplus_call_options` as its doc says (strings NULL or NUL-terminated,
/// `push_ios` / `push_android` NULL or readable).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_hangup_with_options(
    client: *const callplus_client,
    call_id: *const c_char,
    options: *const callplus_call_options,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, call_id, push) =
            unsafe { (try_ref(client)?, opt_str_arg(call_id)?, hangup_push_arg(options)?) };
        let call_id = call_id.map(call_id_arg).transpose()?;
        handle.run(|c| async move { c.hangup_with_push(call_id.as_ref(), push).await })
    })
}

/// Tells the caller that this device shows (rings) the incoming call `call_id`.
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_ringing(
    client: *const callplus_client,
    call_id: *const c_char,
) -> callplus_result {
    // SAFETY: forwarded contract.
    unsafe { call_op(client, call_id, |c, id| async move { c.ringing(&id).await }) }
}

/// Joins the unended MULTI call `call_id` that this user was in or invited to (e.g. one of
/// `callplus_client_get_available_calls`, after leaving it); it becomes the current call and
/// CALL_CONNECTED follows. The others see this user's REMOTE_USER_STATE_CHANGED to ON_CALL.
///
/// Errors: `CALL_ID_INVALID` (malformed id), `CALL_NOT_FOUND` (no such call, or one this user
/// was never part of), `CALL_ENDED`, `SINGLE_CALL_NOT_SUPPORT_MULTI_PERSON` (a SINGLE call),
/// `SESSION_EXIST` (a call is current), `CALL_FULL`, `NULL_PARAMETER`, `PARAM_ERROR` (not
/// UTF-8).
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_join_call(
    client: *const callplus_client,
    call_id: *const c_char,
) -> callplus_result {
    // SAFETY: forwarded contract.
    unsafe { call_op(client, call_id, |c, id| async move { c.join_call(&id).await }) }
}

/// Invites `users` (`user_count` ids) into the current call; a SINGLE call becomes MULTI.
/// `extra` (or NULL) is handed to the invitees. `busy_out` receives the invitees that are busy
/// in another call (possibly an empty list); free it with `callplus_string_list_free`. Busy
/// invitees are rung all the same (unless the server rejects busy callees).
///
/// The invitees get RECEIVED_CALL; the other participants REMOTE_USER_INVITED (and, when the
/// call was SINGLE, everyone CALL_TYPE_CHANGED). Users already in the call are skipped.
///
/// Errors: `NOT_IN_CALL` (no current call), `USER_LIST_INVALID` (empty list, more than 64 ids,
/// duplicates, oneself), `PARAM_ERROR` (a malformed user id or not UTF-8, extra too long, a
/// count above 4096), `CALL_FULL` (the call would have more participants than the server
/// allows), `NULL_PARAMETER`; on error the call is unchanged and `busy_out` untouched.
///
/// # Safety
/// `client` must be NULL or a live client; `users` NULL or `user_count` pointers to
/// NUL-terminated strings; `extra` NULL or NUL-terminated; `busy_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_invite(
    client: *const callplus_client,
    users: *const *const c_char,
    user_count: usize,
    extra: *const c_char,
    busy_out: *mut *mut callplus_string_list,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, users, extra) =
            unsafe { (try_ref(client)?, str_array_arg(users, user_count)?, opt_str_arg(extra)?) };
        // SAFETY: forwarded contract.
        unsafe { invite(handle, users, None, extra.unwrap_or_default().to_owned(), busy_out) }
    })
}

/// `callplus_client_invite` with push settings for the invitees who have no connected device:
/// the `extra` and push fields of `options` are read (`ring_timeout_ms` set: `PARAM_ERROR`);
/// NULL: none, as `callplus_client_invite` with a NULL `extra`.
///
/// # Safety
/// `client` must be NULL or a live client; `users` NULL or `user_count` pointers to
/// NUL-terminated strings; `options` NULL or a readable `callplus_call_options` as its doc says
/// (strings NULL or NUL-terminated, `push_ios` / `push_android` NULL or readable); `busy_out`
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_invite_with_options(
    client: *const callplus_client,
    users: *const *const c_char,
    user_count: usize,
    options: *const callplus_call_options,
    busy_out: *mut *mut callplus_string_list,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, users, (push, extra)) =
            unsafe { (try_ref(client)?, str_array_arg(users, user_count)?, invite_options_arg(options)?) };
        // SAFETY: forwarded contract.
        unsafe { invite(handle, users, push, extra, busy_out) }
    })
}

/// The invitation both `callplus_client_invite` functions send, once their arguments are read.
///
/// # Safety
/// `busy_out` NULL or writable.
unsafe fn invite(
    handle: &ClientHandle,
    users: Vec<&str>,
    push: Option<PushConfig>,
    extra: String,
    busy_out: *mut *mut callplus_string_list,
) -> Result<(), callplus_result> {
    check_out(busy_out)?;
    let users: Vec<String> = users.into_iter().map(str::to_owned).collect();
    let busy = handle.run(|c| async move { c.invite_with(&users, push, extra).await })?;
    // SAFETY: checked non-NULL above.
    unsafe { write_out(busy_out, new_string_list(&busy)) };
    Ok(())
}

/// Asks the peer of the current SINGLE call to switch to `media_type` (a
/// `callplus_media_type`). `transaction_id_out` receives the transaction (free it with
/// `callplus_string_free`); the outcome arrives as CHANGE_MEDIA_TYPE_RESULT.
///
/// # Safety
/// `client` must be NULL or a live client; `transaction_id_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_request_change_media_type(
    client: *const callplus_client,
    media_type: u32,
    transaction_id_out: *mut *mut callplus_string,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        check_out(transaction_id_out)?;
        let media_type = media_type_arg(media_type)?;
        let tx = handle.run(|c| async move { c.request_change_media_type(media_type).await })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(transaction_id_out, new_string(tx.as_str())) };
        Ok(())
    })
}

/// Withdraws this client's pending change-media-type request `transaction_id`.
///
/// # Safety
/// `client` must be NULL or a live client; `transaction_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_cancel_change_media_type(
    client: *const callplus_client,
    transaction_id: *const c_char,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, tx) = unsafe { (try_ref(client)?, str_arg(transaction_id)?) };
        let tx = transaction_arg(tx)?;
        handle.run(|c| async move { c.cancel_change_media_type(&tx).await })
    })
}

/// Answers the peer's change-media-type request `transaction_id`.
///
/// # Safety
/// `client` must be NULL or a live client; `transaction_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_reply_change_media_type(
    client: *const callplus_client,
    transaction_id: *const c_char,
    agree: bool,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, tx) = unsafe { (try_ref(client)?, str_arg(transaction_id)?) };
        let tx = transaction_arg(tx)?;
        handle.run(|c| async move { c.reply_change_media_type(&tx, agree).await })
    })
}

/// Turns this user's camera on or off in the current call (the others are told).
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_set_camera_enabled(
    client: *const callplus_client,
    enabled: bool,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        handle.run(|c| async move { c.set_camera_enabled(enabled).await })
    })
}

/// Turns this user's microphone on or off in the current call (the others are told).
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_set_microphone_enabled(
    client: *const callplus_client,
    enabled: bool,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        handle.run(|c| async move { c.set_microphone_enabled(enabled).await })
    })
}

/// `set_video_view`'s layer choice: whether this device receives `user_id`'s video in its tiny
/// layer (a quarter of the pixels, for a small view) or its full one (the default). Frames keep
/// arriving at the media sink callback either way; in a call through the SFU their size changes
/// at the chosen layer's next key frame (the SFU asks the publisher for one of that layer only,
/// so nobody else gets a key frame for it). Holds across calls until changed; a peer-to-peer
/// call sends one layer, so it changes nothing there.
///
/// Returns `OK`; `INVALID_STATE` when the client was connected without `enable_media`;
/// `NULL_PARAMETER` for a NULL client or user id; `USER_ID_INVALID` for an invalid user id.
///
/// # Safety
/// `client` must be NULL or a live client; `user_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_set_video_tiny(
    client: *const callplus_client,
    user_id: *const c_char,
    tiny: bool,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, user) = unsafe { (try_ref(client)?, str_arg(user_id)?) };
        let user = UserId::new(user)?;
        handle.run(|c| async move { c.set_video_tiny(&user, tiny).await })
    })
}

/// Reports that the first remote media frame of `call_id` was rendered (CALL_FIRST_FRAME_TIME
/// reaches every participant).
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_report_first_frame(
    client: *const callplus_client,
    call_id: *const c_char,
) -> callplus_result {
    // SAFETY: forwarded contract.
    unsafe { call_op(client, call_id, |c, id| async move { c.report_first_frame(&id).await }) }
}

/// A snapshot of the current call (placed, accepted or joined here, and not ended).
/// `session_out` receives it (free it with `callplus_call_session_free`); `NOT_IN_CALL` when
/// there is none. Does not block.
///
/// # Safety
/// `client` must be NULL or a live client; `session_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_current_call(
    client: *const callplus_client,
    session_out: *mut *mut callplus_call_session,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        check_out(session_out)?;
        let session = handle.client()?.current_call().ok_or(callplus_result::NotInCall)?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(session_out, new_session(session, Arc::clone(handle.events.clock()))) };
        Ok(())
    })
}

/// The server's current view of a call this user is or was invited to ("is it still
/// ringing?"). `call_out` receives it; free it with `callplus_call_info_free`.
///
/// # Safety
/// `client` must be NULL or a live client; `call_id` NULL or NUL-terminated; `call_out` NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_get_call(
    client: *const callplus_client,
    call_id: *const c_char,
    call_out: *mut *mut callplus_call_info,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, call_id) = unsafe { (try_ref(client)?, str_arg(call_id)?) };
        check_out(call_out)?;
        let call_id = call_id_arg(call_id)?;
        let call = handle.run(|c| async move { c.get_call(&call_id).await })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(call_out, new_info(call)) };
        Ok(())
    })
}

/// One page of this user's call records: `sync_time` -1 for the first page, then the page's
/// `callplus_record_page_sync_time`; `count` 1..=100; `order` a `callplus_record_order`.
/// `page_out` receives the page; free it with `callplus_record_page_free`.
///
/// # Safety
/// `client` must be NULL or a live client; `page_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_get_call_records(
    client: *const callplus_client,
    sync_time: i64,
    count: u32,
    order: u32,
    page_out: *mut *mut callplus_record_page,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        check_out(page_out)?;
        let order = record_order_arg(order)?;
        let page = handle.run(|c| async move { c.get_call_records(sync_time, count, order).await })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(page_out, new_page(page)) };
        Ok(())
    })
}

/// Deletes this user's records of `call_ids` (`call_id_count` ids, 1..=100).
///
/// # Safety
/// `client` must be NULL or a live client; `call_ids` NULL or `call_id_count` pointers to
/// NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_delete_call_records(
    client: *const callplus_client,
    call_ids: *const *const c_char,
    call_id_count: usize,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let (handle, ids) = unsafe { (try_ref(client)?, str_array_arg(call_ids, call_id_count)?) };
        let ids = ids.into_iter().map(call_id_arg).collect::<Result<Vec<_>, _>>()?;
        handle.run(|c| async move { c.delete_call_records(ids).await })
    })
}

/// Deletes all of this user's records.
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_delete_all_call_records(
    client: *const callplus_client,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        handle.run(|c| async move { c.delete_all_call_records().await })
    })
}

/// The unended MULTI calls this user took part in or was invited to, also those this user
/// left (join one with `callplus_client_join_call`). `calls_out` receives the list (possibly
/// empty); free it with `callplus_call_info_list_free`.
///
/// # Safety
/// `client` must be NULL or a live client; `calls_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_get_available_calls(
    client: *const callplus_client,
    calls_out: *mut *mut callplus_call_info_list,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        check_out(calls_out)?;
        let calls = handle.run(|c| async move { c.get_available_calls().await })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(calls_out, new_info_list(calls)) };
        Ok(())
    })
}

/// Takes the next event, waiting up to `timeout_ms` milliseconds for one (0: do not wait).
///
/// `event_out` receives the event (free it with `callplus_event_free`). Returns
/// `CALLPLUS_RESULT_NO_EVENT` when none came in time, `NOT_CONNECTED` once the client has
/// stopped (disconnected, kicked, token refused) and every event was taken, and
/// `INVALID_STATE` while an event callback is installed. Events come in the order they
/// happened; each is delivered once.
///
/// # Safety
/// `client` must be NULL or a live client; `event_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_poll_event(
    client: *const callplus_client,
    timeout_ms: u32,
    event_out: *mut *mut callplus_event,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        check_out(event_out)?;
        let event = handle.events.poll(Duration::from_millis(u64::from(timeout_ms)))?;
        // SAFETY: checked non-NULL above.
        unsafe {
            write_out(event_out, to_boxed::<callplus_event>(EventData::new(event, handle.events.clock())))
        };
        Ok(())
    })
}

/// Installs `callback` to receive every event (instead of `callplus_client_poll_event`), or
/// removes it when `callback` is NULL (events then queue up for polling again).
///
/// **Thread:** the callback runs on a thread the client starts for it ("callplus-events"),
/// one event at a time, in order; never on the thread that installed it, and never
/// concurrently with itself. `user_data` is passed back unchanged and must be usable from that
/// thread. The event is borrowed: read what you need during the call, do not free it.
///
/// **What the callback may do:** it runs outside the client's runtime, so it may call any
/// client function, including the blocking ones (accept, hangup, …) and
/// `callplus_client_set_event_callback` (e.g. NULL to stop). While it runs, later events wait
/// in the queue, so keep it short (post the work to your own queue if it is long). It may even
/// call `callplus_client_free` as its last action on the client; then nothing else may use
/// the client.
///
/// Removing the callback (NULL) waits until a running invocation returns (unless called from
/// it), so after that `user_data` may be freed; so does `callplus_client_free`, after which no
/// callback runs. Replacing one callback by another takes effect from the next event.
///
/// # Safety
/// `client` must be NULL or a live client; `callback` NULL or a function safe to call from
/// another thread with `user_data`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_set_event_callback(
    client: *const callplus_client,
    callback: callplus_event_callback,
    user_data: *mut c_void,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        handle.events.set_callback(make_callback(callback, user_data))
    })
}
