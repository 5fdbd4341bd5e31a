//! The C examples against a real server: `examples/c/two_party.c` (signalling, events by poll
//! and by callback) and `examples/c/media_call.c` (built-in media on loopback: a tone one way,
//! app-pushed Opus packets the other, each side's media sink must receive the other's audio).
//! Each is compiled with the system C compiler against the checked-in header and the shared
//! library that this `cargo test` just built, run, its output checked; then run again under
//! valgrind (memcheck) so leaks and invalid memory accesses fail the test.
//!
//! The library: `cargo test` builds every crate type of `callplus-ffi` (rlib, cdylib,
//! staticlib) into the directory that also holds this test's executable
//! (`<target>/<profile>/deps`), so the test links exactly the library of the current sources,
//! whatever `CARGO_TARGET_DIR` or profile is in use. It links the shared library: that one
//! already names the system libraries its dependencies need (which change with the workspace's
//! features, e.g. libopus when media is on), while a static link would have to list them.
//!
//! Environment: `CC` picks the C compiler (default `cc`); `CALLPLUS_SKIP_VALGRIND=1` skips the
//! valgrind run (it is skipped, with a note, when valgrind is not installed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::TestServer;

mod common;

/// Longest a run of the example may take (valgrind slows it down a lot).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of the shared library built alongside this test.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps directory");
    let candidates = [deps.to_path_buf(), deps.parent().expect("profile dir").to_path_buf()];
    candidates.iter().find(|dir| dir.join("libcallplus.so").is_file()).cloned().unwrap_or_else(|| {
        panic!("libcallplus.so not found next to the test executable (looked in {candidates:?})")
    })
}

/// Compiles the example `examples/c/<name>.c` once per test process.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    built
        .entry(name.to_owned())
        .or_insert_with(|| {
            let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_example");
            std::fs::create_dir_all(&out_dir).unwrap();
            let exe = out_dir.join(name);
            let lib_dir = lib_dir();
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
            let output = Command::new(&cc)
                .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-g", "-O0", "-Wall", "-Wextra", "-Werror"])
                .arg("-I")
                .arg(manifest_dir().join("include"))
                .arg("-o")
                .arg(&exe)
                .arg(manifest_dir().join(format!("examples/c/{name}.c")))
                .arg(format!("-L{}", lib_dir.display()))
                .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
                .args(["-lcallplus", "-lpthread"])
                .output()
                .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
            assert!(
                output.status.success(),
                "compiling {name}.c failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            exe
        })
        .clone()
}

impl TestServer {
    /// Endpoint and tokens for the example's command line.
    fn args(&self) -> Vec<String> {
        let token = |user| self.server().mint_token(user, Duration::from_secs(3600)).unwrap();
        vec![format!("http://{}", self.server().grpc_addr()), token("alice"), token("bob")]
    }
}

/// Runs `program args`, killing it after [`RUN_TIMEOUT`].
fn run(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{command:?} did not finish within {RUN_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Checks what `two_party` printed: alice saw the call connect and end with HANGUP, bob saw
/// REMOTE_HANGUP, and both printed a record of the call.
fn check_two_party(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || format!("exit: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(output.status.success(), "the example failed\n{}", context());
    let call_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("alice: calling bob, call "))
        .unwrap_or_else(|| panic!("no call id printed\n{}", context()))
        .to_owned();
    let has = |needle: &str| stdout.lines().any(|l| l.starts_with(needle));
    for needle in [
        format!("alice: event CALL_CONNECTED call={call_id}"),
        format!("alice: event CALL_ENDED call={call_id} reason=HANGUP"),
        format!("bob: event RECEIVED_CALL call={call_id}"),
        format!("bob: event CALL_CONNECTED call={call_id}"),
        format!("bob: event CALL_ENDED call={call_id} reason=REMOTE_HANGUP"),
        format!("alice: record call={call_id} owner=alice direction=OUTGOING reason=HANGUP"),
        format!("bob: record call={call_id} owner=bob direction=INCOMING reason=REMOTE_HANGUP"),
        "alice: events done (not connected)".to_owned(),
        "two_party: OK".to_owned(),
    ] {
        assert!(has(&needle), "missing line starting with {needle:?}\n{}", context());
    }
}

/// Checks what `media_call` printed: each side received the other's audio through its media
/// sink (the example itself exits non-zero otherwise), and the media events arrived.
fn check_media_call(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || format!("exit: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(output.status.success(), "the example failed\n{}", context());
    let has = |needle: &str| stdout.lines().any(|l| l.starts_with(needle));
    for needle in [
        "alice: first audio frame from bob in call ",
        "bob: first audio frame from alice in call ",
        "alice: event USER_MEDIA_AVAILABLE",
        "bob: event FIRST_FRAME",
        "alice: event FIRST_FRAME",
        "bob: event CALL_ENDED",
        "media_call: OK",
    ] {
        assert!(has(needle), "missing line starting with {needle:?}\n{}", context());
    }
    for (who, from) in [("bob", "alice"), ("alice", "bob")] {
        let prefix = format!("{who}: received ");
        let frames: usize = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{who} printed no frame count\n{}", context()));
        assert!(frames >= 25, "{who} received only {frames} frames from {from}\n{}", context());
        assert!(has(&format!("{who}: received {frames} audio frames from {from} (0 bad, 20000 us each)")));
    }
}

/// Runs `example` against a fresh server, directly or under valgrind.
fn run_example(name: &str, under_valgrind: Option<&Path>) -> Output {
    let exe = example(name);
    let server = TestServer::start();
    let mut command = match under_valgrind {
        None => Command::new(exe),
        Some(valgrind) => {
            let mut command = Command::new(valgrind);
            command
                .args([
                    "--tool=memcheck",
                    "--leak-check=full",
                    // Leaks that fail: memory no pointer reaches any more. "Still reachable"
                    // blocks (thread-locals and statics of the Rust runtime at exit) are not
                    // leaks.
                    "--show-leak-kinds=definite,indirect",
                    "--errors-for-leak-kinds=definite,indirect",
                    "--error-exitcode=99",
                    "--num-callers=30",
                ])
                .arg(format!("--suppressions={}", manifest_dir().join("tests/valgrind.supp").display()))
                .arg(exe)
                // Everything is slower under valgrind.
                .env("CALLPLUS_WAIT_MS", "120000");
            command
        }
    };
    command.args(server.args());
    let output = run(command);
    if under_valgrind.is_some() && output.status.code() == Some(99) {
        panic!(
            "valgrind found memory errors or leaks in {name}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

#[test]
fn two_party_example_runs() {
    check_two_party(&run_example("two_party", None));
}

#[test]
fn media_call_example_runs() {
    check_media_call(&run_example("media_call", None));
}

fn valgrind() -> Option<PathBuf> {
    if std::env::var_os("CALLPLUS_SKIP_VALGRIND").is_some() {
        return None;
    }
    let found = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("valgrind"))
}

#[test]
fn two_party_example_is_clean_under_valgrind() {
    let Some(valgrind) = valgrind() else {
        eprintln!("note: valgrind is not installed (or CALLPLUS_SKIP_VALGRIND is set); skipping");
        return;
    };
    check_two_party(&run_example("two_party", Some(&valgrind)));
}

#[test]
fn media_call_example_is_clean_under_valgrind() {
    let Some(valgrind) = valgrind() else {
        eprintln!("note: valgrind is not installed (or CALLPLUS_SKIP_VALGRIND is set); skipping");
        return;
    };
    check_media_call(&run_example("media_call", Some(&valgrind)));
}
