//! Wiring and the main loop.
//!
//! Start-up follows upstream's order, because other components depend on it: network config,
//! external interface, backend device, lease, masquerade/forward rules, subnet.env (written
//! atomically), then readiness (`/readyz`, `sd_notify READY=1`). After that one loop owns all
//! state and reacts to:
//! * peer-lease changes: the desired peer set is updated and a reconcile is scheduled after a
//!   short coalescing delay, so a burst of events costs one pass;
//! * deletion of a backend device: reconcile at once (it recreates the device and replays
//!   every entry);
//! * the repair tick: the same reconcile, which fixes anything changed by hand;
//! * the rule resync tick: rules checked and repaired, blackhole route re-added;
//! * lease renewal (etcd mode);
//! * SIGTERM/SIGINT: exit 0 leaving device, routes and lease in place, so a restart does not
//!   disturb pod traffic.
//!
//! Nothing is reconciled before the first full snapshot of peers has arrived: an empty peer set
//! would otherwise wipe every route of a node restarting while its datastore is slow.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flannel_netlink::{IpFamily, Netlink, Route, RouteFilter, RouteKind};
use flannel_rules::{Networks, PreviousValues, RuleConfig, RuleManager, TokioRunner};
use flannel_subnet::{SubnetError, SubnetManager, WatchEvent, renew_delay};
use flannel_types::subnet_env::{PreviousSubnetEnv, SubnetEnv, SubnetEnvV4, SubnetEnvV6};
use flannel_types::{IpStack, Lease, LeaseEvent, LeaseSet, NetConfig, SubnetKey};
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, BackendEnv, BackendError, peer_conflicts, peer_problem};
use crate::cli::Options;
use crate::http::{self, Health};
use crate::iface::{self, HostView, Selection, Stack};
use crate::metrics::{BuildLabels, KindLabel, LeaseLabels, Metrics, OpLabels, ReconcileLabels};
use crate::reconcile::ReconcileStats;

/// How long events are collected before one reconcile runs for all of them.
pub const COALESCE: Duration = Duration::from_millis(50);
/// How often the data plane is compared with the desired state even without events.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(10);
/// Delay before retrying a failed lease renewal (upstream's one minute).
pub const RENEW_RETRY: Duration = Duration::from_secs(60);

/// Why the daemon stopped with a failure (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The network config is unusable.
    #[error("{0}")]
    Config(String),
    /// No external interface could be chosen.
    #[error(transparent)]
    Iface(#[from] iface::IfaceError),
    /// The backend could not be built or started.
    #[error("Error registering network: {0}")]
    Backend(#[from] BackendError),
    /// The datastore refused us.
    #[error("{0}")]
    Subnet(#[from] SubnetError),
    /// Rules could not be installed.
    #[error("{0}")]
    Rules(String),
    /// Anything else at start-up (netlink socket, HTTP port).
    #[error("{0}")]
    Startup(String),
}

/// How the daemon ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT.
    Signal,
    /// Our lease vanished from the datastore (upstream exits 0 too).
    LeaseRevoked,
}

/// Sleeps for `d` unless shutdown is requested first; returns false on shutdown.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}

/// Reads the network config, retrying every second while it is absent or the datastore is
/// unreachable (upstream's getConfig loop). Returns `None` on shutdown.
async fn network_config<M: SubnetManager>(
    manager: &M,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<NetConfig>, DaemonError> {
    loop {
        match manager.network_config().await {
            Ok(c) => return Ok(Some(c)),
            Err(e @ (SubnetError::ConfigNotFound | SubnetError::Datastore { .. })) => {
                warn!("Couldn't fetch network config: {e}");
                if matches!(e, SubnetError::Datastore { .. }) {
                    Metrics::inc(&metrics.datastore_errors, "get config");
                }
            }
            Err(e) => return Err(DaemonError::Config(e.to_string())),
        }
        if !sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
            return Ok(None);
        }
    }
}

/// Upstream refuses to start without br_netfilter unless nftables mode is on: pods on one
/// bridge would otherwise bypass iptables.
fn check_br_netfilter(stack: IpStack) -> Result<(), DaemonError> {
    let mut needed = Vec::new();
    if stack.has_ipv4() {
        needed.push("/proc/sys/net/bridge/bridge-nf-call-iptables");
    }
    if stack.has_ipv6() {
        needed.push("/proc/sys/net/bridge/bridge-nf-call-ip6tables");
    }
    for p in needed {
        if !Path::new(p).exists() {
            return Err(DaemonError::Startup(format!(
                "Failed to check br_netfilter: stat {p}: no such file or directory (load the br_netfilter module, or use \"EnableNFTables\": true)"
            )));
        }
    }
    Ok(())
}

/// The subnet.env contents for our lease.
pub fn subnet_env(config: &NetConfig, lease: &Lease, mtu: u32, ip_masq: bool) -> SubnetEnv {
    SubnetEnv {
        ipv4: match (config.enable_ipv4, config.network, lease.subnet) {
            (true, Some(network), Some(subnet)) => Some(SubnetEnvV4 { network, subnet }),
            _ => None,
        },
        ipv6: match (config.enable_ipv6, config.ipv6_network, lease.ipv6_subnet) {
            (true, Some(network), Some(subnet)) => Some(SubnetEnvV6 { network, subnet }),
            _ => None,
        },
        mtu,
        ip_masq,
    }
}

/// The rule manager's view of our networks and the previous run's.
fn rule_config(
    opts: &Options,
    config: &NetConfig,
    lease: &Lease,
    previous: Option<&PreviousSubnetEnv>,
) -> RuleConfig {
    let v4 = match (config.network, lease.subnet) {
        (Some(n), Some(s)) if config.enable_ipv4 => Some(Networks::v4(n, s)),
        _ => None,
    };
    let v6 = match (config.ipv6_network, lease.ipv6_subnet) {
        (Some(n), Some(s)) if config.enable_ipv6 => Some(Networks::v6(n, s)),
        _ => None,
    };
    let prev = previous.map(|p| PreviousValues {
        v4: match (p.network(), p.subnet) {
            (Some(n), Some(s)) => Some(Networks::v4(n, s)),
            _ => None,
        },
        v6: match (p.ipv6_network(), p.ipv6_subnet) {
            (Some(n), Some(s)) => Some(Networks::v6(n, s)),
            _ => None,
        },
    });
    RuleConfig {
        v4,
        v6,
        ip_masq: opts.ip_masq,
        forward_rules: opts.iptables_forward_rules,
        random_fully_disabled: opts.ip_masq_fully_random_disable,
        previous: prev.unwrap_or_default(),
    }
}

/// Adds the blackhole route for our own subnets when missing (`--ip-blackhole-route`, for
/// Canal): traffic to unused pod addresses is dropped instead of following the default route.
async fn ensure_blackhole(nl: &Netlink, lease: &Lease) {
    let mut want: Vec<IpNet> = Vec::new();
    want.extend(lease.subnet.map(IpNet::V4));
    want.extend(lease.ipv6_subnet.map(IpNet::V6));
    for net in want {
        let family = match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        };
        let have = match nl
            .routes(&RouteFilter::main().family(family).within(net))
            .await
        {
            Ok(rs) => rs
                .iter()
                .any(|r| r.dst == net && r.kind == RouteKind::Blackhole),
            Err(e) => {
                warn!("listing routes for the blackhole check: {e}");
                continue;
            }
        };
        if !have {
            match nl.add_route(&Route::blackhole(net)).await {
                Ok(()) => info!("added blackhole route for {net}"),
                Err(e) if e.is_already_exists() => {}
                Err(e) => warn!("adding blackhole route for {net}: {e}"),
            }
        }
    }
}

/// The peer set the backend should program: valid peers only, each problem logged once.
struct Peers {
    set: LeaseSet,
    subnet_len: u8,
    ipv6_subnet_len: u8,
    synced: bool,
    warned: BTreeMap<SubnetKey, String>,
    metrics: Arc<Metrics>,
}

impl Peers {
    fn new(own: &Lease, config: &NetConfig, metrics: Arc<Metrics>) -> Peers {
        Peers {
            set: LeaseSet::new(Some(own.clone())),
            subnet_len: config.subnet_len,
            ipv6_subnet_len: config.ipv6_subnet_len,
            synced: false,
            warned: BTreeMap::new(),
            metrics,
        }
    }

    /// Feeds one event; returns whether the peer set changed.
    fn apply(&mut self, ev: LeaseEvent) -> bool {
        if matches!(ev, LeaseEvent::Snapshot(_)) {
            if self.synced {
                self.metrics.watch_resyncs.inc();
            }
            self.synced = true;
        }
        let changes = self.set.apply(ev);
        for c in &changes {
            match c {
                LeaseEvent::Added(l) => {
                    Metrics::inc(&self.metrics.lease_events, "added");
                    info!("Subnet added: {} via {}", l.key(), l.attrs.public_ip)
                }
                LeaseEvent::Removed(l) => {
                    Metrics::inc(&self.metrics.lease_events, "removed");
                    info!("Subnet removed: {}", l.key());
                    self.warned.remove(&l.key());
                }
                LeaseEvent::Snapshot(_) => {}
            }
        }
        !changes.is_empty()
    }

    /// Valid peers for the backend, borrowed from the set: a copy of 5000 leases would be
    /// about 1 MiB on top of the reconcile's own peak.
    ///
    /// Warnings and the peer metrics are updated first, with `&mut self`, so that the list
    /// itself only needs a shared borrow for the duration of the reconcile.
    fn desired(&mut self, own: &Lease, env: &BackendEnv) -> Vec<&Lease> {
        let problems = self.problems(own, env);
        let mut ignored = 0;
        for (key, why) in &problems {
            ignored += 1;
            if self.warned.get(key) != Some(why) {
                warn!("ignoring peer lease {key}: {why}");
                self.warned.insert(*key, why.clone());
            }
        }
        self.metrics.peers_ignored.set(ignored);
        self.metrics.peers.clear();
        let out: Vec<&Lease> = self
            .set
            .leases()
            .filter(|l| !problems.contains_key(&l.key()))
            .collect();
        for l in &out {
            let kind = if l.attrs.backend_type.is_empty() {
                "udp"
            } else {
                l.attrs.backend_type.as_str()
            };
            self.metrics
                .peers
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc();
        }
        out
    }

    /// Why each unusable peer lease is left out: its own problem, or a conflict with another
    /// valid peer.
    fn problems(&self, own: &Lease, env: &BackendEnv) -> BTreeMap<SubnetKey, String> {
        let valid: Vec<&Lease> = self
            .set
            .leases()
            .filter(|l| peer_problem(l, own, env.network, env.ipv6_network).is_none())
            .collect();
        let conflicts = peer_conflicts(&valid, self.subnet_len, self.ipv6_subnet_len);
        self.set
            .leases()
            .filter_map(|l| {
                peer_problem(l, own, env.network, env.ipv6_network)
                    .or_else(|| conflicts.get(&l.key()).cloned())
                    .map(|why| (l.key(), why))
            })
            .collect()
    }
}

/// Publishes the lease's identity and expiry.
fn record_lease(metrics: &Metrics, lease: &Lease) {
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
    trigger: &str,
    result: &Result<ReconcileStats, BackendError>,
    took: Duration,
) {
    metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            trigger: trigger.to_string(),
            result: if result.is_ok() { "ok" } else { "error" }.to_string(),
        })
        .inc();
    metrics.reconcile_duration.observe(took.as_secs_f64());
    if let Ok(stats) = result {
        metrics.entries_added.inc_by(stats.added as u64);
        metrics.entries_removed.inc_by(stats.removed as u64);
        for ((op, res), n) in &stats.ops {
            metrics
                .netlink_ops
                .get_or_create(&OpLabels {
                    op: op.to_string(),
                    result: res.to_string(),
                })
                .inc_by(*n);
        }
    }
}

fn log_stats(stats: &ReconcileStats, took: Duration, why: &str) {
    if stats.is_noop() {
        debug!(
            "reconcile ({why}): {} peers, {} entries in place, {:?}",
            stats.peers, stats.unchanged, took
        );
    } else {
        info!(
            "reconcile ({why}): {} peers, {} added, {} removed, {} failed, {} unchanged, {:?}",
            stats.peers, stats.added, stats.removed, stats.failed, stats.unchanged, took
        );
    }
}

/// Runs flanneld with the given subnet manager until a signal or lease revocation.
pub async fn run<M: SubnetManager>(
    opts: &Options,
    manager: M,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Exit, DaemonError> {
    info!("Created subnet manager: {}", manager.name());
    let previous = match PreviousSubnetEnv::read(&opts.subnet_file) {
        Ok(p) => p,
        Err(e) => {
            warn!("reading the previous subnet file: {e}");
            None
        }
    };
    if let Some(p) = &previous {
        for problem in &p.problems {
            warn!("previous subnet file: {problem}");
        }
    }

    // Health endpoints come up first so liveness holds while we wait for the datastore.
    let metrics = Arc::new(Metrics::new());
    let render = metrics.clone();
    let health = Health::new(Some(Arc::new(move || render.render())));
    let _http = if opts.healthz_port > 0 {
        let addr = SocketAddr::new(opts.healthz_ip, opts.healthz_port);
        Some(
            http::serve(addr, health.clone(), shutdown.clone())
                .await
                .map_err(|e| DaemonError::Startup(e.to_string()))?,
        )
    } else {
        None
    };

    let Some(config) = network_config(&manager, &metrics, &mut shutdown).await? else {
        return Ok(Exit::Signal);
    };
    let ip_stack = config
        .ip_stack()
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let stack = match ip_stack {
        IpStack::V4 => Stack::V4,
        IpStack::V6 => Stack::V6,
        IpStack::Dual => Stack::Dual,
    };
    if !config.enable_nftables {
        check_br_netfilter(ip_stack)?;
    }

    let nl = Netlink::new().map_err(|e| DaemonError::Startup(format!("netlink: {e}")))?;
    // Kube mode: the node-public-ip(v6) annotations replace --public-ip(v6) before the
    // interface is chosen, as upstream's GetStoredPublicIP (other managers return none). A
    // failed read is logged and the flags are used, as upstream does.
    let (ip_override, ipv6_override) = manager.public_ip_overrides().await.unwrap_or_else(|e| {
        warn!("reading the node's public IP annotations: {e}");
        (None, None)
    });
    let sel = Selection {
        iface: opts.iface.clone(),
        iface_regex: opts.iface_regex.clone(),
        iface_can_reach: opts.iface_can_reach,
        public_ip: ip_override.unwrap_or_else(|| opts.public_ip.clone()),
        public_ipv6: ipv6_override.unwrap_or_else(|| opts.public_ipv6.clone()),
    };
    let view = HostView::load(&nl, sel.iface_can_reach).await?;
    let ext = iface::select(&view, stack, &sel)?;
    if let Some(a) = ext.iface_addr {
        info!("Using interface with name {} and address {a}", ext.name);
    }
    if let Some(a) = ext.iface_v6_addr {
        info!("Using interface with name {} and v6 address {a}", ext.name);
    }

    let env = BackendEnv {
        nl: nl.clone(),
        ext: ext.clone(),
        network: config.network.filter(|_| config.enable_ipv4),
        ipv6_network: config.ipv6_network.filter(|_| config.enable_ipv6),
    };
    let mut backend = Backend::new(&config, env.clone()).map_err(|e| match e {
        e @ (BackendError::UnknownType(_) | BackendError::Unsupported(_)) => {
            DaemonError::Startup(format!("Error fetching backend: {e}"))
        }
        e => DaemonError::Backend(e),
    })?;

    metrics
        .build_info
        .get_or_create(&BuildLabels {
            version: crate::cli::VERSION.to_string(),
            datastore: if opts.kube_subnet_mgr { "kube" } else { "etcd" }.to_string(),
            backend: backend.type_name().to_string(),
        })
        .set(1);

    // Subscribe before touching the device, so a deletion in between is not missed.
    let mut link_events = flannel_netlink::LinkEvents::subscribe()
        .map_err(|e| DaemonError::Startup(format!("subscribing to link events: {e}")))?;

    let stored = match manager.stored_attrs(ext.ext_addr).await {
        Ok(s) => s,
        Err(e) => {
            Metrics::inc(&metrics.datastore_errors, "get stored attributes");
            warn!("could not read this node's stored lease attributes: {e}");
            None
        }
    };
    let attrs = backend.prepare(stored.as_ref()).await?;

    // Acquire, retrying datastore outages (upstream exits; a crash loop helps nobody).
    let mut backoff = Duration::from_secs(1);
    let mut lease = loop {
        match manager.acquire_lease(&config, &attrs).await {
            Ok(l) => break l,
            Err(e @ (SubnetError::Datastore { .. } | SubnetError::OutOfSubnets)) => {
                Metrics::inc(&metrics.datastore_errors, "acquire lease");
                error!("failed to acquire lease: {e}; retrying in {backoff:?}");
            }
            Err(e) => return Err(DaemonError::Subnet(e)),
        }
        if !sleep_or_shutdown(backoff, &mut shutdown).await {
            return Ok(Exit::Signal);
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    info!(
        "Acquired lease {} (public IP {})",
        lease.key(),
        lease.attrs.public_ip
    );
    record_lease(&metrics, &lease);
    backend.configure(&lease).await?;

    // Rules.
    let rules_cfg = rule_config(opts, &config, &lease, previous.as_ref());
    let rules: Box<dyn RuleManager> = flannel_rules::new_rule_manager(
        config.enable_nftables,
        rules_cfg,
        Arc::new(TokioRunner::default()),
    );
    if let Err(e) = rules.cleanup_other_mode().await {
        return Err(DaemonError::Rules(format!(
            "Failed to clean-up the other mode's rules: {e}"
        )));
    }
    if opts.ip_masq {
        rules
            .install_masquerade()
            .await
            .map_err(|e| DaemonError::Rules(format!("Failed to setup IP Masquerade: {e}")))?;
    }
    if opts.iptables_forward_rules {
        info!("Changing default FORWARD chain policy to ACCEPT");
    }
    rules
        .install_forward()
        .await
        .map_err(|e| DaemonError::Rules(format!("Failed to setup forward rules: {e}")))?;
    if opts.ip_blackhole_route {
        ensure_blackhole(&nl, &lease).await;
    }

    // subnet.env, then ready.
    let env_file = subnet_env(&config, &lease, backend.mtu(), opts.ip_masq);
    match env_file.write_atomic(&opts.subnet_file) {
        Ok(()) => {
            info!("Wrote subnet file to {}", opts.subnet_file.display());
            health.set_ready();
            info!("flannel is ready");
            match crate::notify::ready() {
                Ok(true) => debug!("sent READY=1 to systemd"),
                Ok(false) => {}
                Err(e) => warn!("sd_notify failed: {e}"),
            }
        }
        // Upstream keeps running but never becomes ready; so do we.
        Err(e) => warn!("Failed to write subnet file: {e}"),
    }
    if let Err(e) = manager.complete_lease(&lease).await {
        warn!("completing the lease: {e}");
    }

    // Main loop.
    let mut watch_rx = manager.watch_leases(&lease);
    let mut peers = Peers::new(&lease, &config, metrics.clone());
    // When the oldest peer change not yet in the kernel arrived.
    let mut pending_since: Option<Instant> = None;
    let devices = backend.devices();
    let mut reconcile_at: Option<tokio::time::Instant> = None;
    let mut repair = tokio::time::interval_at(
        tokio::time::Instant::now() + REPAIR_INTERVAL,
        REPAIR_INTERVAL,
    );
    let resync_period = Duration::from_secs(opts.iptables_resync);
    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + resync_period, resync_period);
    let margin = Duration::from_secs(u64::from(opts.subnet_lease_renew_margin) * 60);
    let mut renew_at =
        renew_delay(&lease, margin, SystemTime::now()).map(|d| tokio::time::Instant::now() + d);

    loop {
        let reconcile_sleep = async {
            match reconcile_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let renew_sleep = async {
            match renew_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut why = "";
        tokio::select! {
            _ = shutdown.changed() => {
                info!("Exiting cleanly...");
                return Ok(Exit::Signal);
            }
            ev = watch_rx.recv() => match ev {
                Some(WatchEvent::Leases(e)) => {
                    let first = !peers.synced;
                    // The first snapshot always reconciles: it removes entries of peers that
                    // vanished while we were down, even when no peer is left.
                    let changed = peers.apply(e);
                    if changed && pending_since.is_none() {
                        pending_since = Some(Instant::now());
                    }
                    if (changed || first) && peers.synced && reconcile_at.is_none() {
                        reconcile_at = Some(tokio::time::Instant::now() + COALESCE);
                    }
                }
                Some(WatchEvent::OwnLeaseRevoked) => {
                    warn!("Lease has been revoked. Shutting down daemon.");
                    return Ok(Exit::LeaseRevoked);
                }
                None => {
                    Metrics::inc(&metrics.datastore_errors, "watch");
                    error!("the lease watch ended unexpectedly; restarting it");
                    if !sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await {
                        return Ok(Exit::Signal);
                    }
                    watch_rx = manager.watch_leases(&lease);
                }
            },
            _ = reconcile_sleep => { why = "peers changed"; }
            _ = repair.tick() => { why = "repair"; }
            ev = futures::StreamExt::next(&mut link_events) => match ev {
                Some(flannel_netlink::LinkEvent::DelLink { name, .. }) if devices.contains(&name) => {
                    warn!("{name} was deleted");
                    why = "device deleted";
                }
                Some(flannel_netlink::LinkEvent::Overrun) => { why = "link events lost"; }
                Some(_) => {}
                None => {
                    warn!("link event stream ended; relying on the repair tick");
                    link_events = match flannel_netlink::LinkEvents::subscribe() {
                        Ok(l) => l,
                        Err(e) => return Err(DaemonError::Startup(format!("subscribing to link events: {e}"))),
                    };
                }
            },
            _ = resync.tick() => {
                let mode = format!("{:?}", rules.mode()).to_lowercase();
                match rules.check_and_repair().await {
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
                if opts.ip_blackhole_route {
                    ensure_blackhole(&nl, &lease).await;
                }
            }
            _ = renew_sleep => {
                match manager.renew_lease(&lease).await {
                    Ok(l) => {
                        Metrics::inc(&metrics.lease_renewals, "ok");
                        info!("renewed lease {}", l.key());
                        lease = l;
                        record_lease(&metrics, &lease);
                        renew_at = renew_delay(&lease, margin, SystemTime::now())
                            .map(|d| tokio::time::Instant::now() + d);
                    }
                    Err(e) => {
                        Metrics::inc(&metrics.lease_renewals, "error");
                        Metrics::inc(&metrics.datastore_errors, "renew lease");
                        error!("Error renewing lease (trying again in 1 min): {e}");
                        renew_at = Some(tokio::time::Instant::now() + RENEW_RETRY);
                    }
                }
            }
        }
        if !why.is_empty() && peers.synced {
            reconcile_at = None;
            let start = Instant::now();
            let desired = peers.desired(&lease, &env);
            let result = backend.reconcile(&desired).await;
            record_reconcile(&metrics, why, &result, start.elapsed());
            match result {
                Ok(stats) => {
                    log_stats(&stats, start.elapsed(), why);
                    if stats.added + stats.removed + stats.unchanged
                        >= crate::memory::TRIM_AFTER_ENTRIES
                    {
                        crate::memory::release_free_memory();
                    }
                    if stats.failed == 0
                        && let Some(t) = pending_since.take()
                    {
                        metrics
                            .event_to_programmed
                            .observe(t.elapsed().as_secs_f64());
                    }
                }
                Err(e) => {
                    error!("reconcile ({why}) failed: {e}");
                    // Try again soon rather than waiting for the repair tick.
                    reconcile_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_types::LeaseAttrs;

    #[test]
    fn subnet_env_follows_enabled_families() {
        let config =
            NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let lease = Lease {
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        let env = subnet_env(&config, &lease, 1450, true);
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }
}
