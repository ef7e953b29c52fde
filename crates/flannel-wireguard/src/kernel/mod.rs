//! The kernel's WireGuard device, configured over generic netlink.
//!
//! Family `wireguard`: `WG_CMD_GET_DEVICE` (a dump) reads the device, `WG_CMD_SET_DEVICE`
//! changes it; [`msg`] builds and reads those messages (the rust-netlink crates' types, so no
//! attribute is laid out by hand here), this module exchanges them over a synchronous
//! `NETLINK_GENERIC` socket opened per call: calls are rare (one reconcile) and short, and a
//! socket per call keeps [`KernelDevice`] free of shared state.

pub mod msg;

#[cfg(test)]
mod tests;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_wireguard::WireguardMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use nix::errno::Errno;

use crate::device::{DeviceState, DeviceUpdate, WgDevice, WgError};

/// How often a dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 5;
/// How long one answer from the kernel may take.
const RECV_TIMEOUT_SECS: i64 = 5;

/// A kernel WireGuard interface, by name.
#[derive(Debug, Clone)]
pub struct KernelDevice {
    name: String,
}

impl KernelDevice {
    /// The kernel device `name` (it must exist: created as a link of kind `wireguard`).
    pub fn new(name: &str) -> KernelDevice {
        KernelDevice {
            name: name.to_string(),
        }
    }

    fn open(&self) -> Result<Genl<'_>, WgError> {
        let io = |op, source| WgError::io(&self.name, op, source);
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(|e| io("open netlink socket", e))?;
        sock.bind_auto().map_err(|e| io("bind netlink socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io("connect netlink socket", e))?;
        let timeout = nix::sys::time::TimeVal::new(RECV_TIMEOUT_SECS, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| io("set netlink timeout", e.into()))?;
        let mut genl = Genl {
            dev: &self.name,
            sock,
            seq: 0,
            family: 0,
        };
        genl.family = genl.resolve_family()?;
        Ok(genl)
    }
}

impl WgDevice for KernelDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self) -> Result<DeviceState, WgError> {
        let mut genl = self.open()?;
        // Bounded: a dump interrupted by concurrent changes is retried a few times.
        for _ in 0..DUMP_ATTEMPTS {
            let (messages, interrupted) = genl.exchange(
                msg::get_message(&self.name),
                NLM_F_REQUEST | NLM_F_DUMP,
                "get device",
            )?;
            if interrupted {
                continue;
            }
            return msg::parse_dump(&messages)
                .map_err(|e| WgError::protocol(&self.name, format!("get device: {e}")));
        }
        Err(WgError::Kernel {
            dev: self.name.clone(),
            op: "get device (changed during every dump)",
            errno: Errno::EINTR,
        })
    }

    /// `replace_peers` is sent as explicit removals of the peers not named (one dump first),
    /// so the named peers keep their sessions (the kernel's `REPLACE_PEERS` would reset them).
    fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        let update = crate::replace::for_device(update, self)?;
        let mut genl = self.open()?;
        for m in msg::set_messages(&self.name, &update, msg::MESSAGE_LIMIT) {
            genl.exchange(m, NLM_F_REQUEST | NLM_F_ACK, "set device")?;
        }
        Ok(())
    }
}

/// One generic netlink conversation.
struct Genl<'a> {
    dev: &'a str,
    sock: Socket,
    seq: u32,
    family: u16,
}

impl Genl<'_> {
    fn io(&self, op: &'static str, source: std::io::Error) -> WgError {
        WgError::io(self.dev, op, source)
    }

    fn protocol(&self, reason: String) -> WgError {
        WgError::protocol(self.dev, reason)
    }

    fn kernel(&self, op: &'static str, errno: Errno) -> WgError {
        if errno == Errno::ENODEV {
            return WgError::NoDevice(self.dev.to_string());
        }
        WgError::Kernel {
            dev: self.dev.to_string(),
            op,
            errno,
        }
    }

    fn resolve_family(&mut self) -> Result<u16, WgError> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
        });
        let (answers, _) = self.exchange_raw(
            request,
            NLM_F_REQUEST | NLM_F_ACK,
            "resolve the wireguard netlink family",
        )?;
        answers
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| self.protocol("the kernel's family answer has no id".into()))
    }

    fn exchange(
        &mut self,
        payload: WireguardMessage,
        flags: u16,
        op: &'static str,
    ) -> Result<(Vec<WireguardMessage>, bool), WgError> {
        let mut genl = GenlMessage::from_payload(payload);
        genl.set_resolved_family_id(self.family);
        let (answers, interrupted) = self.exchange_raw(genl, flags, op)?;
        Ok((
            answers.into_iter().map(|m| m.payload).collect(),
            interrupted,
        ))
    }

    /// Sends one request and collects its answers until the acknowledgement (or the end of
    /// the dump). Returns them and whether the dump was interrupted by a change.
    fn exchange_raw<F>(
        &mut self,
        genl: GenlMessage<F>,
        flags: u16,
        op: &'static str,
    ) -> Result<(Vec<GenlMessage<F>>, bool), WgError>
    where
        F: std::fmt::Debug,
        GenlMessage<F>: netlink_packet_core::NetlinkSerializable
            + netlink_packet_core::NetlinkDeserializable
            + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = flags;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|e| self.io("send netlink request", e))?;
        let mut answers = Vec::new();
        let mut interrupted = false;
        // Bounded by the kernel: it ends every request with an ack, an error or DONE; a
        // silent kernel ends it through the receive timeout.
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| self.io("receive netlink answer", e))?;
            let mut rest = data.as_slice();
            while !rest.is_empty() {
                let m = NetlinkMessage::<GenlMessage<F>>::deserialize(rest)
                    .map_err(|e| self.protocol(format!("{op}: undecodable answer: {e}")))?;
                let len = (m.header.length as usize).next_multiple_of(4).max(16);
                rest = rest.get(len..).unwrap_or_default();
                if m.header.sequence_number != self.seq {
                    continue;
                }
                interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(self.kernel(op, Errno::from_raw(-d.code)));
                    }
                    NetlinkPayload::Done(_) => return Ok((answers, interrupted)),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok((answers, interrupted)),
                        Some(code) => return Err(self.kernel(op, Errno::from_raw(-code.get()))),
                    },
                    _ => {}
                }
            }
        }
    }
}
