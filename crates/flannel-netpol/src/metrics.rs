//! Prometheus metrics of the enforcer, served on `/metrics` (prefix `flannel_netpol_`).
//!
//! What an operator asks of a policy engine: how many policies and selected pods does this
//! node enforce, how big is the table, how long does a sync take and does it fail, which
//! policies drop traffic (from the nft counters, one label set per policy and direction, removed
//! with the policy so the label sets stay bounded), how many policies are invalid, and is the
//! API flapping.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cluster::ClusterState;
use crate::flows::metrics::FlowMetrics;
use crate::nft::ActualTable;
use crate::ruleset::Ruleset;

/// `result` label of `syncs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: String,
}

/// `resource` label of `api_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// `pods`, `namespaces` or `networkpolicies`.
    pub resource: String,
}

/// Labels of `policy_drops_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DropLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
}

/// Every metric of the enforcer, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Policies known (cluster-wide).
    pub policies: Gauge,
    /// Local pods selected by at least one policy.
    pub selected_pods: Gauge,
    /// Elements in the table's sets.
    pub nft_elements: Gauge,
    /// Duration of a sync (compile, plan, apply).
    pub sync_duration: Histogram,
    /// Syncs by result.
    pub syncs: Family<ResultLabel, Counter>,
    /// Packets dropped per policy and direction (nft counters).
    pub policy_drops: Family<DropLabels, Counter>,
    /// Policies with at least one problem.
    pub invalid_policies: Gauge,
    /// API watch errors by resource.
    pub api_errors: Family<ResourceLabel, Counter>,
    /// Per resource, the newest resourceVersion the last successful sync covered.
    pub synced_resource_version: Family<ResourceLabel, Gauge>,
    /// Flow records, drops by policy and lost events (see [`crate::flows::metrics`]).
    pub flows: std::sync::Arc<FlowMetrics>,
    /// Connections of the enforcer's port closed to make room, or refused.
    pub http_shed: Counter,
    /// Last counter value seen per label set, to turn kernel totals into increments.
    last_drops: Mutex<BTreeMap<DropLabels, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flannel_netpol");
        let m = Metrics {
            registry: Registry::default(),
            policies: Gauge::default(),
            selected_pods: Gauge::default(),
            nft_elements: Gauge::default(),
            // 100 µs .. ~6.5 s
            sync_duration: Histogram::new(exponential_buckets(0.0001, 3.0, 11)),
            syncs: Family::default(),
            policy_drops: Family::default(),
            invalid_policies: Gauge::default(),
            api_errors: Family::default(),
            synced_resource_version: Family::default(),
            flows: std::sync::Arc::default(),
            http_shed: Counter::default(),
            last_drops: Mutex::new(BTreeMap::new()),
        };
        registry.register("policies", "NetworkPolicies known", m.policies.clone());
        registry.register(
            "selected_pods",
            "local pods selected by at least one policy",
            m.selected_pods.clone(),
        );
        registry.register(
            "nft_elements",
            "elements in the sets of table inet flannel-netpol",
            m.nft_elements.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "time to compile, plan and apply one change",
            m.sync_duration.clone(),
        );
        registry.register("syncs", "syncs by result", m.syncs.clone());
        registry.register(
            "policy_drops",
            "packets dropped, attributed to the first policy selecting the pod",
            m.policy_drops.clone(),
        );
        registry.register(
            "invalid_policies",
            "policies with invalid parts (enforced as far as valid, failing closed)",
            m.invalid_policies.clone(),
        );
        registry.register(
            "api_errors",
            "Kubernetes API watch errors by resource",
            m.api_errors.clone(),
        );
        registry.register(
            "synced_resource_version",
            "newest metadata.resourceVersion per watched resource that the last successful sync enforces",
            m.synced_resource_version.clone(),
        );
        registry.register(
            "http_shed_connections",
            "connections of the metrics port closed to make room (slowest first) or refused",
            m.http_shed.clone(),
        );
        m.flows.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a sync.
    pub fn sync_done(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.syncs
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.sync_duration.observe(seconds);
    }

    /// Counts an API error of a resource.
    pub fn api_error(&self, resource: &str) {
        self.api_errors
            .get_or_create(&ResourceLabel {
                resource: resource.into(),
            })
            .inc();
    }

    /// Publishes, per resource, the newest resourceVersion a successful sync covered: a client
    /// that wrote an object at version N knows this node enforces it once the gauge is >= N.
    pub fn synced_versions(&self, versions: &BTreeMap<&'static str, u64>) {
        for (resource, rv) in versions {
            let label = ResourceLabel {
                resource: (*resource).into(),
            };
            self.synced_resource_version
                .get_or_create(&label)
                .set(i64::try_from(*rv).unwrap_or(i64::MAX));
        }
    }

    /// Gauges after a successful sync.
    pub fn observe_state(&self, state: &ClusterState, applied: &Ruleset) {
        let (_, _, policies) = state.counts();
        self.policies.set(policies as i64);
        let invalid = state.policies().filter(|p| !p.problems.is_empty()).count();
        self.invalid_policies.set(invalid as i64);
        self.nft_elements.set(applied.element_count() as i64);
        // A dual-stack pod is in both families' sets: count the larger family.
        let count = |suffix: &str| {
            let mut addrs: std::collections::BTreeSet<&crate::ruleset::Element> =
                std::collections::BTreeSet::new();
            for (name, set) in &applied.sets {
                if name.ends_with(suffix) && name.starts_with('p') {
                    addrs.extend(set.elements.iter());
                }
            }
            addrs.len()
        };
        self.selected_pods
            .set(count("-sel-v4").max(count("-sel-v6")) as i64);
    }

    /// Turns the kernel's drop counters into `policy_drops_total` increments, and drops the
    /// label sets of policies that are gone.
    pub fn observe_drops(&self, table: &ActualTable, applied: &Ruleset) {
        let mut last = self.last_drops.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = BTreeMap::new();
        for (name, value) in &table.counters {
            let (Some(owner), Some(direction)) = (
                applied.owner_of(name),
                match name.rsplit('-').next() {
                    Some("in") => Some("ingress"),
                    Some("eg") => Some("egress"),
                    _ => None,
                },
            ) else {
                continue;
            };
            let (namespace, policy) = owner.split_once('/').unwrap_or(("", owner));
            let labels = DropLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                direction: direction.into(),
            };
            let before = last.get(&labels).copied().unwrap_or(0);
            // A counter below its last value was recreated: count from zero.
            let delta = value.packets.checked_sub(before).unwrap_or(value.packets);
            self.policy_drops.get_or_create(&labels).inc_by(delta);
            seen.insert(labels, value.packets);
        }
        for gone in last.keys().filter(|l| !seen.contains_key(*l)) {
            self.policy_drops.remove(gone);
        }
        *last = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::CounterValue;

    #[test]
    fn drops_follow_the_kernel_counters_and_disappear_with_the_policy() {
        let m = Metrics::new();
        let mut rs = Ruleset::default();
        rs.policies.insert("p1".into(), "x/deny".into());
        let mut table = ActualTable::default();
        table.counters.insert(
            "p1-drop-in".into(),
            CounterValue {
                packets: 5,
                bytes: 300,
            },
        );
        m.observe_drops(&table, &rs);
        table.counters.get_mut("p1-drop-in").unwrap().packets = 7;
        m.observe_drops(&table, &rs);
        let text = m.render();
        assert!(
            text.contains(
                "flannel_netpol_policy_drops_total{namespace=\"x\",policy=\"deny\",direction=\"ingress\"} 7"
            ),
            "{text}"
        );
        m.observe_drops(&ActualTable::default(), &Ruleset::default());
        assert!(!m.render().contains("policy_drops_total{"));
        m.sync_done(true, 0.01);
        m.api_error("networkpolicies");
        let text = m.render();
        assert!(
            text.contains("flannel_netpol_syncs_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flannel_netpol_api_errors_total{resource=\"networkpolicies\"} 1"),
            "{text}"
        );
        assert!(text.contains("flannel_netpol_sync_duration_seconds_count 1"));
        assert!(
            text.contains("flannel_netpol_flow_events_lost_total{source=\"nflog\"} 0"),
            "{text}"
        );
        m.synced_versions(&BTreeMap::from([("pods", 41), ("networkpolicies", 7)]));
        let text = m.render();
        assert!(
            text.contains("flannel_netpol_synced_resource_version{resource=\"pods\"} 41"),
            "{text}"
        );
    }
}
