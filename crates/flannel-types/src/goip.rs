//! IP address parsing and printing with the exact behaviour of Go's `net` package and of
//! upstream flannel's `pkg/ip` types.
//!
//! Upstream stores IPv6 addresses as `big.Int` and prints them through a detour that turns some
//! addresses into dotted IPv4 text. Those strings end up in etcd keys, lease JSON, subnet.env and
//! error messages, so flannel-rs reproduces them here instead of relying on `Display` of
//! [`Ipv6Addr`], which differs for those addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses an address like Go's `net.ParseIP`: dotted IPv4 or textual IPv6, no zone, no
/// leading zeros in IPv4 octets.
///
/// Kept separate from `str::parse` so every Go-compatible parse goes through one place.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// Parses an IPv4 address like upstream's `ip.ParseIP4` (`net.ParseIP` followed by `To4`).
///
/// This accepts IPv4-mapped IPv6 text such as `::ffff:10.0.0.1`, because Go does; any other
/// IPv6 address is rejected.
pub fn parse_ip4(s: &str) -> Option<Ipv4Addr> {
    match parse_ip(s)? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

/// Parses an IPv6 address like upstream's `ip.ParseIP6` (`net.ParseIP` followed by `To16`).
///
/// Go accepts dotted IPv4 text here and turns it into the IPv4-mapped address
/// (`10.0.0.1` becomes `::ffff:10.0.0.1`); so do we.
pub fn parse_ip6(s: &str) -> Option<Ipv6Addr> {
    match parse_ip(s)? {
        IpAddr::V4(a) => Some(a.to_ipv6_mapped()),
        IpAddr::V6(a) => Some(a),
    }
}

/// A CIDR as Go's `net.ParseCIDR` reads it: the address as written and the prefix length.
///
/// Callers decide what to do with the family; Go's `ParseCIDR` itself is family-agnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoCidr {
    /// The address exactly as written (host bits kept).
    pub addr: IpAddr,
    /// The prefix length after the `/`.
    pub prefix: u8,
}

impl GoCidr {
    /// The network (host bits cleared), which is what Go's `ParseCIDR` returns as its `*IPNet`.
    pub fn network(&self) -> ipnet::IpNet {
        // The prefix was range-checked against the family in `parse_cidr`, so `new` cannot fail;
        // the fallback keeps this total without a panic path.
        ipnet::IpNet::new(self.addr, self.prefix)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(self.addr))
    }
}

/// Parses `addr/prefix` like Go's `net.ParseCIDR`.
///
/// Go's rules: the prefix is one or more ASCII digits (leading zeros allowed, no sign), at most
/// 32 for an address written in dotted IPv4 form and at most 128 otherwise (IPv4-mapped IPv6
/// text counts as IPv6 here, as in Go).
pub fn parse_cidr(s: &str) -> Option<GoCidr> {
    let (addr, prefix) = s.split_once('/')?;
    let addr = parse_ip(addr)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are allowed ("/024"); strip them so long zero runs cannot overflow.
    let digits = prefix.trim_start_matches('0');
    let value: u32 = if digits.is_empty() {
        0
    } else if digits.len() > 3 {
        return None;
    } else {
        digits.parse().ok()?
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if value > max {
        return None;
    }
    Some(GoCidr {
        addr,
        prefix: u8::try_from(value).ok()?,
    })
}

/// Prints an IPv6 address exactly as upstream's `ip.IP6.String()` does.
///
/// Upstream converts the `big.Int` to its minimal big-endian bytes and hands those to
/// `net.IP.String()`. Two kinds of address therefore print as dotted IPv4:
/// * values that need exactly four bytes (`::100:0` up to `::ffff:ffff`), e.g. `::a00:1` prints
///   as `10.0.0.1`;
/// * IPv4-mapped addresses, e.g. `::ffff:10.0.0.1` prints as `10.0.0.1`.
///
/// Everything else prints in RFC 5952 form, which is also what `Display` of [`Ipv6Addr`] gives.
pub fn ip6_string(addr: Ipv6Addr) -> String {
    let v = u128::from(addr);
    if ((1u128 << 24)..(1u128 << 32)).contains(&v) {
        // Lossless: the range check above bounds v below 2^32.
        return Ipv4Addr::from(u32::try_from(v).unwrap_or_default()).to_string();
    }
    if let Some(v4) = addr.to_ipv4_mapped() {
        return v4.to_string();
    }
    addr.to_string()
}

/// A [`Display`](std::fmt::Display) wrapper printing an IPv6 address via [`ip6_string`], for
/// error messages that must match upstream's `%v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoIp6(pub Ipv6Addr);

impl std::fmt::Display for GoIp6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&ip6_string(self.0))
    }
}

/// Returns `1 << shift` for a `u32`, or 0 when the shift is 32 or more, as Go's shift operator
/// does. Used wherever upstream shifts by `32 - prefix`.
pub(crate) fn shl32(value: u32, shift: u32) -> u32 {
    value.checked_shl(shift).unwrap_or(0)
}

/// Returns `value << shift` for a `u128`, or 0 when the shift is 128 or more.
pub(crate) fn shl128(value: u128, shift: u32) -> u128 {
    value.checked_shl(shift).unwrap_or(0)
}

/// The IPv4 netmask for `prefix` as a number (`/24` gives `0xffff_ff00`).
pub(crate) fn mask4(prefix: u8) -> u32 {
    shl32(u32::MAX, 32u32.saturating_sub(u32::from(prefix)))
}

/// The IPv6 netmask for `prefix` as a number.
pub(crate) fn mask6(prefix: u8) -> u128 {
    shl128(u128::MAX, 128u32.saturating_sub(u32::from(prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ip4_accepts_dotted_and_mapped_only() {
        assert_eq!(parse_ip4("10.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            parse_ip4("::ffff:10.0.0.1"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(parse_ip4("fc00::1"), None);
        assert_eq!(parse_ip4("010.0.0.1"), None);
        assert_eq!(parse_ip4("10.0.0.256"), None);
        assert_eq!(parse_ip4(""), None);
        assert_eq!(parse_ip4("fe80::1%eth0"), None);
    }

    #[test]
    fn parse_ip6_maps_ipv4_text() {
        assert_eq!(
            parse_ip6("10.0.0.1"),
            Some("::ffff:10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip6("fc00::"), Some("fc00::".parse().unwrap()));
        assert_eq!(parse_ip6("nope"), None);
    }

    #[test]
    fn parse_cidr_follows_go_rules() {
        let c = parse_cidr("10.244.3.7/16").unwrap();
        assert_eq!(c.addr, "10.244.3.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.prefix, 16);
        assert_eq!(c.network().to_string(), "10.244.0.0/16");
        assert_eq!(parse_cidr("10.0.0.0/024").unwrap().prefix, 24);
        assert_eq!(parse_cidr("10.0.0.0/0000000000008").unwrap().prefix, 8);
        assert_eq!(parse_cidr("fc00::/128").unwrap().prefix, 128);
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/-8",
            "10.0.0.0/8 ",
            " 10.0.0.0/8",
            "fc00::/129",
            "10.0.0.0/99999999999999999999",
            "x/8",
            "",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn ip6_string_reproduces_upstream_quirks() {
        let p = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(ip6_string(p("fc00::")), "fc00::");
        assert_eq!(ip6_string(p("2001:cafe:42::1")), "2001:cafe:42::1");
        assert_eq!(ip6_string(p("::")), "::");
        assert_eq!(ip6_string(p("::1")), "::1");
        assert_eq!(ip6_string(p("::ff:ffff")), "::ff:ffff");
        assert_eq!(ip6_string(p("::100:0")), "1.0.0.0");
        assert_eq!(ip6_string(p("::a00:1")), "10.0.0.1");
        assert_eq!(ip6_string(p("::ffff:10.0.0.1")), "10.0.0.1");
        assert_eq!(ip6_string(p("::1:0:0")), "::1:0:0");
        assert_eq!(ip6_string(p("1:0:0:2:0:0:3:4")), "1::2:0:0:3:4");
        assert_eq!(GoIp6(p("::a00:1")).to_string(), "10.0.0.1");
    }

    #[test]
    fn masks() {
        assert_eq!(mask4(0), 0);
        assert_eq!(mask4(24), 0xffff_ff00);
        assert_eq!(mask4(32), u32::MAX);
        assert_eq!(mask6(0), 0);
        assert_eq!(mask6(64), u128::MAX << 64);
        assert_eq!(mask6(128), u128::MAX);
        assert_eq!(shl32(1, 32), 0);
        assert_eq!(shl128(1, 128), 0);
    }
}
