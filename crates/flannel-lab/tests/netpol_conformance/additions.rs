//! Cases flannel-rs adds for semantics the issue requires and upstream's suite does not probe:
//! endPort ranges, label removal, pod recreation, ingress ipBlock, matchExpressions Exists and
//! DoesNotExist, and the "deny egress but DNS" pattern (upstream's early suite allowed UDP 53
//! in its egress policies for name lookups; here the probes use pod IPs, so the DNS stand-in is
//! UDP port 80 of namespace z).
//!
//! They count separately from the upstream cases in the summary.

use std::collections::BTreeMap;

use super::case::{Case, Ctx, Origin, Step, apply, probe, tcp80};
use super::model::{NS_NAME_LABEL, Proto, pod};
use super::policies::{
    Np, egress_rule, host_cidr, ingress_rule, peer_ip_block, peer_ns, peer_ns_pods, peer_pods,
    port_num, port_range, sel_all, sel_expr, sel_labels,
};
use super::reachability::Peer;

use Proto::{Tcp, Udp};

fn ingress_end_port(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![], vec![port_range(81, 90, Some(Tcp))]);
    vec![
        apply(Np::new("x", "allow-81-to-90", sel_labels(&[("pod", "a")])).ingress(vec![rule])),
        probe(81, Tcp, c.reach()),
        tcp80(c.reach().expect_all_ingress("x/a", false)),
    ]
}

fn egress_end_port(c: &Ctx) -> Vec<Step> {
    let rule = egress_rule(vec![], vec![port_range(79, 80, Some(Udp))]);
    vec![
        apply(Np::new("x", "egress-udp-79-to-80", sel_labels(&[("pod", "a")])).egress(vec![rule])),
        probe(80, Udp, c.reach()),
        probe(81, Udp, c.reach().expect_all_egress("x/a", false)),
        tcp80(c.reach().expect_all_egress("x/a", false)),
    ]
}

fn namespace_label_removed(c: &Ctx) -> Vec<Step> {
    let rule = ingress_rule(vec![peer_ns(sel_labels(&[("ns2", "updated")]))], vec![]);
    let denied = c.reach().expect_all_ingress("x/a", false);
    vec![
        Step::LabelNamespace {
            ns: "y",
            key: "ns2",
            value: Some("updated"),
        },
        apply(Np::new("x", "allow-from-ns2", sel_labels(&[("pod", "a")])).ingress(vec![rule])),
        tcp80(denied.clone().expect_peer(Peer::ns("y"), Peer::any(), true)),
        Step::LabelNamespace {
            ns: "y",
            key: "ns2",
            value: None,
        },
        tcp80(denied),
    ]
}

fn pod_label_removed(c: &Ctx) -> Vec<Step> {
    let sel = sel_labels(&[("target", "isolated")]);
    vec![
        Step::LabelPod {
            pod: pod("x/b"),
            key: "target",
            value: Some("isolated"),
        },
        apply(
            Np::new("x", "deny-isolated", sel)
                .ingress(vec![])
                .egress(vec![]),
        ),
        tcp80(
            c.reach()
                .expect_all_ingress("x/b", false)
                .expect_all_egress("x/b", false),
        ),
        Step::LabelPod {
            pod: pod("x/b"),
            key: "target",
            value: None,
        },
        tcp80(c.reach()),
    ]
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn recreated_pod(c: &Ctx) -> Vec<Step> {
    // x/b is isolated for ingress and is y/a's only allowed client: both the selected set and
    // the peer set must follow x/b through deletion and re-creation (new, or reused, IP).
    let peer = ingress_rule(
        vec![peer_ns_pods(
            sel_labels(&[(NS_NAME_LABEL, "x")]),
            sel_labels(&[("pod", "b")]),
        )],
        vec![],
    );
    let expected = c
        .reach()
        .expect_all_ingress("x/b", false)
        .ingress_only_from("y/a", &["x/b"]);
    vec![
        apply(Np::new("x", "isolate-b", sel_labels(&[("pod", "b")])).ingress(vec![])),
        apply(Np::new("y", "a-from-x-b", sel_labels(&[("pod", "a")])).ingress(vec![peer])),
        tcp80(expected.clone()),
        Step::RecreatePod {
            pod: pod("x/b"),
            labels: labels(&[("pod", "b")]),
        },
        tcp80(expected),
        Step::RecreatePod {
            pod: pod("x/b"),
            labels: labels(&[("pod", "b-renamed")]),
        },
        tcp80(c.reach().expect_all_ingress("y/a", false)),
    ]
}

fn ingress_ip_block(c: &Ctx) -> Vec<Step> {
    let z = c.ip("z/c");
    let rule = ingress_rule(
        vec![peer_ip_block(&host_cidr(z), &[])],
        vec![port_num(80, None)],
    );
    vec![
        apply(Np::new("x", "allow-from-z-c-ip", sel_all()).ingress(vec![rule])),
        tcp80(
            c.reach()
                .expect_peer(Peer::any(), Peer::ns("x"), false)
                .expect_peer(Peer::pod("z", "c"), Peer::ns("x"), true),
        ),
        probe(
            81,
            Tcp,
            c.reach().expect_peer(Peer::any(), Peer::ns("x"), false),
        ),
    ]
}

fn exists_and_does_not_exist(c: &Ctx) -> Vec<Step> {
    let peer = peer_ns_pods(
        sel_expr("ns2", "DoesNotExist", &[]),
        sel_expr("pod", "Exists", &[]),
    );
    vec![
        Step::LabelNamespace {
            ns: "y",
            key: "ns2",
            value: Some("updated"),
        },
        Step::LabelPod {
            pod: pod("z/c"),
            key: "pod",
            value: None,
        },
        apply(
            Np::new("x", "exists-not-exists", sel_labels(&[("pod", "a")]))
                .ingress(vec![ingress_rule(vec![peer], vec![])]),
        ),
        tcp80(
            c.reach()
                .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), false)
                .expect("z/c", "x/a", false),
        ),
    ]
}

fn dns_like_egress(c: &Ctx) -> Vec<Step> {
    let dns = egress_rule(
        vec![peer_ns(sel_labels(&[("ns", "z")]))],
        vec![port_num(80, Some(Udp))],
    );
    let same_ns = egress_rule(vec![peer_pods(sel_all())], vec![port_num(81, Some(Tcp))]);
    vec![
        apply(Np::new("x", "deny-egress-but-dns", sel_all()).egress(vec![dns, same_ns])),
        probe(
            80,
            Udp,
            c.reach()
                .expect_peer(Peer::ns("x"), Peer::any(), false)
                .expect_peer(Peer::ns("x"), Peer::ns("z"), true),
        ),
        tcp80(c.reach().expect_peer(Peer::ns("x"), Peer::any(), false)),
        probe(
            81,
            Tcp,
            c.reach()
                .expect_peer(Peer::ns("x"), Peer::any(), false)
                .expect_peer(Peer::ns("x"), Peer::ns("x"), true),
        ),
    ]
}

fn delete_one_of_two(c: &Ctx) -> Vec<Step> {
    let from_y = ingress_rule(vec![peer_ns(sel_labels(&[("ns", "y")]))], vec![]);
    let from_z = ingress_rule(vec![peer_ns(sel_labels(&[("ns", "z")]))], vec![]);
    let a = sel_labels(&[("pod", "a")]);
    let base = c.reach().expect_all_ingress("x/a", false);
    vec![
        apply(Np::new("x", "a-from-y", a.clone()).ingress(vec![from_y])),
        apply(Np::new("x", "a-from-z", a).ingress(vec![from_z])),
        tcp80(
            base.clone()
                .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true)
                .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), true),
        ),
        Step::DeletePolicy {
            ns: "x",
            name: "a-from-y",
        },
        tcp80(base.expect_peer(Peer::ns("z"), Peer::pod("x", "a"), true)),
    ]
}

const fn add(title: &'static str, build: fn(&Ctx) -> Vec<Step>) -> Case {
    Case {
        title,
        origin: Origin::Addition,
        build,
    }
}

/// The additions, in the order the runner takes them.
pub fn all() -> Vec<Case> {
    vec![
        add(
            "should allow ingress only to a port range given with endPort",
            ingress_end_port,
        ),
        add(
            "should allow egress only to a UDP port range given with endPort",
            egress_end_port,
        ),
        add(
            "should stop allowing a namespace whose label was removed",
            namespace_label_removed,
        ),
        add(
            "should stop isolating a pod whose label was removed",
            pod_label_removed,
        ),
        add(
            "should follow a pod through deletion and re-creation (IP may be reused)",
            recreated_pod,
        ),
        add(
            "should allow ingress from an ipBlock of one pod IP on one port",
            ingress_ip_block,
        ),
        add(
            "should enforce matchExpressions Exists and DoesNotExist",
            exists_and_does_not_exist,
        ),
        add(
            "should allow DNS-like egress (UDP to one namespace) while denying other egress",
            dns_like_egress,
        ),
        add(
            "should keep the other policy after deleting one of two additive policies",
            delete_one_of_two,
        ),
    ]
}
