//! A real many-node lab (issue 19): 20 nodes in either datastore converge to a full route mesh
//! and a full pod matrix. Prints the time to the mesh; asserts only a generous bound.

use std::time::{Duration, Instant};

use flannel_lab::{Cluster, ClusterSpec, Datastore, PodCni, run_ok};

fn twenty(datastore: Datastore) {
    let t = Instant::now();
    let mut c = Cluster::start(ClusterSpec {
        nodes: 20,
        datastore,
        pod_cni: PodCni::Bridge,
        healthz: false,
        ready_timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .expect("20-node cluster");
    let mesh = t.elapsed();
    eprintln!("{datastore:?}: 20 nodes ready with a full route mesh {mesh:?} after start");
    assert!(mesh < Duration::from_secs(120), "{mesh:?}");
    for i in 0..20 {
        let routes = run_ok(
            c.lab().node(i).netns(),
            ["ip", "route", "show", "proto", "70"],
        )
        .unwrap();
        assert_eq!(
            routes
                .lines()
                .filter(|l| l.contains("dev flannel.1"))
                .count(),
            19,
            "n{}: {routes}",
            i + 1
        );
    }
    for i in 0..20 {
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
    let failed = c.unreachable();
    assert!(failed.is_empty(), "{datastore:?}: unreachable {failed:?}");
}

#[test]
fn twenty_nodes_converge_with_etcd() {
    twenty(Datastore::Etcd);
}

#[test]
fn twenty_nodes_converge_in_kubernetes_mode() {
    twenty(Datastore::Kube);
}
