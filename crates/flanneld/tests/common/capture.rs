//! What crosses the underlay: a tcpdump capture on the lab's bridge, parsed into IP packets
//! and UDP datagrams (IPv4 and IPv6) by code independent of flanneld's.

use std::net::IpAddr;
use std::time::Duration;

use flannel_lab::{Cluster, wait_for};

/// Reads a pcap file (Ethernet link type) into frames.
pub fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "pcap too short");
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        m => panic!("not a pcap file: magic {m:#x}"),
    };
    let u32_at = |b: &[u8], i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32_at(bytes, 20), 1, "link type Ethernet");
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let caplen = u32_at(bytes, off + 8) as usize;
        let start = off + 16;
        if start + caplen > bytes.len() {
            break;
        }
        out.push(bytes[start..start + caplen].to_vec());
        off = start + caplen;
    }
    out
}

/// An IP packet seen on the underlay: addresses, protocol and its transport bytes.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// IP protocol (IPv6: the first next-header).
    pub proto: u8,
    /// Everything after the IP header.
    pub l4: Vec<u8>,
}

/// A UDP datagram seen on the underlay: outer addresses, ports and payload.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The IPv4 and IPv6 packets among Ethernet frames (ARP and the rest left out).
pub fn ip_packets(frames: &[Vec<u8>]) -> Vec<Packet> {
    frames
        .iter()
        .filter_map(|f| {
            if f.len() < 14 + 20 {
                return None;
            }
            let ip = &f[14..];
            match [f[12], f[13]] {
                [0x08, 0x00] => {
                    let ihl = usize::from(ip[0] & 0x0f) * 4;
                    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
                    Some(Packet {
                        src: IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap()),
                        dst: IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap()),
                        proto: ip[9],
                        l4: ip[ihl.min(total)..total].to_vec(),
                    })
                }
                [0x86, 0xdd] if ip.len() >= 40 => Some(Packet {
                    src: IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()),
                    dst: IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()),
                    proto: ip[6],
                    l4: ip[40..].to_vec(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The UDP datagrams among Ethernet frames.
pub fn udp_datagrams(frames: &[Vec<u8>]) -> Vec<Datagram> {
    ip_packets(frames)
        .into_iter()
        .filter(|p| p.proto == 17 && p.l4.len() >= 8)
        .map(|p| {
            let udp = &p.l4;
            let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            Datagram {
                src: p.src,
                dst: p.dst,
                sport: u16::from_be_bytes([udp[0], udp[1]]),
                dport: u16::from_be_bytes([udp[2], udp[3]]),
                payload: udp[8..len.clamp(8, udp.len())].to_vec(),
            }
        })
        .collect()
}

/// Captures the frames matching `filter` on the underlay bridge while `traffic` runs.
pub fn capture_frames(c: &Cluster, filter: &str, traffic: impl FnOnce()) -> Vec<Vec<u8>> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = c
        .lab()
        .dir()
        .join(format!("wire-{}-{n}.pcap", std::process::id()));
    let mut cmd = std::process::Command::new("tcpdump");
    cmd.args([
        "-i",
        c.lab().underlay().bridge(),
        "--immediate-mode",
        "-U",
        "-s",
        "0",
        "-w",
    ])
    .arg(&file)
    .arg(filter);
    let mut tcpdump = c
        .lab()
        .spawn_in(c.lab().underlay().netns(), cmd)
        .expect("tcpdump");
    wait_for(
        "tcpdump to listen",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || Ok::<_, String>(tcpdump.log().contains("listening on").then_some(())),
    )
    .unwrap();
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.stop().expect("tcpdump stops");
    let bytes = std::fs::read(&file).expect("pcap written");
    pcap_frames(&bytes)
}

/// Captures `filter` on the underlay bridge while `traffic` runs; returns the UDP datagrams.
pub fn capture_underlay(c: &Cluster, filter: &str, traffic: impl FnOnce()) -> Vec<Datagram> {
    udp_datagrams(&capture_frames(c, filter, traffic))
}
