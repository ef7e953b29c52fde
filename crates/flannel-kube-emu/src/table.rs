//! Server-side printing: `meta.k8s.io/v1 Table` for every kind served, the columns and cells the
//! API server's printers produce (`pkg/printers/internalversion`).
//!
//! kubectl asks for a Table in its `Accept` header for every human-readable `get` and prints
//! what it receives; if a server answers with a plain list instead, kubectl falls back to
//! NAME and AGE only. So `kubectl get pods -o wide` shows READY, STATUS, RESTARTS, IP and NODE
//! only when the server fills them in, as here. The server always renders the wide columns
//! (priority 1); kubectl hides them unless `-o wide`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::selector::label_selector_string;
use crate::status::ApiError;
use crate::store::{Kind, parse_rfc3339};

/// What a row's `object` holds (`includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// `None`: no object.
    None,
    /// `Metadata` (the default): a `PartialObjectMetadata` with the object's metadata, which
    /// kubectl reads for `-A` (the NAMESPACE column) and `--show-labels`.
    Metadata,
    /// `Object`: the whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter.
    pub fn parse(value: Option<&str>) -> Result<IncludeObject, ApiError> {
        match value {
            None | Some("" | "Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(ApiError::bad_request(format!(
                "unrecognized includeObject value: {other:?}"
            ))),
        }
    }
}

/// How to render a Table: its `apiVersion` (`meta.k8s.io/v1` or `v1beta1`, as negotiated),
/// the row objects, and whether column definitions are sent (a watch sends them only with its
/// first event, as the API server does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOptions {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    pub api_version: &'static str,
    /// `includeObject`.
    pub include: IncludeObject,
    /// Leave `columnDefinitions` out (`null`).
    pub no_headers: bool,
}

fn column(name: &str, ty: &str, priority: u8, description: &str) -> Value {
    json!({
        "name": name,
        "type": ty,
        "format": if name == "Name" { "name" } else { "" },
        "description": description,
        "priority": priority,
    })
}

const NAME_DOC: &str =
    "Name must be unique within a namespace (for cluster-scoped objects, within the cluster).";
const AGE_DOC: &str = "CreationTimestamp is when the server created the object, in UTC.";

fn columns(kind: Kind) -> Vec<Value> {
    match kind {
        Kind::Pod => vec![
            column("Name", "string", 0, NAME_DOC),
            column(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            column(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            column("Age", "string", 0, AGE_DOC),
            column(
                "IP",
                "string",
                1,
                "The IP address allocated to the pod (the first of status.podIPs).",
            ),
            column(
                "Node",
                "string",
                1,
                "The node the pod is bound to (spec.nodeName).",
            ),
            column(
                "Nominated Node",
                "string",
                1,
                "The node the scheduler nominated for preemption (status.nominatedNodeName).",
            ),
            column(
                "Readiness Gates",
                "string",
                1,
                "How many of the pod's readiness gates are true.",
            ),
        ],
        Kind::Node => vec![
            column("Name", "string", 0, NAME_DOC),
            column("Status", "string", 0, "The status of the node"),
            column("Roles", "string", 0, "The roles of the node"),
            column("Age", "string", 0, AGE_DOC),
            column(
                "Version",
                "string",
                0,
                "The kubelet version reported by the node.",
            ),
            column(
                "Internal-IP",
                "string",
                1,
                "The node's first InternalIP address.",
            ),
            column(
                "External-IP",
                "string",
                1,
                "The node's first ExternalIP address.",
            ),
            column(
                "OS-Image",
                "string",
                1,
                "The OS image reported by the node (/etc/os-release).",
            ),
            column(
                "Kernel-Version",
                "string",
                1,
                "The kernel version reported by the node (uname -r).",
            ),
            column(
                "Container-Runtime",
                "string",
                1,
                "The container runtime reported by the node (runtime://version).",
            ),
        ],
        Kind::Namespace => vec![
            column("Name", "string", 0, NAME_DOC),
            column("Status", "string", 0, "The status of the namespace"),
            column("Age", "string", 0, AGE_DOC),
        ],
        Kind::ConfigMap => vec![
            column("Name", "string", 0, NAME_DOC),
            column(
                "Data",
                "string",
                0,
                "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'.",
            ),
            column("Age", "string", 0, AGE_DOC),
        ],
        Kind::DaemonSet => daemonset_columns(),
        Kind::NetworkPolicy => vec![
            column("Name", "string", 0, NAME_DOC),
            column(
                "Pod-Selector",
                "string",
                0,
                "podSelector selects the pods to which this NetworkPolicy object applies. The array of rules is applied to any pods selected by this field. An empty selector matches all pods in the policy's namespace. Multiple network policies can select the same set of pods. In this case, the ingress rules for each are combined additively. This field is optional. If it is not specified, it defaults to an empty selector.",
            ),
            column("Age", "string", 0, AGE_DOC),
        ],
        Kind::ServiceAccount => vec![
            column("Name", "string", 0, NAME_DOC),
            column(
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            column("Age", "string", 0, AGE_DOC),
        ],
        Kind::ClusterRole | Kind::Role => role_columns(),
        Kind::ClusterRoleBinding => binding_columns("clusterRoleBinding"),
        Kind::RoleBinding => binding_columns("roleBinding"),
    }
}

/// `kubectl get clusterroles|roles`: NAME, CREATED AT.
fn role_columns() -> Vec<Value> {
    vec![
        column("Name", "string", 0, NAME_DOC),
        column("Created At", "date", 0, AGE_DOC),
    ]
}

/// `kubectl get clusterrolebindings|rolebindings`: NAME, ROLE, AGE (`-o wide`: USERS,
/// GROUPS, SERVICEACCOUNTS).
fn binding_columns(what: &str) -> Vec<Value> {
    vec![
        column("Name", "string", 0, NAME_DOC),
        column(
            "Role",
            "string",
            0,
            "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error.",
        ),
        column("Age", "string", 0, AGE_DOC),
        column("Users", "string", 1, &format!("Users in the {what}")),
        column("Groups", "string", 1, &format!("Groups in the {what}")),
        column(
            "ServiceAccounts",
            "string",
            1,
            &format!("ServiceAccounts in the {what}"),
        ),
    ]
}

/// A binding's cells: its role as `Kind/name`, and the subjects by kind (service accounts as
/// `namespace/name`), joined by `, ` as the API server's printer joins them.
fn binding_cells(obj: &Value) -> Vec<Value> {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let mut accounts = Vec::new();
    for subject in obj["subjects"].as_array().into_iter().flatten() {
        let name = text(subject, "/name");
        match text(subject, "/kind") {
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            "ServiceAccount" => {
                accounts.push(format!("{}/{name}", text(subject, "/namespace")));
            }
            _ => {}
        }
    }
    vec![
        json!(text(obj, "/metadata/name")),
        json!(format!(
            "{}/{}",
            text(obj, "/roleRef/kind"),
            text(obj, "/roleRef/name")
        )),
        json!(age(creation(obj))),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(accounts.join(", ")),
    ]
}

fn daemonset_columns() -> Vec<Value> {
    vec![
        column("Name", "string", 0, NAME_DOC),
        column(
            "Desired",
            "integer",
            0,
            "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
        ),
        column(
            "Current",
            "integer",
            0,
            "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        ),
        column(
            "Ready",
            "integer",
            0,
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
        ),
        column(
            "Up-to-date",
            "integer",
            0,
            "The total number of nodes that are running updated daemon pod",
        ),
        column(
            "Available",
            "integer",
            0,
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        ),
        column(
            "Node Selector",
            "string",
            0,
            "NodeSelector is a selector which must be true for the pod to fit on a node.",
        ),
        column("Age", "string", 0, AGE_DOC),
        column(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        ),
        column(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        ),
        column(
            "Selector",
            "string",
            1,
            "A label query over pods that are managed by the daemon set.",
        ),
    ]
}

/// `duration.HumanDuration`: the AGE format (`45s`, `5m12s`, `3h10m`, `4d2h`, ...).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let years = hours / 24 / 365;
        return match (hours / 24) % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `translateTimestampSince`: the age of an RFC 3339 timestamp, `<unknown>` when absent.
fn age(timestamp: Option<&str>) -> String {
    let Some(t) = timestamp.and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    human_duration(now - t)
}

fn text<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: &str, none: &str) -> String {
    if s.is_empty() {
        none.to_string()
    } else {
        s.to_string()
    }
}

fn creation(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
}

fn node_cells(node: &Value) -> Vec<Value> {
    let conditions = node["status"]["conditions"].as_array();
    let ready = conditions.and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let mut status = vec![match ready {
        Some(c) if c["status"] == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    }];
    if node["spec"]["unschedulable"] == true {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = node["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) if !role.is_empty() => Some(role.to_string()),
            _ if k == "kubernetes.io/role" => {
                v.as_str().filter(|r| !r.is_empty()).map(String::from)
            }
            _ => None,
        })
        .collect();
    roles.sort();
    roles.dedup();
    let address = |ty: &str| {
        node["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["type"] == ty))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = |k: &str| or_none(text(node, &format!("/status/nodeInfo/{k}")), "<unknown>");
    vec![
        json!(text(node, "/metadata/name")),
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(age(creation(node))),
        json!(text(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// A container status's `reason` for the STATUS column, if its state gives one.
fn container_reason(c: &Value) -> Option<String> {
    let state = &c["state"];
    if let Some(r) = state["waiting"]["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
    {
        return Some(r.to_string());
    }
    let t = &state["terminated"];
    if t.is_object() {
        if let Some(r) = t["reason"].as_str().filter(|r| !r.is_empty()) {
            return Some(r.to_string());
        }
        return Some(match t["signal"].as_i64().filter(|s| *s != 0) {
            Some(sig) => format!("Signal:{sig}"),
            None => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
        });
    }
    None
}

/// The init containers' part of STATUS (`Init:1/2`, `Init:Error`, ...) while the pod is still
/// initializing, and their restarts up to the first one not done.
fn init_status(pod: &Value) -> (Option<String>, i64) {
    let total = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut restarts = 0;
    for (i, c) in pod["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        restarts += c["restartCount"].as_i64().unwrap_or(0);
        let t = &c["state"]["terminated"];
        if t.is_object() && t["exitCode"].as_i64() == Some(0) {
            continue;
        }
        let initialized = pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Initialized" && c["status"] == "True")
        });
        if initialized {
            return (None, restarts);
        }
        let waiting = c["state"]["waiting"]["reason"].as_str().unwrap_or("");
        let reason = if t.is_object() {
            format!("Init:{}", container_reason(c).unwrap_or_default())
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{total}")
        };
        return (Some(reason), restarts);
    }
    (None, restarts)
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"].as_array();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let mut reason = or_none(text(pod, "/status/reason"), text(pod, "/status/phase"));
    let mut ready = 0;
    let (init, mut restarts) = init_status(pod);
    let mut last_restart: Option<String> = None;
    if let Some(init) = init {
        reason = init;
    } else {
        restarts = 0;
        let mut running = false;
        for c in statuses.into_iter().flatten().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(at) = c["lastState"]["terminated"]["finishedAt"].as_str()
                && last_restart.as_deref().is_none_or(|l| l < at)
            {
                last_restart = Some(at.to_string());
            }
            if let Some(r) = container_reason(c) {
                reason = r;
            } else if c["ready"] == true && c["state"]["running"].is_object() {
                running = true;
                ready += 1;
            }
        }
        let pod_ready = pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if reason == "Completed" && running {
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    let deleting = pod["metadata"]["deletionTimestamp"].is_string();
    if deleting && text(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && !matches!(text(pod, "/status/phase"), "Succeeded" | "Failed") {
        reason = "Terminating".into();
    }
    let restarts = match (restarts, last_restart) {
        (n, Some(at)) if n != 0 => format!("{n} ({} ago)", age(Some(&at))),
        (n, _) => n.to_string(),
    };
    let ip = pod["status"]["podIPs"][0]["ip"]
        .as_str()
        .or_else(|| pod["status"]["podIP"].as_str())
        .unwrap_or("");
    let gates = pod["spec"]["readinessGates"]
        .as_array()
        .filter(|g| !g.is_empty());
    let gates = match gates {
        None => "<none>".to_string(),
        Some(g) => {
            let conds = pod["status"]["conditions"].as_array();
            let ok = g
                .iter()
                .filter(|gate| {
                    conds
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == gate["conditionType"] && c["status"] == "True")
                })
                .count();
            format!("{ok}/{}", g.len())
        }
    };
    vec![
        json!(text(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age(creation(pod))),
        json!(or_none(ip, "<none>")),
        json!(or_none(text(pod, "/spec/nodeName"), "<none>")),
        json!(or_none(text(pod, "/status/nominatedNodeName"), "<none>")),
        json!(gates),
    ]
}

/// `labels.FormatLabels`: `k=v` pairs sorted by key, `<none>` for none.
fn format_labels(labels: &Value) -> String {
    let mut pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        return "<none>".into();
    }
    pairs.sort();
    pairs.join(",")
}

/// `metav1.FormatLabelSelector`: a missing, empty or malformed selector prints as such.
fn format_label_selector(sel: &Value) -> String {
    match label_selector_string(sel) {
        _ if sel.is_null() => "<none>".to_string(),
        None => "<error>".to_string(),
        Some(s) if s.is_empty() => "<none>".to_string(),
        Some(s) => s,
    }
}

fn daemonset_cells(ds: &Value) -> Vec<Value> {
    let count = |k: &str| ds["status"][k].as_i64().unwrap_or(0);
    let template = &ds["spec"]["template"]["spec"];
    let containers = template["containers"].as_array();
    let names: Vec<&str> = containers
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default())
        .collect();
    let images: Vec<&str> = containers
        .into_iter()
        .flatten()
        .map(|c| c["image"].as_str().unwrap_or_default())
        .collect();
    let selector = format_label_selector(&ds["spec"]["selector"]);
    vec![
        json!(text(ds, "/metadata/name")),
        json!(count("desiredNumberScheduled")),
        json!(count("currentNumberScheduled")),
        json!(count("numberReady")),
        json!(count("updatedNumberScheduled")),
        json!(count("numberAvailable")),
        json!(format_labels(&template["nodeSelector"])),
        json!(age(creation(ds))),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(selector),
    ]
}

fn row(kind: Kind, obj: &Value, opts: &TableOptions) -> Value {
    let cells = match kind {
        Kind::Node => node_cells(obj),
        Kind::Pod => pod_cells(obj),
        Kind::Namespace => vec![
            json!(text(obj, "/metadata/name")),
            json!(text(obj, "/status/phase")),
            json!(age(creation(obj))),
        ],
        Kind::ConfigMap => {
            let entries = |k: &str| obj[k].as_object().map_or(0, |m| m.len());
            vec![
                json!(text(obj, "/metadata/name")),
                json!(entries("data") + entries("binaryData")),
                json!(age(creation(obj))),
            ]
        }
        Kind::DaemonSet => daemonset_cells(obj),
        Kind::NetworkPolicy => vec![
            json!(text(obj, "/metadata/name")),
            json!(format_label_selector(&obj["spec"]["podSelector"])),
            json!(age(creation(obj))),
        ],
        Kind::ServiceAccount => vec![
            json!(text(obj, "/metadata/name")),
            json!(obj["secrets"].as_array().map_or(0, Vec::len)),
            json!(age(creation(obj))),
        ],
        Kind::ClusterRole | Kind::Role => vec![
            json!(text(obj, "/metadata/name")),
            json!(text(obj, "/metadata/creationTimestamp")),
        ],
        Kind::ClusterRoleBinding | Kind::RoleBinding => binding_cells(obj),
    };
    let mut row = json!({ "cells": cells });
    match text(obj, "/status/phase") {
        "Succeeded" if kind == Kind::Pod => {
            row["conditions"] = json!([{"type":"Completed","status":"True","reason":"Succeeded","message":"The pod has completed successfully."}]);
        }
        "Failed" if kind == Kind::Pod => {
            row["conditions"] = json!([{"type":"Completed","status":"True","reason":"Failed","message":"The pod failed."}]);
        }
        _ => {}
    }
    row["object"] = match opts.include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": opts.api_version,
            "metadata": obj["metadata"].clone(),
        }),
        IncludeObject::Object => {
            let mut o = obj.clone();
            o["kind"] = json!(kind.name());
            o["apiVersion"] = json!(kind.api_version());
            o
        }
    };
    row
}

/// A Table of `items` (a list's items, or one object) with the list's `resourceVersion` and
/// `continue` token.
pub fn table(
    kind: Kind,
    items: &[Value],
    resource_version: u64,
    continue_token: Option<&str>,
    opts: &TableOptions,
) -> Value {
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": opts.api_version,
        "metadata": metadata,
        "columnDefinitions": if opts.no_headers { Value::Null } else { json!(columns(kind)) },
        "rows": items.iter().map(|o| row(kind, o, opts)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rfc3339_now;

    const V1: TableOptions = TableOptions {
        api_version: "meta.k8s.io/v1",
        include: IncludeObject::Metadata,
        no_headers: false,
    };

    #[test]
    fn rbac_and_service_account_tables_as_kubectl_prints_them() {
        let created = "2026-01-02T03:04:05Z";
        let binding = json!({
            "metadata": {"name": "flannel", "creationTimestamp": created},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"},
                {"kind": "User", "name": "alice"},
                {"kind": "User", "name": "bob"},
                {"kind": "Group", "name": "g"},
            ]
        });
        let t = table(Kind::RoleBinding, &[binding], 7, None, &V1);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Role", "Age", "Users", "Groups", "ServiceAccounts"]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "ClusterRole/flannel");
        assert_eq!(
            (&cells[3], &cells[4], &cells[5]),
            (
                &json!("alice, bob"),
                &json!("g"),
                &json!("kube-flannel/flannel")
            )
        );
        let role = json!({"metadata": {"name": "cluster-admin", "creationTimestamp": created}});
        let t = table(Kind::ClusterRole, &[role], 7, None, &V1);
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        assert_eq!(t["rows"][0]["cells"], json!(["cluster-admin", created]));
        let sa = json!({"metadata": {"name": "flannel", "creationTimestamp": created}, "secrets": [{"name": "s"}]});
        let t = table(Kind::ServiceAccount, &[sa], 7, None, &V1);
        assert_eq!(t["rows"][0]["cells"][1], 1);
    }

    #[test]
    fn human_durations_match_apimachinery() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_rows_as_the_server_prints_them() {
        let pod = json!({
            "metadata": {"name": "n1-p1", "namespace": "default", "creationTimestamp": rfc3339_now()},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.2"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                                              "state": {"running": {}}}]}
        });
        let t = table(Kind::Pod, &[pod], 7, None, &V1);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "n1-p1");
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "0");
        assert!(cells[4].as_str().unwrap().ends_with('s'), "{}", cells[4]);
        assert_eq!(cells[5], "10.244.0.2");
        assert_eq!(cells[6], "n1");
        assert_eq!(cells[7], "<none>");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");

        let waiting = json!({"spec":{"containers":[{},{}]},"status":{"phase":"Pending",
            "containerStatuses":[{"state":{"waiting":{"reason":"ContainerCreating"}}}]}});
        let cells = &table(Kind::Pod, &[waiting], 1, None, &V1)["rows"][0]["cells"];
        assert_eq!(
            (&cells[1], &cells[2], &cells[4]),
            (
                &json!("0/2"),
                &json!("ContainerCreating"),
                &json!("<unknown>")
            )
        );
        let init = json!({"spec":{"initContainers":[{},{}],"containers":[{}]},"status":{"phase":"Pending",
            "initContainerStatuses":[{"state":{"terminated":{"exitCode":0}}},{"state":{"running":{}}, "restartCount": 2}]}});
        let cells = &table(Kind::Pod, &[init], 1, None, &V1)["rows"][0]["cells"];
        assert_eq!((&cells[2], &cells[3]), (&json!("Init:1/2"), &json!("2")));
    }

    #[test]
    fn node_and_namespace_rows() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                       "addresses": [{"type": "InternalIP", "address": "198.18.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.34.0", "osImage": "Debian GNU/Linux 12 (bookworm)"}}
        });
        let t = table(
            Kind::Node,
            &[node],
            3,
            Some("1:1"),
            &TableOptions {
                no_headers: true,
                ..V1
            },
        );
        assert!(t["columnDefinitions"].is_null());
        assert_eq!(t["metadata"]["continue"], "1:1");
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "n1",
                "NotReady,SchedulingDisabled",
                "control-plane",
                "<unknown>",
                "v1.34.0",
                "198.18.0.1",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "<unknown>",
                "<unknown>"
            ])
        );
        let ns = json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}});
        let t = table(
            Kind::Namespace,
            &[ns],
            1,
            None,
            &TableOptions {
                include: IncludeObject::None,
                ..V1
            },
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["default", "Active", "<unknown>"])
        );
        assert!(t["rows"][0]["object"].is_null());
        assert_eq!(IncludeObject::parse(Some("x")).unwrap_err().code, 400);
    }

    #[test]
    fn daemonset_and_configmap_rows() {
        let ds = json!({
            "metadata": {"name": "kube-flannel-ds", "namespace": "kube-flannel"},
            "spec": {"selector": {"matchLabels": {"app": "flannel"},
                                  "matchExpressions": [{"key": "tier", "operator": "In", "values": ["node", "edge"]}]},
                     "template": {"spec": {
                         "nodeSelector": {"kubernetes.io/os": "linux", "a": "b"},
                         "initContainers": [{"name": "install-cni", "image": "x"}],
                         "containers": [{"name": "kube-flannel", "image": "f:1"}, {"name": "np", "image": "n:2"}]}}},
            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1,
                       "updatedNumberScheduled": 2, "numberAvailable": 1}
        });
        let t = table(
            Kind::DaemonSet,
            &[ds],
            5,
            None,
            &TableOptions {
                include: IncludeObject::Object,
                ..V1
            },
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "kube-flannel-ds",
                2,
                2,
                1,
                2,
                1,
                "a=b,kubernetes.io/os=linux",
                "<unknown>",
                "kube-flannel,np",
                "f:1,n:2",
                "app=flannel,tier in (edge,node)"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["apiVersion"], "apps/v1");
        let fresh = json!({"metadata": {"name": "d"}, "spec": {"selector": {}}, "status": {}});
        let cells = table(Kind::DaemonSet, &[fresh], 1, None, &V1)["rows"][0]["cells"].clone();
        let cells = cells.as_array().unwrap();
        assert_eq!(
            cells[1..7],
            [
                json!(0),
                json!(0),
                json!(0),
                json!(0),
                json!(0),
                json!("<none>")
            ]
        );
        assert_eq!(cells[10], "<none>");

        let cm = json!({"metadata": {"name": "kube-flannel-cfg"},
                        "data": {"cni-conf.json": "{}", "net-conf.json": "{}"}, "binaryData": {"b": ""}});
        let t = table(Kind::ConfigMap, &[cm], 1, None, &V1);
        assert_eq!(t["columnDefinitions"][1]["name"], "Data");
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["kube-flannel-cfg", 3, "<unknown>"])
        );
    }
}
