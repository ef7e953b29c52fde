//! The servers of a `flannel-lab pod add` pod (`flannel-lab serve`, run inside the pod's
//! namespace): the e2e NetworkPolicy model's agnhost `serve-hostname` in miniature. TCP accepts
//! and writes one line (the pod's name) and closes; UDP echoes every datagram. Each socket
//! binds `::` (dual-stack, so one server answers on IPv4 and IPv6) or, where the namespace has
//! no IPv6, `0.0.0.0`.

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::probe::{PortProto, Proto};

/// How long a server waits for a slow client before dropping it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A bound server socket.
#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds `target` on `::`, falling back to `0.0.0.0` when IPv6 is unavailable.
fn bind(target: PortProto) -> Result<Socket> {
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, target.port));
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, target.port));
    let result = match target.proto {
        Proto::Tcp => TcpListener::bind(any6)
            .or_else(|_| TcpListener::bind(any4))
            .map(Socket::Tcp),
        Proto::Udp => UdpSocket::bind(any6)
            .or_else(|_| UdpSocket::bind(any4))
            .map(Socket::Udp),
    };
    result.map_err(|e| LabError::io(format!("binding {target}"), e))
}

/// Serves every target until killed: binds them all first (an error if any cannot be bound),
/// then answers on each from a thread of its own. `greeting` is the line TCP clients get.
pub fn serve(targets: &[PortProto], greeting: &str) -> Result<Infallible> {
    let sockets = targets
        .iter()
        .map(|t| bind(*t).map(|s| (*t, s)))
        .collect::<Result<Vec<_>>>()?;
    let line = format!("{greeting}\n");
    let (tx, rx) = std::sync::mpsc::channel();
    for (target, socket) in sockets {
        let (tx, line) = (tx.clone(), line.clone());
        std::thread::spawn(move || {
            let Err(e) = match socket {
                Socket::Tcp(l) => serve_tcp(&l, line.as_bytes()),
                Socket::Udp(u) => serve_udp(&u),
            };
            let _ = tx.send(LabError::io(format!("serving {target}"), e));
        });
    }
    drop(tx);
    // Servers only end on a socket error; the first one ends the process.
    Err(rx
        .recv()
        .unwrap_or_else(|_| LabError::Invalid("no ports to serve".into())))
}

/// Accepts forever; each client gets `line` and the connection is closed.
fn serve_tcp(listener: &TcpListener, line: &[u8]) -> std::io::Result<Infallible> {
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
                let _ = conn.write_all(line);
            }
            // A client that reset before accept() returned is not the server's problem.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Echoes every datagram to its sender, forever.
fn serve_udp(socket: &UdpSocket) -> std::io::Result<Infallible> {
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        // A sender that went away (ICMP unreachable on the reply) must not stop the server.
        let _ = socket.send_to(&buf[..n], from);
    }
}
