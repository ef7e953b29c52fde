//! The lab's error type.
//!
//! Lab failures happen in tests and in the `flannel-lab` command, where the only useful reaction is
//! a message a person can act on. So every variant carries the context needed to act: which command
//! ran and what it printed, which package provides a missing program, where a process's log is and
//! how it ends.

use std::path::PathBuf;
use std::time::Duration;

/// Shorthand for results of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Everything that can go wrong while building or driving a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Creating namespaces, veth pairs and bridges needs CAP_SYS_ADMIN and CAP_NET_ADMIN; failing
    /// early with this message beats a cryptic "Operation not permitted" from `ip`.
    #[error(
        "flannel-lab must run as root to {action} (it creates network namespaces, veth pairs and \
         bridges); run the tests as root, e.g. `sudo -E cargo test`"
    )]
    NotRoot {
        /// What the lab was about to do.
        action: String,
    },

    /// A program the lab drives is not installed; the message names the Debian package so the fix
    /// is one `apt-get install` away.
    #[error("required program `{binary}` was not found in PATH, /usr/sbin or /sbin; {}", install_hint(.package.as_deref()))]
    MissingBinary {
        /// The program name as the lab would execute it.
        binary: String,
        /// The Debian package that ships it, when the lab knows it.
        package: Option<String>,
    },

    /// A short-lived command exited unsuccessfully.
    #[error("`{command}` failed with {status}: {}", nonempty(.stderr, .stdout))]
    CommandFailed {
        /// The command line, shell-quoted for copy and paste.
        command: String,
        /// The exit status as the OS reported it (code or signal).
        status: String,
        /// Everything the command wrote to stdout.
        stdout: String,
        /// Everything the command wrote to stderr.
        stderr: String,
    },

    /// A short-lived command did not finish in time and was killed, so a hung tool cannot hang a
    /// test forever.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    CommandTimeout {
        /// The command line.
        command: String,
        /// The limit it exceeded.
        timeout: Duration,
    },

    /// Making or issuing a certificate of the lab's PKI failed.
    #[error("lab PKI: {0}")]
    Pki(#[from] crate::pki::PkiError),

    /// A bounded wait ran out.
    #[error("timed out after {timeout:?} waiting for {what}{}", last_seen(.last.as_deref()))]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long the wait lasted.
        timeout: Duration,
        /// The last observation or error seen while polling, if any.
        last: Option<String>,
    },

    /// A long-running process ended (or could not be made to end) unexpectedly.
    #[error("process `{command}` {problem}; log {}:\n{tail}", .log.display())]
    Process {
        /// The command line.
        command: String,
        /// What went wrong, e.g. "exited early with exit status: 1".
        problem: String,
        /// The process's log file (stdout and stderr).
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A CNI plugin returned an error result (or garbage).
    #[error("CNI {command}: error code {code}: {msg}{}", if .stderr.trim().is_empty() { String::new() } else { format!(" (stderr: {})", .stderr.trim()) })]
    Cni {
        /// The CNI command and plugin invocation.
        command: String,
        /// The CNI error code (0 when the output was not an error result).
        code: u64,
        /// The plugin's message and details.
        msg: String,
        /// What the plugin wrote to stderr.
        stderr: String,
    },

    /// etcd could not be brought up or did not become healthy.
    #[error("etcd in network namespace {netns}: {reason}; log {}:\n{tail}", .log.display())]
    Etcd {
        /// The namespace etcd runs in.
        netns: String,
        /// What went wrong.
        reason: String,
        /// etcd's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A system call made through nix failed.
    #[error("{context}: {source}")]
    Sys {
        /// What the lab was doing.
        context: String,
        /// The underlying errno.
        #[source]
        source: nix::Error,
    },

    /// The caller asked for something the lab cannot build (zero nodes, a bad name, ...).
    #[error("invalid lab request: {0}")]
    Invalid(String),

    /// The kube-flannel manifest the lab runs the DaemonSet from could not be read.
    #[error("kube-flannel manifest {origin}: {source}")]
    Manifest {
        /// The file (or the compiled-in copy).
        origin: String,
        /// What is wrong with it.
        #[source]
        source: crate::manifest::ManifestError,
    },

    /// The Kubernetes API emulator answered a request with an error Status: its reason and
    /// message are kept so commands can print them as kubectl does ("Error from server
    /// (NotFound): namespaces \"x\" not found").
    #[error("{method} {path} on the kube emulator: {status} {message}")]
    Api {
        /// The HTTP method.
        method: String,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The Status object's `reason` (`NotFound`, `AlreadyExists`, ...).
        reason: String,
        /// The Status object's `message`.
        message: String,
    },

    /// A state directory already records a lab (see [`crate::LabState::begin`]); the message
    /// says which and what to run, so it is shown as is.
    #[error("{0}")]
    Occupied(String),
}

impl LabError {
    /// Wraps an I/O error with what the lab was doing when it happened.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a nix error with what the lab was doing when it happened.
    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        LabError::Sys {
            context: context.into(),
            source,
        }
    }
}

fn install_hint(package: Option<&str>) -> String {
    match package {
        Some(p) => format!("install the Debian package `{p}` (apt-get install {p})"),
        None => "install the package that provides it".to_string(),
    }
}

fn nonempty(stderr: &str, stdout: &str) -> String {
    let e = stderr.trim();
    if !e.is_empty() {
        return e.to_string();
    }
    let o = stdout.trim();
    if !o.is_empty() {
        return format!("(no stderr; stdout: {o})");
    }
    "(no output)".to_string()
}

fn last_seen(last: Option<&str>) -> String {
    match last {
        Some(l) => format!(" (last: {l})"),
        None => String::new(),
    }
}
