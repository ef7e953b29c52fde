//! Discovery (`/api`, `/api/v1`, `/apis`) and content negotiation (`Accept`).
//!
//! Clients find out what a server serves before they touch it: kubectl maps `get no` to
//! `v1/nodes` through discovery. Both forms the API server offers are served:
//! * **aggregated** (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`), which kubectl asks for
//!   first in its `Accept` header: one request per root gives every resource;
//! * **legacy** (`APIVersions`, `APIGroupList`, `APIResourceList`), for clients that accept
//!   only `application/json` (kube-rs): `/api` lists `v1`, `/api/v1` its resources.
//!
//! The core group (`/api/v1`: configmaps, namespaces, nodes, pods, serviceaccounts), the
//! `apps` group (`/apis/apps/v1`: daemonsets), the `networking.k8s.io` group
//! (`/apis/networking.k8s.io/v1`: networkpolicies) and the `rbac.authorization.k8s.io` group
//! (clusterrolebindings, clusterroles, rolebindings, roles) exist, each in version `v1` only;
//! the core group also has serviceaccounts with their `token` subresource (TokenRequest).
//! `authentication.k8s.io` (selfsubjectreviews: `kubectl auth whoami`) and
//! `authorization.k8s.io` (selfsubjectaccessreviews: `kubectl auth can-i`) serve only those
//! create-only reviews.

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::store::Kind;

/// The `Content-Type` of an aggregated discovery document; client-go recognises the form by
/// these parameters.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// What a response may be rendered as, chosen from the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// Plain JSON (the object, list or legacy discovery document).
    Json,
    /// A `Table` of that API version (`meta.k8s.io/v1` or `meta.k8s.io/v1beta1`).
    Table(&'static str),
    /// Aggregated discovery (`apidiscovery.k8s.io/v2`).
    Aggregated,
}

/// Picks the first media type in `accept` that can be served (`q` parameters are ignored;
/// clients list their preference first). No header, `*/*` and `application/json` give JSON;
/// `as=Table` only where `table` is allowed, aggregated discovery only where `aggregated` is.
/// A header that names nothing servable is `406 Not Acceptable`.
pub fn negotiate(accept: Option<&str>, table: bool, aggregated: bool) -> Result<Media, ApiError> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Media::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("").to_ascii_lowercase();
        if !matches!(mime.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .filter(|(k, _)| k != "q")
            .collect();
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        match (get("as"), get("g"), get("v")) {
            (None, None, None) => return Ok(Media::Json),
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) if table => {
                return Ok(Media::Table("meta.k8s.io/v1"));
            }
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) if table => {
                return Ok(Media::Table("meta.k8s.io/v1beta1"));
            }
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2"))
                if aggregated =>
            {
                return Ok(Media::Aggregated);
            }
            _ => {}
        }
    }
    Err(ApiError::not_acceptable())
}

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// The API groups served besides the core one (`/apis`).
pub const GROUPS: [&str; 5] = [
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
];

/// Resources that are not stored, only created to ask a question (`kubectl auth whoami`,
/// `kubectl auth can-i`): (group, resource, kind, singular).
const REVIEWS: [(&str, &str, &str, &str); 2] = [
    (
        "authentication.k8s.io",
        "selfsubjectreviews",
        "SelfSubjectReview",
        "selfsubjectreview",
    ),
    (
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreview",
    ),
];

/// The review resources of `group`.
fn reviews_of(
    group: &str,
) -> impl Iterator<Item = (&'static str, &'static str, &'static str)> + '_ {
    REVIEWS
        .into_iter()
        .filter(move |(g, ..)| *g == group)
        .map(|(_, resource, kind, singular)| (resource, kind, singular))
}

/// The kinds of `group` (`""` for the core group), in discovery order.
fn kinds_of(group: &str) -> impl Iterator<Item = Kind> + '_ {
    Kind::ALL.into_iter().filter(move |k| k.group() == group)
}

/// `GET /api` (legacy): the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

/// One group of `/apis` (legacy): its one version, `v1`, preferred.
fn group_entry(group: &str) -> Value {
    let version = json!({ "groupVersion": format!("{group}/v1"), "version": "v1" });
    json!({ "name": group, "versions": [version], "preferredVersion": version })
}

/// `GET /apis` (legacy): the API groups besides the core one.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|g| group_entry(g)).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `GET /apis/<group>`: the group and its versions, `None` for a group not served.
pub fn api_group(group: &str) -> Option<Value> {
    GROUPS.contains(&group).then(|| {
        let mut g = group_entry(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// `GET /api/v1` (`group` empty) or `GET /apis/<group>/v1`: the group's resources as the
/// emulator serves them, each kind with a `status` subresource unless it has no status.
pub fn api_resource_list(group: &str) -> Value {
    let mut resources = Vec::new();
    for kind in kinds_of(group) {
        let mut r = json!({
            "name": kind.resource(),
            "singularName": kind.singular(),
            "namespaced": kind.namespaced(),
            "kind": kind.name(),
            "verbs": VERBS,
            "shortNames": kind.short_names(),
        });
        if !kind.categories().is_empty() {
            r["categories"] = json!(kind.categories());
        }
        resources.push(r);
        if kind.has_status() {
            resources.push(json!({
                "name": format!("{}/status", kind.resource()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "kind": kind.name(),
                "verbs": STATUS_VERBS,
            }));
        }
        if kind == Kind::ServiceAccount {
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    for (resource, kind, singular) in reviews_of(group) {
        resources.push(json!({
            "name": resource, "singularName": singular, "namespaced": false, "kind": kind,
            "verbs": ["create"],
        }));
    }
    if group.is_empty() {
        json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": resources })
    } else {
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{group}/v1"),
            "resources": resources,
        })
    }
}

/// The aggregated discovery entry of `group`'s `v1`: every resource and subresource.
fn aggregated_group(group: &str) -> Value {
    let response_kind = |kind: Kind| json!({ "group": "", "version": "", "kind": kind.name() });
    let reviews = reviews_of(group).map(|(resource, kind, singular)| {
        json!({
            "resource": resource,
            "responseKind": { "group": "", "version": "", "kind": kind },
            "scope": "Cluster",
            "singularResource": singular,
            "verbs": ["create"],
        })
    });
    let resources: Vec<Value> = kinds_of(group)
        .map(|kind| {
            let mut r = json!({
                "resource": kind.resource(),
                "responseKind": response_kind(kind),
                "scope": if kind.namespaced() { "Namespaced" } else { "Cluster" },
                "singularResource": kind.singular(),
                "verbs": VERBS,
                "shortNames": kind.short_names(),
            });
            if kind.has_status() {
                r["subresources"] = json!([{
                    "subresource": "status",
                    "responseKind": response_kind(kind),
                    "verbs": STATUS_VERBS,
                }]);
            }
            if kind == Kind::ServiceAccount {
                r["subresources"] = json!([{
                    "subresource": "token",
                    "responseKind": {
                        "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"
                    },
                    "verbs": ["create"],
                }]);
            }
            if !kind.categories().is_empty() {
                r["categories"] = json!(kind.categories());
            }
            r
        })
        .chain(reviews)
        .collect();
    let mut metadata = json!({ "creationTimestamp": null });
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({
        "metadata": metadata,
        "versions": [{ "version": "v1", "resources": resources, "freshness": "Current" }],
    })
}

fn aggregated_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /api` (aggregated): the core group with every resource and subresource.
pub fn aggregated_core() -> Value {
    aggregated_list(vec![aggregated_group("")])
}

/// `GET /apis` (aggregated): every other group with its resources.
pub fn aggregated_groups() -> Value {
    aggregated_list(GROUPS.iter().map(|g| aggregated_group(g)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_headers() {
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            negotiate(Some(discovery), false, true).unwrap(),
            Media::Aggregated
        );
        assert_eq!(
            negotiate(Some(discovery), false, false).unwrap(),
            Media::Json
        );
        let get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(get), true, false).unwrap(),
            Media::Table("meta.k8s.io/v1")
        );
        assert_eq!(negotiate(Some(get), false, false).unwrap(), Media::Json);
        assert_eq!(negotiate(None, true, true).unwrap(), Media::Json);
        assert_eq!(
            negotiate(Some("*/*; q=0.8"), true, true).unwrap(),
            Media::Json
        );
        let e = negotiate(Some("application/vnd.kubernetes.protobuf"), true, true).unwrap_err();
        assert_eq!(e.code, 406);
    }

    #[test]
    fn discovery_documents_name_every_kind() {
        let names = |list: Value| -> Vec<String> {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            names(api_resource_list("")),
            [
                "configmaps",
                "namespaces",
                "namespaces/status",
                "nodes",
                "nodes/status",
                "pods",
                "pods/status",
                "serviceaccounts",
                "serviceaccounts/token"
            ]
        );
        let apps = api_resource_list("apps");
        assert_eq!(apps["groupVersion"], "apps/v1");
        assert_eq!(names(apps), ["daemonsets", "daemonsets/status"]);
        assert_eq!(
            api_group_list()["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert_eq!(api_group("apps").unwrap()["kind"], "APIGroup");
        assert!(api_group("batch").is_none());
        let agg = aggregated_core();
        let core = &agg["items"][0]["versions"][0]["resources"];
        assert!(core[0].get("subresources").is_none(), "configmaps");
        assert_eq!(core[0]["shortNames"], json!(["cm"]));
        let pods = &core[3];
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        let groups = aggregated_groups();
        assert_eq!(groups["items"][0]["metadata"]["name"], "apps");
        let ds = &groups["items"][0]["versions"][0]["resources"][0];
        assert_eq!(ds["resource"], "daemonsets");
        assert_eq!(ds["categories"], json!(["all"]));
        assert_eq!(ds["subresources"][0]["subresource"], "status");
    }
}
