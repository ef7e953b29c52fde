//! Counters so far for the records of flows that are still open, attached when a query is
//! answered (see `crate::flowsrc::ctdump` for why they are not in the start record).
//!
//! A record is matched to a table entry by conntrack id and checked against the entry's
//! original tuple, so an id the kernel has reused for a newer flow gives no counters rather
//! than the wrong ones.

use std::collections::HashMap;
use std::sync::Arc;

use crate::flows::record::{Counters, FlowRecord, Verdict};
use crate::flowsrc::conntrack::{CtCounters, CtEvent};

/// Reads the conntrack table now (the daemon's is `ctdump::dump`); the error is its text.
pub type LiveTable = Arc<dyn Fn() -> Result<Vec<CtEvent>, String> + Send + Sync>;

/// Whether `record` is a flow start whose counters a table could give.
pub fn wants_counters(record: &FlowRecord) -> bool {
    record.verdict == Verdict::Forwarded
        && !record.ended
        && record.forward.is_none()
        && record.conntrack_id.is_some()
}

/// Gives each open flow of `records` found in `table` its counters so far; returns how many
/// got them.
pub fn attach(records: &mut [FlowRecord], table: &[CtEvent]) -> usize {
    let by_id: HashMap<u32, &CtEvent> = table.iter().filter_map(|e| Some((e.id?, e))).collect();
    let counters = |c: Option<CtCounters>| {
        c.map(|c| Counters {
            packets: c.packets,
            bytes: c.bytes,
        })
    };
    let mut attached = 0;
    for r in records.iter_mut().filter(|r| wants_counters(r)) {
        let Some(e) = r.conntrack_id.and_then(|id| by_id.get(&id)) else {
            continue;
        };
        let same = e.orig.src == Some(r.src_ip)
            && e.orig.dst == Some(r.dst_ip)
            && (r.src_port.is_none() || e.orig.sport == r.src_port)
            && (r.dst_port.is_none() || e.orig.dport == r.dst_port);
        if same && e.orig_counters.is_some() {
            r.forward = counters(e.orig_counters);
            r.reply = counters(e.reply_counters);
            attached += 1;
        }
    }
    attached
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::tests::tcp_facts;
    use crate::flowsrc::conntrack::{CtKind, CtTuple};

    fn entry(id: u32, src: &str, sport: u16) -> CtEvent {
        CtEvent {
            kind: CtKind::New,
            id: Some(id),
            proto: 6,
            orig: CtTuple {
                src: Some(src.parse().unwrap()),
                dst: Some("10.244.2.3".parse().unwrap()),
                sport: Some(sport),
                dport: Some(80),
                icmp: None,
            },
            reply: CtTuple::default(),
            tcp_state: Some(3),
            status: None,
            orig_counters: Some(CtCounters {
                packets: 5,
                bytes: 500,
            }),
            reply_counters: Some(CtCounters {
                packets: 4,
                bytes: 4000,
            }),
        }
    }

    fn open(id: u32) -> FlowRecord {
        let mut f = tcp_facts("10.244.1.2", "10.244.2.3", 1);
        f.conntrack_id = Some(id);
        FlowRecord::from_facts(f)
    }

    #[test]
    fn open_flows_get_counters_by_id_and_tuple() {
        let mut ended = open(3);
        ended.ended = true;
        let mut records = vec![open(1), open(2), open(3), ended, open(9)];
        records[1].conntrack_id = Some(2);
        let table = [
            entry(1, "10.244.1.2", 40000),
            // Id 2 now belongs to another flow: no counters.
            entry(2, "10.244.1.7", 40000),
            entry(3, "10.244.1.2", 40000),
        ];
        assert_eq!(attach(&mut records, &table), 2);
        assert_eq!(records[0].forward.unwrap().bytes, 500);
        assert_eq!(records[0].reply.unwrap().bytes, 4000);
        assert_eq!(records[1].forward, None);
        assert_eq!(records[2].forward.unwrap().packets, 5);
        assert_eq!(records[3].forward, None, "an ended record keeps its own");
        assert_eq!(records[4].forward, None, "gone from the table");
        assert!(!wants_counters(&records[0]), "once attached");
    }
}
