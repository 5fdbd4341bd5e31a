//! File sinks: received Opus to `.ogg` (RFC 7845), received VP8 to `.ivf`.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::sink::{MediaSink, RemoteFrame};
use crate::vp8;

/// The Ogg stream serial of recordings.
const OGG_SERIAL: u32 = 0x6361_6c6c;
/// Packets per Ogg page.
const PACKETS_PER_PAGE: u32 = 50;

/// Writes received Opus packets into an Ogg Opus file (`ffprobe`, `opusdec`, `sox` read it).
///
/// Granule positions follow the RTP timestamps (48 kHz), so gaps stay gaps. The file is
/// complete after [`MediaSink::on_end`] (or drop).
pub struct OggOpusSink {
    writer: Option<PacketWriter<'static, BufWriter<File>>>,
    first_ts: Option<u32>,
    /// The last packet, held back so the final one can carry the end-of-stream flag.
    held: Option<(Vec<u8>, u64)>,
    in_page: u32,
}

impl std::fmt::Debug for OggOpusSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusSink").field("open", &self.writer.is_some()).finish()
    }
}

impl OggOpusSink {
    /// Creates the file and writes the Opus headers (stereo, 48 kHz, as WebRTC negotiates).
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn create(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let mut writer = PacketWriter::new(BufWriter::new(File::create(path)?));
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(2); // channels
        head.extend_from_slice(&312u16.to_le_bytes()); // pre-skip (libopus default)
        head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate
        head.extend_from_slice(&0u16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family
        writer.write_packet(head, OGG_SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        let vendor = b"callplus-media";
        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        writer.write_packet(tags, OGG_SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        Ok(OggOpusSink { writer: Some(writer), first_ts: None, held: None, in_page: 0 })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some(mut writer) = self.writer.take() else { return Ok(()) };
        match self.held.take() {
            Some((data, granule)) => {
                writer.write_packet(data, OGG_SERIAL, PacketWriteEndInfo::EndStream, granule)?
            }
            None => writer.write_packet(Vec::new(), OGG_SERIAL, PacketWriteEndInfo::EndStream, 0)?,
        }
        writer.inner_mut().flush()
    }
}

impl MediaSink for OggOpusSink {
    fn on_frame(&mut self, frame: &RemoteFrame) -> std::io::Result<()> {
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        let first = *self.first_ts.get_or_insert(frame.rtp_timestamp);
        // Granule = end of this packet in 48 kHz samples; 960 = one 20 ms frame.
        let samples = crate::opus_packet::samples_48k(&frame.data).unwrap_or(960) as u64;
        let granule = u64::from(frame.rtp_timestamp.wrapping_sub(first)) + samples;
        if let Some((data, g)) = self.held.take() {
            self.in_page += 1;
            let end = if self.in_page >= PACKETS_PER_PAGE {
                self.in_page = 0;
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            writer.write_packet(data, OGG_SERIAL, end, g)?;
        }
        self.held = Some((frame.data.to_vec(), granule));
        Ok(())
    }

    fn on_end(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "finishing the ogg recording failed");
        }
    }
}

impl Drop for OggOpusSink {
    fn drop(&mut self) {
        self.on_end();
    }
}

/// Writes received VP8 frames into an IVF file. Frames before the first key frame are skipped;
/// the header's width and height come from that key frame, the frame count is filled in at
/// [`MediaSink::on_end`] (or drop). Timebase 1/90000 (RTP clock).
#[derive(Debug)]
pub struct IvfSink {
    file: Option<BufWriter<File>>,
    first_ts: Option<u32>,
    frames: u32,
}

impl IvfSink {
    /// Creates the file; the header is written with the first key frame.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(IvfSink { file: Some(BufWriter::new(File::create(path)?)), first_ts: None, frames: 0 })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some(mut file) = self.file.take() else { return Ok(()) };
        if self.first_ts.is_some() {
            file.seek(SeekFrom::Start(24))?;
            file.write_all(&self.frames.to_le_bytes())?;
        }
        file.flush()
    }
}

impl MediaSink for IvfSink {
    fn on_frame(&mut self, frame: &RemoteFrame) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let first = match self.first_ts {
            Some(ts) => ts,
            None => {
                let Some((width, height)) = vp8::keyframe_dimensions(&frame.data) else { return Ok(()) };
                let mut header = Vec::with_capacity(32);
                header.extend_from_slice(b"DKIF");
                header.extend_from_slice(&0u16.to_le_bytes()); // version
                header.extend_from_slice(&32u16.to_le_bytes()); // header size
                header.extend_from_slice(b"VP80");
                header.extend_from_slice(&width.to_le_bytes());
                header.extend_from_slice(&height.to_le_bytes());
                header.extend_from_slice(&90_000u32.to_le_bytes()); // timebase denominator
                header.extend_from_slice(&1u32.to_le_bytes()); // timebase numerator
                header.extend_from_slice(&0u32.to_le_bytes()); // frame count, patched at the end
                header.extend_from_slice(&0u32.to_le_bytes());
                file.write_all(&header)?;
                self.first_ts = Some(frame.rtp_timestamp);
                frame.rtp_timestamp
            }
        };
        let pts = u64::from(frame.rtp_timestamp.wrapping_sub(first));
        file.write_all(&(frame.data.len() as u32).to_le_bytes())?;
        file.write_all(&pts.to_le_bytes())?;
        file.write_all(&frame.data)?;
        self.frames += 1;
        Ok(())
    }

    fn on_end(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "finishing the ivf recording failed");
        }
    }
}

impl Drop for IvfSink {
    fn drop(&mut self) {
        self.on_end();
    }
}
