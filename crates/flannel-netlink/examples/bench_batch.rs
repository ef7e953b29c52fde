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
//! CARGO_TARGET_DIR=/work/target-netlink cargo run --release -p flannel-netlink \
//!     --example bench_batch -- [N=5000] [ROUNDS=3]
//! ```
//!
//! Prints the median over ROUNDS of each phase in milliseconds.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{
    BatchOp, Fdb, LinkInfo, MacAddr, Neighbour, Netlink, Route, RouteFilter, RouteProtocol,
    VxlanSpec,
};
use ipnet::IpNet;

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
    let result = run_in_netns(
        NetnsTarget::Fresh,
        move || async move { bench(n, rounds).await },
    )
    .expect("entering a fresh network namespace (run as root)");
    if let Err(e) = result {
        eprintln!("bench_batch: {e}");
        std::process::exit(1);
    }
}

/// Peer i: subnet 10.<hi+1>.<lo>.0/24, VTEP 10.<hi+1>.<lo>.0, MAC 0e:2a:00:00:hi:lo, public IP
/// 172.16.hi.lo.
fn peer(i: u32) -> (IpNet, IpAddr, MacAddr, IpAddr) {
    let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
    let vtep = IpAddr::V4(Ipv4Addr::new(10, hi + 1, lo, 0));
    let net = IpNet::new(vtep, 24).expect("valid prefix");
    (
        net,
        vtep,
        MacAddr([0x0e, 0x2a, 0, 0, hi, lo]),
        IpAddr::V4(Ipv4Addr::new(172, 16, hi, lo)),
    )
}

fn sh(cmd: &str) -> Res<()> {
    let mut p = cmd.split_whitespace();
    let out = Command::new(p.next().ok_or("empty command")?)
        .args(p)
        .output()?;
    if !out.status.success() {
        return Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

async fn fresh_device(nl: &Netlink, eth0: &LinkInfo) -> Res<LinkInfo> {
    if let Some(old) = nl.link_by_name("flannel.1").await? {
        nl.delete_link(old.index).await?;
    }
    let spec = VxlanSpec {
        local: Some("192.0.2.1".parse()?),
        dev: Some(eth0.index),
        mtu: Some(1450),
        ..VxlanSpec::new("flannel.1", 1)
    };
    let dev = nl.create_vxlan(&spec).await?;
    nl.add_address(dev.index, "10.0.0.0/32".parse()?).await?;
    nl.set_link_up(dev.index).await?;
    Ok(dev)
}

/// Checks that the device holds exactly n of each kind; returns the dump time.
async fn verify(nl: &Netlink, dev: u32, n: usize) -> Res<Duration> {
    let t = Instant::now();
    let neigh = nl
        .neighbours(Some(dev))
        .await?
        .iter()
        .filter(|e| e.state.is_permanent())
        .count();
    let fdb = nl
        .fdb_entries(Some(dev))
        .await?
        .iter()
        .filter_map(|e| e.as_fdb())
        .count();
    let routes = nl
        .routes(&RouteFilter::main().oif(dev))
        .await?
        .iter()
        .filter(|r| r.onlink)
        .count();
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
    fn push(&mut self, neigh: Duration, fdb: Duration, route: Duration) {
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

async fn bench(n: u32, rounds: usize) -> Res<()> {
    let nl = Netlink::new()?;
    let lo = nl.link_by_name("lo").await?.ok_or("no lo")?;
    nl.set_link_up(lo.index).await?;
    sh("ip link add eth0 type veth peer name eth0p")?;
    sh("ip addr add 192.0.2.1/24 dev eth0")?;
    sh("ip link set eth0 up")?;
    sh("ip link set eth0p up")?;
    let eth0 = nl.link_by_name("eth0").await?.ok_or("no eth0")?;

    let dir = std::env::temp_dir().join(format!("flannel-bench-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut neigh_txt, mut fdb_txt, mut route_txt) = (String::new(), String::new(), String::new());
    for i in 0..n {
        let (net, vtep, mac, public) = peer(i);
        writeln!(
            neigh_txt,
            "neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent"
        )?;
        writeln!(
            fdb_txt,
            "fdb replace {mac} dev flannel.1 self permanent dst {public}"
        )?;
        writeln!(
            route_txt,
            "route replace {net} via {vtep} dev flannel.1 onlink"
        )?;
    }
    let files = [("neigh", neigh_txt), ("fdb", fdb_txt), ("route", route_txt)];
    for (name, txt) in &files {
        std::fs::write(dir.join(name), txt)?;
    }
    let path = |name: &str| dir.join(name).display().to_string();

    let (mut batched, mut iproute, mut single) =
        (Phases::default(), Phases::default(), Phases::default());
    let (mut dump, mut delete, mut devdel) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // 1. Netlink::apply
        let dev = fresh_device(&nl, &eth0).await?.index;
        let mut neigh_ops = Vec::new();
        let mut fdb_ops = Vec::new();
        let mut route_ops = Vec::new();
        for i in 0..n {
            let (net, vtep, mac, public) = peer(i);
            neigh_ops.push(BatchOp::ReplaceNeighbour(Neighbour {
                ifindex: dev,
                ip: vtep,
                mac,
            }));
            fdb_ops.push(BatchOp::ReplaceFdb(Fdb {
                ifindex: dev,
                mac,
                dst: public,
            }));
            route_ops.push(BatchOp::ReplaceRoute(Route::onlink_via(net, vtep, dev)));
        }
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
        batched.push(times[0], times[1], times[2]);
        dump.push(verify(&nl, dev, n as usize).await?);
        // Batched delete of everything (what a reconcile after mass node removal does).
        let dels: Vec<BatchOp> = route_ops
            .iter()
            .chain(&fdb_ops)
            .chain(&neigh_ops)
            .map(|op| match op {
                BatchOp::ReplaceRoute(r) => {
                    BatchOp::DelRoute(r.clone().with_protocol(RouteProtocol::FLANNEL))
                }
                BatchOp::ReplaceFdb(f) => BatchOp::DelFdb(*f),
                BatchOp::ReplaceNeighbour(x) => BatchOp::DelNeighbour(*x),
                other => other.clone(),
            })
            .collect();
        let t = Instant::now();
        let report = nl.apply(&dels).await;
        delete.push(t.elapsed());
        if report.failed() > 0 {
            return Err(format!("{} deletes failed", report.failed()).into());
        }
        verify(&nl, dev, 0).await?;

        // 2. ip -batch / bridge -batch
        let dev = fresh_device(&nl, &eth0).await?.index;
        let mut times = [Duration::ZERO; 3];
        for (k, cmd) in [
            format!("ip -batch {}", path("neigh")),
            format!("bridge -batch {}", path("fdb")),
            format!("ip -batch {}", path("route")),
        ]
        .iter()
        .enumerate()
        {
            let t = Instant::now();
            sh(cmd)?;
            times[k] = t.elapsed();
        }
        iproute.push(times[0], times[1], times[2]);
        verify(&nl, dev, n as usize).await?;
        let t = Instant::now();
        nl.delete_link(dev).await?;
        devdel.push(t.elapsed());

        // 3. one awaited request per entry
        let dev = fresh_device(&nl, &eth0).await?.index;
        let mut times = [Duration::ZERO; 3];
        let t = Instant::now();
        for i in 0..n {
            let (_, vtep, mac, _) = peer(i);
            nl.replace_neighbour(&Neighbour {
                ifindex: dev,
                ip: vtep,
                mac,
            })
            .await?;
        }
        times[0] = t.elapsed();
        let t = Instant::now();
        for i in 0..n {
            let (_, _, mac, public) = peer(i);
            nl.replace_fdb(&Fdb {
                ifindex: dev,
                mac,
                dst: public,
            })
            .await?;
        }
        times[1] = t.elapsed();
        let t = Instant::now();
        for i in 0..n {
            let (net, vtep, _, _) = peer(i);
            nl.replace_route(&Route::onlink_via(net, vtep, dev)).await?;
        }
        times[2] = t.elapsed();
        single.push(times[0], times[1], times[2]);
        verify(&nl, dev, n as usize).await?;
    }
    std::fs::remove_dir_all(&dir)?;

    println!(
        "flannel-netlink batch benchmark: {n} peers x (neighbour + fdb + onlink route) = {} entries, median of {rounds} round(s), ms",
        3 * n
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "method", "neigh", "fdb", "route", "total"
    );
    for (name, p) in [
        ("Netlink::apply (batched)", &batched),
        ("ip -batch + bridge -batch", &iproute),
        ("Netlink::replace_* one by one", &single),
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
        median_ms(&batched.total) / median_ms(&iproute.total)
    );
    println!(
        "dump of all three tables (neigh+fdb+routes): {:.1} ms",
        median_ms(&dump)
    );
    println!(
        "batched delete of all {} entries: {:.1} ms",
        3 * n,
        median_ms(&delete)
    );
    println!(
        "deleting flannel.1 with {} entries: {:.1} ms",
        3 * n,
        median_ms(&devdel)
    );
    Ok(())
}
