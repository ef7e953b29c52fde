//! Opening the TUN device: multi-queue with `IFF_VNET_HDR` offloads when the kernel allows,
//! plainer variants otherwise.
//!
//! The device is opened (created, or attached to when it exists and is persistent) with
//! `IFF_TUN | IFF_NO_PI`; nothing else about it is configured here. The caller sets address,
//! MTU, routes and link state over netlink, so that a re-opened persistent device keeps them.

use std::io;

use tracing::{debug, warn};
use tun_rs::SyncDevice;

/// What to open.
#[derive(Debug, Clone)]
pub struct TunSpec {
    /// Interface name.
    pub name: String,
    /// Queues wanted (one per worker); fewer may be opened.
    pub queues: usize,
    /// Try `IFF_VNET_HDR` with TSO/USO offloads.
    pub offload: bool,
    /// Mark the device persistent (`TUNSETPERSIST`): it outlives our descriptors, and the next
    /// [`open`] of the same name attaches to it, address and routes included.
    pub persist: bool,
    /// MTU to set when opening; `None` leaves it to the caller (netlink).
    pub mtu: Option<u16>,
}

/// The opened queues (non-blocking) and whether offloads are on.
pub struct Tun {
    /// One descriptor per queue; the first is the one the device was opened with.
    pub queues: Vec<SyncDevice>,
    /// True when every queue speaks `virtio_net_hdr` with TSO.
    pub offload: bool,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("queues", &self.queues.len())
            .field("offload", &self.offload)
            .finish()
    }
}

fn io_err(what: &str, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens the TUN device: multi-queue with offloads if possible, else plainer variants (an
/// existing persistent device accepts only the queue mode it was created with).
pub fn open(spec: &TunSpec) -> io::Result<Tun> {
    let attempts: &[(bool, bool)] = if spec.offload {
        &[(true, true), (false, true), (true, false), (false, false)]
    } else {
        &[(true, false), (false, false)]
    };
    let mut last = None;
    for &(multi, offload) in attempts {
        if multi && spec.queues < 2 {
            continue;
        }
        let mut builder = tun_rs::DeviceBuilder::new().name(spec.name.clone());
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(mtu);
        } else {
            // Leave the link state to the caller too: a re-attached persistent device keeps
            // whatever netlink set.
            builder = builder.inherit_enable_state();
        }
        let built = builder
            .with(|b| {
                b.multi_queue(multi);
                b.offload(offload);
            })
            .build_sync();
        match built {
            Ok(dev) => {
                let offload = offload && dev.tcp_gso();
                if spec.persist {
                    dev.persist()
                        .map_err(|e| io_err("making the TUN device persistent", e))?;
                }
                let mut queues = vec![dev];
                if multi {
                    for _ in 1..spec.queues {
                        match queues[0].try_clone() {
                            Ok(q) => queues.push(q),
                            Err(e) => {
                                warn!("{}: could not open another TUN queue: {e}", spec.name);
                                break;
                            }
                        }
                    }
                }
                for d in &queues {
                    d.set_nonblocking(true)
                        .map_err(|e| io_err("setting the TUN queue non-blocking", e))?;
                }
                return Ok(Tun { queues, offload });
            }
            Err(e) => {
                debug!(
                    "{}: TUN open (multi-queue {multi}, offload {offload}) failed: {e}",
                    spec.name
                );
                last = Some(e);
            }
        }
    }
    Err(io_err(
        &format!("failed to open TUN device {}", spec.name),
        last.unwrap_or_else(|| io::Error::other("no attempt made")),
    ))
}
