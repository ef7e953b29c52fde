//! `GET /flows` on the enforcer's health/metrics port: the ring's records as JSON lines.
//!
//! Query parameters are [`FlowFilter`]'s; a bad one is answered 400 with a text naming it.
//! Without `follow` the answer is the matching records held now, oldest first, the flows
//! among them still open with their counters so far (one conntrack table read, off the
//! enforcer's task; see [`crate::flows::live`]). With `follow=1` it is every new matching
//! record as it is stored, chunked, until the client goes (with `since`, the window's held
//! records first, as one would scroll back). A follower that falls behind gets a line `{"lost":N}` in place of the N
//! records it missed (the collector never waits for it), and an empty line every
//! [`HEARTBEAT`] while nothing matches, which is how a vanished client is noticed: the write
//! fails and the stream is dropped. At most [`MAX_FOLLOWERS`] followers at once (503 beyond),
//! so streams cannot take every connection the probes need.

use std::sync::Arc;
use std::time::Duration;

use flanneld::http::{Bytes, RouteFn, Routed, StatusCode, full_body, stream_body};
use jiff::Timestamp;

use tracing::warn;

use crate::flows::filter::FlowFilter;
use crate::flows::live::{LiveTable, attach, wants_counters};
use crate::flows::record::FlowRecord;
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

/// The route to plug into [`flanneld::http::Health::with_routes`]; `live` reads the
/// conntrack table for the counters of open flows (`None`: answers carry none).
pub fn route(ring: Arc<FlowRing>, live: Option<LiveTable>) -> RouteFn {
    Arc::new(move |path, query| {
        (path == "/flows")
            .then(|| respond(&ring, query.unwrap_or(""), Timestamp::now(), live.as_ref()))
    })
}

/// The answer to `GET /flows?<query>` at `now`.
pub fn respond(
    ring: &Arc<FlowRing>,
    query: &str,
    now: Timestamp,
    live: Option<&LiveTable>,
) -> Routed {
    let filter = match FlowFilter::parse_query(query) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if !filter.follow {
        return held(ring.snapshot(&filter, now), live);
    }
    if ring.followers() >= MAX_FOLLOWERS {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many followers (at most {MAX_FOLLOWERS}); try again later\n"),
        );
    }
    // A follow starts now; with `since` the window's held records come first.
    let (snapshot, follower) = ring.snapshot_and_follow(&filter, now);
    let first: String = if filter.since.is_some() {
        snapshot.iter().map(|r| r.to_json_line()).collect()
    } else {
        String::new()
    };
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

/// The records held, those of open flows with counters when `live` can read the table. The
/// read blocks (a netlink dump), so it runs on the blocking pool and the body is produced
/// when it is done.
fn held(records: Vec<Arc<FlowRecord>>, live: Option<&LiveTable>) -> Routed {
    let lines = |records: &[FlowRecord]| -> String {
        records.iter().map(FlowRecord::to_json_line).collect()
    };
    let body = match live {
        Some(live) if records.iter().any(|r| wants_counters(r)) => {
            let live = live.clone();
            let mut records: Vec<FlowRecord> = records.iter().map(|r| (**r).clone()).collect();
            let answer = async move {
                match tokio::task::spawn_blocking(move || live()).await {
                    Ok(Ok(table)) => {
                        attach(&mut records, &table);
                    }
                    Ok(Err(e)) => warn!("flows: no counters for open flows: {e}"),
                    Err(e) => warn!("flows: no counters for open flows: {e}"),
                }
                Bytes::from(lines(&records))
            };
            stream_body(futures::stream::once(answer))
        }
        _ => full_body(records.iter().map(|r| r.to_json_line()).collect::<String>()),
    };
    Routed {
        status: StatusCode::OK,
        content_type: NDJSON,
        body,
        streaming: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::client::{FlowLine, fetch};
    use crate::flows::record::tests::tcp_facts;
    use crate::flows::record::{FlowRecord, Verdict};
    use flanneld::http::{Health, serve};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{mpsc, watch};

    fn rec(src: &str, dst: &str, secs: i64, verdict: Verdict) -> FlowRecord {
        let mut f = tcp_facts(src, dst, secs);
        f.verdict = verdict;
        let mut r = FlowRecord::from_facts(f);
        let name = |ip: &str| ip.rsplit('.').next().unwrap().to_string();
        r.src_namespace = Some("x".into());
        r.src_pod = Some(name(src));
        r.dst_namespace = Some("x".into());
        r.dst_pod = Some(name(dst));
        r.node = "n1".into();
        r
    }

    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("response in time")
            .unwrap();
        out
    }

    #[test]
    fn followers_are_capped_and_bad_queries_refused() {
        let ring = Arc::new(FlowRing::new(4));
        let now = Timestamp::from_second(10).unwrap();
        let held: Vec<_> = (0..MAX_FOLLOWERS)
            .map(|_| ring.snapshot_and_follow(&FlowFilter::default(), now))
            .collect();
        assert_eq!(
            respond(&ring, "follow=1", now, None).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(respond(&ring, "", now, None).status, StatusCode::OK);
        drop(held);
        let r = respond(&ring, "follow=1", now, None);
        assert_eq!((r.status, r.streaming), (StatusCode::OK, true));
        let r = respond(&ring, "verdict=maybe", now, None);
        assert_eq!((r.status, r.streaming), (StatusCode::BAD_REQUEST, false));
        assert_eq!(lost_line(3), "{\"lost\":3}\n");
    }

    /// A real server and client in a namespace of their own: queries, a bad parameter, and
    /// follow streams that see only new matching records, after the held ones with `since`.
    #[test]
    fn flows_are_served_filtered_and_followed() {
        flannel_lab::in_fresh_netns("flows-http", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(served_body())
        })
        .expect("test namespace");
    }

    /// Open flows get counters from the table read at query time; a failed read still answers.
    #[test]
    fn open_flows_are_answered_with_counters_so_far() {
        flannel_lab::in_fresh_netns("flows-live", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(live_body())
        })
        .expect("test namespace");
    }

    async fn live_body() {
        use crate::flowsrc::conntrack::{CtCounters, CtEvent, CtKind, CtTuple};
        let ring = Arc::new(FlowRing::new(10));
        let mut open = rec("10.0.0.1", "10.0.0.2", 1, Verdict::Forwarded);
        open.conntrack_id = Some(77);
        ring.push(open.clone());
        let entry = CtEvent {
            kind: CtKind::New,
            id: Some(77),
            proto: 6,
            orig: CtTuple {
                src: Some(open.src_ip),
                dst: Some(open.dst_ip),
                sport: open.src_port,
                dport: open.dst_port,
                icmp: None,
            },
            reply: CtTuple::default(),
            tcp_state: Some(3),
            status: None,
            orig_counters: Some(CtCounters {
                packets: 3,
                bytes: 180,
            }),
            reply_counters: Some(CtCounters {
                packets: 2,
                bytes: 120,
            }),
        };
        let good: LiveTable = Arc::new(move || Ok(vec![entry.clone()]));
        let bad: LiveTable = Arc::new(|| Err("no table".into()));
        for (live, bytes) in [(good, Some(180)), (bad, None)] {
            let health = Health::for_program("flannel-netpol", None)
                .with_routes(route(ring.clone(), Some(live)));
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let (stop, shutdown) = watch::channel(false);
            let server = serve(addr, health, shutdown).await.unwrap();
            let mut got = Vec::new();
            fetch("n1", addr, &FlowFilter::default(), |l| {
                got.push(l);
                true
            })
            .await
            .unwrap();
            let [FlowLine::Record(r)] = &got[..] else {
                panic!("{got:?}")
            };
            assert_eq!(r.forward.map(|c| c.bytes), bytes);
            assert_eq!(r.reply.map(|c| c.packets), bytes.map(|_| 2));
            assert!(!r.ended);
            stop.send(true).unwrap();
            let _ = server.await;
        }
        // The ring keeps the start record as it was.
        let held = ring.snapshot(&FlowFilter::default(), Timestamp::now());
        assert_eq!(held[0].forward, None);
    }

    async fn served_body() {
        let ring = Arc::new(FlowRing::new(100));
        ring.push(rec("10.0.0.1", "10.0.0.2", 1, Verdict::Forwarded));
        ring.push(rec("10.0.0.3", "10.0.0.2", 2, Verdict::Dropped));
        let health =
            Health::for_program("flannel-netpol", None).with_routes(route(ring.clone(), None));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = serve(addr, health, shutdown).await.unwrap();

        let drops = FlowFilter::parse_query("verdict=DROPPED").unwrap();
        let mut got = Vec::new();
        fetch("n1", addr, &drops, |l| {
            got.push(l);
            true
        })
        .await
        .unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(matches!(&got[0], FlowLine::Record(r) if r.src_pod.as_deref() == Some("3")));

        let r = raw_get(addr, "/flows?port=http").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert!(r.contains("parameter port: expected a port number"), "{r}");
        let r = raw_get(addr, "/healthz").await;
        assert!(r.ends_with("flannel-netpol is running"), "{r}");

        // Two followers: one scrolling back (`since` covers the test's 1970 records), one
        // from now on.
        let follower = |query: &str| {
            let (tx, rx) = mpsc::unbounded_channel();
            let follow = FlowFilter::parse_query(query).unwrap();
            let client = tokio::spawn(async move {
                fetch("n1", addr, &follow, move |l| {
                    let more = matches!(&l, FlowLine::Record(r) if r.time.as_second() < 3);
                    tx.send(l).unwrap();
                    more
                })
                .await
            });
            (rx, client)
        };
        let (mut back, back_client) = follower("from_pod=x/1&follow=1&since=1000000h");
        let (mut now_on, now_client) = follower("from_pod=x/1&follow=1");
        let next = async |rx: &mut mpsc::UnboundedReceiver<FlowLine>| {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a line in time")
                .expect("the client runs")
        };
        let first = next(&mut back).await;
        assert!(matches!(&first, FlowLine::Record(r) if r.time.as_second() == 1));
        // Wait (bounded) until both followers are attached before pushing.
        for _ in 0..100 {
            if ring.followers() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ring.followers(), 2);
        ring.push(rec("10.0.0.9", "10.0.0.2", 3, Verdict::Forwarded));
        ring.push(rec("10.0.0.1", "10.0.0.2", 4, Verdict::Forwarded));
        for rx in [&mut back, &mut now_on] {
            let line = next(rx).await;
            assert!(
                matches!(&line, FlowLine::Record(r) if r.time.as_second() == 4),
                "only the matching new record: {line:?}"
            );
        }
        for client in [back_client, now_client] {
            tokio::time::timeout(Duration::from_secs(5), client)
                .await
                .expect("client ends")
                .unwrap()
                .unwrap();
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops")
            .unwrap();
    }
}
