//! The Kubernetes subnet manager (`--kube-subnet-mgr`, upstream `pkg/subnet/kube`).
//!
//! In this mode there is no lease allocation: each node's subnet is its `spec.podCIDR(s)`,
//! assigned by the controller-manager (kubeadm `--pod-network-cidr`), and what etcd mode keeps
//! in lease values lives in annotations on the Node object, under `--kube-annotation-prefix`
//! (`flannel.alpha.coreos.com/backend-data`, `.../public-ip`, ...). The network config comes
//! from net-conf.json (`--net-config-path`) and is parsed but not validated, as upstream.
//!
//! * Start-up ([`KubeManager::connect`]): client from `--kubeconfig-file` / `--kube-api-url` /
//!   in-cluster; node name from `NODE_NAME` or the pod named by `POD_NAME`/`POD_NAMESPACE`;
//!   net-conf.json read and parsed. Errors read as upstream's.
//! * [`SubnetManager::acquire_lease`]: GETs our Node, checks its podCIDR(s) against the config
//!   (upstream's messages), and writes our annotations with a strategic-merge PATCH of the
//!   `nodes/<name>/status` subresource (the only write RBAC grants), and only when an
//!   annotation actually changes.
//! * [`SubnetManager::stored_attrs`]: our Node's annotations, so the VXLAN MAC survives
//!   restarts; [`SubnetManager::public_ip_overrides`]: the `node-public-ip(v6)` annotations.
//! * [`SubnetManager::complete_lease`]: the `NetworkUnavailable=False` condition (reason
//!   `FlannelIsUp`) unless `--set-node-network-unavailable=false`.
//! * [`SubnetManager::watch_leases`]: all nodes, decoded compactly ([`peer::PeerNode`]), see
//!   [`watch`].
//! * [`own_node_patches`] / [`KubeManager::own_node_patches`]: how often our Node was written.
//!
//! Leases never expire and are never renewed here (upstream's `RenewLease` is unimplemented).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flannel_types::{
    AnnotationError, AnnotationKeys, ConfigError, IpFamily, Lease, LeaseAttrs, NetConfig,
};
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::info;

use crate::{DatastoreCause, SubnetError, SubnetManager, WatchEvent};

pub mod client;
pub mod event;
pub mod lines;
pub mod node;
pub mod peer;
pub mod refusal;
pub mod token_file;
pub mod watch;

use node::NodeView;

/// Patches of our own Node by every manager of this process (see [`own_node_patches`]).
static OWN_NODE_PATCHES: AtomicU64 = AtomicU64::new(0);

/// How many times this process has patched its own Node (annotations and the
/// NetworkUnavailable condition). Our Node is patched only when a value changes, so this stays
/// at one or two per start; benchmarks read it to show that flanneld adds no write load.
pub fn own_node_patches() -> u64 {
    OWN_NODE_PATCHES.load(Ordering::Relaxed)
}

/// Upstream's default depth of the lease event queue (`EVENT_QUEUE_DEPTH`).
pub const DEFAULT_EVENT_QUEUE_DEPTH: usize = 5000;

/// Why the Kubernetes subnet manager could not be created; texts follow upstream's.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The client configuration could not be built.
    #[error("fail to create kubernetes config: {context}: {source}")]
    Config {
        /// Which configuration source failed (`reading /etc/kubeconfig`, `in-cluster config`).
        context: String,
        /// The parse or read error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client could not be created from the configuration.
    #[error("unable to initialize client: {0}")]
    Client(#[source] kube::Error),
    /// Our node's name is not configured, or the pod names no node.
    #[error("{0}")]
    NodeName(String),
    /// Our pod (`POD_NAMESPACE`/`POD_NAME`) could not be read to find our node's name.
    #[error("error retrieving pod spec for '{pod}': {source}")]
    PodLookup {
        /// `namespace/name`.
        pod: String,
        /// Why the request failed.
        #[source]
        source: DatastoreCause,
    },
    /// net-conf.json could not be read.
    #[error("failed to read net conf: {}: {source}", .path.display())]
    ReadNetConf {
        /// `--net-config-path`.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// net-conf.json is not a valid config.
    #[error("error parsing subnet config: {0}")]
    ParseNetConf(#[source] ConfigError),
    /// `--kube-annotation-prefix` is invalid.
    #[error("error creating network manager: {0}")]
    Prefix(#[from] AnnotationError),
    /// `EVENT_QUEUE_DEPTH` is not a number.
    #[error("error creating network manager: env EVENT_QUEUE_DEPTH={value} format error: {source}")]
    QueueDepth {
        /// The variable's value.
        value: String,
        /// Why it is not a number.
        #[source]
        source: std::num::ParseIntError,
    },
}

/// The flags and environment the manager is built from.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kube-api-url`.
    pub api_url: String,
    /// `--kubeconfig-file`.
    pub kubeconfig: String,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`.
    pub set_node_network_unavailable: bool,
    /// `NODE_NAME`.
    pub node_name: Option<String>,
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `EVENT_QUEUE_DEPTH`.
    pub event_queue_depth: Option<String>,
}

impl KubeOptions {
    /// Fills the environment-derived fields from this process's environment.
    pub fn with_process_env(mut self) -> KubeOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.node_name = var("NODE_NAME");
        self.pod_name = var("POD_NAME");
        self.pod_namespace = var("POD_NAMESPACE");
        self.event_queue_depth = var("EVENT_QUEUE_DEPTH");
        self
    }
}

/// The Kubernetes subnet manager.
#[derive(Clone)]
pub struct KubeManager {
    nodes: Api<Node>,
    node_name: String,
    keys: AnnotationKeys,
    config: NetConfig,
    set_node_network_unavailable: bool,
    queue_depth: usize,
    /// Patches of our Node by this manager and its clones.
    patches: Arc<AtomicU64>,
}

impl std::fmt::Debug for KubeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeManager")
            .field("node_name", &self.node_name)
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

/// Runs one API request with [`client::REQUEST_TIMEOUT`], mapping failures to a datastore
/// error.
async fn request<T>(
    what: &str,
    access: refusal::Access,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, SubnetError> {
    client::within_timeout(access, fut)
        .await
        .map_err(|cause| SubnetError::datastore(what, cause))
}

impl KubeManager {
    /// Connects as upstream's `NewSubnetManager` does (see the module docs for the order).
    pub async fn connect(opts: KubeOptions) -> Result<KubeManager, KubeError> {
        let client = client::client(&opts.api_url, &opts.kubeconfig).await?;
        let node_name = client::node_name(
            &client,
            opts.node_name.as_deref(),
            opts.pod_name.as_deref(),
            opts.pod_namespace.as_deref(),
        )
        .await?;
        Self::with_client(client, node_name, opts)
    }

    /// Builds the manager around an existing client (tests point it at the emulator).
    pub fn with_client(
        client: Client,
        node_name: String,
        opts: KubeOptions,
    ) -> Result<KubeManager, KubeError> {
        let text = std::fs::read_to_string(&opts.net_config_path).map_err(|source| {
            KubeError::ReadNetConf {
                path: opts.net_config_path.clone(),
                source,
            }
        })?;
        let config = NetConfig::parse(&text).map_err(KubeError::ParseNetConf)?;
        let keys = AnnotationKeys::new(&opts.annotation_prefix)?;
        let queue_depth = match opts.event_queue_depth.as_deref() {
            None | Some("") => DEFAULT_EVENT_QUEUE_DEPTH,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n > 0 => usize::try_from(n).unwrap_or(DEFAULT_EVENT_QUEUE_DEPTH),
                Ok(_) => DEFAULT_EVENT_QUEUE_DEPTH,
                Err(source) => {
                    return Err(KubeError::QueueDepth {
                        value: s.to_string(),
                        source,
                    });
                }
            },
        };
        Ok(KubeManager {
            nodes: Api::all(client),
            node_name,
            keys,
            config,
            set_node_network_unavailable: opts.set_node_network_unavailable,
            queue_depth,
            patches: Arc::default(),
        })
    }

    /// Our node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The annotation keys in use.
    pub fn keys(&self) -> &AnnotationKeys {
        &self.keys
    }

    /// How many times this manager (and its clones) patched our Node; see
    /// [`own_node_patches`] for the whole process.
    pub fn own_node_patches(&self) -> u64 {
        self.patches.load(Ordering::Relaxed)
    }

    /// Sends a strategic-merge patch of our Node's status subresource (the only write RBAC
    /// grants) and counts it.
    async fn patch_own_node(
        &self,
        what: String,
        patch: serde_json::Value,
    ) -> Result<(), SubnetError> {
        request(
            &what,
            refusal::Access::new("patch", "nodes/status"),
            self.nodes.patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            ),
        )
        .await?;
        self.patches.fetch_add(1, Ordering::Relaxed);
        OWN_NODE_PATCHES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn own_node(&self) -> Result<Node, SubnetError> {
        request(
            &format!("getting node {:?}", self.node_name),
            refusal::Access::new("get", "nodes"),
            self.nodes.get(&self.node_name),
        )
        .await
    }
}

impl SubnetManager for KubeManager {
    fn name(&self) -> String {
        format!("Kubernetes Subnet Manager - {}", self.node_name)
    }

    async fn network_config(&self) -> Result<NetConfig, SubnetError> {
        Ok(self.config.clone())
    }

    async fn public_ip_overrides(&self) -> Result<(Option<String>, Option<String>), SubnetError> {
        let node = self.own_node().await?;
        let (v4, v6) = node::public_ip_overrides(&NodeView::of(&node), &self.keys);
        for (family, ip) in [(IpFamily::V4, &v4), (IpFamily::V6, &v6)] {
            if let Some(ip) = ip {
                info!(
                    "Using public {} {ip} from node annotation {}",
                    family.pick("IP", "IPv6"),
                    self.keys.family(family).node_public_ip
                );
            }
        }
        Ok((v4, v6))
    }

    async fn stored_attrs(
        &self,
        _public_ip: Option<Ipv4Addr>,
    ) -> Result<Option<LeaseAttrs>, SubnetError> {
        let node = self.own_node().await?;
        Ok(node::stored_attrs(&NodeView::of(&node), &self.keys))
    }

    async fn acquire_lease(
        &self,
        config: &NetConfig,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError> {
        let node = self.own_node().await?;
        let view = NodeView::of(&node);
        // Subnets are checked before anything is written, so a misconfigured node keeps its
        // old annotations.
        let (subnet, ipv6_subnet) = node::own_subnets(&view, config, &attrs.backend_type)
            .map_err(SubnetError::LeaseRejected)?;
        if let Some(changes) = node::annotation_changes(&view, attrs, &self.keys) {
            let patch = json!({ "metadata": { "annotations": changes } });
            info!(
                "patching node {} annotations: {}",
                self.node_name, patch["metadata"]["annotations"]
            );
            self.patch_own_node(format!("failed to patch node {:?}", self.node_name), patch)
                .await?;
        }
        Ok(Lease {
            subnet,
            ipv6_subnet,
            attrs: attrs.clone(),
            expiration: None,
        })
    }

    async fn renew_lease(&self, _lease: &Lease) -> Result<Lease, SubnetError> {
        Err(SubnetError::Unsupported("renewing a lease"))
    }

    async fn complete_lease(&self, _lease: &Lease) -> Result<(), SubnetError> {
        if !self.set_node_network_unavailable {
            return Ok(());
        }
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let condition = NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            reason: Some("FlannelIsUp".into()),
            message: Some("Flannel is running on this node".into()),
            last_transition_time: Some(now.clone()),
            last_heartbeat_time: Some(now),
        };
        let patch = json!({ "status": { "conditions": [condition] } });
        self.patch_own_node(
            format!(
                "setting NetworkUnavailable=False on node {:?}",
                self.node_name
            ),
            patch,
        )
        .await?;
        info!("set NetworkUnavailable=False on node {}", self.node_name);
        Ok(())
    }

    fn watch_leases(&self, _own: &Lease) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(self.queue_depth);
        let leases = watch::NodeLeases::new(
            self.keys.clone(),
            self.config.enable_ipv4,
            self.config.enable_ipv6,
        );
        tokio::spawn(watch::run(self.nodes.clone().into_client(), leases, tx));
        rx
    }
}
