//! The per-packet rules of upstream's udp proxy, as pure functions over byte slices.
//!
//! The wire format is the raw inner IPv4 packet as the UDP payload, so everything the proxy
//! does to a packet is done to its IPv4 header:
//! * validation ([`Ipv4Packet::parse`]): anything that is not a whole IPv4 packet is dropped
//!   (upstream only checks for 20 bytes; a short or non-IPv4 read would be misparsed there);
//! * the TTL is decremented on both sides of the tunnel, with the header checksum patched
//!   incrementally as RFC 1624 describes ([`decrement_ttl`]); a packet whose TTL reaches 0 is
//!   dropped without an ICMP error, as upstream does;
//! * a destination no peer covers is answered with an ICMP *net unreachable* written back into
//!   the TUN device ([`net_unreachable`]), with upstream's fields: type 3 code 0, TTL 8, source
//!   the TUN address, the offending IP header plus 8 bytes quoted.
//!
//! Checksums are the Internet checksum (RFC 1071), summed 64 bits at a time.
//!
//! The userspace WireGuard data path carries IPv6 too: [`IpPacket::parse`] validates either
//! family and [`pseudo_header_sum_v6`] is the IPv6 pseudo-header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// The TTL upstream gives its ICMP errors.
pub const ICMP_TTL: u8 = 8;
/// Largest ICMP net-unreachable message [`net_unreachable`] builds: IP header, ICMP header,
/// the quoted header with the most options, and 8 bytes.
pub const ICMP_UNREACHABLE_MAX: usize = IPV4_HEADER_LEN + 8 + 60 + 8;

/// Adds `data` to a running one's-complement sum (not folded, not complemented).
///
/// `data` must start at an even offset of the checksummed region; an odd trailing byte is
/// padded with zero as RFC 1071 says. Sums of consecutive even-length pieces can be added.
///
/// The bytes are summed as native-endian 32-bit words in four independent 64-bit lanes, a
/// shape the compiler turns into vector adds; a one's-complement sum does not depend on byte
/// order as long as the result is swapped once at the end (RFC 1071 section 2(B)).
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut lanes = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = [c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]];
            *lane += u64::from(u32::from_ne_bytes(w));
        }
    }
    let mut native: u64 = lanes.iter().sum();
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        native += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [b] = rest {
        native += u64::from(u16::from_ne_bytes([*b, 0]));
    }
    acc + u64::from(u16::from_be(fold(native)))
}

/// Folds a running sum to 16 bits (the one's-complement sum, not yet complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`: the complement of its folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The sum of the TCP/UDP pseudo-header (addresses, protocol, transport length).
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    u64::from(u16::from_be_bytes([src[0], src[1]]))
        + u64::from(u16::from_be_bytes([src[2], src[3]]))
        + u64::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u64::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u64::from(proto)
        + len as u64
}

/// The sum of the IPv6 TCP/UDP pseudo-header (RFC 8200 8.1: addresses, upper-layer length,
/// next header).
pub fn pseudo_header_sum_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: usize) -> u64 {
    let words = |a: [u8; 16]| -> u64 {
        a.chunks_exact(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
            .sum()
    };
    words(src) + words(dst) + u64::from(proto) + len as u64
}

/// Bytes of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// The fields of a validated IPv4 or IPv6 header that routing a packet needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket {
    /// The packet's length from its header (IPv4 total length; IPv6 40 + payload length),
    /// possibly shorter than the buffer.
    pub total_len: usize,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
}

impl IpPacket {
    /// Validates an IPv4 header as [`Ipv4Packet::parse`] does, or an IPv6 fixed header (a
    /// payload length inside the buffer; 0, the jumbogram marker, is refused).
    pub fn parse(buf: &[u8]) -> Result<IpPacket, Malformed> {
        match buf.first().map(|b| b >> 4) {
            Some(4) => Ipv4Packet::parse(buf).map(|p| IpPacket {
                total_len: p.total_len,
                src: p.src.into(),
                dst: p.dst.into(),
            }),
            Some(6) => {
                if buf.len() < IPV6_HEADER_LEN {
                    return Err(Malformed::TooShort);
                }
                let payload = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
                let total_len = IPV6_HEADER_LEN + payload;
                if payload == 0 || total_len > buf.len() {
                    return Err(Malformed::BadTotalLength);
                }
                let addr = |at: usize| -> Ipv6Addr {
                    let b: [u8; 16] = buf[at..at + 16].try_into().expect("16 bytes");
                    Ipv6Addr::from(b)
                };
                Ok(IpPacket {
                    total_len,
                    src: addr(8).into(),
                    dst: addr(24).into(),
                })
            }
            Some(_) => Err(Malformed::NotIpv4),
            None => Err(Malformed::TooShort),
        }
    }
}

/// Patches a checksum for one 16-bit word changing from `old` to `new` (RFC 1624 eqn. 3:
/// `HC' = ~(~HC + ~m + m')`), which never produces the -0 that eqn. 2 can.
pub fn incremental_update(check: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!check) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// Why a buffer is not an IPv4 packet the proxy will handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an IPv4 header.
    TooShort,
    /// The version nibble is not 4 (IPv6 reaches the TUN device too, e.g. router solicitations);
    /// for [`IpPacket::parse`], neither 4 nor 6.
    NotIpv4,
    /// The header length is below 20 bytes or beyond the buffer.
    BadHeaderLength,
    /// The total length is below the header length or beyond the buffer.
    BadTotalLength,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Malformed::TooShort => "shorter than an IPv4 header",
            Malformed::NotIpv4 => "not IPv4",
            Malformed::BadHeaderLength => "bad IPv4 header length",
            Malformed::BadTotalLength => "bad IPv4 total length",
        })
    }
}

/// The fields of a validated IPv4 header the proxy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet {
    /// Header length in bytes (20..=60).
    pub header_len: usize,
    /// The total length field: the packet's length, possibly shorter than the buffer.
    pub total_len: usize,
    /// Protocol number.
    pub proto: u8,
    /// TTL.
    pub ttl: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
}

impl Ipv4Packet {
    /// Validates the header of `buf`: version 4, a header length inside the buffer and a total
    /// length between the header length and the buffer length (a 0 total length, which only
    /// IPv4 BIG TCP uses, is refused).
    pub fn parse(buf: &[u8]) -> Result<Ipv4Packet, Malformed> {
        if buf.len() < IPV4_HEADER_LEN {
            return Err(Malformed::TooShort);
        }
        if buf[0] >> 4 != 4 {
            return Err(Malformed::NotIpv4);
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if header_len < IPV4_HEADER_LEN || header_len > buf.len() {
            return Err(Malformed::BadHeaderLength);
        }
        let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if total_len < header_len || total_len > buf.len() {
            return Err(Malformed::BadTotalLength);
        }
        Ok(Ipv4Packet {
            header_len,
            total_len,
            proto: buf[9],
            ttl: buf[8],
            src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
            dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
        })
    }

    /// True for a fragment other than the first (offset non-zero).
    pub fn is_later_fragment(buf: &[u8]) -> bool {
        u16::from_be_bytes([buf[6], buf[7]]) & 0x1fff != 0
    }
}

/// The destination address of an IPv4 header (no validation beyond the length).
pub fn destination(buf: &[u8]) -> Option<Ipv4Addr> {
    (buf.len() >= IPV4_HEADER_LEN).then(|| Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]))
}

/// Decrements the TTL of a validated IPv4 header and patches its checksum incrementally.
/// Returns false, leaving the packet unchanged, when the TTL would reach 0 (drop it).
pub fn decrement_ttl(buf: &mut [u8]) -> bool {
    let ttl = buf[8];
    if ttl <= 1 {
        return false;
    }
    let old = u16::from_be_bytes([ttl, buf[9]]);
    let new = u16::from_be_bytes([ttl - 1, buf[9]]);
    buf[8] = ttl - 1;
    let check = u16::from_be_bytes([buf[10], buf[11]]);
    buf[10..12].copy_from_slice(&incremental_update(check, old, new).to_be_bytes());
    true
}

/// Recomputes the header checksum of the IPv4 header `hdr` (exactly the header's bytes).
pub fn set_ipv4_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

/// True when the IPv4 header `hdr` (exactly the header's bytes) has a valid checksum.
pub fn ipv4_checksum_ok(hdr: &[u8]) -> bool {
    fold(sum(hdr, 0)) == 0xffff
}

/// ICMP types that are error messages (RFC 1122 3.2.2: never answer one with another error).
fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// Whether an address can be the destination of an ICMP error (RFC 1812 4.3.2.7).
fn unicast_source(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

/// Builds the ICMP *net unreachable* for `offender` (a packet read from the TUN device that no
/// peer route covers) into `out`, returning its length, or `None` when no error must be sent.
///
/// Fields as upstream's proxy writes them: IP header without options, TTL 8, protocol ICMP,
/// source `tun_ip`, destination the offender's source; ICMP type 3 code 0, then the
/// offender's IP header and the first 8 bytes of its payload (fewer if the packet is
/// shorter). Like upstream, no error is sent about later fragments or about a header with the
/// maximum options. Unlike upstream, which never answers any ICMP packet, only ICMP *errors*
/// are left unanswered, so `ping` sees "Destination Net Unreachable" as RFC 1122 intends; and
/// no error goes to a source that is not a unicast address.
pub fn net_unreachable(offender: &[u8], tun_ip: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let p = Ipv4Packet::parse(offender).ok()?;
    // Upstream rejects `ihl*4 >= 20 + MAX_IPOPTLEN`, i.e. a 60-byte header.
    if p.header_len >= 60 || Ipv4Packet::is_later_fragment(offender) {
        return None;
    }
    if p.proto == PROTO_ICMP {
        let t = *offender.get(p.header_len)?;
        if is_icmp_error(t) {
            return None;
        }
    }
    if !unicast_source(p.src) {
        return None;
    }
    let quoted = (p.header_len + 8).min(p.total_len);
    let len = IPV4_HEADER_LEN + 8 + quoted;
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = ICMP_TTL;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&tun_ip.octets());
    out[16..20].copy_from_slice(&p.src.octets());
    set_ipv4_checksum(&mut out[..IPV4_HEADER_LEN]);
    let icmp = &mut out[IPV4_HEADER_LEN..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 0; // net unreachable
    icmp[8..8 + quoted].copy_from_slice(&offender[..quoted]);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook 16-bit-at-a-time checksum, to check the fast one against.
    fn slow_checksum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let w = if pair.len() == 2 {
                u16::from_be_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], 0])
            };
            acc += u32::from(w);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn header(ttl: u8, proto: u8, id: u16, src: [u8; 4], dst: [u8; 4], len: u16) -> Vec<u8> {
        let mut h = vec![0u8; len as usize];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[6] = 0x40;
        h[8] = ttl;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        set_ipv4_checksum(&mut h[..20]);
        h
    }

    /// A small deterministic generator (no test-only dependency needed).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn fast_checksum_matches_the_textbook_one() {
        let mut rng = Lcg(7);
        for len in 0..300 {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert_eq!(checksum(&data), slow_checksum(&data), "len {len}");
        }
        // Worst case for carries.
        let ones = vec![0xffu8; 4097];
        assert_eq!(checksum(&ones), slow_checksum(&ones));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
    }

    #[test]
    fn ttl_decrement_matches_full_recomputation() {
        let mut rng = Lcg(42);
        let mut checked = 0;
        for _ in 0..20_000 {
            let ttl = (rng.next() % 255) as u8 + 1;
            let id = rng.next() as u16;
            let proto = rng.next() as u8;
            let src = (rng.next() as u32).to_be_bytes();
            let dst = (rng.next() as u32).to_be_bytes();
            let mut h = header(ttl, proto, id, src, dst, 20);
            let ok = decrement_ttl(&mut h);
            if ttl <= 1 {
                assert!(!ok);
                assert_eq!(h[8], ttl, "a dropped packet is left alone");
                continue;
            }
            assert!(ok);
            assert_eq!(h[8], ttl - 1);
            let mut full = h.clone();
            set_ipv4_checksum(&mut full);
            assert_eq!(h[10..12], full[10..12], "ttl {ttl} id {id}");
            assert!(ipv4_checksum_ok(&h));
            checked += 1;
        }
        assert!(checked > 19_000);
    }

    #[test]
    fn ttl_decrement_handles_checksum_edge_values() {
        // Headers whose checksum field is 0x0000 or 0xffff before the update: search for them.
        let mut found = [false; 2];
        for id in 0..=u16::MAX {
            let mut h = header(64, 6, id, [10, 244, 1, 2], [10, 244, 2, 3], 20);
            let c = u16::from_be_bytes([h[10], h[11]]);
            let slot = match c {
                0x0000 => 0,
                0xffff => 1,
                _ => continue,
            };
            found[slot] = true;
            assert!(decrement_ttl(&mut h));
            assert!(ipv4_checksum_ok(&h), "id {id}: checksum {c:#x}");
        }
        assert!(found[0], "no header with checksum 0 in the search space");
    }

    #[test]
    fn ttl_one_and_zero_are_dropped() {
        for ttl in [0u8, 1] {
            let mut h = header(ttl, 6, 1, [10, 0, 0, 1], [10, 0, 0, 2], 20);
            let before = h.clone();
            assert!(!decrement_ttl(&mut h));
            assert_eq!(h, before);
        }
        let mut h = header(2, 6, 1, [10, 0, 0, 1], [10, 0, 0, 2], 20);
        assert!(decrement_ttl(&mut h));
        assert_eq!(h[8], 1);
    }

    #[test]
    fn parse_rejects_what_is_not_a_whole_ipv4_packet() {
        let good = header(64, 6, 1, [10, 0, 0, 1], [10, 0, 0, 2], 40);
        let p = Ipv4Packet::parse(&good).unwrap();
        assert_eq!((p.header_len, p.total_len, p.proto, p.ttl), (20, 40, 6, 64));
        assert_eq!(p.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst, Ipv4Addr::new(10, 0, 0, 2));
        // Trailing bytes beyond the total length are tolerated (the kernel trims them).
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(Ipv4Packet::parse(&padded).unwrap().total_len, 40);

        assert_eq!(Ipv4Packet::parse(&good[..19]), Err(Malformed::TooShort));
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(Ipv4Packet::parse(&v6), Err(Malformed::NotIpv4));
        let mut ihl = good.clone();
        ihl[0] = 0x44;
        assert_eq!(Ipv4Packet::parse(&ihl), Err(Malformed::BadHeaderLength));
        ihl[0] = 0x4f; // 60 bytes of header in a 40-byte packet
        assert_eq!(Ipv4Packet::parse(&ihl), Err(Malformed::BadHeaderLength));
        assert_eq!(
            Ipv4Packet::parse(&good[..39]),
            Err(Malformed::BadTotalLength)
        );
        let mut short_total = good.clone();
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::parse(&short_total),
            Err(Malformed::BadTotalLength)
        );
    }

    fn echo_request(len: u16) -> Vec<u8> {
        let mut p = header(63, PROTO_ICMP, 7, [10, 244, 1, 5], [10, 244, 250, 1], len);
        p[20] = 8; // echo request
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn net_unreachable_has_upstreams_fields() {
        let offender = echo_request(84);
        let tun_ip = Ipv4Addr::new(10, 244, 1, 0);
        let mut out = [0u8; ICMP_UNREACHABLE_MAX];
        let n = net_unreachable(&offender, tun_ip, &mut out).expect("an error is due");
        assert_eq!(n, 20 + 8 + 20 + 8);
        let icmp = &out[..n];
        let p = Ipv4Packet::parse(icmp).unwrap();
        assert_eq!(p.total_len, n);
        assert_eq!(p.ttl, 8);
        assert_eq!(p.proto, PROTO_ICMP);
        assert_eq!(p.src, tun_ip);
        assert_eq!(p.dst, Ipv4Addr::new(10, 244, 1, 5));
        assert!(ipv4_checksum_ok(&icmp[..20]));
        assert_eq!((icmp[20], icmp[21]), (3, 0), "type 3 code 0");
        assert_eq!(&icmp[24..28], &[0, 0, 0, 0], "unused field");
        assert_eq!(&icmp[28..], &offender[..28], "header + 8 bytes quoted");
        assert_eq!(checksum(&icmp[20..]), 0, "ICMP checksum verifies");
    }

    #[test]
    fn net_unreachable_quotes_at_most_the_packet() {
        // A bare 20-byte header (no payload): only the header can be quoted.
        let offender = header(5, PROTO_TCP, 1, [10, 244, 1, 5], [10, 244, 9, 9], 20);
        let mut out = [0u8; ICMP_UNREACHABLE_MAX];
        let n = net_unreachable(&offender, Ipv4Addr::new(10, 244, 1, 0), &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 20);
        assert_eq!(checksum(&out[20..n]), 0);
        // An odd-length quote still checksums.
        let offender = header(5, PROTO_UDP, 1, [10, 244, 1, 5], [10, 244, 9, 9], 25);
        let n = net_unreachable(&offender, Ipv4Addr::new(10, 244, 1, 0), &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 25);
        assert_eq!(checksum(&out[20..n]), 0);
    }

    #[test]
    fn no_error_about_errors_fragments_or_bad_sources() {
        let tun_ip = Ipv4Addr::new(10, 244, 1, 0);
        let mut out = [0u8; ICMP_UNREACHABLE_MAX];
        let mut err = echo_request(84);
        err[20] = 3; // an ICMP error itself
        assert_eq!(net_unreachable(&err, tun_ip, &mut out), None);
        err[20] = 11;
        assert_eq!(net_unreachable(&err, tun_ip, &mut out), None);
        let mut frag = echo_request(84);
        frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(net_unreachable(&frag, tun_ip, &mut out), None);
        let mut bcast = echo_request(84);
        bcast[12..16].copy_from_slice(&[255; 4]);
        assert_eq!(net_unreachable(&bcast, tun_ip, &mut out), None);
        let mut zero = echo_request(84);
        zero[12..16].copy_from_slice(&[0; 4]);
        assert_eq!(net_unreachable(&zero, tun_ip, &mut out), None);
        assert_eq!(net_unreachable(&[0x45; 10], tun_ip, &mut out), None);
        // Upstream's limit: a 60-byte header is refused.
        let mut opts = vec![0u8; 68];
        opts[0] = 0x4f;
        opts[2..4].copy_from_slice(&68u16.to_be_bytes());
        opts[8] = 64;
        opts[9] = PROTO_TCP;
        opts[12..16].copy_from_slice(&[10, 244, 1, 5]);
        assert_eq!(net_unreachable(&opts, tun_ip, &mut out), None);
        // Too small an output buffer is not a panic.
        assert_eq!(
            net_unreachable(&echo_request(84), tun_ip, &mut [0u8; 30]),
            None
        );
    }

    #[test]
    fn ip_packet_parses_both_families() {
        let v4 = header(64, 6, 1, [10, 0, 0, 1], [10, 0, 0, 2], 40);
        let p = IpPacket::parse(&v4).unwrap();
        assert_eq!(p.total_len, 40);
        assert_eq!(p.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&20u16.to_be_bytes());
        v6[6] = PROTO_TCP;
        v6[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        let p = IpPacket::parse(&v6).unwrap();
        assert_eq!(p.total_len, 60);
        assert_eq!(p.src, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(IpPacket::parse(&v6[..59]), Err(Malformed::BadTotalLength));
        assert_eq!(IpPacket::parse(&v6[..39]), Err(Malformed::TooShort));
        v6[0] = 0x50;
        assert_eq!(IpPacket::parse(&v6), Err(Malformed::NotIpv4));
        assert_eq!(IpPacket::parse(&[]), Err(Malformed::TooShort));
    }

    #[test]
    fn pseudo_header_v6_matches_a_built_pseudo_header() {
        let src = "fd00:1::5".parse::<Ipv6Addr>().unwrap().octets();
        let dst = "fd00:2::7".parse::<Ipv6Addr>().unwrap().octets();
        let mut ph = Vec::new();
        ph.extend_from_slice(&src);
        ph.extend_from_slice(&dst);
        ph.extend_from_slice(&1480u32.to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
        assert_eq!(
            fold(pseudo_header_sum_v6(src, dst, PROTO_TCP, 1480)),
            fold(sum(&ph, 0))
        );
    }

    #[test]
    fn pseudo_header_sum_matches_a_built_pseudo_header() {
        let src = [10, 244, 1, 5];
        let dst = [10, 244, 2, 7];
        let mut ph = Vec::new();
        ph.extend_from_slice(&src);
        ph.extend_from_slice(&dst);
        ph.extend_from_slice(&[0, PROTO_TCP]);
        ph.extend_from_slice(&1480u16.to_be_bytes());
        assert_eq!(
            fold(pseudo_header_sum(src, dst, PROTO_TCP, 1480)),
            fold(sum(&ph, 0))
        );
    }
}
