//! Throughput of the userspace WireGuard engine against the kernel's VXLAN and Debian's
//! wireguard-go, in one run, between two network namespaces joined by a veth pair.
//!
//! Each case: two endpoints (one per namespace) with tunnel addresses 10.250.0.1 and
//! 10.250.0.2 (MTU 1420 for the WireGuard cases, 1450 for VXLAN), one iperf3 TCP stream from
//! the first to the second for `--seconds` (default 5). Cases: `ours` (offloads on, 2
//! queues), `ours, offload off`, `vxlan`, `wireguard-go`. Prints Gbit/s and the ratios the
//! issue asks for (ours / vxlan >= 0.35, ours / wireguard-go >= 5). Asserts only that every
//! transfer ran.
//!
//! Run: `bench/wireguard-engine/run [--seconds N]` (root; needs iperf3, wireguard-go, wg).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flannel_lab::Netns;
use flannel_wireguard::userspace::{Config, Userspace};
use flannel_wireguard::{DeviceUpdate, PeerConfig, PeerUpdate, Secret, WgDevice};

const A_IP: &str = "10.250.0.1";
const B_IP: &str = "10.250.0.2";

fn underlay() -> Result<(Netns, Netns, String)> {
    let (a, b) = flannel_lab::veth_underlay("wgb-a", "wgb-b")?;
    let tag = format!("{}", std::process::id() % 100_000);
    Ok((a, b, tag))
}

fn link_up(ns: &Netns, dev: &str, ip: &str, mtu: u32) -> Result<()> {
    ns.ip_batch(&format!(
        "link set {dev} mtu {mtu} up\naddr add {ip}/24 dev {dev}\n"
    ))?;
    Ok(())
}

fn measure(a: &Netns, b: &Netns, secs: u64) -> Result<f64> {
    // Warm up (handshake) before measuring.
    if !flannel_lab::ping(a, B_IP.parse()?, 3, Duration::from_secs(8))? {
        bail!("no connectivity before the transfer");
    }
    let log = std::env::temp_dir().join(format!("wgb-{}.log", std::process::id()));
    let t = flannel_lab::throughput::iperf3(
        a,
        b,
        B_IP.parse::<IpAddr>()?,
        Duration::from_secs(secs),
        &log,
    )?;
    let _ = std::fs::remove_file(&log);
    Ok(t.gbits())
}

fn peer(dev: &Userspace, key: &Secret, other: &Secret, to: &str, net: &str) -> Result<()> {
    dev.set(&DeviceUpdate {
        private_key: Some(key.clone()),
        listen_port: Some(51820),
        peers: vec![PeerUpdate::Upsert {
            config: PeerConfig {
                public_key: other.public_key(),
                preshared_key: None,
                endpoint: Some(format!("{to}:51820").parse()?),
                persistent_keepalive: 0,
                allowed_ips: vec![net.parse()?],
            },
            replace_allowed_ips: true,
        }],
        ..Default::default()
    })?;
    Ok(())
}

fn ours(secs: u64, offload: bool) -> Result<f64> {
    let (a, b, tag) = underlay()?;
    let (ka, kb) = (Secret::generate(), Secret::generate());
    let start = |ns: &Netns, name: String| -> Result<Userspace> {
        let cfg = Config {
            name,
            mtu: 1420,
            queues: 2,
            offload,
            uapi_dir: PathBuf::from("/var/run/wireguard"),
        };
        Ok(ns.in_thread(move || Userspace::start(cfg))??)
    };
    let (na, nb) = (format!("wgba{tag}"), format!("wgbb{tag}"));
    let da = start(&a, na.clone())?;
    let db = start(&b, nb.clone())?;
    link_up(&a, &na, A_IP, 1420)?;
    link_up(&b, &nb, B_IP, 1420)?;
    peer(&da, &ka, &kb, "192.0.2.2", "10.250.0.2/32")?;
    peer(&db, &kb, &ka, "192.0.2.1", "10.250.0.1/32")?;
    let g = measure(&a, &b, secs)?;
    a.in_thread(move || da.delete())??;
    b.in_thread(move || db.delete())??;
    Ok(g)
}

fn vxlan(secs: u64) -> Result<f64> {
    let (a, b, _) = underlay()?;
    for (ns, local, remote, ip) in [
        (&a, "192.0.2.1", "192.0.2.2", A_IP),
        (&b, "192.0.2.2", "192.0.2.1", B_IP),
    ] {
        ns.ip([
            "link", "add", "vx0", "type", "vxlan", "id", "1", "local", local, "remote", remote,
            "dstport", "8472",
        ])?;
        link_up(ns, "vx0", ip, 1450)?;
    }
    measure(&a, &b, secs)
}

fn wireguard_go(secs: u64) -> Result<f64> {
    let (a, b, tag) = underlay()?;
    let (ka, kb) = (Secret::generate(), Secret::generate());
    let mut children = Vec::new();
    for (ns, n, key, other, to, ip, peer_net) in [
        (&a, "a", &ka, &kb, "192.0.2.2", A_IP, "10.250.0.2/32"),
        (&b, "b", &kb, &ka, "192.0.2.1", B_IP, "10.250.0.1/32"),
    ] {
        let name = format!("wgbg{n}{tag}");
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let mut cmd = ns.command("wireguard-go")?;
        cmd.args(["-f", &name]);
        children.push(flannel_lab::spawn_in(ns, cmd, &log)?);
        let sock = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let keyfile = std::env::temp_dir().join(format!("{name}.key"));
        std::fs::write(&keyfile, key.to_base64())?;
        let ok = Command::new("wg")
            .args(["set", &name, "listen-port", "51820", "private-key"])
            .arg(&keyfile)
            .args(["peer", &other.public_key().to_base64(), "endpoint"])
            .arg(format!("{to}:51820"))
            .args(["allowed-ips", peer_net])
            .status()?
            .success();
        let _ = std::fs::remove_file(&keyfile);
        if !ok {
            bail!("wg set {name} failed");
        }
        link_up(ns, &name, ip, 1420)?;
    }
    let g = measure(&a, &b, secs);
    drop(children);
    for n in ["a", "b"] {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/wgbg{n}{tag}.sock"));
    }
    g
}

/// One measurement: Gbit/s.
type Case = Box<dyn Fn() -> Result<f64>>;

fn main() -> ExitCode {
    let mut secs = 5;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--seconds") {
        secs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(5);
    }
    let cases: [(&str, Case); 4] = [
        ("ours", Box::new(move || ours(secs, true))),
        ("ours, offload off", Box::new(move || ours(secs, false))),
        ("vxlan", Box::new(move || vxlan(secs))),
        ("wireguard-go", Box::new(move || wireguard_go(secs))),
    ];
    let mut results = Vec::new();
    for (name, f) in &cases {
        match f().with_context(|| name.to_string()) {
            Ok(g) => {
                println!("{name:<20} {g:6.2} Gbit/s");
                results.push(g);
            }
            Err(e) => {
                eprintln!("{name}: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "ours / vxlan = {:.2} (goal >= 0.35); ours / wireguard-go = {:.1} (goal >= 5)",
        results[0] / results[2],
        results[0] / results[3]
    );
    ExitCode::SUCCESS
}
