//! `flannel-lab observe`: `flannel-observe` run against every node's enforcer.
//!
//! The enforcers serve `/flows` on [`NETPOL_METRICS_PORT`] in their node namespaces, each
//! node reachable at its underlay address from the underlay namespace (where `kubectl` runs
//! too). So the lab runs the `flannel-observe` binary found next to its other binaries
//! ([`crate::bin_dir`]) there, with `--node NAME=IP:9080` for every node and the user's flags
//! after them, verbatim. The lab itself stays free of an HTTP client and an async runtime:
//! everything about flows is `flannel-observe`'s. [`observe_argv`] builds the argument list
//! (unit-tested); [`LabState::observe`] and [`Cluster::observe`] run it for tests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::cluster::Cluster;
use crate::command::{check, describe, run_command};
use crate::error::{LabError, Result};
use crate::host::require_binary;
use crate::netpol::{NETPOL_BIN, NETPOL_METRICS_PORT};
use crate::state::{LabState, Phase};

/// The flow CLI's binary name, next to `flannel-netpol` (same package).
pub const OBSERVE_BIN: &str = "flannel-observe";

/// `flannel-observe`'s arguments for `nodes` (name, underlay address), each asked on
/// [`NETPOL_METRICS_PORT`], followed by the user's `args` unchanged.
pub fn observe_argv<'a, I, S>(nodes: I, args: &[S]) -> Vec<String>
where
    I: IntoIterator<Item = (&'a str, IpAddr)>,
    S: AsRef<str>,
{
    let mut argv = Vec::new();
    for (name, ip) in nodes {
        let addr = std::net::SocketAddr::new(ip, NETPOL_METRICS_PORT);
        argv.push("--node".to_string());
        argv.push(format!("{name}={addr}"));
    }
    argv.extend(args.iter().map(|a| a.as_ref().to_string()));
    argv
}

/// The `flannel-observe` binary in `bin_dir`, or an error saying how to build it.
pub fn observe_program(bin_dir: &Path) -> Result<PathBuf> {
    let program = bin_dir.join(OBSERVE_BIN);
    if !program.is_file() {
        return Err(LabError::Invalid(format!(
            "{OBSERVE_BIN} binary not found in {}: build it (`cargo build -p flannel-netpol --bins`), or set FLANNEL_RS_BIN_DIR",
            bin_dir.display()
        )));
    }
    Ok(program)
}

/// `ip netns exec <netns> <program> <argv>`: the caller runs it (or execs it, as
/// `flannel-lab observe` does, so output, exit status and Ctrl-C of `--follow` are the user's).
pub fn command(netns: &str, program: &Path, argv: &[String]) -> Result<Command> {
    let mut cmd = Command::new(require_binary("ip")?);
    cmd.args(["netns", "exec", netns]).arg(program).args(argv);
    Ok(cmd)
}

/// Runs `cmd` (bounded by `timeout`) and returns its stdout, or an error with its stderr when
/// it did not exit 0.
fn stdout_of(cmd: Command, timeout: Duration) -> Result<String> {
    let line = describe(&cmd);
    let out = check(line, run_command(cmd, None, timeout)?)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LabState {
    /// Whether the lab runs the enforcer on its nodes (recorded by `up`; for older state
    /// files, whether an enforcer process was recorded).
    pub fn has_netpol(&self) -> bool {
        self.netpol
            || self
                .processes
                .iter()
                .any(|p| p.role.starts_with(&format!("{NETPOL_BIN} ")))
    }

    /// `flannel-observe` with the user's `args` for this lab (see the module docs); fails
    /// unless the lab is complete, in Kubernetes mode and runs the enforcer.
    pub fn observe_command<S: AsRef<str>>(&self, args: &[S]) -> Result<Command> {
        if self.datastore != "kube" || !self.has_netpol() {
            return Err(LabError::Invalid(format!(
                "the lab in {} runs no NetworkPolicy enforcer, so no node keeps flow records: \
                 observe needs a lab started with `flannel-lab up --datastore kube --netpol`",
                self.state_dir.display()
            )));
        }
        let (Phase::Running, Some(netns)) = (self.phase, &self.underlay_netns) else {
            return Err(LabError::Invalid(format!(
                "the lab in {} is not complete (its `up` is still running or was interrupted)",
                self.state_dir.display()
            )));
        };
        let nodes = self.nodes.iter().map(|n| (n.name.as_str(), n.ip.into()));
        let program = observe_program(&crate::bin_dir()?)?;
        command(netns, &program, &observe_argv(nodes, args))
    }

    /// Runs `flannel-observe ARGS` on this lab (bounded by `timeout`) and returns its output,
    /// whatever its exit status.
    pub fn observe_output<S: AsRef<str>>(&self, args: &[S], timeout: Duration) -> Result<Output> {
        run_command(self.observe_command(args)?, None, timeout)
    }

    /// Runs `flannel-observe ARGS` on this lab and returns its stdout; an error (with its
    /// stderr) unless it exits 0.
    pub fn observe<S: AsRef<str>>(&self, args: &[S], timeout: Duration) -> Result<String> {
        stdout_of(self.observe_command(args)?, timeout)
    }
}

impl Cluster {
    /// `flannel-observe` with `args` for this cluster's nodes, run in its underlay namespace
    /// (binaries from [`Cluster::bin_dir`]); fails unless the cluster runs the enforcer.
    pub fn observe_command<S: AsRef<str>>(&self, args: &[S]) -> Result<Command> {
        if self.netpol().is_none() {
            return Err(LabError::Invalid(
                "the cluster runs no NetworkPolicy enforcer (ClusterSpec::netpol), so no node keeps flow records".into(),
            ));
        }
        let lab = self.lab();
        let nodes = lab.nodes().iter().map(|n| (n.name(), n.ip().into()));
        let program = observe_program(self.bin_dir())?;
        command(
            lab.underlay().netns().name(),
            &program,
            &observe_argv(nodes, args),
        )
    }

    /// Runs `flannel-observe ARGS` on this cluster and returns its stdout; an error (with its
    /// stderr) unless it exits 0.
    pub fn observe<S: AsRef<str>>(&self, args: &[S], timeout: Duration) -> Result<String> {
        stdout_of(self.observe_command(args)?, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_then_the_users_flags() {
        let nodes = [
            ("n1", IpAddr::from([198, 18, 0, 1])),
            ("n2", IpAddr::from([198, 18, 0, 2])),
        ];
        let argv = observe_argv(nodes, &["--verdict", "DROPPED", "-o", "json", "--follow"]);
        assert_eq!(
            argv,
            [
                "--node",
                "n1=198.18.0.1:9080",
                "--node",
                "n2=198.18.0.2:9080",
                "--verdict",
                "DROPPED",
                "-o",
                "json",
                "--follow"
            ]
        );
        assert_eq!(observe_argv([], &[] as &[&str]), Vec::<String>::new());
        let v6 = observe_argv([("n1", "fd00:198::1".parse().unwrap())], &[] as &[String]);
        assert_eq!(v6, ["--node", "n1=[fd00:198::1]:9080"]);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = observe_program(dir.path()).unwrap_err().to_string();
        assert!(e.contains("flannel-observe binary not found"), "{e}");
        std::fs::write(dir.path().join(OBSERVE_BIN), "").unwrap();
        assert_eq!(
            observe_program(dir.path()).unwrap(),
            dir.path().join(OBSERVE_BIN)
        );
    }
}
