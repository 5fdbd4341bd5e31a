//! Media clients for end-to-end tests: a user whose client sends a tone and a test pattern and
//! records every remote user, with waits for its signalling and media events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callplus_media::inspect::{decode_ogg_opus, dominant_frequency};
use callplus_media::{ChannelSink, MediaEvent, MediaKind, MediaSink, RemoteFrame, TeeSink, VideoConfig};
use callplus_session::{CallId, DeviceId};
use callplus_signal::client::{
    Client, ClientOptions, Event, EventStream, MediaEventStream, MediaOptions, record_sink,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout, timeout_at};

/// Upper bound for a signalling wait.
pub const WAIT: Duration = Duration::from_secs(15);
/// Generous: two cores shared with other builds, several peer connections and VP8 encoders.
pub const MEDIA_WAIT: Duration = Duration::from_secs(40);

/// Where a party connects: a server's device URL and its app.
pub struct Server {
    pub url: String,
    pub app_key: String,
    pub app_secret: String,
}

/// Frame receivers by (remote user, kind), filled by the sink factory.
pub type Receivers = Arc<Mutex<HashMap<(String, MediaKind), UnboundedReceiver<RemoteFrame>>>>;

/// A user whose client sends a tone and a test pattern and records every remote user.
pub struct MediaParty {
    pub name: String,
    pub client: Client,
    pub events: EventStream,
    pub media: MediaEventStream,
    backlog: Vec<MediaEvent>,
    frames: Receivers,
    dir: PathBuf,
}

impl MediaParty {
    /// Connects `name` (device `{name}-phone`) to `server`, sending a `tone` Hz tone and a
    /// test pattern of `size`, recording every remote user under `root/name`.
    pub async fn connect(
        server: &Server,
        name: &str,
        tone: f64,
        size: (u32, u32),
        root: &Path,
    ) -> MediaParty {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let frames: Receivers = Arc::default();
        let (sink_dir, sink_frames) = (dir.clone(), Arc::clone(&frames));
        let video = VideoConfig { width: size.0, height: size.1, fps: 15, ..VideoConfig::default() };
        let media = MediaOptions::loopback().with_tone(tone).with_test_pattern(video).with_sinks(
            move |user, kind| {
                let (channel, rx) = ChannelSink::new();
                sink_frames.lock().unwrap().insert((user.to_string(), kind), rx);
                let file = record_sink(&sink_dir, user, kind).expect("the recording is created");
                Some(Box::new(TeeSink::new(vec![file, Box::new(channel)])) as Box<dyn MediaSink>)
            },
        );
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let token =
            callplus_signal::token::mint(&server.app_key, &server.app_secret, name, now, 3600).unwrap();
        let options = ClientOptions {
            reconnect_backoff_min: Duration::from_millis(20),
            ..ClientOptions::default().with_device_id(DeviceId::new(&format!("{name}-phone")).unwrap())
        }
        .with_media(media);
        let (client, events) = Client::connect(&server.url, &token, options).await.unwrap();
        let media = client.media_events().expect("the client has media");
        MediaParty { name: name.to_owned(), client, events, media, backlog: Vec::new(), frames, dir }
    }

    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Event) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout_at(deadline, self.events.next()).await {
                Ok(Some(event)) if pred(&event) => return,
                Ok(Some(_)) => {}
                Ok(None) => panic!("{}: events ended waiting for {what}", self.name),
                Err(_) => panic!("{}: timed out waiting for {what}", self.name),
            }
        }
    }

    pub async fn expect_media(&mut self, what: &str, pred: impl Fn(&MediaEvent) -> bool) -> MediaEvent {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + MEDIA_WAIT;
        loop {
            match timeout_at(deadline, self.media.next()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(event)) => self.backlog.push(event),
                Ok(None) => panic!("{}: media events ended waiting for {what}", self.name),
                Err(_) => {
                    panic!("{}: timed out waiting for {what}; media events: {:#?}", self.name, self.backlog)
                }
            }
        }
    }

    /// The frames of `from`'s `kind` arriving here, once the client made a sink for them.
    pub async fn frames_from(&self, from: &str, kind: MediaKind) -> UnboundedReceiver<RemoteFrame> {
        let key = (from.to_owned(), kind);
        let deadline = Instant::now() + MEDIA_WAIT;
        loop {
            if let Some(rx) = self.frames.lock().unwrap().remove(&key) {
                return rx;
            }
            assert!(Instant::now() < deadline, "{}: no {kind:?} sink for {from}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn recording(&self, from: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{from}.{ext}"))
    }
}

pub fn received(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::ReceivedCall { session, .. } if session.call_id() == call)
}

pub fn ended(call: &CallId) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::CallEnded { session, .. } if session.call_id() == call)
}

pub fn first_frame(from: &str, kind: MediaKind) -> impl Fn(&MediaEvent) -> bool + '_ {
    move |e| matches!(e, MediaEvent::FirstFrame { user, kind: k, .. } if user.as_str() == from && *k == kind)
}

pub async fn frames(rx: &mut UnboundedReceiver<RemoteFrame>, n: usize, what: &str) {
    timeout(MEDIA_WAIT, async {
        for _ in 0..n {
            rx.recv().await.unwrap_or_else(|| panic!("sink dropped while waiting for {what}"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {n} frames of {what}"));
}

/// Waits until the client dropped the sink: the recording behind it is complete.
pub async fn sink_closed(rx: &mut UnboundedReceiver<RemoteFrame>, what: &str) {
    timeout(MEDIA_WAIT, async { while rx.recv().await.is_some() {} })
        .await
        .unwrap_or_else(|_| panic!("{what}: the sink was not dropped"));
}

pub fn assert_tone(path: &Path, freq: f64) {
    let pcm = decode_ogg_opus(path).expect("the recording decodes");
    assert!(pcm.len() >= 24_000, "{} holds only {} samples", path.display(), pcm.len());
    let found = dominant_frequency(&pcm[pcm.len() - 12_000..]);
    assert!((found - freq).abs() <= 10.0, "{}: dominant {found} Hz, sent {freq} Hz", path.display());
}
