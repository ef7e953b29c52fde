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

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flannel_lab::{Child, Cluster, ClusterSpec, Netns, PodCni, run_in};
use serde_json::{Value, json};

/// One measured transfer.
struct Sample {
    case: String,
    gbits: f64,
    retransmits: u64,
    /// flanneld CPU-seconds per second, both nodes together (overlay cases).
    flanneld_cpu: Option<f64>,
    /// Whole-machine busy CPU-seconds per second.
    machine_cpu: f64,
}

struct Options {
    seconds: u64,
    rounds: usize,
    quick: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        seconds: 10,
        rounds: 1,
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                o.seconds = args
                    .next()
                    .ok_or_else(|| anyhow!("--seconds needs a value"))?
                    .parse()
                    .context("--seconds")?;
            }
            "--rounds" => {
                o.rounds = args
                    .next()
                    .ok_or_else(|| anyhow!("--rounds needs a value"))?
                    .parse()
                    .context("--rounds")?;
            }
            "--quick" => o.quick = true,
            // cargo bench passes --bench; ignore harness flags.
            "--bench" => {}
            other if other.starts_with("--") => bail!("unknown flag {other}"),
            _ => {}
        }
    }
    if !(1..=120).contains(&o.seconds) {
        bail!("--seconds must be 1..120");
    }
    if !(1..=10).contains(&o.rounds) {
        bail!("--rounds must be 1..10");
    }
    Ok(o)
}

/// Sum of utime+stime of a process, in seconds.
fn process_cpu(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture flannel runs on.
    100.0
}

/// (busy, total) jiffies of the whole machine.
fn machine_cpu() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Ok((total - idle, total))
}

/// Starts `iperf3 -s` in `ns` and waits until it listens.
fn iperf_server(c: &Cluster, ns: &Netns) -> Result<Child> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1"]);
    let child = c.lab().spawn_in(ns, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_in(ns, ["ss", "-tln"])?;
        if String::from_utf8_lossy(&out.stdout).contains(":5201") {
            return Ok(child);
        }
        if Instant::now() > deadline {
            bail!("iperf3 server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the iperf3 client in `ns` against `server` and returns (Gbit/s, retransmits).
fn iperf_client(ns: &Netns, server: &str, seconds: u64) -> Result<(f64, u64)> {
    let t = seconds.to_string();
    let out = run_in(ns, ["iperf3", "-c", server, "-t", &t, "-J"])?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 output: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("no sum_received in iperf3 output"))?;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retr))
}

/// One overlay case: a fresh 2-node cluster, iperf3 pod to pod across nodes.
fn overlay_case(name: &str, backend: Value, o: &Options, underlay: bool) -> Result<Vec<Sample>> {
    let t = backend["Type"].as_str().unwrap_or("vxlan").to_string();
    let spec = ClusterSpec {
        nodes: 2,
        backend: t,
        pod_cni: PodCni::Bridge,
        healthz: false,
        extra_config: json!({ "Backend": backend }),
        ..Default::default()
    };
    let mut c = Cluster::start(spec).context("starting the cluster")?;
    c.add_pod(0, "client")?;
    let server_ip = c.add_pod(1, "server")?.to_string();
    let pids: Vec<u32> = (0..2)
        .map(|i| {
            c.flanneld(i)
                .map(|p| p.pid())
                .ok_or_else(|| anyhow!("no flanneld"))
        })
        .collect::<Result<_>>()?;

    let mut samples = Vec::new();
    {
        let server_pod = c.lab().pod("server").expect("pod").netns();
        let _server = iperf_server(&c, server_pod)?;
        // Warm-up: ARP, TCP slow start, thread wake-ups.
        let client_pod = c.lab().pod("client").expect("pod").netns();
        let cpu0: f64 = pids.iter().map(|p| process_cpu(*p)).sum::<Result<f64>>()?;
        let m0 = machine_cpu()?;
        let start = Instant::now();
        let (gbits, retransmits) = iperf_client(client_pod, &server_ip, o.seconds)?;
        let wall = start.elapsed().as_secs_f64();
        let cpu1: f64 = pids.iter().map(|p| process_cpu(*p)).sum::<Result<f64>>()?;
        let m1 = machine_cpu()?;
        samples.push(Sample {
            case: name.to_string(),
            gbits,
            retransmits,
            flanneld_cpu: Some((cpu1 - cpu0) / wall),
            machine_cpu: (m1.0 - m0.0) / (m1.1 - m0.1) * cores(),
        });
    }
    if underlay {
        let server_node = c.lab().node(1).netns();
        let _server = iperf_server(&c, server_node)?;
        let m0 = machine_cpu()?;
        let (gbits, retransmits) = iperf_client(
            c.lab().node(0).netns(),
            &c.lab().node(1).ip().to_string(),
            o.seconds,
        )?;
        let m1 = machine_cpu()?;
        samples.push(Sample {
            case: "underlay (node to node)".into(),
            gbits,
            retransmits,
            flanneld_cpu: None,
            machine_cpu: (m1.0 - m0.0) / (m1.1 - m0.1) * cores(),
        });
    }
    Ok(samples)
}

fn cores() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

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
    println!(
        "iperf3, 1 TCP stream, {} s per transfer, pod to pod across nodes; {} CPUs shared by everything; {} round(s), cases interleaved",
        o.seconds,
        cores(),
        o.rounds
    );
    let mut all: Vec<Sample> = Vec::new();
    for round in 1..=o.rounds {
        for (name, backend, underlay) in &cases {
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            eprintln!(
                "== round {round}: {name} (load {})",
                load.split_whitespace().next().unwrap_or("?")
            );
            let s = overlay_case(name, backend.clone(), &o, *underlay)
                .with_context(|| name.to_string())?;
            for x in &s {
                eprintln!("   {}: {:.2} Gbit/s", x.case, x.gbits);
            }
            all.extend(s);
        }
    }
    // Medians per case, in first-seen order.
    let mut names: Vec<String> = Vec::new();
    for s in &all {
        if !names.contains(&s.case) {
            names.push(s.case.clone());
        }
    }
    let summary: Vec<Sample> = names
        .iter()
        .map(|n| {
            let of: Vec<&Sample> = all.iter().filter(|s| &s.case == n).collect();
            let cpu: Vec<f64> = of.iter().filter_map(|s| s.flanneld_cpu).collect();
            Sample {
                case: n.clone(),
                gbits: median(of.iter().map(|s| s.gbits).collect()),
                retransmits: of.iter().map(|s| s.retransmits).sum::<u64>() / of.len() as u64,
                flanneld_cpu: (!cpu.is_empty()).then(|| median(cpu)),
                machine_cpu: median(of.iter().map(|s| s.machine_cpu).collect()),
            }
        })
        .collect();
    let get = |case: &str| summary.iter().find(|s| s.case == case).map(|s| s.gbits);
    let vxlan = get("vxlan");
    let underlay = get("underlay (node to node)");
    println!();
    println!(
        "| case | Gbit/s{} | vs vxlan | vs underlay | retransmits | flanneld CPU (both nodes) | machine CPU busy |",
        if o.rounds > 1 { " (median)" } else { "" }
    );
    println!("|---|---|---|---|---|---|---|");
    for s in &summary {
        let ratio = |base: Option<f64>| {
            base.map(|b| format!("{:.2}x", s.gbits / b))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "| {} | {:.2} | {} | {} | {} | {} | {:.2} of {:.0} |",
            s.case,
            s.gbits,
            ratio(vxlan),
            ratio(underlay),
            s.retransmits,
            s.flanneld_cpu
                .map(|c| format!("{c:.2} cores"))
                .unwrap_or_else(|| "-".into()),
            s.machine_cpu,
            cores()
        );
    }
    if o.rounds > 1 {
        println!();
        for n in &names {
            let v: Vec<String> = all
                .iter()
                .filter(|s| &s.case == n)
                .map(|s| format!("{:.2}", s.gbits))
                .collect();
            println!("{n}: {}", v.join(", "));
        }
    }
    if let (Some(u), Some(v)) = (get("udp"), vxlan) {
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
