//! The control plane: the device's configuration, changed by [`crate::WgDevice::set`] with
//! the kernel's semantics, and turned into a new [`Snapshot`] for the data path after every
//! change.
//!
//! A peer keeps its [`Peer`] (and with it its sessions, endpoint and counters) across updates
//! that do not touch its handshake inputs; a new preshared key or keepalive interval, or a new
//! private key of ours, gives it a fresh boringtun state (the next packet starts a handshake).
//! Allowed IPs are exclusive, as in every WireGuard: a network given to one peer is taken from
//! any other.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use super::table::{Identity, Peer, Snapshot};
use crate::device::{DeviceState, DeviceUpdate, PeerConfig, PeerState, PeerUpdate};
use crate::key::Secret;

/// Handshake initiations accepted per second before cookies are required (boringtun's
/// device uses the same order of magnitude).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// One configured peer.
struct Entry {
    config: PeerConfig,
    peer: Option<Arc<Peer>>,
}

/// The device's configuration.
pub(crate) struct Config {
    private_key: Option<Secret>,
    identity: Option<Arc<Identity>>,
    fwmark: u32,
    peers: Vec<Entry>,
    next_index: u32,
}

impl Config {
    /// An empty device: no key, no peers.
    pub fn new() -> Config {
        Config {
            private_key: None,
            identity: None,
            fwmark: 0,
            peers: Vec::new(),
            next_index: rand::random::<u32>() & 0x00ff_ffff,
        }
    }

    /// The firewall mark for outgoing packets.
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    fn new_peer(&mut self, config: &PeerConfig, keep: Option<&Peer>) -> Option<Arc<Peer>> {
        let id = self.identity.as_ref()?;
        // Indices are 24 bits and must be unique among live peers.
        let mut index = self.next_index & 0x00ff_ffff;
        while self
            .peers
            .iter()
            .any(|e| e.peer.as_ref().is_some_and(|p| p.index == index))
        {
            index = (index + 1) & 0x00ff_ffff;
        }
        self.next_index = index.wrapping_add(1);
        let tunn = Tunn::new(
            id.secret.clone(),
            PublicKey::from(config.public_key.0),
            config.preshared_key.as_ref().map(|k| *k.bytes()),
            (config.persistent_keepalive > 0).then_some(config.persistent_keepalive),
            index,
            Some(id.limiter.clone()),
        );
        let counter =
            |c: Option<&AtomicU64>| AtomicU64::new(c.map_or(0, |c| c.load(Ordering::Relaxed)));
        Some(Arc::new(Peer {
            index,
            key: config.public_key,
            tunn: Mutex::new(tunn),
            endpoint: Mutex::new(keep.and_then(Peer::endpoint).or(config.endpoint)),
            rx_bytes: counter(keep.map(|p| &p.rx_bytes)),
            tx_bytes: counter(keep.map(|p| &p.tx_bytes)),
        }))
    }

    fn set_private_key(&mut self, key: &Secret) {
        if self.private_key.as_ref() == Some(key) {
            return;
        }
        let secret = StaticSecret::from(*key.bytes());
        let public = PublicKey::from(&secret);
        self.identity = Some(Arc::new(Identity {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
        }));
        self.private_key = Some(key.clone());
        // Every session was keyed with the old identity: start over, keeping endpoints and
        // counters. A peer with our own public key is removed, as the kernel does.
        let own = key.public_key();
        self.peers.retain(|e| e.config.public_key != own);
        for i in 0..self.peers.len() {
            let config = self.peers[i].config.clone();
            let old = self.peers[i].peer.take();
            self.peers[i].peer = self.new_peer(&config, old.as_deref());
        }
    }

    fn upsert(&mut self, config: &PeerConfig, replace_allowed_ips: bool) {
        if self.private_key.as_ref().map(Secret::public_key) == Some(config.public_key) {
            return;
        }
        // Exclusive allowed IPs: take the networks from whoever has them.
        let nets: Vec<IpNet> = config.allowed_ips.iter().map(IpNet::trunc).collect();
        for e in &mut self.peers {
            if e.config.public_key != config.public_key {
                e.config.allowed_ips.retain(|n| !nets.contains(&n.trunc()));
            }
        }
        let Some(i) = self
            .peers
            .iter()
            .position(|e| e.config.public_key == config.public_key)
        else {
            let mut config = config.clone();
            config.allowed_ips = dedup(nets);
            let peer = self.new_peer(&config, None);
            self.peers.push(Entry { config, peer });
            return;
        };
        let old = self.peers[i].config.clone();
        let mut new = old.clone();
        new.preshared_key = config.preshared_key.clone();
        new.persistent_keepalive = config.persistent_keepalive;
        if config.endpoint.is_some() {
            new.endpoint = config.endpoint;
            if let Some(p) = &self.peers[i].peer {
                *p.endpoint.lock().unwrap_or_else(|p| p.into_inner()) = config.endpoint;
            }
        }
        new.allowed_ips = if replace_allowed_ips {
            dedup(nets)
        } else {
            dedup(old.allowed_ips.iter().cloned().chain(nets).collect())
        };
        if new.preshared_key != old.preshared_key
            || new.persistent_keepalive != old.persistent_keepalive
        {
            let prev = self.peers[i].peer.take();
            self.peers[i].peer = self.new_peer(&new, prev.as_deref());
        }
        self.peers[i].config = new;
    }

    /// Applies an update; returns the snapshot to publish.
    pub fn apply(&mut self, update: &DeviceUpdate) -> Snapshot {
        if let Some(k) = &update.private_key {
            self.set_private_key(k);
        }
        if let Some(m) = update.fwmark {
            self.fwmark = m;
        }
        if update.replace_peers {
            let named: Vec<_> = update.upserted_keys().collect();
            self.peers.retain(|e| named.contains(&e.config.public_key));
        }
        for p in &update.peers {
            match p {
                PeerUpdate::Upsert {
                    config,
                    replace_allowed_ips,
                } => self.upsert(config, *replace_allowed_ips),
                PeerUpdate::Remove(key) => self.peers.retain(|e| &e.config.public_key != key),
            }
        }
        self.snapshot()
    }

    /// The data path's view of the current configuration.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.identity.clone(),
            self.peers
                .iter()
                .filter_map(|e| Some((e.peer.clone()?, e.config.allowed_ips.clone())))
                .collect(),
        )
    }

    /// The device as `get` reports it (listen port filled in by the caller).
    pub fn state(&self) -> DeviceState {
        let now = SystemTime::now();
        let peers = self
            .peers
            .iter()
            .map(|e| {
                let mut config = e.config.clone();
                let (mut last_handshake, mut rx_bytes, mut tx_bytes) = (None, 0, 0);
                if let Some(p) = &e.peer {
                    config.endpoint = p.endpoint();
                    last_handshake = p.tunn().stats().0.and_then(|age| now.checked_sub(age));
                    rx_bytes = p.rx_bytes.load(Ordering::Relaxed);
                    tx_bytes = p.tx_bytes.load(Ordering::Relaxed);
                }
                PeerState {
                    config,
                    last_handshake,
                    rx_bytes,
                    tx_bytes,
                }
            })
            .collect();
        DeviceState {
            private_key: self.private_key.clone(),
            listen_port: 0,
            fwmark: self.fwmark,
            peers,
        }
    }
}

fn dedup(nets: Vec<IpNet>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for n in nets {
        let n = n.trunc();
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn peer(key: &Key, nets: &[&str]) -> PeerUpdate {
        PeerUpdate::Upsert {
            config: PeerConfig {
                public_key: *key,
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: 0,
                allowed_ips: nets.iter().map(|n| n.parse().unwrap()).collect(),
            },
            replace_allowed_ips: true,
        }
    }

    #[test]
    fn updates_follow_the_kernel_semantics() {
        let mut c = Config::new();
        let a = Secret::generate().public_key();
        let b = Secret::generate().public_key();
        // Without a private key peers are kept but have no tunnel.
        let snap = c.apply(&DeviceUpdate {
            peers: vec![peer(&a, &["10.244.1.0/24"])],
            ..Default::default()
        });
        assert!(snap.peers.is_empty() && snap.identity.is_none());
        let me = Secret::generate();
        let snap = c.apply(&DeviceUpdate {
            private_key: Some(me.clone()),
            peers: vec![peer(&b, &["10.244.2.0/24", "10.244.1.0/24"])],
            ..Default::default()
        });
        assert_eq!(snap.peers.len(), 2);
        // 10.244.1.0/24 moved from a to b.
        let routed = snap.route("10.244.1.9".parse().unwrap()).unwrap();
        assert_eq!(routed.key, b);
        let st = c.state();
        assert!(st.peers[0].config.allowed_ips.is_empty());
        let b_index = snap.by_key(&b.0).unwrap().index;
        // Extending keeps the tunnel; replace_peers drops the others.
        let snap = c.apply(&DeviceUpdate {
            replace_peers: true,
            peers: vec![PeerUpdate::Upsert {
                config: match peer(&b, &["fd00::/64"]) {
                    PeerUpdate::Upsert { config, .. } => config,
                    PeerUpdate::Remove(_) => unreachable!(),
                },
                replace_allowed_ips: false,
            }],
            ..Default::default()
        });
        assert_eq!(snap.peers.len(), 1);
        assert_eq!(snap.peers[0].index, b_index, "same tunnel kept");
        assert!(snap.route("fd00::5".parse().unwrap()).is_some());
        assert!(snap.route("10.244.2.5".parse().unwrap()).is_some());
        assert!(snap.by_session(b_index << 8 | 3).is_some());
        // Our own key as a peer is refused.
        let snap = c.apply(&DeviceUpdate {
            peers: vec![
                peer(&me.public_key(), &["10.9.0.0/16"]),
                PeerUpdate::Remove(b),
            ],
            ..Default::default()
        });
        assert!(snap.peers.is_empty());
        assert!(c.state().peers.is_empty());
    }
}
