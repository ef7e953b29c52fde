//! The device's counters: atomics the data path bumps and the backend's `/metrics` reads.
//!
//! Per-peer facts (bytes, last handshake) come from [`crate::WgDevice::get`]; these are the
//! device-wide ones, with drops split by a bounded set of reasons so a metric label never
//! grows with traffic.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No peer: no allowed IP covers the destination (outgoing), or the receiver index of an
    /// incoming message or the key of an initiation is unknown.
    NoPeer,
    /// The peer has no endpoint yet (it must reach us first).
    NoEndpoint,
    /// The decrypted packet's inner source is not in the sending peer's allowed IPs.
    NotAllowedSource,
    /// Authentication failed (AEAD tag, MAC, handshake that does not verify).
    Decrypt,
    /// A data message whose counter was already seen or is too old.
    Replay,
    /// Not a WireGuard message, or an inner packet that is not IPv4/IPv6.
    Malformed,
    /// A handshake refused while under load: answered with a cookie reply.
    UnderLoad,
    /// A data message for a session that no longer exists.
    NoSession,
    /// The kernel refused a send or a TUN write.
    Io,
    /// Anything else the protocol refused.
    Other,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 10] = [
        DropReason::NoPeer,
        DropReason::NoEndpoint,
        DropReason::NotAllowedSource,
        DropReason::Decrypt,
        DropReason::Replay,
        DropReason::Malformed,
        DropReason::UnderLoad,
        DropReason::NoSession,
        DropReason::Io,
        DropReason::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoPeer => "no_peer",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NotAllowedSource => "not_allowed_source",
            DropReason::Decrypt => "decrypt",
            DropReason::Replay => "replay",
            DropReason::Malformed => "malformed",
            DropReason::UnderLoad => "under_load",
            DropReason::NoSession => "no_session",
            DropReason::Io => "io",
            DropReason::Other => "other",
        }
    }

    fn slot(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Device-wide counters, readable at any time.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Handshakes completed (as initiator: response accepted; as responder: initiation
    /// answered).
    pub handshakes_completed: AtomicU64,
    /// Handshake messages sent or answered, completed or not (initiations sent plus
    /// initiations received): with `handshakes_completed`, how many fail.
    pub handshakes_total: AtomicU64,
    /// WireGuard bytes received (UDP payloads).
    pub rx_bytes: AtomicU64,
    /// WireGuard bytes sent.
    pub tx_bytes: AtomicU64,
    /// Inner packets written to the TUN device.
    pub rx_packets: AtomicU64,
    /// Inner packets (segments after TSO) encrypted for peers.
    pub tx_packets: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Metrics {
    /// Adds `n` to a counter.
    #[inline]
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` drops for `reason`.
    #[inline]
    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        Metrics::add(&self.drops[reason.slot()], n);
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.slot()].load(Ordering::Relaxed)
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_per_reason_with_distinct_labels() {
        let m = Metrics::default();
        m.dropped(DropReason::Replay, 2);
        m.dropped(DropReason::NotAllowedSource, 1);
        assert_eq!(m.drops(DropReason::Replay), 2);
        assert_eq!(m.drops(DropReason::NotAllowedSource), 1);
        assert_eq!(m.drops(DropReason::Decrypt), 0);
        let labels: std::collections::BTreeSet<&str> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
