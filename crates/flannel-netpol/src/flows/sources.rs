//! The kernel readers that feed the collector: one thread per netlink source, mapping the
//! decoders' events ([`CtEvent`], [`DropEvent`]) to [`KernelFacts`] and handing them to
//! [`Collector::ingest`] on the same thread.
//!
//! Threads, not tasks: a netlink multicast socket is a blocking reader that should drain as
//! fast as the kernel fills it, and the enforcer's one async task must not share its time
//! with 10 000 events a second. Each thread blocks in `recv` with a short timeout so it sees
//! the stop flag. Nothing here touches the packet path: the kernel queues events and drops
//! them itself when a socket is full, and the reader counts that as an overrun.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{info, warn};

use crate::compile::{EGRESS, INGRESS};
use crate::flows::collector::Collector;
use crate::flows::metrics::LossSource;
use crate::flows::record::{Counters, Direction, KernelFacts, Verdict};
use crate::flowsrc::SocketError;
use crate::flowsrc::conntrack::{CtCounters, CtEvent, CtKind, CtSource, RecvError};
use crate::flowsrc::nflog::{DropEvent, NflogSource};

/// Receive buffer asked for per socket: about 4 MiB holds a burst of ~20 000 conntrack
/// events (the kernel caps it at `net.core.rmem_max` unless the process may override it,
/// which the enforcer as root may).
pub const RECV_BUFFER: usize = 4 << 20;

/// How long a reader blocks before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(250);

/// How long a reader sleeps after a burst, letting events queue (see `Pump::run`). The
/// socket buffer ([`RECV_BUFFER`]) holds about two seconds of events at 10 000 a second.
pub const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Datagrams drained per wake-up at most, so the stop flag is seen under any load.
const MAX_DRAIN: usize = 100_000;

/// A kernel event socket as the reader loop uses it.
trait Source {
    type Event;
    /// Appends the next datagram's events; `wait` blocks up to the socket's timeout. Whether
    /// a datagram (or an overrun) was there.
    fn receive(&mut self, out: &mut Vec<Self::Event>, wait: bool) -> Result<bool, RecvError>;
    /// Overruns counted so far.
    fn overruns(&self) -> u64;
}

impl Source for CtSource {
    type Event = CtEvent;
    fn receive(&mut self, out: &mut Vec<CtEvent>, wait: bool) -> Result<bool, RecvError> {
        CtSource::receive(self, out, wait)
    }
    fn overruns(&self) -> u64 {
        CtSource::overruns(self)
    }
}

impl Source for NflogSource {
    type Event = DropEvent;
    fn receive(&mut self, out: &mut Vec<DropEvent>, wait: bool) -> Result<bool, RecvError> {
        NflogSource::receive(self, out, wait)
    }
    fn overruns(&self) -> u64 {
        NflogSource::overruns(self)
    }
}

/// A flow that conntrack reported, as facts; `None` when the kernel sent no addresses.
pub fn ct_facts(event: &CtEvent, time: Timestamp) -> Option<KernelFacts> {
    let (src_ip, dst_ip) = (event.orig.src?, event.orig.dst?);
    let counters = |c: Option<CtCounters>| {
        c.map(|c| Counters {
            packets: c.packets,
            bytes: c.bytes,
        })
    };
    Some(KernelFacts {
        time,
        verdict: Verdict::Forwarded,
        protocol: event.proto,
        src_ip,
        dst_ip,
        src_port: event.orig.sport,
        dst_port: event.orig.dport,
        tcp_flags: None,
        forward: counters(event.orig_counters),
        reply: counters(event.reply_counters),
        ended: event.kind == CtKind::Destroy,
        policy: None,
        direction: None,
        conntrack_id: event.id,
    })
}

/// A packet a policy drop rule logged, as facts: the prefix's identity becomes the policy and
/// its direction word the direction (see `compile::drop_prefix`).
pub fn drop_facts(event: &DropEvent, time: Timestamp) -> KernelFacts {
    let (policy, direction) = split_prefix(&event.prefix);
    KernelFacts {
        time,
        verdict: Verdict::Dropped,
        protocol: event.proto,
        src_ip: event.src,
        dst_ip: event.dst,
        src_port: event.sport,
        dst_port: event.dport,
        tcp_flags: event.tcp_flags,
        forward: Some(Counters {
            packets: 1,
            bytes: u64::from(event.len),
        }),
        reply: None,
        ended: false,
        policy: Some(policy.to_string()),
        direction,
        conntrack_id: None,
    }
}

/// `team-a/web ingress` → (`team-a/web`, ingress). A prefix without a direction word (rules
/// written by an older enforcer) is all identity.
pub fn split_prefix(prefix: &str) -> (&str, Option<Direction>) {
    let prefix = prefix.trim();
    match prefix.rsplit_once(' ') {
        Some((identity, INGRESS)) => (identity, Some(Direction::Ingress)),
        Some((identity, EGRESS)) => (identity, Some(Direction::Egress)),
        _ => (prefix, None),
    }
}

/// The running reader threads; dropping this stops and joins them (within a quarter second).
#[derive(Debug, Default)]
pub struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Opens the conntrack source, and the NFLOG source when `nflog_group` is given, and starts
    /// a thread for each that opened. A source that cannot open is logged and left out (the
    /// other still reports); the error list says which.
    pub fn start(
        collector: &Arc<Collector>,
        nflog_group: Option<u16>,
    ) -> (Readers, Vec<SocketError>) {
        let mut readers = Readers::default();
        let mut errors = Vec::new();
        match CtSource::open(RECV_BUFFER, POLL) {
            Ok(source) => {
                let pump = Pump::new(collector, &readers.stop, LossSource::Conntrack);
                readers.spawn("flows-conntrack", move || pump.run(source, ct_facts));
            }
            Err(e) => errors.push(e),
        }
        if let Some(group) = nflog_group {
            match NflogSource::open(group, RECV_BUFFER, POLL) {
                Ok(source) => {
                    let pump = Pump::new(collector, &readers.stop, LossSource::Nflog);
                    readers.spawn("flows-nflog", move || {
                        pump.run(source, |e, t| Some(drop_facts(e, t)));
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        for e in &errors {
            warn!("flow records: {e}: {}", e.source);
        }
        if !readers.threads.is_empty() {
            info!("flow records: {} kernel reader(s) started", readers.len());
        }
        (readers, errors)
    }

    fn spawn(&mut self, name: &str, body: impl FnOnce() + Send + 'static) {
        match std::thread::Builder::new().name(name.into()).spawn(body) {
            Ok(handle) => self.threads.push(handle),
            Err(e) => warn!("flow records: cannot start thread {name}: {e}"),
        }
    }

    /// Reader threads running.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether no reader runs.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One reader thread's loop state: where events go, when to stop, what losses to report.
struct Pump {
    collector: Arc<Collector>,
    stop: Arc<AtomicBool>,
    loss: LossSource,
    reported_overruns: u64,
    warned: bool,
}

impl Pump {
    fn new(collector: &Arc<Collector>, stop: &Arc<AtomicBool>, loss: LossSource) -> Pump {
        Pump {
            collector: collector.clone(),
            stop: stop.clone(),
            loss,
            reported_overruns: 0,
            warned: false,
        }
    }

    /// Reads until stopped: a blocking receive (bounded by the socket's timeout) wakes the
    /// thread for the first event, everything queued since is drained without waiting, and
    /// then the thread sleeps [`BATCH_PAUSE`] so the next events queue up in the socket
    /// meanwhile. Under load the thread wakes about 100 times a second instead of once per
    /// event, which was a third of the reader's CPU; a record is at most that much later.
    fn run<S: Source>(
        mut self,
        mut source: S,
        facts: fn(&S::Event, Timestamp) -> Option<KernelFacts>,
    ) {
        let mut events = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let mut received = source.receive(&mut events, true);
            let active = !events.is_empty();
            let mut drained = 0;
            while received.is_ok() && drained < MAX_DRAIN {
                self.ingest(&mut events, facts);
                match source.receive(&mut events, false) {
                    Ok(true) => drained += 1,
                    Ok(false) => break,
                    Err(e) => received = Err(e),
                }
            }
            self.ingest(&mut events, facts);
            self.after(received.map(|_| ()), source.overruns());
            if active {
                std::thread::sleep(BATCH_PAUSE);
            }
        }
    }

    fn ingest<E>(&self, events: &mut Vec<E>, facts: fn(&E, Timestamp) -> Option<KernelFacts>) {
        let now = Timestamp::now();
        for e in events.drain(..) {
            if let Some(f) = facts(&e, now) {
                self.collector.ingest(f);
            }
        }
    }

    /// Reports new overruns and receive errors as lost events; the first error is logged, the
    /// rest only counted, so a broken source cannot flood the log. A socket error other than
    /// a timeout pauses the loop briefly, so it cannot spin either.
    fn after(&mut self, received: Result<(), RecvError>, overruns: u64) {
        if overruns > self.reported_overruns {
            self.collector
                .lost(self.loss, overruns - self.reported_overruns);
            self.reported_overruns = overruns;
        }
        if let Err(e) = received {
            self.collector.lost(self.loss, 1);
            if !self.warned {
                warn!("flow records ({:?}): {e}; counted as lost", self.loss);
                self.warned = true;
            }
            if matches!(e, RecvError::Socket(_)) {
                std::thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowsrc::conntrack::CtTuple;
    use std::net::IpAddr;

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> CtTuple {
        CtTuple {
            src: Some(src.parse().unwrap()),
            dst: Some(dst.parse().unwrap()),
            sport: Some(sport),
            dport: Some(dport),
            icmp: None,
        }
    }

    #[test]
    fn conntrack_events_map_to_forwarded_facts_with_counters_when_ended() {
        let t = Timestamp::from_second(7).unwrap();
        let mut e = CtEvent {
            kind: CtKind::New,
            id: Some(1),
            proto: 6,
            orig: tuple("10.244.1.2", "10.244.2.3", 40000, 80),
            reply: tuple("10.244.2.3", "10.244.1.2", 80, 40000),
            tcp_state: Some(1),
            status: None,
            orig_counters: None,
            reply_counters: None,
        };
        let f = ct_facts(&e, t).unwrap();
        assert_eq!(f.verdict, Verdict::Forwarded);
        assert!(!f.ended);
        assert_eq!((f.src_port, f.dst_port), (Some(40000), Some(80)));
        assert_eq!(f.src_ip, "10.244.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(f.forward, None);
        e.kind = CtKind::Destroy;
        e.orig_counters = Some(CtCounters {
            packets: 6,
            bytes: 3400,
        });
        e.reply_counters = Some(CtCounters {
            packets: 4,
            bytes: 900,
        });
        let f = ct_facts(&e, t).unwrap();
        assert!(f.ended);
        assert_eq!(f.forward.unwrap().bytes, 3400);
        assert_eq!(f.reply.unwrap().packets, 4);
        e.orig.src = None;
        assert!(ct_facts(&e, t).is_none(), "no address, no record");
    }

    #[test]
    fn drop_prefixes_give_policy_and_direction() {
        assert_eq!(
            split_prefix("team-a/web ingress"),
            ("team-a/web", Some(Direction::Ingress))
        );
        assert_eq!(
            split_prefix("default deny egress"),
            ("default deny", Some(Direction::Egress))
        );
        assert_eq!(split_prefix("team-a/web"), ("team-a/web", None));
        assert_eq!(split_prefix("default deny"), ("default deny", None));
        assert_eq!(
            split_prefix(&crate::compile::drop_prefix("p0123456789ab", false)),
            ("p0123456789ab", Some(Direction::Egress))
        );
    }

    #[test]
    fn drops_map_to_dropped_facts_with_flags_and_one_packet() {
        let e = DropEvent {
            prefix: "x/deny ingress".into(),
            proto: 6,
            src: "10.244.1.2".parse().unwrap(),
            dst: "10.244.2.3".parse().unwrap(),
            sport: Some(41000),
            dport: Some(80),
            icmp: None,
            tcp_flags: Some(0x02),
            len: 60,
            indev: None,
            outdev: None,
        };
        let f = drop_facts(&e, Timestamp::from_second(1).unwrap());
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.policy.as_deref(), Some("x/deny"));
        assert_eq!(f.direction, Some(Direction::Ingress));
        assert_eq!(f.tcp_flags, Some(0x02));
        assert_eq!(
            f.forward,
            Some(Counters {
                packets: 1,
                bytes: 60
            })
        );
    }

    /// The reader threads in a namespace of their own: a TCP exchange between two "pod"
    /// addresses and a UDP packet dropped by a logging rule both end up as named records,
    /// and dropping the readers stops their threads promptly.
    #[test]
    fn readers_feed_the_collector_from_the_kernel_and_stop() {
        use crate::cluster::ClusterState;
        use crate::flows::enrich::{PodDirectory, SharedDirectory};
        use crate::flows::filter::FlowFilter;
        use crate::flows::metrics::FlowMetrics;
        use crate::flows::ring::FlowRing;
        use crate::model::PodInfo;
        use std::io::{Read, Write};
        use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
        use std::process::Command;
        use std::time::Instant;

        flannel_lab::in_fresh_netns("flows-readers", || {
            let (a, b) = (Ipv4Addr::new(10, 244, 0, 1), Ipv4Addr::new(10, 244, 0, 2));
            let rules = [
                "link set lo up".to_string(),
                format!("addr add {a}/32 dev lo"),
                format!("addr add {b}/32 dev lo"),
            ];
            for r in rules {
                let out = Command::new("ip").args(r.split(' ')).output().expect("ip");
                assert!(out.status.success(), "ip {r}: {out:?}");
            }
            let nft = "add table inet t; add chain inet t out { type filter hook output priority 0; }; add rule inet t out ct state new counter; add rule inet t out udp dport 9 log prefix \"x/deny ingress\" group 7 drop";
            let out = Command::new("nft").arg(nft).output().expect("nft");
            assert!(out.status.success(), "{out:?}");
            let mut state = ClusterState::new();
            for (name, ip) in [("a", a), ("b", b)] {
                state.upsert_pod(PodInfo {
                    namespace: "x".into(),
                    name: name.into(),
                    labels: Default::default(),
                    ips: vec![ip.into()],
                    node: Some("n1".into()),
                    ports: vec![],
                });
            }
            let directory = SharedDirectory::new();
            directory.publish(PodDirectory::from_state(&state));
            let ring = Arc::new(FlowRing::new(100));
            let collector = Arc::new(Collector::new(
                "n1".into(),
                ring.clone(),
                directory,
                Arc::new(FlowMetrics::default()),
            ));
            let (readers, errors) = Readers::start(&collector, Some(7));
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(readers.len(), 2);

            let listener = TcpListener::bind((b, 0)).expect("listen");
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept");
                let mut got = [0u8; 100];
                s.read_exact(&mut got).expect("read");
                s.write_all(&[1u8; 300]).expect("write");
            });
            let mut c = std::net::TcpStream::connect((b, port)).expect("connect");
            // The kernel picks the source address of a local connection (b itself here).
            let src = c.local_addr().unwrap().ip();
            let src_pod = if src == std::net::IpAddr::from(a) { "a" } else { "b" };
            c.write_all(&[0u8; 100]).expect("write");
            let mut back = [0u8; 300];
            c.read_exact(&mut back).expect("read");
            server.join().unwrap();
            drop::<TcpStream>(c);
            let udp = UdpSocket::bind((a, 0)).expect("udp");
            let _ = udp.send_to(b"x", (b, 9));

            let deadline = Instant::now() + Duration::from_secs(5);
            let held = loop {
                let held = ring.snapshot(&FlowFilter::default(), Timestamp::now());
                let tcp = held.iter().any(|r| r.dst_port == Some(port));
                let drop = held.iter().any(|r| r.verdict == Verdict::Dropped);
                if tcp && drop {
                    break held;
                }
                assert!(Instant::now() < deadline, "{held:#?}");
                std::thread::sleep(Duration::from_millis(20));
            };
            let tcp = held.iter().find(|r| r.dst_port == Some(port)).unwrap();
            assert_eq!(tcp.src_ip, src);
            assert_eq!(tcp.src_pod_ref(), Some(("x", src_pod)));
            assert_eq!(tcp.dst_pod_ref(), Some(("x", "b")));
            assert!(tcp.conntrack_id.is_some());
            let d = held.iter().find(|r| r.verdict == Verdict::Dropped).unwrap();
            assert_eq!(d.policy.as_deref(), Some("x/deny"));
            assert_eq!(d.direction, Some(Direction::Ingress));
            assert_eq!(d.dst_port, Some(9));
            let stopping = Instant::now();
            drop(readers);
            assert!(stopping.elapsed() < Duration::from_secs(2), "{:?}", stopping.elapsed());
        })
        .expect("namespace");
    }
}
