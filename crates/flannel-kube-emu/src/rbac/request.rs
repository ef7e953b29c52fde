//! What a request asks to do, in the authorizer's terms (the API server's `RequestInfo`): a
//! verb and either a path (non-resource requests: `/healthz`, `/api`, `/metrics`) or an API
//! group, namespace, resource, subresource and name. Parsed from the path alone, before
//! routing, so a refused request gets 403 whether or not the emulator serves its resource.

use std::collections::HashMap;

/// The request attributes the authorizer decides on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`
    /// (resource requests) or the lowercased method (non-resource requests).
    pub verb: String,
    /// The URL path.
    pub path: String,
    /// Whether this addresses a resource (`/api/v1/...`, `/apis/<g>/<v>/...`).
    pub resource_request: bool,
    /// The API group (`""` for the core group).
    pub api_group: String,
    /// The API version.
    pub api_version: String,
    /// The namespace (`""` at the cluster scope; a namespace's own name for
    /// `/api/v1/namespaces/<n>`, as on the API server).
    pub namespace: String,
    /// The resource (`nodes`).
    pub resource: String,
    /// The subresource (`status`, `token`), `""` for the main resource.
    pub subresource: String,
    /// The object's name, `""` for a collection (a list or watch with the field selector
    /// `metadata.name=<n>` names `<n>`).
    pub name: String,
}

/// Parses a request as the API server's `RequestInfoFactory` does. `query` is the decoded
/// query string (`watch`, `fieldSelector`).
pub fn attributes(method: &str, path: &str, query: &HashMap<String, String>) -> Attributes {
    let mut a = Attributes {
        verb: method.to_ascii_lowercase(),
        path: path.to_string(),
        ..Attributes::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return a;
    }
    let mut rest = &parts[1..];
    if parts[0] == "apis" {
        if rest.len() < 3 {
            return a;
        }
        a.api_group = rest[0].to_string();
        rest = &rest[1..];
    }
    a.resource_request = true;
    a.api_version = rest[0].to_string();
    rest = &rest[1..];
    a.verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => {
            return Attributes {
                verb: other.to_ascii_lowercase(),
                ..a
            };
        }
    }
    .to_string();
    if rest.first() == Some(&"namespaces")
        && let Some(ns) = rest.get(1)
    {
        a.namespace = ns.to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 {
        a.subresource = rest[2].to_string();
    }
    if rest.len() >= 2 {
        a.name = rest[1].to_string();
    }
    if let Some(resource) = rest.first() {
        a.resource = resource.to_string();
    }
    if a.name.is_empty() && a.verb == "get" {
        let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
        a.verb = if watch { "watch" } else { "list" }.to_string();
        if let Some(name) = query
            .get("fieldSelector")
            .and_then(|f| exact_name(f))
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains('%'))
        {
            a.name = name.to_string();
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".to_string();
    }
    a
}

/// The name a field selector pins (`metadata.name=<n>` or `==`, alone).
fn exact_name(selector: &str) -> Option<&str> {
    if selector.contains(',') {
        return None;
    }
    selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: &str, path: &str, query: &[(&str, &str)]) -> Attributes {
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes(method, path, &q)
    }

    #[test]
    fn request_info_as_the_api_server_parses_it() {
        let a = attrs("PATCH", "/api/v1/nodes/n1/status", &[]);
        assert!(a.resource_request);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("patch", "nodes", "status")
        );
        assert_eq!((a.name.as_str(), a.namespace.as_str()), ("n1", ""));
        let a = attrs("GET", "/api/v1/namespaces/default/pods", &[]);
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("list", "default", "pods")
        );
        let a = attrs("GET", "/api/v1/nodes", &[("watch", "1")]);
        assert_eq!(a.verb, "watch");
        let a = attrs(
            "GET",
            "/api/v1/nodes",
            &[("watch", "true"), ("fieldSelector", "metadata.name=n2")],
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "n2"));
        let a = attrs("DELETE", "/apis/apps/v1/namespaces/x/daemonsets", &[]);
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str()),
            ("deletecollection", "apps")
        );
        let a = attrs("GET", "/api/v1/namespaces/kube-flannel", &[]);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "kube-flannel", "kube-flannel")
        );
        let a = attrs(
            "POST",
            "/api/v1/namespaces/kube-flannel/serviceaccounts/flannel/token",
            &[],
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("create", "serviceaccounts", "token")
        );
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/metrics",
            "/emu/state",
        ] {
            let a = attrs("GET", path, &[]);
            assert!(!a.resource_request, "{path}");
            assert_eq!(a.verb, "get");
        }
        let a = attrs("POST", "/emu/revoke-token", &[]);
        assert_eq!(a.verb, "post");
    }
}
