//! Throughput of the wireguard backend against vxlan and against wireguard-go, in one run.
//!
//! The question: how fast is encrypted pod-to-pod TCP across nodes with flannel-rs's
//! wireguard backend where the kernel has no WireGuard module (so flanneld's own userspace
//! data path carries it), next to the kernel's VXLAN (unencrypted) and next to the other
//! userspace WireGuard an operator could run, Debian's wireguard-go? Goals: >= 0.35x vxlan
//! and >= 5x wireguard-go. This prints figures; it asserts only that every transfer ran.
//!
//! Cases, each a fresh 2-node lab cluster (etcd, release flanneld per node, pods through the
//! Debian bridge plugin), one iperf3 TCP stream from a pod on node 1 to a pod on node 2:
//! * `wireguard`: the backend as shipped (userspace here: TUN offloads, UDP GSO/GRO, one
//!   worker per CPU);
//! * `wireguard, Offload=false`: one packet per system call;
//! * `vxlan` and the `underlay`;
//! * `wireguard-go`: a vxlan cluster whose flanneld is then stopped, with wireguard-go on
//!   both nodes carrying each node's pod subnet (the routes point at its device instead of
//!   `flannel.1`): the same pod-to-pod path through another userspace WireGuard. Its CPU
//!   column is wireguard-go's.
//!
//! Run through `bench/wireguard/run` (builds release binaries first). Needs root, etcd 3.4,
//! iperf3, the Debian CNI plugins, wireguard-go and wireguard-tools.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use flannel_lab::{Child, run_in};
use serde_json::{Value, json};

#[path = "../lab_iperf.rs"]
mod lab_iperf;

use lab_iperf::{
    Options, Sample, parse_args, pod_to_pod, print_table, run_rounds, two_node_cluster,
};

/// The wireguard-go case's name in the table.
const WG_GO: &str = "wireguard-go";

/// Removes a wireguard-go control socket left in the machine-wide directory.
struct Socket(String);

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.0));
    }
}

/// A key pair for a wireguard-go device, base64 as `wg set` takes it (made in-process, as
/// flanneld makes its own, instead of by running `wg genkey` and `wg pubkey`).
fn wg_keypair() -> Result<(String, String)> {
    let secret = flannel_wireguard::key::Secret::generate();
    Ok((secret.to_base64(), secret.public_key().to_base64()))
}

fn ok(ns: &flannel_lab::Netns, args: &[&str]) -> Result<()> {
    let out = run_in(ns, args)?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Pod to pod through wireguard-go on both nodes.
fn wireguard_go_case(o: &Options) -> Result<Vec<Sample>> {
    let (mut c, server_ip) = two_node_cluster(&json!({"Type": "vxlan"}))?;
    let subnets: Vec<String> = (0..2)
        .map(|i| {
            Ok(c.subnet_env(i)?
                .subnet
                .ok_or_else(|| anyhow!("no subnet"))?
                .trunc()
                .to_string())
        })
        .collect::<Result<_>>()?;
    for i in 0..2 {
        c.stop_flanneld(i)?;
    }
    let keys = [wg_keypair()?, wg_keypair()?];
    let mut procs: Vec<Child> = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..2 {
        let name = format!("flrsbwg{}{i}", std::process::id() % 100_000);
        sockets.push(Socket(name.clone()));
        let mut cmd = Command::new("wireguard-go");
        cmd.args(["-f", &name]);
        let ns = c.lab().node(i).netns();
        procs.push(c.lab().spawn_in(ns, cmd)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !run_in(ns, ["ip", "link", "show", &name])?.status.success() {
            if Instant::now() > deadline {
                bail!("wireguard-go did not create {name}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let keyfile = c.lab().dir().join(format!("{name}.key"));
        std::fs::write(&keyfile, &keys[i].0)?;
        let j = 1 - i;
        let endpoint = format!("{}:51820", c.lab().node(j).ip());
        let key = keyfile.display().to_string();
        ok(
            ns,
            &[
                "wg",
                "set",
                &name,
                "listen-port",
                "51820",
                "private-key",
                &key,
                "peer",
                &keys[j].1,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &subnets[j],
            ],
        )?;
        ok(ns, &["ip", "link", "set", &name, "mtu", "1420", "up"])?;
        ok(ns, &["ip", "route", "replace", &subnets[j], "dev", &name])?;
    }
    // The first handshake: a few pings until one gets through.
    let client_pod = c.lab().pod("client").expect("pod").netns();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run_in(client_pod, ["ping", "-c", "1", "-W", "1", &server_ip])?
        .status
        .success()
    {
        if Instant::now() > deadline {
            bail!("no traffic through wireguard-go");
        }
    }
    let pids: Vec<u32> = procs.iter().map(Child::pid).collect();
    let sample = pod_to_pod(&c, &server_ip, &pids, WG_GO, o)?;
    drop(procs);
    drop(sockets);
    Ok(vec![sample])
}

fn run() -> Result<()> {
    let o = parse_args()?;
    let mut cases: Vec<(&str, Value, bool)> = vec![
        ("wireguard", json!({"Type": "wireguard"}), false),
        ("vxlan", json!({"Type": "vxlan"}), true),
        (WG_GO, json!({}), false),
    ];
    if !o.quick {
        cases.insert(
            1,
            (
                "wireguard, Offload=false",
                json!({"Type": "wireguard", "Offload": false}),
                false,
            ),
        );
    }
    let all = run_rounds(&cases, &o, &mut |name, o| {
        (name == WG_GO).then(|| wireguard_go_case(o))
    })?;
    let medians = print_table(&all, &o);
    let get = |case: &str| medians.iter().find(|(c, _)| c == case).map(|(_, g)| *g);
    if let (Some(w), Some(v), Some(g)) = (get("wireguard"), get("vxlan"), get(WG_GO)) {
        println!();
        println!(
            "wireguard / vxlan = {:.2} (goal >= 0.35): {}",
            w / v,
            if w / v >= 0.35 { "met" } else { "NOT met" }
        );
        println!(
            "wireguard / wireguard-go = {:.2} (goal >= 5): {}",
            w / g,
            if w / g >= 5.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench/wireguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
