//! `cargo xtask pgo`: the `callplus` binary built with profile-guided optimisation.
//!
//! At the rates a deployment sees most of the time, the server sleeps between requests and
//! every wake-up starts on cold caches: per call cycle, its signalling thread spends more CPU
//! than its instruction count explains (docs/performance.md, "Profile-guided optimisation").
//! Branch and call counts from a real load let the compiler keep the hot paths together and
//! inline where it pays. Three steps:
//!
//! 1. a release build instrumented to count (`-Cprofile-generate`);
//! 2. training: that binary's `callplus bench` (full 1:1 call cycles against a `callplus serve`
//!    child of the same binary, on 127.0.0.1) over gRPC streams, over WebSockets, then over gRPC
//!    streams in TLS;
//! 3. a release build that uses the counts (`-Cprofile-use`).
//!
//! Both builds pass `--target <host>`, so that the flags reach the workspace's code and its
//! dependencies but not build scripts and procedural macros (which would write counts of their
//! own while compiling). `llvm-profdata` comes from the toolchain's `llvm-tools` component,
//! added with rustup when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, run};

/// One training run: a `callplus bench --call-client` value, and whether its devices connect
/// over TLS (`--tls`).
type TrainingRun = (&'static str, bool);

/// The training load, run by run: gRPC streams, WebSockets (the two framings devices use), and
/// gRPC streams over TLS, as devices reach a node that terminates TLS itself: without that run
/// the handshakes and record encryption would be laid out as code never run.
const TRAINING_RUNS: &[TrainingRun] = &[("raw", false), ("websocket", false), ("raw", true)];

/// Call cycles per second over 200 users: a load at which the signalling thread still sleeps
/// between frames, as at the rates compare-sip measures, and every cycle completes.
const TRAINING_RATE: f64 = 2_000.0;
/// Seconds of each training run: some 20,000 cycles, enough for stable counts.
const TRAINING_SECONDS: u64 = 10;

/// Where the two builds and the counts go, under the target directory.
const GENERATE_DIR: &str = "pgo-generate";
const USE_DIR: &str = "pgo";
const PROFILES_DIR: &str = "pgo-profiles";

/// `cargo xtask pgo`: builds, trains, rebuilds; prints the optimised binary's path.
pub(crate) fn pgo(args: &[String]) -> Result {
    crate::no_more(args)?;
    let binary = build()?;
    println!("{}", binary.display());
    Ok(())
}

/// The three steps; the optimised binary's path.
pub(crate) fn build() -> Result<PathBuf> {
    let host = host_triple()?;
    let profdata = llvm_profdata(&host)?;
    let target = crate::target_dir(std::env::var_os("CARGO_TARGET_DIR"), &crate::root());
    let profiles = target.join(PROFILES_DIR);
    let counts = profiles.join("raw");

    let instrumented =
        build_with(&target.join(GENERATE_DIR), &host, &format!("-Cprofile-generate={}", counts.display()))?;
    // Counts from an earlier training would be merged with this one's.
    let _ = std::fs::remove_dir_all(&counts);
    std::fs::create_dir_all(&counts).map_err(|e| format!("cannot create {}: {e}", counts.display()))?;
    for &run in TRAINING_RUNS {
        train(&instrumented, run)?;
    }
    let merged = profiles.join("callplus.profdata");
    let mut merge = Command::new(&profdata);
    merge.arg("merge").arg("-o").arg(&merged).arg(&counts);
    run("merge the training's counts", merge)?;

    build_with(&target.join(USE_DIR), &host, &format!("-Cprofile-use={}", merged.display()))
}

/// A release build of `callplus` into `target_dir` with `flag` added to `RUSTFLAGS`; the
/// binary's path.
fn build_with(target_dir: &Path, host: &str, flag: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "callplus-signal", "--bin", "callplus", "--target", host])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", rustflags(std::env::var("RUSTFLAGS").ok().as_deref(), flag));
    run(&format!("build callplus ({flag})"), cmd)?;
    Ok(target_dir.join(host).join("release").join("callplus"))
}

/// `RUSTFLAGS` as the caller set them, with `flag` after them.
fn rustflags(existing: Option<&str>, flag: &str) -> String {
    match existing.map(str::trim).filter(|f| !f.is_empty()) {
        Some(existing) => format!("{existing} {flag}"),
        None => flag.to_owned(),
    }
}

/// One training run; fails unless every call cycle completed.
fn train(binary: &Path, run: TrainingRun) -> Result {
    let label = training_label(run);
    let out = Command::new(binary)
        .args(training_args(run))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "training over {label} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (completed, failed) = bench_counts(&String::from_utf8_lossy(&out.stdout))?;
    eprintln!("xtask: training over {label}: {completed} call cycles");
    if failed > 0 || completed == 0 {
        return Err(format!("training over {label}: {completed} cycles completed, {failed} failed"));
    }
    Ok(())
}

/// The `callplus` arguments of one training run.
fn training_args((client, tls): TrainingRun) -> Vec<String> {
    let mut args = crate::bench_cycle_args(client, TRAINING_RATE, TRAINING_SECONDS);
    if tls {
        args.push("--tls".to_owned());
    }
    args
}

/// How the log names a training run.
fn training_label((client, tls): TrainingRun) -> String {
    if tls { format!("{client} over TLS") } else { client.to_owned() }
}

/// `completed` and `failed` from `callplus bench --json`'s summary line.
fn bench_counts(stdout: &str) -> Result<(u64, u64)> {
    let report = crate::bench_report(stdout)?;
    let count = |key: &str| report[key].as_u64().ok_or(format!("bench JSON has no {key:?}"));
    Ok((count("completed")?, count("failed")?))
}

/// What the toolchain's `rustc` (`RUSTC` when cargo set it) prints with `args`; an error unless
/// it ran and exited 0.
fn rustc_says(args: &[&str]) -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc).args(args).output().map_err(|e| format!("cannot run rustc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rustc {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    host_of(&rustc_says(&["-vV"])?).ok_or_else(|| "rustc -vV printed no host".to_owned())
}

fn host_of(rustc_version: &str) -> Option<String> {
    rustc_version.lines().find_map(|l| l.strip_prefix("host:")).map(|h| h.trim().to_owned())
}

/// `llvm-profdata` of the toolchain (the LLVM that reads the counts must be the one that wrote
/// them), adding the `llvm-tools` component when it is missing.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = PathBuf::from(rustc_says(&["--print", "sysroot"])?.trim());
    let path = sysroot.join("lib").join("rustlib").join(host).join("bin").join("llvm-profdata");
    if !path.exists() {
        let mut add = Command::new("rustup");
        add.args(["component", "add", "llvm-tools"]);
        run("add the llvm-tools component", add)?;
    }
    if path.exists() { Ok(path) } else { Err(format!("no llvm-profdata at {}", path.display())) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_read_from_rustcs_verbose_version() {
        let text = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n\
                    release: 1.95.0\n";
        assert_eq!(host_of(text).as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(host_of("rustc 1.95.0\n"), None);
    }

    #[test]
    fn the_toolchains_rustc_names_the_host_and_its_sysroot() {
        let host = host_triple().unwrap();
        assert!(host.split('-').count() >= 3, "{host}");
        let sysroot = rustc_says(&["--print", "sysroot"]).unwrap();
        assert!(Path::new(sysroot.trim()).join("lib").join("rustlib").join(&host).is_dir(), "{sysroot}");
        // A rustc that refuses its arguments is an error that says so, not an empty answer.
        let refused = rustc_says(&["--no-such-flag"]).unwrap_err();
        assert!(refused.contains("--no-such-flag"), "{refused}");
    }

    #[test]
    fn the_profile_flag_follows_the_callers_rustflags() {
        assert_eq!(rustflags(None, "-Cprofile-use=p"), "-Cprofile-use=p");
        assert_eq!(rustflags(Some("  "), "-Cprofile-use=p"), "-Cprofile-use=p");
        assert_eq!(
            rustflags(Some("-Ctarget-cpu=native"), "-Cprofile-use=p"),
            "-Ctarget-cpu=native -Cprofile-use=p"
        );
    }

    #[test]
    fn training_runs_both_framings_and_tls() {
        let args: Vec<Vec<String>> = TRAINING_RUNS.iter().map(|&run| training_args(run)).collect();
        for client in ["raw", "websocket"] {
            assert!(args.iter().any(|a| a.windows(2).any(|w| w == ["--call-client", client])), "{client}");
        }
        let tls: Vec<&Vec<String>> = args.iter().filter(|a| a.iter().any(|x| x == "--tls")).collect();
        assert_eq!(tls.len(), 1, "{args:?}");
        // The bench's WebSocket users connect to a plain port only: TLS is trained over gRPC.
        assert!(tls[0].windows(2).any(|w| w == ["--call-client", "raw"]), "{tls:?}");
        assert!(
            args.iter()
                .all(|a| a.first().map(String::as_str) == Some("bench") && a.contains(&"--json".to_owned()))
        );
        assert_eq!(training_label(("raw", true)), "raw over TLS");
        assert_eq!(training_label(("websocket", false)), "websocket");
    }

    #[test]
    fn a_training_run_counts_from_the_benchs_summary_line() {
        let out = "starting\n{\"completed\":20000,\"failed\":0,\"cycles_per_sec\":1999.8}\n";
        assert_eq!(bench_counts(out).unwrap(), (20_000, 0));
        assert!(bench_counts("no summary\n").is_err());
        assert!(bench_counts("{\"failed\":0}\n").is_err());
    }
}
