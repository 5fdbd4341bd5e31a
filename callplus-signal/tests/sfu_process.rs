//! The SFU as its own process: a real `callplus sfu` and a real `callplus serve --sfu-url` on
//! 127.0.0.1, three media clients in a MULTI call whose media goes through that SFU process
//! (each client's one peer connection is the SFU's; everyone hears and sees everyone), the call
//! recovering when the SFU process is restarted, and a server with another media secret refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use callplus_media::inspect::{IvfFile, read_ivf};
use callplus_media::{MediaEvent, MediaKind};
use callplus_session::{CallType, MediaType};
use support::media::{
    MEDIA_WAIT, MediaParty, Server, WAIT, assert_tone, ended, first_frame, frames, received, sink_closed,
};
use support::process::{self, Banner};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::{Instant, timeout, timeout_at};

/// A running `callplus` process: its banner (stdout up to `Stop with Ctrl-C`) and its log lines.
struct Proc {
    child: tokio::process::Child,
    banner: Banner,
    log: UnboundedReceiver<String>,
}

impl Proc {
    async fn start(args: &[&str]) -> Proc {
        let mut command = process::callplus();
        command
            .args(args)
            .env("CALLPLUS_LOG", "info")
            .env_remove("RUST_LOG")
            .env_remove("CALLPLUS_MEDIA_SECRET_FILE")
            .env_remove("CALLPLUS_SFU_URL")
            .stderr(Stdio::piped());
        let (mut child, banner, lines) = process::spawn(&mut command).await;
        let (tx, log) = unbounded_channel();
        forward_lines(child.stderr.take().unwrap(), tx);
        process::drain(lines);
        Proc { child, banner, log }
    }

    fn value(&self, label: &str) -> String {
        self.banner.value(label)
    }

    /// Waits for a log line containing `needle`.
    async fn log_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout_at(deadline, self.log.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the process ended before logging {needle:?}"),
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }

    /// Waits for a log line containing every one of `needles`; as long as a media wait, since
    /// the lines awaited follow media connections.
    async fn log_line_with(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + MEDIA_WAIT;
        loop {
            match timeout_at(deadline, self.log.recv()).await {
                Ok(Some(line)) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the process ended before logging {needles:?}"),
                Err(_) => panic!("no log line with {needles:?}"),
            }
        }
    }

    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

fn forward_lines(stderr: tokio::process::ChildStderr, tx: UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
}

async fn start_sfu(listen: &str, secret: &Path) -> Proc {
    let secret = secret.to_str().unwrap();
    Proc::start(&["sfu", "--listen", listen, "--media-listen", "127.0.0.1:0", "--media-secret-file", secret])
        .await
}

async fn start_serve(data: &Path, sfu_url: &str, secret: &Path) -> Proc {
    start_serve_with(data, sfu_url, secret, &[]).await
}

async fn start_serve_with(data: &Path, sfu_url: &str, secret: &Path, more: &[&str]) -> Proc {
    let (data, secret) = (data.to_str().unwrap(), secret.to_str().unwrap());
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--data-dir",
        data,
        "--sfu-url",
        sfu_url,
        "--media-secret-file",
        secret,
    ];
    Proc::start(&args.iter().chain(more).copied().collect::<Vec<_>>()).await
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (certificate file, key file).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A status report showing exactly one connection, the SFU's.
fn only_the_sfu(e: &MediaEvent) -> bool {
    matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 1
        && s.per_peer[0].user.as_str() == callplus_signal::server::SFU_USER
        && s.per_peer[0].device.as_str() == callplus_signal::server::SFU_DEVICE)
}

/// A media party on `serve`, whose banner names its address and app.
async fn party(serve: &Proc, name: &str, tone: f64, size: (u32, u32), root: &Path) -> MediaParty {
    let server = Server {
        url: serve.value("gRPC (devices):"),
        app_key: serve.value("app key:"),
        app_secret: serve.value("app secret:"),
    };
    MediaParty::connect(&server, name, tone, size, root).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_goes_through_a_separate_sfu_process_and_survives_its_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("media.secret");
    let mut sfu = start_sfu("127.0.0.1:0", &secret).await;
    assert!(secret.exists(), "callplus sfu creates the missing secret file");
    let relay = sfu.value("relay (servers):");
    let serve = start_serve(&tmp.path().join("data"), &relay, &secret).await;
    sfu.log_line("signalling server attached").await;

    let names = ["alice", "bob", "carol"];
    let tones = [440.0, 660.0, 880.0];
    let sizes = [(320, 240), (160, 120), (240, 176)];
    let mut p = Vec::new();
    for ((name, tone), size) in names.iter().zip(tones).zip(sizes) {
        p.push(party(&serve, name, tone, size, tmp.path()).await);
    }
    let started = p[0]
        .client
        .start_call(&["bob", "carol"], CallType::Multi, MediaType::AudioVideo, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();
    for party in &mut p[1..] {
        party.expect("the invitation", received(&call)).await;
        party.client.accept(&call).await.unwrap();
    }

    // Everyone decodes everyone else's video and hears their audio, through the SFU process.
    let pairs: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    for &(i, j) in &pairs {
        p[i].expect_media(
            &format!("{}'s video at {}", names[j], names[i]),
            first_frame(names[j], MediaKind::Video),
        )
        .await;
    }
    let mut rx = HashMap::new();
    for &(i, j) in &pairs {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            rx.insert((i, j, kind), p[i].frames_from(names[j], kind).await);
        }
    }
    for &(i, j) in &pairs {
        frames(
            rx.get_mut(&(i, j, MediaKind::Video)).unwrap(),
            10,
            &format!("{}'s video at {}", names[j], names[i]),
        )
        .await;
        frames(
            rx.get_mut(&(i, j, MediaKind::Audio)).unwrap(),
            50,
            &format!("{}'s audio at {}", names[j], names[i]),
        )
        .await;
    }
    // One peer connection per client, and it is the SFU's.
    for party in &mut p {
        let name = party.name.clone();
        party.expect_media(&format!("{name}: a report of one connection, the SFU's"), only_the_sfu).await;
    }

    // The SFU process dies and comes back on the same address: the server attaches again, and
    // every participant gets a fresh route and connects to the new SFU; media flows again.
    let relay_addr = relay.strip_prefix("http://").unwrap().to_owned();
    sfu.kill().await;
    let mut sfu = start_sfu(&relay_addr, &secret).await;
    let restarted = Instant::now();
    sfu.log_line("signalling server attached").await;
    for &(i, j) in &pairs {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let what = format!("{}'s {kind:?} at {} from the dead SFU", names[j], names[i]);
            sink_closed(rx.get_mut(&(i, j, kind)).unwrap(), &what).await;
            let mut again = p[i].frames_from(names[j], kind).await;
            let n = if kind == MediaKind::Audio { 50 } else { 10 };
            frames(&mut again, n, &format!("{}'s {kind:?} at {} after the restart", names[j], names[i]))
                .await;
            rx.insert((i, j, kind), again);
        }
    }
    eprintln!(
        "sfu restarted -> every pair receives audio and video again: {} ms",
        restarted.elapsed().as_millis()
    );

    p[0].client.hangup(Some(&call)).await.unwrap();
    p[1].client.hangup(Some(&call)).await.unwrap();
    p[2].expect("the call's end", ended(&call)).await;
    for &(i, j) in &pairs {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let what = format!("{}'s {kind:?} at {} after the call", names[j], names[i]);
            sink_closed(rx.get_mut(&(i, j, kind)).unwrap(), &what).await;
        }
    }
    // SIGTERM stops the SFU process cleanly even with a server attached.
    let pid = sfu.child.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(kill.success());
    let status = timeout(WAIT, sfu.child.wait()).await.expect("the SFU stops on SIGTERM").unwrap();
    assert!(status.success(), "{status}");

    for (i, j) in pairs {
        assert_tone(&p[i].recording(names[j], "ogg"), tones[j]);
        let path = p[i].recording(names[j], "ivf");
        let IvfFile { width, height, frames, .. } = read_ivf(&path).expect("the recording parses");
        assert_eq!((u32::from(width), u32::from(height)), sizes[j], "{}", path.display());
        assert!(frames.len() >= 10, "{}: {} frames", path.display(), frames.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_media_secret_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (tmp.path().join("sfu.secret"), tmp.path().join("other.secret"));
    let mut sfu = start_sfu("127.0.0.1:0", &ours).await;
    std::fs::write(&theirs, "another-secret-that-is-long-enough-to-use-0123456789\n").unwrap();
    let mut serve = start_serve(&tmp.path().join("data"), &sfu.value("relay (servers):"), &theirs).await;
    let refusal = serve.log_line("the SFU refused this server").await;
    assert!(refusal.contains("wrong media secret"), "{refusal}");
    sfu.log_line("refused a signalling server: wrong media secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_link_runs_over_tls_and_a_server_that_does_not_trust_the_sfu_stays_out() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("sfu.secret");
    let (cert, key) = self_signed(tmp.path(), "sfu");
    let (cert_s, key_s, secret_s) = (cert.to_str().unwrap(), key.to_str().unwrap(), secret.to_str().unwrap());
    let mut sfu = Proc::start(&[
        "sfu",
        "--listen",
        "127.0.0.1:0",
        "--media-listen",
        "127.0.0.1:0",
        "--media-secret-file",
        secret_s,
        "--tls-cert",
        cert_s,
        "--tls-key",
        key_s,
    ])
    .await;
    let relay = sfu.value("relay (servers):");
    assert!(relay.starts_with("https://127.0.0.1:"), "{relay}");

    // A server that trusts another certificate never gets as far as the attach proof.
    let (stranger, _) = self_signed(tmp.path(), "stranger");
    let mut wary = start_serve_with(
        &tmp.path().join("wary"),
        &relay,
        &secret,
        &["--sfu-ca", stranger.to_str().unwrap()],
    )
    .await;
    let failure = wary.log_line("cannot attach to the SFU").await;
    assert!(failure.contains("cannot reach the SFU"), "{failure}");
    drop(wary);

    // A server that trusts the SFU's certificate attaches, and a call's media flows through it.
    let serve = start_serve_with(&tmp.path().join("data"), &relay, &secret, &["--sfu-ca", cert_s]).await;
    sfu.log_line("signalling server attached").await;
    let mut p = Vec::new();
    for (name, tone) in [("alice", 440.0), ("bob", 660.0)] {
        p.push(party(&serve, name, tone, (160, 120), tmp.path()).await);
    }
    let started = p[0]
        .client
        .start_call(&["bob"], CallType::Multi, MediaType::AudioVideo, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();
    p[1].expect("the invitation", received(&call)).await;
    p[1].client.accept(&call).await.unwrap();
    p[0].expect_media("bob's video at alice", first_frame("bob", MediaKind::Video)).await;
    p[1].expect_media("alice's video at bob", first_frame("alice", MediaKind::Video)).await;
    p[0].client.hangup(Some(&call)).await.unwrap();
    p[1].expect("the end", ended(&call)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_several_sfus_and_a_lost_sfus_call_moves_to_another() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("sfu.secret");
    let mut first = start_sfu("127.0.0.1:0", &secret).await;
    let mut second = start_sfu("127.0.0.1:0", &secret).await;
    let urls = [first.value("relay (servers):"), second.value("relay (servers):")];
    let mut serve = start_serve(&tmp.path().join("data"), &urls.join(","), &secret).await;
    // Attached as the server sees it, each of the two: placement only counts the SFUs it knows
    // are there.
    let mut unattached: Vec<&String> = urls.iter().collect();
    while !unattached.is_empty() {
        let line = serve.log_line("attached to the SFU").await;
        unattached.retain(|url| !line.contains(url.as_str()));
    }

    let names = ["alice", "bob", "carol", "dave"];
    let mut p = Vec::new();
    for (name, tone) in names.iter().zip([440.0, 660.0, 880.0, 550.0]) {
        p.push(party(&serve, name, tone, (160, 120), tmp.path()).await);
    }
    // Two calls, one per SFU: the first on the first listed, the second on the less loaded.
    let mut calls = Vec::new();
    for (a, b) in [(0, 1), (2, 3)] {
        let started = p[a]
            .client
            .start_call(&[names[b]], CallType::Multi, MediaType::AudioVideo, Default::default())
            .await
            .unwrap();
        let call = started.call_id().clone();
        p[b].expect("the invitation", received(&call)).await;
        p[b].client.accept(&call).await.unwrap();
        p[a].expect_media("video", first_frame(names[b], MediaKind::Video)).await;
        p[b].expect_media("video", first_frame(names[a], MediaKind::Video)).await;
        calls.push(call);
    }
    first.log_line_with(&["participant joined", calls[0].as_str()]).await;
    second.log_line_with(&["participant joined", calls[1].as_str()]).await;
    let mut carol_hears = p[2].frames_from("dave", MediaKind::Audio).await;
    // Every sink of the first call is taken now, so that the ones awaited after the move are
    // the new session's and not a stale one the dead session fed.
    let mut on_first = HashMap::new();
    for (i, j) in [(0, 1), (1, 0)] {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            on_first.insert((i, j, kind), p[i].frames_from(names[j], kind).await);
        }
    }

    // The first SFU dies for good: its call moves to the second, whose own call goes on.
    first.kill().await;
    for ((i, j, kind), mut old) in on_first {
        sink_closed(&mut old, &format!("{}'s {kind:?} at {} from the dead SFU", names[j], names[i])).await;
    }
    second.log_line_with(&["participant joined", calls[0].as_str()]).await;
    for (i, j) in [(0, 1), (1, 0)] {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let mut again = p[i].frames_from(names[j], kind).await;
            let what = format!("{}'s {kind:?} at {} on the second SFU", names[j], names[i]);
            frames(&mut again, if kind == MediaKind::Audio { 50 } else { 10 }, &what).await;
        }
    }
    frames(&mut carol_hears, 50, "dave's audio at carol, on the SFU that stayed").await;

    for (a, call) in [(0, &calls[0]), (2, &calls[1])] {
        p[a].client.hangup(Some(call)).await.unwrap();
        p[a + 1].expect("the end", ended(call)).await;
    }
}
