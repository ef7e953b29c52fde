//! Runs cases against a [`NetpolCluster`]: sets up the model, runs each case's steps in order,
//! compares every probe round with its expected table (one retry of the whole round on a
//! mismatch, as upstream's `ValidateOrFail`), and puts the cluster back between cases (all
//! policies deleted, touched labels restored, recreated pods relabelled).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;

use super::case::{Case, Ctx, Origin, Step};
use super::cluster::NetpolCluster;
use super::model::{Model, PodRef, Proto};
use super::not_ported::SKIP_SCTP;
use super::reachability::Reachability;
use super::truth_table::compare;

/// Upstream's probe timeout (agnhost connect `--timeout=1s`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The environment variable selecting cases by (case-insensitive) substring of their full name.
pub const FILTER_ENV: &str = "FLANNEL_NETPOL_CASES";

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every probe round matched.
    Passed,
    /// A step failed or a probe round mismatched twice; the text says which and shows tables.
    Failed(String),
    /// Not runnable here, and why.
    Skipped(&'static str),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case's full name.
    pub name: String,
    /// Upstream or addition.
    pub origin: Origin,
    /// The verdict.
    pub verdict: Verdict,
}

/// Namespaces (labelled), then every model pod with its model labels.
pub fn setup_model(cluster: &dyn NetpolCluster, model: &Model) -> anyhow::Result<()> {
    let namespaces: Vec<serde_json::Value> = model
        .namespaces
        .iter()
        .map(|ns| {
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": ns, "labels": model.namespace_labels(ns) },
            })
        })
        .collect();
    cluster.apply(&namespaces)?;
    for pod in model.all_pods() {
        cluster.create_pod(&pod, &model.pod_labels(&pod))?;
    }
    cluster.settle()
}

/// Labels a case changed, to restore afterwards.
#[derive(Default)]
struct Touched {
    pods: BTreeMap<PodRef, BTreeSet<String>>,
    namespaces: BTreeMap<String, BTreeSet<String>>,
}

/// Drives one cluster through cases.
pub struct Runner<'a> {
    cluster: &'a dyn NetpolCluster,
    model: Model,
    verbose: bool,
}

impl<'a> Runner<'a> {
    /// A runner over `cluster` (which must already hold the model, see [`setup_model`]).
    pub fn new(cluster: &'a dyn NetpolCluster, model: Model, verbose: bool) -> Runner<'a> {
        Runner {
            cluster,
            model,
            verbose,
        }
    }

    fn ctx(&self) -> anyhow::Result<Ctx> {
        let mut ips = BTreeMap::new();
        for pod in self.model.all_pods() {
            let ip = self
                .cluster
                .pod_ips(&pod)?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("pod {pod} has no IP"))?;
            ips.insert(pod, ip);
        }
        Ok(Ctx {
            model: self.model.clone(),
            ips,
        })
    }

    /// Runs one case and puts the cluster back.
    pub fn run(&self, case: &Case) -> Outcome {
        let name = case.full_name();
        let verdict = match self.ctx() {
            Err(e) => Verdict::Failed(format!("reading pod IPs: {e:#}")),
            Ok(ctx) => {
                let steps = (case.build)(&ctx);
                let needs_sctp = steps.iter().any(|s| {
                    matches!(
                        s,
                        Step::Probe {
                            proto: Proto::Sctp,
                            ..
                        }
                    )
                });
                if needs_sctp && !self.cluster.supports(Proto::Sctp) {
                    Verdict::Skipped(SKIP_SCTP)
                } else {
                    let mut touched = Touched::default();
                    let run = self.run_steps(&steps, &mut touched);
                    let reset = self.reset(&touched);
                    match (run, reset) {
                        (Ok(()), Ok(())) => Verdict::Passed,
                        (Err(e), _) => Verdict::Failed(e),
                        (Ok(()), Err(e)) => Verdict::Failed(format!("cleanup: {e:#}")),
                    }
                }
            }
        };
        if self.verbose {
            match &verdict {
                Verdict::Passed => println!("PASS {name}"),
                Verdict::Failed(why) => println!("FAIL {name}\n{why}"),
                Verdict::Skipped(why) => println!("SKIP {name}: {why}"),
            }
        }
        Outcome {
            name,
            origin: case.origin,
            verdict,
        }
    }

    fn run_steps(&self, steps: &[Step], touched: &mut Touched) -> Result<(), String> {
        for (i, step) in steps.iter().enumerate() {
            let n = i + 1;
            match step {
                Step::Probe {
                    port,
                    proto,
                    expected,
                } => self
                    .check(*port, *proto, expected)
                    .map_err(|e| format!("step {n} (probe {port}/{proto}): {e}"))?,
                other => self
                    .mutate(other, touched)
                    .and_then(|()| self.cluster.settle())
                    .map_err(|e| format!("step {n} ({other:?}): {e:#}"))?,
            }
        }
        Ok(())
    }

    fn mutate(&self, step: &Step, touched: &mut Touched) -> anyhow::Result<()> {
        let c = self.cluster;
        match step {
            Step::Apply(objects) => c.apply(objects),
            Step::DeletePolicy { ns, name } => c.delete_policy(ns, name),
            Step::DeleteAllPolicies => c.delete_all_policies(),
            Step::LabelPod { pod, key, value } => {
                touched
                    .pods
                    .entry(pod.clone())
                    .or_default()
                    .insert((*key).to_owned());
                c.label_pod(pod, key, *value)
            }
            Step::LabelNamespace { ns, key, value } => {
                let keys = touched.namespaces.entry((*ns).to_owned()).or_default();
                keys.insert((*key).to_owned());
                c.label_namespace(ns, key, *value)
            }
            Step::RecreatePod { pod, labels } => {
                let keys = touched.pods.entry(pod.clone()).or_default();
                keys.extend(labels.keys().cloned());
                keys.extend(self.model.pod_labels(pod).into_keys());
                c.delete_pod(pod)?;
                c.create_pod(pod, labels)
            }
            Step::Probe { .. } => unreachable!("probes are not mutations"),
        }
    }

    /// One probe round, retried once on a mismatch; the error text shows the three tables.
    fn check(&self, port: u16, proto: Proto, expected: &Reachability) -> Result<(), String> {
        let pods = self.model.all_pods();
        let mut last = String::new();
        for attempt in 1..=2 {
            let observed = self
                .cluster
                .probe_all(&pods, port, proto, PROBE_TIMEOUT)
                .map_err(|e| format!("probing: {e:#}"))?;
            let cmp = compare(&expected.expected, &observed, true);
            if cmp.wrong.is_empty() {
                return Ok(());
            }
            last = format!(
                "reachability: correct:{}, incorrect:{}, ignored:{} (try {attempt} of 2)\n\
                 expected:\n{}\nobserved:\n{}\ncomparison:\n{}",
                cmp.correct,
                cmp.wrong.len(),
                cmp.ignored,
                expected.expected.pretty(),
                observed.pretty(),
                cmp.pretty()
            );
            if self.verbose && attempt == 1 {
                println!(
                    "  {} wrong results on the first try, probing again",
                    cmp.wrong.len()
                );
            }
        }
        Err(last)
    }

    /// Deletes all policies and restores every label a case touched to the model's value.
    fn reset(&self, touched: &Touched) -> anyhow::Result<()> {
        let c = self.cluster;
        c.delete_all_policies()?;
        for (pod, keys) in &touched.pods {
            let model = self.model.pod_labels(pod);
            for key in keys {
                c.label_pod(pod, key, model.get(key).map(String::as_str))?;
            }
        }
        for (ns, keys) in &touched.namespaces {
            let model = self.model.namespace_labels(ns);
            for key in keys {
                c.label_namespace(ns, key, model.get(key).map(String::as_str))?;
            }
        }
        c.settle()
    }

    /// Runs the cases whose full name contains `filter` (case-insensitive; all when `None`).
    pub fn run_all(&self, cases: &[Case], filter: Option<&str>) -> Vec<Outcome> {
        let filter = filter.map(str::to_lowercase);
        cases
            .iter()
            .filter(|c| {
                filter
                    .as_deref()
                    .is_none_or(|f| c.full_name().to_lowercase().contains(f))
            })
            .map(|c| self.run(c))
            .collect()
    }
}

/// Counts of a run, per origin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Upstream cases run (ported and selected).
    pub upstream_run: usize,
    /// Of those, passed.
    pub upstream_passed: usize,
    /// Of those, skipped.
    pub upstream_skipped: usize,
    /// Additions run.
    pub additions_run: usize,
    /// Of those, passed.
    pub additions_passed: usize,
    /// Full names of failed cases.
    pub failed: Vec<String>,
}

impl Summary {
    /// Tallies outcomes.
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let mut s = Summary::default();
        for o in outcomes {
            let upstream = matches!(o.origin, Origin::Upstream(_));
            let (run, passed) = if upstream {
                (&mut s.upstream_run, &mut s.upstream_passed)
            } else {
                (&mut s.additions_run, &mut s.additions_passed)
            };
            *run += 1;
            match &o.verdict {
                Verdict::Passed => *passed += 1,
                Verdict::Skipped(_) if upstream => s.upstream_skipped += 1,
                Verdict::Skipped(_) => {}
                Verdict::Failed(_) => s.failed.push(o.name.clone()),
            }
        }
        s
    }

    /// The line the conformance test prints.
    pub fn line(&self, upstream_total: usize) -> String {
        format!(
            "upstream: ported {upstream_total}, run {}, passed {}, skipped {}; \
             flannel-rs additions: run {}, passed {}; failed: {}",
            self.upstream_run,
            self.upstream_passed,
            self.upstream_skipped,
            self.additions_run,
            self.additions_passed,
            self.failed.len()
        )
    }
}
