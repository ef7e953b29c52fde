//! udp: upstream's userspace overlay, wire-compatible and multi-threaded.
//!
//! A TUN device `flannel0` (`IFF_TUN|IFF_NO_PI`, address `<subnet IP>/32`, MTU = underlay - 28)
//! takes every packet for the cluster network through the route `<Network> dev flannel0`. The
//! proxy sends each packet to the peer whose subnet contains the destination, as the payload
//! of a UDP datagram from `IfaceAddr:Port` to `PublicIP:Port` (default 8285), and writes
//! datagrams it receives back into the device. The wire format is upstream's: the UDP payload
//! is the raw inner IPv4 packet and nothing else, so a Go flanneld node and this one exchange
//! traffic directly.
//!
//! The parts:
//! * [`codec`]: TTL, checksums, ICMP net unreachable, validation: pure functions;
//! * [`table`]: the longest-prefix peer table, rebuilt by [`UdpBackend::reconcile`] and swapped
//!   under the running data path;
//! * [`offload`]: TSO segmentation and GRO-style coalescing, so a system call moves up to
//!   64 KiB while every datagram stays one complete inner packet;
//! * `io`: the TUN queues, sockets and worker threads.
//!
//! The device is not persistent: it disappears when flanneld exits (as upstream), and comes
//! back when flanneld starts. Reconcile also recreates it if someone deletes it meanwhile.

mod io;
pub mod table;

/// The packet code, shared with the userspace WireGuard device (crate `flannel-packet`),
/// under its old paths.
pub use flannel_packet::{codec, offload};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use async_trait::async_trait;
use flannel_netlink::{Route, RouteFilter, RouteKind, Scope};
use flannel_types::{IpFamily, Lease, LeaseAttrs, NetConfig};
use ipnet::{IpNet, Ipv4Net};
use tracing::{debug, info, warn};

use self::io::{DataPath, DataPathConfig};
use self::table::{PeerTable, SharedTable};
use super::routes::{self, OwnedRoutes, RouteSpace};
use super::{
    Backend, BackendEnv, BackendError, DataPlane, Plan, WarnOnce, apply_batch, host_prefix, nl_err,
    own_subnets,
};
use crate::reconcile::{ReconcileStats, diff};

pub use self::io::Counters;

/// Bytes the encapsulation adds: outer IPv4 (20) + UDP (8), upstream's `encapOverhead`.
pub const ENCAP_OVERHEAD: u32 = 28;
/// Upstream's default `Port`.
pub const DEFAULT_PORT: u16 = 8285;
/// The device name (upstream asks the kernel for `flannel%d`, which is `flannel0` unless that
/// name is taken).
pub const DEVICE: &str = "flannel0";
/// Most worker threads pairs started by default.
const MAX_DEFAULT_QUEUES: usize = 4;

/// The `Backend` settings of net-conf.json for udp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// `Port`, default 8285: the local port and, as upstream assumes, every peer's.
    pub port: u16,
    /// `Queues` (flannel-rs only; Go ignores unknown keys): worker count, default the CPU
    /// count up to 4.
    pub queues: Option<usize>,
    /// `Offload` (flannel-rs only): use TSO/GSO/GRO, default true. Off, every packet costs a
    /// system call on each side, as upstream's proxy does.
    pub offload: bool,
}

impl UdpConfig {
    /// Parses the `Backend` object with Go's leniency (case-insensitive keys) and checks ranges.
    pub fn from_net_config(config: &NetConfig) -> Result<UdpConfig, BackendError> {
        let bad = BackendError::ConfigJson;
        let mut c = UdpConfig {
            port: DEFAULT_PORT,
            queues: None,
            offload: true,
        };
        let Some(obj) = config.backend_object().map_err(bad)? else {
            return Ok(c);
        };
        if let Some(v) = obj.int("Port").map_err(bad)? {
            c.port = u16::try_from(v).ok().filter(|p| *p != 0).ok_or_else(|| {
                BackendError::Config(format!("Backend.Port {v} is out of range 1..65535"))
            })?;
        }
        (c.queues, c.offload) = super::userspace_keys(&obj)?;
        Ok(c)
    }
}

/// The udp backend.
#[derive(Debug)]
pub struct UdpBackend {
    env: BackendEnv,
    cfg: UdpConfig,
    network: Ipv4Net,
    iface_addr: Ipv4Addr,
    table: Arc<SharedTable>,
    datapath: Option<DataPath>,
    index: Option<u32>,
    own: Option<Lease>,
    warned: WarnOnce,
}

/// What the udp backend's desired state depends on besides the peers.
#[derive(Debug, Clone)]
pub struct UdpView {
    /// The cluster network (routed to the device as a whole) and our subnet: any other route
    /// inside the network is a stray that would shadow the network route.
    pub space: RouteSpace,
}

/// What the udp backend should hold: the peer table, and no per-peer routes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UdpDesired {
    /// Peer subnet -> the peer's public IP.
    pub table: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Why some peers are not in the table (logged once each).
    pub skipped: Vec<String>,
}

/// What the udp backend holds: the table the data path uses, and routes inside the network.
#[derive(Debug, Default)]
pub struct UdpActual {
    /// The published peer table.
    pub table: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Per-peer routes another backend left inside the network.
    pub routes: OwnedRoutes,
}

impl UdpBackend {
    /// Parses the config. The udp backend carries IPv4 only, as upstream's.
    pub fn new(config: &NetConfig, env: BackendEnv) -> Result<UdpBackend, BackendError> {
        let cfg = UdpConfig::from_net_config(config)?;
        let network = env.network.ok_or_else(|| {
            BackendError::Config("the udp backend carries IPv4 only: set Network".into())
        })?;
        if env.ipv6_network.is_some() {
            warn!("the udp backend carries IPv4 only; IPv6 pod traffic will not cross nodes");
        }
        let iface_addr = env
            .ext
            .iface_addr
            .ok_or_else(|| BackendError::Missing("udp needs an IPv4 interface address".into()))?;
        info!(
            "UDP config: Port={} Offload={} Queues={}",
            cfg.port,
            cfg.offload,
            cfg.queues
                .map(|q| q.to_string())
                .unwrap_or_else(|| "auto".into())
        );
        Ok(UdpBackend {
            env,
            cfg,
            network,
            iface_addr,
            table: SharedTable::new(),
            datapath: None,
            index: None,
            own: None,
            warned: WarnOnce::default(),
        })
    }

    /// The pod MTU: the underlay MTU minus the outer IPv4 and UDP headers.
    fn pod_mtu(&self) -> u32 {
        self.env.ext.mtu.saturating_sub(ENCAP_OVERHEAD)
    }

    fn datapath_config(&self, own_subnet: Ipv4Net) -> DataPathConfig {
        let queues = self.cfg.queues.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, MAX_DEFAULT_QUEUES)
        });
        DataPathConfig {
            name: DEVICE.to_string(),
            mtu: self.pod_mtu(),
            bind: SocketAddrV4::new(self.iface_addr, self.cfg.port),
            peer_port: self.cfg.port,
            tun_ip: own_subnet.network(),
            own_subnet,
            queues,
            offload: self.cfg.offload,
        }
    }

    /// Makes the device exist (ours, up, right MTU, our address) and the network route point
    /// at it. A device that vanished, or whose queues died, is rebuilt from scratch.
    async fn ensure_device(&mut self) -> Result<(), BackendError> {
        let Some(own_subnet) = self.own.as_ref().and_then(|o| o.subnet) else {
            return Ok(());
        };
        let nl = self.env.nl.clone();
        let mut link = nl
            .link_by_name(DEVICE)
            .await
            .map_err(nl_err(format!("looking up {DEVICE}")))?;
        let healthy = self.datapath.as_ref().is_some_and(|d| !d.is_dead())
            && link.as_ref().map(|l| l.index) == self.index
            && self.index.is_some();
        if !healthy {
            if let Some(mut old) = self.datapath.take() {
                warn!("{DEVICE} is gone or broken; recreating it");
                old.stop();
            }
            let cfg = self.datapath_config(own_subnet);
            let dp = DataPath::start(&cfg, &self.table).map_err(|source| BackendError::Io {
                what: "starting the udp data path".into(),
                source,
            })?;
            info!(
                "{DEVICE}: {} queue(s), offloads {}, UDP {} -> peers' port {}",
                dp.queues(),
                if dp.offload() { "on" } else { "off" },
                cfg.bind,
                cfg.peer_port
            );
            self.datapath = Some(dp);
            link = nl
                .link_by_name(DEVICE)
                .await
                .map_err(nl_err(format!("looking up {DEVICE}")))?;
            self.index = link.as_ref().map(|l| l.index);
        }
        let link = link.ok_or_else(|| {
            BackendError::Missing(format!("{DEVICE} vanished right after it was created"))
        })?;
        let mtu = self.pod_mtu();
        if link.mtu != mtu {
            nl.set_link_mtu(link.index, mtu)
                .await
                .map_err(nl_err(format!("setting MTU {mtu} on {DEVICE}")))?;
        }
        if !link.up {
            nl.set_link_up(link.index)
                .await
                .map_err(nl_err(format!("setting {DEVICE} up")))?;
        }
        ensure_accept_local();
        self.ensure_address(link.index, own_subnet).await?;
        self.ensure_route(link.index).await
    }

    /// `<subnet IP>/32` on the device; other addresses of the cluster network removed.
    async fn ensure_address(&self, index: u32, own_subnet: Ipv4Net) -> Result<(), BackendError> {
        let want = host_prefix(IpNet::V4(own_subnet));
        let nl = &self.env.nl;
        let mut have = false;
        for a in nl
            .addresses(Some(index))
            .await
            .map_err(nl_err(format!("listing addresses of {DEVICE}")))?
        {
            if a.net() == want {
                have = true;
            } else if let IpAddr::V4(ip) = a.ip
                && self.network.contains(&ip)
            {
                info!("removing address {} from {DEVICE}", a.net());
                nl.del_address(index, a.net())
                    .await
                    .map_err(nl_err(format!("removing {} from {DEVICE}", a.net())))?;
            }
        }
        if !have {
            nl.add_address(index, want)
                .await
                .map_err(nl_err(format!("adding {want} to {DEVICE}")))?;
        }
        Ok(())
    }

    /// `<Network> dev flannel0` (scope global, as upstream adds it); a route for the network
    /// pointing elsewhere is replaced.
    async fn ensure_route(&self, index: u32) -> Result<(), BackendError> {
        let dst = IpNet::V4(self.network);
        let routes = self
            .env
            .nl
            .routes(&RouteFilter::main().family(IpFamily::V4))
            .await
            .map_err(nl_err("dumping routes"))?;
        let ok = routes.iter().any(|r| {
            r.dst == dst
                && r.oif == Some(index)
                && r.gateway.is_none()
                && r.kind == RouteKind::Unicast
        });
        if !ok {
            let mut r = Route::direct(dst, index);
            r.scope = Scope::Universe;
            self.env
                .nl
                .replace_route(&r)
                .await
                .map_err(nl_err(format!("adding route {dst} dev {DEVICE}")))?;
        }
        Ok(())
    }

    /// The data path's counters, when it runs.
    pub fn counters(&self) -> Option<&Counters> {
        self.datapath.as_ref().map(|d| d.counters())
    }
}

#[async_trait(?Send)]
impl Backend for UdpBackend {
    /// udp leases carry no `BackendType` (upstream's), but metrics and logs need a name.
    fn type_name(&self) -> &'static str {
        "udp"
    }

    /// Lease attributes: only the public IP, as upstream's udp leases (no `BackendType`, no
    /// data, so the `backend-type` annotation is empty).
    async fn prepare(&mut self, _stored: Option<&LeaseAttrs>) -> Result<LeaseAttrs, BackendError> {
        Ok(self.env.ext.lease_attrs("", false))
    }

    /// Starts the data path for our lease: the device needs our subnet for its address, the
    /// ICMP source and the receive filter.
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        if own.subnet.is_none() {
            return Err(BackendError::Missing(
                "the udp backend needs an IPv4 subnet lease".into(),
            ));
        }
        self.own = Some(own.clone());
        self.ensure_device().await
    }

    fn mtu(&self) -> u32 {
        self.pod_mtu()
    }

    /// The TUN device, watched by the daemon for deletion.
    fn devices(&self) -> Vec<String> {
        vec![DEVICE.to_string()]
    }

    async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        super::reconcile(self, peers).await
    }
}

impl DataPlane for UdpBackend {
    type View = UdpView;
    type Desired = UdpDesired;
    type Actual = UdpActual;

    /// Checks device, address and network route (recreating the device and its queues if
    /// they died).
    async fn observe(&mut self, _peers: &[&Lease]) -> Result<UdpView, BackendError> {
        self.ensure_device().await?;
        Ok(UdpView {
            space: RouteSpace {
                networks: vec![IpNet::V4(self.network)],
                own: own_subnets(self.own.as_ref())
                    .into_iter()
                    .filter(|n| matches!(n, IpNet::V4(_)))
                    .collect(),
            },
        })
    }

    /// IPv4 subnet -> public IP for every udp peer. udp leases carry no `BackendType`, and
    /// upstream programs every lease it sees; a lease that names another backend cannot answer
    /// on the udp port, so it is skipped with a reason.
    fn desired(peers: &[&Lease], _view: &UdpView) -> UdpDesired {
        let mut out = UdpDesired::default();
        for p in peers {
            let Some(sn) = p.subnet else { continue };
            let t = p.attrs.backend_type.as_str();
            if t.is_empty() || t == "udp" {
                out.table.insert(sn, p.attrs.public_ip);
            } else {
                out.skipped.push(format!(
                    "ignoring peer {} ({}): its backend is {t:?}, not udp",
                    p.key(),
                    p.attrs.public_ip
                ));
            }
        }
        out
    }

    async fn actual(&self, view: &UdpView) -> Result<UdpActual, BackendError> {
        Ok(UdpActual {
            table: self.table.snapshot().entries().collect(),
            routes: OwnedRoutes::load(&self.env.nl, &view.space).await?,
        })
    }

    /// Table changes are counted (the data path swaps the whole table at once); every route
    /// inside the network is removed.
    fn plan(desired: &UdpDesired, actual: &UdpActual) -> Plan {
        let table = diff(&desired.table, &actual.table);
        let routes = routes::plan(&BTreeMap::new(), &actual.routes);
        let mut stats = ReconcileStats {
            peers: desired.table.len(),
            ..Default::default()
        };
        stats.absorb(&table);
        routes.count_into(&mut stats);
        Plan {
            ops: routes.deletes,
            stats,
            ..Default::default()
        }
    }

    async fn apply(
        &mut self,
        desired: UdpDesired,
        plan: Plan,
    ) -> Result<ReconcileStats, BackendError> {
        for why in &desired.skipped {
            if self.warned.first(why) {
                warn!("{why}");
            }
        }
        if plan.stats.added + plan.stats.removed > plan.ops.len() {
            debug!("udp peer table: {:?}", desired.table);
        }
        self.table.publish(PeerTable::new(desired.table));
        if !plan.ops.is_empty() {
            info!(
                "removing {} per-peer route(s) inside {} left by another backend",
                plan.ops.len(),
                self.network
            );
        }
        let stats = apply_batch(&self.env.nl, plan, "udp").await;
        if let Some(dp) = &self.datapath {
            debug!("udp data path: {}", dp.counters().summary());
        }
        Ok(stats)
    }
}

/// Sets `accept_local` on the device. The ICMP errors the proxy writes into it carry the TUN
/// address as their source, as upstream's do; since Linux 5.x the kernel drops a packet that
/// arrives with one of its own addresses as source (a martian) unless this is set, so without
/// it upstream's "net unreachable" never reaches the pod. Packets from the tunnel whose
/// source lies in our own subnet are dropped by the proxy instead (see `io`).
fn ensure_accept_local() {
    let path = format!("/proc/sys/net/ipv4/conf/{DEVICE}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(&path, "1") {
        warn!("could not write {path}: {e}; ICMP net unreachable will not reach pods");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lease;

    fn cfg(json: &str) -> Result<UdpConfig, BackendError> {
        UdpConfig::from_net_config(&NetConfig::parse(json).unwrap())
    }

    #[test]
    fn config_defaults_and_go_leniency() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        assert_eq!(
            c,
            UdpConfig {
                port: 8285,
                queues: None,
                offload: true
            }
        );
        let c = cfg(r#"{"Network":"10.244.0.0/16","Backend":{"type":"udp","PORT":9000,"queues":2,"offload":false}}"#)
            .unwrap();
        assert_eq!(
            c,
            UdpConfig {
                port: 9000,
                queues: Some(2),
                offload: false
            }
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (json, key) in [
            (
                r#"{"Backend":{"Type":"udp","Port":70000}}"#,
                "Backend.Port 70000",
            ),
            (r#"{"Backend":{"Type":"udp","Port":0}}"#, "Backend.Port 0"),
            (r#"{"Backend":{"Type":"udp","Port":-1}}"#, "Backend.Port -1"),
            (
                r#"{"Backend":{"Type":"udp","Queues":0}}"#,
                "Backend.Queues 0",
            ),
        ] {
            let e = cfg(json).unwrap_err().to_string();
            assert!(e.contains(key), "{json}: {e}");
        }
        let e = cfg(r#"{"Backend":{"Type":"udp","Port":"x"}}"#).unwrap_err();
        assert!(e.to_string().contains("Port"), "{e}");
    }

    fn view() -> UdpView {
        UdpView {
            space: RouteSpace {
                networks: vec!["10.244.0.0/16".parse().unwrap()],
                own: vec!["10.244.1.0/24".parse().unwrap()],
            },
        }
    }

    #[test]
    fn desired_takes_udp_leases_and_skips_other_backends() {
        let peers = [
            lease("10.244.2.0/24", "198.18.0.2", ""),
            lease("10.244.3.0/24", "198.18.0.3", "udp"),
            lease("10.244.4.0/24", "198.18.0.4", "vxlan"),
        ];
        let d = UdpBackend::desired(&peers.iter().collect::<Vec<_>>(), &view());
        let t = PeerTable::new(d.table.clone());
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.lookup("10.244.2.9".parse().unwrap()),
            Some("198.18.0.2".parse().unwrap())
        );
        assert_eq!(
            t.lookup("10.244.3.9".parse().unwrap()),
            Some("198.18.0.3".parse().unwrap())
        );
        assert_eq!(t.lookup("10.244.4.9".parse().unwrap()), None);
        assert_eq!(d.skipped.len(), 1);
        assert!(d.skipped[0].contains("vxlan"), "{:?}", d.skipped);
    }

    #[test]
    fn plan_counts_table_changes_and_removes_every_route_in_the_network() {
        let peers = [
            lease("10.244.2.0/24", "198.18.0.2", ""),
            lease("10.244.3.0/24", "198.18.0.3", ""),
        ];
        let d = UdpBackend::desired(&peers.iter().collect::<Vec<_>>(), &view());
        let mut actual = UdpActual::default();
        // .2 unchanged, .3 moved to a new public IP, .9 is gone.
        actual.table.insert(
            "10.244.2.0/24".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
        );
        actual.table.insert(
            "10.244.3.0/24".parse().unwrap(),
            "198.18.0.33".parse().unwrap(),
        );
        actual.table.insert(
            "10.244.9.0/24".parse().unwrap(),
            "198.18.0.9".parse().unwrap(),
        );
        let stray: IpNet = "10.244.5.0/24".parse().unwrap();
        actual.routes.by_dst.insert(
            stray,
            Route::via(stray, "198.18.0.5".parse().unwrap(), Some(2)),
        );
        let p = UdpBackend::plan(&d, &actual);
        assert_eq!(p.stats.counts(), (1, 2, 1, 2));
        assert_eq!(p.ops.len(), 1);
        assert!(matches!(&p.ops[0], flannel_netlink::BatchOp::DelRoute(r) if r.dst == stray));
    }
}
