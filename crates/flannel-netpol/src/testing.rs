//! Test helpers: a cluster shaped like the Kubernetes e2e netpol model, and an evaluator of
//! the compiled rules, so semantics are tested as verdicts and not only as rule texts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::cluster::ClusterState;
use crate::compile::compile;
use crate::model::{NamedPort, NamespaceInfo, PodInfo, Policy, Proto};
use crate::ruleset::{Element, Ruleset};

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod serving TCP and UDP 80 and 81 under the e2e port names.
pub fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> PodInfo {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for proto in [Proto::Tcp, Proto::Udp] {
            ports.push(NamedPort {
                name: format!("serve-{port}-{proto}"),
                protocol: proto,
                port,
            });
        }
    }
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("pod", name)]),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        node: Some(node.into()),
        ports,
    }
}

/// The e2e model: namespaces x, y, z (labelled `ns=<name>` and with
/// `kubernetes.io/metadata.name`), pods a, b, c in each; a and b on n1, c on n2. Pod IPs:
/// `10.0.<ns>.<pod>` and `fd00::<ns>:<pod>` with ns x=1,y=2,z=3 and pod a=1,b=2,c=3.
pub fn e2e_state() -> ClusterState {
    let mut s = ClusterState::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        s.upsert_namespace(NamespaceInfo {
            name: ns.to_string(),
            labels: labels(&[("ns", ns), ("kubernetes.io/metadata.name", ns)]),
        });
        for (p, name) in ["a", "b", "c"].iter().enumerate() {
            let node = if *name == "c" { "n2" } else { "n1" };
            let v4 = format!("10.0.{}.{}", n + 1, p + 1);
            let v6 = format!("fd00::{}:{}", n + 1, p + 1);
            s.upsert_pod(pod(ns, name, node, &[&v4, &v6]));
        }
    }
    s
}

/// Parses a NetworkPolicy written as JSON and adds it to the state.
pub fn add_policy(state: &mut ClusterState, json: serde_json::Value) -> Vec<String> {
    let np = serde_json::from_value(json).expect("a NetworkPolicy");
    let (p, problems) = Policy::from_api(&np);
    let texts = problems.iter().map(ToString::to_string).collect();
    state.upsert_policy(p, problems);
    texts
}

/// A pod of the state by `ns/name`.
pub fn find<'a>(state: &'a ClusterState, key: &str) -> &'a PodInfo {
    state.pods().find(|p| p.key() == key).expect("pod exists")
}

/// A new connection's first packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub dport: u16,
}

/// Whether `from` may open a connection to `to` (first IP of the given family of each):
/// egress decided on `from`'s node, ingress on `to`'s.
pub fn allowed(
    state: &ClusterState,
    from: &str,
    to: &str,
    proto: Proto,
    port: u16,
    v6: bool,
) -> bool {
    let (f, t) = (find(state, from), find(state, to));
    let pick = |p: &PodInfo| *p.ips.iter().find(|ip| ip.is_ipv6() == v6).unwrap();
    let pkt = Packet {
        src: pick(f),
        dst: pick(t),
        proto,
        dport: port,
    };
    let src_rules = compile(state, f.node.as_deref().unwrap());
    let dst_rules = compile(state, t.node.as_deref().unwrap());
    verdict(&src_rules, "egress", &pkt) && verdict(&dst_rules, "ingress", &pkt)
}

/// The verdict of a base chain (policy accept) for a new connection's packet.
pub fn verdict(rs: &Ruleset, chain: &str, pkt: &Packet) -> bool {
    eval(rs, chain, pkt, 0).unwrap_or(true)
}

fn in_set(rs: &Ruleset, set: &str, el: &Element) -> bool {
    let set = rs
        .sets
        .get(set.trim_start_matches('@'))
        .unwrap_or_else(|| panic!("rule references missing set {set}"));
    set.elements.iter().any(|e| match (e, el) {
        (Element::Range(r), Element::Addr(a)) => {
            a.is_ipv6() == r.first.is_ipv6() && r.first <= *a && *a <= r.last
        }
        (e, el) => e == el,
    })
}

/// Interprets the subset of nft that `compile` writes. `None` = fell off the chain.
fn eval(rs: &Ruleset, chain: &str, pkt: &Packet, depth: usize) -> Option<bool> {
    assert!(depth < 8, "jump loop");
    let def = rs
        .chains
        .get(chain)
        .unwrap_or_else(|| panic!("missing chain {chain}"));
    'rules: for rule in &def.rules {
        let t: Vec<&str> = rule.split_whitespace().collect();
        let mut i = 0;
        while i < t.len() {
            let ok = match t[i] {
                // A first packet is neither established nor ICMPv6 ND.
                "ct" | "icmpv6" => false,
                "ip" | "ip6" if (t[i] == "ip6") != pkt.src.is_ipv6() => false,
                "ip" | "ip6" if t.get(i + 2) == Some(&".") => {
                    let el = Element::Named {
                        addr: pkt.dst,
                        proto: pkt.proto,
                        port: pkt.dport,
                    };
                    // ip daddr . meta l4proto . th dport @set
                    let hit = in_set(rs, t[i + 8], &el);
                    i += 9;
                    hit
                }
                "ip" | "ip6" => {
                    let addr = if t[i + 1] == "saddr" {
                        pkt.src
                    } else {
                        pkt.dst
                    };
                    let hit = in_set(rs, t[i + 2], &Element::Addr(addr));
                    i += 3;
                    hit
                }
                "meta" => {
                    i += 3;
                    Proto::from_nft(t[i - 1]) == Some(pkt.proto)
                }
                "th" => {
                    i += 3;
                    let (a, b) = t[i - 1].split_once('-').unwrap_or((t[i - 1], t[i - 1]));
                    (a.parse().unwrap()..=b.parse().unwrap()).contains(&pkt.dport)
                }
                "counter" | "log" => {
                    i += 3;
                    true
                }
                "accept" => return Some(true),
                "drop" => return Some(false),
                "jump" => match eval(rs, t[i + 1], pkt, depth + 1) {
                    Some(v) => return Some(v),
                    None => continue 'rules,
                },
                other => panic!("evaluator does not know {other:?} in {rule:?}"),
            };
            if !ok {
                continue 'rules;
            }
        }
    }
    None
}

/// The benchmark shape of issue 17: 10 namespaces, 1000 pods on n1 and 1000 on n2 (labels
/// `app=app<i % 50>`), 500 policies each selecting one app in one namespace, allowing two other
/// apps of a team's namespaces and an ipBlock with except on TCP 80 and a named port, and
/// egress UDP 53 anywhere.
pub fn scale_state() -> ClusterState {
    let mut s = ClusterState::new();
    for n in 0..10 {
        s.upsert_namespace(NamespaceInfo {
            name: format!("ns{n}"),
            labels: labels(&[("team", &format!("t{}", n % 3))]),
        });
    }
    for i in 0..2000u32 {
        let node = if i < 1000 { "n1" } else { "n2" };
        let ip = format!("10.{}.{}.{}", i / 1000, (i % 1000) / 250, i % 250 + 1);
        let mut p = pod(&format!("ns{}", i % 10), &format!("p{i}"), node, &[&ip]);
        p.labels.insert("app".into(), format!("app{}", i % 50));
        s.upsert_pod(p);
    }
    for k in 0..500u32 {
        add_policy(
            &mut s,
            serde_json::json!({"metadata": {"namespace": format!("ns{}", k % 10), "name": format!("pol{k}")}, "spec": {
                "podSelector": {"matchLabels": {"app": format!("app{}", k % 50)}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 3)}},
                                       "podSelector": {"matchExpressions": [{"key": "app", "operator": "In",
                                           "values": [format!("app{}", (k + 1) % 50), format!("app{}", (k + 2) % 50)]}]}},
                                      {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                             "ports": [{"port": 80}, {"port": "serve-81-tcp"}]}],
                "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}}),
        );
    }
    s
}
