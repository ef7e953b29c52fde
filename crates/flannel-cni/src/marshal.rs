//! JSON output byte-compatible with Go's `encoding/json.Marshal`.
//!
//! Upstream builds the delegate config as a `map[string]interface{}` and saves the bytes
//! `json.Marshal` produces. To save the same bytes (so a node can switch between upstream and
//! flannel-rs with pods running) the encoder must follow Go's rules, not serde_json's:
//! * object keys sorted bytewise (Go sorts map keys), whatever order the input had;
//! * strings escaped with HTML safety by the workspace's one Go string escaper,
//!   [`flannel_types::gojson::write_go_string`];
//! * numbers pass through `float64` (Go decodes every JSON number into `interface{}` as
//!   `float64`) and print in the shortest form, with an exponent (`1e+21`, `1e-7`) outside
//!   `[1e-6, 1e21)`.

use std::net::IpAddr;

use flannel_types::gojson::write_go_string;
use ipnet::IpNet;
use serde_json::{Map, Value};

/// Formats a number as Go's encoder formats a `float64`.
pub fn go_float(f: f64) -> String {
    if !f.is_finite() {
        // Go refuses to encode these; JSON input can never produce them.
        return "null".to_string();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{f:e}");
        // Rust writes `1e21` / `1.5e-7`; Go writes `1e+21` / `1.5e-7`.
        match s.split_once('e') {
            Some((mant, exp)) if !exp.starts_with('-') => format!("{mant}e+{exp}"),
            _ => s,
        }
    } else {
        // `Display` of f64 is the shortest round-trip form without an exponent, like Go's 'f'
        // format with precision -1 (`1472`, `0.5`, `100000000000000000000`).
        format!("{f}")
    }
}

/// Appends a JSON value encoded as Go would encode the `interface{}` it decodes to.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => write_go_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(m) => write_map_with(out, m, []),
    }
}

/// One member of an object being written: a JSON value or text already encoded.
pub enum Field<'a> {
    /// A value to encode Go-style.
    Value(&'a Value),
    /// Pre-encoded JSON (used where Go marshals a struct, whose field order is not sorted).
    Raw(&'a str),
}

/// Appends an object whose keys are sorted bytewise, as Go sorts map keys.
pub fn write_object<'a>(out: &mut String, fields: impl Iterator<Item = (&'a str, Field<'a>)>) {
    let mut fields: Vec<(&str, Field<'_>)> = fields.collect();
    fields.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_go_string(out, k);
        out.push(':');
        match v {
            Field::Value(v) => write_value(out, v),
            Field::Raw(r) => out.push_str(r),
        }
    }
    out.push('}');
}

/// Appends `map` plus the `extra` members (which take the place of same-named keys of `map`)
/// as one object with keys sorted, as Go marshals a map it added keys to.
pub fn write_map_with<'a, const N: usize>(
    out: &mut String,
    map: &'a Map<String, Value>,
    extra: [(&'a str, Field<'a>); N],
) {
    let names: [&str; N] = std::array::from_fn(|i| extra[i].0);
    write_object(
        out,
        map.iter()
            .filter(|(k, _)| !names.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), Field::Value(v)))
            .chain(extra),
    );
}

/// Encodes a map Go-style, as a `String`.
pub fn encode_map(m: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(256);
    write_map_with(&mut out, m, []);
    out
}

/// Prints an address as Go's `net.IP.String()` does: IPv4-mapped IPv6 addresses print dotted.
pub fn go_ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => a.to_string(),
        },
    }
}

/// Prints an address and prefix as Go's `net.IPNet.String()` does for a CIDR parsed by
/// `net.ParseCIDR` (the address is printed as given, host bits included).
///
/// An IPv4-mapped IPv6 CIDR prints as dotted IPv4 with the prefix reduced by 96, as in Go.
pub fn go_cidr_string(ip: IpAddr, prefix: u8) -> String {
    match ip {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            format!("{}/{}", go_ip_string(ip), prefix.saturating_sub(96))
        }
        _ => format!("{}/{prefix}", go_ip_string(ip)),
    }
}

/// [`go_cidr_string`] of a network.
pub fn go_net_string(net: &IpNet) -> String {
    go_cidr_string(net.addr(), net.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut out = String::new();
        write_value(&mut out, &v);
        out
    }

    #[test]
    fn keys_are_sorted_bytewise_at_every_level() {
        assert_eq!(
            enc(r#"{"b":1,"a":{"z":true,"Z":null,"_":[{"y":1,"x":2}]}}"#),
            r#"{"a":{"Z":null,"_":[{"x":2,"y":1}],"z":true},"b":1}"#
        );
    }

    #[test]
    fn strings_escape_like_go() {
        assert_eq!(
            enc(r#""<a href=\"x\">&amp;</a>""#),
            r#""\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e""#
        );
        assert_eq!(
            enc(r#""\u0001\b\f\n\r\t\u001f\u007f\u2028\u2029é\\/""#),
            "\"\\u0001\\b\\f\\n\\r\\t\\u001f\u{7f}\\u2028\\u2029é\\\\/\""
        );
    }

    #[test]
    fn numbers_format_like_go_float64() {
        for (input, want) in [
            ("1472", "1472"),
            ("1472.0", "1472"),
            ("-0.5", "-0.5"),
            ("1e3", "1000"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("1.5e-7", "1.5e-7"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("123456789e20", "1.23456789e+28"),
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551615", "18446744073709552000"),
            ("0", "0"),
            ("-0.0", "-0"),
        ] {
            assert_eq!(enc(input), want, "{input}");
        }
    }

    #[test]
    fn cidrs_print_like_go() {
        let p = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(go_cidr_string(p("10.96.0.1"), 12), "10.96.0.1/12");
        assert_eq!(go_cidr_string(p("fc00::1"), 64), "fc00::1/64");
        assert_eq!(go_cidr_string(p("::ffff:10.1.17.0"), 120), "10.1.17.0/24");
        assert_eq!(go_cidr_string(p("::ffff:10.1.17.0"), 64), "10.1.17.0/0");
    }
}
