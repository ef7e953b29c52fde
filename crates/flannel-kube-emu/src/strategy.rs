//! What the API server does to an object of each kind on create and update (its "strategies"
//! and validation), reduced to the rules a client can observe: defaulting that clients read
//! back, the subresource split between `spec` and `status`, and the validation errors clients
//! are written to expect.
//!
//! * **Node**: `spec.podCIDR`/`spec.podCIDRs` kept in sync and validated; podCIDR may only go
//!   from empty to set. The status sent with a create is kept (the kubelet registers its node
//!   with addresses, conditions and nodeInfo).
//! * **Pod**: a create drops the status it was sent and starts the pod `Pending` with its QoS
//!   class (the kubelet reports the rest through `pods/<name>/status`); an update of the main
//!   resource may change metadata, container images, `activeDeadlineSeconds` and add
//!   tolerations, nothing else of the spec.
//! * **Namespace**: created `Active`, with the `kubernetes` finalizer and the immutable
//!   `kubernetes.io/metadata.name` label; `default`, `kube-system` and `kube-public` cannot be
//!   deleted.
//! * **ConfigMap** and **DaemonSet**: see [`crate::configmap`] and [`crate::daemonset`].
//! * Names: namespaces must be RFC 1123 labels, the other kinds' RFC 1123 subdomains.

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::store::{Kind, Subresource};

/// The namespaces a kubeadm cluster starts with, plus `kube-flannel` (what applying the
/// kube-flannel manifest or chart creates first), present from the emulator's first moment.
pub const INITIAL_NAMESPACES: [&str; 5] = [
    "default",
    "kube-flannel",
    "kube-node-lease",
    "kube-public",
    "kube-system",
];

/// Namespaces the `NamespaceLifecycle` admission plugin refuses to delete.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-public", "kube-system"];

/// The label the API server sets on every namespace to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

const DNS1123_LABEL_ERROR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_ERROR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Whether `s` is an RFC 1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters).
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain (dot-separated labels, at most 253 characters).
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// Validates the name of a new object as the API server does for its kind.
pub fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(
            kind.name(),
            "",
            "metadata.name: Required value: name or generateName is required",
        ));
    }
    let (ok, why) = match kind {
        Kind::Namespace => (dns_label(name), DNS1123_LABEL_ERROR),
        Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::Role | Kind::RoleBinding => {
            match crate::rbac::objects::path_segment_problem(name) {
                None => (true, ""),
                Some(why) => (false, why),
            }
        }
        _ => (dns_subdomain(name), DNS1123_SUBDOMAIN_ERROR),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            kind.name(),
            name,
            format!("metadata.name: Invalid value: {name:?}: {why}"),
        ))
    }
}

/// A namespace as the API server stores it after a create (also used to seed
/// [`INITIAL_NAMESPACES`]).
pub fn namespace_object(name: &str) -> Value {
    let mut ns = json!({ "metadata": { "name": name } });
    default_namespace(&mut ns, name);
    ns
}

fn default_namespace(obj: &mut Value, name: &str) {
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"][NAMESPACE_NAME_LABEL] = json!(name);
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let mut finalizers: Vec<Value> = obj["spec"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == "kubernetes") {
        finalizers.push(json!("kubernetes"));
    }
    obj["spec"]["finalizers"] = json!(finalizers);
    obj["status"] = json!({ "phase": "Active" });
}

/// Defaulting and validation of a new object (`POST`).
pub fn prepare_create(kind: Kind, name: &str, obj: &mut Value) -> Result<(), ApiError> {
    validate_name(kind, name)?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Value::Object(m) = &mut obj["metadata"] {
        // The server's: set below for the kinds that track it.
        m.remove("generation");
    }
    match kind {
        Kind::Node => normalize_node(name, obj),
        Kind::Pod => {
            let qos = qos_class(obj);
            obj["status"] = json!({ "phase": "Pending", "qosClass": qos });
            Ok(())
        }
        Kind::Namespace => {
            default_namespace(obj, name);
            Ok(())
        }
        Kind::ConfigMap => crate::configmap::validate(name, obj),
        Kind::DaemonSet => crate::daemonset::prepare_create(name, obj),
        Kind::NetworkPolicy => crate::networkpolicy::prepare_create(name, obj),
        Kind::ServiceAccount => Ok(()),
        Kind::ClusterRole | Kind::Role => crate::rbac::objects::validate_role(kind, name, obj),
        Kind::ClusterRoleBinding | Kind::RoleBinding => {
            crate::rbac::objects::validate_binding(kind, name, obj)
        }
    }
}

/// The update strategy: keeps the half of the object the subresource does not own, applies
/// the kind's immutability rules (`validate` false skips them, for test hooks).
pub fn prepare_update(
    kind: Kind,
    name: &str,
    old: &Value,
    new: &mut Value,
    sub: Subresource,
    validate: bool,
) -> Result<(), ApiError> {
    match sub {
        Subresource::Main => new["status"] = old["status"].clone(),
        Subresource::Status => new["spec"] = old["spec"].clone(),
    }
    if new["status"].is_null()
        && let Value::Object(m) = new
    {
        m.remove("status");
    }
    match kind {
        Kind::Node if validate => {
            normalize_node(name, new)?;
            let (old_cidr, old_list) = pod_cidrs(old);
            let (new_cidr, new_list) = pod_cidrs(new);
            if !old_cidr.is_empty() && (old_cidr != new_cidr || old_list != new_list) {
                return Err(ApiError::invalid(
                    "Node",
                    name,
                    "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
                ));
            }
            Ok(())
        }
        Kind::Node => Ok(()),
        Kind::Pod => validate_pod_spec_update(name, old, new),
        Kind::ConfigMap => crate::configmap::validate_update(name, old, new),
        Kind::DaemonSet => crate::daemonset::prepare_update(name, old, new, sub),
        Kind::NetworkPolicy => crate::networkpolicy::prepare_update(name, old, new),
        Kind::ServiceAccount => Ok(()),
        Kind::ClusterRole | Kind::Role => crate::rbac::objects::validate_role(kind, name, new),
        Kind::ClusterRoleBinding | Kind::RoleBinding => {
            crate::rbac::objects::validate_binding_update(kind, name, old, new)
        }
        Kind::Namespace => {
            // Finalizers change only through `namespaces/<n>/finalize`.
            new["spec"] = old["spec"].clone();
            if !new["metadata"]["labels"].is_object() {
                new["metadata"]["labels"] = json!({});
            }
            new["metadata"]["labels"][NAMESPACE_NAME_LABEL] = json!(name);
            Ok(())
        }
    }
}

/// Reads `spec.podCIDR` / `spec.podCIDRs`.
pub fn pod_cidrs(obj: &Value) -> (String, Vec<String>) {
    let single = obj
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let list = obj
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    (single, list)
}

/// Whether `s` is a CIDR as Go's `net.ParseCIDR` accepts it (address/prefix within the family).
fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    !len.is_empty()
        && len.len() <= 3
        && len.bytes().all(|b| b.is_ascii_digit())
        && len.parse::<u32>().is_ok_and(|l| l <= max)
}

/// Defaulting and validation of a Node's pod CIDRs, as the API server does them:
/// `podCIDR` and `podCIDRs[0]` are kept in sync, each must be a CIDR, at most two, and
/// two must be of different families.
fn normalize_node(name: &str, obj: &mut Value) -> Result<(), ApiError> {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let (single, mut list) = pod_cidrs(obj);
    if list.is_empty() && !single.is_empty() {
        list.push(single.clone());
    }
    if !single.is_empty() && list.first() != Some(&single) {
        return Err(ApiError::invalid(
            "Node",
            name,
            format!(
                "spec.podCIDRs: Invalid value: {list:?}: must match spec.podCIDR {single:?} at index 0"
            ),
        ));
    }
    for (i, c) in list.iter().enumerate() {
        if !valid_cidr(c) {
            return Err(ApiError::invalid(
                "Node",
                name,
                format!("spec.podCIDRs[{i}]: Invalid value: {c:?}: must be a valid CIDR"),
            ));
        }
    }
    if list.len() > 2 {
        return Err(ApiError::invalid(
            "Node",
            name,
            format!(
                "spec.podCIDRs: Too many: {}: must have at most 2 items",
                list.len()
            ),
        ));
    }
    if list.len() == 2 && list[0].contains(':') == list[1].contains(':') {
        return Err(ApiError::invalid(
            "Node",
            name,
            "spec.podCIDRs: Invalid value: may specify no more than one CIDR for each IP family",
        ));
    }
    if let Some(first) = list.first() {
        obj["spec"]["podCIDR"] = json!(first);
        obj["spec"]["podCIDRs"] = json!(list);
    }
    Ok(())
}

/// The pod's QoS class from its containers' requests and limits (`qos.GetPodQOS`, for cpu and
/// memory): no requests or limits anywhere is `BestEffort`; limits equal to requests for both
/// in every container is `Guaranteed`; anything else `Burstable`.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod["spec"][*k].as_array())
        .flatten()
        .collect();
    let res = |c: &Value, kind: &str, r: &str| c["resources"][kind][r].as_str().map(str::to_string);
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        for r in ["cpu", "memory"] {
            let (req, lim) = (res(c, "requests", r), res(c, "limits", r));
            any |= req.is_some() || lim.is_some();
            // Requests default to limits; a limit is needed for Guaranteed.
            guaranteed &= lim.is_some() && req.as_ref().is_none_or(|q| Some(q) == lim.as_ref());
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// `ValidatePodUpdate`, for the spec: only container images, `activeDeadlineSeconds` and
/// additional tolerations may change.
fn validate_pod_spec_update(name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(items) = s[list].as_array_mut() {
                for c in items {
                    if let Value::Object(m) = c {
                        m.remove("image");
                    }
                }
            }
        }
        if let Value::Object(m) = &mut s {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        s
    };
    let old_tol = old["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_tol = new["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if strip(&old["spec"]) == strip(&new["spec"]) && old_tol.iter().all(|t| new_tol.contains(t)) {
        return Ok(());
    }
    Err(ApiError::invalid(
        "Pod",
        name,
        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label("kube-flannel") && dns_label("a1"));
        assert!(!dns_label("Kube") && !dns_label("-a") && !dns_label("a.b"));
        assert!(dns_subdomain("node-1.example.com") && !dns_subdomain("a..b"));
        let e = validate_name(Kind::Namespace, "Bad").unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .starts_with("Namespace \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": a lowercase RFC 1123 label"),
            "{}",
            e.message
        );
        assert!(validate_name(Kind::Pod, "n1-p1").is_ok());
    }

    #[test]
    fn pods_start_pending_with_their_qos_class() {
        let mut p = json!({"metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]},
                           "status":{"phase":"Running","podIP":"10.0.0.1"}});
        prepare_create(Kind::Pod, "p", &mut p).unwrap();
        assert_eq!(
            p["status"],
            json!({"phase":"Pending","qosClass":"BestEffort"})
        );
        let limits = json!({"cpu":"1","memory":"1Gi"});
        let g = json!({"spec":{"containers":[{"resources":{"limits":limits}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec":{"containers":[{"resources":{"requests":{"cpu":"1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn pod_spec_updates_are_restricted() {
        let old = json!({"spec":{"nodeName":"n1","containers":[{"name":"c","image":"a"}]}});
        let mut new = json!({"spec":{"nodeName":"n1","containers":[{"name":"c","image":"b"}]},
                             "status":{"phase":"Failed"}});
        prepare_update(Kind::Pod, "p", &old, &mut new, Subresource::Main, true).unwrap();
        assert!(
            new.get("status").is_none(),
            "status is kept from the old object"
        );
        let mut moved = json!({"spec":{"nodeName":"n2","containers":[{"name":"c","image":"a"}]}});
        let e = prepare_update(Kind::Pod, "p", &old, &mut moved, Subresource::Main, true);
        assert_eq!(e.unwrap_err().code, 422);
        // Through /status the spec is ignored, so the same body is fine.
        let mut st = json!({"spec":{"nodeName":"n2"},"status":{"phase":"Running"}});
        prepare_update(Kind::Pod, "p", &old, &mut st, Subresource::Status, true).unwrap();
        assert_eq!(st["spec"]["nodeName"], "n1");
        assert_eq!(st["status"]["phase"], "Running");
    }

    #[test]
    fn namespaces_are_defaulted() {
        let ns = namespace_object("kube-flannel");
        assert_eq!(
            ns,
            json!({"metadata":{"name":"kube-flannel","labels":{"kubernetes.io/metadata.name":"kube-flannel"}},
                   "spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}})
        );
        let mut renamed =
            json!({"metadata":{"name":"x","labels":{"kubernetes.io/metadata.name":"y"}}});
        prepare_update(
            Kind::Namespace,
            "x",
            &ns,
            &mut renamed,
            Subresource::Main,
            true,
        )
        .unwrap();
        assert_eq!(renamed["metadata"]["labels"][NAMESPACE_NAME_LABEL], "x");
        assert_eq!(renamed["status"]["phase"], "Active");
    }
}
