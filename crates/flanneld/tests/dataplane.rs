//! flanneld end to end in the lab: real etcd, real kernel, several nodes.
//!
//! Each test starts a cluster (etcd on the underlay, flanneld per node namespace), creates pods
//! through CNI and checks cross-node reachability and the kernel state flanneld programs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;

use common::{
    assert_direct_routes, assert_full_mesh, assert_mesh, flannel1_mac, lease_key, ping_summary, sh,
};
use flannel_lab::{Cluster, ClusterSpec, PodCni, run_ok, wait_for};

fn spec(backend: &str) -> ClusterSpec {
    ClusterSpec {
        nodes: 3,
        backend: backend.into(),
        pod_cni: PodCni::Bridge,
        ..Default::default()
    }
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
    let link = sh(&c, 0, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(link.contains("vxlan id 1"), "{link}");
    assert!(link.contains("local 198.18.0.1"), "{link}");
    assert!(link.contains("dev eth0"), "{link}");
    assert!(link.contains("dstport 8472"), "{link}");
    assert!(link.contains("nolearning"), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    // Two peers: two onlink routes, two neighbours, two FDB entries.
    let routes = sh(&c, 0, &["ip", "route", "show", "dev", "flannel.1"]);
    assert_eq!(
        routes.lines().filter(|l| l.contains("onlink")).count(),
        2,
        "{routes}"
    );
    let neigh = sh(&c, 0, &["ip", "neigh", "show", "dev", "flannel.1"]);
    assert_eq!(
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        2,
        "{neigh}"
    );
    let fdb = sh(&c, 0, &["bridge", "fdb", "show", "dev", "flannel.1"]);
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
    assert_direct_routes(&c);
}

#[test]
fn vxlan_direct_routing_uses_plain_routes_on_the_same_segment() {
    let mut s = spec("vxlan");
    s.direct_routing = true;
    let mut c = Cluster::start(s).expect("cluster");
    assert_full_mesh(&mut c);
    assert_direct_routes(&c);
    let neigh = sh(&c, 0, &["ip", "neigh", "show", "dev", "flannel.1"]);
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
                let routes = sh(&c, n, &["ip", "route"]);
                let neigh = sh(&c, n, &["ip", "neigh", "show", "dev", "flannel.1"]);
                let fdb = sh(&c, n, &["bridge", "fdb", "show", "dev", "flannel.1"]);
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

/// SIGTERM and start again while pods talk every 10 ms: nothing is lost, and the node keeps its
/// subnet and VTEP MAC.
#[test]
fn restart_keeps_traffic_subnet_and_mac() {
    let mut c = Cluster::start(spec("vxlan")).expect("cluster");
    c.add_pod(0, "a").unwrap();
    let target = c.add_pod(1, "b").unwrap();
    let subnet_before = c.subnet_env(0).unwrap().subnet;
    let mac_before = flannel1_mac(&c, 0);
    let peer_mac_before = flannel1_mac(&c, 1);

    // 500 probes 10 ms apart: about 5 s of traffic across both restarts.
    let pod_ns = c.lab().pod("a").unwrap().netns_name().to_string();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &pod_ns, "ping", "-n", "-D", "-O", "-i", "0.01", "-c", "500",
                "-W", "1",
            ])
            .arg(target.to_string())
            .output()
            .expect("ping runs")
    });
    std::thread::sleep(Duration::from_millis(500));
    for node in [0, 1] {
        let status = c.stop_flanneld(node).expect("SIGTERM");
        assert!(status.success(), "flanneld exits 0 on SIGTERM: {status}");
        // The data plane stays while the daemon is down.
        assert!(sh(&c, node, &["ip", "link", "show", "flannel.1"]).contains("flannel.1"));
        c.start_flanneld(node).unwrap();
        c.wait_ready(node).unwrap();
    }
    let out = pinger.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = ping_summary(&text);
    assert!(sent >= 450, "{text}");
    let lost: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("no answer yet"))
        .collect();
    assert_eq!(
        sent,
        received,
        "packets lost across restarts: {lost:?}\n{}\nnode 0 log:\n{}\nnode 1 log:\n{}",
        text.lines().last().unwrap_or_default(),
        c.flanneld(0).map(|d| d.log()).unwrap_or_default(),
        c.flanneld(1).map(|d| d.log()).unwrap_or_default()
    );
    assert_eq!(c.subnet_env(0).unwrap().subnet, subnet_before);
    assert_eq!(flannel1_mac(&c, 0), mac_before);
    assert_eq!(flannel1_mac(&c, 1), peer_mac_before);
    // The lease in etcd still advertises the same MAC.
    let value = c
        .etcd()
        .etcdctl(["get", "--print-value-only", &lease_key(&c, 0)])
        .unwrap();
    assert!(value.contains(&mac_before), "{value}");
}

/// Entries for a peer that vanished while flanneld was down, and junk planted by hand, are
/// removed at the next start; entries for live peers are kept.
#[test]
fn stale_entries_are_removed_at_start() {
    let mut c = Cluster::start(spec("vxlan")).expect("cluster");
    let gone = c.subnet_env(2).unwrap().subnet.unwrap().trunc();
    c.stop_flanneld(2).unwrap();
    c.stop_flanneld(0).unwrap();
    // Node 3 leaves while node 1's daemon is down.
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        gone.network(),
        gone.prefix_len()
    );
    c.etcd().etcdctl(["del", &key]).unwrap();
    // And somebody plants a route, neighbour and FDB entry for a subnet nobody owns.
    let n0 = c.lab().node(0).netns();
    n0.ip_batch(
        "route add 10.244.250.0/24 via 10.244.250.0 dev flannel.1 onlink\n\
         neigh add 10.244.250.0 lladdr 0e:00:00:00:00:fa dev flannel.1 nud permanent\n",
    )
    .unwrap();
    run_ok(
        n0,
        [
            "bridge",
            "fdb",
            "add",
            "0e:00:00:00:00:fa",
            "dev",
            "flannel.1",
            "self",
            "permanent",
            "dst",
            "198.18.0.250",
        ],
    )
    .unwrap();
    let live = c.subnet_env(1).unwrap().subnet.unwrap().trunc();
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    wait_for(
        "stale entries removed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let routes = sh(&c, 0, &["ip", "route"]);
            let neigh = sh(&c, 0, &["ip", "neigh", "show", "dev", "flannel.1"]);
            let fdb = sh(&c, 0, &["bridge", "fdb", "show", "dev", "flannel.1"]);
            let clean = !routes.contains("10.244.250.0")
                && !routes.contains(&gone.to_string())
                && !neigh.contains("10.244.250.0")
                && !neigh.contains(&gone.network().to_string())
                && !fdb.contains("0e:00:00:00:00:fa")
                && !fdb.contains("dst 198.18.0.3 ");
            Ok::<_, String>(clean.then_some(()))
        },
    )
    .unwrap();
    let routes = sh(&c, 0, &["ip", "route"]);
    assert!(
        routes.contains(&live.to_string()),
        "live peer kept: {routes}"
    );
}

/// `ip link del flannel.1` on a running node: device and every peer entry are back within 2 s.
#[test]
fn deleted_device_is_rebuilt_with_all_entries() {
    let mut c = Cluster::start(spec("vxlan")).expect("cluster");
    assert_full_mesh(&mut c);
    let mac = flannel1_mac(&c, 0);
    run_ok(c.lab().node(0).netns(), ["ip", "link", "del", "flannel.1"]).unwrap();
    let start = Instant::now();
    wait_for(
        "flannel.1 rebuilt",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || {
            let routes = run_ok(
                c.lab().node(0).netns(),
                ["ip", "route", "show", "dev", "flannel.1"],
            )
            .unwrap_or_default();
            let neigh = run_ok(
                c.lab().node(0).netns(),
                ["ip", "neigh", "show", "dev", "flannel.1"],
            )
            .unwrap_or_default();
            let fdb = run_ok(
                c.lab().node(0).netns(),
                ["bridge", "fdb", "show", "dev", "flannel.1"],
            )
            .unwrap_or_default();
            let ok = routes.lines().filter(|l| l.contains("onlink")).count() == 2
                && neigh.lines().filter(|l| l.contains("PERMANENT")).count() == 2
                && fdb.lines().filter(|l| l.contains("dst 198.18.0.")).count() == 2;
            Ok::<_, String>(ok.then_some(()))
        },
    )
    .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(flannel1_mac(&c, 0), mac, "same MAC after rebuild");
    let addr = sh(&c, 0, &["ip", "-4", "addr", "show", "dev", "flannel.1"]);
    let own = c.subnet_env(0).unwrap().subnet.unwrap().trunc().network();
    assert!(addr.contains(&format!("{own}/32")), "{addr}");
    assert_mesh(&c);
}
