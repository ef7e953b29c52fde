//! Measures the node watch's memory: `serve N ADDRFILE` runs the API emulator with N realistic
//! Nodes (~8.7 KB of JSON each: 40 images, 20 labels, 4 conditions) and writes its URL to
//! ADDRFILE; `watch URL` runs the kube manager's watch against it until the first snapshot and
//! prints the time, the process's peak RSS (VmHWM) and its RSS after.
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

use flannel_kube_emu::{EmuConfig, Emulator};
use flannel_subnet::kube::{KubeManager, KubeOptions};
use flannel_subnet::{SubnetManager, WatchEvent};
use flannel_types::{LeaseEvent, LeaseSet};
use serde_json::{Value, json};

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn node(i: u32) -> Value {
    let images: Vec<Value> = (0..40)
        .map(|j| json!({"names": [format!("registry.example/app{j}@sha256:{:064x}", j), format!("registry.example/app{j}:v1.{j}")], "sizeBytes": 10_000_000 + j}))
        .collect();
    let labels: serde_json::Map<String, Value> = (0..20)
        .map(|j| {
            (
                format!("example.com/label-{j}"),
                json!(format!("value-{j}")),
            )
        })
        .collect();
    let k = "flannel.alpha.coreos.com";
    json!({
        "metadata": {"name": format!("n{i}"), "labels": labels, "annotations": {
            "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            format!("{k}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"aa:bb:cc:00:{:02x}:{:02x}"}}"#, i / 256, i % 256),
            format!("{k}/backend-type"): "vxlan",
            format!("{k}/kube-subnet-manager"): "true",
            format!("{k}/public-ip"): format!("198.18.{}.{}", i / 256, i % 256),
        }},
        "spec": {"podCIDR": format!("10.{}.{}.0/24", i / 256, i % 256), "podCIDRs": [format!("10.{}.{}.0/24", i / 256, i % 256)]},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:10Z", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available"}
            ],
            "addresses": [{"type": "InternalIP", "address": format!("198.18.{}.{}", i / 256, i % 256)}, {"type": "Hostname", "address": format!("n{i}")}],
            "nodeInfo": {"machineID": "abc", "kernelVersion": "6.12.0", "osImage": "Debian GNU/Linux 13", "containerRuntimeVersion": "containerd://2.0.0", "kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "architecture": "amd64", "operatingSystem": "linux", "bootID": "x", "systemUUID": "y"},
            "images": images
        }
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "serve" => {
            let n: u32 = args[2].parse().unwrap();
            let emu = Emulator::new(EmuConfig::default());
            for i in 1..=n {
                emu.create_node(node(i)).unwrap();
            }
            let server = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
            std::fs::write(&args[3], server.url()).unwrap();
            eprintln!("node JSON size: {} bytes", node(1).to_string().len());
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {
            let dir = std::env::temp_dir().join(format!("watch-rss-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("net-conf.json");
            std::fs::write(
                &conf,
                r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
            )
            .unwrap();
            let m = KubeManager::connect(KubeOptions {
                api_url: args[2].clone(),
                kubeconfig: String::new(),
                annotation_prefix: "flannel.alpha.coreos.com".into(),
                net_config_path: conf,
                set_node_network_unavailable: false,
                node_name: Some("n1".into()),
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
