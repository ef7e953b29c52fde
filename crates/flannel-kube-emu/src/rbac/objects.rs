//! Validation of the RBAC kinds as the API server validates them, reduced to what a client
//! can trip over: names are path segments (`system:basic-user` is fine), every rule has verbs
//! and either API groups with resources or non-resource URLs (the latter only in
//! ClusterRoles), a binding's `roleRef` names a role of a supported kind and cannot change,
//! and its subjects are Users, Groups or ServiceAccounts.

use serde_json::Value;

use crate::status::ApiError;
use crate::store::Kind;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Why `name` is not a valid path segment name (RBAC object names), if it is not.
pub fn path_segment_problem(name: &str) -> Option<&'static str> {
    match name {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        n if n.contains('/') => Some("may not contain '/'"),
        n if n.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

fn invalid(kind: Kind, name: &str, why: String) -> ApiError {
    ApiError::invalid(kind.qualified_name(), name, why)
}

fn len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

/// A ClusterRole's or Role's rules.
pub fn validate_role(kind: Kind, name: &str, obj: &Value) -> Result<(), ApiError> {
    for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let at = format!("rules[{i}]");
        if len(&rule["verbs"]) == 0 {
            return Err(invalid(
                kind,
                name,
                format!("{at}.verbs: Required value: verbs must contain at least one value"),
            ));
        }
        let urls = len(&rule["nonResourceURLs"]);
        if urls > 0 && kind == Kind::Role {
            return Err(invalid(
                kind,
                name,
                format!(
                    "{at}.nonResourceURLs: Invalid value: {}: namespaced rules cannot apply to non-resource URLs",
                    rule["nonResourceURLs"]
                ),
            ));
        }
        if urls > 0 && (len(&rule["apiGroups"]) > 0 || len(&rule["resources"]) > 0) {
            return Err(invalid(
                kind,
                name,
                format!(
                    "{at}.nonResourceURLs: Invalid value: {}: rules cannot apply to both regular resources and non-resource URLs",
                    rule["nonResourceURLs"]
                ),
            ));
        }
        if urls == 0 && len(&rule["apiGroups"]) == 0 {
            return Err(invalid(
                kind,
                name,
                format!(
                    "{at}.apiGroups: Required value: resource rules must supply at least one api group"
                ),
            ));
        }
        if urls == 0 && len(&rule["resources"]) == 0 {
            return Err(invalid(
                kind,
                name,
                format!(
                    "{at}.resources: Required value: resource rules must supply at least one resource"
                ),
            ));
        }
    }
    Ok(())
}

/// A new ClusterRoleBinding's or RoleBinding's `roleRef` and subjects.
pub fn validate_binding(kind: Kind, name: &str, obj: &Value) -> Result<(), ApiError> {
    let role_ref = &obj["roleRef"];
    let group = role_ref["apiGroup"].as_str().unwrap_or("");
    if group != RBAC_GROUP {
        return Err(invalid(
            kind,
            name,
            format!(
                "roleRef.apiGroup: Unsupported value: {group:?}: supported values: \"{RBAC_GROUP}\""
            ),
        ));
    }
    let role_kind = role_ref["kind"].as_str().unwrap_or("");
    let supported = match kind {
        Kind::ClusterRoleBinding => &["ClusterRole"][..],
        _ => &["Role", "ClusterRole"][..],
    };
    if !supported.contains(&role_kind) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        return Err(invalid(
            kind,
            name,
            format!(
                "roleRef.kind: Unsupported value: {role_kind:?}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    if role_ref["name"].as_str().unwrap_or("").is_empty() {
        return Err(invalid(kind, name, "roleRef.name: Required value".into()));
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let subject_kind = s["kind"].as_str().unwrap_or("");
        if !matches!(subject_kind, "User" | "Group" | "ServiceAccount") {
            return Err(invalid(
                kind,
                name,
                format!(
                    "subjects[{i}].kind: Unsupported value: {subject_kind:?}: supported values: \"Group\", \"ServiceAccount\", \"User\""
                ),
            ));
        }
        if s["name"].as_str().unwrap_or("").is_empty() {
            return Err(invalid(
                kind,
                name,
                format!("subjects[{i}].name: Required value"),
            ));
        }
        if subject_kind == "ServiceAccount"
            && kind == Kind::ClusterRoleBinding
            && s["namespace"].as_str().unwrap_or("").is_empty()
        {
            return Err(invalid(
                kind,
                name,
                format!("subjects[{i}].namespace: Required value"),
            ));
        }
    }
    Ok(())
}

/// An update of a binding: valid as a new one, and the `roleRef` unchanged.
pub fn validate_binding_update(
    kind: Kind,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    validate_binding(kind, name, new)?;
    if old["roleRef"] != new["roleRef"] {
        let r = &new["roleRef"];
        let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
        return Err(invalid(
            kind,
            name,
            format!(
                "roleRef: Invalid value: rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}: cannot change roleRef",
                text("apiGroup"),
                text("kind"),
                text("name")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rbac_objects_are_validated() {
        assert!(path_segment_problem("system:basic-user").is_none());
        assert_eq!(path_segment_problem("a/b"), Some("may not contain '/'"));
        let role = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}]});
        let e = validate_role(Kind::ClusterRole, "r", &role).unwrap_err();
        assert_eq!(
            e.message,
            "ClusterRole.rbac.authorization.k8s.io \"r\" is invalid: rules[0].verbs: Required value: verbs must contain at least one value"
        );
        let role = json!({"rules": [{"nonResourceURLs": ["/x"], "verbs": ["get"]}]});
        assert!(validate_role(Kind::ClusterRole, "r", &role).is_ok());
        assert!(validate_role(Kind::Role, "r", &role).is_err());
        let b = json!({
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "s", "namespace": "n"}]
        });
        assert!(validate_binding(Kind::RoleBinding, "b", &b).is_ok());
        let e = validate_binding(Kind::ClusterRoleBinding, "b", &b).unwrap_err();
        assert!(e.message.ends_with(
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""
        ));
        let mut changed = b.clone();
        changed["roleRef"]["name"] = json!("r2");
        let e = validate_binding_update(Kind::RoleBinding, "b", &b, &changed).unwrap_err();
        assert_eq!(
            e.message,
            "RoleBinding.rbac.authorization.k8s.io \"b\" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"r2\"}: cannot change roleRef"
        );
    }
}
