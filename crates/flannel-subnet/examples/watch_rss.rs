//! Measures the node watch's memory: `serve N ADDRFILE` runs the API emulator with N Nodes from
//! its scale-test generator (`flannel_kube_emu::generate`, ~10.8 KB of JSON each: labels,
//! managedFields, conditions, 30 images, nodeInfo; the same nodes as `bench/kube-scale`) and
//! writes its URL to ADDRFILE; `watch URL` runs the kube manager's watch against it, as
//! generated node 0, until the first snapshot and prints the time, the process's peak RSS
//! (VmHWM) and its RSS after.
//!
//! Run both inside a network namespace of their own, never on the host's loopback:
//!
//! ```sh
//! cargo build --release -p flannel-subnet --example watch_rss
//! unshare -n sh -c 'ip link set lo up; B=target/release/examples/watch_rss; \
//!   $B serve 5000 /tmp/emu-url & while [ ! -s /tmp/emu-url ]; do sleep 0.2; done; \
//!   $B watch "$(cat /tmp/emu-url)"; kill $!; rm /tmp/emu-url'
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::time::{Duration, Instant};

use flannel_kube_emu::generate;
use flannel_kube_emu::{EmuConfig, Emulator};
use flannel_subnet::kube::{KubeManager, KubeOptions};
use flannel_subnet::{SubnetManager, WatchEvent};
use flannel_types::{LeaseEvent, LeaseSet};

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The pod network the generated nodes' /24s come from (the emulator's default).
const NETWORK: &str = "10.128.0.0/9";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "serve" => {
            let n: usize = args[2].parse().unwrap();
            let network = NETWORK.parse().unwrap();
            let emu = Emulator::new(EmuConfig::default());
            for i in 0..n {
                emu.create_node(generate::node(i, network)).unwrap();
            }
            let server = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
            std::fs::write(&args[3], server.url()).unwrap();
            eprintln!(
                "node JSON size: {} bytes",
                generate::node(1, network).to_string().len()
            );
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {
            let dir = std::env::temp_dir().join(format!("watch-rss-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("net-conf.json");
            std::fs::write(
                &conf,
                format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#),
            )
            .unwrap();
            let m = KubeManager::connect(KubeOptions {
                api_url: args[2].clone(),
                kubeconfig: String::new(),
                annotation_prefix: "flannel.alpha.coreos.com".into(),
                net_config_path: conf,
                set_node_network_unavailable: false,
                node_name: Some(generate::node_name(0)),
                pod_name: None,
                pod_namespace: None,
                event_queue_depth: None,
            })
            .await
            .unwrap();
            let own = m
                .acquire_lease(
                    &m.network_config().await.unwrap(),
                    &m.stored_attrs(None).await.unwrap().unwrap(),
                )
                .await
                .unwrap();
            let rss0 = status("VmRSS:");
            let t = Instant::now();
            let mut rx = m.watch_leases(&own);
            let mut set = LeaseSet::new(Some(own));
            let Some(WatchEvent::Leases(ev @ LeaseEvent::Snapshot(_))) = rx.recv().await else {
                panic!()
            };
            let took = t.elapsed();
            set.apply(ev);
            println!(
                "peers {} list+snapshot {:?} rss_before_watch {} KiB peak(VmHWM) {} KiB rss_after {} KiB",
                set.len(),
                took,
                rss0,
                status("VmHWM:"),
                status("VmRSS:")
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
