//! What the masquerade rules *do* to real packets, compared with upstream's nftables text.
//!
//! Each case runs in a fresh namespace shaped like a flannel node: `v0` stands in for flannel.1
//! (address 10.244.1.0/32, the route to the cluster network), the host's own address 192.168.77.1
//! is the route's source. A UDP datagram is sent from the host; conntrack then shows whether
//! POSTROUTING masqueraded it (the reply would go to 10.244.1.0) or not (reply to 192.168.77.1).
//! This node's pod subnet is 10.244.1.0/24, another node's pod is 10.244.2.5.

mod common;

use std::net::UdpSocket;
use std::os::fd::AsFd;

use common::*;
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_rules::RulesMode;
use nix::sys::socket::{setsockopt, sockopt};

const HOST_IP: &str = "192.168.77.1";
const NODE_OVERLAY_IP: &str = "10.244.1.0";
const OTHER_NODE_POD: &str = "10.244.2.5";
const LOCAL_POD: &str = "10.244.1.5";
/// A pod's address on this node, used as the source of "pod to the internet" traffic.
const POD_SOURCE_IP: &str = "10.244.1.1";
/// Outside the cluster: reached with source POD_SOURCE_IP, like a pod talking to the internet.
const EXTERNAL: &str = "203.0.113.5";

/// Upstream flannel's nftables masquerade chain, verbatim in meaning (flannel:e2e/rules.go).
const UPSTREAM_NFT: &str = "add table ip flannel-ipv4
add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat; policy accept; }
add rule ip flannel-ipv4 postrtg meta mark 0x4000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
";

/// Which masquerade rules a case installs.
#[derive(Clone, Copy, Debug)]
enum Rules {
    /// flannel-rs, nftables mode.
    OursNft,
    /// flannel-rs, iptables mode (upstream's iptables text).
    OursIptables,
    /// Upstream's nftables text.
    UpstreamNft,
}

fn node_setup() {
    run("ip", &["link", "set", "lo", "up"]);
    run(
        "ip",
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
    );
    run("ip", &["link", "set", "v0", "up"]);
    run("ip", &["link", "set", "v1", "up"]);
    run(
        "ip",
        &["addr", "add", &format!("{NODE_OVERLAY_IP}/32"), "dev", "v0"],
    );
    run(
        "ip",
        &["addr", "add", &format!("{HOST_IP}/32"), "dev", "lo"],
    );
    run(
        "ip",
        &["route", "add", NETWORK_V4, "dev", "v0", "src", HOST_IP],
    );
    run(
        "ip",
        &["addr", "add", &format!("{POD_SOURCE_IP}/32"), "dev", "lo"],
    );
    run(
        "ip",
        &[
            "route",
            "add",
            "203.0.113.0/24",
            "dev",
            "v0",
            "src",
            POD_SOURCE_IP,
        ],
    );
    for ip in [OTHER_NODE_POD, LOCAL_POD, EXTERNAL] {
        run(
            "ip",
            &[
                "neigh",
                "add",
                ip,
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                "v0",
                "nud",
                "permanent",
            ],
        );
    }
}

async fn install(rules: Rules) {
    let mode = match rules {
        Rules::OursNft => RulesMode::Nftables,
        Rules::OursIptables => RulesMode::Iptables,
        Rules::UpstreamNft => {
            nft_script(UPSTREAM_NFT);
            return;
        }
    };
    manager(mode, v4_only())
        .0
        .install_masquerade()
        .await
        .unwrap();
}

/// Sends one datagram from the host to `dst:port` with firewall mark `mark`, and returns the
/// destination of the reply direction of its conntrack entry: the address it was masqueraded to,
/// or the host's own address if it was not.
fn send_and_get_reply_dst(dst: &str, port: u16, mark: u32) -> String {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    if mark != 0 {
        setsockopt(&socket.as_fd(), sockopt::Mark, &mark).unwrap();
    }
    socket.send_to(b"flannel", (dst, port)).unwrap();
    let table = run("conntrack", &["-L", "-p", "udp"]);
    let line = table
        .lines()
        .find(|l| l.contains(&format!("dst={dst} ")) && l.contains(&format!("dport={port} ")))
        .unwrap_or_else(|| panic!("no conntrack entry for {dst}:{port} in\n{table}"));
    let dsts: Vec<&str> = line
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("dst="))
        .collect();
    assert_eq!(dsts.len(), 2, "{line}");
    dsts[1].to_string()
}

fn masqueraded(rules: Rules, dst: &'static str, mark: u32) -> bool {
    let reply_dst = run_in_netns(NetnsTarget::Fresh, move || async move {
        node_setup();
        install(rules).await;
        send_and_get_reply_dst(dst, 9999, mark)
    })
    .unwrap();
    match reply_dst.as_str() {
        NODE_OVERLAY_IP => true,
        HOST_IP | POD_SOURCE_IP => false,
        other => panic!("unexpected reply destination {other}"),
    }
}

/// Rule 4: host-to-overlay traffic for another node's pod must be masqueraded (the iptables
/// behaviour, which flannel-rs keeps in nftables mode); upstream's nftables text returns early.
#[test]
fn host_to_other_nodes_pod_is_masqueraded_as_in_iptables_mode() {
    assert!(masqueraded(Rules::OursIptables, OTHER_NODE_POD, 0));
    assert!(masqueraded(Rules::OursNft, OTHER_NODE_POD, 0));
    assert!(
        !masqueraded(Rules::UpstreamNft, OTHER_NODE_POD, 0),
        "upstream's nft rule 4 was expected to skip masquerading here"
    );
}

/// Traffic from outside the cluster to a pod of this node keeps its source in every variant.
#[test]
fn traffic_to_a_local_pod_keeps_its_source() {
    assert!(!masqueraded(Rules::OursIptables, LOCAL_POD, 0));
    assert!(!masqueraded(Rules::OursNft, LOCAL_POD, 0));
    assert!(!masqueraded(Rules::UpstreamNft, LOCAL_POD, 0));
}

/// kube-proxy ORs 0x4000 into the mark: with another bit set as well, the masked match (iptables
/// `--mark 0x4000/0x4000`, flannel-rs nft) still leaves the packet to kube-proxy, upstream's exact
/// `meta mark 0x4000` does not and masquerades it a second time. Shown on pod-to-internet
/// traffic, which every variant masquerades when unmarked.
#[test]
fn kube_proxy_mark_is_matched_as_a_bit() {
    for rules in [Rules::OursIptables, Rules::OursNft, Rules::UpstreamNft] {
        assert!(masqueraded(rules, EXTERNAL, 0), "{rules:?}");
        assert!(!masqueraded(rules, EXTERNAL, 0x4000), "{rules:?}");
    }
    assert!(!masqueraded(Rules::OursIptables, EXTERNAL, 0x4001));
    assert!(!masqueraded(Rules::OursNft, EXTERNAL, 0x4001));
    assert!(
        masqueraded(Rules::UpstreamNft, EXTERNAL, 0x4001),
        "upstream's exact mark match was expected to miss a mark with extra bits"
    );
}
