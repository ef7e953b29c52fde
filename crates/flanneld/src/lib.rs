//! The flannel node agent as a library, so integration tests can drive its parts.
//!
//! `flanneld` (src/main.rs) is a thin shell: it parses flags ([`cli`]), sets up logging
//! ([`logging`]), builds the subnet manager and hands over to [`daemon::run`].

pub mod backend;
pub mod cli;
pub mod daemon;
pub mod http;
pub mod iface;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod peers;
pub mod reconcile;
pub mod signals;

#[cfg(test)]
pub(crate) mod testing;
