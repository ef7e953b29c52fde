//! The timer thread: every 250 ms each peer's boringtun timers run (handshake retries and
//! timeouts, rekeying, keepalives, persistent keepalives, session expiry), and once a second
//! the device's rate limiter forgets its count.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::errors::WireGuardError;
use flannel_packet::shared::Shared;
use tracing::debug;

use super::metrics::Metrics;
use super::net::{OutBatch, Sockets, wire_addr};
use super::table::Snapshot;

/// How often boringtun's timers run (its own device uses 250 ms).
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// Runs until `stop` is dropped or sent to.
pub(crate) fn run(
    name: String,
    table: Arc<Shared<Snapshot>>,
    sockets: Arc<Shared<Option<Sockets>>>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) {
    let mut out = OutBatch::new(512 * 1024, 512);
    let mut buf = vec![0u8; 2048];
    let mut last_reset = Instant::now();
    loop {
        match stop.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let snap = table.snapshot();
        let socks = sockets.snapshot();
        let Some(socks) = socks.as_ref().as_ref() else {
            continue;
        };
        let Some(id) = snap.identity.as_ref() else {
            continue;
        };
        if last_reset.elapsed() >= Duration::from_secs(1) {
            id.limiter.reset_count();
            last_reset = Instant::now();
        }
        for peer in &snap.peers {
            let mut tunn = peer.tunn();
            match tunn.update_timers(&mut buf) {
                TunnResult::WriteToNetwork(p) => {
                    if p[0] == 1 {
                        Metrics::add(&metrics.handshakes_total, 1);
                    }
                    if let Some(to) = peer.endpoint().and_then(|e| wire_addr(e, socks.dual)) {
                        let n = p.len();
                        out.tail()[..n].copy_from_slice(p);
                        Metrics::add(&peer.tx_bytes, n as u64);
                        out.commit(n, to);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    debug!("{name}: session with a peer expired");
                }
                _ => {}
            }
            if out.full(70 * 1024) {
                out.flush(&socks.fds[0], &metrics);
            }
        }
        out.flush(&socks.fds[0], &metrics);
    }
}
