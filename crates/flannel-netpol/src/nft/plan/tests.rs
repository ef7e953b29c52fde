//! Golden transactions: the exact `nft -f` text for the situations the enforcer meets.

use serde_json::json;

use super::*;
use crate::cluster::ClusterState;
use crate::compile::compile;
use crate::model::NamespaceInfo;
use crate::nft::{ActualChain, ActualTable};
use crate::ruleset::policy_id;
use crate::testing::{add_policy, labels, pod};

/// x/a and x/b on n1, x/c on n2; x/b is a client. IPv4 only, to keep the goldens short.
fn small() -> ClusterState {
    let mut s = ClusterState::new();
    s.upsert_namespace(NamespaceInfo {
        name: "x".into(),
        labels: labels(&[("kubernetes.io/metadata.name", "x")]),
    });
    s.upsert_pod(pod("x", "a", "n1", &["10.0.1.1"]));
    let mut b = pod("x", "b", "n1", &["10.0.1.2"]);
    b.labels.insert("role".into(), "client".into());
    s.upsert_pod(b);
    s.upsert_pod(pod("x", "c", "n2", &["10.0.1.5"]));
    s
}

fn allow(s: &mut ClusterState, port: u16) {
    add_policy(
        s,
        json!({"metadata": {"namespace": "x", "name": "allow"}, "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"port": port}, {"port": "serve-81-udp", "protocol": "UDP"}]}]}}),
    );
}

/// Asserts the text, printing the whole actual text on mismatch for review.
fn golden(tx: &Transaction, expected: &str) {
    let expected = expected
        .replace("PEERS", PEERS)
        .replace("PID", &policy_id("x", "allow"));
    assert!(
        tx.text() == expected,
        "transaction differs, actual:\n{}",
        tx.text()
    );
}

/// The shared peer set of `allow`'s rule (named after its peer list).
const PEERS: &str = "peers-cb705ac22a75-v4";

fn applied(rs: &crate::ruleset::Ruleset) -> ActualTable {
    ActualTable::from(rs)
}

#[test]
fn first_start() {
    let mut s = small();
    allow(&mut s, 80);
    let desired = compile(&s, "n1");
    let tx = plan(&ActualTable::default(), &desired);
    golden(&tx, FIRST_START);
    assert_eq!(plan(&applied(&desired), &desired), Transaction::default());
}

#[test]
fn a_pod_joins_a_peer_set() {
    let mut s = small();
    allow(&mut s, 80);
    let before = compile(&s, "n1");
    let mut d = pod("x", "d", "n2", &["10.0.1.3"]);
    d.labels.insert("role".into(), "client".into());
    s.upsert_pod(d);
    let tx = plan(&applied(&before), &compile(&s, "n1"));
    golden(&tx, "add element inet flannel-netpol PEERS { 10.0.1.3 }\n");
    assert_eq!(tx.stats.elements_added, 1);
    assert_eq!(tx.stats.chains_written, 0);
}

#[test]
fn a_rule_changes() {
    let mut s = small();
    allow(&mut s, 80);
    let before = compile(&s, "n1");
    allow(&mut s, 81);
    let tx = plan(&applied(&before), &compile(&s, "n1"));
    golden(&tx, RULE_CHANGED);
}

#[test]
fn a_policy_is_deleted() {
    let mut s = small();
    allow(&mut s, 80);
    let before = compile(&s, "n1");
    s.remove_policy("x", "allow");
    let tx = plan(&applied(&before), &compile(&s, "n1"));
    golden(&tx, POLICY_DELETED);
}

#[test]
fn restart_reconciles_stale_objects() {
    let mut s = small();
    allow(&mut s, 80);
    let desired = compile(&s, "n1");
    // What an older run left: a stale policy's objects, a member gone, a rule without comment.
    let mut old = s.clone();
    add_policy(
        &mut old,
        json!({"metadata": {"namespace": "x", "name": "stale"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
    );
    old.upsert_pod(pod("x", "gone", "n1", &["10.0.1.9"]));
    let mut actual = applied(&compile(&old, "n1"));
    actual.chains.insert(
        "egress".into(),
        ActualChain {
            hook: actual.chains["egress"].hook.clone(),
            fingerprints: vec![None],
        },
    );
    let tx = plan(&actual, &desired);
    golden(&tx, &RESTART.replace("STALE", &policy_id("x", "stale")));
    assert_eq!(plan(&applied(&desired), &desired), Transaction::default());
}

#[test]
fn a_set_of_another_type_is_recreated_with_every_chain_rewritten() {
    let mut s = small();
    allow(&mut s, 80);
    let desired = compile(&s, "n1");
    let mut actual = applied(&desired);
    let sel = format!("{}-sel-v4", policy_id("x", "allow"));
    actual.sets.get_mut(&sel).unwrap().kind =
        crate::ruleset::SetKind::Interval(flannel_types::IpFamily::V4);
    let tx = plan(&actual, &desired);
    let text = tx.text();
    let flush = text
        .find("flush chain inet flannel-netpol ingress-policies")
        .unwrap();
    let delete = text
        .find(&format!("delete set inet flannel-netpol {sel}"))
        .unwrap();
    let add = text
        .find(&format!("add set inet flannel-netpol {sel}"))
        .unwrap();
    let rule = text
        .find("add rule inet flannel-netpol ingress-policies")
        .unwrap();
    assert!(flush < delete && delete < add && add < rule, "{text}");
    assert_eq!(tx.stats.chains_written, desired.chains.len());
    assert!(!text.contains("delete table") && !text.contains("flush table"));
}

const FIRST_START: &str = r#"add table inet flannel-netpol
add counter inet flannel-netpol PID-drop-in { comment "x/allow"; }
add set inet flannel-netpol egress-isolated-v4 { type ipv4_addr; }
add set inet flannel-netpol egress-isolated-v6 { type ipv6_addr; }
add set inet flannel-netpol ingress-isolated-v4 { type ipv4_addr; }
add element inet flannel-netpol ingress-isolated-v4 { 10.0.1.1 }
add set inet flannel-netpol ingress-isolated-v6 { type ipv6_addr; }
add set inet flannel-netpol PID-in0-named-v4 { type ipv4_addr . inet_proto . inet_service; comment "x/allow"; }
add element inet flannel-netpol PID-in0-named-v4 { 10.0.1.1 . udp . 81 }
add set inet flannel-netpol PID-sel-v4 { type ipv4_addr; comment "x/allow"; }
add element inet flannel-netpol PID-sel-v4 { 10.0.1.1 }
add set inet flannel-netpol PEERS { type ipv4_addr; }
add element inet flannel-netpol PEERS { 10.0.1.2 }
add chain inet flannel-netpol egress { type filter hook forward priority filter - 1; policy accept; }
add chain inet flannel-netpol egress-input { type filter hook input priority filter - 1; policy accept; }
add chain inet flannel-netpol egress-policies
add chain inet flannel-netpol ingress { type filter hook forward priority filter; policy accept; }
add chain inet flannel-netpol ingress-policies
add chain inet flannel-netpol PID-in { comment "x/allow"; }
add rule inet flannel-netpol egress ct state established,related accept comment "b3854bb523e9f4de"
add rule inet flannel-netpol egress ip saddr @egress-isolated-v4 jump egress-policies comment "fe65884e28a99148"
add rule inet flannel-netpol egress ip6 saddr @egress-isolated-v6 jump egress-policies comment "ae1b66083d6522f8"
add rule inet flannel-netpol egress-input ct state established,related accept comment "b3854bb523e9f4de"
add rule inet flannel-netpol egress-input icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept comment "c26b41cc3e7a34a7"
add rule inet flannel-netpol egress-input ip saddr @egress-isolated-v4 jump egress-policies comment "fe65884e28a99148"
add rule inet flannel-netpol egress-input ip6 saddr @egress-isolated-v6 jump egress-policies comment "ae1b66083d6522f8"
add rule inet flannel-netpol egress-policies drop comment "f1a2a766dcd55bac"
add rule inet flannel-netpol ingress ct state established,related accept comment "b3854bb523e9f4de"
add rule inet flannel-netpol ingress ip daddr @ingress-isolated-v4 jump ingress-policies comment "1d91421748212bf3"
add rule inet flannel-netpol ingress ip6 daddr @ingress-isolated-v6 jump ingress-policies comment "7d602b0a8443988f"
add rule inet flannel-netpol ingress-policies ip daddr @PID-sel-v4 jump PID-in comment "83cfa8c8156abc69"
add rule inet flannel-netpol ingress-policies ip daddr @PID-sel-v4 counter name "PID-drop-in" drop comment "379519b00e9e4049"
add rule inet flannel-netpol ingress-policies drop comment "f1a2a766dcd55bac"
add rule inet flannel-netpol PID-in ip saddr @PEERS meta l4proto tcp th dport 80 accept comment "b4a8cdb57b475f18"
add rule inet flannel-netpol PID-in ip daddr . meta l4proto . th dport @PID-in0-named-v4 ip saddr @PEERS accept comment "112324fa8bbe0037"
"#;
const RULE_CHANGED: &str = r#"flush chain inet flannel-netpol PID-in
add rule inet flannel-netpol PID-in ip saddr @PEERS meta l4proto tcp th dport 81 accept comment "ae4a9eeb26bf214d"
add rule inet flannel-netpol PID-in ip daddr . meta l4proto . th dport @PID-in0-named-v4 ip saddr @PEERS accept comment "112324fa8bbe0037"
"#;
const POLICY_DELETED: &str = r#"delete element inet flannel-netpol ingress-isolated-v4 { 10.0.1.1 }
flush chain inet flannel-netpol ingress-policies
flush chain inet flannel-netpol PID-in
add rule inet flannel-netpol ingress-policies drop comment "f1a2a766dcd55bac"
delete chain inet flannel-netpol PID-in
delete set inet flannel-netpol PID-in0-named-v4
delete set inet flannel-netpol PID-sel-v4
delete set inet flannel-netpol PEERS
delete counter inet flannel-netpol PID-drop-in
"#;
const RESTART: &str = r#"delete element inet flannel-netpol egress-isolated-v4 { 10.0.1.1, 10.0.1.2, 10.0.1.9 }
flush chain inet flannel-netpol egress
flush chain inet flannel-netpol egress-policies
flush chain inet flannel-netpol STALE-eg
add rule inet flannel-netpol egress ct state established,related accept comment "b3854bb523e9f4de"
add rule inet flannel-netpol egress ip saddr @egress-isolated-v4 jump egress-policies comment "fe65884e28a99148"
add rule inet flannel-netpol egress ip6 saddr @egress-isolated-v6 jump egress-policies comment "ae1b66083d6522f8"
add rule inet flannel-netpol egress-policies drop comment "f1a2a766dcd55bac"
delete chain inet flannel-netpol STALE-eg
delete set inet flannel-netpol STALE-sel-v4
delete counter inet flannel-netpol STALE-drop-eg
"#;
