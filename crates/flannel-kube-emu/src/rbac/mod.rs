//! Authorization as kube-apiserver's `--authorization-mode=RBAC` does it: the request's
//! attributes ([`request`]) against the rules of the ClusterRoles bound by ClusterRoleBindings
//! and of the Roles or ClusterRoles bound by RoleBindings in the request's namespace, read
//! from the store at the moment of the request (so a changed role applies at once). Members
//! of `system:masters` may do anything, as the API server's privileged-group authorizer lets
//! them. Not emulated: RBAC's escalation checks (`escalate`, `bind`), aggregated
//! ClusterRoles, the Node authorizer and webhooks.

pub mod bootstrap;
pub mod objects;
pub mod request;

use serde_json::Value;

use crate::auth::{MASTERS, UserInfo};
use crate::status::ApiError;
use crate::store::{Kind, Store};

pub use request::{Attributes, attributes};

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn text<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Whether one PolicyRule allows the request (`rbac.RuleAllows`).
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let has = |field: &str, want: &str| strings(&rule[field]).any(|v| v == "*" || v == want);
    if !has("verbs", &a.verb) {
        return false;
    }
    if !a.resource_request {
        return strings(&rule["nonResourceURLs"]).any(|url| {
            url == "*"
                || url == a.path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| a.path.starts_with(prefix))
        });
    }
    if !has("apiGroups", &a.api_group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strings(&rule["resources"]).any(|r| {
        r == "*"
            || r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }
    let mut names = strings(&rule["resourceNames"]).peekable();
    names.peek().is_none() || names.any(|n| n == a.name)
}

/// Whether a binding's subjects include `user` (`namespace` is the binding's, for
/// ServiceAccount subjects that leave theirs out).
fn applies_to(binding: &Value, user: &UserInfo, namespace: &str) -> bool {
    strings_of_subjects(binding).any(|s| match text(s, "/kind") {
        "User" => text(s, "/name") == user.name,
        "Group" => user.in_group(text(s, "/name")),
        "ServiceAccount" => {
            let ns = match text(s, "/namespace") {
                "" => namespace,
                ns => ns,
            };
            user.name == format!("system:serviceaccount:{ns}:{}", text(s, "/name"))
        }
        _ => false,
    })
}

fn strings_of_subjects(binding: &Value) -> impl Iterator<Item = &Value> {
    binding["subjects"].as_array().into_iter().flatten()
}

/// The rules a binding's `roleRef` grants, or the lister's error for a missing role
/// (`clusterrole.rbac.authorization.k8s.io "x" not found`).
fn role_rules<'a>(store: &'a Store, binding: &Value, namespace: &str) -> Result<&'a Value, String> {
    let name = text(binding, "/roleRef/name");
    let (kind, ns, singular) = match text(binding, "/roleRef/kind") {
        "Role" => (Kind::Role, namespace, "role"),
        _ => (Kind::ClusterRole, "", "clusterrole"),
    };
    store
        .object(kind, ns, name)
        .map(|r| &r["rules"])
        .ok_or_else(|| format!("{singular}.rbac.authorization.k8s.io \"{name}\" not found"))
}

/// Decides a request: `Ok` when allowed, else the reason the API server appends to the
/// Forbidden message (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found` when a
/// binding of the user names a missing role; empty otherwise).
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> Result<(), String> {
    if user.in_group(MASTERS) {
        return Ok(());
    }
    let mut errors = Vec::new();
    let mut visit = |binding: &Value, namespace: &str| -> bool {
        if !applies_to(binding, user, namespace) {
            return false;
        }
        match role_rules(store, binding, namespace) {
            Ok(rules) => rules
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| rule_allows(r, a)),
            Err(e) => {
                errors.push(e);
                false
            }
        }
    };
    for binding in store.all(Kind::ClusterRoleBinding) {
        if visit(binding, "") {
            return Ok(());
        }
    }
    if !a.namespace.is_empty() {
        for binding in store
            .all(Kind::RoleBinding)
            .filter(|b| text(b, "/metadata/namespace") == a.namespace)
        {
            if visit(binding, &a.namespace) {
                return Ok(());
            }
        }
    }
    Err(match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    })
}

/// The 403 of a refused request, worded as the API server's `forbiddenMessage`.
pub fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let mut why = if !a.resource_request {
        format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path)
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            user.name, a.verb, a.api_group
        )
    };
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    let qualified = match (a.resource_request, a.api_group.as_str()) {
        (false, _) => String::new(),
        (true, "") => a.resource.clone(),
        (true, group) => format!("{}.{group}", a.resource),
    };
    ApiError::forbidden_by_authorizer(&qualified, &a.name, &why)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::store::StoreConfig;

    fn sa() -> UserInfo {
        UserInfo::service_account("kube-flannel", "flannel", "u")
    }

    fn req(method: &str, path: &str) -> Attributes {
        attributes(method, path, &HashMap::new())
    }

    /// kube-flannel's ClusterRole and binding, as deploy/kube-flannel.yml has them.
    fn flannel_store() -> Store {
        let mut s = Store::new(StoreConfig::default());
        bootstrap::seed(&mut s);
        s.create(
            Kind::ClusterRole,
            "",
            json!({
                "metadata": {"name": "flannel"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
                ]
            }),
        )
        .unwrap();
        s.create(Kind::ClusterRoleBinding, "", json!({
            "metadata": {"name": "flannel"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
            "subjects": [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]
        })).unwrap();
        s
    }

    #[test]
    fn flannel_account_gets_what_its_role_says() {
        let s = flannel_store();
        let ok = |m, p| authorize(&s, &sa(), &req(m, p)).is_ok();
        assert!(ok("GET", "/api/v1/nodes"));
        assert!(ok("GET", "/api/v1/nodes/n1"));
        assert!(ok("PATCH", "/api/v1/nodes/n1/status"));
        assert!(ok("GET", "/api/v1/namespaces/x/pods/p"));
        assert!(ok("GET", "/healthz"));
        assert!(ok("GET", "/apis/apps/v1"));
        assert!(!ok("PATCH", "/api/v1/nodes/n1"));
        assert!(!ok("GET", "/api/v1/pods"));
        assert!(!ok("GET", "/metrics"));
        assert!(!ok("POST", "/api/v1/namespaces/default/configmaps"));
        let admin = UserInfo {
            name: "a".into(),
            uid: String::new(),
            groups: vec![MASTERS.into()],
        };
        assert!(authorize(&s, &admin, &req("DELETE", "/api/v1/nodes/x")).is_ok());
        let anon = UserInfo::anonymous();
        assert!(authorize(&s, &anon, &req("GET", "/version")).is_ok());
        assert!(authorize(&s, &anon, &req("GET", "/api")).is_err());
    }

    #[test]
    fn forbidden_messages_match_the_api_server() {
        let s = flannel_store();
        let a = req("PATCH", "/api/v1/nodes/n1/status");
        assert!(authorize(&s, &sa(), &req("PATCH", "/api/v1/nodes/n1")).is_err());
        let e = forbidden(&sa(), &req("PATCH", "/api/v1/nodes/n1"), "");
        assert_eq!(
            e.to_status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"nodes \"n1\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope",
                "reason":"Forbidden","details":{"name":"n1","kind":"nodes"},"code":403})
        );
        assert!(authorize(&s, &sa(), &a).is_ok());
        let e = forbidden(&sa(), &req("GET", "/api/v1/namespaces/default/pods"), "");
        assert_eq!(
            e.message,
            "pods is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let e = forbidden(&UserInfo::anonymous(), &req("GET", "/metrics"), "");
        assert_eq!(
            e.message,
            "forbidden: User \"system:anonymous\" cannot get path \"/metrics\""
        );
        let e = forbidden(
            &sa(),
            &req("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
            "",
        );
        assert_eq!(
            e.to_status()["details"],
            json!({"group": "rbac.authorization.k8s.io", "kind": "clusterroles"})
        );
    }

    #[test]
    fn rules_wildcards_names_subresources_and_role_bindings() {
        let mut s = Store::new(StoreConfig::default());
        let user = UserInfo {
            name: "bob".into(),
            uid: String::new(),
            groups: vec!["devs".into()],
        };
        let ok = |s: &Store, m, p| authorize(s, &user, &req(m, p));
        s.create(Kind::Role, "default", json!({
            "metadata": {"name": "r"},
            "rules": [
                {"apiGroups": ["*"], "resources": ["configmaps"], "resourceNames": ["c1"], "verbs": ["*"]},
                {"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
            ]
        })).unwrap();
        s.create(
            Kind::RoleBinding,
            "default",
            json!({
                "metadata": {"name": "rb"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": [{"kind": "Group", "name": "devs"}]
            }),
        )
        .unwrap();
        assert!(ok(&s, "PUT", "/api/v1/namespaces/default/configmaps/c1").is_ok());
        assert!(ok(&s, "PUT", "/api/v1/namespaces/default/configmaps/c2").is_err());
        assert!(ok(&s, "GET", "/api/v1/namespaces/default/pods/p/status").is_ok());
        assert!(ok(&s, "GET", "/api/v1/namespaces/other/pods/p/status").is_err());
        assert!(ok(&s, "GET", "/api/v1/namespaces/default/pods/p").is_err());
        // A binding to a missing role says so in the reason.
        s.create(Kind::RoleBinding, "default", json!({
            "metadata": {"name": "rb2"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "gone"},
            "subjects": [{"kind": "User", "name": "bob"}]
        })).unwrap();
        assert_eq!(
            ok(&s, "GET", "/api/v1/namespaces/default/pods/p").unwrap_err(),
            "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
        );
        // Non-resource URL prefixes.
        let rule = json!({"nonResourceURLs": ["/logs/*", "/x"], "verbs": ["get"]});
        assert!(rule_allows(&rule, &req("GET", "/logs/a/b")));
        assert!(rule_allows(&rule, &req("GET", "/x")));
        assert!(!rule_allows(&rule, &req("GET", "/xy")));
        assert!(!rule_allows(&rule, &req("POST", "/x")));
    }
}
