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
//! event each), at most [`MAX_FLOWS`] per run (rate times seconds).

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{MAX_FLOWS, arg, enable_conntrack, send_flows, thread_cpu_ns};
use flannel_netpol::flowsrc::conntrack::{CtEvent, CtKind, CtSource};

fn main() {
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", 5);
    assert!(
        rate * seconds <= MAX_FLOWS,
        "rate x seconds must be at most {MAX_FLOWS} distinct flows"
    );
    flannel_lab::in_fresh_netns("bench-flowsrc", move || {
        enable_conntrack();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut source = CtSource::open(4 << 20, Duration::from_millis(100)).expect("open");
                let start = thread_cpu_ns();
                let (mut new, mut errors) = (0u64, 0u64);
                let mut events: Vec<CtEvent> = Vec::with_capacity(64);
                while !stop.load(Ordering::Relaxed) {
                    events.clear();
                    match source.recv(&mut events) {
                        Ok(()) => {
                            new += events.iter().filter(|e| e.kind == CtKind::New).count() as u64
                        }
                        Err(_) => errors += 1,
                    }
                }
                (new, errors, source.overruns(), thread_cpu_ns() - start)
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let total = rate * seconds;
        let sent_in = send_flows(
            (Ipv4Addr::LOCALHOST, 0).into(),
            Ipv4Addr::LOCALHOST.into(),
            rate,
            total,
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let (new, errors, overruns, cpu) = reader.join().expect("reader");
        let wall = sent_in.as_secs_f64();
        println!(
            "flowsrc conntrack reader: {total} new flows in {wall:.2} s ({:.0}/s)",
            total as f64 / wall
        );
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
