//! The cross-platform userspace control protocol of WireGuard.
//!
//! Every userspace WireGuard (wireguard-go, boringtun's device, ours) listens on
//! `/var/run/wireguard/<name>.sock` and speaks the same small text protocol, which is what
//! `wg show` and `wg set` use when the kernel has no device of that name. Serving it makes our
//! userspace device inspectable and configurable with the standard tools ([`UapiServer`]);
//! speaking it lets flannel-rs drive any other userspace implementation, and lets tests check
//! ours against an independent one ([`UapiClient`]).
//!
//! A request is one operation line (`get=1` or `set=1`), then for `set` `key=value` lines,
//! then an empty line; keys are hex. The answer to `get` is the device as `key=value` lines;
//! every answer ends with `errno=N` and an empty line (0 = success). [`text`] holds the pure
//! conversions between these texts and [`DeviceState`](crate::DeviceState) /
//! [`DeviceUpdate`](crate::DeviceUpdate).

mod client;
mod server;
pub mod text;

#[cfg(test)]
mod tests;

pub use client::UapiClient;
pub use server::UapiServer;

use std::path::{Path, PathBuf};

/// Where userspace implementations put their control sockets, as `wg` expects.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The control socket of device `name` in `dir`: `<dir>/<name>.sock`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}
