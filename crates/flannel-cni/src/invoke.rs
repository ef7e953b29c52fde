//! Running the delegate plugin with the CNI protocol (the calling side of the spec, what Go's
//! `pkg/invoke` does for upstream).
//!
//! The delegate is looked up in `CNI_PATH`, started with our environment (so it sees the same
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`) with `CNI_COMMAND`
//! set, and fed the config on stdin. Its stdout is the protocol: a result on success, an error
//! object on failure; its stderr is copied to ours.
//!
//! The delegate's stdin, stdout and stderr are memory files (`memfd_create`), not pipes: the
//! config is written before the delegate starts, and its output is read after it exits. So no
//! thread feeds stdin, nothing polls pipes, a delegate that writes a lot before reading cannot
//! deadlock us, and this process sleeps exactly once, in `wait` (each wake-up costs a
//! scheduling delay on a busy node). A background process the delegate leaves holding its
//! stdout does not keep us waiting either.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::sys::memfd::{MFdFlags, memfd_create};
use serde_json::Value;

use crate::error::{CniError, Coded, INTERNAL, INVALID_CONFIG, clip};

/// How often a delegate that is being replaced ("text file busy") is retried, as libcni does.
const TEXT_BUSY_RETRIES: u32 = 5;
/// The errno of a binary that is open for writing.
const ETXTBSY: i32 = nix::errno::Errno::ETXTBSY as i32;

/// A delegate could not be run, or what it printed is not a result (code 999).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The delegate could not be started.
    #[error("failed to run plugin {}: {source}", .path.display())]
    Spawn {
        /// The delegate binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Waiting for the delegate, or reading back what it printed, failed.
    #[error("waiting for plugin {}: {source}", .path.display())]
    Wait {
        /// The delegate binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The memory files for the delegate's stdin, stdout and stderr could not be set up.
    #[error("preparing the stdio of plugin {}: {source}", .path.display())]
    Stdio {
        /// The delegate binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A successful ADD printed something that is not JSON (libcni's text).
    #[error("failed to unmarshal raw result: {source} result {text}")]
    Result {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
        /// What was printed, shortened.
        text: String,
    },
}

impl Coded for InvokeError {
    fn code(&self) -> u32 {
        INTERNAL
    }
}

/// Finds `plugin` in the `CNI_PATH` directories (`:`-separated), like libcni's `FindInPath`.
///
/// The name must not contain `/`: a netconf must not be able to run an arbitrary program.
pub fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() {
        return Err(CniError::new(INVALID_CONFIG, "no plugin name provided"));
    }
    if plugin.contains('/') {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!("invalid plugin name: {}", clip(plugin)),
        ));
    }
    let dirs: Vec<&str> = cni_path.split(':').collect();
    for dir in dirs.iter().filter(|d| !d.is_empty()) {
        let full = Path::new(dir).join(plugin);
        if std::fs::metadata(&full).is_ok_and(|m| m.is_file()) {
            return Ok(full);
        }
    }
    Err(CniError::new(
        INVALID_CONFIG,
        format!(
            "failed to find plugin {plugin:?} in path [{}]",
            dirs.join(" ")
        ),
    ))
}

/// What a delegate run produced.
#[derive(Debug)]
pub struct Output {
    /// Exit status code (`None` when killed by a signal).
    pub status: Option<i32>,
    /// Whether it exited with 0.
    pub success: bool,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

/// An anonymous in-memory file (close-on-exec; the child gets its own descriptor).
fn memory_file(name: &str) -> io::Result<File> {
    Ok(File::from(memfd_create(name, MFdFlags::MFD_CLOEXEC)?))
}

/// Everything the delegate wrote to `file`, read from the start whatever the offset.
fn read_back(file: &File) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut buf = vec![0; len];
    if len > 0 {
        file.read_exact_at(&mut buf, 0)?;
    }
    Ok(buf)
}

/// The delegate's stdio: stdin holding the config, empty stdout and stderr.
struct Stdio {
    stdin: File,
    stdout: File,
    stderr: File,
}

impl Stdio {
    fn new(input: &[u8]) -> io::Result<Stdio> {
        let mut stdin = memory_file("cni-stdin")?;
        stdin.write_all(input)?;
        stdin.seek(SeekFrom::Start(0))?;
        Ok(Stdio {
            stdin,
            stdout: memory_file("cni-stdout")?,
            stderr: memory_file("cni-stderr")?,
        })
    }

    /// Hands the three files to `cmd` (stdout and stderr as duplicates we keep reading).
    fn attach(self, cmd: &mut Command) -> io::Result<(File, File)> {
        cmd.stdin(self.stdin)
            .stdout(self.stdout.try_clone()?)
            .stderr(self.stderr.try_clone()?);
        Ok((self.stdout, self.stderr))
    }
}

/// Starts `cmd`, retrying while its binary is being replaced (ETXTBSY), and waits for it.
fn spawn_and_wait(cmd: &mut Command, path: &Path) -> Result<ExitStatus, InvokeError> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Ok(mut child) => {
                return child.wait().map_err(|source| InvokeError::Wait {
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempt < TEXT_BUSY_RETRIES => {
                // The binary is being replaced (an installer copying it); wait.
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(source) => {
                return Err(InvokeError::Spawn {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Runs `plugin_path` for `command` with `stdin`, collecting its output.
///
/// `extra_env` overrides variables of our environment (e.g. `CNI_CONTAINERID` for GC).
pub fn exec(
    plugin_path: &Path,
    command: &str,
    stdin: &[u8],
    extra_env: &[(&str, &str)],
) -> Result<Output, InvokeError> {
    let stdio_error = |source| InvokeError::Stdio {
        path: plugin_path.to_path_buf(),
        source,
    };
    let mut cmd = Command::new(plugin_path);
    cmd.env("CNI_COMMAND", command);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let (stdout, stderr) = Stdio::new(stdin)
        .and_then(|s| s.attach(&mut cmd))
        .map_err(stdio_error)?;
    let status = spawn_and_wait(&mut cmd, plugin_path)?;
    let read = |f: &File| {
        read_back(f).map_err(|source| InvokeError::Wait {
            path: plugin_path.to_path_buf(),
            source,
        })
    };
    let (stdout, stderr) = (read(&stdout)?, read(&stderr)?);
    if !stderr.is_empty() {
        let _ = io::stderr().write_all(&stderr);
    }
    Ok(Output {
        status: status.code(),
        success: status.success(),
        stdout,
        stderr,
    })
}

/// Turns a failed run into the delegate's own error, as libcni's `pluginErr` does: the error
/// object from stdout is passed through with its code; without one, stderr is quoted.
pub fn failure(out: &Output) -> CniError {
    let status = match out.status {
        Some(c) => format!("exit status {c}"),
        None => "signal: killed".to_string(),
    };
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        if out.stderr.is_empty() {
            return CniError::new(
                INTERNAL,
                format!("netplugin failed with no error message: {status}"),
            );
        }
        return CniError::new(
            INTERNAL,
            format!(
                "netplugin failed: {:?}: {status}",
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
    match parse_error(&out.stdout) {
        Some(e) => e,
        None => CniError::new(
            INTERNAL,
            format!(
                "netplugin failed but error parsing its diagnostic message {:?}",
                String::from_utf8_lossy(&out.stdout)
            ),
        ),
    }
}

/// Reads a CNI error object (`code`, `msg`, `details`).
fn parse_error(stdout: &[u8]) -> Option<CniError> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    let obj = v.as_object()?;
    let code = match obj.get("code") {
        Some(c) => u32::try_from(c.as_u64()?).ok()?,
        None => 0,
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (msg, details) = (text("msg"), text("details"));
    if code == 0 && msg.is_empty() {
        return None;
    }
    Some(CniError::with_details(code, msg, details))
}

/// Checks a successful ADD's stdout and returns the bytes to print.
///
/// The result is passed through unchanged. A result without `cniVersion` (old plugins) gets
/// the config's version, as libcni's `fixupResultVersion` does.
pub fn result_bytes(stdout: &[u8], conf_version: &str) -> Result<Vec<u8>, CniError> {
    let mut v: Value = serde_json::from_slice(stdout).map_err(|source| InvokeError::Result {
        source,
        text: clip(&String::from_utf8_lossy(stdout)),
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "delegate result is not a JSON object: {}",
                clip(&String::from_utf8_lossy(stdout))
            ),
        ));
    };
    if obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(stdout.to_vec());
    }
    let version = if conf_version.is_empty() {
        "0.1.0"
    } else {
        conf_version
    };
    obj.insert("cniVersion".into(), Value::String(version.into()));
    Ok(serde_json::to_vec(&v).unwrap_or_else(|_| stdout.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status: Some(code),
            success: code == 0,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn delegate_errors_pass_through_with_their_code() {
        let e = failure(&out(
            1,
            r#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"try later"}"#,
            "",
        ));
        assert_eq!(e, CniError::with_details(11, "busy", "try later"));
        let e = failure(&out(1, "", "panic: boom\n"));
        assert_eq!(e.code, INTERNAL);
        assert_eq!(e.msg, r#"netplugin failed: "panic: boom\n": exit status 1"#);
        let e = failure(&out(2, "", ""));
        assert_eq!(
            e.msg,
            "netplugin failed with no error message: exit status 2"
        );
        let e = failure(&out(1, "garbage", ""));
        assert!(
            e.msg.starts_with(
                "netplugin failed but error parsing its diagnostic message \"garbage\""
            )
        );
    }

    #[test]
    fn results_pass_through_and_get_a_version_if_missing() {
        let r = br#"{"cniVersion":"0.3.1","ips":[]}"#;
        assert_eq!(result_bytes(r, "0.3.1").unwrap(), r.to_vec());
        let fixed = result_bytes(br#"{"ip4":{"ip":"10.0.0.2/24"}}"#, "0.2.0").unwrap();
        let v: Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v["cniVersion"], "0.2.0");
        assert_eq!(
            result_bytes(b"not json", "1.0.0").unwrap_err().code,
            INTERNAL
        );
        assert_eq!(result_bytes(b"[]", "1.0.0").unwrap_err().code, INTERNAL);
    }

    #[test]
    fn find_in_path_rules() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bridge"), "").unwrap();
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(
            find_in_path("bridge", &path).unwrap(),
            dir.path().join("bridge")
        );
        let e = find_in_path("adir", &path).unwrap_err();
        assert_eq!(
            e.msg,
            format!(
                "failed to find plugin \"adir\" in path [/nonexistent {}]",
                dir.path().display()
            )
        );
        assert_eq!(
            find_in_path("../bin/sh", &path).unwrap_err().msg,
            "invalid plugin name: ../bin/sh"
        );
        assert_eq!(
            find_in_path("", &path).unwrap_err().msg,
            "no plugin name provided"
        );
    }
}
