//! `flannel-observe --follow`: every node's stream at once, printed as records arrive, and
//! kept up while nodes come and go.
//!
//! A follow is watched during rollouts and incidents, exactly when enforcers restart and
//! nodes drop off for a while, so a node whose stream ends or breaks, or that could not be
//! reached, is asked again with backoff (1 s doubling to 30 s) instead of being left out for
//! the rest of the session. The query again carries `since` (the time since the stream was
//! lost, plus a second), so records the node kept meanwhile are printed; records that were
//! printed before the loss come again in that window and are skipped by their time.
//!
//! Two cases still end a follow: no node could be followed at all on the first try (status
//! 1, as a query: a wrong address should not wait forever), and a node refusing the query
//! itself (a 4xx: the same query would be refused again).

use std::io::Write;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::flows::cli::{NodeEndpoint, OutputFormat, follow_header, follow_row};
use crate::flows::client::{ClientError, FlowLine, open};
use crate::flows::filter::FlowFilter;

/// The first wait before asking a node again.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Added to the gap when asking again, so no record at its edge is missed (the duplicates
/// this brings are skipped).
const SINCE_MARGIN: Duration = Duration::from_secs(1);

/// What a node's follow task reports.
enum Event {
    /// The node accepted the query: its records follow.
    Following,
    /// A record or a loss notice.
    Line(FlowLine),
    /// The try ended: `Ok` when the node ended the stream. The task asks again after
    /// `retry`, unless it is `None` (the node refused the query itself).
    Ended {
        result: Result<(), ClientError>,
        retry: Option<Duration>,
    },
}

/// Whether asking again could help: not when the node refused the query (400: a parameter
/// it does not know), but when it is busy (503: too many followers) or unreachable.
fn worth_retrying(result: &Result<(), ClientError>) -> bool {
    !matches!(result, Err(ClientError::Status { status, .. }) if (400..500).contains(status))
}

/// Follows node `i` until its receiver goes or it refuses the query.
async fn follow_node(
    i: usize,
    node: NodeEndpoint,
    mut filter: FlowFilter,
    tx: mpsc::UnboundedSender<(usize, Event)>,
) {
    let mut backoff = RETRY_MIN;
    loop {
        let result = match open(&node.name, node.addr, &filter).await {
            Ok(stream) => {
                backoff = RETRY_MIN;
                if tx.send((i, Event::Following)).is_err() {
                    return;
                }
                let lines = tx.clone();
                stream
                    .read(move |l| lines.send((i, Event::Line(l))).is_ok())
                    .await
            }
            Err(e) => Err(e),
        };
        let lost_at = Instant::now();
        let retry = worth_retrying(&result).then_some(backoff);
        if tx.send((i, Event::Ended { result, retry })).is_err() {
            return;
        }
        let Some(wait) = retry else { return };
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(RETRY_MAX);
        filter.since = Some(lost_at.elapsed() + SINCE_MARGIN);
    }
}

/// What the printer knows of one node.
#[derive(Default)]
struct NodeState {
    /// It accepted the query at least once.
    followed: bool,
    /// A try of it has ended (while `followed` is false: every try failed before the node
    /// accepted the query).
    tried: bool,
    /// It is being followed now.
    up: bool,
    /// The newest record printed from it.
    newest: Option<Timestamp>,
    /// After a loss: records up to this time were printed already.
    printed_until: Option<Timestamp>,
    /// The last failure told, so a node that stays down is not reported at every retry.
    last_error: Option<String>,
}

/// Follows every node at once and prints each record as it arrives, one flushed line each
/// (a table header first), until `shutdown` turns true or stdout closes. Nodes that go away
/// are asked again (see the module documentation). Exit status 1 when no node could be
/// followed at all on the first try.
pub async fn follow(
    nodes: &[NodeEndpoint],
    filter: &FlowFilter,
    output: OutputFormat,
    out: &mut impl Write,
    err: &mut impl Write,
    mut shutdown: watch::Receiver<bool>,
) -> u8 {
    // Unbounded, yet it cannot grow without end: on the current-thread runtime a slow stdout
    // blocks the one thread, so no node's socket is read meanwhile; TCP pushes back and the
    // node, which never waits for a follower, sends a loss notice instead.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Event)>();
    // Dropped on return: every node's task ends with it.
    let mut tasks = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        tasks.spawn(follow_node(i, node.clone(), filter.clone(), tx.clone()));
    }
    drop(tx);
    let mut print = |line: String| -> bool {
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    };
    if output == OutputFormat::Table && !print(follow_header() + "\n") {
        return 0;
    }
    let mut state: Vec<NodeState> = nodes.iter().map(|_| NodeState::default()).collect();
    loop {
        let (i, event) = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                // Every node refused the query.
                None => break,
            },
            _ = shutdown.changed() => return 0,
        };
        let (name, node) = (&nodes[i].name, &mut state[i]);
        let record = match event {
            Event::Following => {
                if node.followed && !node.up {
                    let _ = writeln!(err, "flannel-observe: following {name} again");
                }
                (node.followed, node.up, node.last_error) = (true, true, None);
                continue;
            }
            Event::Line(FlowLine::Record(r)) => r,
            Event::Line(FlowLine::Lost(n)) => {
                let _ = writeln!(
                    err,
                    "flannel-observe: {name} skipped {n} records for this client (it fell behind)"
                );
                continue;
            }
            Event::Ended { result, retry } => {
                let was_up = std::mem::replace(&mut node.up, false);
                if was_up {
                    node.printed_until = node.newest;
                }
                let told = match &result {
                    Ok(()) => format!("{name} ended the stream"),
                    Err(e) => e.to_string(),
                };
                if was_up || node.last_error.as_deref() != Some(told.as_str()) || retry.is_none() {
                    let next = match retry {
                        Some(wait) => format!("; asking again in {wait:?}, then with backoff"),
                        None => String::new(),
                    };
                    let _ = writeln!(err, "flannel-observe: {told}{next}");
                }
                node.last_error = Some(told);
                node.tried = true;
                if state.iter().all(|n| n.tried && !n.followed) {
                    return 1;
                }
                continue;
            }
        };
        if node.printed_until.is_some_and(|t| record.time <= t) {
            continue;
        }
        node.newest = node.newest.max(Some(record.time));
        let line = match output {
            OutputFormat::Table => follow_row(&record) + "\n",
            OutputFormat::Json => record.to_json_line(),
        };
        if !print(line) {
            return 0;
        }
    }
    u8::from(!nodes.is_empty() && state.iter().all(|n| !n.followed))
}
