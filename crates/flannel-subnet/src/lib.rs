//! Subnet managers: where this node's lease comes from and how peers' leases are watched.
//!
//! Upstream has two datastores, etcd v3 (the original) and the Kubernetes node API
//! (`--kube-subnet-mgr`). Both sit behind [`SubnetManager`], and both speak only
//! `flannel-types` leases, so backends and the reconcile engine never see etcd or Kubernetes
//! types. The daemon is generic over the manager (native `async fn` in traits is not
//! object-safe, and there are only two implementations), so there is no boxing on the hot path.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use flannel_types::{
    CheckError, ConfigError, Lease, LeaseAttrs, LeaseEvent, NetConfig, NoStackError,
};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;

pub mod etcd;
#[cfg(feature = "kube")]
pub mod kube;

/// What the daemon learns from the watch of all leases.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A change in the peer set: a full `Snapshot` after every (re)list, then `Added` /
    /// `Removed` diffs. The consumer feeds them to a `flannel_types::LeaseSet`, which filters
    /// our own lease and turns snapshots into diffs, so a manager may always re-list when in
    /// doubt (watch broken, history compacted) without the daemon losing or duplicating peers.
    Leases(LeaseEvent),
    /// Our own lease is gone from the datastore (deleted by an operator or expired during an
    /// outage). Upstream logs `Lease has been revoked. Shutting down daemon.` and exits 0 so a
    /// supervisor restarts it and a fresh lease is acquired; the daemon does the same.
    OwnLeaseRevoked,
}

/// The subnets this node held before a restart, read from the previous subnet.env, so etcd
/// mode can hand the same subnet back when our public IP changed (upstream PR #752).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousSubnets {
    /// Previous `FLANNEL_SUBNET` as a network (`10.244.3.0/24`).
    pub ipv4: Option<Ipv4Net>,
    /// Previous `FLANNEL_IPV6_SUBNET` as a network.
    pub ipv6: Option<Ipv6Net>,
}

/// Errors of the subnet managers. Texts that users search for are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    /// The network config key does not exist (etcd mode); the daemon retries every second.
    #[error("flannel config not found in etcd store. Did you create your config using etcdv3 API?")]
    ConfigNotFound,
    /// The network config exists but is not valid JSON or fails validation.
    #[error("invalid network config at {location}: {source}")]
    InvalidConfig {
        /// Where the config came from (etcd key or file path).
        location: String,
        /// Why it is invalid.
        #[source]
        source: ConfigProblem,
    },
    /// Every subnet between SubnetMin and SubnetMax is taken.
    #[error("out of subnets")]
    OutOfSubnets,
    /// Our own lease does not satisfy the current config (kube mode: podCIDR outside Network).
    #[error("{0}")]
    LeaseRejected(String),
    /// The datastore could not be reached or answered with an error.
    #[error("{operation}: {source}")]
    Datastore {
        /// What we were doing (`getting /coreos.com/network/config`).
        operation: String,
        /// What went wrong.
        #[source]
        source: DatastoreCause,
    },
    /// The operation does not exist for this manager (kube mode never renews).
    #[error("{0} is not supported by this subnet manager")]
    Unsupported(&'static str),
}

impl SubnetError {
    /// A [`SubnetError::Datastore`] for `operation`, caused by `source`.
    pub fn datastore(operation: impl Into<String>, source: impl Into<DatastoreCause>) -> Self {
        SubnetError::Datastore {
            operation: operation.into(),
            source: source.into(),
        }
    }
}

/// Why the network config was refused ([`SubnetError::InvalidConfig`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// It does not parse as upstream's `subnet.Config`.
    #[error(transparent)]
    Parse(#[from] ConfigError),
    /// It breaks a `CheckNetworkConfig` rule.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// It enables neither IPv4 nor IPv6.
    #[error(transparent)]
    NoStack(#[from] NoStackError),
}

/// What made a datastore operation fail ([`SubnetError::Datastore`]).
///
/// The client's own error where there is one, so callers can walk the chain; otherwise a
/// message saying what the datastore's answer or silence meant.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreCause {
    /// The etcd client failed.
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    /// The Kubernetes client failed.
    #[cfg(feature = "kube")]
    #[error(transparent)]
    Kube(#[from] ::kube::Error),
    /// The Kubernetes API server refused the request (401 or 403).
    #[cfg(feature = "kube")]
    #[error(transparent)]
    Refused(#[from] kube::refusal::Refusal),
    /// A local file (TLS material) could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The etcd TLS files are unusable, or a server's TLS is wrong (see
    /// [`etcd::TlsProblem`]; boxed: rustls's error would make every result large).
    #[error(transparent)]
    Tls(#[from] Box<etcd::TlsProblem>),
    /// No answer in time, or an answer that makes the operation impossible.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for DatastoreCause {
    fn from(message: String) -> Self {
        DatastoreCause::Failed(message)
    }
}

impl From<&str> for DatastoreCause {
    fn from(message: &str) -> Self {
        DatastoreCause::Failed(message.to_string())
    }
}

/// One datastore flanneld can take its lease from.
///
/// Call order, as upstream's main loop: [`network_config`](Self::network_config) (retried
/// while [`SubnetError::ConfigNotFound`]), [`stored_attrs`](Self::stored_attrs) (before the
/// backend creates its device, so the VXLAN MAC survives reboots),
/// [`acquire_lease`](Self::acquire_lease), [`watch_leases`](Self::watch_leases),
/// [`complete_lease`](Self::complete_lease) once the data plane and subnet.env are ready, and
/// [`renew_lease`](Self::renew_lease) before every expiration.
pub trait SubnetManager: Send + Sync + 'static {
    /// A human-readable name for logs (`Etcd Local Manager with Previous Subnet: 10.5.52.0/24`).
    fn name(&self) -> String;

    /// Reads and validates the network config (etcd: `<prefix>/config`; kube: net-conf.json).
    fn network_config(&self) -> impl Future<Output = Result<NetConfig, SubnetError>> + Send;

    /// Public addresses the datastore pins for this node, which replace `--public-ip` and
    /// `--public-ipv6` *before* the external interface is chosen (kube mode: the
    /// `node-public-ip` / `node-public-ipv6` annotations, upstream's `GetStoredPublicIP`).
    /// Datastores without such a notion keep the default: no override.
    fn public_ip_overrides(
        &self,
    ) -> impl Future<Output = Result<(Option<String>, Option<String>), SubnetError>> + Send {
        async { Ok((None, None)) }
    }

    /// The lease attributes the datastore still holds for this node from an earlier run
    /// (etcd: the lease whose PublicIP is ours; kube: our Node's annotations), so the backend
    /// can reuse its VtepMAC. `None` when nothing is stored.
    fn stored_attrs(
        &self,
        public_ip: Option<Ipv4Addr>,
    ) -> impl Future<Output = Result<Option<LeaseAttrs>, SubnetError>> + Send;

    /// Acquires (or re-acquires) this node's lease with the given attributes.
    fn acquire_lease(
        &self,
        config: &NetConfig,
        attrs: &LeaseAttrs,
    ) -> impl Future<Output = Result<Lease, SubnetError>> + Send;

    /// Extends the lease before it expires; returns it with the new expiration.
    fn renew_lease(&self, lease: &Lease)
    -> impl Future<Output = Result<Lease, SubnetError>> + Send;

    /// Called once the node is ready (kube: sets `NetworkUnavailable=False` unless disabled).
    fn complete_lease(&self, lease: &Lease)
    -> impl Future<Output = Result<(), SubnetError>> + Send;

    /// Starts watching every lease (peers and our own) in a background task. The task emits a
    /// full snapshot first, survives datastore outages on its own (reconnect with backoff,
    /// re-list after compaction or `410 Gone`), and ends when the receiver is dropped.
    fn watch_leases(&self, own: &Lease) -> mpsc::Receiver<WatchEvent>;
}

/// When to renew a lease: `margin` before it expires, but never in the past (a lease that is
/// already inside its margin is renewed at once).
pub fn renew_delay(
    lease: &Lease,
    margin: Duration,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let expiration = lease.expiration?;
    let renew_at = expiration.checked_sub(margin).unwrap_or(now);
    Some(renew_at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn renew_delay_is_margin_before_expiry_and_never_negative() {
        let now = SystemTime::now();
        let mut lease = Lease {
            subnet: None,
            ipv6_subnet: None,
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        assert_eq!(renew_delay(&lease, Duration::from_secs(60), now), None);
        lease.expiration = Some(now + Duration::from_secs(24 * 3600));
        assert_eq!(
            renew_delay(&lease, Duration::from_secs(3600), now),
            Some(Duration::from_secs(23 * 3600))
        );
        lease.expiration = Some(now + Duration::from_secs(10));
        assert_eq!(
            renew_delay(&lease, Duration::from_secs(3600), now),
            Some(Duration::ZERO)
        );
    }
}
