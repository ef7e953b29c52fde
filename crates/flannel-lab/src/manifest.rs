//! The kube-flannel manifest as a kubelet sees it: the DaemonSet `kube-flannel-ds` (its init
//! containers, its flanneld container, their volumes) and the ConfigMap `kube-flannel-cfg`.
//!
//! The lab runs the DaemonSet from the image ([`crate::daemonset`]) with the commands, args,
//! environment, mounts and capabilities written in `deploy/kube-flannel.yml`, not with a copy of
//! them, so what the lab exercises is what a cluster would run. Objects are found by kind and
//! name and containers by name (`install-cni-plugin`, `install-cni`, `kube-flannel`), never by
//! position in the file, so a regenerated manifest (the Helm chart's rendering) reads the same.
//!
//! YAML is read with `yaml-rust2` (pure Rust, MIT/Apache-2.0, maintained, two small crates) and
//! turned into `serde_json::Value`, which the rest of the lab already speaks; the subset of the
//! Kubernetes types the lab needs is then deserialised from that with serde. Fields the lab does
//! not act on (resources, liveness probes, tolerations) are ignored; an environment variable
//! from a source the lab cannot provide (a Secret, a resource field) is refused rather than
//! silently dropped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{LabError, Result};

/// The DaemonSet's name in upstream's manifest and chart.
pub const DAEMONSET: &str = "kube-flannel-ds";

/// The ConfigMap holding `cni-conf.json` and `net-conf.json`.
pub const CONFIGMAP: &str = "kube-flannel-cfg";

/// The init container that copies the CNI plugin onto the host (`cniBinDir`).
pub const INSTALL_CNI_PLUGIN: &str = "install-cni-plugin";

/// The init container that installs the conflist (`cniConfDir`).
pub const INSTALL_CNI: &str = "install-cni";

/// The flanneld container.
pub const KUBE_FLANNEL: &str = "kube-flannel";

/// The repository's manifest, compiled in so `flannel-lab` runs the manifest it was built with
/// from anywhere; `--manifest` reads another one (a `helm template` rendering, say).
pub const REPO_MANIFEST: &str = include_str!("../../../deploy/kube-flannel.yml");

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("not valid YAML")]
    Yaml(#[source] yaml_rust2::ScanError),
    /// A YAML construct with no JSON equivalent (a non-scalar mapping key).
    #[error("{0}")]
    Unsupported(String),
    /// An object the lab needs is missing.
    #[error("no {kind} named {name:?}")]
    Missing {
        /// `DaemonSet`, `ConfigMap`, container, volume.
        kind: &'static str,
        /// The name looked for.
        name: String,
    },
    /// An object does not have the shape of its Kubernetes type.
    #[error("{what} is not a valid {kind}")]
    Shape {
        /// The object.
        what: String,
        /// The Kubernetes type it should be.
        kind: &'static str,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// A `hostPath` or `configMap` volume of the pod template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// The name containers mount it by.
    pub name: String,
    /// A directory or file of the node.
    pub host_path: Option<HostPath>,
    /// A ConfigMap's keys as files.
    pub config_map: Option<ConfigMapRef>,
}

/// `hostPath`: a path on the node, and what the kubelet does when it is missing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HostPath {
    /// The node's path.
    pub path: String,
    /// `""`, `DirectoryOrCreate`, `FileOrCreate`, `Directory`, `File`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// `configMap`: which ConfigMap a volume shows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConfigMapRef {
    /// The ConfigMap's name.
    pub name: String,
}

/// A container of the pod template: what the kubelet hands the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Its name (`install-cni-plugin`, `install-cni`, `kube-flannel`).
    pub name: String,
    /// The image the manifest names (the lab runs its own image instead, see
    /// [`crate::daemonset`]).
    #[serde(default)]
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's CMD.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables, literal or from the pod's fields.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Volumes and where they appear.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// Named ports (the probes refer to them).
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// Capabilities and privilege.
    pub security_context: Option<SecurityContext>,
    /// What decides readiness.
    pub readiness_probe: Option<Probe>,
}

/// One `env` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// The variable.
    pub name: String,
    /// A literal value.
    pub value: Option<String>,
    /// A value from the pod (or elsewhere, which the lab refuses).
    pub value_from: Option<Value>,
}

/// One `volumeMounts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume's name.
    pub name: String,
    /// Where it appears in the container.
    pub mount_path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// One `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// The name probes use.
    #[serde(default)]
    pub name: String,
    /// The port.
    pub container_port: u16,
}

/// `securityContext`, the parts that become runtime flags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct SecurityContext {
    /// All capabilities and devices.
    pub privileged: bool,
    /// Capabilities added to the runtime's default set.
    pub capabilities: Capabilities,
}

/// `capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct Capabilities {
    /// Added capabilities, without the `CAP_` prefix.
    pub add: Vec<String>,
}

/// A probe; only `httpGet` is acted on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// The HTTP check.
    pub http_get: Option<HttpGet>,
}

/// `httpGet`: a path and a port (a number or a named container port).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HttpGet {
    /// The path, `/` when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// A number or the name of a container port.
    pub port: Value,
}

/// How a container's environment variable gets its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// `value`.
    Literal(String),
    /// `valueFrom.fieldRef.fieldPath` (`metadata.name`, `spec.nodeName`, ...).
    Field(String),
}

impl EnvVar {
    /// The value's source, or an error for sources the lab cannot provide (Secrets, ConfigMap
    /// keys, resource fields).
    pub fn source(&self) -> Result<EnvValue> {
        match (&self.value, &self.value_from) {
            (_, Some(from)) => from
                .pointer("/fieldRef/fieldPath")
                .and_then(Value::as_str)
                .map(|p| EnvValue::Field(p.to_string()))
                .ok_or_else(|| {
                    LabError::Invalid(format!(
                        "environment variable {}: only literal values and fieldRef are supported by the lab, not {from}",
                        self.name
                    ))
                }),
            (Some(v), None) => Ok(EnvValue::Literal(v.clone())),
            (None, None) => Ok(EnvValue::Literal(String::new())),
        }
    }
}

impl Container {
    /// The whole command line: `command` then `args` (upstream's chart puts flanneld's flags
    /// in `command`, its old manifest in `args`).
    pub fn command_line(&self) -> impl Iterator<Item = &String> {
        self.command.iter().chain(&self.args)
    }

    /// The value of flanneld's value flag `name` on the command line (`--name=v`, `-name=v`,
    /// `--name v`), else of its `FLANNELD_<NAME>` variable, as flanneld reads them.
    pub fn flag(&self, name: &str) -> Option<&str> {
        let line: Vec<&String> = self.command_line().collect();
        let given = line.iter().enumerate().find_map(|(i, a)| {
            let bare = a.strip_prefix("--").or_else(|| a.strip_prefix('-'))?;
            match bare.strip_prefix(name)? {
                "" => line.get(i + 1).map(|v| v.as_str()),
                rest => rest.strip_prefix('='),
            }
        });
        let var = format!("FLANNELD_{}", name.to_uppercase().replace(['-', '.'], "_"));
        given.or_else(|| {
            self.env
                .iter()
                .find(|e| e.name == var)
                .and_then(|e| e.value.as_deref())
                .filter(|v| !v.is_empty())
        })
    }

    /// The capabilities `securityContext` adds.
    pub fn cap_add(&self) -> &[String] {
        self.security_context
            .as_ref()
            .map_or(&[], |s| s.capabilities.add.as_slice())
    }

    /// Whether the container is privileged.
    pub fn privileged(&self) -> bool {
        self.security_context.as_ref().is_some_and(|s| s.privileged)
    }

    /// The readiness probe's port and path, a named port resolved through `ports`.
    pub fn readiness_http(&self) -> Option<(u16, String)> {
        let get = self.readiness_probe.as_ref()?.http_get.as_ref()?;
        let port = match &get.port {
            Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
            Value::String(name) => match name.parse::<u16>() {
                Ok(p) => p,
                Err(_) => self.ports.iter().find(|p| &p.name == name)?.container_port,
            },
            _ => return None,
        };
        Some((port, get.path.clone().unwrap_or_else(|| "/".into())))
    }

    /// The mount whose `mountPath` holds `path` (the longest such), and the rest of the path
    /// below it.
    pub fn mount_for<'a>(&'a self, path: &'a str) -> Option<(&'a VolumeMount, &'a str)> {
        self.volume_mounts
            .iter()
            .filter_map(|m| {
                let base = m.mount_path.trim_end_matches('/');
                let rest = path.strip_prefix(base)?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| (m, rest.trim_start_matches('/')))
            })
            .max_by_key(|(m, _)| m.mount_path.trim_end_matches('/').len())
    }
}

/// What the lab takes from the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The DaemonSet's namespace (`kube-flannel`).
    pub namespace: String,
    /// The pod template's labels.
    pub labels: Value,
    /// The pod template's `spec`, as written (for the Pod objects the lab creates).
    pub pod_spec: Value,
    /// The pod template's volumes.
    pub volumes: Vec<Volume>,
    /// Init containers, in order.
    pub init_containers: Vec<Container>,
    /// Containers.
    pub containers: Vec<Container>,
    /// The ConfigMap `kube-flannel-cfg`'s data: file name to content.
    pub config: BTreeMap<String, String>,
    /// The DaemonSet document as written, which the lab creates in its API
    /// (the emulator) with the pod template of [`Manifest::labels`] and
    /// [`Manifest::pod_spec`].
    pub daemonset: Value,
    /// The ConfigMap document as written (created with [`Manifest::config`] as its data).
    pub config_map: Value,
    /// The manifest's Namespace document for [`Manifest::namespace`], if it has one (a `helm
    /// template` rendering has none: the namespace is helm's `--namespace`).
    pub namespace_object: Option<Value>,
}

impl Manifest {
    /// The manifest compiled into the lab ([`REPO_MANIFEST`]).
    pub fn repo() -> Result<Manifest> {
        Self::parse(REPO_MANIFEST).map_err(|source| LabError::Manifest {
            origin: "deploy/kube-flannel.yml".into(),
            source,
        })
    }

    /// Reads a manifest file (`kubectl apply -f` input, `helm template` output).
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text).map_err(|source| LabError::Manifest {
            origin: path.display().to_string(),
            source,
        })
    }

    /// Finds the DaemonSet and the ConfigMap among the documents of `text`.
    pub fn parse(text: &str) -> std::result::Result<Manifest, ManifestError> {
        let docs = yaml_documents(text)?;
        let find = |kind: &'static str, name: &str| {
            docs.iter()
                .find(|d| {
                    d.get("kind").and_then(Value::as_str) == Some(kind)
                        && d.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                })
                .ok_or_else(|| ManifestError::Missing {
                    kind,
                    name: name.to_string(),
                })
        };
        let ds = find("DaemonSet", DAEMONSET)?;
        let cm = find("ConfigMap", CONFIGMAP)?;
        let template = ds.pointer("/spec/template").cloned().unwrap_or_default();
        let pod_spec = template.get("spec").cloned().unwrap_or_default();
        let list = |name: &str| pod_spec.get(name).cloned().unwrap_or(Value::Array(vec![]));
        let volumes: Vec<Volume> = typed("volumes", "[]Volume", list("volumes"))?;
        let init_containers: Vec<Container> =
            typed("initContainers", "[]Container", list("initContainers"))?;
        let containers: Vec<Container> = typed("containers", "[]Container", list("containers"))?;
        let config: BTreeMap<String, String> = typed(
            "ConfigMap data",
            "map[string]string",
            cm.get("data")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
        )?;
        let namespace = ds
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let namespace_object = find("Namespace", &namespace).ok().cloned();
        Ok(Manifest {
            namespace,
            labels: template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or_default(),
            pod_spec,
            volumes,
            init_containers,
            containers,
            config,
            daemonset: ds.clone(),
            config_map: cm.clone(),
            namespace_object,
        })
    }

    /// The init container or container called `name`.
    pub fn container(&self, name: &str) -> std::result::Result<&Container, ManifestError> {
        self.init_containers
            .iter()
            .chain(&self.containers)
            .find(|c| c.name == name)
            .ok_or_else(|| ManifestError::Missing {
                kind: "container",
                name: name.to_string(),
            })
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> std::result::Result<&Volume, ManifestError> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ManifestError::Missing {
                kind: "volume",
                name: name.to_string(),
            })
    }

    /// The node path behind `path` inside container `c`: the hostPath volume mounted there and
    /// the rest of the path, or `None` when `path` is not on a hostPath volume.
    pub fn host_path_of(&self, c: &Container, path: &str) -> Option<String> {
        let (mount, rest) = c.mount_for(path)?;
        let host = self.volume(&mount.name).ok()?.host_path.as_ref()?;
        let base = host.path.trim_end_matches('/');
        Some(if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{rest}")
        })
    }

    /// The node directory the `install-cni-plugin` container copies the plugin to (the chart's
    /// `cniBinDir`): the hostPath of its first volume mount.
    pub fn cni_bin_dir(&self) -> std::result::Result<String, ManifestError> {
        let c = self.container(INSTALL_CNI_PLUGIN)?;
        c.volume_mounts
            .iter()
            .find_map(|m| self.volume(&m.name).ok()?.host_path.as_ref())
            .map(|h| h.path.clone())
            .ok_or_else(|| ManifestError::Missing {
                kind: "hostPath volume of container",
                name: INSTALL_CNI_PLUGIN.into(),
            })
    }

    /// The node directory the `install-cni` container writes the conflist to (the chart's
    /// `cniConfDir`): the hostPath of its mount, or `None` when the DaemonSet has no
    /// `install-cni` (the chart's `skipCNIConfigInstallation`).
    pub fn cni_conf_dir(&self) -> Option<String> {
        let c = self.container(INSTALL_CNI).ok()?;
        c.volume_mounts
            .iter()
            .find_map(|m| self.volume(&m.name).ok()?.host_path.as_ref())
            .map(|h| h.path.clone())
    }
}

/// Deserialises one part of the manifest into its Kubernetes type.
fn typed<T: serde::de::DeserializeOwned>(
    what: &str,
    kind: &'static str,
    v: Value,
) -> std::result::Result<T, ManifestError> {
    serde_json::from_value(v).map_err(|source| ManifestError::Shape {
        what: what.to_string(),
        kind,
        source,
    })
}

/// Every non-empty YAML document of `text`, as JSON values.
pub fn yaml_documents(text: &str) -> std::result::Result<Vec<Value>, ManifestError> {
    let docs = YamlLoader::load_from_str(text).map_err(ManifestError::Yaml)?;
    docs.iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .map(to_json)
        .collect()
}

/// A YAML node as JSON: mappings with scalar keys (as strings), sequences, and the core
/// schema's scalars.
fn to_json(y: &Yaml) -> std::result::Result<Value, ManifestError> {
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Value::String(r.clone()), Value::Number),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => "null".into(),
                    other => {
                        return Err(ManifestError::Unsupported(format!(
                            "mapping key {other:?} is not a scalar"
                        )));
                    }
                };
                m.insert(key, to_json(v)?);
            }
            Value::Object(m)
        }
        // The loader expands aliases itself; these do not come out of it.
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(ManifestError::Unsupported(format!("YAML node {y:?}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterSpec;

    #[test]
    fn the_repository_manifest_reads_by_name() {
        let m = Manifest::repo().unwrap();
        assert_eq!(m.namespace, "kube-flannel");
        assert_eq!(m.labels["app"], "flannel");
        assert_eq!(m.pod_spec["hostNetwork"], true);
        let plugin = m.container(INSTALL_CNI_PLUGIN).unwrap();
        assert_eq!(plugin.command, ["cp"]);
        assert_eq!(plugin.args, ["-f", "/flannel", "/opt/cni/bin/flannel"]);
        let conf = m.container(INSTALL_CNI).unwrap();
        assert_eq!(conf.command, ["/opt/bin/install-conf"]);
        let main = m.container(KUBE_FLANNEL).unwrap();
        let line: Vec<&String> = main.command_line().collect();
        assert_eq!(line[0], "/opt/bin/flanneld");
        assert!(line.contains(&&"--kube-subnet-mgr".to_string()), "{line:?}");
        assert_eq!(main.cap_add(), ["NET_ADMIN", "NET_RAW"]);
        assert!(!main.privileged());
        assert_eq!(main.readiness_http(), Some((8081, "/readyz".to_string())));
        let env: Vec<(&str, EnvValue)> = main
            .env
            .iter()
            .map(|v| (v.name.as_str(), v.source().unwrap()))
            .collect();
        assert!(env.contains(&("POD_NAME", EnvValue::Field("metadata.name".into()))));
        assert!(env.contains(&("EVENT_QUEUE_DEPTH", EnvValue::Literal("5000".into()))));
        assert_eq!(m.cni_bin_dir().unwrap(), "/opt/cni/bin");
        assert_eq!(m.cni_conf_dir().as_deref(), Some("/etc/cni/net.d"));
        assert_eq!(
            m.host_path_of(main, "/run/flannel/subnet.env").as_deref(),
            Some("/run/flannel/subnet.env")
        );
        // The ConfigMap is mounted there, not a hostPath.
        assert_eq!(
            m.host_path_of(main, "/etc/kube-flannel/net-conf.json"),
            None
        );
        assert_eq!(
            m.volume("xtables-lock")
                .unwrap()
                .host_path
                .as_ref()
                .unwrap()
                .kind,
            "FileOrCreate"
        );
        let cni: Value = serde_json::from_str(&m.config["cni-conf.json"]).unwrap();
        assert_eq!(cni["plugins"][0]["type"], "flannel");
        assert!(m.config.contains_key("net-conf.json"));
    }

    #[test]
    fn the_labs_default_network_is_the_manifests() {
        let m = Manifest::repo().unwrap();
        let theirs: Value = serde_json::from_str(&m.config["net-conf.json"]).unwrap();
        let ours = ClusterSpec::default().net_config();
        assert_eq!(theirs["Network"], ours["Network"]);
        assert_eq!(theirs["Backend"], ours["Backend"]);
        // Absent and false are the same to flanneld.
        assert_eq!(
            theirs
                .get("EnableNFTables")
                .cloned()
                .unwrap_or(Value::Bool(false)),
            ours["EnableNFTables"]
        );
    }

    /// A chart-style rendering: other documents around, other host directories, no
    /// `install-cni` (skipCNIConfigInstallation), containers in another order.
    const CHART: &str = r#"
# Source: flannel/templates/config.yaml
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  cni-conf.json: |
    {"name": "cbr0", "plugins": [{"type": "flannel"}]}
  net-conf.json: "{\"Network\": \"10.244.0.0/16\"}"
---
kind: ConfigMap
apiVersion: v1
metadata:
  name: other
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: flannel-system
spec:
  template:
    metadata:
      labels: {app: flannel, tier: node}
    spec:
      containers:
      - name: kube-network-policies
        image: example/netpol:1
      - name: kube-flannel
        image: example/flannel:2
        command: ["/opt/bin/flanneld"]
        args: ["--ip-masq", "--kube-subnet-mgr", "--subnet-file=/run/flannel/x.env"]
        ports: [{containerPort: 9090}]
        readinessProbe: {httpGet: {path: /readyz, port: 9090}}
        env:
        - {name: SECRET, valueFrom: {secretKeyRef: {name: s, key: k}}}
        volumeMounts:
        - {name: run, mountPath: /run/flannel}
      initContainers:
      - name: install-cni-plugin
        image: example/cni:3
        command: [cp]
        args: [-f, /flannel, /usr/libexec/cni/flannel]
        volumeMounts:
        - {name: cni-plugin, mountPath: /usr/libexec/cni}
      volumes:
      - {name: run, hostPath: {path: /run/flannel}}
      - {name: cni-plugin, hostPath: {path: /usr/libexec/cni}}
"#;

    #[test]
    fn a_rendering_is_read_by_structure() {
        let m = Manifest::parse(CHART).unwrap();
        assert_eq!(m.namespace, "flannel-system");
        assert_eq!(m.cni_bin_dir().unwrap(), "/usr/libexec/cni");
        assert_eq!(m.cni_conf_dir(), None);
        let main = m.container(KUBE_FLANNEL).unwrap();
        assert_eq!(main.image, "example/flannel:2");
        assert_eq!(main.readiness_http(), Some((9090, "/readyz".to_string())));
        assert_eq!(
            m.host_path_of(main, "/run/flannel/x.env").as_deref(),
            Some("/run/flannel/x.env")
        );
        assert!(
            main.env[0].source().is_err(),
            "secrets are refused, not dropped"
        );
        assert_eq!(main.flag("subnet-file"), Some("/run/flannel/x.env"));
        assert_eq!(main.flag("iface"), None);
        let mut c = main.clone();
        c.args = vec!["-subnet-file".into(), "/a".into()];
        assert_eq!(c.flag("subnet-file"), Some("/a"));
        c.args.clear();
        c.env = vec![EnvVar {
            name: "FLANNELD_SUBNET_FILE".into(),
            value: Some("/b".into()),
            value_from: None,
        }];
        assert_eq!(c.flag("subnet-file"), Some("/b"));
        assert!(m.container(INSTALL_CNI).is_err());
        assert_eq!(m.config["net-conf.json"], r#"{"Network": "10.244.0.0/16"}"#);
    }

    #[test]
    fn broken_manifests_say_what_is_wrong() {
        assert!(matches!(
            Manifest::parse("a: [1, 2"),
            Err(ManifestError::Yaml(_))
        ));
        assert!(matches!(
            Manifest::parse("kind: ConfigMap\nmetadata: {name: kube-flannel-cfg}\n"),
            Err(ManifestError::Missing {
                kind: "DaemonSet",
                ..
            })
        ));
        let bad = CHART.replace("args: [-f, /flannel, /usr/libexec/cni/flannel]", "args: 7");
        let e = Manifest::parse(&bad).unwrap_err();
        assert!(matches!(e, ManifestError::Shape { .. }), "{e}");
        assert!(matches!(
            yaml_documents("? [a, b]\n: 1\n"),
            Err(ManifestError::Unsupported(_))
        ));
        // Anchors and aliases are expanded by the loader.
        assert_eq!(
            yaml_documents("a: &x 1\nb: *x\n").unwrap()[0],
            serde_json::json!({"a": 1, "b": 1})
        );
    }

    #[test]
    fn yaml_scalars_become_json() {
        let docs = yaml_documents(
            "---\n---\ni: 5\nf: 1.5\nq: \"5000\"\nb: false\nn: ~\nblock: |\n  x\n  y\nlist: [a, 2]\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 1, "empty documents are skipped");
        assert_eq!(
            docs[0],
            serde_json::json!({"i": 5, "f": 1.5, "q": "5000", "b": false, "n": null,
                               "block": "x\ny\n", "list": ["a", 2]})
        );
    }
}
