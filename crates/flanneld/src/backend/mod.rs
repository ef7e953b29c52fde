//! Backends: how packets for a peer's subnet reach the peer.
//!
//! # The shape every backend has
//!
//! A backend is one module with one type implementing two traits:
//!
//! * [`Backend`], the life cycle the daemon drives:
//!   1. [`Backend::prepare`] creates or adopts the backend's device and returns the lease
//!      attributes to publish (the VXLAN MAC has to exist before the lease is written);
//!   2. [`Backend::configure`] applies what depends on our own lease (the device address);
//!   3. [`Backend::reconcile`] converges the kernel to the full desired peer set. It is called
//!      after every change, on the repair tick and when a device disappears, and it is always
//!      [`reconcile`] (below) applied to the backend's [`DataPlane`].
//! * [`DataPlane`], the five steps of one reconcile, run in this order by [`reconcile`]:
//!   1. [`DataPlane::observe`]: check (and repair) the devices and gather the facts about the
//!      node that the desired state depends on, into a [`DataPlane::View`];
//!   2. [`DataPlane::desired`]: a **pure** function of the peers and that view;
//!   3. [`DataPlane::actual`]: what the kernel holds of ours, read with one dump per kind;
//!   4. [`DataPlane::plan`]: a **pure** function from desired and actual to the kernel
//!      operations and their counts ([`Plan`]);
//!   5. [`DataPlane::apply`]: the plan as one batched netlink request ([`apply_batch`]), plus
//!      whatever the backend keeps outside rtnetlink (the udp peer table, the wireguard
//!      devices' peers).
//!
//! Because `desired` and `plan` are pure, each backend's unit tests check them without root
//! or a kernel; the netns tests check the other three steps. Adding a backend means adding one
//! module with that type and one line in [`new_backend`].
//!
//! Backends see only `flannel-types` leases, never etcd or Kubernetes objects, and only peers
//! the daemon already validated (see [`crate::peers`]).

use std::collections::HashSet;
use std::fmt;

use async_trait::async_trait;
use flannel_netlink::{BatchOp, BatchReport, Netlink, NetlinkError};
use flannel_types::{GoJsonError, IpFamily, Lease, LeaseAttrs, NetConfig};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::iface::ExternalInterface;
use crate::reconcile::ReconcileStats;

pub mod hostgw;
pub mod routes;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

/// Why a backend could not be built, started or reconciled.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// net-conf.json names a backend flannel-rs does not have.
    #[error("unknown backend type: {0}")]
    UnknownType(String),
    /// The backend exists upstream but not (yet) here.
    #[error("backend type {0:?} is not supported by flannel-rs")]
    Unsupported(String),
    /// A `Backend` setting has an impossible value.
    #[error("invalid Backend config: {0}")]
    Config(String),
    /// A `Backend` setting has the wrong JSON type.
    #[error("invalid Backend config: {0}")]
    ConfigJson(#[source] GoJsonError),
    /// host-gw cannot work through NAT (upstream's text).
    #[error(
        "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend"
    )]
    PublicIpDiffers,
    /// The device's MAC changed behind our back after it was brought up (upstream issue #1795).
    #[error("{dev}'s mac address wanted: {want}, but got: {got}")]
    MacMismatch {
        /// Device name.
        dev: String,
        /// The MAC we set.
        want: String,
        /// The MAC the kernel reports.
        got: String,
    },
    /// A netlink operation failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What we were doing.
        what: String,
        /// The netlink error.
        #[source]
        source: NetlinkError,
    },
    /// A system call outside netlink failed (the udp backend's TUN queues and sockets).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something the backend needs is missing (an address family without an address).
    #[error("{0}")]
    Missing(String),
    /// A WireGuard device could not be read, configured or started.
    #[error("{what}: {source}")]
    Device {
        /// What we were doing.
        what: String,
        /// The device's error.
        #[source]
        source: flannel_wireguard::WgError,
    },
}

/// Wraps a netlink error with what we were doing.
pub(crate) fn nl_err(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> BackendError {
    let what = what.into();
    move |source| BackendError::Netlink { what, source }
}

/// What every backend needs to know about the node.
#[derive(Debug, Clone)]
pub struct BackendEnv {
    /// The netlink connection (the daemon's namespace).
    pub nl: Netlink,
    /// The external interface and public addresses.
    pub ext: ExternalInterface,
    /// The cluster IPv4 network, when IPv4 is enabled.
    pub network: Option<Ipv4Net>,
    /// The cluster IPv6 network, when IPv6 is enabled.
    pub ipv6_network: Option<Ipv6Net>,
}

impl BackendEnv {
    /// The enabled cluster networks with their family, IPv4 first: per-family code loops over
    /// this instead of spelling out both families.
    pub fn networks(&self) -> impl Iterator<Item = (IpFamily, IpNet)> + '_ {
        let v4 = self.network.map(|n| (IpFamily::V4, IpNet::V4(n)));
        let v6 = self.ipv6_network.map(|n| (IpFamily::V6, IpNet::V6(n)));
        v4.into_iter().chain(v6)
    }
}

/// The life cycle the daemon drives (see the module documentation for the order).
///
/// A trait object, so the daemon holds one `Box<dyn Backend>` whatever net-conf.json chose.
/// Not `Send`: flanneld's runtime is single-threaded and the daemon's one task owns it.
#[async_trait(?Send)]
pub trait Backend: fmt::Debug {
    /// The backend's type as written in leases (`BackendType`) and metrics.
    fn type_name(&self) -> &'static str;

    /// Creates or adopts the device and returns the attributes for our lease. `stored` are the
    /// attributes the datastore still holds for this node (the VTEP MAC is reused from them).
    async fn prepare(&mut self, stored: Option<&LeaseAttrs>) -> Result<LeaseAttrs, BackendError>;

    /// Applies what depends on our own lease (device addresses, the udp data path).
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError>;

    /// The MTU pods should use (`FLANNEL_MTU`).
    fn mtu(&self) -> u32;

    /// The device names whose deletion should trigger an immediate reconcile.
    fn devices(&self) -> Vec<String>;

    /// Converges the kernel to the given peers (our own lease excluded by the caller); every
    /// implementation is [`reconcile`] on its [`DataPlane`].
    async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError>;

    /// Copies what the backend's own devices count (handshakes, bytes, drops) into the
    /// metrics; called after every reconcile pass. Backends whose state the kernel's
    /// routes and neighbours fully describe have nothing to add.
    fn collect_metrics(&self, _metrics: &crate::metrics::Metrics) {}
}

/// The kernel operations one reconcile pass needs, with the counts for logs and metrics.
#[derive(Debug, Default)]
pub struct Plan {
    /// In the order they must run (removals first, then what routes depend on, then routes).
    pub ops: Vec<BatchOp>,
    /// Added/removed/unchanged entries and peers; `failed` and `ops` are filled by the apply.
    pub stats: ReconcileStats,
    /// Changes to devices configured outside rtnetlink (the wireguard devices, over generic
    /// netlink or the control socket), by the backend's device number.
    pub devices: Vec<(usize, flannel_wireguard::DeviceUpdate)>,
}

/// The steps of one reconcile pass (see the module documentation).
///
/// Not object-safe on purpose: only [`reconcile`] calls it, monomorphised per backend.
#[allow(async_fn_in_trait)]
pub trait DataPlane {
    /// The facts about the node `desired` depends on besides the peers (device indexes,
    /// which peers are on-link...), gathered by `observe`.
    type View;
    /// The entries the kernel should hold.
    type Desired;
    /// The entries of ours the kernel holds.
    type Actual;

    /// Checks the devices (recreating or repairing them) and gathers the view.
    async fn observe(&mut self, peers: &[&Lease]) -> Result<Self::View, BackendError>;

    /// What the kernel should hold for `peers`. Pure.
    fn desired(peers: &[&Lease], view: &Self::View) -> Self::Desired;

    /// Dumps what the kernel holds of ours.
    async fn actual(&self, view: &Self::View) -> Result<Self::Actual, BackendError>;

    /// The operations that turn `actual` into `desired`. Pure.
    fn plan(desired: &Self::Desired, actual: &Self::Actual) -> Plan;

    /// Sends the plan (one batch) and records what went wrong.
    async fn apply(
        &mut self,
        desired: Self::Desired,
        plan: Plan,
    ) -> Result<ReconcileStats, BackendError>;
}

/// One reconcile pass: observe, desired, actual, plan, apply.
///
/// The actual state is dropped before the batch is sent: at 5000 peers it is a few MiB that
/// would otherwise sit on top of the encoded batch.
pub async fn reconcile<P: DataPlane>(
    plane: &mut P,
    peers: &[&Lease],
) -> Result<ReconcileStats, BackendError> {
    let view = plane.observe(peers).await?;
    let desired = P::desired(peers, &view);
    let actual = plane.actual(&view).await?;
    let plan = P::plan(&desired, &actual);
    drop((actual, view));
    plane.apply(desired, plan).await
}

/// Builds the backend named in the config, parsing its `Backend` settings.
pub fn new_backend(config: &NetConfig, env: BackendEnv) -> Result<Box<dyn Backend>, BackendError> {
    match config.backend_type.as_str() {
        "vxlan" => Ok(Box::new(vxlan::VxlanBackend::new(config, env)?)),
        "host-gw" => Ok(Box::new(hostgw::HostGwBackend::new(env)?)),
        "udp" => Ok(Box::new(udp::UdpBackend::new(config, env)?)),
        "wireguard" => Ok(Box::new(wireguard::WireguardBackend::new(config, env)?)),
        t @ ("ipip" | "ipsec" | "alloc" | "extension" | "tencent-vpc") => {
            Err(BackendError::Unsupported(t.to_string()))
        }
        other => Err(BackendError::UnknownType(other.to_string())),
    }
}

/// Sends `plan.ops` as one batch and returns the plan's stats completed with the outcome.
///
/// Deletes of entries already gone count as done (`absent`); everything else that failed is
/// logged (the first few individually) and counted in `failed`.
pub async fn apply_batch(nl: &Netlink, plan: Plan, backend: &str) -> ReconcileStats {
    let mut stats = plan.stats;
    if !plan.ops.is_empty() {
        let report = nl.apply(&plan.ops).await;
        tally(&plan.ops, &report, backend, &mut stats);
    }
    stats
}

fn tally(ops: &[BatchOp], report: &BatchReport, backend: &str, stats: &mut ReconcileStats) {
    let mut logged = 0;
    for (op, result) in ops.iter().zip(report.results.iter()) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(e) if op.is_delete() && e.is_not_found() => "absent",
            Err(e) => {
                stats.failed += 1;
                logged += 1;
                if logged <= 5 {
                    tracing::warn!("{backend}: {} failed: {e}", op.op_name());
                }
                "error"
            }
        };
        *stats.ops.entry((op.op_name(), outcome)).or_default() += 1;
    }
    if logged > 5 {
        tracing::warn!("{backend}: {} more kernel changes failed", logged - 5);
    }
}

/// Remembers which warnings were already logged, so a bad peer is reported once and not on
/// every repair tick. Bounded: a churning set of bad peers cannot grow it without limit.
#[derive(Debug, Default)]
pub struct WarnOnce(HashSet<String>);

impl WarnOnce {
    /// True the first time `text` is seen (the caller logs it then).
    pub fn first(&mut self, text: &str) -> bool {
        if self.0.len() > 10_000 {
            self.0.clear();
        }
        if self.0.contains(text) {
            return false;
        }
        self.0.insert(text.to_string())
    }
}

/// The flannel-rs keys of the userspace data paths (udp, wireguard): `Queues` (worker count,
/// 1..64, default the CPU count up to 4) and `Offload` (TSO/GSO/GRO batching, default true).
/// Go flanneld ignores both.
pub(crate) fn userspace_keys(
    obj: &flannel_types::GoObject,
) -> Result<(Option<usize>, bool), BackendError> {
    let bad = BackendError::ConfigJson;
    let queues = match obj.int("Queues").map_err(bad)? {
        None => None,
        Some(v) => Some(
            usize::try_from(v)
                .ok()
                .filter(|q| (1..=64).contains(q))
                .ok_or_else(|| {
                    BackendError::Config(format!("Backend.Queues {v} is out of range 1..64"))
                })?,
        ),
    };
    let offload = obj.bool("Offload").map_err(bad)?.unwrap_or(true);
    Ok((queues, offload))
}

/// Our own subnets, the part of the cluster network no backend touches (the `cni0` route
/// and the optional blackhole route live there).
pub(crate) fn own_subnets(own: Option<&Lease>) -> Vec<IpNet> {
    own.into_iter()
        .flat_map(|l| IpFamily::ALL.into_iter().filter_map(|f| l.subnet_of(f)))
        .collect()
}

/// The `/32` or `/128` of a subnet's network address: what a device of ours carries.
pub(crate) fn host_prefix(subnet: IpNet) -> IpNet {
    match subnet {
        IpNet::V4(n) => IpNet::V4(Ipv4Net::from(n.network())),
        IpNet::V6(n) => IpNet::V6(Ipv6Net::from(n.network())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_once_reports_each_text_once() {
        let mut w = WarnOnce::default();
        assert!(w.first("a"));
        assert!(!w.first("a"));
        assert!(w.first("b"));
    }

    #[test]
    fn host_prefix_is_the_network_address() {
        assert_eq!(
            host_prefix("10.244.3.0/24".parse().unwrap()),
            "10.244.3.0/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            host_prefix("fd00:10:0:3::/64".parse().unwrap()),
            "fd00:10:0:3::/128".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn own_subnets_cover_both_families() {
        let l = Lease {
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:0:1::/64".parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        assert_eq!(own_subnets(Some(&l)).len(), 2);
        assert!(own_subnets(None).is_empty());
    }
}
