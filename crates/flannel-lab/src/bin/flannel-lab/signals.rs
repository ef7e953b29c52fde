//! Ctrl-C, SIGTERM and SIGHUP during `up`.
//!
//! While the lab is being built the drop guards own it, and a signal's default action (exit at
//! once) would skip them and leave a half-built lab. So `up` blocks these signals and a helper
//! thread collects them with `sigwait`: the first one asks the main thread to stop after the
//! current step and unwind (removing everything); a second one exits at once, and the state
//! file left behind lets `flannel-lab down` finish the job. Once the lab is handed over to the
//! state file, a signal just ends `up`; the lab keeps running.
//!
//! Children do not inherit the blocked mask: std resets the signal mask of every process it
//! spawns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};

/// Exit status after a signal, as shells report SIGINT.
pub const INTERRUPTED_EXIT: u8 = 130;

/// The signal state of one `up`.
#[derive(Clone)]
pub struct Signals {
    interrupted: Arc<AtomicBool>,
    detached: Arc<AtomicBool>,
}

impl Signals {
    /// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread started after)
    /// and starts the thread that waits for them. Call before starting any other thread.
    pub fn install() -> Signals {
        let s = Signals {
            interrupted: Arc::new(AtomicBool::new(false)),
            detached: Arc::new(AtomicBool::new(false)),
        };
        let mut set = SigSet::empty();
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(sig);
        }
        if set.thread_block().is_err() {
            // Without the block the default actions apply; `down` still cleans up.
            return s;
        }
        let me = s.clone();
        std::thread::spawn(move || {
            while let Ok(sig) = set.wait() {
                if me.detached.load(Ordering::SeqCst) {
                    eprintln!(
                        "\nflannel-lab: {sig}: stopping; the lab keeps running (`flannel-lab status`, `flannel-lab down`)"
                    );
                    std::process::exit(i32::from(INTERRUPTED_EXIT));
                }
                if me.interrupted.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "\nflannel-lab: {sig} again: exiting now; run `flannel-lab down` to remove what was built"
                    );
                    std::process::exit(i32::from(INTERRUPTED_EXIT));
                }
                eprintln!(
                    "\nflannel-lab: {sig}: stopping after the current step and removing what was built (again to quit at once)"
                );
            }
        });
        s
    }

    /// Whether a signal asked `up` to stop.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// From now on a signal ends the process at once: nothing is left to unwind.
    pub fn set_detached(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }
}
