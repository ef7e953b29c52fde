//! The cases of upstream's test/e2e/network/netpol/network_policy.go, one function per `It`,
//! over the full 3 x 3 model (upstream's original layout; later upstream versions create only
//! the pods a case looks at, the expectations here are the full-model ones).
//!
//! Policies are data and follow upstream's shapes; names of policies are upstream's.

use super::case::{Case, Ctx, Origin, Step, apply, probe, tcp80};
use super::model::{NS_NAME_LABEL, Proto};
use super::policies::{
    Np, egress_rule, host_cidr, ingress_rule, large_cidr, peer_ip_block, peer_ns, peer_ns_pods,
    peer_pods, port_named, port_num, port_proto, sel_all, sel_expr, sel_labels,
};
use super::reachability::Peer;

const TCP_CTX: &str = "NetworkPolicy between server and client";
const UDP_CTX: &str = "NetworkPolicy between server and client using UDP";
const SCTP_CTX: &str = "NetworkPolicy between server and client using SCTP";

use Proto::{Sctp, Tcp, Udp};

fn pod_a() -> serde_json::Value {
    sel_labels(&[("pod", "a")])
}

fn ns_is(ns: &str) -> serde_json::Value {
    sel_labels(&[(NS_NAME_LABEL, ns)])
}

fn default_deny_ingress(c: &Ctx, proto: Proto) -> Vec<Step> {
    vec![
        apply(Np::new("x", "deny-ingress", sel_all()).ingress(vec![])),
        probe(
            80,
            proto,
            c.reach().expect_peer(Peer::any(), Peer::ns("x"), false),
        ),
    ]
}

fn default_deny_all(c: &Ctx) -> Vec<Step> {
    vec![
        apply(
            Np::new("x", "deny-all", sel_all())
                .ingress(vec![])
                .egress(vec![]),
        ),
        tcp80(
            c.reach()
                .expect_peer(Peer::any(), Peer::ns("x"), false)
                .expect_peer(Peer::ns("x"), Peer::any(), false),
        ),
    ]
}

fn pod_selector_within_namespace(c: &Ctx, sel_b: serde_json::Value) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_pods(sel_b)], vec![]);
    vec![
        apply(Np::new("x", "x-a-allows-x-b", pod_a()).ingress(vec![rule])),
        tcp80(c.reach().ingress_only_from("x/a", &["x/b"])),
    ]
}

fn ingress_for_target(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_ns_pods(sel_all(), sel_all())], vec![]);
    vec![
        apply(Np::new("x", "deny-all", sel_all()).ingress(vec![])),
        apply(Np::new("x", "allow-all-to-a", pod_a()).ingress(vec![rule])),
        tcp80(
            c.reach()
                .expect_all_ingress("x/a", true)
                .expect_all_ingress("x/b", false)
                .expect_all_ingress("x/c", false),
        ),
    ]
}

fn ingress_from_all_namespaces(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_ns(sel_all())], vec![]);
    vec![
        apply(Np::new("x", "allow-from-another-ns", pod_a()).ingress(vec![rule])),
        tcp80(c.reach()),
    ]
}

/// x/a accepts only namespace y (by a selector on the namespace name label).
/// With `port_rule`, the rule allows only that port (over `proto`), which is also the one probed;
/// without, the rule has no ports and TCP 80 is probed.
fn only_from_namespace_y(
    c: &Ctx,
    name: &str,
    ns_sel: serde_json::Value,
    port_rule: Option<(u16, Proto)>,
) -> Vec<Step> {
    let (port, proto) = port_rule.unwrap_or((80, Tcp));
    let ports = port_rule
        .map(|(port, proto)| vec![port_num(port, Some(proto))])
        .unwrap_or_default();
    let rule = ingress_rule(vec![peer_ns(ns_sel)], ports);
    vec![
        apply(Np::new("x", name, pod_a()).ingress(vec![rule])),
        probe(
            port,
            proto,
            c.reach()
                .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
                .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false),
        ),
    ]
}

fn pod_or_namespace_selector(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(
        vec![
            peer_ns(sel_expr(NS_NAME_LABEL, "NotIn", &["x"])),
            peer_pods(sel_labels(&[("pod", "b")])),
        ],
        vec![],
    );
    vec![
        apply(Np::new("x", "allow-ns-y-match-selector", pod_a()).ingress(vec![rule])),
        tcp80(
            c.reach()
                .expect("x/a", "x/a", false)
                .expect("x/c", "x/a", false),
        ),
    ]
}

fn pod_and_namespace_selector(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(
        vec![peer_ns_pods(
            sel_expr(NS_NAME_LABEL, "NotIn", &["x"]),
            sel_labels(&[("pod", "b")]),
        )],
        vec![],
    );
    vec![
        apply(Np::new("x", "allow-ns-y-podselector-and-nsselector", pod_a()).ingress(vec![rule])),
        tcp80(c.reach().ingress_only_from("x/a", &["y/b", "z/b"])),
    ]
}

fn multiple_pod_and_namespace_selectors(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(
        vec![peer_ns_pods(
            sel_expr(NS_NAME_LABEL, "NotIn", &["x"]),
            sel_expr("pod", "In", &["b", "c"]),
        )],
        vec![],
    );
    vec![
        apply(Np::new("x", "allow-ns-y-z-pod-b-c", pod_a()).ingress(vec![rule])),
        tcp80(
            c.reach()
                .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
                .expect("y/a", "x/a", false)
                .expect("z/a", "x/a", false),
        ),
    ]
}

fn any_pod_selectors(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(
        vec![
            peer_pods(sel_labels(&[("pod", "b")])),
            peer_pods(sel_labels(&[("pod", "c")])),
        ],
        vec![],
    );
    vec![
        apply(Np::new("x", "allow-ns-x-pod-b-c", pod_a()).ingress(vec![rule])),
        tcp80(c.reach().ingress_only_from("x/a", &["x/b", "x/c"])),
    ]
}

fn only_from_y_a(c: &Ctx, proto: Proto) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_ns_pods(ns_is("y"), pod_a())], vec![]);
    vec![
        apply(
            Np::new("x", "allow-ns-y-pod-a-via-namespace-pod-selector", pod_a())
                .ingress(vec![rule]),
        ),
        probe(80, proto, c.reach().ingress_only_from("x/a", &["y/a"])),
    ]
}

fn allow_81_from_y(c: &Ctx) -> (serde_json::Value, super::reachability::Reachability) {
    let rule = ingress_rule(vec![peer_ns(ns_is("y"))], vec![port_num(81, Some(Tcp))]);
    let policy = Np::new("x", "allow-client-a-via-ns-selector", pod_a())
        .ingress(vec![rule])
        .json();
    let allow = c
        .reach()
        .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true)
        .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    (policy, allow)
}

fn ports_tcp(c: &Ctx) -> Vec<Step> {
    let (policy, allow) = allow_81_from_y(c);
    vec![apply(policy), probe(81, Tcp, allow)]
}

fn stacked_policies(c: &Ctx) -> Vec<Step> {
    let (policy, allow) = allow_81_from_y(c);
    let rule80 = ingress_rule(vec![peer_ns(ns_is("y"))], vec![port_num(80, Some(Tcp))]);
    vec![
        apply(policy),
        probe(81, Tcp, allow.clone()),
        tcp80(c.reach().expect_all_ingress("x/a", false)),
        apply(Np::new("x", "allow-client-a-via-ns-selector-80", pod_a()).ingress(vec![rule80])),
        tcp80(allow),
    ]
}

fn allow_all(c: &Ctx) -> Vec<Step> {
    vec![
        apply(Np::new("x", "allow-all", sel_all()).ingress(vec![serde_json::json!({})])),
        tcp80(c.reach()),
        probe(81, Tcp, c.reach()),
    ]
}

fn ingress_one_named_port(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![], vec![port_named("serve-81-tcp", None)]);
    vec![
        apply(Np::new("x", "allow-all", sel_all()).ingress(vec![rule])),
        probe(81, Tcp, c.reach()),
        tcp80(c.reach().expect_peer(Peer::any(), Peer::ns("x"), false)),
    ]
}

fn ingress_from_namespace_named_port(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(
        vec![peer_ns(ns_is("y"))],
        vec![port_named("serve-80-tcp", Some(Tcp))],
    );
    vec![
        apply(Np::new("x", "allow-client-a-via-ns-selector-80", pod_a()).ingress(vec![rule])),
        tcp80(
            c.reach()
                .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
                .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false),
        ),
        probe(81, Tcp, c.reach().expect_all_ingress("x/a", false)),
    ]
}

fn egress_one_named_port(c: &Ctx) -> Vec<Step> {
    let rule = egress_rule(vec![], vec![port_named("serve-80-tcp", None)]);
    vec![
        apply(Np::new("x", "allow-egress", sel_all()).egress(vec![rule])),
        tcp80(c.reach()),
        probe(
            81,
            Tcp,
            c.reach().expect_peer(Peer::ns("x"), Peer::any(), false),
        ),
    ]
}

fn updated_policy(c: &Ctx) -> Vec<Step> {
    let allow = Np::new("x", "allow-all-mutate-to-deny-all", sel_all())
        .ingress(vec![serde_json::json!({})])
        .json();
    let mut deny = allow.clone();
    deny["spec"]["ingress"] = serde_json::json!([]);
    vec![
        apply(allow),
        probe(81, Tcp, c.reach()),
        apply(deny),
        probe(
            81,
            Tcp,
            c.reach().expect_peer(Peer::any(), Peer::ns("x"), false),
        ),
    ]
}

fn ingress_from_updated_namespace(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_ns(sel_labels(&[("ns2", "updated")]))], vec![]);
    vec![
        apply(Np::new("x", "allow-client-a-via-ns-selector", pod_a()).ingress(vec![rule])),
        tcp80(c.reach().expect_all_ingress("x/a", false)),
        Step::LabelNamespace {
            ns: "y",
            key: "ns2",
            value: Some("updated"),
        },
        tcp80(c.reach().expect_all_ingress("x/a", false).expect_peer(
            Peer::ns("y"),
            Peer::any(),
            true,
        )),
    ]
}

fn ingress_from_updated_pod(c: &Ctx) -> Vec<Step> {
    let sel = sel_labels(&[("pod", "b"), ("pod2", "updated")]);
    let rule = ingress_rule(vec![peer_pods(sel)], vec![]);
    vec![
        apply(Np::new("x", "allow-client-a-via-pod-selector", pod_a()).ingress(vec![rule])),
        tcp80(c.reach().expect_all_ingress("x/a", false)),
        Step::LabelPod {
            pod: super::model::pod("x/b"),
            key: "pod2",
            value: Some("updated"),
        },
        tcp80(c.reach().ingress_only_from("x/a", &["x/b"])),
    ]
}

fn deny_ingress_other_namespaces(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_pods(sel_all())], vec![]);
    vec![
        apply(Np::new("x", "deny-empty-policy", sel_all()).ingress(vec![rule])),
        tcp80(
            c.reach()
                .expect_peer(Peer::ns("y"), Peer::ns("x"), false)
                .expect_peer(Peer::ns("z"), Peer::ns("x"), false),
        ),
    ]
}

fn deny_ingress_updated_pod(c: &Ctx) -> Vec<Step> {
    let sel = sel_labels(&[("target", "isolated")]);
    vec![
        apply(Np::new("x", "deny-ingress-via-label-selector", sel).ingress(vec![])),
        tcp80(c.reach()),
        Step::LabelPod {
            pod: super::model::pod("x/a"),
            key: "target",
            value: Some("isolated"),
        },
        tcp80(c.reach().expect_all_ingress("x/a", false)),
    ]
}

fn deny_egress_pod_selector(c: &Ctx) -> Vec<Step> {
    vec![
        apply(Np::new("x", "deny-egress-pod-a", pod_a()).egress(vec![])),
        tcp80(c.reach().expect_all_egress("x/a", false)),
    ]
}

fn deny_egress_namespace(c: &Ctx) -> Vec<Step> {
    vec![
        apply(Np::new("x", "deny-egress-ns-x", sel_all()).egress(vec![])),
        tcp80(c.reach().expect_peer(Peer::ns("x"), Peer::any(), false)),
    ]
}

fn ingress_egress_together(c: &Ctx) -> Vec<Step> {
    let mut policy = Np::new("x", "allow-client-a-via-pod-selector", pod_a())
        .ingress(vec![ingress_rule(
            vec![peer_pods(sel_labels(&[("pod", "b")]))],
            vec![],
        )])
        .egress(vec![egress_rule(vec![], vec![port_num(80, None)])])
        .json();
    policy["spec"]["policyTypes"] = serde_json::json!(["Egress", "Ingress"]);
    vec![
        apply(policy),
        tcp80(c.reach().ingress_only_from("x/a", &["x/b"])),
        probe(
            81,
            Tcp,
            c.reach()
                .expect_all_ingress("x/a", false)
                .expect_all_egress("x/a", false)
                .expect("x/b", "x/a", true),
        ),
    ]
}

fn client_side_egress_denial(c: &Ctx) -> Vec<Step> {
    let egress = egress_rule(vec![peer_ns_pods(ns_is("y"), pod_a())], vec![]);
    let ingress = ingress_rule(vec![peer_ns_pods(ns_is("x"), pod_a())], vec![]);
    vec![
        apply(Np::new("x", "allow-to-ns-y-pod-a", pod_a()).egress(vec![egress])),
        apply(
            Np::new("y", "allow-from-xa-on-ya-match-selector", pod_a())
                .ingress(vec![ingress.clone()]),
        ),
        apply(
            Np::new(
                "y",
                "allow-from-xa-on-yb-match-selector",
                sel_labels(&[("pod", "b")]),
            )
            .ingress(vec![ingress]),
        ),
        tcp80(
            c.reach()
                .expect_peer(Peer::pod("x", "a"), Peer::any(), false)
                .expect_peer(Peer::any(), Peer::pod("y", "a"), false)
                .expect_peer(Peer::pod("x", "a"), Peer::pod("y", "a"), true)
                .expect_peer(Peer::any(), Peer::pod("y", "b"), false),
        ),
    ]
}

fn egress_to_other_namespace_pod(c: &Ctx) -> Vec<Step> {
    let egress = egress_rule(vec![peer_ns_pods(ns_is("y"), pod_a())], vec![]);
    vec![
        apply(Np::new("x", "allow-to-ns-y-pod-a", pod_a()).egress(vec![egress])),
        tcp80(c.reach().egress_only_to("x/a", &["y/a"])),
    ]
}

fn ingress_any_port_one_protocol(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![], vec![port_proto(Tcp)]);
    vec![
        apply(Np::new("x", "allow-ingress-by-proto", pod_a()).ingress(vec![rule])),
        tcp80(c.reach()),
        probe(
            80,
            Udp,
            c.reach()
                .expect_peer(Peer::any(), Peer::pod("x", "a"), false),
        ),
    ]
}

fn ingress_allow_all_precedence(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![], vec![port_num(80, None)]);
    vec![
        apply(Np::new("x", "allow-ingress-port-80", sel_all()).ingress(vec![rule])),
        probe(
            81,
            Tcp,
            c.reach().expect_peer(Peer::any(), Peer::ns("x"), false),
        ),
        apply(Np::new("x", "allow-ingress", sel_all()).ingress(vec![serde_json::json!({})])),
        probe(81, Tcp, c.reach()),
    ]
}

fn egress_allow_all_precedence(c: &Ctx) -> Vec<Step> {
    let rule = egress_rule(vec![], vec![port_num(80, None)]);
    vec![
        apply(Np::new("x", "allow-egress-port-80", sel_all()).egress(vec![rule])),
        probe(
            81,
            Tcp,
            c.reach().expect_peer(Peer::ns("x"), Peer::any(), false),
        ),
        apply(Np::new("x", "allow-egress", sel_all()).egress(vec![serde_json::json!({})])),
        probe(81, Tcp, c.reach()),
    ]
}

/// The same deny-all as the 'default-deny-all' case (upstream orders the two expectations the
/// other way round, to the same table), then all policies deleted.
fn stop_enforcing_after_delete(c: &Ctx) -> Vec<Step> {
    let mut steps = default_deny_all(c);
    steps.extend([Step::DeleteAllPolicies, tcp80(c.reach())]);
    steps
}

fn egress_to_cidr(c: &Ctx) -> Vec<Step> {
    let rule = egress_rule(vec![peer_ip_block(&host_cidr(c.ip("y/b")), &[])], vec![]);
    vec![
        apply(Np::new("x", "allow-client-a-via-cidr-egress-rule", pod_a()).egress(vec![rule])),
        tcp80(c.reach().egress_only_to("x/a", &["y/b"])),
    ]
}

fn cidr_except_policy(c: &Ctx) -> serde_json::Value {
    let b = c.ip("x/b");
    let rule = egress_rule(vec![peer_ip_block(&large_cidr(b), &[host_cidr(b)])], vec![]);
    Np::new("x", "allow-client-a-via-cidr-egress-rule", pod_a())
        .egress(vec![rule])
        .json()
}

fn egress_cidr_except(c: &Ctx) -> Vec<Step> {
    vec![
        apply(cidr_except_policy(c)),
        tcp80(c.reach().expect("x/a", "x/b", false)),
    ]
}

fn cidr_and_except_overlap(c: &Ctx) -> Vec<Step> {
    let rule = egress_rule(vec![peer_ip_block(&host_cidr(c.ip("x/b")), &[])], vec![]);
    vec![
        apply(cidr_except_policy(c)),
        tcp80(c.reach().expect("x/a", "x/b", false)),
        // Upstream updates the same policy (same name) to allow only x/b's IP.
        apply(Np::new("x", "allow-client-a-via-cidr-egress-rule", pod_a()).egress(vec![rule])),
        tcp80(c.reach().egress_only_to("x/a", &["x/b"])),
    ]
}

fn ingress_egress_independent(c: &Ctx) -> Vec<Step> {
    vec![
        apply(Np::new("x", "allow-egress-for-target", pod_a()).egress(vec![serde_json::json!({})])),
        tcp80(c.reach()),
        apply(Np::new("x", "deny-ingress-via-label-selector", pod_a()).ingress(vec![])),
        tcp80(c.reach().expect_all_ingress("x/a", false)),
    ]
}

fn sctp_not_tcp(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![], vec![port_num(81, Some(Sctp))]);
    vec![
        apply(Np::new("x", "deny-ingress", sel_all()).ingress(vec![])),
        apply(Np::new("x", "allow-only-sctp-ingress-on-port-81", pod_a()).ingress(vec![rule])),
        probe(
            81,
            Tcp,
            c.reach().expect_peer(Peer::any(), Peer::ns("x"), false),
        ),
    ]
}

fn isolated_by_other_protocol(c: &Ctx, name: &str, port: u16, proto: Proto) -> Vec<Step> {
    let rule = ingress_rule(vec![], vec![port_num(port, Some(proto))]);
    vec![
        apply(Np::new("x", name, pod_a()).ingress(vec![rule])),
        probe(81, Tcp, c.reach().expect_all_ingress("x/a", false)),
    ]
}

fn egress_ns_match_expressions_default_label(c: &Ctx) -> Vec<Step> {
    let rule = egress_rule(
        vec![peer_ns(sel_expr(NS_NAME_LABEL, "NotIn", &["y"]))],
        vec![],
    );
    vec![
        apply(
            Np::new(
                "x",
                "allow-ns-y-match-selector-for-immutable-ns-label",
                pod_a(),
            )
            .egress(vec![rule]),
        ),
        tcp80(
            c.reach()
                .expect_peer(Peer::pod("x", "a"), Peer::ns("y"), false),
        ),
    ]
}

const fn tcp(title: &'static str, build: fn(&Ctx) -> Vec<Step>) -> Case {
    Case {
        title,
        origin: Origin::Upstream(TCP_CTX),
        build,
    }
}

/// Every case of upstream's TCP context, in upstream's order.
pub fn tcp_cases() -> Vec<Case> {
    vec![
        tcp("should support a 'default-deny-ingress' policy", |c| {
            default_deny_ingress(c, Tcp)
        }),
        tcp(
            "should support a 'default-deny-all' policy",
            default_deny_all,
        ),
        tcp(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            |c| pod_selector_within_namespace(c, sel_labels(&[("pod", "b")])),
        ),
        tcp(
            "should enforce policy to allow ingress traffic for a target",
            ingress_for_target,
        ),
        tcp(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            ingress_from_all_namespaces,
        ),
        tcp(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            |c| only_from_namespace_y(c, "allow-client-a-via-ns-selector", ns_is("y"), None),
        ),
        tcp(
            "should enforce policy based on PodSelector with MatchExpressions",
            |c| pod_selector_within_namespace(c, sel_expr("pod", "In", &["b"])),
        ),
        tcp(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            |c| {
                only_from_namespace_y(
                    c,
                    "allow-ns-y-match-selector",
                    sel_expr(NS_NAME_LABEL, "In", &["y"]),
                    None,
                )
            },
        ),
        tcp(
            "should enforce policy based on PodSelector or NamespaceSelector",
            pod_or_namespace_selector,
        ),
        tcp(
            "should enforce policy based on PodSelector and NamespaceSelector",
            pod_and_namespace_selector,
        ),
        tcp(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            multiple_pod_and_namespace_selectors,
        ),
        tcp(
            "should enforce policy based on any PodSelectors",
            any_pod_selectors,
        ),
        tcp(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            |c| only_from_y_a(c, Tcp),
        ),
        tcp("should enforce policy based on Ports", ports_tcp),
        tcp(
            "should enforce multiple, stacked policies with overlapping podSelectors",
            stacked_policies,
        ),
        tcp("should support allow-all policy", allow_all),
        tcp(
            "should allow ingress access on one named port",
            ingress_one_named_port,
        ),
        tcp(
            "should allow ingress access from namespace on one named port",
            ingress_from_namespace_named_port,
        ),
        tcp(
            "should allow egress access on one named port",
            egress_one_named_port,
        ),
        tcp("should enforce updated policy", updated_policy),
        tcp(
            "should allow ingress access from updated namespace",
            ingress_from_updated_namespace,
        ),
        tcp(
            "should allow ingress access from updated pod",
            ingress_from_updated_pod,
        ),
        tcp(
            "should deny ingress from pods on other namespaces",
            deny_ingress_other_namespaces,
        ),
        tcp(
            "should deny ingress access to updated pod",
            deny_ingress_updated_pod,
        ),
        tcp(
            "should deny egress from pods based on PodSelector",
            deny_egress_pod_selector,
        ),
        tcp(
            "should deny egress from all pods in a namespace",
            deny_egress_namespace,
        ),
        tcp(
            "should work with Ingress, Egress specified together",
            ingress_egress_together,
        ),
        tcp(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            client_side_egress_denial,
        ),
        tcp(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            egress_to_other_namespace_pod,
        ),
        tcp(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            ingress_any_port_one_protocol,
        ),
        tcp(
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            ingress_allow_all_precedence,
        ),
        tcp(
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            egress_allow_all_precedence,
        ),
        tcp(
            "should stop enforcing policies after they are deleted",
            stop_enforcing_after_delete,
        ),
        tcp(
            "should allow egress access to server in CIDR block",
            egress_to_cidr,
        ),
        tcp(
            "should enforce except clause while egress access to server in CIDR block",
            egress_cidr_except,
        ),
        tcp(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            cidr_and_except_overlap,
        ),
        tcp(
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            ingress_egress_independent,
        ),
        tcp(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            sctp_not_tcp,
        ),
        tcp(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            |c| isolated_by_other_protocol(c, "allow-only-sctp-ingress-on-port-80", 80, Sctp),
        ),
        tcp(
            "should not allow access by TCP when a policy specifies only UDP",
            |c| isolated_by_other_protocol(c, "allow-only-udp-ingress-on-port-81", 81, Udp),
        ),
        tcp(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            |c| {
                only_from_namespace_y(
                    c,
                    "allow-client-a-via-ns-selector-for-immutable-ns-label",
                    ns_is("y"),
                    None,
                )
            },
        ),
        tcp(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            egress_ns_match_expressions_default_label,
        ),
    ]
}

/// "should enforce policy based on Ports" of the UDP and SCTP contexts.
fn ports_81_from_y(c: &Ctx, proto: Proto) -> Vec<Step> {
    only_from_namespace_y(
        c,
        "allow-ingress-on-port-81-ns-x",
        ns_is("y"),
        Some((81, proto)),
    )
}

/// The three cases upstream repeats over UDP and over SCTP.
fn per_protocol(ctx: &'static str, proto: Proto) -> Vec<Case> {
    let build: [fn(&Ctx) -> Vec<Step>; 3] = match proto {
        Udp => [
            |c| default_deny_ingress(c, Udp),
            |c| ports_81_from_y(c, Udp),
            |c| only_from_y_a(c, Udp),
        ],
        _ => [
            |c| default_deny_ingress(c, Sctp),
            |c| ports_81_from_y(c, Sctp),
            |c| only_from_y_a(c, Sctp),
        ],
    };
    let titles = [
        "should support a 'default-deny-ingress' policy",
        "should enforce policy based on Ports",
        "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
    ];
    titles
        .into_iter()
        .zip(build)
        .map(|(title, build)| Case {
            title,
            origin: Origin::Upstream(ctx),
            build,
        })
        .collect()
}

/// The UDP context's cases.
pub fn udp_cases() -> Vec<Case> {
    per_protocol(UDP_CTX, Udp)
}

/// The SCTP context's cases (skipped where the kernel has no SCTP).
pub fn sctp_cases() -> Vec<Case> {
    per_protocol(SCTP_CTX, Sctp)
}

/// Every upstream case, TCP then UDP then SCTP.
pub fn all() -> Vec<Case> {
    let mut v = tcp_cases();
    v.extend(udp_cases());
    v.extend(sctp_cases());
    v
}
