//! The `flannel` CNI plugin: reads the node's subnet from flanneld's subnet.env and delegates
//! the actual wiring to another plugin (`bridge` + `host-local` by default).
//!
//! A drop-in replacement for upstream's plugin (flannel-io/cni-plugin): the same netconf keys,
//! the same delegate config down to the saved bytes, the same error texts; plus spec error
//! codes, atomic state files, a CHECK that looks, and GC/STATUS. Synchronous and small: it
//! runs once per pod event, so startup time is what matters.
//!
//! Layout: [`skel`] speaks the protocol (env, stdin, versions, output), [`netconf`] reads the
//! config, [`delegate`] builds the delegate config, [`store`] keeps it per container,
//! [`invoke`] runs the delegate, [`check`] inspects a pod's namespace, [`commands`] ties them
//! together.

pub mod check;
pub mod commands;
pub mod delegate;
pub mod error;
pub mod gojson;
pub mod invoke;
pub mod netconf;
pub mod skel;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::CniError;

/// Runs the plugin with the process's environment and stdio; returns the exit code.
pub fn main_from_env() -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    skel::main_with(
        &|k| std::env::var(k).ok(),
        &mut stdin.lock(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
}
