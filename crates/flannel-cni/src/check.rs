//! CHECK's own look inside the container: does `CNI_IFNAME` still exist, up, with the MAC,
//! addresses and routes the ADD result (`prevResult`) promised?
//!
//! Done in-process so CHECK needs no `ip`/`nsenter` on the host: a helper thread joins the
//! container's network namespace (`setns` affects only that thread), lists addresses with
//! `getifaddrs` (a netlink dump in the thread's namespace) and reads the routing tables from
//! `/proc/thread-self/net/{route,ipv6_route}`, which show the calling thread's namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_types::{IpFamily, goip};
use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::SockaddrStorage;
use serde_json::{Map, Value};

use crate::error::{CHECK_MISMATCH, Coded, DECODE_FAILURE};

/// `prevResult` holds a value that is not what the CNI result types allow (code 6).
#[derive(Debug, thiserror::Error)]
pub enum PrevResultError {
    /// An `ips[].address` is not a CIDR.
    #[error("prevResult: ips[].address {0:?} is not a CIDR")]
    Address(String),
    /// A `routes[].dst` is not a CIDR.
    #[error("prevResult: routes[].dst {0:?} is not a CIDR")]
    Dst(String),
    /// A `routes[].gw` is not an address.
    #[error("prevResult: routes[].gw {0:?} is not an address")]
    Gateway(String),
}

impl Coded for PrevResultError {
    fn code(&self) -> u32 {
        DECODE_FAILURE
    }
}

/// The container's namespace could not be inspected (code 100: CHECK cannot confirm the pod).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// `CNI_NETNS` cannot be opened.
    #[error("cannot open netns {netns}: {source}")]
    Open {
        /// `CNI_NETNS`.
        netns: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `setns` into it failed.
    #[error("cannot enter netns {netns}: {source}")]
    Enter {
        /// `CNI_NETNS`.
        netns: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Its addresses cannot be listed.
    #[error("listing addresses in {netns}: {source}")]
    List {
        /// `CNI_NETNS`.
        netns: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// The inspecting thread panicked.
    #[error("netns inspection thread panicked")]
    Panicked,
}

impl Coded for ObserveError {
    fn code(&self) -> u32 {
        CHECK_MISMATCH
    }
}

/// What the container's namespace holds for one interface.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the interface exists.
    pub exists: bool,
    /// Whether it is administratively up.
    pub up: bool,
    /// Its MAC address, lower-case `aa:bb:..`.
    pub mac: Option<String>,
    /// Its addresses with prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// Routes through it: destination network, prefix, gateway (`None` for on-link).
    pub routes: Vec<(IpAddr, u8, Option<IpAddr>)>,
}

/// What `prevResult` says the container interface should have.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// MAC from the sandbox interface entry, if the result gave one.
    pub mac: Option<String>,
    /// Addresses (with prefix) assigned to the interface.
    pub addrs: Vec<(IpAddr, u8)>,
    /// Routes: destination, prefix, gateway if the result named one.
    pub routes: Vec<(IpAddr, u8, Option<IpAddr>)>,
}

/// Extracts what `prev` (a 0.4.0 or 1.x result) promises for interface `ifname`.
pub fn expected(prev: &Map<String, Value>, ifname: &str) -> Result<Expected, PrevResultError> {
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let iface_name = |i: usize| {
        interfaces
            .get(i)
            .and_then(|v| v.get("name"))
            .and_then(Value::as_str)
    };
    let mac = interfaces
        .iter()
        .find(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
        })
        .and_then(|i| i.get("mac"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_ascii_lowercase);
    let mut out = Expected {
        mac,
        ..Expected::default()
    };
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(idx) = ip.get("interface").and_then(Value::as_u64) {
            let Ok(idx) = usize::try_from(idx) else {
                continue;
            };
            if iface_name(idx) != Some(ifname) {
                continue;
            }
        }
        let addr = ip.get("address").and_then(Value::as_str).unwrap_or("");
        let c = goip::parse_cidr(addr).ok_or_else(|| PrevResultError::Address(addr.into()))?;
        out.addrs.push((c.addr, c.prefix));
    }
    for r in prev
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or("");
        let c = goip::parse_cidr(dst).ok_or_else(|| PrevResultError::Dst(dst.into()))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            None | Some("") => None,
            Some(g) => Some(goip::parse_ip(g).ok_or_else(|| PrevResultError::Gateway(g.into()))?),
        };
        let net = c.network();
        out.routes.push((net.network(), net.prefix_len(), gw));
    }
    Ok(out)
}

/// Reads what the namespace at `netns` holds for `ifname`.
pub fn observe(netns: &str, ifname: &str) -> Result<Observed, ObserveError> {
    let file = File::open(netns).map_err(|source| ObserveError::Open {
        netns: netns.into(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Observed, ObserveError> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| ObserveError::Enter {
                netns: netns.into(),
                source,
            })?;
            let mut seen = Observed::default();
            let addrs = getifaddrs().map_err(|source| ObserveError::List {
                netns: netns.into(),
                source,
            })?;
            for a in addrs.filter(|a| a.interface_name == ifname) {
                seen.exists = true;
                seen.up |= a.flags.contains(InterfaceFlags::IFF_UP);
                let Some(addr) = a.address else { continue };
                if let Some(l) = addr.as_link_addr() {
                    seen.mac = l.addr().map(|m| {
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    });
                } else if let Some(a) = with_prefix(&addr, a.netmask.as_ref()) {
                    seen.addrs.push(a);
                }
            }
            if let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/route") {
                seen.routes.extend(parse_route4(&t, ifname));
            }
            if let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/ipv6_route") {
                seen.routes.extend(parse_route6(&t, ifname));
            }
            Ok(seen)
        })
        .join()
        .unwrap_or(Err(ObserveError::Panicked))
    })
}

/// An interface address with the prefix length of its netmask (none: a host address), for
/// IPv4 and IPv6 alike; `None` for other address families.
fn with_prefix(addr: &SockaddrStorage, netmask: Option<&SockaddrStorage>) -> Option<(IpAddr, u8)> {
    let ip_of = |s: &SockaddrStorage| {
        s.as_sockaddr_in()
            .map(|a| IpAddr::V4(a.ip()))
            .or_else(|| s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
    };
    let ip = ip_of(addr)?;
    let family = IpFamily::of(&ip);
    let prefix = netmask
        .and_then(ip_of)
        .filter(|m| IpFamily::of(m) == family)
        .map_or(family.max_prefix_len(), |m| {
            let bits = match m {
                IpAddr::V4(m) => u32::from(m).count_ones(),
                IpAddr::V6(m) => u128::from(m).count_ones(),
            };
            bits as u8
        });
    Some((ip, prefix))
}

/// Parses `/proc/net/route` (IPv4 main table; addresses in host-endian hex) for `ifname`.
pub fn parse_route4(text: &str, ifname: &str) -> Vec<(IpAddr, u8, Option<IpAddr>)> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[0] != ifname {
                return None;
            }
            let dst = Ipv4Addr::from(hex(f[1])?);
            let gw = Ipv4Addr::from(hex(f[2])?);
            let mask = hex(f[7])?.count_ones() as u8;
            let gw = (!gw.is_unspecified()).then_some(IpAddr::V4(gw));
            Some((IpAddr::V4(dst), mask, gw))
        })
        .collect()
}

/// Parses `/proc/net/ipv6_route` for `ifname`.
pub fn parse_route6(text: &str, ifname: &str) -> Vec<(IpAddr, u8, Option<IpAddr>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[9] != ifname {
                return None;
            }
            let dst = Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?);
            let plen = u8::from_str_radix(f[1], 16).ok()?;
            let gw = Ipv6Addr::from(u128::from_str_radix(f[4], 16).ok()?);
            let gw = (!gw.is_unspecified()).then_some(IpAddr::V6(gw));
            Some((IpAddr::V6(dst), plen, gw))
        })
        .collect()
}

/// Lists every difference between what was promised and what is there (empty when healthy).
pub fn compare(ifname: &str, want: &Expected, seen: &Observed) -> Vec<String> {
    if !seen.exists {
        return vec![format!("interface {ifname} does not exist")];
    }
    let mut problems = Vec::new();
    if !seen.up {
        problems.push(format!("interface {ifname} is down"));
    }
    if let (Some(w), Some(s)) = (&want.mac, &seen.mac)
        && w != s
    {
        problems.push(format!("interface {ifname} has MAC {s}, expected {w}"));
    }
    for (ip, plen) in &want.addrs {
        if !seen.addrs.contains(&(*ip, *plen)) {
            problems.push(format!("address {ip}/{plen} is missing on {ifname}"));
        }
    }
    for (dst, plen, gw) in &want.routes {
        let found = seen
            .routes
            .iter()
            .any(|(d, p, g)| d == dst && p == plen && (gw.is_none() || g == gw));
        if !found {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            problems.push(format!("route {dst}/{plen}{via} is missing on {ifname}"));
        }
    }
    problems
}

/// The `prevResult` to give the delegate's CHECK: routes without `gw` get the gateway of the
/// first address of their family.
///
/// That is the route the bridge plugin installed (it applies the IPAM gateway to gateway-less
/// routes), and containernetworking-plugins up to at least 1.1.1 compare routes including the
/// gateway, so their CHECK fails for every flannel pod without this.
pub fn prev_result_for_delegate(prev: &Map<String, Value>) -> Map<String, Value> {
    let mut gw4 = None;
    let mut gw6 = None;
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(gw) = ip
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(goip::parse_ip)
        else {
            continue;
        };
        match gw {
            IpAddr::V4(_) if gw4.is_none() => gw4 = Some(gw),
            IpAddr::V6(_) if gw6.is_none() => gw6 = Some(gw),
            _ => {}
        }
    }
    let mut out = prev.clone();
    if let Some(Value::Array(routes)) = out.get_mut("routes") {
        for r in routes.iter_mut() {
            let Some(obj) = r.as_object_mut() else {
                continue;
            };
            if obj
                .get("gw")
                .and_then(Value::as_str)
                .is_some_and(|g| !g.is_empty())
            {
                continue;
            }
            let Some(dst) = obj
                .get("dst")
                .and_then(Value::as_str)
                .and_then(goip::parse_cidr)
            else {
                continue;
            };
            let gw = if dst.addr.is_ipv4() { gw4 } else { gw6 };
            if let Some(gw) = gw {
                obj.insert("gw".into(), Value::String(gw.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev() -> Map<String, Value> {
        serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
              "interfaces":[{"name":"cni0","mac":"aa:aa:aa:aa:aa:aa"},{"name":"veth1","mac":"bb:bb:bb:bb:bb:bb"},
                            {"name":"eth0","mac":"0A:58:0A:F4:01:02","sandbox":"/run/netns/p"}],
              "ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1","interface":2},
                     {"address":"fd00::2/64","gateway":"fd00::1","interface":2},
                     {"address":"192.0.2.1/32","interface":0}],
              "routes":[{"dst":"10.244.0.0/16"},{"dst":"0.0.0.0/0","gw":"10.244.1.1"},{"dst":"fd00:1::/56"}]}"#,
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn expected_takes_only_the_container_interface() {
        let e = expected(&prev(), "eth0").unwrap();
        assert_eq!(e.mac.as_deref(), Some("0a:58:0a:f4:01:02"));
        assert_eq!(e.addrs, vec![(ip("10.244.1.2"), 24), (ip("fd00::2"), 64)]);
        assert_eq!(
            e.routes,
            vec![
                (ip("10.244.0.0"), 16, None),
                (ip("0.0.0.0"), 0, Some(ip("10.244.1.1"))),
                (ip("fd00:1::"), 56, None)
            ]
        );
    }

    #[test]
    fn proc_route_tables_parse() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0101F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000F40A\t0101F40A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                  eth0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(
            parse_route4(v4, "eth0"),
            vec![
                (ip("0.0.0.0"), 0, Some(ip("10.244.1.1"))),
                (ip("10.244.0.0"), 16, Some(ip("10.244.1.1"))),
                (ip("10.244.1.0"), 24, None)
            ]
        );
        let v6 = "fd000001000000000000000000000000 38 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(
            parse_route6(v6, "eth0"),
            vec![
                (ip("fd00:1::"), 56, Some(ip("fd00::1"))),
                (ip("fe80::"), 64, None)
            ]
        );
    }

    #[test]
    fn compare_reports_each_difference() {
        let want = expected(&prev(), "eth0").unwrap();
        let healthy = Observed {
            exists: true,
            up: true,
            mac: Some("0a:58:0a:f4:01:02".into()),
            addrs: vec![(ip("10.244.1.2"), 24), (ip("fd00::2"), 64)],
            routes: vec![
                (ip("10.244.0.0"), 16, Some(ip("10.244.1.1"))),
                (ip("0.0.0.0"), 0, Some(ip("10.244.1.1"))),
                (ip("fd00:1::"), 56, Some(ip("fd00::1"))),
            ],
        };
        assert!(compare("eth0", &want, &healthy).is_empty());
        assert_eq!(
            compare("eth0", &want, &Observed::default()),
            vec!["interface eth0 does not exist"]
        );
        let broken = Observed {
            up: false,
            mac: Some("0a:00:00:00:00:01".into()),
            addrs: vec![(ip("10.244.1.2"), 16)],
            routes: vec![(ip("0.0.0.0"), 0, Some(ip("10.244.1.9")))],
            ..healthy
        };
        assert_eq!(
            compare("eth0", &want, &broken),
            vec![
                "interface eth0 is down",
                "interface eth0 has MAC 0a:00:00:00:00:01, expected 0a:58:0a:f4:01:02",
                "address 10.244.1.2/24 is missing on eth0",
                "address fd00::2/64 is missing on eth0",
                "route 10.244.0.0/16 is missing on eth0",
                "route 0.0.0.0/0 via 10.244.1.1 is missing on eth0",
                "route fd00:1::/56 is missing on eth0",
            ]
        );
    }

    #[test]
    fn delegate_prev_result_gets_gateways_for_gatewayless_routes() {
        let p = prev_result_for_delegate(&prev());
        let routes = p["routes"].as_array().unwrap();
        assert_eq!(routes[0]["gw"], "10.244.1.1");
        assert_eq!(routes[1]["gw"], "10.244.1.1");
        assert_eq!(routes[2]["gw"], "fd00::1");
        assert_eq!(p["ips"], prev()["ips"]);
    }

    #[test]
    fn prefixes_come_from_netmasks_of_either_family() {
        let s = |a: &str| SockaddrStorage::from(a.parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(
            with_prefix(&s("10.244.1.2:0"), Some(&s("255.255.255.0:0"))),
            Some((ip("10.244.1.2"), 24))
        );
        assert_eq!(
            with_prefix(&s("[fd00::2]:0"), Some(&s("[ffff:ffff:ffff:ffff::]:0"))),
            Some((ip("fd00::2"), 64))
        );
        assert_eq!(
            with_prefix(&s("10.0.0.1:0"), None),
            Some((ip("10.0.0.1"), 32))
        );
        assert_eq!(
            with_prefix(&s("[fd00::1]:0"), None),
            Some((ip("fd00::1"), 128))
        );
    }

    #[test]
    fn observe_reports_unopenable_netns() {
        let e = observe("/nonexistent/netns", "eth0").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot open netns /nonexistent/netns"),
            "{e}"
        );
        assert!(
            matches!(e, ObserveError::Open { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
    }
}
