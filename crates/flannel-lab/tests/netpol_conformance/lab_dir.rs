//! A persistent NetworkPolicy lab for tests: `flannel-lab up --datastore kube --netpol` in its
//! own state directory (removed with `down --force` on drop), and the wait for every node's
//! enforcer to have enforced the writes made so far.
//!
//! Each write to the emulator returns the object's new `metadata.resourceVersion`; per
//! resource the newest one is kept, and every node's
//! `flannel_netpol_synced_resource_version{resource}` must reach it (a watch delivers one
//! resource's changes in order, so reaching N means everything up to N is enforced).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use flannel_lab::kube_client::KubeClient;
use flannel_lab::run_command;
use flannel_lab::state::LabState;
use serde_json::Value;

const UP_TIMEOUT: Duration = Duration::from_secs(300);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the enforcers may take to enforce a change (normally a few milliseconds).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The API path of namespaced NetworkPolicies.
pub const NP_PATH: &str = "/apis/networking.k8s.io/v1/namespaces";

/// A persistent lab in its own state directory, brought down (`down --force`) on drop.
pub struct LabDir {
    dir: tempfile::TempDir,
}

impl LabDir {
    /// `flannel-lab up --datastore kube --netpol --nodes N` in a fresh `flrs-<tag>-` directory.
    pub fn up(tag: &str, nodes: usize) -> anyhow::Result<LabDir> {
        let lab = LabDir {
            dir: tempfile::Builder::new()
                .prefix(&format!("flrs-{tag}-"))
                .tempdir()?,
        };
        let n = nodes.to_string();
        let args = [
            "up",
            "--datastore",
            "kube",
            "--netpol",
            "--nodes",
            &n,
            // The least `up` takes: plain pods in `default`, which serve nothing and are
            // not probed.
            "--pods-per-node",
            "1",
            "-q",
        ];
        let out = lab.cli(&args)?;
        if !out.status.success() {
            bail!(
                "flannel-lab up failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(lab)
    }

    /// Runs the `flannel-lab` binary on this lab.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let exe = env!("CARGO_BIN_EXE_flannel-lab");
        let mut cmd = Command::new(exe);
        cmd.arg("--state-dir")
            .arg(self.dir.path())
            .args(args)
            .env("FLANNEL_RS_BIN_DIR", bin_dir())
            .env_remove("CARGO");
        let timeout = if args.first() == Some(&"up") {
            UP_TIMEOUT
        } else {
            CMD_TIMEOUT
        };
        Ok(run_command(cmd, None, timeout)?)
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The recorded lab.
    pub fn state(&self) -> anyhow::Result<LabState> {
        LabState::load(self.path())?.ok_or_else(|| anyhow!("no lab recorded"))
    }

    /// The emulator's client.
    pub fn client(&self) -> anyhow::Result<KubeClient> {
        Ok(self.state()?.require_kube("the NetworkPolicy lab")?)
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = self.cli(&["down", "--force"]);
    }
}

/// Where the workspace's binaries are: next to the `flannel-lab` binary cargo built.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("FLANNEL_RS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = Path::new(env!("CARGO_BIN_EXE_flannel-lab"));
            exe.parent().map(Path::to_path_buf).unwrap_or_default()
        })
}

/// The newest resourceVersion of an object the API returned.
pub fn rv_of(obj: &Value) -> anyhow::Result<u64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no resourceVersion in {obj}"))
}

/// Parses `flannel_netpol_synced_resource_version{resource="R"} N` out of a metrics text.
pub fn synced_version(metrics: &str, resource: &str) -> Option<u64> {
    let prefix = format!("flannel_netpol_synced_resource_version{{resource=\"{resource}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until every node's enforcer has synced each resource up to `want` (or `timeout`).
pub fn wait_synced(
    state: &LabState,
    want: &BTreeMap<&'static str, u64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for node in &state.nodes {
        loop {
            let metrics = state.netpol_metrics(&node.name)?.unwrap_or_default();
            let behind: Vec<String> = want
                .iter()
                .filter(|(r, v)| synced_version(&metrics, r).is_none_or(|s| s < **v))
                .map(|(r, v)| format!("{r} {:?} < {v}", synced_version(&metrics, r)))
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "flannel-netpol on {} has not synced within {timeout:?}: {}",
                    node.name,
                    behind.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
