//! Neighbour, FDB and route programming, single and batched, checked against our dumps and
//! iproute2's view.

mod common;

use std::net::IpAddr;

use common::{
    FRESH_NETNS, bounded, count_lines, flannel_dev, peer, peer_entry_counts, peer_ops, run,
    vxlan_dev,
};
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{
    BatchOp, Fdb, IpFamily, MacAddr, Neighbour, Route, RouteFilter, RouteKind, RouteProtocol,
};
use ipnet::IpNet;

#[test]
fn neighbour_fdb_and_onlink_route_round_trip() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = common::underlay().await;
            let dev = flannel_dev(&nl, &eth0).await;
            let mac: MacAddr = "0e:2a:0a:f4:02:00".parse().unwrap();
            let neigh = Neighbour {
                ifindex: dev.index,
                ip: "10.244.2.0".parse().unwrap(),
                mac,
            };
            let fdb = Fdb {
                ifindex: dev.index,
                mac,
                dst: "192.0.2.2".parse().unwrap(),
            };
            let route = Route::onlink_via("10.244.2.0/24".parse().unwrap(), neigh.ip, dev.index);

            nl.replace_neighbour(&neigh).await.unwrap();
            nl.replace_fdb(&fdb).await.unwrap();
            nl.replace_route(&route).await.unwrap();
            // Replace is idempotent.
            nl.replace_neighbour(&neigh).await.unwrap();
            nl.replace_fdb(&fdb).await.unwrap();
            nl.replace_route(&route).await.unwrap();

            // Our dumps.
            let neighs = nl.neighbours(Some(dev.index)).await.unwrap();
            let ours: Vec<_> = neighs.iter().filter(|n| n.state.is_permanent()).collect();
            assert_eq!(ours.len(), 1, "{neighs:?}");
            assert_eq!(ours[0].as_neighbour(), Some(neigh));
            let fdbs = nl.fdb_entries(Some(dev.index)).await.unwrap();
            let ours: Vec<Fdb> = fdbs.iter().filter_map(|e| e.as_fdb()).collect();
            assert_eq!(ours, vec![fdb], "{fdbs:?}");
            let routes = nl
                .routes(
                    &RouteFilter::main()
                        .oif(dev.index)
                        .protocol(RouteProtocol::FLANNEL),
                )
                .await
                .unwrap();
            assert_eq!(routes, vec![route.clone()]);

            // iproute2's view: exactly the testbed's hand-built shapes.
            let n = run("ip neigh show dev flannel.1").await;
            assert!(
                n.contains("10.244.2.0 lladdr 0e:2a:0a:f4:02:00 PERMANENT"),
                "{n}"
            );
            let f = run("bridge fdb show dev flannel.1").await;
            assert!(
                f.contains("0e:2a:0a:f4:02:00 dst 192.0.2.2 self permanent"),
                "{f}"
            );
            let r = run("ip route show dev flannel.1").await;
            assert!(
                r.contains("10.244.2.0/24 via 10.244.2.0 proto 70 onlink"),
                "{r}"
            );

            // Exclusive add of an existing route: EEXIST.
            let e = nl.add_route(&route).await.unwrap_err();
            assert!(e.is_already_exists(), "{e}");

            // Delete, and deleting again reports not-found.
            nl.del_route(&route).await.unwrap();
            nl.del_fdb(&fdb).await.unwrap();
            nl.del_neighbour(&neigh).await.unwrap();
            for e in [
                nl.del_route(&route).await.unwrap_err(),
                nl.del_fdb(&fdb).await.unwrap_err(),
                nl.del_neighbour(&neigh).await.unwrap_err(),
            ] {
                assert!(e.is_not_found(), "{e}");
            }
            assert!(!run("ip route show").await.contains("10.244.2.0"));
            assert!(
                !run("bridge fdb show dev flannel.1")
                    .await
                    .contains("0e:2a:0a:f4:02:00")
            );
            assert!(
                !run("ip neigh show dev flannel.1")
                    .await
                    .contains("10.244.2.0")
            );
        })
    })
    .expect(FRESH_NETNS);
}

#[test]
fn host_gw_blackhole_ipv6_and_adoption_of_upstream_routes() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = common::underlay().await;
            let dev = flannel_dev(&nl, &eth0).await;

            // host-gw: via the peer's public IP on the external interface.
            let hostgw = Route::via(
                "10.244.3.0/24".parse().unwrap(),
                "192.0.2.2".parse().unwrap(),
                Some(eth0.index),
            );
            nl.replace_route(&hostgw).await.unwrap();
            assert!(
                run("ip route show")
                    .await
                    .contains("10.244.3.0/24 via 192.0.2.2 dev eth0 proto 70")
            );

            // An unreachable gateway without onlink: the kernel refuses, and says why.
            let bad = Route::via(
                "10.244.4.0/24".parse().unwrap(),
                "198.51.100.9".parse().unwrap(),
                Some(eth0.index),
            );
            let e = nl.replace_route(&bad).await.unwrap_err();
            assert_eq!(e.errno(), Some(nix::errno::Errno::ENETUNREACH), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with("replace route 10.244.4.0/24 via 198.51.100.9"),
                "{text}"
            );
            assert!(
                text.contains("(Nexthop has invalid gateway)"),
                "extack text missing: {text}"
            );

            // Blackhole.
            let bh = Route::blackhole("10.244.0.0/16".parse().unwrap());
            nl.replace_route(&bh).await.unwrap();
            assert!(
                run("ip route show")
                    .await
                    .contains("blackhole 10.244.0.0/16 proto 70")
            );
            let got = nl
                .routes(&RouteFilter::main().within("10.244.0.0/16".parse().unwrap()))
                .await
                .unwrap();
            assert!(
                got.iter()
                    .any(|r| r.kind == RouteKind::Blackhole && r.dst == bh.dst),
                "{got:?}"
            );
            nl.del_route(&bh).await.unwrap();

            // IPv6: flannel-v6.1 over the v6 underlay, with an onlink route, neighbour and FDB.
            // (A v6 FDB dst on the v4 device is refused with EAFNOSUPPORT, checked below.)
            let local6 = "2001:db8::1".parse().unwrap();
            let addr6 = "fd00:10:244:1::/128".parse().unwrap();
            let dev6 = vxlan_dev(&nl, &eth0, "flannel-v6.1", local6, 1430, addr6).await;
            let mac: MacAddr = "0e:2a:00:00:06:02".parse().unwrap();
            let vtep6: IpAddr = "fd00:10:244:2::".parse().unwrap();
            let fdb6 = Fdb {
                ifindex: dev6.index,
                mac,
                dst: "2001:db8::2".parse().unwrap(),
            };
            let r6 = Route::onlink_via("fd00:10:244:2::/64".parse().unwrap(), vtep6, dev6.index)
                .with_metric(1024);
            let report = nl
                .apply(&[
                    BatchOp::ReplaceNeighbour(Neighbour {
                        ifindex: dev6.index,
                        ip: vtep6,
                        mac,
                    }),
                    BatchOp::ReplaceFdb(fdb6),
                    BatchOp::ReplaceRoute(r6.clone()),
                    BatchOp::ReplaceFdb(Fdb {
                        ifindex: dev.index,
                        ..fdb6
                    }),
                ])
                .await;
            assert_eq!(report.succeeded(), 3, "{:?}", report.results);
            let (idx, e) = report.errors().next().unwrap();
            assert_eq!(
                (idx, e.errno()),
                (3, Some(nix::errno::Errno::EAFNOSUPPORT)),
                "{e}"
            );
            let got6 = nl
                .routes(&RouteFilter::main().family(IpFamily::V6).oif(dev6.index))
                .await
                .unwrap();
            assert!(got6.contains(&r6), "{got6:?}");
            assert!(
                run("bridge fdb show dev flannel-v6.1")
                    .await
                    .contains("0e:2a:00:00:06:02 dst 2001:db8::2 self permanent")
            );
            assert!(
                run("ip -6 neigh show dev flannel-v6.1")
                    .await
                    .contains("fd00:10:244:2:: lladdr 0e:2a:00:00:06:02 PERMANENT")
            );
            assert!(
                run("ip -6 route show dev flannel-v6.1")
                    .await
                    .contains("fd00:10:244:2::/64 via fd00:10:244:2:: proto 70 metric 1024 onlink")
            );
            let dumped: Vec<Fdb> = nl
                .fdb_entries(Some(dev6.index))
                .await
                .unwrap()
                .iter()
                .filter_map(|e| e.as_fdb())
                .collect();
            assert_eq!(dumped, vec![fdb6]);

            // A route as upstream flanneld leaves it (protocol unset => boot) is adoptable, and a
            // replace takes it over in place.
            run("ip route add 10.244.5.0/24 via 10.244.5.0 dev flannel.1 onlink").await;
            let net5: IpNet = "10.244.5.0/24".parse().unwrap();
            let before = nl.routes(&RouteFilter::main().within(net5)).await.unwrap();
            assert_eq!(before.len(), 1);
            assert_eq!(before[0].protocol, RouteProtocol::BOOT);
            assert!(before[0].protocol.is_adoptable());
            let desired = Route::onlink_via(net5, "10.244.5.0".parse().unwrap(), dev.index);
            assert_ne!(before[0], desired, "differs only by protocol");
            assert_eq!(
                before[0].clone().with_protocol(RouteProtocol::FLANNEL),
                desired
            );
            nl.replace_route(&desired).await.unwrap();
            let after = nl.routes(&RouteFilter::main().within(net5)).await.unwrap();
            assert_eq!(after, vec![desired]);
            assert_eq!(count_lines("ip route show", "10.244.5.0/24").await, 1);

            // Connected routes belong to the kernel and are not adoptable.
            run("ip addr add 10.244.1.1/24 dev eth0p").await;
            let kernel = nl
                .routes(&RouteFilter::main().within("10.244.1.0/24".parse().unwrap()))
                .await
                .unwrap();
            assert_eq!(kernel.len(), 1, "{kernel:?}");
            assert_eq!(kernel[0].protocol, RouteProtocol::KERNEL);
            assert!(!kernel[0].protocol.is_adoptable());
        })
    })
    .expect(FRESH_NETNS);
}

#[test]
fn batch_of_500_peers_then_delete_with_per_op_results() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = common::underlay().await;
            let dev = flannel_dev(&nl, &eth0).await;
            let ops = peer_ops(dev.index, 500);
            let report = nl.apply(&ops).await;
            assert_eq!(report.results.len(), 1500);
            assert_eq!(report.failed(), 0, "{:?}", report.errors().next());

            // Our dumps agree...
            assert_eq!(peer_entry_counts(&nl, dev.index).await, (500, 500, 500));
            let ours = RouteFilter::main()
                .oif(dev.index)
                .protocol(RouteProtocol::FLANNEL);
            assert_eq!(nl.routes(&ours).await.unwrap().len(), 500);
            // ... and so does iproute2.
            assert_eq!(count_lines("ip route show proto 70", "onlink").await, 500);
            assert_eq!(
                count_lines("ip neigh show dev flannel.1 nud permanent", "lladdr 0e:2a").await,
                500
            );
            assert_eq!(
                count_lines("bridge fdb show dev flannel.1", "self permanent").await,
                500
            );
            // Spot check one entry of each kind.
            let p = peer(dev.index, 321);
            let (net, vtep) = (p.route.dst, p.neigh.ip);
            let routes = run("ip route show").await;
            assert!(routes.contains(&format!("{net} via {vtep} dev flannel.1 proto 70 onlink")));
            let fdbs = run("bridge fdb show dev flannel.1").await;
            assert!(fdbs.contains(&format!("{} dst {} self permanent", p.fdb.mac, p.fdb.dst)));

            // Two batches at once from two tasks sharing the socket: re-applying (a no-op that
            // succeeds) and a large all-failing batch spread over several datagrams. Each gets its
            // own results, and every error is reported (no receive-buffer overrun turns into
            // "unconfirmed").
            let absent: Vec<BatchOp> = (2000..5000)
                .map(|i| {
                    let p = peer(dev.index, i);
                    match i % 3 {
                        0 => BatchOp::DelRoute(p.route),
                        1 => BatchOp::DelNeighbour(p.neigh),
                        _ => BatchOp::DelFdb(p.fdb),
                    }
                })
                .collect();
            let other = nl.clone();
            let failing = tokio::spawn(async move { other.apply(&absent).await });
            let again = nl.apply(&ops).await;
            let failing = failing.await.expect("batch task");
            assert_eq!(again.failed(), 0, "{:?}", again.errors().next());
            assert_eq!(again.results.len(), 1500);
            assert_eq!(failing.failed(), 3000);
            for (i, e) in failing.errors() {
                assert!(e.is_not_found(), "#{i}: {e}");
            }

            // Mixed batch: delete the first 400 peers' routes plus 10 that do not exist, one
            // exclusive add of an existing route, and an invalid route. Failures are reported per
            // operation and do not stop the others.
            let mut mixed: Vec<BatchOp> = (0..400)
                .chain(1000..1010)
                .map(|i| BatchOp::DelRoute(peer(dev.index, i).route))
                .collect();
            let existing = peer(dev.index, 450).route;
            let invalid = Route::via(existing.dst, "fe80::1".parse().unwrap(), None);
            mixed.push(BatchOp::AddRoute(existing));
            mixed.push(BatchOp::ReplaceRoute(invalid));
            let report = nl.apply(&mixed).await;
            assert_eq!(report.succeeded(), 400);
            assert_eq!(report.failed(), 12);
            let errs: Vec<_> = report.errors().collect();
            for (i, e) in &errs[..10] {
                assert!((400..410).contains(i) && e.is_not_found(), "{i}: {e}");
            }
            assert_eq!(errs[10].0, 410);
            assert!(errs[10].1.is_already_exists(), "{}", errs[10].1);
            assert_eq!(errs[11].0, 411);
            assert!(matches!(
                errs[11].1,
                flannel_netlink::NetlinkError::InvalidArgument { .. }
            ));
            assert_eq!(count_lines("ip route show proto 70", "onlink").await, 100);

            // Deleting the device drops everything on it.
            nl.delete_link(dev.index).await.unwrap();
            assert_eq!(count_lines("ip route show", "10.").await, 0);
            assert!(nl.fdb_entries(Some(dev.index)).await.unwrap().is_empty());
        })
    })
    .expect(FRESH_NETNS);
}
