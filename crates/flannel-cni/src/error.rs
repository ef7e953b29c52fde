//! CNI error results: the `{"cniVersion","code","msg","details"}` object a plugin prints on
//! stdout before exiting non-zero.
//!
//! Every failure of the plugin becomes one [`CniError`] carrying a spec error code, so the
//! runtime can tell "try again later" from "your config is wrong" from "internal bug". Upstream
//! reports nearly everything as 999; see the README's compatibility notes.
//!
//! Failures with an underlying cause (an I/O error, a JSON decoding error, a bad subnet.env) are
//! typed errors of the module where they happen, each implementing [`Coded`]; converting one
//! into a [`CniError`] renders its text as `msg` (upstream's wording, so the printed object is
//! unchanged) and keeps the typed error as the [`std::error::Error::source`].

use std::fmt;

use flannel_types::gojson::write_go_string;

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

/// A typed failure that knows which spec code reports it.
///
/// Implemented by each module's error type so `?` turns it into a [`CniError`] with the right
/// code, in one place per failure instead of at every call site.
pub trait Coded: std::error::Error + Send + Sync + 'static {
    /// The spec error code the runtime sees.
    fn code(&self) -> u32;
}

/// A CNI error result.
///
/// Equality compares what is printed (code, message, details), not the cause.
#[derive(Debug)]
pub struct CniError {
    /// The spec error code.
    pub code: u32,
    /// The short message; names the input that was wrong.
    pub msg: String,
    /// Optional longer details (the offending value, what was expected).
    pub details: String,
    /// The typed failure `msg` was rendered from, if any.
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CniError {
    /// An error with a code and a message, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self::with_details(code, msg, String::new())
    }

    /// An error with details.
    pub fn with_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
            cause: None,
        }
    }

    /// An error result for a typed failure: its text becomes `msg`, and it stays reachable as
    /// the source (downcast it to inspect the failure).
    pub fn caused_by<E: std::error::Error + Send + Sync + 'static>(code: u32, cause: E) -> Self {
        CniError {
            code,
            msg: cause.to_string(),
            details: String::new(),
            cause: Some(Box::new(cause)),
        }
    }

    /// Renders the error object for stdout, tagged with `cni_version`.
    ///
    /// Key order is the spec's (`cniVersion`, `code`, `msg`, `details`); `details` is left out
    /// when empty, as Go's `omitempty` does.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut out = String::with_capacity(64 + self.msg.len() + self.details.len());
        out.push_str("{\"cniVersion\":");
        write_go_string(&mut out, cni_version);
        out.push_str(",\"code\":");
        out.push_str(&self.code.to_string());
        out.push_str(",\"msg\":");
        write_go_string(&mut out, &self.msg);
        if !self.details.is_empty() {
            out.push_str(",\"details\":");
            write_go_string(&mut out, &self.details);
        }
        out.push('}');
        out
    }
}

impl<E: Coded> From<E> for CniError {
    fn from(e: E) -> Self {
        CniError::caused_by(e.code(), e)
    }
}

impl PartialEq for CniError {
    fn eq(&self, other: &Self) -> bool {
        (self.code, &self.msg, &self.details) == (other.code, &other.msg, &other.details)
    }
}

impl Eq for CniError {}

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

impl std::error::Error for CniError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

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

/// Test helper: asserts `e` has `code` and a message starting with `prefix`.
#[cfg(test)]
pub(crate) fn assert_error(e: &CniError, code: u32, prefix: &str) {
    assert_eq!(e.code, code, "{e}");
    assert!(
        e.msg.starts_with(prefix),
        "{:?} does not start with {prefix:?}",
        e.msg
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

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

    #[derive(Debug, thiserror::Error)]
    #[error("reading {what}: {source}")]
    struct Failure {
        what: &'static str,
        #[source]
        source: std::io::Error,
    }

    impl Coded for Failure {
        fn code(&self) -> u32 {
            IO_FAILURE
        }
    }

    #[test]
    fn typed_failures_keep_their_cause() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = CniError::from(Failure {
            what: "x",
            source: io,
        });
        assert_eq!(
            (e.code, e.msg.clone()),
            (IO_FAILURE, format!("reading x: {text}"))
        );
        let failure = e
            .source()
            .and_then(|s| s.downcast_ref::<Failure>())
            .unwrap();
        assert_eq!(failure.what, "x");
        let io = failure
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        // The printed object is the same as for an error built from the text.
        assert_eq!(e, CniError::new(IO_FAILURE, format!("reading x: {text}")));
        assert!(CniError::new(1, "m").source().is_none());
    }

    #[test]
    fn clip_bounds_length() {
        assert_eq!(clip("abc"), "abc");
        let long = "x".repeat(1000);
        assert_eq!(clip(&long).chars().count(), 81);
    }
}
