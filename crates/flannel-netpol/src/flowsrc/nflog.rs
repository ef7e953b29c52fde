//! NFLOG records of dropped packets: the policy drop rules end in `log prefix "<identity>"
//! group G drop`, and the kernel hands a copy of each dropped packet's first bytes, with the
//! prefix, to the listener bound to group G.
//!
//! A dropped first packet never creates a conntrack entry, so denied flows are seen only
//! here. The reader ([`NflogSource`]) binds the group with `NFULNL_MSG_CONFIG` (copy mode
//! packet, [`COPY_RANGE`] bytes: enough for the IP and transport headers) and decodes each
//! `NFULNL_MSG_PACKET` ([`decode`], pure) into a [`DropEvent`]. As for conntrack, a full
//! socket buffer drops records in the kernel (never the packet path's time) and `ENOBUFS`
//! is counted as an overrun.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::SocketAddr;

use super::nfnl::{attrs, be, messages};
use super::{DecodeError, EventSocket, RecvError, SocketError, netfilter_socket, set_recv_timeout};

/// `NFNL_SUBSYS_ULOG`, and its `NFULNL_MSG_PACKET` / `NFULNL_MSG_CONFIG`.
const SUBSYS_ULOG: u8 = 4;
const MSG_PACKET: u8 = 0;
const MSG_CONFIG: u8 = 1;
// enum nfulnl_attr_type
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
// enum nfulnl_attr_config and its values
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
/// `NFULA_CFG_TIMEOUT`: how long the kernel holds logged packets to batch them, in 1/100 s.
const NFULA_CFG_TIMEOUT: u16 = 4;
/// 10 ms instead of the kernel's 1 s: a record's time is when it is read, so a long hold
/// would give the drops of one second one time. Under a flood the kernel still batches (its
/// queue threshold, 100 packets, flushes first).
pub const FLUSH_TIMEOUT_CS: u32 = 1;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

/// Bytes of each packet the kernel copies: an IPv6 header (40) and a TCP header with options
/// (up to 60) fit; the payload is never read.
pub const COPY_RANGE: u32 = 128;

/// A packet a logging drop rule dropped, reduced to what a flow record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// The rule's `log prefix`: the drop's identity (see `compile`).
    pub prefix: String,
    /// IP protocol number of the transport header (IPv6: the first next-header).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (TCP, UDP, SCTP).
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
    /// TCP header flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub tcp_flags: Option<u8>,
    /// The packet's IP length (header included), from its IP header.
    pub len: u32,
    /// Interface index the packet came in on (absent for locally sent packets).
    pub indev: Option<u32>,
    /// Interface index it was to leave by.
    pub outdev: Option<u32>,
}

/// The drop records of one received datagram; other messages (config acks, other
/// subsystems) are skipped, and so is a packet whose copied bytes are no IP header.
pub fn decode(datagram: &[u8]) -> Result<Vec<DropEvent>, DecodeError> {
    let mut out = Vec::new();
    for m in messages(datagram)? {
        if (m.subsys, m.msg) != (SUBSYS_ULOG, MSG_PACKET) {
            continue;
        }
        let (mut prefix, mut payload) = (String::new(), None);
        let (mut indev, mut outdev) = (None, None);
        for (kind, value) in attrs(m.attrs, "NFULNL_MSG_PACKET")? {
            match kind {
                NFULA_PREFIX => {
                    let text = value.split(|b| *b == 0).next().unwrap_or_default();
                    prefix = String::from_utf8_lossy(text).into_owned();
                }
                NFULA_PAYLOAD => payload = Some(value),
                NFULA_IFINDEX_INDEV => {
                    indev = Some(u32::from_be_bytes(be(value, "NFULA_IFINDEX_INDEV")?));
                }
                NFULA_IFINDEX_OUTDEV => {
                    outdev = Some(u32::from_be_bytes(be(value, "NFULA_IFINDEX_OUTDEV")?));
                }
                _ => {}
            }
        }
        if let Some(mut ev) = payload.and_then(ip_packet) {
            ev.prefix = prefix;
            ev.indev = indev;
            ev.outdev = outdev;
            out.push(ev);
        }
    }
    Ok(out)
}

/// Addresses, protocol and transport header of a copied packet (`None` when too short or
/// not IP); the prefix and devices are filled by the caller.
fn ip_packet(p: &[u8]) -> Option<DropEvent> {
    let (proto, src, dst, len, l4): (u8, IpAddr, IpAddr, u32, &[u8]) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            let len = u32::from(u16::from_be_bytes([p[2], p[3]]));
            let l4 = p.get(ihl..).unwrap_or_default();
            (
                p[9],
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                len,
                l4,
            )
        }
        6 if p.len() >= 40 => {
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            let len = 40 + u32::from(u16::from_be_bytes([p[4], p[5]]));
            (
                p[6],
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                len,
                &p[40..],
            )
        }
        _ => return None,
    };
    let port = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (mut sport, mut dport, mut icmp, mut tcp_flags) = (None, None, None, None);
    match proto {
        // TCP, UDP, UDP-Lite, SCTP, DCCP: ports first.
        6 | 17 | 136 | 132 | 33 => {
            sport = port(0);
            dport = port(2);
            if proto == 6 {
                tcp_flags = l4.get(13).copied();
            }
        }
        1 | 58 => icmp = l4.get(..2).map(|b| (b[0], b[1])),
        _ => {}
    }
    Some(DropEvent {
        prefix: String::new(),
        proto,
        src,
        dst,
        sport,
        dport,
        icmp,
        tcp_flags,
        len,
        indev: None,
        outdev: None,
    })
}

/// The `NFULNL_MSG_CONFIG` request binding `group` in copy-packet mode (one message: the
/// kernel applies the command before the mode).
fn bind_request(group: u16) -> Vec<u8> {
    let mut attrs = Vec::new();
    // NFULA_CFG_CMD { u8 command } padded to 4.
    attrs.extend(5u16.to_ne_bytes());
    attrs.extend(NFULA_CFG_CMD.to_ne_bytes());
    attrs.extend([NFULNL_CFG_CMD_BIND, 0, 0, 0]);
    // NFULA_CFG_MODE { __be32 copy_range; u8 copy_mode; u8 pad } padded to 8.
    attrs.extend(10u16.to_ne_bytes());
    attrs.extend(NFULA_CFG_MODE.to_ne_bytes());
    attrs.extend(COPY_RANGE.to_be_bytes());
    attrs.extend([NFULNL_COPY_PACKET, 0, 0, 0]);
    // NFULA_CFG_TIMEOUT { __be32 }.
    attrs.extend(8u16.to_ne_bytes());
    attrs.extend(NFULA_CFG_TIMEOUT.to_ne_bytes());
    attrs.extend(FLUSH_TIMEOUT_CS.to_be_bytes());
    let len = u32::try_from(16 + 4 + attrs.len()).unwrap_or(u32::MAX);
    let mut m = Vec::new();
    m.extend(len.to_ne_bytes());
    m.extend((u16::from(SUBSYS_ULOG) << 8 | u16::from(MSG_CONFIG)).to_ne_bytes());
    // NLM_F_REQUEST | NLM_F_ACK
    m.extend(0x5u16.to_ne_bytes());
    m.extend(1u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id = group (big-endian).
    m.extend([0, 0]);
    m.extend(group.to_be_bytes());
    m.extend(attrs);
    m
}

/// The error code of the first `NLMSG_ERROR` in `datagram` (`Some(0)` for an ack).
fn ack_error(datagram: &[u8]) -> Option<i32> {
    (datagram.len() >= 20 && u16::from_ne_bytes([datagram[4], datagram[5]]) == 2)
        .then(|| i32::from_ne_bytes([datagram[16], datagram[17], datagram[18], datagram[19]]))
}

/// A listener bound to one NFLOG group of the current network namespace.
pub struct NflogSource {
    events: EventSocket,
}

impl NflogSource {
    /// Binds `group` (only one listener per group and namespace: a second gets `EBUSY`).
    /// `recv_buffer` and `timeout` as for `CtSource::open`.
    pub fn open(group: u16, recv_buffer: usize, timeout: Duration) -> Result<Self, SocketError> {
        let err = |what: String| move |source| SocketError { what, source };
        let socket = netfilter_socket("NFLOG")?;
        socket
            .set_rx_buf_sz(recv_buffer)
            .map_err(err("size the NFLOG socket's buffer".into()))?;
        set_recv_timeout(socket.as_raw_fd(), timeout)
            .map_err(err("set the NFLOG socket's receive timeout".into()))?;
        let what = format!("bind NFLOG group {group}");
        socket
            .send_to(&bind_request(group), &SocketAddr::new(0, 0), 0)
            .map_err(err(what.clone()))?;
        // The ack comes before any packet of the group: wait for it (bounded by the timeout).
        let mut buf = [0u8; 1024];
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(err(what.clone()))?;
        match ack_error(&buf[..n]) {
            Some(0) => Ok(NflogSource {
                events: EventSocket::new(socket, "receive NFLOG records"),
            }),
            Some(code) => Err(SocketError {
                what,
                source: std::io::Error::from_raw_os_error(-code),
            }),
            None => Err(SocketError {
                what,
                source: std::io::Error::other("no acknowledgement from the kernel"),
            }),
        }
    }

    /// Appends the drop records of the next datagram to `out`; returns with nothing appended
    /// after the timeout or an overrun (counted).
    pub fn recv(&mut self, out: &mut Vec<DropEvent>) -> Result<(), RecvError> {
        self.receive(out, true).map(|_| ())
    }

    /// [`NflogSource::recv`], waiting or not: whether a datagram (or an overrun) was there.
    pub fn receive(&mut self, out: &mut Vec<DropEvent>, wait: bool) -> Result<bool, RecvError> {
        self.events.receive(out, wait, decode)
    }

    /// The next datagram as received (`None` after a timeout or a counted overrun).
    pub fn recv_datagram(&mut self) -> Result<Option<&[u8]>, SocketError> {
        self.events.recv_datagram(true)
    }

    /// How many times the kernel found the socket's buffer full and dropped records.
    pub fn overruns(&self) -> u64 {
        self.events.overruns
    }
}

#[cfg(test)]
mod kernel_tests;

/// Unit tests on a datagram captured from the kernel (6.18) by the namespace test with
/// `FLOWSRC_DUMP=1`: a UDP packet to port 9 and a TCP SYN to port 7, both dropped by logging
/// rules in OUTPUT, batched in one datagram that ends with `NLMSG_DONE`.
#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: &[&str] = &[
        "7000000000040000000000000000000002000064080001000800030011000a0064656661756c742064656e7900000000",
        "080005000000000108000b000000000008000e00000000002500090045000021ec534000401150767f0000017f000001",
        "97860009000dfe2068656c6c6f0000008800000000040000000000000000000002000064080001000800030012000a00",
        "6e732d612f64656e792d616c6c000000080005000000000108000b000000000008000e0000000000400009004500003c",
        "955440004006a7657f0000017f000001bf780007ecb1553100000000a002ffd7fe3000000204ffd70402080a83403568",
        "000000000103030a1400000003000000000000000000000000000064",
    ];

    fn bytes(hex: &[&str]) -> Vec<u8> {
        let hex = hex.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_captured_udp_and_tcp_drops() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let events = decode(&bytes(CAPTURED)).unwrap();
        assert_eq!(
            events,
            vec![
                DropEvent {
                    prefix: "default deny".into(),
                    proto: 17,
                    src: lo,
                    dst: lo,
                    sport: Some(38790),
                    dport: Some(9),
                    icmp: None,
                    tcp_flags: None,
                    len: 33,
                    indev: None,
                    outdev: Some(1),
                },
                DropEvent {
                    prefix: "ns-a/deny-all".into(),
                    proto: 6,
                    src: lo,
                    dst: lo,
                    sport: Some(49016),
                    dport: Some(7),
                    icmp: None,
                    tcp_flags: Some(0x02),
                    len: 60,
                    indev: None,
                    outdev: Some(1),
                },
            ]
        );
    }

    #[test]
    fn parses_ipv6_and_icmp_headers_and_skips_what_is_not_ip() {
        // ICMPv6 echo request 2001:db8::1 -> 2001:db8::2, payload length 16.
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
        p.extend(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        p.extend(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
        p.extend([128, 0, 0, 0]);
        let e = ip_packet(&p).unwrap();
        assert_eq!(
            (e.proto, e.icmp, e.len, e.sport),
            (58, Some((128, 0)), 56, None)
        );
        assert_eq!(e.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
        // A truncated TCP header: the ports that are there, no flags.
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        v4.extend([0x30, 0x39, 0, 80]);
        let e = ip_packet(&v4).unwrap();
        assert_eq!(
            (e.sport, e.dport, e.tcp_flags),
            (Some(12345), Some(80), None)
        );
        assert_eq!(ip_packet(&[0x45, 0, 0]), None);
        assert_eq!(ip_packet(&[0x20; 40]), None);
    }

    #[test]
    fn the_bind_request_is_what_libnetfilter_log_sends() {
        let m = bind_request(100);
        let parsed = messages(&m).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            (parsed[0].subsys, parsed[0].msg, parsed[0].flags),
            (4, 1, 5)
        );
        assert_eq!(&m[18..20], &100u16.to_be_bytes());
        let a = attrs(parsed[0].attrs, "config").unwrap();
        assert_eq!(a[0], (NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND][..]));
        assert_eq!(a[1].0, NFULA_CFG_MODE);
        assert_eq!(&a[1].1[..5], &[0, 0, 0, 128, NFULNL_COPY_PACKET]);
        assert_eq!(a[2], (NFULA_CFG_TIMEOUT, &1u32.to_be_bytes()[..]));
        assert_eq!(ack_error(&[0; 8]), None);
    }
}
