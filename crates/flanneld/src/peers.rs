//! The peer set the backend programs: every lease the datastore reports, minus the ones no
//! backend may act on.
//!
//! A peer must not be able to steer traffic outside the cluster network or hijack our own
//! subnet, and a public IP that cannot be a remote host makes routes that black-hole traffic;
//! overlapping subnets mean a broken or hostile writer. Such leases are left out (and logged
//! once), the rest are handed to the backend as borrowed leases.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use flannel_types::{IpFamily, Lease, LeaseEvent, LeaseSet, NetConfig, SubnetKey};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::metrics::{KindLabel, Metrics};

/// What peer validation needs to know about the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster IPv4 network, when IPv4 is enabled.
    pub network: Option<IpNet>,
    /// The cluster IPv6 network, when IPv6 is enabled.
    pub ipv6_network: Option<IpNet>,
    /// `SubnetLen`: the IPv4 prefix length the allocators hand out.
    pub subnet_len: u8,
    /// `IPv6SubnetLen`.
    pub ipv6_subnet_len: u8,
}

impl Cluster {
    /// The cluster as net-conf.json describes it (disabled families have no network).
    pub fn from_config(config: &NetConfig) -> Cluster {
        Cluster {
            network: config.network.filter(|_| config.enable_ipv4).map(IpNet::V4),
            ipv6_network: config
                .ipv6_network
                .filter(|_| config.enable_ipv6)
                .map(IpNet::V6),
            subnet_len: config.subnet_len,
            ipv6_subnet_len: config.ipv6_subnet_len,
        }
    }

    fn network_of(&self, family: IpFamily) -> Option<IpNet> {
        match family {
            IpFamily::V4 => self.network,
            IpFamily::V6 => self.ipv6_network,
        }
    }

    fn subnet_len_of(&self, family: IpFamily) -> u8 {
        match family {
            IpFamily::V4 => self.subnet_len,
            IpFamily::V6 => self.ipv6_subnet_len,
        }
    }
}

/// Why a peer lease is unusable no matter the backend; `None` when it is fine.
pub fn peer_problem(peer: &Lease, own: &Lease, cluster: &Cluster) -> Option<String> {
    if let Some(why) = IpFamily::ALL
        .into_iter()
        .find_map(|f| family_problem(peer, own, cluster, f))
    {
        return Some(why);
    }
    if peer.subnet.is_none() && peer.ipv6_subnet.is_none() {
        return Some("lease has no subnet".into());
    }
    None
}

/// One family's part of [`peer_problem`].
fn family_problem(peer: &Lease, own: &Lease, cluster: &Cluster, f: IpFamily) -> Option<String> {
    let sn = peer.subnet_of(f)?;
    let (what, addr_what) = match f {
        IpFamily::V4 => ("subnet", "public IP"),
        IpFamily::V6 => ("IPv6 subnet", "public IPv6"),
    };
    if let Some(net) = cluster.network_of(f)
        && !(net.contains(&sn) && sn.prefix_len() > net.prefix_len())
    {
        return Some(format!("{what} {sn} is not inside the network {net}"));
    }
    if let Some(own_sn) = own.subnet_of(f)
        && (own_sn.contains(&sn) || sn.contains(&own_sn))
    {
        return Some(format!("{what} {sn} overlaps our own subnet {own_sn}"));
    }
    match peer.attrs.public_ip_of(f) {
        Some(ip) if usable_public_ip(ip) => None,
        Some(ip) => Some(format!("{addr_what} {ip} cannot be a remote node")),
        // v6-only: an IPv6 subnet is useless without an address to reach it.
        None if cluster.network.is_none() => {
            Some("IPv6 subnet without a public IPv6 address".into())
        }
        None => None,
    }
}

/// Peers whose subnets overlap another peer's, each with the reason it is ignored.
///
/// The allocators never hand out overlapping subnets, so an overlap means a broken or hostile
/// writer: a /25 planted inside another node's /24 would divert part of that node's pods to
/// somebody else on every node. When exactly one side of an overlapping pair has the prefix
/// length the config allocates (`SubnetLen`), the other is ignored; otherwise both are. Leases
/// of different lengths that do not overlap (a `SubnetLen` change rolling through the cluster)
/// are left alone.
pub fn peer_conflicts(peers: &[&Lease], cluster: &Cluster) -> BTreeMap<SubnetKey, String> {
    let mut out = BTreeMap::new();
    for family in IpFamily::ALL {
        let subnets: Vec<(IpNet, SubnetKey)> = peers
            .iter()
            .filter_map(|l| Some((l.subnet_of(family)?, l.key())))
            .collect();
        scan_overlaps(subnets, cluster.subnet_len_of(family), &mut out);
    }
    out
}

/// One sweep over one family's subnets sorted by start address (widest first): each subnet is
/// compared with the one reaching furthest so far.
fn scan_overlaps(
    mut items: Vec<(IpNet, SubnetKey)>,
    want_len: u8,
    out: &mut BTreeMap<SubnetKey, String>,
) {
    items.sort_by_key(|(net, _)| (net.network(), net.prefix_len()));
    let mut cover: Option<usize> = None;
    for i in 0..items.len() {
        if let Some(c) = cover
            && items[i].0.network() <= items[c].0.broadcast()
        {
            let ((a, a_key), (b, b_key)) = (items[c], items[i]);
            let (a_ok, b_ok) = (a.prefix_len() == want_len, b.prefix_len() == want_len);
            if !a_ok || b_ok {
                out.entry(a_key)
                    .or_insert_with(|| format!("subnet {a} overlaps peer subnet {b}"));
            }
            if !b_ok || a_ok {
                out.entry(b_key)
                    .or_insert_with(|| format!("subnet {b} overlaps peer subnet {a}"));
            }
        }
        if cover.is_none_or(|c| items[i].0.broadcast() > items[c].0.broadcast()) {
            cover = Some(i);
        }
    }
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

/// The peer leases the datastore reported, and which of them the backend may program.
#[derive(Debug)]
pub struct Peers {
    set: LeaseSet,
    cluster: Cluster,
    /// Whether the first full snapshot has arrived: before it, nothing is reconciled.
    pub synced: bool,
    warned: BTreeMap<SubnetKey, String>,
    metrics: Arc<Metrics>,
}

impl Peers {
    /// An empty set that knows our own lease (never a peer).
    pub fn new(own: &Lease, cluster: Cluster, metrics: Arc<Metrics>) -> Peers {
        Peers {
            set: LeaseSet::new(Some(own.clone())),
            cluster,
            synced: false,
            warned: BTreeMap::new(),
            metrics,
        }
    }

    /// Feeds one event; returns whether the peer set changed.
    pub fn apply(&mut self, ev: LeaseEvent) -> bool {
        if matches!(ev, LeaseEvent::Snapshot(_)) {
            if self.synced {
                self.metrics.watch_resyncs.inc();
            }
            self.synced = true;
        }
        let changes = self.set.apply(ev);
        for c in &changes {
            match c {
                LeaseEvent::Added(l) => {
                    Metrics::inc(&self.metrics.lease_events, "added");
                    info!("Subnet added: {} via {}", l.key(), l.attrs.public_ip)
                }
                LeaseEvent::Removed(l) => {
                    Metrics::inc(&self.metrics.lease_events, "removed");
                    info!("Subnet removed: {}", l.key());
                    self.warned.remove(&l.key());
                }
                LeaseEvent::Snapshot(_) => {}
            }
        }
        !changes.is_empty()
    }

    /// Valid peers for the backend, borrowed from the set: a copy of 5000 leases would be
    /// about 1 MiB on top of the reconcile's own peak.
    ///
    /// Warnings and the peer metrics are updated first, with `&mut self`, so that the list
    /// itself only needs a shared borrow for the duration of the reconcile.
    pub fn desired(&mut self, own: &Lease) -> Vec<&Lease> {
        let problems = self.problems(own);
        for (key, why) in &problems {
            if self.warned.get(key) != Some(why) {
                warn!("ignoring peer lease {key}: {why}");
                self.warned.insert(*key, why.clone());
            }
        }
        self.metrics.peers_ignored.set(problems.len() as i64);
        self.metrics.peers.clear();
        let out: Vec<&Lease> = self
            .set
            .leases()
            .filter(|l| !problems.contains_key(&l.key()))
            .collect();
        for l in &out {
            let kind = match l.attrs.backend_type.as_str() {
                "" => "udp",
                t => t,
            };
            self.metrics
                .peers
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc();
        }
        out
    }

    /// Why each unusable peer lease is left out: its own problem, or a conflict with another
    /// valid peer.
    fn problems(&self, own: &Lease) -> BTreeMap<SubnetKey, String> {
        let valid: Vec<&Lease> = self
            .set
            .leases()
            .filter(|l| peer_problem(l, own, &self.cluster).is_none())
            .collect();
        let conflicts = peer_conflicts(&valid, &self.cluster);
        self.set
            .leases()
            .filter_map(|l| {
                peer_problem(l, own, &self.cluster)
                    .or_else(|| conflicts.get(&l.key()).cloned())
                    .map(|why| (l.key(), why))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_types::LeaseAttrs;

    fn lease(sn: &str, ip: &str) -> Lease {
        crate::testing::lease(sn, ip, "")
    }

    fn v4_cluster(len: u8) -> Cluster {
        Cluster {
            network: Some("10.244.0.0/16".parse().unwrap()),
            ipv6_network: None,
            subnet_len: len,
            ipv6_subnet_len: 64,
        }
    }

    #[test]
    fn peers_outside_network_or_over_our_subnet_are_refused() {
        let own = lease("10.244.1.0/24", "198.18.0.1");
        let check = |sn: &str, ip: &str| peer_problem(&lease(sn, ip), &own, &v4_cluster(24));
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
        let mut empty = lease("10.244.2.0/24", "198.18.0.2");
        empty.subnet = None;
        assert_eq!(
            peer_problem(&empty, &own, &v4_cluster(24)).as_deref(),
            Some("lease has no subnet")
        );
    }

    #[test]
    fn overlapping_peers_are_ignored_preferring_the_configured_length() {
        let a = lease("10.244.1.0/24", "198.18.0.1");
        let hijack = lease("10.244.1.0/25", "198.18.0.9");
        let b = lease("10.244.2.0/24", "198.18.0.2");
        let migrated = lease("10.244.16.0/20", "198.18.0.3");
        let c = peer_conflicts(&[&a, &hijack, &b, &migrated], &v4_cluster(24));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[&hijack.key()].contains("overlaps peer subnet 10.244.1.0/24"));
        // Neither has the configured length: both go.
        let x = lease("10.244.64.0/20", "198.18.0.4");
        let y = lease("10.244.64.0/21", "198.18.0.5");
        assert_eq!(peer_conflicts(&[&x, &y], &v4_cluster(24)).len(), 2);
        // A wide lease covering several /24s is the one ignored.
        let wide = lease("10.244.0.0/22", "198.18.0.6");
        let c = peer_conflicts(&[&a, &b, &wide], &v4_cluster(24));
        assert_eq!(c.keys().collect::<Vec<_>>(), vec![&wide.key()]);
        // No overlap, no conflict, whatever the lengths.
        assert!(peer_conflicts(&[&a, &b, &migrated], &v4_cluster(24)).is_empty());
    }

    #[test]
    fn v6_overlaps_are_found_too() {
        let v6 = |sn: &str| Lease {
            subnet: None,
            ipv6_subnet: Some(sn.parse().unwrap()),
            attrs: LeaseAttrs {
                public_ipv6: Some("fd00:198::9".parse().unwrap()),
                ..Default::default()
            },
            expiration: None,
        };
        let a = v6("fd00:10:0:2::/64");
        let hijack = v6("fd00:10:0:2::/65");
        let c = peer_conflicts(&[&a, &hijack], &v4_cluster(24));
        assert_eq!(c.keys().collect::<Vec<_>>(), vec![&hijack.key()]);
    }

    #[test]
    fn v6_peers_need_a_public_v6_address_in_v6_only_mode() {
        let cluster = Cluster {
            network: None,
            ipv6_network: Some("fd00:10::/56".parse().unwrap()),
            subnet_len: 24,
            ipv6_subnet_len: 64,
        };
        let own = Lease {
            subnet: None,
            ipv6_subnet: Some("fd00:10:0:1::/64".parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        let mut peer = own.clone();
        peer.ipv6_subnet = Some("fd00:10:0:2::/64".parse().unwrap());
        assert_eq!(
            peer_problem(&peer, &own, &cluster).as_deref(),
            Some("IPv6 subnet without a public IPv6 address")
        );
        peer.attrs.public_ipv6 = Some("fd00:198::2".parse().unwrap());
        assert_eq!(peer_problem(&peer, &own, &cluster), None);
        peer.attrs.public_ipv6 = Some("::1".parse().unwrap());
        assert_eq!(
            peer_problem(&peer, &own, &cluster).as_deref(),
            Some("public IPv6 ::1 cannot be a remote node")
        );
        peer.ipv6_subnet = Some("fd00:99::/64".parse().unwrap());
        assert!(
            peer_problem(&peer, &own, &cluster)
                .unwrap()
                .starts_with("IPv6 subnet fd00:99::/64 is not inside")
        );
    }
}
