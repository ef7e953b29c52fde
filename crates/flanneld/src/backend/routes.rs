//! Route reconciliation shared by host-gw and vxlan (onlink and DirectRouting routes).
//!
//! Which routes are ours: unicast routes in the main table whose destination lies strictly
//! inside a cluster network, that do not cover or sit inside one of our own subnets (the
//! `cni0` route and the optional blackhole route), and that the kernel did not derive from an
//! address. Anything else in that space was put there by flannel (ours or upstream's, which
//! leaves `proto boot`) for a peer, so it is fair game for repair and for stale-route removal.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_netlink::{BatchOp, Netlink, Route, RouteFilter, RouteKind, RouteProtocol};
use flannel_types::IpFamily;
use ipnet::IpNet;

use super::{BackendError, nl_err};
use crate::reconcile::{ReconcileStats, diff};

/// Where traffic for a peer subnet goes: the part of a route reconciliation compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTarget {
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK.
    pub onlink: bool,
}

impl RouteTarget {
    /// The route that realises this target for `dst`.
    pub fn to_route(self, dst: IpNet) -> Route {
        match (self.gateway, self.oif, self.onlink) {
            (Some(gw), Some(oif), true) => Route::onlink_via(dst, gw, oif),
            (Some(gw), oif, _) => Route::via(dst, gw, oif),
            (None, Some(oif), _) => Route::direct(dst, oif),
            (None, None, _) => Route::blackhole(dst),
        }
    }

    fn of(r: &Route) -> Self {
        RouteTarget {
            gateway: r.gateway,
            oif: r.oif,
            onlink: r.onlink,
        }
    }
}

/// The address space a backend's routes live in.
#[derive(Debug, Clone, Default)]
pub struct RouteSpace {
    /// Cluster networks (v4 and/or v6).
    pub networks: Vec<IpNet>,
    /// Our own subnets, never touched.
    pub own: Vec<IpNet>,
}

impl RouteSpace {
    /// True when a dumped route is one reconciliation manages.
    pub fn owns(&self, r: &Route) -> bool {
        r.kind == RouteKind::Unicast
            && r.protocol != RouteProtocol::KERNEL
            && self
                .networks
                .iter()
                .any(|n| n.contains(&r.dst) && r.dst.prefix_len() > n.prefix_len())
            && !self
                .own
                .iter()
                .any(|o| o.contains(&r.dst) || r.dst.contains(o))
    }
}

/// The routes we own as the kernel holds them.
#[derive(Debug, Default)]
pub struct OwnedRoutes {
    /// One route per destination.
    pub by_dst: BTreeMap<IpNet, Route>,
    /// Further routes for a destination already seen (other metrics): always removed.
    pub duplicates: Vec<Route>,
}

impl OwnedRoutes {
    /// Dumps the main table for the families in use and keeps the routes we own.
    pub async fn load(nl: &Netlink, space: &RouteSpace) -> Result<OwnedRoutes, BackendError> {
        let mut out = OwnedRoutes::default();
        let mut families: Vec<IpFamily> = space.networks.iter().map(IpFamily::of_net).collect();
        families.dedup();
        for f in families {
            let routes = nl
                .routes(&RouteFilter::main().family(f))
                .await
                .map_err(nl_err("dumping routes"))?;
            for r in routes.into_iter().filter(|r| space.owns(r)) {
                match out.by_dst.entry(r.dst) {
                    std::collections::btree_map::Entry::Occupied(_) => out.duplicates.push(r),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(r);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The batch operations that turn `actual` into `desired`: deletes and upserts kept apart so
/// the caller can order them around its neighbour and FDB changes.
#[derive(Debug, Default)]
pub struct RoutePlan {
    /// Stale routes and duplicates.
    pub deletes: Vec<BatchOp>,
    /// Missing or wrong routes (replace).
    pub upserts: Vec<BatchOp>,
    /// Counts for the summary.
    pub added: usize,
    /// Counts for the summary.
    pub removed: usize,
    /// Counts for the summary.
    pub unchanged: usize,
}

impl RoutePlan {
    /// Adds this plan's counts to a pass's stats.
    pub fn count_into(&self, stats: &mut ReconcileStats) {
        stats.added += self.added;
        stats.removed += self.removed;
        stats.unchanged += self.unchanged;
    }
}

/// Plans the route changes. Pure.
pub fn plan(desired: &BTreeMap<IpNet, RouteTarget>, actual: &OwnedRoutes) -> RoutePlan {
    let actual_targets: BTreeMap<IpNet, RouteTarget> = actual
        .by_dst
        .iter()
        .map(|(k, r)| (*k, RouteTarget::of(r)))
        .collect();
    let d = diff(desired, &actual_targets);
    let mut p = RoutePlan {
        added: d.upsert.len(),
        removed: d.delete.len() + actual.duplicates.len(),
        unchanged: d.unchanged,
        ..Default::default()
    };
    p.deletes
        .extend(actual.duplicates.iter().cloned().map(BatchOp::DelRoute));
    p.deletes.extend(
        d.delete
            .iter()
            .filter_map(|(dst, _)| actual.by_dst.get(*dst))
            .cloned()
            .map(BatchOp::DelRoute),
    );
    p.upserts.extend(
        d.upsert
            .iter()
            .map(|(dst, t)| BatchOp::ReplaceRoute(t.to_route(**dst))),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn space() -> RouteSpace {
        RouteSpace {
            networks: vec![net("10.244.0.0/16")],
            own: vec![net("10.244.1.0/24")],
        }
    }

    #[test]
    fn ownership_rules() {
        let s = space();
        let peer = Route::via(net("10.244.2.0/24"), "198.18.0.2".parse().unwrap(), Some(2));
        assert!(s.owns(&peer));
        assert!(s.owns(&peer.clone().with_protocol(RouteProtocol::BOOT)));
        // our own subnet (cni0), the whole network, outside, blackhole, kernel routes: not ours.
        assert!(!s.owns(&Route::direct(net("10.244.1.0/24"), 5)));
        assert!(!s.owns(&Route::direct(net("10.244.0.0/16"), 5)));
        assert!(!s.owns(&Route::via(
            net("10.9.0.0/24"),
            "198.18.0.2".parse().unwrap(),
            None
        )));
        assert!(!s.owns(&Route::blackhole(net("10.244.3.0/24"))));
        assert!(
            !s.owns(&Route::direct(net("10.244.3.0/24"), 5).with_protocol(RouteProtocol::KERNEL))
        );
        // a route covering our subnet is not ours either.
        assert!(!s.owns(&Route::direct(net("10.244.0.0/23"), 5)));
    }

    #[test]
    fn plan_replaces_wrong_adds_missing_deletes_stale_and_duplicates() {
        let gw2: IpAddr = "10.244.2.0".parse().unwrap();
        let mut desired = BTreeMap::new();
        desired.insert(
            net("10.244.2.0/24"),
            RouteTarget {
                gateway: Some(gw2),
                oif: Some(7),
                onlink: true,
            },
        );
        desired.insert(
            net("10.244.3.0/24"),
            RouteTarget {
                gateway: Some("10.244.3.0".parse().unwrap()),
                oif: Some(7),
                onlink: true,
            },
        );
        let mut actual = OwnedRoutes::default();
        // right route for .2 but from upstream (proto boot): kept as is.
        actual.by_dst.insert(
            net("10.244.2.0/24"),
            Route::onlink_via(net("10.244.2.0/24"), gw2, 7).with_protocol(RouteProtocol::BOOT),
        );
        // a stale peer.
        actual.by_dst.insert(
            net("10.244.9.0/24"),
            Route::onlink_via(net("10.244.9.0/24"), "10.244.9.0".parse().unwrap(), 7),
        );
        actual
            .duplicates
            .push(Route::onlink_via(net("10.244.2.0/24"), gw2, 7).with_metric(5));
        let p = plan(&desired, &actual);
        assert_eq!((p.added, p.removed, p.unchanged), (1, 2, 1));
        assert_eq!(p.upserts.len(), 1);
        assert!(matches!(&p.upserts[0], BatchOp::ReplaceRoute(r) if r.dst == net("10.244.3.0/24")));
        assert_eq!(p.deletes.len(), 2);
    }
}
