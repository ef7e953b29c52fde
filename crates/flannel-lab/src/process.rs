//! Long-running processes inside namespaces (etcd, flanneld, iperf3 servers) as drop guards.
//!
//! A test that panics must not leave a daemon running, and a test that fails must be able to say
//! what the daemon printed. So each process gets its own log file (stdout and stderr together)
//! and a guard that stops it (SIGTERM, then SIGKILL after a bounded wait) and reaps it on drop.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::command::{describe, netns_exec_command, spawn_error, wait_deadline};
use crate::error::{LabError, Result};
use crate::host::require_binary;
use crate::netns::Netns;

/// How long [`Child::stop`] waits after SIGTERM before sending SIGKILL.
///
/// flanneld and etcd shut down in well under a second; this bounds a hung one.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Start of the header line the lab writes into a log before each start of a process.
const LOG_HEADER: &str = "### flannel-lab: ";

/// Number of log lines error messages quote.
pub const LOG_TAIL_LINES: usize = 30;

/// A process running inside a network namespace, stopped and reaped when dropped.
///
/// The process leads its own process group, and signals go to the whole group, so helpers it
/// forks (a shell pipeline, a plugin) are stopped with it.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    status: Option<ExitStatus>,
    command: String,
    netns: String,
    log_path: PathBuf,
    stop_timeout: Duration,
}

/// Starts `cmd` inside `ns`, appending its stdout and stderr to `log_path`.
///
/// The command's program, arguments, environment changes and working directory are carried over
/// (an `env_clear()` is not: the child sees the parent's environment plus `cmd`'s changes); its
/// stdio is replaced by the log. A missing program fails here with the Debian package to install.
pub fn spawn_in(ns: &Netns, cmd: Command, log_path: impl Into<PathBuf>) -> Result<Child> {
    Child::spawn_in_name(ns.name(), cmd, log_path.into())
}

impl Child {
    /// [`spawn_in`] by namespace name, for holders of only a name (etcd restarting itself).
    pub(crate) fn spawn_in_name(ns_name: &str, cmd: Command, log_path: PathBuf) -> Result<Child> {
        Self::spawn_with(Some(ns_name), cmd, log_path, false)
    }

    /// Starts `cmd` in this process's own namespaces (network *and* mounts: `ip netns exec`
    /// would replace `/sys`), with a session of its own when `new_session`: for podman, which
    /// joins the node's namespace itself and needs the machine's cgroup mounts.
    pub(crate) fn spawn_host(cmd: Command, log_path: PathBuf, new_session: bool) -> Result<Child> {
        Self::spawn_with(None, cmd, log_path, new_session)
    }

    /// Like [`Child::spawn_in_name`], but the process leads a new *session* (`setsid`), not only
    /// a process group: it has no controlling terminal, so closing the terminal that started it
    /// sends it no SIGHUP, and it can outlive its parent. What a persistent lab's daemons need.
    ///
    /// `setsid(1)` only forks when its caller already leads a process group; the child we spawn
    /// does not (it is in our group until setsid runs), so setsid calls setsid(2) and execs `ip
    /// netns exec`, which execs the program: the pid we get is the program's, and it is also the
    /// session and process-group id, so [`Child::signal`] reaches the program's helpers too.
    pub(crate) fn spawn_session(ns_name: &str, cmd: Command, log_path: PathBuf) -> Result<Child> {
        Self::spawn_with(Some(ns_name), cmd, log_path, true)
    }

    /// Starts `cmd` (inside namespace `ns_name` when given) with its output in `log_path`.
    fn spawn_with(
        ns_name: Option<&str>,
        cmd: Command,
        log_path: PathBuf,
        new_session: bool,
    ) -> Result<Child> {
        use std::os::unix::process::CommandExt;

        let argv = std::iter::once(cmd.get_program()).chain(cmd.get_args());
        let inner = match ns_name {
            Some(ns) => netns_exec_command(ns, argv)?,
            None => {
                let mut c = Command::new(require_binary(&cmd.get_program().to_string_lossy())?);
                c.args(cmd.get_args());
                c
            }
        };
        let mut wrapped = if new_session {
            let mut w = Command::new(require_binary("setsid")?);
            w.arg(inner.get_program()).args(inner.get_args());
            w
        } else {
            inner
        };
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        let command = describe(&wrapped);

        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| LabError::io(format!("creating {}", parent.display()), e))?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| LabError::io(format!("opening log {}", log_path.display()), e))?;
        // A header per start, so a log spanning restarts shows where each run begins.
        let place = ns_name.unwrap_or("the host's namespaces");
        let _ = writeln!(log, "{LOG_HEADER}starting in {place}: {command}");
        let err_log = log
            .try_clone()
            .map_err(|e| LabError::io(format!("duplicating log {}", log_path.display()), e))?;
        wrapped
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        if !new_session {
            wrapped.process_group(0);
        }
        let child = wrapped
            .spawn()
            .map_err(|e| spawn_error(&wrapped, &command, e))?;
        Ok(Child {
            child,
            status: None,
            command,
            netns: ns_name.unwrap_or_default().to_string(),
            log_path,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        })
    }

    /// The process id (also its process-group id), e.g. for `kill -STOP` fault injection.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The full command line as started, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The namespace the process runs in.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The log file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far (lossily decoded), for asserting on a daemon's
    /// messages.
    ///
    /// The lab's own header lines (one per start, naming the command) are left out, so a search
    /// for a word that also appears in the command line only matches the process's output.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
            .lines()
            .filter(|l| !l.starts_with(LOG_HEADER))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The last `lines` lines of the log file, headers included, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_log(&self.log_path), lines)
    }

    /// Changes how long [`Child::stop`] (and drop) waits between SIGTERM and SIGKILL.
    pub fn set_stop_timeout(&mut self, timeout: Duration) {
        self.stop_timeout = timeout;
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| LabError::io(format!("polling `{}`", self.command), e))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = wait_deadline(&mut self.child, Instant::now() + timeout)
                .map_err(|e| LabError::io(format!("waiting for `{}`", self.command), e))?;
        }
        Ok(self.status)
    }

    /// Sends `signal` to the process group (no-op once the process has been reaped).
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        let pgid = Pid::from_raw(self.child.id() as i32);
        match killpg(pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(LabError::sys(
                format!("sending {signal} to `{}`", self.command),
                e,
            )),
        }
    }

    /// Stops the process gracefully: SIGTERM, then SIGKILL if it has not exited within the stop
    /// timeout; returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            return Ok(s);
        }
        self.signal(Signal::SIGTERM)?;
        if let Some(s) = self.wait_timeout(self.stop_timeout)? {
            return Ok(s);
        }
        self.kill()
    }

    /// Kills the process with SIGKILL (no chance to clean up, like a crash) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        // SIGKILL cannot be ignored; the bound only guards against a process stuck in the kernel.
        match self.wait_timeout(Duration::from_secs(10))? {
            Some(s) => Ok(s),
            None => Err(self.error("did not die within 10 s of SIGKILL")),
        }
    }

    /// An error about this process that quotes the end of its log.
    pub fn error(&self, problem: impl Into<String>) -> LabError {
        LabError::Process {
            command: self.command.clone(),
            problem: problem.into(),
            log: self.log_path.clone(),
            tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    /// Fails with the log tail if the process has already exited; use after start-up steps.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_status()? {
            None => Ok(()),
            Some(s) => Err(self.error(format!("exited early with {s}"))),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("flannel-lab: stopping `{}`: {e}", self.command);
        }
    }
}

/// Reads a log file lossily; a missing file reads as empty.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
