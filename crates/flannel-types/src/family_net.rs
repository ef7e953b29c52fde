//! One trait over the two prefix types, [`Ipv4Net`] and [`Ipv6Net`].
//!
//! Upstream's config, leases, etcd keys and subnet.env hold an IPv4 part and an IPv6 part that
//! follow the same rules (a network, a subnet length, a SubnetMin/SubnetMax range, Go's "zero
//! value means unset"). [`FamilyNet`] lets each rule be written once, generic over the family,
//! and called for [`Ipv4Net`] and [`Ipv6Net`] in turn; what differs between the families (texts,
//! key names) is picked with [`IpFamily::pick`] from [`FamilyNet::FAMILY`].
//!
//! Address arithmetic is done on `u128` "bits" (an IPv4 address is its 32-bit value), wrapping
//! at the family's width as Go's fixed-width integers do, so one computation serves both.

use std::fmt::{Debug, Display};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::family::IpFamily;
use crate::goip;

mod sealed {
    /// Keeps [`super::FamilyNet`] to the two prefix types the file formats know.
    pub trait Sealed {}
    impl Sealed for ipnet::Ipv4Net {}
    impl Sealed for ipnet::Ipv6Net {}
}

/// A prefix of one address family: [`Ipv4Net`] or [`Ipv6Net`] (sealed).
///
/// Exists so that code handling "the IPv4 part" and "the IPv6 part" of upstream's data is
/// written once; see the [module documentation](self).
pub trait FamilyNet: sealed::Sealed + Copy + Eq + Debug + Display + Into<IpNet> {
    /// The address type: [`Ipv4Addr`] or [`Ipv6Addr`].
    type Addr: Copy + Ord + Debug + Display + FromStr + Into<IpAddr>;

    /// The family, to pick family-specific texts and fields.
    const FAMILY: IpFamily;

    /// Go's zero value of the address (`0.0.0.0`, `::`), which upstream reads as "unset".
    const UNSPECIFIED: Self::Addr;

    /// The prefix `addr/prefix_len` (host bits kept), `None` when the length is too long.
    fn new(addr: Self::Addr, prefix_len: u8) -> Option<Self>;

    /// The address as written (host bits kept).
    fn addr(&self) -> Self::Addr;

    /// The prefix length.
    fn prefix_len(&self) -> u8;

    /// The network address (host bits cleared).
    fn network(&self) -> Self::Addr;

    /// The same prefix with host bits cleared.
    fn trunc(&self) -> Self;

    /// Whether `other` lies entirely inside this prefix.
    fn contains_net(&self, other: &Self) -> bool;

    /// Whether `addr` lies inside this prefix.
    fn contains_addr(&self, addr: &Self::Addr) -> bool;

    /// The prefix of this family inside `net`, `None` for the other family.
    fn from_ip_net(net: IpNet) -> Option<Self>;

    /// The address as a number (an IPv4 address in the low 32 bits).
    fn addr_bits(addr: Self::Addr) -> u128;

    /// The address made of the low [`FamilyNet::width`] bits of `bits` (higher bits dropped,
    /// which is how Go's fixed-width arithmetic wraps).
    fn addr_from_bits(bits: u128) -> Self::Addr;

    /// Parses an address as upstream's `ip.ParseIP4` / `ip.ParseIP6` do (see [`goip`]).
    fn parse_go_addr(text: &str) -> Option<Self::Addr>;

    /// Prints an address as upstream does in keys, files and messages (see
    /// [`goip::ip6_string`]).
    fn go_addr_string(addr: Self::Addr) -> String;

    /// This family's prefix out of a pair of per-family fields (`ipv4`, `ipv6`).
    fn select(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> Option<Self>;

    /// This family's address out of a pair of per-family address fields.
    fn select_addr(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Option<Self::Addr>;

    /// This family's field out of a pair of per-family address fields, for writing.
    fn select_addr_mut<'a>(
        v4: &'a mut Option<Ipv4Addr>,
        v6: &'a mut Option<Ipv6Addr>,
    ) -> &'a mut Option<Self::Addr>;

    /// Address width in bits: 32 or 128.
    fn width() -> u32 {
        u32::from(Self::FAMILY.max_prefix_len())
    }

    /// Every bit of the family's width set.
    fn all_ones() -> u128 {
        goip::shl128(1, Self::width()).wrapping_sub(1)
    }

    /// The netmask for `prefix_len` as a number (`/24` gives `0xffff_ff00`).
    fn mask_bits(prefix_len: u8) -> u128;

    /// `1 << shift` at the family's width: 0 once the shift reaches the width, as in Go.
    fn one_shl(shift: u32) -> u128;

    /// `a + b` wrapping at the family's width.
    fn wrapping_add(a: u128, b: u128) -> u128 {
        a.wrapping_add(b) & Self::all_ones()
    }

    /// `a - b` wrapping at the family's width.
    fn wrapping_sub(a: u128, b: u128) -> u128 {
        a.wrapping_sub(b) & Self::all_ones()
    }

    /// The first and last address of the prefix as numbers (host bits of the address ignored).
    fn bits_span(&self) -> (u128, u128) {
        let mask = Self::mask_bits(self.prefix_len());
        let first = Self::addr_bits(self.addr()) & mask;
        (first, first | (!mask & Self::all_ones()))
    }

    /// Whether this is Go's zero network (`0.0.0.0/0`, `::/0`), which upstream reads as "no
    /// network" in configs and "no subnet of this family" in etcd keys.
    fn is_go_zero(&self) -> bool {
        self.addr() == Self::UNSPECIFIED && self.prefix_len() == 0
    }
}

/// `$v4` or `$v6` by family, for the `select` methods (the other one is only looked at).
macro_rules! by_family {
    (V4, $v4:expr, $v6:expr) => {{
        let _ = &$v6;
        $v4
    }};
    (V6, $v4:expr, $v6:expr) => {{
        let _ = &$v4;
        $v6
    }};
}

/// The parts of a [`FamilyNet`] impl that forward to `ipnet`'s inherent methods and pick the
/// family's field out of a pair, identical for both families but for the types.
macro_rules! family_net_common {
    ($net:ident, $addr:ident, $family:ident) => {
        type Addr = $addr;
        const FAMILY: IpFamily = IpFamily::$family;
        const UNSPECIFIED: $addr = $addr::UNSPECIFIED;

        fn new(addr: $addr, prefix_len: u8) -> Option<Self> {
            $net::new(addr, prefix_len).ok()
        }
        fn addr(&self) -> $addr {
            $net::addr(self)
        }
        fn prefix_len(&self) -> u8 {
            $net::prefix_len(self)
        }
        fn network(&self) -> $addr {
            $net::network(self)
        }
        fn trunc(&self) -> Self {
            $net::trunc(self)
        }
        fn contains_net(&self, other: &Self) -> bool {
            self.contains(other)
        }
        fn contains_addr(&self, addr: &$addr) -> bool {
            self.contains(addr)
        }
        fn from_ip_net(net: IpNet) -> Option<Self> {
            match net {
                IpNet::$family(n) => Some(n),
                _ => None,
            }
        }
        fn select(v4: Option<Ipv4Net>, v6: Option<Ipv6Net>) -> Option<Self> {
            by_family!($family, v4, v6)
        }
        fn select_addr(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Option<$addr> {
            by_family!($family, v4, v6)
        }
        fn select_addr_mut<'a>(
            v4: &'a mut Option<Ipv4Addr>,
            v6: &'a mut Option<Ipv6Addr>,
        ) -> &'a mut Option<$addr> {
            by_family!($family, v4, v6)
        }
    };
}

impl FamilyNet for Ipv4Net {
    family_net_common!(Ipv4Net, Ipv4Addr, V4);

    fn addr_bits(addr: Ipv4Addr) -> u128 {
        u128::from(u32::from(addr))
    }
    fn addr_from_bits(bits: u128) -> Ipv4Addr {
        // Keeping the low 32 bits is the point: that is Go's uint32 wrap-around.
        Ipv4Addr::from(u32::try_from(bits & u128::from(u32::MAX)).unwrap_or_default())
    }
    fn mask_bits(prefix_len: u8) -> u128 {
        u128::from(goip::mask4(prefix_len))
    }
    fn one_shl(shift: u32) -> u128 {
        u128::from(goip::shl32(1, shift))
    }
    fn parse_go_addr(text: &str) -> Option<Ipv4Addr> {
        goip::parse_ip4(text)
    }
    fn go_addr_string(addr: Ipv4Addr) -> String {
        addr.to_string()
    }
}

impl FamilyNet for Ipv6Net {
    family_net_common!(Ipv6Net, Ipv6Addr, V6);

    fn addr_bits(addr: Ipv6Addr) -> u128 {
        u128::from(addr)
    }
    fn addr_from_bits(bits: u128) -> Ipv6Addr {
        Ipv6Addr::from(bits)
    }
    fn mask_bits(prefix_len: u8) -> u128 {
        goip::mask6(prefix_len)
    }
    fn one_shl(shift: u32) -> u128 {
        goip::shl128(1, shift)
    }
    fn parse_go_addr(text: &str) -> Option<Ipv6Addr> {
        goip::parse_ip6(text)
    }
    fn go_addr_string(addr: Ipv6Addr) -> String {
        goip::ip6_string(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net<N: FamilyNet + FromStr>(s: &str) -> N {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn arithmetic_wraps_at_the_family_width() {
        assert_eq!(Ipv4Net::all_ones(), u128::from(u32::MAX));
        assert_eq!(Ipv6Net::all_ones(), u128::MAX);
        assert_eq!(Ipv4Net::mask_bits(24), 0xffff_ff00);
        assert_eq!(Ipv4Net::mask_bits(0), 0);
        assert_eq!(Ipv6Net::mask_bits(64), u128::MAX << 64);
        assert_eq!(Ipv6Net::mask_bits(0), 0);
        assert_eq!(Ipv4Net::one_shl(32), 0);
        assert_eq!(Ipv6Net::one_shl(128), 0);
        assert_eq!(Ipv4Net::wrapping_add(u128::from(u32::MAX), 1), 0);
        assert_eq!(Ipv4Net::wrapping_sub(0, 1), u128::from(u32::MAX));
        assert_eq!(Ipv6Net::wrapping_add(u128::MAX, 1), 0);
        assert_eq!(
            Ipv4Net::addr_from_bits(0x1_0a00_0001),
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn spans_and_zero_values() {
        assert_eq!(
            net::<Ipv4Net>("10.0.1.7/24").bits_span(),
            (0x0a00_0100, 0x0a00_01ff)
        );
        let (first, last) = net::<Ipv6Net>("fc00::/64").bits_span();
        assert_eq!(first, u128::from("fc00::".parse::<Ipv6Addr>().unwrap()));
        assert_eq!(last - first, u128::from(u64::MAX));
        assert!(net::<Ipv4Net>("0.0.0.0/0").is_go_zero());
        assert!(!net::<Ipv4Net>("10.0.0.0/0").is_go_zero());
        assert!(net::<Ipv6Net>("::/0").is_go_zero());
        assert!(!net::<Ipv6Net>("::/64").is_go_zero());
    }

    #[test]
    fn selection_follows_the_family() {
        let (a, b) = (
            Some(net::<Ipv4Net>("10.0.0.0/8")),
            Some(net::<Ipv6Net>("fc00::/7")),
        );
        assert_eq!(Ipv4Net::select(a, b), a);
        assert_eq!(Ipv6Net::select(a, b), b);
        assert_eq!(
            Ipv4Net::from_ip_net(IpNet::V6(net::<Ipv6Net>("fc00::/7"))),
            None
        );
        assert_eq!(
            Ipv6Net::go_addr_string("::a00:1".parse().unwrap()),
            "10.0.0.1"
        );
        assert_eq!(
            Ipv4Net::parse_go_addr("::ffff:10.0.0.1"),
            Some([10, 0, 0, 1].into())
        );
        assert_eq!(Ipv4Net::FAMILY.pick("v4", "v6"), "v4");
        assert_eq!(Ipv6Net::FAMILY.pick("v4", "v6"), "v6");
    }
}
