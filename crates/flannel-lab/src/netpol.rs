//! The NetworkPolicy enforcer on every node (`flannel-lab up --datastore kube --netpol`):
//! `flannel-netpol` runs in each node's namespace as the chart's second container would, with
//! the node's name and kubeconfig, and the lab waits until each has listed pods, namespaces
//! and policies and written its table (`/readyz` 200), so a policy applied after `up` is
//! enforced by an enforcer that is already watching.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::http_get_status;
use crate::daemonset::DaemonSet;
use crate::error::{LabError, Result};
use crate::kube::node_name;
use crate::lab::Lab;
use crate::process::Child;

/// The enforcer's binary name, next to flanneld's.
pub const NETPOL_BIN: &str = "flannel-netpol";

/// The enforcer's container in the DaemonSet (upstream's name, rendered with
/// `netpol.enabled`).
pub const NETPOL_CONTAINER: &str = "kube-network-policies";

/// The port of the enforcer's `/metrics`, `/healthz` and `/readyz` in each node namespace
/// (kube-network-policies' metrics port).
pub const NETPOL_METRICS_PORT: u16 = 9080;

/// The flags the lab gives the enforcer on a node: the chart's `netpol.args` (node name,
/// `--v=2` so denied packets are logged to NFLOG) plus the node's kubeconfig and its metrics
/// address.
pub fn netpol_args(node_name: &str, node_dir: &Path) -> Vec<String> {
    vec![
        format!("--hostname-override={node_name}"),
        "--v=2".to_string(),
        format!("--kubeconfig={}", node_dir.join("kubeconfig").display()),
        format!("--metrics-bind-address=0.0.0.0:{NETPOL_METRICS_PORT}"),
    ]
}

/// One enforcer per node, started and stopped with the cluster.
#[derive(Debug, Default)]
pub struct Enforcers {
    children: Vec<Option<Child>>,
}

impl Enforcers {
    /// Starts the enforcer on every node of `lab` and waits until each is ready, or `timeout`
    /// passes: the DaemonSet's [`NETPOL_CONTAINER`] from the image when `daemonset` is given
    /// (as a kubelet runs the pod's second container), else the binary in `bin_dir`.
    pub fn start(
        lab: &Lab,
        bin_dir: &Path,
        nodes: usize,
        timeout: Duration,
        mut daemonset: Option<&mut DaemonSet>,
    ) -> Result<Self> {
        let program = bin_dir.join(NETPOL_BIN);
        if daemonset.is_none() && !program.is_file() {
            return Err(LabError::Invalid(format!(
                "{NETPOL_BIN} binary not found in {}: build the workspace first (`cargo build --workspace --bins`), or set FLANNEL_RS_BIN_DIR",
                bin_dir.display()
            )));
        }
        let mut enforcers = Enforcers::default();
        for i in 0..nodes {
            let child = match daemonset.as_deref_mut() {
                Some(ds) => ds.start_container(i, lab, NETPOL_CONTAINER)?,
                None => spawn(lab, bin_dir, i)?,
            };
            enforcers.children.push(Some(child));
        }
        for i in 0..nodes {
            enforcers.wait_ready(lab, i, timeout)?;
        }
        Ok(enforcers)
    }

    /// Waits until node `i`'s enforcer answers `/readyz` with 200 (it has synced once).
    fn wait_ready(&mut self, lab: &Lab, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = &mut self.children[i] {
                c.ensure_running()?;
            }
            let ready = lab
                .node(i)
                .netns()
                .in_thread(|| http_get_status(NETPOL_METRICS_PORT, "/readyz") == Some(200))
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = self.children[i].as_ref().map(|c| c.log_tail(20));
                return Err(LabError::Timeout {
                    what: format!("{NETPOL_BIN} on {} to become ready", lab.node(i).name()),
                    timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The enforcer process of node `i`, if running.
    pub fn child(&self, i: usize) -> Option<&Child> {
        self.children.get(i).and_then(Option::as_ref)
    }

    /// Stops node `i`'s enforcer with SIGTERM; its rules stay in the kernel, as on a node whose
    /// enforcer restarts.
    pub fn stop(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        match self.children.get_mut(i).and_then(Option::take) {
            Some(mut c) => c.stop(),
            None => Err(LabError::Invalid(format!(
                "{NETPOL_BIN} on node {i} is not running"
            ))),
        }
    }

    /// Starts node `i`'s enforcer (the binary) again after [`Enforcers::stop`] and waits until
    /// it is ready.
    pub fn restart(
        &mut self,
        lab: &Lab,
        bin_dir: &Path,
        i: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.children[i] = Some(spawn(lab, bin_dir, i)?);
        self.wait_ready(lab, i, timeout)
    }
}

/// Starts node `i`'s enforcer in its namespace.
fn spawn(lab: &Lab, bin_dir: &Path, i: usize) -> Result<Child> {
    let node = lab.node(i);
    let mut cmd = Command::new(bin_dir.join(NETPOL_BIN));
    cmd.args(netpol_args(&node_name(i), node.dir()));
    cmd.env("RUST_LOG", "info");
    lab.spawn_in(node.netns(), cmd)
}

impl crate::state::LabState {
    /// The recorded enforcer process of node `node` (`n1`, ...), if the lab runs one.
    pub fn netpol_process(&self, node: &str) -> Option<&crate::state::ProcessRecord> {
        let role = netpol_role(node);
        self.processes.iter().find(|p| p.role == role)
    }

    /// Stops node `node`'s enforcer (SIGTERM, then SIGKILL) and forgets it: its table stays in
    /// the kernel, as on a node whose enforcer container restarts. Reliability tests use this
    /// with [`start_netpol`](crate::state::LabState::start_netpol) on a persistent lab.
    pub fn stop_netpol(&mut self, node: &str) -> Result<()> {
        let role = netpol_role(node);
        let Some(p) = self.netpol_process(node).cloned() else {
            return Err(LabError::Invalid(format!(
                "no {NETPOL_BIN} recorded on node {node:?}"
            )));
        };
        crate::lab_pods::stop_processes(std::slice::from_ref(&p));
        self.processes.retain(|p| p.role != role);
        Ok(())
    }

    /// Starts node `node`'s enforcer again (binaries from [`crate::bin_dir`]) as a recorded lab
    /// process, with the flags `up --netpol` gives it, and waits until it is ready (`/readyz`:
    /// it has listed everything and reconciled the table it found).
    pub fn start_netpol(&mut self, node: &str, timeout: Duration) -> Result<()> {
        if self.netpol_process(node).is_some_and(|p| p.is_running()) {
            return Err(LabError::Invalid(format!(
                "{NETPOL_BIN} already runs on node {node:?}"
            )));
        }
        let rec = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("no node {node:?} in the lab")))?
            .clone();
        let mut cmd = Command::new(crate::bin_dir()?.join(NETPOL_BIN));
        cmd.args(netpol_args(&rec.name, &rec.dir));
        cmd.env("RUST_LOG", "info");
        let log = self
            .lab_dir
            .join("logs")
            .join(format!("{NETPOL_BIN}-{node}-restarted.log"));
        let mut child = Child::spawn_session(&rec.netns, cmd, log)?;
        let ns = crate::Netns::open(&rec.netns)?;
        let deadline = Instant::now() + timeout;
        while ns
            .in_thread(|| http_get_status(NETPOL_METRICS_PORT, "/readyz"))
            .ok()
            .flatten()
            != Some(200)
        {
            child.ensure_running()?;
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{NETPOL_BIN} on {node} to become ready"),
                    timeout,
                    last: Some(child.log_tail(20)),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.processes.push(crate::state::process_record(
            &netpol_role(node),
            NETPOL_BIN,
            child.pid(),
            child.netns_name(),
            Some(child.log_path()),
        ));
        // The state file owns it now (see `LabState::detach`).
        std::mem::forget(child);
        Ok(())
    }

    /// Node `node`'s enforcer's `/metrics` text (`None` when it does not answer).
    pub fn netpol_metrics(&self, node: &str) -> Result<Option<String>> {
        let rec = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("no node {node:?} in the lab")))?;
        crate::Netns::open(&rec.netns)?.in_thread(|| {
            crate::cluster::http_get(NETPOL_METRICS_PORT, "/metrics")
                .and_then(|(status, body)| (status == 200).then_some(body))
        })
    }
}

/// The recorded role of a node's enforcer (as `up` records it).
fn netpol_role(node: &str) -> String {
    format!("{NETPOL_BIN} {node}")
}
