//! What the flow benches share: arguments, commands, CPU time per thread, and the generator
//! of new flows (one UDP datagram each, to a new destination port).

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Distinct flows one run opens: two sockets times 50 000 destination ports (entries stay in
/// the namespace's conntrack table for UDP's 30 s timeout, which holds them with room).
pub const MAX_FLOWS: u64 = 100_000;

/// `--name N` from the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &[&str]) {
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Conntrack on in the current namespace only (an nft `ct state` rule registers its hooks
/// for locally sent packets) and its accounting, as the enforcer turns it on.
pub fn enable_conntrack() {
    run(&[
        "nft",
        "add table inet bench; add chain inet bench out { type filter hook output priority 0; }; add rule inet bench out ct state new counter",
    ]);
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1\n").expect("acct");
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    schedstat("/proc/thread-self/schedstat").expect("schedstat")
}

/// CPU time of this process's thread named `comm`, in nanoseconds (`None`: no such thread).
pub fn named_thread_cpu_ns(comm: &str) -> Option<u64> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (name.trim() == comm)
                .then(|| schedstat(t.path().join("schedstat")))
                .flatten()
        })
}

fn schedstat(path: impl AsRef<std::path::Path>) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Sends `total` new flows at `rate` per second from two sockets bound to `src` (port 0) to
/// ports 10 000.. of `dst`; returns how long it took.
pub fn send_flows(src: SocketAddr, dst: std::net::IpAddr, rate: u64, total: u64) -> Duration {
    assert!(
        total <= MAX_FLOWS,
        "at most {MAX_FLOWS} distinct flows per run"
    );
    let sockets: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind(src).expect("udp")).collect();
    let begin = Instant::now();
    for i in 0..total {
        // Pace: flow i leaves at i / rate seconds.
        let due = Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_sub(begin.elapsed()) {
            std::thread::sleep(wait);
        }
        let port = 10_000 + (i % 50_000) as u16;
        let udp = &sockets[(i / 50_000) as usize % sockets.len()];
        let _ = udp.send_to(b"x", (dst, port));
    }
    begin.elapsed()
}
