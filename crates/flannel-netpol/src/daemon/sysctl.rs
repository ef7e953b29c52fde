//! `net.bridge.bridge-nf-call-iptables` and `-ip6tables`, set in the enforcer's own network
//! namespace (the node's, as a host-network container).
//!
//! Pods of one node talk across the `cni0` bridge; without these sysctls bridged packets skip
//! the inet forward hook and same-node traffic would bypass every policy. kube-proxy needs the
//! same setting. They exist only with the br_netfilter module loaded; a failure is logged, not
//! fatal (cross-node traffic is still enforced).

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
    let mut failures = Vec::new();
    for file in BRIDGE_SYSCTLS {
        let path = root.join(file.trim_start_matches('/'));
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        match std::fs::write(&path, "1\n") {
            Ok(()) => info!("set {file} = 1"),
            Err(e) => {
                warn!(
                    "cannot set {file} = 1: {e}; traffic between pods of this node bypasses NetworkPolicy (load br_netfilter)"
                );
                failures.push((file.to_string(), e));
            }
        }
    }
    failures
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
        std::fs::remove_dir_all(&root).unwrap();
    }
}
