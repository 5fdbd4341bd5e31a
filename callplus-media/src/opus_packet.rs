//! Opus packet helpers (RFC 6716): what a player needs to know of a packet without decoding it.

use std::time::Duration;

/// How long an Opus packet plays, read from its TOC byte (and frame count byte) by libopus;
/// `None` for a malformed packet.
///
/// ```
/// use std::time::Duration;
/// // Config 1 (SILK narrowband, 20 ms), one frame.
/// assert_eq!(callplus_media::opus_packet::duration(&[1 << 3, 0xaa]), Some(Duration::from_millis(20)));
/// assert_eq!(callplus_media::opus_packet::duration(&[]), None);
/// ```
pub fn duration(packet: &[u8]) -> Option<Duration> {
    let samples = samples_48k(packet)?;
    Some(Duration::from_micros(samples as u64 * 1_000_000 / 48_000))
}

/// The packet's length in samples at 48 kHz; `None` for a malformed packet.
pub(crate) fn samples_48k(packet: &[u8]) -> Option<usize> {
    if packet.is_empty() {
        return None;
    }
    ::opus::packet::get_nb_samples(packet, 48_000).ok().filter(|&n| n > 0)
}
