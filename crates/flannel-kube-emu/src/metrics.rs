//! Request counters per verb, resource and subresource, with the response bytes and (for
//! watches) events sent, served as Prometheus text at `GET /metrics`: what a scale test needs
//! to tell what one agent costs the API server (requests and bytes per node per hour).
//!
//! The verbs are the API server's audit verbs (`get`, `list`, `watch`, `create`, `update`,
//! `patch`, `delete`); paths outside the API (discovery, `/version`) count under their HTTP
//! method with an empty resource. `/metrics` and the `/emu/` controls are not counted, so
//! scraping does not disturb the figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The labels of one counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` (or the HTTP method,
    /// lower case, outside the API's resources).
    pub verb: String,
    /// `nodes`, `pods`, ... (empty outside the API's resources).
    pub resource: String,
    /// `status` or empty.
    pub subresource: String,
}

/// The counts of one label set.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub frames: AtomicU64,
}

/// A snapshot of one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCount {
    /// Requests received.
    pub requests: u64,
    /// Response body bytes sent (for a watch: every event line so far).
    pub bytes: u64,
    /// Body frames sent: for a watch, the events (bookmarks included).
    pub frames: u64,
}

/// One metric family: name, help text, and which count it shows.
type Family = (&'static str, &'static str, fn(&RequestCount) -> u64);

/// All counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    counters: Mutex<BTreeMap<RequestLabels, Arc<Counter>>>,
}

impl Metrics {
    /// The counter for `labels`, created at zero on first use.
    pub fn counter(&self, labels: RequestLabels) -> Arc<Counter> {
        let mut m = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(m.entry(labels).or_default())
    }

    /// Every counter's current values.
    pub fn snapshot(&self) -> BTreeMap<RequestLabels, RequestCount> {
        let m = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        m.iter()
            .map(|(l, c)| {
                (
                    l.clone(),
                    RequestCount {
                        requests: c.requests.load(Ordering::Relaxed),
                        bytes: c.bytes.load(Ordering::Relaxed),
                        frames: c.frames.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let snap = self.snapshot();
        let mut out = String::new();
        let families: [Family; 3] = [
            (
                "flannel_kube_emu_requests_total",
                "Requests received, by verb, resource and subresource.",
                |c| c.requests,
            ),
            (
                "flannel_kube_emu_response_bytes_total",
                "Response body bytes sent (watches: every event line so far).",
                |c| c.bytes,
            ),
            (
                "flannel_kube_emu_response_frames_total",
                "Response body frames sent (watches: one per event, bookmarks included).",
                |c| c.frames,
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, c) in &snap {
                let _ = writeln!(
                    out,
                    "{name}{{verb=\"{}\",resource=\"{}\",subresource=\"{}\"}} {}",
                    l.verb,
                    l.resource,
                    l.subresource,
                    value(c)
                );
            }
        }
        out
    }
}
