//! What HTTPS, bearer tokens and RBAC cost a client of the emulator: the same kube-rs calls
//! (a GET of one node, a list of N generated nodes) against a plain-HTTP emulator and against
//! one with TLS, a ServiceAccount token and RBAC (kube-flannel's ClusterRole and binding),
//! printed as mean microseconds per call over keep-alive connections.
//!
//! Run it inside a network namespace of its own, never on the host's loopback:
//!
//! ```sh
//! cargo build --release -p flannel-kube-emu --example auth_overhead
//! unshare -n sh -c 'ip link set lo up; target/release/examples/auth_overhead 2000 1000'
//! ```
//! (2000 GETs and 20 lists of 1000 nodes per server.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::time::{Duration, Instant};

use flannel_kube_emu::{
    AuthorizationMode, EmuConfig, Emulator, GenerateOptions, Kind, Security, TlsIdentity,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client, Config};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::json;

/// Mean time per call of `f`, run `n` times.
async fn mean<F, Fut>(n: u32, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for _ in 0..n {
        f().await;
    }
    start.elapsed() / n
}

async fn measure(label: &str, client: Client, gets: u32, lists: u32) {
    let nodes: Api<Node> = Api::all(client);
    let name = flannel_kube_emu::generate::node_name(0);
    nodes.get(&name).await.unwrap();
    let get = mean(gets, || async { drop(nodes.get(&name).await.unwrap()) }).await;
    let list = mean(lists, || async {
        drop(nodes.list(&ListParams::default()).await.unwrap())
    })
    .await;
    println!(
        "{label:<28} GET node {:>7.1} us   list nodes {:>9.1} us",
        get.as_secs_f64() * 1e6,
        list.as_secs_f64() * 1e6
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (gets, nodes) = (
        args.first().copied().unwrap_or(2000),
        args.get(1).copied().unwrap_or(1000),
    );
    let generate = GenerateOptions {
        nodes: nodes as usize,
        network: "10.128.0.0/9".parse().unwrap(),
    };

    let plain = Emulator::new(EmuConfig::default());
    plain.generate_nodes(&generate).unwrap();
    let plain_srv = plain.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = Client::try_from(Config::new(plain_srv.url().parse().unwrap())).unwrap();
    measure("HTTP, no authentication", client, gets, 20).await;

    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let identity = TlsIdentity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        "server.crt".as_ref(),
        "server.key".as_ref(),
    )
    .unwrap();
    let secure = Emulator::with_security(
        EmuConfig::default(),
        Security {
            tls: Some(identity),
            tokens: Vec::new(),
            anonymous_auth: false,
            authorization: AuthorizationMode::Rbac,
        },
    );
    secure.generate_nodes(&generate).unwrap();
    secure
        .create(
            Kind::ServiceAccount,
            "kube-flannel",
            json!({"metadata": {"name": "flannel"}}),
        )
        .unwrap();
    secure
        .create(
            Kind::ClusterRole,
            "",
            json!({
                "metadata": {"name": "flannel"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
                ]
            }),
        )
        .unwrap();
    secure
        .create(Kind::ClusterRoleBinding, "", json!({
            "metadata": {"name": "flannel"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
            "subjects": [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]
        }))
        .unwrap();
    let (token, _) = secure
        .issue_token("kube-flannel", "flannel", Duration::from_secs(3600))
        .unwrap();
    let secure_srv = secure.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut config = Config::new(secure_srv.url().parse().unwrap());
    config.root_cert = Some(vec![ca_cert.der().to_vec()]);
    config.auth_info.token = Some(token.into());
    let client = Client::try_from(config).unwrap();
    measure("HTTPS, SA token, RBAC", client, gets, 20).await;
    println!("({gets} GETs, 20 lists of {nodes} generated nodes each, one keep-alive client)");
}
