//! A 2-node cluster whose etcd serves TLS only with client-certificate authentication
//! (`ClusterSpec::etcd_tls`), and one with etcd's username/password auth on top
//! (`ClusterSpec::etcd_user`): flanneld comes up with `--etcd-cafile/--etcd-certfile/
//! --etcd-keyfile` (and `--etcd-username/--etcd-password`), pods on different nodes ping each
//! other, and etcd really refuses a client without a certificate and plain HTTP, while the
//! same command with a node's certificate (positive control) goes through.

use std::process::Output;

use flannel_lab::etcd_tls::EtcdUser;
use flannel_lab::{Cluster, ClusterSpec, run_in};

const CONFIG_KEY: &str = "/coreos.com/network/config";

fn start(user: Option<EtcdUser>) -> Cluster {
    Cluster::start(ClusterSpec {
        nodes: 2,
        etcd_tls: true,
        etcd_user: user,
        ..ClusterSpec::default()
    })
    .expect("cluster with TLS etcd")
}

fn pods_ping_across_nodes(c: &mut Cluster) {
    c.add_pod(0, "a").unwrap();
    c.add_pod(1, "b").unwrap();
    let matrix = c.ping_matrix();
    assert_eq!(matrix.len(), 2, "{matrix:?}");
    assert!(matrix.iter().all(|(_, _, ok)| *ok), "{matrix:?}");
}

/// `etcdctl get CONFIG_KEY` from node n2 against `endpoint` with `flags`.
fn etcdctl_from_n2(c: &Cluster, endpoint: &str, flags: &[String]) -> Output {
    let mut args = vec![
        "etcdctl".to_string(),
        format!("--endpoints={endpoint}"),
        "--dial-timeout=3s".into(),
        "--command-timeout=3s".into(),
    ];
    args.extend(flags.iter().cloned());
    args.extend(["get".into(), "--print-value-only".into(), CONFIG_KEY.into()]);
    run_in(c.lab().node(1).netns(), &args).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The flags of node n2's certificate, as etcdctl takes them.
fn n2_cert_flags(c: &Cluster) -> Vec<String> {
    let pki = c.etcd_pki().expect("TLS cluster has a PKI");
    vec![
        format!("--cacert={}", pki.tls.ca.display()),
        format!("--cert={}", pki.nodes[1].cert.display()),
        format!("--key={}", pki.nodes[1].key.display()),
    ]
}

/// etcd refuses a client that presents no certificate and one that speaks plain HTTP.
fn strangers_are_refused(c: &Cluster) {
    let https = c.etcd().endpoints();
    assert!(https.starts_with("https://198.18.0.254:"), "{https}");
    let ca_only = vec![n2_cert_flags(c)[0].clone()];
    let o = etcdctl_from_n2(c, &https, &ca_only);
    assert!(
        !o.status.success(),
        "no client certificate accepted: {}",
        text(&o)
    );
    let http = https.replace("https://", "http://");
    let o = etcdctl_from_n2(c, &http, &[]);
    assert!(!o.status.success(), "plain http accepted: {}", text(&o));
}

fn flanneld_args_of(c: &Cluster, i: usize) -> String {
    c.flanneld_args(i).join(" ")
}

#[test]
fn tls_etcd_with_client_certificates_carries_a_cluster_and_refuses_strangers() {
    let mut c = start(None);
    let args = flanneld_args_of(&c, 0);
    for flag in [
        "--etcd-endpoints=https://",
        "--etcd-cafile=",
        "--etcd-certfile=",
        "flanneld-n1.crt",
        "--etcd-keyfile=",
    ] {
        assert!(args.contains(flag), "{flag} missing from {args}");
    }
    assert!(!args.contains("--etcd-username"), "{args}");
    pods_ping_across_nodes(&mut c);
    strangers_are_refused(&c);
    // Positive control: the same request with n2's certificate goes through.
    let o = etcdctl_from_n2(&c, &c.etcd().endpoints(), &n2_cert_flags(&c));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("10.244.0.0/16"), "{}", text(&o));
    // flanneld saw a server that asks for certificates and had one: no warnings about either.
    let log = c.flanneld(0).unwrap().log_tail(200);
    assert!(
        !log.contains("did not ask for a client certificate"),
        "{log}"
    );
    assert!(!log.contains("This is insecure"), "{log}");
}

#[test]
fn tls_etcd_with_a_user_limited_to_the_flannel_prefix() {
    let user: EtcdUser = "flannel:tls-lab-pw".parse().unwrap();
    let mut c = start(Some(user));
    let args = flanneld_args_of(&c, 1);
    assert!(
        args.contains("--etcd-username=flannel") && args.contains("--etcd-password=tls-lab-pw"),
        "{args}"
    );
    pods_ping_across_nodes(&mut c);
    strangers_are_refused(&c);
    let https = c.etcd().endpoints();
    let mut flags = n2_cert_flags(&c);
    // Auth is on: the certificate alone (CN flanneld-n2, no such user) is not enough...
    let o = etcdctl_from_n2(&c, &https, &flags);
    assert!(
        !o.status.success(),
        "certificate without user accepted: {}",
        text(&o)
    );
    // ...a wrong password is refused...
    flags.push("--user=flannel:wrong".into());
    let o = etcdctl_from_n2(&c, &https, &flags);
    assert!(text(&o).contains("authentication failed"), "{}", text(&o));
    // ...the right one reads the flannel prefix...
    flags.pop();
    flags.push("--user=flannel:tls-lab-pw".into());
    let o = etcdctl_from_n2(&c, &https, &flags);
    assert!(text(&o).contains("10.244.0.0/16"), "{}", text(&o));
    // ...and may not write outside it.
    let mut put = vec!["etcdctl".to_string(), format!("--endpoints={https}")];
    put.extend(flags.iter().cloned());
    put.extend(["put".into(), "/elsewhere".into(), "x".into()]);
    let o = run_in(c.lab().node(1).netns(), &put).unwrap();
    assert!(text(&o).contains("permission denied"), "{}", text(&o));
    // The lab's own etcdctl still works, as root through its certificate.
    let v = c
        .etcd()
        .etcdctl(["get", "--print-value-only", CONFIG_KEY])
        .unwrap();
    assert!(v.contains("10.244.0.0/16"), "{v}");
}
