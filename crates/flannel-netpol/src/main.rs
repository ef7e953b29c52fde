//! `flannel-netpol`: Kubernetes NetworkPolicy enforced in nftables.
//!
//! A thin shell: flags ([`flannel_netpol::cli`]), logging (flanneld's klog-style `--v`), a
//! single-threaded runtime, signals; [`flannel_netpol::daemon`] does the work. Exit 0 on
//! SIGTERM/SIGINT (the rules stay in the kernel), 1 when start-up fails, 2 on bad flags.

use std::process::ExitCode;

use clap::Parser;
use flannel_netpol::cli::{self, Options};
use flannel_netpol::daemon;
use tokio::sync::watch;
use tracing::{error, info};

fn main() -> ExitCode {
    flanneld::signals::unblock_termination_signals();
    let opts = Options::parse();
    if let Err(e) = flanneld::logging::init(opts.verbosity, "") {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let config = opts.config(std::env::var("MY_NODE_NAME").ok(), cli::hostname);
    info!("flannel-netpol {}", env!("CARGO_PKG_VERSION"));
    // One task owns all state; everything else waits on sockets and nft.
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
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        flanneld::signals::spawn_shutdown_on_signal(tx);
        match daemon::start(config, rx.clone()).await {
            Ok(running) => {
                running.run(rx).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}
