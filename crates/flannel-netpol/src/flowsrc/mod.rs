//! The kernel's own sources of flow records, read by the policy enforcer without touching the
//! packet path: conntrack events ([`conntrack`]) for flows the kernel forwarded, and NFLOG
//! records of the policy drop rules for packets it dropped.
//!
//! Both are netlink multicast readers: the kernel queues events to the socket and never waits
//! for it, so a slow reader loses events (counted from `ENOBUFS`) instead of slowing traffic.
//! The decoders are pure functions over the received bytes, unit-tested on frames captured
//! from the kernel; the socket parts are tested in network namespaces of their own.

pub mod conntrack;
pub mod ctdump;
pub mod nflog;
mod nfnl;

/// A received netlink datagram that does not decode as the kernel documents it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A netlink message header inconsistent with the datagram.
    #[error("bad netlink framing at byte {offset}: {what}")]
    Framing {
        /// Offset of the message in the datagram.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// An attribute header inconsistent with its container.
    #[error("bad attribute in {what}")]
    Attribute {
        /// The container (message or nested attribute) being read.
        what: String,
        /// netlink-packet-core's reason.
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    /// A fixed-size attribute of the wrong size.
    #[error("{what} has {got} bytes, expected {expected}")]
    Length {
        /// The attribute.
        what: String,
        /// Its size in the kernel's headers.
        expected: usize,
        /// The size received.
        got: usize,
    },
}

/// A netlink socket operation of a source that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct SocketError {
    /// The operation (`subscribe to conntrack NEW events`, ...).
    pub what: String,
    /// The kernel's answer.
    #[source]
    pub source: std::io::Error,
}

/// Why a source's receive failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The datagram did not decode.
    #[error("undecodable event datagram")]
    Decode(#[from] DecodeError),
}

/// A subscribed netlink socket and its receive buffer: what both sources read from, blocking
/// (until the timeout of `SO_RCVTIMEO`) or, to drain what has queued up, not at all.
struct EventSocket {
    socket: netlink_sys::Socket,
    buf: Vec<u8>,
    overruns: u64,
    /// What a receive error says it was doing (`receive conntrack events`).
    what: &'static str,
}

impl EventSocket {
    fn new(socket: netlink_sys::Socket, what: &'static str) -> EventSocket {
        EventSocket {
            socket,
            buf: vec![0; 1 << 16],
            overruns: 0,
            what,
        }
    }

    /// Appends the decoded events of the next datagram to `out`; whether one was there (or an
    /// overrun was counted).
    fn receive<E>(
        &mut self,
        out: &mut Vec<E>,
        wait: bool,
        decode: fn(&[u8]) -> Result<Vec<E>, DecodeError>,
    ) -> Result<bool, RecvError> {
        let before = self.overruns;
        match self.recv_datagram(wait)? {
            Some(datagram) => {
                out.extend(decode(datagram)?);
                Ok(true)
            }
            None => Ok(self.overruns > before),
        }
    }

    /// The next datagram; `None` after the timeout (or at once when not `wait`ing and
    /// nothing is queued) or after an overrun (`ENOBUFS`, counted).
    fn recv_datagram(&mut self, wait: bool) -> Result<Option<&[u8]>, SocketError> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        match self.socket.recv(&mut &mut self.buf[..], flags) {
            Ok(n) => Ok(Some(&self.buf[..n])),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.overruns += 1;
                Ok(None)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(SocketError {
                what: self.what.into(),
                source,
            }),
        }
    }
}

/// The `map_err` of a socket step: the error says which `what` failed.
fn failed(what: &str) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError {
        what: what.to_string(),
        source,
    }
}

/// A bound `NETLINK_NETFILTER` socket, the start of every source and of the table dump;
/// `purpose` names it in errors (`conntrack event`, `NFLOG`, ...).
fn netfilter_socket(purpose: &str) -> Result<netlink_sys::Socket, SocketError> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let mut socket =
        Socket::new(NETLINK_NETFILTER).map_err(failed("open a NETLINK_NETFILTER socket"))?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .map_err(failed(&format!("bind the {purpose} socket")))?;
    Ok(socket)
}

/// Sets `SO_RCVTIMEO` on `fd`, so a blocking `recv` returns (with `EAGAIN`) after `timeout`:
/// a reader thread can then notice it should stop. netlink-sys has no setter for it.
#[allow(unsafe_code)]
fn set_recv_timeout(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: fd is an open socket owned by the caller; tv outlives the call and its size is
    // passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
