//! The binary's protocol behaviour: environment and input validation, error objects and codes,
//! and every delegate path (CNI 1.1.0, failures, DEL/GC/STATUS) against a fake delegate.

mod common;

use std::path::Path;

use common::{FakeDelegate, flannel, netconf_in, with_prev, write_subnet_env};
use flannel_lab::cni::list_dir;
use serde_json::{Value, json};

fn env<'a>(command: &'a str, cid: &'a str, cni_path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", "/run/netns/flrs-cni-test-does-not-exist"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", cni_path),
    ]
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("flrs-cni-test-")
        .tempdir()
        .unwrap()
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn missing_and_unknown_environment_is_code_4() {
    let out = flannel(&[], b"");
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stdout,
        "{\"cniVersion\":\"1.1.0\",\"code\":4,\"msg\":\"required env variables [CNI_COMMAND] missing\"}\n"
    );
    assert!(out.stderr.contains(
        "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    ));
    let out = flannel(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")], b"{}");
    assert_eq!(out.error_code(), Some(4));
    assert_eq!(
        out.error_msg(),
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_PATH] missing"
    );
    let out = flannel(&[("CNI_COMMAND", "GET"), ("CNI_PATH", "/x")], b"{}");
    assert_eq!(
        (out.error_code(), out.error_msg().as_str()),
        (Some(4), "unknown CNI_COMMAND: GET")
    );
}

#[test]
fn version_answers_every_supported_version() {
    let out = flannel(&[("CNI_COMMAND", "VERSION")], b"{\"cniVersion\":\"1.0.0\"}");
    assert_eq!(out.code, Some(0));
    assert_eq!(
        out.json(),
        json!({"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
}

#[test]
fn hostile_container_ids_write_nothing() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let mut conf = netconf_in(dir.path(), "1.0.0");
    conf["dataDir"] = json!(dir.path().join("a/b/data"));
    let stdin = conf.to_string();
    let long = "x".repeat(300);
    for cid in [
        "../../etc/x",
        "../x",
        "/etc/passwd",
        "a/b",
        ".",
        "..",
        " x",
        "x\ty",
        "\u{1b}[31m",
        long.as_str(),
    ] {
        let out = flannel(&env("ADD", cid, "/usr/lib/cni"), stdin.as_bytes());
        assert_eq!(out.error_code(), Some(4), "{cid:?}: {}", out.stdout);
        assert!(
            out.error_msg() == "invalid characters in containerID"
                || out.error_msg() == "invalid CNI_CONTAINERID: too long",
            "{}",
            out.stdout
        );
    }
    // An empty ID is a missing variable.
    let out = flannel(&env("ADD", "", "/usr/lib/cni"), stdin.as_bytes());
    assert_eq!(
        out.error_msg(),
        "required env variables [CNI_CONTAINERID] missing"
    );
    assert_eq!(tree(dir.path()), vec!["subnet.env"]);
}

#[test]
fn bad_input_gets_a_clear_error_and_code() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let e = env("ADD", "c1", "/usr/lib/cni");
    let big = vec![b' '; 2 * 1024 * 1024];
    let out = flannel(&e, &big);
    assert_eq!(out.error_code(), Some(7));
    assert_eq!(
        out.error_msg(),
        "network config on stdin is larger than 1048576 bytes"
    );
    let out = flannel(&e, b"{\"name\":\"cbr0\",");
    assert_eq!(out.error_code(), Some(6));
    assert!(
        out.error_msg()
            .starts_with("error unmarshall network config: invalid JSON"),
        "{}",
        out.stdout
    );
    let mut conf = netconf_in(dir.path(), "1.0.0");
    conf["delegate"] = json!(["bridge"]);
    let out = flannel(&e, conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(6));
    assert_eq!(
        out.error_msg(),
        "failed to load flannel netconf file: failed to load netconf: \"delegate\": expected an object, got [\"bridge\"]"
    );
    conf["delegate"] = json!({"name": "x"});
    let out = flannel(&e, conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(7));
    assert_eq!(
        out.error_msg(),
        "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
    );
    assert_eq!(out.json()["cniVersion"], "1.0.0");
    conf["delegate"] = json!({"type": "../../bin/sh"});
    let out = flannel(&e, conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(7));
    assert_eq!(out.error_msg(), "invalid plugin name: ../../bin/sh");
    let out = flannel(&e, br#"{"name":"cbr0","cniVersion":"9.9.9"}"#);
    assert_eq!(out.error_code(), Some(1));
}

#[test]
fn subnet_env_problems_name_the_file() {
    let dir = tmp();
    let conf = netconf_in(dir.path(), "1.0.0");
    let path = dir.path().join("subnet.env");
    let e = env("ADD", "c1", "/usr/lib/cni");
    let out = flannel(&e, conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(11), "{}", out.stdout);
    assert_eq!(
        out.error_msg(),
        format!(
            "failed to load flannel 'subnet.env' file: open {}: no such file or directory. Check the flannel pod log for this node.",
            path.display()
        )
    );
    std::fs::write(
        &path,
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n",
    )
    .unwrap();
    let out = flannel(&e, conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(6));
    assert_eq!(
        out.error_msg(),
        format!(
            "failed to load flannel 'subnet.env' file: {} is missing FLANNEL_MTU, FLANNEL_IPMASQ. Check the flannel pod log for this node.",
            path.display()
        )
    );
    // Nothing was saved for a failed ADD that never reached the delegate.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn cni_1_1_add_and_del_through_a_delegate() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let fake = FakeDelegate::new();
    let path = fake.cni_path();
    let conf = netconf_in(dir.path(), "1.1.0");
    let out = flannel(&env("ADD", "c1", &path), conf.to_string().as_bytes());
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    // The delegate's result is passed through unchanged.
    assert!(
        out.stdout
            .starts_with("{\"cniVersion\":\"1.1.0\",\"interfaces\":[{\"name\":\"eth0\""),
        "{}",
        out.stdout
    );
    let saved = std::fs::read_to_string(dir.path().join("data/c1")).unwrap();
    assert_eq!(
        saved,
        r#"{"cniVersion":"1.1.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#
    );
    assert_eq!(fake.stdin("ADD"), saved);
    // DEL replays the saved bytes, then removes them.
    let out = flannel(&env("DEL", "c1", &path), conf.to_string().as_bytes());
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(fake.stdin("DEL"), saved);
    assert!(!dir.path().join("data/c1").exists());
    assert_eq!(fake.calls(), vec!["ADD c1 eth0", "DEL c1 eth0"]);
    // DEL of an unknown container does not call the delegate.
    let out = flannel(&env("DEL", "c1", &path), conf.to_string().as_bytes());
    assert_eq!(out.code, Some(0));
    assert_eq!(fake.calls().len(), 2);
}

#[test]
fn delegate_failures_pass_through_and_keep_state() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let fake = FakeDelegate::new();
    let path = fake.cni_path();
    let conf = netconf_in(dir.path(), "1.0.0").to_string();
    let saved = dir.path().join("data/c1");

    fake.set("ADD", "fail");
    let out = flannel(&env("ADD", "c1", &path), conf.as_bytes());
    assert_eq!(out.code, Some(1));
    assert_eq!(out.error_code(), Some(11));
    assert_eq!(out.error_msg(), "fake ADD failure");
    assert_eq!(out.json()["details"], "on purpose");
    // Saved before the delegate ran, so the runtime's DEL after a failed ADD can clean up.
    assert!(saved.exists());

    fake.set("DEL", "fail");
    let out = flannel(&env("DEL", "c1", &path), conf.as_bytes());
    assert_eq!(out.error_code(), Some(11), "{}", out.stdout);
    assert!(
        saved.exists(),
        "a failed DEL must keep the saved config for the retry"
    );

    fake.set("DEL", "crash");
    let out = flannel(&env("DEL", "c1", &path), conf.as_bytes());
    assert_eq!(out.error_code(), Some(999));
    assert_eq!(
        out.error_msg(),
        "netplugin failed: \"fake delegate crashed\\n\": exit status 2"
    );
    assert!(saved.exists());

    fake.set("DEL", "garbage");
    let out = flannel(&env("DEL", "c1", &path), conf.as_bytes());
    assert_eq!(out.error_code(), Some(999));
    assert!(
        out.error_msg()
            .starts_with("netplugin failed but error parsing its diagnostic message")
    );

    fake.set("DEL", "ok");
    let out = flannel(&env("DEL", "c1", &path), conf.as_bytes());
    assert_eq!(out.code, Some(0));
    assert!(!saved.exists());

    // A delegate not installed anywhere on CNI_PATH.
    let out = flannel(&env("ADD", "c2", "/nonexistent"), conf.as_bytes());
    assert_eq!(out.error_code(), Some(7));
    assert_eq!(
        out.error_msg(),
        "failed to find plugin \"bridge\" in path [/nonexistent]"
    );
}

#[test]
fn del_with_an_unparsable_saved_config_succeeds_and_keeps_it() {
    let dir = tmp();
    let fake = FakeDelegate::new();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/c1"), "{truncated").unwrap();
    let conf = netconf_in(dir.path(), "1.0.0").to_string();
    let out = flannel(&env("DEL", "c1", &fake.cni_path()), conf.as_bytes());
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stderr.contains("failed to parse netconf"),
        "{}",
        out.stderr
    );
    assert!(dir.path().join("data/c1").exists());
    assert!(fake.calls().is_empty());
}

#[test]
fn gc_removes_stale_saved_configs_and_forwards_to_the_delegate() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let fake = FakeDelegate::new();
    let path = fake.cni_path();
    let conf = netconf_in(dir.path(), "1.1.0");
    for cid in ["keep", "stale1", "stale2"] {
        let out = flannel(&env("ADD", cid, &path), conf.to_string().as_bytes());
        assert_eq!(out.code, Some(0), "{}", out.stdout);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID":"keep","ifname":"eth0"}]);
    let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", path.as_str())];
    let out = flannel(&gc_env, gc.to_string().as_bytes());
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    assert_eq!(list_dir(&dir.path().join("data")), vec!["keep"]);
    let sent: Value = serde_json::from_str(&fake.stdin("GC")).unwrap();
    assert_eq!(
        sent["cni.dev/valid-attachments"],
        gc["cni.dev/valid-attachments"]
    );
    assert_eq!(sent["type"], "bridge");
    assert_eq!(sent["ipam"]["ranges"][0][0]["subnet"], "10.1.17.0/24");

    // A delegate that predates GC answers "incompatible": nothing more to do.
    fake.set("GC", "old-cni");
    assert_eq!(flannel(&gc_env, gc.to_string().as_bytes()).code, Some(0));
    // Any other delegate failure is reported.
    fake.set("GC", "fail");
    assert_eq!(
        flannel(&gc_env, gc.to_string().as_bytes()).error_code(),
        Some(11)
    );
    // GC needs the attachment list, and CNI 1.1.
    let out = flannel(&gc_env, conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(7));
    let out = flannel(
        &gc_env,
        netconf_in(dir.path(), "1.0.0").to_string().as_bytes(),
    );
    assert_eq!(
        (out.error_code(), out.error_msg().as_str()),
        (Some(1), "config version does not allow GC")
    );
    assert_eq!(list_dir(&dir.path().join("data")), vec!["keep"]);
}

#[test]
fn status_reports_readiness() {
    let dir = tmp();
    let conf = netconf_in(dir.path(), "1.1.0").to_string();
    let st = |path: &str| {
        flannel(
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", path)],
            conf.as_bytes(),
        )
    };
    let out = st("/usr/lib/cni");
    assert_eq!(out.error_code(), Some(50), "{}", out.stdout);
    assert!(
        out.error_msg()
            .starts_with("flannel is not ready: failed to load flannel 'subnet.env' file: open ")
    );
    write_subnet_env(dir.path());
    let out = st("/usr/lib/cni");
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(out.stdout, "");
    let out = st("/nonexistent");
    assert_eq!(out.error_code(), Some(50));
    assert!(
        out.error_msg().contains("failed to find plugin \"bridge\""),
        "{}",
        out.stdout
    );
}

#[test]
fn own_netns_is_refused() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let mut e = env("ADD", "c1", "/usr/lib/cni");
    e.retain(|(k, _)| *k != "CNI_NETNS");
    e.push(("CNI_NETNS", "/proc/self/ns/net"));
    let out = flannel(&e, netconf_in(dir.path(), "1.0.0").to_string().as_bytes());
    assert_eq!(out.error_code(), Some(8), "{}", out.stdout);
    assert!(!dir.path().join("data").exists());
}

#[test]
fn cni_1_1_check_through_a_delegate() {
    let dir = tmp();
    write_subnet_env(dir.path());
    let fake = FakeDelegate::new();
    let path = fake.cni_path();
    // A pod namespace holding what the fake delegate claims to have set up.
    let pod = flannel_lab::Netns::new("chk11").unwrap();
    pod.ip_batch(
        "link add eth0 type veth peer name peer0\n\
         addr add 10.244.1.7/24 dev eth0\n\
         link set eth0 up\nlink set peer0 up\n\
         route add 10.244.0.0/16 via 10.244.1.1 dev eth0\n",
    )
    .unwrap();
    let netns = pod.path().to_string_lossy().to_string();
    let conf = netconf_in(dir.path(), "1.1.0");
    let mut e = env("ADD", "c1", &path);
    e.retain(|(k, _)| *k != "CNI_NETNS");
    e.push(("CNI_NETNS", &netns));
    let add = flannel(&e, conf.to_string().as_bytes());
    assert_eq!(add.code, Some(0), "{}", add.stdout);
    e.retain(|(k, _)| *k != "CNI_COMMAND");
    e.push(("CNI_COMMAND", "CHECK"));
    let check_conf = with_prev(&conf, &add.json());
    let out = flannel(&e, check_conf.to_string().as_bytes());
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    // The delegate's CHECK got the saved config plus prevResult, gateway-less routes completed.
    let sent: Value = serde_json::from_str(&fake.stdin("CHECK")).unwrap();
    assert_eq!(
        sent["prevResult"]["routes"][0],
        json!({"dst":"10.244.0.0/16","gw":"10.244.1.1"})
    );
    assert_eq!(sent["mtu"], 1472);
    // Break the pod: CHECK fails without asking the delegate.
    pod.ip(["route", "del", "10.244.0.0/16"]).unwrap();
    let calls = fake.calls().len();
    let out = flannel(&e, check_conf.to_string().as_bytes());
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.error_msg()
            .contains("route 10.244.0.0/16 is missing on eth0"),
        "{}",
        out.stdout
    );
    assert_eq!(fake.calls().len(), calls);
    // A delegate that disagrees fails CHECK with its own error.
    pod.ip([
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ])
    .unwrap();
    fake.set("CHECK", "fail");
    let out = flannel(&e, check_conf.to_string().as_bytes());
    assert_eq!(
        (out.error_code(), out.error_msg().as_str()),
        (Some(11), "fake CHECK failure")
    );
}
