//! What the API server does to a `v1` ConfigMap on create and update (`ValidateConfigMap`,
//! `ValidateConfigMapUpdate`): `data` and `binaryData` map keys to strings, keys are config
//! keys (`[-._a-zA-Z0-9]+`, not `.` or `..`) and appear in only one of the two, the whole is
//! at most 1 MiB, and a ConfigMap marked `immutable` keeps its data (and the mark) for good. A
//! ConfigMap has no spec and no status: fields it does not have are dropped, as the API's
//! decoder drops them.

use serde_json::Value;

use crate::status::ApiError;

/// The largest `data` plus `binaryData` the API accepts (`MaxConfigMapSize`).
pub const MAX_SIZE: usize = 1024 * 1024;

/// The top-level fields of a ConfigMap; others are dropped.
const FIELDS: [&str; 6] = [
    "apiVersion",
    "kind",
    "metadata",
    "data",
    "binaryData",
    "immutable",
];

/// Decoding and validation of a ConfigMap about to be stored.
pub(crate) fn validate(name: &str, obj: &mut Value) -> Result<(), ApiError> {
    if let Value::Object(m) = obj {
        m.retain(|k, _| FIELDS.contains(&k.as_str()));
    }
    let mut errors = Vec::new();
    let mut size = 0;
    for field in ["data", "binaryData"] {
        let entries = match &obj[field] {
            Value::Null => continue,
            Value::Object(m) => m,
            other => return Err(undecodable(field, other)),
        };
        for (key, value) in entries {
            let Some(text) = value.as_str() else {
                return Err(undecodable(field, value));
            };
            size += key.len() + text.len();
            if let Some(why) = config_key_error(key) {
                errors.push(format!("{field}[{key}]: Invalid value: {key:?}: {why}"));
            }
            if field == "binaryData" && obj["data"].get(key).is_some() {
                errors.push(format!(
                    "{field}[{key}]: Invalid value: {key:?}: duplicate of key present in data"
                ));
            }
        }
    }
    if size > MAX_SIZE {
        errors.push(format!("[]: Too long: must have at most {MAX_SIZE} bytes"));
    }
    invalid_if_any(name, errors)
}

/// The rules of an update: an immutable ConfigMap keeps its data and stays immutable.
pub(crate) fn validate_update(name: &str, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    validate(name, new)?;
    if old["immutable"] != true {
        return Ok(());
    }
    let mut errors = Vec::new();
    for field in ["immutable", "data", "binaryData"] {
        if old[field] != new[field] {
            errors.push(format!(
                "{field}: Forbidden: field is immutable when `immutable` is set"
            ));
        }
    }
    invalid_if_any(name, errors)
}

/// Why `key` is not a valid config key (`IsConfigMapKey`), if it is not.
fn config_key_error(key: &str) -> Option<&'static str> {
    if key.is_empty()
        || key.len() > 253
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        );
    }
    match key {
        "." => Some("must not be '.'"),
        ".." => Some("must not be '..'"),
        k if k.starts_with("..") => Some("must not start with '..'"),
        _ => None,
    }
}

/// `400 BadRequest` for a field that does not decode into a `map[string]string`.
fn undecodable(field: &str, value: &Value) -> ApiError {
    let what = match value {
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::String(_) | Value::Null => "string",
    };
    ApiError::bad_request(format!(
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal {what} into Go struct field ConfigMap.{field} of type string"
    ))
}

/// `422 Invalid` with every error, worded as the API joins them.
fn invalid_if_any(name: &str, errors: Vec<String>) -> Result<(), ApiError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(ApiError::invalid("ConfigMap", name, errors.concat())),
        _ => Err(ApiError::invalid(
            "ConfigMap",
            name,
            format!("[{}]", errors.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_is_strings_under_config_keys() {
        let mut cm = json!({"metadata": {"name": "c"}, "data": {"net-conf.json": "{}"},
                            "status": {"x": 1}});
        validate("c", &mut cm).unwrap();
        assert!(cm.get("status").is_none(), "a ConfigMap has no status");
        let mut bad = json!({"data": {"a/b": "x", "..": "y"}});
        let e = validate("c", &mut bad).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.starts_with(
                "ConfigMap \"c\" is invalid: [data[..]: Invalid value: \"..\": must not be '..', data[a/b]: Invalid value: \"a/b\": a valid config key"
            ),
            "{}",
            e.message
        );
        let e = validate("c", &mut json!({"data": {"a": 1}})).unwrap_err();
        assert_eq!(e.code, 400);
        let mut dup = json!({"data": {"a": "x"}, "binaryData": {"a": "eA=="}});
        assert!(
            validate("c", &mut dup)
                .unwrap_err()
                .message
                .contains("duplicate of key present in data")
        );
        let mut big = json!({"data": {"a": "x".repeat(MAX_SIZE)}});
        assert!(
            validate("c", &mut big)
                .unwrap_err()
                .message
                .contains("Too long")
        );
    }

    #[test]
    fn immutable_config_maps_keep_their_data() {
        let old = json!({"data": {"a": "1"}, "immutable": true});
        let mut relabelled = old.clone();
        relabelled["metadata"] = json!({"labels": {"x": "y"}});
        validate_update("c", &old, &mut relabelled).unwrap();
        let mut changed = json!({"data": {"a": "2"}, "immutable": false});
        let e = validate_update("c", &old, &mut changed).unwrap_err();
        assert_eq!(
            e.message,
            "ConfigMap \"c\" is invalid: [immutable: Forbidden: field is immutable when `immutable` is set, data: Forbidden: field is immutable when `immutable` is set]"
        );
        let mutable = json!({"data": {"a": "1"}});
        validate_update("c", &mutable, &mut json!({"data": {"a": "2"}})).unwrap();
    }
}
