//! Real kubectl (v1.34, installed by scripts/setup) against a lab in Kubernetes mode, through
//! the library: the lab registers its nodes and pods as a kubelet would, so kubectl shows the
//! nodes with their podCIDRs (the subnets flanneld took), Ready, with their underlay address,
//! and the lab's pods Running with their IPs on their nodes; a watch sees a pod the lab adds
//! and deletes; a label goes through kubectl and back.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flannel_lab::{Cluster, ClusterSpec, Datastore, check, describe, kubectl, run_command};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `kubectl ARGS` in the lab's underlay namespace; requires success and returns stdout (the
/// error carries kubectl's stderr).
fn kubectl_ok(c: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let cmd = kubectl::command(c.lab().underlay().netns().name(), c.lab().dir(), args)?;
    let out = check(describe(&cmd), run_command(cmd, None, TIMEOUT)?)?;
    Ok(String::from_utf8(out.stdout)?)
}

fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// A `kubectl get -w` running in the background; killed and reaped on drop.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(c: &Cluster, args: &[&str]) -> Watch {
        let mut cmd =
            kubectl::command(c.lab().underlay().netns().name(), c.lab().dir(), args).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// Reads rows until one starts with `prefix` (bounded); returns the rows read.
    fn until(&self, prefix: &[&str]) -> Vec<Vec<String>> {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no row starting {prefix:?} within {TIMEOUT:?}: {seen:?}")
            });
            let row: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            let done = row.len() >= prefix.len() && row[..prefix.len()] == *prefix;
            seen.push(row);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kubectl_sees_the_lab_as_a_kubeadm_cluster() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterSpec {
        datastore: Datastore::Kube,
        nodes: 2,
        ..ClusterSpec::default()
    })?;
    let p1 = c.add_pod(0, "n1-p1")?;
    let p2 = c.add_pod(1, "n2-p1")?;

    // Nodes: the podCIDRs kubeadm's allocator gave them, which flanneld took as its subnets.
    let cidrs = kubectl_ok(
        &c,
        &[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.podCIDR}{"\n"}{end}"#,
        ],
    )?;
    assert_eq!(cidrs, "n1\t10.244.0.0/24\nn2\t10.244.1.0/24\n");
    for i in 0..2 {
        let subnet = c.subnet_env(i)?.subnet.expect("an IPv4 subnet");
        assert_eq!(subnet.trunc().to_string(), format!("10.244.{i}.0/24"));
    }
    let nodes = rows(&kubectl_ok(&c, &["get", "nodes", "-o", "wide"])?);
    assert_eq!(
        nodes[0][..6],
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    );
    for (i, row) in nodes[1..].iter().enumerate() {
        assert_eq!(row[0], format!("n{}", i + 1));
        assert_eq!(row[1], "Ready", "{nodes:?}");
        assert_eq!(row[4], flannel_lab::kube::KUBELET_VERSION);
        assert_eq!(row[5], c.lab().node(i).ip().to_string());
        assert!(row.last().unwrap().starts_with("flannel-lab://"), "{row:?}");
    }

    // Pods: the lab's, Running, with their IPs, on their nodes.
    let pods = rows(&kubectl_ok(&c, &["get", "pods", "-A", "-o", "wide"])?);
    assert_eq!(
        pods[0][..8].join(" "),
        "NAMESPACE NAME READY STATUS RESTARTS AGE IP NODE"
    );
    assert_eq!(pods.len(), 3, "{pods:?}");
    for (row, (name, ip, node)) in pods[1..]
        .iter()
        .zip([("n1-p1", p1, "n1"), ("n2-p1", p2, "n2")])
    {
        assert_eq!(
            row[..5],
            ["default", name, "1/1", "Running", "0"],
            "{pods:?}"
        );
        assert_eq!(row[6..8], [ip.to_string(), node.to_string()], "{pods:?}");
    }
    let ns = kubectl_ok(&c, &["get", "ns", "-o", "name"])?;
    assert!(
        ns.contains("namespace/default\n") && ns.contains("namespace/kube-flannel\n"),
        "{ns}"
    );

    // A watch sees the pod the lab adds start Running, then go.
    let watch = Watch::start(&c, &["get", "pods", "-w", "--output-watch-events"]);
    watch.until(&["ADDED", "n2-p1"]);
    let p3 = c.add_pod(1, "n2-p2")?;
    watch.until(&["MODIFIED", "n2-p2", "1/1", "Running"]);
    let wide = rows(&kubectl_ok(
        &c,
        &["get", "pod", "n2-p2", "-o", "wide", "--no-headers"],
    )?);
    assert_eq!(wide[0][5..7], [p3.to_string(), "n2".to_string()]);
    c.del_pod("n2-p2")?;
    watch.until(&["DELETED", "n2-p2"]);
    drop(watch);

    // A label written with kubectl is on the Node object, and goes again.
    assert_eq!(
        kubectl_ok(&c, &["label", "node", "n2", "flannel-rs/lab=yes"])?,
        "node/n2 labeled\n"
    );
    let kube = c.kube().expect("kube mode");
    assert_eq!(
        kube.node("n2")?["metadata"]["labels"]["flannel-rs/lab"],
        "yes"
    );
    assert_eq!(
        kubectl_ok(&c, &["get", "nodes", "-l", "flannel-rs/lab", "-o", "name"])?,
        "node/n2\n"
    );
    assert_eq!(
        kubectl_ok(&c, &["label", "node", "n2", "flannel-rs/lab-"])?,
        "node/n2 unlabeled\n"
    );
    assert!(
        kube.node("n2")?["metadata"]["labels"]
            .get("flannel-rs/lab")
            .is_none()
    );
    // flanneld's annotations stayed through both patches.
    let annotations = &kube.node("n2")?["metadata"]["annotations"];
    assert!(
        annotations["flannel.alpha.coreos.com/public-ip"].is_string(),
        "{annotations}"
    );
    Ok(())
}
