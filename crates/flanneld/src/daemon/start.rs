//! Start-up: the named steps from flags to a ready node, in upstream's order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flannel_netlink::{LinkEvents, Netlink};
use flannel_rules::{Networks, PreviousValues, RuleConfig, RuleManager, Runner, TokioRunner};
use flannel_subnet::{SubnetError, SubnetManager};
use flannel_types::subnet_env::{PreviousSubnetEnv, SubnetEnv, SubnetEnvFamily};
use flannel_types::{FamilyNet, IpStack, Lease, LeaseAttrs, NetConfig};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::blackhole::ensure_blackhole;
use super::running::Running;
use super::{DaemonConfig, DaemonError, sleep_or_shutdown};
use crate::backend::{Backend, BackendEnv, new_backend};
use crate::http::{self, Health};
use crate::iface::{self, ExternalInterface, HostView, Selection};
use crate::metrics::{BuildLabels, Metrics};
use crate::peers::{Cluster, Peers};

/// What the first steps built and the later ones (and the running daemon) need.
pub(super) struct Node {
    /// Every metric, rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness, flipped once subnet.env is written.
    pub health: Health,
    /// The health server's task; it stops with the shutdown signal.
    pub _http: Option<tokio::task::JoinHandle<()>>,
    /// The daemon's netlink connection.
    pub nl: Netlink,
}

/// Brings the node up: health endpoints, network config, interface, backend device, lease,
/// rules, subnet.env, readiness. Returns `None` when a signal arrived while waiting for the
/// datastore.
pub async fn start<M: SubnetManager>(
    config: DaemonConfig,
    manager: M,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Running<M>>, DaemonError> {
    info!("Created subnet manager: {}", manager.name());
    let previous = read_previous(&config.subnet_file);
    let node = serve_health(&config, &shutdown).await?;
    let Some(net) = network_config(&manager, &node.metrics, &mut shutdown).await? else {
        return Ok(None);
    };
    check_stack(&net)?;
    let ext = choose_interface(&node.nl, &manager, &config.selection, net.ip_stack()?).await?;
    let env = BackendEnv {
        nl: node.nl.clone(),
        ext: ext.clone(),
        network: net.network.filter(|_| net.enable_ipv4),
        ipv6_network: net.ipv6_network.filter(|_| net.enable_ipv6),
    };
    let mut backend = new_backend(&net, env)?;
    record_build(&node.metrics, &config, backend.type_name());
    // Subscribe before touching the device, so a deletion in between is not missed.
    let link_events = LinkEvents::subscribe().map_err(|source| DaemonError::Netlink {
        what: "subscribing to link events",
        source,
    })?;
    let attrs = prepare_backend(backend.as_mut(), &manager, &node.metrics, &ext).await?;
    let Some(lease) = acquire_lease(&manager, &net, &attrs, &node.metrics, &mut shutdown).await?
    else {
        return Ok(None);
    };
    backend.configure(&lease).await?;
    let rules = install_rules(&config, &net, &lease, previous.as_ref()).await?;
    if config.blackhole_route {
        ensure_blackhole(&node.nl, &lease).await;
    }
    write_subnet_env(&config, &net, &lease, backend.mtu(), &node.health);
    if let Err(e) = manager.complete_lease(&lease).await {
        warn!("completing the lease: {e}");
    }
    let up = Up {
        peers: Peers::new(&lease, Cluster::from_config(&net), node.metrics.clone()),
        config,
        manager,
        node,
        lease,
        backend,
        rules,
    };
    Ok(Some(Running::new(up, link_events, shutdown)))
}

/// Everything start-up brought up, handed to [`Running`] as one piece.
pub(super) struct Up<M> {
    /// The daemon's settings.
    pub config: DaemonConfig,
    /// The datastore.
    pub manager: M,
    /// Metrics, health, netlink.
    pub node: Node,
    /// Our lease (renewed in etcd mode).
    pub lease: Lease,
    /// The backend net-conf.json chose.
    pub backend: Box<dyn Backend>,
    /// The rule manager of the configured mode.
    pub rules: Box<dyn RuleManager>,
    /// The (still empty) peer set.
    pub peers: Peers,
}

/// The previous run's subnet.env: its families and networks tell the rule managers what to
/// remove when the config changed. Problems are logged, never fatal.
fn read_previous(path: &Path) -> Option<PreviousSubnetEnv> {
    let previous = PreviousSubnetEnv::read(path).unwrap_or_else(|e| {
        warn!("reading the previous subnet file: {e}");
        None
    })?;
    for problem in &previous.problems {
        warn!("previous subnet file: {problem}");
    }
    Some(previous)
}

/// Health endpoints come up first so liveness holds while we wait for the datastore.
async fn serve_health(
    config: &DaemonConfig,
    shutdown: &watch::Receiver<bool>,
) -> Result<Node, DaemonError> {
    let metrics = Arc::new(Metrics::new());
    let render = metrics.clone();
    let health = Health::new(Some(Arc::new(move || render.render())))
        .with_shed_counter(metrics.http_shed.clone());
    let http = match config.healthz {
        Some(addr) => Some(
            http::serve(addr, health.clone(), shutdown.clone())
                .await
                .map_err(DaemonError::Http)?,
        ),
        None => None,
    };
    let nl = Netlink::new().map_err(|source| DaemonError::Netlink {
        what: "netlink",
        source,
    })?;
    Ok(Node {
        metrics,
        health,
        _http: http,
        nl,
    })
}

/// Reads the network config, retrying every second while it is absent or the datastore is
/// unreachable (upstream's getConfig loop). Returns `None` on shutdown.
async fn network_config<M: SubnetManager>(
    manager: &M,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<NetConfig>, DaemonError> {
    loop {
        match manager.network_config().await {
            Ok(c) => return Ok(Some(c)),
            Err(e @ (SubnetError::ConfigNotFound | SubnetError::Datastore { .. })) => {
                warn!("Couldn't fetch network config: {e}");
                if matches!(e, SubnetError::Datastore { .. }) {
                    Metrics::inc(&metrics.datastore_errors, "get config");
                }
            }
            Err(e) => return Err(DaemonError::Config(e)),
        }
        if !sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
            return Ok(None);
        }
    }
}

/// Upstream refuses to start without br_netfilter unless nftables mode is on: pods on one
/// bridge would otherwise bypass iptables.
fn check_stack(net: &NetConfig) -> Result<IpStack, DaemonError> {
    let stack = net.ip_stack()?;
    if !net.enable_nftables {
        let needed = [
            (
                stack.has_ipv4(),
                "/proc/sys/net/bridge/bridge-nf-call-iptables",
            ),
            (
                stack.has_ipv6(),
                "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
            ),
        ];
        for (_, path) in needed.into_iter().filter(|(want, _)| *want) {
            if !Path::new(path).exists() {
                return Err(DaemonError::BrNetfilter(path));
            }
        }
    }
    Ok(stack)
}

/// Picks the external interface. Kube mode: the node-public-ip(v6) annotations replace
/// `--public-ip(v6)` first, as upstream's GetStoredPublicIP (other managers return none); a
/// failed read is logged and the flags are used, as upstream does.
async fn choose_interface<M: SubnetManager>(
    nl: &Netlink,
    manager: &M,
    flags: &Selection,
    stack: IpStack,
) -> Result<ExternalInterface, DaemonError> {
    let (ip_override, ipv6_override) = manager.public_ip_overrides().await.unwrap_or_else(|e| {
        warn!("reading the node's public IP annotations: {e}");
        (None, None)
    });
    let sel = Selection {
        public_ip: ip_override.unwrap_or_else(|| flags.public_ip.clone()),
        public_ipv6: ipv6_override.unwrap_or_else(|| flags.public_ipv6.clone()),
        ..flags.clone()
    };
    let view = HostView::load(nl, sel.iface_can_reach).await?;
    let ext = iface::select(&view, stack, &sel)?;
    if let Some(a) = ext.iface_addr {
        info!("Using interface with name {} and address {a}", ext.name);
    }
    if let Some(a) = ext.iface_v6_addr {
        info!("Using interface with name {} and v6 address {a}", ext.name);
    }
    Ok(ext)
}

fn record_build(metrics: &Metrics, config: &DaemonConfig, backend: &str) {
    metrics
        .build_info
        .get_or_create(&BuildLabels {
            version: crate::cli::VERSION.to_string(),
            datastore: config.datastore.as_str().to_string(),
            backend: backend.to_string(),
        })
        .set(1);
}

/// Creates or adopts the backend's device, reusing what the datastore remembers of this node
/// (the VTEP MAC), and returns the attributes to publish.
async fn prepare_backend<M: SubnetManager>(
    backend: &mut dyn Backend,
    manager: &M,
    metrics: &Metrics,
    ext: &ExternalInterface,
) -> Result<LeaseAttrs, DaemonError> {
    let stored = match manager.stored_attrs(ext.ext_addr).await {
        Ok(s) => s,
        Err(e) => {
            Metrics::inc(&metrics.datastore_errors, "get stored attributes");
            warn!("could not read this node's stored lease attributes: {e}");
            None
        }
    };
    Ok(backend.prepare(stored.as_ref()).await?)
}

/// Acquires our lease, retrying datastore outages and exhaustion with backoff (upstream exits;
/// a crash loop helps nobody). Returns `None` on shutdown.
async fn acquire_lease<M: SubnetManager>(
    manager: &M,
    net: &NetConfig,
    attrs: &LeaseAttrs,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Lease>, DaemonError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match manager.acquire_lease(net, attrs).await {
            Ok(lease) => {
                info!(
                    "Acquired lease {} (public IP {})",
                    lease.key(),
                    lease.attrs.public_ip
                );
                super::running::record_lease(metrics, &lease);
                return Ok(Some(lease));
            }
            Err(e @ (SubnetError::Datastore { .. } | SubnetError::OutOfSubnets)) => {
                Metrics::inc(&metrics.datastore_errors, "acquire lease");
                error!("failed to acquire lease: {e}; retrying in {backoff:?}");
            }
            Err(e) => return Err(DaemonError::Subnet(e)),
        }
        if !sleep_or_shutdown(backoff, shutdown).await {
            return Ok(None);
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The rule manager's view of our networks and the previous run's.
fn rule_config(
    config: &DaemonConfig,
    net: &NetConfig,
    lease: &Lease,
    previous: Option<&PreviousSubnetEnv>,
) -> RuleConfig {
    let v4 = match (net.network, lease.subnet) {
        (Some(n), Some(s)) if net.enable_ipv4 => Some(Networks::v4(n, s)),
        _ => None,
    };
    let v6 = match (net.ipv6_network, lease.ipv6_subnet) {
        (Some(n), Some(s)) if net.enable_ipv6 => Some(Networks::v6(n, s)),
        _ => None,
    };
    let previous = previous.map(|p| PreviousValues {
        v4: p.network().zip(p.subnet).map(|(n, s)| Networks::v4(n, s)),
        v6: p
            .ipv6_network()
            .zip(p.ipv6_subnet)
            .map(|(n, s)| Networks::v6(n, s)),
    });
    RuleConfig {
        v4,
        v6,
        ip_masq: config.ip_masq,
        forward_rules: config.forward_rules,
        random_fully_disabled: config.ip_masq_fully_random_disable,
        previous: previous.unwrap_or_default(),
    }
}

/// Removes what the other rule mode left, then installs masquerade and forward rules (each
/// manager also removes its own stale rules of families or flags no longer configured).
async fn install_rules(
    config: &DaemonConfig,
    net: &NetConfig,
    lease: &Lease,
    previous: Option<&PreviousSubnetEnv>,
) -> Result<Box<dyn RuleManager>, DaemonError> {
    let rules_cfg = rule_config(config, net, lease, previous);
    let runner: Arc<dyn Runner> = Arc::new(TokioRunner::default());
    let rules = flannel_rules::new_rule_manager(net.enable_nftables, rules_cfg, runner.clone());
    let step = |what| move |source| DaemonError::Rules { what, source };
    // Upstream does the same with a manager of the other kind: whatever a switch of
    // `EnableNFTables` left behind is removed before our rules go in.
    flannel_rules::new_rule_manager(!net.enable_nftables, rules_cfg, runner)
        .remove_all()
        .await
        .map_err(step("Failed to clean-up the other mode's rules"))?;
    if config.ip_masq {
        rules
            .install_masquerade()
            .await
            .map_err(step("Failed to setup IP Masquerade"))?;
    }
    if config.forward_rules {
        info!("Changing default FORWARD chain policy to ACCEPT");
    }
    rules
        .install_forward()
        .await
        .map_err(step("Failed to setup forward rules"))?;
    Ok(rules)
}

/// The subnet.env contents for our lease.
pub fn subnet_env(config: &NetConfig, lease: &Lease, mtu: u32, ip_masq: bool) -> SubnetEnv {
    SubnetEnv {
        ipv4: subnet_env_family::<Ipv4Net>(config, lease),
        ipv6: subnet_env_family::<Ipv6Net>(config, lease),
        mtu,
        ip_masq,
    }
}

/// One family's lines of subnet.env: present when the family is enabled and we hold a subnet
/// of it.
fn subnet_env_family<N: FamilyNet>(
    config: &NetConfig,
    lease: &Lease,
) -> Option<SubnetEnvFamily<N>> {
    let family = config.family::<N>();
    Some(SubnetEnvFamily {
        network: family.network.filter(|_| family.enabled)?,
        subnet: N::from_ip_net(lease.subnet_of(N::FAMILY)?)?,
    })
}

/// Writes subnet.env atomically, then reports ready. Upstream keeps running but never becomes
/// ready when the file cannot be written; so do we.
fn write_subnet_env(
    config: &DaemonConfig,
    net: &NetConfig,
    lease: &Lease,
    mtu: u32,
    health: &Health,
) {
    let env_file = subnet_env(net, lease, mtu, config.ip_masq);
    if let Err(e) = env_file.write_atomic(&config.subnet_file) {
        warn!("Failed to write subnet file: {e}");
        return;
    }
    info!("Wrote subnet file to {}", config.subnet_file.display());
    health.set_ready();
    info!("flannel is ready");
    match crate::notify::ready() {
        Ok(true) => debug!("sent READY=1 to systemd"),
        Ok(false) => {}
        Err(e) => warn!("sd_notify failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_types::LeaseAttrs;

    #[test]
    fn subnet_env_follows_enabled_families() {
        let config =
            NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let lease = Lease {
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        let env = subnet_env(&config, &lease, 1450, true);
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn rule_config_takes_enabled_families_and_the_previous_run() {
        let net = NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let lease = Lease {
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:0:3::/64".parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        let opts = crate::cli::parse_from(Vec::<String>::new(), |_| None).unwrap();
        let c = rule_config(&DaemonConfig::from(&opts), &net, &lease, None);
        assert_eq!(
            c.v4.map(|n| n.subnet.to_string()).as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(
            c.v6.map(|n| n.network.to_string()).as_deref(),
            Some("fd00:10::/56")
        );
        assert_eq!(c.previous, PreviousValues::default());
    }
}
