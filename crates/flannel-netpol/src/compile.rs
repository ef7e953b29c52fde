//! From the cluster state to the table this node should hold: pure and deterministic, so the
//! same state always gives the same [`Ruleset`] (and `nft::plan` an empty transaction).
//!
//! Shape (see the crate doc for the whole table): base chains `ingress` (forward, priority
//! filter), `egress` (forward, filter - 1) and `egress-input` (input, filter - 1) accept
//! established and related traffic and send packets to or from an *isolated* local pod to
//! `ingress-policies` / `egress-policies`. Those jump, per policy and family, to the
//! policy's chain `<pid>-in` / `<pid>-eg` when the pod is one the policy selects
//! (`ip daddr @<pid>-sel-v4 jump <pid>-in`); an `accept` there ends the verdict of that base
//! chain. Whatever no policy accepted is dropped, counted on the first selecting policy's
//! counter (`<pid>-drop-in`), and logged to NFLOG when asked.
//!
//! Per rule `i` of a policy: peer pods' addresses go to a hash set `peers-<hash>-v4` and
//! ipBlocks (minus excepts, merged) to an interval set `blocks-<hash>-v4`, both shared by
//! every policy with the same peers (named after the peer list and the content); numeric
//! ports and ranges are written into the rule (`meta l4proto tcp th dport 80-90`), named
//! ports are resolved per destination pod into `<pid>-in<i>-named-v4` (`address . protocol .
//! port`). Membership changes are therefore set-element changes; chains change only when a
//! policy does. Interval sets are kept to ipBlocks because nft 1.0.6 fetches every element of
//! every interval set of the table before any transaction (80 ms at 1000 pods x 500
//! policies when peers were interval sets, under 10 ms now).
//!
//! Only pods of this node are selected (ingress is enforced on the destination's node, egress
//! on the source's); a policy selecting no local pod has no objects here. A named port in an
//! egress rule matches only pod destinations (an ipBlock destination has no container ports).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use flannel_types::IpFamily;

use crate::cluster::ClusterState;
use crate::interval::{merge, subtract};
use crate::model::{NamespaceScope, Peer, Peers, PodInfo, Policy, PortMatch, Ports, Proto, Rule};
use crate::ruleset::{ChainDef, Element, Hook, Ruleset, SetDef, SetKind, fnv1a64, policy_id};

/// Knobs of the compiled ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// NFLOG group for denied packets (`--v>=2`); `None` = no logging.
    pub nflog_group: Option<u16>,
    /// With `nflog_group`, give each logged drop its identity as the log prefix (for flow
    /// records, see [`drop_prefix`]), and log the `*-policies` chains' final drop too, as
    /// `default deny`. Off: the drop rules are exactly those of `--v>=2` (`log group G`).
    pub identify_drops: bool,
    /// With identified drops: at most this many drops logged per second by each drop rule
    /// (and as many in a burst). A flood against a denied port would otherwise cost the
    /// kernel a 128-byte NFLOG copy per packet and fill the flow ring with one attacker's
    /// packets; the drops beyond the rate are still dropped and counted by the policy's
    /// counter, only not recorded. `None`: every drop is logged.
    pub drop_log_rate: Option<u32>,
}

/// The policy identity in the log prefix of the drops that no allow rule of a policy's
/// direction accepted: what a flow record names as the reason of the drop. The prefix is the
/// identity, a space and the direction ([`drop_prefix`]), because the NFLOG record carries no
/// chain and a drop between two pods of one node could be either pod's.
///
/// A packet to (ingress) or from (egress) a pod is dropped when the pod is isolated in that
/// direction by one or more policies and none of them allows it; it is counted and logged by
/// the drop rule of the first of those policies in compile order (namespace, then name), and
/// that is the policy the prefix names, `namespace/name`. When it is the only policy
/// isolating the pod in that direction, which is the common case, that is the whole story;
/// when others also select the pod, they too did not allow the packet: the prefix still
/// names the first one, because a prefix that depended on which pods several policies share
/// would change the chains on pod churn (chains change only when a policy does), and a
/// reader that needs them all lists the policies selecting the pod from the cluster state.
///
/// Names that do not fit the kernel's 127-byte prefix (with the direction), or hold a character that is not a
/// Kubernetes name character, are written as the policy's object id (`p` + 12 hex digits,
/// as in the table's object names and [`Ruleset::policies`]) so the rule is always valid.
/// The chains' final `drop`, for a pod isolated without a policy of its own (not reached
/// while the table is consistent), is [`DEFAULT_DENY`].
pub fn drop_identity(namespace: &str, name: &str) -> String {
    let identity = format!("{namespace}/{name}");
    let valid = identity.len() + 1 + INGRESS.len() <= MAX_PREFIX
        && identity
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./".contains(&b));
    if valid {
        identity
    } else {
        policy_id(namespace, name)
    }
}

/// Why a packet to (`ingress`) or from (egress) the local `pod` was dropped, for a flow
/// record: the policies isolating the pod in that direction, every one of which did not
/// allow the packet. One policy is named alone (`namespace/name`, the usual case and what
/// the kernel's prefix says too); several are listed in compile order, the first three and
/// `+N more`, so a record stays one short line. `None` when no policy isolates the pod now
/// (one was deleted since the drop): the caller then keeps the kernel's prefix.
pub fn drop_reason(state: &ClusterState, pod: &PodInfo, ingress: bool) -> Option<String> {
    let names: Vec<String> = state
        .policies()
        .map(|e| &e.policy)
        .filter(|p| {
            p.namespace == pod.namespace
                && (if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                })
                && p.pod_selector.matches(&pod.labels)
        })
        .map(Policy::key)
        .collect();
    match names.len() {
        0 => None,
        1..=3 => Some(names.join(", ")),
        n => Some(format!("{} +{} more", names[..3].join(", "), n - 3)),
    }
}

/// The identity of drops no single policy is responsible for (see [`drop_identity`]).
pub const DEFAULT_DENY: &str = "default deny";

/// The direction word of an ingress drop's prefix.
pub const INGRESS: &str = "ingress";
/// The direction word of an egress drop's prefix.
pub const EGRESS: &str = "egress";

/// The whole log prefix of a drop: `identity` and the direction, e.g. `team-a/web ingress`.
pub fn drop_prefix(identity: &str, ingress: bool) -> String {
    format!("{identity} {}", if ingress { INGRESS } else { EGRESS })
}

/// `NF_LOG_PREFIXLEN` less its terminating NUL: nft refuses longer prefixes.
const MAX_PREFIX: usize = 127;

/// The ruleset `node` should hold for `state`, without logging.
pub fn compile(state: &ClusterState, node: &str) -> Ruleset {
    compile_with(state, node, &CompileOptions::default())
}

/// The ruleset `node` should hold for `state`.
pub fn compile_with(state: &ClusterState, node: &str, options: &CompileOptions) -> Ruleset {
    let mut by_namespace: BTreeMap<&str, Vec<Member<'_>>> = BTreeMap::new();
    for pod in state.pods() {
        let ips: Vec<IpAddr> = state.owned_ips(pod).collect();
        if !ips.is_empty() {
            by_namespace
                .entry(pod.namespace.as_str())
                .or_default()
                .push(Member { pod, ips });
        }
    }
    let mut b = Builder {
        state,
        by_namespace: &by_namespace,
        options,
        out: Ruleset::default(),
        jumps: BTreeMap::new(),
        drops: BTreeMap::new(),
    };
    for dir in [Dir::Ingress, Dir::Egress] {
        for fam in IpFamily::ALL {
            b.set(&dir.isolated_set(fam), SetKind::Addr(fam));
        }
    }
    for entry in state.policies() {
        let policy = &entry.policy;
        let selected: Vec<&Member<'_>> = by_namespace
            .get(policy.namespace.as_str())
            .into_iter()
            .flatten()
            .filter(|m| {
                m.pod.node.as_deref() == Some(node) && policy.pod_selector.matches(&m.pod.labels)
            })
            .collect();
        if !selected.is_empty() {
            b.policy(policy, &selected);
        }
    }
    b.finish()
}

/// A pod with the IPs it really holds (see `ClusterState::owned_ips`), computed once per
/// compile.
struct Member<'a> {
    pod: &'a PodInfo,
    ips: Vec<IpAddr>,
}

/// A direction of enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    /// `in` / `eg`, in object names.
    fn tag(self) -> &'static str {
        match self {
            Dir::Ingress => "in",
            Dir::Egress => "eg",
        }
    }

    /// The address field of the protected (selected) pod.
    fn own_side(self) -> &'static str {
        match self {
            Dir::Ingress => "daddr",
            Dir::Egress => "saddr",
        }
    }

    /// The address field of the peer.
    fn peer_side(self) -> &'static str {
        match self {
            Dir::Ingress => "saddr",
            Dir::Egress => "daddr",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }

    fn isolated_set(self, fam: IpFamily) -> String {
        format!("{}-isolated-{}", self.name(), suffix(fam))
    }

    fn policies_chain(self) -> String {
        format!("{}-policies", self.name())
    }
}

/// `v4` / `v6`.
fn suffix(fam: IpFamily) -> &'static str {
    fam.pick("v4", "v6")
}

/// `ip` / `ip6`.
fn ip_kw(fam: IpFamily) -> &'static str {
    fam.pick("ip", "ip6")
}

struct Builder<'a> {
    state: &'a ClusterState,
    /// Pods with IPs by namespace: selection and peer lookups scan one namespace at a time.
    by_namespace: &'a BTreeMap<&'a str, Vec<Member<'a>>>,
    options: &'a CompileOptions,
    out: Ruleset,
    /// `jump` rules of `ingress-policies` / `egress-policies`, in policy order.
    jumps: BTreeMap<Dir, Vec<String>>,
    /// Counting drop rules after them.
    drops: BTreeMap<Dir, Vec<String>>,
}

/// How a drop rule logs.
enum DropLog {
    /// Not at all.
    None,
    /// In the drop rule itself (`... log group G drop`).
    Inline(String),
    /// Rate-limited, in a rule of its own before the drop (`limit rate ... log ...`).
    Limited(String),
}

/// 12 hex digits of FNV-1a 64 of `key`: the name of a shared set.
fn short_hash(key: &str) -> String {
    format!("{:012x}", fnv1a64(key.as_bytes()) >> 16)
}

impl<'a> Builder<'a> {
    /// Declares a set (empty) if not yet declared and returns its elements.
    fn set(&mut self, name: &str, kind: SetKind) -> &mut BTreeSet<Element> {
        &mut self
            .out
            .sets
            .entry(name.to_string())
            .or_insert_with(|| SetDef {
                kind,
                elements: BTreeSet::new(),
            })
            .elements
    }

    /// The logging of a drop whose identified prefix would be `prefix`.
    fn drop_log(&self, prefix: &str) -> DropLog {
        match (self.options.nflog_group, self.options.identify_drops) {
            (None, _) => DropLog::None,
            (Some(g), false) => DropLog::Inline(format!("log group {g}")),
            (Some(g), true) => {
                let log = format!("log prefix \"{prefix}\" group {g}");
                match self.options.drop_log_rate {
                    Some(r) => {
                        DropLog::Limited(format!("limit rate {r}/second burst {r} packets {log}"))
                    }
                    None => DropLog::Inline(log),
                }
            }
        }
    }

    fn chain(&mut self, name: &str, hook: Option<Hook>, rules: Vec<String>) {
        self.out
            .chains
            .insert(name.to_string(), ChainDef { hook, rules });
    }

    /// Everything of one policy that selects `selected` (non-empty) local pods.
    fn policy(&mut self, policy: &Policy, selected: &[&Member<'a>]) {
        let pid = policy_id(&policy.namespace, &policy.name);
        let mut own: BTreeMap<IpFamily, Vec<IpAddr>> = BTreeMap::new();
        for member in selected {
            for ip in &member.ips {
                own.entry(IpFamily::of(ip)).or_default().push(*ip);
            }
        }
        if own.is_empty() {
            return;
        }
        self.out.policies.insert(pid.clone(), policy.key());
        for (fam, ips) in &own {
            let sel = self.set(&format!("{pid}-sel-{}", suffix(*fam)), SetKind::Addr(*fam));
            sel.extend(ips.iter().map(|ip| Element::Addr(*ip)));
        }
        let families: Vec<IpFamily> = own.keys().copied().collect();
        for (dir, rules) in [
            (Dir::Ingress, &policy.ingress),
            (Dir::Egress, &policy.egress),
        ] {
            let Some(rules) = rules else { continue };
            for (fam, ips) in &own {
                let isolated = self.set(&dir.isolated_set(*fam), SetKind::Addr(*fam));
                isolated.extend(ips.iter().map(|ip| Element::Addr(*ip)));
            }
            self.direction(&pid, dir, rules, &families, policy, selected);
        }
    }

    /// The chain, counter and jump/drop rules of one direction of a policy.
    fn direction(
        &mut self,
        pid: &str,
        dir: Dir,
        rules: &[Rule],
        families: &[IpFamily],
        policy: &Policy,
        selected: &[&Member<'a>],
    ) {
        let chain = format!("{pid}-{}", dir.tag());
        let counter = format!("{pid}-drop-{}", dir.tag());
        let mut texts = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let prefix = format!("{pid}-{}{i}", dir.tag());
            texts.extend(self.rule(&prefix, dir, rule, families, policy, selected));
        }
        self.chain(&chain, None, texts);
        self.out.counters.insert(counter.clone());
        let identity = drop_identity(&policy.namespace, &policy.name);
        let log = self.drop_log(&drop_prefix(&identity, dir == Dir::Ingress));
        for fam in families {
            let sel = format!(
                "{} {} @{pid}-sel-{}",
                ip_kw(*fam),
                dir.own_side(),
                suffix(*fam)
            );
            self.jumps
                .entry(dir)
                .or_default()
                .push(format!("{sel} jump {chain}"));
            let drops = self.drops.entry(dir).or_default();
            match &log {
                DropLog::None => drops.push(format!("{sel} counter name \"{counter}\" drop")),
                DropLog::Inline(log) => {
                    drops.push(format!("{sel} counter name \"{counter}\" {log} drop"));
                }
                // The limit ends the rule when over the rate, so the log rule cannot drop:
                // the packet goes on to its own drop, never to another policy's rule.
                DropLog::Limited(log) => {
                    drops.push(format!("{sel} counter name \"{counter}\" {log}"));
                    drops.push(format!("{sel} drop"));
                }
            }
        }
    }

    /// The accept rules of one policy rule (none when its peers or ports are all invalid).
    fn rule(
        &mut self,
        prefix: &str,
        dir: Dir,
        rule: &Rule,
        families: &[IpFamily],
        policy: &Policy,
        selected: &[&Member<'a>],
    ) -> Vec<String> {
        let ports: Vec<PortMatch> = match &rule.ports {
            Ports::Any => Vec::new(),
            Ports::Only(list) if list.is_empty() => return Vec::new(),
            Ports::Only(list) => list.clone(),
        };
        if matches!(&rule.peers, Peers::Only(list) if list.is_empty()) {
            return Vec::new();
        }
        // Peer matches: per family one for the peer pods and one for the ipBlocks (either
        // absent when there is nothing of that family to match), or none at all for "any
        // peer".
        let mut peer_parts: Vec<(Option<IpFamily>, String)> = Vec::new();
        match &rule.peers {
            Peers::Any => peer_parts.push((None, String::new())),
            Peers::Only(peers) => {
                for fam in families {
                    let sets = [
                        self.pod_peer_set(peers, policy, *fam),
                        self.block_peer_set(peers, *fam),
                    ];
                    for name in sets.into_iter().flatten() {
                        let part = format!("{} {} @{name} ", ip_kw(*fam), dir.peer_side());
                        peer_parts.push((Some(*fam), part));
                    }
                }
            }
        }
        let named: Vec<(Proto, &str)> = ports
            .iter()
            .filter_map(|p| match p {
                PortMatch::Named { proto, name } => Some((*proto, name.as_str())),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for (_, peer) in &peer_parts {
            if ports.is_empty() {
                out.push(format!("{peer}accept"));
            }
            for port in &ports {
                match port {
                    PortMatch::AllOf(proto) => {
                        out.push(format!("{peer}meta l4proto {proto} accept"))
                    }
                    PortMatch::Range { proto, first, last } if first == last => {
                        out.push(format!(
                            "{peer}meta l4proto {proto} th dport {first} accept"
                        ));
                    }
                    PortMatch::Range { proto, first, last } => out.push(format!(
                        "{peer}meta l4proto {proto} th dport {first}-{last} accept"
                    )),
                    PortMatch::Named { .. } => {}
                }
            }
        }
        if !named.is_empty() {
            for fam in families {
                let name = format!("{prefix}-named-{}", suffix(*fam));
                let elements = self.named_elements(dir, rule, policy, selected, &named, *fam);
                self.set(&name, SetKind::Named(*fam)).extend(elements);
                for (_, peer) in peer_parts
                    .iter()
                    .filter(|(f, _)| f.is_none() || *f == Some(*fam))
                {
                    out.push(format!(
                        "{} daddr . meta l4proto . th dport @{name} {peer}accept",
                        ip_kw(*fam)
                    ));
                }
            }
        }
        out
    }

    /// The shared hash set of the addresses of the pods `peers` name (`None` when no peer
    /// names pods). Sets are named after the peer list (and the policy's namespace when a peer
    /// means it), so policies with the same peers share one set: few and small sets keep a
    /// transaction cheap, and a pod's labels change only set elements.
    fn pod_peer_set(&mut self, peers: &[Peer], policy: &Policy, fam: IpFamily) -> Option<String> {
        let pods: Vec<&Peer> = peers
            .iter()
            .filter(|p| matches!(p, Peer::Pods { .. }))
            .collect();
        if pods.is_empty() {
            return None;
        }
        let own_ns = pods.iter().any(|p| {
            matches!(
                p,
                Peer::Pods {
                    namespaces: NamespaceScope::Own,
                    ..
                }
            )
        });
        let key = format!("{pods:?} {:?}", own_ns.then_some(&policy.namespace));
        let name = format!("peers-{}-{}", short_hash(&key), suffix(fam));
        if !self.out.sets.contains_key(&name) {
            let ips: BTreeSet<Element> = pods
                .iter()
                .flat_map(|p| self.peer_pods(p, policy))
                .flat_map(|m| m.ips.iter().copied())
                .filter(|ip| IpFamily::of(ip) == fam)
                .map(Element::Addr)
                .collect();
            self.set(&name, SetKind::Addr(fam)).extend(ips);
        }
        Some(name)
    }

    /// The shared interval set of the `ipBlock`s of `peers` (minus their excepts, merged),
    /// named after its content; `None` when no block of this family remains. The only
    /// interval sets of the table: nft 1.0.6 reads every element of every interval set of
    /// the table before each transaction, so they are kept few.
    fn block_peer_set(&mut self, peers: &[Peer], fam: IpFamily) -> Option<String> {
        let ranges = merge(
            peers
                .iter()
                .filter_map(|p| match p {
                    Peer::Block(b) if IpFamily::of_net(&b.cidr) == fam => {
                        Some(subtract(b.cidr, &b.except))
                    }
                    _ => None,
                })
                .flatten()
                .collect(),
        );
        if ranges.is_empty() {
            return None;
        }
        let elements: Vec<Element> = ranges.into_iter().map(Element::Range).collect();
        let key: Vec<String> = elements.iter().map(ToString::to_string).collect();
        let name = format!("blocks-{}-{}", short_hash(&key.join(",")), suffix(fam));
        self.set(&name, SetKind::Interval(fam)).extend(elements);
        Some(name)
    }

    /// The pods a `Peer::Pods` names (nothing for an ipBlock).
    fn peer_pods<'s>(
        &'s self,
        peer: &'s Peer,
        policy: &'s Policy,
    ) -> impl Iterator<Item = &'s Member<'a>> + 's {
        let (namespaces, pods) = match peer {
            Peer::Block(_) => (None, None),
            Peer::Pods { namespaces, pods } => (Some(namespaces), Some(pods)),
        };
        self.by_namespace
            .iter()
            .filter(move |(ns, _)| match namespaces {
                None => false,
                Some(NamespaceScope::Own) => **ns == policy.namespace,
                Some(NamespaceScope::Matching(s)) if s.is_everything() => true,
                Some(NamespaceScope::Matching(s)) => self
                    .state
                    .namespace(ns)
                    .is_some_and(|info| s.matches(&info.labels)),
            })
            .flat_map(|(_, members)| members.iter())
            .filter(move |m| pods.is_some_and(|p| p.matches(&m.pod.labels)))
    }

    /// Named ports resolved on the destination pods: the selected pods for ingress, the peer
    /// pods (every pod for "any peer") for egress.
    fn named_elements(
        &self,
        dir: Dir,
        rule: &Rule,
        policy: &Policy,
        selected: &[&Member<'a>],
        named: &[(Proto, &str)],
        fam: IpFamily,
    ) -> Vec<Element> {
        let destinations: Vec<&Member<'a>> = match (dir, &rule.peers) {
            (Dir::Ingress, _) => selected.to_vec(),
            (Dir::Egress, Peers::Any) => self.by_namespace.values().flatten().collect(),
            (Dir::Egress, Peers::Only(peers)) => {
                let mut seen = BTreeSet::new();
                peers
                    .iter()
                    .flat_map(|p| self.peer_pods(p, policy))
                    .filter(|m| seen.insert((&m.pod.namespace, &m.pod.name)))
                    .collect()
            }
        };
        let mut out = Vec::new();
        for member in destinations {
            for ip in member
                .ips
                .iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == fam)
            {
                for port in &member.pod.ports {
                    if named
                        .iter()
                        .any(|(proto, name)| *proto == port.protocol && *name == port.name)
                    {
                        out.push(Element::Named {
                            addr: ip,
                            proto: port.protocol,
                            port: port.port,
                        });
                    }
                }
            }
        }
        out
    }

    /// Adds the base chains and the policy dispatch chains.
    fn finish(mut self) -> Ruleset {
        let established = "ct state established,related accept".to_string();
        for dir in [Dir::Ingress, Dir::Egress] {
            let mut rules = self.jumps.remove(&dir).unwrap_or_default();
            rules.extend(self.drops.remove(&dir).unwrap_or_default());
            match self.drop_log(&drop_prefix(DEFAULT_DENY, dir == Dir::Ingress)) {
                // Only identified drops log the final one (`--v>=2` alone never did).
                DropLog::Inline(log) if self.options.identify_drops => {
                    rules.push(format!("{log} drop"));
                }
                DropLog::Limited(log) => {
                    rules.push(log);
                    rules.push("drop".into());
                }
                _ => rules.push("drop".into()),
            }
            self.chain(&dir.policies_chain(), None, rules);
        }
        let dispatch = |dir: Dir| -> Vec<String> {
            IpFamily::ALL
                .iter()
                .map(|fam| {
                    format!(
                        "{} {} @{} jump {}",
                        ip_kw(*fam),
                        dir.own_side(),
                        dir.isolated_set(*fam),
                        dir.policies_chain()
                    )
                })
                .collect()
        };
        let hook = |hook: &str, priority| {
            Some(Hook {
                hook: hook.into(),
                priority,
            })
        };
        let mut ingress = vec![established.clone()];
        ingress.extend(dispatch(Dir::Ingress));
        self.chain("ingress", hook("forward", 0), ingress);
        let mut egress = vec![established.clone()];
        egress.extend(dispatch(Dir::Egress));
        self.chain("egress", hook("forward", -1), egress);
        let mut input = vec![
            established,
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept"
                .to_string(),
        ];
        input.extend(dispatch(Dir::Egress));
        self.chain("egress-input", hook("input", -1), input);
        self.out
    }
}

#[cfg(test)]
mod tests;
