//! host-gw: each peer subnet is routed via the peer's public IP on the external interface.
//!
//! No encapsulation, so the MTU is the interface's, and every node must share one L2 segment.
//! Upstream re-adds missing routes every 10 s; here the daemon's repair tick runs the same
//! reconcile as every event, which also removes stale routes and fixes wrong gateways.

use std::collections::BTreeMap;

use async_trait::async_trait;
use flannel_types::{IpFamily, Lease, LeaseAttrs};
use ipnet::IpNet;

use super::routes::{self, OwnedRoutes, RouteSpace, RouteTarget};
use super::{Backend, BackendEnv, BackendError, DataPlane, Plan, apply_batch, own_subnets};
use crate::reconcile::ReconcileStats;

/// The backend type, as written in leases.
pub const TYPE: &str = "host-gw";

/// The host-gw backend.
#[derive(Debug)]
pub struct HostGwBackend {
    env: BackendEnv,
    own: Option<Lease>,
}

/// What host-gw's desired routes depend on besides the peers.
#[derive(Debug, Clone)]
pub struct HostGwView {
    /// The external interface's index: every peer route leaves through it.
    pub oif: u32,
    /// The families the cluster runs.
    pub families: Vec<IpFamily>,
    /// Where our routes live.
    pub space: RouteSpace,
}

impl HostGwBackend {
    /// Refuses a NATed public IP as upstream does: peers must reach our interface address.
    pub fn new(env: BackendEnv) -> Result<HostGwBackend, BackendError> {
        let ext = &env.ext;
        if ext.ext_addr != ext.iface_addr || ext.ext_v6_addr != ext.iface_v6_addr {
            return Err(BackendError::PublicIpDiffers);
        }
        Ok(HostGwBackend { env, own: None })
    }
}

#[async_trait(?Send)]
impl Backend for HostGwBackend {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    /// host-gw publishes only its type and public IPs; there is no device to prepare.
    async fn prepare(&mut self, _stored: Option<&LeaseAttrs>) -> Result<LeaseAttrs, BackendError> {
        Ok(self.env.ext.lease_attrs(TYPE, true))
    }

    /// Remembers our lease so our own subnet is never treated as a peer route.
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = Some(own.clone());
        Ok(())
    }

    /// The interface MTU: host-gw adds no header.
    fn mtu(&self) -> u32 {
        self.env.ext.mtu
    }

    /// host-gw owns no device: a deleted interface is not something it can rebuild.
    fn devices(&self) -> Vec<String> {
        Vec::new()
    }

    async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        super::reconcile(self, peers).await
    }
}

impl DataPlane for HostGwBackend {
    type View = HostGwView;
    type Desired = BTreeMap<IpNet, RouteTarget>;
    type Actual = OwnedRoutes;

    async fn observe(&mut self, _peers: &[&Lease]) -> Result<HostGwView, BackendError> {
        let (families, networks) = self.env.networks().unzip();
        Ok(HostGwView {
            oif: self.env.ext.index,
            families,
            space: RouteSpace {
                networks,
                own: own_subnets(self.own.as_ref()),
            },
        })
    }

    /// The route each host-gw peer needs, for each family both we and the peer run; peers of
    /// other backend types are ignored, as upstream does.
    fn desired(peers: &[&Lease], view: &HostGwView) -> Self::Desired {
        let mut out = BTreeMap::new();
        for p in peers.iter().filter(|p| p.attrs.backend_type == TYPE) {
            for &family in &view.families {
                if let (Some(subnet), Some(gateway)) =
                    (p.subnet_of(family), p.attrs.public_ip_of(family))
                {
                    let target = RouteTarget {
                        gateway: Some(gateway),
                        oif: Some(view.oif),
                        onlink: false,
                    };
                    out.insert(subnet, target);
                }
            }
        }
        out
    }

    async fn actual(&self, view: &HostGwView) -> Result<OwnedRoutes, BackendError> {
        OwnedRoutes::load(&self.env.nl, &view.space).await
    }

    fn plan(desired: &Self::Desired, actual: &OwnedRoutes) -> Plan {
        let routes = routes::plan(desired, actual);
        let mut stats = ReconcileStats {
            peers: desired.len(),
            ..Default::default()
        };
        routes.count_into(&mut stats);
        let mut ops = routes.deletes;
        ops.extend(routes.upserts);
        Plan {
            ops,
            stats,
            ..Default::default()
        }
    }

    async fn apply(
        &mut self,
        _desired: Self::Desired,
        plan: Plan,
    ) -> Result<ReconcileStats, BackendError> {
        Ok(apply_batch(&self.env.nl, plan, TYPE).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{lease, with_v6};
    use flannel_netlink::{BatchOp, Route};
    use std::net::IpAddr;

    fn view(families: &[IpFamily]) -> HostGwView {
        HostGwView {
            oif: 2,
            families: families.to_vec(),
            space: RouteSpace {
                networks: vec!["10.244.0.0/16".parse().unwrap()],
                own: vec!["10.244.1.0/24".parse().unwrap()],
            },
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn desired_routes_each_host_gw_peer_via_its_public_ip() {
        let a = lease("10.244.2.0/24", "198.18.0.2", "host-gw");
        let b = lease("10.244.3.0/24", "198.18.0.3", "vxlan");
        let d = HostGwBackend::desired(&[&a, &b], &view(&[IpFamily::V4]));
        assert_eq!(d.len(), 1, "{d:?}");
        let t = d[&net("10.244.2.0/24")];
        assert_eq!(t.gateway, Some("198.18.0.2".parse::<IpAddr>().unwrap()));
        assert_eq!((t.oif, t.onlink), (Some(2), false));
    }

    #[test]
    fn desired_covers_only_the_families_we_run_and_the_peer_has() {
        let dual = with_v6(
            lease("10.244.2.0/24", "198.18.0.2", "host-gw"),
            "fd00:10:0:2::/64",
            Some("fd00:198::2"),
        );
        let v4_only_addr = with_v6(
            lease("10.244.3.0/24", "198.18.0.3", "host-gw"),
            "fd00:10:0:3::/64",
            None,
        );
        let both = [IpFamily::V4, IpFamily::V6];
        let d = HostGwBackend::desired(&[&dual, &v4_only_addr], &view(&both));
        assert_eq!(
            d.keys().copied().collect::<Vec<_>>(),
            vec![
                net("10.244.2.0/24"),
                net("10.244.3.0/24"),
                net("fd00:10:0:2::/64")
            ]
        );
        assert_eq!(
            d[&net("fd00:10:0:2::/64")].gateway,
            Some("fd00:198::2".parse().unwrap())
        );
        let d = HostGwBackend::desired(&[&dual], &view(&[IpFamily::V4]));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn plan_adds_missing_fixes_wrong_and_removes_stale_routes() {
        let a = lease("10.244.2.0/24", "198.18.0.2", "host-gw");
        let b = lease("10.244.3.0/24", "198.18.0.3", "host-gw");
        let v = view(&[IpFamily::V4]);
        let desired = HostGwBackend::desired(&[&a, &b], &v);
        let mut actual = OwnedRoutes::default();
        // .2 is right, .3 has the wrong gateway, .9 belongs to a vanished node.
        let gw = |s: &str| s.parse::<IpAddr>().unwrap();
        for (dst, via) in [
            ("10.244.2.0/24", "198.18.0.2"),
            ("10.244.3.0/24", "198.18.0.99"),
            ("10.244.9.0/24", "198.18.0.9"),
        ] {
            actual
                .by_dst
                .insert(net(dst), Route::via(net(dst), gw(via), Some(2)));
        }
        let p = HostGwBackend::plan(&desired, &actual);
        assert_eq!(p.stats.counts(), (1, 1, 1, 2));
        assert_eq!(p.ops.len(), 2);
        assert!(matches!(&p.ops[0], BatchOp::DelRoute(r) if r.dst == net("10.244.9.0/24")));
        assert!(matches!(&p.ops[1], BatchOp::ReplaceRoute(r)
            if r.dst == net("10.244.3.0/24") && r.gateway == Some(gw("198.18.0.3"))));
        // Converged: nothing to do.
        let mut now = OwnedRoutes::default();
        for (dst, t) in &desired {
            now.by_dst.insert(*dst, t.to_route(*dst));
        }
        let p = HostGwBackend::plan(&desired, &now);
        assert!(p.ops.is_empty());
        assert_eq!(p.stats.unchanged, 2);
    }
}
