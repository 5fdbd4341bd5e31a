//! Call cycles: pairs of real clients calling each other, as fast as they can or at an offered
//! rate, with per-step latency histograms.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use callplus_session::client::CallOptions;
use callplus_session::{CallId, CallType, Error, MediaType};
use rand::Rng as _;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};

use super::idle_ws::websocket_url;
use super::raw::{self, RawPair, RawParty};
use super::report::{Latency, Reasons, Report, machine, reasons_line, round3};
use super::target::{ProcStats, Target, proc_stats};
use super::{BenchArgs, CallClient};
use crate::client::{Client, ClientOptions, Event, EventStream};

/// How long recovery after a failed cycle may take before the pair carries on anyway.
const RECOVERY: Duration = Duration::from_secs(3);
/// How long clients get to say Goodbye at the end.
const DISCONNECT: Duration = Duration::from_secs(10);

/// One simulated user: a client on its own connection and its events.
struct Party {
    client: Client,
    events: EventStream,
    user: String,
}

/// A caller and its callee.
struct FullPair {
    caller: Party,
    callee: Party,
}

/// A pair of either kind of simulated user (`--call-client`).
enum Pair {
    Full(FullPair),
    /// Raw users over either framing. Boxed: a raw user holds its stream inline.
    Raw(Box<RawPair>),
}

/// Live counters for the progress line.
#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicI64,
}

/// When a pair starts its cycles.
#[derive(Clone, Copy)]
struct Plan {
    /// No cycle starts at or after this.
    deadline: Instant,
    /// The pair's first start.
    first: Instant,
    /// Time between the pair's starts; `None` = back to back.
    period: Option<Duration>,
    /// Longest wait for one step.
    step: Duration,
}

/// What pairs did: one pair's own tally, or every pair's summed with [`Tally::add`].
#[derive(Default)]
pub(super) struct Tally {
    completed: u64,
    offered: u64,
    skipped: u64,
    failed: Reasons,
    pub(super) start_to_received: Latency,
    pub(super) accept_to_connected: Latency,
    pub(super) hangup_to_ended: Latency,
    pub(super) cycle: Latency,
}

/// Runs the call-cycle load and reports.
pub(crate) async fn run(args: &BenchArgs, target: &Target) -> anyhow::Result<Report> {
    let users = args.users - args.users % 2;
    let tag: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(6).map(char::from).collect();
    let began = Instant::now();
    let mut pairs: Vec<Pair> = match args.call_client {
        CallClient::Client => {
            let parties = connect_users(args, target, &format!("bench-{tag}"), users).await?;
            neighbours(parties).map(|(caller, callee)| Pair::Full(FullPair { caller, callee })).collect()
        }
        CallClient::Raw | CallClient::Websocket => {
            let parties = connect_raw_users(args, target, &format!("bench-{tag}"), users).await?;
            neighbours(parties)
                .map(|(caller, callee)| Pair::Raw(Box::new(RawPair { caller, callee })))
                .collect()
        }
    };
    eprintln!("bench: {users} users connected in {:.2} s", began.elapsed().as_secs_f64());

    let counters = Arc::new(Counters::default());
    let n_pairs = users / 2;
    let period = (args.rate > 0.0).then(|| {
        #[allow(clippy::cast_precision_loss)]
        let secs = n_pairs as f64 / args.rate;
        Duration::from_secs_f64(secs)
    });
    let server0 = target.stats();
    let self0 = proc_stats("self");
    let t0 = Instant::now() + Duration::from_millis(20);
    let deadline = t0 + args.duration;
    let mut set = JoinSet::new();
    let mut index = 0u32;
    while let Some(pair) = pairs.pop() {
        let first = match period {
            // Starts spread evenly over one period, so the offered load is smooth.
            Some(p) => t0 + p.mul_f64(f64::from(index) / n_pairs as f64),
            None => t0,
        };
        index += 1;
        let plan = Plan { deadline, first, period, step: args.step_timeout };
        set.spawn(run_pair(pair, plan, counters.clone()));
    }

    let mut results = Vec::with_capacity(n_pairs);
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut last_done, mut last_cpu, mut last_at) = (0, server0.map(|s| s.cpu_s), t0);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(result)) => results.push(result),
                Some(Err(e)) => bail!("a load task failed: {e}"),
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let done = counters.completed.load(Ordering::Relaxed);
                let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
                #[allow(clippy::cast_precision_loss)]
                let rate = (done - last_done) as f64 / secs;
                let stats = target.stats();
                let cpu = match (stats, last_cpu) {
                    (Some(s), Some(c)) => format!("  server CPU {:.0}%", (s.cpu_s - c) / secs * 100.0),
                    _ => String::new(),
                };
                eprintln!(
                    "bench: {:>4.0} s  completed {done}  ({rate:.0}/s)  failed {}  in flight {}{cpu}",
                    now.duration_since(t0).as_secs_f64(),
                    counters.failed.load(Ordering::Relaxed),
                    counters.in_flight.load(Ordering::Relaxed),
                );
                (last_done, last_cpu, last_at) = (done, stats.map(|s| s.cpu_s), now);
            }
        }
    }
    let elapsed = t0.elapsed();
    let server1 = target.stats();
    let self1 = proc_stats("self");

    let mut total = Tally::default();
    let mut pairs = Vec::with_capacity(results.len());
    for (pair, r) in results {
        total.add(&r);
        pairs.push(pair);
    }
    disconnect(pairs).await;
    Ok(total.report(args, target, users, elapsed, (server0, server1), (self0, self1)))
}

async fn connect_users(
    args: &BenchArgs,
    target: &Target,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<Party>> {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let user = format!("{prefix}-{i}");
        let token = target.token(&user)?;
        let (endpoint, gate, tls) = (target.endpoint_for(i).to_owned(), gate.clone(), target.tls.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let connected = Client::connect(&endpoint, &token, ClientOptions::default().with_tls(tls)).await;
            (i, user, connected)
        });
    }
    let mut parties = Vec::with_capacity(n);
    let mut failed = Reasons::new();
    while let Some(joined) = set.join_next().await {
        match joined? {
            (i, user, Ok((client, events))) => parties.push((i, Party { client, events, user })),
            (_, _, Err(e)) => *failed.entry(reason("connect", &e)).or_default() += 1,
        }
    }
    if !failed.is_empty() {
        bail!("{} of {n} users could not connect: {}", n - parties.len(), reasons_line(&failed));
    }
    Ok(in_user_order(parties))
}

/// (caller, callee) pairs of neighbours in `parties`: users 0 and 1, 2 and 3, …
fn neighbours<P>(parties: Vec<P>) -> impl Iterator<Item = (P, P)> {
    let mut parties = parties.into_iter();
    std::iter::from_fn(move || Some((parties.next()?, parties.next()?)))
}

/// The parties in the order of their user numbers, not the order they finished connecting:
/// neighbours are paired, and user `i` connects to server `i` mod N
/// ([`Target::endpoint_for`]), so with several servers every pair's caller and callee are on
/// different nodes and every call crosses nodes.
fn in_user_order<P>(mut parties: Vec<(usize, P)>) -> Vec<P> {
    parties.sort_by_key(|(i, _)| *i);
    parties.into_iter().map(|(_, party)| party).collect()
}

/// Connects `n` raw users (`--call-client raw` or `websocket`).
async fn connect_raw_users(
    args: &BenchArgs,
    target: &Target,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<RawParty>> {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let user = format!("{prefix}-{i}");
        let token = target.token(&user)?;
        let endpoint = target.endpoint_for(i).to_owned();
        let ws_url = match args.call_client {
            CallClient::Websocket => Some(websocket_url(&endpoint).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        let (gate, tls) = (gate.clone(), target.tls.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let connected = match ws_url {
                Some(url) => RawParty::connect_ws(&url, user, token).await,
                None => RawParty::connect(&endpoint, &tls, user, token).await,
            };
            (i, connected)
        });
    }
    let mut parties = Vec::with_capacity(n);
    let mut failed = Reasons::new();
    while let Some(joined) = set.join_next().await {
        match joined? {
            (i, Ok(party)) => parties.push((i, party)),
            (_, Err(why)) => *failed.entry(why).or_default() += 1,
        }
    }
    if !failed.is_empty() {
        bail!("{} of {n} users could not connect: {}", n - parties.len(), reasons_line(&failed));
    }
    Ok(in_user_order(parties))
}

async fn run_pair(mut pair: Pair, plan: Plan, counters: Arc<Counters>) -> (Pair, Tally) {
    let mut r = Tally::default();
    let mut next = plan.first;
    loop {
        if next >= plan.deadline {
            break;
        }
        if let Some(period) = plan.period {
            let now = Instant::now();
            if now < next {
                sleep_until(next).await;
            } else if now >= next + period {
                // Behind by whole periods (the previous cycle overran): those starts are skipped.
                let behind = now.duration_since(next).as_secs_f64() / period.as_secs_f64();
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let missed = (behind.floor() as u32).max(1);
                r.offered += u64::from(missed);
                r.skipped += u64::from(missed);
                next += period * missed;
                if next >= plan.deadline {
                    break;
                }
            }
            next += period;
        } else {
            next = Instant::now();
        }
        r.offered += 1;
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = match &mut pair {
            Pair::Full(pair) => cycle(pair, plan.step, &mut r).await,
            Pair::Raw(pair) => raw::cycle(pair, plan.step, &mut r).await,
        };
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                r.completed += 1;
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                *r.failed.entry(why).or_default() += 1;
                counters.failed.fetch_add(1, Ordering::Relaxed);
                let recovered = match &mut pair {
                    Pair::Full(pair) => recover(pair).await,
                    Pair::Raw(pair) => raw::recover(pair, RECOVERY).await,
                };
                if !recovered {
                    // A client stopped: this pair is out of the run.
                    break;
                }
            }
        }
    }
    (pair, r)
}

/// `step:CODE` for a refused request.
fn reason(step: &str, e: &Error) -> String {
    let name = e.code.to_proto().as_str_name();
    format!("{step}:{}", name.strip_prefix("RESULT_CODE_").unwrap_or(name))
}

/// Waits for the first event `pred` decides on; returns its value and when it was seen.
async fn wait<T>(
    events: &mut EventStream,
    mut pred: impl FnMut(&Event) -> Option<Result<T, String>>,
) -> Result<(T, Instant), String> {
    loop {
        let Some(event) = events.next().await else { return Err("disconnected".to_owned()) };
        if let Some(decided) = pred(&event) {
            return decided.map(|v| (v, Instant::now()));
        }
    }
}

/// Runs `f` within `limit`, failing with `timeout:STEP`.
pub(super) async fn in_time<T>(
    limit: Duration,
    step: &str,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    timeout(limit, f).await.unwrap_or_else(|_| Err(format!("timeout:{step}")))
}

/// Decides on `CallConnected` of `call_id` (an end before it fails the cycle).
fn connected(call_id: &CallId) -> impl FnMut(&Event) -> Option<Result<(), String>> + '_ {
    move |event| match event {
        Event::CallConnected { session } if session.call_id() == call_id => Some(Ok(())),
        Event::CallEnded { session, reason } if session.call_id() == call_id => {
            Some(Err(format!("ended_before_connected:{reason:?}")))
        }
        _ => None,
    }
}

/// Decides once both `CallEnded` and the call record of `call_id` arrived.
fn ended(call_id: &CallId) -> impl FnMut(&Event) -> Option<Result<(), String>> + '_ {
    let (mut ended, mut recorded) = (false, false);
    move |event| {
        match event {
            Event::CallEnded { session, .. } if session.call_id() == call_id => ended = true,
            Event::ReceivedCallRecord(record) if &record.call.call_id == call_id => recorded = true,
            _ => {}
        }
        (ended && recorded).then_some(Ok(()))
    }
}

/// One full 1:1 cycle: start → received → accept → both connected → hang up → both ended with
/// their records.
async fn cycle(pair: &mut FullPair, step: Duration, r: &mut Tally) -> Result<(), String> {
    let FullPair { caller, callee } = pair;
    let (caller_client, caller_events) = (&caller.client, &mut caller.events);
    let (callee_client, callee_events) = (&callee.client, &mut callee.events);
    let callees = [callee.user.as_str()];

    let t_start = Instant::now();
    let (started, (incoming, t_received)) = in_time(step, "received_call", async {
        tokio::try_join!(
            async {
                caller_client
                    .start_call(&callees, CallType::Single, MediaType::Audio, CallOptions::default())
                    .await
                    .map_err(|e| reason("start_call", &e))
            },
            wait(callee_events, |event| match event {
                Event::ReceivedCall { session, .. } => Some(Ok(session.call_id().clone())),
                _ => None,
            }),
        )
    })
    .await?;
    let call_id = started.call_id().clone();
    if incoming != call_id {
        return Err("received_another_call".to_owned());
    }
    r.start_to_received.record(t_received.duration_since(t_start));

    let t_accept = Instant::now();
    let ((), ((), t_callee), ((), t_caller)) = in_time(step, "call_connected", async {
        tokio::try_join!(
            async { callee_client.accept(&call_id).await.map_err(|e| reason("accept", &e)) },
            wait(callee_events, connected(&call_id)),
            wait(caller_events, connected(&call_id)),
        )
    })
    .await?;
    r.accept_to_connected.record(t_callee.max(t_caller).duration_since(t_accept));

    let t_hangup = Instant::now();
    let ((), ((), t_caller), ((), t_callee)) = in_time(step, "call_ended", async {
        tokio::try_join!(
            async { caller_client.hangup(Some(&call_id)).await.map_err(|e| reason("hangup", &e)) },
            wait(caller_events, ended(&call_id)),
            wait(callee_events, ended(&call_id)),
        )
    })
    .await?;
    let t_end = t_caller.max(t_callee);
    r.hangup_to_ended.record(t_end.duration_since(t_hangup));
    r.cycle.record(t_end.duration_since(t_start));
    Ok(())
}

/// After a failed cycle: hangs up whatever is left (rejecting late invitations) until both
/// sides are quiet. `false` when a client stopped.
async fn recover(pair: &mut FullPair) -> bool {
    let deadline = Instant::now() + RECOVERY;
    for party in [&pair.caller, &pair.callee] {
        if party.client.current_call().is_some() {
            let _ = timeout(RECOVERY, party.client.hangup(None)).await;
        }
    }
    let FullPair { caller, callee } = pair;
    while Instant::now() < deadline {
        let (party, event) = tokio::select! {
            event = caller.events.next() => (&caller.client, event),
            event = callee.events.next() => (&callee.client, event),
            () = sleep(Duration::from_millis(200)) => {
                if caller.client.current_call().is_none() && callee.client.current_call().is_none() {
                    return true;
                }
                continue;
            }
        };
        match event {
            None => return false,
            Some(Event::ReceivedCall { session, .. }) => {
                let _ = timeout(RECOVERY, party.hangup(Some(session.call_id()))).await;
            }
            Some(_) => {}
        }
    }
    true
}

/// Says Goodbye for every client, bounded in time.
async fn disconnect(pairs: Vec<Pair>) {
    let mut set = JoinSet::new();
    for pair in pairs {
        match pair {
            Pair::Full(pair) => {
                for party in [pair.caller, pair.callee] {
                    set.spawn(async move { party.client.disconnect().await });
                }
            }
            Pair::Raw(pair) => {
                set.spawn(raw::goodbye(*pair));
            }
        }
    }
    let _ = timeout(DISCONNECT, async { while set.join_next().await.is_some() {} }).await;
}

impl Tally {
    fn add(&mut self, r: &Tally) {
        self.completed += r.completed;
        self.offered += r.offered;
        self.skipped += r.skipped;
        for (why, n) in &r.failed {
            *self.failed.entry(why.clone()).or_default() += n;
        }
        self.start_to_received.merge(&r.start_to_received);
        self.accept_to_connected.merge(&r.accept_to_connected);
        self.hangup_to_ended.merge(&r.hangup_to_ended);
        self.cycle.merge(&r.cycle);
    }

    fn report(
        &self,
        args: &BenchArgs,
        target: &Target,
        users: usize,
        elapsed: Duration,
        server: (Option<ProcStats>, Option<ProcStats>),
        me: (Option<ProcStats>, Option<ProcStats>),
    ) -> Report {
        let secs = elapsed.as_secs_f64();
        let failed: u64 = self.failed.values().sum();
        #[allow(clippy::cast_precision_loss)]
        let cps = self.completed as f64 / secs;
        let server_cpu = match server {
            (Some(a), Some(b)) => Some(round3(b.cpu_s - a.cpu_s)),
            _ => None,
        };
        let server_part = |part: fn(&ProcStats) -> f64| match server {
            (Some(a), Some(b)) => Some(round3(part(&b) - part(&a))),
            _ => None,
        };
        let server_kernel_cpu = server_part(|s| s.kernel_cpu_s);
        let server_storage_cpu = server_part(|s| s.storage_cpu_s);
        let server_peak = server.1.map(|s| s.peak_rss_kib);
        let self_cpu = match me {
            (Some(a), Some(b)) => Some(round3(b.cpu_s - a.cpu_s)),
            _ => None,
        };
        let rate = (args.rate > 0.0).then_some(args.rate);
        let json = json!({
            "mode": "calls",
            "call_client": match args.call_client {
                CallClient::Client => "client",
                CallClient::Raw => "raw",
                CallClient::Websocket => "websocket",
            },
            "users": users,
            "pairs": users / 2,
            "rate_offered": rate,
            "duration_s": round3(args.duration.as_secs_f64()),
            "elapsed_s": round3(secs),
            "cycles_per_sec": round3(cps),
            "completed": self.completed,
            "failed": failed,
            "failed_by_reason": self.failed,
            "offered": self.offered,
            "skipped": self.skipped,
            "latency_ms": {
                "start_to_received": self.start_to_received.json(),
                "accept_to_connected": self.accept_to_connected.json(),
                "hangup_to_ended": self.hangup_to_ended.json(),
                "cycle": self.cycle.json(),
            },
            "server_cpu_s": server_cpu,
            "server_cpu_util": server_cpu.map(|c| round3(c / secs)),
            "server_kernel_cpu_s": server_kernel_cpu,
            "server_storage_cpu_s": server_storage_cpu,
            "server_peak_rss_kib": server_peak,
            "server_rss_kib": server.1.map(|s| s.rss_kib),
            "loadgen_cpu_s": self_cpu,
            "server": target.describe(),
            "endpoint": target.endpoint,
            "server_in_process": target.shares_process(),
            "machine": machine(),
        });
        let rate_line = match rate {
            Some(r) => format!(
                "offered {r} cycles/s ({} starts, {} skipped: pair still busy)",
                self.offered, self.skipped
            ),
            None => "as fast as possible".to_owned(),
        };
        let opt =
            |v: Option<f64>, unit: &str| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} {unit}"));
        let lines = vec![
            format!("callplus bench: {users} users in {} pairs, {rate_line}, {:.2} s", users / 2, secs),
            format!("  completed cycles:      {} ({cps:.1}/s)", self.completed),
            format!("  failed calls:          {failed} ({})", reasons_line(&self.failed)),
            format!("  start -> received:     {}", self.start_to_received.line()),
            format!("  accept -> connected:   {}", self.accept_to_connected.line()),
            format!("  hangup -> ended+record:{}", self.hangup_to_ended.line()),
            format!("  full cycle:            {}", self.cycle.line()),
            format!(
                "  server CPU:            {}{}",
                opt(server_cpu, "s"),
                server_cpu.map_or_else(String::new, |c| format!(" ({:.0}% of one core)", c / secs * 100.0))
            ),
            format!(
                "    of which:            {} in the kernel, {} on the storage writer thread",
                opt(server_kernel_cpu, "s"),
                opt(server_storage_cpu, "s")
            ),
            format!(
                "  server peak RSS:       {}",
                server_peak.map_or_else(|| "n/a".to_owned(), |k| format!("{k} KiB"))
            ),
            format!("  load generator CPU:    {}", opt(self_cpu, "s")),
            format!("  server:                {}", target.describe()),
        ];
        Report { lines, json }
    }
}

#[cfg(test)]
mod tests {
    use super::{in_user_order, neighbours};

    #[test]
    fn with_several_servers_every_pair_spans_two_of_them() {
        // Users finish connecting in any order; user i is on server i mod 3.
        let finished = [7, 0, 11, 3, 9, 1, 4, 10, 2, 6, 8, 5];
        let parties = in_user_order(finished.iter().map(|&i| (i, i)).collect());
        let pairs: Vec<(usize, usize)> = neighbours(parties).collect();
        assert_eq!(pairs.len(), 6);
        for (caller, callee) in pairs {
            assert_eq!(callee, caller + 1, "neighbours are paired");
            assert_ne!(caller % 3, callee % 3, "users {caller} and {callee} are on different servers");
        }
    }
}
