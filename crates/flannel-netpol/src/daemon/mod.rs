//! The enforcer's runtime: watches → [`ClusterState`] → debounce → compile → plan → apply.
//!
//! [`start`] sets the bridge sysctls, serves `/healthz`, `/readyz` and `/metrics`, builds the
//! API client and starts the three watches; [`Running::run`] is the one task that owns the
//! state. It syncs only once Pods, Namespaces and NetworkPolicies have each been listed
//! completely (until then the kernel keeps whatever an earlier run left, which is the
//! restart rule: reconcile, do not replay). After that, the first change starts a debounce
//! timer (`--sync-debounce-ms`); when it fires, one sync covers every change received
//! meanwhile. A failed sync is retried with a doubling backoff (100 ms .. 30 s); API outages
//! only stop updates, the rules stay. `/readyz` turns 200 after the first successful sync.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flannel_subnet::kube::KubeError;
use flannel_subnet::kube::client::client;
use flanneld::http::{self, Health};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use tokio::sync::{mpsc, watch as signal};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::ClusterState;
use crate::compile::CompileOptions;
use crate::flows::enrich::PodDirectory;
use crate::metrics::Metrics;

pub mod enforcer;
pub mod flows;
pub mod memory;
pub mod sysctl;
pub mod watch;

use enforcer::Enforcer;
use flows::Flows;
use watch::Received;

/// Longest wait between retries of a failed sync.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the drop counters are read into the metrics.
const COUNTER_INTERVAL: Duration = Duration::from_secs(15);

/// What the flags decide.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name: pods with this `spec.nodeName` are the ones protected here.
    pub node: String,
    /// Compile options (NFLOG group).
    pub compile: CompileOptions,
    /// Time from the first change to the sync that covers it.
    pub debounce: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub metrics_addr: SocketAddr,
    /// `--kube-api-url` ("" = from the kubeconfig or in-cluster).
    pub kube_api_url: String,
    /// `--kubeconfig` ("" = `KUBECONFIG`, then in-cluster).
    pub kubeconfig: String,
    /// `--flows`: keep flow records and serve `/flows`.
    pub flows: bool,
    /// `--flow-buffer`: flow records kept.
    pub flow_buffer: usize,
}

/// Why the enforcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The Kubernetes client could not be configured.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The health/metrics server could not bind.
    #[error(transparent)]
    Serve(#[from] std::io::Error),
}

/// The enforcer after start-up: the state's owner.
pub struct Running {
    config: Config,
    health: Health,
    updates: mpsc::Receiver<Received>,
    enforcer: Enforcer,
    /// Per resource, the newest resourceVersion received (published after each good sync).
    seen: BTreeMap<&'static str, u64>,
    /// With `--flows`: the collector, whose pod names are republished before each sync.
    flows: Option<Flows>,
}

/// Start-up steps: sysctls, HTTP server, client, watches.
pub async fn start(
    config: Config,
    shutdown: signal::Receiver<bool>,
) -> Result<Running, DaemonError> {
    sysctl::enable_bridge_netfilter(std::path::Path::new("/"));
    let metrics = Arc::new(Metrics::new());
    let render = metrics.clone();
    let mut health = Health::for_program("flannel-netpol", Some(Arc::new(move || render.render())))
        .with_shed_counter(metrics.http_shed.clone());
    let flows = config.flows.then(|| {
        Flows::start(
            &config.node,
            config.flow_buffer,
            config.compile.nflog_group,
            metrics.flows.clone(),
        )
    });
    if let Some(flows) = &flows {
        health = health.with_routes(flows.route.clone());
    }
    http::serve(config.metrics_addr, health.clone(), shutdown).await?;
    let kubeconfig = if config.kubeconfig.is_empty() {
        std::env::var("KUBECONFIG").unwrap_or_default()
    } else {
        config.kubeconfig.clone()
    };
    let client = client(&config.kube_api_url, &kubeconfig).await?;
    let (tx, updates) = mpsc::channel(1024);
    tokio::spawn(watch::run(
        Api::<Pod>::all(client.clone()),
        tx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(watch::run(
        Api::<Namespace>::all(client.clone()),
        tx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(watch::run(
        Api::<NetworkPolicy>::all(client),
        tx,
        metrics.clone(),
    ));
    info!(
        "flannel-netpol enforcing NetworkPolicy for node {}",
        config.node
    );
    let enforcer = Enforcer::new(config.node.clone(), config.compile.clone(), metrics);
    Ok(Running {
        config,
        health,
        updates,
        enforcer,
        seen: BTreeMap::new(),
        flows,
    })
}

/// When the next sync is due and how long to wait after a failure.
#[derive(Debug)]
struct Schedule {
    due: Option<Instant>,
    backoff: Duration,
}

impl Running {
    /// Runs until `shutdown` turns true; the table stays in the kernel.
    pub async fn run(mut self, mut shutdown: signal::Receiver<bool>) {
        let mut state = ClusterState::new();
        let mut listed: Vec<&'static str> = Vec::new();
        let mut schedule = Schedule {
            due: None,
            backoff: Duration::from_millis(100),
        };
        let mut counters = tokio::time::interval(COUNTER_INTERVAL);
        loop {
            let ready = listed.len() == 3;
            let due = schedule.due.filter(|_| ready);
            tokio::select! {
                _ = shutdown.changed() => break,
                update = self.updates.recv() => {
                    let Some(update) = update else { break };
                    self.on_update(update, &mut state, &mut listed, &mut schedule);
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.on_due(&state, &mut schedule).await;
                }
                _ = counters.tick() => {
                    if let Err(e) = self.enforcer.refresh_counters().await {
                        warn!("reading drop counters: {e}");
                    }
                }
            }
        }
        info!("shutting down; the rules stay in place");
    }

    fn on_update(
        &mut self,
        received: Received,
        state: &mut ClusterState,
        listed: &mut Vec<&'static str>,
        schedule: &mut Schedule,
    ) {
        let Received {
            update,
            resource_version,
        } = received;
        if let Some(rv) = resource_version {
            let seen = self.seen.entry(update.resource()).or_default();
            *seen = (*seen).max(rv);
        }
        if let Some(resource) = update.apply(state)
            && !listed.contains(&resource)
        {
            listed.push(resource);
            if listed.len() == 3 {
                let (pods, namespaces, policies) = state.counts();
                info!(
                    "initial lists complete: {pods} pods, {namespaces} namespaces, {policies} policies"
                );
            }
        }
        if schedule.due.is_none() {
            schedule.due = Some(Instant::now() + self.config.debounce);
        }
    }

    async fn on_due(&mut self, state: &ClusterState, schedule: &mut Schedule) {
        if let Some(flows) = &self.flows {
            flows.directory.publish(PodDirectory::from_state(state));
        }
        match self.enforcer.sync(state).await {
            Ok(stats) => {
                self.enforcer.metrics().synced_versions(&self.seen);
                schedule.due = None;
                schedule.backoff = Duration::from_millis(100);
                if !self.health.is_ready() {
                    info!("first sync done: {stats:?}");
                    self.health.set_ready();
                }
                // Every sync compiles the whole table afresh and frees the previous one; without
                // a trim, glibc keeps the pages of the largest sync resident for good.
                memory::release_freed_memory();
            }
            Err(e) => {
                warn!("sync failed, retrying in {:?}: {e}", schedule.backoff);
                schedule.due = Some(Instant::now() + schedule.backoff);
                schedule.backoff = (schedule.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::PolicyEntry;
    use crate::model::Policy;
    use crate::ruleset::policy_id;
    use crate::testing::{e2e_state, labels};
    use flannel_netlink::netns::{NetnsTarget, run_in_netns};
    use watch::Update;

    fn policy(name: &str) -> PolicyEntry {
        let np = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": name},
            "spec": {"podSelector": {}, "ingress": []}
        }))
        .unwrap();
        let (policy, problems) = Policy::from_api(&np);
        PolicyEntry { policy, problems }
    }

    async fn table() -> crate::nft::ActualTable {
        crate::nft::read_table(&flannel_rules::TokioRunner::default())
            .await
            .unwrap()
    }

    /// Waits (bounded) until the kernel table satisfies `ok`.
    async fn until(what: &str, ok: impl Fn(&crate::nft::ActualTable) -> bool) {
        for _ in 0..100 {
            if ok(&table().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The loop syncs only after all three lists, then follows changes; the kernel keeps the
    /// rules when the loop stops.
    #[test]
    fn the_loop_waits_for_all_lists_then_follows_changes() {
        run_in_netns(NetnsTarget::Fresh, || async {
            let (tx, updates) = mpsc::channel(16);
            let (stop, shutdown) = signal::channel(false);
            let config = Config {
                node: "n1".into(),
                compile: CompileOptions::default(),
                debounce: Duration::from_millis(5),
                metrics_addr: "127.0.0.1:0".parse().unwrap(),
                kube_api_url: String::new(),
                kubeconfig: String::new(),
                flows: true,
                flow_buffer: 16,
            };
            let health = Health::for_program("flannel-netpol", None);
            let metrics = Arc::new(Metrics::new());
            let flows = Flows::start("n1", 16, None, metrics.flows.clone());
            let directory = flows.directory.clone();
            let running = Running {
                enforcer: Enforcer::new("n1".into(), CompileOptions::default(), metrics.clone()),
                config,
                health: health.clone(),
                updates,
                seen: BTreeMap::new(),
                flows: Some(flows),
            };
            let task = tokio::spawn(running.run(shutdown));
            let s = e2e_state();
            tx.send(Update::Pods(s.pods().cloned().collect()).into())
                .await
                .unwrap();
            tx.send(Update::Namespaces(s.namespaces().cloned().collect()).into())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!table().await.exists, "no sync before policies are listed");
            assert!(!health.is_ready());
            tx.send(Received {
                update: Update::Policies(vec![policy("deny")]),
                resource_version: Some(12),
            })
            .await
            .unwrap();
            let sel = format!("{}-sel-v4", policy_id("x", "deny"));
            until("the policy's set", |t| {
                t.sets.get(&sel).is_some_and(|s| s.elements.len() == 2)
            })
            .await;
            assert!(health.is_ready());
            // The sync published the pods' names for flow records.
            assert!(!directory.get().is_empty());
            let synced = |rv: u64| {
                let want = format!(
                    "flannel_netpol_synced_resource_version{{resource=\"networkpolicies\"}} {rv}\n"
                );
                metrics.render().contains(&want)
            };
            assert!(synced(12), "{}", metrics.render());
            tx.send(
                Update::Namespace {
                    name: "w".into(),
                    ns: Some(crate::model::NamespaceInfo {
                        name: "w".into(),
                        labels: labels(&[]),
                    }),
                }
                .into(),
            )
            .await
            .unwrap();
            tx.send(Received {
                update: Update::Policy {
                    namespace: "x".into(),
                    name: "deny".into(),
                    entry: None,
                },
                resource_version: Some(20),
            })
            .await
            .unwrap();
            until("the policy gone", |t| {
                t.exists && !t.sets.contains_key(&sel)
            })
            .await;
            // The gauge moves with the sync that removed the policy (bounded wait: the sync
            // that emptied the set publishes it).
            for _ in 0..100 {
                if synced(20) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(synced(20), "{}", metrics.render());
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .unwrap()
                .unwrap();
            assert!(table().await.exists, "rules stay after shutdown");
        })
        .expect("fresh netns");
    }
}
