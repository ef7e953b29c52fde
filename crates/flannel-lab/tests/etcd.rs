//! A real etcd in a lab node: reachable from other nodes over the underlay, survives stop,
//! SIGKILL and restart on the same data directory and ports.

use flannel_lab::{EtcdOptions, Lab, run_in};
use std::net::IpAddr;

#[test]
fn etcd_put_get_restart_and_read_back() -> anyhow::Result<()> {
    let lab = Lab::builder().nodes(2).build()?;
    let n1 = lab.node(0);
    let mut etcd = lab.start_etcd(
        n1.netns(),
        EtcdOptions::new().listen_on(IpAddr::V4(n1.ip())),
    )?;
    assert_eq!(
        etcd.endpoints(),
        format!("http://{}:{}", n1.ip(), etcd.client_port())
    );
    assert!(etcd.is_healthy());

    etcd.etcdctl([
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16"}"#,
    ])?;
    let got = etcd.etcdctl(["get", "--print-value-only", "/coreos.com/network/config"])?;
    assert_eq!(got.trim(), r#"{"Network":"10.244.0.0/16"}"#);

    // Another node reaches it over the underlay, as flanneld there will.
    let endpoints = format!("--endpoints={}", etcd.endpoints());
    let remote = run_in(
        lab.node(1).netns(),
        [
            "etcdctl",
            endpoints.as_str(),
            "--dial-timeout=5s",
            "get",
            "--print-value-only",
            "/coreos.com/network/config",
        ],
    )?;
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    assert!(String::from_utf8_lossy(&remote.stdout).contains("10.244.0.0/16"));

    let (client, peer, data) = (
        etcd.client_port(),
        etcd.peer_port(),
        etcd.data_dir().to_path_buf(),
    );

    // Graceful stop: clients fail, then restart on the same ports and data.
    etcd.stop()?;
    assert!(!etcd.is_running());
    assert!(!etcd.is_healthy(), "etcd still answers after stop()");
    etcd.restart()?;
    assert_eq!((etcd.client_port(), etcd.peer_port()), (client, peer));
    assert_eq!(etcd.data_dir(), data);
    let got = etcd.etcdctl(["get", "--print-value-only", "/coreos.com/network/config"])?;
    assert_eq!(got.trim(), r#"{"Network":"10.244.0.0/16"}"#);

    // A crash (SIGKILL) right after a write: the write survives the restart.
    etcd.etcdctl(["put", "/k2", "v2"])?;
    let pid = etcd.pid().expect("running");
    etcd.kill()?;
    assert!(!flannel_lab::pid_alive(pid));
    etcd.restart()?;
    assert_eq!(
        etcd.etcdctl(["get", "--print-value-only", "/k2"])?.trim(),
        "v2"
    );
    assert!(etcd.log_path().starts_with(lab.dir()));
    assert!(etcd.log_tail(200).contains("flannel-lab: starting"));
    drop(etcd);
    Ok(())
}

#[test]
fn etcd_in_a_bare_namespace_with_its_own_temp_dir() -> anyhow::Result<()> {
    let ns = flannel_lab::Netns::new("etcd")?;
    let etcd = flannel_lab::Etcd::start(&ns, EtcdOptions::new())?;
    assert!(etcd.endpoints().starts_with("http://127.0.0.1:"));
    etcd.etcdctl(["put", "a", "b"])?;
    assert_eq!(
        etcd.etcdctl(["get", "--print-value-only", "a"])?.trim(),
        "b"
    );
    let dir = etcd.data_dir().parent().expect("has parent").to_path_buf();
    // scripts/test finds leaked daemons by the `flrs` marker in their command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", etcd.pid().expect("running")))?;
    assert!(
        String::from_utf8_lossy(&cmdline).contains("flrs"),
        "no flrs marker in etcd's arguments"
    );
    let pid = etcd.pid().expect("running");
    drop(etcd);
    assert!(!flannel_lab::pid_alive(pid));
    assert!(!dir.exists(), "etcd temp dir {} survived", dir.display());
    // Two etcds side by side in one namespace get different ports.
    let e1 = flannel_lab::Etcd::start(&ns, EtcdOptions::new())?;
    let e2 = flannel_lab::Etcd::start(&ns, EtcdOptions::new())?;
    assert_ne!(e1.client_port(), e2.client_port());
    e1.etcdctl(["put", "x", "1"])?;
    assert_eq!(e2.etcdctl(["get", "x"])?.trim(), "");
    Ok(())
}
