//! The terminal softphone: `callplus dial` and `callplus listen`.
//!
//! Both connect with a token, print every event of the connection as one readable line
//! (`[alice] call c_123 ringing at bob`) and act on the call: `dial` places one call and exits
//! when it ends (exit code 0 if it connected), `listen` waits for calls until Ctrl-C, answering
//! them automatically (`--auto-accept`) or from the keyboard (`a` + Enter accepts, `r` + Enter
//! rejects or hangs up).
//!
//! With a media flag (`--send-tone[=HZ]`, `--send-pattern`, `--record DIR`, `--media-bind ADDR`)
//! the softphone also carries real WebRTC media: it sends a sine tone and/or a VP8 test pattern
//! and writes what it receives to `DIR/<user>.ogg` / `DIR/<user>.ivf`, and prints the media
//! events (first frames, once-a-second status reports).

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Client, ClientOptions, Event, EventStream, describe_event};
#[cfg(feature = "media")]
use crate::client::{MediaEventStream, MediaOptions, describe_media_event};
use callplus_session::client::CallOptions;
use callplus_session::{CallId, CallType, DeviceId, MediaType};

/// How long to wait for the call record after a call ends before exiting.
const RECORD_LINGER: Duration = Duration::from_secs(2);

/// Where and as whom to connect.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Server address (`http://host:port`, `https://host:port` for TLS, `ws://` / `wss://` for
    /// the WebSocket transport, or `host:port`).
    #[arg(long, env = "CALLPLUS_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// PEM file of the certificate authorities to trust for an `https://` server instead of
    /// the public ones (a private CA, or the server's self-signed certificate).
    #[arg(long, env = "CALLPLUS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name the `https://` server's certificate must carry, when the address is not it.
    #[arg(long, env = "CALLPLUS_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// The user's token (mint one with `callplus token --user NAME`).
    #[arg(long, env = "CALLPLUS_TOKEN")]
    pub token: String,
    /// This device's id (random when absent).
    #[arg(long, env = "CALLPLUS_DEVICE_ID")]
    pub device_id: Option<String>,
}

/// Media flags of `dial` and `listen`; media is on when any of them is given.
#[cfg(feature = "media")]
#[derive(Debug, Clone, Default, Args)]
pub struct MediaArgs {
    /// Send a sine tone as the microphone: `--send-tone` (440 Hz) or `--send-tone=HZ`.
    #[arg(
        long,
        value_name = "HZ",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "440"
    )]
    pub send_tone: Option<f64>,
    /// Send a moving VP8 test pattern (320x240, 15 fps) as the camera in video calls.
    #[arg(long)]
    pub send_pattern: bool,
    /// Record every remote user's media to `DIR/<user>.ogg` (Opus) and `DIR/<user>.ivf` (VP8).
    #[arg(long, value_name = "DIR")]
    pub record: Option<std::path::PathBuf>,
    /// Local UDP address for the media (ICE), repeatable. Default `0.0.0.0:0`: every interface
    /// except loopback; use `127.0.0.1:0` for two terminals on one machine.
    #[arg(long, value_name = "ADDR")]
    pub media_bind: Vec<String>,
}

#[cfg(feature = "media")]
impl MediaArgs {
    /// The client's media options, `None` when no media flag is given.
    ///
    /// # Errors
    /// A bad tone frequency, or a recording directory that cannot be created.
    pub fn options(&self) -> anyhow::Result<Option<MediaOptions>> {
        if self.send_tone.is_none()
            && !self.send_pattern
            && self.record.is_none()
            && self.media_bind.is_empty()
        {
            return Ok(None);
        }
        let mut webrtc = callplus_media::WebRtcConfig::default();
        if !self.media_bind.is_empty() {
            webrtc.bind_addrs.clone_from(&self.media_bind);
        }
        let mut options = MediaOptions::new(webrtc);
        if let Some(hz) = self.send_tone {
            if !(1.0..=20_000.0).contains(&hz) {
                return Err(anyhow!("--send-tone: {hz} Hz is not between 1 and 20000"));
            }
            options = options.with_tone(hz);
        }
        if self.send_pattern {
            options = options.with_test_pattern(callplus_media::VideoConfig::default());
        }
        if let Some(dir) = &self.record {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            options = options.with_recording(dir);
        }
        Ok(Some(options))
    }
}

/// Flags of `callplus dial`.
#[derive(Debug, Clone, Args)]
pub struct DialArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
    /// Place a video call (audio only by default).
    #[arg(long)]
    pub video: bool,
    /// Ring for at most this many seconds (server default when absent; 0 rings until answered
    /// or cancelled).
    #[arg(long, value_name = "N")]
    pub timeout_secs: Option<u32>,
    /// Hang up this many seconds after the call connects (default: stay until the other side
    /// hangs up or Ctrl-C).
    #[arg(long, value_name = "N")]
    pub hangup_after_secs: Option<u64>,
    /// Data delivered to the callees with the invitation.
    #[arg(long, default_value = "")]
    pub extra: String,
    #[cfg(feature = "media")]
    #[command(flatten)]
    #[allow(missing_docs)]
    pub media: MediaArgs,
    /// The user to call; several users place a group (MULTI) call.
    #[arg(required = true, value_name = "USER")]
    pub callees: Vec<String>,
}

/// Flags of `callplus listen`.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,
    /// Accept incoming calls automatically.
    #[arg(long)]
    pub auto_accept: bool,
    /// Hang up this many seconds after a call connects.
    #[arg(long, value_name = "N")]
    pub hangup_after_secs: Option<u64>,
    /// Exit after this many calls have ended (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub exit_after_calls: Option<u32>,
    #[cfg(feature = "media")]
    #[command(flatten)]
    #[allow(missing_docs)]
    pub media: MediaArgs,
}

fn endpoint(server: &str) -> String {
    if server.contains("://") { server.to_owned() } else { format!("http://{server}") }
}

/// The media events of a client, when it has media.
#[cfg(feature = "media")]
type MediaEvents = Option<MediaEventStream>;
#[cfg(not(feature = "media"))]
type MediaEvents = Option<std::convert::Infallible>;

/// The next media event worth a line (audio levels, five per second and user, are not).
async fn next_media(media: &mut MediaEvents) -> Option<String> {
    #[cfg(feature = "media")]
    if let Some(stream) = media {
        loop {
            match stream.next().await {
                Some(callplus_media::MediaEvent::AudioLevel { .. }) => continue,
                Some(event) => return Some(describe_media_event(&event)),
                None => {
                    *media = None;
                    break;
                }
            }
        }
    }
    #[cfg(not(feature = "media"))]
    let _ = media;
    std::future::pending().await
}

async fn connect(
    args: &ConnectArgs,
    #[cfg(feature = "media")] media: &MediaArgs,
) -> anyhow::Result<(Client, EventStream, MediaEvents, String)> {
    let mut options = ClientOptions::default()
        .with_tls(super::tls_options(args.tls_ca.as_deref(), args.tls_domain.as_deref())?);
    if let Some(id) = &args.device_id {
        options.device_id = Some(DeviceId::new(id)?);
    }
    #[cfg(feature = "media")]
    {
        options.media = media.options()?;
    }
    let server = endpoint(&args.server);
    let (client, events) = Client::connect(&server, &args.token, options)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let me = client.user_id().map_or_else(|| "?".to_owned(), |u| u.to_string());
    println!("[{me}] signed in to {server} as {me} (device {})", client.device_id());
    #[cfg(feature = "media")]
    let media_events = client.media_events();
    #[cfg(not(feature = "media"))]
    let media_events = None;
    Ok((client, events, media_events, me))
}

/// Prints the events that arrived while connecting (connection state changes) and returns
/// the others, to be handled first.
fn take_backlog(me: &str, events: &mut EventStream) -> VecDeque<Event> {
    let mut backlog = VecDeque::new();
    while let Some(event) = events.try_next() {
        if matches!(event, Event::ConnectionStateChanged(_)) && backlog.is_empty() {
            print_event(me, &event);
        } else {
            backlog.push_back(event);
        }
    }
    backlog
}

/// The next event: the backlog first, then the stream.
async fn next_event(backlog: &mut VecDeque<Event>, events: &mut EventStream) -> Option<Event> {
    match backlog.pop_front() {
        Some(event) => Some(event),
        None => events.next().await,
    }
}

fn print_event(me: &str, event: &Event) {
    println!("[{me}] {}", describe_event(event));
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Prints events until the record of `call_id` arrives (or a short while passes).
async fn linger_for_record(me: &str, events: &mut EventStream, call_id: &CallId) {
    let deadline = Instant::now() + RECORD_LINGER;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        print_event(me, &event);
        if matches!(&event, Event::ReceivedCallRecord(r) if &r.call.call_id == call_id) {
            break;
        }
    }
}

/// Places a call, prints its events, and returns when it ends.
///
/// # Errors
/// When the client cannot connect, the call cannot be placed, or it ended without connecting.
pub async fn dial(args: DialArgs) -> anyhow::Result<()> {
    #[cfg(feature = "media")]
    let (client, mut events, mut media, me) = connect(&args.connect, &args.media).await?;
    #[cfg(not(feature = "media"))]
    let (client, mut events, mut media, me) = connect(&args.connect).await?;
    let mut backlog = take_backlog(&me, &mut events);
    let call_type = if args.callees.len() > 1 { CallType::Multi } else { CallType::Single };
    let media_type = if args.video { MediaType::AudioVideo } else { MediaType::Audio };
    let options = CallOptions {
        push: None,
        extra: args.extra.clone(),
        ring_timeout_ms: args.timeout_secs.map(|s| s.saturating_mul(1000)),
    };
    let started = match client.start_call(&args.callees, call_type, media_type, options).await {
        Ok(started) => started,
        Err(e) => {
            client.disconnect().await;
            return Err(anyhow!(e).context(format!("cannot call {}", args.callees.join(", "))));
        }
    };
    let call_id = started.call_id().clone();
    println!("[{me}] calling {}: call {call_id}", args.callees.join(", "));
    if !started.busy_users.is_empty() {
        let busy: Vec<_> = started.busy_users.iter().map(|u| u.as_str()).collect();
        println!("[{me}] busy in another call: {}", busy.join(", "));
    }
    let mut connected = false;
    let mut hangup_at = None;
    let mut hanging_up = false;
    let outcome = loop {
        tokio::select! {
            event = next_event(&mut backlog, &mut events) => {
                let Some(event) = event else { break None };
                print_event(&me, &event);
                match &event {
                    Event::CallConnected { session } if session.call_id() == &call_id => {
                        connected = true;
                        hangup_at = args.hangup_after_secs.map(|s| Instant::now() + Duration::from_secs(s));
                    }
                    Event::CallEnded { session, reason } if session.call_id() == &call_id => {
                        linger_for_record(&me, &mut events, &call_id).await;
                        break Some(*reason);
                    }
                    _ => {}
                }
            }
            line = next_media(&mut media) => {
                if let Some(line) = line {
                    println!("[{me}] {line}");
                }
            }
            () = sleep_until_opt(hangup_at) => {
                hangup_at = None;
                println!("[{me}] hanging up");
                if let Err(e) = client.hangup(Some(&call_id)).await {
                    println!("[{me}] hangup failed: {e}");
                }
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("cannot wait for Ctrl-C")?;
                if hanging_up {
                    break None;
                }
                hanging_up = true;
                println!("[{me}] hanging up (Ctrl-C again to quit)");
                if let Err(e) = client.hangup(Some(&call_id)).await {
                    println!("[{me}] hangup failed: {e}");
                }
            }
        }
    };
    client.disconnect().await;
    match outcome {
        Some(_) if connected => Ok(()),
        Some(reason) => Err(anyhow!(
            "call {call_id} ended without connecting: {}",
            crate::client::describe::end_reason(reason)
        )),
        None if connected => Ok(()),
        None => Err(anyhow!("the connection closed before call {call_id} ended")),
    }
}

/// What the keyboard asks for.
enum Key {
    Accept,
    Reject,
}

/// Reads `a` / `r` commands from stdin (nothing when stdin is closed or not a terminal).
fn spawn_keyboard() -> mpsc::UnboundedReceiver<Key> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let key = match line.trim().to_ascii_lowercase().as_str() {
                "a" | "accept" | "y" => Key::Accept,
                "r" | "reject" | "h" | "hangup" | "n" => Key::Reject,
                _ => continue,
            };
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for calls and prints their events until Ctrl-C (or `--exit-after-calls`).
///
/// # Errors
/// When the client cannot connect.
pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    #[cfg(feature = "media")]
    let (client, mut events, mut media, me) = connect(&args.connect, &args.media).await?;
    #[cfg(not(feature = "media"))]
    let (client, mut events, mut media, me) = connect(&args.connect).await?;
    let mut backlog = take_backlog(&me, &mut events);
    if args.auto_accept {
        println!("[{me}] waiting for calls (answering automatically); Ctrl-C to quit");
    } else {
        println!(
            "[{me}] waiting for calls; type a + Enter to accept, r + Enter to reject or hang up; Ctrl-C to quit"
        );
    }
    let mut keys = Some(spawn_keyboard());
    let mut ringing: Option<CallId> = None;
    let mut hangup_at: Option<(Instant, CallId)> = None;
    let mut ended_calls = 0u32;
    loop {
        tokio::select! {
            event = next_event(&mut backlog, &mut events) => {
                let Some(event) = event else {
                    println!("[{me}] connection closed");
                    break;
                };
                print_event(&me, &event);
                match &event {
                    Event::ReceivedCall { session, .. } => {
                        let call_id = session.call_id().clone();
                        // Tell the caller this device rings, then (maybe) answer: in that order.
                        let (c, id, auto, who) = (client.clone(), call_id.clone(), args.auto_accept, me.clone());
                        tokio::spawn(async move {
                            let _ = c.ringing(&id).await;
                            if auto {
                                answer(&c, &who, &id);
                            }
                        });
                        if !args.auto_accept {
                            println!("[{me}] type a + Enter to accept call {call_id}, r + Enter to reject");
                        }
                        ringing = Some(call_id);
                    }
                    Event::CallConnected { session } => {
                        if ringing.as_ref() == Some(session.call_id()) {
                            ringing = None;
                        }
                        if let Some(secs) = args.hangup_after_secs {
                            hangup_at = Some((Instant::now() + Duration::from_secs(secs), session.call_id().clone()));
                        }
                    }
                    Event::CallEnded { session, .. } => {
                        let call_id = session.call_id().clone();
                        if ringing.as_ref() == Some(&call_id) {
                            ringing = None;
                        }
                        if hangup_at.as_ref().is_some_and(|(_, id)| id == &call_id) {
                            hangup_at = None;
                        }
                        ended_calls += 1;
                        if args.exit_after_calls.is_some_and(|n| ended_calls >= n) {
                            linger_for_record(&me, &mut events, &call_id).await;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            line = next_media(&mut media) => {
                if let Some(line) = line {
                    println!("[{me}] {line}");
                }
            }
            key = next_key(&mut keys) => match key {
                Some(Key::Accept) => match &ringing {
                    Some(call_id) => answer(&client, &me, call_id),
                    None => println!("[{me}] no call is ringing"),
                },
                Some(Key::Reject) => {
                    let target = ringing.clone().or_else(|| client.current_call().map(|s| s.call_id().clone()));
                    match target {
                        Some(call_id) => hang_up(&client, &me, &call_id),
                        None => println!("[{me}] no call to reject or hang up"),
                    }
                }
                None => keys = None,
            },
            () = sleep_until_opt(hangup_at.as_ref().map(|(at, _)| *at)) => {
                if let Some((_, call_id)) = hangup_at.take() {
                    hang_up(&client, &me, &call_id);
                }
            }
            signal = tokio::signal::ctrl_c() => {
                signal.context("cannot wait for Ctrl-C")?;
                println!("[{me}] quitting");
                break;
            }
        }
    }
    client.disconnect().await;
    Ok(())
}

/// The next keyboard command; `None` once stdin is closed (then never again).
async fn next_key(keys: &mut Option<mpsc::UnboundedReceiver<Key>>) -> Option<Key> {
    match keys {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn answer(client: &Client, me: &str, call_id: &CallId) {
    println!("[{me}] accepting call {call_id}");
    let (client, me, call_id) = (client.clone(), me.to_owned(), call_id.clone());
    tokio::spawn(async move {
        if let Err(e) = client.accept(&call_id).await {
            println!("[{me}] accept failed: {e}");
        }
    });
}

fn hang_up(client: &Client, me: &str, call_id: &CallId) {
    println!("[{me}] hanging up call {call_id}");
    let (client, me, call_id) = (client.clone(), me.to_owned(), call_id.clone());
    tokio::spawn(async move {
        if let Err(e) = client.hangup(Some(&call_id)).await {
            println!("[{me}] hangup failed: {e}");
        }
    });
}

#[cfg(all(test, feature = "media"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Dial {
        #[command(flatten)]
        args: DialArgs,
    }

    #[test]
    fn media_flags() {
        // A bare --send-tone is 440 Hz and does not swallow the callee.
        let dial = Dial::try_parse_from(["dial", "--token", "t", "--send-tone", "bob"]).unwrap().args;
        assert_eq!(dial.media.send_tone, Some(440.0));
        assert_eq!(dial.callees, ["bob"]);
        assert!(dial.media.options().unwrap().is_some_and(|o| o.microphone.is_some() && o.sinks.is_none()));

        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("rec");
        let argv =
            ["dial", "--token", "t", "--send-tone=660", "--send-pattern", "--media-bind", "127.0.0.1:0"];
        let dial = Dial::try_parse_from(argv.into_iter().chain([
            "--record",
            record.to_str().unwrap(),
            "bob",
            "carol",
        ]))
        .unwrap()
        .args;
        assert_eq!(dial.media.send_tone, Some(660.0));
        let options = dial.media.options().unwrap().unwrap();
        assert!(options.microphone.is_some() && options.camera.is_some() && options.sinks.is_some());
        assert_eq!(options.webrtc.bind_addrs, ["127.0.0.1:0"]);
        assert!(record.is_dir(), "the recording directory is created");

        // No media flag: no media.
        let dial = Dial::try_parse_from(["dial", "--token", "t", "bob"]).unwrap().args;
        assert!(dial.media.options().unwrap().is_none());
        let dial = Dial::try_parse_from(["dial", "--token", "t", "--send-tone=0", "bob"]).unwrap().args;
        assert!(dial.media.options().is_err());
    }
}
