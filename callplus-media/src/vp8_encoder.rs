//! A single-threaded libvpx VP8 encoder: the one piece of `unsafe` in the media crate.
//!
//! The test pattern used the `vpx-encode` crate, which always asks libvpx for 8 encoder
//! threads. libvpx's (1.12) multi-threaded VP8 encoder corrupts the heap when the machine is
//! busy: glibc aborted the C API media test with "corrupted double-linked list" and the like in
//! most runs with four copies of it running at once, and not once with the very same build
//! forced to one encoder thread. The test pattern is small and real-time, so one thread is
//! plenty; this wrapper owns the encoder's settings so that stays so. It also makes key frames
//! on request with `VPX_EFLAG_FORCE_KF` instead of destroying and creating the encoder (and its
//! threads) each time a peer asks.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_ulong};

use vpx_sys as sys;

/// One encoded VP8 frame: its bytes and whether it is a key frame.
pub(crate) type Vp8Frame = (Vec<u8>, bool);

/// The encoder's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp8Settings {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) fps: u32,
    pub(crate) bitrate_kbps: u32,
}

/// A libvpx VP8 encoder context, always one thread. Not `Send`: it stays on the thread that
/// made it (libvpx contexts are not to be shared).
pub(crate) struct Vp8Encoder {
    /// Boxed so its address never changes after `vpx_codec_enc_init_ver` filled it in.
    ctx: Box<sys::vpx_codec_ctx_t>,
    settings: Vp8Settings,
}

/// libvpx's text for an error code.
fn describe(what: &str, err: sys::vpx_codec_err_t) -> String {
    // SAFETY: `vpx_codec_err_to_string` returns a static NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr(sys::vpx_codec_err_to_string(err)) };
    format!("{what}: {}", text.to_string_lossy())
}

impl Vp8Encoder {
    /// A new encoder; its first frame is a key frame.
    ///
    /// # Errors
    /// libvpx's refusal of the settings, as text.
    pub(crate) fn new(settings: Vp8Settings) -> Result<Self, String> {
        if !settings.width.is_multiple_of(2) || !settings.height.is_multiple_of(2) || settings.fps == 0 {
            return Err(format!("unsupported VP8 settings {settings:?}"));
        }
        let fps = c_int::try_from(settings.fps).map_err(|_| format!("frame rate {}", settings.fps))?;
        // SAFETY: `vpx_codec_vp8_cx` returns a static interface; a zeroed config is valid
        // storage for `vpx_codec_enc_config_default` to fill in.
        let (iface, mut cfg) = unsafe {
            let iface = sys::vpx_codec_vp8_cx();
            let mut cfg = MaybeUninit::<sys::vpx_codec_enc_cfg_t>::zeroed().assume_init();
            let err = sys::vpx_codec_enc_config_default(iface, &mut cfg, 0);
            if err != sys::vpx_codec_err_t::VPX_CODEC_OK {
                return Err(describe("VP8 default config", err));
            }
            (iface, cfg)
        };
        cfg.g_w = settings.width;
        cfg.g_h = settings.height;
        cfg.g_timebase.num = 1;
        cfg.g_timebase.den = fps;
        cfg.rc_target_bitrate = settings.bitrate_kbps;
        cfg.g_threads = 1;
        cfg.g_lag_in_frames = 0;
        cfg.g_error_resilient = sys::VPX_ERROR_RESILIENT_DEFAULT;
        // SAFETY: a zeroed context is what `vpx_codec_enc_init_ver` expects; it copies `cfg`.
        // On failure libvpx has already released what it allocated, so no `Drop` runs then.
        let mut ctx = Box::new(unsafe { MaybeUninit::<sys::vpx_codec_ctx_t>::zeroed().assume_init() });
        let abi = sys::VPX_ENCODER_ABI_VERSION as c_int;
        let err = unsafe { sys::vpx_codec_enc_init_ver(&mut *ctx, iface, &cfg, 0, abi) };
        if err != sys::vpx_codec_err_t::VPX_CODEC_OK {
            return Err(describe("VP8 encoder init", err));
        }
        Ok(Vp8Encoder { ctx, settings })
    }

    /// The settings it was made with.
    pub(crate) fn settings(&self) -> Vp8Settings {
        self.settings
    }

    /// Encodes one I420 image (`width × height × 3/2` bytes) at `pts` (in frames); a key frame
    /// when `keyframe`. Returns the frames libvpx produced (one, or none when it dropped the
    /// frame to hold the bitrate).
    ///
    /// # Errors
    /// A short image, or libvpx's refusal, as text.
    pub(crate) fn encode(&mut self, pts: i64, image: &[u8], keyframe: bool) -> Result<Vec<Vp8Frame>, String> {
        let (w, h) = (self.settings.width, self.settings.height);
        let needed = w as usize * h as usize * 3 / 2;
        if image.len() < needed {
            return Err(format!("I420 image of {} bytes, {needed} needed", image.len()));
        }
        let flags: sys::vpx_enc_frame_flags_t = if keyframe { sys::VPX_EFLAG_FORCE_KF.into() } else { 0 };
        let mut frames = Vec::new();
        // SAFETY: `img` only describes `image`, which outlives the `vpx_codec_encode` call that
        // reads it (libvpx copies the picture into its own buffers; lag is 0). Packets from
        // `vpx_codec_get_cx_data` are valid until the next call on the context, and are copied
        // out before it.
        unsafe {
            let mut img = MaybeUninit::<sys::vpx_image_t>::zeroed().assume_init();
            let wrapped = sys::vpx_img_wrap(
                &mut img,
                sys::vpx_img_fmt::VPX_IMG_FMT_I420,
                w,
                h,
                1,
                image.as_ptr().cast_mut(),
            );
            if wrapped.is_null() {
                return Err("vpx_img_wrap refused the image".into());
            }
            let deadline = sys::VPX_DL_REALTIME as c_ulong;
            let err = sys::vpx_codec_encode(&mut *self.ctx, &img, pts, 1, flags, deadline);
            if err != sys::vpx_codec_err_t::VPX_CODEC_OK {
                return Err(describe("VP8 encode", err));
            }
            let mut iter: sys::vpx_codec_iter_t = std::ptr::null();
            loop {
                let pkt = sys::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind == sys::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    let f = &(*pkt).data.frame;
                    let len = usize::try_from(f.sz).map_err(|_| format!("VP8 frame of {} bytes", f.sz))?;
                    let data = std::slice::from_raw_parts(f.buf.cast::<u8>(), len).to_vec();
                    frames.push((data, f.flags & sys::VPX_FRAME_IS_KEY != 0));
                }
            }
        }
        Ok(frames)
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed once, here.
        let err = unsafe { sys::vpx_codec_destroy(&mut *self.ctx) };
        if err != sys::vpx_codec_err_t::VPX_CODEC_OK {
            tracing::warn!(error = %describe("VP8 encoder destroy", err), "libvpx");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SETTINGS: Vp8Settings = Vp8Settings { width: 64, height: 48, fps: 15, bitrate_kbps: 200 };

    fn grey() -> Vec<u8> {
        vec![128u8; 64 * 48 * 3 / 2]
    }

    #[test]
    fn the_first_frame_and_requested_ones_are_key_frames() {
        let mut enc = Vp8Encoder::new(SETTINGS).unwrap();
        let first = enc.encode(0, &grey(), false).unwrap();
        assert!(first.len() == 1 && first[0].1 && !first[0].0.is_empty(), "{first:?}");
        let next = enc.encode(1, &grey(), false).unwrap();
        assert!(next.iter().all(|(_, key)| !key), "a delta frame unless asked");
        let asked = enc.encode(2, &grey(), true).unwrap();
        assert!(asked.len() == 1 && asked[0].1, "forced key frame");
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        assert!(Vp8Encoder::new(Vp8Settings { width: 63, ..SETTINGS }).is_err());
        assert!(Vp8Encoder::new(Vp8Settings { fps: 0, ..SETTINGS }).is_err());
        let mut enc = Vp8Encoder::new(SETTINGS).unwrap();
        assert!(enc.encode(0, &[0u8; 10], false).is_err());
    }
}
