//! SIGTERM/SIGINT handling shared by the image's daemons (flanneld, flannel-netpol).

use tokio::sync::watch;
use tracing::{error, info, warn};

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
