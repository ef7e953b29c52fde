//! The collector task: kernel facts in, named and counted records into the ring.
//!
//! Kernel sources hand [`KernelFacts`] to an [`Intake`], a bounded channel they never wait
//! on: when the collector falls behind, [`Intake::offer`] drops the event and counts it
//! (`flow_events_lost_total{source="intake"}`), so a burst of new flows costs records, never
//! socket reads or the packet path. The collector names each record from the latest
//! [`crate::flows::enrich::PodDirectory`] and keeps conntrack flows only when one side is a pod (the node's own
//! connections are not pod traffic); drops always have a pod side, since only pod addresses
//! are isolated.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::flows::enrich::SharedDirectory;
use crate::flows::metrics::{FlowMetrics, LossSource};
use crate::flows::record::{FlowRecord, KernelFacts, Verdict};
use crate::flows::ring::FlowRing;

/// Events the intake holds before it drops.
pub const INTAKE_DEPTH: usize = 4096;

/// Where kernel sources put their events; cheap to clone, one per source.
#[derive(Debug, Clone)]
pub struct Intake {
    tx: mpsc::Sender<KernelFacts>,
    metrics: Arc<FlowMetrics>,
}

impl Intake {
    /// Hands an event to the collector without waiting; false (and counted as lost) when the
    /// collector is behind or gone.
    pub fn offer(&self, facts: KernelFacts) -> bool {
        match self.tx.try_send(facts) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.lost(LossSource::Intake, 1);
                false
            }
        }
    }

    /// Counts events a source lost before they reached the intake (socket overruns).
    pub fn lost(&self, source: LossSource, n: u64) {
        self.metrics.lost(source, n);
    }
}

/// The collector's state; [`Collector::run`] is its task.
#[derive(Debug)]
pub struct Collector {
    node: String,
    rx: mpsc::Receiver<KernelFacts>,
    ring: Arc<FlowRing>,
    directory: SharedDirectory,
    metrics: Arc<FlowMetrics>,
}

impl Collector {
    /// A collector for `node` storing into `ring`, and the intake that feeds it.
    pub fn new(
        node: String,
        ring: Arc<FlowRing>,
        directory: SharedDirectory,
        metrics: Arc<FlowMetrics>,
    ) -> (Collector, Intake) {
        let (tx, rx) = mpsc::channel(INTAKE_DEPTH);
        let intake = Intake {
            tx,
            metrics: metrics.clone(),
        };
        let collector = Collector {
            node,
            rx,
            ring,
            directory,
            metrics,
        };
        (collector, intake)
    }

    /// Names, filters, counts and stores one event; returns the record if it was kept.
    pub fn ingest(&self, facts: KernelFacts) -> Option<FlowRecord> {
        let mut record = FlowRecord::from_facts(facts);
        let directory = self.directory.get();
        if record.verdict == Verdict::Forwarded && !directory.is_pod_flow(&record) {
            return None;
        }
        directory.enrich(&mut record, &self.node);
        self.metrics.record(&record);
        self.ring.push(record.clone());
        Some(record)
    }

    /// Runs until every intake is dropped.
    pub async fn run(mut self) {
        while let Some(facts) = self.rx.recv().await {
            self.ingest(facts);
        }
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

    fn setup() -> (Collector, Intake, Arc<FlowRing>, Arc<FlowMetrics>) {
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
        let (c, i) = Collector::new("n1".into(), ring.clone(), directory, metrics.clone());
        (c, i, ring, metrics)
    }

    #[test]
    fn pod_flows_are_named_and_stored_host_flows_skipped() {
        let (c, _i, ring, _) = setup();
        let r = c.ingest(tcp_facts("10.244.1.2", "192.168.0.9", 1)).unwrap();
        assert_eq!(r.src_pod_ref(), Some(("x", "a")));
        assert_eq!(r.node, "n1");
        assert!(
            c.ingest(tcp_facts("192.168.0.1", "192.168.0.9", 2))
                .is_none()
        );
        let mut drop = tcp_facts("192.168.0.1", "192.168.0.9", 3);
        drop.verdict = Verdict::Dropped;
        assert!(
            c.ingest(drop).is_some(),
            "drops are kept whatever the sides"
        );
        let now = jiff::Timestamp::from_second(3).unwrap();
        assert_eq!(ring.snapshot(&FlowFilter::default(), now).len(), 2);
    }

    #[tokio::test]
    async fn a_full_intake_drops_and_counts_instead_of_waiting() {
        let (c, i, ring, metrics) = setup();
        let mut accepted = 0;
        for s in 0..INTAKE_DEPTH as i64 + 3 {
            if i.offer(tcp_facts("10.244.1.2", "10.0.0.9", s)) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, INTAKE_DEPTH);
        let lost = metrics
            .lost
            .get_or_create(&crate::flows::metrics::SourceLabel {
                source: "intake".into(),
            })
            .get();
        assert_eq!(lost, 3);
        drop(i);
        c.run().await;
        assert_eq!(ring.len(), 10, "the ring keeps its newest 10");
    }
}
