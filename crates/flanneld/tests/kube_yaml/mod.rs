//! Kubernetes YAML in the tests of `deploy/kube-flannel.yml` (manifest.rs) and of the Helm chart
//! it is generated from (chart.rs): reading the documents, validating them against the official
//! schemas with kubernetes-validate (PyPI, installed by scripts/setup), and checking what the
//! DaemonSet runs against flanneld's own CLI parser.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The Kubernetes versions every rendering is validated against: the oldest the crate's
/// k8s-openapi feature targets and the newest kubernetes-validate knows.
pub const KUBE_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs kubernetes-validate; a missing tool is a failure with the fix, never a skip.
pub fn validate(path: &Path, version: &str) -> Output {
    Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "python3 could not be run ({e}); run scripts/setup, which installs kubernetes-validate"
            )
        })
}

/// Fails with the fix when kubernetes-validate is not installed (never a skip).
pub fn require_validator() {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "kubernetes-validate is not installed: run scripts/setup (it runs `python3 -m pip install kubernetes-validate==1.37.0`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Validates `path` for `version` and checks that each of `resources` (`kind/name`, lower-case
/// kind, as the tool prints them) passed: returns the tool's output for further checks.
pub fn assert_valid(path: &Path, version: &str, resources: &[String]) -> String {
    let out = validate(path, version);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate {version} rejects {}:\n{text}",
        path.display()
    );
    for res in resources {
        assert!(
            text.contains(&format!("passed for resource {res}")),
            "{res} not validated in {}:\n{text}",
            path.display()
        );
    }
    text
}

/// `kind/name` of each document, the way kubernetes-validate names resources.
pub fn resource_names(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap().to_lowercase(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// The conflist upstream ships as cni-conf.json (and the chart's `flannel.cniConf` default):
/// the flannel plugin delegating to bridge with hairpin mode and the default route, then portmap.
pub fn upstream_conflist() -> Value {
    serde_json::json!({
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// The YAML file's documents as JSON, read by PyYAML (a dependency of kubernetes-validate).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading the YAML of {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The only document of `kind`.
pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} in the documents"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    doc
}

/// The DaemonSet's pod spec.
pub fn pod_spec(docs: &[Value]) -> &Value {
    &find(docs, "DaemonSet")["spec"]["template"]["spec"]
}

/// The flanneld container (`containers[0]`, named as upstream's).
pub fn flanneld_container(docs: &[Value]) -> &Value {
    let c = &pod_spec(docs)["containers"][0];
    assert_eq!(c["name"], "kube-flannel");
    c
}

/// flanneld's arguments: the container's `command` after `/opt/bin/flanneld` (upstream's chart
/// puts the whole command line in `command`, with no `args`).
pub fn flanneld_args(docs: &[Value]) -> Vec<String> {
    let c = flanneld_container(docs);
    assert!(
        c.get("args").is_none(),
        "the arguments belong in `command`: {c}"
    );
    let command: Vec<String> = c["command"]
        .as_array()
        .expect("a command list")
        .iter()
        .map(|a| a.as_str().expect("string arguments").to_string())
        .collect();
    assert_eq!(command[0], "/opt/bin/flanneld", "{command:?}");
    command[1..].to_vec()
}

/// flanneld's CLI parse of the DaemonSet's command line, with the container's environment
/// (literal values as given, downward-API values as a kubelet would fill them).
pub fn parse_flanneld_args(docs: &[Value]) -> flanneld::cli::Options {
    let args = flanneld_args(docs);
    let env_list = flanneld_container(docs)["env"].as_array().unwrap().clone();
    let env = move |k: &str| {
        let var = env_list.iter().find(|e| e["name"] == k)?;
        if let Some(v) = var["value"].as_str() {
            return Some(v.to_string());
        }
        match var["valueFrom"]["fieldRef"]["fieldPath"].as_str()? {
            "metadata.name" => Some("kube-flannel-ds-x7k2p".to_string()),
            "metadata.namespace" => Some("kube-flannel".to_string()),
            other => panic!("unexpected fieldRef {other}"),
        }
    };
    flanneld::cli::parse_from(args.clone(), env)
        .unwrap_or_else(|e| panic!("flanneld rejects the DaemonSet's arguments {args:?}: {e}"))
}
