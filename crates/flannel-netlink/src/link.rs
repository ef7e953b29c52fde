//! Links: queries for interface selection, and the few changes flannel makes to links
//! (create bridge or WireGuard device, set up/down, MTU, MAC, delete).

use futures::TryStreamExt;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    InfoData, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkWireguard};

use crate::error::{NetlinkError, Result};
use crate::netlink::{Netlink, collect};
use crate::types::MacAddr;
use crate::vxlan::VxlanInfo;

/// What flannel needs to know about a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index (`ifindex`), the stable handle for routes, neighbours and vxlan `dev`.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes; flannel derives the overlay MTU from the external interface's.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Loopback device (`IFF_LOOPBACK`), never a valid external interface.
    pub loopback: bool,
    /// The raw `IFF_*` flags for anything not covered above.
    pub flags: u32,
    /// The link kind from IFLA_INFO_KIND ("vxlan", "bridge", "veth", ...); `None` for physical
    /// devices and `lo`.
    pub kind: Option<String>,
    /// The hardware address when it is a 6-byte Ethernet address.
    pub mac: Option<MacAddr>,
    /// The bridge/bond this link is enslaved to (IFLA_MASTER).
    pub master: Option<u32>,
    /// The parent/peer link (IFLA_LINK), e.g. a veth's peer index.
    pub link: Option<u32>,
    /// vxlan parameters when `kind` is "vxlan".
    pub vxlan: Option<VxlanInfo>,
}

impl LinkInfo {
    /// Converts a kernel link message.
    pub(crate) fn from_message(msg: &LinkMessage) -> Self {
        let flags = msg.header.flags;
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            up: flags.contains(LinkFlags::Up),
            lower_up: flags.contains(LinkFlags::LowerUp),
            loopback: flags.contains(LinkFlags::Loopback),
            flags: flags.bits(),
            kind: None,
            mac: None,
            master: None,
            link: None,
            vxlan: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::Address(a) => info.mac = MacAddr::from_slice(a),
                LinkAttribute::Controller(m) => info.master = Some(*m),
                LinkAttribute::Link(l) => info.link = Some(*l),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                            NlLinkInfo::Data(InfoData::Vxlan(v)) => {
                                info.vxlan = Some(VxlanInfo::from_attributes(v));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

impl Netlink {
    /// All links of the namespace, in kernel (ifindex) order.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs = collect("list links", "", self.handle().link().get().execute()).await?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// The link with this name, or `None` if there is none (ENODEV is not an error here:
    /// "does flannel.1 exist?" is a normal question).
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let req = self.handle().link().get().match_name(name).execute();
        first_link("get link", name, req).await
    }

    /// The link with this index, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let req = self.handle().link().get().match_index(index).execute();
        first_link("get link", &format!("index {index}"), req).await
    }

    /// Like [`Netlink::link_by_name`] but a missing link is an error; for code paths that just
    /// created it.
    pub(crate) async fn require_link(&self, op: &'static str, name: &str) -> Result<LinkInfo> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::Protocol {
                op,
                object: name.to_string(),
                reason: "link vanished right after it was created".into(),
            })
    }

    /// Creates a Linux bridge (down; raise it with [`Netlink::set_link_up`]). flannel-rs itself
    /// leaves `cni0` to the CNI bridge plugin; this exists for tests and the lab.
    pub async fn create_bridge(&self, name: &str, mtu: Option<u32>) -> Result<LinkInfo> {
        let mut b = LinkMessageBuilder::<LinkBridge>::new(name);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.new_link("create bridge", name, b.build()).await?;
        self.require_link("create bridge", name).await
    }

    /// Creates a kernel WireGuard device (down, no keys: those go over generic netlink).
    ///
    /// A kernel without the WireGuard module answers EOPNOTSUPP ("Unknown device type"), which
    /// [`NetlinkError::is_not_supported`] recognises: the wireguard backend then runs its
    /// userspace device instead. EEXIST ([`NetlinkError::is_already_exists`]) when the name is
    /// taken.
    pub async fn create_wireguard(&self, name: &str, mtu: Option<u32>) -> Result<LinkInfo> {
        let mut b = LinkMessageBuilder::<LinkWireguard>::new(name);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.new_link("create wireguard link", name, b.build())
            .await?;
        self.require_link("create wireguard link", name).await
    }

    /// Sends an exclusive RTM_NEWLINK (EEXIST when the name is taken).
    pub(crate) async fn new_link(
        &self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<()> {
        self.execute_one(
            op,
            name,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    }

    /// Deletes a link (and with it every route, neighbour, FDB entry and address on it).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.execute_one(
            "delete link",
            format!("index {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
        .await
    }

    /// Sets a link administratively up.
    pub async fn set_link_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.change_link("set link up", index, msg).await
    }

    /// Sets a link administratively down.
    pub async fn set_link_down(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.change_link("set link down", index, msg).await
    }

    /// Sets a link's MTU (flannel keeps the vxlan device at underlay MTU - 50).
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.change_link("set link mtu", index, msg).await
    }

    /// Sets a link's MAC address, e.g. to restore the VTEP MAC recorded in the node's lease
    /// after something (systemd's MACAddressPolicy) rewrote it.
    pub async fn set_link_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.octets().to_vec())
            .build();
        self.change_link("set link mac", index, msg).await
    }

    async fn change_link(&self, op: &'static str, index: u32, msg: LinkMessage) -> Result<()> {
        self.execute_one(
            op,
            format!("index {index}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }
}

async fn first_link(
    op: &'static str,
    object: &str,
    stream: impl futures::Stream<Item = std::result::Result<LinkMessage, rtnetlink::Error>>,
) -> Result<Option<LinkInfo>> {
    let mut stream = std::pin::pin!(stream);
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) => {
            let e = NetlinkError::from_rtnl(op, object, e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}
