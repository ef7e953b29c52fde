//! Asking nodes for flows: fetch each node's `/flows`, merge by time, print.
//!
//! Lives in the library, not in a binary, so `flannel-lab observe` and a standalone
//! `flannel-observe` share it. A node that cannot be reached does not hide the others: its
//! error is returned next to the records the rest sent.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::flows::filter::FlowFilter;
use crate::flows::record::{Direction, FlowRecord, Verdict, format_time};

/// How long connecting and the response headers may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node's flows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or the HTTP exchange failed.
    #[error("asking {node} for flows: {source}")]
    Http {
        /// The node (name or address).
        node: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// TCP connect failed.
    #[error("connecting to {node}: {source}")]
    Connect {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node did not answer in time.
    #[error("{node} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout {
        /// The node.
        node: String,
    },
    /// The node refused the query (400: a bad parameter; 503: too many followers).
    #[error("{node} answered {status}: {body}")]
    Status {
        /// The node.
        node: String,
        /// HTTP status.
        status: u16,
        /// The node's explanation.
        body: String,
    },
    /// A line was neither a record nor a loss notice.
    #[error("{node} sent a line that is not a flow record: {source}")]
    Decode {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// One line of a `/flows` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowLine {
    /// A record.
    Record(Box<FlowRecord>),
    /// The node skipped this many records for this (slow) client.
    Lost(u64),
}

/// Parses one line; `None` for the follow stream's empty heartbeat lines.
pub fn parse_line(line: &str) -> Option<Result<FlowLine, serde_json::Error>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Lost {
        lost: u64,
    }
    if line.starts_with("{\"lost\":") {
        return Some(serde_json::from_str::<Lost>(line).map(|l| FlowLine::Lost(l.lost)));
    }
    Some(FlowRecord::from_json_line(line).map(|r| FlowLine::Record(Box::new(r))))
}

/// Streams `GET /flows?<filter>` from `addr` (`node` names it in errors), calling `on_line`
/// for every record or loss notice until the answer ends (for `follow`: until the node goes
/// or `on_line` returns false).
pub async fn fetch(
    node: &str,
    addr: SocketAddr,
    filter: &FlowFilter,
    on_line: impl FnMut(FlowLine) -> bool,
) -> Result<(), ClientError> {
    open(node, addr, filter).await?.read(on_line).await
}

/// An accepted `/flows` answer whose lines are still to be read.
pub struct FlowStream {
    node: String,
    body: hyper::body::Incoming,
}

/// Sends `GET /flows?<filter>` to `addr` and waits for the answer's head: an error unless the
/// node accepted the query, so a follower knows when it is following (a `follow` answer may
/// stay silent for long).
pub async fn open(
    node: &str,
    addr: SocketAddr,
    filter: &FlowFilter,
) -> Result<FlowStream, ClientError> {
    let node_s = || node.to_string();
    let start = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                node: node_s(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http {
                node: node_s(),
                source,
            })?;
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("/flows?{}", filter.to_query()))
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a path and a host header are a valid request");
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http {
                node: node_s(),
                source,
            })
    };
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, start)
        .await
        .map_err(|_| ClientError::Timeout { node: node_s() })??;
    let status = resp.status();
    let body = resp.into_body();
    if !status.is_success() {
        // The explanation is short; a node that does not end it is cut off by the timeout.
        let text = tokio::time::timeout(CONNECT_TIMEOUT, body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(ClientError::Status {
            node: node_s(),
            status: status.as_u16(),
            body: text,
        });
    }
    Ok(FlowStream {
        node: node_s(),
        body,
    })
}

impl FlowStream {
    /// Calls `on_line` for every record or loss notice until the answer ends or `on_line`
    /// returns false.
    pub async fn read(
        mut self,
        mut on_line: impl FnMut(FlowLine) -> bool,
    ) -> Result<(), ClientError> {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                node: self.node.clone(),
                source,
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(parsed) = parse_line(&line) else {
                    continue;
                };
                let parsed = parsed.map_err(|source| ClientError::Decode {
                    node: self.node.clone(),
                    source,
                })?;
                if !on_line(parsed) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Every node's records in one list ordered by time (ties keep the node order).
pub fn merge(per_node: Vec<Vec<FlowRecord>>) -> Vec<FlowRecord> {
    let mut all: Vec<FlowRecord> = per_node.into_iter().flatten().collect();
    all.sort_by_key(|r| r.time);
    all
}

/// Asks every node (concurrently) and merges what they hold; unreachable nodes are
/// reported, not fatal. Not for `follow` (see [`fetch`]).
pub async fn query_all(
    nodes: &[(String, SocketAddr)],
    filter: &FlowFilter,
) -> (Vec<FlowRecord>, Vec<ClientError>, u64) {
    let mut filter = filter.clone();
    filter.follow = false;
    let asks = nodes.iter().map(|(node, addr)| {
        let filter = filter.clone();
        async move {
            let mut records = Vec::new();
            let mut lost = 0;
            let r = fetch(node, *addr, &filter, |l| {
                match l {
                    FlowLine::Record(r) => records.push(*r),
                    FlowLine::Lost(n) => lost += n,
                }
                true
            })
            .await;
            (records, r, lost)
        }
    });
    let mut per_node = Vec::new();
    let mut errors = Vec::new();
    let mut lost = 0;
    for (records, r, l) in futures::future::join_all(asks).await {
        per_node.push(records);
        lost += l;
        if let Err(e) = r {
            errors.push(e);
        }
    }
    (merge(per_node), errors, lost)
}

fn side(ns: Option<&str>, pod: Option<&str>, ip: std::net::IpAddr, port: Option<u16>) -> String {
    let who = match (ns, pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => ip.to_string(),
    };
    match port {
        Some(p) => format!("{who}:{p}"),
        None => who,
    }
}

/// The table's columns for one record.
pub fn table_row(r: &FlowRecord) -> [String; 8] {
    let summary = match r.verdict {
        Verdict::Dropped => r.policy.clone().unwrap_or_else(|| "default deny".into()),
        Verdict::Forwarded => match (r.ended, r.forward, r.reply) {
            (true, Some(f), Some(b)) => format!(
                "ended {}B/{}p -> {}B/{}p <-",
                f.bytes, f.packets, b.bytes, b.packets
            ),
            (false, Some(f), Some(b)) => format!(
                "open {}B/{}p -> {}B/{}p <-",
                f.bytes, f.packets, b.bytes, b.packets
            ),
            (true, _, _) => "ended".into(),
            _ => "new".into(),
        },
    };
    [
        format_time(r.time)[..23].replace('T', " "),
        r.node.clone(),
        side(
            r.src_namespace.as_deref(),
            r.src_pod.as_deref(),
            r.src_ip,
            r.src_port,
        ),
        side(
            r.dst_namespace.as_deref(),
            r.dst_pod.as_deref(),
            r.dst_ip,
            r.dst_port,
        ),
        r.protocol.as_str().to_string()
            + &r.tcp_flags
                .as_deref()
                .map(|f| format!(" {f}"))
                .unwrap_or_default(),
        r.verdict.as_str().to_string(),
        r.direction
            .map(Direction::as_str)
            .unwrap_or("-")
            .to_string(),
        summary,
    ]
}

/// The table header.
pub const TABLE_HEADER: [&str; 8] = [
    "TIME",
    "NODE",
    "SOURCE",
    "DESTINATION",
    "PROTO",
    "VERDICT",
    "DIR",
    "SUMMARY",
];

/// A readable table: a header and one aligned row per record.
pub fn render_table(records: &[FlowRecord]) -> String {
    let rows: Vec<[String; 8]> = records.iter().map(table_row).collect();
    let mut widths = TABLE_HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&TABLE_HEADER);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::Counters;
    use crate::flows::record::tests::tcp_facts;

    fn rec(secs: i64, node: &str) -> FlowRecord {
        let mut r = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.2.3", secs));
        r.node = node.into();
        r
    }

    #[test]
    fn merge_orders_by_time_across_nodes() {
        let merged = merge(vec![
            vec![rec(1, "n1"), rec(5, "n1")],
            vec![rec(2, "n2"), rec(3, "n2")],
        ]);
        let order: Vec<(i64, &str)> = merged
            .iter()
            .map(|r| (r.time.as_second(), r.node.as_str()))
            .collect();
        assert_eq!(order, [(1, "n1"), (2, "n2"), (3, "n2"), (5, "n1")]);
    }

    #[test]
    fn the_table_names_pods_and_summarises() {
        let mut a = rec(0, "n1");
        a.src_namespace = Some("x".into());
        a.src_pod = Some("a".into());
        a.direction = Some(Direction::Egress);
        a.ended = true;
        a.forward = Some(Counters {
            packets: 6,
            bytes: 400,
        });
        a.reply = Some(Counters {
            packets: 4,
            bytes: 5000,
        });
        let mut d = rec(1, "n2");
        d.verdict = Verdict::Dropped;
        d.tcp_flags = Some("SYN".into());
        d.policy = Some("y/deny".into());
        let table = render_table(&[a, d]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("TIME"), "{table}");
        assert_eq!(
            lines[1],
            "1970-01-01 00:00:00.000  n1    x/a:40000         10.244.2.3:80  TCP      FORWARDED  egress  ended 400B/6p -> 5000B/4p <-"
        );
        assert_eq!(
            lines[2],
            "1970-01-01 00:00:01.000  n2    10.244.1.2:40000  10.244.2.3:80  TCP SYN  DROPPED    -       y/deny"
        );
        let mut open = rec(2, "n1");
        assert_eq!(table_row(&open)[7], "new");
        open.forward = Some(Counters {
            packets: 1,
            bytes: 10,
        });
        open.reply = Some(Counters {
            packets: 2,
            bytes: 20,
        });
        assert_eq!(table_row(&open)[7], "open 10B/1p -> 20B/2p <-");
    }

    #[test]
    fn lines_are_records_losses_or_heartbeats() {
        assert!(parse_line("\n").is_none());
        assert_eq!(
            parse_line("{\"lost\":7}\n").unwrap().unwrap(),
            FlowLine::Lost(7)
        );
        let r = rec(3, "n1");
        assert_eq!(
            parse_line(&r.to_json_line()).unwrap().unwrap(),
            FlowLine::Record(Box::new(r))
        );
        assert!(parse_line("{\"x\":1}").unwrap().is_err());
    }
}
