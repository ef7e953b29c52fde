//! kube-rs (flanneld's client) against what the emulator serves besides flanneld's own calls:
//! discovery in both forms resolves Namespace, Node, Pod, ConfigMap and the `apps` group's
//! DaemonSet with their scope and verbs; namespaces are created and deleted (taking their pods);
//! pods are listed by label and field selectors; a watcher with a field selector sees the
//! status a kubelet writes through `pods/<name>/status`; the typed DaemonSet and ConfigMap
//! round-trip, a DaemonSet's status goes through `daemonsets/<name>/status` to a watcher, and
//! deleting it takes the pods it owns (or orphans them).

use std::time::Duration;

use flannel_kube_emu::strategy::INITIAL_NAMESPACES;
use flannel_kube_emu::{EmuConfig, Emulator};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;

/// Brings `lo` up in the test's fresh namespace (it starts down).
async fn loopback_up() {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
}

fn pod(name: &str, node: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}
    }))
    .unwrap()
}

#[test]
fn kube_rs_discovers_and_uses_namespaces_and_pods() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = Client::try_from(Config::new(srv.url().parse().unwrap())).unwrap();

        for (how, discovery) in [
            (
                "legacy",
                Discovery::new(client.clone()).run().await.unwrap(),
            ),
            (
                "aggregated",
                Discovery::new(client.clone())
                    .run_aggregated()
                    .await
                    .unwrap(),
            ),
        ] {
            for (kind, scope) in [
                ("Namespace", Scope::Cluster),
                ("Node", Scope::Cluster),
                ("Pod", Scope::Namespaced),
            ] {
                let (ar, caps) = discovery
                    .resolve_gvk(&GroupVersionKind::gvk("", "v1", kind))
                    .unwrap_or_else(|| panic!("{how} discovery resolves {kind}"));
                assert_eq!(caps.scope, scope, "{how} {kind}");
                assert!(caps.supports_operation(verbs::WATCH), "{how} {kind}");
                assert_eq!(ar.plural, format!("{}s", kind.to_lowercase()));
            }
        }

        let namespaces: Api<Namespace> = Api::all(client.clone());
        let names: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        assert_eq!(names, INITIAL_NAMESPACES);
        let team: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
        let team = namespaces
            .create(&PostParams::default(), &team)
            .await
            .unwrap();
        assert_eq!(team.status.unwrap().phase.as_deref(), Some("Active"));

        let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
        for (name, node, app) in [("a", "n1", "web"), ("b", "n2", "web"), ("c", "n1", "db")] {
            let created = pods
                .create(&PostParams::default(), &pod(name, node, app))
                .await
                .unwrap();
            assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
        }
        let names = |list: kube::core::ObjectList<Pod>| -> Vec<String> {
            list.iter().map(ResourceExt::name_any).collect()
        };
        let lp = ListParams::default();
        assert_eq!(
            names(pods.list(&lp.clone().labels("app=web")).await.unwrap()),
            ["a", "b"]
        );
        assert_eq!(
            names(
                pods.list(&lp.clone().labels("app=web").fields("spec.nodeName=n1"))
                    .await
                    .unwrap()
            ),
            ["a"]
        );
        let e = pods
            .list(&lp.clone().fields("spec.bogus=1"))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("field label not supported: spec.bogus"),
            "{e}"
        );

        // A watcher on n1's pods (as a kubelet's) sees the status written through the subresource.
        let all: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher(all, watcher::Config::default().fields("spec.nodeName=n1"))
            .applied_objects()
            .boxed();
        let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.7",
                                       "podIPs": [{"ip": "10.244.0.7"}]}});
        pods.patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        let running = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(p) = stream.next().await {
                let p = p.unwrap();
                assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
                let st = p.status.clone().unwrap_or_default();
                if st.phase.as_deref() == Some("Running") {
                    return p;
                }
            }
            panic!("the watch ended");
        })
        .await
        .expect("the watcher saw the pod running within 30 s");
        assert_eq!(running.name_any(), "a");
        assert_eq!(
            running.status.unwrap().pod_ip.as_deref(),
            Some("10.244.0.7")
        );

        namespaces
            .delete("team", &DeleteParams::default())
            .await
            .unwrap();
        assert!(pods.get_opt("a").await.unwrap().is_none());
        let e = namespaces
            .delete("default", &DeleteParams::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("this namespace may not be deleted"),
            "{e}"
        );
    })
}

#[test]
fn kube_rs_uses_daemonsets_and_configmaps() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = Client::try_from(Config::new(srv.url().parse().unwrap())).unwrap();

        for discovery in [
            Discovery::new(client.clone()).run().await.unwrap(),
            Discovery::new(client.clone())
                .run_aggregated()
                .await
                .unwrap(),
        ] {
            for (group, kind, plural) in [
                ("apps", "DaemonSet", "daemonsets"),
                ("", "ConfigMap", "configmaps"),
            ] {
                let (ar, caps) = discovery
                    .resolve_gvk(&GroupVersionKind::gvk(group, "v1", kind))
                    .unwrap_or_else(|| panic!("discovery resolves {kind}"));
                assert_eq!(caps.scope, Scope::Namespaced);
                assert!(caps.supports_operation(verbs::PATCH));
                assert_eq!(ar.plural, plural);
                assert_eq!(
                    ar.api_version,
                    if group.is_empty() { "v1" } else { "apps/v1" }
                );
            }
            assert!(discovery.has_group("apps"));
        }

        let ns = "kube-flannel";
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "kube-flannel-cfg"},
            "data": {"net-conf.json": "{\"Network\": \"10.244.0.0/16\"}"}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let got = cms.get("kube-flannel-cfg").await.unwrap();
        assert_eq!(
            got.data.unwrap()["net-conf.json"],
            "{\"Network\": \"10.244.0.0/16\"}"
        );

        let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "kube-flannel-ds"},
            "spec": {"selector": {"matchLabels": {"app": "flannel"}},
                     "template": {"metadata": {"labels": {"app": "flannel"}},
                                  "spec": {"containers": [{"name": "kube-flannel", "image": "f:1"}]}}}
        }))
        .unwrap();
        let created = dss.create(&PostParams::default(), &ds).await.unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        let strategy = created
            .spec
            .as_ref()
            .unwrap()
            .update_strategy
            .clone()
            .unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(created.status.as_ref().unwrap().number_ready, 0);

        // The controller's pods: generated names, owned by the DaemonSet.
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let owned: Pod = serde_json::from_value(json!({
            "metadata": {"generateName": "kube-flannel-ds-", "labels": {"app": "flannel"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                              "name": "kube-flannel-ds", "uid": created.uid().unwrap(),
                                              "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "kube-flannel", "image": "f:1"}]}
        }))
        .unwrap();
        let pod = pods.create(&PostParams::default(), &owned).await.unwrap();
        let pod_name = pod.name_any();
        assert!(pod_name.starts_with("kube-flannel-ds-") && pod_name.len() == 21);

        // Its status, written through the subresource, reaches a watcher of the DaemonSet.
        let mut stream = watcher(
            dss.clone(),
            watcher::Config::default().fields("metadata.name=kube-flannel-ds"),
        )
        .applied_objects()
        .boxed();
        let status = json!({"status": {"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                                       "updatedNumberScheduled": 1, "numberReady": 1,
                                       "numberAvailable": 1, "observedGeneration": 1}});
        dss.patch_status(
            "kube-flannel-ds",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(d) = stream.next().await {
                let d = d.unwrap();
                if d.status.as_ref().is_some_and(|s| s.number_ready == 1) {
                    return d;
                }
            }
            panic!("the watch ended");
        })
        .await
        .expect("the watcher saw the DaemonSet ready within 30 s");
        let st = ready.status.unwrap();
        assert_eq!(
            (
                st.desired_number_scheduled,
                st.number_available,
                st.observed_generation
            ),
            (1, Some(1), Some(1))
        );
        let e = dss
            .patch_status(
                "kube-flannel-ds",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"numberReady": -1}})),
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("must be greater than or equal to 0"),
            "{e}"
        );

        // Deleting it orphans, or takes, its pods.
        dss.delete("kube-flannel-ds", &DeleteParams::orphan())
            .await
            .unwrap();
        let orphan = pods.get(&pod_name).await.unwrap();
        assert!(orphan.metadata.owner_references.is_none());
        let again = dss.create(&PostParams::default(), &ds).await.unwrap();
        let mut adopted = owned.clone();
        adopted.metadata.owner_references.as_mut().unwrap()[0].uid = again.uid().unwrap();
        let second = pods.create(&PostParams::default(), &adopted).await.unwrap();
        dss.delete("kube-flannel-ds", &DeleteParams::background())
            .await
            .unwrap();
        assert!(pods.get_opt(&second.name_any()).await.unwrap().is_none());
        assert!(pods.get_opt(&pod_name).await.unwrap().is_some());
        assert!(dss.get_opt("kube-flannel-ds").await.unwrap().is_none());
    })
}
