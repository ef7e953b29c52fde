//! A lab that outlives the process that built it: the state file `flannel-lab up` leaves behind
//! and `status`, `check`, `exec` and `down` read, from any shell.
//!
//! # Life cycle
//! 1. [`LabState::begin`] claims a state directory (default [`DEFAULT_STATE_DIR`]): it creates
//!    `state.json` exclusively, in phase [`Phase::Starting`], *before* anything else exists, so
//!    an `up` that is killed half-way still leaves a record `down` can clean up from.
//! 2. The cluster is built with [`LabState::persist`] in its spec: namespaces
//!    `flabd-<id>-<role>` (which [`crate::reap_stale`] never matches), the lab directory inside
//!    the state directory, daemons in sessions of their own. Until step 3 the usual drop guards
//!    own everything, so a failed `up` cleans up after itself ([`LabState::discard`] then removes
//!    the record).
//! 3. [`LabState::detach`] records namespaces, processes (pid, program, start time), pods and
//!    paths, writes the file in phase [`Phase::Running`], and only then disarms the guards.
//! 4. [`LabState::teardown`] stops the recorded processes (after checking, through `/proc`, that
//!    each pid still is the program the lab started), deletes every namespace with the lab's
//!    stem, removes the directories and the record. Everything it does tolerates "already gone",
//!    so it can run twice, and after an interrupted `up`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flannel_types::subnet_env::CniSubnetEnv;
use ipnet::IpNet;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::{Cluster, Datastore};
use crate::error::{LabError, Result};
use crate::host::require_root;
use crate::lab::Persist;
use crate::netns::{Netns, destroy_if_exists, netns_exists, netns_with_prefix};
use crate::ping::ping;

/// Where `flannel-lab` keeps the state of the running lab unless told otherwise: under `/run`,
/// like the namespaces themselves, so a reboot (which removes both) leaves no stale record.
pub const DEFAULT_STATE_DIR: &str = "/run/flannel-lab";

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// The file name conflists are installed under in each node's `cni/net.d`, as kube-flannel's
/// `install-cni` container names it.
pub const CONFLIST_NAME: &str = "10-flannel.conflist";

/// Format version of the state file; a file of another version is refused rather than guessed.
const STATE_VERSION: u32 = 1;

/// How long teardown waits after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Whether the recorded lab is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `up` is building it (or was killed while building it: see [`LabState::creator_alive`]).
    Starting,
    /// Fully built and handed over: nothing but `down` removes it.
    Running,
}

/// A long-running process of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is for humans: `etcd`, `flanneld n1`.
    pub role: String,
    /// The program's file name, compared with `argv[0]` before any signal is sent.
    pub program: String,
    /// Its pid (also its session and process-group id).
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), which tells a
    /// recycled pid from the process we started.
    pub start_time: Option<u64>,
    /// The namespace it runs in.
    pub netns: String,
    /// Its log file.
    pub log: Option<PathBuf>,
}

impl ProcessRecord {
    /// Whether the pid still is this process: alive, not a zombie, `argv[0]` naming the program
    /// and (when recorded) the same start time.
    pub fn is_running(&self) -> bool {
        proc_identity(self.pid).is_some_and(|(argv0, start)| {
            Path::new(&argv0).file_name().and_then(|n| n.to_str()) == Some(self.program.as_str())
                && self.start_time.is_none_or(|t| t == start)
        })
    }
}

/// A node of the recorded lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `n1`, `n2`, ...
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its underlay address (eth0), flanneld's public IP.
    pub ip: Ipv4Addr,
    /// Its private directory.
    pub dir: PathBuf,
    /// The subnet.env flanneld writes.
    pub subnet_file: PathBuf,
    /// The installed conflist.
    pub conflist: Option<PathBuf>,
    /// How the node's runtime wires pods, so `flannel-lab pod add` wires them as `up` did
    /// (absent in files written before `pod add` existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeRecord>,
}

/// A node's runtime as [`crate::runtime::NodeRuntime`] needs it, recorded by `up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// The conflist pods are created with (the DaemonSet's `install-cni` one with `--image`).
    pub conflist: Value,
    /// `CNI_PATH`.
    pub cni_path: Vec<PathBuf>,
    /// The node's own root directory (`--image`), see [`crate::cni::CniCall::node_root`].
    pub node_root: Option<PathBuf>,
}

/// A pod of the recorded lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod name (also its CNI container ID).
    pub name: String,
    /// The node it lives on.
    pub node: String,
    /// Its namespace.
    pub netns: String,
    /// The address CNI gave it.
    pub ip: IpAddr,
    /// Its Kubernetes namespace: `default` for the pods of `up`, any for `pod add`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its labels (those of its Pod object; `pod add --label`, `pod label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its IPv6 address in a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// What DEL needs (absent in files written before `pod delete` existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniRecord>,
    /// Whether `flannel-lab serve` runs in it (pods of `pod add`): only these are probed by
    /// `netpol-matrix`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub serves: bool,
}

/// The namespace of pods recorded without one.
fn default_namespace() -> String {
    crate::kube::POD_NAMESPACE.to_string()
}

/// A pod's CNI sandbox: what the runtime replays on DEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRecord {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The runtime config given at ADD.
    pub runtime: Value,
    /// The ADD result (DEL's prevResult).
    pub result: Value,
}

impl PodRecord {
    /// How commands name the pod: `NAME` for the pods of `up` (namespace `default`),
    /// `NS/NAME` for every other.
    pub fn id(&self) -> String {
        if self.namespace == crate::kube::POD_NAMESPACE && !self.serves {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// Whether `target` names this pod: `NS/NAME`, or a bare name for a pod in `default`.
    pub fn is(&self, target: &str) -> bool {
        match target.split_once('/') {
            Some((ns, name)) => ns == self.namespace && name == self.name,
            None => self.namespace == crate::kube::POD_NAMESPACE && target == self.name,
        }
    }
}

/// Everything `status`, `check`, `exec` and `down` need to know about a lab started by `up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// File format version.
    pub version: u32,
    /// The lab id (the pid of the `up` that built it).
    pub id: String,
    /// Namespace stem: every namespace of the lab is `<stem>-<role>`.
    pub stem: String,
    /// Complete or still being built.
    pub phase: Phase,
    /// The state directory holding `state.json` and the lab directory.
    pub state_dir: PathBuf,
    /// Logs, node directories, etcd data.
    pub lab_dir: PathBuf,
    /// Whether `up` created the state directory (then `down` removes it when empty).
    pub created_state_dir: bool,
    /// The pid of the `up` that built the lab.
    pub creator_pid: u32,
    /// That process's start time (see [`ProcessRecord::start_time`]).
    pub creator_start_time: Option<u64>,
    /// When the lab was started, seconds since the epoch.
    pub created_at: u64,
    /// The command line of that `up`, for `status`.
    pub args: Vec<String>,
    /// The network config written to the datastore.
    pub net_config: Value,
    /// `etcd` or `kube`.
    pub datastore: String,
    /// The datastore's client URL as flanneld uses it.
    pub endpoint: Option<String>,
    /// The underlay namespace.
    pub underlay_netns: Option<String>,
    /// Nodes, n1 first.
    pub nodes: Vec<NodeRecord>,
    /// Pods, by name.
    pub pods: Vec<PodRecord>,
    /// etcd (or the emulator) and flanneld per node.
    pub processes: Vec<ProcessRecord>,
    /// Whether `up` started the NetworkPolicy enforcer on every node (`--netpol`, or an image
    /// whose manifest runs it): `observe` needs one serving `/flows` on each node, and a
    /// stopped enforcer (reliability tests) must not make the lab look as if it had none.
    /// Absent in state files written before it existed (then read from the processes).
    #[serde(default)]
    pub netpol: bool,
}

/// What [`LabState::teardown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Processes stopped (role and pid).
    pub stopped: Vec<String>,
    /// Containers removed (the kube-flannel DaemonSet's, `flannel-lab up --image`).
    pub containers: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Directories and files removed.
    pub removed: Vec<PathBuf>,
}

impl LabState {
    /// The state file of `state_dir`.
    pub fn file(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Reads the state file of `state_dir`; `Ok(None)` when there is none (no lab).
    pub fn load(state_dir: &Path) -> Result<Option<LabState>> {
        let path = Self::file(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LabError::io(format!("reading {}", path.display()), e)),
        };
        let state: LabState = serde_json::from_str(&text).map_err(|e| {
            LabError::Invalid(format!(
                "{} is not a flannel-lab state file ({e}); remove it by hand after checking `ip netns list`",
                path.display()
            ))
        })?;
        if state.version != STATE_VERSION {
            return Err(LabError::Invalid(format!(
                "{} has format version {}, this flannel-lab reads version {STATE_VERSION}",
                path.display(),
                state.version
            )));
        }
        Ok(Some(state))
    }

    /// Claims `state_dir` for a new lab: creates it if needed and writes `state.json` in phase
    /// [`Phase::Starting`]. Fails, saying what to do, when a lab (or a starting `up`) is already
    /// recorded there: one lab per state directory.
    pub fn begin(state_dir: &Path, args: Vec<String>) -> Result<LabState> {
        require_root("start a lab")?;
        let created_state_dir = !state_dir.exists();
        std::fs::create_dir_all(state_dir)
            .map_err(|e| LabError::io(format!("creating {}", state_dir.display()), e))?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(|e| LabError::io(format!("resolving {}", state_dir.display()), e))?;
        let id = std::process::id().to_string();
        let persist = Persist::new(&id, &state_dir)?;
        let state = LabState {
            version: STATE_VERSION,
            stem: persist.stem().to_string(),
            lab_dir: persist.dir().to_path_buf(),
            id,
            phase: Phase::Starting,
            state_dir: state_dir.clone(),
            created_state_dir,
            creator_pid: std::process::id(),
            creator_start_time: proc_identity(std::process::id()).map(|(_, t)| t),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            args,
            net_config: Value::Null,
            datastore: String::new(),
            endpoint: None,
            underlay_netns: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            processes: Vec::new(),
            netpol: false,
        };
        let path = Self::file(&state_dir);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::Occupied(Self::occupied_message(&state_dir)));
            }
            Err(e) => return Err(LabError::io(format!("creating {}", path.display()), e)),
        };
        let json = state.to_json()?;
        file.write_all(json.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        Ok(state)
    }

    /// Why `begin` refused: the lab recorded in `state_dir`, and what to run.
    fn occupied_message(state_dir: &Path) -> String {
        let flag = if state_dir == Path::new(DEFAULT_STATE_DIR) {
            String::new()
        } else {
            format!(" --state-dir {}", state_dir.display())
        };
        match Self::load(state_dir) {
            Ok(Some(s)) if s.phase == Phase::Starting && s.creator_alive() => format!(
                "another `flannel-lab up` (pid {}) is starting a lab in {}; wait for it, or stop it and run `flannel-lab{flag} down`",
                s.creator_pid,
                state_dir.display()
            ),
            Ok(Some(s)) if s.phase == Phase::Starting => format!(
                "an interrupted `flannel-lab up` (pid {}, gone) left a partial lab in {}; remove it with `flannel-lab{flag} down`",
                s.creator_pid,
                state_dir.display()
            ),
            Ok(Some(s)) => format!(
                "a lab is already running (state in {}, namespaces {}-*); see `flannel-lab{flag} status`, remove it with `flannel-lab{flag} down`, or pass another --state-dir for a second lab",
                Self::file(state_dir).display(),
                s.stem
            ),
            Ok(None) => format!("{} appeared and vanished; try again", state_dir.display()),
            Err(e) => format!("{e}; a state file exists, so a lab may be running"),
        }
    }

    /// How the cluster must be built so this record can take it over: set it as
    /// [`crate::ClusterSpec::persist`].
    pub fn persist(&self) -> Result<Persist> {
        Persist::new(&self.id, &self.state_dir)
    }

    /// Whether the `up` that wrote this record is still running.
    pub fn creator_alive(&self) -> bool {
        proc_identity(self.creator_pid)
            .is_some_and(|(_, start)| self.creator_start_time.is_none_or(|t| t == start))
    }

    /// Takes over `cluster`: records its namespaces, processes and pods, writes the state file in
    /// phase [`Phase::Running`], and then disarms every drop guard of the cluster, so the lab
    /// keeps running after this process exits.
    ///
    /// The cluster must have been built with [`LabState::persist`]; otherwise its names belong to
    /// the reaper and the next test run would delete it. If recording fails, the cluster is
    /// dropped (and so removed) and the error returned.
    pub fn detach(&mut self, cluster: Cluster) -> Result<()> {
        let lab = cluster.lab();
        match lab.persistence() {
            Some(p) if p.stem() == self.stem => {}
            _ => {
                return Err(LabError::Invalid(format!(
                    "only a cluster built with ClusterSpec::persist = LabState::persist() can be detached (expected namespaces {}-*)",
                    self.stem
                )));
            }
        }
        let mut processes = Vec::new();
        match cluster.spec().datastore {
            Datastore::Etcd => {
                self.endpoint = cluster.etcd_endpoints();
                self.datastore = "etcd".into();
                let members = match cluster.etcd_cluster() {
                    Some(c) => c.members().iter().collect(),
                    None => vec![cluster.etcd()],
                };
                for etcd in members {
                    let Some(pid) = etcd.pid() else { continue };
                    // One member keeps the role `etcd` it always had; several are named.
                    let role = match cluster.etcd_cluster() {
                        Some(_) => format!("etcd {}", etcd.name()),
                        None => "etcd".to_string(),
                    };
                    processes.push(process_record(
                        &role,
                        "etcd",
                        pid,
                        etcd.netns_name(),
                        Some(etcd.log_path()),
                    ));
                }
            }
            Datastore::Kube => {
                self.datastore = "kube".into();
                if let Some(kube) = cluster.kube() {
                    self.endpoint = Some(kube.url());
                    let c = kube.child();
                    processes.push(process_record(
                        "kube-api-emulator",
                        crate::kube::EMULATOR_BIN,
                        c.pid(),
                        c.netns_name(),
                        Some(c.log_path()),
                    ));
                }
            }
        }
        let mut nodes = Vec::new();
        for (i, node) in lab.nodes().iter().enumerate() {
            if let Some(c) = cluster.flanneld(i) {
                // From an image, the process is podman attached to the flanneld container.
                let program = match cluster.daemonset() {
                    Some(_) => "podman",
                    None => "flanneld",
                };
                processes.push(process_record(
                    &format!("flanneld {}", node.name()),
                    program,
                    c.pid(),
                    c.netns_name(),
                    Some(c.log_path()),
                ));
            }
            if let Some(c) = cluster.netpol().and_then(|e| e.child(i)) {
                processes.push(process_record(
                    &format!("{} {}", crate::netpol::NETPOL_BIN, node.name()),
                    match cluster.daemonset() {
                        Some(_) => "podman",
                        None => crate::netpol::NETPOL_BIN,
                    },
                    c.pid(),
                    c.netns_name(),
                    Some(c.log_path()),
                ));
            }
            let conflist = match cluster.daemonset() {
                Some(ds) => ds
                    .conflist(i)
                    .map_or_else(|_| PathBuf::new(), |(file, _)| file),
                None => installed_conflist(node.dir()),
            };
            nodes.push(NodeRecord {
                name: node.name().to_string(),
                netns: node.netns_name().to_string(),
                ip: node.ip(),
                dir: node.dir().to_path_buf(),
                subnet_file: cluster.subnet_file(i),
                conflist: conflist.is_file().then_some(conflist),
                runtime: cluster.node_runtime(i).ok().map(|rt| RuntimeRecord {
                    conflist: rt.conflist,
                    cni_path: rt.path,
                    node_root: rt.node_root.map(Path::to_path_buf),
                }),
            });
        }
        let pods = cluster
            .pods()
            .filter_map(|p| {
                Some(PodRecord {
                    name: p.name.clone(),
                    node: lab.try_node(p.node)?.name().to_string(),
                    netns: lab.pod(&p.name)?.netns_name().to_string(),
                    ip: p.ip,
                    namespace: default_namespace(),
                    labels: BTreeMap::from([(
                        crate::kube_pod::MANAGED_BY.0.to_string(),
                        crate::kube_pod::MANAGED_BY.1.to_string(),
                    )]),
                    ip6: p.ip6.filter(|v6| *v6 != p.ip),
                    cni: Some(CniRecord {
                        container_id: p.name.clone(),
                        runtime: p.runtime.clone(),
                        result: p.result.clone(),
                    }),
                    serves: false,
                })
            })
            .collect();
        self.net_config = cluster.spec().net_config();
        self.underlay_netns = Some(lab.underlay().netns().name().to_string());
        self.nodes = nodes;
        self.pods = pods;
        self.processes = processes;
        self.netpol = cluster.netpol().is_some();
        self.phase = Phase::Running;
        self.save()?;
        // Ownership of every namespace, process and directory now lies with the state file:
        // forgetting the cluster skips exactly the guards' Drop (kill, delete, remove) and
        // nothing else, since they hold no other resource than the ones recorded above.
        std::mem::forget(cluster);
        Ok(())
    }

    /// Forgets a record whose lab was never handed over (a failed or interrupted `up` whose
    /// guards already removed everything): removes the state file and, if `up` created it, the
    /// empty state directory.
    pub fn discard(self) -> Result<()> {
        if self.lab_dir.exists() {
            std::fs::remove_dir_all(&self.lab_dir)
                .map_err(|e| LabError::io(format!("removing {}", self.lab_dir.display()), e))?;
        }
        remove_file_if_exists(&Self::file(&self.state_dir))?;
        if self.created_state_dir {
            let _ = std::fs::remove_dir(&self.state_dir);
        }
        Ok(())
    }

    /// Writes the record atomically (temp file + rename), so a reader never sees half a file.
    pub fn save(&self) -> Result<()> {
        let path = Self::file(&self.state_dir);
        let tmp = self.state_dir.join(format!(".{STATE_FILE}.tmp"));
        std::fs::write(&tmp, self.to_json()?)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| LabError::Invalid(format!("serialising the lab state: {e}")))
    }

    /// Every namespace of the lab that exists now: the recorded ones and any other with the
    /// lab's stem (created by an `up` that was interrupted before recording them), pods first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods
            .iter()
            .map(|p| p.netns.clone())
            .chain(self.nodes.iter().map(|n| n.netns.clone()))
            .chain(self.underlay_netns.iter().cloned())
            .collect();
        for extra in netns_with_prefix(&format!("{}-", self.stem)) {
            if !names.contains(&extra) {
                // Unrecorded pods (`<stem>-nK-<pod>`) before nodes and the underlay.
                names.insert(0, extra);
            }
        }
        names.retain(|n| netns_exists(n));
        names
    }

    /// Removes the lab: stops its processes (SIGTERM, SIGKILL after a bounded wait; only pids
    /// that still are the recorded program), deletes its namespaces (killing anything left
    /// inside), removes the lab directory, the state file and, if `up` created it, the state
    /// directory. Safe to repeat; on partial failure the state file is kept so it can be retried.
    pub fn teardown(&self) -> Result<Teardown> {
        require_root("remove a lab")?;
        let mut report = Teardown::default();
        let mut errors = Vec::new();

        let running: Vec<&ProcessRecord> =
            self.processes.iter().filter(|p| p.is_running()).collect();
        for p in &running {
            signal_process(p, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while running.iter().any(|p| p.is_running()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in &running {
            if p.is_running() {
                signal_process(p, Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while running.iter().any(|p| p.is_running()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in &running {
            if p.is_running() {
                errors.push(format!("{} (pid {}) did not stop", p.role, p.pid));
            } else {
                report.stopped.push(format!("{} (pid {})", p.role, p.pid));
            }
        }

        // Containers of the kube-flannel DaemonSet (`flannel-lab up --image`), found by the
        // lab's prefix, so also those whose podman was killed or never recorded.
        match crate::podman::remove_with_prefix(&format!("{}-", self.stem)) {
            Ok(names) => report.containers = names,
            Err(e) => errors.push(format!("removing containers {}-*: {e}", self.stem)),
        }

        for ns in self.namespaces() {
            match destroy_if_exists(&ns) {
                Ok(()) => report.namespaces.push(ns),
                Err(e) => errors.push(format!("deleting namespace {ns}: {e}")),
            }
        }

        if self.lab_dir.exists() {
            match std::fs::remove_dir_all(&self.lab_dir) {
                Ok(()) => report.removed.push(self.lab_dir.clone()),
                Err(e) => errors.push(format!("removing {}: {e}", self.lab_dir.display())),
            }
        }
        if !errors.is_empty() {
            return Err(LabError::Invalid(format!(
                "the lab was only partly removed ({}); the state file {} is kept so `down` can be retried",
                errors.join("; "),
                Self::file(&self.state_dir).display()
            )));
        }
        let file = Self::file(&self.state_dir);
        if file.exists() {
            remove_file_if_exists(&file)?;
            report.removed.push(file);
        }
        if self.created_state_dir && std::fs::remove_dir(&self.state_dir).is_ok() {
            report.removed.push(self.state_dir.clone());
        }
        Ok(report)
    }

    /// The namespace of a node (`n1`), a pod (`NS/NAME`, or by name in `default`) or the
    /// underlay (`underlay`/`ul`).
    pub fn netns_of(&self, target: &str) -> Option<&str> {
        if let Some(n) = self.nodes.iter().find(|n| n.name == target) {
            return Some(&n.netns);
        }
        if let Some(p) = self.pods.iter().find(|p| p.is(target)) {
            return Some(&p.netns);
        }
        if matches!(target, "underlay" | "ul") {
            return self.underlay_netns.as_deref();
        }
        None
    }

    /// The names [`LabState::netns_of`] accepts, for error messages.
    pub fn targets(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(self.pods.iter().map(PodRecord::id))
            .chain(self.underlay_netns.iter().map(|_| "underlay".to_string()))
            .collect()
    }

    /// The recorded flanneld of node `name`.
    pub fn flanneld(&self, name: &str) -> Option<&ProcessRecord> {
        let role = format!("flanneld {name}");
        self.processes.iter().find(|p| p.role == role)
    }

    /// What each node looks like now: subnet and MTU from its subnet.env, VTEP MAC from
    /// `flannel.1`, whether its flanneld still runs.
    pub fn node_status(&self) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|n| {
                let env = CniSubnetEnv::load(&n.subnet_file).ok();
                NodeStatus {
                    name: n.name.clone(),
                    public_ip: n.ip,
                    subnet: env.as_ref().and_then(|e| e.subnet),
                    mtu: env.as_ref().map(|e| e.mtu),
                    vtep_mac: vtep_mac(&n.netns),
                    flanneld_pid: self.flanneld(&n.name).map(|p| p.pid),
                    flanneld_running: self.flanneld(&n.name).is_some_and(|p| p.is_running()),
                }
            })
            .collect()
    }

    /// Pings every pod from every other pod (up to 3 one-second probes per pair, `parallel`
    /// pairs at a time) and returns the matrix.
    pub fn ping_matrix(&self, parallel: usize) -> Matrix {
        self.ping_matrix_by(parallel, |p| Some(p.ip))
    }

    /// [`LabState::ping_matrix`] over the pods' IPv6 addresses (a dual-stack lab); `None`
    /// when no pod has one.
    pub fn ping_matrix_v6(&self, parallel: usize) -> Option<Matrix> {
        self.pods
            .iter()
            .any(|p| p.ip6.is_some())
            .then(|| self.ping_matrix_by(parallel, |p| p.ip6))
    }

    fn ping_matrix_by(
        &self,
        parallel: usize,
        addr: impl Fn(&PodRecord) -> Option<IpAddr>,
    ) -> Matrix {
        let pods: Vec<&PodRecord> = self.pods.iter().filter(|p| addr(p).is_some()).collect();
        let names: Vec<String> = pods.iter().map(|p| p.id()).collect();
        let mut jobs = Vec::new();
        for (i, a) in pods.iter().enumerate() {
            for (j, b) in pods.iter().enumerate() {
                if let (true, Some(ip)) = (i != j, addr(b)) {
                    jobs.push((i, j, a.netns.clone(), ip));
                }
            }
        }
        let n = names.len();
        let mut cells = vec![vec![None; n]; n];
        let queue = std::sync::Mutex::new(jobs);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..parallel.max(1) {
                s.spawn(|| {
                    loop {
                        let job = queue.lock().ok().and_then(|mut q| q.pop());
                        let Some((i, j, ns, ip)) = job else { break };
                        let ok = Netns::open(&ns).is_ok_and(|ns| {
                            (0..3)
                                .any(|_| ping(&ns, ip, 1, Duration::from_secs(1)).unwrap_or(false))
                        });
                        if let Ok(mut r) = results.lock() {
                            r.push((i, j, ok));
                        }
                    }
                });
            }
        });
        for (i, j, ok) in results.into_inner().unwrap_or_default() {
            cells[i][j] = Some(ok);
        }
        Matrix { pods: names, cells }
    }
}

/// A node as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// `n1`, ...
    pub name: String,
    /// eth0's address, flanneld's public IP.
    pub public_ip: Ipv4Addr,
    /// `FLANNEL_SUBNET`, once flanneld wrote subnet.env.
    pub subnet: Option<IpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: Option<u32>,
    /// The MAC of `flannel.1` (vxlan only).
    pub vtep_mac: Option<String>,
    /// The recorded flanneld pid.
    pub flanneld_pid: Option<u32>,
    /// Whether that flanneld still runs.
    pub flanneld_running: bool,
}

/// Pod-to-pod reachability: `cells[from][to]`, `None` on the diagonal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Pod names, rows and columns in this order.
    pub pods: Vec<String>,
    /// Whether `pods[from]` reached `pods[to]`.
    pub cells: Vec<Vec<Option<bool>>>,
}

impl Matrix {
    /// Number of ordered pod pairs probed.
    pub fn pairs(&self) -> usize {
        self.cells.iter().flatten().filter(|c| c.is_some()).count()
    }

    /// Number of pairs that answered.
    pub fn reachable(&self) -> usize {
        self.cells
            .iter()
            .flatten()
            .filter(|c| **c == Some(true))
            .count()
    }

    /// Whether every pair answered.
    pub fn is_full(&self) -> bool {
        self.reachable() == self.pairs()
    }

    /// The pairs that did not answer, as `(from, to)`.
    pub fn failures(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, row) in self.cells.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                if *c == Some(false) {
                    out.push((self.pods[i].clone(), self.pods[j].clone()));
                }
            }
        }
        out
    }
}

/// Writes node `i`'s conflist where a runtime would read it (`<node dir>/cni/net.d/`), returning
/// its path: the same file [`Cluster::add_pod`] executes, with per-node subnetFile and dataDirs.
pub fn install_conflist(cluster: &Cluster, i: usize) -> Result<PathBuf> {
    let path = installed_conflist(cluster.lab().node(i).dir());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(&cluster.conflist(i))
        .map_err(|e| LabError::Invalid(format!("serialising the conflist: {e}")))?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

fn installed_conflist(node_dir: &Path) -> PathBuf {
    node_dir.join("cni").join("net.d").join(CONFLIST_NAME)
}

pub(crate) fn process_record(
    role: &str,
    program: &str,
    pid: u32,
    netns: &str,
    log: Option<&Path>,
) -> ProcessRecord {
    ProcessRecord {
        role: role.to_string(),
        program: program.to_string(),
        pid,
        start_time: proc_identity(pid).map(|(_, t)| t),
        netns: netns.to_string(),
        log: log.map(Path::to_path_buf),
    }
}

/// `argv[0]` and start time of a live, non-zombie process.
fn proc_identity(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    let start: u64 = fields.get(19)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    if argv0.is_empty() {
        return None;
    }
    Some((String::from_utf8_lossy(argv0).into_owned(), start))
}

/// Signals a verified process: its whole process group when it leads one (the lab's daemons
/// do), else just the pid.
pub(crate) fn signal_process(p: &ProcessRecord, signal: Signal) {
    let Ok(raw) = i32::try_from(p.pid) else {
        return;
    };
    let pid = Pid::from_raw(raw);
    if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
        let _ = killpg(pid, signal);
    } else {
        let _ = kill(pid, signal);
    }
}

fn vtep_mac(netns: &str) -> Option<String> {
    let ns = Netns::open(netns).ok()?;
    let out = ns.ip(["-j", "link", "show", "dev", "flannel.1"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v.get(0)?.get("address")?.as_str().map(str::to_string)
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity_is_readable() {
        let (argv0, start) = proc_identity(std::process::id()).expect("own /proc entry");
        assert!(!argv0.is_empty());
        assert!(start > 0);
        let me = ProcessRecord {
            role: "test".into(),
            program: Path::new(&argv0)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            pid: std::process::id(),
            start_time: Some(start),
            netns: String::new(),
            log: None,
        };
        assert!(me.is_running());
        // Same pid, other program or other start time: not ours, never signalled.
        assert!(
            !ProcessRecord {
                program: "etcd".into(),
                ..me.clone()
            }
            .is_running()
        );
        assert!(
            !ProcessRecord {
                start_time: Some(start + 1),
                ..me
            }
            .is_running()
        );
    }

    #[test]
    fn zombies_and_missing_pids_are_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not yet reaped: a zombie once it exits.
        std::thread::sleep(Duration::from_millis(200));
        assert!(proc_identity(pid).is_none(), "zombie counted as running");
        child.wait().unwrap();
        assert!(proc_identity(pid).is_none());
    }

    #[test]
    fn matrix_counts() {
        let m = Matrix {
            pods: vec!["a".into(), "b".into(), "c".into()],
            cells: vec![
                vec![None, Some(true), Some(true)],
                vec![Some(true), None, Some(false)],
                vec![Some(true), Some(true), None],
            ],
        };
        assert_eq!(m.pairs(), 6);
        assert_eq!(m.reachable(), 5);
        assert!(!m.is_full());
        assert_eq!(m.failures(), vec![("b".to_string(), "c".to_string())]);
    }

    #[test]
    fn state_round_trips_and_targets_resolve() {
        let s = LabState {
            version: STATE_VERSION,
            id: "42".into(),
            stem: "flabd-42".into(),
            phase: Phase::Running,
            state_dir: "/tmp/x".into(),
            lab_dir: "/tmp/x/flabd-42".into(),
            created_state_dir: false,
            creator_pid: 42,
            creator_start_time: None,
            created_at: 1,
            args: vec!["up".into()],
            net_config: serde_json::json!({"Network": "10.244.0.0/16"}),
            datastore: "etcd".into(),
            endpoint: Some("http://198.18.0.254:2379".into()),
            underlay_netns: Some("flabd-42-ul".into()),
            nodes: vec![NodeRecord {
                name: "n1".into(),
                netns: "flabd-42-n1".into(),
                ip: Ipv4Addr::new(198, 18, 0, 1),
                dir: "/tmp/x/flabd-42/n1".into(),
                subnet_file: "/tmp/x/flabd-42/n1/subnet.env".into(),
                conflist: None,
                runtime: None,
            }],
            pods: vec![PodRecord {
                name: "n1-p1".into(),
                node: "n1".into(),
                netns: "flabd-42-n1-n1-p1".into(),
                ip: "10.244.1.2".parse().unwrap(),
                namespace: "default".into(),
                labels: BTreeMap::new(),
                ip6: None,
                cni: None,
                serves: false,
            }],
            processes: vec![],
            netpol: false,
        };
        let back: LabState = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.netns_of("n1"), Some("flabd-42-n1"));
        assert_eq!(s.netns_of("n1-p1"), Some("flabd-42-n1-n1-p1"));
        assert_eq!(s.netns_of("underlay"), Some("flabd-42-ul"));
        assert_eq!(s.netns_of("n9"), None);
        assert_eq!(s.targets(), vec!["n1", "n1-p1", "underlay"]);
    }
}
