//! NetworkPolicy conformance: upstream Kubernetes' e2e netpol suite
//! (test/e2e/network/netpol/network_policy.go), re-created over flannel-rs's lab.
//!
//! The model is upstream's: namespaces x, y, z (labelled `kubernetes.io/metadata.name=<ns>` and
//! `ns=<ns>`), pods a, b, c in each (`pod=<name>`), every pod serving TCP and UDP on ports 80 and
//! 81 (`serve-80-tcp` ...). Each case applies policies and probes every ordered pair of pods
//! (1 s timeout, self pairs ignored, the whole round probed once more on a mismatch) against an
//! expected truth table; a failure prints expected, observed and comparison tables.
//!
//! - `catalogue_passes_against_the_reference_evaluator` runs every case against an in-memory
//!   evaluator of NetworkPolicy semantics ([`reference`]), which checks the expected tables.
//! - `conformance_on_the_lab` runs them against the lab with the enforcer (`lab_cluster`).
//!   `FLANNEL_NETPOL_CASES=<substring>` selects cases by name (both tests honour it).

/// The suite's modules, in tests/netpol_conformance/.
mod netpol_conformance {
    pub mod additions;
    pub mod case;
    pub mod cluster;
    pub mod lab;
    pub mod lab_dir;
    pub mod model;
    pub mod not_ported;
    pub mod policies;
    pub mod reachability;
    pub mod reference;
    pub mod runner;
    pub mod truth_table;
    pub mod upstream;
}

use netpol_conformance::{
    additions, case, cluster, lab, model, not_ported, policies, reachability, reference, runner,
    truth_table, upstream,
};

use std::cell::Cell;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use case::{Case, Origin, Step, apply, tcp80};
use cluster::NetpolCluster;
use model::{Model, PodRef, Proto, pod};
use reachability::Peer;
use reference::{Fault, RefCluster};
use runner::{FILTER_ENV, Outcome, Runner, Summary, Verdict, setup_model};
use truth_table::TruthTable;

/// Every case: upstream's, then flannel-rs's additions.
fn catalogue() -> Vec<Case> {
    let mut cases = upstream::all();
    cases.extend(additions::all());
    cases
}

fn filter() -> Option<String> {
    std::env::var(FILTER_ENV).ok().filter(|f| !f.is_empty())
}

/// Sets up the model on `cluster` and runs `cases` (filtered) through it.
fn run_on(cluster: &dyn NetpolCluster, cases: &[Case], filter: Option<&str>) -> Vec<Outcome> {
    let model = Model::standard();
    setup_model(cluster, &model).expect("the model's namespaces and pods can be created");
    Runner::new(cluster, model, true).run_all(cases, filter)
}

fn print_not_ported() {
    println!("not ported from upstream:");
    for (file, what, why) in not_ported::NOT_PORTED {
        println!("  {file}: {what}\n    because {why}");
    }
}

#[test]
fn catalogue_passes_against_the_reference_evaluator() {
    let cluster = RefCluster::new(Model::standard(), true, Fault::None);
    let f = filter();
    let outcomes = run_on(&cluster, &catalogue(), f.as_deref());
    let summary = Summary::of(&outcomes);
    println!("{}", summary.line(upstream::all().len()));
    print_not_ported();
    assert!(summary.failed.is_empty(), "failed: {:#?}", summary.failed);
    if f.is_none() {
        assert_eq!(summary.upstream_run, 48);
        assert_eq!(summary.upstream_passed, 48);
        assert_eq!(summary.additions_run, additions::all().len());
        assert_eq!(summary.additions_passed, summary.additions_run);
    }
    // The runner put everything back: no policies, model labels only.
    let model = Model::standard();
    assert_eq!(cluster.policy_count(), 0);
    for p in model.all_pods() {
        assert_eq!(cluster.pod_labels(&p), Some(model.pod_labels(&p)), "{p}");
    }
    for ns in &model.namespaces {
        assert_eq!(
            cluster.namespace_labels(ns),
            Some(model.namespace_labels(ns)),
            "{ns}"
        );
    }
}

#[test]
fn without_sctp_exactly_the_sctp_probing_cases_are_skipped() {
    let cluster = RefCluster::new(Model::standard(), false, Fault::None);
    let outcomes = run_on(&cluster, &upstream::all(), None);
    let skipped: Vec<&str> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Skipped(_)))
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:#?}");
    assert!(
        skipped.iter().all(|n| n.contains("using SCTP")),
        "{skipped:#?}"
    );
    // The two TCP cases with SCTP-only policies still run (and must pass without SCTP).
    let sctp_policy_cases = outcomes
        .iter()
        .filter(|o| o.name.contains("even if the plugin doesn't support SCTP"))
        .filter(|o| o.verdict == Verdict::Passed)
        .count();
    assert_eq!(sctp_policy_cases, 2);
    let s = Summary::of(&outcomes);
    assert_eq!(
        (s.upstream_run, s.upstream_passed, s.upstream_skipped),
        (48, 45, 3)
    );
    assert!(s.failed.is_empty(), "{:#?}", s.failed);
}

fn failed_names(fault: Fault) -> BTreeSet<String> {
    let cluster = RefCluster::new(Model::standard(), true, fault);
    let outcomes = run_on(&cluster, &catalogue(), None);
    for o in &outcomes {
        if let Verdict::Failed(why) = &o.verdict {
            assert!(
                why.contains("expected:")
                    && why.contains("observed:")
                    && why.contains("comparison:"),
                "a mismatch shows the three tables: {why}"
            );
        }
    }
    outcomes
        .into_iter()
        .filter(|o| matches!(o.verdict, Verdict::Failed(_)))
        .map(|o| o.name)
        .collect()
}

fn assert_fails(failed: &BTreeSet<String>, needle: &str) {
    assert!(
        failed.iter().any(|n| n.contains(needle)),
        "no failure containing {needle:?} in {failed:#?}"
    );
}

#[test]
fn the_catalogue_catches_evaluators_that_get_a_rule_wrong() {
    let f = failed_names(Fault::IgnoreExcept);
    assert_fails(
        &f,
        "should enforce except clause while egress access to server in CIDR block",
    );
    assert_fails(
        &f,
        "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
    );

    let f = failed_names(Fault::SelectorsOr);
    assert_fails(
        &f,
        "should enforce policy based on PodSelector and NamespaceSelector",
    );
    assert_fails(
        &f,
        "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
    );
    assert!(
        !f.iter()
            .any(|n| n.ends_with("based on PodSelector or NamespaceSelector"))
    );

    let f = failed_names(Fault::IgnoreEgress);
    assert_fails(&f, "should support a 'default-deny-all' policy");
    assert_fails(&f, "should deny egress from all pods in a namespace");
    assert_fails(&f, "should allow egress access to server in CIDR block");
    assert!(
        !f.iter()
            .any(|n| n.ends_with("should support a 'default-deny-ingress' policy"))
    );

    let f = failed_names(Fault::NoNamedPorts);
    assert_fails(&f, "should allow ingress access on one named port");
    assert_fails(
        &f,
        "should allow ingress access from namespace on one named port",
    );
    assert_fails(&f, "should allow egress access on one named port");
    assert_eq!(f.len(), 3, "{f:#?}");
}

/// Wraps a cluster and counts probe rounds: the runner probes a mismatching round twice.
struct CountingProbes<'a> {
    inner: &'a RefCluster,
    rounds: Cell<usize>,
}

impl NetpolCluster for CountingProbes<'_> {
    fn apply(&self, objects: &[serde_json::Value]) -> anyhow::Result<()> {
        self.inner.apply(objects)
    }
    fn delete_policy(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        self.inner.delete_policy(ns, name)
    }
    fn delete_all_policies(&self) -> anyhow::Result<()> {
        self.inner.delete_all_policies()
    }
    fn label_pod(&self, pod: &PodRef, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        self.inner.label_pod(pod, key, value)
    }
    fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        self.inner.label_namespace(ns, key, value)
    }
    fn create_pod(
        &self,
        pod: &PodRef,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        self.inner.create_pod(pod, labels)
    }
    fn delete_pod(&self, pod: &PodRef) -> anyhow::Result<()> {
        self.inner.delete_pod(pod)
    }
    fn pod_ips(&self, pod: &PodRef) -> anyhow::Result<Vec<IpAddr>> {
        self.inner.pod_ips(pod)
    }
    fn supports(&self, proto: Proto) -> bool {
        self.inner.supports(proto)
    }
    fn probe_all(
        &self,
        pods: &[PodRef],
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> anyhow::Result<TruthTable> {
        self.rounds.set(self.rounds.get() + 1);
        self.inner.probe_all(pods, port, proto, timeout)
    }
}

/// A deny-all-ingress in y, expected right, or with one wrong cell (x/a reaching y/b).
fn deny_all_into_y(c: &case::Ctx, wrong_cell: bool) -> Vec<Step> {
    let mut expected = c.reach().expect_peer(Peer::any(), Peer::ns("y"), false);
    if wrong_cell {
        expected = expected.expect("x/a", "y/b", true);
    }
    vec![
        apply(policies::Np::new("y", "deny-all", policies::sel_all()).ingress(vec![])),
        tcp80(expected),
    ]
}

#[test]
fn a_wrong_expectation_is_probed_twice_then_fails_with_the_differing_cell() {
    let inner = RefCluster::new(Model::standard(), true, Fault::None);
    let cluster = CountingProbes {
        inner: &inner,
        rounds: Cell::new(0),
    };
    let wrong = Case {
        title: "deliberately wrong: x/a expected to reach y/b through a deny-all on y",
        origin: Origin::Addition,
        build: |c| deny_all_into_y(c, true),
    };
    let right = Case {
        title: "the same without the wrong cell",
        origin: Origin::Addition,
        build: |c| deny_all_into_y(c, false),
    };
    let outcomes = run_on(&cluster, &[wrong, right], None);
    let Verdict::Failed(why) = &outcomes[0].verdict else {
        panic!("the wrong table passed: {:?}", outcomes[0]);
    };
    assert!(why.contains("incorrect:1"), "{why}");
    assert!(why.contains("try 2 of 2"), "{why}");
    assert!(
        why.contains("x/a\t-\t.\t.\t.\tX\t"),
        "comparison row of x/a marks y/b: {why}"
    );
    assert_eq!(outcomes[1].verdict, Verdict::Passed);
    assert_eq!(
        cluster.rounds.get(),
        3,
        "wrong case probed twice, right case once"
    );
    assert_eq!(inner.policy_count(), 0);
}

#[test]
fn catalogue_titles_are_unique_and_upstream_count_is_complete() {
    let all = catalogue();
    let names: BTreeSet<String> = all.iter().map(Case::full_name).collect();
    assert_eq!(names.len(), all.len(), "duplicate case names");
    let per_ctx = |ctx: &'static str| {
        all.iter()
            .filter(|c| c.origin == Origin::Upstream(ctx))
            .count()
    };
    assert_eq!(per_ctx("NetworkPolicy between server and client"), 42);
    assert_eq!(
        per_ctx("NetworkPolicy between server and client using UDP"),
        3
    );
    assert_eq!(
        per_ctx("NetworkPolicy between server and client using SCTP"),
        3
    );
    // Every case probes at least once and every expectation covers the 9 x 9 model.
    let cluster = RefCluster::new(Model::standard(), true, Fault::None);
    setup_model(&cluster, &Model::standard()).expect("model");
    let ctx_ips = Model::standard()
        .all_pods()
        .into_iter()
        .map(|p| {
            let ip = cluster.pod_ips(&p).expect("ip")[0];
            (p, ip)
        })
        .collect();
    let ctx = case::Ctx {
        model: Model::standard(),
        ips: ctx_ips,
    };
    for c in &all {
        let steps = (c.build)(&ctx);
        let probes: Vec<&reachability::Reachability> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Probe { expected, .. } => Some(expected),
                _ => None,
            })
            .collect();
        assert!(!probes.is_empty(), "{} never probes", c.full_name());
        for r in probes {
            assert_eq!(r.expected.items().len(), 9);
            assert!(
                r.expected
                    .pairs()
                    .iter()
                    .all(|(f, t)| r.expected.get(f, t).is_some())
            );
        }
    }
    assert_eq!(ctx.ip("x/a"), cluster.pod_ips(&pod("x/a")).expect("ip")[0]);
}

/// The lab with the enforcer on every node (3 nodes, `flannel-lab up --datastore kube
/// --netpol`), carrying nothing yet: the runner creates the model's namespaces and pods through
/// the trait ([`lab::LabCluster`] spreads them over the nodes).
fn lab_cluster() -> anyhow::Result<Box<dyn NetpolCluster>> {
    Ok(Box::new(lab::LabCluster::up()?))
}

#[test]
fn conformance_on_the_lab() {
    flannel_lab::require_root("run the NetworkPolicy conformance suite on the lab")
        .expect("the lab needs root");
    let started = std::time::Instant::now();
    let cluster = lab_cluster().expect("lab cluster");
    let up = started.elapsed();
    let f = filter();
    let outcomes = run_on(cluster.as_ref(), &catalogue(), f.as_deref());
    let summary = Summary::of(&outcomes);
    println!("{}", summary.line(upstream::all().len()));
    println!(
        "lab up in {up:.1?}, cases in {:.1?}",
        started.elapsed() - up
    );
    print_not_ported();
    assert!(summary.failed.is_empty(), "failed: {:#?}", summary.failed);
}
