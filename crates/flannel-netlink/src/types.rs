//! Small domain types shared by the link, neighbour and FDB APIs.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use flannel_types::IpFamily;
use rtnetlink::packet_route::AddressFamily;

/// An Ethernet (EUI-48) address.
///
/// flannel stores VTEP MACs in leases and annotations as text (`"0e:2a:..."`, Go's
/// `net.HardwareAddr` format), so this type formats and parses that form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The all-zero address, which the kernel uses for default (catch-all) vxlan FDB entries.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Builds a MAC from a netlink attribute; `None` unless it is exactly 6 bytes (links such as
    /// `lo` have 6 zero bytes, tunnels may have none or 4/16).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// True for group (multicast/broadcast) addresses: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// True for locally administered addresses, which flannel generates for VTEPs.
    pub fn is_local(&self) -> bool {
        self.0[0] & 2 == 2
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error for a string that is not `xx:xx:xx:xx:xx:xx` (or `-`-separated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':' or '-'")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// The rtnetlink address family of an IP family (`AF_INET` / `AF_INET6`), for request headers.
pub(crate) fn address_family(family: IpFamily) -> AddressFamily {
    match family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    }
}

/// The IP family of an rtnetlink address family; `None` for anything but `AF_INET` and
/// `AF_INET6` (unfiltered dumps also report multicast and bridge entries).
pub(crate) fn ip_family(af: AddressFamily) -> Option<IpFamily> {
    match af {
        AddressFamily::Inet => Some(IpFamily::V4),
        AddressFamily::Inet6 => Some(IpFamily::V6),
        _ => None,
    }
}

/// Scope of an address or route (`scope global/link/host` in iproute2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// RT_SCOPE_UNIVERSE ("global"): routes via a gateway, normal addresses.
    Universe,
    /// RT_SCOPE_SITE.
    Site,
    /// RT_SCOPE_LINK: directly connected routes, IPv6 fe80::/10 addresses.
    Link,
    /// RT_SCOPE_HOST: loopback addresses, local routes.
    Host,
    /// RT_SCOPE_NOWHERE: used in delete requests to match any scope.
    Nowhere,
    /// Any other value.
    Other(u8),
}

impl From<u8> for Scope {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Universe,
            200 => Self::Site,
            253 => Self::Link,
            254 => Self::Host,
            255 => Self::Nowhere,
            o => Self::Other(o),
        }
    }
}

impl From<Scope> for u8 {
    fn from(s: Scope) -> u8 {
        match s {
            Scope::Universe => 0,
            Scope::Site => 200,
            Scope::Link => 253,
            Scope::Host => 254,
            Scope::Nowhere => 255,
            Scope::Other(o) => o,
        }
    }
}

/// Converts 4 or 16 raw bytes to an address: the kernel sends NDA_DST of AF_BRIDGE entries and
/// some other attributes untyped.
pub(crate) fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "0E:2a:00:01:ff:10".parse().unwrap();
        assert_eq!(m.0, [0x0e, 0x2a, 0x00, 0x01, 0xff, 0x10]);
        assert_eq!(m.to_string(), "0e:2a:00:01:ff:10");
        assert_eq!("0e-2a-00-01-ff-10".parse::<MacAddr>().unwrap(), m);
        assert!(m.is_local());
        assert!(!m.is_multicast());
    }

    #[test]
    fn mac_rejects_garbage() {
        for s in [
            "",
            "0e:2a:00:01:ff",
            "0e:2a:00:01:ff:10:11",
            "0e:2a::01:ff:10",
            "zz:2a:00:01:ff:10",
            "0e2:a:00:01:ff:10",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn address_family_round_trip() {
        for family in IpFamily::ALL {
            assert_eq!(ip_family(address_family(family)), Some(family));
        }
        assert_eq!(u8::from(address_family(IpFamily::V4)), libc::AF_INET as u8);
        assert_eq!(u8::from(address_family(IpFamily::V6)), libc::AF_INET6 as u8);
        assert_eq!(ip_family(AddressFamily::Bridge), None);
    }

    #[test]
    fn ip_bytes_by_length() {
        assert_eq!(
            ip_from_bytes(&[10, 0, 0, 1]),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            ip_from_bytes(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }
}
