//! Running short-lived commands with a time limit, and bounded polling.
//!
//! Tests must never hang: every command the lab runs to completion has a deadline after which it
//! is killed, and every wait is bounded in time. Failures carry the command line, exit status and
//! stderr so a red test explains itself.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::host::{package_for, require_binary};
use crate::netns::Netns;

/// Default limit for one short-lived command (an `ip`, `ping` or `etcdctl` invocation).
///
/// Generous because the 2-core test machine may be busy compiling; anything slower is a hang.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Extra time given to the output readers after the process exits, for output still in the pipe.
const READER_GRACE: Duration = Duration::from_secs(2);

/// Renders a command line for error messages, quoting words that a shell would split.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion with `input` on stdin, killing it after `timeout`.
///
/// Stdout and stderr are captured. A non-zero exit is *not* an error here (see [`check`]); a
/// missing program is reported as [`LabError::MissingBinary`], an overrun as
/// [`LabError::CommandTimeout`]. Output is read on helper threads so a chatty command cannot
/// deadlock on a full pipe, and those threads are abandoned (not joined) if a grandchild keeps the
/// pipe open, so the call itself stays bounded.
pub fn run_command(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let line = describe(&cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(&cmd, &line, e))?;

    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send((true, buf));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = tx.send((false, buf));
        });
    }
    drop(tx);
    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), input) {
        let data = data.to_vec();
        // A writer thread: a command that does not read its stdin must not block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }

    let deadline = Instant::now() + timeout;
    let status = match wait_deadline(&mut child, deadline)
        .map_err(|e| LabError::io(format!("waiting for `{line}`"), e))?
    {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::CommandTimeout {
                command: line,
                timeout,
            });
        }
    };

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let readers_deadline = Instant::now() + READER_GRACE;
    for _ in 0..2 {
        let left = readers_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, b)) => stdout = b,
            Ok((false, b)) => stderr = b,
            Err(_) => break,
        }
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Waits for `child` until `deadline`, polling; `None` means it is still running.
pub(crate) fn wait_deadline(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Turns a spawn failure into a useful error: "not found" becomes a package hint.
pub(crate) fn spawn_error(cmd: &Command, line: &str, e: std::io::Error) -> LabError {
    if e.kind() == std::io::ErrorKind::NotFound {
        let program = cmd.get_program().to_string_lossy().into_owned();
        LabError::MissingBinary {
            package: package_for(&program).map(str::to_string),
            binary: program,
        }
    } else {
        LabError::io(format!("starting `{line}`"), e)
    }
}

/// Converts an unsuccessful [`Output`] into [`LabError::CommandFailed`], keeping successful ones.
pub fn check(command: String, output: Output) -> Result<Output> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::CommandFailed {
            command,
            status: output.status.to_string(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Builds `ip netns exec <ns> <program> <args...>`, the way every in-namespace command is run.
///
/// `ip netns exec` joins the namespace and then execs the program, so the process keeps the pid
/// we spawned (signals reach the real program) and `/sys` shows the namespace's devices.
pub(crate) fn netns_exec_command<I, S>(ns_name: &str, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut args = args.into_iter();
    let program = args
        .next()
        .ok_or_else(|| LabError::Invalid("empty command line".into()))?;
    let program = program.as_ref();
    // Resolve before `ip` does, so a missing program yields a package hint.
    let resolved = require_binary(&program.to_string_lossy())?;
    let mut cmd = Command::new(crate::host::ip_binary()?);
    cmd.arg("netns").arg("exec").arg(ns_name).arg(resolved);
    cmd.args(args);
    Ok(cmd)
}

/// Runs a command inside `ns` and returns its output whatever the exit status.
///
/// Use it when a non-zero exit is an expected answer (e.g. "is this route present?"). Bounded by
/// [`DEFAULT_COMMAND_TIMEOUT`].
pub fn run_in<I, S>(ns: &Netns, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_in_name(ns.name(), args, DEFAULT_COMMAND_TIMEOUT)
}

/// Runs a command inside `ns`, requires success and returns its stdout.
///
/// The error names the full command line, the exit status and stderr, which is what a failing
/// test needs to print.
pub fn run_ok<I, S>(ns: &Netns, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_ok_name(ns.name(), args, DEFAULT_COMMAND_TIMEOUT)
}

/// [`run_in`] by namespace name with an explicit time limit, for holders of a name only (etcd).
pub(crate) fn run_in_name<I, S>(ns_name: &str, args: I, timeout: Duration) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let cmd = netns_exec_command(ns_name, args)?;
    run_command(cmd, None, timeout)
}

/// [`run_ok`] by namespace name with an explicit time limit.
pub(crate) fn run_ok_name<I, S>(ns_name: &str, args: I, timeout: Duration) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let cmd = netns_exec_command(ns_name, args)?;
    let line = describe(&cmd);
    let out = check(line, run_command(cmd, None, timeout)?)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `condition` every `interval` until it returns true or `timeout` passes.
///
/// The one way the lab and its tests wait for something asynchronous (a route to appear, a daemon
/// to become ready): always bounded, and the condition is checked once more at the deadline so a
/// slow poll cannot cause a spurious failure.
pub fn wait_until<F>(timeout: Duration, interval: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> bool,
{
    wait_for("condition", timeout, interval, || {
        Ok::<_, String>(condition().then_some(()))
    })
}

/// Polls `probe` until it yields a value, bounded by `timeout`.
///
/// `probe` returns `Ok(Some(v))` when done, `Ok(None)` to keep waiting, or `Err(note)` to keep
/// waiting while remembering why; the last note ends up in the [`LabError::Timeout`] message, so
/// a timeout says what was last seen rather than only that time ran out.
pub fn wait_for<T, E, F>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> std::result::Result<Option<T>, E>,
{
    let deadline = Instant::now() + timeout;
    let interval = interval.max(Duration::from_millis(1));
    let mut last = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e.to_string()),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(LabError::Timeout {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_words_with_spaces() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo 'hi there'"]);
        assert_eq!(describe(&c), r"sh -c 'echo '\''hi there'\'''");
    }

    #[test]
    fn run_command_captures_output_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run_command(c, Some(b"hello"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
        let err = check("x".into(), out).unwrap_err().to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("err"),
            "{err}"
        );
    }

    #[test]
    fn run_command_kills_on_timeout() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let start = Instant::now();
        let err = run_command(c, None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, LabError::CommandTimeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn run_command_reports_missing_program() {
        let c = Command::new("etcdctl-not-installed-here");
        let err = run_command(c, None, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, LabError::MissingBinary { .. }), "{err:?}");
    }

    #[test]
    fn wait_until_is_bounded_and_succeeds() {
        let mut n = 0;
        wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            n >= 3
        })
        .unwrap();
        assert_eq!(n, 3);
        let start = Instant::now();
        let err = wait_until(
            Duration::from_millis(100),
            Duration::from_millis(10),
            || false,
        )
        .unwrap_err();
        assert!(matches!(err, LabError::Timeout { .. }));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn wait_for_reports_last_observation() {
        let err = wait_for::<(), _, _>(
            "the answer",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Err("still 41"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the answer") && err.contains("still 41"),
            "{err}"
        );
    }
}
