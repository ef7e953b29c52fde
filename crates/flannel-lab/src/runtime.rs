//! A node's container runtime as far as pod networking goes: executing the node's conflist for
//! a pod sandbox (ADD when it is created, DEL when it goes), as containerd does through libcni.
//!
//! [`crate::Cluster::add_pod`] (the pods of `flannel-lab up` and of every test) and
//! `flannel-lab pod add` on a running lab ([`crate::LabState::add_pod`]) both create pods
//! through [`NodeRuntime`], so a pod is wired the same way whichever made it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cni::{self, CniCall};
use crate::error::{LabError, Result};
use crate::netns::Netns;

/// What one node's runtime needs to wire pods: the node, its conflist, `CNI_PATH` and its root.
#[derive(Debug)]
pub struct NodeRuntime<'a> {
    /// The node's namespace, where plugins run.
    pub node: &'a Netns,
    /// The conflist the runtime executes.
    pub conflist: Value,
    /// `CNI_PATH`, searched in order.
    pub path: Vec<PathBuf>,
    /// The node's own root (a node running the kube-flannel DaemonSet), see [`CniCall`].
    pub node_root: Option<&'a Path>,
}

/// What ADD gave a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct WiredPod {
    /// Its IPv4 address, or its IPv6 address when it has no IPv4 one.
    pub ip: IpAddr,
    /// Its IPv6 address, when it has one.
    pub ip6: Option<IpAddr>,
    /// The CNI result, replayed as `prevResult` on DEL.
    pub result: Value,
}

impl WiredPod {
    /// Its addresses, primary first (IPv4 before IPv6), as `status.podIPs` lists them.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![self.ip];
        ips.extend(self.ip6.filter(|v6| *v6 != self.ip));
        ips
    }
}

impl NodeRuntime<'_> {
    fn call<'c>(&'c self, container_id: &'c str, netns: &'c Path) -> CniCall<'c> {
        CniCall {
            container_id,
            netns,
            ifname: "eth0",
            path: &self.path,
            node_root: self.node_root,
        }
    }

    /// ADD for sandbox `container_id` whose namespace is at `netns`, with the runtime config
    /// `runtime` (`{"portMappings": [...]}`).
    pub fn add(&self, container_id: &str, netns: &Path, runtime: &Value) -> Result<WiredPod> {
        let call = self.call(container_id, netns);
        let result = cni::conflist_add(self.node, &self.conflist, &call, runtime)?;
        let ip6 = cni::result_ip(&result, true);
        let ip = cni::result_ip(&result, false).or(ip6).ok_or_else(|| {
            LabError::Invalid(format!(
                "CNI result for {container_id} has no address: {result}"
            ))
        })?;
        Ok(WiredPod { ip, ip6, result })
    }

    /// DEL for a sandbox, every plugin in reverse order, with its ADD `result` as prevResult.
    pub fn del(
        &self,
        container_id: &str,
        netns: &Path,
        runtime: &Value,
        result: Option<&Value>,
    ) -> Result<()> {
        let call = self.call(container_id, netns);
        cni::conflist_del(self.node, &self.conflist, &call, runtime, result)
    }
}
