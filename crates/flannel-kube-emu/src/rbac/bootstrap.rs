//! The RBAC objects a fresh kubeadm cluster starts with that matter to clients here: the API
//! server's bootstrap policy's `cluster-admin` (everything, bound to `system:masters`),
//! `system:discovery` and `system:basic-user` (bound to every authenticated user) and
//! `system:public-info-viewer` (bound to everyone, anonymous included).

use serde_json::{Value, json};

use crate::store::{Kind, Store};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" },
        "annotations": { "rbac.authorization.kubernetes.io/autoupdate": "true" },
    })
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({ "metadata": metadata(name), "rules": rules })
}

fn binding(name: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({ "apiGroup": RBAC_GROUP, "kind": "Group", "name": g }))
        .collect();
    json!({
        "metadata": metadata(name),
        "roleRef": { "apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name },
        "subjects": subjects,
    })
}

/// The bootstrap ClusterRoles and ClusterRoleBindings, in that order.
pub fn objects() -> Vec<(Kind, Value)> {
    let public = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let mut discovery = vec![
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/openapi",
        "/openapi/*",
    ];
    discovery.extend(public);
    discovery.sort_unstable();
    vec![
        (
            Kind::ClusterRole,
            cluster_role(
                "cluster-admin",
                json!([
                    { "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] },
                    { "nonResourceURLs": ["*"], "verbs": ["*"] },
                ]),
            ),
        ),
        (
            Kind::ClusterRole,
            cluster_role(
                "system:basic-user",
                json!([
                    {
                        "apiGroups": ["authorization.k8s.io"],
                        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                        "verbs": ["create"],
                    },
                    {
                        "apiGroups": ["authentication.k8s.io"],
                        "resources": ["selfsubjectreviews"],
                        "verbs": ["create"],
                    },
                ]),
            ),
        ),
        (
            Kind::ClusterRole,
            cluster_role(
                "system:discovery",
                json!([{ "nonResourceURLs": discovery, "verbs": ["get"] }]),
            ),
        ),
        (
            Kind::ClusterRole,
            cluster_role(
                "system:public-info-viewer",
                json!([{ "nonResourceURLs": public, "verbs": ["get"] }]),
            ),
        ),
        (
            Kind::ClusterRoleBinding,
            binding("cluster-admin", &["system:masters"]),
        ),
        (
            Kind::ClusterRoleBinding,
            binding("system:basic-user", &["system:authenticated"]),
        ),
        (
            Kind::ClusterRoleBinding,
            binding("system:discovery", &["system:authenticated"]),
        ),
        (
            Kind::ClusterRoleBinding,
            binding(
                "system:public-info-viewer",
                &["system:authenticated", "system:unauthenticated"],
            ),
        ),
    ]
}

/// Creates the bootstrap objects in `store` (as the API server's RBAC post-start hook does).
pub fn seed(store: &mut Store) {
    for (kind, obj) in objects() {
        // A fresh store has none of them; a name clash would be a bug in the list above.
        if let Err(e) = store.create(kind, "", obj) {
            tracing::error!("bootstrap RBAC object: {e}");
        }
    }
}
