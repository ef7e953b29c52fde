//! With `--flows`: the flow collector's parts, started with the enforcer. Conntrack
//! accounting is turned on, the reader threads feed the collector, and `/flows` is served
//! from the ring on the enforcer's port, with open flows' counters read from the conntrack
//! table when asked. The enforcer's task republishes the pod directory before each sync.

use std::sync::Arc;
use std::time::Duration;

use flanneld::http::RouteFn;

use crate::flows::collector::Collector;
use crate::flows::enrich::SharedDirectory;
use crate::flows::live::LiveTable;
use crate::flows::metrics::FlowMetrics;
use crate::flows::ring::FlowRing;
use crate::flows::sources::Readers;
use crate::flowsrc::ctdump;

/// Longest read of the conntrack table for one `/flows` answer.
const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running flow collector.
pub struct Flows {
    /// The pod names records get; the enforcer's task publishes into it.
    pub directory: SharedDirectory,
    /// `GET /flows`, for the health server.
    pub route: RouteFn,
    /// The reader threads (stopped when dropped).
    _readers: Readers,
}

impl Flows {
    /// Starts the collector for `node` keeping `buffer` records; drops are read from NFLOG
    /// `nflog_group`.
    pub fn start(
        node: &str,
        buffer: usize,
        nflog_group: Option<u16>,
        metrics: Arc<FlowMetrics>,
    ) -> Flows {
        let directory = SharedDirectory::new();
        let ring = Arc::new(FlowRing::new(buffer));
        let collector = Arc::new(Collector::new(
            node.to_string(),
            ring.clone(),
            directory.clone(),
            metrics,
        ));
        let live: LiveTable = Arc::new(|| ctdump::dump(LIVE_TIMEOUT).map_err(|e| chain(&e)));
        super::sysctl::enable_conntrack_accounting(std::path::Path::new("/"));
        let (readers, _) = Readers::start(&collector, nflog_group);
        Flows {
            directory,
            route: crate::flows::http::route(ring, Some(live)),
            _readers: readers,
        }
    }
}

/// An error and its causes, `: `-separated (for a log line).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
