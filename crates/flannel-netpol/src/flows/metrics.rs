//! Flow metrics with bounded cardinality, registered into the enforcer's `/metrics`:
//! `flows_total{verdict,protocol}` (2 × 6 label sets at most),
//! `flow_drops_total{policy}` (at most [`MAX_POLICY_LABELS`] distinct policies, then `other`),
//! `flow_events_lost_total{source}` (one label per [`LossSource`]).
//!
//! Policies come and go; their names are unbounded input. The first [`MAX_POLICY_LABELS`]
//! policy texts seen keep their own label for the life of the process (a counter must not
//! vanish while Prometheus scrapes it) and every later one counts under `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::flows::record::{FlowRecord, Verdict};

/// Distinct `policy` label values of `flow_drops_total` before `other`.
pub const MAX_POLICY_LABELS: usize = 100;

/// Labels of `flows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// FORWARDED or DROPPED.
    pub verdict: String,
    /// TCP, UDP, ICMP, ICMPv6, SCTP or other.
    pub protocol: String,
}

/// Labels of `flow_drops_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// The drop's policy text (`namespace/name`, `default deny`), or `other` past the cap.
    pub policy: String,
}

/// Labels of `flow_events_lost_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// See [`LossSource`].
    pub source: String,
}

/// Where events were lost: the kernel found a reader's socket buffer full (ENOBUFS, one count
/// per overrun, each one or more events) or a datagram did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossSource {
    /// Conntrack events (socket overrun).
    Conntrack,
    /// NFLOG packets (socket overrun or the kernel's own drop count).
    Nflog,
}

impl LossSource {
    fn label(self) -> SourceLabel {
        let source = match self {
            LossSource::Conntrack => "conntrack",
            LossSource::Nflog => "nflog",
        };
        SourceLabel {
            source: source.into(),
        }
    }
}

/// The flow metrics.
#[derive(Debug, Default)]
pub struct FlowMetrics {
    /// Records stored, by verdict and protocol.
    pub flows: Family<FlowLabels, Counter>,
    /// Drops by policy (capped).
    pub drops: Family<PolicyLabel, Counter>,
    /// Events lost, by source.
    pub lost: Family<SourceLabel, Counter>,
    policies: Mutex<HashSet<String>>,
}

impl FlowMetrics {
    /// Registers the families into the enforcer's registry (prefix `flannel_netpol_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "flows",
            "flow records by verdict and protocol",
            self.flows.clone(),
        );
        registry.register(
            "flow_drops",
            "dropped-packet records by policy (distinct policies capped, then \"other\")",
            self.drops.clone(),
        );
        registry.register(
            "flow_events_lost",
            "flow events lost (socket overruns, undecodable datagrams) by source",
            self.lost.clone(),
        );
        // Losses show as 0 before the first one, so a rate() has a series to start from.
        for s in [LossSource::Conntrack, LossSource::Nflog] {
            let _ = self.lost.get_or_create(&s.label());
        }
    }

    /// Counts a stored record.
    pub fn record(&self, r: &FlowRecord) {
        self.flows
            .get_or_create(&FlowLabels {
                verdict: r.verdict.as_str().into(),
                protocol: r.protocol.as_str().into(),
            })
            .inc();
        if r.verdict == Verdict::Dropped {
            let policy = r.policy.as_deref().unwrap_or("default deny");
            let label = {
                let mut seen = self.policies.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(policy) || seen.len() < MAX_POLICY_LABELS {
                    seen.insert(policy.to_string());
                    policy.to_string()
                } else {
                    "other".to_string()
                }
            };
            self.drops
                .get_or_create(&PolicyLabel { policy: label })
                .inc();
        }
    }

    /// Counts `n` events lost at `source`.
    pub fn lost(&self, source: LossSource, n: u64) {
        self.lost.get_or_create(&source.label()).inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::tests::tcp_facts;

    fn render(m: &FlowMetrics) -> String {
        let mut reg = Registry::with_prefix("flannel_netpol");
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn policy_labels_are_capped_and_losses_counted() {
        let m = FlowMetrics::default();
        let mut f = tcp_facts("10.0.0.1", "10.0.0.2", 0);
        m.record(&FlowRecord::from_facts(f.clone()));
        f.verdict = Verdict::Dropped;
        for i in 0..MAX_POLICY_LABELS + 5 {
            f.policy = Some(format!("x/p{i}"));
            m.record(&FlowRecord::from_facts(f.clone()));
        }
        // A policy seen before the cap keeps its label after it.
        f.policy = Some("x/p0".into());
        m.record(&FlowRecord::from_facts(f.clone()));
        f.policy = None;
        m.record(&FlowRecord::from_facts(f));
        m.lost(LossSource::Conntrack, 3);
        let text = render(&m);
        let has = |s: &str| text.contains(s);
        assert!(
            has("flannel_netpol_flows_total{verdict=\"FORWARDED\",protocol=\"TCP\"} 1"),
            "{text}"
        );
        assert!(has(
            "flannel_netpol_flows_total{verdict=\"DROPPED\",protocol=\"TCP\"} 107"
        ));
        assert!(has("flannel_netpol_flow_drops_total{policy=\"x/p0\"} 2"));
        // 5 past the cap, and "default deny" which arrived past it too.
        assert!(
            has("flannel_netpol_flow_drops_total{policy=\"other\"} 6"),
            "{text}"
        );
        assert!(!has("policy=\"x/p100\""));
        let series = text.matches("flannel_netpol_flow_drops_total{").count();
        assert_eq!(series, MAX_POLICY_LABELS + 1);
        assert!(has(
            "flannel_netpol_flow_events_lost_total{source=\"conntrack\"} 3"
        ));
        assert!(has(
            "flannel_netpol_flow_events_lost_total{source=\"nflog\"} 0"
        ));
    }
}
