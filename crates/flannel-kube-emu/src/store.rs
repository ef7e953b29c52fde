//! The in-memory object store: Namespaces, Nodes and Pods, one global resourceVersion counter
//! (like etcd's revision), a bounded history of changes for watches, and the write path every
//! kind shares (preconditions, no-op detection, events); what differs per kind lives in
//! [`crate::strategy`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::patch::{merge_patch, strategic_merge_patch};
use crate::selector::Selector;
use crate::status::ApiError;
use crate::strategy::{self, IMMORTAL_NAMESPACES, INITIAL_NAMESPACES};

/// The object kinds the emulator serves: the core group's (`v1`), the `apps` group's
/// (`apps/v1`), the `networking.k8s.io` group's (`networking.k8s.io/v1`) and the
/// `rbac.authorization.k8s.io` group's (`rbac.authorization.k8s.io/v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/ConfigMap`, namespaced, resource `configmaps`; no status.
    ConfigMap,
    /// `v1/Namespace`, cluster-scoped, resource `namespaces`.
    Namespace,
    /// `v1/Node`, cluster-scoped, resource `nodes`.
    Node,
    /// `v1/Pod`, namespaced, resource `pods`.
    Pod,
    /// `apps/v1/DaemonSet`, namespaced, resource `daemonsets`.
    DaemonSet,
    /// `networking.k8s.io/v1/NetworkPolicy`, namespaced, resource `networkpolicies`; no status.
    NetworkPolicy,
    /// `v1/ServiceAccount`, namespaced, resource `serviceaccounts`; no status; subresource
    /// `token` (TokenRequest).
    ServiceAccount,
    /// `rbac.authorization.k8s.io/v1/ClusterRole`, cluster-scoped; no status.
    ClusterRole,
    /// `rbac.authorization.k8s.io/v1/ClusterRoleBinding`, cluster-scoped; no status.
    ClusterRoleBinding,
    /// `rbac.authorization.k8s.io/v1/Role`, namespaced; no status.
    Role,
    /// `rbac.authorization.k8s.io/v1/RoleBinding`, namespaced; no status.
    RoleBinding,
}

impl Kind {
    /// Every kind, in the order discovery lists them (per group, by resource name, as the API
    /// server does; the core group first).
    pub const ALL: [Kind; 11] = [
        Kind::ConfigMap,
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::ServiceAccount,
        Kind::DaemonSet,
        Kind::NetworkPolicy,
        Kind::ClusterRoleBinding,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::Role,
    ];

    /// The kind name (`Node`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::DaemonSet => "DaemonSet",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
        }
    }

    /// The API group (`""` for the core group, `apps`, `networking.k8s.io`).
    pub fn group(self) -> &'static str {
        match self {
            Kind::DaemonSet => "apps",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::Role | Kind::RoleBinding => {
                "rbac.authorization.k8s.io"
            }
            Kind::ConfigMap | Kind::Namespace | Kind::Node | Kind::Pod | Kind::ServiceAccount => "",
        }
    }

    /// The `apiVersion` objects of this kind carry (`v1`, `apps/v1`, `networking.k8s.io/v1`).
    pub fn api_version(self) -> &'static str {
        match self.group() {
            "apps" => "apps/v1",
            "networking.k8s.io" => "networking.k8s.io/v1",
            "rbac.authorization.k8s.io" => "rbac.authorization.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The resource name (`nodes`), as used in paths.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::DaemonSet => "daemonsets",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
        }
    }

    /// The resource as error messages name it: qualified by its group outside the core group
    /// (`daemonsets.apps "x" not found`), as the API server words it.
    pub fn qualified_resource(self) -> &'static str {
        match self {
            Kind::DaemonSet => "daemonsets.apps",
            Kind::NetworkPolicy => "networkpolicies.networking.k8s.io",
            Kind::ClusterRole => "clusterroles.rbac.authorization.k8s.io",
            Kind::ClusterRoleBinding => "clusterrolebindings.rbac.authorization.k8s.io",
            Kind::Role => "roles.rbac.authorization.k8s.io",
            Kind::RoleBinding => "rolebindings.rbac.authorization.k8s.io",
            other => other.resource(),
        }
    }

    /// The kind as validation errors name it (`DaemonSet.apps "x" is invalid`).
    pub fn qualified_name(self) -> &'static str {
        match self {
            Kind::DaemonSet => "DaemonSet.apps",
            Kind::NetworkPolicy => "NetworkPolicy.networking.k8s.io",
            Kind::ClusterRole => "ClusterRole.rbac.authorization.k8s.io",
            Kind::ClusterRoleBinding => "ClusterRoleBinding.rbac.authorization.k8s.io",
            Kind::Role => "Role.rbac.authorization.k8s.io",
            Kind::RoleBinding => "RoleBinding.rbac.authorization.k8s.io",
            other => other.name(),
        }
    }

    /// The singular resource name (`node`), which kubectl accepts as well.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Namespace => "namespace",
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::DaemonSet => "daemonset",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::ServiceAccount => "serviceaccount",
            Kind::ClusterRole => "clusterrole",
            Kind::ClusterRoleBinding => "clusterrolebinding",
            Kind::Role => "role",
            Kind::RoleBinding => "rolebinding",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::ClusterRole | Kind::ClusterRoleBinding
        )
    }

    /// Whether the kind has a `status` (and so a `status` subresource); a ConfigMap, a
    /// NetworkPolicy, a ServiceAccount and the RBAC kinds have none.
    pub fn has_status(self) -> bool {
        matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::DaemonSet
        )
    }

    /// The short names discovery announces (`kubectl get no`).
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::ConfigMap => &["cm"],
            Kind::Namespace => &["ns"],
            Kind::Node => &["no"],
            Kind::Pod => &["po"],
            Kind::DaemonSet => &["ds"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::ServiceAccount => &["sa"],
            Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::Role | Kind::RoleBinding => &[],
        }
    }

    /// The categories discovery announces (`kubectl get all` lists the kinds in `all`).
    pub fn categories(self) -> &'static [&'static str] {
        match self {
            Kind::Pod | Kind::DaemonSet => &["all"],
            _ => &[],
        }
    }
}

/// Watch event types; `BOOKMARK` and `ERROR` exist only on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history and broadcast to open watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The resourceVersion the change created.
    pub rv: u64,
    /// Which kind of object changed.
    pub kind: Kind,
    /// The namespace (pods), empty for cluster-scoped kinds.
    pub namespace: String,
    /// What happened.
    pub event: EventType,
    /// The object after the change (for `DELETED`: its last state, with the deletion's RV).
    pub object: Value,
    /// For `MODIFIED`, the object before the change: a watch with a selector turns a change
    /// that moves an object into (out of) the selection into `ADDED` (`DELETED`), as the
    /// watch cache does.
    pub prev: Option<Value>,
}

impl Change {
    /// The event a watch filtered by `matches` sees for this change, if any.
    pub fn filtered(&self, matches: impl Fn(&Value) -> bool) -> Option<EventType> {
        match (self.event, &self.prev) {
            (EventType::Modified, Some(prev)) => match (matches(prev), matches(&self.object)) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
            (event, _) => matches(&self.object).then_some(event),
        }
    }
}

/// A new watch: the events to send first, the live receiver, and the store's RV at the
/// moment of subscribing (every change up to it is in the first part or irrelevant).
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// `resourceVersion` unset or `"0"`: synthetic `ADDED` for every current object, then changes.
    Now,
    /// `resourceVersion=N`: every change after `N`, or 410 if `N` is older than the history.
    After(u64),
}

/// Which patch format a PATCH uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The main resource: changes to `status` are ignored, as the API server does.
    Main,
    /// `/status`: changes to `spec` are ignored (metadata changes are kept, which is why
    /// flanneld may patch annotations through `nodes/<n>/status`).
    Status,
}

/// What a `DELETE` does to the objects the deleted one owns (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// `Background` (kubectl's choice) or `Foreground`: the dependents are deleted too.
    #[default]
    Background,
    /// `Orphan`: the dependents stay, without the owner reference.
    Orphan,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The list's resourceVersion (the store's at the time of the first page).
    pub resource_version: u64,
    /// The items of this page (without `kind`/`apiVersion`, as the real server sends them).
    pub items: Vec<Value>,
    /// The continue token when more items follow.
    pub continue_token: Option<String>,
}

/// What a list asks for (the query parameters of `GET /api/v1/<resource>`).
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    /// Only this namespace (`/api/v1/namespaces/<ns>/pods`); `None` for all.
    pub namespace: Option<&'a str>,
    /// `labelSelector` and `fieldSelector`.
    pub selector: Selector,
    /// `resourceVersion`.
    pub resource_version: Option<u64>,
    /// `resourceVersionMatch=Exact`.
    pub exact: bool,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<&'a str>,
}

/// Tunables of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// How many changes are retained for watches; a watch from an older RV gets 410 Expired.
    pub history: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { history: 1000 }
    }
}

/// How many list snapshots are kept for `continue` tokens.
const SNAPSHOTS: usize = 16;

/// An object's key: kind, namespace (empty for cluster-scoped kinds), name. The map's order is
/// the list order, as etcd's key order is the real server's.
type Key = (Kind, String, String);

/// The store. All access goes through one mutex in [`crate::Emulator`].
#[derive(Debug)]
pub struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// A watch may resume from any RV >= this; older ones are compacted away.
    compacted: u64,
    /// List snapshots for `continue` tokens: (id, kind, RV, items), shared by every page so a
    /// page of a 5000-node list does not copy the other 4500 items.
    snapshots: VecDeque<(u64, Kind, u64, Arc<Vec<Value>>)>,
    next_snapshot: u64,
    events: broadcast::Sender<Arc<Change>>,
    /// Seeds the random suffixes of generated names (randomly keyed per process).
    name_seed: std::collections::hash_map::RandomState,
}

/// Current time as RFC 3339 UTC with seconds (`2026-01-02T03:04:05Z`), the API's `Time` format.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with seconds (`2026-01-02T03:04:05Z`), the API's `Time` format.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Seconds since the epoch of an RFC 3339 UTC time as the API writes it
/// (`2026-01-02T03:04:05Z`, fractional seconds ignored); `None` for anything else.
pub fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !t.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn generate_name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The uids an object's `metadata.ownerReferences` name.
fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    let ns = if kind.namespaced() { namespace } else { "" };
    (kind, ns.to_string(), name.to_string())
}

impl Store {
    /// A store holding the [`INITIAL_NAMESPACES`] (at resourceVersion 1, with no history: they
    /// exist from the start, as a cluster's do when a client first connects).
    pub fn new(config: StoreConfig) -> Store {
        let (events, _) = broadcast::channel(4096);
        let mut s = Store {
            rv: 1,
            uid: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: config.history.max(1),
            compacted: 1,
            snapshots: VecDeque::new(),
            next_snapshot: 1,
            events,
            name_seed: std::collections::hash_map::RandomState::new(),
        };
        for name in INITIAL_NAMESPACES {
            let mut ns = strategy::namespace_object(name);
            s.stamp(&mut ns, Kind::Namespace);
            s.objects.insert(key(Kind::Namespace, "", name), ns);
        }
        s
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may still resume from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Changes the history window; shrinking it compacts at once.
    pub fn set_history(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim();
    }

    /// Drops every retained change, as an etcd compaction at the current revision: a watch
    /// from any older RV now gets 410 Expired, and so do outstanding `continue` tokens.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        self.snapshots.clear();
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
        let compacted = self.compacted;
        self.snapshots.retain(|(_, _, rv, _)| *rv >= compacted);
    }

    fn record(&mut self, kind: Kind, event: EventType, object: Value, prev: Option<Value>) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            namespace: namespace_of(&object).to_string(),
            event,
            object,
            prev,
        });
        self.history.push_back(change.clone());
        self.trim();
        // No receivers is fine: nobody watches.
        let _ = self.events.send(change);
    }

    /// Sets the server-managed fields of a new object at the current RV.
    fn stamp(&mut self, obj: &mut Value, kind: Kind) {
        self.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid);
        obj["kind"] = json!(kind.name());
        obj["apiVersion"] = json!(kind.api_version());
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["creationTimestamp"] = json!(rfc3339_now());
    }

    fn objects(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(move |((k, _, _), _)| *k == kind)
            .map(|(_, v)| v)
    }

    /// Subscribes a watch of `kind`. Returns the events to send first (history replay or
    /// synthetic `ADDED`s) and the live receiver, atomically so nothing falls in between.
    pub fn watch(&self, kind: Kind, from: WatchFrom) -> Result<Subscription, ApiError> {
        let rx = self.events.subscribe();
        let first = match from {
            WatchFrom::Now => self
                .objects(kind)
                .map(|object| {
                    Arc::new(Change {
                        rv: self.rv,
                        kind,
                        namespace: namespace_of(object).to_string(),
                        event: EventType::Added,
                        object: object.clone(),
                        prev: None,
                    })
                })
                .collect(),
            WatchFrom::After(n) if n < self.compacted => {
                return Err(ApiError::too_old(n, self.compacted));
            }
            WatchFrom::After(n) => self
                .history
                .iter()
                .filter(|c| c.rv > n && c.kind == kind)
                .cloned()
                .collect(),
        };
        Ok((first, rx, self.rv))
    }

    /// Lists `kind` with the API's resourceVersion / limit / continue semantics.
    ///
    /// * `resource_version` `None`/`0`/`N<=current` (NotOlderThan): the current state;
    ///   `N > current`: 504 "Too large resource version".
    /// * `exact`: only the current RV can be served (older states are not kept): others 410.
    /// * `limit` pages through a snapshot taken at the first page (after the namespace and
    ///   selector filters); a `continue` token whose snapshot was compacted or evicted gets
    ///   410 Expired.
    pub fn list(&mut self, kind: Kind, q: &ListQuery<'_>) -> Result<ListPage, ApiError> {
        let (id, rv, items, offset) = match q.continue_token {
            Some(token) => {
                let (id, offset) = token
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("invalid continue token {token:?}"))
                    })?;
                let (_, _, rv, items) = self
                    .snapshots
                    .iter()
                    .find(|(i, k, _, _)| *i == id && *k == kind)
                    .ok_or_else(ApiError::continue_expired)?;
                (id, *rv, Arc::clone(items), offset)
            }
            None => {
                match q.resource_version {
                    Some(n) if n > self.rv => return Err(ApiError::too_large(n, self.rv)),
                    Some(n) if q.exact && n != 0 && n != self.rv => {
                        return Err(ApiError::too_old(n, self.rv));
                    }
                    _ => {}
                }
                let items: Vec<Value> = self
                    .objects(kind)
                    .filter(|o| q.namespace.is_none_or(|ns| namespace_of(o) == ns))
                    .filter(|o| q.selector.matches(kind, o))
                    .cloned()
                    .collect();
                (0, self.rv, Arc::new(items), 0)
            }
        };
        let end = match q.limit {
            Some(l) if l > 0 => (offset + l).min(items.len()),
            _ => items.len(),
        };
        let page: Vec<Value> = items[offset.min(end)..end]
            .iter()
            .cloned()
            .map(|mut o| {
                if let Value::Object(m) = &mut o {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        let continue_token = if end < items.len() {
            let id = if id == 0 {
                let id = self.next_snapshot;
                self.next_snapshot += 1;
                self.snapshots.push_back((id, kind, rv, items));
                while self.snapshots.len() > SNAPSHOTS {
                    self.snapshots.pop_front();
                }
                id
            } else {
                id
            };
            Some(format!("{id}:{end}"))
        } else {
            None
        };
        Ok(ListPage {
            resource_version: rv,
            items: page,
            continue_token,
        })
    }

    // ---- any kind -------------------------------------------------------------------------

    /// The object `name` of `kind` (`namespace` is ignored for cluster-scoped kinds).
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(kind, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind.qualified_resource(), name))
    }

    /// Names of all objects of `kind` (all namespaces), in list order.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.objects(kind).map(|o| name_of(o).to_string()).collect()
    }

    /// `POST`: creates an object of `kind` in `namespace` (empty for cluster-scoped kinds),
    /// after the kind's defaulting and validation. A namespaced object needs its namespace to
    /// exist (`404 namespaces "x" not found`, as the `NamespaceLifecycle` admission answers).
    pub fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        if kind.namespaced() {
            let ns = namespace_of(&obj);
            if !ns.is_empty() && ns != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        // Admission (NamespaceLifecycle) runs before the kind's validation.
        if kind.namespaced()
            && !self
                .objects
                .contains_key(&key(Kind::Namespace, "", namespace))
        {
            return Err(ApiError::not_found("namespaces", namespace));
        }
        let name = match (name_of(&obj), generate_name_of(&obj)) {
            ("", prefix) if !prefix.is_empty() => self.generate_name(kind, namespace, prefix)?,
            (name, _) => name.to_string(),
        };
        obj["metadata"]["name"] = json!(name);
        strategy::prepare_create(kind, &name, &mut obj)?;
        if kind.namespaced() {
            obj["metadata"]["namespace"] = json!(namespace);
        } else if let Value::Object(m) = &mut obj["metadata"] {
            m.remove("namespace");
        }
        let k = key(kind, namespace, &name);
        if self.objects.contains_key(&k) {
            return Err(ApiError::already_exists(kind.qualified_resource(), &name));
        }
        self.rv += 1;
        self.stamp(&mut obj, kind);
        self.objects.insert(k, obj.clone());
        self.record(kind, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Applies an update strategy and commits: server-managed metadata is kept, the other half
    /// of the object (status or spec) is kept depending on the subresource, the kind's rules
    /// apply (`validate`), and a no-op write changes nothing (no RV bump, no event).
    fn commit(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut new: Value,
        sub: Subresource,
        validate: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(kind, namespace, name)?;
        if name_of(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        if kind.namespaced() && !["", namespace].contains(&namespace_of(&new)) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(rv) = rv_of(&new)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict(kind.qualified_resource(), name));
        }
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for meta in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "namespace",
            "generation",
        ] {
            match old["metadata"].get(meta) {
                Some(v) => new["metadata"][meta] = v.clone(),
                None => {
                    if let Value::Object(m) = &mut new["metadata"] {
                        m.remove(meta);
                    }
                }
            }
        }
        new["kind"] = json!(kind.name());
        new["apiVersion"] = json!(kind.api_version());
        strategy::prepare_update(kind, name, &old, &mut new, sub, validate)?;
        if new == old {
            return Ok(old);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key(kind, namespace, name), new.clone());
        self.record(kind, EventType::Modified, new.clone(), Some(old));
        Ok(new)
    }

    /// `PUT`: replaces an object (or its status).
    pub fn replace(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        new: Value,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        self.commit(kind, namespace, name, new, sub, true)
    }

    /// `PATCH`: a merge or strategic merge patch of an object (or its status). A
    /// `metadata.resourceVersion` in the patch is a precondition.
    pub fn patch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
        patch_type: PatchType,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        let mut new = self.get(kind, namespace, name)?;
        // A resourceVersion in the patch is a precondition, checked against the stored object.
        let precondition = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        match patch_type {
            PatchType::Merge => merge_patch(&mut new, patch),
            PatchType::Strategic => strategic_merge_patch(&mut new, patch, kind.name())?,
        }
        match precondition {
            Some(rv) => new["metadata"]["resourceVersion"] = json!(rv),
            None => {
                if let Value::Object(m) = &mut new["metadata"] {
                    m.remove("resourceVersion");
                }
            }
        }
        self.commit(kind, namespace, name, new, sub, true)
    }

    /// `DELETE`: removes the object at once (no graceful deletion, no finalizers); the
    /// `DELETED` event carries the deletion's RV. Deleting a namespace deletes what lives in it
    /// first (what the namespace controller does before the namespace goes); `default`,
    /// `kube-system` and `kube-public` cannot be deleted (`403`). The objects it owns (whose
    /// `metadata.ownerReferences` name its uid) go too, as the garbage collector deletes
    /// dependents in the background; see [`Store::delete_with`] to orphan them instead.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.delete_with(kind, namespace, name, Propagation::Background)
    }

    /// `DELETE` with a `propagationPolicy`: `Background` (and `Foreground`, which the emulator
    /// does not tell apart: nothing is graceful) deletes the object's dependents, `Orphan`
    /// removes the owner reference from them and keeps them.
    pub fn delete_with(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, ApiError> {
        let k = key(kind, namespace, name);
        if !self.objects.contains_key(&k) {
            return Err(ApiError::not_found(kind.qualified_resource(), name));
        }
        if kind == Kind::Namespace {
            if IMMORTAL_NAMESPACES.contains(&name) {
                return Err(ApiError::forbidden(
                    "namespaces",
                    name,
                    "this namespace may not be deleted",
                ));
            }
            let inside: Vec<(Kind, String)> = self
                .objects
                .iter()
                .filter(|((k, ns, _), _)| k.namespaced() && ns == name)
                .map(|((k, _, n), _)| (*k, n.clone()))
                .collect();
            for (k, n) in inside {
                // An owner deleted before may have taken it already.
                if self.objects.contains_key(&key(k, name, &n)) {
                    self.delete_with(k, name, &n, Propagation::Background)?;
                }
            }
        }
        let Some(mut obj) = self.objects.remove(&k) else {
            return Err(ApiError::not_found(kind.qualified_resource(), name));
        };
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind, EventType::Deleted, obj.clone(), None);
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        self.collect_dependents(&uid, propagation)?;
        Ok(obj)
    }

    /// What the garbage collector does once an owner is gone: deletes the objects whose
    /// `ownerReferences` name `uid` (when no other owner is left), or orphans them (removes the
    /// reference).
    fn collect_dependents(&mut self, uid: &str, propagation: Propagation) -> Result<(), ApiError> {
        if uid.is_empty() {
            return Ok(());
        }
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| owner_uids(o).any(|u| u == uid))
            .map(|(k, _)| k.clone())
            .collect();
        for (kind, ns, name) in dependents {
            let Some(obj) = self.objects.get(&key(kind, &ns, &name)) else {
                continue;
            };
            let others = owner_uids(obj).filter(|u| *u != uid).count();
            if propagation == Propagation::Orphan || others > 0 {
                let mut new = obj.clone();
                if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != uid);
                    if refs.is_empty()
                        && let Value::Object(m) = &mut new["metadata"]
                    {
                        m.remove("ownerReferences");
                    }
                }
                self.commit(kind, &ns, &name, new, Subresource::Main, false)?;
            } else {
                self.delete_with(kind, &ns, &name, Propagation::Background)?;
            }
        }
        Ok(())
    }

    /// A name for a new object from its `generateName`: the prefix (cut to 58 characters) and
    /// five random characters from the alphabet the API server draws them from, tried a few
    /// times against names in use, as the server retries a generated name that collides.
    fn generate_name(
        &mut self,
        kind: Kind,
        namespace: &str,
        prefix: &str,
    ) -> Result<String, ApiError> {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let prefix: String = prefix.chars().take(58).collect();
        let mut last = String::new();
        for _ in 0..8 {
            let mut h = std::hash::BuildHasher::build_hasher(&self.name_seed);
            std::hash::Hasher::write_u64(&mut h, self.uid);
            std::hash::Hasher::write_u64(&mut h, self.rv);
            std::hash::Hasher::write(&mut h, last.as_bytes());
            let mut bits = std::hash::Hasher::finish(&h);
            let base = ALPHABET.len() as u64;
            let suffix: String = (0..5)
                .map(|_| {
                    let c = ALPHABET[(bits % base) as usize];
                    bits /= base;
                    char::from(c)
                })
                .collect();
            last = format!("{prefix}{suffix}");
            if !self.objects.contains_key(&key(kind, namespace, &last)) {
                return Ok(last);
            }
        }
        Err(ApiError::already_exists(kind.qualified_resource(), &last))
    }

    // ---- nodes ----------------------------------------------------------------------------

    /// The node named `name`.
    pub fn get_node(&self, name: &str) -> Result<Value, ApiError> {
        self.get(Kind::Node, "", name)
    }

    /// Names of all nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.names(Kind::Node)
    }

    /// `POST /api/v1/nodes`.
    pub fn create_node(&mut self, obj: Value) -> Result<Value, ApiError> {
        self.create(Kind::Node, "", obj)
    }

    /// `PUT /api/v1/nodes/<name>[/status]`.
    pub fn replace_node(
        &mut self,
        name: &str,
        new: Value,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        self.replace(Kind::Node, "", name, new, sub)
    }

    /// `PATCH /api/v1/nodes/<name>[/status]`.
    pub fn patch_node(
        &mut self,
        name: &str,
        patch: &Value,
        patch_type: PatchType,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        self.patch(Kind::Node, "", name, patch, patch_type, sub)
    }

    /// `DELETE /api/v1/nodes/<name>`.
    pub fn delete_node(&mut self, name: &str) -> Result<Value, ApiError> {
        self.delete(Kind::Node, "", name)
    }

    /// Test hook: sets a node's pod CIDRs *without* the API's validation and immutability
    /// rules (the real API only lets podCIDR go from empty to set), to drive clients through
    /// states a real cluster reaches by other routes (re-registration, etcd edits).
    pub fn force_pod_cidrs(&mut self, name: &str, cidrs: &[String]) -> Result<Value, ApiError> {
        let mut new = self.get_node(name)?;
        if !new["spec"].is_object() {
            new["spec"] = json!({});
        }
        new["spec"]["podCIDR"] = json!(cidrs.first().cloned().unwrap_or_default());
        new["spec"]["podCIDRs"] = json!(cidrs);
        if cidrs.is_empty()
            && let Value::Object(spec) = &mut new["spec"]
        {
            spec.remove("podCIDR");
            spec.remove("podCIDRs");
        }
        if let Value::Object(m) = &mut new["metadata"] {
            m.remove("resourceVersion");
        }
        self.commit(Kind::Node, "", name, new, Subresource::Main, false)
    }

    // ---- pods -----------------------------------------------------------------------------

    /// `GET /api/v1/namespaces/<ns>/pods/<name>`.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.get(Kind::Pod, namespace, name)
    }

    /// `POST /api/v1/namespaces/<ns>/pods`: the status sent is dropped (the pod starts
    /// `Pending`; see [`crate::strategy`]).
    pub fn create_pod(&mut self, namespace: &str, obj: Value) -> Result<Value, ApiError> {
        self.create(Kind::Pod, namespace, obj)
    }

    /// The uid of ServiceAccount `namespace/name`, `None` if there is none (its tokens then
    /// stop working).
    pub fn account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.object(Kind::ServiceAccount, namespace, name)
            .and_then(|sa| sa.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The stored object, borrowed (the authorizer reads roles at every request).
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(kind, namespace, name))
    }

    /// Every stored object of `kind` (all namespaces), in list order: what the authorizer
    /// reads bindings from. A range of the map, so thousands of nodes do not slow it down.
    pub fn all(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .map(|(_, v)| v)
    }

    /// `DELETE /api/v1/namespaces/<ns>/pods/<name>`.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.delete(Kind::Pod, namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str) -> Value {
        json!({"metadata":{"name":name},"spec":{"podCIDR":cidr}})
    }

    #[test]
    fn create_defaults_pod_cidrs_and_stamps_metadata() {
        let mut s = Store::new(StoreConfig::default());
        let n = s.create_node(node("n1", "10.244.0.0/24")).unwrap();
        assert_eq!(n["spec"]["podCIDRs"], json!(["10.244.0.0/24"]));
        assert_eq!(n["metadata"]["resourceVersion"], "2");
        assert_eq!(n["kind"], "Node");
        assert!(n["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert_eq!(s.create_node(node("n1", "")).unwrap_err().code, 409);
        let e = s
            .create_node(json!({"metadata":{"name":"x"},"spec":{"podCIDRs":["a","b","c"]}}))
            .unwrap_err();
        assert_eq!(e.code, 422);
        let e = s
            .create_node(
                json!({"metadata":{"name":"x"},"spec":{"podCIDRs":["10.0.0.0/24","10.1.0.0/24"]}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn status_subresource_keeps_spec_and_main_keeps_status() {
        let mut s = Store::new(StoreConfig::default());
        s.create_node(node("n1", "10.244.0.0/24")).unwrap();
        let n = s
            .patch_node(
                "n1",
                &json!({"metadata":{"annotations":{"a":"b"}},"spec":{"unschedulable":true},
                        "status":{"conditions":[{"type":"Ready","status":"True"}]}}),
                PatchType::Strategic,
                Subresource::Status,
            )
            .unwrap();
        assert_eq!(n["metadata"]["annotations"]["a"], "b");
        assert!(n["spec"].get("unschedulable").is_none());
        assert_eq!(n["status"]["conditions"][0]["type"], "Ready");
        let n = s
            .patch_node(
                "n1",
                &json!({"spec":{"unschedulable":true},"status":{"conditions":[]}}),
                PatchType::Merge,
                Subresource::Main,
            )
            .unwrap();
        assert_eq!(n["spec"]["unschedulable"], true);
        assert_eq!(n["status"]["conditions"][0]["type"], "Ready");
    }

    #[test]
    fn no_op_patch_does_not_bump_rv_and_preconditions_conflict() {
        let mut s = Store::new(StoreConfig::default());
        s.create_node(node("n1", "10.244.0.0/24")).unwrap();
        let before = s.resource_version();
        let p = json!({"metadata":{"annotations":{"a":"b"}}});
        s.patch_node("n1", &p, PatchType::Merge, Subresource::Main)
            .unwrap();
        assert_eq!(s.resource_version(), before + 1);
        s.patch_node("n1", &p, PatchType::Merge, Subresource::Main)
            .unwrap();
        assert_eq!(s.resource_version(), before + 1);
        let stale = json!({"metadata":{"resourceVersion":"1","annotations":{"a":"c"}}});
        let e = s
            .patch_node("n1", &stale, PatchType::Merge, Subresource::Main)
            .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.reason, "Conflict");
    }

    #[test]
    fn pod_cidr_is_immutable_through_the_api_but_not_the_hook() {
        let mut s = Store::new(StoreConfig::default());
        s.create_node(json!({"metadata":{"name":"n1"}})).unwrap();
        // "" -> set is allowed.
        s.patch_node(
            "n1",
            &json!({"spec":{"podCIDR":"10.244.1.0/24"}}),
            PatchType::Merge,
            Subresource::Main,
        )
        .unwrap();
        let e = s
            .patch_node(
                "n1",
                &json!({"spec":{"podCIDR":"10.244.2.0/24","podCIDRs":["10.244.2.0/24"]}}),
                PatchType::Merge,
                Subresource::Main,
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        let n = s
            .force_pod_cidrs("n1", &["10.244.2.0/24".to_string()])
            .unwrap();
        assert_eq!(n["spec"]["podCIDR"], "10.244.2.0/24");
    }

    #[test]
    fn watch_history_and_compaction() {
        let mut s = Store::new(StoreConfig { history: 2 });
        s.create_node(node("a", "10.0.1.0/24")).unwrap(); // rv 2
        s.create_node(node("b", "10.0.2.0/24")).unwrap(); // rv 3
        s.create_node(node("c", "10.0.3.0/24")).unwrap(); // rv 4, history keeps 3 and 4
        assert_eq!(s.compacted(), 2);
        let (first, _, _) = s.watch(Kind::Node, WatchFrom::After(2)).unwrap();
        assert_eq!(first.iter().map(|c| c.rv).collect::<Vec<_>>(), vec![3, 4]);
        let e = s.watch(Kind::Node, WatchFrom::After(1)).unwrap_err();
        assert_eq!(e.code, 410);
        let (first, _, _) = s.watch(Kind::Node, WatchFrom::Now).unwrap();
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|c| c.event == EventType::Added));
        s.compact();
        assert_eq!(
            s.watch(Kind::Node, WatchFrom::After(3)).unwrap_err().code,
            410
        );
        assert!(s.watch(Kind::Node, WatchFrom::After(4)).is_ok());
    }

    /// A page of two nodes, starting at `token` (the first page when `None`).
    fn page_of_two(s: &mut Store, token: Option<&str>) -> Result<ListPage, ApiError> {
        s.list(
            Kind::Node,
            &ListQuery {
                limit: Some(2),
                continue_token: token,
                ..ListQuery::default()
            },
        )
    }

    #[test]
    fn list_pages_from_a_snapshot() {
        let mut s = Store::new(StoreConfig::default());
        for i in 0..5 {
            s.create_node(node(&format!("n{i}"), &format!("10.0.{i}.0/24")))
                .unwrap();
        }
        let p1 = page_of_two(&mut s, None).unwrap();
        assert_eq!(p1.items.len(), 2);
        assert!(p1.items[0].get("kind").is_none());
        // A change between pages does not show up in the paged list.
        s.delete_node("n4").unwrap();
        let p2 = page_of_two(&mut s, p1.continue_token.as_deref()).unwrap();
        let p3 = page_of_two(&mut s, p2.continue_token.as_deref()).unwrap();
        assert_eq!(p3.items.len(), 1);
        assert_eq!(p3.items[0]["metadata"]["name"], "n4");
        assert!(p3.continue_token.is_none());
        assert_eq!(p3.resource_version, p1.resource_version);
        s.compact();
        let e = page_of_two(&mut s, p1.continue_token.as_deref()).unwrap_err();
        assert_eq!(e.code, 410);
        let cur = s.resource_version();
        assert_eq!(
            s.list(
                Kind::Node,
                &ListQuery {
                    resource_version: Some(cur + 5),
                    ..ListQuery::default()
                }
            )
            .unwrap_err()
            .code,
            504
        );
    }

    #[test]
    fn namespaces_are_seeded_and_hold_pods() {
        let mut s = Store::new(StoreConfig::default());
        assert_eq!(s.resource_version(), 1, "seeding writes no history");
        assert_eq!(s.names(Kind::Namespace), INITIAL_NAMESPACES);
        let pod = |n: &str| json!({"metadata":{"name":n},"status":{"phase":"Running"}});
        assert_eq!(s.create_pod("nope", pod("p")).unwrap_err().code, 404);
        let p = s.create_pod("default", pod("p")).unwrap();
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(
            s.create(Kind::Namespace, "", json!({"metadata":{"name":"t"}}))
                .unwrap()["status"]["phase"],
            "Active"
        );
        s.create_pod("t", pod("p")).unwrap();
        let rv = s.resource_version();
        s.delete(Kind::Namespace, "", "t").unwrap();
        assert_eq!(s.resource_version(), rv + 2, "the pod, then the namespace");
        assert!(s.get_pod("t", "p").is_err() && s.get_pod("default", "p").is_ok());
        assert_eq!(
            s.delete(Kind::Namespace, "", "default").unwrap_err().code,
            403
        );
        // A pod's key includes its namespace; a node's ignores it.
        assert_eq!(s.get(Kind::Pod, "kube-system", "p").unwrap_err().code, 404);
    }

    #[test]
    fn generated_names_and_owned_objects() {
        let mut s = Store::new(StoreConfig::default());
        let ds = s
            .create(
                Kind::DaemonSet,
                "kube-flannel",
                json!({"metadata": {"name": "ds"},
                       "spec": {"selector": {"matchLabels": {"app": "x"}},
                                "template": {"metadata": {"labels": {"app": "x"}},
                                             "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            )
            .unwrap();
        assert_eq!(ds["apiVersion"], "apps/v1");
        assert_eq!(ds["metadata"]["generation"], 1);
        let owned = |s: &mut Store, uid: &Value| {
            s.create(
                Kind::Pod,
                "kube-flannel",
                json!({"metadata": {"generateName": "ds-",
                                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                                         "name": "ds", "uid": uid, "controller": true}]}}),
            )
            .unwrap()
        };
        let uid = ds["metadata"]["uid"].clone();
        let p1 = owned(&mut s, &uid);
        let p2 = owned(&mut s, &uid);
        let name = p1["metadata"]["name"].as_str().unwrap();
        assert_eq!(name.len(), "ds-".len() + 5, "{name}");
        assert!(name.starts_with("ds-"));
        assert_ne!(p1["metadata"]["name"], p2["metadata"]["name"]);
        let e = s
            .create(
                Kind::Pod,
                "kube-flannel",
                json!({"metadata": {"generateName": "Bad-"}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        // The garbage collector: deleting the owner deletes what it owns...
        s.delete(Kind::DaemonSet, "kube-flannel", "ds").unwrap();
        assert!(s.names(Kind::Pod).is_empty());
        let e = s.delete(Kind::DaemonSet, "kube-flannel", "ds").unwrap_err();
        assert_eq!(e.message, "daemonsets.apps \"ds\" not found");
        // ... or orphans it.
        let cm = s
            .create(
                Kind::ConfigMap,
                "kube-flannel",
                json!({"metadata": {"name": "owner"}}),
            )
            .unwrap();
        let p = owned(&mut s, &cm["metadata"]["uid"]);
        let p_name = p["metadata"]["name"].as_str().unwrap();
        s.delete_with(
            Kind::ConfigMap,
            "kube-flannel",
            "owner",
            Propagation::Orphan,
        )
        .unwrap();
        let kept = s.get(Kind::Pod, "kube-flannel", p_name).unwrap();
        assert!(kept["metadata"].get("ownerReferences").is_none());
        // A namespace takes everything in it along.
        s.create(Kind::Namespace, "", json!({"metadata": {"name": "t"}}))
            .unwrap();
        s.create(Kind::ConfigMap, "t", json!({"metadata": {"name": "c"}}))
            .unwrap();
        s.delete(Kind::Namespace, "", "t").unwrap();
        assert_eq!(s.names(Kind::ConfigMap), Vec::<String>::new());
    }

    #[test]
    fn selector_watches_see_objects_enter_and_leave() {
        let mut s = Store::new(StoreConfig::default());
        let (_, mut rx, _) = s.watch(Kind::Node, WatchFrom::Now).unwrap();
        s.create_node(node("n1", "10.0.1.0/24")).unwrap();
        for v in ["a", "b"] {
            let p = json!({"metadata":{"labels":{"x":v}}});
            s.patch_node("n1", &p, PatchType::Merge, Subresource::Main)
                .unwrap();
        }
        s.delete_node("n1").unwrap();
        let sel = Selector::parse(Kind::Node, Some("x=a"), None).unwrap();
        let mut seen = Vec::new();
        while let Ok(c) = rx.try_recv() {
            seen.push(c.filtered(|o| sel.matches(Kind::Node, o)));
        }
        assert_eq!(
            seen,
            [None, Some(EventType::Added), Some(EventType::Deleted), None]
        );
    }

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(parse_rfc3339("2024-02-29T12:30:00.5Z"), Some(1_709_209_800));
        assert_eq!(parse_rfc3339("yesterday"), None);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let parsed = parse_rfc3339(&rfc3339_now()).unwrap();
        assert!((now - parsed).abs() <= 1, "{now} {parsed}");
    }

    #[test]
    fn rfc3339_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
        assert!(t.starts_with("20"));
    }
}
