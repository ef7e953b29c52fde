//! Parsing `nft -j list table inet flannel-netpol` into an [`ActualTable`].
//!
//! The listing is an array of one-key objects (libnftables-json(5)). Sets come back with their
//! elements in nft's own spelling: an interval set prints a one-address range as the address,
//! an aligned range as `{"prefix": ...}` and anything else as `{"range": [a, b]}`; all three
//! become one [`IpRange`] so they compare equal to what `compile` produced. Rules are only
//! known by their comment (the fingerprint `plan` wrote).

use std::net::IpAddr;

use flannel_types::IpFamily;
use ipnet::IpNet;
use serde_json::Value;

use super::{ActualChain, ActualTable, CounterValue};
use crate::interval::IpRange;
use crate::model::Proto;
use crate::ruleset::{Element, Hook, SetDef, SetKind};

/// Why a listing could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not JSON at all.
    #[error("nft printed invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON, but not the shape nft prints or a set type this enforcer never writes.
    #[error("unexpected nft JSON: {0}")]
    Shape(String),
}

fn shape(detail: impl Into<String>) -> ReadError {
    ReadError::Shape(detail.into())
}

fn str_of<'a>(body: &'a Value, key: &str) -> Result<&'a str, ReadError> {
    body.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| shape(format!("no string {key:?} in {body}")))
}

/// Parses the listing of the one table.
pub fn parse_table(text: &str) -> Result<ActualTable, ReadError> {
    let root: Value = serde_json::from_str(text).map_err(ReadError::Json)?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no \"nftables\" array"))?;
    let mut table = ActualTable::default();
    for item in items {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            return Err(shape(format!("expected a one-key object, found {item}")));
        };
        match kind.as_str() {
            "table" => table.exists = true,
            "set" => {
                let name = str_of(body, "name")?.to_string();
                table.sets.insert(name, parse_set(body)?);
            }
            "counter" => {
                let value = CounterValue {
                    packets: body.get("packets").and_then(Value::as_u64).unwrap_or(0),
                    bytes: body.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                };
                table
                    .counters
                    .insert(str_of(body, "name")?.to_string(), value);
            }
            "chain" => {
                let hook = match body.get("hook").and_then(Value::as_str) {
                    Some(h) => Some(Hook {
                        hook: h.to_string(),
                        priority: body
                            .get("prio")
                            .and_then(Value::as_i64)
                            .and_then(|p| i32::try_from(p).ok())
                            .ok_or_else(|| shape(format!("base chain without prio: {body}")))?,
                    }),
                    None => None,
                };
                let name = str_of(body, "name")?.to_string();
                let chain = table.chains.entry(name).or_insert(ActualChain {
                    hook: None,
                    fingerprints: Vec::new(),
                });
                chain.hook = hook;
            }
            "rule" => {
                let chain = str_of(body, "chain")?.to_string();
                let comment = body.get("comment").and_then(Value::as_str).map(Into::into);
                table
                    .chains
                    .entry(chain)
                    .or_insert(ActualChain {
                        hook: None,
                        fingerprints: Vec::new(),
                    })
                    .fingerprints
                    .push(comment);
            }
            // metainfo, and objects this enforcer never creates (maps, flowtables...), which
            // nothing references and which stay untouched.
            _ => {}
        }
    }
    Ok(table)
}

fn parse_set(body: &Value) -> Result<SetDef, ReadError> {
    let family = |t: &str| match t {
        "ipv4_addr" => Ok(IpFamily::V4),
        "ipv6_addr" => Ok(IpFamily::V6),
        other => Err(shape(format!(
            "set type {other:?} is not one flannel-netpol writes"
        ))),
    };
    let interval = match body.get("flags") {
        Some(Value::Array(flags)) => flags.iter().any(|f| f == "interval"),
        Some(Value::String(f)) => f == "interval",
        _ => false,
    };
    let kind = match body.get("type") {
        Some(Value::String(t)) if interval => SetKind::Interval(family(t)?),
        Some(Value::String(t)) => SetKind::Addr(family(t)?),
        Some(Value::Array(parts))
            if parts.len() == 3 && parts[1] == "inet_proto" && parts[2] == "inet_service" =>
        {
            SetKind::Named(family(parts[0].as_str().unwrap_or_default())?)
        }
        other => {
            let t = other.unwrap_or(&Value::Null);
            return Err(shape(format!(
                "set type {t} is not one flannel-netpol writes"
            )));
        }
    };
    let elements = body
        .get("elem")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| parse_element(kind, e))
        .collect::<Result<_, _>>()?;
    Ok(SetDef { kind, elements })
}

fn addr(v: &Value) -> Result<IpAddr, ReadError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| shape(format!("not an address: {v}")))
}

fn parse_element(kind: SetKind, e: &Value) -> Result<Element, ReadError> {
    // Elements with attributes (timeout, counter, comment) are wrapped as {"elem": {"val": ..}}.
    if let Some(val) = e.get("elem").and_then(|x| x.get("val")) {
        return parse_element(kind, val);
    }
    match kind {
        SetKind::Addr(_) => Ok(Element::Addr(addr(e)?)),
        SetKind::Interval(_) => {
            if let Some(p) = e.get("prefix") {
                let len = p
                    .get("len")
                    .and_then(Value::as_u64)
                    .and_then(|l| u8::try_from(l).ok())
                    .ok_or_else(|| shape(format!("bad prefix {e}")))?;
                let net = IpNet::new(addr(p.get("addr").unwrap_or(&Value::Null))?, len)
                    .map_err(|_| shape(format!("bad prefix {e}")))?;
                Ok(Element::Range(IpRange::of_net(net)))
            } else if let Some(Value::Array(r)) = e.get("range") {
                let (Some(a), Some(b)) = (r.first(), r.get(1)) else {
                    return Err(shape(format!("bad range {e}")));
                };
                Ok(Element::Range(IpRange {
                    first: addr(a)?,
                    last: addr(b)?,
                }))
            } else {
                Ok(Element::Range(IpRange::single(addr(e)?)))
            }
        }
        SetKind::Named(_) => {
            let parts = e
                .get("concat")
                .and_then(Value::as_array)
                .filter(|p| p.len() == 3)
                .ok_or_else(|| shape(format!("bad named-port element {e}")))?;
            let proto = match &parts[1] {
                Value::String(s) => Proto::from_nft(s),
                Value::Number(n) => Proto::from_nft(&n.to_string()),
                _ => None,
            }
            .ok_or_else(|| shape(format!("bad protocol in {e}")))?;
            let port = match &parts[2] {
                Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| shape(format!("bad port in {e}")))?;
            Ok(Element::Named {
                addr: addr(&parts[0])?,
                proto,
                port,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nft 1.0.6 printed for a table like ours (captured with `nft -j list table`).
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "flannel-netpol", "handle": 1}}, {"counter": {"family": "inet", "name": "c", "table": "flannel-netpol", "handle": 3, "comment": "ns/x", "packets": 7, "bytes": 420}}, {"set": {"family": "inet", "name": "s", "table": "flannel-netpol", "type": "ipv4_addr", "handle": 4, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "11.0.0.1", {"range": ["12.0.0.1", "12.0.0.5"]}]}}, {"set": {"family": "inet", "name": "n", "table": "flannel-netpol", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 5, "elem": [{"concat": ["10.0.0.1", "tcp", 80]}, {"concat": ["10.0.0.2", "sctp", 8080]}]}}, {"set": {"family": "inet", "name": "p", "table": "flannel-netpol", "type": "ipv6_addr", "handle": 6}}, {"chain": {"family": "inet", "table": "flannel-netpol", "name": "x", "handle": 1}}, {"chain": {"family": "inet", "table": "flannel-netpol", "name": "b", "handle": 2, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}, {"rule": {"family": "inet", "table": "flannel-netpol", "chain": "x", "handle": 6, "comment": "h:abc", "expr": [{"accept": null}]}}, {"rule": {"family": "inet", "table": "flannel-netpol", "chain": "b", "handle": 8, "expr": [{"accept": null}]}}]}"#;

    #[test]
    fn parses_sets_counters_chains_and_rule_comments() {
        let t = parse_table(LISTING).unwrap();
        assert!(t.exists);
        assert_eq!(
            t.counters["c"],
            CounterValue {
                packets: 7,
                bytes: 420
            }
        );
        let s: Vec<String> = t.sets["s"]
            .elements
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(s, vec!["10.0.0.0/8", "11.0.0.1", "12.0.0.1-12.0.0.5"]);
        assert_eq!(t.sets["s"].kind, SetKind::Interval(IpFamily::V4));
        let n: Vec<String> = t.sets["n"]
            .elements
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(n, vec!["10.0.0.1 . tcp . 80", "10.0.0.2 . sctp . 8080"]);
        assert_eq!(t.sets["p"].kind, SetKind::Addr(IpFamily::V6));
        assert!(t.sets["p"].elements.is_empty());
        assert_eq!(t.chains["x"].fingerprints, vec![Some("h:abc".to_string())]);
        assert_eq!(t.chains["x"].hook, None);
        assert_eq!(
            t.chains["b"].hook,
            Some(Hook {
                hook: "forward".into(),
                priority: -1
            })
        );
        assert_eq!(t.chains["b"].fingerprints, vec![None]);
    }

    #[test]
    fn refuses_what_is_not_a_listing() {
        assert!(matches!(parse_table("nope"), Err(ReadError::Json(_))));
        assert!(matches!(parse_table("{}"), Err(ReadError::Shape(_))));
        let foreign = r#"{"nftables": [{"set": {"name": "m", "type": "ether_addr"}}]}"#;
        assert_eq!(
            parse_table(foreign).unwrap_err().to_string(),
            "unexpected nft JSON: set type \"ether_addr\" is not one flannel-netpol writes"
        );
    }
}
