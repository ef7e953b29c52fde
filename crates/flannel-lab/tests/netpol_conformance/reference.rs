//! An in-memory [`NetpolCluster`] whose "probes" evaluate NetworkPolicy semantics directly from
//! the policies' JSON: a plain reading of the API's rules, written independently of the
//! catalogue's expected tables, so running the catalogue against it checks those tables.
//!
//! Semantics: a pod is isolated for a direction when a policy of its namespace selects it and
//! lists that policy type (default: Ingress always, Egress when `egress` has rules); traffic
//! passes when the source's egress and the destination's ingress both allow it; a rule allows
//! when some peer matches (none: any) and some port matches (none: any). Peers: `podSelector`
//! alone means the policy's namespace, `namespaceSelector` alone every pod there, both means
//! both must match, `ipBlock` is CIDR minus excepts on the pod IP. Ports: protocol defaults to
//! TCP, a number (with optional `endPort`) or a name resolved on the destination pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::cluster::NetpolCluster;
use super::model::{Model, NS_NAME_LABEL, PodRef, Proto};
use super::truth_table::TruthTable;

type Labels = BTreeMap<String, String>;

/// A deliberate bug, to show the runner catches evaluators that get a rule wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A correct evaluator.
    None,
    /// `ipBlock.except` is ignored.
    IgnoreExcept,
    /// A peer with both selectors matches when either does (OR instead of AND).
    SelectorsOr,
    /// Egress isolation is never enforced.
    IgnoreEgress,
    /// Named ports never match.
    NoNamedPorts,
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodRef, (Labels, IpAddr)>,
    policies: BTreeMap<(String, String), Value>,
    free_ips: BTreeSet<IpAddr>,
    next_ip: u32,
}

/// The reference cluster.
pub struct RefCluster {
    model: Model,
    sctp: bool,
    fault: Fault,
    state: Mutex<State>,
}

impl RefCluster {
    /// An empty cluster (no namespaces, no pods) over `model`'s ports.
    pub fn new(model: Model, sctp: bool, fault: Fault) -> RefCluster {
        RefCluster {
            model,
            sctp,
            fault,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no test panics while holding the state")
    }

    /// Number of policies held (tests check the runner cleans up).
    pub fn policy_count(&self) -> usize {
        self.state().policies.len()
    }

    /// A pod's current labels.
    pub fn pod_labels(&self, pod: &PodRef) -> Option<Labels> {
        self.state().pods.get(pod).map(|(l, _)| l.clone())
    }

    /// A namespace's current labels.
    pub fn namespace_labels(&self, ns: &str) -> Option<Labels> {
        self.state().namespaces.get(ns).cloned()
    }
}

fn selector_matches(sel: &Value, labels: &Labels) -> bool {
    let labels_ok = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| {
            m.iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
        });
    let exprs_ok = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|reqs| {
            reqs.iter().all(|r| {
                let key = r["key"].as_str().unwrap_or_default();
                let values: Vec<&str> = r["values"]
                    .as_array()
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let have = labels.get(key).map(String::as_str);
                match r["operator"].as_str() {
                    Some("In") => have.is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => have.is_none_or(|v| !values.contains(&v)),
                    Some("Exists") => have.is_some(),
                    Some("DoesNotExist") => have.is_none(),
                    _ => false,
                }
            })
        });
    labels_ok && exprs_ok
}

/// The endpoint of a probe as the evaluator sees it.
struct End<'a> {
    pod: &'a PodRef,
    labels: &'a Labels,
    ip: IpAddr,
}

impl RefCluster {
    fn policy_types(spec: &Value) -> (bool, bool) {
        match spec["policyTypes"].as_array() {
            Some(t) if !t.is_empty() => (
                t.iter().any(|v| v == "Ingress"),
                t.iter().any(|v| v == "Egress"),
            ),
            _ => (
                true,
                spec["egress"].as_array().is_some_and(|e| !e.is_empty()),
            ),
        }
    }

    fn peer_matches(&self, st: &State, policy_ns: &str, peer: &Value, other: &End<'_>) -> bool {
        if let Some(block) = peer.get("ipBlock") {
            let inside = |c: &Value| {
                c.as_str()
                    .and_then(|c| c.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|n| n.contains(&other.ip))
            };
            let excepted = self.fault != Fault::IgnoreExcept
                && block["except"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(inside));
            return inside(&block["cidr"]) && !excepted;
        }
        let ns_labels = st
            .namespaces
            .get(&other.pod.ns)
            .cloned()
            .unwrap_or_default();
        let ns_sel = peer.get("namespaceSelector");
        let pod_sel = peer.get("podSelector");
        let ns_ok = ns_sel.map_or(other.pod.ns == policy_ns, |s| {
            selector_matches(s, &ns_labels)
        });
        let pod_ok = pod_sel.is_none_or(|s| selector_matches(s, other.labels));
        if self.fault == Fault::SelectorsOr && ns_sel.is_some() && pod_sel.is_some() {
            return ns_ok || pod_ok;
        }
        ns_ok && pod_ok
    }

    fn port_matches(&self, spec: &Value, port: u16, proto: Proto) -> bool {
        let p_proto = spec["protocol"]
            .as_str()
            .map_or(Some(Proto::Tcp), Proto::from_api);
        if p_proto != Some(proto) {
            return false;
        }
        match spec.get("port") {
            None => true,
            Some(Value::Number(n)) => {
                let start = n.as_u64().unwrap_or(u64::MAX);
                let end = spec["endPort"].as_u64().unwrap_or(start);
                (start..=end).contains(&u64::from(port))
            }
            Some(Value::String(name)) => {
                self.fault != Fault::NoNamedPorts
                    && self
                        .model
                        .named_ports()
                        .iter()
                        .any(|np| &np.name == name && np.port == port && np.proto == proto)
            }
            Some(_) => false,
        }
    }

    /// Whether `dir` ("ingress"/"egress") of `subject` lets traffic with `other` through.
    fn direction_allows(
        &self,
        st: &State,
        dir: &str,
        subject: &End<'_>,
        other: &End<'_>,
        port: u16,
        proto: Proto,
    ) -> bool {
        let peers_key = if dir == "ingress" { "from" } else { "to" };
        let mut isolated = false;
        for ((ns, _), policy) in &st.policies {
            let spec = &policy["spec"];
            if ns != &subject.pod.ns || !selector_matches(&spec["podSelector"], subject.labels) {
                continue;
            }
            let (ingress, egress) = Self::policy_types(spec);
            if !(if dir == "ingress" { ingress } else { egress }) {
                continue;
            }
            isolated = true;
            let rules = spec[dir].as_array().cloned().unwrap_or_default();
            for rule in &rules {
                let peers = rule[peers_key].as_array().cloned().unwrap_or_default();
                let ports = rule["ports"].as_array().cloned().unwrap_or_default();
                let peer_ok =
                    peers.is_empty() || peers.iter().any(|p| self.peer_matches(st, ns, p, other));
                let port_ok =
                    ports.is_empty() || ports.iter().any(|p| self.port_matches(p, port, proto));
                if peer_ok && port_ok {
                    return true;
                }
            }
        }
        !isolated
    }

    fn allowed(&self, st: &State, from: &PodRef, to: &PodRef, port: u16, proto: Proto) -> bool {
        let (Some((fl, fip)), Some((tl, tip))) = (st.pods.get(from), st.pods.get(to)) else {
            return false;
        };
        if !self.model.ports.contains(&port)
            || !(self.model.protos.contains(&proto) || proto == Proto::Sctp && self.sctp)
        {
            return false;
        }
        let src = End {
            pod: from,
            labels: fl,
            ip: *fip,
        };
        let dst = End {
            pod: to,
            labels: tl,
            ip: *tip,
        };
        let egress_ok = self.fault == Fault::IgnoreEgress
            || self.direction_allows(st, "egress", &src, &dst, port, proto);
        egress_ok && self.direction_allows(st, "ingress", &dst, &src, port, proto)
    }
}

/// `kubectl label`: `Some` sets, `None` removes.
fn set_label(labels: &mut Labels, key: &str, value: Option<&str>) {
    match value {
        Some(v) => labels.insert(key.to_owned(), v.to_owned()),
        None => labels.remove(key),
    };
}

fn meta<'v>(obj: &'v Value, field: &str) -> anyhow::Result<&'v str> {
    obj["metadata"][field]
        .as_str()
        .with_context(|| format!("object without metadata.{field}: {obj}"))
}

impl NetpolCluster for RefCluster {
    fn apply(&self, objects: &[Value]) -> anyhow::Result<()> {
        let mut st = self.state();
        for obj in objects {
            match obj["kind"].as_str() {
                Some("Namespace") => {
                    let name = meta(obj, "name")?;
                    let mut labels: Labels =
                        serde_json::from_value(obj["metadata"]["labels"].clone())
                            .unwrap_or_default();
                    labels.insert(NS_NAME_LABEL.to_owned(), name.to_owned());
                    st.namespaces.insert(name.to_owned(), labels);
                }
                Some("NetworkPolicy") => {
                    let ns = meta(obj, "namespace")?;
                    if !st.namespaces.contains_key(ns) {
                        bail!("namespace {ns} not found");
                    }
                    let key = (ns.to_owned(), meta(obj, "name")?.to_owned());
                    st.policies.insert(key, obj.clone());
                }
                other => bail!("cannot apply kind {other:?}"),
            }
        }
        Ok(())
    }

    fn delete_policy(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        match self
            .state()
            .policies
            .remove(&(ns.to_owned(), name.to_owned()))
        {
            Some(_) => Ok(()),
            None => bail!("networkpolicy {ns}/{name} not found"),
        }
    }

    fn delete_all_policies(&self) -> anyhow::Result<()> {
        self.state().policies.clear();
        Ok(())
    }

    fn label_pod(&self, pod: &PodRef, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        let mut st = self.state();
        let (labels, _) = st
            .pods
            .get_mut(pod)
            .with_context(|| format!("pod {pod} not found"))?;
        set_label(labels, key, value);
        Ok(())
    }

    fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        let mut st = self.state();
        let labels = st
            .namespaces
            .get_mut(ns)
            .with_context(|| format!("namespace {ns} not found"))?;
        set_label(labels, key, value);
        Ok(())
    }

    fn create_pod(&self, pod: &PodRef, labels: &Labels) -> anyhow::Result<()> {
        let mut st = self.state();
        if !st.namespaces.contains_key(&pod.ns) {
            bail!("namespace {} not found", pod.ns);
        }
        if st.pods.contains_key(pod) {
            bail!("pod {pod} already exists");
        }
        // Like host-local IPAM after a delete: the lowest free address first, so a recreated
        // pod gets back the IP just released.
        let ip = match st.free_ips.pop_first() {
            Some(ip) => ip,
            None => {
                st.next_ip += 1;
                IpAddr::V4(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 244, 0, 1)) + st.next_ip,
                ))
            }
        };
        st.pods.insert(pod.clone(), (labels.clone(), ip));
        Ok(())
    }

    fn delete_pod(&self, pod: &PodRef) -> anyhow::Result<()> {
        let mut st = self.state();
        let (_, ip) = st
            .pods
            .remove(pod)
            .with_context(|| format!("pod {pod} not found"))?;
        st.free_ips.insert(ip);
        Ok(())
    }

    fn pod_ips(&self, pod: &PodRef) -> anyhow::Result<Vec<IpAddr>> {
        let st = self.state();
        let (_, ip) = st
            .pods
            .get(pod)
            .with_context(|| format!("pod {pod} not found"))?;
        Ok(vec![*ip])
    }

    fn supports(&self, proto: Proto) -> bool {
        proto != Proto::Sctp || self.sctp
    }

    fn probe_all(
        &self,
        pods: &[PodRef],
        port: u16,
        proto: Proto,
        _timeout: Duration,
    ) -> anyhow::Result<TruthTable> {
        let st = self.state();
        let mut table = TruthTable::new(pods.to_vec(), None);
        for from in pods {
            for to in pods.iter().filter(|t| *t != from) {
                table.set(from, to, self.allowed(&st, from, to, port, proto));
            }
        }
        Ok(table)
    }
}
