//! `replace_peers` as explicit removals.
//!
//! The kernel's `WGDEVICE_F_REPLACE_PEERS` and the control protocol's `replace_peers=true`
//! delete *every* peer before adding the named ones, so the named peers lose their sessions
//! and traffic to them stops until a new handshake. [`DeviceUpdate::replace_peers`] promises
//! less destruction: only peers not named are removed. Devices that forward to such an
//! implementation read the device first and send the removals explicitly instead.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::device::{DeviceState, DeviceUpdate, PeerUpdate, WgDevice, WgError};
use crate::key::Key;

/// `update` without `replace_peers`: every current peer it does not upsert is removed
/// explicitly (before the upserts, so a removed peer's allowed IPs are free for them).
pub(crate) fn explicit_removals(update: &DeviceUpdate, current: &DeviceState) -> DeviceUpdate {
    if !update.replace_peers {
        return update.clone();
    }
    let named: BTreeSet<Key> = update.upserted_keys().collect();
    let mut peers: Vec<PeerUpdate> = current
        .peers
        .iter()
        .map(|p| p.config.public_key)
        .filter(|k| !named.contains(k))
        .map(PeerUpdate::Remove)
        .collect();
    peers.extend(update.peers.iter().cloned());
    DeviceUpdate {
        replace_peers: false,
        peers,
        ..update.clone()
    }
}

/// `update` as a device that would reset named peers should receive it: unchanged without
/// `replace_peers`, else with explicit removals computed from one read of `device`.
pub(crate) fn for_device<'a>(
    update: &'a DeviceUpdate,
    device: &dyn WgDevice,
) -> Result<Cow<'a, DeviceUpdate>, WgError> {
    if !update.replace_peers {
        return Ok(Cow::Borrowed(update));
    }
    Ok(Cow::Owned(explicit_removals(update, &device.get()?)))
}
