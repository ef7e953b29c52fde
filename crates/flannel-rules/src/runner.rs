//! Running iptables/nft commands behind a small trait, so rule generation and the reconcile logic
//! can be unit tested with a fake, while the daemon and the privileged tests run the real binaries.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::error::{RulesError, install_hint};

/// What a finished command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code, `None` when the process was killed by a signal.
    pub status: Option<i32>,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

impl CommandOutput {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs one program with arguments and optional standard input.
///
/// Only spawning problems are errors here (`NotFound` for a missing program, `TimedOut` when the
/// runner gives up); a non-zero exit is reported through [`CommandOutput::status`] because some
/// callers expect it (for example listing a table that does not exist).
#[async_trait]
pub trait Runner: Send + Sync + std::fmt::Debug {
    /// Runs `program args...`, feeding `stdin` if given, and waits for it to finish.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::io::Result<CommandOutput>;
}

/// The real runner: `tokio::process`, `LC_ALL=C` so messages can be recognised, killed on timeout.
///
/// Children inherit the calling thread's network namespace, which is what the privileged tests
/// rely on.
#[derive(Clone, Debug)]
pub struct TokioRunner {
    timeout: Duration,
}

impl TokioRunner {
    /// A runner that kills a command after `timeout` (a stuck xtables lock must not hang the daemon).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for TokioRunner {
    /// Two minutes: far longer than any healthy iptables-restore or nft run.
    fn default() -> Self {
        Self::new(Duration::from_secs(120))
    }
}

#[async_trait]
impl Runner for TokioRunner {
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::io::Result<CommandOutput> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let input = stdin.map(|s| s.as_bytes().to_vec());
        let mut pipe = child.stdin.take();
        let work = async move {
            if let (Some(pipe), Some(input)) = (pipe.as_mut(), input) {
                pipe.write_all(&input).await?;
                pipe.shutdown().await?;
            }
            drop(pipe);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, work).await {
            Ok(output) => output?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("timed out after {} s", self.timeout.as_secs()),
                ));
            }
        };
        Ok(CommandOutput {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// A command line for messages: `iptables-restore --noflush --wait`.
pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command and turns spawn problems into [`RulesError`]s; the output is returned whatever
/// the exit status.
pub(crate) async fn run_any(
    runner: &dyn Runner,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<CommandOutput, RulesError> {
    tracing::trace!(command = %command_line(program, args), stdin = stdin.unwrap_or(""), "running");
    runner
        .run(program, args, stdin)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RulesError::MissingBinary {
                program: program.to_string(),
                hint: install_hint(program),
                source,
            },
            std::io::ErrorKind::TimedOut => RulesError::Timeout {
                command: command_line(program, args),
                source,
            },
            _ => RulesError::Spawn {
                command: command_line(program, args),
                source,
            },
        })
}

/// Runs a command that must succeed.
pub(crate) async fn run_ok(
    runner: &dyn Runner,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<CommandOutput, RulesError> {
    let output = run_any(runner, program, args, stdin).await?;
    if output.success() {
        Ok(output)
    } else {
        Err(RulesError::from_failed(
            command_line(program, args),
            &output,
        ))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted runner for unit tests: answers by matching the command line, records every call.

    use std::sync::Mutex;

    use super::*;

    /// One recorded call.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Call {
        pub command: String,
        pub stdin: Option<String>,
    }

    type Responder =
        Box<dyn Fn(&str, Option<&str>) -> std::io::Result<CommandOutput> + Send + Sync>;

    /// Answers each command with the responder's result.
    pub struct FakeRunner {
        responder: Responder,
        pub calls: Mutex<Vec<Call>>,
    }

    impl std::fmt::Debug for FakeRunner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeRunner").finish_non_exhaustive()
        }
    }

    impl FakeRunner {
        pub fn new(
            responder: impl Fn(&str, Option<&str>) -> std::io::Result<CommandOutput>
            + Send
            + Sync
            + 'static,
        ) -> Self {
            Self {
                responder: Box::new(responder),
                calls: Mutex::new(Vec::new()),
            }
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    pub fn ok(stdout: &str) -> std::io::Result<CommandOutput> {
        Ok(CommandOutput {
            status: Some(0),
            stdout: stdout.to_string(),
            stderr: String::new(),
        })
    }

    pub fn fail(stderr: &str) -> std::io::Result<CommandOutput> {
        Ok(CommandOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: stderr.to_string(),
        })
    }

    #[async_trait]
    impl Runner for FakeRunner {
        async fn run(
            &self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> std::io::Result<CommandOutput> {
            let command = command_line(program, args);
            self.calls.lock().unwrap().push(Call {
                command: command.clone(),
                stdin: stdin.map(str::to_string),
            });
            (self.responder)(&command, stdin)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_runner_feeds_stdin_and_captures_output() {
        let runner = TokioRunner::default();
        let out = runner.run("cat", &[], Some("hello\n")).await.unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "hello\n");
        let out = runner
            .run("sh", &["-c", "echo oops >&2; exit 3"], None)
            .await
            .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stderr, "oops\n");
    }

    #[tokio::test]
    async fn missing_program_maps_to_missing_binary_with_hint() {
        let runner = TokioRunner::default();
        let err = run_ok(&runner, "iptables-restore-does-not-exist", &[], None)
            .await
            .unwrap_err();
        assert!(err.is_missing_binary(), "{err}");
        assert!(err.to_string().contains("install the iptables package"));
    }

    #[tokio::test]
    async fn timeout_kills_the_command() {
        let runner = TokioRunner::new(Duration::from_millis(200));
        let err = run_ok(&runner, "sleep", &["5"], None).await.unwrap_err();
        assert!(matches!(err, RulesError::Timeout { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "`sleep 5` did not finish: timed out after 0 s"
        );
        let source = std::error::Error::source(&err).expect("the io error is the source");
        assert_eq!(source.to_string(), "timed out after 0 s");
    }

    #[tokio::test]
    async fn non_zero_exit_carries_stderr() {
        let runner = TokioRunner::default();
        let err = run_ok(&runner, "sh", &["-c", "echo bad thing >&2; exit 2"], None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c echo bad thing >&2; exit 2` failed (exit status 2): bad thing"
        );
    }
}
