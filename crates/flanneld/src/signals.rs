//! SIGTERM/SIGINT handling shared by the image's daemons (flanneld, flannel-netpol).

use nix::sys::signal::{SigSet, Signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Unblocks SIGTERM, SIGINT and SIGHUP in the calling thread, and so in every thread it starts
/// afterwards. A blocked signal mask survives `exec`: a parent that blocked them (a shell
/// script's `trap`, a supervisor that waits for signals with `sigwait`, `flannel-lab up`)
/// would otherwise leave the daemon deaf to the kubelet's SIGTERM. Call it first in `main`,
/// before the async runtime starts its threads.
pub fn unblock_termination_signals() {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    if let Err(e) = set.thread_unblock() {
        eprintln!("unblocking SIGTERM/SIGINT/SIGHUP: {e}");
    }
}

/// Spawns the task that turns the first SIGTERM or SIGINT into `true` on `tx` (a graceful
/// shutdown) and exits at once with status 1 on a second one, as upstream unregisters its
/// handler after the first.
pub fn spawn_shutdown_on_signal(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("could not install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("received SIGTERM, shutting down"),
            _ = int.recv() => info!("received SIGINT, shutting down"),
        }
        let _ = tx.send(true);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        warn!("second signal: exiting immediately");
        std::process::exit(1);
    });
}
