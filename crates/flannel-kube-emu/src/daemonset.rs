//! What the API server does to an `apps/v1` DaemonSet on create and update, reduced to what a
//! client can observe (`pkg/registry/apps/daemonset` and its validation):
//!
//! * **defaults**: `spec.updateStrategy` `RollingUpdate` with `maxUnavailable: 1` and
//!   `maxSurge: 0`, `spec.revisionHistoryLimit: 10`;
//! * **generation**: `metadata.generation` starts at 1 and goes up with every change of the
//!   spec, and the `deprecated.daemonset.template.generation` annotation (how `apps/v1` shows the
//!   template generation the controller labels its pods with) with every change of the pod
//!   template; both are the server's, whatever a client sends;
//! * **status**: a new DaemonSet starts with an empty status (the four counters that are never
//!   omitted, at 0), which only `daemonsets/<n>/status` changes; counters that are 0 and may be
//!   omitted are, as the API's JSON encoding leaves them out;
//! * **validation**: a selector is required, must not be empty, must select the template's
//!   labels and cannot change; the template needs containers with images and
//!   `restartPolicy: Always`; status counters cannot be negative.

use serde_json::{Map, Value, json};

use crate::selector::{label_selector_matches, label_selector_string};
use crate::status::ApiError;
use crate::store::{Kind, Subresource};

/// The annotation carrying the template generation in `apps/v1` (the pods' label
/// `pod-template-generation` takes its value).
pub const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

/// Status counters the API always writes (no `omitempty`).
const REQUIRED_COUNTERS: [&str; 4] = [
    "currentNumberScheduled",
    "numberMisscheduled",
    "desiredNumberScheduled",
    "numberReady",
];

/// Status counters left out when 0 (`omitempty`).
const OPTIONAL_COUNTERS: [&str; 5] = [
    "observedGeneration",
    "updatedNumberScheduled",
    "numberAvailable",
    "numberUnavailable",
    "collisionCount",
];

/// Defaulting, validation, generation and an empty status for a new DaemonSet.
pub(crate) fn prepare_create(name: &str, obj: &mut Value) -> Result<(), ApiError> {
    default_spec(obj);
    invalid_if_any(name, validate_spec(obj))?;
    obj["metadata"]["generation"] = json!(1);
    set_template_generation(obj, 1);
    obj["status"] = json!({});
    normalize_status(name, &mut obj["status"])
}

/// An update of the object (`Main`: spec and metadata) or of its status; the other half was
/// already taken from `old`.
pub(crate) fn prepare_update(
    name: &str,
    old: &Value,
    new: &mut Value,
    sub: Subresource,
) -> Result<(), ApiError> {
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let template_generation = template_generation(old);
    match sub {
        Subresource::Main => {
            default_spec(new);
            let mut errors = Vec::new();
            if new["spec"]["selector"] != old["spec"]["selector"] {
                errors.push(format!(
                    "spec.selector: Invalid value: {}: field is immutable",
                    go_label_selector(&new["spec"]["selector"])
                ));
            }
            errors.extend(validate_spec(new));
            invalid_if_any(name, errors)?;
            let (g, t) = if new["spec"]["template"] != old["spec"]["template"] {
                (generation + 1, template_generation + 1)
            } else if new["spec"] != old["spec"] {
                (generation + 1, template_generation)
            } else {
                (generation, template_generation)
            };
            new["metadata"]["generation"] = json!(g);
            set_template_generation(new, t);
        }
        Subresource::Status => {
            new["metadata"]["generation"] = json!(generation);
            set_template_generation(new, template_generation);
            if !new["status"].is_object() {
                new["status"] = json!({});
            }
            normalize_status(name, &mut new["status"])?;
        }
    }
    Ok(())
}

/// The template generation a DaemonSet carries (1 when the annotation is missing).
pub fn template_generation(ds: &Value) -> i64 {
    ds.pointer("/metadata/annotations")
        .and_then(|a| a.get(TEMPLATE_GENERATION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn set_template_generation(obj: &mut Value, generation: i64) {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][TEMPLATE_GENERATION] = json!(generation.to_string());
}

/// `SetDefaults_DaemonSet`.
fn default_spec(obj: &mut Value) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if !spec["updateStrategy"].is_object() {
        spec["updateStrategy"] = json!({});
    }
    let strategy = &mut spec["updateStrategy"];
    if strategy["type"].as_str().is_none_or(str::is_empty) {
        strategy["type"] = json!("RollingUpdate");
    }
    if strategy["type"] == "RollingUpdate" {
        if !strategy["rollingUpdate"].is_object() {
            strategy["rollingUpdate"] = json!({});
        }
        let rolling = &mut strategy["rollingUpdate"];
        if rolling["maxUnavailable"].is_null() {
            rolling["maxUnavailable"] = json!(1);
        }
        if rolling["maxSurge"].is_null() {
            rolling["maxSurge"] = json!(0);
        }
    }
    if spec["revisionHistoryLimit"].is_null() {
        spec["revisionHistoryLimit"] = json!(10);
    }
}

/// `ValidateDaemonSetSpec`, the parts clients run into.
fn validate_spec(obj: &Value) -> Vec<String> {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    let labels = &spec["template"]["metadata"]["labels"];
    let mut errors = Vec::new();
    if selector.is_null() {
        errors.push("spec.selector: Required value".to_string());
    } else if label_selector_string(selector).is_none() {
        errors.push(format!(
            "spec.selector: Invalid value: {}: invalid label selector",
            go_label_selector(selector)
        ));
    } else if label_selector_string(selector).is_some_and(|s| s.is_empty()) {
        errors.push(format!(
            "spec.selector: Invalid value: {}: empty selector is invalid for daemonset",
            go_label_selector(selector)
        ));
    }
    if !label_selector_matches(selector, labels) {
        errors.push(format!(
            "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
            go_string_map(labels)
        ));
    }
    let pod = &spec["template"]["spec"];
    match pod["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                    errors.push(format!(
                        "spec.template.spec.containers[{i}].image: Required value"
                    ));
                }
            }
        }
        _ => errors.push("spec.template.spec.containers: Required value".to_string()),
    }
    match pod["restartPolicy"].as_str() {
        None | Some("Always") => {}
        Some(other) => errors.push(format!(
            "spec.template.spec.restartPolicy: Unsupported value: {other:?}: supported values: \"Always\""
        )),
    }
    errors
}

/// Writes the status as the API encodes it: the four required counters always, the others
/// only when not 0; every counter an integer that is not negative.
fn normalize_status(name: &str, status: &mut Value) -> Result<(), ApiError> {
    let Value::Object(m) = status else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for key in REQUIRED_COUNTERS.iter().chain(&OPTIONAL_COUNTERS) {
        let n = match m.get(*key) {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "DaemonSet in version \"v1\" cannot be handled as a DaemonSet: status.{key}: {v} is not an integer"
                ))
            })?,
        };
        if n < 0 {
            errors.push(format!(
                "status.{key}: Invalid value: {n}: must be greater than or equal to 0"
            ));
        }
        if n == 0 && OPTIONAL_COUNTERS.contains(key) {
            m.remove(*key);
        } else {
            m.insert((*key).to_string(), json!(n));
        }
    }
    invalid_if_any(name, errors)
}

/// `422 Invalid` with every error, worded as the API joins them.
fn invalid_if_any(name: &str, errors: Vec<String>) -> Result<(), ApiError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(ApiError::invalid(
            Kind::DaemonSet.qualified_name(),
            name,
            errors.concat(),
        )),
        _ => Err(ApiError::invalid(
            Kind::DaemonSet.qualified_name(),
            name,
            format!("[{}]", errors.join(", ")),
        )),
    }
}

/// A `map[string]string` as Go's `%#v` prints it in validation messages.
fn go_string_map(labels: &Value) -> String {
    let empty = Map::new();
    let m = labels.as_object().unwrap_or(&empty);
    if m.is_empty() {
        return "map[string]string(nil)".into();
    }
    let mut pairs: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

/// A `LabelSelector` as its generated `String()` prints it in validation messages.
fn go_label_selector(sel: &Value) -> String {
    if sel.is_null() {
        return "null".into();
    }
    let mut labels: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {},", v.as_str().unwrap_or_default()))
        .collect();
    labels.sort();
    let exprs: Vec<String> = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}},",
                e["key"].as_str().unwrap_or_default(),
                e["operator"].as_str().unwrap_or_default(),
                e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{}}},MatchExpressions:[]LabelSelectorRequirement{{{}}},}}",
        labels.join(""),
        exprs.join("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Value {
        json!({"metadata": {"name": "kube-flannel-ds"},
               "spec": {"selector": {"matchLabels": {"app": "flannel"}},
                        "template": {"metadata": {"labels": {"app": "flannel", "tier": "node"}},
                                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    #[test]
    fn create_defaults_and_starts_at_generation_one() {
        let mut d = ds();
        prepare_create("kube-flannel-ds", &mut d).unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["metadata"]["annotations"][TEMPLATE_GENERATION], "1");
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            d["status"],
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
                   "desiredNumberScheduled": 0, "numberReady": 0})
        );
    }

    #[test]
    fn generation_follows_the_spec_and_the_template() {
        let mut old = ds();
        prepare_create("x", &mut old).unwrap();
        let mut same = old.clone();
        same["metadata"]["labels"] = json!({"a": "b"});
        prepare_update("x", &old, &mut same, Subresource::Main).unwrap();
        assert_eq!(same["metadata"]["generation"], 1, "metadata is not spec");
        let mut spec = old.clone();
        spec["spec"]["minReadySeconds"] = json!(5);
        prepare_update("x", &old, &mut spec, Subresource::Main).unwrap();
        assert_eq!(spec["metadata"]["generation"], 2);
        assert_eq!(spec["metadata"]["annotations"][TEMPLATE_GENERATION], "1");
        let mut template = old.clone();
        template["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
        template["metadata"]["annotations"][TEMPLATE_GENERATION] = json!("9");
        prepare_update("x", &old, &mut template, Subresource::Main).unwrap();
        assert_eq!(template["metadata"]["generation"], 2);
        assert_eq!(
            template["metadata"]["annotations"][TEMPLATE_GENERATION],
            "2"
        );
    }

    #[test]
    fn validation_words_errors_as_the_api() {
        let mut none = ds();
        none["spec"]["selector"] = Value::Null;
        let e = prepare_create("x", &mut none).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "DaemonSet.apps \"x\" is invalid: [spec.selector: Required value, spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"flannel\", \"tier\":\"node\"}: `selector` does not match template `labels`]"
        );
        let mut empty = ds();
        empty["spec"]["selector"] = json!({});
        let e = prepare_create("x", &mut empty).unwrap_err();
        assert!(
            e.message
                .ends_with("empty selector is invalid for daemonset"),
            "{}",
            e.message
        );
        let mut old = ds();
        prepare_create("x", &mut old).unwrap();
        let mut moved = old.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"tier": "node"}});
        let e = prepare_update("x", &old, &mut moved, Subresource::Main).unwrap_err();
        assert_eq!(
            e.message,
            "DaemonSet.apps \"x\" is invalid: spec.selector: Invalid value: &LabelSelector{MatchLabels:map[string]string{tier: node,},MatchExpressions:[]LabelSelectorRequirement{},}: field is immutable"
        );
        let mut never = ds();
        never["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert!(
            prepare_create("x", &mut never)
                .unwrap_err()
                .message
                .contains("restartPolicy: Unsupported value: \"Never\"")
        );
    }

    #[test]
    fn status_counters_are_encoded_as_the_api_does() {
        let mut old = ds();
        prepare_create("x", &mut old).unwrap();
        let mut new = old.clone();
        new["status"] = json!({"desiredNumberScheduled": 2, "numberReady": 1,
                               "numberAvailable": 0, "observedGeneration": 1});
        prepare_update("x", &old, &mut new, Subresource::Status).unwrap();
        assert_eq!(
            new["status"],
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
                   "desiredNumberScheduled": 2, "numberReady": 1, "observedGeneration": 1})
        );
        new["status"]["numberReady"] = json!(-1);
        let e = prepare_update("x", &old, &mut new, Subresource::Status).unwrap_err();
        assert!(
            e.message.ends_with(
                "status.numberReady: Invalid value: -1: must be greater than or equal to 0"
            ),
            "{}",
            e.message
        );
    }
}
