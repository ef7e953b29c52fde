//! `pod add|delete|label` on a running lab, and the hidden `serve` that runs a pod's servers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use flannel_lab::LabState;
use flannel_lab::lab_pods::{PodAdd, parse_label_change, parse_pod_ref, serve_program};
use flannel_lab::probe::{PortProto, SERVED};

use crate::{bins, out};

#[derive(Debug, Args)]
pub struct PodArgs {
    #[command(subcommand)]
    command: PodCmd,
}

#[derive(Debug, Subcommand)]
enum PodCmd {
    /// Create a pod through the node's CNI conflist with servers on ports 80 and 81, TCP and
    /// UDP; in Kubernetes mode also its Namespace (if missing) and its Pod object (labels, pod
    /// IPs, nodeName, container ports serve-80-tcp, serve-80-udp, serve-81-tcp, serve-81-udp)
    Add(PodAddArgs),
    /// Delete a pod: stop its servers, CNI DEL, remove its namespace and its Pod object
    Delete(PodTarget),
    /// Set (KEY=VALUE) or remove (KEY-) labels of a pod and its Pod object
    Label(PodLabelArgs),
}

#[derive(Debug, Args)]
struct PodAddArgs {
    /// The pod, as NAMESPACE/NAME (RFC 1123 labels, e.g. x/a)
    #[arg(value_name = "NS/NAME")]
    pod: String,

    /// The node it runs on (n1, n2, ...)
    #[arg(long, value_name = "NODE")]
    node: String,

    /// A label of its Pod object (repeatable), e.g. --label pod=a
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

#[derive(Debug, Args)]
struct PodTarget {
    /// The pod, as NAMESPACE/NAME (or a pod name of `up`, e.g. n1-p1)
    #[arg(value_name = "NS/NAME")]
    pod: String,
}

#[derive(Debug, Args)]
struct PodLabelArgs {
    /// The pod, as NAMESPACE/NAME (or a pod name of `up`, e.g. n1-p1)
    #[arg(value_name = "NS/NAME")]
    pod: String,

    /// Labels to set (KEY=VALUE) or remove (KEY-)
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    changes: Vec<String>,
}

/// `flannel-lab serve`: what `pod add` runs inside the pod.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What TCP clients are told (a line), the pod's NS/NAME
    #[arg(long, default_value = "flannel-lab")]
    name: String,

    /// The lab directory it belongs to (only shown, so `ps` and leak checks can tell)
    #[arg(long, value_name = "DIR")]
    lab: Option<std::path::PathBuf>,

    /// What to serve (default: 80/TCP 80/UDP 81/TCP 81/UDP)
    #[arg(value_name = "PORT/PROTO")]
    targets: Vec<PortProto>,
}

pub fn pod(state_dir: &Path, args: &PodArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("pod")?;
    match &args.command {
        PodCmd::Add(a) => {
            let (namespace, name) = parse_pod_ref(&a.pod)?;
            let mut labels = BTreeMap::new();
            for l in &a.labels {
                match parse_label_change(l)? {
                    (k, Some(v)) => labels.insert(k, v),
                    (_, None) => anyhow::bail!("--label {l:?}: expected KEY=VALUE"),
                };
            }
            let spec = PodAdd {
                namespace,
                name,
                node: a.node.clone(),
                labels,
            };
            let program = serve_program()?;
            let p = LabState::modify(state_dir, |s| s.add_pod(&spec, &program))
                .with_context(|| format!("adding pod {}", a.pod))?;
            let ips = std::iter::once(p.ip)
                .chain(p.ip6)
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(",");
            out(&format!(
                "pod {} created on {} ({ips}), serving {}\n",
                a.pod,
                p.node,
                SERVED.map(|t| t.to_string()).join(" ")
            ));
        }
        PodCmd::Delete(t) => {
            let p = LabState::modify(state_dir, |s| s.delete_pod(&t.pod))
                .with_context(|| format!("deleting pod {}", t.pod))?;
            out(&format!("pod \"{}\" deleted\n", p.id()));
        }
        PodCmd::Label(l) => {
            let changes = l
                .changes
                .iter()
                .map(|c| parse_label_change(c))
                .collect::<flannel_lab::Result<BTreeMap<_, _>>>()?;
            LabState::modify(state_dir, |s| s.label_pod(&l.pod, &changes))
                .with_context(|| format!("labelling pod {}", l.pod))?;
            out(&format!("pod {} labeled\n", l.pod));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let targets = if args.targets.is_empty() {
        SERVED.to_vec()
    } else {
        args.targets.clone()
    };
    eprintln!(
        "flannel-lab serve: {}{} on {}",
        args.name,
        args.lab
            .as_ref()
            .map(|d| format!(" (lab {})", d.display()))
            .unwrap_or_default(),
        targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    match flannel_lab::serve::serve(&targets, &args.name)? {}
}
