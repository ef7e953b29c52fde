//! `flannel-lab observe` end to end (issue 20: "a CLI that asks every node and merges") on a
//! 2-node lab with the enforcer (`up --datastore kube --netpol`):
//! * every node's enforcer answers from the underlay namespace: `observe` (the CLI with the
//!   user's flags verbatim, and the library's `LabState::observe`) exits 0 with nothing on
//!   stderr; with n2's enforcer stopped it names n2 on stderr and still exits 0; a bad flag is
//!   flannel-observe's exit 2; `--follow` runs until SIGTERM (exit 0);
//! * issue 20's "done when": with x/a on n1, x/b and y/c on n2 and a policy denying all
//!   ingress to x/b, a denied probe is a DROPPED record on the enforcing node naming both
//!   pods, their nodes, the direction, the TCP flags and the policy (also a UDP one between
//!   pods of one node, and in the default table); an allowed TCP exchange is FORWARDED on
//!   both nodes with byte and packet counts while conntrack holds the flow, and an ended
//!   record with its totals once the entry goes; filters that cannot match return nothing
//!   and bad ones exit 2 naming the flag; `--follow` streams a flow that starts after it
//!   attached; the metrics count drops by policy.
//!
//! Also: `Cluster::observe` on an in-process cluster, and a state directory without a lab
//! refused.

/// The shared lab harness of the conformance suite.
#[path = "netpol_conformance/lab_dir.rs"]
mod lab_dir;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flannel_lab::kubectl::kubeconfig_path;
use flannel_lab::lab_pods::PodAdd;
use flannel_lab::observe::observe_program;
use flannel_lab::state::LabState;
use flannel_lab::{Cluster, ClusterSpec, Datastore, PortProto, Proto, run_command};
use lab_dir::{LabDir, NP_PATH, SETTLE_TIMEOUT, bin_dir, rv_of, wait_synced};
use serde_json::{Value, json};

const TCP80: PortProto = PortProto::new(80, Proto::Tcp);
const UDP81: PortProto = PortProto::new(81, Proto::Udp);
const PROBE: Duration = Duration::from_millis(500);
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a record may take to show after the packet (kernel event, collector, ring).
const RECORD_WAIT: Duration = Duration::from_secs(30);

/// The records of JSON output.
fn records(json: &str) -> Vec<Value> {
    json.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A running `flannel-lab observe --follow ARGS` and its stdout lines.
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(lab: &LabDir, args: &[&str]) -> Follow {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flannel-lab"))
            .arg("--state-dir")
            .arg(lab.path())
            .args(["observe", "--follow"])
            .args(args)
            .env("FLANNEL_RS_BIN_DIR", bin_dir())
            .env_remove("CARGO")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follow { child, lines }
    }

    /// SIGTERM (flannel-lab became flannel-observe: same pid), then its exit code (bounded).
    fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "observe --follow did not end on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `flannel-lab observe ARGS`: exit code, stdout, stderr.
fn observe_cli(lab: &LabDir, args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<&str> = std::iter::once("observe")
        .chain(args.iter().copied())
        .collect();
    let out = lab.cli(&args).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn observe_reaches_every_node_and_names_a_missing_one() {
    flannel_lab::require_root("run the observe lab test").expect("root");
    let lab = LabDir::up("observe", 2).expect("lab up");
    let state = lab.state().unwrap();
    assert!(state.netpol && state.has_netpol());

    // Both enforcers answer from the underlay: nothing on stderr, a table header.
    let (code, out, err) = observe_cli(&lab, &["--namespace", "x", "--since", "10m"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.is_empty(), "{err}");
    assert!(out.starts_with("TIME") && out.contains("SUMMARY"), "{out}");
    // The user's flags pass verbatim, also after `--`; JSON of nothing is nothing.
    let (code, out, err) = observe_cli(&lab, &["--", "-o", "json", "--pod", "x/a"]);
    assert_eq!((code, out.as_str(), err.as_str()), (Some(0), "", ""));
    let out = state
        .observe(&["--verdict", "DROPPED", "-o", "json"], OBSERVE_TIMEOUT)
        .expect("the library call");
    assert!(records(&out).iter().all(|r| r["verdict"] == "DROPPED"));
    // A bad flag: flannel-observe's exit 2, naming it.
    let (code, _, err) = observe_cli(&lab, &["--verdict", "maybe"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--verdict") && err.contains("FORWARDED or DROPPED"),
        "{err}"
    );
    // --follow runs until SIGTERM, then exits 0 (its header is out: the handler is in place).
    let follow = Follow::start(&lab, &[]);
    let header = follow
        .lines
        .recv_timeout(OBSERVE_TIMEOUT)
        .expect("a header");
    assert!(header.starts_with("TIME"), "{header}");
    assert_eq!(follow.terminate(), Some(0));

    // Without --node, flannel-observe lists the nodes in the Kubernetes API (InternalIP).
    let discover = || {
        let program = observe_program(&bin_dir()).unwrap();
        let kubeconfig = kubeconfig_path(&state.lab_dir).display().to_string();
        let argv = ["--kubeconfig".to_string(), kubeconfig];
        let underlay = state.underlay_netns.as_deref().unwrap();
        let cmd = flannel_lab::observe::command(underlay, &program, &argv).unwrap();
        let out = run_command(cmd, None, OBSERVE_TIMEOUT).unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = discover();
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert!(out.starts_with("TIME"), "{out}");

    // n2's enforcer gone: named on stderr, n1 still asked (exit 0) ...
    LabState::modify(lab.path(), |s| s.stop_netpol("n2")).expect("stop n2's enforcer");
    let (code, out, err) = observe_cli(&lab, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("TIME"), "{out}");
    assert!(err.contains("connecting to n2"), "{err}");
    assert!(!err.contains("n1"), "{err}");
    // (the API's node n2, at its InternalIP)
    let (code, _, err) = discover();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("connecting to n2") && !err.contains("n1"),
        "{err}"
    );
    // ... and with n1's gone too, nothing answered: exit 1.
    LabState::modify(lab.path(), |s| s.stop_netpol("n1")).expect("stop n1's enforcer");
    let (code, _, err) = observe_cli(&lab, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("n1") && err.contains("n2"), "{err}");
}

fn deny_ingress_to_b() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "guard-b", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]},
    })
}

/// The records `observe -o json ARGS` prints.
fn json_records(lab: &LabDir, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = observe_cli(lab, &all);
    assert_eq!(code, Some(0), "observe {all:?}: {out}{err}");
    records(&out)
}

/// Asks until a record satisfies `want` (bounded by [`RECORD_WAIT`]); returns all records
/// of the last answer.
fn wait_for(lab: &LabDir, args: &[&str], want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        let got = json_records(lab, args);
        if got.iter().any(&want) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no wanted record for observe {args:?} within {RECORD_WAIT:?}; got {got:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Field `k` of `r` as text ("" when absent).
fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or("")
}

#[test]
fn observe_shows_drops_by_policy_forwarded_counts_and_follow() {
    flannel_lab::require_root("run the observe lab test").expect("root");
    let lab = LabDir::up("observe-rec", 2).expect("lab up");
    let serve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_flannel-lab"));
    for (ns, name, node) in [("x", "a", "n1"), ("x", "b", "n2"), ("y", "c", "n2")] {
        let add = PodAdd {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
        };
        LabState::modify(lab.path(), |st| st.add_pod(&add, &serve)).expect("pod add");
    }
    let client = lab.client().unwrap();
    let out = flannel_lab::apply::apply(&client, &deny_ingress_to_b().to_string()).unwrap();
    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    let obj = client
        .expect_ok(
            "GET",
            &format!("{NP_PATH}/x/networkpolicies/guard-b"),
            "application/json",
            None,
        )
        .unwrap();
    let want = BTreeMap::from([("networkpolicies", rv_of(&obj).unwrap())]);
    let state = lab.state().unwrap();
    wait_synced(&state, &want, SETTLE_TIMEOUT).expect("enforcers synced");

    // A denied probe across nodes: DROPPED on the server's node, naming pods and policy.
    assert!(!state.probe("x/a", "x/b", TCP80, PROBE).unwrap());
    let drops = wait_for(
        &lab,
        &["--verdict", "DROPPED", "--to-pod", "x/b", "--port", "80"],
        |r| s(r, "protocol") == "TCP",
    );
    let d = drops.iter().find(|r| s(r, "protocol") == "TCP").unwrap();
    for (k, v) in [
        ("verdict", "DROPPED"),
        ("node", "n2"),
        ("direction", "ingress"),
        ("srcNamespace", "x"),
        ("srcPod", "a"),
        ("srcNode", "n1"),
        ("dstNamespace", "x"),
        ("dstPod", "b"),
        ("dstNode", "n2"),
        ("policy", "x/guard-b"),
    ] {
        assert_eq!(s(d, k), v, "{k} of {d:#}");
    }
    assert_eq!(d["dstPort"], 80, "{d:#}");
    assert!(s(d, "tcpFlags").contains("SYN"), "{d:#}");
    assert!(d["forward"]["packets"].as_u64() >= Some(1), "{d:#}");
    // A denied UDP probe between pods of one node.
    assert!(!state.probe("y/c", "x/b", UDP81, PROBE).unwrap());
    let udp = wait_for(
        &lab,
        &[
            "--verdict",
            "dropped",
            "--from-pod",
            "y/c",
            "--protocol",
            "udp",
        ],
        |r| r["dstPort"] == 81,
    );
    assert!(
        udp.iter()
            .all(|r| s(r, "policy") == "x/guard-b" && s(r, "dstPod") == "b"),
        "{udp:#?}"
    );
    // The default output is a table with the same facts.
    let (code, table, err) = observe_cli(&lab, &["--pod", "x/b", "--verdict", "DROPPED"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(table.starts_with("TIME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("x/a:") && l.contains("x/b:80") && l.contains("x/guard-b")),
        "{table}"
    );

    // An allowed TCP exchange: FORWARDED on both nodes, with counts while conntrack holds it.
    assert!(state.probe("x/a", "y/c", TCP80, PROBE).unwrap());
    let path = [
        "--from-pod",
        "x/a",
        "--to-pod",
        "y/c",
        "--protocol",
        "TCP",
        "--port",
        "80",
    ];
    let counted = |r: &Value| {
        s(r, "verdict") == "FORWARDED"
            && r["forward"]["bytes"].as_u64() > Some(0)
            && r["reply"]["bytes"].as_u64() > Some(0)
    };
    let fwd = wait_for(&lab, &path, |r| counted(r) && s(r, "node") == "n1");
    let fwd = wait_for(&lab, &path, |r| counted(r) && s(r, "node") == "n2")
        .len()
        .max(fwd.len());
    assert!(fwd >= 2, "one record per node");
    let per_node = json_records(&lab, &path);
    let n1 = per_node.iter().find(|r| s(r, "node") == "n1").unwrap();
    let n2 = per_node.iter().find(|r| s(r, "node") == "n2").unwrap();
    assert_eq!(
        (s(n1, "direction"), s(n2, "direction")),
        ("egress", "ingress")
    );
    for r in [n1, n2] {
        assert_eq!((s(r, "srcPod"), s(r, "dstPod")), ("a", "c"), "{r:#}");
        // A connection's handshake alone is 3 packets of at least 40 bytes.
        assert!(r["forward"]["bytes"].as_u64() >= Some(120), "{r:#}");
    }
    // The flow's end (forced: conntrack keeps a closed TCP flow for TIME_WAIT, 120 s) is a
    // record of its own with the totals.
    let c_ip = state.find_pod("y/c").unwrap().ip.to_string();
    let del = lab
        .cli(&[
            "exec",
            "n2",
            "--",
            "conntrack",
            "-D",
            "-p",
            "tcp",
            "-d",
            &c_ip,
            "--dport",
            "80",
        ])
        .unwrap();
    assert!(del.status.success(), "{del:?}");
    let ended = wait_for(&lab, &path, |r| r["ended"] == true && s(r, "node") == "n2");
    let e = ended.iter().find(|r| r["ended"] == true).unwrap();
    assert!(e["forward"]["bytes"].as_u64() >= Some(120), "{e:#}");
    assert!(e["conntrackId"].is_u64(), "{e:#}");

    // Filters that match nothing, and bad ones.
    assert!(json_records(&lab, &["--namespace", "nope"]).is_empty());
    assert!(json_records(&lab, &["--from-pod", "x/b", "--verdict", "DROPPED"]).is_empty());
    for bad in [
        &["--verdict", "MAYBE"][..],
        &["--from-pod", "x"],
        &["--since", "soon"],
        &["--port", "http"],
    ] {
        let (code, _, err) = observe_cli(&lab, bad);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }

    // --follow: a flow that starts after the client attached is streamed.
    let follow = Follow::start(&lab, &["-o", "json", "--from-pod", "y/c"]);
    let deadline = Instant::now() + RECORD_WAIT;
    let streamed = loop {
        assert!(
            Instant::now() < deadline,
            "--follow streamed no flow of y/c within {RECORD_WAIT:?}"
        );
        assert!(state.probe("y/c", "x/a", TCP80, PROBE).unwrap());
        if let Ok(line) = follow.lines.recv_timeout(Duration::from_secs(1)) {
            if line.trim().is_empty() {
                continue;
            }
            break serde_json::from_str::<Value>(&line).expect("a record");
        }
    };
    assert_eq!(
        (s(&streamed, "srcPod"), s(&streamed, "dstPod")),
        ("c", "a"),
        "{streamed:#}"
    );
    assert_eq!(follow.terminate(), Some(0));

    // The flow metrics of the enforcing node.
    let m = state.netpol_metrics("n2").unwrap().expect("metrics");
    let value = |series: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        value("flannel_netpol_flow_drops_total{policy=\"x/guard-b\"}") >= 2,
        "{m}"
    );
    assert!(
        value("flannel_netpol_flows_total{verdict=\"DROPPED\",protocol=\"TCP\"}") >= 1,
        "{m}"
    );
    assert_eq!(
        value("flannel_netpol_flow_events_lost_total{source=\"conntrack\"}"),
        0,
        "{m}"
    );
}

/// `Cluster::observe`, the library call for tests that build a cluster in-process: both
/// enforcers answer; a bad flag is an error carrying flannel-observe's message.
#[test]
fn observe_on_a_cluster() {
    flannel_lab::require_root("run the observe cluster test").expect("root");
    let cluster = Cluster::start(ClusterSpec {
        nodes: 2,
        datastore: Datastore::Kube,
        netpol: true,
        ..ClusterSpec::default()
    })
    .expect("cluster with enforcers");
    let out = cluster
        .observe(&["-o", "json", "--since", "1h"], OBSERVE_TIMEOUT)
        .expect("every node answered");
    assert!(
        records(&out)
            .iter()
            .all(|r| r["node"] == "n1" || r["node"] == "n2")
    );
    let table = cluster.observe(&[] as &[&str], OBSERVE_TIMEOUT).unwrap();
    assert!(table.starts_with("TIME"), "{table}");
    let e = cluster
        .observe(&["--port", "http"], OBSERVE_TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--port") && e.contains("1..65535"), "{e}");
}

/// A lab without the enforcer keeps no flow records: `observe` says how to start one.
#[test]
fn observe_needs_a_lab_with_the_enforcer() {
    let dir = tempfile::Builder::new()
        .prefix("flrs-observe-none-")
        .tempdir()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flannel-lab"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["observe", "--verdict", "DROPPED"])
        .env_remove("CARGO")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no lab in"), "{err}");
}
