//! `flannel-observe`'s flags and what they mean: the filters every node is asked with, the
//! nodes to ask, and the output.
//!
//! Kept in the library, not in the binary, so the flag → [`FlowFilter`] conversion and the
//! follow table can be unit-tested, and so the flag names (a contract: `--from-pod`,
//! `--to-pod`, `--pod`, `--namespace`, `--verdict`, `--protocol`, `--port`, `--since`,
//! `--follow`, `-o table|json`) live in one place. A bad filter value is refused by clap's
//! value parser, which names the flag and what was expected (exit 2), rather than being sent
//! to the nodes, because each node would refuse it anyway and a late error hides which flag
//! was wrong.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::flows::client::{TABLE_HEADER, table_row};
use crate::flows::filter::{FlowFilter, PodRef, parse_duration};
use crate::flows::record::{FlowRecord, Protocol, Verdict};

/// The enforcer's metrics port (`--metrics-bind-address` default), where `/flows` is served.
pub const DEFAULT_FLOWS_PORT: u16 = 9080;

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// A readable table (aligned columns, one row per record).
    #[default]
    Table,
    /// One JSON record per line, exactly as the nodes send them (for `jq`).
    Json,
}

/// One node to ask: its name (for errors and the table) and its `/flows` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The node's name, or the `HOST:PORT` it was given as.
    pub name: String,
    /// Where its enforcer serves `/flows`.
    pub addr: SocketAddr,
}

/// `flannel-observe`'s flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flannel-observe",
    version,
    about = "Flow records of every node's flannel-netpol: asks each node's /flows with the same filters and merges the answers by time",
    after_help = "Examples:\n  \
        flannel-observe --verdict DROPPED --since 5m\n  \
        flannel-observe --to-pod web/frontend --port 80 -o json | jq .\n  \
        flannel-observe --node n1=198.18.0.1:9080 --node 198.18.0.2:9080 --follow\n\n\
        Exit status: 0 ok (also when --follow ends on Ctrl-C); 1 no node answered; 2 bad flags;\n\
        130 interrupted."
)]
pub struct ObserveArgs {
    /// Only flows from this pod
    #[arg(long = "from-pod", value_name = "NS/NAME", value_parser = parse_pod)]
    pub from_pod: Option<PodRef>,
    /// Only flows to this pod
    #[arg(long = "to-pod", value_name = "NS/NAME", value_parser = parse_pod)]
    pub to_pod: Option<PodRef>,
    /// Only flows from or to this pod
    #[arg(long = "pod", value_name = "NS/NAME", value_parser = parse_pod)]
    pub pod: Option<PodRef>,
    /// Only flows from or to a pod of this namespace
    #[arg(long = "namespace", value_name = "NS", value_parser = parse_namespace)]
    pub namespace: Option<String>,
    /// Only flows with this verdict: FORWARDED or DROPPED
    #[arg(long = "verdict", value_name = "VERDICT", value_parser = parse_verdict)]
    pub verdict: Option<Verdict>,
    /// Only flows of this protocol: TCP, UDP, ICMP, ICMPv6, SCTP or other
    #[arg(long = "protocol", value_name = "PROTO", value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Only flows with this port on either side
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,
    /// Only records at most this old: 30s, 5m, 1h30m, 250ms
    #[arg(long = "since", value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// Stream: print every new record as it arrives (with --since, the recent ones first),
    /// until Ctrl-C or every node's stream ends
    #[arg(long = "follow", short = 'f')]
    pub follow: bool,
    /// Output: a readable table, or one JSON record per line
    #[arg(long = "output", short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// A node's /flows endpoint, NAME=HOST:PORT or HOST:PORT (repeatable); without any, the
    /// nodes are listed from the Kubernetes API (their InternalIP and --metrics-port)
    #[arg(long = "node", value_name = "NAME=HOST:PORT", value_parser = parse_node)]
    pub nodes: Vec<NodeEndpoint>,
    /// The enforcers' metrics port, for nodes listed from the Kubernetes API
    #[arg(long = "metrics-port", value_name = "PORT", default_value_t = DEFAULT_FLOWS_PORT, value_parser = parse_port)]
    pub metrics_port: u16,
    /// kubeconfig file, for listing nodes (default: $KUBECONFIG, else the in-cluster service
    /// account)
    #[arg(long = "kubeconfig", value_name = "FILE", default_value = "")]
    pub kubeconfig: String,
    /// API server URL, overriding the kubeconfig's, for listing nodes
    #[arg(long = "kube-api-url", value_name = "URL", default_value = "")]
    pub kube_api_url: String,
}

impl ObserveArgs {
    /// The query every node is sent: the filter flags and `--follow`, nothing else.
    pub fn filter(&self) -> FlowFilter {
        FlowFilter {
            from_pod: self.from_pod.clone(),
            to_pod: self.to_pod.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            verdict: self.verdict,
            protocol: self.protocol,
            port: self.port,
            since: self.since,
            follow: self.follow,
        }
    }
}

/// `--from-pod`, `--to-pod`, `--pod`: `NS/NAME`.
pub fn parse_pod(s: &str) -> Result<PodRef, String> {
    PodRef::parse(s).ok_or_else(|| "expected NAMESPACE/NAME, e.g. default/web-0".to_string())
}

/// `--namespace`: a name without `/`.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('/') {
        return Err("expected a namespace name (no '/')".into());
    }
    Ok(s.to_string())
}

/// `--verdict`: FORWARDED or DROPPED, any case.
pub fn parse_verdict(s: &str) -> Result<Verdict, String> {
    match s.to_ascii_uppercase().as_str() {
        "FORWARDED" => Ok(Verdict::Forwarded),
        "DROPPED" => Ok(Verdict::Dropped),
        _ => Err("expected FORWARDED or DROPPED".into()),
    }
}

/// `--protocol`: [`Protocol::parse`].
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| "expected TCP, UDP, ICMP, ICMPv6, SCTP or other".into())
}

/// `--port`, `--metrics-port`: 1..65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| "expected a port number 1..65535".into())
}

/// `--since`: [`parse_duration`].
pub fn parse_since(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| "expected a duration such as 30s, 5m, 1h30m or 250ms".into())
}

/// `--node`: `NAME=HOST:PORT` or `HOST:PORT` (then named by it). A host name is resolved
/// here, once, to its first address.
pub fn parse_node(s: &str) -> Result<NodeEndpoint, String> {
    const EXPECTED: &str = "expected NAME=HOST:PORT or HOST:PORT, e.g. n1=198.18.0.1:9080";
    let (name, hostport) = match s.split_once('=') {
        Some((name, hp)) if !name.is_empty() => (name, hp),
        Some(_) => return Err(EXPECTED.into()),
        None => (s, s),
    };
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok(NodeEndpoint {
            name: name.to_string(),
            addr,
        });
    }
    // A host name: it must carry a port, and resolve.
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && parse_port(port).is_ok() => {}
        _ => return Err(EXPECTED.into()),
    }
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{EXPECTED} ({e})"))?
        .next()
        .ok_or_else(|| format!("{EXPECTED} ({hostport} has no address)"))?;
    Ok(NodeEndpoint {
        name: name.to_string(),
        addr,
    })
}

/// Column widths of the follow table (all but the last, SUMMARY): records arrive one by one,
/// so the widths cannot be measured first as [`crate::flows::client::render_table`] does;
/// these fit a timestamp, short node names, `namespace/pod:port` of usual length and a
/// protocol with one TCP flag. A longer cell is printed whole and shifts the rest of its row: cutting it
/// would hide the name the user is looking for.
pub const FOLLOW_WIDTHS: [usize; 7] = [23, 6, 24, 24, 8, 9, 7];

/// One line of the follow table (no newline), columns padded to [`FOLLOW_WIDTHS`].
fn follow_line(cells: &[&str; 8]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        match FOLLOW_WIDTHS.get(i) {
            Some(w) => line.push_str(&format!("{cell:<w$}  ")),
            None => line.push_str(cell),
        }
    }
    line.trim_end().to_string()
}

/// The follow table's header line (printed once, before the first record).
pub fn follow_header() -> String {
    follow_line(&TABLE_HEADER)
}

/// One record as a row of the follow table, aligned under [`follow_header`].
pub fn follow_row(r: &FlowRecord) -> String {
    let row = table_row(r);
    follow_line(&row.each_ref().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::Direction;
    use crate::flows::record::tests::tcp_facts;

    fn parse(args: &[&str]) -> Result<ObserveArgs, clap::Error> {
        ObserveArgs::try_parse_from(std::iter::once("flannel-observe").chain(args.iter().copied()))
    }

    fn filter(args: &[&str]) -> FlowFilter {
        parse(args).unwrap().filter()
    }

    #[test]
    fn no_flags_match_everything_as_a_table() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.filter(), FlowFilter::default());
        assert_eq!(a.output, OutputFormat::Table);
        assert!(a.nodes.is_empty());
        assert_eq!(a.metrics_port, 9080);
    }

    #[test]
    fn every_filter_flag_sets_its_field() {
        let pod = PodRef::parse;
        assert_eq!(filter(&["--from-pod", "x/a"]).from_pod, pod("x/a"));
        assert_eq!(filter(&["--to-pod=y/b"]).to_pod, pod("y/b"));
        assert_eq!(filter(&["--pod", "x/a"]).pod, pod("x/a"));
        assert_eq!(
            filter(&["--namespace", "x"]).namespace.as_deref(),
            Some("x")
        );
        assert_eq!(
            filter(&["--verdict", "dropped"]).verdict,
            Some(Verdict::Dropped)
        );
        assert_eq!(
            filter(&["--verdict", "FORWARDED"]).verdict,
            Some(Verdict::Forwarded)
        );
        assert_eq!(filter(&["--protocol", "udp"]).protocol, Some(Protocol::Udp));
        assert_eq!(filter(&["--port", "80"]).port, Some(80));
        assert_eq!(
            filter(&["--since", "1h30m"]).since,
            Some(Duration::from_secs(5400))
        );
        assert!(filter(&["--follow"]).follow && filter(&["-f"]).follow);
        // All together: the same query the server parses.
        let all = filter(&[
            "--from-pod",
            "x/a",
            "--to-pod",
            "y/b",
            "--pod",
            "x/a",
            "--namespace",
            "y",
            "--verdict",
            "DROPPED",
            "--protocol",
            "TCP",
            "--port",
            "443",
            "--since",
            "250ms",
            "--follow",
        ]);
        assert_eq!(FlowFilter::parse_query(&all.to_query()).unwrap(), all);
        assert_eq!(
            all.to_query(),
            "from_pod=x/a&to_pod=y/b&pod=x/a&namespace=y&verdict=DROPPED&protocol=TCP&port=443&since=250ms&follow=1"
        );
    }

    #[test]
    fn output_and_endpoint_flags() {
        assert_eq!(parse(&["-o", "json"]).unwrap().output, OutputFormat::Json);
        assert_eq!(
            parse(&["--output=table"]).unwrap().output,
            OutputFormat::Table
        );
        let a = parse(&[
            "--node",
            "n1=198.18.0.1:9080",
            "--node",
            "127.0.0.1:9081",
            "--node",
            "n3=[::1]:9080",
            "--metrics-port",
            "9999",
            "--kubeconfig",
            "/k",
            "--kube-api-url",
            "http://x:1",
        ])
        .unwrap();
        let nodes: Vec<(String, String)> = a
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.addr.to_string()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("n1".to_string(), "198.18.0.1:9080".to_string()),
                ("127.0.0.1:9081".into(), "127.0.0.1:9081".into()),
                ("n3".into(), "[::1]:9080".into()),
            ]
        );
        assert_eq!(
            (
                a.metrics_port,
                a.kubeconfig.as_str(),
                a.kube_api_url.as_str()
            ),
            (9999, "/k", "http://x:1")
        );
        // A resolvable host name.
        assert_eq!(parse_node("n4=localhost:9080").unwrap().addr.port(), 9080);
    }

    #[test]
    fn bad_values_name_the_flag_and_what_was_expected() {
        let err = |args: &[&str]| {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        };
        let cases: [(&[&str], &str, &str); 13] = [
            (&["--from-pod", "a"], "--from-pod", "NAMESPACE/NAME"),
            (&["--to-pod", "a/"], "--to-pod", "NAMESPACE/NAME"),
            (&["--pod", "a/b/c"], "--pod", "NAMESPACE/NAME"),
            (&["--namespace", "a/b"], "--namespace", "namespace name"),
            (
                &["--verdict", "ALLOWED"],
                "--verdict",
                "FORWARDED or DROPPED",
            ),
            (&["--protocol", "gre"], "--protocol", "TCP, UDP"),
            (&["--port", "http"], "--port", "1..65535"),
            (&["--port", "0"], "--port", "1..65535"),
            (&["--since", "5 minutes"], "--since", "duration such as 30s"),
            (&["-o", "yaml"], "yaml", "table"),
            (&["--node", "n1=nohost"], "--node", "NAME=HOST:PORT"),
            (&["--node", "=1.2.3.4:80"], "--node", "NAME=HOST:PORT"),
            (&["--metrics-port", "x"], "--metrics-port", "1..65535"),
        ];
        for (args, flag, expected) in cases {
            let e = err(args);
            assert!(e.contains(flag) && e.contains(expected), "{args:?}: {e}");
        }
    }

    #[test]
    fn follow_rows_have_fixed_columns() {
        let mut a = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.2.3", 0));
        a.node = "n1".into();
        a.src_namespace = Some("x".into());
        a.src_pod = Some("a".into());
        a.direction = Some(Direction::Egress);
        let mut d = FlowRecord::from_facts(tcp_facts("10.244.1.2", "10.244.2.3", 1));
        d.node = "node-with-a-long-name".into();
        d.verdict = Verdict::Dropped;
        d.tcp_flags = Some("SYN".into());
        d.policy = Some("y/deny".into());
        let header = follow_header();
        assert_eq!(
            header,
            "TIME                     NODE    SOURCE                    DESTINATION               PROTO     VERDICT    DIR      SUMMARY"
        );
        let row = follow_row(&a);
        assert_eq!(
            row,
            "1970-01-01 00:00:00.000  n1      x/a:40000                 10.244.2.3:80             TCP       FORWARDED  egress   new"
        );
        // Every column starts where its header does.
        for title in TABLE_HEADER {
            let at = header.find(title).unwrap();
            assert!(at == 0 || &row[at - 2..at] == "  ", "{title}: {row}");
        }
        // A cell wider than its column is kept whole; the rest of the row shifts.
        let long = follow_row(&d);
        assert!(
            long.contains("node-with-a-long-name  10.244.1.2:40000"),
            "{long}"
        );
        assert!(long.ends_with("DROPPED    -        y/deny"), "{long}");
    }
}
