//! The nftables chains flannel installs, built as the structures `nft -j list table` is read into
//! (so a listed chain is compared with the desired one by equality) and printed from them as the
//! `nft -f -` script, in the text `nft list table` prints back.
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

use flannel_types::IpFamily;

use super::model::{Chain, Hook, MatchOp, Rule, Stmt, Verdict};
use crate::config::{FamilyNets, Part, multicast};

/// The postrouting chain's name.
pub(crate) const POSTRTG_CHAIN: &str = "postrtg";
/// The forward chain's name.
pub(crate) const FORWARD_CHAIN: &str = "forward";

/// The nft family keyword and table name of an address family.
pub(crate) fn table_of(family: IpFamily) -> (&'static str, &'static str) {
    match family {
        IpFamily::V4 => ("ip", "flannel-ipv4"),
        IpFamily::V6 => ("ip6", "flannel-ipv6"),
    }
}

/// `ip flannel-ipv4`, as used after `add table` / `list table`.
pub(crate) fn table_ref(family: IpFamily) -> String {
    let (fam, name) = table_of(family);
    format!("{fam} {name}")
}

/// The table comment upstream sets.
pub(crate) fn table_comment(family: IpFamily) -> String {
    format!("rules for {}", table_of(family).1)
}

/// The chain name of a part.
pub(crate) fn chain_name(part: Part) -> &'static str {
    match part {
        Part::Masquerade => POSTRTG_CHAIN,
        Part::Forward => FORWARD_CHAIN,
    }
}

/// kube-proxy's masquerade bit: `meta mark & 0x00004000 == 0x00004000` (see the module docs).
pub(crate) const KUBE_PROXY_MARK: u64 = 0x4000;

/// The masquerade chain.
pub(crate) fn masquerade_chain(nets: FamilyNets, random_fully: bool) -> Chain {
    use MatchOp::{Eq, Ne};
    let ip = table_of(nets.family).0;
    let (cluster, pod) = (nets.network, nets.subnet);
    let mc = multicast(nets.family)
        .parse()
        .expect("the multicast ranges are valid prefixes");
    let flags = random_fully.then(|| "fully-random".to_string());
    let masq = Stmt::Masquerade(flags.into_iter().collect());
    let ret = Stmt::Verdict(Verdict::Return);
    // `ip saddr [!=] S ip daddr [!=] D <then>`
    let rule = |s_op, s, d_op, d, then: &Stmt| {
        Rule(vec![
            Stmt::addr(ip, "saddr", s_op, s),
            Stmt::addr(ip, "daddr", d_op, d),
            then.clone(),
        ])
    };
    Chain {
        name: POSTRTG_CHAIN.to_string(),
        comment: Some("chain to manage traffic masquerading by flannel".to_string()),
        hook: Some(Hook::new("nat", "postrouting", 100, "accept")),
        rules: vec![
            Rule(vec![Stmt::mark_bits(KUBE_PROXY_MARK), ret.clone()]),
            rule(Eq, pod, Eq, cluster, &ret),
            rule(Eq, cluster, Eq, pod, &ret),
            // The iptables meaning, not upstream's nft text (see the module docs).
            rule(Ne, cluster, Eq, pod, &ret),
            rule(Eq, cluster, Ne, mc, &masq),
            rule(Ne, cluster, Eq, cluster, &masq),
        ],
    }
}

/// The forward chain.
pub(crate) fn forward_chain(nets: FamilyNets) -> Chain {
    let ip = table_of(nets.family).0;
    let cluster = nets.network;
    let accept = || Stmt::Verdict(Verdict::Accept);
    Chain {
        name: FORWARD_CHAIN.to_string(),
        comment: Some("chain to accept flannel traffic".to_string()),
        hook: Some(Hook::new("filter", "forward", 0, "accept")),
        rules: vec![
            Rule(vec![
                Stmt::addr(ip, "saddr", MatchOp::Eq, cluster),
                accept(),
            ]),
            Rule(vec![
                Stmt::addr(ip, "daddr", MatchOp::Eq, cluster),
                accept(),
            ]),
        ],
    }
}

/// The desired chain of a part.
pub(crate) fn part_chain(part: Part, nets: FamilyNets, random_fully: bool) -> Chain {
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
pub(crate) fn add_table(family: IpFamily) -> String {
    format!(
        "add table {} {{ comment {}; }}",
        table_ref(family),
        quote(&table_comment(family))
    )
}

/// `add chain ...` with comment and hook, then (if `flush`) `flush chain`, then one `add rule` per
/// rule: the knftables-style transaction body for one chain.
///
/// A listed chain being carried over may hold a rule flannel cannot print back (a statement it
/// does not model); such a rule can only be foreign to flannel's own chain and is left out.
pub(crate) fn add_chain(family: IpFamily, chain: &Chain, flush: bool) -> Vec<String> {
    let table = table_ref(family);
    let name = &chain.name;
    let mut spec = Vec::new();
    if let Some(comment) = &chain.comment {
        spec.push(format!("comment {};", quote(comment)));
    }
    if let Some(hook) = &chain.hook {
        spec.push(hook.to_nft());
    }
    let mut lines = vec![if spec.is_empty() {
        format!("add chain {table} {name}")
    } else {
        format!("add chain {table} {name} {{ {} }}", spec.join(" "))
    }];
    if flush {
        lines.push(format!("flush chain {table} {name}"));
    }
    for rule in &chain.rules {
        match rule.to_nft() {
            Some(text) => lines.push(format!("add rule {table} {name} {text}")),
            None => {
                tracing::warn!(%family, chain = %name, ?rule, "leaving out a rule flannel cannot write back")
            }
        }
    }
    lines
}

/// The script that checks whether the kernel can do `masquerade fully-random` (run with
/// `nft --check`, so nothing is committed).
pub(crate) fn random_fully_probe() -> String {
    let table = table_ref(IpFamily::V4);
    [
        add_table(IpFamily::V4),
        format!(
            "add chain {table} masqueradeTest {{ type nat hook postrouting priority srcnat; policy accept; }}"
        ),
        format!("add rule {table} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random"),
    ]
    .join("\n")
        + "\n"
}
