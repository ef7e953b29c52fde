//! Kubernetes-mode scale benchmark: one flanneld (`--kube-subnet-mgr`, vxlan) against the API
//! emulator holding N generated, upstream-annotated Nodes with kubelet heartbeats.
//!
//! Issue 19's questions: how fast are N peers programmed, how much memory does flanneld hold
//! (steady and peak), what does it cost the API server per node and hour under heartbeat
//! churn, does a heartbeat (a change flannel does not read) cost a reconcile or CPU, and how
//! fast is an annotation change (a new VtepMAC) programmed, alone and 500 at once. It prints
//! figures and whether the goals are met; it fails only when the kernel does not end up
//! holding what it should.
//!
//! All in flannel-lab namespaces (removed by drop guards, also on panic):
//!
//! 1. a lab with one node (`n1`) and the underlay; `flannel-kube-emu` in the underlay on the
//!    gateway address with `--generate-nodes N --generate-network 10.128.0.0/9
//!    --heartbeat-interval H`; the node's own Node object (podCIDR 10.128.0.0/24);
//! 2. flanneld started on the node: time until a netlink poll sees all N routes, neighbours and
//!    FDB entries on `flannel.1`, and that time after flanneld logged the node list complete;
//!    VmRSS/VmHWM once converged and after the churn window;
//! 3. the heartbeat window (`--window` seconds): the emulator's `/metrics` request and byte
//!    counters, flanneld's CPU time and its `flannel_reconcile_total` before and after, scaled
//!    to one node and one hour;
//! 4. single annotation changes (`POST /emu/churn/annotations {"count":1}`), each timed from the
//!    emulator's commit to the new neighbour entry seen by `ip monitor neigh` in the node
//!    namespace; then `--burst` changes at once, timed to the last one programmed.
//!
//! Run through `bench/kube-scale` (builds the release binaries first). Without `--bench` (as
//! `cargo test --benches` runs it) the defaults drop to a quick end-to-end check.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use flannel_lab::{Child, Lab, Netns};
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{Netlink, RouteFilter};
use serde_json::{Value, json};

/// The device flanneld's vxlan backend programs.
const DEVICE: &str = "flannel.1";
/// The pod network: 32767 /24s besides the node's own.
const NETWORK: &str = "10.128.0.0/9";
/// The node under test's pod CIDR (the first /24, which the generator leaves free).
const OWN_CIDR: &str = "10.128.0.0/24";
/// flanneld's health and metrics port on the node.
const HEALTHZ_PORT: u16 = 10_256;
/// Upper bound on every wait.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

const USAGE: &str = "usage: kube_scale [--nodes N] [--heartbeat-seconds H] [--window SECS] [--samples M] [--burst B]";

#[derive(Debug, Clone, Copy)]
struct Options {
    nodes: usize,
    heartbeat: u64,
    window: u64,
    samples: usize,
    burst: usize,
}

impl Options {
    fn parse() -> Result<Options> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        let mut o = if full {
            Options {
                nodes: 5000,
                heartbeat: 10,
                window: 30,
                samples: 50,
                burst: 500,
            }
        } else {
            Options {
                nodes: 100,
                heartbeat: 2,
                window: 4,
                samples: 5,
                burst: 20,
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num = |name: &str| -> Result<u64> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow!("{name} needs a number\n{USAGE}"))
            };
            match a.as_str() {
                "--bench" => {}
                "--nodes" => o.nodes = usize::try_from(num("--nodes")?)?,
                "--heartbeat-seconds" => o.heartbeat = num("--heartbeat-seconds")?.max(1),
                "--window" => o.window = num("--window")?.max(1),
                "--samples" => o.samples = usize::try_from(num("--samples")?)?.max(1),
                "--burst" => o.burst = usize::try_from(num("--burst")?)?,
                "-h" | "--help" => bail!("{USAGE}"),
                // cargo bench passes filters and harness flags; ignore them.
                _ => {}
            }
        }
        ensure!(
            o.nodes >= 1 && o.nodes <= 32_000,
            "--nodes must be 1..=32000"
        );
        o.burst = o.burst.min(o.nodes);
        Ok(o)
    }
}

fn main() -> ExitCode {
    let opts = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube_scale failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// One HTTP/1.1 request from inside the namespace `ns`; returns status and body.
fn http(ns: &str, addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = run_in_netns(NetnsTarget::Named(ns.to_string()), move || async move {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })?
    .with_context(|| format!("{method} {path} on {addr}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The sum of the samples of `family` in Prometheus text whose label set contains `filter`.
fn metric_sum(text: &str, family: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident memory of a process (KiB): total, peak, and the anonymous part (heap, stacks;
/// the rest is mapped files, mostly flanneld's own code).
#[derive(Debug, Default, Clone, Copy)]
struct Rss {
    now: u64,
    peak: u64,
    anon: u64,
}

impl std::fmt::Display for Rss {
    /// `now (anonymous) / peak`, as the report's rows show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) / {}",
            mib(self.now),
            mib(self.anon),
            mib(self.peak)
        )
    }
}

/// VmRSS, VmHWM, RssAnon (KiB) and CPU time of `pid`.
fn proc_stats(pid: u32) -> Result<(Rss, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> u64 { rest.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // utime and stime in USER_HZ (100) ticks.
    let cpu = Duration::from_millis((ticks(11) + ticks(12)) * 10);
    let rss = Rss {
        now: field("VmRSS:"),
        peak: field("VmHWM:"),
        anon: field("RssAnon:"),
    };
    Ok((rss, cpu))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn unix_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Counts onlink routes, permanent neighbours and unicast FDB entries on the device.
fn count_in(ns: &str) -> Result<(usize, usize, usize)> {
    run_in_netns(NetnsTarget::Named(ns.to_string()), || async {
        let nl = Netlink::new()?;
        let Some(link) = nl.link_by_name(DEVICE).await? else {
            return Ok((0, 0, 0));
        };
        let routes = nl.routes(&RouteFilter::main().oif(link.index)).await?;
        let routes = routes.iter().filter(|r| r.onlink).count();
        let neigh = nl.neighbours(Some(link.index)).await?;
        let neigh = neigh.iter().filter(|e| e.state.is_permanent()).count();
        let fdb = nl.fdb_entries(Some(link.index)).await?;
        let fdb = fdb
            .iter()
            .filter_map(|e| e.as_fdb())
            .filter(|f| !f.mac.is_zero())
            .count();
        Ok::<_, anyhow::Error>((routes, neigh, fdb))
    })?
}

// ---------------------------------------------------------------------------------------------
// Neighbour monitor

/// `ip -o monitor neigh` in the node namespace: when each MAC first appeared in a new
/// neighbour entry (wall clock, ns since the epoch). Killed on drop.
struct NeighMonitor {
    child: std::process::Child,
    seen: Arc<Mutex<HashMap<String, u128>>>,
}

impl NeighMonitor {
    fn start(ns: &str) -> Result<NeighMonitor> {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "stdbuf", "-oL", "ip", "-o", "monitor", "neigh",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ip monitor neigh")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let shared = Arc::clone(&seen);
        // Ends when the pipe closes (the monitor is killed on drop).
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let at = unix_now();
                if line.starts_with("Deleted") {
                    continue;
                }
                let mut words = line.split_whitespace();
                while let Some(w) = words.next() {
                    if w == "lladdr"
                        && let Some(mac) = words.next()
                        && let Ok(mut m) = shared.lock()
                    {
                        m.entry(mac.to_string()).or_insert(at);
                    }
                }
            }
        });
        Ok(NeighMonitor { child, seen })
    }

    /// Waits (bounded) until every MAC in `macs` was seen; returns the latest time.
    fn wait_all(&self, macs: &[String], timeout: Duration) -> Result<Vec<u128>> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let m = self.seen.lock().map_err(|_| anyhow!("monitor poisoned"))?;
                let times: Vec<u128> = macs.iter().filter_map(|k| m.get(k).copied()).collect();
                if times.len() == macs.len() {
                    return Ok(times);
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{} of {} new neighbour entries seen within {timeout:?}",
                        times.len(),
                        macs.len()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for NeighMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The setup

/// The emulator in the underlay, its address and the node's Node object.
fn start_emulator(lab: &Lab, bin: &Path, opts: &Options) -> Result<(Child, SocketAddr)> {
    let addr_file = lab.dir().join("kube-emu.addr");
    let ul = lab.underlay();
    // Twice the heartbeat rate's worth of 20 s of changes, so a paginated list survives churn.
    let history = (opts.nodes * 20 / usize::try_from(opts.heartbeat)?).max(1000);
    let mut cmd = Command::new(bin.join("flannel-kube-emu"));
    cmd.arg(format!("--listen={}:0", ul.gateway()))
        .arg(format!("--address-file={}", addr_file.display()))
        .arg(format!("--history={history}"))
        .arg(format!("--generate-nodes={}", opts.nodes))
        .arg(format!("--generate-network={NETWORK}"))
        .arg(format!("--heartbeat-interval={}", opts.heartbeat));
    let mut child = lab.spawn_in(ul.netns(), cmd)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        child.ensure_running()?;
        if let Ok(t) = std::fs::read_to_string(&addr_file)
            && let Ok(a) = t.trim().parse::<SocketAddr>()
        {
            break a;
        }
        ensure!(
            Instant::now() < deadline,
            "the emulator did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((child, addr))
}

/// Registers the node under test and writes its kubeconfig and net-conf.json.
fn register_node(ns: &Netns, emu: SocketAddr, name: &str, ip: Ipv4Addr, dir: &Path) -> Result<()> {
    let node = json!({
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        "spec": { "podCIDR": OWN_CIDR, "podCIDRs": [OWN_CIDR] },
        "status": { "addresses": [{ "type": "InternalIP", "address": ip.to_string() }] },
    });
    let (st, body) = http(ns.name(), emu, "POST", "/api/v1/nodes", &node.to_string())?;
    ensure!(st == 201, "creating node {name}: {st} {body}");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{emu}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: node\ncurrent-context: lab\nusers:\n- name: node\n  user: {{}}\n"
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig)?;
    let conf = json!({ "Network": NETWORK, "Backend": { "Type": "vxlan" } });
    std::fs::write(dir.join("net-conf.json"), conf.to_string())?;
    Ok(())
}

fn start_flanneld(lab: &Lab, bin: &Path, name: &str, ip: Ipv4Addr) -> Result<Child> {
    let node = lab.node(0);
    let dir = node.dir();
    let mut cmd = Command::new(bin.join("flanneld"));
    cmd.arg("--kube-subnet-mgr")
        .arg(format!(
            "--kubeconfig-file={}",
            dir.join("kubeconfig").display()
        ))
        .arg(format!(
            "--net-config-path={}",
            dir.join("net-conf.json").display()
        ))
        .arg(format!(
            "--subnet-file={}",
            dir.join("subnet.env").display()
        ))
        .arg("--iface=eth0")
        .arg(format!("--healthz-ip={ip}"))
        .arg(format!("--healthz-port={HEALTHZ_PORT}"))
        .env("NODE_NAME", name);
    Ok(lab.spawn_in(node.netns(), cmd)?)
}

// ---------------------------------------------------------------------------------------------
// The run

/// Everything measured, for the report.
#[derive(Debug, Default)]
struct Figures {
    converged: Duration,
    after_list: Option<Duration>,
    rss_converged: Rss,
    /// API requests (lists: pages), bytes from start until 2 s after converging.
    start_requests: f64,
    start_lists: f64,
    start_bytes: f64,
    rss_after_churn: Rss,
    window: Duration,
    requests: f64,
    bytes: f64,
    watch_events: f64,
    cpu: Duration,
    reconciles_peers: f64,
    reconciles_all: f64,
    single: Vec<Duration>,
    burst: Option<Duration>,
}

fn run(opts: &Options) -> Result<()> {
    let bin = flannel_lab::bin_dir()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# flanneld Kubernetes-mode scale benchmark: {} generated nodes, heartbeat every {} s, kernel {}, {} CPUs",
        opts.nodes,
        opts.heartbeat,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("binaries: {}", bin.display());
    println!("load average at start: {}", loadavg());
    let lab = Lab::builder().nodes(1).build()?;
    let ul_ns = lab.underlay().netns().name().to_string();
    let node = lab.node(0);
    let node_ns = node.netns().name().to_string();
    let t = Instant::now();
    let (emu_child, emu) = start_emulator(&lab, &bin, opts)?;
    println!(
        "emulator up with {} nodes in {}",
        opts.nodes,
        ms(t.elapsed())
    );
    register_node(lab.underlay().netns(), emu, "n1", node.ip(), node.dir())?;
    let monitor = NeighMonitor::start(&node_ns)?;

    let mut f = Figures::default();
    let start = Instant::now();
    let mut flanneld = start_flanneld(&lab, &bin, "n1", node.ip())?;
    let pid = flanneld.pid();
    let want = opts.nodes;
    let deadline = start + STEP_TIMEOUT;
    // When the log first said the node list is complete (seen by this 20 ms poll).
    let mut list_done: Option<Instant> = None;
    loop {
        flanneld.ensure_running()?;
        if list_done.is_none() && flanneld.log().contains("node list complete") {
            list_done = Some(Instant::now());
        }
        let c = count_in(&node_ns)?;
        if c == (want, want, want) {
            f.converged = start.elapsed();
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not converged within {STEP_TIMEOUT:?}: {c:?}; log tail:\n{}",
            flanneld.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    f.after_list = list_done.map(|at| (start + f.converged).saturating_duration_since(at));
    println!(
        "converged: {} after start ({want} routes, neighbours, fdb entries)",
        ms(f.converged)
    );
    std::thread::sleep(Duration::from_secs(2));
    f.rss_converged = proc_stats(pid)?.0;
    let e = http(&ul_ns, emu, "GET", "/metrics", "")?.1;
    f.start_requests = metric_sum(&e, "flannel_kube_emu_requests_total", "");
    f.start_lists = metric_sum(&e, "flannel_kube_emu_requests_total", "verb=\"list\"");
    f.start_bytes = metric_sum(&e, "flannel_kube_emu_response_bytes_total", "");

    heartbeat_window(opts, &mut f, &ul_ns, &node_ns, emu, node.ip(), pid)?;
    annotation_changes(opts, &mut f, &ul_ns, emu, &monitor)
        .with_context(|| format!("flanneld's log ends:\n{}", flanneld.log_tail(30)))?;
    flanneld.ensure_running()?;
    report(opts, &f);
    drop(monitor);
    drop(flanneld);
    drop(emu_child);
    Ok(())
}

/// The heartbeat window: API requests and bytes, flanneld CPU and reconciles.
fn heartbeat_window(
    opts: &Options,
    f: &mut Figures,
    ul_ns: &str,
    node_ns: &str,
    emu: SocketAddr,
    ip: Ipv4Addr,
    pid: u32,
) -> Result<()> {
    let fl = SocketAddr::from((ip, HEALTHZ_PORT));
    let scrape = || -> Result<(String, String)> {
        Ok((
            http(ul_ns, emu, "GET", "/metrics", "")?.1,
            http(node_ns, fl, "GET", "/metrics", "")?.1,
        ))
    };
    let (e0, f0) = scrape()?;
    let (_, cpu0) = proc_stats(pid)?;
    let t0 = Instant::now();
    println!("heartbeat window: {} s ...", opts.window);
    std::thread::sleep(Duration::from_secs(opts.window));
    let (e1, f1) = scrape()?;
    let (rss, cpu1) = proc_stats(pid)?;
    f.window = t0.elapsed();
    f.cpu = cpu1.saturating_sub(cpu0);
    f.rss_after_churn = rss;
    let d = |a: &str, b: &str, fam: &str, filter: &str| {
        metric_sum(b, fam, filter) - metric_sum(a, fam, filter)
    };
    f.requests = d(&e0, &e1, "flannel_kube_emu_requests_total", "");
    f.bytes = d(&e0, &e1, "flannel_kube_emu_response_bytes_total", "");
    f.watch_events = d(
        &e0,
        &e1,
        "flannel_kube_emu_response_frames_total",
        "verb=\"watch\"",
    );
    f.reconciles_peers = d(
        &f0,
        &f1,
        "flannel_reconcile_total",
        "trigger=\"peers changed\"",
    );
    f.reconciles_all = d(&f0, &f1, "flannel_reconcile_total", "");
    Ok(())
}

/// Single annotation changes, then a burst.
fn annotation_changes(
    opts: &Options,
    f: &mut Figures,
    ul_ns: &str,
    emu: SocketAddr,
    monitor: &NeighMonitor,
) -> Result<()> {
    let churn = |k: usize| -> Result<(u128, Vec<String>)> {
        let (st, body) = http(
            ul_ns,
            emu,
            "POST",
            "/emu/churn/annotations",
            &json!({ "count": k }).to_string(),
        )?;
        ensure!(st == 200, "churn: {st} {body}");
        let v: Value = serde_json::from_str(&body)?;
        let at = v["unixNanos"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let macs = v["changes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["vtepMAC"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok((at, macs))
    };
    for _ in 0..opts.samples {
        let (at, macs) = churn(1)?;
        let seen = monitor.wait_all(&macs, Duration::from_secs(10))?;
        let last = seen.into_iter().max().unwrap_or(at);
        f.single.push(Duration::from_nanos(u64::try_from(
            last.saturating_sub(at),
        )?));
        std::thread::sleep(Duration::from_millis(100));
    }
    if opts.burst > 0 {
        std::thread::sleep(Duration::from_secs(1));
        let (at, macs) = churn(opts.burst)?;
        let seen = monitor.wait_all(&macs, Duration::from_secs(60))?;
        let last = seen.into_iter().max().unwrap_or(at);
        f.burst = Some(Duration::from_nanos(u64::try_from(
            last.saturating_sub(at),
        )?));
    }
    Ok(())
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s.get(i).copied().unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn report(opts: &Options, f: &Figures) {
    let secs = f.window.as_secs_f64().max(1e-9);
    let per_hour = 3600.0 / secs;
    let cpu_pct = f.cpu.as_secs_f64() / secs * 100.0;
    let p50 = percentile(&f.single, 0.5);
    let p99 = percentile(&f.single, 0.99);
    let goal = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "| {} nodes, heartbeat every {} s | value | goal |",
        opts.nodes, opts.heartbeat
    );
    println!("|---|---|---|");
    println!(
        "| all peers programmed, from start | {} | |",
        ms(f.converged)
    );
    match f.after_list {
        Some(d) => println!(
            "| all peers programmed, after the list completed | {} | < 1 s: {} |",
            ms(d),
            goal(d < Duration::from_secs(1))
        ),
        None => println!(
            "| all peers programmed, after the list completed | (no \"node list complete\" log line) | < 1 s |"
        ),
    }
    println!(
        "| start-up API traffic (until 2 s after converging) | {:.0} requests ({:.0} list pages), {:.1} MiB | |",
        f.start_requests,
        f.start_lists,
        f.start_bytes / 1024.0 / 1024.0
    );
    println!(
        "| RSS (anonymous) / peak (VmHWM), converged | {} | peak < 24 MiB: {} |",
        f.rss_converged,
        goal(f.rss_converged.peak < 24 * 1024)
    );
    println!(
        "| RSS (anonymous) / peak after {secs:.0} s of heartbeats | {} | steady < 18 MiB: {} |",
        f.rss_after_churn,
        goal(f.rss_after_churn.now < 18 * 1024)
    );
    println!(
        "| API requests per node per hour (new requests only when the watch restarts) | {:.1} | |",
        f.requests * per_hour
    );
    println!(
        "| bytes received per node per hour | {:.1} MiB | |",
        f.bytes * per_hour / 1024.0 / 1024.0
    );
    println!(
        "| watch events per node per hour | {:.0} | |",
        f.watch_events * per_hour
    );
    println!(
        "| flanneld CPU during heartbeats | {:.2} % of a core | < 2 %: {} |",
        cpu_pct,
        goal(cpu_pct < 2.0)
    );
    println!(
        "| reconciles during heartbeats (peers changed / all) | {:.0} / {:.0} | 0 peers changed: {} |",
        f.reconciles_peers,
        f.reconciles_all,
        goal(f.reconciles_peers == 0.0)
    );
    println!(
        "| single annotation change to programmed, p50 / p99 ({} samples) | {} / {} | p99 < 100 ms: {} |",
        f.single.len(),
        ms(p50),
        ms(p99),
        goal(p99 < Duration::from_millis(100))
    );
    if let Some(b) = f.burst {
        println!(
            "| {} annotation changes at once, all programmed | {} | < 0.5 s: {} |",
            opts.burst,
            ms(b),
            goal(b < Duration::from_millis(500))
        );
    }
    println!();
    println!("load average at end: {}", loadavg());
}
