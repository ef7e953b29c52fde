//! The `flannel` CNI plugin: reads the node's subnet from flanneld's subnet.env and delegates
//! the actual wiring to another plugin (`bridge` + `host-local` by default).
//!
//! A drop-in replacement for upstream's plugin (flannel-io/cni-plugin): the same netconf keys,
//! the same delegate config down to the saved bytes, the same error texts; plus spec error
//! codes, atomic state files, a CHECK that looks, and GC/STATUS. Synchronous and small: it
//! runs once per pod event, so startup time is what matters.
//!
//! Layout: [`request`] reads and validates an invocation (env, stdin, versions), [`skel`]
//! dispatches it to the handlers of [`commands`] and prints the outcome, [`netconf`] reads the
//! config, [`delegate`] builds the delegate config (encoded by [`marshal`] as Go would),
//! [`store`] keeps it per container, [`invoke`] runs the delegate, [`check`] inspects a pod's
//! namespace, [`error`] is the CNI error result.

pub mod check;
pub mod commands;
pub mod delegate;
pub mod error;
pub mod invoke;
pub mod marshal;
pub mod netconf;
pub mod request;
pub mod skel;
pub mod store;

pub use error::CniError;

/// Runs the plugin with the process's environment and stdio; returns the exit code.
pub fn main_from_env() -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    skel::main_with(
        &commands::FUNCS,
        &|k| std::env::var(k).ok(),
        &mut stdin.lock(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
}
