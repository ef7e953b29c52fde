//! The etcd v3 subnet manager (upstream `pkg/subnet/etcd`): this node's lease is a key
//! `<prefix>/subnets/<subnet>` whose value is the node's [`LeaseAttrs`] JSON, attached to a 24 h
//! etcd lease; every node watches `<prefix>/subnets/` to learn its peers.
//!
//! Keys and values are byte-compatible with upstream, so Go and Rust flanneld share one etcd.
//! Where upstream is fragile this manager does better, and says so:
//! * a lost allocation race is retried with a fresh view (upstream exits);
//! * two nodes picking overlapping dual-stack keys at the same time are told apart by creation
//!   revision after the write, and the younger one picks again (upstream would keep both);
//! * renewal is a guarded update of a key that still carries our public IP, and the etcd lease
//!   it replaces is revoked (upstream re-creates the key blindly and leaks the old lease);
//! * malformed peer keys and values are skipped with one warning each, and peer leases outside
//!   the cluster Network (or over our own subnet) never reach the daemon;
//! * the watch resumes after errors from the last revision, re-lists after compaction, and
//!   survives an etcd restart.
//!
//! # Reservations
//! A key below `<prefix>/subnets/` that is attached to **no etcd lease** (no TTL), for example
//! one written with plain `etcdctl put`, is a *reservation* (upstream
//! `Documentation/reservations.md`). Upstream's v3 code cannot actually read such keys (it skips
//! every key whose TTL it cannot query), so these semantics are flannel-rs's own:
//! * **Never removed or taken over.** We never delete a reservation, never attach it to an etcd
//!   lease, and never allocate a subnet overlapping it: its subnet is occupied.
//! * **Adopted by its node.** If its `PublicIP` is ours, it is our lease: [`Lease::expiration`]
//!   is `None`, so the daemon never schedules a renewal, and [`SubnetManager::renew_lease`] is a
//!   read-only check. Another lease carrying our public IP is then deleted as a duplicate.
//! * **Value kept current.** The only write we ever make to a reservation is to our own one,
//!   and only when our attributes (e.g. the VXLAN MAC) differ from the stored ones: the value is
//!   rewritten in place, still without a lease, guarded by its revision. Otherwise peers would
//!   keep sending to a stale MAC.
//! * **Must fit.** A reservation is adopted when each enabled family lies inside its Network
//!   with the configured subnet length; SubnetMin/SubnetMax only bound dynamic allocation, so
//!   operators may reserve outside that range. A reservation of ours that does not fit is an
//!   error ([`SubnetError::LeaseRejected`]) rather than a silent second lease.
//! * **Seen by peers** like any lease (with `expiration: None`).
//! * An operator may turn our lease into a reservation at run time (`etcdctl put` without
//!   `--lease`): the next renewal notices, writes nothing and returns `expiration: None`.
//!
//! # Runtime
//! Methods are async and need a tokio runtime; [`SubnetManager::watch_leases`] spawns its task
//! on the current runtime, so it must be called from within one.

mod alloc;
mod client;
mod registry;
mod repeats;
mod tls;
mod watch;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flannel_types::{FamilyNet, Lease, LeaseAttrs, NetConfig, NoStackError, SubnetKey};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;
use tokio::sync::mpsc;

use crate::{ConfigProblem, PreviousSubnets, SubnetError, SubnetManager, WatchEvent};

use alloc::Occupied;
use registry::{Entry, Keys, Registry, Warned, warn_bad_key, warn_bad_value};

pub use alloc::MAX_CANDIDATES;
pub use tls::TlsProblem;

/// How long one TLS probe of an endpoint may take at start-up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait between rounds of TLS probes that all failed; it doubles up to
/// [`PROBE_BACKOFF_MAX`].
const PROBE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between rounds of TLS probes.
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Upstream's `subnetTTL`: how long a lease lives without renewal (an etcd lease of 86400 s).
pub const SUBNET_TTL: Duration = Duration::from_secs(24 * 3600);

/// Upstream's `raceRetries`: how many times an allocation is retried after losing a race.
pub const RACE_RETRIES: u32 = 10;

/// How long [`EtcdManager::wait_network_config`] waits between attempts (upstream: 1 s).
pub const CONFIG_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// flanneld's `--etcd-*` flags.
///
/// Empty strings count as unset, as they do for upstream's flags.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `--etcd-endpoints`, already split at commas: `http://127.0.0.1:2379`, `https://...`, or
    /// bare `host:port` (TLS then follows the certificate settings).
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`, default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// `--etcd-keyfile`: client key; TLS client authentication needs it and `certfile`.
    pub keyfile: Option<PathBuf>,
    /// `--etcd-certfile`: client certificate.
    pub certfile: Option<PathBuf>,
    /// `--etcd-cafile`: CA to verify the server with; the system trust store when unset.
    pub cafile: Option<PathBuf>,
    /// `--etcd-username`: enables etcd authentication.
    pub username: Option<String>,
    /// `--etcd-password`.
    pub password: Option<String>,
}

impl EtcdConfig {
    /// Plain connections to `endpoints` under the default prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            keyfile: None,
            certfile: None,
            cafile: None,
            username: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    /// Like a derived `Debug`, but the password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("keyfile", &self.keyfile)
            .field("certfile", &self.certfile)
            .field("cafile", &self.cafile)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Probes every endpoint's TLS until one completes a handshake (retrying with backoff: a
/// server that is not up yet or has the wrong certificate can be fixed while we wait), logging
/// each failure as one line that names the endpoint and the problem. Then warns about every
/// server that did not ask for our client certificate. Without `--etcd-cafile` there is
/// nothing to probe with (the system trust store is the client's business).
async fn wait_tls_servers(material: &tls::Material, endpoints: &[String]) {
    if material.ca_file.is_none() {
        return;
    }
    let mut delay = PROBE_BACKOFF;
    loop {
        let mut failures = Vec::new();
        let mut any_ok = false;
        for endpoint in endpoints {
            match tls::probe(endpoint, material, PROBE_TIMEOUT).await {
                Ok(p) => {
                    any_ok = true;
                    if material.cert_file.is_some() && !p.asked_for_client_cert {
                        tracing::warn!(
                            "etcd at {endpoint} did not ask for a client certificate: it runs without --client-cert-auth, so anyone who can reach it can change the flannel network config"
                        );
                    }
                }
                Err(message) => failures.push(message),
            }
        }
        for message in &failures {
            if any_ok {
                tracing::warn!("{message}");
            } else {
                tracing::error!("{message}; retrying in {delay:?}");
            }
        }
        if any_ok {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(PROBE_BACKOFF_MAX);
    }
}

/// The etcd v3 [`SubnetManager`]; see the [module documentation](self) for its behaviour.
pub struct EtcdManager {
    registry: Registry,
    etcd: EtcdConfig,
    plan: client::Plan,
    previous: PreviousSubnets,
    ttl: Duration,
    /// The last config read or used, so the watch can drop leases outside the Network.
    config: Mutex<Option<NetConfig>>,
    warned: Arc<Warned>,
}

/// The outcome of one allocation attempt.
enum Attempt {
    Done(Lease),
    /// Something changed under us (a race); try again with a fresh listing.
    Retry(String),
}

/// Whether a stored lease belongs to the node with attributes `ours`: same `PublicIP`, or, for a
/// node without an IPv4 public address (IPv6-only), the same `PublicIPv6`.
fn same_node(stored: &LeaseAttrs, ours: &LeaseAttrs) -> bool {
    if ours.public_ip.is_unspecified() {
        ours.public_ipv6.is_some()
            && stored.public_ip.is_unspecified()
            && stored.public_ipv6 == ours.public_ipv6
    } else {
        stored.public_ip == ours.public_ip
    }
}

/// The node's public address for log lines.
fn node_ip(attrs: &LeaseAttrs) -> String {
    match (attrs.public_ip.is_unspecified(), attrs.public_ipv6) {
        (true, Some(v6)) => v6.to_string(),
        _ => attrs.public_ip.to_string(),
    }
}

fn show<T: std::fmt::Display>(net: Option<T>) -> String {
    net.map_or_else(|| "none".to_string(), |n| n.to_string())
}

fn lease_for(key: SubnetKey, attrs: LeaseAttrs, expiration: Option<SystemTime>) -> Lease {
    Lease {
        subnet: key.ipv4,
        ipv6_subnet: key.ipv6,
        attrs,
        expiration,
    }
}

impl EtcdManager {
    /// Creates the manager and its etcd client.
    ///
    /// Logs upstream's `no certificate provided: connecting to etcd with http. This is
    /// insecure` when no client certificate is configured. Without a username nothing is sent
    /// yet (the client connects on first use); with one, etcd must be reachable to log in.
    /// `previous` is what the last run wrote to subnet.env, offered again when etcd no longer
    /// holds a lease for our public IP.
    pub async fn connect(
        etcd: EtcdConfig,
        previous: PreviousSubnets,
    ) -> Result<EtcdManager, SubnetError> {
        let plan = client::plan(&etcd)?;
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        let material = tls::Material::load(&etcd, &plan)
            .map_err(|e| SubnetError::datastore("checking the etcd TLS files", Box::new(e)))?;
        if let Some(material) = &material {
            wait_tls_servers(material, &plan.endpoints).await;
        }
        let c = client::connect(&etcd, &plan, false).await?;
        Ok(EtcdManager {
            registry: Registry::new(c, Keys::new(&etcd.prefix)),
            etcd,
            plan,
            previous,
            ttl: SUBNET_TTL,
            config: Mutex::new(None),
            warned: Arc::new(Warned::default()),
        })
    }

    /// Test-only knob: use etcd leases of `ttl` instead of [`SUBNET_TTL`], so a test can watch a
    /// renewal extend a lease. etcd rounds to whole seconds and raises values below its
    /// minimum (about 2 s).
    #[doc(hidden)]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The TTL given to new etcd leases.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The etcd key of the network config (`<prefix>/config`).
    pub fn config_key(&self) -> &str {
        &self.registry.keys.config
    }

    /// The etcd key a lease is stored under (`<prefix>/subnets/10.5.52.0-24`).
    pub fn lease_key(&self, key: &SubnetKey) -> String {
        self.registry.keys.subnet(key)
    }

    /// Reads the network config until it exists and is valid, as upstream's start-up does:
    /// every failure (missing key, invalid config, etcd unreachable) is logged as
    /// `Couldn't fetch network config: <error>` and retried after
    /// [`CONFIG_RETRY_INTERVAL`]. Returns `None` as soon as `cancel` completes (the daemon
    /// then exits 0, as upstream does on a cancelled config fetch).
    pub async fn wait_network_config<C>(&self, cancel: C) -> Option<NetConfig>
    where
        C: Future<Output = ()>,
    {
        tokio::pin!(cancel);
        loop {
            let attempt = tokio::select! {
                _ = &mut cancel => return None,
                r = self.network_config() => r,
            };
            match attempt {
                Ok(c) => {
                    tracing::info!("Found network config - Backend type: {}", c.backend_type);
                    return Some(c);
                }
                Err(e) => tracing::error!("Couldn't fetch network config: {e}"),
            }
            tokio::select! {
                _ = &mut cancel => return None,
                _ = tokio::time::sleep(CONFIG_RETRY_INTERVAL) => {}
            }
        }
    }

    fn remember_config(&self, config: &NetConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(config.clone());
    }

    fn remembered_config(&self) -> Option<NetConfig> {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Which free subnet(s) to create: the previous ones from subnet.env if they still fit and
    /// are free, else a random pick among the first [`MAX_CANDIDATES`] free ones, per family.
    fn choose(&self, config: &NetConfig, occupied: &Occupied) -> Result<SubnetKey, SubnetError> {
        let previous4 = reusable::<Ipv4Net>(config, self.previous.ipv4, occupied);
        let previous6 = reusable::<Ipv6Net>(config, self.previous.ipv6, occupied);
        let mut rng = rand::rng();
        let ipv4 = new_subnet(config, previous4, occupied, &mut rng)?;
        let ipv6 = new_subnet(config, previous6, occupied, &mut rng)?;
        if ipv4.is_none() && ipv6.is_none() {
            return Err(SubnetError::InvalidConfig {
                location: self.registry.keys.config.clone(),
                source: NoStackError.into(),
            });
        }
        Ok(SubnetKey { ipv4, ipv6 })
    }

    /// Attaches `entry` (a lease of ours) to a fresh etcd lease, writing `attrs`, unless the key
    /// changed since it was listed; then revokes the etcd lease it was attached to.
    async fn refresh(&self, entry: &Entry, attrs: &LeaseAttrs) -> Result<Attempt, SubnetError> {
        let start = SystemTime::now();
        let (lease_id, granted) = self.registry.grant(self.ttl).await?;
        let written = self
            .registry
            .put_if_unchanged(
                &entry.etcd_key,
                &attrs.to_json(),
                lease_id,
                entry.mod_revision,
            )
            .await;
        match written {
            Ok(true) => {}
            Ok(false) => {
                self.registry.revoke_quietly(lease_id).await;
                return Ok(Attempt::Retry(format!(
                    "{} changed while it was being refreshed",
                    entry.etcd_key
                )));
            }
            Err(e) => {
                self.registry.revoke_quietly(lease_id).await;
                return Err(e);
            }
        }
        self.registry.revoke_if_orphaned(entry.lease_id).await;
        Ok(Attempt::Done(lease_for(
            entry.key,
            attrs.clone(),
            Some(after(start, granted)),
        )))
    }

    /// Uses our reservation, rewriting its value (still without a lease) only if it differs.
    async fn adopt(&self, entry: &Entry, attrs: &LeaseAttrs) -> Result<Attempt, SubnetError> {
        tracing::info!(
            "Found reservation ({}) for current IP ({}), using it",
            entry.key,
            node_ip(attrs)
        );
        if entry.attrs.as_ref().ok() != Some(attrs)
            && !self
                .registry
                .put_if_unchanged(&entry.etcd_key, &attrs.to_json(), 0, entry.mod_revision)
                .await?
        {
            return Ok(Attempt::Retry(format!(
                "reservation {} changed while it was being updated",
                entry.etcd_key
            )));
        }
        Ok(Attempt::Done(lease_for(entry.key, attrs.clone(), None)))
    }

    /// Creates a new lease for `key`, then makes sure no overlapping key was created before
    /// ours in the meantime (possible with dual-stack keys, which differ when only one family
    /// collides); if one was, ours is given up.
    async fn create(&self, key: SubnetKey, attrs: &LeaseAttrs) -> Result<Attempt, SubnetError> {
        let etcd_key = self.registry.keys.subnet(&key);
        let start = SystemTime::now();
        let (lease_id, granted) = self.registry.grant(self.ttl).await?;
        let revision = match self
            .registry
            .create(&etcd_key, &attrs.to_json(), lease_id)
            .await
        {
            Ok(Some(rev)) => rev,
            Ok(None) => {
                self.registry.revoke_quietly(lease_id).await;
                return Ok(Attempt::Retry(format!(
                    "{etcd_key} was created concurrently"
                )));
            }
            Err(e) => {
                self.registry.revoke_quietly(lease_id).await;
                return Err(e);
            }
        };
        match self.registry.list().await {
            Ok(after) => {
                let mut mine = Occupied::new();
                mine.add(&key);
                let earlier = after.entries.iter().find(|e| {
                    e.etcd_key != etcd_key
                        && e.create_revision < revision
                        && mine.overlaps_key(&e.key)
                });
                if let Some(winner) = earlier {
                    // Revoking the lease deletes our key with it.
                    self.registry.revoke_quietly(lease_id).await;
                    return Ok(Attempt::Retry(format!(
                        "{etcd_key} overlaps {}, which was created first",
                        winner.etcd_key
                    )));
                }
            }
            Err(e) => tracing::warn!(
                "Could not check {etcd_key} against concurrent allocations, keeping it: {e}"
            ),
        }
        tracing::info!(
            "Allocated lease (ip: {} ipv6: {}) to current node ({})",
            show(key.ipv4),
            show(key.ipv6),
            node_ip(attrs)
        );
        Ok(Attempt::Done(lease_for(
            key,
            attrs.clone(),
            Some(after(start, granted)),
        )))
    }

    /// One pass of upstream's `tryAcquireLease` on a fresh listing.
    async fn try_acquire(
        &self,
        config: &NetConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Attempt, SubnetError> {
        let listing = self.registry.list().await?;
        for bad in &listing.bad {
            warn_bad_key(&self.warned, bad);
        }
        for e in &listing.entries {
            if let Err(reason) = &e.attrs {
                warn_bad_value(&self.warned, e, reason);
            }
        }

        let mut mine: Vec<&Entry> = listing
            .entries
            .iter()
            .filter(|e| e.attrs.as_ref().is_ok_and(|a| same_node(a, attrs)))
            .collect();
        mine.sort_by_key(|e| (!e.is_reservation(), e.create_revision));

        // What we keep: our (fitting) reservation, else our first fitting lease. Every other
        // lease carrying our public IP is stale or a duplicate and goes.
        let keep = match mine.first() {
            Some(r) if r.is_reservation() => {
                if !alloc::fits_network(config, &r.key) {
                    return Err(SubnetError::LeaseRejected(format!(
                        "the reservation {} for this node's public IP {} does not fit the network config \
                         (each enabled family must lie inside its Network with the configured subnet length); \
                         fix or delete it",
                        r.etcd_key,
                        node_ip(attrs)
                    )));
                }
                Some(*r)
            }
            _ => mine
                .iter()
                .copied()
                .find(|e| alloc::fits_range(config, &e.key)),
        };
        let mut deleted = Vec::new();
        for stale in mine.iter().filter(|e| !e.is_reservation()) {
            if keep.is_some_and(|k| k.etcd_key == stale.etcd_key) {
                continue;
            }
            if keep.is_some() {
                tracing::info!(
                    "Found another lease ({}) for current IP ({}), deleting the duplicate",
                    stale.key,
                    node_ip(attrs)
                );
            } else {
                tracing::info!(
                    "Found lease ({}) for current IP ({}) but not compatible with current config, deleting",
                    stale.key,
                    node_ip(attrs)
                );
            }
            if !self
                .registry
                .delete_if_unchanged(&stale.etcd_key, stale.mod_revision)
                .await?
            {
                return Ok(Attempt::Retry(format!(
                    "{} changed while it was being deleted",
                    stale.etcd_key
                )));
            }
            self.registry.revoke_if_orphaned(stale.lease_id).await;
            deleted.push(stale.etcd_key.clone());
        }

        if let Some(k) = keep {
            if k.is_reservation() {
                return self.adopt(k, attrs).await;
            }
            tracing::info!(
                "Found lease (ip: {} ipv6: {}) for current IP ({}), reusing",
                show(k.key.ipv4),
                show(k.key.ipv6),
                node_ip(attrs)
            );
            return self.refresh(k, attrs).await;
        }

        let mut occupied = Occupied::new();
        for e in &listing.entries {
            if !deleted.contains(&e.etcd_key) {
                occupied.add(&e.key);
            }
        }
        for b in &listing.bad {
            if let Some(c) = &b.covers {
                occupied.add(c);
            }
        }
        let key = self.choose(config, &occupied)?;
        self.create(key, attrs).await
    }
}

/// The previous subnet of family `N` (from subnet.env), if the family is enabled and the
/// subnet still fits the config and is free; each outcome is logged as upstream logs it.
fn reusable<N: FamilyNet>(
    config: &NetConfig,
    previous: Option<N>,
    occupied: &Occupied,
) -> Option<N> {
    let family = config.family::<N>();
    let p = previous.filter(|_| family.enabled)?;
    if !alloc::fits_family_range(&family, Some(p)) {
        tracing::error!(
            "Found previously leased subnet ({p}) that is not compatible with the Etcd network config, ignoring"
        );
        None
    } else if occupied.overlaps(p) {
        tracing::info!("Previously leased subnet ({p}) is taken by another lease, not reusing it");
        None
    } else {
        tracing::info!("Found previously leased subnet ({p}), reusing");
        Some(p)
    }
}

/// The subnet of family `N` for a new lease: `reused` if there is one, else a random free one
/// (an error when none is free); `None` when the family is disabled.
fn new_subnet<N: FamilyNet>(
    config: &NetConfig,
    reused: Option<N>,
    occupied: &Occupied,
    rng: &mut impl Rng,
) -> Result<Option<N>, SubnetError> {
    let family = config.family::<N>();
    if !family.enabled || reused.is_some() {
        return Ok(reused);
    }
    tracing::info!(
        "Picking {}subnet in range {} ... {}",
        N::FAMILY.pick("", "ipv6 "),
        show(family.subnet_min),
        show(family.subnet_max)
    );
    alloc::pick(&alloc::candidates(&family, occupied), rng)
        .map(Some)
        .ok_or(SubnetError::OutOfSubnets)
}

/// A small random pause between allocation attempts, growing with the attempt number, so that
/// nodes that collided do not collide again in lockstep.
fn jitter(attempt: u32) -> Duration {
    let max = 25 * u64::from(attempt.max(1));
    Duration::from_millis(rand::rng().random_range(5..=max))
}

impl SubnetManager for EtcdManager {
    /// `Etcd Local Manager with Previous Subnet: <cidr|None>`, as upstream.
    fn name(&self) -> String {
        format!(
            "Etcd Local Manager with Previous Subnet: {}",
            self.previous
                .ipv4
                .map_or_else(|| "None".to_string(), |n| n.to_string())
        )
    }

    /// Reads `<prefix>/config`, parses it as upstream does and applies `CheckNetworkConfig`.
    /// A missing key is [`SubnetError::ConfigNotFound`]; bad JSON or a failed check is
    /// [`SubnetError::InvalidConfig`] naming the key.
    async fn network_config(&self) -> Result<NetConfig, SubnetError> {
        let key = &self.registry.keys.config;
        let raw = self
            .registry
            .get_config()
            .await?
            .ok_or(SubnetError::ConfigNotFound)?;
        let invalid = |source: ConfigProblem| SubnetError::InvalidConfig {
            location: key.clone(),
            source,
        };
        let mut config = NetConfig::parse_slice(&raw).map_err(|e| invalid(e.into()))?;
        config.check().map_err(|e| invalid(e.into()))?;
        self.remember_config(&config);
        Ok(config)
    }

    /// The attributes of the lease that carries `public_ip` (a reservation first, else the
    /// oldest lease), so the backend can reuse its VXLAN MAC.
    async fn stored_attrs(
        &self,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<Option<LeaseAttrs>, SubnetError> {
        let Some(ip) = public_ip else {
            return Ok(None);
        };
        let listing = self.registry.list().await?;
        let mut mine: Vec<(&Entry, &LeaseAttrs)> = listing
            .entries
            .iter()
            .filter_map(|e| e.attrs.as_ref().ok().map(|a| (e, a)))
            .filter(|(_, a)| a.public_ip == ip)
            .collect();
        mine.sort_by_key(|(e, _)| (!e.is_reservation(), e.create_revision));
        Ok(mine.first().map(|(_, a)| (*a).clone()))
    }

    /// Upstream's `AcquireLease`, retried on lost races: reuse our lease (or reservation),
    /// else the previous subnet, else a random free one; see the module documentation.
    async fn acquire_lease(
        &self,
        config: &NetConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError> {
        // check() is idempotent on a checked config and fills SubnetMin/Max on an unchecked one.
        let mut config = config.clone();
        config.check().map_err(|e| SubnetError::InvalidConfig {
            location: self.registry.keys.config.clone(),
            source: e.into(),
        })?;
        self.remember_config(&config);
        for attempt in 1..=RACE_RETRIES {
            match self.try_acquire(&config, attrs).await? {
                Attempt::Done(lease) => return Ok(lease),
                Attempt::Retry(why) => {
                    tracing::info!("{why}; trying again ({attempt}/{RACE_RETRIES})");
                    tokio::time::sleep(jitter(attempt)).await;
                }
            }
        }
        Err(SubnetError::datastore(
            "acquiring a subnet lease",
            "Max retries reached trying to acquire a subnet",
        ))
    }

    /// Moves our key to a fresh etcd lease of the manager's TTL and revokes the old one.
    ///
    /// Guarded: the key must still exist and carry our public IP (else the error says why and
    /// the watch reports [`WatchEvent::OwnLeaseRevoked`]); a key that became a reservation is
    /// left alone and returned with `expiration: None`.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError> {
        let etcd_key = self.registry.keys.subnet(&lease.key());
        let operation = || format!("renewing lease {etcd_key}");
        for _ in 0..3 {
            let kv = self.registry.get(&etcd_key).await?.ok_or_else(|| {
                SubnetError::datastore(
                    operation(),
                    "the key no longer exists (it expired or was deleted)",
                )
            })?;
            let entry = match registry::parse_kv(&self.registry.keys, &kv) {
                registry::Parsed::Entry(e) => e,
                registry::Parsed::Bad(b) => {
                    return Err(SubnetError::LeaseRejected(format!(
                        "{}: {}",
                        b.etcd_key, b.reason
                    )));
                }
            };
            match &entry.attrs {
                Ok(a) if same_node(a, &lease.attrs) => {}
                Ok(a) => {
                    return Err(SubnetError::LeaseRejected(format!(
                        "lease {etcd_key} now belongs to {}",
                        node_ip(a)
                    )));
                }
                Err(reason) => {
                    return Err(SubnetError::LeaseRejected(format!(
                        "lease {etcd_key} holds a value that is not a lease: {reason}"
                    )));
                }
            }
            if entry.is_reservation() {
                return Ok(Lease {
                    expiration: None,
                    ..lease.clone()
                });
            }
            match self.refresh(&entry, &lease.attrs).await? {
                Attempt::Done(renewed) => {
                    if let Some(exp) = renewed.expiration {
                        tracing::info!("Lease renewed, new expiration: {}", humanize_expiry(exp));
                    }
                    return Ok(renewed);
                }
                Attempt::Retry(why) => tracing::info!("{why}; trying again"),
            }
        }
        Err(SubnetError::datastore(
            operation(),
            "the key kept changing while it was being renewed",
        ))
    }

    /// Nothing to do in etcd mode: renewal and the own-lease watch are driven by the daemon.
    async fn complete_lease(&self, _lease: &Lease) -> Result<(), SubnetError> {
        Ok(())
    }

    /// Spawns the watch task on the current tokio runtime (the private `etcd::watch` module,
    /// summarised in the [module documentation](self)).
    fn watch_leases(&self, own: &Lease) -> mpsc::Receiver<WatchEvent> {
        watch::spawn(watch::Setup {
            etcd: self.etcd.clone(),
            plan: self.plan.clone(),
            keys: self.registry.keys.clone(),
            own: own.clone(),
            config: self.remembered_config(),
            warned: self.warned.clone(),
        })
    }
}

/// `at + d`, saturating instead of panicking on an absurd TTL from the server.
fn after(at: SystemTime, d: Duration) -> SystemTime {
    at.checked_add(d)
        .or_else(|| at.checked_add(SUBNET_TTL))
        .unwrap_or(at)
}

/// An expiration as seconds from now, for log lines.
fn humanize_expiry(at: SystemTime) -> String {
    match at.duration_since(SystemTime::now()) {
        Ok(d) => format!("in {}s", d.as_secs()),
        Err(_) => "already passed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(v4: &str, v6: Option<&str>) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: v4.parse().unwrap(),
            public_ipv6: v6.map(|s| s.parse().unwrap()),
            ..LeaseAttrs::default()
        }
    }

    #[test]
    fn nodes_are_identified_by_public_ip_or_ipv6_when_there_is_no_ipv4() {
        assert!(same_node(
            &attrs("10.0.0.1", None),
            &attrs("10.0.0.1", Some("fc00::1"))
        ));
        assert!(!same_node(
            &attrs("10.0.0.2", None),
            &attrs("10.0.0.1", None)
        ));
        let v6only = attrs("0.0.0.0", Some("fc00::1"));
        assert!(same_node(&attrs("0.0.0.0", Some("fc00::1")), &v6only));
        assert!(!same_node(&attrs("0.0.0.0", Some("fc00::2")), &v6only));
        assert!(!same_node(&attrs("10.0.0.1", Some("fc00::1")), &v6only));
        // A node with neither address owns nothing.
        assert!(!same_node(&attrs("0.0.0.0", None), &attrs("0.0.0.0", None)));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut c = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]);
        c.password = Some("hunter2".into());
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn expirations_saturate_instead_of_panicking() {
        let now = SystemTime::now();
        assert_eq!(
            after(now, Duration::from_secs(10)),
            now + Duration::from_secs(10)
        );
        assert_eq!(after(now, Duration::MAX), now + SUBNET_TTL);
    }

    #[test]
    fn jitter_is_small_and_grows() {
        for attempt in 1..=RACE_RETRIES {
            let j = jitter(attempt);
            assert!(j >= Duration::from_millis(5));
            assert!(j <= Duration::from_millis(25 * u64::from(attempt)));
        }
    }
}
