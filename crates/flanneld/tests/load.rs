//! Load: 1000 peers joining and leaving in bursts for two minutes. Memory must stay flat, the
//! final kernel state must be exact, and the event-to-programmed latency is reported.

use std::time::{Duration, Instant};

use flannel_lab::cluster::{HEALTHZ_PORT, http_get};
use flannel_lab::wait_for;
use flannel_types::{LeaseAttrs, RawJson};
use serde_json::json;

mod common;
use common::*;

const PEERS: u32 = 1000;
/// Peers leaving in one burst; a join burst brings every absent peer back (up to 1000).
const LEAVE_BURST: u32 = 500;
const RUN: Duration = Duration::from_secs(120);

fn peer(i: u32) -> (String, String) {
    let (hi, lo) = (i / 250, i % 250);
    let attrs = LeaseAttrs {
        public_ip: format!("198.19.{hi}.{}", lo + 1).parse().unwrap(),
        backend_type: "vxlan".into(),
        backend_data: Some(
            RawJson::parse(&format!(
                r#"{{"VNI":1,"VtepMAC":"0e:bb:00:00:{hi:02x}:{lo:02x}"}}"#
            ))
            .unwrap(),
        ),
        ..Default::default()
    };
    (
        format!("{PREFIX}/10.{}.{lo}.0-24", 100 + hi),
        attrs.to_json(),
    )
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The p-quantile of a Prometheus histogram (upper bound of the bucket it falls in).
fn histogram_quantile(metrics: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

#[test]
fn thousand_peers_in_bursts_for_two_minutes() {
    let mut c = flannel_lab::Cluster::start(spec(1)).expect("cluster");
    let mut conf = c.spec().net_config();
    conf["Network"] = json!("10.0.0.0/8");
    c.etcd()
        .etcdctl(["put", "/coreos.com/network/config", &conf.to_string()])
        .unwrap();
    c.stop_flanneld(0).unwrap();
    c.start_flanneld(0).unwrap();
    c.wait_ready(0).unwrap();
    let pid = c.flanneld(0).unwrap().pid();
    let endpoint = c.etcd().endpoints();

    // The writer runs inside the node namespace, where the etcd endpoint is reachable.
    let start = Instant::now();
    let samples = c
        .lab()
        .node(0)
        .netns()
        .in_thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut etcd = etcd_client::Client::connect([endpoint], None)
                    .await
                    .unwrap();
                let lease = etcd.lease_grant(3600, None).await.unwrap().id();
                let opts = || etcd_client::PutOptions::new().with_lease(lease);
                let mut present = vec![false; PEERS as usize];
                let mut samples = Vec::new();
                let mut round = 0u32;
                let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
                while start.elapsed() < RUN {
                    // Alternate: every absent peer joins at once, then half leave at random.
                    let join = round.is_multiple_of(2);
                    let candidates: Vec<u32> = if join {
                        (0..PEERS).collect()
                    } else {
                        (0..LEAVE_BURST)
                            .map(|_| {
                                seed ^= seed << 13;
                                seed ^= seed >> 7;
                                seed ^= seed << 17;
                                (seed % u64::from(PEERS)) as u32
                            })
                            .collect()
                    };
                    let mut ops = Vec::new();
                    for i in candidates {
                        if present[i as usize] == join {
                            continue;
                        }
                        present[i as usize] = join;
                        let (key, value) = peer(i);
                        ops.push(if join {
                            etcd_client::TxnOp::put(key, value, Some(opts()))
                        } else {
                            etcd_client::TxnOp::delete(key, None)
                        });
                    }
                    for chunk in ops.chunks(100) {
                        etcd.txn(etcd_client::Txn::new().and_then(chunk.to_vec()))
                            .await
                            .unwrap();
                    }
                    round += 1;
                    samples.push((start.elapsed().as_secs(), rss_kib(pid)));
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                samples
            })
        })
        .unwrap();

    // Final state exact.
    let want = desired_state(&c, 0);
    wait_for(
        "exact final state",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || Ok::<_, String>((normalise(kernel_state(&c, 0)) == want).then_some(())),
    )
    .unwrap();
    eprintln!("final state: {} peers, exact", want.0.len());

    // Memory flat: the second half of the run holds no more than the first half's peak + 25 %.
    let half = samples.len() / 2;
    let first = samples[..half].iter().map(|s| s.1).max().unwrap();
    let second = samples[half..].iter().map(|s| s.1).max().unwrap();
    eprintln!("RSS over time (s, KiB): {samples:?}");
    assert!(
        second * 4 <= first * 5,
        "RSS grew from {first} to {second} KiB"
    );

    let (_, body) = c
        .lab()
        .node(0)
        .netns()
        .in_thread(|| http_get(HEALTHZ_PORT, "/metrics"))
        .unwrap()
        .unwrap();
    let p99 = histogram_quantile(&body, "flannel_event_to_programmed_seconds", 0.99)
        .expect("latency observed");
    let p50 = histogram_quantile(&body, "flannel_event_to_programmed_seconds", 0.50).unwrap();
    eprintln!("event-to-programmed: p50 <= {p50} s, p99 <= {p99} s");
    assert!(p99 <= 6.6, "p99 {p99} s");
    assert!(c.flanneld(0).is_some());
}
