//! The watch of all leases (upstream `watchSubnets` + `LeaseWatcher`), as one background task.
//!
//! 1. List `<prefix>/subnets/` at revision R and send [`LeaseEvent::Snapshot`].
//! 2. Watch the prefix from R+1 (with previous values); each Put becomes
//!    [`LeaseEvent::Added`], each Delete [`LeaseEvent::Removed`] naming the subnet only (as
//!    upstream's etcd events do): the daemon's `LeaseSet` holds the attributes, so the task
//!    keeps just the set of reported keys instead of a second copy of every lease.
//! 3. When the stream breaks (etcd restarted, connection lost, leader lost), watch again from
//!    the revision after the last one seen, after a backoff of 100 ms doubling to 5 s, on a
//!    fresh client connection. Nothing is missed: etcd replays the history since then.
//! 4. When etcd answers that this history is compacted, go back to 1: the fresh snapshot,
//!    diffed by the daemon's `LeaseSet`, adds and removes exactly what changed meanwhile.
//!
//! Keys that are not lease keys and values that are not lease JSON are skipped with one warning
//! each; so are leases outside the cluster Network or overlapping our own subnet (see
//! [`super::alloc::reject_peer`]). If a lease we already reported turns invalid, it is reported
//! removed. Our own key's deletion (explicit or TTL expiry), its disappearance from a
//! snapshot, or its takeover by another public IP sends [`WatchEvent::OwnLeaseRevoked`] once.
//!
//! Peer leases carry no expiration: the daemon never uses it, and reading it costs one
//! `LeaseTimeToLive` round trip per etcd lease, which dominated start-up at thousands of peers
//! (about 1 s at 5000). Expiry still matters where it acts: an expired key is deleted by etcd
//! and reaches us as a Delete event.
//!
//! The task ends when the receiver is dropped, even while it waits on etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, EventType, WatchOptions};
use flannel_types::{Lease, LeaseAttrs, LeaseEvent, NetConfig, SubnetKey};
use tokio::sync::mpsc;

use super::registry::{
    Entry, Keys, Listing, Parsed, RPC_TIMEOUT, Registry, Warned, parse_kv, warn_bad_key,
    warn_bad_value,
};
use super::repeats::{Repeats, left_out};
use super::{EtcdConfig, alloc, client, lease_for, same_node};
use crate::{SubnetError, WatchEvent};

/// First pause after a failure; doubled on each consecutive failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events buffered for a slow consumer before the task waits for it.
const CHANNEL_CAPACITY: usize = 256;
/// What the manager hands the task.
pub struct Setup {
    /// Connection settings, for the task's own client.
    pub etcd: EtcdConfig,
    /// TLS and endpoint decisions made once by the manager.
    pub plan: client::Plan,
    /// The key layout.
    pub keys: Keys,
    /// This node's lease.
    pub own: Lease,
    /// The network config, if the manager has read it; otherwise the task reads it.
    pub config: Option<NetConfig>,
    /// Shared record of bad keys already warned about.
    pub warned: Arc<Warned>,
}

/// Starts the task; see the module documentation.
pub fn spawn(setup: Setup) -> mpsc::Receiver<WatchEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let closed = tx.clone();
    let task = Watcher {
        own_key: setup.own.key(),
        setup,
        tx,
        registry: None,
        known: BTreeSet::new(),
        own_attrs: None,
        revoked: false,
        since: 0,
        backoff: INITIAL_BACKOFF,
        repeats: Repeats::default(),
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = closed.closed() => tracing::debug!("lease watch stopped: receiver dropped"),
            _ = task.run() => {}
        }
    });
    rx
}

/// The receiver is gone: stop.
struct Gone;

/// Why a watch stream ended.
enum End {
    /// The start revision was compacted away: re-list.
    Compacted(i64),
    /// Any other failure: resume from `since` after a backoff.
    Broken(String),
}

struct Watcher {
    setup: Setup,
    own_key: SubnetKey,
    tx: mpsc::Sender<WatchEvent>,
    /// The task's own client (with require-leader), dropped after failures so the next
    /// attempt starts from a fresh connection.
    registry: Option<Registry>,
    /// The subnet of every lease reported to the daemon and not removed since.
    known: BTreeSet<SubnetKey>,
    /// The attributes our own key holds now, if it is reported (see [`Watcher::own_is_ours`]).
    own_attrs: Option<LeaseAttrs>,
    revoked: bool,
    /// The revision to resume watching from.
    since: i64,
    backoff: Duration,
    /// Failures in a row, so a long outage logs once a minute rather than every retry.
    repeats: Repeats,
}

impl Watcher {
    async fn run(mut self) -> Result<(), Gone> {
        let config = self.config().await?;
        'relist: loop {
            let listing = match self.registry().await {
                Ok(r) => r.list().await,
                Err(e) => Err(e),
            };
            let listing = match listing {
                Ok(l) => l,
                Err(e) => {
                    if let Some(n) = self.repeats.failed(std::time::Instant::now()) {
                        tracing::warn!("failed to retrieve subnet leases: {e}{}", left_out(n));
                    }
                    self.failed().await;
                    continue;
                }
            };
            self.snapshot(&config, listing).await?;
            loop {
                match self.watch(&config).await? {
                    End::Compacted(rev) => {
                        tracing::warn!(
                            "etcd watch for {} fell behind compaction (compacted at revision {rev}), re-listing and resuming",
                            self.setup.keys.subnets
                        );
                        continue 'relist;
                    }
                    End::Broken(why) => {
                        if let Some(n) = self.repeats.failed(std::time::Instant::now()) {
                            tracing::warn!(
                                "etcd watch channel for {} closed ({why}), reconnecting from rev {}...{}",
                                self.setup.keys.subnets,
                                self.since,
                                left_out(n)
                            );
                        }
                        self.failed().await;
                    }
                }
            }
        }
    }

    /// Drops the client and waits out the backoff, doubling it for next time.
    async fn failed(&mut self) {
        self.registry = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn registry(&mut self) -> Result<Registry, SubnetError> {
        if let Some(r) = &self.registry {
            return Ok(r.clone());
        }
        let c = client::connect(&self.setup.etcd, &self.setup.plan, true).await?;
        let r = Registry::new(c, self.setup.keys.clone());
        self.registry = Some(r.clone());
        Ok(r)
    }

    /// The network config the filter uses: the manager's, or read (retrying) from etcd.
    async fn config(&mut self) -> Result<NetConfig, Gone> {
        if let Some(c) = &self.setup.config {
            return Ok(c.clone());
        }
        loop {
            let raw = match self.registry().await {
                Ok(r) => r.get_config().await,
                Err(e) => Err(e),
            };
            let parsed = match raw {
                Ok(Some(raw)) => NetConfig::parse_slice(&raw)
                    .map_err(|e| e.to_string())
                    .and_then(|mut c| c.check().map(|()| c).map_err(|e| e.to_string())),
                Ok(None) => Err(SubnetError::ConfigNotFound.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!("lease watch: cannot read the network config: {e}");
                    self.failed().await;
                }
            }
            if self.tx.is_closed() {
                return Err(Gone);
            }
        }
    }

    async fn send(&self, event: WatchEvent) -> Result<(), Gone> {
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn revoke(&mut self) -> Result<(), Gone> {
        if self.revoked {
            return Ok(());
        }
        self.revoked = true;
        self.send(WatchEvent::OwnLeaseRevoked).await
    }

    /// The lease an entry stands for, if it may be reported (our own key always may).
    fn admit(&self, config: &NetConfig, entry: Entry) -> Option<Lease> {
        let attrs = match entry.attrs {
            Ok(a) => a,
            Err(ref reason) => {
                warn_bad_value(&self.setup.warned, &entry, reason);
                return None;
            }
        };
        if entry.key != self.own_key
            && let Some(reason) = alloc::reject_peer(config, Some(&self.own_key), &entry.key)
        {
            if self.setup.warned.first(&entry.etcd_key, entry.mod_revision) {
                tracing::warn!(
                    "Ignoring lease {:?} of {}: {reason}",
                    entry.etcd_key,
                    attrs.public_ip
                );
            }
            return None;
        }
        Some(lease_for(entry.key, attrs, None))
    }

    /// Whether our key, as now stored, still belongs to us.
    fn own_is_ours(&self) -> bool {
        self.own_attrs
            .as_ref()
            .is_some_and(|a| same_node(a, &self.setup.own.attrs))
    }

    /// Forgets `key`; if it had been reported, tells the daemon it is gone.
    async fn forget(&mut self, key: SubnetKey) -> Result<(), Gone> {
        if key == self.own_key {
            self.own_attrs = None;
        }
        if self.known.remove(&key) {
            let gone = lease_for(key, LeaseAttrs::default(), None);
            self.send(WatchEvent::Leases(LeaseEvent::Removed(gone)))
                .await?;
        }
        Ok(())
    }

    async fn snapshot(&mut self, config: &NetConfig, listing: Listing) -> Result<(), Gone> {
        for bad in &listing.bad {
            warn_bad_key(&self.setup.warned, bad);
        }
        // One lease per subnet; a later entry for the same subnet wins, as in a map.
        let revision = listing.revision;
        let mut next: BTreeMap<SubnetKey, Lease> = BTreeMap::new();
        for entry in listing.entries {
            let key = entry.key;
            if let Some(lease) = self.admit(config, entry) {
                next.insert(key, lease);
            }
        }
        self.known = next.keys().copied().collect();
        self.own_attrs = next.get(&self.own_key).map(|l| l.attrs.clone());
        self.since = revision.saturating_add(1);
        let leases = next.into_values().collect();
        self.send(WatchEvent::Leases(LeaseEvent::Snapshot(leases)))
            .await?;
        if !self.own_is_ours() {
            self.revoke().await?;
        }
        Ok(())
    }

    /// Watches from `since` until the stream ends.
    async fn watch(&mut self, config: &NetConfig) -> Result<End, Gone> {
        let mut client = match self.registry().await {
            Ok(r) => r.client(),
            Err(e) => return Ok(End::Broken(e.to_string())),
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.since)
            .with_prev_key()
            .with_progress_notify();
        let prefix = self.setup.keys.subnets.clone();
        let mut stream =
            match tokio::time::timeout(RPC_TIMEOUT, client.watch(prefix, Some(opts))).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Ok(End::Broken(e.to_string())),
                Err(_) => {
                    return Ok(End::Broken(format!(
                        "no answer to the watch request within {RPC_TIMEOUT:?}"
                    )));
                }
            };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(End::Broken("the stream ended".into())),
                Err(e) => return Ok(End::Broken(e.to_string())),
            };
            if resp.compact_revision() != 0 {
                return Ok(End::Compacted(resp.compact_revision()));
            }
            if resp.canceled() {
                let reason = resp.cancel_reason();
                if reason.contains("compacted") {
                    return Ok(End::Compacted(0));
                }
                return Ok(End::Broken(format!("etcd cancelled the watch: {reason}")));
            }
            self.backoff = INITIAL_BACKOFF;
            let streak = self.repeats.recovered();
            if streak > 1 {
                tracing::info!(
                    "etcd watch for {} resumed at rev {} after {streak} failed attempts",
                    self.setup.keys.subnets,
                    self.since
                );
            }
            if resp.created() {
                continue;
            }
            if resp.events().is_empty() {
                // A progress notification: nothing below this revision is pending.
                if let Some(h) = resp.header() {
                    self.since = self.since.max(h.revision().saturating_add(1));
                }
                continue;
            }
            for event in resp.events() {
                self.event(config, event).await?;
            }
        }
    }

    async fn event(&mut self, config: &NetConfig, event: &Event) -> Result<(), Gone> {
        let Some(kv) = event.kv() else {
            return Ok(());
        };
        self.since = self.since.max(kv.mod_revision().saturating_add(1));
        match event.event_type() {
            EventType::Delete => {
                // Keys that never parsed were never reported.
                let Ok(key) = self.setup.keys.parse_subnet(kv.key()) else {
                    return Ok(());
                };
                let own = key == self.own_key;
                self.forget(key).await?;
                if own {
                    self.revoke().await?;
                }
            }
            EventType::Put => match parse_kv(&self.setup.keys, kv) {
                Parsed::Bad(bad) => warn_bad_key(&self.setup.warned, &bad),
                Parsed::Entry(entry) => {
                    let key = entry.key;
                    match self.admit(config, entry) {
                        Some(lease) => {
                            self.known.insert(key);
                            if key == self.own_key {
                                self.own_attrs = Some(lease.attrs.clone());
                            }
                            self.send(WatchEvent::Leases(LeaseEvent::Added(lease)))
                                .await?;
                            if key == self.own_key && !self.own_is_ours() {
                                self.revoke().await?;
                            }
                        }
                        None => {
                            self.forget(key).await?;
                            if key == self.own_key {
                                self.revoke().await?;
                            }
                        }
                    }
                }
            },
        }
        Ok(())
    }
}
