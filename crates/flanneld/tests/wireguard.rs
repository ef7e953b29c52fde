//! The wireguard backend end to end in the lab: real etcd or the API emulator, real kernel,
//! several nodes, and on this machine (no WireGuard module) flanneld's userspace data path.
//!
//! Checks what upstream's backend promises (devices, MTU, addresses, route, key file, lease
//! and annotation shapes), that nothing but WireGuard crosses the underlay, that every node's
//! `wg show flannel-wg` shows its own device, and what flannel-rs adds: reconcile instead of
//! recreate (restart, deleted device, key change, vanished node), and interoperation with an
//! independent implementation (Debian's wireguard-go, configured from upstream-format leases).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::capture::{capture_frames, ip_packets};
use common::{lease_key, ping_summary, pinger, sh};
use flannel_lab::{Cluster, ClusterSpec, Datastore, PodCni, run_in, wait_for};
use serde_json::json;

const NET6: &str = "fd00:10:244::/56";

fn spec(datastore: Datastore, dual: bool) -> ClusterSpec {
    let mut s = ClusterSpec {
        nodes: 3,
        datastore,
        backend: "wireguard".into(),
        pod_cni: PodCni::Flannel,
        ..Default::default()
    };
    if dual {
        s.ipv6 = true;
        s.extra_config = json!({ "EnableIPv6": true, "IPv6Network": NET6 });
    }
    s
}

/// `wg <args>` on node `i`, seeing that node's /run/wireguard as `flannel-lab exec` does.
fn wg(c: &Cluster, i: usize, args: &[&str]) -> String {
    let dir = c.lab().node(i).dir();
    let mut cmd = flannel_lab::node_root::wireguard_view(dir, "ip".as_ref()).unwrap();
    cmd.args(["netns", "exec", c.lab().node(i).netns().name(), "wg"])
        .args(args);
    let out = cmd.output().expect("wg runs");
    assert!(
        out.status.success(),
        "wg {args:?} on n{}: {}",
        i + 1,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `wg show <dev> dump` peers: public key -> (endpoint, allowed ips).
fn wg_peers(c: &Cluster, i: usize, dev: &str) -> Vec<(String, String, String)> {
    wg(c, i, &["show", dev, "dump"])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[2].to_string(), f[3].to_string())
        })
        .collect()
}

fn key_file(c: &Cluster, i: usize) -> PathBuf {
    c.lab().node(i).dir().join("wgkey")
}

/// The public key node `i` publishes (from its key file, through `wg pubkey`).
fn public_key(c: &Cluster, i: usize) -> String {
    let private = std::fs::read_to_string(key_file(c, i)).unwrap();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn add_pods(c: &mut Cluster) {
    for i in 0..c.spec().nodes {
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
}

fn full(matrix: Vec<(String, String, bool)>, what: &str) {
    assert!(!matrix.is_empty(), "{what}: no pairs");
    let failed: Vec<_> = matrix.iter().filter(|(_, _, ok)| !ok).collect();
    assert!(failed.is_empty(), "{what}: unreachable {failed:?}");
}

/// Waits until node `i`'s device has exactly `want` peers.
fn wait_peers(c: &Cluster, i: usize, dev: &str, want: &BTreeSet<String>) {
    wait_for(
        &format!("n{} {dev} to hold peers {want:?}", i + 1),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let have: BTreeSet<String> = wg_peers(c, i, dev).into_iter().map(|p| p.0).collect();
            if &have == want {
                Ok(Some(()))
            } else {
                Err(format!("have {have:?}"))
            }
        },
    )
    .unwrap();
}

fn keys_except(c: &Cluster, me: usize) -> BTreeSet<String> {
    (0..c.spec().nodes)
        .filter(|j| *j != me)
        .map(|j| public_key(c, j))
        .collect()
}

/// etcd, IPv4: upstream's device, lease and key file; a full mesh; on the underlay only
/// UDP between the nodes' listen ports, never a pod's packet in clear.
#[test]
fn wireguard_etcd_mesh_is_encrypted_on_the_wire() {
    let mut c = Cluster::start(spec(Datastore::Etcd, false)).expect("cluster");
    for i in 0..3 {
        assert_eq!(c.subnet_env(i).unwrap().mtu, 1420, "1500 - 80");
        let mode = std::fs::metadata(key_file(&c, i))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "key file mode");
    }
    let keys: BTreeSet<String> = (0..3).map(|i| public_key(&c, i)).collect();
    assert_eq!(keys.len(), 3, "one key per node");

    // The device as upstream builds it.
    let link = sh(&c, 0, &["ip", "-d", "link", "show", "flannel-wg"]);
    assert!(link.contains("mtu 1420"), "{link}");
    let sn = c.subnet_env(0).unwrap().subnet.unwrap().trunc();
    let addr = sh(
        &c,
        0,
        &["ip", "-4", "-o", "addr", "show", "dev", "flannel-wg"],
    );
    assert!(
        addr.contains(&format!("inet {}/32", sn.network())),
        "{addr}"
    );
    let routes = sh(&c, 0, &["ip", "route", "show", "10.244.0.0/16"]);
    assert!(
        routes.contains("10.244.0.0/16 dev flannel-wg") && routes.contains("scope link"),
        "{routes}"
    );

    // The lease: upstream's shape with our public key and port.
    let value = c
        .etcd()
        .etcdctl(["get", "--print-value-only", &lease_key(&c, 0)])
        .unwrap();
    assert_eq!(
        value.trim(),
        format!(
            r#"{{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
            public_key(&c, 0)
        )
    );

    // `wg show flannel-wg` on each node shows that node's device and its two peers.
    for i in 0..3 {
        let show = wg(&c, i, &["show", "flannel-wg"]);
        assert!(
            show.contains(&format!("public key: {}", public_key(&c, i))),
            "{show}"
        );
        assert!(show.contains("listening port: 51820"), "{show}");
        wait_peers(&c, i, "flannel-wg", &keys_except(&c, i));
        for (_, endpoint, allowed) in wg_peers(&c, i, "flannel-wg") {
            assert!(
                endpoint.starts_with("198.18.0.") && endpoint.ends_with(":51820"),
                "{endpoint}"
            );
            assert!(
                allowed.starts_with("10.244.") && allowed.ends_with("/24"),
                "{allowed}"
            );
        }
    }

    add_pods(&mut c);
    let frames = capture_frames(&c, "ip or ip6", || full(c.ping_matrix(), "IPv4"));
    let packets = ip_packets(&frames);
    let between_nodes: Vec<_> = packets
        .iter()
        .filter(|p| {
            p.src.to_string().starts_with("198.18.0.") && p.dst.to_string().starts_with("198.18.0.")
        })
        .collect();
    assert!(
        between_nodes.len() >= 12,
        "pod pings crossed the underlay: {}",
        between_nodes.len()
    );
    for p in &between_nodes {
        assert_eq!(p.proto, 17, "only UDP between nodes: {p:?}");
        let (sport, dport) = (
            u16::from_be_bytes([p.l4[0], p.l4[1]]),
            u16::from_be_bytes([p.l4[2], p.l4[3]]),
        );
        assert_eq!((sport, dport), (51820, 51820), "{p:?}");
        // WireGuard message types 1..4, then three reserved zero bytes.
        assert!(
            (1..=4).contains(&p.l4[8]) && p.l4[9..12] == [0, 0, 0],
            "not WireGuard: {p:?}"
        );
    }
    // No pod address anywhere in the clear on the underlay.
    assert!(
        packets
            .iter()
            .all(|p| !p.src.to_string().starts_with("10.244.")
                && !p.dst.to_string().starts_with("10.244.")),
        "a pod packet crossed the underlay unencrypted"
    );
    // /metrics: peers, fresh handshakes, bytes, and the drop counters by reason.
    let text = wait_for(
        "the wireguard metrics after the pings",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (_, body) = c
                .lab()
                .node(0)
                .netns()
                .in_thread(|| {
                    flannel_lab::cluster::http_get(flannel_lab::cluster::HEALTHZ_PORT, "/metrics")
                })
                .unwrap()
                .ok_or("no answer")?;
            if body.contains(
                r#"flannel_wireguard_peers_by_handshake_age{device="flannel-wg",age="fresh"} 2"#,
            ) {
                Ok(Some(body))
            } else {
                Err(body)
            }
        },
    )
    .unwrap();
    for want in [
        r#"flannel_wireguard_peers{device="flannel-wg"} 2"#,
        r#"flannel_wireguard_dropped_packets_total{device="flannel-wg",reason="not_allowed_source"} 0"#,
        "flannel_wireguard_handshakes_total{device=\"flannel-wg\"}",
        "flannel_wireguard_rx_bytes_total{device=\"flannel-wg\"}",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    // Data messages are padded to 16 bytes: UDP payload = 16 header + 16n + 16 tag.
    for p in between_nodes.iter().filter(|p| p.l4[8] == 4) {
        assert_eq!(
            (p.l4.len() - 8) % 16,
            0,
            "data message not padded: {} bytes",
            p.l4.len() - 8
        );
    }
}

/// Kubernetes mode, dual stack, upstream's default separate mode: both devices, both
/// matrices, the v6 annotations.
#[test]
fn wireguard_kube_dual_stack_separate_devices() {
    let mut c = Cluster::start(spec(Datastore::Kube, true)).expect("cluster");
    let link = sh(&c, 0, &["ip", "-d", "link", "show", "flannel-wg-v6"]);
    assert!(link.contains("mtu 1420"), "{link}");
    let routes = sh(&c, 0, &["ip", "-6", "route", "show", NET6]);
    assert!(routes.contains("dev flannel-wg-v6"), "{routes}");
    let show = wg(&c, 1, &["show", "flannel-wg-v6"]);
    assert!(show.contains("listening port: 51821"), "{show}");
    for i in 0..3 {
        wait_peers(&c, i, "flannel-wg-v6", &keys_except(&c, i));
    }
    for (_, endpoint, _) in wg_peers(&c, 0, "flannel-wg-v6") {
        assert!(
            endpoint.starts_with("[fd00:198::") && endpoint.ends_with("]:51821"),
            "{endpoint}"
        );
    }
    let node = c.kube().expect("kube mode").node("n1").unwrap();
    let ann = &node["metadata"]["annotations"];
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-type"], "wireguard",
        "{ann}"
    );
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-v6-data"],
        format!(r#"{{"PublicKey":"{}","Port":51821}}"#, public_key(&c, 0)),
        "{ann}"
    );
    add_pods(&mut c);
    full(c.ping_matrix(), "IPv4");
    full(c.ping_matrix_v6(), "IPv6");
}

/// etcd, dual stack, `Mode: auto`: one device carrying both families over IPv4 (the lab's
/// addresses are private).
#[test]
fn wireguard_auto_mode_one_device_for_both_families() {
    let mut s = spec(Datastore::Etcd, true);
    s.extra_config["Backend"] = json!({"Type": "wireguard", "Mode": "auto"});
    let mut c = Cluster::start(s).expect("cluster");
    assert!(
        run_in(
            c.lab().node(0).netns(),
            ["ip", "link", "show", "flannel-wg-v6"]
        )
        .map(|o| !o.status.success())
        .unwrap()
    );
    for i in 0..3 {
        wait_peers(&c, i, "flannel-wg", &keys_except(&c, i));
    }
    for (_, endpoint, allowed) in wg_peers(&c, 0, "flannel-wg") {
        assert!(
            endpoint.starts_with("198.18.0.") && endpoint.ends_with(":51820"),
            "{endpoint}"
        );
        assert!(
            allowed.contains("10.244.") && allowed.contains("fd00:10:244:"),
            "{allowed}"
        );
    }
    add_pods(&mut c);
    full(c.ping_matrix(), "IPv4");
    full(c.ping_matrix_v6(), "IPv6");
}

fn ifindex(c: &Cluster, i: usize, dev: &str) -> String {
    sh(c, i, &["cat", &format!("/sys/class/net/{dev}/ifindex")])
        .trim()
        .to_string()
}

/// Reconcile, not recreate: a restart adopts the device (same ifindex, same peers, traffic
/// resumes; the gap is measured), a deleted device comes back with every peer, a node's new
/// key replaces its old peer entry everywhere, and a vanished node's peer is removed.
#[test]
fn wireguard_reconciles_instead_of_recreating() {
    let mut c = Cluster::start(spec(Datastore::Etcd, false)).expect("cluster");
    add_pods(&mut c);
    full(c.ping_matrix(), "IPv4");
    let to: IpAddr = c.pod("p1").unwrap().ip;

    // Restart flanneld on n1 while p0 pings p1 every 10 ms.
    let before = ifindex(&c, 0, "flannel-wg");
    let ping = pinger(&c, "p0", to, 10, 600);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    c.stop_flanneld(0).unwrap();
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    let restart = t.elapsed();
    let (sent, got) = ping_summary(&String::from_utf8_lossy(&ping.join().unwrap().stdout));
    let lost = sent - got;
    eprintln!(
        "userspace restart: {lost} of {sent} pings lost at 100 pps (gap ~{} ms); flanneld back in {restart:?}",
        lost * 10
    );
    assert!(
        got > 0 && lost * 10 < 5000,
        "traffic resumed within 5 s of the restart: {lost} lost"
    );
    assert_eq!(
        ifindex(&c, 0, "flannel-wg"),
        before,
        "the device was adopted, not recreated"
    );
    wait_peers(&c, 0, "flannel-wg", &keys_except(&c, 0));

    // An endpoint that roamed to another port (upstream #1770) is set back from the lease.
    let k2 = public_key(&c, 1);
    wg(
        &c,
        0,
        &[
            "set",
            "flannel-wg",
            "peer",
            &k2,
            "endpoint",
            "198.18.0.2:21771",
        ],
    );
    wait_for(
        "n1's endpoint for n2 back on the lease's port",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let ep = wg_peers(&c, 0, "flannel-wg")
                .into_iter()
                .find(|p| p.0 == k2)
                .map(|p| p.1);
            match ep.as_deref() {
                Some("198.18.0.2:51820") => Ok(Some(())),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .unwrap();

    // Delete n2's device: it comes back with both peers and traffic flows again.
    sh(&c, 1, &["ip", "link", "delete", "flannel-wg"]);
    wait_peers(&c, 1, "flannel-wg", &keys_except(&c, 1));
    wait_for(
        "p0 -> p1 after the device came back",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || Ok::<_, String>(c.unreachable().is_empty().then_some(())),
    )
    .unwrap();

    // n3 gets a new key: everyone replaces its old entry (upstream keeps both).
    let old = public_key(&c, 2);
    c.stop_flanneld(2).unwrap();
    std::fs::remove_file(key_file(&c, 2)).unwrap();
    c.start_flanneld(2).unwrap();
    c.wait_ready(2).unwrap();
    let new = public_key(&c, 2);
    assert_ne!(old, new);
    for i in 0..2 {
        wait_peers(&c, i, "flannel-wg", &keys_except(&c, i));
    }
    full(c.ping_matrix(), "IPv4 after the key change");

    // n3 vanishes: its lease is deleted, its peer goes.
    c.stop_flanneld(2).unwrap();
    c.etcd().etcdctl(["del", &lease_key(&c, 2)]).unwrap();
    let want: BTreeSet<String> = [public_key(&c, 1)].into();
    wait_peers(&c, 0, "flannel-wg", &want);
}

/// Removes wireguard-go's control socket if the process left it (the directory is shared by
/// every namespace on the machine).
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Node 3 runs Debian's wireguard-go instead of flanneld, configured only from the other
/// nodes' upstream-format leases; its own lease is rewritten as an old upstream writes it
/// (no `Port`). Pods on flannel-rs nodes and the wireguard-go node reach each other both ways.
#[test]
fn wireguard_interoperates_with_wireguard_go() {
    let mut c = Cluster::start(spec(Datastore::Etcd, false)).expect("cluster");
    let a = c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    c.stop_flanneld(2).unwrap();
    sh(&c, 2, &["ip", "link", "delete", "flannel-wg"]);

    // wireguard-go on n3, with a host-wide unique name.
    let name = format!("flrswgo{}", std::process::id() % 100_000);
    let _sock = SocketGuard(PathBuf::from(format!("/var/run/wireguard/{name}.sock")));
    let mut cmd = Command::new("wireguard-go");
    cmd.args(["-f", &name]);
    let _wgo = c
        .lab()
        .spawn_in(c.lab().node(2).netns(), cmd)
        .expect("wireguard-go");
    wait_for(
        "wireguard-go's device",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let ok = run_in(c.lab().node(2).netns(), ["ip", "link", "show", &name])
                .map(|o| o.status.success())
                .unwrap_or(false);
            Ok::<_, String>(ok.then_some(()))
        },
    )
    .unwrap();
    let keyfile = c.lab().dir().join("wgo.key");
    let genkey = Command::new("wg").arg("genkey").output().unwrap();
    std::fs::write(&keyfile, &genkey.stdout).unwrap();
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pubkey
        .stdin
        .take()
        .unwrap()
        .write_all(&genkey.stdout)
        .unwrap();
    let wgo_pub = String::from_utf8(pubkey.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();

    // Peers from the flannel-rs nodes' leases, read as any upstream node would.
    let mut set = vec![
        "set".to_string(),
        name.clone(),
        "listen-port".into(),
        "51820".into(),
        "private-key".into(),
        keyfile.display().to_string(),
    ];
    for i in 0..2 {
        let v: serde_json::Value = serde_json::from_str(
            &c.etcd()
                .etcdctl(["get", "--print-value-only", &lease_key(&c, i)])
                .unwrap(),
        )
        .unwrap();
        let data = &v["BackendData"];
        let sn = c.subnet_env(i).unwrap().subnet.unwrap().trunc();
        set.extend([
            "peer".into(),
            data["PublicKey"].as_str().unwrap().to_string(),
            "endpoint".into(),
            format!("{}:{}", v["PublicIP"].as_str().unwrap(), data["Port"]),
            "allowed-ips".into(),
            sn.to_string(),
        ]);
    }
    let out = Command::new("wg").args(&set).output().unwrap();
    assert!(
        out.status.success(),
        "wg set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sn3 = c.subnet_env(2).unwrap().subnet.unwrap().trunc();
    let own = sn3.network().to_string();
    for args in [
        vec!["ip", "addr", "add", &format!("{own}/32"), "dev", &name],
        vec!["ip", "link", "set", &name, "up"],
        vec!["ip", "route", "replace", "10.244.0.0/16", "dev", &name],
    ] {
        sh(&c, 2, &args);
    }
    // Its lease as upstream before v0.26.6 writes it: no Port, so peers use their own.
    let key3 = lease_key(&c, 2);
    let lease = format!(
        r#"{{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{wgo_pub}"}}}}"#
    );
    c.etcd().etcdctl(["put", &key3, &lease]).unwrap();
    for i in 0..2 {
        wait_peers(
            &c,
            i,
            "flannel-wg",
            &[public_key(&c, 1 - i), wgo_pub.clone()].into(),
        );
    }
    let endpoint = wg_peers(&c, 0, "flannel-wg")
        .into_iter()
        .find(|p| p.0 == wgo_pub)
        .unwrap()
        .1;
    assert_eq!(endpoint, "198.18.0.3:51820");

    // Both ways, pods on flannel-rs nodes and the wireguard-go node (first handshake can
    // take a few seconds with wireguard-go).
    let reach = |ns: &flannel_lab::Netns, from: Option<&str>, to: &str| {
        let mut args = vec!["ping", "-n", "-c", "1", "-W", "1", "-s", "1300"];
        if let Some(f) = from {
            args.extend(["-I", f]);
        }
        args.push(to);
        wait_for(
            &format!("ping {to}"),
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let ok = run_in(ns, &args)
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                Ok::<_, String>(ok.then_some(()))
            },
        )
    };
    let pod_a = c.lab().pod("a").unwrap().netns();
    reach(pod_a, None, &own).expect("pod on n1 -> wireguard-go node");
    let n3 = c.lab().node(2).netns();
    reach(n3, Some(&own), &a.to_string()).expect("wireguard-go node -> pod on n1");
    reach(n3, Some(&own), &b.to_string()).expect("wireguard-go node -> pod on n2");
    // And flannel-rs to flannel-rs still works next to it.
    assert!(
        c.unreachable().iter().all(|(x, y)| !(x == "a" && y == "b")),
        "a -> b"
    );
    let show = Command::new("wg")
        .args(["show", &name, "latest-handshakes"])
        .output()
        .unwrap();
    let hs = String::from_utf8_lossy(&show.stdout);
    assert!(
        hs.lines().filter(|l| !l.ends_with("\t0")).count() >= 1,
        "wireguard-go handshook: {hs}"
    );
}
