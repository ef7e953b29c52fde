//! The sysctls the enforcer sets in its own network namespace (the node's, as a host-network
//! container).
//!
//! `net.bridge.bridge-nf-call-iptables` and `-ip6tables`: pods of one node talk across the
//! `cni0` bridge; without these sysctls bridged packets skip the inet forward hook and
//! same-node traffic would bypass every policy. kube-proxy needs the same setting. They exist
//! only with the br_netfilter module loaded; a failure is logged, not fatal (cross-node
//! traffic is still enforced).
//!
//! `net.netfilter.nf_conntrack_acct` (with `--flows`): conntrack counts packets and bytes per
//! flow only with it on, and flow records report those counters when a flow ends. It costs
//! one counter update per packet of a tracked flow (no allocation: the kernel keeps the
//! counters in the entry's extension area) and only affects flows created after it is set.

use std::path::Path;

use tracing::{info, warn};

/// The sysctls, as files under `/proc/sys`.
pub const BRIDGE_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Writes `1` to each sysctl under `root` (`/` in production) that is not 1 yet; returns the
/// failures after logging them.
pub fn enable_bridge_netfilter(root: &Path) -> Vec<(String, std::io::Error)> {
    BRIDGE_SYSCTLS
        .iter()
        .filter_map(|file| {
            enable(
                root,
                file,
                "traffic between pods of this node bypasses NetworkPolicy (load br_netfilter)",
            )
        })
        .collect()
}

/// Conntrack's per-flow packet and byte counters, for flow records.
pub const CONNTRACK_ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";

/// Turns on [`CONNTRACK_ACCT`] under `root`; the failure, if any, after logging it.
pub fn enable_conntrack_accounting(root: &Path) -> Option<(String, std::io::Error)> {
    enable(
        root,
        CONNTRACK_ACCT,
        "flow records will carry no byte or packet counts",
    )
}

/// Writes `1` to `file` under `root` unless it is 1 already; logs what happened, with
/// `consequence` when the write failed.
fn enable(root: &Path, file: &str, consequence: &str) -> Option<(String, std::io::Error)> {
    let path = root.join(file.trim_start_matches('/'));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return None;
    }
    match std::fs::write(&path, "1\n") {
        Ok(()) => {
            info!("set {file} = 1");
            None
        }
        Err(e) => {
            warn!("cannot set {file} = 1: {e}; {consequence}");
            Some((file.to_string(), e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_is_not_set_and_reports_what_is_missing() {
        let root = std::env::temp_dir().join(format!("np-sysctl-{}", std::process::id()));
        let dir = root.join("proc/sys/net/bridge");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bridge-nf-call-iptables"), "0\n").unwrap();
        // The ip6tables one cannot be written (a directory stands in for a refused write).
        std::fs::create_dir_all(dir.join("bridge-nf-call-ip6tables")).unwrap();
        let failures = enable_bridge_netfilter(&root);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, BRIDGE_SYSCTLS[1]);
        let v = std::fs::read_to_string(dir.join("bridge-nf-call-iptables")).unwrap();
        assert_eq!(v, "1\n");
        // Accounting: missing directory is a failure, then written once it exists.
        assert!(enable_conntrack_accounting(&root).is_some());
        std::fs::create_dir_all(root.join("proc/sys/net/netfilter")).unwrap();
        assert!(enable_conntrack_accounting(&root).is_none());
        let acct = root.join(CONNTRACK_ACCT.trim_start_matches('/'));
        assert_eq!(std::fs::read_to_string(acct).unwrap(), "1\n");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
