//! One sync: compile the state, plan against what the kernel holds, apply.
//!
//! The first sync reads the table the kernel has (left by an earlier run, possibly with stale
//! objects) and reconciles it in one transaction; later syncs plan against the ruleset last
//! applied, which is what the kernel holds as long as nft accepted it. When nft refuses a
//! transaction nothing changed (transactions are atomic), the remembered state is dropped and
//! the next sync reads the kernel again. Rules are never flushed as a reaction to an error.

use std::sync::Arc;
use std::time::Instant;

use flannel_rules::TokioRunner;
use tracing::{debug, info};

use crate::cluster::ClusterState;
use crate::compile::{CompileOptions, compile_with};
use crate::metrics::Metrics;
use crate::nft::{ActualTable, NftError, PlanStats, apply, plan, read_counters, read_table};
use crate::ruleset::Ruleset;

/// The state of enforcement on this node.
#[derive(Debug)]
pub struct Enforcer {
    node: String,
    options: CompileOptions,
    runner: TokioRunner,
    metrics: Arc<Metrics>,
    /// What the kernel holds after the last successful apply; `None` = read it first.
    applied: Option<(ActualTable, Ruleset)>,
}

impl Enforcer {
    /// An enforcer for `node` that has not looked at the kernel yet.
    pub fn new(node: String, options: CompileOptions, metrics: Arc<Metrics>) -> Enforcer {
        Enforcer {
            node,
            options,
            runner: TokioRunner::default(),
            metrics,
            applied: None,
        }
    }

    /// The metrics this enforcer reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Brings the kernel to the ruleset of `state`.
    pub async fn sync(&mut self, state: &ClusterState) -> Result<PlanStats, NftError> {
        let started = Instant::now();
        let result = self.sync_inner(state).await;
        self.metrics
            .sync_done(result.is_ok(), started.elapsed().as_secs_f64());
        if result.is_err() {
            self.applied = None;
        }
        result
    }

    async fn sync_inner(&mut self, state: &ClusterState) -> Result<PlanStats, NftError> {
        let desired = compile_with(state, &self.node, &self.options);
        let actual = match self.applied.take() {
            Some((actual, _)) => actual,
            None => {
                let found = read_table(&self.runner).await?;
                info!(
                    "table inet flannel-netpol found: {} sets, {} chains, {} counters; reconciling",
                    found.sets.len(),
                    found.chains.len(),
                    found.counters.len()
                );
                found
            }
        };
        let tx = plan(&actual, &desired);
        apply(&self.runner, &tx).await?;
        if !tx.is_empty() {
            debug!("applied: {:?}", tx.stats);
        }
        self.metrics.observe_state(state, &desired);
        self.applied = Some((ActualTable::from(&desired), desired));
        Ok(tx.stats)
    }

    /// Reads the kernel's drop counters into `policy_drops_total` (after a successful sync).
    pub async fn refresh_counters(&self) -> Result<(), NftError> {
        let Some((_, desired)) = &self.applied else {
            return Ok(());
        };
        let table = read_counters(&self.runner).await?;
        self.metrics.observe_drops(&table, desired);
        Ok(())
    }
}
