//! Control-plane convergence benchmark: one node against N peer leases in etcd.
//!
//! The issue's question: how long does release flanneld take to program a node for N remote
//! vxlan peers (a permanent neighbour, an FDB entry and an onlink route each, so 3N entries),
//! compared with the fastest stock tool, `ip -batch` + `bridge -batch`, applying the same 3N
//! entries in the same run? And how much memory does it hold at that scale? Targets: reconcile
//! within 2x of `ip -batch`, RSS under 20 MiB at 5000 peers. This prints figures; it asserts only
//! that the kernel ends up holding what it should.
//!
//! Everything happens inside namespaces built with flannel-lab (cleaned up by its guards, also
//! on panic):
//!
//! 1. a lab with one node and the underlay; etcd in the underlay on the gateway address; the
//!    network config `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}`;
//! 2. N peer leases written straight into etcd in upstream's format (key
//!    `/coreos.com/network/subnets/10.X.Y.0-24`, value built by `LeaseAttrs::to_json`), in
//!    transactions of 128 puts, several in flight, all on one long etcd lease (or one each with
//!    `--lease-per-peer`, as a real cluster has);
//! 3. per round: `ip -batch`/`bridge -batch` of the 3N entries on an equivalent `flannel.1` in a
//!    fresh namespace (timed per command), then a cold flanneld start on the node (previous
//!    `flannel.1` deleted first): time until the kernel holds all 3N entries (a netlink poll
//!    from a thread inside the node namespace), the reconcile duration flanneld logs, the start-up
//!    phases from its log timestamps, RSS/HWM and CPU time;
//! 4. the steady state: the next repair tick's (no-op) reconcile duration and RSS/HWM after it;
//! 5. a restart: SIGTERM, start again, time until the first reconcile (expected: 0 added,
//!    0 removed) and its duration.
//!
//! Run through `bench/converge` (builds the release binaries first), or directly:
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release --workspace --bins
//! FLANNEL_RS_BIN_DIR=/work/target-bench/release CARGO_TARGET_DIR=/work/target-bench \
//!     cargo bench -p flanneld --bench converge -- [--peers N] [--rounds R] [--lease-per-peer]
//! ```
//!
//! Needs root (namespaces), etcd 3.4 and iproute2.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use flannel_lab::{Child, EtcdOptions, Lab, Netns, Node, check, describe, run_command};
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns, spawn_in_netns};
use flannel_netlink::{MacAddr, Netlink, RouteFilter};
use flannel_types::{LeaseAttrs, NetConfig, RawJson, SubnetKey};
use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use regex::Regex;

/// The network config of the benchmark: a /8 so thousands of /24 subnets fit.
const NET_CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
/// Upstream's default etcd prefix.
const PREFIX: &str = "/coreos.com/network";
/// The vxlan device flanneld creates for VNI 1.
const DEVICE: &str = "flannel.1";
/// Peers when run without `--bench` (by `cargo test --benches`): a quick end-to-end check.
const SMOKE_PEERS: u32 = 100;
/// Most peers the address plan below can express.
const MAX_PEERS: u32 = 64_000;
/// etcd 3.4's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// Transactions (or lease grants) in flight while writing leases.
const WRITES_IN_FLIGHT: usize = 8;
/// TTL of the etcd lease(s) the peer keys hang on: long enough never to expire during a run.
const LEASE_TTL_SECS: i64 = 24 * 3600;
/// Bound on every single step that waits (etcd writes, convergence, log lines).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a repair tick may take to show up in the log (flanneld's interval is 10 s after a
/// pass that changed things, at most 60 s).
const REPAIR_TIMEOUT: Duration = Duration::from_secs(70);
/// How long one `ip -batch` / `bridge -batch` command may run.
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Route protocol flannel-rs stamps on its routes (`proto 70`), used by the baseline too.
const FLANNEL_PROTO: u8 = 70;

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("converge: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("converge: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: converge [--peers N] [--rounds R] [--lease-per-peer] [--poll-ms MS]
  --peers N         peer leases to write into etcd (default 5000, at most 64000); a bare number works too
  --rounds R        cold-start rounds, each preceded by an ip -batch round (default 3)
  (without --bench, which cargo bench passes, the defaults are 100 peers and 1 round: a smoke run)
  --lease-per-peer  one etcd lease per peer key, as a real cluster has (default: one shared lease)
  --poll-ms MS      kernel poll interval while waiting for convergence (default 20)";

/// Command-line options (`cargo bench` appends `--bench`, which is ignored).
#[derive(Debug, Clone)]
struct Options {
    peers: u32,
    rounds: usize,
    lease_per_peer: bool,
    poll: Duration,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Option<Options>> {
        let args: Vec<String> = args.collect();
        // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then a small
        // run checks the benchmark still works without taking a minute.
        let bench = args.iter().any(|a| a == "--bench");
        let mut o = Options {
            peers: if bench { 5000 } else { SMOKE_PEERS },
            rounds: if bench { 3 } else { 1 },
            lease_per_peer: false,
            poll: Duration::from_millis(20),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |what: &str| -> Result<String> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| anyhow!("{what} needs a value"))
            };
            match name.as_str() {
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                "--peers" => o.peers = value("--peers")?.parse().context("--peers")?,
                "--rounds" => o.rounds = value("--rounds")?.parse().context("--rounds")?,
                "--poll-ms" => {
                    o.poll =
                        Duration::from_millis(value("--poll-ms")?.parse().context("--poll-ms")?)
                }
                "--lease-per-peer" => o.lease_per_peer = true,
                n if n.parse::<u32>().is_ok() => o.peers = n.parse()?,
                other => bail!("unknown argument {other:?}"),
            }
        }
        ensure!(
            (1..=MAX_PEERS).contains(&o.peers),
            "--peers must be 1..={MAX_PEERS}"
        );
        ensure!((1..=20).contains(&o.rounds), "--rounds must be 1..=20");
        ensure!(
            (1..=1000).contains(&o.poll.as_millis()),
            "--poll-ms must be 1..=1000"
        );
        Ok(Some(o))
    }
}

// ---------------------------------------------------------------------------------------------
// The peers

/// One remote node as its lease describes it.
#[derive(Debug, Clone, Copy)]
struct Peer {
    subnet: Ipv4Net,
    public: Ipv4Addr,
    mac: MacAddr,
}

/// Peer `i`: subnet 10.(1 + i/256).(i%256).0/24 (the node's own lease lands below 10.1.0.0,
/// SubnetMin being 10.0.1.0), public IP 198.19.(i/250).(1 + i%250) (outside the lab's
/// 198.18.0.0/24 underlay; nothing needs to answer there), VTEP MAC 0e:b5:00:xx:xx:xx (locally
/// administered, unicast, unique).
fn peer(i: u32) -> Peer {
    let subnet = Ipv4Addr::new(10, (1 + i / 256) as u8, (i % 256) as u8, 0);
    let b = i.to_be_bytes();
    Peer {
        subnet: Ipv4Net::new(subnet, 24).expect("/24 is a valid prefix"),
        public: Ipv4Addr::new(198, 19, (i / 250) as u8, (1 + i % 250) as u8),
        mac: MacAddr([0x0e, 0xb5, 0, b[1], b[2], b[3]]),
    }
}

/// The etcd key of a peer's lease.
fn lease_key(p: &Peer) -> String {
    format!("{PREFIX}/subnets/{}", SubnetKey::v4(p.subnet))
}

/// The lease value exactly as upstream's vxlan backend publishes it.
fn lease_value(p: &Peer) -> Result<String> {
    let data = RawJson::parse(&format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, p.mac))
        .map_err(|e| anyhow!("backend data: {e}"))?;
    Ok(LeaseAttrs {
        public_ip: p.public,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(data),
        backend_v6_data: None,
    }
    .to_json())
}

/// Writes every peer lease into etcd from a thread inside the etcd namespace; returns the number
/// of keys under the subnets prefix afterwards and how many etcd leases were granted.
async fn write_leases(endpoint: String, n: u32, per_peer: bool) -> Result<(i64, usize)> {
    let client = Client::connect([endpoint.as_str()], None)
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))?;
    let ids: Vec<i64> = if per_peer {
        futures::stream::iter(0..n)
            .map(|_| {
                let mut c = client.clone();
                async move { c.lease_grant(LEASE_TTL_SECS, None).await.map(|r| r.id()) }
            })
            .buffered(WRITES_IN_FLIGHT * 4)
            .try_collect()
            .await
            .context("granting etcd leases")?
    } else {
        let id = client
            .clone()
            .lease_grant(LEASE_TTL_SECS, None)
            .await
            .context("granting the etcd lease")?
            .id();
        vec![id; n as usize]
    };
    let mut txns = Vec::new();
    let all: Vec<u32> = (0..n).collect();
    for chunk in all.chunks(TXN_OPS) {
        let mut ops = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let p = peer(i);
            ops.push(TxnOp::put(
                lease_key(&p),
                lease_value(&p)?,
                Some(PutOptions::new().with_lease(ids[i as usize])),
            ));
        }
        txns.push(Txn::new().and_then(ops));
    }
    futures::stream::iter(txns)
        .map(|t| {
            let mut c = client.clone();
            async move { c.txn(t).await }
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .try_for_each(|r| async move {
            if r.succeeded() {
                Ok(())
            } else {
                Err(etcd_client::Error::InvalidArgs("txn failed".into()))
            }
        })
        .await
        .context("writing peer leases")?;
    let count = client
        .clone()
        .get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .context("counting the leases")?
        .count();
    let mut grants = ids;
    grants.dedup();
    Ok((count, grants.len()))
}

// ---------------------------------------------------------------------------------------------
// Kernel state

/// Entries on the vxlan device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    routes: usize,
    neigh: usize,
    fdb: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} routes, {} neighbours, {} fdb",
            self.routes, self.neigh, self.fdb
        )
    }
}

/// Counts onlink routes, permanent neighbours and unicast FDB entries on `dev`. When `cheap`,
/// the neighbour and FDB tables are only dumped once the route count reaches `want` (routes are
/// the last thing flanneld writes), so polling costs one route dump.
async fn count(nl: &Netlink, dev: &str, want: usize, cheap: bool) -> Result<Option<Counts>> {
    let Some(link) = nl.link_by_name(dev).await? else {
        return Ok(None);
    };
    let mut c = Counts {
        routes: nl
            .routes(&RouteFilter::main().oif(link.index))
            .await?
            .iter()
            .filter(|r| r.onlink)
            .count(),
        ..Counts::default()
    };
    if cheap && c.routes != want {
        return Ok(Some(c));
    }
    c.neigh = nl
        .neighbours(Some(link.index))
        .await?
        .iter()
        .filter(|e| e.state.is_permanent())
        .count();
    c.fdb = nl
        .fdb_entries(Some(link.index))
        .await?
        .iter()
        .filter_map(|e| e.as_fdb())
        .filter(|f| !f.mac.is_zero())
        .count();
    Ok(Some(c))
}

/// Counts the entries once, from a thread inside `ns`.
fn count_in(ns: &str, want: usize) -> Result<Option<Counts>> {
    let ns = ns.to_string();
    run_in_netns(NetnsTarget::Named(ns), move || async move {
        let nl = Netlink::new()?;
        count(&nl, DEVICE, want, false).await
    })?
}

/// When the poller first saw all entries.
#[derive(Debug, Clone, Copy)]
struct Converged {
    at: Instant,
    polls: u32,
    counts: Counts,
}

/// The poller thread: its namespace setup can fail, then its poll.
type Poller = std::thread::JoinHandle<std::result::Result<Result<Converged>, NetnsError>>;

/// Polls the device's entries every `interval` from a thread inside `ns` until all `want` of
/// each kind are present, `deadline` passes, or `abort` is set.
fn spawn_poller(
    ns: &str,
    want: usize,
    interval: Duration,
    deadline: Instant,
    abort: Arc<AtomicBool>,
) -> Result<Poller> {
    let ns = ns.to_string();
    Ok(spawn_in_netns(
        NetnsTarget::Named(ns),
        move || async move {
            let nl = Netlink::new()?;
            let full = Counts {
                routes: want,
                neigh: want,
                fdb: want,
            };
            let mut polls = 0u32;
            let mut last = None;
            loop {
                polls += 1;
                let c = count(&nl, DEVICE, want, true).await?;
                let now = Instant::now();
                if c == Some(full) {
                    return Ok(Converged {
                        at: now,
                        polls,
                        counts: full,
                    });
                }
                last = c.or(last);
                if abort.load(Ordering::Relaxed) {
                    bail!("aborted (last seen: {last:?})");
                }
                if now >= deadline {
                    bail!(
                        "{DEVICE} did not reach {want} of each within {STEP_TIMEOUT:?} (last seen: {})",
                        last.map(|c| c.to_string())
                            .unwrap_or_else(|| "no device".into())
                    );
                }
                tokio::time::sleep(interval).await;
            }
        },
    )?)
}

// ---------------------------------------------------------------------------------------------
// The ip -batch baseline

/// The three batch files (neighbours, FDB, routes) for all peers.
struct BatchFiles {
    neigh: PathBuf,
    fdb: PathBuf,
    route: PathBuf,
}

fn write_batch_files(dir: &Path, n: u32) -> Result<BatchFiles> {
    let (mut neigh, mut fdb, mut route) = (String::new(), String::new(), String::new());
    for i in 0..n {
        let p = peer(i);
        let vtep = p.subnet.network();
        writeln!(
            neigh,
            "neigh replace {vtep} lladdr {} dev {DEVICE} nud permanent",
            p.mac
        )?;
        writeln!(
            fdb,
            "fdb replace {} dev {DEVICE} self permanent dst {}",
            p.mac, p.public
        )?;
        writeln!(
            route,
            "route replace {} via {vtep} dev {DEVICE} onlink proto {FLANNEL_PROTO}",
            p.subnet
        )?;
    }
    let files = BatchFiles {
        neigh: dir.join("neigh.batch"),
        fdb: dir.join("fdb.batch"),
        route: dir.join("route.batch"),
    };
    for (path, text) in [
        (&files.neigh, neigh),
        (&files.fdb, fdb),
        (&files.route, route),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files)
}

/// Wall-clock times of the three baseline commands.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    neigh: Duration,
    fdb: Duration,
    route: Duration,
}

impl Baseline {
    fn total(&self) -> Duration {
        self.neigh + self.fdb + self.route
    }
}

/// Builds a namespace shaped like the node (eth0 with the node's address and default route, a
/// `flannel.1` as flanneld creates it) and applies the batch files in flanneld's order.
fn baseline_round(files: &BatchFiles, n: u32, own: Ipv4Addr) -> Result<Baseline> {
    let ns = Netns::new("ipbatch")?;
    ns.ip_batch(&format!(
        "link add eth0 type veth peer name eth0p\n\
         link set eth0p up\n\
         addr add 198.18.0.1/24 dev eth0\n\
         link set eth0 up\n\
         route add default via 198.18.0.254\n\
         link add {DEVICE} type vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472 nolearning\n\
         link set {DEVICE} mtu 1450\n\
         addr add {own}/32 dev {DEVICE}\n\
         link set {DEVICE} up\n"
    ))?;
    let timed = |tool: &str, file: &Path| -> Result<Duration> {
        let mut cmd = Command::new(tool);
        cmd.arg("-n").arg(ns.name()).arg("-batch").arg(file);
        let line = describe(&cmd);
        let t = Instant::now();
        let out = run_command(cmd, None, BATCH_TIMEOUT)?;
        let took = t.elapsed();
        check(line, out)?;
        Ok(took)
    };
    let b = Baseline {
        neigh: timed("ip", &files.neigh)?,
        fdb: timed("bridge", &files.fdb)?,
        route: timed("ip", &files.route)?,
    };
    let want = n as usize;
    let got = count_in(ns.name(), want)?;
    let full = Counts {
        routes: want,
        neigh: want,
        fdb: want,
    };
    ensure!(
        got == Some(full),
        "ip -batch left {got:?}, expected {want} of each"
    );
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// flanneld's log

/// One parsed `reconcile (...)` summary line.
#[derive(Debug, Clone)]
struct Reconcile {
    why: String,
    peers: usize,
    added: usize,
    removed: usize,
    failed: usize,
    took: Duration,
    /// When the line was logged, relative to the process start.
    at: Option<f64>,
}

impl Reconcile {
    fn is_noop(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.failed == 0
    }
}

/// flanneld's log, read incrementally.
struct Log {
    path: PathBuf,
    /// Wall clock at spawn, to turn log timestamps into offsets from the start.
    start: SystemTime,
    text: String,
    re: Regex,
}

impl Log {
    fn new(child: &Child, start: SystemTime) -> Log {
        Log {
            path: child.log_path().to_path_buf(),
            start,
            text: String::new(),
            re: Regex::new(
                r"reconcile \((?P<why>[^)]+)\): (?P<peers>\d+) peers, (?:(?P<added>\d+) added, (?P<removed>\d+) removed, (?P<failed>\d+) failed, (?P<unchanged>\d+) unchanged|(?P<inplace>\d+) entries in place), (?P<took>[0-9.]+[a-zµ]+)\s*$",
            )
            .expect("static regex"),
        }
    }

    fn refresh(&mut self) {
        if let Ok(b) = std::fs::read(&self.path) {
            self.text = String::from_utf8_lossy(&b).into_owned();
        }
    }

    /// Seconds from the process start to a line's timestamp.
    fn offset(&self, line: &str) -> Option<f64> {
        let ts = parse_timestamp(line.split_whitespace().next()?)?;
        let start = self.start.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        Some(ts - start)
    }

    fn reconciles(&self) -> Vec<Reconcile> {
        self.text
            .lines()
            .filter_map(|line| {
                let c = self.re.captures(line)?;
                let num = |k: &str| c.name(k).and_then(|m| m.as_str().parse().ok());
                Some(Reconcile {
                    why: c["why"].to_string(),
                    peers: num("peers")?,
                    added: num("added").unwrap_or(0),
                    removed: num("removed").unwrap_or(0),
                    failed: num("failed").unwrap_or(0),
                    took: parse_debug_duration(&c["took"])?,
                    at: self.offset(line),
                })
            })
            .collect()
    }

    /// Waits (bounded) for the `k`-th reconcile line matching `pred`.
    fn wait_reconcile(
        &mut self,
        child: &mut Child,
        timeout: Duration,
        pred: impl Fn(&Reconcile) -> bool,
    ) -> Result<Reconcile> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            if let Some(r) = self.reconciles().into_iter().find(|r| pred(r)) {
                return Ok(r);
            }
            child.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "no matching reconcile line within {timeout:?}; log tail:\n{}",
                    child.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Offset of the first (`last == false`) or last line containing `needle`.
    fn find(&self, needle: &str, last: bool) -> Option<f64> {
        let mut it = self.text.lines().filter(|l| l.contains(needle));
        let line = if last { it.next_back() } else { it.next() }?;
        self.offset(line)
    }

    /// Number of lines containing `needle`.
    fn occurrences(&self, needle: &str) -> usize {
        self.text.lines().filter(|l| l.contains(needle)).count()
    }
}

/// Parses tracing's RFC 3339 UTC timestamp (`2025-11-23T08:31:05.123456Z`) to Unix seconds.
fn parse_timestamp(tok: &str) -> Option<f64> {
    let (date, time) = tok.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|s| s.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + s)
}

/// Parses Rust's `Debug` rendering of a `Duration` (`312.5ms`, `1.2s`, `850µs`, `12ns`).
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// The process

/// Memory and CPU figures of a process from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
    utime: Duration,
    stime: Duration,
}

impl ProcStats {
    fn read(pid: u32) -> Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name; utime and stime are fields 14 and 15 (USER_HZ = 100).
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> Duration {
            let t: u64 = rest.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            Duration::from_millis(t * 10)
        };
        Ok(ProcStats {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            anon_kib: field("RssAnon:"),
            file_kib: field("RssFile:"),
            threads: field("Threads:"),
            utime: ticks(11),
            stime: ticks(12),
        })
    }

    fn rss_hwm(&self) -> String {
        format!("{} / {}", mib(self.rss_kib), mib(self.hwm_kib))
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The pid of the flanneld process the lab started. The lab runs `ip netns exec <ns> flanneld`,
/// which execs (same pid); should a wrapper ever fork, the namespace's pids are searched.
fn flanneld_pid(child: &Child, ns: &Netns) -> Result<u32> {
    let comm = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    if comm(child.pid()) == "flanneld" {
        return Ok(child.pid());
    }
    let pids = ns.ip(["netns", "pids", ns.name()]).unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| comm(*p) == "flanneld")
        .ok_or_else(|| anyhow!("no flanneld process in {}", ns.name()))
}

/// A started flanneld with its start instants.
struct Flanneld {
    child: Child,
    start: Instant,
    log: Log,
}

fn start_flanneld(lab: &Lab, node: &Node, bin: &Path, endpoints: &str) -> Result<Flanneld> {
    let mut cmd = Command::new(bin.join("flanneld"));
    cmd.arg(format!("--etcd-endpoints={endpoints}"))
        .arg("--iface=eth0")
        .arg(format!(
            "--subnet-file={}",
            node.dir().join("subnet.env").display()
        ))
        // The summary of a no-op reconcile (restart, repair tick) is logged at debug level.
        .arg("--vmodule=daemon=1");
    let wall = SystemTime::now();
    let start = Instant::now();
    let child = lab.spawn_in(node.netns(), cmd)?;
    let log = Log::new(&child, wall);
    Ok(Flanneld { child, start, log })
}

// ---------------------------------------------------------------------------------------------
// The run

/// Figures of one cold start.
#[derive(Debug, Clone)]
struct ColdRound {
    baseline: Baseline,
    reconcile: Reconcile,
    converged: Duration,
    polls: u32,
    mem: ProcStats,
    phases: Phases,
}

/// Offsets (seconds from spawn) of flanneld's start-up milestones, from its log.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    first_line: Option<f64>,
    lease: Option<f64>,
    ready: Option<f64>,
    snapshot_first: Option<f64>,
    snapshot_last: Option<f64>,
    reconciled: Option<f64>,
    subnet_lines: usize,
}

impl Phases {
    fn from_log(log: &Log, reconcile: &Reconcile) -> Phases {
        Phases {
            first_line: log.find("flannel-rs flanneld", false),
            lease: log.find("Acquired lease", false),
            ready: log.find("flannel is ready", false),
            snapshot_first: log.find("Subnet added", false),
            snapshot_last: log.find("Subnet added", true),
            reconciled: reconcile.at,
            subnet_lines: log.occurrences("Subnet added"),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn opt_ms(s: Option<f64>) -> String {
    s.map(|s| format!("{:.0} ms", s * 1e3))
        .unwrap_or_else(|| "?".into())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(opts: &Options) -> Result<()> {
    let n = opts.peers;
    let want = n as usize;
    let bin = flannel_lab::bin_dir()?;
    let mut config = NetConfig::parse(NET_CONFIG).map_err(|e| anyhow!("net config: {e}"))?;
    config
        .check()
        .map_err(|e| anyhow!("net config {NET_CONFIG} is rejected: {e}"))?;
    // The upstream value format, byte for byte.
    let sample = lease_value(&peer(0))?;
    ensure!(
        sample
            == r#"{"PublicIP":"198.19.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:b5:00:00:00:00"}}"#,
        "unexpected lease value {sample}"
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# flanneld convergence benchmark: {n} peers = {} entries, {} round(s), kernel {}, {} CPUs",
        3 * n,
        opts.rounds,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("flanneld binary: {}", bin.join("flanneld").display());
    println!("load average at start: {}", loadavg());

    // Field order is drop order: daemons first, then etcd, then the namespaces.
    let lab = Lab::builder().nodes(1).build()?;
    let etcd = lab.start_etcd(
        lab.underlay().netns(),
        EtcdOptions::new().listen_on(lab.underlay().gateway().into()),
    )?;
    etcd.etcdctl(["put", &format!("{PREFIX}/config"), NET_CONFIG])?;
    let node = lab.node(0);

    let t = Instant::now();
    let endpoint = etcd.local_endpoint();
    let per_peer = opts.lease_per_peer;
    let (stored, grants) = run_in_netns(
        NetnsTarget::Named(lab.underlay().netns().name().to_string()),
        move || async move {
            tokio::time::timeout(STEP_TIMEOUT, write_leases(endpoint, n, per_peer))
                .await
                .map_err(|_| anyhow!("writing leases took longer than {STEP_TIMEOUT:?}"))?
        },
    )??;
    ensure!(
        stored == i64::from(n),
        "etcd holds {stored} subnet keys, expected {n}"
    );
    println!(
        "wrote {n} leases into etcd ({grants} etcd lease grant(s), {TXN_OPS} puts per txn) in {}",
        ms(t.elapsed())
    );

    let files = write_batch_files(lab.dir(), n)?;
    let mut rounds: Vec<ColdRound> = Vec::new();
    let mut flanneld: Option<Flanneld> = None;
    for round in 1..=opts.rounds {
        // The baseline first, while flanneld is not running, so they do not share the CPUs.
        let own = node_own_network(node).unwrap_or(Ipv4Addr::new(10, 0, 1, 0));
        let baseline = baseline_round(&files, n, own)?;
        println!(
            "round {round}: ip -batch neigh {} + bridge -batch fdb {} + ip -batch route {} = {}",
            ms(baseline.neigh),
            ms(baseline.fdb),
            ms(baseline.route),
            ms(baseline.total())
        );

        if let Some(mut f) = flanneld.take() {
            f.child.stop()?;
            node.netns().ip(["link", "del", DEVICE])?;
        }
        let mut f = start_flanneld(&lab, node, &bin, &etcd.endpoints())?;
        let abort = Arc::new(AtomicBool::new(false));
        let poller = spawn_poller(
            node.netns_name(),
            want,
            opts.poll,
            f.start + STEP_TIMEOUT,
            abort.clone(),
        )?;
        while !poller.is_finished() {
            if let Err(e) = f.child.ensure_running() {
                abort.store(true, Ordering::Relaxed);
                let _ = poller.join();
                return Err(e.into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let conv = match poller.join() {
            Ok(r) => r??,
            Err(p) => std::panic::resume_unwind(p),
        };
        let reconcile = f
            .log
            .wait_reconcile(&mut f.child, Duration::from_secs(30), |r| r.added > 0)?;
        ensure!(
            reconcile.added == 3 * want && reconcile.failed == 0 && reconcile.peers == want,
            "cold reconcile: expected {want} peers and {} added, got {reconcile:?}",
            3 * want
        );
        let pid = flanneld_pid(&f.child, node.netns())?;
        let mem = ProcStats::read(pid)?;
        let phases = Phases::from_log(&f.log, &reconcile);
        let converged = conv.at - f.start;
        println!(
            "round {round}: flanneld converged {} after start ({} polls, {}); reconcile {} ({} added); RSS/HWM {}; CPU user {} sys {}",
            ms(converged),
            conv.polls,
            conv.counts,
            ms(reconcile.took),
            reconcile.added,
            mem.rss_hwm(),
            ms(mem.utime),
            ms(mem.stime)
        );
        rounds.push(ColdRound {
            baseline,
            reconcile,
            converged,
            polls: conv.polls,
            mem,
            phases,
        });
        flanneld = Some(f);
    }
    let mut f = flanneld.take().ok_or_else(|| anyhow!("no flanneld"))?;

    // Steady state: the next repair tick (every 10 s) reconciles 3N unchanged entries.
    let repair = f
        .log
        .wait_reconcile(&mut f.child, REPAIR_TIMEOUT, |r| r.why == "repair")?;
    std::thread::sleep(Duration::from_millis(200));
    let pid = flanneld_pid(&f.child, node.netns())?;
    let steady = ProcStats::read(pid)?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    println!(
        "steady state: repair reconcile {} ({}), RSS/HWM {} (anon {}, file {}, {} threads), CPU user {} sys {}",
        ms(repair.took),
        if repair.is_noop() {
            "no-op"
        } else {
            "CHANGED entries"
        },
        steady.rss_hwm(),
        mib(steady.anon_kib),
        mib(steady.file_kib),
        steady.threads,
        ms(steady.utime),
        ms(steady.stime)
    );

    // Restart: everything should be found in place.
    let t = Instant::now();
    let status = f.child.stop()?;
    let stop_took = t.elapsed();
    ensure!(status.success(), "flanneld exited with {status} on SIGTERM");
    let mut f = start_flanneld(&lab, node, &bin, &etcd.endpoints())?;
    let first = f.log.wait_reconcile(&mut f.child, STEP_TIMEOUT, |_| true)?;
    let restart_pid = flanneld_pid(&f.child, node.netns())?;
    let restart_mem = ProcStats::read(restart_pid)?;
    let after = count_in(node.netns_name(), want)?;
    ensure!(
        after
            == Some(Counts {
                routes: want,
                neigh: want,
                fdb: want
            }),
        "after the restart the node holds {after:?}"
    );
    println!(
        "restart: SIGTERM exit {}; first reconcile ({}) logged {} after start, took {}: {} added, {} removed{}; RSS/HWM {}",
        ms(stop_took),
        first.why,
        opt_ms(first.at),
        ms(first.took),
        first.added,
        first.removed,
        if first.is_noop() {
            " (no-op)"
        } else {
            " (NOT a no-op)"
        },
        restart_mem.rss_hwm()
    );
    drop(f);

    report(opts, &rounds, &repair, &steady, &smaps, &first, stop_took);
    println!(
        "load average at the end: {} (other work on the machine inflates both methods' times)",
        loadavg()
    );
    Ok(())
}

/// The 1, 5 and 15 minute load averages: the figures are only comparable on a quiet machine.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The node's own subnet address on its vxlan device, if flanneld already ran (so the
/// baseline device carries the same /32).
fn node_own_network(node: &Node) -> Option<Ipv4Addr> {
    let out = node
        .netns()
        .ip(["-4", "-o", "addr", "show", "dev", DEVICE])
        .ok()?;
    let word = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    word.split('/').next()?.parse().ok()
}

fn report(
    opts: &Options,
    rounds: &[ColdRound],
    repair: &Reconcile,
    steady: &ProcStats,
    smaps: &str,
    restart: &Reconcile,
    stop_took: Duration,
) {
    let n = opts.peers as usize;
    println!();
    println!(
        "## Cold start: {n} peers ({} entries), etcd leases: {}",
        3 * n,
        if opts.lease_per_peer {
            "one per peer"
        } else {
            "one shared"
        }
    );
    println!();
    println!(
        "| round | entries | flanneld reconcile | flanneld converged from start | ip -batch (neigh+fdb+route) | ratio reconcile / ip -batch | RSS / HWM after converge |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {} |",
            i + 1,
            3 * n,
            ms(r.reconcile.took),
            ms(r.converged),
            ms(r.baseline.total()),
            r.reconcile.took.as_secs_f64() / r.baseline.total().as_secs_f64(),
            r.mem.rss_hwm()
        );
    }
    let rec = median(rounds.iter().map(|r| r.reconcile.took).collect());
    let conv = median(rounds.iter().map(|r| r.converged).collect());
    let base = median(rounds.iter().map(|r| r.baseline.total()).collect());
    let hwm = rounds.iter().map(|r| r.mem.hwm_kib).max().unwrap_or(0);
    println!(
        "| median | {} | {} | {} | {} | {:.2} | max HWM {} |",
        3 * n,
        ms(rec),
        ms(conv),
        ms(base),
        rec.as_secs_f64() / base.as_secs_f64(),
        mib(hwm)
    );
    println!();
    println!(
        "Baseline per command (median): ip -batch neigh {}, bridge -batch fdb {}, ip -batch route {}.",
        ms(median(rounds.iter().map(|r| r.baseline.neigh).collect())),
        ms(median(rounds.iter().map(|r| r.baseline.fdb).collect())),
        ms(median(rounds.iter().map(|r| r.baseline.route).collect()))
    );
    println!(
        "Convergence is seen by a netlink poll every {} ms, so it lags the kernel by up to one interval plus a dump.",
        opts.poll.as_millis()
    );
    println!();
    println!("## Start-up phases from flanneld's log (ms after spawn)");
    println!();
    println!(
        "| round | first log line | lease acquired | ready (subnet.env) | snapshot: first `Subnet added` | last `Subnet added` | reconcile done | polls | CPU user / sys |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        let p = &r.phases;
        println!(
            "| {} | {} | {} | {} | {} | {} ({} lines) | {} | {} | {} / {} |",
            i + 1,
            opt_ms(p.first_line),
            opt_ms(p.lease),
            opt_ms(p.ready),
            opt_ms(p.snapshot_first),
            opt_ms(p.snapshot_last),
            p.subnet_lines,
            opt_ms(p.reconciled),
            r.polls,
            ms(r.mem.utime),
            ms(r.mem.stime)
        );
    }
    println!();
    println!("## Steady state and restart");
    println!();
    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| repair tick reconcile ({} entries unchanged) | {}{} |",
        3 * n,
        ms(repair.took),
        if repair.is_noop() {
            ""
        } else {
            " (changed entries!)"
        }
    );
    println!(
        "| RSS / HWM after the repair tick | {} (anon {}, file {}) |",
        steady.rss_hwm(),
        mib(steady.anon_kib),
        mib(steady.file_kib)
    );
    let pss = smaps
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .map(|l| l.trim_start_matches("Pss:").trim().to_string())
        .unwrap_or_else(|| "?".into());
    println!("| PSS after the repair tick | {pss} |");
    println!("| SIGTERM to exit | {} |", ms(stop_took));
    println!(
        "| restart: first reconcile logged after start | {} |",
        opt_ms(restart.at)
    );
    println!(
        "| restart: first reconcile duration | {} ({} added, {} removed) |",
        ms(restart.took),
        restart.added,
        restart.removed
    );
    println!();
    let ratio = rec.as_secs_f64() / base.as_secs_f64();
    println!(
        "Targets: reconcile within 2x of ip -batch: {} ({ratio:.2}x); RSS under 20 MiB at {n} peers: {} (max HWM {}, steady RSS {}).",
        if ratio <= 2.0 { "met" } else { "MISSED" },
        if steady.rss_kib.max(hwm) < 20 * 1024 {
            "met"
        } else {
            "MISSED"
        },
        mib(hwm.max(steady.hwm_kib)),
        mib(steady.rss_kib)
    );
}
