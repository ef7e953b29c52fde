//! The pure part of subnet allocation (upstream `allocateSubnet`, `isSubnetConfigCompat`): which
//! subnets fit the network config, which are free, and which one to take.
//!
//! Nothing here talks to etcd, so every rule is unit-tested (and property-tested) without a
//! server. The manager feeds it the keys it listed and decides what to write.

use flannel_types::{FamilyConfig, FamilyNet, NetConfig, SubnetKey};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

/// Upstream collects at most this many free subnets and picks one of them uniformly at random,
/// so that nodes starting together rarely pick the same one while the walk stays short.
pub const MAX_CANDIDATES: usize = 100;

/// An inclusive range of block indices, where block `i` of a family with `host_bits` host bits
/// covers addresses `i << host_bits ..= ((i + 1) << host_bits) - 1`.
///
/// Working with indices instead of addresses keeps every step free of overflow, even for the
/// last IPv6 subnet.
type IndexRange = (u128, u128);

/// The address space that existing keys occupy, per family.
///
/// Every key that names a subnet counts, whatever its value, its etcd lease or whether it lies
/// inside the configured Network: a key whose subnet overlaps a candidate makes that candidate
/// unusable, because two routes for overlapping subnets would send traffic to the wrong node.
#[derive(Debug, Clone, Default)]
pub struct Occupied {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn overlaps(spans: &[(u128, u128)], (start, end): (u128, u128)) -> bool {
    spans.iter().any(|&(s, e)| s <= end && e >= start)
}

impl Occupied {
    /// An empty set: nothing is taken.
    pub fn new() -> Self {
        Self::default()
    }

    /// The taken spans of family `N`.
    fn spans<N: FamilyNet>(&self) -> &[(u128, u128)] {
        N::FAMILY.pick(&self.v4, &self.v6)
    }

    /// Marks `net` as taken (host bits, if any, are ignored).
    fn take<N: FamilyNet>(&mut self, net: Option<N>) {
        if let Some(n) = net {
            N::FAMILY
                .pick(&mut self.v4, &mut self.v6)
                .push(n.bits_span());
        }
    }

    /// Marks the subnets of `key` as taken (host bits, if any, are ignored).
    pub fn add(&mut self, key: &SubnetKey) {
        self.take(key.ipv4);
        self.take(key.ipv6);
    }

    /// Whether `net` overlaps any taken subnet of its family.
    pub fn overlaps<N: FamilyNet>(&self, net: N) -> bool {
        overlaps(self.spans::<N>(), net.bits_span())
    }

    /// Whether any subnet of `key` overlaps a taken one.
    pub fn overlaps_key(&self, key: &SubnetKey) -> bool {
        key.ipv4.is_some_and(|n| self.overlaps(n)) || key.ipv6.is_some_and(|n| self.overlaps(n))
    }
}

/// Returns up to `limit` free blocks (as block indices) from `min` to `max` inclusive, in
/// ascending order, skipping every block that overlaps one of `taken` (address spans).
///
/// `min` and `max` are block start addresses; a `max` below `min` yields nothing. The walk
/// jumps over taken ranges instead of testing each block against each lease, so a cluster with
/// thousands of leases costs a sort, not a quadratic scan.
pub fn free_blocks(
    min: u128,
    max: u128,
    host_bits: u32,
    taken: &[(u128, u128)],
    limit: usize,
) -> Vec<u128> {
    let (first, last) = (min >> host_bits, max >> host_bits);
    let mut ranges: Vec<IndexRange> = taken
        .iter()
        .map(|&(s, e)| (s >> host_bits, e >> host_bits))
        .filter(|&(s, e)| e >= first && s <= last)
        .collect();
    ranges.sort_unstable();
    let mut out = Vec::new();
    let mut i = first;
    let mut r = 0;
    while i <= last && out.len() < limit {
        while r < ranges.len() && ranges[r].1 < i {
            r += 1;
        }
        if let Some(&(s, e)) = ranges.get(r)
            && s <= i
        {
            match e.checked_add(1) {
                Some(next) => i = next,
                None => break,
            }
            continue;
        }
        out.push(i);
        match i.checked_add(1) {
            Some(next) => i = next,
            None => break,
        }
    }
    out
}

/// Up to [`MAX_CANDIDATES`] free subnets of one family between its SubnetMin and SubnetMax,
/// lowest first. Empty when the family is disabled or the config was not checked (no
/// SubnetMin/SubnetMax, no SubnetLen).
pub fn candidates<N: FamilyNet>(family: &FamilyConfig<N>, occupied: &Occupied) -> Vec<N> {
    let (Some(min), Some(max)) = (family.subnet_min, family.subnet_max) else {
        return Vec::new();
    };
    let len = family.subnet_len;
    if !family.enabled || len == 0 || u32::from(len) > N::width() {
        return Vec::new();
    }
    let host_bits = N::width() - u32::from(len);
    free_blocks(
        N::addr_bits(min),
        N::addr_bits(max),
        host_bits,
        occupied.spans::<N>(),
        MAX_CANDIDATES,
    )
    .into_iter()
    .filter_map(|i| N::new(N::addr_from_bits(i << host_bits), len))
    .collect()
}

/// Picks one element uniformly at random.
pub fn pick<T: Copy, R: Rng + ?Sized>(candidates: &[T], rng: &mut R) -> Option<T> {
    if candidates.is_empty() {
        None
    } else {
        Some(candidates[rng.random_range(0..candidates.len())])
    }
}

/// Upstream's `isSubnetConfigCompat` / `isIPv6SubnetConfigCompat`: a subnet that the dynamic
/// allocator could have handed out under `family` (between SubnetMin and SubnetMax, SubnetLen
/// long). With the family disabled only "no subnet" fits.
pub fn fits_family_range<N: FamilyNet>(family: &FamilyConfig<N>, net: Option<N>) -> bool {
    if !family.enabled {
        return net.is_none();
    }
    let (Some(net), Some(min), Some(max)) = (net, family.subnet_min, family.subnet_max) else {
        return false;
    };
    net.addr() == net.network()
        && net.addr() >= min
        && net.addr() <= max
        && net.prefix_len() == family.subnet_len
}

/// Whether an existing lease can be reused as is: both families fit the allocation range.
pub fn fits_range(config: &NetConfig, key: &SubnetKey) -> bool {
    fits_family_range::<Ipv4Net>(&config.family(), key.ipv4)
        && fits_family_range::<Ipv6Net>(&config.family(), key.ipv6)
}

/// The reservation rule of [`fits_network`] for one family.
fn fits_family_network<N: FamilyNet>(family: &FamilyConfig<N>, net: Option<N>) -> bool {
    match (family.enabled, net) {
        (false, None) => true,
        (true, Some(n)) => {
            n.addr() == n.network()
                && n.prefix_len() == family.subnet_len
                && family.network.is_some_and(|net| net.contains_net(&n))
        }
        _ => false,
    }
}

/// Whether a *reservation* can be adopted under `config`: each enabled family has a subnet
/// inside its Network with the configured length, and disabled families have none.
///
/// Reservations are placed by operators, typically outside SubnetMin..SubnetMax so that the
/// dynamic allocator never competes for them, hence the looser rule than [`fits_range`].
pub fn fits_network(config: &NetConfig, key: &SubnetKey) -> bool {
    fits_family_network::<Ipv4Net>(&config.family(), key.ipv4)
        && fits_family_network::<Ipv6Net>(&config.family(), key.ipv6)
}

/// The [`reject_peer`] rule for one family: `Ok(true)` when the peer's subnet of this family
/// is usable, `Ok(false)` when it has none (or the family is off), `Err` when it must be
/// refused.
fn peer_family<N: FamilyNet>(family: &FamilyConfig<N>, net: Option<N>) -> Result<bool, String> {
    let Some(n) = net.filter(|_| family.enabled) else {
        return Ok(false);
    };
    let (subnet, network) = N::FAMILY.pick(("subnet", "Network"), ("IPv6 subnet", "IPv6Network"));
    match family.network {
        Some(net) if net.contains_net(&n) => Ok(true),
        Some(net) => Err(format!("its {subnet} {n} is outside the {network} {net}")),
        None => Err(N::FAMILY
            .pick(
                "no IPv4 Network is configured",
                "no IPv6Network is configured",
            )
            .to_string()),
    }
}

/// Why a peer lease must not reach the daemon, or `None` if it may.
///
/// A peer's subnet becomes a route on every node, so a lease outside the cluster Network (a
/// stale lease from an old config, a typo, or a hostile writer) must not steer traffic for
/// other destinations; neither may a lease overlapping our own subnet, which would divert part
/// of our pods' traffic. Families that are disabled are not looked at, but a lease must have
/// at least one enabled family.
pub fn reject_peer(config: &NetConfig, own: Option<&SubnetKey>, key: &SubnetKey) -> Option<String> {
    let v4 = peer_family::<Ipv4Net>(&config.family(), key.ipv4);
    let v6 = peer_family::<Ipv6Net>(&config.family(), key.ipv6);
    match (v4, v6) {
        (Err(reason), _) | (_, Err(reason)) => return Some(reason),
        (Ok(false), Ok(false)) => {
            return Some("it has no subnet of an enabled address family".to_string());
        }
        _ => {}
    }
    if let Some(own) = own
        && own != key
    {
        let mut mine = Occupied::new();
        mine.add(own);
        if mine.overlaps_key(key) {
            return Some(format!("it overlaps this node's own subnet {own}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn net4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn checked(json: &str) -> NetConfig {
        let mut c = NetConfig::parse(json).unwrap();
        c.check().unwrap();
        c
    }

    fn candidates_v4(c: &NetConfig, o: &Occupied) -> Vec<Ipv4Net> {
        candidates(&c.family(), o)
    }

    fn candidates_v6(c: &NetConfig, o: &Occupied) -> Vec<Ipv6Net> {
        candidates(&c.family(), o)
    }

    fn fits_range_v4(c: &NetConfig, net: Option<Ipv4Net>) -> bool {
        fits_family_range(&c.family(), net)
    }

    fn fits_range_v6(c: &NetConfig, net: Option<Ipv6Net>) -> bool {
        fits_family_range(&c.family(), net)
    }

    fn occupied(keys: &[&str]) -> Occupied {
        let mut o = Occupied::new();
        for k in keys {
            o.add(&SubnetKey::parse(k).unwrap());
        }
        o
    }

    #[test]
    fn walk_starts_at_subnet_min_and_skips_the_first_subnet() {
        let c = checked(r#"{"Network":"10.244.0.0/16"}"#);
        let got = candidates_v4(&c, &Occupied::new());
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[0], net4("10.244.1.0/24"));
        assert_eq!(got[99], net4("10.244.100.0/24"));
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn walk_honours_min_and_max() {
        let c = checked(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.10.48.0"}"#,
        );
        let got = candidates_v4(&c, &Occupied::new());
        assert_eq!(
            got,
            vec![
                net4("10.10.0.0/20"),
                net4("10.10.16.0/20"),
                net4("10.10.32.0/20"),
                net4("10.10.48.0/20")
            ]
        );
    }

    #[test]
    fn walk_skips_overlapping_leases_of_any_size() {
        let c = checked(r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.8.0"}"#);
        // an exact lease, a /23 covering two subnets, a /26 inside one, a v6-only key.
        let o = occupied(&[
            "10.5.1.0-24",
            "10.5.2.0-23",
            "10.5.5.64-26",
            "0.0.0.0-0&fc00::-64",
            "192.168.0.0-16",
        ]);
        assert_eq!(
            candidates_v4(&c, &o),
            vec![
                net4("10.5.4.0/24"),
                net4("10.5.6.0/24"),
                net4("10.5.7.0/24"),
                net4("10.5.8.0/24")
            ]
        );
        // A lease covering the whole range leaves nothing.
        assert!(candidates_v4(&c, &occupied(&["10.5.0.0-16"])).is_empty());
    }

    #[test]
    fn walk_returns_at_most_the_first_hundred_free() {
        let c = checked(r#"{"Network":"10.0.0.0/8"}"#);
        let taken: Vec<String> = (1..=150).map(|i| format!("10.0.{i}.0-24")).collect();
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        let got = candidates_v4(&c, &occupied(&taken));
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[0], net4("10.0.151.0/24"));
        assert_eq!(got[99], net4("10.0.250.0/24"));
    }

    #[test]
    fn tiny_network_runs_out() {
        // /28 with SubnetLen 30: four subnets, the first never handed out.
        let c = checked(r#"{"Network":"10.9.0.0/28","SubnetLen":30}"#);
        let all = candidates_v4(&c, &Occupied::new());
        assert_eq!(
            all,
            vec![
                net4("10.9.0.4/30"),
                net4("10.9.0.8/30"),
                net4("10.9.0.12/30")
            ]
        );
        let full = occupied(&["10.9.0.4-30", "10.9.0.8-30", "10.9.0.12-30"]);
        assert!(candidates_v4(&c, &full).is_empty());
    }

    #[test]
    fn walk_reaches_the_top_of_the_address_space_without_overflow() {
        let c = checked(r#"{"Network":"255.255.255.0/24","SubnetLen":26}"#);
        let got = candidates_v4(&c, &Occupied::new());
        assert_eq!(got.last(), Some(&net4("255.255.255.192/26")));
        let c = checked(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ffff:ffff:ffff:ffff::/62"}"#,
        );
        let got = candidates_v6(&c, &occupied(&["0.0.0.0-0&ffff:ffff:ffff:fffe::-64"]));
        assert_eq!(
            got,
            vec![
                net6("ffff:ffff:ffff:fffd::/64"),
                net6("ffff:ffff:ffff:ffff::/64")
            ]
        );
        // A lease ending at the very last address stops the walk cleanly.
        let got = candidates_v6(&c, &occupied(&["0.0.0.0-0&ffff:ffff:ffff:fffe::-63"]));
        assert_eq!(got, vec![net6("ffff:ffff:ffff:fffd::/64")]);
    }

    #[test]
    fn v6_walk_is_independent_of_v4() {
        let c = checked(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let o = occupied(&["10.1.1.0-24&fc00:0:0:1::-64", "10.1.2.0-24&fc00:0:0:3::-64"]);
        assert_eq!(candidates_v4(&c, &o)[0], net4("10.1.3.0/24"));
        let v6 = candidates_v6(&c, &o);
        assert_eq!(v6[0], net6("fc00:0:0:2::/64"));
        assert_eq!(v6[1], net6("fc00:0:0:4::/64"));
    }

    #[test]
    fn unchecked_config_yields_nothing() {
        let c = NetConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        assert!(candidates_v4(&c, &Occupied::new()).is_empty());
        assert!(candidates_v6(&c, &Occupied::new()).is_empty());
    }

    #[test]
    fn pick_is_uniform_over_candidates() {
        let mut rng = StdRng::seed_from_u64(7);
        let xs = [1, 2, 3, 4];
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[pick(&xs, &mut rng).unwrap() - 1] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(pick::<u8, _>(&[], &mut rng), None);
    }

    #[test]
    fn range_fit_rules_match_upstream() {
        let c = checked(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0"}"#,
        );
        assert!(fits_range_v4(&c, Some(net4("10.10.0.0/20"))));
        assert!(fits_range_v4(&c, Some(net4("10.99.0.0/20"))));
        assert!(!fits_range_v4(&c, Some(net4("10.99.16.0/20"))), "above max");
        assert!(!fits_range_v4(&c, Some(net4("10.9.240.0/20"))), "below min");
        assert!(
            !fits_range_v4(&c, Some(net4("10.10.0.0/24"))),
            "wrong length"
        );
        assert!(!fits_range_v4(&c, None));
        // IPv6 disabled: only "no IPv6 subnet" fits.
        assert!(fits_range_v6(&c, None));
        assert!(!fits_range_v6(&c, Some(net6("fc00::/64"))));
        let d = checked(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        assert!(fits_range(
            &d,
            &SubnetKey::parse("10.1.4.0-24&fc00:0:0:4::-64").unwrap()
        ));
        assert!(!fits_range(&d, &SubnetKey::parse("10.1.4.0-24").unwrap()));
        assert!(!fits_range(
            &d,
            &SubnetKey::parse("10.1.4.0-24&fc00:0:1::-64").unwrap()
        ));
    }

    #[test]
    fn reservation_fit_allows_outside_min_max_but_not_outside_network() {
        let c = checked(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.100.0"}"#);
        let k = |s: &str| SubnetKey::parse(s).unwrap();
        assert!(fits_network(&c, &k("10.5.1.0-24")));
        assert!(!fits_range(&c, &k("10.5.1.0-24")));
        assert!(!fits_network(&c, &k("10.6.1.0-24")));
        assert!(!fits_network(&c, &k("10.5.1.0-25")));
        assert!(!fits_network(&c, &k("10.5.1.0-24&fc00::-64")));
    }

    #[test]
    fn peers_outside_network_or_over_our_subnet_are_rejected() {
        let c = checked(r#"{"Network":"10.5.0.0/16"}"#);
        let k = |s: &str| SubnetKey::parse(s).unwrap();
        let own = k("10.5.7.0-24");
        assert_eq!(reject_peer(&c, Some(&own), &k("10.5.8.0-24")), None);
        assert_eq!(reject_peer(&c, Some(&own), &own), None);
        assert_eq!(
            reject_peer(&c, Some(&own), &k("192.168.1.0-24")).unwrap(),
            "its subnet 192.168.1.0/24 is outside the Network 10.5.0.0/16"
        );
        assert_eq!(
            reject_peer(&c, Some(&own), &k("10.0.0.0-8")).unwrap(),
            "its subnet 10.0.0.0/8 is outside the Network 10.5.0.0/16"
        );
        assert_eq!(
            reject_peer(&c, Some(&own), &k("10.5.7.128-25")).unwrap(),
            "it overlaps this node's own subnet 10.5.7.0-24"
        );
        assert_eq!(
            reject_peer(&c, None, &k("0.0.0.0-0&fc00::-64")).unwrap(),
            "it has no subnet of an enabled address family"
        );
        // IPv6 part of a dual-stack key is not looked at in an IPv4-only cluster.
        assert_eq!(reject_peer(&c, None, &k("10.5.9.0-24&fd00::-64")), None);
    }

    fn arb_config() -> impl Strategy<Value = NetConfig> {
        // Network /12../26, SubnetLen prefix+2..=30, so that the range has 3..=2^18 subnets.
        (any::<u32>(), 12u8..=26, 2u8..=6).prop_filter_map("valid config", |(ip, p, extra)| {
            let len = (p + extra).min(30);
            let net = Ipv4Net::new(Ipv4Addr::from(ip), p).ok()?.trunc();
            let json = format!(r#"{{"Network":"{net}","SubnetLen":{len}}}"#);
            let mut c = NetConfig::parse(&json).ok()?;
            c.check().ok()?;
            Some(c)
        })
    }

    proptest! {
        #[test]
        fn candidates_are_free_aligned_in_range_and_the_lowest(
            config in arb_config(),
            picks in proptest::collection::vec((any::<u32>(), 0u8..=8), 0..40),
        ) {
            let network = config.network.unwrap();
            let len = config.subnet_len;
            // Existing leases of random sizes around the Network (some outside it).
            let mut o = Occupied::new();
            let mut leases = Vec::new();
            for (offset, shrink) in picks {
                let size = 1u64 << (32 - u32::from(network.prefix_len()));
                let addr = u32::from(network.network()).wrapping_add((u64::from(offset) % (size * 2)) as u32);
                let plen = len.saturating_sub(shrink).max(network.prefix_len().saturating_sub(1));
                let lease = Ipv4Net::new(Ipv4Addr::from(addr), plen).unwrap().trunc();
                o.add(&SubnetKey::v4(lease));
                leases.push(lease);
            }
            let got = candidates_v4(&config, &o);
            let (min, max) = (config.subnet_min.unwrap(), config.subnet_max.unwrap());
            prop_assert!(got.len() <= MAX_CANDIDATES);
            for c in &got {
                prop_assert_eq!(c.prefix_len(), len);
                prop_assert_eq!(c.addr(), c.network());
                prop_assert!(c.addr() >= min && c.addr() <= max);
                prop_assert!(network.contains(c));
                for l in &leases {
                    prop_assert!(!(l.contains(c) || c.contains(l)), "{} overlaps {}", c, l);
                }
            }
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            // Completeness: every free subnet below the last candidate was returned, and
            // if fewer than MAX_CANDIDATES came back, none is free above either.
            let step = 1u32 << (32 - u32::from(len));
            let stop = if got.len() == MAX_CANDIDATES { u32::from(got[MAX_CANDIDATES - 1].addr()) } else { u32::from(max) };
            let mut a = u32::from(min);
            let mut expected = Vec::new();
            loop {
                let n = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap();
                if !leases.iter().any(|l| l.contains(&n) || n.contains(l)) {
                    expected.push(n);
                }
                if a >= stop { break; }
                a += step;
            }
            prop_assert_eq!(got, expected);
        }
    }
}
