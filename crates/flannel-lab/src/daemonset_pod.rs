//! The DaemonSet's Pod objects in the API: what the DaemonSet controller creates for a node and
//! its kubelet reports about it, so flanneld finds its node through its pod (`POD_NAME`,
//! `POD_NAMESPACE`, no `NODE_NAME`, as under the real DaemonSet) and `kubectl get pods -n
//! kube-flannel -o wide` shows one running pod per node.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::kube::KubeEmu;
use crate::manifest::{DAEMONSET, Manifest};

/// The characters Kubernetes draws generated name suffixes from (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Registers node `node`'s pod of the DaemonSet and returns it as the API stores it: the
/// manifest's namespace first (as `kubectl apply` of the manifest creates it), then the Pod
/// bound to the node, then its status (running, host network: pod IP = node IP).
///
/// An API that keeps the status sent with a create and has no namespaces or status writes for
/// pods (404) is fine too: the create then carried everything.
pub fn register(emu: &KubeEmu, m: &Manifest, node: &str, ip: Ipv4Addr) -> Result<Value> {
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": m.namespace }
    });
    send(
        emu,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        &namespace,
        &[404, 409],
    )?;
    let pod = pod_object(m, node, ip);
    let path = format!("/api/v1/namespaces/{}/pods", m.namespace);
    let stored = send(emu, "POST", &path, "application/json", &pod, &[])?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let patched = send(
        emu,
        "PATCH",
        &format!("{path}/{name}/status"),
        "application/strategic-merge-patch+json",
        &json!({ "status": pod["status"] }),
        &[404],
    )?;
    Ok(if patched.get("metadata").is_some() {
        patched
    } else {
        stored
    })
}

/// One request; 2xx and the `tolerated` codes are fine (the body is returned, `Null` for a
/// tolerated error), anything else is an error with the API's message.
fn send(
    emu: &KubeEmu,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
    tolerated: &[u16],
) -> Result<Value> {
    match emu.request(method, path, content_type, Some(body))? {
        (200..=299, v) => Ok(v),
        (code, _) if tolerated.contains(&code) => Ok(Value::Null),
        (code, v) => Err(LabError::Invalid(format!(
            "{method} {path} on the kube emulator: {code} {}",
            v.get("message").and_then(Value::as_str).unwrap_or("")
        ))),
    }
}

/// The Pod the DaemonSet controller would create for `node`, with the status its kubelet
/// reports once the init containers completed and flanneld runs.
fn pod_object(m: &Manifest, node: &str, ip: Ipv4Addr) -> Value {
    let mut spec = m.pod_spec.clone();
    spec["nodeName"] = json!(node);
    let ip = ip.to_string();
    let started = |c: &crate::manifest::Container| json!({"name": c.name, "image": c.image});
    let init: Vec<Value> = m
        .init_containers
        .iter()
        .map(|c| {
            let mut s = started(c);
            s["ready"] = json!(true);
            s["state"] = json!({ "terminated": { "exitCode": 0, "reason": "Completed" } });
            s
        })
        .collect();
    let running: Vec<Value> = m
        .containers
        .iter()
        .map(|c| {
            let mut s = started(c);
            s["ready"] = json!(true);
            s["started"] = json!(true);
            s["restartCount"] = json!(0);
            s["state"] = json!({ "running": {} });
            s
        })
        .collect();
    let conditions: Vec<Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .into_iter()
        .map(|t| json!({ "type": t, "status": "True" }))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{DAEMONSET}-{}", name_suffix(node)),
            "namespace": m.namespace,
            "labels": m.labels,
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "hostIP": ip,
            "hostIPs": [{ "ip": ip }],
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "conditions": conditions,
            "initContainerStatuses": init,
            "containerStatuses": running,
        }
    })
}

/// Five characters from [`NAME_ALPHABET`], fixed per node name (FNV-1a), standing for the
/// random suffix of a generated pod name.
fn name_suffix(node: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let base = NAME_ALPHABET.len() as u64;
    (0..5)
        .map(|_| {
            let c = NAME_ALPHABET[(h % base) as usize];
            h /= base;
            char::from(c)
        })
        .collect()
}

/// The value of a `fieldRef` path (`metadata.name`, `spec.nodeName`, `status.podIP`) in `pod`.
pub fn field_value(pod: &Value, path: &str) -> Result<String> {
    let pointer = format!("/{}", path.replace('.', "/"));
    match pod.pointer(&pointer) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        _ => Err(LabError::Invalid(format!(
            "fieldRef {path}: the pod has no such field"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_look_generated_and_differ_per_node() {
        let a = name_suffix("n1");
        let b = name_suffix("n2");
        assert_eq!(a.len(), 5);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| NAME_ALPHABET.contains(&c)));
        assert_eq!(a, name_suffix("n1"));
    }

    #[test]
    fn field_refs_resolve_from_the_pod() {
        let m = Manifest::repo().unwrap();
        let pod = pod_object(&m, "n2", Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(field_value(&pod, "spec.nodeName").unwrap(), "n2");
        assert_eq!(
            field_value(&pod, "metadata.namespace").unwrap(),
            "kube-flannel"
        );
        assert_eq!(field_value(&pod, "status.podIP").unwrap(), "198.18.0.2");
        assert!(
            field_value(&pod, "metadata.name")
                .unwrap()
                .starts_with("kube-flannel-ds-")
        );
        assert!(field_value(&pod, "metadata.nope").is_err());
        assert_eq!(pod["spec"]["hostNetwork"], json!(true));
    }
}
