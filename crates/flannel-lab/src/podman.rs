//! Rootful podman as the lab's container runtime: how a container is started on this kind of
//! machine, containers named after the lab's namespaces, and their removal.
//!
//! # What every container needs here
//! * `--runtime runc`: podman's default `crun` refuses to start containers on a host with
//!   cgroups in hybrid mode.
//! * `--ulimit nofile=…,nproc=…` set to the lab's own limits: podman's defaults *raise* both,
//!   which needs CAP_SYS_RESOURCE the lab may not have ("setrlimit: Operation not permitted").
//!   The lab's limits are what its flanneld processes run with outside containers, so flanneld
//!   gets as much in the image as out of it (it needs a few dozen descriptors and threads),
//!   except that podman lowers its own `nproc` to [`NPROC_CEILING`] and a container cannot get
//!   more than the podman that starts it.
//! * `--pull never`: the image was built here (`scripts/image`); nothing is fetched.
//! * `--network ns:/run/netns/<node>`: the node's namespace is the pod's host network.
//!
//! # Names and cleanup
//! Containers are named `<node namespace>-<container>` (`flab-<pid>-<n>-n1-kube-flannel`, or
//! `flabd-<id>-n1-kube-flannel` in a lab left running by `flannel-lab up`), so they carry the
//! lab's prefix: [`Container`] guards remove them on drop, [`remove_with_prefix`] finds those of
//! a persistent lab for `down` (also after a crash), and [`reap_stale`] removes those whose
//! creating test process is gone, as [`crate::reap_stale`] does for namespaces.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::command::{check, describe, run_command};
use crate::error::{LabError, Result};
use crate::host::{pid_alive, require_binary};
use crate::netns::creator_pid;

/// The OCI runtime podman is told to use (see the module documentation).
pub const RUNTIME: &str = "runc";

/// The `nproc` limit podman 4 gives itself (and so the most a container can get from it).
pub const NPROC_CEILING: u64 = 32768;

/// How long a container that runs to completion (an init container) may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `podman rm --force` lets a container stop after SIGTERM before SIGKILL.
const STOP_GRACE_SECS: u32 = 3;

/// Limit for podman's own bookkeeping commands (inspect, ps, rm).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// `podman --runtime runc`, the start of every podman command the lab runs.
pub fn command() -> Result<Command> {
    let mut cmd = Command::new(require_binary("podman")?);
    cmd.args(["--runtime", RUNTIME]);
    Ok(cmd)
}

/// Runs a podman command to completion and returns its stdout; a failure carries stderr.
fn podman_ok(args: &[&str]) -> Result<String> {
    let mut cmd = command()?;
    cmd.args(args);
    let line = describe(&cmd);
    let out = check(line, run_command(cmd, None, PODMAN_TIMEOUT)?)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ID of a local image, or an error saying how to build it (the lab never pulls).
pub fn image_id(image: &str) -> Result<String> {
    match podman_ok(&["image", "inspect", "--format", "{{.Id}}", image]) {
        Ok(id) => Ok(id.trim().to_string()),
        Err(e) => Err(LabError::Invalid(format!(
            "image {image} is not in podman's local store ({e}); build it with `scripts/image {image}`"
        ))),
    }
}

/// One bind mount: a node path shown at `target` inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The path on the machine (inside the node's directory).
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A container to run, in the runtime's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSpec {
    /// `--name`.
    pub name: String,
    /// The image.
    pub image: String,
    /// The network namespace to join (`--network ns:<path>`).
    pub netns: PathBuf,
    /// `--hostname` (a pod on the host network has the node's name).
    pub hostname: String,
    /// Bind mounts.
    pub binds: Vec<Bind>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Capabilities added to podman's default set.
    pub cap_add: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--security-opt` values (`seccomp=unconfined`, ...).
    pub security_opt: Vec<String>,
    /// Replaces the image's entrypoint (Kubernetes `command[0]`).
    pub entrypoint: Option<String>,
    /// The arguments after the image (the rest of `command`, then `args`).
    pub args: Vec<String>,
}

impl RunSpec {
    /// `podman --runtime runc run --rm ...` for this container; attached (no `-d`), so the
    /// podman process lives as long as the container, prints its output and forwards SIGTERM
    /// to it.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = command()?;
        cmd.args(self.run_args());
        Ok(cmd)
    }

    /// Everything after `podman --runtime runc`.
    pub fn run_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = ["run", "--rm", "--pull", "never", "--name"]
            .into_iter()
            .map(OsString::from)
            .collect();
        a.push(self.name.clone().into());
        let mut network = OsString::from("ns:");
        network.push(&self.netns);
        a.extend(["--network".into(), network]);
        if !self.hostname.is_empty() {
            a.extend(["--hostname".into(), self.hostname.clone().into()]);
        }
        for limit in ulimits() {
            a.extend(["--ulimit".into(), limit.into()]);
        }
        for b in &self.binds {
            let mut m = OsString::from("type=bind,source=");
            m.push(&b.source);
            m.push(format!(",target={}", b.target));
            if b.read_only {
                m.push(",ro=true");
            }
            a.extend(["--mount".into(), m]);
        }
        for (k, v) in &self.env {
            a.extend(["--env".into(), format!("{k}={v}").into()]);
        }
        for cap in &self.cap_add {
            a.extend(["--cap-add".into(), cap.into()]);
        }
        if self.privileged {
            a.push("--privileged".into());
        }
        for o in &self.security_opt {
            a.extend(["--security-opt".into(), o.into()]);
        }
        if let Some(e) = &self.entrypoint {
            a.push(format!("--entrypoint={e}").into());
        }
        a.push(self.image.clone().into());
        a.extend(self.args.iter().map(OsString::from));
        a
    }
}

/// `nofile=SOFT:HARD` and `nproc=SOFT:HARD` as this process has them (see the module
/// documentation); "unlimited" becomes -1, as podman writes it.
pub fn ulimits() -> Vec<String> {
    use nix::sys::resource::{Resource, getrlimit};
    let fmt = |v: u64| {
        if v == nix::sys::resource::RLIM_INFINITY {
            "-1".to_string()
        } else {
            v.to_string()
        }
    };
    [
        ("nofile", Resource::RLIMIT_NOFILE, u64::MAX),
        ("nproc", Resource::RLIMIT_NPROC, NPROC_CEILING),
    ]
    .into_iter()
    .filter_map(|(name, r, ceiling)| {
        let (soft, hard) = getrlimit(r).ok()?;
        let (soft, hard) = (soft.min(ceiling), hard.min(ceiling));
        Some(format!("{name}={}:{}", fmt(soft), fmt(hard)))
    })
    .collect()
}

/// Removes containers (stopping them first: SIGTERM, SIGKILL after a few seconds); names that
/// do not exist are fine, so it can run twice.
pub fn remove(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let grace = STOP_GRACE_SECS.to_string();
    let mut args = vec!["rm", "--force", "--ignore", "--time", &grace];
    args.extend(names.iter().map(String::as_str));
    podman_ok(&args).map(drop)
}

/// The names of all containers (running or not) that start with `prefix`.
pub fn names_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let out = podman_ok(&["ps", "--all", "--format", "{{.Names}}"])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Removes every container whose name starts with `prefix` and returns their names; nothing
/// (and no error) when podman is not installed, since then the lab started none.
pub fn remove_with_prefix(prefix: &str) -> Result<Vec<String>> {
    if require_binary("podman").is_err() {
        return Ok(Vec::new());
    }
    let names = names_with_prefix(prefix)?;
    remove(&names)?;
    Ok(names)
}

/// Removes the lab's containers whose creating process is gone (a test run killed with
/// SIGKILL), as [`crate::reap_stale`] does for namespaces, and returns their names.
pub fn reap_stale() -> Result<Vec<String>> {
    let stale: Vec<String> = names_with_prefix(crate::NAME_PREFIX)?
        .into_iter()
        .filter(|n| creator_pid(n).is_some_and(|pid| !pid_alive(pid)))
        .collect();
    remove(&stale)?;
    Ok(stale)
}

/// The state and image of a container, `None` when there is no such container.
pub fn inspect(name: &str) -> Result<Option<(String, String)>> {
    let mut cmd = command()?;
    cmd.args([
        "container",
        "inspect",
        "--format",
        "{{.State.Status}} {{.Image}}",
        name,
    ]);
    let out = run_command(cmd, None, PODMAN_TIMEOUT)?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (state, image) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    Ok(Some((state.to_string(), image.to_string())))
}

/// Runs a container to completion (an init container), bounded by [`RUN_TIMEOUT`]; its output
/// is returned, a non-zero exit is an error quoting it. A container that overruns is removed.
pub fn run_to_completion(spec: &RunSpec) -> Result<String> {
    let cmd = spec.command()?;
    let line = describe(&cmd);
    let out = match run_command(cmd, None, RUN_TIMEOUT) {
        Err(e @ LabError::CommandTimeout { .. }) => {
            let _ = remove(std::slice::from_ref(&spec.name));
            return Err(e);
        }
        r => r?,
    };
    let out = check(line, out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A container removed (with `podman rm --force`) when the guard is dropped, whether or not
/// the podman process attached to it is still there.
#[derive(Debug)]
pub struct Container {
    name: String,
    armed: bool,
}

impl Container {
    /// Takes charge of the container called `name`.
    pub fn new(name: impl Into<String>) -> Container {
        Container {
            name: name.into(),
            armed: true,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `signal` (e.g. `KILL`, as a crash) to the container's main process.
    pub fn kill(&self, signal: &str) -> Result<()> {
        podman_ok(&["kill", "--signal", signal, &self.name]).map(drop)
    }

    /// Removes the container now, reporting what [`Drop`] could only print.
    pub fn remove(mut self) -> Result<()> {
        self.armed = false;
        remove(std::slice::from_ref(&self.name))
    }

    /// Leaves the container running when the guard goes (a lab handed to its state file,
    /// whose `down` removes containers by prefix).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove(std::slice::from_ref(&self.name))
        {
            eprintln!("flannel-lab: removing container {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_carry_everything_in_order() {
        let spec = RunSpec {
            name: "flab-1-2-n1-kube-flannel".into(),
            image: "localhost/flannel-rs:t".into(),
            netns: "/run/netns/flab-1-2-n1".into(),
            hostname: "n1".into(),
            binds: vec![Bind {
                source: "/lab/n1/host/run/flannel".into(),
                target: "/run/flannel".into(),
                read_only: true,
            }],
            env: vec![("POD_NAME".into(), "kube-flannel-ds-abcde".into())],
            cap_add: vec!["NET_ADMIN".into()],
            privileged: false,
            security_opt: vec!["seccomp=unconfined".into()],
            entrypoint: Some("/opt/bin/flanneld".into()),
            args: vec!["--ip-masq".into()],
        };
        let args: Vec<String> = spec
            .run_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("run --rm --pull never --name flab-1-2-n1-kube-flannel --network ns:/run/netns/flab-1-2-n1 --hostname n1 --ulimit nofile="));
        assert!(joined.contains(
            "--mount type=bind,source=/lab/n1/host/run/flannel,target=/run/flannel,ro=true"
        ));
        assert!(joined.contains(
            "--env POD_NAME=kube-flannel-ds-abcde --cap-add NET_ADMIN --security-opt seccomp=unconfined"
        ));
        assert!(
            joined.ends_with("--entrypoint=/opt/bin/flanneld localhost/flannel-rs:t --ip-masq")
        );
        assert!(!joined.contains("--privileged"));
    }

    #[test]
    fn ulimits_are_our_own() {
        let l = ulimits();
        assert_eq!(l.len(), 2);
        assert!(l[0].starts_with("nofile=") && l[1].starts_with("nproc="));
    }
}
