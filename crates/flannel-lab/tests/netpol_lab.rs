//! The NetworkPolicy lab interface end to end on a real 2-node lab in Kubernetes mode:
//! `pod add` in namespaces x and y on both nodes (Namespace and Pod objects as a kubelet leaves
//! them), `probe` (TCP and UDP, ports 80 and 81, same node and across nodes; a port nothing
//! serves fails within the timeout; usage errors exit 2), `netpol-matrix` (a full allow table,
//! and the library's matrix and comparison), `pod label`, `apply -f`/`delete -f` of Namespaces
//! and NetworkPolicies (and a refused kind), `exec NS/NAME`, `pod delete` (namespace, Pod object and servers gone)
//! and `down` leaving nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flannel_lab::netpol_matrix::Reachability;
use flannel_lab::probe::{Proto, SERVED};
use flannel_lab::state::LabState;
use flannel_lab::{netns_exists, netns_with_prefix, run_command};
use serde_json::Value;

const UP_TIMEOUT: Duration = Duration::from_secs(300);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// A lab in its own state directory (`flrs-…`, for scripts/test's leak check), removed with
/// `down --force` on drop, also when an assertion failed.
struct NetpolLab {
    dir: tempfile::TempDir,
}

impl NetpolLab {
    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let exe = env!("CARGO_BIN_EXE_flannel-lab");
        let bins = std::env::var_os("FLANNEL_RS_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(exe).parent().unwrap().to_path_buf());
        let mut cmd = Command::new(exe);
        cmd.arg("--state-dir")
            .arg(self.dir.path())
            .args(args)
            .env("FLANNEL_RS_BIN_DIR", bins)
            .env_remove("CARGO");
        let timeout = if args.first() == Some(&"up") {
            UP_TIMEOUT
        } else {
            CMD_TIMEOUT
        };
        run_command(cmd, stdin, timeout).expect("flannel-lab ran")
    }

    /// Runs, requires `code`, returns stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        self.expect_in(code, args, None)
    }

    fn expect_in(&self, code: i32, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.cli(args, stdin);
        assert_eq!(
            out.status.code(),
            Some(code),
            "flannel-lab {args:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn state(&self) -> LabState {
        LabState::load(self.dir.path()).unwrap().expect("a lab")
    }
}

impl Drop for NetpolLab {
    fn drop(&mut self) {
        let _ = self.cli(&["down", "--force"], None);
    }
}

/// GET on the lab's emulator: status and object.
fn get(state: &LabState, path: &str) -> (u16, Value) {
    let client = state.require_kube("test").unwrap();
    client
        .request("GET", path, "application/json", None)
        .unwrap()
}

#[test]
fn pods_probes_matrix_labels_objects_and_down() {
    let lab = NetpolLab {
        dir: tempfile::Builder::new()
            .prefix("flrs-labnp-")
            .tempdir()
            .unwrap(),
    };
    lab.expect(
        0,
        &[
            "up",
            "--datastore",
            "kube",
            "--nodes",
            "2",
            "--pods-per-node",
            "1",
            "-q",
        ],
    );
    let pods = [("x/a", "n1"), ("x/b", "n2"), ("y/a", "n1"), ("y/b", "n2")];
    for (pod, node) in pods {
        let name = &pod[2..];
        let out = lab.expect(
            0,
            &[
                "pod",
                "add",
                pod,
                "--node",
                node,
                "--label",
                &format!("pod={name}"),
            ],
        );
        assert!(
            out.contains(&format!("pod {pod} created on {node}")),
            "{out}"
        );
    }
    // Same name twice, an unknown node, a malformed name: refused, nothing recorded.
    lab.expect(2, &["pod", "add", "x/a", "--node", "n2"]);
    lab.expect(2, &["pod", "add", "x/z", "--node", "n9"]);
    lab.expect(2, &["pod", "add", "X/a", "--node", "n1"]);
    let state = lab.state();
    assert_eq!(state.serving_pods().len(), 4);

    // The objects a kubelet would have left.
    let (code, ns) = get(&state, "/api/v1/namespaces/x");
    assert_eq!(code, 200);
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
    let rec = state.find_pod("x/a").unwrap().clone();
    let (code, pod) = get(&state, "/api/v1/namespaces/x/pods/a");
    assert_eq!(code, 200, "{pod}");
    assert_eq!(pod["metadata"]["labels"], serde_json::json!({"pod": "a"}));
    assert_eq!(pod["spec"]["nodeName"], "n1");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["podIP"], rec.ip.to_string());
    assert!(
        pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{pod}"
    );
    let ports: Vec<(String, String, i64, String)> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["ports"].as_array().unwrap().iter().map(move |p| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    p["name"].as_str().unwrap().to_string(),
                    p["containerPort"].as_i64().unwrap(),
                    p["protocol"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    let want: Vec<(String, String, i64, String)> =
        [(80, "tcp"), (80, "udp"), (81, "tcp"), (81, "udp")]
            .iter()
            .map(|(p, proto)| {
                (
                    format!("cont-{p}-{proto}"),
                    format!("serve-{p}-{proto}"),
                    *p,
                    proto.to_uppercase(),
                )
            })
            .collect();
    assert_eq!(ports, want);

    // Probes: across nodes (x/a on n1 -> x/b on n2) and on one node (x/a -> y/a, both n1).
    for to in ["x/b", "y/a"] {
        for t in SERVED {
            let out = lab.expect(0, &["probe", "x/a", to, &t.to_string()]);
            let word = if t.proto == Proto::Tcp {
                "connected"
            } else {
                "answered"
            };
            assert!(
                out.contains(&format!("x/a -> {to} {t}")) && out.contains(word),
                "{out}"
            );
            assert!(
                state.probe("y/b", to, t, Duration::from_secs(1)).unwrap(),
                "y/b -> {to} {t}"
            );
        }
    }
    // Nothing serves port 82: not connected, within the timeout.
    for t in ["82/TCP", "82/udp"] {
        let start = Instant::now();
        let out = lab.expect(1, &["probe", "x/a", "y/b", t, "--timeout", "1"]);
        assert!(
            out.contains("not connected") || out.contains("no answer"),
            "{out}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{t} took {:?}",
            start.elapsed()
        );
    }
    // Usage errors.
    lab.expect(2, &["probe", "x/a", "y/b", "80"]);
    lab.expect(2, &["probe", "x/a", "nope/b", "80/TCP"]);

    // The matrix: 4 pods, 12 ordered pairs, 4 port/protocols, all allowed.
    let out = lab.expect(0, &["netpol-matrix"]);
    for t in SERVED {
        assert!(
            out.contains(&format!("{t}:\n-\tx/a\tx/b\ty/a\ty/b\n")),
            "{out}"
        );
    }
    assert!(out.contains("x/a\t-\t.\t.\t.\n"), "{out}");
    assert!(
        out.contains("48 probes, 48 connected, 0 not (all allowed)"),
        "{out}"
    );
    let observed = state.netpol_matrix(Duration::from_secs(1), 16);
    assert!(observed.is_full(), "{}", observed.pretty());
    let ids: Vec<String> = pods.iter().map(|(p, _)| p.to_string()).collect();
    let all = Reachability::expected(&ids, &SERVED, |_, _, _| true);
    let cmp = observed.compare(&all);
    assert!(cmp.ok(), "{}", cmp.summary());
    assert_eq!(cmp.summary(), "correct:48, incorrect:0, result=true");
    // And a comparison that must fail: nothing allowed into x/b.
    let deny_b = Reachability::expected(&ids, &SERVED, |_, to, _| to != "x/b");
    assert_eq!(observed.compare(&deny_b).mismatches.len(), 12);

    // Labels: set and remove, on the Pod object and in the record.
    lab.expect(0, &["pod", "label", "x/a", "pod-", "role=web"]);
    let (_, pod) = get(&state, "/api/v1/namespaces/x/pods/a");
    assert_eq!(
        pod["metadata"]["labels"],
        serde_json::json!({"role": "web"})
    );
    let labels = lab.state().find_pod("x/a").unwrap().labels.clone();
    assert_eq!(
        labels.iter().collect::<Vec<_>>(),
        [(&"role".to_string(), &"web".to_string())]
    );
    lab.expect(2, &["pod", "label", "x/a", "bad label"]);

    // exec: NS/NAME and the old forms.
    let out = lab.expect(
        0,
        &["exec", "x/a", "--", "ip", "-br", "addr", "show", "eth0"],
    );
    assert!(out.contains(&rec.ip.to_string()), "{out}");
    lab.expect(0, &["exec", "n1-p1", "--", "true"]);
    lab.expect(0, &["exec", "n1", "--", "true"]);

    // apply/delete -f of Namespaces, from a file and from stdin.
    let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: z\n  labels: {team: blue}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n";
    let file = lab.dir.path().join("ns.yaml");
    std::fs::write(&file, yaml).unwrap();
    let f = file.to_str().unwrap();
    let out = lab.expect(0, &["apply", "-f", f]);
    assert_eq!(out, "namespace/z created\nnamespace/x unchanged\n");
    let (_, z) = get(&state, "/api/v1/namespaces/z");
    assert_eq!(z["metadata"]["labels"]["team"], "blue");
    let out = lab.expect_in(
        0,
        &["apply", "-f", "-"],
        Some(yaml.replace("blue", "red").as_bytes()),
    );
    assert_eq!(out, "namespace/z configured\nnamespace/x unchanged\n");
    let (_, z) = get(&state, "/api/v1/namespaces/z");
    assert_eq!(z["metadata"]["labels"]["team"], "red");
    let only_z = yaml.split("---").next().unwrap();
    assert_eq!(
        lab.expect_in(0, &["delete", "-f", "-"], Some(only_z.as_bytes())),
        "namespace \"z\" deleted\n"
    );
    assert_eq!(get(&state, "/api/v1/namespaces/z").0, 404);
    let out = lab.expect_in(1, &["delete", "-f", "-"], Some(only_z.as_bytes()));
    assert!(
        out.contains("Error from server (NotFound): namespaces \"z\" not found"),
        "{out}"
    );
    let bad = "apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
    let out = lab.expect_in(2, &["apply", "-f", "-"], Some(bad.as_bytes()));
    assert!(out.contains("document 2 (kind \"Deployment\")"), "{out}");
    assert_eq!(
        get(&state, "/api/v1/namespaces/q").0,
        404,
        "nothing is applied"
    );

    // apply/delete -f of NetworkPolicies (networking.k8s.io/v1), without and with policyTypes
    // (the API defaults them; re-applying is still `unchanged`).
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-a\n  namespace: x\nspec:\n  podSelector:\n    matchLabels: {pod: a}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-y, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {kubernetes.io/metadata.name: x}\n      podSelector:\n        matchExpressions: [{key: pod, operator: In, values: [a, b]}]\n    ports: [{port: serve-80-tcp}, {protocol: UDP, port: 81, endPort: 90}]\n";
    let np_path = "/apis/networking.k8s.io/v1/namespaces";
    let out = lab.expect_in(0, &["apply", "-f", "-"], Some(np.as_bytes()));
    assert_eq!(
        out,
        "networkpolicy.networking.k8s.io/deny-a created\nnetworkpolicy.networking.k8s.io/allow-y created\n"
    );
    let (code, p) = get(&state, &format!("{np_path}/x/networkpolicies/deny-a"));
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["spec"]["podSelector"]["matchLabels"]["pod"], "a");
    let (_, p) = get(&state, &format!("{np_path}/y/networkpolicies/allow-y"));
    assert_eq!(p["spec"]["ingress"][0]["ports"][0]["port"], "serve-80-tcp");
    assert_eq!(p["spec"]["ingress"][0]["ports"][1]["endPort"], 90);
    let out = lab.expect_in(0, &["apply", "-f", "-"], Some(np.as_bytes()));
    assert_eq!(
        out,
        "networkpolicy.networking.k8s.io/deny-a unchanged\nnetworkpolicy.networking.k8s.io/allow-y unchanged\n"
    );
    let changed = np.replace("{pod: a}", "{pod: b}");
    let out = lab.expect_in(0, &["apply", "-f", "-"], Some(changed.as_bytes()));
    assert!(
        out.starts_with("networkpolicy.networking.k8s.io/deny-a configured\n"),
        "{out}"
    );
    let (_, p) = get(&state, &format!("{np_path}/x/networkpolicies/deny-a"));
    assert_eq!(p["spec"]["podSelector"]["matchLabels"]["pod"], "b");
    let out = lab.expect_in(0, &["delete", "-f", "-"], Some(np.as_bytes()));
    assert_eq!(
        out,
        "networkpolicy.networking.k8s.io \"deny-a\" deleted\nnetworkpolicy.networking.k8s.io \"allow-y\" deleted\n"
    );
    assert_eq!(
        get(&state, &format!("{np_path}/x/networkpolicies/deny-a")).0,
        404
    );
    assert_eq!(
        get(&state, &format!("{np_path}/y/networkpolicies/allow-y")).0,
        404
    );

    // pod delete: servers stopped, CNI DEL, namespace and Pod object gone, record gone.
    let before = lab.state();
    let gone = before.find_pod("x/b").unwrap().clone();
    let server = before
        .processes
        .iter()
        .find(|p| p.role == "serve x/b")
        .expect("x/b's servers recorded")
        .clone();
    assert!(server.is_running());
    assert_eq!(
        lab.expect(0, &["pod", "delete", "x/b"]),
        "pod \"x/b\" deleted\n"
    );
    assert!(!server.is_running(), "x/b's servers survived");
    assert!(!netns_exists(&gone.netns));
    assert_eq!(get(&state, "/api/v1/namespaces/x/pods/b").0, 404);
    let after = lab.state();
    assert!(after.find_pod("x/b").is_none());
    assert!(after.processes.iter().all(|p| p.role != "serve x/b"));
    lab.expect(2, &["probe", "x/a", "x/b", "80/TCP"]);
    let node = after.nodes.iter().find(|n| n.name == "n2").unwrap();
    let reserved = flannel_lab::cni::list_dir(&node.dir.join("ipam").join("cbr0"));
    assert!(!reserved.contains(&gone.ip.to_string()), "{reserved:?}");
    let out = lab.expect(0, &["netpol-matrix"]);
    assert!(
        out.contains("3 pods, 4 port/protocols: 24 probes, 24 connected"),
        "{out}"
    );

    // down: nothing left.
    let last = lab.state();
    lab.expect(0, &["down"]);
    for p in &last.pods {
        assert!(!netns_exists(&p.netns), "{} survived", p.netns);
    }
    assert!(netns_with_prefix(&format!("{}-", last.stem)).is_empty());
    for p in &last.processes {
        assert!(
            !p.is_running(),
            "{} (pid {}) survived `down`",
            p.role,
            p.pid
        );
    }
}
