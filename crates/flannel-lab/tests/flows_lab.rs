//! Flow records end to end (issue 20's "done when") on a 2-node Kubernetes-mode lab with the
//! enforcer (`flannel-lab up --datastore kube --netpol`), read with `flannel-lab observe`:
//! - a denied probe is a DROPPED record naming both pods, their nodes, the direction, the
//!   TCP flags and the policy that dropped it, on the enforcing node; a denied UDP probe
//!   between pods of one node too; the default table shows the same;
//! - an allowed TCP exchange is FORWARDED on both nodes, with byte and packet counts while
//!   conntrack still holds the flow, and as an ended record with its totals once the entry
//!   goes;
//! - filters that cannot match return nothing, bad ones exit 2 naming the flag;
//! - `--follow` streams a flow that starts after it attached;
//! - the flow metrics count drops by policy.

/// The shared lab harness of the conformance suite.
#[path = "netpol_conformance/lab_dir.rs"]
mod lab_dir;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flannel_lab::lab_pods::PodAdd;
use flannel_lab::state::LabState;
use flannel_lab::{PortProto, Proto};
use lab_dir::{LabDir, NP_PATH, SETTLE_TIMEOUT, bin_dir, rv_of, wait_synced};
use serde_json::{Value, json};

const PROBE: Duration = Duration::from_millis(500);
/// How long a record may take to show up (normally well under a second).
const RECORD_TIMEOUT: Duration = Duration::from_secs(20);
const TCP80: PortProto = PortProto::new(80, Proto::Tcp);
const UDP81: PortProto = PortProto::new(81, Proto::Udp);

/// `flannel-lab observe ARGS`: exit code, stdout, stderr.
fn observe(lab: &LabDir, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["observe"];
    all.extend_from_slice(args);
    let out = lab.cli(&all).expect("flannel-lab observe ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The records `observe -o json ARGS` prints.
fn records(lab: &LabDir, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = observe(lab, &all);
    assert_eq!(code, Some(0), "observe {all:?}: {out}{err}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Asks until a record satisfies `want` (bounded by [`RECORD_TIMEOUT`]); returns all records
/// of the last answer.
fn wait_for(lab: &LabDir, args: &[&str], want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + RECORD_TIMEOUT;
    loop {
        let got = records(lab, args);
        if got.iter().any(&want) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no wanted record for observe {args:?} within {RECORD_TIMEOUT:?}; got {got:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `--follow` client, killed when dropped (also when an assertion fails).
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(lab: &LabDir, args: &[&str]) -> Follow {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flannel-lab"))
            .arg("--state-dir")
            .arg(lab.path())
            .arg("observe")
            .args(args)
            .env("FLANNEL_RS_BIN_DIR", bin_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("observe --follow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follow { child, lines }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deny_b() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "guard-b", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]},
    })
}

/// Field `k` of `r` as text ("" when absent).
fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or("")
}

#[test]
fn flows_show_drops_by_policy_forwarded_bytes_and_follow() {
    flannel_lab::require_root("run the flow records lab test").expect("root");
    let lab = LabDir::up("flows", 2).expect("lab up");
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
    let out = flannel_lab::apply::apply(&client, &deny_b().to_string()).unwrap();
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
    let (code, table, err) = observe(&lab, &["--pod", "x/b", "--verdict", "DROPPED"]);
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
    let per_node = records(&lab, &path);
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
    assert!(records(&lab, &["--namespace", "nope"]).is_empty());
    assert!(records(&lab, &["--from-pod", "x/b", "--verdict", "DROPPED"]).is_empty());
    for bad in [
        &["--verdict", "MAYBE"][..],
        &["--from-pod", "x"],
        &["--since", "soon"],
        &["--port", "http"],
    ] {
        let (code, _, err) = observe(&lab, bad);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }

    // --follow: a flow that starts after the client attached is streamed.
    let follow = Follow::start(&lab, &["--follow", "-o", "json", "--from-pod", "y/c"]);
    let deadline = Instant::now() + RECORD_TIMEOUT;
    let streamed = loop {
        assert!(
            Instant::now() < deadline,
            "--follow streamed no flow of y/c within {RECORD_TIMEOUT:?}"
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
    drop(follow);

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
