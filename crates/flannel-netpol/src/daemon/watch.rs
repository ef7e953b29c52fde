//! The three watches (Pods, Namespaces, NetworkPolicies), stripped on arrival into
//! [`Update`]s for the one task that owns the [`ClusterState`].
//!
//! kube's `watcher` lists, then watches from the list's resourceVersion, re-lists on `410
//! Gone`, and (with `default_backoff`) retries failures with a bounded exponential backoff;
//! a resource the server does not serve (404 on networkpolicies) is simply retried. A (re)list
//! is buffered until complete and then replaces everything of that resource at once, so a
//! half-done list never removes rules. Errors are logged at warning level once per kind of
//! error (and again after a success), counted always.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use flannel_subnet::kube::refusal::{Access, Refusal};

use crate::cluster::{ClusterState, PolicyEntry};
use crate::metrics::Metrics;
use crate::model::{NamespaceInfo, PodInfo, Policy};

/// One change for the cluster state.
#[derive(Debug)]
pub enum Update {
    /// A pod was added or changed (`Some`), or deleted or became irrelevant (`None`).
    Pod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The stripped pod.
        pod: Option<PodInfo>,
    },
    /// A complete (re)list of pods.
    Pods(Vec<PodInfo>),
    /// A namespace was added or changed (`Some`), or deleted.
    Namespace {
        /// Name.
        name: String,
        /// The stripped namespace.
        ns: Option<NamespaceInfo>,
    },
    /// A complete (re)list of namespaces.
    Namespaces(Vec<NamespaceInfo>),
    /// A policy was added or changed (`Some`), or deleted.
    Policy {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The validated policy.
        entry: Option<PolicyEntry>,
    },
    /// A complete (re)list of policies.
    Policies(Vec<PolicyEntry>),
}

/// An [`Update`] as a watch received it, with the newest `metadata.resourceVersion` among
/// its objects: the daemon publishes, per resource, the newest one a successful sync covered
/// (`flannel_netpol_synced_resource_version`), so a client that wrote an object can wait until
/// every node enforces it.
#[derive(Debug)]
pub struct Received {
    /// The change.
    pub update: Update,
    /// The newest resourceVersion of its objects (`None` when none carries a numeric one).
    pub resource_version: Option<u64>,
}

impl From<Update> for Received {
    fn from(update: Update) -> Received {
        Received {
            update,
            resource_version: None,
        }
    }
}

impl Update {
    /// The resource the change is of (`pods`, `namespaces`, `networkpolicies`).
    pub fn resource(&self) -> &'static str {
        match self {
            Update::Pod { .. } | Update::Pods(_) => Pod::PLURAL,
            Update::Namespace { .. } | Update::Namespaces(_) => Namespace::PLURAL,
            Update::Policy { .. } | Update::Policies(_) => NetworkPolicy::PLURAL,
        }
    }

    /// Applies the change; returns the resource when it was a complete list (the daemon
    /// syncs only once every resource has been listed).
    pub fn apply(self, state: &mut ClusterState) -> Option<&'static str> {
        match self {
            Update::Pod {
                namespace,
                name,
                pod,
            } => match pod {
                Some(p) => state.upsert_pod(p),
                None => state.remove_pod(&namespace, &name),
            },
            Update::Pods(pods) => {
                state.replace_pods(pods);
                return Some(Pod::PLURAL);
            }
            Update::Namespace { name, ns } => match ns {
                Some(n) => state.upsert_namespace(n),
                None => state.remove_namespace(&name),
            },
            Update::Namespaces(list) => {
                state.replace_namespaces(list);
                return Some(Namespace::PLURAL);
            }
            Update::Policy {
                namespace,
                name,
                entry,
            } => match entry {
                Some(e) => state.upsert_policy(e.policy, e.problems),
                None => state.remove_policy(&namespace, &name),
            },
            Update::Policies(list) => {
                state.replace_policies(list);
                return Some(NetworkPolicy::PLURAL);
            }
        }
        None
    }
}

/// A watched resource: how its objects become updates.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
{
    /// The resource's plural name, for logs and the `api_errors_total` label.
    const PLURAL: &'static str;
    /// What the enforcer keeps of an object: a list is stripped object by object as it
    /// arrives, so a re-list of thousands of pods never holds them whole.
    type Stripped;
    /// The update for an added, changed (`deleted == false`) or deleted object.
    fn update(obj: &Self, deleted: bool) -> Update;
    /// The kept part of a listed object (`None`: irrelevant, e.g. a pod without an IP).
    fn strip(obj: &Self) -> Option<Self::Stripped>;
    /// The update for a complete list, from its stripped objects.
    fn relist(objs: Vec<Self::Stripped>) -> Update;
}

fn names<K: Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Watched for Pod {
    const PLURAL: &'static str = "pods";
    fn update(obj: &Self, deleted: bool) -> Update {
        let (namespace, name) = names(obj);
        let pod = if deleted {
            None
        } else {
            PodInfo::from_pod(obj)
        };
        Update::Pod {
            namespace,
            name,
            pod,
        }
    }
    type Stripped = PodInfo;
    fn strip(obj: &Self) -> Option<PodInfo> {
        PodInfo::from_pod(obj)
    }
    fn relist(objs: Vec<PodInfo>) -> Update {
        Update::Pods(objs)
    }
}

impl Watched for Namespace {
    const PLURAL: &'static str = "namespaces";
    fn update(obj: &Self, deleted: bool) -> Update {
        let (_, name) = names(obj);
        let ns = if deleted {
            None
        } else {
            NamespaceInfo::from_namespace(obj)
        };
        Update::Namespace { name, ns }
    }
    type Stripped = NamespaceInfo;
    fn strip(obj: &Self) -> Option<NamespaceInfo> {
        NamespaceInfo::from_namespace(obj)
    }
    fn relist(objs: Vec<NamespaceInfo>) -> Update {
        Update::Namespaces(objs)
    }
}

/// Validates a policy and logs its problems (each time the policy changes).
fn entry_of(np: &NetworkPolicy) -> PolicyEntry {
    let (policy, problems) = Policy::from_api(np);
    for p in &problems {
        warn!(
            "NetworkPolicy {}: {p} (enforced as far as valid, failing closed)",
            policy.key()
        );
    }
    PolicyEntry { policy, problems }
}

impl Watched for NetworkPolicy {
    const PLURAL: &'static str = "networkpolicies";
    fn update(obj: &Self, deleted: bool) -> Update {
        let (namespace, name) = names(obj);
        let entry = (!deleted).then(|| entry_of(obj));
        Update::Policy {
            namespace,
            name,
            entry,
        }
    }
    type Stripped = PolicyEntry;
    fn strip(obj: &Self) -> Option<PolicyEntry> {
        Some(entry_of(obj))
    }
    fn relist(objs: Vec<PolicyEntry>) -> Update {
        Update::Policies(objs)
    }
}

/// Watches one resource cluster-wide until the receiver of `tx` is dropped.
pub async fn run<K: Watched>(api: Api<K>, tx: mpsc::Sender<Received>, metrics: Arc<Metrics>) {
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = pin!(stream);
    // A list in progress: its stripped objects and its newest resourceVersion.
    let mut listing: Option<(Vec<K::Stripped>, Option<u64>)> = None;
    // The kind of the last error logged, so a retrying failure logs once.
    let mut last_error: Option<String> = None;
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tx.closed() => return,
        };
        let Some(item) = next else {
            warn!("watch of {} ended", K::PLURAL);
            return;
        };
        let (update, resource_version) = match item {
            Err(e) => {
                metrics.api_error(K::PLURAL);
                let kind = error_kind(&e);
                if last_error.as_deref() != Some(kind.as_str()) {
                    match refusal(&e, K::PLURAL) {
                        Some(r) => warn!(
                            "watching {}: {r}; retrying with backoff, rules kept",
                            K::PLURAL
                        ),
                        None => warn!(
                            "watching {}: {e}; retrying with backoff, rules kept",
                            K::PLURAL
                        ),
                    }
                    last_error = Some(kind);
                } else {
                    debug!("watching {}: {e}", K::PLURAL);
                }
                continue;
            }
            Ok(Event::Init) => {
                listing = Some((Vec::new(), None));
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                let (objs, newest) = listing.get_or_insert_with(|| (Vec::new(), None));
                *newest = (*newest).max(version(&obj));
                objs.extend(K::strip(&obj));
                continue;
            }
            Ok(Event::InitDone) => {
                let (objs, newest) = listing.take().unwrap_or_default();
                if last_error.take().is_some() {
                    info!("watching {} again", K::PLURAL);
                }
                debug!("listed {} {}", objs.len(), K::PLURAL);
                (K::relist(objs), newest)
            }
            Ok(Event::Apply(obj)) => (K::update(&obj, false), version(&obj)),
            Ok(Event::Delete(obj)) => (K::update(&obj, true), version(&obj)),
        };
        let received = Received {
            update,
            resource_version,
        };
        if tx.send(received).await.is_err() {
            return;
        }
    }
}

/// An object's `metadata.resourceVersion` as a number (the API server's are etcd revisions;
/// clients must treat them as opaque, which is why this is used only for metrics).
fn version<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// A 401 or 403 in a watch error, told as what it usually means (credentials, RBAC).
fn refusal(e: &watcher::Error, resource: &'static str) -> Option<Refusal> {
    let (verb, source) = match e {
        watcher::Error::InitialListFailed(s) => ("list", s),
        watcher::Error::WatchStartFailed(s) | watcher::Error::WatchFailed(s) => ("watch", s),
        _ => return None,
    };
    Refusal::of(Access::new(verb, resource), source)
}

/// The kind of a watch error: which step failed and, for API errors, the HTTP status (so a
/// 404 that keeps repeating logs once, and a change to 403 logs again).
fn error_kind(e: &watcher::Error) -> String {
    let (step, source) = match e {
        watcher::Error::InitialListFailed(s) => ("list", s),
        watcher::Error::WatchStartFailed(s) => ("watch start", s),
        watcher::Error::WatchFailed(s) => ("watch", s),
        watcher::Error::WatchError(status) => return format!("watch error/{}", status.code),
        watcher::Error::NoResourceVersion => return "no resourceVersion".into(),
    };
    match source {
        kube::Error::Api(status) => format!("{step}/{}", status.code),
        other => {
            let debug = format!("{other:?}");
            let variant = debug.split(['(', ' ', '{']).next().unwrap_or_default();
            format!("{step}/{variant}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": phase, "podIP": "10.0.0.5"}
        }))
        .unwrap()
    }

    #[test]
    fn objects_become_state_changes() {
        let mut state = ClusterState::new();
        assert_eq!(
            Update::apply(
                Pod::relist(Pod::strip(&pod("Running")).into_iter().collect()),
                &mut state
            ),
            Some("pods")
        );
        assert_eq!(state.counts().0, 1);
        // A pod that finished leaves the state before its deletion arrives.
        assert_eq!(
            Pod::update(&pod("Succeeded"), false).apply(&mut state),
            None
        );
        assert_eq!(state.counts().0, 0);
        Pod::update(&pod("Running"), false).apply(&mut state);
        Pod::update(&pod("Running"), true).apply(&mut state);
        assert_eq!(state.counts().0, 0);
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "bad"}}]}]}
        }))
        .unwrap();
        assert_eq!(
            NetworkPolicy::relist(NetworkPolicy::strip(&np).into_iter().collect())
                .apply(&mut state),
            Some("networkpolicies")
        );
        let entry = state.policies().next().unwrap();
        assert_eq!(entry.problems.len(), 1);
        NetworkPolicy::update(&np, true).apply(&mut state);
        assert_eq!(state.counts().2, 0);
    }

    #[test]
    fn error_kinds_separate_statuses() {
        let status = |code| {
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "NotFound").with_code(code),
            )))
        };
        assert_eq!(error_kind(&status(404)), "list/404");
        assert_ne!(error_kind(&status(404)), error_kind(&status(403)));
        assert_eq!(
            error_kind(&watcher::Error::NoResourceVersion),
            "no resourceVersion"
        );
    }
}
