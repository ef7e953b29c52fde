//! Operations: /metrics numbers follow what happens in the cluster, /readyz flips at the right
//! moment, and systemd gets READY=1.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use flannel_lab::cluster::{HEALTHZ_PORT, http_get};
use flannel_lab::{Cluster, ClusterSpec, PodCni, run_ok, wait_for};

fn spec(nodes: usize) -> ClusterSpec {
    ClusterSpec {
        nodes,
        pod_cni: PodCni::Bridge,
        extra_args: vec!["--iptables-resync=1".into()],
        ..Default::default()
    }
}

/// Fetches and parses node `i`'s /metrics with a Prometheus text parser.
fn scrape(c: &Cluster, i: usize) -> prometheus_parse::Scrape {
    let (status, body) = c
        .lab()
        .node(i)
        .netns()
        .in_thread(|| http_get(HEALTHZ_PORT, "/metrics"))
        .expect("thread")
        .expect("metrics answer");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition")
}

/// The value of a sample, summed over samples whose labels contain `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn wait_metric(
    c: &Cluster,
    i: usize,
    what: &str,
    pred: impl Fn(&prometheus_parse::Scrape) -> bool,
) {
    wait_for(
        what,
        Duration::from_secs(10),
        Duration::from_millis(200),
        || Ok::<_, String>(pred(&scrape(c, i)).then_some(())),
    )
    .unwrap_or_else(|e| panic!("node {i}: {e}"));
}

#[test]
fn metrics_follow_peers_and_rule_repairs() {
    let mut c = Cluster::start(spec(3)).expect("cluster");
    for i in 0..3 {
        let s = scrape(&c, i);
        let subnet = c.subnet_env(i).unwrap().subnet.unwrap().trunc().to_string();
        assert_eq!(
            value(
                &s,
                "flannel_build_info",
                &[("backend", "vxlan"), ("datastore", "etcd")]
            ),
            1.0
        );
        assert_eq!(value(&s, "flannel_lease_info", &[("subnet", &subnet)]), 1.0);
        assert!(value(&s, "flannel_lease_expiration_timestamp_seconds", &[]) > 1.7e9);
    }
    wait_metric(&c, 0, "two vxlan peers", |s| {
        value(s, "flannel_peers", &[("kind", "vxlan")]) == 2.0
    });
    let before = scrape(&c, 0);
    let added = value(&before, "flannel_dataplane_entries_added_total", &[]);
    assert!(added >= 6.0, "3 entries per peer: {added}");
    assert!(
        value(
            &before,
            "flannel_netlink_operations_total",
            &[("op", "replace route"), ("result", "ok")]
        ) >= 2.0
    );
    assert!(value(&before, "flannel_reconcile_total", &[("result", "ok")]) >= 1.0);
    assert!(value(&before, "flannel_reconcile_duration_seconds_count", &[]) >= 1.0);
    assert!(value(&before, "flannel_event_to_programmed_seconds_count", &[]) >= 1.0);

    // A peer leaves: peers drop to 1, three entries are removed.
    let gone = c.subnet_env(2).unwrap().subnet.unwrap().trunc();
    c.stop_flanneld(2).unwrap();
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        gone.network(),
        gone.prefix_len()
    );
    c.etcd().etcdctl(["del", &key]).unwrap();
    wait_metric(&c, 0, "peer removed", |s| {
        value(s, "flannel_peers", &[("kind", "vxlan")]) == 1.0
            && value(s, "flannel_dataplane_entries_removed_total", &[]) >= 3.0
            && value(s, "flannel_lease_events_total", &[("kind", "removed")]) >= 1.0
    });
    // It comes back: peers up to 2 again, more entries added.
    c.start_flanneld(2).unwrap();
    c.wait_ready(2).unwrap();
    wait_metric(&c, 0, "peer back", |s| {
        value(s, "flannel_peers", &[("kind", "vxlan")]) == 2.0
            && value(s, "flannel_dataplane_entries_added_total", &[]) >= added + 3.0
    });

    // A rule deleted by hand is repaired and counted.
    let repairs = value(
        &scrape(&c, 0),
        "flannel_rule_repairs_total",
        &[("kind", "iptables")],
    );
    run_ok(
        c.lab().node(0).netns(),
        ["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "1"],
    )
    .unwrap();
    wait_metric(&c, 0, "rule repair counted", |s| {
        value(s, "flannel_rule_repairs_total", &[("kind", "iptables")]) >= repairs + 1.0
    });
    // A route deleted by hand is repaired by the repair tick (10 s) and counted as added.
    let s = scrape(&c, 0);
    let added = value(&s, "flannel_dataplane_entries_added_total", &[]);
    let routes = run_ok(
        c.lab().node(0).netns(),
        ["ip", "route", "show", "dev", "flannel.1"],
    )
    .unwrap();
    let dst = routes
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    run_ok(
        c.lab().node(0).netns(),
        ["ip", "route", "del", &dst, "dev", "flannel.1"],
    )
    .unwrap();
    wait_for(
        "route repaired",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            Ok::<_, String>(
                (value(&scrape(&c, 0), "flannel_dataplane_entries_added_total", &[]) > added)
                    .then_some(()),
            )
        },
    )
    .unwrap();
    let s = scrape(&c, 0);
    assert!(value(&s, "flannel_reconcile_total", &[("trigger", "repair")]) >= 1.0);
}

#[test]
fn readyz_turns_ready_only_when_etcd_answers() {
    let mut c = Cluster::start(spec(1)).expect("cluster");
    let ready = |c: &Cluster| {
        c.lab()
            .node(0)
            .netns()
            .in_thread(|| http_get(HEALTHZ_PORT, "/readyz"))
            .unwrap()
    };
    assert_eq!(ready(&c).map(|r| r.0), Some(200));
    c.stop_flanneld(0).unwrap();
    c.etcd_mut().stop().unwrap();
    c.start_flanneld(0).unwrap();
    // While etcd is down: alive, not ready, for as long as it lasts.
    let health = |c: &Cluster| {
        c.lab()
            .node(0)
            .netns()
            .in_thread(|| http_get(HEALTHZ_PORT, "/healthz"))
            .unwrap()
    };
    wait_for(
        "healthz up",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok::<_, String>(health(&c).filter(|r| r.0 == 200).map(|_| ())),
    )
    .unwrap();
    assert_eq!(health(&c).unwrap().1, "flanneld is running");
    for _ in 0..10 {
        let (status, body) = ready(&c).expect("readyz answers");
        assert_eq!((status, body.as_str()), (503, "flanneld is not ready yet"));
        std::thread::sleep(Duration::from_millis(200));
    }
    c.etcd_mut().restart().unwrap();
    wait_for(
        "ready after etcd returns",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || Ok::<_, String>(ready(&c).filter(|r| r.0 == 200).map(|r| r.1)),
    )
    .map(|body| assert_eq!(body, "flanneld is ready"))
    .unwrap();
    // subnet.env exists by the time /readyz says ready.
    assert!(c.subnet_env(0).is_ok());
}

#[test]
fn systemd_gets_ready_after_subnet_env() {
    let mut c = Cluster::start(spec(1)).expect("cluster");
    c.stop_flanneld(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::fs::remove_file(c.subnet_file(0)).unwrap();
    let env: BTreeMap<&str, &str> = [("NOTIFY_SOCKET", sock_path.to_str().unwrap())].into();
    c.start_flanneld_env(0, &[], &env).unwrap();
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        c.subnet_file(0).exists(),
        "subnet.env written before READY=1"
    );
}
