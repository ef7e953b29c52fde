//! The bounded buffer of recent records, with a broadcast for `follow` clients.
//!
//! The producer (the collector task) never waits: [`FlowRing::push`] takes a short lock to
//! append (dropping the oldest record when full) and hands the record to a
//! [`tokio::sync::broadcast`] channel, whose send never blocks. A follower that reads slower
//! than records arrive loses the oldest ones it has not read and is told how many
//! ([`Follow::Lost`]), rather than slowing the collector or growing memory.
//! [`FlowRing::snapshot_and_follow`] takes the snapshot and subscribes under the same lock,
//! so a follower sees every record exactly once: the old ones in the snapshot, the new ones
//! from the channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::broadcast;

use crate::flows::filter::FlowFilter;
use crate::flows::record::FlowRecord;

/// Records a follower may fall behind by before it loses some.
const FOLLOW_BACKLOG: usize = 1024;

/// The ring and its broadcast; share it as `Arc<FlowRing>`.
#[derive(Debug)]
pub struct FlowRing {
    capacity: usize,
    records: Mutex<VecDeque<Arc<FlowRecord>>>,
    tx: broadcast::Sender<Arc<FlowRecord>>,
}

/// What a follower receives next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// The next record.
    Record(Arc<FlowRecord>),
    /// The follower fell behind and this many records were skipped.
    Lost(u64),
    /// The ring is gone (the enforcer stops).
    Closed,
}

/// A follower's subscription.
#[derive(Debug)]
pub struct Follower {
    rx: broadcast::Receiver<Arc<FlowRecord>>,
}

impl Follower {
    /// Waits for the next record (or the news that some were lost).
    pub async fn next(&mut self) -> Follow {
        match self.rx.recv().await {
            Ok(r) => Follow::Record(r),
            Err(broadcast::error::RecvError::Lagged(n)) => Follow::Lost(n),
            Err(broadcast::error::RecvError::Closed) => Follow::Closed,
        }
    }
}

impl FlowRing {
    /// A ring keeping the newest `capacity` records (at least one).
    pub fn new(capacity: usize) -> FlowRing {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(FOLLOW_BACKLOG);
        FlowRing {
            capacity,
            records: Mutex::new(VecDeque::with_capacity(capacity.min(FOLLOW_BACKLOG))),
            tx,
        }
    }

    /// The most records kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<FlowRecord>>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record (the oldest goes when full) and passes it to followers; never blocks
    /// beyond the lock. Returns whether an old record was evicted.
    pub fn push(&self, record: FlowRecord) -> bool {
        let record = Arc::new(record);
        let mut records = self.lock();
        let evicted = records.len() >= self.capacity;
        if evicted {
            records.pop_front();
        }
        records.push_back(record.clone());
        // No follower is not an error; a full follower lags, it does not block us.
        let _ = self.tx.send(record);
        evicted
    }

    /// The held records `filter` matches at `now`, oldest first.
    pub fn snapshot(&self, filter: &FlowFilter, now: Timestamp) -> Vec<Arc<FlowRecord>> {
        self.lock()
            .iter()
            .filter(|r| filter.matches_at(r, now))
            .cloned()
            .collect()
    }

    /// The snapshot and a subscription to what follows it, taken atomically.
    pub fn snapshot_and_follow(
        &self,
        filter: &FlowFilter,
        now: Timestamp,
    ) -> (Vec<Arc<FlowRecord>>, Follower) {
        let records = self.lock();
        let rx = self.tx.subscribe();
        let snap = records
            .iter()
            .filter(|r| filter.matches_at(r, now))
            .cloned()
            .collect();
        (snap, Follower { rx })
    }

    /// Followers attached now.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::tests::tcp_facts;

    fn rec(secs: i64) -> FlowRecord {
        FlowRecord::from_facts(tcp_facts("10.0.0.1", "10.0.0.2", secs))
    }

    fn secs(rs: &[Arc<FlowRecord>]) -> Vec<i64> {
        rs.iter().map(|r| r.time.as_second()).collect()
    }

    #[test]
    fn keeps_the_newest_and_filters_by_since() {
        let ring = FlowRing::new(3);
        for s in 1..=5 {
            assert_eq!(ring.push(rec(s)), s > 3, "eviction at {s}");
        }
        assert_eq!(ring.len(), 3);
        let now = Timestamp::from_second(5).unwrap();
        assert_eq!(secs(&ring.snapshot(&FlowFilter::default(), now)), [3, 4, 5]);
        let recent = FlowFilter::parse_query("since=1s").unwrap();
        assert_eq!(secs(&ring.snapshot(&recent, now)), [4, 5]);
        assert_eq!(FlowRing::new(0).capacity(), 1);
    }

    #[tokio::test]
    async fn a_follower_sees_each_record_once_and_hears_of_losses() {
        let ring = FlowRing::new(10);
        ring.push(rec(1));
        let now = Timestamp::from_second(1).unwrap();
        let (snap, mut follower) = ring.snapshot_and_follow(&FlowFilter::default(), now);
        assert_eq!(secs(&snap), [1]);
        assert_eq!(ring.followers(), 1);
        ring.push(rec(2));
        assert_eq!(follower.next().await, Follow::Record(Arc::new(rec(2))));
        // A follower that does not read loses the oldest, never blocks the producer.
        let total = FOLLOW_BACKLOG as i64 + 5;
        for s in 0..total {
            ring.push(rec(100 + s));
        }
        assert_eq!(follower.next().await, Follow::Lost(5));
        assert_eq!(follower.next().await, Follow::Record(Arc::new(rec(105))));
        drop(ring);
        let mut last = Follow::Closed;
        for _ in 0..FOLLOW_BACKLOG + 1 {
            last = follower.next().await;
            if last == Follow::Closed {
                break;
            }
        }
        assert_eq!(last, Follow::Closed);
    }
}
