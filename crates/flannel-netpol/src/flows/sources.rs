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

/// The running reader threads; dropping this stops and joins them (within [`POLL`]).
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
                readers.spawn("flows-conntrack", move || pump.conntrack(source));
            }
            Err(e) => errors.push(e),
        }
        if let Some(group) = nflog_group {
            match NflogSource::open(group, RECV_BUFFER, POLL) {
                Ok(source) => {
                    let pump = Pump::new(collector, &readers.stop, LossSource::Nflog);
                    readers.spawn("flows-nflog", move || pump.nflog(source));
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

    fn conntrack(mut self, mut source: CtSource) {
        let mut events = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let received = source.recv(&mut events);
            let now = Timestamp::now();
            for e in events.drain(..) {
                if let Some(facts) = ct_facts(&e, now) {
                    self.collector.ingest(facts);
                }
            }
            self.after(received, source.overruns());
        }
    }

    fn nflog(mut self, mut source: NflogSource) {
        let mut events = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let received = source.recv(&mut events);
            let now = Timestamp::now();
            for e in events.drain(..) {
                self.collector.ingest(drop_facts(&e, now));
            }
            self.after(received, source.overruns());
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
}
