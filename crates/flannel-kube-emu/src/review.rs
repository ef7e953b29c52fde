//! The create-only review APIs kubectl asks questions with: `SelfSubjectReview`
//! (`authentication.k8s.io/v1`, `kubectl auth whoami`: who the server thinks the caller is)
//! and `SelfSubjectAccessReview` (`authorization.k8s.io/v1`, `kubectl auth can-i`: would the
//! authorizer allow this). Both are answered from the same authentication and authorizer the
//! requests themselves go through ([`crate::gate`]). With the default [`crate::Security`]
//! (nothing checked) the caller is reported as anonymous and everything is allowed.

use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::rbac::Attributes;
use crate::store::rfc3339_now;
use crate::{ApiError, Emulator};

/// The `SelfSubjectReview` for `user`.
pub(crate) fn self_subject_review(user: Option<UserInfo>) -> Value {
    let user = user.unwrap_or_else(UserInfo::anonymous);
    let mut info = json!({ "username": user.name, "groups": user.groups });
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": rfc3339_now() },
        "status": { "userInfo": info },
    })
}

/// The request a review's spec describes, or 422 when it names neither kind of request.
fn review_attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let resource = &spec["resourceAttributes"];
    let non_resource = &spec["nonResourceAttributes"];
    match (resource.is_object(), non_resource.is_object()) {
        (true, false) => Ok(Attributes {
            verb: text(resource, "verb"),
            path: String::new(),
            resource_request: true,
            api_group: text(resource, "group"),
            api_version: text(resource, "version"),
            namespace: text(resource, "namespace"),
            resource: text(resource, "resource"),
            subresource: text(resource, "subresource"),
            name: text(resource, "name"),
        }),
        (false, true) => Ok(Attributes {
            verb: text(non_resource, "verb"),
            path: text(non_resource, "path"),
            ..Attributes::default()
        }),
        _ => Err(ApiError::invalid(
            "SelfSubjectAccessReview.authorization.k8s.io",
            "",
            "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// Answers a `SelfSubjectAccessReview` `body` for `user`.
pub(crate) fn self_subject_access_review(
    emu: &Emulator,
    user: Option<UserInfo>,
    body: Value,
) -> Result<Value, ApiError> {
    let spec = body["spec"].clone();
    let attrs = review_attributes(&spec)?;
    let decision = match &user {
        Some(user) => crate::gate::decide(emu, user, &attrs),
        None => Ok(()),
    };
    let status = match decision {
        Ok(()) => json!({ "allowed": true }),
        Err(reason) if reason.is_empty() => json!({ "allowed": false }),
        Err(reason) => json!({ "allowed": false, "reason": reason }),
    };
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": { "creationTimestamp": rfc3339_now() },
        "spec": spec,
        "status": status,
    }))
}
