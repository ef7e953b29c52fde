//! `GET /flows` on the enforcer's health/metrics port: the ring's records as JSON lines.
//!
//! Query parameters are [`FlowFilter`]'s; a bad one is answered 400 with a text naming it.
//! Without `follow` the answer is the matching records held now, oldest first. With
//! `follow=1` it is that, then every new matching record as it is stored, chunked, until the
//! client goes. A follower that falls behind gets a line `{"lost":N}` in place of the N
//! records it missed (the collector never waits for it), and an empty line every
//! [`HEARTBEAT`] while nothing matches, which is how a vanished client is noticed: the write
//! fails and the stream is dropped. At most [`MAX_FOLLOWERS`] followers at once (503 beyond),
//! so streams cannot take every connection the probes need.

use std::sync::Arc;
use std::time::Duration;

use flanneld::http::{Bytes, RouteFn, Routed, StatusCode, full_body, stream_body};
use jiff::Timestamp;

use crate::flows::filter::FlowFilter;
use crate::flows::ring::{FlowRing, Follow};

/// Followers served at once.
pub const MAX_FOLLOWERS: usize = 16;
/// Longest silence on a follow stream.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

const NDJSON: &str = "application/x-ndjson";
const TEXT: &str = "text/plain; charset=utf-8";

/// The line telling a follower how many records it missed.
pub fn lost_line(n: u64) -> String {
    format!("{{\"lost\":{n}}}\n")
}

fn text(status: StatusCode, body: String) -> Routed {
    Routed {
        status,
        content_type: TEXT,
        body: full_body(body),
        streaming: false,
    }
}

/// The route to plug into [`flanneld::http::Health::with_routes`].
pub fn route(ring: Arc<FlowRing>) -> RouteFn {
    Arc::new(move |path, query| {
        (path == "/flows").then(|| respond(&ring, query.unwrap_or(""), Timestamp::now()))
    })
}

/// The answer to `GET /flows?<query>` at `now`.
pub fn respond(ring: &Arc<FlowRing>, query: &str, now: Timestamp) -> Routed {
    let filter = match FlowFilter::parse_query(query) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if !filter.follow {
        let body: String = ring
            .snapshot(&filter, now)
            .iter()
            .map(|r| r.to_json_line())
            .collect();
        return Routed {
            status: StatusCode::OK,
            content_type: NDJSON,
            body: full_body(body),
            streaming: false,
        };
    }
    if ring.followers() >= MAX_FOLLOWERS {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many followers (at most {MAX_FOLLOWERS}); try again later\n"),
        );
    }
    let (snapshot, follower) = ring.snapshot_and_follow(&filter, now);
    let first: String = snapshot.iter().map(|r| r.to_json_line()).collect();
    let rest = futures::stream::unfold(follower, move |mut follower| {
        let filter = filter.clone();
        async move {
            loop {
                let next = tokio::time::timeout(HEARTBEAT, follower.next()).await;
                let line = match next {
                    Err(_) => "\n".to_string(),
                    Ok(Follow::Record(r)) if filter.matches(&r) => r.to_json_line(),
                    Ok(Follow::Record(_)) => continue,
                    Ok(Follow::Lost(n)) => lost_line(n),
                    Ok(Follow::Closed) => return None,
                };
                return Some((Bytes::from(line), follower));
            }
        }
    });
    let chunks = futures::StreamExt::chain(futures::stream::iter([Bytes::from(first)]), rest);
    Routed {
        status: StatusCode::OK,
        content_type: NDJSON,
        body: stream_body(chunks),
        streaming: true,
    }
}
