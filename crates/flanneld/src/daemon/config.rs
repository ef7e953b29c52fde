//! The daemon's settings, built once from the flags.
//!
//! The daemon does not read `cli::Options`: flags are a compatibility surface (spellings,
//! environment variables, Go parsing rules), while the daemon needs typed values (durations,
//! socket addresses). Keeping the two apart means tests and other front ends can build a
//! daemon without going through flag parsing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Options;
use crate::iface::Selection;

/// Where the lease comes from; reported in `flannel_build_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    /// etcd v3 leases.
    Etcd,
    /// The Kubernetes node API (`--kube-subnet-mgr`).
    Kube,
}

impl Datastore {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Datastore::Etcd => "etcd",
            Datastore::Kube => "kube",
        }
    }
}

/// What the daemon needs from the flags.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `--subnet-file`: where subnet.env is written (and the previous run's is read).
    pub subnet_file: PathBuf,
    /// `--healthz-ip`/`--healthz-port`; `None` when the port is 0 (no HTTP server).
    pub healthz: Option<SocketAddr>,
    /// `--iface`, `--iface-regex`, `--iface-can-reach`, `--public-ip(v6)`.
    pub selection: Selection,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable`.
    pub ip_masq_fully_random_disable: bool,
    /// `--iptables-forward-rules`.
    pub forward_rules: bool,
    /// `--iptables-resync`: how often rules are checked and repaired.
    pub rules_resync: Duration,
    /// `--ip-blackhole-route`.
    pub blackhole_route: bool,
    /// `--subnet-lease-renew-margin`: how long before expiry the lease is renewed.
    pub renew_margin: Duration,
    /// Which subnet manager runs.
    pub datastore: Datastore,
}

impl From<&Options> for DaemonConfig {
    fn from(o: &Options) -> DaemonConfig {
        DaemonConfig {
            subnet_file: o.subnet_file.clone(),
            healthz: (o.healthz_port > 0).then(|| SocketAddr::new(o.healthz_ip, o.healthz_port)),
            selection: Selection {
                iface: o.iface.clone(),
                iface_regex: o.iface_regex.clone(),
                iface_can_reach: o.iface_can_reach,
                public_ip: o.public_ip.clone(),
                public_ipv6: o.public_ipv6.clone(),
            },
            ip_masq: o.ip_masq,
            ip_masq_fully_random_disable: o.ip_masq_fully_random_disable,
            forward_rules: o.iptables_forward_rules,
            rules_resync: Duration::from_secs(o.iptables_resync),
            blackhole_route: o.ip_blackhole_route,
            renew_margin: Duration::from_secs(u64::from(o.subnet_lease_renew_margin) * 60),
            datastore: if o.kube_subnet_mgr {
                Datastore::Kube
            } else {
                Datastore::Etcd
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_typed_settings() {
        let args = [
            "--healthz-port=0",
            "--iptables-resync=7",
            "--subnet-lease-renew-margin=3",
            "--kube-subnet-mgr",
            "--iface=eth1",
        ];
        let opts = crate::cli::parse_from(args, |_| None).expect("flags parse");
        let c = DaemonConfig::from(&opts);
        assert_eq!(c.healthz, None);
        assert_eq!(c.rules_resync, Duration::from_secs(7));
        assert_eq!(c.renew_margin, Duration::from_secs(180));
        assert_eq!(c.datastore, Datastore::Kube);
        assert_eq!(c.selection.iface, vec!["eth1".to_string()]);
        let opts = crate::cli::parse_from(["--healthz-port=8471"], |_| None).unwrap();
        let c = DaemonConfig::from(&opts);
        assert_eq!(c.healthz, Some("0.0.0.0:8471".parse().unwrap()));
        assert_eq!(c.datastore, Datastore::Etcd);
    }
}
