//! The data path's view of the peers: an immutable snapshot, published whole by the control
//! plane ([`super::config`]) and read lock-free by every worker
//! (`flannel_packet::shared`).
//!
//! Lookups the hot path makes: the peer of an outgoing packet's destination (cryptokey
//! routing: longest prefix over every peer's allowed IPs, IPv4 and IPv6), the peer of an
//! incoming message's receiver index (boringtun's session indices are `peer index << 8 |
//! n`), the peer of a handshake initiation's static key, and whether a decrypted packet's
//! source is one of the sending peer's allowed IPs (the same longest-prefix lookup must
//! answer that very peer).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::key::Key;

/// One peer's live protocol state.
pub(crate) struct Peer {
    /// Our index for the peer (24 bits): the high bits of every session index.
    pub index: u32,
    /// The peer's public key.
    pub key: Key,
    /// boringtun's state machine (handshake, sessions, timers, replay windows).
    pub tunn: Mutex<Tunn>,
    /// Where to send: configured, then following the source of authenticated packets.
    pub endpoint: Mutex<Option<SocketAddr>>,
    /// WireGuard bytes received from the peer.
    pub rx_bytes: AtomicU64,
    /// WireGuard bytes sent to the peer.
    pub tx_bytes: AtomicU64,
}

impl Peer {
    /// The current endpoint.
    #[inline]
    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Roaming: the endpoint becomes the source of an authenticated packet.
    #[inline]
    pub fn roam(&self, from: SocketAddr) {
        let mut e = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if *e != Some(from) {
            *e = Some(from);
        }
    }

    /// The peer's boringtun state, locked.
    #[inline]
    pub fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A longest-prefix-match table from networks of one family to peer slots: one sorted vector
/// per prefix length, longest first (flannel's allowed IPs all have one or two lengths, so a
/// lookup is one or two binary searches).
#[derive(Debug, Default)]
pub(crate) struct Lpm {
    bits: u32,
    by_len: Vec<(u32, Vec<(u128, usize)>)>,
}

impl Lpm {
    fn new(bits: u32, mut entries: Vec<(u128, u32, usize)>) -> Lpm {
        entries.sort_by_key(|e| (std::cmp::Reverse(e.1), e.0));
        let mut by_len: Vec<(u32, Vec<(u128, usize)>)> = Vec::new();
        for (key, len, slot) in entries {
            match by_len.last_mut() {
                Some((l, v)) if *l == len => {
                    if v.last().map(|e| e.0) != Some(key) {
                        v.push((key, slot));
                    }
                }
                _ => by_len.push((len, vec![(key, slot)])),
            }
        }
        Lpm { bits, by_len }
    }

    fn mask(&self, len: u32) -> u128 {
        if len == 0 {
            0
        } else {
            (u128::MAX << (self.bits - len)) & (u128::MAX >> (128 - self.bits))
        }
    }

    #[inline]
    fn lookup(&self, addr: u128) -> Option<usize> {
        for (len, v) in &self.by_len {
            let key = addr & self.mask(*len);
            if let Ok(i) = v.binary_search_by_key(&key, |e| e.0) {
                return Some(v[i].1);
            }
        }
        None
    }
}

fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Our identity as boringtun needs it.
pub(crate) struct Identity {
    /// Private key.
    pub secret: StaticSecret,
    /// Its public key.
    pub public: PublicKey,
    /// The one rate limiter of the device (cookies under load), keyed by our public key.
    pub limiter: Arc<RateLimiter>,
}

/// Everything the data path reads, immutable once published.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// Our keys; `None` until a private key is set (then nothing is sent or accepted).
    pub identity: Option<Arc<Identity>>,
    /// Every peer with a tunnel.
    pub peers: Vec<Arc<Peer>>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<[u8; 32], usize>,
    v4: Lpm,
    v6: Lpm,
}

impl Snapshot {
    /// Builds the lookups over `peers`, each with its allowed IPs.
    pub fn new(identity: Option<Arc<Identity>>, peers: Vec<(Arc<Peer>, Vec<IpNet>)>) -> Snapshot {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut by_index = HashMap::new();
        let mut by_key = HashMap::new();
        let mut list = Vec::with_capacity(peers.len());
        for (slot, (peer, nets)) in peers.into_iter().enumerate() {
            by_index.insert(peer.index, slot);
            by_key.insert(peer.key.0, slot);
            for net in nets {
                let net = net.trunc();
                let key = addr_bits(net.network());
                let len = u32::from(net.prefix_len());
                match net {
                    IpNet::V4(_) => v4.push((key, len, slot)),
                    IpNet::V6(_) => v6.push((key, len, slot)),
                }
            }
            list.push(peer);
        }
        Snapshot {
            identity,
            peers: list,
            by_index,
            by_key,
            v4: Lpm::new(32, v4),
            v6: Lpm::new(128, v6),
        }
    }

    /// Cryptokey routing: the peer whose allowed IPs hold the longest prefix of `dst`.
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        let slot = match dst {
            IpAddr::V4(_) => self.v4.lookup(addr_bits(dst)),
            IpAddr::V6(_) => self.v6.lookup(addr_bits(dst)),
        }?;
        self.peers.get(slot)
    }

    /// The peer that owns a session index (receiver index of an incoming message).
    #[inline]
    pub fn by_session(&self, receiver_index: u32) -> Option<&Arc<Peer>> {
        self.peers.get(*self.by_index.get(&(receiver_index >> 8))?)
    }

    /// The peer with that static public key.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.peers.get(*self.by_key.get(key)?)
    }

    /// Whether `peer` may send from `src`: the routing lookup of `src` names that very peer.
    #[inline]
    pub fn allows(&self, peer: &Peer, src: IpAddr) -> bool {
        self.route(src).is_some_and(|p| p.index == peer.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lpm4(entries: &[(&str, usize)]) -> Lpm {
        Lpm::new(
            32,
            entries
                .iter()
                .map(|(n, s)| {
                    let n: IpNet = n.parse().unwrap();
                    (addr_bits(n.network()), u32::from(n.prefix_len()), *s)
                })
                .collect(),
        )
    }

    fn bits(s: &str) -> u128 {
        addr_bits(s.parse().unwrap())
    }

    #[test]
    fn longest_prefix_wins_in_both_families() {
        let t = lpm4(&[
            ("10.244.0.0/16", 0),
            ("10.244.2.0/24", 1),
            ("10.244.2.128/25", 2),
            ("0.0.0.0/0", 3),
        ]);
        assert_eq!(t.lookup(bits("10.244.2.5")), Some(1));
        assert_eq!(t.lookup(bits("10.244.2.200")), Some(2));
        assert_eq!(t.lookup(bits("10.244.9.1")), Some(0));
        assert_eq!(t.lookup(bits("192.0.2.1")), Some(3));
        let n: IpNet = "fd00:10:244:2::/64".parse().unwrap();
        let m: IpNet = "fd00:10:244::/48".parse().unwrap();
        let t6 = Lpm::new(
            128,
            vec![
                (addr_bits(n.network()), 64, 7),
                (addr_bits(m.network()), 48, 8),
            ],
        );
        assert_eq!(t6.lookup(bits("fd00:10:244:2::9")), Some(7));
        assert_eq!(t6.lookup(bits("fd00:10:244:3::9")), Some(8));
        assert_eq!(t6.lookup(bits("fd00:10:245::1")), None);
        assert_eq!(Lpm::default().lookup(bits("10.0.0.1")), None);
    }
}
