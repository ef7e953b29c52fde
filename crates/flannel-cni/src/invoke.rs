//! Running the delegate plugin with the CNI protocol (the calling side of the spec, what Go's
//! `pkg/invoke` does for upstream).
//!
//! The delegate is looked up in `CNI_PATH`, started with our environment (so it sees the same
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`) with `CNI_COMMAND`
//! set, and fed the config on stdin. Its stdout is the protocol: a result on success, an error
//! object on failure; its stderr is copied to ours.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::error::{CniError, INTERNAL, INVALID_CONFIG};

/// How often a delegate that is being replaced ("text file busy") is retried, as libcni does.
const TEXT_BUSY_RETRIES: u32 = 5;

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
            format!("invalid plugin name: {}", crate::error::clip(plugin)),
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

/// Runs `plugin_path` for `command` with `stdin`, collecting its output.
///
/// `extra_env` overrides variables of our environment (e.g. `CNI_CONTAINERID` for GC).
pub fn exec(
    plugin_path: &Path,
    command: &str,
    stdin: &[u8],
    extra_env: &[(&str, &str)],
) -> Result<Output, CniError> {
    let mut attempt = 0;
    loop {
        let mut cmd = Command::new(plugin_path);
        cmd.env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let mut input = child.stdin.take();
                // Small configs fit in the pipe; a writer thread only for big ones, so a
                // delegate that writes a lot before reading cannot deadlock us.
                let writer = if stdin.len() > 16 * 1024 {
                    let data = stdin.to_vec();
                    let mut pipe = input.take();
                    Some(std::thread::spawn(move || {
                        if let Some(p) = pipe.as_mut() {
                            let _ = p.write_all(&data);
                        }
                    }))
                } else {
                    if let Some(p) = input.as_mut() {
                        // A delegate that exits without reading gives EPIPE: its output says why.
                        let _ = p.write_all(stdin);
                    }
                    drop(input);
                    None
                };
                let out = child.wait_with_output().map_err(|e| {
                    CniError::new(
                        INTERNAL,
                        format!("waiting for plugin {}: {e}", plugin_path.display()),
                    )
                })?;
                if let Some(w) = writer {
                    let _ = w.join();
                }
                if !out.stderr.is_empty() {
                    let _ = io::stderr().write_all(&out.stderr);
                }
                return Ok(Output {
                    status: out.status.code(),
                    success: out.status.success(),
                    stdout: out.stdout,
                    stderr: out.stderr,
                });
            }
            Err(e) if e.raw_os_error() == Some(26) && attempt < TEXT_BUSY_RETRIES => {
                // ETXTBSY: the binary is being replaced (an installer copying it); wait.
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(CniError::new(
                    INTERNAL,
                    format!("failed to run plugin {}: {e}", plugin_path.display()),
                ));
            }
        }
    }
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
    let mut v: Value = serde_json::from_slice(stdout).map_err(|e| {
        CniError::new(
            INTERNAL,
            format!(
                "failed to unmarshal raw result: {e} result {}",
                crate::error::clip(&String::from_utf8_lossy(stdout))
            ),
        )
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "delegate result is not a JSON object: {}",
                crate::error::clip(&String::from_utf8_lossy(stdout))
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

/// Reads all of a reader, at most `limit` bytes; `Ok(None)` when there was more.
pub fn read_capped(mut r: impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(4096);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut r).take(cap).read_to_end(&mut buf)?;
    Ok((buf.len() <= limit).then_some(buf))
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

    #[test]
    fn read_capped_stops_after_the_limit() {
        assert_eq!(read_capped(&b"abc"[..], 3).unwrap().unwrap(), b"abc");
        assert!(read_capped(&b"abcd"[..], 3).unwrap().is_none());
    }
}
