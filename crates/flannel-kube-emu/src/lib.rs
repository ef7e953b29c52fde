//! `flannel-kube-emu`: a small, in-memory **emulator** of the Kubernetes API for flannel-rs tests
//! and the lab. It is not an API server and makes no attempt to be one; it serves the objects a
//! cluster running kube-flannel shows (`v1` Namespace, Node, Pod, ConfigMap and
//! ServiceAccount, `apps/v1` DaemonSet, `networking.k8s.io/v1` NetworkPolicy, the RBAC kinds)
//! over plain HTTP, or over HTTPS with bearer tokens and RBAC as a production cluster serves
//! them (see *Access control*), with the semantics flanneld's Kubernetes subnet manager relies
//! on and what real `kubectl` needs to look at a lab, so both can be tested end to end on a
//! machine where no API server can run. Real clients are the judges: kube-rs (flanneld) and
//! kubectl v1.34 are tested against it.
//!
//! # What is emulated
//! * **Objects**: `v1/Namespace` and `v1/Node` (cluster-scoped), `v1/Pod`, `v1/ConfigMap`,
//!   `v1/ServiceAccount`, `apps/v1/DaemonSet` and `networking.k8s.io/v1/NetworkPolicy`
//!   (namespaced), `rbac.authorization.k8s.io/v1` ClusterRole and ClusterRoleBinding
//!   (cluster-scoped), Role and RoleBinding (namespaced), stored as JSON. The server stamps `kind`, `apiVersion`, `metadata.uid`,
//!   `metadata.creationTimestamp` and `metadata.resourceVersion` (and a DaemonSet's or a
//!   NetworkPolicy's `metadata.generation`); clients cannot change them. A create with
//!   `metadata.generateName` and no name gets the prefix and five random characters, as from
//!   the API server. The namespaces `default`, `kube-flannel`, `kube-node-lease`,
//!   `kube-public` and `kube-system` exist from the start.
//! * **Discovery**: `/version`; `/api`, `/apis` in the aggregated form
//!   (`apidiscovery.k8s.io/v2`, chosen by the `Accept` header as kubectl asks for it) and the
//!   legacy one (`APIVersions`, `APIGroupList` with the `apps`, `authentication.k8s.io`,
//!   `authorization.k8s.io`, `networking.k8s.io` and `rbac.authorization.k8s.io` groups); `/api/v1` and `/apis/<group>/v1`
//!   (`APIResourceList`), `/apis/<group>` (`APIGroup`). See [`discovery`].
//! * **Tables**: a GET, list or watch whose `Accept` asks for `as=Table` (`meta.k8s.io` `v1`
//!   or `v1beta1`) gets the API server's server-side printing: the columns and cells of
//!   `kubectl get` (`-o wide` included) for every kind, and `includeObject`; a watch sends
//!   column definitions with its first event only. See [`table`]. An `Accept` header naming
//!   nothing servable is `406`.
//! * **resourceVersion**: one global counter shared by all objects, bumped by every write that
//!   changes something (like etcd's revision). A write that changes nothing (same patch twice)
//!   bumps nothing and produces no watch event, as on a real server.
//! * **GET** of one object; **list** (`GET /api/v1/nodes`, `/api/v1/namespaces`,
//!   `/api/v1/namespaces/<ns>/pods`, `/api/v1/pods`, `/api/v1/namespaces/<ns>/configmaps`,
//!   `/apis/apps/v1/namespaces/<ns>/daemonsets`, `/apis/apps/v1/daemonsets`, ...) with
//!   `resourceVersion` (unset, `0` or `N`: the current state; `N` newer than the server:
//!   `504 Too large resource version`), `resourceVersionMatch=Exact` (only for the current RV,
//!   else 410), `limit` and `continue` (pages come from a snapshot taken at the first page; a
//!   token whose snapshot was compacted gets `410 Expired`), `labelSelector` (`=`, `==`, `!=`,
//!   `in`, `notin`, exists, `!`, `>`, `<`) and `fieldSelector` (`=`, `==`, `!=` on the field
//!   labels the server supports per resource, others `400 field label not supported`; see
//!   [`selector`]). List items carry no `kind`/`apiVersion`, as the real server sends them.
//! * **watch** (`?watch=1`): a chunked stream of JSON lines `{"type":...,"object":...}` with
//!   `ADDED`/`MODIFIED`/`DELETED`; from `resourceVersion=N` it replays every retained change
//!   after `N`; without one (or `0`) it starts with synthetic `ADDED`s of the current objects.
//!   With a selector, a change that moves an object into (out of) the selection arrives as
//!   `ADDED` (`DELETED`), as from the watch cache. `allowWatchBookmarks=true` adds periodic
//!   `BOOKMARK` events carrying the latest RV the stream has passed. `timeoutSeconds` ends the
//!   stream cleanly. A watch from an RV older than the retained history gets `200` and a
//!   single `ERROR` event with a `410 Expired` Status ("too old resource version"), as the
//!   watch cache does. The history window is small and configurable so tests can force this.
//! * **writes**: `POST` (create; `201`; `409 AlreadyExists`; an object in a namespace that does
//!   not exist is `404 namespaces "x" not found`), `PUT` (replace; a stale
//!   `metadata.resourceVersion` gets `409 Conflict`), `PATCH` with
//!   `application/merge-patch+json` and `application/strategic-merge-patch+json` (see
//!   [`patch`]: lists merge by the API types' `patchMergeKey`, e.g. Node `status.conditions` by
//!   `type`, a DaemonSet template's containers by `name`; `$retainKeys` clears the rest of a
//!   union; a `metadata.resourceVersion` in the patch is a precondition), `DELETE` (at once; a
//!   namespace takes everything in it along; `default`, `kube-system`, `kube-public` are
//!   `403 Forbidden`). Deleting an object deletes the objects whose `ownerReferences` name it
//!   (the garbage collector's background deletion: a DaemonSet takes its pods), or with
//!   `propagationPolicy: Orphan` (`kubectl delete --cascade=orphan`) leaves them without the
//!   reference.
//! * **subresource `status`** for every kind that has a status (a ConfigMap and a
//!   NetworkPolicy have none): writes
//!   to `<resource>/<n>/status` keep the stored `spec` (metadata changes are kept: that is how
//!   flanneld writes its annotations with only `nodes/status: patch` permission); writes to the
//!   object keep the stored `status`.
//! * **per-kind rules** (see [`strategy`]): Node `spec.podCIDR` and `spec.podCIDRs[0]` kept in
//!   sync, each a CIDR, at most two of different families, podCIDR changes only from empty to
//!   set (`422 Invalid` otherwise); a new Pod starts `Pending` with its QoS class whatever
//!   status it was sent (the kubelet reports the rest through `pods/<n>/status`), and its spec
//!   may then change only in images, `activeDeadlineSeconds` and added tolerations; a
//!   Namespace is `Active` with the `kubernetes` finalizer and the
//!   `kubernetes.io/metadata.name` label; a ConfigMap holds strings under config keys, at most
//!   1 MiB, and keeps its data once `immutable` ([`configmap`]); a DaemonSet gets its update
//!   strategy and history limit defaulted, `metadata.generation` and the template generation
//!   annotation counted by the server, an empty status to start with, and a required,
//!   immutable selector that must select its template ([`daemonset`]); a NetworkPolicy gets
//!   its pod selector, port protocols and policy types defaulted and is validated as the API
//!   server validates it ([`networkpolicy`]); RBAC rules need verbs and either API groups
//!   with resources or (ClusterRoles only) non-resource URLs, a binding's `roleRef` names a
//!   supported kind and cannot change ([`rbac::objects`]); names must be RFC 1123
//!   labels (namespaces), path segments (the RBAC kinds: `system:basic-user`) or subdomains
//!   (the other kinds).
//! * **errors** as `Status` objects with the real `code`, `reason` and message wording
//!   (`nodes "x" not found`, `daemonsets.apps "x" not found`, `Node "x" is invalid: ...`,
//!   ...).
//!
//! No controller runs: a DaemonSet's pods and status are whatever clients write (the lab writes
//! them as the DaemonSet controller and the kubelets would).
//!
//! # Access control
//! With none of the flags below (the default [`Security`]) the emulator serves plain HTTP and
//! checks nothing, as it always did. With them ([`Emulator::with_security`]):
//! * **HTTPS** (`--tls-cert-file`, `--tls-private-key-file`: PEM; rustls with ring, TLS 1.2
//!   and 1.3, ALPN `http/1.1`) instead of HTTP; [`Server::url`] says `https://`. A file that
//!   cannot be used stops the server with its name (`reading /x/k.pem`, `/x/c.pem: no
//!   certificate found in PEM`). See [`tls`].
//! * **Bearer tokens** (`Authorization: Bearer <token>`, see [`auth`]): the static tokens of
//!   kube-apiserver's `--token-auth-file` (`token,user,uid,"group1,group2"`), and
//!   ServiceAccount tokens from the TokenRequest API (`POST
//!   /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, JSON or the protobuf `kubectl
//!   create token` sends: `201`, `spec.expirationSeconds` default 3600, at least 600, else
//!   `422`; `404` without the account). These tokens are opaque random strings, not JWTs;
//!   their user is `system:serviceaccount:<ns>:<name>` in `system:serviceaccounts`,
//!   `system:serviceaccounts:<ns>` and `system:authenticated`. A token stops working when it
//!   expires, when its ServiceAccount is deleted (a new one of the same name does not revive
//!   it) or when revoked (`POST /emu/revoke-token`, [`Emulator::revoke_token`]). A request
//!   is authenticated when it starts: an open watch outlives its token, as on the API server.
//!   A bad, expired or revoked token gets `401` with the Status `Unauthorized`, as does a
//!   request without one when `--anonymous-auth=false`; otherwise (the default, true) it is
//!   `system:anonymous` in `system:unauthenticated`.
//! * **Authorization** (`--authorization-mode AlwaysAllow|RBAC`, see [`rbac`]): RBAC reads
//!   ClusterRoles, Roles and their bindings at each request (a change applies to the next
//!   one): verbs from the request (`get`, `list`, `watch`, `create`, `update`, `patch`,
//!   `delete`, `deletecollection`), resources with subresources (`nodes/status`), API
//!   groups, `resourceNames`, `*`, non-resource URLs with a trailing `*`, User, Group and
//!   ServiceAccount subjects; `system:masters` may do anything. It starts with the bootstrap
//!   objects a kubeadm cluster has ([`rbac::bootstrap`]: `cluster-admin` for
//!   `system:masters`, `system:discovery`, `system:basic-user`, `system:public-info-viewer`).
//!   A refusal is `403` worded as the API server words it: `nodes "n1" is forbidden: User
//!   "system:serviceaccount:kube-flannel:flannel" cannot patch resource "nodes" in API group
//!   "" at the cluster scope`, `... in the namespace "default"`, `forbidden: User "x" cannot
//!   get path "/metrics"`, with `: RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`
//!   appended when a binding of the user names a missing role.
//! * **Reviews**: `SelfSubjectReview` (`kubectl auth whoami`) and `SelfSubjectAccessReview`
//!   (`kubectl auth can-i`), JSON or protobuf, answered by the same authentication and
//!   authorizer (see [`discovery`] for their groups).
//! * The `/emu/` controls need `system:masters` whenever requests are authenticated.
//!
//! # What is not emulated
//! Client certificates, JWT service account tokens, OIDC, webhooks and impersonation; the
//! audiences of a token are not checked; RBAC's escalation checks (`escalate`, `bind`),
//! aggregated ClusterRoles and the Node authorizer; admission beyond namespace lifecycle, defaulting beyond what is listed above (pods and
//! pod templates get no `restartPolicy`, `dnsPolicy`, service account, ...), controllers (no
//! DaemonSet controller, no `default` ServiceAccount and no `kube-root-ca.crt` ConfigMap in
//! each namespace: the emulator does not know the CA that signed its certificate),
//! finalizers and graceful deletion (`deletionTimestamp` is never set), `deletecollection`,
//! JSON patch and server-side apply (415), protobuf and CBOR (406; 415 for request bodies
//! except the TokenRequest and SelfSubjectAccessReview), OpenAPI (`/openapi/v2`,
//! `/openapi/v3`: 404, so `kubectl create -f`/`apply -f` need `--validate=false`),
//! `sendInitialEvents` streaming lists (400), `managedFields`, `metadata.generation` of kinds
//! other than DaemonSet and NetworkPolicy, ControllerRevisions and every other resource and API group,
//! historical reads (`resourceVersionMatch=Exact` at an old RV), and element order in
//! strategic merge patches.
//!
//! # Test controls
//! Besides the library API ([`Emulator`]), the server answers under `/emu/`:
//! `POST /emu/drop-watches` (abort every open watch connection, as a network failure or an API
//! server restart would), `POST /emu/expire-watches` (send `ERROR 410` on every open watch and
//! compact, so resuming fails too), `POST /emu/compact`, `PUT /emu/history` (body: a number),
//! `PUT /emu/nodes/<n>/pod-cidrs` (body: a JSON list; bypasses validation, see
//! [`Store::force_pod_cidrs`]), `POST /emu/revoke-token` (body `{"token": "..."}`; answers
//! `{"revoked": true}`, or `false` for a token never issued), `POST /emu/churn/annotations` (body `{"count": K}`: K
//! generated nodes get a new VtepMAC at once; the answer names them, their new MACs and
//! resourceVersions, and `unixNanos`, the wall-clock time just before the first commit) and
//! `GET /emu/state`.
//!
//! # Scale tests
//! [`Emulator::generate_nodes`] (`--generate-nodes N --generate-network CIDR`) creates N nodes
//! as a kube-flannel cluster shows them, each about 10 KiB of JSON (see [`generate`]);
//! [`Emulator::start_churn`] (`--heartbeat-interval`, `--annotation-churn`,
//! `--annotation-churn-interval`) makes them change as kubelets and flanneld agents would (see
//! [`churn`]). `GET /metrics` serves request counters per verb, resource and subresource, with
//! response bytes and watch events, in Prometheus text (see [`Emulator::request_counts`]).

#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod auth;
pub mod churn;
pub mod configmap;
pub mod daemonset;
pub mod discovery;
mod gate;
pub mod generate;
mod metrics;
pub mod networkpolicy;
pub mod patch;
mod protobuf;
pub mod rbac;
mod review;
pub mod selector;
mod server;
pub mod status;
pub mod store;
pub mod strategy;
pub mod table;
pub mod tls;
mod token_request;
mod watch_stream;

pub use auth::{StaticToken, UserInfo};
pub use churn::{AnnotationChange, AnnotationChurn, Churn, ChurnOptions};
pub use generate::GenerateOptions;
pub use metrics::{RequestCount, RequestLabels};
pub use selector::Selector;
pub use status::ApiError;
pub use store::{Kind, ListQuery, PatchType, Propagation, Store, StoreConfig, Subresource};
pub use tls::{TlsError, TlsIdentity};

/// Emulator settings.
#[derive(Debug, Clone, Copy)]
pub struct EmuConfig {
    /// How many changes are retained for resuming watches (see [`StoreConfig::history`]).
    pub history: usize,
    /// How often open watches with `allowWatchBookmarks=true` get a `BOOKMARK`.
    pub bookmark_interval: Duration,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            history: 1000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// How requests are authorized (`--authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationMode {
    /// `AlwaysAllow` (the default): every request that authenticated may do anything.
    #[default]
    AlwaysAllow,
    /// `RBAC`: Roles, ClusterRoles and their bindings decide, as on a kubeadm cluster.
    Rbac,
}

/// Transport and access control, as kube-apiserver's flags configure them. The default is the
/// emulator's historical behaviour: plain HTTP, no authentication, everything allowed.
#[derive(Debug, Clone)]
pub struct Security {
    /// Serve HTTPS with this identity (`--tls-cert-file`, `--tls-private-key-file`).
    pub tls: Option<TlsIdentity>,
    /// Static bearer tokens (`--token-auth-file`).
    pub tokens: Vec<StaticToken>,
    /// Requests without credentials are `system:anonymous` (`--anonymous-auth`, default
    /// true); when false they get 401.
    pub anonymous_auth: bool,
    /// `--authorization-mode`.
    pub authorization: AuthorizationMode,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            tls: None,
            tokens: Vec::new(),
            anonymous_auth: true,
            authorization: AuthorizationMode::AlwaysAllow,
        }
    }
}

impl Security {
    /// Whether requests are authenticated at all: with static tokens, without anonymous
    /// access or with RBAC. Otherwise (the default) credentials are ignored as they always
    /// were, and the `/emu/` controls are open to all.
    pub fn authenticates(&self) -> bool {
        !self.tokens.is_empty()
            || !self.anonymous_auth
            || self.authorization != AuthorizationMode::AlwaysAllow
    }
}

/// Signals to open watches; each counter bump is one command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Control {
    pub drops: u64,
    pub expiries: u64,
}

pub(crate) struct Inner {
    pub store: Mutex<Store>,
    pub control: watch::Sender<Control>,
    pub config: EmuConfig,
    pub security: Security,
    /// Static, issued and revoked bearer tokens.
    pub tokens: Mutex<auth::Tokens>,
    pub watchers: AtomicUsize,
    pub stats: StatCounters,
    pub metrics: metrics::Metrics,
    /// The names of the nodes [`Emulator::generate_nodes`] made, in order (churn's targets).
    pub generated: Mutex<Arc<Vec<String>>>,
    /// Annotation changes made so far (picks the next node and its new VtepMAC).
    pub churn_seq: AtomicU64,
}

#[derive(Default)]
pub(crate) struct StatCounters {
    pub lists: AtomicU64,
    pub watches: AtomicU64,
    pub expired: AtomicU64,
}

/// Request counters, so tests can check that a client really re-listed or resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests served (each page counts).
    pub lists: u64,
    /// Watch streams opened.
    pub watches: u64,
    /// `ERROR 410 Expired` events sent on watch streams.
    pub expired: u64,
}

/// The emulator: a shared store plus watch controls. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("resource_version", &self.resource_version())
            .field("watchers", &self.watcher_count())
            .finish()
    }
}

/// A running HTTP(S) server; stops accepting and closes its connections when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for clients (`http://127.0.0.1:PORT`, `https://...` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

impl Emulator {
    /// An empty emulator, plain HTTP without authentication.
    pub fn new(config: EmuConfig) -> Emulator {
        Emulator::with_security(config, Security::default())
    }

    /// An empty emulator serving and checking requests as `security` says.
    pub fn with_security(config: EmuConfig, security: Security) -> Emulator {
        let (control, _) = watch::channel(Control::default());
        let tokens = Mutex::new(auth::Tokens::new(&security.tokens));
        let mut store = Store::new(StoreConfig {
            history: config.history,
        });
        if security.authorization == AuthorizationMode::Rbac {
            rbac::bootstrap::seed(&mut store);
        }
        Emulator {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                control,
                config,
                security,
                tokens,
                watchers: AtomicUsize::new(0),
                stats: StatCounters::default(),
                metrics: metrics::Metrics::default(),
                generated: Mutex::new(Arc::new(Vec::new())),
                churn_seq: AtomicU64::new(0),
            }),
        }
    }

    /// Serves HTTP (HTTPS when [`Security::tls`] is set) on `listener` in a background task.
    pub fn serve(&self, listener: TcpListener) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(server::accept_loop(self.clone(), listener, rx));
        Ok(Server {
            addr,
            scheme: if self.inner.security.tls.is_some() {
                "https"
            } else {
                "http"
            },
            shutdown,
            task,
        })
    }

    /// Binds `addr` (port 0 picks a free port) and serves on it.
    pub async fn start(&self, addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        self.serve(listener)
    }

    pub(crate) fn tokens(&self) -> MutexGuard<'_, auth::Tokens> {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Revokes a bearer token (static or issued): requests that start from now on get 401,
    /// open watches go on. `false` if the token was never valid here.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.tokens().revoke(token)
    }

    /// The user a bearer token authenticates now, `None` if it does not (401).
    pub fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        let store = self.store();
        self.tokens()
            .authenticate(token, std::time::SystemTime::now(), |ns, name| {
                store.account_uid(ns, name)
            })
    }

    /// Runs `f` on the store under its lock (for tests that need more than the helpers).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.store())
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a node (as `POST /api/v1/nodes`).
    pub fn create_node(&self, node: Value) -> Result<Value, ApiError> {
        self.store().create_node(node)
    }

    /// Creates a node with a name, pod CIDRs (the first one is also `spec.podCIDR`) and
    /// annotations, as kubeadm's node registration plus the CIDR allocator leave it.
    pub fn add_node(
        &self,
        name: &str,
        pod_cidrs: &[&str],
        annotations: Value,
    ) -> Result<Value, ApiError> {
        let mut spec = json!({});
        if let Some(first) = pod_cidrs.first() {
            spec = json!({ "podCIDR": first, "podCIDRs": pod_cidrs });
        }
        self.create_node(json!({
            "metadata": { "name": name, "annotations": annotations },
            "spec": spec,
            "status": { "conditions": [
                { "type": "Ready", "status": "True", "reason": "KubeletReady" }
            ] }
        }))
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.store().get_node(name).ok()
    }

    /// Names of all nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.store().node_names()
    }

    /// Patches a node (as `PATCH /api/v1/nodes/<name>[/status]`).
    pub fn patch_node(
        &self,
        name: &str,
        patch: &Value,
        patch_type: PatchType,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        self.store().patch_node(name, patch, patch_type, sub)
    }

    /// Deletes a node.
    pub fn delete_node(&self, name: &str) -> Result<Value, ApiError> {
        self.store().delete_node(name)
    }

    /// Sets a node's pod CIDRs bypassing validation (see [`Store::force_pod_cidrs`]).
    pub fn force_pod_cidrs(&self, name: &str, cidrs: &[&str]) -> Result<Value, ApiError> {
        let cidrs: Vec<String> = cidrs.iter().map(|s| s.to_string()).collect();
        self.store().force_pod_cidrs(name, &cidrs)
    }

    /// Creates a pod in `namespace` (as `POST /api/v1/namespaces/<ns>/pods`): it starts
    /// `Pending`, whatever status it carries (a kubelet reports the rest with
    /// [`Store::patch`] and [`Subresource::Status`]).
    pub fn create_pod(&self, namespace: &str, pod: Value) -> Result<Value, ApiError> {
        self.store().create_pod(namespace, pod)
    }

    /// Creates an object of any kind (`namespace` empty for cluster-scoped kinds).
    pub fn create(&self, kind: Kind, namespace: &str, obj: Value) -> Result<Value, ApiError> {
        self.store().create(kind, namespace, obj)
    }

    /// The object `name` of `kind`.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.store().get(kind, namespace, name).ok()
    }

    /// Deletes an object of any kind.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.store().delete(kind, namespace, name)
    }

    /// Names of all objects of `kind`, in list order.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.store().names(kind)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    /// Aborts every open watch connection mid-stream (no clean end of the chunked body), as a
    /// network failure or an API server restart does.
    pub fn drop_watches(&self) {
        self.inner.control.send_modify(|c| c.drops += 1);
    }

    /// Sends `ERROR 410 Expired` on every open watch and compacts the history, so clients
    /// must re-list: the situation after an etcd compaction or a long disconnection.
    pub fn expire_watches(&self) {
        self.store().compact();
        self.inner.control.send_modify(|c| c.expiries += 1);
    }

    /// Compacts the history at the current RV (see [`Store::compact`]).
    pub fn compact(&self) {
        self.store().compact();
    }

    /// Changes the history window.
    pub fn set_history(&self, limit: usize) {
        self.store().set_history(limit);
    }

    /// How many watch streams are open.
    pub fn watcher_count(&self) -> usize {
        self.inner.watchers.load(Ordering::SeqCst)
    }

    /// Creates `opts.nodes` generated nodes (see [`generate`]) and makes them the targets of
    /// churn. Fails if the network has too few /24s or a name is taken.
    pub fn generate_nodes(&self, opts: &GenerateOptions) -> Result<(), ApiError> {
        if opts.nodes > opts.capacity() {
            return Err(ApiError::bad_request(format!(
                "{} holds {} /24s besides the first, not {}",
                opts.network,
                opts.capacity(),
                opts.nodes
            )));
        }
        let mut names = Vec::with_capacity(opts.nodes);
        let mut store = self.store();
        for i in 0..opts.nodes {
            store.create_node(generate::node(i, opts.network))?;
            names.push(generate::node_name(i));
        }
        drop(store);
        let mut generated = self
            .inner
            .generated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all = generated.as_ref().clone();
        all.extend(names);
        *generated = Arc::new(all);
        Ok(())
    }

    /// The names of the generated nodes.
    pub fn generated_names(&self) -> Arc<Vec<String>> {
        Arc::clone(
            &self
                .inner
                .generated
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Request counters per verb, resource and subresource since start (what `GET /metrics`
    /// serves).
    pub fn request_counts(&self) -> std::collections::BTreeMap<RequestLabels, RequestCount> {
        self.inner.metrics.snapshot()
    }

    /// Request counters since start.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        Stats {
            lists: s.lists.load(Ordering::SeqCst),
            watches: s.watches.load(Ordering::SeqCst),
            expired: s.expired.load(Ordering::SeqCst),
        }
    }

    /// A summary for `/emu/state` and test diagnostics.
    pub fn state(&self) -> Value {
        let s = self.store();
        json!({
            "resourceVersion": s.resource_version(),
            "compactedResourceVersion": s.compacted(),
            "namespaces": s.names(Kind::Namespace),
            "nodes": s.node_names(),
            "pods": s.names(Kind::Pod).len(),
            "configmaps": s.names(Kind::ConfigMap).len(),
            "daemonsets": s.names(Kind::DaemonSet).len(),
            "networkpolicies": s.names(Kind::NetworkPolicy).len(),
            "watchers": self.watcher_count(),
            "stats": {
                "lists": self.stats().lists,
                "watches": self.stats().watches,
                "expired": self.stats().expired,
            },
        })
    }
}
