//! Segmentation and coalescing: how the proxy moves 64 KiB per system call while every UDP
//! datagram on the wire still carries exactly one complete inner IPv4 packet.
//!
//! With `IFF_VNET_HDR` and TSO enabled on the TUN device, the kernel hands the proxy TCP
//! super-packets of up to 64 KiB, each preceded by a `virtio_net_hdr` saying how to cut it
//! (`gso_size`) and that the transport checksum is still partial. On the way out,
//! [`prepare_tx`] writes one IP+TCP header per segment (lengths, IP ID, sequence number, flags
//! and both checksums fixed up as the kernel's own TSO would) into a small side buffer; the I/O
//! layer sends `header, payload slice, header, payload slice, ...` as one `sendmsg` with
//! `UDP_SEGMENT` set to the segment size, so the kernel cuts the UDP payload exactly at inner
//! packet boundaries. The payload itself is never copied in user space.
//!
//! On the way in, `UDP_GRO` hands the proxy runs of equal-sized datagrams. [`Coalescer`]
//! merges consecutive in-order segments of one TCP flow (the rules of the kernel's own TCP
//! GRO: same addresses, ports, ACK, window, options, TOS, TTL; no SYN/FIN/RST/URG/CWR; PSH only
//! on the last; every segment but the last full-sized; checksums verified first), so the TUN
//! device receives one super-packet with a `virtio_net_hdr` asking for segmentation, exactly
//! what a NIC with GRO would have produced. Everything else is written unchanged, one packet
//! per write.

use std::ops::Range;

use crate::codec::{
    self, IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_TCP, PROTO_UDP, fold, ipv4_checksum_ok,
    pseudo_header_sum, pseudo_header_sum_v6, set_ipv4_checksum, sum,
};

/// Size of `struct virtio_net_hdr` (the TUN default `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial (CHECKSUM_PARTIAL).
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the GSO type.
pub const GSO_ECN: u8 = 0x80;

/// Most segments one super-packet may carry on either side (the kernel's UDP GSO limit and
/// GRO's usual batch).
pub const MAX_SEGMENTS: usize = 64;
/// Largest IPv4 packet (the total-length field is 16 bits).
pub const MAX_IPV4_PACKET: usize = 65535;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr` in host byte order (what the TUN driver uses for legacy headers on
/// a little-endian host, and the only layout a `TUNSETVNETLE`-less device speaks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*`, possibly or-ed with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers to replicate (advisory; recomputed here).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the transport header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header from the first 10 bytes of `b`.
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The 10 header bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet from the TUN device could not be prepared for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// A GSO type other than TCP (of the packet's family) and UDP.
    UnsupportedGso(u8),
    /// The virtio header's offsets do not fit the packet.
    BadOffsets,
    /// The transport header is impossible (TCP data offset, lengths).
    BadTransportHeader,
    /// More segments than UDP GSO accepts.
    TooManySegments,
}

impl std::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffloadError::UnsupportedGso(t) => write!(f, "unsupported GSO type {t}"),
            OffloadError::BadOffsets => f.write_str("virtio header offsets outside the packet"),
            OffloadError::BadTransportHeader => f.write_str("bad transport header"),
            OffloadError::TooManySegments => f.write_str("too many segments"),
        }
    }
}

/// What to send for one packet read from the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPlan {
    /// Send the packet as it is now (checksum completed if it was partial).
    Single,
    /// Send `count` segments: segment `i` is `headers[i*hdr_len..][..hdr_len]` followed by
    /// `packet[hdr_len + i*mss..]`, at most `mss` bytes of it.
    Segmented {
        /// Bytes of IP + transport header per segment.
        hdr_len: usize,
        /// Payload bytes per segment (the last may have fewer).
        mss: usize,
        /// Number of segments.
        count: usize,
    },
}

impl TxPlan {
    /// The byte ranges of segment `i`'s header (in the headers buffer) and payload (in the
    /// packet).
    pub fn segment(&self, i: usize, payload_len: usize) -> (Range<usize>, Range<usize>) {
        match *self {
            TxPlan::Single => (0..0, 0..0),
            TxPlan::Segmented { hdr_len, mss, .. } => {
                let start = hdr_len + i * mss;
                let end = hdr_len + ((i + 1) * mss).min(payload_len);
                (i * hdr_len..(i + 1) * hdr_len, start..end)
            }
        }
    }
}

/// Completes a partial checksum in place (`F_NEEDS_CSUM` without GSO); `proto` is the
/// transport protocol (UDP's computed 0 goes out as all ones).
fn complete_checksum(
    pkt: &mut [u8],
    start: usize,
    offset: usize,
    proto: u8,
) -> Result<(), OffloadError> {
    let at = start.checked_add(offset).ok_or(OffloadError::BadOffsets)?;
    if at + 2 > pkt.len() || start >= pkt.len() {
        return Err(OffloadError::BadOffsets);
    }
    let mut c = !fold(sum(&pkt[start..], 0));
    // UDP sends 0 as "no checksum": a computed 0 goes out as all ones.
    if offset == 6 && proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The network-layer facts [`prepare_tx`] needs: header length, packet length, transport
/// protocol, and whether it is IPv6 (fixed header only: the kernel's TSO6 hands over packets
/// whose transport header follows the fixed header, `csum_start` = 40).
fn network_header(pkt: &[u8]) -> Result<(usize, usize, u8, bool), OffloadError> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= IPV4_HEADER_LEN => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            Ok((ihl, total, pkt[9], false))
        }
        Some(6) if pkt.len() >= IPV6_HEADER_LEN => {
            let total = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            Ok((IPV6_HEADER_LEN, total, pkt[6], true))
        }
        _ => Err(OffloadError::BadOffsets),
    }
}

/// Prepares one packet read from the TUN device (after its `virtio_net_hdr`, whose decoded
/// form is `hdr`) for the wire.
///
/// `pkt` must be a validated IPv4 or IPv6 packet whose TTL the caller already handled. A
/// partial checksum is completed in place; a GSO super-packet gets its per-segment headers
/// written to `headers` (cleared first), with the IPv4 total length, ID (+1 per segment) and
/// header checksum (IPv6: the payload length), TCP sequence number (+mss per segment), FIN/PSH
/// only on the last segment, CWR only on the first, and a full TCP or UDP checksum per
/// segment.
pub fn prepare_tx(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    headers: &mut Vec<u8>,
) -> Result<TxPlan, OffloadError> {
    let gso = hdr.gso_type & !GSO_ECN;
    let (ihl, total, proto, v6) = network_header(pkt)?;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(pkt, hdr.csum_start.into(), hdr.csum_offset.into(), proto)?;
        }
        return Ok(TxPlan::Single);
    }
    let pkt = pkt.get_mut(..total).ok_or(OffloadError::BadOffsets)?;
    if usize::from(hdr.csum_start) != ihl {
        return Err(OffloadError::BadOffsets);
    }
    let l4_len = match (gso, v6) {
        (GSO_TCPV4, false) | (GSO_TCPV6, true) => {
            if proto != PROTO_TCP || hdr.csum_offset != 16 || pkt.len() < ihl + 20 {
                return Err(OffloadError::BadTransportHeader);
            }
            let doff = usize::from(pkt[ihl + 12] >> 4) * 4;
            if !(20..=60).contains(&doff) {
                return Err(OffloadError::BadTransportHeader);
            }
            doff
        }
        (GSO_UDP_L4, _) => {
            if proto != PROTO_UDP || hdr.csum_offset != 6 {
                return Err(OffloadError::BadTransportHeader);
            }
            8
        }
        (other, _) => return Err(OffloadError::UnsupportedGso(other)),
    };
    let hdr_len = ihl + l4_len;
    if hdr_len > pkt.len() {
        return Err(OffloadError::BadTransportHeader);
    }
    let mss = usize::from(hdr.gso_size);
    let payload_len = pkt.len() - hdr_len;
    if mss == 0 || payload_len <= mss {
        // Nothing to cut: finish the checksum and send it whole.
        complete_checksum(pkt, ihl, usize::from(hdr.csum_offset), proto)?;
        return Ok(TxPlan::Single);
    }
    let count = payload_len.div_ceil(mss);
    if count > 4 * MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments);
    }
    let (template, payload) = pkt.split_at(hdr_len);
    headers.clear();
    headers.resize(count * hdr_len, 0);
    let seg = Segmenter {
        template,
        ihl,
        l4_len,
        proto,
        v6,
        mss,
    };
    for (i, h) in headers.chunks_exact_mut(hdr_len).enumerate() {
        let chunk = &payload[i * mss..((i + 1) * mss).min(payload_len)];
        seg.write_header(h, i, count, chunk);
    }
    Ok(TxPlan::Segmented {
        hdr_len,
        mss,
        count,
    })
}

/// What writing one segment's header needs from the super-packet.
struct Segmenter<'a> {
    template: &'a [u8],
    ihl: usize,
    l4_len: usize,
    proto: u8,
    v6: bool,
    mss: usize,
}

impl Segmenter<'_> {
    /// Writes segment `i` of `count`'s header (carrying `chunk`) into `h`.
    fn write_header(&self, h: &mut [u8], i: usize, count: usize, chunk: &[u8]) {
        let (ihl, l4_len, proto) = (self.ihl, self.l4_len, self.proto);
        h.copy_from_slice(self.template);
        let l4_total = l4_len + chunk.len();
        let pseudo = if self.v6 {
            h[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            let src: [u8; 16] = h[8..24].try_into().expect("16 bytes");
            let dst: [u8; 16] = h[24..40].try_into().expect("16 bytes");
            pseudo_header_sum_v6(src, dst, proto, l4_total)
        } else {
            let id0 = u16::from_be_bytes([h[4], h[5]]);
            h[2..4].copy_from_slice(&((ihl + l4_total) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            set_ipv4_checksum(&mut h[..ihl]);
            let src: [u8; 4] = h[12..16].try_into().expect("4 bytes");
            let dst: [u8; 4] = h[16..20].try_into().expect("4 bytes");
            pseudo_header_sum(src, dst, proto, l4_total)
        };
        let l4 = &mut h[ihl..];
        if proto == PROTO_TCP {
            let seq0 = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            let seq = seq0.wrapping_add((i * self.mss) as u32);
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = l4[13];
            if i + 1 < count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            l4[13] = flags;
            l4[16] = 0;
            l4[17] = 0;
        } else {
            l4[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            l4[6] = 0;
            l4[7] = 0;
        }
        let acc = sum(chunk, sum(l4, pseudo));
        let mut c = !fold(acc);
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// The facts about a TCP segment that decide whether it can join a coalesced group.
#[derive(Debug, Clone, Copy)]
struct TcpSeg {
    doff: usize,
    seq: u32,
    payload: usize,
    psh: bool,
}

/// Largest IPv4 + TCP header the coalescer rewrites (20 + 60).
pub const MAX_HDR: usize = IPV4_HEADER_LEN + 60;

/// A run of packets to write to the TUN device with one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// Id of the first packet (ids are the caller's, given to [`Coalescer::push`]).
    pub first: usize,
    /// Number of packets; ids `first..first + count`.
    pub count: usize,
    /// For a merged group (`count > 1`): the first packet's IP+TCP header rewritten for the
    /// whole group, `hdr[..hdr_len]`. The writer sends it, then the payload (bytes from
    /// `hdr_len` on) of every packet. For a single packet `hdr_len` is 0 and the packet is
    /// written unchanged.
    pub hdr: [u8; MAX_HDR],
    /// Bytes of `hdr` in use, 0 for a single packet.
    pub hdr_len: usize,
    /// The virtio header to write in front.
    pub vnet: VnetHdr,
}

impl Group {
    fn single(id: usize) -> Group {
        Group {
            first: id,
            count: 1,
            hdr: [0; MAX_HDR],
            hdr_len: 0,
            vnet: VnetHdr::default(),
        }
    }
}

/// Groups received packets for the TUN device, merging consecutive TCP segments of one flow.
///
/// Packets are pushed one by one with increasing ids; closed groups collect in
/// [`Coalescer::groups`] in packet order (a packet that cannot join the open group closes it
/// first, so order on the device is arrival order). The open group may outlive one receive
/// call: the I/O layer keeps it while more datagrams are immediately available, which lets the
/// two UDP GSO messages a 64 KiB super-packet needs on the wire become one write again. Only
/// header bytes are kept here; packet bytes stay in the caller's buffers.
#[derive(Debug, Default)]
pub struct Coalescer {
    open: Option<Open>,
    groups: Vec<Group>,
    /// Packets come out of an authenticated decryption: their TCP checksum is not verified
    /// again (see [`Coalescer::authenticated`]).
    authenticated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    first: usize,
    count: usize,
    head: TcpSeg,
    hdr: [u8; MAX_HDR],
    next_seq: u32,
    total: usize,
    short_seen: bool,
    psh: bool,
}

/// Returns the segment facts when `p` (a whole packet: IPv4 header without options, TCP) may
/// be merged at all: ACK set, no SYN/FIN/RST/URG/CWR, a payload, a first fragment without
/// MF, and valid IP and TCP checksums (the TCP checksum only when `verify_tcp`).
fn mergeable(p: &[u8], verify_tcp: bool) -> Option<TcpSeg> {
    if p.len() < IPV4_HEADER_LEN + 20 || p[0] != 0x45 || p[9] != PROTO_TCP {
        return None;
    }
    // MF set or an offset: a fragment.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let t = &p[IPV4_HEADER_LEN..];
    let doff = usize::from(t[12] >> 4) * 4;
    if !(20..=60).contains(&doff) || doff > t.len() {
        return None;
    }
    let flags = t[13];
    if flags & TCP_ACK == 0 || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 {
        return None;
    }
    let payload = t.len() - doff;
    if payload == 0 {
        return None;
    }
    if !ipv4_checksum_ok(&p[..IPV4_HEADER_LEN]) {
        return None;
    }
    let src: [u8; 4] = p[12..16].try_into().ok()?;
    let dst: [u8; 4] = p[16..20].try_into().ok()?;
    if verify_tcp && fold(sum(t, pseudo_header_sum(src, dst, PROTO_TCP, t.len()))) != 0xffff {
        return None;
    }
    Some(TcpSeg {
        doff,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        payload,
        psh: flags & TCP_PSH != 0,
    })
}

/// Whether packet `b` continues the group whose head header is `a` (compared byte-wise).
fn same_flow(a: &[u8], b: &[u8], doff: usize) -> bool {
    let (ta, tb) = (&a[IPV4_HEADER_LEN..], &b[IPV4_HEADER_LEN..]);
    a[1] == b[1]                       // TOS (and ECN)
        && a[6] == b[6]                // DF
        && a[8] == b[8]                // TTL
        && a[12..20] == b[12..20]      // addresses
        && ta[0..4] == tb[0..4]        // ports
        && ta[8..12] == tb[8..12]      // ACK number
        && ta[12] == tb[12]            // data offset
        && (ta[13] & !TCP_PSH) == (tb[13] & !TCP_PSH)
        && ta[14..16] == tb[14..16]    // window
        && ta[20..doff] == tb[20..doff] // options (timestamps included)
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    /// A coalescer for packets that an AEAD tag has just authenticated (WireGuard): a merged
    /// group's checksum is left to the kernel as partial, so a segment's TCP checksum is not
    /// verified before merging. The bytes are exactly what the peer sealed, and the kernel's
    /// own WireGuard marks decrypted packets `CHECKSUM_UNNECESSARY` for the same reason; this
    /// saves a pass over every received byte. The IPv4 header checksum is still checked.
    pub fn authenticated() -> Coalescer {
        Coalescer {
            authenticated: true,
            ..Coalescer::default()
        }
    }

    /// Feeds the packet with id `id` (one more than the previous id while a group is open):
    /// a validated IPv4 packet whose length is its total length.
    pub fn push(&mut self, id: usize, p: &[u8]) {
        let Some(seg) = mergeable(p, !self.authenticated) else {
            self.finish();
            self.groups.push(Group::single(id));
            return;
        };
        if let Some(o) = &mut self.open {
            let fits = !o.psh
                && !o.short_seen
                && o.first + o.count == id
                && o.count < MAX_SEGMENTS
                && seg.doff == o.head.doff
                && seg.seq == o.next_seq
                && seg.payload <= o.head.payload
                && o.total + seg.payload <= MAX_IPV4_PACKET
                && same_flow(&o.hdr, p, seg.doff);
            if fits {
                o.next_seq = o.next_seq.wrapping_add(seg.payload as u32);
                o.total += seg.payload;
                o.count += 1;
                o.short_seen = seg.payload < o.head.payload;
                o.psh = seg.psh;
                return;
            }
            self.finish();
        }
        let hdr_len = IPV4_HEADER_LEN + seg.doff;
        let mut hdr = [0u8; MAX_HDR];
        hdr[..hdr_len].copy_from_slice(&p[..hdr_len]);
        self.open = Some(Open {
            first: id,
            count: 1,
            head: seg,
            hdr,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            total: p.len(),
            short_seen: false,
            psh: seg.psh,
        });
    }

    /// The first packet id of the open group, if one is open.
    pub fn open_first(&self) -> Option<usize> {
        self.open.map(|o| o.first)
    }

    /// Shifts the open group's packet ids down by `by` (the caller renumbered its packets).
    pub fn rebase(&mut self, by: usize) {
        if let Some(o) = &mut self.open {
            o.first -= by;
        }
    }

    /// The groups closed so far, oldest first; the caller writes them and then clears them.
    pub fn groups(&mut self) -> &mut Vec<Group> {
        &mut self.groups
    }

    /// Closes the open group. A single packet stays unchanged; a merged group gets the head's
    /// IP length and checksum, PSH if its last segment had it, and the pseudo-header sum in
    /// the TCP checksum field (CHECKSUM_PARTIAL, as the kernel's GRO leaves it).
    pub fn finish(&mut self) {
        let Some(o) = self.open.take() else { return };
        if o.count == 1 {
            self.groups.push(Group::single(o.first));
            return;
        }
        let hdr_len = IPV4_HEADER_LEN + o.head.doff;
        let mut hdr = o.hdr;
        hdr[2..4].copy_from_slice(&(o.total as u16).to_be_bytes());
        set_ipv4_checksum(&mut hdr[..IPV4_HEADER_LEN]);
        let t = IPV4_HEADER_LEN;
        if o.psh {
            hdr[t + 13] |= TCP_PSH;
        }
        let src: [u8; 4] = hdr[12..16].try_into().expect("4 bytes");
        let dst: [u8; 4] = hdr[16..20].try_into().expect("4 bytes");
        let partial = fold(pseudo_header_sum(
            src,
            dst,
            PROTO_TCP,
            o.total - IPV4_HEADER_LEN,
        ));
        hdr[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
        self.groups.push(Group {
            first: o.first,
            count: o.count,
            hdr,
            hdr_len,
            vnet: VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: hdr_len as u16,
                gso_size: o.head.payload as u16,
                csum_start: IPV4_HEADER_LEN as u16,
                csum_offset: 16,
            },
        });
    }
}

/// Re-exported for the I/O layer's bookkeeping.
pub use codec::Ipv4Packet;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::checksum;

    const SRC: [u8; 4] = [10, 244, 1, 5];
    const DST: [u8; 4] = [10, 244, 2, 7];

    /// A TCP packet as the kernel's TSO hands it over: full-length header fields, checksum
    /// field holding the pseudo-header sum (CHECKSUM_PARTIAL).
    fn tso_packet(payload: &[u8], seq: u32, flags: u8, opts: &[u8]) -> Vec<u8> {
        let doff = 20 + opts.len();
        let total = 20 + doff + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 63;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&SRC);
        p[16..20].copy_from_slice(&DST);
        set_ipv4_checksum(&mut p[..20]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&777u32.to_be_bytes());
        t[12] = ((doff / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&500u16.to_be_bytes());
        t[20..doff].copy_from_slice(opts);
        t[doff..].copy_from_slice(payload);
        let partial = fold(pseudo_header_sum(SRC, DST, PROTO_TCP, total - 20));
        t[16..18].copy_from_slice(&partial.to_be_bytes());
        p
    }

    fn tso_hdr(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3];

    /// Applies a plan: the datagrams that go on the wire.
    fn wire(plan: TxPlan, pkt: &[u8], headers: &[u8]) -> Vec<Vec<u8>> {
        match plan {
            TxPlan::Single => vec![pkt.to_vec()],
            TxPlan::Segmented { hdr_len, count, .. } => {
                let plen = pkt.len() - hdr_len;
                (0..count)
                    .map(|i| {
                        let (h, p) = plan.segment(i, plen);
                        let mut d = headers[h].to_vec();
                        d.extend_from_slice(&pkt[p]);
                        d
                    })
                    .collect()
            }
        }
    }

    fn tcp_ok(seg: &[u8]) -> bool {
        let src: [u8; 4] = seg[12..16].try_into().unwrap();
        let dst: [u8; 4] = seg[16..20].try_into().unwrap();
        fold(sum(
            &seg[20..],
            pseudo_header_sum(src, dst, seg[9], seg.len() - 20),
        )) == 0xffff
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = tso_hdr(1420);
        assert_eq!(VnetHdr::decode(&h.encode()), Some(h));
        assert_eq!(VnetHdr::decode(&[0; 9]), None);
    }

    #[test]
    fn tso_is_cut_into_whole_valid_packets() {
        let data = payload(5000);
        let mut pkt = tso_packet(&data, 1_000_000, TCP_ACK | TCP_PSH | TCP_CWR, &TS);
        let mut headers = Vec::new();
        let plan = prepare_tx(&tso_hdr(1420), &mut pkt, &mut headers).unwrap();
        assert_eq!(
            plan,
            TxPlan::Segmented {
                hdr_len: 52,
                mss: 1420,
                count: 4
            }
        );
        let segs = wire(plan, &pkt, &headers);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = Ipv4Packet::parse(s).unwrap();
            assert_eq!(p.total_len, s.len(), "each datagram is one whole packet");
            assert!(s.len() <= 1472);
            assert!(ipv4_checksum_ok(&s[..20]));
            assert!(tcp_ok(s), "segment {i} TCP checksum");
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1_000_000 + 1420 * i as u32);
            let flags = s[33];
            assert_eq!(flags & TCP_PSH != 0, i == 3, "PSH only on the last");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert!(flags & TCP_ACK != 0);
            assert_eq!(&s[40..52], &TS, "options replicated");
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(joined, data);
        assert_eq!(segs[3].len(), 52 + 5000 - 3 * 1420);
    }

    #[test]
    fn tcp_over_ipv6_is_cut_with_v6_headers_and_checksums() {
        let src: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let dst: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let data = payload(5000);
        let total = 40 + 20 + data.len();
        let mut pkt = vec![0u8; total];
        pkt[0] = 0x60;
        pkt[4..6].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        pkt[6] = PROTO_TCP;
        pkt[7] = 64;
        pkt[8..24].copy_from_slice(&src);
        pkt[24..40].copy_from_slice(&dst);
        pkt[40 + 4..40 + 8].copy_from_slice(&1000u32.to_be_bytes());
        pkt[40 + 12] = 5 << 4;
        pkt[40 + 13] = TCP_ACK | TCP_PSH;
        pkt[60..].copy_from_slice(&data);
        let partial = fold(pseudo_header_sum_v6(src, dst, PROTO_TCP, total - 40));
        pkt[56..58].copy_from_slice(&partial.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 60,
            gso_size: 1400,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut headers = Vec::new();
        let plan = prepare_tx(&h, &mut pkt, &mut headers).unwrap();
        let segs = wire(plan, &pkt, &headers);
        assert_eq!(segs.len(), 4);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = codec::IpPacket::parse(s).unwrap();
            assert_eq!(p.total_len, s.len(), "payload length of segment {i}");
            let seq = u32::from_be_bytes(s[44..48].try_into().unwrap());
            assert_eq!(seq, 1000 + (i * 1400) as u32);
            assert_eq!(s[53] & TCP_PSH != 0, i == 3, "PSH only on the last");
            let ok = fold(sum(
                &s[40..],
                pseudo_header_sum_v6(src, dst, PROTO_TCP, s.len() - 40),
            )) == 0xffff;
            assert!(ok, "TCP checksum of segment {i}");
            joined.extend_from_slice(&s[60..]);
        }
        assert_eq!(joined, data);
        // TCPv4 GSO on an IPv6 packet is refused.
        let mut h4 = h;
        h4.gso_type = GSO_TCPV4;
        assert_eq!(
            prepare_tx(&h4, &mut pkt, &mut headers),
            Err(OffloadError::UnsupportedGso(GSO_TCPV4))
        );
    }

    #[test]
    fn fin_stays_on_the_last_segment() {
        let data = payload(3000);
        let mut pkt = tso_packet(&data, 5, TCP_ACK | TCP_FIN, &[]);
        let mut h = tso_hdr(1000);
        h.hdr_len = 40;
        let mut headers = Vec::new();
        let plan = prepare_tx(&h, &mut pkt, &mut headers).unwrap();
        let segs = wire(plan, &pkt, &headers);
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s[33] & TCP_FIN != 0, i == 2);
            assert!(tcp_ok(s));
        }
    }

    #[test]
    fn partial_checksum_is_completed_for_single_packets() {
        let data = payload(101);
        let mut pkt = tso_packet(&data, 9, TCP_ACK, &TS);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        let mut headers = Vec::new();
        assert_eq!(
            prepare_tx(&h, &mut pkt, &mut headers).unwrap(),
            TxPlan::Single
        );
        assert!(tcp_ok(&pkt));
        // A GSO packet that fits one segment is sent whole, checksum completed.
        let mut pkt = tso_packet(&data, 9, TCP_ACK, &TS);
        assert_eq!(
            prepare_tx(&tso_hdr(1420), &mut pkt, &mut headers).unwrap(),
            TxPlan::Single
        );
        assert!(tcp_ok(&pkt));
        // No flags: untouched.
        let mut pkt = tso_packet(&data, 9, TCP_ACK, &TS);
        let before = pkt.clone();
        assert_eq!(
            prepare_tx(&VnetHdr::default(), &mut pkt, &mut headers).unwrap(),
            TxPlan::Single
        );
        assert_eq!(pkt, before);
    }

    #[test]
    fn udp_gso_is_cut_too() {
        let data = payload(3000);
        let total = 28 + data.len();
        let mut pkt = vec![0u8; total];
        pkt[0] = 0x45;
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[8] = 64;
        pkt[9] = PROTO_UDP;
        pkt[12..16].copy_from_slice(&SRC);
        pkt[16..20].copy_from_slice(&DST);
        set_ipv4_checksum(&mut pkt[..20]);
        pkt[20..22].copy_from_slice(&5000u16.to_be_bytes());
        pkt[22..24].copy_from_slice(&6000u16.to_be_bytes());
        pkt[24..26].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        pkt[28..].copy_from_slice(&data);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1200,
            csum_start: 20,
            csum_offset: 6,
        };
        let mut headers = Vec::new();
        let plan = prepare_tx(&h, &mut pkt, &mut headers).unwrap();
        let segs = wire(plan, &pkt, &headers);
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for s in &segs {
            assert_eq!(Ipv4Packet::parse(s).unwrap().total_len, s.len());
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
            assert!(tcp_ok(s), "UDP checksum verifies");
            joined.extend_from_slice(&s[28..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn bad_virtio_headers_are_errors_not_panics() {
        let mut headers = Vec::new();
        let data = payload(3000);
        let mut h = tso_hdr(1000);
        h.csum_start = 24;
        let mut pkt = tso_packet(&data, 1, TCP_ACK, &[]);
        assert_eq!(
            prepare_tx(&h, &mut pkt, &mut headers),
            Err(OffloadError::BadOffsets)
        );
        let mut h = tso_hdr(1000);
        h.gso_type = GSO_TCPV6;
        assert_eq!(
            prepare_tx(&h, &mut pkt, &mut headers),
            Err(OffloadError::UnsupportedGso(GSO_TCPV6))
        );
        let mut bad_doff = tso_packet(&data, 1, TCP_ACK, &[]);
        bad_doff[32] = 0x20; // data offset 8 bytes
        assert_eq!(
            prepare_tx(&tso_hdr(1000), &mut bad_doff, &mut headers),
            Err(OffloadError::BadTransportHeader)
        );
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 5000,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            prepare_tx(&h, &mut pkt, &mut headers),
            Err(OffloadError::BadOffsets)
        );
    }

    /// Cuts a super-packet, lays the segments out as UDP GRO delivers them (stride = first
    /// segment's length), and returns the buffer and packet ranges.
    fn gro_buffer(segs: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
        let stride = segs[0].len();
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for s in segs {
            let off = buf.len();
            buf.extend_from_slice(s);
            ranges.push(off..off + s.len());
            buf.resize(off + stride.max(s.len()), 0);
        }
        (buf, ranges)
    }

    fn segments_of(data: &[u8], seq: u32, flags: u8, mss: u16) -> Vec<Vec<u8>> {
        let mut pkt = tso_packet(data, seq, flags, &TS);
        let mut headers = Vec::new();
        let plan = prepare_tx(&tso_hdr(mss), &mut pkt, &mut headers).unwrap();
        wire(plan, &pkt, &headers)
    }

    /// What the TUN device receives for a group.
    fn written(buf: &[u8], ranges: &[Range<usize>], g: &Group) -> Vec<u8> {
        if g.hdr_len == 0 {
            return buf[ranges[g.first].clone()].to_vec();
        }
        let mut out = g.hdr[..g.hdr_len].to_vec();
        for r in &ranges[g.first..g.first + g.count] {
            out.extend_from_slice(&buf[r.start + g.hdr_len..r.end]);
        }
        out
    }

    /// Pushes every packet, closes the last group and returns all groups.
    fn plan(c: &mut Coalescer, buf: &[u8], ranges: &[Range<usize>]) -> Vec<Group> {
        for (i, r) in ranges.iter().enumerate() {
            c.push(i, &buf[r.clone()]);
        }
        c.finish();
        std::mem::take(c.groups())
    }

    #[test]
    fn segments_of_one_flow_become_one_super_packet_again() {
        let data = payload(20_000);
        let segs = segments_of(&data, 42, TCP_ACK | TCP_PSH, 1420);
        let (buf, ranges) = gro_buffer(&segs);
        let mut c = Coalescer::new();
        let groups = plan(&mut c, &buf, &ranges);
        assert_eq!(groups.len(), 1);
        let g = groups[0];
        assert_eq!(g.count, segs.len());
        assert_eq!(g.hdr_len, 52);
        assert_eq!(
            g.vnet,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 52,
                gso_size: 1420,
                csum_start: 20,
                csum_offset: 16
            }
        );
        let merged = written(&buf, &ranges, &g);
        let p = Ipv4Packet::parse(&merged).unwrap();
        assert_eq!(p.total_len, merged.len());
        assert!(ipv4_checksum_ok(&merged[..20]));
        assert_eq!(&merged[52..], &data[..]);
        assert!(merged[33] & TCP_PSH != 0, "PSH of the last segment kept");
        // Cutting the merged packet again gives back the same segments: what the kernel's
        // GSO will do if it has to.
        let mut again = merged.clone();
        let mut headers = Vec::new();
        let plan = prepare_tx(&g.vnet, &mut again, &mut headers).unwrap();
        let resegmented = wire(plan, &again, &headers);
        assert_eq!(resegmented.len(), segs.len());
        for (a, b) in resegmented.iter().zip(&segs) {
            // IP IDs restart from the head's; everything else must match.
            assert_eq!(a[20..], b[20..]);
            assert_eq!(a[..4], b[..4]);
        }
    }

    #[test]
    fn partial_checksum_of_a_merged_packet_completes_to_a_valid_one() {
        let data = payload(4000);
        let segs = segments_of(&data, 1, TCP_ACK, 1000);
        let (buf, ranges) = gro_buffer(&segs);
        let mut c = Coalescer::new();
        let g = plan(&mut c, &buf, &ranges)[0];
        let mut merged = written(&buf, &ranges, &g);
        // What a device does with CHECKSUM_PARTIAL and no segmentation.
        let s = !fold(sum(&merged[20..], 0));
        merged[36..38].copy_from_slice(&s.to_be_bytes());
        assert!(tcp_ok(&merged));
    }

    #[test]
    fn an_authenticated_coalescer_merges_without_verifying_tcp_checksums() {
        let data = payload(4260);
        let mut s = segments_of(&data, 7, TCP_ACK, 1420);
        // A wrong TCP checksum (the bytes themselves are what the peer sealed): the plain
        // coalescer keeps the segment apart, the authenticated one merges all three.
        s[1][36] ^= 0x5a;
        let (buf, ranges) = gro_buffer(&s);
        let counts = |c: &mut Coalescer| {
            plan(c, &buf, &ranges)
                .iter()
                .map(|g| g.count)
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&mut Coalescer::new()), [1, 1, 1]);
        let mut c = Coalescer::authenticated();
        assert_eq!(counts(&mut c), [3]);
        s[1][36] ^= 0x5a;
        let (buf, ranges) = gro_buffer(&s);
        let g = plan(&mut c, &buf, &ranges)[0];
        assert_eq!(&written(&buf, &ranges, &g)[52..], &data[..]);
        // A bad IPv4 header checksum still keeps a packet apart.
        s[1][10] ^= 0x5a;
        let (buf, ranges) = gro_buffer(&s);
        assert_eq!(
            plan(&mut c, &buf, &ranges)
                .iter()
                .map(|g| g.count)
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    #[test]
    fn what_may_not_be_merged_is_written_alone() {
        let mut c = Coalescer::new();
        // Two flows interleaved: nothing merges across them.
        let a = segments_of(&payload(2840), 100, TCP_ACK, 1420);
        let mut b = segments_of(&payload(2840), 100, TCP_ACK, 1420);
        for s in &mut b {
            s[20..22].copy_from_slice(&40001u16.to_be_bytes());
            let src: [u8; 4] = s[12..16].try_into().unwrap();
            let dst: [u8; 4] = s[16..20].try_into().unwrap();
            s[36] = 0;
            s[37] = 0;
            let c = !fold(sum(&s[20..], pseudo_header_sum(src, dst, 6, s.len() - 20)));
            s[36..38].copy_from_slice(&c.to_be_bytes());
        }
        let mixed = vec![a[0].clone(), b[0].clone(), a[1].clone(), b[1].clone()];
        let (buf, ranges) = gro_buffer(&mixed);
        let groups = plan(&mut c, &buf, &ranges);
        assert_eq!(
            groups.iter().map(|g| g.count).collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        assert!(groups.iter().all(|g| g.vnet == VnetHdr::default()));
        for (g, orig) in groups.iter().zip(&mixed) {
            assert_eq!(&written(&buf, &ranges, g), orig, "written unchanged");
        }

        // A gap in sequence numbers.
        let s = segments_of(&payload(4260), 7, TCP_ACK, 1420);
        let gap = vec![s[0].clone(), s[2].clone()];
        let (buf, ranges) = gro_buffer(&gap);
        assert_eq!(plan(&mut c, &buf, &ranges).len(), 2);

        // PSH in the middle closes the group after it.
        let mut s = segments_of(&payload(4260), 7, TCP_ACK, 1420);
        s[0][33] |= TCP_PSH;
        s[0][36] = 0;
        s[0][37] = 0;
        let ck = !fold(sum(
            &s[0][20..],
            pseudo_header_sum(SRC, DST, 6, s[0].len() - 20),
        ));
        s[0][36..38].copy_from_slice(&ck.to_be_bytes());
        let (buf, ranges) = gro_buffer(&s);
        let counts: Vec<usize> = plan(&mut c, &buf, &ranges)
            .iter()
            .map(|g| g.count)
            .collect();
        assert_eq!(counts, [1, 2]);

        // A corrupted payload is not merged (the receiver must see the bad checksum).
        let mut s = segments_of(&payload(4260), 7, TCP_ACK, 1420);
        s[1][100] ^= 0xff;
        let (buf, ranges) = gro_buffer(&s);
        let groups = plan(&mut c, &buf, &ranges);
        assert_eq!(
            groups.iter().map(|g| g.count).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(written(&buf, &ranges, &groups[1]), s[1]);

        // Pure ACKs and SYNs are never merged.
        let ack = tso_packet(&[], 1, TCP_ACK, &TS);
        let mut ack = ack.clone();
        let ck = checksum(&ack[20..]);
        let _ = ck;
        let partial = u16::from_be_bytes([ack[36], ack[37]]);
        ack[36] = 0;
        ack[37] = 0;
        let full = !fold(sum(&ack[20..], u64::from(partial)));
        ack[36..38].copy_from_slice(&full.to_be_bytes());
        let (buf, ranges) = gro_buffer(&[ack.clone(), ack.clone()]);
        assert_eq!(plan(&mut c, &buf, &ranges).len(), 2);
    }

    #[test]
    fn groups_stop_at_64_segments_and_64_kib() {
        let mut c = Coalescer::new();
        // 100 segments of 100 bytes: 64 + 36.
        let segs = segments_of(&payload(10_000), 1, TCP_ACK, 100);
        let (buf, ranges) = gro_buffer(&segs);
        let counts: Vec<usize> = plan(&mut c, &buf, &ranges)
            .iter()
            .map(|g| g.count)
            .collect();
        assert_eq!(counts, [64, 36]);
        // 1420-byte segments: at most (65535 - 52) / 1420 = 46 fit one IPv4 packet.
        let mut segs = segments_of(&payload(1420 * 40), 1, TCP_ACK, 1420);
        segs.extend(segments_of(
            &payload(1420 * 10),
            1 + 1420 * 40,
            TCP_ACK,
            1420,
        ));
        assert_eq!(segs.len(), 50);
        let (buf, ranges) = gro_buffer(&segs);
        let groups = plan(&mut c, &buf, &ranges);
        assert_eq!(groups[0].count, 46);
        assert_eq!(groups.iter().map(|g| g.count).sum::<usize>(), 50);
        for g in &groups {
            let w = written(&buf, &ranges, g);
            assert!(w.len() <= MAX_IPV4_PACKET);
            assert_eq!(Ipv4Packet::parse(&w).unwrap().total_len, w.len());
        }
    }

    #[test]
    fn a_short_segment_ends_the_group() {
        let mut c = Coalescer::new();
        let a = segments_of(&payload(2000), 1, TCP_ACK, 1420); // 1420 + 580
        let b = segments_of(&payload(1420), 2001, TCP_ACK, 1420); // continues the flow
        let all = vec![a[0].clone(), a[1].clone(), b[0].clone()];
        let (buf, ranges) = gro_buffer(&all);
        let counts: Vec<usize> = plan(&mut c, &buf, &ranges)
            .iter()
            .map(|g| g.count)
            .collect();
        assert_eq!(counts, [2, 1]);
    }

    #[test]
    fn a_group_may_continue_into_the_next_receive() {
        // A 46-segment super-packet crosses the wire as two GSO messages (44 + 2).
        let data = payload(1420 * 46);
        let segs = segments_of(&data, 1, TCP_ACK, 1420);
        assert_eq!(segs.len(), 46);
        let (b1, r1) = gro_buffer(&segs[..44]);
        let (b2, r2) = gro_buffer(&segs[44..]);
        let mut c = Coalescer::new();
        for (i, r) in r1.iter().enumerate() {
            c.push(10 + i, &b1[r.clone()]);
        }
        assert!(c.groups().is_empty(), "still open after the first receive");
        assert_eq!(c.open_first(), Some(10));
        c.rebase(10);
        assert_eq!(c.open_first(), Some(0));
        for (i, r) in r2.iter().enumerate() {
            c.push(44 + i, &b2[r.clone()]);
        }
        c.finish();
        let groups = std::mem::take(c.groups());
        assert_eq!(groups.len(), 1);
        let g = groups[0];
        assert_eq!((g.first, g.count), (0, 46));
        let mut out = g.hdr[..g.hdr_len].to_vec();
        for r in &r1 {
            out.extend_from_slice(&b1[r.start + g.hdr_len..r.end]);
        }
        for r in &r2 {
            out.extend_from_slice(&b2[r.start + g.hdr_len..r.end]);
        }
        assert_eq!(Ipv4Packet::parse(&out).unwrap().total_len, out.len());
        assert_eq!(&out[52..], &data[..]);
        // A gap in ids (a packet the caller dropped) never joins a group.
        let mut c = Coalescer::new();
        c.push(0, &b1[r1[0].clone()]);
        c.push(2, &b1[r1[1].clone()]);
        c.finish();
        assert_eq!(c.groups().len(), 2);
    }
}
