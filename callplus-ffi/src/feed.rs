//! App-fed local media: the samples a C app pushes as its microphone or camera, and the
//! `MediaSource` the client's media pulls them from.
//!
//! The app captures and encodes on its own clock, so the feed is what paces the source. It is
//! short and drops its oldest sample when full: while nothing is pulled (no peer connected yet,
//! device off), a live stream should resume with fresh media, not with a backlog.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use callplus_media::{EncodedSample, MediaKind, MediaSource};
use tokio::sync::Notify;

/// Samples kept while nothing pulls them: about half a second of 20 ms Opus packets.
const AUDIO_CAPACITY: usize = 25;
/// Frames kept while nothing pulls them: about half a second at 15 fps.
const VIDEO_CAPACITY: usize = 8;

/// The queue between the app's pushes and the source.
pub(crate) struct SampleFeed {
    kind: MediaKind,
    queue: Mutex<VecDeque<EncodedSample>>,
    pushed: Notify,
    /// Called when the media asks the app's encoder for a key frame.
    on_keyframe_request: Box<dyn Fn() + Send + Sync>,
}

impl SampleFeed {
    /// An empty feed of `kind`; `on_keyframe_request` tells the app (video) that a peer needs a
    /// key frame.
    pub(crate) fn new(kind: MediaKind, on_keyframe_request: impl Fn() + Send + Sync + 'static) -> Self {
        SampleFeed {
            kind,
            queue: Mutex::new(VecDeque::new()),
            pushed: Notify::new(),
            on_keyframe_request: Box::new(on_keyframe_request),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<EncodedSample>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capacity(&self) -> usize {
        match self.kind {
            MediaKind::Audio => AUDIO_CAPACITY,
            MediaKind::Video => VIDEO_CAPACITY,
        }
    }

    /// Queues a sample, dropping the oldest when full.
    pub(crate) fn push(&self, sample: EncodedSample) {
        {
            let mut queue = self.lock();
            if queue.len() >= self.capacity() {
                queue.pop_front();
            }
            queue.push_back(sample);
        }
        // A permit is kept when no source waits, so a push between the source's check and its
        // wait is not lost.
        self.pushed.notify_one();
    }

    /// Drops every queued sample (no call: they would be stale by the next one).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// How many samples wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// The next sample, waiting for the app to push one. Cancel-safe: a sample is taken only
    /// when it is returned.
    async fn next(&self) -> EncodedSample {
        loop {
            if let Some(sample) = self.lock().pop_front() {
                return sample;
            }
            self.pushed.notified().await;
        }
    }
}

/// The source a call's media pulls: one per call, all reading the client's one feed.
pub(crate) struct FedSource {
    feed: Arc<SampleFeed>,
}

impl FedSource {
    pub(crate) fn new(feed: Arc<SampleFeed>) -> Self {
        FedSource { feed }
    }
}

#[async_trait::async_trait]
impl MediaSource for FedSource {
    fn kind(&self) -> MediaKind {
        self.feed.kind
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        Some(self.feed.next().await)
    }

    /// Called when a peer connects or the device comes back on. What waits was captured
    /// before: a video peer that asked cannot decode it, and audio queued while the microphone
    /// was off must not be sent after it.
    fn request_keyframe(&mut self) {
        self.feed.clear();
        if self.feed.kind == MediaKind::Video {
            (self.feed.on_keyframe_request)();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn sample(n: u8) -> EncodedSample {
        EncodedSample { data: Bytes::from(vec![n]), duration: Duration::from_millis(20), audio_level: None }
    }

    #[tokio::test]
    async fn samples_come_out_in_order_and_the_oldest_go_when_full() {
        let feed = Arc::new(SampleFeed::new(MediaKind::Audio, || {}));
        let mut source = FedSource::new(Arc::clone(&feed));
        for n in 0..(AUDIO_CAPACITY as u8 + 3) {
            feed.push(sample(n));
        }
        assert_eq!(feed.len(), AUDIO_CAPACITY);
        assert_eq!(source.next_sample().await.unwrap().data[0], 3);
        assert_eq!(source.next_sample().await.unwrap().data[0], 4);
        feed.clear();
        assert_eq!(feed.len(), 0);
    }

    #[tokio::test]
    async fn a_waiting_source_wakes_on_push() {
        let feed = Arc::new(SampleFeed::new(MediaKind::Audio, || {}));
        let mut source = FedSource::new(Arc::clone(&feed));
        let waiting = tokio::spawn(async move { source.next_sample().await });
        tokio::task::yield_now().await;
        feed.push(sample(7));
        assert_eq!(waiting.await.unwrap().unwrap().data[0], 7);
    }

    #[test]
    fn keyframe_requests_reach_the_app_for_video_only_and_drop_what_waits() {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = |kind| {
            let asked = Arc::clone(&asked);
            Arc::new(SampleFeed::new(kind, move || {
                asked.fetch_add(1, Ordering::SeqCst);
            }))
        };
        for (kind, asked_after) in [(MediaKind::Audio, 0), (MediaKind::Video, 1)] {
            let feed = count(kind);
            feed.push(sample(1));
            FedSource::new(Arc::clone(&feed)).request_keyframe();
            assert_eq!(asked.load(Ordering::SeqCst), asked_after, "{kind:?}");
            assert_eq!(feed.len(), 0, "{kind:?}: samples from before the request are dropped");
        }
    }
}
