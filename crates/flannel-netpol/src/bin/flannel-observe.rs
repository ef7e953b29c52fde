//! `flannel-observe`: flow records of every node's flannel-netpol, merged.
//!
//! A thin shell: flags ([`flannel_netpol::flows::cli`]), a single-threaded runtime (a handful
//! of connections, nothing to spread over cores), signals; [`flannel_netpol::flows::observe`]
//! does the work. Exit 0 ok (also on SIGINT/SIGTERM during `--follow`), 1 when no node
//! answered, 2 on bad flags, 130 when a query is interrupted.

use std::process::ExitCode;

use clap::Parser;
use flannel_netpol::flows::cli::ObserveArgs;
use flannel_netpol::flows::observe;

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
        match observe::shutdown_on_signal() {
            Ok(shutdown) => observe::run(&args, shutdown).await,
            Err(e) => {
                eprintln!("flannel-observe: installing the signal handlers: {e}");
                1
            }
        }
    });
    ExitCode::from(code)
}
