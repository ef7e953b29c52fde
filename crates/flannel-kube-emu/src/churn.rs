//! Churn on generated nodes: kubelet status heartbeats (every node's conditions get a new
//! `lastHeartbeatTime` once per interval, spread evenly over it, as 5000 kubelets' timers are)
//! and flannel annotation changes (a new VtepMAC on K nodes), so a scale test can measure what
//! updates that change nothing flannel reads cost the agent, and how fast a real change is
//! programmed.
//!
//! The loops run as tasks of the emulator's runtime and end when the [`Churn`] handle is
//! dropped (the binary drops it with the server).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::generate::{ANNOTATION_PREFIX, CONDITION_TYPES, vtep_mac};
use crate::store::{PatchType, Subresource, rfc3339_now};
use crate::{ApiError, Emulator};

/// How often the heartbeat loop wakes up at most; each wake-up sends the heartbeats that fell
/// due since the last one.
const HEARTBEAT_TICK: Duration = Duration::from_millis(10);

/// Which churn loops run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChurnOptions {
    /// Every generated node gets one status heartbeat per interval (at least one second: the
    /// API's times have whole seconds, so faster heartbeats would change nothing).
    pub heartbeat_interval: Option<Duration>,
    /// How many generated nodes get a new VtepMAC per `annotation_interval`.
    pub annotation_churn: usize,
    /// The annotation churn's period; no annotation churn without it.
    pub annotation_interval: Option<Duration>,
}

/// One flannel annotation change made by [`Emulator::churn_annotations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationChange {
    /// The node.
    pub name: String,
    /// Its new VtepMAC.
    pub vtep_mac: String,
    /// The resourceVersion of the change.
    pub resource_version: String,
}

/// A batch of annotation changes and when they were committed (all under one store lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationChurn {
    /// The changes, in order.
    pub changes: Vec<AnnotationChange>,
    /// Wall-clock time just before the first commit, in nanoseconds since the epoch, so a
    /// bench can measure event-to-programmed latency against its own clock.
    pub unix_nanos: u128,
}

/// The running churn loops; dropping it stops them.
#[derive(Debug, Default)]
pub struct Churn {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Churn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Emulator {
    /// Starts the churn loops `opts` asks for, on the current tokio runtime.
    pub fn start_churn(&self, opts: ChurnOptions) -> Churn {
        let mut tasks = Vec::new();
        if let Some(interval) = opts.heartbeat_interval {
            let emu = self.clone();
            let interval = interval.max(Duration::from_secs(1));
            tasks.push(tokio::spawn(
                async move { emu.heartbeat_loop(interval).await },
            ));
        }
        if let (Some(interval), k @ 1..) = (opts.annotation_interval, opts.annotation_churn) {
            let emu = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval.max(HEARTBEAT_TICK));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = emu.churn_annotations(k) {
                        tracing::warn!("annotation churn: {e}");
                    }
                }
            }));
        }
        Churn { tasks }
    }

    /// Sends every generated node's heartbeat once per `interval`, at evenly spaced times:
    /// on each tick, the nodes whose slot has passed since the last tick.
    async fn heartbeat_loop(&self, interval: Duration) {
        let names = self.generated_names();
        let n = names.len() as u128;
        if n == 0 {
            return;
        }
        let start = Instant::now();
        let mut done: u128 = 0;
        let mut tick = tokio::time::interval(HEARTBEAT_TICK.max(interval / 1000));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let due = start.elapsed().as_nanos() * n / interval.as_nanos().max(1);
            // At most one round per tick, should the emulator fall behind.
            let upto = due.min(done + n);
            let batch: Vec<&str> = (done..upto)
                .map(|j| names[(j % n) as usize].as_str())
                .collect();
            done = upto;
            if let Err(e) = self.heartbeat(&batch) {
                tracing::warn!("heartbeat: {e}");
            }
        }
    }

    /// One kubelet status heartbeat for each of `names`: the conditions' `lastHeartbeatTime`
    /// becomes now (a `PATCH nodes/<n>/status` as the kubelet sends it). A node that does not
    /// exist (deleted by a test) is skipped.
    pub fn heartbeat(&self, names: &[&str]) -> Result<(), ApiError> {
        if names.is_empty() {
            return Ok(());
        }
        let now = rfc3339_now();
        // Conditions merge by `type`: the patch names each with its new heartbeat time and
        // leaves the rest of the condition as it is.
        let conditions: Vec<_> = CONDITION_TYPES
            .iter()
            .map(|t| json!({ "type": t, "lastHeartbeatTime": now }))
            .collect();
        let patch = json!({ "status": { "conditions": conditions } });
        let mut store = self.store();
        for name in names {
            match store.patch_node(name, &patch, PatchType::Strategic, Subresource::Status) {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Gives the next `k` generated nodes (round robin) a new VtepMAC in their
    /// `backend-data` annotation, all under one lock, and says when.
    pub fn churn_annotations(&self, k: usize) -> Result<AnnotationChurn, ApiError> {
        let names = self.generated_names();
        let mut changes = Vec::with_capacity(k);
        let mut store = self.store();
        // Taken before the first commit, so latencies measured from it include the batch's
        // own commit time (they err long, never short).
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for _ in 0..k.min(names.len()) {
            let seq = self.inner.churn_seq.fetch_add(1, Ordering::SeqCst);
            let i = (seq % names.len() as u64) as usize;
            let generation = 1 + seq / names.len() as u64;
            let mac = vtep_mac(i, generation);
            let patch = json!({ "metadata": { "annotations": {
                format!("{ANNOTATION_PREFIX}/backend-data"):
                    format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            } } });
            let node = store.patch_node(&names[i], &patch, PatchType::Merge, Subresource::Main)?;
            changes.push(AnnotationChange {
                name: names[i].clone(),
                vtep_mac: mac,
                resource_version: node["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        drop(store);
        Ok(AnnotationChurn {
            changes,
            unix_nanos,
        })
    }
}
