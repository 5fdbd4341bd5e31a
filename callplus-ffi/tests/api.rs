//! The C API called from Rust the way C calls it: NULLs, garbage strings, unknown enum numbers
//! and invalid ids must come back as codes (never a crash), outputs must stay untouched on
//! failure, and the event poll / callback must behave as documented, against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use callplus::*;
use callplus_server::server::push_config_json;
use callplus_session::PushConfig;
use common::TestServer;

mod common;

/// A value no function may write when it fails.
fn sentinel<T>() -> *mut T {
    std::ptr::dangling_mut::<T>()
}

const NOT_UTF8: &[u8] = &[0xff, 0xfe, 0x00];

fn not_utf8() -> *const c_char {
    NOT_UTF8.as_ptr().cast()
}

impl TestServer {
    fn endpoint(&self) -> CString {
        CString::new(self.server().grpc_url()).unwrap()
    }

    fn token(&self, user: &str) -> CString {
        CString::new(self.server().mint_token(user, Duration::from_secs(3600)).unwrap()).unwrap()
    }

    fn connect(&self, user: &str) -> *mut callplus_client {
        let mut client = null_mut();
        let r = unsafe {
            callplus_client_connect(self.endpoint().as_ptr(), self.token(user).as_ptr(), null(), &mut client)
        };
        assert_eq!(r, callplus_result::Ok, "{user} connects");
        assert!(!client.is_null());
        client
    }
}

fn text(p: *const c_char) -> String {
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
}

/// Polls until an event of `kind` arrives (within 10 s) and returns it (owned).
fn wait_for(client: *const callplus_client, kind: callplus_event_type) -> *mut callplus_event {
    wait_until(client, kind, |_| true)
}

/// Polls until an event of `kind` for which `matches` holds arrives (within 10 s) and returns
/// it (owned); the events before it are dropped.
fn wait_until(
    client: *const callplus_client,
    kind: callplus_event_type,
    matches: impl Fn(*const callplus_event) -> bool,
) -> *mut callplus_event {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut event = null_mut();
        let r = unsafe { callplus_client_poll_event(client, 100, &mut event) };
        if r == callplus_result::NoEvent {
            continue;
        }
        assert_eq!(r, callplus_result::Ok);
        if unsafe { callplus_event_kind(event) } == kind && matches(event) {
            return event;
        }
        unsafe { callplus_event_free(event) };
    }
    panic!("no matching {kind:?} event");
}

#[test]
fn null_client_is_refused_everywhere() {
    let c: *const callplus_client = null();
    let id = c"c1".as_ptr();
    let mut s = sentinel::<callplus_string>();
    let mut l = sentinel::<callplus_string_list>();
    let mut e = sentinel::<callplus_event>();
    let mut page = sentinel::<callplus_record_page>();
    let mut calls = sentinel::<callplus_call_info_list>();
    let mut info = sentinel::<callplus_call_info>();
    let mut session = sentinel::<callplus_call_session>();
    let callees = [c"bob".as_ptr()];
    unsafe {
        use callplus_result::NullParameter as N;
        assert_eq!(callplus_client_disconnect(c), N);
        assert_eq!(callplus_client_set_token(c, c"t".as_ptr()), N);
        assert_eq!(callplus_client_start_call(c, callees.as_ptr(), 1, 1, 1, null(), &mut s), N);
        assert_eq!(callplus_client_accept(c, id), N);
        assert_eq!(callplus_client_hangup(c, null()), N);
        assert_eq!(callplus_client_hangup_with_options(c, null(), null()), N);
        assert_eq!(callplus_client_ringing(c, id), N);
        assert_eq!(callplus_client_join_call(c, id), N);
        assert_eq!(callplus_client_invite(c, callees.as_ptr(), 1, null(), &mut l), N);
        assert_eq!(callplus_client_invite_with_options(c, callees.as_ptr(), 1, null(), &mut l), N);
        assert_eq!(callplus_client_request_change_media_type(c, 2, &mut s), N);
        assert_eq!(callplus_client_cancel_change_media_type(c, id), N);
        assert_eq!(callplus_client_reply_change_media_type(c, id, true), N);
        assert_eq!(callplus_client_set_camera_enabled(c, false), N);
        assert_eq!(callplus_client_set_microphone_enabled(c, false), N);
        assert_eq!(callplus_client_report_first_frame(c, id), N);
        assert_eq!(callplus_client_current_call(c, &mut session), N);
        assert_eq!(callplus_client_get_call(c, id, &mut info), N);
        assert_eq!(callplus_client_get_call_records(c, -1, 10, 0, &mut page), N);
        assert_eq!(callplus_client_delete_call_records(c, callees.as_ptr(), 1), N);
        assert_eq!(callplus_client_delete_all_call_records(c), N);
        assert_eq!(callplus_client_get_available_calls(c, &mut calls), N);
        assert_eq!(callplus_client_poll_event(c, 0, &mut e), N);
        assert_eq!(callplus_client_set_event_callback(c, None, null_mut()), N);
        assert_eq!(callplus_client_set_media_sink(c, None, null_mut()), N);
        let sample = [1u8];
        assert_eq!(callplus_client_push_audio_sample(c, sample.as_ptr(), 1, 20_000), N);
        assert_eq!(callplus_client_push_video_sample(c, sample.as_ptr(), 1, 66_666), N);
        assert_eq!(callplus_client_connection_state(c), callplus_connection_state::None);
        let mut now = 7;
        assert_eq!(callplus_client_server_time_ms(c, &mut now), N);
        assert_eq!(now, 7, "no output on failure");
        assert!(callplus_client_user_id(c).is_null());
        assert!(callplus_client_device_id(c).is_null());
        callplus_client_free(null_mut());
    }
    // Nothing was written.
    assert_eq!(s, sentinel());
    assert_eq!(l, sentinel());
    assert_eq!(e, sentinel());
    assert_eq!(page, sentinel());
    assert_eq!(calls, sentinel());
    assert_eq!(info, sentinel());
    assert_eq!(session, sentinel());
}

#[test]
fn null_objects_read_as_nothing() {
    unsafe {
        assert_eq!(callplus_event_kind(null()), callplus_event_type::None);
        assert!(callplus_event_call_id(null()).is_null());
        assert!(callplus_event_description(null()).is_null());
        assert_eq!(callplus_event_reason(null()), callplus_end_reason::None);
        assert_eq!(callplus_event_code(null()), callplus_result::NullParameter);
        assert!(callplus_event_session(null()).is_null());
        assert_eq!(callplus_event_user_count(null()), 0);
        assert!(callplus_event_user_at(null(), 0).is_null());
        assert_eq!(callplus_event_media_kind(null()), callplus_media_kind::None);
        assert_eq!(callplus_event_audio_level(null()), 0);
        assert!(callplus_event_stats(null()).is_null());
        assert_eq!(callplus_media_stats_peer_count(null()), 0);
        assert!(callplus_media_stats_peer_user_id(null(), 0).is_null());
        assert!(callplus_call_session_call_id(null()).is_null());
        assert_eq!(callplus_call_session_state(null()), callplus_call_state::None);
        assert_eq!(callplus_call_session_participant_count(null()), 0);
        assert!(callplus_call_session_participant_user_id(null(), 3).is_null());
        assert!(!callplus_call_session_participant_camera_disabled(null(), 0));
        assert!(!callplus_call_session_participant_microphone_disabled(null(), 0));
        assert_eq!(callplus_call_session_participant_delivery(null(), 0), callplus_delivery::Unreachable);
        assert_eq!(callplus_call_session_duration_ms(null()), 0);
        assert!(callplus_call_info_call_id(null()).is_null());
        assert!(!callplus_call_info_participant_camera_disabled(null(), 0));
        assert!(!callplus_call_info_participant_microphone_disabled(null(), 0));
        assert_eq!(callplus_call_info_participant_delivery(null(), 0), callplus_delivery::Unreachable);
        assert_eq!(callplus_call_info_first_frame_at_ms(null()), 0);
        assert_eq!(callplus_record_page_len(null()), 0);
        assert!(callplus_record_page_get(null(), 0).is_null());
        assert!(!callplus_record_page_has_more(null()));
        assert!(callplus_call_record_call(null()).is_null());
        assert!(callplus_call_summary_call_id(null()).is_null());
        assert_eq!(callplus_call_info_list_len(null()), 0);
        callplus_event_free(null_mut());
        callplus_call_session_free(null_mut());
        callplus_call_info_free(null_mut());
        callplus_call_info_list_free(null_mut());
        callplus_record_page_free(null_mut());
    }
    assert_eq!(text(callplus_version()), env!("CARGO_PKG_VERSION"));
    assert_eq!(text(callplus_event_type_name(8)), "CALL_ENDED");
    assert_eq!(text(callplus_event_type_name(12345)), "UNKNOWN");
}

#[test]
fn event_type_names_match_the_enum() {
    use callplus_event_type as T;
    for (t, name) in [
        (T::ConnectionStateChanged, "CONNECTION_STATE_CHANGED"),
        (T::ConnectionRejected, "CONNECTION_REJECTED"),
        (T::ReceivedCall, "RECEIVED_CALL"),
        (T::RemoteUserInvited, "REMOTE_USER_INVITED"),
        (T::CallConnected, "CALL_CONNECTED"),
        (T::CallTypeChanged, "CALL_TYPE_CHANGED"),
        (T::RemoteUserStateChanged, "REMOTE_USER_STATE_CHANGED"),
        (T::CallEnded, "CALL_ENDED"),
        (T::RemoteCameraStateChanged, "REMOTE_CAMERA_STATE_CHANGED"),
        (T::RemoteMicrophoneStateChanged, "REMOTE_MICROPHONE_STATE_CHANGED"),
        (T::ReceivedCallRecord, "RECEIVED_CALL_RECORD"),
        (T::ChangeMediaTypeRequest, "CHANGE_MEDIA_TYPE_REQUEST"),
        (T::ChangeMediaTypeResult, "CHANGE_MEDIA_TYPE_RESULT"),
        (T::CallStartTime, "CALL_START_TIME"),
        (T::CallFirstFrameTime, "CALL_FIRST_FRAME_TIME"),
        (T::SummaryMessage, "SUMMARY_MESSAGE"),
        (T::DeliveryChanged, "DELIVERY_CHANGED"),
        (T::PeerConnected, "PEER_CONNECTED"),
        (T::UserMediaAvailable, "USER_MEDIA_AVAILABLE"),
        (T::FirstFrame, "FIRST_FRAME"),
        (T::AudioLevel, "AUDIO_LEVEL"),
        (T::MediaStats, "MEDIA_STATS"),
        (T::FetchRemoteMediaError, "FETCH_REMOTE_MEDIA_ERROR"),
        (T::MediaError, "MEDIA_ERROR"),
        (T::VideoKeyframeRequested, "VIDEO_KEYFRAME_REQUESTED"),
        (T::ActiveSpeaker, "ACTIVE_SPEAKER"),
    ] {
        assert_eq!(text(callplus_event_type_name(t as u32)), name);
    }
}

#[test]
fn connect_refuses_bad_arguments() {
    let server = TestServer::start();
    let (endpoint, token) = (server.endpoint(), server.token("alice"));
    let mut out = sentinel::<callplus_client>();
    unsafe {
        use callplus_result as R;
        assert_eq!(callplus_client_connect(null(), token.as_ptr(), null(), &mut out), R::NullParameter);
        assert_eq!(callplus_client_connect(endpoint.as_ptr(), null(), null(), &mut out), R::NullParameter);
        assert_eq!(
            callplus_client_connect(endpoint.as_ptr(), token.as_ptr(), null(), null_mut()),
            R::NullParameter
        );
        assert_eq!(callplus_client_connect(not_utf8(), token.as_ptr(), null(), &mut out), R::ParamError);
        assert_eq!(callplus_client_connect(endpoint.as_ptr(), not_utf8(), null(), &mut out), R::ParamError);
        assert_eq!(
            callplus_client_connect(endpoint.as_ptr(), token.as_ptr(), c"no spaces".as_ptr(), &mut out),
            R::ParamError
        );
        assert_eq!(
            callplus_client_connect(c"not a url".as_ptr(), token.as_ptr(), null(), &mut out),
            R::ParamError
        );
        assert_eq!(
            callplus_client_connect(endpoint.as_ptr(), c"garbage".as_ptr(), null(), &mut out),
            R::TokenInvalid
        );
        assert_eq!(
            callplus_client_connect(c"http://127.0.0.1:1".as_ptr(), token.as_ptr(), null(), &mut out),
            R::NotConnected
        );
    }
    assert_eq!(out, sentinel());
}

#[test]
fn connect_over_tls_checks_the_certificate() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = callplus_server::server::ServerTls::from_pem(made.cert.pem(), made.signing_key.serialize_pem());
    let server = TestServer::start_with(|builder| builder.tls(tls));
    let (endpoint, token) = (server.endpoint(), server.token("alice"));
    assert!(endpoint.to_str().unwrap().starts_with("https://127.0.0.1:"));
    let ca = CString::new(made.cert.pem()).unwrap();
    let trusting = callplus_client_options {
        tls_ca_pem: ca.as_ptr(),
        tls_domain: c"localhost".as_ptr(),
        ..unsafe { std::mem::zeroed() }
    };
    let connect = |endpoint: &CStr, options: &callplus_client_options, out: &mut *mut callplus_client| unsafe {
        callplus_client_connect_with_options(endpoint.as_ptr(), token.as_ptr(), options, out)
    };

    let mut client = null_mut();
    assert_eq!(connect(&endpoint, &trusting, &mut client), callplus_result::Ok);
    assert_eq!(text(unsafe { callplus_client_user_id(client) }), "alice");
    unsafe { callplus_client_free(client) };

    let mut out = sentinel::<callplus_client>();
    // The public roots do not vouch for a self-signed certificate; neither does a wrong name.
    let public = unsafe { std::mem::zeroed::<callplus_client_options>() };
    assert_eq!(connect(&endpoint, &public, &mut out), callplus_result::NotConnected);
    let wrong_name = callplus_client_options { tls_domain: c"calls.example.org".as_ptr(), ..trusting };
    assert_eq!(connect(&endpoint, &wrong_name, &mut out), callplus_result::NotConnected);
    // TLS settings on a plaintext endpoint are refused, not ignored.
    let plaintext = CString::new(endpoint.to_str().unwrap().replacen("https", "http", 1)).unwrap();
    assert_eq!(connect(&plaintext, &trusting, &mut out), callplus_result::ParamError);
    let not_utf8_ca = callplus_client_options { tls_ca_pem: not_utf8(), ..trusting };
    assert_eq!(connect(&endpoint, &not_utf8_ca, &mut out), callplus_result::ParamError);
    assert_eq!(out, sentinel());
}

#[test]
fn operations_refuse_garbage_with_codes() {
    let server = TestServer::start();
    let alice = server.connect("alice");
    let _bob = server.connect("bob");
    let mut s = sentinel::<callplus_string>();
    let mut l = sentinel::<callplus_string_list>();
    let mut page = sentinel::<callplus_record_page>();
    let mut session = sentinel::<callplus_call_session>();
    let bob = [c"bob".as_ptr()];
    let two = [c"bob".as_ptr(), c"carol".as_ptr()];
    let with_null = [c"bob".as_ptr(), null()];
    let bad_utf8 = [not_utf8()];
    let bad_id = [c"not an id".as_ptr()];
    unsafe {
        use callplus_result as R;
        assert_eq!(
            callplus_client_user_id(alice).as_ref().map(|_| text(callplus_client_user_id(alice))),
            Some("alice".into())
        );
        assert_eq!(callplus_client_connection_state(alice), callplus_connection_state::Connected);

        // start_call: every argument checked before anything is sent.
        assert_eq!(callplus_client_start_call(alice, null(), 1, 1, 1, null(), &mut s), R::NullParameter);
        assert_eq!(callplus_client_start_call(alice, null(), 0, 1, 1, null(), &mut s), R::UserListInvalid);
        assert_eq!(
            callplus_client_start_call(alice, with_null.as_ptr(), 2, 2, 1, null(), &mut s),
            R::NullParameter
        );
        assert_eq!(
            callplus_client_start_call(alice, bad_utf8.as_ptr(), 1, 1, 1, null(), &mut s),
            R::ParamError
        );
        assert_eq!(
            callplus_client_start_call(alice, bad_id.as_ptr(), 1, 1, 1, null(), &mut s),
            R::ParamError
        );
        assert_eq!(callplus_client_start_call(alice, bob.as_ptr(), 1, 7, 1, null(), &mut s), R::ParamError);
        assert_eq!(
            callplus_client_start_call(alice, bob.as_ptr(), 1, 1, 9, null(), &mut s),
            R::MediatypeInvalid
        );
        assert_eq!(
            callplus_client_start_call(alice, two.as_ptr(), 2, 1, 1, null(), &mut s),
            R::SingleCallNotSupportMultiPerson
        );
        assert_eq!(
            callplus_client_start_call(alice, bob.as_ptr(), 1, 1, 1, not_utf8(), &mut s),
            R::ParamError
        );
        assert_eq!(
            callplus_client_start_call(alice, bob.as_ptr(), 1, 1, 1, null(), null_mut()),
            R::NullParameter
        );
        assert_eq!(
            callplus_client_start_call(alice, bob.as_ptr(), usize::MAX, 1, 1, null(), &mut s),
            R::ParamError
        );
        assert_eq!(s, sentinel());
        // None of that started a call.
        assert_eq!(callplus_client_current_call(alice, &mut session), R::NotInCall);
        assert_eq!(session, sentinel());

        // Ids.
        assert_eq!(callplus_client_accept(alice, null()), R::NullParameter);
        assert_eq!(callplus_client_accept(alice, not_utf8()), R::ParamError);
        assert_eq!(callplus_client_accept(alice, c"bad id!".as_ptr()), R::CallIdInvalid);
        assert_eq!(callplus_client_accept(alice, c"".as_ptr()), R::CallIdInvalid);
        assert_eq!(callplus_client_accept(alice, c"unknown-call".as_ptr()), R::CallIdInvalid);
        assert_eq!(callplus_client_hangup(alice, null()), R::NotInCall);
        assert_eq!(callplus_client_hangup(alice, c"bad id!".as_ptr()), R::CallIdInvalid);
        assert_eq!(callplus_client_join_call(alice, c"bad id!".as_ptr()), R::CallIdInvalid);
        assert_eq!(
            callplus_client_cancel_change_media_type(alice, c"bad tx!".as_ptr()),
            R::TransactionIdInvalid
        );
        assert_eq!(callplus_client_reply_change_media_type(alice, null(), true), R::NullParameter);
        assert_eq!(callplus_client_request_change_media_type(alice, 0, &mut s), R::MediatypeInvalid);
        assert_eq!(callplus_client_request_change_media_type(alice, 2, &mut s), R::NotInCall);
        assert_eq!(callplus_client_invite(alice, bob.as_ptr(), 1, null(), null_mut()), R::NullParameter);
        assert_eq!(callplus_client_invite(alice, bob.as_ptr(), 1, null(), &mut l), R::NotInCall);
        assert_eq!(callplus_client_set_camera_enabled(alice, false), R::NotInCall);
        assert_eq!(s, sentinel());
        assert_eq!(l, sentinel());

        // Records.
        assert_eq!(callplus_client_get_call_records(alice, -1, 10, 2, &mut page), R::ParamError);
        assert_eq!(callplus_client_get_call_records(alice, -1, 0, 0, &mut page), R::ParamError);
        assert_eq!(callplus_client_get_call_records(alice, -1, 1000, 0, &mut page), R::ParamError);
        assert_eq!(callplus_client_get_call_records(alice, -1, 10, 0, null_mut()), R::NullParameter);
        assert_eq!(page, sentinel());
        assert_eq!(callplus_client_delete_call_records(alice, with_null.as_ptr(), 2), R::NullParameter);
        assert_eq!(callplus_client_delete_call_records(alice, bad_id.as_ptr(), 1), R::CallIdInvalid);
        assert_eq!(callplus_client_get_call_records(alice, -1, 10, 1, &mut page), R::Ok);
        assert_eq!(callplus_record_page_len(page), 0);
        assert!(callplus_record_page_get(page, 0).is_null());
        callplus_record_page_free(page);

        // Events.
        assert_eq!(callplus_client_poll_event(alice, 0, null_mut()), R::NullParameter);

        // Blocking calls from inside a tokio runtime are refused, not deadlocked.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let alice_addr = alice as usize;
        let r =
            rt.block_on(async move { callplus_client_hangup(alice_addr as *const callplus_client, null()) });
        assert_eq!(r, R::InvalidState);

        assert_eq!(callplus_client_disconnect(alice), R::Ok);
        assert_eq!(callplus_client_hangup(alice, null()), R::NotConnected);
        callplus_client_free(alice);
        callplus_client_free(_bob);
    }
}

#[test]
fn a_call_through_the_c_api() {
    let server = TestServer::start();
    let alice = server.connect("alice");
    let bob = server.connect("bob");
    unsafe {
        use callplus_result as R;
        let mut call_id = null_mut();
        let callees = [c"bob".as_ptr()];
        assert_eq!(
            callplus_client_start_call(alice, callees.as_ptr(), 1, 1, 1, c"hi".as_ptr(), &mut call_id),
            R::Ok
        );
        let id = text(callplus_string_data(call_id));
        assert_eq!(callplus_string_len(call_id), id.len());

        let incoming = wait_for(bob, callplus_event_type::ReceivedCall);
        assert_eq!(text(callplus_event_call_id(incoming)), id);
        assert_eq!(text(callplus_event_inviter(incoming)), "alice");
        assert_eq!(text(callplus_event_extra(incoming)), "hi");
        let session = callplus_event_session(incoming);
        assert_eq!(callplus_call_session_state(session), callplus_call_state::Incoming);
        assert_eq!(callplus_call_session_media_type(session), callplus_media_type::Audio);
        assert_eq!(text(callplus_call_session_creator(session)), "alice");
        assert_eq!(callplus_call_session_participant_count(session), 2);
        assert!(callplus_call_session_participant_user_id(session, 2).is_null());
        assert_eq!(callplus_client_accept(bob, callplus_event_call_id(incoming)), R::Ok);
        callplus_event_free(incoming);

        callplus_event_free(wait_for(alice, callplus_event_type::CallConnected));
        let mut current = null_mut();
        assert_eq!(callplus_client_current_call(alice, &mut current), R::Ok);
        assert_eq!(text(callplus_call_session_call_id(current)), id);
        assert_eq!(callplus_call_session_state(current), callplus_call_state::OnCall);
        assert!(callplus_call_session_is_outgoing(current));
        assert!(callplus_call_session_inviter(current).is_null());
        // Talk time on the server's clock: the server runs on this machine, so its clock reads
        // this machine's within the measurement; a second later the call has lasted a second more.
        let mut server_now = 0;
        assert_eq!(callplus_client_server_time_ms(alice, &mut server_now), R::Ok);
        let machine_now = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap();
        assert!((server_now - machine_now).abs() < 2_000, "server {server_now}, here {machine_now}");
        let started = callplus_call_session_started_at_ms(current);
        assert!(started > 0, "a connected call has a start time");
        assert_eq!(callplus_call_session_duration_at_ms(current, started + 1_500), 1_500);
        assert_eq!(callplus_call_session_duration_at_ms(current, started - 1), 0, "never negative");
        assert_eq!(callplus_call_session_duration_at_ms(null(), server_now), 0);
        callplus_call_session_free(current);

        // Microphone off reaches the peer.
        assert_eq!(callplus_client_set_microphone_enabled(bob, false), R::Ok);
        let camera = wait_for(alice, callplus_event_type::RemoteMicrophoneStateChanged);
        assert_eq!(text(callplus_event_user_id(camera)), "bob");
        assert!(callplus_event_disabled(camera));
        callplus_event_free(camera);

        // A media-type change request (audio to video), refused by the peer.
        let mut tx = null_mut();
        assert_eq!(callplus_client_request_change_media_type(alice, 2, &mut tx), R::Ok);
        let request = wait_for(bob, callplus_event_type::ChangeMediaTypeRequest);
        assert_eq!(text(callplus_event_transaction_id(request)), text(callplus_string_data(tx)));
        assert_eq!(
            callplus_client_reply_change_media_type(bob, callplus_event_transaction_id(request), false),
            R::Ok
        );
        callplus_event_free(request);
        let result = wait_for(alice, callplus_event_type::ChangeMediaTypeResult);
        assert_eq!(callplus_event_change_result(result), callplus_change_media_type_result::Rejected);
        callplus_event_free(result);
        callplus_string_free(tx);

        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(alice, callplus_string_data(call_id), &mut info), R::Ok);
        assert_eq!(text(callplus_call_info_call_id(info)), id);
        assert!(callplus_call_info_version(info) > 0);
        callplus_call_info_free(info);

        assert_eq!(callplus_client_hangup(bob, null()), R::Ok);
        let ended = wait_for(alice, callplus_event_type::CallEnded);
        assert_eq!(callplus_event_reason(ended), callplus_end_reason::RemoteHangup);
        assert_eq!(text(callplus_end_reason_name(callplus_event_reason(ended) as u32)), "REMOTE_HANGUP");
        callplus_event_free(ended);
        let record = wait_for(alice, callplus_event_type::ReceivedCallRecord);
        let r = callplus_event_record(record);
        assert_eq!(text(callplus_call_record_call_id(r)), id);
        assert_eq!(callplus_call_record_direction(r), callplus_direction::Outgoing);
        assert_eq!(callplus_call_record_end_reason(r), callplus_end_reason::RemoteHangup);
        assert_eq!(callplus_call_info_participant_count(callplus_call_record_call(r)), 2);
        callplus_event_free(record);
        let summary = wait_for(alice, callplus_event_type::SummaryMessage);
        let m = callplus_event_summary(summary);
        assert_eq!(text(callplus_call_summary_peer(m)), "bob");
        assert_eq!(callplus_call_summary_direction(m), callplus_direction::Outgoing);
        callplus_event_free(summary);

        let mut calls = null_mut();
        assert_eq!(callplus_client_get_available_calls(alice, &mut calls), R::Ok);
        assert_eq!(callplus_call_info_list_len(calls), 0);
        callplus_call_info_list_free(calls);
        let ids = [callplus_string_data(call_id)];
        assert_eq!(callplus_client_delete_call_records(alice, ids.as_ptr(), 1), R::Ok);
        assert_eq!(callplus_client_delete_all_call_records(bob), R::Ok);

        callplus_string_free(call_id);
        callplus_client_free(alice);
        callplus_client_free(bob);
    }
}

/// What the callback test's callback records.
struct Seen {
    count: AtomicUsize,
    kinds: Mutex<Vec<callplus_event_type>>,
    /// The client, so the callback can answer (a blocking call from the callback thread).
    client: AtomicUsize,
    accepted: Mutex<Option<callplus_result>>,
}

/// Locks, ignoring poison (a panic must never unwind through the C callback).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

unsafe extern "C" fn on_event(user_data: *mut c_void, event: *const callplus_event) {
    let seen = unsafe { &*user_data.cast::<Seen>() };
    let kind = unsafe { callplus_event_kind(event) };
    lock(&seen.kinds).push(kind);
    if kind == callplus_event_type::ReceivedCall {
        let client = seen.client.load(Ordering::SeqCst) as *const callplus_client;
        let r = unsafe { callplus_client_accept(client, callplus_event_call_id(event)) };
        *lock(&seen.accepted) = Some(r);
    }
    seen.count.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn callbacks_deliver_events_and_may_call_back_in() {
    let server = TestServer::start();
    let alice = server.connect("alice");
    let bob = server.connect("bob");
    let seen = Box::new(Seen {
        count: AtomicUsize::new(0),
        kinds: Mutex::new(Vec::new()),
        client: AtomicUsize::new(bob as usize),
        accepted: Mutex::new(None),
    });
    let user_data = (&*seen as *const Seen).cast_mut().cast::<c_void>();
    unsafe {
        use callplus_result as R;
        assert_eq!(callplus_client_set_event_callback(bob, Some(on_event), user_data), R::Ok);
        let mut e = sentinel::<callplus_event>();
        assert_eq!(callplus_client_poll_event(bob, 0, &mut e), R::InvalidState);
        assert_eq!(e, sentinel());

        let mut call_id = null_mut();
        let callees = [c"bob".as_ptr()];
        assert_eq!(callplus_client_start_call(alice, callees.as_ptr(), 1, 1, 1, null(), &mut call_id), R::Ok);
        callplus_event_free(wait_for(alice, callplus_event_type::CallConnected));
        // The accept's answer may reach the callback just after alice's event.
        let deadline = Instant::now() + Duration::from_secs(10);
        let accepted = loop {
            if let Some(r) = *lock(&seen.accepted) {
                break r;
            }
            assert!(Instant::now() < deadline, "the callback did not accept");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(accepted, R::Ok);

        // Removing the callback waits for a running invocation; afterwards nothing calls it.
        assert_eq!(callplus_client_set_event_callback(bob, None, null_mut()), R::Ok);
        let count = seen.count.load(Ordering::SeqCst);
        assert!(lock(&seen.kinds).contains(&callplus_event_type::ReceivedCall));
        assert_eq!(callplus_client_hangup(alice, null()), R::Ok);
        // Bob's events queue up for polling again.
        callplus_event_free(wait_for(bob, callplus_event_type::CallEnded));
        assert_eq!(seen.count.load(Ordering::SeqCst), count);

        // Freeing a client with a callback installed stops it cleanly.
        assert_eq!(callplus_client_set_event_callback(bob, Some(on_event), user_data), R::Ok);
        callplus_string_free(call_id);
        callplus_client_free(alice);
        callplus_client_free(bob);
    }
    drop(seen);
}

/// Frees its client from inside the callback, on the first event.
unsafe extern "C" fn free_in_callback(user_data: *mut c_void, _event: *const callplus_event) {
    let slot = unsafe { &*user_data.cast::<AtomicUsize>() };
    let client = slot.swap(0, Ordering::SeqCst) as *mut callplus_client;
    if !client.is_null() {
        unsafe { callplus_client_free(client) };
    }
}

#[test]
fn a_client_may_be_freed_from_its_callback() {
    let server = TestServer::start();
    let bob = server.connect("bob");
    // The dispatcher thread may still be returning from the callback after the slot is
    // cleared, so the slot lives for the rest of the process.
    let slot: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(bob as usize)));
    let user_data = (slot as *const AtomicUsize).cast_mut().cast::<c_void>();
    unsafe {
        // Bob's first event (his connection state, queued since connect) frees him.
        assert_eq!(
            callplus_client_set_event_callback(bob, Some(free_in_callback), user_data),
            callplus_result::Ok
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline, "the callback did not run");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn freeing_inside_a_runtime_does_not_panic() {
    let server = TestServer::start();
    let alice = server.connect("alice") as usize;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move { unsafe { callplus_client_free(alice as *mut callplus_client) } });
}

#[test]
fn start_call_options_reach_the_call() {
    let server = TestServer::start();
    let alice = server.connect("alice");
    let bob = server.connect("bob");
    unsafe {
        use callplus_result as R;
        let callees = [c"bob".as_ptr()];
        let options = callplus_call_options {
            extra: c"with options".as_ptr(),
            ring_timeout_ms: 300,
            push_title: c"Incoming call".as_ptr(),
            push_content: null(),
            push_custom_data: null(),
            disable_push: false,
            push_template_id: null(),
            push_ios: null(),
            push_android: null(),
        };
        let (mut call_id, mut busy) = (sentinel(), sentinel());
        let bad = callplus_call_options { ring_timeout_ms: -5, ..options };
        assert_eq!(
            callplus_client_start_call_with_options(
                alice,
                callees.as_ptr(),
                1,
                1,
                1,
                &bad,
                &mut call_id,
                &mut busy
            ),
            R::ParamError
        );
        assert_eq!((call_id, busy), (sentinel(), sentinel()), "no output on failure");

        // NULL for the busy callees: not wanted.
        let mut call_id = null_mut();
        assert_eq!(
            callplus_client_start_call_with_options(
                alice,
                callees.as_ptr(),
                1,
                1,
                2,
                &options,
                &mut call_id,
                null_mut()
            ),
            R::Ok
        );
        let id = text(callplus_string_data(call_id));
        let incoming = wait_for(bob, callplus_event_type::ReceivedCall);
        assert_eq!(text(callplus_event_call_id(incoming)), id);
        assert_eq!(text(callplus_event_extra(incoming)), "with options");
        let session = callplus_event_session(incoming);
        assert_eq!(callplus_call_session_media_type(session), callplus_media_type::AudioVideo);
        callplus_event_free(incoming);

        // Nobody answers: the 300 ms ring timeout of this call ends it on both sides.
        let ended = wait_for(alice, callplus_event_type::CallEnded);
        assert_eq!(text(callplus_event_call_id(ended)), id);
        assert_eq!(callplus_event_reason(ended), callplus_end_reason::RemoteNoResponse);
        callplus_event_free(ended);
        let ended = wait_for(bob, callplus_event_type::CallEnded);
        assert_eq!(callplus_event_reason(ended), callplus_end_reason::NoResponse);
        callplus_event_free(ended);
        callplus_string_free(call_id);

        // NULL options are the defaults; nobody is busy.
        let (mut second, mut busy) = (null_mut(), null_mut());
        assert_eq!(
            callplus_client_start_call_with_options(
                alice,
                callees.as_ptr(),
                1,
                1,
                1,
                null(),
                &mut second,
                &mut busy
            ),
            R::Ok
        );
        assert_eq!(callplus_string_list_len(busy), 0);
        callplus_string_list_free(busy);
        callplus_event_free(wait_for(bob, callplus_event_type::ReceivedCall));
        assert_eq!(callplus_client_accept(bob, callplus_string_data(second)), R::Ok);
        callplus_event_free(wait_for(alice, callplus_event_type::CallConnected));

        // Bob is in that call now: a third caller is told so (and bob still rings).
        let carol = server.connect("carol");
        let (mut third, mut busy) = (null_mut(), null_mut());
        assert_eq!(
            callplus_client_start_call_with_options(
                carol,
                callees.as_ptr(),
                1,
                1,
                1,
                null(),
                &mut third,
                &mut busy
            ),
            R::Ok
        );
        assert_eq!(callplus_string_list_len(busy), 1);
        assert_eq!(text(callplus_string_list_get(busy, 0)), "bob");
        callplus_string_list_free(busy);
        let waiting = wait_for(bob, callplus_event_type::ReceivedCall);
        assert_eq!(text(callplus_event_call_id(waiting)), text(callplus_string_data(third)));
        callplus_event_free(waiting);
        // Carol cancels with settings for the "call cancelled" push; a hangup's options carry
        // push settings only.
        let stray = callplus_call_options { extra: c"x".as_ptr(), ..options };
        assert_eq!(
            callplus_client_hangup_with_options(carol, callplus_string_data(third), &stray),
            R::ParamError
        );
        let push = callplus_call_options {
            extra: null(),
            ring_timeout_ms: 0,
            push_title: c"Missed call".as_ptr(),
            ..options
        };
        assert_eq!(callplus_client_hangup_with_options(carol, callplus_string_data(third), &push), R::Ok);
        let cancelled = wait_for(bob, callplus_event_type::CallEnded);
        assert_eq!(text(callplus_event_call_id(cancelled)), text(callplus_string_data(third)));
        assert_eq!(callplus_event_reason(cancelled), callplus_end_reason::RemoteCancel);
        callplus_event_free(cancelled);
        assert_eq!(callplus_client_hangup(alice, callplus_string_data(second)), R::Ok);
        callplus_string_free(second);
        callplus_string_free(third);
        callplus_client_free(carol);
        callplus_client_free(alice);
        callplus_client_free(bob);
    }
}

// ----- group (MULTI) calls ----------------------------------------------------------------------

/// A C string list of `ids` and the pointer array C would pass.
fn c_list(ids: &[&str]) -> (Vec<CString>, Vec<*const c_char>) {
    let owned: Vec<CString> = ids.iter().map(|id| CString::new(*id).unwrap()).collect();
    let ptrs = owned.iter().map(|s| s.as_ptr()).collect();
    (owned, ptrs)
}

/// The users an event lists (`callplus_event_user_count` / `_user_at`); the index after the
/// last one reads as NULL.
fn event_users(event: *const callplus_event) -> Vec<String> {
    let n = unsafe { callplus_event_user_count(event) };
    assert!(unsafe { callplus_event_user_at(event, n) }.is_null());
    (0..n).map(|i| text(unsafe { callplus_event_user_at(event, i) })).collect()
}

/// The strings of a `callplus_string_list`.
fn list_strings(list: *const callplus_string_list) -> Vec<String> {
    let n = unsafe { callplus_string_list_len(list) };
    assert!(unsafe { callplus_string_list_get(list, n) }.is_null());
    (0..n).map(|i| text(unsafe { callplus_string_list_get(list, i) })).collect()
}

type Parties = Vec<(String, callplus_participant_state, callplus_end_reason)>;

/// Every participant of a session with its state and end reason, read by index.
fn session_parties(s: *const callplus_call_session) -> Parties {
    let n = unsafe { callplus_call_session_participant_count(s) };
    assert!(unsafe { callplus_call_session_participant_user_id(s, n) }.is_null());
    assert_eq!(unsafe { callplus_call_session_participant_state(s, n) }, callplus_participant_state::None);
    (0..n)
        .map(|i| unsafe {
            (
                text(callplus_call_session_participant_user_id(s, i)),
                callplus_call_session_participant_state(s, i),
                callplus_call_session_participant_reason(s, i),
            )
        })
        .collect()
}

/// Every participant of a call snapshot with its state and end reason, read by index.
fn info_parties(c: *const callplus_call_info) -> Parties {
    let n = unsafe { callplus_call_info_participant_count(c) };
    assert!(unsafe { callplus_call_info_participant_user_id(c, n) }.is_null());
    (0..n)
        .map(|i| unsafe {
            (
                text(callplus_call_info_participant_user_id(c, i)),
                callplus_call_info_participant_state(c, i),
                callplus_call_info_participant_reason(c, i),
            )
        })
        .collect()
}

fn parties(list: &[(&str, callplus_participant_state, callplus_end_reason)]) -> Parties {
    list.iter().map(|&(u, s, r)| (u.to_owned(), s, r)).collect()
}

/// Waits for REMOTE_USER_STATE_CHANGED of `user` to `state` and returns its reason.
fn wait_state(
    client: *const callplus_client,
    call_id: &str,
    user: &str,
    state: callplus_participant_state,
) -> callplus_end_reason {
    let event = wait_until(client, callplus_event_type::RemoteUserStateChanged, |e| unsafe {
        text(callplus_event_user_id(e)) == user && callplus_event_participant_state(e) == state
    });
    let reason = unsafe {
        assert_eq!(text(callplus_event_call_id(event)), call_id);
        callplus_event_reason(event)
    };
    unsafe { callplus_event_free(event) };
    reason
}

/// The client's current call, owned.
fn current(client: *const callplus_client) -> *mut callplus_call_session {
    let mut session = null_mut();
    assert_eq!(unsafe { callplus_client_current_call(client, &mut session) }, callplus_result::Ok);
    session
}

/// The calls `callplus_client_get_available_calls` lists: id and participants of each.
fn available(client: *const callplus_client) -> Vec<(String, callplus_call_type, Parties)> {
    let mut list = null_mut();
    assert_eq!(unsafe { callplus_client_get_available_calls(client, &mut list) }, callplus_result::Ok);
    let n = unsafe { callplus_call_info_list_len(list) };
    assert!(unsafe { callplus_call_info_list_get(list, n) }.is_null());
    let calls = (0..n)
        .map(|i| unsafe {
            let c = callplus_call_info_list_get(list, i);
            assert_eq!(callplus_call_info_ended_at_ms(c), 0, "an available call has not ended");
            (text(callplus_call_info_call_id(c)), callplus_call_info_call_type(c), info_parties(c))
        })
        .collect();
    unsafe { callplus_call_info_list_free(list) };
    calls
}

/// Waits for `client`'s record of `call_id` and checks it: a MULTI call of `participants`
/// people, owned by `owner`, with this direction and end reason.
fn expect_group_record(
    client: *const callplus_client,
    call_id: &str,
    owner: &str,
    participants: usize,
    direction: callplus_direction,
    reason: callplus_end_reason,
) {
    let event = wait_until(client, callplus_event_type::ReceivedCallRecord, |e| unsafe {
        text(callplus_event_call_id(e)) == call_id
    });
    unsafe {
        let r = callplus_event_record(event);
        assert_eq!(text(callplus_call_record_call_id(r)), call_id);
        assert_eq!(text(callplus_call_record_owner(r)), owner);
        assert_eq!(callplus_call_record_direction(r), direction, "{owner}'s direction");
        assert_eq!(callplus_call_record_end_reason(r), reason, "{owner}'s end reason");
        let call = callplus_call_record_call(r);
        assert_eq!(callplus_call_info_call_type(call), callplus_call_type::Multi);
        assert_eq!(callplus_call_info_participant_count(call), participants);
        assert!(callplus_call_info_ended_at_ms(call) > 0);
        callplus_event_free(event);
    }
}

#[test]
fn a_group_call_through_the_c_api() {
    use callplus_end_reason as Why;
    use callplus_event_type as E;
    use callplus_participant_state as P;
    use callplus_result as R;

    let server = TestServer::start();
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|u| server.connect(u));
    unsafe {
        // alice rings three users at once.
        let (_keep, callees) = c_list(&["bob", "carol", "dave"]);
        let mut call_id = null_mut();
        assert_eq!(
            callplus_client_start_call(alice, callees.as_ptr(), 3, 2, 1, c"group".as_ptr(), &mut call_id),
            R::Ok
        );
        let id = text(callplus_string_data(call_id));
        let id_ptr = callplus_string_data(call_id);
        for callee in [bob, carol, dave] {
            let incoming = wait_for(callee, E::ReceivedCall);
            assert_eq!(text(callplus_event_call_id(incoming)), id);
            assert_eq!(text(callplus_event_inviter(incoming)), "alice");
            assert_eq!(text(callplus_event_extra(incoming)), "group");
            assert_eq!(callplus_event_call_type(incoming), callplus_call_type::Multi);
            assert_eq!(callplus_event_user_count(incoming), 0);
            let session = callplus_event_session(incoming);
            assert_eq!(callplus_call_session_call_type(session), callplus_call_type::Multi);
            assert_eq!(callplus_call_session_state(session), callplus_call_state::Incoming);
            assert_eq!(text(callplus_call_session_creator(session)), "alice");
            assert_eq!(text(callplus_call_session_inviter(session)), "alice");
            assert!(!callplus_call_session_is_outgoing(session));
            let names: Vec<String> = session_parties(session).into_iter().map(|p| p.0).collect();
            assert_eq!(names, ["alice", "bob", "carol", "dave"]);
            for (user, state, reason) in session_parties(session).into_iter().skip(1) {
                assert!(matches!(state, P::Incoming | P::Ringing), "{user} is rung: {state:?}");
                assert_eq!(reason, Why::None);
            }
            callplus_event_free(incoming);
        }

        // Two accept, one rejects; the call goes on for the others.
        assert_eq!(callplus_client_accept(bob, id_ptr), R::Ok);
        let connected = wait_for(alice, E::CallConnected);
        assert_eq!(text(callplus_event_call_id(connected)), id);
        assert_eq!(callplus_event_call_type(connected), callplus_call_type::Multi);
        assert_eq!(
            callplus_call_session_state(callplus_event_session(connected)),
            callplus_call_state::OnCall
        );
        callplus_event_free(connected);
        callplus_event_free(wait_for(bob, E::CallConnected));
        assert_eq!(callplus_client_accept(carol, id_ptr), R::Ok);
        callplus_event_free(wait_for(carol, E::CallConnected));
        assert_eq!(wait_state(alice, &id, "carol", P::OnCall), Why::None);
        assert_eq!(wait_state(bob, &id, "carol", P::OnCall), Why::None);
        assert_eq!(callplus_client_hangup(dave, id_ptr), R::Ok);
        let ended = wait_for(dave, E::CallEnded);
        assert_eq!(text(callplus_event_call_id(ended)), id);
        assert_eq!(callplus_event_reason(ended), Why::Reject);
        callplus_event_free(ended);
        for c in [alice, bob, carol] {
            assert_eq!(wait_state(c, &id, "dave", P::Ended), Why::Reject);
        }
        // Invited counts: the call stays available to dave, as it is to those in it.
        for c in [alice, dave] {
            let listed: Vec<String> = available(c).into_iter().map(|(call, ..)| call).collect();
            assert_eq!(listed, std::slice::from_ref(&id));
        }
        let session = current(alice);
        assert_eq!(text(callplus_call_session_call_id(session)), id);
        assert_eq!(callplus_call_session_call_type(session), callplus_call_type::Multi);
        assert_eq!(callplus_call_session_state(session), callplus_call_state::OnCall);
        assert!(callplus_call_session_is_outgoing(session));
        let expected = parties(&[
            ("alice", P::OnCall, Why::None),
            ("bob", P::OnCall, Why::None),
            ("carol", P::OnCall, Why::None),
            ("dave", P::Ended, Why::Reject),
        ]);
        // The local session and the server's snapshot agree, the creator's own entry included.
        assert_eq!(session_parties(session), expected);
        callplus_call_session_free(session);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(alice, id_ptr, &mut info), R::Ok);
        assert_eq!(callplus_call_info_call_type(info), callplus_call_type::Multi);
        assert_eq!(info_parties(info), expected);
        callplus_call_info_free(info);

        // bob (not the creator) invites dave back from inside the call; nobody is busy.
        let (_keep, again) = c_list(&["dave"]);
        let mut busy = null_mut();
        assert_eq!(callplus_client_invite(bob, again.as_ptr(), 1, c"come back".as_ptr(), &mut busy), R::Ok);
        assert_eq!(list_strings(busy), Vec::<String>::new());
        callplus_string_list_free(busy);
        for c in [alice, carol] {
            let invited = wait_for(c, E::RemoteUserInvited);
            assert_eq!(text(callplus_event_call_id(invited)), id);
            assert_eq!(text(callplus_event_inviter(invited)), "bob");
            assert_eq!(event_users(invited), ["dave"]);
            callplus_event_free(invited);
        }
        let incoming = wait_for(dave, E::ReceivedCall);
        assert_eq!(text(callplus_event_call_id(incoming)), id);
        assert_eq!(text(callplus_event_inviter(incoming)), "bob");
        assert_eq!(text(callplus_event_extra(incoming)), "come back");
        let session = callplus_event_session(incoming);
        assert_eq!(callplus_call_session_state(session), callplus_call_state::Incoming);
        assert_eq!(text(callplus_call_session_inviter(session)), "bob");
        let dave_state = session_parties(session).into_iter().find(|p| p.0 == "dave").unwrap();
        assert!(matches!(dave_state.1, P::Incoming | P::Ringing), "dave is rung again: {dave_state:?}");
        callplus_event_free(incoming);
        assert_eq!(callplus_client_accept(dave, id_ptr), R::Ok);
        callplus_event_free(wait_for(dave, E::CallConnected));
        assert_eq!(wait_state(alice, &id, "dave", P::OnCall), Why::None);

        // carol leaves; the call goes on, and she can find it and come back.
        assert_eq!(callplus_client_hangup(carol, null()), R::Ok);
        let ended = wait_for(carol, E::CallEnded);
        assert_eq!(callplus_event_reason(ended), Why::Hangup);
        callplus_event_free(ended);
        for c in [alice, bob, dave] {
            assert_eq!(wait_state(c, &id, "carol", P::Ended), Why::Hangup);
        }
        let mut none = sentinel::<callplus_call_session>();
        assert_eq!(callplus_client_current_call(carol, &mut none), R::NotInCall);
        assert_eq!(none, sentinel());
        let listed = available(carol);
        assert_eq!(listed.len(), 1);
        let (listed_id, listed_type, listed_parties) = &listed[0];
        assert_eq!(listed_id, &id);
        assert_eq!(*listed_type, callplus_call_type::Multi);
        assert_eq!(
            listed_parties,
            &parties(&[
                ("alice", P::OnCall, Why::None),
                ("bob", P::OnCall, Why::None),
                ("carol", P::Ended, Why::Hangup),
                ("dave", P::OnCall, Why::None),
            ])
        );
        assert_eq!(callplus_client_join_call(carol, id_ptr), R::Ok);
        let back = wait_for(carol, E::CallConnected);
        assert_eq!(text(callplus_event_call_id(back)), id);
        assert_eq!(callplus_event_call_type(back), callplus_call_type::Multi);
        let session = callplus_event_session(back);
        assert_eq!(callplus_call_session_state(session), callplus_call_state::OnCall);
        assert_eq!(
            session_parties(session),
            parties(&[
                ("alice", P::OnCall, Why::None),
                ("bob", P::OnCall, Why::None),
                ("carol", P::OnCall, Why::None),
                ("dave", P::OnCall, Why::None),
            ])
        );
        callplus_event_free(back);
        for c in [alice, bob, dave] {
            assert_eq!(wait_state(c, &id, "carol", P::OnCall), Why::None);
        }
        let session = current(carol);
        assert_eq!(text(callplus_call_session_call_id(session)), id);
        callplus_call_session_free(session);

        // Leaving one by one: with two connected the call lasts, with one it ends.
        assert_eq!(callplus_client_hangup(alice, null()), R::Ok);
        assert_eq!(wait_state(carol, &id, "alice", P::Ended), Why::Hangup);
        assert_eq!(callplus_client_hangup(bob, null()), R::Ok);
        assert_eq!(wait_state(carol, &id, "bob", P::Ended), Why::Hangup);
        let session = current(carol);
        assert_eq!(callplus_call_session_state(session), callplus_call_state::OnCall);
        callplus_call_session_free(session);
        assert_eq!(callplus_client_hangup(dave, null()), R::Ok);
        let ended = wait_for(carol, E::CallEnded);
        assert_eq!(text(callplus_event_call_id(ended)), id);
        assert_eq!(callplus_event_reason(ended), Why::RemoteHangup);
        let session = callplus_event_session(ended);
        assert_eq!(callplus_call_session_state(session), callplus_call_state::Ended);
        assert_eq!(callplus_call_session_end_reason(session), Why::RemoteHangup);
        assert!(callplus_call_session_ended_at_ms(session) > 0);
        callplus_event_free(ended);

        // A record for everyone, and the call is no longer available.
        expect_group_record(alice, &id, "alice", 4, callplus_direction::Outgoing, Why::Hangup);
        expect_group_record(bob, &id, "bob", 4, callplus_direction::Incoming, Why::Hangup);
        expect_group_record(carol, &id, "carol", 4, callplus_direction::Incoming, Why::RemoteHangup);
        expect_group_record(dave, &id, "dave", 4, callplus_direction::Incoming, Why::Hangup);
        for c in [alice, bob, carol, dave] {
            assert!(available(c).is_empty());
        }

        callplus_string_free(call_id);
        for c in [alice, bob, carol, dave] {
            callplus_client_free(c);
        }
    }
}

#[test]
fn an_invite_turns_a_single_call_multi_and_reports_busy_users() {
    use callplus_end_reason as Why;
    use callplus_event_type as E;
    use callplus_participant_state as P;
    use callplus_result as R;

    let server = TestServer::start();
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|u| server.connect(u));
    unsafe {
        // carol and dave are busy with each other.
        let mut other = null_mut();
        let to_dave = [c"dave".as_ptr()];
        assert_eq!(callplus_client_start_call(carol, to_dave.as_ptr(), 1, 1, 1, null(), &mut other), R::Ok);
        let other_id = text(callplus_string_data(other));
        callplus_event_free(wait_for(dave, E::ReceivedCall));
        assert_eq!(callplus_client_accept(dave, callplus_string_data(other)), R::Ok);
        callplus_event_free(wait_for(carol, E::CallConnected));

        // alice and bob in a SINGLE call.
        let mut call_id = null_mut();
        let to_bob = [c"bob".as_ptr()];
        assert_eq!(callplus_client_start_call(alice, to_bob.as_ptr(), 1, 1, 1, null(), &mut call_id), R::Ok);
        let id = text(callplus_string_data(call_id));
        let id_ptr = callplus_string_data(call_id);
        callplus_event_free(wait_for(bob, E::ReceivedCall));
        assert_eq!(callplus_client_accept(bob, id_ptr), R::Ok);
        callplus_event_free(wait_for(alice, E::CallConnected));

        // alice invites the two busy users and erin, who is not connected.
        let (_keep, invitees) = c_list(&["carol", "dave", "erin"]);
        // With options: the extra, and push settings for erin (no device); a ring timeout means
        // nothing to an invitation.
        let options = callplus_call_options {
            extra: c"join us".as_ptr(),
            ring_timeout_ms: 0,
            push_title: c"alice invites you".as_ptr(),
            push_content: null(),
            push_custom_data: null(),
            disable_push: false,
            push_template_id: null(),
            push_ios: null(),
            push_android: null(),
        };
        let mut busy = sentinel();
        let timed = callplus_call_options { ring_timeout_ms: 1_000, ..options };
        assert_eq!(
            callplus_client_invite_with_options(alice, invitees.as_ptr(), 3, &timed, &mut busy),
            R::ParamError
        );
        assert_eq!(busy, sentinel(), "no output on failure");
        assert_eq!(
            callplus_client_invite_with_options(alice, invitees.as_ptr(), 3, &options, &mut busy),
            R::Ok
        );
        let mut busy_users = list_strings(busy);
        busy_users.sort();
        assert_eq!(busy_users, ["carol", "dave"]);
        callplus_string_list_free(busy);

        // Both sides learn that the call is MULTI now; bob learns who was invited.
        for c in [alice, bob] {
            let changed = wait_for(c, E::CallTypeChanged);
            assert_eq!(text(callplus_event_call_id(changed)), id);
            assert_eq!(callplus_event_call_type(changed), callplus_call_type::Multi);
            callplus_event_free(changed);
        }
        let invited = wait_for(bob, E::RemoteUserInvited);
        assert_eq!(text(callplus_event_call_id(invited)), id);
        assert_eq!(text(callplus_event_inviter(invited)), "alice");
        assert_eq!(event_users(invited), ["carol", "dave", "erin"]);
        callplus_event_free(invited);
        let session = current(bob);
        assert_eq!(callplus_call_session_call_type(session), callplus_call_type::Multi);
        callplus_call_session_free(session);
        // alice learns the invitees from the same event, which comes after the type change.
        let invited = wait_for(alice, E::RemoteUserInvited);
        assert_eq!(event_users(invited), ["carol", "dave", "erin"]);
        callplus_event_free(invited);
        let session = current(alice);
        assert_eq!(callplus_call_session_call_type(session), callplus_call_type::Multi);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(alice, id_ptr, &mut info), R::Ok);
        assert_eq!(callplus_call_info_call_type(info), callplus_call_type::Multi);
        let on_call = parties(&[("alice", P::OnCall, Why::None), ("bob", P::OnCall, Why::None)]);
        for states in [session_parties(session), info_parties(info)] {
            let names: Vec<&str> = states.iter().map(|p| p.0.as_str()).collect();
            assert_eq!(names, ["alice", "bob", "carol", "dave", "erin"]);
            assert_eq!(states[..2], on_call[..]);
            for (user, state, _) in &states[2..] {
                assert!(matches!(state, P::Incoming | P::Ringing), "{user} is rung: {state:?}");
            }
        }
        callplus_call_info_free(info);
        callplus_call_session_free(session);

        // The busy users are rung all the same (call waiting).
        for c in [carol, dave] {
            let incoming = wait_until(c, E::ReceivedCall, |e| text(callplus_event_call_id(e)) == id);
            assert_eq!(text(callplus_event_inviter(incoming)), "alice");
            assert_eq!(text(callplus_event_extra(incoming)), "join us");
            assert_eq!(callplus_event_call_type(incoming), callplus_call_type::Multi);
            assert_eq!(callplus_call_session_participant_count(callplus_event_session(incoming)), 5);
            callplus_event_free(incoming);
        }

        // carol takes it (ending her call with dave), dave declines.
        assert_eq!(callplus_client_accept(carol, id_ptr), R::Ok);
        let left = wait_until(carol, E::CallEnded, |e| text(callplus_event_call_id(e)) == other_id);
        assert_eq!(callplus_event_reason(left), Why::AcceptedAnotherCall);
        callplus_event_free(left);
        callplus_event_free(wait_for(carol, E::CallConnected));
        let dropped = wait_until(dave, E::CallEnded, |e| text(callplus_event_call_id(e)) == other_id);
        assert_eq!(callplus_event_reason(dropped), Why::RemoteAcceptedAnotherCall);
        callplus_event_free(dropped);
        assert_eq!(wait_state(alice, &id, "carol", P::OnCall), Why::None);
        assert_eq!(callplus_client_hangup(dave, id_ptr), R::Ok);
        for c in [alice, bob, carol] {
            assert_eq!(wait_state(c, &id, "dave", P::Ended), Why::Reject);
        }

        // alice and bob leave: carol alone is connected, but erin is still rung, so the call
        // lasts; when carol leaves too it ends, for erin as well.
        assert_eq!(callplus_client_hangup(alice, null()), R::Ok);
        assert_eq!(callplus_client_hangup(bob, null()), R::Ok);
        assert_eq!(wait_state(carol, &id, "bob", P::Ended), Why::Hangup);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(carol, id_ptr, &mut info), R::Ok);
        assert_eq!(callplus_call_info_ended_at_ms(info), 0);
        let erin = info_parties(info).into_iter().find(|p| p.0 == "erin").unwrap();
        assert!(matches!(erin.1, P::Incoming | P::Ringing), "erin is still rung: {erin:?}");
        callplus_call_info_free(info);
        assert_eq!(callplus_client_hangup(carol, null()), R::Ok);
        expect_group_record(alice, &id, "alice", 5, callplus_direction::Outgoing, Why::Hangup);
        expect_group_record(bob, &id, "bob", 5, callplus_direction::Incoming, Why::Hangup);
        expect_group_record(carol, &id, "carol", 5, callplus_direction::Incoming, Why::Hangup);
        expect_group_record(dave, &id, "dave", 5, callplus_direction::Incoming, Why::Reject);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(alice, id_ptr, &mut info), R::Ok);
        assert!(callplus_call_info_ended_at_ms(info) > 0);
        let erin = info_parties(info).into_iter().find(|p| p.0 == "erin").unwrap();
        assert_eq!(erin.1, P::Ended);
        callplus_call_info_free(info);

        callplus_string_free(other);
        callplus_string_free(call_id);
        for c in [alice, bob, carol, dave] {
            callplus_client_free(c);
        }
    }
}

#[test]
fn group_operations_refuse_bad_input() {
    use callplus_result as R;

    let server = TestServer::start();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.connect(u));
    let many: Vec<String> = (0..70).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (_keep, many) = c_list(&many);
    let mut s = sentinel::<callplus_string>();
    let mut busy = sentinel::<callplus_string_list>();
    let mut calls = sentinel::<callplus_call_info_list>();
    unsafe {
        // Group size: 32 with audio, 16 with video (the server's defaults); 64 per list.
        let start = |list: &[*const c_char], media_type, out: &mut *mut callplus_string| {
            callplus_client_start_call(alice, list.as_ptr(), list.len(), 2, media_type, null(), out)
        };
        assert_eq!(start(&many[..32], 1, &mut s), R::CallFull);
        assert_eq!(start(&many[..16], 2, &mut s), R::CallFull);
        assert_eq!(start(&many[..65], 1, &mut s), R::UserListInvalid);
        let (_keep, twice) = c_list(&["bob", "bob"]);
        assert_eq!(start(&twice, 1, &mut s), R::UserListInvalid);
        let (_keep, me) = c_list(&["bob", "alice"]);
        assert_eq!(start(&me, 1, &mut s), R::UserListInvalid);
        assert_eq!(s, sentinel());

        // get_available_calls.
        assert_eq!(callplus_client_get_available_calls(alice, null_mut()), R::NullParameter);
        assert_eq!(callplus_client_get_available_calls(alice, &mut calls), R::Ok);
        assert_eq!(callplus_call_info_list_len(calls), 0);
        assert!(callplus_call_info_list_get(calls, 0).is_null());
        callplus_call_info_list_free(calls);

        // join_call with no call to join.
        assert_eq!(callplus_client_join_call(alice, null()), R::NullParameter);
        assert_eq!(callplus_client_join_call(alice, not_utf8()), R::ParamError);
        assert_eq!(callplus_client_join_call(alice, c"".as_ptr()), R::CallIdInvalid);
        assert_eq!(callplus_client_join_call(alice, c"bad id!".as_ptr()), R::CallIdInvalid);
        assert_eq!(callplus_client_join_call(alice, c"unknown-call".as_ptr()), R::CallNotFound);

        // A SINGLE call: it cannot be joined, and strangers do not learn it exists.
        let mut call_id = null_mut();
        let to_bob = [c"bob".as_ptr()];
        assert_eq!(callplus_client_start_call(alice, to_bob.as_ptr(), 1, 1, 1, null(), &mut call_id), R::Ok);
        let id_ptr = callplus_string_data(call_id);
        callplus_event_free(wait_for(bob, callplus_event_type::ReceivedCall));
        assert_eq!(callplus_client_join_call(bob, id_ptr), R::SingleCallNotSupportMultiPerson);
        assert_eq!(callplus_client_join_call(carol, id_ptr), R::CallNotFound);
        assert_eq!(callplus_client_join_call(alice, id_ptr), R::SessionExist);
        assert_eq!(callplus_client_accept(bob, id_ptr), R::Ok);
        callplus_event_free(wait_for(alice, callplus_event_type::CallConnected));
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(alice, id_ptr, &mut info), R::Ok);
        let version = callplus_call_info_version(info);
        callplus_call_info_free(info);

        // invite: every argument checked; nothing is sent for a refused list.
        let invite = |list: *const *const c_char, n: usize, out: *mut *mut callplus_string_list| {
            callplus_client_invite(alice, list, n, null(), out)
        };
        let carol_only = [c"carol".as_ptr()];
        assert_eq!(invite(null(), 1, &mut busy), R::NullParameter);
        assert_eq!(invite(null(), 0, &mut busy), R::UserListInvalid);
        assert_eq!(invite(carol_only.as_ptr(), 0, &mut busy), R::UserListInvalid);
        assert_eq!(invite(carol_only.as_ptr(), 1, null_mut()), R::NullParameter);
        let with_null = [c"carol".as_ptr(), null()];
        assert_eq!(invite(with_null.as_ptr(), 2, &mut busy), R::NullParameter);
        let bad_utf8 = [not_utf8()];
        assert_eq!(invite(bad_utf8.as_ptr(), 1, &mut busy), R::ParamError);
        let bad_id = [c"not an id".as_ptr()];
        assert_eq!(invite(bad_id.as_ptr(), 1, &mut busy), R::ParamError);
        let empty_id = [c"".as_ptr()];
        assert_eq!(invite(empty_id.as_ptr(), 1, &mut busy), R::ParamError);
        assert_eq!(invite(twice.as_ptr(), 2, &mut busy), R::UserListInvalid);
        let myself = [c"alice".as_ptr()];
        assert_eq!(invite(myself.as_ptr(), 1, &mut busy), R::UserListInvalid);
        // 2 in the call + 31 = 33 > 32; 65 is over the list limit; a garbage count is refused
        // before anything is read.
        assert_eq!(invite(many.as_ptr(), 31, &mut busy), R::CallFull);
        assert_eq!(invite(many.as_ptr(), 65, &mut busy), R::UserListInvalid);
        assert_eq!(invite(many.as_ptr(), usize::MAX, &mut busy), R::ParamError);
        let long_extra = CString::new("x".repeat(4097)).unwrap();
        assert_eq!(
            callplus_client_invite(alice, carol_only.as_ptr(), 1, long_extra.as_ptr(), &mut busy),
            R::ParamError
        );
        assert_eq!(
            callplus_client_invite(alice, carol_only.as_ptr(), 1, not_utf8(), &mut busy),
            R::ParamError
        );
        assert_eq!(callplus_client_invite(carol, to_bob.as_ptr(), 1, null(), &mut busy), R::NotInCall);
        assert_eq!(busy, sentinel());

        // None of that touched the call: still SINGLE, two participants, same version.
        let session = current(alice);
        assert_eq!(callplus_call_session_call_type(session), callplus_call_type::Single);
        assert_eq!(callplus_call_session_participant_count(session), 2);
        callplus_call_session_free(session);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(bob, id_ptr, &mut info), R::Ok);
        assert_eq!(callplus_call_info_call_type(info), callplus_call_type::Single);
        assert_eq!(callplus_call_info_version(info), version);
        callplus_call_info_free(info);

        // An ended call cannot be joined.
        assert_eq!(callplus_client_hangup(bob, null()), R::Ok);
        callplus_event_free(wait_for(alice, callplus_event_type::CallEnded));
        assert_eq!(callplus_client_join_call(alice, id_ptr), R::CallEnded);
        assert_eq!(callplus_client_get_available_calls(carol, &mut calls), R::Ok);
        assert_eq!(callplus_call_info_list_len(calls), 0);
        callplus_call_info_list_free(calls);

        callplus_string_free(call_id);
        for c in [alice, bob, carol] {
            callplus_client_free(c);
        }
    }
}

// ----- push settings, the participants' media state, talk time ---------------------------------

/// A push webhook on 127.0.0.1 (plain HTTP/1.1): answers every POST with 200 and hands its body
/// to the test.
struct Webhook {
    url: String,
    addr: SocketAddr,
    bodies: mpsc::Receiver<String>,
    stop: Arc<AtomicBool>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, bodies) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || serve_posts(&stream, &tx));
            }
        });
        Webhook { url: format!("http://{addr}/push"), addr, bodies, stop }
    }

    /// The body of the next POST (within 10 s).
    fn next(&self) -> String {
        self.bodies.recv_timeout(Duration::from_secs(10)).expect("a push in time")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers the requests of one (keep-alive) connection until it closes.
fn serve_posts(stream: &TcpStream, bodies: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut writer = stream;
        if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
        let _ = bodies.send(String::from_utf8_lossy(&body).into_owned());
    }
}

/// Checks a webhook body: its kind, callee and call, and push settings exactly `expected` (as
/// the server writes them).
fn assert_push(body: &str, kind: &str, callee: &str, call_id: &str, expected: &PushConfig) {
    for field in [
        format!(r#""kind":"{kind}""#),
        format!(r#""callee":"{callee}""#),
        format!(r#""call_id":"{call_id}""#),
        format!(r#""push_config":{}"#, push_config_json(expected)),
    ] {
        assert!(body.contains(&field), "{field} is not in {body}");
    }
}

/// What `{0}` makes in C.
fn no_options() -> callplus_call_options {
    callplus_call_options {
        extra: null(),
        ring_timeout_ms: 0,
        push_title: null(),
        push_content: null(),
        push_custom_data: null(),
        disable_push: false,
        push_template_id: null(),
        push_ios: null(),
        push_android: null(),
    }
}

/// What `{0}` makes in C.
fn no_ios() -> callplus_ios_push {
    callplus_ios_push {
        thread_id: null(),
        apns_collapse_id: null(),
        category: null(),
        rich_media_uri: null(),
        voip: false,
    }
}

/// What `{0}` makes in C.
fn no_android() -> callplus_android_push {
    callplus_android_push { channel_id: null(), collapse_key: null(), vendor: null(), vendor_len: 0 }
}

#[test]
fn every_push_setting_from_c_reaches_the_webhook() {
    use callplus_result as R;

    let webhook = Webhook::start();
    let url = webhook.url.clone();
    let server = TestServer::start_with(|builder| builder.push_webhook(url));
    let [alice, carol] = ["alice", "carol"].map(|u| server.connect(u));
    let to_bob = [c"bob".as_ptr()];
    unsafe {
        let start = |options: &callplus_call_options, call_id: &mut *mut callplus_string| {
            callplus_client_start_call_with_options(
                alice,
                to_bob.as_ptr(),
                1,
                1,
                1,
                options,
                call_id,
                null_mut(),
            )
        };

        // Too large or not UTF-8 in a new field: the codes of the older fields, nothing sent.
        let huge = CString::new("x".repeat(9_000)).unwrap();
        let huge_ios = callplus_ios_push { thread_id: huge.as_ptr(), ..no_ios() };
        let huge_vendor = [callplus_push_vendor_entry { key: c"k".as_ptr(), value: huge.as_ptr() }];
        let huge_android =
            callplus_android_push { vendor: huge_vendor.as_ptr(), vendor_len: 1, ..no_android() };
        let bad_ios = callplus_ios_push { category: not_utf8(), ..no_ios() };
        let bad_android = callplus_android_push { channel_id: not_utf8(), ..no_android() };
        let null_key = [callplus_push_vendor_entry { key: null(), value: c"v".as_ptr() }];
        let null_key_android =
            callplus_android_push { vendor: null_key.as_ptr(), vendor_len: 1, ..no_android() };
        let refused = [
            (
                "an oversize title",
                callplus_call_options { push_title: huge.as_ptr(), ..no_options() },
                R::ParamError,
            ),
            (
                "an oversize template id",
                callplus_call_options { push_template_id: huge.as_ptr(), ..no_options() },
                R::ParamError,
            ),
            (
                "an oversize iOS field",
                callplus_call_options { push_ios: &huge_ios, ..no_options() },
                R::ParamError,
            ),
            (
                "an oversize vendor value",
                callplus_call_options { push_android: &huge_android, ..no_options() },
                R::ParamError,
            ),
            (
                "a non-UTF-8 title",
                callplus_call_options { push_title: not_utf8(), ..no_options() },
                R::ParamError,
            ),
            (
                "a non-UTF-8 template id",
                callplus_call_options { push_template_id: not_utf8(), ..no_options() },
                R::ParamError,
            ),
            (
                "a non-UTF-8 iOS field",
                callplus_call_options { push_ios: &bad_ios, ..no_options() },
                R::ParamError,
            ),
            (
                "a non-UTF-8 Android field",
                callplus_call_options { push_android: &bad_android, ..no_options() },
                R::ParamError,
            ),
            (
                "a NULL vendor key",
                callplus_call_options { push_android: &null_key_android, ..no_options() },
                R::NullParameter,
            ),
        ];
        for (what, options, code) in refused {
            let mut call_id = sentinel();
            assert_eq!(start(&options, &mut call_id), code, "{what}");
            assert_eq!(call_id, sentinel(), "no output for {what}");
        }

        // Every field, for bob, who has no device: the webhook gets exactly these settings.
        let ios = callplus_ios_push {
            thread_id: c"calls".as_ptr(),
            apns_collapse_id: c"call-from-alice".as_ptr(),
            category: c"INCOMING_CALL".as_ptr(),
            rich_media_uri: c"https://example.com/alice.png".as_ptr(),
            voip: true,
        };
        let vendor =
            [callplus_push_vendor_entry { key: c"huawei.importance".as_ptr(), value: c"high".as_ptr() }];
        let android = callplus_android_push {
            channel_id: c"ringing".as_ptr(),
            collapse_key: c"call-from-alice".as_ptr(),
            vendor: vendor.as_ptr(),
            vendor_len: vendor.len(),
        };
        let options = callplus_call_options {
            push_title: c"Alice is calling".as_ptr(),
            push_content: c"Tap to answer".as_ptr(),
            push_custom_data: c"{\"room\":\"42\"}".as_ptr(),
            push_template_id: c"tpl-7".as_ptr(),
            push_ios: &ios,
            push_android: &android,
            ..no_options()
        };
        let mut call_id = null_mut();
        assert_eq!(start(&options, &mut call_id), R::Ok);
        let id = text(callplus_string_data(call_id));
        let mut expected = PushConfig {
            title: "Alice is calling".into(),
            content: "Tap to answer".into(),
            custom_data: r#"{"room":"42"}"#.into(),
            template_id: "tpl-7".into(),
            ..PushConfig::default()
        };
        let e = expected.ios.insert(Default::default());
        e.thread_id = "calls".into();
        e.apns_collapse_id = "call-from-alice".into();
        e.category = "INCOMING_CALL".into();
        e.rich_media_uri = "https://example.com/alice.png".into();
        e.voip = true;
        let e = expected.android.insert(Default::default());
        e.channel_id = "ringing".into();
        e.collapse_key = "call-from-alice".into();
        e.vendor.insert("huawei.importance".into(), "high".into());
        assert_push(&webhook.next(), "invite", "bob", &id, &expected);
        // bob's delivery is PUSHED, in alice's snapshot and in the server's.
        let session = current(alice);
        assert_eq!(text(callplus_call_session_participant_user_id(session, 1)), "bob");
        assert_eq!(callplus_call_session_participant_delivery(session, 1), callplus_delivery::Pushed);
        callplus_call_session_free(session);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(alice, callplus_string_data(call_id), &mut info), R::Ok);
        assert_eq!(callplus_call_info_participant_delivery(info, 1), callplus_delivery::Pushed);
        callplus_call_info_free(info);

        // alice cancels: the cancellation carries the hangup's own settings.
        let missed_ios = callplus_ios_push { thread_id: c"missed".as_ptr(), ..no_ios() };
        let cancel = callplus_call_options {
            push_title: c"Missed call from Alice".as_ptr(),
            push_template_id: c"tpl-missed".as_ptr(),
            push_ios: &missed_ios,
            ..no_options()
        };
        assert_eq!(callplus_client_hangup_with_options(alice, callplus_string_data(call_id), &cancel), R::Ok);
        let mut expected = PushConfig {
            title: "Missed call from Alice".into(),
            template_id: "tpl-missed".into(),
            ..PushConfig::default()
        };
        expected.ios.insert(Default::default()).thread_id = "missed".into();
        assert_push(&webhook.next(), "cancel", "bob", &id, &expected);
        callplus_event_free(wait_for(alice, callplus_event_type::CallEnded));
        callplus_string_free(call_id);

        // An invitation into a call: dave, who has no device, gets the invitation's settings.
        let to_carol = [c"carol".as_ptr()];
        let mut call_id = null_mut();
        assert_eq!(
            callplus_client_start_call(alice, to_carol.as_ptr(), 1, 1, 1, null(), &mut call_id),
            R::Ok
        );
        let id = text(callplus_string_data(call_id));
        callplus_event_free(wait_for(carol, callplus_event_type::ReceivedCall));
        assert_eq!(callplus_client_accept(carol, callplus_string_data(call_id)), R::Ok);
        callplus_event_free(wait_for(alice, callplus_event_type::CallConnected));
        let vendor =
            [callplus_push_vendor_entry { key: c"xiaomi.channel".as_ptr(), value: c"calls".as_ptr() }];
        let android = callplus_android_push {
            channel_id: c"group".as_ptr(),
            vendor: vendor.as_ptr(),
            vendor_len: vendor.len(),
            ..no_android()
        };
        let invite = callplus_call_options {
            push_title: c"Alice invites you".as_ptr(),
            push_template_id: c"tpl-group".as_ptr(),
            push_android: &android,
            ..no_options()
        };
        let to_dave = [c"dave".as_ptr()];
        let mut busy = null_mut();
        assert_eq!(
            callplus_client_invite_with_options(alice, to_dave.as_ptr(), 1, &invite, &mut busy),
            R::Ok
        );
        callplus_string_list_free(busy);
        let mut expected = PushConfig {
            title: "Alice invites you".into(),
            template_id: "tpl-group".into(),
            ..PushConfig::default()
        };
        let e = expected.android.insert(Default::default());
        e.channel_id = "group".into();
        e.vendor.insert("xiaomi.channel".into(), "calls".into());
        assert_push(&webhook.next(), "invite", "dave", &id, &expected);

        assert_eq!(callplus_client_hangup(carol, null()), R::Ok);
        callplus_string_free(call_id);
        callplus_client_free(alice);
        callplus_client_free(carol);
    }
}

type MediaState = Vec<(String, bool, bool)>;

/// Every participant of a session with its camera and microphone off flags, read by index;
/// the index after the last one reads as on, and UNREACHABLE.
fn session_media(s: *const callplus_call_session) -> MediaState {
    let n = unsafe { callplus_call_session_participant_count(s) };
    unsafe {
        assert!(!callplus_call_session_participant_camera_disabled(s, n));
        assert!(!callplus_call_session_participant_microphone_disabled(s, n));
        assert_eq!(callplus_call_session_participant_delivery(s, n), callplus_delivery::Unreachable);
    }
    (0..n)
        .map(|i| unsafe {
            (
                text(callplus_call_session_participant_user_id(s, i)),
                callplus_call_session_participant_camera_disabled(s, i),
                callplus_call_session_participant_microphone_disabled(s, i),
            )
        })
        .collect()
}

/// As [`session_media`], for a call snapshot.
fn info_media(c: *const callplus_call_info) -> MediaState {
    let n = unsafe { callplus_call_info_participant_count(c) };
    unsafe {
        assert!(!callplus_call_info_participant_camera_disabled(c, n));
        assert!(!callplus_call_info_participant_microphone_disabled(c, n));
        assert_eq!(callplus_call_info_participant_delivery(c, n), callplus_delivery::Unreachable);
    }
    (0..n)
        .map(|i| unsafe {
            (
                text(callplus_call_info_participant_user_id(c, i)),
                callplus_call_info_participant_camera_disabled(c, i),
                callplus_call_info_participant_microphone_disabled(c, i),
            )
        })
        .collect()
}

#[test]
fn a_late_invitee_reads_who_turned_camera_and_microphone_off() {
    use callplus_delivery as D;
    use callplus_event_type as E;
    use callplus_result as R;

    let server = TestServer::start();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.connect(u));
    unsafe {
        // alice and bob in a video call; bob turns his camera and microphone off.
        let to_bob = [c"bob".as_ptr()];
        let mut call_id = null_mut();
        assert_eq!(callplus_client_start_call(alice, to_bob.as_ptr(), 1, 1, 2, null(), &mut call_id), R::Ok);
        let id = text(callplus_string_data(call_id));
        let id_ptr = callplus_string_data(call_id);
        callplus_event_free(wait_for(bob, E::ReceivedCall));
        assert_eq!(callplus_client_accept(bob, id_ptr), R::Ok);
        callplus_event_free(wait_for(alice, E::CallConnected));
        assert_eq!(callplus_client_set_camera_enabled(bob, false), R::Ok);
        assert_eq!(callplus_client_set_microphone_enabled(bob, false), R::Ok);
        for kind in [E::RemoteCameraStateChanged, E::RemoteMicrophoneStateChanged] {
            let off = wait_for(alice, kind);
            assert_eq!(text(callplus_event_user_id(off)), "bob");
            assert!(callplus_event_disabled(off));
            callplus_event_free(off);
        }
        // The first frame, stamped by the server.
        assert_eq!(callplus_client_report_first_frame(alice, id_ptr), R::Ok);
        callplus_event_free(wait_for(alice, E::CallFirstFrameTime));

        // carol and erin (no device) are invited only now: carol's snapshot tells her.
        let (_keep, invitees) = c_list(&["carol", "erin"]);
        let mut busy = null_mut();
        assert_eq!(callplus_client_invite(alice, invitees.as_ptr(), 2, null(), &mut busy), R::Ok);
        callplus_string_list_free(busy);
        let incoming = wait_for(carol, E::ReceivedCall);
        assert_eq!(text(callplus_event_call_id(incoming)), id);
        let expected: MediaState =
            [("alice", false, false), ("bob", true, true), ("carol", false, false), ("erin", false, false)]
                .iter()
                .map(|&(u, camera, microphone)| (u.to_owned(), camera, microphone))
                .collect();
        assert_eq!(session_media(callplus_event_session(incoming)), expected);
        callplus_event_free(incoming);

        // carol's device shows the call; alice is told, and both snapshots keep it.
        assert_eq!(callplus_client_ringing(carol, id_ptr), R::Ok);
        let ringing = wait_until(alice, E::DeliveryChanged, |e| {
            text(callplus_event_user_id(e)) == "carol" && callplus_event_delivery(e) == D::Ringing
        });
        callplus_event_free(ringing);
        let session = current(alice);
        assert_eq!(session_media(session), expected);
        assert_eq!(callplus_call_session_participant_delivery(session, 2), D::Ringing);
        assert_eq!(callplus_call_session_participant_delivery(session, 3), D::Unreachable, "erin");
        let first_frame = callplus_call_session_first_frame_at_ms(session);
        assert!(first_frame > 0);
        callplus_call_session_free(session);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(carol, id_ptr, &mut info), R::Ok);
        assert_eq!(info_media(info), expected);
        assert_eq!(callplus_call_info_participant_delivery(info, 2), D::Ringing);
        assert_eq!(callplus_call_info_participant_delivery(info, 3), D::Unreachable, "erin");
        assert_eq!(callplus_call_info_first_frame_at_ms(info), first_frame);
        callplus_call_info_free(info);

        // bob turns his camera back on: a later snapshot says so.
        assert_eq!(callplus_client_set_camera_enabled(bob, true), R::Ok);
        let on = wait_for(alice, E::RemoteCameraStateChanged);
        assert!(!callplus_event_disabled(on));
        callplus_event_free(on);
        let mut info = null_mut();
        assert_eq!(callplus_client_get_call(carol, id_ptr, &mut info), R::Ok);
        assert!(!callplus_call_info_participant_camera_disabled(info, 1));
        assert!(callplus_call_info_participant_microphone_disabled(info, 1));
        callplus_call_info_free(info);

        assert_eq!(callplus_client_hangup(bob, null()), R::Ok);
        callplus_string_free(call_id);
        for c in [alice, bob, carol] {
            callplus_client_free(c);
        }
    }
}

/// Reads `session`'s talk time between two readings of `client`'s server clock: it counts to
/// a server time between them (not a timing bound: the two getters read the same clock).
fn assert_talk_time_on_server_clock(client: *const callplus_client, session: *const callplus_call_session) {
    for _ in 0..3 {
        let (mut before, mut after) = (0, 0);
        unsafe {
            assert_eq!(callplus_client_server_time_ms(client, &mut before), callplus_result::Ok);
            let talked = callplus_call_session_duration_ms(session);
            assert_eq!(callplus_client_server_time_ms(client, &mut after), callplus_result::Ok);
            let low = callplus_call_session_duration_at_ms(session, before);
            let high = callplus_call_session_duration_at_ms(session, after);
            assert!(low <= talked && talked <= high, "{low} <= {talked} <= {high}");
        }
    }
}

#[test]
fn talk_time_counts_on_the_client_s_server_clock() {
    use callplus_event_type as E;
    use callplus_result as R;

    let server = TestServer::start();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.connect(u));
    unsafe {
        let to_bob = [c"bob".as_ptr()];
        let mut call_id = null_mut();
        assert_eq!(callplus_client_start_call(alice, to_bob.as_ptr(), 1, 1, 1, null(), &mut call_id), R::Ok);
        let id_ptr = callplus_string_data(call_id);
        callplus_event_free(wait_for(bob, E::ReceivedCall));
        assert_eq!(callplus_client_accept(bob, id_ptr), R::Ok);
        callplus_event_free(wait_for(alice, E::CallStartTime));

        // A session of the client's current call.
        let owned = current(alice);
        assert!(callplus_call_session_started_at_ms(owned) > 0);
        assert_talk_time_on_server_clock(alice, owned);

        // A session of an event: carol, invited into the running call, reads its talk time on
        // her own client's clock.
        let to_carol = [c"carol".as_ptr()];
        let mut busy = null_mut();
        assert_eq!(callplus_client_invite(alice, to_carol.as_ptr(), 1, null(), &mut busy), R::Ok);
        callplus_string_list_free(busy);
        let incoming = wait_for(carol, E::ReceivedCall);
        let session = callplus_event_session(incoming);
        assert_eq!(callplus_call_session_started_at_ms(session), callplus_call_session_started_at_ms(owned));
        assert_eq!(callplus_call_session_ended_at_ms(session), 0);
        assert_talk_time_on_server_clock(carol, session);
        callplus_event_free(incoming);

        // A session outlives its client: it counts on from the client's last reading.
        let mut last = 0;
        assert_eq!(callplus_client_server_time_ms(alice, &mut last), R::Ok);
        let before_free = callplus_call_session_duration_at_ms(owned, last);
        callplus_client_free(alice);
        let after_free = callplus_call_session_duration_ms(owned);
        assert!(before_free <= after_free, "{before_free} <= {after_free}");
        assert!(after_free <= callplus_call_session_duration_ms(owned));
        callplus_call_session_free(owned);

        callplus_string_free(call_id);
        callplus_client_free(bob);
        callplus_client_free(carol);
    }
}
