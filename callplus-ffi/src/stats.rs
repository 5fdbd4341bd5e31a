//! Status reports as C sees them: the `callplus_media_stats` of a MEDIA_STATS event.

use std::ffi::{CString, c_char};

use callplus_media::MediaStats;

use crate::ffi::{Opaque, cstring, opt_ptr, to_const_ptr, with_ref};

/// One status report of a call (about once a second while media runs), from the WebRTC
/// stack's own statistics. Borrowed from its MEDIA_STATS event: valid as long as the event.
/// Per-peer values are read by index, `0 <= index < callplus_media_stats_peer_count`.
pub struct callplus_media_stats {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_media_stats`.
pub(crate) struct Stats {
    inner: MediaStats,
    users: Vec<CString>,
    devices: Vec<CString>,
}

// SAFETY: `callplus_media_stats` pointers always point at a `Stats`.
unsafe impl Opaque for callplus_media_stats {
    type Rust = Stats;
}

impl Stats {
    pub(crate) fn new(inner: MediaStats) -> Self {
        Stats {
            users: inner.per_peer.iter().map(|p| cstring(p.user.as_str())).collect(),
            devices: inner.per_peer.iter().map(|p| cstring(p.device.as_str())).collect(),
            inner,
        }
    }

    fn peer<T>(&self, index: usize, f: impl FnOnce(&callplus_media::PeerStats) -> T) -> Option<T> {
        self.inner.per_peer.get(index).map(f)
    }
}

/// The borrowed pointer of a report.
pub(crate) fn stats_ptr(stats: &Stats) -> *const callplus_media_stats {
    to_const_ptr::<callplus_media_stats>(stats)
}

/// Loss of the packets this client sent, as the peers report it, in percent (0–100; the mean
/// over the peers that reported). 0 when `stats` is NULL.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_send_loss_pct(stats: *const callplus_media_stats) -> f64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.inner.send_loss_pct) }
}

/// The round-trip delay to the peers in milliseconds (the mean over the peers); -1 before the
/// first measurement; 0 when `stats` is NULL.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_rtt_ms(stats: *const callplus_media_stats) -> f64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.inner.rtt_ms.unwrap_or(-1.0)) }
}

/// The number of connected peers reported on.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_count(stats: *const callplus_media_stats) -> usize {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.inner.per_peer.len()) }
}

/// The user of peer `index`; NULL when out of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_user_id(
    stats: *const callplus_media_stats,
    index: usize,
) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| opt_ptr(s.users.get(index))) }
}

/// The device of peer `index`; NULL when out of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_device_id(
    stats: *const callplus_media_stats,
    index: usize,
) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| opt_ptr(s.devices.get(index))) }
}

/// Loss of the packets received from peer `index` over the report's interval, in percent
/// (0–100); 0 when out of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_recv_loss_pct(
    stats: *const callplus_media_stats,
    index: usize,
) -> f64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.peer(index, |p| p.recv_loss_pct).unwrap_or(0.0)) }
}

/// The bitrate received from peer `index` over the report's interval, in kbit/s (RTP payload
/// and headers); 0 when out of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_bitrate_kbps(
    stats: *const callplus_media_stats,
    index: usize,
) -> f64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.peer(index, |p| p.bitrate_kbps).unwrap_or(0.0)) }
}

/// Key-frame requests (RTCP PLI) this client sent peer `index` over the report's interval:
/// that peer's video could not be decoded until a key frame (loss, or no key frame yet); 0 when
/// out of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_keyframe_requests_sent(
    stats: *const callplus_media_stats,
    index: usize,
) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.peer(index, |p| p.keyframe_requests_sent).unwrap_or(0)) }
}

/// Key-frame requests (RTCP PLI and FIR, every one before coalescing; a repeated FIR counts
/// once) peer `index` sent about this client's video over the report's interval; 0 when out of
/// range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_keyframe_requests_received(
    stats: *const callplus_media_stats,
    index: usize,
) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.peer(index, |p| p.keyframe_requests_received).unwrap_or(0)) }
}

/// Video packets from peer `index` that arrived late and were still put back in order over the
/// report's interval (retransmissions answering this client's NACKs, or reordering); 0 when out
/// of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_video_packets_recovered(
    stats: *const callplus_media_stats,
    index: usize,
) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.peer(index, |p| p.video_packets_recovered).unwrap_or(0)) }
}

/// Video packets from peer `index` given up over the report's interval (not retransmitted in
/// time; each such gap withholds that peer's video until a key frame); 0 when out of range.
///
/// # Safety
/// `stats` must be NULL or a live `callplus_media_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_media_stats_peer_video_packets_lost(
    stats: *const callplus_media_stats,
    index: usize,
) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(stats, |s| s.peer(index, |p| p.video_packets_lost).unwrap_or(0)) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::ffi::CStr;
    use std::ptr::null;

    use callplus_media::{CallId, DeviceId, PeerStats, UserId};

    use super::*;

    #[test]
    fn a_report_reads_through_the_accessors() {
        let stats = Stats::new(MediaStats {
            call_id: CallId::new("c1").unwrap(),
            send_loss_pct: 1.5,
            rtt_ms: None,
            per_peer: vec![PeerStats {
                user: UserId::new("bob").unwrap(),
                device: DeviceId::new("d2").unwrap(),
                recv_loss_pct: 2.5,
                bitrate_kbps: 41.0,
                keyframe_requests_sent: 3,
                keyframe_requests_received: 7,
                video_packets_recovered: 11,
                video_packets_lost: 2,
            }],
        });
        let s = stats_ptr(&stats);
        // SAFETY: `s` points at a live report; NULL is allowed.
        unsafe {
            assert_eq!(callplus_media_stats_send_loss_pct(s), 1.5);
            assert_eq!(callplus_media_stats_rtt_ms(s), -1.0);
            assert_eq!(callplus_media_stats_peer_count(s), 1);
            assert_eq!(CStr::from_ptr(callplus_media_stats_peer_user_id(s, 0)), c"bob");
            assert_eq!(CStr::from_ptr(callplus_media_stats_peer_device_id(s, 0)), c"d2");
            assert_eq!(callplus_media_stats_peer_recv_loss_pct(s, 0), 2.5);
            assert_eq!(callplus_media_stats_peer_bitrate_kbps(s, 0), 41.0);
            assert_eq!(callplus_media_stats_peer_keyframe_requests_sent(s, 0), 3);
            assert_eq!(callplus_media_stats_peer_keyframe_requests_received(s, 0), 7);
            assert_eq!(callplus_media_stats_peer_video_packets_recovered(s, 0), 11);
            assert_eq!(callplus_media_stats_peer_video_packets_lost(s, 0), 2);
            assert!(callplus_media_stats_peer_user_id(s, 1).is_null());
            assert_eq!(callplus_media_stats_peer_bitrate_kbps(s, 1), 0.0);
            assert_eq!(callplus_media_stats_peer_keyframe_requests_sent(s, 1), 0);
            assert_eq!(callplus_media_stats_peer_keyframe_requests_received(s, usize::MAX), 0);
            assert_eq!(callplus_media_stats_peer_video_packets_recovered(s, 1), 0);
            assert_eq!(callplus_media_stats_peer_video_packets_lost(s, usize::MAX), 0);
            assert_eq!(callplus_media_stats_peer_count(null()), 0);
            assert_eq!(callplus_media_stats_rtt_ms(null()), 0.0);
            assert_eq!(callplus_media_stats_peer_keyframe_requests_sent(null(), 0), 0);
            assert_eq!(callplus_media_stats_peer_keyframe_requests_received(null(), 0), 0);
            assert_eq!(callplus_media_stats_peer_video_packets_recovered(null(), 0), 0);
            assert_eq!(callplus_media_stats_peer_video_packets_lost(null(), 0), 0);
        }
    }
}
