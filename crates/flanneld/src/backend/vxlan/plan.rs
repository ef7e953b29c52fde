//! vxlan's desired state and plan: pure functions of the peers, the devices and the kernel's
//! entries, unit-tested without root.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use flannel_netlink::{BatchOp, Fdb, MacAddr, Neighbour};
use flannel_types::{IpFamily, Lease};
use ipnet::IpNet;

use super::{TYPE, vtep_mac};
use crate::backend::Plan;
use crate::backend::routes::{self, OwnedRoutes, RouteSpace, RouteTarget};
use crate::reconcile::{ReconcileStats, diff};

/// A neighbour entry's key: device and the peer's VTEP address.
pub type NeighKey = (u32, IpAddr);
/// An FDB entry: device, the peer's VTEP MAC and its public IP.
pub type FdbKey = (u32, MacAddr, IpAddr);

/// What the desired entries depend on besides the peers.
#[derive(Debug, Clone, Default)]
pub struct VxlanView {
    /// Each existing device: its family and ifindex.
    pub devices: Vec<(IpFamily, u32)>,
    /// `DirectRouting`: peers' public IPs that are on-link, with the interface that reaches
    /// them. Empty without DirectRouting.
    pub onlink: HashMap<IpAddr, u32>,
    /// Where our routes live.
    pub space: RouteSpace,
}

/// The entries the kernel should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VxlanDesired {
    /// Permanent neighbours: VTEP address -> VTEP MAC.
    pub neigh: BTreeMap<NeighKey, MacAddr>,
    /// Permanent FDB entries.
    pub fdb: BTreeMap<FdbKey, ()>,
    /// One route per peer subnet.
    pub routes: BTreeMap<IpNet, RouteTarget>,
    /// Peers that got at least one entry.
    pub peers: usize,
    /// Why some peers got no entries (logged once each).
    pub problems: Vec<String>,
}

/// The entries of ours the kernel holds.
#[derive(Debug, Default)]
pub struct VxlanActual {
    /// Permanent neighbours on our devices.
    pub neigh: BTreeMap<NeighKey, MacAddr>,
    /// FDB entries on our devices.
    pub fdb: BTreeMap<FdbKey, ()>,
    /// Our routes.
    pub routes: OwnedRoutes,
}

/// The entries for each vxlan peer on each device whose family the peer has: a direct route
/// via its public IP when DirectRouting finds it on-link, else neighbour + FDB + onlink route.
pub fn desired(peers: &[&Lease], view: &VxlanView) -> VxlanDesired {
    let mut out = VxlanDesired::default();
    for p in peers.iter().filter(|p| p.attrs.backend_type == TYPE) {
        let mut any = false;
        for &(family, index) in &view.devices {
            let (Some(subnet), Some(public)) = (p.subnet_of(family), p.attrs.public_ip_of(family))
            else {
                continue;
            };
            if let Some(&oif) = view.onlink.get(&public) {
                let direct = RouteTarget {
                    gateway: Some(public),
                    oif: Some(oif),
                    onlink: false,
                };
                out.routes.insert(subnet, direct);
                any = true;
                continue;
            }
            let mac = match vtep_mac(p.attrs.backend_data_of(family)) {
                Ok(m) => m,
                Err(e) => {
                    out.problems
                        .push(format!("ignoring peer {} ({public}): {e}", p.key()));
                    continue;
                }
            };
            let vtep = subnet.network();
            out.neigh.insert((index, vtep), mac);
            out.fdb.insert((index, mac, public), ());
            let via_vtep = RouteTarget {
                gateway: Some(vtep),
                oif: Some(index),
                onlink: true,
            };
            out.routes.insert(subnet, via_vtep);
            any = true;
        }
        out.peers += usize::from(any);
    }
    out
}

/// The batch that turns `actual` into `desired`: removals first, then neighbours and FDB
/// entries before the routes that use them.
pub fn plan(desired: &VxlanDesired, actual: &VxlanActual) -> Plan {
    let neigh = diff(&desired.neigh, &actual.neigh);
    let fdb = diff(&desired.fdb, &actual.fdb);
    let routes = routes::plan(&desired.routes, &actual.routes);
    let mut stats = ReconcileStats {
        peers: desired.peers,
        ..Default::default()
    };
    stats.absorb(&neigh);
    stats.absorb(&fdb);
    routes.count_into(&mut stats);

    let neighbour =
        |&(&(ifindex, ip), &mac): &(&NeighKey, &MacAddr)| Neighbour { ifindex, ip, mac };
    let fdb_entry = |&(&(ifindex, mac, dst), _): &(&FdbKey, &())| Fdb { ifindex, mac, dst };
    let mut ops = routes.deletes;
    ops.extend(
        neigh
            .delete
            .iter()
            .map(neighbour)
            .map(BatchOp::DelNeighbour),
    );
    ops.extend(fdb.delete.iter().map(fdb_entry).map(BatchOp::DelFdb));
    ops.extend(
        neigh
            .upsert
            .iter()
            .map(neighbour)
            .map(BatchOp::ReplaceNeighbour),
    );
    ops.extend(fdb.upsert.iter().map(fdb_entry).map(BatchOp::ReplaceFdb));
    ops.extend(routes.upserts);
    Plan {
        ops,
        stats,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_netlink::Route;
    use flannel_types::RawJson;

    const DEV4: u32 = 7;
    const DEV6: u32 = 8;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn data(m: &str) -> Option<RawJson> {
        Some(RawJson::parse(&format!(r#"{{"VNI":1,"VtepMAC":"{m}"}}"#)).unwrap())
    }

    fn peer(subnet: &str, public: &str, m: &str) -> Lease {
        let mut l = crate::testing::lease(subnet, public, "vxlan");
        l.attrs.backend_data = data(m);
        l
    }

    fn view() -> VxlanView {
        VxlanView {
            devices: vec![(IpFamily::V4, DEV4)],
            onlink: HashMap::new(),
            space: RouteSpace {
                networks: vec![net("10.244.0.0/16")],
                own: vec![net("10.244.1.0/24")],
            },
        }
    }

    #[test]
    fn each_peer_gets_neighbour_fdb_and_onlink_route() {
        let a = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:02");
        let d = desired(&[&a], &view());
        assert_eq!(d.peers, 1);
        assert_eq!(
            d.neigh,
            BTreeMap::from([((DEV4, ip("10.244.2.0")), mac("0e:00:00:00:00:02"))])
        );
        assert_eq!(
            d.fdb.keys().copied().collect::<Vec<_>>(),
            vec![(DEV4, mac("0e:00:00:00:00:02"), ip("198.18.0.2"))]
        );
        assert_eq!(
            d.routes[&net("10.244.2.0/24")],
            RouteTarget {
                gateway: Some(ip("10.244.2.0")),
                oif: Some(DEV4),
                onlink: true
            }
        );
    }

    #[test]
    fn direct_routing_uses_the_public_ip_for_on_link_peers_only() {
        let near = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:02");
        let far = peer("10.244.3.0/24", "203.0.113.3", "0e:00:00:00:00:03");
        let mut v = view();
        v.onlink.insert(ip("198.18.0.2"), 3);
        let d = desired(&[&near, &far], &v);
        assert_eq!(d.peers, 2);
        assert_eq!(
            d.routes[&net("10.244.2.0/24")],
            RouteTarget {
                gateway: Some(ip("198.18.0.2")),
                oif: Some(3),
                onlink: false
            }
        );
        assert_eq!(d.neigh.len(), 1, "only the far peer needs a neighbour");
        assert!(d.neigh.contains_key(&(DEV4, ip("10.244.3.0"))));
    }

    #[test]
    fn peers_without_a_usable_mac_or_of_another_backend_get_nothing() {
        let mut bad = peer("10.244.2.0/24", "198.18.0.2", "zz");
        let mut other = peer("10.244.3.0/24", "198.18.0.3", "0e:00:00:00:00:03");
        other.attrs.backend_type = "host-gw".into();
        let d = desired(&[&bad, &other], &view());
        assert_eq!(d.peers, 0);
        assert!(d.routes.is_empty() && d.neigh.is_empty() && d.fdb.is_empty());
        assert_eq!(d.problems.len(), 1);
        assert!(d.problems[0].contains("10.244.2.0-24"), "{:?}", d.problems);
        bad.attrs.backend_data = None;
        assert!(desired(&[&bad], &view()).problems[0].contains("no backend data"));
    }

    #[test]
    fn dual_stack_peer_gets_entries_on_both_devices() {
        let mut p = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:02");
        p.ipv6_subnet = Some("fd00:10:0:2::/64".parse().unwrap());
        p.attrs.public_ipv6 = Some("fd00:198::2".parse().unwrap());
        p.attrs.backend_v6_data = data("0e:00:00:00:00:62");
        let mut v = view();
        v.devices.push((IpFamily::V6, DEV6));
        let d = desired(&[&p], &v);
        assert_eq!(d.peers, 1);
        assert_eq!(d.routes.len(), 2);
        assert_eq!(
            d.neigh.get(&(DEV6, ip("fd00:10:0:2::"))),
            Some(&mac("0e:00:00:00:00:62"))
        );
        assert!(
            d.fdb
                .contains_key(&(DEV6, mac("0e:00:00:00:00:62"), ip("fd00:198::2")))
        );
        // A v4-only cluster ignores the peer's v6 side.
        assert_eq!(desired(&[&p], &view()).routes.len(), 1);
    }

    #[test]
    fn plan_orders_removals_then_neighbours_and_fdb_then_routes() {
        let a = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:02");
        let d = desired(&[&a], &view());
        let mut actual = VxlanActual::default();
        // A vanished peer's three entries are still in the kernel.
        let (gone_mac, gone_vtep) = (mac("0e:00:00:00:00:09"), ip("10.244.9.0"));
        actual.neigh.insert((DEV4, gone_vtep), gone_mac);
        actual.fdb.insert((DEV4, gone_mac, ip("198.18.0.9")), ());
        actual.routes.by_dst.insert(
            net("10.244.9.0/24"),
            Route::onlink_via(net("10.244.9.0/24"), gone_vtep, DEV4),
        );
        let p = plan(&d, &actual);
        let names: Vec<&str> = p.ops.iter().map(BatchOp::op_name).collect();
        assert_eq!(
            names,
            vec![
                "delete route",
                "delete neighbour",
                "delete fdb",
                "replace neighbour",
                "replace fdb",
                "replace route"
            ]
        );
        assert_eq!(p.stats.counts(), (3, 3, 0, 1));
    }

    #[test]
    fn converged_state_plans_nothing_and_a_changed_mac_is_replaced() {
        let a = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:02");
        let d = desired(&[&a], &view());
        let mut actual = VxlanActual {
            neigh: d.neigh.clone(),
            fdb: d.fdb.clone(),
            routes: OwnedRoutes::default(),
        };
        for (dst, t) in &d.routes {
            actual.routes.by_dst.insert(*dst, t.to_route(*dst));
        }
        let p = plan(&d, &actual);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(p.stats.unchanged, 3);
        // The peer restarted with a new MAC: its neighbour is replaced, its old FDB entry goes.
        let moved = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:22");
        let d2 = desired(&[&moved], &view());
        let p = plan(&d2, &actual);
        let names: Vec<&str> = p.ops.iter().map(BatchOp::op_name).collect();
        assert_eq!(
            names,
            vec!["delete fdb", "replace neighbour", "replace fdb"]
        );
    }
}
