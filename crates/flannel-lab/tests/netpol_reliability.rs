//! NetworkPolicy enforcement survives the enforcer and the API going away (issue 17: "restarts
//! and API outages keep the last rules in the kernel; on start the enforcer reconciles").
//!
//! On a 2-node lab with the enforcer (`flannel-lab up --datastore kube --netpol`): server x/b
//! on n2, clients x/a on n1 (across nodes) and y/b on n2 (same node). With a deny policy on
//! x/b in place:
//! 1. n2's enforcer stops: the rules stay (both clients still denied);
//! 2. the policy changes while it is down (allow namespace x on 80/TCP): nothing changes in the
//!    kernel until the enforcer is back;
//! 3. it restarts: while it starts, lists and reconciles, y/b -> x/b is probed in a loop and
//!    never connects; once ready, the new policy holds (x/a reaches 80 but not 81);
//! 4. the emulator drops every watch: rules kept, and the next change is enforced;
//! 5. the emulator is frozen (SIGSTOP) for a few seconds: rules kept; thawed, the next change
//!    (the policy deleted) is enforced.

/// The shared lab harness of the conformance suite.
#[path = "netpol_conformance/lab_dir.rs"]
mod lab_dir;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flannel_lab::lab_pods::PodAdd;
use flannel_lab::state::LabState;
use flannel_lab::{PortProto, Proto};
use lab_dir::{LabDir, NP_PATH, SETTLE_TIMEOUT, rv_of, wait_synced};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const PROBE: Duration = Duration::from_millis(500);
/// The probes during the restart: short, so many fit in it (a denied probe waits all of it);
/// the end of the test shows the same pair connects within it once allowed.
const QUICK: Duration = Duration::from_millis(20);
const TCP80: PortProto = PortProto::new(80, Proto::Tcp);
const TCP81: PortProto = PortProto::new(81, Proto::Tcp);

/// The policy on x/b: `None` denies all ingress, `Some(ports)` allows namespace x on them.
fn policy(ports: Option<&[u16]>) -> Value {
    let ingress = match ports {
        None => json!([]),
        Some(ports) => json!([{
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
            "ports": ports.iter().map(|p| json!({"protocol": "TCP", "port": p})).collect::<Vec<_>>(),
        }]),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "guard-b", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"],
                 "ingress": ingress},
    })
}

struct Rig {
    lab: LabDir,
    want: BTreeMap<&'static str, u64>,
}

impl Rig {
    fn state(&self) -> LabState {
        self.lab.state().expect("lab state")
    }

    /// Applies the policy and notes its resourceVersion.
    fn set_policy(&mut self, ports: Option<&[u16]>) {
        let client = self.lab.client().unwrap();
        let out = flannel_lab::apply::apply(&client, &policy(ports).to_string()).unwrap();
        assert!(out.iter().all(|o| o.result.is_ok()), "{:?}", out);
        let path = format!("{NP_PATH}/x/networkpolicies/guard-b");
        let obj = client
            .expect_ok("GET", &path, "application/json", None)
            .unwrap();
        self.want.insert("networkpolicies", rv_of(&obj).unwrap());
    }

    fn settle(&self) {
        wait_synced(&self.state(), &self.want, SETTLE_TIMEOUT).expect("enforcers synced");
    }

    fn probe(&self, from: &str, to: &str, t: PortProto) -> bool {
        self.state().probe(from, to, t, PROBE).expect("probe ran")
    }

    /// Asserts the reachability of the three interesting pairs.
    fn expect(&self, when: &str, xa80: bool, xa81: bool, yb80: bool) {
        let got = (
            self.probe("x/a", "x/b", TCP80),
            self.probe("x/a", "x/b", TCP81),
            self.probe("y/b", "x/b", TCP80),
        );
        assert_eq!(
            got,
            (xa80, xa81, yb80),
            "{when}: (x/a->x/b 80, x/a->x/b 81, y/b->x/b 80)"
        );
        assert!(self.probe("x/b", "x/a", TCP80), "{when}: egress of x/b");
    }
}

/// Thaws the emulator even when an assertion fails while it is frozen.
struct Thaw(Pid);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn rules_survive_enforcer_restarts_and_api_outages() {
    flannel_lab::require_root("run the NetworkPolicy reliability test").expect("root");
    let lab = LabDir::up("netpol-rel", 2).expect("lab up");
    let serve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_flannel-lab"));
    for (ns, name, node) in [("x", "a", "n1"), ("x", "b", "n2"), ("y", "b", "n2")] {
        let add = PodAdd {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
        };
        LabState::modify(lab.path(), |s| s.add_pod(&add, &serve)).expect("pod add");
    }
    let mut rig = Rig {
        lab,
        want: BTreeMap::new(),
    };
    rig.set_policy(None);
    rig.settle();
    rig.expect("deny in place", false, false, false);

    // 1. The enforcer of the server's node stops: its rules stay.
    LabState::modify(rig.lab.path(), |s| s.stop_netpol("n2")).expect("stop");
    assert!(rig.state().netpol_metrics("n2").unwrap().is_none());
    rig.expect("enforcer stopped", false, false, false);

    // 2. The policy changes meanwhile: nothing enforces it yet, the old rules hold.
    rig.set_policy(Some(&[80]));
    wait_synced_on(&rig, "n1");
    rig.expect("changed while stopped", false, false, false);

    // 3. Restart, probing the pair that stays denied all along.
    let dir = rig.lab.path().to_path_buf();
    let restart = std::thread::spawn(move || {
        let started = Instant::now();
        LabState::modify(&dir, |s| s.start_netpol("n2", Duration::from_secs(60)))
            .map(|()| started.elapsed())
    });
    let (mut probes, deadline) = (0, Instant::now() + Duration::from_secs(90));
    while !restart.is_finished() && Instant::now() < deadline {
        let open = rig
            .state()
            .probe("y/b", "x/b", TCP80, QUICK)
            .expect("probe ran");
        assert!(!open, "y/b reached x/b during the restart (probe {probes})");
        probes += 1;
    }
    let took = restart.join().expect("restart thread").expect("restart");
    println!("restart took {took:.2?}; {probes} probes of y/b -> x/b during it, none connected");
    assert!(probes > 0, "no probe ran during the restart");
    rig.settle();
    rig.expect("restarted: the new policy", true, false, false);
    let log = rig
        .state()
        .netpol_process("n2")
        .unwrap()
        .log
        .clone()
        .unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("found"),
        "the restarted enforcer read the table:\n{log}"
    );

    // 4. Every watch dropped: rules kept, and the enforcer follows the next change.
    rig.lab
        .client()
        .unwrap()
        .expect_ok("POST", "/emu/drop-watches", "application/json", None)
        .expect("drop watches");
    rig.expect("watches dropped", true, false, false);
    rig.set_policy(Some(&[80, 81]));
    rig.settle();
    rig.expect("after the watches came back", true, true, false);

    // 5. The API frozen for 3 s: rules kept; thawed, the policy's deletion is enforced.
    let emu = rig
        .state()
        .processes
        .iter()
        .find(|p| p.role == "kube-api-emulator")
        .expect("emulator recorded")
        .clone();
    assert!(emu.is_running());
    let pid = Pid::from_raw(i32::try_from(emu.pid).unwrap());
    let thaw = Thaw(pid);
    kill(pid, Signal::SIGSTOP).expect("freeze the emulator");
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(3) {
        rig.expect("API frozen", true, true, false);
    }
    drop(thaw);
    let client = rig.lab.client().unwrap();
    let gone = client
        .expect_ok(
            "DELETE",
            &format!("{NP_PATH}/x/networkpolicies/guard-b"),
            "application/json",
            None,
        )
        .expect("delete the policy");
    rig.want.insert("networkpolicies", rv_of(&gone).unwrap());
    rig.settle();
    rig.expect("policy deleted after the outage", true, true, true);
    let quick_ok = (0..5).any(|_| rig.state().probe("y/b", "x/b", TCP80, QUICK).unwrap());
    assert!(quick_ok, "a {QUICK:?} probe connects when allowed");
    for node in ["n1", "n2"] {
        let m = rig.state().netpol_metrics(node).unwrap().expect("metrics");
        assert!(!m.contains("syncs_total{result=\"error\"}"), "{node}:\n{m}");
    }
}

/// Waits until n1 (still running) has synced: a change in the API reached at least one node.
fn wait_synced_on(rig: &Rig, node: &str) {
    let mut state = rig.state();
    state.nodes.retain(|n| n.name == node);
    wait_synced(&state, &rig.want, SETTLE_TIMEOUT).expect("n1 synced");
}
