//! The NFLOG reader against the kernel, in a namespace of its own: packets dropped by a
//! `log prefix "x" group G drop` rule arrive with the prefix and their 5-tuple.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

const GROUP: u16 = 100;

/// Collects drop records until `done` holds or 10 s pass.
fn collect(source: &mut NflogSource, done: impl Fn(&[DropEvent]) -> bool) -> Vec<DropEvent> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !done(&events) {
        if let Some(d) = source.recv_datagram().expect("recv") {
            if std::env::var_os("FLOWSRC_DUMP").is_some() {
                eprintln!("datagram {d:02x?}");
            }
            events.extend(decode(d).expect("decode"));
        }
    }
    events
}

#[test]
fn dropped_udp_and_tcp_packets_arrive_with_prefix_and_tuple() {
    flannel_lab::in_fresh_netns("flowsrc-log", || {
        let rules = format!(
            "add table inet flowsrc-log; add chain inet flowsrc-log out {{ type filter hook output priority 0; }}; add rule inet flowsrc-log out udp dport 9 log prefix \"default deny\" group {GROUP} drop; add rule inet flowsrc-log out tcp dport 7 log prefix \"ns-a/deny-all\" group {GROUP} drop"
        );
        let out = Command::new("nft").arg(&rules).output().expect("nft");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut source =
            NflogSource::open(GROUP, 1 << 20, Duration::from_millis(200)).expect("bind");
        // A second listener of the same group is refused.
        assert!(NflogSource::open(GROUP, 1 << 16, Duration::from_millis(200)).is_err());

        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
        let sport = udp.local_addr().expect("addr").port();
        // The drop in OUTPUT fails the send (EPERM): the packet was logged all the same.
        let _ = udp.send_to(b"hello", (Ipv4Addr::LOCALHOST, 9));
        let _ = TcpStream::connect_timeout(
            &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7).into(),
            Duration::from_millis(300),
        );
        let events = collect(&mut source, |e| {
            e.iter().any(|e| e.proto == 17) && e.iter().any(|e| e.proto == 6)
        });
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let u = events.iter().find(|e| e.proto == 17).expect("udp record");
        assert_eq!(u.prefix, "default deny");
        assert_eq!((u.src, u.dst, u.sport, u.dport), (lo, lo, Some(sport), Some(9)));
        assert_eq!(u.len, 20 + 8 + 5);
        assert_eq!(u.tcp_flags, None);
        let t = events.iter().find(|e| e.proto == 6).expect("tcp record");
        assert_eq!(t.prefix, "ns-a/deny-all");
        assert_eq!((t.src, t.dst, t.dport), (lo, lo, Some(7)));
        assert_eq!(t.tcp_flags, Some(0x02), "a SYN");
        assert!(t.outdev.is_some() && t.indev.is_none(), "{t:?}");
        assert_eq!(source.overruns(), 0);
    })
    .expect("namespace");
}
