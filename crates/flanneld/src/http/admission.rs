//! Which connections the health server keeps when it is full.
//!
//! The probe port listens on the host network, so anyone who can reach it can open
//! connections that send half a request and stay. Making new connections wait for a free
//! slot would let 64 such clients hold the kubelet's liveness probe until their header
//! timeouts, and the kubelet would restart the daemon. So the server always accepts, and when
//! it holds [`MAX_CONNECTIONS`] already it closes the one that has waited longest without a
//! complete request (a slow or idle client) to make room; only when every held connection
//! is being answered (streams included) is the newcomer closed instead. Either way the
//! connection is counted as shed. A probe's request arrives whole within a millisecond of its
//! connect, so it is never the one waiting longest.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};

/// Most connections held at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Where one connection is: answering a request, or waiting for one (since when).
#[derive(Debug)]
pub struct Phase {
    epoch: Instant,
    answering: AtomicBool,
    waiting_since_us: AtomicU64,
}

impl Phase {
    /// A connection just accepted: waiting for its first request.
    pub fn new(epoch: Instant) -> Phase {
        let p = Phase {
            epoch,
            answering: AtomicBool::new(false),
            waiting_since_us: AtomicU64::new(0),
        };
        p.waiting();
        p
    }

    /// A complete request arrived; until its response is done the connection is not shed.
    pub fn answering(&self) {
        self.answering.store(true, Ordering::Relaxed);
    }

    /// The response is done (or dropped): waiting for the next request from now.
    pub fn waiting(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waiting_since_us.store(us, Ordering::Relaxed);
        self.answering.store(false, Ordering::Relaxed);
    }

    /// When it started waiting, if it is waiting.
    fn waiting_since(&self) -> Option<u64> {
        (!self.answering.load(Ordering::Relaxed))
            .then(|| self.waiting_since_us.load(Ordering::Relaxed))
    }
}

/// A response body that sets its connection's phase back to waiting when dropped, so a
/// response that ends, fails or is abandoned by its client all count as done. Length and end
/// are the inner body's, so a whole body keeps its `content-length`.
pub struct Answering<B> {
    inner: B,
    phase: Arc<Phase>,
}

impl<B> Answering<B> {
    /// Marks `phase` answering until the returned body is dropped.
    pub fn new(inner: B, phase: Arc<Phase>) -> Answering<B> {
        phase.answering();
        Answering { inner, phase }
    }
}

impl<B> Drop for Answering<B> {
    fn drop(&mut self) {
        self.phase.waiting();
    }
}

impl<B: Body + Unpin> Body for Answering<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to do with a newly accepted connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<H> {
    /// There is room: serve it.
    Room,
    /// Serve it after closing this held connection (returned, already forgotten).
    Shed(H),
    /// Every held connection is answering: close the new one.
    Refuse,
}

/// The held connections, keyed by `K` (the connection task's id), each with a handle `H` that
/// closes it (the task's abort handle).
#[derive(Debug)]
pub struct Admission<K, H> {
    held: HashMap<K, (H, Arc<Phase>)>,
    max: usize,
}

impl<K: Hash + Eq + Copy, H> Admission<K, H> {
    /// Room for `max` connections (at least one).
    pub fn new(max: usize) -> Admission<K, H> {
        Admission {
            held: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Decides on a new connection; call [`Admission::hold`] when it is served.
    pub fn admit(&mut self) -> Admit<H> {
        if self.held.len() < self.max {
            return Admit::Room;
        }
        let oldest = self
            .held
            .iter()
            .filter_map(|(k, (_, phase))| Some((phase.waiting_since()?, *k)))
            .min_by_key(|(since, _)| *since)
            .map(|(_, k)| k);
        match oldest.and_then(|k| self.held.remove(&k)) {
            Some((handle, _)) => Admit::Shed(handle),
            None => Admit::Refuse,
        }
    }

    /// Records a served connection.
    pub fn hold(&mut self, key: K, handle: H, phase: Arc<Phase>) {
        self.held.insert(key, (handle, phase));
    }

    /// Forgets a connection that ended.
    pub fn ended(&mut self, key: K) {
        self.held.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_connection_makes_room_and_answering_ones_stay() {
        let epoch = Instant::now();
        let mut a: Admission<u32, &str> = Admission::new(3);
        let mut phases = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let p = Arc::new(Phase::new(epoch));
            assert_eq!(a.admit(), Admit::Room);
            a.hold(i as u32, name, p.clone());
            phases.push(p);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Full: "a" has waited longest, unless it is answering.
        phases[0].answering();
        assert_eq!(a.admit(), Admit::Shed("b"));
        assert_eq!(a.len(), 2);
        a.hold(9, "d", Arc::new(Phase::new(epoch)));
        // "a" done answering: now waiting since just now, so "c" goes first.
        phases[0].waiting();
        assert_eq!(a.admit(), Admit::Shed("c"));
        a.hold(10, "e", Arc::new(Phase::new(epoch)));
        // Everyone answering: the newcomer is refused.
        let mut all = Admission::<u32, ()>::new(2);
        for k in 0..2 {
            let p = Arc::new(Phase::new(epoch));
            p.answering();
            all.hold(k, (), p);
        }
        assert_eq!(all.admit(), Admit::Refuse);
        all.ended(0);
        assert_eq!(all.admit(), Admit::Room);
        assert!(!all.is_empty());
    }
}
