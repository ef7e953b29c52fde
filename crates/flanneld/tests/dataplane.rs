//! flanneld end to end in the lab: real etcd, real kernel, several nodes.
//!
//! Each test starts a cluster (etcd on the underlay, flanneld per node namespace), creates pods
//! through CNI and checks cross-node reachability and the kernel state flanneld programs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flannel_lab::{Cluster, ClusterSpec, PodCni, run_ok, wait_for};

fn spec(backend: &str) -> ClusterSpec {
    ClusterSpec {
        nodes: 3,
        backend: backend.into(),
        pod_cni: PodCni::Bridge,
        ..Default::default()
    }
}

/// One pod per node, then every pod pings every other.
fn assert_full_mesh(c: &mut Cluster) {
    for i in 0..c.spec().nodes {
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
    let failed: Vec<_> = c
        .ping_matrix()
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .collect();
    assert!(failed.is_empty(), "unreachable pod pairs: {failed:?}");
}

fn ns_out(c: &Cluster, node: usize, args: &[&str]) -> String {
    run_ok(c.lab().node(node).netns(), args).expect("command in node")
}

#[test]
fn vxlan_pods_reach_each_other_across_nodes() {
    let mut c = Cluster::start(spec("vxlan")).expect("cluster");
    let subnets: BTreeSet<String> = (0..3)
        .map(|i| c.subnet_env(i).unwrap().subnet.unwrap().to_string())
        .collect();
    assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
    for i in 0..3 {
        let env = c.subnet_env(i).unwrap();
        assert_eq!(env.mtu, 1450);
        assert!(env.ip_masq);
    }
    assert_full_mesh(&mut c);
    // The device as upstream builds it.
    let link = ns_out(&c, 0, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(link.contains("vxlan id 1"), "{link}");
    assert!(link.contains("local 198.18.0.1"), "{link}");
    assert!(link.contains("dev eth0"), "{link}");
    assert!(link.contains("dstport 8472"), "{link}");
    assert!(link.contains("nolearning"), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    // Two peers: two onlink routes, two neighbours, two FDB entries.
    let routes = ns_out(&c, 0, &["ip", "route", "show", "dev", "flannel.1"]);
    assert_eq!(
        routes.lines().filter(|l| l.contains("onlink")).count(),
        2,
        "{routes}"
    );
    let neigh = ns_out(&c, 0, &["ip", "neigh", "show", "dev", "flannel.1"]);
    assert_eq!(
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        2,
        "{neigh}"
    );
    let fdb = ns_out(&c, 0, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    assert_eq!(
        fdb.lines().filter(|l| l.contains("dst 198.18.0.")).count(),
        2,
        "{fdb}"
    );
}

#[test]
fn host_gw_pods_reach_each_other_across_nodes() {
    let mut c = Cluster::start(spec("host-gw")).expect("cluster");
    assert_eq!(c.subnet_env(0).unwrap().mtu, 1500);
    assert_full_mesh(&mut c);
    let routes = ns_out(&c, 0, &["ip", "route"]);
    for i in 1..3 {
        let sn = c.subnet_env(i).unwrap().subnet.unwrap().trunc();
        let want = format!("{sn} via 198.18.0.{} dev eth0", i + 1);
        assert!(routes.contains(&want), "missing {want:?} in {routes}");
    }
}

#[test]
fn vxlan_direct_routing_uses_plain_routes_on_the_same_segment() {
    let mut s = spec("vxlan");
    s.direct_routing = true;
    let mut c = Cluster::start(s).expect("cluster");
    assert_full_mesh(&mut c);
    let routes = ns_out(&c, 0, &["ip", "route"]);
    for i in 1..3 {
        let sn = c.subnet_env(i).unwrap().subnet.unwrap().trunc();
        let want = format!("{sn} via 198.18.0.{} dev eth0", i + 1);
        assert!(routes.contains(&want), "missing {want:?} in {routes}");
    }
    let neigh = ns_out(&c, 0, &["ip", "neigh", "show", "dev", "flannel.1"]);
    assert!(
        !neigh.contains("PERMANENT"),
        "no neighbours expected: {neigh}"
    );
}

/// A node's flanneld stops and its lease is deleted: the others drop its entries within 2 s.
#[test]
fn removed_node_is_cleaned_up_everywhere() {
    let mut c = Cluster::start(spec("vxlan")).expect("cluster");
    let gone = c.subnet_env(2).unwrap().subnet.unwrap().trunc();
    c.stop_flanneld(2).expect("stop");
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        gone.network(),
        gone.prefix_len()
    );
    c.etcd().etcdctl(["del", &key]).expect("del lease");
    let start = Instant::now();
    for n in 0..2 {
        wait_for(
            "peer entries removed",
            Duration::from_secs(2),
            Duration::from_millis(50),
            || {
                let routes = ns_out(&c, n, &["ip", "route"]);
                let neigh = ns_out(&c, n, &["ip", "neigh", "show", "dev", "flannel.1"]);
                let fdb = ns_out(&c, n, &["bridge", "fdb", "show", "dev", "flannel.1"]);
                let done = !routes.contains(&gone.to_string())
                    && !neigh.contains(&gone.network().to_string())
                    && !fdb.contains("dst 198.18.0.3");
                Ok::<_, String>(done.then_some(()))
            },
        )
        .unwrap_or_else(|e| panic!("node {n}: {e}"));
    }
    assert!(start.elapsed() < Duration::from_secs(3));
}
