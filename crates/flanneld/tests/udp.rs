//! The udp backend end to end in the lab: real etcd, real kernel, several nodes.
//!
//! Checks what upstream's udp backend promises on the wire and in the kernel: the TUN device
//! and its route, pod traffic across nodes, ICMP net unreachable for subnets nobody holds, TTL
//! handling, the raw-inner-packet wire format (captured on the underlay bridge), interop with
//! an independent upstream-style proxy, and the device's life cycle.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

mod common;

use common::capture::{Datagram, capture_underlay};
use common::{assert_full_mesh, lease_key, ping_summary, sh};
use flannel_lab::{Cluster, ClusterSpec, PodCni, run_in, run_ok, wait_for};

fn spec() -> ClusterSpec {
    ClusterSpec {
        nodes: 3,
        backend: "udp".into(),
        pod_cni: PodCni::Bridge,
        ..Default::default()
    }
}

/// Runs a command in a pod's namespace and returns (exit code, stdout + stderr).
/// One ping with a one-second wait from `pod`; what ping printed.
fn ping_once(c: &Cluster, pod: &str, ip: &str) -> String {
    pod_run(c, pod, &["ping", "-n", "-c", "1", "-W", "1", ip]).1
}

fn pod_run(c: &Cluster, pod: &str, args: &[&str]) -> (Option<i32>, String) {
    let ns = c.lab().pod(pod).expect("pod").netns();
    let out = run_in(ns, args).expect("command in pod");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Our node's subnet network address: the TUN address and ICMP source.
fn tun_ip(c: &Cluster, node: usize) -> Ipv4Addr {
    match c
        .subnet_env(node)
        .unwrap()
        .subnet
        .unwrap()
        .trunc()
        .network()
    {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("IPv4 cluster"),
    }
}

#[test]
fn udp_pods_reach_each_other_across_nodes() {
    let mut c = Cluster::start(spec()).expect("cluster");
    let subnets: BTreeSet<String> = (0..3)
        .map(|i| c.subnet_env(i).unwrap().subnet.unwrap().to_string())
        .collect();
    assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
    for i in 0..3 {
        assert_eq!(c.subnet_env(i).unwrap().mtu, 1472, "underlay 1500 - 28");
    }
    assert_full_mesh(&mut c);

    // The device as upstream builds it.
    let link = sh(&c, 0, &["ip", "-d", "link", "show", "flannel0"]);
    assert!(link.contains("mtu 1472"), "{link}");
    assert!(link.contains("tun type tun"), "{link}");
    assert!(
        link.contains("<POINTOPOINT") || link.contains(",UP"),
        "{link}"
    );
    let addr = sh(
        &c,
        0,
        &["ip", "-4", "-o", "addr", "show", "dev", "flannel0"],
    );
    assert!(
        addr.contains(&format!("inet {}/32", tun_ip(&c, 0))),
        "{addr}"
    );
    let routes = sh(&c, 0, &["ip", "route", "show", "10.244.0.0/16"]);
    assert!(routes.contains("10.244.0.0/16 dev flannel0"), "{routes}");
    assert!(
        !routes.contains("scope link"),
        "global scope as upstream: {routes}"
    );
    // No per-peer routes: the proxy picks the peer.
    let all = sh(&c, 0, &["ip", "route"]);
    assert_eq!(
        all.lines().filter(|l| l.contains("flannel0")).count(),
        1,
        "{all}"
    );
    // The UDP socket on IfaceAddr:8285.
    let sockets = sh(&c, 0, &["ss", "-uln"]);
    assert!(sockets.contains("198.18.0.1:8285"), "{sockets}");
    // The lease is upstream's udp shape: public IP only, no BackendType.
    let value = c
        .etcd()
        .etcdctl(["get", "--print-value-only", &lease_key(&c, 0)])
        .unwrap();
    assert_eq!(
        value.trim(),
        r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#
    );
}

/// Starts a background ping from `pod` every 10 ms, `count` probes.
fn background_ping(
    c: &Cluster,
    pod: &str,
    to: IpAddr,
    count: u32,
) -> std::thread::JoinHandle<String> {
    let ns = c.lab().pod(pod).unwrap().netns_name().to_string();
    let count = count.to_string();
    std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-n", "-q", "-i", "0.01", "-c", &count, "-W", "1",
            ])
            .arg(to.to_string())
            .output()
            .expect("ping runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// A destination inside the network that no node holds gets an ICMP net unreachable from the
/// proxy (source: the TUN address). A lease appearing for it switches the destination to that
/// peer and its removal brings the error back, while traffic between live pods goes on
/// without a single loss: the peer table is swapped under the running data path.
#[test]
fn udp_unknown_subnet_gets_net_unreachable_and_table_updates_are_hitless() {
    let mut c = Cluster::start(spec()).expect("cluster");
    c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    let from = tun_ip(&c, 0);

    let (code, out) = pod_run(
        &c,
        "a",
        &["ping", "-n", "-c", "1", "-W", "2", "10.244.250.1"],
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "From {from} icmp_seq=1 Destination Net Unreachable"
        )),
        "{out}"
    );

    let pinger = background_ping(&c, "a", b, 300);
    std::thread::sleep(Duration::from_millis(300));
    let key = "/coreos.com/network/subnets/10.244.250.0-24";
    c.etcd()
        .etcdctl([
            "put",
            key,
            r#"{"PublicIP":"198.18.0.250","PublicIPv6":null}"#,
        ])
        .unwrap();
    wait_for(
        "10.244.250.0/24 to reach the peer table",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let out = ping_once(&c, "a", "10.244.250.1");
            // Sent to 198.18.0.250, which does not exist: no reply, and no error either.
            let routed = out.contains("1 packets transmitted") && !out.contains("Unreachable");
            Ok::<_, String>(routed.then_some(()))
        },
    )
    .unwrap();
    c.etcd().etcdctl(["del", key]).unwrap();
    wait_for(
        "10.244.250.0/24 to leave the peer table",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let out = ping_once(&c, "a", "10.244.250.1");
            Ok::<_, String>(out.contains("Destination Net Unreachable").then_some(()))
        },
    )
    .unwrap();
    let out = pinger.join().unwrap();
    let (sent, received) = ping_summary(&out);
    assert_eq!(sent, 300, "{out}");
    assert_eq!(sent, received, "losses while the peer table changed: {out}");
}

/// Upstream's TTL semantics: the node's kernel forwards (-1), the sending proxy decrements
/// (-1), the receiving proxy decrements (-1), the peer's kernel forwards (-1). A proxy drops a
/// packet whose TTL reaches 0 silently; the kernels answer with Time Exceeded.
#[test]
fn udp_ttl_is_decremented_by_both_proxies() {
    let mut c = Cluster::start(spec()).expect("cluster");
    c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap().to_string();
    let ping = |ttl: &str| {
        pod_run(
            &c,
            "a",
            &["ping", "-n", "-c", "1", "-W", "2", "-t", ttl, b.as_str()],
        )
    };
    // Four hops consume four: TTL 5 arrives with 1.
    let (code, out) = ping("5");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ttl="), "{out}");
    // TTL 4 reaches node 2's kernel with 1: it answers Time Exceeded from its flannel0
    // address, and that error comes back through both proxies.
    let (_, out) = ping("4");
    assert!(
        out.contains(&format!(
            "From {} icmp_seq=1 Time to live exceeded",
            tun_ip(&c, 1)
        )),
        "{out}"
    );
    // TTL 3 dies in the receiving proxy and TTL 2 in the sending one: silently, as upstream.
    for ttl in ["3", "2"] {
        let (code, out) = ping(ttl);
        assert_ne!(code, Some(0), "ttl {ttl}: {out}");
        assert_eq!(ping_summary(&out), (1, 0), "ttl {ttl}: {out}");
        assert!(!out.contains("From "), "no ICMP error for ttl {ttl}: {out}");
    }
    // TTL 1 never leaves node 1: its kernel answers from the pod's gateway.
    let (_, out) = ping("1");
    assert!(out.contains("Time to live exceeded"), "{out}");
    // The replies' TTL shows the same four decrements: 64 - 4.
    let (_, out) = ping("64");
    assert!(out.contains("ttl=60"), "{out}");
}

/// One's-complement checksum over `data` plus an initial sum (test-side, independent of the
/// backend's codec).
fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for pair in data.chunks(2) {
        let w = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            u16::from_be_bytes([pair[0], 0])
        };
        acc += u32::from(w);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether an IPv4 packet's header checksum and (for TCP, UDP and ICMP) transport checksum
/// verify.
fn checksums_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ones_sum(&p[..ihl], 0) != 0xffff {
        return false;
    }
    let l4 = &p[ihl..];
    match p[9] {
        1 => ones_sum(l4, 0) == 0xffff,
        6 | 17 => {
            if p[9] == 17 && l4.len() >= 8 && l4[6..8] == [0, 0] {
                return true;
            }
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&p[12..20]);
            pseudo.extend_from_slice(&[0, p[9]]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            let acc = u32::from(ones_sum(&pseudo, 0));
            ones_sum(l4, acc) == 0xffff
        }
        _ => true,
    }
}

/// On the underlay, each UDP 8285 datagram between the nodes' addresses carries one raw inner
/// IPv4 packet and nothing else: upstream's wire format.
#[test]
fn udp_wire_format_is_the_raw_inner_packet() {
    let mut c = Cluster::start(spec()).expect("cluster");
    let a = c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    let (IpAddr::V4(a4), IpAddr::V4(b4)) = (a, b) else {
        unreachable!()
    };
    let bs = b.to_string();
    let dgrams = capture_underlay(&c, "udp port 8285", || {
        let (code, out) = pod_run(
            &c,
            "a",
            &[
                "ping", "-n", "-c", "3", "-i", "0.2", "-s", "100", "-p", "deadbeef", &bs,
            ],
        );
        assert_eq!(code, Some(0), "{out}");
    });
    let pings: Vec<&Datagram> = dgrams.iter().filter(|d| d.payload.len() == 128).collect();
    assert_eq!(
        pings.len(),
        6,
        "3 requests + 3 replies of 20+8+100 bytes; captured sizes {:?}",
        dgrams.iter().map(|d| d.payload.len()).collect::<Vec<_>>()
    );
    for d in &pings {
        let p = &d.payload;
        assert_eq!(p[0], 0x45, "payload starts with an IPv4 header");
        assert_eq!(
            usize::from(u16::from_be_bytes([p[2], p[3]])),
            p.len(),
            "exactly one inner packet per datagram"
        );
        assert_eq!((d.sport, d.dport), (8285, 8285));
        assert_eq!(p[9], 1, "inner ICMP");
        assert!(checksums_ok(p));
        let inner = (
            Ipv4Addr::new(p[12], p[13], p[14], p[15]),
            Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        );
        let outer = (d.src, d.dst);
        let n1 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        let n2 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        assert!(
            (inner == (a4, b4) && outer == (n1, n2)) || (inner == (b4, a4) && outer == (n2, n1)),
            "inner {inner:?} outer {outer:?}"
        );
        assert!(
            p.windows(4).any(|w| w == [0xde, 0xad, 0xbe, 0xef]),
            "the ping pattern is in the clear"
        );
    }
}

/// With segmentation offload off on node 1's underlay interface the kernel cuts UDP GSO
/// batches in software before they reach the bridge, as a NIC would on a real wire: every
/// datagram of a bulk TCP transfer is then one whole inner packet with valid checksums, no
/// larger than the underlay MTU allows.
#[test]
fn udp_bulk_tcp_is_one_inner_packet_per_datagram_on_the_wire() {
    let mut c = Cluster::start(spec()).expect("cluster");
    c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap().to_string();
    run_ok(
        c.lab().node(0).netns(),
        ["ethtool", "-K", "eth0", "tx-udp-segmentation", "off"],
    )
    .unwrap();
    let mut server = std::process::Command::new("iperf3");
    server.args(["-s", "-1"]);
    let _server = c
        .lab()
        .spawn_in(c.lab().pod("b").unwrap().netns(), server)
        .unwrap();
    wait_for(
        "iperf3 to listen",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let out = pod_run(&c, "b", &["ss", "-tln"]).1;
            Ok::<_, String>(out.contains(":5201").then_some(()))
        },
    )
    .unwrap();
    let dgrams = capture_underlay(&c, "udp port 8285 and src host 198.18.0.1", || {
        let (code, out) = pod_run(&c, "a", &["iperf3", "-c", &b, "-n", "4M"]);
        assert_eq!(code, Some(0), "{out}");
    });
    let full: Vec<&Datagram> = dgrams.iter().filter(|d| d.payload.len() > 1000).collect();
    assert!(full.len() > 1000, "only {} full-size datagrams", full.len());
    let mut bad = Vec::new();
    for d in &dgrams {
        let p = &d.payload;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if p[0] != 0x45 || total != p.len() || p.len() > 1472 || !checksums_ok(p) {
            bad.push((p.len(), total, p[0]));
        }
    }
    assert!(
        bad.is_empty(),
        "{} bad datagrams: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

/// An independent stand-in for upstream's C proxy (`proxy_amd64.c`), written from its
/// behaviour: plain TUN (`IFF_TUN|IFF_NO_PI`, no offloads, one queue), one packet per system
/// call, a linear route table, TTL decrement with the header checksum recomputed in full. It
/// also checks every datagram it receives: at most the TUN MTU (upstream's read buffer),
/// exactly one IPv4 packet, valid checksums.
struct RefProxy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: std::sync::Arc<RefStats>,
}

#[derive(Default)]
struct RefStats {
    received: std::sync::atomic::AtomicU64,
    sent: std::sync::atomic::AtomicU64,
    tcp_received: std::sync::atomic::AtomicU64,
    bad: std::sync::Mutex<Vec<String>>,
}

/// Decrements the TTL, recomputing the header checksum from scratch; false when it hits 0.
fn ref_decrement_ttl(p: &mut [u8]) -> bool {
    if p[8] <= 1 {
        return false;
    }
    p[8] -= 1;
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[10] = 0;
    p[11] = 0;
    let c = !ones_sum(&p[..ihl], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    true
}

impl RefProxy {
    fn start(
        c: &Cluster,
        node: usize,
        peers: Vec<(ipnet::Ipv4Net, Ipv4Addr)>,
        mtu: usize,
    ) -> RefProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let ns = c.lab().node(node).netns();
        let bind = std::net::SocketAddrV4::new(c.lab().node(node).ip(), 8285);
        let (dev, sock) = ns
            .in_thread(move || {
                let dev = tun_rs::DeviceBuilder::new()
                    .name("flannel0")
                    .build_sync()
                    .expect("plain TUN");
                let sock = std::net::UdpSocket::bind(bind).expect("bind 8285");
                (dev, sock)
            })
            .unwrap();
        let tun_ip = tun_ip(c, node);
        let batch = format!(
            "addr add {tun_ip}/32 dev flannel0\nlink set flannel0 mtu {mtu} up\nroute replace 10.244.0.0/16 dev flannel0\n"
        );
        ns.ip_batch(&batch).unwrap();
        dev.set_nonblocking(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let dev = Arc::new(dev);
        let sock = Arc::new(sock);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RefStats::default());
        let mut threads = Vec::new();
        {
            let (dev, sock, stop, stats) = (dev.clone(), sock.clone(), stop.clone(), stats.clone());
            threads.push(std::thread::spawn(move || {
                use std::os::fd::AsFd;
                let mut buf = vec![0u8; mtu];
                while !stop.load(Ordering::Relaxed) {
                    let n = match dev.recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let mut fds = [nix::poll::PollFd::new(
                                dev.as_fd(),
                                nix::poll::PollFlags::POLLIN,
                            )];
                            let _ = nix::poll::poll(&mut fds, 100u16);
                            continue;
                        }
                        Err(_) => return,
                    };
                    if n < 20 || buf[0] >> 4 != 4 {
                        continue;
                    }
                    let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
                    let Some((_, peer)) = peers.iter().find(|(net, _)| net.contains(&dst)) else {
                        continue;
                    };
                    if !ref_decrement_ttl(&mut buf[..n]) {
                        continue;
                    }
                    if sock.send_to(&buf[..n], (*peer, 8285)).is_ok() {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        {
            let (dev, sock, stop, stats) = (dev.clone(), sock.clone(), stop.clone(), stats.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let n = match sock.recv_from(&mut buf) {
                        Ok((n, _)) => n,
                        Err(_) => continue,
                    };
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let p = &mut buf[..n];
                    let total = if n >= 20 {
                        usize::from(u16::from_be_bytes([p[2], p[3]]))
                    } else {
                        0
                    };
                    let problem = if n > mtu {
                        Some(format!("{n}-byte datagram exceeds the TUN MTU {mtu}"))
                    } else if n < 20 || p[0] != 0x45 {
                        Some(format!("not an IPv4 packet: {:02x?}", &p[..n.min(20)]))
                    } else if total != n {
                        Some(format!("datagram {n} bytes, inner packet {total}"))
                    } else if !checksums_ok(p) {
                        Some(format!("bad checksum (proto {})", p[9]))
                    } else {
                        None
                    };
                    if let Some(why) = problem {
                        let mut bad = stats.bad.lock().unwrap();
                        if bad.len() < 20 {
                            bad.push(why);
                        }
                        continue;
                    }
                    if p[9] == 6 {
                        stats.tcp_received.fetch_add(1, Ordering::Relaxed);
                    }
                    if ref_decrement_ttl(p) {
                        let _ = dev.send(p);
                    }
                }
            }));
        }
        RefProxy {
            stop,
            threads,
            stats,
        }
    }

    fn stop(mut self) -> std::sync::Arc<RefStats> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("reference proxy thread");
        }
        self.stats.clone()
    }
}

fn link_exists(c: &Cluster, node: usize, name: &str) -> bool {
    run_in(c.lab().node(node).netns(), ["ip", "link", "show", name])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn wait_link(c: &Cluster, node: usize, present: bool, timeout: Duration) {
    wait_for(
        &format!(
            "flannel0 on node {node} to be {}",
            if present { "present" } else { "gone" }
        ),
        timeout,
        Duration::from_millis(50),
        || Ok::<_, String>((link_exists(c, node, "flannel0") == present).then_some(())),
    )
    .unwrap();
}

fn start_iperf_server(c: &Cluster, pod: &str) -> flannel_lab::Child {
    let mut server = std::process::Command::new("iperf3");
    server.args(["-s"]);
    let child = c
        .lab()
        .spawn_in(c.lab().pod(pod).unwrap().netns(), server)
        .unwrap();
    wait_for(
        "iperf3 to listen",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let out = pod_run(c, pod, &["ss", "-tln"]).1;
            Ok::<_, String>(out.contains(":5201").then_some(()))
        },
    )
    .unwrap();
    child
}

/// Node 3 runs an upstream-style proxy instead of flanneld (its lease stays in etcd): pings
/// and bulk TCP in both directions work, and every datagram our nodes sent it was one whole
/// inner packet within the TUN MTU, with valid checksums, although ours sent them with UDP
/// GSO and received theirs with GRO.
#[test]
fn udp_interoperates_with_an_upstream_style_proxy() {
    let mut c = Cluster::start(spec()).expect("cluster");
    let a = c.add_pod(0, "a").unwrap().to_string();
    let z = c.add_pod(2, "z").unwrap().to_string();
    let peers: Vec<(ipnet::Ipv4Net, Ipv4Addr)> = (0..2)
        .map(|i| {
            let ipnet::IpNet::V4(sn) = c.subnet_env(i).unwrap().subnet.unwrap().trunc() else {
                unreachable!()
            };
            (sn, c.lab().node(i).ip())
        })
        .collect();
    assert!(c.stop_flanneld(2).unwrap().success());
    wait_link(&c, 2, false, Duration::from_secs(3));
    let proxy = RefProxy::start(&c, 2, peers, 1472);

    for (from, to) in [("a", &z), ("z", &a)] {
        let (code, out) = pod_run(
            &c,
            from,
            &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", to],
        );
        assert_eq!(code, Some(0), "{from} -> {to}: {out}");
    }
    let _server = start_iperf_server(&c, "z");
    // Ours sends (TSO cut, UDP GSO), theirs receives; then the reverse direction.
    for extra in [None, Some("-R")] {
        let mut args = vec!["iperf3", "-c", z.as_str(), "-n", "8M"];
        args.extend(extra);
        let (code, out) = pod_run(&c, "a", &args);
        assert_eq!(code, Some(0), "iperf3 {extra:?}: {out}");
    }
    let stats = proxy.stop();
    let bad = stats.bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "datagrams the upstream-style proxy rejects: {bad:?}"
    );
    let received = stats.received.load(std::sync::atomic::Ordering::Relaxed);
    let tcp = stats
        .tcp_received
        .load(std::sync::atomic::Ordering::Relaxed);
    let sent = stats.sent.load(std::sync::atomic::Ordering::Relaxed);
    // 8 MiB in 1420-byte segments is ~5900 datagrams one way.
    assert!(tcp > 5000, "received {received} datagrams, {tcp} TCP");
    assert!(sent > 5000, "sent {sent}");
}

/// The TUN device is not persistent: it goes away when flanneld stops (SIGTERM or SIGKILL)
/// and comes back with address and route when it starts; deleted by hand, it is rebuilt.
#[test]
fn udp_device_lives_and_dies_with_flanneld() {
    let mut c = Cluster::start(spec()).expect("cluster");
    c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    let reach = |c: &Cluster| {
        wait_for(
            "a to reach b",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                let ns = c.lab().pod("a").unwrap().netns();
                let ok = flannel_lab::ping(ns, b, 1, Duration::from_secs(1)).unwrap_or(false);
                Ok::<_, String>(ok.then_some(()))
            },
        )
        .unwrap()
    };
    let intact = |c: &Cluster| {
        let addr = sh(c, 0, &["ip", "-4", "-o", "addr", "show", "dev", "flannel0"]);
        assert!(
            addr.contains(&format!("inet {}/32", tun_ip(c, 0))),
            "{addr}"
        );
        let routes = sh(c, 0, &["ip", "route", "show", "10.244.0.0/16"]);
        assert!(routes.contains("dev flannel0"), "{routes}");
    };
    reach(&c);

    let status = c.stop_flanneld(0).unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    wait_link(&c, 0, false, Duration::from_secs(2));
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    wait_link(&c, 0, true, Duration::from_secs(2));
    intact(&c);
    reach(&c);

    c.kill_flanneld(0).unwrap();
    wait_link(&c, 0, false, Duration::from_secs(2));
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    reach(&c);

    let start = Instant::now();
    run_ok(c.lab().node(0).netns(), ["ip", "link", "del", "flannel0"]).unwrap();
    wait_for(
        "flannel0 rebuilt",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let addr = run_in(
                c.lab().node(0).netns(),
                ["ip", "-4", "-o", "addr", "show", "dev", "flannel0"],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
            Ok::<_, String>(
                addr.contains(&format!("{}/32", tun_ip(&c, 0)))
                    .then_some(()),
            )
        },
    )
    .unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    intact(&c);
    reach(&c);
}
