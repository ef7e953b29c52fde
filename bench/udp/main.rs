//! Throughput benchmark of the udp backend against vxlan and the bare underlay, in one run.
//!
//! The issue's question: how fast is pod-to-pod TCP across nodes over flannel-rs's userspace
//! udp backend, compared with the kernel's VXLAN and with the underlay itself, on this machine
//! (2 vCPUs shared by iperf3's client and server, both nodes' softirqs and the proxies)?
//! Target: udp at least 0.5x of vxlan. This prints figures; it asserts only that every
//! transfer ran.
//!
//! For each case a fresh 2-node lab cluster is started (etcd, release flanneld per node, pods
//! through the Debian bridge plugin), an iperf3 server runs in the pod on node 2 and the client
//! in the pod on node 1: one TCP stream for `--seconds` (default 10) seconds. Cases:
//! * `udp`: the udp backend as shipped (TUN offloads, UDP GSO/GRO, one worker per CPU);
//! * `udp, Offload=false`: every packet a system call on each side, as upstream's proxy;
//! * `udp, Queues=1`: offloads on, one worker pair;
//! * `vxlan`: the kernel's VXLAN backend;
//! * `underlay`: iperf3 between the two nodes' `eth0` addresses (no overlay), in the vxlan
//!   cluster.
//!
//! CPU use: for the overlay cases, utime+stime of both nodes' flanneld processes during the
//! transfer (from `/proc/<pid>/stat`), and the whole machine's busy time (from `/proc/stat`),
//! both in CPU-seconds per second (1.00 = one core busy).
//!
//! With `--rounds R` the cases run R times, interleaved (udp, ..., vxlan, udp, ...), and the
//! table shows medians, so a burst of background load hits every case alike.
//!
//! Run through `bench/udp/run` (builds release binaries first), or directly:
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-udp cargo build --release --workspace --bins
//! FLANNEL_RS_BIN_DIR=/work/target-udp/release CARGO_TARGET_DIR=/work/target-udp \
//!     cargo bench -p flanneld --bench udp -- [--seconds N] [--rounds R] [--quick]
//! ```
//!
//! Needs root (namespaces), etcd 3.4, iperf3 and the Debian CNI plugins.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::{Value, json};

#[path = "../lab_iperf.rs"]
mod lab_iperf;

use lab_iperf::{parse_args, print_table, run_rounds};

fn run() -> Result<()> {
    let o = parse_args()?;
    let mut cases: Vec<(&str, Value, bool)> = vec![
        ("udp", json!({"Type": "udp"}), false),
        ("vxlan", json!({"Type": "vxlan"}), true),
    ];
    if !o.quick {
        cases.insert(
            1,
            (
                "udp, Offload=false (per-packet, as upstream)",
                json!({"Type": "udp", "Offload": false}),
                false,
            ),
        );
        cases.insert(
            2,
            ("udp, Queues=1", json!({"Type": "udp", "Queues": 1}), false),
        );
    }
    let all = run_rounds(&cases, &o, &mut |_, _| None)?;
    let medians = print_table(&all, &o);
    let get = |case: &str| medians.iter().find(|(c, _)| c == case).map(|(_, g)| *g);
    if let (Some(u), Some(v)) = (get("udp"), get("vxlan")) {
        println!();
        println!(
            "udp / vxlan = {:.2} (target >= 0.50): {}",
            u / v,
            if u / v >= 0.5 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench/udp: {e:#}");
            ExitCode::FAILURE
        }
    }
}
