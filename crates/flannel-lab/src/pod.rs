//! Pods: namespaces that belong to a node.
//!
//! Two uses: the main path hands a pod's namespace path to a CNI plugin (`CNI_NETNS`), exactly as
//! a container runtime would; data-plane tests that must not depend on the plugin under test wire
//! a pod by hand into the node's bridge instead ([`crate::Lab::add_wired_pod`]).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::error::{LabError, Result};
use crate::netns::Netns;

/// How a hand-wired pod is connected: its address, its gateway on the node bridge, the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's address and prefix, e.g. 10.244.1.2/24.
    pub address: IpNet,
    /// The gateway, placed on the node bridge with the pod's prefix length, e.g. 10.244.1.1.
    pub gateway: IpAddr,
    /// The node bridge; `cni0` like flannel's delegate config.
    pub bridge: String,
}

impl PodNetwork {
    /// A pod on `cni0` with `address` and default route via `gateway`.
    pub fn new(address: IpNet, gateway: IpAddr) -> Self {
        PodNetwork {
            address,
            gateway,
            bridge: "cni0".to_string(),
        }
    }

    /// Use bridge `name` instead of `cni0`.
    pub fn bridge(mut self, name: &str) -> Self {
        self.bridge = name.to_string();
        self
    }
}

/// A pod namespace on a node, deleted (with whatever runs in it) on drop.
#[derive(Debug)]
pub struct Pod {
    name: String,
    node: usize,
    netns: Netns,
    address: Option<IpNet>,
    host_veth: Option<String>,
}

impl Pod {
    /// Creates the namespace `flab-…-<node>-<name>` (`<stem>-<node>-<name>` in a persistent lab).
    pub(crate) fn create(
        name: &str,
        node: usize,
        node_name: &str,
        stem: Option<&str>,
    ) -> Result<Pod> {
        if name.is_empty()
            || name.len() > 40
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(LabError::Invalid(format!(
                "pod name {name:?} must be 1-40 characters of [A-Za-z0-9-]"
            )));
        }
        Ok(Pod {
            name: name.to_string(),
            node,
            netns: Netns::new_in(stem, &format!("{node_name}-{name}"))?,
            address: None,
            host_veth: None,
        })
    }

    /// Connects this pod to `node_ns`'s bridge through veth `host_veth` (see
    /// [`crate::Lab::add_wired_pod`]).
    pub(crate) fn wire(
        &mut self,
        node_ns: &Netns,
        host_veth: &str,
        net: &PodNetwork,
    ) -> Result<()> {
        if net.address.addr().is_ipv4() != net.gateway.is_ipv4() {
            return Err(LabError::Invalid(format!(
                "pod {}: address {} and gateway {} are of different families",
                self.name, net.address, net.gateway
            )));
        }
        let br = &net.bridge;
        let nodad = if net.gateway.is_ipv6() { " nodad" } else { "" };
        // `-6` is not accepted inside `ip -batch`; an explicit default prefix sets the family.
        let default = if net.gateway.is_ipv6() {
            "::/0"
        } else {
            "0.0.0.0/0"
        };
        let mut node_script = String::new();
        if node_ns.ip(["link", "show", "dev", br.as_str()]).is_err() {
            node_script += &format!("link add {br} type bridge\n");
        }
        node_script += &format!(
            "link set {br} up\n\
             addr replace {}/{} dev {br}{nodad}\n\
             link add {host_veth} type veth peer name eth0 netns {}\n\
             link set {host_veth} master {br} up\n",
            net.gateway,
            net.address.prefix_len(),
            self.netns.name()
        );
        node_ns.ip_batch(&node_script)?;
        self.host_veth = Some(host_veth.to_string());
        self.netns.ip_batch(&format!(
            "addr add {} dev eth0{nodad}\n\
             link set eth0 up\n\
             route add {default} via {} dev eth0\n",
            net.address, net.gateway
        ))?;
        self.address = Some(net.address);
        Ok(())
    }

    /// The pod's name, unique within the lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Zero-based index of the node it belongs to.
    pub fn node_index(&self) -> usize {
        self.node
    }

    /// Its namespace guard.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its namespace name.
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// Its namespace path, what a runtime passes as `CNI_NETNS`.
    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    /// The address given by hand-wiring (`None` for a CNI-managed pod: ask the plugin's result).
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.map(|a| a.addr())
    }

    /// The node-side veth of a hand-wired pod.
    pub fn host_veth(&self) -> Option<&str> {
        self.host_veth.as_deref()
    }

    /// Deletes the pod now, reporting errors.
    pub(crate) fn delete(self) -> Result<()> {
        self.netns.delete()
    }
}
