//! The devices: created or adopted, kernel or userspace, addressed and routed.
//!
//! A device is adopted whenever it is already there and of a kind we can drive: a kernel
//! `wireguard` link (its peers and sessions survive our restart), or the TUN device our
//! userspace data path left behind (persistent, so the cluster route keeps pointing into it
//! and pod traffic is held back instead of leaking unencrypted through the default route
//! while flanneld restarts). Anything else by that name is deleted, as upstream does.

use std::sync::Arc;

use flannel_netlink::{LinkInfo, Route, RouteFilter, RouteKind};
use flannel_types::Lease;
use flannel_wireguard::WgDevice;
use flannel_wireguard::kernel::KernelDevice;
use flannel_wireguard::userspace::{self, Userspace};
use ipnet::IpNet;
use tracing::{info, warn};

use super::config::{Implementation, WgConfig};
use super::peers::DevSpec;
use crate::backend::{BackendEnv, BackendError, host_prefix, nl_err};

/// Where the userspace control sockets live (`wg` looks there).
pub const UAPI_DIR: &str = "/var/run/wireguard";
/// Most worker threads started by default.
const MAX_DEFAULT_QUEUES: usize = 4;

/// Who carries a device's packets.
enum Imp {
    /// The kernel module.
    Kernel(KernelDevice),
    /// flanneld's own data path.
    User(Userspace),
}

impl std::fmt::Debug for Imp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Imp::Kernel(_) => "kernel",
            Imp::User(_) => "userspace",
        })
    }
}

/// One of our devices.
#[derive(Debug)]
pub struct Device {
    /// Name, port, families.
    pub spec: DevSpec,
    imp: Option<Imp>,
    index: Option<u32>,
}

impl Device {
    /// Not yet created.
    pub fn new(spec: DevSpec) -> Device {
        Device {
            spec,
            imp: None,
            index: None,
        }
    }

    /// The device's configuration interface, once it runs.
    pub fn wg(&self) -> Option<&dyn WgDevice> {
        match self.imp.as_ref()? {
            Imp::Kernel(k) => Some(k),
            Imp::User(u) => Some(u),
        }
    }

    /// The userspace data path's counters, when that is what runs.
    pub fn userspace_metrics(&self) -> Option<Arc<userspace::Metrics>> {
        match self.imp.as_ref()? {
            Imp::User(u) => Some(u.metrics()),
            Imp::Kernel(_) => None,
        }
    }

    /// "kernel" or "userspace", for logs and metrics.
    pub fn implementation(&self) -> Option<&'static str> {
        self.imp.as_ref().map(|i| match i {
            Imp::Kernel(_) => "kernel",
            Imp::User(_) => "userspace",
        })
    }

    fn healthy(&self, link: Option<&LinkInfo>) -> bool {
        let Some(link) = link else { return false };
        match &self.imp {
            Some(Imp::Kernel(_)) => link.kind.as_deref() == Some("wireguard"),
            Some(Imp::User(u)) => !u.is_dead() && Some(link.index) == self.index,
            None => false,
        }
    }

    /// Makes the device exist and run, with `mtu`, up, our addresses and the cluster route.
    pub async fn ensure(
        &mut self,
        env: &BackendEnv,
        cfg: &WgConfig,
        mtu: u32,
        own: Option<&Lease>,
    ) -> Result<(), BackendError> {
        let name = self.spec.name;
        let nl = &env.nl;
        let mut link = nl
            .link_by_name(name)
            .await
            .map_err(nl_err(format!("looking up {name}")))?;
        let fresh = !self.healthy(link.as_ref());
        if fresh {
            if self.imp.is_some() {
                warn!("{name} is gone or its data path died; setting it up again");
            }
            self.imp = None;
            self.start(env, cfg, mtu, link.as_ref()).await?;
            link = nl
                .link_by_name(name)
                .await
                .map_err(nl_err(format!("looking up {name}")))?;
        }
        let link = link.ok_or_else(|| {
            BackendError::Missing(format!("{name} vanished right after it was created"))
        })?;
        self.index = Some(link.index);
        if link.mtu != mtu {
            nl.set_link_mtu(link.index, mtu)
                .await
                .map_err(nl_err(format!("setting MTU {mtu} on {name}")))?;
        }
        if !link.up {
            nl.set_link_up(link.index)
                .await
                .map_err(nl_err(format!("setting {name} up")))?;
        }
        if let Some(own) = own {
            self.ensure_addresses(env, link.index, own).await?;
            self.ensure_routes(env, link.index).await?;
        }
        Ok(())
    }

    /// Adopts what is there or creates the device, kernel first unless told otherwise.
    async fn start(
        &mut self,
        env: &BackendEnv,
        cfg: &WgConfig,
        mtu: u32,
        existing: Option<&LinkInfo>,
    ) -> Result<(), BackendError> {
        let name = self.spec.name;
        let nl = &env.nl;
        let kind = existing.and_then(|l| l.kind.clone());
        let want_kernel = cfg.implementation != Implementation::Userspace;
        let want_user = cfg.implementation != Implementation::Kernel;
        match (existing, kind.as_deref()) {
            (Some(_), Some("wireguard")) if want_kernel => {
                info!(
                    "{name}: adopting the kernel WireGuard device (its peers and sessions are kept)"
                );
                self.imp = Some(Imp::Kernel(KernelDevice::new(name)));
                return Ok(());
            }
            (Some(_), Some("tun")) if want_user => {
                info!("{name}: adopting the TUN device of the userspace data path");
                return self.start_userspace(cfg, mtu);
            }
            (Some(l), k) => {
                info!(
                    "{name}: deleting the existing {} device",
                    k.unwrap_or("unknown")
                );
                nl.delete_link(l.index)
                    .await
                    .map_err(nl_err(format!("deleting {name}")))?;
            }
            (None, _) => {}
        }
        if want_kernel {
            match nl.create_wireguard(name, Some(mtu)).await {
                Ok(_) => {
                    info!("{name}: kernel WireGuard device created");
                    self.imp = Some(Imp::Kernel(KernelDevice::new(name)));
                    return Ok(());
                }
                Err(e) if e.is_not_supported() && want_user => {
                    info!(
                        "{name}: the kernel has no WireGuard ({e}); using the userspace data path"
                    );
                }
                Err(e) if e.is_not_supported() => {
                    return Err(BackendError::Missing(format!(
                        "{name}: the kernel has no WireGuard ({e}) and Backend.Implementation is \"kernel\"; load the wireguard module or set Implementation to \"auto\""
                    )));
                }
                Err(e) => return Err(nl_err(format!("creating {name}"))(e)),
            }
        }
        self.start_userspace(cfg, mtu)
    }

    fn start_userspace(&mut self, cfg: &WgConfig, mtu: u32) -> Result<(), BackendError> {
        let queues = cfg.queues.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, MAX_DEFAULT_QUEUES)
        });
        let dev = Userspace::start(userspace::Config {
            name: self.spec.name.to_string(),
            mtu,
            queues,
            offload: cfg.offload,
            uapi_dir: UAPI_DIR.into(),
        })
        .map_err(|e| BackendError::Device {
            what: format!("starting the userspace data path of {}", self.spec.name),
            source: e,
        })?;
        self.imp = Some(Imp::User(dev));
        Ok(())
    }

    /// `<subnet IP>/32` (`/128`) per family the device carries; other addresses inside the
    /// cluster networks removed.
    async fn ensure_addresses(
        &self,
        env: &BackendEnv,
        index: u32,
        own: &Lease,
    ) -> Result<(), BackendError> {
        let name = self.spec.name;
        let want: Vec<IpNet> = self
            .spec
            .families
            .iter()
            .filter_map(|f| own.subnet_of(*f))
            .map(host_prefix)
            .collect();
        let nl = &env.nl;
        let have = nl
            .addresses(Some(index))
            .await
            .map_err(nl_err(format!("listing addresses of {name}")))?;
        for a in &have {
            if !want.contains(&a.net()) && super::in_networks(a.ip, env) {
                info!("removing address {} from {name}", a.net());
                nl.del_address(index, a.net())
                    .await
                    .map_err(nl_err(format!("removing {} from {name}", a.net())))?;
            }
        }
        for w in want {
            if !have.iter().any(|a| a.net() == w) {
                nl.add_address(index, w)
                    .await
                    .map_err(nl_err(format!("adding {w} to {name}")))?;
            }
        }
        Ok(())
    }

    /// `<Network> dev <device> scope link` per family the device carries (upstream's route);
    /// a route for the network pointing elsewhere is replaced.
    async fn ensure_routes(&self, env: &BackendEnv, index: u32) -> Result<(), BackendError> {
        for (f, net) in env.networks() {
            if !self.spec.families.contains(&f) {
                continue;
            }
            let routes = env
                .nl
                .routes(&RouteFilter::main().family(f))
                .await
                .map_err(nl_err("dumping routes"))?;
            let ok = routes.iter().any(|r| {
                r.dst == net
                    && r.oif == Some(index)
                    && r.gateway.is_none()
                    && r.kind == RouteKind::Unicast
            });
            if !ok {
                env.nl
                    .replace_route(&Route::direct(net, index))
                    .await
                    .map_err(nl_err(format!("adding route {net} dev {}", self.spec.name)))?;
            }
        }
        Ok(())
    }
}

/// The userspace data path's handshake count and drops by reason, for `/metrics`.
pub fn userspace_counters(m: &userspace::Metrics) -> (u64, Vec<(&'static str, u64)>) {
    let drops = userspace::DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), m.drops(*r)))
        .collect();
    (userspace::Metrics::get(&m.handshakes_completed), drops)
}
