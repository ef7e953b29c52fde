//! IPv6 and dual-stack end to end: an IPv6 underlay, pods with v4 and v6 addresses through the
//! flannel CNI plugin, reachability over both families with vxlan and host-gw, and v6
//! masquerade to an outside host.

use std::time::Duration;

mod common;

use common::sh;
use flannel_lab::{Cluster, ClusterSpec, PodCni, wait_for};
use serde_json::json;

const NET6: &str = "fd00:10:244::/56";

fn spec(backend: &str, v4: bool) -> ClusterSpec {
    let mut extra = json!({ "EnableIPv6": true, "IPv6Network": NET6 });
    if !v4 {
        extra["EnableIPv4"] = json!(false);
    }
    ClusterSpec {
        nodes: 3,
        backend: backend.into(),
        ipv6: true,
        outside_host: true,
        pod_cni: PodCni::Flannel,
        extra_config: extra,
        ..Default::default()
    }
}

fn full(matrix: Vec<(String, String, bool)>, what: &str) {
    assert!(!matrix.is_empty(), "{what}: no pairs");
    let failed: Vec<_> = matrix.into_iter().filter(|(_, _, ok)| !ok).collect();
    assert!(failed.is_empty(), "{what}: unreachable pairs {failed:?}");
}

fn add_pods(c: &mut Cluster) {
    for i in 0..3 {
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
}

#[test]
fn dual_stack_vxlan() {
    let mut c = Cluster::start(spec("vxlan", true)).expect("cluster");
    let env = c.subnet_env(0).unwrap();
    assert!(env.subnet.is_some() && env.ipv6_subnet.is_some(), "{env:?}");
    // One pod MTU for both families: the IPv6 device's (1500 - 70).
    assert_eq!(env.mtu, 1430);
    add_pods(&mut c);
    for p in c.pods() {
        assert!(
            p.ip.is_ipv4() && p.ip6.is_some_and(|ip| ip.is_ipv6()),
            "{p:?}"
        );
    }
    full(c.ping_matrix(), "IPv4");
    full(c.ping_matrix_v6(), "IPv6");
    let link = sh(&c, 0, &["ip", "-d", "link", "show", "flannel-v6.1"]);
    assert!(link.contains("vxlan id 1"), "{link}");
    assert!(link.contains("local fd00:198::1"), "{link}");
    assert_eq!(
        sh(
            &c,
            0,
            &["cat", "/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra"]
        )
        .trim(),
        "0"
    );
    let own6 = env.ipv6_subnet.unwrap().trunc();
    let addr = sh(&c, 0, &["ip", "-6", "addr", "show", "dev", "flannel-v6.1"]);
    assert!(addr.contains(&format!("{}/128", own6.network())), "{addr}");
    let neigh = sh(&c, 0, &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]);
    assert_eq!(
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        2,
        "{neigh}"
    );
    let fdb = sh(&c, 0, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert_eq!(
        fdb.lines().filter(|l| l.contains("dst fd00:198::")).count(),
        2,
        "{fdb}"
    );
    let routes = sh(&c, 0, &["ip", "-6", "route", "show", "dev", "flannel-v6.1"]);
    assert_eq!(
        routes.lines().filter(|l| l.contains("onlink")).count(),
        2,
        "{routes}"
    );
    // The lease carries both families' data.
    let sn = env.subnet.unwrap().trunc();
    let key = format!(
        "/coreos.com/network/subnets/{}-{}&{}-{}",
        sn.network(),
        sn.prefix_len(),
        own6.network(),
        own6.prefix_len()
    );
    let value = c
        .etcd()
        .etcdctl(["get", "--print-value-only", &key])
        .unwrap();
    assert!(value.contains("\"PublicIPv6\":\"fd00:198::1\""), "{value}");
    assert!(
        value.contains("\"BackendV6Data\":{\"VNI\":1,\"VtepMAC\""),
        "{value}"
    );
}

#[test]
fn dual_stack_host_gw() {
    let mut c = Cluster::start(spec("host-gw", true)).expect("cluster");
    add_pods(&mut c);
    full(c.ping_matrix(), "IPv4");
    full(c.ping_matrix_v6(), "IPv6");
    let routes = sh(&c, 0, &["ip", "-6", "route"]);
    for i in 1..3 {
        let sn = c.subnet_env(i).unwrap().ipv6_subnet.unwrap().trunc();
        let want = format!("{sn} via fd00:198::{} dev eth0", i + 1);
        assert!(routes.contains(&want), "missing {want:?} in {routes}");
    }
}

#[test]
fn ipv6_only_vxlan() {
    let mut c = Cluster::start(spec("vxlan", false)).expect("cluster");
    let env = c.subnet_env(0).unwrap();
    assert!(env.subnet.is_none() && env.ipv6_subnet.is_some(), "{env:?}");
    add_pods(&mut c);
    for p in c.pods() {
        assert!(p.ip.is_ipv6(), "{p:?}");
    }
    full(c.ping_matrix(), "IPv6-only");
    let links = sh(&c, 0, &["ip", "link"]);
    assert!(
        !links.contains("flannel.1:"),
        "no v4 device in v6-only mode: {links}"
    );
}

#[test]
fn ipv6_masquerade_reaches_outside_host() {
    let mut c = Cluster::start(spec("vxlan", true)).expect("cluster");
    c.add_pod(0, "a").unwrap();
    let outside = c.lab().outside().unwrap().interfaces()[0]
        .ipv6()
        .expect("outside host has IPv6");
    let a = c.lab().pod("a").unwrap().netns();
    // The outside host has no route to pod networks: replies come only through masquerade.
    wait_for(
        "v6 ping to the outside host",
        Duration::from_secs(10),
        Duration::from_millis(500),
        || {
            Ok::<_, String>(
                flannel_lab::ping(a, outside.into(), 1, Duration::from_secs(2))
                    .unwrap_or(false)
                    .then_some(()),
            )
        },
    )
    .unwrap();
    let nat = sh(&c, 0, &["ip6tables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    assert!(nat.contains(&format!("-s {NET6} ! -d ff00::/8")), "{nat}");
    let ct = sh(&c, 0, &["conntrack", "-L", "-f", "ipv6"]);
    assert!(
        ct.lines()
            .any(|l| l.contains(&format!("dst={outside}")) && l.contains("dst=fd00:198::1")),
        "conntrack shows SNAT to the node's v6 address: {ct}"
    );
}

/// Kubernetes mode with two podCIDRs per Node (as kube-controller-manager assigns them in a
/// dual-stack cluster): both families converge, and the Node carries the v6 annotations.
#[test]
fn dual_stack_kube_mode() {
    let mut s = spec("vxlan", true);
    s.datastore = flannel_lab::Datastore::Kube;
    let mut c = Cluster::start(s).expect("cluster");
    add_pods(&mut c);
    full(c.ping_matrix(), "IPv4");
    full(c.ping_matrix_v6(), "IPv6");
    let env = c.subnet_env(0).unwrap();
    assert_eq!(
        env.ipv6_subnet.unwrap().trunc().to_string(),
        "fd00:10:244::/64"
    );
    let node = c.kube().expect("kube mode").node("n1").unwrap();
    let ann = &node["metadata"]["annotations"];
    assert_eq!(
        ann["flannel.alpha.coreos.com/public-ipv6"], "fd00:198::1",
        "{ann}"
    );
    let v6data = ann["flannel.alpha.coreos.com/backend-v6-data"]
        .as_str()
        .unwrap();
    assert!(v6data.starts_with("{\"VNI\":1,\"VtepMAC\":\""), "{v6data}");
}
