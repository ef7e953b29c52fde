//! Our own WireGuard data path, for nodes without the kernel module.
//!
//! The protocol is boringtun's `noise::Tunn` (one per peer: handshake, sessions, timers,
//! replay windows, cookies); everything around it is the udp backend's recipe for speed
//! (crate `flannel-packet`): a multi-queue TUN device with `IFF_VNET_HDR` offloads, one worker
//! per queue with a TX and an RX thread, each with its own `SO_REUSEPORT` UDP socket; TSO
//! super-packets are cut into segments before encryption and the encrypted segments leave with
//! one `UDP_SEGMENT` send; received `UDP_GRO` runs are decrypted and coalesced back into TCP
//! super-packets for the TUN write. The peer table the workers read is an immutable snapshot
//! published by [`WgDevice::set`], so configuration never stops the data path.
//!
//! The parts:
//! * `config`: the configuration and the kernel's `set` semantics;
//! * `table`: the snapshot (cryptokey routing, index and key lookups);
//! * `tx`, `rx`: the two threads of a worker; `worker`: what they share;
//! * `net`: sockets and batched sends; `timers`: the 250 ms timer thread;
//! * [`metrics`]: device-wide counters;
//! * `link`: deleting the device.
//!
//! **The device is persistent** (`TUNSETPERSIST`): when flanneld stops, the device, its
//! address and the cluster route stay, so pod traffic to other nodes is black-holed during
//! the gap instead of leaking unencrypted through the default route, and the next
//! [`Userspace::start`] adopts the device as it is. Dropping a [`Userspace`] stops its threads
//! and removes its control socket but keeps the device; [`Userspace::delete`] removes it.
//!
//! The device configures nothing on the interface beyond opening it: the caller sets address,
//! MTU, routes and link state over netlink. `Config::mtu` must match the interface MTU (it
//! bounds the padding).

mod config;
mod link;
pub mod metrics;
mod net;
mod rx;
mod table;
mod timers;
mod tx;
mod worker;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flannel_packet::shared::Shared;
use nix::sys::socket::{setsockopt, sockopt};
use tracing::{info, warn};
use tun_rs::SyncDevice;

pub use self::metrics::{DropReason, Metrics};
use self::net::Sockets;
use self::table::Snapshot;
use self::worker::Worker;
use crate::device::{DeviceState, DeviceUpdate, WgDevice, WgError};
use crate::uapi::{UapiServer, socket_path};

/// What [`Userspace::start`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface name (`flannel-wg`): the TUN device and the control socket's name.
    pub name: String,
    /// The interface MTU (set by the caller over netlink); bounds the padding.
    pub mtu: u32,
    /// Workers (TUN queues and sockets); 0 = one per CPU, at most 4.
    pub queues: usize,
    /// TUN offloads (TSO/GRO) and UDP GSO/GRO.
    pub offload: bool,
    /// Directory of the control socket (`/var/run/wireguard`).
    pub uapi_dir: PathBuf,
}

/// The running workers of one socket generation (a new listen port starts a new one).
struct Workers {
    stop: Arc<AtomicBool>,
    wake: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.take() {
            // A byte in the pipe wakes every poller for good; the write end then closes.
            let _ = nix::unistd::write(&w, &[1]);
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a WireGuard data-path thread panicked");
            }
        }
    }
}

/// The device's shared core: what the control socket, the backend and the timer thread use.
struct Engine {
    name: String,
    mtu: usize,
    offload: bool,
    queues: Vec<Arc<SyncDevice>>,
    metrics: Arc<Metrics>,
    config: Mutex<config::Config>,
    table: Arc<Shared<Snapshot>>,
    sockets: Arc<Shared<Option<Sockets>>>,
    workers: Mutex<Option<Workers>>,
    dead: Arc<AtomicBool>,
    /// The network namespace the device was started in: sockets are made there whichever
    /// thread calls `set` (a socket belongs to the namespace of the thread that creates it).
    netns: std::fs::File,
}

fn io_error(dev: &str, op: &'static str, source: std::io::Error) -> WgError {
    WgError::Io {
        dev: dev.to_string(),
        op,
        source,
    }
}

impl Engine {
    /// Runs `f` on a short-lived thread inside the device's network namespace.
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&self.netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace helper thread panicked")))
        })
    }

    /// Binds new sockets on `port` and starts a new generation of workers on them, after
    /// stopping the old one.
    fn restart_workers(&self, port: u16, fwmark: u32) -> Result<(), WgError> {
        let mut slot = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut old) = slot.take() {
            old.stop();
        }
        self.sockets.publish(None);
        let socks = self
            .in_netns(|| Sockets::bind(self.queues.len(), port, fwmark))
            .and_then(|r| r)
            .map_err(|e| io_error(&self.name, "binding the UDP port", e))?;
        let gro = self.offload
            && socks
                .fds
                .iter()
                .all(|s| setsockopt(s, sockopt::UdpGroSegment, &true).is_ok());
        let (wake_r, wake_w) =
            nix::unistd::pipe().map_err(|e| io_error(&self.name, "creating a pipe", e.into()))?;
        let wake_r = Arc::new(wake_r);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Workers {
            stop: stop.clone(),
            wake: Some(wake_w),
            threads: Vec::with_capacity(2 * self.queues.len()),
        };
        let fds: Vec<Arc<OwnedFd>> = socks
            .fds
            .iter()
            .map(|f| f.try_clone().map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|e| io_error(&self.name, "duplicating a socket", e))?;
        for (i, (dev, sock)) in self.queues.iter().zip(fds).enumerate() {
            let w = Worker {
                name: self.name.clone(),
                dev: dev.clone(),
                sock,
                dual: socks.dual,
                wake: wake_r.clone(),
                stop: stop.clone(),
                dead: self.dead.clone(),
                metrics: self.metrics.clone(),
                table: self.table.reader(),
                offload: self.offload && gro,
                mtu: self.mtu,
            };
            let r = w.clone_for_thread();
            let spawn = |kind: &str, f: Box<dyn FnOnce() + Send>| {
                std::thread::Builder::new()
                    .name(format!("wg-{kind}-{i}"))
                    .spawn(f)
                    .map_err(|e| io_error(&self.name, "spawning a data-path thread", e))
            };
            workers
                .threads
                .push(spawn("tx", Box::new(move || tx::Tx::new(w).run()))?);
            workers
                .threads
                .push(spawn("rx", Box::new(move || rx::Rx::new(r).run()))?);
        }
        self.sockets.publish(Some(socks));
        *slot = Some(workers);
        Ok(())
    }

    fn listen_port(&self) -> u16 {
        self.sockets
            .snapshot()
            .as_ref()
            .as_ref()
            .map_or(0, |s| s.port)
    }
}

impl WgDevice for Engine {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self) -> Result<DeviceState, WgError> {
        let mut st = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state();
        st.listen_port = self.listen_port();
        Ok(st)
    }

    fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        let mut cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let snap = cfg.apply(update);
        self.table.publish(snap);
        let fwmark = cfg.fwmark();
        drop(cfg);
        match update.listen_port {
            Some(p) if p != self.listen_port() || p == 0 && self.listen_port() == 0 => {
                self.restart_workers(p, fwmark)?;
            }
            _ => {
                if update.fwmark.is_some()
                    && let Some(s) = self.sockets.snapshot().as_ref()
                {
                    s.set_fwmark(fwmark)
                        .map_err(|e| io_error(&self.name, "setting the firewall mark", e))?;
                }
            }
        }
        Ok(())
    }
}

/// The running userspace WireGuard device.
pub struct Userspace {
    engine: Arc<Engine>,
    timer_stop: Option<std::sync::mpsc::Sender<()>>,
    timer: Option<JoinHandle<()>>,
    uapi: Option<UapiServer>,
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace")
            .field("name", &self.engine.name)
            .field("queues", &self.engine.queues.len())
            .field("offload", &self.engine.offload)
            .finish()
    }
}

impl Userspace {
    /// Opens (creates, or adopts when it exists) the persistent TUN device `cfg.name`, binds a
    /// UDP port (a random one until `set` gives `listen_port`), starts the workers, the timer
    /// thread and the control socket `<uapi_dir>/<name>.sock`.
    pub fn start(cfg: Config) -> Result<Userspace, WgError> {
        let queues = match cfg.queues {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            n => n,
        };
        let tun = flannel_packet::tun::open(&flannel_packet::tun::TunSpec {
            name: cfg.name.clone(),
            queues,
            offload: cfg.offload,
            persist: true,
            mtu: None,
        })
        .map_err(|e| io_error(&cfg.name, "opening the TUN device", e))?;
        info!(
            "{}: userspace WireGuard on {} TUN queue(s), offloads {}",
            cfg.name,
            tun.queues.len(),
            if tun.offload { "on" } else { "off" }
        );
        let engine = Arc::new(Engine {
            name: cfg.name.clone(),
            mtu: cfg.mtu as usize,
            offload: tun.offload,
            queues: tun.queues.into_iter().map(Arc::new).collect(),
            metrics: Arc::new(Metrics::default()),
            config: Mutex::new(config::Config::new()),
            table: Shared::new(),
            sockets: Shared::new(),
            workers: Mutex::new(None),
            dead: Arc::new(AtomicBool::new(false)),
            netns: std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| io_error(&cfg.name, "opening the network namespace", e))?,
        });
        engine.restart_workers(0, 0)?;
        let (timer_stop, rx) = std::sync::mpsc::channel();
        let timer = {
            let (name, table, sockets, metrics) = (
                cfg.name.clone(),
                engine.table.clone(),
                engine.sockets.clone(),
                engine.metrics.clone(),
            );
            std::thread::Builder::new()
                .name("wg-timers".into())
                .spawn(move || timers::run(name, table, sockets, metrics, rx))
                .map_err(|e| io_error(&cfg.name, "spawning the timer thread", e))?
        };
        let mut dev = Userspace {
            engine: engine.clone(),
            timer_stop: Some(timer_stop),
            timer: Some(timer),
            uapi: None,
        };
        let path = socket_path(&cfg.uapi_dir, &cfg.name);
        dev.uapi = Some(UapiServer::start(&path, engine)?);
        Ok(dev)
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.engine.metrics.clone()
    }

    /// True when a worker found the TUN device gone or a thread died: the backend restarts
    /// the device.
    pub fn is_dead(&self) -> bool {
        if self.engine.dead.load(Ordering::Relaxed) {
            return true;
        }
        let workers = self
            .engine
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        workers
            .as_ref()
            .is_some_and(|w| w.threads.iter().any(JoinHandle::is_finished))
            || self.timer.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Stops the device and deletes the interface (tests, or a switch to the kernel device).
    pub fn delete(mut self) -> Result<(), WgError> {
        self.shutdown();
        self.engine
            .in_netns(|| link::delete(&self.engine.name))
            .and_then(|r| r)
            .map_err(|e| io_error(&self.engine.name, "deleting the interface", e))
    }

    fn shutdown(&mut self) {
        self.uapi = None;
        self.timer_stop = None;
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
        if let Some(mut w) = self
            .engine
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.stop();
        }
        self.engine.sockets.publish(None);
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl WgDevice for Userspace {
    fn name(&self) -> &str {
        &self.engine.name
    }

    fn get(&self) -> Result<DeviceState, WgError> {
        self.engine.get()
    }

    fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        self.engine.set(update)
    }
}
