//! Flags, in the shape of upstream's `netpol.args` (kube-network-policies):
//! `--hostname-override=$(MY_NODE_NAME)`, `--v=N`, plus `--kubeconfig`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::compile::CompileOptions;
use crate::daemon::Config;

/// The enforcer's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flannel-netpol",
    version,
    about = "Kubernetes NetworkPolicy enforced in nftables (table inet flannel-netpol)"
)]
pub struct Options {
    /// This node's name (default: $MY_NODE_NAME, else the hostname).
    #[arg(long = "hostname-override", default_value = "")]
    pub hostname_override: String,
    /// Log verbosity (klog compatible); 2 and above also log denied packets to NFLOG.
    #[arg(long = "v", default_value_t = 0)]
    pub verbosity: u32,
    /// NFLOG group of denied packets (with --flows, or --v >= 2).
    #[arg(long = "nflog-group", default_value_t = 100)]
    pub nflog_group: u16,
    /// Keep flow records (conntrack events, denied packets via NFLOG) and serve them on
    /// /flows; keeps denied packets logged to NFLOG whatever --v says. --flows=false gives the
    /// rules of --v alone.
    #[arg(long = "flows", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub flows: bool,
    /// With --flows: denied packets logged per second by each drop rule, at most (and as many
    /// in a burst); the drops beyond are still counted, only not recorded. 0: no limit.
    #[arg(long = "flow-drop-log-rate", default_value_t = 100)]
    pub flow_drop_log_rate: u32,
    /// Flow records kept in memory (the newest), with --flows.
    #[arg(long = "flow-buffer", default_value_t = 8192)]
    pub flow_buffer: usize,
    /// kubeconfig file (default: $KUBECONFIG, else the in-cluster service account).
    #[arg(long = "kubeconfig", default_value = "")]
    pub kubeconfig: String,
    /// API server URL, overriding the kubeconfig's (the lab's plain-HTTP emulator).
    #[arg(long = "kube-api-url", default_value = "")]
    pub kube_api_url: String,
    /// Address of /metrics and /healthz.
    #[arg(long = "metrics-bind-address", default_value = "0.0.0.0:9080")]
    pub metrics_bind_address: SocketAddr,
    /// Milliseconds from the first change to the sync that covers it.
    #[arg(long = "sync-debounce-ms", default_value_t = 5)]
    pub sync_debounce_ms: u64,
}

impl Options {
    /// The daemon configuration; `env` and `hostname` give the node name when the flag is
    /// empty (`MY_NODE_NAME`, then the host name).
    pub fn config(&self, env_node: Option<String>, hostname: impl FnOnce() -> String) -> Config {
        let node = Some(self.hostname_override.clone())
            .filter(|n| !n.is_empty())
            .or(env_node.filter(|n| !n.is_empty()))
            .unwrap_or_else(hostname);
        Config {
            node,
            compile: CompileOptions {
                nflog_group: (self.flows || self.verbosity >= 2).then_some(self.nflog_group),
                identify_drops: self.flows,
                drop_log_rate: Some(self.flow_drop_log_rate).filter(|r| *r > 0),
            },
            flows: self.flows,
            flow_buffer: self.flow_buffer,
            debounce: Duration::from_millis(self.sync_debounce_ms),
            metrics_addr: self.metrics_bind_address,
            kube_api_url: self.kube_api_url.clone(),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

/// The host name (`/proc/sys/kernel/hostname`), the last resort for the node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_netpol_args_parse() {
        let o = Options::try_parse_from([
            "flannel-netpol",
            "--hostname-override=n1",
            "--v=2",
            "--kubeconfig=/etc/kubeconfig",
        ])
        .unwrap();
        let c = o.config(Some("env-node".into()), || "host".into());
        assert_eq!(c.node, "n1");
        assert_eq!(c.compile.nflog_group, Some(100));
        assert_eq!(c.kubeconfig, "/etc/kubeconfig");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9080");
        assert_eq!(c.debounce, Duration::from_millis(5));
    }

    #[test]
    fn node_name_falls_back_to_env_then_hostname() {
        let o = Options::try_parse_from(["flannel-netpol", "--v", "1"]).unwrap();
        assert_eq!(
            o.config(Some("env-node".into()), || "host".into()).node,
            "env-node"
        );
        assert_eq!(o.config(Some(String::new()), || "host".into()).node, "host");
        // Flow records keep denied packets logged by default; --flows=false restores the
        // rules of --v alone (no NFLOG below --v 2).
        assert_eq!(
            o.config(None, || "host".into()).compile.nflog_group,
            Some(100)
        );
        let off = Options::try_parse_from(["flannel-netpol", "--v", "1", "--flows=false"]).unwrap();
        let c = off.config(None, || "host".into());
        assert_eq!((c.compile.nflog_group, c.flows), (None, false));
        let on =
            Options::try_parse_from(["flannel-netpol", "--flows", "--flow-buffer=64"]).unwrap();
        let c = on.config(None, || "host".into());
        assert_eq!((c.flows, c.flow_buffer), (true, 64));
        assert_eq!(c.compile.drop_log_rate, Some(100), "limited by default");
        let unlimited =
            Options::try_parse_from(["flannel-netpol", "--flow-drop-log-rate=0"]).unwrap();
        let c = unlimited.config(None, || "host".into());
        assert_eq!(c.compile.drop_log_rate, None);
        assert!(
            Options::try_parse_from(["flannel-netpol", "--metrics-bind-address", "x"]).is_err()
        );
    }
}
