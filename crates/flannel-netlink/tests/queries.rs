//! Part 1: the queries interface selection uses.

mod common;

use std::net::IpAddr;

use common::{FRESH_NETNS, bounded, run, underlay};
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{IpFamily, Scope};

#[test]
fn links_and_lookups() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = underlay().await;
            let links = nl.links().await.unwrap();
            let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
            assert!(
                names.contains(&"lo") && names.contains(&"eth0") && names.contains(&"eth0p"),
                "{names:?}"
            );

            let lo = links.iter().find(|l| l.name == "lo").unwrap();
            assert!(lo.loopback && lo.up && lo.kind.is_none());

            assert_eq!(eth0.kind.as_deref(), Some("veth"));
            assert!(eth0.up);
            assert_eq!(eth0.mtu, 1500);
            let ip_view = run("ip -o link show dev eth0").await;
            let mac = eth0.mac.expect("veth has a MAC");
            assert!(ip_view.contains(&format!("link/ether {mac}")), "{ip_view}");
            assert!(
                ip_view.contains(&format!("{}: eth0@eth0p", eth0.index)),
                "{ip_view}"
            );

            let by_index = nl.link_by_index(eth0.index).await.unwrap().unwrap();
            assert_eq!(by_index, eth0);
            let peer = nl.link_by_name("eth0p").await.unwrap().unwrap();
            assert_eq!(eth0.link, Some(peer.index));

            assert_eq!(nl.link_by_name("nope0").await.unwrap(), None);
            assert_eq!(nl.link_by_index(999_999).await.unwrap(), None);

            // A link going down is visible.
            nl.set_link_down(peer.index).await.unwrap();
            assert!(!nl.link_by_index(peer.index).await.unwrap().unwrap().up);
            assert!(
                run("ip -o link show dev eth0p")
                    .await
                    .contains("state DOWN")
            );
        })
    })
    .expect(FRESH_NETNS);
}

#[test]
fn addresses_with_flags() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = underlay().await;
            let addrs = nl.addresses(Some(eth0.index)).await.unwrap();
            let v4 = addrs
                .iter()
                .find(|a| a.ip == "192.0.2.1".parse::<IpAddr>().unwrap())
                .expect("v4 address");
            assert_eq!(v4.prefix_len, 24);
            assert_eq!(v4.scope, Scope::Universe);
            assert!(v4.is_permanent() && !v4.is_deprecated() && !v4.is_secondary());
            let v6 = addrs
                .iter()
                .find(|a| a.ip == "2001:db8::1".parse::<IpAddr>().unwrap())
                .expect("v6 address");
            assert_eq!(v6.prefix_len, 64);
            assert!(v6.is_permanent() && !v6.is_temporary());

            // A dynamic (valid_lft-limited), deprecated (preferred_lft 0) v6 address.
            run("ip -6 addr add 2001:db8::99/64 dev eth0 nodad valid_lft 3600 preferred_lft 0")
                .await;
            // A secondary v4 address in the same subnet.
            run("ip addr add 192.0.2.50/24 dev eth0").await;
            let addrs = nl.addresses(Some(eth0.index)).await.unwrap();
            let dep = addrs
                .iter()
                .find(|a| a.ip == "2001:db8::99".parse::<IpAddr>().unwrap())
                .unwrap();
            assert!(dep.is_deprecated() && !dep.is_permanent(), "{dep:?}");
            let sec = addrs
                .iter()
                .find(|a| a.ip == "192.0.2.50".parse::<IpAddr>().unwrap())
                .unwrap();
            assert!(sec.is_secondary(), "{sec:?}");
            let ip_view = run("ip -6 -o addr show dev eth0").await;
            assert!(
                ip_view.contains("2001:db8::99/64 scope global nodad deprecated dynamic"),
                "{ip_view}"
            );

            // Our add/del, checked against iproute2.
            nl.add_address(eth0.index, "10.244.1.0/32".parse().unwrap())
                .await
                .unwrap();
            assert!(
                run("ip -4 -o addr show dev eth0")
                    .await
                    .contains("inet 10.244.1.0/32 scope global eth0")
            );
            let e = nl
                .add_address(eth0.index, "10.244.1.0/32".parse().unwrap())
                .await
                .unwrap_err();
            assert!(e.is_already_exists(), "{e}");
            nl.add_address(eth0.index, "10.9.0.1/24".parse().unwrap())
                .await
                .unwrap();
            assert!(
                run("ip -4 -o addr show dev eth0")
                    .await
                    .contains("inet 10.9.0.1/24 brd 10.9.0.255")
            );
            nl.del_address(eth0.index, "10.244.1.0/32".parse().unwrap())
                .await
                .unwrap();
            assert!(
                !run("ip -4 -o addr show dev eth0")
                    .await
                    .contains("10.244.1.0")
            );
            let e = nl
                .del_address(eth0.index, "10.244.1.0/32".parse().unwrap())
                .await
                .unwrap_err();
            assert!(e.is_not_found(), "{e}");

            // All-interfaces listing includes lo's.
            let all = nl.addresses(None).await.unwrap();
            assert!(
                all.iter()
                    .any(|a| a.ip == "127.0.0.1".parse::<IpAddr>().unwrap()
                        && a.scope == Scope::Host)
            );
        })
    })
    .expect(FRESH_NETNS);
}

#[test]
fn default_route_and_route_get() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = underlay().await;
            assert_eq!(nl.default_route_link(IpFamily::V4).await.unwrap(), None);
            // Nothing to reach yet: the kernel says ENETUNREACH, and we keep the errno.
            let e = nl
                .route_get("198.51.100.1".parse().unwrap())
                .await
                .unwrap_err();
            assert_eq!(e.errno(), Some(nix::errno::Errno::ENETUNREACH), "{e}");

            // A blackhole default in another table and a default without interface are ignored.
            run("ip route add blackhole default table 100").await;
            run("ip route add default via 192.0.2.254 dev eth0").await;
            run("ip -6 route add default via 2001:db8::fe dev eth0").await;
            assert_eq!(
                nl.default_route_link(IpFamily::V4).await.unwrap(),
                Some(eth0.index)
            );
            assert_eq!(
                nl.default_route_link(IpFamily::V6).await.unwrap(),
                Some(eth0.index)
            );

            // On-link destination: no gateway, source = our address (`--iface-can-reach`).
            let onlink = nl.route_get("192.0.2.7".parse().unwrap()).await.unwrap();
            assert_eq!(onlink.oif, Some(eth0.index));
            assert_eq!(onlink.gateway, None);
            assert_eq!(onlink.prefsrc, Some("192.0.2.1".parse().unwrap()));
            assert!(onlink.is_on_link());
            let ip_view = run("ip route get 192.0.2.7").await;
            assert!(
                ip_view.starts_with("192.0.2.7 dev eth0 src 192.0.2.1"),
                "{ip_view}"
            );

            // Via the gateway.
            let far = nl.route_get("198.51.100.1".parse().unwrap()).await.unwrap();
            assert_eq!(far.gateway, Some("192.0.2.254".parse().unwrap()));
            assert_eq!(far.oif, Some(eth0.index));
            assert!(!far.is_on_link());

            let far6 = nl
                .route_get("2001:db8:ffff::1".parse().unwrap())
                .await
                .unwrap();
            assert_eq!(far6.gateway, Some("2001:db8::fe".parse().unwrap()));
            let near6 = nl.route_get("2001:db8::5".parse().unwrap()).await.unwrap();
            assert!(near6.is_on_link(), "{near6:?}");

            // Own address: a local route, not "on link".
            let own = nl.route_get("192.0.2.1".parse().unwrap()).await.unwrap();
            assert_eq!(own.kind, flannel_netlink::RouteKind::Local);
            assert!(!own.is_on_link());

            // The lowest-metric default route wins.
            run("ip link add eth1 type veth peer name eth1p").await;
            run("ip addr add 203.0.113.1/24 dev eth1").await;
            run("ip link set eth1 up").await;
            run("ip link set eth1p up").await;
            run("ip route del default via 192.0.2.254 dev eth0").await;
            run("ip route add default via 192.0.2.254 dev eth0 metric 10").await;
            run("ip route add default via 203.0.113.254 dev eth1 metric 5").await;
            let eth1 = nl.link_by_name("eth1").await.unwrap().unwrap();
            assert_eq!(
                nl.default_route_link(IpFamily::V4).await.unwrap(),
                Some(eth1.index)
            );
        })
    })
    .expect(FRESH_NETNS);
}
