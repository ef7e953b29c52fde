//! Semantics of the compiled rules, checked as verdicts through the test evaluator (and a few
//! rule texts where the shape itself matters).

use serde_json::json;

use super::*;
use crate::model::Proto::{Sctp, Tcp, Udp};
use crate::testing::{add_policy, allowed, e2e_state, find, pod};

const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// The reachability matrix for one port/protocol: the pairs (from, to) that connect.
fn reachable(state: &ClusterState, proto: Proto, port: u16, v6: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for from in PODS {
        for to in PODS {
            if from != to && allowed(state, from, to, proto, port, v6) {
                out.push((from.to_string(), to.to_string()));
            }
        }
    }
    out
}

/// The elements of the set of kind `prefix` (`peers`, `blocks`) of family `v4`/`v6` the
/// chain `chain` refers to (exactly one such set).
fn referenced_set(rs: &Ruleset, chain: &str, prefix: &str, fam: &str) -> Vec<String> {
    let names: BTreeSet<&str> = rs.chains[chain]
        .rules
        .iter()
        .flat_map(|r| r.split(' '))
        .filter_map(|w| w.strip_prefix('@'))
        .filter(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(fam))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names.first().unwrap();
    rs.sets[*name]
        .elements
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Pairs that do NOT connect, the short way to state an expectation.
fn blocked(state: &ClusterState, proto: Proto, port: u16, v6: bool) -> Vec<String> {
    let ok = reachable(state, proto, port, v6);
    let mut out = Vec::new();
    for from in PODS {
        for to in PODS {
            if from != to && !ok.contains(&(from.to_string(), to.to_string())) {
                out.push(format!("{from}->{to}"));
            }
        }
    }
    out.sort();
    out
}

/// Every pair into `to` except from `to` itself and from the `allowed` pods, sorted.
fn to_pod(to: &str, allowed: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = PODS
        .iter()
        .filter(|f| **f != to && !allowed.contains(f))
        .map(|f| format!("{f}->{to}"))
        .collect();
    v.sort();
    v
}

fn meta(name: &str) -> serde_json::Value {
    json!({"namespace": "x", "name": name})
}

#[test]
fn no_policy_allows_everything() {
    let s = e2e_state();
    assert!(blocked(&s, Tcp, 80, false).is_empty());
    let rs = compile(&s, "n1");
    assert!(rs.policies.is_empty());
    assert_eq!(rs.chains["ingress-policies"].rules, vec!["drop"]);
}

#[test]
fn deny_all_ingress_isolates_only_selected_pods() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("deny"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": []}}),
    );
    assert_eq!(blocked(&s, Tcp, 80, false), to_pod("x/a", &[]));
    assert_eq!(blocked(&s, Udp, 81, true), to_pod("x/a", &[]), "IPv6 too");
    // Egress is not affected: x/a still reaches everyone.
    assert!(allowed(&s, "x/a", "y/b", Tcp, 80, false));
}

#[test]
fn empty_rule_allows_all_and_policies_are_additive() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("deny"), "spec": {"podSelector": {}, "ingress": []}}),
    );
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80, false));
    add_policy(
        &mut s,
        json!({"metadata": meta("allow-b"), "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]}}),
    );
    assert!(
        allowed(&s, "y/a", "x/b", Tcp, 80, false),
        "second policy adds"
    );
    assert!(allowed(&s, "y/a", "x/b", Sctp, 9, true));
    assert!(
        !allowed(&s, "y/a", "x/a", Tcp, 80, false),
        "x/a still denied"
    );
    assert!(!allowed(&s, "y/a", "x/c", Tcp, 80, false), "x/c on n2 too");
}

#[test]
fn pod_and_namespace_selectors_in_one_peer_are_anded() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("and"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                   "podSelector": {"matchLabels": {"pod": "b"}}}]}]}}),
    );
    assert_eq!(blocked(&s, Tcp, 80, false), to_pod("x/a", &["y/b"]));
    // Separate peers are ORed.
    add_policy(
        &mut s,
        json!({"metadata": meta("and"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                  {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}),
    );
    assert_eq!(
        blocked(&s, Tcp, 80, false),
        to_pod("x/a", &["y/a", "y/b", "y/c", "x/b"])
    );
}

#[test]
fn empty_namespace_selector_means_all_namespaces_and_pod_selector_alone_own_namespace() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]}}),
    );
    assert_eq!(
        blocked(&s, Tcp, 80, false),
        to_pod("x/a", &["x/c", "y/c", "z/c"])
    );
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}}),
    );
    assert_eq!(blocked(&s, Tcp, 80, false), to_pod("x/a", &["x/c"]));
}

#[test]
fn match_expressions_select_peers() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x", "y"]}]},
                                   "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}}]}]}}),
    );
    assert_eq!(blocked(&s, Tcp, 80, false), to_pod("x/a", &["z/a", "z/b"]));
}

#[test]
fn ip_block_with_except() {
    let mut s = e2e_state();
    // 10.0.0.0/16 minus 10.0.2.0/24 (namespace y) minus z/b's address.
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24", "10.0.3.2/32"]}},
                                  {"ipBlock": {"cidr": "fd00::3:0/112"}}]}]}}),
    );
    assert_eq!(
        blocked(&s, Tcp, 80, false),
        to_pod("x/a", &["x/b", "x/c", "z/a", "z/c"])
    );
    assert_eq!(
        blocked(&s, Tcp, 80, true),
        to_pod("x/a", &["z/a", "z/b", "z/c"]),
        "the IPv6 block holds namespace z"
    );
    let rs = compile(&s, "n1");
    let pid = policy_id("x", "p");
    let peers = referenced_set(&rs, &format!("{pid}-in"), "blocks", "v4");
    assert_eq!(
        rs.sets
            .values()
            .filter(|s| matches!(s.kind, SetKind::Interval(_)))
            .count(),
        2
    );
    assert_eq!(
        peers,
        vec!["10.0.0.0/23", "10.0.3.0/31", "10.0.3.3-10.0.255.255"]
    );
}

#[test]
fn ports_protocols_and_ranges() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 1010},
                                   {"protocol": "SCTP"}]}]}}),
    );
    assert!(allowed(&s, "y/b", "x/a", Tcp, 80, false));
    assert!(!allowed(&s, "y/b", "x/a", Tcp, 81, false));
    assert!(
        !allowed(&s, "y/b", "x/a", Udp, 80, false),
        "TCP is the default"
    );
    assert!(allowed(&s, "y/b", "x/a", Udp, 1000, true));
    assert!(allowed(&s, "y/b", "x/a", Udp, 1010, false));
    assert!(!allowed(&s, "y/b", "x/a", Udp, 1011, false));
    assert!(
        allowed(&s, "y/b", "x/a", Sctp, 4242, false),
        "all SCTP ports"
    );
    let rs = compile(&s, "n1");
    let chain = &rs.chains[&format!("{}-in", policy_id("x", "p"))];
    assert_eq!(
        chain.rules,
        vec![
            "meta l4proto tcp th dport 80 accept",
            "meta l4proto udp th dport 1000-1010 accept",
            "meta l4proto sctp accept"
        ]
    );
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let mut s = e2e_state();
    // x/b names its port 8080 "serve-80-tcp": the same name, another number.
    let mut b = find(&s, "x/b").clone();
    b.ports.retain(|p| p.name != "serve-80-tcp");
    b.ports.push(crate::model::NamedPort {
        name: "serve-80-tcp".into(),
        protocol: Tcp,
        port: 8080,
    });
    s.upsert_pod(b);
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}}),
    );
    assert!(allowed(&s, "y/a", "x/a", Tcp, 80, false));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 8080, false));
    assert!(allowed(&s, "y/a", "x/b", Tcp, 8080, true));
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80, false));
    assert!(
        !allowed(&s, "y/a", "x/a", Udp, 80, false),
        "the name says TCP"
    );
    // With UDP the name does not match a TCP container port.
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": "serve-80-tcp"}]}]}}),
    );
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80, false));
    assert!(!allowed(&s, "y/a", "x/a", Udp, 80, false));
}

#[test]
fn egress_with_named_ports_and_policy_types_defaulting() {
    let mut s = e2e_state();
    // An egress section without policyTypes: Ingress (no rules: deny) and Egress.
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}}),
    );
    assert!(allowed(&s, "x/a", "y/c", Udp, 81, false));
    assert!(allowed(&s, "x/a", "y/b", Udp, 81, true));
    assert!(!allowed(&s, "x/a", "y/b", Udp, 80, false));
    assert!(!allowed(&s, "x/a", "z/b", Udp, 81, false));
    assert!(
        !allowed(&s, "y/a", "x/a", Udp, 81, false),
        "ingress isolated too"
    );
    assert!(allowed(&s, "x/b", "z/b", Tcp, 80, false), "x/b unaffected");
    // policyTypes [Egress] only: ingress open again.
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.3.0/24"}}]}]}}),
    );
    assert!(allowed(&s, "y/a", "x/a", Udp, 81, false));
    assert!(allowed(&s, "x/a", "z/c", Tcp, 80, false));
    assert!(!allowed(&s, "x/a", "y/c", Tcp, 80, false));
    assert!(
        !allowed(&s, "x/a", "z/c", Tcp, 80, true),
        "no IPv6 block given"
    );
}

#[test]
fn egress_isolation_blocks_the_pod_to_its_own_node_through_input() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
    );
    let rs = compile(&s, "n1");
    let pkt = crate::testing::Packet {
        src: "10.0.1.1".parse().unwrap(),
        dst: "198.18.0.1".parse().unwrap(),
        proto: Tcp,
        dport: 10250,
    };
    assert!(!crate::testing::verdict(&rs, "egress-input", &pkt));
    let other = crate::testing::Packet {
        src: "10.0.2.1".parse().unwrap(),
        ..pkt
    };
    assert!(crate::testing::verdict(&rs, "egress-input", &other));
}

#[test]
fn invalid_parts_fail_closed_without_breaking_other_policies() {
    let mut s = e2e_state();
    let problems = add_policy(
        &mut s,
        json!({"metadata": meta("bad"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0/8"}}]}, {"ports": [{"port": 99999}]}]}}),
    );
    assert_eq!(problems.len(), 2);
    add_policy(
        &mut s,
        json!({"metadata": meta("good"), "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}}),
    );
    assert_eq!(blocked(&s, Tcp, 80, false), {
        let mut v = to_pod("x/a", &[]);
        v.extend(to_pod("x/b", &["x/c"]));
        v.sort();
        v
    });
    // An invalid podSelector isolates the whole namespace and allows nothing.
    add_policy(
        &mut s,
        json!({"metadata": meta("bad-selector"), "spec": {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Bogus"}]},
            "ingress": [{}]}}),
    );
    for to in ["x/a", "x/b", "x/c"] {
        assert!(!allowed(&s, "y/a", to, Tcp, 80, false), "{to}");
    }
    assert!(allowed(&s, "x/a", "y/a", Tcp, 80, false));
}

#[test]
fn only_local_pods_are_selected_and_compile_is_deterministic() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("c-only"), "spec": {"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": []}}),
    );
    let n1 = compile(&s, "n1");
    assert!(n1.policies.is_empty(), "x/c is on n2");
    let n2 = compile(&s, "n2");
    assert_eq!(n2.policies.len(), 1);
    assert_eq!(n2, compile(&s.clone(), "n2"));
    let pid = policy_id("x", "c-only");
    let sel: Vec<String> = n2.sets[&format!("{pid}-sel-v4")]
        .elements
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(sel, vec!["10.0.1.3"]);
    assert_eq!(
        n2.chains["ingress-policies"].rules,
        vec![
            format!("ip daddr @{pid}-sel-v4 jump {pid}-in"),
            format!("ip6 daddr @{pid}-sel-v6 jump {pid}-in"),
            format!("ip daddr @{pid}-sel-v4 counter name \"{pid}-drop-in\" drop"),
            format!("ip6 daddr @{pid}-sel-v6 counter name \"{pid}-drop-in\" drop"),
            "drop".to_string(),
        ]
    );
    let logged = compile_with(
        &s,
        "n2",
        &CompileOptions {
            nflog_group: Some(100),
            ..CompileOptions::default()
        },
    );
    assert!(logged.chains["ingress-policies"].rules[2].ends_with("log group 100 drop"));
    assert_eq!(logged.chains["ingress-policies"].rules[4], "drop");
    let identified = compile_with(
        &s,
        "n2",
        &CompileOptions {
            nflog_group: Some(100),
            identify_drops: true,
            drop_log_rate: None,
        },
    );
    let identity = &identified.policies[&pid];
    assert_eq!(
        identified.chains["ingress-policies"].rules,
        vec![
            format!("ip daddr @{pid}-sel-v4 jump {pid}-in"),
            format!("ip6 daddr @{pid}-sel-v6 jump {pid}-in"),
            format!(
                "ip daddr @{pid}-sel-v4 counter name \"{pid}-drop-in\" log prefix \"{identity} ingress\" group 100 drop"
            ),
            format!(
                "ip6 daddr @{pid}-sel-v6 counter name \"{pid}-drop-in\" log prefix \"{identity} ingress\" group 100 drop"
            ),
            "log prefix \"default deny ingress\" group 100 drop".to_string(),
        ]
    );
    // Rate-limited logging: the log rule of its own, then the policy's own drop, so a packet
    // over the rate is dropped by the same policy (never counted by the next one's rule).
    let limited = compile_with(
        &s,
        "n2",
        &CompileOptions {
            nflog_group: Some(100),
            identify_drops: true,
            drop_log_rate: Some(50),
        },
    );
    let limit = "limit rate 50/second burst 50 packets";
    assert_eq!(
        limited.chains["ingress-policies"].rules,
        vec![
            format!("ip daddr @{pid}-sel-v4 jump {pid}-in"),
            format!("ip6 daddr @{pid}-sel-v6 jump {pid}-in"),
            format!(
                "ip daddr @{pid}-sel-v4 counter name \"{pid}-drop-in\" {limit} log prefix \"{identity} ingress\" group 100"
            ),
            format!("ip daddr @{pid}-sel-v4 drop"),
            format!(
                "ip6 daddr @{pid}-sel-v6 counter name \"{pid}-drop-in\" {limit} log prefix \"{identity} ingress\" group 100"
            ),
            format!("ip6 daddr @{pid}-sel-v6 drop"),
            format!("{limit} log prefix \"default deny ingress\" group 100"),
            "drop".to_string(),
        ]
    );
    // The rate applies to identified drops only: `--v>=2` alone keeps its rules.
    let verbose_limited = compile_with(
        &s,
        "n2",
        &CompileOptions {
            nflog_group: Some(100),
            drop_log_rate: Some(50),
            ..CompileOptions::default()
        },
    );
    assert_eq!(verbose_limited, logged);
    // Identified drops without a group are not logged at all.
    let unlogged = compile_with(
        &s,
        "n2",
        &CompileOptions {
            nflog_group: None,
            identify_drops: true,
            drop_log_rate: Some(50),
        },
    );
    assert_eq!(unlogged, compile(&s, "n2"));
}

#[test]
fn drop_prefixes_are_names_or_ids_that_nft_accepts() {
    assert_eq!(drop_identity("team-a", "deny.all"), "team-a/deny.all");
    let long = "x".repeat(200);
    assert_eq!(drop_identity("team-a", &long), policy_id("team-a", &long));
    assert_eq!(drop_identity("team-a", "a\"b"), policy_id("team-a", "a\"b"));
    // The longest name that fits with the longer direction word.
    let fits = "y".repeat(127 - "team-a/".len() - " ingress".len());
    let prefix = drop_prefix(&drop_identity("team-a", &fits), true);
    assert_eq!(prefix.len(), 127);
    assert!(prefix.starts_with("team-a/y"));
    let one_more = format!("{fits}y");
    assert_eq!(
        drop_identity("team-a", &one_more),
        policy_id("team-a", &one_more)
    );
    assert_eq!(drop_prefix(DEFAULT_DENY, false), "default deny egress");
}

#[test]
fn label_changes_and_ip_reuse_move_pods_between_sets() {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": meta("p"), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}}),
    );
    assert!(!allowed(&s, "x/b", "x/a", Tcp, 80, false));
    let mut b = find(&s, "x/b").clone();
    b.labels.insert("role".into(), "client".into());
    s.upsert_pod(b);
    assert!(allowed(&s, "x/b", "x/a", Tcp, 80, false));
    // A new pod gets x/b's IP before x/b's deletion arrives: the IP is no longer a client.
    s.upsert_pod(pod("x", "newcomer", "n1", &["10.0.1.2"]));
    let rs = compile(&s, "n1");
    let pid = policy_id("x", "p");
    assert!(referenced_set(&rs, &format!("{pid}-in"), "peers", "v4").is_empty());
}

/// `cargo test -p flannel-netpol --release -- --ignored --nocapture scale`: compile and plan
/// times for 1000 local pods (plus 1000 remote ones) and 500 policies.
#[test]
#[ignore = "timing figures, run by hand"]
fn scale_1000_pods_500_policies() {
    use crate::nft::{ActualTable, plan};
    use std::time::Instant;
    let s = crate::testing::scale_state();
    let t = Instant::now();
    let rs = compile(&s, "n1");
    let compile_time = t.elapsed();
    let t = Instant::now();
    let tx = plan(&ActualTable::default(), &rs);
    let plan_time = t.elapsed();
    let applied = ActualTable::from(&rs);
    let mut changed = s.clone();
    let mut p = find(&changed, "ns0/p0").clone();
    p.labels.insert("app".into(), "app1".into());
    changed.upsert_pod(p);
    let t = Instant::now();
    let rs2 = compile(&changed, "n1");
    let tx2 = plan(&applied, &rs2);
    let change_time = t.elapsed();
    println!(
        "policies {} sets {} chains {} elements {} | compile {compile_time:?} first plan {plan_time:?} \
         ({} bytes) | label change compile+plan {change_time:?} ({} lines)",
        rs.policies.len(),
        rs.sets.len(),
        rs.chains.len(),
        rs.element_count(),
        tx.text().len(),
        tx2.text().lines().count()
    );
    assert_eq!(rs.policies.len(), 500);
    assert!(!tx2.is_empty());
}

#[test]
fn policies_with_the_same_peers_share_their_sets() {
    let mut s = e2e_state();
    for name in ["p", "q"] {
        add_policy(
            &mut s,
            json!({"metadata": meta(name), "spec": {"podSelector": {},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                                      {"ipBlock": {"cidr": "192.168.0.0/16"}}]}]}}),
        );
    }
    let rs = compile(&s, "n1");
    let refs = |name: &str, prefix: &str| {
        let rules = &rs.chains[&format!("{}-in", policy_id("x", name))].rules;
        let text = rules.join(" ");
        assert!(text.contains(&format!("@{prefix}-")), "{text}");
        text.split(' ')
            .filter(|w| w.starts_with(&format!("@{prefix}-")))
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(refs("p", "peers"), refs("q", "peers"));
    assert_eq!(refs("p", "blocks"), refs("q", "blocks"));
    let shared = rs.sets.keys().filter(|n| n.starts_with("peers-")).count();
    assert_eq!(shared, 2, "one per family");
}

#[test]
fn drop_reasons_name_the_isolating_policies_of_the_direction() {
    let mut s = e2e_state();
    let a = find(&s, "x/a").clone();
    assert_eq!(drop_reason(&s, &a, true), None, "not isolated");
    add_policy(
        &mut s,
        json!({"metadata": meta("deny-in"), "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    assert_eq!(drop_reason(&s, &a, true).as_deref(), Some("x/deny-in"));
    assert_eq!(drop_reason(&s, &a, false), None, "egress is not isolated");
    // A pod of another namespace is not selected by x's policies.
    assert_eq!(drop_reason(&s, find(&s, "y/a"), true), None);
    for name in ["web", "db", "zz-last"] {
        add_policy(
            &mut s,
            json!({"metadata": meta(name), "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 80}]}]}}),
        );
    }
    assert_eq!(
        drop_reason(&s, &a, true).as_deref(),
        Some("x/db, x/deny-in, x/web +1 more")
    );
    // x/b is selected only by the policy with the empty selector.
    assert_eq!(
        drop_reason(&s, find(&s, "x/b"), true).as_deref(),
        Some("x/deny-in")
    );
}
