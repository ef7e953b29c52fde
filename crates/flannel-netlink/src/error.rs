//! The crate's error type.
//!
//! Callers of this crate reconcile kernel state, so they must be able to tell "already there" and
//! "already gone" apart from real failures without parsing strings: every kernel rejection keeps
//! its errno, the operation and the object it was about.

use std::fmt;

use nix::errno::Errno;

/// Shorthand for results of this crate.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// Everything that can go wrong while talking rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel answered a request with an error code.
    ///
    /// `message` carries the kernel's extended-ack text (e.g. "Nexthop has invalid gateway")
    /// when the kernel provided one.
    #[error("{op} {object}: {errno}{}", ExtAck(.message))]
    Kernel {
        /// What was attempted, e.g. "replace route".
        op: &'static str,
        /// The object the request was about, human readable.
        object: String,
        /// The errno the kernel returned.
        errno: Errno,
        /// The kernel's extended-ack message, if any.
        message: Option<String>,
    },
    /// A netlink socket could not be opened or configured.
    #[error("{op}: netlink socket: {source}")]
    Socket {
        /// What was attempted.
        op: &'static str,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The conversation with the kernel broke down (closed connection, unexpected or
    /// undecodable message).
    #[error("{op} {object}: {reason}")]
    Protocol {
        /// What was attempted.
        op: &'static str,
        /// The object the request was about.
        object: String,
        /// What went wrong.
        reason: String,
    },
    /// A batched request was sent but its outcome is unknown, because the kernel's answers were
    /// lost (receive-buffer overrun) or the send itself failed part-way. The caller should dump
    /// and reconcile again.
    #[error("{op} {object}: outcome unknown ({reason})")]
    Unconfirmed {
        /// What was attempted.
        op: &'static str,
        /// The object the request was about.
        object: String,
        /// Why the outcome is unknown.
        reason: String,
    },
    /// A function that spawns tasks was called outside a tokio runtime.
    #[error("{0} must be called from within a tokio runtime")]
    NoRuntime(&'static str),
    /// The caller passed something the kernel cannot express (e.g. mixed address families).
    #[error("{op} {object}: invalid argument: {reason}")]
    InvalidArgument {
        /// What was attempted.
        op: &'static str,
        /// The offending object.
        object: String,
        /// Why it is invalid.
        reason: String,
    },
}

struct ExtAck<'a>(&'a Option<String>);

impl fmt::Display for ExtAck<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(m) if !m.is_empty() => write!(f, " ({m})"),
            _ => Ok(()),
        }
    }
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a kernel rejection.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True for EEXIST: an exclusive create found the object already present.
    pub fn is_already_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// True when the object does not exist: ENOENT (routes, neighbours, FDB), ESRCH (routes
    /// without a match), ENODEV (links) or EADDRNOTAVAIL (addresses). Deletes that fail this
    /// way can be treated as done.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENOENT | Errno::ESRCH | Errno::ENODEV | Errno::EADDRNOTAVAIL)
        )
    }

    /// True for EOPNOTSUPP, e.g. a link kind this kernel was built without.
    pub fn is_not_supported(&self) -> bool {
        self.errno() == Some(Errno::EOPNOTSUPP)
    }

    /// Builds a kernel error from a raw negative-or-positive errno value.
    pub(crate) fn kernel(
        op: &'static str,
        object: impl Into<String>,
        errno: i32,
        message: Option<String>,
    ) -> Self {
        Self::Kernel {
            op,
            object: object.into(),
            errno: Errno::from_raw(errno.abs()),
            message,
        }
    }

    /// Converts an rtnetlink error, keeping the errno when the kernel sent one.
    pub(crate) fn from_rtnl(
        op: &'static str,
        object: impl Into<String>,
        e: rtnetlink::Error,
    ) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(msg) => match msg.code {
                Some(code) => Self::kernel(op, object, code.get(), None),
                None => Self::Protocol {
                    op,
                    object: object.into(),
                    reason: "unexpected acknowledgement".into(),
                },
            },
            other => Self::Protocol {
                op,
                object: object.into(),
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classification_and_text() {
        let e = NetlinkError::kernel("replace route", "10.0.0.0/8", -17, None);
        assert!(e.is_already_exists() && !e.is_not_found() && !e.is_not_supported());
        assert_eq!(
            e.to_string(),
            "replace route 10.0.0.0/8: EEXIST: File exists"
        );
        for errno in [libc::ENOENT, libc::ESRCH, libc::ENODEV, libc::EADDRNOTAVAIL] {
            assert!(NetlinkError::kernel("delete", "x", errno, None).is_not_found());
        }
        let e = NetlinkError::kernel(
            "create link",
            "d0",
            libc::EOPNOTSUPP,
            Some("Unknown device type".into()),
        );
        assert!(e.is_not_supported());
        assert_eq!(
            e.to_string(),
            "create link d0: EOPNOTSUPP: Operation not supported on transport endpoint (Unknown device type)"
        );
        let u = NetlinkError::Unconfirmed {
            op: "delete fdb",
            object: "m".into(),
            reason: "r".into(),
        };
        assert_eq!(u.errno(), None);
        assert!(!u.is_not_found());
    }
}
