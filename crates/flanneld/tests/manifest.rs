//! `deploy/kube-flannel.yml` and `deploy/Containerfile`: the manifest is valid against the
//! official Kubernetes schemas (offline, with `kubernetes-validate` from PyPI, installed by
//! scripts/setup), and it carries upstream's command line, env, RBAC, probes, volumes and
//! ConfigMap, with commands that exist in our image. Also `install-conf`, the init container's
//! atomic copy. The manifest is generated from chart/kube-flannel (scripts/render-manifest;
//! chart.rs checks they agree); these tests pin what the default rendering must be.

mod kube_yaml;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use flannel_types::NetConfig;
use kube_yaml::{
    KUBE_VERSIONS, assert_valid, find, repo, require_validator, validate, yaml_documents,
};
use serde_json::{Value, json};

fn manifest_path() -> PathBuf {
    repo().join("deploy/kube-flannel.yml")
}

/// The manifest's documents as JSON.
fn documents() -> Vec<Value> {
    yaml_documents(&manifest_path())
}

#[test]
fn manifest_is_valid_against_the_official_schemas() {
    require_validator();
    let resources = [
        "namespace/kube-flannel",
        "clusterrole/flannel",
        "clusterrolebinding/flannel",
        "serviceaccount/flannel",
        "configmap/kube-flannel-cfg",
        "daemonset/kube-flannel-ds",
    ]
    .map(String::from);
    for version in KUBE_VERSIONS {
        assert_valid(&manifest_path(), version, &resources);
    }
    // The validator really checks: a typo'd field and a wrong type are rejected.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    let text = std::fs::read_to_string(manifest_path()).unwrap();
    for (from, to) in [
        ("hostNetwork: true", "hostNetwrk: true"),
        ("containerPort: 8081", "containerPort: healthz"),
    ] {
        assert!(text.contains(from));
        std::fs::write(&bad, text.replace(from, to)).unwrap();
        assert!(
            !validate(&bad, "1.33.0").status.success(),
            "the validator accepted {to:?}"
        );
    }
}

#[test]
fn rbac_is_upstreams() {
    let docs = documents();
    let ns = find(&docs, "Namespace");
    assert_eq!(ns["metadata"]["name"], "kube-flannel");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let role = find(&docs, "ClusterRole");
    assert_eq!(role["metadata"]["name"], "flannel");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}
        ])
    );
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}])
    );
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["namespace"], "kube-flannel");
}

#[test]
fn configmap_matches_upstream() {
    let docs = documents();
    let cm = find(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "kube-flannel-cfg");
    let cni: Value = serde_json::from_str(cm["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(cni, kube_yaml::upstream_conflist());
    let net = NetConfig::parse(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(net.network.unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(net.backend_type, "vxlan");
    assert!(!net.enable_nftables);
}

#[test]
fn daemonset_args_env_probes_and_volumes() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["name"], "kube-flannel-ds");
    assert_eq!(ds["metadata"]["namespace"], "kube-flannel");
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        json!({"app": "flannel"})
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "flannel");
    // The chart's default tolerations (upstream's Documentation manifest has only NoSchedule).
    assert_eq!(
        pod["tolerations"],
        json!([
            {"operator": "Exists", "effect": "NoExecute"},
            {"operator": "Exists", "effect": "NoSchedule"}
        ])
    );
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"],
        json!([{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}])
    );

    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "install-cni-plugin");
    assert_eq!(inits[0]["command"], json!(["cp"]));
    assert_eq!(
        inits[0]["args"],
        json!(["-f", "/flannel", "/opt/cni/bin/flannel"])
    );
    assert_eq!(inits[1]["name"], "install-cni");
    assert_eq!(inits[1]["command"], json!(["/opt/bin/install-conf"]));
    assert_eq!(
        inits[1]["args"],
        json!([
            "/etc/kube-flannel/cni-conf.json",
            "/etc/cni/net.d/10-flannel.conflist"
        ])
    );

    let c = &pod["containers"][0];
    assert_eq!(c["name"], "kube-flannel");
    // The whole command line is in `command`, as upstream's chart renders it.
    assert_eq!(
        c["command"],
        json!([
            "/opt/bin/flanneld",
            "--ip-masq",
            "--kube-subnet-mgr",
            "--healthz-port=8081"
        ])
    );
    assert!(c.get("args").is_none());
    // Our flanneld accepts exactly these flags with the DaemonSet's environment.
    let opts = kube_yaml::parse_flanneld_args(&docs);
    assert!(opts.kube_subnet_mgr && opts.ip_masq);
    assert_eq!(opts.healthz_port, 8081);
    assert_eq!(
        opts.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );

    assert_eq!(
        c["env"],
        json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "EVENT_QUEUE_DEPTH", "value": "5000"},
            {"name": "CONT_WHEN_CACHE_NOT_READY", "value": "false"}
        ])
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "healthz", "containerPort": 8081, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": "healthz"}, "initialDelaySeconds": 10, "periodSeconds": 30})
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"path": "/readyz", "port": "healthz"}, "initialDelaySeconds": 5, "periodSeconds": 10})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "50Mi"}}),
        "requests only: upstream removed the limits after OOM kills"
    );
    assert_eq!(
        c["securityContext"],
        json!({"privileged": false, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}})
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "run", "mountPath": "/run/flannel"},
            {"name": "flannel-cfg", "mountPath": "/etc/kube-flannel/"},
            {"name": "xtables-lock", "mountPath": "/run/xtables.lock"}
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "run", "hostPath": {"path": "/run/flannel"}},
            {"name": "cni-plugin", "hostPath": {"path": "/opt/cni/bin"}},
            {"name": "cni", "hostPath": {"path": "/etc/cni/net.d"}},
            {"name": "flannel-cfg", "configMap": {"name": "kube-flannel-cfg"}},
            {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}}
        ])
    );
    // Every container runs our image.
    let image = c["image"].as_str().unwrap();
    assert!(inits.iter().all(|i| i["image"] == image));
}

#[test]
fn containerfile_ships_what_the_manifest_runs() {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    let copies: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|l| {
            let mut p = l.split_whitespace();
            (p.next().unwrap().to_string(), p.next().unwrap().to_string())
        })
        .collect();
    for (src, dst) in [
        ("target/dist/flanneld", "/opt/bin/flanneld"),
        ("target/dist/install-conf", "/opt/bin/install-conf"),
        ("target/dist/flannel-netpol", "/opt/bin/flannel-netpol"),
        ("target/dist/flannel-observe", "/opt/bin/flannel-observe"),
        ("target/dist/flannel", "/flannel"),
    ] {
        assert!(
            copies.contains(&(src.to_string(), dst.to_string())),
            "COPY {src} {dst} missing: {copies:?}"
        );
    }
    assert!(text.contains(r#"ENTRYPOINT ["/opt/bin/flanneld"]"#));
    // target/dist is what scripts/build-release fills, the plugin from the static musl build.
    let build = std::fs::read_to_string(repo().join("scripts/build-release")).unwrap();
    for want in [
        "cp \"$target/release/flanneld\" \"$target/release/install-conf\" \"$target/release/flannel-netpol\" \"$target/release/flannel-observe\" \"$target/dist/\"",
        "cp \"$target/$musl/release/flannel\" \"$target/dist/flannel\"",
        "-unknown-linux-musl",
    ] {
        assert!(build.contains(want), "scripts/build-release lacks {want:?}");
    }
    // The sources are binaries this workspace builds.
    let flanneld = std::fs::read_to_string(repo().join("crates/flanneld/Cargo.toml")).unwrap();
    assert!(
        flanneld.contains("name = \"flanneld\"") && flanneld.contains("name = \"install-conf\"")
    );
    let cni = std::fs::read_to_string(repo().join("crates/flannel-cni/Cargo.toml")).unwrap();
    assert!(cni.contains("name = \"flannel\""));
}

#[test]
fn install_conf_copies_atomically() {
    let bin = env!("CARGO_BIN_EXE_install-conf");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cni-conf.json");
    std::fs::write(&src, "{\"name\":\"cbr0\"}\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dest_dir = dir.path().join("net.d");
    std::fs::create_dir(&dest_dir).unwrap();
    let dest = dest_dir.join("10-flannel.conflist");
    std::fs::write(&dest, "old").unwrap();

    let out = Command::new(bin).arg(&src).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "{\"name\":\"cbr0\"}\n"
    );
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let names: Vec<String> = std::fs::read_dir(&dest_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["10-flannel.conflist"], "no temporary file is left");

    let out = Command::new(bin).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: "));
    let out = Command::new(bin)
        .arg(dir.path().join("missing"))
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error installing "));
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "{\"name\":\"cbr0\"}\n"
    );
}

/// The scrape patch points Prometheus at the port and path flanneld really serves metrics on.
#[test]
fn prometheus_scrape_patch_matches_the_daemonset() {
    let docs = documents();
    let args = kube_yaml::flanneld_args(&docs);
    let port = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-port="))
        .expect("--healthz-port in the DaemonSet args");
    let patch = yaml_documents(&repo().join("deploy/prometheus/daemonset-scrape-patch.yaml"));
    let ann = &patch[0]["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], port);
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let job = yaml_documents(&repo().join("deploy/prometheus/scrape-config.yaml"));
    assert_eq!(job[0][0]["job_name"], "flannel");
}
