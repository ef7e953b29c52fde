//! The netns helpers: a fresh namespace is isolated, and `NetnsTarget::Path` (setns) reaches
//! an existing one from another thread.

mod common;

use common::{FRESH_NETNS, bounded, run};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsTarget, current_thread_netns_path, run_in_netns};

#[test]
fn fresh_namespace_starts_empty() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let nl = Netlink::new().unwrap();
            let links = nl.links().await.unwrap();
            let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names, vec!["lo"], "a fresh netns has only lo");
            assert!(!links[0].up);
        })
    })
    .expect(FRESH_NETNS);
}

#[test]
fn setns_into_another_threads_namespace() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let path = current_thread_netns_path();
            // Another thread joins this namespace by path and creates a link there; joining it
            // blocks, so it happens off the runtime.
            let joiner_path = path.clone();
            let created = tokio::task::spawn_blocking(move || {
                run_in_netns(NetnsTarget::Path(joiner_path), || async {
                    let nl = Netlink::new().unwrap();
                    let br = nl.create_bridge("br-joined", None).await.unwrap();
                    br.index
                })
            })
            .await
            .expect("joiner thread")
            .expect("joining the namespace by path");
            let nl = Netlink::new().unwrap();
            let br = nl
                .link_by_name("br-joined")
                .await
                .unwrap()
                .expect("link made by the joiner");
            assert_eq!(br.index, created);
            assert!(run("ip -o link show").await.contains("br-joined"));
            // A child spawned through nsenter with the same path sees it too.
            let via_nsenter = run(&format!(
                "nsenter --net={} ip -o link show br-joined",
                path.display()
            ))
            .await;
            assert!(via_nsenter.contains("br-joined"), "{via_nsenter}");
        })
    })
    .expect(FRESH_NETNS);
    // And the root namespace never saw it (checked from this plain thread, outside any
    // runtime).
    let root = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip -o link show");
    assert!(root.status.success());
    assert!(!String::from_utf8_lossy(&root.stdout).contains("br-joined"));
}

#[test]
fn missing_named_namespace_is_an_error() {
    let e = run_in_netns(
        NetnsTarget::Named("flannel-netlink-no-such-ns".into()),
        || async {},
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("/run/netns/flannel-netlink-no-such-ns"),
        "{e}"
    );
}

#[test]
fn new_outside_a_runtime_is_an_error_not_a_panic() {
    let e = Netlink::new().unwrap_err();
    assert!(
        matches!(e, flannel_netlink::NetlinkError::NoRuntime(_)),
        "{e}"
    );
}
