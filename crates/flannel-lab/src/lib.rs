//! The lab: a multi-node flannel cluster on one machine, built from network namespaces.
//!
//! Every integration test in the workspace and the `flannel-lab` command build on this crate, so
//! the demo and the tests cannot drift apart. It is synchronous (std threads and processes) and
//! drives the real tools a node would run: `ip` (iproute2), etcd 3.4, iputils `ping`, flanneld
//! and the CNI plugins (through [`cni`], the workspace's one CNI runtime emulator).
//!
//! ```no_run
//! use std::time::Duration;
//! use flannel_lab::{Lab, ping};
//!
//! # fn main() -> flannel_lab::Result<()> {
//! let lab = Lab::builder().nodes(3).build()?;
//! let (n1, n2) = (lab.node(0), lab.node(1));
//! assert!(ping(n1.netns(), n2.ip().into(), 1, Duration::from_secs(2))?);
//! # Ok(()) }
//! ```
//!
//! # What gets built
//! See [`lab`] for the topology and address plan (nodes 198.18.0.K/24 on `eth0`, bridge `br0` in
//! an underlay namespace, default route via 198.18.0.254).
//!
//! # The image, run as the DaemonSet
//! With [`ClusterSpec::daemonset`] (`flannel-lab up --datastore kube --image TAG`), flanneld runs
//! the way a kubelet runs the kube-flannel DaemonSet of `deploy/kube-flannel.yml`
//! ([`manifest`]): per node, the init containers and then the flanneld container from the image,
//! under podman ([`podman`]), with the node's namespace as host network and the manifest's
//! hostPath volumes in the node's own directory ([`node_root`]); pods then use the plugin and
//! the conflist those containers installed. [`daemonset`] says what differs from a cluster.
//!
//! # etcd as production runs it
//! With [`ClusterSpec::etcd_tls`] (`flannel-lab up --etcd-tls`) etcd serves https only and
//! requires client certificates from the lab's CA ([`pki`], kept in `<lab>/pki/`); each node's
//! flanneld gets its own certificate, and [`ClusterSpec::etcd_user`] (`--etcd-user NAME:PW`)
//! adds etcd's username/password auth with a role limited to the flannel prefix
//! ([`etcd_tls`]).
//!
//! # Cleanup guarantees
//! Namespaces, processes, containers and temp directories are owned by drop guards ([`Netns`],
//! [`Child`], [`Etcd`], [`podman::Container`], [`Lab`]), so they are removed when a test returns
//! *or panics*. Dropping a namespace first kills every process inside it. What a guard cannot
//! survive is SIGKILL of the test process; for that, every namespace name embeds the creator's
//! pid and [`reap_stale`] (run by every [`LabBuilder::build`]) removes leftovers whose creator
//! is gone, as [`podman::reap_stale`] does for containers (named after their node's namespace)
//! when the next cluster runs the image.
//!
//! # Rules the lab keeps
//! It never changes the root namespace's addresses, routes, firewall rules or sysctls: sysctls are
//! written only by processes inside a lab namespace, and only `net.*` keys are accepted. Every
//! command and every wait is bounded in time. It needs root and says so ([`LabError::NotRoot`]);
//! a missing tool is reported with its Debian package ([`LabError::MissingBinary`]).

pub mod apply;
pub mod cluster;
pub mod cni;
mod command;
pub mod daemonset;
mod daemonset_api;
mod daemonset_pod;
mod error;
mod etcd;
mod etcd_cluster;
pub mod etcd_tls;
mod host;
pub mod kube;
pub mod kube_auth;
pub mod kube_client;
pub mod kube_pod;
pub mod kubectl;
pub mod lab;
pub mod lab_pods;
pub mod manifest;
mod netns;
pub mod netpol;
pub mod netpol_matrix;
pub mod node_root;
pub mod observe;
mod ping;
pub mod pki;
mod pod;
pub mod podman;
pub mod probe;
mod process;
pub mod runtime;
pub mod serve;
pub mod state;
pub mod throughput;

pub use cluster::{Cluster, ClusterPod, ClusterSpec, Datastore, PodCni, StartPhase, bin_dir};
pub use command::{
    DEFAULT_COMMAND_TIMEOUT, check, describe, run_command, run_in, run_ok, wait_for, wait_until,
};
pub use error::{LabError, Result};
pub use etcd::{DEFAULT_ETCD_START_TIMEOUT, Etcd, EtcdOptions, EtcdTls};
pub use etcd_cluster::{ETCD_MEMBER_COUNTS, EtcdCluster, MemberHealth, check_member_count};
pub use host::{package_for, pid_alive, require_binary, require_root};
pub use lab::{
    Interface, Lab, LabBuilder, Node, Persist, Underlay, parse_net, underlay_ipv4, underlay_ipv6,
};
pub use netns::{
    DETACHED_PREFIX, NAME_PREFIX, NETNS_DIR, Netns, TEMP_PREFIX, in_fresh_netns, netns_exists,
    netns_with_prefix, reap_stale, veth_underlay,
};
pub use netpol_matrix::{Comparison, Reachability};
pub use ping::ping;
pub use pod::{Pod, PodNetwork};
pub use probe::{DEFAULT_PROBE_TIMEOUT, PortProto, Proto};
pub use process::{Child, DEFAULT_STOP_TIMEOUT, LOG_TAIL_LINES, spawn_in};
pub use state::{LabState, Matrix, Phase};

/// Signals, re-exported so callers of [`Child::signal`] need no direct nix dependency.
pub use nix::sys::signal::Signal;
