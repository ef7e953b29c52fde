//! NetworkPolicies (`networking.k8s.io/v1`) as the enforcer and users meet them: kube-rs
//! discovers the group and kind, creates typed policies and reads them back with the API
//! server's defaults, a watcher sees them change and go (and nothing of other kinds), refusals are `422` with field paths;
//! real kubectl applies a policy from YAML and prints it as `kubectl get netpol` does.

use std::time::Duration;

use flannel_kube_emu::{EmuConfig, Emulator};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;

/// Longest one kubectl invocation or one awaited watch event may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Brings `lo` up in the test's fresh namespace (it starts down).
async fn loopback_up() {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
}

fn policy(name: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"port": "serve-80-tcp"}, {"port": 81, "endPort": 90}]
            }],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}}]}]
        }
    }))
    .unwrap()
}

#[test]
fn kube_rs_creates_watches_and_is_refused() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = Client::try_from(Config::new(srv.url().parse().unwrap())).unwrap();

        let gvk = GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy");
        for discovery in [
            Discovery::new(client.clone()).run().await.unwrap(),
            Discovery::new(client.clone())
                .run_aggregated()
                .await
                .unwrap(),
        ] {
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .expect("NetworkPolicy discovered");
            assert_eq!(ar.plural, "networkpolicies");
            assert_eq!(caps.scope, Scope::Namespaced);
            assert!(caps.supports_operation(verbs::WATCH));
        }

        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
        let stream = watcher(
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .touched_objects();
        let mut stream = Box::pin(stream);

        let created = api
            .create(&PostParams::default(), &policy("np"))
            .await
            .unwrap();
        let spec = created.spec.clone().unwrap();
        // The API server's defaults: policy types from the rules, TCP for ports.
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string(), "Egress".to_string()][..])
        );
        let ports = spec.ingress.unwrap()[0].ports.clone().unwrap();
        assert!(ports.iter().all(|p| p.protocol.as_deref() == Some("TCP")));
        assert_eq!(created.metadata.generation, Some(1));

        let seen = tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .expect("watch event in time")
            .unwrap()
            .unwrap();
        assert_eq!(seen.name_any(), "np");

        // Changes of other kinds while the watch is open stay out of its stream.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();

        let patch = json!({"spec": {"podSelector": {"matchLabels": {"pod": "c"}}}});
        let patched = api
            .patch("np", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(patched.metadata.generation, Some(2));
        let seen = tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .expect("watch event in time")
            .unwrap()
            .unwrap();
        let labels = seen
            .spec
            .unwrap()
            .pod_selector
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(labels["pod"], "c");

        let mut bad = policy("bad");
        bad.spec.as_mut().unwrap().egress.as_mut().unwrap()[0]
            .to
            .as_mut()
            .unwrap()[0]
            .ip_block
            .as_mut()
            .unwrap()
            .cidr = "10.244.0/16".into();
        match api.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422);
                assert!(
                    s.message.contains("spec.egress[0].to[0].ipBlock.cidr"),
                    "{}",
                    s.message
                );
            }
            other => panic!("an invalid CIDR is refused, got {other:?}"),
        }

        api.delete("np", &DeleteParams::default()).await.unwrap();
        assert!(api.get_opt("np").await.unwrap().is_none());
        drop(srv);
    })
}

#[test]
fn kubectl_applies_and_lists_policies() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("flrs-kubectl-")
            .tempdir()
            .unwrap();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster:\n    server: {}\ncontexts:\n- name: emu\n  context:\n    cluster: emu\n    user: admin\ncurrent-context: emu\nusers:\n- name: admin\n  user: {{}}\n",
            srv.url()
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        let manifest = dir.path().join("np.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  namespace: kube-system\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-b\n  namespace: kube-system\nspec:\n  podSelector:\n    matchLabels: {pod: a}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {pod: b}\n",
        )
        .unwrap();
        let kubectl = |args: Vec<String>| {
            let mut cmd = tokio::process::Command::new("kubectl");
            cmd.args(&args)
                .env("KUBECONFIG", dir.path().join("config"))
                .env("KUBECACHEDIR", dir.path().join("cache"))
                .env("HOME", dir.path())
                .kill_on_drop(true);
            async move {
                let out = tokio::time::timeout(TIMEOUT, cmd.output())
                    .await
                    .expect("kubectl finished in time")
                    .expect("kubectl runs (scripts/setup)");
                assert!(
                    out.status.success(),
                    "kubectl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            }
        };
        let file = manifest.to_string_lossy().into_owned();
        let applied = kubectl(
            ["apply", "--validate=false", "-f", &file]
                .map(String::from)
                .to_vec(),
        )
        .await;
        assert!(
            applied.contains("networkpolicy.networking.k8s.io/deny-all created"),
            "{applied}"
        );
        let listed = kubectl(
            ["get", "netpol", "-n", "kube-system"]
                .map(String::from)
                .to_vec(),
        )
        .await;
        let rows: Vec<Vec<&str>> = listed
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["NAME", "POD-SELECTOR", "AGE"], "{listed}");
        let selectors: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[1])).collect();
        assert_eq!(selectors, [("allow-b", "pod=a"), ("deny-all", "<none>")]);
        let types = kubectl(
            [
                "get",
                "netpol",
                "allow-b",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.spec.policyTypes}",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert_eq!(types, r#"["Ingress"]"#);
        let deleted = kubectl(
            ["delete", "-f", &file, "--wait=false"]
                .map(String::from)
                .to_vec(),
        )
        .await;
        assert!(deleted.contains("deleted"), "{deleted}");
        assert_eq!(emu.state()["networkpolicies"], 0);
        drop(srv);
    })
}
