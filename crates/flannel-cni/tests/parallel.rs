//! 50 pods added and deleted concurrently on one node through the real bridge + host-local:
//! distinct addresses, and nothing left behind.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::{NodeSetup, ipv4_of};

const PODS: usize = 50;

#[test]
fn fifty_parallel_adds_then_dels_leave_nothing_behind() {
    let mut setup = NodeSetup::new(5);
    let mut pods: Vec<(String, PathBuf)> = Vec::new();
    for i in 0..PODS {
        let pod = setup.lab.add_pod(0, &format!("par{i}")).unwrap();
        pods.push((pod.netns_name().to_string(), pod.netns_path()));
    }
    let conf = setup.files.netconf("1.0.0");
    let node = &setup;

    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(cid, netns)| s.spawn(|| node.add(cid, netns, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = HashSet::new();
    for out in &results {
        assert!(out.ok(), "ADD: {} {}", out.stdout, out.stderr);
        let ip = ipv4_of(&out.json());
        assert!(ip.to_string().starts_with("10.244.5."), "{ip}");
        ips.insert(ip);
    }
    assert_eq!(ips.len(), PODS, "addresses must be distinct");
    assert_eq!(setup.saved_files().len(), PODS);
    assert_eq!(setup.files.reservations().len(), PODS);
    assert_eq!(setup.node_veths().len(), PODS);

    let dels: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(cid, netns)| s.spawn(|| node.del(cid, netns, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &dels {
        assert!(out.ok(), "DEL: {} {}", out.stdout, out.stderr);
    }
    // No veths, reservations, saved configs or temp files of the atomic writes.
    setup.assert_clean();
}
