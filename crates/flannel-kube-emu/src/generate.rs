//! Generated clusters for scale tests: N Nodes as a kubeadm cluster running kube-flannel shows
//! them (upstream's flannel annotations, a pod CIDR each, a kubelet's full status), so a
//! flanneld under test lists, watches and programs a realistic 5000-node cluster without 5000
//! flanneld processes writing their annotations first.
//!
//! Each object weighs what a real Node does (about 10 KiB of JSON: labels, managedFields, conditions,
//! addresses, 30 images with digests and sizes, nodeInfo), because what a scale test measures
//! (bytes on the wire, decoding cost, the client's memory peak) grows with the object, not with
//! the number of fields flannel reads.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::store::rfc3339_now;

/// The flannel annotations' prefix (upstream's default `--kube-annotation-prefix`).
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateOptions {
    /// How many nodes.
    pub nodes: usize,
    /// The cluster's pod network: node `i` gets its `(i + 1)`-th /24 (the first one is left
    /// for the node under test, which registers itself).
    pub network: Ipv4Net,
}

impl GenerateOptions {
    /// How many /24s `network` holds beyond the first one (the most nodes it can carry).
    pub fn capacity(&self) -> usize {
        let len = self.network.prefix_len().min(24);
        (1usize << (24 - len)).saturating_sub(1)
    }
}

/// The name of generated node `i`, as a cloud provider names nodes after their address
/// (`ip-172-16-0-1.ec2.internal`).
pub fn node_name(i: usize) -> String {
    let ip = public_ip(i).octets();
    format!("ip-{}-{}-{}-{}.ec2.internal", ip[0], ip[1], ip[2], ip[3])
}

/// The public (InternalIP) address of generated node `i`: 172.16.0.1 onwards, outside the
/// lab's underlay (198.18.0.0/24) so no generated node shadows a real one.
pub fn public_ip(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(172, 16, 0, 1));
    Ipv4Addr::from(base.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX)))
}

/// The VTEP MAC of generated node `i` after `generation` annotation changes: locally
/// administered, unicast, unique per node in every generation.
pub fn vtep_mac(i: usize, generation: u64) -> String {
    let g = generation.to_le_bytes()[0];
    let [_, a, b, c] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    format!("0e:fe:{g:02x}:{a:02x}:{b:02x}:{c:02x}")
}

/// The pod CIDR of generated node `i`: the `(i + 1)`-th /24 of `network`.
pub fn pod_cidr(network: Ipv4Net, i: usize) -> Ipv4Net {
    let base = u32::from(network.network());
    let offset = u32::try_from(i + 1).unwrap_or(u32::MAX) << 8;
    Ipv4Net::new(Ipv4Addr::from(base.wrapping_add(offset)), 24).unwrap_or(network)
}

/// The flannel annotations kube-flannel writes for a vxlan node.
pub fn flannel_annotations(i: usize, generation: u64) -> Value {
    json!({
        format!("{ANNOTATION_PREFIX}/backend-type"): "vxlan",
        format!("{ANNOTATION_PREFIX}/backend-data"):
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep_mac(i, generation)),
        format!("{ANNOTATION_PREFIX}/kube-subnet-manager"): "true",
        format!("{ANNOTATION_PREFIX}/public-ip"): public_ip(i).to_string(),
    })
}

/// The images a node of a typical cluster has pulled (30; the kubelet reports up to 50) (name, size in bytes): the control
/// plane's and add-ons' images plus application images, as `status.images` lists them.
const IMAGES: [(&str, u64); 30] = [
    ("registry.k8s.io/etcd:3.5.21-0", 58_938_593),
    ("registry.k8s.io/kube-apiserver:v1.33.1", 30_071_307),
    (
        "registry.k8s.io/kube-controller-manager:v1.33.1",
        27_646_507,
    ),
    ("registry.k8s.io/kube-proxy:v1.33.1", 31_891_765),
    ("registry.k8s.io/kube-scheduler:v1.33.1", 21_782_634),
    ("registry.k8s.io/coredns/coredns:v1.12.0", 20_939_036),
    ("registry.k8s.io/pause:3.10", 320_368),
    ("ghcr.io/flannel-io/flannel:v0.27.0", 32_295_016),
    (
        "ghcr.io/flannel-io/flannel-cni-plugin:v1.7.1-flannel1",
        4_848_816,
    ),
    (
        "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
        19_494_617,
    ),
    (
        "registry.k8s.io/ingress-nginx/controller:v1.12.1",
        105_486_003,
    ),
    ("quay.io/prometheus/node-exporter:v1.9.1", 12_645_413),
    ("quay.io/prometheus/prometheus:v3.4.0", 132_071_930),
    ("docker.io/grafana/grafana:12.0.1", 181_246_117),
    ("docker.io/library/nginx:1.27.5", 72_188_133),
    ("docker.io/library/redis:7.4.3", 45_203_765),
    ("docker.io/library/postgres:17.5", 158_467_381),
    ("docker.io/bitnami/kafka:3.9.0", 220_117_093),
    (
        "quay.io/jetstack/cert-manager-controller:v1.17.2",
        19_802_405,
    ),
    ("docker.io/fluent/fluent-bit:4.0.1", 38_912_307),
    ("docker.io/library/nginx:1.25.4", 70_544_635),
    ("docker.io/library/redis:7.2.5", 40_874_001),
    ("docker.io/library/python:3.12-slim", 49_310_876),
    ("docker.io/library/node:22-alpine", 57_220_480),
    ("docker.io/library/busybox:1.36.1", 2_160_406),
    ("quay.io/prometheus/alertmanager:v0.28.1", 31_013_462),
    (
        "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.15.0",
        20_115_784,
    ),
    ("ghcr.io/example/payments-api:2025.11.3", 88_417_220),
    ("ghcr.io/example/frontend:2025.11.5", 64_930_117),
    ("ghcr.io/example/worker:2025.11.2", 93_502_661),
];

/// A digest-like hex string, stable per (image, node group), so images differ in digest as
/// pulls at different times do.
fn digest(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(64);
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

fn images(i: usize) -> Value {
    let group = (i % 7) as u64;
    let list: Vec<Value> = IMAGES
        .iter()
        .enumerate()
        .map(|(k, (name, size))| {
            let repo = name.split(':').next().unwrap_or(name);
            json!({
                "names": [
                    format!("{repo}@sha256:{}", digest(group * 100 + k as u64)),
                    name,
                ],
                "sizeBytes": size + group * 4096,
            })
        })
        .collect();
    Value::Array(list)
}

/// The types of the conditions a kubelet reports, in its order.
pub const CONDITION_TYPES: [&str; 4] = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

/// The four conditions a kubelet reports, with `lastHeartbeatTime` set to `heartbeat`.
pub fn conditions(heartbeat: &str, since: &str) -> Value {
    let c = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": ty, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": since,
        })
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The `metadata.managedFields` a real Node carries (kubelet, kube-controller-manager and
/// flanneld as field managers): a third of a real Node's bytes, decoded by every client that
/// does not strip it.
fn managed_fields(time: &str) -> Value {
    let conditions: serde_json::Map<String, Value> = CONDITION_TYPES
        .iter()
        .map(|t| {
            (
                format!(r#"k:{{"type":"{t}"}}"#),
                json!({ ".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                        "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {} }),
            )
        })
        .collect();
    let entry = |manager: &str, op: &str, sub: Option<&str>, fields: Value| {
        let mut e = json!({ "manager": manager, "operation": op, "apiVersion": "v1",
                            "time": time, "fieldsType": "FieldsV1", "fieldsV1": fields });
        if let Some(sub) = sub {
            e["subresource"] = json!(sub);
        }
        e
    };
    let labels: serde_json::Map<String, Value> = [
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ]
    .iter()
    .map(|l| (format!("f:{l}"), json!({})))
    .collect();
    json!([
        entry(
            "kubelet",
            "Update",
            None,
            json!({ "f:metadata": { "f:annotations": {
            ".": {}, "f:node.alpha.kubernetes.io/ttl": {},
            "f:volumes.kubernetes.io/controller-managed-attach-detach": {} },
            "f:labels": labels }, "f:spec": { "f:providerID": {} } })
        ),
        entry(
            "kube-controller-manager",
            "Update",
            None,
            json!({ "f:spec": {
            "f:podCIDR": {}, "f:podCIDRs": { ".": {}, r#"v:"10.128.0.0/24""#: {} } } })
        ),
        entry(
            "flanneld",
            "Update",
            Some("status"),
            json!({ "f:metadata": { "f:annotations": {
            "f:flannel.alpha.coreos.com/backend-data": {},
            "f:flannel.alpha.coreos.com/backend-type": {},
            "f:flannel.alpha.coreos.com/kube-subnet-manager": {},
            "f:flannel.alpha.coreos.com/public-ip": {} } },
            "f:status": { "f:conditions": { r#"k:{"type":"NetworkUnavailable"}"#: {
                ".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {} } } } })
        ),
        entry(
            "kubelet",
            "Update",
            Some("status"),
            json!({ "f:status": {
            "f:allocatable": { "f:cpu": {}, "f:ephemeral-storage": {}, "f:memory": {} },
            "f:capacity": { "f:cpu": {}, "f:ephemeral-storage": {}, "f:memory": {} },
            "f:conditions": conditions, "f:daemonEndpoints": { "f:kubeletEndpoint": { "f:Port": {} } },
            "f:images": {}, "f:nodeInfo": { "f:bootID": {}, "f:containerRuntimeVersion": {},
                "f:kernelVersion": {}, "f:kubeProxyVersion": {}, "f:kubeletVersion": {},
                "f:machineID": {}, "f:osImage": {}, "f:systemUUID": {} } } })
        ),
    ])
}

/// Generated node `i` of a cluster with pod network `network`, as the API server would
/// return it after registration, CIDR allocation and flanneld's annotation write (the server
/// stamps uid, resourceVersion and creationTimestamp on create).
pub fn node(i: usize, network: Ipv4Net) -> Value {
    let name = node_name(i);
    let ip = public_ip(i).to_string();
    let cidr = pod_cidr(network, i).to_string();
    let now = rfc3339_now();
    let zone = ["us-east-1a", "us-east-1b", "us-east-1c"][i % 3];
    let mut annotations = flannel_annotations(i, 0);
    for (k, v) in [
        (
            "kubeadm.alpha.kubernetes.io/cri-socket",
            "unix:///var/run/containerd/containerd.sock",
        ),
        ("node.alpha.kubernetes.io/ttl", "0"),
        (
            "volumes.kubernetes.io/controller-managed-attach-detach",
            "true",
        ),
        (
            "csi.volume.kubernetes.io/nodeid",
            r#"{"ebs.csi.aws.com":"i-0a1b2c3d4e5f60718"}"#,
        ),
    ] {
        annotations[k] = json!(v);
    }
    json!({
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/instance-type": "m6i.xlarge",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m6i.xlarge",
                "topology.kubernetes.io/region": "us-east-1",
                "topology.kubernetes.io/zone": zone,
                "topology.ebs.csi.aws.com/zone": zone,
            },
            "annotations": annotations,
            "managedFields": managed_fields(&now),
        },
        "spec": {
            "podCIDR": cidr, "podCIDRs": [cidr],
            "providerID": format!("aws:///{zone}/i-{:017x}", 0x0a1b_0000_0000_0000u64 + i as u64),
        },
        "status": {
            "capacity": {
                "cpu": "4", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0",
                "hugepages-2Mi": "0", "memory": "16065496Ki", "pods": "110",
            },
            "allocatable": {
                "cpu": "3920m", "ephemeral-storage": "95551679124", "hugepages-1Gi": "0",
                "hugepages-2Mi": "0", "memory": "15048664Ki", "pods": "110",
            },
            "conditions": conditions(&now, &now),
            "addresses": [
                { "type": "InternalIP", "address": ip },
                { "type": "InternalDNS", "address": name },
                { "type": "Hostname", "address": name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "machineID": digest(i as u64)[..32].to_string(),
                "systemUUID": format!("ec2{}", &digest(i as u64 + 1)[..29]),
                "bootID": digest(i as u64 + 2)[..32].to_string(),
                "kernelVersion": "6.8.0-1029-aws",
                "osImage": "Ubuntu 24.04.2 LTS",
                "containerRuntimeVersion": "containerd://1.7.27",
                "kubeletVersion": "v1.33.1",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images(i),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_cidrs_and_macs_are_unique_and_well_formed() {
        let net: Ipv4Net = "10.128.0.0/9".parse().unwrap();
        let opts = GenerateOptions {
            nodes: 5000,
            network: net,
        };
        assert_eq!(opts.capacity(), 32767);
        assert_eq!(node_name(0), "ip-172-16-0-1.ec2.internal");
        assert_eq!(pod_cidr(net, 0).to_string(), "10.128.1.0/24");
        assert_eq!(pod_cidr(net, 4999).to_string(), "10.147.136.0/24");
        assert_eq!(vtep_mac(258, 3), "0e:fe:03:00:01:02");
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            assert!(net.contains(&pod_cidr(net, i)));
            assert!(seen.insert(pod_cidr(net, i)), "{i}");
        }
        let macs: std::collections::HashSet<String> = (0..5000).map(|i| vtep_mac(i, 1)).collect();
        assert_eq!(macs.len(), 5000);
    }

    #[test]
    fn a_node_weighs_what_a_real_one_does() {
        let n = node(17, "10.128.0.0/9".parse().unwrap());
        let size = n.to_string().len();
        assert!((10_000..20_000).contains(&size), "{size} bytes");
        let a = &n["metadata"]["annotations"];
        assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "vxlan");
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-data"],
            r#"{"VNI":1,"VtepMAC":"0e:fe:00:00:00:11"}"#
        );
        assert_eq!(a["flannel.alpha.coreos.com/public-ip"], "172.16.0.18");
        assert_eq!(a["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        assert_eq!(n["spec"]["podCIDRs"][0], "10.128.18.0/24");
        assert_eq!(n["status"]["images"].as_array().unwrap().len(), 30);
    }
}
