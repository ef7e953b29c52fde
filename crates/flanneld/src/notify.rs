//! systemd readiness: `sd_notify("READY=1")` when `NOTIFY_SOCKET` is set.
//!
//! Upstream tells systemd it is ready once subnet.env is written, so units ordered after
//! flanneld (docker with `--bip`, kubelet) start only when the overlay is usable. The protocol
//! is one datagram to the unix socket named in `NOTIFY_SOCKET` (`@name` for the abstract
//! namespace); a few lines of std replace a dependency.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the socket in `NOTIFY_SOCKET`. `Ok(false)` when the
/// variable is unset (not started by systemd).
pub fn notify(socket: Option<&str>, state: &str) -> std::io::Result<bool> {
    let Some(path) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Reads `NOTIFY_SOCKET` from the environment and sends `READY=1`.
pub fn ready() -> std::io::Result<bool> {
    let socket = std::env::var("NOTIFY_SOCKET").ok();
    notify(socket.as_deref(), "READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_socket_is_not_an_error() {
        assert!(!notify(None, "READY=1").unwrap());
        assert!(!notify(Some(""), "READY=1").unwrap());
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(notify(path.to_str(), "READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("flannel-rs-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(notify(Some(&format!("@{name}")), "READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
