//! Errors of the rule managers, each carrying enough context (which command, what it said) to act on.

use crate::runner::CommandOutput;

/// Everything that can go wrong while reading or writing flannel's firewall rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A program the chosen mode needs is not installed (or not in `PATH`).
    #[error("`{program}` was not found in PATH: {hint}")]
    MissingBinary {
        /// The program that could not be started, e.g. `iptables-restore`.
        program: String,
        /// What to install, e.g. "install the iptables package".
        hint: &'static str,
        /// The spawn error (`NotFound`).
        #[source]
        source: std::io::Error,
    },
    /// A program could be found but not started (permissions, resource limits, ...).
    #[error("failed to run `{command}`: {source}")]
    Spawn {
        /// The command line that was attempted.
        command: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A program ran longer than the runner allows (for example a stuck xtables lock).
    #[error("`{command}` did not finish: {source}")]
    Timeout {
        /// The command line that was attempted.
        command: String,
        /// The runner's `TimedOut` error, e.g. "timed out after 120 s".
        #[source]
        source: std::io::Error,
    },
    /// A program exited non-zero for a reason other than a missing kernel feature.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line that failed.
        command: String,
        /// How it ended, e.g. "exit status 1".
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The kernel (or the iptables/nft backend) lacks something the rules need.
    #[error("unsupported kernel feature ({feature}): `{command}` said: {stderr}")]
    UnsupportedKernelFeature {
        /// What appears to be missing, e.g. "nf_tables".
        feature: &'static str,
        /// The command line that failed.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A listing printed by iptables could not be understood (no version number, a built-in chain
    /// that does not exist).
    #[error("cannot parse the output of `{command}`: {detail}")]
    Parse {
        /// The command whose output was read.
        command: String,
        /// What was unexpected.
        detail: String,
    },
    /// The JSON printed by `nft -j` could not be understood.
    #[error("cannot parse the output of `{command}`: {source}")]
    NftJson {
        /// The command whose output was read, e.g. `nft -j list tables`.
        command: String,
        /// What was wrong with it.
        #[source]
        source: NftJsonError,
    },
    /// Several independent steps failed (for example both address families); all are reported.
    #[error("{} errors: {}", .0.len(), join_errors(.0))]
    Multiple(Vec<RulesError>),
}

/// Why the JSON printed by `nft -j` could not be understood.
///
/// Only a listing that is not nft's JSON at all is an error: statements and expressions flannel
/// does not know are kept as opaque values (they simply never equal a rule flannel wants).
#[derive(Debug, thiserror::Error)]
pub enum NftJsonError {
    /// The text is not JSON.
    #[error("invalid JSON: {0}")]
    Syntax(#[source] serde_json::Error),
    /// The text is JSON but not shaped like an nft listing (no `nftables` array, an object without
    /// its name, a rule for a chain that was not listed, ...).
    #[error("unexpected JSON: {0}")]
    Shape(String),
}

fn join_errors(errors: &[RulesError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl RulesError {
    /// Folds the results of independent steps (one per address family: one failing must not keep
    /// the other's rules from being installed) into one result that reports every failure.
    pub(crate) fn collect(
        results: impl IntoIterator<Item = Result<(), RulesError>>,
    ) -> Result<(), RulesError> {
        // The same failure in both families (say, a missing binary) is reported once.
        let mut seen = std::collections::HashSet::new();
        let mut errors: Vec<RulesError> = results
            .into_iter()
            .filter_map(Result::err)
            .filter(|e| seen.insert(e.to_string()))
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(RulesError::Multiple(errors)),
        }
    }

    /// True when the error only says that a program is not installed.
    pub fn is_missing_binary(&self) -> bool {
        matches!(self, RulesError::MissingBinary { .. })
    }

    /// Builds the error for a command that exited non-zero, recognising the messages that mean the
    /// kernel lacks a feature so the operator is not sent hunting for a syntax problem.
    pub(crate) fn from_failed(command: String, output: &CommandOutput) -> RulesError {
        let stderr = output.stderr.trim().to_string();
        let status = match output.status {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        match unsupported_feature(&stderr) {
            Some(feature) => RulesError::UnsupportedKernelFeature {
                feature,
                command,
                stderr,
            },
            None => RulesError::CommandFailed {
                command,
                status,
                stderr,
            },
        }
    }
}

/// Maps the error texts of iptables and nft that mean "the kernel cannot do this" to a short name.
pub(crate) fn unsupported_feature(stderr: &str) -> Option<&'static str> {
    const PATTERNS: &[(&str, &str)] = &[
        ("Protocol not supported", "nf_tables"),
        (
            "Address family not supported",
            "this address family in netfilter",
        ),
        ("do you need to insmod", "an iptables table"),
        ("Couldn't load target", "an iptables target"),
        ("Couldn't load match", "an iptables match"),
        ("missing kernel module", "an iptables extension"),
        (
            "Operation not supported",
            "an nftables expression, chain type or hook",
        ),
    ];
    PATTERNS
        .iter()
        .find(|(needle, _)| stderr.contains(needle))
        .map(|(_, feature)| *feature)
}

/// The package to install for a missing program.
pub(crate) fn install_hint(program: &str) -> &'static str {
    if program.starts_with("nft") {
        "install the nftables package"
    } else if program.starts_with("iptables") || program.starts_with("ip6tables") {
        "install the iptables package"
    } else {
        "install the package that provides it"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stderr: &str) -> RulesError {
        let out = CommandOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: stderr.to_string(),
        };
        RulesError::from_failed("nft -f -".into(), &out)
    }

    #[test]
    fn classifies_missing_kernel_features() {
        let err = failed("Error: Could not process rule: Operation not supported\n");
        assert!(matches!(err, RulesError::UnsupportedKernelFeature { .. }));
        let err = failed(
            "iptables v1.8.9 (legacy): can't initialize iptables table `nat': Table does not exist (do you need to insmod?)",
        );
        assert!(matches!(
            err,
            RulesError::UnsupportedKernelFeature {
                feature: "an iptables table",
                ..
            }
        ));
    }

    #[test]
    fn keeps_other_failures_as_command_failures_with_stderr() {
        let err = failed("Error: syntax error, unexpected newline\n");
        let text = err.to_string();
        assert!(matches!(err, RulesError::CommandFailed { .. }));
        assert_eq!(
            text,
            "`nft -f -` failed (exit status 1): Error: syntax error, unexpected newline"
        );
    }

    #[test]
    fn hints_name_the_package() {
        assert_eq!(
            install_hint("iptables-restore"),
            "install the iptables package"
        );
        assert_eq!(install_hint("ip6tables"), "install the iptables package");
        assert_eq!(install_hint("nft"), "install the nftables package");
        let err = RulesError::MissingBinary {
            program: "nft".into(),
            hint: install_hint("nft"),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(
            err.to_string(),
            "`nft` was not found in PATH: install the nftables package"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn collect_folds_errors() {
        assert!(RulesError::collect([Ok(()), Ok(())]).is_ok());
        let one = RulesError::collect([Ok(()), Err(failed("x"))]).unwrap_err();
        assert!(matches!(one, RulesError::CommandFailed { .. }));
        let two = RulesError::collect([Err(failed("x")), Err(failed("y"))]).unwrap_err();
        assert_eq!(
            two.to_string(),
            "2 errors: `nft -f -` failed (exit status 1): x; `nft -f -` failed (exit status 1): y"
        );
        let same = RulesError::collect([Err(failed("x")), Err(failed("x"))]).unwrap_err();
        assert!(
            matches!(same, RulesError::CommandFailed { .. }),
            "reported once"
        );
    }
}
