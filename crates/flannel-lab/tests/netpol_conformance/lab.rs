//! [`NetpolCluster`] on a real lab: `flannel-lab up --datastore kube --netpol` with 3 nodes
//! ([`LabDir`]), driven through the lab's library API (pods, labels, the emulator's HTTP API,
//! the parallel probe matrix).
//!
//! The model's pods are spread round-robin over the nodes (x/a n1, x/b n2, x/c n3, y/a n1,
//! ...), so a, b and c of every namespace sit on different nodes (cross-node pairs) while x/a,
//! y/a and z/a share n1 (same-node pairs, bridged on cni0).
//!
//! `settle` waits until every node's enforcer has enforced every change made so far
//! ([`wait_synced`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use flannel_lab::PortProto;
use flannel_lab::kube_client::KubeClient;
use flannel_lab::lab_pods::PodAdd;
use flannel_lab::netpol_matrix::{ProbeTarget, matrix};
use flannel_lab::state::LabState;
use serde_json::{Value, json};

use super::cluster::NetpolCluster;
use super::lab_dir::{LabDir, NP_PATH, SETTLE_TIMEOUT, rv_of, wait_synced};
use super::model::{PodRef, Proto};
use super::truth_table::TruthTable;

/// Probes at once: they mostly wait (a denied probe waits out its timeout).
const PARALLEL: usize = 72;

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
