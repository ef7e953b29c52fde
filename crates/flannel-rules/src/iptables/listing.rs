//! Reading `iptables -t <table> -S` and working out the smallest `iptables-restore` block that turns
//! it into the desired state.

use super::rules::ChainSpec;

/// One `-A` line of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListedRule {
    /// The chain the rule is in.
    pub(crate) chain: String,
    /// The line as printed (it is valid `iptables-restore` input, used for `-D`).
    pub(crate) raw: String,
    /// The line with whitespace runs collapsed, for comparisons.
    pub(crate) norm: String,
}

impl ListedRule {
    /// The `-D` line that deletes this rule.
    fn delete_line(&self) -> String {
        format!("-D{}", &self.raw[2..])
    }

    /// Whether the rule jumps (`-j`) or goes (`-g`) to `chain`.
    fn targets(&self, chain: &str) -> bool {
        let mut tokens = self.norm.split(' ');
        while let Some(token) = tokens.next() {
            if (token == "-j" || token == "-g" || token == "--jump" || token == "--goto")
                && tokens.next() == Some(chain)
            {
                return true;
            }
        }
        false
    }
}

/// The chains and rules of one table, in listing order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Every chain, built-in (`-P`) or user-defined (`-N`).
    pub(crate) chains: Vec<String>,
    /// Every rule.
    pub(crate) rules: Vec<ListedRule>,
}

/// Collapses whitespace runs so spacing differences never look like rule differences.
pub(crate) fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses the output of `iptables -t <table> -S` (iptables-save rule syntax).
pub(crate) fn parse_listing(text: &str) -> Listing {
    let mut listing = Listing::default();
    for line in text.lines() {
        let line = line.trim();
        let mut tokens = line.split_whitespace();
        match (tokens.next(), tokens.next()) {
            (Some("-P" | "-N"), Some(chain)) => listing.chains.push(chain.to_string()),
            (Some("-A"), Some(chain)) => listing.rules.push(ListedRule {
                chain: chain.to_string(),
                raw: line.to_string(),
                norm: normalize(line),
            }),
            _ => {}
        }
    }
    listing
}

impl Listing {
    fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a ListedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Rules in the built-in chain that flannel owns: those carrying flannel's comment (this covers
    /// the jump and rules older flannel versions put straight into POSTROUTING/FORWARD).
    fn owned_in_builtin<'a>(&'a self, spec: &'a ChainSpec) -> impl Iterator<Item = &'a ListedRule> {
        let comment = spec.comment_match();
        self.rules_of(spec.builtin)
            .filter(move |r| r.norm.contains(&comment))
    }
}

/// The desired state of one part in one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Desired<'a> {
    /// The chain holds exactly these rules (in `-S` form) and is jumped to exactly once.
    Present(&'a [String]),
    /// Neither the chain nor anything jumping to it exists.
    Absent,
}

/// The restore lines that take `listing` to `desired` for one part; empty when nothing differs.
///
/// Present: if the chain's rules differ in any way (missing, extra, duplicated, reordered) the
/// chain is declared (`:CHAIN - [0:0]`, which in `--noflush` mode creates or flushes it) and
/// refilled; the jump is kept if it is there exactly once, appended if missing, and duplicates and
/// other rules carrying flannel's comment in the built-in chain are deleted. An intact chain is not
/// touched, so a healthy system sees no rule churn.
///
/// Absent: every flannel-owned rule in the built-in chain and every rule jumping to the chain is
/// deleted, then the chain is flushed and deleted.
pub(crate) fn plan(listing: &Listing, spec: &ChainSpec, desired: Desired<'_>) -> Vec<String> {
    match desired {
        Desired::Present(rules) => plan_present(listing, spec, rules),
        Desired::Absent => plan_absent(listing, spec),
    }
}

fn plan_present(listing: &Listing, spec: &ChainSpec, rules: &[String]) -> Vec<String> {
    let current: Vec<&str> = listing
        .rules_of(spec.chain)
        .map(|r| r.norm.as_str())
        .collect();
    let wanted: Vec<String> = rules.iter().map(|r| normalize(r)).collect();
    let rewrite_chain = !listing.has_chain(spec.chain) || current != wanted;

    let jump = normalize(&spec.jump_rule());
    let mut jump_kept = false;
    let mut deletes = Vec::new();
    for rule in listing.owned_in_builtin(spec) {
        if rule.norm == jump && !jump_kept {
            jump_kept = true;
        } else {
            deletes.push(rule.delete_line());
        }
    }

    let mut lines = Vec::new();
    if rewrite_chain {
        lines.push(format!(":{} - [0:0]", spec.chain));
    }
    lines.extend(deletes);
    if rewrite_chain {
        lines.extend(wanted);
    }
    if !jump_kept {
        lines.push(jump);
    }
    lines
}

fn plan_absent(listing: &Listing, spec: &ChainSpec) -> Vec<String> {
    let comment = spec.comment_match();
    let mut lines: Vec<String> = listing
        .rules
        .iter()
        .filter(|r| r.chain != spec.chain)
        .filter(|r| (r.chain == spec.builtin && r.norm.contains(&comment)) || r.targets(spec.chain))
        .map(ListedRule::delete_line)
        .collect();
    if listing.has_chain(spec.chain) {
        lines.push(format!("-F {}", spec.chain));
        lines.push(format!("-X {}", spec.chain));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FamilyNets, Networks, Part};
    use crate::iptables::rules::{TableBlock, masquerade_rules, restore_payload};

    fn nets() -> FamilyNets {
        Networks::v4(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        )
        .into()
    }

    fn masq_spec() -> ChainSpec {
        ChainSpec::of(Part::Masquerade)
    }

    /// A listing as `iptables -t nat -S` prints a healthy node.
    fn healthy_nat() -> String {
        let mut text = String::from(
            "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-N FLANNEL-POSTRTG\n",
        );
        text.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
        text.push_str(&masq_spec().jump_rule());
        text.push('\n');
        for r in masquerade_rules(nets(), true) {
            text.push_str(&r);
            text.push('\n');
        }
        text
    }

    #[test]
    fn parses_chains_and_rules() {
        let l = parse_listing(&healthy_nat());
        assert_eq!(
            l.chains,
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "FLANNEL-POSTRTG"
            ]
        );
        assert_eq!(l.rules.len(), 8);
        assert_eq!(l.rules[0].chain, "POSTROUTING");
        assert!(l.rules[1].targets("FLANNEL-POSTRTG"));
        assert!(!l.rules[0].targets("FLANNEL-POSTRTG"));
    }

    #[test]
    fn healthy_listing_needs_nothing() {
        let l = parse_listing(&healthy_nat());
        let rules = masquerade_rules(nets(), true);
        assert!(plan(&l, &masq_spec(), Desired::Present(&rules)).is_empty());
    }

    #[test]
    fn whitespace_differences_are_not_differences() {
        let text = healthy_nat().replace(" -j RETURN", "   -j RETURN");
        let l = parse_listing(&text);
        let rules = masquerade_rules(nets(), true);
        assert!(plan(&l, &masq_spec(), Desired::Present(&rules)).is_empty());
    }

    #[test]
    fn duplicate_jump_is_deleted_without_touching_the_chain() {
        let text = format!("{}{}\n", healthy_nat(), masq_spec().jump_rule());
        let l = parse_listing(&text);
        let rules = masquerade_rules(nets(), true);
        assert_eq!(
            plan(&l, &masq_spec(), Desired::Present(&rules)),
            ["-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"]
        );
    }

    #[test]
    fn reordered_chain_is_rewritten_and_jump_kept() {
        let mut rules = masquerade_rules(nets(), true);
        let text = healthy_nat()
            .replace(&rules[1], "TMP")
            .replace(&rules[2], &rules[1])
            .replace("TMP", &rules[2]);
        let l = parse_listing(&text);
        let got = plan(&l, &masq_spec(), Desired::Present(&rules));
        let mut want = vec![":FLANNEL-POSTRTG - [0:0]".to_string()];
        want.append(&mut rules);
        assert_eq!(got, want);
    }

    #[test]
    fn legacy_rules_with_flannel_comment_in_postrouting_are_removed() {
        let text = format!(
            "{}-A POSTROUTING -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n",
            healthy_nat()
        );
        let l = parse_listing(&text);
        let rules = masquerade_rules(nets(), true);
        assert_eq!(
            plan(&l, &masq_spec(), Desired::Present(&rules)),
            [
                "-D POSTROUTING -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN"
            ]
        );
    }

    #[test]
    fn absent_removes_references_then_chain() {
        let text = format!("{}-A OUTPUT -j FLANNEL-POSTRTG\n", healthy_nat());
        let l = parse_listing(&text);
        let payload = restore_payload(&[TableBlock {
            table: "nat",
            lines: plan(&l, &masq_spec(), Desired::Absent),
        }]);
        assert_eq!(
            payload,
            "*nat\n\
             -D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -D OUTPUT -j FLANNEL-POSTRTG\n\
             -F FLANNEL-POSTRTG\n\
             -X FLANNEL-POSTRTG\n\
             COMMIT\n"
        );
        let empty = parse_listing("-P POSTROUTING ACCEPT\n");
        assert!(plan(&empty, &masq_spec(), Desired::Absent).is_empty());
    }
}
