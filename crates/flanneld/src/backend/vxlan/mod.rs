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

mod device;
pub mod plan;

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flannel_netlink::{MacAddr, Netlink};
use flannel_types::{IpFamily, Lease, LeaseAttrs, NetConfig, RawJson};
use tracing::{debug, info, warn};

use self::device::Device;
pub use self::device::{ENCAP_OVERHEAD, ENCAP_OVERHEAD_V6};
use self::plan::{VxlanActual, VxlanDesired, VxlanView};
use super::routes::{OwnedRoutes, RouteSpace};
use super::{
    Backend, BackendEnv, BackendError, DataPlane, Plan, WarnOnce, apply_batch, nl_err, own_subnets,
};
use crate::reconcile::ReconcileStats;

/// The backend type, as written in leases.
pub const TYPE: &str = "vxlan";

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
        let bad = BackendError::ConfigJson;
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

/// The vxlan backend.
#[derive(Debug)]
pub struct VxlanBackend {
    env: BackendEnv,
    cfg: VxlanConfig,
    devices: Vec<Device>,
    own: Option<Lease>,
    onlink: OnlinkCache,
    warned: WarnOnce,
}

impl VxlanBackend {
    /// Parses the config and plans one device per enabled family.
    pub fn new(config: &NetConfig, env: BackendEnv) -> Result<VxlanBackend, BackendError> {
        let cfg = VxlanConfig::from_net_config(config)?;
        info!(
            "VXLAN config: VNI={} Port={} GBP={} Learning={} DirectRouting={}",
            cfg.vni, cfg.port, cfg.gbp, cfg.learning, cfg.direct_routing
        );
        let devices = env
            .networks()
            .map(|(family, network)| Device::plan(family, network, &cfg, &env))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VxlanBackend {
            env,
            cfg,
            devices,
            own: None,
            onlink: OnlinkCache::default(),
            warned: WarnOnce::default(),
        })
    }

    fn device_name(&self, family: IpFamily) -> &str {
        self.devices
            .iter()
            .find(|d| d.family == family)
            .map_or("", |d| d.spec.name.as_str())
    }

    /// The MAC to start a device with: the one the datastore remembers for this node, so that
    /// peers' entries stay valid across a re-creation of the node.
    fn stored_mac(family: IpFamily, stored: Option<&LeaseAttrs>) -> Option<MacAddr> {
        let mac = vtep_mac(stored?.backend_data_of(family)).ok()?;
        info!("reusing VTEP MAC {mac} from the stored lease");
        Some(mac)
    }
}

#[async_trait(?Send)]
impl Backend for VxlanBackend {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    /// Creates or adopts the devices and returns our lease attributes. The MAC comes from a
    /// compatible existing device, else from `stored` (the datastore's memory of this node),
    /// else is random; it then stays fixed for the life of the process.
    async fn prepare(&mut self, stored: Option<&LeaseAttrs>) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = self.env.ext.lease_attrs(TYPE, false);
        for d in &mut self.devices {
            if d.spec.mac.is_none() {
                d.spec.mac = Self::stored_mac(d.family, stored);
            }
            d.ensure(&self.env.nl).await?;
            let mac = d.spec.mac.expect("ensure sets the MAC");
            let data = Some(backend_data(self.cfg.vni, mac));
            match d.family {
                IpFamily::V4 => attrs.backend_data = data,
                IpFamily::V6 => {
                    attrs.public_ipv6 = self.env.ext.ext_v6_addr;
                    attrs.backend_v6_data = data;
                }
            }
        }
        Ok(attrs)
    }

    /// Gives each device our subnet's network address (`/32`, `/128`) and removes other
    /// addresses of the cluster network from it (upstream's EnsureV4AddressOnLink).
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = Some(own.clone());
        for d in &self.devices {
            d.ensure_address(&self.env.nl, Some(own)).await?;
        }
        Ok(())
    }

    /// The pod MTU: the underlay MTU (or `Backend.MTU`) minus the VXLAN overhead; in
    /// dual-stack the smaller of the two devices', since a pod has one MTU for both families.
    fn mtu(&self) -> u32 {
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
    fn devices(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.spec.name.clone()).collect()
    }

    async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        super::reconcile(self, peers).await
    }
}

impl DataPlane for VxlanBackend {
    type View = VxlanView;
    type Desired = VxlanDesired;
    type Actual = VxlanActual;

    /// The devices (recreated if deleted or changed, address restored) and, with
    /// DirectRouting, which peers are on-link.
    async fn observe(&mut self, peers: &[&Lease]) -> Result<VxlanView, BackendError> {
        for d in &mut self.devices {
            d.check(&self.env.nl, self.own.as_ref()).await?;
        }
        let mut view = VxlanView {
            devices: self
                .devices
                .iter()
                .filter_map(|d| Some((d.family, d.index?)))
                .collect(),
            onlink: HashMap::new(),
            space: RouteSpace {
                networks: self.devices.iter().map(|d| d.network).collect(),
                own: own_subnets(self.own.as_ref()),
            },
        };
        for p in peers {
            if p.attrs.backend_type != TYPE {
                debug!(
                    "ignoring non-vxlan peer {} ({})",
                    p.key(),
                    p.attrs.backend_type
                );
            } else if self.cfg.direct_routing {
                for &(family, _) in &view.devices {
                    if let Some(ip) = p.attrs.public_ip_of(family)
                        && let Some(oif) = self.onlink.oif(&self.env.nl, ip).await
                    {
                        view.onlink.insert(ip, oif);
                    }
                }
            }
        }
        Ok(view)
    }

    fn desired(peers: &[&Lease], view: &VxlanView) -> VxlanDesired {
        plan::desired(peers, view)
    }

    /// One dump each of the devices' permanent neighbours and FDB entries, and of the routes.
    async fn actual(&self, view: &VxlanView) -> Result<VxlanActual, BackendError> {
        let nl = &self.env.nl;
        let mut out = VxlanActual::default();
        for &(family, index) in &view.devices {
            let name = self.device_name(family);
            for n in nl
                .neighbours(Some(index))
                .await
                .map_err(nl_err(format!("dumping neighbours of {name}")))?
            {
                if n.state.is_permanent()
                    && IpFamily::of(&n.ip) == family
                    && let Some(mac) = n.mac
                {
                    out.neigh.insert((index, n.ip), mac);
                }
            }
            for e in nl
                .fdb_entries(Some(index))
                .await
                .map_err(nl_err(format!("dumping FDB of {name}")))?
            {
                if let Some(f) = e.as_fdb() {
                    out.fdb.insert((f.ifindex, f.mac, f.dst), ());
                }
            }
        }
        out.routes = OwnedRoutes::load(nl, &view.space).await?;
        Ok(out)
    }

    fn plan(desired: &VxlanDesired, actual: &VxlanActual) -> Plan {
        plan::plan(desired, actual)
    }

    async fn apply(
        &mut self,
        desired: VxlanDesired,
        plan: Plan,
    ) -> Result<ReconcileStats, BackendError> {
        for p in &desired.problems {
            if self.warned.first(p) {
                warn!("{p}");
            }
        }
        // The desired maps were only inputs to the plan: free them before the batch is encoded
        // and sent, which keeps the peak of a 5000-peer first pass a few MiB lower.
        drop(desired);
        Ok(apply_batch(&self.env.nl, plan, TYPE).await)
    }
}

/// DirectRouting's answers to "is this peer on-link, and through which interface?", kept for
/// [`ONLINK_CACHE_TTL`] so a repair tick does not cost one route lookup per peer.
#[derive(Debug, Default)]
struct OnlinkCache(HashMap<IpAddr, (Option<u32>, Instant)>);

impl OnlinkCache {
    async fn oif(&mut self, nl: &Netlink, ip: IpAddr) -> Option<u32> {
        if let Some((oif, at)) = self.0.get(&ip)
            && at.elapsed() < ONLINK_CACHE_TTL
        {
            return *oif;
        }
        let oif = match nl.route_get(ip).await {
            Ok(r) if r.is_on_link() => r.oif,
            Ok(_) => None,
            Err(e) => {
                debug!("route lookup for {ip} failed: {e}");
                None
            }
        };
        self.0.insert(ip, (oif, Instant::now()));
        oif
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
}
