//! A running flannel cluster in the lab: etcd on the underlay, `flanneld` in every node
//! namespace with the flags a DaemonSet would pass, and pods created through CNI.
//!
//! This is what the `flannel-lab` command brings up and what every end-to-end test starts
//! from, so the demo and the tests exercise the same path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flannel_types::subnet_env::CniSubnetEnv;
use serde_json::{Value, json};

use crate::cni::{self, DEBIAN_CNI_DIR};
use crate::command::wait_for;
use crate::daemonset::{self, DaemonSet, DaemonSetSpec};
use crate::error::{LabError, Result};
use crate::etcd::{Etcd, EtcdOptions};
use crate::etcd_cluster::{EtcdCluster, check_member_count};
use crate::etcd_tls::{self, EtcdPki, EtcdUser};
use crate::kube::{self, KubeEmu, KubeEmuOptions};
use crate::lab::{Lab, Persist};
use crate::netpol::{Enforcers, NETPOL_CONTAINER};
use crate::ping::ping;
use crate::process::Child;
use crate::runtime::NodeRuntime;

/// The etcd key prefix flanneld uses by default.
pub const ETCD_PREFIX: &str = "/coreos.com/network";

/// How pods get their network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodCni {
    /// Through our `flannel` plugin (delegating to bridge + host-local) chained with `portmap`,
    /// as upstream's kube-flannel ConfigMap does.
    Flannel,
    /// Straight through Debian's `bridge` + `host-local`, with a delegate config built from
    /// subnet.env; for tests of the daemon that must not depend on our plugin.
    Bridge,
}

/// Where flanneld keeps leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Datastore {
    /// etcd 3.4 on the underlay; flanneld with `--etcd-endpoints`.
    #[default]
    Etcd,
    /// The Kubernetes API emulator on the underlay (see [`crate::kube`]); flanneld with
    /// `--kube-subnet-mgr`, Node objects with kubeadm-style podCIDRs.
    Kube,
}

/// What cluster to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Where leases live.
    pub datastore: Datastore,
    /// How many etcd members (1, 3 or 5; see [`crate::ETCD_MEMBER_COUNTS`]) in
    /// [`Datastore::Etcd`] mode. With more than one, [`Cluster::etcd_cluster`] holds them and
    /// flanneld gets every member in `--etcd-endpoints`.
    pub etcd_members: usize,
    /// Emulator settings in [`Datastore::Kube`] mode.
    pub kube_emu: KubeEmuOptions,
    /// Number of nodes.
    pub nodes: usize,
    /// `Backend.Type`.
    pub backend: String,
    /// `Backend.DirectRouting` (vxlan).
    pub direct_routing: bool,
    /// `EnableNFTables`.
    pub nftables: bool,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `Network`.
    pub network: String,
    /// Extra keys merged into the network config (e.g. `{"SubnetLen": 26}`).
    pub extra_config: Value,
    /// Extra flanneld flags for every node.
    pub extra_args: Vec<String>,
    /// An outside host on the underlay (masquerade tests).
    pub outside_host: bool,
    /// Give the underlay IPv6 addresses (`fd00:198::K/64` on every node's eth0) so IPv6 and
    /// dual-stack configs (`EnableIPv6`/`IPv6Network` in `extra_config`) can run.
    pub ipv6: bool,
    /// Extra underlay networks: `eth1`.. on every node (interface-selection tests).
    pub extra_networks: u8,
    /// Serve /healthz, /readyz, /metrics on every node (port 8081 in each node namespace).
    pub healthz: bool,
    /// How pods are created.
    pub pod_cni: PodCni,
    /// How long to wait for every node to become ready.
    pub ready_timeout: Duration,
    /// Build a lab that can outlive this process (`flannel-lab up`; see
    /// [`crate::LabState::detach`]); `None` for an ordinary test cluster.
    pub persist: Option<Persist>,
    /// Run flanneld as the kube-flannel DaemonSet from a container image instead of the
    /// workspace's binary ([`crate::daemonset`]; needs [`Datastore::Kube`]). `None`: flanneld
    /// from [`bin_dir`] with the flags above.
    pub daemonset: Option<DaemonSetSpec>,
    /// Run the NetworkPolicy enforcer (`flannel-netpol`) on every node once flanneld is ready
    /// ([`crate::netpol`]; needs [`Datastore::Kube`]).
    pub netpol: bool,
    /// etcd over TLS only, with client-certificate authentication; flanneld with
    /// `--etcd-cafile/--etcd-certfile/--etcd-keyfile` (a certificate per node). See
    /// [`crate::etcd_tls`].
    pub etcd_tls: bool,
    /// etcd authentication on top of TLS: this user may read and write the flannel prefix
    /// only, and flanneld logs in with `--etcd-username/--etcd-password` (needs `etcd_tls`).
    pub etcd_user: Option<EtcdUser>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            datastore: Datastore::Etcd,
            etcd_members: 1,
            kube_emu: KubeEmuOptions::default(),
            nodes: 3,
            backend: "vxlan".into(),
            direct_routing: false,
            nftables: false,
            ip_masq: true,
            network: "10.244.0.0/16".into(),
            extra_config: json!({}),
            extra_args: Vec::new(),
            outside_host: false,
            ipv6: false,
            extra_networks: 0,
            healthz: true,
            pod_cni: PodCni::Flannel,
            ready_timeout: Duration::from_secs(30),
            persist: None,
            daemonset: None,
            netpol: false,
            etcd_tls: false,
            etcd_user: None,
        }
    }
}

impl ClusterSpec {
    /// The network config flanneld reads from etcd.
    pub fn net_config(&self) -> Value {
        let mut backend = json!({ "Type": self.backend });
        if self.direct_routing {
            backend["DirectRouting"] = json!(true);
        }
        let mut c = json!({
            "Network": self.network,
            "EnableNFTables": self.nftables,
            "Backend": backend,
        });
        if let (Some(extra), Some(obj)) = (self.extra_config.as_object(), c.as_object_mut()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

/// The phases of [`Cluster::start_observed`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPhase {
    /// Building the underlay and the node namespaces.
    Lab,
    /// Starting etcd (or the Kubernetes emulator) and writing the network config.
    Datastore,
    /// Starting flanneld on every node and waiting until each is ready.
    Flanneld,
    /// Starting the NetworkPolicy enforcer on every node and waiting until each has synced.
    Netpol,
}

/// The port flanneld's health server listens on inside each node namespace.
pub const HEALTHZ_PORT: u16 = 8081;

/// A pod created through CNI.
#[derive(Debug, Clone)]
pub struct ClusterPod {
    /// Pod name (also the container ID).
    pub name: String,
    /// Node index.
    pub node: usize,
    /// The pod's IPv4 address, or its IPv6 address in an IPv6-only cluster.
    pub ip: IpAddr,
    /// The pod's IPv6 address, when the cluster has IPv6.
    pub ip6: Option<IpAddr>,
    /// The CNI result, replayed as prevResult on DEL.
    pub result: Value,
    /// The runtime config used at ADD (port mappings).
    pub runtime: Value,
}

/// A running cluster. Field order is drop order: containers and daemons first, then etcd, then
/// the namespaces.
#[derive(Debug)]
pub struct Cluster {
    daemonset: Option<DaemonSet>,
    netpol: Option<Enforcers>,
    flanneld: Vec<Option<Child>>,
    started: Vec<std::time::SystemTime>,
    etcd: Option<Etcd>,
    etcd_cluster: Option<EtcdCluster>,
    etcd_pki: Option<EtcdPki>,
    kube: Option<KubeEmu>,
    pods: BTreeMap<String, ClusterPod>,
    spec: ClusterSpec,
    bin_dir: PathBuf,
    lab: Lab,
}

/// Starts etcd on the underlay (one member, or a cluster of [`ClusterSpec::etcd_members`];
/// with TLS and auth as `spec` asks) and writes the network config.
fn start_etcd(
    lab: &Lab,
    spec: &ClusterSpec,
) -> Result<(Option<Etcd>, Option<EtcdCluster>, Option<EtcdPki>)> {
    if spec.etcd_user.is_some() && !spec.etcd_tls {
        return Err(LabError::Invalid(
            "an etcd user (--etcd-user) needs --etcd-tls: the password must not cross the underlay in clear".into(),
        ));
    }
    let gateway = IpAddr::V4(lab.underlay().gateway());
    let mut opts = EtcdOptions::new().listen_on(gateway);
    let pki = if spec.etcd_tls {
        // Members share the underlay address (they differ by port): one server certificate.
        let pki = etcd_tls::issue(lab.dir(), &[gateway], spec.nodes)?;
        opts = opts.tls(pki.tls.clone());
        Some(pki)
    } else {
        None
    };
    let ns = lab.underlay().netns();
    if spec.etcd_members == 1 {
        let etcd = lab.start_etcd(ns, opts)?;
        configure_etcd(&etcd, spec)?;
        Ok((Some(etcd), None, pki))
    } else {
        let cluster = lab.start_etcd_cluster(ns, spec.etcd_members, opts)?;
        configure_etcd(cluster.member(0), spec)?;
        Ok((None, Some(cluster), pki))
    }
}

/// Writes the network config through `etcd` and enables auth if `spec` has a user.
fn configure_etcd(etcd: &Etcd, spec: &ClusterSpec) -> Result<()> {
    etcd.etcdctl([
        "put",
        &format!("{ETCD_PREFIX}/config"),
        &spec.net_config().to_string(),
    ])?;
    if let Some(user) = &spec.etcd_user {
        etcd_tls::enable_auth(etcd, user, ETCD_PREFIX)?;
    }
    Ok(())
}

/// The directory holding the workspace's binaries (`flanneld`, `flannel`): `FLANNEL_RS_BIN_DIR`
/// if set, else the directory of the running executable (a test binary in `target/*/deps` looks
/// one level up).
pub fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("FLANNEL_RS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| LabError::io("locating the running executable", e))?;
            let mut dir = exe
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    for bin in ["flanneld", "flannel"] {
        if !dir.join(bin).is_file() {
            return Err(LabError::Invalid(format!(
                "{bin} binary not found in {}: build the workspace first (`cargo build --workspace --bins`, or --release), or set FLANNEL_RS_BIN_DIR",
                dir.display()
            )));
        }
    }
    Ok(dir)
}

impl Cluster {
    /// Builds the lab, starts etcd and writes the config, starts flanneld on every node and
    /// waits until each has written its subnet.env.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        Self::start_observed(spec, |_| {})
    }

    /// [`Cluster::start`], calling `on_phase` as each phase begins, so a command can show
    /// progress (`flannel-lab up` prints one line per phase).
    pub fn start_observed(
        spec: ClusterSpec,
        mut on_phase: impl FnMut(StartPhase),
    ) -> Result<Cluster> {
        let bin_dir = bin_dir()?;
        if spec.etcd_members != 1 && spec.datastore != Datastore::Etcd {
            return Err(LabError::Invalid(
                "--etcd-members needs --datastore etcd (the Kubernetes API emulator has no etcd)"
                    .into(),
            ));
        }
        check_member_count(spec.etcd_members)?;
        on_phase(StartPhase::Lab);
        let lab = Lab::builder()
            .nodes(spec.nodes)
            .outside_host(spec.outside_host)
            .ipv6(spec.ipv6)
            .extra_networks(spec.extra_networks)
            .persist(spec.persist.clone())
            .build()?;
        on_phase(StartPhase::Datastore);
        let ((etcd, etcd_cluster, etcd_pki), kube) = match spec.datastore {
            Datastore::Etcd => (start_etcd(&lab, &spec)?, None),
            Datastore::Kube => (
                (None, None, None),
                Some(kube::start_cluster(&lab, &bin_dir, &spec)?),
            ),
        };
        let daemonset = daemonset::for_cluster(&spec, &lab, kube.as_ref())?;
        if spec.netpol && spec.datastore != Datastore::Kube {
            return Err(LabError::Invalid(
                "the NetworkPolicy enforcer needs the Kubernetes API (--datastore kube)".into(),
            ));
        }
        let mut c = Cluster {
            daemonset,
            netpol: None,
            flanneld: (0..spec.nodes).map(|_| None).collect(),
            started: vec![std::time::SystemTime::UNIX_EPOCH; spec.nodes],
            etcd,
            etcd_cluster,
            etcd_pki,
            kube,
            pods: BTreeMap::new(),
            spec,
            bin_dir,
            lab,
        };
        on_phase(StartPhase::Flanneld);
        for i in 0..c.spec.nodes {
            c.start_flanneld(i)?;
        }
        for i in 0..c.spec.nodes {
            c.wait_ready(i)?;
        }
        c.wait_mesh()?;
        c.kubelet_nodes_ready()?;
        c.start_netpol(&mut on_phase)?;
        Ok(c)
    }

    /// Starts the NetworkPolicy enforcers: with [`ClusterSpec::netpol`], or in image mode when
    /// the manifest's pod has the enforcer's container (a kubelet runs every container).
    fn start_netpol(&mut self, on_phase: &mut impl FnMut(StartPhase)) -> Result<()> {
        let sidecar = self
            .daemonset
            .as_ref()
            .is_some_and(|ds| ds.has_container(NETPOL_CONTAINER));
        if self.daemonset.is_some() && self.spec.netpol && !sidecar {
            return Err(LabError::Invalid(format!(
                "--netpol with --image runs the DaemonSet's {NETPOL_CONTAINER} container: render the chart with it (`helm template flannel chart/kube-flannel -n kube-flannel --set netpol.enabled=true > x.yml`) and pass --manifest x.yml"
            )));
        }
        if self.spec.netpol || sidecar {
            on_phase(StartPhase::Netpol);
            let enforcers = Enforcers::start(
                &self.lab,
                &self.bin_dir,
                self.spec.nodes,
                self.spec.ready_timeout,
                self.daemonset.as_mut(),
            )?;
            self.netpol = Some(enforcers);
        }
        Ok(())
    }

    /// The NetworkPolicy enforcers, when the cluster runs them ([`ClusterSpec::netpol`]).
    pub fn netpol(&self) -> Option<&Enforcers> {
        self.netpol.as_ref()
    }

    /// The NetworkPolicy enforcers, to stop and restart them (restart tests).
    pub fn netpol_mut(&mut self) -> Option<(&mut Enforcers, &Lab, &Path)> {
        self.netpol
            .as_mut()
            .map(|e| (e, &self.lab, self.bin_dir.as_path()))
    }

    /// Kubernetes mode: reports every node Ready, as each kubelet does once the network plugin
    /// is up (see [`KubeEmu::set_node_ready`]).
    fn kubelet_nodes_ready(&self) -> Result<()> {
        if let Some(kube) = &self.kube {
            for i in 0..self.spec.nodes {
                kube.set_node_ready(&kube::node_name(i))?;
            }
        }
        Ok(())
    }

    /// Kubernetes mode: reports pod `name` to the API as its node's kubelet would, bound to its
    /// node and Running with its IPs (see [`KubeEmu::register_pod`]).
    fn kubelet_register_pod(&self, name: &str) -> Result<()> {
        let (Some(kube), Some(pod)) = (&self.kube, self.pods.get(name)) else {
            return Ok(());
        };
        let mut ips = vec![pod.ip];
        ips.extend(pod.ip6.filter(|v6| *v6 != pod.ip));
        let host = IpAddr::V4(self.lab.node(pod.node).ip());
        kube.register_pod(name, &kube::node_name(pod.node), host, &ips)?;
        Ok(())
    }

    /// Waits until every node routes to every other node's pod subnet (vxlan and host-gw).
    ///
    /// Ready means subnet.env is written, which comes before a node has heard of the peers
    /// that became ready after it; a test (or `flannel-lab up`) that sends traffic right away
    /// would otherwise race the first reconcile. The udp backend keeps its peer table in
    /// the daemon, not in routes, so it is not waited for here.
    pub fn wait_mesh(&self) -> Result<()> {
        if self.spec.backend == "wireguard" && self.daemonset.is_none() {
            return self.wait_wireguard_peers();
        }
        if !matches!(self.spec.backend.as_str(), "vxlan" | "host-gw") {
            return Ok(());
        }
        let mut subnets = Vec::new();
        for i in 0..self.spec.nodes {
            let env = self.subnet_env(i)?;
            let own: Vec<String> = [env.subnet, env.ipv6_subnet]
                .into_iter()
                .flatten()
                .map(|n| n.trunc().to_string())
                .collect();
            subnets.push(own);
        }
        for i in 0..self.spec.nodes {
            let ns = self.lab.node(i).netns();
            let want: Vec<&String> = subnets
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, s)| s)
                .collect();
            wait_for(
                &format!("{} to route to every peer subnet", self.lab.node(i).name()),
                self.spec.ready_timeout,
                Duration::from_millis(50),
                || -> Result<Option<()>> {
                    let mut have = std::collections::BTreeSet::new();
                    for family in ["-4", "-6"] {
                        let out =
                            crate::run_ok(ns, ["ip", family, "route", "show", "proto", "70"])?;
                        have.extend(
                            out.lines()
                                .filter_map(|l| l.split_whitespace().next())
                                .map(str::to_string),
                        );
                    }
                    let missing: Vec<&&String> =
                        want.iter().filter(|w| !have.contains(w.as_str())).collect();
                    if missing.is_empty() {
                        Ok(Some(()))
                    } else {
                        Err(LabError::Invalid(format!("no route yet to {missing:?}")))
                    }
                },
            )?;
        }
        Ok(())
    }

    /// wireguard: waits until every node's userspace device (its control socket in the
    /// node's own `/run/wireguard`) holds a peer for every other node. The `flannel-wg-v6`
    /// device of dual-stack separate mode is waited for when it exists.
    fn wait_wireguard_peers(&self) -> Result<()> {
        let want = self.spec.nodes - 1;
        for i in 0..self.spec.nodes {
            let dir = crate::node_root::wireguard_dir(self.lab.node(i).dir());
            for dev in ["flannel-wg", "flannel-wg-v6"] {
                let sock = dir.join(format!("{dev}.sock"));
                if dev == "flannel-wg-v6" && !sock.exists() {
                    continue;
                }
                wait_for(
                    &format!("{}'s {dev} to hold {want} peers", self.lab.node(i).name()),
                    self.spec.ready_timeout,
                    Duration::from_millis(50),
                    || -> Result<Option<()>> {
                        let n = uapi_peer_count(&sock)
                            .map_err(|e| LabError::io(format!("asking {}", sock.display()), e))?;
                        if n == want {
                            Ok(Some(()))
                        } else {
                            Err(LabError::Invalid(format!("{n} peers")))
                        }
                    },
                )?;
            }
        }
        Ok(())
    }

    /// The lab underneath.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The lab underneath, mutably (to add pods by hand).
    pub fn lab_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }

    /// The etcd server; with several members ([`ClusterSpec::etcd_members`]), member 0 (see
    /// [`Cluster::etcd_cluster`] for the others and for etcdctl on whichever member runs).
    ///
    /// # Panics
    /// In [`Datastore::Kube`] mode, which has none (a test bug, not a runtime condition).
    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .or_else(|| self.etcd_cluster.as_ref().map(|c| c.member(0)))
            .expect("Cluster::etcd() on a cluster in Kubernetes mode")
    }

    /// The lab's etcd PKI, when the cluster runs etcd with TLS ([`ClusterSpec::etcd_tls`]):
    /// tests issue more certificates from its CA and use node certificates by hand.
    pub fn etcd_pki(&self) -> Option<&EtcdPki> {
        self.etcd_pki.as_ref()
    }

    /// The etcd server, mutably (to stop and restart it); member 0 of several, as
    /// [`Cluster::etcd`].
    ///
    /// # Panics
    /// In [`Datastore::Kube`] mode, as [`Cluster::etcd`].
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        match (&mut self.etcd, &mut self.etcd_cluster) {
            (Some(e), _) => e,
            (None, Some(c)) => c.member_mut(0),
            (None, None) => panic!("Cluster::etcd_mut() on a cluster in Kubernetes mode"),
        }
    }

    /// The etcd cluster when [`ClusterSpec::etcd_members`] is more than one: find the leader,
    /// kill and restart members, list their health.
    pub fn etcd_cluster(&self) -> Option<&EtcdCluster> {
        self.etcd_cluster.as_ref()
    }

    /// The etcd cluster, mutably (to kill and restart members).
    pub fn etcd_cluster_mut(&mut self) -> Option<&mut EtcdCluster> {
        self.etcd_cluster.as_mut()
    }

    /// flanneld's `--etcd-endpoints` value: every member's client URL; `None` in Kubernetes
    /// mode.
    pub fn etcd_endpoints(&self) -> Option<String> {
        match (&self.etcd, &self.etcd_cluster) {
            (Some(e), _) => Some(e.endpoints()),
            (None, Some(c)) => Some(c.endpoints()),
            (None, None) => None,
        }
    }

    /// The Kubernetes API emulator, in [`Datastore::Kube`] mode.
    pub fn kube(&self) -> Option<&KubeEmu> {
        self.kube.as_ref()
    }

    /// The spec the cluster was built from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Where the workspace binaries were found.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The kube-flannel DaemonSet's pods, when flanneld runs from an image.
    pub fn daemonset(&self) -> Option<&DaemonSet> {
        self.daemonset.as_ref()
    }

    /// The subnet.env path of node `i`.
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        match &self.daemonset {
            Some(ds) => ds.subnet_file(i),
            None => cni::FlannelFiles::in_dir(self.lab.node(i).dir()).subnet_file,
        }
    }

    /// The flags flanneld gets on node `i`: what the kube-flannel DaemonSet passes, with etcd
    /// instead of the Kubernetes API and per-node paths.
    pub fn flanneld_args(&self, i: usize) -> Vec<String> {
        let mut args = match self.etcd_endpoints() {
            Some(endpoints) => vec![format!("--etcd-endpoints={endpoints}")],
            None => kube::flanneld_args(
                self.lab.node(i).dir(),
                self.kube
                    .as_ref()
                    .is_some_and(|k| k.credentials().is_some()),
            ),
        };
        if let (Some(pki), Some(cert)) = (
            &self.etcd_pki,
            self.etcd_pki.as_ref().and_then(|p| p.nodes.get(i)),
        ) {
            args.extend([
                format!("--etcd-cafile={}", pki.tls.ca.display()),
                format!("--etcd-certfile={}", cert.cert.display()),
                format!("--etcd-keyfile={}", cert.key.display()),
            ]);
        }
        if let Some(user) = &self.spec.etcd_user {
            args.extend([
                format!("--etcd-username={}", user.name),
                format!("--etcd-password={}", user.password),
            ]);
        }
        args.extend([
            "--iface=eth0".to_string(),
            format!("--subnet-file={}", self.subnet_file(i).display()),
        ]);
        if self.spec.ip_masq {
            args.push("--ip-masq".into());
        }
        if self.spec.healthz {
            args.push(format!("--healthz-port={HEALTHZ_PORT}"));
        }
        args.extend(self.spec.extra_args.iter().cloned());
        args
    }

    /// Starts flanneld on node `i` (replacing a stopped one).
    pub fn start_flanneld(&mut self, i: usize) -> Result<()> {
        self.start_flanneld_with(i, &[])
    }

    /// Starts flanneld on node `i` with additional flags.
    pub fn start_flanneld_with(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        self.start_flanneld_env(i, extra, &std::collections::BTreeMap::new())
    }

    /// Starts flanneld on node `i` with additional flags and environment variables.
    pub fn start_flanneld_env(
        &mut self,
        i: usize,
        extra: &[&str],
        env: &BTreeMap<&str, &str>,
    ) -> Result<()> {
        if let Some(ds) = &mut self.daemonset {
            self.started[i] = std::time::SystemTime::now();
            self.flanneld[i] = Some(ds.start(i, &self.lab, extra, env)?);
            return Ok(());
        }
        let flanneld = self.bin_dir.join("flanneld");
        let dir = self.lab.node(i).dir();
        let mut cmd = if self.spec.backend == "wireguard" {
            // Each node its own key and its own /run/wireguard, as separate hosts have.
            let mut c = crate::node_root::wireguard_view(dir, flanneld.as_os_str())?;
            c.env("WIREGUARD_KEY_FILE", dir.join("wgkey"));
            c
        } else {
            Command::new(flanneld)
        };
        if let Some(kube) = self.kube.as_ref().filter(|k| k.credentials().is_some()) {
            // In-cluster config as under the DaemonSet: the node's own /run, where its
            // ServiceAccount volume is, and the `kubernetes` Service's address.
            let mut view = crate::node_root::run_view_command(
                &crate::node_root::NodeRoot::new(dir),
                self.lab.dir(),
                cmd.get_program(),
                cmd.get_args(),
            )?;
            for (k, v) in cmd.get_envs() {
                if let Some(v) = v {
                    view.env(k, v);
                }
            }
            view.envs(kube::in_cluster_env(kube.client()));
            cmd = view;
        }
        cmd.args(self.flanneld_args(i));
        cmd.args(extra);
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        if self.kube.is_some() {
            // The DaemonSet passes POD_NAME/POD_NAMESPACE; NODE_NAME is the other documented way.
            cmd.env("NODE_NAME", kube::node_name(i));
        }
        self.started[i] = std::time::SystemTime::now();
        let child = self
            .lab
            .spawn_named(self.lab.node(i).netns(), cmd, "flanneld")?;
        self.flanneld[i] = Some(child);
        Ok(())
    }

    /// The flanneld process of node `i`, if running.
    pub fn flanneld(&self, i: usize) -> Option<&Child> {
        self.flanneld[i].as_ref()
    }

    /// Stops flanneld on node `i` with SIGTERM (as kubelet does) and returns its exit status.
    pub fn stop_flanneld(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let status = match self.flanneld[i].take() {
            Some(mut c) => c.stop()?,
            None => {
                return Err(LabError::Invalid(format!(
                    "flanneld on node {i} is not running"
                )));
            }
        };
        self.kubelet_report_stopped(i, status)?;
        Ok(status)
    }

    /// Image mode: reports node `i`'s flanneld container ended with `status` (its pod not
    /// ready, the DaemonSet's status without it), as its kubelet would.
    fn kubelet_report_stopped(&mut self, i: usize, status: std::process::ExitStatus) -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        if let (Some(ds), Some(kube)) = (&mut self.daemonset, &self.kube) {
            // A container killed by a signal exits 128 + the signal, as runtimes report it.
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1);
            ds.report_stopped(i, kube, code)?;
        }
        Ok(())
    }

    /// Kills flanneld on node `i` with SIGKILL.
    pub fn kill_flanneld(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        if let (Some(ds), Some(_)) = (&self.daemonset, &self.flanneld[i]) {
            ds.kill(i)?;
        }
        let status = match self.flanneld[i].take() {
            Some(mut c) => c.kill()?,
            None => {
                return Err(LabError::Invalid(format!(
                    "flanneld on node {i} is not running"
                )));
            }
        };
        self.kubelet_report_stopped(i, status)?;
        Ok(status)
    }

    /// Takes node `i`'s flanneld handle (for tests that wait for it to exit by itself).
    pub fn take_flanneld(&mut self, i: usize) -> Option<Child> {
        self.flanneld[i].take()
    }

    /// Whether node `i`'s flanneld reports ready: `/readyz` answers 200 when the health server
    /// is on, otherwise subnet.env was (re)written after this flanneld started. A subnet.env
    /// left by an earlier run does not count.
    pub fn is_ready(&self, i: usize) -> bool {
        let probe = match &self.daemonset {
            Some(ds) => ds.readiness(),
            None => self
                .spec
                .healthz
                .then(|| (HEALTHZ_PORT, "/readyz".to_string())),
        };
        if let Some((port, path)) = probe {
            return self
                .lab
                .node(i)
                .netns()
                .in_thread(|| http_get_status(port, &path) == Some(200))
                .unwrap_or(false);
        }
        std::fs::metadata(self.subnet_file(i))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= self.started[i])
    }

    /// Waits until node `i` is ready (see [`Cluster::is_ready`]) and returns its subnet.env.
    /// Fails early, with the log, if flanneld exits.
    pub fn wait_ready(&mut self, i: usize) -> Result<CniSubnetEnv> {
        let path = self.subnet_file(i);
        let deadline = std::time::Instant::now() + self.spec.ready_timeout;
        loop {
            if let Some(c) = &mut self.flanneld[i] {
                c.ensure_running()?;
            }
            if self.is_ready(i)
                && let Ok(env) = CniSubnetEnv::load(&path)
            {
                if let (Some(ds), Some(kube)) = (&mut self.daemonset, &self.kube) {
                    ds.report_ready(i, kube)?;
                }
                return Ok(env);
            }
            if std::time::Instant::now() >= deadline {
                let tail = self.flanneld[i]
                    .as_ref()
                    .map(|c| c.log_tail(20))
                    .unwrap_or_default();
                return Err(LabError::Timeout {
                    what: format!("flanneld on {} to become ready", self.lab.node(i).name()),
                    timeout: self.spec.ready_timeout,
                    last: Some(tail),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`'s current subnet.env.
    pub fn subnet_env(&self, i: usize) -> Result<CniSubnetEnv> {
        CniSubnetEnv::load(&self.subnet_file(i))
            .map_err(|e| LabError::Invalid(format!("node {i}: {e}")))
    }

    /// The conflist a node's runtime would read: upstream's ConfigMap (`flannel` delegating
    /// with hairpinMode/isDefaultGateway, then `portmap`), with per-node paths so nodes sharing
    /// one machine do not share state.
    pub fn conflist(&self, i: usize) -> Value {
        cni::FlannelFiles::in_dir(self.lab.node(i).dir()).conflist()
    }

    /// The bridge config [`PodCni::Bridge`] uses: what the flannel plugin would hand to
    /// `bridge`, built here from subnet.env.
    fn bridge_conflist(&self, i: usize) -> Result<Value> {
        let env = self.subnet_env(i)?;
        let subnet = env
            .subnet
            .ok_or_else(|| LabError::Invalid(format!("node {i} has no IPv4 subnet")))?;
        let dir = self.lab.node(i).dir();
        let routes: Vec<Value> = env
            .networks
            .iter()
            .map(|n| json!({ "dst": n.to_string() }))
            .collect();
        Ok(json!({
            "name": "cbr0",
            "cniVersion": "0.4.0",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "ipMasq": !env.ip_masq,
                "mtu": env.mtu,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{ "subnet": subnet.trunc().to_string() }]],
                    "routes": routes
                }
            }]
        }))
    }

    /// `CNI_PATH` for node `i`: our plugin's directory (the node's cniBinDir when the
    /// DaemonSet installed it there), then Debian's plugins.
    fn cni_path(&self, i: usize) -> Result<Vec<PathBuf>> {
        let ours = match &self.daemonset {
            Some(ds) => ds.cni_bin_dir(i)?,
            None => self.bin_dir.clone(),
        };
        Ok(vec![ours, PathBuf::from(DEBIAN_CNI_DIR)])
    }

    /// Creates pod `name` on node `i` through CNI and returns its address.
    pub fn add_pod(&mut self, i: usize, name: &str) -> Result<IpAddr> {
        self.add_pod_with_ports(i, name, json!([]))
    }

    /// Creates a pod with `portMappings` (hostPort) passed to portmap as a runtime does.
    pub fn add_pod_with_ports(
        &mut self,
        i: usize,
        name: &str,
        port_mappings: Value,
    ) -> Result<IpAddr> {
        let netns_path = self.lab.add_pod(i, name)?.netns_path();
        let runtime = json!({ "portMappings": port_mappings });
        let wired = self.node_runtime(i)?.add(name, &netns_path, &runtime)?;
        self.pods.insert(
            name.to_string(),
            ClusterPod {
                name: name.to_string(),
                node: i,
                ip: wired.ip,
                ip6: wired.ip6,
                result: wired.result,
                runtime,
            },
        );
        self.kubelet_register_pod(name)?;
        Ok(self.pods[name].ip)
    }

    /// Node `i`'s runtime: its namespace, the conflist pods are created with, `CNI_PATH`
    /// and root.
    pub fn node_runtime(&self, i: usize) -> Result<NodeRuntime<'_>> {
        Ok(NodeRuntime {
            node: self.lab.node(i).netns(),
            conflist: self.pod_conflist(i)?,
            path: self.cni_path(i)?,
            node_root: self.daemonset.as_ref().map(|ds| ds.root(i)),
        })
    }

    /// The conflist pods of node `i` are created with: the one the DaemonSet's `install-cni`
    /// installed, else the spec's [`PodCni`].
    fn pod_conflist(&self, i: usize) -> Result<Value> {
        if let Some(ds) = &self.daemonset {
            return ds.conflist(i).map(|(_, list)| list);
        }
        match self.spec.pod_cni {
            PodCni::Flannel => Ok(self.conflist(i)),
            PodCni::Bridge => self.bridge_conflist(i),
        }
    }

    /// Deletes pod `name` through CNI (DEL in reverse order) and removes its namespace.
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let pod = self
            .pods
            .remove(name)
            .ok_or_else(|| LabError::Invalid(format!("no pod {name}")))?;
        let netns_path = self
            .lab
            .pod(name)
            .map(|p| p.netns_path())
            .unwrap_or_default();
        let r =
            self.node_runtime(pod.node)?
                .del(name, &netns_path, &pod.runtime, Some(&pod.result));
        self.lab.remove_pod(name)?;
        if let Some(kube) = &self.kube {
            kube.unregister_pod(name)?;
        }
        r
    }

    /// Pods created through CNI.
    pub fn pods(&self) -> impl Iterator<Item = &ClusterPod> {
        self.pods.values()
    }

    /// One pod by name.
    pub fn pod(&self, name: &str) -> Option<&ClusterPod> {
        self.pods.get(name)
    }

    /// Pings every pod from every other pod (one probe each, in parallel threads) and returns
    /// `(from, to, ok)` for each ordered pair.
    pub fn ping_matrix(&self) -> Vec<(String, String, bool)> {
        self.ping_matrix_by(|p| Some(p.ip))
    }

    /// The ordered pod pairs of [`Cluster::ping_matrix`] that could not reach each other:
    /// empty when the mesh is complete.
    pub fn unreachable(&self) -> Vec<(String, String)> {
        failed_pairs(self.ping_matrix())
    }

    /// [`Cluster::unreachable`] over the pods' IPv6 addresses.
    pub fn unreachable_v6(&self) -> Vec<(String, String)> {
        failed_pairs(self.ping_matrix_v6())
    }

    /// [`Cluster::ping_matrix`] over the pods' IPv6 addresses (pods without one are skipped).
    pub fn ping_matrix_v6(&self) -> Vec<(String, String, bool)> {
        self.ping_matrix_by(|p| p.ip6)
    }

    fn ping_matrix_by(
        &self,
        addr: impl Fn(&ClusterPod) -> Option<IpAddr>,
    ) -> Vec<(String, String, bool)> {
        let pods: Vec<&ClusterPod> = self.pods.values().collect();
        let mut pairs = Vec::new();
        for a in &pods {
            for b in &pods {
                if let (true, Some(ip)) = (a.name != b.name, addr(b)) {
                    pairs.push((a.name.clone(), b.name.clone(), ip));
                }
            }
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .into_iter()
                .map(|(from, to, ip)| {
                    let ns = self.lab.pod(&from).map(|p| p.netns());
                    s.spawn(move || {
                        let ok = match ns {
                            Some(ns) => (0..3)
                                .any(|_| ping(ns, ip, 1, Duration::from_secs(1)).unwrap_or(false)),
                            None => false,
                        };
                        (from, to, ok)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| (String::new(), String::new(), false))
                })
                .collect()
        })
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1 in the calling thread's namespace, returning the
/// status code; enough to probe flanneld's health endpoints without an HTTP client dependency.
pub fn http_get_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// Like [`http_get_status`], also returning the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The failed pairs of a ping matrix.
fn failed_pairs(matrix: Vec<(String, String, bool)>) -> Vec<(String, String)> {
    matrix
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(from, to, _)| (from, to))
        .collect()
}

/// The number of peers a userspace WireGuard device reports over its control socket
/// (`get=1`, the protocol `wg` speaks): one `public_key=` line per peer.
pub fn uapi_peer_count(sock: &Path) -> std::io::Result<usize> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"get=1\n\n")?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer ends with an empty line; bounded by the read timeout and a size cap.
    while !text.ends_with(b"\n\n") && text.len() < 16 << 20 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with("public_key="))
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_config_shapes() {
        let spec = ClusterSpec::default();
        assert_eq!(
            spec.net_config(),
            json!({"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}})
        );
        let spec = ClusterSpec {
            backend: "vxlan".into(),
            direct_routing: true,
            nftables: true,
            extra_config: json!({"SubnetLen": 26}),
            ..Default::default()
        };
        let c = spec.net_config();
        assert_eq!(c["Backend"]["DirectRouting"], json!(true));
        assert_eq!(c["EnableNFTables"], json!(true));
        assert_eq!(c["SubnetLen"], json!(26));
    }
}
