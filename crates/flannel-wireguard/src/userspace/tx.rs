//! TUN to UDP: read a packet (or a TSO super-packet) from this worker's TUN queue, find the
//! peer by cryptokey routing, cut super-packets into segments, pad each plaintext to a
//! multiple of 16 bytes (never beyond the MTU, as the WireGuard paper asks; boringtun does not
//! pad), encrypt with the peer's current session into the [`OutBatch`], and send the batch when
//! it is full or the queue is empty.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use boringtun::noise::TunnResult;
use flannel_packet::codec::IpPacket;
use flannel_packet::offload::{self, TxPlan, VNET_HDR_LEN, VnetHdr};
use tracing::debug;

use super::metrics::{DropReason, Metrics};
use super::net::{OutBatch, wire_addr};
use super::table::Peer;
use super::worker::Worker;

/// Room for one read from the TUN device: the virtio header and a 64 KiB super-packet, plus
/// padding.
pub(crate) const TUN_BUF: usize = VNET_HDR_LEN + 65536 + 16;
/// The batch goes out once it holds this many bytes: about one super-packet. A TSO
/// super-packet's segments leave in `UDP_SEGMENT` sends of their own whatever the batch size,
/// so a larger batch saves no system call; it would only let the ciphertext fall out of the
/// CPU cache before the kernel copies it (small packets still share one `sendmmsg`).
const FLUSH_AT: usize = 60 * 1024;
/// The send batch: room for one more super-packet beyond [`FLUSH_AT`].
const OUT_BUF: usize = FLUSH_AT + PER_READ;
/// Most datagrams per batch.
const OUT_ITEMS: usize = 512;
/// What one super-packet may need in the batch: 64 KiB plus per-segment overhead.
const PER_READ: usize = 65536 + 64 * 48;
/// WireGuard data message overhead: 16 bytes of header, 16 of tag.
const OVERHEAD: usize = 32;

/// The padded length of a plaintext of `len` bytes on a device of MTU `mtu`.
#[inline]
pub(crate) fn padded(len: usize, mtu: usize) -> usize {
    if len >= mtu {
        len
    } else {
        len.next_multiple_of(16).min(mtu)
    }
}

/// The encryption side of one worker.
pub(crate) struct Tx {
    w: Worker,
    buf: Vec<u8>,
    headers: Vec<u8>,
    out: OutBatch,
}

impl Tx {
    pub fn new(w: Worker) -> Tx {
        Tx {
            w,
            buf: vec![0u8; TUN_BUF],
            headers: Vec::with_capacity(256 * 80),
            out: OutBatch::new(OUT_BUF, OUT_ITEMS),
        }
    }

    pub fn run(mut self) {
        let hdr = if self.w.offload { VNET_HDR_LEN } else { 0 };
        let mut logged = false;
        loop {
            if self.w.stop.load(Ordering::Relaxed) {
                return;
            }
            let n = match self.w.dev.recv(&mut self.buf[..TUN_BUF - 16]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.out.flush(&self.w.sock, &self.w.metrics);
                    if !self.w.wait_readable(self.w.dev.as_fd()) {
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self.w.tun_error("TUN read", &e, &mut logged) {
                        return;
                    }
                    continue;
                }
            };
            if n <= hdr {
                continue;
            }
            self.packet(hdr, n);
            if self.out.len >= FLUSH_AT || self.out.full(PER_READ) {
                self.out.flush(&self.w.sock, &self.w.metrics);
            }
        }
    }

    /// Handles one read of `n` bytes (virtio header of `hdr` bytes first).
    fn packet(&mut self, hdr: usize, n: usize) {
        let m = &self.w.metrics;
        let vnet = if hdr > 0 {
            VnetHdr::decode(&self.buf).unwrap_or_default()
        } else {
            VnetHdr::default()
        };
        let Ok(ip) = IpPacket::parse(&self.buf[hdr..n]) else {
            m.dropped(DropReason::Malformed, 1);
            return;
        };
        let snap = self.w.table.get().clone();
        let Some(peer) = snap.route(ip.dst) else {
            m.dropped(DropReason::NoPeer, 1);
            return;
        };
        let Some(to) = peer
            .endpoint()
            .and_then(|e| wire_addr(e, self.w.dual).map(|a| (e, a)))
        else {
            m.dropped(DropReason::NoEndpoint, 1);
            return;
        };
        let end = hdr + ip.total_len;
        let plan = match offload::prepare_tx(&vnet, &mut self.buf[hdr..end], &mut self.headers) {
            Ok(p) => p,
            Err(e) => {
                m.dropped(DropReason::Malformed, 1);
                debug!(
                    "{}: dropping a packet from the TUN device: {e}",
                    self.w.name
                );
                return;
            }
        };
        match plan {
            TxPlan::Single => {
                let len = padded(ip.total_len, self.w.mtu);
                self.buf[end..hdr + len].fill(0);
                let mut tunn = peer.tunn();
                let src = &self.buf[hdr..hdr + len];
                seal(&mut tunn, peer, src, &mut self.out, to, m);
            }
            TxPlan::Segmented {
                hdr_len,
                mss,
                count,
            } => {
                let payload_len = ip.total_len - hdr_len;
                let mut tunn = peer.tunn();
                let pkt = &mut self.buf[hdr..];
                for i in 0..count {
                    let (h, p) = plan.segment(i, payload_len);
                    // Segment i's header goes right in front of its payload, over the tail of
                    // segment i-1's payload (already sealed), so the plaintext is contiguous
                    // without a copy.
                    let start = i * mss;
                    pkt[start..start + hdr_len].copy_from_slice(&self.headers[h]);
                    let seg_len = hdr_len + p.len();
                    let len = padded(seg_len, self.w.mtu);
                    let pad = start + seg_len..start + len;
                    // Padding runs into the next segment's first bytes: keep them.
                    let mut keep = [0u8; 16];
                    keep[..pad.len()].copy_from_slice(&pkt[pad.clone()]);
                    pkt[pad.clone()].fill(0);
                    seal(
                        &mut tunn,
                        peer,
                        &pkt[start..start + len],
                        &mut self.out,
                        to,
                        m,
                    );
                    pkt[pad.clone()].copy_from_slice(&keep[..pad.len()]);
                }
            }
        }
    }
}

/// Encrypts one padded plaintext for `peer` into the batch. Without a session boringtun
/// queues the packet and hands out a handshake initiation instead, which goes out the same way.
#[inline]
fn seal(
    tunn: &mut boringtun::noise::Tunn,
    peer: &Peer,
    src: &[u8],
    out: &mut OutBatch,
    to: (SocketAddr, nix::sys::socket::SockaddrStorage),
    m: &Metrics,
) {
    if out.room() < src.len() + OVERHEAD + 148 {
        m.dropped(DropReason::Io, 1);
        return;
    }
    match tunn.encapsulate(src, out.tail()) {
        TunnResult::WriteToNetwork(p) => {
            let n = p.len();
            if p[0] == 1 {
                Metrics::add(&m.handshakes_total, 1);
            } else {
                Metrics::add(&m.tx_packets, 1);
            }
            Metrics::add(&peer.tx_bytes, n as u64);
            out.commit(n, to.1);
        }
        TunnResult::Done => {}
        TunnResult::Err(e) => {
            debug!("encapsulate for {:?} failed: {e:?}", to.0);
            m.dropped(DropReason::Other, 1);
        }
        TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
    }
}
