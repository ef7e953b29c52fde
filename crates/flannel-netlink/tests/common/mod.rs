//! Shared fixtures of the integration tests and the batch benchmark (which includes this file
//! with `#[path]`). Tests run their bodies in a fresh anonymous network namespace with
//! `run_in_netns(NetnsTarget::Fresh, ..)` and build there a fake underlay NIC from a veth
//! pair (this kernel has no dummy device) and the vxlan device of one flannel node.
//!
//! Every wait is bounded by a tokio timer: the whole test body by [`bounded`], each command by
//! [`run`]'s own limit, so a hang becomes a failure.

#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use flannel_netlink::{BatchOp, Fdb, LinkInfo, MacAddr, Neighbour, Netlink, Route, VxlanSpec};
use ipnet::IpNet;
use tokio::process::Command;

/// What `run_in_netns(NetnsTarget::Fresh, ..)` failing means in a test.
pub const FRESH_NETNS: &str = "entering a fresh network namespace (are we root?)";

/// Upper bound of a whole test body.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound of one command.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Runs a test body under [`TEST_LIMIT`], failing the test if it takes longer.
pub async fn bounded<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("test timed out after {TEST_LIMIT:?}"))
}

/// Runs a command (space-separated, no quoting) from the current thread, so it inherits the
/// thread's namespace; panics unless it succeeds within [`COMMAND_LIMIT`]. Returns stdout.
pub async fn run(cmd: &str) -> String {
    run_within(cmd, COMMAND_LIMIT).await
}

/// [`run`] with another time limit, for commands known to take long.
pub async fn run_within(cmd: &str, limit: Duration) -> String {
    let mut parts = cmd.split_whitespace();
    let prog = parts.next().expect("empty command");
    let child = Command::new(prog).args(parts).kill_on_drop(true).output();
    let out = tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("{cmd} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counts lines of `cmd`'s output that contain `needle`.
pub async fn count_lines(cmd: &str, needle: &str) -> usize {
    run(cmd)
        .await
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Opens a connection and builds the fake underlay: `lo` up, veth `eth0` (192.0.2.1/24,
/// 2001:db8::1/64) with peer `eth0p` (192.0.2.2/24) in the same namespace, both up.
/// Returns the connection and eth0.
pub async fn underlay() -> (Netlink, LinkInfo) {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
    run("ip link add eth0 type veth peer name eth0p").await;
    run("ip addr add 192.0.2.1/24 dev eth0").await;
    run("ip -6 addr add 2001:db8::1/64 dev eth0 nodad").await;
    run("ip addr add 192.0.2.2/24 dev eth0p").await;
    run("ip link set eth0 up").await;
    run("ip link set eth0p up").await;
    let eth0 = nl.link_by_name("eth0").await.unwrap().expect("eth0 exists");
    (nl, eth0)
}

/// A flannel vxlan device over `eth0` as one node of the testbed's hand-built cluster has it:
/// VNI 1, source address `local`, the given MTU, address `addr`, up.
pub async fn vxlan_dev(
    nl: &Netlink,
    eth0: &LinkInfo,
    name: &str,
    local: IpAddr,
    mtu: u32,
    addr: IpNet,
) -> LinkInfo {
    let spec = VxlanSpec {
        local: Some(local),
        dev: Some(eth0.index),
        mtu: Some(mtu),
        ..VxlanSpec::new(name, 1)
    };
    let dev = nl.create_vxlan(&spec).await.unwrap();
    nl.add_address(dev.index, addr).await.unwrap();
    nl.set_link_up(dev.index).await.unwrap();
    dev
}

/// `flannel.1` of node 10.244.1.0/24: local 192.0.2.1, MTU 1450, address 10.244.1.0/32.
pub async fn flannel_dev(nl: &Netlink, eth0: &LinkInfo) -> LinkInfo {
    let local = "192.0.2.1".parse().unwrap();
    let addr = "10.244.1.0/32".parse().unwrap();
    vxlan_dev(nl, eth0, "flannel.1", local, 1450, addr).await
}

/// The three objects the vxlan backend programs for one remote node.
#[derive(Debug, Clone)]
pub struct PeerEntries {
    /// VTEP address -> VTEP MAC, permanent.
    pub neigh: Neighbour,
    /// VTEP MAC -> public IP, `self permanent`.
    pub fdb: Fdb,
    /// Subnet via VTEP address, onlink.
    pub route: Route,
}

impl PeerEntries {
    /// The three replace operations, in the order the backend sends them.
    pub fn replace_ops(&self) -> [BatchOp; 3] {
        [
            BatchOp::ReplaceNeighbour(self.neigh),
            BatchOp::ReplaceFdb(self.fdb),
            BatchOp::ReplaceRoute(self.route.clone()),
        ]
    }
}

/// Peer `i` on device `dev`: subnet 10.<(i>>8)+1>.<i&255>.0/24 (never 10.244.1.0/24 for
/// i < 60000), VTEP address its network address, VTEP MAC 0e:2a:00:00:hi:lo, public IP
/// 172.16.hi.lo.
pub fn peer(dev: u32, i: u32) -> PeerEntries {
    assert!(i < 60000, "peer index {i} out of range");
    let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
    let vtep = IpAddr::V4(Ipv4Addr::new(10, hi + 1, lo, 0));
    let net = IpNet::new(vtep, 24).expect("valid prefix");
    let mac = MacAddr([0x0e, 0x2a, 0, 0, hi, lo]);
    let public = IpAddr::V4(Ipv4Addr::new(172, 16, hi, lo));
    PeerEntries {
        neigh: Neighbour {
            ifindex: dev,
            ip: vtep,
            mac,
        },
        fdb: Fdb {
            ifindex: dev,
            mac,
            dst: public,
        },
        route: Route::onlink_via(net, vtep, dev),
    }
}

/// The replace operations for peers `0..n`, three per peer.
pub fn peer_ops(dev: u32, n: u32) -> Vec<BatchOp> {
    (0..n).flat_map(|i| peer(dev, i).replace_ops()).collect()
}

/// How many of flannel's permanent neighbours, FDB entries and onlink routes `dev` holds,
/// by our own dumps.
pub async fn peer_entry_counts(nl: &Netlink, dev: u32) -> (usize, usize, usize) {
    let neigh = nl.neighbours(Some(dev)).await.unwrap();
    let fdb = nl.fdb_entries(Some(dev)).await.unwrap();
    let routes = nl
        .routes(&flannel_netlink::RouteFilter::main().oif(dev))
        .await
        .unwrap();
    (
        neigh.iter().filter(|e| e.state.is_permanent()).count(),
        fdb.iter().filter_map(|e| e.as_fdb()).count(),
        routes.iter().filter(|r| r.onlink).count(),
    )
}
