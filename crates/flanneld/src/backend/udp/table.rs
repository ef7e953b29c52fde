//! The peer table: which node's public IP serves a destination address.
//!
//! Upstream's proxy keeps a linear list with move-to-front. Here the table is immutable once
//! built: one sorted vector of networks per prefix length, longest length first, so a lookup
//! is a binary search per distinct prefix length (flannel leases all have one length, so in
//! practice one search, O(log n)). The reconcile engine builds a new table for every peer
//! change and publishes it through [`SharedTable`]; data-path threads pick it up between
//! batches with one atomic load ([`TableReader`]), so updates never stop the data path and
//! the data path never takes a lock in the steady state.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// An immutable longest-prefix-match table from subnets to peer public IPs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    /// `(prefix length, sorted (network, peer))`, longest prefix first.
    by_len: Vec<(u8, Vec<(u32, Ipv4Addr)>)>,
    len: usize,
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl PeerTable {
    /// Builds a table; for a subnet given twice the last entry wins.
    pub fn new(entries: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>) -> PeerTable {
        let mut by_len: Vec<(u8, Vec<(u32, Ipv4Addr)>)> = Vec::new();
        for (net, peer) in entries {
            let net = net.trunc();
            let l = net.prefix_len();
            let key = u32::from(net.network());
            let slot = match by_len.iter().position(|(len, _)| *len == l) {
                Some(i) => i,
                None => {
                    by_len.push((l, Vec::new()));
                    by_len.len() - 1
                }
            };
            by_len[slot].1.push((key, peer));
        }
        by_len.sort_by_key(|b| std::cmp::Reverse(b.0));
        let mut len = 0;
        for (_, v) in &mut by_len {
            // Stable sort keeps insertion order among equal keys; keep the last one.
            v.sort_by_key(|(k, _)| *k);
            let mut dedup: Vec<(u32, Ipv4Addr)> = Vec::with_capacity(v.len());
            for (k, p) in v.drain(..) {
                match dedup.last_mut() {
                    Some(last) if last.0 == k => last.1 = p,
                    _ => dedup.push((k, p)),
                }
            }
            len += dedup.len();
            *v = dedup;
        }
        PeerTable { by_len, len }
    }

    /// The peer whose subnet is the longest prefix containing `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let d = u32::from(dst);
        for (l, v) in &self.by_len {
            let key = d & mask(*l);
            if let Ok(i) = v.binary_search_by_key(&key, |(k, _)| *k) {
                return Some(v[i].1);
            }
        }
        None
    }

    /// Number of subnets.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no peer is known.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All entries, longest prefix first, for diffs and logs.
    pub fn entries(&self) -> impl Iterator<Item = (Ipv4Net, Ipv4Addr)> + '_ {
        self.by_len.iter().flat_map(|(l, v)| {
            v.iter().map(move |(k, p)| {
                (
                    Ipv4Net::new(Ipv4Addr::from(*k), *l).expect("prefix length <= 32"),
                    *p,
                )
            })
        })
    }
}

/// The current table, shared between the control plane and the data-path threads.
pub type SharedTable = flannel_packet::shared::Shared<PeerTable>;

/// One data-path thread's view of the [`SharedTable`].
pub type TableReader = flannel_packet::shared::Reader<PeerTable>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = PeerTable::new([
            (net("10.244.0.0/16"), ip("198.18.0.9")),
            (net("10.244.2.0/24"), ip("198.18.0.2")),
            (net("10.244.2.128/25"), ip("198.18.0.3")),
            (net("10.244.3.0/24"), ip("198.18.0.4")),
        ]);
        assert_eq!(t.len(), 4);
        assert_eq!(t.lookup(ip("10.244.2.5")), Some(ip("198.18.0.2")));
        assert_eq!(t.lookup(ip("10.244.2.200")), Some(ip("198.18.0.3")));
        assert_eq!(t.lookup(ip("10.244.3.255")), Some(ip("198.18.0.4")));
        assert_eq!(t.lookup(ip("10.244.77.1")), Some(ip("198.18.0.9")));
        assert_eq!(t.lookup(ip("10.245.0.1")), None);
    }

    #[test]
    fn empty_and_edges() {
        let t = PeerTable::default();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        let t = PeerTable::new([
            (net("0.0.0.0/0"), ip("198.18.0.1")),
            (net("10.0.0.7/32"), ip("198.18.0.2")),
        ]);
        assert_eq!(t.lookup(ip("10.0.0.7")), Some(ip("198.18.0.2")));
        assert_eq!(t.lookup(ip("10.0.0.8")), Some(ip("198.18.0.1")));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(ip("198.18.0.1")));
    }

    #[test]
    fn host_bits_are_ignored_and_last_duplicate_wins() {
        let t = PeerTable::new([
            (net("10.244.5.77/24"), ip("198.18.0.5")),
            (net("10.244.5.0/24"), ip("198.18.0.6")),
        ]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip("10.244.5.1")), Some(ip("198.18.0.6")));
        let e: Vec<_> = t.entries().collect();
        assert_eq!(e, vec![(net("10.244.5.0/24"), ip("198.18.0.6"))]);
    }

    #[test]
    fn many_peers_all_found() {
        let entries: Vec<(Ipv4Net, Ipv4Addr)> = (0..5000u32)
            .map(|i| {
                let n = Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap();
                (n, Ipv4Addr::from(0xc612_0000 | i))
            })
            .collect();
        let t = PeerTable::new(entries.iter().rev().copied());
        for (n, p) in &entries {
            let host = Ipv4Addr::from(u32::from(n.network()) | 0x42);
            assert_eq!(t.lookup(host), Some(*p));
        }
        assert_eq!(t.lookup(ip("10.255.255.1")), None);
    }

    #[test]
    fn readers_see_updates_without_being_rebuilt() {
        let shared = SharedTable::new();
        let mut r = shared.reader();
        assert_eq!(r.get().lookup(ip("10.244.2.1")), None);
        shared.publish(PeerTable::new([(net("10.244.2.0/24"), ip("198.18.0.2"))]));
        assert_eq!(r.get().lookup(ip("10.244.2.1")), Some(ip("198.18.0.2")));
        shared.publish(PeerTable::new([(net("10.244.2.0/24"), ip("198.18.0.7"))]));
        assert_eq!(r.get().lookup(ip("10.244.2.1")), Some(ip("198.18.0.7")));
        shared.publish(PeerTable::default());
        assert_eq!(r.get().lookup(ip("10.244.2.1")), None);
    }

    #[test]
    fn concurrent_readers_always_see_a_whole_table() {
        // Every published table maps both subnets to the same peer; a reader must never see
        // a mix of two tables. The writer keeps publishing until every reader has read many
        // times while tables changed (bounded: a starved reader fails the test after 20 s).
        use std::sync::atomic::AtomicU64;
        let shared = SharedTable::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let readers: Vec<_> = (0..2)
            .map(|n| {
                let mut r = shared.reader();
                let (stop, reads) = (stop.clone(), reads.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let t = r.get();
                        let a = t.lookup(ip("10.244.1.1"));
                        let b = t.lookup(ip("10.244.2.1"));
                        assert_eq!(a, b);
                        reads[n].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let mut published = 0u32;
        while published < 2000 || reads.iter().any(|r| r.load(Ordering::Relaxed) < 1000) {
            if started.elapsed() > std::time::Duration::from_secs(20) {
                break;
            }
            let p = Ipv4Addr::from(0xc612_0000 | (published & 0xffff));
            shared.publish(PeerTable::new([
                (net("10.244.1.0/24"), p),
                (net("10.244.2.0/24"), p),
            ]));
            published += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().expect("reader panicked");
        }
        for r in reads.iter() {
            assert!(r.load(Ordering::Relaxed) >= 1000, "a reader was starved");
        }
    }
}
