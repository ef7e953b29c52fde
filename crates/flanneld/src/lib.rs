//! The flannel node agent as a library, so integration tests can drive its parts.

pub mod cli;
pub mod iface;
pub mod logging;
pub mod reconcile;
