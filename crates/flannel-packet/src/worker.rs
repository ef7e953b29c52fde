//! What every data-path worker thread does the same way, whichever data path it serves (the
//! udp backend, the userspace WireGuard device): sleeping until its descriptor is readable
//! without missing a shutdown, telling a transient TUN failure from a vanished device, and
//! sending a batch of datagrams with `sendmmsg`.
//!
//! Threads read their descriptors non-blocking; only when nothing is ready do they `poll`,
//! together with a stop pipe whose write end the owner writes to (or closes) at shutdown, so a
//! sleeping thread always wakes to stop.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrLike, sendmmsg};
use tracing::warn;

/// Waits until `fd` is readable or shutdown is requested (`stop` set, or `wake` readable);
/// false on shutdown. A failing `poll` is logged (as `name`) and answered with a short pause
/// and `true`, so the caller retries its read rather than spinning.
pub fn wait_readable(
    fd: BorrowedFd<'_>,
    wake: BorrowedFd<'_>,
    stop: &AtomicBool,
    name: &str,
) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(wake, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return !fds[1].any().unwrap_or(false),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!("{name}: poll failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                return true;
            }
        }
    }
}

/// Judges a failed TUN read or write (`what`) of device `name`; the caller has counted it.
/// Returns false when the device is gone for good (`EBADFD`: deleted under us), after
/// setting `dead` so the owner recreates it; otherwise logs the first failure only (`logged`
/// remembers it) and returns true.
pub fn tun_error(
    name: &str,
    what: &str,
    e: &io::Error,
    dead: &AtomicBool,
    logged: &mut bool,
) -> bool {
    if e.raw_os_error() == Some(Errno::EBADFD as i32) {
        warn!("{name}: TUN device gone ({what}: {e})");
        dead.store(true, Ordering::Relaxed);
        return false;
    }
    if !*logged {
        warn!("{name}: {what} failed: {e} (further errors are counted only)");
        *logged = true;
    }
    true
}

/// Sends every datagram `data[i]` to `to[i]` with as few `sendmmsg` calls as the kernel
/// allows. Runs of datagrams the kernel took are reported to `sent` (index ranges); one it
/// refuses is reported to `failed` and skipped, so one bad destination never holds up the
/// rest. Stops early only when the kernel takes nothing without an error. `mmsg` must have
/// room for `data.len()` messages.
pub fn send_datagrams<S: SockaddrLike + Copy>(
    fd: BorrowedFd<'_>,
    mmsg: &mut MultiHeaders<S>,
    data: &[&[u8]],
    to: &[Option<S>],
    mut sent: impl FnMut(Range<usize>),
    mut failed: impl FnMut(usize, Errno),
) {
    let mut start = 0;
    while start < data.len() {
        let iovs: Vec<[IoSlice<'_>; 1]> = data[start..].iter().map(|d| [IoSlice::new(d)]).collect();
        let r = sendmmsg(
            fd.as_raw_fd(),
            mmsg,
            &iovs,
            &to[start..],
            [],
            MsgFlags::empty(),
        )
        .map(|res| res.count());
        match r {
            Ok(0) => break,
            Ok(n) => {
                sent(start..start + n);
                start += n;
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                failed(start, e);
                start += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_sleeping_worker_wakes_for_data_and_for_shutdown() {
        let stop = AtomicBool::new(false);
        let (data_r, data_w) = nix::unistd::pipe().unwrap();
        let (wake_r, wake_w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&data_w, &[1]).unwrap();
        assert!(wait_readable(data_r.as_fd(), wake_r.as_fd(), &stop, "t"));
        nix::unistd::write(&wake_w, &[1]).unwrap();
        assert!(!wait_readable(data_r.as_fd(), wake_r.as_fd(), &stop, "t"));
        stop.store(true, Ordering::Relaxed);
        let (idle_r, _idle_w) = nix::unistd::pipe().unwrap();
        assert!(!wait_readable(idle_r.as_fd(), idle_r.as_fd(), &stop, "t"));
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_the_rest_are_sent() {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, recv, socket,
        };
        let udp = || {
            socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::empty(),
                None,
            )
            .unwrap()
        };
        let (tx, rx) = (udp(), udp());
        bind(rx.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        let dst: SockaddrIn = getsockname(rx.as_raw_fd()).unwrap();
        // Port 0 is no destination: the kernel refuses that one message.
        let bad = SockaddrIn::new(127, 0, 0, 1, 0);
        let data: [&[u8]; 4] = [b"one", b"two", b"three", b"four"];
        let to = [Some(dst), Some(bad), Some(dst), Some(dst)];
        let mut mmsg = MultiHeaders::<SockaddrIn>::preallocate(data.len(), None);
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        send_datagrams(
            tx.as_fd(),
            &mut mmsg,
            &data,
            &to,
            |r| ok.extend(r),
            |i, _| refused.push(i),
        );
        assert_eq!(ok, [0, 2, 3]);
        assert_eq!(refused, [1]);
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"three", b"four"] {
            let n = recv(rx.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }

    #[test]
    fn only_a_vanished_device_ends_a_worker() {
        let dead = AtomicBool::new(false);
        let mut logged = false;
        let transient = io::Error::from_raw_os_error(Errno::ENOBUFS as i32);
        assert!(tun_error("t", "TUN write", &transient, &dead, &mut logged));
        assert!(logged);
        assert!(!dead.load(Ordering::Relaxed));
        let gone = io::Error::from_raw_os_error(Errno::EBADFD as i32);
        assert!(!tun_error("t", "TUN read", &gone, &dead, &mut logged));
        assert!(dead.load(Ordering::Relaxed));
    }
}
