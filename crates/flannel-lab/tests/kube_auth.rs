//! The production-like Kubernetes lab (issue 21), which is the default kube-mode lab: the API
//! emulator serves HTTPS with the lab's CA, authenticates bearer tokens and enforces the RBAC
//! of deploy/kube-flannel.yml; flanneld runs on in-cluster config (the environment variables
//! and the ServiceAccount volume at its standard path, in the node's own mount namespace).
//!
//! One cluster, in order: what flanneld sees; what the API refuses (401, 403, with the API's
//! Status bodies); a token rotated under flanneld with the old one revoked at once (no
//! restart, the next peer arrives as fast as before); a token revoked without a successor
//! (a clear 401, the data plane kept, recovery when a new token appears); RBAC withdrawn and
//! restored (a clear 403, the data plane kept, recovery); and `--kubeconfig-file` with the
//! token file still working.

use std::time::{Duration, Instant};

use flannel_lab::kube_auth::{self, SERVICE_ACCOUNT_RUN_DIR};
use flannel_lab::kube_client::KubeClient;
use flannel_lab::{Cluster, ClusterSpec, Datastore, kubectl, run_command};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(40);

fn spec() -> ClusterSpec {
    ClusterSpec {
        datastore: Datastore::Kube,
        nodes: 2,
        ..ClusterSpec::default()
    }
}

fn client(c: &Cluster) -> KubeClient {
    c.kube().expect("kube mode").client().clone()
}

/// Waits until `f` holds, or fails naming `what` and the flanneld logs.
fn wait_for(c: &Cluster, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        if Instant::now() >= deadline {
            let logs: Vec<String> = (0..2)
                .map(|i| c.flanneld(i).map(|p| p.log_tail(30)).unwrap_or_default())
                .collect();
            panic!("{what} did not happen within {TIMEOUT:?}; flanneld logs: {logs:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has_route(c: &Cluster, i: usize, subnet: &str) -> bool {
    c.lab()
        .node(i)
        .netns()
        .run_ok(["ip", "route", "show", subnet])
        .map(|out| !out.trim().is_empty())
        .unwrap_or(false)
}

/// A Node another flanneld registered: a podCIDR and upstream's vxlan annotations.
fn add_peer(c: &Cluster, name: &str, third_octet: u8) -> String {
    let cidr = format!("10.244.{third_octet}.0/24");
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:42\"}",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": format!("198.18.0.{third_octet}"),
        }},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
    });
    client(c)
        .expect_ok("POST", "/api/v1/nodes", "application/json", Some(&node))
        .expect("creating the peer node");
    cidr
}

/// Makes every flanneld open a new list/watch now: the emulator ends all watches.
fn drop_watches(c: &Cluster) {
    c.kube().unwrap().drop_watches().expect("dropping watches");
}

fn pods_ping(c: &Cluster) {
    let failed: Vec<_> = c.ping_matrix().into_iter().filter(|r| !r.2).collect();
    assert!(
        failed.is_empty(),
        "pods stopped reaching each other: {failed:?}"
    );
}

fn kubectl_out(c: &Cluster, args: &[&str]) -> std::process::Output {
    let cmd = kubectl::command(c.lab().underlay().netns().name(), c.lab().dir(), args).unwrap();
    run_command(cmd, None, TIMEOUT).unwrap()
}

#[test]
fn production_paths_https_tokens_rbac_in_cluster_config() {
    let mut c = Cluster::start(spec()).expect("cluster");
    for i in 0..2 {
        c.add_pod(i, &format!("p{i}")).expect("pod");
    }
    c.wait_mesh().expect("mesh");
    pods_ping(&c);
    let api = client(&c);
    assert!(api.url().starts_with("https://"), "{}", api.url());

    // flanneld runs exactly as under the DaemonSet: no kubeconfig, the in-cluster environment,
    // and the node's own token at the standard path in its mount namespace.
    for i in 0..2 {
        let p = c.flanneld(i).unwrap();
        let pid = p.pid();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains("flanneld"), "{cmdline}");
        assert!(!cmdline.contains("--kubeconfig-file"), "{cmdline}");
        assert!(!cmdline.contains("--kube-api-url"), "{cmdline}");
        let environ =
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
                .replace('\0', "\n");
        let addr = api.addr();
        assert!(
            environ.contains(&format!("KUBERNETES_SERVICE_HOST={}\n", addr.ip())),
            "{environ}"
        );
        assert!(
            environ.contains(&format!("KUBERNETES_SERVICE_PORT={}\n", addr.port())),
            "{environ}"
        );
        let seen =
            std::fs::read_to_string(format!("/proc/{pid}/root{SERVICE_ACCOUNT_RUN_DIR}/token"))
                .expect("the token at the standard path in flanneld's mount namespace");
        let node_dir = c.lab().node(i).dir().to_path_buf();
        let own = std::fs::read_to_string(kube_auth::service_account_dir(&node_dir).join("token"))
            .unwrap();
        assert_eq!(seen, own, "node {i} sees its own token");
        assert!(p.log().contains("Using the inClusterConfig"), "{}", p.log());
        // (/proc/PID/root/var/run would resolve the /var/run symlink against our root.)
        // Nothing of it on the machine itself.
        assert!(!std::path::Path::new("/run/secrets/kubernetes.io").exists());
    }

    // What the API refuses, with the API's Status bodies.
    let (code, body) = api
        .with_token(None)
        .request("GET", "/api/v1/nodes", "application/json", None)
        .unwrap();
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        body,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    let (code, _) = api
        .with_token(Some("not-a-token"))
        .request("GET", "/api/v1/nodes", "application/json", None)
        .unwrap();
    assert_eq!(code, 401);
    let n1_dir = c.lab().node(0).dir().to_path_buf();
    let n1_token =
        std::fs::read_to_string(kube_auth::service_account_dir(&n1_dir).join("token")).unwrap();
    let as_flannel = api.with_token(Some(n1_token.trim()));
    let (code, _) = as_flannel
        .request("GET", "/api/v1/nodes", "application/json", None)
        .unwrap();
    assert_eq!(code, 200, "the ClusterRole allows listing nodes");
    let (code, body) = as_flannel
        .request(
            "GET",
            "/api/v1/namespaces/kube-system/configmaps",
            "application/json",
            None,
        )
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "configmaps is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"kube-system\""
    );
    let (code, body) = as_flannel
        .request(
            "PATCH",
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            Some(&json!({"spec":{"unschedulable":true}})),
        )
        .unwrap();
    assert_eq!(code, 403, "only nodes/status may be patched: {body}");

    // kubectl as the administrator (admin.conf: the CA and the admin token).
    let out = kubectl_out(&c, &["get", "nodes", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "node/n1\nnode/n2\n");

    // Rotation: a new token replaces the file, the old one is revoked at once. flanneld keeps
    // running and its next requests carry the new token: a peer registered after its watch
    // had to be reopened reaches it.
    let n1_pid = c.flanneld(0).unwrap().pid();
    kube_auth::rotate_node_token(&api, &n1_dir).expect("rotating n1's token");
    let (code, _) = as_flannel
        .request("GET", "/api/v1/nodes", "application/json", None)
        .unwrap();
    assert_eq!(code, 401, "the old token is revoked");
    drop_watches(&c);
    let started = Instant::now();
    let cidr = add_peer(&c, "peer-a", 50);
    wait_for(&c, "n1 routing peer-a after its token was rotated", || {
        has_route(&c, 0, &cidr)
    });
    let after_rotation = started.elapsed();
    assert_eq!(c.flanneld(0).unwrap().pid(), n1_pid, "no restart");
    let log = c.flanneld(0).unwrap().log();
    assert!(
        !log.contains("401"),
        "no request failed with the old token: {log}"
    );
    assert!(log.contains("using the new token in"), "{log}");
    assert!(
        after_rotation < Duration::from_secs(5),
        "peer update took {after_rotation:?} after rotation"
    );

    // Revoked with no successor: a clear 401, the data plane stays; a new token heals it.
    let n2_dir = c.lab().node(1).dir().to_path_buf();
    let n2_token =
        std::fs::read_to_string(kube_auth::service_account_dir(&n2_dir).join("token")).unwrap();
    kube_auth::revoke_token(&api, n2_token.trim()).unwrap();
    drop_watches(&c);
    wait_for(&c, "n2 reporting the 401", || {
        c.flanneld(1).unwrap().log().contains(
            "401 Unauthorized: the API server did not accept our credentials to list nodes",
        ) || c.flanneld(1).unwrap().log().contains(
            "401 Unauthorized: the API server did not accept our credentials to watch nodes",
        )
    });
    pods_ping(&c);
    let fresh = kube_auth::request_node_token(&api).unwrap();
    kube_auth::write_service_account(&n2_dir, c.kube().unwrap().credentials().unwrap(), &fresh)
        .unwrap();
    let cidr = add_peer(&c, "peer-b", 51);
    wait_for(&c, "n2 routing peer-b with its new token", || {
        has_route(&c, 1, &cidr)
    });

    // RBAC withdrawn: a clear 403 naming the request and RBAC; the data plane stays; restored,
    // flanneld carries on.
    let binding = api
        .expect_ok(
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/flannel",
            "application/json",
            None,
        )
        .unwrap();
    api.expect_ok(
        "DELETE",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/flannel",
        "application/json",
        None,
    )
    .unwrap();
    drop_watches(&c);
    wait_for(&c, "n1 reporting the 403", || {
        let log = c.flanneld(0).unwrap().log();
        log.contains("403 Forbidden: not allowed to list nodes: nodes is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot list resource \"nodes\" in API group \"\" at the cluster scope; RBAC is the likely cause")
            || log.contains("403 Forbidden: not allowed to watch nodes: nodes is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot watch resource \"nodes\" in API group \"\" at the cluster scope; RBAC is the likely cause")
    });
    pods_ping(&c);
    assert!(c.flanneld(0).unwrap().pid() == n1_pid);
    let mut restored: Value = binding.clone();
    if let Some(m) = restored["metadata"].as_object_mut() {
        m.retain(|k, _| k == "name" || k == "labels" || k == "annotations");
    }
    api.expect_ok(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "application/json",
        Some(&restored),
    )
    .unwrap();
    let cidr = add_peer(&c, "peer-c", 52);
    wait_for(
        &c,
        "n1 and n2 routing peer-c after RBAC was restored",
        || has_route(&c, 0, &cidr) && has_route(&c, 1, &cidr),
    );

    // --kubeconfig-file stays supported: the node's kubeconfig names the same token file.
    c.stop_flanneld(1).unwrap();
    let kubeconfig = format!("--kubeconfig-file={}", n2_dir.join("kubeconfig").display());
    c.start_flanneld_with(1, &[kubeconfig.as_str()]).unwrap();
    c.wait_ready(1).unwrap();
    let log = c.flanneld(1).unwrap().log();
    assert!(!log.contains("Using the inClusterConfig"), "{log}");
    let cidr = add_peer(&c, "peer-d", 53);
    wait_for(&c, "n2 (kubeconfig) routing peer-d", || {
        has_route(&c, 1, &cidr)
    });
    pods_ping(&c);
}
