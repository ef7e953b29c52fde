//! Control-plane scale benchmark: program N remote vxlan peers (permanent neighbour + FDB
//! entry + onlink route each, the upstream vxlan backend's three objects per node) on
//! `flannel.1` inside a fresh anonymous network namespace, three ways:
//!
//! 1. `Netlink::apply` (batched: many requests per datagram, errors-only acks);
//! 2. `ip -batch` + `bridge -batch` (one request and one ack per entry; the testbed baseline);
//! 3. one `Netlink::replace_*` call per entry (one awaited round trip each).
//!
//! Each method starts from a freshly created device and its results are verified by dumping.
//! Run as root:
//!
//! ```text
//! cargo run --release -p flannel-netlink --example bench_batch -- [N=5000] [ROUNDS=3]
//! ```
//!
//! Prints the median over ROUNDS of each phase in milliseconds.

// The integration tests' fixtures: underlay, vxlan device, peers, dump counts.
#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{PeerEntries, flannel_dev, peer, peer_entry_counts, run_within, underlay};
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{BatchOp, LinkInfo, Netlink, RouteProtocol};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args
        .next()
        .map(|s| s.parse().expect("N must be a number"))
        .unwrap_or(5000);
    let rounds: usize = args
        .next()
        .map(|s| s.parse().expect("ROUNDS must be a number"))
        .unwrap_or(3);
    assert!((1..=60000).contains(&n), "N must be 1..=60000");
    assert!(rounds >= 1, "ROUNDS must be >= 1");
    // Unbounded on purpose: with N in the tens of thousands a round takes minutes.
    let result = run_in_netns(NetnsTarget::Fresh, move || bench(n, rounds))
        .expect("entering a fresh network namespace (run as root)");
    if let Err(e) = result {
        eprintln!("bench_batch: {e}");
        std::process::exit(1);
    }
}

/// Replaces `flannel.1` by a fresh, empty one.
async fn fresh_device(nl: &Netlink, eth0: &LinkInfo) -> Res<u32> {
    if let Some(old) = nl.link_by_name("flannel.1").await? {
        nl.delete_link(old.index).await?;
    }
    Ok(flannel_dev(nl, eth0).await.index)
}

/// Checks that the device holds exactly n of each kind; returns the dump time.
async fn verify(nl: &Netlink, dev: u32, n: usize) -> Res<Duration> {
    let t = Instant::now();
    let (neigh, fdb, routes) = peer_entry_counts(nl, dev).await;
    let took = t.elapsed();
    if (neigh, fdb, routes) != (n, n, n) {
        return Err(
            format!("expected {n} of each, found neigh={neigh} fdb={fdb} routes={routes}").into(),
        );
    }
    Ok(took)
}

#[derive(Default)]
struct Phases {
    neigh: Vec<Duration>,
    fdb: Vec<Duration>,
    route: Vec<Duration>,
    total: Vec<Duration>,
}

impl Phases {
    fn push_phases(&mut self, [neigh, fdb, route]: [Duration; 3]) {
        self.neigh.push(neigh);
        self.fdb.push(fdb);
        self.route.push(route);
        self.total.push(neigh + fdb + route);
    }
}

fn median_ms(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// How long one `ip -batch` run may take: the kernel's route insertion is superlinear, and
/// 60000 routes take minutes.
const IPROUTE_LIMIT: Duration = Duration::from_secs(900);

/// The results of all rounds.
#[derive(Default)]
struct Results {
    batched: Phases,
    iproute: Phases,
    single: Phases,
    dump: Vec<Duration>,
    delete: Vec<Duration>,
    devdel: Vec<Duration>,
}

async fn bench(n: u32, rounds: usize) -> Res<()> {
    let (nl, eth0) = underlay().await;
    let dir = std::env::temp_dir().join(format!("flannel-bench-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let peers: Vec<PeerEntries> = (0..n).map(|i| peer(0, i)).collect();
    write_batch_files(&dir, &peers)?;
    let mut res = Results::default();
    for _ in 0..rounds {
        let dev = fresh_device(&nl, &eth0).await?;
        batched_round(&nl, dev, n, &mut res).await?;
        let dev = fresh_device(&nl, &eth0).await?;
        iproute_round(&nl, dev, n, &dir, &mut res).await?;
        let dev = fresh_device(&nl, &eth0).await?;
        single_round(&nl, dev, n)
            .await
            .map(|p| res.single.push_phases(p))?;
    }
    std::fs::remove_dir_all(&dir)?;
    print_report(n, rounds, &res);
    Ok(())
}

/// The `ip -batch` / `bridge -batch` input files for `peers` (files `neigh`, `fdb`, `route`).
fn write_batch_files(dir: &std::path::Path, peers: &[PeerEntries]) -> Res<()> {
    let (mut neigh, mut fdb, mut route) = (String::new(), String::new(), String::new());
    for p in peers {
        let (vtep, mac) = (p.neigh.ip, p.neigh.mac);
        writeln!(
            neigh,
            "neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent"
        )?;
        writeln!(
            fdb,
            "fdb replace {mac} dev flannel.1 self permanent dst {}",
            p.fdb.dst
        )?;
        writeln!(
            route,
            "route replace {} via {vtep} dev flannel.1 onlink",
            p.route.dst
        )?;
    }
    for (name, txt) in [("neigh", neigh), ("fdb", fdb), ("route", route)] {
        std::fs::write(dir.join(name), txt)?;
    }
    Ok(())
}

/// 1. `Netlink::apply`, one batch per kind, then one batched delete of everything (what a
///    reconcile after mass node removal does).
async fn batched_round(nl: &Netlink, dev: u32, n: u32, res: &mut Results) -> Res<()> {
    let peers: Vec<PeerEntries> = (0..n).map(|i| peer(dev, i)).collect();
    let neigh_ops: Vec<_> = peers
        .iter()
        .map(|p| BatchOp::ReplaceNeighbour(p.neigh))
        .collect();
    let fdb_ops: Vec<_> = peers.iter().map(|p| BatchOp::ReplaceFdb(p.fdb)).collect();
    let route_ops: Vec<_> = peers
        .iter()
        .map(|p| BatchOp::ReplaceRoute(p.route.clone()))
        .collect();
    let mut times = [Duration::ZERO; 3];
    for (k, ops) in [&neigh_ops, &fdb_ops, &route_ops].into_iter().enumerate() {
        let t = Instant::now();
        let report = nl.apply(ops).await;
        times[k] = t.elapsed();
        if report.failed() > 0 {
            let (i, e) = report.errors().next().ok_or("failure without error")?;
            return Err(format!("{} ops failed, first #{i}: {e}", report.failed()).into());
        }
    }
    res.batched.push_phases(times);
    res.dump.push(verify(nl, dev, n as usize).await?);
    let dels: Vec<BatchOp> = peers
        .iter()
        .map(|p| BatchOp::DelRoute(p.route.clone().with_protocol(RouteProtocol::FLANNEL)))
        .chain(peers.iter().map(|p| BatchOp::DelFdb(p.fdb)))
        .chain(peers.iter().map(|p| BatchOp::DelNeighbour(p.neigh)))
        .collect();
    let t = Instant::now();
    let report = nl.apply(&dels).await;
    res.delete.push(t.elapsed());
    if report.failed() > 0 {
        return Err(format!("{} deletes failed", report.failed()).into());
    }
    verify(nl, dev, 0).await?;
    Ok(())
}

/// 2. `ip -batch` / `bridge -batch`, then deleting the device with everything on it.
async fn iproute_round(
    nl: &Netlink,
    dev: u32,
    n: u32,
    dir: &std::path::Path,
    res: &mut Results,
) -> Res<()> {
    let mut times = [Duration::ZERO; 3];
    for (k, (tool, file)) in [("ip", "neigh"), ("bridge", "fdb"), ("ip", "route")]
        .into_iter()
        .enumerate()
    {
        let cmd = format!("{tool} -batch {}", dir.join(file).display());
        let t = Instant::now();
        run_within(&cmd, IPROUTE_LIMIT).await;
        times[k] = t.elapsed();
    }
    res.iproute.push_phases(times);
    verify(nl, dev, n as usize).await?;
    let t = Instant::now();
    nl.delete_link(dev).await?;
    res.devdel.push(t.elapsed());
    Ok(())
}

/// 3. One awaited request per entry; returns the three phase times.
async fn single_round(nl: &Netlink, dev: u32, n: u32) -> Res<[Duration; 3]> {
    let peers: Vec<PeerEntries> = (0..n).map(|i| peer(dev, i)).collect();
    let mut times = [Duration::ZERO; 3];
    let t = Instant::now();
    for p in &peers {
        nl.replace_neighbour(&p.neigh).await?;
    }
    times[0] = t.elapsed();
    let t = Instant::now();
    for p in &peers {
        nl.replace_fdb(&p.fdb).await?;
    }
    times[1] = t.elapsed();
    let t = Instant::now();
    for p in &peers {
        nl.replace_route(&p.route).await?;
    }
    times[2] = t.elapsed();
    verify(nl, dev, n as usize).await?;
    Ok(times)
}

fn print_report(n: u32, rounds: usize, res: &Results) {
    println!(
        "flannel-netlink batch benchmark: {n} peers x (neighbour + fdb + onlink route) = {} entries, median of {rounds} round(s), ms",
        3 * n
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "method", "neigh", "fdb", "route", "total"
    );
    for (name, p) in [
        ("Netlink::apply (batched)", &res.batched),
        ("ip -batch + bridge -batch", &res.iproute),
        ("Netlink::replace_* one by one", &res.single),
    ] {
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name,
            median_ms(&p.neigh),
            median_ms(&p.fdb),
            median_ms(&p.route),
            median_ms(&p.total)
        );
    }
    println!(
        "ratio Netlink::apply / ip -batch (total): {:.2}",
        median_ms(&res.batched.total) / median_ms(&res.iproute.total)
    );
    println!(
        "dump of all three tables (neigh+fdb+routes): {:.1} ms",
        median_ms(&res.dump)
    );
    println!(
        "batched delete of all {} entries: {:.1} ms",
        3 * n,
        median_ms(&res.delete)
    );
    println!(
        "deleting flannel.1 with {} entries: {:.1} ms",
        3 * n,
        median_ms(&res.devdel)
    );
}
