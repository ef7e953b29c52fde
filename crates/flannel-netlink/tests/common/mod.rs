//! Shared helpers: every test runs in a fresh anonymous network namespace on its own thread
//! (gone when the thread ends), with `lo` up and a veth pair as a fake underlay NIC (this
//! kernel has no dummy device).

#![allow(dead_code)]

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{LinkInfo, Netlink};

/// Runs `f` in a new anonymous netns. Panics inside propagate to the test.
pub fn in_fresh_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    run_in_netns(NetnsTarget::Fresh, move || async move {
        // Bound every test: a hang becomes a failure.
        tokio::time::timeout(Duration::from_secs(120), f())
            .await
            .expect("test timed out after 120 s");
    })
    .expect("entering a fresh network namespace (are we root?)");
}

/// Runs a command (space-separated, no quoting) from the current thread, so it inherits the
/// thread's namespace; panics unless it succeeds. Returns stdout.
pub fn run(cmd: &str) -> String {
    let mut parts = cmd.split_whitespace();
    let prog = parts.next().expect("empty command");
    let out = Command::new(prog)
        .args(parts)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Opens a connection and builds the fake underlay: `lo` up, veth `eth0` (192.0.2.1/24,
/// 2001:db8::1/64) with peer `eth0p` (192.0.2.2/24) in the same namespace, both up.
/// Returns the connection and eth0.
pub async fn underlay() -> (Netlink, LinkInfo) {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
    run("ip link add eth0 type veth peer name eth0p");
    run("ip addr add 192.0.2.1/24 dev eth0");
    run("ip -6 addr add 2001:db8::1/64 dev eth0 nodad");
    run("ip addr add 192.0.2.2/24 dev eth0p");
    run("ip link set eth0 up");
    run("ip link set eth0p up");
    let eth0 = nl.link_by_name("eth0").await.unwrap().expect("eth0 exists");
    (nl, eth0)
}

/// Counts lines of `cmd`'s output that contain `needle`.
pub fn count_lines(cmd: &str, needle: &str) -> usize {
    run(cmd).lines().filter(|l| l.contains(needle)).count()
}
