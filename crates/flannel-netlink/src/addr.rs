//! Interface addresses: listing (for choosing the public IP) and add/delete (the vxlan device's
//! `<subnet>/32`).

use std::net::IpAddr;

use flannel_types::IpFamily;
use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};

use crate::error::Result;
use crate::netlink::{Netlink, collect};
use crate::types::{Scope, address_family};

/// `IFA_F_*` address flags, kept raw with helpers for the ones address selection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AddrFlags(pub u32);

impl AddrFlags {
    /// IFA_F_SECONDARY; for IPv6 the same bit is IFA_F_TEMPORARY.
    pub const SECONDARY: u32 = 0x01;
    /// IFA_F_DADFAILED.
    pub const DADFAILED: u32 = 0x08;
    /// IFA_F_DEPRECATED: preferred lifetime over, do not choose for new traffic.
    pub const DEPRECATED: u32 = 0x20;
    /// IFA_F_TENTATIVE: DAD not finished.
    pub const TENTATIVE: u32 = 0x40;
    /// IFA_F_PERMANENT: configured by hand (no valid lifetime), as opposed to SLAAC/DHCP.
    pub const PERMANENT: u32 = 0x80;

    /// True if all bits of `bit` are set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

/// One address on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    /// Interface index.
    pub index: u32,
    /// The address (IFA_LOCAL for IPv4, IFA_ADDRESS for IPv6).
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Scope.
    pub scope: Scope,
    /// Flags (from IFA_FLAGS when present, which supersedes the 8-bit header field).
    pub flags: AddrFlags,
    /// IPv4 label (e.g. "eth0:1").
    pub label: Option<String>,
}

impl AddrInfo {
    /// Address with prefix, e.g. `10.244.1.0/32`.
    pub fn net(&self) -> IpNet {
        IpNet::new(self.ip, self.prefix_len).unwrap_or_else(|_| IpNet::from(self.ip))
    }

    /// Manually configured (IFA_F_PERMANENT), preferred by upstream over dynamic addresses.
    pub fn is_permanent(&self) -> bool {
        self.flags.has(AddrFlags::PERMANENT)
    }

    /// Preferred lifetime expired; upstream never picks these.
    pub fn is_deprecated(&self) -> bool {
        self.flags.has(AddrFlags::DEPRECATED)
    }

    /// IPv6 privacy (temporary) address; upstream prefers non-temporary ones.
    pub fn is_temporary(&self) -> bool {
        self.ip.is_ipv6() && self.flags.has(AddrFlags::SECONDARY)
    }

    /// IPv4 secondary address (another address of the same subnet was there first).
    pub fn is_secondary(&self) -> bool {
        self.ip.is_ipv4() && self.flags.has(AddrFlags::SECONDARY)
    }

    /// DAD not finished or failed: the address is not usable yet.
    pub fn is_tentative(&self) -> bool {
        self.flags.has(AddrFlags::TENTATIVE) || self.flags.has(AddrFlags::DADFAILED)
    }

    pub(crate) fn from_message(msg: &AddressMessage) -> Option<Self> {
        let mut local = None;
        let mut address = None;
        let mut flags = AddrFlags(u32::from(msg.header.flags.bits()));
        let mut label = None;
        for a in &msg.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Flags(f) => flags = AddrFlags(f.bits()),
                AddressAttribute::Label(l) => label = Some(l.clone()),
                _ => {}
            }
        }
        Some(AddrInfo {
            index: msg.header.index,
            ip: local.or(address)?,
            prefix_len: msg.header.prefix_len,
            scope: Scope::from(u8::from(msg.header.scope)),
            flags,
            label,
        })
    }
}

impl Netlink {
    /// Addresses of one interface (`Some(index)`) or of all, both families.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<AddrInfo>> {
        let mut req = self.handle().address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs = collect("list addresses", "", req.execute()).await?;
        Ok(msgs
            .iter()
            .filter_map(AddrInfo::from_message)
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Adds an address; EEXIST if it is already there.
    ///
    /// IPv4 addresses shorter than /31 get the subnet broadcast address, as upstream's netlink
    /// library does.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        let msg = address_message(index, net);
        self.execute_one(
            "add address",
            format!("{net} on index {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    }

    /// Deletes an address; EADDRNOTAVAIL if it is not there.
    pub async fn del_address(&self, index: u32, net: IpNet) -> Result<()> {
        let msg = address_message(index, net);
        self.execute_one(
            "delete address",
            format!("{net} on index {index}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
        .await
    }
}

fn address_message(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = address_family(IpFamily::of_net(&net));
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    let ip = net.addr();
    // As iproute2 does: loopback addresses get host scope, everything else global.
    msg.header.scope = if ip.is_loopback() {
        AddressScope::Host
    } else {
        AddressScope::Universe
    };
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    if let IpNet::V4(v4) = net
        && v4.prefix_len() < 31
    {
        msg.attributes
            .push(AddressAttribute::Broadcast(v4.broadcast()));
    }
    msg
}
