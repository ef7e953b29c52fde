//! JSON reading and writing with the semantics of Go's `encoding/json`.
//!
//! Upstream decodes net-conf.json, the `Backend` sub-config, lease attributes and the CNI
//! netconf into Go structs. Operators rely on what that accepts: keys match field names
//! case-insensitively, unknown keys are ignored, a `null` leaves a field alone, and the last of
//! duplicate keys wins. serde's derive does none of that, so this module offers
//! [`GoObject`], an object kept in document order with typed, Go-style getters, and
//! [`RawJson`], the equivalent of `json.RawMessage` including how Go re-emits it.
//!
//! The getters assume the Go struct being mirrored has no two field names that fold to the same
//! key (true for every struct flannel decodes), so Go's "exact match wins" rule never changes
//! the outcome.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest piece of offending JSON quoted in an error message.
const MAX_GOT_CHARS: usize = 64;

/// Why a JSON document could not be read the way Go would read it.
///
/// Messages name the key as written in the document and what was expected, so an operator can
/// find the mistake in a ConfigMap or etcd value without knowing Go's type names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoJsonError {
    /// The text is not JSON at all.
    #[error("invalid JSON: {0}")]
    Syntax(#[source] JsonSyntaxError),
    /// The document is valid JSON but not an object (Go: "cannot unmarshal array into ...").
    #[error("expected a JSON object, got {got}")]
    NotObject {
        /// What was found instead, e.g. `array`.
        got: &'static str,
    },
    /// A known key holds a value of the wrong type or format.
    #[error("\"{key}\": expected {expected}, got {got}")]
    Field {
        /// The key as written, prefixed with its parent object's path (`Backend.Type`).
        key: String,
        /// What Go would have accepted, e.g. `an unsigned integer`.
        expected: &'static str,
        /// The offending JSON text, shortened if long.
        got: String,
    },
}

impl From<serde_json::Error> for GoJsonError {
    /// A document serde_json could not read is [`GoJsonError::Syntax`].
    fn from(e: serde_json::Error) -> Self {
        GoJsonError::Syntax(JsonSyntaxError(Arc::new(e)))
    }
}

/// serde_json's error for text that is not JSON, kept as the cause of
/// [`GoJsonError::Syntax`].
///
/// Wrapped so that [`GoJsonError`] stays a plain value (`Clone`, `PartialEq`) that configs
/// and leases can carry and tests can compare: two syntax errors are equal when serde_json
/// reports the same category, position and text. `Display` and `source` are serde_json's.
#[derive(Debug, Clone)]
pub struct JsonSyntaxError(Arc<serde_json::Error>);

impl JsonSyntaxError {
    /// serde_json's error.
    pub fn inner(&self) -> &serde_json::Error {
        &self.0
    }
}

impl PartialEq for JsonSyntaxError {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        a.classify() == b.classify()
            && a.line() == b.line()
            && a.column() == b.column()
            && a.to_string() == b.to_string()
    }
}

impl Eq for JsonSyntaxError {}

impl fmt::Display for JsonSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for JsonSyntaxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Folds a key the way Go's `encoding/json` does before its case-insensitive comparison.
///
/// ASCII letters fold to upper case. Go folds every rune to the smallest rune of its
/// `unicode.SimpleFold` orbit; the only non-ASCII runes whose orbit contains an ASCII letter are
/// U+017F (long s, folds to `S`) and U+212A (Kelvin sign, folds to `K`), and flannel's field
/// names are ASCII, so those two are the only ones that can change a match.
pub fn fold_key(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{017f}' => 'S',
            '\u{212a}' => 'K',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Whether a JSON key selects the Go struct field `field`.
pub fn key_matches(key: &str, field: &str) -> bool {
    key == field || fold_key(key) == fold_key(field)
}

/// The JSON kind of a raw value, named as Go names it in its errors.
pub(crate) fn kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// Shortens raw JSON for an error message.
pub(crate) fn shorten(raw: &str) -> String {
    if raw.chars().count() <= MAX_GOT_CHARS {
        raw.to_string()
    } else {
        let mut s: String = raw.chars().take(MAX_GOT_CHARS).collect();
        s.push('…');
        s
    }
}

/// A JSON object kept in document order, read with Go's decoding rules.
///
/// Why not `serde_json::Value`: its map is sorted, which loses the document order needed for
/// "the last duplicate key wins" once keys differ only in case, and enabling `preserve_order`
/// would change JSON output for every crate in the workspace.
#[derive(Debug, Clone, Default)]
pub struct GoObject {
    path: String,
    entries: Vec<(String, Box<RawValue>)>,
}

struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Box<RawValue> = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

impl GoObject {
    /// Parses a JSON document that Go would decode into a struct.
    ///
    /// Returns `Ok(None)` for a top-level `null`, which Go accepts and which leaves every field
    /// at its default.
    pub fn parse(text: &str) -> Result<Option<Self>, GoJsonError> {
        let raw: &RawValue = serde_json::from_str(text).map_err(GoJsonError::from)?;
        match kind(raw.get()) {
            "null" => Ok(None),
            "object" => Self::from_object_text(raw.get(), String::new()).map(Some),
            other => Err(GoJsonError::NotObject { got: other }),
        }
    }

    /// Like [`GoObject::parse`] for bytes. Invalid UTF-8 is replaced by U+FFFD first, as Go
    /// does inside strings.
    pub fn parse_slice(bytes: &[u8]) -> Result<Option<Self>, GoJsonError> {
        Self::parse(&String::from_utf8_lossy(bytes))
    }

    fn from_object_text(text: &str, path: String) -> Result<Self, GoJsonError> {
        let Entries(entries) = serde_json::from_str(text).map_err(GoJsonError::from)?;
        Ok(GoObject { path, entries })
    }

    /// The full key path used in error messages (`Backend.Type`).
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    fn field_error(&self, key: &str, expected: &'static str, raw: &RawValue) -> GoJsonError {
        GoJsonError::Field {
            key: self.key_path(key),
            expected,
            got: shorten(raw.get()),
        }
    }

    /// Every entry, in document order: the key as written and its raw value.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// The entries that select field `field`, in document order.
    pub fn matching<'a, 'f>(
        &'a self,
        field: &'f str,
    ) -> impl Iterator<Item = (&'a str, &'a RawValue)> + use<'a, 'f> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_str(), &**v))
            .filter(move |(k, _)| key_matches(k, field))
    }

    /// The raw value of the last entry selecting `field`, `null` included.
    ///
    /// This is what Go stores into a `json.RawMessage` field: unlike the typed getters, a later
    /// `null` replaces an earlier value.
    pub fn raw<'a>(&'a self, field: &str) -> Option<&'a RawValue> {
        self.matching(field).last().map(|(_, v)| v)
    }

    /// Decodes `field` with `decode`, Go style: every matching entry must decode (a wrong type
    /// anywhere is an error), `null` entries are skipped, and the last decoded value wins.
    pub fn decode<T>(
        &self,
        field: &str,
        expected: &'static str,
        decode: impl Fn(&RawValue) -> Option<T>,
    ) -> Result<Option<T>, GoJsonError> {
        let mut out = None;
        for (key, raw) in self.matching(field) {
            if raw.get() == "null" {
                continue;
            }
            match decode(raw) {
                Some(v) => out = Some(v),
                None => return Err(self.field_error(key, expected, raw)),
            }
        }
        Ok(out)
    }

    /// A Go `bool` field: only `true` and `false` are accepted.
    pub fn bool(&self, field: &str) -> Result<Option<bool>, GoJsonError> {
        self.decode(field, "a boolean", |raw| match raw.get() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }

    /// A Go `uint`/`uint64` field: a JSON number made only of decimal digits (Go rejects `-1`,
    /// `24.0` and `1e2`) that fits in 64 bits.
    pub fn uint(&self, field: &str) -> Result<Option<u64>, GoJsonError> {
        self.decode(field, "an unsigned integer", |raw| {
            let t = raw.get();
            if t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse().ok()
            } else {
                None
            }
        })
    }

    /// A Go `int`/`int64` field: an optional minus sign and decimal digits, within 64 bits.
    pub fn int(&self, field: &str) -> Result<Option<i64>, GoJsonError> {
        self.decode(field, "an integer", |raw| {
            let t = raw.get();
            let digits = t.strip_prefix('-').unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                t.parse().ok()
            } else {
                None
            }
        })
    }

    /// A Go `string` field: a JSON string, unescaped.
    pub fn string(&self, field: &str) -> Result<Option<String>, GoJsonError> {
        self.decode(field, "a string", decode_string)
    }

    /// A string field whose text must parse with `parse` (addresses, CIDRs), reported as
    /// `expected` when it does not.
    pub fn string_with<T>(
        &self,
        field: &str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, GoJsonError> {
        self.decode(field, expected, |raw| parse(&decode_string(raw)?))
    }

    /// A nested struct field. `null` or an absent key gives `None`; anything but an object is an
    /// error. Errors inside it are reported with the parent key as a path prefix.
    pub fn object(&self, field: &str) -> Result<Option<GoObject>, GoJsonError> {
        let mut out = None;
        for (key, raw) in self.matching(field) {
            match kind(raw.get()) {
                "null" => {}
                "object" => {
                    out = Some(Self::from_object_text(raw.get(), self.key_path(key))?);
                }
                _ => return Err(self.field_error(key, "an object", raw)),
            }
        }
        Ok(out)
    }

    /// Wraps a raw object value, naming it `path` in error messages.
    ///
    /// `null` gives `Ok(None)`; a non-object is an error naming `path`.
    pub fn from_raw(raw: &RawValue, path: &str) -> Result<Option<Self>, GoJsonError> {
        match kind(raw.get()) {
            "null" => Ok(None),
            "object" => Self::from_object_text(raw.get(), path.to_string()).map(Some),
            _ => Err(GoJsonError::Field {
                key: path.to_string(),
                expected: "an object",
                got: shorten(raw.get()),
            }),
        }
    }
}

fn decode_string(raw: &RawValue) -> Option<String> {
    if kind(raw.get()) != "string" {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// A JSON value kept as text, like Go's `json.RawMessage`.
///
/// The text is always valid JSON in the compact form Go's `json.Marshal` writes for a
/// `RawMessage`: whitespace between tokens removed, key order and number spelling kept, and
/// `<`, `>`, `&`, U+2028 and U+2029 inside strings escaped. Storing that form means values
/// compare equal exactly when Go would write the same bytes (etcd values, annotations).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// Validates `text` as a single JSON value and stores its Go-compact form.
    pub fn parse(text: &str) -> Result<Self, GoJsonError> {
        let raw: &RawValue = serde_json::from_str(text).map_err(GoJsonError::from)?;
        Ok(Self::from_raw(raw))
    }

    /// Stores an already validated raw value in Go-compact form.
    pub fn from_raw(raw: &RawValue) -> Self {
        RawJson(compact_go(raw.get()).into_boxed_str())
    }

    /// Serialises a `serde_json::Value` (for values built in code, such as backend data).
    pub fn from_value(value: &serde_json::Value) -> Self {
        RawJson(compact_go(&value.to_string()).into_boxed_str())
    }

    /// Serialises any `Serialize` type, e.g. a backend's lease data struct.
    pub fn from_serialize<T: serde::Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(RawJson(
            compact_go(&serde_json::to_string(value)?).into_boxed_str(),
        ))
    }

    /// The JSON `null`, which Go writes for an explicitly null `RawMessage`.
    pub fn null() -> Self {
        RawJson("null".into())
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(&self) -> bool {
        &*self.0 == "null"
    }

    /// The value as a `serde_json::Value` (object keys end up sorted).
    pub fn to_value(&self) -> serde_json::Value {
        // The text was validated on construction, so this cannot fail; Null is a safe fallback.
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// Deserialises into `T` with serde's (case-sensitive) rules.
    pub fn deserialize<T: de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Reads the value as a Go struct: `null` gives `None`, a non-object is an error naming
    /// `path`.
    pub fn object(&self, path: &str) -> Result<Option<GoObject>, GoJsonError> {
        match kind(&self.0) {
            "null" => Ok(None),
            "object" => GoObject::from_object_text(&self.0, path.to_string()).map(Some),
            _ => Err(GoJsonError::Field {
                key: path.to_string(),
                expected: "an object",
                got: shorten(&self.0),
            }),
        }
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", self.0)
    }
}

impl std::str::FromStr for RawJson {
    type Err = GoJsonError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RawJson::parse(s)
    }
}

/// Compacts valid JSON text the way Go's `json.Marshal` re-emits a `RawMessage`
/// (`json.Compact` with HTML escaping).
pub fn compact_go(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
                continue;
            }
            match c {
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                _ => push_html_safe(&mut out, c),
            }
        } else {
            match c {
                ' ' | '\t' | '\n' | '\r' => {}
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
    }
    out
}

fn push_html_safe(out: &mut String, c: char) {
    match c {
        '<' => out.push_str("\\u003c"),
        '>' => out.push_str("\\u003e"),
        '&' => out.push_str("\\u0026"),
        '\u{2028}' => out.push_str("\\u2028"),
        '\u{2029}' => out.push_str("\\u2029"),
        c => out.push(c),
    }
}

/// Encodes a string as Go's `json.Marshal` does (Go 1.22 and later): `\"`, `\\`, `\b`, `\f`,
/// `\n`, `\r`, `\t`, other control characters as `\u00xx`, and HTML-sensitive characters
/// escaped as in [`compact_go`].
///
/// This is the one Go string escaper of the workspace; see [`write_go_string`] for encoders
/// that append to one buffer.
pub fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_go_string(&mut out, s);
    out
}

/// Appends `s` to `out` as [`go_string`] encodes it, without allocating, for encoders that
/// build a whole document in one buffer (the CNI plugin's delegate config and errors).
pub fn write_go_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' => {
                let b = u32::from(c);
                out.push_str("\\u00");
                for nibble in [b >> 4, b & 0xf] {
                    out.push(char::from(HEX[usize::try_from(nibble).unwrap_or_default()]));
                }
            }
            c => push_html_safe(out, c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> GoObject {
        GoObject::parse(text).unwrap().unwrap()
    }

    #[test]
    fn keys_fold_like_go() {
        assert!(key_matches("subnetlen", "SubnetLen"));
        assert!(key_matches("SUBNETLEN", "SubnetLen"));
        assert!(key_matches("\u{017f}ubnetLen", "SubnetLen"));
        assert!(key_matches("Bac\u{212a}end", "Backend"));
        assert!(!key_matches("Subnet_Len", "SubnetLen"));
        assert!(!key_matches("SubnetLen ", "SubnetLen"));
    }

    #[test]
    fn top_level_kinds() {
        assert!(GoObject::parse("null").unwrap().is_none());
        assert!(GoObject::parse(" {} ").unwrap().is_some());
        assert_eq!(
            GoObject::parse("[1]").unwrap_err().to_string(),
            "expected a JSON object, got array"
        );
        assert_eq!(
            GoObject::parse("\"x\"").unwrap_err(),
            GoJsonError::NotObject { got: "string" }
        );
        assert!(matches!(
            GoObject::parse("{").unwrap_err(),
            GoJsonError::Syntax(_)
        ));
        assert!(matches!(
            GoObject::parse("{} x").unwrap_err(),
            GoJsonError::Syntax(_)
        ));
        assert!(matches!(
            GoObject::parse("").unwrap_err(),
            GoJsonError::Syntax(_)
        ));
    }

    #[test]
    fn last_duplicate_wins_and_null_is_skipped() {
        let o = obj(r#"{"A":1,"a":2}"#);
        assert_eq!(o.uint("A").unwrap(), Some(2));
        let o = obj(r#"{"A":1,"a":null}"#);
        assert_eq!(o.uint("A").unwrap(), Some(1));
        let o = obj(r#"{"a":null}"#);
        assert_eq!(o.uint("A").unwrap(), None);
        assert_eq!(o.raw("A").unwrap().get(), "null");
        // A wrong type anywhere is an error even if a later value is fine.
        let o = obj(r#"{"A":"x","a":2}"#);
        assert_eq!(
            o.uint("A").unwrap_err().to_string(),
            r#""A": expected an unsigned integer, got "x""#
        );
    }

    #[test]
    fn scalar_types_follow_go() {
        let o = obj(
            r#"{"u":24,"f":24.0,"n":-1,"e":1e2,"big":18446744073709551615,"over":18446744073709551616,
                "i":-5,"b":true,"s":"x\u0041","bs":"true"}"#,
        );
        assert_eq!(o.uint("u").unwrap(), Some(24));
        assert!(o.uint("f").is_err());
        assert!(o.uint("n").is_err());
        assert!(o.uint("e").is_err());
        assert_eq!(o.uint("big").unwrap(), Some(u64::MAX));
        assert!(o.uint("over").is_err());
        assert_eq!(o.int("i").unwrap(), Some(-5));
        assert!(o.int("f").is_err());
        assert_eq!(o.bool("b").unwrap(), Some(true));
        assert_eq!(
            o.bool("bs").unwrap_err().to_string(),
            r#""bs": expected a boolean, got "true""#
        );
        assert_eq!(o.string("s").unwrap().as_deref(), Some("xA"));
        assert!(o.string("u").is_err());
        assert_eq!(o.string("missing").unwrap(), None);
    }

    #[test]
    fn nested_objects_report_paths() {
        let o = obj(r#"{"backend":{"type":1}}"#);
        let b = o.object("Backend").unwrap().unwrap();
        assert_eq!(
            b.string("Type").unwrap_err().to_string(),
            r#""backend.type": expected a string, got 1"#
        );
        let o = obj(r#"{"Backend":"vxlan"}"#);
        assert_eq!(
            o.object("Backend").unwrap_err().to_string(),
            r#""Backend": expected an object, got "vxlan""#
        );
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = format!("\"{}\"", "a".repeat(200));
        let o = obj(&format!("{{\"A\":{long}}}"));
        let msg = o.uint("A").unwrap_err().to_string();
        assert!(msg.ends_with('…'), "{msg}");
        assert!(msg.chars().count() < 110, "{msg}");
    }

    #[test]
    fn raw_json_is_compacted_like_go() {
        let r =
            RawJson::parse(" { \"VNI\" : 1 ,\n \"VtepMAC\" : \"c6:d2:32:6f:8f:44\" } ").unwrap();
        assert_eq!(r.as_str(), r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#);
        let r = RawJson::parse(r#"{"b":1.50, "a":"x <y> & \"z\" \u00e9 é"}"#).unwrap();
        assert_eq!(
            r.as_str(),
            r#"{"b":1.50,"a":"x \u003cy\u003e \u0026 \"z\" \u00e9 é"}"#
        );
        assert_eq!(RawJson::null().as_str(), "null");
        assert!(RawJson::parse("null").unwrap().is_null());
        assert!(RawJson::parse("{").is_err());
        assert!(RawJson::parse("").is_err());
        let v = serde_json::json!({"VNI": 1});
        assert_eq!(RawJson::from_value(&v).as_str(), r#"{"VNI":1}"#);
        assert_eq!(RawJson::from_value(&v).to_value(), v);
        #[derive(serde::Serialize)]
        struct VxlanData {
            #[serde(rename = "VNI")]
            vni: u32,
            #[serde(rename = "VtepMAC")]
            vtep_mac: String,
        }
        let d = VxlanData {
            vni: 1,
            vtep_mac: "aa:bb:cc:dd:ee:ff".into(),
        };
        assert_eq!(
            RawJson::from_serialize(&d).unwrap().as_str(),
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#
        );
        let r: RawJson = "[1, 2]".parse().unwrap();
        assert_eq!(r.to_string(), "[1,2]");
        assert_eq!(format!("{r:?}"), "RawJson([1,2])");
        assert_eq!(r.deserialize::<Vec<u8>>().unwrap(), vec![1, 2]);
        assert_eq!(
            r.object("BackendData").unwrap_err().to_string(),
            r#""BackendData": expected an object, got [1,2]"#
        );
        assert!(RawJson::null().object("x").unwrap().is_none());
    }

    #[test]
    fn go_string_escapes() {
        assert_eq!(go_string("vxlan"), r#""vxlan""#);
        assert_eq!(
            go_string("a\"b\\c\n\t\r\u{8}\u{c}\u{1}<>&\u{2028}é"),
            r#""a\"b\\c\n\t\r\b\f\u0001\u003c\u003e\u0026\u2028é""#
        );
    }

    #[test]
    fn write_go_string_appends() {
        // What is already in the buffer stays; control characters without a short escape get
        // lower-case hex; DEL is not a control character to Go's encoder.
        let mut out = String::from("x:");
        write_go_string(&mut out, "\u{1f}\u{1b}\u{7f}\u{2029}");
        assert_eq!(out, "x:\"\\u001f\\u001b\u{7f}\\u2029\"");
    }
}
