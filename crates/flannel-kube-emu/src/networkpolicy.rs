//! What the API server does to a `networking.k8s.io/v1` NetworkPolicy on create and update,
//! reduced to what a client can observe (`pkg/registry/networking/networkpolicy`, the v1
//! defaults and `ValidateNetworkPolicy`):
//!
//! * **defaults**: a missing `spec.podSelector` is `{}`; every port without a protocol gets
//!   `TCP`; `spec.policyTypes`, when empty, becomes `[Ingress]`, plus `Egress` when the policy
//!   has egress rules. Enforcers therefore always see explicit policy types from a real server,
//!   and so do they from the emulator.
//! * **generation**: `metadata.generation` starts at 1 and goes up with every change of the spec.
//! * **validation**: selectors must be well formed; a port is 1-65535 or an IANA service name;
//!   `endPort` needs a numeric `port` not above it; protocols are TCP, UDP or SCTP; a peer is
//!   either selectors or an `ipBlock` (not both, not neither); an `ipBlock` has a valid CIDR and
//!   its `except` entries lie strictly inside it; policy types are `Ingress` or `Egress`. A real
//!   server refuses such objects, so an enforcer never receives them from it; the emulator
//!   refuses them with the same field paths.
//!
//! NetworkPolicy has no status (removed from the API in 1.28).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::status::ApiError;
use crate::store::Kind;

/// Defaulting, validation and generation for a new NetworkPolicy.
pub(crate) fn prepare_create(name: &str, obj: &mut Value) -> Result<(), ApiError> {
    default_spec(obj);
    invalid_if_any(name, validate_spec(&obj["spec"]))?;
    obj["metadata"]["generation"] = json!(1);
    Ok(())
}

/// An update: defaults and validation again, the generation up by one when the spec changed.
pub(crate) fn prepare_update(name: &str, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    default_spec(new);
    invalid_if_any(name, validate_spec(&new["spec"]))?;
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let changed = new["spec"] != old["spec"];
    new["metadata"]["generation"] = json!(generation + i64::from(changed));
    if let Value::Object(m) = new {
        m.remove("status");
    }
    Ok(())
}

/// `SetDefaults_NetworkPolicySpec` and `SetDefaults_NetworkPolicyPort`.
fn default_spec(obj: &mut Value) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec["podSelector"].is_null() {
        spec["podSelector"] = json!({});
    }
    for dir in ["ingress", "egress"] {
        // `get_mut`, not indexing: indexing would add `null` members the API never shows.
        let rules = spec.get_mut(dir).and_then(Value::as_array_mut);
        for rule in rules.into_iter().flatten() {
            let ports = rule.get_mut("ports").and_then(Value::as_array_mut);
            for port in ports.into_iter().flatten() {
                if port.is_object() && port["protocol"].is_null() {
                    port["protocol"] = json!("TCP");
                }
            }
        }
    }
    let empty = spec["policyTypes"].as_array().is_none_or(Vec::is_empty);
    if empty {
        let has_egress = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
        spec["policyTypes"] = if has_egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
    }
}

fn validate_spec(spec: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate_selector(&spec["podSelector"], "spec.podSelector", &mut errors);
    for (dir, peers_key) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
            let path = format!("spec.{dir}[{i}]");
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                validate_port(port, &format!("{path}.ports[{j}]"), &mut errors);
            }
            for (j, peer) in rule[peers_key].as_array().into_iter().flatten().enumerate() {
                validate_peer(peer, &format!("{path}.{peers_key}[{j}]"), &mut errors);
            }
        }
    }
    let types = spec["policyTypes"].as_array().cloned().unwrap_or_default();
    if types.len() > 2 {
        errors.push(format!(
            "spec.policyTypes: Invalid value: {}: may not specify more than two policyTypes",
            Value::Array(types.clone())
        ));
    }
    for (i, t) in types.iter().enumerate() {
        if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
            errors.push(format!(
                "spec.policyTypes[{i}]: Unsupported value: {t}: supported values: \"Egress\", \"Ingress\""
            ));
        }
    }
    errors
}

fn validate_port(port: &Value, path: &str, errors: &mut Vec<String>) {
    let protocol = &port["protocol"];
    if !matches!(protocol.as_str(), Some("TCP" | "UDP" | "SCTP")) {
        errors.push(format!(
            "{path}.protocol: Unsupported value: {protocol}: supported values: \"SCTP\", \"TCP\", \"UDP\""
        ));
    }
    let numeric = match &port["port"] {
        Value::Null => None,
        Value::Number(n) => {
            let p = n.as_i64().unwrap_or(-1);
            if !(1..=65535).contains(&p) {
                errors.push(format!(
                    "{path}.port: Invalid value: {p}: must be between 1 and 65535, inclusive"
                ));
            }
            Some(p)
        }
        Value::String(s) => {
            if !is_iana_svc_name(s) {
                errors.push(format!(
                    "{path}.port: Invalid value: \"{s}\": must be no more than 15 characters, \
                     contain only lowercase alphanumerics and '-', at least one letter, and no \
                     '-' at either end or next to another"
                ));
            }
            None
        }
        other => {
            errors.push(format!(
                "{path}.port: Invalid value: {other}: must be an integer or a string"
            ));
            None
        }
    };
    match (&port["endPort"], numeric) {
        (Value::Null, _) => {}
        (end, None) => errors.push(format!(
            "{path}.endPort: Invalid value: {end}: may not be specified when port is non-numeric or unset"
        )),
        (end, Some(p)) => {
            let e = end.as_i64().unwrap_or(-1);
            if e < p || e > 65535 {
                errors.push(format!(
                    "{path}.endPort: Invalid value: {e}: must be greater than or equal to port and at most 65535"
                ));
            }
        }
    }
}

/// `validation.IsValidPortName`.
fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn validate_peer(peer: &Value, path: &str, errors: &mut Vec<String>) {
    let selectors = ["podSelector", "namespaceSelector"]
        .iter()
        .filter(|k| !peer[**k].is_null())
        .count();
    let ip_block = &peer["ipBlock"];
    match (selectors, ip_block.is_null()) {
        (0, true) => errors.push(format!("{path}: Required value: must specify a peer")),
        (n, false) if n > 0 => errors.push(format!(
            "{path}: Forbidden: may not specify both ipBlock and another peer"
        )),
        _ => {}
    }
    for key in ["podSelector", "namespaceSelector"] {
        if !peer[key].is_null() {
            validate_selector(&peer[key], &format!("{path}.{key}"), errors);
        }
    }
    if !ip_block.is_null() {
        validate_ip_block(ip_block, &format!("{path}.ipBlock"), errors);
    }
}

fn validate_ip_block(block: &Value, path: &str, errors: &mut Vec<String>) {
    let cidr_text = block["cidr"].as_str().unwrap_or_default();
    let cidr = parse_cidr(cidr_text);
    if cidr_text.is_empty() {
        errors.push(format!("{path}.cidr: Required value"));
    } else if cidr.is_none() {
        errors.push(format!(
            "{path}.cidr: Invalid value: \"{cidr_text}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        ));
    }
    for (i, ex) in block["except"].as_array().into_iter().flatten().enumerate() {
        let text = ex.as_str().unwrap_or_default();
        let Some(except) = parse_cidr(text) else {
            errors.push(format!(
                "{path}.except[{i}]: Invalid value: \"{text}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            ));
            continue;
        };
        if let Some(cidr) = cidr
            && !(cidr.contains(&except) && except.prefix_len() > cidr.prefix_len())
        {
            errors.push(format!(
                "{path}.except[{i}]: Invalid value: \"{text}\": must be a strict subset of `cidr`"
            ));
        }
    }
}

/// A CIDR as Go's `net.ParseCIDR` takes it (host bits may be set); a bare address is not one.
fn parse_cidr(text: &str) -> Option<IpNet> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

/// `ValidateLabelSelector`: operators, and values present exactly when the operator needs them.
fn validate_selector(sel: &Value, path: &str, errors: &mut Vec<String>) {
    if !sel.is_object() {
        errors.push(format!("{path}: Invalid value: {sel}: must be an object"));
        return;
    }
    for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
        if !v.is_string() {
            errors.push(format!(
                "{path}.matchLabels[{k}]: Invalid value: {v}: must be a string"
            ));
        }
    }
    for (i, e) in sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = e["values"].as_array().map_or(0, Vec::len);
        match e["operator"].as_str() {
            Some("In" | "NotIn") if values == 0 => errors.push(format!(
                "{p}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            )),
            Some("Exists" | "DoesNotExist") if values > 0 => errors.push(format!(
                "{p}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            )),
            Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
            _ => errors.push(format!(
                "{p}.operator: Invalid value: {}: not a valid selector operator",
                e["operator"]
            )),
        }
        if e["key"].as_str().is_none_or(str::is_empty) {
            errors.push(format!(
                "{p}.key: Invalid value: \"\": name part must be non-empty"
            ));
        }
    }
}

fn invalid_if_any(name: &str, errors: Vec<String>) -> Result<(), ApiError> {
    let qualified = Kind::NetworkPolicy.qualified_name();
    match errors.len() {
        0 => Ok(()),
        1 => Err(ApiError::invalid(qualified, name, errors.concat())),
        _ => Err(ApiError::invalid(
            qualified,
            name,
            format!("[{}]", errors.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(spec: Value) -> Result<Value, ApiError> {
        let mut obj = json!({ "metadata": { "name": "np" }, "spec": spec });
        prepare_create("np", &mut obj).map(|()| obj)
    }

    #[test]
    fn defaults_pod_selector_protocol_and_policy_types() {
        let obj = created(json!({ "ingress": [{ "ports": [{ "port": 80 }] }] })).unwrap();
        assert_eq!(obj["spec"]["podSelector"], json!({}));
        assert_eq!(obj["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(obj["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(obj["metadata"]["generation"], 1);
        assert!(
            obj["spec"].get("egress").is_none(),
            "no null members: {obj}"
        );
        let obj = created(json!({ "egress": [{}] })).unwrap();
        assert_eq!(obj["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let obj = created(json!({ "policyTypes": ["Egress"] })).unwrap();
        assert_eq!(obj["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn refuses_what_the_api_server_refuses() {
        let cases = [
            (
                json!({ "ingress": [{ "from": [{ "ipBlock": { "cidr": "10.0.0/8" } }] }] }),
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0/8\"",
            ),
            (
                json!({ "ingress": [{ "from": [{ "ipBlock": { "cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"] } }] }] }),
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"11.0.0.0/16\": must be a strict subset",
            ),
            (
                json!({ "ingress": [{ "from": [{}] }] }),
                "spec.ingress[0].from[0]: Required value: must specify a peer",
            ),
            (
                json!({ "egress": [{ "to": [{ "podSelector": {}, "ipBlock": { "cidr": "10.0.0.0/8" } }] }] }),
                "spec.egress[0].to[0]: Forbidden: may not specify both ipBlock",
            ),
            (
                json!({ "ingress": [{ "ports": [{ "protocol": "ICMP", "port": 1 }] }] }),
                "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\"",
            ),
            (
                json!({ "ingress": [{ "ports": [{ "port": 70000 }] }] }),
                "spec.ingress[0].ports[0].port: Invalid value: 70000",
            ),
            (
                json!({ "ingress": [{ "ports": [{ "port": "serve-80", "endPort": 90 }] }] }),
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified",
            ),
            (
                json!({ "ingress": [{ "ports": [{ "port": 90, "endPort": 80 }] }] }),
                "spec.ingress[0].ports[0].endPort: Invalid value: 80",
            ),
            (
                json!({ "podSelector": { "matchExpressions": [{ "key": "a", "operator": "Like" }] } }),
                "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Like\"",
            ),
            (
                json!({ "podSelector": { "matchExpressions": [{ "key": "a", "operator": "In" }] } }),
                "spec.podSelector.matchExpressions[0].values: Required value",
            ),
            (
                json!({ "policyTypes": ["Sideways"] }),
                "spec.policyTypes[0]: Unsupported value: \"Sideways\"",
            ),
        ];
        for (spec, want) in cases {
            let err = created(spec.clone()).unwrap_err();
            assert_eq!(err.code, 422, "{spec}");
            assert!(
                err.message
                    .starts_with("NetworkPolicy.networking.k8s.io \"np\" is invalid: "),
                "{}",
                err.message
            );
            assert!(err.message.contains(want), "{spec}: {}", err.message);
        }
    }

    #[test]
    fn accepts_the_e2e_suites_shapes() {
        let spec = json!({
            "podSelector": { "matchLabels": { "pod": "a" } },
            "ingress": [{
                "from": [
                    { "namespaceSelector": { "matchExpressions": [{ "key": "ns", "operator": "NotIn", "values": ["y"] }] },
                      "podSelector": { "matchLabels": { "pod": "b" } } },
                    { "ipBlock": { "cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"] } },
                    { "ipBlock": { "cidr": "fd00::/64" } },
                ],
                "ports": [{ "port": "serve-80-tcp" }, { "protocol": "UDP", "port": 80, "endPort": 81 }],
            }],
            "egress": [{ "to": [{ "namespaceSelector": {} }] }],
            "policyTypes": ["Ingress", "Egress"],
        });
        let obj = created(spec).unwrap();
        assert_eq!(obj["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn generation_follows_spec_changes_only() {
        let old = created(json!({})).unwrap();
        let mut same = old.clone();
        same["metadata"]["labels"] = json!({ "a": "b" });
        prepare_update("np", &old, &mut same).unwrap();
        assert_eq!(same["metadata"]["generation"], 1);
        let mut changed = old.clone();
        changed["spec"]["policyTypes"] = json!(["Egress"]);
        prepare_update("np", &old, &mut changed).unwrap();
        assert_eq!(changed["metadata"]["generation"], 2);
        let mut bad = old.clone();
        bad["spec"]["policyTypes"] = json!(["Up"]);
        assert_eq!(prepare_update("np", &old, &mut bad).unwrap_err().code, 422);
    }
}
