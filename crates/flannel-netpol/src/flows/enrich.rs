//! Names for addresses: IP → namespace, pod and node, from the pods the enforcer already
//! watches, and the direction of a record relative to the local pod.
//!
//! The enforcer's one task owns the [`ClusterState`]; collectors and HTTP handlers run
//! elsewhere. So the task publishes an immutable [`PodDirectory`] (built from the state's
//! *owned* IPs, so a reused IP names the pod that holds it now) into a [`SharedDirectory`],
//! and a record is named when it is stored: a record about a pod that is deleted later keeps
//! its names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use crate::cluster::ClusterState;
use crate::flows::record::{Direction, FlowRecord};
use crate::ruleset::policy_id;

/// The names of one pod address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node, when scheduled.
    pub node: Option<String>,
}

/// Pod addresses of the whole cluster, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDirectory {
    by_ip: HashMap<IpAddr, PodName>,
    /// Policy object id → `namespace/name`, for drop rules whose prefix had to be the id
    /// (names too long or odd for a log prefix, see `compile::drop_identity`).
    policy_names: HashMap<String, String>,
}

impl PodDirectory {
    /// From the enforcer's state: every IP a pod really holds.
    pub fn from_state(state: &ClusterState) -> PodDirectory {
        let mut by_ip = HashMap::new();
        for pod in state.pods() {
            for ip in state.owned_ips(pod) {
                by_ip.insert(
                    ip,
                    PodName {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        node: pod.node.clone(),
                    },
                );
            }
        }
        let policy_names = state
            .policies()
            .map(|e| {
                let (ns, name) = (&e.policy.namespace, &e.policy.name);
                (policy_id(ns, name), format!("{ns}/{name}"))
            })
            .collect();
        PodDirectory {
            by_ip,
            policy_names,
        }
    }

    /// The pod holding `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&PodName> {
        self.by_ip.get(&ip)
    }

    /// Addresses known.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Whether no address is known.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Fills `record`'s names and reporting node; sets the direction when the source did
    /// not: towards a pod of `local_node` is ingress, else from one is egress (traffic between
    /// two local pods is reported as the destination's ingress, the side policies isolate
    /// first). A record with neither side local keeps no direction.
    /// A drop's policy given as an object id is replaced by the policy's name while the
    /// policy exists.
    pub fn enrich(&self, record: &mut FlowRecord, local_node: &str) {
        record.node = local_node.to_string();
        if let Some(name) = record
            .policy
            .as_ref()
            .and_then(|p| self.policy_names.get(p))
        {
            record.policy = Some(name.clone());
        }
        let local = |n: Option<&PodName>| n.is_some_and(|n| n.node.as_deref() == Some(local_node));
        let src = self.lookup(record.src_ip);
        let dst = self.lookup(record.dst_ip);
        if let Some(n) = src {
            record.src_namespace = Some(n.namespace.clone());
            record.src_pod = Some(n.pod.clone());
            record.src_node.clone_from(&n.node);
        }
        if let Some(n) = dst {
            record.dst_namespace = Some(n.namespace.clone());
            record.dst_pod = Some(n.pod.clone());
            record.dst_node.clone_from(&n.node);
        }
        if record.direction.is_none() {
            record.direction = if local(dst) {
                Some(Direction::Ingress)
            } else if local(src) {
                Some(Direction::Egress)
            } else {
                None
            };
        }
    }

    /// Whether either side of `record` is a pod (conntrack also reports the node's own
    /// connections, which are not pod flows).
    pub fn is_pod_flow(&self, record: &FlowRecord) -> bool {
        self.by_ip.contains_key(&record.src_ip) || self.by_ip.contains_key(&record.dst_ip)
    }
}

/// The directory shared between the enforcer's task (writer) and the collectors (readers);
/// readers clone the `Arc` and never hold the lock while naming.
#[derive(Debug, Clone, Default)]
pub struct SharedDirectory {
    current: Arc<RwLock<Arc<PodDirectory>>>,
}

impl SharedDirectory {
    /// An empty directory.
    pub fn new() -> SharedDirectory {
        SharedDirectory::default()
    }

    /// Replaces the directory (after the state changed).
    pub fn publish(&self, directory: PodDirectory) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(directory);
    }

    /// The directory now.
    pub fn get(&self) -> Arc<PodDirectory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::tests::tcp_facts;
    use crate::model::PodInfo;

    fn pod(ns: &str, name: &str, ip: &str, node: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: Default::default(),
            ips: vec![ip.parse().unwrap()],
            node: Some(node.into()),
            ports: vec![],
        }
    }

    fn directory() -> PodDirectory {
        let mut s = ClusterState::new();
        s.upsert_pod(pod("x", "a", "10.244.1.2", "n1"));
        s.upsert_pod(pod("y", "b", "10.244.2.3", "n2"));
        // A stale pod listing a reused IP does not name it.
        s.upsert_pod(pod("old", "gone", "10.244.1.9", "n1"));
        s.upsert_pod(pod("x", "c", "10.244.1.9", "n1"));
        PodDirectory::from_state(&s)
    }

    #[test]
    fn names_both_sides_and_the_direction_from_the_local_pod() {
        let d = directory();
        assert_eq!(d.len(), 3);
        let mut r = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.2.3", 0));
        d.enrich(&mut r, "n1");
        assert_eq!(r.node, "n1");
        assert_eq!(r.src_pod_ref(), Some(("x", "a")));
        assert_eq!(r.dst_pod_ref(), Some(("y", "b")));
        assert_eq!(r.dst_node.as_deref(), Some("n2"));
        assert_eq!(r.direction, Some(Direction::Egress));
        let mut r = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.2.3", 0));
        d.enrich(&mut r, "n2");
        assert_eq!(r.direction, Some(Direction::Ingress));
        // Both local: the destination's ingress; a source-given direction stays.
        let mut r = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.1.9", 0));
        d.enrich(&mut r, "n1");
        assert_eq!(r.direction, Some(Direction::Ingress));
        assert_eq!(
            r.dst_pod_ref(),
            Some(("x", "c")),
            "the owner of a reused IP"
        );
        let mut f = tcp_facts("10.244.1.2", "10.244.1.9", 0);
        f.direction = Some(Direction::Egress);
        let mut r = FlowRecord::from_facts(f);
        d.enrich(&mut r, "n1");
        assert_eq!(r.direction, Some(Direction::Egress));
    }

    #[test]
    fn a_policy_id_prefix_is_named_while_the_policy_exists() {
        let mut s = ClusterState::new();
        let long = "l".repeat(130);
        crate::testing::add_policy(
            &mut s,
            serde_json::json!({
                "metadata": {"namespace": "x", "name": long},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
            }),
        );
        let d = PodDirectory::from_state(&s);
        let mut f = tcp_facts("10.244.1.2", "10.244.1.9", 0);
        f.policy = Some(policy_id("x", &long));
        let mut r = FlowRecord::from_facts(f.clone());
        d.enrich(&mut r, "n1");
        assert_eq!(r.policy, Some(format!("x/{long}")));
        let mut r = FlowRecord::from_facts(f);
        PodDirectory::default().enrich(&mut r, "n1");
        assert_eq!(r.policy, Some(policy_id("x", &long)), "kept when unknown");
    }

    #[test]
    fn unknown_addresses_stay_unnamed() {
        let d = directory();
        let mut r = FlowRecord::from_facts(tcp_facts("192.168.0.1", "10.244.2.3", 0));
        assert!(d.is_pod_flow(&r));
        d.enrich(&mut r, "n1");
        assert_eq!(r.src_pod_ref(), None);
        assert_eq!(r.direction, None, "neither side is local to n1");
        let host = FlowRecord::from_facts(tcp_facts("192.168.0.1", "192.168.0.2", 0));
        assert!(!d.is_pod_flow(&host));
        let shared = SharedDirectory::new();
        assert!(shared.get().is_empty());
        shared.publish(d.clone());
        assert_eq!(*shared.get(), d);
    }
}
