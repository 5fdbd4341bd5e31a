//! `callplus bench`: the load tool.
//!
//! Starts a server (by default `callplus serve` from this same binary, as a child process, so
//! the CPU and memory figures are the server's alone; `--in-process` runs it inside the load
//! generator; `--server URL` targets a running one) and drives it over real gRPC (or, with the
//! `websocket` clients, WebSocket) connections on 127.0.0.1:
//!
//! - **call cycles** (the default): `--users N` users, each a real [`Client`](crate::client::Client)
//!   on its own connection, in pairs; each pair runs full 1:1 cycles — start → the callee gets
//!   `ReceivedCall` → accept → both `CallConnected` → hang up → both `CallEnded` and both call
//!   records — as fast as it can, or at a fixed offered rate (`--rate`, cycles per second over
//!   all pairs), for `--duration`. Reported: completed cycles per second, failed calls by reason,
//!   HDR-histogram latency percentiles per step, server CPU seconds and peak RSS. Users may
//!   instead be raw streams writing the protocol's frames themselves (`--call-client raw`, a
//!   gRPC stream each; `--call-client websocket`, a WebSocket on `/v1/ws` each).
//! - **idle** (`--idle N`): connects N devices and holds them for `--duration`, reporting the
//!   server's RSS per connected device. Devices are lightweight raw gRPC streams (Hello, then a
//!   Ping per heartbeat) by default, or full clients (`--idle-client client`); several may
//!   share one HTTP/2 connection (`--streams-per-conn`) when file descriptors run short.
//! - **group call** (`--group N`, with the `media` feature): N media bots (full clients with
//!   WebRTC media on 127.0.0.1, a tone and with `--video` a small VP8 test pattern each) in one
//!   MULTI call through the server's SFU, reporting the frames each receives per second and
//!   sender, their loss, join → first remote frame percentiles, and the server's CPU per
//!   forwarded stream and memory.
//!
//! A progress line goes to stderr each second; the report goes to stdout, and with `--json`
//! its last line is one JSON object (see `docs/performance.md`).

mod calls;
#[cfg(feature = "media")]
mod group;
mod idle;
mod idle_ws;
mod raw;
mod report;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::server::config::parse_duration;

/// How idle devices connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdleClient {
    /// A bare gRPC stream per device: Hello, then Pings (cheap on the load generator).
    Raw,
    /// A full `Client` per device (engine, driver task, reconnects).
    Client,
    /// A bare WebSocket per device (`/v1/ws`, as a browser connects): Hello, then Pings.
    Websocket,
}

/// How the simulated users of call cycles talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CallClient {
    /// A full `Client` per user (engine, driver task, event stream): what an app runs.
    Client,
    /// A bare gRPC stream per user writing the protocol's frames itself: the same frames reach
    /// the server for a fraction of the load generator's CPU.
    Raw,
    /// A bare WebSocket per user (`/v1/ws`, as a browser connects) writing the same frames as
    /// `raw`: the same cycles without HTTP/2 and gRPC framing.
    Websocket,
}

/// Flags of `callplus bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Simulated users, each a client on its own gRPC connection; they call each other in pairs.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub users: usize,
    /// Offered call cycles per second over all pairs; 0 = every pair as fast as it can.
    #[arg(long, default_value_t = 0.0, value_name = "CPS")]
    pub rate: f64,
    /// How long the load runs once everyone is connected (idle mode: how long devices are held).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// A call step not done within this time fails the cycle (reason `timeout:STEP`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub step_timeout: Duration,
    /// Call cycles: how each simulated user connects (`raw` and `websocket` keep the load
    /// generator cheap).
    #[arg(long, value_enum, default_value = "client")]
    pub call_client: CallClient,
    /// Idle mode: connect N devices, hold them, report the server's RSS per device.
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
    /// Group mode: N media bots in one MULTI call through the server's SFU (needs the `media`
    /// feature); `--duration` is the measured time after everyone receives everyone.
    #[arg(long, value_name = "N", conflicts_with = "idle")]
    pub group: Option<usize>,
    /// Group mode: the bots send video (a VP8 test pattern) besides their tone.
    #[arg(long, requires = "group")]
    pub video: bool,
    /// Group mode: the bots' picture size, `WIDTHxHEIGHT` (small keeps the bots cheap).
    #[arg(long, default_value = "160x120", value_parser = parse_size, value_name = "WxH")]
    pub video_size: (u32, u32),
    /// Group mode: the bots' video frame rate.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub fps: u32,
    /// Group mode: how long the bots have to join and receive everyone's media before the
    /// measurement starts anyway.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Idle mode: how each device connects.
    #[arg(long, value_enum, default_value = "raw")]
    pub idle_client: IdleClient,
    /// Idle mode (raw devices): devices sharing one HTTP/2 connection (1 = a TCP connection each).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub streams_per_conn: usize,
    /// Connections being opened at once while users or devices connect.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub connect_concurrency: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1, .2, …); 0 = as many as
    /// the ephemeral port range needs.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub source_addrs: usize,
    /// Target this running server (`http://host:port`) instead of starting one. Several URLs,
    /// comma-separated, drive the nodes of one deployment (`serve --redis`): users are spread
    /// over them in turn (call cycles only).
    #[arg(long, value_name = "URL[,URL…]")]
    pub server: Option<String>,
    /// App key for minting tokens for `--server` (with `--app-secret`).
    #[arg(long, requires = "server", requires = "app_secret")]
    pub app_key: Option<String>,
    /// App secret for minting tokens for `--server`.
    #[arg(long, requires = "app_key", hide_env_values = true)]
    pub app_secret: Option<String>,
    /// Data directory of the `--server` (its first app mints the tokens).
    #[arg(long, requires = "server", conflicts_with = "app_key")]
    pub data_dir: Option<PathBuf>,
    /// Process id of the `--server`, to report its CPU and memory (comma-separated for several
    /// nodes: their CPU and memory are summed).
    #[arg(long, requires = "server", value_name = "PID[,PID…]", value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Run the server inside this process (its CPU and RSS figures then include the load
    /// generator's).
    #[arg(long, conflicts_with = "server")]
    pub in_process: bool,
    /// Start this `callplus` binary as the server child instead of this program: one load
    /// generator against two builds of the server (`cargo xtask bench --compare-sip --pgo`).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["server", "in_process"])]
    pub server_binary: Option<PathBuf>,
    /// Extra flag for the `callplus serve` child (repeat; e.g. `--server-arg=--busy-policy=reject`).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true, conflicts_with = "server")]
    pub server_args: Vec<String>,
    /// Serve devices over TLS (a fresh self-signed certificate for 127.0.0.1, trusted by the
    /// simulated users), to measure what encryption costs.
    #[arg(long, conflicts_with = "server")]
    pub tls: bool,
    /// PEM authorities to trust for an `https://` `--server` (its self-signed certificate, or
    /// a private CA).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub tls_ca: Option<PathBuf>,
    /// Name the `--server`'s certificate must carry, when the URL's host is not it.
    #[arg(long, value_name = "NAME", requires = "server")]
    pub tls_domain: Option<String>,
    /// Also print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses `WIDTHxHEIGHT` (even numbers, as the VP8 test pattern needs).
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid size {s:?}: use WIDTHxHEIGHT with even numbers, e.g. 160x120");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if w < 16 || h < 16 || w % 2 != 0 || h % 2 != 0 || w > 1920 || h > 1080 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Runs `callplus bench`.
///
/// # Errors
/// When the arguments are inconsistent, the server cannot be started or reached, or no user
/// or device could connect.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of cycles per second, 0 or more");
    }
    if args.idle.is_none() && args.group.is_none() && args.users < 2 {
        bail!("--users must be at least 2 (users call each other in pairs)");
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let target = target::Target::start(&args).await?;
    if target.nodes() > 1 && (args.idle.is_some() || args.group.is_some()) {
        bail!("several --server URLs drive call cycles only, not --idle or --group");
    }
    eprintln!("bench: server {} ({})", target.endpoint, target.describe());
    let result = match (args.idle, args.group) {
        (Some(n), _) => idle::run(&args, &target, n).await,
        #[cfg(feature = "media")]
        (None, Some(n)) => group::run(&args, &target, n).await,
        #[cfg(not(feature = "media"))]
        (None, Some(_)) => Err(anyhow::anyhow!(
            "--group needs media bots: build with `--features media` (libopus and libvpx)"
        )),
        (None, None) => calls::run(&args, &target).await,
    };
    let stopped = target.stop().await;
    let report = result?;
    if let Err(e) = stopped {
        eprintln!("bench: the server did not stop cleanly: {e:#}");
    }
    for line in &report.lines {
        println!("{line}");
    }
    if args.json {
        println!("{}", report.json);
    }
    Ok(())
}
