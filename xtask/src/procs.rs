//! Child processes of the benchmark commands (`bench --compare-sip`, `bench --cluster`): each
//! in a process group of its own, stopped with the whole group, and their CPU time read from
//! `/proc`.

use std::path::Path;
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

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// The fields of a `/proc/<pid>/stat` line this module reads.
#[derive(Debug, PartialEq)]
struct Stat {
    pid: u32,
    ppid: u32,
    /// `utime` + `stime`: the process's own CPU, in ticks.
    own_ticks: u64,
    /// `cutime` + `cstime`: its children's that exited and were waited for, in ticks.
    reaped_children_ticks: u64,
}

impl Stat {
    /// Parses `pid (comm) state ppid … utime(14) stime(15) cutime(16) cstime(17) …`. The command
    /// name may hold spaces and parentheses, so the fields are counted from its last `)`.
    fn parse(line: &str) -> Option<Stat> {
        let pid = line.split_whitespace().next()?.parse().ok()?;
        let after = line.get(line.rfind(')')? + 2..)?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(Stat {
            pid,
            ppid: u32::try_from(field(1)?).ok()?,
            own_ticks: field(11)? + field(12)?,
            reaped_children_ticks: field(13)? + field(14)?,
        })
    }

    fn read(path: &Path) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(path).ok()?)
    }
}

/// CPU seconds (user + system) of `pid`, of its children now running, and of its children
/// already reaped (`cutime`/`cstime`).
pub(crate) fn tree_cpu_s(pid: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let ticks: u64 = entries
        .flatten()
        .filter_map(|entry| Stat::read(&entry.path().join("stat")))
        .map(|stat| match stat {
            Stat { pid: own, own_ticks, reaped_children_ticks, .. } if own == pid => {
                own_ticks + reaped_children_ticks
            }
            Stat { ppid, own_ticks, .. } if ppid == pid => own_ticks,
            _ => 0,
        })
        .sum();
    ticks as f64 / TICKS_PER_S
}

/// CPU seconds (user + system) of this process's children that have exited and been waited
/// for (`cutime` + `cstime` of `/proc/self/stat`): read before and after a child run with
/// [`Command::status`], the difference is that child's CPU.
pub(crate) fn reaped_children_cpu_s() -> f64 {
    Stat::read(Path::new("/proc/self/stat"))
        .map_or(0.0, |stat| stat.reaped_children_ticks as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (sipp (UAC) x) S 17 4242 4242 0 -1 4194560 1 0 0 0 \
                    120 30 7 3 20 0 1 0 100 0 0 18446744073709551615";
        let stat = Stat::parse(line).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(stat, Stat { pid: 4242, ppid: 17, own_ticks: 150, reaped_children_ticks: 10 });
        assert_eq!(Stat::parse("4242 (cut short) S 17"), None);
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn a_running_processs_cpu_is_read_from_proc() {
        use std::io::{BufRead as _, BufReader};
        // The shell burns CPU, says so, then waits on its stdin until the test lets it go.
        let mut child = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done; echo burnt; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        BufReader::new(stdout).read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(line.trim(), "burnt");
        let spent = tree_cpu_s(child.id());
        drop(child.stdin.take());
        let _ = child.wait();
        assert!(spent > 0.0, "the running shell's CPU: {spent}");
    }

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
