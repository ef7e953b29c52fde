//! Neighbour (ARP/NDP) entries and bridge/vxlan forwarding-database (FDB) entries.
//!
//! The vxlan backend needs, per remote node, a permanent neighbour entry (peer VTEP IP -> VTEP
//! MAC) on the vxlan device and an FDB entry (VTEP MAC -> peer public IP) in the device's own
//! forwarding table (`bridge fdb ... self`).

use std::fmt;
use std::net::IpAddr;

use flannel_types::IpFamily;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};

use crate::batch::BatchOp;
use crate::error::Result;
use crate::netlink::{Netlink, collect};
use crate::types::{MacAddr, address_family, ip_from_bytes};

/// `NUD_*` neighbour state, kept raw with names for the values flannel looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NudState(pub u16);

impl NudState {
    /// NUD_INCOMPLETE: resolution in progress.
    pub const INCOMPLETE: u16 = 0x01;
    /// NUD_REACHABLE.
    pub const REACHABLE: u16 = 0x02;
    /// NUD_STALE.
    pub const STALE: u16 = 0x04;
    /// NUD_FAILED.
    pub const FAILED: u16 = 0x20;
    /// NUD_NOARP: entries on devices without ARP (e.g. multicast).
    pub const NOARP: u16 = 0x40;
    /// NUD_PERMANENT: static entries such as flannel's.
    pub const PERMANENT: u16 = 0x80;

    /// True for NUD_PERMANENT entries: the only ones flannel creates.
    pub fn is_permanent(self) -> bool {
        self.0 & Self::PERMANENT != 0
    }
}

/// `NTF_*` neighbour flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeighFlags(pub u8);

impl NeighFlags {
    /// NTF_USE.
    pub const USE: u8 = 0x01;
    /// NTF_SELF: the entry is in the device's own table (vxlan FDB), not its master bridge's.
    pub const SELF: u8 = 0x02;
    /// NTF_MASTER: the entry is in the master bridge's table.
    pub const MASTER: u8 = 0x04;
    /// NTF_PROXY: proxy-ARP entry.
    pub const PROXY: u8 = 0x08;
    /// NTF_EXT_LEARNED: learned by an external control plane.
    pub const EXT_LEARNED: u8 = 0x10;
    /// NTF_ROUTER (IPv6).
    pub const ROUTER: u8 = 0x80;

    /// True if all bits of `bit` are set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit == bit
    }
}

/// A permanent ARP/NDP entry as flannel programs it (`ip neigh replace IP lladdr MAC dev X nud
/// permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// The device.
    pub ifindex: u32,
    /// Protocol address (the peer's VTEP address, e.g. `10.244.2.0`).
    pub ip: IpAddr,
    /// Link-layer address (the peer's VTEP MAC).
    pub mac: MacAddr,
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lladdr {} dev #{}", self.ip, self.mac, self.ifindex)
    }
}

impl Neighbour {
    /// RTM_NEWNEIGH/RTM_DELNEIGH body: permanent, type unicast (as upstream's NeighSet).
    pub(crate) fn to_message(self) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = address_family(IpFamily::of(&self.ip));
        m.header.ifindex = self.ifindex;
        m.header.state = NudState::PERMANENT.into();
        m.header.kind = 1u8.into(); // RTN_UNICAST
        m.attributes
            .push(NeighbourAttribute::Destination(self.ip.into()));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(
            self.mac.octets().to_vec(),
        ));
        m
    }
}

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// The device.
    pub ifindex: u32,
    /// Protocol address.
    pub ip: IpAddr,
    /// Link-layer address; `None` for unresolved (incomplete/failed) entries.
    pub mac: Option<MacAddr>,
    /// NUD state.
    pub state: NudState,
    /// NTF flags.
    pub flags: NeighFlags,
}

impl NeighbourEntry {
    /// The entry as a [`Neighbour`], when it has a MAC.
    pub fn as_neighbour(&self) -> Option<Neighbour> {
        Some(Neighbour {
            ifindex: self.ifindex,
            ip: self.ip,
            mac: self.mac?,
        })
    }

    fn from_message(m: &NeighbourMessage) -> Option<Self> {
        let mut ip = None;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(d) => ip = neighbour_addr(d),
                NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_slice(l),
                _ => {}
            }
        }
        Some(NeighbourEntry {
            ifindex: m.header.ifindex,
            ip: ip?,
            mac,
            state: NudState(m.header.state.into()),
            flags: NeighFlags(m.header.flags.bits()),
        })
    }
}

/// A vxlan FDB entry as flannel programs it (`bridge fdb replace MAC dev X self permanent dst
/// IP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fdb {
    /// The vxlan device.
    pub ifindex: u32,
    /// The peer's VTEP MAC.
    pub mac: MacAddr,
    /// The peer's public (underlay) IP.
    pub dst: IpAddr,
}

impl fmt::Display for Fdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dst {} dev #{} self",
            self.mac, self.dst, self.ifindex
        )
    }
}

impl Fdb {
    /// RTM_NEWNEIGH/RTM_DELNEIGH body: AF_BRIDGE, NTF_SELF, permanent, lladdr + dst. Deleting
    /// with a dst removes just that remote of the MAC, as upstream's DelFDB does.
    pub(crate) fn to_message(self) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = self.ifindex;
        m.header.state = NudState::PERMANENT.into();
        m.header.flags = NeighbourFlags::Own; // NTF_SELF
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(
            self.mac.octets().to_vec(),
        ));
        m.attributes
            .push(NeighbourAttribute::Destination(self.dst.into()));
        m
    }
}

/// An FDB entry as the kernel reports it. The dump of a vxlan device can contain entries that
/// are not flannel's: the all-zero default entry (when the device has a remote/group), entries
/// learned from traffic (when learning is on), and for bridges their ports' local MACs. The
/// fields below let the caller skip them: keep `flags.has(SELF)`, `state.is_permanent()`,
/// `dst.is_some()`, `!mac.is_zero()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// The device the entry belongs to.
    pub ifindex: u32,
    /// The MAC.
    pub mac: MacAddr,
    /// The remote (underlay) IP for vxlan entries.
    pub dst: Option<IpAddr>,
    /// NUD state.
    pub state: NudState,
    /// NTF flags.
    pub flags: NeighFlags,
    /// VNI, when the entry overrides the device's.
    pub vni: Option<u32>,
    /// UDP port, when the entry overrides the device's.
    pub port: Option<u16>,
    /// The bridge the device is a port of (NDA_MASTER), for bridge-table entries.
    pub master: Option<u32>,
}

impl FdbEntry {
    /// True for the kernel's catch-all entry (00:00:00:00:00:00), never one of flannel's.
    pub fn is_default_entry(&self) -> bool {
        self.mac.is_zero()
    }

    /// The entry as an [`Fdb`] if it has the shape flannel programs (self, permanent, unicast
    /// MAC, with a dst); `None` otherwise.
    pub fn as_fdb(&self) -> Option<Fdb> {
        let ours = self.flags.has(NeighFlags::SELF)
            && self.state.is_permanent()
            && !self.mac.is_zero()
            && !self.mac.is_multicast();
        if !ours {
            return None;
        }
        Some(Fdb {
            ifindex: self.ifindex,
            mac: self.mac,
            dst: self.dst?,
        })
    }

    fn from_message(m: &NeighbourMessage) -> Option<Self> {
        let mut e = FdbEntry {
            ifindex: m.header.ifindex,
            mac: MacAddr::ZERO,
            dst: None,
            state: NudState(m.header.state.into()),
            flags: NeighFlags(m.header.flags.bits()),
            vni: None,
            port: None,
            master: None,
        };
        let mut mac = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_slice(l),
                // For AF_BRIDGE the parser cannot know the address family of NDA_DST and hands
                // over raw bytes: 4 for IPv4, 16 for IPv6.
                NeighbourAttribute::Destination(d) => e.dst = neighbour_addr(d),
                NeighbourAttribute::Vni(v) => e.vni = Some(*v),
                NeighbourAttribute::Port(p) => e.port = Some(*p),
                NeighbourAttribute::Controller(c) => e.master = Some(*c),
                _ => {}
            }
        }
        e.mac = mac?;
        Some(e)
    }
}

fn neighbour_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some((*v).into()),
        NeighbourAddress::Inet6(v) => Some((*v).into()),
        NeighbourAddress::Other(b) => ip_from_bytes(b),
        _ => None,
    }
}

impl Netlink {
    /// ARP and NDP entries, of one device (`Some(ifindex)`) or all. Proxy entries are not
    /// included.
    pub async fn neighbours(&self, ifindex: Option<u32>) -> Result<Vec<NeighbourEntry>> {
        let mut out = Vec::new();
        for family in IpFamily::ALL {
            let req = self
                .handle()
                .neighbours()
                .get()
                .set_address_family(address_family(family));
            let msgs = collect("list neighbours", "", req.execute()).await?;
            out.extend(
                msgs.iter()
                    .filter(|m| ifindex.is_none_or(|i| m.header.ifindex == i))
                    .filter_map(NeighbourEntry::from_message),
            );
        }
        Ok(out)
    }

    /// Bridge/vxlan FDB entries, of one device (`Some(ifindex)`) or all.
    pub async fn fdb_entries(&self, ifindex: Option<u32>) -> Result<Vec<FdbEntry>> {
        let req = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge);
        let msgs = collect("list fdb", "", req.execute()).await?;
        Ok(msgs
            .iter()
            .filter(|m| ifindex.is_none_or(|i| m.header.ifindex == i))
            .filter_map(FdbEntry::from_message)
            .collect())
    }

    /// Adds or replaces a permanent neighbour entry.
    pub async fn replace_neighbour(&self, n: &Neighbour) -> Result<()> {
        self.apply_one(BatchOp::ReplaceNeighbour(*n)).await
    }

    /// Deletes a neighbour entry (matched by device and IP); ENOENT if absent.
    pub async fn del_neighbour(&self, n: &Neighbour) -> Result<()> {
        self.apply_one(BatchOp::DelNeighbour(*n)).await
    }

    /// Adds or replaces an FDB entry.
    pub async fn replace_fdb(&self, e: &Fdb) -> Result<()> {
        self.apply_one(BatchOp::ReplaceFdb(*e)).await
    }

    /// Deletes an FDB entry (matched by device, MAC and dst); ENOENT if absent.
    pub async fn del_fdb(&self, e: &Fdb) -> Result<()> {
        self.apply_one(BatchOp::DelFdb(*e)).await
    }
}
