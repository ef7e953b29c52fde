//! Reachability checks with iputils `ping`.
//!
//! Real ICMP through the real kernel path (bridges, vxlan, routes, nftables) is the most direct
//! evidence that a data plane works, so tests assert with it.

use std::net::IpAddr;
use std::time::Duration;

use crate::command::{netns_exec_command, run_command};
use crate::error::{LabError, Result};
use crate::netns::Netns;

/// Pings `to` from inside `from`: `Ok(true)` if at least one of `count` echo requests was
/// answered within `timeout`, `Ok(false)` if none was (or the destination is unreachable).
///
/// "Not reachable" is an ordinary answer, not an error, because tests assert both ways (isolation
/// and masquerade tests expect `false`). The run is bounded twice: `ping -w` ends it at `timeout`
/// (rounded up to whole seconds, at least 1), and the process is killed if it overruns by 5 s.
/// Errors mean `ping` itself could not run (missing `iputils-ping`, no namespace).
pub fn ping(from: &Netns, to: IpAddr, count: u32, timeout: Duration) -> Result<bool> {
    let count = count.max(1);
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let secs = secs.max(1).to_string();
    let family = if to.is_ipv6() { "-6" } else { "-4" };
    let count_s = count.to_string();
    let to_s = to.to_string();
    let cmd = netns_exec_command(
        from.name(),
        [
            "ping", family, "-n", "-q", "-i", "0.2", "-c", &count_s, "-W", &secs, "-w", &secs,
            &to_s,
        ],
    )?;
    let out = run_command(cmd, None, timeout + Duration::from_secs(5))?;
    match out.status.code() {
        Some(0) => Ok(true),
        // 1: no reply; 2: an error such as "Network is unreachable": both mean not reachable.
        Some(1) | Some(2) => Ok(false),
        _ => Err(LabError::CommandFailed {
            command: format!("ping {family} -c {count} {to} in {}", from.name()),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}
