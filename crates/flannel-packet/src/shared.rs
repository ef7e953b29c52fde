//! A value shared between a control plane that replaces it now and then and data-path threads
//! that read it for every packet, without a lock on the read path.
//!
//! The control plane publishes a new immutable `Arc<T>` ([`Shared::publish`]); each data-path
//! thread holds a [`Reader`] that compares one atomic generation counter per call and takes
//! the (briefly locked) new `Arc` only when it changed. In the steady state a read is one
//! relaxed-cost atomic load, and an update never stops the data path (the ArcSwap pattern,
//! without the dependency).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The current value and its generation.
#[derive(Debug, Default)]
pub struct Shared<T> {
    generation: AtomicU64,
    current: Mutex<Arc<T>>,
}

impl<T: Default> Shared<T> {
    /// A shared value starting at `T::default()`.
    pub fn new() -> Arc<Shared<T>> {
        Shared::with(T::default())
    }
}

impl<T> Shared<T> {
    /// A shared value starting at `value`.
    pub fn with(value: T) -> Arc<Shared<T>> {
        Arc::new(Shared {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(value)),
        })
    }

    /// Publishes a new value; readers switch to it at their next [`Reader::get`].
    pub fn publish(&self, value: T) {
        let value = Arc::new(value);
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *cur = value;
        // Bumped under the lock, so a reader that sees the new generation finds the new value.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current value (takes the lock; for the control plane and tests).
    pub fn snapshot(&self) -> Arc<T> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reader for one data-path thread.
    pub fn reader(self: &Arc<Self>) -> Reader<T> {
        let generation = self.generation.load(Ordering::Acquire);
        Reader {
            value: self.snapshot(),
            generation,
            shared: self.clone(),
        }
    }
}

/// One thread's cached view of a [`Shared`] value.
#[derive(Debug)]
pub struct Reader<T> {
    shared: Arc<Shared<T>>,
    generation: u64,
    value: Arc<T>,
}

impl<T> Clone for Reader<T> {
    fn clone(&self) -> Reader<T> {
        Reader {
            shared: self.shared.clone(),
            generation: self.generation,
            value: self.value.clone(),
        }
    }
}

impl<T> Reader<T> {
    /// The current value: one atomic load unless a new one was published.
    #[inline]
    pub fn get(&mut self) -> &Arc<T> {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.value = self.shared.snapshot();
            self.generation = g;
        }
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_a_published_value_at_their_next_get() {
        let s = Shared::with(1u32);
        let mut r = s.reader();
        assert_eq!(**r.get(), 1);
        s.publish(2);
        assert_eq!(**r.get(), 2);
        assert_eq!(*s.snapshot(), 2);
        let mut late = s.reader();
        assert_eq!(**late.get(), 2);
    }
}
