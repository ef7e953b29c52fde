//! The collector: kernel facts in, named and counted records into the ring.
//!
//! The kernel readers ([`crate::flows::sources`]) call [`Collector::ingest`] on their own
//! threads, one event at a time: naming is a hash lookup in the latest
//! [`crate::flows::enrich::PodDirectory`] and storing is a short lock on the ring, so there
//! is no queue between reader and collector and no thread to wake per event (a channel and
//! a collector task cost as much again as the reading, measured in `benches/flows.rs`). A
//! reader that cannot keep up leaves events in the kernel's socket buffer, and when that is
//! full the kernel drops them and the reader counts the overrun: the packet path never waits.
//! Conntrack flows are kept only when one side is a pod (the node's own connections are not
//! pod traffic); drops always have a pod side, since only pod addresses are isolated.

use std::sync::Arc;

use crate::flows::enrich::SharedDirectory;
use crate::flows::metrics::{FlowMetrics, LossSource};
use crate::flows::record::{FlowRecord, KernelFacts, Verdict};
use crate::flows::ring::FlowRing;

/// Names, counts and stores records; shared by the reader threads as `Arc<Collector>`.
#[derive(Debug)]
pub struct Collector {
    node: String,
    ring: Arc<FlowRing>,
    directory: SharedDirectory,
    metrics: Arc<FlowMetrics>,
}

impl Collector {
    /// A collector for `node` storing into `ring`.
    pub fn new(
        node: String,
        ring: Arc<FlowRing>,
        directory: SharedDirectory,
        metrics: Arc<FlowMetrics>,
    ) -> Collector {
        Collector {
            node,
            ring,
            directory,
            metrics,
        }
    }

    /// Names, filters, counts and stores one event; returns whether it was kept.
    pub fn ingest(&self, facts: KernelFacts) -> bool {
        let mut record = FlowRecord::from_facts(facts);
        let directory = self.directory.get();
        if record.verdict == Verdict::Forwarded && !directory.is_pod_flow(&record) {
            return false;
        }
        directory.enrich(&mut record, &self.node);
        self.metrics.record(&record);
        self.ring.push(record);
        true
    }

    /// Counts events a source lost before they reached the collector (socket overruns,
    /// undecodable datagrams).
    pub fn lost(&self, source: LossSource, n: u64) {
        self.metrics.lost(source, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterState;
    use crate::flows::enrich::PodDirectory;
    use crate::flows::filter::FlowFilter;
    use crate::flows::record::tests::tcp_facts;
    use crate::model::PodInfo;

    fn setup() -> (Collector, Arc<FlowRing>, Arc<FlowMetrics>) {
        let mut s = ClusterState::new();
        s.upsert_pod(PodInfo {
            namespace: "x".into(),
            name: "a".into(),
            labels: Default::default(),
            ips: vec!["10.244.1.2".parse().unwrap()],
            node: Some("n1".into()),
            ports: vec![],
        });
        let directory = SharedDirectory::new();
        directory.publish(PodDirectory::from_state(&s));
        let ring = Arc::new(FlowRing::new(10));
        let metrics = Arc::new(FlowMetrics::default());
        let c = Collector::new("n1".into(), ring.clone(), directory, metrics.clone());
        (c, ring, metrics)
    }

    #[test]
    fn pod_flows_are_named_and_stored_host_flows_skipped() {
        let (c, ring, _) = setup();
        assert!(c.ingest(tcp_facts("10.244.1.2", "192.168.0.9", 1)));
        assert!(!c.ingest(tcp_facts("192.168.0.1", "192.168.0.9", 2)));
        let mut drop = tcp_facts("192.168.0.1", "192.168.0.9", 3);
        drop.verdict = Verdict::Dropped;
        assert!(c.ingest(drop), "drops are kept whatever the sides");
        let now = jiff::Timestamp::from_second(3).unwrap();
        let held = ring.snapshot(&FlowFilter::default(), now);
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].src_pod_ref(), Some(("x", "a")));
        assert_eq!(held[0].node, "n1");
    }

    #[test]
    fn the_ring_keeps_the_newest_and_losses_are_counted() {
        let (c, ring, metrics) = setup();
        for s in 0..13 {
            assert!(c.ingest(tcp_facts("10.244.1.2", "10.0.0.9", s)));
        }
        assert_eq!(ring.len(), 10, "the ring keeps its newest 10");
        c.lost(LossSource::Conntrack, 3);
        let lost = metrics
            .lost
            .get_or_create(&crate::flows::metrics::SourceLabel {
                source: "conntrack".into(),
            })
            .get();
        assert_eq!(lost, 3);
    }
}
