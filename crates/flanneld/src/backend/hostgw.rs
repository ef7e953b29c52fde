//! host-gw: each peer subnet is routed via the peer's public IP on the external interface.
//!
//! No encapsulation, so the MTU is the interface's, and every node must share one L2 segment.
//! Upstream re-adds missing routes every 10 s; here the daemon's repair tick runs the same
//! reconcile as every event, which also removes stale routes and fixes wrong gateways.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flannel_types::{Lease, LeaseAttrs};
use ipnet::IpNet;

use super::routes::{OwnedRoutes, RouteSpace, RouteTarget, plan};
use super::{BackendEnv, BackendError, tally};
use crate::reconcile::ReconcileStats;

/// The host-gw backend.
#[derive(Debug)]
pub struct HostGwBackend {
    env: BackendEnv,
    own: Option<Lease>,
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

    /// host-gw publishes only its type and public IPs; there is no device to prepare.
    pub async fn prepare(&mut self) -> Result<LeaseAttrs, BackendError> {
        Ok(LeaseAttrs {
            public_ip: self
                .env
                .ext
                .ext_addr
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            public_ipv6: self.env.ext.ext_v6_addr,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        })
    }

    /// Remembers our lease so our own subnet is never treated as a peer route.
    pub fn configure(&mut self, own: &Lease) {
        self.own = Some(own.clone());
    }

    /// The interface MTU: host-gw adds no header.
    pub fn mtu(&self) -> u32 {
        self.env.ext.mtu
    }

    fn space(&self) -> RouteSpace {
        let mut s = RouteSpace::default();
        if let Some(n) = self.env.network {
            s.networks.push(IpNet::V4(n));
        }
        if let Some(n) = self.env.ipv6_network {
            s.networks.push(IpNet::V6(n));
        }
        if let Some(own) = &self.own {
            s.own.extend(own.subnet.map(IpNet::V4));
            s.own.extend(own.ipv6_subnet.map(IpNet::V6));
        }
        s
    }

    /// The route each host-gw peer needs; peers of other backend types are ignored, as
    /// upstream does.
    pub fn desired(&self, peers: &[&Lease]) -> BTreeMap<IpNet, RouteTarget> {
        let oif = Some(self.env.ext.index);
        let mut out = BTreeMap::new();
        for p in peers.iter().filter(|p| p.attrs.backend_type == "host-gw") {
            if let (Some(sn), true) = (p.subnet, self.env.network.is_some()) {
                out.insert(
                    IpNet::V4(sn),
                    RouteTarget {
                        gateway: Some(IpAddr::V4(p.attrs.public_ip)),
                        oif,
                        onlink: false,
                    },
                );
            }
            if let (Some(sn), Some(ip6), true) = (
                p.ipv6_subnet,
                p.attrs.public_ipv6,
                self.env.ipv6_network.is_some(),
            ) {
                out.insert(
                    IpNet::V6(sn),
                    RouteTarget {
                        gateway: Some(IpAddr::V6(ip6)),
                        oif,
                        onlink: false,
                    },
                );
            }
        }
        out
    }

    /// Dumps, diffs and applies the peer routes.
    pub async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        let space = self.space();
        let desired = self.desired(peers);
        let actual = OwnedRoutes::load(&self.env.nl, &space).await?;
        let p = plan(&desired, actual);
        let mut stats = ReconcileStats {
            added: p.added,
            removed: p.removed,
            unchanged: p.unchanged,
            failed: 0,
            peers: desired.len(),
            ops: Default::default(),
        };
        let mut ops = p.deletes;
        ops.extend(p.upserts);
        if !ops.is_empty() {
            let report = self.env.nl.apply(&ops).await;
            tally(&ops, &report, "host-gw", &mut stats);
        }
        Ok(stats)
    }
}
