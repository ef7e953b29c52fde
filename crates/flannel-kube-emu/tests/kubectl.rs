//! Real kubectl (v1.34, installed by scripts/setup) against the emulator, as a user would use it
//! on a kubeadm cluster: discovery, server-side printed tables (`-o wide`), jsonpath, label and
//! annotate (strategic merge patches), a watch that sees a pod come and go, delete with its
//! wait, namespaces, `apply` of the kube-flannel DaemonSet and ConfigMap and `get ds,pod,cm -o
//! wide` of them, and the documented limits (protobuf bodies, OpenAPI validation).

use std::process::Output;
use std::time::Duration;

use flannel_kube_emu::strategy::INITIAL_NAMESPACES;
use flannel_kube_emu::{EmuConfig, Emulator, Kind, PatchType, Server, Subresource};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// Longest one kubectl invocation may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Brings `lo` up in the test's fresh namespace (it starts down).
async fn loopback_up() {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
}

/// kubectl with a kubeconfig and cache of its own (a temp dir removed on drop).
struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &str) -> Kubectl {
        let dir = tempfile::Builder::new()
            .prefix("flrs-kubectl-")
            .tempdir()
            .unwrap();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster:\n    server: {server}\ncontexts:\n- name: emu\n  context:\n    cluster: emu\n    user: admin\ncurrent-context: emu\nusers:\n- name: admin\n  user: {{}}\n"
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        Kubectl { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", self.dir.path().join("config"))
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run_with(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .spawn()
            .expect("kubectl runs (scripts/setup)");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {KUBECTL_TIMEOUT:?}"))
            .unwrap()
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, "").await
    }

    /// `kubectl apply -f -` of `manifest` (no OpenAPI to validate against); requires success
    /// and returns stdout.
    async fn apply(&self, manifest: &str) -> String {
        let out = self
            .run_with(&["apply", "-f", "-", "--validate=false"], manifest)
            .await;
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The whitespace-separated columns of each line (kubectl's table output).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The next line kubectl prints, as columns (bounded wait).
async fn next_row(lines: &mut Lines<BufReader<ChildStdout>>) -> Vec<String> {
    let line = tokio::time::timeout(KUBECTL_TIMEOUT, lines.next_line())
        .await
        .expect("kubectl printed a line in time")
        .unwrap()
        .expect("kubectl is still watching");
    line.split_whitespace().map(str::to_string).collect()
}

/// The emulator on the fresh namespace's loopback, populated, and kubectl for it.
async fn start() -> (Emulator, Server, Kubectl) {
    loopback_up().await;
    let emu = Emulator::new(EmuConfig::default());
    let server = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    populate(&emu);
    let k = Kubectl::new(&server.url());
    (emu, server, k)
}

/// A node as a kubelet registers it, and the lab's pods with the status a kubelet reports.
fn populate(emu: &Emulator) {
    for (i, ready) in [(1, "True"), (2, "False")] {
        emu.create_node(json!({
            "metadata": {"name": format!("n{i}"), "labels": {"kubernetes.io/hostname": format!("n{i}")}},
            "spec": {"podCIDR": format!("10.244.{}.0/24", i - 1)},
            "status": {
                "addresses": [{"type": "InternalIP", "address": format!("198.18.0.{i}")}],
                "conditions": [{"type": "Ready", "status": ready}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-flannel-lab", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-test", "containerRuntimeVersion": "flannel-lab://0.1.0"}
            }
        }))
        .unwrap();
    }
    for (ns, name, node, ip) in [
        ("default", "n1-p1", "n1", "10.244.0.2"),
        ("kube-flannel", "kube-flannel-ds-x", "n2", "198.18.0.2"),
    ] {
        add_running_pod(emu, ns, name, node, ip);
    }
}

fn add_running_pod(emu: &Emulator, ns: &str, name: &str, node: &str, ip: &str) {
    emu.create_pod(
        ns,
        json!({"metadata": {"name": name},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}),
    )
    .unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0,
                               "state": {"running": {}}}]}});
    emu.with_store(|s| {
        s.patch(
            Kind::Pod,
            ns,
            name,
            &status,
            PatchType::Strategic,
            Subresource::Status,
        )
    })
    .unwrap();
}

#[test]
fn kubectl_gets_as_from_a_kubeadm_cluster() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (_emu, _server, k) = start().await;

        let cidrs = k
            .ok(&[
                "get",
                "nodes",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.podCIDR}{"\n"}{end}"#,
            ])
            .await;
        assert_eq!(cidrs, "n1\t10.244.0.0/24\nn2\t10.244.1.0/24\n");

        let nodes = table(&k.ok(&["get", "nodes", "-o", "wide"]).await);
        assert_eq!(
            nodes[0].join(" "),
            "NAME STATUS ROLES AGE VERSION INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION CONTAINER-RUNTIME"
        );
        assert_eq!(nodes[1][..3], ["n1", "Ready", "<none>"]);
        assert_eq!(
            nodes[1][4..].join(" "),
            "v1.33.0-flannel-lab 198.18.0.1 <none> Debian GNU/Linux 12 (bookworm) 6.1.0-test flannel-lab://0.1.0"
        );
        assert_eq!(nodes[2][1], "NotReady");

        let pods = table(&k.ok(&["get", "pods", "-A", "-o", "wide"]).await);
        assert_eq!(
            pods[0].join(" "),
            "NAMESPACE NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES"
        );
        assert_eq!(pods.len(), 3, "{pods:?}");
        assert_eq!(pods[1][..5], ["default", "n1-p1", "1/1", "Running", "0"]);
        assert_eq!(pods[1][6..], ["10.244.0.2", "n1", "<none>", "<none>"]);
        assert_eq!(pods[2][..2], ["kube-flannel", "kube-flannel-ds-x"]);
        assert_eq!(pods[2][6..8], ["198.18.0.2", "n2"]);
        // Without -A and -o wide: the namespace of the kubeconfig (default), no wide columns.
        let pods = table(&k.ok(&["get", "po"]).await);
        assert_eq!(pods[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
        assert_eq!(pods.len(), 2);
        let ns = table(&k.ok(&["get", "ns"]).await);
        assert_eq!(ns[0], ["NAME", "STATUS", "AGE"]);
        let names: Vec<&str> = ns[1..].iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, INITIAL_NAMESPACES);
        assert!(ns[1..].iter().all(|r| r[1] == "Active"));
        let kinds = k.ok(&["api-resources", "--no-headers", "-o", "name"]).await;
        assert_eq!(
            kinds,
            "configmaps\nnamespaces\nnodes\npods\nserviceaccounts\ndaemonsets.apps\nselfsubjectreviews.authentication.k8s.io\nselfsubjectaccessreviews.authorization.k8s.io\nnetworkpolicies.networking.k8s.io\nclusterrolebindings.rbac.authorization.k8s.io\nclusterroles.rbac.authorization.k8s.io\nrolebindings.rbac.authorization.k8s.io\nroles.rbac.authorization.k8s.io\n"
        );
        let version = k.ok(&["version"]).await;
        assert!(
            version.contains("Server Version: v1.33.0-flannel-kube-emu"),
            "{version}"
        );
    })
}

#[test]
fn kubectl_writes_and_watches() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (emu, _server, k) = start().await;

        // label/annotate: a GET, then a strategic merge patch; the emulator holds the result.
        assert_eq!(
            k.ok(&["label", "node", "n1", "flannel-rs/test=yes"]).await,
            "node/n1 labeled\n"
        );
        assert_eq!(
            k.ok(&["annotate", "no", "n1", "flannel-rs/note=hi"]).await,
            "node/n1 annotated\n"
        );
        let n1 = emu.node("n1").unwrap();
        assert_eq!(n1["metadata"]["labels"]["flannel-rs/test"], "yes");
        assert_eq!(n1["metadata"]["annotations"]["flannel-rs/note"], "hi");
        assert_eq!(
            k.ok(&["get", "nodes", "-l", "flannel-rs/test=yes", "-o", "name"])
                .await,
            "node/n1\n"
        );
        assert_eq!(
            k.ok(&["label", "node", "n1", "flannel-rs/test-"]).await,
            "node/n1 unlabeled\n"
        );
        assert!(
            emu.node("n1").unwrap()["metadata"]["labels"]
                .get("flannel-rs/test")
                .is_none()
        );
        let out = k.run(&["label", "node", "n9", "a=b"]).await;
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(r#"nodes "n9" not found"#));

        // A watch sees a pod come and go.
        let mut watch = k
            .command(&[
                "get",
                "pods",
                "-n",
                "default",
                "-w",
                "--output-watch-events",
            ])
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
        assert_eq!(
            next_row(&mut lines).await,
            ["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        );
        assert_eq!(
            next_row(&mut lines).await[..4],
            ["ADDED", "n1-p1", "1/1", "Running"]
        );
        add_running_pod(&emu, "default", "n2-p1", "n2", "10.244.1.2");
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|r: &Vec<String>| r[..4] == ["MODIFIED", "n2-p1", "1/1", "Running"])
        {
            seen.push(next_row(&mut lines).await);
        }
        assert_eq!(
            seen[0][..4],
            ["ADDED", "n2-p1", "0/1", "Pending"],
            "{seen:?}"
        );

        // delete waits (a watch on metadata.name) until the pod is gone.
        let out = k.ok(&["delete", "pod", "n2-p1"]).await;
        assert_eq!(out, "pod \"n2-p1\" deleted from default namespace\n");
        assert!(emu.get(Kind::Pod, "default", "n2-p1").is_none());
        assert_eq!(next_row(&mut lines).await[..2], ["DELETED", "n2-p1"]);
        watch.kill().await.unwrap();

        // Namespaces from a manifest (OpenAPI is not served: client-side validation is off)...
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";
        let out = k
            .run_with(&["create", "-f", "-", "--validate=false"], ns)
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "namespace/team created\n"
        );
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
        for want in ["pod/web created\n", "pod/web unchanged\n"] {
            let out = k
                .run_with(&["apply", "-f", "-", "--validate=false"], pod)
                .await;
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            table(&k.ok(&["get", "pods", "-n", "team"]).await)[1][..4],
            ["web", "0/1", "Pending", "0"]
        );
        assert_eq!(
            k.ok(&["delete", "ns", "team"]).await,
            "namespace \"team\" deleted\n"
        );
        assert!(emu.get(Kind::Pod, "team", "web").is_none());
        // ... but not from kubectl's generators, whose typed client sends protobuf.
        let out = k.run(&["create", "namespace", "other"]).await;
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("UnsupportedMediaType"));
        let out = k.run(&["delete", "ns", "default"]).await;
        assert!(String::from_utf8_lossy(&out.stderr).contains("this namespace may not be deleted"));
    })
}

/// The DaemonSet and ConfigMap of a kube-flannel manifest, as `kubectl apply -f` sends them.
const FLANNEL_MANIFEST: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  cni-conf.json: "{}"
  net-conf.json: '{"Network": "10.244.0.0/16"}'
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
  labels:
    app: flannel
spec:
  selector:
    matchLabels:
      app: flannel
  template:
    metadata:
      labels:
        app: flannel
        tier: node
    spec:
      hostNetwork: true
      nodeSelector:
        kubernetes.io/os: linux
      containers:
      - name: kube-flannel
        image: ghcr.io/flannel-io/flannel:v0.28.0
        command: ["/opt/bin/flanneld", "--ip-masq", "--kube-subnet-mgr"]
"#;

#[test]
fn kubectl_applies_and_shows_the_daemonset_and_its_configmap() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (emu, _server, k) = start().await;
        assert_eq!(
            k.apply(FLANNEL_MANIFEST).await,
            "configmap/kube-flannel-cfg created\ndaemonset.apps/kube-flannel-ds created\n"
        );
        // The controller's status for the one pod populate() put on n2.
        let status = json!({"status": {"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
            "updatedNumberScheduled": 1, "numberReady": 1, "numberAvailable": 1,
            "observedGeneration": 1}});
        emu.with_store(|s| {
            s.patch(
                Kind::DaemonSet,
                "kube-flannel",
                "kube-flannel-ds",
                &status,
                PatchType::Merge,
                Subresource::Status,
            )
        })
        .unwrap();

        let rows = table(
            &k.ok(&["get", "ds,pod,cm", "-n", "kube-flannel", "-o", "wide"])
                .await,
        );
        // Three tables, one per kind, separated by blank lines.
        let blocks: Vec<&[Vec<String>]> = rows.split(Vec::is_empty).collect();
        assert_eq!(blocks.len(), 3, "{rows:?}");
        assert_eq!(
            blocks[0][0].join(" "),
            "NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE CONTAINERS IMAGES SELECTOR"
        );
        let ds = &blocks[0][1];
        assert_eq!(
            ds[..6],
            ["daemonset.apps/kube-flannel-ds", "1", "1", "1", "1", "1"]
        );
        assert_eq!(ds[6], "kubernetes.io/os=linux");
        assert_eq!(
            ds[8..],
            [
                "kube-flannel",
                "ghcr.io/flannel-io/flannel:v0.28.0",
                "app=flannel"
            ]
        );
        assert_eq!(
            blocks[1][1][..4],
            ["pod/kube-flannel-ds-x", "1/1", "Running", "0"]
        );
        assert_eq!(blocks[2][0], ["NAME", "DATA", "AGE"]);
        assert_eq!(blocks[2][1][..2], ["configmap/kube-flannel-cfg", "2"]);

        let command = k
            .ok(&[
                "get",
                "ds",
                "kube-flannel-ds",
                "-n",
                "kube-flannel",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].command}",
            ])
            .await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&command).unwrap(),
            json!(["/opt/bin/flanneld", "--ip-masq", "--kube-subnet-mgr"])
        );
        let net_conf = k
            .ok(&[
                "get",
                "cm",
                "kube-flannel-cfg",
                "-n",
                "kube-flannel",
                "-o",
                r#"jsonpath={.data.net-conf\.json}"#,
            ])
            .await;
        assert_eq!(net_conf, r#"{"Network": "10.244.0.0/16"}"#);
        // Applying again changes nothing; a changed image is a new template generation.
        assert_eq!(
            k.apply(FLANNEL_MANIFEST).await,
            "configmap/kube-flannel-cfg unchanged\ndaemonset.apps/kube-flannel-ds unchanged\n"
        );
        let newer = FLANNEL_MANIFEST.replace("v0.28.0", "v0.28.1");
        assert!(
            k.apply(&newer)
                .await
                .contains("daemonset.apps/kube-flannel-ds configured")
        );
        let ds = emu
            .get(Kind::DaemonSet, "kube-flannel", "kube-flannel-ds")
            .unwrap();
        assert_eq!(ds["metadata"]["generation"], 2);
        assert_eq!(
            ds["metadata"]["annotations"]["deprecated.daemonset.template.generation"],
            "2"
        );
        assert_eq!(ds["status"]["numberReady"], 1, "apply keeps the status");
    })
}
