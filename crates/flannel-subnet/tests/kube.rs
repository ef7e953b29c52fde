//! The Kubernetes subnet manager against the in-process API emulator (`flannel-kube-emu`):
//! client set-up, node name resolution, lease acquisition and annotations, the
//! NetworkUnavailable condition, and the node watch through watch drops and 410 Gone.
//!
//! The emulator is not an API server; these tests rely only on the API semantics it documents
//! (list/watch with resourceVersion, 410 Expired, status subresource, strategic merge).

#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flannel_kube_emu::{EmuConfig, Emulator, PatchType, Server, Subresource};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns};
use flannel_subnet::kube::{KubeError, KubeManager, KubeOptions};
use flannel_subnet::{SubnetError, SubnetManager, WatchEvent};
use flannel_types::{
    AnnotationKeys, Lease, LeaseAttrs, LeaseEvent, LeaseSet, NetConfig, RawJson, SubnetKey,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

struct Env {
    emu: Emulator,
    server: Server,
    dir: tempfile::TempDir,
}

/// Brings `lo` up in the test's fresh namespace (it starts down, and loopback connections
/// fail until it is up).
async fn loopback_up() {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
}

/// Starts the emulator on loopback. Tests run in a fresh network namespace of their own
/// (`run_in_netns(NetnsTarget::Fresh, ..)`), so this brings its `lo` up first and the emulator
/// never listens on the host's loopback.
async fn env(config: EmuConfig) -> Env {
    loopback_up().await;
    let emu = Emulator::new(config);
    let server = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("net-conf.json"), NET_CONF).unwrap();
    Env { emu, server, dir }
}

/// [`env`] with node `n1` (podCIDR 10.244.0.0/24) already registered.
async fn env_with_n1() -> Env {
    let e = env(EmuConfig::default()).await;
    e.emu.add_node("n1", &["10.244.0.0/24"], json!({})).unwrap();
    e
}

impl Env {
    fn opts(&self) -> KubeOptions {
        KubeOptions {
            api_url: self.server.url(),
            kubeconfig: String::new(),
            annotation_prefix: "flannel.alpha.coreos.com".into(),
            net_config_path: self.dir.path().join("net-conf.json"),
            set_node_network_unavailable: true,
            node_name: Some("n1".into()),
            pod_name: None,
            pod_namespace: None,
            event_queue_depth: None,
        }
    }

    async fn manager(&self) -> KubeManager {
        KubeManager::connect(self.opts()).await.unwrap()
    }

    /// A manager for `n1` that has acquired its vxlan lease (public IP 198.18.0.1).
    async fn manager_with_lease(&self) -> (KubeManager, Lease) {
        let m = self.manager().await;
        let own = m
            .acquire_lease(&config(), &vxlan_attrs("198.18.0.1", &mac(1)))
            .await
            .unwrap();
        (m, own)
    }
}

fn keys() -> AnnotationKeys {
    AnnotationKeys::default()
}

fn vxlan_attrs(ip: &str, mac: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip.parse().unwrap(),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(RawJson::parse(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)).unwrap()),
        backend_v6_data: None,
    }
}

/// Annotations a flannel node carries, as flanneld writes them.
fn flannel_annotations(ip: &str, mac: &str) -> Value {
    let k = keys();
    json!({
        k.kube_subnet_manager: "true",
        k.backend_type: "vxlan",
        k.backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        k.public_ip: ip,
    })
}

fn config() -> NetConfig {
    NetConfig::parse(NET_CONF).unwrap()
}

#[test]
fn acquire_writes_upstream_annotations_once_and_completes() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env_with_n1().await;
        let m = e.manager().await;
        assert_eq!(m.name(), "Kubernetes Subnet Manager - n1");
        assert_eq!(m.stored_attrs(None).await.unwrap(), None);

        let attrs = vxlan_attrs("198.18.0.1", "aa:bb:cc:00:00:01");
        let lease = m.acquire_lease(&config(), &attrs).await.unwrap();
        assert_eq!(m.own_node_patches(), 1);
        assert_eq!(lease.subnet.unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(lease.ipv6_subnet, None);
        assert_eq!(lease.expiration, None);
        let node = e.emu.node("n1").unwrap();
        assert_eq!(
            node["metadata"]["annotations"],
            json!({
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:00:00:01\"}",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "198.18.0.1"
            })
        );

        // A second acquisition with the same attributes writes nothing.
        let rv = e.emu.resource_version();
        m.acquire_lease(&config(), &attrs).await.unwrap();
        assert_eq!(e.emu.resource_version(), rv);
        assert_eq!(m.own_node_patches(), 1, "an unchanged node is not patched");

        // The stored attributes give the VtepMAC back after a restart.
        let stored = m.stored_attrs(None).await.unwrap().unwrap();
        assert_eq!(stored.backend_data, attrs.backend_data);

        // NetworkUnavailable=False is merged by type next to the kubelet's Ready condition.
        m.complete_lease(&lease).await.unwrap();
        assert_eq!(m.own_node_patches(), 2);
        assert!(flannel_subnet::kube::own_node_patches() >= 2);
        let conds = e.emu.node("n1").unwrap()["status"]["conditions"].clone();
        let by_type: BTreeMap<String, Value> = conds
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap().to_string(), c.clone()))
            .collect();
        assert_eq!(by_type["Ready"]["status"], "True");
        let nu = &by_type["NetworkUnavailable"];
        assert_eq!(nu["status"], "False");
        assert_eq!(nu["reason"], "FlannelIsUp");
        assert_eq!(nu["message"], "Flannel is running on this node");
        assert!(nu["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
        assert!(nu["lastHeartbeatTime"].is_string());
        assert!(matches!(
            m.renew_lease(&lease).await,
            Err(SubnetError::Unsupported(_))
        ));
    })
}

#[test]
fn network_unavailable_can_be_left_alone() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env_with_n1().await;
        let mut opts = e.opts();
        opts.set_node_network_unavailable = false;
        let m = KubeManager::connect(opts).await.unwrap();
        let lease = m
            .acquire_lease(&config(), &vxlan_attrs("198.18.0.1", "aa:bb:cc:00:00:01"))
            .await
            .unwrap();
        let rv = e.emu.resource_version();
        m.complete_lease(&lease).await.unwrap();
        assert_eq!(e.emu.resource_version(), rv);
    })
}

#[test]
fn overwrite_and_node_public_ip_annotations() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env(EmuConfig::default()).await;
        let k = keys();
        e.emu
            .add_node(
                "n1",
                &["10.244.0.0/24"],
                json!({ k.public_ip_overwrite.clone(): "203.0.113.7", k.node_public_ip.clone(): "198.18.0.9" }),
            )
            .unwrap();
        let m = e.manager().await;
        assert_eq!(
            m.public_ip_overrides().await.unwrap(),
            (Some("198.18.0.9".into()), None)
        );
        m.acquire_lease(&config(), &vxlan_attrs("198.18.0.1", "aa:bb:cc:00:00:01"))
            .await
            .unwrap();
        let node = e.emu.node("n1").unwrap();
        assert_eq!(node["metadata"]["annotations"][&k.public_ip], "203.0.113.7");
    })
}

#[test]
fn acquire_errors_read_as_upstream() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env(EmuConfig::default()).await;
        let m = e.manager().await;
        let attrs = vxlan_attrs("198.18.0.1", "aa:bb:cc:00:00:01");
        // No Node object yet: a datastore error (the daemon retries).
        match m.acquire_lease(&config(), &attrs).await {
            Err(SubnetError::Datastore { operation, source }) => {
                assert!(operation.contains("n1"), "{operation}");
                assert!(source.to_string().contains("not found"), "{source}");
                assert!(
                    matches!(source, flannel_subnet::DatastoreCause::Kube(_)),
                    "the kube client's error is kept as the cause: {source:?}"
                );
            }
            other => panic!("expected a datastore error, got {other:?}"),
        }
        e.emu.add_node("n1", &[], json!({})).unwrap();
        let err = m.acquire_lease(&config(), &attrs).await.unwrap_err();
        assert_eq!(err.to_string(), r#"node "n1" pod cidr not assigned"#);
        assert!(matches!(err, SubnetError::LeaseRejected(_)));
        // Nothing was written for a rejected node.
        assert_eq!(
            e.emu.node("n1").unwrap()["metadata"]["annotations"],
            json!({})
        );

        let refusal = async || {
            let e = m.acquire_lease(&config(), &attrs).await.unwrap_err();
            e.to_string()
        };
        e.emu
            .patch_node(
                "n1",
                &json!({"spec":{"podCIDR":"10.96.0.0/24"}}),
                PatchType::Merge,
                Subresource::Main,
            )
            .unwrap();
        assert_eq!(
            refusal().await,
            r#"subnet "10.244.0.0/16" specified in the flannel net config doesn't contain "10.96.0.0/24" PodCIDR of the "n1" node"#
        );
        e.emu
            .force_pod_cidrs("n1", &["10.244.0.0/24", "fd00::/64", "10.244.9.0/24"])
            .unwrap();
        assert_eq!(
            refusal().await,
            r#"node "n1" pod cidrs should be IPv4/IPv6 only or dualstack"#
        );
    })
}

#[test]
fn start_up_errors_read_as_upstream() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env(EmuConfig::default()).await;
        let mut o = e.opts();
        o.node_name = None;
        let err = KubeManager::connect(o.clone()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "env variables POD_NAME and POD_NAMESPACE must be set"
        );

        o.pod_name = Some("kube-flannel-ds-abcde".into());
        o.pod_namespace = Some("kube-flannel".into());
        let err = KubeManager::connect(o.clone()).await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "error retrieving pod spec for 'kube-flannel/kube-flannel-ds-abcde': "
            ),
            "{err}"
        );

        e.emu
            .create_pod(
                "kube-flannel",
                json!({"metadata":{"name":"kube-flannel-ds-abcde"},"spec":{"containers":[]}}),
            )
            .unwrap();
        let err = KubeManager::connect(o.clone()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "node name not present in pod spec 'kube-flannel/kube-flannel-ds-abcde'"
        );
        e.emu
            .create_pod(
                "kube-flannel",
                json!({"metadata":{"name":"kube-flannel-ds-xyz"},"spec":{"nodeName":"n7","containers":[]}}),
            )
            .unwrap();
        o.pod_name = Some("kube-flannel-ds-xyz".into());
        let m = KubeManager::connect(o.clone()).await.unwrap();
        assert_eq!(m.node_name(), "n7");

        let mut bad = e.opts();
        bad.net_config_path = e.dir.path().join("missing.json");
        let err = KubeManager::connect(bad).await.unwrap_err();
        assert!(matches!(err, KubeError::ReadNetConf { .. }));
        assert!(
            err.to_string().starts_with("failed to read net conf: "),
            "{err}"
        );
        std::fs::write(e.dir.path().join("bad.json"), "{").unwrap();
        let mut bad = e.opts();
        bad.net_config_path = e.dir.path().join("bad.json");
        assert!(
            KubeManager::connect(bad)
                .await
                .unwrap_err()
                .to_string()
                .starts_with("error parsing subnet config: ")
        );
        let mut bad = e.opts();
        bad.annotation_prefix = "a/b/c".into();
        assert_eq!(
            KubeManager::connect(bad).await.unwrap_err().to_string(),
            "error creating network manager: subnet/kube: prefix can contain at most single slash"
        );
        let mut bad = e.opts();
        bad.event_queue_depth = Some("lots".into());
        assert!(
            KubeManager::connect(bad)
                .await
                .unwrap_err()
                .to_string()
                .starts_with(
                    "error creating network manager: env EVENT_QUEUE_DEPTH=lots format error: "
                )
        );
        let mut bad = e.opts();
        bad.api_url = "http://[::1".into();
        assert!(
            KubeManager::connect(bad)
                .await
                .unwrap_err()
                .to_string()
                .starts_with("fail to create kubernetes config: ")
        );
    })
}

#[test]
fn kubeconfig_file_is_honoured_and_api_url_overrides_it() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env_with_n1().await;
        let kc = e.dir.path().join("kubeconfig");
        let write = |server: &str| {
            std::fs::write(
                &kc,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
                ),
            )
            .unwrap()
        };
        write(&e.server.url());
        let mut o = e.opts();
        o.api_url = String::new();
        o.kubeconfig = kc.display().to_string();
        let m = KubeManager::connect(o.clone()).await.unwrap();
        assert!(m.network_config().await.is_ok());
        m.acquire_lease(&config(), &vxlan_attrs("198.18.0.1", "aa:bb:cc:00:00:01"))
            .await
            .unwrap();
        // A kubeconfig naming an unreachable server works when --kube-api-url points elsewhere.
        write("http://127.0.0.1:9");
        o.api_url = e.server.url();
        let m = KubeManager::connect(o).await.unwrap();
        assert!(m.stored_attrs(None).await.unwrap().is_some());
    })
}

// ---- the node watch ----------------------------------------------------------------------

/// The daemon's side of a lease watch: the receiver and the [`LeaseSet`] it feeds.
struct Peers {
    rx: mpsc::Receiver<WatchEvent>,
    set: LeaseSet,
}

impl Peers {
    /// Receives events until the LeaseSet equals `want`, or fails after a deadline. Returns
    /// the changes the LeaseSet reported on the way.
    async fn converge(&mut self, want: &BTreeMap<SubnetKey, Lease>, what: &str) -> Vec<LeaseEvent> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut changes = Vec::new();
        loop {
            let have: BTreeMap<SubnetKey, Lease> =
                self.set.leases().map(|l| (l.key(), l.clone())).collect();
            if &have == want {
                return changes;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(WatchEvent::Leases(ev))) => changes.extend(self.set.apply(ev)),
                Ok(Some(other)) => panic!("{what}: unexpected {other:?}"),
                Ok(None) => panic!("{what}: the watch ended"),
                Err(_) => panic!(
                    "{what}: did not converge\n have: {:?}\n want: {:?}",
                    have.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>()
                ),
            }
        }
    }

    /// [`Peers::converge`] to the peers `emu`'s nodes describe for node `n1`.
    async fn converge_to(&mut self, emu: &Emulator, what: &str) -> Vec<LeaseEvent> {
        self.converge(&truth(emu, "n1"), what).await
    }

    /// Drains events for a short while and returns the changes they caused.
    async fn quiet(&mut self, d: Duration) -> Vec<LeaseEvent> {
        let mut changes = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(WatchEvent::Leases(ev))) =
            tokio::time::timeout_at(end, self.rx.recv()).await
        {
            changes.extend(self.set.apply(ev));
        }
        changes
    }
}

/// Waits until the client has a watch open (it may still be in its backoff after an error).
async fn watch_open(emu: &Emulator) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while emu.watcher_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the client never re-opened its watch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The peers the emulator's Node objects describe: managed, valid, not ourselves.
fn truth(emu: &Emulator, own: &str) -> BTreeMap<SubnetKey, Lease> {
    let k = keys();
    let mut out = BTreeMap::new();
    for name in emu.node_names() {
        if name == own {
            continue;
        }
        let n = emu.node(&name).unwrap();
        let ann = &n["metadata"]["annotations"];
        if ann[&k.kube_subnet_manager] != "true" {
            continue;
        }
        let Some(cidr) = n["spec"]["podCIDR"].as_str() else {
            continue;
        };
        let Some(data) = ann[&k.backend_data]
            .as_str()
            .and_then(|d| RawJson::parse(d).ok())
        else {
            continue;
        };
        let Some(ip) = ann[&k.public_ip].as_str().and_then(|i| i.parse().ok()) else {
            continue;
        };
        let lease = Lease {
            subnet: Some(cidr.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip,
                public_ipv6: None,
                backend_type: ann[&k.backend_type].as_str().unwrap_or("").to_string(),
                backend_data: Some(data),
                backend_v6_data: None,
            },
            expiration: None,
        };
        out.insert(lease.key(), lease);
    }
    out
}

fn mac(i: u32) -> String {
    format!("aa:bb:cc:00:{:02x}:{:02x}", i / 256, i % 256)
}

#[test]
fn watch_survives_drops_and_410_without_losing_or_duplicating_peers() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        // A history of 3 changes: resuming after a few writes needs a re-list.
        let e = env(EmuConfig {
            history: 3,
            bookmark_interval: Duration::from_millis(100),
        })
        .await;
        e.emu
            .add_node(
                "n1",
                &["10.244.0.0/24"],
                flannel_annotations("198.18.0.1", &mac(1)),
            )
            .unwrap();
        for i in 2..=5u32 {
            e.emu
                .add_node(
                    &format!("n{i}"),
                    &[&format!("10.244.{}.0/24", i - 1)],
                    flannel_annotations(&format!("198.18.0.{i}"), &mac(i)),
                )
                .unwrap();
        }
        // Nodes flannel must ignore: not managed, and managed but without a podCIDR.
        e.emu
            .add_node("plain", &["10.244.50.0/24"], json!({}))
            .unwrap();
        e.emu
            .add_node("nocidr", &[], flannel_annotations("198.18.0.60", &mac(60)))
            .unwrap();

        let (m, own) = e.manager_with_lease().await;
        let mut peers = Peers {
            rx: m.watch_leases(&own),
            set: LeaseSet::new(Some(own.clone())),
        };
        let first = peers.rx.recv().await.unwrap();
        assert!(
            matches!(&first, WatchEvent::Leases(LeaseEvent::Snapshot(l)) if l.len() == 5),
            "the first event is a snapshot of all 5 flannel nodes (own included): {first:?}"
        );
        if let WatchEvent::Leases(ev) = first {
            peers.set.apply(ev);
        }
        peers.converge_to(&e.emu, "initial list").await;
        assert_eq!(peers.set.len(), 4);

        let mut next_node = 6u32;
        for round in 0..4 {
            // Changes while the watch is healthy.
            let name = format!("n{next_node}");
            e.emu
                .add_node(
                    &name,
                    &[&format!("10.244.{}.0/24", next_node - 1)],
                    flannel_annotations(&format!("198.18.0.{next_node}"), &mac(next_node)),
                )
                .unwrap();
            next_node += 1;
            peers.converge_to(&e.emu, "node added").await;
            e.emu
                .patch_node(
                    "n2",
                    &json!({"metadata":{"annotations":{keys().backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac(200 + round))}}}),
                    PatchType::Strategic,
                    Subresource::Status,
                )
                .unwrap();
            peers.converge_to(&e.emu, "backend data changed").await;

            // A dropped connection, with changes made while the client is away: more than the
            // history holds on even rounds, so those resume attempts get 410 and re-list.
            watch_open(&e.emu).await;
            let before = e.emu.stats();
            e.emu.drop_watches();
            let victim = format!("n{}", next_node - 1);
            e.emu.delete_node(&victim).unwrap();
            if round % 2 == 0 {
                for j in 0..4u32 {
                    e.emu
                        .patch_node(
                            "plain",
                            &json!({"metadata":{"labels":{"round": format!("{round}-{j}")}}}),
                            PatchType::Merge,
                            Subresource::Main,
                        )
                        .unwrap();
                }
            }
            peers.converge_to(&e.emu, "after a watch drop").await;
            assert!(
                e.emu.stats().watches > before.watches,
                "the client re-watched"
            );

            // 410 on the open watch: the client must re-list; a re-list without changes reports
            // nothing to the daemon (no peer lost, none re-added).
            watch_open(&e.emu).await;
            let before = e.emu.stats();
            e.emu.expire_watches();
            let changes = peers.quiet(Duration::from_secs(3)).await;
            assert!(e.emu.stats().expired > before.expired, "410 was sent");
            assert!(e.emu.stats().lists > before.lists, "the client re-listed");
            assert!(
                changes.is_empty(),
                "re-list without changes caused {changes:?}"
            );
            peers.converge_to(&e.emu, "after 410").await;
        }

        // A podCIDR change (re-registration) replaces the peer's subnet; no stale lease remains.
        e.emu.force_pod_cidrs("n3", &["10.244.77.0/24"]).unwrap();
        let changes = peers.converge_to(&e.emu, "podCIDR changed").await;
        assert!(changes.iter().any(
            |c| matches!(c, LeaseEvent::Removed(l) if l.subnet.unwrap().to_string() == "10.244.2.0/24")
        ));
        // A node that stops being managed, or whose annotation breaks, leaves the peer set.
        e.emu
            .patch_node(
                "n4",
                &json!({"metadata":{"annotations":{keys().kube_subnet_manager: null}}}),
                PatchType::Merge,
                Subresource::Main,
            )
            .unwrap();
        e.emu
            .patch_node(
                "n5",
                &json!({"metadata":{"annotations":{keys().backend_data: "{broken"}}}),
                PatchType::Merge,
                Subresource::Main,
            )
            .unwrap();
        let t = truth(&e.emu, "n1");
        assert!(
            !t.values()
                .any(|l| l.attrs.public_ip.to_string() == "198.18.0.4")
        );
        peers.converge(&t, "unmanaged and malformed nodes").await;
        // A node that gets its podCIDR late joins.
        e.emu
            .patch_node(
                "nocidr",
                &json!({"spec":{"podCIDR":"10.244.60.0/24"}}),
                PatchType::Merge,
                Subresource::Main,
            )
            .unwrap();
        peers.converge_to(&e.emu, "late podCIDR").await;
        assert!(
            peers
                .set
                .leases()
                .any(|l| l.attrs.public_ip.to_string() == "198.18.0.60")
        );

        // Dropping the receiver ends the watch task and its connection.
        drop(peers);
        let deadline = Instant::now() + Duration::from_secs(5);
        while e.emu.watcher_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(e.emu.watcher_count(), 0);
    })
}

#[test]
fn dual_stack_peers_and_v4_only_changes() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let e = env(EmuConfig::default()).await;
        std::fs::write(
            e.dir.path().join("net-conf.json"),
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let k = keys();
        let ann = |i: u32, v4mac: &str| {
            json!({
                k.kube_subnet_manager.clone(): "true",
                k.backend_type.clone(): "vxlan",
                k.backend_data.clone(): format!(r#"{{"VNI":1,"VtepMAC":"{v4mac}"}}"#),
                k.public_ip.clone(): format!("198.18.0.{i}"),
                k.backend_v6_data.clone(): format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac(100 + i)),
                k.public_ipv6.clone(): format!("fd00:198:18::{i}"),
            })
        };
        e.emu
            .add_node(
                "n1",
                &["10.244.0.0/24", "fd00:10:244::/64"],
                ann(1, &mac(1)),
            )
            .unwrap();
        e.emu
            .add_node(
                "n2",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                ann(2, &mac(2)),
            )
            .unwrap();
        let m = e.manager().await;
        let cfg = m.network_config().await.unwrap();
        let mut attrs = vxlan_attrs("198.18.0.1", &mac(1));
        attrs.public_ipv6 = Some("fd00:198:18::1".parse().unwrap());
        attrs.backend_v6_data =
            Some(RawJson::parse(&format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac(101))).unwrap());
        let own = m.acquire_lease(&cfg, &attrs).await.unwrap();
        assert_eq!(own.ipv6_subnet.unwrap().to_string(), "fd00:10:244::/64");
        let mut peers = Peers {
            rx: m.watch_leases(&own),
            set: LeaseSet::new(Some(own)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while peers.set.is_empty() && Instant::now() < deadline {
            if let Ok(Some(WatchEvent::Leases(ev))) =
                tokio::time::timeout(Duration::from_secs(5), peers.rx.recv()).await
            {
                peers.set.apply(ev);
            }
        }
        let peer = peers.set.leases().next().unwrap().clone();
        assert_eq!(peer.ipv6_subnet.unwrap().to_string(), "fd00:10:244:1::/64");
        assert_eq!(
            peer.attrs.public_ipv6,
            Some("fd00:198:18::2".parse().unwrap())
        );

        // Only the IPv4 VtepMAC changes: upstream misses this in dual stack; we must not.
        e.emu
            .patch_node(
                "n2",
                &json!({"metadata":{"annotations":{k.backend_data.clone(): format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac(222))}}}),
                PatchType::Strategic,
                Subresource::Status,
            )
            .unwrap();
        let changes = peers.quiet(Duration::from_secs(2)).await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        let LeaseEvent::Added(l) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert!(
            l.attrs
                .backend_data
                .as_ref()
                .unwrap()
                .as_str()
                .contains(&mac(222))
        );
    })
}

#[test]
fn paginated_list_of_1200_nodes_is_one_snapshot() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        const NODES: u32 = 1200;
        let e = env(EmuConfig::default()).await;
        for i in 1..=NODES {
            e.emu
                .add_node(
                    &format!("n{i}"),
                    &[&format!("10.244.{}.{}/28", i / 16, (i % 16) * 16)],
                    flannel_annotations(&format!("198.18.{}.{}", i / 256, i % 256), &mac(i)),
                )
                .unwrap();
        }
        let (m, own) = e.manager_with_lease().await;
        assert_eq!(
            m.own_node_patches(),
            0,
            "n1 already carries our annotations"
        );
        let before = e.emu.stats();
        let mut peers = Peers {
            rx: m.watch_leases(&own),
            set: LeaseSet::new(Some(own.clone())),
        };
        let first = tokio::time::timeout(Duration::from_secs(60), peers.rx.recv())
            .await
            .expect("the list completes")
            .expect("the watch runs");
        let WatchEvent::Leases(LeaseEvent::Snapshot(listed)) = first else {
            panic!("the first event is the snapshot: {first:?}")
        };
        assert_eq!(listed.len(), NODES as usize, "every node, own included");
        // 1200 nodes in pages of LIST_PAGE_SIZE, one request each.
        let pages = u64::from(NODES.div_ceil(flannel_subnet::kube::watch::LIST_PAGE_SIZE));
        assert!(pages > 1, "the list is paginated");
        assert_eq!(e.emu.stats().lists - before.lists, pages);
        let mut want = truth(&e.emu, "n1");
        assert_eq!(want.len(), NODES as usize - 1);
        want.insert(own.key(), own.clone());
        let got: BTreeMap<SubnetKey, Lease> = listed.iter().map(|l| (l.key(), l.clone())).collect();
        assert_eq!(got, want);
        peers.set.apply(LeaseEvent::Snapshot(listed));
        assert_eq!(peers.set.len(), NODES as usize - 1);
        // Heartbeats of every node (status only) cause no event.
        watch_open(&e.emu).await;
        for i in (2..=NODES).step_by(7) {
            e.emu
                .patch_node(
                    &format!("n{i}"),
                    &json!({"status":{"conditions":[{"type":"Ready","status":"True","lastHeartbeatTime": format!("2026-01-01T00:00:{:02}Z", i % 60)}]}}),
                    PatchType::Strategic,
                    Subresource::Status,
                )
                .unwrap();
        }
        let changes = peers.quiet(Duration::from_secs(2)).await;
        assert!(changes.is_empty(), "heartbeats caused {changes:?}");
        // A real change after them still arrives.
        e.emu
            .patch_node(
                "n9",
                &json!({"metadata":{"annotations":{keys().backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac(9999))}}}),
                PatchType::Strategic,
                Subresource::Status,
            )
            .unwrap();
        peers.converge_to(&e.emu, "after heartbeats").await;
    })
}
