//! Driving a userspace WireGuard implementation through its control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::text;
use crate::device::{DeviceState, DeviceUpdate, WgDevice, WgError};

/// How long one answer may take (a set of thousands of peers takes well under a second).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer accepted (a `get` of 5000 peers is about 1.5 MB).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// A device run by another process (wireguard-go, boringtun-cli, our own data path in another
/// flanneld), reached through `<dir>/<name>.sock`. One connection per call, as `wg` does.
#[derive(Debug, Clone)]
pub struct UapiClient {
    name: String,
    path: PathBuf,
}

impl UapiClient {
    /// The device `name` whose socket lives in `dir` (normally [`super::SOCKET_DIR`]).
    pub fn new(name: &str, dir: &Path) -> UapiClient {
        UapiClient {
            name: name.to_string(),
            path: super::socket_path(dir, name),
        }
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> WgError {
        WgError::Io {
            dev: self.name.clone(),
            op,
            source,
        }
    }

    fn protocol(&self, reason: String) -> WgError {
        WgError::Protocol {
            dev: self.name.clone(),
            reason,
        }
    }

    /// Sends one request and returns the answer up to (not including) its empty line.
    fn exchange(&self, request: &str) -> Result<String, WgError> {
        let mut stream = UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                WgError::NoDevice(self.name.clone())
            }
            _ => self.io("connect to control socket", e),
        })?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| self.io("set socket timeout", e))?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| self.io("send request", e))?;
        let mut reader = BufReader::new(stream).take(MAX_ANSWER_BYTES);
        let mut answer = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| self.io("read answer", e))?;
            if n == 0 {
                return Err(
                    self.protocol("control socket closed before the end of the answer".into())
                );
            }
            if line == "\n" {
                return Ok(answer);
            }
            answer.push_str(&line);
        }
    }
}

impl WgDevice for UapiClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self) -> Result<DeviceState, WgError> {
        let answer = self.exchange("get=1\n\n")?;
        let (state, errno) =
            text::parse_get(&answer).map_err(|e| self.protocol(format!("get: {e}")))?;
        if errno != 0 {
            return Err(WgError::Refused {
                dev: self.name.clone(),
                errno,
            });
        }
        Ok(state)
    }

    fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        let answer = self.exchange(&text::format_set(update))?;
        let value = answer
            .trim_end_matches('\n')
            .strip_prefix("errno=")
            .ok_or_else(|| {
                self.protocol(format!("set: expected errno=N, got {:?}", cut(&answer)))
            })?;
        let errno = text::parse_errno(value, 1).map_err(|e| self.protocol(format!("set: {e}")))?;
        if errno != 0 {
            return Err(WgError::Refused {
                dev: self.name.clone(),
                errno,
            });
        }
        Ok(())
    }
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}
