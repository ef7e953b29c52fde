//! A second rtnetlink socket used for every write request, driven by tokio's reactor.
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
//!
//! # Never blocking the runtime
//!
//! flanneld runs everything on one current-thread tokio runtime, so a thread blocked here would
//! stall every other task (peer watch, health endpoint, signals). The socket is non-blocking and
//! registered with tokio's reactor (the netlink crate's own [`TokioSocket`]): answers already
//! queued when `sendmsg` returns (always the case for NETLINK_ROUTE) are read at once, and if
//! they are not, the task waits for readiness on the reactor, bounded by a tokio timer, and the
//! runtime runs other tasks meanwhile.
//!
//! A call may be cancelled (its future dropped) while it waits: the answers it leaves in the
//! socket's queue carry older sequence numbers and are ignored by the next call.

use std::future::poll_fn;
use std::io;

use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};
use tokio::time::{Duration, Instant, timeout_at};

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
const ACK_WAIT: Duration = Duration::from_secs(5);

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

/// The write socket.
pub(crate) struct RawSocket {
    sock: TokioSocket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
    max_msgs: usize,
    ack_wait: Duration,
}

/// A datagram built by [`RawSocket::pack`], waiting to be exchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed {
    /// Sequence number of its first request.
    base: u32,
    /// How many requests it holds.
    count: usize,
}

/// How reading the answers to one datagram ended.
struct Answers {
    /// The acknowledgement of the datagram's last request was read.
    final_seen: bool,
    /// The kernel dropped answers (`ENOBUFS`).
    overrun: bool,
}

impl RawSocket {
    /// Opens the socket in the calling thread's network namespace and registers it with the
    /// current tokio runtime's reactor (the caller must be inside a runtime context).
    pub(crate) fn open() -> io::Result<Self> {
        // Non-blocking and registered with the reactor; needs a runtime context.
        let mut async_sock = TokioSocket::new(NETLINK_ROUTE)?;
        let sock = async_sock.socket_mut();
        sock.bind_auto()?;
        // Both options exist since Linux 4.2/4.12; without them we still work, with larger
        // error messages and no explanation text.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        if setsockopt(&*sock, sockopt::RcvBufForce, &WANTED_RCVBUF).is_err() {
            let _ = sock.set_rx_buf_sz(WANTED_RCVBUF as libc::c_int);
        }
        let rcvbuf = sock.get_rx_buf_sz().unwrap_or(212_992);
        let max_msgs = (rcvbuf / ERROR_TRUESIZE).clamp(16, MAX_MSGS);
        tracing::trace!(rcvbuf, max_msgs, "opened rtnetlink write socket");
        Ok(Self {
            sock: async_sock,
            seq: 0,
            tx: Vec::with_capacity(MAX_DATAGRAM),
            rx: Vec::with_capacity(MAX_DATAGRAM),
            max_msgs,
            ack_wait: ACK_WAIT,
        })
    }

    /// Sends the datagram [`RawSocket::pack`] built and returns the outcomes of its requests
    /// in order.
    pub(crate) async fn exchange(&mut self, packed: Packed) -> Vec<Outcome> {
        let Packed { base, count } = packed;
        if let Err(e) = self.send().await {
            return vec![Outcome::Unconfirmed(format!("sendmsg failed: {e}")); count];
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
        let answers = self.read_answers(base, &mut outcomes).await;
        let lost_reason = if answers.overrun {
            "netlink receive buffer overrun"
        } else {
            "no acknowledgement from the kernel"
        };
        outcomes
            .into_iter()
            .map(|o| match o {
                Some(o) => o,
                None if answers.final_seen && !answers.overrun => Outcome::Ok,
                None => Outcome::Unconfirmed(lost_reason.to_string()),
            })
            .collect()
    }

    /// Encodes as many of `reqs` as fit into one datagram (up to `max_msgs`), numbering them
    /// from the next sequence number, and sets `NLM_F_ACK` on the last one; `None` when there
    /// is nothing left to send. A request that did not fit is parked in `pending` and goes
    /// first next time.
    ///
    /// This is synchronous and separate from [`RawSocket::exchange`] so the request iterator,
    /// which need not be `Send`, is never held across an await.
    pub(crate) fn pack(
        &mut self,
        reqs: &mut dyn Iterator<Item = Request>,
        pending: &mut Option<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> Option<Packed> {
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
            return None;
        }
        self.seq = base.wrapping_add(count as u32 - 1);
        // Only the last message asks for an ack (see module docs).
        let flags_off = last_hdr_off + 6;
        let flags = u16::from_ne_bytes([self.tx[flags_off], self.tx[flags_off + 1]]) | NLM_F_ACK;
        self.tx[flags_off..flags_off + 2].copy_from_slice(&flags.to_ne_bytes());
        Some(Packed { base, count })
    }

    /// Sends the transmit buffer to the kernel. A netlink send to the kernel does not wait for
    /// buffer space, but should it ever report `EWOULDBLOCK` the task waits for writability on
    /// the reactor, bounded like the acknowledgement wait.
    async fn send(&self) -> io::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        let sent = match self.sock.socket_ref().send_to(&self.tx, &kernel, 0) {
            Err(e) if retry(&e) => {
                let send = poll_fn(|cx| self.sock.poll_send_to(cx, &self.tx, &kernel));
                timeout_at(Instant::now() + self.ack_wait, send)
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
            }
            other => other,
        }?;
        if sent != self.tx.len() {
            return Err(io::Error::other(format!(
                "short send: {sent} of {} bytes",
                self.tx.len()
            )));
        }
        Ok(())
    }

    /// Reads answer datagrams for the requests numbered from `base` into `outcomes` until the
    /// final acknowledgement is seen, answers are known to be lost, or the wait times out.
    async fn read_answers(&mut self, base: u32, outcomes: &mut [Option<Outcome>]) -> Answers {
        let mut answers = Answers {
            final_seen: false,
            overrun: false,
        };
        let mut deadline = None;
        loop {
            // After an overrun the final ack may be among the lost messages: do not wait for it.
            let wait = deadline.filter(|_| !answers.overrun);
            match self.recv(wait).await {
                Ok(true) => {
                    if parse_answers(&self.rx, base, outcomes) {
                        answers.final_seen = true;
                        return answers;
                    }
                }
                Ok(false) if deadline.is_none() && !answers.overrun => {
                    deadline = Some(Instant::now() + self.ack_wait);
                }
                Ok(false) => return answers,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => answers.overrun = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading rtnetlink acknowledgements");
                    return answers;
                }
            }
        }
    }

    /// Reads one datagram into the receive buffer. With `wait == None` it only takes what is
    /// already queued; otherwise it waits on the reactor until `wait`. Returns false when
    /// nothing came.
    async fn recv(&mut self, wait: Option<Instant>) -> io::Result<bool> {
        let Self { sock, rx, .. } = self;
        rx.clear();
        rx.reserve(MAX_DATAGRAM);
        match sock.socket_ref().recv(rx, 0) {
            Ok(_) => return Ok(true),
            Err(e) if !retry(&e) => return Err(e),
            Err(_) => {}
        }
        let Some(deadline) = wait else {
            return Ok(false);
        };
        // `poll_recv` waits for readiness and clears tokio's memory of it when the queue turns
        // out empty, so a stale readiness cannot make this spin.
        match timeout_at(deadline, poll_fn(|cx| sock.poll_recv(cx, rx))).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => Ok(false),
        }
    }
}

/// True for the errors after which a non-blocking socket call should be retried by waiting on
/// the reactor: "would block" and "interrupted".
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::timeout;

    use super::*;
    use crate::netns::{NetnsTarget, run_in_netns};
    use crate::route::Route;

    /// With a tiny receive buffer and a datagram of 1000 failing requests, the kernel drops
    /// answers. Nothing may be reported as applied, the lost ones must be "unconfirmed", and
    /// the call must return promptly (no waiting for an ack that was lost).
    #[test]
    fn overrun_reports_unconfirmed_not_success() {
        run_in_netns(NetnsTarget::Fresh, || async {
            let mut raw = RawSocket::open().unwrap();
            raw.sock.socket_ref().set_rx_buf_sz(1024).unwrap();
            raw.max_msgs = 1000;
            let mut reqs = (0..1000u32).map(|i| {
                let net = format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap();
                let r = Route::blackhole(net);
                (
                    RouteNetlinkMessage::DelRoute(r.to_message(true).unwrap()),
                    0,
                )
            });
            let started = Instant::now();
            let packed = raw.pack(&mut reqs, &mut None).unwrap();
            assert_eq!(packed.count, 1000);
            let out = timeout(Duration::from_secs(2), raw.exchange(packed))
                .await
                .expect("an overrun must not wait for the lost final ack");
            assert!(started.elapsed() < Duration::from_secs(2));
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

    /// Waiting for an acknowledgement that never comes (here: nothing was sent) ends at the
    /// tokio timer, and while it waits the single-threaded runtime keeps running other tasks:
    /// the wait is on the reactor, not a blocking syscall.
    #[test]
    fn waiting_for_answers_yields_to_the_runtime_and_times_out() {
        run_in_netns(NetnsTarget::Fresh, || async {
            let mut raw = RawSocket::open().unwrap();
            raw.ack_wait = Duration::from_millis(300);
            let ticks = Arc::new(AtomicUsize::new(0));
            let ticker = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    for _ in 0..1000 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let started = Instant::now();
            let mut outcomes = vec![None; 3];
            let answers = timeout(Duration::from_secs(5), raw.read_answers(1, &mut outcomes))
                .await
                .expect("the ack wait is bounded by its own timer");
            let waited = started.elapsed();
            let ticked = ticks.load(Ordering::Relaxed);
            ticker.abort();
            assert!(!answers.final_seen && !answers.overrun);
            assert_eq!(outcomes, vec![None; 3]);
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            assert!(
                ticked >= 10,
                "only {ticked} ticks ran during a {waited:?} wait"
            );
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
