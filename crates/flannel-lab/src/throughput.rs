//! TCP throughput between two lab namespaces with iperf3.
//!
//! The figures that matter on a shared 2-vCPU machine are ratios (pod path against the underlay
//! path measured the same way), so each measurement is one iperf3 run with one TCP stream: a
//! one-off server (`iperf3 -s -1`) in the target namespace, the client with `-J` in the source
//! namespace, every wait bounded.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::command::{describe, run_command};
use crate::error::{LabError, Result};
use crate::host::require_binary;
use crate::netns::Netns;
use crate::process::spawn_in;

/// The port the iperf3 server listens on inside the target namespace (iperf3's default; each
/// namespace has its own ports, so parallel labs do not collide).
pub const IPERF3_PORT: u16 = 5201;

/// How long the server may take to start listening.
const SERVER_START: Duration = Duration::from_secs(10);

/// Slack on top of the test duration before the client is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(30);

/// One iperf3 result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// What the receiver got, in bits per second.
    pub bits_per_second: f64,
    /// TCP retransmissions the sender counted (noise on a VM; reported, not judged).
    pub retransmits: Option<u64>,
}

impl Throughput {
    /// Gbit/s, for tables.
    pub fn gbits(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Measures TCP throughput from namespace `from` to `to_ip`, served from namespace `to`, for
/// `duration`; the server's output goes to `server_log`.
pub fn iperf3(
    from: &Netns,
    to: &Netns,
    to_ip: IpAddr,
    duration: Duration,
    server_log: &Path,
) -> Result<Throughput> {
    require_binary("iperf3")?;
    let port = IPERF3_PORT.to_string();
    let mut server_cmd = Command::new("iperf3");
    server_cmd.args(["-s", "-1", "-p", &port]);
    // A guard: stopped on every path out of this function, including errors.
    let mut server = spawn_in(to, server_cmd, server_log)?;
    let deadline = Instant::now() + SERVER_START;
    while !listening(server.pid(), IPERF3_PORT) {
        server.ensure_running()?;
        if Instant::now() >= deadline {
            return Err(server.error(format!(
                "not listening on port {IPERF3_PORT} within {SERVER_START:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = duration.as_secs().max(1).to_string();
    let mut client = from.command("iperf3")?;
    client.args([
        "-c",
        &to_ip.to_string(),
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ]);
    let line = describe(&client);
    let out = run_command(client, None, duration + CLIENT_SLACK)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let result = parse_iperf3_json(&text).map_err(|e| LabError::CommandFailed {
        command: line,
        status: out.status.to_string(),
        stdout: e,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    });
    // The one-off server exits after its client; the guard stops it if it has not.
    let _ = server.wait_timeout(Duration::from_secs(2));
    result
}

/// Extracts the receiver's rate from `iperf3 -J` output; the error is iperf3's own `error`
/// field when it reported one.
pub fn parse_iperf3_json(text: &str) -> std::result::Result<Throughput, String> {
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("iperf3 printed no JSON result ({e}): {}", text.trim()))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {err}"));
    }
    let end = v
        .get("end")
        .ok_or_else(|| "iperf3 JSON without \"end\"".to_string())?;
    let bps = end
        .pointer("/sum_received/bits_per_second")
        .or_else(|| end.pointer("/sum/bits_per_second"))
        .and_then(Value::as_f64)
        .ok_or_else(|| "iperf3 JSON without end.sum_received.bits_per_second".to_string())?;
    Ok(Throughput {
        bits_per_second: bps,
        retransmits: end.pointer("/sum_sent/retransmits").and_then(Value::as_u64),
    })
}

/// Whether process `pid` has a TCP socket listening on `port`, read from its own view of
/// `/proc/<pid>/net/tcp{,6}` (so in its namespace) without connecting: a probe connection
/// would use up the one-off server.
fn listening(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // local_address is column 1, state column 3; 0A is LISTEN.
                    cols.len() > 3 && cols[1].ends_with(&suffix) && cols[3] == "0A"
                })
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_receiver_rate_and_errors() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":1.6e10,"retransmits":12},
                    "sum_received":{"bits_per_second":1.54e10}}}"#;
        let t = parse_iperf3_json(ok).unwrap();
        assert_eq!(t.bits_per_second, 1.54e10);
        assert_eq!(t.retransmits, Some(12));
        assert!((t.gbits() - 15.4).abs() < 1e-9);
        let err = parse_iperf3_json(
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#,
        )
        .unwrap_err();
        assert!(err.contains("Connection refused"), "{err}");
        assert!(parse_iperf3_json("iperf3: error").is_err());
        assert!(parse_iperf3_json(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn listening_reads_own_sockets() {
        // In a namespace of its own; /proc/<tid>/net shows the calling thread's namespace.
        crate::in_fresh_netns("listen", || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let port = l.local_addr().unwrap().port();
            assert!(listening(tid, port));
            drop(l);
            assert!(!listening(tid, port));
        })
        .unwrap();
    }
}
