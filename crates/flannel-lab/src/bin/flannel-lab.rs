//! `flannel-lab`: a whole flannel cluster on one machine.
//!
//! `up` builds an underlay bridge and one network namespace per node, starts a real etcd, writes
//! the network config, runs `flanneld` in every node namespace with the flags the kube-flannel
//! DaemonSet passes (etcd instead of the Kubernetes API), installs a per-node conflist (our
//! `flannel` CNI plugin chained with `portmap`), creates pods by executing that conflist as a
//! container runtime does, waits until every node is ready, and prints nodes, pods and a
//! pod-to-pod ping matrix (and, with `--throughput`, iperf3 figures).
//!
//! With `--datastore kube --image TAG`, flanneld instead runs from the image built by
//! `scripts/image`, as the kube-flannel DaemonSet's containers (init containers first), and the
//! pods use the plugin and conflist those installed.
//!
//! The lab then keeps running on its own: its state is in one directory (default
//! `/run/flannel-lab`), so `status`, `check`, `exec`, `kubectl` and `down` work from any shell.
//! With `--datastore kube`, `kubectl -- ARGS` runs the real kubectl against the lab's API
//! emulator (nodes with their podCIDRs, the lab's pods with their IPs, namespaces).
//!
//! With `--netpol`, `observe [FLAGS]` runs flannel-observe in the underlay namespace against
//! every node's enforcer: the flow records of all nodes, filtered and merged.
//!
//! Exit status: 0 success; 1 `check` (or `up --check`) found unreachable pairs, or `status`
//! found no lab or a stopped process; 2 an error; 130 interrupted. `exec`, `kubectl` and
//! `observe` exit with the status of the command they run.

// The modules live in a directory named after the binary; a crate root in src/bin/ would look
// for them next to itself, where cargo would take them for binaries of their own.
#[path = "flannel-lab/bins.rs"]
mod bins;
#[path = "flannel-lab/netpol.rs"]
mod netpol;
#[path = "flannel-lab/pods.rs"]
mod pods;
#[path = "flannel-lab/progress.rs"]
mod progress;
#[path = "flannel-lab/render.rs"]
mod render;
#[path = "flannel-lab/signals.rs"]
mod signals;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use flannel_lab::daemonset::DaemonSetSpec;
use flannel_lab::kubectl::{kubeconfig_path, write_admin_kubeconfig};
use flannel_lab::manifest::Manifest;
use flannel_lab::state::{DEFAULT_STATE_DIR, LabState, Phase, install_conflist};
use flannel_lab::throughput::iperf3;
use flannel_lab::{Cluster, ClusterSpec, Datastore, Netns, PodCni, StartPhase};

use crate::progress::Progress;
use crate::render::{Marks, PathResult};
use crate::signals::{INTERRUPTED_EXIT, Signals};

/// `--backend` unless given (also the manifest's).
const DEFAULT_BACKEND: &str = "vxlan";

/// `--network` unless given (also the manifest's, and kubeadm's usual `--pod-network-cidr`).
const DEFAULT_NETWORK: &str = "10.244.0.0/16";
/// `IPv6Network` of `up --dual-stack`.
const DUAL_STACK_NETWORK6: &str = "fd00:10:244::/56";

/// How many pings run at once for the matrix (each is its own process; the machine has 2 CPUs).
const PING_PARALLEL: usize = 8;

#[derive(Debug, Parser)]
#[command(
    name = "flannel-lab",
    version,
    about = "A multi-node flannel-rs cluster on one machine: network namespaces as nodes and pods, real etcd, flanneld per node, pods through the flannel CNI plugin",
    after_help = "Examples:\n  \
        sudo flannel-lab up --nodes 3\n  \
        sudo flannel-lab up --backend host-gw --throughput\n  \
        sudo flannel-lab exec n1 -- ip route\n  \
        sudo flannel-lab exec n1-p1 -- ip addr show eth0\n  \
        sudo flannel-lab pod add x/a --node n1 --label pod=a && sudo flannel-lab pod add y/b --node n2\n  \
        sudo flannel-lab probe x/a y/b 80/TCP && sudo flannel-lab netpol-matrix\n  \
        sudo flannel-lab up --datastore kube && sudo flannel-lab kubectl -- get pods -A -o wide\n  \
        sudo flannel-lab up --datastore kube --netpol && sudo flannel-lab observe --verdict DROPPED --follow\n  \
        sudo flannel-lab check && sudo flannel-lab down\n\n\
        Exit status: 0 ok; 1 check failed (unreachable pairs) or status found a problem; 2 error; 130 interrupted."
)]
struct Cli {
    /// Directory holding the running lab's state, logs and node files (one lab per directory)
    #[arg(long, global = true, value_name = "DIR", env = "FLANNEL_LAB_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a lab and leave it running: underlay, etcd, flanneld per node, pods through CNI
    Up(UpArgs),
    /// Show the running lab: nodes (subnet, public IP, VTEP MAC, MTU, flanneld), pods
    Status,
    /// Ping every pod from every other pod; exit 0 only when every pair answers
    Check(CheckArgs),
    /// Run a command inside a node's, a pod's or the underlay's network namespace
    Exec(ExecArgs),
    /// Run the real kubectl against the lab's Kubernetes API (a lab started with --datastore kube)
    Kubectl(KubectlArgs),
    /// Remove everything the lab created: processes, namespaces, directories (safe to repeat)
    Down(DownArgs),
    /// Add, delete or relabel pods with servers on ports 80 and 81, TCP and UDP (the Kubernetes
    /// e2e NetworkPolicy model) in a running lab
    Pod(pods::PodArgs),
    /// Create or update Namespaces and NetworkPolicies from multi-document YAML (a lab started
    /// with --datastore kube)
    Apply(netpol::FileArgs),
    /// Delete the Namespaces and NetworkPolicies named in multi-document YAML
    Delete(netpol::FileArgs),
    /// Probe a pod's server from another pod: exit 0 when the TCP connection succeeds or the UDP
    /// request is answered, 1 when not
    Probe(netpol::ProbeArgs),
    /// Probe every pod with servers from every other on ports 80/81 TCP/UDP and print the
    /// reachability truth tables
    NetpolMatrix(netpol::MatrixArgs),
    /// Show flow records of every node's enforcer, merged (a lab started with --netpol): runs
    /// flannel-observe with every node's /flows and your flags, e.g. `observe --verdict DROPPED
    /// --since 5m`, `observe --to-pod x/a --follow`, `observe -o json`
    Observe(ObserveArgs),
    /// Run a pod's servers (what `pod add` starts inside the pod)
    #[command(hide = true)]
    Serve(pods::ServeArgs),
}

/// `--datastore` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DatastoreArg {
    /// etcd 3.4 on the underlay.
    Etcd,
    /// The Kubernetes API emulator on the underlay.
    Kube,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Number of nodes (n1..nN, underlay addresses 198.18.0.1..N)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=252))]
    nodes: u16,

    /// Backend.Type in the network config (vxlan, host-gw, udp, ...), passed to flanneld as is
    #[arg(long, default_value = DEFAULT_BACKEND, value_name = "TYPE")]
    backend: String,

    /// Backend.DirectRouting: vxlan uses direct routes between nodes on the same subnet
    #[arg(long)]
    direct_routing: bool,

    /// EnableNFTables: flanneld writes nftables instead of iptables rules
    #[arg(long)]
    nftables: bool,

    /// Where leases live: a real etcd, or the in-repo Kubernetes API emulator with Node objects
    /// carrying kubeadm-style podCIDRs (flanneld runs with --kube-subnet-mgr)
    #[arg(long, value_enum, default_value_t = DatastoreArg::Etcd)]
    datastore: DatastoreArg,

    /// How many etcd members to run on the underlay: 1, 3 or 5 (each its own data directory and
    /// ports; flanneld gets every member in --etcd-endpoints). With --datastore etcd only
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_etcd_members)]
    etcd_members: usize,

    /// Run flanneld as the kube-flannel DaemonSet from this local podman image (scripts/image
    /// builds it): on every node the init containers install-cni-plugin and install-cni, then
    /// the flanneld container, with the node's namespace as host network; pods then use the
    /// plugin and conflist they installed. The network config is the manifest's net-conf.json
    /// (needs --datastore kube; not with --backend, --network, --nftables, --direct-routing)
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,

    /// The manifest whose DaemonSet and ConfigMap --image runs, e.g. `helm template flannel
    /// chart/kube-flannel --set flannel.backend=host-gw` (default: the deploy/kube-flannel.yml
    /// flannel-lab was built with)
    #[arg(long, value_name = "FILE", requires = "image")]
    manifest: Option<PathBuf>,

    /// Run the NetworkPolicy enforcer (flannel-netpol) on every node: networking.k8s.io/v1
    /// NetworkPolicies compiled into the nftables table `inet flannel-netpol` (needs
    /// --datastore kube)
    #[arg(long)]
    netpol: bool,

    /// Kubernetes mode without the production paths: the API emulator on plain HTTP without
    /// authentication or RBAC, flanneld with a kubeconfig. By default the lab's API serves
    /// HTTPS with the lab's CA, wants bearer tokens and enforces RBAC from
    /// deploy/kube-flannel.yml, and flanneld uses in-cluster config with its ServiceAccount's
    /// token, as under the DaemonSet (needs --datastore kube)
    #[arg(long)]
    plain_api: bool,

    /// etcd over TLS only with client-certificate authentication: a CA and certificates in
    /// <lab>/pki (etcd's server certificate, one client certificate per node, etcdctl's), etcd
    /// with --client-cert-auth and https client URLs, flanneld with --etcd-cafile,
    /// --etcd-certfile and --etcd-keyfile (etcd datastore only)
    #[arg(long, conflicts_with = "image")]
    etcd_tls: bool,

    /// With --etcd-tls, also etcd authentication: create this user with a role that may read
    /// and write /coreos.com/network/ only, enable auth, and start flanneld with
    /// --etcd-username and --etcd-password
    #[arg(long, value_name = "NAME:PASSWORD", requires = "etcd_tls")]
    etcd_user: Option<flannel_lab::etcd_tls::EtcdUser>,

    /// Pods per node, named nK-p1, nK-p2, ...
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pods_per_node: u16,

    /// Network in the network config
    #[arg(long, default_value = DEFAULT_NETWORK, value_name = "CIDR")]
    network: String,

    /// Dual stack: IPv6 on the underlay (fd00:198::K/64), `EnableIPv6` with `IPv6Network`
    /// fd00:10:244::/56 in the network config, pods with both families, and an IPv6 ping
    /// matrix next to the IPv4 one
    #[arg(long, conflicts_with = "image")]
    dual_stack: bool,

    /// Exit with status 1 unless every pod reaches every other pod (the lab stays up either way)
    #[arg(long)]
    check: bool,

    /// How long to wait for every flanneld to become ready, in seconds
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    ready_timeout: u64,

    /// No step lines on stderr
    #[arg(long, short)]
    quiet: bool,

    #[command(flatten)]
    throughput: ThroughputArgs,
}

#[derive(Debug, Args)]
struct ThroughputArgs {
    /// Also measure TCP throughput with iperf3: same-node pods, cross-node pods, underlay
    #[arg(long)]
    throughput: bool,

    /// Seconds per iperf3 measurement
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    throughput: ThroughputArgs,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// A node (n1), a pod (NS/NAME, or n1-p1 for the pods of `up`) or `underlay`
    target: String,

    /// The command and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct KubectlArgs {
    /// kubectl's arguments (after `--`), e.g. `get pods -A -o wide`
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct ObserveArgs {
    /// flannel-observe's flags, passed verbatim: --from-pod NS/NAME, --to-pod NS/NAME, --pod
    /// NS/NAME, --namespace NS, --verdict FORWARDED|DROPPED, --protocol P, --port N, --since
    /// DURATION, --follow, -o table|json (`observe -- --help` lists them)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct DownArgs {
    /// Also when the `up` that is building the lab is still running
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Up(args) => up(&cli.state_dir, args),
        Cmd::Status => status(&cli.state_dir),
        Cmd::Check(args) => check(&cli.state_dir, args),
        Cmd::Exec(args) => exec(&cli.state_dir, args),
        Cmd::Kubectl(args) => kubectl(&cli.state_dir, args),
        Cmd::Observe(args) => observe(&cli.state_dir, args),
        Cmd::Down(args) => down(&cli.state_dir, args),
        Cmd::Pod(args) => pods::pod(&cli.state_dir, args),
        Cmd::Apply(args) => netpol::objects(&cli.state_dir, args, false),
        Cmd::Delete(args) => netpol::objects(&cli.state_dir, args, true),
        Cmd::Probe(args) => netpol::probe(&cli.state_dir, args),
        Cmd::NetpolMatrix(args) => netpol::matrix(&cli.state_dir, args),
        Cmd::Serve(args) => pods::serve(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flannel-lab: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`flannel-lab status | head`).
fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}

/// Reads the lab recorded in `dir`, or explains that there is none.
fn load(dir: &Path) -> anyhow::Result<LabState> {
    match LabState::load(dir)? {
        Some(s) => Ok(s),
        None => bail!(
            "no lab in {} (start one with `flannel-lab up`{})",
            dir.display(),
            state_dir_flag(dir)
        ),
    }
}

fn state_dir_flag(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_STATE_DIR) {
        String::new()
    } else {
        format!(", passing --state-dir {}", dir.display())
    }
}

fn up(state_dir: &Path, args: &UpArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("up")?;
    let signals = Signals::install();
    if args.image.is_some() && args.datastore != DatastoreArg::Kube {
        bail!(
            "--image runs the kube-flannel DaemonSet, whose flanneld uses --kube-subnet-mgr: add --datastore kube"
        );
    }
    if args.plain_api && args.datastore != DatastoreArg::Kube {
        bail!("--plain-api is about the Kubernetes API emulator: add --datastore kube");
    }
    if args.netpol && args.datastore != DatastoreArg::Kube {
        bail!(
            "--netpol runs flannel-netpol, which watches pods, namespaces and NetworkPolicies in the Kubernetes API: add --datastore kube"
        );
    }
    if args.etcd_members != 1 && args.datastore != DatastoreArg::Etcd {
        bail!("--etcd-members runs an etcd cluster: it needs --datastore etcd (the default)");
    }
    if args.etcd_tls && args.datastore != DatastoreArg::Etcd {
        bail!("--etcd-tls secures the lab's etcd: it needs --datastore etcd (the default)");
    }
    // In image mode a manifest rendered with netpol.enabled runs the enforcer's container too.
    let netpol_step = args.netpol
        || daemonset_spec(args)?.is_some_and(|d| {
            d.manifest
                .containers
                .iter()
                .any(|c| c.name == flannel_lab::netpol::NETPOL_CONTAINER)
        });
    bins::check_programs(
        args.nftables,
        args.throughput.throughput,
        args.image.is_some(),
    )?;
    let unicode = render::utf8_locale();
    let total = 5 + usize::from(args.throughput.throughput) + usize::from(netpol_step);
    let mut progress = Progress::new(total, args.quiet, unicode);
    // Cluster::start finds the binaries the same way (next to this executable, or
    // FLANNEL_RS_BIN_DIR); this checks (and under `cargo run`, builds) them before anything exists.
    bins::workspace_bins(|| {
        if !args.quiet {
            eprintln!("flannel-lab: building flanneld and the flannel CNI plugin (cargo) ...");
        }
    })?;
    let argv: Vec<String> = std::iter::once("flannel-lab".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    let mut state = LabState::begin(state_dir, argv)?;
    match build(&mut state, args, &mut progress, &signals) {
        Ok(()) => {}
        Err(e) => {
            progress.fail();
            // The cluster's guards have removed everything by now; forget the record.
            if let Err(d) = state.discard() {
                eprintln!("flannel-lab: removing the state of the failed lab: {d:#}");
            }
            if signals.interrupted() {
                eprintln!("flannel-lab: interrupted; everything built so far was removed");
                return Ok(ExitCode::from(INTERRUPTED_EXIT));
            }
            return Err(e);
        }
    }
    signals.set_detached();
    if signals.interrupted() {
        eprintln!(
            "flannel-lab: interrupted after the lab was recorded; it keeps running (`flannel-lab down` removes it)"
        );
        return Ok(ExitCode::from(INTERRUPTED_EXIT));
    }

    let pairs = state.pods.len() * state.pods.len().saturating_sub(1);
    progress.step(format!("ping matrix ({pairs} pod pairs)"));
    let matrix = state.ping_matrix(PING_PARALLEL);
    let matrix6 = state.ping_matrix_v6(PING_PARALLEL);
    progress.done(&match &matrix6 {
        Some(m6) => format!(
            "IPv4 {}/{}, IPv6 {}/{}",
            matrix.reachable(),
            matrix.pairs(),
            m6.reachable(),
            m6.pairs()
        ),
        None => format!("{}/{}", matrix.reachable(), matrix.pairs()),
    });
    let through = if args.throughput.throughput {
        progress.step(format!("iperf3: 3 paths x {} s", args.throughput.duration));
        let t = measure(&state, args.throughput.duration);
        progress.done("done");
        Some(t)
    } else {
        None
    };
    drop(progress);

    let mut report = String::from("\n");
    report += &render::header(&state);
    report += "\n";
    report += &render::nodes(&state.node_status());
    report += "\n";
    report += &render::pods(&state);
    report += "\n";
    report += &render::matrix(&matrix, Marks::new(unicode));
    if let Some(m6) = &matrix6 {
        report += "\nIPv6:\n";
        report += &render::matrix(m6, Marks::new(unicode));
    }
    if let Some(t) = &through {
        report += "\n";
        report += &render::throughput(t, args.throughput.duration);
    }
    // scripts/lab names itself here, so the hints are commands that work as printed.
    let program = std::env::var("FLANNEL_LAB_COMMAND").unwrap_or_else(|_| "flannel-lab".into());
    let me = format!("{program}{}", state_dir_flag_short(state_dir));
    let kubectl_hint = match (state.datastore == "kube", state.has_netpol()) {
        (true, true) => format!(
            "\n  {me} kubectl -- get pods -A -o wide\n  {me} observe --verdict DROPPED --since 5m"
        ),
        (true, false) => format!("\n  {me} kubectl -- get pods -A -o wide"),
        _ => String::new(),
    };
    report += &format!(
        "\nThe lab keeps running. Next:\n  {me} status\n  {me} exec n1 -- ip route\n  {me} exec n1-p1 -- ping -c1 {}{kubectl_hint}\n  {me} check\n  {me} down\n",
        state
            .pods
            .last()
            .map_or("10.244.0.1".to_string(), |p| p.ip.to_string())
    );
    out(&report);
    if args.check && !(matrix.is_full() && matrix6.as_ref().is_none_or(|m| m.is_full())) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn state_dir_flag_short(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_STATE_DIR) {
        String::new()
    } else {
        format!(" --state-dir {}", dir.display())
    }
}

/// `--etcd-members`: a number the lab accepts (see [`flannel_lab::check_member_count`]).
fn parse_etcd_members(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if flannel_lab::ETCD_MEMBER_COUNTS.contains(&n) => Ok(n),
        _ => Err("--etcd-members must be 1, 3 or 5 (an odd etcd cluster size)".into()),
    }
}

/// The progress line of the etcd step: TLS and auth as asked, and the member count.
fn etcd_step(args: &UpArgs) -> String {
    let etcd = match args.etcd_members {
        1 => "etcd".to_string(),
        n => format!("etcd ({n} members)"),
    };
    if args.etcd_user.is_some() {
        format!(
            "CA + certificates, {etcd} (TLS, client certificates, auth) + network config + user"
        )
    } else if args.etcd_tls {
        format!("CA + certificates, {etcd} (TLS, client certificates) + network config")
    } else {
        format!("{etcd} + network config")
    }
}

/// Builds the cluster under the drop guards, then hands it to the state file.
fn build(
    state: &mut LabState,
    args: &UpArgs,
    progress: &mut Progress,
    signals: &Signals,
) -> anyhow::Result<()> {
    let nodes = usize::from(args.nodes);
    let mut spec = ClusterSpec {
        nodes,
        backend: args.backend.clone(),
        direct_routing: args.direct_routing,
        nftables: args.nftables,
        datastore: match args.datastore {
            DatastoreArg::Etcd => Datastore::Etcd,
            DatastoreArg::Kube => Datastore::Kube,
        },
        etcd_members: args.etcd_members,
        network: args.network.clone(),
        pod_cni: PodCni::Flannel,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        persist: Some(state.persist()?),
        daemonset: daemonset_spec(args)?,
        netpol: args.netpol,
        etcd_tls: args.etcd_tls,
        etcd_user: args.etcd_user.clone(),
        ..ClusterSpec::default()
    };
    spec.kube_emu.secure = !args.plain_api;
    if args.dual_stack {
        spec.ipv6 = true;
        spec.extra_config =
            serde_json::json!({ "EnableIPv6": true, "IPv6Network": DUAL_STACK_NETWORK6 });
    }
    if let Some(ds) = spec.daemonset.take() {
        // flanneld reads the ConfigMap's net-conf.json; the lab follows it.
        ds.adopt_network(&mut spec)?;
        spec.daemonset = Some(ds);
    }
    let backend = args.backend.clone();
    let mut cluster = Cluster::start_observed(spec, |phase| match phase {
        StartPhase::Lab => progress.step(format!("underlay + {nodes} node namespaces")),
        StartPhase::Datastore => progress.step(match args.datastore {
            DatastoreArg::Etcd => etcd_step(args),
            DatastoreArg::Kube => {
                "Kubernetes API emulator + Node objects + net-conf.json".to_string()
            }
        }),
        StartPhase::Flanneld => progress.step(match &args.image {
            Some(image) => format!(
                "kube-flannel DaemonSet from {image} on {nodes} nodes ({backend}), until ready and routed"
            ),
            None => format!("flanneld on {nodes} nodes ({backend}), until ready and routed"),
        }),
        StartPhase::Netpol => {
            progress.step(format!("flannel-netpol on {nodes} nodes, until synced"));
        }
    })
    .context("starting the cluster")?;
    if signals.interrupted() {
        bail!("interrupted");
    }
    let pods = nodes * usize::from(args.pods_per_node);
    if cluster.daemonset().is_some() {
        // The init containers installed the plugin and the conflist on every node.
        progress.step(format!(
            "{pods} pods through CNI (the plugin and conflist the init containers installed)"
        ));
    } else {
        progress.step(format!(
            "conflists + {pods} pods through CNI (flannel + portmap)"
        ));
        for i in 0..nodes {
            install_conflist(&cluster, i)?;
        }
    }
    for i in 0..nodes {
        for k in 1..=args.pods_per_node {
            if signals.interrupted() {
                bail!("interrupted");
            }
            let name = format!("n{}-p{k}", i + 1);
            cluster
                .add_pod(i, &name)
                .with_context(|| format!("creating pod {name} through CNI"))?;
        }
    }
    state.detach(cluster).context("recording the lab")?;
    Ok(())
}

/// What `--image` (and `--manifest`) ask for: the DaemonSet to run, or `None`.
fn daemonset_spec(args: &UpArgs) -> anyhow::Result<Option<DaemonSetSpec>> {
    let Some(image) = &args.image else {
        return Ok(None);
    };
    if args.backend != DEFAULT_BACKEND
        || args.network != DEFAULT_NETWORK
        || args.nftables
        || args.direct_routing
    {
        bail!(
            "with --image, flanneld reads the network config from the manifest's ConfigMap (net-conf.json): \
             render one with other values (helm template ... --set flannel.backend=host-gw) and pass it with --manifest, \
             instead of --backend, --network, --nftables or --direct-routing"
        );
    }
    let manifest = match &args.manifest {
        Some(path) => Manifest::load(path)?,
        None => Manifest::repo()?,
    };
    Ok(Some(DaemonSetSpec {
        image: image.clone(),
        manifest,
    }))
}

/// The three iperf3 paths of `--throughput`, one after the other.
fn measure(state: &LabState, secs: u64) -> Vec<PathResult> {
    let duration = Duration::from_secs(secs);
    let log_dir = state.lab_dir.join("logs");
    let run = |from_ns: &str, to_ns: &str, ip: std::net::IpAddr, tag: &str| {
        let from = Netns::open(from_ns).map_err(|e| e.to_string())?;
        let to = Netns::open(to_ns).map_err(|e| e.to_string())?;
        iperf3(
            &from,
            &to,
            ip,
            duration,
            &log_dir.join(format!("iperf3-server-{tag}.log")),
        )
        .map_err(|e| first_line(&e.to_string()))
    };
    let mut results = Vec::new();
    let (n1, n2) = (state.nodes.first(), state.nodes.get(1));
    results.push(match (n1, n2) {
        (Some(a), Some(b)) => PathResult {
            path: "underlay, node to node",
            between: format!("{} {} -> {} {}", a.name, a.ip, b.name, b.ip),
            result: run(&a.netns, &b.netns, b.ip.into(), "underlay"),
        },
        _ => PathResult {
            path: "underlay, node to node",
            between: "-".into(),
            result: Err("needs 2 nodes".into()),
        },
    });
    let on = |node: &str| -> Vec<&flannel_lab::state::PodRecord> {
        state.pods.iter().filter(|p| p.node == node).collect()
    };
    let first_node = n1.map(|n| on(&n.name)).unwrap_or_default();
    results.push(match first_node.as_slice() {
        [a, b, ..] => PathResult {
            path: "pod to pod, same node",
            between: format!("{} {} -> {} {}", a.name, a.ip, b.name, b.ip),
            result: run(&a.netns, &b.netns, b.ip, "same-node"),
        },
        _ => PathResult {
            path: "pod to pod, same node",
            between: "-".into(),
            result: Err("needs --pods-per-node 2".into()),
        },
    });
    let second_node = n2.map(|n| on(&n.name)).unwrap_or_default();
    results.push(match (first_node.first(), second_node.first()) {
        (Some(a), Some(b)) => PathResult {
            path: "pod to pod, cross node",
            between: format!("{} {} -> {} {}", a.name, a.ip, b.name, b.ip),
            result: run(&a.netns, &b.netns, b.ip, "cross-node"),
        },
        _ => PathResult {
            path: "pod to pod, cross node",
            between: "-".into(),
            result: Err("needs 2 nodes".into()),
        },
    });
    results
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn status(state_dir: &Path) -> anyhow::Result<ExitCode> {
    bins::require_root("status")?;
    let state = match LabState::load(state_dir)? {
        Some(s) => s,
        None => {
            out(&format!("no lab in {}\n", state_dir.display()));
            return Ok(ExitCode::from(1));
        }
    };
    let mut text = render::header(&state);
    let since = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(state.created_at);
    let age = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    text += &format!(
        "started {} ago by: {}\n\n",
        human_age(age),
        state.args.join(" ")
    );
    let nodes = state.node_status();
    text += &render::nodes(&nodes);
    text += "\n";
    text += &render::pods(&state);
    let stopped: Vec<String> = state
        .processes
        .iter()
        .filter(|p| !p.is_running())
        .map(|p| format!("{} (pid {})", p.role, p.pid))
        .collect();
    if !stopped.is_empty() {
        text += &format!("\nNOT RUNNING: {}\n", stopped.join(", "));
    }
    out(&text);
    let healthy = state.phase == Phase::Running && stopped.is_empty();
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

fn check(state_dir: &Path, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("check")?;
    if args.throughput.throughput {
        flannel_lab::require_binary("iperf3")?;
    }
    let state = load(state_dir)?;
    if state.phase != Phase::Running {
        bail!(
            "the lab in {} is not complete (its `up` is still running or was interrupted)",
            state_dir.display()
        );
    }
    let matrix = state.ping_matrix(PING_PARALLEL);
    let matrix6 = state.ping_matrix_v6(PING_PARALLEL);
    let mut text = render::matrix(&matrix, Marks::new(render::utf8_locale()));
    if let Some(m6) = &matrix6 {
        text += "\nIPv6:\n";
        text += &render::matrix(m6, Marks::new(render::utf8_locale()));
    }
    if args.throughput.throughput {
        text += "\n";
        text += &render::throughput(
            &measure(&state, args.throughput.duration),
            args.throughput.duration,
        );
    }
    out(&text);
    Ok(
        if matrix.is_full() && matrix6.as_ref().is_none_or(|m| m.is_full()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

fn exec(state_dir: &Path, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("exec")?;
    let state = load(state_dir)?;
    let Some(ns) = state.netns_of(&args.target) else {
        bail!(
            "no node or pod named {:?} in the lab; one of: {}",
            args.target,
            state.targets().join(", ")
        );
    };
    let ip = flannel_lab::require_binary("ip")?;
    // A node running the wireguard backend has its own /run/wireguard: `wg show flannel-wg`
    // there talks to that node's device.
    let wg_node = state
        .nodes
        .iter()
        .find(|n| n.name == args.target && flannel_lab::node_root::wireguard_dir(&n.dir).is_dir());
    let mut cmd = match wg_node {
        Some(n) => flannel_lab::node_root::wireguard_view(&n.dir, ip.as_os_str())?,
        None => std::process::Command::new(ip),
    };
    cmd.args(["netns", "exec", ns]).args(&args.command);
    if state.datastore == "etcd"
        && let Some(ep) = &state.endpoint
    {
        // So `flannel-lab exec n1 -- etcdctl get --prefix /coreos.com/network` just works.
        cmd.env("ETCDCTL_API", "3").env("ETCDCTL_ENDPOINTS", ep);
        let pki = state.lab_dir.join(flannel_lab::etcd_tls::PKI_DIR);
        if pki.join("etcdctl.key").is_file() {
            // A TLS lab: etcdctl presents the lab's `root` certificate.
            cmd.env("ETCDCTL_CACERT", pki.join("ca.crt"))
                .env("ETCDCTL_CERT", pki.join("etcdctl.crt"))
                .env("ETCDCTL_KEY", pki.join("etcdctl.key"));
        }
    }
    if state.datastore == "kube" {
        // So `flannel-lab exec underlay -- kubectl get nodes` works too, as `kubectl` does.
        cmd.env("KUBECONFIG", kubeconfig_path(&state.lab_dir)).env(
            "KUBECACHEDIR",
            state.lab_dir.join(flannel_lab::kubectl::CACHE_DIR),
        );
    }
    // Become the command (exec(2)): its exit status, signals and terminal handling are the
    // user's, exactly as with `ip netns exec` (Ctrl-C in an interactive shell reaches the shell
    // alone). `exec` returns only on failure.
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context(format!("running {:?} in {ns}", args.command)))
}

fn kubectl(state_dir: &Path, args: &KubectlArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("kubectl")?;
    let state = load(state_dir)?;
    if state.datastore != "kube" {
        bail!(
            "the lab in {} keeps its leases in {} (datastore {:?}), not in a Kubernetes API; \
             kubectl needs a lab started with `flannel-lab up --datastore kube`",
            state_dir.display(),
            state.endpoint.as_deref().unwrap_or("etcd"),
            state.datastore
        );
    }
    let (Phase::Running, Some(netns), Some(endpoint)) =
        (state.phase, &state.underlay_netns, &state.endpoint)
    else {
        bail!(
            "the lab in {} is not complete (its `up` is still running or was interrupted)",
            state_dir.display()
        );
    };
    if !kubeconfig_path(&state.lab_dir).is_file() {
        let creds = endpoint
            .starts_with("https://")
            .then(|| flannel_lab::kube_auth::ApiCredentials::load(&state.lab_dir))
            .transpose()?;
        write_admin_kubeconfig(&state.lab_dir, endpoint, creds.as_ref())?;
    }
    let mut cmd = flannel_lab::kubectl::command(netns, &state.lab_dir, &args.args)?;
    // Become kubectl (exec(2)), as `exec` does: its output, exit status and terminal handling
    // (`kubectl get -w` until Ctrl-C, `kubectl edit`) are the user's.
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context(format!("running kubectl in {netns}")))
}

fn observe(state_dir: &Path, args: &ObserveArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("observe")?;
    let state = load(state_dir)?;
    let mut cmd = state.observe_command(&args.args)?;
    // Become flannel-observe (exec(2)), as `kubectl` does: its output, exit status and
    // Ctrl-C of `--follow` are the user's.
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context("running flannel-observe in the underlay namespace"))
}

fn down(state_dir: &Path, args: &DownArgs) -> anyhow::Result<ExitCode> {
    bins::require_root("down")?;
    let Some(state) = LabState::load(state_dir)? else {
        out(&format!(
            "no lab in {}; nothing to remove\n",
            state_dir.display()
        ));
        return Ok(ExitCode::SUCCESS);
    };
    if state.phase == Phase::Starting && state.creator_alive() && !args.force {
        bail!(
            "`flannel-lab up` (pid {}) is still building this lab; interrupt it (Ctrl-C removes what it built) or pass --force",
            state.creator_pid
        );
    }
    let report = state.teardown()?;
    let containers = match report.containers.len() {
        0 => String::new(),
        1 => ", removed 1 container".to_string(),
        n => format!(", removed {n} containers"),
    };
    out(&format!(
        "removed lab {}: stopped {} process{}{containers}, deleted {} namespace{}, removed {}\n",
        state.stem,
        report.stopped.len(),
        if report.stopped.len() == 1 { "" } else { "es" },
        report.namespaces.len(),
        if report.namespaces.len() == 1 {
            ""
        } else {
            "s"
        },
        if report.removed.is_empty() {
            "no files".to_string()
        } else {
            report
                .removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    Ok(ExitCode::SUCCESS)
}
