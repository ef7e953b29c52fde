//! The plan against the real nft and kernel, in fresh network namespaces (root).
//!
//! Every step reads the table back from the kernel, checks that it holds exactly the desired
//! sets, elements, counters and rules, and that planning again against what was read gives an
//! empty transaction (a restart right after would change nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use flannel_lab::Netns;
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_rules::TokioRunner;
use flannel_types::IpFamily;
use serde_json::json;

use super::*;
use crate::cluster::ClusterState;
use crate::compile::{CompileOptions, compile, compile_with};
use crate::flowsrc::nflog::NflogSource;
use crate::interval::IpRange;
use crate::model::NamespaceInfo;
use crate::ruleset::{Element, Ruleset, SetDef, SetKind, policy_id, rule_fingerprint};
use crate::testing::{add_policy, e2e_state, find, labels, pod};

/// Reads, plans, applies, reads again and checks the kernel holds `desired` exactly.
async fn sync(runner: &TokioRunner, desired: &Ruleset) -> Transaction {
    let actual = read_table(runner).await.expect("read");
    let tx = plan(&actual, desired);
    apply(runner, &tx)
        .await
        .unwrap_or_else(|e| panic!("{e}\ntransaction:\n{}", tx.text()));
    let read = read_table(runner).await.expect("read back");
    assert_eq!(read.sets, desired.sets, "sets and elements");
    assert_eq!(
        read.counters.keys().cloned().collect::<BTreeSet<_>>(),
        desired.counters
    );
    let chains: BTreeMap<String, Vec<Option<String>>> = desired
        .chains
        .iter()
        .map(|(n, c)| {
            (
                n.clone(),
                c.rules.iter().map(|r| Some(rule_fingerprint(r))).collect(),
            )
        })
        .collect();
    let read_chains: BTreeMap<String, Vec<Option<String>>> = read
        .chains
        .iter()
        .map(|(n, c)| (n.clone(), c.fingerprints.clone()))
        .collect();
    assert_eq!(read_chains, chains, "chains and rules");
    for (name, c) in &desired.chains {
        assert_eq!(read.chains[name].hook, c.hook, "{name}");
    }
    let again = plan(&read, desired);
    assert!(again.is_empty(), "not idempotent:\n{}", again.text());
    tx
}

fn nft(args: &[&str]) {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .expect("nft runs");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn with_policies() -> ClusterState {
    let mut s = e2e_state();
    add_policy(
        &mut s,
        json!({"metadata": {"namespace": "x", "name": "web"}, "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                          {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24", "10.0.3.2/32"]}},
                          {"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::3:0/112"]}}],
                 "ports": [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000},
                           {"protocol": "SCTP"}, {"port": "serve-81-udp", "protocol": "UDP"}]},
                {}
            ],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"port": "serve-80-tcp"}]}]}}),
    );
    add_policy(
        &mut s,
        json!({"metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}, "ingress": []}}),
    );
    s
}

#[test]
fn incremental_changes_round_trip_through_the_kernel() {
    run_in_netns(NetnsTarget::Fresh, || async {
        let runner = TokioRunner::new(Duration::from_secs(30));
        let mut s = with_policies();
        let tx = sync(&runner, &compile(&s, "n1")).await;
        assert!(tx.text().starts_with("add table inet flannel-netpol\n"));
        // A client in namespace y gets x/b's neighbour address: ranges merge and split.
        s.upsert_pod(pod("y", "d", "n2", &["10.0.2.4", "fd00::2:4"]));
        let tx = sync(&runner, &compile(&s, "n1")).await;
        assert_eq!(tx.stats.chains_written, 0, "{}", tx.text());
        s.remove_pod("y", "b");
        sync(&runner, &compile(&s, "n1")).await;
        // A label change moves a pod out of the egress peers.
        let mut b = find(&s, "x/b").clone();
        b.labels.insert("pod".into(), "b2".into());
        s.upsert_pod(b);
        sync(&runner, &compile(&s, "n1")).await;
        // A rule change rewrites one chain.
        add_policy(
            &mut s,
            json!({"metadata": {"namespace": "x", "name": "web"}, "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 81}]}]}}),
        );
        let tx = sync(&runner, &compile(&s, "n1")).await;
        assert!(tx.text().contains(&format!("flush chain inet flannel-netpol {}-in", policy_id("x", "web"))));
        // A policy deleted: its objects go, nothing else is touched.
        s.remove_policy("x", "web");
        let tx = sync(&runner, &compile(&s, "n1")).await;
        assert!(tx.stats.sets_removed > 0 && tx.stats.chains_removed == 1, "{}", tx.text());
        assert!(!tx.text().contains("flush table") && !tx.text().contains("delete table"));
    })
    .expect("fresh netns");
}

#[test]
fn identified_drop_logging_is_accepted_and_switched_off_again() {
    run_in_netns(NetnsTarget::Fresh, || async {
        let runner = TokioRunner::new(Duration::from_secs(30));
        let s = with_policies();
        let options = CompileOptions {
            nflog_group: Some(100),
            identify_drops: true,
            drop_log_rate: None,
        };
        // The chain as nft prints it.
        let listed = || {
            let out = std::process::Command::new("nft")
                .args(["list", "chain", "inet", "flannel-netpol", "ingress-policies"])
                .output()
                .expect("nft runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        sync(&runner, &compile_with(&s, "n1", &options)).await;
        let listed_now = listed();
        assert!(
            listed_now.contains("log prefix \"x/web ingress\" group 100 drop"),
            "{listed_now}"
        );
        assert!(
            listed_now.contains("log prefix \"default deny ingress\" group 100 drop"),
            "{listed_now}"
        );
        // Rate-limited: nft takes the limit before the log statement.
        let limited = CompileOptions {
            drop_log_rate: Some(100),
            ..options.clone()
        };
        sync(&runner, &compile_with(&s, "n1", &limited)).await;
        let listed_now = listed();
        assert!(
            listed_now.contains(
                "limit rate 100/second burst 100 packets log prefix \"default deny ingress\" group 100"
            ),
            "{listed_now}"
        );
        // Back to the rules without identities: only the dispatch chains change.
        let tx = sync(&runner, &compile(&s, "n1")).await;
        assert_eq!(tx.stats.chains_written, 2, "{}", tx.text());
    })
    .expect("fresh netns");
}

#[test]
fn restart_repairs_foreign_rules_and_removes_stale_objects() {
    run_in_netns(NetnsTarget::Fresh, || async {
        let runner = TokioRunner::new(Duration::from_secs(30));
        let s = with_policies();
        sync(&runner, &compile(&s, "n1")).await;
        // Someone adds a rule and a set; a policy vanished while we were down.
        nft(&["add", "rule", "inet", "flannel-netpol", "ingress", "accept"]);
        nft(&[
            "add",
            "set",
            "inet",
            "flannel-netpol",
            "leftover",
            "{ type ipv4_addr; }",
        ]);
        let mut later = s.clone();
        later.remove_policy("x", "deny");
        let tx = sync(&runner, &compile(&later, "n1")).await;
        assert!(
            tx.text()
                .contains("flush chain inet flannel-netpol ingress\n"),
            "{}",
            tx.text()
        );
        assert!(
            tx.text()
                .contains("delete set inet flannel-netpol leftover\n")
        );
    })
    .expect("fresh netns");
}

#[test]
fn interval_elements_are_deleted_exactly_as_read_back() {
    run_in_netns(NetnsTarget::Fresh, || async {
        let runner = TokioRunner::new(Duration::from_secs(30));
        let range = |a: &str, b: &str| {
            Element::Range(IpRange {
                first: a.parse().unwrap(),
                last: b.parse().unwrap(),
            })
        };
        let set = |fam, elements: Vec<Element>| SetDef {
            kind: SetKind::Interval(fam),
            elements: elements.into_iter().collect(),
        };
        let mut rs = Ruleset::default();
        rs.sets.insert(
            "r4".into(),
            set(
                IpFamily::V4,
                vec![
                    range("10.0.0.0", "10.255.255.255"),
                    range("11.0.0.1", "11.0.0.5"),
                    range("12.0.0.1", "12.0.0.1"),
                ],
            ),
        );
        rs.sets.insert(
            "r6".into(),
            set(
                IpFamily::V6,
                vec![range("fd00::", "fd00::ffff"), range("fd01::1", "fd01::3")],
            ),
        );
        sync(&runner, &rs).await;
        let mut next = rs.clone();
        next.sets.insert(
            "r4".into(),
            set(
                IpFamily::V4,
                vec![
                    range("10.0.0.0", "10.127.255.255"),
                    range("11.0.0.1", "11.0.0.6"),
                ],
            ),
        );
        next.sets.insert(
            "r6".into(),
            set(IpFamily::V6, vec![range("fd01::2", "fd01::2")]),
        );
        let tx = sync(&runner, &next).await;
        assert_eq!(tx.stats.elements_removed, 5, "{}", tx.text());
        sync(&runner, &rs).await;
    })
    .expect("fresh netns");
}

/// Client and server namespaces routed through a "node" namespace that holds the table,
/// with the policy `x/allow-80` (TCP 80 from the client to the server) compiled for it.
struct Routed {
    node: Netns,
    cli: Netns,
    srv: Netns,
    state: ClusterState,
}

impl Routed {
    fn new() -> Routed {
        let node = Netns::new("np-node").expect("node netns");
        let cli = Netns::new("np-cli").expect("client netns");
        let srv = Netns::new("np-srv").expect("server netns");
        node.ip_batch(&format!(
            "link add c0 type veth peer name eth0 netns {cli}\n\
             link add s0 type veth peer name eth0 netns {srv}\n\
             addr add 10.9.1.1/24 dev c0\naddr add 10.9.2.1/24 dev s0\n\
             link set c0 up\nlink set s0 up\n",
            cli = cli.name(),
            srv = srv.name()
        ))
        .expect("node links");
        for (ns, addr, gw) in [
            (&cli, "10.9.1.2/24", "10.9.1.1"),
            (&srv, "10.9.2.2/24", "10.9.2.1"),
        ] {
            ns.ip_batch(&format!(
                "addr add {addr} dev eth0\nlink set eth0 up\nroute add default via {gw}\n"
            ))
            .expect("pod links");
        }
        node.set_sysctl("net.ipv4.ip_forward", "1")
            .expect("forwarding");
        let mut state = ClusterState::new();
        state.upsert_namespace(NamespaceInfo {
            name: "x".into(),
            labels: labels(&[]),
        });
        state.upsert_pod(pod("x", "client", "elsewhere", &["10.9.1.2"]));
        state.upsert_pod(pod("x", "server", "node", &["10.9.2.2"]));
        add_policy(
            &mut state,
            json!({"metadata": {"namespace": "x", "name": "allow-80"}, "spec": {
                "podSelector": {"matchLabels": {"pod": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "client"}}}], "ports": [{"port": 80}]}]}}),
        );
        Routed {
            node,
            cli,
            srv,
            state,
        }
    }

    /// Compiles the policy with `options` and installs it in the node.
    fn install(&self, options: &CompileOptions) {
        let desired = compile_with(&self.state, "node", options);
        self.node
            .in_thread(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    sync(&TokioRunner::new(Duration::from_secs(30)), &desired).await;
                })
            })
            .expect("node thread");
    }

    /// The table as the node's kernel holds it.
    fn table(&self, what: &[&str]) -> ActualTable {
        let mut args = vec!["nft", "-j", "list"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["table", "inet", "flannel-netpol"]);
        parse_table(&self.node.run_ok(args).expect("listing")).unwrap()
    }
}

/// A policy allowing TCP 80 from the client lets 80 through and drops 81.
#[test]
fn packets_are_allowed_and_dropped_by_policy() {
    let r = Routed::new();
    let listeners: Vec<TcpListener> = r
        .srv
        .in_thread(|| {
            [80, 81]
                .iter()
                .map(|p| TcpListener::bind(("10.9.2.2", *p)).expect("bind"))
                .collect()
        })
        .expect("server thread");
    let connect = |port: u16| {
        r.cli
            .in_thread(move || {
                let addr: SocketAddr = format!("10.9.2.2:{port}").parse().unwrap();
                TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_ok()
            })
            .expect("client thread")
    };
    assert!(
        connect(80) && connect(81),
        "the path works before any policy"
    );
    r.install(&CompileOptions::default());
    assert!(connect(80), "TCP 80 from the client is allowed");
    assert!(!connect(81), "TCP 81 is not");
    let table = r.table(&[]);
    let counter = format!("{}-drop-in", policy_id("x", "allow-80"));
    assert!(
        table.counters[&counter].packets >= 1,
        "{:?}",
        table.counters
    );
    // The counter refresh reads the counters alone: the same values, no sets.
    let only = r.table(&["counters"]);
    assert_eq!(only.counters, table.counters);
    assert!(only.sets.is_empty() && !table.sets.is_empty());
    drop(listeners);
}

/// A flood of denied packets with rate-limited drop logging: every packet is dropped and
/// counted by the policy's counter, but NFLOG gets only the burst and the rate.
#[test]
fn a_flood_of_denied_packets_is_dropped_and_counted_but_logged_at_the_rate() {
    const GROUP: u16 = 77;
    const RATE: u32 = 20;
    const SENT: u64 = 3000;
    let r = Routed::new();
    r.install(&CompileOptions {
        nflog_group: Some(GROUP),
        identify_drops: true,
        drop_log_rate: Some(RATE),
    });
    let mut source = r
        .node
        .in_thread(|| NflogSource::open(GROUP, 4 << 20, Duration::from_millis(200)))
        .expect("node thread")
        .expect("NFLOG group");
    let server = r
        .srv
        .in_thread(|| {
            let s = UdpSocket::bind("10.9.2.2:81").expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .expect("server thread");
    let started = Instant::now();
    r.cli
        .in_thread(|| {
            let s = UdpSocket::bind("10.9.1.2:0").expect("bind");
            for i in 0..SENT {
                s.send_to(b"flood", "10.9.2.2:81").expect("send");
                // Paced a little, so the receiving veth's backlog never overflows.
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .expect("client thread");
    // Records for one second after the flood (NFLOG flushes within its 1 s default timeout).
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        source.recv(&mut events).expect("recv");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let prefix = "x/allow-80 ingress";
    let logged = events.iter().filter(|e| e.prefix == prefix).count() as u64;
    // The kernel's bucket starts full with rate + burst tokens, then refills at the rate.
    let most = 2 * u64::from(RATE) + (f64::from(RATE) * elapsed).ceil() as u64 + 1;
    assert!(
        (u64::from(RATE)..=most).contains(&logged),
        "{logged} drops logged of {SENT}, expected at least the burst of {RATE} and at most {most} in {elapsed:.2}s"
    );
    assert!(events.iter().all(|e| e.prefix == prefix), "{events:?}");
    eprintln!("{logged} of {SENT} drops logged in {elapsed:.2}s");
    let mut buf = [0u8; 64];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a denied packet reached the server"
    );
    let counter = format!("{}-drop-in", policy_id("x", "allow-80"));
    assert_eq!(
        r.table(&["counters"]).counters[&counter].packets,
        SENT,
        "the counter counts every drop, logged or not"
    );
}

/// `cargo test -p flannel-netpol --release -- --ignored --nocapture kernel_scale`: full sync
/// and one label change against the kernel at 1000 local pods x 500 policies.
#[test]
#[ignore = "timing figures, run by hand"]
fn kernel_scale_1000_pods_500_policies() {
    run_in_netns(NetnsTarget::Fresh, || async {
        let runner = TokioRunner::new(Duration::from_secs(120));
        let mut s = crate::testing::scale_state();
        let t = std::time::Instant::now();
        let desired = compile(&s, "n1");
        let tx = plan(&ActualTable::default(), &desired);
        apply(&runner, &tx).await.expect("first sync");
        let full = t.elapsed();
        let t = std::time::Instant::now();
        let read = read_table(&runner).await.expect("read");
        let read_time = t.elapsed();
        assert!(plan(&read, &desired).is_empty());
        let mut applied = ActualTable::from(&desired);
        let mut times = Vec::new();
        for i in 0..20u32 {
            let mut p = find(&s, &format!("ns0/p{}", i * 10)).clone();
            p.labels
                .insert("app".into(), format!("app{}", (i + 7) % 50));
            s.upsert_pod(p);
            let t = std::time::Instant::now();
            let next = compile(&s, "n1");
            let tx = plan(&applied, &next);
            let planned = t.elapsed();
            apply(&runner, &tx).await.expect("change");
            times.push((t.elapsed(), planned));
            applied = ActualTable::from(&next);
        }
        times.sort();
        println!(
            "full sync {full:?} ({} elements, {} bytes), read back {read_time:?}, \
             label change to applied (compile+plan of it): p50 {:?} max {:?}",
            desired.element_count(),
            tx.text().len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    })
    .expect("fresh netns");
}
