//! The manifest's objects in the lab's API: what `kubectl apply -f kube-flannel.yml` leaves
//! there (the Namespace, the ConfigMap `kube-flannel-cfg`, the DaemonSet `kube-flannel-ds`, as
//! the manifest writes them) and the status the DaemonSet controller keeps on the DaemonSet
//! from its pods, so `kubectl get ds,pod,cm -n kube-flannel -o wide` against the lab prints
//! what it prints on a kubeadm cluster running the manifest.
//!
//! Only what the lab runs is created: the RBAC objects and the ServiceAccount have no kind in
//! the emulator (it does no authorization).

use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::kube::KubeEmu;
use crate::manifest::Manifest;

/// The objects the manifest's DaemonSet runs with, created as `kubectl apply` of the manifest
/// creates them: the namespace (an existing one gets the manifest's labels and annotations),
/// the ConfigMap with [`Manifest::config`] as its data, and the DaemonSet with the manifest's
/// pod template ([`Manifest::labels`], [`Manifest::pod_spec`]). Returns the DaemonSet as the
/// API stored it (its uid, generation and template generation are the API's).
pub(crate) fn apply(emu: &KubeEmu, m: &Manifest) -> Result<Value> {
    let ns = m.namespace_object.clone().unwrap_or_else(
        || json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": m.namespace } }),
    );
    let created = send(
        emu,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        &ns,
        &[409],
    )?;
    if created.is_null() {
        // Already there (the emulator starts with it): apply's patch adds the labels.
        let meta = json!({ "metadata": {
            "labels": ns["metadata"]["labels"],
            "annotations": ns["metadata"]["annotations"],
        } });
        send(
            emu,
            "PATCH",
            &format!("/api/v1/namespaces/{}", m.namespace),
            "application/merge-patch+json",
            &meta,
            &[],
        )?;
    }
    let mut cm = m.config_map.clone();
    cm["metadata"]["namespace"] = json!(m.namespace);
    cm["data"] = json!(m.config);
    send(
        emu,
        "POST",
        &format!("/api/v1/namespaces/{}/configmaps", m.namespace),
        "application/json",
        &cm,
        &[],
    )?;
    let mut ds = m.daemonset.clone();
    ds["metadata"]["namespace"] = json!(m.namespace);
    ds["spec"]["template"]["metadata"]["labels"] = m.labels.clone();
    ds["spec"]["template"]["spec"] = m.pod_spec.clone();
    send(
        emu,
        "POST",
        &daemonsets_path(&m.namespace),
        "application/json",
        &ds,
        &[],
    )
}

/// `/apis/apps/v1/namespaces/<ns>/daemonsets`.
fn daemonsets_path(namespace: &str) -> String {
    format!("/apis/apps/v1/namespaces/{namespace}/daemonsets")
}

/// The DaemonSet controller's status for `ds` with `pods` (the Pod objects it owns, as stored)
/// on a cluster of `nodes` nodes that all match its node selector.
pub(crate) fn status_of(ds: &Value, pods: &[&Value], nodes: usize) -> Value {
    let generation = crate::daemonset_pod::template_generation(ds);
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let updated = pods
        .iter()
        .filter(|p| {
            p.pointer("/metadata/labels/pod-template-generation")
                .and_then(Value::as_str)
                == Some(generation.as_str())
        })
        .count();
    json!({
        "desiredNumberScheduled": nodes,
        "currentNumberScheduled": pods.len(),
        "numberMisscheduled": 0,
        "numberReady": ready,
        // minReadySeconds 0: ready is available.
        "numberAvailable": ready,
        "numberUnavailable": nodes.saturating_sub(ready),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds["metadata"]["generation"],
    })
}

/// Writes `status` through `daemonsets/<name>/status`, as the controller does; returns the
/// stored DaemonSet.
pub(crate) fn report_status(emu: &KubeEmu, ds: &Value, status: Value) -> Result<Value> {
    let path = format!(
        "{}/{}/status",
        daemonsets_path(ds["metadata"]["namespace"].as_str().unwrap_or("default")),
        ds["metadata"]["name"].as_str().unwrap_or_default()
    );
    send(
        emu,
        "PATCH",
        &path,
        "application/merge-patch+json",
        &json!({ "status": status }),
        &[],
    )
}

/// Whether a Pod's `Ready` condition is `True`.
fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// One request; 2xx and the `tolerated` codes are fine (the body is returned, `Null` for a
/// tolerated error), anything else is an error with the API's message.
pub(crate) fn send(
    emu: &KubeEmu,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
    tolerated: &[u16],
) -> Result<Value> {
    match emu
        .client()
        .request(method, path, content_type, Some(body))?
    {
        (200..=299, v) => Ok(v),
        (code, _) if tolerated.contains(&code) => Ok(Value::Null),
        (code, v) => Err(LabError::Invalid(format!(
            "{method} {path} on the kube emulator: {code} {}",
            v.get("message").and_then(Value::as_str).unwrap_or("")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_ready_and_updated_pods() {
        let ds = json!({"metadata": {"generation": 3,
            "annotations": {"deprecated.daemonset.template.generation": "2"}}});
        let pod = |generation: &str, ready: &str| {
            json!({"metadata": {"labels": {"pod-template-generation": generation}},
                   "status": {"conditions": [{"type": "Ready", "status": ready}]}})
        };
        let (a, b) = (pod("2", "True"), pod("1", "False"));
        let st = status_of(&ds, &[&a, &b], 3);
        assert_eq!(
            st,
            json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 2,
                   "numberMisscheduled": 0, "numberReady": 1, "numberAvailable": 1,
                   "numberUnavailable": 2, "updatedNumberScheduled": 1,
                   "observedGeneration": 3})
        );
    }
}
