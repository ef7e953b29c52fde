//! The diff at the heart of convergence: desired entries against what the kernel holds.
//!
//! Upstream applies each lease event as it comes and never looks at the kernel, which is why it
//! leaves stale routes behind after a restart and loses everything when the device is
//! recreated. Here every backend turns the current peer set into a *desired* map, dumps the
//! *actual* entries it owns, and applies only the difference. Startup, missed events, device
//! recreation and periodic repair are all the same call.

use std::collections::BTreeMap;

/// What has to change to turn `actual` into `desired` for one kind of entry, borrowed from
/// both maps: a plan turns it straight into kernel operations without copying 5000 entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<'a, K, V> {
    /// Entries missing from the kernel or holding a different value: write them (replace),
    /// with the desired value.
    pub upsert: Vec<(&'a K, &'a V)>,
    /// Entries the kernel holds that are not desired: delete them, with their actual value
    /// (which the delete request needs).
    pub delete: Vec<(&'a K, &'a V)>,
    /// Entries already correct; reported so callers can log and count.
    pub unchanged: usize,
}

impl<K, V> Diff<'_, K, V> {
    /// True when nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.delete.is_empty()
    }
}

/// Compares two keyed sets. Both maps iterate in key order, so one walk over both (a merge of
/// two sorted sequences) finds every difference without a lookup per entry.
pub fn diff<'a, K: Ord, V: PartialEq>(
    desired: &'a BTreeMap<K, V>,
    actual: &'a BTreeMap<K, V>,
) -> Diff<'a, K, V> {
    use std::cmp::Ordering;
    let mut out = Diff {
        upsert: Vec::new(),
        delete: Vec::new(),
        unchanged: 0,
    };
    let mut want = desired.iter().peekable();
    let mut have = actual.iter().peekable();
    loop {
        match (want.peek(), have.peek()) {
            (Some(&(wk, wv)), Some(&(hk, hv))) => match wk.cmp(hk) {
                Ordering::Less => {
                    out.upsert.push((wk, wv));
                    want.next();
                }
                Ordering::Greater => {
                    out.delete.push((hk, hv));
                    have.next();
                }
                Ordering::Equal => {
                    if wv == hv {
                        out.unchanged += 1;
                    } else {
                        out.upsert.push((wk, wv));
                    }
                    want.next();
                    have.next();
                }
            },
            (Some(_), None) => out.upsert.extend(want.by_ref()),
            (None, Some(_)) => out.delete.extend(have.by_ref()),
            (None, None) => return out,
        }
    }
}

/// Why a reconcile pass runs: logged with its summary and counted in the
/// `flannel_reconcile_total{trigger=...}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Peer leases were added, removed or changed (after the coalescing delay), the first
    /// full snapshot arrived, or the previous pass failed and is tried again.
    PeersChanged,
    /// The periodic repair tick: fixes whatever changed behind our back.
    Repair,
    /// One of the backend's devices was deleted.
    DeviceDeleted,
    /// The kernel dropped link notifications: a deletion may have been missed.
    LinkEventsLost,
}

impl Trigger {
    /// The text in logs and in the metric label (stable: dashboards select on it).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::PeersChanged => "peers changed",
            Trigger::Repair => "repair",
            Trigger::DeviceDeleted => "device deleted",
            Trigger::LinkEventsLost => "link events lost",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of one reconcile pass, for the log summary and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    /// Entries written (added or replaced).
    pub added: usize,
    /// Entries deleted.
    pub removed: usize,
    /// Entries already as desired.
    pub unchanged: usize,
    /// Changes the kernel refused (logged individually).
    pub failed: usize,
    /// Peers taken into account.
    pub peers: usize,
    /// Kernel operations issued, by (operation, result): result is `ok`, `absent` (a delete of
    /// something already gone) or `error`.
    pub ops: BTreeMap<(&'static str, &'static str), u64>,
}

impl ReconcileStats {
    /// Adds the counts of one diff (the failures are added by the caller after applying).
    pub fn absorb<K, V>(&mut self, d: &Diff<'_, K, V>) {
        self.added += d.upsert.len();
        self.removed += d.delete.len();
        self.unchanged += d.unchanged;
    }

    /// (added, removed, unchanged, peers): what plan tests compare.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize, usize, usize) {
        (self.added, self.removed, self.unchanged, self.peers)
    }

    /// True when the pass changed nothing in the kernel.
    pub fn is_noop(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.failed == 0
    }
}

impl std::ops::AddAssign for ReconcileStats {
    fn add_assign(&mut self, o: ReconcileStats) {
        self.added += o.added;
        self.removed += o.removed;
        self.unchanged += o.unchanged;
        self.failed += o.failed;
        self.peers = self.peers.max(o.peers);
        for (k, v) in o.ops {
            *self.ops.entry(k).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[(u32, &'static str)]) -> BTreeMap<u32, &'static str> {
        v.iter().copied().collect()
    }

    #[test]
    fn diff_finds_missing_changed_and_stale() {
        let desired = map(&[(1, "a"), (2, "b"), (3, "c")]);
        let actual = map(&[(2, "b"), (3, "X"), (4, "d")]);
        let d = diff(&desired, &actual);
        assert_eq!(d.upsert, vec![(&1, &"a"), (&3, &"c")]);
        assert_eq!(d.delete, vec![(&4, &"d")]);
        assert_eq!(d.unchanged, 1);
        assert!(!d.is_empty());
    }

    #[test]
    fn identical_sets_need_nothing() {
        let m = map(&[(1, "a"), (2, "b")]);
        let d = diff(&m, &m);
        assert!(d.is_empty());
        assert_eq!(d.unchanged, 2);
    }

    #[test]
    fn empty_desired_deletes_everything_actual() {
        let (desired, actual) = (BTreeMap::new(), map(&[(7, "x")]));
        let d = diff(&desired, &actual);
        assert_eq!(d.delete, vec![(&7, &"x")]);
        assert!(d.upsert.is_empty());
    }

    #[test]
    fn stats_accumulate() {
        let mut s = ReconcileStats::default();
        let (desired, actual) = (map(&[(1, "a")]), map(&[(2, "b")]));
        s.absorb(&diff(&desired, &actual));
        assert_eq!((s.added, s.removed, s.unchanged), (1, 1, 0));
        assert!(!s.is_noop());
        let mut t = ReconcileStats {
            peers: 3,
            ..Default::default()
        };
        t += s;
        assert_eq!(t.added, 1);
        assert_eq!(t.peers, 3);
    }
}
