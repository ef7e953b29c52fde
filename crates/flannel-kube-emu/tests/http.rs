//! The emulator over HTTP, byte for byte as a client sees it: Status errors, list paging,
//! watch streams (events, bookmarks, 410 as an ERROR event), patches on the status subresource,
//! discovery in both forms, Tables, namespaces and selectors.

use std::time::Duration;

use flannel_kube_emu::strategy::INITIAL_NAMESPACES;
use flannel_kube_emu::{ChurnOptions, EmuConfig, Emulator, GenerateOptions};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Brings `lo` up: each test runs in a fresh network namespace of its own
/// (`run_in_netns(NetnsTarget::Fresh, ..)`, so the emulator never listens on the host's
/// loopback), where `lo` starts down.
async fn loopback_up() {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
}

/// One request with `Connection: close`; returns status, headers and the de-chunked body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: &str,
) -> (u16, String, String) {
    request(addr, method, path, &format!("Content-Type: {ct}\r\n"), body).await
}

/// A GET with an `Accept` header; returns status, lower-cased headers and the body.
async fn get_accept(addr: std::net::SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
    let (status, head, body) =
        request(addr, "GET", path, &format!("Accept: {accept}\r\n"), "").await;
    (status, head.to_ascii_lowercase(), body)
}

/// One request with extra header lines (each ending in CRLF).
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, tail) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size, 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

fn lines(body: &str) -> Vec<Value> {
    body.lines().map(json_of).collect()
}

#[test]
fn errors_lists_watches_and_patches() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig {
            history: 4,
            bookmark_interval: Duration::from_millis(100),
        });
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = srv.addr();
        let j = "application/json";

        let (st, _, body) = call(a, "GET", "/api/v1/nodes/n1", j, "").await;
        assert_eq!(st, 404);
        assert_eq!(
            json_of(&body),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"nodes \"n1\" not found","reason":"NotFound",
                   "details":{"name":"n1","kind":"nodes"},"code":404})
        );
        for n in ["n1", "n2", "n3"] {
            let node = json!({"metadata":{"name":n},"spec":{"podCIDR":format!("10.244.{}.0/24", &n[1..])}});
            let (st, _, _) = call(a, "POST", "/api/v1/nodes", j, &node.to_string()).await;
            assert_eq!(st, 201);
        }
        let (st, _, body) = call(
            a,
            "POST",
            "/api/v1/nodes",
            j,
            r#"{"metadata":{"name":"n1"}}"#,
        )
        .await;
        assert_eq!(
            (st, json_of(&body)["reason"].clone()),
            (409, json!("AlreadyExists"))
        );

        // Paged list from one snapshot; items without kind.
        let (st, _, body) = call(a, "GET", "/api/v1/nodes?limit=2", j, "").await;
        assert_eq!(st, 200);
        let page = json_of(&body);
        assert_eq!(page["kind"], "NodeList");
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert!(page["items"][0].get("kind").is_none());
        let cont = page["metadata"]["continue"]
            .as_str()
            .unwrap()
            .replace(':', "%3A");
        let list_rv: u64 = page["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let (_, _, body) = call(
            a,
            "GET",
            &format!("/api/v1/nodes?limit=2&continue={cont}"),
            j,
            "",
        )
        .await;
        let page2 = json_of(&body);
        assert_eq!(page2["items"][0]["metadata"]["name"], "n3");
        assert!(page2["metadata"].get("continue").is_none());

        // Status patch: annotations kept, spec ignored, conditions merged by type.
        let (st, _, _) = call(
            a,
            "PATCH",
            "/api/v1/nodes/n1/status",
            "application/strategic-merge-patch+json",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
        )
        .await;
        assert_eq!(st, 200);
        let (st, _, body) = call(
            a,
            "PATCH",
            "/api/v1/nodes/n1/status",
            "application/strategic-merge-patch+json",
            r#"{"metadata":{"annotations":{"x/y":"z"}},"spec":{"podCIDR":"10.9.9.0/24"},"status":{"conditions":[{"type":"NetworkUnavailable","status":"False"}]}}"#,
        )
        .await;
        assert_eq!(st, 200);
        let n1 = json_of(&body);
        assert_eq!(n1["metadata"]["annotations"]["x/y"], "z");
        assert_eq!(n1["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(n1["status"]["conditions"].as_array().unwrap().len(), 2);
        let (st, _, _) = call(
            a,
            "PATCH",
            "/api/v1/nodes/n1",
            "application/json-patch+json",
            "[]",
        )
        .await;
        assert_eq!(st, 415);
        let (st, _, body) = call(
            a,
            "PATCH",
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            r#"{"spec":{"podCIDR":"10.244.7.0/24","podCIDRs":["10.244.7.0/24"]}}"#,
        )
        .await;
        assert_eq!(
            (st, json_of(&body)["reason"].clone()),
            (422, json!("Invalid"))
        );

        // Watch from the list's RV: the two patches, a deletion, bookmarks; ends at timeoutSeconds.
        let watcher = tokio::spawn(async move {
            call(
                a,
                "GET",
                &format!("/api/v1/nodes?watch=1&resourceVersion={list_rv}&allowWatchBookmarks=true&timeoutSeconds=1"),
                "application/json",
                "",
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (st, _, _) = call(a, "DELETE", "/api/v1/nodes/n2", j, "").await;
        assert_eq!(st, 200);
        let (st, _, body) = watcher.await.unwrap();
        assert_eq!(st, 200);
        let evs = lines(&body);
        let changes: Vec<&Value> = evs.iter().filter(|e| e["type"] != "BOOKMARK").collect();
        let types: Vec<&str> = changes
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["MODIFIED", "MODIFIED", "DELETED"], "{evs:?}");
        assert_eq!(changes[2]["object"]["metadata"]["name"], "n2");
        assert_eq!(changes[2]["object"]["kind"], "Node");
        // Bookmarks carry the latest RV the stream has passed, never one ahead of its events.
        let bm = evs
            .iter()
            .rev()
            .find(|e| e["type"] == "BOOKMARK")
            .expect("a bookmark");
        assert_eq!(
            bm["object"]["metadata"]["resourceVersion"],
            json!(emu.resource_version().to_string())
        );
        let last_change = evs.iter().rposition(|e| e["type"] == "DELETED").unwrap();
        assert!(evs[last_change..].iter().any(|e| e["type"] == "BOOKMARK"));

        // Without a resourceVersion: synthetic ADDED for what exists.
        let (_, _, body) = call(a, "GET", "/api/v1/nodes?watch=true&timeoutSeconds=1", j, "").await;
        let evs = lines(&body);
        assert_eq!(evs.len(), 2);
        assert!(evs.iter().all(|e| e["type"] == "ADDED"));

        // More changes than the history holds: resuming from the old RV is 410 on the stream.
        for i in 0..5 {
            let p = json!({"metadata":{"labels":{"i": i.to_string()}}}).to_string();
            call(
                a,
                "PATCH",
                "/api/v1/nodes/n3",
                "application/merge-patch+json",
                &p,
            )
            .await;
        }
        let (st, _, body) = call(
            a,
            "GET",
            &format!("/api/v1/nodes?watch=1&resourceVersion={list_rv}"),
            j,
            "",
        )
        .await;
        assert_eq!(st, 200);
        let evs = lines(&body);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["type"], "ERROR");
        assert_eq!(evs[0]["object"]["code"], 410);
        assert_eq!(evs[0]["object"]["reason"], "Expired");
        assert!(
            evs[0]["object"]["message"]
                .as_str()
                .unwrap()
                .starts_with("too old resource version: ")
        );
        // ...and so is a continue token from before the compaction.
        emu.compact();
        let (st, _, _) = call(
            a,
            "GET",
            &format!("/api/v1/nodes?limit=2&continue={cont}"),
            j,
            "",
        )
        .await;
        assert_eq!(st, 410);
        // Selectors: n3 carries the label i=4 from the last patch.
        let (st, _, body) = call(a, "GET", "/api/v1/nodes?labelSelector=i%3D4", j, "").await;
        assert_eq!(st, 200);
        let items = json_of(&body)["items"].clone();
        assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
        assert_eq!(items[0]["metadata"]["name"], "n3");
        let (st, _, body) = call(
            a,
            "GET",
            "/api/v1/nodes?fieldSelector=spec.nodeName%3Dn1",
            j,
            "",
        )
        .await;
        assert_eq!(
            (st, json_of(&body)["message"].clone()),
            (400, json!("field label not supported: spec.nodeName"))
        );
        let (st, _, _) = call(a, "GET", "/api/v1/nodes?labelSelector=%3Db", j, "").await;
        assert_eq!(st, 400);
        for unserved in [
            "/apis/batch/v1/jobs",
            "/apis/apps/v1/namespaces/default/configmaps",
            "/api/v1/namespaces/default/daemonsets",
            "/api/v1/namespaces/default/configmaps/c/status",
        ] {
            let (st, _, _) = call(a, "GET", unserved, j, "").await;
            assert_eq!(st, 404, "{unserved}");
        }
    })
}

#[test]
fn test_controls_end_open_watches() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = srv.addr();
        emu.add_node("n1", &["10.244.0.0/24"], json!({})).unwrap();
        let rv = emu.resource_version();
        let path = format!("/api/v1/nodes?watch=1&resourceVersion={rv}");
        let p2 = path.clone();
        let w = tokio::spawn(async move { call(a, "GET", &p2, "application/json", "").await });
        while emu.watcher_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        emu.expire_watches();
        let (_, _, body) = w.await.unwrap();
        let evs = lines(&body);
        assert_eq!(evs.last().unwrap()["type"], "ERROR");
        assert_eq!(emu.stats().expired, 1);

        // A drop aborts the connection: no terminating chunk arrives.
        let w = tokio::spawn(async move {
            let mut s = TcpStream::connect(a).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
            String::from_utf8_lossy(&raw).into_owned()
        });
        while emu.watcher_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        emu.drop_watches();
        let raw = w.await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(
            !raw.ends_with("0\r\n\r\n"),
            "the stream was closed cleanly: {raw:?}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while emu.watcher_count() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(emu.watcher_count(), 0);
    })
}

#[test]
fn discovery_tables_and_negotiation() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = srv.addr();

        // Legacy discovery for clients that accept plain JSON (kube-rs).
        let (st, _, body) = get_accept(a, "/api", "application/json").await;
        assert_eq!(st, 200);
        assert_eq!(json_of(&body)["kind"], "APIVersions");
        assert_eq!(json_of(&body)["versions"], json!(["v1"]));
        let (_, _, body) = get_accept(a, "/apis", "application/json").await;
        assert_eq!(json_of(&body)["kind"], "APIGroupList");
        assert_eq!(json_of(&body)["groups"][0]["name"], "apps");
        let (_, _, body) = get_accept(a, "/api/v1", "application/json").await;
        let list = json_of(&body);
        assert_eq!(list["kind"], "APIResourceList");
        // configmaps, namespaces(/status), nodes(/status), pods(/status),
        // serviceaccounts(/token).
        assert_eq!(list["resources"].as_array().unwrap().len(), 9);
        let (_, _, body) = get_accept(a, "/apis/apps", "application/json").await;
        assert_eq!(json_of(&body)["kind"], "APIGroup");
        let (_, _, body) = get_accept(a, "/apis/apps/v1", "application/json").await;
        assert_eq!(json_of(&body)["groupVersion"], "apps/v1");
        assert_eq!(json_of(&body)["resources"][0]["shortNames"], json!(["ds"]));

        // Aggregated discovery when asked for first, as kubectl does; the content type says so.
        let agg =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        let (st, head, body) = get_accept(a, "/api", agg).await;
        assert_eq!(st, 200);
        assert!(
            head.contains(
                "content-type: application/json;g=apidiscovery.k8s.io;v=v2;as=apigroupdiscoverylist"
            ),
            "{head}"
        );
        let doc = json_of(&body);
        assert_eq!(doc["kind"], "APIGroupDiscoveryList");
        assert_eq!(
            doc["items"][0]["versions"][0]["resources"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
        let (_, _, body) = get_accept(a, "/apis", agg).await;
        let groups = json_of(&body);
        assert_eq!(groups["items"][0]["metadata"]["name"], "apps");
        assert_eq!(
            groups["items"][0]["versions"][0]["resources"][0]["resource"],
            "daemonsets"
        );
        let (st, _, _) =
            get_accept(a, "/api/v1/nodes", "application/vnd.kubernetes.protobuf").await;
        assert_eq!(st, 406);

        // Tables as kubectl asks for them: columns once, a row per object, metadata objects.
        emu.add_node("n1", &["10.244.0.0/24"], json!({})).unwrap();
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        let (st, _, body) = get_accept(a, "/api/v1/nodes", table).await;
        assert_eq!(st, 200);
        let t = json_of(&body);
        assert_eq!(
            (t["kind"].clone(), t["apiVersion"].clone()),
            (json!("Table"), json!("meta.k8s.io/v1"))
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Status");
        assert_eq!(t["rows"][0]["cells"][0], "n1");
        assert_eq!(t["rows"][0]["cells"][1], "Ready");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let (_, _, body) = get_accept(a, "/api/v1/nodes/n1?includeObject=Object", table).await;
        assert_eq!(
            json_of(&body)["rows"][0]["object"]["spec"]["podCIDR"],
            "10.244.0.0/24"
        );
        let (st, _, _) = get_accept(a, "/api/v1/nodes?includeObject=All", table).await;
        assert_eq!(st, 400);

        // A watch as Tables: column definitions with the first event only.
        let w = tokio::spawn(async move {
            get_accept(a, "/api/v1/namespaces?watch=1&timeoutSeconds=1", table).await
        });
        let (_, _, body) = w.await.unwrap();
        let evs = lines(&body);
        assert_eq!(evs.len(), 5, "the five initial namespaces: {evs:?}");
        assert!(evs[0]["object"]["columnDefinitions"].is_array());
        assert!(evs[1]["object"]["columnDefinitions"].is_null());
        assert_eq!(evs[4]["object"]["rows"][0]["cells"][0], "kube-system");
        assert_eq!(evs[4]["object"]["rows"][0]["cells"][1], "Active");
    })
}

#[test]
fn namespaces_pods_and_selector_watches() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = srv.addr();
        let j = "application/json";
        let pod = |name: &str| {
            json!({"metadata":{"name":name},"spec":{"nodeName":"n1","containers":[{"name":"c","image":"i"}]},
                   "status":{"phase":"Running"}})
            .to_string()
        };

        // A pod in a namespace that does not exist is refused, as by NamespaceLifecycle.
        let (st, _, body) = call(a, "POST", "/api/v1/namespaces/nope/pods", j, &pod("p")).await;
        assert_eq!(
            (st, json_of(&body)["message"].clone()),
            (404, json!("namespaces \"nope\" not found"))
        );
        let (st, _, body) = call(
            a,
            "POST",
            "/api/v1/namespaces",
            j,
            r#"{"metadata":{"name":"team"}}"#,
        )
        .await;
        assert_eq!(st, 201);
        let ns = json_of(&body);
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team"
        );
        let (st, _, body) = call(
            a,
            "POST",
            "/api/v1/namespaces",
            j,
            r#"{"metadata":{"name":"Team"}}"#,
        )
        .await;
        assert_eq!(
            (st, json_of(&body)["details"]["kind"].clone()),
            (422, json!("Namespace"))
        );
        let (st, _, _) = call(
            a,
            "POST",
            "/api/v1/namespaces",
            j,
            r#"{"metadata":{"name":"team"}}"#,
        )
        .await;
        assert_eq!(st, 409);
        let (st, _, _) = call(
            a,
            "POST",
            "/api/v1/namespaces",
            "application/vnd.kubernetes.protobuf",
            "k8s",
        )
        .await;
        assert_eq!(st, 415);

        // A new pod starts Pending whatever status it was sent; its status is the kubelet's.
        let (st, _, body) = call(a, "POST", "/api/v1/namespaces/team/pods", j, &pod("p1")).await;
        assert_eq!(st, 201);
        assert_eq!(
            json_of(&body)["status"],
            json!({"phase":"Pending","qosClass":"BestEffort"})
        );
        assert_eq!(json_of(&body)["metadata"]["namespace"], "team");

        // A watch of pods with a label selector: a label added is ADDED, removed is DELETED.
        let watcher = tokio::spawn(async move {
            call(
                a,
                "GET",
                "/api/v1/pods?watch=1&labelSelector=app%3Dweb&timeoutSeconds=2",
                j,
                "",
            )
            .await
        });
        while emu.watcher_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let label = |v: &str| json!({"metadata":{"labels":{"app":v}}}).to_string();
        let mp = "application/merge-patch+json";
        for v in ["web", "db"] {
            let (st, _, _) =
                call(a, "PATCH", "/api/v1/namespaces/team/pods/p1", mp, &label(v)).await;
            assert_eq!(st, 200);
        }
        let (st, _, body) = call(
            a,
            "PATCH",
            "/api/v1/namespaces/team/pods/p1/status",
            "application/strategic-merge-patch+json",
            r#"{"status":{"phase":"Running","podIPs":[{"ip":"10.244.0.9"}]}}"#,
        )
        .await;
        assert_eq!(
            (st, json_of(&body)["status"]["phase"].clone()),
            (200, json!("Running"))
        );
        // The spec of a pod is immutable but for images and a few fields.
        let (st, _, _) = call(
            a,
            "PATCH",
            "/api/v1/namespaces/team/pods/p1",
            mp,
            r#"{"spec":{"nodeName":"n2"}}"#,
        )
        .await;
        assert_eq!(st, 422);
        let (_, _, body) = watcher.await.unwrap();
        let types: Vec<String> = lines(&body)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(types, ["ADDED", "DELETED"]);

        // Deleting a namespace takes its pods; the initial namespaces cannot be deleted.
        let (_, _, body) = call(
            a,
            "GET",
            "/api/v1/pods?fieldSelector=status.podIP%3D10.244.0.9",
            j,
            "",
        )
        .await;
        assert_eq!(json_of(&body)["items"].as_array().unwrap().len(), 1);
        let (st, _, _) = call(a, "DELETE", "/api/v1/namespaces/team", j, "").await;
        assert_eq!(st, 200);
        let (st, _, _) = call(a, "GET", "/api/v1/namespaces/team/pods/p1", j, "").await;
        assert_eq!(st, 404);
        let (st, _, body) = call(a, "DELETE", "/api/v1/namespaces/kube-system", j, "").await;
        assert_eq!(
            (st, json_of(&body)["message"].clone()),
            (
                403,
                json!("namespaces \"kube-system\" is forbidden: this namespace may not be deleted")
            )
        );
        let (_, _, body) = call(a, "GET", "/api/v1/namespaces", j, "").await;
        let names: Vec<String> = json_of(&body)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, INITIAL_NAMESPACES);
    })
}

/// The kube-flannel DaemonSet as the manifest has it (no status, no defaults).
fn daemonset() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
           "metadata": {"name": "kube-flannel-ds", "labels": {"app": "flannel"}},
           "spec": {"selector": {"matchLabels": {"app": "flannel"}},
                    "template": {"metadata": {"labels": {"app": "flannel", "tier": "node"}},
                                 "spec": {"hostNetwork": true,
                                          "containers": [{"name": "kube-flannel", "image": "flannel:1"}]}}}})
}

#[test]
fn daemonsets_and_configmaps() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = srv.addr();
        let j = "application/json";
        let dss = "/apis/apps/v1/namespaces/kube-flannel/daemonsets";
        let ds_path = format!("{dss}/kube-flannel-ds");

        // A watch on the group's resource, as a table, from before the create.
        let watch = tokio::spawn(async move {
            let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
            get_accept(
                a,
                "/apis/apps/v1/namespaces/kube-flannel/daemonsets?watch=1&timeoutSeconds=5",
                table,
            )
            .await
        });
        while emu.watcher_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let (st, _, body) = call(a, "POST", dss, j, &daemonset().to_string()).await;
        assert_eq!(st, 201, "{body}");
        let created = json_of(&body);
        assert_eq!(created["apiVersion"], "apps/v1");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(
            created["status"],
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
                   "desiredNumberScheduled": 0, "numberReady": 0})
        );
        let (st, _, body) = call(a, "POST", dss, j, &daemonset().to_string()).await;
        assert_eq!(st, 409);
        assert_eq!(
            json_of(&body)["details"],
            json!({"name": "kube-flannel-ds", "group": "apps", "kind": "daemonsets"})
        );
        assert_eq!(
            json_of(&body)["message"],
            "daemonsets.apps \"kube-flannel-ds\" already exists"
        );

        // The status subresource: counters from the controller, the spec untouched.
        let status = json!({"spec": {"minReadySeconds": 9},
                            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                                       "updatedNumberScheduled": 2, "numberReady": 1,
                                       "numberAvailable": 1, "numberUnavailable": 1,
                                       "observedGeneration": 1}});
        let (st, _, body) = call(
            a,
            "PATCH",
            &format!("{ds_path}/status"),
            "application/merge-patch+json",
            &status.to_string(),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let patched = json_of(&body);
        assert_eq!(patched["status"]["numberReady"], 1);
        assert!(patched["spec"].get("minReadySeconds").is_none());
        assert_eq!(patched["metadata"]["generation"], 1);
        // A status sent to the object itself is dropped; a template change counts.
        let mut update = patched.clone();
        update["status"] = json!({"numberReady": 7});
        update["spec"]["template"]["spec"]["containers"][0]["image"] = json!("flannel:2");
        let (st, _, body) = call(a, "PUT", &ds_path, j, &update.to_string()).await;
        assert_eq!(st, 200, "{body}");
        let updated = json_of(&body);
        assert_eq!(updated["status"]["numberReady"], 1);
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(
            updated["metadata"]["annotations"]["deprecated.daemonset.template.generation"],
            "2"
        );
        let (st, _, body) = call(
            a,
            "PATCH",
            &ds_path,
            "application/merge-patch+json",
            r#"{"spec":{"selector":{"matchLabels":{"tier":"node"}}}}"#,
        )
        .await;
        assert_eq!(st, 422);
        assert!(
            json_of(&body)["message"].as_str().unwrap().starts_with(
                "DaemonSet.apps \"kube-flannel-ds\" is invalid: spec.selector: Invalid value: "
            ),
            "{body}"
        );

        // The watch saw the create and the two changes, as table rows; columns only first.
        let (st, _, body) = watch.await.unwrap();
        assert_eq!(st, 200);
        let events = lines(&body);
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "MODIFIED"], "{body}");
        assert_eq!(
            events[0]["object"]["columnDefinitions"][1]["name"],
            "Desired"
        );
        assert!(events[1]["object"]["columnDefinitions"].is_null());
        assert_eq!(
            events[1]["object"]["rows"][0]["cells"],
            json!([
                "kube-flannel-ds",
                2,
                2,
                1,
                2,
                1,
                "<none>",
                events[1]["object"]["rows"][0]["cells"][7],
                "kube-flannel",
                "flannel:1",
                "app=flannel"
            ])
        );
        assert_eq!(events[2]["object"]["rows"][0]["cells"][9], "flannel:2");

        // Lists: the group's version and list kind, across namespaces too.
        let (_, _, body) = call(a, "GET", "/apis/apps/v1/daemonsets", j, "").await;
        let list = json_of(&body);
        assert_eq!(
            (list["kind"].clone(), list["apiVersion"].clone()),
            (json!("DaemonSetList"), json!("apps/v1"))
        );
        assert_eq!(list["items"][0]["metadata"]["namespace"], "kube-flannel");

        // ConfigMaps: data, no status subresource, validation.
        let cms = "/api/v1/namespaces/kube-flannel/configmaps";
        let cm = json!({"metadata": {"name": "kube-flannel-cfg"},
                        "data": {"cni-conf.json": "{}", "net-conf.json": "{}"}});
        let (st, _, body) = call(a, "POST", cms, j, &cm.to_string()).await;
        assert_eq!(st, 201, "{body}");
        assert_eq!(json_of(&body)["apiVersion"], "v1");
        let (st, _, _) = call(
            a,
            "PATCH",
            &format!("{cms}/kube-flannel-cfg/status"),
            "application/merge-patch+json",
            "{}",
        )
        .await;
        assert_eq!(st, 404);
        let bad = json!({"metadata": {"name": "bad"}, "data": {"a b": "x"}});
        let (st, _, _) = call(a, "POST", cms, j, &bad.to_string()).await;
        assert_eq!(st, 422);
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
        let (_, _, body) = get_accept(a, cms, table).await;
        let cells = json_of(&body)["rows"][0]["cells"].clone();
        assert_eq!(
            (&cells[0], &cells[1]),
            (&json!("kube-flannel-cfg"), &json!(2))
        );

        // Pods owned by the DaemonSet: generated names; orphaned, then collected with it.
        let pods = "/api/v1/namespaces/kube-flannel/pods";
        let owner = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-flannel-ds",
                            "uid": created["metadata"]["uid"], "controller": true,
                            "blockOwnerDeletion": true}]);
        let pod = json!({"metadata": {"generateName": "kube-flannel-ds-", "ownerReferences": owner},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let (st, _, body) = call(a, "POST", pods, j, &pod.to_string()).await;
        assert_eq!(st, 201, "{body}");
        let name = json_of(&body)["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with("kube-flannel-ds-") && name.len() == 21,
            "{name}"
        );
        let (st, _, body) = call(a, "POST", pods, j, &pod.to_string()).await;
        assert_eq!(st, 201);
        let second = json_of(&body)["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let orphan = r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Orphan"}"#;
        let (st, _, _) = call(a, "DELETE", &ds_path, j, orphan).await;
        assert_eq!(st, 200);
        let (st, _, body) = call(a, "GET", &format!("{pods}/{name}"), j, "").await;
        assert_eq!(st, 200);
        assert!(json_of(&body)["metadata"].get("ownerReferences").is_none());
        let (st, _, _) = call(a, "POST", dss, j, &daemonset().to_string()).await;
        assert_eq!(st, 201);
        let (_, _, body) = call(a, "GET", &ds_path, j, "").await;
        let owner = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-flannel-ds",
                            "uid": json_of(&body)["metadata"]["uid"], "controller": true}]);
        let adopt = json!({"metadata": {"ownerReferences": owner}});
        let (st, _, _) = call(
            a,
            "PATCH",
            &format!("{pods}/{second}"),
            "application/merge-patch+json",
            &adopt.to_string(),
        )
        .await;
        assert_eq!(st, 200);
        let (st, _, _) = call(
            a,
            "DELETE",
            &format!("{ds_path}?propagationPolicy=Background"),
            j,
            "",
        )
        .await;
        assert_eq!(st, 200);
        let (st, _, _) = call(a, "GET", &format!("{pods}/{second}"), j, "").await;
        assert_eq!(st, 404, "the garbage collector took it");
        let (st, _, _) = call(a, "GET", &format!("{pods}/{name}"), j, "").await;
        assert_eq!(st, 200, "the orphan stays");
    })
}

/// A watch streams its own kind only, while other kinds change in the same moments (a
/// kube-rs client fails to decode any other kind's object, as a pod watch that saw a
/// Namespace did).
#[test]
fn a_watch_sees_only_its_kind() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = srv.addr();
        let rv = json_of(
            &call(addr, "GET", "/api/v1/pods", "application/json", "")
                .await
                .2,
        )["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let watches: Vec<_> = ["/api/v1/pods", "/apis/networking.k8s.io/v1/networkpolicies"]
            .into_iter()
            .map(|path| {
                let path = format!("{path}?watch=1&timeoutSeconds=2&resourceVersion={rv}");
                tokio::spawn(async move { request(addr, "GET", &path, "", "").await.2 })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let json = "application/json";
        for (path, body) in [
            ("/api/v1/namespaces", r#"{"metadata":{"name":"x"}}"#),
            (
                "/api/v1/namespaces/x/pods",
                r#"{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
            ),
            (
                "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies",
                r#"{"metadata":{"name":"np"},"spec":{"podSelector":{}}}"#,
            ),
        ] {
            assert_eq!(call(addr, "POST", path, json, body).await.0, 201, "{path}");
        }
        for (watch, kind) in watches.into_iter().zip(["Pod", "NetworkPolicy"]) {
            let events = lines(&watch.await.unwrap());
            let kinds: Vec<&str> = events
                .iter()
                .map(|e| e["object"]["kind"].as_str().unwrap())
                .collect();
            assert_eq!(kinds, [kind], "{events:?}");
        }
        drop(srv);
    })
}

/// The list RV of a list body.
fn list_rv(list: &Value) -> u64 {
    list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// 5000 generated nodes page through `limit`/`continue` while heartbeats change them: every
/// page is served from the first page's snapshot (all 5000 names once, no item newer than the
/// list's RV), and a token whose snapshot was compacted is `410 Expired`.
#[test]
fn five_thousand_generated_nodes_page_under_churn() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig {
            history: 20_000,
            ..EmuConfig::default()
        });
        emu.generate_nodes(&GenerateOptions {
            nodes: 5000,
            network: "10.128.0.0/9".parse().unwrap(),
        })
        .unwrap();
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = srv.addr();
        let names = emu.generated_names();
        let mut path = "/api/v1/nodes?limit=500".to_string();
        let mut seen = std::collections::BTreeSet::new();
        let mut first_rv = None;
        for page in 0.. {
            assert!(page < 20, "more pages than 5000 / 500");
            let (st, _, body) = call(a, "GET", &path, "application/json", "").await;
            assert_eq!(st, 200, "{body}");
            let list = json_of(&body);
            let rv = *first_rv.get_or_insert(list_rv(&list));
            assert_eq!(list_rv(&list), rv, "every page carries the first page's RV");
            for item in list["items"].as_array().unwrap() {
                let item_rv: u64 = item["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(item_rv <= rv, "item newer than the list");
                assert!(seen.insert(item["metadata"]["name"].as_str().unwrap().to_string()));
            }
            // A heartbeat wave over every node between pages.
            let all: Vec<&str> = names.iter().map(String::as_str).collect();
            emu.heartbeat(&all[page * 500..(page + 1) * 500]).unwrap();
            match list["metadata"]["continue"].as_str() {
                Some(c) => path = format!("/api/v1/nodes?limit=500&continue={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5000);
        assert!(
            emu.resource_version() > first_rv.unwrap(),
            "heartbeats bumped the RV"
        );

        let (_, _, body) = call(a, "GET", "/api/v1/nodes?limit=2", "application/json", "").await;
        let token = json_of(&body)["metadata"]["continue"]
            .as_str()
            .unwrap()
            .to_string();
        emu.compact();
        let (st, _, body) = call(
            a,
            "GET",
            &format!("/api/v1/nodes?limit=2&continue={token}"),
            "application/json",
            "",
        )
        .await;
        assert_eq!(
            (st, json_of(&body)["reason"].clone()),
            (410, json!("Expired"))
        );
        drop(srv);
    })
}

/// Heartbeats reach a watch as MODIFIED events that change only the conditions' heartbeat
/// times; an annotation churn through `/emu/churn/annotations` reaches it with the new MACs;
/// `/metrics` counts the list, the watch with its events and bytes, and the patches it saw.
#[test]
fn churn_reaches_watches_and_metrics_count_it() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let emu = Emulator::new(EmuConfig::default());
        emu.generate_nodes(&GenerateOptions {
            nodes: 3,
            network: "10.128.0.0/16".parse().unwrap(),
        })
        .unwrap();
        let srv = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = srv.addr();
        let (_, _, body) = call(addr, "GET", "/api/v1/nodes", "application/json", "").await;
        let before = json_of(&body);
        let rv = list_rv(&before);
        let path = format!("/api/v1/nodes?watch=1&timeoutSeconds=4&resourceVersion={rv}");
        let watch = tokio::spawn(async move { request(addr, "GET", &path, "", "").await.2 });
        let churn = emu.start_churn(ChurnOptions {
            heartbeat_interval: Some(Duration::from_secs(1)),
            ..ChurnOptions::default()
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (st, _, body) = call(
            addr,
            "POST",
            "/emu/churn/annotations",
            "application/json",
            r#"{"count":2}"#,
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let answer = json_of(&body);
        let changed = answer["changes"].as_array().unwrap();
        assert_eq!(changed.len(), 2);
        assert!(
            answer["unixNanos"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap()
                > 0
        );
        let events = lines(&watch.await.unwrap());
        drop(churn);
        assert!(events.iter().all(|e| e["type"] == "MODIFIED"), "{events:?}");
        let data_key = "flannel.alpha.coreos.com/backend-data";
        let mut heartbeats = std::collections::BTreeMap::<String, usize>::new();
        let mut annotated = Vec::new();
        for e in &events {
            let name = e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            let old = before["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["metadata"]["name"] == name.as_str())
                .unwrap();
            if e["object"]["metadata"]["annotations"][data_key]
                != old["metadata"]["annotations"][data_key]
            {
                annotated.push((
                    name,
                    e["object"]["metadata"]["annotations"][data_key].clone(),
                ));
            } else {
                assert_ne!(
                    e["object"]["status"]["conditions"],
                    old["status"]["conditions"]
                );
                assert_eq!(e["object"]["spec"], old["spec"]);
                *heartbeats.entry(name).or_default() += 1;
            }
        }
        assert_eq!(heartbeats.len(), 3, "every node heartbeats: {heartbeats:?}");
        for c in changed {
            let mac = c["vtepMAC"].as_str().unwrap();
            assert!(
                annotated
                    .iter()
                    .any(|(n, d)| n == c["name"].as_str().unwrap()
                        && *d == json!(format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#))),
                "{c} not seen in {annotated:?}"
            );
        }

        let (st, head, text) = call(addr, "GET", "/metrics", "", "").await;
        assert_eq!(st, 200);
        assert!(head.to_ascii_lowercase().contains("text/plain"), "{head}");
        let value = |family: &str, verb: &str| -> u64 {
            let prefix =
                format!("{family}{{verb=\"{verb}\",resource=\"nodes\",subresource=\"\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .parse()
                .unwrap()
        };
        assert_eq!(value("flannel_kube_emu_requests_total", "list"), 1);
        assert_eq!(value("flannel_kube_emu_requests_total", "watch"), 1);
        assert_eq!(
            value("flannel_kube_emu_response_frames_total", "watch"),
            events.len() as u64
        );
        let watch_bytes: usize = events.iter().map(|e| e.to_string().len() + 1).sum();
        assert_eq!(
            value("flannel_kube_emu_response_bytes_total", "watch"),
            watch_bytes as u64
        );
        assert_eq!(
            value("flannel_kube_emu_response_bytes_total", "list"),
            body_len_of_list(&before)
        );
        let counts = emu.request_counts();
        assert!(
            counts.keys().all(|l| l.verb != "post"),
            "/emu/ is not counted: {counts:?}"
        );
        drop(srv);
    })
}

/// The byte length of a list body as the emulator serialised it.
fn body_len_of_list(list: &Value) -> u64 {
    list.to_string().len() as u64
}
