//! What `flannel-observe` does once its flags are parsed: find the nodes, ask them, print.
//!
//! In the library so the binary stays a shell (flags, runtime, signals) and the printing can
//! be driven against any writer. One node that cannot be reached never hides the others:
//! its error goes to stderr naming it, the rest is printed, and the exit status is 1 only
//! when no node answered at all.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use flannel_subnet::kube::KubeError;
use flannel_subnet::kube::client::client;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;

use crate::flows::cli::{NodeEndpoint, ObserveArgs, OutputFormat};
use crate::flows::client::{query_all, render_table};
use crate::flows::filter::FlowFilter;
use crate::flows::follow::follow;
use crate::flows::record::FlowRecord;

/// Why the nodes could not be listed from the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The client configuration (kubeconfig, in-cluster) could not be built.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// Listing Nodes failed.
    #[error("listing nodes in the Kubernetes API: {0}")]
    List(#[source] kube::Error),
    /// The API listed no node with an InternalIP address.
    #[error(
        "the Kubernetes API lists no node with an InternalIP address{0}; name them with --node NAME=HOST:PORT"
    )]
    NoNodes(String),
}

/// Node `node`'s `/flows` endpoint: its first InternalIP (IPv4 preferred, as the enforcer's
/// default bind address is IPv4) and `port`; `None` without one.
pub fn node_endpoint(node: &Node, port: u16) -> Option<NodeEndpoint> {
    let name = node.metadata.name.clone()?;
    let ips: Vec<IpAddr> = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let ip = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()?;
    Some(NodeEndpoint {
        name,
        addr: SocketAddr::new(ip, port),
    })
}

/// Every node the API lists, with its `/flows` endpoint on `port`; nodes without an
/// InternalIP are named in the second list (skipped, not fatal).
pub async fn discover_nodes(
    kube_api_url: &str,
    kubeconfig: &str,
    port: u16,
) -> Result<(Vec<NodeEndpoint>, Vec<String>), ObserveError> {
    let kubeconfig = if kubeconfig.is_empty() {
        std::env::var("KUBECONFIG").unwrap_or_default()
    } else {
        kubeconfig.to_string()
    };
    let client = client(kube_api_url, &kubeconfig).await?;
    let list = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(ObserveError::List)?;
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    for node in &list.items {
        match node_endpoint(node, port) {
            Some(e) => found.push(e),
            None => skipped.push(node.metadata.name.clone().unwrap_or_default()),
        }
    }
    if found.is_empty() {
        let why = match skipped.len() {
            0 => String::new(),
            n => format!(" ({n} without one: {})", skipped.join(", ")),
        };
        return Err(ObserveError::NoNodes(why));
    }
    Ok((found, skipped))
}

/// Runs `flannel-observe` as flagged, printing to stdout and stderr; `shutdown` turning true
/// (SIGINT/SIGTERM) ends a `--follow` (status 0) or cuts a query short ([`INTERRUPTED`]).
/// Returns the exit status.
pub async fn run(args: &ObserveArgs, shutdown: watch::Receiver<bool>) -> u8 {
    let nodes = if args.nodes.is_empty() {
        match discover_nodes(&args.kube_api_url, &args.kubeconfig, args.metrics_port).await {
            Ok((nodes, skipped)) => {
                for name in skipped {
                    eprintln!("flannel-observe: node {name} has no InternalIP address; skipped");
                }
                nodes
            }
            Err(e) => {
                eprintln!("flannel-observe: {e}");
                return 1;
            }
        }
    } else {
        args.nodes.clone()
    };
    let filter = args.filter();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    if filter.follow {
        return follow(&nodes, &filter, args.output, &mut out, &mut err, shutdown).await;
    }
    let mut interrupted = shutdown.clone();
    tokio::select! {
        code = query(&nodes, &filter, args.output, &mut out, &mut err) => code,
        // Ctrl-C while a slow node is still being asked: stop at once, as a shell expects.
        _ = interrupted.changed() => INTERRUPTED,
    }
}

/// Installs the SIGINT and SIGTERM handlers now (inside a runtime) and returns what turns
/// true on the first; a second exits at once with [`INTERRUPTED`]. Installed before anything
/// is asked or printed, so a signal is never the default (killing) one once output started:
/// a `--follow` whose header is out ends with status 0.
pub fn shutdown_on_signal() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        std::process::exit(i32::from(INTERRUPTED));
    });
    Ok(rx)
}

/// Exit status of a query (not `--follow`) cut short by SIGINT/SIGTERM, as a shell reports
/// a command killed by SIGINT.
pub const INTERRUPTED: u8 = 130;

/// Prints what every node holds now, merged by time. Exit status 1 when every node failed.
pub async fn query(
    nodes: &[NodeEndpoint],
    filter: &FlowFilter,
    output: OutputFormat,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let pairs: Vec<(String, SocketAddr)> = nodes.iter().map(|n| (n.name.clone(), n.addr)).collect();
    let (records, errors, lost) = query_all(&pairs, filter).await;
    for e in &errors {
        let _ = writeln!(err, "flannel-observe: {e}");
    }
    if lost > 0 {
        let _ = writeln!(
            err,
            "flannel-observe: {lost} records were skipped by the nodes (not shown)"
        );
    }
    let text = match output {
        OutputFormat::Table => render_table(&records),
        OutputFormat::Json => records.iter().map(FlowRecord::to_json_line).collect(),
    };
    // A closed pipe (`| head`) is not an error of ours.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    u8::from(!nodes.is_empty() && errors.len() == nodes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.status = Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: (*t).into(),
                        address: (*a).into(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        });
        n
    }

    #[test]
    fn nodes_are_asked_on_their_internal_ip() {
        let n = node(
            "n1",
            &[
                ("Hostname", "n1"),
                ("InternalIP", "fd00::1"),
                ("ExternalIP", "203.0.113.1"),
                ("InternalIP", "198.18.0.1"),
            ],
        );
        let e = node_endpoint(&n, 9080).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.to_string().as_str()),
            ("n1", "198.18.0.1:9080")
        );
        let v6 = node("n2", &[("InternalIP", "fd00::2")]);
        assert_eq!(
            node_endpoint(&v6, 1).unwrap().addr.to_string(),
            "[fd00::2]:1"
        );
        assert!(node_endpoint(&node("n3", &[("ExternalIP", "203.0.113.1")]), 1).is_none());
        assert!(node_endpoint(&Node::default(), 1).is_none());
    }

    /// In a namespace of its own, as every networked test.
    #[test]
    fn no_reachable_node_is_status_1_and_named() {
        flannel_lab::in_fresh_netns("observe-gone", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(unreachable_body());
        })
        .expect("test namespace");
    }

    async fn unreachable_body() {
        {
            {
                // A port nothing listens on (bound, then released).
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let nodes = vec![NodeEndpoint {
                    name: "gone".into(),
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                }];
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let f = FlowFilter::default();
                let code = query(&nodes, &f, OutputFormat::Json, &mut out, &mut err).await;
                assert_eq!(code, 1);
                assert!(out.is_empty());
                let err = String::from_utf8(err).unwrap();
                assert!(err.contains("connecting to gone"), "{err}");
                let (_keep, rx) = watch::channel(false);
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let code = follow(&nodes, &f, OutputFormat::Table, &mut out, &mut err, rx).await;
                assert_eq!(code, 1);
                assert!(String::from_utf8(out).unwrap().starts_with("TIME"));
                assert!(
                    String::from_utf8(err)
                        .unwrap()
                        .contains("connecting to gone")
                );
            }
        }
    }
}
