//! The diff at the heart of convergence: desired entries against what the kernel holds.
//!
//! Upstream applies each lease event as it comes and never looks at the kernel, which is why it
//! leaves stale routes behind after a restart and loses everything when the device is
//! recreated. Here every backend turns the current peer set into a *desired* map, dumps the
//! *actual* entries it owns, and applies only the difference. Startup, missed events, device
//! recreation and periodic repair are all the same call.

use std::collections::BTreeMap;

/// What has to change to turn `actual` into `desired` for one kind of entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Entries missing from the kernel or holding a different value: write them (replace).
    pub upsert: Vec<(K, V)>,
    /// Entries the kernel holds that are not desired: delete them (with their actual value,
    /// which the delete request needs).
    pub delete: Vec<(K, V)>,
    /// Entries already correct; reported so callers can log and count.
    pub unchanged: usize,
}

impl<K, V> Diff<K, V> {
    /// True when nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.delete.is_empty()
    }
}

/// Compares two keyed sets. Both maps are sorted, so the walk is a single merge pass.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let mut upsert = Vec::new();
    let mut delete = Vec::new();
    let mut unchanged = 0;
    for (k, v) in desired {
        match actual.get(k) {
            Some(a) if a == v => unchanged += 1,
            _ => upsert.push((k.clone(), v.clone())),
        }
    }
    for (k, v) in actual {
        if !desired.contains_key(k) {
            delete.push((k.clone(), v.clone()));
        }
    }
    Diff {
        upsert,
        delete,
        unchanged,
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
    pub fn absorb<K, V>(&mut self, d: &Diff<K, V>) {
        self.added += d.upsert.len();
        self.removed += d.delete.len();
        self.unchanged += d.unchanged;
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
        assert_eq!(d.upsert, vec![(1, "a"), (3, "c")]);
        assert_eq!(d.delete, vec![(4, "d")]);
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
        let d = diff(&BTreeMap::new(), &map(&[(7, "x")]));
        assert_eq!(d.delete, vec![(7, "x")]);
        assert!(d.upsert.is_empty());
    }

    #[test]
    fn stats_accumulate() {
        let mut s = ReconcileStats::default();
        s.absorb(&diff(&map(&[(1, "a")]), &map(&[(2, "b")])));
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
