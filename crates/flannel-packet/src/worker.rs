//! What every data-path worker thread does the same way, whichever data path it serves (the
//! udp backend, the userspace WireGuard device): sleeping until its descriptor is readable
//! without missing a shutdown, and telling a transient TUN failure from a vanished device.
//!
//! Threads read their descriptors non-blocking; only when nothing is ready do they `poll`,
//! together with a stop pipe whose write end the owner writes to (or closes) at shutdown, so a
//! sleeping thread always wakes to stop.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
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
