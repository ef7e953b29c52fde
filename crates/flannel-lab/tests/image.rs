//! The flannel-rs image, run as the kube-flannel DaemonSet: on 2 nodes, the init containers
//! install the plugin and the conflist, flanneld runs in a container from the image, and pods
//! created through what was installed reach each other; restarts and crashes of the container,
//! and `flannel-lab up --image` / `down` (also after its podman processes were killed) leave no
//! container and no namespace behind.
//!
//! The image is built once per test run: `scripts/test` runs `scripts/image` and names the tag
//! in `FLANNEL_LAB_IMAGE`; without it, the first test here runs `scripts/image` itself (a no-op
//! build when the release binaries and the base are current) under a test tag.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use flannel_lab::daemonset::{DaemonSet, DaemonSetSpec};
use flannel_lab::manifest::{CONFIGMAP, INSTALL_CNI, INSTALL_CNI_PLUGIN, KUBE_FLANNEL, Manifest};
use flannel_lab::netpol::NETPOL_CONTAINER;
use flannel_lab::state::LabState;
use flannel_lab::{Cluster, ClusterSpec, Datastore, netns_exists, podman, run_command};
use serde_json::Value;

/// The tag `scripts/image` builds when the test runs it itself.
const TEST_TAG: &str = "localhost/flannel-rs:lab-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image under test, built at most once per test binary.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(tag) = std::env::var("FLANNEL_LAB_IMAGE")
            .ok()
            .filter(|t| !t.is_empty())
        {
            return tag;
        }
        let mut cmd = Command::new(repo().join("scripts/image"));
        cmd.arg(TEST_TAG).env_remove("FLANNEL_IMAGE_NO_BUILD");
        let out = run_command(cmd, None, Duration::from_secs(1800)).expect("scripts/image ran");
        assert!(
            out.status.success(),
            "scripts/image {TEST_TAG} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        TEST_TAG.to_string()
    })
}

/// A cluster of `nodes` running `ds`, with the network config of its ConfigMap.
fn spec_with(nodes: usize, ds: DaemonSetSpec) -> ClusterSpec {
    let mut spec = ClusterSpec {
        nodes,
        datastore: Datastore::Kube,
        ready_timeout: Duration::from_secs(60),
        ..ClusterSpec::default()
    };
    ds.adopt_network(&mut spec).unwrap();
    spec.daemonset = Some(ds);
    spec
}

/// The repository's manifest on `nodes` nodes.
fn spec(nodes: usize) -> ClusterSpec {
    spec_with(
        nodes,
        DaemonSetSpec::repo(image()).expect("the repository's manifest reads"),
    )
}

/// A file of the image, read by running `cat` in a container of it.
fn file_in_image(image: &str, path: &str) -> Vec<u8> {
    let mut cmd = podman::command().unwrap();
    cmd.args(["run", "--rm", "--pull", "never", "--network", "none"]);
    for l in podman::ulimits() {
        cmd.args(["--ulimit", &l]);
    }
    cmd.args(["--entrypoint", "cat", image, path]);
    let out = run_command(cmd, None, Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// Pids in namespace `ns` whose command line starts with `argv0`.
fn pids_running(ns: &flannel_lab::Netns, argv0: &str) -> Vec<u32> {
    ns.pids()
        .unwrap()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(argv0.as_bytes()))
        })
        .collect()
}

fn mount_ns(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap()
}

/// Checks that node `i` runs flanneld from the image, in a container, with what the init
/// containers installed.
fn assert_node_runs_the_image(c: &Cluster, ds: &DaemonSet, manifest: &Manifest, i: usize) {
    let node = c.lab().node(i);
    let name = ds.container_name(i, KUBE_FLANNEL);
    let (state, image_id) = podman::inspect(&name).unwrap().expect("flanneld container");
    assert_eq!(state, "running", "{name}");
    assert_eq!(image_id, ds.image_id(), "{name} runs another image");
    for init in [INSTALL_CNI_PLUGIN, INSTALL_CNI] {
        let done = ds.container_name(i, init);
        assert_eq!(podman::inspect(&done).unwrap(), None, "{done} left behind");
    }
    // The daemon in the node's namespace is the image's /opt/bin/flanneld, in a mount namespace
    // of its own, and no flanneld of the workspace runs there.
    let pids = pids_running(node.netns(), "/opt/bin/flanneld");
    assert_eq!(
        pids.len(),
        1,
        "one containerised flanneld in {}",
        node.name()
    );
    assert_ne!(mount_ns(&pids[0].to_string()), mount_ns("self"));
    let ours = c.bin_dir().join("flanneld");
    assert!(pids_running(node.netns(), &ours.to_string_lossy()).is_empty());
    // It found its node through its Pod (POD_NAME/POD_NAMESPACE, no NODE_NAME).
    let log = c.flanneld(i).expect("podman attached").log();
    let node_name = format!("n{}", i + 1);
    assert!(
        log.contains(&format!("on node {node_name}")),
        "flanneld log of {node_name}:\n{log}"
    );
    assert_eq!(ds.pod(i)["spec"]["nodeName"], node_name.as_str());
    let pod_name = ds.pod(i)["metadata"]["name"].as_str().unwrap();
    let stored = c.kube().unwrap().client().request(
        "GET",
        &format!("/api/v1/namespaces/kube-flannel/pods/{pod_name}"),
        "application/json",
        None,
    );
    let stored = stored.unwrap().1;
    assert_eq!(stored["spec"]["nodeName"], node_name.as_str());
    assert_eq!(
        stored["status"]["podIP"],
        node.ip().to_string(),
        "host network"
    );
    // The plugin in the node's cniBinDir is the image's /flannel; the conflist in its
    // cniConfDir is the ConfigMap's cni-conf.json.
    let plugin = ds.cni_bin_dir(i).unwrap().join("flannel");
    assert!(plugin.starts_with(node.dir()), "{}", plugin.display());
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        file_in_image(ds.image(), "/flannel"),
        "{} is not the image's plugin",
        plugin.display()
    );
    let (file, list) = ds.conflist(i).unwrap();
    assert_eq!(file.file_name().unwrap(), "10-flannel.conflist");
    let want: Value = serde_json::from_str(&manifest.config["cni-conf.json"]).unwrap();
    assert_eq!(list, want);
    // subnet.env is where the node's hostPath /run/flannel is.
    assert!(c.subnet_file(i).starts_with(ds.root(i)));
    assert!(c.subnet_env(i).unwrap().subnet.is_some());
}

#[test]
fn daemonset_from_the_image_meshes_two_nodes() {
    let manifest = Manifest::repo().unwrap();
    let mut c = Cluster::start(spec(2)).expect("the DaemonSet runs on 2 nodes");
    for i in 0..2 {
        for k in 1..=2 {
            c.add_pod(i, &format!("n{}-p{k}", i + 1)).unwrap();
        }
    }
    let ds = c.daemonset().expect("image mode");
    let names: Vec<String> = (0..2).map(|i| ds.container_name(i, KUBE_FLANNEL)).collect();
    for i in 0..2 {
        assert_node_runs_the_image(&c, ds, &manifest, i);
        // The flannel plugin kept its state in the node's /var/lib, not the machine's.
        let saved = ds.root(i).join("var/lib/cni/flannel");
        assert_eq!(
            flannel_lab::cni::list_dir(&saved),
            vec![format!("n{}-p1", i + 1), format!("n{}-p2", i + 1)]
        );
    }
    let ok = c.ping_matrix();
    assert_eq!(ok.len(), 12);
    assert!(c.unreachable().is_empty(), "{:?}", c.unreachable());
    // The node annotations flanneld wrote through the API.
    let node = c.kube().unwrap().node("n1").unwrap();
    assert_eq!(
        node["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );

    // SIGTERM reaches flanneld through podman (exit 0); a restart runs only the container.
    let status = c.stop_flanneld(0).unwrap();
    assert!(status.success(), "flanneld stopped with {status}");
    assert_eq!(podman::inspect(&names[0]).unwrap(), None);
    // The kubelet's report: the pod not ready, its container Completed; the DaemonSet 1 ready.
    let ds = c.daemonset().unwrap();
    assert_eq!(ds.object()["status"]["numberReady"], 1);
    assert_eq!(ds.object()["status"]["numberUnavailable"], 1);
    let stopped = &ds.pod(0)["status"]["containerStatuses"][0];
    assert_eq!(stopped["ready"], false);
    assert_eq!(stopped["state"]["terminated"]["reason"], "Completed");
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    // A crash (SIGKILL of the container), then a new container of the same name.
    c.kill_flanneld(1).unwrap();
    let killed = &c.daemonset().unwrap().pod(1)["status"]["containerStatuses"][0];
    assert_eq!(killed["state"]["terminated"]["exitCode"], 137, "{killed}");
    c.start_flanneld(1).unwrap();
    c.wait_ready(1).unwrap();
    // Both running again, each container restarted once, the DaemonSet whole.
    let ds = c.daemonset().unwrap();
    for i in 0..2 {
        let running = &ds.pod(i)["status"]["containerStatuses"][0];
        assert_eq!(
            (&running["ready"], &running["restartCount"]),
            (&true.into(), &1.into())
        );
        assert_eq!(ds.pod(i)["status"]["phase"], "Running");
    }
    assert_eq!(ds.object()["status"]["numberReady"], 2);
    assert_eq!(ds.object()["status"]["numberAvailable"], 2);
    c.wait_mesh().unwrap();
    assert!(c.unreachable().is_empty(), "{:?}", c.unreachable());
    c.del_pod("n1-p1").unwrap();
    assert_eq!(
        flannel_lab::cni::list_dir(&c.daemonset().unwrap().root(0).join("var/lib/cni/flannel")),
        vec!["n1-p2".to_string()]
    );

    let namespaces = c.lab().netns_names();
    drop(c);
    for n in &names {
        assert_eq!(
            podman::inspect(n).unwrap(),
            None,
            "{n} outlived the cluster"
        );
    }
    for n in &namespaces {
        assert!(!netns_exists(n), "{n} outlived the cluster");
    }
}

#[test]
fn the_configmap_the_environment_and_the_host_paths_come_from_the_manifest() {
    // The chart's cniBinDir and cniConfDir change the hostPath volumes' paths only; its backend
    // value changes net-conf.json.
    let mut manifest = Manifest::repo().unwrap();
    for v in &mut manifest.volumes {
        match (v.name.as_str(), &mut v.host_path) {
            ("cni-plugin", Some(h)) => h.path = "/usr/libexec/cni".into(),
            ("cni", Some(h)) => h.path = "/etc/cni/alt.d".into(),
            _ => {}
        }
    }
    let net_conf =
        "{\n  \"Network\": \"10.244.0.0/16\",\n  \"Backend\": {\"Type\": \"host-gw\"}\n}\n";
    manifest
        .config
        .insert("net-conf.json".into(), net_conf.into());
    let ds = DaemonSetSpec {
        image: image().to_string(),
        manifest,
    };
    let mut c = Cluster::start(spec_with(1, ds)).expect("one node");
    c.add_pod(0, "n1-p1").unwrap();
    c.add_pod(0, "n1-p2").unwrap();
    assert!(c.unreachable().is_empty(), "{:?}", c.unreachable());
    let ds = c.daemonset().unwrap();
    let root = ds.root(0);
    assert_eq!(ds.cni_bin_dir(0).unwrap(), root.join("usr/libexec/cni"));
    assert!(root.join("usr/libexec/cni/flannel").is_file());
    assert!(!root.join("opt/cni/bin").exists());
    assert_eq!(
        ds.conflist(0).unwrap().0,
        root.join("etc/cni/alt.d/10-flannel.conflist")
    );
    let name = ds.container_name(0, KUBE_FLANNEL);
    let mut cmd = podman::command().unwrap();
    cmd.args([
        "container",
        "inspect",
        "--format",
        "{{json .Config.Env}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .EffectiveCaps}}",
        &name,
    ]);
    let out = run_command(cmd, None, Duration::from_secs(60)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pod_name = ds.pod(0)["metadata"]["name"].as_str().unwrap().to_string();
    for want in [
        format!("POD_NAME={pod_name}"),
        "POD_NAMESPACE=kube-flannel".into(),
        "EVENT_QUEUE_DEPTH=5000".into(),
        "CONT_WHEN_CACHE_NOT_READY=false".into(),
        "/opt/bin/flanneld".into(),
        "--ip-masq".into(),
        "--kube-subnet-mgr".into(),
        "--healthz-port=8081".into(),
        // In-cluster config, as the kubelet gives every container of the pod.
        "KUBERNETES_SERVICE_HOST=198.18.0.254".into(),
        "KUBERNETES_SERVICE_PORT=".into(),
        "CAP_NET_ADMIN".into(),
        "CAP_NET_RAW".into(),
    ] {
        assert!(text.contains(&want), "{want} missing from {name}: {text}");
    }
    assert!(!text.contains("CAP_SYS_ADMIN"), "not privileged: {text}");
    assert!(
        !text.contains("--kube-api-url"),
        "in-cluster config only: {text}"
    );
    // The ConfigMap volume: the manifest's files as written.
    let cm = c.lab().node(0).dir().join("configmaps").join(CONFIGMAP);
    assert_eq!(
        std::fs::read_to_string(cm.join("cni-conf.json")).unwrap(),
        Manifest::repo().unwrap().config["cni-conf.json"]
    );
    assert_eq!(
        std::fs::read_to_string(cm.join("net-conf.json")).unwrap(),
        net_conf
    );
    assert_eq!(
        c.subnet_env(0).unwrap().mtu,
        1500,
        "host-gw keeps the link MTU"
    );
    assert!(
        c.lab()
            .node(0)
            .netns()
            .ip(["link", "show", "flannel.1"])
            .is_err(),
        "host-gw makes no vxlan device"
    );
}

/// Runs the flannel-lab command with a private state directory.
fn lab_cli(state: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flannel-lab"));
    cmd.arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("CARGO");
    if std::env::var_os("FLANNEL_RS_BIN_DIR").is_none() {
        let dir = Path::new(env!("CARGO_BIN_EXE_flannel-lab"))
            .parent()
            .unwrap();
        cmd.env("FLANNEL_RS_BIN_DIR", dir);
    }
    run_command(cmd, None, Duration::from_secs(300)).unwrap()
}

/// `flannel-lab kubectl -- ARGS` for the lab in `state`; requires success, returns stdout.
fn lab_kubectl(state: &Path, args: &[&str]) -> String {
    let out = lab_cli(state, &[&["kubectl", "--"][..], args].concat());
    assert!(out.status.success(), "kubectl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// kubectl's tables (`get a,b,c` prints one per kind, separated by blank lines), each row a map
/// from its header to its cell. Columns are split where kubectl's padding is (two spaces or
/// more), so headers with a space (`NODE SELECTOR`) stay whole.
fn tables(text: &str) -> Vec<Vec<std::collections::BTreeMap<String, String>>> {
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        let header = split(header);
        let rows = lines
            .map(|l| {
                let cells = split(l);
                assert_eq!(cells.len(), header.len(), "{l:?} under {header:?}");
                header.iter().cloned().zip(cells).collect()
            })
            .collect();
        out.push(rows);
    }
    out
}

/// `labels.FormatLabels` of a label map: `k=v` sorted, `<none>` for none.
fn format_labels(labels: &Value) -> String {
    let mut pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// What `kubectl get ds,pod,cm -n kube-flannel -o wide` shows of a 2-node lab running
/// `manifest`'s DaemonSet, as on a kubeadm cluster with Flannel: the DaemonSet with 2 pods
/// desired, current, ready, up to date and available, the manifest's node selector,
/// container, image and selector; one `Running` pod per node, ready, with the node's IP (host
/// network); the ConfigMap with its 2 files. The pods are the controller's (owned by the
/// DaemonSet, its labels and revision), and the DaemonSet is the manifest's (its command).
fn assert_kubectl_shows_the_daemonset(dir: &Path, state: &LabState, manifest: &Manifest) {
    let text = lab_kubectl(
        dir,
        &["get", "ds,pod,cm", "-n", "kube-flannel", "-o", "wide"],
    );
    println!("{text}");
    let t = tables(&text);
    assert_eq!(t.len(), 3, "{text}");
    let (ds, pods, cms) = (&t[0], &t[1], &t[2]);
    assert_eq!(ds.len(), 1, "{text}");
    let ds = &ds[0];
    assert_eq!(ds["NAME"], "daemonset.apps/kube-flannel-ds");
    for col in ["DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"] {
        assert_eq!(ds[col], "2", "{col}: {text}");
    }
    let template = &manifest.daemonset["spec"]["template"]["spec"];
    assert_eq!(
        ds["NODE SELECTOR"],
        format_labels(&template["nodeSelector"])
    );
    assert_eq!(ds["CONTAINERS"], KUBE_FLANNEL);
    assert_eq!(
        ds["IMAGES"],
        manifest.container(KUBE_FLANNEL).unwrap().image
    );
    assert_eq!(ds["SELECTOR"], "app=flannel");

    assert_eq!(pods.len(), 2, "{text}");
    let mut nodes: Vec<&str> = Vec::new();
    for pod in pods {
        let name = pod["NAME"].strip_prefix("pod/kube-flannel-ds-").unwrap();
        assert!(
            name.len() == 5
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{name}"
        );
        assert_eq!((&*pod["READY"], &*pod["STATUS"]), ("1/1", "Running"));
        let node = state.nodes.iter().find(|n| n.name == pod["NODE"]).unwrap();
        assert_eq!(pod["IP"], node.ip.to_string(), "host network");
        nodes.push(&pod["NODE"]);
    }
    nodes.sort_unstable();
    assert_eq!(nodes, ["n1", "n2"]);
    let cfg = cms
        .iter()
        .find(|r| r["NAME"] == "configmap/kube-flannel-cfg")
        .unwrap_or_else(|| panic!("no ConfigMap: {text}"));
    assert_eq!(cfg["DATA"], "2");

    // The DaemonSet as the manifest wrote it, its status the controller's.
    let command = lab_kubectl(
        dir,
        &[
            "get",
            "ds",
            "kube-flannel-ds",
            "-n",
            "kube-flannel",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command}",
        ],
    );
    let command: Value = serde_json::from_str(&command).unwrap();
    assert_eq!(command, template["containers"][0]["command"]);
    assert_eq!(
        command,
        serde_json::json!(manifest.container(KUBE_FLANNEL).unwrap().command)
    );
    let get_json = |args: &[&str]| -> Value {
        let args = [args, &["-n", "kube-flannel", "-o", "json"]].concat();
        serde_json::from_str(&lab_kubectl(dir, &args)).unwrap()
    };
    let ds = get_json(&["get", "ds", "kube-flannel-ds"]);
    assert_eq!(
        ds["status"]["observedGeneration"],
        ds["metadata"]["generation"]
    );
    assert_eq!(ds["status"]["numberUnavailable"], Value::Null);
    let uid = &ds["metadata"]["uid"];
    for pod in get_json(&["get", "pods"])["items"].as_array().unwrap() {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                &owner["apiVersion"],
                &owner["kind"],
                &owner["controller"],
                &owner["uid"]
            ),
            (&"apps/v1".into(), &"DaemonSet".into(), &true.into(), uid)
        );
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["pod-template-generation"], "1");
        assert!(labels["controller-revision-hash"].is_string());
        for (k, v) in manifest.labels.as_object().unwrap() {
            assert_eq!(&labels[k], v, "template label {k}");
        }
        assert_eq!(pod["spec"]["hostNetwork"], true);
    }
    let cm = get_json(&["get", "cm", CONFIGMAP]);
    assert_eq!(cm["data"], serde_json::json!(manifest.config));
}

/// `down` of a lab left by `up --image` on drop, also when an assertion failed.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = lab_cli(self.0, &["down", "--force"]);
    }
}

#[test]
fn up_with_an_image_and_down_after_its_podman_was_killed() {
    let dir = tempfile::Builder::new()
        .prefix("flrs-labimage-")
        .tempdir()
        .unwrap();
    let state_dir = dir.path();
    let refused = |args: &[&str], hint: &str| {
        let out = lab_cli(state_dir, args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
    };
    refused(&["up", "--image", image()], "add --datastore kube");
    let kube = ["up", "--datastore", "kube", "--image", image()];
    refused(
        &[&kube[..], &["--backend", "host-gw"]].concat(),
        "--manifest",
    );

    let _down = Down(state_dir);
    // --manifest reads a rendering of the chart with other values: the backend and cniBinDir.
    let files = tempfile::Builder::new()
        .prefix("flrs-labimage-")
        .tempdir()
        .unwrap();
    let manifest = files.path().join("kube-flannel.yml");
    let mut helm = Command::new("helm");
    helm.args(["template", "flannel"])
        .arg(repo().join("chart/kube-flannel"))
        .args(["--namespace", "kube-flannel"])
        .args(["--set", "flannel.backend=host-gw"])
        .args(["--set", "flannel.cniBinDir=/usr/libexec/cni"]);
    let out = run_command(helm, None, Duration::from_secs(60))
        .expect("helm runs (scripts/setup installs it)");
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&manifest, &out.stdout).unwrap();
    let up = [
        &kube[..],
        &[
            "--manifest",
            manifest.to_str().unwrap(),
            "--nodes",
            "2",
            "--check",
        ],
    ]
    .concat();
    let out = lab_cli(state_dir, &up);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("12/12 pairs, full"), "{stdout}");
    assert!(stdout.contains("backend host-gw"), "{stdout}");
    let state = LabState::load(state_dir).unwrap().unwrap();
    assert_kubectl_shows_the_daemonset(state_dir, &state, &Manifest::load(&manifest).unwrap());
    let containers = podman::names_with_prefix(&format!("{}-", state.stem)).unwrap();
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert!(containers.iter().all(|n| n.ends_with("-kube-flannel")));
    // The conflist recorded is the one install-cni wrote in the node's cniConfDir; the plugin
    // is in the cniBinDir the values named.
    let conflist = state.nodes[0].conflist.clone().unwrap();
    assert!(conflist.ends_with("host/etc/cni/net.d/10-flannel.conflist"));
    assert!(
        state.nodes[0]
            .dir
            .join("host/usr/libexec/cni/flannel")
            .is_file()
    );

    // A crash of the podman processes leaves the containers running; `down` still finds them.
    for p in state.processes.iter().filter(|p| p.program == "podman") {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let out = lab_cli(state_dir, &["down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 2 containers"),
        "{out:?}"
    );
    assert!(
        podman::names_with_prefix(&format!("{}-", state.stem))
            .unwrap()
            .is_empty()
    );
    for n in state.nodes.iter().map(|n| &n.netns) {
        assert!(!netns_exists(n), "{n} left behind");
    }
}

/// Waits (bounded) until `cond` holds for the cluster, polling.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chart rendered with `netpol.enabled=true` puts flannel-netpol in the DaemonSet's second
/// container: the lab runs it from the image like a kubelet (its `$(MY_NODE_NAME)` expanded)
/// and a deny-all ingress policy then cuts the pods off each other until it is deleted; the
/// image's `flannel-observe` shows the policy's drops.
#[test]
fn the_netpol_container_from_the_image_enforces_policies() {
    let dir = tempfile::Builder::new()
        .prefix("flrs-netpol-image-")
        .tempdir()
        .unwrap();
    let mut helm = Command::new("helm");
    helm.args(["template", "flannel"])
        .arg(repo().join("chart/kube-flannel"))
        .args(["-n", "kube-flannel", "--set", "netpol.enabled=true"])
        .env("HELM_CONFIG_HOME", dir.path().join("helm"))
        .env("HELM_CACHE_HOME", dir.path().join("helm"))
        .env("HELM_DATA_HOME", dir.path().join("helm"));
    let out = run_command(helm, None, Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "helm template: {out:?}");
    let path = dir.path().join("netpol.yml");
    std::fs::write(&path, &out.stdout).unwrap();
    let manifest = Manifest::load(&path).unwrap();
    let ds = DaemonSetSpec {
        image: image().to_string(),
        manifest,
    };
    let mut c = Cluster::start(spec_with(2, ds)).expect("two nodes with the enforcer");
    c.add_pod(0, "n1-p1").unwrap();
    c.add_pod(1, "n2-p1").unwrap();
    assert!(c.unreachable().is_empty(), "{:?}", c.unreachable());

    let ds = c.daemonset().unwrap();
    for i in 0..2 {
        let name = ds.container_name(i, NETPOL_CONTAINER);
        let (state, image_id) = podman::inspect(&name)
            .unwrap()
            .expect("the enforcer's container");
        assert_eq!(state, "running", "{name}");
        assert_eq!(image_id, ds.image_id());
        let mut cmd = podman::command().unwrap();
        cmd.args([
            "container",
            "inspect",
            "--format",
            "{{json .Config.Env}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}",
            &name,
        ]);
        let text = String::from_utf8(
            run_command(cmd, None, Duration::from_secs(60))
                .unwrap()
                .stdout,
        )
        .unwrap();
        for want in [
            "/opt/bin/flannel-netpol".to_string(),
            format!("--hostname-override=n{}", i + 1),
            "--v=2".into(),
            "KUBERNETES_SERVICE_HOST=198.18.0.254".into(),
        ] {
            assert!(text.contains(&want), "{want} missing from {name}: {text}");
        }
    }

    let client = c.kube().unwrap().client().clone();
    let deny = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-ingress"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    });
    let path = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";
    let (status, body) = client
        .request("POST", path, "application/json", Some(&deny))
        .unwrap();
    assert_eq!(status, 201, "{body}");
    wait_until("the deny policy to cut both directions", || {
        c.unreachable().len() == 2
    });
    // The image's flow CLI, run in n1's enforcer container, shows the policy's drops there.
    let enforcer = c.daemonset().unwrap().container_name(0, NETPOL_CONTAINER);
    wait_until("a DROPPED record naming the policy", || {
        let mut cmd = podman::command().unwrap();
        cmd.args(["exec", &enforcer, "/opt/bin/flannel-observe"])
            .args([
                "--node",
                "n1=127.0.0.1:9080",
                "--verdict",
                "DROPPED",
                "-o",
                "json",
            ]);
        let out = run_command(cmd, None, Duration::from_secs(60)).unwrap();
        assert!(
            out.status.success(),
            "flannel-observe in the image: {out:?}"
        );
        let _ = c.unreachable();
        String::from_utf8_lossy(&out.stdout).contains("\"policy\":\"default/deny-ingress\"")
    });
    let (status, body) = client
        .request(
            "DELETE",
            &format!("{path}/deny-ingress"),
            "application/json",
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_until("the pods to reach each other again", || {
        c.unreachable().is_empty()
    });
}
