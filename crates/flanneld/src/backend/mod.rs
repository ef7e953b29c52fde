//! Backends: how packets for a peer's subnet reach the peer.
//!
//! Every backend follows the same life cycle, driven by the daemon:
//! 1. [`Backend::prepare`] creates or adopts its device and returns the lease attributes to
//!    publish (the VXLAN MAC has to exist before the lease is written);
//! 2. [`Backend::configure`] applies what depends on our own lease (the device address);
//! 3. [`Backend::reconcile`] is called with the full desired peer set after every change, on
//!    a repair tick and when its device disappears. It checks the device, dumps the kernel
//!    entries it owns, diffs them against the peers and applies the difference in one batch.
//!
//! Backends see only `flannel-types` leases, never etcd or Kubernetes objects.

use std::net::IpAddr;

use flannel_netlink::{Netlink, NetlinkError};
use std::collections::BTreeMap;

use flannel_types::{Lease, LeaseAttrs, NetConfig, SubnetKey};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::iface::ExternalInterface;
use crate::reconcile::ReconcileStats;

pub mod hostgw;
pub mod routes;
pub mod udp;
pub mod vxlan;

/// Why a backend could not be built, started or reconciled.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// net-conf.json names a backend flannel-rs does not have.
    #[error("unknown backend type: {0}")]
    UnknownType(String),
    /// The backend exists upstream but not (yet) here.
    #[error("backend type {0:?} is not supported by flannel-rs")]
    Unsupported(String),
    /// A `Backend` setting has the wrong type or an impossible value.
    #[error("invalid Backend config: {0}")]
    Config(String),
    /// host-gw cannot work through NAT (upstream's text).
    #[error(
        "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend"
    )]
    PublicIpDiffers,
    /// The device's MAC changed behind our back after it was brought up (upstream issue #1795).
    #[error("{dev}'s mac address wanted: {want}, but got: {got}")]
    MacMismatch {
        /// Device name.
        dev: String,
        /// The MAC we set.
        want: String,
        /// The MAC the kernel reports.
        got: String,
    },
    /// A netlink operation failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What we were doing.
        what: String,
        /// The netlink error.
        source: NetlinkError,
    },
    /// Something the backend needs is missing (an address family without an address).
    #[error("{0}")]
    Missing(String),
}

/// Wraps a netlink error with what we were doing.
pub(crate) fn nl_err(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> BackendError {
    let what = what.into();
    move |source| BackendError::Netlink { what, source }
}

/// What every backend needs to know about the node.
#[derive(Debug, Clone)]
pub struct BackendEnv {
    /// The netlink connection (the daemon's namespace).
    pub nl: Netlink,
    /// The external interface and public addresses.
    pub ext: ExternalInterface,
    /// The cluster IPv4 network, when IPv4 is enabled.
    pub network: Option<Ipv4Net>,
    /// The cluster IPv6 network, when IPv6 is enabled.
    pub ipv6_network: Option<Ipv6Net>,
}

/// The backend selected by `Backend.Type`.
#[derive(Debug)]
pub enum Backend {
    /// `vxlan`: kernel VXLAN devices with static neighbour/FDB entries.
    Vxlan(vxlan::VxlanBackend),
    /// `host-gw`: plain routes via peers' public IPs (same L2 segment only).
    HostGw(hostgw::HostGwBackend),
    /// `udp`: upstream's userspace TUN + UDP overlay, wire-compatible.
    Udp(udp::UdpBackend),
}

impl Backend {
    /// Builds the backend named in the config, parsing its `Backend` settings.
    pub fn new(config: &NetConfig, env: BackendEnv) -> Result<Backend, BackendError> {
        match config.backend_type.as_str() {
            "vxlan" => Ok(Backend::Vxlan(vxlan::VxlanBackend::new(config, env)?)),
            "host-gw" => Ok(Backend::HostGw(hostgw::HostGwBackend::new(env)?)),
            "udp" => Ok(Backend::Udp(udp::UdpBackend::new(config, env)?)),
            t @ ("ipip" | "wireguard" | "ipsec" | "alloc" | "extension" | "tencent-vpc") => {
                Err(BackendError::Unsupported(t.to_string()))
            }
            other => Err(BackendError::UnknownType(other.to_string())),
        }
    }

    /// The backend's type as written in leases (`BackendType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw(_) => "host-gw",
            Backend::Udp(_) => "udp",
        }
    }

    /// Creates or adopts the device and returns the attributes for our lease. `stored` are the
    /// attributes the datastore still holds for this node, from which the VTEP MAC is reused.
    pub async fn prepare(
        &mut self,
        stored: Option<&LeaseAttrs>,
    ) -> Result<LeaseAttrs, BackendError> {
        match self {
            Backend::Vxlan(b) => b.prepare(stored).await,
            Backend::HostGw(b) => b.prepare().await,
            Backend::Udp(b) => b.prepare().await,
        }
    }

    /// Applies what depends on our own lease (device addresses).
    pub async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        match self {
            Backend::Vxlan(b) => b.configure(own).await,
            Backend::Udp(b) => b.configure(own).await,
            Backend::HostGw(b) => {
                b.configure(own);
                Ok(())
            }
        }
    }

    /// The MTU pods should use (`FLANNEL_MTU`).
    pub fn mtu(&self) -> u32 {
        match self {
            Backend::Vxlan(b) => b.mtu(),
            Backend::HostGw(b) => b.mtu(),
            Backend::Udp(b) => b.mtu(),
        }
    }

    /// The device names whose deletion should trigger an immediate reconcile.
    pub fn devices(&self) -> Vec<String> {
        match self {
            Backend::Vxlan(b) => b.devices(),
            Backend::HostGw(_) => Vec::new(),
            Backend::Udp(b) => b.devices(),
        }
    }

    /// Converges the kernel to the given peers (our own lease excluded by the caller).
    pub async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        match self {
            Backend::Vxlan(b) => b.reconcile(peers).await,
            Backend::HostGw(b) => b.reconcile(peers).await,
            Backend::Udp(b) => b.reconcile(peers).await,
        }
    }
}

/// Why a peer lease is unusable no matter the backend; `None` when it is fine.
///
/// A peer must not be able to steer traffic outside the cluster network or hijack our own
/// subnet, and a public IP that cannot be a remote host makes routes that black-hole traffic.
pub fn peer_problem(
    peer: &Lease,
    own: &Lease,
    network: Option<Ipv4Net>,
    ipv6_network: Option<Ipv6Net>,
) -> Option<String> {
    if let Some(sn) = peer.subnet {
        match network {
            Some(net) if net.contains(&sn) && sn.prefix_len() > net.prefix_len() => {}
            Some(net) => return Some(format!("subnet {sn} is not inside the network {net}")),
            None => {}
        }
        if let Some(own_sn) = own.subnet
            && (own_sn.contains(&sn) || sn.contains(&own_sn))
        {
            return Some(format!("subnet {sn} overlaps our own subnet {own_sn}"));
        }
        if !usable_public_ip(IpAddr::V4(peer.attrs.public_ip)) {
            return Some(format!(
                "public IP {} cannot be a remote node",
                peer.attrs.public_ip
            ));
        }
    }
    if let Some(sn) = peer.ipv6_subnet {
        match ipv6_network {
            Some(net) if net.contains(&sn) && sn.prefix_len() > net.prefix_len() => {}
            Some(net) => return Some(format!("IPv6 subnet {sn} is not inside the network {net}")),
            None => {}
        }
        if let Some(own_sn) = own.ipv6_subnet
            && (own_sn.contains(&sn) || sn.contains(&own_sn))
        {
            return Some(format!("IPv6 subnet {sn} overlaps our own subnet {own_sn}"));
        }
        match peer.attrs.public_ipv6 {
            Some(ip) if usable_public_ip(IpAddr::V6(ip)) => {}
            Some(ip) => return Some(format!("public IPv6 {ip} cannot be a remote node")),
            None if network.is_none() => {
                return Some("IPv6 subnet without a public IPv6 address".into());
            }
            None => {}
        }
    }
    if peer.subnet.is_none() && peer.ipv6_subnet.is_none() {
        return Some("lease has no subnet".into());
    }
    None
}

/// Peers whose subnets overlap another peer's, each with the reason it is ignored.
///
/// The allocators never hand out overlapping subnets, so an overlap means a broken or hostile
/// writer: a /25 planted inside another node's /24 would divert part of that node's pods to
/// somebody else on every node. When exactly one side of an overlapping pair has the prefix
/// length the config allocates (`SubnetLen`), the other is ignored; otherwise both are. Leases
/// of different lengths that do not overlap (a `SubnetLen` change rolling through the cluster)
/// are left alone.
pub fn peer_conflicts(
    peers: &[&Lease],
    subnet_len: u8,
    ipv6_subnet_len: u8,
) -> BTreeMap<SubnetKey, String> {
    fn scan<N: Copy + Ord + std::fmt::Display>(
        mut items: Vec<(N, N, u8, SubnetKey, String)>,
        want_len: u8,
        out: &mut BTreeMap<SubnetKey, String>,
    ) {
        // (start, end, prefix len, key, text), sorted by start then widest first.
        items.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        let mut cover: Option<usize> = None;
        for i in 0..items.len() {
            if let Some(c) = cover
                && items[i].0 <= items[c].1
            {
                let (a, b) = (&items[c], &items[i]);
                let (a_ok, b_ok) = (a.2 == want_len, b.2 == want_len);
                if !a_ok || b_ok {
                    out.entry(a.3)
                        .or_insert_with(|| format!("subnet {} overlaps peer subnet {}", a.4, b.4));
                }
                if !b_ok || a_ok {
                    out.entry(b.3)
                        .or_insert_with(|| format!("subnet {} overlaps peer subnet {}", b.4, a.4));
                }
            }
            if cover.is_none_or(|c| items[i].1 > items[c].1) {
                cover = Some(i);
            }
        }
    }
    let mut out = BTreeMap::new();
    let v4 = peers
        .iter()
        .filter_map(|l| {
            let n = l.subnet?;
            Some((
                n.network(),
                n.broadcast(),
                n.prefix_len(),
                l.key(),
                n.to_string(),
            ))
        })
        .collect();
    scan(v4, subnet_len, &mut out);
    let v6 = peers
        .iter()
        .filter_map(|l| {
            let n = l.ipv6_subnet?;
            Some((
                n.network(),
                n.broadcast(),
                n.prefix_len(),
                l.key(),
                n.to_string(),
            ))
        })
        .collect();
    scan(v6, ipv6_subnet_len, &mut out);
    out
}

/// Addresses a remote node can really have: not unspecified, loopback, multicast, broadcast or
/// link-local.
pub fn usable_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_unicast_link_local())
        }
    }
}

/// Tallies a batch's results into `stats`: deletes of entries already gone count as done
/// (`absent`), everything else that failed is logged (the first few individually) and counted.
pub(crate) fn tally(
    ops: &[flannel_netlink::BatchOp],
    report: &flannel_netlink::BatchReport,
    backend: &str,
    stats: &mut ReconcileStats,
) {
    let mut logged = 0;
    for (op, result) in ops.iter().zip(report.results.iter()) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(e) if op.is_delete() && e.is_not_found() => "absent",
            Err(e) => {
                stats.failed += 1;
                logged += 1;
                if logged <= 5 {
                    tracing::warn!("{backend}: {} failed: {e}", op.op_name());
                }
                "error"
            }
        };
        *stats.ops.entry((op.op_name(), outcome)).or_default() += 1;
    }
    if logged > 5 {
        tracing::warn!("{backend}: {} more kernel changes failed", logged - 5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(sn: &str, ip: &str) -> Lease {
        Lease {
            subnet: Some(sn.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                ..Default::default()
            },
            expiration: None,
        }
    }

    #[test]
    fn peers_outside_network_or_over_our_subnet_are_refused() {
        let net = Some("10.244.0.0/16".parse().unwrap());
        let own = lease("10.244.1.0/24", "198.18.0.1");
        let check = |sn: &str, ip: &str| peer_problem(&lease(sn, ip), &own, net, None);
        assert_eq!(check("10.244.2.0/24", "198.18.0.2"), None);
        assert!(
            check("10.99.2.0/24", "198.18.0.2")
                .unwrap()
                .contains("not inside")
        );
        assert!(
            check("10.244.0.0/16", "198.18.0.2")
                .unwrap()
                .contains("not inside")
        );
        assert!(
            check("10.244.0.0/23", "198.18.0.2")
                .unwrap()
                .contains("overlaps")
        );
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.5",
            "255.255.255.255",
            "169.254.1.1",
        ] {
            assert!(check("10.244.2.0/24", bad).is_some(), "{bad} accepted");
        }
    }

    #[test]
    fn overlapping_peers_are_ignored_preferring_the_configured_length() {
        let a = lease("10.244.1.0/24", "198.18.0.1");
        let hijack = lease("10.244.1.0/25", "198.18.0.9");
        let b = lease("10.244.2.0/24", "198.18.0.2");
        let migrated = lease("10.244.16.0/20", "198.18.0.3");
        let c = conflicts(&[&a, &hijack, &b, &migrated], 24);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[&hijack.key()].contains("overlaps peer subnet 10.244.1.0/24"));
        // Neither has the configured length: both go.
        let x = lease("10.244.64.0/20", "198.18.0.4");
        let y = lease("10.244.64.0/21", "198.18.0.5");
        let c = conflicts(&[&x, &y], 24);
        assert_eq!(c.len(), 2);
        // A wide lease covering several /24s is the one ignored.
        let wide = lease("10.244.0.0/22", "198.18.0.6");
        let c = conflicts(&[&a, &b, &wide], 24);
        assert_eq!(c.keys().collect::<Vec<_>>(), vec![&wide.key()]);
        // No overlap, no conflict, whatever the lengths.
        assert!(conflicts(&[&a, &b, &migrated], 24).is_empty());
    }

    fn conflicts(peers: &[&Lease], len: u8) -> BTreeMap<SubnetKey, String> {
        peer_conflicts(peers, len, 64)
    }

    #[test]
    fn v6_peers_need_a_public_v6_address_in_v6_only_mode() {
        let net6: Option<Ipv6Net> = Some("fd00:10::/56".parse().unwrap());
        let own = Lease {
            subnet: None,
            ipv6_subnet: Some("fd00:10:0:1::/64".parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        let mut peer = own.clone();
        peer.ipv6_subnet = Some("fd00:10:0:2::/64".parse().unwrap());
        assert!(peer_problem(&peer, &own, None, net6).is_some());
        peer.attrs.public_ipv6 = Some("fd00:198::2".parse().unwrap());
        assert_eq!(peer_problem(&peer, &own, None, net6), None);
        peer.attrs.public_ipv6 = Some("::1".parse().unwrap());
        assert!(peer_problem(&peer, &own, None, net6).is_some());
    }
}
