//! What a worker's two threads share: their TUN queue, their socket, the published peer
//! table, the counters, and the stop machinery.
//!
//! Threads never block in a way shutdown cannot interrupt: descriptors are read with
//! `MSG_DONTWAIT`/`O_NONBLOCK`, and when nothing is ready a thread `poll`s its descriptor
//! together with a stop pipe; while traffic flows no `poll` is made.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use flannel_packet::shared::Reader;
use flannel_packet::worker;
use tun_rs::SyncDevice;

use super::metrics::{DropReason, Metrics};
use super::table::Snapshot;

/// One worker's shared state (each thread holds a clone).
pub(crate) struct Worker {
    pub name: String,
    pub dev: Arc<SyncDevice>,
    pub sock: Arc<OwnedFd>,
    pub dual: bool,
    pub wake: Arc<OwnedFd>,
    pub stop: Arc<AtomicBool>,
    pub dead: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub table: Reader<Snapshot>,
    pub offload: bool,
    pub mtu: usize,
}

impl Worker {
    /// Waits until `fd` is readable or shutdown is requested; false on shutdown.
    pub fn wait_readable(&self, fd: BorrowedFd<'_>) -> bool {
        worker::wait_readable(fd, self.wake.as_fd(), &self.stop, &self.name)
    }

    /// Handles a failed TUN read/write; returns false when the device is gone for good.
    pub fn tun_error(&self, what: &str, e: &io::Error, logged: &mut bool) -> bool {
        self.metrics.dropped(DropReason::Io, 1);
        worker::tun_error(&self.name, what, e, &self.dead, logged)
    }

    /// A second handle for the other thread of the worker.
    pub fn clone_for_thread(&self) -> Worker {
        Worker {
            name: self.name.clone(),
            dev: self.dev.clone(),
            sock: self.sock.clone(),
            dual: self.dual,
            wake: self.wake.clone(),
            stop: self.stop.clone(),
            dead: self.dead.clone(),
            metrics: self.metrics.clone(),
            table: self.table.clone(),
            offload: self.offload,
            mtu: self.mtu,
        }
    }
}
