//! Bad and hostile peer leases in etcd: each is ignored with one warning, and nothing about the
//! valid peers changes.

use std::time::Duration;

use flannel_lab::{Cluster, ClusterSpec, PodCni, run_ok, wait_for};

const PREFIX: &str = "/coreos.com/network/subnets";

fn lease(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

#[test]
fn bad_peer_leases_are_ignored_with_one_warning_each() {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 2,
        pod_cni: PodCni::Bridge,
        ..Default::default()
    })
    .expect("cluster");
    c.add_pod(0, "a").unwrap();
    c.add_pod(1, "b").unwrap();
    let own = c.subnet_env(0).unwrap().subnet.unwrap().trunc();
    // A /25 inside our own /24: valid key syntax, but it would hijack part of our pods' space.
    let overlap = format!("{}-25", own.network());
    let bad: Vec<(String, String, &str)> = vec![
        ("10.244.201.0-24".into(), "{not json".into(), "invalid JSON"),
        (
            "10.99.1.0-24".into(),
            lease("198.18.0.99", "0e:00:00:00:00:01"),
            "outside the network",
        ),
        (
            overlap,
            lease("198.18.0.98", "0e:00:00:00:00:02"),
            "overlapping our subnet",
        ),
        (
            "10.244.202.0-24".into(),
            lease("0.0.0.0", "0e:00:00:00:00:03"),
            "unspecified IP",
        ),
        (
            "10.244.203.0-24".into(),
            lease("127.0.0.1", "0e:00:00:00:00:04"),
            "loopback IP",
        ),
        (
            "10.244.204.0-24".into(),
            lease("224.0.0.9", "0e:00:00:00:00:05"),
            "multicast IP",
        ),
        (
            "10.244.205.0-24".into(),
            lease("198.18.0.97", "aa:bb:cc"),
            "short MAC",
        ),
        (
            "10.244.206.0-24".into(),
            lease("198.18.0.96", "aa:bb:cc:dd:ee:ff:00"),
            "long MAC",
        ),
    ];
    for (key, value, _) in &bad {
        c.etcd()
            .etcdctl(["put", &format!("{PREFIX}/{key}"), value])
            .unwrap();
    }
    // Let events, a repair tick (10 s) and another peer change go by: warnings must not repeat.
    std::thread::sleep(Duration::from_secs(12));
    c.stop_flanneld(1).unwrap();
    c.start_flanneld(1).unwrap();
    c.wait_ready(1).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let log = c.flanneld(0).unwrap().log();
    for (key, _, what) in &bad {
        let subnet = key.split('-').next().unwrap();
        let warnings = log
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(subnet))
            .count();
        assert_eq!(
            warnings, 1,
            "{what} ({key}): expected one warning, log:\n{log}"
        );
    }
    // Nothing of them reached the kernel.
    let ns = c.lab().node(0).netns();
    let routes = run_ok(ns, ["ip", "route"]).unwrap();
    let neigh = run_ok(ns, ["ip", "neigh", "show", "dev", "flannel.1"]).unwrap();
    let fdb = run_ok(ns, ["bridge", "fdb", "show", "dev", "flannel.1"]).unwrap();
    for (key, _, what) in &bad {
        let subnet = key.split('-').next().unwrap();
        if subnet != own.network().to_string() {
            assert!(
                !routes.contains(subnet),
                "{what}: route programmed: {routes}"
            );
            assert!(
                !neigh.contains(subnet),
                "{what}: neighbour programmed: {neigh}"
            );
        }
    }
    for mac in ["0e:00:00:00:00:0", "aa:bb:cc"] {
        assert!(!fdb.contains(mac), "bad FDB entry: {fdb}");
    }
    // The valid peer is untouched and pods still talk.
    let peer = c.subnet_env(1).unwrap().subnet.unwrap().trunc();
    assert!(routes.contains(&peer.to_string()), "{routes}");
    wait_for(
        "pods reach each other",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || Ok::<_, String>(c.unreachable().is_empty().then_some(())),
    )
    .unwrap();
    // flanneld kept running throughout.
    let mut d = c.take_flanneld(0).unwrap();
    assert!(d.is_running(), "flanneld died: {}", d.log_tail(30));
}
