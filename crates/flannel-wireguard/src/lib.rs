//! WireGuard for flannel-rs.
//!
//! The `wireguard` backend programs one device per family (`flannel-wg`, `flannel-wg-v6`) with
//! our private key, a listen port and one peer per remote node. Where the kernel has WireGuard
//! the device is the kernel's, configured over generic netlink ([`kernel`]); where it has not,
//! flanneld runs its own data path ([`userspace`]) on a TUN device of the same name. Both sit
//! behind one trait, [`WgDevice`], so the backend's reconcile (read the device, diff, apply only
//! the changes) is the same code for both, and both are inspectable with `wg show`: the
//! userspace device answers the standard control socket protocol ([`uapi`]).
//!
//! Key material never reaches a log line: [`Key`]'s `Debug` prints only a short fingerprint
//! of public keys and nothing of private ones.

pub mod device;
pub mod kernel;
pub mod key;
mod replace;
pub mod uapi;
pub mod userspace;

pub use device::{DeviceState, DeviceUpdate, PeerConfig, PeerState, PeerUpdate, WgDevice, WgError};
pub use key::{Key, KeyError, Secret};
