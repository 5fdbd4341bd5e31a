//! The server under test: a `callplus serve` child process (the default), a server inside this
//! process, or one already running; tokens for it; and its CPU and memory from `/proc`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use callplus_session::switchboard::SwitchboardConfig;

use super::BenchArgs;
use crate::client::TlsOptions;
use crate::server::{RunningServer, Server, ServerTls};
use crate::storage::{SqliteStorage, Storage as _, WRITER_THREAD_NAME};
use crate::token;

/// Per-device request limits given to a server the tool starts: the load is many calls per
/// second per device, far above what a person makes, and must not be throttled.
const UNLIMITED_REQUESTS: u32 = 1_000_000;
/// How long a started child has to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child has to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the tokens the tool mints.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

enum Kind {
    Child { child: Child, binary: PathBuf, _dir: tempfile::TempDir },
    InProcess { server: Box<RunningServer>, _dir: tempfile::TempDir },
    External { pids: Vec<u32> },
}

/// The server under test.
pub(crate) struct Target {
    /// Where devices connect (`http://host:port`, or `https://` with TLS); for the nodes of a
    /// deployment, their URLs comma-separated.
    pub(crate) endpoint: String,
    /// Each node's URL (one unless several `--server` URLs were given).
    endpoints: Vec<String>,
    /// How the simulated users check the server's certificate.
    pub(crate) tls: TlsOptions,
    app_key: String,
    app_secret: String,
    kind: Kind,
}

/// CPU and memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcStats {
    /// User + system CPU seconds since the process started.
    pub(crate) cpu_s: f64,
    /// Of `cpu_s`, the seconds spent in the kernel (system calls: socket reads and writes, the
    /// storage writer's page writes, wake-ups). Linux splits a process's exact run time between
    /// user and kernel in the proportion of timer-tick samples, so the split of a process that
    /// ran only a few hundred ticks can be far off; the total is exact.
    pub(crate) kernel_cpu_s: f64,
    /// Of `cpu_s`, the seconds of the server's storage writer thread (SQLite's or PostgreSQL's
    /// batches), so a report can tell durable writes from the signalling around them.
    pub(crate) storage_cpu_s: f64,
    /// Resident set size now, KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size, KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Reads the CPU and memory of `pid` (`"self"` for this process); `None` off Linux or when the
/// process is gone.
pub(crate) fn proc_stats(pid: &str) -> Option<ProcStats> {
    let (utime, stime) = cpu_ticks(&format!("/proc/{pid}/stat"))?;
    let storage_ticks = storage_writer_ticks(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(ProcStats {
        cpu_s: ticks_to_s(utime + stime),
        kernel_cpu_s: ticks_to_s(stime),
        storage_cpu_s: ticks_to_s(storage_ticks),
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

/// Linux keeps the first 15 bytes of a thread's name in its `comm`.
const COMM_BYTES: usize = 15;

/// User and system CPU ticks of a process or thread, from its `stat` file.
fn cpu_ticks(stat_path: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// CPU ticks (user + system) of the process's storage writer thread; 0 when it has none.
fn storage_writer_ticks(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let comm = WRITER_THREAD_NAME.get(..COMM_BYTES).unwrap_or(WRITER_THREAD_NAME);
    tasks
        .filter_map(Result::ok)
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter_map(|task| cpu_ticks(&task.path().join("stat").to_string_lossy()))
        .map(|(u, s)| u + s)
        .sum()
}

/// /proc reports CPU time in USER_HZ, which Linux fixes at 100 for user space.
#[allow(clippy::cast_precision_loss)]
fn ticks_to_s(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

/// The soft limit on open files of this process (a child inherits it), if known.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The `callplus serve` child's log filter: warnings, without the WebRTC stack's own
/// connection-setup chatter when it runs the SFU for `--group`.
fn log_filter(args: &BenchArgs) -> &'static str {
    if args.group.is_some() { "warn,rtc=error,rtc_ice=error,rtc_dtls=error,webrtc=error" } else { "warn" }
}

/// A self-signed certificate for 127.0.0.1 written to the run's temporary directory.
struct SelfSigned {
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

impl SelfSigned {
    fn create(dir: &Path) -> anyhow::Result<SelfSigned> {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let made = rcgen::generate_simple_self_signed(names).context("cannot make a certificate")?;
        let (cert, key) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
        let pem = made.cert.pem();
        std::fs::write(&cert, &pem)?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        Ok(SelfSigned { cert, key, pem })
    }

    fn trusted(&self) -> TlsOptions {
        TlsOptions::default().with_ca_pem(self.pem.clone())
    }
}

impl Target {
    /// Starts (or finds) the server the arguments name.
    pub(crate) async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
        if let Some(urls) = &args.server {
            let endpoints: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| if u.contains("://") { u.to_owned() } else { format!("http://{u}") })
                .collect();
            if endpoints.is_empty() {
                bail!("--server needs at least one URL");
            }
            let endpoint = endpoints.join(",");
            let (app_key, app_secret) = match (&args.app_key, &args.app_secret, &args.data_dir) {
                (Some(key), Some(secret), _) => (key.clone(), secret.clone()),
                (_, _, Some(dir)) => {
                    let storage = SqliteStorage::open(dir)
                        .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
                    let app = storage.apps()?.into_iter().next();
                    let app = app.ok_or_else(|| anyhow!("no app in {}", dir.display()))?;
                    (app.app_key, app.app_secret)
                }
                _ => bail!("--server needs --app-key and --app-secret, or --data-dir, to mint tokens"),
            };
            let tls = crate::cli::tls_options(args.tls_ca.as_deref(), args.tls_domain.as_deref())?;
            return Ok(Target {
                endpoint,
                endpoints,
                tls,
                app_key,
                app_secret,
                kind: Kind::External { pids: args.server_pid.clone() },
            });
        }
        let dir = tempfile::Builder::new().prefix("callplus-bench-").tempdir()?;
        let certificate = if args.tls { Some(SelfSigned::create(dir.path())?) } else { None };
        let tls = certificate.as_ref().map_or_else(TlsOptions::default, SelfSigned::trusted);
        if args.in_process {
            let config = SwitchboardConfig {
                requests_per_second: UNLIMITED_REQUESTS,
                request_burst: UNLIMITED_REQUESTS,
                ..SwitchboardConfig::default()
            };
            let mut config = config;
            if let Some(n) = args.group {
                config.max_video_participants = config.max_video_participants.max(n);
                config.max_audio_participants = config.max_audio_participants.max(n);
            }
            let mut builder = Server::builder()
                .data_dir(dir.path())
                .listen("127.0.0.1:0")
                .no_admin()
                .config(config)
                // The SFU on loopback (a wildcard address skips it), for every MULTI call.
                .media_listen("127.0.0.1:0")
                .mesh_max(0);
            // The load may hold more connections than the server's default bound.
            builder = builder.max_connections(0);
            if let Some(cert) = &certificate {
                builder = builder.tls(ServerTls::from_files(&cert.cert, &cert.key)?);
            }
            let server = builder.start().await.context("cannot start the server")?;
            let app = server.app_credentials().clone();
            return Ok(Target {
                endpoints: vec![server.grpc_url()],
                endpoint: server.grpc_url(),
                tls,
                app_key: app.app_key,
                app_secret: app.app_secret,
                kind: Kind::InProcess { server: Box::new(server), _dir: dir },
            });
        }
        let exe = match &args.server_binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe().context("cannot find this program to start the server")?,
        };
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "off", "--log", log_filter(args)])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--requests-per-second", &UNLIMITED_REQUESTS.to_string()])
            .args(["--request-burst", &UNLIMITED_REQUESTS.to_string()])
            .args(["--max-connections", "0"]);
        if let Some(n) = args.group {
            // The SFU on loopback (a wildcard address skips it), for every MULTI call, and a
            // call as large as asked for.
            let n = n.to_string();
            command.args(["--media-listen", "127.0.0.1:0", "--mesh-max", "0"]).args([
                "--max-video-participants",
                &n,
                "--max-audio-participants",
                &n,
            ]);
        }
        if let Some(cert) = &certificate {
            command.arg("--tls-cert").arg(&cert.cert).arg("--tls-key").arg(&cert.key);
        }
        command.args(&args.server_args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().with_context(|| format!("cannot start `{} serve`", exe.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout from the server"))?;
        let banner = tokio::task::spawn_blocking(move || read_banner(stdout));
        let banner = match tokio::time::timeout(START_TIMEOUT, banner).await {
            Ok(Ok(Ok(banner))) => banner,
            Ok(Ok(Err(e))) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!("reading the server's output failed: {e}"));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not say where it listens within {START_TIMEOUT:?}");
            }
        };
        Ok(Target {
            endpoints: vec![banner.endpoint.clone()],
            endpoint: banner.endpoint,
            tls,
            app_key: banner.app_key,
            app_secret: banner.app_secret,
            kind: Kind::Child { child, binary: exe, _dir: dir },
        })
    }

    /// What the server is, for the report.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Child { child, binary, .. } => {
                format!("`{} serve` child process, pid {}", binary.display(), child.id())
            }
            Kind::InProcess { .. } => "in this process (figures include the load generator)".to_owned(),
            Kind::External { pids } if pids.is_empty() => {
                "external (no --server-pid: no CPU/RSS figures)".to_owned()
            }
            Kind::External { pids } if self.endpoints.len() > 1 => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!(
                    "{} external nodes, pids {} (CPU and RSS summed)",
                    self.endpoints.len(),
                    pids.join(",")
                )
            }
            Kind::External { pids } => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("external, pid {}", pids.join(","))
            }
        }
    }

    /// Whether the server's process figures include the load generator.
    pub(crate) fn shares_process(&self) -> bool {
        matches!(self.kind, Kind::InProcess { .. })
    }

    /// The server process's CPU and memory, when known.
    pub(crate) fn stats(&self) -> Option<ProcStats> {
        match &self.kind {
            Kind::Child { child, .. } => proc_stats(&child.id().to_string()),
            Kind::InProcess { .. } => proc_stats("self"),
            Kind::External { pids } if pids.is_empty() => None,
            Kind::External { pids } => {
                let mut sum = ProcStats::default();
                for pid in pids {
                    let s = proc_stats(&pid.to_string())?;
                    sum.cpu_s += s.cpu_s;
                    sum.kernel_cpu_s += s.kernel_cpu_s;
                    sum.storage_cpu_s += s.storage_cpu_s;
                    sum.rss_kib += s.rss_kib;
                    sum.peak_rss_kib += s.peak_rss_kib;
                }
                Some(sum)
            }
        }
    }

    /// How many nodes the users are spread over.
    pub(crate) fn nodes(&self) -> usize {
        self.endpoints.len()
    }

    /// Where user number `i` connects: the nodes in turn.
    pub(crate) fn endpoint_for(&self, i: usize) -> &str {
        self.endpoints.get(i % self.endpoints.len().max(1)).map_or(self.endpoint.as_str(), String::as_str)
    }

    /// A token for `user`.
    pub(crate) fn token(&self, user: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        // Issued a minute early: a server whose clock is slightly behind still accepts it.
        Ok(token::mint(&self.app_key, &self.app_secret, user, now.saturating_sub(60), TOKEN_TTL_SECS)?)
    }

    /// Stops a server the tool started (gracefully: SIGTERM, then a kill after a timeout).
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        match self.kind {
            Kind::External { .. } => Ok(()),
            Kind::InProcess { server, _dir } => Ok(server.shutdown().await?),
            Kind::Child { mut child, _dir, .. } => {
                let pid = child.id().to_string();
                let termed = Command::new("kill")
                    .args(["-TERM", &pid])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !termed {
                    child.kill()?;
                }
                let waited = tokio::task::spawn_blocking(move || {
                    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
                    loop {
                        match child.try_wait() {
                            Ok(Some(status)) => return Ok(status),
                            Ok(None) if std::time::Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Ok(None) => {
                                let _ = child.kill();
                                return child.wait();
                            }
                            Err(e) => return Err(e),
                        }
                    }
                })
                .await??;
                if !waited.success() {
                    bail!("the server exited with {waited}");
                }
                Ok(())
            }
        }
    }
}

struct Banner {
    endpoint: String,
    app_key: String,
    app_secret: String,
}

/// Reads `callplus serve`'s start-up lines (address, app key and secret), then keeps draining
/// its stdout on a thread so it never blocks on a full pipe.
fn read_banner(stdout: std::process::ChildStdout) -> anyhow::Result<Banner> {
    let mut reader = BufReader::new(stdout);
    let (mut endpoint, mut app_key, mut app_secret) = (None, None, None);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the server exited before it was ready (see its log above)");
        }
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("gRPC (devices):") {
            endpoint = Some(rest.trim().to_owned());
        } else if let Some(rest) = text.strip_prefix("app key:") {
            app_key = Some(rest.trim().to_owned());
        } else if let Some(rest) = text.strip_prefix("app secret:") {
            app_secret = Some(rest.trim().to_owned());
        } else if text.starts_with("Stop with") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    match (endpoint, app_key, app_secret) {
        (Some(endpoint), Some(app_key), Some(app_secret)) => Ok(Banner { endpoint, app_key, app_secret }),
        _ => bail!("the server did not print its address and a new app's credentials"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU ticks of the calling thread.
    fn own_ticks() -> u64 {
        cpu_ticks("/proc/thread-self/stat").map_or(0, |(u, s)| u + s)
    }

    #[test]
    fn the_storage_writer_threads_cpu_is_counted_apart() {
        let before = proc_stats("self").map_or(0.0, |s| s.storage_cpu_s);
        // A thread named as the server names its writer, busy until the kernel has charged it
        // at least two ticks.
        let busy = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn(|| {
                let mut x = 0u64;
                while own_ticks() < 2 {
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                let stats = proc_stats("self");
                std::hint::black_box(x);
                stats
            })
            .unwrap_or_else(|e| panic!("cannot start a thread: {e}"));
        let stats = busy.join().unwrap_or_else(|_| panic!("the busy thread panicked"));
        let Some(stats) = stats else { panic!("/proc/self/stat unreadable") };
        assert!(stats.storage_cpu_s - before >= 0.02, "{stats:?}, before {before}");
        assert!(stats.storage_cpu_s <= stats.cpu_s && stats.kernel_cpu_s <= stats.cpu_s, "{stats:?}");
    }
}
