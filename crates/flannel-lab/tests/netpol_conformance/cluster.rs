//! What the suite needs from a cluster, and nothing more: the lead implements this once on top
//! of the lab (`flannel-lab pod add/delete/label`, `apply -f`/`delete -f`, `probe`), the
//! in-memory reference evaluator implements it to check the catalogue's expected tables.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::model::{PodRef, Proto};
use super::truth_table::TruthTable;

/// A cluster carrying the e2e model, driven by the conformance runner.
///
/// Every method is synchronous and returns when the API server (or the reference state) holds
/// the change; enforcement may lag, which is what [`NetpolCluster::settle`] and the runner's one
/// retry of a mismatching probe round (as upstream's `ValidateOrFail` does) absorb.
pub trait NetpolCluster {
    /// Creates or updates (by kind, namespace and name) every object of `objects`: the JSON form
    /// of `networking.k8s.io/v1` NetworkPolicies and `v1` Namespaces (a Namespace's labels are
    /// replaced by the given ones; the API server keeps `kubernetes.io/metadata.name`).
    fn apply(&self, objects: &[Value]) -> anyhow::Result<()>;

    /// Deletes one NetworkPolicy; deleting a missing one is an error.
    fn delete_policy(&self, ns: &str, name: &str) -> anyhow::Result<()>;

    /// Deletes every NetworkPolicy in every namespace (between cases).
    fn delete_all_policies(&self) -> anyhow::Result<()>;

    /// Sets (`Some`) or removes (`None`) one label of a pod (`flannel-lab pod label NS/NAME K=V|K-`).
    fn label_pod(&self, pod: &PodRef, key: &str, value: Option<&str>) -> anyhow::Result<()>;

    /// Sets or removes one label of a namespace.
    fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> anyhow::Result<()>;

    /// Creates a model pod (namespace must exist) with exactly `labels`, serving TCP and UDP on
    /// ports 80 and 81 with the named container ports `serve-80-tcp` ...; returns when its
    /// servers answer. Which node it lands on is the implementation's choice (the lab spreads
    /// the model over its nodes so that both same-node and cross-node pairs are probed).
    fn create_pod(&self, pod: &PodRef, labels: &BTreeMap<String, String>) -> anyhow::Result<()>;

    /// Deletes a pod (its IP may then be handed to the next pod created).
    fn delete_pod(&self, pod: &PodRef) -> anyhow::Result<()>;

    /// The pod's IPs as its Pod object's status lists them (ipBlock cases build CIDRs from them).
    fn pod_ips(&self, pod: &PodRef) -> anyhow::Result<Vec<IpAddr>>;

    /// Whether probes over `proto` can work at all here (SCTP needs the kernel's sctp module).
    fn supports(&self, proto: Proto) -> bool;

    /// Called after every change, before the next probe: a chance to wait until the enforcer
    /// has applied the change (the default waits for nothing).
    fn settle(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Probes every ordered pair of distinct `pods` (a TCP connect, or a UDP request that must be
    /// answered, to the destination's pod IP on `port`), each with `timeout`, in parallel, and
    /// returns the observed table over `pods` in the given order. Self pairs may be left unset:
    /// the runner ignores them, as upstream does.
    fn probe_all(
        &self,
        pods: &[PodRef],
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> anyhow::Result<TruthTable>;
}

/// Whether this kernel can open SCTP sockets (the sctp module is built in or loadable): what a
/// lab implementation of [`NetpolCluster::supports`] answers for SCTP. Protocol support is
/// kernel-wide, so opening (and at once closing) an unbound socket here tells for every pod.
pub fn kernel_has_sctp() -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .is_ok()
}

#[test]
fn sctp_detection_agrees_with_the_kernels_protocol_list() {
    let has = kernel_has_sctp();
    // Read after the probe: opening the socket may have loaded the module.
    let protocols = std::fs::read_to_string("/proc/net/protocols").expect("procfs");
    let listed = protocols.lines().any(|l| l.starts_with("SCTP "));
    assert_eq!(
        has, listed,
        "socket says {has}, /proc/net/protocols:\n{protocols}"
    );
    println!("kernel SCTP support: {has}");
}
