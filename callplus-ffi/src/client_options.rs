//! The optional settings of a client connected from C: its device and its built-in media.

use std::ffi::c_char;
use std::net::{IpAddr, SocketAddr};

use ::callplus_client::TlsOptions;
use callplus_session::DeviceId;

use crate::ffi::opt_str_arg;
use crate::result::callplus_result;

/// Highest `tone_hz`: well inside what a 48 kHz Opus stream carries.
const MAX_TONE_HZ: u32 = 20_000;

/// Optional settings of `callplus_client_connect_with_options`.
///
/// Zero-initialise it and set only what you need; a zero, false or NULL field means "not set"
/// (the defaults of `callplus_client_connect`). Fields may be added at the end in later
/// versions, and the library reads the struct of its own version: build against the header of
/// the library you link, and always start from `{0}`:
///
/// ```c
/// struct callplus_client_options options = {0};
/// options.enable_media = true;          // the client sets up WebRTC media for every call
/// options.app_microphone = true;        // Opus samples from callplus_client_push_audio_sample
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct callplus_client_options {
    /// This installation's id (1–64 of `[A-Za-z0-9_-]`, stable across restarts), or NULL for a
    /// random one.
    pub device_id: *const c_char,
    /// Set up real media (WebRTC audio, and video in AUDIO_VIDEO calls) by itself for every
    /// call this client is connected in: no SDP or ICE handling in the app. Off: the client
    /// does signalling only (calls connect, no media flows). The media fields below need
    /// it (`PARAM_ERROR` otherwise).
    pub enable_media: bool,
    /// The local IP address ICE binds to (`"192.0.2.7"`, or `"ip:port"`), or NULL for every
    /// interface but loopback. `"127.0.0.1"` keeps media on this host (tests, same-host
    /// calls).
    pub media_bind_address: *const c_char,
    /// A built-in microphone that sends a sine tone of this frequency (1–20000 Hz, half
    /// scale), for tests and demos; 0 for none. Excludes `app_microphone`.
    pub tone_hz: u32,
    /// A built-in camera that sends a moving VP8 test pattern (320×240, 15 fps), for tests and
    /// demos. Excludes `app_camera`.
    pub test_pattern: bool,
    /// The app is the microphone: it pushes Opus packets with
    /// `callplus_client_push_audio_sample`.
    pub app_microphone: bool,
    /// The app is the camera: it pushes VP8 frames with `callplus_client_push_video_sample`.
    pub app_camera: bool,
    /// For an `https://` endpoint: PEM certificates of the authorities to trust instead of the
    /// public ones (a private CA, or the server's self-signed certificate), or NULL for the
    /// public roots bundled in the library. Needs an `https://` endpoint (`PARAM_ERROR`
    /// otherwise: the connection is never quietly made in plaintext).
    pub tls_ca_pem: *const c_char,
    /// For an `https://` endpoint: the name the server's certificate must carry when it is not
    /// the endpoint's host (an endpoint given as an IP address), or NULL.
    pub tls_domain: *const c_char,
    /// Through the SFU (group calls), send video in one layer only, as in a peer-to-peer call,
    /// instead of two simulcast layers (full and tiny, the default): every viewer gets the full
    /// picture, also one that chose this user's tiny video, and the device runs one video
    /// encoder instead of two (a weak device, or an app that never shows small views). Needs
    /// `enable_media`.
    pub no_simulcast: bool,
}

/// Where this client's microphone or camera media comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceChoice {
    /// Nothing is sent.
    None,
    /// A built-in test source (tone or pattern).
    Test,
    /// Samples the app pushes.
    App,
}

/// The built-in media as the C options ask for it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MediaSettings {
    /// ICE's bind address, `ip:port`.
    pub(crate) bind_addr: String,
    /// The microphone.
    pub(crate) microphone: SourceChoice,
    /// The tone's frequency when the microphone is the test tone.
    pub(crate) tone_hz: u32,
    /// The camera.
    pub(crate) camera: SourceChoice,
    /// Whether video to the SFU goes in two simulcast layers (`WebRtcConfig::simulcast`).
    pub(crate) simulcast: bool,
}

/// The client settings of a C options struct.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnectSettings {
    /// The device, `None` for a random one.
    pub(crate) device_id: Option<DeviceId>,
    /// The built-in media, `None` for signalling only.
    pub(crate) media: Option<MediaSettings>,
    /// How an `https://` server's certificate is checked.
    pub(crate) tls: TlsOptions,
}

impl ConnectSettings {
    /// No device id, no media, the default trust: `callplus_client_connect`.
    pub(crate) fn with_device(device_id: Option<DeviceId>) -> Self {
        ConnectSettings { device_id, media: None, tls: TlsOptions::default() }
    }
}

/// The settings of a C options struct (NULL: all defaults). Every field is checked here, before
/// anything connects.
///
/// # Safety
/// `options` must be NULL or point to a readable `callplus_client_options` whose strings are
/// NULL or NUL-terminated.
pub(crate) unsafe fn client_options_arg(
    options: *const callplus_client_options,
) -> Result<ConnectSettings, callplus_result> {
    // SAFETY: forwarded contract.
    let Some(o) = (unsafe { options.as_ref() }) else {
        return Ok(ConnectSettings::with_device(None));
    };
    // SAFETY: forwarded contract.
    let (device_id, bind, ca, domain) = unsafe {
        (
            opt_str_arg(o.device_id)?,
            opt_str_arg(o.media_bind_address)?,
            opt_str_arg(o.tls_ca_pem)?,
            opt_str_arg(o.tls_domain)?,
        )
    };
    let device_id = device_id.map(DeviceId::new).transpose()?;
    let mut tls = TlsOptions::default();
    if let Some(pem) = ca {
        tls = tls.with_ca_pem(pem.as_bytes().to_vec());
    }
    if let Some(domain) = domain {
        tls = tls.with_domain(domain.to_owned());
    }
    let any_media_field = bind.is_some()
        || o.tone_hz != 0
        || o.test_pattern
        || o.app_microphone
        || o.app_camera
        || o.no_simulcast;
    if !o.enable_media {
        return if any_media_field {
            Err(callplus_result::ParamError)
        } else {
            Ok(ConnectSettings { device_id, media: None, tls })
        };
    }
    let microphone = match (o.tone_hz, o.app_microphone) {
        (0, false) => SourceChoice::None,
        (0, true) => SourceChoice::App,
        (hz, false) if hz <= MAX_TONE_HZ => SourceChoice::Test,
        _ => return Err(callplus_result::ParamError),
    };
    let camera = match (o.test_pattern, o.app_camera) {
        (false, false) => SourceChoice::None,
        (false, true) => SourceChoice::App,
        (true, false) => SourceChoice::Test,
        (true, true) => return Err(callplus_result::ParamError),
    };
    let bind_addr = match bind {
        None => "0.0.0.0:0".to_owned(),
        Some(text) => bind_addr_arg(text)?,
    };
    let media =
        MediaSettings { bind_addr, microphone, tone_hz: o.tone_hz, camera, simulcast: !o.no_simulcast };
    Ok(ConnectSettings { device_id, media: Some(media), tls })
}

/// `ip` or `ip:port` as `ip:port` (port 0: any free one).
fn bind_addr_arg(text: &str) -> Result<String, callplus_result> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 0).to_string());
    }
    text.parse::<SocketAddr>().map(|a| a.to_string()).map_err(|_| callplus_result::ParamError)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::ptr::null;

    use super::*;

    fn zeroed() -> callplus_client_options {
        callplus_client_options {
            device_id: null(),
            enable_media: false,
            media_bind_address: null(),
            tone_hz: 0,
            test_pattern: false,
            app_microphone: false,
            app_camera: false,
            tls_ca_pem: null(),
            tls_domain: null(),
            no_simulcast: false,
        }
    }

    fn media() -> callplus_client_options {
        callplus_client_options { enable_media: true, ..zeroed() }
    }

    #[test]
    fn zeroed_or_null_options_are_the_defaults() {
        let defaults = ConnectSettings::with_device(None);
        assert_eq!(unsafe { client_options_arg(null()) }, Ok(defaults.clone()));
        assert_eq!(unsafe { client_options_arg(&zeroed()) }, Ok(defaults));
    }

    #[test]
    fn media_fields_reach_the_settings() {
        let got = unsafe { client_options_arg(&media()) }.unwrap().media.unwrap();
        assert_eq!(got.bind_addr, "0.0.0.0:0");
        assert_eq!((got.microphone, got.camera), (SourceChoice::None, SourceChoice::None));
        assert!(got.simulcast, "two layers unless turned off");
        let one_layer = callplus_client_options { no_simulcast: true, ..media() };
        assert!(!unsafe { client_options_arg(&one_layer) }.unwrap().media.unwrap().simulcast);

        let o = callplus_client_options {
            device_id: c"phone-1".as_ptr(),
            media_bind_address: c"127.0.0.1".as_ptr(),
            tone_hz: 440,
            app_camera: true,
            ..media()
        };
        let got = unsafe { client_options_arg(&o) }.unwrap();
        assert_eq!(got.device_id.unwrap().as_str(), "phone-1");
        let m = got.media.unwrap();
        assert_eq!(m.bind_addr, "127.0.0.1:0");
        assert_eq!((m.microphone, m.tone_hz, m.camera), (SourceChoice::Test, 440, SourceChoice::App));

        let o = callplus_client_options {
            media_bind_address: c"[::1]:5000".as_ptr(),
            app_microphone: true,
            test_pattern: true,
            ..media()
        };
        let m = unsafe { client_options_arg(&o) }.unwrap().media.unwrap();
        assert_eq!(m.bind_addr, "[::1]:5000");
        assert_eq!((m.microphone, m.camera), (SourceChoice::App, SourceChoice::Test));
    }

    #[test]
    fn tls_fields_reach_the_settings() {
        let o = callplus_client_options {
            tls_ca_pem: c"-----BEGIN CERTIFICATE-----".as_ptr(),
            tls_domain: c"calls.example.org".as_ptr(),
            ..zeroed()
        };
        let got = unsafe { client_options_arg(&o) }.unwrap();
        assert_eq!(got.tls.ca_pem.as_deref(), Some(b"-----BEGIN CERTIFICATE-----".as_slice()));
        assert_eq!(got.tls.domain.as_deref(), Some("calls.example.org"));
        let with_media = callplus_client_options { tls_domain: c"localhost".as_ptr(), ..media() };
        assert_eq!(
            unsafe { client_options_arg(&with_media) }.unwrap().tls.domain.as_deref(),
            Some("localhost")
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        let refused = |o: callplus_client_options| unsafe { client_options_arg(&o) }.unwrap_err();
        // Media fields without media.
        assert_eq!(
            refused(callplus_client_options { tone_hz: 440, ..zeroed() }),
            callplus_result::ParamError
        );
        assert_eq!(
            refused(callplus_client_options { app_camera: true, ..zeroed() }),
            callplus_result::ParamError
        );
        let bind = callplus_client_options { media_bind_address: c"127.0.0.1".as_ptr(), ..zeroed() };
        assert_eq!(refused(bind), callplus_result::ParamError);
        assert_eq!(
            refused(callplus_client_options { no_simulcast: true, ..zeroed() }),
            callplus_result::ParamError
        );
        // Two sources for one device.
        let both = callplus_client_options { tone_hz: 440, app_microphone: true, ..media() };
        assert_eq!(refused(both), callplus_result::ParamError);
        let both = callplus_client_options { test_pattern: true, app_camera: true, ..media() };
        assert_eq!(refused(both), callplus_result::ParamError);
        // Out of range, malformed.
        assert_eq!(
            refused(callplus_client_options { tone_hz: 20_001, ..media() }),
            callplus_result::ParamError
        );
        let bind = callplus_client_options { media_bind_address: c"localhost".as_ptr(), ..media() };
        assert_eq!(refused(bind), callplus_result::ParamError);
        let bind = callplus_client_options { media_bind_address: [0xffu8, 0].as_ptr().cast(), ..media() };
        assert_eq!(refused(bind), callplus_result::ParamError);
        let device = callplus_client_options { device_id: c"no spaces".as_ptr(), ..zeroed() };
        assert!(unsafe { client_options_arg(&device) }.is_err());
    }
}
