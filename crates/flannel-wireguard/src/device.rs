//! One interface for a WireGuard device, whoever implements it.
//!
//! The kernel module ([`crate::kernel`]), our userspace data path ([`crate::userspace`]) and
//! a foreign userspace implementation reached through its control socket
//! ([`crate::uapi::UapiClient`]) all look the same to the backend: [`WgDevice::get`] reads
//! the whole device (keys, port, peers with their allowed IPs, endpoints and counters) and
//! [`WgDevice::set`] applies a [`DeviceUpdate`] holding only what changes. The semantics of an
//! update are those of the kernel's `WG_CMD_SET_DEVICE` and of the control protocol's `set=1`,
//! which are the same by design of WireGuard.

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::key::{Key, Secret};

/// Why reading or configuring a device failed.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// The device does not exist (no such interface, or no control socket).
    #[error("WireGuard device {0}: not found")]
    NoDevice(String),
    /// The kernel refused a generic netlink request.
    #[error("WireGuard device {dev}: {op}: {errno}")]
    Kernel {
        /// Device name.
        dev: String,
        /// What was attempted, e.g. "set device".
        op: &'static str,
        /// The kernel's errno.
        errno: nix::errno::Errno,
    },
    /// The control socket or netlink socket failed.
    #[error("WireGuard device {dev}: {op}: {source}")]
    Io {
        /// Device name.
        dev: String,
        /// What was attempted.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The other side answered something that does not follow the protocol, or an update asks
    /// for something impossible.
    #[error("WireGuard device {dev}: {reason}")]
    Protocol {
        /// Device name.
        dev: String,
        /// What was wrong.
        reason: String,
    },
    /// The control protocol's `errno=N` answer to a request.
    #[error("WireGuard device {dev}: request refused with errno {errno}")]
    Refused {
        /// Device name.
        dev: String,
        /// The errno from the answer.
        errno: i32,
    },
}

impl WgError {
    /// An I/O failure of device `dev` while doing `op`; shorthand for the implementations.
    pub fn io(dev: &str, op: &'static str, source: std::io::Error) -> WgError {
        WgError::Io {
            dev: dev.to_string(),
            op,
            source,
        }
    }

    /// A protocol violation by the other side of device `dev`.
    pub fn protocol(dev: &str, reason: impl Into<String>) -> WgError {
        WgError::Protocol {
            dev: dev.to_string(),
            reason: reason.into(),
        }
    }
}

/// A peer as configured: what the backend wants and what `get` reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key, its identity.
    pub public_key: Key,
    /// Optional preshared key mixed into the handshake.
    pub preshared_key: Option<Secret>,
    /// Where to send; `None` until known (the peer may roam to us first).
    pub endpoint: Option<SocketAddr>,
    /// Seconds between keepalives when idle; 0 = off.
    pub persistent_keepalive: u16,
    /// Inner addresses this peer may send from and that are routed to it.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerConfig {
    /// A peer known only by its key: no preshared key, endpoint, keepalive or allowed IPs;
    /// what a device starts a new peer from before applying the named fields.
    pub fn new(public_key: Key) -> PeerConfig {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
    }
}

/// A peer as the device reports it: its configuration plus what the protocol observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// The configuration, with the endpoint the device uses now (it follows roaming).
    pub config: PeerConfig,
    /// Time of the last completed handshake, `None` if never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer (WireGuard packets, as `wg` counts them).
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

impl PeerState {
    /// A peer that never completed a handshake and exchanged nothing, as a dump shows a peer
    /// just configured.
    pub fn new(config: PeerConfig) -> PeerState {
        PeerState {
            config,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// The whole device as read by [`WgDevice::get`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// The private key, if one is set.
    pub private_key: Option<Secret>,
    /// The UDP port the device listens on (0 = not listening yet).
    pub listen_port: u16,
    /// Firewall mark of outgoing packets (0 = none).
    pub fwmark: u32,
    /// Every peer.
    pub peers: Vec<PeerState>,
}

impl DeviceState {
    /// The device's public key.
    pub fn public_key(&self) -> Option<Key> {
        self.private_key.as_ref().map(Secret::public_key)
    }
}

/// One change to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerUpdate {
    /// Add the peer, or update it in place: its handshake state and counters survive. With
    /// `replace_allowed_ips` its allowed IPs become exactly `config.allowed_ips`; otherwise
    /// they are added to the current ones.
    Upsert {
        /// The wanted configuration.
        config: PeerConfig,
        /// Replace (not extend) the allowed IPs.
        replace_allowed_ips: bool,
    },
    /// Remove the peer and its allowed IPs.
    Remove(Key),
}

/// A set of changes applied as one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceUpdate {
    /// New private key, if it changes.
    pub private_key: Option<Secret>,
    /// New listen port, if it changes.
    pub listen_port: Option<u16>,
    /// New firewall mark, if it changes.
    pub fwmark: Option<u32>,
    /// Remove every peer not named in `peers` first (a full replacement).
    pub replace_peers: bool,
    /// Peer changes, applied in order.
    pub peers: Vec<PeerUpdate>,
}

impl DeviceUpdate {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && !self.replace_peers
            && self.peers.is_empty()
    }

    /// The keys of the peers this update adds or changes: with `replace_peers`, the peers a
    /// device keeps (every other one is removed).
    pub fn upserted_keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.peers.iter().filter_map(|p| match p {
            PeerUpdate::Upsert { config, .. } => Some(config.public_key),
            PeerUpdate::Remove(_) => None,
        })
    }
}

/// A WireGuard device: the kernel's, ours, or another userspace implementation's.
///
/// Calls are blocking but short (one netlink or control-socket round trip, or a lock on our
/// own peer table), so the async backend calls them directly.
pub trait WgDevice: Send + Sync {
    /// The interface name.
    fn name(&self) -> &str;
    /// Reads the whole device.
    fn get(&self) -> Result<DeviceState, WgError>;
    /// Applies one update.
    fn set(&self, update: &DeviceUpdate) -> Result<(), WgError>;
}
