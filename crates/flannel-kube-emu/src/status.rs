//! API errors as the real API server reports them: a `Status` object with `code`, `reason` and a
//! message worded like the server's, so clients (kube-rs, client-go) classify them as they
//! would against a cluster (`NotFound`, `AlreadyExists`, `Conflict`, `Expired`, ...).

use serde_json::{Value, json};

/// One failed API call: the HTTP status and the `Status` object sent as the body (or as the
/// `object` of an `ERROR` watch event).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (`404`, `409`, `410`, ...).
    pub code: u16,
    /// The machine-readable reason (`NotFound`, `Conflict`, `Expired`, ...).
    pub reason: &'static str,
    /// The human-readable message, worded as the real server words it.
    pub message: String,
    /// `details.name` / `details.kind` when the error concerns one object or resource (the
    /// kind may be qualified by its group, `daemonsets.apps`; an empty name or kind is left
    /// out, so `("", "")` is the empty `details: {}` of a refused non-resource request).
    pub details: Option<(String, String)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, name: &str, kind: &str) -> ApiError {
        self.details = Some((name.to_string(), kind.to_string()));
        self
    }

    /// `404 NotFound`: `nodes "n1" not found` (`daemonsets.apps "x" not found` outside the core
    /// group).
    pub fn not_found(resource: &'static str, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(name, resource)
    }

    /// `404 NotFound` for a path the emulator does not serve.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// `409 AlreadyExists`: `nodes "n1" already exists`.
    pub fn already_exists(resource: &'static str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .with_details(name, resource)
    }

    /// `409 Conflict`: a stale `metadata.resourceVersion` precondition.
    pub fn conflict(resource: &'static str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(name, resource)
    }

    /// `410 Expired` for a watch whose resourceVersion is older than the retained history.
    pub fn too_old(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// `410 Expired` for a `continue` token whose snapshot is gone.
    pub fn continue_expired() -> ApiError {
        ApiError::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        )
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// `422 Invalid`: the object fails validation. Unlike the other errors, the server names
    /// the object by its kind here (`Node "n1" is invalid: ...`, `details.kind` `Node`).
    pub fn invalid(kind: &'static str, name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", message.into()),
        )
        .with_details(name, kind)
    }

    /// `403 Forbidden` from admission: `namespaces "default" is forbidden: <why>`.
    pub fn forbidden(resource: &'static str, name: &str, why: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{resource} \"{name}\" is forbidden: {why}"),
        )
        .with_details(name, resource)
    }

    /// `401 Unauthorized`: no valid credentials (a bad, expired or revoked token, or none when
    /// anonymous requests are off). The API server says no more than this.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `403 Forbidden` from the authorizer, worded as the API server's `forbiddenMessage`:
    /// `nodes "n1" is forbidden: User "u" cannot patch resource "nodes/status" in API group ""
    /// at the cluster scope`. `qualified_resource` is `resource[.group]` (empty for a
    /// non-resource request, which reads `forbidden: User "u" cannot get path "/metrics"`).
    pub fn forbidden_by_authorizer(qualified_resource: &str, name: &str, why: &str) -> ApiError {
        let message = match (qualified_resource, name) {
            ("", _) => format!("forbidden: {why}"),
            (resource, "") => format!("{resource} is forbidden: {why}"),
            (resource, name) => format!("{resource} \"{name}\" is forbidden: {why}"),
        };
        ApiError::new(403, "Forbidden", message).with_details(name, qualified_resource)
    }

    /// `406 NotAcceptable`: no media type in the request's `Accept` header can be served.
    pub fn not_acceptable() -> ApiError {
        ApiError::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1beta1;g=meta.k8s.io",
        )
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// `415 UnsupportedMediaType`: a body in a format the emulator does not read (protobuf, YAML)
    /// or a patch type it does not implement.
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?}; flannel-kube-emu does not emulate protobuf, JSON patch or server-side apply)"
            ),
        )
    }

    /// `504 Timeout` for a resourceVersion newer than the server has.
    pub fn too_large(requested: u64, current: u64) -> ApiError {
        ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        )
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, kind)) = &self.details {
            // A resource or kind outside the core group comes qualified (`daemonsets.apps`);
            // the details name the group apart, as the server's do.
            let mut details = match kind.split_once('.') {
                Some((kind, group)) => json!({ "group": group, "kind": kind }),
                None => json!({ "kind": kind }),
            };
            if kind.is_empty() {
                details = json!({});
            }
            if !name.is_empty() {
                details["name"] = json!(name);
            }
            s["details"] = details;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shapes_match_the_api_server() {
        assert_eq!(
            ApiError::not_found("nodes", "n1").to_status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"nodes \"n1\" not found","reason":"NotFound",
                   "details":{"name":"n1","kind":"nodes"},"code":404})
        );
        let gone = ApiError::too_old(5, 9).to_status();
        assert_eq!(gone["code"], 410);
        assert_eq!(gone["reason"], "Expired");
        assert_eq!(gone["message"], "too old resource version: 5 (9)");
        assert_eq!(ApiError::conflict("nodes", "a").code, 409);
        assert_eq!(
            ApiError::not_found("daemonsets.apps", "ds").to_status()["details"],
            json!({"name": "ds", "group": "apps", "kind": "daemonsets"})
        );
        assert_eq!(
            ApiError::unauthorized().to_status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
        assert_eq!(
            ApiError::forbidden_by_authorizer("", "", "User \"x\" cannot get path \"/metrics\"")
                .to_status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"forbidden: User \"x\" cannot get path \"/metrics\"",
                   "reason":"Forbidden","details":{},"code":403})
        );
        assert_eq!(
            ApiError::forbidden_by_authorizer("clusterroles.rbac.authorization.k8s.io", "", "w")
                .to_status()["details"],
            json!({"group": "rbac.authorization.k8s.io", "kind": "clusterroles"})
        );
        assert_eq!(
            ApiError::already_exists("nodes", "a").reason,
            "AlreadyExists"
        );
    }
}
