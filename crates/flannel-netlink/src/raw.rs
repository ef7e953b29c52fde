//! A second, synchronous rtnetlink socket used for every write request.
//!
//! rtnetlink's `Handle` sends one request per netlink datagram and lets its connection task
//! send one datagram per wake-up, so N writes cost N round trips through a channel, the task and
//! the kernel. rtnetlink (NETLINK_ROUTE) requests are processed by the kernel synchronously
//! inside `sendmsg`, one message after another, so the fastest correct way to apply many of
//! them is to pack as many messages as fit into one datagram and read the answers back:
//!
//! * every message carries a distinct sequence number;
//! * only the *last* message of a datagram asks for an acknowledgement (`NLM_F_ACK`); the kernel
//!   reports an error for any other message that fails (it always acks failures), so "final ack
//!   seen and no error for message i" means message i succeeded;
//! * `NETLINK_CAP_ACK` keeps error messages small and `NETLINK_EXT_ACK` adds the kernel's
//!   explanation text;
//! * the receive buffer is enlarged and datagrams are sized so that even an all-failing datagram
//!   cannot overrun it; if it overruns anyway (`ENOBUFS`), the affected operations are reported
//!   as unconfirmed rather than guessed.

use std::io;
use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Largest datagram we send; well below the default `wmem_default` (212992) which bounds a
/// netlink datagram.
const MAX_DATAGRAM: usize = 64 * 1024;
/// Receive buffer we ask for (the kernel doubles it). Needs CAP_NET_ADMIN; without it we fall
/// back to what `rmem_max` allows and send smaller datagrams.
const WANTED_RCVBUF: usize = 4 * 1024 * 1024;
/// Conservative kernel memory charge of one small error message in the receive queue.
const ERROR_TRUESIZE: usize = 1280;
/// Upper bound of messages per datagram, whatever the buffer size.
const MAX_MSGS: usize = 1024;
/// How long to wait for the final acknowledgement if it was not already queued when `sendmsg`
/// returned (it always is for NETLINK_ROUTE; this only bounds pathological cases).
const ACK_WAIT_MS: u16 = 5000;

const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied.
    Ok,
    /// Rejected with this (positive) errno and optional extended-ack text.
    Failed { errno: i32, message: Option<String> },
    /// Unknown: answers were lost or the send failed.
    Unconfirmed(String),
}

/// One request: the message and the `NLM_F_*` flags besides REQUEST/ACK (CREATE, REPLACE, EXCL).
pub(crate) type Request = (RouteNetlinkMessage, u16);

/// The synchronous write socket.
pub(crate) struct RawSocket {
    sock: Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
    max_msgs: usize,
}

impl RawSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.set_non_blocking(true)?;
        // Both options exist since Linux 4.2/4.12; without them we still work, with larger
        // error messages and no explanation text.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        if setsockopt(&sock, sockopt::RcvBufForce, &WANTED_RCVBUF).is_err() {
            let _ = sock.set_rx_buf_sz(WANTED_RCVBUF as libc::c_int);
        }
        let rcvbuf = sock.get_rx_buf_sz().unwrap_or(212_992);
        let max_msgs = (rcvbuf / ERROR_TRUESIZE).clamp(16, MAX_MSGS);
        tracing::trace!(rcvbuf, max_msgs, "opened rtnetlink write socket");
        Ok(Self {
            sock,
            seq: 0,
            tx: Vec::with_capacity(MAX_DATAGRAM),
            rx: Vec::with_capacity(MAX_DATAGRAM),
            max_msgs,
        })
    }

    /// Sends one datagram with as many of `reqs` as fit and returns their outcomes in order.
    /// Fewer outcomes than requests means the rest must be passed again: a request that did not
    /// fit is parked in `pending` and goes first next time. The caller loops, and can yield to
    /// its executor between datagrams.
    pub(crate) fn execute_some(
        &mut self,
        reqs: &mut dyn Iterator<Item = Request>,
        pending: &mut Option<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> Vec<Outcome> {
        self.tx.clear();
        let base = self.seq.wrapping_add(1);
        let mut count: usize = 0;
        let mut last_hdr_off = 0;
        while count < self.max_msgs {
            let mut nl = match pending.take() {
                Some(nl) => nl,
                None => match reqs.next() {
                    Some((msg, flags)) => {
                        let mut nl = NetlinkMessage::from(msg);
                        nl.header.flags = NLM_F_REQUEST | flags;
                        nl
                    }
                    None => break,
                },
            };
            nl.header.sequence_number = base.wrapping_add(count as u32);
            nl.finalize();
            let len = nl.buffer_len();
            // Messages inside a datagram start 4-byte aligned (NLMSG_ALIGN).
            let off = (self.tx.len() + 3) & !3;
            if count > 0 && off + len > MAX_DATAGRAM {
                *pending = Some(nl);
                break;
            }
            self.tx.resize(off + len, 0);
            nl.serialize(&mut self.tx[off..off + len]);
            last_hdr_off = off;
            count += 1;
        }
        if count == 0 {
            return Vec::new();
        }
        self.seq = base.wrapping_add(count as u32 - 1);
        // Only the last message asks for an ack (see module docs).
        let flags_off = last_hdr_off + 6;
        let flags = u16::from_ne_bytes([self.tx[flags_off], self.tx[flags_off + 1]]) | NLM_F_ACK;
        self.tx[flags_off..flags_off + 2].copy_from_slice(&flags.to_ne_bytes());

        let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
        if let Err(e) = self.send() {
            return vec![Outcome::Unconfirmed(format!("sendmsg failed: {e}")); count];
        }
        let mut overrun = false;
        let mut final_seen = false;
        let mut waited = false;
        while !final_seen {
            self.rx.clear();
            self.rx.reserve(MAX_DATAGRAM);
            match self.sock.recv(&mut self.rx, 0) {
                Ok(_) => {
                    final_seen = parse_answers(&self.rx, base, &mut outcomes);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => overrun = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // After an overrun the final ack may be among the lost messages: do not
                    // wait for it.
                    if overrun || waited || !self.wait_readable() {
                        break;
                    }
                    waited = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading rtnetlink acknowledgements");
                    break;
                }
            }
        }
        let lost_reason = if overrun {
            "netlink receive buffer overrun"
        } else {
            "no acknowledgement from the kernel"
        };
        outcomes
            .into_iter()
            .map(|o| match o {
                Some(o) => o,
                None if final_seen && !overrun => Outcome::Ok,
                None => Outcome::Unconfirmed(lost_reason.to_string()),
            })
            .collect()
    }

    fn send(&self) -> io::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(&self.tx, &kernel, 0) {
                Ok(n) if n == self.tx.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short send: {n} of {} bytes",
                        self.tx.len()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_readable(&self) -> bool {
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::from(ACK_WAIT_MS)), Ok(n) if n > 0)
    }
}

/// Parses one received datagram of answers to the requests numbered `base..base+len`.
/// Returns true when the acknowledgement of the last request was among them.
fn parse_answers(buf: &[u8], base: u32, outcomes: &mut [Option<Outcome>]) -> bool {
    let mut final_seen = false;
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let h = &buf[off..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > h.len() {
            break;
        }
        let kind = u16::from_ne_bytes([h[4], h[5]]);
        let flags = u16::from_ne_bytes([h[6], h[7]]);
        let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        let payload = &h[NLMSG_HDRLEN..len];
        let idx = seq.wrapping_sub(base) as usize;
        if kind == NLMSG_ERROR && payload.len() >= 4 && idx < outcomes.len() {
            let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
            outcomes[idx] = Some(if code == 0 {
                Outcome::Ok
            } else {
                Outcome::Failed {
                    errno: code.abs(),
                    message: ext_ack_message(payload, flags),
                }
            });
            if idx == outcomes.len() - 1 {
                final_seen = true;
            }
        }
        off += (len + 3) & !3;
    }
    final_seen
}

/// Extracts NLMSGERR_ATTR_MSG from an NLMSG_ERROR payload (error code, echoed request, TLVs).
fn ext_ack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let l = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
        (l + 3) & !3
    };
    let mut off = 4 + echoed;
    while off + 4 <= payload.len() {
        let a = &payload[off..];
        let alen = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let akind = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
        if alen < 4 || alen > a.len() {
            break;
        }
        if akind == NLMSGERR_ATTR_MSG {
            let s = &a[4..alen];
            let s = s.split(|b| *b == 0).next().unwrap_or(s);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        off += (alen + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{NetnsTarget, run_in_netns};
    use crate::route::Route;

    /// With a tiny receive buffer and a datagram of 1000 failing requests, the kernel drops
    /// answers. Nothing may be reported as applied, the lost ones must be "unconfirmed", and
    /// the call must return promptly.
    #[test]
    fn overrun_reports_unconfirmed_not_success() {
        run_in_netns(NetnsTarget::Fresh, || async {
            let mut raw = RawSocket::open().unwrap();
            raw.sock.set_rx_buf_sz(1024).unwrap();
            raw.max_msgs = 1000;
            let reqs: Vec<Request> = (0..1000u32)
                .map(|i| {
                    let net = format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap();
                    let r = Route::blackhole(net);
                    (
                        RouteNetlinkMessage::DelRoute(r.to_message(true).unwrap()),
                        0,
                    )
                })
                .collect();
            let started = std::time::Instant::now();
            let mut pending = None;
            let out = raw.execute_some(&mut reqs.into_iter(), &mut pending);
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            assert_eq!(out.len(), 1000);
            assert!(!out.contains(&Outcome::Ok));
            let unconfirmed = out
                .iter()
                .filter(|o| matches!(o, Outcome::Unconfirmed(_)))
                .count();
            let failed = out
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Outcome::Failed {
                            errno: libc::ESRCH,
                            ..
                        }
                    )
                })
                .count();
            assert!(unconfirmed > 0, "expected an overrun with a 1 KiB buffer");
            assert_eq!(failed + unconfirmed, 1000);
        })
        .unwrap();
    }

    /// An NLMSG_ERROR as the kernel sends it with CAP_ACK and EXT_ACK: header, errno, the
    /// echoed request header, one NLMSGERR_ATTR_MSG.
    fn error_msg(seq: u32, code: i32, text: Option<&str>) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&code.to_ne_bytes());
        // echoed request header: len 32, type RTM_NEWROUTE (24), flags, seq, pid
        payload.extend_from_slice(&32u32.to_ne_bytes());
        payload.extend_from_slice(&24u16.to_ne_bytes());
        payload.extend_from_slice(&0x0501u16.to_ne_bytes());
        payload.extend_from_slice(&seq.to_ne_bytes());
        payload.extend_from_slice(&0u32.to_ne_bytes());
        let mut flags = NLM_F_CAPPED;
        if let Some(t) = text {
            flags |= NLM_F_ACK_TLVS;
            let alen = 4 + t.len() + 1;
            payload.extend_from_slice(&(alen as u16).to_ne_bytes());
            payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            payload.extend_from_slice(t.as_bytes());
            payload.push(0);
            while payload.len() % 4 != 0 {
                payload.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&1234u32.to_ne_bytes());
        m.extend_from_slice(&payload);
        m
    }

    #[test]
    fn maps_errors_and_final_ack_by_sequence() {
        let mut outcomes = vec![None; 3];
        let mut dgram = error_msg(101, -17, Some("File exists here"));
        assert!(!parse_answers(&dgram, 100, &mut outcomes));
        dgram = error_msg(102, 0, None);
        assert!(parse_answers(&dgram, 100, &mut outcomes));
        assert_eq!(outcomes[0], None);
        assert_eq!(
            outcomes[1],
            Some(Outcome::Failed {
                errno: 17,
                message: Some("File exists here".into())
            })
        );
        assert_eq!(outcomes[2], Some(Outcome::Ok));
    }

    #[test]
    fn ignores_foreign_sequence_numbers_and_handles_wraparound() {
        let mut outcomes = vec![None; 2];
        // 5 belongs to an older exchange, u32::MAX is index 0 of a batch based at u32::MAX.
        let mut dgram = error_msg(5, -2, None);
        dgram.extend(error_msg(u32::MAX, -2, None));
        dgram.extend(error_msg(0, 0, None));
        assert!(parse_answers(&dgram, u32::MAX, &mut outcomes));
        assert_eq!(
            outcomes[0],
            Some(Outcome::Failed {
                errno: 2,
                message: None
            })
        );
        assert_eq!(outcomes[1], Some(Outcome::Ok));
    }

    #[test]
    fn truncated_datagram_is_not_misread() {
        let mut outcomes = vec![None; 1];
        let dgram = error_msg(7, -2, Some("x"));
        assert!(!parse_answers(&dgram[..20], 7, &mut outcomes));
        assert_eq!(outcomes[0], None);
    }
}
