//! Reading what `nft -j list table` and `nft -j list tables` print into the structures of
//! `model`.
//!
//! The listing is an array of one-key objects (`{"table": {...}}`, `{"chain": {...}}`, `{"rule":
//! {...}}`, ...). Rules carry their statements under `"expr"` (libnftables-json(5)); each
//! statement and expression flannel writes becomes its typed form, anything else is kept as the
//! raw value, so a listing is only rejected when it is not nft's JSON at all.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::model::{Chain, Expr, Hook, MatchOp, Rule, Stmt, Table, Verdict};
use crate::error::NftJsonError;

/// The one-key objects of a listing, metainfo included.
fn objects(text: &str) -> Result<Vec<(String, Value)>, NftJsonError> {
    let root: Value = serde_json::from_str(text).map_err(NftJsonError::Syntax)?;
    let Some(Value::Array(items)) = root.get("nftables") else {
        return Err(shape("no \"nftables\" array"));
    };
    items
        .iter()
        .map(|item| match item.as_object() {
            Some(obj) if obj.len() == 1 => {
                let (kind, body) = obj.iter().next().expect("one key");
                Ok((kind.clone(), body.clone()))
            }
            _ => Err(shape(format!(
                "expected an object with one key, found {item}"
            ))),
        })
        .collect()
}

fn shape(detail: impl Into<String>) -> NftJsonError {
    NftJsonError::Shape(detail.into())
}

fn string(body: &Value, key: &str) -> Result<String, NftJsonError> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| shape(format!("no string {key:?} in {body}")))
}

/// Parses `nft -j list table <family> <name>`.
///
/// Comments are taken from the JSON where nft prints them; nft 1.0.6 (Debian 12) does not, and
/// then the table's and chains' `comment` are `None` here (see `comments`).
pub(crate) fn parse_table(text: &str) -> Result<Table, NftJsonError> {
    let mut table = Table::default();
    let mut seen_table = false;
    for (kind, body) in objects(text)? {
        match kind.as_str() {
            "metainfo" => {}
            "table" => {
                seen_table = true;
                table.comment = body.get("comment").and_then(Value::as_str).map(Into::into);
            }
            "chain" => table.chains.push(parse_chain(&body)?),
            "rule" => {
                let name = string(&body, "chain")?;
                let rule = parse_rule(&body);
                let chain = table
                    .chains
                    .iter_mut()
                    .find(|c| c.name == name)
                    .ok_or_else(|| shape(format!("a rule of chain {name}, which is not listed")))?;
                chain.rules.push(rule);
            }
            _ => table.other_objects += 1,
        }
    }
    if !seen_table {
        return Err(shape("no table object"));
    }
    Ok(table)
}

fn parse_chain(body: &Value) -> Result<Chain, NftJsonError> {
    let hook = match body.get("type") {
        None => None,
        Some(_) => Some(Hook {
            kind: string(body, "type")?,
            hook: string(body, "hook")?,
            priority: body
                .get("prio")
                .and_then(Value::as_i64)
                .ok_or_else(|| shape(format!("no numeric \"prio\" in {body}")))?,
            policy: body
                .get("policy")
                .and_then(Value::as_str)
                .unwrap_or("accept")
                .to_string(),
        }),
    };
    Ok(Chain {
        name: string(body, "name")?,
        comment: body.get("comment").and_then(Value::as_str).map(Into::into),
        hook,
        rules: Vec::new(),
    })
}

fn parse_rule(body: &Value) -> Rule {
    let stmts = match body.get("expr") {
        Some(Value::Array(stmts)) => stmts.iter().map(parse_stmt).collect(),
        _ => Vec::new(),
    };
    Rule(stmts)
}

/// The single key of a one-key object and its value.
fn single(value: &Value) -> Option<(&str, &Value)> {
    let obj: &Map<String, Value> = value.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn parse_stmt(value: &Value) -> Stmt {
    let other = || Stmt::Other(value.clone());
    let Some((kind, body)) = single(value) else {
        return other();
    };
    let target = || {
        body.get("target")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (kind, body) {
        ("match", _) => {
            let (Some(left), Some(op), Some(right)) = (
                body.get("left"),
                body.get("op").and_then(Value::as_str),
                body.get("right"),
            ) else {
                return other();
            };
            let op = match op {
                "==" => MatchOp::Eq,
                "!=" => MatchOp::Ne,
                op => MatchOp::Other(op.to_string()),
            };
            Stmt::Match {
                left: parse_expr(left),
                op,
                right: parse_expr(right),
            }
        }
        ("accept", Value::Null) => Stmt::Verdict(Verdict::Accept),
        ("drop", Value::Null) => Stmt::Verdict(Verdict::Drop),
        ("return", Value::Null) => Stmt::Verdict(Verdict::Return),
        ("continue", Value::Null) => Stmt::Verdict(Verdict::Continue),
        ("jump", _) => target().map_or_else(other, |t| Stmt::Verdict(Verdict::Jump(t))),
        ("goto", _) => target().map_or_else(other, |t| Stmt::Verdict(Verdict::Goto(t))),
        ("masquerade", Value::Null) => Stmt::Masquerade(Vec::new()),
        ("masquerade", Value::Object(obj)) if obj.keys().all(|k| k == "flags") => {
            match obj.get("flags") {
                Some(Value::String(flag)) => Stmt::Masquerade(vec![flag.clone()]),
                Some(Value::Array(flags)) => {
                    let flags: Option<Vec<String>> = flags
                        .iter()
                        .map(|f| f.as_str().map(str::to_string))
                        .collect();
                    flags.map_or_else(other, Stmt::Masquerade)
                }
                _ => other(),
            }
        }
        // An anonymous counter; a named one (`"counter": "name"`) is something else.
        ("counter", Value::Object(_) | Value::Null) => Stmt::Counter,
        _ => other(),
    }
}

fn parse_expr(value: &Value) -> Expr {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map_or_else(|| Expr::Other(value.clone()), Expr::Number),
        Value::String(s) => s
            .parse::<IpAddr>()
            .map_or_else(|_| Expr::Symbol(s.clone()), Expr::Addr),
        Value::Array(items) => Expr::List(items.iter().map(parse_expr).collect()),
        _ => parse_keyed_expr(value).unwrap_or_else(|| Expr::Other(value.clone())),
    }
}

fn parse_keyed_expr(value: &Value) -> Option<Expr> {
    let (kind, body) = single(value)?;
    let key = || body.get("key").and_then(Value::as_str).map(str::to_string);
    Some(match kind {
        "payload" => Expr::Payload {
            protocol: body.get("protocol")?.as_str()?.to_string(),
            field: body.get("field")?.as_str()?.to_string(),
        },
        "meta" => Expr::Meta(key()?),
        "ct" => Expr::Ct(key()?),
        "prefix" => {
            let addr: IpAddr = body.get("addr")?.as_str()?.parse().ok()?;
            let len = u8::try_from(body.get("len")?.as_u64()?).ok()?;
            Expr::Prefix(IpNet::new(addr, len).ok()?)
        }
        // nft >= 1.0.7 may flatten `a & b & c` into one list; fold it back into pairs.
        "&" => {
            let operands: Vec<Expr> = body.as_array()?.iter().map(parse_expr).collect();
            if operands.len() < 2 {
                return None;
            }
            operands
                .into_iter()
                .reduce(|a, b| Expr::And(Box::new(a), Box::new(b)))?
        }
        "set" => match body {
            Value::Array(items) => Expr::Set(items.iter().map(parse_expr).collect()),
            single => Expr::Set(vec![parse_expr(single)]),
        },
        _ => return None,
    })
}

/// Parses `nft -j list tables` into `(family, name)` pairs.
pub(crate) fn parse_tables(text: &str) -> Result<Vec<(String, String)>, NftJsonError> {
    objects(text)?
        .into_iter()
        .filter(|(kind, _)| kind == "table")
        .map(|(_, body)| Ok((string(&body, "family")?, string(&body, "name")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list table ip flannel-ipv4` (nft 1.0.6) after flannel installed both chains.
    const LISTED_V4_JSON: &str = include_str!("testdata/listed_v4.json");
    /// A table full of things flannel never writes, as nft 1.0.6 lists it.
    const FOREIGN_JSON: &str = include_str!("testdata/foreign.json");

    fn ip(field: &str, op: MatchOp, net: &str) -> Stmt {
        Stmt::addr("ip", field, op, net.parse().unwrap())
    }

    #[test]
    fn reads_flannels_table() {
        let t = parse_table(LISTED_V4_JSON).unwrap();
        // nft 1.0.6 prints no comments in JSON.
        assert_eq!(t.comment, None);
        assert_eq!(t.other_objects, 0);
        let names: Vec<&str> = t.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["postrtg", "forward"]);
        let post = &t.chains[0];
        assert_eq!(
            post.hook,
            Some(Hook::new("nat", "postrouting", 100, "accept"))
        );
        assert_eq!(post.rules.len(), 6);
        assert_eq!(
            post.rules[0],
            Rule(vec![
                Stmt::mark_bits(0x4000),
                Stmt::Verdict(Verdict::Return)
            ])
        );
        assert_eq!(
            post.rules[4],
            Rule(vec![
                ip("saddr", MatchOp::Eq, "10.244.0.0/16"),
                ip("daddr", MatchOp::Ne, "224.0.0.0/4"),
                Stmt::Masquerade(vec!["fully-random".into()]),
            ])
        );
        assert_eq!(
            t.chains[1],
            Chain {
                name: "forward".into(),
                comment: None,
                hook: Some(Hook::new("filter", "forward", 0, "accept")),
                rules: vec![
                    Rule(vec![
                        ip("saddr", MatchOp::Eq, "10.244.0.0/16"),
                        Stmt::Verdict(Verdict::Accept)
                    ]),
                    Rule(vec![
                        ip("daddr", MatchOp::Eq, "10.244.0.0/16"),
                        Stmt::Verdict(Verdict::Accept)
                    ]),
                ],
            }
        );
    }

    #[test]
    fn reads_comments_where_nft_prints_them() {
        let mut root: Value = serde_json::from_str(LISTED_V4_JSON).unwrap();
        for item in root["nftables"].as_array_mut().unwrap() {
            if let Some(table) = item.get_mut("table") {
                table["comment"] = "rules for flannel-ipv4".into();
            }
            if let Some(chain) = item.get_mut("chain") {
                chain["comment"] = "a chain".into();
            }
        }
        let t = parse_table(&root.to_string()).unwrap();
        assert_eq!(t.comment.as_deref(), Some("rules for flannel-ipv4"));
        assert!(
            t.chains
                .iter()
                .all(|c| c.comment.as_deref() == Some("a chain"))
        );
    }

    #[test]
    fn keeps_what_it_does_not_model_and_counts_other_objects() {
        let t = parse_table(FOREIGN_JSON).unwrap();
        assert_eq!(t.other_objects, 1, "the set");
        let extra2 = t.chain("extra2").unwrap();
        assert_eq!(extra2.hook, None);
        assert_eq!(
            extra2.rules[0],
            Rule(vec![
                Stmt::Match {
                    left: Expr::Payload {
                        protocol: "tcp".into(),
                        field: "dport".into()
                    },
                    op: MatchOp::Eq,
                    right: Expr::Number(80),
                },
                Stmt::Verdict(Verdict::Drop)
            ])
        );
        assert_eq!(
            extra2.rules[1].0[1],
            Stmt::Masquerade(vec!["random".into(), "persistent".into()])
        );
        assert!(matches!(
            &extra2.rules[2].0[0],
            Stmt::Match {
                right: Expr::Other(_),
                ..
            }
        ));
        let extra = t.chain("extra").unwrap();
        assert_eq!(extra.rules.len(), 5);
        assert!(
            matches!(&extra.rules[0].0[0], Stmt::Match { right: Expr::Set(s), .. } if s.len() == 2)
        );
        assert_eq!(extra.rules[1], Rule(vec![Stmt::Counter]));
        assert_eq!(
            extra.rules[2].0[0],
            Stmt::Match {
                left: Expr::Ct("state".into()),
                op: MatchOp::Other("in".into()),
                right: Expr::List(vec![
                    Expr::Symbol("established".into()),
                    Expr::Symbol("related".into())
                ]),
            }
        );
        // Upstream's exact mark match differs from flannel's masked one.
        assert_ne!(extra.rules[3].0[0], Stmt::mark_bits(0x4000));
        assert_eq!(
            extra.rules[4].0[1],
            Stmt::Verdict(Verdict::Jump("extra2".into()))
        );
    }

    #[test]
    fn flattened_bitwise_operands_fold_into_pairs() {
        let e = parse_expr(&serde_json::json!({"&": [{"meta": {"key": "mark"}}, 255, 16384]}));
        assert_eq!(
            e,
            Expr::And(
                Box::new(Expr::And(
                    Box::new(Expr::Meta("mark".into())),
                    Box::new(Expr::Number(255))
                )),
                Box::new(Expr::Number(16384))
            )
        );
        assert!(matches!(
            parse_expr(&serde_json::json!({"&": [1]})),
            Expr::Other(_)
        ));
    }

    #[test]
    fn rejects_what_is_not_an_nft_listing() {
        assert!(matches!(
            parse_table("table ip x {"),
            Err(NftJsonError::Syntax(_))
        ));
        assert!(matches!(parse_table("{}"), Err(NftJsonError::Shape(_))));
        assert!(matches!(
            parse_table(r#"{"nftables": [{"metainfo": {}}]}"#),
            Err(NftJsonError::Shape(_))
        ));
        let orphan = r#"{"nftables": [{"table": {"family": "ip", "name": "t"}},
            {"rule": {"chain": "nowhere", "expr": [{"accept": null}]}}]}"#;
        let err = parse_table(orphan).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unexpected JSON: a rule of chain nowhere, which is not listed"
        );
    }

    #[test]
    fn lists_tables() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "nat", "handle": 1}},
            {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 2}},
            {"table": {"family": "inet", "name": "other", "handle": 3}}]}"#;
        assert_eq!(
            parse_tables(text).unwrap(),
            [
                ("ip".to_string(), "nat".to_string()),
                ("ip".to_string(), "flannel-ipv4".to_string()),
                ("inet".to_string(), "other".to_string()),
            ]
        );
        assert!(parse_tables("nope").is_err());
    }
}
