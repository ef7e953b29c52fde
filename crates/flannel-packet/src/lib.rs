//! Packet code shared by flannel-rs's userspace data paths: the udp backend (flanneld) and
//! the userspace WireGuard device (flannel-wireguard).
//!
//! Both move packets between a multi-queue TUN device with `IFF_VNET_HDR` offloads and
//! batched UDP sockets, so they share the pure per-packet parts and the TUN opening:
//! * [`codec`]: header validation (IPv4, IPv6), checksums, TTL, ICMP net unreachable;
//! * [`offload`]: TSO segmentation of super-packets read from the TUN device and GRO-style
//!   coalescing of received segments for the write back;
//! * [`shared`]: a value the control plane replaces and data-path threads read lock-free;
//! * [`tun`]: opening the TUN device multi-queue with offloads, falling back to plainer
//!   variants, optionally persistent (the WireGuard device survives a restart);
//! * [`worker`]: a worker thread's sleep (poll with a stop pipe) and its TUN error handling.
//!
//! Everything here is safe code: the TUN ioctls go through `tun-rs`, the rest through `nix`.

pub mod codec;
pub mod offload;
pub mod shared;
pub mod tun;
pub mod worker;
