//! `cargo xtask bench --cluster`: one `callplus serve` node against N nodes of one deployment,
//! back to back on one box.
//!
//! It starts its own `redis-server` and PostgreSQL (`initdb` and `postgres` from the `postgresql`
//! package, as the `postgres` user when run as root) on 127.0.0.1 in a temporary directory, then
//! for each offered rate runs `callplus bench --call-client raw --server URL[,URL…] --server-pid
//! PID[,PID…]` against (a) one node on Redis and PostgreSQL, (b) N nodes on the same Redis and
//! PostgreSQL, and (c), for reference, the default single node on SQLite. Each point gets a new
//! database and an emptied Redis, so no run sees another's calls, records or presence. The table
//! reports achieved cycles per second, failures, p99 start→received, the nodes' CPU per cycle
//! (summed over the nodes), Redis's and PostgreSQL's CPU per cycle, and the N-node figures as
//! multiples of the one-node ones. On one machine the ratio shows what routing between nodes
//! costs, not how the deployment scales: every node shares the same cores.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::procs::{Group, tree_cpu_s};
use crate::{Result, cargo, run};

/// Debian packages the comparison needs.
const PACKAGES: &[&str] = &["redis-server", "postgresql"];
/// Per-device request limits of the nodes: the load is many calls per second per device.
const UNLIMITED_REQUESTS: &str = "1000000";
/// How long a started process has to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The banner line `callplus serve` prints last.
const BANNER_END: &str = "Stop with";

/// What `--cluster` was asked to do.
#[derive(Debug, Clone, PartialEq)]
struct ClusterArgs {
    nodes: usize,
    rates: Vec<f64>,
    seconds: u64,
    users: usize,
    sqlite: bool,
}

/// Parses `--nodes 3 --rates 1000,3000 --seconds 10 --users 200 [--no-sqlite]`.
fn parse_args(args: &[String]) -> Result<ClusterArgs> {
    let mut args = args.to_vec();
    let nodes: usize = match crate::take_value(&mut args, "--nodes")? {
        Some(n) => n.parse().map_err(|_| format!("not a number of nodes: {n:?}"))?,
        None => 3,
    };
    if nodes < 2 {
        return Err(format!("--nodes must be at least 2 (got {nodes}): the comparison is 1 node against N"));
    }
    let rates = match crate::take_value(&mut args, "--rates")? {
        Some(list) => crate::rates(&list)?,
        None => vec![1_000.0, 3_000.0],
    };
    let seconds = crate::seconds(crate::take_value(&mut args, "--seconds")?, 10)?;
    if seconds == 0 {
        return Err("--seconds must be at least 1".to_owned());
    }
    let users: usize = match crate::take_value(&mut args, "--users")? {
        Some(n) => n.parse().map_err(|_| format!("not a number of users: {n:?}"))?,
        None => 200,
    };
    if users < 2 * nodes || !users.is_multiple_of(2) {
        return Err(format!("--users must be even and at least twice --nodes (got {users})"));
    }
    let sqlite = !crate::take_flag(&mut args, "--no-sqlite");
    crate::no_more(&args)?;
    Ok(ClusterArgs { nodes, rates, seconds, users, sqlite })
}

/// Which deployment a point measured.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Config {
    /// One node on Redis and PostgreSQL.
    One,
    /// This many nodes on the same Redis and PostgreSQL.
    Nodes(usize),
    /// The default single node: SQLite, no Redis.
    Sqlite,
}

impl Config {
    fn label(self) -> String {
        match self {
            Config::One => "1 node (Redis + PostgreSQL)".to_owned(),
            Config::Nodes(n) => format!("{n} nodes (Redis + PostgreSQL)"),
            Config::Sqlite => "1 node (SQLite, reference)".to_owned(),
        }
    }
}

/// One configuration's result at one offered rate.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    config: Config,
    offered: f64,
    achieved: f64,
    failed: u64,
    completed: u64,
    p99_ms: Option<f64>,
    /// CPU seconds of the nodes (summed) during the measured run.
    server_cpu_s: Option<f64>,
    /// CPU seconds of Redis and PostgreSQL during the whole bench run (connects included).
    backing_cpu_s: Option<f64>,
    /// Commands Redis processed during the bench run.
    redis_commands: Option<u64>,
    /// Transactions committed in the point's database (its whole life: schema and app too).
    postgres_commits: Option<u64>,
}

impl Point {
    /// Reads `callplus bench --json`'s report (the last line of its stdout that is a JSON object).
    fn from_bench_output(config: Config, offered: f64, stdout: &str) -> Result<Point> {
        let report = crate::bench_report(stdout)?;
        Ok(Point {
            config,
            offered,
            achieved: report["cycles_per_sec"].as_f64().ok_or("bench JSON: no cycles_per_sec")?,
            failed: report["failed"].as_u64().unwrap_or(0),
            completed: report["completed"].as_u64().unwrap_or(0),
            p99_ms: report["latency_ms"]["start_to_received"]["p99"].as_f64(),
            server_cpu_s: report["server_cpu_s"].as_f64(),
            backing_cpu_s: None,
            redis_commands: None,
            postgres_commits: None,
        })
    }

    fn per_cycle_us(&self, cpu_s: Option<f64>) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        let completed = self.completed as f64;
        cpu_s.filter(|_| self.completed > 0).map(|s| s * 1e6 / completed)
    }

    /// The nodes' CPU per completed cycle, in microseconds.
    fn server_us(&self) -> Option<f64> {
        self.per_cycle_us(self.server_cpu_s)
    }

    /// Redis's and PostgreSQL's CPU per completed cycle, in microseconds.
    fn backing_us(&self) -> Option<f64> {
        self.per_cycle_us(self.backing_cpu_s)
    }

    /// `count` per completed cycle.
    fn per_cycle(&self, count: Option<u64>) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        count.filter(|_| self.completed > 0).map(|n| n as f64 / self.completed as f64)
    }
}

/// `b / a` when both are known and `a` is not 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

fn or_dash(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// The table, as Markdown: every point in order, and on each N-node row its figures as
/// multiples of the one-node row at the same rate.
fn render_table(points: &[Point]) -> String {
    let mut out = String::new();
    out.push_str(
        "| config | offered/s | achieved/s | failed | p99 start→received | nodes' CPU per cycle \
         | Redis + PostgreSQL CPU per cycle | Redis commands / PostgreSQL commits per cycle \
         | N nodes / 1 node |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for p in points {
        let anchor =
            points.iter().find(|a| a.config == Config::One && a.offered.total_cmp(&p.offered).is_eq());
        let versus = match (p.config, anchor) {
            (Config::Nodes(_), Some(one)) => format!(
                "cycles/s {}, p99 {}, CPU per cycle {}",
                or_dash(ratio(Some(one.achieved), Some(p.achieved)), |r| format!("{r:.2}×")),
                or_dash(ratio(one.p99_ms, p.p99_ms), |r| format!("{r:.2}×")),
                or_dash(ratio(one.server_us(), p.server_us()), |r| format!("{r:.2}×")),
            ),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            p.config.label(),
            p.offered,
            p.achieved,
            p.failed,
            or_dash(p.p99_ms, |v| format!("{v:.2} ms")),
            or_dash(p.server_us(), |v| format!("{v:.0} µs")),
            or_dash(p.backing_us(), |v| format!("{v:.0} µs")),
            match (p.per_cycle(p.redis_commands), p.per_cycle(p.postgres_commits)) {
                (None, None) => "-".to_owned(),
                (redis, postgres) => format!(
                    "{} / {}",
                    or_dash(redis, |v| format!("{v:.1}")),
                    or_dash(postgres, |v| format!("{v:.2}"))
                ),
            },
            versus,
        ));
    }
    out
}

/// Runs the comparison.
pub(crate) fn compare_cluster(args: &[String]) -> Result {
    let args = parse_args(args)?;
    crate::ensure_packages(PACKAGES)?;
    let mut build = cargo();
    build.args(["build", "--release", "-p", "callplus-signal", "--bin", "callplus"]);
    run("build callplus (release)", build)?;
    let binary = crate::release_binary("callplus");
    let work = std::env::temp_dir().join(format!("callplus-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = measure(&args, &binary, &work);
    let _ = std::fs::remove_dir_all(&work);
    let points = result?;
    println!();
    print!("{}", render_table(&points));
    Ok(())
}

fn measure(args: &ClusterArgs, binary: &Path, work: &Path) -> Result<Vec<Point>> {
    let redis = Redis::start(work)?;
    let mut postgres = Postgres::start(work)?;
    eprintln!(
        "xtask: bench --cluster: Redis on 127.0.0.1:{}, PostgreSQL on 127.0.0.1:{}",
        redis.port, postgres.port
    );
    let mut points = Vec::new();
    for &rate in &args.rates {
        let mut configs = vec![Config::One, Config::Nodes(args.nodes)];
        if args.sqlite {
            configs.push(Config::Sqlite);
        }
        for config in configs {
            let point = run_point(args, binary, work, config, rate, &redis, &mut postgres)?;
            eprintln!(
                "xtask: bench --cluster: {} at {rate}/s: {:.0} cycles/s, {} failed",
                config.label(),
                point.achieved,
                point.failed
            );
            points.push(point);
        }
    }
    Ok(points)
}

fn run_point(
    args: &ClusterArgs,
    binary: &Path,
    work: &Path,
    config: Config,
    rate: f64,
    redis: &Redis,
    postgres: &mut Postgres,
) -> Result<Point> {
    let backing = match config {
        Config::Sqlite => None,
        _ => {
            redis.flush()?;
            Some(postgres.fresh_database()?)
        }
    };
    let count = match config {
        Config::Nodes(n) => n,
        Config::One | Config::Sqlite => 1,
    };
    let mut nodes = Vec::with_capacity(count);
    let mut secret = None;
    for i in 1..=count {
        let dir = work.join(format!("node-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--log", "warn"])
            .args(["--requests-per-second", UNLIMITED_REQUESTS, "--request-burst", UNLIMITED_REQUESTS])
            .args(["--max-connections", "0", "--data-dir"])
            .arg(&dir)
            .env_remove("CALLPLUS_POSTGRES")
            .env_remove("CALLPLUS_REDIS")
            .env_remove("CALLPLUS_NODE_ID");
        if let Some((db, _)) = &backing {
            cmd.args(["--postgres", db, "--redis", &redis.url(), "--node-id", &format!("n{i}")]);
        }
        // The first node on an empty database creates the app and shows its secret; the others
        // start only then, so they find that app.
        let node = Node::start(&format!("node n{i}"), &mut cmd)?;
        if secret.is_none() {
            secret = node.banner.app_secret.clone();
        }
        nodes.push(node);
    }
    let first = nodes.first().ok_or("no node")?;
    let app_key = first.banner.app_key.clone();
    let app_secret = secret.ok_or("the first node did not show the new app's secret")?;
    let urls: Vec<&str> = nodes.iter().map(|n| n.banner.grpc.as_str()).collect();
    let pids: Vec<String> = nodes.iter().map(|n| n.process.id().to_string()).collect();
    let backing_before = backing.as_ref().map(|_| redis.cpu_s() + postgres.cpu_s());
    let commands_before = backing.as_ref().and_then(|_| redis.commands_processed().ok());
    let out = Command::new(binary)
        .args(["bench", "--server", &urls.join(","), "--server-pid", &pids.join(",")])
        // `=`: a secret may begin with `-`, which would read as an option on its own.
        .arg(format!("--app-key={app_key}"))
        .arg(format!("--app-secret={app_secret}"))
        // Raw users: the load generator shares the two cores with the servers, so it is kept
        // cheap (see docs/performance.md).
        .args(["--call-client", "raw", "--users", &args.users.to_string()])
        .args(["--rate", &format!("{rate}"), "--duration", &format!("{}s", args.seconds), "--json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let backing_cpu_s = backing_before.map(|before| redis.cpu_s() + postgres.cpu_s() - before);
    let commands_after = backing.as_ref().and_then(|_| redis.commands_processed().ok());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut point = Point::from_bench_output(config, rate, &stdout).map_err(|e| {
        format!("{e} ({}; its stderr: {})", out.status, String::from_utf8_lossy(&out.stderr).trim())
    })?;
    point.backing_cpu_s = backing_cpu_s;
    point.redis_commands = commands_before.zip(commands_after).map(|(a, b)| b.saturating_sub(a));
    for node in nodes {
        if let Err(e) = node.stop() {
            eprintln!("xtask: bench --cluster: {e}");
        }
    }
    // Read once the nodes are gone: a backend reports its statistics when it exits.
    if let Some((_, name)) = &backing {
        point.postgres_commits = postgres.commits(name).ok();
    }
    Ok(point)
}

// ----- ports ------------------------------------------------------------------------------------

/// A port free on 127.0.0.1 right now (the server binds it next).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

// ----- callplus serve -----------------------------------------------------------------------------

/// What `callplus serve` says on start-up.
#[derive(Debug, Clone, PartialEq)]
struct Banner {
    grpc: String,
    app_key: String,
    /// Shown only by the node that created the app.
    app_secret: Option<String>,
}

impl Banner {
    fn parse(lines: &[String]) -> Result<Banner> {
        let value = |label: &str| {
            lines.iter().find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
        };
        Ok(Banner {
            grpc: value("gRPC (devices):").ok_or("no gRPC address in the server's banner")?,
            app_key: value("app key:").ok_or("no app key in the server's banner")?,
            app_secret: value("app secret:"),
        })
    }
}

/// A running `callplus serve`.
struct Node {
    process: Group,
    banner: Banner,
}

impl Node {
    /// Starts `cmd` and reads its banner; the rest of its stdout is drained on a thread.
    fn start(what: &str, cmd: &mut Command) -> Result<Node> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut process = Group::spawn(what, cmd, "-TERM")?;
        let stdout = process.take_stdout().ok_or("no stdout from the server")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Err(lines));
                        return;
                    }
                    Ok(_) => {
                        let done = line.contains(BANNER_END);
                        lines.push(line.trim_end().to_owned());
                        if done {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Ok(lines));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(lines)) => Ok(Node { banner: Banner::parse(&lines)?, process }),
            Ok(Err(lines)) => Err(format!("{what} exited before it was ready: {}", lines.join(" / "))),
            Err(_) => Err(format!("{what} did not print its banner within {START_TIMEOUT:?}")),
        }
    }

    /// Stops the node gracefully (SIGTERM: it finishes its storage writes).
    fn stop(mut self) -> Result {
        let pid = self.process.id();
        if self.process.stop() {
            Ok(())
        } else {
            Err(format!("node (pid {pid}) did not stop cleanly on SIGTERM"))
        }
    }
}

// ----- Redis ------------------------------------------------------------------------------------

/// A `redis-server` on 127.0.0.1, keeping no data on disk.
struct Redis {
    process: Group,
    port: u16,
}

impl Redis {
    fn start(work: &Path) -> Result<Redis> {
        let port = free_port()?;
        let dir = work.join("redis");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let redis = Redis { process: Group::spawn("redis-server", &mut cmd, "-TERM")?, port };
        let deadline = Instant::now() + START_TIMEOUT;
        while redis.command("PING").as_deref() != Ok("+PONG") {
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on port {port} within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sends one inline command and returns the first line of the answer.
    fn command(&self, command: &str) -> Result<String> {
        self.exchange(command).map(|(line, _)| line)
    }

    /// `total_commands_processed` from `INFO stats`.
    fn commands_processed(&self) -> Result<u64> {
        let (_, bulk) = self.exchange("INFO stats")?;
        info_value(&bulk, "total_commands_processed").ok_or_else(|| "no total_commands_processed".to_owned())
    }

    /// Sends one inline command; its answer's first line and, for a bulk string, its body.
    fn exchange(&self, command: &str) -> Result<(String, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        stream.write_all(format!("{command}\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => reply.push(byte[0]),
                Ok(_) => break,
                Err(e) => return Err(format!("redis: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&reply).trim_end().to_owned();
        let mut body = Vec::new();
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            body.resize(len + 2, 0);
            stream.read_exact(&mut body).map_err(|e| format!("redis: {e}"))?;
            body.truncate(len);
        }
        Ok((line, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Empties every database (between points: no presence, inbox or mark of a previous run).
    fn flush(&self) -> Result {
        match self.command("FLUSHALL")?.as_str() {
            "+OK" => Ok(()),
            other => Err(format!("redis FLUSHALL answered {other:?}")),
        }
    }

    fn cpu_s(&self) -> f64 {
        tree_cpu_s(self.process.id())
    }
}

/// The value of `key` in an `INFO` answer (`key:value` lines).
fn info_value(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

// ----- PostgreSQL -------------------------------------------------------------------------------

/// A PostgreSQL server of our own on 127.0.0.1 (trust authentication, user `postgres`).
struct Postgres {
    process: Group,
    bin: PathBuf,
    port: u16,
    next_db: u32,
}

/// The directory holding `initdb` and `postgres`: the newest `/usr/lib/postgresql/N/bin`.
fn postgres_bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no /usr/lib/postgresql/*/bin/postgres".to_owned())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Postgres {
    fn start(work: &Path) -> Result<Postgres> {
        let bin = postgres_bin()?;
        let dir = work.join("postgres");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // PostgreSQL refuses to run as root: then it runs as the `postgres` user.
        let run_as: &[&str] = if is_root() {
            &["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        } else {
            &[]
        };
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run("chown the PostgreSQL directory", chown)?;
        }
        let as_owner = |tool: &str| {
            let mut cmd = Command::new(run_as.first().copied().unwrap_or("env"));
            cmd.args(run_as.iter().skip(1)).arg(bin.join(tool));
            cmd
        };
        let data = dir.join("data");
        let out = as_owner("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let mut cmd = as_owner("postgres");
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log);
        // SIGINT: PostgreSQL's fast shutdown (connections cut, no wait for clients).
        let server = Postgres { process: Group::spawn("postgres", &mut cmd, "-INT")?, bin, port, next_db: 0 };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = crate::succeeds({
                let mut c = Command::new(server.bin.join("pg_isready"));
                c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"]);
                c
            });
            if ready {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("PostgreSQL did not start within {START_TIMEOUT:?}:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates an empty database and returns its URL and name.
    fn fresh_database(&mut self) -> Result<(String, String)> {
        self.next_db += 1;
        let name = format!("bench{}", self.next_db);
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", &name])
            .output()
            .map_err(|e| format!("cannot run createdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("createdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok((format!("postgres://postgres@127.0.0.1:{}/{name}", self.port), name))
    }

    /// Transactions committed in database `name` so far.
    fn commits(&self, name: &str) -> Result<u64> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args([
                "-tA",
                "-c",
                &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'"),
            ])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().map_err(|_| format!("psql: no commit count for {name}: {text:?}"))
    }

    fn cpu_s(&self) -> f64 {
        tree_cpu_s(self.process.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments_have_defaults_and_are_checked() {
        let defaults = parse_args(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            defaults,
            ClusterArgs { nodes: 3, rates: vec![1_000.0, 3_000.0], seconds: 10, users: 200, sqlite: true }
        );
        let given = parse_args(&args(&[
            "--nodes",
            "4",
            "--rates",
            "500, 2000",
            "--seconds",
            "5",
            "--users",
            "40",
            "--no-sqlite",
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            given,
            ClusterArgs { nodes: 4, rates: vec![500.0, 2_000.0], seconds: 5, users: 40, sqlite: false }
        );
        for bad in [
            &["--nodes", "1"][..],
            &["--rates", "1000,x"],
            &["--rates", "0"],
            &["--seconds", "0"],
            &["--users", "5"],
            &["--nodes", "3", "--users", "4"],
            &["--rates"],
            &["--frobnicate"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_banner_gives_the_address_and_the_new_apps_credentials() {
        let first = args(&[
            "callplus 0.1.0 is running",
            "  gRPC (devices):   http://127.0.0.1:40001",
            "  node id:          n1 (Redis: presence and routing between nodes)",
            "Created the default app. Its secret is shown only this once; keep it safe:",
            "  app key:    ak_1",
            "  app secret: sk_1",
            "Stop with Ctrl-C (or SIGTERM); nothing is lost.",
        ]);
        assert_eq!(
            Banner::parse(&first).ok(),
            Some(Banner {
                grpc: "http://127.0.0.1:40001".to_owned(),
                app_key: "ak_1".to_owned(),
                app_secret: Some("sk_1".to_owned()),
            })
        );
        let other = args(&["  gRPC (devices):   http://127.0.0.1:40002", "  app key:          ak_1"]);
        assert_eq!(Banner::parse(&other).ok().and_then(|b| b.app_secret), None);
        assert!(Banner::parse(&args(&["  app key: ak_1"])).is_err(), "no address");
    }

    fn bench_json(cps: f64, completed: u64, failed: u64, p99: f64, cpu: f64) -> String {
        format!(
            "readable line\n{{\"mode\":\"calls\",\"cycles_per_sec\":{cps},\"completed\":{completed},\
             \"failed\":{failed},\"latency_ms\":{{\"start_to_received\":{{\"p99\":{p99}}}}},\
             \"server_cpu_s\":{cpu}}}\n"
        )
    }

    #[test]
    fn redis_info_values_are_read_by_key() {
        let info = "# Stats\r\ntotal_connections_received:12\r\ntotal_commands_processed:4242\r\n";
        assert_eq!(info_value(info, "total_commands_processed"), Some(4242));
        assert_eq!(info_value(info, "total_commands"), None, "a prefix of a key is not the key");
        assert_eq!(info_value(info, "missing"), None);
    }

    #[test]
    fn a_point_comes_from_the_last_json_line_of_bench() {
        let p = Point::from_bench_output(Config::One, 1_000.0, &bench_json(999.5, 10_000, 2, 1.25, 2.0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.achieved, p.completed, p.failed, p.p99_ms), (999.5, 10_000, 2, Some(1.25)));
        assert_eq!(p.server_us(), Some(200.0));
        assert_eq!(p.backing_us(), None);
        assert!(Point::from_bench_output(Config::One, 1.0, "no json here\n").is_err());
        assert!(Point::from_bench_output(Config::One, 1.0, "{\"failed\":0}\n").is_err());
    }

    #[test]
    fn the_table_puts_n_nodes_against_one_node_at_the_same_rate() {
        let point = |config, offered, json: &str, backing| {
            let mut p = Point::from_bench_output(config, offered, json).unwrap_or_else(|e| panic!("{e}"));
            p.backing_cpu_s = backing;
            p.redis_commands = backing.map(|_| 160_000);
            p.postgres_commits = backing.map(|_| 5_000);
            p
        };
        let points = [
            point(Config::One, 1_000.0, &bench_json(1_000.0, 10_000, 0, 1.0, 2.0), Some(1.0)),
            point(Config::Nodes(3), 1_000.0, &bench_json(990.0, 9_900, 3, 2.5, 3.96), Some(1.98)),
            point(Config::Sqlite, 1_000.0, &bench_json(1_000.0, 10_000, 0, 0.5, 1.5), None),
            point(Config::One, 3_000.0, &bench_json(3_000.0, 30_000, 0, 2.0, 6.0), Some(3.0)),
            point(Config::Nodes(3), 3_000.0, &bench_json(1_500.0, 15_000, 0, 8.0, 6.0), Some(3.0)),
        ];
        let table = render_table(&points);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 2 + points.len(), "{table}");
        assert!(rows[0].starts_with("| config | offered/s | achieved/s |"), "{table}");
        assert_eq!(
            rows[2],
            "| 1 node (Redis + PostgreSQL) | 1000 | 1000 | 0 | 1.00 ms | 200 µs | 100 µs | 16.0 / 0.50 |  |"
        );
        assert_eq!(
            rows[3],
            "| 3 nodes (Redis + PostgreSQL) | 1000 | 990 | 3 | 2.50 ms | 400 µs | 200 µs | 16.2 / 0.51 \
             | cycles/s 0.99×, p99 2.50×, CPU per cycle 2.00× |"
        );
        assert_eq!(rows[4], "| 1 node (SQLite, reference) | 1000 | 1000 | 0 | 0.50 ms | 150 µs | - | - |  |");
        assert!(rows[6].ends_with("| cycles/s 0.50×, p99 4.00×, CPU per cycle 2.00× |"), "{table}");
    }
}
