//! The conntrack table as it is now: the counters of flows that are still open.
//!
//! Events give a flow's counters only when it ends, and a closed TCP flow ends for conntrack
//! only after `TIME_WAIT` (`net.netfilter.nf_conntrack_tcp_timeout_time_wait`, 120 s) and
//! the next garbage collection. So a query for flows asks the kernel for the table once and
//! gives the records of flows still in it their counters so far. This costs one netlink dump
//! per query and nothing while nobody asks.

use std::time::{Duration, Instant};

use netlink_sys::SocketAddr;

use super::conntrack::{CtEvent, RecvError, decode};
use super::nfnl::dump_end;
use super::{SocketError, failed, netfilter_socket, set_recv_timeout};

/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = 1 << 8 | 1;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const REQUEST_DUMP: u16 = 0x1 | 0x300;

/// The dump request for every family (`AF_UNSPEC`).
fn request() -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend(20u32.to_ne_bytes());
    m.extend(CT_GET.to_ne_bytes());
    m.extend(REQUEST_DUMP.to_ne_bytes());
    m.extend(1u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
    m.extend([0, 0, 0, 0]);
    m
}

/// Every entry of the current namespace's conntrack table, read within `timeout` (an error
/// past it: a partial table would report open flows as unknown).
pub fn dump(timeout: Duration) -> Result<Vec<CtEvent>, RecvError> {
    let deadline = Instant::now() + timeout;
    let err = failed;
    let socket = netfilter_socket("conntrack dump")?;
    socket
        .send_to(&request(), &SocketAddr::new(0, 0), 0)
        .map_err(err("ask for the conntrack table"))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SocketError {
                what: "read the conntrack table".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not complete within {timeout:?}"),
                ),
            }
            .into());
        }
        use std::os::fd::AsRawFd;
        set_recv_timeout(socket.as_raw_fd(), left)
            .map_err(err("set the conntrack dump socket's receive timeout"))?;
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(err("read the conntrack table"))?;
        let datagram = &buf[..n];
        out.extend(decode(datagram)?);
        match dump_end(datagram) {
            None => {}
            Some(0) => return Ok(out),
            Some(errno) => {
                return Err(SocketError {
                    what: "read the conntrack table".into(),
                    source: std::io::Error::from_raw_os_error(errno),
                }
                .into());
            }
        }
    }
}
