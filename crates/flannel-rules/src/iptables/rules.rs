//! The iptables rule text flannel installs, written exactly as `iptables -S` prints it back, so the
//! same strings serve as `iptables-restore` input and as the key to compare listings against.

use flannel_types::IpFamily;

use crate::config::{FamilyNets, Part, multicast};

/// The nat chain holding the masquerade rules.
pub(crate) const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
/// The filter chain holding the forward accept rules.
pub(crate) const FWD_CHAIN: &str = "FLANNEL-FWD";
/// The comment on every masquerade rule and on the POSTROUTING jump.
pub(crate) const MASQ_COMMENT: &str = "flanneld masq";
/// The comment on every forward rule and on the FORWARD jump.
pub(crate) const FWD_COMMENT: &str = "flanneld forward";
/// kube-proxy's masquerade mark; traffic carrying it is left to kube-proxy (no double NAT).
pub(crate) const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// Where a part's rules live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChainSpec {
    /// `nat` or `filter`.
    pub(crate) table: &'static str,
    /// flannel's own chain.
    pub(crate) chain: &'static str,
    /// The built-in chain that jumps to it.
    pub(crate) builtin: &'static str,
    /// The comment flannel puts on its rules.
    pub(crate) comment: &'static str,
}

impl ChainSpec {
    pub(crate) fn of(part: Part) -> Self {
        match part {
            Part::Masquerade => ChainSpec {
                table: "nat",
                chain: POSTRTG_CHAIN,
                builtin: "POSTROUTING",
                comment: MASQ_COMMENT,
            },
            Part::Forward => ChainSpec {
                table: "filter",
                chain: FWD_CHAIN,
                builtin: "FORWARD",
                comment: FWD_COMMENT,
            },
        }
    }

    /// `-m comment --comment "flanneld masq"` as printed by `iptables -S`.
    pub(crate) fn comment_match(&self) -> String {
        format!("-m comment --comment \"{}\"", self.comment)
    }

    /// The single rule in the built-in chain that sends traffic to flannel's chain.
    pub(crate) fn jump_rule(&self) -> String {
        format!(
            "-A {} {} -j {}",
            self.builtin,
            self.comment_match(),
            self.chain
        )
    }
}

/// The masquerade rules of `FLANNEL-POSTRTG`, in upstream's order.
pub(crate) fn masquerade_rules(nets: FamilyNets, random_fully: bool) -> Vec<String> {
    let spec = ChainSpec::of(Part::Masquerade);
    let cluster = nets.network.to_string();
    let pod = nets.subnet.to_string();
    let mc = multicast(nets.family);
    let comment = spec.comment_match();
    let masq = if random_fully {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    let chain = spec.chain;
    vec![
        // Leave traffic kube-proxy marked for masquerading to kube-proxy (no double NAT).
        format!("-A {chain} -m mark --mark {KUBE_PROXY_MARK} {comment} -j RETURN"),
        // No NAT inside the overlay.
        format!("-A {chain} -s {pod} -d {cluster} {comment} -j RETURN"),
        format!("-A {chain} -s {cluster} -d {pod} {comment} -j RETURN"),
        // Keep the client address of external traffic that arrives for a pod of this node.
        format!("-A {chain} ! -s {cluster} -d {pod} {comment} -j RETURN"),
        // Pods talking to the outside world (not multicast).
        format!("-A {chain} -s {cluster} ! -d {mc} {comment} -j {masq}"),
        // The host talking to pods of other nodes.
        format!("-A {chain} ! -s {cluster} -d {cluster} {comment} -j {masq}"),
    ]
}

/// The forward accept rules of `FLANNEL-FWD`.
pub(crate) fn forward_rules(nets: FamilyNets) -> Vec<String> {
    let spec = ChainSpec::of(Part::Forward);
    let comment = spec.comment_match();
    let chain = spec.chain;
    let cluster = nets.network;
    vec![
        format!("-A {chain} -s {cluster} {comment} -j ACCEPT"),
        format!("-A {chain} -d {cluster} {comment} -j ACCEPT"),
    ]
}

/// The desired rules of one part.
pub(crate) fn part_rules(part: Part, nets: FamilyNets, random_fully: bool) -> Vec<String> {
    match part {
        Part::Masquerade => masquerade_rules(nets, random_fully),
        Part::Forward => forward_rules(nets),
    }
}

/// One `*table ... COMMIT` block of an `iptables-restore` payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableBlock {
    pub(crate) table: &'static str,
    pub(crate) lines: Vec<String>,
}

/// Builds an `iptables-restore --noflush` payload; blocks without lines are left out.
pub(crate) fn restore_payload(blocks: &[TableBlock]) -> String {
    let mut out = String::new();
    for block in blocks.iter().filter(|b| !b.lines.is_empty()) {
        out.push('*');
        out.push_str(block.table);
        out.push('\n');
        for line in &block.lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The programs of a family: (list/version, restore).
pub(crate) fn binaries(family: IpFamily) -> (&'static str, &'static str) {
    match family {
        IpFamily::V4 => ("iptables", "iptables-restore"),
        IpFamily::V6 => ("ip6tables", "ip6tables-restore"),
    }
}
