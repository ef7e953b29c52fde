//! What the conntrack source costs: one reader thread receiving and decoding conntrack NEW
//! events while a generator opens new flows at a steady rate (default 10 000 per second,
//! the issue's figure) in a namespace of its own. Prints the reader's CPU time (from
//! `/proc/thread-self/schedstat`, so the generator's work is not counted), the events it
//! decoded and the overruns (events the kernel dropped because the reader fell behind).
//!
//! ```sh
//! cargo bench -p flannel-netpol --bench flowsrc -- [--rate 10000] [--seconds 5]
//! ```
//!
//! Each flow is one UDP datagram to a new address pair on the namespace's loopback (a NEW
//! event each): two sockets times 50 000 destination ports, so at most [`MAX_FLOWS`] flows
//! per run (rate times seconds), which the namespace's conntrack table holds with room.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flannel_netpol::flowsrc::conntrack::{CtEvent, CtKind, CtSource};

/// Distinct flows one run opens (entries stay in the table for UDP's 30 s timeout).
const MAX_FLOWS: u64 = 100_000;

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("schedstat")
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &[&str]) {
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

fn main() {
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", 5);
    assert!(
        rate * seconds <= MAX_FLOWS,
        "rate x seconds must be at most {MAX_FLOWS} distinct flows"
    );
    flannel_lab::in_fresh_netns("bench-flowsrc", move || {
        run(&[
            "nft",
            "add table inet bench; add chain inet bench out { type filter hook output priority 0; }; add rule inet bench out ct state new counter",
        ]);
        std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1\n").expect("acct");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut source =
                    CtSource::open(4 << 20, Duration::from_millis(100)).expect("open");
                let start = thread_cpu_ns();
                let (mut new, mut errors) = (0u64, 0u64);
                let mut events: Vec<CtEvent> = Vec::with_capacity(64);
                while !stop.load(Ordering::Relaxed) {
                    events.clear();
                    match source.recv(&mut events) {
                        Ok(()) => new += events.iter().filter(|e| e.kind == CtKind::New).count() as u64,
                        Err(_) => errors += 1,
                    }
                }
                (new, errors, source.overruns(), thread_cpu_ns() - start)
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let sockets: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp"))
            .collect();
        let total = rate * seconds;
        let begin = Instant::now();
        for i in 0..total {
            // Pace: flow i leaves at i / rate seconds.
            let due = Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(wait) = due.checked_sub(begin.elapsed()) {
                std::thread::sleep(wait);
            }
            let port = 10_000 + (i % 50_000) as u16;
            let udp = &sockets[(i / 50_000) as usize % sockets.len()];
            let _ = udp.send_to(b"x", (Ipv4Addr::LOCALHOST, port));
        }
        let sent_in = begin.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let (new, errors, overruns, cpu) = reader.join().expect("reader");
        let wall = sent_in.as_secs_f64();
        println!("flowsrc conntrack reader: {total} new flows in {wall:.2} s ({:.0}/s)", total as f64 / wall);
        println!("  NEW events decoded: {new}, overruns: {overruns}, decode errors: {errors}");
        println!(
            "  reader CPU: {:.0} ms = {:.1} % of one core, {:.0} ns per event",
            cpu as f64 / 1e6,
            cpu as f64 / 1e9 / wall * 100.0,
            cpu as f64 / new.max(1) as f64
        );
    })
    .expect("namespace");
}
