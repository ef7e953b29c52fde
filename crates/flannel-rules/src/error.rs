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
    #[error("`{command}` did not finish: {detail}")]
    Timeout {
        /// The command line that was attempted.
        command: String,
        /// The runner's explanation, e.g. "timed out after 120 s".
        detail: String,
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
    /// A listing printed by iptables or nft could not be understood.
    #[error("cannot parse the output of `{command}`: {detail}")]
    Parse {
        /// The command whose output was read.
        command: String,
        /// What was unexpected.
        detail: String,
    },
    /// Several independent steps failed (for example both address families); all are reported.
    #[error("{} errors: {}", .0.len(), join_errors(.0))]
    Multiple(Vec<RulesError>),
}

fn join_errors(errors: &[RulesError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl RulesError {
    /// Folds a list of errors from independent steps into one result.
    pub(crate) fn collect(errors: Vec<RulesError>) -> Result<(), RulesError> {
        // The same failure in both families (say, a missing binary) is reported once.
        let mut seen = std::collections::HashSet::new();
        let mut errors: Vec<RulesError> = errors
            .into_iter()
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
        };
        assert_eq!(
            err.to_string(),
            "`nft` was not found in PATH: install the nftables package"
        );
    }

    #[test]
    fn collect_folds_errors() {
        assert!(RulesError::collect(vec![]).is_ok());
        let one = RulesError::collect(vec![failed("x")]).unwrap_err();
        assert!(matches!(one, RulesError::CommandFailed { .. }));
        let two = RulesError::collect(vec![failed("x"), failed("y")]).unwrap_err();
        assert!(two.to_string().starts_with("2 errors: "));
    }
}
