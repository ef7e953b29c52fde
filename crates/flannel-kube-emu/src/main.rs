//! `flannel-kube-emu`: serves the in-memory Kubernetes API emulator over HTTP, or over HTTPS
//! with bearer tokens and RBAC when given kube-apiserver's flags for them.
//!
//! The lab starts one in its underlay namespace for `--datastore kube`; see the library docs for
//! what is and is not emulated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flannel_kube_emu::{
    AuthorizationMode, ChurnOptions, EmuConfig, Emulator, GenerateOptions, Security, TlsIdentity,
};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "flannel-kube-emu",
    about = "An in-memory Kubernetes API emulator (Namespaces, Nodes and Pods) for flannel-rs tests, the lab and kubectl; not an API server"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How many changes are retained for resuming watches (older RVs get 410 Expired).
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Interval between BOOKMARK events on watches that allow them, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
    /// Once listening, write the bound address (`ip:port`) to this file (atomically), so a
    /// caller that asked for port 0 learns the port.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// Generate this many Nodes at start, as a kube-flannel cluster shows them (upstream's
    /// vxlan annotations, a /24 of --generate-network each, a kubelet's full status).
    #[arg(long, default_value_t = 0)]
    generate_nodes: usize,
    /// The pod network the generated nodes' /24s come from (its first /24 is left free for
    /// the node under test).
    #[arg(long, default_value = "10.128.0.0/9")]
    generate_network: ipnet::Ipv4Net,
    /// Every generated node gets a status heartbeat (new lastHeartbeatTime) once per this many
    /// seconds, spread evenly over the interval; 0: none.
    #[arg(long, default_value_t = 0)]
    heartbeat_interval: u64,
    /// How many generated nodes get a new VtepMAC per --annotation-churn-interval.
    #[arg(long, default_value_t = 0)]
    annotation_churn: usize,
    /// The annotation churn's period in seconds (fractions allowed); 0: none.
    #[arg(long, default_value_t = 0.0)]
    annotation_churn_interval: f64,
    /// Serve HTTPS with this PEM certificate (chain), as kube-apiserver's flag; needs
    /// --tls-private-key-file.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// kube-apiserver's static token file: lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Requests without credentials are `system:anonymous` (true, as kube-apiserver) or get
    /// 401 (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// `AlwaysAllow` or `RBAC` (Roles, ClusterRoles and bindings decide; bootstrap roles as on
    /// a kubeadm cluster).
    #[arg(long, default_value = "AlwaysAllow", value_parser = parse_mode)]
    authorization_mode: AuthorizationMode,
}

fn parse_mode(s: &str) -> Result<AuthorizationMode, String> {
    match s {
        "AlwaysAllow" => Ok(AuthorizationMode::AlwaysAllow),
        "RBAC" => Ok(AuthorizationMode::Rbac),
        other => Err(format!(
            "authorization mode {other:?} is not emulated (AlwaysAllow, RBAC)"
        )),
    }
}

/// The transport and access control the flags ask for; fails naming a bad file.
fn security(args: &Args) -> anyhow::Result<Security> {
    let tls = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_files(cert, key)?),
        _ => None,
    };
    let tokens = match &args.token_auth_file {
        Some(path) => flannel_kube_emu::auth::read_token_file(path)?,
        None => Vec::new(),
    };
    Ok(Security {
        tls,
        tokens,
        anonymous_auth: args.anonymous_auth,
        authorization: args.authorization_mode,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let security = security(&args)?;
    rt.block_on(async {
        let emu = Emulator::with_security(
            EmuConfig {
                history: args.history,
                bookmark_interval: Duration::from_millis(args.bookmark_interval_ms.max(10)),
            },
            security,
        );
        if args.generate_nodes > 0 {
            emu.generate_nodes(&GenerateOptions {
                nodes: args.generate_nodes,
                network: args.generate_network,
            })
            .context("generating nodes")?;
            tracing::info!(
                "generated {} nodes in {}",
                args.generate_nodes,
                args.generate_network
            );
        }
        let churn = emu.start_churn(ChurnOptions {
            heartbeat_interval: (args.heartbeat_interval > 0)
                .then(|| Duration::from_secs(args.heartbeat_interval)),
            annotation_churn: args.annotation_churn,
            annotation_interval: Duration::try_from_secs_f64(args.annotation_churn_interval)
                .ok()
                .filter(|d| !d.is_zero()),
        });
        let server = emu
            .start(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!("flannel-kube-emu serving on {}", server.url());
        if let Some(path) = &args.address_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{}\n", server.addr()))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming to {}", path.display()))?;
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("flannel-kube-emu exiting");
        drop(churn);
        drop(server);
        Ok(())
    })
}
