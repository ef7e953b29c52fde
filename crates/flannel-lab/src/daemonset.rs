//! The kube-flannel DaemonSet run from the image, per node, the way a kubelet runs it.
//!
//! For every node of a [`crate::Datastore::Kube`] cluster whose spec names an image
//! ([`crate::ClusterSpec::daemonset`]), the lab does what the DaemonSet controller and the
//! kubelet would, with the manifest's own containers ([`crate::manifest`]):
//!
//! 0. *apply*: the manifest's Namespace, ConfigMap and DaemonSet in the API, as `kubectl apply`
//!    of the manifest leaves them;
//! 1. *schedule*: a Pod object `kube-flannel-ds-xxxxx` in the DaemonSet's namespace, owned by
//!    the DaemonSet and bound to the node (`spec.nodeName`), with the pod template's labels and
//!    spec, host IP = pod IP = the node's address (host network), `Init:0/N` until flanneld is
//!    ready, then `Running` (its status and the DaemonSet's follow flanneld's container, see
//!    [`DaemonSet::report_ready`]); the `fieldRef` environment is resolved from it;
//! 2. *volumes*: every hostPath under the node's root ([`NodeRoot`]), created as its `type`
//!    says (`FileOrCreate` an empty file, a directory otherwise), and the ConfigMap's keys as
//!    files, mounted read-only;
//! 3. the init containers in order (`install-cni-plugin` copies the plugin into the node's
//!    cniBinDir, `install-cni` the conflist into its cniConfDir), each to completion;
//! 4. the flanneld container (`kube-flannel`), left running.
//!
//! Every container runs from the one image given (it carries all three binaries; the
//! manifest's image names are not looked up), with the node's namespace as host network, the
//! manifest's command, args, environment and capabilities, containerd's default capability set
//! and no seccomp profile, as a kubelet gives a pod that asks for none.
//!
//! One thing differs from a cluster, because the lab's API is the in-repo emulator: the
//! flanneld container gets `--kube-api-url=<the emulator>` after the manifest's command line
//! (the emulator speaks plain HTTP and issues no service-account tokens, so the in-cluster
//! config has nothing to use). The ConfigMap's files are the manifest's, so the network config
//! is its `net-conf.json`: the cluster's spec must agree with it (the Node objects' podCIDRs come
//! from the spec), which [`DaemonSetSpec::adopt_network`] arranges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cluster::ClusterSpec;
use crate::daemonset_api;
use crate::daemonset_pod::{self, PodState};
use crate::error::{LabError, Result};
use crate::kube::{KubeEmu, node_name};
use crate::lab::Lab;
use crate::manifest::{
    Container, EnvValue, INSTALL_CNI, INSTALL_CNI_PLUGIN, KUBE_FLANNEL, Manifest,
};
use crate::node_root::NodeRoot;
use crate::podman::{self, Bind, RunSpec};
use crate::process::Child;

/// Capabilities containerd gives every container beyond podman's defaults; added so the
/// containers start with what a kubelet's runtime would give them (the manifest adds to that).
pub const RUNTIME_DEFAULT_CAPS: &[&str] = &["AUDIT_WRITE", "MKNOD", "NET_RAW"];

/// flanneld's default `--subnet-file`, where the CNI plugin reads it.
const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// What to run: the image and the manifest whose DaemonSet it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSetSpec {
    /// The local podman image every container runs from (`scripts/image` builds it).
    pub image: String,
    /// The manifest (the repository's unless `--manifest` names another).
    pub manifest: Manifest,
}

impl DaemonSetSpec {
    /// The repository's manifest run from `image`.
    pub fn repo(image: impl Into<String>) -> Result<DaemonSetSpec> {
        Ok(DaemonSetSpec {
            image: image.into(),
            manifest: Manifest::repo()?,
        })
    }

    /// The ConfigMap's `net-conf.json`.
    pub fn net_conf(&self) -> Result<Value> {
        let text = self.manifest.config.get("net-conf.json").ok_or_else(|| {
            LabError::Invalid(format!(
                "the ConfigMap {} has no net-conf.json",
                crate::manifest::CONFIGMAP
            ))
        })?;
        serde_json::from_str(text)
            .map_err(|e| LabError::Invalid(format!("the ConfigMap's net-conf.json: {e}")))
    }

    /// Sets `spec`'s network (Network, backend type and DirectRouting, EnableNFTables, the
    /// other keys as extra config) to the ConfigMap's `net-conf.json`, which flanneld reads.
    pub fn adopt_network(&self, spec: &mut ClusterSpec) -> Result<()> {
        let mut conf = self.net_conf()?;
        let obj = conf.as_object_mut().ok_or_else(|| {
            LabError::Invalid("the ConfigMap's net-conf.json is not an object".into())
        })?;
        let backend = obj.remove("Backend").unwrap_or_else(|| json!({}));
        spec.network = obj
            .remove("Network")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        spec.nftables = obj.remove("EnableNFTables").and_then(|v| v.as_bool()) == Some(true);
        spec.backend = backend["Type"].as_str().unwrap_or("udp").to_string();
        spec.direct_routing = backend["DirectRouting"].as_bool() == Some(true);
        spec.extra_config = conf;
        Ok(())
    }

    /// Fails unless `spec`'s network config says what the ConfigMap's does, on the keys the lab
    /// acts on (the Node objects' podCIDRs, the backend it waits for).
    pub(crate) fn check_network(&self, spec: &ClusterSpec) -> Result<()> {
        let theirs = self.net_conf()?;
        let ours = spec.net_config();
        let pick = |c: &Value| {
            json!([
                c["Network"],
                c["IPv6Network"],
                c["EnableIPv6"].as_bool().unwrap_or(false),
                c["EnableNFTables"].as_bool().unwrap_or(false),
                c["Backend"]["Type"].as_str().unwrap_or("udp"),
                c["Backend"]["DirectRouting"].as_bool().unwrap_or(false),
            ])
        };
        if pick(&theirs) == pick(&ours) {
            return Ok(());
        }
        Err(LabError::Invalid(format!(
            "the lab's network config {ours} is not the ConfigMap's net-conf.json {theirs}, which flanneld reads from the image; render the manifest with the values wanted (--manifest) instead of changing the lab's"
        )))
    }
}

/// One node's pod of the DaemonSet.
#[derive(Debug)]
struct NodePod {
    /// The Pod object as the emulator stored it.
    pod: Value,
    /// `n1`, ...
    node: String,
    /// The node's namespace: the containers' network, and their names' prefix.
    netns_name: String,
    netns_path: PathBuf,
    root: NodeRoot,
    /// The ConfigMap volume's files.
    config_dir: PathBuf,
    /// Where the logs of the init containers go.
    log_dir: PathBuf,
    /// Whether the init containers have run (a container restart does not rerun them).
    initialized: bool,
    /// How often flanneld's container was started (the restart count is one less).
    starts: u32,
    /// What was last reported to the API about the pod.
    reported: PodState,
    /// The flanneld container, removed on drop.
    main: Option<podman::Container>,
    /// The pod's other containers (the NetworkPolicy enforcer), removed on drop.
    sidecars: BTreeMap<String, podman::Container>,
}

/// The DaemonSet's pods on the lab's nodes: containers are removed when it is dropped.
#[derive(Debug)]
pub struct DaemonSet {
    spec: DaemonSetSpec,
    /// The DaemonSet object as the API last stored it.
    object: Value,
    api_url: String,
    /// A production-like API: containers get in-cluster config (this environment and their
    /// node's ServiceAccount volume) instead of `--kube-api-url`.
    in_cluster: Option<[(&'static str, String); 2]>,
    image_id: String,
    pods: Vec<NodePod>,
}

impl DaemonSet {
    /// Schedules a pod on every node of `lab`: creates the Pod objects in `emu` and the nodes'
    /// volumes. Nothing runs yet ([`DaemonSet::start`] does that). Containers left by killed
    /// test runs are removed first.
    pub fn schedule(spec: DaemonSetSpec, lab: &Lab, emu: &KubeEmu) -> Result<DaemonSet> {
        let image_id = podman::image_id(&spec.image)?;
        for name in [INSTALL_CNI_PLUGIN, KUBE_FLANNEL] {
            spec.manifest.container(name).map_err(in_daemonset)?;
        }
        podman::reap_stale()?;
        let object = daemonset_api::apply(emu, &spec.manifest)?;
        let mut pods = Vec::new();
        for (i, node) in lab.nodes().iter().enumerate() {
            let root = NodeRoot::new(node.dir());
            root.prepare()?;
            create_host_paths(&spec.manifest, &root)?;
            let config_dir = node
                .dir()
                .join("configmaps")
                .join(crate::manifest::CONFIGMAP);
            write_files(&config_dir, &spec.manifest.config)?;
            let pod =
                daemonset_pod::register(emu, &spec.manifest, &object, &node_name(i), node.ip())?;
            pods.push(NodePod {
                pod,
                node: node_name(i),
                netns_name: node.netns_name().to_string(),
                netns_path: node.netns_path(),
                root,
                config_dir,
                log_dir: lab.dir().join("logs"),
                initialized: false,
                starts: 0,
                reported: PodState::Initializing,
                main: None,
                sidecars: BTreeMap::new(),
            });
        }
        let mut ds = DaemonSet {
            spec,
            object,
            api_url: emu.url(),
            in_cluster: emu
                .credentials()
                .map(|_| crate::kube::in_cluster_env(emu.client())),
            image_id,
            pods,
        };
        ds.report_status(emu)?;
        Ok(ds)
    }

    /// Reports node `i`'s flanneld ready, as its kubelet does once the readiness probe passes:
    /// the pod `Running` and ready, and the DaemonSet's status counting it. Nothing is sent when
    /// that was already reported.
    pub fn report_ready(&mut self, i: usize, emu: &KubeEmu) -> Result<()> {
        let restarts = self.pods[i].starts.saturating_sub(1);
        self.report(i, emu, PodState::Running { restarts })
    }

    /// Reports node `i`'s flanneld container ended with `exit_code` (the pod not ready, the
    /// container terminated), and the DaemonSet's status without it.
    pub fn report_stopped(&mut self, i: usize, emu: &KubeEmu, exit_code: i32) -> Result<()> {
        let restarts = self.pods[i].starts.saturating_sub(1);
        self.report(
            i,
            emu,
            PodState::Stopped {
                restarts,
                exit_code,
            },
        )
    }

    fn report(&mut self, i: usize, emu: &KubeEmu, state: PodState) -> Result<()> {
        if self.pods[i].reported == state {
            return Ok(());
        }
        let now = crate::kube::now_rfc3339();
        self.pods[i].pod =
            daemonset_pod::report(emu, &self.spec.manifest, &self.pods[i].pod, state, &now)?;
        self.pods[i].reported = state;
        self.report_status(emu)
    }

    /// The DaemonSet controller's status from the pods, written to the API.
    fn report_status(&mut self, emu: &KubeEmu) -> Result<()> {
        let pods: Vec<&Value> = self.pods.iter().map(|p| &p.pod).collect();
        let status = daemonset_api::status_of(&self.object, &pods, self.pods.len());
        self.object = daemonset_api::report_status(emu, &self.object, status)?;
        Ok(())
    }

    /// Runs node `i`'s init containers (the first time) and starts its flanneld container,
    /// with `extra_args` after the manifest's args and `extra_env` after its environment; the
    /// returned process is podman attached to the container (it ends when the container does,
    /// and SIGTERM to it reaches flanneld).
    pub fn start(
        &mut self,
        i: usize,
        lab: &Lab,
        extra_args: &[&str],
        extra_env: &BTreeMap<&str, &str>,
    ) -> Result<Child> {
        if !self.pods[i].initialized {
            for c in &self.spec.manifest.init_containers {
                let run = self.run_spec(i, c, &[], &BTreeMap::new())?;
                let out = podman::run_to_completion(&run)
                    .map_err(|e| init_failed(&run.name, &self.pods[i].node, e))?;
                let log = self.pods[i].log_dir.join(format!("{}.log", run.name));
                std::fs::write(&log, out)
                    .map_err(|e| LabError::io(format!("writing {}", log.display()), e))?;
            }
            self.pods[i].initialized = true;
        }
        self.pods[i].starts += 1;
        let main = self
            .spec
            .manifest
            .container(KUBE_FLANNEL)
            .map_err(in_daemonset)?;
        let mut args = self.api_args();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.run_spec(i, main, &args, extra_env)?;
        // A container of that name left by a killed podman would refuse the new one; the old
        // guard goes now, before it names the new container.
        match self.pods[i].main.take() {
            Some(old) => old.remove()?,
            None => podman::remove(std::slice::from_ref(&run.name))?,
        }
        // podman runs in the machine's namespaces, as a node's runtime runs outside its pods:
        // inside the node's, runc would take it for the host network and refuse podman's
        // default sysctls, and `ip netns exec` would hide the cgroup mounts.
        let log = self.pods[i].log_dir.join(format!("{}.log", run.name));
        let child = Child::spawn_host(run.command()?, log, lab.persistence().is_some())?;
        self.pods[i].main = Some(podman::Container::new(run.name));
        Ok(child)
    }

    /// Whether the pod template has container `name` besides flanneld's (the chart renders
    /// `kube-network-policies` with `netpol.enabled`).
    pub fn has_container(&self, name: &str) -> bool {
        self.spec.manifest.containers.iter().any(|c| c.name == name)
    }

    /// Starts node `i`'s container `name` (after [`DaemonSet::start`] ran the init
    /// containers) as a kubelet runs a pod's further containers, with `--kube-api-url` added as
    /// for flanneld; the returned process is podman attached to it.
    pub fn start_container(&mut self, i: usize, lab: &Lab, name: &str) -> Result<Child> {
        let c = self
            .spec
            .manifest
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| LabError::Invalid(format!("the DaemonSet has no container {name:?}")))?;
        let api = self.api_args();
        let api: Vec<&str> = api.iter().map(String::as_str).collect();
        let run = self.run_spec(i, c, &api, &BTreeMap::new())?;
        match self.pods[i].sidecars.remove(name) {
            Some(old) => old.remove()?,
            None => podman::remove(std::slice::from_ref(&run.name))?,
        }
        let log = self.pods[i].log_dir.join(format!("{}.log", run.name));
        let child = Child::spawn_host(run.command()?, log, lab.persistence().is_some())?;
        self.pods[i]
            .sidecars
            .insert(name.to_string(), podman::Container::new(run.name));
        Ok(child)
    }

    /// How a container finds the API: in-cluster config needs no flag; the plain emulator is
    /// named with `--kube-api-url`.
    fn api_args(&self) -> Vec<String> {
        match self.in_cluster {
            Some(_) => Vec::new(),
            None => vec![format!("--kube-api-url={}", self.api_url)],
        }
    }

    /// The container spec for container `c` of node `i`'s pod.
    fn run_spec(
        &self,
        i: usize,
        c: &Container,
        extra_args: &[&str],
        extra_env: &BTreeMap<&str, &str>,
    ) -> Result<RunSpec> {
        let p = &self.pods[i];
        let mut env = Vec::new();
        for var in &c.env {
            let value = match var.source()? {
                EnvValue::Literal(v) => v,
                EnvValue::Field(path) => daemonset_pod::field_value(&p.pod, &path)?,
            };
            env.push((var.name.clone(), value));
        }
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut binds = Vec::new();
        for m in &c.volume_mounts {
            let v = self
                .spec
                .manifest
                .volume(&m.name)
                .map_err(|source| LabError::Manifest {
                    origin: format!("container {}", c.name),
                    source,
                })?;
            let (source, read_only) = match (&v.host_path, &v.config_map) {
                (Some(h), _) => (p.root.path(&h.path), m.read_only),
                (None, Some(_)) => (p.config_dir.clone(), true),
                (None, None) => {
                    return Err(LabError::Invalid(format!(
                        "volume {} of container {}: only hostPath and configMap volumes are supported by the lab",
                        m.name, c.name
                    )));
                }
            };
            binds.push(Bind {
                source,
                target: m.mount_path.clone(),
                read_only,
            });
        }
        if let Some(vars) = &self.in_cluster {
            // What the kubelet adds to every container of a pod whose ServiceAccount token is
            // mounted (automountServiceAccountToken defaults to true).
            env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
            binds.push(Bind {
                source: p.root.path(crate::kube_auth::SERVICE_ACCOUNT_RUN_DIR),
                target: crate::kube_auth::SERVICE_ACCOUNT_DIR.to_string(),
                read_only: true,
            });
        }
        let mut cap_add: Vec<String> = RUNTIME_DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
        cap_add.extend(c.cap_add().iter().cloned());
        // A kubelet expands `$(VAR)` in command and args from the container's environment
        // (`--hostname-override=$(MY_NODE_NAME)`).
        let expand = |a: &String| expand_env_refs(a, &env);
        let (entrypoint, mut args) = match c.command.split_first() {
            Some((first, rest)) => (Some(expand(first)), rest.iter().map(expand).collect()),
            None => (None, Vec::new()),
        };
        args.extend(c.args.iter().map(expand));
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Ok(RunSpec {
            name: self.container_name(i, &c.name),
            image: self.spec.image.clone(),
            netns: p.netns_path.clone(),
            hostname: p.node.clone(),
            binds,
            env,
            cap_add,
            privileged: c.privileged(),
            // A kubelet gives a pod that asks for no seccomp profile none (Unconfined).
            security_opt: vec!["seccomp=unconfined".into()],
            entrypoint,
            args,
        })
    }

    /// The podman name of container `container` on node `i`: `<node namespace>-<container>`.
    pub fn container_name(&self, i: usize, container: &str) -> String {
        format!("{}-{container}", self.pods[i].netns_name)
    }

    /// The image the containers run from.
    pub fn image(&self) -> &str {
        &self.spec.image
    }

    /// That image's ID, as podman reports it for the containers.
    pub fn image_id(&self) -> &str {
        &self.image_id
    }

    /// The manifest being run.
    pub fn manifest(&self) -> &Manifest {
        &self.spec.manifest
    }

    /// The DaemonSet object as the API last stored it (uid, generation, status).
    pub fn object(&self) -> &Value {
        &self.object
    }

    /// Node `i`'s Pod object, as the API last stored it.
    pub fn pod(&self, i: usize) -> &Value {
        &self.pods[i].pod
    }

    /// Node `i`'s root directory ([`NodeRoot`]).
    pub fn root(&self, i: usize) -> &Path {
        self.pods[i].root.dir()
    }

    /// Where node `i`'s flanneld writes subnet.env: its `--subnet-file` (default
    /// `/run/flannel/subnet.env`) through the container's hostPath mounts.
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        let node_path = self
            .spec
            .manifest
            .container(KUBE_FLANNEL)
            .ok()
            .and_then(|c| {
                let path = c.flag("subnet-file").unwrap_or(DEFAULT_SUBNET_FILE);
                self.spec.manifest.host_path_of(c, path)
            })
            .unwrap_or_else(|| DEFAULT_SUBNET_FILE.to_string());
        self.pods[i].root.path(&node_path)
    }

    /// Node `i`'s cniBinDir, where `install-cni-plugin` put the plugin.
    pub fn cni_bin_dir(&self, i: usize) -> Result<PathBuf> {
        let dir = self.spec.manifest.cni_bin_dir().map_err(in_daemonset)?;
        Ok(self.pods[i].root.path(&dir))
    }

    /// Node `i`'s cniConfDir, where `install-cni` put the conflist (`None` without
    /// `install-cni`).
    pub fn cni_conf_dir(&self, i: usize) -> Option<PathBuf> {
        self.spec
            .manifest
            .cni_conf_dir()
            .map(|d| self.pods[i].root.path(&d))
    }

    /// The network configuration node `i`'s runtime uses, as libcni picks it: the first
    /// `.conflist`, `.conf` or `.json` file in cniConfDir by name, a single-plugin `.conf`
    /// wrapped into a list. Returns the file and its content.
    pub fn conflist(&self, i: usize) -> Result<(PathBuf, Value)> {
        let dir = self.cni_conf_dir(i).ok_or_else(|| {
            LabError::Invalid(format!(
                "the DaemonSet has no {INSTALL_CNI} container, so nothing installs a CNI configuration on the nodes"
            ))
        })?;
        let file = crate::cni::list_dir(&dir)
            .into_iter()
            .find(|n| {
                [".conflist", ".conf", ".json"]
                    .iter()
                    .any(|e| n.ends_with(e))
            })
            .map(|n| dir.join(n))
            .ok_or_else(|| {
                LabError::Invalid(format!("no CNI configuration in {}", dir.display()))
            })?;
        let text = std::fs::read_to_string(&file)
            .map_err(|e| LabError::io(format!("reading {}", file.display()), e))?;
        let conf: Value = serde_json::from_str(&text)
            .map_err(|e| LabError::Invalid(format!("{} is not JSON: {e}", file.display())))?;
        let list = if conf.get("plugins").is_some() {
            conf
        } else {
            json!({
                "name": conf.get("name").cloned().unwrap_or(Value::Null),
                "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::Null),
                "plugins": [conf]
            })
        };
        Ok((file, list))
    }

    /// The flanneld container's readiness probe (port, path), if the manifest has one.
    pub fn readiness(&self) -> Option<(u16, String)> {
        self.spec
            .manifest
            .container(KUBE_FLANNEL)
            .ok()?
            .readiness_http()
    }

    /// SIGKILLs node `i`'s flanneld container (a crash; the podman attached to it then exits).
    pub fn kill(&self, i: usize) -> Result<()> {
        match &self.pods[i].main {
            Some(c) => c.kill("KILL"),
            None => Ok(()),
        }
    }
}

/// The DaemonSet of a cluster being started: scheduled on every node when `spec` names an
/// image, refused without the Kubernetes datastore (`emu`), whose API its flanneld uses.
pub fn for_cluster(
    spec: &ClusterSpec,
    lab: &Lab,
    emu: Option<&KubeEmu>,
) -> Result<Option<DaemonSet>> {
    let Some(ds) = &spec.daemonset else {
        return Ok(None);
    };
    let Some(emu) = emu else {
        return Err(LabError::Invalid(
            "the kube-flannel DaemonSet runs flanneld with --kube-subnet-mgr: it needs the Kubernetes datastore (--datastore kube)".into(),
        ));
    };
    ds.check_network(spec)?;
    DaemonSet::schedule(ds.clone(), lab, emu).map(Some)
}

/// A manifest error found while running the DaemonSet.
fn in_daemonset(source: crate::manifest::ManifestError) -> LabError {
    LabError::Manifest {
        origin: "the DaemonSet".into(),
        source,
    }
}

/// The error of an init container, naming it and the node.
fn init_failed(container: &str, node: &str, e: LabError) -> LabError {
    match e {
        LabError::CommandFailed {
            command,
            status,
            stdout,
            stderr,
        } => LabError::CommandFailed {
            command: format!("init container {container} on {node}: {command}"),
            status,
            stdout,
            stderr,
        },
        other => other,
    }
}

/// Creates every hostPath of the manifest under the node's root, as its `type` asks.
/// Kubernetes' `$(VAR)` expansion of a command or argument: a reference to a variable of `env`
/// becomes its value, `$$` a literal `$`, and anything else (an unknown variable, a lone `$`)
/// stays as written.
fn expand_env_refs(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn create_host_paths(m: &Manifest, root: &NodeRoot) -> Result<()> {
    for h in m.volumes.iter().filter_map(|v| v.host_path.as_ref()) {
        let path = root.path(&h.path);
        let io = |e| LabError::io(format!("creating {}", path.display()), e);
        match h.kind.as_str() {
            "FileOrCreate" => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?;
            }
            "" | "DirectoryOrCreate" | "Directory" => std::fs::create_dir_all(&path).map_err(io)?,
            other => {
                return Err(LabError::Invalid(format!(
                    "hostPath {} of type {other}: the lab creates only directories and FileOrCreate files",
                    h.path
                )));
            }
        }
    }
    Ok(())
}

/// Writes `files` (name to content) into `dir`, as a ConfigMap volume shows them.
fn write_files(dir: &Path, files: &BTreeMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_config_is_the_configmaps() {
        let mut ds = DaemonSetSpec::repo("img").unwrap();
        let mut spec = ClusterSpec::default();
        ds.check_network(&spec)
            .expect("the lab's defaults are the manifest's");
        spec.backend = "host-gw".into();
        let e = ds.check_network(&spec).unwrap_err().to_string();
        assert!(e.contains("--manifest"), "{e}");

        ds.manifest.config.insert(
            "net-conf.json".into(),
            r#"{"Network": "10.42.0.0/16", "EnableIPv6": true, "IPv6Network": "fd42::/56",
                "EnableNFTables": true, "Backend": {"Type": "vxlan", "DirectRouting": true, "VNI": 4}}"#
                .into(),
        );
        ds.adopt_network(&mut spec).unwrap();
        assert_eq!(spec.network, "10.42.0.0/16");
        assert_eq!(spec.backend, "vxlan");
        assert!(spec.direct_routing && spec.nftables);
        assert_eq!(spec.extra_config["IPv6Network"], "fd42::/56");
        ds.check_network(&spec).unwrap();
    }

    #[test]
    fn env_references_expand_as_a_kubelet_expands_them() {
        let env = vec![
            ("MY_NODE_NAME".to_string(), "n2".to_string()),
            ("A".to_string(), "x".to_string()),
        ];
        for (text, want) in [
            (
                "--hostname-override=$(MY_NODE_NAME)",
                "--hostname-override=n2",
            ),
            ("$(A)$(A)-$(MISSING)", "xx-$(MISSING)"),
            ("$$(A) costs $5", "$(A) costs $5"),
            ("$(A", "$(A"),
            ("plain", "plain"),
        ] {
            assert_eq!(expand_env_refs(text, &env), want, "{text}");
        }
    }
}
