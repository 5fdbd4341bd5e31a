//! `cargo xtask bench --compare-sip`: callplus against a SIP anchor, back to back on one box.
//!
//! The anchor is Kamailio as a stateful proxy (`tm`, record-routing) between two SIPp endpoints
//! running the built-in UAC and UAS scenarios (INVITE / 100 / 180 / 200 / ACK / BYE / 200); the
//! candidate is `callplus bench` (full 1:1 cycles: start, ring, accept, connect, hang-up, records)
//! against a `callplus serve` child, twice: its users on gRPC streams (HTTP/2), then on
//! WebSockets (`/v1/ws`). All run at the same offered rates on 127.0.0.1, one right after the
//! other, and the table reports each run's achieved rate, failures, p99 setup time, server CPU
//! per call and the load generator's (both SIPp endpoints; `callplus bench`), and each callplus
//! run's CPU per call as a multiple of the anchor's. Figures from
//! different moments are not comparable; ratios from one run are.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{Group, reaped_children_cpu_s, tree_cpu_s};
use crate::{Result, cargo, run};

/// Debian packages the comparison needs.
const PACKAGES: &[&str] = &["kamailio", "sip-tester"];
/// Ports on 127.0.0.1: the proxy, the UAS, the UAC.
const PROXY_PORT: u16 = 25_060;
const UAS_PORT: u16 = 25_070;
const UAC_PORT: u16 = 25_080;

/// The proxy: stateful relaying to the UAS, record-routing INVITEs; in-dialog requests go to the
/// UAS when SIPp's built-in UAC does not route them (it ignores Record-Route).
fn kamailio_config(modules: &Path) -> String {
    format!(
        r#"#!KAMAILIO
debug=0
log_stderror=yes
children=2
listen=udp:127.0.0.1:{PROXY_PORT}
auto_aliases=no
mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (!loose_route()) {{ $du = "sip:127.0.0.1:{UAS_PORT}"; }}
        t_relay();
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    if (is_method("INVITE")) {{ record_route(); }}
    $du = "sip:127.0.0.1:{UAS_PORT}";
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}
"#,
        modules = modules.display()
    )
}

/// The anchor's row label.
const ANCHOR: &str = "Kamailio + SIPp";

/// One callplus run: `callplus bench --call-client` value, the server's worker threads (`None`:
/// its default), and the table label.
type CallplusRun = (&'static str, Option<u16>, &'static str);

/// The runs of the plain release build's server: on its default workers (one per core), and on
/// one. The signalling runs on a thread of its own either way (docs/performance.md, "The
/// signalling thread"), so the two differ only in the runtime left for media and the admin
/// port; the one-worker rows show that this does not move the signalling's cost, which once it
/// did (a second worker woken for every other frame).
const CALLPLUS_CLIENTS: &[CallplusRun] = &[
    ("raw", None, "callplus (gRPC)"),
    ("raw", Some(1), "callplus (gRPC, 1 worker)"),
    ("websocket", None, "callplus (WebSocket)"),
    ("websocket", Some(1), "callplus (WebSocket, 1 worker)"),
];

/// With `--pgo`, the runs of the server built with profile-guided optimisation (`cargo xtask
/// pgo`), under the same load generator as the others (the plain release build's `callplus
/// bench`, `--server-binary`), so that only the server differs.
const PGO_CLIENTS: &[CallplusRun] =
    &[("raw", None, "callplus (gRPC, PGO)"), ("websocket", None, "callplus (WebSocket, PGO)")];

/// One side's result at one offered rate.
#[derive(Debug, Clone)]
struct Point {
    system: &'static str,
    offered: f64,
    achieved: f64,
    failed: u64,
    completed: u64,
    p99_ms: Option<f64>,
    cpu_s: f64,
    /// Of `cpu_s`, callplus's storage writer thread (durable call records; the anchor keeps none).
    storage_s: Option<f64>,
    /// The load generator's CPU in the run (the anchor: both SIPp endpoints; callplus: `callplus
    /// bench`, its server child not included). It shares the two cores with the server, so a
    /// heavier one would leave the server colder caches and less room.
    loadgen_s: Option<f64>,
}

impl Point {
    /// Server CPU per completed call, in microseconds.
    fn cpu_per_call_us(&self) -> Option<f64> {
        self.per_call_us(self.cpu_s)
    }

    /// `seconds` of CPU spread over the completed calls, in microseconds.
    fn per_call_us(&self, seconds: f64) -> Option<f64> {
        (self.completed > 0).then(|| seconds * 1e6 / self.completed as f64)
    }
}

/// What `--compare-sip` was asked to do.
#[derive(Debug, Clone, PartialEq)]
struct SipArgs {
    rates: Vec<f64>,
    seconds: u64,
    /// How many times each rate runs: each round is the anchor, then every callplus run (and
    /// one more anchor run closes the rate).
    rounds: u32,
    /// Also run the server built by `cargo xtask pgo` ([`PGO_CLIENTS`]).
    pgo: bool,
    /// Keep every core busy at the lowest priority for the whole comparison
    /// ([`keep_cores_awake`]).
    no_idle_cores: bool,
}

/// The offered rates when none are given: on a 2-core machine the anchor runs cleanly up to about
/// 1,500 calls/s and answers part of its INVITEs with `500` from 2,000/s on (docs/performance.md),
/// and a rate at which the anchor fails gives no ratio.
const DEFAULT_RATES: [f64; 2] = [1_000.0, 1_500.0];

/// Parses `--rates 1000,1500`, `--seconds 12`, `--rounds 1`, `--pgo` and `--no-idle-cores`.
fn parse_args(args: &[String]) -> Result<SipArgs> {
    let mut args = args.to_vec();
    let rates = match crate::take_value(&mut args, "--rates")? {
        Some(list) => crate::rates(&list)?,
        None => DEFAULT_RATES.to_vec(),
    };
    let seconds = crate::seconds(crate::take_value(&mut args, "--seconds")?, 12)?;
    if seconds == 0 {
        return Err("--seconds must be at least 1".to_owned());
    }
    let rounds = match crate::take_value(&mut args, "--rounds")? {
        Some(n) => n.trim().parse().ok().filter(|&n| n > 0).ok_or(format!("--rounds: not a count: {n:?}"))?,
        None => 1,
    };
    let pgo = crate::take_flag(&mut args, "--pgo");
    let no_idle_cores = crate::take_flag(&mut args, "--no-idle-cores");
    crate::no_more(&args)?;
    Ok(SipArgs { rates, seconds, rounds, pgo, no_idle_cores })
}

pub(crate) fn compare_sip(args: &[String]) -> Result {
    let SipArgs { rates, seconds, rounds, pgo, no_idle_cores } = parse_args(args)?;
    crate::ensure_packages(PACKAGES)?;
    let mut build = cargo();
    build.args(["build", "--release", "-p", "callplus-signal", "--bin", "callplus"]);
    run("build callplus (release)", build)?;
    let pgo_binary = if pgo { Some(crate::pgo::build()?) } else { None };
    let runs = callplus_runs(pgo_binary.as_deref());
    let work = std::env::temp_dir().join(format!("callplus-compare-sip-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let _spinners = if no_idle_cores { keep_cores_awake()? } else { Vec::new() };
    let mut points = Vec::new();
    for &rate in &rates {
        // Each round is the anchor, then every callplus run, at this rate, and one more anchor
        // run closes the rate: a callplus run is compared with the anchor runs on either side
        // of it, a minute apart at most (see `ratios`).
        for _ in 0..rounds {
            points.push(sip_point(&work, rate, seconds)?);
            for &((client, workers, system), server_binary) in &runs {
                points.push(callplus_point(rate, seconds, client, workers, system, server_binary)?);
            }
        }
        points.push(sip_point(&work, rate, seconds)?);
    }
    for line in table(&points) {
        println!("{line}");
    }
    if rounds > 1 {
        println!();
        for line in summary(&points) {
            println!("{line}");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Every callplus run of a round: [`CALLPLUS_CLIENTS`] on the plain build's server (no
/// `--server-binary`), then, given the PGO build, [`PGO_CLIENTS`] on that one.
fn callplus_runs(pgo_binary: Option<&Path>) -> Vec<(CallplusRun, Option<&Path>)> {
    let plain = CALLPLUS_CLIENTS.iter().map(|&run| (run, None));
    let pgo = pgo_binary.into_iter().flat_map(|b| PGO_CLIENTS.iter().map(move |&run| (run, Some(b))));
    plain.chain(pgo).collect()
}

/// One busy loop per core under `SCHED_IDLE` (`chrt --idle`), until the groups are dropped.
///
/// A core with nothing to run halts, and on a virtual machine waking a halted core costs the
/// thread that wakes it: a server's send to a sleeping client, a client's to the sleeping
/// server. At the compared rates the two cores are idle most of the time, so much of what each
/// system spends per call is that cost, and it depends on how busy the rest of the machine
/// happens to be (a cheaper load generator leaves the cores idle more often). A `SCHED_IDLE`
/// loop runs only when nothing else wants the core, so the systems measured keep the cores as
/// before, but no core halts: what remains is each system's own work (docs/performance.md,
/// "Idle cores").
///
/// Each loop also ends by itself once this process is gone (`kill -0`, a shell builtin, fails),
/// so an interrupted comparison leaves none behind.
fn keep_cores_awake() -> Result<Vec<Group>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let spin = format!("while kill -0 {} 2>/dev/null; do :; done", std::process::id());
    (0..cores)
        .map(|_| {
            spawn("a spinner at SCHED_IDLE", Command::new("chrt").args(["--idle", "0", "sh", "-c", &spin]))
        })
        .collect()
}

/// Starts `cmd` in a process group of its own, its output discarded; dropping the [`Group`]
/// kills the whole group at once (and reaps it). Kamailio forks its worker processes: killing
/// only the main one left the workers bound to the proxy's port, and the next run's SIPp
/// traffic was split between them.
fn spawn(what: &str, cmd: &mut Command) -> Result<Group> {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Group::spawn(what, cmd, "-KILL")
}

/// Waits until a socket is bound to UDP `port` (read from `/proc/net/udp`: probing with a bind of
/// our own could take the port from the process that is starting).
fn wait_for_udp(port: u16, within: Duration) -> Result {
    let deadline = Instant::now() + within;
    let suffix = format!(":{port:04X}");
    loop {
        let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        let bound = table
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(1))
            .any(|local| local.ends_with(&suffix));
        if bound {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on udp 127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sip_point(work: &Path, rate: f64, seconds: u64) -> Result<Point> {
    let modules = ["/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("tm.so").is_file())
        .ok_or("kamailio's modules (tm.so) not found")?;
    let cfg = work.join("kamailio.cfg");
    std::fs::write(&cfg, kamailio_config(&modules))
        .map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
    let check = Command::new("kamailio").arg("-c").arg("-f").arg(&cfg).output();
    if let Ok(out) = &check
        && !out.status.success()
    {
        return Err(format!("kamailio refuses the configuration: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let proxy = spawn(
        "kamailio",
        Command::new("kamailio").arg("-f").arg(&cfg).args(["-DD", "-E", "-x", "fm", "-m", "256", "-M", "16"]),
    )?;
    wait_for_udp(PROXY_PORT, Duration::from_secs(10))?;
    let port = |p: u16| p.to_string();
    let uas = spawn(
        "sipp (UAS)",
        Command::new("sipp").args(["-sn", "uas", "-i", "127.0.0.1", "-p", &port(UAS_PORT), "-nostdin"]),
    )?;
    wait_for_udp(UAS_PORT, Duration::from_secs(10))?;
    let calls = (rate * seconds as f64).round() as u64;
    let stats = work.join(format!("uac-{rate}.csv"));
    let rtt_dir = work.join(format!("rtt-{rate}"));
    std::fs::create_dir_all(&rtt_dir).map_err(|e| e.to_string())?;
    let cpu_before = tree_cpu_s(proxy.id());
    let uas_before = tree_cpu_s(uas.id());
    let uac_before = reaped_children_cpu_s();
    let start = Instant::now();
    let status = Command::new("sipp")
        .current_dir(&rtt_dir)
        .args(["-sn", "uac", &format!("127.0.0.1:{PROXY_PORT}"), "-s", "service", "-i", "127.0.0.1"])
        .args(["-p", &port(UAC_PORT), "-r", &format!("{rate}"), "-m", &calls.to_string(), "-d", "0"])
        .args(["-l", "100000", "-nostdin", "-timeout", &format!("{}s", seconds * 3), "-timeout_error"])
        // The proxy's two workers can relay a call's 180 after its 200 (UDP, one worker each);
        // SIPp's default aborts the call on that late 180 and counts it failed, which is the
        // scenario's strictness, not the proxy failing the call.
        .args(["-default_behaviors", "all,-abortunexp"])
        .args(["-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1", "-stf"])
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run sipp (UAC): {e}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_s = tree_cpu_s(proxy.id()) - cpu_before;
    // The UAC has exited and been waited for: its CPU is among this process's reaped children's.
    let loadgen_s = (tree_cpu_s(uas.id()) - uas_before) + (reaped_children_cpu_s() - uac_before);
    eprintln!("xtask: compare-sip: sipp UAC at {rate}/s exited with {status}");
    let (completed, failed) = sipp_counts(&stats)?;
    Ok(Point {
        system: ANCHOR,
        offered: rate,
        achieved: completed as f64 / elapsed.max(seconds as f64),
        failed,
        completed,
        p99_ms: sipp_p99_ms(&rtt_dir),
        cpu_s,
        storage_s: None,
        loadgen_s: Some(loadgen_s),
    })
}

/// Successful and failed calls from SIPp's statistics file (its last line is the final count).
fn sipp_counts(stats: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(stats).map_err(|e| format!("cannot read {}: {e}", stats.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or("empty SIPp statistics")?.split(';').collect();
    let last: Vec<&str> = lines.next_back().ok_or("no SIPp statistics line")?.split(';').collect();
    let column = |name: &str| -> Result<u64> {
        let i = header.iter().position(|h| *h == name).ok_or(format!("no {name} column"))?;
        last.get(i).and_then(|v| v.trim().parse().ok()).ok_or(format!("bad {name} value"))
    };
    Ok((column("SuccessfulCall(C)")?, column("FailedCall(C)")?))
}

/// The p99 of SIPp's response time 1 (INVITE → 200) from its `-trace_rtt` file, in ms.
fn sipp_p99_ms(dir: &Path) -> Option<f64> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_rtt.csv")))?;
    let text = std::fs::read_to_string(file).ok()?;
    let mut values: Vec<f64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(';').nth(2).and_then(|v| v.trim().parse().ok()))
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64) * 0.99).ceil() as usize;
    values.get(i.saturating_sub(1).min(values.len() - 1)).copied()
}

fn callplus_point(
    rate: f64,
    seconds: u64,
    client: &str,
    workers: Option<u16>,
    system: &'static str,
    server_binary: Option<&Path>,
) -> Result<Point> {
    let binary = crate::release_binary("callplus");
    let mut bench = Command::new(&binary);
    bench.args(crate::bench_cycle_args(client, rate, seconds));
    if let Some(server) = server_binary {
        bench.arg("--server-binary").arg(server);
    }
    if let Some(workers) = workers {
        bench.arg(format!("--server-arg=--worker-threads={workers}"));
    }
    let out = bench
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let report = crate::bench_report(&String::from_utf8_lossy(&out.stdout))?;
    let num = |v: &serde_json::Value| v.as_f64();
    Ok(Point {
        system,
        offered: rate,
        achieved: num(&report["cycles_per_sec"]).unwrap_or(0.0),
        failed: report["failed"].as_u64().unwrap_or(0),
        completed: report["completed"].as_u64().unwrap_or(0),
        p99_ms: num(&report["latency_ms"]["start_to_received"]["p99"]),
        cpu_s: num(&report["server_cpu_s"]).unwrap_or(0.0),
        storage_s: num(&report["server_storage_cpu_s"]),
        loadgen_s: num(&report["loadgen_cpu_s"]),
    })
}

/// Each callplus point with its CPU per call as a multiple of the anchor's: the mean of the
/// anchor's runs at the same rate just before and just after it (each round starts with one, and
/// one more closes the rate), so that the machine drifting during a round weighs on both sides
/// alike. No ratio when either of those anchor runs failed a call: it spent CPU on calls it does
/// not count.
fn ratios(points: &[Point]) -> Vec<(&Point, Option<f64>)> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.system == ANCHOR {
                return (p, None);
            }
            let anchor_at_rate = |a: &&Point| a.system == ANCHOR && a.offered == p.offered;
            let before = points.get(..i).and_then(|b| b.iter().rev().find(anchor_at_rate));
            let after = points.get(i + 1..).and_then(|a| a.iter().find(anchor_at_rate));
            (p, anchor_cpu_around(before, after).zip(p.cpu_per_call_us()).map(|(a, b)| b / a))
        })
        .collect()
}

/// The mean CPU per call of the anchor runs `before` and `after` a callplus run (`after` may be
/// missing), or `None` if `before` is missing or either failed a call or completed none.
fn anchor_cpu_around(before: Option<&Point>, after: Option<&Point>) -> Option<f64> {
    let clean =
        |a: &Point| Some(a).filter(|a| a.failed == 0).and_then(Point::cpu_per_call_us).filter(|&c| c > 0.0);
    let first = clean(before?)?;
    match after {
        None => Some(first),
        Some(after) => clean(after).map(|second| (first + second) / 2.0),
    }
}

/// The table's lines: the anchor points and the callplus points between them at the same rate,
/// each callplus point with its CPU per call as a multiple of the anchor's around it (when the
/// anchor failed no call).
fn table(points: &[Point]) -> Vec<String> {
    let mut lines = vec![
        "| system | offered/s | achieved/s | failed | p99 setup | server CPU per call | callplus / anchor CPU \
         | of which storage writer | load generator CPU per call |"
            .to_owned(),
        "|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    // Each callplus row is compared with the anchor rows around it (the same rate).
    for (p, ratio) in ratios(points) {
        let ratio = match ratio {
            _ if p.system == ANCHOR => String::new(),
            Some(r) => format!("{r:.2}×"),
            None => "-".to_owned(),
        };
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} µs"));
        lines.push(format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {ratio} | {} | {} |",
            p.system,
            p.offered,
            p.achieved,
            p.failed,
            p.p99_ms.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms")),
            us(p.cpu_per_call_us()),
            us(p.storage_s.and_then(|s| p.per_call_us(s))),
            us(p.loadgen_s.and_then(|s| p.per_call_us(s))),
        ));
    }
    lines
}

/// With several rounds: per rate and callplus run, the median of its rounds' ratios against the
/// anchor, their range, and how many rounds gave one (the anchor failed no call). A single
/// point on a shared machine moves by a quarter from run to run; the median of ratios, each
/// taken within one round, moves much less.
fn summary(points: &[Point]) -> Vec<String> {
    let mut groups: Vec<(&'static str, f64, Vec<f64>, usize)> = Vec::new();
    for (p, ratio) in ratios(points).into_iter().filter(|(p, _)| p.system != ANCHOR) {
        let i = match groups.iter().position(|g| g.0 == p.system && g.1 == p.offered) {
            Some(i) => i,
            None => {
                groups.push((p.system, p.offered, Vec::new(), 0));
                groups.len() - 1
            }
        };
        let group = &mut groups[i];
        group.3 += 1;
        group.2.extend(ratio);
    }
    let mut lines = vec![
        "| system | offered/s | median callplus / anchor CPU | range | rounds with a ratio |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    for (system, offered, mut ratios, rounds) in groups {
        ratios.sort_by(f64::total_cmp);
        let (median, range) = match (ratios.first(), ratios.last()) {
            (Some(low), Some(high)) => {
                let mid = ratios.len() / 2;
                let median =
                    if ratios.len() % 2 == 1 { ratios[mid] } else { (ratios[mid - 1] + ratios[mid]) / 2.0 };
                (format!("{median:.2}×"), format!("{low:.2}–{high:.2}×"))
            }
            _ => ("-".to_owned(), "-".to_owned()),
        };
        lines
            .push(format!("| {system} | {offered:.0} | {median} | {range} | {} of {rounds} |", ratios.len()));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of `pid` (field 41 of its `stat`; 5 is `SCHED_IDLE`).
    fn policy(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_comm = stat.rsplit_once(')')?.1;
        // Fields from the state (3rd) on; the policy is the 41st field.
        after_comm.split_whitespace().nth(41 - 3)?.parse().ok()
    }

    #[test]
    fn the_spinners_run_one_per_core_at_the_lowest_priority_until_dropped() {
        let spinners = keep_cores_awake().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spinners.len(), std::thread::available_parallelism().map_or(1, usize::from));
        let pids: Vec<u32> = spinners.iter().map(Group::id).collect();
        for &pid in &pids {
            // `chrt` sets the policy, then becomes the shell.
            let deadline = Instant::now() + Duration::from_secs(10);
            while policy(pid) != Some(5) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(policy(pid), Some(5), "spinner {pid} is not at SCHED_IDLE");
        }
        drop(spinners);
        for pid in pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "spinner {pid} outlived its group");
        }
    }

    #[test]
    fn sipp_final_counts_come_from_the_last_statistics_line() {
        let dir = std::env::temp_dir().join(format!("callplus-xtask-sipp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("stat.csv");
        std::fs::write(&file, "StartTime;SuccessfulCall(C);FailedCall(C);\nx;10;1;\nx;4858;76;\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sipp_counts(&file).ok(), Some((4858, 76)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_pgo_rows_run_the_pgo_server() {
        let plain = callplus_runs(None);
        assert_eq!(plain.len(), CALLPLUS_CLIENTS.len());
        assert!(plain.iter().all(|(_, binary)| binary.is_none()), "{plain:?}");

        let built = Path::new("/build/pgo/callplus");
        let with_pgo = callplus_runs(Some(built));
        assert_eq!(with_pgo.len(), CALLPLUS_CLIENTS.len() + PGO_CLIENTS.len());
        for ((client, workers, system), binary) in &with_pgo {
            assert_eq!(system.contains("PGO"), *binary == Some(built), "{system}: {binary:?}");
            if binary.is_some() {
                // The PGO server runs as the plain rows' default setup, each framing once.
                assert_eq!(*workers, None);
                assert!(["raw", "websocket"].contains(client), "{client}");
            }
        }
    }

    #[test]
    fn each_callplus_framing_is_compared_with_the_anchor_at_its_rate() {
        // A quarter of callplus's CPU on its storage writer.
        let point = |system: &'static str, offered, completed, failed, cpu_s: f64| Point {
            system,
            offered,
            achieved: offered,
            failed,
            completed,
            p99_ms: Some(0.5),
            cpu_s,
            storage_s: (system != ANCHOR).then_some(cpu_s / 4.0),
            // The anchor's two SIPp endpoints cost about what its proxy costs; `callplus bench`
            // less than its server.
            loadgen_s: Some(if system == ANCHOR { cpu_s } else { cpu_s / 2.0 }),
        };
        let points = [
            point("Kamailio + SIPp", 1_000.0, 10_000, 0, 1.0),
            point("callplus (gRPC)", 1_000.0, 10_000, 0, 2.5),
            point("callplus (WebSocket)", 1_000.0, 10_000, 0, 1.5),
            point("Kamailio + SIPp", 3_000.0, 30_000, 0, 3.0),
            point("callplus (gRPC)", 3_000.0, 30_000, 0, 6.0),
            point("callplus (WebSocket)", 3_000.0, 0, 0, 0.0),
            point("Kamailio + SIPp", 5_000.0, 7_000, 1_400, 6.0),
            point("callplus (gRPC)", 5_000.0, 50_000, 0, 6.0),
            point("callplus (WebSocket)", 5_000.0, 50_000, 0, 5.0),
        ];
        let lines = table(&points);
        assert_eq!(lines.len(), 2 + points.len());
        let columns = |line: &str| line.matches('|').count();
        assert!(lines.iter().all(|l| columns(l) == columns(&lines[0])), "{lines:?}");
        assert!(
            lines[2].starts_with("| Kamailio + SIPp | 1000 |")
                && lines[2].ends_with("| 100 µs |  | - | 100 µs |"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("| callplus (gRPC) | 1000 |")
                && lines[3].ends_with("| 250 µs | 2.50× | 62 µs | 125 µs |"),
            "{}",
            lines[3]
        );
        assert!(lines[4].starts_with("| callplus (WebSocket) |") && lines[4].contains("| 150 µs | 1.50× |"));
        // Each rate against its own anchor; no completed call, no ratio.
        assert!(lines[6].contains("| 200 µs | 2.00× |"), "{}", lines[6]);
        assert!(lines[7].ends_with("| - | - | - | - |"), "{}", lines[7]);
        // An anchor that failed calls gives no ratio.
        assert!(lines[9].contains("| 120 µs | - |") && lines[10].contains("| 100 µs | - |"), "{lines:?}");
    }

    #[test]
    fn arguments_have_defaults_and_are_checked() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        let defaults = parse_args(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            defaults,
            SipArgs {
                rates: vec![1_000.0, 1_500.0],
                seconds: 12,
                rounds: 1,
                pgo: false,
                no_idle_cores: false
            }
        );
        let given = parse_args(&args(&[
            "--rates",
            "2000, 5000",
            "--seconds",
            "8",
            "--rounds",
            "3",
            "--pgo",
            "--no-idle-cores",
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            given,
            SipArgs { rates: vec![2_000.0, 5_000.0], seconds: 8, rounds: 3, pgo: true, no_idle_cores: true }
        );
        for bad in [
            &["--rates", "1000,x"][..],
            &["--rates", "0"],
            &["--rates", "-5"],
            &["--seconds", "0"],
            &["--rounds", "0"],
            &["--rounds", "two"],
            &["--rounds"],
            &["--frobnicate"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn rounds_are_summed_up_as_the_median_of_ratios_against_the_anchor_runs_around_each() {
        let point = |system: &'static str, offered, failed, cpu_s: f64| Point {
            system,
            offered,
            achieved: offered,
            failed,
            completed: 10_000,
            p99_ms: None,
            cpu_s,
            storage_s: None,
            loadgen_s: None,
        };
        let (anchor, ws) = (ANCHOR, "callplus (WebSocket)");
        let points = [
            // 1,000/s: three rounds and the closing anchor run; the anchor's own CPU moves.
            point(anchor, 1_000.0, 0, 1.0),
            point(ws, 1_000.0, 0, 1.2),
            point(anchor, 1_000.0, 0, 0.8),
            point(ws, 1_000.0, 0, 1.08),
            point(anchor, 1_000.0, 0, 1.0),
            point(ws, 1_000.0, 0, 1.32),
            point(anchor, 1_000.0, 0, 1.2),
            // 3,000/s: the closing anchor run fails calls, so the last round has no ratio.
            point(anchor, 3_000.0, 0, 1.0),
            point(ws, 3_000.0, 0, 1.1),
            point(anchor, 3_000.0, 0, 1.0),
            point(ws, 3_000.0, 0, 1.1),
            point(anchor, 3_000.0, 70, 2.0),
        ];
        let lines = summary(&points);
        assert_eq!(lines.len(), 4, "{lines:?}");
        // Against the means around each run (0.9, 0.9, 1.1): ratios 1.33, 1.2, 1.2. Against the
        // run before each alone they would be 1.2, 1.35 and 1.32.
        assert_eq!(lines[2], "| callplus (WebSocket) | 1000 | 1.20× | 1.20–1.33× | 3 of 3 |");
        assert_eq!(lines[3], "| callplus (WebSocket) | 3000 | 1.10× | 1.10–1.10× | 1 of 2 |");
        let none = summary(&[point(anchor, 5_000.0, 9, 1.0), point(ws, 5_000.0, 0, 1.0)]);
        assert_eq!(none[2], "| callplus (WebSocket) | 5000 | - | - | 0 of 1 |");
        // Without a closing run, the anchor run before is the reference.
        let before_only = summary(&[point(anchor, 2_000.0, 0, 1.0), point(ws, 2_000.0, 0, 1.5)]);
        assert_eq!(before_only[2], "| callplus (WebSocket) | 2000 | 1.50× | 1.50–1.50× | 1 of 1 |");
    }

    #[test]
    fn the_proxy_relays_to_the_uas_and_record_routes() {
        let cfg = kamailio_config(Path::new("/mods"));
        assert!(cfg.contains("mpath=\"/mods/\"") && cfg.contains("record_route()"));
        assert!(cfg.contains(&format!("sip:127.0.0.1:{UAS_PORT}")));
        assert!(cfg.contains(&format!("listen=udp:127.0.0.1:{PROXY_PORT}")));
    }
}
