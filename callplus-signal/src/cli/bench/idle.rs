//! Idle devices: connect N, hold them (answering nothing but heartbeats), and measure the
//! server's memory per connected device.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::bail;
use callplus_proto::v1 as pb;
use callplus_proto::v1::signal_client::SignalClient;
use rand::Rng as _;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::report::{Reasons, Report, machine, reasons_line, round3};
use super::target::{ProcStats, Target, open_files_limit, proc_stats};
use super::{BenchArgs, IdleClient};
use crate::client::{Client, ClientOptions, EventStream, TlsOptions};

/// Waited for before the baseline and after the last connect, so the server is quiet.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for a Welcome.
pub(super) const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors kept free beyond one per connection.
const FD_MARGIN: u64 = 256;

/// Live counters.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) connected: AtomicU64,
    failed: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// What the connect tasks share.
pub(super) struct Shared {
    pub(super) counters: Counters,
    failures: Mutex<Reasons>,
    pub(super) stop: watch::Receiver<bool>,
    /// Full clients, held until the end (client mode).
    clients: Mutex<Vec<(Client, EventStream)>>,
}

impl Shared {
    pub(super) fn fail(&self, why: String) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        *self.failures.lock().unwrap_or_else(PoisonError::into_inner).entry(why).or_default() += 1;
    }
}

/// Runs idle mode and reports.
pub(crate) async fn run(args: &BenchArgs, target: &Target, n: usize) -> anyhow::Result<Report> {
    if n == 0 {
        bail!("--idle needs at least one device");
    }
    let per_conn = match args.idle_client {
        IdleClient::Raw => args.streams_per_conn.max(1),
        IdleClient::Client | IdleClient::Websocket => 1,
    };
    let ws_url = match args.idle_client {
        IdleClient::Websocket => {
            Some(super::idle_ws::websocket_url(&target.endpoint).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let conns = n.div_ceil(per_conn);
    if let Some(limit) = open_files_limit()
        && conns as u64 + FD_MARGIN > limit
    {
        bail!(
            "{conns} connections need more open files than the limit of {limit} (`ulimit -n`; the server \
             started here has the same limit): raise it, or share connections with --streams-per-conn {}",
            (n as u64).div_ceil(limit.saturating_sub(FD_MARGIN).max(1))
        );
    }
    let sources = source_addresses(args, &target.endpoint, conns);

    sleep(SETTLE).await;
    let base = target.stats();
    let self_base = proc_stats("self");
    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        failures: Mutex::new(Reasons::new()),
        stop,
        clients: Mutex::new(Vec::new()),
    });
    let tag: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(6).map(char::from).collect();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for c in 0..conns {
        let first = c * per_conn;
        let mut devices = Vec::with_capacity(per_conn);
        for i in first..(first + per_conn).min(n) {
            let user = format!("idle-{tag}-{i}");
            let token = target.token(&user)?;
            devices.push((i, token));
        }
        let source = sources.get(c % sources.len().max(1)).copied();
        let (endpoint, gate, shared) = (target.endpoint.clone(), gate.clone(), shared.clone());
        let (mode, tls, ws_url) = (args.idle_client, target.tls.clone(), ws_url.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            match (mode, ws_url) {
                (IdleClient::Websocket, Some(url)) => {
                    for (i, token) in devices {
                        super::idle_ws::connect(&url, source, i, token, &shared).await;
                    }
                }
                (IdleClient::Client, _) => connect_clients(&endpoint, &tls, devices, &shared).await,
                _ => connect_raw(&endpoint, &tls, source, devices, &shared).await,
            }
        });
    }
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            joined = set.join_next() => if joined.is_none() { break },
            _ = tick.tick() => progress(t0, n, &shared.counters, target.stats()),
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let connected = shared.counters.connected.load(Ordering::Relaxed);
    eprintln!("bench: {connected} of {n} devices connected in {connect_s:.2} s");
    if connected == 0 {
        bail!("no device connected: {}", reasons_line(&failures(&shared)));
    }

    sleep(SETTLE).await;
    let after_connect = target.stats();
    let hold_start = Instant::now();
    let hold_end = hold_start + args.duration;
    while Instant::now() < hold_end {
        tokio::select! {
            () = tokio::time::sleep_until(hold_end) => {}
            _ = tick.tick() => progress(t0, n, &shared.counters, target.stats()),
        }
    }
    let end = target.stats();
    let self_end = proc_stats("self");
    let _ = stop_tx.send(true);
    let clients = std::mem::take(&mut *shared.clients.lock().unwrap_or_else(PoisonError::into_inner));
    drop(clients);

    let failed = failures(&shared);
    let summary = Summary {
        n,
        connected,
        failed,
        dropped: shared.counters.dropped.load(Ordering::Relaxed),
        per_conn,
        conns,
        sources: sources.len().max(1),
        connect_s,
        hold_s: hold_start.elapsed().as_secs_f64(),
        server: [base, after_connect, end],
        me: [self_base, self_end],
    };
    Ok(summary.report(args, target))
}

fn failures(shared: &Shared) -> Reasons {
    shared.failures.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn progress(t0: Instant, n: usize, counters: &Counters, stats: Option<ProcStats>) {
    let rss = stats.map_or_else(String::new, |s| format!("  server RSS {} KiB", s.rss_kib));
    eprintln!(
        "bench: {:>4.0} s  devices connected {}/{n}  failed {}  dropped {}{rss}",
        t0.elapsed().as_secs_f64(),
        counters.connected.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        counters.dropped.load(Ordering::Relaxed),
    );
}

/// Loopback source addresses for `conns` connections: one unless the ephemeral port range
/// would run short (or `--source-addrs` says otherwise); only for a loopback server.
fn source_addresses(args: &BenchArgs, endpoint: &str, conns: usize) -> Vec<IpAddr> {
    let host = endpoint.split("://").nth(1).unwrap_or(endpoint).split(':').next().unwrap_or_default();
    if !(host.starts_with("127.") || host == "localhost") {
        return Vec::new();
    }
    let wanted = if args.source_addrs > 0 {
        args.source_addrs
    } else {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().filter_map(|v| v.parse::<usize>().ok());
                Some(it.next()?..=it.next()?)
            })
            .map_or(28_000, |r| r.count());
        // Keep a tenth of the range for everything else on the machine.
        let usable = (range * 9 / 10).max(1);
        if conns <= usable {
            return Vec::new();
        }
        conns.div_ceil(usable)
    };
    (0..wanted.min(250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap_or(1))))
        .collect()
}

/// Opens one HTTP/2 connection and a bare signalling stream per device on it.
async fn connect_raw(
    endpoint: &str,
    tls: &TlsOptions,
    source: Option<IpAddr>,
    devices: Vec<(usize, String)>,
    shared: &Arc<Shared>,
) {
    let endpoint = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| e.to_string()).and_then(|e| {
        let e = e.tcp_nodelay(true).connect_timeout(Duration::from_secs(30)).local_address(source);
        tls.apply(e).map_err(|e| e.message)
    });
    let channel = match endpoint {
        Ok(e) => e.connect().await,
        Err(e) => {
            for _ in &devices {
                shared.fail(format!("endpoint:{e}"));
            }
            return;
        }
    };
    let channel = match channel {
        Ok(channel) => channel,
        Err(_) => {
            for _ in &devices {
                shared.fail("tcp_connect".to_owned());
            }
            return;
        }
    };
    for (i, token) in devices {
        match open_stream(&channel, &format!("idle-{i}"), token).await {
            Ok((tx, inbound, heartbeat)) => {
                shared.counters.connected.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(hold(RawLink { tx, inbound }, heartbeat, shared.clone()));
            }
            Err(why) => shared.fail(why),
        }
    }
}

/// Sends the Hello and waits for the Welcome; returns the stream and the heartbeat interval.
pub(super) async fn open_stream(
    channel: &Channel,
    device_id: &str,
    token: String,
) -> Result<(mpsc::Sender<pb::ClientFrame>, tonic::Streaming<pb::ServerFrame>, Duration), String> {
    let mut client = SignalClient::new(channel.clone());
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::Hello {
        token,
        device_id: device_id.to_owned(),
        resume: None,
        client_version: format!("callplus-bench/{}", env!("CARGO_PKG_VERSION")),
    };
    let frame =
        pb::ClientFrame { seq: 0, ack: 0, request_id: 1, body: Some(pb::client_frame::Body::Hello(hello)) };
    tx.send(frame).await.map_err(|_| "stream_closed".to_owned())?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("grpc:{:?}", s.code()))?
        .into_inner();
    match timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Err(_) => Err("timeout:welcome".to_owned()),
        Ok(Err(s)) => Err(format!("grpc:{:?}", s.code())),
        Ok(Ok(None)) => Err("closed_before_welcome".to_owned()),
        Ok(Ok(Some(frame))) => match frame.body {
            Some(pb::server_frame::Body::Welcome(w)) => {
                Ok((tx, inbound, Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(500)))))
            }
            Some(pb::server_frame::Body::Response(r)) => {
                let code = pb::ResultCode::try_from(r.code).map_or("UNKNOWN", |c| c.as_str_name());
                Err(format!("refused:{}", code.strip_prefix("RESULT_CODE_").unwrap_or(code)))
            }
            _ => Err("unexpected_first_frame".to_owned()),
        },
    }
}

/// What holding an idle device needs of its link to the server, whatever the framing.
pub(super) trait IdleLink: Send {
    /// Sends a Ping carrying `ack`; false once the link is gone.
    async fn ping(&mut self, ack: u64) -> bool;
    /// The sequence number of the next frame from the server (0 for a frame that carries none);
    /// `None` once the link is gone.
    async fn next_seq(&mut self) -> Option<u64>;
}

/// A raw gRPC device: its request sender and its response stream.
struct RawLink {
    tx: mpsc::Sender<pb::ClientFrame>,
    inbound: tonic::Streaming<pb::ServerFrame>,
}

impl IdleLink for RawLink {
    async fn ping(&mut self, ack: u64) -> bool {
        self.tx.send(ping(ack)).await.is_ok()
    }

    async fn next_seq(&mut self) -> Option<u64> {
        self.inbound.message().await.ok().flatten().map(|frame| frame.seq)
    }
}

/// The heartbeat frame, carrying the device's ack.
pub(super) fn ping(ack: u64) -> pb::ClientFrame {
    pb::ClientFrame { seq: 0, ack, request_id: 0, body: Some(pb::client_frame::Body::Ping(pb::Ping {})) }
}

/// Holds a device: a Ping (carrying the ack) per heartbeat, until the stop signal. A link
/// lost before the stop counts as dropped.
pub(super) async fn hold(mut link: impl IdleLink, heartbeat: Duration, shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let mut ack = 0;
    // The first ping at a random point of the interval, so devices do not ping in lockstep.
    let first = heartbeat.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut tick = tokio::time::interval_at(Instant::now() + first, heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !link.ping(ack).await {
                    break;
                }
            }
            seq = link.next_seq() => match seq {
                Some(seq) => ack = ack.max(seq),
                None => break,
            },
            _ = stop.changed() => return,
        }
    }
    if !*stop.borrow() {
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects full clients, one per device, and keeps them until the end.
async fn connect_clients(
    endpoint: &str,
    tls: &TlsOptions,
    devices: Vec<(usize, String)>,
    shared: &Arc<Shared>,
) {
    for (_, token) in devices {
        match Client::connect(endpoint, &token, ClientOptions::default().with_tls(tls.clone())).await {
            Ok(held) => {
                shared.counters.connected.fetch_add(1, Ordering::Relaxed);
                shared.clients.lock().unwrap_or_else(PoisonError::into_inner).push(held);
            }
            Err(e) => {
                let name = e.code.to_proto().as_str_name();
                shared.fail(format!("connect:{}", name.strip_prefix("RESULT_CODE_").unwrap_or(name)));
            }
        }
    }
}

/// What idle mode measured.
struct Summary {
    n: usize,
    connected: u64,
    failed: Reasons,
    dropped: u64,
    per_conn: usize,
    conns: usize,
    sources: usize,
    connect_s: f64,
    hold_s: f64,
    /// Before connecting, after connecting (settled), at the end of the hold.
    server: [Option<ProcStats>; 3],
    /// This process at the baseline and at the end.
    me: [Option<ProcStats>; 2],
}

impl Summary {
    fn report(&self, args: &BenchArgs, target: &Target) -> Report {
        let [base, connected_at, end] = self.server;
        let failed: u64 = self.failed.values().sum();
        #[allow(clippy::cast_precision_loss)]
        let per_device = match (base, end) {
            (Some(b), Some(e)) => {
                Some(round3(e.rss_kib.saturating_sub(b.rss_kib) as f64 / self.connected as f64))
            }
            _ => None,
        };
        let cpu = |a: Option<ProcStats>, b: Option<ProcStats>| match (a, b) {
            (Some(a), Some(b)) => Some(round3(b.cpu_s - a.cpu_s)),
            _ => None,
        };
        let hold_cpu = cpu(connected_at, end);
        let connect_cpu = cpu(base, connected_at);
        #[allow(clippy::cast_precision_loss)]
        let connects_per_sec = round3(self.connected as f64 / self.connect_s.max(1e-9));
        let mode = match args.idle_client {
            IdleClient::Raw => "raw",
            IdleClient::Client => "client",
            IdleClient::Websocket => "websocket",
        };
        let json = json!({
            "mode": "idle",
            "devices": self.n,
            "connected": self.connected,
            "failed": failed,
            "failed_by_reason": self.failed,
            "dropped": self.dropped,
            "idle_client": mode,
            "streams_per_conn": self.per_conn,
            "tcp_connections": self.conns,
            "source_addrs": self.sources,
            "connect_s": round3(self.connect_s),
            "connects_per_sec": connects_per_sec,
            "hold_s": round3(self.hold_s),
            "server_rss_baseline_kib": base.map(|s| s.rss_kib),
            "server_rss_connected_kib": connected_at.map(|s| s.rss_kib),
            "server_rss_kib": end.map(|s| s.rss_kib),
            "server_rss_per_device_kib": per_device,
            "server_peak_rss_kib": end.map(|s| s.peak_rss_kib),
            "server_cpu_connect_s": connect_cpu,
            "server_cpu_s": hold_cpu,
            "loadgen_cpu_s": cpu(self.me[0], self.me[1]),
            "loadgen_rss_kib": self.me[1].map(|s| s.rss_kib),
            "server": target.describe(),
            "server_in_process": target.shares_process(),
            "machine": machine(),
        });
        let kib = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |k| format!("{k} KiB"));
        let secs = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2} s"));
        let lines = vec![
            format!(
                "callplus bench --idle: {} of {} {mode} devices connected over {} TCP connections ({} per connection)",
                self.connected, self.n, self.conns, self.per_conn
            ),
            format!(
                "  connect:               {:.2} s ({connects_per_sec:.0}/s), server CPU {}",
                self.connect_s,
                secs(connect_cpu)
            ),
            format!("  failed:                {failed} ({})", reasons_line(&self.failed)),
            format!("  dropped while held:    {} (held {:.1} s)", self.dropped, self.hold_s),
            format!(
                "  server RSS:            {} before, {} connected, {} at the end",
                kib(base.map(|s| s.rss_kib)),
                kib(connected_at.map(|s| s.rss_kib)),
                kib(end.map(|s| s.rss_kib))
            ),
            format!(
                "  server RSS per device: {}",
                per_device.map_or_else(|| "n/a".to_owned(), |k| format!("{k:.2} KiB"))
            ),
            format!("  server CPU while held: {}", secs(hold_cpu)),
            format!("  server:                {}", target.describe()),
        ];
        Report { lines, json }
    }
}
