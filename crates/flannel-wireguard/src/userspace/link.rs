//! Deleting the (persistent) TUN device: one `RTM_DELLINK` over a route netlink socket.
//!
//! A persistent TUN outlives its descriptors, so closing them does not remove it; tests and a
//! backend that switches to the kernel device delete it explicitly. The message is two fixed
//! headers, built by hand rather than pulling an async netlink stack into this crate.

use std::io;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

const RTM_DELLINK: u16 = 17;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

/// Deletes the interface `name` in the calling thread's network namespace.
pub(crate) fn delete(name: &str) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(io::Error::from)?;
    // struct nlmsghdr (16 bytes) + struct ifinfomsg (16 bytes).
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&RTM_DELLINK.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[20..24].copy_from_slice(&(index as i32).to_ne_bytes());
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut ack = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut ack, MsgFlags::empty()).map_err(io::Error::from)?;
    if n >= 20 && u16::from_ne_bytes([ack[4], ack[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes(ack[16..20].try_into().expect("4 bytes"));
        if code != 0 {
            return Err(io::Error::from(Errno::from_raw(-code)));
        }
    }
    Ok(())
}
