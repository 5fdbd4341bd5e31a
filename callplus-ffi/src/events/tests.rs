//! Tests of the event types, objects and queue.
#![allow(clippy::unwrap_used)]

use std::ffi::CStr;
use std::sync::Arc;

use callplus_media::MediaEvent;

use super::dispatch::*;
use super::event::*;
use super::kind::*;
use crate::enums::callplus_media_kind;
use crate::ffi::to_const_ptr;
use crate::result::callplus_result;

#[test]
fn every_event_type_has_its_constant_name() {
    use callplus_event_type as K;
    let all = [
        K::None,
        K::ConnectionStateChanged,
        K::ConnectionRejected,
        K::ReceivedCall,
        K::RemoteUserInvited,
        K::CallConnected,
        K::CallTypeChanged,
        K::RemoteUserStateChanged,
        K::CallEnded,
        K::RemoteCameraStateChanged,
        K::RemoteMicrophoneStateChanged,
        K::ReceivedCallRecord,
        K::ChangeMediaTypeRequest,
        K::ChangeMediaTypeResult,
        K::CallStartTime,
        K::CallFirstFrameTime,
        K::SummaryMessage,
        K::DeliveryChanged,
        K::PeerConnected,
        K::UserMediaAvailable,
        K::FirstFrame,
        K::AudioLevel,
        K::MediaStats,
        K::FetchRemoteMediaError,
        K::MediaError,
        K::VideoKeyframeRequested,
        K::ActiveSpeaker,
    ];
    for kind in all {
        // SAFETY: the function returns a static C string.
        let name = unsafe { CStr::from_ptr(callplus_event_type_name(kind as u32)) }.to_str().unwrap();
        let debug = format!("{kind:?}");
        let mut expected = String::new();
        for (i, c) in debug.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                expected.push('_');
            }
            expected.push(c.to_ascii_uppercase());
        }
        assert_eq!(name, expected, "{kind:?}");
    }
    // SAFETY: as above.
    let unknown = unsafe { CStr::from_ptr(callplus_event_type_name(28)) };
    assert_eq!(unknown, c"UNKNOWN");
}

fn media(event: MediaEvent) -> EventData {
    EventData::new(Queued::Media(event), &Arc::default())
}

#[test]
fn media_events_read_through_the_accessors() {
    let call = callplus_media::CallId::new("c1").unwrap();
    let bob = callplus_media::UserId::new("bob").unwrap();
    let first = media(MediaEvent::FirstFrame {
        call_id: call.clone(),
        user: bob.clone(),
        kind: callplus_media::MediaKind::Video,
        at_ms: 1234,
    });
    let e = to_const_ptr::<callplus_event>(&first);
    // SAFETY: `e` points at a live event.
    unsafe {
        assert_eq!(callplus_event_kind(e), callplus_event_type::FirstFrame);
        assert_eq!(CStr::from_ptr(callplus_event_call_id(e)), c"c1");
        assert_eq!(CStr::from_ptr(callplus_event_user_id(e)), c"bob");
        assert_eq!(callplus_event_media_kind(e), callplus_media_kind::Video);
        assert_eq!(callplus_event_time_ms(e), 1234);
        assert_eq!(callplus_event_audio_level(e), 0);
        assert!(callplus_event_stats(e).is_null());
    }
    let failed = media(MediaEvent::FetchRemoteMediaError {
        call_id: call.clone(),
        user: bob.clone(),
        code: callplus_session::Code::RtcServiceUnavailable,
    });
    let e = to_const_ptr::<callplus_event>(&failed);
    // SAFETY: as above.
    unsafe {
        assert_eq!(callplus_event_kind(e), callplus_event_type::FetchRemoteMediaError);
        assert_eq!(callplus_event_code(e), callplus_result::RtcServiceUnavailable);
    }
    let error = media(MediaEvent::Error { call_id: None, message: "no camera".into() });
    let e = to_const_ptr::<callplus_event>(&error);
    // SAFETY: as above.
    unsafe {
        assert_eq!(callplus_event_kind(e), callplus_event_type::MediaError);
        assert!(callplus_event_call_id(e).is_null());
        assert_eq!(CStr::from_ptr(callplus_event_message(e)), c"no camera");
    }
    let speaker = media(MediaEvent::ActiveSpeaker { call_id: call.clone(), user: Some(bob.clone()) });
    let e = to_const_ptr::<callplus_event>(&speaker);
    // SAFETY: as above.
    unsafe {
        assert_eq!(callplus_event_kind(e), callplus_event_type::ActiveSpeaker);
        assert_eq!(CStr::from_ptr(callplus_event_call_id(e)), c"c1");
        assert_eq!(CStr::from_ptr(callplus_event_user_id(e)), c"bob");
    }
    let nobody = media(MediaEvent::ActiveSpeaker { call_id: call.clone(), user: None });
    let e = to_const_ptr::<callplus_event>(&nobody);
    // SAFETY: as above.
    unsafe {
        assert_eq!(callplus_event_kind(e), callplus_event_type::ActiveSpeaker);
        assert!(callplus_event_user_id(e).is_null());
    }
    let keyframe = EventData::new(Queued::KeyframeRequested, &Arc::default());
    let e = to_const_ptr::<callplus_event>(&keyframe);
    // SAFETY: as above.
    unsafe {
        assert_eq!(callplus_event_kind(e), callplus_event_type::VideoKeyframeRequested);
        assert!(callplus_event_call_id(e).is_null());
        assert_eq!(callplus_event_media_kind(e), callplus_media_kind::None);
    }
}

#[test]
fn media_events_are_bounded_in_the_queue() {
    let events = Events::default();
    for _ in 0..MEDIA_EVENT_CAPACITY + 5 {
        events.keyframe_requested();
    }
    let mut st = events.lock();
    assert_eq!(st.queue.len(), MEDIA_EVENT_CAPACITY);
    assert!(st.pop().is_some());
    assert_eq!(st.media_queued, MEDIA_EVENT_CAPACITY - 1);
    st.closed = true;
    assert!(!st.push_media(Queued::KeyframeRequested), "nothing is queued after the client stopped");
}
