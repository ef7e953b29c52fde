//! The VXLAN devices themselves: created or adopted, kept up with the MAC we publish, and
//! rebuilt when someone deletes or changes them.

use std::net::IpAddr;

use flannel_netlink::{LinkInfo, MacAddr, Netlink, VxlanSpec};
use flannel_types::{IpFamily, Lease};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::VxlanConfig;
use crate::backend::{BackendEnv, BackendError, host_prefix, nl_err};

/// Bytes VXLAN adds to every packet over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14), upstream's `encapOverhead`.
pub const ENCAP_OVERHEAD: u32 = 50;

/// The same over an IPv6 underlay (outer IPv6 header is 40 bytes). Upstream uses 50 here too,
/// which the kernel refuses (a vxlan device over IPv6 may be at most lower MTU - 70), so its
/// `flannel-v6.<VNI>` cannot be created with the default MTU on a 1500-byte underlay.
pub const ENCAP_OVERHEAD_V6: u32 = 70;

/// A random locally administered unicast MAC, as upstream's `mac.NewHardwareAddr`.
pub(super) fn random_mac() -> MacAddr {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

/// One VXLAN device (v4 `flannel.<VNI>` or v6 `flannel-v6.<VNI>`).
#[derive(Debug)]
pub(super) struct Device {
    /// The family it carries (and its underlay's).
    pub family: IpFamily,
    /// What it must look like; `spec.mac` is fixed once chosen.
    pub spec: VxlanSpec,
    /// Its ifindex once it exists.
    pub index: Option<u32>,
    /// The cluster network of its family.
    pub network: IpNet,
}

impl Device {
    /// The device for `family`, if the cluster runs it: named, tied to the external interface
    /// and sized for the underlay.
    pub fn plan(
        family: IpFamily,
        network: IpNet,
        cfg: &VxlanConfig,
        env: &BackendEnv,
    ) -> Result<Device, BackendError> {
        let (name, local, overhead) = match family {
            IpFamily::V4 => (
                format!("flannel.{}", cfg.vni),
                env.ext.ext_addr.map(IpAddr::V4),
                ENCAP_OVERHEAD,
            ),
            IpFamily::V6 => (
                format!("flannel-v6.{}", cfg.vni),
                env.ext.ext_v6_addr.map(IpAddr::V6),
                ENCAP_OVERHEAD_V6,
            ),
        };
        let local = local.ok_or_else(|| {
            BackendError::Missing(format!("vxlan needs an {family} public address"))
        })?;
        let mut spec = VxlanSpec::new(name, cfg.vni);
        spec.local = Some(local);
        spec.dev = Some(env.ext.index);
        spec.port = cfg.port;
        spec.learning = cfg.learning;
        spec.gbp = cfg.gbp;
        spec.mtu = Some(cfg.mtu.unwrap_or(env.ext.mtu).saturating_sub(overhead));
        Ok(Device {
            family,
            spec,
            index: None,
            network,
        })
    }

    /// Whether the kernel's link is this device as we left it.
    pub fn is_healthy(&self, link: Option<&LinkInfo>) -> bool {
        link.is_some_and(|l| {
            Some(l.index) == self.index
                && l.up
                && self.spec.incompatibility(l).is_none()
                && l.mac == self.spec.mac
        })
    }

    /// Checks the device on a reconcile pass: rebuilt if it is gone or changed, address
    /// restored.
    pub async fn check(&mut self, nl: &Netlink, own: Option<&Lease>) -> Result<(), BackendError> {
        let name = self.spec.name.clone();
        let link = nl
            .link_by_name(&name)
            .await
            .map_err(nl_err(format!("looking up {name}")))?;
        if !self.is_healthy(link.as_ref()) {
            if link.is_none() {
                warn!("{name} is gone; recreating it and replaying every peer");
            }
            self.ensure(nl).await?;
        }
        self.ensure_address(nl, own).await
    }

    /// Makes the device exist with our spec, up, with the MAC we publish. Returns true when
    /// it had to be created.
    pub async fn ensure(&mut self, nl: &Netlink) -> Result<bool, BackendError> {
        let (link, created) = self.adopt_or_create(nl).await?;
        self.index = Some(link.index);
        self.fix_link(nl, &link, created).await?;
        if self.family == IpFamily::V6 {
            let path = format!("/proc/sys/net/ipv6/conf/{}/accept_ra", self.spec.name);
            if let Err(e) = std::fs::write(&path, "0") {
                debug!("could not write {path}: {e}");
            }
        }
        self.verify_mac(nl, link.index).await?;
        if created {
            info!(
                "created {} (index {}, MAC {})",
                self.spec.name,
                link.index,
                self.spec.mac.map(|m| m.to_string()).unwrap_or_default()
            );
        }
        Ok(created)
    }

    /// Reuses a compatible existing device (taking its MAC if we have none yet); deletes and
    /// recreates an incompatible one; creates a missing one.
    async fn adopt_or_create(&mut self, nl: &Netlink) -> Result<(LinkInfo, bool), BackendError> {
        let name = self.spec.name.clone();
        let existing = nl
            .link_by_name(&name)
            .await
            .map_err(nl_err(format!("looking up {name}")))?;
        let Some(l) = existing else {
            return Ok((self.create(nl).await?, true));
        };
        match self.spec.incompatibility(&l) {
            None => {
                if self.spec.mac.is_none() {
                    self.spec.mac = l.mac;
                }
                Ok((l, false))
            }
            Some(why) => {
                warn!(
                    "{name:?} already exists with incompatible configuration: {why}; recreating device"
                );
                nl.delete_link(l.index)
                    .await
                    .map_err(nl_err(format!("deleting {name}")))?;
                Ok((self.create(nl).await?, true))
            }
        }
    }

    async fn create(&mut self, nl: &Netlink) -> Result<LinkInfo, BackendError> {
        if self.spec.mac.is_none() {
            self.spec.mac = Some(random_mac());
        }
        nl.create_vxlan(&self.spec)
            .await
            .map_err(nl_err(format!("creating {}", self.spec.name)))
    }

    /// MTU, MAC and up state as the spec says.
    async fn fix_link(
        &self,
        nl: &Netlink,
        link: &LinkInfo,
        created: bool,
    ) -> Result<(), BackendError> {
        let name = &self.spec.name;
        let want_mtu = self.spec.mtu.unwrap_or(link.mtu);
        if link.mtu != want_mtu {
            nl.set_link_mtu(link.index, want_mtu)
                .await
                .map_err(nl_err(format!("setting MTU {want_mtu} on {name}")))?;
        }
        if let (Some(want), Some(have)) = (self.spec.mac, link.mac)
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
        Ok(())
    }

    /// Verifies the MAC after the device is up: udev/systemd's MACAddressPolicy may rewrite it
    /// (upstream #1795).
    async fn verify_mac(&mut self, nl: &Netlink, index: u32) -> Result<(), BackendError> {
        let name = &self.spec.name;
        let now = nl
            .link_by_index(index)
            .await
            .map_err(nl_err(format!("looking up {name}")))?
            .ok_or_else(|| BackendError::Missing(format!("{name} vanished after creation")))?;
        match (self.spec.mac, now.mac) {
            (Some(want), Some(got)) if want != got => Err(BackendError::MacMismatch {
                dev: name.clone(),
                want: want.to_string(),
                got: got.to_string(),
            }),
            (None, got) => {
                self.spec.mac = got;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Gives the device our subnet's network address (`/32`, `/128`) and removes other
    /// addresses of the cluster network from it (upstream's EnsureV4AddressOnLink).
    pub async fn ensure_address(
        &self,
        nl: &Netlink,
        own: Option<&Lease>,
    ) -> Result<(), BackendError> {
        let (Some(own), Some(index)) = (own, self.index) else {
            return Ok(());
        };
        let Some(want) = own.subnet_of(self.family).map(host_prefix) else {
            return Ok(());
        };
        let name = &self.spec.name;
        let addrs = nl
            .addresses(Some(index))
            .await
            .map_err(nl_err(format!("listing addresses of {name}")))?;
        let mut have = false;
        for a in addrs.iter().filter(|a| IpFamily::of(&a.ip) == self.family) {
            if a.net() == want {
                have = true;
            } else if self.is_stale_address(a.ip) {
                info!("removing address {} from {name}", a.net());
                nl.del_address(index, a.net())
                    .await
                    .map_err(nl_err(format!("removing {} from {name}", a.net())))?;
            }
        }
        if !have {
            nl.add_address(index, want)
                .await
                .map_err(nl_err(format!("adding {want} to {name}")))?;
        }
        Ok(())
    }

    /// Another address of ours on the device: inside the cluster network (IPv4), or any but
    /// the link-local one the kernel gives every IPv6 device.
    fn is_stale_address(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.network.contains(&ip),
            IpAddr::V6(ip) => !ip.is_unicast_link_local(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            assert!(m.is_local());
            assert!(!m.is_multicast());
        }
    }
}
