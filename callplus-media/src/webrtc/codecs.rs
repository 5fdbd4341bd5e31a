//! The codecs we offer (Opus, VP8) and the interceptor chain (NACK tuned for the reorder buffer,
//! RTCP reports, TWCC) of every peer connection.

use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Slot};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::peer_connection::{
    MediaEngine, Registry, configure_rtcp_reports, configure_simulcast_extension_headers,
    configure_twcc_receiver_only,
};

use crate::error::MediaError;
use crate::reorder;

/// Payload types we offer.
pub(super) const OPUS_PT: u8 = 111;
pub(crate) const VP8_PT: u8 = 96;
/// Interceptor slot of the RTCP observer: wire-side of the RR/SR interceptors (10 000 and
/// 11 000), which consume reports on the way in and create sender reports on the way out.
pub(super) const RTCP_OBSERVER_SLOT: usize = 9_500;
/// The RFC 6464 client-to-mixer audio level header extension.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

pub(super) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub(super) fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// `rtc`'s `register_default_interceptors` (NACK, RTCP reports, simulcast header extensions, TWCC
/// feedback; its documentation asks to copy it for changes), with the NACK generator tuned for the
/// reorder buffer (`reorder`): the default one lists missing packets every 100 ms, longer than
/// the buffer waits for them on a short path, and keeps asking for a packet until it leaves its
/// 512-packet log. Ours asks every [`reorder::NACK_INTERVAL`], at most for as long as the buffer
/// can wait. The sender side answers with plain retransmissions on the media SSRC (no RTX is
/// negotiated), which reach the track with their original sequence numbers.
pub(super) fn interceptors(media: &mut MediaEngine) -> Result<Registry, MediaError> {
    // Advertised for video: `a=rtcp-fb:96 nack` and `nack pli`.
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback { typ: "nack".to_owned(), parameter: parameter.to_owned() },
            RtpCodecKind::Video,
        );
    }
    let nacks_per_packet = (reorder::MAX_WAIT.as_millis() / reorder::NACK_INTERVAL.as_millis()) as u16;
    let registry = Registry::new().with(Slot::NackResponder, NackResponderBuilder::new().build()).with(
        Slot::NackGenerator,
        NackGeneratorBuilder::new()
            .with_interval(reorder::NACK_INTERVAL)
            .with_max_nacks_per_packet(nacks_per_packet)
            .build(),
    );
    configure_simulcast_extension_headers(media)?;
    // Our audio packets carry their level (RFC 6464), which an SFU reads without decoding.
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() },
        RtpCodecKind::Audio,
        None,
    )?;
    let registry = configure_twcc_receiver_only(registry, media)?;
    Ok(configure_rtcp_reports(registry))
}
