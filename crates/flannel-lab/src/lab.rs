//! The lab topology: an underlay namespace with bridges, node namespaces attached by veth pairs,
//! an optional "outside host", and pods.
//!
//! ```text
//!   ns flab-…-ul:   br0 198.18.0.254/24 ── n1e0 ── n2e0 ── n3e0 ── oe0      (br1, br2 for extra networks)
//!                                          │       │       │       │
//!   ns flab-…-nK:                    eth0 198.18.0.K/24, default via 198.18.0.254, ip_forward=1
//!   ns flab-…-outside:                                           eth0 198.18.0.253/24, no default route
//! ```
//!
//! Nodes look like hosts to flanneld: one NIC with the default route (what flanneld picks without
//! `--iface`), forwarding on, MTU 1500. The underlay's ip_forward stays 0, so traffic to anything
//! outside the lab's subnets dies there instead of leaving the test's namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::{LabError, Result};
use crate::etcd::{Etcd, EtcdOptions};
use crate::etcd_cluster::EtcdCluster;
use crate::host::{ip_binary, require_binary, require_root};
use crate::netns::{DETACHED_PREFIX, Netns, reap_stale, temp_dir};
use crate::pod::{Pod, PodNetwork};
use crate::process::{Child, spawn_in};

/// Host number of the underlay bridge's address on every underlay network (198.18.B.254).
pub const GATEWAY_HOST: u8 = 254;

/// Host number of the outside host on network 0 (198.18.0.253).
pub const OUTSIDE_HOST: u8 = 253;

/// The most nodes a lab can have: host numbers 1..=252 (253 and 254 are taken).
pub const MAX_NODES: usize = 252;

/// The most extra underlay networks (eth1.. per node); each is a /24 of 198.18.0.0/15.
pub const MAX_EXTRA_NETWORKS: u8 = 8;

/// The IPv4 address of host `host` on underlay network `network`: 198.18.`network`.`host`.
///
/// Network 0 is `br0`/`eth0`; extra networks are 1, 2, ... Public so tests can compute the
/// addresses they expect flanneld to pick.
pub fn underlay_ipv4(network: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, network, host)
}

/// The IPv6 address of host `host` on underlay network `network`: `fd00:198:0:<network>::<host>`,
/// with the numbers written in decimal digits so node 12 is `fd00:198::12` like 198.18.0.12.
pub fn underlay_ipv6(network: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x198,
        0,
        dec_as_hex(network),
        0,
        0,
        0,
        dec_as_hex(host),
    )
}

fn dec_as_hex(n: u8) -> u16 {
    // "253" read as hex fits in u16 for every u8, so this never falls back.
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(u16::from(n))
}

/// How a lab that must outlive the process that built it is named and stored.
///
/// A test lab is named after its creator's pid so the reaper can remove it once that process is
/// gone; a lab started by `flannel-lab up` must survive its creator, so it gets names the reaper
/// ignores (`flabd-<id>-<role>`), its directory outside the temp directory the reaper sweeps, and
/// its daemons in sessions of their own. It is still cleaned up by the drop guards until it is
/// handed over to a [`crate::LabState`] ([`crate::LabState::detach`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persist {
    stem: String,
    dir: PathBuf,
}

impl Persist {
    /// A persistent lab identified by `id` (letters, digits, `-`, `_`, `.`): namespaces
    /// `flabd-<id>-<role>`, directory `<parent>/flabd-<id>` (created by the build, which fails if
    /// it already exists).
    pub fn new(id: &str, parent: &Path) -> Result<Persist> {
        if id.is_empty()
            || id.len() > 32
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(LabError::Invalid(format!(
                "persistent lab id {id:?} must be 1-32 characters of [A-Za-z0-9._-]"
            )));
        }
        let stem = format!("{DETACHED_PREFIX}-{id}");
        Ok(Persist {
            dir: parent.join(&stem),
            stem,
        })
    }

    /// The namespace name stem: every namespace is `<stem>-<role>`.
    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// The lab directory (logs, node directories, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Configures a [`Lab`]; start with [`Lab::builder`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    nodes: usize,
    ipv6: bool,
    mtu: u32,
    extra_networks: u8,
    outside_host: bool,
    persist: Option<Persist>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            nodes: 1,
            ipv6: false,
            mtu: 1500,
            extra_networks: 0,
            outside_host: false,
            persist: None,
        }
    }
}

impl LabBuilder {
    /// Number of node namespaces (1..=252), named n1..nN with host numbers 1..N.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Also give every underlay interface an IPv6 address (`fd00:198::K/64`), a v6 default route
    /// on nodes, and v6 forwarding, for dual-stack and IPv6 backend tests.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// MTU of the node NICs and their underlay peers (default 1500), for tests that check
    /// flanneld derives the vxlan MTU from the underlay.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Number of extra underlay networks: network B adds bridge `brB` in the underlay and `ethB`
    /// (198.18.B.K/24, no default route) in every node, for `--iface`/`--iface-regex`/
    /// `--iface-can-reach` tests.
    pub fn extra_networks(mut self, n: u8) -> Self {
        self.extra_networks = n;
        self
    }

    /// Add an "outside host" namespace on br0 (198.18.0.253, no default route and hence no route
    /// back to pod networks), for masquerade tests: a pod reaching it proves SNAT happened.
    pub fn outside_host(mut self, on: bool) -> Self {
        self.outside_host = on;
        self
    }

    /// Make the lab able to outlive this process (see [`Persist`]); `None` (the default) builds
    /// an ordinary test lab.
    pub fn persist(mut self, persist: Option<Persist>) -> Self {
        self.persist = persist;
        self
    }

    /// Builds the lab; on any failure everything created so far is torn down again.
    ///
    /// Also reaps namespaces and temp directories left by earlier, killed runs (see
    /// [`crate::reap_stale`]).
    pub fn build(self) -> Result<Lab> {
        self.validate()?;
        require_root("build a lab")?;
        ip_binary()?;
        require_binary("sh")?;
        match reap_stale() {
            Ok(reaped) if !reaped.is_empty() => {
                eprintln!("flannel-lab: removed stale namespaces of dead runs: {reaped:?}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("flannel-lab: reaping stale namespaces: {e}"),
        }
        Lab::create(self)
    }

    fn validate(&self) -> Result<()> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(LabError::Invalid(format!(
                "a lab needs 1..={MAX_NODES} nodes, asked for {}",
                self.nodes
            )));
        }
        let min_mtu = if self.ipv6 { 1280 } else { 576 };
        if self.mtu < min_mtu || self.mtu > 65535 {
            return Err(LabError::Invalid(format!(
                "MTU {} is outside {min_mtu}..=65535",
                self.mtu
            )));
        }
        if self.extra_networks > MAX_EXTRA_NETWORKS {
            return Err(LabError::Invalid(format!(
                "at most {MAX_EXTRA_NETWORKS} extra networks, asked for {}",
                self.extra_networks
            )));
        }
        Ok(())
    }
}

/// One underlay NIC of a node (or of the outside host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    name: String,
    network: u8,
    ipv4: Ipv4Net,
    ipv6: Option<Ipv6Net>,
    peer: String,
    mtu: u32,
}

impl Interface {
    /// The name inside the node: `eth0` for network 0, `ethB` for extra network B.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which underlay network (bridge `brB`) it is attached to.
    pub fn network(&self) -> u8 {
        self.network
    }

    /// Its IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4.addr()
    }

    /// Its IPv4 address with prefix length, as configured.
    pub fn ipv4_net(&self) -> Ipv4Net {
        self.ipv4
    }

    /// Its IPv6 address, if the lab has an IPv6 underlay.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|n| n.addr())
    }

    /// The veth peer's name in the underlay namespace (`nKeB`), e.g. for a capture on it.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Its MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }
}

/// A node: a namespace that flanneld, the CNI plugin and pods treat as a host.
#[derive(Debug)]
pub struct Node {
    number: u8,
    name: String,
    netns: Netns,
    interfaces: Vec<Interface>,
    dir: PathBuf,
}

impl Node {
    /// The node's name, `nK` (`outside` for the outside host); also usable as a Kubernetes
    /// node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its host number K on every underlay network (node nK has 198.18.0.K).
    pub fn number(&self) -> u8 {
        self.number
    }

    /// Its namespace guard, for [`crate::ping`], [`crate::run_in`], [`Lab::spawn_in`], ...
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its namespace name, for `ip netns exec`.
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// Its namespace path, for `CNI_NETNS`-style consumers.
    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    /// The IPv4 address of `eth0`, the default-route interface.
    pub fn ip(&self) -> Ipv4Addr {
        self.interfaces[0].ipv4()
    }

    /// The IPv6 address of `eth0`, if the underlay has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.interfaces[0].ipv6()
    }

    /// All underlay NICs, `eth0` first.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The NIC named `name`, if any.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// A directory private to this node inside the lab directory, for the files a real host keeps
    /// in fixed places (subnet.env, CNI `dataDir`, host-local IPAM state), so nodes don't share
    /// them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The underlay: one namespace holding the bridges all node NICs hang off.
#[derive(Debug)]
pub struct Underlay {
    netns: Netns,
    bridges: Vec<String>,
    ipv6: bool,
}

impl Underlay {
    /// Its namespace, e.g. for `tcpdump -i br0` to observe VXLAN traffic between nodes.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The main bridge, `br0`.
    pub fn bridge(&self) -> &str {
        &self.bridges[0]
    }

    /// All bridges: `br0` then one per extra network.
    pub fn bridges(&self) -> &[String] {
        &self.bridges
    }

    /// The nodes' IPv4 default gateway, 198.18.0.254 on `br0` (a dead end: the underlay does not
    /// forward).
    pub fn gateway(&self) -> Ipv4Addr {
        underlay_ipv4(0, GATEWAY_HOST)
    }

    /// The nodes' IPv6 default gateway, if the underlay has IPv6.
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| underlay_ipv6(0, GATEWAY_HOST))
    }

    /// The IPv4 subnet of network `network` (198.18.`network`.0/24).
    pub fn subnet(&self, network: u8) -> Ipv4Net {
        Ipv4Net::new(underlay_ipv4(network, 0), 24).unwrap_or_default()
    }
}

/// A multi-node cluster on one machine, owning every namespace it created.
///
/// Dropping it removes, in this order: pods, the outside host, nodes, the underlay (each after
/// killing any process still inside), then the lab directory with its logs. Drop runs during
/// unwinding too, so a panicking test cleans up. Process guards ([`Child`], [`Etcd`]) are owned by
/// the caller; declared after the lab, they are dropped before it, which gives the intended
/// "processes first" order, and anything still running when a namespace goes is killed anyway.
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order.
    pods: Vec<Pod>,
    outside: Option<Node>,
    nodes: Vec<Node>,
    underlay: Underlay,
    config: LabBuilder,
    counter: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Starts configuring a lab: `Lab::builder().nodes(3).build()?`.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    fn create(config: LabBuilder) -> Result<Lab> {
        let dir = match &config.persist {
            None => temp_dir("lab")?,
            Some(p) => persistent_dir(p)?,
        };
        let stem = config.persist.as_ref().map(Persist::stem);
        let networks = 1 + config.extra_networks;
        let underlay = Netns::new_in(stem, "ul")?;
        let bridges: Vec<String> = (0..networks).map(|b| format!("br{b}")).collect();
        let mut script = String::new();
        for (b, br) in bridges.iter().enumerate() {
            let b = b as u8;
            script += &format!("link add {br} type bridge\nlink set {br} up\n");
            script += &format!("addr add {}/24 dev {br}\n", underlay_ipv4(b, GATEWAY_HOST));
            if config.ipv6 {
                script += &format!(
                    "addr add {}/64 dev {br} nodad\n",
                    underlay_ipv6(b, GATEWAY_HOST)
                );
            }
        }
        underlay.ip_batch(&script)?;
        let underlay = Underlay {
            netns: underlay,
            bridges,
            ipv6: config.ipv6,
        };

        let mut nodes = Vec::with_capacity(config.nodes);
        for k in 1..=config.nodes {
            let number = k as u8;
            let name = format!("n{k}");
            nodes.push(Self::attach_host(
                &config,
                &underlay,
                dir.path(),
                number,
                &name,
                networks,
                true,
            )?);
        }
        let outside = if config.outside_host {
            Some(Self::attach_host(
                &config,
                &underlay,
                dir.path(),
                OUTSIDE_HOST,
                "outside",
                1,
                false,
            )?)
        } else {
            None
        };
        Ok(Lab {
            pods: Vec::new(),
            outside,
            nodes,
            underlay,
            config,
            counter: AtomicUsize::new(0),
            dir,
        })
    }

    /// Creates one host namespace and wires `networks` NICs to the underlay bridges. Nodes get a
    /// default route and forwarding; the outside host gets neither.
    fn attach_host(
        config: &LabBuilder,
        underlay: &Underlay,
        lab_dir: &Path,
        number: u8,
        name: &str,
        networks: u8,
        is_node: bool,
    ) -> Result<Node> {
        let netns = Netns::new_in(config.persist.as_ref().map(Persist::stem), name)?;
        let mtu = config.mtu;
        let short = if is_node {
            format!("n{number}")
        } else {
            "o".to_string()
        };
        let mut ul_script = String::new();
        let mut node_script = String::new();
        let mut interfaces = Vec::new();
        for b in 0..networks {
            let ifname = format!("eth{b}");
            let peer = format!("{short}e{b}");
            let v4 = Ipv4Net::new(underlay_ipv4(b, number), 24).unwrap_or_default();
            let v6 = config
                .ipv6
                .then(|| Ipv6Net::new(underlay_ipv6(b, number), 64).unwrap_or_default());
            ul_script += &format!(
                "link add {peer} mtu {mtu} type veth peer name {ifname} netns {} mtu {mtu}\n\
                 link set {peer} master br{b} up\n",
                netns.name()
            );
            node_script += &format!("addr add {v4} dev {ifname}\n");
            if let Some(v6) = v6 {
                node_script += &format!("addr add {v6} dev {ifname} nodad\n");
            }
            node_script += &format!("link set {ifname} up\n");
            interfaces.push(Interface {
                name: ifname,
                network: b,
                ipv4: v4,
                ipv6: v6,
                peer,
                mtu,
            });
        }
        if is_node {
            node_script += &format!("route add default via {} dev eth0\n", underlay.gateway());
            if let Some(gw6) = underlay.gateway_v6() {
                node_script += &format!("route add ::/0 via {gw6} dev eth0\n");
            }
        }
        underlay.netns.ip_batch(&ul_script)?;
        netns.ip_batch(&node_script)?;
        if is_node {
            netns.set_sysctl("net.ipv4.ip_forward", "1")?;
            if config.ipv6 {
                netns.set_sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
        }
        let dir = lab_dir.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        Ok(Node {
            number,
            name: name.to_string(),
            netns,
            interfaces,
            dir,
        })
    }

    /// All nodes, n1 first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node by zero-based index: `node(0)` is n1 at 198.18.0.1.
    ///
    /// # Panics
    /// If `index` is out of range, like slice indexing; use [`Lab::try_node`] for input that
    /// comes from a user.
    pub fn node(&self, index: usize) -> &Node {
        match self.nodes.get(index) {
            Some(n) => n,
            None => panic!(
                "lab has {} nodes; node({index}) is out of range (indices are zero-based)",
                self.nodes.len()
            ),
        }
    }

    /// Node by zero-based index, or `None`.
    pub fn try_node(&self, index: usize) -> Option<&Node> {
        self.nodes.get(index)
    }

    /// The underlay namespace and its bridges.
    pub fn underlay(&self) -> &Underlay {
        &self.underlay
    }

    /// The outside host, if the lab was built with [`LabBuilder::outside_host`].
    pub fn outside(&self) -> Option<&Node> {
        self.outside.as_ref()
    }

    /// Whether the underlay has IPv6.
    pub fn ipv6(&self) -> bool {
        self.config.ipv6
    }

    /// The lab's private directory (logs, node directories), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How the lab was made persistent, if it was ([`LabBuilder::persist`]).
    pub fn persistence(&self) -> Option<&Persist> {
        self.config.persist.as_ref()
    }

    /// Names of every namespace the lab currently owns, underlay last; tests use it to assert
    /// cleanup after drop.
    pub fn netns_names(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| p.netns_name().to_string())
            .chain(self.outside.iter().map(|o| o.netns_name().to_string()))
            .chain(self.nodes.iter().map(|n| n.netns_name().to_string()))
            .chain(std::iter::once(self.underlay.netns.name().to_string()))
            .collect()
    }

    /// Starts `cmd` inside `ns` with its output in `<lab dir>/logs/<program>-<n>.log`.
    ///
    /// The lab-level form of [`crate::spawn_in`]: log files are numbered so restarts and several
    /// instances of one program do not overwrite each other.
    ///
    /// In a persistent lab the process gets a session of its own (no controlling terminal, no
    /// SIGHUP when the shell that ran `flannel-lab up` closes), so it can outlive the lab's
    /// creator.
    pub fn spawn_in(&self, ns: &Netns, cmd: Command) -> Result<Child> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".into());
        self.spawn_named(ns, cmd, &program)
    }

    /// [`Lab::spawn_in`] with the log named after `program` rather than the command's
    /// program (which is a wrapper such as `unshare` for commands run in a mount view).
    pub fn spawn_named(&self, ns: &Netns, cmd: Command, program: &str) -> Result<Child> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let log = self
            .dir
            .path()
            .join("logs")
            .join(format!("{program}-{n}.log"));
        if self.config.persist.is_some() {
            Child::spawn_session(ns.name(), cmd, log)
        } else {
            spawn_in(ns, cmd, log)
        }
    }

    /// Starts etcd inside `ns`, keeping its data and log under the lab directory unless `opts`
    /// names another directory.
    pub fn start_etcd(&self, ns: &Netns, opts: EtcdOptions) -> Result<Etcd> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let opts = if opts.has_dir() {
            opts
        } else {
            opts.dir(self.dir.path().join(format!("etcd-{n}")))
        };
        Etcd::start(ns, opts.new_session(self.config.persist.is_some()))
    }

    /// Starts a `size`-member etcd cluster inside `ns`, its members' data and logs under
    /// `etcd-N/member-K` in the lab directory unless `opts` names another directory.
    pub fn start_etcd_cluster(
        &self,
        ns: &Netns,
        size: usize,
        opts: EtcdOptions,
    ) -> Result<EtcdCluster> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let opts = if opts.has_dir() {
            opts
        } else {
            opts.dir(self.dir.path().join(format!("etcd-{n}")))
        };
        EtcdCluster::start(ns, size, opts.new_session(self.config.persist.is_some()))
    }

    /// Creates an empty pod namespace (loopback up) belonging to node `node` (zero-based), for
    /// CNI plugins to wire: pass [`Pod::netns_path`] as `CNI_NETNS`.
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<&Pod> {
        let pod = self.new_pod(node, name)?;
        let i = self.pods.len();
        self.pods.push(pod);
        Ok(&self.pods[i])
    }

    /// Creates a pod wired by hand as the bridge CNI plugin would: a veth pair from the pod's
    /// `eth0` into the node bridge (`cni0` by default, created and given the gateway address if
    /// missing), the pod address, and a default route via the gateway.
    ///
    /// For data-plane tests that must not depend on the CNI plugin under test.
    pub fn add_wired_pod(&mut self, node: usize, name: &str, net: &PodNetwork) -> Result<&Pod> {
        let mut pod = self.new_pod(node, name)?;
        let host_veth = format!("vp{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let node_ns = self.nodes[node].netns();
        pod.wire(node_ns, &host_veth, net)?;
        let i = self.pods.len();
        self.pods.push(pod);
        Ok(&self.pods[i])
    }

    fn new_pod(&self, node: usize, name: &str) -> Result<Pod> {
        let Some(n) = self.nodes.get(node) else {
            return Err(LabError::Invalid(format!(
                "pod {name:?}: node index {node} out of range (lab has {} nodes)",
                self.nodes.len()
            )));
        };
        if self.pods.iter().any(|p| p.name() == name) {
            return Err(LabError::Invalid(format!("pod {name:?} already exists")));
        }
        Pod::create(
            name,
            node,
            n.name(),
            self.config.persist.as_ref().map(Persist::stem),
        )
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod called `name`, if any.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name() == name)
    }

    /// Deletes pod `name` (its namespace, and with it the veth pair), reporting errors.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.pods.iter().position(|p| p.name() == name) else {
            return Err(LabError::Invalid(format!("no pod named {name:?}")));
        };
        self.pods.remove(i).delete()
    }

    /// The address a node has on an underlay network, for assertions.
    pub fn node_addr(&self, node: usize, network: u8, v6: bool) -> Option<IpAddr> {
        let iface = self.nodes.get(node)?.interfaces.get(usize::from(network))?;
        if v6 {
            iface.ipv6().map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(iface.ipv4()))
        }
    }
}

/// Creates a persistent lab's directory at exactly [`Persist::dir`], as a guard that removes it
/// on drop until the lab is detached; an existing directory is an error, never reused.
fn persistent_dir(p: &Persist) -> Result<tempfile::TempDir> {
    let parent = p.dir.parent().unwrap_or(Path::new("/"));
    let name = p
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::create_dir_all(parent)
        .map_err(|e| LabError::io(format!("creating {}", parent.display()), e))?;
    tempfile::Builder::new()
        .prefix(&name)
        .rand_bytes(0)
        .tempdir_in(parent)
        .map_err(|e| LabError::io(format!("creating lab directory {}", p.dir.display()), e))
}

/// Parses `"10.244.1.2/24"`-style text into an [`IpNet`]; a convenience for building
/// [`PodNetwork`]s in tests.
pub fn parse_net(text: &str) -> Result<IpNet> {
    text.parse()
        .map_err(|e| LabError::Invalid(format!("{text:?} is not an address/prefix: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_documented_plan() {
        assert_eq!(underlay_ipv4(0, 3), Ipv4Addr::new(198, 18, 0, 3));
        assert_eq!(underlay_ipv4(1, 254), Ipv4Addr::new(198, 18, 1, 254));
        assert_eq!(underlay_ipv6(0, 1).to_string(), "fd00:198::1");
        assert_eq!(underlay_ipv6(0, 12).to_string(), "fd00:198::12");
        assert_eq!(underlay_ipv6(0, 254).to_string(), "fd00:198::254");
        assert_eq!(underlay_ipv6(2, 7).to_string(), "fd00:198:0:2::7");
    }

    #[test]
    fn builder_rejects_impossible_labs() {
        let err = |b: LabBuilder| b.validate().unwrap_err().to_string();
        assert!(err(Lab::builder().nodes(0)).contains("1..=252"));
        assert!(err(Lab::builder().nodes(253)).contains("253"));
        assert!(err(Lab::builder().mtu(100)).contains("MTU 100"));
        assert!(err(Lab::builder().ipv6(true).mtu(1000)).contains("1280"));
        assert!(err(Lab::builder().extra_networks(9)).contains("extra networks"));
        assert!(Lab::builder().nodes(3).validate().is_ok());
    }
}
