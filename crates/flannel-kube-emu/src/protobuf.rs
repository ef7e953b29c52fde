//! The protobuf request bodies the emulator reads: the TokenRequest and the
//! SelfSubjectAccessReview client-go's typed clients send (`kubectl create token`, `kubectl
//! auth can-i`), as the API server's protobuf envelope wraps them: the magic `k8s\0`, then a
//! `runtime.Unknown` holding the type and the raw message. Only the fields the emulator uses
//! are decoded (prost skips the rest); every other protobuf body stays `415`, as the crate
//! docs say.

use prost::Message;
use serde_json::{Value, json};

use crate::ApiError;

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\0";

/// `runtime.Unknown`.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

/// `runtime.TypeMeta`.
#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `authentication.k8s.io/v1` `TokenRequest` (metadata and spec).
#[derive(Clone, PartialEq, prost::Message)]
struct TokenRequest {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<TokenRequestSpec>,
}

/// `ObjectMeta` (the name only).
#[derive(Clone, PartialEq, prost::Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

/// `TokenRequestSpec` (audiences and lifetime; a bound object is not emulated).
#[derive(Clone, PartialEq, prost::Message)]
struct TokenRequestSpec {
    #[prost(string, repeated, tag = "1")]
    audiences: Vec<String>,
    #[prost(int64, optional, tag = "4")]
    expiration_seconds: Option<i64>,
}

/// `authorization.k8s.io/v1` `SelfSubjectAccessReview` (the spec).
#[derive(Clone, PartialEq, prost::Message)]
struct SelfSubjectAccessReview {
    #[prost(message, optional, tag = "2")]
    spec: Option<AccessReviewSpec>,
}

/// `SelfSubjectAccessReviewSpec`.
#[derive(Clone, PartialEq, prost::Message)]
struct AccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
}

/// `ResourceAttributes` (without the selectors).
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceAttributes {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
    #[prost(string, optional, tag = "3")]
    group: Option<String>,
    #[prost(string, optional, tag = "4")]
    version: Option<String>,
    #[prost(string, optional, tag = "5")]
    resource: Option<String>,
    #[prost(string, optional, tag = "6")]
    subresource: Option<String>,
    #[prost(string, optional, tag = "7")]
    name: Option<String>,
}

/// `NonResourceAttributes`.
#[derive(Clone, PartialEq, prost::Message)]
struct NonResourceAttributes {
    #[prost(string, optional, tag = "1")]
    path: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
}

fn undecodable(kind: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf {kind} cannot be decoded: {why}"))
}

/// The raw message of `kind` inside a protobuf envelope.
fn unwrap_envelope<M: Message + Default>(body: &[u8], kind: &str) -> Result<M, ApiError> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| undecodable(kind, "no k8s envelope"))?;
    let unknown = Unknown::decode(unknown).map_err(|e| undecodable(kind, e))?;
    let got = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    if got != kind {
        return Err(undecodable(kind, format!("kind {got:?}")));
    }
    M::decode(unknown.raw.unwrap_or_default().as_slice()).map_err(|e| undecodable(kind, e))
}

/// A protobuf SelfSubjectAccessReview body as the JSON object the JSON path reads.
pub fn self_subject_access_review(body: &[u8]) -> Result<Value, ApiError> {
    let review: SelfSubjectAccessReview = unwrap_envelope(body, "SelfSubjectAccessReview")?;
    let spec = review.spec.unwrap_or_default();
    let mut out = json!({ "spec": {} });
    if let Some(r) = spec.resource_attributes {
        let mut attrs = serde_json::Map::new();
        for (key, value) in [
            ("namespace", r.namespace),
            ("verb", r.verb),
            ("group", r.group),
            ("version", r.version),
            ("resource", r.resource),
            ("subresource", r.subresource),
            ("name", r.name),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                attrs.insert(key.to_string(), json!(v));
            }
        }
        out["spec"]["resourceAttributes"] = Value::Object(attrs);
    }
    if let Some(n) = spec.non_resource_attributes {
        out["spec"]["nonResourceAttributes"] = json!({
            "path": n.path.unwrap_or_default(),
            "verb": n.verb.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// A protobuf TokenRequest body as the JSON object the JSON path reads.
pub fn token_request(body: &[u8]) -> Result<Value, ApiError> {
    let req: TokenRequest = unwrap_envelope(body, "TokenRequest")?;
    let spec = req.spec.unwrap_or_default();
    let mut v = json!({
        "metadata": { "name": req.metadata.and_then(|m| m.name).unwrap_or_default() },
        "spec": { "audiences": spec.audiences },
    });
    if let Some(s) = spec.expiration_seconds {
        v["spec"]["expirationSeconds"] = json!(s);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_create_token_body() {
        let raw = TokenRequest {
            metadata: Some(ObjectMeta { name: None }),
            spec: Some(TokenRequestSpec {
                audiences: vec!["a".into()],
                expiration_seconds: Some(600),
            }),
        }
        .encode_to_vec();
        let envelope = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("authentication.k8s.io/v1".into()),
                kind: Some("TokenRequest".into()),
            }),
            raw: Some(raw),
        };
        let mut body = MAGIC.to_vec();
        body.extend(envelope.encode_to_vec());
        assert_eq!(
            token_request(&body).unwrap(),
            json!({"metadata": {"name": ""}, "spec": {"audiences": ["a"], "expirationSeconds": 600}})
        );
        assert_eq!(token_request(b"{}").unwrap_err().code, 400);
        assert_eq!(self_subject_access_review(&body).unwrap_err().code, 400);

        let raw = SelfSubjectAccessReview {
            spec: Some(AccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(String::new()),
                    verb: Some("list".into()),
                    resource: Some("pods".into()),
                    ..ResourceAttributes::default()
                }),
                non_resource_attributes: None,
            }),
        }
        .encode_to_vec();
        let mut body = MAGIC.to_vec();
        body.extend(
            Unknown {
                type_meta: Some(TypeMeta {
                    api_version: Some("authorization.k8s.io/v1".into()),
                    kind: Some("SelfSubjectAccessReview".into()),
                }),
                raw: Some(raw),
            }
            .encode_to_vec(),
        );
        assert_eq!(
            self_subject_access_review(&body).unwrap(),
            json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "pods"}}})
        );
    }
}
