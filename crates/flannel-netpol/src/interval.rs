//! Address ranges for nft interval sets.
//!
//! Peer sets mix pod IPs and ipBlocks (`cidr` minus `except`), and nft refuses interval sets
//! whose elements overlap. Everything is therefore turned into inclusive ranges on a 128-bit
//! line (IPv4 as its 32-bit value), merged so that the result is sorted, disjoint and never
//! adjacent: one canonical form, so two computations of the same set compare equal and what nft
//! reads back (it keeps elements as given) compares equal to what was written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_types::IpFamily;
use ipnet::IpNet;

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    /// First address.
    pub first: IpAddr,
    /// Last address (same family, `>= first`).
    pub last: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(family: IpFamily, v: u128) -> IpAddr {
    match family {
        // Values of an IPv4 range never exceed u32::MAX.
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl IpRange {
    /// One address.
    pub fn single(ip: IpAddr) -> IpRange {
        IpRange {
            first: ip,
            last: ip,
        }
    }

    /// Every address of a network.
    pub fn of_net(net: IpNet) -> IpRange {
        IpRange {
            first: net.network(),
            last: net.broadcast(),
        }
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.first)
    }

    /// The prefix this range is exactly, if any (`10.0.0.0-10.255.255.255` is `10.0.0.0/8`).
    pub fn as_prefix(&self) -> Option<IpNet> {
        let (a, b) = (to_u128(self.first), to_u128(self.last));
        let width = u32::from(self.family().max_prefix_len());
        let size = b.checked_sub(a)?.checked_add(1);
        // Size zero after overflow means the whole IPv6 space.
        let host_bits = match size {
            None => 128,
            Some(s) if s.is_power_of_two() => s.trailing_zeros(),
            Some(_) => return None,
        };
        if host_bits > width || (host_bits < 128 && a & ((1u128 << host_bits) - 1) != 0) {
            return None;
        }
        IpNet::new(self.first, (width - host_bits) as u8).ok()
    }
}

/// `cidr` minus every `except`, as disjoint ranges (excepts of another family are ignored).
pub fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<IpRange> {
    let family = IpFamily::of_net(&cidr);
    let holes = merge(
        except
            .iter()
            .filter(|e| IpFamily::of_net(e) == family)
            .map(|e| IpRange::of_net(*e))
            .collect(),
    );
    let (mut next, end) = (to_u128(cidr.network()), to_u128(cidr.broadcast()));
    let mut out = Vec::new();
    let mut exhausted = false;
    for hole in holes {
        let (h0, h1) = (to_u128(hole.first), to_u128(hole.last));
        if h1 < next || h0 > end {
            continue;
        }
        if h0 > next {
            out.push((next, h0 - 1));
        }
        match h1.checked_add(1) {
            Some(n) => next = n,
            None => exhausted = true,
        }
    }
    if !exhausted && next <= end {
        out.push((next, end));
    }
    out.into_iter()
        .map(|(a, b)| IpRange {
            first: from_u128(family, a),
            last: from_u128(family, b),
        })
        .collect()
}

/// Sorts and merges overlapping and adjacent ranges of one family into disjoint ones.
/// Ranges of both families may be given; each family is merged on its own.
pub fn merge(mut ranges: Vec<IpRange>) -> Vec<IpRange> {
    ranges.sort();
    let mut out: Vec<IpRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(prev) = out.last_mut()
            && prev.family() == r.family()
            && to_u128(r.first) <= to_u128(prev.last).saturating_add(1)
        {
            if r.last > prev.last {
                prev.last = r.last;
            }
            continue;
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> IpRange {
        IpRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn except_cuts_holes() {
        assert_eq!(
            subtract(
                net("10.0.0.0/8"),
                &[net("10.1.0.0/16"), net("10.255.255.0/24")]
            ),
            vec![
                r("10.0.0.0", "10.0.255.255"),
                r("10.2.0.0", "10.255.254.255")
            ]
        );
        assert_eq!(subtract(net("10.0.0.0/8"), &[net("10.0.0.0/8")]), vec![]);
        assert_eq!(
            subtract(net("10.0.0.0/8"), &[net("10.0.0.0/9"), net("10.0.0.0/16")]),
            vec![r("10.128.0.0", "10.255.255.255")],
            "overlapping excepts"
        );
        assert_eq!(
            subtract(net("0.0.0.0/0"), &[net("255.255.255.255/32")]),
            vec![r("0.0.0.0", "255.255.255.254")]
        );
        assert_eq!(subtract(net("::/0"), &[net("::/0")]), vec![]);
        assert_eq!(
            subtract(net("fd00::/64"), &[net("fd00::/65"), net("10.0.0.0/8")]),
            vec![r("fd00::8000:0:0:0", "fd00::ffff:ffff:ffff:ffff")]
        );
    }

    #[test]
    fn merge_makes_disjoint_non_adjacent_ranges() {
        assert_eq!(
            merge(vec![
                r("10.0.0.5", "10.0.0.5"),
                r("10.0.0.1", "10.0.0.3"),
                r("10.0.0.4", "10.0.0.4"),
                r("10.0.0.7", "10.0.0.9"),
                r("10.0.0.8", "10.0.0.8"),
                r("fd00::1", "fd00::1"),
                r("255.255.255.255", "255.255.255.255"),
            ]),
            vec![
                r("10.0.0.1", "10.0.0.5"),
                r("10.0.0.7", "10.0.0.9"),
                r("255.255.255.255", "255.255.255.255"),
                r("fd00::1", "fd00::1"),
            ]
        );
    }

    #[test]
    fn prefixes_are_recognised() {
        assert_eq!(
            r("10.0.0.0", "10.255.255.255").as_prefix(),
            Some(net("10.0.0.0/8"))
        );
        assert_eq!(
            r("10.0.0.1", "10.0.0.1").as_prefix(),
            Some(net("10.0.0.1/32"))
        );
        assert_eq!(r("10.0.0.1", "10.0.0.2").as_prefix(), None);
        assert_eq!(
            r("10.0.0.2", "10.0.0.3").as_prefix(),
            Some(net("10.0.0.2/31"))
        );
        assert_eq!(
            r("0.0.0.0", "255.255.255.255").as_prefix(),
            Some(net("0.0.0.0/0"))
        );
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").as_prefix(),
            Some(net("::/0"))
        );
        assert_eq!(r("fd00::", "fd00::ff").as_prefix(), Some(net("fd00::/120")));
    }
}
