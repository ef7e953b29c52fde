//! The content of the `inet flannel-netpol` table as values: what `compile` produces, what
//! `nft::read` reads back, what `nft::plan` diffs.
//!
//! Chains hold their rules as nft text. Every rule is written with a comment carrying a
//! fingerprint of its text ([`rule_fingerprint`]), because nft prints rules back in its own
//! normalised form (`meta l4proto tcp th dport 80` comes back as `tcp dport 80`): comparing
//! fingerprints tells whether the kernel holds exactly the rules we would write, and a new
//! release that writes different text rewrites them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use flannel_types::IpFamily;

use crate::interval::IpRange;
use crate::model::Proto;

/// The table's family and name.
pub const TABLE: &str = "inet flannel-netpol";

/// What a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Single addresses (`type ipv4_addr;`): selected and isolated pods.
    Addr(IpFamily),
    /// Address ranges (`type ipv4_addr; flags interval;`): peers.
    Interval(IpFamily),
    /// `address . protocol . port` (`type ipv4_addr . inet_proto . inet_service;`): named
    /// ports resolved per pod.
    Named(IpFamily),
}

impl SetKind {
    /// The family of the addresses.
    pub fn family(self) -> IpFamily {
        match self {
            SetKind::Addr(f) | SetKind::Interval(f) | SetKind::Named(f) => f,
        }
    }

    /// The set's declaration body (`type ipv4_addr; flags interval;`).
    pub fn declaration(self) -> String {
        let addr = self.family().pick("ipv4_addr", "ipv6_addr");
        match self {
            SetKind::Addr(_) => format!("type {addr};"),
            SetKind::Interval(_) => format!("type {addr}; flags interval;"),
            SetKind::Named(_) => format!("type {addr} . inet_proto . inet_service;"),
        }
    }
}

/// One set element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// An address (in [`SetKind::Addr`] sets).
    Addr(IpAddr),
    /// A range (in [`SetKind::Interval`] sets; a single address is a one-address range).
    Range(IpRange),
    /// A resolved named port (in [`SetKind::Named`] sets).
    Named {
        /// The pod's address.
        addr: IpAddr,
        /// Protocol.
        proto: Proto,
        /// Port number.
        port: u16,
    },
}

impl fmt::Display for Element {
    /// nft's element syntax: `10.0.0.1`, `10.0.0.0/8`, `10.0.0.1-10.0.0.5`,
    /// `10.0.0.1 . tcp . 80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Addr(a) => write!(f, "{a}"),
            Element::Range(r) if r.first == r.last => write!(f, "{}", r.first),
            Element::Range(r) => match r.as_prefix() {
                Some(net) => write!(f, "{net}"),
                None => write!(f, "{}-{}", r.first, r.last),
            },
            Element::Named { addr, proto, port } => write!(f, "{addr} . {proto} . {port}"),
        }
    }
}

/// A set: its kind and elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    /// What it holds.
    pub kind: SetKind,
    /// Its elements (interval sets: disjoint, non-adjacent ranges).
    pub elements: BTreeSet<Element>,
}

/// Where a base chain is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `forward` or `input`.
    pub hook: String,
    /// Priority relative to `filter` (0): egress runs at -1, before ingress.
    pub priority: i32,
}

impl Hook {
    /// The chain declaration (`type filter hook forward priority filter - 1; policy accept;`).
    pub fn declaration(&self) -> String {
        let prio = match self.priority {
            0 => "filter".to_string(),
            p if p < 0 => format!("filter - {}", -p),
            p => format!("filter + {p}"),
        };
        format!(
            "type filter hook {} priority {prio}; policy accept;",
            self.hook
        )
    }
}

/// A chain: base hook (if any) and rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    /// `Some` for the base chains.
    pub hook: Option<Hook>,
    /// Rule texts, without the fingerprint comment.
    pub rules: Vec<String>,
}

/// The whole table as the enforcer wants (or found) it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Sets by name.
    pub sets: BTreeMap<String, SetDef>,
    /// Chains by name.
    pub chains: BTreeMap<String, ChainDef>,
    /// Named counters (`<pid>-drop-in`, `<pid>-drop-eg`).
    pub counters: BTreeSet<String>,
    /// Policy ids of this ruleset and their `namespace/name`: the comment of every set, chain
    /// and counter of the policy, and the labels of `policy_drops_total`.
    pub policies: BTreeMap<String, String>,
}

impl Ruleset {
    /// Number of set elements, for the `nft_elements` metric.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }

    /// The `namespace/name` of the policy an object (set, chain, counter) belongs to.
    pub fn owner_of(&self, object: &str) -> Option<&str> {
        let pid = object.split('-').next()?;
        self.policies.get(pid).map(String::as_str)
    }
}

/// FNV-1a 64, the hash behind policy ids and rule fingerprints: tiny, stable across releases
/// and platforms (unlike std's hasher).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A policy's id: `p` + 12 hex digits of FNV-1a 64 of `namespace/name`. Short enough to keep
/// object names within nft's limits whatever the policy's name.
pub fn policy_id(namespace: &str, name: &str) -> String {
    let h = fnv1a64(format!("{namespace}/{name}").as_bytes());
    format!("p{:012x}", h >> 16)
}

/// The comment written with a rule: 16 hex digits of FNV-1a 64 of its text.
pub fn rule_fingerprint(rule: &str) -> String {
    format!("{:016x}", fnv1a64(rule.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_short() {
        let id = policy_id("x", "allow-80");
        assert_eq!(id.len(), 13);
        assert!(id.starts_with('p'));
        assert_eq!(id, policy_id("x", "allow-80"));
        assert_ne!(id, policy_id("x", "allow-81"));
        // FNV-1a 64 test vector.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(rule_fingerprint("drop").len(), 16);
    }

    #[test]
    fn elements_render_in_nft_syntax() {
        let range = |a: &str, b: &str| {
            Element::Range(IpRange {
                first: a.parse().unwrap(),
                last: b.parse().unwrap(),
            })
        };
        assert_eq!(range("10.0.0.1", "10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(range("10.0.0.0", "10.0.255.255").to_string(), "10.0.0.0/16");
        assert_eq!(
            range("10.0.0.1", "10.0.0.5").to_string(),
            "10.0.0.1-10.0.0.5"
        );
        assert_eq!(
            Element::Named {
                addr: "fd00::1".parse().unwrap(),
                proto: Proto::Sctp,
                port: 80
            }
            .to_string(),
            "fd00::1 . sctp . 80"
        );
        assert_eq!(
            Hook {
                hook: "forward".into(),
                priority: -1
            }
            .declaration(),
            "type filter hook forward priority filter - 1; policy accept;"
        );
    }
}
