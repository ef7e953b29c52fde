//! The data path's system calls: TUN queues, UDP sockets and the worker threads that move
//! packets between them.
//!
//! Layout (boringtun's thread-per-queue model): the TUN device is opened multi-queue, one
//! queue per worker, and every worker has its own UDP socket bound with `SO_REUSEPORT` to the
//! same `IfaceAddr:Port`. A worker is two threads, so both directions run at once:
//! * **tx**: reads its TUN queue (one TSO super-packet or one small packet per read), looks up
//!   the peer, and sends. Small packets are batched into one `sendmmsg`; a super-packet goes
//!   out as one `sendmsg` with `UDP_SEGMENT`, the kernel cutting it at inner-packet boundaries
//!   (see [`super::offload`]).
//! * **rx**: `recvmsg` with `UDP_GRO` (a run of datagrams from one peer per call), validates,
//!   decrements TTLs, coalesces TCP segments and writes each group to the TUN queue with one
//!   `writev`.
//!
//! Threads never block in a way shutdown cannot interrupt: descriptors are read with
//! `MSG_DONTWAIT`/`O_NONBLOCK`, and when nothing is ready a thread `poll`s its descriptor
//! together with a shared stop pipe. While traffic flows no `poll` is made (upstream's trick).
//! Dropping [`DataPath`] stops and joins every thread and closes every descriptor, which
//! removes the non-persistent TUN device.
//!
//! Everything here goes through safe wrappers (`tun-rs` for the TUN ioctls, `nix` for sockets),
//! so this module needs no `unsafe`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockFlag, SockType,
    SockaddrIn, bind, recvmsg, sendmmsg, sendmsg, setsockopt, socket, sockopt,
};
use tracing::{debug, warn};
use tun_rs::SyncDevice;

use super::codec::{self, ICMP_UNREACHABLE_MAX, Ipv4Packet, Malformed};
use super::offload::{self, Coalescer, MAX_SEGMENTS, TxPlan, VNET_HDR_LEN, VnetHdr};
use super::table::{SharedTable, TableReader};

/// Small packets read before one `sendmmsg`.
const TX_BATCH: usize = 32;
/// GSO messages (chunks of one super-packet) per `sendmmsg`.
const GSO_BATCH: usize = 8;
/// Room for one read from the TUN device: the virtio header and a 64 KiB super-packet.
const TUN_BUF: usize = VNET_HDR_LEN + 65536;
/// Room for one `recvmsg`: a GRO run is at most 64 KiB of UDP payload.
const RX_BUF: usize = 65536;
/// Largest UDP payload one `sendmsg` may carry (65535 - IPv4 header - UDP header).
const MAX_UDP_PAYLOAD: usize = 65507;
/// Socket buffer sizes asked for (root may exceed `rmem_max`/`wmem_max`).
const SOCKET_BUFFER: usize = 8 << 20;

/// What the data path needs to know.
#[derive(Debug, Clone)]
pub struct DataPathConfig {
    /// TUN device name (`flannel0`).
    pub name: String,
    /// TUN MTU (underlay MTU - 28).
    pub mtu: u32,
    /// Local address of the UDP sockets (`IfaceAddr:Port`).
    pub bind: SocketAddrV4,
    /// The port peers listen on: ours, as upstream assumes every node uses the same one.
    pub peer_port: u16,
    /// The TUN address, source of ICMP errors.
    pub tun_ip: Ipv4Addr,
    /// Our own lease's subnet: the only destinations (and never a source) accepted from the
    /// tunnel.
    pub own_subnet: Ipv4Net,
    /// Worker count (TUN queues and sockets).
    pub queues: usize,
    /// Try `IFF_VNET_HDR` with TSO and the GSO/GRO paths.
    pub offload: bool,
}

/// Packet counters of all workers, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams handed to the kernel for peers.
    pub tx_datagrams: AtomicU64,
    /// Reads from the TUN device (packets or super-packets).
    pub tun_reads: AtomicU64,
    /// Super-packets cut into segments.
    pub tx_super_packets: AtomicU64,
    /// Datagrams received from peers.
    pub rx_datagrams: AtomicU64,
    /// Writes to the TUN device.
    pub tun_writes: AtomicU64,
    /// Writes that carried a coalesced super-packet.
    pub rx_super_packets: AtomicU64,
    /// Packets without a peer (ICMP net unreachable sent when allowed).
    pub no_route: AtomicU64,
    /// Packets dropped because their TTL ran out.
    pub ttl_expired: AtomicU64,
    /// Packets dropped as malformed (or not IPv4).
    pub malformed: AtomicU64,
    /// Received packets for a destination outside our subnet, or from a source inside it.
    pub not_ours: AtomicU64,
    /// Failed sends and writes.
    pub errors: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "tx {} datagrams from {} TUN reads ({} super-packets), rx {} datagrams into {} TUN writes ({} coalesced); dropped: {} no route, {} TTL, {} malformed, {} not ours; {} errors",
            g(&self.tx_datagrams),
            g(&self.tun_reads),
            g(&self.tx_super_packets),
            g(&self.rx_datagrams),
            g(&self.tun_writes),
            g(&self.rx_super_packets),
            g(&self.no_route),
            g(&self.ttl_expired),
            g(&self.malformed),
            g(&self.not_ours),
            g(&self.errors),
        )
    }
}

/// The running data path. Dropping it stops the threads and removes the TUN device.
pub struct DataPath {
    stop: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    wake: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    offload: bool,
    queues: usize,
}

impl std::fmt::Debug for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPath")
            .field("threads", &self.threads.len())
            .field("offload", &self.offload)
            .field("queues", &self.queues)
            .finish()
    }
}

fn io_err(what: &str, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens the TUN device (not persistent): multi-queue with offloads if possible, else
/// plainer variants.
fn open_tun(cfg: &DataPathConfig) -> io::Result<(Vec<SyncDevice>, bool)> {
    let tun = flannel_packet::tun::open(&flannel_packet::tun::TunSpec {
        name: cfg.name.clone(),
        queues: cfg.queues,
        offload: cfg.offload,
        persist: false,
        mtu: Some(u16::try_from(cfg.mtu).unwrap_or(u16::MAX)),
    })?;
    Ok((tun.queues, tun.offload))
}

/// One UDP socket of the reuseport group.
fn open_socket(bind_to: SocketAddrV4) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io_err("creating the UDP socket", e))?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| io_err("setting SO_REUSEPORT", e))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(bind_to)).map_err(|e| {
        io_err(
            &format!("failed to start listening on UDP socket {bind_to}"),
            e,
        )
    })?;
    if setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    Ok(fd)
}

impl DataPath {
    /// Creates the TUN device and sockets and starts the workers.
    pub fn start(cfg: &DataPathConfig, table: &Arc<SharedTable>) -> io::Result<DataPath> {
        let (devs, offload) = open_tun(cfg)?;
        let mut sockets = Vec::with_capacity(devs.len());
        for _ in 0..devs.len() {
            sockets.push(Arc::new(open_socket(cfg.bind)?));
        }
        // UDP GRO only pays off when the TUN side can take super-packets.
        let gro = offload
            && sockets
                .iter()
                .all(|s| setsockopt(s.as_ref(), sockopt::UdpGroSegment, &true).is_ok());
        let (wake_r, wake_w) = nix::unistd::pipe().map_err(|e| io_err("creating a pipe", e))?;
        let wake_r = Arc::new(wake_r);
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let queues = devs.len();
        let mut dp = DataPath {
            stop: stop.clone(),
            dead: dead.clone(),
            wake: Some(wake_w),
            threads: Vec::with_capacity(queues * 2),
            counters: counters.clone(),
            offload,
            queues,
        };
        for (i, (dev, sock)) in devs.into_iter().zip(sockets).enumerate() {
            let dev = Arc::new(dev);
            let shared = Shared {
                dev,
                sock,
                wake: wake_r.clone(),
                stop: stop.clone(),
                dead: dead.clone(),
                counters: counters.clone(),
                offload,
                name: cfg.name.clone(),
            };
            let tx = Tx {
                s: shared.clone(),
                table: table.reader(),
                peer_port: cfg.peer_port,
                tun_ip: cfg.tun_ip,
            };
            let rx = Rx {
                s: shared,
                own_subnet: cfg.own_subnet,
                gro,
            };
            let t = std::thread::Builder::new()
                .name(format!("udp-tx-{i}"))
                .spawn(move || tx.run())
                .map_err(|e| io_err("spawning a data-path thread", e))?;
            dp.threads.push(t);
            let t = std::thread::Builder::new()
                .name(format!("udp-rx-{i}"))
                .spawn(move || rx.run())
                .map_err(|e| io_err("spawning a data-path thread", e))?;
            dp.threads.push(t);
        }
        Ok(dp)
    }

    /// Whether the TUN side has `IFF_VNET_HDR` offloads.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Number of workers.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// The packet counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// True when a worker found its TUN queue gone (the device was deleted).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Stops and joins the workers; their descriptors close with them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.take() {
            // A byte in the pipe wakes every poller for good; the write end then closes.
            let _ = nix::unistd::write(&w, &[1]);
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a udp data-path thread panicked");
            }
        }
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What both threads of a worker share.
#[derive(Clone)]
struct Shared {
    dev: Arc<SyncDevice>,
    sock: Arc<OwnedFd>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    counters: Arc<Counters>,
    offload: bool,
    name: String,
}

impl Shared {
    /// Waits until `fd` is readable or shutdown is requested; false on shutdown.
    fn wait_readable(&self, fd: std::os::fd::BorrowedFd<'_>) -> bool {
        flannel_packet::worker::wait_readable(fd, self.wake.as_fd(), &self.stop, &self.name)
    }

    /// Handles a failed TUN read/write; returns false when the device is gone for good.
    fn tun_error(&self, what: &str, e: &io::Error, logged: &mut bool) -> bool {
        Counters::add(&self.counters.errors, 1);
        flannel_packet::worker::tun_error(&self.name, what, e, &self.dead, logged)
    }
}

/// The TUN-to-UDP thread.
struct Tx {
    s: Shared,
    table: TableReader,
    peer_port: u16,
    tun_ip: Ipv4Addr,
}

/// A small packet waiting in a TX batch slot.
#[derive(Clone)]
struct Pending {
    range: Range<usize>,
    to: SockaddrIn,
}

impl Tx {
    fn run(mut self) {
        let mut slots: Vec<Vec<u8>> = (0..TX_BATCH).map(|_| vec![0u8; TUN_BUF]).collect();
        let mut pending: Vec<Option<Pending>> = vec![None; TX_BATCH];
        let mut used = 0usize;
        let mut headers: Vec<u8> = Vec::with_capacity(4 * MAX_SEGMENTS * 120);
        let mut mmsg = MultiHeaders::<SockaddrIn>::preallocate(TX_BATCH, None);
        // Separate headers for GSO sends: nix leaves each header's control length at its
        // capacity, so headers that once carried UDP_SEGMENT must never carry plain sends.
        let mut mmsg_gso =
            MultiHeaders::<SockaddrIn>::preallocate(GSO_BATCH, Some(nix::cmsg_space!(u16)));
        let mut logged = false;
        let mut gso_ok = true;
        let hdr_len = if self.s.offload { VNET_HDR_LEN } else { 0 };
        loop {
            if self.s.stop.load(Ordering::Relaxed) {
                return;
            }
            let n = match self.s.dev.recv(&mut slots[used]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush(&slots, &mut pending, &mut used, &mut mmsg);
                    if !self.s.wait_readable(self.s.dev.as_fd()) {
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self.s.tun_error("TUN read", &e, &mut logged) {
                        return;
                    }
                    continue;
                }
            };
            Counters::add(&self.s.counters.tun_reads, 1);
            if n <= hdr_len {
                Counters::add(&self.s.counters.malformed, 1);
                continue;
            }
            let slot = &mut slots[used];
            let vnet = if self.s.offload {
                VnetHdr::decode(&slot[..VNET_HDR_LEN]).unwrap_or_default()
            } else {
                VnetHdr::default()
            };
            let pkt = &mut slot[hdr_len..n];
            let ip = match Ipv4Packet::parse(pkt) {
                Ok(p) => p,
                Err(Malformed::NotIpv4) => continue,
                Err(_) => {
                    Counters::add(&self.s.counters.malformed, 1);
                    continue;
                }
            };
            let Some(peer) = self.table.get().lookup(ip.dst) else {
                Counters::add(&self.s.counters.no_route, 1);
                self.unreachable(&slots[used][hdr_len..n], &mut logged);
                continue;
            };
            let pkt = &mut slots[used][hdr_len..hdr_len + ip.total_len];
            if !codec::decrement_ttl(pkt) {
                Counters::add(&self.s.counters.ttl_expired, 1);
                continue;
            }
            let plan = match offload::prepare_tx(&vnet, pkt, &mut headers) {
                Ok(p) => p,
                Err(e) => {
                    Counters::add(&self.s.counters.malformed, 1);
                    debug!(
                        "{}: dropping a packet from the TUN device: {e}",
                        self.s.name
                    );
                    continue;
                }
            };
            let to = SockaddrIn::from(SocketAddrV4::new(peer, self.peer_port));
            match plan {
                TxPlan::Single => {
                    pending[used] = Some(Pending {
                        range: hdr_len..hdr_len + ip.total_len,
                        to,
                    });
                    used += 1;
                    if used == TX_BATCH {
                        self.flush(&slots, &mut pending, &mut used, &mut mmsg);
                    }
                }
                TxPlan::Segmented { .. } => {
                    // Keep order with the small packets read before it: they go first. The
                    // super-packet sits in slot `idx`, which the flush does not touch; after
                    // the flush every slot is free again.
                    let idx = used;
                    self.flush(&slots, &mut pending, &mut used, &mut mmsg);
                    Counters::add(&self.s.counters.tx_super_packets, 1);
                    let pkt = &slots[idx][hdr_len..hdr_len + ip.total_len];
                    self.send_segments(
                        plan,
                        pkt,
                        &headers,
                        &to,
                        &mut mmsg_gso,
                        &mut gso_ok,
                        &mut logged,
                    );
                }
            }
        }
    }

    /// Sends the pending small packets with `sendmmsg`, skipping a message that fails.
    fn flush(
        &self,
        slots: &[Vec<u8>],
        pending: &mut [Option<Pending>],
        used: &mut usize,
        mmsg: &mut MultiHeaders<SockaddrIn>,
    ) {
        let n = *used;
        if n == 0 {
            return;
        }
        let mut errors = 0u64;
        let data: Vec<&[u8]> = (0..n)
            .map(|i| {
                let r = pending[i].as_ref().map(|p| p.range.clone()).unwrap_or(0..0);
                &slots[i][r]
            })
            .collect();
        let to: Vec<Option<SockaddrIn>> =
            (0..n).map(|i| pending[i].as_ref().map(|p| p.to)).collect();
        flannel_packet::worker::send_datagrams(
            self.s.sock.as_fd(),
            mmsg,
            &data,
            &to,
            |r| Counters::add(&self.s.counters.tx_datagrams, r.len() as u64),
            |_, e| {
                errors += 1;
                debug!("{}: sendmmsg failed: {e}", self.s.name);
            },
        );
        Counters::add(&self.s.counters.errors, errors);
        for p in pending.iter_mut().take(n) {
            *p = None;
        }
        *used = 0;
    }

    /// Sends a cut super-packet: chunks of as many segments as the 64 KiB UDP limit allows,
    /// each one message with `UDP_SEGMENT`, all in one `sendmmsg`; or datagram by datagram
    /// once the kernel has refused GSO.
    #[allow(clippy::too_many_arguments)]
    fn send_segments(
        &self,
        plan: TxPlan,
        pkt: &[u8],
        headers: &[u8],
        to: &SockaddrIn,
        mmsg: &mut MultiHeaders<SockaddrIn>,
        gso_ok: &mut bool,
        logged: &mut bool,
    ) {
        let TxPlan::Segmented {
            hdr_len,
            mss,
            count,
        } = plan
        else {
            return;
        };
        let payload_len = pkt.len() - hdr_len;
        let seg_size = hdr_len + mss;
        let seg = seg_size as u16;
        let per_send = (MAX_UDP_PAYLOAD / seg_size).clamp(1, MAX_SEGMENTS);
        let iov_of = |from: usize, to: usize| -> Vec<IoSlice<'_>> {
            let mut iov = Vec::with_capacity(2 * (to - from));
            for k in from..to {
                let (h, p) = plan.segment(k, payload_len);
                iov.push(IoSlice::new(&headers[h]));
                iov.push(IoSlice::new(&pkt[p]));
            }
            iov
        };
        let fd = self.s.sock.as_raw_fd();
        let mut i = 0;
        while i < count {
            let result = if *gso_ok {
                let mut chunks: Vec<Vec<IoSlice<'_>>> = Vec::with_capacity(GSO_BATCH);
                let mut ends = Vec::with_capacity(GSO_BATCH);
                let mut k = i;
                while k < count && chunks.len() < GSO_BATCH {
                    let end = (k + per_send).min(count);
                    chunks.push(iov_of(k, end));
                    ends.push(end);
                    k = end;
                }
                let addrs = vec![Some(*to); chunks.len()];
                let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
                sendmmsg(fd, mmsg, &chunks, &addrs, cmsg, MsgFlags::empty())
                    .map(|r| r.count())
                    .map(|sent| if sent == 0 { i } else { ends[sent - 1] })
            } else {
                sendmsg(fd, &iov_of(i, i + 1), &[], MsgFlags::empty(), Some(to)).map(|_| i + 1)
            };
            match result {
                Ok(next) if next > i => {
                    Counters::add(&self.s.counters.tx_datagrams, (next - i) as u64);
                    i = next;
                }
                Ok(_) => break,
                Err(Errno::EINTR) => {}
                Err(e @ (Errno::EINVAL | Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP))
                    if *gso_ok =>
                {
                    warn!(
                        "{}: UDP GSO send failed ({e}); sending datagram by datagram from now on",
                        self.s.name
                    );
                    *gso_ok = false;
                }
                Err(e) => {
                    Counters::add(&self.s.counters.errors, 1);
                    if !*logged {
                        warn!(
                            "{}: UDP send to {to} failed: {e} (further errors are counted only)",
                            self.s.name
                        );
                        *logged = true;
                    }
                    // Skip what failed: one chunk, or one datagram.
                    i = if *gso_ok {
                        (i + per_send).min(count)
                    } else {
                        i + 1
                    };
                }
            }
        }
    }

    /// Writes an ICMP net unreachable about `offender` back into the TUN device.
    fn unreachable(&self, offender: &[u8], logged: &mut bool) {
        let mut out = [0u8; VNET_HDR_LEN + ICMP_UNREACHABLE_MAX];
        let skip = if self.s.offload { VNET_HDR_LEN } else { 0 };
        let Some(n) = codec::net_unreachable(offender, self.tun_ip, &mut out[skip..]) else {
            return;
        };
        match self.s.dev.send(&out[..skip + n]) {
            Ok(_) => {}
            Err(e) => {
                self.s.tun_error("writing ICMP net unreachable", &e, logged);
            }
        }
    }
}

/// The UDP-to-TUN thread.
struct Rx {
    s: Shared,
    own_subnet: Ipv4Net,
    gro: bool,
}

impl Rx {
    fn run(self) {
        // Two receive buffers: a coalesced group still open at the end of one receive may
        // continue into the next, which therefore goes into the other buffer.
        let mut bufs = [vec![0u8; RX_BUF], vec![0u8; RX_BUF]];
        let mut cur = 0;
        let mut cmsg = nix::cmsg_space!(i32);
        // Accepted packets by id: (buffer, byte range).
        let mut pkts: Vec<(usize, Range<usize>)> = Vec::with_capacity(2 * MAX_SEGMENTS);
        let mut coalescer = Coalescer::new();
        let mut logged = false;
        let fd = self.s.sock.as_raw_fd();
        loop {
            if self.s.stop.load(Ordering::Relaxed) {
                return;
            }
            let received = {
                let mut iov = [IoSliceMut::new(&mut bufs[cur])];
                match recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
                    Ok(m) => {
                        let mut seg = None;
                        if let Ok(cmsgs) = m.cmsgs() {
                            for c in cmsgs {
                                if let ControlMessageOwned::UdpGroSegments(s) = c {
                                    seg = usize::try_from(s).ok().filter(|s| *s > 0);
                                }
                            }
                        }
                        Ok((m.bytes, seg, m.flags.contains(MsgFlags::MSG_TRUNC)))
                    }
                    Err(e) => Err(e),
                }
            };
            let (n, seg, truncated) = match received {
                Ok(r) => r,
                Err(Errno::EAGAIN) => {
                    // Nothing more right now: whatever is held goes out before sleeping.
                    coalescer.finish();
                    if !self.write_groups(&bufs, &pkts, &mut coalescer, &mut logged) {
                        return;
                    }
                    pkts.clear();
                    if !self.s.wait_readable(self.s.sock.as_fd()) {
                        return;
                    }
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    Counters::add(&self.s.counters.errors, 1);
                    if !logged {
                        warn!("{}: UDP receive failed: {e}", self.s.name);
                        logged = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
            };
            if truncated {
                Counters::add(&self.s.counters.malformed, 1);
                continue;
            }
            let seg = seg.unwrap_or(n).max(1);
            Counters::add(&self.s.counters.rx_datagrams, n.div_ceil(seg) as u64);
            let (mut bad, mut ttl, mut foreign) = (0u64, 0u64, 0u64);
            let mut off = 0;
            while off < n {
                let end = (off + seg).min(n);
                let d = &mut bufs[cur][off..end];
                match Ipv4Packet::parse(d) {
                    // Peers only ever send us packets for our subnet, never from it: anything
                    // else would use the tunnel to reach elsewhere or to spoof our addresses.
                    Ok(p)
                        if !self.own_subnet.contains(&p.dst)
                            || self.own_subnet.contains(&p.src) =>
                    {
                        foreign += 1
                    }
                    Ok(p) => {
                        let pkt = &mut d[..p.total_len];
                        if codec::decrement_ttl(pkt) {
                            if self.s.offload {
                                coalescer.push(pkts.len(), pkt);
                            }
                            pkts.push((cur, off..off + p.total_len));
                        } else {
                            ttl += 1;
                        }
                    }
                    Err(_) => bad += 1,
                }
                off = end;
            }
            Counters::add(&self.s.counters.malformed, bad);
            Counters::add(&self.s.counters.ttl_expired, ttl);
            Counters::add(&self.s.counters.not_ours, foreign);
            if !self.s.offload {
                for (b, r) in pkts.drain(..) {
                    Counters::add(&self.s.counters.tun_writes, 1);
                    if let Err(e) = self.s.dev.send(&bufs[b][r])
                        && !self.s.tun_error("TUN write", &e, &mut logged)
                    {
                        return;
                    }
                }
                continue;
            }
            // A group still open may continue into the next receive only if it lies wholly in
            // this buffer: the next receive overwrites the other one.
            if !self.gro
                || coalescer
                    .open_first()
                    .is_some_and(|first| pkts[first].0 != cur)
            {
                coalescer.finish();
            }
            if !self.write_groups(&bufs, &pkts, &mut coalescer, &mut logged) {
                return;
            }
            let keep = coalescer.open_first().unwrap_or(pkts.len());
            pkts.drain(..keep);
            coalescer.rebase(keep);
            if !pkts.is_empty() {
                cur ^= 1;
            }
        }
    }

    /// Writes the closed groups to the TUN device, one `writev` each, and forgets them.
    /// Returns false when the device is gone.
    fn write_groups(
        &self,
        bufs: &[Vec<u8>; 2],
        pkts: &[(usize, Range<usize>)],
        coalescer: &mut Coalescer,
        logged: &mut bool,
    ) -> bool {
        let groups = coalescer.groups();
        let mut supers = 0u64;
        let mut ok = true;
        for g in groups.iter() {
            let vnet = g.vnet.encode();
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS + 2];
            iov[0] = IoSlice::new(&vnet);
            let used = if g.hdr_len == 0 {
                let (b, r) = &pkts[g.first];
                iov[1] = IoSlice::new(&bufs[*b][r.clone()]);
                2
            } else {
                supers += 1;
                iov[1] = IoSlice::new(&g.hdr[..g.hdr_len]);
                for (k, (b, r)) in pkts[g.first..g.first + g.count].iter().enumerate() {
                    iov[k + 2] = IoSlice::new(&bufs[*b][r.start + g.hdr_len..r.end]);
                }
                g.count + 2
            };
            Counters::add(&self.s.counters.tun_writes, 1);
            if let Err(e) = self.s.dev.send_vectored(&iov[..used])
                && !self.s.tun_error("TUN write", &e, logged)
            {
                ok = false;
                break;
            }
        }
        groups.clear();
        Counters::add(&self.s.counters.rx_super_packets, supers);
        ok
    }
}
