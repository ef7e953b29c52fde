//! `flannel_wireguard_*`: what an operator of an encrypted cluster watches. Are handshakes
//! happening, how old is the oldest session, how much went through, and what did the data
//! path drop and why.
//!
//! Cardinality stays bounded at any cluster size: labels are the device (at most two), the
//! drop reason (a fixed set) and a handshake-age class (three values), never a peer.

use std::time::{Duration, SystemTime};

use flannel_wireguard::DeviceState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A session older than this has expired: WireGuard rekeys after 120 s of use and rejects
/// sessions after 180 s, so a peer past it is idle or unreachable.
pub const STALE_AFTER: Duration = Duration::from_secs(180);

/// Labels naming a device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// `flannel-wg` or `flannel-wg-v6`.
    pub device: String,
}

/// Labels of the drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The device.
    pub device: String,
    /// Why (the data path's fixed set of reasons).
    pub reason: String,
}

/// Labels of the peers-by-handshake-age gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgeLabels {
    /// The device.
    pub device: String,
    /// `never`, `fresh` (under 180 s) or `stale`.
    pub age: String,
}

/// The wireguard metric families.
#[derive(Debug, Default)]
pub struct WgMetrics {
    /// Peers configured, by device.
    pub peers: Family<DeviceLabel, Gauge>,
    /// Peers by the age of their last handshake.
    pub peers_by_handshake_age: Family<AgeLabels, Gauge>,
    /// Seconds since the oldest last handshake among peers that had one.
    pub oldest_handshake_age: Family<DeviceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Completed handshakes (userspace data path; the kernel does not count them).
    pub handshakes: Family<DeviceLabel, Counter>,
    /// Bytes received from peers.
    pub rx_bytes: Family<DeviceLabel, Counter>,
    /// Bytes sent to peers.
    pub tx_bytes: Family<DeviceLabel, Counter>,
    /// Packets dropped by the userspace data path, by reason.
    pub dropped: Family<DropLabels, Counter>,
}

/// Raises a counter to a cumulative total read from a device (a restarted data path starts
/// again from zero; the counter then waits until the new total passes the old one).
fn raise(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl WgMetrics {
    /// Registers every family under `flannel_wireguard_`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "peers",
            "peers configured on the device",
            self.peers.clone(),
        );
        r.register(
            "peers_by_handshake_age",
            "peers by the age of their last handshake (never, fresh: under 180 s, stale)",
            self.peers_by_handshake_age.clone(),
        );
        r.register(
            "oldest_handshake_age_seconds",
            "seconds since the oldest last handshake among peers that had one",
            self.oldest_handshake_age.clone(),
        );
        r.register(
            "handshakes",
            "completed handshakes (userspace data path)",
            self.handshakes.clone(),
        );
        r.register(
            "rx_bytes",
            "bytes received from peers",
            self.rx_bytes.clone(),
        );
        r.register("tx_bytes", "bytes sent to peers", self.tx_bytes.clone());
        r.register(
            "dropped_packets",
            "packets the userspace data path dropped, by reason",
            self.dropped.clone(),
        );
    }

    /// Records one device's state as read from it.
    pub fn record_device(&self, device: &str, state: &DeviceState, now: SystemTime) {
        let l = DeviceLabel {
            device: device.to_string(),
        };
        self.peers.get_or_create(&l).set(state.peers.len() as i64);
        let (mut never, mut fresh, mut stale) = (0, 0, 0);
        let mut oldest = Duration::ZERO;
        let (mut rx, mut tx) = (0u64, 0u64);
        for p in &state.peers {
            rx += p.rx_bytes;
            tx += p.tx_bytes;
            match p.last_handshake {
                None => never += 1,
                Some(t) => {
                    let age = now.duration_since(t).unwrap_or_default();
                    oldest = oldest.max(age);
                    if age < STALE_AFTER {
                        fresh += 1;
                    } else {
                        stale += 1;
                    }
                }
            }
        }
        for (age, n) in [("never", never), ("fresh", fresh), ("stale", stale)] {
            self.peers_by_handshake_age
                .get_or_create(&AgeLabels {
                    device: device.to_string(),
                    age: age.to_string(),
                })
                .set(n);
        }
        self.oldest_handshake_age
            .get_or_create(&l)
            .set(oldest.as_secs_f64());
        raise(&self.rx_bytes.get_or_create(&l), rx);
        raise(&self.tx_bytes.get_or_create(&l), tx);
    }

    /// Records the userspace data path's own counters.
    pub fn record_userspace(&self, device: &str, handshakes: u64, drops: &[(&str, u64)]) {
        let l = DeviceLabel {
            device: device.to_string(),
        };
        raise(&self.handshakes.get_or_create(&l), handshakes);
        for (reason, n) in drops {
            raise(
                &self.dropped.get_or_create(&DropLabels {
                    device: device.to_string(),
                    reason: (*reason).to_string(),
                }),
                *n,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_wireguard::{Key, PeerConfig, PeerState};

    fn peer(n: u8, hs: Option<SystemTime>, rx: u64) -> PeerState {
        PeerState {
            config: PeerConfig {
                public_key: Key([n; 32]),
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: 0,
                allowed_ips: vec![],
            },
            last_handshake: hs,
            rx_bytes: rx,
            tx_bytes: 1,
        }
    }

    #[test]
    fn ages_are_classed_and_counters_only_rise() {
        let m = WgMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let now = SystemTime::now();
        let st = DeviceState {
            peers: vec![
                peer(1, None, 10),
                peer(2, Some(now - Duration::from_secs(5)), 20),
                peer(3, Some(now - Duration::from_secs(400)), 30),
            ],
            ..Default::default()
        };
        m.record_device("flannel-wg", &st, now);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains(r#"peers_by_handshake_age{device="flannel-wg",age="stale"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"peers_by_handshake_age{device="flannel-wg",age="never"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"rx_bytes_total{device="flannel-wg"} 60"#),
            "{out}"
        );
        assert!(
            out.contains(r#"oldest_handshake_age_seconds{device="flannel-wg"} 400"#),
            "{out}"
        );
        // A restarted data path reports smaller totals: the counter does not go back.
        m.record_device("flannel-wg", &DeviceState::default(), now);
        m.record_userspace("flannel-wg", 3, &[("not_allowed_source", 2)]);
        m.record_userspace("flannel-wg", 1, &[("not_allowed_source", 1)]);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains(r#"rx_bytes_total{device="flannel-wg"} 60"#),
            "{out}"
        );
        assert!(
            out.contains(r#"handshakes_total{device="flannel-wg"} 3"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"dropped_packets_total{device="flannel-wg",reason="not_allowed_source"} 2"#
            ),
            "{out}"
        );
    }
}
