//! Running async code inside a network namespace.
//!
//! Network namespaces are a per-thread property on Linux, and a netlink socket stays bound to
//! the namespace of the thread that created it. So the safe way to work in another namespace
//! from a multi-threaded program is a dedicated thread that enters the namespace first and
//! then runs its own single-threaded tokio runtime: every socket it creates (a [`Netlink`],
//! [`LinkEvents`]) and every child process it spawns lives in that namespace, and no other
//! thread's namespace changes.
//!
//! [`NetnsTarget::Fresh`] gives a new anonymous namespace that disappears when the thread ends
//! (and with it every device in it), which is what the tests use: nothing to clean up, nothing
//! visible in `ip netns list`.
//!
//! [`Netlink`]: crate::Netlink
//! [`LinkEvents`]: crate::LinkEvents

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns, unshare};

/// Which namespace the thread should enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsTarget {
    /// A new anonymous namespace (`unshare(CLONE_NEWNET)`), gone when the thread exits.
    Fresh,
    /// A named namespace, `/run/netns/<name>` (as made by `ip netns add`).
    Named(String),
    /// A namespace file, e.g. `/proc/<pid>/ns/net`.
    Path(PathBuf),
}

/// Why the namespace thread could not run the closure.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The thread could not be created.
    #[error("spawning the netns thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// `unshare(CLONE_NEWNET)` failed (needs CAP_SYS_ADMIN).
    #[error("unshare(CLONE_NEWNET): {0}")]
    Unshare(#[source] nix::Error),
    /// The namespace file could not be opened.
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `setns` failed.
    #[error("setns into {path}: {source}")]
    Setns {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The thread's tokio runtime could not be built.
    #[error("building the netns thread's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn enter(target: &NetnsTarget) -> Result<(), NetnsError> {
    let path = match target {
        NetnsTarget::Fresh => {
            return unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare);
        }
        NetnsTarget::Named(name) => PathBuf::from("/run/netns").join(name),
        NetnsTarget::Path(p) => p.clone(),
    };
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns { path, source })
}

/// Starts a thread that enters `target`, builds a current-thread tokio runtime (all drivers
/// enabled) and runs `f()` to completion on it. The future need not be `Send`.
pub fn spawn_in_netns<F, Fut, T>(
    target: NetnsTarget,
    f: F,
) -> Result<JoinHandle<Result<T, NetnsError>>, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            enter(&target)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(NetnsError::Runtime)?;
            Ok(rt.block_on(f()))
        })
        .map_err(NetnsError::Spawn)
}

/// Like [`spawn_in_netns`] but waits for the result. A panic inside `f` is re-raised in the
/// caller, so test assertions inside the namespace fail the test normally.
///
/// The wait blocks the calling thread: call this from plain threads (tests, the lab, `main`),
/// and from async code only through `tokio::task::spawn_blocking`.
pub fn run_in_netns<F, Fut, T>(target: NetnsTarget, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    match spawn_in_netns(target, f)?.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The namespace file of the calling thread, `/proc/<pid>/task/<tid>/ns/net`: valid for
/// other threads ([`NetnsTarget::Path`]) and other processes (`nsenter --net=...`) for as long
/// as the thread lives.
pub fn current_thread_netns_path() -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/task/{}/ns/net",
        nix::unistd::getpid(),
        nix::unistd::gettid()
    ))
}
