//! The Helm chart `chart/kube-flannel` with real helm (installed by scripts/setup): it lints, it
//! takes values files written for upstream's chart and renders what upstream's chart renders for
//! them (ConfigMap `kube-flannel-cfg`, DaemonSet `kube-flannel-ds`, RBAC, ServiceAccount), every
//! rendering is valid against the official schemas, flannel-rs parses every rendered
//! net-conf.json and accepts every rendered command line, and `deploy/kube-flannel.yml` is the
//! chart's rendering (scripts/render-manifest).
//!
//! The expectations are upstream's chart (v0.28) read for what it renders, with deliberate
//! differences only where upstream's output is broken: whole numbers of a million or more (helm
//! prints them as `1e+06`, which is not a JSON integer), an unquoted wireguard `Mode` (not JSON),
//! and an empty image tag (upstream renders `repository:`; here the chart's appVersion).

mod kube_yaml;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flannel_types::{IpStack, NetConfig};
use flanneld::backend::udp::UdpConfig;
use flanneld::backend::vxlan::VxlanConfig;
use flanneld::backend::wireguard::config::{Mode, WgConfig};
use flanneld::cli::Options;
use kube_yaml::{
    KUBE_VERSIONS, assert_valid, find, flanneld_args, parse_flanneld_args, pod_spec, repo,
    require_validator, resource_names, upstream_conflist, yaml_documents,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The values file of the issue: how people install Flannel with upstream's chart.
const ISSUE_VALUES: &str = r#"
podCidr: "10.244.0.0/16"
flannel:
  cniBinDir: "/opt/cni/bin"
  cniConfDir: "/etc/cni/net.d"
  args:
  - "--ip-masq"
  - "--kube-subnet-mgr"
  - "--iface=enp0s9"
  backend: "vxlan"
"#;

/// The flannel-rs image every container runs by default.
fn default_image() -> String {
    format!(
        "ghcr.io/flannel-rs/flannel-rs:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

fn chart_dir() -> PathBuf {
    repo().join("chart/kube-flannel")
}

/// Points helm's cache, config and data directories inside `home`, so a test (or the script it
/// runs) writes nothing outside its temporary directory.
fn isolate_helm(mut cmd: Command, home: &Path) -> Command {
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, home.join(sub));
    }
    cmd
}

/// helm, isolated in `home`.
fn helm(home: &Path) -> Command {
    isolate_helm(Command::new("helm"), home)
}

/// Runs `cmd`; a missing helm is a failure with the fix, never a skip.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not be run ({e}); run scripts/setup"))
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The backend settings flanneld's own parser reads from the rendered net-conf.json.
#[derive(Debug)]
enum BackendConfig {
    Vxlan(VxlanConfig),
    Udp(UdpConfig),
    Wireguard(WgConfig),
    /// host-gw has no settings.
    NoParser,
}

/// One `helm template` of the chart with a values file, already validated against the
/// schemas and read by flannel-rs: net-conf.json by `NetConfig` and the backend's parser, the
/// DaemonSet's command line by flanneld's CLI.
struct Rendering {
    docs: Vec<Value>,
    net_text: String,
    net: NetConfig,
    backend: BackendConfig,
    opts: Options,
    _dir: TempDir,
}

impl Rendering {
    fn configmap(&self) -> &Value {
        find(&self.docs, "ConfigMap")
    }

    fn pod(&self) -> &Value {
        pod_spec(&self.docs)
    }

    fn container(&self) -> &Value {
        kube_yaml::flanneld_container(&self.docs)
    }

    fn inits(&self) -> Vec<&Value> {
        self.pod()["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .collect()
    }

    fn args(&self) -> Vec<String> {
        flanneld_args(&self.docs)
    }

    /// net-conf.json as JSON, for exact comparisons.
    fn net_json(&self) -> Value {
        serde_json::from_str(&self.net_text).expect("net-conf.json is JSON")
    }

    fn cni_json(&self) -> Value {
        let text = self.configmap()["data"]["cni-conf.json"].as_str().unwrap();
        serde_json::from_str(text).expect("cni-conf.json is JSON")
    }

    /// The host directories of the `cni-plugin` and `cni` volumes (cniBinDir, cniConfDir).
    fn cni_host_dirs(&self) -> [&Value; 2] {
        ["cni-plugin", "cni"].map(|v| &self.volume(v)["hostPath"]["path"])
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }
}

/// Renders the chart with `values` into the kube-flannel namespace and checks what holds for
/// every rendering.
fn render(values: &str) -> Rendering {
    require_validator();
    let dir = tempfile::tempdir().unwrap();
    let values_path = dir.path().join("values.yaml");
    std::fs::write(&values_path, values).unwrap();
    let out = run(helm(dir.path())
        .args(["template", "flannel"])
        .arg(chart_dir())
        .args(["--namespace", "kube-flannel", "-f"])
        .arg(&values_path));
    let text = assert_ok(&out, &format!("helm template with\n{values}"));
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &text).unwrap();

    let docs = yaml_documents(&rendered);
    let mut names = resource_names(&docs);
    names.sort();
    assert_eq!(
        names,
        [
            "clusterrole/flannel",
            "clusterrolebinding/flannel",
            "configmap/kube-flannel-cfg",
            "daemonset/kube-flannel-ds",
            "serviceaccount/flannel"
        ]
    );
    assert_valid(&rendered, KUBE_VERSIONS[0], &names);

    let cm = find(&docs, "ConfigMap");
    let net_text = cm["data"]["net-conf.json"].as_str().unwrap().to_string();
    let net = NetConfig::parse(&net_text)
        .unwrap_or_else(|e| panic!("flannel-rs rejects net-conf.json {net_text}: {e}"));
    net.ip_stack()
        .unwrap_or_else(|e| panic!("no address family in {net_text}: {e}"));
    let backend = match net.backend_type.as_str() {
        "vxlan" => BackendConfig::Vxlan(
            VxlanConfig::from_net_config(&net).expect("the vxlan backend takes its settings"),
        ),
        "udp" => BackendConfig::Udp(
            UdpConfig::from_net_config(&net).expect("the udp backend takes its settings"),
        ),
        "wireguard" => BackendConfig::Wireguard(
            WgConfig::from_net_config(&net).expect("the wireguard backend takes its settings"),
        ),
        "host-gw" => BackendConfig::NoParser,
        other => panic!("rendered backend type {other:?}"),
    };

    let opts = parse_flanneld_args(&docs);
    // flanneld reads the ConfigMap where the DaemonSet mounts it.
    assert_eq!(
        opts.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );
    let pod = pod_spec(&docs);
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "flannel-cfg", "mountPath": "/etc/kube-flannel/"}))
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "flannel-cfg", "configMap": {"name": "kube-flannel-cfg"}}))
    );
    Rendering {
        docs,
        net_text,
        net,
        backend,
        opts,
        _dir: dir,
    }
}

fn vxlan(r: &Rendering) -> &VxlanConfig {
    match &r.backend {
        BackendConfig::Vxlan(c) => c,
        other => panic!("expected vxlan settings, got {other:?}"),
    }
}

/// net-conf.json laid out as upstream's chart writes it: the top-level lines, then `Backend`
/// with its lines (each `"Key": value`), two-space indents, one key per line.
fn upstream_net_conf(top: &[&str], backend: &[&str]) -> String {
    let mut text = String::from("{\n");
    for line in top {
        text += &format!("  {line},\n");
    }
    text += "  \"Backend\": {\n";
    text += &backend
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join(",\n");
    text + "\n  }\n}\n"
}

/// The default `Network` line.
const NETWORK: &str = r#""Network": "10.244.0.0/16""#;

#[test]
fn chart_lints_clean() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(helm(dir.path()).args(["lint", "--strict"]).arg(chart_dir()));
    let text = assert_ok(&out, "helm lint --strict");
    assert!(
        text.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{text}"
    );
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, ISSUE_VALUES).unwrap();
    let out = run(helm(dir.path())
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .arg("-f")
        .arg(&values));
    assert_ok(&out, "helm lint --strict with the issue's values");
    // lint does fail: a template error is reported.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("templates")).unwrap();
    std::fs::copy(chart_dir().join("Chart.yaml"), broken.join("Chart.yaml")).unwrap();
    std::fs::write(broken.join("templates/x.yaml"), "{{ .Values.a.b }\n").unwrap();
    let out = run(helm(dir.path()).args(["lint", "--strict"]).arg(&broken));
    assert!(
        !out.status.success(),
        "helm lint accepted a broken template"
    );
}

/// Chart name, versions and image tag are the flannel-rs release.
#[test]
fn chart_metadata_is_the_release() {
    let chart = &yaml_documents(&chart_dir().join("Chart.yaml"))[0];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["name"], "flannel");
    assert_eq!(chart["version"], version, "SemVer, for helm lint --strict");
    assert_eq!(chart["appVersion"], format!("v{version}"));
    let values = &yaml_documents(&chart_dir().join("values.yaml"))[0];
    assert_eq!(values["flannel"]["image"]["tag"], chart["appVersion"]);
    assert_eq!(
        values["flannel"]["flannel_cni"]["image"]["tag"],
        chart["appVersion"]
    );
    assert_eq!(values["netpol"]["image"]["tag"], chart["appVersion"]);
}

/// values.yaml has upstream's keys, nesting and defaults; only the images are ours.
#[test]
fn values_are_upstreams_with_our_image() {
    let values = &yaml_documents(&repo().join("chart/kube-flannel/values.yaml"))[0];
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let image = json!({"repository": "ghcr.io/flannel-rs/flannel-rs", "tag": tag});
    assert_eq!(
        *values,
        json!({
            "global": {"imagePullSecrets": null},
            "podCidr": "10.244.0.0/16",
            "podCidrv6": "",
            "flannel": {
                "image": image,
                "flannel_cni": {"image": image},
                "cniBinDir": "/opt/cni/bin",
                "cniConfDir": "/etc/cni/net.d",
                "skipCNIConfigInstallation": false,
                "enableNFTables": false,
                "args": ["--ip-masq", "--kube-subnet-mgr"],
                "backend": "vxlan",
                "cniConf": values["flannel"]["cniConf"],
                "resources": {"requests": {"cpu": "100m", "memory": "50Mi"}},
                "healthz": {
                    "port": 8081,
                    "livenessProbe": {"initialDelaySeconds": 10, "periodSeconds": 30},
                    "readinessProbe": {"initialDelaySeconds": 5, "periodSeconds": 10}
                },
                "tolerations": [
                    {"effect": "NoExecute", "operator": "Exists"},
                    {"effect": "NoSchedule", "operator": "Exists"}
                ],
                "nodeSelector": {}
            },
            "netpol": {
                "enabled": false,
                "args": ["--hostname-override=$(MY_NODE_NAME)", "--v=2"],
                "image": image
            }
        })
    );
    let cni: Value = serde_json::from_str(values["flannel"]["cniConf"].as_str().unwrap()).unwrap();
    assert_eq!(cni, upstream_conflist());
}

/// `deploy/kube-flannel.yml` is scripts/render-manifest's output, byte for byte.
#[test]
fn manifest_is_the_charts_rendering() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("kube-flannel.yml");
    let mut cmd = isolate_helm(
        Command::new(repo().join("scripts/render-manifest")),
        dir.path(),
    );
    assert_ok(&run(cmd.arg(&out_path)), "scripts/render-manifest");
    let rendered = std::fs::read_to_string(&out_path).unwrap();
    let committed = std::fs::read_to_string(repo().join("deploy/kube-flannel.yml")).unwrap();
    assert!(
        rendered == committed,
        "deploy/kube-flannel.yml differs from the chart's rendering: run scripts/render-manifest"
    );
    // The script's own parts: the Namespace first, then the chart's documents.
    let docs = yaml_documents(&out_path);
    assert_eq!(
        docs[0],
        json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": "kube-flannel",
                "labels": {"k8s-app": "flannel", "pod-security.kubernetes.io/enforce": "privileged"}
            }
        })
    );
    let chart_only = render("{}\n");
    assert_eq!(docs[1..], chart_only.docs[..]);
    for version in KUBE_VERSIONS {
        assert_valid(&out_path, version, &resource_names(&docs));
    }
}

#[test]
fn issue_values_render_upstreams_daemonset_and_configmap() {
    let r = render(ISSUE_VALUES);
    assert_eq!(
        r.net_text,
        upstream_net_conf(&[NETWORK], &[r#""Type": "vxlan""#])
    );
    assert_eq!(r.net.network.unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(r.net.ip_stack().unwrap(), IpStack::V4);
    assert!(!r.net.enable_nftables);
    assert_eq!(vxlan(&r).vni, 1);
    assert_eq!(r.cni_json(), upstream_conflist());
    let cm = r.configmap();
    assert_eq!(cm["metadata"]["namespace"], "kube-flannel");
    assert_eq!(
        cm["metadata"]["labels"],
        json!({"tier": "node", "app": "flannel"})
    );

    let ds = find(&r.docs, "DaemonSet");
    assert_eq!(ds["metadata"]["name"], "kube-flannel-ds");
    assert_eq!(ds["metadata"]["namespace"], "kube-flannel");
    assert_eq!(
        ds["metadata"]["labels"],
        json!({"tier": "node", "app": "flannel"})
    );
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        json!({"app": "flannel"})
    );
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"],
        json!({"tier": "node", "app": "flannel"})
    );
    let image = default_image();
    assert_eq!(
        r.container()["command"],
        json!([
            "/opt/bin/flanneld",
            "--ip-masq",
            "--kube-subnet-mgr",
            "--iface=enp0s9",
            "--healthz-port=8081"
        ])
    );
    assert!(r.opts.ip_masq && r.opts.kube_subnet_mgr);
    assert_eq!(r.opts.iface, ["enp0s9"]);
    assert_eq!(r.opts.healthz_port, 8081);
    assert_eq!(r.container()["image"], image);

    let inits = r.inits();
    assert_eq!(inits.len(), 2);
    assert_eq!(
        *inits[0],
        json!({
            "name": "install-cni-plugin",
            "image": image,
            "command": ["cp"],
            "args": ["-f", "/flannel", "/opt/cni/bin/flannel"],
            "volumeMounts": [{"name": "cni-plugin", "mountPath": "/opt/cni/bin"}]
        })
    );
    assert_eq!(
        *inits[1],
        json!({
            "name": "install-cni",
            "image": image,
            "command": ["/opt/bin/install-conf"],
            "args": ["/etc/kube-flannel/cni-conf.json", "/etc/cni/net.d/10-flannel.conflist"],
            "volumeMounts": [
                {"name": "cni", "mountPath": "/etc/cni/net.d"},
                {"name": "flannel-cfg", "mountPath": "/etc/kube-flannel/"}
            ]
        })
    );
    assert_eq!(r.cni_host_dirs(), ["/opt/cni/bin", "/etc/cni/net.d"]);
    let pod = r.pod();
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "flannel");
    assert!(pod.get("nodeSelector").is_none());
    assert!(pod.get("imagePullSecrets").is_none());

    let binding = find(&r.docs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}])
    );
    assert_eq!(
        find(&r.docs, "ServiceAccount")["metadata"],
        json!({"name": "flannel", "namespace": "kube-flannel"})
    );
}

#[test]
fn vxlan_backend_keys() {
    let r = render(
        r#"
flannel:
  backend: vxlan
  backendPort: 4789
  vni: 4096
  GBP: true
  directRouting: true
  mtu: 1450
  macPrefix: "0E-2A"
  # wireguard keys are not vxlan's: left out
  backendPortv6: 51821
  psk: "c2VjcmV0"
  tunnelMode: separate
  keepaliveInterval: 25
"#,
    );
    assert_eq!(
        r.net_text,
        upstream_net_conf(
            &[NETWORK],
            &[
                r#""Port": 4789"#,
                r#""VNI": 4096"#,
                r#""GBP": true"#,
                r#""DirectRouting": true"#,
                r#""MTU": 1450"#,
                r#""MacPrefix": "0E-2A""#,
                r#""Type": "vxlan""#
            ]
        )
    );
    assert_eq!(
        *vxlan(&r),
        VxlanConfig {
            vni: 4096,
            port: 4789,
            gbp: true,
            learning: false,
            mtu: Some(1450),
            direct_routing: true,
        }
    );
    // false and 0 are "unset", as upstream's `if` has it.
    let r = render("flannel:\n  backend: vxlan\n  GBP: false\n  directRouting: false\n  vni: 0\n");
    assert_eq!(r.net_json()["Backend"], json!({"Type": "vxlan"}));
    assert_eq!(vxlan(&r).vni, 1);
}

/// Upstream prints a VNI of a million or more as `1e+06` (helm reads numbers as floats), which
/// Go's decoder rejects; the chart prints the integer.
#[test]
fn vxlan_large_vni_stays_an_integer() {
    let r = render("flannel:\n  vni: 16777215\n  mtu: 9000\n");
    assert!(r.net_text.contains("\"VNI\": 16777215,"), "{}", r.net_text);
    assert_eq!(vxlan(&r).vni, 16_777_215);
    assert_eq!(vxlan(&r).mtu, Some(9000));
    // --set gives helm an integer already: the same text.
    let dir = tempfile::tempdir().unwrap();
    let out = run(helm(dir.path())
        .args(["template", "flannel"])
        .arg(chart_dir())
        .args(["--set", "flannel.vni=16777215,flannel.mtu=9000"]));
    let text = assert_ok(&out, "helm template --set");
    assert!(text.contains("\"VNI\": 16777215,"), "{text}");
}

#[test]
fn host_gw_has_only_its_type() {
    let r = render(
        "flannel:\n  backend: host-gw\n  backendPort: 4789\n  mtu: 1400\n  vni: 2\n  directRouting: true\n",
    );
    assert_eq!(
        r.net_json(),
        json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
    );
    assert_eq!(r.net.backend_type, "host-gw");
    assert!(matches!(r.backend, BackendConfig::NoParser));
}

#[test]
fn udp_backend_port() {
    let r = render("flannel:\n  backend: udp\n  backendPort: 8286\n  mtu: 1400\n  vni: 2\n");
    assert_eq!(
        r.net_json(),
        json!({"Network": "10.244.0.0/16", "Backend": {"Port": 8286, "Type": "udp"}})
    );
    let BackendConfig::Udp(udp) = &r.backend else {
        panic!("expected udp settings, got {:?}", r.backend)
    };
    assert_eq!(udp.port, 8286);
    let r = render("flannel:\n  backend: udp\n");
    assert_eq!(r.net_json()["Backend"], json!({"Type": "udp"}));
    let BackendConfig::Udp(udp) = &r.backend else {
        panic!("expected udp settings, got {:?}", r.backend)
    };
    assert_eq!(udp.port, 8285);
}

#[test]
fn wireguard_backend_keys() {
    let r = render(
        r#"
flannel:
  backend: wireguard
  backendPort: 51820
  backendPortv6: 51821
  psk: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
  mtu: 1420
  tunnelMode: separate
  keepaliveInterval: 25
  # vxlan keys are not wireguard's: left out
  vni: 7
  GBP: true
  directRouting: true
  macPrefix: "0E-2A"
"#,
    );
    assert_eq!(
        r.net_text,
        upstream_net_conf(
            &[NETWORK],
            &[
                r#""ListenPort": 51820"#,
                r#""ListenPortV6": 51821"#,
                r#""PSK": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=""#,
                r#""MTU": 1420"#,
                r#""Mode": "separate""#,
                r#""PersistentKeepaliveInterval": 25"#,
                r#""Type": "wireguard""#
            ]
        )
    );
    assert_eq!(r.net.backend_type, "wireguard");
    let backend = r.net.backend_object().unwrap().unwrap();
    assert_eq!(backend.uint("ListenPort").unwrap(), Some(51820));
    assert_eq!(backend.uint("ListenPortV6").unwrap(), Some(51821));
    assert_eq!(backend.string("Mode").unwrap().as_deref(), Some("separate"));
    assert_eq!(
        backend.uint("PersistentKeepaliveInterval").unwrap(),
        Some(25)
    );
    // flanneld's own parser takes every key as Go does.
    let BackendConfig::Wireguard(wg) = &r.backend else {
        panic!("wireguard parsed: {:?}", r.backend)
    };
    assert_eq!((wg.listen_port, wg.listen_port_v6), (51820, 51821));
    assert_eq!(
        (wg.keepalive, wg.mode, wg.mtu),
        (25, Mode::Separate, Some(1420))
    );
    assert_eq!(
        wg.psk.as_ref().unwrap().to_base64(),
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
    );
    // A values file that quoted Mode itself (upstream leaves it unquoted) renders the same.
    let r = render("flannel:\n  backend: wireguard\n  tunnelMode: '\"auto\"'\n");
    assert_eq!(
        r.net_json()["Backend"],
        json!({"Mode": "auto", "Type": "wireguard"})
    );
}

#[test]
fn nftables_only_when_true() {
    let r = render("flannel:\n  enableNFTables: true\n");
    assert_eq!(
        r.net_text,
        upstream_net_conf(
            &[NETWORK, r#""EnableNFTables": true"#],
            &[r#""Type": "vxlan""#]
        )
    );
    assert!(r.net.enable_nftables);
    let r = render("flannel:\n  enableNFTables: false\n");
    assert!(!r.net_text.contains("EnableNFTables"), "{}", r.net_text);
    assert!(!r.net.enable_nftables);
}

#[test]
fn dual_stack_and_ipv6_only() {
    let r = render("podCidrv6: \"fd00:10:244::/56\"\n");
    assert_eq!(
        r.net_text,
        upstream_net_conf(
            &[
                NETWORK,
                r#""IPv6Network": "fd00:10:244::/56""#,
                r#""EnableIPv6": true"#
            ],
            &[r#""Type": "vxlan""#]
        )
    );
    assert_eq!(r.net.ip_stack().unwrap(), IpStack::Dual);
    assert_eq!(r.net.ipv6_network.unwrap().to_string(), "fd00:10:244::/56");

    let r =
        render("podCidr: \"\"\npodCidrv6: \"fd00:10:244::/56\"\nflannel:\n  backend: host-gw\n");
    assert_eq!(
        r.net_text,
        upstream_net_conf(
            &[
                r#""EnableIPv4": false"#,
                r#""IPv6Network": "fd00:10:244::/56""#,
                r#""EnableIPv6": true"#
            ],
            &[r#""Type": "host-gw""#]
        )
    );
    assert_eq!(r.net.ip_stack().unwrap(), IpStack::V6);
    assert!(r.net.network.is_none());
}

#[test]
fn skip_cni_config_installation_drops_install_cni() {
    let r = render("flannel:\n  skipCNIConfigInstallation: true\n");
    let inits = r.inits();
    assert_eq!(inits.len(), 1);
    assert_eq!(inits[0]["name"], "install-cni-plugin");
    // The volume stays, as upstream's chart renders it.
    assert_eq!(r.cni_host_dirs(), ["/opt/cni/bin", "/etc/cni/net.d"]);
}

#[test]
fn healthz_port_zero_turns_the_server_port_and_probes_off() {
    let r = render("flannel:\n  healthz:\n    port: 0\n");
    assert_eq!(r.args(), ["--ip-masq", "--kube-subnet-mgr"]);
    assert_eq!(r.opts.healthz_port, 0);
    let c = r.container();
    for key in ["ports", "livenessProbe", "readinessProbe"] {
        assert!(c.get(key).is_none(), "{key} rendered with port 0: {c}");
    }

    let r = render(
        r#"
flannel:
  healthz:
    port: 9099
    livenessProbe:
      initialDelaySeconds: 3
      periodSeconds: 7
      failureThreshold: 5
    readinessProbe:
      periodSeconds: 2
"#,
    );
    assert_eq!(r.opts.healthz_port, 9099);
    let c = r.container();
    assert_eq!(
        c["ports"],
        json!([{"name": "healthz", "containerPort": 9099, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"],
        json!({
            "httpGet": {"path": "/healthz", "port": "healthz"},
            "initialDelaySeconds": 3, "periodSeconds": 7, "failureThreshold": 5
        })
    );
    // Helm merges maps: keys not given keep their defaults.
    assert_eq!(
        c["readinessProbe"],
        json!({
            "httpGet": {"path": "/readyz", "port": "healthz"},
            "initialDelaySeconds": 5, "periodSeconds": 2
        })
    );
}

#[test]
fn custom_images() {
    let r = render(
        r#"
flannel:
  image:
    repository: registry.example/flannel/flannel-rs
    tag: v555.44.3
  flannel_cni:
    image:
      repository: registry.example/flannel/flannel-cni-plugin
      tag: v777.66.5
"#,
    );
    let inits = r.inits();
    assert_eq!(
        inits[0]["image"],
        "registry.example/flannel/flannel-cni-plugin:v777.66.5"
    );
    assert_eq!(
        inits[1]["image"],
        "registry.example/flannel/flannel-rs:v555.44.3"
    );
    assert_eq!(
        r.container()["image"],
        "registry.example/flannel/flannel-rs:v555.44.3"
    );
    // An empty tag means the chart's appVersion (upstream would render `repository:`).
    let r =
        render("flannel:\n  image:\n    tag: \"\"\n  flannel_cni:\n    image:\n      tag: \"\"\n");
    assert_eq!(r.container()["image"], default_image());
    assert_eq!(r.inits()[0]["image"], default_image());
}

#[test]
fn pull_secrets_node_selector_tolerations_and_resources() {
    let r = render(
        r#"
global:
  imagePullSecrets:
  - name: a-test-secret
  - name: another-secret
flannel:
  nodeSelector:
    eks.amazonaws.com/compute-type: hybrid
  tolerations:
  - key: node-role.kubernetes.io/control-plane
    operator: Exists
    effect: NoSchedule
  resources:
    requests:
      cpu: 50m
      memory: 64Mi
    limits:
      memory: 256Mi
"#,
    );
    let pod = r.pod();
    assert_eq!(
        pod["imagePullSecrets"],
        json!([{"name": "a-test-secret"}, {"name": "another-secret"}])
    );
    assert_eq!(
        pod["nodeSelector"],
        json!({"eks.amazonaws.com/compute-type": "hybrid"})
    );
    // A list in a values file replaces the default list.
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        r.container()["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
    // Without tolerations, none are rendered.
    let r = render("flannel:\n  tolerations: []\n");
    assert!(r.pod().get("tolerations").is_none());
}

/// cniBinDir and cniConfDir move the host side only: the init containers still write to their
/// own mount points.
#[test]
fn cni_dirs_change_host_paths_only() {
    let r = render(
        "flannel:\n  cniBinDir: /var/lib/rancher/k3s/data/cni\n  cniConfDir: /var/lib/rancher/k3s/agent/etc/cni/net.d\n",
    );
    assert_eq!(
        r.cni_host_dirs(),
        [
            "/var/lib/rancher/k3s/data/cni",
            "/var/lib/rancher/k3s/agent/etc/cni/net.d"
        ]
    );
    let inits = r.inits();
    assert_eq!(
        inits[0]["volumeMounts"],
        json!([{"name": "cni-plugin", "mountPath": "/opt/cni/bin"}])
    );
    assert_eq!(
        inits[1]["args"],
        json!([
            "/etc/kube-flannel/cni-conf.json",
            "/etc/cni/net.d/10-flannel.conflist"
        ])
    );
}

#[test]
fn cni_conf_is_the_values_conflist() {
    let r = render(
        r#"
flannel:
  cniConf: |
    {
      "name": "cbr0",
      "cniVersion": "1.0.0",
      "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": true, "forceAddress": true, "isDefaultGateway": true}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}}
      ]
    }
"#,
    );
    let cni = r.cni_json();
    assert_eq!(cni["cniVersion"], "1.0.0");
    assert_eq!(cni["plugins"][0]["delegate"]["forceAddress"], true);
    assert_eq!(cni["plugins"][2]["type"], "bandwidth");
}

/// The second container of the DaemonSet (upstream's name, env and mounts) and the RBAC rules
/// the enforcer needs, only with `netpol.enabled`.
fn netpol_container(r: &Rendering) -> Option<&Value> {
    r.pod()["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kube-network-policies")
}

fn rbac_rule_for(r: &Rendering, resource: &str) -> Option<Value> {
    find(&r.docs, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| {
            rule["resources"]
                .as_array()
                .unwrap()
                .contains(&json!(resource))
                && rule["verbs"].as_array().unwrap().contains(&json!("watch"))
        })
        .cloned()
}

/// `netpol.enabled` adds flannel-netpol from the flannel-rs image as upstream adds its
/// enforcer: container `kube-network-policies` with the args, `MY_NODE_NAME` from the node
/// name, privileged, `/lib/modules` read-only, and list/watch RBAC on pods, namespaces and
/// networkpolicies. Off (the default), none of it renders.
#[test]
fn netpol_enabled_renders_the_enforcer() {
    let r = render(
        r#"
netpol:
  enabled: true
  args:
  - "--hostname-override=$(MY_NODE_NAME)"
  - "--v=4"
"#,
    );
    let c = netpol_container(&r).expect("the enforcer container");
    assert_eq!(c["image"], default_image());
    assert_eq!(
        c["command"],
        json!([
            "/opt/bin/flannel-netpol",
            "--hostname-override=$(MY_NODE_NAME)",
            "--v=4"
        ])
    );
    assert_eq!(
        c["env"],
        json!([{"name": "MY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": true}])
    );
    assert_eq!(
        r.volume("lib-modules")["hostPath"]["path"],
        json!("/lib/modules")
    );
    for resource in ["pods", "namespaces", "networkpolicies"] {
        assert!(rbac_rule_for(&r, resource).is_some(), "watch {resource}");
    }
    assert_eq!(
        rbac_rule_for(&r, "networkpolicies").unwrap()["apiGroups"],
        json!(["networking.k8s.io"])
    );
    // flanneld's container is unchanged and stays first.
    assert_eq!(r.pod()["containers"][0], *r.container());
    assert_eq!(r.args(), render("{}\n").args());

    let off = render("netpol:\n  enabled: false\n");
    assert!(netpol_container(&off).is_none());
    assert!(rbac_rule_for(&off, "networkpolicies").is_none());
    assert!(rbac_rule_for(&off, "namespaces").is_none());
    assert_eq!(off.docs, render("{}\n").docs);
}

/// A values file written for upstream's chart that pins upstream's kube-network-policies image
/// gets that image's own command (`/bin/netpol`), so it keeps working unchanged.
#[test]
fn netpol_with_upstreams_image_runs_its_command() {
    let r = render(
        r#"
netpol:
  enabled: true
  image:
    repository: registry.k8s.io/networking/kube-network-policies
    tag: v1.0.0
"#,
    );
    let c = netpol_container(&r).unwrap();
    assert_eq!(
        c["image"],
        "registry.k8s.io/networking/kube-network-policies:v1.0.0"
    );
    assert_eq!(
        c["command"],
        json!([
            "/bin/netpol",
            "--hostname-override=$(MY_NODE_NAME)",
            "--v=2"
        ])
    );
}

/// Every key of upstream's values file at once, as a values file written for upstream's chart
/// sets them: each lands where upstream's chart puts it.
#[test]
fn every_upstream_key_at_once() {
    let r = render(
        r#"
global:
  imagePullSecrets:
  - name: "pull"
podCidr: "10.42.0.0/16"
podCidrv6: "fd00:42::/56"
flannel:
  image:
    repository: registry.example/flannel
    tag: v1
  flannel_cni:
    image:
      repository: registry.example/cni
      tag: v2
  cniBinDir: "/opt/cni/bin2"
  cniConfDir: "/etc/cni/net.d2"
  skipCNIConfigInstallation: false
  enableNFTables: true
  args:
  - "--ip-masq"
  - "--kube-subnet-mgr"
  - "--iface-regex=^eth"
  - "--subnet-lease-renew-margin=30"
  backend: "vxlan"
  backendPort: 8472
  mtu: 1500
  vni: 3
  GBP: true
  directRouting: true
  macPrefix: "0E-2B"
  backendPortv6: 51821
  psk: "x"
  tunnelMode: "separate"
  keepaliveInterval: 5
  cniConf: |
    {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel", "delegate": {"isDefaultGateway": true}}]}
  resources:
    requests:
      cpu: 200m
      memory: 100Mi
  healthz:
    port: 8082
    livenessProbe:
      initialDelaySeconds: 11
      periodSeconds: 31
    readinessProbe:
      initialDelaySeconds: 6
      periodSeconds: 11
  tolerations:
  - operator: Exists
  nodeSelector:
    kubernetes.io/arch: amd64
netpol:
  enabled: false
  args: []
  image:
    repository: registry.example/netpol
    tag: v0
"#,
    );
    assert_eq!(
        r.net_json(),
        json!({
            "Network": "10.42.0.0/16",
            "IPv6Network": "fd00:42::/56",
            "EnableIPv6": true,
            "EnableNFTables": true,
            "Backend": {
                "Port": 8472, "VNI": 3, "GBP": true, "DirectRouting": true, "MTU": 1500,
                "MacPrefix": "0E-2B", "Type": "vxlan"
            }
        })
    );
    assert_eq!(r.net.ip_stack().unwrap(), IpStack::Dual);
    assert_eq!(vxlan(&r).port, 8472);
    assert_eq!(
        r.cni_json()["plugins"],
        json!([{"type": "flannel", "delegate": {"isDefaultGateway": true}}])
    );
    assert_eq!(
        r.args(),
        [
            "--ip-masq",
            "--kube-subnet-mgr",
            "--iface-regex=^eth",
            "--subnet-lease-renew-margin=30",
            "--healthz-port=8082"
        ]
    );
    assert_eq!(r.opts.iface_regex, ["^eth"]);
    assert_eq!(r.opts.subnet_lease_renew_margin, 30);
    assert_eq!(r.opts.healthz_port, 8082);
    let pod = r.pod();
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "pull"}]));
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/arch": "amd64"}));
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let inits = r.inits();
    assert_eq!(inits[0]["image"], "registry.example/cni:v2");
    assert_eq!(inits[1]["image"], "registry.example/flannel:v1");
    let c = r.container();
    assert_eq!(c["image"], "registry.example/flannel:v1");
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "200m", "memory": "100Mi"}})
    );
    assert_eq!(c["ports"][0]["containerPort"], 8082);
    assert_eq!(c["livenessProbe"]["initialDelaySeconds"], 11);
    assert_eq!(c["readinessProbe"]["periodSeconds"], 11);
    assert_eq!(r.cni_host_dirs(), ["/opt/cni/bin2", "/etc/cni/net.d2"]);
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
}
