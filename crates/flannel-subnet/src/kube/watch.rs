//! The node watch: kube's `watcher` (paginated list, then watch from the list's resourceVersion
//! with bookmarks, re-list on `410 Gone`, bounded exponential backoff on errors) turned into
//! lease events.
//!
//! Nodes are decoded as [`PeerNode`]s (name, podCIDRs, flannel annotations; the rest of the
//! object is skipped while parsing) and each one becomes a lease as soon as it arrives: a
//! (re)list is read in pages of [`LIST_PAGE_SIZE`] and never held as nodes, only as the leases
//! it yields.
//!
//! Every (re)list ends in a [`LeaseEvent::Snapshot`] of all flannel-managed nodes; after that,
//! each node change becomes `Added` / `Removed` by comparing the node's lease with the one last
//! reported for that node name. A change flannel does not read (a status heartbeat, conditions,
//! images, labels) yields the same lease and so no event. Comparing whole leases (subnets and
//! attributes) catches what upstream's update handler misses: a podCIDR change, and a change on
//! the IPv4 side of a dual-stack node. A podCIDR change is reported as `Removed(old)` then
//! `Added(new)`, since the subnet is the lease's identity.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;

use flannel_types::{AnnotationKeys, Lease, LeaseEvent};
use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::node::{NodeView, lease_unchanged, node_to_lease};
use super::peer::PeerNode;
use crate::WatchEvent;

/// Nodes per list page (`limit`). A page's JSON text, read whole by the client, is the
/// largest transient buffer of a (re)list: about 1 MB at 100 real Nodes (8-10 KB each). With
/// client-go's 500, a process watching 5000 such nodes peaked 10 MiB higher (26 vs 16 MiB);
/// 50 requests per full list instead of 10 is nothing for the API server, and lists happen
/// only at start and after `410 Gone`.
pub const LIST_PAGE_SIZE: u32 = 100;

/// The watcher's configuration: paginated list, bookmarks so a resumed watch starts from a
/// recent resourceVersion instead of re-listing.
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// Turns Node objects into peer leases and remembers what was reported, per node name.
#[derive(Debug)]
pub struct NodeLeases {
    keys: AnnotationKeys,
    enable_ipv4: bool,
    enable_ipv6: bool,
    known: BTreeMap<String, Lease>,
    /// Nodes skipped for a problem, with the problem last logged (logged once per change).
    warned: BTreeMap<String, String>,
    /// While a (re)list is in progress: the nodes listed so far that have a logged problem,
    /// so problems of nodes that are gone are forgotten when the list completes.
    listing: Option<BTreeSet<String>>,
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
            listing: None,
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

    /// A (re)list starts: what was known is dropped (the daemon keeps what it programmed, and
    /// the snapshot at the end is diffed against that), so a re-list never holds two copies.
    pub fn list_started(&mut self) {
        self.known.clear();
        self.listing = Some(BTreeSet::new());
    }

    /// One node of the list in progress: its lease is kept, the node itself is not.
    pub fn listed(&mut self, node: &NodeView<'_>) {
        let lease = self.lease_of(node);
        let listing = self.listing.get_or_insert_with(BTreeSet::new);
        if self.warned.contains_key(node.name) {
            listing.insert(node.name.to_string());
        }
        match lease {
            Some(l) => self.known.insert(node.name.to_string(), l),
            None => self.known.remove(node.name),
        };
    }

    /// The list is complete: the snapshot of every lease listed.
    pub fn list_done(&mut self) -> LeaseEvent {
        let still_warned = self.listing.take().unwrap_or_default();
        // Forget problems of nodes that no longer exist.
        self.warned.retain(|name, _| still_warned.contains(name));
        LeaseEvent::Snapshot(self.known.values().cloned().collect())
    }

    /// The snapshot of a complete list given at once (tests; the watch feeds nodes one by one).
    pub fn snapshot<'a>(&mut self, nodes: impl IntoIterator<Item = NodeView<'a>>) -> LeaseEvent {
        self.list_started();
        for n in nodes {
            self.listed(&n);
        }
        self.list_done()
    }

    /// The events for a node that was added or modified; none when nothing flannel reads
    /// changed (the known lease is neither cloned nor replaced then).
    pub fn applied(&mut self, node: &NodeView<'_>) -> Vec<LeaseEvent> {
        if let Some(old) = self.known.get(node.name)
            && lease_unchanged(node, &self.keys, self.enable_ipv4, self.enable_ipv6, old)
        {
            return Vec::new();
        }
        let new = self.lease_of(node);
        let Some(old) = self.known.get_mut(node.name) else {
            return match new {
                None => Vec::new(),
                Some(l) => {
                    self.known.insert(node.name.to_string(), l.clone());
                    vec![LeaseEvent::Added(l)]
                }
            };
        };
        match new {
            Some(l) if *old == l => Vec::new(),
            Some(l) => {
                let o = std::mem::replace(old, l.clone());
                if o.key() != l.key() {
                    vec![LeaseEvent::Removed(o), LeaseEvent::Added(l)]
                } else {
                    vec![LeaseEvent::Added(l)]
                }
            }
            // Unmanaged now, or no longer usable: it must leave the peer set, exactly as a
            // re-list would drop it.
            None => match self.known.remove(node.name) {
                Some(o) => vec![LeaseEvent::Removed(o)],
                None => Vec::new(),
            },
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
pub async fn run(api: Api<PeerNode>, leases: NodeLeases, tx: mpsc::Sender<WatchEvent>) {
    info!("Starting kube subnet manager");
    let stream = watcher::watcher(api, watcher_config()).default_backoff();
    let mut w = Watch {
        leases,
        tx,
        listed: 0,
    };
    let mut stream = pin!(stream);
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = w.tx.closed() => return,
        };
        if !w.handle(next).await {
            return;
        }
    }
}

/// The watch loop's state: the leases and where they go.
struct Watch {
    leases: NodeLeases,
    tx: mpsc::Sender<WatchEvent>,
    /// Nodes seen by the (re)list in progress, for the log line at its end.
    listed: usize,
}

impl Watch {
    /// Handles one item of the watcher's stream; false when the watch must end.
    async fn handle(&mut self, next: Option<Result<Event<PeerNode>, watcher::Error>>) -> bool {
        let Some(item) = next else {
            // The backoff wrapper never ends the stream; be safe anyway.
            warn!("node watch ended");
            return false;
        };
        let events = match item {
            Err(e) => {
                warn!("watching nodes: {e}; retrying with backoff");
                return true;
            }
            Ok(Event::Init) => {
                debug!("listing nodes");
                self.leases.list_started();
                self.listed = 0;
                return true;
            }
            Ok(Event::InitApply(node)) => {
                self.leases.listed(&NodeView::of_peer(&node));
                self.listed += 1;
                return true;
            }
            Ok(Event::InitDone) => {
                let snap = self.leases.list_done();
                if let LeaseEvent::Snapshot(l) = &snap {
                    info!(
                        "node list complete: {} nodes, {} flannel leases",
                        self.listed,
                        l.len()
                    );
                }
                vec![snap]
            }
            Ok(Event::Apply(node)) => self.leases.applied(&NodeView::of_peer(&node)),
            Ok(Event::Delete(node)) => self.leases.deleted(node.name()),
        };
        for ev in events {
            if self.tx.send(WatchEvent::Leases(ev)).await.is_err() {
                return false;
            }
        }
        true
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

    /// Node `a`, managed, with one IPv4 podCIDR.
    fn node_a() -> N {
        node(
            "a",
            &["10.0.1.0/24"],
            "aa:00:00:00:00:01",
            "aa:00:00:00:00:11",
        )
    }

    #[test]
    fn snapshot_then_diffs_per_node_name() {
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
        let a = node_a();
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

    /// A status heartbeat (and any other change flannel does not read) yields no event, and
    /// leaves the known lease as it was.
    #[test]
    fn heartbeats_and_foreign_changes_yield_nothing() {
        use crate::kube::peer::tests::full_node;
        let decode =
            |v: &serde_json::Value| -> PeerNode { serde_json::from_value(v.clone()).unwrap() };
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
        let mut v = full_node("w1");
        let LeaseEvent::Snapshot(l) = t.snapshot([NodeView::of_peer(&decode(&v))]) else {
            panic!()
        };
        assert_eq!(l.len(), 1);
        let before = t.known().clone();
        for round in 0..5 {
            v["metadata"]["resourceVersion"] = format!("{}", 200 + round).into();
            v["status"]["conditions"][0]["lastHeartbeatTime"] =
                format!("2026-01-01T00:0{round}:00Z").into();
            v["status"]["images"][0]["sizeBytes"] = round.into();
            v["metadata"]["labels"]["example.com/label-1"] = format!("v{round}").into();
            v["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] =
                format!("{round}").into();
            v["metadata"]["managedFields"][0]["time"] =
                format!("2026-01-02T00:0{round}:00Z").into();
            v["status"]["addresses"][0]["address"] = format!("198.18.9.{round}").into();
            let n = decode(&v);
            // Decided by the allocation-free fast path.
            assert!(lease_unchanged(
                &NodeView::of_peer(&n),
                &t.keys,
                true,
                false,
                &t.known()["w1"]
            ));
            let ev = t.applied(&NodeView::of_peer(&n));
            assert!(ev.is_empty(), "round {round}: {ev:?}");
        }
        assert_eq!(t.known(), &before);
        // A flannel annotation change is still seen through the same decoder.
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"] =
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:99"}"#.into();
        let ev = t.applied(&NodeView::of_peer(&decode(&v)));
        assert!(matches!(&ev[..], [LeaseEvent::Added(_)]), "{ev:?}");
        // So is a podCIDR change.
        v["spec"]["podCIDRs"] = serde_json::json!(["10.244.7.0/24"]);
        v["spec"]["podCIDR"] = "10.244.7.0/24".into();
        let ev = t.applied(&NodeView::of_peer(&decode(&v)));
        assert!(
            matches!(&ev[..], [LeaseEvent::Removed(_), LeaseEvent::Added(_)]),
            "{ev:?}"
        );
    }

    /// A re-list that fails part-way and starts over ends in one snapshot of the second list
    /// only; problems of nodes that are gone are forgotten.
    #[test]
    fn relist_restarts_from_scratch() {
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
        let a = node_a();
        let b = node(
            "b",
            &["10.0.2.0/24"],
            "aa:00:00:00:00:02",
            "aa:00:00:00:00:12",
        );
        let mut bad = node("bad", &["10.0.3.0/24"], "x", "y");
        bad.ann
            .insert(AnnotationKeys::default().backend_data, "{".into());
        t.snapshot([a.view(), b.view(), bad.view()]);
        assert_eq!(t.known().len(), 2);
        assert!(t.warned.contains_key("bad"));
        t.list_started();
        t.listed(&a.view());
        // The list fails; the watcher starts over.
        t.list_started();
        t.listed(&b.view());
        let LeaseEvent::Snapshot(l) = t.list_done() else {
            panic!()
        };
        assert_eq!(l.len(), 1);
        assert_eq!(t.known().keys().collect::<Vec<_>>(), ["b"]);
        assert!(t.warned.is_empty());
    }
}
