//! The lab iperf3 harness shared by the throughput benchmarks (`bench/udp`,
//! `bench/wireguard`): a fresh 2-node cluster per case, one TCP stream from a pod on node 1 to
//! a pod on node 2, CPU of flanneld and of the machine, medians over interleaved rounds, and
//! the table the READMEs quote.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flannel_lab::{Child, Cluster, ClusterSpec, Netns, PodCni, run_in};
use serde_json::{Value, json};

/// One measured transfer.
pub struct Sample {
    pub case: String,
    pub gbits: f64,
    pub retransmits: u64,
    /// flanneld CPU-seconds per second, both nodes together (overlay cases).
    pub flanneld_cpu: Option<f64>,
    /// Whole-machine busy CPU-seconds per second.
    pub machine_cpu: f64,
}

pub struct Options {
    pub seconds: u64,
    pub rounds: usize,
    pub quick: bool,
}

pub fn parse_args() -> Result<Options> {
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
pub fn process_cpu(pid: u32) -> Result<f64> {
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

pub fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture flannel runs on.
    100.0
}

/// (busy, total) jiffies of the whole machine.
pub fn machine_cpu() -> Result<(f64, f64)> {
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
pub fn iperf_server(c: &Cluster, ns: &Netns) -> Result<Child> {
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
pub fn iperf_client(ns: &Netns, server: &str, seconds: u64) -> Result<(f64, u64)> {
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

/// A fresh 2-node cluster with `backend` and pods `client` (node 1) and `server` (node 2);
/// returns it with the server pod's address.
pub fn two_node_cluster(backend: &Value) -> Result<(Cluster, String)> {
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
    Ok((c, server_ip))
}

/// One iperf3 transfer from the `client` pod to the `server` pod, with the CPU of the
/// processes `pids` (the data path: both flanneld, or both wireguard-go) and of the machine.
pub fn pod_to_pod(
    c: &Cluster,
    server_ip: &str,
    pids: &[u32],
    case: &str,
    o: &Options,
) -> Result<Sample> {
    let server_pod = c.lab().pod("server").expect("pod").netns();
    let _server = iperf_server(c, server_pod)?;
    let client_pod = c.lab().pod("client").expect("pod").netns();
    let cpu0: f64 = pids.iter().map(|p| process_cpu(*p)).sum::<Result<f64>>()?;
    let m0 = machine_cpu()?;
    let start = Instant::now();
    let (gbits, retransmits) = iperf_client(client_pod, server_ip, o.seconds)?;
    let wall = start.elapsed().as_secs_f64();
    let cpu1: f64 = pids.iter().map(|p| process_cpu(*p)).sum::<Result<f64>>()?;
    let m1 = machine_cpu()?;
    Ok(Sample {
        case: case.to_string(),
        gbits,
        retransmits,
        flanneld_cpu: Some((cpu1 - cpu0) / wall),
        machine_cpu: (m1.0 - m0.0) / (m1.1 - m0.1) * cores(),
    })
}

/// One overlay case: a fresh 2-node cluster, iperf3 pod to pod across nodes.
pub fn overlay_case(
    name: &str,
    backend: Value,
    o: &Options,
    underlay: bool,
) -> Result<Vec<Sample>> {
    let (c, server_ip) = two_node_cluster(&backend)?;
    let pids: Vec<u32> = (0..2)
        .map(|i| {
            c.flanneld(i)
                .map(|p| p.pid())
                .ok_or_else(|| anyhow!("no flanneld"))
        })
        .collect::<Result<_>>()?;
    let mut samples = vec![pod_to_pod(&c, &server_ip, &pids, name, o)?];
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

pub fn cores() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A case the caller measures itself (by name); `None` for the ordinary overlay cases.
pub type CustomCase<'a> = dyn FnMut(&str, &Options) -> Option<Result<Vec<Sample>>> + 'a;

/// Runs every case `o.rounds` times, interleaved, printing each transfer on stderr.
pub fn run_rounds(
    cases: &[(&str, Value, bool)],
    o: &Options,
    custom: &mut CustomCase<'_>,
) -> Result<Vec<Sample>> {
    println!(
        "iperf3, 1 TCP stream, {} s per transfer, pod to pod across nodes; {} CPUs shared by everything; {} round(s), cases interleaved",
        o.seconds,
        cores(),
        o.rounds
    );
    let mut all: Vec<Sample> = Vec::new();
    for round in 1..=o.rounds {
        for (name, backend, underlay) in cases {
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            eprintln!(
                "== round {round}: {name} (load {})",
                load.split_whitespace().next().unwrap_or("?")
            );
            let s = match custom(name, o) {
                Some(r) => r,
                None => overlay_case(name, backend.clone(), o, *underlay),
            }
            .with_context(|| name.to_string())?;
            for x in &s {
                eprintln!("   {}: {:.2} Gbit/s", x.case, x.gbits);
            }
            all.extend(s);
        }
    }
    Ok(all)
}

/// Prints the table of medians per case (ratios against vxlan and the underlay) and, with
/// several rounds, every transfer; returns the median Gbit/s by case.
pub fn print_table(all: &[Sample], o: &Options) -> Vec<(String, f64)> {
    // Medians per case, in first-seen order.
    let mut names: Vec<String> = Vec::new();
    for s in all {
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
    summary.iter().map(|s| (s.case.clone(), s.gbits)).collect()
}
