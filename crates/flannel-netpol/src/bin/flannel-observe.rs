//! `flannel-observe`: flow records of every node's flannel-netpol, merged.
//!
//! A thin shell: flags ([`flannel_netpol::flows::cli`]), a single-threaded runtime (a handful
//! of connections, nothing to spread over cores), signals; [`flannel_netpol::flows::observe`]
//! does the work. Exit 0 ok (also on SIGINT/SIGTERM during `--follow`), 1 when no node
//! answered, 2 on bad flags.

use std::process::ExitCode;

use clap::Parser;
use flannel_netpol::flows::cli::ObserveArgs;
use flannel_netpol::flows::observe;
use tokio::sync::watch;

fn main() -> ExitCode {
    flanneld::signals::unblock_termination_signals();
    let args = ObserveArgs::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flannel-observe: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        flanneld::signals::spawn_shutdown_on_signal(tx);
        observe::run(&args, rx).await
    });
    ExitCode::from(code)
}
