//! Choosing the external interface and the addresses other nodes reach us on.
//!
//! The rules are upstream's (reference §1.2): `--iface` names or IPs in order, then each
//! `--iface-regex` (matched against addresses first, then names), then `--iface-can-reach`;
//! with none of them, the interface owning `--public-ip` or else the default-route interface.
//! The choice is made by a pure function over a [`HostView`] snapshot so every rule is unit
//! tested without a kernel; [`HostView::load`] fills the snapshot from netlink.
//!
//! Deliberate improvements over upstream, listed in the README:
//! * in dual-stack mode the address of the family that was not named explicitly is taken from
//!   the chosen interface (upstream leaves it empty when `--iface` is an IPv4 address, and keeps
//!   a stale v4 match when a regex matches only the v4 side of an interface);
//! * `--public-ip` must be IPv4 and `--public-ipv6` IPv6 (upstream accepts either in both).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_types::IpStack;
use regex::Regex;

/// One address on a host interface, with the flags that decide preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Configured by hand or by DHCP with `IFA_F_PERMANENT` (preferred over dynamic ones).
    pub permanent: bool,
    /// `IFA_F_DEPRECATED`: never chosen.
    pub deprecated: bool,
    /// `IFA_F_TEMPORARY` (IPv6 privacy address): chosen last.
    pub temporary: bool,
}

/// One host interface as seen in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    /// Kernel ifindex.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// Addresses in kernel dump order.
    pub addrs: Vec<HostAddr>,
}

/// The result of `ip route get <ip>`: which interface and source address the kernel would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHint {
    /// Output interface index.
    pub oif: u32,
    /// Preferred source address, if the kernel chose one.
    pub src: Option<IpAddr>,
}

/// Everything interface selection needs to know about the host, captured once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// Interfaces sorted by ifindex (the order Go's `net.Interfaces` returns).
    pub links: Vec<HostLink>,
    /// Ifindex of the first IPv4 default route, or why there is none.
    pub default_v4: Result<u32, String>,
    /// Ifindex of the first IPv6 default route, or why there is none.
    pub default_v6: Result<u32, String>,
    /// `ip route get <--iface-can-reach>`, when that flag is set.
    pub can_reach: Option<Result<RouteHint, String>>,
}

impl HostView {
    /// Captures the host's interfaces, addresses and default routes through netlink, plus the
    /// route lookup for `--iface-can-reach` when given.
    ///
    /// Missing default routes are recorded, not fatal: they only matter when no interface flag
    /// is given, and then [`select`] reports them with upstream's wording.
    pub async fn load(
        nl: &flannel_netlink::Netlink,
        can_reach: Option<IpAddr>,
    ) -> Result<HostView, IfaceError> {
        use flannel_types::IpFamily;
        let err = IfaceError::Netlink;
        let mut links: Vec<HostLink> = nl
            .links()
            .await
            .map_err(err)?
            .into_iter()
            .map(|l| HostLink {
                index: l.index,
                name: l.name,
                mtu: l.mtu,
                addrs: Vec::new(),
            })
            .collect();
        links.sort_by_key(|l| l.index);
        for a in nl.addresses(None).await.map_err(err)? {
            if let Some(link) = links.iter_mut().find(|l| l.index == a.index) {
                link.addrs.push(HostAddr {
                    ip: a.ip,
                    prefix_len: a.prefix_len,
                    permanent: a.is_permanent(),
                    deprecated: a.is_deprecated(),
                    temporary: a.is_temporary(),
                });
            }
        }
        let default_for = |family: IpFamily, missing: &str| {
            let missing = missing.to_string();
            async move {
                match nl.default_route_link(family).await {
                    Ok(Some(idx)) => Ok(idx),
                    Ok(None) => Err(missing),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let default_v4 = default_for(IpFamily::V4, "Unable to find default route").await;
        let default_v6 = default_for(IpFamily::V6, "Unable to find default v6 route").await;
        let can_reach = match can_reach {
            None => None,
            Some(ip) => Some(match nl.route_get(ip).await {
                Ok(r) => match r.oif {
                    Some(oif) => Ok(RouteHint {
                        oif,
                        src: r.prefsrc,
                    }),
                    None => Err(format!(
                        "couldn't lookup route to {ip}: no output interface"
                    )),
                },
                Err(e) => Err(format!("couldn't lookup route to {ip}: {e}")),
            }),
        };
        Ok(HostView {
            links,
            default_v4,
            default_v6,
            can_reach,
        })
    }
}

/// What the user asked for: the interface flags and the public addresses.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--iface` values (names or IPs) in order.
    pub iface: Vec<String>,
    /// `--iface-regex` values in order.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`.
    pub iface_can_reach: Option<IpAddr>,
    /// `--public-ip` (or the kube `node-public-ip` annotation).
    pub public_ip: String,
    /// `--public-ipv6` (or the kube `node-public-ipv6` annotation).
    pub public_ipv6: String,
}

/// The interface flanneld sends overlay traffic from and the addresses it advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Ifindex of the chosen interface (the vxlan device's `dev`).
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MTU, from which backends derive theirs.
    pub mtu: u32,
    /// The interface's IPv4 address (vxlan `local`, udp bind address).
    pub iface_addr: Option<Ipv4Addr>,
    /// The interface's IPv6 address.
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// The IPv4 address peers reach us on (`--public-ip` or the interface address).
    pub ext_addr: Option<Ipv4Addr>,
    /// The IPv6 address peers reach us on.
    pub ext_v6_addr: Option<Ipv6Addr>,
}

impl ExternalInterface {
    /// The lease attributes every backend starts from: our public address(es) and the backend
    /// type; each backend then adds its `BackendData`. The IPv6 address is announced only by
    /// backends that carry IPv6 themselves (`with_v6`); vxlan adds it per device.
    pub fn lease_attrs(&self, backend_type: &str, with_v6: bool) -> flannel_types::LeaseAttrs {
        flannel_types::LeaseAttrs {
            public_ip: self.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: if with_v6 { self.ext_v6_addr } else { None },
            backend_type: backend_type.to_string(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

/// Why no external interface could be chosen. The top-level texts are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Automatic choice (no interface flags) failed.
    #[error("Failed to find any valid interface to use: {0}")]
    NoValidInterface(String),
    /// None of `--iface`, `--iface-regex`, `--iface-can-reach` matched; each attempt's reason
    /// is kept so the log says why.
    #[error(
        "Failed to find interface to use that matches the interfaces and/or regexes provided ({})",
        .0.join("; ")
    )]
    NoMatch(Vec<String>),
    /// `--public-ip` / `--public-ipv6` is not an address of the right family.
    #[error("invalid public IP address: {0}")]
    InvalidPublicIp(String),
    /// `--public-ipv6` is not an IPv6 address.
    #[error("invalid public IPv6 address: {0}")]
    InvalidPublicIpv6(String),
    /// The chosen interface reports MTU 0.
    #[error("failed to determine MTU for {0} interface")]
    NoMtu(String),
    /// Reading the host's interfaces failed.
    #[error("reading host interfaces: {0}")]
    Netlink(#[source] flannel_netlink::NetlinkError),
}

/// An interface chosen by one rule, with the addresses that rule already fixed.
struct Candidate<'a> {
    link: &'a HostLink,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

/// Go's `net.IP.IsGlobalUnicast`: not unspecified, loopback, multicast, link-local or broadcast.
fn is_global_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_link_local()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_unicast_link_local())
        }
    }
}

/// The usable addresses of one family on a link, best first: global before link-local,
/// permanent before dynamic, non-temporary before temporary; deprecated ones dropped.
fn ordered_addrs(link: &HostLink, want_v6: bool) -> Vec<IpAddr> {
    let mut v: Vec<&HostAddr> = link
        .addrs
        .iter()
        .filter(|a| a.ip.is_ipv6() == want_v6)
        .filter(|a| !a.deprecated)
        .filter(|a| is_global_unicast(&a.ip) || is_link_local(&a.ip))
        .collect();
    // Stable sort keeps the kernel's order among equals, like upstream.
    v.sort_by_key(|a| (is_link_local(&a.ip), !a.permanent, a.temporary));
    v.into_iter().map(|a| a.ip).collect()
}

fn first_v4(link: &HostLink) -> Option<Ipv4Addr> {
    ordered_addrs(link, false)
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
}

fn first_v6(link: &HostLink) -> Option<Ipv6Addr> {
    ordered_addrs(link, true)
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        })
}

fn owner_of(view: &HostView, ip: IpAddr) -> Option<&HostLink> {
    view.links
        .iter()
        .find(|l| l.addrs.iter().any(|a| a.ip == ip))
}

fn link_by_index(view: &HostView, index: u32) -> Result<&HostLink, String> {
    view.links
        .iter()
        .find(|l| l.index == index)
        .ok_or_else(|| format!("no interface with index {index}"))
}

/// `--iface <name|ip>` (also used for `--public-ip` when no interface flag is given).
fn by_name_or_ip<'a>(
    view: &'a HostView,
    stack: IpStack,
    value: &str,
) -> Result<Candidate<'a>, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        let link = owner_of(view, ip).ok_or_else(|| {
            let fam = if ip.is_ipv6() { "IPv6" } else { "IP" };
            format!("error looking up interface {value}: No interface with given {fam} found")
        })?;
        if ip.is_ipv6() && !stack.has_ipv6() {
            return Err(format!(
                "error looking up interface {value}: an IPv6 address but IPv6 is not enabled"
            ));
        }
        if ip.is_ipv4() && !stack.has_ipv4() {
            return Err(format!(
                "error looking up v6 interface {value}: an IPv4 address but only IPv6 is enabled"
            ));
        }
        return Ok(match ip {
            IpAddr::V4(a) => Candidate {
                link,
                v4: Some(a),
                v6: None,
            },
            IpAddr::V6(a) => Candidate {
                link,
                v4: None,
                v6: Some(a),
            },
        });
    }
    let link =
        view.links.iter().find(|l| l.name == value).ok_or_else(|| {
            format!("error looking up interface {value}: no such network interface")
        })?;
    Ok(Candidate {
        link,
        v4: None,
        v6: None,
    })
}

fn matching_ip(re: &Regex, ips: Vec<IpAddr>) -> Option<IpAddr> {
    ips.into_iter().find(|ip| re.is_match(&ip.to_string()))
}

/// `--iface-regex`: addresses first (per family as the stack needs), then names.
fn by_regex<'a>(
    view: &'a HostView,
    stack: IpStack,
    pattern: &str,
) -> Result<Candidate<'a>, String> {
    let re = Regex::new(pattern)
        .map_err(|e| format!("could not compile the IP address regex '{pattern}': {e}"))?;
    for link in &view.links {
        let v4 = if stack.has_ipv4() {
            matching_ip(&re, ordered_addrs(link, false))
        } else {
            None
        };
        let v6 = if stack.has_ipv6() {
            matching_ip(&re, ordered_addrs(link, true))
        } else {
            None
        };
        let hit = match stack {
            IpStack::V4 => v4.is_some(),
            IpStack::V6 => v6.is_some(),
            IpStack::Dual => v4.is_some() && v6.is_some(),
        };
        if hit {
            return Ok(Candidate {
                link,
                v4: v4.and_then(|ip| match ip {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                }),
                v6: v6.and_then(|ip| match ip {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                }),
            });
        }
    }
    if let Some(link) = view.links.iter().find(|l| re.is_match(&l.name)) {
        return Ok(Candidate {
            link,
            v4: None,
            v6: None,
        });
    }
    let available: Vec<String> = view
        .links
        .iter()
        .map(|l| {
            let ips: Vec<String> = ordered_addrs(l, stack == IpStack::V6)
                .iter()
                .map(IpAddr::to_string)
                .collect();
            format!("{}:[{}]", l.name, ips.join(" "))
        })
        .collect();
    Err(format!(
        "Could not match pattern {pattern} to any of the available network interfaces ({})",
        available.join(", ")
    ))
}

fn by_can_reach<'a>(view: &'a HostView, target: IpAddr) -> Result<Candidate<'a>, String> {
    let hint = match &view.can_reach {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(format!("failed to get ifcanreach based interface: {e}")),
        None => {
            return Err(format!(
                "failed to get ifcanreach based interface: no route lookup for {target}"
            ));
        }
    };
    let link = link_by_index(view, hint.oif)
        .map_err(|e| format!("failed to get ifcanreach based interface: {e}"))?;
    let (v4, v6) = match hint.src {
        Some(IpAddr::V4(a)) => (Some(a), None),
        Some(IpAddr::V6(a)) => (None, Some(a)),
        None => (None, None),
    };
    Ok(Candidate { link, v4, v6 })
}

fn by_default_route(view: &HostView, stack: IpStack) -> Result<Candidate<'_>, String> {
    let v4_link = if stack.has_ipv4() {
        let idx = view
            .default_v4
            .clone()
            .map_err(|e| format!("failed to get default interface: {e}"))?;
        Some(
            link_by_index(view, idx)
                .map_err(|e| format!("failed to get default interface: {e}"))?,
        )
    } else {
        None
    };
    let v6_link = if stack.has_ipv6() {
        let idx = view
            .default_v6
            .clone()
            .map_err(|e| format!("failed to get default v6 interface: {e}"))?;
        Some(
            link_by_index(view, idx)
                .map_err(|e| format!("failed to get default v6 interface: {e}"))?,
        )
    } else {
        None
    };
    let link = match (v4_link, v6_link) {
        (Some(a), Some(b)) if a.index != b.index => {
            return Err(format!(
                "v6 default route interface {} must be the same with v4 default route interface {}",
                b.name, a.name
            ));
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Err("none matched ip stack".into()),
    };
    Ok(Candidate {
        link,
        v4: None,
        v6: None,
    })
}

/// Completes a candidate into an [`ExternalInterface`]: fills the missing addresses from the
/// interface, checks the MTU and applies the public addresses.
fn finish(
    c: Candidate<'_>,
    stack: IpStack,
    sel: &Selection,
) -> Result<ExternalInterface, IfaceError> {
    let iface_addr = if stack.has_ipv4() {
        Some(match c.v4 {
            Some(a) => a,
            None => first_v4(c.link).ok_or_else(|| {
                IfaceError::NoValidInterface(format!(
                    "failed to find IPv4 address for interface {}",
                    c.link.name
                ))
            })?,
        })
    } else {
        None
    };
    let iface_v6_addr = if stack.has_ipv6() {
        Some(match c.v6 {
            Some(a) => a,
            None => first_v6(c.link).ok_or_else(|| {
                IfaceError::NoValidInterface(format!(
                    "failed to find IPv6 address for interface {}",
                    c.link.name
                ))
            })?,
        })
    } else {
        None
    };
    if c.link.mtu == 0 {
        return Err(IfaceError::NoMtu(c.link.name.clone()));
    }
    let ext_addr = if sel.public_ip.is_empty() {
        iface_addr
    } else {
        Some(
            sel.public_ip
                .parse::<Ipv4Addr>()
                .map_err(|_| IfaceError::InvalidPublicIp(sel.public_ip.clone()))?,
        )
    };
    let ext_v6_addr = if sel.public_ipv6.is_empty() {
        iface_v6_addr
    } else {
        Some(
            sel.public_ipv6
                .parse::<Ipv6Addr>()
                .map_err(|_| IfaceError::InvalidPublicIpv6(sel.public_ipv6.clone()))?,
        )
    };
    Ok(ExternalInterface {
        index: c.link.index,
        name: c.link.name.clone(),
        mtu: c.link.mtu,
        iface_addr,
        iface_v6_addr,
        ext_addr,
        ext_v6_addr,
    })
}

/// Chooses the external interface from a host snapshot, following upstream's order of rules.
pub fn select(
    view: &HostView,
    stack: IpStack,
    sel: &Selection,
) -> Result<ExternalInterface, IfaceError> {
    let explicit =
        !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.iface_can_reach.is_some();
    if !explicit {
        let public = if !sel.public_ip.is_empty() {
            Some(&sel.public_ip)
        } else if !sel.public_ipv6.is_empty() {
            Some(&sel.public_ipv6)
        } else {
            None
        };
        let cand = match public {
            Some(p) => by_name_or_ip(view, stack, p),
            None => by_default_route(view, stack),
        }
        .map_err(IfaceError::NoValidInterface)?;
        return finish(cand, stack, sel);
    }

    let mut reasons = Vec::new();
    for value in &sel.iface {
        match by_name_or_ip(view, stack, value).map_err(IfaceError::NoValidInterface) {
            Ok(c) => match finish(c, stack, sel) {
                Ok(ext) => return Ok(ext),
                Err(e) => reasons.push(format!("{value}: {e}")),
            },
            Err(e) => reasons.push(format!("{value}: {e}")),
        }
    }
    for pattern in &sel.iface_regex {
        match by_regex(view, stack, pattern).map_err(IfaceError::NoValidInterface) {
            Ok(c) => match finish(c, stack, sel) {
                Ok(ext) => return Ok(ext),
                Err(e) => reasons.push(format!("{pattern}: {e}")),
            },
            Err(e) => reasons.push(format!("{pattern}: {e}")),
        }
    }
    if let Some(target) = sel.iface_can_reach {
        match by_can_reach(view, target).map_err(IfaceError::NoValidInterface) {
            Ok(c) => match finish(c, stack, sel) {
                Ok(ext) => return Ok(ext),
                Err(e) => reasons.push(format!("{target}: {e}")),
            },
            Err(e) => reasons.push(format!("{target}: {e}")),
        }
    }
    Err(IfaceError::NoMatch(reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> HostAddr {
        HostAddr {
            ip: ip.parse().unwrap(),
            prefix_len: if ip.contains(':') { 64 } else { 24 },
            permanent: true,
            deprecated: false,
            temporary: false,
        }
    }

    fn link(index: u32, name: &str, addrs: Vec<HostAddr>) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            mtu: 1500,
            addrs,
        }
    }

    fn view() -> HostView {
        HostView {
            links: vec![
                link(1, "lo", vec![addr("127.0.0.1"), addr("::1")]),
                link(
                    2,
                    "eth0",
                    vec![addr("198.18.0.1"), addr("fd00::1"), addr("fe80::1")],
                ),
                link(3, "eth1", vec![addr("192.168.7.2"), addr("fd01::2")]),
                link(4, "ens5", vec![addr("169.254.3.3")]),
            ],
            default_v4: Ok(2),
            default_v6: Ok(2),
            can_reach: None,
        }
    }

    fn sel() -> Selection {
        Selection::default()
    }

    #[test]
    fn default_route_interface_when_nothing_given() {
        let e = select(&view(), IpStack::V4, &sel()).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(e.ext_addr, e.iface_addr);
        assert_eq!(e.mtu, 1500);
        assert_eq!(e.iface_v6_addr, None);
    }

    #[test]
    fn missing_default_route_is_reported() {
        let mut v = view();
        v.default_v4 = Err("Unable to find default route".into());
        let e = select(&v, IpStack::V4, &sel()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Failed to find any valid interface to use: failed to get default interface: Unable to find default route"
        );
    }

    #[test]
    fn dual_stack_default_routes_must_agree() {
        let mut v = view();
        v.default_v6 = Ok(3);
        let e = select(&v, IpStack::Dual, &sel()).unwrap_err();
        assert!(
            e.to_string()
                .contains("v6 default route interface eth1 must be the same with v4 default route interface eth0"),
            "{e}"
        );
        v.default_v6 = Ok(2);
        let ok = select(&v, IpStack::Dual, &sel()).unwrap();
        assert_eq!(ok.iface_v6_addr, Some("fd00::1".parse().unwrap()));
    }

    #[test]
    fn iface_by_name_and_by_ip() {
        let mut s = sel();
        s.iface = vec!["eth1".into()];
        assert_eq!(select(&view(), IpStack::V4, &s).unwrap().name, "eth1");
        s.iface = vec!["192.168.7.2".into()];
        let e = select(&view(), IpStack::V4, &s).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr, Some("192.168.7.2".parse().unwrap()));
    }

    #[test]
    fn iface_tried_in_order_first_match_wins() {
        let mut s = sel();
        s.iface = vec![
            "nope0".into(),
            "10.9.9.9".into(),
            "eth1".into(),
            "eth0".into(),
        ];
        assert_eq!(select(&view(), IpStack::V4, &s).unwrap().name, "eth1");
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let mut s = sel();
        // "eth0" as a regex matches the name eth0, but 192\.168 matches eth1's address.
        s.iface_regex = vec![r"192\.168\.".into()];
        assert_eq!(select(&view(), IpStack::V4, &s).unwrap().name, "eth1");
        s.iface_regex = vec!["^ens".into()];
        let e = select(&view(), IpStack::V4, &s).unwrap();
        assert_eq!(e.name, "ens5");
        // Only a link-local address: still used ("it'll do", as upstream says).
        assert_eq!(e.iface_addr, Some("169.254.3.3".parse().unwrap()));
    }

    #[test]
    fn iface_is_tried_before_regex_and_can_reach() {
        let mut s = sel();
        s.iface = vec!["eth0".into()];
        s.iface_regex = vec!["eth1".into()];
        assert_eq!(select(&view(), IpStack::V4, &s).unwrap().name, "eth0");
        s.iface = vec!["missing".into()];
        assert_eq!(select(&view(), IpStack::V4, &s).unwrap().name, "eth1");
    }

    #[test]
    fn can_reach_uses_route_lookup() {
        let mut v = view();
        v.can_reach = Some(Ok(RouteHint {
            oif: 3,
            src: Some("192.168.7.2".parse().unwrap()),
        }));
        let mut s = sel();
        s.iface_can_reach = Some("192.168.7.99".parse().unwrap());
        let e = select(&v, IpStack::V4, &s).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr, Some("192.168.7.2".parse().unwrap()));
        // --iface takes precedence over --iface-can-reach.
        s.iface = vec!["eth0".into()];
        assert_eq!(select(&v, IpStack::V4, &s).unwrap().name, "eth0");
    }

    #[test]
    fn nothing_matches_gives_upstream_text_with_reasons() {
        let mut s = sel();
        s.iface = vec!["eth9".into()];
        s.iface_regex = vec!["^wl".into()];
        let e = select(&view(), IpStack::V4, &s).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "Failed to find interface to use that matches the interfaces and/or regexes provided"
            ),
            "{msg}"
        );
        assert!(msg.contains("eth9: "), "{msg}");
        assert!(msg.contains("no such network interface"), "{msg}");
        assert!(msg.contains("Could not match pattern ^wl"), "{msg}");
    }

    #[test]
    fn public_ip_alone_selects_its_owner() {
        let mut s = sel();
        s.public_ip = "192.168.7.2".into();
        let e = select(&view(), IpStack::V4, &s).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.ext_addr, Some("192.168.7.2".parse().unwrap()));
        s.public_ip = "203.0.113.9".into();
        let e = select(&view(), IpStack::V4, &s).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Failed to find any valid interface to use: "),
            "{e}"
        );
    }

    #[test]
    fn public_ip_with_iface_may_be_a_nat_address() {
        let mut s = sel();
        s.iface = vec!["eth0".into()];
        s.public_ip = "203.0.113.9".into();
        let e = select(&view(), IpStack::V4, &s).unwrap();
        assert_eq!(e.iface_addr, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(e.ext_addr, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn invalid_public_ip_is_named() {
        let mut s = sel();
        s.iface = vec!["eth0".into()];
        s.public_ip = "not-an-ip".into();
        let e = select(&view(), IpStack::V4, &s).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid public IP address: not-an-ip"),
            "{e}"
        );
    }

    #[test]
    fn address_preference_order() {
        let mut dynamic = addr("10.0.0.5");
        dynamic.permanent = false;
        let mut deprecated = addr("10.0.0.4");
        deprecated.deprecated = true;
        let ll = addr("169.254.0.9");
        let perm = addr("10.0.0.7");
        let l = link(7, "x", vec![ll, deprecated, dynamic, perm]);
        assert_eq!(first_v4(&l), Some("10.0.0.7".parse().unwrap()));
        let mut tmp = addr("2001:db8::99");
        tmp.temporary = true;
        let stable = addr("2001:db8::1");
        let l6 = link(8, "y", vec![addr("fe80::5"), tmp, stable]);
        assert_eq!(first_v6(&l6), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn no_address_of_the_family_is_an_error() {
        let mut v = view();
        v.links.push(link(9, "bare", vec![]));
        let mut s = sel();
        s.iface = vec!["bare".into()];
        let e = select(&v, IpStack::V4, &s).unwrap_err();
        assert!(
            e.to_string()
                .contains("failed to find IPv4 address for interface bare"),
            "{e}"
        );
    }

    #[test]
    fn zero_mtu_is_an_error() {
        let mut v = view();
        v.links[1].mtu = 0;
        let e = select(&v, IpStack::V4, &sel()).unwrap_err();
        assert!(matches!(&e, IfaceError::NoMtu(n) if n == "eth0"), "{e}");
    }

    #[test]
    fn dual_stack_fills_the_other_family_from_the_interface() {
        let mut s = sel();
        s.iface = vec!["198.18.0.1".into()];
        let e = select(&view(), IpStack::Dual, &s).unwrap();
        assert_eq!(e.iface_addr, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(e.iface_v6_addr, Some("fd00::1".parse().unwrap()));
        assert_eq!(e.ext_v6_addr, e.iface_v6_addr);
    }

    #[test]
    fn v6_only_stack() {
        let e = select(&view(), IpStack::V6, &sel()).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, None);
        assert_eq!(e.ext_addr, None);
        assert_eq!(e.iface_v6_addr, Some("fd00::1".parse().unwrap()));
    }
}
