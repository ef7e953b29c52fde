//! What the flow collector costs with nobody watching: the enforcer's own pipeline (the
//! conntrack reader thread of `flows::sources`, handing each event to the collector, which names
//! the record from a directory of 5000 pods, counting it and storing it in the 8192-record ring)
//! while a generator opens new pod flows at a steady rate (default 10 000 per second, the
//! issue's figure) in a namespace of its own.
//!
//! ```sh
//! cargo bench -p flannel-netpol --bench flows -- [--rate 10000] [--seconds 5] [--pods 5000]
//! ```
//!
//! Prints the CPU time of the reader thread, which also names, counts and stores (per-thread
//! `schedstat`, so the generator is not counted), the records stored and every loss counter. Each flow is one
//! UDP datagram from pod address 10.244.0.1 to a new port of pod address 10.244.0.2, both on
//! the namespace's loopback, so every event is a pod flow that is named and kept.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{MAX_FLOWS, arg, enable_conntrack, named_thread_cpu_ns, run, send_flows};
use flannel_netpol::cluster::ClusterState;
use flannel_netpol::flows::collector::Collector;
use flannel_netpol::flows::enrich::{PodDirectory, SharedDirectory};
use flannel_netpol::flows::metrics::{FlowLabels, FlowMetrics, SourceLabel};
use flannel_netpol::flows::ring::FlowRing;
use flannel_netpol::flows::sources::Readers;
use flannel_netpol::model::PodInfo;

const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// The enforcer's default `--flow-buffer`.
const RING: usize = 8192;

/// `pods` pods, 10.244.0.1 onwards, spread over 50 nodes.
fn directory(pods: u32) -> PodDirectory {
    let mut state = ClusterState::new();
    for i in 0..pods {
        let ip = Ipv4Addr::from(u32::from(SRC) + i);
        state.upsert_pod(PodInfo {
            namespace: format!("ns{}", i % 20),
            name: format!("pod-{i}"),
            labels: Default::default(),
            ips: vec![IpAddr::V4(ip)],
            node: Some(format!("n{}", i % 50)),
            ports: vec![],
        });
    }
    PodDirectory::from_state(&state)
}

/// This process's resident set, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("VmRSS")
}

/// CPU of the reader thread (which also names, counts and stores) now.
fn cpu() -> u64 {
    named_thread_cpu_ns("flows-conntrack").expect("reader thread")
}

fn main() {
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", 5);
    let pods = u32::try_from(arg("--pods", 5000)).expect("--pods");
    assert!(
        rate * seconds <= MAX_FLOWS,
        "rate x seconds must be at most {MAX_FLOWS} distinct flows"
    );
    flannel_lab::in_fresh_netns("bench-flows", move || {
        enable_conntrack();
        run(&["ip", "link", "set", "lo", "up"]);
        for ip in [SRC, DST] {
            run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let shared = SharedDirectory::new();
        shared.publish(directory(pods));
        let ring = Arc::new(FlowRing::new(RING));
        let metrics = Arc::new(FlowMetrics::default());
        let collector = Arc::new(Collector::new(
            "n0".into(),
            ring.clone(),
            shared,
            metrics.clone(),
        ));
        let (readers, errors) = Readers::start(&collector, None);
        assert!(errors.is_empty(), "{errors:?}");
        std::thread::sleep(Duration::from_millis(200));
        let rss_before = rss_kib();
        let before = cpu();
        let total = rate * seconds;
        let sent_in = send_flows((SRC, 0).into(), DST.into(), rate, total);
        // Let the last events arrive, then read the threads' CPU while they still run.
        let settle = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let after = cpu();
        let rss_after = rss_kib();
        drop(readers);
        println!(
            "  RSS {:.1} -> {:.1} MiB with the ring full ({:.0} bytes per record)",
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0,
            (rss_after.saturating_sub(rss_before) * 1024) as f64 / RING as f64
        );
        report(
            rate,
            total,
            sent_in,
            settle.elapsed(),
            before,
            after,
            &metrics,
            &ring,
        );
    })
    .expect("namespace");
}

#[allow(clippy::too_many_arguments)]
fn report(
    rate: u64,
    total: u64,
    sent_in: Duration,
    settle: Duration,
    before: u64,
    after: u64,
    metrics: &FlowMetrics,
    ring: &FlowRing,
) {
    let stored = metrics
        .flows
        .get_or_create(&FlowLabels {
            verdict: "FORWARDED".into(),
            protocol: "UDP".into(),
        })
        .get();
    let lost = |s: &str| {
        metrics
            .lost
            .get_or_create(&SourceLabel { source: s.into() })
            .get()
    };
    let wall = (sent_in + settle).as_secs_f64();
    let cpu = (after - before) as f64;
    println!(
        "flows collector: {total} new pod flows in {:.2} s ({:.0}/s, asked {rate}/s), no client attached",
        sent_in.as_secs_f64(),
        total as f64 / sent_in.as_secs_f64()
    );
    println!(
        "  records stored: {stored} (ring holds {} of {RING}); lost: conntrack overruns {}",
        ring.len(),
        lost("conntrack"),
    );
    println!(
        "  collector CPU (reader thread: receive, decode, name, count, store): {:.0} ms = {:.1} % of one core over {wall:.2} s, {:.0} ns per flow",
        cpu / 1e6,
        cpu / 1e9 / wall * 100.0,
        cpu / total.max(1) as f64
    );
}
