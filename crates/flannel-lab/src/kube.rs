//! Kubernetes mode for the lab: the `flannel-kube-emu` API emulator in the underlay namespace,
//! Node objects as kubeadm leaves them, and a kubeconfig and net-conf.json per node, so
//! flanneld runs with `--kube-subnet-mgr` exactly as under the kube-flannel DaemonSet.
//!
//! The lab plays the kubelet's part towards the API: it registers each node (addresses,
//! nodeInfo, capacity), reports it `Ready` once flanneld is up, and registers every pod it
//! creates through CNI as a Pod bound to its node, `Running` with its IPs (see
//! [`KubeEmu::register_pod`]), so real `kubectl` shows the lab as it would a kubeadm cluster
//! (`flannel-lab kubectl`, [`crate::kubectl`]).
//!
//! The emulator is *not* an API server: see the `flannel-kube-emu` crate docs for which API
//! semantics it reproduces. The lab talks to it over HTTP (a tiny blocking client inside the
//! underlay namespace), with the real API paths for objects and `/emu/` for test controls.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::kube_auth::{ApiCredentials, FLANNEL_NAMESPACE, FLANNEL_SERVICE_ACCOUNT};
use crate::kube_client::KubeClient;
use crate::kube_pod::PodObject;
use crate::lab::Lab;
use crate::process::Child;

/// The name of the emulator binary, found next to flanneld.
pub const EMULATOR_BIN: &str = "flannel-kube-emu";

/// How long the emulator may take to write its address file.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The namespace the lab's pods are registered in.
pub const POD_NAMESPACE: &str = "default";

/// The kubelet version lab nodes report (`kubectl get nodes` VERSION): the emulator's API
/// version, marked as the lab's, since no real kubelet runs.
pub const KUBELET_VERSION: &str = "v1.33.0-flannel-lab";

/// The name of the one container of a lab pod. A lab pod is a network namespace and runs no
/// image; the container is what makes it a valid, `1/1` ready Pod for kubectl.
pub const POD_CONTAINER: &str = "netns";

/// Emulator settings the lab passes on its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeEmuOptions {
    /// Changes kept for resuming watches (`--history`); small values force `410 Gone`.
    pub history: usize,
    /// `--bookmark-interval-ms`.
    pub bookmark_interval_ms: u64,
    /// Production-like ([`crate::kube_auth`]): HTTPS, bearer tokens and RBAC, flanneld on
    /// in-cluster config with its ServiceAccount's token. Off (`flannel-lab up --plain-api`):
    /// plain HTTP without authentication and a kubeconfig per node, for benchmarks.
    pub secure: bool,
}

impl Default for KubeEmuOptions {
    fn default() -> Self {
        KubeEmuOptions {
            history: 1000,
            bookmark_interval_ms: 500,
            secure: true,
        }
    }
}

/// The Kubernetes node name of lab node `i` (zero-based): `n1`, `n2`, ...
pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The pod CIDR kubeadm's range allocator would give the `i`-th node (zero-based) registered in
/// a cluster with `--pod-network-cidr=network`: the `i`-th /24 (10.244.0.0/24, 10.244.1.0/24, ...).
pub fn kubeadm_pod_cidr(network: &str, i: usize) -> Result<Ipv4Net> {
    let net: Ipv4Net = network
        .parse()
        .map_err(|e| LabError::Invalid(format!("network {network:?}: {e}")))?;
    let len = net.prefix_len().max(24);
    net.subnets(len)
        .ok()
        .and_then(|mut s| s.nth(i))
        .ok_or_else(|| LabError::Invalid(format!("{network} has no /{len} number {i}")))
}

/// The IPv6 pod CIDR the allocator would give the `i`-th node: the `i`-th /64 of `network`.
pub fn kubeadm_pod_cidr_v6(network: &str, i: usize) -> Result<ipnet::Ipv6Net> {
    let net: ipnet::Ipv6Net = network
        .parse()
        .map_err(|e| LabError::Invalid(format!("IPv6 network {network:?}: {e}")))?;
    let len = net.prefix_len().max(64);
    net.subnets(len)
        .ok()
        .and_then(|mut s| s.nth(i))
        .ok_or_else(|| LabError::Invalid(format!("{network} has no /{len} number {i}")))
}

/// A running emulator.
#[derive(Debug)]
pub struct KubeEmu {
    child: Child,
    client: KubeClient,
    creds: Option<ApiCredentials>,
}

impl KubeEmu {
    /// Starts the emulator inside the lab's underlay namespace, listening on the underlay
    /// gateway address (reachable from every node) on a free port.
    pub fn start(lab: &Lab, bin_dir: &Path, opts: KubeEmuOptions) -> Result<KubeEmu> {
        let bin = bin_dir.join(EMULATOR_BIN);
        if !bin.is_file() {
            return Err(LabError::Invalid(format!(
                "{EMULATOR_BIN} binary not found in {}: build the workspace first (`cargo build --workspace --bins`)",
                bin_dir.display()
            )));
        }
        let addr_file = lab.dir().join("kube-emu.addr");
        let _ = std::fs::remove_file(&addr_file);
        let ul = lab.underlay();
        let creds = if opts.secure {
            Some(ApiCredentials::create(lab.dir(), IpAddr::V4(ul.gateway()))?)
        } else {
            None
        };
        let mut cmd = Command::new(bin);
        if let Some(c) = &creds {
            cmd.args(c.emulator_args());
        }
        cmd.arg(format!("--listen={}:0", ul.gateway()))
            .arg(format!("--history={}", opts.history))
            .arg(format!(
                "--bookmark-interval-ms={}",
                opts.bookmark_interval_ms
            ))
            .arg(format!("--address-file={}", addr_file.display()));
        let mut child = lab.spawn_in(ul.netns(), cmd)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            child.ensure_running()?;
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(a) = text.trim().parse::<SocketAddr>()
            {
                break a;
            }
            if Instant::now() >= deadline {
                return Err(child.error(format!(
                    "did not write {} within {START_TIMEOUT:?}",
                    addr_file.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let client = match &creds {
            Some(c) => KubeClient::with_credentials(addr, &ul.netns().path(), c)?,
            None => KubeClient::new(addr, &ul.netns().path()),
        };
        Ok(KubeEmu {
            child,
            client,
            creds,
        })
    }

    /// The credentials of a production-like emulator (`None`: plain HTTP, no auth).
    pub fn credentials(&self) -> Option<&ApiCredentials> {
        self.creds.as_ref()
    }

    /// The API URL nodes use (`https://198.18.0.254:PORT`; `http://` with `--plain-api`).
    pub fn url(&self) -> String {
        self.client.url()
    }

    /// The HTTP client for this emulator, also usable once the lab is detached (see
    /// [`KubeClient::from_url`]).
    pub fn client(&self) -> &KubeClient {
        &self.client
    }

    /// The emulator process.
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// The administrator's kubeconfig, named as kubeadm names `/etc/kubernetes/admin.conf`'s
    /// cluster, user and context, with the lab's CA and the administrator's token.
    pub fn admin_kubeconfig(&self) -> String {
        crate::kubectl::admin_kubeconfig(&self.url(), self.creds.as_ref())
    }

    /// A kubeconfig pointing at the plain-HTTP emulator (no credentials).
    pub fn kubeconfig(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {url}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\ncurrent-context: lab\nusers:\n- name: {user}\n  user: {{}}\n",
            url = self.url()
        )
    }

    /// Creates a Node as kubeadm's registration plus the range allocator leave it: pod CIDRs
    /// set, its InternalIP, the host's nodeInfo and capacity, the kubelet's labels, no flannel
    /// annotations, not yet Ready (the network plugin is not up).
    pub fn create_node(
        &self,
        name: &str,
        pod_cidrs: &[String],
        internal_ip: IpAddr,
    ) -> Result<Value> {
        let mut spec = json!({});
        if let Some(first) = pod_cidrs.first() {
            spec = json!({ "podCIDR": first, "podCIDRs": pod_cidrs });
        }
        let now = now_rfc3339();
        let (info, capacity) = host_node_info();
        let arch = info["architecture"].clone();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch, "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux"
                },
                "annotations": {}
            },
            "spec": spec,
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": internal_ip.to_string() },
                    { "type": "Hostname", "address": name }
                ],
                "capacity": capacity,
                "allocatable": capacity,
                "nodeInfo": info,
                "conditions": [{
                    "type": "Ready", "status": "False", "reason": "KubeletNotReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                    "message": "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"
                }]
            }
        });
        self.client
            .expect_ok("POST", "/api/v1/nodes", "application/json", Some(&node))
    }

    /// Reports node `name` Ready, as its kubelet does once the network plugin is up: a
    /// strategic merge patch of `nodes/<name>/status` (conditions merge by type, so flanneld's
    /// `NetworkUnavailable` stays).
    pub fn set_node_ready(&self, name: &str) -> Result<Value> {
        let now = now_rfc3339();
        let patch = json!({ "status": { "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now
        }] } });
        self.client.expect_ok(
            "PATCH",
            &format!("/api/v1/nodes/{name}/status"),
            "application/strategic-merge-patch+json",
            Some(&patch),
        )
    }

    /// Registers a lab pod as the Pod a kubelet would report: created in [`POD_NAMESPACE`]
    /// bound to `node` (the API starts it `Pending`), then its status (`Running`, ready, host
    /// and pod IPs, the first IP the primary one) written through `pods/<name>/status` (see
    /// [`crate::kube_pod`]).
    pub fn register_pod(
        &self,
        name: &str,
        node: &str,
        host_ip: IpAddr,
        pod_ips: &[IpAddr],
    ) -> Result<Value> {
        self.client
            .register_pod(&PodObject::lab_pod(name, node, host_ip, pod_ips))
    }

    /// Removes a lab pod's Pod object (the kubelet's part after the sandbox is gone); one that
    /// is already gone (deleted with kubectl) is fine.
    pub fn unregister_pod(&self, name: &str) -> Result<()> {
        self.client.unregister_pod(POD_NAMESPACE, name)
    }

    /// The Node object named `name`.
    pub fn node(&self, name: &str) -> Result<Value> {
        self.client.expect_ok(
            "GET",
            &format!("/api/v1/nodes/{name}"),
            "application/json",
            None,
        )
    }

    /// Deletes a Node (as `kubectl delete node`).
    pub fn delete_node(&self, name: &str) -> Result<Value> {
        self.client.expect_ok(
            "DELETE",
            &format!("/api/v1/nodes/{name}"),
            "application/json",
            None,
        )
    }

    /// Merge-patches a Node (as `kubectl patch node --type merge`).
    pub fn merge_patch_node(&self, name: &str, patch: &Value) -> Result<Value> {
        self.client.expect_ok(
            "PATCH",
            &format!("/api/v1/nodes/{name}"),
            "application/merge-patch+json",
            Some(patch),
        )
    }

    /// Sets a Node's pod CIDRs through the emulator's test hook (the real API only allows
    /// setting them once; this simulates what re-registration would do).
    pub fn force_pod_cidrs(&self, name: &str, cidrs: &[&str]) -> Result<Value> {
        self.client.expect_ok(
            "PUT",
            &format!("/emu/nodes/{name}/pod-cidrs"),
            "application/json",
            Some(&json!(cidrs)),
        )
    }

    /// Aborts every open watch connection.
    pub fn drop_watches(&self) -> Result<Value> {
        self.client
            .expect_ok("POST", "/emu/drop-watches", "application/json", None)
    }

    /// Sends `410 Expired` on every open watch and compacts the history.
    pub fn expire_watches(&self) -> Result<Value> {
        self.client
            .expect_ok("POST", "/emu/expire-watches", "application/json", None)
    }

    /// The emulator's state summary (RV, watchers, node names).
    pub fn state(&self) -> Result<Value> {
        self.client
            .expect_ok("GET", "/emu/state", "application/json", None)
    }
}

/// Brings up Kubernetes mode for a cluster: starts the emulator, writes the administrator's
/// kubeconfig into the lab directory ([`crate::kubectl::ADMIN_KUBECONFIG`]), registers Node
/// objects `n1..nN` with kubeadm-style pod CIDRs and their InternalIP, and writes each node's
/// kubeconfig and net-conf.json (the ConfigMap's file) into its directory.
pub fn start_cluster(lab: &Lab, bin_dir: &Path, spec: &crate::ClusterSpec) -> Result<KubeEmu> {
    let emu = KubeEmu::start(lab, bin_dir, spec.kube_emu)?;
    crate::kubectl::write_admin_kubeconfig(lab.dir(), &emu.url(), emu.credentials())?;
    if emu.credentials().is_some() {
        let netpol = spec.netpol || spec.daemonset.is_some();
        crate::kube_auth::create_flannel_rbac(emu.client(), netpol)?;
    }
    let net_conf = serde_json::to_string_pretty(&spec.net_config())
        .map_err(|e| LabError::Invalid(format!("net-conf.json: {e}")))?;
    for (i, node) in lab.nodes().iter().enumerate() {
        let name = node_name(i);
        let mut cidrs = vec![kubeadm_pod_cidr(&spec.network, i)?.to_string()];
        // Dual-stack: kube-controller-manager gives each node a second, IPv6 podCIDR
        // (--node-cidr-mask-size-ipv6 defaults to /64) from the IPv6 cluster CIDR.
        if let Some(net6) = spec
            .extra_config
            .get("IPv6Network")
            .and_then(|v| v.as_str())
        {
            cidrs.push(kubeadm_pod_cidr_v6(net6, i)?.to_string());
        }
        emu.create_node(&name, &cidrs, IpAddr::V4(node.ip()))?;
        let dir = node.dir();
        let kubeconfig = match emu.credentials() {
            // The ServiceAccount's token, as the kubelet projects it, and a kubeconfig naming
            // that file for --kubeconfig-file users.
            Some(creds) => {
                let token = crate::kube_auth::request_node_token(emu.client())?;
                let sa = crate::kube_auth::write_service_account(dir, creds, &token)?;
                crate::kube_auth::token_kubeconfig(
                    &emu.url(),
                    creds.ca_file(),
                    &format!("system:serviceaccount:{FLANNEL_NAMESPACE}:{FLANNEL_SERVICE_ACCOUNT}"),
                    &sa.join("token"),
                )
            }
            None => emu.kubeconfig(&format!("system:node:{name}")),
        };
        for (file, text) in [
            (dir.join("kubeconfig"), kubeconfig),
            (dir.join("net-conf.json"), net_conf.clone()),
        ] {
            std::fs::write(&file, text)
                .map_err(|e| LabError::io(format!("writing {}", file.display()), e))?;
        }
    }
    Ok(emu)
}

/// Now as the API's `Time` (RFC 3339, UTC, whole seconds).
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// What a kubelet on this machine would report in `status.nodeInfo` and `status.capacity`:
/// every lab node shares the host's kernel, OS and CPUs. The runtime is the lab itself, which
/// runs the CNI plugins as containerd would.
fn host_node_info() -> (Value, Value) {
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "0".into());
    let info = json!({
        "architecture": arch,
        "operatingSystem": "linux",
        "osImage": os_image,
        "kernelVersion": kernel,
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": "",
        "containerRuntimeVersion": format!("flannel-lab://{}", env!("CARGO_PKG_VERSION")),
        "machineID": "", "systemUUID": "", "bootID": ""
    });
    let capacity =
        json!({ "cpu": cpus.to_string(), "memory": format!("{mem_kib}Ki"), "pods": "110" });
    (info, capacity)
}

/// flanneld's datastore flags in Kubernetes mode for a node whose files are in `node_dir`:
/// in-cluster config (no flag) for a production-like emulator, the node's kubeconfig for a
/// plain one.
pub fn flanneld_args(node_dir: &Path, in_cluster: bool) -> Vec<String> {
    let mut args = vec!["--kube-subnet-mgr".to_string()];
    if !in_cluster {
        args.push(format!(
            "--kubeconfig-file={}",
            node_dir.join("kubeconfig").display()
        ));
    }
    args.push(format!(
        "--net-config-path={}",
        node_dir.join("net-conf.json").display()
    ));
    args
}

/// The environment in-cluster config reads (`KUBERNETES_SERVICE_HOST`/`_PORT`), pointing at the
/// emulator as the `kubernetes` Service's ClusterIP would.
pub fn in_cluster_env(client: &KubeClient) -> [(&'static str, String); 2] {
    let addr = client.addr();
    [
        ("KUBERNETES_SERVICE_HOST", addr.ip().to_string()),
        ("KUBERNETES_SERVICE_PORT", addr.port().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_cidrs() {
        assert_eq!(
            kubeadm_pod_cidr("10.244.0.0/16", 0).unwrap().to_string(),
            "10.244.0.0/24"
        );
        assert_eq!(
            kubeadm_pod_cidr("10.244.0.0/16", 2).unwrap().to_string(),
            "10.244.2.0/24"
        );
        assert!(kubeadm_pod_cidr("10.244.0.0/24", 1).is_err());
        assert_eq!(node_name(0), "n1");
    }
}
