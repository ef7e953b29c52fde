//! `flanneld`: the flannel-rs node agent.
//!
//! A thin shell around the library: flags and environment, logging, the runtime, the subnet
//! manager, signals; [`flanneld::daemon::run`] does the work. Exit codes are upstream's: 0 on
//! SIGTERM/SIGINT and on lease revocation, 1 on fatal errors, 2 on bad flags.

use std::path::PathBuf;
use std::process::ExitCode;

use flannel_subnet::PreviousSubnets;
use flannel_subnet::etcd::{EtcdConfig, EtcdManager};
use flannel_subnet::kube::{KubeManager, KubeOptions};
use flannel_types::subnet_env::PreviousSubnetEnv;
use flanneld::cli::{self, CliError, Options};
use flanneld::daemon::{self, DaemonConfig, DaemonError, Exit};
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    flanneld::signals::unblock_termination_signals();
    let opts = match cli::parse() {
        Ok(o) => o,
        Err(CliError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if opts.version {
        // Upstream prints the bare version to stderr.
        eprintln!("{}", cli::VERSION);
        return ExitCode::SUCCESS;
    }
    if let Err(e) = flanneld::logging::init(opts.verbosity, &opts.vmodule) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    info!("flannel-rs flanneld {}", cli::VERSION);
    // One thread: the main loop is a single task and everything else is I/O waiting on sockets.
    // A multi-threaded runtime bought nothing measurable but cost memory (worker stacks and a
    // malloc arena per thread: several MiB of RSS at 5000 peers). The udp backend's data path
    // runs on its own threads, outside the runtime.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(Exit::Signal) => ExitCode::SUCCESS,
        Ok(Exit::LeaseRevoked) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the signal handlers, builds the subnet manager and runs the daemon.
async fn run(opts: Options) -> Result<Exit, DaemonError> {
    let (tx, rx) = watch::channel(false);
    flanneld::signals::spawn_shutdown_on_signal(tx);

    if opts.kube_subnet_mgr {
        let kube = KubeOptions {
            api_url: opts.kube_api_url.clone(),
            kubeconfig: opts.kubeconfig_file.clone(),
            annotation_prefix: opts.kube_annotation_prefix.clone(),
            net_config_path: opts.net_config_path.clone(),
            set_node_network_unavailable: opts.set_node_network_unavailable,
            node_name: None,
            pod_name: None,
            pod_namespace: None,
            event_queue_depth: None,
        }
        .with_process_env();
        let manager = KubeManager::connect(kube)
            .await
            .map_err(|e| DaemonError::Manager(e.into()))?;
        return daemon::run(DaemonConfig::from(&opts), manager, rx).await;
    }
    let previous = PreviousSubnetEnv::read(&opts.subnet_file)
        .ok()
        .flatten()
        .map(|p| PreviousSubnets {
            ipv4: p.subnet,
            ipv6: p.ipv6_subnet,
        })
        .unwrap_or_default();
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let etcd = EtcdConfig {
        endpoints: opts.etcd_endpoints.clone(),
        prefix: opts.etcd_prefix.clone(),
        keyfile: some(&opts.etcd_keyfile).map(PathBuf::from),
        certfile: some(&opts.etcd_certfile).map(PathBuf::from),
        cafile: some(&opts.etcd_cafile).map(PathBuf::from),
        username: some(&opts.etcd_username),
        password: some(&opts.etcd_password),
    };
    // With TLS, connecting waits (with backoff) until an endpoint's handshake succeeds: a
    // signal must still end flanneld meanwhile.
    let mut shutdown = rx.clone();
    let manager = tokio::select! {
        m = EtcdManager::connect(etcd, previous) => m.map_err(|e| DaemonError::Manager(e.into()))?,
        Ok(_) = shutdown.wait_for(|stop| *stop) => return Ok(Exit::Signal),
    };
    daemon::run(DaemonConfig::from(&opts), manager, rx).await
}
