//! Remote media: per-user sinks.

use bytes::Bytes;
use callplus_session::MediaKind;
use tokio::sync::mpsc;

/// One complete remote frame, depacketized: an Opus packet or a whole VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFrame {
    /// Audio or video.
    pub kind: MediaKind,
    /// The encoded bitstream.
    pub data: Bytes,
    /// The RTP timestamp (48 kHz for Opus, 90 kHz for VP8).
    pub rtp_timestamp: u32,
    /// Whether this is a VP8 key frame (always `true` for audio).
    pub keyframe: bool,
}

/// Where a remote user's media goes: the Rust form of `setVideoView` / `playMedia`.
///
/// Called from the adapter's receive task: keep [`on_frame`](MediaSink::on_frame) short (hand
/// the frame to a decoder thread or write it to a file).
pub trait MediaSink: Send + 'static {
    /// A frame arrived. An error makes the adapter drop the sink and report
    /// `FetchRemoteMediaError(PLAY_MEDIA_FAILED)`.
    fn on_frame(&mut self, frame: &RemoteFrame) -> std::io::Result<()>;

    /// The stream ended (peer left, call stopped, sink removed). Flush files here.
    fn on_end(&mut self) {}
}

/// A sink that forwards every frame into a channel (for apps that decode elsewhere, and tests).
#[derive(Debug)]
pub struct ChannelSink {
    tx: mpsc::UnboundedSender<RemoteFrame>,
}

impl ChannelSink {
    /// A sink and the receiver of its frames. The receiver ends when the sink is dropped.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<RemoteFrame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelSink { tx }, rx)
    }
}

impl MediaSink for ChannelSink {
    fn on_frame(&mut self, frame: &RemoteFrame) -> std::io::Result<()> {
        // A dropped receiver means nobody listens any more: not an error of the media path.
        let _ = self.tx.send(frame.clone());
        Ok(())
    }
}

/// A sink that hands every frame to several sinks (e.g. a file and a player).
pub struct TeeSink {
    sinks: Vec<Box<dyn MediaSink>>,
}

impl TeeSink {
    /// Tees into these sinks, in order.
    pub fn new(sinks: Vec<Box<dyn MediaSink>>) -> Self {
        TeeSink { sinks }
    }
}

impl std::fmt::Debug for TeeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeSink").field("sinks", &self.sinks.len()).finish()
    }
}

impl MediaSink for TeeSink {
    fn on_frame(&mut self, frame: &RemoteFrame) -> std::io::Result<()> {
        for sink in &mut self.sinks {
            sink.on_frame(frame)?;
        }
        Ok(())
    }

    fn on_end(&mut self) {
        for sink in &mut self.sinks {
            sink.on_end();
        }
    }
}
