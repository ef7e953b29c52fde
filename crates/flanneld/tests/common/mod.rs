//! Helpers shared by the lab integration tests: pod-to-pod pingers, kernel state of the
//! vxlan device, and the state the peer leases in etcd call for.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use flannel_lab::cluster::{HEALTHZ_PORT, http_get};
use flannel_lab::{Cluster, ClusterSpec, PodCni, run_ok, wait_for};
use flannel_types::LeaseAttrs;

pub mod capture;

/// The three kinds of vxlan entries as iproute2 prints them, one set per kind.
pub type EntrySets = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

pub const PREFIX: &str = "/coreos.com/network/subnets";

pub fn spec(nodes: usize) -> ClusterSpec {
    ClusterSpec {
        nodes,
        pod_cni: PodCni::Bridge,
        ..Default::default()
    }
}

pub fn sh(c: &Cluster, node: usize, args: &[&str]) -> String {
    run_ok(c.lab().node(node).netns(), args).expect("command in node")
}

/// One pod `p<i>` per node, then asserts every pod reaches every other.
pub fn assert_full_mesh(c: &mut Cluster) {
    for i in 0..c.spec().nodes {
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
    assert_mesh(c);
}

/// Asserts every pod reaches every other (over each pod's first address).
pub fn assert_mesh(c: &Cluster) {
    let failed = c.unreachable();
    assert!(failed.is_empty(), "unreachable pod pairs: {failed:?}");
}

/// The MAC of node `node`'s `flannel.1`.
pub fn flannel1_mac(c: &Cluster, node: usize) -> String {
    let out = sh(c, node, &["ip", "-o", "link", "show", "flannel.1"]);
    out.split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// Continuous ping from pod `from` to `to` every `interval_ms` for `count` probes.
pub fn pinger(
    c: &Cluster,
    from: &str,
    to: std::net::IpAddr,
    interval_ms: u32,
    count: u32,
) -> JoinHandle<Output> {
    let ns = c.lab().pod(from).unwrap().netns_name().to_string();
    let interval = format!("{}", f64::from(interval_ms) / 1000.0);
    std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-n", "-q", "-i", &interval, "-W", "1",
            ])
            .args(["-c", &count.to_string(), &to.to_string()])
            .output()
            .expect("ping runs")
    })
}

/// Counts of `ping`'s summary line: (transmitted, received).
pub fn ping_summary(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    let nums: Vec<u32> = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Asserts node 0 routes every other node's subnet straight to that node's underlay address
/// (host-gw, and vxlan with DirectRouting on one segment).
pub fn assert_direct_routes(c: &Cluster) {
    let routes = sh(c, 0, &["ip", "route"]);
    for i in 1..c.spec().nodes {
        let sn = c.subnet_env(i).unwrap().subnet.unwrap().trunc();
        let want = format!("{sn} via 198.18.0.{} dev eth0", i + 1);
        assert!(routes.contains(&want), "missing {want:?} in {routes}");
    }
}
pub fn lease_key(c: &Cluster, node: usize) -> String {
    let sn = c.subnet_env(node).unwrap().subnet.unwrap().trunc();
    format!("{PREFIX}/{}-{}", sn.network(), sn.prefix_len())
}

/// The vxlan entries flannel.1 holds, as sorted text lines per kind.
pub fn kernel_state(c: &Cluster, node: usize) -> EntrySets {
    let routes = sh(c, node, &["ip", "route", "show", "proto", "70"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    let neigh = sh(
        c,
        node,
        &[
            "ip",
            "neigh",
            "show",
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
    )
    .lines()
    .map(|l| l.trim().to_string())
    .collect();
    let fdb = sh(c, node, &["bridge", "fdb", "show", "dev", "flannel.1"])
        .lines()
        .filter(|l| l.contains(" dst ") && !l.starts_with("00:00:00:00:00:00"))
        .map(|l| l.trim().to_string())
        .collect();
    (routes, neigh, fdb)
}

/// What flannel.1 must hold for the peer leases currently in etcd (node `node` excluded).
pub fn desired_state(c: &Cluster, node: usize) -> EntrySets {
    let own = lease_key(c, node);
    let listing = c
        .etcd()
        .etcdctl(["get", "--prefix", PREFIX])
        .expect("etcd listing");
    let lines: Vec<&str> = listing.lines().collect();
    let (mut routes, mut neigh, mut fdb) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for pair in lines.chunks(2) {
        let [key, value] = pair else { continue };
        if *key == own {
            continue;
        }
        let sub = key.rsplit('/').next().unwrap();
        let (ip, len) = sub.split_once('-').unwrap();
        let attrs = LeaseAttrs::from_json(value).expect("lease JSON");
        let data: serde_json::Value =
            serde_json::from_str(attrs.backend_data.as_ref().unwrap().as_str()).unwrap();
        let mac = data["VtepMAC"].as_str().unwrap().to_string();
        routes.insert(format!("{ip}/{len} via {ip} dev flannel.1 onlink"));
        neigh.insert(format!("{ip} lladdr {mac} PERMANENT"));
        fdb.insert(format!("{mac} dst {} self permanent", attrs.public_ip));
    }
    (routes, neigh, fdb)
}

/// Normalises iproute2 output to the shapes `desired_state` writes.
pub fn normalise(s: EntrySets) -> EntrySets {
    let routes =
        s.0.into_iter()
            .map(|l| l.replace(" proto 70", ""))
            .collect();
    let neigh = s.1;
    let fdb = s.2;
    (routes, neigh, fdb)
}

/// Waits until node `node`'s flannel.1 holds exactly what the peer leases in etcd call for,
/// and returns that state as iproute2 prints it. A node that is ready may still be learning
/// of peers that became ready after it, so tests that compare against a baseline start here.
pub fn wait_converged(c: &Cluster, node: usize, within: Duration) -> EntrySets {
    let want = desired_state(c, node);
    let mut last = None;
    let found = wait_for(
        "converged kernel state",
        within,
        Duration::from_millis(100),
        || {
            let have = kernel_state(c, node);
            let done = normalise(have.clone()) == want;
            last = Some(have.clone());
            Ok::<_, String>(done.then_some(have))
        },
    );
    found.unwrap_or_else(|e| panic!("{e}: want {want:?}, have {last:?}"))
}

pub fn ready(c: &Cluster, node: usize) -> Option<u16> {
    c.lab()
        .node(node)
        .netns()
        .in_thread(|| http_get(HEALTHZ_PORT, "/readyz").map(|r| r.0))
        .unwrap()
}
