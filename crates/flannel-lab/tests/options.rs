//! Optional topology features: IPv6 underlay, MTU, extra networks, the outside host, and pods
//! wired by hand into a node bridge.

use std::net::IpAddr;
use std::time::Duration;

use flannel_lab::{Lab, PodNetwork, netns_exists, parse_net, ping};

const T: Duration = Duration::from_secs(3);

#[test]
fn ipv6_mtu_extra_networks_and_outside_host() -> anyhow::Result<()> {
    let lab = Lab::builder()
        .nodes(2)
        .ipv6(true)
        .mtu(1400)
        .extra_networks(1)
        .outside_host(true)
        .build()?;
    let (n1, n2) = (lab.node(0), lab.node(1));
    assert_eq!(
        n2.ipv6().map(|a| a.to_string()).as_deref(),
        Some("fd00:198::2")
    );
    assert!(ping(n1.netns(), IpAddr::V6(n2.ipv6().expect("v6")), 1, T)?);
    assert!(ping(
        n1.netns(),
        lab.underlay().gateway_v6().expect("v6").into(),
        1,
        T
    )?);
    assert_eq!(n1.netns().sysctl("net.ipv6.conf.all.forwarding")?, "1");
    let r6 = n1.netns().ip(["-6", "route", "show", "default"])?;
    assert!(r6.contains("via fd00:198::254 dev eth0"), "{r6}");

    // MTU on both ends of the veth.
    let link = n1.netns().ip(["link", "show", "dev", "eth0"])?;
    assert!(link.contains("mtu 1400"), "{link}");
    let peer = lab
        .underlay()
        .netns()
        .ip(["link", "show", "dev", n1.interfaces()[0].peer()])?;
    assert!(
        peer.contains("mtu 1400") && peer.contains("master br0"),
        "{peer}"
    );

    // eth1 on br1: reachable on its own subnet, not the default route.
    let eth1 = n2.interface("eth1").expect("eth1");
    assert_eq!(eth1.ipv4().to_string(), "198.18.1.2");
    assert!(ping(n1.netns(), eth1.ipv4().into(), 1, T)?);
    let def = n1.netns().ip(["route", "show", "default"])?;
    assert!(!def.contains("eth1"), "{def}");
    assert_eq!(lab.underlay().bridges(), ["br0", "br1"]);

    // The outside host is on the underlay but has no default route.
    let out = lab.outside().expect("outside host");
    assert_eq!(out.ip().to_string(), "198.18.0.253");
    assert!(ping(n1.netns(), out.ip().into(), 1, T)?);
    assert!(
        out.netns()
            .ip(["route", "show", "default"])?
            .trim()
            .is_empty()
    );
    assert_eq!(lab.netns_names().len(), 4);
    Ok(())
}

#[test]
fn hand_wired_pods_talk_across_nodes_but_not_to_the_outside_host() -> anyhow::Result<()> {
    let mut lab = Lab::builder().nodes(2).outside_host(true).build()?;
    let gw1: IpAddr = "10.244.1.1".parse()?;
    let gw2: IpAddr = "10.244.2.1".parse()?;
    lab.add_wired_pod(0, "a", &PodNetwork::new(parse_net("10.244.1.2/24")?, gw1))?;
    lab.add_wired_pod(0, "b", &PodNetwork::new(parse_net("10.244.1.3/24")?, gw1))?;
    lab.add_wired_pod(1, "c", &PodNetwork::new(parse_net("10.244.2.2/24")?, gw2))?;
    let cni_pod = lab.add_pod(1, "cni")?;
    assert!(cni_pod.netns_path().exists());
    assert_eq!(cni_pod.ip(), None);
    assert!(
        lab.add_pod(0, "a").is_err(),
        "duplicate pod names must be refused"
    );

    let a = lab.pod("a").expect("a");
    assert_eq!(a.node_index(), 0);
    let a_ns = a.netns();
    let b_ip = lab.pod("b").and_then(|p| p.ip()).expect("b ip");
    let c_ip = lab.pod("c").and_then(|p| p.ip()).expect("c ip");
    // Same node, through cni0.
    assert!(ping(a_ns, b_ip, 1, T)?);
    // Across nodes: nothing routes 10.244.2.0/24 yet, so it fails ...
    assert!(!ping(a_ns, c_ip, 1, Duration::from_secs(1))?);
    // ... until host-gw style routes are added, the way flanneld's host-gw backend would.
    lab.node(0)
        .netns()
        .ip(["route", "add", "10.244.2.0/24", "via", "198.18.0.2"])?;
    lab.node(1)
        .netns()
        .ip(["route", "add", "10.244.1.0/24", "via", "198.18.0.1"])?;
    assert!(ping(a_ns, c_ip, 1, T)?);
    // The outside host has no route back to pod networks: no reply without masquerade.
    let outside = lab.outside().expect("outside").ip();
    assert!(!ping(a_ns, outside.into(), 1, Duration::from_secs(1))?);
    assert!(ping(lab.node(0).netns(), outside.into(), 1, T)?);

    let a_name = a_ns.name().to_string();
    lab.remove_pod("a")?;
    assert!(!netns_exists(&a_name));
    assert!(lab.pod("a").is_none());
    let names = lab.netns_names();
    drop(lab);
    for n in names {
        assert!(!netns_exists(&n), "{n} survived");
    }
    Ok(())
}
