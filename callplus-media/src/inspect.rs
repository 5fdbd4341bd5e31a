//! Reading back what the file sinks wrote: decode an `.ogg` (Opus) recording to PCM, find the
//! dominant tone in it, parse an `.ivf` (VP8) recording. Tests use these to prove media really
//! arrived; operators can use them to check a recording without external tools.

use std::path::Path;

/// Sample rate of decoded recordings.
pub const SAMPLE_RATE: u32 = 48_000;

/// A recording could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what its format says it must be.
    #[error("{path} is not a valid recording: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn format_error(path: &Path, reason: impl Into<String>) -> InspectError {
    InspectError::Format { path: path.display().to_string(), reason: reason.into() }
}

/// Decodes a mono Ogg/Opus recording (as `OggOpusSink` writes it) to 48 kHz PCM.
pub fn decode_ogg_opus(path: &Path) -> Result<Vec<i16>, InspectError> {
    let file = std::fs::File::open(path)
        .map_err(|source| InspectError::Io { path: path.display().to_string(), source })?;
    let mut reader = ogg::PacketReader::new(file);
    let mut decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
        .map_err(|e| format_error(path, format!("opus decoder: {e}")))?;
    let (mut pcm, mut buf) = (Vec::new(), vec![0i16; 5760]);
    let mut index = 0;
    while let Some(packet) = reader.read_packet().map_err(|e| format_error(path, format!("ogg: {e}")))? {
        index += 1;
        let header = |magic: &[u8]| {
            if packet.data.starts_with(magic) {
                Ok(())
            } else {
                Err(format_error(path, format!("packet {index} is not {}", String::from_utf8_lossy(magic))))
            }
        };
        match index {
            1 => header(b"OpusHead")?,
            2 => header(b"OpusTags")?,
            _ if packet.data.is_empty() => {}
            _ => {
                let n = decoder
                    .decode(&packet.data, &mut buf, false)
                    .map_err(|e| format_error(path, format!("opus packet {index}: {e}")))?;
                pcm.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
        }
    }
    Ok(pcm)
}

/// Goertzel power of `freq` Hz in 48 kHz `pcm`.
fn power(pcm: &[i16], freq: f64) -> f64 {
    let coeff = 2.0 * (std::f64::consts::TAU * freq / f64::from(SAMPLE_RATE)).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in pcm {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The strongest frequency between 100 and 2000 Hz (5 Hz steps) in 48 kHz `pcm`.
///
/// ```
/// let pcm: Vec<i16> = (0..48_000)
///     .map(|i| (10_000.0 * (std::f64::consts::TAU * 440.0 * f64::from(i) / 48_000.0).sin()) as i16)
///     .collect();
/// assert_eq!(callplus_media::inspect::dominant_frequency(&pcm), 440.0);
/// ```
pub fn dominant_frequency(pcm: &[i16]) -> f64 {
    // Each frequency's power once (comparing inside `max_by` computed it twice per step).
    (20..=400)
        .map(|i| f64::from(i) * 5.0)
        .map(|f| (f, power(pcm, f)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0.0, |(f, _)| f)
}

/// An IVF recording (as `IvfSink` writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfFile {
    /// Codec fourcc, `VP80` for VP8.
    pub fourcc: [u8; 4],
    /// Frame width from the header.
    pub width: u16,
    /// Frame height from the header.
    pub height: u16,
    /// Frame count from the header.
    pub frame_count: u32,
    /// The frames, in order.
    pub frames: Vec<Vec<u8>>,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Parses an IVF file; trailing bytes or a truncated frame are an error.
pub fn read_ivf(path: &Path) -> Result<IvfFile, InspectError> {
    let bytes = std::fs::read(path)
        .map_err(|source| InspectError::Io { path: path.display().to_string(), source })?;
    if bytes.len() < 32 || !bytes.starts_with(b"DKIF") {
        return Err(format_error(path, "no DKIF header"));
    }
    let short = || format_error(path, "truncated header");
    let mut fourcc = [0u8; 4];
    fourcc.copy_from_slice(bytes.get(8..12).ok_or_else(short)?);
    let width = le_u16(&bytes, 12).ok_or_else(short)?;
    let height = le_u16(&bytes, 14).ok_or_else(short)?;
    let frame_count = le_u32(&bytes, 24).ok_or_else(short)?;
    let mut frames = Vec::new();
    let mut at = 32;
    while at + 12 <= bytes.len() {
        let len = le_u32(&bytes, at).ok_or_else(short)? as usize;
        let frame = bytes.get(at + 12..at + 12 + len).ok_or_else(|| format_error(path, "truncated frame"))?;
        frames.push(frame.to_vec());
        at += 12 + len;
    }
    if at != bytes.len() {
        return Err(format_error(path, "trailing bytes after the last frame"));
    }
    Ok(IvfFile { fourcc, width, height, frame_count, frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_recordings_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let garbage = dir.path().join("garbage.ivf");
        std::fs::write(&garbage, b"DKIF short").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_ivf(&garbage), Err(InspectError::Format { .. })));
        let mut truncated = b"DKIF".to_vec();
        truncated.resize(32, 0);
        truncated.extend_from_slice(&100u32.to_le_bytes());
        truncated.extend_from_slice(&[0; 8]);
        std::fs::write(&garbage, &truncated).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_ivf(&garbage), Err(InspectError::Format { .. })));
        let ogg = dir.path().join("garbage.ogg");
        std::fs::write(&ogg, b"not an ogg stream at all").unwrap_or_else(|e| panic!("{e}"));
        assert!(decode_ogg_opus(&ogg).is_err());
        assert!(matches!(read_ivf(&dir.path().join("missing.ivf")), Err(InspectError::Io { .. })));
    }
}
