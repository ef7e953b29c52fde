//! Probing a pod's servers from another pod, as the Kubernetes e2e NetworkPolicy suite does
//! with agnhost `connect`: a TCP probe succeeds when the connection is accepted, a UDP probe
//! when the request is answered, each within a timeout (the suite's default is 1 s).
//!
//! Probes run on a thread that joined the source pod's network namespace: no process is
//! spawned, so a matrix of hundreds of probes costs threads, not forks.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// The e2e suite's probe timeout, the default of `flannel-lab probe`.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a UDP probe repeats its request while no answer came (a first datagram can be
/// lost while the neighbour entry resolves).
const UDP_RESEND: Duration = Duration::from_millis(250);

/// A transport protocol the lab's servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP: the probe connects.
    Tcp,
    /// UDP: the probe sends a datagram and waits for the echo.
    Udp,
}

impl Proto {
    /// The API's spelling (`TCP`, `UDP`), as in container ports and policies.
    pub fn api_name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

impl FromStr for Proto {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(LabError::Invalid(format!(
                "protocol {s:?}: the lab's servers speak TCP and UDP"
            ))),
        }
    }
}

/// A port and protocol, written `80/TCP` (any case) as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProto {
    /// The port.
    pub port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl PortProto {
    /// `port/proto`.
    pub const fn new(port: u16, proto: Proto) -> PortProto {
        PortProto { port, proto }
    }

    /// `80-tcp`: the suffix of the e2e model's container and port names.
    pub fn slug(&self) -> String {
        format!(
            "{}-{}",
            self.port,
            self.proto.api_name().to_ascii_lowercase()
        )
    }
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

impl FromStr for PortProto {
    type Err = LabError;

    fn from_str(s: &str) -> Result<PortProto> {
        let (port, proto) = s.split_once('/').ok_or_else(|| {
            LabError::Invalid(format!("{s:?} is not PORT/PROTO (e.g. 80/TCP, 81/udp)"))
        })?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| LabError::Invalid(format!("{s:?}: port must be 1-65535")))?;
        Ok(PortProto::new(port, proto.parse()?))
    }
}

/// What the servers of a `flannel-lab pod add` pod serve, in the order of the e2e model:
/// ports 80 and 81, TCP and UDP each.
pub const SERVED: [PortProto; 4] = [
    PortProto::new(80, Proto::Tcp),
    PortProto::new(80, Proto::Udp),
    PortProto::new(81, Proto::Tcp),
    PortProto::new(81, Proto::Udp),
];

/// Probes `ip` on `target` from inside the network namespace at `from_netns`: `Ok(true)` when
/// the TCP connection was accepted or the UDP request answered within `timeout`. Errors are
/// only about the probe itself (no such namespace), never about the network.
pub fn probe_addr(
    from_netns: &Path,
    ip: IpAddr,
    target: PortProto,
    timeout: Duration,
) -> Result<bool> {
    let addr = SocketAddr::new(ip, target.port);
    crate::netns::in_netns_thread(from_netns, move || match target.proto {
        Proto::Tcp => tcp_connects(addr, timeout),
        Proto::Udp => udp_answers(addr, timeout),
    })
}

/// Whether a TCP connection to `addr` is accepted within `timeout` (the lab's servers then
/// write a line; reading it is not required, as agnhost `connect` does not).
fn tcp_connects(addr: SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut s) => {
            // Drain the greeting briefly so the server sees an orderly close, not a reset.
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            true
        }
        Err(_) => false,
    }
}

/// Whether a datagram to `addr` is echoed within `timeout`; the request is resent every
/// [`UDP_RESEND`] until then.
fn udp_answers(addr: SocketAddr, timeout: Duration) -> bool {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let Ok(sock) = UdpSocket::bind(local) else {
        return false;
    };
    if sock.connect(addr).is_err() {
        return false;
    }
    let request = b"flannel-lab probe\n";
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // An ICMP unreachable from an earlier send surfaces as an error here; keep trying
        // until the deadline, as a policy change may be under way.
        let _ = sock.send(request);
        let wait = UDP_RESEND.min(deadline - now).max(Duration::from_millis(1));
        if sock.set_read_timeout(Some(wait)).is_err() {
            return false;
        }
        if let Ok(n) = sock.recv(&mut buf)
            && buf[..n] == request[..]
        {
            return true;
        }
        if Instant::now() < deadline {
            // recv failed fast (connection refused): do not spin.
            std::thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_protos_parse_and_print() {
        let pp: PortProto = "80/tcp".parse().unwrap();
        assert_eq!(pp, PortProto::new(80, Proto::Tcp));
        assert_eq!(pp.to_string(), "80/TCP");
        assert_eq!(pp.slug(), "80-tcp");
        assert_eq!(
            "81/UDP".parse::<PortProto>().unwrap(),
            PortProto::new(81, Proto::Udp)
        );
        for bad in ["80", "80/sctp", "0/tcp", "x/tcp", "70000/udp", "/tcp"] {
            assert!(bad.parse::<PortProto>().is_err(), "{bad}");
        }
    }
}
