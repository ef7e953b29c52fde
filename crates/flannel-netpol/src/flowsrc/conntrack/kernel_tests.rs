//! The reader against the kernel, in a namespace of its own: a TCP exchange of known size
//! over the namespace's loopback yields a NEW event and, once the entry is deleted, a
//! DESTROY event with both directions' counters.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// Bytes the client sends and the server answers.
const REQUEST: usize = 3000;
const RESPONSE: usize = 700;

/// Runs `cmd` and panics with its stderr if it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Conntrack on in this namespace only: a `ct state` rule registers its hooks, and
/// accounting makes DESTROY carry counters.
fn enable_conntrack() {
    run(Command::new("nft").args([
        "add table inet flowsrc-ct; add chain inet flowsrc-ct out { type filter hook output priority 0; }; add rule inet flowsrc-ct out ct state new counter",
    ]));
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1\n").expect("nf_conntrack_acct");
}

/// One TCP exchange over loopback; returns the server's port.
fn exchange() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = vec![0; REQUEST];
        s.read_exact(&mut got).expect("read request");
        s.write_all(&[b'r'; RESPONSE]).expect("write response");
    });
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(&[b'q'; REQUEST]).expect("write request");
    let mut got = vec![0; RESPONSE];
    c.read_exact(&mut got).expect("read response");
    drop(c);
    server.join().expect("server");
    port
}

#[test]
fn a_tcp_exchange_yields_new_then_destroy_with_counters() {
    flannel_lab::in_fresh_netns("flowsrc-ct", || {
        enable_conntrack();
        let mut source = CtSource::open(1 << 20, Duration::from_millis(200)).expect("open");
        let port = exchange();
        // The entry would live 120 s in TIME_WAIT: delete it, as the kernel's expiry would.
        run(Command::new("conntrack").args(["-D", "-p", "tcp", "--dport", &port.to_string()]));
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = |e: &CtEvent| e.orig.dport == Some(port);
        while Instant::now() < deadline
            && !events
                .iter()
                .any(|e: &CtEvent| ours(e) && e.kind == CtKind::Destroy)
        {
            if let Some(d) = source.recv_datagram().expect("recv") {
                if std::env::var_os("FLOWSRC_DUMP").is_some() {
                    eprintln!("datagram {d:02x?}");
                }
                events.extend(decode(d).expect("decode"));
            }
        }
        let ours: Vec<&CtEvent> = events.iter().filter(|e| ours(e)).collect();
        assert_eq!(ours.len(), 2, "{events:#?}");
        let (new, destroy) = (ours[0], ours[1]);
        assert_eq!(new.kind, CtKind::New);
        assert_eq!(destroy.kind, CtKind::Destroy);
        assert_eq!(new.id, destroy.id);
        assert!(new.id.is_some());
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for e in [new, destroy] {
            assert_eq!(e.proto, 6);
            assert_eq!((e.orig.src, e.orig.dst), (lo, lo));
            assert_eq!(e.reply.sport, Some(port));
            assert_eq!(e.reply.dport, e.orig.sport);
        }
        assert_eq!(
            new.tcp_state,
            Some(1),
            "SYN_SENT when the first packet passes"
        );
        let orig = destroy.orig_counters.expect("orig counters");
        let reply = destroy.reply_counters.expect("reply counters");
        // Payload plus at least 40 (and under 100) bytes of IP and TCP header per packet.
        assert!(
            orig.packets >= 3 && reply.packets >= 2,
            "{orig:?} {reply:?}"
        );
        for (c, payload) in [(orig, REQUEST), (reply, RESPONSE)] {
            let payload = payload as u64;
            assert!(c.bytes >= payload + 40 * c.packets, "{c:?}");
            assert!(c.bytes < payload + 100 * c.packets, "{c:?}");
        }
        assert_eq!(source.overruns(), 0);
    })
    .expect("namespace");
}

#[test]
fn a_reader_that_falls_behind_counts_overruns_and_reads_on() {
    flannel_lab::in_fresh_netns("flowsrc-ct-lost", || {
        enable_conntrack();
        // The smallest buffer the kernel grants holds a handful of events.
        let mut source = CtSource::open(1, Duration::from_millis(200)).expect("open");
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
        // 500 flows (one datagram to each of 500 ports) while nobody reads.
        for port in 20000..20500u16 {
            udp.send_to(b"x", (Ipv4Addr::LOCALHOST, port))
                .expect("send");
        }
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let before = (events.len(), source.overruns());
            source.recv(&mut events).expect("recv");
            if (events.len(), source.overruns()) == before {
                break;
            }
        }
        assert!(source.overruns() >= 1, "{} events", events.len());
        assert!(events.len() < 500, "some events were lost");
        // Reading goes on after the overrun: a new flow is seen.
        udp.send_to(b"x", (Ipv4Addr::LOCALHOST, 21000))
            .expect("send");
        let mut after = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && !after.iter().any(|e: &CtEvent| e.orig.dport == Some(21000))
        {
            source.recv(&mut after).expect("recv");
        }
        assert!(
            after
                .iter()
                .any(|e| e.orig.dport == Some(21000) && e.kind == CtKind::New)
        );
    })
    .expect("namespace");
}

#[test]
fn a_table_dump_gives_the_counters_of_open_flows() {
    flannel_lab::in_fresh_netns("flowsrc-dump", || {
        enable_conntrack();
        let port = exchange();
        // The flow is in TIME_WAIT now, still in the table with its totals.
        let table = crate::flowsrc::ctdump::dump(Duration::from_secs(5)).expect("dump");
        let e = table
            .iter()
            .find(|e| e.orig.dport == Some(port))
            .unwrap_or_else(|| panic!("port {port} in {table:#?}"));
        assert_eq!(e.kind, CtKind::New, "dump entries decode as NEW");
        assert!(e.id.is_some());
        assert_eq!(e.tcp_state, Some(7), "TIME_WAIT");
        let orig = e.orig_counters.expect("orig counters");
        let reply = e.reply_counters.expect("reply counters");
        assert!(orig.bytes >= REQUEST as u64 && reply.bytes >= RESPONSE as u64);
        // An empty namespace: a complete, empty dump of no error.
        run(Command::new("conntrack").arg("-F"));
        let table = crate::flowsrc::ctdump::dump(Duration::from_secs(5)).expect("dump");
        assert!(table.is_empty(), "{table:#?}");
    })
    .expect("namespace");
}
