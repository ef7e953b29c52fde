//! The one protobuf request body the emulator reads: the TokenRequest client-go's typed client
//! sends (`kubectl create token`), as the API server's protobuf envelope wraps it: the magic
//! `k8s\0`, then a `runtime.Unknown` holding the type and the raw `TokenRequest` message. Only
//! the fields the emulator uses are decoded (prost skips the rest); everything else protobuf
//! stays `415`, as the crate docs say.

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

fn undecodable(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "the protobuf TokenRequest cannot be decoded: {why}"
    ))
}

/// A protobuf TokenRequest body as the JSON object the JSON path reads.
pub fn token_request(body: &[u8]) -> Result<Value, ApiError> {
    use prost::Message;
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| undecodable("no k8s envelope"))?;
    let unknown = Unknown::decode(unknown).map_err(undecodable)?;
    let kind = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    if kind != "TokenRequest" {
        return Err(undecodable(format!("kind {kind:?}")));
    }
    let req =
        TokenRequest::decode(unknown.raw.unwrap_or_default().as_slice()).map_err(undecodable)?;
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
    use prost::Message;

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
    }
}
