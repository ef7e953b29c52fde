//! Pure conversions between Node objects and leases (upstream `nodeToLease`, the podCIDR checks
//! of `AcquireLease`, and its annotation patch rules). No I/O here, so every rule and message is
//! unit-tested.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use flannel_types::{
    AnnotationKeys, FamilyAnnotationKeys, FamilyConfig, FamilyNet, IpFamily, Lease, LeaseAttrs,
    NetConfig, RawJson, goip,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use tracing::info;

use super::peer::PeerNode;

/// The parts of a Node the subnet manager reads, borrowed from a full `Node` (our own, read
/// with GET) or a [`PeerNode`] (the watch), or built by hand in tests.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.annotations`.
    pub annotations: &'a BTreeMap<String, String>,
    /// `spec.podCIDR` (empty when unset).
    pub pod_cidr: &'a str,
    /// `spec.podCIDRs`.
    pub pod_cidrs: &'a [String],
}

/// An empty annotation map for nodes without annotations.
static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> NodeView<'a> {
    /// Borrows the relevant fields of a Node object.
    pub fn of(node: &'a Node) -> NodeView<'a> {
        let spec = node.spec.as_ref();
        NodeView {
            name: node.metadata.name.as_deref().unwrap_or(""),
            annotations: node
                .metadata
                .annotations
                .as_ref()
                .unwrap_or(&NO_ANNOTATIONS),
            pod_cidr: spec.and_then(|s| s.pod_cidr.as_deref()).unwrap_or(""),
            pod_cidrs: spec.and_then(|s| s.pod_cidrs.as_deref()).unwrap_or(&[]),
        }
    }

    /// Borrows the fields of a [`PeerNode`] (what the node watch decodes).
    pub fn of_peer(node: &'a PeerNode) -> NodeView<'a> {
        NodeView {
            name: node.name(),
            annotations: node
                .metadata
                .annotations
                .as_ref()
                .unwrap_or(&NO_ANNOTATIONS),
            pod_cidr: &node.pod_cidr,
            pod_cidrs: &node.pod_cidrs,
        }
    }

    /// An annotation's value, `""` when absent (Go's map lookup).
    pub fn annotation(&self, key: &str) -> &'a str {
        self.annotations.get(key).map(String::as_str).unwrap_or("")
    }

    /// Whether flannel manages this node (`kube-subnet-manager: "true"`); other nodes are
    /// ignored by every watcher, as upstream does.
    pub fn is_managed(&self, keys: &AnnotationKeys) -> bool {
        self.annotation(&keys.kube_subnet_manager) == "true"
    }
}

/// Go's `net.ParseCIDR`, returning the network (host bits cleared); the error reads as Go's.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    goip::parse_cidr(s)
        .map(|c| c.network())
        .ok_or_else(|| format!("invalid CIDR address: {s}"))
}

/// The node's pod CIDRs by family: `spec.podCIDRs` (one or two entries) or, when that list is
/// empty, `spec.podCIDR`, with upstream's messages.
pub fn pod_subnets(node: &NodeView<'_>) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    if node.pod_cidr.is_empty() {
        return Err(format!("node {:?} pod cidr not assigned", node.name));
    }
    // Without allocating: the watch calls this for every node update.
    let texts: [Option<&str>; 2] = match node.pod_cidrs {
        [] => [Some(node.pod_cidr), None],
        [a] => [Some(a), None],
        [a, b] => [Some(a), Some(b)],
        _ => {
            return Err(format!(
                "node {:?} pod cidrs should be IPv4/IPv6 only or dualstack",
                node.name
            ));
        }
    };
    let (mut v4, mut v6) = (None, None);
    for t in texts.into_iter().flatten() {
        match parse_cidr(t)? {
            IpNet::V4(n) => v4 = Some(n),
            IpNet::V6(n) => v6 = Some(n),
        }
    }
    Ok((v4, v6))
}

/// Go's `containsCIDR`: `outer` contains `inner`'s address and is not more specific.
fn contains<N: FamilyNet>(outer: &N, inner: &N) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains_addr(&inner.addr())
}

/// One family's podCIDR checked against its network in net-conf.json (upstream's
/// `AcquireLease` checks and messages); `None` when the family is off or has no podCIDR.
fn own_subnet<N: FamilyNet>(
    node: &NodeView<'_>,
    family: &FamilyConfig<N>,
    cidr: Option<N>,
) -> Result<Option<N>, String> {
    let Some(cidr) = cidr.filter(|_| family.enabled) else {
        return Ok(None);
    };
    let Some(network) = family.network else {
        return Err(match N::FAMILY {
            IpFamily::V4 => format!(
                "the flannel net config has no \"Network\" to contain {:?} PodCIDR of the {:?} node",
                cidr.to_string(),
                node.name
            ),
            IpFamily::V6 => format!(
                "subnet {:?} specified in the PodCIDR, but doesn't exist in the flannel net config of the {:?} node",
                cidr.to_string(),
                node.name
            ),
        });
    };
    if !contains(&network, &cidr) {
        return Err(format!(
            "subnet {:?} specified in the flannel net config doesn't contain {:?} {} of the {:?} node",
            network.to_string(),
            cidr.to_string(),
            N::FAMILY.pick("PodCIDR", "IPv6 PodCIDR"),
            node.name
        ));
    }
    Ok(Some(cidr))
}

/// Our own lease's subnets, checked against net-conf.json as upstream's `AcquireLease` does.
///
/// Differences from upstream, both deliberate: an IPv6 podCIDR is only checked (and used) when
/// `EnableIPv6` is on, so an IPv4-only flannel runs on a dual-stack cluster; and a config
/// without `Network` is an error here rather than accepting any podCIDR.
pub fn own_subnets(
    node: &NodeView<'_>,
    config: &NetConfig,
    backend_type: &str,
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let (v4, v6) = pod_subnets(node)?;
    let subnet = own_subnet(node, &config.family(), v4)?;
    let mut ipv6_subnet = own_subnet(node, &config.family(), v6)?;
    // Upstream: only vxlan, host-gw and wireguard do dual stack; others get an IPv4 lease.
    if !matches!(backend_type, "vxlan" | "host-gw" | "wireguard") {
        ipv6_subnet = None;
    }
    if subnet.is_none() && ipv6_subnet.is_none() {
        return Err(format!(
            "node {:?} has no pod cidr of an enabled address family",
            node.name
        ));
    }
    Ok((subnet, ipv6_subnet))
}

/// Reads a JSON annotation (backend data); `None` when absent or empty.
fn json_annotation(node: &NodeView<'_>, key: &str) -> Result<Option<RawJson>, String> {
    match node.annotation(key) {
        "" => Ok(None),
        text => RawJson::parse(text)
            .map(Some)
            .map_err(|e| format!("annotation {key}: {e}")),
    }
}

/// One family's part of a peer's lease from its annotations: the public address, the
/// backend data and the podCIDR, each required.
fn lease_part<N: FamilyNet>(
    node: &NodeView<'_>,
    keys: &AnnotationKeys,
    subnet: Option<N>,
) -> Result<(N::Addr, Option<RawJson>, N), String> {
    let keys = keys.family(N::FAMILY);
    let text = node.annotation(keys.public_ip);
    let ip = N::parse_go_addr(text).ok_or_else(|| {
        format!(
            "annotation {}: invalid {} address {text:?}",
            keys.public_ip,
            N::FAMILY
        )
    })?;
    let data = json_annotation(node, keys.backend_data)?;
    let subnet = subnet.ok_or_else(|| format!("no {} pod cidr", N::FAMILY))?;
    Ok((ip, data, subnet))
}

/// A peer's lease from its Node (upstream `nodeToLease`), for the families that are enabled.
///
/// Errors (no podCIDR, an address or JSON annotation that does not parse, no podCIDR of an
/// enabled family) make the watcher skip the node with a warning, as upstream does.
pub fn node_to_lease(
    node: &NodeView<'_>,
    keys: &AnnotationKeys,
    enable_ipv4: bool,
    enable_ipv6: bool,
) -> Result<Lease, String> {
    let (v4, v6) = pod_subnets(node)?;
    let mut lease = Lease {
        subnet: None,
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            backend_type: node.annotation(&keys.backend_type).to_string(),
            ..LeaseAttrs::default()
        },
        expiration: None,
    };
    if enable_ipv4 {
        let (ip, data, subnet) = lease_part(node, keys, v4)?;
        lease.attrs.public_ip = ip;
        lease.attrs.backend_data = data;
        lease.subnet = Some(subnet);
    }
    if enable_ipv6 {
        let (ip, data, subnet) = lease_part(node, keys, v6)?;
        lease.attrs.public_ipv6 = Some(ip);
        lease.attrs.backend_v6_data = data;
        lease.ipv6_subnet = Some(subnet);
    }
    Ok(lease)
}

/// Whether `node` still yields exactly `known` (what [`node_to_lease`] would return for it),
/// decided without allocating: the watch's fast path for the updates that make up nearly all
/// Node traffic (status heartbeats, conditions, images), which change nothing flannel reads.
///
/// `true` guarantees `node_to_lease(node, ..) == Ok(known)`; `false` only means "build the
/// lease and compare" (e.g. backend data that is valid but not in compact form).
pub fn lease_unchanged(
    node: &NodeView<'_>,
    keys: &AnnotationKeys,
    enable_ipv4: bool,
    enable_ipv6: bool,
    known: &Lease,
) -> bool {
    if !node.is_managed(keys) || node.annotation(&keys.backend_type) != known.attrs.backend_type {
        return false;
    }
    let Ok((v4, v6)) = pod_subnets(node) else {
        return false;
    };
    // Stored backend data is compact JSON, which parses back to itself.
    let same_json = |key: &str, have: Option<&RawJson>| match (node.annotation(key), have) {
        ("", None) => true,
        (text, Some(have)) => have.as_str() == text,
        _ => false,
    };
    let (k4, k6) = (keys.family(IpFamily::V4), keys.family(IpFamily::V6));
    let v4_same = || {
        v4.is_some()
            && v4 == known.subnet
            && goip::parse_ip4(node.annotation(k4.public_ip)) == Some(known.attrs.public_ip)
            && same_json(k4.backend_data, known.attrs.backend_data.as_ref())
    };
    let v6_same = || {
        v6.is_some()
            && v6 == known.ipv6_subnet
            && goip::parse_ip6(node.annotation(k6.public_ip))
                .is_some_and(|ip| known.attrs.public_ipv6 == Some(ip))
            && same_json(k6.backend_data, known.attrs.backend_v6_data.as_ref())
    };
    (!enable_ipv4 || v4_same()) && (!enable_ipv6 || v6_same())
}

/// What our Node's annotations remember from an earlier run, leniently: a field that does not
/// parse is left empty rather than failing, since this only seeds the VtepMAC reuse.
pub fn stored_attrs(node: &NodeView<'_>, keys: &AnnotationKeys) -> Option<LeaseAttrs> {
    let attrs = LeaseAttrs {
        public_ip: goip::parse_ip4(node.annotation(&keys.public_ip))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        public_ipv6: goip::parse_ip6(node.annotation(&keys.public_ipv6)),
        backend_type: node.annotation(&keys.backend_type).to_string(),
        backend_data: json_annotation(node, &keys.backend_data).ok().flatten(),
        backend_v6_data: json_annotation(node, &keys.backend_v6_data).ok().flatten(),
    };
    (attrs != LeaseAttrs::default()).then_some(attrs)
}

/// The `node-public-ip` / `node-public-ipv6` annotations (empty ones count as unset).
pub fn public_ip_overrides(
    node: &NodeView<'_>,
    keys: &AnnotationKeys,
) -> (Option<String>, Option<String>) {
    let get = |family| {
        Some(
            node.annotation(keys.family(family).node_public_ip)
                .to_string(),
        )
        .filter(|s| !s.is_empty())
    };
    (get(IpFamily::V4), get(IpFamily::V6))
}

fn ip6_text(ip: Option<Ipv6Addr>) -> String {
    // Go prints a nil net.IP as "<nil>".
    ip.map(goip::ip6_string).unwrap_or_else(|| "<nil>".into())
}

/// What one family publishes on our Node: the values upstream compares and writes, with that
/// family's keys.
struct Published<'a> {
    family: IpFamily,
    keys: FamilyAnnotationKeys<'a>,
    /// Backend data as written (`null` when the backend has none).
    data: String,
    /// The public address as upstream prints it.
    ip: String,
    /// The user's `public-ip(v6)-overwrite` annotation, `""` when unset.
    overwrite: &'a str,
}

impl<'a> Published<'a> {
    fn new(
        node: &NodeView<'a>,
        keys: &'a AnnotationKeys,
        family: IpFamily,
        data: Option<&RawJson>,
        ip: String,
    ) -> Self {
        let keys = keys.family(family);
        Published {
            family,
            keys,
            data: data.map_or_else(|| "null".into(), |d| d.as_str().to_string()),
            ip,
            overwrite: node.annotation(keys.public_ip_overwrite),
        }
    }

    /// Upstream's test for "this family's annotations need a patch" (the backend type aside,
    /// which both families share).
    fn differs(&self, node: &NodeView<'_>, managed_key: &str) -> bool {
        let a = |k: &str| node.annotation(k);
        a(self.keys.backend_data) != self.data
            || a(self.keys.public_ip) != self.ip
            || a(managed_key) != "true"
            || (!self.overwrite.is_empty() && self.overwrite != self.ip)
    }

    /// Adds this family's backend data and public address (or the overwrite) to `want`.
    fn write(&self, node: &NodeView<'_>, want: &mut BTreeMap<String, String>) {
        want.insert(self.keys.backend_data.to_string(), self.data.clone());
        let ip = if self.overwrite.is_empty() {
            self.ip.as_str()
        } else {
            if node.annotation(self.keys.public_ip) != self.overwrite {
                info!(
                    "Overriding public {} with '{}' from node annotation '{}'",
                    self.family.pick("ip", "ipv6"),
                    self.overwrite,
                    self.keys.public_ip_overwrite
                );
            }
            self.overwrite
        };
        want.insert(self.keys.public_ip.to_string(), ip.to_string());
    }
}

/// The annotations to write on our Node for `attrs`, or `None` when nothing differs.
///
/// Follows upstream's `AcquireLease`: it decides to patch when backend data, backend type,
/// public IP, the `kube-subnet-manager` mark, or an overwrite annotation disagree (and the same
/// for IPv6 when we have a public IPv6); it then writes the type and the mark, and writes
/// backend data and public IP only where the backend has them (vxlan and wireguard only with
/// non-null data; v6 fields for vxlan with v6 data, wireguard with v6 data and address,
/// host-gw with a v6 address). `public-ip-overwrite` replaces the public IP written.
/// Unlike upstream, only the keys whose value actually changes are returned, so an unchanged
/// node is never patched.
pub fn annotation_changes(
    node: &NodeView<'_>,
    attrs: &LeaseAttrs,
    keys: &AnnotationKeys,
) -> Option<BTreeMap<String, String>> {
    let bt = attrs.backend_type.as_str();
    let published =
        |family, ip| Published::new(node, keys, family, attrs.backend_data_of(family), ip);
    let v4 = published(IpFamily::V4, attrs.public_ip.to_string());
    let v6 = published(IpFamily::V6, ip6_text(attrs.public_ipv6));
    let type_differs = node.annotation(&keys.backend_type) != bt;
    let differs = |p: &Published<'_>| type_differs || p.differs(node, &keys.kube_subnet_manager);
    let v6_differs = attrs.public_ipv6.is_some() && differs(&v6);
    if !differs(&v4) && !v6_differs {
        return None;
    }

    let mut want: BTreeMap<String, String> = BTreeMap::new();
    want.insert(keys.backend_type.clone(), bt.to_string());
    let write_v4 = match bt {
        "vxlan" | "wireguard" => v4.data != "null",
        _ => true,
    };
    if write_v4 {
        v4.write(node, &mut want);
    }
    let write_v6 = match bt {
        "vxlan" => v6.data != "null",
        "wireguard" => v6.data != "null" && attrs.public_ipv6.is_some(),
        "host-gw" => attrs.public_ipv6.is_some(),
        _ => false,
    };
    if write_v6 {
        v6.write(node, &mut want);
    }
    want.insert(keys.kube_subnet_manager.clone(), "true".into());
    want.retain(|k, v| node.annotations.get(k) != Some(v));
    (!want.is_empty()).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N {
        name: String,
        ann: BTreeMap<String, String>,
        cidr: String,
        cidrs: Vec<String>,
    }

    impl N {
        fn new(cidrs: &[&str]) -> N {
            N {
                name: "n2".into(),
                ann: BTreeMap::new(),
                cidr: cidrs.first().map(|s| s.to_string()).unwrap_or_default(),
                cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            }
        }
        fn ann(mut self, k: &str, v: &str) -> N {
            self.ann.insert(k.to_string(), v.to_string());
            self
        }
        fn view(&self) -> NodeView<'_> {
            NodeView {
                name: &self.name,
                annotations: &self.ann,
                pod_cidr: &self.cidr,
                pod_cidrs: &self.cidrs,
            }
        }
    }

    fn keys() -> AnnotationKeys {
        AnnotationKeys::default()
    }

    fn config(text: &str) -> NetConfig {
        NetConfig::parse(text).unwrap()
    }

    fn vxlan_attrs() -> LeaseAttrs {
        LeaseAttrs {
            public_ip: "198.18.0.2".parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(
                RawJson::parse(r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}"#).unwrap(),
            ),
            backend_v6_data: None,
        }
    }

    fn managed(cidrs: &[&str]) -> N {
        let k = keys();
        N::new(cidrs)
            .ann(&k.kube_subnet_manager, "true")
            .ann(&k.backend_type, "vxlan")
            .ann(
                &k.backend_data,
                r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}"#,
            )
            .ann(&k.public_ip, "198.18.0.2")
    }

    #[test]
    fn pod_cidr_checks_use_upstream_messages() {
        let mut n = N::new(&[]);
        assert_eq!(
            pod_subnets(&n.view()).unwrap_err(),
            r#"node "n2" pod cidr not assigned"#
        );
        n = N::new(&["10.244.1.0/24", "fd00:1::/64", "10.9.0.0/24"]);
        assert_eq!(
            pod_subnets(&n.view()).unwrap_err(),
            r#"node "n2" pod cidrs should be IPv4/IPv6 only or dualstack"#
        );
        n = N::new(&["10.244.1.7/24"]);
        assert_eq!(
            pod_subnets(&n.view()).unwrap(),
            (Some("10.244.1.0/24".parse().unwrap()), None)
        );
        // podCIDRs empty: podCIDR alone is used.
        n.cidrs.clear();
        assert!(pod_subnets(&n.view()).unwrap().0.is_some());
        n = N::new(&["banana"]);
        assert_eq!(
            pod_subnets(&n.view()).unwrap_err(),
            "invalid CIDR address: banana"
        );
        n = N::new(&["10.244.1.0/24", "fd00:1::/64"]);
        let (v4, v6) = pod_subnets(&n.view()).unwrap();
        assert_eq!(v4.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(v6.unwrap().to_string(), "fd00:1::/64");
    }

    #[test]
    fn own_subnet_must_lie_inside_network() {
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let n = N::new(&["10.245.1.0/24"]);
        assert_eq!(
            own_subnets(&n.view(), &c, "vxlan").unwrap_err(),
            r#"subnet "10.244.0.0/16" specified in the flannel net config doesn't contain "10.245.1.0/24" PodCIDR of the "n2" node"#
        );
        // A podCIDR as large as the network is fine (containsCIDR is <=), larger is not.
        let n = N::new(&["10.244.0.0/16"]);
        assert!(own_subnets(&n.view(), &c, "vxlan").is_ok());
        let n = N::new(&["10.0.0.0/8"]);
        assert!(own_subnets(&n.view(), &c, "vxlan").is_err());
        let n = N::new(&["10.244.3.0/24"]);
        assert_eq!(
            own_subnets(&n.view(), &c, "vxlan").unwrap(),
            (Some("10.244.3.0/24".parse().unwrap()), None)
        );
        // A v6 podCIDR is ignored while IPv6 is off...
        let n = N::new(&["10.244.3.0/24", "fd00:3::/64"]);
        assert_eq!(own_subnets(&n.view(), &c, "vxlan").unwrap().1, None);
        // ...and checked when it is on.
        let c6 = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:9::/56","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(
            own_subnets(&n.view(), &c6, "vxlan").unwrap_err(),
            r#"subnet "fd00:9::/56" specified in the flannel net config doesn't contain "fd00:3::/64" IPv6 PodCIDR of the "n2" node"#
        );
        let c6 =
            config(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#);
        assert_eq!(
            own_subnets(&n.view(), &c6, "vxlan").unwrap_err(),
            r#"subnet "fd00:3::/64" specified in the PodCIDR, but doesn't exist in the flannel net config of the "n2" node"#
        );
        let c6 = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/16","Backend":{"Type":"vxlan"}}"#,
        );
        let (v4, v6) = own_subnets(&n.view(), &c6, "vxlan").unwrap();
        assert!(v4.is_some() && v6.is_some());
        // Backends without dual stack get an IPv4 lease.
        assert_eq!(own_subnets(&n.view(), &c6, "udp").unwrap().1, None);
    }

    #[test]
    fn node_to_lease_reads_annotations() {
        let k = keys();
        let n = managed(&["10.244.1.0/24"]);
        let l = node_to_lease(&n.view(), &k, true, false).unwrap();
        assert_eq!(l.subnet.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(l.attrs, vxlan_attrs());
        assert!(n.view().is_managed(&k));
        assert!(!N::new(&["10.0.0.0/24"]).view().is_managed(&k));

        // host-gw writes "null" backend data.
        let n = managed(&["10.244.1.0/24"])
            .ann(&k.backend_type, "host-gw")
            .ann(&k.backend_data, "null");
        let l = node_to_lease(&n.view(), &k, true, false).unwrap();
        assert_eq!(l.attrs.backend_data, Some(RawJson::null()));

        // Malformed or missing annotations are errors (the watcher skips such nodes).
        let n = managed(&["10.244.1.0/24"]).ann(&k.backend_data, "{not json");
        assert!(
            node_to_lease(&n.view(), &k, true, false)
                .unwrap_err()
                .contains("backend-data")
        );
        let n = managed(&["10.244.1.0/24"]).ann(&k.public_ip, "");
        assert!(
            node_to_lease(&n.view(), &k, true, false)
                .unwrap_err()
                .contains("public-ip")
        );
        let n = managed(&[]);
        assert!(
            node_to_lease(&n.view(), &k, true, false)
                .unwrap_err()
                .contains("pod cidr not assigned")
        );

        // Dual stack reads both sides.
        let n = managed(&["10.244.1.0/24", "fd00:1::/64"])
            .ann(&k.public_ipv6, "2001:db8::2")
            .ann(
                &k.backend_v6_data,
                r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:12"}"#,
            );
        let l = node_to_lease(&n.view(), &k, true, true).unwrap();
        assert_eq!(l.ipv6_subnet.unwrap().to_string(), "fd00:1::/64");
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
        assert!(l.attrs.backend_v6_data.is_some());
        let l6 = node_to_lease(&n.view(), &k, false, true).unwrap();
        assert_eq!(l6.subnet, None);
        assert_eq!(l6.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn patch_only_what_differs() {
        let k = keys();
        // A fresh node gets all four annotations, in upstream's JSON shapes.
        let n = N::new(&["10.244.1.0/24"]);
        let p = annotation_changes(&n.view(), &vxlan_attrs(), &k).unwrap();
        let want: BTreeMap<String, String> = [
            (
                k.backend_data.clone(),
                r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}"#.to_string(),
            ),
            (k.backend_type.clone(), "vxlan".to_string()),
            (k.kube_subnet_manager.clone(), "true".to_string()),
            (k.public_ip.clone(), "198.18.0.2".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(p, want);
        // Already annotated: nothing to do.
        assert_eq!(
            annotation_changes(&managed(&[]).view(), &vxlan_attrs(), &k),
            None
        );
        // A new MAC changes only backend-data.
        let mut a = vxlan_attrs();
        a.backend_data =
            Some(RawJson::parse(r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:99"}"#).unwrap());
        let p = annotation_changes(&managed(&[]).view(), &a, &k).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), vec![&k.backend_data]);
    }

    #[test]
    fn overwrite_annotation_wins() {
        let k = keys();
        let n = managed(&[]).ann(&k.public_ip_overwrite, "203.0.113.9");
        let p = annotation_changes(&n.view(), &vxlan_attrs(), &k).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[&k.public_ip], "203.0.113.9");
        // Once written, nothing differs any more that a patch would change.
        let n = n.ann(&k.public_ip, "203.0.113.9");
        assert_eq!(annotation_changes(&n.view(), &vxlan_attrs(), &k), None);
    }

    #[test]
    fn backend_specific_write_rules() {
        let k = keys();
        let n = N::new(&["10.244.1.0/24"]);
        // vxlan without v4 data (IPv6-only): type and mark only.
        let mut a = vxlan_attrs();
        a.backend_data = None;
        let p = annotation_changes(&n.view(), &a, &k).unwrap();
        assert!(!p.contains_key(&k.backend_data) && !p.contains_key(&k.public_ip));
        assert_eq!(p[&k.backend_type], "vxlan");
        // host-gw writes "null" data and the IP.
        let a = LeaseAttrs {
            public_ip: "198.18.0.2".parse().unwrap(),
            backend_type: "host-gw".into(),
            ..LeaseAttrs::default()
        };
        let p = annotation_changes(&n.view(), &a, &k).unwrap();
        assert_eq!(p[&k.backend_data], "null");
        assert_eq!(p[&k.public_ip], "198.18.0.2");
        assert!(!p.contains_key(&k.backend_v6_data));
        // host-gw with a v6 address writes v6 fields too.
        let a6 = LeaseAttrs {
            public_ipv6: Some("2001:db8::2".parse().unwrap()),
            ..a.clone()
        };
        let p = annotation_changes(&n.view(), &a6, &k).unwrap();
        assert_eq!(p[&k.backend_v6_data], "null");
        assert_eq!(p[&k.public_ipv6], "2001:db8::2");
        // vxlan dual stack.
        let mut v = vxlan_attrs();
        v.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        v.backend_v6_data =
            Some(RawJson::parse(r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:12"}"#).unwrap());
        let p = annotation_changes(&n.view(), &v, &k).unwrap();
        assert_eq!(
            p[&k.backend_v6_data],
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:12"}"#
        );
        assert_eq!(p[&k.public_ipv6], "2001:db8::2");
        // A custom prefix changes every key.
        let kp = AnnotationKeys::new("example.com/net").unwrap();
        let p = annotation_changes(&n.view(), &vxlan_attrs(), &kp).unwrap();
        assert!(p.contains_key("example.com/net-backend-data"));
    }

    #[test]
    fn stored_attrs_and_overrides() {
        let k = keys();
        let n = managed(&["10.244.1.0/24"]).ann(&k.node_public_ip, "198.18.0.77");
        let s = stored_attrs(&n.view(), &k).unwrap();
        assert_eq!(s.backend_data, vxlan_attrs().backend_data);
        assert_eq!(
            public_ip_overrides(&n.view(), &k),
            (Some("198.18.0.77".into()), None)
        );
        assert_eq!(stored_attrs(&N::new(&[]).view(), &k), None);
        // A garbled backend-data annotation does not fail start-up.
        let n = managed(&[]).ann(&k.backend_data, r#"{"VNI":1,"VtepMAC":"#);
        assert_eq!(stored_attrs(&n.view(), &k).unwrap().backend_data, None);
    }

    /// The fast path agrees with `node_to_lease`: when it says unchanged, the lease is equal;
    /// for compact annotations it recognises every unchanged node; any change flannel reads
    /// makes it fall back.
    #[test]
    fn lease_unchanged_agrees_with_node_to_lease() {
        let k = keys();
        let dual = managed(&["10.244.1.0/24", "fd00:1::/64"])
            .ann(&k.public_ipv6, "2001:db8::2")
            .ann(
                &k.backend_v6_data,
                r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:12"}"#,
            );
        let host_gw = managed(&["10.244.1.0/24"])
            .ann(&k.backend_type, "host-gw")
            .ann(&k.backend_data, "null");
        let no_data = managed(&["10.244.1.0/24"]).ann(&k.backend_data, "");
        let bases = [
            (managed(&["10.244.1.0/24"]), true, false),
            (dual, true, true),
            (
                managed(&["10.244.1.0/24", "fd00:1::/64"])
                    .ann(&k.public_ipv6, "2001:db8::2")
                    .ann(&k.backend_v6_data, r#"{"VNI":1}"#),
                false,
                true,
            ),
            (host_gw, true, false),
            (no_data, true, false),
        ];
        for (base, v4, v6) in &bases {
            let l = node_to_lease(&base.view(), &k, *v4, *v6).unwrap();
            assert!(
                lease_unchanged(&base.view(), &k, *v4, *v6, &l),
                "{:?}",
                base.ann
            );
            let variants = [
                base_with(
                    base,
                    &k.backend_data,
                    r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:99"}"#,
                ),
                base_with(base, &k.backend_v6_data, r#"{"VNI":2}"#),
                base_with(base, &k.public_ip, "198.18.0.99"),
                base_with(base, &k.public_ipv6, "2001:db8::99"),
                base_with(base, &k.backend_type, "wireguard"),
                base_with(base, &k.kube_subnet_manager, "false"),
                // Same value, not compact: the fast path may not decide, the slow path does.
                base_with(
                    base,
                    &k.backend_data,
                    r#"{ "VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02" }"#,
                ),
                N {
                    cidrs: vec!["10.244.9.0/24".into()],
                    cidr: "10.244.9.0/24".into(),
                    ..clone_n(base)
                },
                N {
                    cidrs: vec![],
                    ..clone_n(base)
                },
                N {
                    cidrs: vec![],
                    cidr: String::new(),
                    ..clone_n(base)
                },
            ];
            for n in &variants {
                let fast = lease_unchanged(&n.view(), &k, *v4, *v6, &l);
                let slow = node_to_lease(&n.view(), &k, *v4, *v6).ok();
                if fast {
                    assert_eq!(slow.as_ref(), Some(&l), "{:?}", n.ann);
                }
            }
            // The real changes among them are never called unchanged.
            for n in &variants[..6] {
                let slow = node_to_lease(&n.view(), &k, *v4, *v6).ok();
                if slow.as_ref() != Some(&l) {
                    assert!(!lease_unchanged(&n.view(), &k, *v4, *v6, &l), "{:?}", n.ann);
                }
            }
        }
    }

    fn clone_n(n: &N) -> N {
        N {
            name: n.name.clone(),
            ann: n.ann.clone(),
            cidr: n.cidr.clone(),
            cidrs: n.cidrs.clone(),
        }
    }

    fn base_with(n: &N, key: &str, value: &str) -> N {
        clone_n(n).ann(key, value)
    }
}
