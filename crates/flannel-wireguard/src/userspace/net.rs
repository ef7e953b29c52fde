//! The UDP side: one socket per worker, bound with `SO_REUSEPORT` to the listen port on every
//! address, and the batched sends.
//!
//! Sockets are IPv6 with `IPV6_V6ONLY` off, so one socket serves IPv4 peers (as v4-mapped
//! addresses) and IPv6 peers alike; where IPv6 is disabled they fall back to IPv4 only.
//! Receives use `UDP_GRO` (a run of equal-sized datagrams from one source per call). Sends go
//! out as an [`OutBatch`]: encrypted datagrams laid out back to back in one buffer; a run of
//! equal-sized datagrams to one endpoint (the segments of one TSO super-packet) becomes one
//! `sendmsg` with `UDP_SEGMENT`, the kernel cutting at the datagram boundaries, and the
//! remaining single datagrams go out together in one `sendmmsg`.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, MultiHeaders, SockFlag, SockType, SockaddrIn,
    SockaddrIn6, SockaddrStorage, bind, getsockname, sendmsg, setsockopt, socket, sockopt,
};
use tracing::warn;

use super::metrics::{DropReason, Metrics};

/// Socket buffer sizes asked for (root may exceed `rmem_max`/`wmem_max`).
const SOCKET_BUFFER: usize = 8 << 20;
/// Most datagrams one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one send (65535 - IPv4 header - UDP header).
const MAX_UDP_PAYLOAD: usize = 65507;

/// The workers' sockets, all bound to one port.
pub(crate) struct Sockets {
    /// One per worker.
    pub fds: Vec<OwnedFd>,
    /// The bound port.
    pub port: u16,
    /// IPv6 dual-stack sockets (false: IPv4 only).
    pub dual: bool,
}

fn err(what: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

fn open_one(port: u16, dual: bool, fwmark: u32) -> io::Result<(OwnedFd, u16)> {
    let family = if dual {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| err("creating the UDP socket", e))?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| err("setting SO_REUSEPORT", e))?;
    if dual {
        setsockopt(&fd, sockopt::Ipv6V6Only, &false).map_err(|e| err("clearing IPV6_V6ONLY", e))?;
    }
    if fwmark != 0 {
        setsockopt(&fd, sockopt::Mark, &fwmark).map_err(|e| err("setting SO_MARK", e))?;
    }
    let bound = if dual {
        let a = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
        bind(fd.as_raw_fd(), &a)
    } else {
        let a = SockaddrIn::new(0, 0, 0, 0, port);
        bind(fd.as_raw_fd(), &a)
    };
    bound.map_err(|e| err(&format!("binding UDP port {port}"), e))?;
    if setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    let local: SockaddrStorage =
        getsockname(fd.as_raw_fd()).map_err(|e| err("reading the bound port", e))?;
    let port = canonical(&local).map_or(port, |a| a.port());
    Ok((fd, port))
}

impl Sockets {
    /// Binds `n` sockets to `port` (0: the kernel picks one, shared by all), dual-stack if
    /// the kernel has IPv6.
    pub fn bind(n: usize, port: u16, fwmark: u32) -> io::Result<Sockets> {
        let dual = match open_one(port, true, fwmark) {
            Ok(first) => Some(first),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => None,
        };
        let (first, dual) = match dual {
            Some(f) => (f, true),
            None => (open_one(port, false, fwmark)?, false),
        };
        let (fd, port) = first;
        let mut fds = vec![fd];
        for _ in 1..n.max(1) {
            fds.push(open_one(port, dual, fwmark)?.0);
        }
        Ok(Sockets { fds, port, dual })
    }

    /// Sets `SO_MARK` on every socket.
    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        for fd in &self.fds {
            setsockopt(fd, sockopt::Mark, &mark).map_err(|e| err("setting SO_MARK", e))?;
        }
        Ok(())
    }
}

/// The address a socket of this kind sends to for `to` (`None`: unreachable from it).
pub(crate) fn wire_addr(to: SocketAddr, dual: bool) -> Option<SockaddrStorage> {
    match (to, dual) {
        (SocketAddr::V4(a), true) => Some(SockaddrStorage::from(SocketAddr::V6(
            SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        ))),
        (SocketAddr::V6(a), false) => a
            .ip()
            .to_ipv4_mapped()
            .map(|v4| SockaddrStorage::from(SocketAddr::new(IpAddr::V4(v4), a.port()))),
        (a, _) => Some(SockaddrStorage::from(a)),
    }
}

/// A received source address, v4-mapped addresses as plain IPv4.
pub(crate) fn canonical(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()));
    }
    let v6 = a.as_sockaddr_in6()?;
    let ip = v6.ip();
    Some(match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
        None => SocketAddr::new(IpAddr::V6(ip), v6.port()),
    })
}

/// Encrypted datagrams waiting to be sent, back to back in one buffer.
pub(crate) struct OutBatch {
    /// The bytes.
    pub buf: Vec<u8>,
    /// Used bytes of `buf`.
    pub len: usize,
    items: Vec<(Range<usize>, SockaddrStorage)>,
    mmsg: MultiHeaders<SockaddrStorage>,
    gso_ok: bool,
    logged: bool,
}

impl OutBatch {
    /// A batch of `cap` bytes and at most `items` datagrams.
    pub fn new(cap: usize, items: usize) -> OutBatch {
        OutBatch {
            buf: vec![0u8; cap],
            len: 0,
            items: Vec::with_capacity(items),
            mmsg: MultiHeaders::preallocate(items, None),
            gso_ok: true,
            logged: false,
        }
    }

    /// Free bytes at the end.
    #[inline]
    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Whether the batch should be sent before more is added.
    #[inline]
    pub fn full(&self, need: usize) -> bool {
        self.room() < need || self.items.len() == self.items.capacity()
    }

    /// The free space, for the next datagram to be written into.
    #[inline]
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Records `n` bytes written at the tail as one datagram to `to`.
    #[inline]
    pub fn commit(&mut self, n: usize, to: SockaddrStorage) {
        self.items.push((self.len..self.len + n, to));
        self.len += n;
    }

    /// Sends everything; counts failures as `Io` drops.
    pub fn flush(&mut self, fd: &OwnedFd, metrics: &Metrics) {
        let mut i = 0;
        let mut singles: Vec<usize> = Vec::new();
        while i < self.items.len() {
            let run = self.gso_run(i);
            if run > 1 && self.gso_ok {
                self.send_singles(fd, &mut singles, metrics);
                self.send_gso(fd, i, run, metrics);
            } else {
                singles.extend(i..i + run);
            }
            i += run;
        }
        self.send_singles(fd, &mut singles, metrics);
        self.items.clear();
        self.len = 0;
    }

    /// How many datagrams from `i` on form one GSO send: contiguous, one destination, equal
    /// sizes except a shorter last one.
    fn gso_run(&self, i: usize) -> usize {
        let (first, to) = &self.items[i];
        let size = first.len();
        let mut n = 1;
        let mut end = first.end;
        while i + n < self.items.len() && n < MAX_GSO_SEGMENTS {
            let (r, t) = &self.items[i + n];
            if r.start != end
                || t != to
                || r.len() > size
                || end - first.start + r.len() > MAX_UDP_PAYLOAD
            {
                break;
            }
            n += 1;
            end = r.end;
            if r.len() < size {
                break;
            }
        }
        n
    }

    fn send_gso(&mut self, fd: &OwnedFd, i: usize, n: usize, metrics: &Metrics) {
        let (first, to) = &self.items[i];
        let range = first.start..self.items[i + n - 1].0.end;
        let seg = first.len() as u16;
        let iov = [IoSlice::new(&self.buf[range.clone()])];
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        loop {
            match sendmsg(fd.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(to)) {
                Ok(_) => {
                    Metrics::add(&metrics.tx_bytes, range.len() as u64);
                    return;
                }
                Err(Errno::EINTR) => continue,
                Err(e @ (Errno::EINVAL | Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)) => {
                    warn!("UDP GSO send failed ({e}); sending datagram by datagram from now on");
                    self.gso_ok = false;
                    let mut singles: Vec<usize> = (i..i + n).collect();
                    self.send_singles(fd, &mut singles, metrics);
                    return;
                }
                Err(e) => {
                    self.failed(e, n, metrics);
                    return;
                }
            }
        }
    }

    fn send_singles(&mut self, fd: &OwnedFd, which: &mut Vec<usize>, metrics: &Metrics) {
        let data: Vec<&[u8]> = which
            .iter()
            .map(|&k| &self.buf[self.items[k].0.clone()])
            .collect();
        let to: Vec<Option<SockaddrStorage>> =
            which.iter().map(|&k| Some(self.items[k].1)).collect();
        let logged = &mut self.logged;
        flannel_packet::worker::send_datagrams(
            fd.as_fd(),
            &mut self.mmsg,
            &data,
            &to,
            |r| {
                let bytes: usize = data[r].iter().map(|d| d.len()).sum();
                Metrics::add(&metrics.tx_bytes, bytes as u64);
            },
            |_, e| send_failed(logged, e, 1, metrics),
        );
        which.clear();
    }

    fn failed(&mut self, e: Errno, n: usize, metrics: &Metrics) {
        send_failed(&mut self.logged, e, n, metrics);
    }
}

/// Counts `n` datagrams lost to a failed send; logs the first failure only.
fn send_failed(logged: &mut bool, e: Errno, n: usize, metrics: &Metrics) {
    metrics.dropped(DropReason::Io, n as u64);
    if !*logged {
        warn!("UDP send failed: {e} (further errors are counted only)");
        *logged = true;
    }
}
