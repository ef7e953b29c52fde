//! vxlan: a kernel VXLAN device per address family with static neighbour, FDB and route
//! entries for every peer (upstream's design since the L2MISS/L3MISS removal).
//!
//! Per peer, for its subnet `S` with VTEP MAC `M` and public IP `P`:
//! * neighbour `S.network lladdr M dev flannel.<VNI> nud permanent`;
//! * FDB `M dev flannel.<VNI> self permanent dst P`;
//! * route `S via S.network dev flannel.<VNI> onlink`;
//!
//! or, with `DirectRouting` and `P` on the same L2 segment, just `S via P`.
//!
//! Unlike upstream, the device is checked on every reconcile: if someone deleted it, or it was
//! recreated with different parameters, it is rebuilt with the same MAC and every entry is
//! replayed from the desired state in one batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use flannel_netlink::{BatchOp, Fdb, IpFamily, LinkInfo, MacAddr, Neighbour, VxlanSpec};
use flannel_types::{Lease, LeaseAttrs, NetConfig, RawJson};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::routes::{OwnedRoutes, RouteSpace, RouteTarget, plan};
use super::{BackendEnv, BackendError, nl_err, tally};
use crate::reconcile::{ReconcileStats, diff};

/// Bytes VXLAN adds to every packet over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14), upstream's `encapOverhead`.
pub const ENCAP_OVERHEAD: u32 = 50;

/// The same over an IPv6 underlay (outer IPv6 header is 40 bytes). Upstream uses 50 here too,
/// which the kernel refuses (a vxlan device over IPv6 may be at most lower MTU - 70), so its
/// `flannel-v6.<VNI>` cannot be created with the default MTU on a 1500-byte underlay.
pub const ENCAP_OVERHEAD_V6: u32 = 70;

/// How long a DirectRouting "is this peer on-link?" answer is trusted before asking the kernel
/// again (underlay routes rarely change; a repair tick picks changes up within this time).
const ONLINK_CACHE_TTL: Duration = Duration::from_secs(60);

/// The `Backend` settings of net-conf.json for vxlan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `VNI`, default 1.
    pub vni: u32,
    /// `Port`; 0 leaves the kernel default 8472.
    pub port: u16,
    /// `GBP`.
    pub gbp: bool,
    /// `Learning`.
    pub learning: bool,
    /// `MTU`: the underlay MTU to assume (the device gets MTU - 50).
    pub mtu: Option<u32>,
    /// `DirectRouting`.
    pub direct_routing: bool,
}

impl VxlanConfig {
    /// Parses the `Backend` object with Go's leniency (case-insensitive keys) and checks ranges.
    pub fn from_net_config(config: &NetConfig) -> Result<VxlanConfig, BackendError> {
        let bad = |e: flannel_types::GoJsonError| BackendError::Config(e.to_string());
        let obj = config.backend_object().map_err(bad)?;
        let mut c = VxlanConfig {
            vni: 1,
            port: 0,
            gbp: false,
            learning: false,
            mtu: None,
            direct_routing: false,
        };
        let Some(obj) = obj else { return Ok(c) };
        if let Some(v) = obj.uint("VNI").map_err(bad)? {
            c.vni = u32::try_from(v)
                .ok()
                .filter(|v| *v < (1 << 24))
                .ok_or_else(|| {
                    BackendError::Config(format!("Backend.VNI {v} is out of range 0..16777215"))
                })?;
        }
        if let Some(v) = obj.uint("Port").map_err(bad)? {
            c.port = u16::try_from(v).map_err(|_| {
                BackendError::Config(format!("Backend.Port {v} is out of range 0..65535"))
            })?;
        }
        c.gbp = obj.bool("GBP").map_err(bad)?.unwrap_or(false);
        c.learning = obj.bool("Learning").map_err(bad)?.unwrap_or(false);
        c.direct_routing = obj.bool("DirectRouting").map_err(bad)?.unwrap_or(false);
        if let Some(v) = obj.uint("MTU").map_err(bad)? {
            let mtu = u32::try_from(v)
                .ok()
                .filter(|m| *m > ENCAP_OVERHEAD + 68)
                .ok_or_else(|| {
                    BackendError::Config(format!(
                        "Backend.MTU {v} is too small or too large (the device gets MTU - {ENCAP_OVERHEAD}, which must be at least 68)"
                    ))
                })?;
            c.mtu = Some(mtu);
        }
        Ok(c)
    }
}

/// Reads `VtepMAC` out of a lease's backend data (`{"VNI":1,"VtepMAC":"..."}`).
pub fn vtep_mac(data: Option<&RawJson>) -> Result<MacAddr, String> {
    let data = data.ok_or("no backend data")?;
    let obj = data
        .object("BackendData")
        .map_err(|e| e.to_string())?
        .ok_or("backend data is null")?;
    let s = obj
        .string("VtepMAC")
        .map_err(|e| e.to_string())?
        .ok_or("backend data has no VtepMAC")?;
    let mac = MacAddr::from_str(&s).map_err(|e| format!("VtepMAC {s:?}: {e}"))?;
    if mac.is_zero() || mac.is_multicast() {
        return Err(format!("VtepMAC {s:?} is not a unicast MAC"));
    }
    Ok(mac)
}

/// The backend data we publish for one device.
fn backend_data(vni: u32, mac: MacAddr) -> RawJson {
    // Field order and spelling as upstream's vxlanLeaseAttrs.
    RawJson::parse(&format!(r#"{{"VNI":{vni},"VtepMAC":"{mac}"}}"#))
        .expect("static JSON shape is valid")
}

/// A random locally administered unicast MAC, as upstream's `mac.NewHardwareAddr`.
fn random_mac() -> MacAddr {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

/// One VXLAN device (v4 `flannel.<VNI>` or v6 `flannel-v6.<VNI>`).
#[derive(Debug)]
struct Device {
    family: IpFamily,
    spec: VxlanSpec,
    index: Option<u32>,
    network: IpNet,
}

/// The vxlan backend.
#[derive(Debug)]
pub struct VxlanBackend {
    env: BackendEnv,
    cfg: VxlanConfig,
    devices: Vec<Device>,
    own: Option<Lease>,
    onlink: HashMap<IpAddr, (Option<u32>, Instant)>,
    warned: HashSet<String>,
}

impl VxlanBackend {
    /// Parses the config and plans one device per enabled family.
    pub fn new(config: &NetConfig, env: BackendEnv) -> Result<VxlanBackend, BackendError> {
        let cfg = VxlanConfig::from_net_config(config)?;
        info!(
            "VXLAN config: VNI={} Port={} GBP={} Learning={} DirectRouting={}",
            cfg.vni, cfg.port, cfg.gbp, cfg.learning, cfg.direct_routing
        );
        let underlay_mtu = cfg.mtu.unwrap_or(env.ext.mtu);
        let mut devices = Vec::new();
        if let Some(net) = env.network {
            let local = env.ext.ext_addr.ok_or_else(|| {
                BackendError::Missing("vxlan needs an IPv4 public address".into())
            })?;
            let mut spec = VxlanSpec::new(format!("flannel.{}", cfg.vni), cfg.vni);
            spec.local = Some(IpAddr::V4(local));
            devices.push(Device {
                family: IpFamily::V4,
                spec,
                index: None,
                network: IpNet::V4(net),
            });
        }
        if let Some(net) = env.ipv6_network {
            let local = env.ext.ext_v6_addr.ok_or_else(|| {
                BackendError::Missing("vxlan needs an IPv6 public address".into())
            })?;
            let mut spec = VxlanSpec::new(format!("flannel-v6.{}", cfg.vni), cfg.vni);
            spec.local = Some(IpAddr::V6(local));
            devices.push(Device {
                family: IpFamily::V6,
                spec,
                index: None,
                network: IpNet::V6(net),
            });
        }
        for d in &mut devices {
            d.spec.dev = Some(env.ext.index);
            d.spec.port = cfg.port;
            d.spec.learning = cfg.learning;
            d.spec.gbp = cfg.gbp;
            let overhead = match d.family {
                IpFamily::V4 => ENCAP_OVERHEAD,
                IpFamily::V6 => ENCAP_OVERHEAD_V6,
            };
            d.spec.mtu = Some(underlay_mtu.saturating_sub(overhead));
        }
        Ok(VxlanBackend {
            env,
            cfg,
            devices,
            own: None,
            onlink: HashMap::new(),
            warned: HashSet::new(),
        })
    }

    /// The pod MTU: the underlay MTU (or `Backend.MTU`) minus the VXLAN overhead; in
    /// dual-stack the smaller of the two devices', since a pod has one MTU for both families.
    pub fn mtu(&self) -> u32 {
        self.devices
            .iter()
            .filter_map(|d| d.spec.mtu)
            .min()
            .unwrap_or_else(|| {
                self.cfg
                    .mtu
                    .unwrap_or(self.env.ext.mtu)
                    .saturating_sub(ENCAP_OVERHEAD)
            })
    }

    /// Device names, watched by the daemon for deletion.
    pub fn devices(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.spec.name.clone()).collect()
    }

    /// Creates or adopts the devices and returns our lease attributes. The MAC comes from a
    /// compatible existing device, else from `stored` (the datastore's memory of this node),
    /// else is random; it then stays fixed for the life of the process.
    pub async fn prepare(
        &mut self,
        stored: Option<&LeaseAttrs>,
    ) -> Result<LeaseAttrs, BackendError> {
        for i in 0..self.devices.len() {
            if self.devices[i].spec.mac.is_none() {
                let hint = stored.and_then(|s| {
                    let data = match self.devices[i].family {
                        IpFamily::V4 => s.backend_data.as_ref(),
                        IpFamily::V6 => s.backend_v6_data.as_ref(),
                    };
                    vtep_mac(data).ok()
                });
                if let Some(mac) = hint {
                    info!("reusing VTEP MAC {mac} from the stored lease");
                }
                self.devices[i].spec.mac = hint;
            }
            self.ensure_device(i).await?;
        }
        let mut attrs = LeaseAttrs {
            public_ip: self.env.ext.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: None,
        };
        for d in &self.devices {
            let mac = d.spec.mac.expect("ensure_device sets the MAC");
            match d.family {
                IpFamily::V4 => attrs.backend_data = Some(backend_data(self.cfg.vni, mac)),
                IpFamily::V6 => {
                    attrs.public_ipv6 = self.env.ext.ext_v6_addr;
                    attrs.backend_v6_data = Some(backend_data(self.cfg.vni, mac));
                }
            }
        }
        Ok(attrs)
    }

    /// Makes device `i` exist with our spec, up, with the MAC we publish. Returns true when
    /// it had to be created.
    async fn ensure_device(&mut self, i: usize) -> Result<bool, BackendError> {
        let nl = self.env.nl.clone();
        let name = self.devices[i].spec.name.clone();
        let existing = nl
            .link_by_name(&name)
            .await
            .map_err(nl_err(format!("looking up {name}")))?;
        let mut created = false;
        let link: LinkInfo = match existing {
            Some(l) => match self.devices[i].spec.incompatibility(&l) {
                None => {
                    if self.devices[i].spec.mac.is_none() {
                        self.devices[i].spec.mac = l.mac;
                    }
                    l
                }
                Some(why) => {
                    warn!(
                        "{name:?} already exists with incompatible configuration: {why}; recreating device"
                    );
                    nl.delete_link(l.index)
                        .await
                        .map_err(nl_err(format!("deleting {name}")))?;
                    created = true;
                    self.create(i).await?
                }
            },
            None => {
                created = true;
                self.create(i).await?
            }
        };
        let d = &mut self.devices[i];
        d.index = Some(link.index);
        let want_mtu = d.spec.mtu.unwrap_or(link.mtu);
        if link.mtu != want_mtu {
            nl.set_link_mtu(link.index, want_mtu)
                .await
                .map_err(nl_err(format!("setting MTU {want_mtu} on {name}")))?;
        }
        let want_mac = d.spec.mac;
        if let (Some(want), Some(have)) = (want_mac, link.mac)
            && want != have
        {
            // An adopted device whose MAC differs from what we publish: the device's MAC is
            // what peers must use, unless we already published ours (then restore it).
            nl.set_link_mac(link.index, want)
                .await
                .map_err(nl_err(format!("setting MAC {want} on {name}")))?;
        }
        if !link.up || created {
            nl.set_link_up(link.index)
                .await
                .map_err(nl_err(format!("setting {name} up")))?;
        }
        if d.family == IpFamily::V6 {
            let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
            if let Err(e) = std::fs::write(&path, "0") {
                debug!("could not write {path}: {e}");
            }
        }
        // Verify after up: udev/systemd's MACAddressPolicy may rewrite it (upstream #1795).
        let now = nl
            .link_by_index(link.index)
            .await
            .map_err(nl_err(format!("looking up {name}")))?
            .ok_or_else(|| BackendError::Missing(format!("{name} vanished after creation")))?;
        match (want_mac, now.mac) {
            (Some(want), Some(got)) if want != got => {
                return Err(BackendError::MacMismatch {
                    dev: name,
                    want: want.to_string(),
                    got: got.to_string(),
                });
            }
            (None, got) => self.devices[i].spec.mac = got,
            _ => {}
        }
        if created {
            info!(
                "created {name} (index {}, MAC {})",
                link.index,
                self.devices[i]
                    .spec
                    .mac
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            );
        }
        Ok(created)
    }

    async fn create(&mut self, i: usize) -> Result<LinkInfo, BackendError> {
        let d = &mut self.devices[i];
        if d.spec.mac.is_none() {
            d.spec.mac = Some(random_mac());
        }
        self.env
            .nl
            .create_vxlan(&d.spec)
            .await
            .map_err(nl_err(format!("creating {}", d.spec.name)))
    }

    /// Gives each device our subnet's network address (`/32`, `/128`) and removes other
    /// addresses of the cluster network from it (upstream's EnsureV4AddressOnLink).
    pub async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = Some(own.clone());
        for i in 0..self.devices.len() {
            self.ensure_address(i).await?;
        }
        Ok(())
    }

    async fn ensure_address(&self, i: usize) -> Result<(), BackendError> {
        let d = &self.devices[i];
        let (Some(own), Some(index)) = (&self.own, d.index) else {
            return Ok(());
        };
        let want: Option<IpNet> = match d.family {
            IpFamily::V4 => own
                .subnet
                .map(|s| IpNet::V4(ipnet::Ipv4Net::new(s.network(), 32).expect("/32"))),
            IpFamily::V6 => own
                .ipv6_subnet
                .map(|s| IpNet::V6(ipnet::Ipv6Net::new(s.network(), 128).expect("/128"))),
        };
        let Some(want) = want else { return Ok(()) };
        let nl = &self.env.nl;
        let addrs = nl
            .addresses(Some(index))
            .await
            .map_err(nl_err(format!("listing addresses of {}", d.spec.name)))?;
        let mut have = false;
        for a in addrs {
            if IpFamily::of(&a.ip) != d.family {
                continue;
            }
            if a.net() == want {
                have = true;
                continue;
            }
            let stale = match (d.family, a.ip) {
                (IpFamily::V4, ip) => d.network.contains(&ip),
                (IpFamily::V6, IpAddr::V6(ip)) => !ip.is_unicast_link_local(),
                _ => false,
            };
            if stale {
                info!("removing address {} from {}", a.net(), d.spec.name);
                nl.del_address(index, a.net())
                    .await
                    .map_err(nl_err(format!("removing {} from {}", a.net(), d.spec.name)))?;
            }
        }
        if !have {
            nl.add_address(index, want)
                .await
                .map_err(nl_err(format!("adding {want} to {}", d.spec.name)))?;
        }
        Ok(())
    }

    /// Whether a peer's public IP is on-link (DirectRouting), and through which interface.
    async fn onlink_oif(&mut self, ip: IpAddr) -> Option<u32> {
        if let Some((oif, at)) = self.onlink.get(&ip)
            && at.elapsed() < ONLINK_CACHE_TTL
        {
            return *oif;
        }
        let oif = match self.env.nl.route_get(ip).await {
            Ok(r) if r.is_on_link() => r.oif,
            Ok(_) => None,
            Err(e) => {
                debug!("route lookup for {ip} failed: {e}");
                None
            }
        };
        self.onlink.insert(ip, (oif, Instant::now()));
        oif
    }

    fn warn_once(&mut self, key: String) {
        if self.warned.len() > 10_000 {
            self.warned.clear();
        }
        if self.warned.insert(key.clone()) {
            warn!("{key}");
        }
    }

    /// Converges devices, neighbours, FDB entries and routes to the peer set.
    pub async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        // 1. The devices themselves: recreated if deleted or changed, address restored.
        for i in 0..self.devices.len() {
            let name = self.devices[i].spec.name.clone();
            let link = self
                .env
                .nl
                .link_by_name(&name)
                .await
                .map_err(nl_err(format!("looking up {name}")))?;
            let healthy = link.as_ref().is_some_and(|l| {
                Some(l.index) == self.devices[i].index
                    && l.up
                    && self.devices[i].spec.incompatibility(l).is_none()
                    && l.mac == self.devices[i].spec.mac
            });
            if !healthy {
                if link.is_none() {
                    warn!("{name} is gone; recreating it and replaying every peer");
                }
                self.ensure_device(i).await?;
            }
            self.ensure_address(i).await?;
        }

        // 2. Desired entries.
        let mut neigh: BTreeMap<(u32, IpAddr), MacAddr> = BTreeMap::new();
        let mut fdb: BTreeMap<(u32, MacAddr, IpAddr), ()> = BTreeMap::new();
        let mut routes: BTreeMap<IpNet, RouteTarget> = BTreeMap::new();
        let mut used = 0;
        for p in peers {
            if p.attrs.backend_type != "vxlan" {
                debug!(
                    "ignoring non-vxlan peer {} ({})",
                    p.key(),
                    p.attrs.backend_type
                );
                continue;
            }
            let mut any = false;
            for i in 0..self.devices.len() {
                let (family, index) = (self.devices[i].family, self.devices[i].index);
                let Some(index) = index else { continue };
                let (subnet, public, data) = match family {
                    IpFamily::V4 => (
                        p.subnet.map(IpNet::V4),
                        Some(IpAddr::V4(p.attrs.public_ip)),
                        p.attrs.backend_data.as_ref(),
                    ),
                    IpFamily::V6 => (
                        p.ipv6_subnet.map(IpNet::V6),
                        p.attrs.public_ipv6.map(IpAddr::V6),
                        p.attrs.backend_v6_data.as_ref(),
                    ),
                };
                let (Some(subnet), Some(public)) = (subnet, public) else {
                    continue;
                };
                if self.cfg.direct_routing
                    && let Some(oif) = self.onlink_oif(public).await
                {
                    routes.insert(
                        subnet,
                        RouteTarget {
                            gateway: Some(public),
                            oif: Some(oif),
                            onlink: false,
                        },
                    );
                    any = true;
                    continue;
                }
                let mac = match vtep_mac(data) {
                    Ok(m) => m,
                    Err(e) => {
                        self.warn_once(format!("ignoring peer {} ({public}): {e}", p.key()));
                        continue;
                    }
                };
                let vtep = subnet.network();
                neigh.insert((index, vtep), mac);
                fdb.insert((index, mac, public), ());
                routes.insert(
                    subnet,
                    RouteTarget {
                        gateway: Some(vtep),
                        oif: Some(index),
                        onlink: true,
                    },
                );
                any = true;
            }
            if any {
                used += 1;
            }
        }

        // 3. What the kernel holds.
        let mut actual_neigh = BTreeMap::new();
        let mut actual_fdb = BTreeMap::new();
        for d in &self.devices {
            let Some(index) = d.index else { continue };
            for n in self
                .env
                .nl
                .neighbours(Some(index))
                .await
                .map_err(nl_err(format!("dumping neighbours of {}", d.spec.name)))?
            {
                if n.state.is_permanent()
                    && IpFamily::of(&n.ip) == d.family
                    && let Some(mac) = n.mac
                {
                    actual_neigh.insert((index, n.ip), mac);
                }
            }
            for e in self
                .env
                .nl
                .fdb_entries(Some(index))
                .await
                .map_err(nl_err(format!("dumping FDB of {}", d.spec.name)))?
            {
                if let Some(f) = e.as_fdb() {
                    actual_fdb.insert((f.ifindex, f.mac, f.dst), ());
                }
            }
        }
        let space = self.route_space();
        let actual_routes = OwnedRoutes::load(&self.env.nl, &space).await?;

        // 4. Diff and apply in one batch: removals first, then neighbours and FDB before the
        // routes that use them.
        let dn = diff(&neigh, &actual_neigh);
        let df = diff(&fdb, &actual_fdb);
        let rp = plan(&routes, actual_routes);
        let mut stats = ReconcileStats {
            peers: used,
            ..Default::default()
        };
        stats.absorb(&dn);
        stats.absorb(&df);
        stats.added += rp.added;
        stats.removed += rp.removed;
        stats.unchanged += rp.unchanged;

        let mut ops: Vec<BatchOp> = rp.deletes;
        ops.extend(dn.delete.iter().map(|((ifindex, ip), mac)| {
            BatchOp::DelNeighbour(Neighbour {
                ifindex: *ifindex,
                ip: *ip,
                mac: *mac,
            })
        }));
        ops.extend(df.delete.iter().map(|((ifindex, mac, dst), ())| {
            BatchOp::DelFdb(Fdb {
                ifindex: *ifindex,
                mac: *mac,
                dst: *dst,
            })
        }));
        ops.extend(dn.upsert.iter().map(|((ifindex, ip), mac)| {
            BatchOp::ReplaceNeighbour(Neighbour {
                ifindex: *ifindex,
                ip: *ip,
                mac: *mac,
            })
        }));
        ops.extend(df.upsert.iter().map(|((ifindex, mac, dst), ())| {
            BatchOp::ReplaceFdb(Fdb {
                ifindex: *ifindex,
                mac: *mac,
                dst: *dst,
            })
        }));
        ops.extend(rp.upserts);
        // The maps and diffs are only inputs to `ops`: free them before the batch is encoded
        // and sent, which keeps the peak of a 5000-peer first pass a few MiB lower.
        drop((neigh, fdb, routes, actual_neigh, actual_fdb, dn, df));
        if !ops.is_empty() {
            let report = self.env.nl.apply(&ops).await;
            tally(&ops, &report, "vxlan", &mut stats);
        }
        Ok(stats)
    }

    fn route_space(&self) -> RouteSpace {
        let mut s = RouteSpace::default();
        for d in &self.devices {
            s.networks.push(d.network);
        }
        if let Some(own) = &self.own {
            s.own.extend(own.subnet.map(IpNet::V4));
            s.own.extend(own.ipv6_subnet.map(IpNet::V6));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<VxlanConfig, BackendError> {
        let c = NetConfig::parse(json).unwrap();
        VxlanConfig::from_net_config(&c)
    }

    #[test]
    fn config_defaults_and_go_leniency() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.vni, 1);
        assert_eq!(c.port, 0);
        assert!(!c.gbp && !c.learning && !c.direct_routing);
        assert_eq!(c.mtu, None);
        let c = cfg(
            r#"{"Network":"10.244.0.0/16","Backend":{"type":"vxlan","vni":4096,"PORT":4789,"directRouting":true,"GBP":true,"learning":true,"Mtu":9000}}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            VxlanConfig {
                vni: 4096,
                port: 4789,
                gbp: true,
                learning: true,
                mtu: Some(9000),
                direct_routing: true
            }
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = cfg(r#"{"Backend":{"Type":"vxlan","VNI":"one"}}"#).unwrap_err();
        assert!(e.to_string().contains("VNI"), "{e}");
        let e = cfg(r#"{"Backend":{"Type":"vxlan","VNI":16777216}}"#).unwrap_err();
        assert!(e.to_string().contains("Backend.VNI 16777216"), "{e}");
        let e = cfg(r#"{"Backend":{"Type":"vxlan","Port":70000}}"#).unwrap_err();
        assert!(e.to_string().contains("Backend.Port 70000"), "{e}");
        let e = cfg(r#"{"Backend":{"Type":"vxlan","MTU":100}}"#).unwrap_err();
        assert!(e.to_string().contains("Backend.MTU 100"), "{e}");
    }

    #[test]
    fn backend_data_is_upstreams_shape() {
        let mac: MacAddr = "0e:2a:aa:bb:cc:dd".parse().unwrap();
        assert_eq!(
            backend_data(1, mac).as_str(),
            r#"{"VNI":1,"VtepMAC":"0e:2a:aa:bb:cc:dd"}"#
        );
        assert_eq!(vtep_mac(Some(&backend_data(1, mac))), Ok(mac));
    }

    #[test]
    fn vtep_mac_rejects_bad_data() {
        let parse = |s: &str| vtep_mac(Some(&RawJson::parse(s).unwrap()));
        assert!(parse(r#"{"VNI":1}"#).unwrap_err().contains("no VtepMAC"));
        assert!(parse(r#"{"VtepMAC":"zz"}"#).is_err());
        assert!(parse(r#"{"VtepMAC":"aa:bb:cc:dd:ee"}"#).is_err());
        assert!(parse(r#"{"VtepMAC":"00:00:00:00:00:00"}"#).is_err());
        assert!(parse(r#"{"VtepMAC":"01:00:5e:00:00:01"}"#).is_err());
        assert!(parse("null").is_err());
        assert!(vtep_mac(None).is_err());
        // keys are case-insensitive like Go's.
        assert!(parse(r#"{"vtepmac":"0e:2a:aa:bb:cc:dd"}"#).is_ok());
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            assert!(m.is_local());
            assert!(!m.is_multicast());
        }
    }
}
