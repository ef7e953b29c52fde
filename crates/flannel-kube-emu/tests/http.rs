//! The emulator over HTTP, byte for byte as a client sees it: Status errors, list paging,
//! watch streams (events, bookmarks, 410 as an ERROR event), patches on the status subresource.

use std::time::Duration;

use flannel_kube_emu::{EmuConfig, Emulator};
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
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
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
        let (st, _, _) = call(a, "GET", "/api/v1/nodes?labelSelector=a%3Db", j, "").await;
        assert_eq!(st, 400);
        let (st, _, _) = call(a, "GET", "/apis/apps/v1/daemonsets", j, "").await;
        assert_eq!(st, 404);
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
