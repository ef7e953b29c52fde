//! The userspace data path end to end: two devices in two fresh network namespaces joined by
//! a veth pair (and one device against Debian's `wireguard-go`), with real pings, TCP and `wg`.
//!
//! Each test makes its own namespaces and uniquely named devices (the control socket directory
//! `/var/run/wireguard` is shared by every namespace); the namespaces' drop guards remove the
//! devices with them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flannel_lab::Netns;
use flannel_wireguard::userspace::{Config, DropReason, Userspace};
use flannel_wireguard::{DeviceUpdate, Key, PeerConfig, PeerUpdate, Secret, WgDevice};
use ipnet::IpNet;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A host-wide unique interface name (at most 15 bytes).
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One side: its namespace, underlay addresses, device and keys.
struct Node {
    ns: Netns,
    name: String,
    key: Secret,
    under4: IpAddr,
    under6: IpAddr,
    pod4: IpAddr,
    pod6: IpAddr,
    dev: Option<Userspace>,
}

impl Node {
    fn public(&self) -> Key {
        self.key.public_key()
    }

    fn dev(&self) -> &Userspace {
        self.dev.as_ref().expect("device running")
    }

    fn allowed(&self) -> Vec<IpNet> {
        vec![
            IpNet::new(self.pod4, 24).unwrap().trunc(),
            IpNet::new(self.pod6, 64).unwrap().trunc(),
        ]
    }

    /// Upserts `other` as our peer at `other`'s IPv4 (or IPv6) underlay address.
    fn add_peer(&self, other: &Node, port: u16, v6: bool) {
        let ip = if v6 { other.under6 } else { other.under4 };
        self.dev()
            .set(&DeviceUpdate {
                peers: vec![PeerUpdate::Upsert {
                    config: PeerConfig {
                        public_key: other.public(),
                        preshared_key: None,
                        endpoint: Some(SocketAddr::new(ip, port)),
                        persistent_keepalive: 0,
                        allowed_ips: other.allowed(),
                    },
                    replace_allowed_ips: true,
                }],
                ..Default::default()
            })
            .unwrap();
    }
}

fn uapi_dir() -> PathBuf {
    PathBuf::from("/var/run/wireguard")
}

/// Starts our device `name` inside `ns` and gives it the pod addresses and routes, as the
/// backend does over netlink.
fn start(ns: &Netns, name: &str, offload: bool, pod4: IpAddr, pod6: IpAddr) -> Userspace {
    let cfg = Config {
        name: name.to_string(),
        mtu: 1420,
        queues: 2,
        offload,
        uapi_dir: uapi_dir(),
    };
    let dev = ns
        .in_thread(move || Userspace::start(cfg))
        .unwrap()
        .unwrap();
    configure_link(ns, name, pod4, pod6);
    dev
}

fn configure_link(ns: &Netns, name: &str, pod4: IpAddr, pod6: IpAddr) {
    ns.ip_batch(&format!(
        "link set {name} mtu 1420 up\naddr add {pod4}/32 dev {name}\naddr add {pod6}/128 dev {name} nodad\nroute add 10.244.0.0/16 dev {name}\nroute add fd10:244::/32 dev {name}\n"
    ))
    .unwrap();
}

/// Two namespaces joined by a veth pair with IPv4 and IPv6 underlay addresses.
fn underlay() -> (Netns, Netns) {
    flannel_lab::veth_underlay("wgu-a", "wgu-b").unwrap()
}

fn node(ns: Netns, n: u8, offload: bool) -> Node {
    let name = unique("wgu");
    let pod4: IpAddr = format!("10.244.{n}.0").parse().unwrap();
    let pod6: IpAddr = format!("fd10:244:{n}::").parse().unwrap();
    let dev = start(&ns, &name, offload, pod4, pod6);
    let key = Secret::generate();
    dev.set(&DeviceUpdate {
        private_key: Some(key.clone()),
        listen_port: Some(51820),
        ..Default::default()
    })
    .unwrap();
    Node {
        ns,
        name,
        key,
        under4: format!("192.0.2.{n}").parse().unwrap(),
        under6: format!("fd00:1::{n}").parse().unwrap(),
        pod4,
        pod6,
        dev: Some(dev),
    }
}

/// Two of our devices, peers of each other over IPv4 (or IPv6) endpoints.
fn pair(offload: bool, v6_endpoints: bool) -> (Node, Node) {
    let (a, b) = underlay();
    let a = node(a, 1, offload);
    let b = node(b, 2, offload);
    a.add_peer(&b, 51820, v6_endpoints);
    b.add_peer(&a, 51820, v6_endpoints);
    (a, b)
}

fn ping(from: &Node, to: IpAddr) -> bool {
    // The first ping starts the handshake: allow for it.
    let ok = flannel_lab::ping(&from.ns, to, 3, Duration::from_secs(6)).unwrap();
    if !ok && let Some(dev) = &from.dev {
        let m = dev.metrics();
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .map(|r| format!("{r}={}", m.drops(*r)))
            .collect();
        eprintln!(
            "ping {to} from {} failed; its counters: handshakes {}/{}, rx {} B, tx {} B, drops {}",
            from.name,
            m.handshakes_completed.load(Ordering::Relaxed),
            m.handshakes_total.load(Ordering::Relaxed),
            m.rx_bytes.load(Ordering::Relaxed),
            m.tx_bytes.load(Ordering::Relaxed),
            drops.join(" ")
        );
    }
    ok
}

#[test]
fn two_devices_ping_both_ways_ipv4_and_ipv6_inner() {
    for v6_endpoints in [false, true] {
        let (a, b) = pair(true, v6_endpoints);
        if !ping(&a, b.pod4) {
            ping(&b, a.pod4);
            panic!("a -> b IPv4 (v6 underlay {v6_endpoints})");
        }
        assert!(ping(&b, a.pod4), "b -> a IPv4");
        if !ping(&a, b.pod6) {
            let o =
                a.ns.run(["ping", "-6", "-c", "2", "-W", "2", &b.pod6.to_string()])
                    .unwrap();
            eprintln!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            eprintln!("{}", a.ns.ip(["-6", "addr"]).unwrap());
            eprintln!("{}", a.ns.ip(["-6", "route"]).unwrap());
            panic!("a -> b IPv6");
        }
        assert!(ping(&b, a.pod6), "b -> a IPv6");
        let st = a.dev().get().unwrap();
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.peers.len(), 1);
        assert!(st.peers[0].last_handshake.is_some());
        assert!(st.peers[0].rx_bytes > 0 && st.peers[0].tx_bytes > 0);
        let m = a.dev().metrics();
        assert!(m.handshakes_completed.load(Ordering::Relaxed) >= 1);
        assert_eq!(m.drops(DropReason::Decrypt), 0);
    }
}

#[test]
fn tcp_transfer_with_offloads() {
    let (a, b) = pair(true, false);
    assert!(ping(&a, b.pod4));
    let log = std::env::temp_dir().join(format!("{}-iperf3.log", a.name));
    let t = flannel_lab::throughput::iperf3(&a.ns, &b.ns, b.pod4, Duration::from_secs(3), &log)
        .unwrap();
    let _ = std::fs::remove_file(&log);
    eprintln!("tcp over userspace WireGuard: {:.2} Gbit/s", t.gbits());
    assert!(t.gbits() > 0.05, "got {:.3} Gbit/s", t.gbits());
    let t6 = flannel_lab::throughput::iperf3(&b.ns, &a.ns, a.pod6, Duration::from_secs(2), &log)
        .unwrap();
    let _ = std::fs::remove_file(&log);
    eprintln!("tcp over IPv6 inner: {:.2} Gbit/s", t6.gbits());
    assert!(t6.gbits() > 0.05);
    assert_eq!(a.dev().metrics().drops(DropReason::Decrypt), 0);
}

/// A reproducible byte stream without short periods: misplaced or altered bytes show.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes over TCP from `from` to `to` (inner addresses) and returns what arrived.
fn tcp_bytes(from: &Node, to: &Node, dst: IpAddr, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let listener = to
        .ns
        .in_thread(|| std::net::TcpListener::bind(SocketAddr::new(dst, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = from
        .ns
        .in_thread(|| {
            std::net::TcpStream::connect_timeout(
                &SocketAddr::new(dst, port),
                Duration::from_secs(10),
            )
        })
        .unwrap()
        .unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(data).unwrap();
    drop(c);
    reader.join().unwrap()
}

#[test]
fn tcp_bytes_arrive_intact_through_segmentation_and_coalescing() {
    // TSO super-packets are cut into segments in place (each segment's header over the tail
    // of the one before, padding over the head of the one after) and received segments are
    // merged without re-verifying their TCP checksums: every byte must still arrive as sent,
    // in both inner families.
    let (a, b) = pair(true, false);
    assert!(ping(&a, b.pod4));
    assert!(ping(&b, a.pod6));
    let data = pattern(24 << 20);
    for (from, to, dst) in [(&a, &b, b.pod4), (&b, &a, a.pod6)] {
        let got = tcp_bytes(from, to, dst, &data);
        assert_eq!(got.len(), data.len(), "to {dst}");
        let first_bad = got.iter().zip(&data).position(|(x, y)| x != y);
        assert_eq!(first_bad, None, "to {dst}: bytes differ");
    }
    assert_eq!(a.dev().metrics().drops(DropReason::Decrypt), 0);
    assert_eq!(b.dev().metrics().drops(DropReason::Decrypt), 0);
}

#[test]
fn handshake_after_a_peer_key_change() {
    let (a, mut b) = pair(false, false);
    assert!(ping(&a, b.pod4));
    let old = b.public();
    b.key = Secret::generate();
    b.dev()
        .set(&DeviceUpdate {
            private_key: Some(b.key.clone()),
            ..Default::default()
        })
        .unwrap();
    a.dev()
        .set(&DeviceUpdate {
            peers: vec![PeerUpdate::Remove(old)],
            ..Default::default()
        })
        .unwrap();
    a.add_peer(&b, 51820, false);
    assert!(ping(&a, b.pod4), "a reaches b under its new key");
    assert!(ping(&b, a.pod4));
    let st = a.dev().get().unwrap();
    assert_eq!(st.peers.len(), 1);
    assert_eq!(st.peers[0].config.public_key, b.public());
}

#[test]
fn a_spoofed_inner_source_is_dropped_and_counted() {
    let (a, b) = pair(false, false);
    assert!(ping(&b, a.pod4));
    // b sends from an address outside its allowed IPs (10.244.2.0/24).
    b.ns.ip(["addr", "add", "10.244.9.9/32", "dev", &b.name])
        .unwrap();
    let out =
        b.ns.run([
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.244.9.9",
            &a.pod4.to_string(),
        ])
        .unwrap();
    assert!(!out.status.success(), "spoofed pings must not be answered");
    assert!(a.dev().metrics().drops(DropReason::NotAllowedSource) >= 3);
}

#[test]
fn roaming_peer_keeps_talking() {
    let (a, b) = pair(false, false);
    assert!(ping(&a, b.pod4));
    // b moves: new underlay address and a new port.
    let vb =
        b.ns.ip(["-o", "link", "show", "type", "veth"])
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string();
    b.ns.ip_batch(&format!(
        "addr del 192.0.2.2/24 dev {vb}\naddr add 192.0.2.22/24 dev {vb}\n"
    ))
    .unwrap();
    b.dev()
        .set(&DeviceUpdate {
            listen_port: Some(51999),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(b.dev().get().unwrap().listen_port, 51999);
    // b talks first; a follows b's new address and answers there.
    assert!(ping(&b, a.pod4), "b -> a after the move");
    assert!(ping(&a, b.pod4), "a -> b at b's new address");
    let ep = a.dev().get().unwrap().peers[0].config.endpoint;
    assert_eq!(ep, Some("192.0.2.22:51999".parse().unwrap()));
}

/// `wg show <name> dump` through our control socket.
#[test]
fn wg_show_reads_our_control_socket() {
    let (a, b) = pair(false, false);
    assert!(ping(&a, b.pod4));
    let out = Command::new("wg")
        .args(["show", &a.name, "dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0][1], a.public().to_base64());
    assert_eq!(lines[0][2], "51820");
    let peer = &lines[1];
    assert_eq!(peer[0], b.public().to_base64());
    assert_eq!(peer[2], "192.0.2.2:51820");
    assert_eq!(peer[3], "10.244.2.0/24,fd10:244:2::/64");
    assert!(peer[4].parse::<u64>().unwrap() > 0, "latest handshake");
    assert!(peer[5].parse::<u64>().unwrap() > 0, "rx bytes");
    assert!(peer[6].parse::<u64>().unwrap() > 0, "tx bytes");
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Interop with Debian's wireguard-go, configured with `wg set`, in both directions.
#[test]
fn interop_with_wireguard_go() {
    flannel_lab::require_binary("wireguard-go").unwrap();
    let (na, nb) = underlay();
    let a = node(na, 1, true);
    let go_name = unique("wgo");
    let log = std::env::temp_dir().join(format!("{go_name}.log"));
    let mut cmd = nb.command("wireguard-go").unwrap();
    cmd.args(["-f", &go_name]);
    let sock = uapi_dir().join(format!("{go_name}.sock"));
    // Declared before the process guard, so dropped after it: a killed wireguard-go leaves
    // its socket behind.
    let _sock_guard = RemoveOnDrop(sock.clone());
    let _go = flannel_lab::spawn_in(&nb, cmd, &log).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "wireguard-go made no control socket");
    let go_key = Secret::generate();
    let keyfile = std::env::temp_dir().join(format!("{go_name}.key"));
    std::fs::write(&keyfile, go_key.to_base64()).unwrap();
    let status = Command::new("wg")
        .args(["set", &go_name, "listen-port", "51820", "private-key"])
        .arg(&keyfile)
        .args([
            "peer",
            &a.public().to_base64(),
            "endpoint",
            "192.0.2.1:51820",
            "allowed-ips",
            "10.244.1.0/24,fd10:244:1::/64",
        ])
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&keyfile);
    assert!(status.success());
    let pod4: IpAddr = "10.244.2.0".parse().unwrap();
    let pod6: IpAddr = "fd10:244:2::".parse().unwrap();
    configure_link(&nb, &go_name, pod4, pod6);
    let go = Node {
        ns: nb,
        name: go_name,
        key: go_key,
        under4: "192.0.2.2".parse().unwrap(),
        under6: "fd00:1::2".parse().unwrap(),
        pod4,
        pod6,
        dev: None,
    };
    a.add_peer(&go, 51820, false);
    assert!(ping(&a, go.pod4), "ours -> wireguard-go");
    assert!(ping(&go, a.pod4), "wireguard-go -> ours");
    assert!(ping(&go, a.pod6), "wireguard-go -> ours, IPv6 inner");
    let t = flannel_lab::throughput::iperf3(&go.ns, &a.ns, a.pod4, Duration::from_secs(2), &log)
        .unwrap();
    eprintln!("wireguard-go -> ours: {:.2} Gbit/s", t.gbits());
    assert!(t.gbits() > 0.01);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_device_persists_and_is_adopted_by_the_next_start() {
    let (a, b) = pair(true, false);
    assert!(ping(&a, b.pod4));
    let Node { ns, name, dev, .. } = a;
    drop(dev);
    // Device, address and route are still there.
    let link = ns.ip(["-o", "addr", "show", "dev", &name]).unwrap();
    assert!(link.contains("10.244.1.0/32"), "{link}");
    let cfg = Config {
        name: name.clone(),
        mtu: 1420,
        queues: 2,
        offload: true,
        uapi_dir: uapi_dir(),
    };
    let dev = ns
        .in_thread(move || Userspace::start(cfg))
        .unwrap()
        .unwrap();
    let a = Node {
        ns,
        name,
        key: Secret::generate(),
        under4: "192.0.2.1".parse().unwrap(),
        under6: "fd00:1::1".parse().unwrap(),
        pod4: "10.244.1.0".parse().unwrap(),
        pod6: "fd10:244:1::".parse().unwrap(),
        dev: Some(dev),
    };
    a.dev()
        .set(&DeviceUpdate {
            private_key: Some(a.key.clone()),
            listen_port: Some(51820),
            ..Default::default()
        })
        .unwrap();
    a.add_peer(&b, 51820, false);
    b.dev()
        .set(&DeviceUpdate {
            peers: vec![PeerUpdate::Remove(
                b.dev().get().unwrap().peers[0].config.public_key,
            )],
            ..Default::default()
        })
        .unwrap();
    b.add_peer(&a, 51820, false);
    assert!(ping(&a, b.pod4), "the adopted device carries traffic");
    let name = a.name.clone();
    let ns_dev = a.dev;
    let ns = a.ns;
    ns.in_thread(move || ns_dev.unwrap().delete())
        .unwrap()
        .unwrap();
    assert!(ns.ip(["link", "show", "dev", &name]).is_err(), "deleted");
}
