//! The TokenRequest API (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`), which
//! the kubelet calls to mount a ServiceAccount token into a pod: `201` with `status.token`
//! and `status.expirationTimestamp`. The token is opaque (see [`crate::auth`]); it lasts
//! `spec.expirationSeconds` (default one hour, at least ten minutes, as the API server
//! requires).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::store::{Kind, rfc3339, rfc3339_now};
use crate::{ApiError, Emulator, auth};

/// The audience the API server puts in tokens when a request names none.
const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

impl Emulator {
    /// Issues a token for ServiceAccount `namespace/name` that lasts `ttl` (no lower bound:
    /// tests use short ones to watch a token expire). `404` if the account does not exist.
    pub fn issue_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<(String, SystemTime), ApiError> {
        let uid = self
            .store()
            .account_uid(namespace, name)
            .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
        let expires = SystemTime::now() + ttl;
        let token = self.tokens().issue(namespace, name, &uid, expires);
        Ok((token, expires))
    }
}

/// Answers a TokenRequest `body` for ServiceAccount `namespace/name`.
pub(crate) fn token_request(
    emu: &Emulator,
    namespace: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let body_name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    emu.store().get(Kind::ServiceAccount, namespace, name)?;
    let lifetime = auth::token_lifetime(
        body.pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64),
    )
    .map_err(|why| {
        ApiError::invalid(
            "TokenRequest.authentication.k8s.io",
            "",
            format!(
                "spec.expirationSeconds: Invalid value: {}: {why}",
                body["spec"]["expirationSeconds"]
            ),
        )
    })?;
    let created = rfc3339_now();
    let (token, expires) = emu.issue_token(namespace, name, lifetime)?;
    let mut spec = body["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    if spec["audiences"].as_array().is_none_or(Vec::is_empty) {
        spec["audiences"] = json!([DEFAULT_AUDIENCE]);
    }
    spec["expirationSeconds"] = json!(lifetime.as_secs());
    if spec.get("boundObjectRef").is_none() {
        spec["boundObjectRef"] = Value::Null;
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "name": name, "namespace": namespace, "creationTimestamp": created },
        "spec": spec,
        "status": { "token": token, "expirationTimestamp": rfc3339(expires) },
    }))
}
