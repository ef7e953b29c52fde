//! Leases: which node owns which subnet, and how to reach it (upstream `pkg/lease/lease.go`,
//! `pkg/subnet/subnet.go`).
//!
//! The JSON of [`LeaseAttrs`] is stored in etcd by every node, so flannel-rs writes it byte for
//! byte as upstream's `json.Marshal` does and reads it as leniently as `json.Unmarshal`, letting
//! Go and Rust nodes share one etcd.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use regex::Regex;

use crate::family_net::FamilyNet;
use crate::goip;
use crate::gojson::{self, GoJsonError, GoObject, RawJson};

/// Why a lease attribute document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Not JSON, not an object, or a key of the wrong type.
    #[error("lease attrs: {0}")]
    Json(#[from] GoJsonError),
}

/// Why an etcd subnet key could not be read.
///
/// Peer keys come from other nodes; a bad one must be skipped with a clear message, never crash
/// the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet key {key:?}: {reason}")]
pub struct SubnetKeyError {
    /// The key as found.
    pub key: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Upstream's `lease.LeaseAttrs`: what a node publishes about itself next to its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `PublicIP`: the node's underlay IPv4 address (`0.0.0.0` when absent, as in Go).
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: the node's underlay IPv6 address, if it has one.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType`, e.g. `vxlan`; empty for backends that publish none (`udp`, `alloc`).
    pub backend_type: String,
    /// `BackendData`: backend-specific data such as `{"VNI":1,"VtepMAC":"..."}`.
    ///
    /// `None` is Go's nil `RawMessage` (key omitted); `Some(null)` is an explicit `null`, which
    /// Go writes out, so both are kept apart to reproduce the bytes.
    pub backend_data: Option<RawJson>,
    /// `BackendV6Data`: the same for the IPv6 device.
    pub backend_v6_data: Option<RawJson>,
}

impl Default for LeaseAttrs {
    /// Go's zero value: `PublicIP` `0.0.0.0`, nothing else.
    fn default() -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

impl LeaseAttrs {
    /// The JSON upstream's `json.Marshal(attrs)` produces, byte for byte.
    ///
    /// Field order is Go's struct order; `PublicIP` and `PublicIPv6` are always present (the
    /// latter `null` when absent); `BackendType`, `BackendData` and `BackendV6Data` are omitted
    /// when empty; backend data is compact.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"PublicIP\":\"");
        out.push_str(&self.public_ip.to_string());
        out.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => {
                out.push('"');
                out.push_str(&goip::ip6_string(ip));
                out.push('"');
            }
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&gojson::go_string(&self.backend_type));
        }
        if let Some(d) = &self.backend_data {
            out.push_str(",\"BackendData\":");
            out.push_str(d.as_str());
        }
        if let Some(d) = &self.backend_v6_data {
            out.push_str(",\"BackendV6Data\":");
            out.push_str(d.as_str());
        }
        out.push('}');
        out
    }

    /// Reads lease attributes as Go's `json.Unmarshal` would.
    ///
    /// Keys match case-insensitively and unknown keys are ignored. `PublicIP` accepts dotted
    /// IPv4 (or IPv4-mapped IPv6) text; `PublicIPv6` accepts any address, turning IPv4 text into
    /// its IPv4-mapped form as Go does. A top-level `null` gives the zero value.
    pub fn from_json(text: &str) -> Result<Self, LeaseError> {
        let mut attrs = LeaseAttrs::default();
        let Some(obj) = GoObject::parse(text)? else {
            return Ok(attrs);
        };
        if let Some(ip) = obj.string_with("PublicIP", "an IPv4 address", goip::parse_ip4)? {
            attrs.public_ip = ip;
        }
        attrs.public_ipv6 = obj.string_with("PublicIPv6", "an IPv6 address", goip::parse_ip6)?;
        attrs.backend_type = obj.string("BackendType")?.unwrap_or_default();
        attrs.backend_data = obj.raw("BackendData").map(RawJson::from_raw);
        attrs.backend_v6_data = obj.raw("BackendV6Data").map(RawJson::from_raw);
        Ok(attrs)
    }

    /// Like [`LeaseAttrs::from_json`] for an etcd value (bytes).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, LeaseError> {
        Self::from_json(&String::from_utf8_lossy(bytes))
    }
}

/// The subnets a lease covers, which is also its identity and its etcd key
/// (`10.5.52.0-24`, `10.5.52.0-24&fc00::-64`).
///
/// At least one family is normally present. Ordering is by IPv4 subnet, then IPv6, so sets of
/// leases iterate deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    /// The IPv4 subnet, if the lease has one.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 subnet, if the lease has one.
    pub ipv6: Option<Ipv6Net>,
}

/// Upstream's `subnetRegex`, with `\d` spelled `[0-9]` (Rust's `\d` is Unicode-aware, Go's is
/// ASCII). Note that it is not anchored at the start and that two of the dots are wildcards.
static SUBNET_KEY_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([0-9]+\.[0-9]+.[0-9]+.[0-9]+)-([0-9]+)(?:&([a-f0-9:]+)-([0-9]+))?$")
        .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

/// `strconv.ParseUint(s, 10, bits)`: decimal digits only, value below `2^bits`.
fn parse_uint_bits(s: &str, bits: u32) -> Option<u8> {
    let v: u64 = s.parse().ok()?;
    if v >> bits != 0 {
        return None;
    }
    u8::try_from(v).ok()
}

/// One family's `<addr>-<len>` of a subnet key, as upstream's `ParseSubnetKey` reads it: the
/// address must parse, the prefix must fit in 5 bits (IPv4) or 7 bits (IPv6), host bits are
/// kept, and Go's zero network (`0.0.0.0-0`) means "no subnet of this family". The error is
/// the reason for [`SubnetKeyError`].
fn parse_key_part<N: FamilyNet>(addr: &str, len: &str) -> Result<Option<N>, &'static str> {
    let (bad_addr, bad_len, len_bits) = N::FAMILY.pick(
        (
            "the IPv4 address is not valid",
            "the IPv4 prefix is above 31",
            5,
        ),
        (
            "the IPv6 address is not valid",
            "the IPv6 prefix is above 127",
            7,
        ),
    );
    let ip: N::Addr = addr.parse().map_err(|_| bad_addr)?;
    let len = parse_uint_bits(len, len_bits).ok_or(bad_len)?;
    let net = N::new(ip, len).ok_or(bad_len)?;
    Ok((!net.is_go_zero()).then_some(net))
}

impl SubnetKey {
    /// A key for an IPv4-only lease.
    pub fn v4(net: Ipv4Net) -> Self {
        SubnetKey {
            ipv4: Some(net),
            ipv6: None,
        }
    }

    /// Parses an etcd subnet key, or a full etcd key path ending in one, exactly as upstream's
    /// `ParseSubnetKey` matches it.
    ///
    /// Upstream rules kept: the IPv4 prefix must be below 32 and the IPv6 prefix below 128 (it
    /// parses them as 5- and 7-bit numbers), the IPv6 part must be lower-case hex, addresses
    /// must parse, and host bits are kept as written. `0.0.0.0-0` stands for "no IPv4 subnet"
    /// (how upstream writes IPv6-only keys). A key naming no subnet at all is an error here.
    pub fn parse(key: &str) -> Result<Self, SubnetKeyError> {
        let err = |reason| SubnetKeyError {
            key: key.to_string(),
            reason,
        };
        let caps = SUBNET_KEY_RE
            .captures(key)
            .ok_or_else(|| err("expected <a.b.c.d>-<len>[&<ipv6>-<len>]"))?;
        let group = |i| caps.get(i).map(|m| m.as_str()).unwrap_or_default();

        let ipv4 = parse_key_part::<Ipv4Net>(group(1), group(2)).map_err(err)?;
        let ipv6 = match caps.get(3) {
            None => None,
            Some(m) => parse_key_part::<Ipv6Net>(m.as_str(), group(4)).map_err(err)?,
        };
        if ipv4.is_none() && ipv6.is_none() {
            return Err(err("it names no subnet"));
        }
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

impl fmt::Display for SubnetKey {
    /// Upstream's `MakeSubnetKey`: `a.b.c.d-len`, plus `&<ipv6>-len` when there is an IPv6
    /// subnet. An IPv6-only key starts with `0.0.0.0-0`, as upstream writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ipv4 {
            Some(n) => write!(f, "{}-{}", n.addr(), n.prefix_len())?,
            None => f.write_str("0.0.0.0-0")?,
        }
        if let Some(n) = self.ipv6 {
            write!(f, "&{}-{}", goip::ip6_string(n.addr()), n.prefix_len())?;
        }
        Ok(())
    }
}

impl FromStr for SubnetKey {
    type Err = SubnetKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubnetKey::parse(s)
    }
}

/// Upstream's `lease.Lease`: a subnet (per family) owned by a node, with its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node's IPv4 subnet, if IPv4 is enabled.
    pub subnet: Option<Ipv4Net>,
    /// The node's IPv6 subnet, if IPv6 is enabled.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// What the node publishes (public IP, backend data).
    pub attrs: LeaseAttrs,
    /// When the lease runs out (etcd TTL); `None` for leases that do not expire (Kubernetes mode
    /// or etcd reservations).
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// The lease's identity and etcd key.
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: self.subnet,
            ipv6: self.ipv6_subnet,
        }
    }

    /// Upstream's `sameSubnet`, seen from `other`'s families: compares the IPv4 subnet for an
    /// IPv4-only lease, the IPv6 subnet for an IPv6-only one, and both for dual stack.
    ///
    /// This is how upstream recognises its own lease among watch results.
    pub fn same_subnet(&self, other: &Lease) -> bool {
        match (other.subnet.is_some(), other.ipv6_subnet.is_some()) {
            (true, false) => self.subnet == other.subnet,
            (false, true) => self.ipv6_subnet == other.ipv6_subnet,
            (true, true) => self.subnet == other.subnet && self.ipv6_subnet == other.ipv6_subnet,
            (false, false) => self.subnet.is_none(),
        }
    }
}

/// A change in the set of leases, as a subnet manager reports it.
///
/// Managers start every watch (and every re-list after an etcd compaction or a Kubernetes
/// resync) with a [`LeaseEvent::Snapshot`] of *all* current leases, then send
/// [`LeaseEvent::Added`] / [`LeaseEvent::Removed`] for each change. A consumer that reconciles
/// against a full desired set can treat the snapshot as that set; [`LeaseSet`] turns the stream
/// into plain add/remove diffs for consumers that want them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Every lease that exists now; anything not listed is gone.
    Snapshot(Vec<Lease>),
    /// A lease appeared or its attributes changed (also sent on renewal).
    Added(Lease),
    /// A lease was deleted or expired.
    Removed(Lease),
}

/// The current peer leases, kept up to date from [`LeaseEvent`]s (upstream's `LeaseWatcher`).
///
/// It filters out the node's own lease and turns snapshots into diffs, so a backend sees one
/// `Added` per new or changed peer and one `Removed` per vanished peer.
#[derive(Debug, Clone, Default)]
pub struct LeaseSet {
    own: Option<Lease>,
    leases: BTreeMap<SubnetKey, Lease>,
}

impl LeaseSet {
    /// An empty set that ignores `own` (the local node's lease) in every event.
    pub fn new(own: Option<Lease>) -> Self {
        LeaseSet {
            own,
            leases: BTreeMap::new(),
        }
    }

    fn is_own(&self, lease: &Lease) -> bool {
        self.own.as_ref().is_some_and(|own| own.same_subnet(lease))
    }

    /// Applies one event and returns the resulting changes, each `Added` or `Removed`.
    ///
    /// * `Snapshot`: removals for known leases that are missing, additions for new leases and
    ///   for leases whose subnets or attributes changed (an expiration change alone is stored
    ///   but not reported). Removals come first.
    /// * `Added`: reported unless it repeats a known lease with the same attributes.
    /// * `Removed`: reported with the stored lease (whose attributes the event may lack), or with
    ///   the event's lease if it was unknown, as upstream does.
    pub fn apply(&mut self, event: LeaseEvent) -> Vec<LeaseEvent> {
        match event {
            LeaseEvent::Snapshot(leases) => {
                let mut next = BTreeMap::new();
                for lease in leases {
                    if !self.is_own(&lease) {
                        next.insert(lease.key(), lease);
                    }
                }
                let mut changes: Vec<LeaseEvent> = self
                    .leases
                    .iter()
                    .filter(|(k, _)| !next.contains_key(*k))
                    .map(|(_, l)| LeaseEvent::Removed(l.clone()))
                    .collect();
                changes.extend(
                    next.iter()
                        .filter(|(k, l)| self.leases.get(*k).is_none_or(|old| old.attrs != l.attrs))
                        .map(|(_, l)| LeaseEvent::Added(l.clone())),
                );
                self.leases = next;
                changes
            }
            LeaseEvent::Added(lease) => {
                if self.is_own(&lease) {
                    return Vec::new();
                }
                let changed = self
                    .leases
                    .get(&lease.key())
                    .is_none_or(|old| old.attrs != lease.attrs);
                self.leases.insert(lease.key(), lease.clone());
                if changed {
                    vec![LeaseEvent::Added(lease)]
                } else {
                    Vec::new()
                }
            }
            LeaseEvent::Removed(lease) => {
                if self.is_own(&lease) {
                    return Vec::new();
                }
                let stored = self.leases.remove(&lease.key()).unwrap_or(lease);
                vec![LeaseEvent::Removed(stored)]
            }
        }
    }

    /// The current peer leases, ordered by subnet.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The lease for `key`, if known.
    pub fn get(&self, key: &SubnetKey) -> Option<&Lease> {
        self.leases.get(key)
    }

    /// How many peer leases are known.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no peer lease is known.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> RawJson {
        RawJson::parse(s).unwrap()
    }

    fn net4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn vxlan_attrs() -> LeaseAttrs {
        LeaseAttrs {
            public_ip: "192.168.64.3".parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(raw(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#)),
            backend_v6_data: None,
        }
    }

    // ---- LeaseAttrs JSON ---------------------------------------------------------------

    #[test]
    fn marshal_vxlan_v4_only() {
        assert_eq!(
            vxlan_attrs().to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
    }

    #[test]
    fn marshal_dual_stack() {
        let a = LeaseAttrs {
            public_ip: "10.0.0.5".parse().unwrap(),
            public_ipv6: Some("2001:db8::5".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(raw(r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}"#)),
            backend_v6_data: Some(raw(r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}"#)),
        };
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":"2001:db8::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#
        );
    }

    #[test]
    fn marshal_host_gw_without_backend_data() {
        let a = LeaseAttrs {
            public_ip: "10.0.0.5".parse().unwrap(),
            backend_type: "host-gw".into(),
            ..LeaseAttrs::default()
        };
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
    }

    #[test]
    fn marshal_udp_without_backend_type() {
        let a = LeaseAttrs {
            public_ip: "10.0.0.5".parse().unwrap(),
            ..LeaseAttrs::default()
        };
        assert_eq!(a.to_json(), r#"{"PublicIP":"10.0.0.5","PublicIPv6":null}"#);
        assert_eq!(
            LeaseAttrs::default().to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#
        );
    }

    #[test]
    fn marshal_explicit_null_data_and_escaping() {
        let a = LeaseAttrs {
            public_ip: "10.0.0.5".parse().unwrap(),
            backend_type: "a<b".into(),
            backend_data: Some(RawJson::null()),
            ..LeaseAttrs::default()
        };
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"a\u003cb","BackendData":null}"#
        );
    }

    #[test]
    fn marshal_public_ipv6_like_upstream() {
        let a = LeaseAttrs {
            public_ipv6: Some("::ffff:10.1.2.3".parse().unwrap()),
            ..LeaseAttrs::default()
        };
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"10.1.2.3"}"#
        );
        // ...and it reads back as the same address.
        assert_eq!(LeaseAttrs::from_json(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn round_trips() {
        for text in [
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":"2001:db8::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}"#,
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#,
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null}"#,
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"abc+/="}}"#,
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendData":null}"#,
        ] {
            let a = LeaseAttrs::from_json(text).unwrap();
            assert_eq!(a.to_json(), text);
        }
        let a = vxlan_attrs();
        assert_eq!(LeaseAttrs::from_json(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn unmarshal_is_go_lenient() {
        let a = LeaseAttrs::from_json(
            r#"{ "publicip" : "10.0.0.7", "BACKENDTYPE":"vxlan", "Extra":[1,2],
                 "backenddata": { "VNI" : 1 , "VtepMAC" : "aa:bb:cc:dd:ee:ff" } }"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, "10.0.0.7".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.public_ipv6, None);
        assert_eq!(a.backend_type, "vxlan");
        assert_eq!(
            a.backend_data.unwrap().as_str(),
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#
        );
        // Missing PublicIP is Go's zero value; top-level null is the zero value.
        assert_eq!(LeaseAttrs::from_json("{}").unwrap(), LeaseAttrs::default());
        assert_eq!(
            LeaseAttrs::from_json("null").unwrap(),
            LeaseAttrs::default()
        );
        // PublicIPv6 takes IPv4 text and maps it, as Go's ParseIP6 does.
        let a = LeaseAttrs::from_json(r#"{"PublicIPv6":"10.0.0.1"}"#).unwrap();
        assert_eq!(a.public_ipv6, Some("::ffff:10.0.0.1".parse().unwrap()));
        let a = LeaseAttrs::from_slice(br#"{"PublicIP":"10.0.0.8"}"#).unwrap();
        assert_eq!(a.public_ip, "10.0.0.8".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn unmarshal_errors() {
        let e = |t: &str| LeaseAttrs::from_json(t).unwrap_err().to_string();
        assert_eq!(
            e(r#"{"PublicIP":"fc00::1"}"#),
            r#"lease attrs: "PublicIP": expected an IPv4 address, got "fc00::1""#
        );
        assert_eq!(
            e(r#"{"PublicIP":17}"#),
            r#"lease attrs: "PublicIP": expected an IPv4 address, got 17"#
        );
        assert_eq!(
            e(r#"{"PublicIPv6":"nope"}"#),
            r#"lease attrs: "PublicIPv6": expected an IPv6 address, got "nope""#
        );
        assert_eq!(
            e(r#"{"BackendType":1}"#),
            r#"lease attrs: "BackendType": expected a string, got 1"#
        );
        assert!(e("{").starts_with("lease attrs: invalid JSON: "));
        assert_eq!(e("[]"), "lease attrs: expected a JSON object, got array");
    }

    // ---- subnet keys -------------------------------------------------------------------

    #[test]
    fn subnet_key_format() {
        assert_eq!(
            SubnetKey::v4(net4("10.5.52.0/24")).to_string(),
            "10.5.52.0-24"
        );
        let dual = SubnetKey {
            ipv4: Some(net4("10.5.52.0/24")),
            ipv6: Some(net6("fc00::/64")),
        };
        assert_eq!(dual.to_string(), "10.5.52.0-24&fc00::-64");
        let v6only = SubnetKey {
            ipv4: None,
            ipv6: Some(net6("fc00:0:0:5::/64")),
        };
        assert_eq!(v6only.to_string(), "0.0.0.0-0&fc00:0:0:5::-64");
    }

    #[test]
    fn subnet_key_round_trips() {
        for key in [
            "10.5.52.0-24",
            "10.5.52.0-24&fc00::-64",
            "0.0.0.0-0&fc00:0:0:5::-64",
            "10.244.255.0-24&2001:cafe:42:ff::-64",
            "192.168.0.4-30",
        ] {
            let k = SubnetKey::parse(key).unwrap();
            assert_eq!(k.to_string(), key);
        }
        let k: SubnetKey = "0.0.0.0-0&fc00::-64".parse().unwrap();
        assert_eq!(k.ipv4, None);
        assert_eq!(k.ipv6, Some(net6("fc00::/64")));
    }

    #[test]
    fn subnet_key_accepts_full_etcd_paths() {
        let k = SubnetKey::parse("/coreos.com/network/subnets/10.5.52.0-24").unwrap();
        assert_eq!(k, SubnetKey::v4(net4("10.5.52.0/24")));
        let k = SubnetKey::parse("/coreos.com/network/subnets/10.5.52.0-24&fc00::-64").unwrap();
        assert_eq!(k.ipv6, Some(net6("fc00::/64")));
    }

    #[test]
    fn subnet_key_keeps_upstream_quirks() {
        // Leading zeros in the prefix are fine for ParseUint.
        assert_eq!(
            SubnetKey::parse("10.5.52.0-024").unwrap(),
            SubnetKey::v4(net4("10.5.52.0/24"))
        );
        // Host bits are kept as written, as upstream does.
        assert_eq!(
            SubnetKey::parse("10.5.52.7-24")
                .unwrap()
                .ipv4
                .unwrap()
                .addr(),
            "10.5.52.7".parse::<Ipv4Addr>().unwrap()
        );
        // Unanchored at the start, like Go's FindStringSubmatch.
        assert!(SubnetKey::parse("garbage10.5.52.0-24").is_ok());
    }

    #[test]
    fn subnet_key_rejects_malformed_input() {
        for (key, reason) in [
            ("", "expected <a.b.c.d>-<len>[&<ipv6>-<len>]"),
            ("garbage", "expected <a.b.c.d>-<len>[&<ipv6>-<len>]"),
            ("10.5.52.0", "expected <a.b.c.d>-<len>[&<ipv6>-<len>]"),
            ("10.5.52.0/24", "expected <a.b.c.d>-<len>[&<ipv6>-<len>]"),
            (
                "10.5.52.0-24&FC00::-64",
                "expected <a.b.c.d>-<len>[&<ipv6>-<len>]",
            ),
            ("10.5.52.0-24 ", "expected <a.b.c.d>-<len>[&<ipv6>-<len>]"),
            ("10.5.256.0-24", "the IPv4 address is not valid"),
            ("10.5x52y0-24", "the IPv4 address is not valid"),
            ("010.5.52.0-24", "the IPv4 address is not valid"),
            ("99999999999.5.52.0-24", "the IPv4 address is not valid"),
            ("10.5.52.0-32", "the IPv4 prefix is above 31"),
            ("10.5.52.0-33", "the IPv4 prefix is above 31"),
            (
                "10.5.52.0-99999999999999999999999",
                "the IPv4 prefix is above 31",
            ),
            ("10.5.52.0-24&fc00:::-64", "the IPv6 address is not valid"),
            ("10.5.52.0-24&fc00::-128", "the IPv6 prefix is above 127"),
            ("10.5.52.0-24&fc00::-999", "the IPv6 prefix is above 127"),
            ("0.0.0.0-0", "it names no subnet"),
            ("0.0.0.0-0&::-0", "it names no subnet"),
        ] {
            let e = SubnetKey::parse(key).unwrap_err();
            assert_eq!(e.reason, reason, "{key}");
            assert_eq!(e.key, key);
        }
        assert_eq!(
            SubnetKey::parse("10.5.52.0-33").unwrap_err().to_string(),
            r#"invalid subnet key "10.5.52.0-33": the IPv4 prefix is above 31"#
        );
    }

    // ---- Lease / LeaseSet --------------------------------------------------------------

    fn lease(v4: Option<&str>, v6: Option<&str>, ip: &str) -> Lease {
        Lease {
            subnet: v4.map(net4),
            ipv6_subnet: v6.map(net6),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                backend_type: "vxlan".into(),
                ..LeaseAttrs::default()
            },
            expiration: None,
        }
    }

    #[test]
    fn lease_key_and_same_subnet() {
        let own = lease(Some("10.0.1.0/24"), Some("fc00:0:0:1::/64"), "1.1.1.1");
        assert_eq!(own.key().to_string(), "10.0.1.0-24&fc00:0:0:1::-64");
        assert!(own.same_subnet(&lease(Some("10.0.1.0/24"), None, "2.2.2.2")));
        assert!(own.same_subnet(&lease(None, Some("fc00:0:0:1::/64"), "2.2.2.2")));
        assert!(own.same_subnet(&own.clone()));
        assert!(!own.same_subnet(&lease(
            Some("10.0.1.0/24"),
            Some("fc00:0:0:2::/64"),
            "2.2.2.2"
        )));
        assert!(!own.same_subnet(&lease(Some("10.0.2.0/24"), None, "2.2.2.2")));
    }

    #[test]
    fn lease_set_snapshot_then_diffs() {
        let own = lease(Some("10.0.1.0/24"), None, "1.1.1.1");
        let a = lease(Some("10.0.2.0/24"), None, "1.1.1.2");
        let b = lease(Some("10.0.3.0/24"), None, "1.1.1.3");
        let mut set = LeaseSet::new(Some(own.clone()));

        let out = set.apply(LeaseEvent::Snapshot(vec![
            own.clone(),
            a.clone(),
            b.clone(),
        ]));
        assert_eq!(
            out,
            vec![LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]
        );
        assert_eq!(set.len(), 2);

        // Own lease is ignored.
        assert!(set.apply(LeaseEvent::Added(own.clone())).is_empty());
        assert!(set.apply(LeaseEvent::Removed(own.clone())).is_empty());

        // A renewal with identical attrs is not a change, but the new expiration is stored.
        let mut a_renewed = a.clone();
        a_renewed.expiration = Some(SystemTime::UNIX_EPOCH);
        assert!(set.apply(LeaseEvent::Added(a_renewed.clone())).is_empty());
        assert_eq!(set.get(&a.key()), Some(&a_renewed));

        // Changed attrs are reported.
        let mut a2 = a.clone();
        a2.attrs.public_ip = "9.9.9.9".parse().unwrap();
        assert_eq!(
            set.apply(LeaseEvent::Added(a2.clone())),
            vec![LeaseEvent::Added(a2.clone())]
        );

        // Removal reports the stored lease with its attrs, even if the event has none.
        let bare_b = Lease {
            attrs: LeaseAttrs::default(),
            ..b.clone()
        };
        assert_eq!(
            set.apply(LeaseEvent::Removed(bare_b)),
            vec![LeaseEvent::Removed(b.clone())]
        );

        // A fresh snapshot diffs against what is known: a2 is gone, c is new.
        let c = lease(Some("10.0.4.0/24"), None, "1.1.1.4");
        let out = set.apply(LeaseEvent::Snapshot(vec![c.clone()]));
        assert_eq!(
            out,
            vec![
                LeaseEvent::Removed(a2.clone()),
                LeaseEvent::Added(c.clone())
            ]
        );
        assert_eq!(set.leases().cloned().collect::<Vec<_>>(), vec![c.clone()]);

        // Removing an unknown lease still reports it, as upstream does.
        let d = lease(Some("10.0.5.0/24"), None, "1.1.1.5");
        assert_eq!(
            set.apply(LeaseEvent::Removed(d.clone())),
            vec![LeaseEvent::Removed(d)]
        );
        assert!(!set.is_empty());
    }
}
