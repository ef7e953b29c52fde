//! The pure half of the wireguard backend: lease data, peers from leases, endpoint choice and
//! the update that turns a device's state into the desired one.
//!
//! Nothing here touches a device, so the unit tests below cover every mode and every way a
//! peer's lease can be wrong without root or a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use flannel_types::{IpFamily, Lease, RawJson};
use flannel_wireguard::{DeviceState, DeviceUpdate, Key, PeerConfig, PeerUpdate, Secret};
use ipnet::IpNet;

use super::config::Mode;
use crate::reconcile::ReconcileStats;

/// One device of ours: its name, its port and the inner families it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSpec {
    /// `flannel-wg` or `flannel-wg-v6`.
    pub name: &'static str,
    /// Its listen port (peers without a `Port` in their lease use it too, as upstream).
    pub port: u16,
    /// Inner families: one in separate mode, every enabled one otherwise.
    pub families: Vec<IpFamily>,
}

/// What the desired state depends on besides the leases.
#[derive(Debug, Clone)]
pub struct PeerContext {
    /// `Mode`.
    pub mode: Mode,
    /// Our devices, in order.
    pub devices: Vec<DevSpec>,
    /// `PSK`.
    pub psk: Option<Secret>,
    /// `PersistentKeepaliveInterval`.
    pub keepalive: u16,
    /// Our own public key: a lease carrying it is a copy of ours, never a peer.
    pub own_key: Key,
    /// Our public IPv4 address (auto mode's choice depends on it).
    pub ext_v4: Option<Ipv4Addr>,
    /// Our public IPv6 address.
    pub ext_v6: Option<Ipv6Addr>,
}

/// The peers one device should have, by public key.
pub type DevicePeers = BTreeMap<Key, PeerConfig>;

/// The desired state: per device (in [`PeerContext::devices`] order) its peers, and why
/// some leases were left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WgDesired {
    /// Per device.
    pub devices: Vec<DevicePeers>,
    /// One line per lease left out, logged once each.
    pub skipped: Vec<String>,
}

/// `{"PublicKey":"<base64>","Port":N}`: upstream's lease data since v0.26.6 (older
/// versions write no `Port`, and we read those too).
pub fn lease_data(key: &Key, port: u16) -> RawJson {
    RawJson::parse(&format!(r#"{{"PublicKey":"{key}","Port":{port}}}"#))
        .expect("a base64 key and a number are valid JSON")
}

/// A peer's key and port from its lease data; `Port` missing or 0 = ours.
pub fn parse_lease_data(data: Option<&RawJson>, what: &str) -> Result<(Key, Option<u16>), String> {
    let data = data.ok_or_else(|| format!("{what} is missing"))?;
    let obj = data
        .object(what)
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what} is null, expected {{\"PublicKey\":...}}"))?;
    let key = obj
        .string("PublicKey")
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what} has no PublicKey"))?;
    let key = Key::from_base64(&key, &format!("{what}.PublicKey")).map_err(|e| e.to_string())?;
    let port = match obj.int("Port").map_err(|e| format!("{what}: {e}"))? {
        None | Some(0) => None,
        Some(p) => Some(
            u16::try_from(p).map_err(|_| format!("{what}.Port {p} is out of range 0..65535"))?,
        ),
    };
    Ok((key, port))
}

/// RFC 1918 (Go's `ip.IP4.IsPrivate`).
fn private_v4(ip: Ipv4Addr) -> bool {
    ip.is_private()
}

/// Unique local fc00::/7 (Go's `ip.IP6.IsPrivate`).
fn private_v6(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

/// Upstream's auto mode: IPv4 when the peer's IPv4 is public and we have IPv4; IPv6 when
/// the peer's IPv6 and ours are both public; otherwise IPv4.
pub fn auto_family(
    peer_v4: Option<Ipv4Addr>,
    peer_v6: Option<Ipv6Addr>,
    ctx: &PeerContext,
) -> IpFamily {
    match (peer_v4, peer_v6) {
        (Some(_), None) | (None, None) => IpFamily::V4,
        (None, Some(_)) => IpFamily::V6,
        (Some(v4), Some(v6)) => {
            if !private_v4(v4) && ctx.ext_v4.is_some() {
                IpFamily::V4
            } else if !private_v6(v6) && ctx.ext_v6.is_some_and(|l| !private_v6(l)) {
                IpFamily::V6
            } else {
                IpFamily::V4
            }
        }
    }
}

fn public_v4(l: &Lease) -> Option<Ipv4Addr> {
    Some(l.attrs.public_ip).filter(|ip| !ip.is_unspecified())
}

/// One device's peer for one lease, or why there is none.
fn peer_for(l: &Lease, spec: &DevSpec, ctx: &PeerContext) -> Result<Option<PeerConfig>, String> {
    let allowed: Vec<IpNet> = spec
        .families
        .iter()
        .filter_map(|f| l.subnet_of(*f))
        .collect();
    if allowed.is_empty() {
        return Ok(None);
    }
    // The key: separate mode reads the device's family's data; one device reads the IPv6 data
    // when the lease has an IPv6 subnet, as upstream does, else the IPv4 data.
    let key_family = if spec.families.len() == 1 {
        spec.families[0]
    } else if l.ipv6_subnet.is_some() && spec.families.contains(&IpFamily::V6) {
        IpFamily::V6
    } else {
        IpFamily::V4
    };
    let name = |f: IpFamily| match f {
        IpFamily::V4 => "BackendData",
        IpFamily::V6 => "BackendV6Data",
    };
    let (key, _) = parse_lease_data(l.attrs.backend_data_of(key_family), name(key_family))?;
    let ep_family = match ctx.mode {
        Mode::Separate => spec.families[0],
        Mode::Ipv4 => IpFamily::V4,
        Mode::Ipv6 => IpFamily::V6,
        Mode::Auto => auto_family(public_v4(l), l.attrs.public_ipv6, ctx),
    };
    let ip = match ep_family {
        IpFamily::V4 => public_v4(l).map(IpAddr::V4).ok_or("it has no PublicIP")?,
        IpFamily::V6 => l
            .attrs
            .public_ipv6
            .map(IpAddr::V6)
            .ok_or("it has no PublicIPv6")?,
    };
    // The port comes with the data of the endpoint's family; missing or 0: ours.
    let port = if ep_family == key_family {
        parse_lease_data(l.attrs.backend_data_of(ep_family), name(ep_family))?.1
    } else {
        parse_lease_data(l.attrs.backend_data_of(ep_family), name(ep_family))
            .ok()
            .and_then(|(_, p)| p)
    };
    if key == ctx.own_key {
        return Err("it carries our own public key".into());
    }
    Ok(Some(PeerConfig {
        public_key: key,
        preshared_key: ctx.psk.clone(),
        endpoint: Some(SocketAddr::new(ip, port.unwrap_or(spec.port))),
        persistent_keepalive: ctx.keepalive,
        allowed_ips: allowed,
    }))
}

/// The peers every device should have. Leases of other backends and leases whose data is
/// unusable are left out with a reason; of two leases with one key (a node that re-registered
/// while its old lease lives on), the first in subnet order wins.
pub fn desired(peers: &[&Lease], ctx: &PeerContext) -> WgDesired {
    let mut out = WgDesired {
        devices: vec![DevicePeers::new(); ctx.devices.len()],
        skipped: Vec::new(),
    };
    let mut sorted: Vec<&Lease> = peers.to_vec();
    sorted.sort_by_key(|l| l.key());
    for l in sorted {
        if l.attrs.backend_type != "wireguard" {
            out.skipped.push(format!(
                "ignoring peer {} ({}): its backend is {:?}, not wireguard",
                l.key(),
                l.attrs.public_ip,
                l.attrs.backend_type
            ));
            continue;
        }
        for (spec, dev) in ctx.devices.iter().zip(out.devices.iter_mut()) {
            match peer_for(l, spec, ctx) {
                Ok(None) => {}
                Ok(Some(p)) => {
                    if let Some(first) = dev.get(&p.public_key) {
                        out.skipped.push(format!(
                            "ignoring peer {} on {}: its public key is already used by the peer of {:?}",
                            l.key(),
                            spec.name,
                            first.allowed_ips
                        ));
                    } else {
                        dev.insert(p.public_key, p);
                    }
                }
                Err(why) => {
                    out.skipped
                        .push(format!("ignoring peer {} on {}: {why}", l.key(), spec.name))
                }
            }
        }
    }
    out
}

/// The update that turns `actual` into `desired` for one device, with its counts: only what
/// differs is sent, so handshakes and counters of unchanged peers survive.
pub fn plan(
    desired: &DevicePeers,
    actual: &DeviceState,
    key: &Secret,
    port: u16,
) -> (DeviceUpdate, ReconcileStats) {
    let mut up = DeviceUpdate::default();
    let mut stats = ReconcileStats {
        peers: desired.len(),
        ..Default::default()
    };
    if actual.private_key.as_ref() != Some(key) {
        up.private_key = Some(key.clone());
    }
    if actual.listen_port != port {
        up.listen_port = Some(port);
    }
    let mut have: BTreeMap<Key, &PeerConfig> = BTreeMap::new();
    for p in &actual.peers {
        have.insert(p.config.public_key, &p.config);
    }
    for k in have.keys() {
        if !desired.contains_key(k) {
            up.peers.push(PeerUpdate::Remove(*k));
            stats.removed += 1;
        }
    }
    for (k, want) in desired {
        let Some(cur) = have.get(k) else {
            up.peers.push(PeerUpdate::Upsert {
                config: want.clone(),
                replace_allowed_ips: true,
            });
            stats.added += 1;
            continue;
        };
        // The lease is authoritative: an endpoint that roamed away from it is set back. In a
        // cluster every node is reached on its PublicIP and port; a device that roamed to
        // another port (upstream #1770: both sides stuck on random ports until flanneld is
        // restarted) heals on the next pass.
        let endpoint_stale = match (cur.endpoint, want.endpoint) {
            (_, None) => false,
            (c, Some(w)) => c != Some(w),
        };
        let same_ips = cur.allowed_ips.iter().collect::<BTreeSet<_>>()
            == want.allowed_ips.iter().collect::<BTreeSet<_>>();
        if same_ips
            && !endpoint_stale
            && cur.preshared_key == want.preshared_key
            && cur.persistent_keepalive == want.persistent_keepalive
        {
            stats.unchanged += 1;
            continue;
        }
        up.peers.push(PeerUpdate::Upsert {
            config: want.clone(),
            replace_allowed_ips: true,
        });
        stats.added += 1;
    }
    (up, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{lease, with_v6};
    use flannel_wireguard::PeerState;

    fn key(n: u8) -> Key {
        Secret::from_bytes([n; 32]).public_key()
    }

    fn wg(mut l: Lease, k: Key, port: Option<u16>, v6: bool) -> Lease {
        let data = match port {
            Some(p) => lease_data(&k, p),
            None => RawJson::parse(&format!(r#"{{"PublicKey":"{k}"}}"#)).unwrap(),
        };
        l.attrs.backend_type = "wireguard".into();
        l.attrs.backend_data = Some(data.clone());
        if v6 {
            l.attrs.backend_v6_data = Some(data);
        }
        l
    }

    fn ctx(mode: Mode, dual: bool) -> PeerContext {
        let devices = match (mode, dual) {
            (Mode::Separate, true) => vec![
                DevSpec {
                    name: "flannel-wg",
                    port: 51820,
                    families: vec![IpFamily::V4],
                },
                DevSpec {
                    name: "flannel-wg-v6",
                    port: 51821,
                    families: vec![IpFamily::V6],
                },
            ],
            (_, true) => vec![DevSpec {
                name: "flannel-wg",
                port: 51820,
                families: vec![IpFamily::V4, IpFamily::V6],
            }],
            (_, false) => vec![DevSpec {
                name: "flannel-wg",
                port: 51820,
                families: vec![IpFamily::V4],
            }],
        };
        PeerContext {
            mode,
            devices,
            psk: None,
            keepalive: 0,
            own_key: key(0),
            ext_v4: Some("198.18.0.1".parse().unwrap()),
            ext_v6: Some("2001:db8::1".parse().unwrap()),
        }
    }

    #[test]
    fn lease_data_is_upstreams_shape() {
        let k = key(1);
        assert_eq!(
            lease_data(&k, 51820).as_str(),
            format!(r#"{{"PublicKey":"{k}","Port":51820}}"#)
        );
        assert_eq!(
            parse_lease_data(Some(&lease_data(&k, 7)), "BackendData"),
            Ok((k, Some(7)))
        );
    }

    #[test]
    fn bad_lease_data_is_named() {
        let p = |s: &str| parse_lease_data(Some(&RawJson::parse(s).unwrap()), "BackendData");
        assert!(p("null").unwrap_err().contains("null"));
        assert!(p("{}").unwrap_err().contains("no PublicKey"));
        assert!(
            p(r#"{"PublicKey":"abc"}"#)
                .unwrap_err()
                .contains("BackendData.PublicKey")
        );
        let k = key(1);
        assert!(
            p(&format!(r#"{{"PublicKey":"{k}","Port":70000}}"#))
                .unwrap_err()
                .contains("Port 70000")
        );
        assert!(p(&format!(r#"{{"PublicKey":"{k}","Port":"x"}}"#)).is_err());
        assert!(
            parse_lease_data(None, "BackendData")
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn separate_mode_gives_one_peer_per_family_and_device() {
        let l = wg(
            with_v6(
                lease("10.244.2.0/24", "198.18.0.2", ""),
                "fd00:10:0:2::/64",
                Some("fd00::2"),
            ),
            key(2),
            Some(51820),
            true,
        );
        // The v6 data names the v6 port.
        let mut l = l;
        l.attrs.backend_v6_data = Some(lease_data(&key(2), 51821));
        let d = desired(&[&l], &ctx(Mode::Separate, true));
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        let p4 = &d.devices[0][&key(2)];
        assert_eq!(p4.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(
            p4.allowed_ips,
            vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
        );
        let p6 = &d.devices[1][&key(2)];
        assert_eq!(p6.endpoint, Some("[fd00::2]:51821".parse().unwrap()));
        assert_eq!(
            p6.allowed_ips,
            vec!["fd00:10:0:2::/64".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn a_lease_without_port_is_reached_on_our_port() {
        let l = wg(
            lease("10.244.2.0/24", "198.18.0.2", ""),
            key(2),
            None,
            false,
        );
        let mut c = ctx(Mode::Separate, false);
        c.devices[0].port = 6000;
        let d = desired(&[&l], &c);
        assert_eq!(
            d.devices[0][&key(2)].endpoint,
            Some("198.18.0.2:6000".parse().unwrap())
        );
    }

    #[test]
    fn single_device_modes_carry_both_subnets_and_pick_the_endpoint() {
        let mk = |v4: &str, v6: &str| {
            wg(
                with_v6(lease("10.244.2.0/24", v4, ""), "fd00:10:0:2::/64", Some(v6)),
                key(2),
                Some(51820),
                true,
            )
        };
        let ep = |mode, l: &Lease, c: &mut PeerContext| {
            c.mode = mode;
            desired(&[l], c).devices[0][&key(2)].endpoint.unwrap()
        };
        let mut c = ctx(Mode::Auto, true);
        let private = mk("10.0.0.2", "2001:db8::2");
        let public = mk("198.18.0.2", "2001:db8::2");
        assert_eq!(
            ep(Mode::Ipv4, &private, &mut c),
            "10.0.0.2:51820".parse().unwrap()
        );
        assert_eq!(
            ep(Mode::Ipv6, &private, &mut c),
            "[2001:db8::2]:51820".parse().unwrap()
        );
        // auto: a private IPv4 and global IPv6 on both sides -> IPv6
        assert_eq!(
            ep(Mode::Auto, &private, &mut c),
            "[2001:db8::2]:51820".parse().unwrap()
        );
        // auto: a public IPv4 -> IPv4
        assert_eq!(
            ep(Mode::Auto, &public, &mut c),
            "198.18.0.2:51820".parse().unwrap()
        );
        // auto: our own IPv6 is a ULA -> IPv4
        c.ext_v6 = Some("fd00::1".parse().unwrap());
        assert_eq!(
            ep(Mode::Auto, &private, &mut c),
            "10.0.0.2:51820".parse().unwrap()
        );
        let d = desired(&[&public], &c);
        assert_eq!(d.devices[0][&key(2)].allowed_ips.len(), 2);
    }

    #[test]
    fn unusable_leases_are_skipped_with_a_reason() {
        let other = lease("10.244.3.0/24", "198.18.0.3", "vxlan");
        let mut broken = wg(
            lease("10.244.4.0/24", "198.18.0.4", ""),
            key(4),
            Some(1),
            false,
        );
        broken.attrs.backend_data = Some(RawJson::parse(r#"{"PublicKey":"nope"}"#).unwrap());
        let ours = wg(
            lease("10.244.5.0/24", "198.18.0.5", ""),
            key(0),
            Some(1),
            false,
        );
        let dup1 = wg(
            lease("10.244.6.0/24", "198.18.0.6", ""),
            key(6),
            Some(1),
            false,
        );
        let dup2 = wg(
            lease("10.244.7.0/24", "198.18.0.7", ""),
            key(6),
            Some(1),
            false,
        );
        let no_v6 = wg(
            with_v6(
                lease("10.244.8.0/24", "198.18.0.8", ""),
                "fd00:10:0:8::/64",
                None,
            ),
            key(8),
            Some(1),
            true,
        );
        let d = desired(
            &[&other, &broken, &ours, &dup2, &dup1, &no_v6],
            &ctx(Mode::Separate, true),
        );
        let text = d.skipped.join("\n");
        assert!(text.contains("\"vxlan\""), "{text}");
        assert!(text.contains("BackendData.PublicKey"), "{text}");
        assert!(text.contains("our own public key"), "{text}");
        assert!(text.contains("already used"), "{text}");
        assert!(text.contains("no PublicIPv6"), "{text}");
        // the first of the duplicates in subnet order wins
        assert_eq!(
            d.devices[0][&key(6)].allowed_ips[0].to_string(),
            "10.244.6.0/24"
        );
        assert_eq!(d.devices[0].len(), 2); // key 6 and key 8 (v4 side)
    }

    fn state(key: &Secret, port: u16, peers: &[PeerConfig]) -> DeviceState {
        DeviceState {
            private_key: Some(key.clone()),
            listen_port: port,
            fwmark: 0,
            peers: peers
                .iter()
                .map(|c| PeerState {
                    config: c.clone(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect(),
        }
    }

    fn peer(k: Key, ep: &str, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            public_key: k,
            preshared_key: None,
            endpoint: Some(ep.parse().unwrap()),
            persistent_keepalive: 0,
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn plan_sends_only_changes_and_removes_stale_keys() {
        let me = Secret::from_bytes([9; 32]);
        let same = peer(key(1), "198.18.0.1:51820", &["10.244.1.0/24"]);
        let moved = peer(key(2), "198.18.0.2:51820", &["10.244.2.0/24"]);
        let new = peer(key(3), "198.18.0.3:51820", &["10.244.3.0/24"]);
        let desired: DevicePeers = [&same, &moved, &new]
            .iter()
            .map(|p| (p.public_key, (*p).clone()))
            .collect();
        let old_moved = peer(key(2), "198.18.0.22:51820", &["10.244.2.0/24"]);
        // key 4: a node that changed its key (upstream keeps the old entry forever)
        let stale = peer(key(4), "198.18.0.3:51820", &["10.244.3.0/24"]);
        let actual = state(&me, 51820, &[same.clone(), old_moved, stale]);
        let (up, stats) = plan(&desired, &actual, &me, 51820);
        assert_eq!(stats.counts(), (2, 1, 1, 3));
        assert!(up.private_key.is_none() && up.listen_port.is_none());
        assert_eq!(up.peers[0], PeerUpdate::Remove(key(4)), "removals first");
        let upsert = |k: Key| {
            up.peers.iter().find_map(|u| match u {
                PeerUpdate::Upsert {
                    config,
                    replace_allowed_ips,
                } if config.public_key == k => Some((config.clone(), *replace_allowed_ips)),
                _ => None,
            })
        };
        assert_eq!(upsert(key(2)).unwrap().0.endpoint, moved.endpoint);
        assert_eq!(upsert(key(3)), Some((new.clone(), true)));
        assert_eq!(upsert(key(1)), None);
        // Converged: nothing to send.
        let actual = state(&me, 51820, &[same, moved, new]);
        let (up, stats) = plan(&desired, &actual, &me, 51820);
        assert!(up.is_empty(), "{up:?}");
        assert_eq!(stats.counts(), (0, 0, 3, 3));
    }

    #[test]
    fn plan_sets_key_and_port_of_a_fresh_device() {
        let me = Secret::from_bytes([9; 32]);
        let (up, _) = plan(&DevicePeers::new(), &DeviceState::default(), &me, 51820);
        assert_eq!(up.private_key.as_ref(), Some(&me));
        assert_eq!(up.listen_port, Some(51820));
    }

    #[test]
    fn a_roamed_endpoint_is_set_back_to_the_leases() {
        let me = Secret::from_bytes([9; 32]);
        let want = peer(key(1), "198.18.0.1:51820", &["10.244.1.0/24"]);
        let desired: DevicePeers = [(key(1), want.clone())].into();
        let roamed = peer(key(1), "198.18.0.1:21771", &["10.244.1.0/24"]);
        let (up, stats) = plan(&desired, &state(&me, 51820, &[roamed]), &me, 51820);
        assert_eq!(stats.counts(), (1, 0, 0, 1));
        assert!(
            matches!(&up.peers[..], [PeerUpdate::Upsert { config, .. }] if config.endpoint == want.endpoint)
        );
    }
}
