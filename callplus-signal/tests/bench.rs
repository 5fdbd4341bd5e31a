//! `callplus bench` end to end: the binary starts its own `callplus serve` child on 127.0.0.1,
//! runs briefly, and prints one JSON object on its last stdout line. Only behaviour is checked
//! (keys present, calls completed, none failed), never timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn run_bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_callplus"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .output()
        .expect("callplus bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stderr.contains("bench:"), "progress goes to stderr: {stderr}");
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

fn percentiles(v: &Value, step: &str) {
    let p = &v["latency_ms"][step];
    for key in ["p50", "p90", "p99", "max"] {
        assert!(p[key].is_number(), "latency_ms.{step}.{key} missing in {v}");
    }
}

#[test]
fn call_cycles_report_the_required_figures() {
    let v = run_bench(&["--users", "20", "--duration", "1s"]);
    for key in [
        "cycles_per_sec",
        "completed",
        "failed",
        "failed_by_reason",
        "latency_ms",
        "server_cpu_s",
        "server_peak_rss_kib",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert!(v["completed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert!(v["failed_by_reason"].as_object().unwrap().is_empty(), "{v}");
    assert!(v["cycles_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    percentiles(&v, "start_to_received");
    percentiles(&v, "accept_to_connected");
    // The server ran as a child process, so its own figures are there, with the parts of its CPU
    // spent in the kernel and on the storage writer thread.
    assert!(v["server_cpu_s"].is_number() && v["server_peak_rss_kib"].as_u64().unwrap() > 0, "{v}");
    let cpu = v["server_cpu_s"].as_f64().unwrap();
    for part in ["server_kernel_cpu_s", "server_storage_cpu_s"] {
        let part = v[part].as_f64().unwrap_or_else(|| panic!("{part} missing in {v}"));
        assert!((0.0..=cpu + 1e-9).contains(&part), "{v}");
    }
}

/// Runs call cycles with raw users over `client` framing; checks every cycle completed and
/// was timed at each step.
fn raw_cycles(client: &str) -> Value {
    raw_cycles_with(client, &[])
}

/// [`raw_cycles`], with `extra` arguments for the bench.
fn raw_cycles_with(client: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--users", "20", "--duration", "1s", "--call-client", client];
    args.extend_from_slice(extra);
    let v = run_bench(&args);
    assert_eq!(v["call_client"].as_str(), Some(client), "{v}");
    assert!(v["completed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert!(v["failed_by_reason"].as_object().unwrap().is_empty(), "{v}");
    for step in ["start_to_received", "accept_to_connected", "hangup_to_ended", "cycle"] {
        percentiles(&v, step);
        assert_eq!(v["latency_ms"][step]["count"], v["completed"], "every completed cycle timed {step}: {v}");
    }
    v
}

#[test]
fn raw_users_run_the_same_cycles() {
    let v = raw_cycles("raw");
    assert!(v["loadgen_cpu_s"].is_number(), "{v}");
}

#[test]
fn websocket_users_run_the_same_cycles() {
    // One bare WebSocket per user on /v1/ws: the same frames without HTTP/2.
    let v = raw_cycles("websocket");
    assert!(v["server_cpu_s"].is_number(), "{v}");
}

#[test]
fn a_server_on_one_worker_thread_runs_the_same_cycles() {
    // `serve --worker-threads 1`, passed to the bench's server child.
    let v = raw_cycles_with("websocket", &["--server-arg=--worker-threads=1"]);
    assert!(v["server_cpu_s"].is_number(), "{v}");
}

#[test]
fn another_binary_can_serve_for_the_load_generator() {
    // A copy of the binary under another name stands for another build: the report names the
    // server child it started, so it must be the copy.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("callplus-other-build");
    std::fs::copy(env!("CARGO_BIN_EXE_callplus"), &copy).unwrap();
    let binary = format!("--server-binary={}", copy.display());
    let v = raw_cycles_with("websocket", &[&binary]);
    let server = v["server"].as_str().unwrap();
    assert!(server.contains("callplus-other-build") && server.contains("child process"), "{v}");

    // A path that is no program is a clear error naming it, not a hang.
    let missing = dir.path().join("no-such-build");
    let out = Command::new(env!("CARGO_BIN_EXE_callplus"))
        .args(["bench", "--users", "2", "--duration", "1s"])
        .arg(format!("--server-binary={}", missing.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-build"), "{stderr}");
}

#[test]
fn a_server_refuses_zero_worker_threads() {
    let out = Command::new(env!("CARGO_BIN_EXE_callplus"))
        .args(["serve", "--worker-threads", "0", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .output()
        .expect("callplus runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

#[test]
fn an_offered_rate_is_paced() {
    let v = run_bench(&["--users", "10", "--rate", "50", "--duration", "1s"]);
    assert!(v["completed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    // Paced: 50 starts per second over all pairs (one slot of slack per pair), no more.
    assert!(v["offered"].as_u64().unwrap() <= 55, "{v}");
    assert!(v["completed"].as_u64().unwrap() <= v["offered"].as_u64().unwrap(), "{v}");
}

#[test]
fn idle_devices_are_held_and_measured() {
    let v = run_bench(&["--idle", "100", "--streams-per-conn", "10", "--duration", "1s"]);
    assert_eq!(v["connected"].as_u64(), Some(100), "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert_eq!(v["dropped"].as_u64(), Some(0), "{v}");
    assert_eq!(v["tcp_connections"].as_u64(), Some(10), "{v}");
    assert!(v["server_rss_per_device_kib"].is_number(), "{v}");
}

#[test]
fn idle_devices_are_held_over_websocket() {
    let v = run_bench(&["--idle", "20", "--idle-client", "websocket", "--duration", "1s"]);
    assert_eq!(v["idle_client"].as_str(), Some("websocket"), "{v}");
    assert_eq!(v["connected"].as_u64(), Some(20), "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert_eq!(v["dropped"].as_u64(), Some(0), "{v}");
    assert_eq!(v["tcp_connections"].as_u64(), Some(20), "{v}");
    assert!(v["server_rss_per_device_kib"].is_number(), "{v}");
}

#[test]
fn call_cycles_run_over_tls() {
    let v = run_bench(&["--users", "10", "--duration", "1s", "--tls"]);
    assert!(v["completed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert!(v["endpoint"].as_str().is_some_and(|e| e.starts_with("https://127.0.0.1:")), "{v}");
}

#[test]
fn idle_devices_are_held_over_tls() {
    // Raw streams build their own TLS channel (not through Client): all must be welcomed.
    let v = run_bench(&["--idle", "20", "--streams-per-conn", "10", "--duration", "1s", "--tls"]);
    assert_eq!(v["connected"].as_u64(), Some(20), "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert_eq!(v["tcp_connections"].as_u64(), Some(2), "{v}");
}

/// A three-party video call of media bots through the child server's SFU: every field of the
/// report is there and consistent (no timing is judged).
#[cfg(feature = "media")]
#[test]
fn a_group_call_of_media_bots_goes_through_the_sfu() {
    let v = run_bench(&["--group", "3", "--video", "--duration", "1s", "--join-timeout", "30s"]);
    assert_eq!(v["mode"], "group", "{v}");
    assert_eq!(v["participants"].as_u64(), Some(3), "{v}");
    assert_eq!(v["media_type"], "audio_video", "{v}");
    assert_eq!(v["everyone_received_everyone"], true, "{v}");
    assert!(v["failed_by_reason"].as_object().unwrap().is_empty(), "{v}");
    // Each of the three receives the other two's audio and video.
    assert_eq!(v["expected_streams"].as_u64(), Some(12), "{v}");
    assert_eq!(v["forwarded_streams"].as_u64(), Some(12), "{v}");
    let per = v["per_participant"].as_array().unwrap();
    assert_eq!(per.len(), 3, "{v}");
    for p in per {
        for key in [
            "audio_fps_min",
            "video_fps_min",
            "video_fps_mean",
            "recv_loss_pct",
            "sent_audio_fps",
            "sent_video_fps",
            "worst_share_of_sent",
        ] {
            assert!(p[key].is_number(), "{key} missing in {p}");
        }
        assert!(p["video_fps_min"].as_f64().unwrap() > 0.0, "{p}");
        let loss = p["recv_loss_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&loss), "{p}");
    }
    // One first frame per (receiver, sender) and kind, timed from the later join.
    for key in ["join_to_first_video_ms", "join_to_first_audio_ms"] {
        assert_eq!(v[key]["count"].as_u64(), Some(6), "{key}: {v}");
        assert!(v[key]["p50"].as_f64().unwrap() <= v[key]["p99"].as_f64().unwrap(), "{v}");
    }
    assert_eq!(v["join_to_first_frame_ms"], v["join_to_first_video_ms"], "{v}");
    assert_eq!(v["nominal_fps"].as_f64(), Some(15.0), "{v}");
    assert!(v["sent_fps"]["min"].as_f64().unwrap() > 0.0, "the bots' sources sent: {v}");
    assert!(v["participants_below_90pct"].as_u64().unwrap() <= 3, "{v}");
    assert!(v["participants_below_90pct_of_nominal"].as_u64().unwrap() <= 3, "{v}");
    assert!(v["received_frames_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    // The server ran as a child: its own CPU and memory, per forwarded stream.
    assert!(v["server_cpu_s"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(v["sfu_cpu_pct_per_stream"].is_number(), "{v}");
    assert!(v["server_rss_kib"].as_u64().unwrap() > 0, "{v}");
    assert!(v["sfu_rss_growth_kib"].is_number(), "{v}");
}
