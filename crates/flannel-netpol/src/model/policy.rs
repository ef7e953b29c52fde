//! The validated form of a `networking.k8s.io/v1` NetworkPolicy.
//!
//! [`Policy::from_api`] never fails: it returns the policy enforced as far as it is valid
//! plus the [`PolicyProblem`]s found, each naming the field path and the value. Invalid parts
//! always make the policy allow *less*, never more (fail closed):
//! * an invalid `spec.podSelector` selects **every pod of the policy's namespace** and the
//!   policy allows nothing (for the directions it isolates);
//! * an invalid peer (bad CIDR or except, bad selector, ipBlock combined with a selector, an
//!   empty peer) is dropped from its rule; a rule whose peers were all invalid matches nothing;
//! * an invalid port entry (unknown protocol, port out of range, bad endPort) is dropped from
//!   its rule; a rule whose ports were all invalid matches nothing;
//! * an unknown `policyTypes` entry makes the policy isolate both directions.
//!
//! Valid semantics kept exactly: an absent or empty `from`/`to` means all peers, absent or
//! empty `ports` all ports; `ingress: []` (or Ingress in policyTypes without rules) denies all
//! ingress while `- {}` allows all; `policyTypes` defaults to Ingress, plus Egress when the
//! policy has an `egress` section.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Proto;
use crate::selector::{Selector, SelectorError};

/// One problem found in a policy: which field, what value, what is wrong. Displays as
/// `spec.ingress[0].from[1].ipBlock.cidr: "10.0.0/8" is not a CIDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The field path inside the NetworkPolicy (`spec.ingress[0].ports[1].port`).
    pub field: String,
    /// The offending value as it would appear in YAML/JSON (`"10.0.0/8"`, `70000`).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.field, self.value, self.reason)
    }
}

impl std::error::Error for PolicyProblem {}

impl PolicyProblem {
    fn new(field: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Self {
        PolicyProblem {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    fn selector(field: &str, e: &SelectorError) -> Self {
        match e {
            SelectorError::UnknownOperator { index, operator } => PolicyProblem::new(
                format!("{field}.matchExpressions[{index}].operator"),
                format!("{operator:?}"),
                "is not a valid selector operator (In, NotIn, Exists, DoesNotExist)",
            ),
            SelectorError::MissingValues { index, operator } => PolicyProblem::new(
                format!("{field}.matchExpressions[{index}].values"),
                "[]",
                format!("must be non-empty for operator {operator}"),
            ),
            SelectorError::UnexpectedValues { index, operator } => PolicyProblem::new(
                format!("{field}.matchExpressions[{index}].values"),
                "[...]",
                format!("must be empty for operator {operator}"),
            ),
        }
    }
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Namespace (the pods it selects live there).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which pods of the namespace it selects (see the module doc for the invalid case).
    pub pod_selector: Selector,
    /// `Some` when the policy isolates ingress: the rules allowing it (empty = deny all).
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates egress: the rules allowing it (empty = deny all).
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: traffic matching any peer AND any port is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Sources (ingress) or destinations (egress).
    pub peers: Peers,
    /// Destination ports.
    pub ports: Ports,
}

/// The peers of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peers {
    /// `from`/`to` absent or empty: everyone.
    Any,
    /// These peers only (empty after dropping invalid ones: no one).
    Only(Vec<Peer>),
}

/// The ports of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ports {
    /// `ports` absent or empty: every port and protocol.
    Any,
    /// These ports only (empty after dropping invalid ones: none).
    Only(Vec<PortMatch>),
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods chosen by selectors: `pods` in the namespaces of `namespaces` (both given = AND).
    Pods {
        /// Which namespaces.
        namespaces: NamespaceScope,
        /// Which pods in them (`{}` = all).
        pods: Selector,
    },
    /// An `ipBlock`.
    Block(IpBlock),
}

/// Where a pod peer's pods are looked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    Own,
    /// Namespaces whose labels match (`{}` = all namespaces).
    Matching(Selector),
}

/// An `ipBlock`: `cidr` minus every `except`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    /// The block (host bits cleared).
    pub cidr: IpNet,
    /// Parts excluded; each inside `cidr`, same family.
    pub except: Vec<IpNet>,
}

/// One entry of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// Every port of the protocol (`port` absent).
    AllOf(Proto),
    /// `port` .. `endPort` (inclusive; `first == last` without endPort).
    Range {
        /// Protocol.
        proto: Proto,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// A named port, resolved on each destination pod.
    Named {
        /// Protocol the container port must have.
        proto: Proto,
        /// The container port's name.
        name: String,
    },
}

impl Policy {
    /// Validates a NetworkPolicy (see the module doc for how problems are handled).
    pub fn from_api(np: &NetworkPolicy) -> (Policy, Vec<PolicyProblem>) {
        let mut problems = Vec::new();
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let spec = np.spec.clone().unwrap_or_default();
        let (pod_selector, selector_valid) = match parse_selector(
            "spec.podSelector",
            spec.pod_selector.as_ref(),
            &mut problems,
        ) {
            Some(s) => (s, true),
            None => (Selector::everything(), false),
        };
        let (ingress_on, egress_on) = policy_types(
            spec.policy_types.as_deref(),
            spec.egress.is_some(),
            &mut problems,
        );
        let ingress = (ingress_on && selector_valid).then(|| {
            let rules = spec.ingress.iter().flatten();
            let parts = rules.map(|r| (r.from.as_deref(), r.ports.as_deref()));
            parse_rules("spec.ingress", "from", parts, &mut problems)
        });
        let egress = (egress_on && selector_valid).then(|| {
            let rules = spec.egress.iter().flatten();
            let parts = rules.map(|r| (r.to.as_deref(), r.ports.as_deref()));
            parse_rules("spec.egress", "to", parts, &mut problems)
        });
        // An invalid podSelector still isolates the directions the policy names.
        let ingress = ingress.or_else(|| ingress_on.then(Vec::new));
        let egress = egress.or_else(|| egress_on.then(Vec::new));
        let policy = Policy {
            namespace,
            name,
            pod_selector,
            ingress,
            egress,
        };
        (policy, problems)
    }

    /// `namespace/name`, the policy's identity and its nft objects' comment.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A selector, or `None` (with a problem recorded) when invalid. Absent = `{}`.
fn parse_selector(
    field: &str,
    api: Option<&LabelSelector>,
    problems: &mut Vec<PolicyProblem>,
) -> Option<Selector> {
    match api {
        None => Some(Selector::everything()),
        Some(s) => match Selector::from_api(s) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(PolicyProblem::selector(field, &e));
                None
            }
        },
    }
}

/// Which directions the policy isolates: the listed types, or the API's defaulting (Ingress,
/// plus Egress when there is an egress section). An unknown type isolates both.
fn policy_types(
    types: Option<&[String]>,
    has_egress: bool,
    problems: &mut Vec<PolicyProblem>,
) -> (bool, bool) {
    let Some(types) = types.filter(|t| !t.is_empty()) else {
        return (true, has_egress);
    };
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                problems.push(PolicyProblem::new(
                    format!("spec.policyTypes[{i}]"),
                    format!("{other:?}"),
                    "is not Ingress or Egress (both are enforced)",
                ));
                return (true, true);
            }
        }
    }
    (ingress, egress)
}

/// The rules of one section (`spec.ingress` or `spec.egress`).
fn parse_rules<'a>(
    section: &str,
    peers_key: &str,
    rules: impl Iterator<
        Item = (
            Option<&'a [NetworkPolicyPeer]>,
            Option<&'a [NetworkPolicyPort]>,
        ),
    >,
    problems: &mut Vec<PolicyProblem>,
) -> Vec<Rule> {
    rules
        .enumerate()
        .map(|(i, (peers, ports))| {
            parse_rule(
                &format!("{section}[{i}]"),
                peers_key,
                peers,
                ports,
                problems,
            )
        })
        .collect()
}

fn parse_rule(
    field: &str,
    peers_key: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    problems: &mut Vec<PolicyProblem>,
) -> Rule {
    let peers = match peers {
        None | Some([]) => Peers::Any,
        Some(list) => Peers::Only(
            list.iter()
                .enumerate()
                .filter_map(|(j, p)| {
                    parse_peer(&format!("{field}.{peers_key}[{j}]"), p)
                        .map_err(|e| problems.push(e))
                        .ok()
                })
                .collect(),
        ),
    };
    let ports = match ports {
        None | Some([]) => Ports::Any,
        Some(list) => Ports::Only(
            list.iter()
                .enumerate()
                .filter_map(|(k, p)| {
                    parse_port(&format!("{field}.ports[{k}]"), p)
                        .map_err(|e| problems.push(e))
                        .ok()
                })
                .collect(),
        ),
    };
    Rule { peers, ports }
}

fn parse_peer(field: &str, peer: &NetworkPolicyPeer) -> Result<Peer, PolicyProblem> {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    if let Some(block) = &peer.ip_block {
        if selectors {
            return Err(PolicyProblem::new(
                field,
                "{ipBlock, podSelector/namespaceSelector}",
                "may not combine ipBlock with a selector",
            ));
        }
        return parse_block(&format!("{field}.ipBlock"), block).map(Peer::Block);
    }
    if !selectors {
        return Err(PolicyProblem::new(
            field,
            "{}",
            "must specify podSelector, namespaceSelector or ipBlock",
        ));
    }
    let one = |key: &str, s: &LabelSelector| {
        Selector::from_api(s).map_err(|e| PolicyProblem::selector(&format!("{field}.{key}"), &e))
    };
    let pods = match &peer.pod_selector {
        Some(s) => one("podSelector", s)?,
        None => Selector::everything(),
    };
    let namespaces = match &peer.namespace_selector {
        Some(s) => NamespaceScope::Matching(one("namespaceSelector", s)?),
        None => NamespaceScope::Own,
    };
    Ok(Peer::Pods { namespaces, pods })
}

fn parse_block(field: &str, block: &IPBlock) -> Result<IpBlock, PolicyProblem> {
    let cidr: IpNet = block.cidr.parse().map_err(|_| {
        PolicyProblem::new(
            format!("{field}.cidr"),
            format!("{:?}", block.cidr),
            "is not a CIDR",
        )
    })?;
    let cidr = cidr.trunc();
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let field = format!("{field}.except[{i}]");
        let net: IpNet = e
            .parse()
            .map_err(|_| PolicyProblem::new(&field, format!("{e:?}"), "is not a CIDR"))?;
        let net = net.trunc();
        if !cidr.contains(&net) {
            return Err(PolicyProblem::new(
                &field,
                format!("{e:?}"),
                format!("is not inside cidr {cidr}"),
            ));
        }
        except.push(net);
    }
    Ok(IpBlock { cidr, except })
}

fn parse_port(field: &str, port: &NetworkPolicyPort) -> Result<PortMatch, PolicyProblem> {
    let proto = match port.protocol.as_deref() {
        None => Proto::Tcp,
        Some(p) => Proto::from_api(p).ok_or_else(|| {
            PolicyProblem::new(
                format!("{field}.protocol"),
                format!("{p:?}"),
                "is not TCP, UDP or SCTP",
            )
        })?,
    };
    let number = |field: String, n: i32| {
        u16::try_from(n).ok().filter(|n| *n != 0).ok_or_else(|| {
            PolicyProblem::new(field, n.to_string(), "is not a port number (1-65535)")
        })
    };
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::AllOf(proto)),
        (None, Some(e)) => Err(PolicyProblem::new(
            format!("{field}.endPort"),
            e.to_string(),
            "requires a numeric port",
        )),
        (Some(IntOrString::String(name)), None) => Ok(PortMatch::Named {
            proto,
            name: name.clone(),
        }),
        (Some(IntOrString::String(_)), Some(e)) => Err(PolicyProblem::new(
            format!("{field}.endPort"),
            e.to_string(),
            "may not be used with a named port",
        )),
        (Some(IntOrString::Int(n)), end) => {
            let first = number(format!("{field}.port"), *n)?;
            let last = match end {
                None => first,
                Some(e) => number(format!("{field}.endPort"), e)
                    .ok()
                    .filter(|e| *e >= first)
                    .ok_or_else(|| {
                        PolicyProblem::new(
                            format!("{field}.endPort"),
                            e.to_string(),
                            format!("is not a port number between port {first} and 65535"),
                        )
                    })?,
            };
            Ok(PortMatch::Range { proto, first, last })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy from YAML-like JSON, the way users write them.
    pub(crate) fn np(json: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json).expect("a NetworkPolicy")
    }

    fn parse(json: serde_json::Value) -> (Policy, Vec<String>) {
        let (p, problems) = Policy::from_api(&np(json));
        (p, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn policy_types_default_from_the_sections() {
        let (p, problems) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}}
        }));
        assert!(problems.is_empty());
        assert_eq!(p.ingress, Some(vec![]), "no rules: deny all ingress");
        assert_eq!(p.egress, None, "no egress section: egress unaffected");
        let (p, _) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}, "egress": []}
        }));
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, Some(vec![]));
        let (p, _) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}
        }));
        assert_eq!(p.ingress, None, "listed types win over sections");
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn empty_rule_allows_all_and_empty_lists_mean_any() {
        let (p, _) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}, "ingress": [{}, {"from": [], "ports": []}]}
        }));
        let any = Rule {
            peers: Peers::Any,
            ports: Ports::Any,
        };
        assert_eq!(p.ingress, Some(vec![any.clone(), any]));
    }

    #[test]
    fn peers_and_ports_parse() {
        let (p, problems) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"namespaceSelector": {}},
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                    {"ipBlock": {"cidr": "10.0.0.7/8", "except": ["10.1.0.0/16"]}}
                ],
                "ports": [
                    {"port": 80},
                    {"protocol": "UDP", "port": 1000, "endPort": 2000},
                    {"protocol": "SCTP"},
                    {"port": "serve-81-tcp"}
                ]
            }]}
        }));
        assert!(problems.is_empty(), "{problems:?}");
        let rule = &p.ingress.unwrap()[0];
        let Peers::Only(peers) = &rule.peers else {
            panic!("peers expected")
        };
        assert_eq!(peers.len(), 4);
        assert!(
            matches!(&peers[0], Peer::Pods { namespaces: NamespaceScope::Own, pods } if !pods.is_everything())
        );
        assert!(
            matches!(&peers[1], Peer::Pods { namespaces: NamespaceScope::Matching(s), pods } if s.is_everything() && pods.is_everything())
        );
        assert!(
            matches!(&peers[2], Peer::Pods { namespaces: NamespaceScope::Matching(s), .. } if !s.is_everything())
        );
        assert_eq!(
            peers[3],
            Peer::Block(IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()]
            })
        );
        assert_eq!(
            rule.ports,
            Ports::Only(vec![
                PortMatch::Range {
                    proto: Proto::Tcp,
                    first: 80,
                    last: 80
                },
                PortMatch::Range {
                    proto: Proto::Udp,
                    first: 1000,
                    last: 2000
                },
                PortMatch::AllOf(Proto::Sctp),
                PortMatch::Named {
                    proto: Proto::Tcp,
                    name: "serve-81-tcp".into()
                },
            ])
        );
    }

    #[test]
    fn invalid_parts_are_dropped_and_named() {
        let (p, problems) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}, "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": "10.0.0/8"}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}},
                    {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}},
                    {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
                    {}
                ],
                "ports": [
                    {"protocol": "ICMP", "port": 1},
                    {"port": 70000},
                    {"port": 0},
                    {"port": 90, "endPort": 80},
                    {"port": "http", "endPort": 90}
                ]
            }]}
        }));
        assert_eq!(
            problems,
            vec![
                "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0/8\" is not a CIDR",
                "spec.ingress[0].from[1].ipBlock.except[0]: \"11.0.0.0/16\" is not inside cidr 10.0.0.0/8",
                "spec.ingress[0].from[2].podSelector.matchExpressions[0].operator: \"Gt\" is not a valid selector operator (In, NotIn, Exists, DoesNotExist)",
                "spec.ingress[0].from[3]: {ipBlock, podSelector/namespaceSelector} may not combine ipBlock with a selector",
                "spec.ingress[0].from[4]: {} must specify podSelector, namespaceSelector or ipBlock",
                "spec.ingress[0].ports[0].protocol: \"ICMP\" is not TCP, UDP or SCTP",
                "spec.ingress[0].ports[1].port: 70000 is not a port number (1-65535)",
                "spec.ingress[0].ports[2].port: 0 is not a port number (1-65535)",
                "spec.ingress[0].ports[3].endPort: 80 is not a port number between port 90 and 65535",
                "spec.ingress[0].ports[4].endPort: 90 may not be used with a named port",
            ]
        );
        assert_eq!(
            p.ingress,
            Some(vec![Rule {
                peers: Peers::Only(vec![]),
                ports: Ports::Only(vec![])
            }]),
            "all-invalid lists match nothing, never everything"
        );
    }

    #[test]
    fn invalid_pod_selector_selects_the_namespace_and_allows_nothing() {
        let (p, problems) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {
                "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{}], "egress": [{}]
            }
        }));
        assert_eq!(
            problems,
            vec![
                "spec.podSelector.matchExpressions[0].values: [] must be non-empty for operator In"
            ]
        );
        assert!(p.pod_selector.is_everything());
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn unknown_policy_type_isolates_both_directions() {
        let (p, problems) = parse(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Sideways"], "ingress": [{}]}
        }));
        assert_eq!(
            problems,
            vec!["spec.policyTypes[1]: \"Sideways\" is not Ingress or Egress (both are enforced)"]
        );
        assert_eq!(p.ingress.as_ref().map(Vec::len), Some(1));
        assert_eq!(p.egress, Some(vec![]));
    }
}
