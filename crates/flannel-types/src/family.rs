//! IP address families and the stack flannel runs, shared by every crate.
//!
//! The netlink layer, the rule managers, the subnet managers and the backends all branch on
//! "IPv4 or IPv6"; one type for it means a family can be passed from a lease to a route dump to
//! a rule table without translation, and that code handling one family is written once and
//! called for each family in [`IpStack::families`].

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::gojson::RawJson;
use crate::lease::{Lease, LeaseAttrs};

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4 (`AF_INET`; `iptables`, `table ip flannel-ipv4`).
    V4,
    /// IPv6 (`AF_INET6`; `ip6tables`, `table ip6 flannel-ipv6`).
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first: the order upstream applies them in.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The family of a prefix.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    /// Maximum prefix length: 32 or 128.
    pub fn max_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// `v4` or `v6`, whichever belongs to this family: how family-generic code picks the
    /// texts, keys and fields that differ between IPv4 and IPv6 (see
    /// [`crate::FamilyNet::FAMILY`]).
    pub fn pick<T>(self, v4: T, v6: T) -> T {
        match self {
            Self::V4 => v4,
            Self::V6 => v6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// Neither IPv4 nor IPv6 is enabled (upstream `ipmatch.GetIPFamily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("none defined stack")]
pub struct NoStackError;

/// Which address families flannel runs; decides which leases, routes, rules and subnet.env
/// lines exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpStack {
    /// IPv4 only (the default).
    V4,
    /// IPv6 only.
    V6,
    /// IPv4 and IPv6.
    Dual,
}

impl IpStack {
    /// Derives the stack from `EnableIPv4` / `EnableIPv6`.
    pub fn from_flags(ipv4: bool, ipv6: bool) -> Result<Self, NoStackError> {
        match (ipv4, ipv6) {
            (true, false) => Ok(IpStack::V4),
            (false, true) => Ok(IpStack::V6),
            (true, true) => Ok(IpStack::Dual),
            (false, false) => Err(NoStackError),
        }
    }

    /// Whether IPv4 is part of the stack.
    pub fn has_ipv4(self) -> bool {
        matches!(self, IpStack::V4 | IpStack::Dual)
    }

    /// Whether IPv6 is part of the stack.
    pub fn has_ipv6(self) -> bool {
        matches!(self, IpStack::V6 | IpStack::Dual)
    }

    /// Whether `family` is part of the stack.
    pub fn has(self, family: IpFamily) -> bool {
        match family {
            IpFamily::V4 => self.has_ipv4(),
            IpFamily::V6 => self.has_ipv6(),
        }
    }

    /// The families of the stack, IPv4 first.
    pub fn families(self) -> impl Iterator<Item = IpFamily> {
        IpFamily::ALL.into_iter().filter(move |f| self.has(*f))
    }
}

/// Per-family views of a lease, so code that programs one family is written once and run for
/// each family of the stack instead of twice with `subnet`/`ipv6_subnet` spelled out.
impl Lease {
    /// The lease's subnet of `family`, if it has one.
    pub fn subnet_of(&self, family: IpFamily) -> Option<IpNet> {
        match family {
            IpFamily::V4 => self.subnet.map(IpNet::V4),
            IpFamily::V6 => self.ipv6_subnet.map(IpNet::V6),
        }
    }
}

/// Per-family views of the published attributes (see [`Lease::subnet_of`]).
impl LeaseAttrs {
    /// The public address of `family`. IPv4 always has one (Go's zero value `0.0.0.0` when
    /// absent, which peer validation refuses); IPv6 only when published.
    pub fn public_ip_of(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => Some(IpAddr::V4(self.public_ip)),
            IpFamily::V6 => self.public_ipv6.map(IpAddr::V6),
        }
    }

    /// The backend data of `family` (`BackendData` or `BackendV6Data`).
    pub fn backend_data_of(&self, family: IpFamily) -> Option<&RawJson> {
        match family {
            IpFamily::V4 => self.backend_data.as_ref(),
            IpFamily::V6 => self.backend_v6_data.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_flags() {
        assert_eq!(IpStack::from_flags(false, false), Err(NoStackError));
        let fams = |v4, v6| {
            IpStack::from_flags(v4, v6)
                .unwrap()
                .families()
                .collect::<Vec<_>>()
        };
        assert_eq!(fams(true, false), vec![IpFamily::V4]);
        assert_eq!(fams(false, true), vec![IpFamily::V6]);
        assert_eq!(fams(true, true), vec![IpFamily::V4, IpFamily::V6]);
    }

    #[test]
    fn lease_views_by_family() {
        let mut l = Lease {
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        assert_eq!(
            l.subnet_of(IpFamily::V4),
            Some("10.244.1.0/24".parse().unwrap())
        );
        assert_eq!(l.subnet_of(IpFamily::V6), None);
        assert_eq!(l.attrs.public_ip_of(IpFamily::V6), None);
        l.attrs.public_ipv6 = Some("fd00::2".parse().unwrap());
        l.attrs.backend_v6_data = Some(RawJson::parse("{}").unwrap());
        assert_eq!(
            l.attrs.public_ip_of(IpFamily::V6),
            Some("fd00::2".parse().unwrap())
        );
        assert!(l.attrs.backend_data_of(IpFamily::V4).is_none());
        assert!(l.attrs.backend_data_of(IpFamily::V6).is_some());
    }

    #[test]
    fn family_of_addresses_and_prefixes() {
        assert_eq!(IpFamily::of(&"10.0.0.1".parse().unwrap()), IpFamily::V4);
        assert_eq!(IpFamily::of(&"fd00::1".parse().unwrap()), IpFamily::V6);
        assert_eq!(
            IpFamily::of_net(&"fd00::/64".parse().unwrap()),
            IpFamily::V6
        );
        assert_eq!(IpFamily::V6.max_prefix_len(), 128);
        assert_eq!(IpFamily::V4.to_string(), "IPv4");
    }
}
