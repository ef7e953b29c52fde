//! nftables tables, chains and rules as structures, in the shape `nft -j list table` prints them.
//!
//! The rules flannel wants are built as these same structures (see `rules`), so "is this chain
//! as flannel wants it" is plain equality between what nft listed and what flannel built: no
//! whitespace normalisation, no dependence on how a given nft version lays out its text. The
//! `nft -f -` script flannel writes is printed from the desired structures ([`Rule::to_nft`]),
//! so the script and the comparison key cannot drift apart.
//!
//! Statements and expressions flannel never writes are kept as [`Stmt::Other`] /
//! [`Expr::Other`] (the raw JSON value): they compare unequal to every desired rule, which is
//! exactly what a foreign rule in flannel's table should do.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

/// A table as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Table {
    /// The table comment, if any.
    pub(crate) comment: Option<String>,
    /// The chains, in listing order, each with its rules.
    pub(crate) chains: Vec<Chain>,
    /// Sets, maps, flowtables and other objects flannel never creates (left alone).
    pub(crate) other_objects: usize,
}

impl Table {
    /// The chain called `name`, if listed.
    pub(crate) fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// A chain, listed or desired: equal when nft holds exactly what flannel wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Chain {
    /// `postrtg`, `forward`, or a name flannel does not know.
    pub(crate) name: String,
    /// The chain comment, if any.
    pub(crate) comment: Option<String>,
    /// The hook of a base chain; `None` for a regular chain.
    pub(crate) hook: Option<Hook>,
    /// The rules, in order.
    pub(crate) rules: Vec<Rule>,
}

/// Where a base chain is attached (`type nat hook postrouting priority srcnat; policy accept;`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hook {
    /// `nat`, `filter`, ... (`"type"` in JSON).
    pub(crate) kind: String,
    /// `postrouting`, `forward`, ...
    pub(crate) hook: String,
    /// The numeric priority (`srcnat` is 100, `filter` 0).
    pub(crate) priority: i64,
    /// `accept` or `drop`.
    pub(crate) policy: String,
}

impl Hook {
    /// A hook from its parts.
    pub(crate) fn new(kind: &str, hook: &str, priority: i64, policy: &str) -> Self {
        Self {
            kind: kind.to_string(),
            hook: hook.to_string(),
            priority,
            policy: policy.to_string(),
        }
    }

    /// The base-chain specification as nft prints it (and as `add chain` takes it), with the
    /// priority by name where nft prints one.
    pub(crate) fn to_nft(&self) -> String {
        let priority = priority_name(&self.hook, self.priority)
            .map_or_else(|| self.priority.to_string(), str::to_string);
        format!(
            "type {} hook {} priority {priority}; policy {};",
            self.kind, self.hook, self.policy
        )
    }
}

/// The standard priority names of the ip and ip6 families (nft's own table), for the hooks nft
/// prints them on.
fn priority_name(hook: &str, priority: i64) -> Option<&'static str> {
    Some(match (priority, hook) {
        (-300, _) => "raw",
        (-150, _) => "mangle",
        (-100, "prerouting" | "output") => "dstnat",
        (0, _) => "filter",
        (50, _) => "security",
        (100, "postrouting" | "input") => "srcnat",
        _ => return None,
    })
}

/// One rule: its statements in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule(pub(crate) Vec<Stmt>);

impl Rule {
    /// The rule in nft syntax (the text after `add rule <table> <chain>`), or `None` when it holds
    /// something flannel cannot print back (a statement it does not model).
    pub(crate) fn to_nft(&self) -> Option<String> {
        let parts: Option<Vec<String>> = self.0.iter().map(Stmt::to_nft).collect();
        Some(parts?.join(" "))
    }
}

/// A statement of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stmt {
    /// `left op right`, e.g. `ip saddr != 10.244.0.0/16`.
    Match {
        /// What is inspected.
        left: Expr,
        /// How it is compared.
        op: MatchOp,
        /// What it is compared with.
        right: Expr,
    },
    /// `accept`, `return`, `jump x`, ...
    Verdict(Verdict),
    /// `masquerade` with its flags (`fully-random`, `persistent`, `random`), in nft's order.
    Masquerade(Vec<String>),
    /// An anonymous `counter` (its values change all the time and are not compared).
    Counter,
    /// Anything else, as nft printed it.
    Other(Value),
}

impl Stmt {
    /// `<protocol> <field> [!=] <net>`: an address match on a prefix, written as nft lists it (a
    /// full-length prefix is a bare address).
    pub(crate) fn addr(protocol: &str, field: &str, op: MatchOp, net: IpNet) -> Self {
        Stmt::Match {
            left: Expr::Payload {
                protocol: protocol.to_string(),
                field: field.to_string(),
            },
            op,
            right: Expr::net(net),
        }
    }

    /// `meta mark & BITS == BITS`: the packet carries every bit of `bits`.
    pub(crate) fn mark_bits(bits: u64) -> Self {
        Stmt::Match {
            left: Expr::And(
                Box::new(Expr::Meta("mark".to_string())),
                Box::new(Expr::Number(bits)),
            ),
            op: MatchOp::Eq,
            right: Expr::Number(bits),
        }
    }

    fn to_nft(&self) -> Option<String> {
        match self {
            Stmt::Match { left, op, right } => {
                // nft prints marks in hex, and spells out `==` after a bitwise expression.
                let hex = left.mentions_mark();
                let (l, r) = (left.to_nft(hex)?, right.to_nft(hex)?);
                match op {
                    MatchOp::Eq if matches!(left, Expr::And(..)) => Some(format!("{l} == {r}")),
                    MatchOp::Eq => Some(format!("{l} {r}")),
                    MatchOp::Ne => Some(format!("{l} != {r}")),
                    MatchOp::Other(_) => None,
                }
            }
            Stmt::Verdict(v) => Some(v.to_nft()),
            Stmt::Masquerade(flags) if flags.is_empty() => Some("masquerade".to_string()),
            Stmt::Masquerade(flags) => Some(format!("masquerade {}", flags.join(","))),
            Stmt::Counter => Some("counter".to_string()),
            Stmt::Other(_) => None,
        }
    }
}

/// The comparison of a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MatchOp {
    /// `==` (implicit in nft syntax).
    Eq,
    /// `!=`.
    Ne,
    /// Any other operator (`in`, `<`, ...), as JSON names it.
    Other(String),
}

/// A verdict statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `continue`.
    Continue,
    /// `jump <chain>`.
    Jump(String),
    /// `goto <chain>`.
    Goto(String),
}

impl Verdict {
    fn to_nft(&self) -> String {
        match self {
            Verdict::Accept => "accept".to_string(),
            Verdict::Drop => "drop".to_string(),
            Verdict::Return => "return".to_string(),
            Verdict::Continue => "continue".to_string(),
            Verdict::Jump(chain) => format!("jump {chain}"),
            Verdict::Goto(chain) => format!("goto {chain}"),
        }
    }
}

/// An expression on either side of a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    /// A header field, e.g. `ip saddr`.
    Payload {
        /// `ip`, `ip6`, `tcp`, ...
        protocol: String,
        /// `saddr`, `daddr`, `dport`, ...
        field: String,
    },
    /// `meta <key>`, e.g. `meta mark`.
    Meta(String),
    /// `ct <key>`, e.g. `ct state`.
    Ct(String),
    /// `left & right`.
    And(Box<Expr>, Box<Expr>),
    /// A prefix shorter than the address (`10.244.0.0/16`).
    Prefix(IpNet),
    /// A single address (`10.0.0.7`, also a full-length prefix).
    Addr(IpAddr),
    /// A number (a mark, a port, ...).
    Number(u64),
    /// Any other string (a symbol such as `established`, an interface name, ...).
    Symbol(String),
    /// A plain JSON list (`ct state established,related`).
    List(Vec<Expr>),
    /// An anonymous set (`{ 10.0.0.1, 10.0.0.2 }`).
    Set(Vec<Expr>),
    /// Anything else, as nft printed it.
    Other(Value),
}

impl Expr {
    /// A network as nft lists it: a full-length prefix is a bare address.
    pub(crate) fn net(net: IpNet) -> Self {
        if net.prefix_len() == net.max_prefix_len() {
            Expr::Addr(net.addr())
        } else {
            Expr::Prefix(net)
        }
    }

    fn mentions_mark(&self) -> bool {
        match self {
            Expr::Meta(key) => key == "mark",
            Expr::And(a, b) => a.mentions_mark() || b.mentions_mark(),
            _ => false,
        }
    }

    /// nft syntax; numbers in hex as nft prints marks (`0x00004000`) when `hex`.
    fn to_nft(&self, hex: bool) -> Option<String> {
        match self {
            Expr::Payload { protocol, field } => Some(format!("{protocol} {field}")),
            Expr::Meta(key) => Some(format!("meta {key}")),
            Expr::And(a, b) => Some(format!("{} & {}", a.to_nft(hex)?, b.to_nft(hex)?)),
            Expr::Prefix(net) => Some(net.to_string()),
            Expr::Addr(addr) => Some(addr.to_string()),
            Expr::Number(n) if hex => Some(format!("0x{n:08x}")),
            Expr::Number(n) => Some(n.to_string()),
            Expr::Ct(_) | Expr::Symbol(_) | Expr::List(_) | Expr::Set(_) | Expr::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_statements_flannel_writes_as_nft_lists_them() {
        let rule = Rule(vec![
            Stmt::mark_bits(0x4000),
            Stmt::Verdict(Verdict::Return),
        ]);
        assert_eq!(
            rule.to_nft().unwrap(),
            "meta mark & 0x00004000 == 0x00004000 return"
        );
        let rule = Rule(vec![
            Stmt::addr(
                "ip6",
                "saddr",
                MatchOp::Ne,
                "fd00:10:244::/56".parse().unwrap(),
            ),
            Stmt::addr("ip6", "daddr", MatchOp::Eq, "fd00::7/128".parse().unwrap()),
            Stmt::Masquerade(vec!["fully-random".into(), "persistent".into()]),
        ]);
        assert_eq!(
            rule.to_nft().unwrap(),
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00::7 masquerade fully-random,persistent"
        );
        let upstream_mark = Stmt::Match {
            left: Expr::Meta("mark".into()),
            op: MatchOp::Eq,
            right: Expr::Number(0x4000),
        };
        assert_eq!(
            Rule(vec![
                upstream_mark,
                Stmt::Counter,
                Stmt::Verdict(Verdict::Jump("x".into()))
            ])
            .to_nft()
            .unwrap(),
            "meta mark 0x00004000 counter jump x"
        );
    }

    #[test]
    fn statements_it_does_not_model_are_not_printed() {
        assert_eq!(Rule(vec![Stmt::Other(Value::Null)]).to_nft(), None);
        let ct = Stmt::Match {
            left: Expr::Ct("state".into()),
            op: MatchOp::Other("in".into()),
            right: Expr::List(vec![Expr::Symbol("established".into())]),
        };
        assert_eq!(Rule(vec![ct]).to_nft(), None);
    }

    #[test]
    fn hooks_print_priority_names_where_nft_does() {
        assert_eq!(
            Hook::new("nat", "postrouting", 100, "accept").to_nft(),
            "type nat hook postrouting priority srcnat; policy accept;"
        );
        assert_eq!(
            Hook::new("filter", "forward", 0, "accept").to_nft(),
            "type filter hook forward priority filter; policy accept;"
        );
        assert_eq!(
            Hook::new("filter", "forward", 10, "drop").to_nft(),
            "type filter hook forward priority 10; policy drop;"
        );
        assert_eq!(
            Hook::new("nat", "prerouting", -100, "accept").to_nft(),
            "type nat hook prerouting priority dstnat; policy accept;"
        );
    }
}
