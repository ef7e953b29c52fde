//! The in-memory object store: Nodes and Pods, one global resourceVersion counter (like etcd's
//! revision), a bounded history of changes for watches, and the validation and update
//! strategies of the real API that flannel depends on.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::patch::{merge_patch, strategic_merge_patch};
use crate::status::ApiError;

/// The object kinds the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `v1/Node`, cluster-scoped, resource `nodes`.
    Node,
    /// `v1/Pod`, namespaced, resource `pods`.
    Pod,
}

impl Kind {
    /// The kind name (`Node`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Pod => "Pod",
        }
    }

    /// The resource name (`nodes`), as used in paths and error messages.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
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
    /// The namespace (pods), empty for nodes.
    pub namespace: String,
    /// What happened.
    pub event: EventType,
    /// The object after the change (for `DELETED`: its last state, with the deletion's RV).
    pub object: Value,
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
    /// `/status`: changes to `spec` are ignored (for nodes, metadata changes are kept, which is
    /// why flanneld may patch annotations through `nodes/<n>/status`).
    Status,
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

/// The store. All access goes through one mutex in [`crate::Emulator`].
#[derive(Debug)]
pub struct Store {
    rv: u64,
    uid: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// A watch may resume from any RV >= this; older ones are compacted away.
    compacted: u64,
    snapshots: VecDeque<(u64, Kind, u64, Vec<Value>)>,
    next_snapshot: u64,
    events: broadcast::Sender<Arc<Change>>,
}

/// Current time as RFC 3339 UTC with seconds (`2026-01-02T03:04:05Z`), the API's `Time` format.
pub fn rfc3339_now() -> String {
    let secs = SystemTime::now()
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

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Whether `s` is a CIDR as Go's `net.ParseCIDR` accepts it (address/prefix within the family).
fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    !len.is_empty()
        && len.len() <= 3
        && len.bytes().all(|b| b.is_ascii_digit())
        && len.parse::<u32>().is_ok_and(|l| l <= max)
}

/// Reads `spec.podCIDR` / `spec.podCIDRs`.
fn pod_cidrs(obj: &Value) -> (String, Vec<String>) {
    let single = obj
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let list = obj
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    (single, list)
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Store {
        let (events, _) = broadcast::channel(4096);
        Store {
            rv: 1,
            uid: 0,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: config.history.max(1),
            compacted: 1,
            snapshots: VecDeque::new(),
            next_snapshot: 1,
            events,
        }
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

    fn record(&mut self, kind: Kind, namespace: &str, event: EventType, object: Value) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            namespace: namespace.to_string(),
            event,
            object,
        });
        self.history.push_back(change.clone());
        self.trim();
        // No receivers is fine: nobody watches.
        let _ = self.events.send(change);
    }

    fn stamp_new(&mut self, obj: &mut Value, kind: Kind) {
        self.rv += 1;
        self.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid);
        obj["kind"] = json!(kind.name());
        obj["apiVersion"] = json!("v1");
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["creationTimestamp"] = json!(rfc3339_now());
    }

    fn objects(&self, kind: Kind) -> Vec<Value> {
        match kind {
            Kind::Node => self.nodes.values().cloned().collect(),
            Kind::Pod => self.pods.values().cloned().collect(),
        }
    }

    /// Subscribes a watch of `kind`. Returns the events to send first (history replay or
    /// synthetic `ADDED`s) and the live receiver, atomically so nothing falls in between.
    pub fn watch(&self, kind: Kind, from: WatchFrom) -> Result<Subscription, ApiError> {
        let rx = self.events.subscribe();
        let first = match from {
            WatchFrom::Now => self
                .objects(kind)
                .into_iter()
                .map(|object| {
                    Arc::new(Change {
                        rv: self.rv,
                        kind,
                        namespace: object
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        event: EventType::Added,
                        object,
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
    /// * `limit` pages through a snapshot taken at the first page; a `continue` token whose
    ///   snapshot was compacted or evicted gets 410 Expired.
    pub fn list(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        resource_version: Option<u64>,
        exact: bool,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (id, rv, items, offset) = match continue_token {
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
                (id, *rv, items.clone(), offset)
            }
            None => {
                match resource_version {
                    Some(n) if n > self.rv => return Err(ApiError::too_large(n, self.rv)),
                    Some(n) if exact && n != 0 && n != self.rv => {
                        return Err(ApiError::too_old(n, self.rv));
                    }
                    _ => {}
                }
                let items: Vec<Value> = self
                    .objects(kind)
                    .into_iter()
                    .filter(|o| {
                        namespace.is_none_or(|ns| {
                            o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
                        })
                    })
                    .collect();
                (0, self.rv, items, 0)
            }
        };
        let end = match limit {
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

    // ---- nodes ----------------------------------------------------------------------------

    /// The node named `name`.
    pub fn get_node(&self, name: &str) -> Result<Value, ApiError> {
        self.nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("nodes", name))
    }

    /// Names of all nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Defaulting and validation of a Node's pod CIDRs, as the API server does them:
    /// `podCIDR` and `podCIDRs[0]` are kept in sync, each must be a CIDR, at most two, and
    /// two must be of different families.
    fn normalize_node(name: &str, obj: &mut Value) -> Result<(), ApiError> {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let (single, mut list) = pod_cidrs(obj);
        if list.is_empty() && !single.is_empty() {
            list.push(single.clone());
        }
        if !single.is_empty() && list.first() != Some(&single) {
            return Err(ApiError::invalid(
                "nodes",
                name,
                format!(
                    "spec.podCIDRs: Invalid value: {list:?}: must match spec.podCIDR {single:?} at index 0"
                ),
            ));
        }
        for (i, c) in list.iter().enumerate() {
            if !valid_cidr(c) {
                return Err(ApiError::invalid(
                    "nodes",
                    name,
                    format!("spec.podCIDRs[{i}]: Invalid value: {c:?}: must be a valid CIDR"),
                ));
            }
        }
        if list.len() > 2 {
            return Err(ApiError::invalid(
                "nodes",
                name,
                format!(
                    "spec.podCIDRs: Too many: {}: must have at most 2 items",
                    list.len()
                ),
            ));
        }
        if list.len() == 2 && list[0].contains(':') == list[1].contains(':') {
            return Err(ApiError::invalid(
                "nodes",
                name,
                "spec.podCIDRs: Invalid value: may specify no more than one CIDR for each IP family",
            ));
        }
        if let Some(first) = list.first() {
            obj["spec"]["podCIDR"] = json!(first);
            obj["spec"]["podCIDRs"] = json!(list);
        }
        Ok(())
    }

    /// `POST /api/v1/nodes`.
    pub fn create_node(&mut self, mut obj: Value) -> Result<Value, ApiError> {
        let name = name_of(&obj).to_string();
        if name.is_empty() {
            return Err(ApiError::invalid(
                "nodes",
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if self.nodes.contains_key(&name) {
            return Err(ApiError::already_exists("nodes", &name));
        }
        Self::normalize_node(&name, &mut obj)?;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        self.stamp_new(&mut obj, Kind::Node);
        self.nodes.insert(name, obj.clone());
        self.record(Kind::Node, "", EventType::Added, obj.clone());
        Ok(obj)
    }

    /// Applies an update strategy and commits: server-managed metadata is kept, the other half
    /// of the object (status or spec) is kept depending on the subresource, podCIDR may only
    /// go from empty to set, and a no-op write changes nothing (no RV bump, no event).
    fn commit_node(
        &mut self,
        name: &str,
        mut new: Value,
        sub: Subresource,
        validate: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get_node(name)?;
        if name_of(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        if let Some(rv) = rv_of(&new)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict("nodes", name));
        }
        for key in ["uid", "resourceVersion", "creationTimestamp"] {
            new["metadata"][key] = old["metadata"][key].clone();
        }
        new["kind"] = json!("Node");
        new["apiVersion"] = json!("v1");
        match sub {
            Subresource::Main => new["status"] = old["status"].clone(),
            Subresource::Status => new["spec"] = old["spec"].clone(),
        }
        if new["status"].is_null()
            && let Value::Object(m) = &mut new
        {
            m.remove("status");
        }
        if validate {
            Self::normalize_node(name, &mut new)?;
            let (old_cidr, old_list) = pod_cidrs(&old);
            let (new_cidr, new_list) = pod_cidrs(&new);
            if !old_cidr.is_empty() && (old_cidr != new_cidr || old_list != new_list) {
                return Err(ApiError::invalid(
                    "nodes",
                    name,
                    "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
                ));
            }
        }
        if new == old {
            return Ok(old);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.nodes.insert(name.to_string(), new.clone());
        self.record(Kind::Node, "", EventType::Modified, new.clone());
        Ok(new)
    }

    /// `PUT /api/v1/nodes/<name>[/status]`.
    pub fn replace_node(
        &mut self,
        name: &str,
        new: Value,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        self.commit_node(name, new, sub, true)
    }

    /// `PATCH /api/v1/nodes/<name>[/status]`.
    pub fn patch_node(
        &mut self,
        name: &str,
        patch: &Value,
        patch_type: PatchType,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        let mut new = self.get_node(name)?;
        // A resourceVersion in the patch is a precondition, checked against the stored object.
        let precondition = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        match patch_type {
            PatchType::Merge => merge_patch(&mut new, patch),
            PatchType::Strategic => strategic_merge_patch(&mut new, patch, "Node")?,
        }
        match precondition {
            Some(rv) => new["metadata"]["resourceVersion"] = json!(rv),
            None => {
                if let Value::Object(m) = &mut new["metadata"] {
                    m.remove("resourceVersion");
                }
            }
        }
        self.commit_node(name, new, sub, true)
    }

    /// `DELETE /api/v1/nodes/<name>`: the `DELETED` event carries the deletion's RV.
    pub fn delete_node(&mut self, name: &str) -> Result<Value, ApiError> {
        let mut obj = self
            .nodes
            .remove(name)
            .ok_or_else(|| ApiError::not_found("nodes", name))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Kind::Node, "", EventType::Deleted, obj.clone());
        Ok(obj)
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
        self.commit_node(name, new, Subresource::Main, false)
    }

    // ---- pods -----------------------------------------------------------------------------

    /// `GET /api/v1/namespaces/<ns>/pods/<name>`.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found("pods", name))
    }

    /// `POST /api/v1/namespaces/<ns>/pods`.
    pub fn create_pod(&mut self, namespace: &str, mut obj: Value) -> Result<Value, ApiError> {
        let name = name_of(&obj).to_string();
        if name.is_empty() {
            return Err(ApiError::invalid(
                "pods",
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && ns != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = (namespace.to_string(), name.clone());
        if self.pods.contains_key(&key) {
            return Err(ApiError::already_exists("pods", &name));
        }
        obj["metadata"]["namespace"] = json!(namespace);
        self.stamp_new(&mut obj, Kind::Pod);
        self.pods.insert(key, obj.clone());
        self.record(Kind::Pod, namespace, EventType::Added, obj.clone());
        Ok(obj)
    }

    /// `DELETE /api/v1/namespaces/<ns>/pods/<name>`.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let mut obj = self
            .pods
            .remove(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| ApiError::not_found("pods", name))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Kind::Pod, namespace, EventType::Deleted, obj.clone());
        Ok(obj)
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
        s.list(Kind::Node, None, None, false, Some(2), token)
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
            s.list(Kind::Node, None, Some(cur + 5), false, None, None)
                .unwrap_err()
                .code,
            504
        );
    }

    #[test]
    fn rfc3339_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
        assert!(t.starts_with("20"));
    }
}
