//! The DaemonSet's Pod objects in the API: what the DaemonSet controller creates for a node and
//! its kubelet reports about it, so flanneld finds its node through its pod (`POD_NAME`,
//! `POD_NAMESPACE`, no `NODE_NAME`, as under the real DaemonSet) and `kubectl get pods -n
//! kube-flannel -o wide` shows one pod per node as on a kubeadm cluster.
//!
//! The controller's part: a name generated from `kube-flannel-ds-` by the API, the pod
//! template's labels plus `controller-revision-hash` and `pod-template-generation`, an owner
//! reference to the DaemonSet (`controller: true`), the node affinity that binds it to its node
//! and the tolerations every DaemonSet pod gets. The kubelet's part: `Init:0/N` while the init
//! containers run, then `Running` with flanneld's container ready (or not, once it stopped),
//! host IP = pod IP = the node's address (host network).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::daemonset_api::send;
use crate::error::{LabError, Result};
use crate::kube::{KubeEmu, now_rfc3339};
use crate::manifest::{Container, Manifest};

/// The characters Kubernetes draws generated names and hashes from (no vowels, no look-alikes:
/// `rand.SafeEncodeString`'s alphabet).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The DaemonSet annotation holding its template generation (set by the API), which the
/// controller copies into its pods' `pod-template-generation` label.
const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// What node `i`'s kubelet reports about the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PodState {
    /// The sandbox is up, the init containers have not completed yet.
    Initializing,
    /// flanneld's container runs and is ready; `restarts` earlier runs ended.
    Running {
        /// The container's restart count.
        restarts: u32,
    },
    /// flanneld's container ended with `exit_code` and was not started again (yet).
    Stopped {
        /// The container's restart count.
        restarts: u32,
        /// How it ended (137 for SIGKILL).
        exit_code: i32,
    },
}

/// Schedules node `node`'s pod of the DaemonSet `ds` (as stored by the API) and returns it as
/// the API stores it once its kubelet reported the sandbox: `Init:0/N`, bound to the node, host
/// IP = pod IP = `ip`.
pub fn register(
    emu: &KubeEmu,
    m: &Manifest,
    ds: &Value,
    node: &str,
    ip: Ipv4Addr,
) -> Result<Value> {
    let pod = pod_object(m, ds, node);
    let path = format!("/api/v1/namespaces/{}/pods", m.namespace);
    let stored = send(emu, "POST", &path, "application/json", &pod, &[])?;
    let now = now_rfc3339();
    let ip = ip.to_string();
    let status = json!({ "status": {
        "hostIP": ip,
        "hostIPs": [{ "ip": ip }],
        "podIP": ip,
        "podIPs": [{ "ip": ip }],
        "startTime": stored["metadata"]["creationTimestamp"],
    } });
    let name = stored["metadata"]["name"].as_str().unwrap_or_default();
    send(
        emu,
        "PATCH",
        &format!("{path}/{name}/status"),
        "application/merge-patch+json",
        &status,
        &[],
    )?;
    report(emu, m, &stored, PodState::Initializing, &now)
}

/// Reports `state` for `pod` through `pods/<name>/status`, as its kubelet does; returns the
/// stored Pod.
pub(crate) fn report(
    emu: &KubeEmu,
    m: &Manifest,
    pod: &Value,
    state: PodState,
    now: &str,
) -> Result<Value> {
    let initialized = state != PodState::Initializing;
    let (ready, running) = match state {
        PodState::Running { .. } => (true, true),
        _ => (false, false),
    };
    let condition = |t: &str, ok: bool| json!({ "type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now });
    let conditions = vec![
        condition("PodReadyToStartContainers", true),
        condition("Initialized", initialized),
        condition("Ready", ready),
        condition("ContainersReady", ready),
        condition("PodScheduled", true),
    ];
    let init: Vec<Value> = m
        .init_containers
        .iter()
        .map(|c| {
            let mut s = container_status(c, 0);
            s["ready"] = json!(initialized);
            s["state"] = if initialized {
                json!({ "terminated": { "exitCode": 0, "reason": "Completed", "finishedAt": now } })
            } else {
                json!({ "waiting": { "reason": "PodInitializing" } })
            };
            s
        })
        .collect();
    let main: Vec<Value> = m
        .containers
        .iter()
        .map(|c| {
            let restarts = match state {
                PodState::Running { restarts } | PodState::Stopped { restarts, .. } => restarts,
                PodState::Initializing => 0,
            };
            let mut s = container_status(c, restarts);
            s["ready"] = json!(ready);
            s["started"] = json!(running);
            s["state"] = match state {
                PodState::Initializing => json!({ "waiting": { "reason": "PodInitializing" } }),
                PodState::Running { .. } => json!({ "running": { "startedAt": now } }),
                PodState::Stopped { exit_code, .. } => json!({ "terminated": {
                    "exitCode": exit_code,
                    "reason": if exit_code == 0 { "Completed" } else { "Error" },
                    "finishedAt": now
                } }),
            };
            s
        })
        .collect();
    let status = json!({ "status": {
        "phase": if initialized { "Running" } else { "Pending" },
        "conditions": conditions,
        "initContainerStatuses": init,
        "containerStatuses": main,
    } });
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    send(
        emu,
        "PATCH",
        &format!("/api/v1/namespaces/{}/pods/{name}/status", m.namespace),
        "application/merge-patch+json",
        &status,
        &[],
    )
}

/// A container's status entry before its state: name, image, restart count.
fn container_status(c: &Container, restarts: u32) -> Value {
    json!({ "name": c.name, "image": c.image, "imageID": "", "restartCount": restarts })
}

/// The template generation of `ds` as the API counts it (its annotation; `"1"` without one).
pub(crate) fn template_generation(ds: &Value) -> String {
    ds.pointer("/metadata/annotations")
        .and_then(|a| a.get(TEMPLATE_GENERATION))
        .and_then(Value::as_str)
        .unwrap_or("1")
        .to_string()
}

/// The Pod the DaemonSet controller creates for `node` from `ds` (as stored by the API): the
/// manifest's pod template, a generated name, the controller's labels, owner reference, node
/// affinity and tolerations; the scheduler's `nodeName`.
fn pod_object(m: &Manifest, ds: &Value, node: &str) -> Value {
    let mut spec = m.pod_spec.clone();
    spec["nodeName"] = json!(node);
    // The controller pins the pod to its node with an affinity (the scheduler then binds it).
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{ "matchFields": [
            { "key": "metadata.name", "operator": "In", "values": [node] }
        ] }]
    });
    add_daemon_tolerations(&mut spec);
    let mut labels = m.labels.clone();
    let template = json!({ "metadata": { "labels": m.labels }, "spec": m.pod_spec });
    labels["controller-revision-hash"] = json!(controller_revision_hash(&template));
    labels["pod-template-generation"] = json!(template_generation(ds));
    let name = ds["metadata"]["name"].as_str().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{name}-"),
            "namespace": m.namespace,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": name,
                "uid": ds["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": spec,
    })
}

/// The tolerations the DaemonSet controller adds to every pod it creates
/// (`AddOrUpdateDaemonPodTolerations`; `network-unavailable` for host-network pods), unless
/// the template has the same one already.
fn add_daemon_tolerations(spec: &mut Value) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec["hostNetwork"] == true {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    if !spec["tolerations"].is_array() {
        spec["tolerations"] = json!([]);
    }
    let Some(list) = spec["tolerations"].as_array_mut() else {
        return;
    };
    for (key, effect) in wanted {
        let t = json!({ "key": key, "operator": "Exists", "effect": effect });
        if !list.contains(&t) {
            list.push(t);
        }
    }
}

/// The `controller-revision-hash` label of the template's ControllerRevision: the FNV-32a hash
/// of the template, written with [`NAME_ALPHABET`] as `rand.SafeEncodeString` writes it (the
/// controller hashes the Go object; the lab hashes its JSON, so the value has the form but not
/// the digits of a cluster's).
fn controller_revision_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|d| char::from(NAME_ALPHABET[usize::from(d) % NAME_ALPHABET.len()]))
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

    fn ds() -> Value {
        json!({"metadata": {"name": "kube-flannel-ds", "uid": "u-1",
                            "annotations": {TEMPLATE_GENERATION: "3"}}})
    }

    #[test]
    fn pods_are_the_controllers() {
        let m = Manifest::repo().unwrap();
        let pod = pod_object(&m, &ds(), "n2");
        assert_eq!(pod["metadata"]["generateName"], "kube-flannel-ds-");
        assert!(pod["metadata"].get("name").is_none(), "the API names it");
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["app"], "flannel");
        assert_eq!(labels["pod-template-generation"], "3");
        let hash = labels["controller-revision-hash"].as_str().unwrap();
        assert!(
            !hash.is_empty() && hash.bytes().all(|c| NAME_ALPHABET.contains(&c)),
            "{hash}"
        );
        let mut other = m.clone();
        other.pod_spec["containers"][0]["image"] = json!("other:1");
        assert_ne!(
            pod_object(&other, &ds(), "n2")["metadata"]["labels"]["controller-revision-hash"],
            labels["controller-revision-hash"],
            "another template, another revision"
        );
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"], &owner["controller"]),
            (&json!("DaemonSet"), &json!("u-1"), &json!(true))
        );
        assert_eq!(pod["spec"]["nodeName"], "n2");
        assert_eq!(pod["spec"]["hostNetwork"], true);
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert!(tolerations.contains(
            &json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"})
        ));
        assert_eq!(
            pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"],
            json!(["n2"])
        );
    }

    #[test]
    fn field_refs_resolve_from_the_pod() {
        let m = Manifest::repo().unwrap();
        let mut pod = pod_object(&m, &ds(), "n2");
        pod["metadata"]["name"] = json!("kube-flannel-ds-bcd42");
        pod["status"]["podIP"] = json!("198.18.0.2");
        assert_eq!(field_value(&pod, "spec.nodeName").unwrap(), "n2");
        assert_eq!(
            field_value(&pod, "metadata.namespace").unwrap(),
            "kube-flannel"
        );
        assert_eq!(field_value(&pod, "status.podIP").unwrap(), "198.18.0.2");
        assert_eq!(
            field_value(&pod, "metadata.name").unwrap(),
            "kube-flannel-ds-bcd42"
        );
        assert!(field_value(&pod, "metadata.nope").is_err());
    }
}
