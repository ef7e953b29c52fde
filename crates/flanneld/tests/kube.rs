//! flanneld with `--kube-subnet-mgr` in the lab: the Kubernetes API emulator
//! (`flannel-kube-emu`) on the underlay, Node objects `n1..n3` with kubeadm-style podCIDRs, and
//! flanneld in every node namespace with a kubeconfig, net-conf.json and `NODE_NAME`, as the
//! kube-flannel DaemonSet runs it.

use std::time::{Duration, Instant};

use flannel_lab::kube::node_name;
mod common;

use common::{assert_mesh, flannel1_mac, sh};
use flannel_lab::{Cluster, ClusterSpec, Datastore, PodCni};
use serde_json::Value;

fn spec() -> ClusterSpec {
    ClusterSpec {
        datastore: Datastore::Kube,
        nodes: 3,
        pod_cni: PodCni::Flannel,
        ..Default::default()
    }
}

fn node_obj(c: &Cluster, i: usize) -> Value {
    c.kube()
        .expect("kube mode")
        .node(&node_name(i))
        .expect("node")
}

fn annotation(node: &Value, key: &str) -> String {
    node["metadata"]["annotations"][format!("flannel.alpha.coreos.com/{key}")]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether node `i` has a route to `subnet` (e.g. `10.244.2.0/24`).
fn has_route(c: &Cluster, i: usize, subnet: &str) -> bool {
    !sh(c, i, &["ip", "route", "show", subnet]).trim().is_empty()
}

/// Waits (bounded) until every node routes every other node's podCIDR: a peer appears once its
/// flanneld has annotated its Node, which may be after our own flanneld became ready.
fn wait_full_routes(c: &Cluster, what: &str) {
    let n = c.spec().nodes;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).filter(move |p| *p != i).map(move |p| (i, p)))
            .filter(|(i, p)| !has_route(c, *i, &format!("10.244.{p}.0/24")))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: (node, peer) routes missing: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_converge_with_upstream_annotations() {
    let mut c = Cluster::start(spec()).expect("cluster");
    for i in 0..3 {
        // Subnets are the podCIDRs kubeadm assigned, not allocated by flannel.
        let env = c.subnet_env(i).unwrap();
        assert_eq!(
            env.subnet.unwrap().trunc().to_string(),
            format!("10.244.{i}.0/24"),
            "node {i}"
        );
        assert_eq!(env.mtu, 1450);
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
    assert_mesh(&c);

    for i in 0..3 {
        let node = node_obj(&c, i);
        let ann = node["metadata"]["annotations"].as_object().unwrap();
        // Exactly upstream's keys and value shapes, nothing else of ours.
        let mut keys: Vec<&str> = ann.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "flannel.alpha.coreos.com/backend-data",
                "flannel.alpha.coreos.com/backend-type",
                "flannel.alpha.coreos.com/kube-subnet-manager",
                "flannel.alpha.coreos.com/public-ip",
            ],
            "node {i}"
        );
        assert_eq!(annotation(&node, "kube-subnet-manager"), "true");
        assert_eq!(annotation(&node, "backend-type"), "vxlan");
        assert_eq!(
            annotation(&node, "public-ip"),
            c.lab().node(i).ip().to_string()
        );
        assert_eq!(
            annotation(&node, "backend-data"),
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, flannel1_mac(&c, i)),
            "node {i}"
        );
        // NetworkUnavailable=False, merged next to the kubelet's Ready condition.
        let conds = node["status"]["conditions"].as_array().unwrap();
        let nu = conds
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .expect("NetworkUnavailable condition");
        assert_eq!(nu["status"], "False");
        assert_eq!(nu["reason"], "FlannelIsUp");
        assert_eq!(nu["message"], "Flannel is running on this node");
        assert!(conds.iter().any(|c| c["type"] == "Ready"));
    }
    // Each node routes the other two podCIDRs over flannel.1.
    let routes = sh(&c, 0, &["ip", "route", "show", "dev", "flannel.1"]);
    for peer in ["10.244.1.0/24", "10.244.2.0/24"] {
        assert!(routes.contains(peer), "{routes}");
    }
}

#[test]
fn node_deletion_removes_routes_within_2s_even_after_watch_drops_and_410() {
    let c = Cluster::start(ClusterSpec {
        pod_cni: PodCni::Bridge,
        ..spec()
    })
    .expect("cluster");
    let emu = c.kube().unwrap();
    wait_full_routes(&c, "start");
    // Break every node's watch twice: a dropped connection, then 410 Gone (forcing a
    // re-list). Give the watchers time to come back (bounded backoff, under 2 s here).
    emu.drop_watches().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    emu.expire_watches().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = emu.state().unwrap();
        if state["watchers"].as_u64() == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watchers did not come back: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No peer was lost on the way.
    for i in 0..3 {
        for peer in (0..3).filter(|p| *p != i) {
            assert!(has_route(&c, i, &format!("10.244.{peer}.0/24")));
        }
    }

    let start = Instant::now();
    emu.delete_node(&node_name(2)).unwrap();
    loop {
        let left: Vec<usize> = (0..2)
            .filter(|i| has_route(&c, *i, "10.244.2.0/24"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "routes to the deleted node's podCIDR still on nodes {left:?} after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    eprintln!("routes of the deleted node gone everywhere after {took:?}");
    // Its neighbour and FDB entries went with the route; the other peer stays.
    let neigh = sh(&c, 0, &["ip", "neigh", "show", "dev", "flannel.1"]);
    assert!(!neigh.contains("10.244.2.0"), "{neigh}");
    let fdb = sh(&c, 0, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    assert!(!fdb.contains("dst 198.18.0.3"), "{fdb}");
    assert!(has_route(&c, 0, "10.244.1.0/24"));
}

#[test]
fn restart_keeps_the_vtep_mac_from_the_annotation() {
    let mut c = Cluster::start(ClusterSpec {
        pod_cni: PodCni::Bridge,
        ..spec()
    })
    .expect("cluster");
    let mac = flannel1_mac(&c, 1);
    c.stop_flanneld(1).unwrap();
    // Remove the device too, so the MAC can only come back from the Node annotation (a
    // reboot loses the device as well).
    sh(&c, 1, &["ip", "link", "del", "flannel.1"]);
    c.start_flanneld(1).unwrap();
    c.wait_ready(1).unwrap();
    assert_eq!(flannel1_mac(&c, 1), mac, "VtepMAC after restart");
    let node = node_obj(&c, 1);
    assert_eq!(
        annotation(&node, "backend-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)
    );
    // Nothing changed, so the annotations were not re-written.
    let log = c.flanneld(1).unwrap().log();
    assert!(
        !log.split("### flannel-lab: ")
            .last()
            .unwrap_or("")
            .contains("patching node"),
        "annotations re-patched although unchanged:\n{log}"
    );
    c.add_pod(0, "a").unwrap();
    c.add_pod(1, "b").unwrap();
    assert_mesh(&c);
}
