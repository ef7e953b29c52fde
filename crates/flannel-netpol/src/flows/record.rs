//! One flow record: what `GET /flows` returns, one JSON object per line.
//!
//! A record is built from plain kernel facts ([`KernelFacts`]: protocol number, addresses,
//! ports, TCP flags, counters per direction, the NFLOG prefix) so the kernel sources need not
//! know this model and the model needs no socket to be tested; [`crate::flows::enrich`] then adds
//! namespace, pod and node names and the direction. Field names are camelCase; fields that
//! are unknown are left out rather than written as `null`, so a line stays short and `jq`
//! filters can test for presence.

use std::fmt;
use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What happened to the flow: conntrack saw it pass, or a NetworkPolicy drop rule logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Accepted: a conntrack entry was created (NEW) or ended (DESTROY).
    Forwarded,
    /// Dropped by a NetworkPolicy drop rule (NFLOG).
    Dropped,
}

impl Verdict {
    /// The text of the JSON field, the table and the `verdict=` filter.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "FORWARDED",
            Verdict::Dropped => "DROPPED",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Direction relative to the local pod the record is about: policies are written per pod and
/// per direction, so this is the question an operator asks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards a pod of this node.
    Ingress,
    /// From a pod of this node.
    Egress,
}

impl Direction {
    /// The text of the JSON field and the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The L4 protocol, reduced to the ones NetworkPolicy and operators name; the rest is `other`
/// (the bounded label set of the flow metrics relies on this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// IP protocol 6.
    #[serde(rename = "TCP")]
    Tcp,
    /// IP protocol 17.
    #[serde(rename = "UDP")]
    Udp,
    /// IP protocol 1.
    #[serde(rename = "ICMP")]
    Icmp,
    /// IP protocol 58.
    #[serde(rename = "ICMPv6")]
    Icmpv6,
    /// IP protocol 132.
    #[serde(rename = "SCTP")]
    Sctp,
    /// Anything else.
    #[serde(rename = "other")]
    Other,
}

impl Protocol {
    /// From the IP protocol number the kernel reports.
    pub fn from_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            132 => Protocol::Sctp,
            _ => Protocol::Other,
        }
    }

    /// The text of the JSON field, the table and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
            Protocol::Sctp => "SCTP",
            Protocol::Other => "other",
        }
    }

    /// Parses the text of [`Protocol::as_str`], ignoring case (what a user types in `--protocol`).
    pub fn parse(s: &str) -> Option<Protocol> {
        [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Sctp,
            Protocol::Other,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the protocol has ports (a `port=` filter never matches the others).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }
}

/// Packets and bytes of one direction of a flow, as conntrack accounting counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes (IP headers included, as the kernel counts).
    pub bytes: u64,
}

/// The plain facts a kernel source knows of one event, before any naming: the lead maps the
/// conntrack and NFLOG decoders' own event types to this, so both sides can change without
/// each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFacts {
    /// When the event was seen.
    pub time: Timestamp,
    /// FORWARDED (conntrack) or DROPPED (NFLOG).
    pub verdict: Verdict,
    /// IP protocol number.
    pub protocol: u8,
    /// Source address (the original direction's, for conntrack).
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Source port (TCP, UDP, SCTP).
    pub src_port: Option<u16>,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: Option<u16>,
    /// TCP flags byte of the logged packet (NFLOG), when it was TCP.
    pub tcp_flags: Option<u8>,
    /// Counters of the original direction (conntrack DESTROY with accounting on).
    pub forward: Option<Counters>,
    /// Counters of the reply direction (conntrack DESTROY with accounting on).
    pub reply: Option<Counters>,
    /// Whether the flow ended (conntrack DESTROY) rather than started (NEW).
    pub ended: bool,
    /// The NFLOG prefix of a drop: the policy identity the drop rule carries.
    pub policy: Option<String>,
    /// The direction when the source knows it (the drop rule's chain); else enrichment
    /// derives it from which side is a local pod.
    pub direction: Option<Direction>,
    /// Conntrack's id of the flow (`CTA_ID`): pairs a flow's start and end records and finds
    /// an open flow in the table for its counters so far.
    pub conntrack_id: Option<u32>,
}

/// One flow record. See the module doc for the JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// When the kernel reported it (RFC 3339, nanoseconds, UTC).
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub time: Timestamp,
    /// The node whose enforcer saw it (set when the record is stored).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// FORWARDED or DROPPED.
    pub verdict: Verdict,
    /// Relative to the local pod, when one side is a local pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// TCP, UDP, ICMP, ICMPv6, SCTP or other.
    pub protocol: Protocol,
    /// Source address.
    pub src_ip: IpAddr,
    /// Source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// Source pod's namespace, when the source is a known pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_namespace: Option<String>,
    /// Source pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    /// Source pod's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_node: Option<String>,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Destination pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_namespace: Option<String>,
    /// Destination pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    /// Destination pod's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_node: Option<String>,
    /// TCP flags of the logged packet, e.g. `SYN` or `SYN,ACK` (drops only: conntrack events
    /// carry no packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// Whether the flow has ended (conntrack DESTROY); false for a flow just started, whose
    /// counters are not known yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// Source → destination counters: an ended flow's totals; in a query's answer, an open
    /// flow's counts so far (see `crate::flows::live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Counters>,
    /// Destination → source counters (as `forward`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Counters>,
    /// For drops: the policy (`namespace/name`, a short list) or `default deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Conntrack's id of a forwarded flow: the same in its start and end records (per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_id: Option<u32>,
}

fn ser_time<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// RFC 3339 in UTC with nine fractional digits: fixed width, so lines sort as text too.
pub fn format_time(t: Timestamp) -> String {
    format!("{t:.9}")
}

/// The names of the TCP flag bits, lowest first (FIN = 0x01 .. CWR = 0x80).
const TCP_FLAG_NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

/// `SYN,ACK` for 0x12: the flag names in the order tcpdump prints them is not a standard;
/// this uses bit order, which is stable and short.
pub fn tcp_flags_text(flags: u8) -> String {
    TCP_FLAG_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

impl FlowRecord {
    /// A record from kernel facts, with no names yet (see [`crate::flows::enrich`]).
    pub fn from_facts(facts: KernelFacts) -> FlowRecord {
        let protocol = Protocol::from_number(facts.protocol);
        let ports = protocol.has_ports();
        FlowRecord {
            time: facts.time,
            node: String::new(),
            verdict: facts.verdict,
            direction: facts.direction,
            protocol,
            src_ip: facts.src_ip,
            src_port: facts.src_port.filter(|_| ports),
            src_namespace: None,
            src_pod: None,
            src_node: None,
            dst_ip: facts.dst_ip,
            dst_port: facts.dst_port.filter(|_| ports),
            dst_namespace: None,
            dst_pod: None,
            dst_node: None,
            tcp_flags: facts
                .tcp_flags
                .filter(|_| protocol == Protocol::Tcp)
                .map(tcp_flags_text),
            ended: facts.ended,
            forward: facts.forward,
            reply: facts.reply,
            policy: facts
                .policy
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty()),
            conntrack_id: facts.conntrack_id,
        }
    }

    /// The record as one line of JSON, newline included.
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of strings, numbers and addresses cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one line of [`FlowRecord::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<FlowRecord, serde_json::Error> {
        serde_json::from_str(line.trim_end())
    }

    /// `namespace/pod` of the source, when known.
    pub fn src_pod_ref(&self) -> Option<(&str, &str)> {
        Some((self.src_namespace.as_deref()?, self.src_pod.as_deref()?))
    }

    /// `namespace/pod` of the destination, when known.
    pub fn dst_pod_ref(&self) -> Option<(&str, &str)> {
        Some((self.dst_namespace.as_deref()?, self.dst_pod.as_deref()?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Facts of a TCP flow from `src` to `dst`:80 at `secs` after the epoch.
    pub(crate) fn tcp_facts(src: &str, dst: &str, secs: i64) -> KernelFacts {
        KernelFacts {
            time: Timestamp::from_second(secs).unwrap(),
            verdict: Verdict::Forwarded,
            protocol: 6,
            src_ip: src.parse().unwrap(),
            dst_ip: dst.parse().unwrap(),
            src_port: Some(40000),
            dst_port: Some(80),
            tcp_flags: None,
            forward: None,
            reply: None,
            ended: false,
            policy: None,
            direction: None,
            conntrack_id: None,
        }
    }

    #[test]
    fn an_ended_flow_serialises_camel_case_with_counters() {
        let mut f = tcp_facts("10.244.1.2", "10.244.2.3", 1_700_000_000);
        f.time = Timestamp::new(1_700_000_000, 5).unwrap();
        f.ended = true;
        f.forward = Some(Counters {
            packets: 6,
            bytes: 400,
        });
        f.reply = Some(Counters {
            packets: 4,
            bytes: 5000,
        });
        let r = FlowRecord::from_facts(f);
        let line = r.to_json_line();
        assert_eq!(
            line,
            "{\"time\":\"2023-11-14T22:13:20.000000005Z\",\"verdict\":\"FORWARDED\",\
             \"protocol\":\"TCP\",\"srcIp\":\"10.244.1.2\",\"srcPort\":40000,\
             \"dstIp\":\"10.244.2.3\",\"dstPort\":80,\"ended\":true,\
             \"forward\":{\"packets\":6,\"bytes\":400},\"reply\":{\"packets\":4,\"bytes\":5000}}\n"
        );
        assert_eq!(FlowRecord::from_json_line(&line).unwrap(), r);
    }

    #[test]
    fn a_drop_keeps_its_policy_and_flags_and_loses_meaningless_ports() {
        let mut f = tcp_facts("10.244.1.2", "10.244.2.3", 0);
        f.verdict = Verdict::Dropped;
        f.tcp_flags = Some(0x12);
        f.policy = Some(" x/deny-all ".into());
        f.direction = Some(Direction::Ingress);
        let r = FlowRecord::from_facts(f.clone());
        assert_eq!(r.tcp_flags.as_deref(), Some("SYN,ACK"));
        assert_eq!(r.policy.as_deref(), Some("x/deny-all"));
        let line = r.to_json_line();
        assert!(line.contains("\"verdict\":\"DROPPED\""), "{line}");
        assert!(line.contains("\"direction\":\"ingress\""), "{line}");
        assert!(line.contains("\"tcpFlags\":\"SYN,ACK\""), "{line}");
        assert!(!line.contains("ended"), "{line}");
        // ICMP has no ports and no TCP flags, whatever the source passed.
        f.protocol = 1;
        f.policy = Some("  ".into());
        let r = FlowRecord::from_facts(f);
        assert_eq!(r.protocol, Protocol::Icmp);
        assert_eq!((r.src_port, r.dst_port, r.tcp_flags), (None, None, None));
        assert_eq!(r.policy, None);
    }

    #[test]
    fn protocols_and_flags_have_stable_names() {
        assert_eq!(Protocol::from_number(58).as_str(), "ICMPv6");
        assert_eq!(Protocol::from_number(47), Protocol::Other);
        assert_eq!(Protocol::parse("tcp"), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("icmpv6"), Some(Protocol::Icmpv6));
        assert_eq!(Protocol::parse("gre"), None);
        assert_eq!(tcp_flags_text(0x01 | 0x04 | 0x80), "FIN,RST,CWR");
        assert_eq!(tcp_flags_text(0), "");
        assert_eq!(
            format_time(Timestamp::from_second(0).unwrap()),
            "1970-01-01T00:00:00.000000000Z"
        );
    }
}
