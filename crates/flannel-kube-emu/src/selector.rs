//! Label and field selectors (`labelSelector=`, `fieldSelector=` on lists and watches), with the
//! grammar of apimachinery's `labels.Parse` and `fields.ParseSelector` and the field labels the
//! API server supports per resource.
//!
//! kubectl needs them for more than `-l`: `kubectl delete` waits for the object to be gone with
//! a watch on `fieldSelector=metadata.name=<name>`, and `kubectl describe node` lists the node's
//! pods by `spec.nodeName`.

use serde_json::Value;

use crate::status::ApiError;
use crate::store::Kind;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key=v`, `key==v`, `key in (v1,v2)`.
    In(Vec<String>),
    /// `key!=v`, `key notin (v1,v2)`: also true when the label is absent.
    NotIn(Vec<String>),
    /// `key>N` (the value must parse as an integer).
    Gt(i64),
    /// `key<N`.
    Lt(i64),
}

/// One field requirement: `field=value` (`==`) or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed pair of selectors; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<(String, LabelOp)>,
    fields: Vec<FieldReq>,
}

impl Selector {
    /// Parses `labelSelector` and `fieldSelector` for a list of `kind`. Unknown field labels are
    /// refused as the API server refuses them (`400 field label not supported: <label>`).
    pub fn parse(kind: Kind, labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut s = Selector::default();
        if let Some(text) = labels.filter(|t| !t.trim().is_empty()) {
            s.labels = parse_labels(text)?;
        }
        if let Some(text) = fields.filter(|t| !t.trim().is_empty()) {
            for term in split_unescaped(text, ',') {
                let req = parse_field_term(&term)?;
                if !field_supported(kind, &req.field) {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {}",
                        req.field
                    )));
                }
                s.fields.push(req);
            }
        }
        Ok(s)
    }

    /// Whether the selector is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `obj` (of `kind`) satisfies every requirement.
    pub fn matches(&self, kind: Kind, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|m| m.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|(key, op)| match op {
            LabelOp::Exists => label(key).is_some(),
            LabelOp::DoesNotExist => label(key).is_none(),
            LabelOp::In(vals) => label(key).is_some_and(|v| vals.iter().any(|x| x == v)),
            LabelOp::NotIn(vals) => label(key).is_none_or(|v| vals.iter().all(|x| x != v)),
            LabelOp::Gt(n) => label(key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelOp::Lt(n) => label(key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|f| (field_value(kind, obj, &f.field) == f.value) == f.equal)
    }
}

/// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`), as a DaemonSet's
/// `spec.selector` holds one, in the string form of `kubectl -l` and of the SELECTOR column
/// (`app=flannel,tier in (node)`): requirements sorted by key, values of a set sorted. `None`
/// for a selector the API would refuse (an unknown operator, a malformed field); an empty
/// selector (`{}`, which selects everything) is the empty string.
pub fn label_selector_string(sel: &Value) -> Option<String> {
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        reqs.push((k.clone(), format!("{k}={}", v.as_str()?)));
    }
    let exprs = match sel.get("matchExpressions") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => v.as_array()?.clone(),
    };
    for e in &exprs {
        let key = e.get("key")?.as_str()?;
        let mut values: Vec<&str> = match e.get("values") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => v
                .as_array()?
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()?,
        };
        values.sort_unstable();
        let text = match e.get("operator")?.as_str()? {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        };
        reqs.push((key.to_string(), text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(
        reqs.into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Whether a `metav1.LabelSelector` object selects an object with `labels`
/// (`LabelSelectorAsSelector(sel).Matches(labels)`): a missing selector (`null`) selects
/// nothing, an empty one everything, a malformed one nothing.
pub fn label_selector_matches(sel: &Value, labels: &Value) -> bool {
    if sel.is_null() {
        return false;
    }
    let Some(text) = label_selector_string(sel) else {
        return false;
    };
    match Selector::parse(Kind::Pod, Some(&text), None) {
        Ok(s) => s.matches(
            Kind::Pod,
            &serde_json::json!({ "metadata": { "labels": labels } }),
        ),
        Err(_) => false,
    }
}

/// The field labels the API server accepts in field selectors for `kind`.
fn field_supported(kind: Kind, field: &str) -> bool {
    match kind {
        Kind::Node => matches!(field, "metadata.name" | "spec.unschedulable"),
        Kind::Namespace => matches!(field, "metadata.name" | "status.phase"),
        Kind::ConfigMap
        | Kind::DaemonSet
        | Kind::NetworkPolicy
        | Kind::ServiceAccount
        | Kind::Role
        | Kind::RoleBinding => matches!(field, "metadata.name" | "metadata.namespace"),
        Kind::ClusterRole | Kind::ClusterRoleBinding => field == "metadata.name",
        Kind::Pod => matches!(
            field,
            "metadata.name"
                | "metadata.namespace"
                | "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
    }
}

/// The value a field selector compares: the string form the server's field set holds (booleans
/// as `true`/`false`, absent strings as empty).
fn field_value(kind: Kind, obj: &Value, field: &str) -> String {
    let text = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let flag = |ptr: &str| {
        obj.pointer(ptr)
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string()
    };
    match (kind, field) {
        (_, "metadata.name") => text("/metadata/name"),
        (_, "metadata.namespace") => text("/metadata/namespace"),
        (Kind::Node, "spec.unschedulable") => flag("/spec/unschedulable"),
        (Kind::Pod, "spec.hostNetwork") => flag("/spec/hostNetwork"),
        (Kind::Pod, "status.podIP") => obj
            .pointer("/status/podIPs/0/ip")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text("/status/podIP")),
        (_, other) => text(&format!("/{}", other.replace('.', "/"))),
    }
}

/// Splits on `sep` where it is not escaped with a backslash (the field selector syntax).
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    out.push(cur);
    out
}

fn unescape_field(value: &str) -> Result<String, ApiError> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=')) => out.push(e),
            Some(e) => {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: invalid escape sequence: \\{e}"
                )));
            }
            None => {
                return Err(ApiError::bad_request(
                    "invalid field selector: unterminated escape sequence",
                ));
            }
        }
    }
    Ok(out)
}

fn parse_field_term(term: &str) -> Result<FieldReq, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid field selector: invalid selector: '{term}'; can't understand '{term}'"
        ))
    };
    for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
        if let Some((field, value)) = term.split_once(op) {
            let field = field.trim();
            if field.is_empty() {
                return Err(bad());
            }
            return Ok(FieldReq {
                field: field.to_string(),
                value: unescape_field(value.trim())?,
                equal,
            });
        }
    }
    Err(bad())
}

/// Tokens of the label selector grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    In,
    NotIn,
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('!', _) => (Tok::Not, 1),
            ('=', Some('=')) => (Tok::DoubleEq, 2),
            ('=', _) => (Tok::Eq, 1),
            ('>', _) => (Tok::Gt, 1),
            ('<', _) => (Tok::Lt, 1),
            ('(', _) => (Tok::Open, 1),
            (')', _) => (Tok::Close, 1),
            (',', _) => (Tok::Comma, 1),
            _ => {
                let start = i;
                while i < chars.len() && !" \t\n!=<>(),".contains(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                toks.push(match word.as_str() {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    _ => Tok::Ident(word),
                });
                continue;
            }
        };
        toks.push(tok);
        i += len;
    }
    toks
}

fn parse_error(what: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {what}"))
}

/// Whether `s` is a valid label value (empty, or up to 63 characters of `[A-Za-z0-9_.-]`
/// beginning and ending with an alphanumeric).
fn valid_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Whether `s` is a valid label key: an optional DNS subdomain prefix and `/`, then a name as
/// [`valid_label_value`] but non-empty.
fn valid_label_key(s: &str) -> bool {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !crate::strategy::dns_subdomain(prefix) {
                return false;
            }
            name
        }
        None => s,
    };
    !name.is_empty() && valid_label_value(name)
}

fn parse_labels(text: &str) -> Result<Vec<(String, LabelOp)>, ApiError> {
    let toks = tokenize(text);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let negated = toks.get(i) == Some(&Tok::Not);
        if negated {
            i += 1;
        }
        let Some(Tok::Ident(key)) = toks.get(i) else {
            return Err(parse_error("expected a label key"));
        };
        if !valid_label_key(key) {
            return Err(parse_error(&format!("invalid label key {key:?}")));
        }
        i += 1;
        let op = if negated {
            LabelOp::DoesNotExist
        } else {
            match toks.get(i) {
                None | Some(Tok::Comma) => LabelOp::Exists,
                Some(Tok::Eq | Tok::DoubleEq | Tok::NotEq) => {
                    let equal = toks[i] != Tok::NotEq;
                    i += 1;
                    let value = match toks.get(i) {
                        Some(Tok::Ident(v)) => {
                            i += 1;
                            v.clone()
                        }
                        _ => String::new(),
                    };
                    if !valid_label_value(&value) {
                        return Err(parse_error(&format!("invalid label value {value:?}")));
                    }
                    if equal {
                        LabelOp::In(vec![value])
                    } else {
                        LabelOp::NotIn(vec![value])
                    }
                }
                Some(Tok::Gt | Tok::Lt) => {
                    let gt = toks[i] == Tok::Gt;
                    i += 1;
                    let Some(Tok::Ident(v)) = toks.get(i) else {
                        return Err(parse_error("expected an integer after > or <"));
                    };
                    let n: i64 = v
                        .parse()
                        .map_err(|_| parse_error(&format!("{v:?} is not an integer")))?;
                    i += 1;
                    if gt { LabelOp::Gt(n) } else { LabelOp::Lt(n) }
                }
                Some(Tok::In | Tok::NotIn) => {
                    let is_in = toks[i] == Tok::In;
                    i += 1;
                    let (values, next) = parse_set(&toks, i)?;
                    i = next;
                    if is_in {
                        LabelOp::In(values)
                    } else {
                        LabelOp::NotIn(values)
                    }
                }
                Some(t) => return Err(parse_error(&format!("unexpected {t:?} after {key:?}"))),
            }
        };
        out.push((key.clone(), op));
        match toks.get(i) {
            None => return Ok(out),
            Some(Tok::Comma) => i += 1,
            Some(t) => return Err(parse_error(&format!("expected ',' but found {t:?}"))),
        }
    }
}

/// `( v1, v2 )` starting at `i`; returns the values and the index after `)`.
fn parse_set(toks: &[Tok], mut i: usize) -> Result<(Vec<String>, usize), ApiError> {
    if toks.get(i) != Some(&Tok::Open) {
        return Err(parse_error("expected '(' after in/notin"));
    }
    i += 1;
    let mut values = Vec::new();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(v)) => {
                if !valid_label_value(v) {
                    return Err(parse_error(&format!("invalid label value {v:?}")));
                }
                values.push(v.clone());
                i += 1;
            }
            Some(Tok::Comma | Tok::Close) => values.push(String::new()),
            _ => return Err(parse_error("unterminated value set")),
        }
        match toks.get(i) {
            Some(Tok::Comma) => i += 1,
            Some(Tok::Close) => return Ok((values, i + 1)),
            _ => return Err(parse_error("expected ',' or ')' in a value set")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata":{"name":"p1","namespace":"default","labels":labels},
               "spec":{"nodeName":"n1","hostNetwork":true},
               "status":{"phase":"Running","podIPs":[{"ip":"10.244.0.5"}]}})
    }

    fn sel(l: &str, f: &str) -> Selector {
        Selector::parse(Kind::Pod, Some(l), Some(f)).unwrap()
    }

    #[test]
    fn label_selector_grammar_and_semantics() {
        let p = pod(json!({"app":"web","tier":"front","n":"7"}));
        for (s, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("app=web,tier=back", false),
            ("app=web, tier in (front)", true),
            ("n>5", true),
            ("n<5", false),
            ("example.com/role=x", false),
        ] {
            assert_eq!(sel(s, "").matches(Kind::Pod, &p), want, "{s}");
        }
        for bad in [
            "=x",
            "app=",
            "app in web",
            "app in (web",
            "a b",
            "Bad Key=x",
            "n>x",
        ] {
            let r = Selector::parse(Kind::Pod, Some(bad), None);
            // `app=` is valid: an empty value.
            if bad == "app=" {
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err().code, 400, "{bad}");
            }
        }
        assert!(
            Selector::parse(Kind::Pod, Some(""), None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn label_selector_objects() {
        let sel = json!({"matchLabels": {"tier": "node", "app": "flannel"},
                         "matchExpressions": [{"key": "os", "operator": "NotIn", "values": ["w", "m"]},
                                              {"key": "gpu", "operator": "DoesNotExist"}]});
        assert_eq!(
            label_selector_string(&sel).unwrap(),
            "app=flannel,!gpu,os notin (m,w),tier=node"
        );
        let labels = json!({"app": "flannel", "tier": "node", "os": "linux"});
        assert!(label_selector_matches(&sel, &labels));
        assert!(!label_selector_matches(&sel, &json!({"app": "flannel"})));
        assert!(
            label_selector_matches(&json!({}), &json!({})),
            "empty: everything"
        );
        assert!(
            !label_selector_matches(&Value::Null, &labels),
            "none: nothing"
        );
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Near"}]});
        assert_eq!(label_selector_string(&bad), None);
        assert!(!label_selector_matches(&bad, &labels));
    }

    #[test]
    fn field_selectors_per_kind() {
        let p = pod(json!({}));
        assert!(sel("", "metadata.name=p1").matches(Kind::Pod, &p));
        assert!(sel("", "spec.nodeName=n1,status.phase!=Failed").matches(Kind::Pod, &p));
        assert!(sel("", "spec.hostNetwork=true").matches(Kind::Pod, &p));
        assert!(sel("", "status.podIP=10.244.0.5").matches(Kind::Pod, &p));
        assert!(!sel("", "metadata.namespace==kube-system").matches(Kind::Pod, &p));
        let e = Selector::parse(Kind::Node, None, Some("spec.nodeName=n1")).unwrap_err();
        assert_eq!(e.message, "field label not supported: spec.nodeName");
        let node = json!({"metadata":{"name":"a,b"}});
        let s = Selector::parse(Kind::Node, None, Some(r"metadata.name=a\,b")).unwrap();
        assert!(s.matches(Kind::Node, &node));
        let s = Selector::parse(Kind::Node, None, Some("spec.unschedulable=false")).unwrap();
        assert!(s.matches(Kind::Node, &node));
        assert_eq!(
            Selector::parse(Kind::Node, None, Some("metadata.name"))
                .unwrap_err()
                .code,
            400
        );
    }
}
