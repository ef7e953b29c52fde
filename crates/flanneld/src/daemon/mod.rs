//! The node agent: a start-up phase, then one task that owns all state.
//!
//! [`start`] follows upstream's order, because other components depend on it: network config,
//! external interface, backend device, lease, masquerade/forward rules, subnet.env (written
//! atomically), then readiness (`/readyz`, `sd_notify READY=1`). Each step is a named function
//! in `start`. The result is a [`Running`] daemon whose loop ([`Running::run`]) waits for the
//! next event and hands it to one method per source:
//! * peer-lease changes: the desired peer set is updated and a reconcile is scheduled: a few
//!   milliseconds after a change that finds the daemon idle, at most once per coalescing window
//!   during a burst ([`pacing`]);
//! * deletion of a backend device (link events): reconcile at once (it recreates the device
//!   and replays every entry);
//! * the repair tick: the same reconcile, which fixes anything changed by hand; due 10 s after
//!   the last pass, later when passes are expensive (at most 0.1 % of a core, [`pacing`]);
//! * the rule resync tick: rules checked and repaired, blackhole route re-added;
//! * lease renewal (etcd mode);
//! * SIGTERM/SIGINT: exit 0 leaving device, routes and lease in place, so a restart does not
//!   disturb pod traffic.
//!
//! Every reconcile carries its [`Trigger`](crate::reconcile::Trigger). Nothing is reconciled
//! before the first full snapshot of peers has arrived: an empty peer set would otherwise wipe
//! every route of a node restarting while its datastore is slow.

mod blackhole;
mod config;
pub mod pacing;
mod running;
mod start;

use std::time::Duration;

use flannel_netlink::NetlinkError;
use flannel_rules::RulesError;
use flannel_subnet::{SubnetError, SubnetManager};
use flannel_types::NoStackError;
use tokio::sync::watch;

pub use self::config::{DaemonConfig, Datastore};
pub use self::running::Running;
pub use self::start::{start, subnet_env};
use crate::backend::BackendError;
use crate::iface::IfaceError;

/// Delay before retrying a failed lease renewal (upstream's one minute).
pub const RENEW_RETRY: Duration = Duration::from_secs(60);

/// Why the daemon stopped with a failure (exit status 1). The texts are upstream's where
/// upstream has one.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The subnet manager could not be created (bad endpoints, kubeconfig...).
    #[error("Failed to create SubnetManager: {0}")]
    Manager(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The network config is unusable.
    #[error(transparent)]
    Config(SubnetError),
    /// Neither IPv4 nor IPv6 is enabled.
    #[error(transparent)]
    NoStack(#[from] NoStackError),
    /// br_netfilter is missing and nftables mode is off.
    #[error(
        "Failed to check br_netfilter: stat {0}: no such file or directory (load the br_netfilter module, or use \"EnableNFTables\": true)"
    )]
    BrNetfilter(&'static str),
    /// No external interface could be chosen.
    #[error(transparent)]
    Iface(#[from] IfaceError),
    /// net-conf.json names a backend type we do not have.
    #[error("Error fetching backend: {0}")]
    BackendType(#[source] BackendError),
    /// The backend could not be built or started.
    #[error("Error registering network: {0}")]
    Backend(#[source] BackendError),
    /// The datastore refused us.
    #[error(transparent)]
    Subnet(SubnetError),
    /// Rules could not be installed.
    #[error("{what}: {source}")]
    Rules {
        /// Upstream's text for the step (`Failed to setup IP Masquerade`).
        what: &'static str,
        /// Why.
        #[source]
        source: RulesError,
    },
    /// A netlink socket could not be opened.
    #[error("{what}: {source}")]
    Netlink {
        /// Which socket.
        what: &'static str,
        /// Why.
        #[source]
        source: NetlinkError,
    },
    /// The health server could not listen.
    #[error(transparent)]
    Http(std::io::Error),
}

impl From<BackendError> for DaemonError {
    fn from(e: BackendError) -> DaemonError {
        match e {
            e @ (BackendError::UnknownType(_) | BackendError::Unsupported(_)) => {
                DaemonError::BackendType(e)
            }
            e => DaemonError::Backend(e),
        }
    }
}

/// How the daemon ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT.
    Signal,
    /// Our lease vanished from the datastore (upstream exits 0 too).
    LeaseRevoked,
}

/// Runs flanneld with the given subnet manager until a signal or lease revocation.
pub async fn run<M: SubnetManager>(
    config: DaemonConfig,
    manager: M,
    shutdown: watch::Receiver<bool>,
) -> Result<Exit, DaemonError> {
    match start(config, manager, shutdown).await? {
        Some(running) => running.run().await,
        None => Ok(Exit::Signal),
    }
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
