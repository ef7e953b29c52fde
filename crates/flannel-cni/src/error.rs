//! CNI error results: the `{"cniVersion","code","msg","details"}` object a plugin prints on
//! stdout before exiting non-zero.
//!
//! Every failure of the plugin becomes one [`CniError`] carrying a spec error code, so the
//! runtime can tell "try again later" from "your config is wrong" from "internal bug". Upstream
//! reports nearly everything as 999; see the README's compatibility notes.

use std::fmt;

use crate::gojson::{write_go_string, write_str_field};

/// Spec code 1: the config's `cniVersion` is not one this plugin supports.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Spec code 2: a field of the config is not supported.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// Spec code 3: the container is unknown (no saved state for it).
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Spec code 4: a `CNI_*` environment variable is missing or invalid.
pub const INVALID_ENV: u32 = 4;
/// Spec code 5: an I/O operation failed (reading stdin, writing state).
pub const IO_FAILURE: u32 = 5;
/// Spec code 6: content could not be decoded (malformed JSON, unreadable subnet.env).
pub const DECODE_FAILURE: u32 = 6;
/// Spec code 7: the network config is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// Spec code 8 (libcni): `CNI_NETNS` is the plugin's own network namespace.
pub const INVALID_NETNS: u32 = 8;
/// Spec code 11: a transient condition (flanneld has not written subnet.env yet).
pub const TRY_AGAIN_LATER: u32 = 11;
/// Spec code 50 (CNI 1.1 STATUS): the plugin cannot service ADD requests.
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific code 100: CHECK found the container's network differs from what ADD set up.
pub const CHECK_MISMATCH: u32 = 100;
/// Spec code 999: an internal failure (a misbehaving delegate, an unexpected OS error).
pub const INTERNAL: u32 = 999;

/// A CNI error result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec error code.
    pub code: u32,
    /// The short message; names the input that was wrong.
    pub msg: String,
    /// Optional longer details (the offending value, what was expected).
    pub details: String,
}

impl CniError {
    /// An error with a code and a message, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An error with details.
    pub fn with_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Renders the error object for stdout, tagged with `cni_version`.
    ///
    /// Key order is the spec's (`cniVersion`, `code`, `msg`, `details`); `details` is left out
    /// when empty, as Go's `omitempty` does.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut out = String::with_capacity(64 + self.msg.len() + self.details.len());
        out.push('{');
        write_str_field(&mut out, "cniVersion", cni_version);
        out.push_str(",\"code\":");
        out.push_str(&self.code.to_string());
        out.push(',');
        write_str_field(&mut out, "msg", &self.msg);
        if !self.details.is_empty() {
            out.push_str(",\"details\":");
            write_go_string(&mut out, &self.details);
        }
        out.push('}');
        out
    }
}

impl fmt::Display for CniError {
    /// Like Go's `types.Error.Error()`: the message, then `; details` if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

/// Shortens untrusted input quoted in an error (a 1 MiB container ID must not become a 1 MiB
/// error message).
pub fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(MAX).collect();
        c.push('…');
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_spec_shape() {
        let e = CniError::new(INVALID_ENV, "required env variables [CNI_PATH] missing");
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":4,"msg":"required env variables [CNI_PATH] missing"}"#
        );
        let e = CniError::with_details(7, "bad <thing>", "line \"1\"");
        assert_eq!(
            e.to_json("0.3.1"),
            r#"{"cniVersion":"0.3.1","code":7,"msg":"bad \u003cthing\u003e","details":"line \"1\""}"#
        );
        assert_eq!(e.to_string(), "bad <thing>; line \"1\"");
    }

    #[test]
    fn clip_bounds_length() {
        assert_eq!(clip("abc"), "abc");
        let long = "x".repeat(1000);
        assert_eq!(clip(&long).chars().count(), 81);
    }
}
