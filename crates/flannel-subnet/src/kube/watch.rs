//! The node watch: a paginated list, then watches from the list's resourceVersion with
//! bookmarks, a re-list on `410 Gone`, bounded exponential backoff on errors (kube's and
//! client-go's watcher protocol), turned into lease events.
//!
//! Nodes are decoded as [`PeerNode`]s (name, podCIDRs, flannel annotations; the rest of the
//! object is skipped while parsing) and each one becomes a lease as soon as it arrives: a
//! (re)list is read in pages of [`LIST_PAGE_SIZE`] and never held as nodes, only as the leases
//! it yields. Watch events are framed and decoded straight from the response's body chunks
//! ([`super::lines`]).
//!
//! Every (re)list ends in a [`LeaseEvent::Snapshot`] of all flannel-managed nodes; after that,
//! each node change becomes `Added` / `Removed` by comparing the node's lease with the one last
//! reported for that node name. A change flannel does not read (a status heartbeat, conditions,
//! images, labels) yields the same lease and so no event. Comparing whole leases (subnets and
//! attributes) catches what upstream's update handler misses: a podCIDR change, and a change on
//! the IPv4 side of a dual-stack node. A podCIDR change is reported as `Removed(old)` then
//! `Added(new)`, since the subnet is the lease's identity.
//!
//! kube's `watcher` ran this protocol before; it is run here directly because its stream costs
//! per event (a line copy and UTF-8 pass, an idle-timeout timer set and cancelled, a backoff
//! rebuilt) were a third of flanneld's CPU while 5000 nodes sent status updates.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::time::Duration;

use flannel_types::{AnnotationKeys, Lease, LeaseEvent};
use futures::{AsyncBufRead, AsyncBufReadExt};
use kube::api::{ListParams, WatchParams};
use kube::core::{ObjectList, Request, WatchEvent as KubeWatchEvent};
use kube::{Client, Resource};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::event;
use super::lines::{LineTooLong, Lines};
use super::node::{NodeView, lease_unchanged, node_to_lease};
use super::peer::PeerNode;
use super::refusal::{Access, Refusal};
use crate::WatchEvent;

/// Nodes per list page (`limit`). A page's JSON text, read whole by the client, is the
/// largest transient buffer of a (re)list: about 1 MB at 100 real Nodes (8-10 KB each). With
/// client-go's 500, a process watching 5000 such nodes peaked 10 MiB higher (26 vs 16 MiB);
/// 50 requests per full list instead of 10 is nothing for the API server, and lists happen
/// only at start and after `410 Gone`.
pub const LIST_PAGE_SIZE: u32 = 100;

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

/// `timeoutSeconds` of each watch request, as kube's and client-go's watchers use; the server
/// ends the request then and the watch resumes from the last resourceVersion seen.
pub const WATCH_TIMEOUT_SECS: u32 = 290;

/// How long after `timeoutSeconds` a watch request is given up as dead (a server that stopped
/// sending without closing: no bookmark, no end), as kube's watcher does.
const WATCH_DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// The longest watch event gathered across body chunks (a Node is 5-20 KB; the API server
/// refuses objects over 1.5 MB).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Retry delays after a failed list or watch: doubling from the first to the last, as kube's
/// default watcher backoff (800 ms to 30 s).
const BACKOFF_FIRST: Duration = Duration::from_millis(800);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a list or watch request failed; logged, then retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum NodeWatchError {
    /// A request could not be built (a bad parameter; a bug rather than a server problem).
    #[error("building the {what} request: {source}")]
    Request {
        /// `list` or `watch`.
        what: &'static str,
        /// Why kube refused to build it.
        #[source]
        source: kube::core::request::Error,
    },
    /// The API server refused the list or the watch for our credentials or RBAC.
    #[error("{0}")]
    Refused(#[source] super::refusal::Refusal),
    /// The API server refused a list page or it could not be read.
    #[error("listing nodes: {0}")]
    List(#[source] kube::Error),
    /// The API server refused the watch request.
    #[error("watching nodes from resourceVersion {rv}: {source}")]
    Watch {
        /// The resourceVersion the watch was to start from.
        rv: String,
        /// The refusal (a `Status` from the server, or a connection error).
        #[source]
        source: kube::Error,
    },
    /// The watch response broke off.
    #[error("reading the node watch: {0}")]
    Read(#[source] std::io::Error),
    /// An event line that is not a watch event (the line's start is quoted).
    #[error("node watch event {start:?}... is not a watch event: {source}")]
    Decode {
        /// The first 80 bytes of the line.
        start: String,
        /// What did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// An event line that is not UTF-8 (JSON text always is).
    #[error("node watch event {start:?}... is not UTF-8: {source}")]
    Utf8 {
        /// The first 80 bytes of the line, invalid ones replaced.
        start: String,
        /// Where the text stopped being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },
    /// The server reported an error in the stream (other than `410 Gone`).
    #[error("node watch error from the API server: {0}")]
    Status(String),
    /// An event without end.
    #[error(transparent)]
    TooLong(#[from] LineTooLong),
    /// The watch ended right after it started, without an event.
    #[error("the node watch from resourceVersion {0} ended at once without an event")]
    EndedAtOnce(String),
}

/// How one watch request ended.
#[derive(Debug)]
enum WatchEnd {
    /// Resume from this resourceVersion.
    Resume(String),
    /// The resourceVersion is too old (`410 Gone`): list again.
    Expired,
}

/// What stops the loop: the receiver of the events is gone.
struct Closed;

/// Exponential retry delay, reset by success.
#[derive(Debug, Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The delay before the next retry.
    fn delay(&mut self) -> Duration {
        let d = self.next.unwrap_or(BACKOFF_FIRST);
        self.next = Some(d.saturating_mul(2).min(BACKOFF_MAX));
        d
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

/// Runs the watch until `tx`'s receiver is dropped: a paginated list, then watches from the
/// list's resourceVersion (bookmarks keep it recent), resumed after each `timeoutSeconds`; a
/// `410 Gone` leads to a re-list, any other failure to a retry with backoff.
///
/// This is kube's watcher protocol, run here over [`kube::Client`] (same connection, TLS,
/// credentials) so that events are framed and decoded straight from the body's chunks: see
/// [`super::lines`].
pub async fn run(client: Client, leases: NodeLeases, tx: mpsc::Sender<WatchEvent>) {
    info!("Starting kube subnet manager");
    let mut w = Watch {
        client,
        leases,
        tx,
        listed: 0,
    };
    let mut rv: Option<String> = None;
    let mut backoff = Backoff::default();
    loop {
        let step = match rv.take() {
            None => w.list().await.map(|r| r.map(WatchEnd::Resume)),
            Some(from) => w.watch(from).await,
        };
        match step {
            Ok(Ok(WatchEnd::Resume(next))) => {
                backoff.reset();
                rv = Some(next);
            }
            Ok(Ok(WatchEnd::Expired)) => {
                info!("node watch: resourceVersion too old (410 Gone), listing again");
                backoff.reset();
            }
            Ok(Err((e, resume))) => {
                warn!("watching nodes: {e}; retrying with backoff");
                rv = resume;
                let delay = backoff.delay();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = w.tx.closed() => return,
                }
            }
            Err(Closed) => return,
        }
    }
}

/// A failure and where to resume after it (`None`: list again).
type Failed = (NodeWatchError, Option<String>);

/// The watch loop's state: the client, the leases and where they go.
struct Watch {
    client: Client,
    leases: NodeLeases,
    tx: mpsc::Sender<WatchEvent>,
    /// Nodes seen by the (re)list in progress, for the log line at its end.
    listed: usize,
}

impl Watch {
    /// Lists all nodes page by page into the leases, sends the snapshot, and returns the
    /// list's resourceVersion.
    async fn list(&mut self) -> Result<Result<String, Failed>, Closed> {
        debug!("listing nodes");
        self.leases.list_started();
        self.listed = 0;
        let mut cont: Option<String> = None;
        let rv = loop {
            let mut lp = ListParams::default().limit(LIST_PAGE_SIZE);
            lp.continue_token = cont.take();
            let req = match Request::new(PeerNode::url_path(&(), None)).list(&lp) {
                Ok(r) => r,
                Err(source) => return Ok(Err((request_error("list", source), None))),
            };
            let page: ObjectList<PeerNode> = tokio::select! {
                r = self.client.request(req) => match r {
                    Ok(p) => p,
                    Err(e) => return Ok(Err((refused_or(LIST, e, NodeWatchError::List), None))),
                },
                () = self.tx.closed() => return Err(Closed),
            };
            for node in &page.items {
                self.leases.listed(&NodeView::of_peer(node));
                self.listed += 1;
            }
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => cont = Some(c),
                _ => break page.metadata.resource_version.unwrap_or_default(),
            }
        };
        let snap = self.leases.list_done();
        if let LeaseEvent::Snapshot(l) = &snap {
            info!(
                "node list complete: {} nodes, {} flannel leases",
                self.listed,
                l.len()
            );
        }
        self.send(vec![snap]).await?;
        Ok(Ok(rv))
    }

    /// One watch request from `rv`, read to its end.
    async fn watch(&mut self, rv: String) -> Result<Result<WatchEnd, Failed>, Closed> {
        let wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        let mut req = match Request::new(PeerNode::url_path(&(), None)).watch(&wp, &rv) {
            Ok(r) => r,
            Err(source) => return Ok(Err((request_error("watch", source), Some(rv)))),
        };
        // Events are read as they come; a compressed stream would have to be inflated first.
        req.headers_mut().insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        let body = tokio::select! {
            r = self.client.request_stream(req) => r,
            () = self.tx.closed() => return Err(Closed),
        };
        let body = match body {
            Ok(b) => b,
            Err(kube::Error::Api(s)) if s.code == 410 => return Ok(Ok(WatchEnd::Expired)),
            Err(source) => {
                let e = refused_or(WATCH, source, |source| NodeWatchError::Watch {
                    rv: rv.clone(),
                    source,
                });
                return Ok(Err((e, Some(rv))));
            }
        };
        let mut body = pin!(body);
        let deadline = tokio::time::sleep(
            Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + WATCH_DEADLINE_MARGIN,
        );
        let mut deadline = pin!(deadline);
        let mut stream = EventStream::new(rv);
        // One wait for the daemon to go, for the whole request: a new `closed()` per chunk
        // would register and remove a waiter (two mutex locks) for every event.
        let tx = self.tx.clone();
        let mut closed = pin!(tx.closed());
        loop {
            let chunk = tokio::select! {
                r = body.fill_buf() => r,
                () = &mut deadline => break,
                () = &mut closed => return Err(Closed),
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(Err(stream.failed(NodeWatchError::Read(e)))),
            };
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            let mut events = Vec::new();
            let fed = stream.feed(chunk, &mut self.leases, &mut events);
            body.as_mut().consume(n);
            self.send(events).await?;
            match fed {
                Ok(None) => {}
                Ok(Some(end)) => return Ok(Ok(end)),
                Err(e) => return Ok(Err(stream.failed(e))),
            }
        }
        Ok(stream.ended())
    }

    /// Sends lease events to the daemon.
    async fn send(&self, events: Vec<LeaseEvent>) -> Result<(), Closed> {
        for ev in events {
            self.tx
                .send(WatchEvent::Leases(ev))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// What the node list and watch ask of RBAC.
const LIST: Access = Access::new("list", "nodes");
const WATCH: Access = Access::new("watch", "nodes");

/// A 401 or 403 as [`NodeWatchError::Refused`], any other failure as `other` makes it.
fn refused_or(
    access: Access,
    e: kube::Error,
    other: impl FnOnce(kube::Error) -> NodeWatchError,
) -> NodeWatchError {
    match Refusal::of(access, &e) {
        Some(r) => NodeWatchError::Refused(r),
        None => other(e),
    }
}

fn request_error(what: &'static str, source: kube::core::request::Error) -> NodeWatchError {
    NodeWatchError::Request { what, source }
}

/// The decoding side of one watch request: framing, the resourceVersion to resume from, and
/// whether any event arrived.
struct EventStream {
    lines: Lines,
    /// Reused by the event decoder ([`event::decode`]).
    scratch: Vec<u8>,
    rv: String,
    events: u64,
}

impl EventStream {
    fn new(rv: String) -> EventStream {
        EventStream {
            lines: Lines::new(MAX_EVENT_BYTES),
            scratch: Vec::new(),
            rv,
            events: 0,
        }
    }

    /// Decodes the events a chunk completes into lease events; `Some` when the stream says
    /// the watch must end (`410 Gone`).
    fn feed(
        &mut self,
        chunk: &[u8],
        leases: &mut NodeLeases,
        out: &mut Vec<LeaseEvent>,
    ) -> Result<Option<WatchEnd>, NodeWatchError> {
        let mut end = None;
        let rv = &mut self.rv;
        let scratch = &mut self.scratch;
        let events = &mut self.events;
        self.lines.feed(chunk, |line| {
            if end.is_some() {
                return Ok(());
            }
            *events += 1;
            end = apply_line(line, scratch, rv, leases, out)?;
            Ok::<(), NodeWatchError>(())
        })?;
        Ok(end)
    }

    /// The failure, with where to resume: from the last resourceVersion seen.
    fn failed(&self, e: NodeWatchError) -> Failed {
        (e, Some(self.rv.clone()))
    }

    /// The body ended (the server's `timeoutSeconds`, or our deadline): resume, unless the
    /// request ended without a single event or bookmark, which is retried with backoff so a
    /// server that closes every watch at once is not asked again in a tight loop.
    fn ended(self) -> Result<WatchEnd, Failed> {
        if self.events == 0 {
            let e = NodeWatchError::EndedAtOnce(self.rv.clone());
            return Err((e, Some(self.rv)));
        }
        if self.lines.pending() > 0 {
            debug!(
                "node watch ended inside an event ({} bytes dropped); resuming from {}",
                self.lines.pending(),
                self.rv
            );
        }
        Ok(WatchEnd::Resume(self.rv))
    }
}

/// Applies one event line: node changes to `leases` (lease events into `out`), bookmarks and
/// objects move `rv`; `Some(Expired)` for a `410 Gone` error event.
fn apply_line(
    line: &[u8],
    scratch: &mut Vec<u8>,
    rv: &mut String,
    leases: &mut NodeLeases,
    out: &mut Vec<LeaseEvent>,
) -> Result<Option<WatchEnd>, NodeWatchError> {
    let ev = event::decode(line, scratch)?;
    let mut moved = |node: &PeerNode| {
        if let Some(v) = &node.metadata.resource_version {
            v.clone_into(rv);
        }
    };
    match ev {
        KubeWatchEvent::Added(node) | KubeWatchEvent::Modified(node) => {
            moved(&node);
            out.extend(leases.applied(&NodeView::of_peer(&node)));
        }
        KubeWatchEvent::Deleted(node) => {
            moved(&node);
            out.extend(leases.deleted(node.name()));
        }
        KubeWatchEvent::Bookmark(b) => b.metadata.resource_version.clone_into(rv),
        KubeWatchEvent::Error(s) if s.code == 410 => return Ok(Some(WatchEnd::Expired)),
        KubeWatchEvent::Error(s) => {
            return Err(NodeWatchError::Status(format!(
                "{} ({}, code {})",
                s.message, s.reason, s.code
            )));
        }
    }
    Ok(None)
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

    /// A watch event line for node `name` with VtepMAC `mac` at resourceVersion `rv`.
    fn event(kind: &str, name: &str, mac: &str, rv: u32) -> String {
        serde_json::json!({
            "type": kind,
            "object": {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "resourceVersion": rv.to_string(),
                    "annotations": {
                        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                        "flannel.alpha.coreos.com/backend-type": "vxlan",
                        "flannel.alpha.coreos.com/backend-data":
                            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
                        "flannel.alpha.coreos.com/public-ip": "198.18.0.2",
                        "node.alpha.kubernetes.io/ttl": "0"
                    }
                },
                "spec": { "podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"] },
                "status": { "conditions": [{ "type": "Ready", "status": "True" }] }
            }
        })
        .to_string()
    }

    #[test]
    fn event_lines_move_the_resource_version_and_the_leases() {
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
        t.snapshot([]);
        let (mut rv, mut out) = (String::from("1"), Vec::new());
        let added = event("ADDED", "a", "aa:00:00:00:00:01", 7);
        assert!(matches!(
            apply_line(added.as_bytes(), &mut Vec::new(), &mut rv, &mut t, &mut out),
            Ok(None)
        ));
        assert_eq!(rv, "7");
        assert!(
            matches!(&out[..], [LeaseEvent::Added(l)] if l.subnet.unwrap().to_string() == "10.0.1.0/24")
        );
        // A heartbeat: same lease, no event, but the resourceVersion moves.
        out.clear();
        let beat = event("MODIFIED", "a", "aa:00:00:00:00:01", 9);
        apply_line(beat.as_bytes(), &mut Vec::new(), &mut rv, &mut t, &mut out).unwrap();
        assert_eq!((rv.as_str(), out.len()), ("9", 0));
        let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"12"}}}"#;
        apply_line(
            bookmark.as_bytes(),
            &mut Vec::new(),
            &mut rv,
            &mut t,
            &mut out,
        )
        .unwrap();
        assert_eq!((rv.as_str(), out.len()), ("12", 0));
        let deleted = event("DELETED", "a", "aa:00:00:00:00:01", 13);
        apply_line(
            deleted.as_bytes(),
            &mut Vec::new(),
            &mut rv,
            &mut t,
            &mut out,
        )
        .unwrap();
        assert!(matches!(&out[..], [LeaseEvent::Removed(_)]));
        assert_eq!(rv, "13");
    }

    #[test]
    fn error_events_end_or_fail_the_watch_and_garbage_is_named() {
        let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
        let (mut rv, mut out) = (String::from("5"), Vec::new());
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5 (80)","reason":"Expired","code":410}}"#;
        assert!(matches!(
            apply_line(gone.as_bytes(), &mut Vec::new(), &mut rv, &mut t, &mut out),
            Ok(Some(WatchEnd::Expired))
        ));
        let other = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcd unavailable","reason":"InternalError","code":500}}"#;
        let e =
            apply_line(other.as_bytes(), &mut Vec::new(), &mut rv, &mut t, &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node watch error from the API server: etcd unavailable (InternalError, code 500)"
        );
        let e = apply_line(
            b"<html>proxy error</html>",
            &mut Vec::new(),
            &mut rv,
            &mut t,
            &mut out,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                r#"node watch event "<html>proxy error</html>"... is not a watch event: "#
            ),
            "{e}"
        );
        let e = apply_line(
            b"{\"type\":\"ADDED\xff",
            &mut Vec::new(),
            &mut rv,
            &mut t,
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(e, NodeWatchError::Utf8 { .. }), "{e}");
        assert_eq!(rv, "5", "failures do not move the resourceVersion");
        assert!(out.is_empty());
    }

    #[test]
    fn a_stream_split_anywhere_gives_the_same_leases_and_ends_where_it_stopped() {
        let text = [
            event("ADDED", "a", "aa:00:00:00:00:01", 2),
            event("MODIFIED", "a", "aa:00:00:00:00:01", 3),
            event("MODIFIED", "a", "aa:00:00:00:00:02", 4),
        ]
        .join("\n")
            + "\n";
        let bytes = text.as_bytes();
        for cut in (0..bytes.len()).step_by(97) {
            let mut t = NodeLeases::new(AnnotationKeys::default(), true, false);
            t.snapshot([]);
            let mut s = EventStream::new("1".into());
            let mut out = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                assert!(s.feed(part, &mut t, &mut out).unwrap().is_none());
            }
            // Added, then the VtepMAC change; the heartbeat in between gives nothing.
            assert_eq!(out.len(), 2, "cut at {cut}");
            assert!(matches!(s.ended(), Ok(WatchEnd::Resume(rv)) if rv == "4"));
        }
        // A request that ends without any event is a failure (retried with backoff), resumed
        // from where it started.
        let s = EventStream::new("8".into());
        let Err((e, resume)) = s.ended() else {
            panic!("an empty watch must not count as progress")
        };
        assert!(matches!(e, NodeWatchError::EndedAtOnce(_)));
        assert_eq!(resume.as_deref(), Some("8"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..8).map(|_| b.delay().as_millis() as u64).collect();
        assert_eq!(got, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        b.reset();
        assert_eq!(b.delay(), BACKOFF_FIRST);
    }
}
