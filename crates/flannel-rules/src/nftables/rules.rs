//! The nftables chains flannel installs, written the way `nft list table` prints them back, so the
//! same strings serve as `nft -f -` input and as the key to compare listings against.
//!
//! Two deliberate differences from upstream's rule text (README "Compatibility notes"):
//!
//! * **Rule 4.** Upstream's nftables chain has `ip saddr != POD ip daddr CLUSTER return`, while its
//!   iptables chain has `! -s CLUSTER -d POD -j RETURN`. The nft form returns early for *all*
//!   traffic from outside this node's pod subnet to *any* cluster address, so host-to-overlay
//!   traffic towards other nodes' pods (and traffic routed through this node to them) is never
//!   masqueraded by the last rule. flannel-rs writes `ip saddr != CLUSTER ip daddr POD return`, the
//!   iptables meaning: keep the client address of external traffic that arrives for a pod of this
//!   node, masquerade the host's traffic to other nodes' pods.
//! * **kube-proxy mark.** Upstream writes `meta mark 0x4000 return`, which matches only a mark that
//!   is *exactly* 0x4000; kube-proxy sets the bit with an OR, so a packet that also carries any other
//!   mark bit would be masqueraded twice. flannel-rs writes `meta mark & 0x00004000 == 0x00004000
//!   return`, the meaning of iptables' `-m mark --mark 0x4000/0x4000` (which iptables-nft itself
//!   translates to the same expression).

use ipnet::IpNet;

use crate::config::{Family, FamilyNets, Part};

/// The postrouting chain's name.
pub(crate) const POSTRTG_CHAIN: &str = "postrtg";
/// The forward chain's name.
pub(crate) const FORWARD_CHAIN: &str = "forward";

/// The nft family keyword and table name of an address family.
pub(crate) fn table_of(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("ip", "flannel-ipv4"),
        Family::V6 => ("ip6", "flannel-ipv6"),
    }
}

/// `ip flannel-ipv4`, as used after `add table` / `list table`.
pub(crate) fn table_ref(family: Family) -> String {
    let (fam, name) = table_of(family);
    format!("{fam} {name}")
}

/// The table comment upstream sets.
pub(crate) fn table_comment(family: Family) -> String {
    format!("rules for {}", table_of(family).1)
}

/// A chain as flannel wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainDef {
    /// `postrtg` or `forward`.
    pub(crate) name: &'static str,
    /// The chain comment.
    pub(crate) comment: &'static str,
    /// The base-chain line exactly as nft lists it.
    pub(crate) hook: &'static str,
    /// The rules, in order, exactly as nft lists them.
    pub(crate) rules: Vec<String>,
}

/// The chain name of a part.
pub(crate) fn chain_name(part: Part) -> &'static str {
    match part {
        Part::Masquerade => POSTRTG_CHAIN,
        Part::Forward => FORWARD_CHAIN,
    }
}

/// An address or prefix as nft prints it: a full-length prefix is printed as a bare address.
fn prefix(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The kube-proxy mark test: bit 0x4000 set, whatever the other bits (see the module docs).
pub(crate) const KUBE_PROXY_MARK_RULE: &str = "meta mark & 0x00004000 == 0x00004000 return";

/// The masquerade chain.
pub(crate) fn masquerade_chain(nets: FamilyNets, random_fully: bool) -> ChainDef {
    let ip = table_of(nets.family).0;
    let cluster = prefix(nets.network);
    let pod = prefix(nets.subnet);
    let mc = nets.family.multicast();
    let masq = if random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    ChainDef {
        name: POSTRTG_CHAIN,
        comment: "chain to manage traffic masquerading by flannel",
        hook: "type nat hook postrouting priority srcnat; policy accept;",
        rules: vec![
            KUBE_PROXY_MARK_RULE.to_string(),
            format!("{ip} saddr {pod} {ip} daddr {cluster} return"),
            format!("{ip} saddr {cluster} {ip} daddr {pod} return"),
            // The iptables meaning, not upstream's nft text (see the module docs).
            format!("{ip} saddr != {cluster} {ip} daddr {pod} return"),
            format!("{ip} saddr {cluster} {ip} daddr != {mc} {masq}"),
            format!("{ip} saddr != {cluster} {ip} daddr {cluster} {masq}"),
        ],
    }
}

/// The forward chain.
pub(crate) fn forward_chain(nets: FamilyNets) -> ChainDef {
    let ip = table_of(nets.family).0;
    let cluster = prefix(nets.network);
    ChainDef {
        name: FORWARD_CHAIN,
        comment: "chain to accept flannel traffic",
        hook: "type filter hook forward priority filter; policy accept;",
        rules: vec![
            format!("{ip} saddr {cluster} accept"),
            format!("{ip} daddr {cluster} accept"),
        ],
    }
}

/// The desired chain of a part.
pub(crate) fn part_chain(part: Part, nets: FamilyNets, random_fully: bool) -> ChainDef {
    match part {
        Part::Masquerade => masquerade_chain(nets, random_fully),
        Part::Forward => forward_chain(nets),
    }
}

/// Quotes a comment for nft input.
pub(crate) fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', ""))
}

/// `add table ip flannel-ipv4 { comment "rules for flannel-ipv4"; }`
pub(crate) fn add_table(family: Family) -> String {
    format!(
        "add table {} {{ comment {}; }}",
        table_ref(family),
        quote(&table_comment(family))
    )
}

/// `add chain ...` with comment and hook, then `flush chain`, then one `add rule` per rule: the
/// knftables-style transaction body for one chain.
pub(crate) fn add_chain_with_rules(
    family: Family,
    name: &str,
    comment: Option<&str>,
    hook: Option<&str>,
    rules: &[String],
    flush: bool,
) -> Vec<String> {
    let table = table_ref(family);
    let mut spec = Vec::new();
    if let Some(comment) = comment {
        spec.push(format!("comment {};", quote(comment)));
    }
    if let Some(hook) = hook {
        spec.push(hook.to_string());
    }
    let mut lines = vec![if spec.is_empty() {
        format!("add chain {table} {name}")
    } else {
        format!("add chain {table} {name} {{ {} }}", spec.join(" "))
    }];
    if flush {
        lines.push(format!("flush chain {table} {name}"));
    }
    lines.extend(rules.iter().map(|r| format!("add rule {table} {name} {r}")));
    lines
}

/// The script that checks whether the kernel can do `masquerade fully-random` (run with
/// `nft --check`, so nothing is committed).
pub(crate) fn random_fully_probe() -> String {
    let table = table_ref(Family::V4);
    [
        add_table(Family::V4),
        format!(
            "add chain {table} masqueradeTest {{ type nat hook postrouting priority srcnat; policy accept; }}"
        ),
        format!("add rule {table} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random"),
    ]
    .join("\n")
        + "\n"
}
