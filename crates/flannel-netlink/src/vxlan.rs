//! The VXLAN device: creation with flannel's parameters, read-back, and upstream's
//! "compatible existing device is reused" rule.

use std::net::IpAddr;

use rtnetlink::LinkVxlan;
use rtnetlink::packet_route::link::InfoVxlan;

use crate::error::Result;
use crate::link::LinkInfo;
use crate::netlink::Netlink;
use crate::types::MacAddr;

/// The VXLAN device flannel wants (`flannel.<VNI>` / `flannel-v6.<VNI>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub name: String,
    /// VXLAN network identifier (net-conf `Backend.VNI`, default 1).
    pub vni: u32,
    /// Source address of encapsulated packets: the node's public IP (v4 or v6).
    pub local: Option<IpAddr>,
    /// ifindex of the external interface (vxlan `dev`).
    pub dev: Option<u32>,
    /// UDP destination port; 0 means "do not send the attribute", so the kernel default
    /// (8472) applies, exactly as upstream does.
    pub port: u16,
    /// Source-MAC learning (upstream default off: `nolearning`).
    pub learning: bool,
    /// Group Based Policy extension.
    pub gbp: bool,
    /// Device MTU (upstream: underlay MTU - 50); `None` lets the kernel choose.
    pub mtu: Option<u32>,
    /// Device MAC (the VTEP MAC published in the lease); `None` lets the kernel pick one.
    pub mac: Option<MacAddr>,
}

impl VxlanSpec {
    /// A spec with upstream's defaults: no learning, no GBP, kernel default port.
    pub fn new(name: impl Into<String>, vni: u32) -> Self {
        Self {
            name: name.into(),
            vni,
            local: None,
            dev: None,
            port: 0,
            learning: false,
            gbp: false,
            mtu: None,
            mac: None,
        }
    }

    /// Why an existing device cannot be reused for this spec, or `None` if it can.
    ///
    /// Mirrors upstream's `vxlanLinksIncompat`: the kind must be vxlan; VNI, l2miss and GBP must
    /// match; `dev`, `local`, group and port are compared only when both sides have a value
    /// (port 0 in the spec means "kernel default", so any port matches). The MTU and MAC are not
    /// compared (they can be changed in place). Learning is not compared either, as upstream.
    pub fn incompatibility(&self, existing: &LinkInfo) -> Option<String> {
        let kind = existing.kind.as_deref().unwrap_or("none");
        let Some(v) = existing.vxlan.as_ref().filter(|_| kind == "vxlan") else {
            return Some(format!("link type: vxlan vs {kind}"));
        };
        if self.vni != v.vni {
            return Some(format!("vni: {} vs {}", self.vni, v.vni));
        }
        if let (Some(a), Some(b)) = (self.dev, v.dev)
            && a > 0
            && b > 0
            && a != b
        {
            return Some(format!("vtep (external) interface: {a} vs {b}"));
        }
        if let (Some(a), Some(b)) = (self.local, v.local)
            && a != b
        {
            return Some(format!("vtep (external) IP: {a} vs {b}"));
        }
        // The group is never compared: flannel's spec has none, and upstream compares it only
        // when both sides have one.
        if v.l2miss {
            return Some("l2miss: false vs true".to_string());
        }
        if self.port > 0 && v.port > 0 && self.port != v.port {
            return Some(format!("port: {} vs {}", self.port, v.port));
        }
        if self.gbp != v.gbp {
            return Some(format!("gbp: {} vs {}", self.gbp, v.gbp));
        }
        None
    }
}

/// The parameters of an existing VXLAN device, as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    /// VXLAN network identifier.
    pub vni: u32,
    /// ifindex of the underlay device (`dev`), if bound to one.
    pub dev: Option<u32>,
    /// Local (source) address.
    pub local: Option<IpAddr>,
    /// Multicast group or unicast remote, if configured.
    pub group: Option<IpAddr>,
    /// UDP destination port (the kernel reports its default 8472 when none was given).
    pub port: u16,
    /// Group Based Policy extension on.
    pub gbp: bool,
    /// Source-MAC learning on.
    pub learning: bool,
    /// L2 miss notifications on.
    pub l2miss: bool,
    /// L3 miss notifications on.
    pub l3miss: bool,
}

impl VxlanInfo {
    pub(crate) fn from_attributes(attrs: &[InfoVxlan]) -> Self {
        let mut v = VxlanInfo::default();
        for a in attrs {
            match a {
                InfoVxlan::Id(id) => v.vni = *id,
                InfoVxlan::Link(l) if *l > 0 => v.dev = Some(*l),
                InfoVxlan::Local(ip) if !ip.is_unspecified() => v.local = Some((*ip).into()),
                InfoVxlan::Local6(ip) if !ip.is_unspecified() => v.local = Some((*ip).into()),
                InfoVxlan::Group(ip) if !ip.is_unspecified() => v.group = Some((*ip).into()),
                InfoVxlan::Group6(ip) if !ip.is_unspecified() => v.group = Some((*ip).into()),
                InfoVxlan::Port(p) => v.port = *p,
                InfoVxlan::Gbp => v.gbp = true,
                InfoVxlan::Learning(b) => v.learning = *b,
                InfoVxlan::L2Miss(b) => v.l2miss = *b,
                InfoVxlan::L3Miss(b) => v.l3miss = *b,
                _ => {}
            }
        }
        v
    }
}

impl Netlink {
    /// Creates the VXLAN device (down). Fails with EEXIST (see
    /// [`crate::NetlinkError::is_already_exists`]) when the name is taken; the caller then
    /// inspects it with [`Netlink::link_by_name`] and decides with
    /// [`VxlanSpec::incompatibility`] whether to reuse or delete and recreate it.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni).learning(spec.learning);
        if let Some(dev) = spec.dev {
            b = b.dev(dev);
        }
        match spec.local {
            Some(IpAddr::V4(a)) => b = b.local(a),
            Some(IpAddr::V6(a)) => b = b.local6(a),
            None => {}
        }
        if spec.port != 0 {
            b = b.port(spec.port);
        }
        if spec.gbp {
            b = b.gbp();
        }
        if let Some(m) = spec.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.octets().to_vec());
        }
        self.new_link("create vxlan", &spec.name, b.build()).await?;
        self.require_link("create vxlan", &spec.name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(v: VxlanInfo) -> LinkInfo {
        LinkInfo {
            index: 7,
            name: "flannel.1".into(),
            mtu: 1450,
            up: true,
            lower_up: true,
            loopback: false,
            flags: 0,
            kind: Some("vxlan".into()),
            mac: None,
            master: None,
            link: None,
            vxlan: Some(v),
        }
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            local: Some("192.0.2.1".parse().unwrap()),
            dev: Some(3),
            ..VxlanSpec::new("flannel.1", 1)
        }
    }

    fn kernel_view() -> VxlanInfo {
        VxlanInfo {
            vni: 1,
            dev: Some(3),
            local: Some("192.0.2.1".parse().unwrap()),
            port: 8472,
            ..Default::default()
        }
    }

    #[test]
    fn identical_device_is_compatible_even_with_default_port() {
        assert_eq!(spec().incompatibility(&existing(kernel_view())), None);
    }

    #[test]
    fn each_difference_is_reported() {
        let cases: Vec<(VxlanInfo, &str)> = vec![
            (
                VxlanInfo {
                    vni: 2,
                    ..kernel_view()
                },
                "vni: 1 vs 2",
            ),
            (
                VxlanInfo {
                    dev: Some(4),
                    ..kernel_view()
                },
                "vtep (external) interface: 3 vs 4",
            ),
            (
                VxlanInfo {
                    local: Some("192.0.2.9".parse().unwrap()),
                    ..kernel_view()
                },
                "vtep (external) IP: 192.0.2.1 vs 192.0.2.9",
            ),
            (
                VxlanInfo {
                    l2miss: true,
                    ..kernel_view()
                },
                "l2miss: false vs true",
            ),
            (
                VxlanInfo {
                    gbp: true,
                    ..kernel_view()
                },
                "gbp: false vs true",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(spec().incompatibility(&existing(v)).as_deref(), Some(want));
        }
        let mut s = spec();
        s.port = 4789;
        assert_eq!(
            s.incompatibility(&existing(kernel_view())).as_deref(),
            Some("port: 4789 vs 8472")
        );
    }

    #[test]
    fn unknown_values_are_not_compared() {
        let mut s = spec();
        s.dev = None;
        s.local = None;
        let v = VxlanInfo {
            dev: Some(9),
            local: Some("10.0.0.1".parse().unwrap()),
            ..kernel_view()
        };
        assert_eq!(s.incompatibility(&existing(v)), None);
    }

    #[test]
    fn other_kinds_are_incompatible() {
        let mut l = existing(kernel_view());
        l.kind = Some("bridge".into());
        l.vxlan = None;
        assert_eq!(
            spec().incompatibility(&l).as_deref(),
            Some("link type: vxlan vs bridge")
        );
    }
}
