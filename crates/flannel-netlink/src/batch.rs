//! Batched application of many route, neighbour and FDB changes.
//!
//! A reconcile after a restart or a lease resync may need thousands of changes (three per
//! remote node for vxlan). [`Netlink::apply`] sends them packed many to a datagram on one
//! socket (see the `raw` module for the acknowledgement scheme) and returns one result per
//! operation, so the caller can count and log failures and retry only those.

use std::fmt;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::error::{NetlinkError, Result};
use crate::neigh::{Fdb, Neighbour};
use crate::netlink::{Netlink, outcome_to_result};
use crate::raw::{Outcome, Request};
use crate::route::Route;

/// One change to the kernel's tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BatchOp {
    /// Create a route; fails with EEXIST if its key is taken.
    AddRoute(Route),
    /// Create or replace a route (`ip route replace`).
    ReplaceRoute(Route),
    /// Delete a route; fails with ESRCH if none matches.
    DelRoute(Route),
    /// Create or replace a permanent neighbour entry (`ip neigh replace`).
    ReplaceNeighbour(Neighbour),
    /// Delete a neighbour entry; ENOENT if absent.
    DelNeighbour(Neighbour),
    /// Create or replace an FDB entry (`bridge fdb replace ... self permanent`).
    ReplaceFdb(Fdb),
    /// Delete an FDB entry; ENOENT if absent.
    DelFdb(Fdb),
}

impl BatchOp {
    /// The operation's name for errors and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Self::AddRoute(_) => "add route",
            Self::ReplaceRoute(_) => "replace route",
            Self::DelRoute(_) => "delete route",
            Self::ReplaceNeighbour(_) => "replace neighbour",
            Self::DelNeighbour(_) => "delete neighbour",
            Self::ReplaceFdb(_) => "replace fdb",
            Self::DelFdb(_) => "delete fdb",
        }
    }

    /// True for deletes, whose ENOENT/ESRCH failures usually mean "already done".
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DelRoute(_) | Self::DelNeighbour(_) | Self::DelFdb(_)
        )
    }

    fn object(&self) -> String {
        match self {
            Self::AddRoute(r) | Self::ReplaceRoute(r) | Self::DelRoute(r) => r.to_string(),
            Self::ReplaceNeighbour(n) | Self::DelNeighbour(n) => n.to_string(),
            Self::ReplaceFdb(f) | Self::DelFdb(f) => f.to_string(),
        }
    }

    fn encode(&self) -> Result<Request> {
        const REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;
        Ok(match self {
            Self::AddRoute(r) => (
                RouteNetlinkMessage::NewRoute(r.to_message(false)?),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            Self::ReplaceRoute(r) => (RouteNetlinkMessage::NewRoute(r.to_message(false)?), REPLACE),
            Self::DelRoute(r) => (RouteNetlinkMessage::DelRoute(r.to_message(true)?), 0),
            Self::ReplaceNeighbour(n) => {
                (RouteNetlinkMessage::NewNeighbour(n.to_message()), REPLACE)
            }
            Self::DelNeighbour(n) => (RouteNetlinkMessage::DelNeighbour(n.to_message()), 0),
            Self::ReplaceFdb(f) => (RouteNetlinkMessage::NewNeighbour(f.to_message()), REPLACE),
            Self::DelFdb(f) => (RouteNetlinkMessage::DelNeighbour(f.to_message()), 0),
        })
    }
}

impl fmt::Display for BatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op_name(), self.object())
    }
}

/// The outcome of [`Netlink::apply`]: one result per operation, in the order given.
#[derive(Debug)]
pub struct BatchReport {
    /// `results[i]` belongs to `ops[i]`.
    pub results: Vec<Result<()>>,
}

impl BatchReport {
    /// How many operations succeeded.
    pub fn succeeded(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }

    /// How many operations failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.succeeded()
    }

    /// The failures with their operation index.
    pub fn errors(&self) -> impl Iterator<Item = (usize, &NetlinkError)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    }

    /// The first error, if any, for callers that treat the batch as all-or-nothing.
    pub fn into_result(self) -> Result<()> {
        self.results
            .into_iter()
            .find(|r| r.is_err())
            .unwrap_or(Ok(()))
    }
}

impl Netlink {
    /// Applies `ops` in order and reports each one's result.
    ///
    /// The kernel processes them in the order given (so a delete followed by an add of the same
    /// key works). Requests are packed up to ~1000 per datagram; this task yields to the
    /// executor between datagrams, each of which the kernel handles in a few milliseconds, and
    /// should the kernel's answers not be queued at once, it waits for them on the reactor
    /// (bounded by a timer) rather than blocking the thread. A failing operation does not stop
    /// the others. An operation that cannot be encoded (e.g. a route whose gateway family
    /// differs from its destination's) fails with [`NetlinkError::InvalidArgument`] without
    /// being sent.
    ///
    /// Dropping the future part-way leaves the datagrams already sent applied and the rest
    /// unsent; the next dump shows which.
    pub async fn apply(&self, ops: &[BatchOp]) -> BatchReport {
        // Messages are encoded as the socket packs them, one datagram at a time, so a batch of
        // 15000 changes never holds 15000 encoded messages at once.
        let mut results: Vec<Option<Result<()>>> = (0..ops.len()).map(|_| None).collect();
        let mut sent_idx = Vec::with_capacity(ops.len());
        let mut encode_failures = Vec::new();
        let reqs = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op.encode() {
                Ok(r) => {
                    sent_idx.push(i);
                    Some(r)
                }
                Err(e) => {
                    encode_failures.push((i, e));
                    None
                }
            });
        let outcomes = self.execute(reqs).await;
        for (i, e) in encode_failures {
            results[i] = Some(Err(e));
        }
        let mut outcomes = outcomes.into_iter();
        for i in sent_idx {
            let outcome = outcomes
                .next()
                .unwrap_or_else(|| Outcome::Unconfirmed("request was not sent".into()));
            results[i] = Some(outcome_to_result(
                ops[i].op_name(),
                || ops[i].object(),
                outcome,
            ));
        }
        let results: Vec<Result<()>> = results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect();
        let report = BatchReport { results };
        tracing::debug!(
            ops = ops.len(),
            failed = report.failed(),
            "applied netlink batch"
        );
        report
    }

    /// Applies one operation; the single-object methods (`replace_route`, ...) use this.
    pub(crate) async fn apply_one(&self, op: BatchOp) -> Result<()> {
        self.apply(std::slice::from_ref(&op)).await.into_result()
    }
}

/// `apply` futures must stay `Send` (the request iterator and the socket lock are chosen for
/// it), so callers can hold them in tasks spawned on any runtime. Checked at compile time.
const _: () = {
    fn assert_send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    fn apply_is_send(nl: &Netlink, ops: &[BatchOp]) {
        assert_send(&nl.apply(ops));
    }
};
