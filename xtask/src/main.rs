//! `cargo xtask`: project automation, in Rust, with nothing but `std::process::Command`.
//!
//! ```text
//! cargo xtask codegen [--check]        regenerate (or check) generated files: the C header and
//!                                      the web SDK's wasm-bindgen output
//! cargo xtask ci [--fuzz-seconds N]    fmt check, clippy -D warnings, all tests (the header
//!                                      check among them), fuzz build and a short run of each
//!                                      fuzz target
//! cargo xtask browser                 the browser tests alone
//! cargo xtask fuzz [--seconds N] [TARGET...]
//!                                      run each fuzz target (or the named ones) for N seconds
//! cargo xtask bench [ARGS...]          criterion benches of the workspace (ARGS go to cargo bench)
//! cargo xtask bench --compare-sip [--rates R1,R2] [--seconds N] [--rounds N] [--pgo] [--no-idle-cores]
//!                                      callplus against Kamailio + SIPp, back to back
//! cargo xtask bench --cluster [--nodes N] [--rates R1,R2] [--seconds S] [--users U] [--no-sqlite]
//!                                      1 node against N nodes on Redis + PostgreSQL, back to back
//! cargo xtask pgo                      the `callplus` binary with profile-guided optimisation,
//!                                      trained on `callplus bench`; prints its path
//! ```
//!
//! `ci` builds the web engine for `wasm32-unknown-unknown` (adding the target with rustup when
//! missing), checks the checked-in `wasm-bindgen` output against it (installing
//! `wasm-bindgen-cli` at the crate's exact version when missing), reports the Web SDK's size,
//! and, after the workspace tests, runs the browser tests in headless Chromium (`web.rs`).
//!
//! `ci` also checks the crate layering: `cargo tree` must not show server crates under the C
//! library nor codecs under the server binary, which it builds with pkg-config finding nothing.
//!
//! `ci` first installs the Debian packages the tests link or run (libopus, libvpx, pkg-config,
//! valgrind) with `apt-get` when they are missing, so it works on a fresh machine.
//!
//! Fuzzing needs the nightly toolchain and `cargo-fuzz`; `fuzz` installs `cargo-fuzz` (from
//! crates.io, `--locked`) when it is missing, `ci` does the same when nightly is present and
//! skips fuzzing with a note when it is not.
//!
//! The tidy checks of the source tree (`tidy.rs`: module doc lines, a sans-IO core, documentation
//! references that resolve) are tests of this crate, so `cargo test` runs them.

#[cfg(test)]
mod tidy;

mod compare_cluster;
mod compare_sip;
mod pgo;
mod procs;
mod web;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Debian packages the workspace needs at build or test time: the media crate links libopus and
/// libvpx (found with pkg-config); the C example test runs under valgrind; the storage tests
/// start their own PostgreSQL server from the `postgresql` package's binaries, and the Redis tests
/// their own `redis-server`.
const SYSTEM_PACKAGES: &[&str] =
    &["libopus-dev", "libvpx-dev", "pkg-config", "valgrind", "postgresql", "redis-server"];

/// Default run time of each fuzz target for `cargo xtask fuzz`.
const DEFAULT_FUZZ_SECONDS: u64 = 30;
/// Default run time of each fuzz target within `cargo xtask ci`.
const DEFAULT_CI_FUZZ_SECONDS: u64 = 10;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  codegen [--check]                  regenerate generated files (callplus-ffi/include/callplus.h,
                                     callplus-web/js/pkg/); --check fails if they are stale instead
  ci [--fuzz-seconds N] [--no-fuzz] [--no-browser]
                                     fmt --check, clippy -D warnings, cargo test --workspace
                                     (which checks the generated header), the web SDK's generated
                                     files and size, browser tests in headless Chromium, fuzz
                                     build and N s of each fuzz target
  browser                            the browser tests alone (headless Chromium, loopback-only
                                     network namespace; installs Chromium and playwright-core)
  fuzz [--seconds N] [TARGET...]     run every fuzz target (or the named ones) for N s (default 30)
  bench [ARGS...]                    run the criterion benches (cargo bench --workspace ARGS)
  bench --compare-sip [--rates R1,R2] [--seconds N] [--rounds N] [--pgo] [--no-idle-cores]
                                     Kamailio + SIPp and `callplus bench` back to back at the
                                     same offered rates on 127.0.0.1; one table with the ratio;
                                     --rounds N: each rate N times, and the median ratio;
                                     --pgo: also the server built by `pgo` (below);
                                     --no-idle-cores: a SCHED_IDLE spinner on every core, so
                                     no core halts between messages (each system's own work)
  bench --cluster [--nodes N] [--rates R1,R2] [--seconds S] [--users U] [--no-sqlite]
                                     its own Redis and PostgreSQL on 127.0.0.1, then per rate
                                     `callplus bench` against 1 node, N nodes (default 3) and
                                     the SQLite single node; one table with N-node/1-node ratios
  pgo                                the `callplus` binary built with profile-guided optimisation:
                                     an instrumented release build, 30 s of `callplus bench`
                                     (gRPC, WebSocket, gRPC over TLS), a release build using the
                                     counts;
                                     prints the binary's path (target/pgo/<host>/release/callplus)
";

pub(crate) type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("codegen") => codegen(&args[1..]),
        Some("ci") => ci(&args[1..]),
        Some("fuzz") => fuzz_cmd(&args[1..]),
        Some("browser") => no_more(&args[1..]).and_then(|()| web::browser_tests()),
        Some("bench") => bench(&args[1..]),
        Some("pgo") => pgo::pgo(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate).
///
/// `cargo run` tells the binary where its manifest is; that is preferred over the path baked in
/// at build time, which belongs to whichever checkout last built a shared `target/` directory.
pub(crate) fn root() -> PathBuf {
    workspace_root(std::env::var_os("CARGO_MANIFEST_DIR"), Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The parent of xtask's manifest directory: the one `cargo run` passes at run time when there
/// is one, else the one baked in at build time.
fn workspace_root(at_run_time: Option<std::ffi::OsString>, at_build_time: &Path) -> PathBuf {
    let manifest = at_run_time.map_or_else(|| at_build_time.to_path_buf(), PathBuf::from);
    manifest.parent().map_or_else(|| manifest.clone(), Path::to_path_buf)
}

/// `cargo` of the toolchain running us.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// A binary of the release build: in `CARGO_TARGET_DIR` when set (relative to the workspace root
/// when relative), else in the workspace's `target/`.
pub(crate) fn release_binary(name: &str) -> PathBuf {
    target_dir(std::env::var_os("CARGO_TARGET_DIR"), &root()).join("release").join(name)
}

pub(crate) fn target_dir(from_env: Option<std::ffi::OsString>, root: &Path) -> PathBuf {
    match from_env.filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `cargo +nightly` through rustup's proxy.
fn cargo_nightly() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").current_dir(root());
    // The stable toolchain that runs xtask must not leak into the nightly one.
    cmd.env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").env_remove("RUSTC");
    cmd
}

/// Runs a command, echoing it, failing on a non-zero exit.
pub(crate) fn run(what: &str, mut cmd: Command) -> Result {
    eprintln!("xtask: {what}: {cmd:?}");
    let start = Instant::now();
    let status = cmd.status().map_err(|e| format!("{what}: cannot start {cmd:?}: {e}"))?;
    eprintln!("xtask: {what}: {} in {:.0?}", if status.success() { "ok" } else { "FAILED" }, start.elapsed());
    if status.success() { Ok(()) } else { Err(format!("{what} failed ({status})")) }
}

/// Whether a command runs and exits 0 (its output discarded).
fn succeeds(mut cmd: Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `callplus` arguments for full 1:1 call cycles between 200 raw users (`client`: `raw` for gRPC
/// streams, `websocket`) at `rate` cycles per second for `seconds`, with the JSON report: the
/// load compare-sip measures and the PGO build is trained on. Raw users keep the load generator
/// cheap next to the server it shares the cores with (docs/performance.md).
pub(crate) fn bench_cycle_args(client: &str, rate: f64, seconds: u64) -> Vec<String> {
    let rate = rate.to_string();
    let duration = format!("{seconds}s");
    ["bench", "--call-client", client, "--users", "200", "--rate", &rate, "--duration", &duration, "--json"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The report `callplus bench --json` prints: the last line of its stdout that is a JSON object.
pub(crate) fn bench_report(stdout: &str) -> Result<serde_json::Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("callplus bench printed no JSON")?;
    serde_json::from_str(line).map_err(|e| format!("bench JSON: {e}"))
}

/// Takes `--flag VALUE` out of `args`.
fn take_value(args: &mut Vec<String>, flag: &str) -> Result<Option<String>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) if i + 1 < args.len() => {
            let value = args.remove(i + 1);
            args.remove(i);
            Ok(Some(value))
        }
        Some(_) => Err(format!("{flag} needs a value")),
    }
}

/// Takes `--flag` out of `args`.
pub(crate) fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    match args.iter().position(|a| a == flag) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

/// Parses `--rates`' value, `1000,3000`: each a positive, finite rate per second.
fn rates(list: &str) -> Result<Vec<f64>> {
    list.split(',')
        .map(|r| match r.trim().parse::<f64>() {
            Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
            _ => Err(format!("not a rate: {r:?}")),
        })
        .collect()
}

fn seconds(value: Option<String>, default: u64) -> Result<u64> {
    value.map_or(Ok(default), |v| v.parse().map_err(|_| format!("not a number of seconds: {v:?}")))
}

pub(crate) fn no_more(args: &[String]) -> Result {
    match args.first() {
        Some(extra) => Err(format!("unexpected argument {extra:?}\n\n{USAGE}")),
        None => Ok(()),
    }
}

// ----- codegen --------------------------------------------------------------------------------

/// The C header is generated by callplus-ffi's build script; its `header` test compares it with
/// the checked-in copy and, with `CALLPLUS_UPDATE_HEADER=1`, rewrites the copy. The web SDK's
/// `wasm-bindgen` output (`callplus-web/js/pkg/`) is regenerated or compared by [`web::codegen`].
fn codegen(args: &[String]) -> Result {
    let mut args = args.to_vec();
    let check = take_flag(&mut args, "--check");
    no_more(&args)?;
    web::codegen(!check, false)?;
    let mut cmd = cargo();
    // `--workspace` (the one `header` test is callplus-ffi's) keeps the workspace's feature
    // set, so this reuses the artifacts of `cargo test --workspace` instead of building anew.
    cmd.args(["test", "--workspace", "--test", "header"]);
    if check {
        cmd.env_remove("CALLPLUS_UPDATE_HEADER");
        run("codegen --check (callplus-ffi/include/callplus.h is fresh)", cmd).map_err(|_| {
            "generated files are stale: run `cargo xtask codegen` and commit the result".to_owned()
        })
    } else {
        cmd.env("CALLPLUS_UPDATE_HEADER", "1");
        run("codegen (callplus-ffi/include/callplus.h)", cmd)
    }
}

// ----- ci -------------------------------------------------------------------------------------

fn ci(args: &[String]) -> Result {
    let mut args = args.to_vec();
    let fuzz_seconds = seconds(take_value(&mut args, "--fuzz-seconds")?, DEFAULT_CI_FUZZ_SECONDS)?;
    let no_fuzz = take_flag(&mut args, "--no-fuzz");
    let no_browser = take_flag(&mut args, "--no-browser");
    no_more(&args)?;
    let start = Instant::now();

    ensure_system_packages()?;

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("fmt --check", fmt)?;
    // The fuzz crate is a workspace of its own, outside `--all`.
    let mut fmt = cargo();
    fmt.args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--", "--check"]);
    run("fmt --check (fuzz targets)", fmt)?;

    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run("clippy -D warnings", clippy)?;

    check_layering()?;
    // The web engine for wasm32, linted, with its wasm-bindgen output compared with the
    // checked-in copy (callplus-web/js/pkg/), and the page's download size.
    web::codegen(false, true)?;
    web::report_size()?;

    // The workspace tests include callplus-ffi's `header` test, which fails on a stale header:
    // that is the codegen check. Running it again alone (`codegen --check`) would build a second
    // copy of the dependency graph, because one package alone unifies features differently.
    let mut test = cargo();
    // The Redis tests skip (loudly) without `redis-server` on a developer's machine; here it was
    // installed above, so a missing one must fail them.
    test.args(["test", "--workspace"])
        .env_remove("CALLPLUS_UPDATE_HEADER")
        .env("CALLPLUS_REQUIRE_REDIS", "1");
    run("test --workspace (includes the generated-header check)", test)?;

    if no_browser {
        eprintln!("xtask: browser tests: skipped (--no-browser)");
    } else {
        web::browser_tests()?;
    }

    if no_fuzz {
        eprintln!("xtask: fuzz: skipped (--no-fuzz)");
    } else if !nightly_available() {
        eprintln!("xtask: fuzz: skipped (no nightly toolchain: `rustup toolchain install nightly`)");
    } else {
        ensure_cargo_fuzz()?;
        let mut build = cargo_nightly();
        build.args(["fuzz", "build"]);
        run("fuzz build", build)?;
        if fuzz_seconds > 0 {
            fuzz_run(&fuzz_targets()?, fuzz_seconds)?;
        }
    }
    eprintln!("xtask: ci: all checks passed in {:.0?}", start.elapsed());
    Ok(())
}

/// Crates that must stay out of a package's normal dependency tree: the C library apps link
/// carries no server, and the server binary and the SFU carry no codec and no OpenSSL (so they
/// build with the Rust toolchain alone).
const FORBIDDEN_DEPENDENCIES: &[(&str, &[&str])] = &[
    ("callplus-ffi", &["rusqlite", "axum", "prometheus-client", "reqwest", "clap", "callplus-server"]),
    ("callplus-client", &["rusqlite", "axum", "prometheus-client", "reqwest", "clap", "callplus-server"]),
    ("callplus-signal", &["opus", "audiopus_sys", "env-libvpx-sys", "callplus-media"]),
    ("callplus-sfu", &["opus", "audiopus_sys", "env-libvpx-sys", "callplus-media", "openssl-sys"]),
];

/// Checks [`FORBIDDEN_DEPENDENCIES`] with `cargo tree`, then builds the README's server binary
/// with pkg-config unable to find any system library, as on a machine without libopus/libvpx.
fn check_layering() -> Result {
    for (package, forbidden) in FORBIDDEN_DEPENDENCIES {
        let mut tree = cargo();
        tree.args(["tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"]);
        let out = tree.output().map_err(|e| format!("cannot run cargo tree: {e}"))?;
        if !out.status.success() {
            return Err(format!("cargo tree -p {package} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        let found: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|name| listing.lines().any(|line| line.split(' ').next() == Some(name)))
            .collect();
        if !found.is_empty() {
            return Err(format!("{package} must not depend on {}", found.join(", ")));
        }
        eprintln!("xtask: layering: {package} is free of {}", forbidden.join(", "));
    }
    let empty = std::env::temp_dir().join("callplus-no-system-libraries");
    std::fs::create_dir_all(&empty).map_err(|e| format!("cannot create {}: {e}", empty.display()))?;
    let mut build = cargo();
    build
        .args(["build", "-p", "callplus-signal", "--bin", "callplus"])
        .env("PKG_CONFIG_LIBDIR", &empty)
        .env("PKG_CONFIG_PATH", &empty);
    run("build the server binary without system codec libraries", build)
}

/// Installs the missing [`SYSTEM_PACKAGES`] with apt-get (through sudo when not root).
fn ensure_system_packages() -> Result {
    ensure_packages(SYSTEM_PACKAGES)
}

/// Installs those of `packages` that dpkg does not know as installed, with [`apt_install`].
pub(crate) fn ensure_packages(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| {
            let mut cmd = Command::new("dpkg");
            cmd.args(["-s", pkg]);
            !succeeds(cmd)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing system packages: {}", missing.join(" "));
    apt_install(&missing)
}

/// `apt-get update` and `apt-get install` of `packages` (through sudo when not root).
pub(crate) fn apt_install(packages: &[&str]) -> Result {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut cmd = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run("apt-get update", apt(&["update", "-qq"]))?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(packages);
    run("apt-get install", apt(&install))
}

// ----- fuzz -----------------------------------------------------------------------------------

fn nightly_available() -> bool {
    let mut cmd = cargo_nightly();
    cmd.arg("--version");
    succeeds(cmd)
}

fn ensure_cargo_fuzz() -> Result {
    let mut probe = cargo_nightly();
    probe.args(["fuzz", "--version"]);
    if succeeds(probe) {
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "cargo-fuzz", "--locked"]);
    run("install cargo-fuzz", install)
}

/// The fuzz targets: the `[[bin]]` names of `fuzz/Cargo.toml` (the files of `fuzz/fuzz_targets`).
fn fuzz_targets() -> Result<Vec<String>> {
    let dir = root().join("fuzz").join("fuzz_targets");
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            targets.push(stem.to_owned());
        }
    }
    targets.sort();
    Ok(targets)
}

fn fuzz_cmd(args: &[String]) -> Result {
    let mut args = args.to_vec();
    let secs = seconds(take_value(&mut args, "--seconds")?, DEFAULT_FUZZ_SECONDS)?;
    if !nightly_available() {
        return Err("fuzzing needs the nightly toolchain: `rustup toolchain install nightly`".to_owned());
    }
    ensure_cargo_fuzz()?;
    let all = fuzz_targets()?;
    let targets = if args.is_empty() { all } else { args };
    fuzz_run(&targets, secs)
}

/// Runs each target for `secs` seconds; a crash fails (cargo-fuzz prints the reproducer path
/// under `fuzz/artifacts/<target>/`).
fn fuzz_run(targets: &[String], secs: u64) -> Result {
    let mut failed = Vec::new();
    for target in targets {
        let mut cmd = cargo_nightly();
        cmd.args(["fuzz", "run", target, "--", &format!("-max_total_time={secs}"), "-print_final_stats=1"]);
        if run(&format!("fuzz {target} for {secs} s"), cmd).is_err() {
            failed.push(target.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets failed: {} (reproducers in fuzz/artifacts/)", failed.join(", ")))
    }
}

// ----- bench ----------------------------------------------------------------------------------

fn bench(args: &[String]) -> Result {
    let mut args = args.to_vec();
    if take_flag(&mut args, "--compare-sip") {
        return compare_sip::compare_sip(&args);
    }
    if take_flag(&mut args, "--cluster") {
        return compare_cluster::compare_cluster(&args);
    }
    let mut cmd = cargo();
    cmd.args(["bench", "--workspace"]).args(args);
    run("bench", cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_cycles_are_asked_for_at_the_rate_and_length_given() {
        let args = bench_cycle_args("websocket", 1_500.0, 12);
        let value = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str());
        assert_eq!(args.first().map(String::as_str), Some("bench"));
        assert_eq!(value("--call-client"), Some("websocket"));
        assert_eq!(value("--users"), Some("200"));
        assert_eq!(value("--rate"), Some("1500"));
        assert_eq!(value("--duration"), Some("12s"));
        assert!(args.iter().any(|a| a == "--json"), "{args:?}");
        assert_eq!(bench_cycle_args("raw", 2_500.5, 1)[6], "2500.5");
    }

    #[test]
    fn the_run_time_manifest_path_wins_over_the_build_time_one() {
        let built = Path::new("/checkouts/old/xtask");
        let run = Some(std::ffi::OsString::from("/checkouts/new/xtask"));
        assert_eq!(workspace_root(run, built), PathBuf::from("/checkouts/new"));
        assert_eq!(workspace_root(None, built), PathBuf::from("/checkouts/old"));
    }

    #[test]
    fn release_binaries_are_found_in_the_target_directory_cargo_uses() {
        let root = Path::new("/ws");
        assert_eq!(target_dir(None, root), PathBuf::from("/ws/target"));
        assert_eq!(target_dir(Some("".into()), root), PathBuf::from("/ws/target"));
        assert_eq!(target_dir(Some("/elsewhere/t".into()), root), PathBuf::from("/elsewhere/t"));
        assert_eq!(target_dir(Some("build".into()), root), PathBuf::from("/ws/build"));
    }

    #[test]
    fn this_workspace_is_found() {
        assert!(root().join("Cargo.toml").is_file() && root().join("xtask").is_dir());
    }
}
