//! Routes: dumps filtered the way reconciliation needs them, single lookups (`ip route get`),
//! the default-route interface, and the route shapes flannel programs.
//!
//! # Which routes are ours: the protocol field
//!
//! Every route flannel-rs creates carries [`RouteProtocol::FLANNEL`] (70, shown by
//! `ip route` as `proto 70`). The rtnetlink builder's default would be `static`, which admins
//! and other tools use too, and upstream flannel leaves the protocol unset, so the kernel
//! records `boot` (3), the same value `ip route add` uses.
//!
//! Reconciliation therefore adopts, inside the cluster Network and on our device (vxlan) or
//! via a peer (host-gw), routes whose protocol is ours **or `boot`**
//! ([`RouteProtocol::is_adoptable`]): after a switch from upstream flanneld to flannel-rs, or a
//! restart, those are the routes upstream made. A replace rewrites them with our protocol, so
//! after one reconcile they are plainly ours. Routes with any other protocol (`kernel` for
//! connected routes such as `cni0`'s, `bird`, `bgp`, ...) belong to someone else and are left
//! alone. Going back to upstream works too: its RouteReplace matches on destination, not on
//! protocol.
//!
//! # Scale note
//!
//! Installing thousands of IPv4 routes is superlinear in the kernel: its `fib_info` hash
//! ignores the gateway, so every flannel route (same device, protocol, scope, no metric) lands
//! in one bucket and each insert walks all earlier ones. Measured here, 5000 onlink routes take
//! ~0.4-0.5 s whether sent by `ip -batch` or [`Netlink::apply`], and ~0.09 s when each route has
//! a distinct metric. flannel-rs keeps upstream's route shape (no metric); this is why the
//! route phase dominates the batch benchmark.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_types::IpFamily;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteVia,
};

use crate::batch::BatchOp;
use crate::error::{NetlinkError, Result};
use crate::netlink::{Netlink, collect};
use crate::types::{Scope, address_family, ip_family};

/// The main routing table (254), where flannel's routes live.
pub const MAIN_TABLE: u32 = 254;
/// The local table (255): the kernel's local/broadcast routes.
pub const LOCAL_TABLE: u32 = 255;

/// The `rtm_protocol` of a route: who installed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteProtocol(pub u8);

impl RouteProtocol {
    /// RTPROT_UNSPEC; in a delete request it matches any protocol.
    pub const UNSPEC: Self = Self(0);
    /// RTPROT_REDIRECT.
    pub const REDIRECT: Self = Self(1);
    /// RTPROT_KERNEL: connected routes the kernel derives from addresses.
    pub const KERNEL: Self = Self(2);
    /// RTPROT_BOOT: `ip route add` and upstream flannel (vishvananda/netlink default).
    pub const BOOT: Self = Self(3);
    /// RTPROT_STATIC: admin-installed; rtnetlink's builder default.
    pub const STATIC: Self = Self(4);
    /// flannel-rs's own value (70, unassigned in iproute2's `rt_protos`). See the module docs.
    pub const FLANNEL: Self = Self(70);

    /// True for routes reconciliation may take over: ours, or `boot` ones left by upstream
    /// flannel (see the module docs).
    pub fn is_adoptable(self) -> bool {
        self == Self::FLANNEL || self == Self::BOOT
    }
}

impl fmt::Display for RouteProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UNSPEC => f.write_str("unspec"),
            Self::REDIRECT => f.write_str("redirect"),
            Self::KERNEL => f.write_str("kernel"),
            Self::BOOT => f.write_str("boot"),
            Self::STATIC => f.write_str("static"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// The `rtm_type` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A normal route.
    Unicast,
    /// A local address (local table; also what `route_get` of an own address returns).
    Local,
    /// Broadcast (local table).
    Broadcast,
    /// Anycast.
    Anycast,
    /// Multicast.
    Multicast,
    /// Silently drop: flannel-rs can blackhole its own subnet's unused space.
    Blackhole,
    /// Reject with "network unreachable".
    Unreachable,
    /// Reject with "prohibited".
    Prohibit,
    /// Continue lookup in the next rule.
    Throw,
    /// Any other value.
    Other(u8),
}

impl From<u8> for RouteKind {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Unicast,
            2 => Self::Local,
            3 => Self::Broadcast,
            4 => Self::Anycast,
            5 => Self::Multicast,
            6 => Self::Blackhole,
            7 => Self::Unreachable,
            8 => Self::Prohibit,
            9 => Self::Throw,
            o => Self::Other(o),
        }
    }
}

impl From<RouteKind> for u8 {
    fn from(k: RouteKind) -> u8 {
        match k {
            RouteKind::Unicast => 1,
            RouteKind::Local => 2,
            RouteKind::Broadcast => 3,
            RouteKind::Anycast => 4,
            RouteKind::Multicast => 5,
            RouteKind::Blackhole => 6,
            RouteKind::Unreachable => 7,
            RouteKind::Prohibit => 8,
            RouteKind::Throw => 9,
            RouteKind::Other(o) => o,
        }
    }
}

/// A route, both as flannel wants it and as a dump reports it.
///
/// Equality compares every field, so a dumped route equals the desired one only if the kernel
/// holds exactly what we would program (reconciliation then skips it). Note that the kernel
/// gives IPv6 routes metric 1024 when none is set, so desired IPv6 routes should say so.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix (`0.0.0.0/0` / `::/0` for default routes).
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is reachable on `oif` without a covering connected route
    /// (how the vxlan backend routes to a peer's `x.y.z.0` VTEP address).
    pub onlink: bool,
    /// Routing table.
    pub table: u32,
    /// Who installed it.
    pub protocol: RouteProtocol,
    /// Scope.
    pub scope: Scope,
    /// Type.
    pub kind: RouteKind,
    /// Metric (RTA_PRIORITY).
    pub metric: Option<u32>,
    /// Preferred source address (RTA_PREFSRC).
    pub prefsrc: Option<IpAddr>,
}

impl Route {
    fn base(dst: IpNet) -> Self {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            table: MAIN_TABLE,
            protocol: RouteProtocol::FLANNEL,
            scope: Scope::Universe,
            kind: RouteKind::Unicast,
            metric: None,
            prefsrc: None,
        }
    }

    /// The vxlan backend's route to a peer: `dst via gateway dev oif onlink`, where the gateway
    /// is the peer subnet's network address (its VTEP address).
    pub fn onlink_via(dst: IpNet, gateway: IpAddr, oif: u32) -> Self {
        Route {
            gateway: Some(gateway),
            oif: Some(oif),
            onlink: true,
            ..Self::base(dst)
        }
    }

    /// A gatewayed route (`dst via gateway [dev oif]`): host-gw and vxlan DirectRouting.
    pub fn via(dst: IpNet, gateway: IpAddr, oif: Option<u32>) -> Self {
        Route {
            gateway: Some(gateway),
            oif,
            ..Self::base(dst)
        }
    }

    /// A directly connected route (`dst dev oif scope link`).
    pub fn direct(dst: IpNet, oif: u32) -> Self {
        Route {
            oif: Some(oif),
            scope: Scope::Link,
            ..Self::base(dst)
        }
    }

    /// `blackhole dst`.
    pub fn blackhole(dst: IpNet) -> Self {
        Route {
            kind: RouteKind::Blackhole,
            ..Self::base(dst)
        }
    }

    /// The same route with another protocol (e.g. [`RouteProtocol::UNSPEC`] to delete
    /// regardless of who installed it).
    pub fn with_protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same route in another table.
    pub fn with_table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// The same route with a metric.
    pub fn with_metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    /// The address family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.dst)
    }

    /// Builds the kernel message. For deletes the scope is RT_SCOPE_NOWHERE (match any), as
    /// iproute2 does; protocol, type, gateway, oif and metric still narrow the match, and
    /// UNSPEC/`None`/0 values match anything.
    pub(crate) fn to_message(&self, for_delete: bool) -> Result<RouteMessage> {
        let family = self.family();
        for (what, ip) in [("gateway", self.gateway), ("prefsrc", self.prefsrc)] {
            if let Some(ip) = ip
                && IpFamily::of(&ip) != family
            {
                return Err(NetlinkError::InvalidArgument {
                    op: "encode route",
                    object: self.to_string(),
                    reason: format!("{what} {ip} is not of the destination's address family"),
                });
            }
        }
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = address_family(family);
        h.destination_prefix_length = self.dst.prefix_len();
        h.protocol = self.protocol.0.into();
        h.scope = u8::from(if for_delete {
            Scope::Nowhere
        } else {
            self.scope
        })
        .into();
        h.kind = u8::from(self.kind).into();
        if self.onlink {
            h.flags.insert(RouteFlags::Onlink);
        }
        if self.table < 256 {
            h.table = self.table as u8;
        } else {
            h.table = RouteHeader::RT_TABLE_UNSPEC;
            msg.attributes.push(RouteAttribute::Table(self.table));
        }
        if self.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(self.dst.addr().into()));
        }
        if let Some(gw) = self.gateway {
            msg.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(m) = self.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        if let Some(src) = self.prefsrc {
            msg.attributes.push(RouteAttribute::PrefSource(src.into()));
        }
        Ok(msg)
    }

    /// Converts a kernel route message; `None` for non-IP families (multicast routing tables
    /// and the like show up in unfiltered dumps).
    pub(crate) fn from_message(msg: &RouteMessage) -> Option<Self> {
        let family = ip_family(msg.header.address_family)?;
        let mut dst = None;
        let mut route = Route {
            dst: unspecified_net(family),
            gateway: None,
            oif: None,
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
            table: u32::from(msg.header.table),
            protocol: RouteProtocol(msg.header.protocol.into()),
            scope: Scope::from(u8::from(msg.header.scope)),
            kind: RouteKind::from(u8::from(msg.header.kind)),
            metric: None,
            prefsrc: None,
        };
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_addr(d),
                RouteAttribute::Gateway(g) => route.gateway = route_addr(g),
                RouteAttribute::Via(RouteVia::Inet(v)) => route.gateway = Some((*v).into()),
                RouteAttribute::Via(RouteVia::Inet6(v)) => route.gateway = Some((*v).into()),
                RouteAttribute::Oif(o) => route.oif = Some(*o),
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::PrefSource(s) => route.prefsrc = route_addr(s),
                RouteAttribute::MultiPath(hops) => {
                    // Multipath routes have no RTA_OIF; report the first hop's interface and
                    // gateway so "which interface does the default route use" has an answer.
                    if let Some(hop) = hops.first() {
                        if route.oif.is_none() && hop.interface_index > 0 {
                            route.oif = Some(hop.interface_index);
                        }
                        if route.gateway.is_none() {
                            route.gateway = hop.attributes.iter().find_map(|a| match a {
                                RouteAttribute::Gateway(g) => route_addr(g),
                                _ => None,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        let len = msg.header.destination_prefix_length;
        route.dst = IpNet::new(dst.unwrap_or(route.dst.addr()), len).ok()?;
        Some(route)
    }
}

impl fmt::Display for Route {
    /// `ip route`-like text for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Blackhole => f.write_str("blackhole ")?,
            k => write!(f, "type {} ", u8::from(k))?,
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        write!(f, " proto {}", self.protocol)?;
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

fn unspecified_net(family: IpFamily) -> IpNet {
    match family {
        IpFamily::V4 => IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpFamily::V6 => IpNet::from(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}

/// Which routes a dump should return. Every `None` field matches anything; the filtering is
/// done on our side (dumps are cheap next to the writes they save).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFilter {
    /// Only this family (both when `None`).
    pub family: Option<IpFamily>,
    /// Only this table.
    pub table: Option<u32>,
    /// Only routes through this output interface.
    pub oif: Option<u32>,
    /// Only routes whose destination lies inside this prefix (e.g. the cluster Network).
    pub within: Option<IpNet>,
    /// Only routes with this protocol.
    pub protocol: Option<RouteProtocol>,
}

impl RouteFilter {
    /// Routes of the main table, the usual starting point.
    pub fn main() -> Self {
        Self {
            table: Some(MAIN_TABLE),
            ..Self::default()
        }
    }

    /// Narrows to one family.
    pub fn family(mut self, family: IpFamily) -> Self {
        self.family = Some(family);
        self
    }

    /// Narrows to one output interface.
    pub fn oif(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    /// Narrows to destinations inside `net`; also fixes the family to `net`'s.
    pub fn within(mut self, net: IpNet) -> Self {
        self.family = Some(IpFamily::of_net(&net));
        self.within = Some(net);
        self
    }

    /// Narrows to one protocol.
    pub fn protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// True if `r` passes the filter.
    pub fn matches(&self, r: &Route) -> bool {
        self.family.is_none_or(|f| f == r.family())
            && self.table.is_none_or(|t| t == r.table)
            && self.oif.is_none_or(|o| Some(o) == r.oif)
            && self.protocol.is_none_or(|p| p == r.protocol)
            && self.within.is_none_or(|net| net.contains(&r.dst))
    }
}

/// The kernel's answer to "how would a packet to X be routed" (`ip route get X`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLookup {
    /// Output interface.
    pub oif: Option<u32>,
    /// Next hop; `None` when the destination is on a directly connected network.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would use (`--iface-can-reach` takes it as the public IP).
    pub prefsrc: Option<IpAddr>,
    /// Route type: `Local` for the host's own addresses, `Unicast` normally.
    pub kind: RouteKind,
}

impl RouteLookup {
    /// True when the destination is reachable without a gateway (same L2 segment): upstream's
    /// `DirectRouting` test for the vxlan backend.
    pub fn is_on_link(&self) -> bool {
        self.kind == RouteKind::Unicast && self.gateway.is_none()
    }
}

impl Netlink {
    /// Dumps routes and returns those that pass `filter`, in kernel order.
    pub async fn routes(&self, filter: &RouteFilter) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in IpFamily::ALL {
            if filter.family.is_some_and(|f| f != family) {
                continue;
            }
            let mut msg = RouteMessage::default();
            msg.header.address_family = address_family(family);
            let msgs = collect("list routes", "", self.handle().route().get(msg).execute()).await?;
            out.extend(
                msgs.iter()
                    .filter_map(Route::from_message)
                    .filter(|r| filter.matches(r)),
            );
        }
        Ok(out)
    }

    /// The interface of the first default route (`0.0.0.0/0`, `::/0`, or no destination) of
    /// the main table, or `None` if there is none.
    ///
    /// Unlike upstream, default routes without an interface (blackhole/unreachable) are skipped
    /// rather than reported as an error, and a multipath default route yields its first hop's
    /// interface.
    pub async fn default_route_link(&self, family: IpFamily) -> Result<Option<u32>> {
        let routes = self.routes(&RouteFilter::main().family(family)).await?;
        Ok(routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.kind == RouteKind::Unicast)
            .find_map(|r| r.oif))
    }

    /// Asks the kernel how it would route a packet to `dst` (RTM_GETROUTE for one address).
    /// Fails with ENETUNREACH when there is no route.
    pub async fn route_get(&self, dst: IpAddr) -> Result<RouteLookup> {
        let family = IpFamily::of(&dst);
        let mut msg = RouteMessage::default();
        msg.header.address_family = address_family(family);
        msg.header.destination_prefix_length = family.max_prefix_len();
        msg.attributes.push(RouteAttribute::Destination(dst.into()));
        let object = dst.to_string();
        let mut stream = std::pin::pin!(self.handle().route().get(msg).execute());
        let answer = stream
            .try_next()
            .await
            .map_err(|e| NetlinkError::from_rtnl("route get", object.as_str(), e))?
            .ok_or_else(|| NetlinkError::Protocol {
                op: "route get",
                object: object.clone(),
                reason: "the kernel sent no route".into(),
            })?;
        let r = Route::from_message(&answer).ok_or_else(|| NetlinkError::Protocol {
            op: "route get",
            object,
            reason: "the kernel answered with a non-IP route".into(),
        })?;
        Ok(RouteLookup {
            oif: r.oif,
            gateway: r.gateway,
            prefsrc: r.prefsrc,
            kind: r.kind,
        })
    }

    /// Adds a route; EEXIST if one with the same key (dst, table, metric) exists.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        self.apply_one(BatchOp::AddRoute(route.clone())).await
    }

    /// Adds or replaces the route with the same key (dst, table, metric): the equivalent of
    /// `ip route replace`, which upstream uses.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.apply_one(BatchOp::ReplaceRoute(route.clone())).await
    }

    /// Deletes a route; ESRCH if none matches.
    pub async fn del_route(&self, route: &Route) -> Result<()> {
        self.apply_one(BatchOp::DelRoute(route.clone())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let routes = [
            Route::onlink_via(
                "10.244.2.0/24".parse().unwrap(),
                "10.244.2.0".parse().unwrap(),
                5,
            ),
            Route::via(
                "10.244.3.0/24".parse().unwrap(),
                "192.0.2.3".parse().unwrap(),
                Some(2),
            )
            .with_metric(10),
            Route::direct("10.244.1.0/24".parse().unwrap(), 7).with_table(1000),
            Route::blackhole("fd00:10::/64".parse().unwrap()).with_protocol(RouteProtocol::BOOT),
        ];
        for r in routes {
            let msg = r.to_message(false).unwrap();
            assert_eq!(Route::from_message(&msg).as_ref(), Some(&r), "{r}");
        }
    }

    #[test]
    fn constructor_truncates_host_bits() {
        let r = Route::blackhole("10.244.1.7/24".parse().unwrap());
        assert_eq!(r.dst, "10.244.1.0/24".parse::<IpNet>().unwrap());
    }

    #[test]
    fn delete_message_matches_any_scope() {
        let r = Route::direct("10.0.0.0/8".parse().unwrap(), 1);
        let m = r.to_message(true).unwrap();
        assert_eq!(u8::from(m.header.scope), 255);
    }

    #[test]
    fn mixed_families_are_rejected() {
        let r = Route::via(
            "10.0.0.0/8".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            None,
        );
        let e = r.to_message(false).unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn filter_within_and_protocol() {
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        let f = RouteFilter::main()
            .within(net)
            .protocol(RouteProtocol::FLANNEL);
        assert!(f.matches(&Route::blackhole("10.244.9.0/24".parse().unwrap())));
        assert!(!f.matches(&Route::blackhole("10.0.0.0/8".parse().unwrap())));
        assert!(!f.matches(&Route::blackhole("0.0.0.0/0".parse().unwrap())));
        assert!(!f.matches(
            &Route::blackhole("10.244.9.0/24".parse().unwrap()).with_protocol(RouteProtocol::BOOT)
        ));
        assert!(!f.matches(&Route::blackhole("fd00::/64".parse().unwrap())));
        assert!(RouteProtocol::BOOT.is_adoptable() && RouteProtocol::FLANNEL.is_adoptable());
        assert!(!RouteProtocol::KERNEL.is_adoptable() && !RouteProtocol::STATIC.is_adoptable());
    }
}
