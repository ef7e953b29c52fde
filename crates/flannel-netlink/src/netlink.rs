//! The connection object every other module hangs its methods on.

use std::fmt::Display;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use tokio::sync::Mutex;

use crate::error::{NetlinkError, Result};
use crate::raw::{Outcome, RawSocket, Request};

/// A connection to the kernel's routing netlink in one network namespace.
///
/// It holds two sockets, both opened by [`Netlink::new`] in the calling thread's network
/// namespace (a netlink socket stays bound to the namespace it was created in, whichever thread
/// uses it later):
///
/// * an rtnetlink connection, driven by a task on the current tokio runtime, for dumps and
///   lookups (multi-part answers);
/// * a write socket for every change (see [`Netlink::apply`]), which packs many requests into
///   one datagram and waits for the kernel's answers on the reactor, never blocking the thread.
///
/// Cloning is cheap and shares both sockets. Dropping the last clone stops the connection task.
#[derive(Clone)]
pub struct Netlink {
    inner: Arc<Inner>,
}

struct Inner {
    handle: rtnetlink::Handle,
    /// An async lock: a task waiting for the kernel's answers holds it across an await, and
    /// other tasks wanting to write wait on the runtime, not by blocking the thread.
    raw: Mutex<RawSocket>,
    task: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace and spawns its driver task
    /// on the current tokio runtime.
    ///
    /// Fails with [`NetlinkError::NoRuntime`] outside a runtime instead of panicking.
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| NetlinkError::NoRuntime("Netlink::new"))?;
        // Entering the runtime makes the socket registration below work even when `new` is
        // called from a plain thread that merely holds a runtime handle.
        let _guard = rt.enter();
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Socket {
                op: "open rtnetlink connection",
                source,
            })?;
        let raw = RawSocket::open().map_err(|source| NetlinkError::Socket {
            op: "open rtnetlink write socket",
            source,
        })?;
        let task = rt.spawn(conn).abort_handle();
        Ok(Self {
            inner: Arc::new(Inner {
                handle,
                raw: Mutex::new(raw),
                task,
            }),
        })
    }

    pub(crate) fn handle(&self) -> &rtnetlink::Handle {
        &self.inner.handle
    }

    /// Runs requests on the write socket, one datagram at a time, yielding to the executor
    /// between datagrams. Returns one outcome per request, in order.
    ///
    /// The socket is locked per datagram, so concurrent callers interleave whole datagrams and
    /// each one's answers are read before the next caller sends.
    pub(crate) async fn execute(&self, reqs: impl Iterator<Item = Request>) -> Vec<Outcome> {
        let mut iter = reqs;
        let mut out = Vec::new();
        let mut pending: Option<NetlinkMessage<RouteNetlinkMessage>> = None;
        loop {
            let got = {
                let mut raw = self.inner.raw.lock().await;
                let Some(packed) = raw.pack(&mut iter, &mut pending) else {
                    break;
                };
                raw.exchange(packed).await
            };
            out.extend(got);
            tokio::task::yield_now().await;
        }
        out
    }

    /// Runs one request and converts its outcome.
    pub(crate) async fn execute_one(
        &self,
        op: &'static str,
        object: impl Display,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        let outcome = self
            .execute(std::iter::once((msg, flags)))
            .await
            .pop()
            .unwrap_or_else(|| Outcome::Unconfirmed("request was not sent".into()));
        outcome_to_result(op, || object.to_string(), outcome)
    }
}

/// Turns a raw outcome into this crate's result type.
pub(crate) fn outcome_to_result(
    op: &'static str,
    object: impl FnOnce() -> String,
    outcome: Outcome,
) -> Result<()> {
    match outcome {
        Outcome::Ok => Ok(()),
        Outcome::Failed { errno, message } => {
            Err(NetlinkError::kernel(op, object(), errno, message))
        }
        Outcome::Unconfirmed(reason) => Err(NetlinkError::Unconfirmed {
            op,
            object: object(),
            reason,
        }),
    }
}

/// Collects an rtnetlink dump into a vector, converting errors.
pub(crate) async fn collect<T>(
    op: &'static str,
    object: &str,
    stream: impl Stream<Item = std::result::Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>> {
    stream
        .map_err(|e| NetlinkError::from_rtnl(op, object, e))
        .try_collect()
        .await
}
