//! Masquerade and forward rules as flanneld installs them on lab nodes: golden listings,
//! masquerade to an outside host, no NAT between pods, repair, and switching modes.

use std::time::Duration;

mod common;

use common::sh;
use flannel_lab::{Cluster, ClusterSpec, PodCni, run_ok, wait_for};

fn spec(nftables: bool) -> ClusterSpec {
    ClusterSpec {
        nodes: 2,
        nftables,
        outside_host: true,
        pod_cni: PodCni::Bridge,
        // Resync every second so repair tests are quick; the default is upstream's 5 s.
        extra_args: vec!["--iptables-resync=1".into()],
        ..Default::default()
    }
}

fn pod_subnet(c: &Cluster, node: usize) -> String {
    c.subnet_env(node)
        .unwrap()
        .subnet
        .unwrap()
        .trunc()
        .to_string()
}

fn golden_iptables_nat(pod: &str) -> String {
    let cl = "10.244.0.0/16";
    format!(
        "-N FLANNEL-POSTRTG\n\
         -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A FLANNEL-POSTRTG -s {pod} -d {cl} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A FLANNEL-POSTRTG -s {cl} -d {pod} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s {cl} -d {pod} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A FLANNEL-POSTRTG -s {cl} ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
         -A FLANNEL-POSTRTG ! -s {cl} -d {cl} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n"
    )
}

fn golden_iptables_filter() -> String {
    "-N FLANNEL-FWD\n\
     -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
     -A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n"
        .to_string()
}

fn golden_nft(pod: &str) -> String {
    let cl = "10.244.0.0/16";
    format!(
        "table ip flannel-ipv4 {{
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {{
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr {pod} ip daddr {cl} return
\t\tip saddr {cl} ip daddr {pod} return
\t\tip saddr != {cl} ip daddr {pod} return
\t\tip saddr {cl} ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != {cl} ip daddr {cl} masquerade fully-random
\t}}

\tchain forward {{
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr {cl} accept
\t\tip daddr {cl} accept
\t}}
}}
"
    )
}

fn iptables_state(c: &Cluster, node: usize) -> (String, String, String, String) {
    (
        sh(c, node, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]),
        sh(c, node, &["iptables", "-S", "FLANNEL-FWD"]),
        sh(c, node, &["iptables", "-t", "nat", "-S", "POSTROUTING"]),
        sh(c, node, &["iptables", "-S", "FORWARD"]),
    )
}

fn assert_iptables_golden(c: &Cluster, node: usize) {
    let pod = pod_subnet(c, node);
    let (nat, filter, post, fwd) = iptables_state(c, node);
    assert_eq!(nat, golden_iptables_nat(&pod));
    assert_eq!(filter, golden_iptables_filter());
    let jump = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";
    assert_eq!(post.matches(jump).count(), 1, "{post}");
    let jump = "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD";
    assert_eq!(fwd.matches(jump).count(), 1, "{fwd}");
}

fn wait_repaired(node: usize, what: &str, check: impl Fn() -> bool) {
    // resync is 1 s; repair must happen within resync + 1 s.
    wait_for(
        what,
        Duration::from_secs(2),
        Duration::from_millis(50),
        || Ok::<_, String>(check().then_some(())),
    )
    .unwrap_or_else(|e| panic!("node {node}: {e}"));
}

#[test]
fn iptables_golden_masquerade_and_repair() {
    let mut c = Cluster::start(spec(false)).expect("cluster");
    for n in 0..2 {
        assert_iptables_golden(&c, n);
    }
    // No nft leftovers in iptables mode.
    assert!(!sh(&c, 0, &["nft", "list", "tables"]).contains("flannel"));

    // Masquerade: the outside host has no route back to pods, so replies only come because the
    // node rewrote the source to its own address.
    c.add_pod(0, "a").unwrap();
    let b_ip = c.add_pod(1, "b").unwrap();
    let a = c.lab().pod("a").unwrap().netns();
    let outside = c.lab().outside().unwrap().interfaces()[0].ipv4();
    assert!(
        flannel_lab::ping(a, outside.into(), 3, Duration::from_secs(2)).unwrap(),
        "pod reaches the outside host through masquerade"
    );
    let ct = sh(&c, 0, &["conntrack", "-L", "-p", "icmp"]);
    let node_ip = c.lab().node(0).ip().to_string();
    assert!(
        ct.lines()
            .any(|l| l.contains(&format!("dst={outside}")) && l.contains(&format!("dst={node_ip}"))),
        "conntrack shows SNAT to the node address: {ct}"
    );

    // Pod to pod across nodes is not NATed: the receiver sees the sender's pod address.
    let a_ip = c.pod("a").unwrap().ip;
    let b_ns = c.lab().pod("b").unwrap().netns_name().to_string();
    let capture = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &b_ns, "timeout", "10", "tcpdump", "-n", "-c", "1", "-i", "eth0",
            ])
            .arg(format!("icmp and src host {a_ip}"))
            .output()
            .expect("tcpdump")
    });
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..5 {
        let _ = flannel_lab::ping(a, b_ip, 1, Duration::from_secs(1));
    }
    let out = capture.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{a_ip} > {b_ip}")),
        "receiver sees pod source: {text}"
    );

    // Repair: delete one rule.
    let ns = c.lab().node(0).netns();
    run_ok(ns, ["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "2"]).unwrap();
    wait_repaired(0, "deleted rule restored", || {
        iptables_state(&c, 0).0 == golden_iptables_nat(&pod_subnet(&c, 0))
    });
    // Flush a chain.
    run_ok(ns, ["iptables", "-F", "FLANNEL-FWD"]).unwrap();
    wait_repaired(0, "flushed chain refilled", || {
        iptables_state(&c, 0).1 == golden_iptables_filter()
    });
    // A duplicate and a foreign rule inserted by hand.
    run_ok(
        ns,
        [
            "iptables",
            "-t",
            "nat",
            "-I",
            "FLANNEL-POSTRTG",
            "1",
            "-m",
            "mark",
            "--mark",
            "0x4000/0x4000",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "RETURN",
        ],
    )
    .unwrap();
    run_ok(
        ns,
        [
            "iptables",
            "-A",
            "FLANNEL-FWD",
            "-s",
            "192.0.2.0/24",
            "-j",
            "ACCEPT",
        ],
    )
    .unwrap();
    wait_repaired(0, "duplicate and foreign rules removed", || {
        let (nat, filter, _, _) = iptables_state(&c, 0);
        nat == golden_iptables_nat(&pod_subnet(&c, 0)) && filter == golden_iptables_filter()
    });
    // A deleted jump rule.
    run_ok(
        ns,
        [
            "iptables",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
    )
    .unwrap();
    wait_repaired(0, "jump restored", || {
        iptables_state(&c, 0).2.contains("-j FLANNEL-POSTRTG")
    });
    assert_iptables_golden(&c, 0);
}

#[test]
fn nftables_golden_and_repair() {
    let c = Cluster::start(spec(true)).expect("cluster");
    for n in 0..2 {
        let table = sh(&c, n, &["nft", "list", "table", "ip", "flannel-ipv4"]);
        assert_eq!(table, golden_nft(&pod_subnet(&c, n)));
        // No iptables leftovers in nftables mode.
        let (post, fwd) = (
            sh(&c, n, &["iptables", "-t", "nat", "-S"]),
            sh(&c, n, &["iptables", "-S"]),
        );
        assert!(
            !post.contains("FLANNEL") && !fwd.contains("FLANNEL"),
            "{post}{fwd}"
        );
    }
    let ns = c.lab().node(0).netns();
    let golden = golden_nft(&pod_subnet(&c, 0));
    // The table may be missing for a moment (deleted by the test): that is "not yet repaired".
    let table = || {
        run_ok(
            c.lab().node(0).netns(),
            ["nft", "list", "table", "ip", "flannel-ipv4"],
        )
        .unwrap_or_default()
    };
    // Delete one rule by handle.
    let listing = sh(
        &c,
        0,
        &[
            "nft",
            "-a",
            "list",
            "chain",
            "ip",
            "flannel-ipv4",
            "postrtg",
        ],
    );
    let handle = listing
        .lines()
        .find(|l| l.contains("masquerade"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    run_ok(
        ns,
        [
            "nft",
            "delete",
            "rule",
            "ip",
            "flannel-ipv4",
            "postrtg",
            "handle",
            &handle,
        ],
    )
    .unwrap();
    wait_repaired(0, "nft rule restored", || table() == golden);
    // Flush a chain.
    run_ok(
        ns,
        ["nft", "flush", "chain", "ip", "flannel-ipv4", "forward"],
    )
    .unwrap();
    wait_repaired(0, "nft chain refilled", || table() == golden);
    // Insert a duplicate.
    run_ok(
        ns,
        [
            "nft",
            "insert",
            "rule",
            "ip",
            "flannel-ipv4",
            "forward",
            "ip",
            "saddr",
            "10.244.0.0/16",
            "accept",
        ],
    )
    .unwrap();
    wait_repaired(0, "nft duplicate removed", || table() == golden);
    // Delete the whole table.
    run_ok(ns, ["nft", "delete", "table", "ip", "flannel-ipv4"]).unwrap();
    wait_repaired(0, "nft table recreated", || table() == golden);
}

#[test]
fn switching_modes_leaves_nothing_of_the_other() {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 1,
        ..spec(false)
    })
    .expect("cluster");
    assert_iptables_golden(&c, 0);
    let set_nft = |c: &Cluster, on: bool| {
        let mut conf = c.spec().net_config();
        conf["EnableNFTables"] = serde_json::json!(on);
        c.etcd()
            .etcdctl(["put", "/coreos.com/network/config", &conf.to_string()])
            .unwrap();
    };
    // iptables -> nftables
    c.stop_flanneld(0).unwrap();
    set_nft(&c, true);
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    wait_for(
        "nft tables present",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            Ok::<_, String>(
                sh(&c, 0, &["nft", "list", "tables"])
                    .contains("flannel-ipv4")
                    .then_some(()),
            )
        },
    )
    .unwrap();
    let all = sh(&c, 0, &["iptables-save"]);
    assert!(!all.contains("FLANNEL"), "iptables leftovers: {all}");
    assert!(!all.contains("flanneld"), "iptables leftovers: {all}");
    // nftables -> iptables
    c.stop_flanneld(0).unwrap();
    set_nft(&c, false);
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    let tables = sh(&c, 0, &["nft", "list", "tables"]);
    assert!(
        !tables.contains("flannel"),
        "nft leftovers: {tables}\n{}",
        c.flanneld(0).unwrap().log()
    );
    assert_iptables_golden(&c, 0);
}
