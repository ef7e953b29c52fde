//! UDP to TUN: receive a run of datagrams (`UDP_GRO`), find each message's peer (receiver
//! index for data, handshake responses and cookie replies; the initiator's static key for
//! initiations), let boringtun verify and decrypt, drop what the sending peer may not send
//! (cryptokey routing on the inner source), follow the peer's address (roaming), coalesce the
//! decrypted TCP segments and write them to the TUN queue.
//!
//! Handshake initiations pass the device's one rate limiter first: under load it answers with
//! a cookie reply instead of doing the Diffie-Hellman work.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use flannel_packet::offload::{Coalescer, MAX_SEGMENTS};
use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
use tracing::{debug, warn};

use super::metrics::{DropReason, Metrics};
use super::net::{OutBatch, canonical, wire_addr};
use super::table::{Peer, Snapshot};
use super::worker::Worker;

/// Room for one `recvmsg`: a GRO run is at most 64 KiB of UDP payload.
const RX_BUF: usize = 65536;
/// Message types.
const HANDSHAKE_INIT: u8 = 1;
const HANDSHAKE_RESP: u8 = 2;
const COOKIE_REPLY: u8 = 3;
const DATA: u8 = 4;

/// The drop reason of a protocol error.
pub(crate) fn reason(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::Replay,
        WireGuardError::InvalidAeadTag
        | WireGuardError::InvalidMac
        | WireGuardError::WrongKey
        | WireGuardError::WrongTai64nTimestamp
        | WireGuardError::InvalidTai64nTimestamp => DropReason::Decrypt,
        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => DropReason::NoSession,
        WireGuardError::InvalidPacket
        | WireGuardError::IncorrectPacketLength
        | WireGuardError::WrongPacketType => DropReason::Malformed,
        WireGuardError::UnderLoad => DropReason::UnderLoad,
        _ => DropReason::Other,
    }
}

/// The decryption side of one worker.
pub(crate) struct Rx {
    w: Worker,
    inbuf: Vec<u8>,
    /// Two buffers for decrypted packets: a coalesced group still open at the end of one
    /// receive may continue into the next, which therefore decrypts into the other buffer.
    plain: [Vec<u8>; 2],
    /// The buffer this receive decrypts into.
    cur: usize,
    /// Accepted packets by id: (buffer, byte range).
    pkts: Vec<(usize, Range<usize>)>,
    /// Bytes of `plain[cur]` in use.
    plain_len: usize,
    coalescer: Coalescer,
    replies: OutBatch,
    logged: bool,
}

impl Rx {
    pub fn new(w: Worker) -> Rx {
        Rx {
            w,
            inbuf: vec![0u8; RX_BUF],
            plain: [vec![0u8; RX_BUF + 256], vec![0u8; RX_BUF + 256]],
            cur: 0,
            pkts: Vec::with_capacity(2 * MAX_SEGMENTS),
            plain_len: 0,
            coalescer: Coalescer::authenticated(),
            replies: OutBatch::new(256 * 1024, 256),
            logged: false,
        }
    }

    pub fn run(mut self) {
        let mut cmsg = nix::cmsg_space!(i32);
        let fd = self.w.sock.as_raw_fd();
        loop {
            if self.w.stop.load(Ordering::Relaxed) {
                return;
            }
            let received = {
                let mut iov = [IoSliceMut::new(&mut self.inbuf)];
                recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                    .map(|m| {
                        let mut seg = None;
                        if let Ok(cmsgs) = m.cmsgs() {
                            for c in cmsgs {
                                if let ControlMessageOwned::UdpGroSegments(s) = c {
                                    seg = usize::try_from(s).ok().filter(|s| *s > 0);
                                }
                            }
                        }
                        let from = m.address.as_ref().and_then(canonical);
                        (m.bytes, seg, from, m.flags.contains(MsgFlags::MSG_TRUNC))
                    })
            };
            let (n, seg, from, truncated) = match received {
                Ok(r) => r,
                Err(Errno::EAGAIN) => {
                    // Nothing more right now: whatever is held goes out before sleeping.
                    if !self.write_tun(true) {
                        return;
                    }
                    if !self.w.wait_readable(self.w.sock.as_fd()) {
                        return;
                    }
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.w.metrics.dropped(DropReason::Io, 1);
                    if !self.logged {
                        warn!("{}: UDP receive failed: {e}", self.w.name);
                        self.logged = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
            };
            let Some(from) = from.filter(|_| !truncated) else {
                self.w.metrics.dropped(DropReason::Malformed, 1);
                continue;
            };
            Metrics::add(&self.w.metrics.rx_bytes, n as u64);
            let seg = seg.unwrap_or(n).max(1);
            let snap = self.w.table.get().clone();
            let mut off = 0;
            while off < n {
                let end = (off + seg).min(n);
                self.datagram(&snap, off..end, from);
                off = end;
            }
            if !self.write_tun(false) {
                return;
            }
            self.replies.flush(&self.w.sock, &self.w.metrics);
        }
    }

    /// Handles one datagram `inbuf[r]` from `from`.
    fn datagram(&mut self, snap: &Snapshot, r: Range<usize>, from: SocketAddr) {
        let d = &self.inbuf[r];
        if d.len() < 4 || d[1..4] != [0, 0, 0] {
            self.w.metrics.dropped(DropReason::Malformed, 1);
            return;
        }
        let Some(id) = snap.identity.as_ref() else {
            self.w.metrics.dropped(DropReason::NoPeer, 1);
            return;
        };
        let peer = match d[0] {
            DATA | HANDSHAKE_RESP | COOKIE_REPLY if d.len() >= 8 => {
                let at = if d[0] == HANDSHAKE_RESP { 8 } else { 4 };
                let idx = u32::from_le_bytes(d[at..at + 4].try_into().expect("4 bytes"));
                snap.by_session(idx)
            }
            HANDSHAKE_INIT => {
                let m = &self.w.metrics;
                let mut cookie = [0u8; 64];
                match id.limiter.verify_packet(Some(from.ip()), d, &mut cookie) {
                    Ok(Packet::HandshakeInit(h)) => {
                        Metrics::add(&m.handshakes_total, 1);
                        parse_handshake_anon(&id.secret, &id.public, &h)
                            .ok()
                            .and_then(|half| snap.by_key(&half.peer_static_public))
                    }
                    Err(TunnResult::WriteToNetwork(c)) => {
                        m.dropped(DropReason::UnderLoad, 1);
                        let n = c.len();
                        if let Some(to) = wire_addr(from, self.w.dual) {
                            self.replies.tail()[..n].copy_from_slice(c);
                            self.replies.commit(n, to);
                        }
                        return;
                    }
                    Err(TunnResult::Err(e)) => {
                        m.dropped(reason(&e), 1);
                        return;
                    }
                    _ => {
                        m.dropped(DropReason::Malformed, 1);
                        return;
                    }
                }
            }
            _ => {
                self.w.metrics.dropped(DropReason::Malformed, 1);
                return;
            }
        };
        let Some(peer) = peer else {
            self.w.metrics.dropped(DropReason::NoPeer, 1);
            return;
        };
        Metrics::add(&peer.rx_bytes, d.len() as u64);
        let kind = d[0];
        let mut tunn = peer.tunn();
        let start = self.plain_len;
        let res = tunn.decapsulate(Some(from.ip()), d, &mut self.plain[self.cur][start..]);
        match res {
            TunnResult::WriteToTunnelV4(p, src) => {
                let (len, src) = (p.len(), std::net::IpAddr::V4(src));
                drop(tunn);
                self.accept(snap, peer, start, len, src, from);
            }
            TunnResult::WriteToTunnelV6(p, src) => {
                let (len, src) = (p.len(), std::net::IpAddr::V6(src));
                drop(tunn);
                self.accept(snap, peer, start, len, src, from);
            }
            TunnResult::Done => {
                if kind == DATA {
                    // A keepalive: authenticated, so the peer may roam.
                    peer.roam(from);
                }
            }
            TunnResult::WriteToNetwork(p) => {
                if kind != COOKIE_REPLY {
                    Metrics::add(&self.w.metrics.handshakes_completed, 1);
                    peer.roam(from);
                }
                let n = p.len();
                Self::reply_to(
                    &mut self.replies,
                    peer,
                    &self.plain[self.cur][start..start + n],
                    self.w.dual,
                );
                // Packets queued while there was no session go out now.
                drain_queue(&mut tunn, peer, &mut self.replies, self.w.dual);
            }
            TunnResult::Err(e) => {
                debug!("{}: message from {from} refused: {e:?}", self.w.name);
                self.w.metrics.dropped(reason(&e), 1);
            }
        }
    }

    /// A decrypted packet at `plain[start..start + len]` from inner source `src`.
    fn accept(
        &mut self,
        snap: &Snapshot,
        peer: &Arc<Peer>,
        start: usize,
        len: usize,
        src: std::net::IpAddr,
        from: SocketAddr,
    ) {
        peer.roam(from);
        if !snap.allows(peer, src) {
            self.w.metrics.dropped(DropReason::NotAllowedSource, 1);
            return;
        }
        let id = self.pkts.len();
        self.pkts.push((self.cur, start..start + len));
        if self.w.offload {
            self.coalescer
                .push(id, &self.plain[self.cur][start..start + len]);
        }
        self.plain_len = start + len;
    }

    fn reply_to(out: &mut OutBatch, peer: &Peer, msg: &[u8], dual: bool) {
        let Some(to) = peer.endpoint().and_then(|e| wire_addr(e, dual)) else {
            return;
        };
        if out.room() < msg.len() {
            return;
        }
        out.tail()[..msg.len()].copy_from_slice(msg);
        Metrics::add(&peer.tx_bytes, msg.len() as u64);
        out.commit(msg.len(), to);
    }

    /// Writes this receive's packets to the TUN queue (coalesced groups with offloads, one
    /// write each otherwise); false when the device is gone. With offloads a group still open
    /// stays for the next receive unless `all` (nothing more to receive right now) or it
    /// began in the other buffer (which the next receive overwrites).
    fn write_tun(&mut self, all: bool) -> bool {
        let mut ok = true;
        if !self.w.offload {
            Metrics::add(&self.w.metrics.rx_packets, self.pkts.len() as u64);
            for (b, r) in &self.pkts {
                if let Err(e) = self.w.dev.send(&self.plain[*b][r.clone()])
                    && !self.w.tun_error("TUN write", &e, &mut self.logged)
                {
                    ok = false;
                    break;
                }
            }
            self.pkts.clear();
            self.plain_len = 0;
            return ok;
        }
        let cur = self.cur;
        if all
            || self
                .coalescer
                .open_first()
                .is_some_and(|first| self.pkts[first].0 != cur)
        {
            self.coalescer.finish();
        }
        let mut written = 0;
        for g in self.coalescer.groups().iter() {
            let vnet = g.vnet.encode();
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS + 2];
            iov[0] = IoSlice::new(&vnet);
            let used = if g.hdr_len == 0 {
                let (b, r) = &self.pkts[g.first];
                iov[1] = IoSlice::new(&self.plain[*b][r.clone()]);
                2
            } else {
                iov[1] = IoSlice::new(&g.hdr[..g.hdr_len]);
                for (k, (b, r)) in self.pkts[g.first..g.first + g.count].iter().enumerate() {
                    iov[k + 2] = IoSlice::new(&self.plain[*b][r.start + g.hdr_len..r.end]);
                }
                g.count + 2
            };
            written += g.count;
            if let Err(e) = self.w.dev.send_vectored(&iov[..used])
                && !self.w.tun_error("TUN write", &e, &mut self.logged)
            {
                ok = false;
                break;
            }
        }
        self.coalescer.groups().clear();
        Metrics::add(&self.w.metrics.rx_packets, written as u64);
        let keep = self.coalescer.open_first().unwrap_or(self.pkts.len());
        self.pkts.drain(..keep);
        self.coalescer.rebase(keep);
        if !self.pkts.is_empty() {
            self.cur ^= 1;
        }
        self.plain_len = 0;
        ok
    }
}

/// Sends what boringtun queued while the handshake ran (`decapsulate` with an empty datagram
/// until `Done`).
pub(crate) fn drain_queue(tunn: &mut Tunn, peer: &Peer, out: &mut OutBatch, dual: bool) {
    let Some(to) = peer.endpoint().and_then(|e| wire_addr(e, dual)) else {
        return;
    };
    for _ in 0..256 {
        if out.room() < 65536 + 32 {
            break;
        }
        match tunn.decapsulate(None, &[], out.tail()) {
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                Metrics::add(&peer.tx_bytes, n as u64);
                out.commit(n, to);
            }
            _ => break,
        }
    }
}
