//! `flannel-lab apply -f` and `delete -f`: multi-document YAML of Namespaces and
//! NetworkPolicies sent to the lab's API emulator, with kubectl's outcome lines
//! (`namespace/x created`, `networkpolicy.networking.k8s.io/deny configured`, `namespace "x"
//! deleted`).
//!
//! Every document is checked before anything is sent, so a file with a kind the lab does not
//! handle changes nothing. Apply creates an object, or replaces it (`PUT` with the stored
//! `resourceVersion`) when it exists; a replacement that changes nothing is `unchanged`.

use serde_json::{Map, Value};

use crate::error::{LabError, Result};
use crate::kube_client::{KubeClient, api_error};

/// A document of the file, resolved to its API paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// kubectl's name for it: `namespace/x`, `networkpolicy.networking.k8s.io/deny`.
    pub object: String,
    /// kubectl's resource phrase for deletions: `namespace`, `networkpolicy.networking.k8s.io`.
    resource: String,
    /// The collection (POST).
    collection: String,
    /// The object (GET, PUT, DELETE).
    item: String,
    /// The object as sent.
    body: Value,
}

/// What happened to one document.
#[derive(Debug)]
pub struct Outcome {
    /// `namespace/x`, ...
    pub object: String,
    /// `created`, `configured`, `unchanged`, `deleted`, or why it failed.
    pub result: Result<&'static str>,
}

impl Outcome {
    /// kubectl's line for it: `namespace/x created`, `namespace "x" deleted`, or for an
    /// API error `Error from server (NotFound): namespaces "x" not found`.
    pub fn line(&self) -> String {
        match &self.result {
            Ok(what) => format!("{} {what}", self.object),
            Err(LabError::Api {
                reason, message, ..
            }) if !message.is_empty() => format!("Error from server ({reason}): {message}"),
            Err(e) => format!("{}: {e}", self.object),
        }
    }
}

/// Parses `text` (multi-document YAML) into documents the lab can send, or says which
/// document it cannot handle (1-based index, kind).
pub fn parse_documents(text: &str) -> Result<Vec<Document>> {
    let docs = crate::manifest::yaml_documents(text)
        .map_err(|e| LabError::Invalid(format!("reading YAML: {e}")))?;
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| document(i + 1, doc))
        .collect()
}

fn document(index: usize, mut body: Value) -> Result<Document> {
    let field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = field(&body, "kind").unwrap_or_default();
    let api_version = field(&body, "apiVersion").unwrap_or_default();
    let bad = |why: String| LabError::Invalid(format!("document {index} (kind {kind:?}): {why}"));
    let name = body
        .get("metadata")
        .and_then(|m| field(m, "name"))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("metadata.name is missing".into()))?;
    match (kind.as_str(), api_version.as_str()) {
        ("Namespace", "v1") => {
            // The API server always sets this label; adding it here keeps `unchanged` honest.
            let meta = metadata(&mut body);
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(l) = labels.as_object_mut() {
                l.insert(
                    "kubernetes.io/metadata.name".into(),
                    Value::String(name.clone()),
                );
            }
            Ok(Document {
                object: format!("namespace/{name}"),
                resource: "namespace".into(),
                collection: "/api/v1/namespaces".into(),
                item: format!("/api/v1/namespaces/{name}"),
                body,
            })
        }
        ("NetworkPolicy", "networking.k8s.io/v1") => {
            let ns = body
                .get("metadata")
                .and_then(|m| field(m, "namespace"))
                .unwrap_or_else(|| "default".into());
            metadata(&mut body).insert("namespace".into(), Value::String(ns.clone()));
            let collection = format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies");
            Ok(Document {
                object: format!("networkpolicy.networking.k8s.io/{name}"),
                resource: "networkpolicy.networking.k8s.io".into(),
                item: format!("{collection}/{name}"),
                collection,
                body,
            })
        }
        ("Namespace" | "NetworkPolicy", _) => Err(bad(format!(
            "apiVersion {api_version:?} is not served by the lab (Namespace is v1, NetworkPolicy networking.k8s.io/v1)"
        ))),
        _ => Err(bad(
            "the lab applies only Namespaces and NetworkPolicies".into()
        )),
    }
}

fn metadata(body: &mut Value) -> &mut Map<String, Value> {
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = Value::Object(Map::new());
    }
    match body.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Applies one document: create, replace, or leave alone.
fn apply_one(client: &KubeClient, doc: &Document) -> Result<&'static str> {
    let (status, stored) = client.request("GET", &doc.item, "application/json", None)?;
    match status {
        404 => {
            client.expect_ok("POST", &doc.collection, "application/json", Some(&doc.body))?;
            Ok("created")
        }
        200 => {
            // Replace; the API server's defaults apply again, and a replacement that changes
            // nothing keeps the resourceVersion: that is `unchanged`.
            let rv = stored["metadata"]["resourceVersion"].clone();
            let mut body = doc.body.clone();
            metadata(&mut body).insert("resourceVersion".into(), rv.clone());
            let now = client.expect_ok("PUT", &doc.item, "application/json", Some(&body))?;
            Ok(if now["metadata"]["resourceVersion"] == rv {
                "unchanged"
            } else {
                "configured"
            })
        }
        _ => Err(api_error("GET", &doc.item, status, &stored)),
    }
}

/// Applies every document of `text` in order; an API error for one does not stop the others.
/// Fails before sending anything when a document cannot be handled.
pub fn apply(client: &KubeClient, text: &str) -> Result<Vec<Outcome>> {
    Ok(parse_documents(text)?
        .iter()
        .map(|d| Outcome {
            object: d.object.clone(),
            result: apply_one(client, d),
        })
        .collect())
}

/// Deletes the object of every document of `text`, in order; one that does not exist is an
/// error for that document (as `kubectl delete -f` says NotFound), the others go on.
pub fn delete(client: &KubeClient, text: &str) -> Result<Vec<Outcome>> {
    Ok(parse_documents(text)?
        .iter()
        .map(|d| {
            let name = d.item.rsplit('/').next().unwrap_or_default();
            let result = match client.request("DELETE", &d.item, "application/json", None) {
                Ok((200..=299, _)) => Ok("deleted"),
                Ok((status, v)) => Err(api_error("DELETE", &d.item, status, &v)),
                Err(e) => Err(e),
            };
            Outcome {
                object: match &result {
                    Ok(_) => format!("{} {name:?}", d.resource),
                    Err(_) => d.object.clone(),
                },
                result,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_resolve_to_api_paths() {
        let docs = parse_documents(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {team: a}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: x\nspec:\n  podSelector: {}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d2}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].object, "namespace/x");
        assert_eq!(docs[0].item, "/api/v1/namespaces/x");
        assert_eq!(
            docs[0].body["metadata"]["labels"],
            json!({"team": "a", "kubernetes.io/metadata.name": "x"})
        );
        assert_eq!(docs[1].object, "networkpolicy.networking.k8s.io/deny");
        assert_eq!(
            docs[1].item,
            "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/deny"
        );
        assert_eq!(
            docs[2].collection,
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"
        );
    }

    #[test]
    fn other_kinds_are_refused_by_index_and_kind() {
        let e = parse_documents(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("document 2 (kind \"Deployment\")"), "{e}");
        let e = parse_documents("apiVersion: v1\nkind: Namespace\nmetadata: {}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document 1") && e.contains("metadata.name"),
            "{e}"
        );
        let e = parse_documents(
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("apiVersion"), "{e}");
    }
}
