//! The real binary refuses bad flags, environment values and net-conf.json with a message that
//! names the input, and exits non-zero. Each run happens in a fresh network namespace
//! (`unshare --net`) so nothing can touch the host even if a check were missing.

use std::process::Command;

fn flanneld(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new("unshare");
    cmd.arg("--net")
        .arg(env!("CARGO_BIN_EXE_flanneld"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("unshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn invalid_flag_values_are_named() {
    for (args, needle) in [
        (vec!["--healthz-port=abc"], "--healthz-port"),
        (vec!["--healthz-port=70000"], "--healthz-port 70000"),
        (vec!["--iptables-resync=0"], "--iptables-resync 0"),
        (vec!["--ip-masq=maybe"], "maybe"),
        (vec!["--iface-regex=("], "could not compile"),
        (vec!["--iface-can-reach=nohost"], "--iface-can-reach"),
        (vec!["--healthz-ip=1.2.3"], "--healthz-ip"),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["-vmodule=vxlan"], "-vmodule"),
    ] {
        let (code, text) = flanneld(&args, &[]);
        assert_ne!(code, 0, "{args:?} accepted");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    let (code, text) = flanneld(&["--subnet-lease-renew-margin=1440"], &[]);
    assert_eq!(code, 1);
    assert!(text.contains("Invalid subnet-lease-renew-margin option, out of acceptable range"));
}

#[test]
fn invalid_env_values_are_named() {
    let (code, text) = flanneld(&[], &[("FLANNELD_IPTABLES_RESYNC", "often")]);
    assert_eq!(code, 2);
    assert!(text.contains("FLANNELD_IPTABLES_RESYNC"), "{text}");
    assert!(text.contains("\"often\""), "{text}");
}

#[test]
fn invalid_net_conf_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (conf, needle) in [
        (r#"{"Network": 5}"#, "\"Network\""),
        (
            r#"{"Network": "10.244.0.0/16", "EnableIPv4": "yes"}"#,
            "EnableIPv4",
        ),
        (r#"{"Network": "10.244.0.0/16""#, "net-conf"),
    ] {
        let path = dir.path().join("net-conf.json");
        std::fs::write(&path, conf).unwrap();
        let arg = format!("--net-config-path={}", path.display());
        let (code, text) = flanneld(
            &[
                "--kube-subnet-mgr",
                &arg,
                "--kube-api-url=http://127.0.0.1:9",
            ],
            &[("NODE_NAME", "n1")],
        );
        assert_eq!(code, 1, "{conf}: {text}");
        assert!(text.contains(needle), "{conf}: {text}");
    }
    let (code, text) = flanneld(
        &[
            "--kube-subnet-mgr",
            "--net-config-path=/nonexistent/net-conf.json",
            "--kube-api-url=http://127.0.0.1:9",
        ],
        &[("NODE_NAME", "n1")],
    );
    assert_eq!(code, 1);
    assert!(text.contains("failed to read net conf"), "{text}");
    assert!(text.contains("/nonexistent/net-conf.json"), "{text}");
}

/// Unusable etcd TLS files stop flanneld at once (exit 1, as upstream's `newTlsConfig`
/// failing does) with the file and the OS error, before anything is sent.
#[test]
fn unusable_etcd_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM\n").unwrap();
    let junk = junk.to_str().unwrap();
    let missing = dir.path().join("missing.crt");
    let missing = missing.to_str().unwrap();
    let tls = |ca: &str, cert: &str, key: &str| {
        flanneld(
            &[
                "--etcd-endpoints=https://127.0.0.1:2379",
                &format!("--etcd-cafile={ca}"),
                &format!("--etcd-certfile={cert}"),
                &format!("--etcd-keyfile={key}"),
            ],
            &[],
        )
    };
    let (code, text) = tls(missing, junk, junk);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "Failed to create SubnetManager: checking the etcd TLS files: cannot read the etcd CA file (--etcd-cafile) {missing}: No such file or directory (os error 2)"
        )),
        "{text}"
    );
    let (code, text) = tls(junk, junk, junk);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "the etcd CA file (--etcd-cafile) {junk} contains no PEM certificate"
        )),
        "{text}"
    );
}
