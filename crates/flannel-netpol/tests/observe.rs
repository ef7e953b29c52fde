//! `flannel-observe` (the built binary) against real `/flows` servers in a namespace of its
//! own: two "nodes" on loopback ports with known records, plus one that is not there.
//! Table and JSON output merged by time, every filter flag, an unreachable node reported but
//! not fatal (and fatal when it is the only one), a bad flag refused with exit 2, a query
//! to a node that never answers cut short by SIGINT (130), and
//! `--follow` printing a record pushed after it connected and ending on SIGTERM, following a
//! node again after its server restarted and one that came up after the follow started.
//! Every wait is bounded.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use flannel_netpol::flows::cli::{follow_header, follow_row};
use flannel_netpol::flows::http::route;
use flannel_netpol::flows::record::{FlowRecord, KernelFacts, Verdict};
use flannel_netpol::flows::ring::FlowRing;
use flanneld::http::{Health, serve};
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

const EXE: &str = env!("CARGO_BIN_EXE_flannel-observe");
const WAIT: Duration = Duration::from_secs(10);

/// A record on `node` from `src` to `dst` (`ns/pod` names on both sides), `age_s` old.
fn rec(
    node: &str,
    (src_ns, src): (&str, &str),
    (dst_ns, dst): (&str, &str),
    proto: u8,
    dport: u16,
    verdict: Verdict,
    age_s: i64,
) -> FlowRecord {
    let mut r = FlowRecord::from_facts(KernelFacts {
        time: Timestamp::now()
            .checked_sub(SignedDuration::from_secs(age_s))
            .unwrap(),
        verdict,
        protocol: proto,
        src_ip: "10.244.1.2".parse().unwrap(),
        dst_ip: "10.244.2.3".parse().unwrap(),
        src_port: Some(40000),
        dst_port: Some(dport),
        tcp_flags: None,
        forward: None,
        reply: None,
        ended: false,
        policy: (verdict == Verdict::Dropped).then(|| "x/deny".to_string()),
        direction: None,
        conntrack_id: None,
    });
    r.node = node.into();
    (r.src_namespace, r.src_pod) = (Some(src_ns.into()), Some(src.into()));
    (r.dst_namespace, r.dst_pod) = (Some(dst_ns.into()), Some(dst.into()));
    r
}

/// A record just made on `node`, forwarded from `src` to x/b.
fn new_to_b(node: &str, src: (&str, &str), proto: u8, dport: u16) -> FlowRecord {
    rec(node, src, ("x", "b"), proto, dport, Verdict::Forwarded, 0)
}

/// A free loopback address (bound, then released).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `/flows` server for `ring` on a free loopback port.
async fn server(
    ring: Arc<FlowRing>,
) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let addr = free_addr();
    let (stop, task) = server_at(addr, ring).await;
    (addr, stop, task)
}

/// A `/flows` server for `ring` on `addr`.
async fn server_at(
    addr: SocketAddr,
    ring: Arc<FlowRing>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let health = Health::for_program("flannel-netpol", None).with_routes(route(ring, None));
    let (stop, shutdown) = watch::channel(false);
    let task = serve(addr, health, shutdown).await.unwrap();
    (stop, task)
}

/// Stops a server and waits (bounded) until it has.
async fn stop_server(stop: &watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the server stops")
        .unwrap();
}

/// Runs flannel-observe to the end: exit code, stdout, stderr.
async fn observe(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(WAIT, Command::new(EXE).args(args).output())
        .await
        .expect("flannel-observe ends in time")
        .expect("flannel-observe runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The source pod names of JSON output, in order.
fn sources(json: &str) -> Vec<String> {
    json.lines()
        .map(|l| FlowRecord::from_json_line(l).unwrap().src_pod.unwrap())
        .collect()
}

/// Starts a follower; returns it and its stdout lines.
fn spawn_follow(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(EXE)
        .args(args)
        .arg("--follow")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("flannel-observe starts");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("stdout open")
}

/// Waits (bounded) until `ring` has `n` followers.
async fn wait_followers(ring: &FlowRing, n: usize) {
    for _ in 0..500 {
        if ring.followers() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} followers, expected {n}", ring.followers());
}

/// Sends `sig` (`INT`, `TERM`) to `child`.
fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{sig} {pid}");
}

async fn wait_exit(child: &mut Child) -> i32 {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("flannel-observe exits in time")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn observe_queries_filters_and_follows_real_nodes() {
    flannel_lab::in_fresh_netns("observe", || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body())
    })
    .expect("test namespace");
}

async fn body() {
    let (tcp, udp) = (6, 17);
    let ring1 = Arc::new(FlowRing::new(100));
    let ring2 = Arc::new(FlowRing::new(100));
    ring1.push(rec(
        "n1",
        ("x", "a"),
        ("x", "b"),
        tcp,
        80,
        Verdict::Forwarded,
        100,
    ));
    ring2.push(rec(
        "n2",
        ("y", "c"),
        ("x", "b"),
        udp,
        53,
        Verdict::Forwarded,
        70,
    ));
    ring1.push(rec(
        "n1",
        ("x", "d"),
        ("x", "b"),
        tcp,
        81,
        Verdict::Dropped,
        5,
    ));
    let (a1, stop1, server1) = server(ring1.clone()).await;
    let (a2, stop2, server2) = server(ring2.clone()).await;
    let n1 = format!("n1={a1}");
    let n2 = a2.to_string();
    let both = ["--node", &n1, "--node", &n2];

    // Table (default): merged by time across nodes.
    let (code, out, err) = observe(&both).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("SUMMARY"),
        "{out}"
    );
    assert!(
        lines[1].contains("n1") && lines[1].contains("x/a:40000") && lines[1].contains("x/b:80"),
        "{out}"
    );
    assert!(
        lines[2].contains("y/c:40000") && lines[2].contains("UDP"),
        "{out}"
    );
    assert!(
        lines[3].contains("DROPPED") && lines[3].ends_with("x/deny"),
        "{out}"
    );

    // JSON: one record per line, the same order.
    let (code, out, _) = observe(&[&both[..], &["-o", "json"]].concat()).await;
    assert_eq!(code, 0);
    assert_eq!(sources(&out), ["a", "c", "d"]);

    // Every filter flag reaches the nodes.
    let cases: [(&[&str], &[&str]); 10] = [
        (&["--verdict", "dropped"], &["d"]),
        (&["--protocol", "UDP"], &["c"]),
        (&["--port", "53"], &["c"]),
        (&["--from-pod", "x/a"], &["a"]),
        (&["--to-pod", "x/b"], &["a", "c", "d"]),
        (&["--pod", "y/c"], &["c"]),
        (&["--namespace", "y"], &["c"]),
        (&["--since", "30s"], &["d"]),
        (
            &["--verdict", "FORWARDED", "--namespace", "x", "--port", "80"],
            &["a"],
        ),
        (&["--to-pod", "x/a"], &[]),
    ];
    for (flags, want) in cases {
        let (code, out, err) = observe(&[&both[..], flags, &["-o", "json"]].concat()).await;
        assert_eq!(
            (code, sources(&out)),
            (0, want.iter().map(|s| s.to_string()).collect()),
            "{flags:?}: {err}"
        );
    }

    // An unreachable node is named on stderr; the others are printed (exit 0) ...
    let gone_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("gone=127.0.0.1:{gone_port}");
    let (code, out, err) = observe(&[&both[..], &["--node", &gone, "-o", "json"]].concat()).await;
    assert_eq!((code, sources(&out).len()), (0, 3), "{err}");
    assert!(err.contains("connecting to gone"), "{err}");
    // ... unless it is the only one.
    let (code, out, err) = observe(&["--node", &gone]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("gone"), "{err}");

    // A bad filter value: exit 2, naming the flag and what was expected.
    let (code, _, err) = observe(&[&both[..], &["--since", "5 minutes"]].concat()).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("--since") && err.contains("expected a duration"),
        "{err}"
    );

    // A node that accepts but never answers: Ctrl-C stops the query at once (130). Its
    // request has arrived, so the signal handler (installed before) is in place.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_node = format!("silent={}", silent.local_addr().unwrap());
    let mut child = Command::new(EXE)
        .args(["--node", &silent_node])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut conn, _) = tokio::time::timeout(WAIT, silent.accept())
        .await
        .expect("flannel-observe connects")
        .unwrap();
    let mut request = [0u8; 64];
    let n = tokio::time::timeout(WAIT, conn.read(&mut request))
        .await
        .expect("a request")
        .unwrap();
    assert!(request[..n].starts_with(b"GET /flows"));
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child).await, 130);
    drop(conn);

    // --follow, JSON: what n1 holds for x/e (nothing), then a record pushed after it
    // connected; SIGTERM ends it with status 0.
    let (mut child, mut lines) = spawn_follow(&["--node", &n1, "-o", "json", "--from-pod", "x/e"]);
    wait_followers(&ring1, 1).await;
    ring1.push(new_to_b("n1", ("x", "a"), tcp, 80));
    ring1.push(rec(
        "n1",
        ("x", "e"),
        ("x", "b"),
        tcp,
        80,
        Verdict::Dropped,
        0,
    ));
    let line = next_line(&mut lines).await;
    assert_eq!(
        sources(&line),
        ["e"],
        "only the matching new record: {line}"
    );
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).await, 0);

    // --follow --since, table: a header, n2's held record, a pushed one, aligned. Then n2's
    // server goes and comes back (an enforcer restarting): the follow asks again, prints what
    // is new and not what it printed before. A node that was not there when the follow
    // started is asked again too and printed once it is up.
    let late = free_addr();
    let (mut child, mut lines) = spawn_follow(&[
        "--node",
        &format!("n2={a2}"),
        "--node",
        &format!("late={late}"),
        "--since",
        "1h",
    ]);
    assert_eq!(next_line(&mut lines).await, follow_header());
    let held = next_line(&mut lines).await;
    assert!(held.contains("y/c:40000") && held.contains("UDP"), "{held}");
    wait_followers(&ring2, 1).await;
    let pushed = new_to_b("n2", ("y", "f"), tcp, 443);
    ring2.push(pushed.clone());
    assert_eq!(next_line(&mut lines).await, follow_row(&pushed));
    // The server lets running answers go on for 3 s after it is told to stop: a record in
    // that time is printed live, then comes again in the window asked after the restart
    // (the stream's last second), and must not be printed twice.
    stop2.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let last = new_to_b("n2", ("y", "l"), tcp, 8443);
    ring2.push(last.clone());
    assert_eq!(next_line(&mut lines).await, follow_row(&last));
    stop_server(&stop2, server2).await;
    wait_followers(&ring2, 0).await;
    let (stop2, server2) = server_at(a2, ring2.clone()).await;
    wait_followers(&ring2, 1).await;
    let after = new_to_b("n2", ("y", "g"), tcp, 8080);
    ring2.push(after.clone());
    assert_eq!(
        next_line(&mut lines).await,
        follow_row(&after),
        "the record after the restart, and none printed before it again"
    );
    let ring3 = Arc::new(FlowRing::new(100));
    let (stop3, server3) = server_at(late, ring3.clone()).await;
    // Asked again after 1, 2, 4 s...: bounded by the backoff reached so far.
    for _ in 0..100 {
        if ring3.followers() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ring3.followers(),
        1,
        "the late node is followed once it is up"
    );
    let from_late = new_to_b("late", ("z", "h"), udp, 5353);
    ring3.push(from_late.clone());
    assert_eq!(next_line(&mut lines).await, follow_row(&from_late));
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).await, 0);
    let mut told = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut told)
        .await
        .unwrap();
    // The server's shutdown cuts the stream (an HTTP error) or ends it, either is told.
    assert!(
        told.contains("asking n2 for flows") || told.contains("n2 ended the stream"),
        "{told}"
    );
    assert!(told.contains("following n2 again"), "{told}");
    assert_eq!(
        told.matches("connecting to late").count(),
        1,
        "a node that stays down is told once: {told}"
    );
    stop_server(&stop2, server2).await;
    stop_server(&stop3, server3).await;

    stop_server(&stop1, server1).await;
}
