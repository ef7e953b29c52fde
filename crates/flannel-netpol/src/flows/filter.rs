//! The query of `GET /flows` (and of the CLI, which sends the same parameters to every node):
//! parse, match, and write back as a query string.
//!
//! Parameters: `from_pod=NS/NAME`, `to_pod=NS/NAME`, `pod=NS/NAME` (either side),
//! `namespace=NS` (either side), `verdict=FORWARDED|DROPPED`, `protocol=TCP|UDP|...`,
//! `port=N` (either side), `since=DURATION` (`30s`, `5m`, `1h30m`, `250ms`), `follow=1`.
//! Every filter given must match. A bad parameter is an error naming it and what was expected,
//! because a silently ignored filter shows flows the user asked not to see.

use std::time::Duration;

use jiff::Timestamp;

use crate::flows::record::{FlowRecord, Protocol, Verdict};

/// Why a query was refused; the text is the 400 response's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A known parameter with a value of the wrong shape.
    #[error("bad value {value:?} for parameter {param}: expected {expected}")]
    BadValue {
        /// The parameter's name.
        param: String,
        /// The value received (percent-decoded).
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A parameter this endpoint does not know (probably a typo).
    #[error(
        "unknown parameter {param}: expected one of from_pod, to_pod, pod, namespace, verdict, protocol, port, since, follow"
    )]
    Unknown {
        /// The parameter's name.
        param: String,
    },
}

/// A pod named `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodRef {
    /// Parses `NS/NAME` (both non-empty).
    pub fn parse(s: &str) -> Option<PodRef> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| PodRef {
            namespace: ns.into(),
            name: name.into(),
        })
    }

    fn is(&self, side: Option<(&str, &str)>) -> bool {
        side == Some((self.namespace.as_str(), self.name.as_str()))
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A parsed query. `Default` matches everything and does not follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Source pod.
    pub from_pod: Option<PodRef>,
    /// Destination pod.
    pub to_pod: Option<PodRef>,
    /// Either side's pod.
    pub pod: Option<PodRef>,
    /// Either side's namespace.
    pub namespace: Option<String>,
    /// FORWARDED or DROPPED.
    pub verdict: Option<Verdict>,
    /// The protocol.
    pub protocol: Option<Protocol>,
    /// Either side's port.
    pub port: Option<u16>,
    /// Only records at most this old.
    pub since: Option<Duration>,
    /// Keep the response open and stream new matching records.
    pub follow: bool,
}

/// Parses `30s`, `5m`, `2h`, `250ms`, or a sequence like `1h30m`; no sign, no spaces.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
    }
    Some(total)
}

/// Writes a duration the way [`parse_duration`] reads it (whole milliseconds).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Decodes `%XX` and `+` of a query-string component; `None` on a broken escape or bytes
/// that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a query-string value: unreserved characters and `/` stay, the rest is `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn bad(param: &str, value: &str, expected: &'static str) -> FilterError {
    FilterError::BadValue {
        param: param.into(),
        value: value.into(),
        expected,
    }
}

impl FlowFilter {
    /// Parses a query string (`a=b&c=d`, without the `?`); empty matches everything.
    pub fn parse_query(query: &str) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(raw_key).unwrap_or_else(|| raw_key.to_string());
            let value = percent_decode(raw_value)
                .ok_or_else(|| bad(&key, raw_value, "a valid percent-encoded UTF-8 value"))?;
            f.set(&key, &value)?;
        }
        Ok(f)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), FilterError> {
        const POD: &str = "NAMESPACE/NAME";
        match key {
            "from_pod" => self.from_pod = Some(PodRef::parse(value).ok_or(bad(key, value, POD))?),
            "to_pod" => self.to_pod = Some(PodRef::parse(value).ok_or(bad(key, value, POD))?),
            "pod" => self.pod = Some(PodRef::parse(value).ok_or(bad(key, value, POD))?),
            "namespace" if !value.is_empty() && !value.contains('/') => {
                self.namespace = Some(value.into());
            }
            "namespace" => return Err(bad(key, value, "a namespace name")),
            "verdict" => {
                self.verdict = Some(match value.to_ascii_uppercase().as_str() {
                    "FORWARDED" => Verdict::Forwarded,
                    "DROPPED" => Verdict::Dropped,
                    _ => return Err(bad(key, value, "FORWARDED or DROPPED")),
                });
            }
            "protocol" => {
                self.protocol = Some(Protocol::parse(value).ok_or(bad(
                    key,
                    value,
                    "TCP, UDP, ICMP, ICMPv6, SCTP or other",
                ))?);
            }
            "port" => {
                self.port = Some(value.parse::<u16>().ok().filter(|p| *p > 0).ok_or(bad(
                    key,
                    value,
                    "a port number 1..65535",
                ))?);
            }
            "since" => {
                self.since = Some(parse_duration(value).ok_or(bad(
                    key,
                    value,
                    "a duration such as 30s, 5m, 1h30m or 250ms",
                ))?);
            }
            "follow" => {
                self.follow = match value {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(bad(key, value, "1, true, 0 or false")),
                };
            }
            _ => {
                return Err(FilterError::Unknown {
                    param: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The query string that parses back into this filter (what the CLI sends each node).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: String| parts.push(format!("{k}={}", percent_encode(&v)));
        if let Some(p) = &self.from_pod {
            add("from_pod", p.to_string());
        }
        if let Some(p) = &self.to_pod {
            add("to_pod", p.to_string());
        }
        if let Some(p) = &self.pod {
            add("pod", p.to_string());
        }
        if let Some(ns) = &self.namespace {
            add("namespace", ns.clone());
        }
        if let Some(v) = self.verdict {
            add("verdict", v.as_str().into());
        }
        if let Some(p) = self.protocol {
            add("protocol", p.as_str().into());
        }
        if let Some(p) = self.port {
            add("port", p.to_string());
        }
        if let Some(d) = self.since {
            add("since", format_duration(d));
        }
        if self.follow {
            add("follow", "1".into());
        }
        parts.join("&")
    }

    /// Whether `r` passes every filter except `since` (see [`FlowFilter::matches_at`]).
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let (src, dst) = (r.src_pod_ref(), r.dst_pod_ref());
        self.from_pod.as_ref().is_none_or(|p| p.is(src))
            && self.to_pod.as_ref().is_none_or(|p| p.is(dst))
            && self.pod.as_ref().is_none_or(|p| p.is(src) || p.is(dst))
            && self.namespace.as_deref().is_none_or(|ns| {
                r.src_namespace.as_deref() == Some(ns) || r.dst_namespace.as_deref() == Some(ns)
            })
            && self.verdict.is_none_or(|v| r.verdict == v)
            && self.protocol.is_none_or(|p| r.protocol == p)
            && self
                .port
                .is_none_or(|p| r.src_port == Some(p) || r.dst_port == Some(p))
    }

    /// Whether `r` passes every filter, `since` counted back from `now`.
    pub fn matches_at(&self, r: &FlowRecord, now: Timestamp) -> bool {
        self.since.is_none_or(|d| {
            let age = now.duration_since(r.time);
            age.as_nanos() <= i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
        }) && self.matches(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::tests::tcp_facts;

    fn record() -> FlowRecord {
        let mut r = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.2.3", 100));
        r.src_namespace = Some("x".into());
        r.src_pod = Some("a".into());
        r.dst_namespace = Some("y".into());
        r.dst_pod = Some("b".into());
        r
    }

    #[test]
    fn every_parameter_parses_and_round_trips() {
        let q = "from_pod=x%2Fa&to_pod=y/b&pod=x/a&namespace=y&verdict=forwarded\
                 &protocol=tcp&port=80&since=1h30m&follow=1";
        let f = FlowFilter::parse_query(q).unwrap();
        assert_eq!(f.from_pod, PodRef::parse("x/a"));
        assert_eq!(f.verdict, Some(Verdict::Forwarded));
        assert_eq!(f.protocol, Some(Protocol::Tcp));
        assert_eq!(f.since, Some(Duration::from_secs(5400)));
        assert!(f.follow);
        assert_eq!(FlowFilter::parse_query(&f.to_query()).unwrap(), f);
        assert!(f.matches(&record()));
        assert_eq!(FlowFilter::parse_query("").unwrap(), FlowFilter::default());
    }

    #[test]
    fn errors_name_the_parameter_and_what_was_expected() {
        let e = |q: &str| FlowFilter::parse_query(q).unwrap_err().to_string();
        assert_eq!(
            e("port=http"),
            "bad value \"http\" for parameter port: expected a port number 1..65535"
        );
        assert!(e("pod=a").contains("parameter pod: expected NAMESPACE/NAME"));
        assert!(e("since=5 minutes").contains("parameter since: expected a duration"));
        assert!(e("verdict=ALLOWED").contains("FORWARDED or DROPPED"));
        assert!(e("protocol=gre").contains("parameter protocol"));
        assert!(e("follow=yes").contains("parameter follow"));
        assert!(e("namespace=").contains("parameter namespace"));
        assert!(e("from_pod=x%zz").contains("percent-encoded"));
        assert!(e("podd=x/a").starts_with("unknown parameter podd"));
    }

    #[test]
    fn filters_match_their_side_and_all_must_hold() {
        let r = record();
        let f = |q: &str| FlowFilter::parse_query(q).unwrap().matches(&r);
        assert!(f("from_pod=x/a") && !f("from_pod=y/b"));
        assert!(f("to_pod=y/b") && !f("to_pod=x/a"));
        assert!(f("pod=x/a") && f("pod=y/b") && !f("pod=x/b"));
        assert!(f("namespace=x") && f("namespace=y") && !f("namespace=z"));
        assert!(f("port=80") && f("port=40000") && !f("port=81"));
        assert!(!f("verdict=DROPPED") && !f("protocol=UDP"));
        assert!(!f("pod=x/a&port=81"), "every filter must hold");
        // A side without names never matches a pod filter.
        let mut anon = r.clone();
        anon.src_pod = None;
        assert!(
            !FlowFilter::parse_query("from_pod=x/a")
                .unwrap()
                .matches(&anon)
        );
    }

    #[test]
    fn since_counts_back_from_now() {
        let r = record(); // at t = 100 s
        let f = FlowFilter::parse_query("since=30s").unwrap();
        assert!(f.matches_at(&r, Timestamp::from_second(130).unwrap()));
        assert!(!f.matches_at(&r, Timestamp::from_second(131).unwrap()));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "5", "m", "-5s", "5d", "1.5s", "99999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
