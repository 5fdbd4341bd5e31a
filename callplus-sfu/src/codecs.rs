//! The codecs every SFU connection negotiates (the clients' Opus and VP8, same payload types) and
//! its interceptor chain: NACK in both directions, RTCP reports, and the key-frame tap.

use std::time::Duration;

use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Slot};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::peer_connection::{
    MediaEngine, Registry, configure_rtcp_reports, configure_simulcast_extension_headers,
};

use crate::error::SfuError;
use crate::feedback::FeedbackTap;

/// Payload types, as the clients' media adapter offers them.
pub(crate) const OPUS_PT: u8 = 111;
pub(crate) const VP8_PT: u8 = 96;
/// The key-frame tap sits on the wire side of the RTCP report interceptors, as the client's
/// observer does.
const KEYFRAME_TAP_SLOT: usize = 9_500;
/// How often missing packets from a publisher are asked for again, and how many times: the
/// clients give a gap up after 200 ms.
const NACK_INTERVAL: Duration = Duration::from_millis(20);
const NACKS_PER_PACKET: u16 = 10;

pub(crate) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub(crate) fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// The media engine and interceptors of one participant's connection.
///
/// - NACK responder: keeps the last packets *sent on this connection* and resends what this
///   subscriber asks for, so one subscriber's loss is repaired on its own link only;
/// - NACK generator: asks the publisher for packets missing from what it sends us;
/// - [`FeedbackTap`]: this subscriber's PLI/FIR go to the SFU, which rate-limits and forwards them,
///   and the loss its reports give for each forwarded stream (`loss_guard`).
pub(crate) fn media_engine_and_interceptors(tap: FeedbackTap) -> Result<(MediaEngine, Registry), SfuError> {
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PT },
        RtpCodecKind::Audio,
    )?;
    media.register_codec(
        RTCRtpCodecParameters { rtp_codec: vp8_codec(), payload_type: VP8_PT },
        RtpCodecKind::Video,
    )?;
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback { typ: "nack".to_owned(), parameter: parameter.to_owned() },
            RtpCodecKind::Video,
        );
    }
    // `mid` and `rid` header extensions: a simulcast publisher's layers are told apart by them
    // (its offer declares `a=rid` lines, not SSRCs).
    configure_simulcast_extension_headers(&mut media)?;
    // The publishers' audio levels (RFC 6464), read without decoding (`levels`).
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: crate::levels::AUDIO_LEVEL_URI.to_owned() },
        RtpCodecKind::Audio,
        None,
    )?;
    let registry = Registry::new()
        .with(Slot::NackResponder, NackResponderBuilder::new().build())
        .with(
            Slot::NackGenerator,
            NackGeneratorBuilder::new()
                .with_interval(NACK_INTERVAL)
                .with_max_nacks_per_packet(NACKS_PER_PACKET)
                .build(),
        )
        .with(Slot::from(KEYFRAME_TAP_SLOT), tap);
    Ok((media, configure_rtcp_reports(registry)))
}
