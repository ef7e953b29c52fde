//! The running daemon: one task owning all state, one method per event source.

use std::time::{Duration, Instant, SystemTime};

use flannel_netlink::{LinkEvent, LinkEvents};
use flannel_subnet::{SubnetManager, WatchEvent, renew_delay};
use flannel_types::Lease;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant as TokioInstant, Interval, interval_at, sleep_until};
use tracing::{debug, error, info, warn};

use super::blackhole::ensure_blackhole;
use super::pacing::Pacing;
use super::start::Up;
use super::{DaemonError, Exit, RENEW_RETRY, sleep_or_shutdown};
use crate::backend::BackendError;
use crate::metrics::{LeaseLabels, Metrics, OpLabels, ReconcileLabels};
use crate::reconcile::{ReconcileStats, Trigger};

/// What woke the loop up.
enum Wake {
    Shutdown,
    Lease(Option<WatchEvent>),
    PeersSettled,
    RepairTick,
    Link(Option<LinkEvent>),
    RuleResync,
    Renew,
}

/// When the next timed things happen.
struct Schedule {
    /// The coalesced (or retried) reconcile after peer changes.
    reconcile_at: Option<TokioInstant>,
    /// When the oldest peer change not yet in the kernel arrived.
    pending_since: Option<Instant>,
    /// When a reconcile for peer changes may run, and when the next repair is due.
    pacing: Pacing,
    resync: Interval,
    renew_at: Option<TokioInstant>,
}

/// A node that is up: lease held, device and rules installed, subnet.env written.
pub struct Running<M: SubnetManager> {
    up: Up<M>,
    devices: Vec<String>,
    leases: mpsc::Receiver<WatchEvent>,
    links: LinkEvents,
    schedule: Schedule,
    shutdown: watch::Receiver<bool>,
    /// Whether the start-up code was handed back (after the first complete pass).
    startup_released: bool,
}

impl<M: SubnetManager> Running<M> {
    /// Takes over what start-up built and starts watching peer leases.
    pub(super) fn new(up: Up<M>, links: LinkEvents, shutdown: watch::Receiver<bool>) -> Running<M> {
        let now = TokioInstant::now();
        let resync = up.config.rules_resync;
        let renew_in = renew_delay(&up.lease, up.config.renew_margin, SystemTime::now());
        let schedule = Schedule {
            reconcile_at: None,
            pending_since: None,
            pacing: Pacing::new(now),
            resync: interval_at(now + resync, resync),
            renew_at: renew_in.map(|d| now + d),
        };
        Running {
            leases: up.manager.watch_leases(&up.lease),
            devices: up.backend.devices(),
            up,
            links,
            schedule,
            shutdown,
            startup_released: false,
        }
    }

    /// The loop: wait for the next event, handle it, reconcile when it asks for one.
    pub async fn run(mut self) -> Result<Exit, DaemonError> {
        loop {
            let trigger = match self.next_wake().await {
                Wake::Shutdown => {
                    info!("Exiting cleanly...");
                    return Ok(Exit::Signal);
                }
                Wake::Lease(ev) => match self.on_lease_event(ev).await {
                    Some(exit) => return Ok(exit),
                    None => None,
                },
                Wake::PeersSettled => Some(Trigger::PeersChanged),
                Wake::RepairTick => {
                    // Also before the first snapshot, when no pass runs to move it on.
                    self.schedule.pacing.repair_started(TokioInstant::now());
                    Some(Trigger::Repair)
                }
                Wake::Link(ev) => self.on_link_event(ev)?,
                Wake::RuleResync => {
                    self.on_rule_resync().await;
                    None
                }
                Wake::Renew => {
                    self.on_renewal().await;
                    None
                }
            };
            if let Some(trigger) = trigger
                && self.up.peers.synced
            {
                self.reconcile(trigger).await;
            }
        }
    }

    async fn next_wake(&mut self) -> Wake {
        let at = |t: Option<TokioInstant>| async move {
            match t {
                Some(t) => sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let s = &mut self.schedule;
        tokio::select! {
            _ = self.shutdown.changed() => Wake::Shutdown,
            ev = self.leases.recv() => Wake::Lease(ev),
            _ = at(s.reconcile_at) => Wake::PeersSettled,
            _ = sleep_until(s.pacing.repair_at()) => Wake::RepairTick,
            ev = self.links.next() => Wake::Link(ev),
            _ = s.resync.tick() => Wake::RuleResync,
            _ = at(s.renew_at) => Wake::Renew,
        }
    }

    /// Peer changes update the set and schedule a coalesced reconcile. Returns how the daemon
    /// ends when it must (our lease revoked, or a signal while the watch restarts).
    async fn on_lease_event(&mut self, ev: Option<WatchEvent>) -> Option<Exit> {
        match ev {
            Some(WatchEvent::Leases(e)) => {
                let first = !self.up.peers.synced;
                // The first snapshot always reconciles: it removes entries of peers that
                // vanished while we were down, even when no peer is left.
                let changed = self.up.peers.apply(e);
                let s = &mut self.schedule;
                if changed && s.pending_since.is_none() {
                    s.pending_since = Some(Instant::now());
                }
                if (changed || first) && self.up.peers.synced && s.reconcile_at.is_none() {
                    s.reconcile_at = Some(s.pacing.change_due(TokioInstant::now()));
                }
                None
            }
            Some(WatchEvent::OwnLeaseRevoked) => {
                warn!("Lease has been revoked. Shutting down daemon.");
                Some(Exit::LeaseRevoked)
            }
            None => {
                Metrics::inc(&self.up.node.metrics.datastore_errors, "watch");
                error!("the lease watch ended unexpectedly; restarting it");
                if !sleep_or_shutdown(Duration::from_secs(1), &mut self.shutdown).await {
                    return Some(Exit::Signal);
                }
                self.leases = self.up.manager.watch_leases(&self.up.lease);
                None
            }
        }
    }

    /// A deleted device of ours (or lost notifications) reconciles at once.
    fn on_link_event(&mut self, ev: Option<LinkEvent>) -> Result<Option<Trigger>, DaemonError> {
        match ev {
            Some(LinkEvent::DelLink { name, .. }) if self.devices.contains(&name) => {
                warn!("{name} was deleted");
                Ok(Some(Trigger::DeviceDeleted))
            }
            Some(LinkEvent::Overrun) => Ok(Some(Trigger::LinkEventsLost)),
            Some(_) => Ok(None),
            None => {
                warn!("link event stream ended; relying on the repair tick");
                self.links = LinkEvents::subscribe().map_err(|source| DaemonError::Netlink {
                    what: "subscribing to link events",
                    source,
                })?;
                Ok(None)
            }
        }
    }

    /// Rules checked and repaired; the blackhole route re-added.
    async fn on_rule_resync(&mut self) {
        let mode = format!("{:?}", self.up.rules.mode()).to_lowercase();
        let metrics = &self.up.node.metrics;
        match self.up.rules.check_and_repair().await {
            Ok(true) => {
                Metrics::inc(&metrics.rule_repairs, &mode);
                info!("repaired {mode} rules");
            }
            Ok(false) => {}
            Err(e) => {
                Metrics::inc(&metrics.rule_errors, &mode);
                warn!("checking rules: {e}");
            }
        }
        if self.up.config.blackhole_route {
            ensure_blackhole(&self.up.node.nl, &self.up.lease).await;
        }
    }

    /// Extends our lease (etcd mode); a failure is retried after a minute.
    async fn on_renewal(&mut self) {
        let metrics = &self.up.node.metrics;
        let s = &mut self.schedule;
        match self.up.manager.renew_lease(&self.up.lease).await {
            Ok(l) => {
                Metrics::inc(&metrics.lease_renewals, "ok");
                info!("renewed lease {}", l.key());
                self.up.lease = l;
                record_lease(metrics, &self.up.lease);
                s.renew_at = renew_delay(
                    &self.up.lease,
                    self.up.config.renew_margin,
                    SystemTime::now(),
                )
                .map(|d| TokioInstant::now() + d);
            }
            Err(e) => {
                Metrics::inc(&metrics.lease_renewals, "error");
                Metrics::inc(&metrics.datastore_errors, "renew lease");
                error!("Error renewing lease (trying again in 1 min): {e}");
                s.renew_at = Some(TokioInstant::now() + RENEW_RETRY);
            }
        }
    }

    /// One backend pass over the valid peers, recorded and logged; a failed pass is retried
    /// after a second rather than at the next repair tick.
    async fn reconcile(&mut self, trigger: Trigger) {
        self.schedule.reconcile_at = None;
        let start = Instant::now();
        let desired = self.up.peers.desired(&self.up.lease);
        let result = self.up.backend.reconcile(&desired).await;
        drop(desired);
        let took = start.elapsed();
        let end = TokioInstant::now();
        let changed_nothing = result
            .as_ref()
            .is_ok_and(|s| s.added + s.removed + s.failed == 0);
        self.schedule.pacing.passed(end, took, changed_nothing);
        record_reconcile(&self.up.node.metrics, trigger, &result, took);
        self.up.backend.collect_metrics(&self.up.node.metrics);
        match result {
            Ok(stats) => {
                log_stats(&stats, took, trigger);
                if stats.added + stats.removed + stats.unchanged
                    >= crate::memory::TRIM_AFTER_ENTRIES
                {
                    crate::memory::release_free_memory();
                }
                if stats.failed == 0 && !self.startup_released {
                    self.startup_released = true;
                    let bytes = crate::memory::release_startup_code();
                    debug!("start-up done: {} KiB of code paged out", bytes / 1024);
                }
                if stats.failed == 0
                    && let Some(t) = self.schedule.pending_since.take()
                {
                    let m = &self.up.node.metrics;
                    m.event_to_programmed.observe(t.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                error!("reconcile ({trigger}) failed: {e}");
                self.schedule.reconcile_at = Some(TokioInstant::now() + Duration::from_secs(1));
            }
        }
    }
}

/// Publishes the lease's identity and expiry.
pub(super) fn record_lease(metrics: &Metrics, lease: &Lease) {
    metrics.lease_info.clear();
    metrics
        .lease_info
        .get_or_create(&LeaseLabels {
            subnet: lease.subnet.map(|s| s.to_string()).unwrap_or_default(),
            ipv6_subnet: lease.ipv6_subnet.map(|s| s.to_string()).unwrap_or_default(),
            public_ip: lease.attrs.public_ip.to_string(),
        })
        .set(1);
    let exp = lease
        .expiration
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics.lease_expiration.set(exp);
}

/// Records one reconcile pass.
fn record_reconcile(
    metrics: &Metrics,
    trigger: Trigger,
    result: &Result<ReconcileStats, BackendError>,
    took: Duration,
) {
    let result_label = if result.is_ok() { "ok" } else { "error" };
    metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            trigger,
            result: result_label.to_string(),
        })
        .inc();
    metrics.reconcile_duration.observe(took.as_secs_f64());
    let Ok(stats) = result else { return };
    metrics.entries_added.inc_by(stats.added as u64);
    metrics.entries_removed.inc_by(stats.removed as u64);
    for ((op, res), n) in &stats.ops {
        let labels = OpLabels {
            op: op.to_string(),
            result: res.to_string(),
        };
        metrics.netlink_ops.get_or_create(&labels).inc_by(*n);
    }
}

fn log_stats(stats: &ReconcileStats, took: Duration, trigger: Trigger) {
    if stats.is_noop() {
        debug!(
            "reconcile ({trigger}): {} peers, {} entries in place, {:?}",
            stats.peers, stats.unchanged, took
        );
    } else {
        info!(
            "reconcile ({trigger}): {} peers, {} added, {} removed, {} failed, {} unchanged, {:?}",
            stats.peers, stats.added, stats.removed, stats.failed, stats.unchanged, took
        );
    }
}
