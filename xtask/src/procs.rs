//! Child processes of the benchmark commands (`bench --compare-sip`, `bench --cluster`): each
//! in a process group of its own, stopped with the whole group, and their CPU time read from
//! `/proc`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// How long a process has to stop after its stop signal before its group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process in a process group of its own. Dropping it sends `stop_signal` to the child,
/// waits up to [`STOP_TIMEOUT`] for it to exit, then kills the whole group (and reaps it), so no
/// worker of one point outlives it.
pub(crate) struct Group {
    child: Child,
    stop_signal: &'static str,
    stopped: bool,
}

impl Group {
    pub(crate) fn spawn(what: &str, cmd: &mut Command, stop_signal: &'static str) -> Result<Group> {
        use std::os::unix::process::CommandExt as _;
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Group { child, stop_signal, stopped: false })
    }

    /// Stops the process with its stop signal; whether it exited successfully by itself.
    pub(crate) fn stop(&mut self) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([self.stop_signal, &pid]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let clean = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => break false,
            }
        };
        let group = format!("-{pid}");
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        clean
    }
}

impl Group {
    /// The child's process id (also its process group's).
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout, when it was piped (once).
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds (user + system) of `pid`, of its children now running, and of its children
/// already reaped (`cutime`/`cstime`).
pub(crate) fn tree_cpu_s(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        let own: Option<u32> = stat.split_whitespace().next().and_then(|p| p.parse().ok());
        let ppid: Option<u32> = fields.get(1).and_then(|p| p.parse().ok());
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if own == Some(pid) {
            total += field(11) + field(12) + field(13) + field(14);
        } else if ppid == Some(pid) {
            total += field(11) + field(12);
        }
    }
    total as f64 / ticks
}

/// CPU seconds (user + system) of this process's children that have exited and been waited
/// for (`cutime` + `cstime` of `/proc/self/stat`): read before and after a child run with
/// [`Command::status`], the difference is that child's CPU.
pub(crate) fn reaped_children_cpu_s() -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(13) + field(14)) as f64 / ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waited_for_childs_cpu_is_counted_once_it_has_exited() {
        let before = reaped_children_cpu_s();
        // About a second of CPU in a shell loop: many clock ticks, whatever the machine.
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        assert!(status.success());
        let spent = reaped_children_cpu_s() - before;
        assert!(spent > 0.0, "the loop's CPU is among the reaped children's: {spent}");
    }
}
