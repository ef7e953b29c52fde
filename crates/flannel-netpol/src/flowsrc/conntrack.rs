//! Conntrack NEW and DESTROY events: the kernel's record of every flow it tracks, with
//! packet and byte counters in both directions when `net.netfilter.nf_conntrack_acct` is 1
//! in the namespace (DESTROY then carries the flow's totals).
//!
//! The reader ([`CtSource`]) joins the nfnetlink multicast groups `NFNLGRP_CONNTRACK_NEW`
//! and `NFNLGRP_CONNTRACK_DESTROY` on a `NETLINK_NETFILTER` socket. The kernel never waits
//! for a listener: when the socket's buffer is full it drops the event and the next `recv`
//! fails with `ENOBUFS` (`NETLINK_NO_ENOBUFS` stays off so this is seen); each is counted in
//! [`CtSource::overruns`] and reading goes on. One overrun stands for one or more lost events.
//!
//! [`decode`] is pure: nfnetlink_conntrack attributes (linux/netfilter/nfnetlink_conntrack.h)
//! to [`CtEvent`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

pub use super::RecvError;
use super::nfnl::{attrs, be, messages};
use super::{DecodeError, EventSocket, SocketError, failed, netfilter_socket, set_recv_timeout};

/// `NFNL_SUBSYS_CTNETLINK`.
const SUBSYS_CTNETLINK: u8 = 1;
/// `IPCTNL_MSG_CT_NEW` (NEW and UPDATE events) and `IPCTNL_MSG_CT_DELETE` (DESTROY).
const MSG_CT_NEW: u8 = 0;
const MSG_CT_DELETE: u8 = 2;
/// `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY`.
const GROUP_NEW: u32 = 1;
const GROUP_DESTROY: u32 = 3;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
// enum ctattr_tuple, ctattr_ip, ctattr_l4
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
// enum ctattr_protoinfo, ctattr_protoinfo_tcp, ctattr_counters
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;

/// Which event: a flow the kernel starts tracking, or one it forgets (closed, timed out or
/// deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKind {
    /// `NFNLGRP_CONNTRACK_NEW`: the flow's first packet was accepted; no counters yet.
    New,
    /// `NFNLGRP_CONNTRACK_DESTROY`: the flow is over; counters are its totals.
    Destroy,
}

/// One direction's endpoints of a conntrack tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtTuple {
    /// Source address (unspecified if the kernel sent none).
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Source port (TCP, UDP, SCTP, ...); `None` for ICMP.
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

/// Packets and bytes of one direction (present when accounting is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtCounters {
    /// Packets seen in this direction.
    pub packets: u64,
    /// Bytes (IP length) seen in this direction.
    pub bytes: u64,
}

/// A conntrack event reduced to what a flow record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEvent {
    /// NEW or DESTROY.
    pub kind: CtKind,
    /// The kernel's id of the conntrack entry (`CTA_ID`): pairs a DESTROY with its NEW.
    pub id: Option<u32>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP).
    pub proto: u8,
    /// The tuple of the first packet (the flow's initiator is `orig.src`).
    pub orig: CtTuple,
    /// The tuple replies carry (differs from the swapped `orig` under NAT).
    pub reply: CtTuple,
    /// TCP conntrack state (`enum tcp_conntrack`: 1 SYN_SENT, 3 ESTABLISHED, 7 TIME_WAIT,
    /// 8 CLOSE, ...); [`tcp_state_name`] spells it.
    pub tcp_state: Option<u8>,
    /// `CTA_STATUS` bits (`IPS_SEEN_REPLY` = 2, `IPS_ASSURED` = 4, ...).
    pub status: Option<u32>,
    /// Counters of the original direction (initiator to responder).
    pub orig_counters: Option<CtCounters>,
    /// Counters of the reply direction.
    pub reply_counters: Option<CtCounters>,
}

/// The name `conntrack -L` prints for a TCP conntrack state.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "UNKNOWN",
    }
}

/// The conntrack events of one received datagram; messages of other subsystems and
/// conntrack message types other than NEW/DELETE are skipped.
pub fn decode(datagram: &[u8]) -> Result<Vec<CtEvent>, DecodeError> {
    let mut out = Vec::new();
    for m in messages(datagram)? {
        let kind = match (m.subsys, m.msg) {
            (SUBSYS_CTNETLINK, MSG_CT_NEW) => CtKind::New,
            (SUBSYS_CTNETLINK, MSG_CT_DELETE) => CtKind::Destroy,
            _ => continue,
        };
        let mut ev = CtEvent {
            kind,
            id: None,
            proto: 0,
            orig: CtTuple::default(),
            reply: CtTuple::default(),
            tcp_state: None,
            status: None,
            orig_counters: None,
            reply_counters: None,
        };
        for (kind, value) in attrs(m.attrs, "conntrack event")? {
            match kind {
                CTA_TUPLE_ORIG => ev.orig = tuple(value, &mut ev.proto, "CTA_TUPLE_ORIG")?,
                CTA_TUPLE_REPLY => ev.reply = tuple(value, &mut ev.proto, "CTA_TUPLE_REPLY")?,
                CTA_STATUS => ev.status = Some(u32::from_be_bytes(be(value, "CTA_STATUS")?)),
                CTA_ID => ev.id = Some(u32::from_be_bytes(be(value, "CTA_ID")?)),
                CTA_PROTOINFO => ev.tcp_state = tcp_state(value)?,
                CTA_COUNTERS_ORIG => ev.orig_counters = Some(counters(value, "CTA_COUNTERS_ORIG")?),
                CTA_COUNTERS_REPLY => {
                    ev.reply_counters = Some(counters(value, "CTA_COUNTERS_REPLY")?);
                }
                _ => {}
            }
        }
        out.push(ev);
    }
    Ok(out)
}

/// A `CTA_TUPLE_*`; sets `proto` from its `CTA_PROTO_NUM`.
fn tuple(buf: &[u8], proto: &mut u8, what: &str) -> Result<CtTuple, DecodeError> {
    let mut t = CtTuple::default();
    let mut icmp_type = None;
    let mut icmp_code = 0;
    for (kind, value) in attrs(buf, what)? {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(value, "CTA_TUPLE_IP")? {
                    match k {
                        CTA_IP_V4_SRC => {
                            t.src = Some(Ipv4Addr::from(be::<4>(v, "CTA_IP_V4_SRC")?).into())
                        }
                        CTA_IP_V4_DST => {
                            t.dst = Some(Ipv4Addr::from(be::<4>(v, "CTA_IP_V4_DST")?).into())
                        }
                        CTA_IP_V6_SRC => {
                            t.src = Some(Ipv6Addr::from(be::<16>(v, "CTA_IP_V6_SRC")?).into())
                        }
                        CTA_IP_V6_DST => {
                            t.dst = Some(Ipv6Addr::from(be::<16>(v, "CTA_IP_V6_DST")?).into())
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(value, "CTA_TUPLE_PROTO")? {
                    match k {
                        CTA_PROTO_NUM => *proto = be::<1>(v, "CTA_PROTO_NUM")?[0],
                        CTA_PROTO_SRC_PORT => {
                            t.sport = Some(u16::from_be_bytes(be(v, "CTA_PROTO_SRC_PORT")?))
                        }
                        CTA_PROTO_DST_PORT => {
                            t.dport = Some(u16::from_be_bytes(be(v, "CTA_PROTO_DST_PORT")?))
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            icmp_type = Some(be::<1>(v, "CTA_PROTO_ICMP_TYPE")?[0])
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            icmp_code = be::<1>(v, "CTA_PROTO_ICMP_CODE")?[0]
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t.icmp = icmp_type.map(|ty| (ty, icmp_code));
    Ok(t)
}

/// The TCP state of a `CTA_PROTOINFO` (`None` for other protocols).
fn tcp_state(buf: &[u8]) -> Result<Option<u8>, DecodeError> {
    for (kind, value) in attrs(buf, "CTA_PROTOINFO")? {
        if kind == CTA_PROTOINFO_TCP {
            for (k, v) in attrs(value, "CTA_PROTOINFO_TCP")? {
                if k == CTA_PROTOINFO_TCP_STATE {
                    return Ok(Some(be::<1>(v, "CTA_PROTOINFO_TCP_STATE")?[0]));
                }
            }
        }
    }
    Ok(None)
}

/// A `CTA_COUNTERS_*` (64-bit counters, as every kernel since 2.6.27 sends them).
fn counters(buf: &[u8], what: &str) -> Result<CtCounters, DecodeError> {
    let mut c = CtCounters::default();
    for (kind, value) in attrs(buf, what)? {
        match kind {
            CTA_COUNTERS_PACKETS => {
                c.packets = u64::from_be_bytes(be(value, "CTA_COUNTERS_PACKETS")?)
            }
            CTA_COUNTERS_BYTES => c.bytes = u64::from_be_bytes(be(value, "CTA_COUNTERS_BYTES")?),
            _ => {}
        }
    }
    Ok(c)
}

/// A subscription to conntrack NEW and DESTROY events of the current network namespace.
pub struct CtSource {
    events: EventSocket,
}

impl CtSource {
    /// Subscribes; `recv_buffer` is the socket receive buffer asked for (the kernel caps it
    /// at `net.core.rmem_max`): the burst of events that can wait for the reader.
    /// `timeout` bounds each [`CtSource::recv`], so a reader thread can check whether to stop.
    pub fn open(recv_buffer: usize, timeout: Duration) -> Result<Self, SocketError> {
        let err = failed;
        let socket = netfilter_socket("conntrack event")?;
        socket
            .set_rx_buf_sz(recv_buffer)
            .map_err(err("size the conntrack event socket's buffer"))?;
        socket
            .set_no_enobufs(false)
            .map_err(err("keep ENOBUFS on the conntrack event socket"))?;
        set_recv_timeout(socket.as_raw_fd(), timeout)
            .map_err(err("set the conntrack event socket's receive timeout"))?;
        socket
            .add_membership(GROUP_NEW)
            .map_err(err("subscribe to conntrack NEW events"))?;
        socket
            .add_membership(GROUP_DESTROY)
            .map_err(err("subscribe to conntrack DESTROY events"))?;
        Ok(CtSource {
            events: EventSocket::new(socket, "receive conntrack events"),
        })
    }

    /// Appends the events of the next datagram to `out`. Returns after at most the timeout
    /// given to [`CtSource::open`] with nothing appended if no event came; an overrun
    /// (`ENOBUFS`) is counted and returns with nothing appended. A datagram that does not
    /// decode is an error the caller counts and goes on from.
    pub fn recv(&mut self, out: &mut Vec<CtEvent>) -> Result<(), RecvError> {
        self.receive(out, true).map(|_| ())
    }

    /// [`CtSource::recv`], waiting or not: whether a datagram was there (events appended,
    /// or an overrun counted). A reader drains without waiting after a receive woke it.
    pub fn receive(&mut self, out: &mut Vec<CtEvent>, wait: bool) -> Result<bool, RecvError> {
        self.events.receive(out, wait, decode)
    }

    /// The next datagram as received (`None` after a timeout or an overrun, which is
    /// counted): [`CtSource::recv`] without the decoding, for captures.
    pub fn recv_datagram(&mut self) -> Result<Option<&[u8]>, SocketError> {
        self.events.recv_datagram(true)
    }

    /// How many times the kernel found the socket's buffer full and dropped events
    /// (each time one or more).
    pub fn overruns(&self) -> u64 {
        self.events.overruns
    }
}

#[cfg(test)]
mod kernel_tests;

/// Unit tests on datagrams captured from the kernel (6.18) by the namespace test with
/// `FLOWSRC_DUMP=1`: 127.0.0.1:60630 -> 127.0.0.1:44213, 3000 bytes out and 700 back.
#[cfg(test)]
mod tests {
    use super::*;

    /// The NEW event of the exchange (flags `NLM_F_CREATE | NLM_F_EXCL`, SYN_SENT).
    const NEW: &[&str] = &[
        "c4000000000100060000000000000000020000003400018014000180080001007f000001080002007f0000011c000280",
        "050001000600000006000200ecd6000006000300acb500003400028014000180080001007f000001080002007f000001",
        "1c000280050001000600000006000200acb5000006000300ecd6000008000c0053056b9a080003000000000808000700",
        "00000078300004802c0001800500010001000000050002000a0000000500030000000000060004000300000006000500",
        "00000000",
    ];

    /// Its DESTROY event (TIME_WAIT, deleted), with both directions' counters.
    const DESTROY: &[&str] = &[
        "dc0000000201000000000000882d85d6020000003400018014000180080001007f000001080002007f0000011c000280",
        "050001000600000006000200ecd6000006000300acb500003400028014000180080001007f000001080002007f000001",
        "1c000280050001000600000006000200acb5000006000300ecd6000008000c0053056b9a080003000000020e08000700",
        "000000771c0009800c00010000000000000000050c0002000000000000000cc41c000a800c0001000000000000000005",
        "0c00020000000000000003c8100004800c0001800500010007000000",
    ];

    fn bytes(hex: &[&str]) -> Vec<u8> {
        let hex = hex.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn tuple(src: u16, dst: u16) -> CtTuple {
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        CtTuple {
            src: lo,
            dst: lo,
            sport: Some(src),
            dport: Some(dst),
            icmp: None,
        }
    }

    #[test]
    fn decodes_a_captured_new_event() {
        let events = decode(&bytes(NEW)).unwrap();
        assert_eq!(
            events,
            vec![CtEvent {
                kind: CtKind::New,
                id: Some(0x5305_6b9a),
                proto: 6,
                orig: tuple(60630, 44213),
                reply: tuple(44213, 60630),
                tcp_state: Some(1),
                status: Some(8),
                orig_counters: None,
                reply_counters: None,
            }]
        );
        assert_eq!(tcp_state_name(1), "SYN_SENT");
    }

    #[test]
    fn decodes_a_captured_destroy_event_with_counters() {
        let events = decode(&bytes(DESTROY)).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, CtKind::Destroy);
        assert_eq!(e.id, Some(0x5305_6b9a));
        assert_eq!(
            (e.orig, e.reply),
            (tuple(60630, 44213), tuple(44213, 60630))
        );
        assert_eq!(e.tcp_state, Some(7));
        assert_eq!(e.status, Some(0x20e));
        assert_eq!(
            e.orig_counters,
            Some(CtCounters {
                packets: 5,
                bytes: 3268
            })
        );
        assert_eq!(
            e.reply_counters,
            Some(CtCounters {
                packets: 5,
                bytes: 968
            })
        );
    }

    #[test]
    fn two_events_in_one_datagram_and_foreign_messages() {
        let mut buf = bytes(NEW);
        buf.extend(bytes(DESTROY));
        let kinds: Vec<CtKind> = decode(&buf).unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [CtKind::New, CtKind::Destroy]);
        // The same body as an NFLOG (subsystem 4) message is not a conntrack event.
        let mut foreign = bytes(NEW);
        foreign[5] = 4;
        assert!(decode(&foreign).unwrap().is_empty());
    }

    #[test]
    fn a_short_attribute_is_an_error_naming_it() {
        let mut d = bytes(DESTROY);
        // CTA_ID declared with 2 value bytes (the padding keeps the next attribute in place).
        let at = d
            .windows(4)
            .position(|w| w == [0x08, 0x00, 0x0c, 0x00])
            .unwrap();
        d[at] = 6;
        let err = decode(&d).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Length { what, expected: 4, got: 2 } if what == "CTA_ID"),
            "{err:?}"
        );
        // A nested attribute running past its container.
        let mut d = bytes(DESTROY);
        let at = d
            .windows(4)
            .position(|w| w == [0x1c, 0x00, 0x09, 0x80])
            .unwrap();
        d[at + 4] = 0xf0;
        assert!(matches!(
            decode(&d),
            Err(DecodeError::Attribute { what, .. }) if what == "CTA_COUNTERS_ORIG"
        ));
    }
}
