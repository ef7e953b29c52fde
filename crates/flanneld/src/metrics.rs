//! Prometheus metrics served on `/metrics` (upstream has none).
//!
//! What an operator wants to graph or alert on: is the node's lease healthy and renewed, how
//! many peers does it program, how long does it take from a peer change to the kernel holding
//! it, does the kernel refuse changes, are rules being repaired (someone or something keeps
//! deleting them), and is the datastore flapping. Names carry the `flannel_` prefix; counters
//! end in `_total` (OpenMetrics text, as prometheus-client renders it).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::Trigger;

/// Labels naming one value of one dimension.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The dimension's value (operation, trigger, result...).
    pub kind: String,
}

/// Labels of the build info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// flannel-rs version.
    pub version: String,
    /// The datastore (etcd or kube).
    pub datastore: String,
    /// The backend type.
    pub backend: String,
}

/// Labels of the lease info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// IPv4 subnet ("" when none).
    pub subnet: String,
    /// IPv6 subnet ("" when none).
    pub ipv6_subnet: String,
    /// Public IP advertised.
    pub public_ip: String,
}

/// Labels of netlink operation counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `replace route`, `delete neighbour`, ...
    pub op: String,
    /// `ok`, `absent` (delete of something already gone) or `error`.
    pub result: String,
}

/// Labels of reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// What triggered it (`peers changed`, `repair`, `device deleted`...).
    pub trigger: Trigger,
    /// `ok` or `error`.
    pub result: String,
}

impl EncodeLabelValue for Trigger {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Every metric flanneld exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 for the running build.
    pub build_info: Family<BuildLabels, Gauge>,
    /// 1 for the current lease.
    pub lease_info: Family<LeaseLabels, Gauge>,
    /// Unix time at which the lease expires (0: never, kube mode and reservations).
    pub lease_expiration: Gauge<f64, AtomicU64>,
    /// Valid peers by backend type.
    pub peers: Family<KindLabel, Gauge>,
    /// Peer leases ignored as invalid.
    pub peers_ignored: Gauge,
    /// Reconcile passes by trigger and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Duration of a reconcile pass.
    pub reconcile_duration: Histogram,
    /// Kernel operations by operation and result.
    pub netlink_ops: Family<OpLabels, Counter>,
    /// Data-plane entries written (added or replaced).
    pub entries_added: Counter,
    /// Data-plane entries removed.
    pub entries_removed: Counter,
    /// Rule sets rewritten because the kernel's differed, by mode.
    pub rule_repairs: Family<KindLabel, Counter>,
    /// Rule checks that failed, by mode.
    pub rule_errors: Family<KindLabel, Counter>,
    /// Lease renewals by result.
    pub lease_renewals: Family<KindLabel, Counter>,
    /// Datastore errors seen by the daemon, by operation.
    pub datastore_errors: Family<KindLabel, Counter>,
    /// Full re-lists of peers after the first (watch broken, compaction, 410 Gone).
    pub watch_resyncs: Counter,
    /// Health-port connections closed to make room for others, or refused (`http::admission`).
    pub http_shed: Counter,
    /// Peer events received, by kind (added, removed).
    pub lease_events: Family<KindLabel, Counter>,
    /// Time from the first peer event of a batch until the kernel holds the change.
    pub event_to_programmed: Histogram,
    /// The wireguard backend's devices (`flannel_wireguard_*`).
    pub wireguard: crate::backend::wireguard::metrics::WgMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flannel");
        let m = Metrics {
            build_info: Family::default(),
            lease_info: Family::default(),
            lease_expiration: Gauge::default(),
            peers: Family::default(),
            peers_ignored: Gauge::default(),
            reconciles: Family::default(),
            // 100 µs .. ~6.5 s
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 3.0, 11)),
            netlink_ops: Family::default(),
            entries_added: Counter::default(),
            entries_removed: Counter::default(),
            rule_repairs: Family::default(),
            rule_errors: Family::default(),
            lease_renewals: Family::default(),
            datastore_errors: Family::default(),
            watch_resyncs: Counter::default(),
            http_shed: Counter::default(),
            lease_events: Family::default(),
            // 1 ms .. ~59 s
            event_to_programmed: Histogram::new(exponential_buckets(0.001, 3.0, 11)),
            wireguard: Default::default(),
            registry: Registry::default(),
        };
        registry.register("build_info", "flannel-rs build", m.build_info.clone());
        registry.register("lease_info", "this node's lease", m.lease_info.clone());
        registry.register(
            "lease_expiration_timestamp_seconds",
            "when this node's lease expires (0: never)",
            m.lease_expiration.clone(),
        );
        registry.register(
            "peers",
            "valid peer leases by backend type",
            m.peers.clone(),
        );
        registry.register(
            "peers_ignored",
            "peer leases ignored as invalid",
            m.peers_ignored.clone(),
        );
        registry.register(
            "reconcile",
            "reconcile passes by trigger and result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "duration of a reconcile pass",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "netlink_operations",
            "kernel changes by operation and result",
            m.netlink_ops.clone(),
        );
        registry.register(
            "dataplane_entries_added",
            "routes, neighbours and FDB entries written",
            m.entries_added.clone(),
        );
        registry.register(
            "dataplane_entries_removed",
            "routes, neighbours and FDB entries removed",
            m.entries_removed.clone(),
        );
        registry.register(
            "rule_repairs",
            "masquerade/forward rule sets rewritten after drift, by mode",
            m.rule_repairs.clone(),
        );
        registry.register(
            "rule_errors",
            "failed rule checks, by mode",
            m.rule_errors.clone(),
        );
        registry.register(
            "lease_renewals",
            "lease renewals by result",
            m.lease_renewals.clone(),
        );
        registry.register(
            "datastore_errors",
            "datastore errors by operation",
            m.datastore_errors.clone(),
        );
        registry.register(
            "watch_resyncs",
            "full re-lists of the peer leases after the first",
            m.watch_resyncs.clone(),
        );
        registry.register(
            "http_shed_connections",
            "health-port connections closed to make room (slowest first) or refused",
            m.http_shed.clone(),
        );
        registry.register(
            "lease_events",
            "peer lease changes by kind",
            m.lease_events.clone(),
        );
        registry.register(
            "event_to_programmed_seconds",
            "time from a peer change to the kernel holding it",
            m.event_to_programmed.clone(),
        );
        m.wireguard
            .register(registry.sub_registry_with_prefix("wireguard"));
        Metrics { registry, ..m }
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a labelled event.
    pub fn inc(family: &Family<KindLabel, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// A shareable handle, cheap to clone into the HTTP server.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_prefix() {
        let m = Metrics::new();
        m.build_info
            .get_or_create(&BuildLabels {
                version: "v0.1.0".into(),
                datastore: "etcd".into(),
                backend: "vxlan".into(),
            })
            .set(1);
        Metrics::inc(&m.rule_repairs, "iptables");
        m.entries_added.inc_by(3);
        m.reconcile_duration.observe(0.002);
        let text = m.render();
        assert!(
            text.contains(
                "flannel_build_info{version=\"v0.1.0\",datastore=\"etcd\",backend=\"vxlan\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("flannel_rule_repairs_total{kind=\"iptables\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flannel_dataplane_entries_added_total 3"),
            "{text}"
        );
        assert!(
            text.contains("flannel_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
