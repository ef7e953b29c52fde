//! The node watch: kube's `watcher` (list, then watch from the list's resourceVersion,
//! re-list on `410 Gone`, bookmarks, bounded exponential backoff on errors) turned into lease
//! events.
//!
//! Every (re)list ends in a [`LeaseEvent::Snapshot`] of all flannel-managed nodes; after that,
//! each node change becomes `Added` / `Removed` by comparing the node's lease with the one last
//! reported for that node name. Comparing whole leases (subnets and attributes) catches what
//! upstream's update handler misses: a podCIDR change, and a change on the IPv4 side of a
//! dual-stack node. A podCIDR change is reported as `Removed(old)` then `Added(new)`, since the
//! subnet is the lease's identity.

use std::collections::BTreeMap;
use std::pin::pin;

use flannel_types::{AnnotationKeys, Lease, LeaseEvent};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::node::{NodeView, node_to_lease};
use crate::WatchEvent;

/// Turns Node objects into peer leases and remembers what was reported, per node name.
#[derive(Debug)]
pub struct NodeLeases {
    keys: AnnotationKeys,
    enable_ipv4: bool,
    enable_ipv6: bool,
    known: BTreeMap<String, Lease>,
    /// Nodes skipped for a problem, with the problem last logged (logged once per change).
    warned: BTreeMap<String, String>,
}

impl NodeLeases {
    /// An empty tracker for the given annotation keys and address families.
    pub fn new(keys: AnnotationKeys, enable_ipv4: bool, enable_ipv6: bool) -> NodeLeases {
        NodeLeases {
            keys,
            enable_ipv4,
            enable_ipv6,
            known: BTreeMap::new(),
            warned: BTreeMap::new(),
        }
    }

    /// The lease of a node, or `None` for a node flannel does not manage or cannot use (logged
    /// as upstream's `Error turning node %q to lease`).
    fn lease_of(&mut self, node: &NodeView<'_>) -> Option<Lease> {
        if !node.is_managed(&self.keys) {
            self.warned.remove(node.name);
            return None;
        }
        match node_to_lease(node, &self.keys, self.enable_ipv4, self.enable_ipv6) {
            Ok(l) => {
                self.warned.remove(node.name);
                Some(l)
            }
            Err(why) => {
                if self.warned.get(node.name) != Some(&why) {
                    warn!("Error turning node {:?} to lease: {why}", node.name);
                    self.warned.insert(node.name.to_string(), why);
                }
                None
            }
        }
    }

    /// The snapshot after a complete (re)list: replaces everything known.
    pub fn snapshot<'a>(&mut self, nodes: impl IntoIterator<Item = NodeView<'a>>) -> LeaseEvent {
        let mut next = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for n in nodes {
            seen.insert(n.name.to_string());
            if let Some(l) = self.lease_of(&n) {
                next.insert(n.name.to_string(), l);
            }
        }
        // Forget problems of nodes that no longer exist.
        self.warned.retain(|name, _| seen.contains(name));
        self.known = next;
        LeaseEvent::Snapshot(self.known.values().cloned().collect())
    }

    /// The events for a node that was added or modified.
    pub fn applied(&mut self, node: &NodeView<'_>) -> Vec<LeaseEvent> {
        let new = self.lease_of(node);
        let old = self.known.get(node.name).cloned();
        match (old, new) {
            (None, None) => Vec::new(),
            (None, Some(l)) => {
                self.known.insert(node.name.to_string(), l.clone());
                vec![LeaseEvent::Added(l)]
            }
            // Unmanaged now, or no longer usable: it must leave the peer set, exactly as a
            // re-list would drop it.
            (Some(o), None) => {
                self.known.remove(node.name);
                vec![LeaseEvent::Removed(o)]
            }
            (Some(o), Some(l)) if o == l => Vec::new(),
            (Some(o), Some(l)) => {
                self.known.insert(node.name.to_string(), l.clone());
                if o.key() != l.key() {
                    vec![LeaseEvent::Removed(o), LeaseEvent::Added(l)]
                } else {
                    vec![LeaseEvent::Added(l)]
                }
            }
        }
    }

    /// The events for a deleted node.
    pub fn deleted(&mut self, name: &str) -> Vec<LeaseEvent> {
        self.warned.remove(name);
        match self.known.remove(name) {
            Some(o) => vec![LeaseEvent::Removed(o)],
            None => Vec::new(),
        }
    }

    /// The leases currently known, by node name.
    pub fn known(&self) -> &BTreeMap<String, Lease> {
        &self.known
    }
}

/// Runs the watch until `tx`'s receiver is dropped.
pub async fn run(api: Api<Node>, mut leases: NodeLeases, tx: mpsc::Sender<WatchEvent>) {
    info!("Starting kube subnet manager");
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = pin!(stream);
    // Nodes of a (re)list in progress, buffered until InitDone so a half-done list never
    // removes peers.
    let mut listing: Option<Vec<Node>> = None;
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tx.closed() => return,
        };
        let Some(item) = next else {
            // The backoff wrapper never ends the stream; be safe anyway.
            warn!("node watch ended");
            return;
        };
        let events = match item {
            Err(e) => {
                warn!("watching nodes: {e}; retrying with backoff");
                continue;
            }
            Ok(Event::Init) => {
                debug!("listing nodes");
                listing = Some(Vec::new());
                continue;
            }
            Ok(Event::InitApply(node)) => {
                listing.get_or_insert_with(Vec::new).push(node);
                continue;
            }
            Ok(Event::InitDone) => {
                let nodes = listing.take().unwrap_or_default();
                let snap = leases.snapshot(nodes.iter().map(NodeView::of));
                if let LeaseEvent::Snapshot(l) = &snap {
                    info!(
                        "node list complete: {} nodes, {} flannel leases",
                        nodes.len(),
                        l.len()
                    );
                }
                vec![snap]
            }
            Ok(Event::Apply(node)) => leases.applied(&NodeView::of(&node)),
            Ok(Event::Delete(node)) => leases.deleted(node.metadata.name.as_deref().unwrap_or("")),
        };
        for ev in events {
            if tx.send(WatchEvent::Leases(ev)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N {
        name: String,
        ann: BTreeMap<String, String>,
        cidrs: Vec<String>,
    }

    impl N {
        fn view(&self) -> NodeView<'_> {
            NodeView {
                name: &self.name,
                annotations: &self.ann,
                pod_cidr: self.cidrs.first().map(String::as_str).unwrap_or(""),
                pod_cidrs: &self.cidrs,
            }
        }
    }

    fn node(name: &str, cidrs: &[&str], v4mac: &str, v6mac: &str) -> N {
        let k = AnnotationKeys::default();
        let ann = [
            (k.kube_subnet_manager.clone(), "true".to_string()),
            (k.backend_type.clone(), "vxlan".to_string()),
            (
                k.backend_data.clone(),
                format!(r#"{{"VNI":1,"VtepMAC":"{v4mac}"}}"#),
            ),
            (k.public_ip.clone(), "198.18.0.2".to_string()),
            (
                k.backend_v6_data.clone(),
                format!(r#"{{"VNI":1,"VtepMAC":"{v6mac}"}}"#),
            ),
            (k.public_ipv6.clone(), "fd00::2".to_string()),
        ]
        .into_iter()
        .collect();
        N {
            name: name.into(),
            ann,
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn snapshot_then_diffs_per_node_name() {
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
        let a = node(
            "a",
            &["10.0.1.0/24"],
            "aa:00:00:00:00:01",
            "aa:00:00:00:00:11",
        );
        let LeaseEvent::Snapshot(l) = t.snapshot([a.view()]) else {
            panic!()
        };
        assert_eq!(l.len(), 1);
        // The same node again: nothing.
        assert!(t.applied(&a.view()).is_empty());
        // podCIDR change: the old subnet is removed, the new one added.
        let a2 = node(
            "a",
            &["10.0.9.0/24"],
            "aa:00:00:00:00:01",
            "aa:00:00:00:00:11",
        );
        let ev = t.applied(&a2.view());
        assert!(
            matches!(&ev[..], [LeaseEvent::Removed(o), LeaseEvent::Added(n)]
                if o.subnet.unwrap().to_string() == "10.0.1.0/24" && n.subnet.unwrap().to_string() == "10.0.9.0/24"),
            "{ev:?}"
        );
        // Attribute change: one Added.
        let a3 = node(
            "a",
            &["10.0.9.0/24"],
            "aa:00:00:00:00:02",
            "aa:00:00:00:00:11",
        );
        assert!(matches!(&t.applied(&a3.view())[..], [LeaseEvent::Added(_)]));
        // Unmanaged now: removed.
        let mut a4 = node(
            "a",
            &["10.0.9.0/24"],
            "aa:00:00:00:00:02",
            "aa:00:00:00:00:11",
        );
        a4.ann.clear();
        assert!(matches!(
            &t.applied(&a4.view())[..],
            [LeaseEvent::Removed(_)]
        ));
        assert!(t.known().is_empty());
        assert!(t.deleted("a").is_empty());
        // A malformed node is skipped, and removed if it was known.
        assert_eq!(t.applied(&a3.view()).len(), 1);
        let mut bad = node("a", &["10.0.9.0/24"], "x", "y");
        bad.ann
            .insert(AnnotationKeys::default().backend_data, "{".into());
        assert!(matches!(
            &t.applied(&bad.view())[..],
            [LeaseEvent::Removed(_)]
        ));
        assert!(t.applied(&bad.view()).is_empty());
        // Deletion of a known node.
        assert_eq!(t.applied(&a3.view()).len(), 1);
        assert!(matches!(&t.deleted("a")[..], [LeaseEvent::Removed(_)]));
    }

    #[test]
    fn dual_stack_sees_v4_only_changes() {
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, true);
        let a = node(
            "a",
            &["10.0.1.0/24", "fd00:1::/64"],
            "aa:00:00:00:00:01",
            "aa:00:00:00:00:11",
        );
        t.snapshot([a.view()]);
        let b = node(
            "a",
            &["10.0.1.0/24", "fd00:1::/64"],
            "aa:00:00:00:00:02",
            "aa:00:00:00:00:11",
        );
        let ev = t.applied(&b.view());
        assert!(
            matches!(&ev[..], [LeaseEvent::Added(l)] if l.attrs.backend_data.as_ref().unwrap().as_str().contains("aa:00:00:00:00:02")),
            "{ev:?}"
        );
        // A snapshot replaces what is known: nodes missing from it are gone.
        let LeaseEvent::Snapshot(l) = t.snapshot([]) else {
            panic!()
        };
        assert!(l.is_empty() && t.known().is_empty());
    }
}
