//! What the enforcer knows of the cluster: pods, namespaces and policies, as the watches last
//! reported them.
//!
//! Watches of different resources arrive in no particular order, and a pod's deletion can
//! arrive after its IP was given to a new pod (kubelet reuses freed IPs). Each IP is therefore
//! *owned* by the pod that most recently gained it: an older pod still listed with the same IP
//! contributes nothing for that IP, so a stale pod can neither widen nor narrow the rules of
//! the pod that really holds the address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::model::{NamespaceInfo, PodInfo, Policy, PolicyProblem};

/// `(namespace, name)`.
pub type ObjectKey = (String, String);

/// A policy with the problems found while validating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The validated policy.
    pub policy: Policy,
    /// What was invalid in it (empty for a clean policy).
    pub problems: Vec<PolicyProblem>,
}

/// The enforcer's view of the cluster; `compile` turns it into a ruleset.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pods: BTreeMap<ObjectKey, PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<ObjectKey, PolicyEntry>,
    ip_owner: HashMap<IpAddr, ObjectKey>,
}

impl ClusterState {
    /// An empty state.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// Adds or updates a pod. IPs the pod did not have before become its own, even if an
    /// older pod still lists them.
    pub fn upsert_pod(&mut self, pod: PodInfo) {
        let key = (pod.namespace.clone(), pod.name.clone());
        let old_ips = self
            .pods
            .get(&key)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        for ip in old_ips.iter().filter(|ip| !pod.ips.contains(ip)) {
            self.release_ip(*ip, &key);
        }
        for ip in pod.ips.iter().filter(|ip| !old_ips.contains(ip)) {
            self.ip_owner.insert(*ip, key.clone());
        }
        self.pods.insert(key, pod);
    }

    /// Removes a pod (absent is fine); its IPs go back to any other pod listing them.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(pod) = self.pods.remove(&key) {
            for ip in pod.ips {
                self.release_ip(ip, &key);
            }
        }
    }

    fn release_ip(&mut self, ip: IpAddr, key: &ObjectKey) {
        if self.ip_owner.get(&ip) != Some(key) {
            return;
        }
        self.ip_owner.remove(&ip);
        let heir = self
            .pods
            .iter()
            .find(|(k, p)| *k != key && p.ips.contains(&ip))
            .map(|(k, _)| k.clone());
        if let Some(heir) = heir {
            self.ip_owner.insert(ip, heir);
        }
    }

    /// Replaces every pod (after a re-list).
    pub fn replace_pods(&mut self, pods: impl IntoIterator<Item = PodInfo>) {
        self.pods.clear();
        self.ip_owner.clear();
        for pod in pods {
            self.upsert_pod(pod);
        }
    }

    /// Adds or updates a namespace.
    pub fn upsert_namespace(&mut self, ns: NamespaceInfo) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    /// Removes a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Replaces every namespace (after a re-list).
    pub fn replace_namespaces(&mut self, namespaces: impl IntoIterator<Item = NamespaceInfo>) {
        self.namespaces = namespaces
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
    }

    /// Adds or updates a policy.
    pub fn upsert_policy(&mut self, policy: Policy, problems: Vec<PolicyProblem>) {
        let key = (policy.namespace.clone(), policy.name.clone());
        self.policies.insert(key, PolicyEntry { policy, problems });
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        self.policies
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Replaces every policy (after a re-list).
    pub fn replace_policies(&mut self, policies: impl IntoIterator<Item = PolicyEntry>) {
        self.policies = policies
            .into_iter()
            .map(|e| ((e.policy.namespace.clone(), e.policy.name.clone()), e))
            .collect();
    }

    /// Every pod, ordered by namespace and name.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    /// Every policy, ordered by namespace and name.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyEntry> {
        self.policies.values()
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceInfo> {
        self.namespaces.get(name)
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &NamespaceInfo> {
        self.namespaces.values()
    }

    /// The IPs of `pod` it really holds (see the module doc on IP reuse).
    pub fn owned_ips<'a>(&'a self, pod: &'a PodInfo) -> impl Iterator<Item = IpAddr> + 'a {
        pod.ips.iter().copied().filter(move |ip| {
            self.ip_owner
                .get(ip)
                .is_some_and(|(ns, name)| *ns == pod.namespace && *name == pod.name)
        })
    }

    /// Number of pods, namespaces and policies, for logs and metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.pods.len(), self.namespaces.len(), self.policies.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str) -> PodInfo {
        PodInfo {
            namespace: "x".into(),
            name: name.into(),
            labels: BTreeMap::new(),
            ips: vec![ip.parse().unwrap()],
            node: Some("n1".into()),
            ports: vec![],
        }
    }

    fn owned(s: &ClusterState, name: &str) -> Vec<IpAddr> {
        let p = s.pods().find(|p| p.name == name).unwrap();
        s.owned_ips(p).collect()
    }

    #[test]
    fn a_reused_ip_belongs_to_the_newest_pod() {
        let mut s = ClusterState::new();
        s.upsert_pod(pod("old", "10.0.0.5"));
        s.upsert_pod(pod("new", "10.0.0.5"));
        assert!(owned(&s, "old").is_empty(), "stale pod contributes nothing");
        assert_eq!(
            owned(&s, "new"),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        // An update of the stale pod (its deletion in progress) does not steal the IP back.
        s.upsert_pod(pod("old", "10.0.0.5"));
        assert!(owned(&s, "old").is_empty());
        s.remove_pod("x", "old");
        assert_eq!(
            owned(&s, "new").len(),
            1,
            "removing the stale pod keeps the owner"
        );
    }

    #[test]
    fn removing_the_owner_hands_the_ip_back() {
        let mut s = ClusterState::new();
        s.upsert_pod(pod("old", "10.0.0.5"));
        s.upsert_pod(pod("new", "10.0.0.5"));
        s.remove_pod("x", "new");
        assert_eq!(owned(&s, "old").len(), 1);
        // An IP change releases the old IP.
        s.upsert_pod(pod("old", "10.0.0.6"));
        assert_eq!(
            owned(&s, "old"),
            vec!["10.0.0.6".parse::<IpAddr>().unwrap()]
        );
        s.upsert_pod(pod("other", "10.0.0.5"));
        assert_eq!(owned(&s, "other").len(), 1);
        s.replace_pods(vec![pod("a", "10.0.0.7")]);
        assert_eq!(s.counts().0, 1);
        assert_eq!(owned(&s, "a").len(), 1);
    }
}
