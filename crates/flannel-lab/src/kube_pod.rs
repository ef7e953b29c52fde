//! The kubelet's part towards the API for the lab's pods: registering a Pod object bound to its
//! node and reporting it `Running` and ready with its IPs, relabelling it, removing it, and the
//! Namespace it lives in.
//!
//! Pods made by `flannel-lab up` are one `netns` container in `default`
//! ([`PodObject::lab_pod`]); pods made by `flannel-lab pod add` are the Kubernetes e2e
//! NetworkPolicy model's server pods ([`PodObject::server_pod`]): one container per served
//! port and protocol, `cont-80-tcp` with the port named `serve-80-tcp`, and so on, so policies
//! with named ports resolve against them as against the e2e suite's agnhost pods.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::error::Result;
use crate::kube::now_rfc3339;
use crate::kube_client::{KubeClient, api_error};
use crate::probe::{PortProto, SERVED};

/// The image name lab containers report: no image runs, the pod is a network namespace.
const LAB_IMAGE: &str = "flannel-lab/netns";

/// The image name server containers report (the servers are `flannel-lab serve`).
const SERVE_IMAGE: &str = "flannel-lab/serve";

/// The label every pod of `flannel-lab up` carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "flannel-lab");

/// A container of a lab Pod: its name and the ports it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// The image it reports.
    pub image: String,
    /// Declared ports: name and port/protocol.
    pub ports: Vec<(String, PortProto)>,
}

/// What the lab tells the API about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObject {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The node it is bound to (`spec.nodeName`).
    pub node: String,
    /// The node's address (`status.hostIP`).
    pub host_ip: IpAddr,
    /// Its addresses, primary first (`status.podIPs`).
    pub pod_ips: Vec<IpAddr>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Its containers.
    pub containers: Vec<ContainerSpec>,
}

impl PodObject {
    /// A pod of `flannel-lab up`: in `default`, labelled [`MANAGED_BY`], one container
    /// [`crate::kube::POD_CONTAINER`].
    pub fn lab_pod(name: &str, node: &str, host_ip: IpAddr, pod_ips: &[IpAddr]) -> PodObject {
        PodObject {
            namespace: crate::kube::POD_NAMESPACE.to_string(),
            name: name.to_string(),
            node: node.to_string(),
            host_ip,
            pod_ips: pod_ips.to_vec(),
            labels: BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]),
            containers: vec![ContainerSpec {
                name: crate::kube::POD_CONTAINER.to_string(),
                image: LAB_IMAGE.to_string(),
                ports: Vec::new(),
            }],
        }
    }

    /// A pod of `flannel-lab pod add`: the e2e model's server pod, one container
    /// `cont-<port>-<proto>` per served port declaring it as `serve-<port>-<proto>`, and
    /// exactly the labels given.
    pub fn server_pod(
        namespace: &str,
        name: &str,
        node: &str,
        host_ip: IpAddr,
        pod_ips: &[IpAddr],
        labels: &BTreeMap<String, String>,
    ) -> PodObject {
        PodObject {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node: node.to_string(),
            host_ip,
            pod_ips: pod_ips.to_vec(),
            labels: labels.clone(),
            containers: SERVED
                .iter()
                .map(|pp| ContainerSpec {
                    name: format!("cont-{}", pp.slug()),
                    image: SERVE_IMAGE.to_string(),
                    ports: vec![(format!("serve-{}", pp.slug()), *pp)],
                })
                .collect(),
        }
    }

    /// The object as created (the API starts it `Pending`).
    fn manifest(&self) -> Value {
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let mut v = json!({ "name": c.name, "image": c.image });
                if !c.ports.is_empty() {
                    v["ports"] = c
                        .ports
                        .iter()
                        .map(|(name, pp)| {
                            json!({ "name": name, "containerPort": pp.port, "protocol": pp.proto.api_name() })
                        })
                        .collect();
                }
                v
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": self.name, "namespace": self.namespace, "labels": self.labels },
            "spec": { "nodeName": self.node, "containers": containers, "restartPolicy": "Always" }
        })
    }

    /// The status its kubelet reports once the sandbox runs: `Running`, ready, host and pod IPs,
    /// every container running.
    fn status(&self, start_time: &Value) -> Value {
        let now = now_rfc3339();
        let conditions = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        .map(|ty| json!({ "type": ty, "status": "True", "lastTransitionTime": now }));
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "imageID": "",
                    "containerID": format!("flannel-lab://{}/{}/{}", self.namespace, self.name, c.name),
                    "ready": true, "started": true, "restartCount": 0,
                    "state": { "running": { "startedAt": now } }
                })
            })
            .collect();
        json!({ "status": {
            "phase": "Running",
            "hostIP": self.host_ip.to_string(),
            "hostIPs": [{ "ip": self.host_ip.to_string() }],
            "podIP": self.pod_ips.first().map(IpAddr::to_string),
            "podIPs": self.pod_ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect::<Vec<_>>(),
            "startTime": start_time,
            "conditions": conditions,
            "containerStatuses": statuses
        } })
    }
}

impl KubeClient {
    /// Registers a pod as its kubelet would: created bound to its node, then its status
    /// (`Running`, ready, IPs) written through `pods/<name>/status`. Returns the final object.
    pub fn register_pod(&self, pod: &PodObject) -> Result<Value> {
        let created = self.expect_ok(
            "POST",
            &format!("/api/v1/namespaces/{}/pods", pod.namespace),
            "application/json",
            Some(&pod.manifest()),
        )?;
        self.expect_ok(
            "PATCH",
            &format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                pod.namespace, pod.name
            ),
            "application/strategic-merge-patch+json",
            Some(&pod.status(&created["metadata"]["creationTimestamp"])),
        )
    }

    /// Removes a pod's object (the kubelet's part after the sandbox is gone); one that is
    /// already gone (deleted with kubectl, or with its namespace) is fine.
    pub fn unregister_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        match self.request("DELETE", &path, "application/json", None)? {
            (200..=299 | 404, _) => Ok(()),
            (status, v) => Err(api_error("DELETE", &path, status, &v)),
        }
    }

    /// The Pod object `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Value> {
        self.expect_ok(
            "GET",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            "application/json",
            None,
        )
    }

    /// Sets (`Some`) or removes (`None`) pod labels with a merge patch, as `kubectl label`
    /// does; returns the patched object.
    pub fn patch_pod_labels(
        &self,
        namespace: &str,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Value> {
        self.expect_ok(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            "application/merge-patch+json",
            Some(&json!({ "metadata": { "labels": changes } })),
        )
    }

    /// Creates Namespace `name` unless it exists; the API labels it
    /// `kubernetes.io/metadata.name`. Returns whether it was created.
    pub fn ensure_namespace(&self, name: &str) -> Result<bool> {
        let path = format!("/api/v1/namespaces/{name}");
        match self.request("GET", &path, "application/json", None)? {
            (200, _) => return Ok(false),
            (404, _) => {}
            (status, v) => return Err(api_error("GET", &path, status, &v)),
        }
        let ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": { "kubernetes.io/metadata.name": name } }
        });
        match self.request("POST", "/api/v1/namespaces", "application/json", Some(&ns))? {
            // Created, or by a concurrent `pod add` in the same namespace.
            (200..=299, _) => Ok(true),
            (409, _) => Ok(false),
            (status, v) => Err(api_error("POST", "/api/v1/namespaces", status, &v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_pods_declare_the_e2e_model_ports() {
        let labels = BTreeMap::from([("pod".to_string(), "a".to_string())]);
        let p = PodObject::server_pod(
            "x",
            "a",
            "n1",
            "198.18.0.1".parse().unwrap(),
            &["10.244.0.2".parse().unwrap()],
            &labels,
        );
        let m = p.manifest();
        assert_eq!(m["metadata"]["labels"], json!({"pod": "a"}));
        assert_eq!(m["metadata"]["namespace"], "x");
        let names: Vec<&str> = m["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["cont-80-tcp", "cont-80-udp", "cont-81-tcp", "cont-81-udp"]
        );
        assert_eq!(
            m["spec"]["containers"][1]["ports"],
            json!([{"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"}])
        );
        let s = p.status(&json!("2025-01-01T00:00:00Z"));
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(s["status"]["podIP"], "10.244.0.2");
        assert_eq!(
            s["status"]["containerStatuses"].as_array().unwrap().len(),
            4
        );
    }

    #[test]
    fn lab_pods_keep_their_shape() {
        let p = PodObject::lab_pod("n1-p1", "n1", "198.18.0.1".parse().unwrap(), &[]);
        let m = p.manifest();
        assert_eq!(m["metadata"]["namespace"], "default");
        assert_eq!(m["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(
            m["spec"]["containers"],
            json!([{"name": "netns", "image": "flannel-lab/netns"}])
        );
    }
}
