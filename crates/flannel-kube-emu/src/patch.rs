//! JSON merge patch (RFC 7386) and the subset of Kubernetes strategic merge patch that the
//! emulated kinds need (a ConfigMap has no list; a DaemonSet's template merges as a Pod does).
//!
//! Strategic merge differs from a plain merge patch only for lists: a list whose Go field
//! carries `patchStrategy:"merge"` is merged element by element instead of replaced. For lists
//! of objects the elements are matched by their `patchMergeKey` (Node `status.conditions` by
//! `type`, which is how a flanneld patch of `NetworkUnavailable` leaves `Ready` alone); lists
//! of scalars with the merge strategy are unions. The table [`merge_key`] lists the fields of
//! Node, Pod and DaemonSet with a merge strategy, taken from the Kubernetes API types.
//!
//! Directives understood: `$patch: delete` / `$patch: replace` on maps and on list elements,
//! `$deleteFromPrimitiveList/<field>`, and `$setElementOrder/<field>` (accepted; element order is
//! not emulated: merged elements keep their place and new ones are appended), and
//! `$retainKeys` (after the merge, the map keeps only the keys listed: how `kubectl apply`
//! clears the fields of a union such as a DaemonSet's `updateStrategy` or a volume's source).

use serde_json::{Map, Value};

use crate::status::ApiError;

/// How a list field is merged by a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// No strategy in the API types: the patch's list replaces the original.
    Replace,
    /// Elements are objects matched by this key.
    MergeByKey(&'static str),
    /// Elements are scalars; the result is the union (original order, then new values).
    MergePrimitives,
}

/// The merge strategy of the list at `path` (object keys from the root, list indices skipped)
/// for the given kind, from the `patchStrategy`/`patchMergeKey` tags of the Kubernetes types.
pub fn merge_key(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    match (kind, path) {
        (_, ["metadata", "ownerReferences"]) => MergeByKey("uid"),
        (_, ["metadata", "finalizers"]) => MergePrimitives,
        ("Node", ["spec", "podCIDRs"]) => MergePrimitives,
        ("Node", ["status", "conditions"]) => MergeByKey("type"),
        ("Node", ["status", "addresses"]) => MergeByKey("type"),
        ("Node", ["status", "volumesAttached"]) => MergeByKey("name"),
        ("Pod", ["spec", "containers"]) => MergeByKey("name"),
        ("Pod", ["spec", "initContainers"]) => MergeByKey("name"),
        ("Pod", ["spec", "volumes"]) => MergeByKey("name"),
        ("Pod", ["spec", "tolerations"]) => Replace,
        ("Pod", ["spec", "containers" | "initContainers", "env"]) => MergeByKey("name"),
        ("Pod", ["spec", "containers" | "initContainers", "ports"]) => MergeByKey("containerPort"),
        ("Pod", ["spec", "containers" | "initContainers", "volumeMounts"]) => {
            MergeByKey("mountPath")
        }
        ("Pod", ["spec", "imagePullSecrets"]) => MergeByKey("name"),
        ("Pod", ["status", "conditions"]) => MergeByKey("type"),
        ("Pod", ["status", "podIPs"]) => MergeByKey("ip"),
        // A DaemonSet's pod template is a Pod's metadata and spec.
        ("DaemonSet", ["spec", "template", "spec", rest @ ..]) => {
            let mut inner = vec!["spec"];
            inner.extend_from_slice(rest);
            merge_key("Pod", &inner)
        }
        ("DaemonSet", ["status", "conditions"]) => MergeByKey("type"),
        _ => Replace,
    }
}

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` deletes, anything else
/// (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
) -> Result<(), ApiError> {
    let Value::Object(p) = patch else {
        return Err(ApiError::bad_request(
            "strategic merge patch: the patch must be a JSON object",
        ));
    };
    let mut path = Vec::new();
    if let Some(v) = merge_map(target, p, kind, &mut path)? {
        *target = v;
    }
    Ok(())
}

/// Merges patch map `p` into `target` (an object, or anything else which is then replaced).
/// Returns `Some(replacement)` when the whole value is replaced or deleted (`Null`).
fn merge_map(
    target: &mut Value,
    p: &Map<String, Value>,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<Option<Value>, ApiError> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(Some(Value::Null)),
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Some(Value::Object(m)));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "strategic merge patch: unknown $patch directive {other:?}"
            )));
        }
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(None);
    };
    let retain = match p.get("$retainKeys") {
        None => None,
        Some(Value::Array(keys)) if keys.iter().all(Value::is_string) => Some(keys.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "strategic merge patch: $retainKeys must be a list of strings",
            ));
        }
    };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(remove) = v else {
                return Err(ApiError::bad_request(format!(
                    "strategic merge patch: {k} must be a list"
                )));
            };
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        let result = merge_value(t.get_mut(k), v, kind, path);
        path.pop();
        match result? {
            Merged::InPlace => {}
            Merged::Replace(new) if new.is_null() => {
                t.remove(k);
            }
            Merged::Replace(new) => {
                t.insert(k.clone(), new);
            }
        }
    }
    if let Some(keys) = retain {
        t.retain(|k, _| keys.iter().any(|r| r == k));
    }
    Ok(None)
}

enum Merged {
    InPlace,
    Replace(Value),
}

fn merge_value(
    orig: Option<&mut Value>,
    v: &Value,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<Merged, ApiError> {
    match v {
        Value::Object(pm) => match orig {
            Some(o @ Value::Object(_)) => Ok(match merge_map(o, pm, kind, path)? {
                Some(new) => Merged::Replace(new),
                None => Merged::InPlace,
            }),
            _ => {
                let mut fresh = Value::Object(Map::new());
                Ok(match merge_map(&mut fresh, pm, kind, path)? {
                    Some(new) => Merged::Replace(new),
                    None => Merged::Replace(strip_directives(fresh)),
                })
            }
        },
        Value::Array(items) => {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            match (merge_key(kind, &keys), orig) {
                (ListStrategy::MergeByKey(key), Some(Value::Array(list))) => {
                    merge_keyed_list(list, items, key, kind, path)?;
                    Ok(Merged::InPlace)
                }
                (ListStrategy::MergePrimitives, Some(Value::Array(list))) => {
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                    Ok(Merged::InPlace)
                }
                _ => Ok(Merged::Replace(Value::Array(
                    items
                        .iter()
                        .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                        .cloned()
                        .map(strip_directives)
                        .collect(),
                ))),
            }
        }
        other => Ok(Merged::Replace(other.clone())),
    }
}

fn merge_keyed_list(
    list: &mut Vec<Value>,
    items: &[Value],
    key: &str,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), ApiError> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace") && i.get(key).is_none())
    {
        // `[{"$patch":"replace"}, ...]`: the rest of the patch list replaces the original.
        *list = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .map(strip_directives)
            .collect();
        return Ok(());
    }
    for item in items {
        let Some(Value::Object(pm)) = Some(item) else {
            continue;
        };
        let Some(k) = pm.get(key) else {
            return Err(ApiError::bad_request(format!(
                "strategic merge patch: map in list {} is missing the merge key {key:?}",
                path.join(".")
            )));
        };
        let pos = list.iter().position(|o| o.get(key) == Some(k));
        match (pos, pm.get("$patch").and_then(Value::as_str)) {
            (Some(i), Some("delete")) => {
                list.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => {
                if let Some(new) = merge_map(&mut list[i], pm, kind, path)? {
                    if new.is_null() {
                        list.remove(i);
                    } else {
                        list[i] = new;
                    }
                }
            }
            (None, _) => list.push(strip_directives(item.clone())),
        }
    }
    Ok(())
}

/// Removes `$`-directives from a value that is inserted rather than merged.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"},"l":[1,2]});
        merge_patch(&mut t, &json!({"a":"z","c":{"f":null},"l":[3]}));
        assert_eq!(t, json!({"a":"z","c":{"d":"e"},"l":[3]}));
    }

    #[test]
    fn conditions_merge_by_type() {
        let mut node = json!({"status":{"conditions":[
            {"type":"Ready","status":"True"},
            {"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated"}]}});
        strategic_merge_patch(
            &mut node,
            &json!({"status":{"conditions":[
                {"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"},
                {"type":"MemoryPressure","status":"False"}]}}),
            "Node",
        )
        .unwrap();
        assert_eq!(
            node["status"]["conditions"],
            json!([
                {"type":"Ready","status":"True"},
                {"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"},
                {"type":"MemoryPressure","status":"False"}
            ])
        );
        // The same patch as a merge patch replaces the list.
        let mut n2 = json!({"status":{"conditions":[{"type":"Ready","status":"True"}]}});
        merge_patch(
            &mut n2,
            &json!({"status":{"conditions":[{"type":"NetworkUnavailable","status":"False"}]}}),
        );
        assert_eq!(
            n2["status"]["conditions"],
            json!([{"type":"NetworkUnavailable","status":"False"}])
        );
    }

    #[test]
    fn directives() {
        let mut node = json!({"metadata":{"annotations":{"a":"1","b":"2"},"finalizers":["x","y"]},
            "spec":{"podCIDRs":["10.0.0.0/24"],"taints":[{"key":"k","effect":"NoSchedule"}]},
            "status":{"conditions":[{"type":"Ready"},{"type":"Gone"}]}});
        strategic_merge_patch(
            &mut node,
            &json!({
                "metadata":{"annotations":{"a":null,"c":"3"},
                            "$deleteFromPrimitiveList/finalizers":["x"]},
                "spec":{"podCIDRs":["fd00::/64"],"taints":[{"key":"new","effect":"NoExecute"}]},
                "status":{"conditions":[{"type":"Gone","$patch":"delete"}],
                          "$setElementOrder/conditions":[{"type":"Ready"}]}
            }),
            "Node",
        )
        .unwrap();
        assert_eq!(
            node,
            json!({"metadata":{"annotations":{"b":"2","c":"3"},"finalizers":["y"]},
                "spec":{"podCIDRs":["10.0.0.0/24","fd00::/64"],"taints":[{"key":"new","effect":"NoExecute"}]},
                "status":{"conditions":[{"type":"Ready"}]}})
        );
        let mut m = json!({"metadata":{"labels":{"a":"1"}}});
        strategic_merge_patch(
            &mut m,
            &json!({"metadata":{"labels":{"$patch":"replace","b":"2"}}}),
            "Node",
        )
        .unwrap();
        assert_eq!(m, json!({"metadata":{"labels":{"b":"2"}}}));
        let e = strategic_merge_patch(&mut m, &json!({"$retainKeys":"a"}), "Node").unwrap_err();
        assert_eq!(e.code, 400);
        // kubectl apply switching a DaemonSet to OnDelete clears rollingUpdate.
        let mut ds = json!({"spec":{"updateStrategy":{"type":"RollingUpdate",
                                                      "rollingUpdate":{"maxUnavailable":1}}}});
        strategic_merge_patch(
            &mut ds,
            &json!({"spec":{"updateStrategy":{"$retainKeys":["type"],"type":"OnDelete"}}}),
            "DaemonSet",
        )
        .unwrap();
        assert_eq!(ds, json!({"spec":{"updateStrategy":{"type":"OnDelete"}}}));
        // A DaemonSet's template containers merge by name, as a Pod's.
        let mut ds = json!({"spec":{"template":{"spec":{"containers":[
            {"name":"a","image":"1"},{"name":"b","image":"2"}]}}}});
        strategic_merge_patch(
            &mut ds,
            &json!({"spec":{"template":{"spec":{"containers":[{"name":"b","image":"3"}]}}}}),
            "DaemonSet",
        )
        .unwrap();
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"],
            json!([{"name":"a","image":"1"},{"name":"b","image":"3"}])
        );
        let e = strategic_merge_patch(
            &mut m,
            &json!({"status":{"conditions":[{"status":"x"}]}}),
            "Node",
        );
        // No original list: the patch list is taken as it is.
        assert!(e.is_ok());
        let e = strategic_merge_patch(
            &mut m,
            &json!({"status":{"conditions":[{"status":"y"}]}}),
            "Node",
        )
        .unwrap_err();
        assert!(e.message.contains("merge key"), "{}", e.message);
    }
}
