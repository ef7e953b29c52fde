//! When reconcile passes run: after peer changes and for repair, both held by one [`Pacing`]
//! (pure, so the whole rule is tested without a daemon).
//!
//! After peer changes: soon after a change that finds the daemon idle, at most once per
//! [`COALESCE`] while changes keep coming.
//! A fixed delay after the first change (50 ms before) made every lone change wait the whole
//! window, so at 5000 peers a single node's new VtepMAC took 90 ms to reach the kernel (50 ms of
//! waiting, 40 ms for the pass). Now a change that arrives when the last pass ended more than
//! [`COALESCE`] ago waits only [`SETTLE`] (for the rest of its own burst, e.g. the `Removed` and
//! `Added` of a podCIDR change), while a burst still costs one pass per [`COALESCE`]: the pass
//! that follows another waits until [`COALESCE`] after that one ended.

use std::time::Duration;

use tokio::time::Instant;

/// The shortest time between repair passes (every pass compares the whole kernel state with
/// the desired one, so any pass counts as a repair).
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(10);

/// A repair pass may use at most one part in this many of a core (0.1 %): at 5000 peers a
/// pass that finds everything in place still dumps and compares 15000 kernel entries
/// (25-50 ms), which every 10 s was a quarter of the daemon's CPU while 5000 Nodes sent status
/// updates, and at 0.2 % still a tenth of it. Clusters up to about 1000 nodes (passes under
/// 10 ms) keep the 10 s interval.
pub const REPAIR_COST_SHARE: u32 = 1000;

/// The longest time between repair passes, however expensive they are.
pub const REPAIR_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// When the next repair pass is due after a pass that ended at `now`, when a pass that finds
/// everything in place takes `cost`: [`REPAIR_INTERVAL`] later, or later still when such passes
/// are expensive (25-50 s at 5000 peers, never more than [`REPAIR_INTERVAL_MAX`]). Deleted devices
/// and peer changes do not wait for it: they start a pass at once.
pub fn next_repair(now: Instant, cost: Duration) -> Instant {
    now + cost
        .saturating_mul(REPAIR_COST_SHARE)
        .clamp(REPAIR_INTERVAL, REPAIR_INTERVAL_MAX)
}

/// The longest a peer change waits for the others of its burst; also the shortest gap between
/// two reconciles run for peer changes.
pub const COALESCE: Duration = Duration::from_millis(50);

/// How long a change that finds the daemon idle waits for the rest of its burst.
pub const SETTLE: Duration = Duration::from_millis(5);

/// The reconcile schedule: when a pass for peer changes may run ([`Pacing::change_due`]) and
/// when the next repair pass is due ([`Pacing::repair_at`]), both moved on by every pass.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// When the last reconcile (of any trigger: each one is a full pass) ended.
    last_pass: Option<Instant>,
    /// When the next repair pass is due ([`next_repair`]).
    repair_at: Instant,
    /// How long the last pass that changed nothing took: what a repair pass costs (a pass
    /// that programs thousands of entries is no measure of it).
    repair_cost: Duration,
}

impl Pacing {
    /// The schedule of a daemon that starts at `now`: the first repair [`REPAIR_INTERVAL`]
    /// later.
    pub fn new(now: Instant) -> Pacing {
        Pacing {
            last_pass: None,
            repair_at: now + REPAIR_INTERVAL,
            repair_cost: Duration::ZERO,
        }
    }

    /// When to run the reconcile for a change arriving at `now` with none scheduled yet.
    pub fn change_due(&self, now: Instant) -> Instant {
        let soon = now + SETTLE;
        match self.last_pass {
            Some(end) => soon.max(end + COALESCE),
            None => soon,
        }
    }

    /// When the next repair pass is due.
    pub fn repair_at(&self) -> Instant {
        self.repair_at
    }

    /// A repair is starting at `now`: the next one is due [`REPAIR_INTERVAL`] later unless the
    /// pass says otherwise (it also moves the schedule on before the first snapshot, when no
    /// pass runs).
    pub fn repair_started(&mut self, now: Instant) {
        self.repair_at = now + REPAIR_INTERVAL;
    }

    /// A reconcile pass ended at `end` after `took`; `changed_nothing` when it succeeded
    /// without adding, removing or failing anything, which makes it the measure of what a
    /// repair costs.
    pub fn passed(&mut self, end: Instant, took: Duration, changed_nothing: bool) {
        self.last_pass = Some(end);
        if changed_nothing {
            self.repair_cost = took;
        }
        self.repair_at = next_repair(end, self.repair_cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_changes_settle_briefly_bursts_are_spaced() {
        let t0 = Instant::now();
        let mut c = Pacing::new(t0);
        // Nothing ran yet: only the settle delay.
        assert_eq!(c.change_due(t0), t0 + SETTLE);
        // A pass just ended: the next one waits for the window after it.
        c.passed(t0, Duration::from_millis(3), true);
        assert_eq!(c.change_due(t0 + Duration::from_millis(1)), t0 + COALESCE);
        assert_eq!(
            c.change_due(t0 + Duration::from_millis(48)),
            t0 + Duration::from_millis(53)
        );
        // Long after the last pass: idle again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(c.change_due(later), later + SETTLE);
    }

    #[test]
    fn repairs_cost_a_bounded_share() {
        let t0 = Instant::now();
        // Cheap passes: every 10 s.
        assert_eq!(
            next_repair(t0, Duration::from_millis(2)),
            t0 + REPAIR_INTERVAL
        );
        // A 41 ms pass (5000 peers): 41 s, so at most 0.1 % of a core.
        assert_eq!(
            next_repair(t0, Duration::from_millis(41)),
            t0 + Duration::from_secs(41)
        );
        // Absurd durations are capped, and do not overflow.
        assert_eq!(
            next_repair(t0, Duration::from_secs(u64::MAX / 1000)),
            t0 + REPAIR_INTERVAL_MAX
        );
    }

    #[test]
    fn the_repair_interval_follows_passes_that_changed_nothing() {
        let t0 = Instant::now();
        let mut p = Pacing::new(t0);
        assert_eq!(p.repair_at(), t0 + REPAIR_INTERVAL);
        // A slow pass that programmed 15000 entries (start-up) says nothing about repairs.
        p.passed(t0, Duration::from_millis(400), false);
        assert_eq!(p.repair_at(), t0 + REPAIR_INTERVAL);
        // A 20 ms pass that found everything in place: repairs every 20 s.
        let t1 = t0 + Duration::from_secs(10);
        p.passed(t1, Duration::from_millis(20), true);
        assert_eq!(p.repair_at(), t1 + Duration::from_secs(20));
        // The cost is kept across passes that change things (and failed ones).
        let t2 = t1 + Duration::from_secs(1);
        p.passed(t2, Duration::from_millis(900), false);
        assert_eq!(p.repair_at(), t2 + Duration::from_secs(20));
        // A repair that starts moves the schedule on by the shortest interval until its pass
        // ends.
        let t3 = t2 + Duration::from_secs(20);
        p.repair_started(t3);
        assert_eq!(p.repair_at(), t3 + REPAIR_INTERVAL);
        // Cheaper again: back to the shortest interval.
        p.passed(t3, Duration::from_millis(5), true);
        assert_eq!(p.repair_at(), t3 + REPAIR_INTERVAL);
    }
}
