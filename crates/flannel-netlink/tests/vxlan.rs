//! vxlan device creation, inspection and the reuse-or-recreate decision; bridge creation.

mod common;

use common::{FRESH_NETNS, bounded, run, underlay};
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{MacAddr, VxlanSpec};

#[test]
fn vxlan_create_inspect_and_incompatibility() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = underlay().await;
            let mac: MacAddr = "0e:2a:0a:f4:01:00".parse().unwrap();
            let spec = VxlanSpec {
                local: Some("192.0.2.1".parse().unwrap()),
                dev: Some(eth0.index),
                mtu: Some(1450),
                mac: Some(mac),
                ..VxlanSpec::new("flannel.1", 1)
            };
            let dev = nl.create_vxlan(&spec).await.unwrap();
            assert_eq!(dev.kind.as_deref(), Some("vxlan"));
            assert_eq!(dev.mtu, 1450);
            assert_eq!(dev.mac, Some(mac));
            assert!(!dev.up, "created down, raised after addressing");
            let v = dev.vxlan.clone().expect("vxlan info");
            assert_eq!(v.vni, 1);
            assert_eq!(v.dev, Some(eth0.index));
            assert_eq!(v.local, Some("192.0.2.1".parse().unwrap()));
            assert_eq!(v.group, None);
            assert_eq!(v.port, 8472, "port 0 leaves the kernel default");
            assert!(!v.learning && !v.gbp && !v.l2miss && !v.l3miss);

            let ip_view = run("ip -d link show dev flannel.1").await;
            assert!(ip_view.contains("mtu 1450"), "{ip_view}");
            assert!(ip_view.contains(&format!("link/ether {mac}")), "{ip_view}");
            assert!(
                ip_view.contains(
                    "vxlan id 1 local 192.0.2.1 dev eth0 srcport 0 0 dstport 8472 nolearning"
                ),
                "{ip_view}"
            );

            // Same again: EEXIST, then the caller inspects and finds it compatible.
            let e = nl.create_vxlan(&spec).await.unwrap_err();
            assert!(e.is_already_exists(), "{e}");
            assert!(
                e.to_string().starts_with("create vxlan flannel.1: EEXIST"),
                "{e}"
            );
            let existing = nl.link_by_name("flannel.1").await.unwrap().unwrap();
            assert_eq!(spec.incompatibility(&existing), None);

            // Another VNI, another local IP, or GBP: incompatible.
            let other_vni = VxlanSpec {
                vni: 2,
                ..spec.clone()
            };
            assert_eq!(
                other_vni.incompatibility(&existing).as_deref(),
                Some("vni: 2 vs 1")
            );
            let other_ip = VxlanSpec {
                local: Some("192.0.2.9".parse().unwrap()),
                ..spec.clone()
            };
            assert!(
                other_ip
                    .incompatibility(&existing)
                    .unwrap()
                    .starts_with("vtep (external) IP")
            );
            let gbp = VxlanSpec {
                gbp: true,
                ..spec.clone()
            };
            assert_eq!(
                gbp.incompatibility(&existing).as_deref(),
                Some("gbp: true vs false")
            );
            // Not a vxlan at all.
            assert_eq!(
                spec.incompatibility(&eth0).as_deref(),
                Some("link type: vxlan vs veth")
            );

            // Up, and the MAC survives (upstream checks this after UP).
            nl.set_link_up(dev.index).await.unwrap();
            let up = nl.link_by_index(dev.index).await.unwrap().unwrap();
            assert!(up.up);
            assert_eq!(up.mac, Some(mac));
            nl.set_link_mtu(dev.index, 1400).await.unwrap();
            let other_mac: MacAddr = "0e:2a:00:00:00:01".parse().unwrap();
            nl.set_link_mac(dev.index, other_mac).await.unwrap();
            let changed = nl.link_by_index(dev.index).await.unwrap().unwrap();
            assert_eq!((changed.mtu, changed.mac), (1400, Some(other_mac)));

            // Recreate path: delete, then create with the new parameters.
            nl.delete_link(dev.index).await.unwrap();
            assert_eq!(nl.link_by_name("flannel.1").await.unwrap(), None);
            let e = nl.delete_link(dev.index).await.unwrap_err();
            assert!(e.is_not_found(), "{e}");
            let gbp_dev = nl
                .create_vxlan(&VxlanSpec {
                    port: 4789,
                    learning: true,
                    ..gbp.clone()
                })
                .await
                .unwrap();
            let v = gbp_dev.vxlan.unwrap();
            assert!(v.gbp && v.learning);
            assert_eq!(v.port, 4789);
            let ip_view = run("ip -d link show dev flannel.1").await;
            assert!(
                ip_view.contains("dstport 4789") && ip_view.contains(" gbp"),
                "{ip_view}"
            );
            assert!(!ip_view.contains("nolearning"), "{ip_view}");
        })
    })
    .expect(FRESH_NETNS);
}

#[test]
fn vxlan_over_ipv6_and_bridge() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = underlay().await;
            let spec = VxlanSpec {
                local: Some("2001:db8::1".parse().unwrap()),
                dev: Some(eth0.index),
                mtu: Some(1430),
                ..VxlanSpec::new("flannel-v6.1", 1)
            };
            let dev = nl.create_vxlan(&spec).await.unwrap();
            let v = dev.vxlan.clone().unwrap();
            assert_eq!(v.local, Some("2001:db8::1".parse().unwrap()));
            assert!(dev.mac.is_some(), "kernel picked a MAC");
            assert_eq!(spec.incompatibility(&dev), None);
            let ip_view = run("ip -d link show dev flannel-v6.1").await;
            assert!(
                ip_view.contains("vxlan id 1 local 2001:db8::1 dev eth0"),
                "{ip_view}"
            );

            let br = nl.create_bridge("cni0", Some(1450)).await.unwrap();
            assert_eq!(br.kind.as_deref(), Some("bridge"));
            assert_eq!(br.mtu, 1450);
            nl.set_link_up(br.index).await.unwrap();
            nl.add_address(br.index, "10.244.1.1/24".parse().unwrap())
                .await
                .unwrap();
            let ip_view = run("ip -d -o link show dev cni0").await;
            assert!(ip_view.contains("bridge forward_delay"), "{ip_view}");
            assert!(
                run("ip -4 -o addr show dev cni0")
                    .await
                    .contains("10.244.1.1/24")
            );
            let e = nl.create_bridge("cni0", None).await.unwrap_err();
            assert!(e.is_already_exists(), "{e}");
        })
    })
    .expect(FRESH_NETNS);
}

/// This machine's kernel has no WireGuard module: creating a `wireguard` link must fail with
/// the error the wireguard backend takes as "use the userspace device". (On a kernel with the
/// module the link is created and must be a wireguard link.)
#[test]
fn wireguard_link_without_the_module_is_not_supported() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let nl = flannel_netlink::Netlink::new().unwrap();
            match nl.create_wireguard("flannel-wg", Some(1420)).await {
                Err(e) => {
                    assert!(e.is_not_supported(), "{e}");
                    assert!(
                        e.to_string().contains("create wireguard link flannel-wg"),
                        "{e}"
                    );
                    assert!(nl.link_by_name("flannel-wg").await.unwrap().is_none());
                }
                Ok(dev) => {
                    assert_eq!(dev.kind.as_deref(), Some("wireguard"));
                    assert_eq!(dev.mtu, 1420);
                    let again = nl.create_wireguard("flannel-wg", None).await.unwrap_err();
                    assert!(again.is_already_exists(), "{again}");
                }
            }
        })
    })
    .expect(FRESH_NETNS);
}
