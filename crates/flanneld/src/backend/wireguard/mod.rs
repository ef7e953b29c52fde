//! wireguard: pod traffic encrypted between nodes, datastore- and wire-compatible with
//! upstream's backend, in the kernel or in userspace.
//!
//! Devices: `flannel-wg` (IPv4, or both families in the `auto`/`ipv4`/`ipv6` modes) and
//! `flannel-wg-v6` (IPv6 in `separate` mode), each with `<subnet IP>/32` (`/128`), MTU =
//! underlay MTU - 80 and one route for the whole cluster network. Where the kernel has
//! WireGuard the device is the kernel's; where it has not (or `Implementation` says so) it is
//! a TUN device of the same name driven by flanneld's own data path
//! ([`flannel_wireguard::userspace`]), which answers the standard control socket so
//! `wg show flannel-wg` works either way.
//!
//! Unlike upstream, which deletes and recreates the devices at every start, every pass here
//! reads the device (keys, port, peers) and sends only the difference
//! ([`peers::plan`]): a restart keeps the kernel device and its sessions, a node that vanished
//! loses its peer, a node whose key changed has its old entry replaced, and a deleted device
//! comes back with every peer on the next pass.
//!
//! The parts: [`config`] (net-conf keys), [`peers`] (the pure desired state and plan) and
//! [`device`] (creating, adopting and addressing the devices).

pub mod config;
pub mod device;
pub mod metrics;
pub mod peers;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use flannel_types::{IpFamily, Lease, LeaseAttrs, NetConfig};
use flannel_wireguard::{DeviceState, Secret};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use self::config::{Mode, WgConfig};
use self::device::Device;
use self::peers::{DevSpec, PeerContext, WgDesired};
use super::routes::{self, OwnedRoutes, RouteSpace};
use super::{
    Backend, BackendEnv, BackendError, DataPlane, Plan, WarnOnce, apply_batch, own_subnets,
};
use crate::reconcile::ReconcileStats;

/// Bytes WireGuard adds in the worst case: outer IPv6 (40) + UDP (8) + type, index, nonce
/// (16) + tag (16), upstream's `overhead`.
pub const OVERHEAD: u32 = 80;
/// The IPv4 (or only) device.
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device of separate mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";
/// Upstream's key file, used when `WIREGUARD_KEY_FILE` is not set.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";

/// The key file: `$WIREGUARD_KEY_FILE` or `/run/flannel/wgkey`.
pub fn key_file() -> PathBuf {
    std::env::var_os("WIREGUARD_KEY_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
}

/// The wireguard backend.
#[derive(Debug)]
pub struct WireguardBackend {
    env: BackendEnv,
    cfg: WgConfig,
    key: Secret,
    devices: Vec<Device>,
    own: Option<Lease>,
    warned: WarnOnce,
}

/// What the desired state depends on besides the peers.
#[derive(Debug, Clone)]
pub struct WgView {
    /// Modes, ports, our key and addresses.
    pub ctx: PeerContext,
    /// The cluster networks and our subnets: any other route inside them is a stray.
    pub space: RouteSpace,
}

/// What the devices hold.
#[derive(Debug)]
pub struct WgActual {
    /// Per device, in order.
    pub devices: Vec<DeviceState>,
    /// Our key and the devices' ports, which the plan enforces.
    pub key: Secret,
    /// Per device.
    pub ports: Vec<u16>,
    /// Routes inside the cluster networks other than ours.
    pub routes: OwnedRoutes,
}

impl WireguardBackend {
    /// Parses the config, lays out the devices for the mode and loads (or creates) the key.
    pub fn new(config: &NetConfig, env: BackendEnv) -> Result<WireguardBackend, BackendError> {
        let cfg = WgConfig::from_net_config(config)?;
        let specs = device_specs(&cfg, &env)?;
        let path = key_file();
        let key = flannel_wireguard::key::load_or_create(&path)
            .map_err(|e| BackendError::Config(e.to_string()))?;
        info!(
            "WireGuard config: Mode={:?} ListenPort={} ListenPortV6={} PSK={} PersistentKeepaliveInterval={} Implementation={:?}; key file {}, public key {}",
            cfg.mode,
            cfg.listen_port,
            cfg.listen_port_v6,
            if cfg.psk.is_some() { "set" } else { "none" },
            cfg.keepalive,
            cfg.implementation,
            path.display(),
            key.public_key()
        );
        let devices = specs.into_iter().map(Device::new).collect::<Vec<_>>();
        Ok(WireguardBackend {
            env,
            cfg,
            key,
            devices,
            own: None,
            warned: WarnOnce::default(),
        })
    }

    /// The device MTU: `MTU` (default the underlay's) - 80.
    fn dev_mtu(&self) -> u32 {
        self.cfg
            .mtu
            .unwrap_or(self.env.ext.mtu)
            .saturating_sub(OVERHEAD)
    }

    fn context(&self) -> PeerContext {
        PeerContext {
            mode: self.cfg.mode,
            devices: self.devices.iter().map(|d| d.spec.clone()).collect(),
            psk: self.cfg.psk.clone(),
            keepalive: self.cfg.keepalive,
            own_key: self.key.public_key(),
            ext_v4: self.env.ext.ext_addr,
            ext_v6: self.env.ext.ext_v6_addr,
        }
    }

    async fn ensure_devices(&mut self) -> Result<(), BackendError> {
        let mtu = self.dev_mtu();
        let own = self.own.clone();
        for d in &mut self.devices {
            d.ensure(&self.env, &self.cfg, mtu, own.as_ref()).await?;
        }
        Ok(())
    }
}

/// The devices of each mode, with the checks upstream makes when it creates them.
fn device_specs(cfg: &WgConfig, env: &BackendEnv) -> Result<Vec<DevSpec>, BackendError> {
    let families: Vec<IpFamily> = env.networks().map(|(f, _)| f).collect();
    if cfg.mode == Mode::Separate {
        return Ok(families
            .iter()
            .map(|f| match f {
                IpFamily::V4 => DevSpec {
                    name: DEVICE,
                    port: cfg.listen_port,
                    families: vec![IpFamily::V4],
                },
                IpFamily::V6 => DevSpec {
                    name: DEVICE_V6,
                    port: cfg.listen_port_v6,
                    families: vec![IpFamily::V6],
                },
            })
            .collect());
    }
    if cfg.mode == Mode::Ipv6 && env.ext.ext_v6_addr.is_none() {
        return Err(BackendError::Missing(
            "wireguard Mode \"ipv6\" needs a public IPv6 address on the external interface".into(),
        ));
    }
    if cfg.mode == Mode::Ipv4 && env.ext.ext_addr.is_none() {
        return Err(BackendError::Missing(
            "wireguard Mode \"ipv4\" needs a public IPv4 address on the external interface".into(),
        ));
    }
    Ok(vec![DevSpec {
        name: DEVICE,
        port: cfg.listen_port,
        families,
    }])
}

#[async_trait(?Send)]
impl Backend for WireguardBackend {
    fn type_name(&self) -> &'static str {
        "wireguard"
    }

    /// Creates or adopts the devices (the key and port are set by the first reconcile) and
    /// returns upstream's lease attributes: `BackendData` for IPv4, `BackendV6Data` for
    /// IPv6, both `{"PublicKey":...,"Port":...}` with the port of the device serving that
    /// family.
    async fn prepare(&mut self, _stored: Option<&LeaseAttrs>) -> Result<LeaseAttrs, BackendError> {
        self.ensure_devices().await?;
        let public = self.key.public_key();
        let mut attrs = self.env.ext.lease_attrs("wireguard", true);
        for d in &self.devices {
            for f in &d.spec.families {
                let data = Some(peers::lease_data(&public, d.spec.port));
                match f {
                    IpFamily::V4 => attrs.backend_data = data,
                    IpFamily::V6 => attrs.backend_v6_data = data,
                }
            }
        }
        if self.env.ipv6_network.is_none() {
            attrs.public_ipv6 = None;
        }
        Ok(attrs)
    }

    /// Addresses the devices from our lease and sets key and port.
    async fn configure(&mut self, own: &Lease) -> Result<(), BackendError> {
        self.own = Some(own.clone());
        self.ensure_devices().await?;
        super::reconcile(self, &[]).await.map(|_| ())
    }

    fn mtu(&self) -> u32 {
        self.dev_mtu()
    }

    fn devices(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| d.spec.name.to_string())
            .collect()
    }

    async fn reconcile(&mut self, peers: &[&Lease]) -> Result<ReconcileStats, BackendError> {
        super::reconcile(self, peers).await
    }

    /// Reads every device (one dump each) and the userspace counters into `/metrics`.
    fn collect_metrics(&self, m: &crate::metrics::Metrics) {
        let now = std::time::SystemTime::now();
        for d in &self.devices {
            let Some(w) = d.wg() else { continue };
            match w.get() {
                Ok(st) => m.wireguard.record_device(d.spec.name, &st, now),
                Err(e) => debug!("{}: reading for metrics: {e}", d.spec.name),
            }
            if let Some(u) = d.userspace_metrics() {
                let (handshakes, drops) = device::userspace_counters(&u);
                m.wireguard
                    .record_userspace(d.spec.name, handshakes, &drops);
            }
        }
    }
}

impl DataPlane for WireguardBackend {
    type View = WgView;
    type Desired = WgDesired;
    type Actual = WgActual;

    /// Checks every device (recreating a deleted one or a dead data path) with its MTU,
    /// addresses and route.
    async fn observe(&mut self, _peers: &[&Lease]) -> Result<WgView, BackendError> {
        self.ensure_devices().await?;
        Ok(WgView {
            ctx: self.context(),
            space: RouteSpace {
                networks: self.env.networks().map(|(_, n)| n).collect(),
                own: own_subnets(self.own.as_ref()),
            },
        })
    }

    fn desired(peers: &[&Lease], view: &WgView) -> WgDesired {
        peers::desired(peers, &view.ctx)
    }

    async fn actual(&self, view: &WgView) -> Result<WgActual, BackendError> {
        let mut devices = Vec::with_capacity(self.devices.len());
        for d in &self.devices {
            let w = d.wg().ok_or_else(|| {
                BackendError::Missing(format!("{} has no running implementation", d.spec.name))
            })?;
            devices.push(w.get().map_err(|e| BackendError::Device {
                what: format!("reading {}", d.spec.name),
                source: e,
            })?);
        }
        Ok(WgActual {
            devices,
            key: self.key.clone(),
            ports: self.devices.iter().map(|d| d.spec.port).collect(),
            routes: OwnedRoutes::load(&self.env.nl, &view.space).await?,
        })
    }

    /// One device update per device holding only what differs; every route inside the
    /// cluster networks removed (the network route lives outside `OwnedRoutes`).
    fn plan(desired: &WgDesired, actual: &WgActual) -> Plan {
        let mut stats = ReconcileStats::default();
        let mut updates = Vec::new();
        for (i, want) in desired.devices.iter().enumerate() {
            let (up, s) = peers::plan(want, &actual.devices[i], &actual.key, actual.ports[i]);
            stats += s;
            if !up.is_empty() {
                updates.push((i, up));
            }
        }
        let routes = routes::plan(&BTreeMap::new(), &actual.routes);
        routes.count_into(&mut stats);
        Plan {
            ops: routes.deletes,
            stats,
            devices: updates,
        }
    }

    async fn apply(
        &mut self,
        desired: WgDesired,
        mut plan: Plan,
    ) -> Result<ReconcileStats, BackendError> {
        for why in &desired.skipped {
            if self.warned.first(why) {
                warn!("{why}");
            }
        }
        let updates = std::mem::take(&mut plan.devices);
        let mut failed = 0;
        for (i, up) in updates {
            let d = &self.devices[i];
            let Some(w) = d.wg() else { continue };
            debug!("{}: {} peer change(s)", d.spec.name, up.peers.len());
            if let Err(e) = w.set(&up) {
                failed += 1;
                warn!(
                    "{}: applying {} peer change(s) failed: {e}",
                    d.spec.name,
                    up.peers.len()
                );
            }
        }
        if !plan.ops.is_empty() {
            info!(
                "removing {} per-peer route(s) inside the cluster network left by another backend",
                plan.ops.len()
            );
        }
        let mut stats = apply_batch(&self.env.nl, plan, "wireguard").await;
        stats.failed += failed;
        Ok(stats)
    }
}

/// True when `ip` is one a device of ours may carry (inside a cluster network).
pub(crate) fn in_networks(ip: IpAddr, env: &BackendEnv) -> bool {
    env.networks()
        .any(|(_, n): (IpFamily, IpNet)| n.contains(&ip))
}
