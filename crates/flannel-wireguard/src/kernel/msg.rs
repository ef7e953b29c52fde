//! The kernel's WireGuard generic netlink messages, built and read without any socket.
//!
//! A `WG_CMD_SET_DEVICE` request is one netlink message, and wg(8) keeps each under one page
//! (libmnl's `MNL_SOCKET_BUFFER_SIZE`); a large update is therefore split over several
//! messages as wg(8) splits it: device attributes (key, port, fwmark, `REPLACE_PEERS`) in the
//! first message only, peers appended while they fit, and a peer whose allowed IPs do not fit
//! continued in the next message with only its public key and the remaining allowed IPs (the
//! kernel adds those, since the continuation carries no `REPLACE_ALLOWEDIPS`). The kernel's
//! `WG_CMD_GET_DEVICE` dump is split the same way, so [`parse_dump`] merges a peer continued
//! across messages.

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use netlink_packet_core::{Emitable, NLA_HEADER_SIZE, NetlinkMessage};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};

use crate::device::{DeviceState, DeviceUpdate, PeerConfig, PeerState, PeerUpdate};
use crate::key::{Key, Secret};

/// The largest request message wg(8) sends (one page); requests are split to stay under it.
pub const MESSAGE_LIMIT: usize = 4096;

/// The smallest limit [`set_messages`] works with: headers, an interface name, device
/// attributes and one peer with every attribute and one IPv6 allowed IP take under 300 bytes.
pub const MIN_LIMIT: usize = 512;

/// Netlink header (16 bytes) plus generic netlink header (4 bytes).
const HEADERS: usize = 20;

/// Why a dump could not be read as a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DumpError(pub String);

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net.addr() {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// The attributes of one peer change, without its allowed IPs (added by the splitter).
fn peer_head(update: &PeerUpdate) -> (Vec<WireguardPeerAttribute>, &[IpNet]) {
    match update {
        PeerUpdate::Remove(key) => (
            vec![
                WireguardPeerAttribute::PublicKey(key.0),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ],
            &[],
        ),
        PeerUpdate::Upsert {
            config,
            replace_allowed_ips,
        } => {
            let mut attrs = vec![WireguardPeerAttribute::PublicKey(config.public_key.0)];
            if *replace_allowed_ips {
                attrs.push(WireguardPeerAttribute::Flags(
                    WireguardPeerFlags::ReplaceAllowedIps,
                ));
            }
            // Always written: the update carries the whole configuration, and all zeros is
            // how the kernel is told "no preshared key".
            let psk = config
                .preshared_key
                .as_ref()
                .map_or([0; 32], |s| *s.bytes());
            attrs.push(WireguardPeerAttribute::PresharedKey(psk));
            if let Some(ep) = config.endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(ep));
            }
            attrs.push(WireguardPeerAttribute::PersistentKeepalive(
                config.persistent_keepalive,
            ));
            (attrs, &config.allowed_ips)
        }
    }
}

/// Builds the `WG_CMD_SET_DEVICE` messages (payloads, without the netlink and generic
/// headers) that apply `update` to device `ifname`, each at most `limit` bytes including the
/// headers. An update with nothing in it still yields one message (the kernel checks the
/// device exists). `limit` is raised to [`MIN_LIMIT`], which always holds one peer with one
/// allowed IP, so every message makes progress.
pub fn set_messages(ifname: &str, update: &DeviceUpdate, limit: usize) -> Vec<WireguardMessage> {
    let limit = limit.max(MIN_LIMIT);
    let mut device = vec![WireguardAttribute::IfName(ifname.to_string())];
    if let Some(k) = &update.private_key {
        device.push(WireguardAttribute::PrivateKey(*k.bytes()));
    }
    if let Some(p) = update.listen_port {
        device.push(WireguardAttribute::ListenPort(p));
    }
    if let Some(m) = update.fwmark {
        device.push(WireguardAttribute::Fwmark(m));
    }
    if update.replace_peers {
        device.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    let mut splitter = Splitter {
        ifname,
        limit,
        done: Vec::new(),
        attrs: device,
        peers: Vec::new(),
    };
    for p in &update.peers {
        let (head, ips) = peer_head(p);
        splitter.add_peer(head, ips);
    }
    splitter.finish()
}

/// Fills messages in order, opening a new one when the next piece does not fit.
struct Splitter<'a> {
    ifname: &'a str,
    limit: usize,
    done: Vec<WireguardMessage>,
    /// Device attributes of the message being filled.
    attrs: Vec<WireguardAttribute>,
    /// Peers of the message being filled.
    peers: Vec<WireguardPeer>,
}

impl Splitter<'_> {
    /// Bytes the message being filled takes, counting the peers nest as soon as it is opened.
    fn used(&self) -> usize {
        HEADERS + self.attrs.as_slice().buffer_len() + NLA_HEADER_SIZE + self.peers_len()
    }

    fn peers_len(&self) -> usize {
        self.peers
            .iter()
            .map(|p| NLA_HEADER_SIZE + p.0.as_slice().buffer_len())
            .sum()
    }

    /// A message holding nothing but the interface name.
    fn fresh(&self) -> bool {
        self.peers.is_empty() && self.attrs.len() == 1
    }

    fn flush(&mut self) {
        let mut attributes = std::mem::replace(
            &mut self.attrs,
            vec![WireguardAttribute::IfName(self.ifname.to_string())],
        );
        let peers = std::mem::take(&mut self.peers);
        if !peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(peers));
        }
        self.done.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
    }

    fn add_peer(&mut self, head: Vec<WireguardPeerAttribute>, ips: &[IpNet]) {
        let key = match head.first() {
            Some(WireguardPeerAttribute::PublicKey(k)) => *k,
            _ => unreachable!("peer_head starts with the public key"),
        };
        let mut attrs = head;
        let mut rest = ips;
        let mut used = self.used();
        // Bounded: a round either places the peer's head with at least one allowed IP (a
        // fresh message always takes them) or flushes a message that held something.
        loop {
            let fresh = self.fresh();
            let room = self.limit.saturating_sub(used);
            let mut len = NLA_HEADER_SIZE + attrs.as_slice().buffer_len();
            if !rest.is_empty() {
                len += NLA_HEADER_SIZE;
            }
            let mut fitted = Vec::new();
            for net in rest {
                let one = allowed_ip(net);
                let add = NLA_HEADER_SIZE + one.0.as_slice().buffer_len();
                if len + add > room && !(fresh && fitted.is_empty()) {
                    break;
                }
                len += add;
                fitted.push(one);
            }
            if !fresh && (len > room || (fitted.is_empty() && !rest.is_empty())) {
                self.flush();
                used = self.used();
                continue;
            }
            let all_fit = fitted.len() == rest.len();
            rest = &rest[fitted.len()..];
            if !fitted.is_empty() {
                attrs.push(WireguardPeerAttribute::AllowedIps(fitted));
            }
            self.peers.push(WireguardPeer(attrs));
            if all_fit {
                return;
            }
            self.flush();
            used = self.used();
            attrs = vec![WireguardPeerAttribute::PublicKey(key)];
        }
    }

    fn finish(mut self) -> Vec<WireguardMessage> {
        if !self.fresh() || self.done.is_empty() {
            self.flush();
        }
        self.done
    }
}

/// The `WG_CMD_GET_DEVICE` dump request for `ifname`.
pub fn get_message(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    }
}

fn nonzero(b: [u8; 32]) -> Option<Secret> {
    (b != [0; 32]).then(|| Secret::from_bytes(b))
}

/// Reads the messages of one `WG_CMD_GET_DEVICE` dump as a device: device attributes from
/// whichever message has them, peers in order, a peer continued in the next message (same
/// public key, only allowed IPs) merged into one.
pub fn parse_dump(messages: &[WireguardMessage]) -> Result<DeviceState, DumpError> {
    let mut state = DeviceState::default();
    for m in messages {
        for a in &m.attributes {
            match a {
                WireguardAttribute::PrivateKey(k) => state.private_key = nonzero(*k),
                WireguardAttribute::ListenPort(p) => state.listen_port = *p,
                WireguardAttribute::Fwmark(f) => state.fwmark = *f,
                WireguardAttribute::Peers(peers) => {
                    for p in peers {
                        add_dumped_peer(&mut state.peers, p)?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(state)
}

fn add_dumped_peer(peers: &mut Vec<PeerState>, p: &WireguardPeer) -> Result<(), DumpError> {
    let key = p
        .iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::PublicKey(k) => Some(Key(*k)),
            _ => None,
        })
        .ok_or_else(|| DumpError("a peer without a public key".into()))?;
    if peers.last().map(|l| l.config.public_key) != Some(key) {
        peers.push(PeerState::new(PeerConfig::new(key)));
    }
    let Some(peer) = peers.last_mut() else {
        unreachable!("a peer was pushed above")
    };
    for a in p.iter() {
        match a {
            WireguardPeerAttribute::PresharedKey(k) => peer.config.preshared_key = nonzero(*k),
            WireguardPeerAttribute::Endpoint(ep) => peer.config.endpoint = Some(*ep),
            WireguardPeerAttribute::PersistentKeepalive(s) => peer.config.persistent_keepalive = *s,
            WireguardPeerAttribute::RxBytes(b) => peer.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => peer.tx_bytes = *b,
            WireguardPeerAttribute::LastHandshake(t) => {
                peer.last_handshake =
                    match (u64::try_from(t.seconds), u32::try_from(t.nano_seconds)) {
                        (Ok(0), Ok(0)) => None,
                        (Ok(s), Ok(n)) if n < 1_000_000_000 => {
                            UNIX_EPOCH.checked_add(Duration::new(s, n))
                        }
                        _ => return Err(DumpError(format!("peer {key}: invalid handshake time"))),
                    };
            }
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    peer.config.allowed_ips.push(parse_allowed_ip(ip, &key)?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_allowed_ip(ip: &WireguardAllowedIp, key: &Key) -> Result<IpNet, DumpError> {
    let mut addr = None;
    let mut cidr = None;
    for a in ip.iter() {
        match a {
            WireguardAllowedIpAttr::IpAddr(x) => addr = Some(*x),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    match (addr, cidr) {
        (Some(a), Some(c)) => IpNet::new(a, c)
            .map_err(|_| DumpError(format!("peer {key}: allowed IP {a}/{c} is not a prefix"))),
        _ => Err(DumpError(format!(
            "peer {key}: allowed IP without address or mask"
        ))),
    }
}

/// One request as the bytes sent to the kernel: netlink header (type = the resolved family
/// id, `flags`, `seq`), generic netlink header (command, version 1), attributes.
pub fn frame(payload: WireguardMessage, family: u16, seq: u32, flags: u16) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family);
    let mut msg = NetlinkMessage::from(genl);
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}
