//! Pods added to and removed from a running lab (`flannel-lab pod add|delete|label`): the
//! NetworkPolicy model's server pods, in any namespace, on any node.
//!
//! A pod is created as `up` creates its pods (a namespace `<stem>-<node>-<ns>.<name>`, then
//! the node's conflist through [`NodeRuntime`]), gets its servers (`flannel-lab serve`, a
//! recorded lab process, see [`crate::serve`]) and, in Kubernetes mode, its Namespace and Pod
//! objects ([`crate::kube_pod`]). Everything is recorded in the state file, so `status`,
//! `check`, `exec` and `down` see it. Changes to the state file are serialised by a lock
//! ([`LabState::modify`]), so several `pod add` may run at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::json;

use crate::error::{LabError, Result};
use crate::kube_client::KubeClient;
use crate::kube_pod::PodObject;
use crate::netns::{Netns, destroy_if_exists};
use crate::probe::{PortProto, Proto, probe_addr};
use crate::process::Child;
use crate::runtime::NodeRuntime;
use crate::state::{
    CniRecord, LabState, Phase, PodRecord, ProcessRecord, process_record, signal_process,
};

/// How long a new pod's servers may take to listen.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopped server may take to exit before SIGKILL.
const SERVE_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The hidden subcommand of the `flannel-lab` binary that runs the servers.
pub const SERVE_SUBCOMMAND: &str = "serve";

/// A pod `flannel-lab pod add` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAdd {
    /// Kubernetes namespace (created when missing).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The node: `n1`, `n2`, ...
    pub node: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Splits `NS/NAME`, checking both are RFC 1123 labels as the API requires.
pub fn parse_pod_ref(text: &str) -> Result<(String, String)> {
    let Some((ns, name)) = text.split_once('/') else {
        return Err(LabError::Invalid(format!(
            "{text:?}: name the pod as NAMESPACE/NAME (e.g. x/a)"
        )));
    };
    for (what, v) in [("namespace", ns), ("pod name", name)] {
        if !is_dns_label(v) {
            return Err(LabError::Invalid(format!(
                "{text:?}: {what} {v:?} must be 1-63 characters of [a-z0-9-], starting and ending with a letter or digit"
            )));
        }
    }
    Ok((ns.to_string(), name.to_string()))
}

/// An RFC 1123 label: what namespaces (and the lab's pod names) must be.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses `KEY=VALUE` (a label to set) or `KEY-` (a label to remove), as `kubectl label` does.
pub fn parse_label_change(text: &str) -> Result<(String, Option<String>)> {
    if let Some((k, v)) = text.split_once('=') {
        check_label_key(k, text)?;
        if v.len() > 63
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(LabError::Invalid(format!(
                "label {text:?}: a value is at most 63 characters of [A-Za-z0-9._-]"
            )));
        }
        return Ok((k.to_string(), Some(v.to_string())));
    }
    if let Some(k) = text.strip_suffix('-') {
        check_label_key(k, text)?;
        return Ok((k.to_string(), None));
    }
    Err(LabError::Invalid(format!(
        "label {text:?}: expected KEY=VALUE or KEY-"
    )))
}

fn check_label_key(key: &str, text: &str) -> Result<()> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let name_ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let prefix_ok = prefix.len() <= 253
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c));
    if name_ok && prefix_ok && !(key.contains('/') && prefix.is_empty()) {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "label {text:?}: {key:?} is not a label key ([prefix/]name)"
        )))
    }
}

/// The lock serialising changes to a state file.
#[derive(Debug)]
struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    fn take(state_dir: &Path) -> Result<StateLock> {
        let path = state_dir.join(".state.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| LabError::sys(format!("locking {}", path.display()), e))?;
        Ok(StateLock { _lock: lock })
    }
}

impl LabState {
    /// Loads the running lab of `state_dir` under an exclusive lock, lets `change` modify it and
    /// writes it back (also when `change` fails, so what it recorded before failing is kept).
    pub fn modify<T>(
        state_dir: &Path,
        change: impl FnOnce(&mut LabState) -> Result<T>,
    ) -> Result<T> {
        let _lock = StateLock::take(state_dir)?;
        let mut state = LabState::load(state_dir)?.ok_or_else(|| {
            LabError::Invalid(format!(
                "no lab in {} (start one with `flannel-lab up`)",
                state_dir.display()
            ))
        })?;
        if state.phase != Phase::Running {
            return Err(LabError::Invalid(format!(
                "the lab in {} is not complete (its `up` is still running or was interrupted)",
                state_dir.display()
            )));
        }
        let r = change(&mut state);
        state.save()?;
        r
    }

    /// The pod `NS/NAME` (or a bare name in `default`).
    pub fn find_pod(&self, target: &str) -> Option<&PodRecord> {
        self.pods.iter().find(|p| p.is(target))
    }

    /// The pod named `target`, or an error listing the lab's pods.
    pub fn pod_record(&self, target: &str) -> Result<&PodRecord> {
        self.find_pod(target).ok_or_else(|| {
            LabError::Invalid(format!(
                "no pod {target:?} in the lab; pods: {}",
                self.pods
                    .iter()
                    .map(PodRecord::id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// A client for the lab's API emulator; `None` when the lab keeps its leases in etcd.
    pub fn kube_client(&self) -> Result<Option<KubeClient>> {
        if self.datastore != "kube" {
            return Ok(None);
        }
        let (Some(url), Some(ul)) = (&self.endpoint, &self.underlay_netns) else {
            return Err(LabError::Invalid(
                "the lab's state records no API emulator address".into(),
            ));
        };
        KubeClient::from_url(url, &Path::new(crate::NETNS_DIR).join(ul), &self.lab_dir).map(Some)
    }

    /// Like [`LabState::kube_client`], for what only Kubernetes mode has.
    pub fn require_kube(&self, what: &str) -> Result<KubeClient> {
        self.kube_client()?.ok_or_else(|| {
            LabError::Invalid(format!(
                "{what} needs a lab started with `flannel-lab up --datastore kube` (this one keeps its leases in etcd)"
            ))
        })
    }

    /// Creates a server pod (see the module docs) with `serve_program` (a `flannel-lab`
    /// binary) running its servers, and records it. On failure nothing of it is left.
    pub fn add_pod(&mut self, pod: &PodAdd, serve_program: &Path) -> Result<PodRecord> {
        let id = format!("{}/{}", pod.namespace, pod.name);
        parse_pod_ref(&id)?;
        if self.pods.iter().any(|p| p.is(&id)) {
            return Err(LabError::Invalid(format!("pod {id} already exists")));
        }
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .ok_or_else(|| {
                LabError::Invalid(format!(
                    "no node {:?} in the lab; nodes: {}",
                    pod.node,
                    self.nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?
            .clone();
        let rt = node.runtime.clone().ok_or_else(|| {
            LabError::Invalid(
                "this lab's state has no CNI runtime record (started by an older flannel-lab); restart it".into(),
            )
        })?;
        let kube = self.kube_client()?;
        if let Some(k) = &kube {
            k.ensure_namespace(&pod.namespace)?;
        }
        let role = format!("{}-{}.{}", node.name, pod.namespace, pod.name);
        if role.len() > 64 {
            return Err(LabError::Invalid(format!(
                "pod {id}: the lab names its network namespace {role:?}, which must be at most 64 characters; use a shorter namespace or name"
            )));
        }
        let netns = Netns::new_in(Some(&self.stem), &role)?;
        let node_ns = Netns::open(&node.netns)?;
        let runtime = NodeRuntime {
            node: &node_ns,
            conflist: rt.conflist,
            path: rt.cni_path,
            node_root: rt.node_root.as_deref(),
        };
        let container_id = format!("{}.{}", pod.namespace, pod.name);
        let cni_runtime = json!({ "portMappings": [] });
        // On an error from here on, the namespace guard deletes the pod's namespace.
        let wired = runtime.add(&container_id, &netns.path(), &cni_runtime)?;
        let started = self
            .start_servers(&netns, &id, serve_program)
            .and_then(|child| {
                if let Some(k) = &kube {
                    let object = PodObject::server_pod(
                        &pod.namespace,
                        &pod.name,
                        &node.name,
                        IpAddr::V4(node.ip),
                        &wired.ips(),
                        &pod.labels,
                    );
                    k.register_pod(&object)?;
                }
                Ok(child)
            });
        let child = match started {
            Ok(c) => c,
            Err(e) => {
                let _ = runtime.del(
                    &container_id,
                    &netns.path(),
                    &cni_runtime,
                    Some(&wired.result),
                );
                return Err(e);
            }
        };
        let record = PodRecord {
            name: pod.name.clone(),
            node: node.name.clone(),
            netns: netns.name().to_string(),
            ip: wired.ip,
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            ip6: wired.ip6.filter(|v6| *v6 != wired.ip),
            cni: Some(CniRecord {
                container_id,
                runtime: cni_runtime,
                result: wired.result,
            }),
            serves: true,
        };
        self.processes.push(process_record(
            &serve_role(&id),
            &program_name(serve_program),
            child.pid(),
            child.netns_name(),
            Some(child.log_path()),
        ));
        self.pods.push(record.clone());
        // The state file owns them now (see `LabState::detach`).
        std::mem::forget(child);
        std::mem::forget(netns);
        Ok(record)
    }

    /// Starts `serve_program serve` in the pod and waits until it listens.
    fn start_servers(&self, netns: &Netns, id: &str, serve_program: &Path) -> Result<Child> {
        let mut cmd = Command::new(serve_program);
        cmd.args([SERVE_SUBCOMMAND, "--name", id]);
        cmd.arg("--lab").arg(&self.lab_dir);
        let log = self
            .lab_dir
            .join("logs")
            .join(format!("serve-{}.log", id.replace('/', ".")));
        let mut child = Child::spawn_session(netns.name(), cmd, log)?;
        let deadline = Instant::now() + SERVE_START_TIMEOUT;
        // The servers bind every socket before the last TCP one listens.
        let last = PortProto::new(81, Proto::Tcp);
        let lo = IpAddr::from([127, 0, 0, 1]);
        loop {
            child.ensure_running()?;
            if probe_addr(&netns.path(), lo, last, Duration::from_millis(200))? {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                return Err(child.error(format!(
                    "did not listen on {last} within {SERVE_START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes pod `target` (`NS/NAME`, or a name in `default`): stops its servers, runs CNI
    /// DEL, deletes its namespace and its Pod object, and forgets it.
    pub fn delete_pod(&mut self, target: &str) -> Result<PodRecord> {
        let pod = self.pod_record(target)?.clone();
        let role = serve_role(&format!("{}/{}", pod.namespace, pod.name));
        let servers: Vec<ProcessRecord> = self
            .processes
            .iter()
            .filter(|p| p.role == role)
            .cloned()
            .collect();
        stop_processes(&servers);
        let mut errors = Vec::new();
        if let (Some(cni), Some(node)) = (&pod.cni, self.nodes.iter().find(|n| n.name == pod.node))
            && let Some(rt) = &node.runtime
        {
            let node_ns = Netns::open(&node.netns)?;
            let runtime = NodeRuntime {
                node: &node_ns,
                conflist: rt.conflist.clone(),
                path: rt.cni_path.clone(),
                node_root: rt.node_root.as_deref(),
            };
            let path = Path::new(crate::NETNS_DIR).join(&pod.netns);
            if let Err(e) = runtime.del(&cni.container_id, &path, &cni.runtime, Some(&cni.result)) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = destroy_if_exists(&pod.netns) {
            errors.push(e.to_string());
        }
        if let Some(k) = self.kube_client()?
            && let Err(e) = k.unregister_pod(&pod.namespace, &pod.name)
        {
            errors.push(e.to_string());
        }
        self.processes.retain(|p| p.role != role);
        self.pods.retain(|p| !p.is(&pod.id()));
        if errors.is_empty() {
            Ok(pod)
        } else {
            Err(LabError::Invalid(format!(
                "pod {} was removed from the lab, with errors: {}",
                pod.id(),
                errors.join("; ")
            )))
        }
    }

    /// Sets and removes labels of pod `target`: its Pod object (Kubernetes mode) and its record.
    pub fn label_pod(
        &mut self,
        target: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>> {
        let i = self.pods.iter().position(|p| p.is(target)).ok_or_else(|| {
            self.pod_record(target)
                .err()
                .unwrap_or_else(|| LabError::Invalid(format!("no pod {target:?}")))
        })?;
        let (ns, name) = (self.pods[i].namespace.clone(), self.pods[i].name.clone());
        if let Some(k) = self.kube_client()? {
            k.patch_pod_labels(&ns, &name, changes)?;
        }
        let labels = &mut self.pods[i].labels;
        for (k, v) in changes {
            match v {
                Some(v) => labels.insert(k.clone(), v.clone()),
                None => labels.remove(k),
            };
        }
        Ok(labels.clone())
    }
}

/// The recorded role of a pod's servers.
fn serve_role(id: &str) -> String {
    format!("serve {id}")
}

fn program_name(program: &Path) -> String {
    program.file_name().map_or_else(
        || "flannel-lab".into(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Stops recorded processes: SIGTERM, then SIGKILL after [`SERVE_STOP_TIMEOUT`]; pids that no
/// longer are the recorded program are left alone.
pub(crate) fn stop_processes(procs: &[ProcessRecord]) {
    let running: Vec<&ProcessRecord> = procs.iter().filter(|p| p.is_running()).collect();
    for p in &running {
        signal_process(p, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + SERVE_STOP_TIMEOUT;
    while running.iter().any(|p| p.is_running()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in running.iter().filter(|p| p.is_running()) {
        signal_process(p, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The `flannel-lab` binary to run servers with: the running one when it is `flannel-lab`,
/// else the one in [`crate::bin_dir`] (tests and other crates' harnesses).
pub fn serve_program() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| LabError::io("locating the running executable", e))?;
    if exe.file_name().is_some_and(|n| n == "flannel-lab") {
        return Ok(exe);
    }
    let p = crate::bin_dir()?.join("flannel-lab");
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::Invalid(format!(
            "flannel-lab binary not found at {}: build it first (`cargo build -p flannel-lab`)",
            p.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs() {
        assert_eq!(
            parse_pod_ref("x/a").unwrap(),
            ("x".to_string(), "a".to_string())
        );
        for bad in ["a", "x/", "/a", "X/a", "x/a_b", "x/-a", "x/a/b"] {
            assert!(parse_pod_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_changes() {
        assert_eq!(
            parse_label_change("pod=a").unwrap(),
            ("pod".to_string(), Some("a".to_string()))
        );
        assert_eq!(
            parse_label_change("app.kubernetes.io/name=x").unwrap(),
            ("app.kubernetes.io/name".to_string(), Some("x".to_string()))
        );
        assert_eq!(
            parse_label_change("pod-").unwrap(),
            ("pod".to_string(), None)
        );
        assert_eq!(
            parse_label_change("empty=").unwrap(),
            ("empty".to_string(), Some(String::new()))
        );
        for bad in ["pod", "=a", "p d=a", "pod=a b", "/x=1"] {
            assert!(parse_label_change(bad).is_err(), "{bad}");
        }
    }
}
