//! The `callplus` binary as a child process: spawned with its stdout piped, and its start-up
//! banner (the lines up to `Stop with Ctrl-C`) read, which is how the tests learn the ports
//! and the app credentials a server picked.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// Longest wait for the banner: a debug build on two shared cores.
const BANNER_WAIT: Duration = Duration::from_secs(15);

/// The start-up banner of a `callplus` process.
#[derive(Debug)]
pub struct Banner(Vec<String>);

impl Banner {
    /// The text after `label` on its banner line, e.g. `value("app key:")`.
    pub fn value(&self, label: &str) -> String {
        self.0
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {label:?} in the banner: {:#?}", self.0))
    }
}

/// A `callplus` command with the settings every test wants: the binary under test, stdin
/// closed, stdout piped for the banner, killed when dropped.
pub fn callplus() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_callplus"));
    command.stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true);
    command
}

/// Spawns `command` and reads its banner; the rest of stdout is the caller's (see [`drain`]).
pub async fn spawn(command: &mut Command) -> (Child, Banner, Lines<BufReader<ChildStdout>>) {
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    loop {
        match timeout(BANNER_WAIT, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let done = line.contains("Stop with Ctrl-C");
                banner.push(line);
                if done {
                    break;
                }
            }
            other => panic!("{command:?}: no banner ({other:?}): {banner:#?}"),
        }
    }
    (child, Banner(banner), lines)
}

/// Keeps reading the rest of stdout, so the process never blocks on a full pipe.
pub fn drain(mut lines: Lines<BufReader<ChildStdout>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}
