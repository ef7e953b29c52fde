//! [`NetpolCluster`] on a real lab: `flannel-lab up --datastore kube --netpol` with 3 nodes in
//! its own state directory (removed with `down --force` on drop), driven through the lab's
//! library API (pods, labels, the emulator's HTTP API, the parallel probe matrix).
//!
//! The model's pods are spread round-robin over the nodes (x/a n1, x/b n2, x/c n3, y/a n1,
//! ...), so a, b and c of every namespace sit on different nodes (cross-node pairs) while x/a,
//! y/a and z/a share n1 (same-node pairs, bridged on cni0).
//!
//! `settle` waits until every node's enforcer has enforced every change made so far: each write
//! returns the object's new `metadata.resourceVersion`; per resource the newest one is kept,
//! and every node's `flannel_netpol_synced_resource_version{resource}` must reach it (a watch
//! delivers one resource's changes in order, so reaching N means everything up to N is in).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use flannel_lab::kube_client::KubeClient;
use flannel_lab::lab_pods::PodAdd;
use flannel_lab::netpol_matrix::{ProbeTarget, matrix};
use flannel_lab::state::LabState;
use flannel_lab::{PortProto, run_command};
use serde_json::{Value, json};

use super::cluster::NetpolCluster;
use super::model::{PodRef, Proto};
use super::truth_table::TruthTable;

const UP_TIMEOUT: Duration = Duration::from_secs(300);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the enforcers may take to enforce a change (normally a few milliseconds).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Probes at once: they mostly wait (a denied probe waits out its timeout).
const PARALLEL: usize = 72;
const NP_PATH: &str = "/apis/networking.k8s.io/v1/namespaces";

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

/// The conformance model on the lab.
pub struct LabCluster {
    lab: LabDir,
    client: KubeClient,
    nodes: Vec<String>,
    /// Per resource, the newest resourceVersion this cluster wrote (what `settle` waits for).
    want: RefCell<BTreeMap<&'static str, u64>>,
    /// Pods created so far, for round-robin placement (a recreated pod keeps its node).
    placed: RefCell<BTreeMap<PodRef, String>>,
}

impl LabCluster {
    /// Brings up the lab (3 nodes, the enforcer on each).
    pub fn up() -> anyhow::Result<LabCluster> {
        let lab = LabDir::up("netpol-conf", 3)?;
        let state = lab.state()?;
        Ok(LabCluster {
            client: lab.client()?,
            nodes: state.nodes.iter().map(|n| n.name.clone()).collect(),
            lab,
            want: RefCell::new(BTreeMap::new()),
            placed: RefCell::new(BTreeMap::new()),
        })
    }

    fn wrote(&self, resource: &'static str, obj: &Value) -> anyhow::Result<()> {
        let rv = rv_of(obj)?;
        let mut want = self.want.borrow_mut();
        let e = want.entry(resource).or_default();
        *e = (*e).max(rv);
        Ok(())
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .client
            .expect_ok("GET", path, "application/json", None)?)
    }

    fn delete(&self, resource: &'static str, path: &str) -> anyhow::Result<()> {
        let gone = self
            .client
            .expect_ok("DELETE", path, "application/json", None)?;
        self.wrote(resource, &gone)
    }
}

impl NetpolCluster for LabCluster {
    fn apply(&self, objects: &[Value]) -> anyhow::Result<()> {
        let text: Vec<String> = objects.iter().map(Value::to_string).collect();
        let outcomes = flannel_lab::apply::apply(&self.client, &text.join("\n---\n"))?;
        for o in &outcomes {
            if let Err(e) = &o.result {
                bail!("{}: {e}", o.line());
            }
        }
        for obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let (resource, path) = match obj["kind"].as_str() {
                Some("Namespace") => ("namespaces", format!("/api/v1/namespaces/{name}")),
                _ => {
                    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
                    (
                        "networkpolicies",
                        format!("{NP_PATH}/{ns}/networkpolicies/{name}"),
                    )
                }
            };
            self.wrote(resource, &self.get(&path)?)?;
        }
        Ok(())
    }

    fn delete_policy(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        self.delete(
            "networkpolicies",
            &format!("{NP_PATH}/{ns}/networkpolicies/{name}"),
        )
    }

    fn delete_all_policies(&self) -> anyhow::Result<()> {
        let list = self.get("/apis/networking.k8s.io/v1/networkpolicies")?;
        for item in list["items"].as_array().into_iter().flatten() {
            let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            self.delete_policy(ns, name)?;
        }
        Ok(())
    }

    fn label_pod(&self, pod: &PodRef, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        let changes = BTreeMap::from([(key.to_owned(), value.map(str::to_owned))]);
        LabState::modify(self.lab.path(), |s| s.label_pod(&pod.to_string(), &changes))?;
        let obj = self.get(&format!("/api/v1/namespaces/{}/pods/{}", pod.ns, pod.name))?;
        self.wrote("pods", &obj)
    }

    fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        let patch = json!({ "metadata": { "labels": { key: value } } });
        let obj = self.client.expect_ok(
            "PATCH",
            &format!("/api/v1/namespaces/{ns}"),
            "application/merge-patch+json",
            Some(&patch),
        )?;
        self.wrote("namespaces", &obj)
    }

    fn create_pod(&self, pod: &PodRef, labels: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let node = {
            let mut placed = self.placed.borrow_mut();
            let n = placed.len();
            placed
                .entry(pod.clone())
                .or_insert_with(|| self.nodes[n % self.nodes.len()].clone())
                .clone()
        };
        let add = PodAdd {
            namespace: pod.ns.clone(),
            name: pod.name.clone(),
            node,
            labels: labels.clone(),
        };
        let serve = PathBuf::from(env!("CARGO_BIN_EXE_flannel-lab"));
        LabState::modify(self.lab.path(), |s| s.add_pod(&add, &serve))
            .with_context(|| format!("pod add {pod}"))?;
        let obj = self.get(&format!("/api/v1/namespaces/{}/pods/{}", pod.ns, pod.name))?;
        self.wrote("pods", &obj)
    }

    fn delete_pod(&self, pod: &PodRef) -> anyhow::Result<()> {
        // The Pod object first (its DELETE tells the resourceVersion to wait for), then the
        // pod itself (servers, CNI DEL, namespace; the object is already gone, which is fine).
        self.delete(
            "pods",
            &format!("/api/v1/namespaces/{}/pods/{}", pod.ns, pod.name),
        )?;
        LabState::modify(self.lab.path(), |s| s.delete_pod(&pod.to_string()))?;
        Ok(())
    }

    fn pod_ips(&self, pod: &PodRef) -> anyhow::Result<Vec<IpAddr>> {
        let obj = self.get(&format!("/api/v1/namespaces/{}/pods/{}", pod.ns, pod.name))?;
        obj["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let ip = p["ip"].as_str().unwrap_or_default();
                ip.parse().with_context(|| format!("pod {pod} IP {ip:?}"))
            })
            .collect()
    }

    fn supports(&self, proto: Proto) -> bool {
        // The lab's servers speak TCP and UDP only (flannel-lab serve).
        proto != Proto::Sctp
    }

    fn settle(&self) -> anyhow::Result<()> {
        wait_synced(&self.lab.state()?, &self.want.borrow(), SETTLE_TIMEOUT)
    }

    fn probe_all(
        &self,
        pods: &[PodRef],
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> anyhow::Result<TruthTable> {
        let state = self.lab.state()?;
        let by_id: BTreeMap<String, ProbeTarget> = state
            .serving_pods()
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let targets = pods
            .iter()
            .map(|p| {
                by_id
                    .get(&p.to_string())
                    .cloned()
                    .ok_or_else(|| anyhow!("pod {p} is not in the lab"))
            })
            .collect::<anyhow::Result<Vec<ProbeTarget>>>()?;
        let lab_proto = match proto {
            Proto::Tcp => flannel_lab::Proto::Tcp,
            Proto::Udp => flannel_lab::Proto::Udp,
            Proto::Sctp => bail!("the lab's servers do not speak SCTP"),
        };
        let observed = matrix(
            &targets,
            &[PortProto::new(port, lab_proto)],
            timeout,
            PARALLEL,
        );
        let (_, cells) = &observed.tables[0];
        let mut table = TruthTable::new(pods.to_vec(), None);
        for (i, from) in pods.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                if let Some(ok) = cells.cells[i][j] {
                    table.set(from, to, ok);
                }
            }
        }
        Ok(table)
    }
}
