//! The emulator as a production API server looks to its clients: HTTPS with a certificate from
//! a throwaway CA (made here with rcgen), bearer tokens (a static admin token and
//! ServiceAccount tokens from the TokenRequest API) and RBAC with deploy/kube-flannel.yml's
//! ClusterRole and binding applied through the API. kube-rs (flanneld's client) as the
//! `kube-flannel/flannel` ServiceAccount may do what the manifest grants and gets the API
//! server's exact 403 for anything else; bad, expired, revoked and orphaned tokens get 401; an
//! open watch outlives its revoked token; a role change applies at once. Real kubectl does the
//! same over HTTPS with token kubeconfigs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flannel_kube_emu::{
    AuthorizationMode, EmuConfig, Emulator, Security, Server, StaticToken, TlsIdentity, UserInfo,
};
use flannel_netlink::Netlink;
use flannel_netlink::netns::{NetnsError, NetnsTarget, run_in_netns};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yaml_rust2::{Yaml, YamlLoader};

/// The static admin token (the lab's admin line in the token file).
const ADMIN: &str = "0123456789abcdef-admin";
/// The ServiceAccount flanneld runs as.
const FLANNEL_USER: &str = "system:serviceaccount:kube-flannel:flannel";
/// Longest one request or kubectl run may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Brings `lo` up in the test's fresh namespace (it starts down).
async fn loopback_up() {
    let nl = Netlink::new().expect("netlink");
    let lo = nl.link_by_name("lo").await.unwrap().expect("lo exists");
    nl.set_link_up(lo.index).await.unwrap();
}

/// A throwaway CA and a server certificate for 127.0.0.1 it signed.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    ca_der: Vec<u8>,
    identity: TlsIdentity,
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flannel-kube-emu test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["kubernetes".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    let identity = TlsIdentity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        std::path::Path::new("server.crt"),
        std::path::Path::new("server.key"),
    )
    .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_der: ca_cert.der().to_vec(),
        identity,
    }
}

/// An emulator over HTTPS with the admin token and RBAC; `anonymous` as
/// `--anonymous-auth`.
async fn start(anonymous: bool) -> (Emulator, Server, Pki) {
    loopback_up().await;
    let pki = pki();
    let emu = Emulator::with_security(
        EmuConfig::default(),
        Security {
            tls: Some(pki.identity.clone()),
            tokens: vec![StaticToken {
                token: ADMIN.to_string(),
                user: UserInfo {
                    name: "kubernetes-admin".into(),
                    uid: "kubernetes-admin".into(),
                    groups: vec!["system:masters".into()],
                },
            }],
            anonymous_auth: anonymous,
            authorization: AuthorizationMode::Rbac,
        },
    );
    let server = emu.start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    emu.add_node("n1", &["10.244.0.0/24"], json!({})).unwrap();
    (emu, server, pki)
}

/// kube-rs trusting the test CA, with a bearer token.
fn client(server: &Server, pki: &Pki, token: &str) -> Client {
    let mut config = Config::new(server.url().parse().unwrap());
    config.root_cert = Some(vec![pki.ca_der.clone()]);
    config.auth_info.token = Some(token.to_string().into());
    Client::try_from(config).unwrap()
}

/// One raw HTTPS request (HTTP/1.1, `Connection: close`); the status and the body as JSON.
/// Also checks that the server picked `http/1.1` from ALPN `h2, http/1.1`.
async fn raw(
    addr: SocketAddr,
    pki: &Pki,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone().into()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/merge-patch+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // The server closes without close_notify on some paths; what was read is what counts.
    let _ = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut raw))
        .await
        .expect("response in time");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

/// The payload of a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").expect("a chunk size line");
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
}

/// The Status body of a 401, exactly as the API server sends it.
fn unauthorized() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":"Unauthorized","reason":"Unauthorized","code":401})
}

/// The documents of deploy/kube-flannel.yml, as JSON.
fn manifest() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kube-flannel.yml");
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text)
        .unwrap()
        .iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .map(to_json)
        .collect()
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Boolean(b) => json!(b),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) | Yaml::Real(s) => json!(s),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_json(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// The manifest's document of `kind`.
fn doc<T: k8s_openapi::serde::de::DeserializeOwned>(kind: &str) -> T {
    let d = manifest()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/kube-flannel.yml has a {kind}"));
    serde_json::from_value(d).unwrap()
}

/// Creates the manifest's ServiceAccount, ClusterRole and ClusterRoleBinding as the admin.
async fn apply_rbac(admin: &Client) {
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), "kube-flannel")
        .create(&pp, &doc("ServiceAccount"))
        .await
        .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&pp, &doc("ClusterRole"))
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&pp, &doc("ClusterRoleBinding"))
        .await
        .unwrap();
}

/// A token for kube-flannel/flannel from the TokenRequest API.
async fn flannel_token(admin: &Client, seconds: Option<i64>) -> Result<TokenRequest, kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: seconds,
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), "kube-flannel")
        .create_token_request("flannel", &PostParams::default(), &request)
        .await
}

/// The API error (code, reason, message) a call failed with.
fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn forbidden(message: &str) -> (u16, String, String) {
    (403, "Forbidden".into(), message.to_string())
}

fn refused(code: u16) -> (u16, String, String) {
    let reason = if code == 401 { "Unauthorized" } else { "?" };
    (code, reason.into(), reason.into())
}

#[test]
fn flannel_account_gets_exactly_what_the_manifest_grants() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (_emu, srv, pki) = start(false).await;
        let admin = client(&srv, &pki, ADMIN);
        apply_rbac(&admin).await;
        let tr = flannel_token(&admin, None).await.unwrap();
        assert_eq!(tr.spec.expiration_seconds, Some(3600));
        let status = tr.status.unwrap();
        let expires = SystemTime::from(status.expiration_timestamp.0);
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        let sa = client(&srv, &pki, &status.token);
        let nodes: Api<Node> = Api::all(sa.clone());

        // What the ClusterRole grants.
        let list = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        nodes.get("n1").await.unwrap();
        let annotation = json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "198.18.0.1"}}});
        let patched = nodes
            .patch_status("n1", &PatchParams::default(), &Patch::Merge(&annotation))
            .await
            .unwrap();
        assert_eq!(
            patched.metadata.annotations.unwrap()["flannel.alpha.coreos.com/public-ip"],
            "198.18.0.1"
        );
        Api::<Pod>::namespaced(sa.clone(), "kube-flannel")
            .get_opt("p")
            .await
            .unwrap();

        // Everything else: 403 with the API server's wording.
        assert_eq!(
            api_error(
                nodes
                    .patch("n1", &PatchParams::default(), &Patch::Merge(&annotation))
                    .await
            ),
            forbidden(&format!(
                "nodes \"n1\" is forbidden: User \"{FLANNEL_USER}\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
            ))
        );
        assert_eq!(
            api_error(
                Api::<Pod>::all(sa.clone())
                    .list(&ListParams::default())
                    .await
            ),
            forbidden(&format!(
                "pods is forbidden: User \"{FLANNEL_USER}\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
            ))
        );
        let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), "kube-flannel");
        assert_eq!(
            api_error(cms.get("kube-flannel-cfg").await),
            forbidden(&format!(
                "configmaps \"kube-flannel-cfg\" is forbidden: User \"{FLANNEL_USER}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"kube-flannel\""
            ))
        );
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(
            api_error(cms.create(&PostParams::default(), &cm).await),
            forbidden(&format!(
                "configmaps is forbidden: User \"{FLANNEL_USER}\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"kube-flannel\""
            ))
        );
        assert_eq!(
            api_error(
                Api::<ClusterRole>::all(sa.clone())
                    .create(&PostParams::default(), &doc("ClusterRole"))
                    .await
            ),
            forbidden(&format!(
                "clusterroles.rbac.authorization.k8s.io is forbidden: User \"{FLANNEL_USER}\" cannot create resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope"
            ))
        );
        // The exact bodies, as a raw client sees them.
        let (code, body) = raw(
            srv.addr(),
            &pki,
            "PATCH",
            "/api/v1/nodes/n1/status",
            Some(&status.token),
            "{}",
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let (code, body) = raw(
            srv.addr(),
            &pki,
            "PATCH",
            "/api/v1/nodes/n1",
            Some(&status.token),
            "{}",
        )
        .await;
        assert_eq!(code, 403);
        assert_eq!(
            body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message": format!("nodes \"n1\" is forbidden: User \"{FLANNEL_USER}\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"),
                "reason":"Forbidden","details":{"name":"n1","kind":"nodes"},"code":403})
        );
        let (code, body) = raw(
            srv.addr(),
            &pki,
            "GET",
            "/api/v1/namespaces/default/pods",
            Some(&status.token),
            "",
        )
        .await;
        assert_eq!(code, 403);
        assert_eq!(
            body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message": format!("pods is forbidden: User \"{FLANNEL_USER}\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
                "reason":"Forbidden","details":{"kind":"pods"},"code":403})
        );
        let (code, body) = raw(srv.addr(), &pki, "GET", "/metrics", Some(&status.token), "").await;
        assert_eq!(code, 403);
        assert_eq!(
            body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message": format!("forbidden: User \"{FLANNEL_USER}\" cannot get path \"/metrics\""),
                "reason":"Forbidden","details":{},"code":403})
        );
        let (code, body) = raw(
            srv.addr(),
            &pki,
            "GET",
            "/emu/state",
            Some(&status.token),
            "",
        )
        .await;
        assert_eq!(
            (code, body["message"].clone()),
            (
                403,
                json!(format!(
                    "forbidden: User \"{FLANNEL_USER}\" cannot get path \"/emu/state\""
                ))
            )
        );
        let (code, _) = raw(srv.addr(), &pki, "GET", "/emu/state", Some(ADMIN), "").await;
        assert_eq!(code, 200);

        // A role change applies to the next request.
        let roles: Api<ClusterRole> = Api::all(admin.clone());
        let mut role = roles.get("flannel").await.unwrap();
        let original = role.rules.clone();
        role.rules.as_mut().unwrap().push(
            serde_json::from_value(
                json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}),
            )
            .unwrap(),
        );
        roles
            .replace("flannel", &PostParams::default(), &role)
            .await
            .unwrap();
        Api::<Pod>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        let mut role = roles.get("flannel").await.unwrap();
        role.rules = original;
        roles
            .replace("flannel", &PostParams::default(), &role)
            .await
            .unwrap();
        assert_eq!(
            api_error(
                Api::<Pod>::all(sa.clone())
                    .list(&ListParams::default())
                    .await
            )
            .0,
            403
        );
        // So does a binding's removal.
        Api::<ClusterRoleBinding>::all(admin.clone())
            .delete("flannel", &Default::default())
            .await
            .unwrap();
        assert_eq!(api_error(nodes.get("n1").await).0, 403);
    })
}

#[test]
fn tokens_that_are_missing_bad_expired_revoked_or_orphaned_get_401() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (emu, srv, pki) = start(false).await;
        let a = srv.addr();
        let admin = client(&srv, &pki, ADMIN);
        apply_rbac(&admin).await;

        // No token (anonymous requests are off) and a wrong token.
        for token in [None, Some("wrong"), Some("")] {
            for path in ["/api/v1/nodes", "/healthz", "/version", "/emu/state"] {
                assert_eq!(
                    raw(a, &pki, "GET", path, token, "").await,
                    (401, unauthorized()),
                    "{path} {token:?}"
                );
            }
        }
        assert_eq!(
            api_error(
                Api::<Node>::all(client(&srv, &pki, "wrong"))
                    .list(&ListParams::default())
                    .await
            ),
            refused(401)
        );

        // Revoked: new requests fail, an open watch goes on.
        let token = flannel_token(&admin, Some(600))
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let sa = client(&srv, &pki, &token);
        let nodes: Api<Node> = Api::all(sa.clone());
        let mut watch = nodes
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        let first = tokio::time::timeout(TIMEOUT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(first, WatchEvent::Added(n) if n.metadata.name.as_deref() == Some("n1")));
        let (code, body) = raw(
            a,
            &pki,
            "POST",
            "/emu/revoke-token",
            Some(ADMIN),
            &json!({"token": token}).to_string(),
        )
        .await;
        assert_eq!((code, body), (200, json!({"revoked": true})));
        assert_eq!(
            api_error(nodes.list(&ListParams::default()).await),
            refused(401)
        );
        assert_eq!(
            raw(a, &pki, "GET", "/api/v1/nodes", Some(&token), "").await,
            (401, unauthorized())
        );
        emu.add_node("n2", &["10.244.1.0/24"], json!({})).unwrap();
        let next = tokio::time::timeout(TIMEOUT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(next, WatchEvent::Added(n) if n.metadata.name.as_deref() == Some("n2")),
            "the open watch outlives its token"
        );
        drop(watch);

        // Only an admin may revoke.
        let other = flannel_token(&admin, None)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let (code, _) = raw(
            a,
            &pki,
            "POST",
            "/emu/revoke-token",
            Some(&other),
            &json!({"token": other}).to_string(),
        )
        .await;
        assert_eq!(code, 403);
        Api::<Node>::all(client(&srv, &pki, &other))
            .get("n1")
            .await
            .unwrap();

        // Expired (the library issues short ones; the API's minimum is ten minutes).
        let (short, _) = emu
            .issue_token("kube-flannel", "flannel", Duration::from_millis(1500))
            .unwrap();
        let short_client: Api<Node> = Api::all(client(&srv, &pki, &short));
        short_client.get("n1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(api_error(short_client.get("n1").await), refused(401));
        assert_eq!(
            api_error(flannel_token(&admin, Some(599)).await),
            (422, "Invalid".into(), "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes".into())
        );

        // The account deleted, then recreated: its old tokens stay dead.
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "kube-flannel");
        accounts
            .delete("flannel", &Default::default())
            .await
            .unwrap();
        let orphan: Api<Node> = Api::all(client(&srv, &pki, &other));
        assert_eq!(api_error(orphan.get("n1").await), refused(401));
        assert_eq!(
            api_error(flannel_token(&admin, None).await),
            (
                404,
                "NotFound".into(),
                "serviceaccounts \"flannel\" not found".into()
            )
        );
        accounts
            .create(&PostParams::default(), &doc("ServiceAccount"))
            .await
            .unwrap();
        assert_eq!(api_error(orphan.get("n1").await), refused(401));
        let fresh = flannel_token(&admin, None)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        Api::<Node>::all(client(&srv, &pki, &fresh))
            .get("n1")
            .await
            .unwrap();
    })
}

#[test]
fn anonymous_requests_see_only_public_info() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (_emu, srv, pki) = start(true).await;
        let a = srv.addr();
        for path in ["/healthz", "/livez", "/readyz", "/version"] {
            assert_eq!(raw(a, &pki, "GET", path, None, "").await.0, 200, "{path}");
        }
        assert_eq!(
            raw(a, &pki, "GET", "/api/v1/nodes", None, "").await,
            (
                403,
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"nodes is forbidden: User \"system:anonymous\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
                "reason":"Forbidden","details":{"kind":"nodes"},"code":403})
            )
        );
        assert_eq!(
            raw(a, &pki, "GET", "/api", None, "").await.1["message"],
            "forbidden: User \"system:anonymous\" cannot get path \"/api\""
        );
        // A wrong token is still 401, not anonymous.
        assert_eq!(
            raw(a, &pki, "GET", "/healthz", Some("wrong"), "").await,
            (401, unauthorized())
        );
        // The admin may do anything.
        assert_eq!(
            raw(a, &pki, "GET", "/metrics", Some(ADMIN), "").await.0,
            200
        );
        assert_eq!(
            raw(a, &pki, "DELETE", "/api/v1/nodes/n1", Some(ADMIN), "")
                .await
                .0,
            200
        );
        // Plain HTTP on the HTTPS port gets no HTTP answer.
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut got))
            .await
            .unwrap();
        assert!(
            !got.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    })
}

/// kubectl with a kubeconfig of its own (HTTPS, the test CA, a bearer token) in a temp dir.
struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &Server, pki: &Pki, token: &str) -> Kubectl {
        let dir = tempfile::Builder::new()
            .prefix("flrs-kubectl-auth-")
            .tempdir()
            .unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: emu\n  context:\n    cluster: emu\n    user: u\ncurrent-context: emu\nusers:\n- name: u\n  user:\n    token: {token}\n",
            server.url(),
            ca.display()
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        Kubectl { dir }
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        let child = tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("config"))
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl runs (scripts/setup)");
        tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {TIMEOUT:?}"))
            .unwrap()
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and requires failure; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }
}

/// The whitespace-separated columns of each line (kubectl's table output).
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn kubectl_over_https_as_admin_and_as_the_flannel_account() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        let (_emu, srv, pki) = start(false).await;
        let admin = Kubectl::new(&srv, &pki, ADMIN);
        let nodes = rows(&admin.ok(&["get", "nodes"]).await);
        assert_eq!(nodes[0][..2], ["NAME", "STATUS"]);
        assert_eq!(nodes[1][0], "n1");

        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kube-flannel.yml");
        let applied = admin
            .ok(&["apply", "-f", manifest, "--validate=false"])
            .await;
        for line in [
            "serviceaccount/flannel created",
            "clusterrole.rbac.authorization.k8s.io/flannel created",
            "clusterrolebinding.rbac.authorization.k8s.io/flannel created",
            "configmap/kube-flannel-cfg created",
            "daemonset.apps/kube-flannel-ds created",
        ] {
            assert!(applied.lines().any(|l| l == line), "{line} in:\n{applied}");
        }
        let yaml = admin
            .ok(&["get", "clusterrole", "flannel", "-o", "yaml"])
            .await;
        assert!(yaml.contains("kind: ClusterRole\n"), "{yaml}");
        assert!(yaml.contains("  - nodes/status\n"), "{yaml}");
        let roles = rows(&admin.ok(&["get", "clusterroles"]).await);
        assert_eq!(roles[0], ["NAME", "CREATED", "AT"]);
        let names: Vec<&str> = roles[1..].iter().map(|r| r[0].as_str()).collect();
        for name in [
            "cluster-admin",
            "flannel",
            "system:discovery",
            "system:public-info-viewer",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        let binding = rows(
            &admin
                .ok(&["get", "clusterrolebinding", "flannel", "-o", "wide"])
                .await,
        );
        assert_eq!(
            binding[0],
            ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
        );
        assert_eq!(binding[1][..2], ["flannel", "ClusterRole/flannel"]);
        assert_eq!(binding[1].last().unwrap(), "kube-flannel/flannel");
        let accounts = rows(&admin.ok(&["get", "sa", "-n", "kube-flannel"]).await);
        assert_eq!(accounts[0], ["NAME", "SECRETS", "AGE"]);
        assert_eq!(accounts[1][..2], ["flannel", "0"]);

        // The flannel account, with a token kubectl itself asked the TokenRequest API for.
        let token = admin
            .ok(&["create", "token", "flannel", "-n", "kube-flannel"])
            .await;
        let sa = Kubectl::new(&srv, &pki, token.trim());
        assert_eq!(rows(&sa.ok(&["get", "nodes"]).await)[1][0], "n1");
        assert_eq!(
            sa.fails(&["get", "pods", "-A"]).await,
            format!(
                "Error from server (Forbidden): pods is forbidden: User \"{FLANNEL_USER}\" cannot list resource \"pods\" in API group \"\" at the cluster scope\n"
            )
        );
        assert_eq!(
            sa.fails(&["get", "configmap", "kube-flannel-cfg", "-n", "kube-flannel"])
                .await,
            format!(
                "Error from server (Forbidden): configmaps \"kube-flannel-cfg\" is forbidden: User \"{FLANNEL_USER}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"kube-flannel\"\n"
            )
        );
        // kubectl auth whoami / can-i (both send protobuf reviews).
        let me = rows(&admin.ok(&["auth", "whoami"]).await);
        assert_eq!(me[1], ["Username", "kubernetes-admin"]);
        assert_eq!(
            me[3],
            ["Groups", "[system:masters", "system:authenticated]"]
        );
        let me = rows(&sa.ok(&["auth", "whoami"]).await);
        assert_eq!(me[1], ["Username", FLANNEL_USER]);
        assert_eq!(sa.ok(&["auth", "can-i", "list", "nodes"]).await, "yes\n");
        assert_eq!(
            sa.ok(&["auth", "can-i", "patch", "nodes", "--subresource=status"])
                .await,
            "yes\n"
        );
        let out = sa.run(&["auth", "can-i", "list", "pods", "-A"]).await;
        assert_eq!((out.status.code(), out.stdout), (Some(1), b"no\n".to_vec()));
        let out = sa.run(&["auth", "can-i", "patch", "nodes"]).await;
        assert_eq!((out.status.code(), out.stdout), (Some(1), b"no\n".to_vec()));
        assert_eq!(
            admin.ok(&["auth", "can-i", "delete", "nodes"]).await,
            "yes\n"
        );

        let stranger = Kubectl::new(&srv, &pki, "wrong");
        let err = stranger.fails(&["get", "nodes"]).await;
        assert!(
            err.ends_with("error: You must be logged in to the server (the server has asked for the client to provide credentials)\n"),
            "{err}"
        );
    })
}

/// The binary with `args`, killed on drop.
fn emulator_binary(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flannel-kube-emu"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[test]
fn the_binary_takes_kube_apiservers_flags_and_names_bad_files() -> Result<(), NetnsError> {
    run_in_netns(NetnsTarget::Fresh, || async {
        loopback_up().await;
        let pki = pki();
        let dir = tempfile::Builder::new()
            .prefix("flrs-emu-auth-")
            .tempdir()
            .unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("server.crt"), &pki.cert_pem).unwrap();
        std::fs::write(path("server.key"), &pki.key_pem).unwrap();
        std::fs::write(
            path("tokens.csv"),
            format!("{ADMIN},kubernetes-admin,kubernetes-admin,\"system:masters\"\n"),
        )
        .unwrap();
        std::fs::write(path("bad.csv"), "only,two\n").unwrap();
        let (cert, key, tokens, addr_file) = (
            path("server.crt"),
            path("server.key"),
            path("tokens.csv"),
            path("addr"),
        );
        let mut child = emulator_binary(&[
            "--listen=127.0.0.1:0",
            "--address-file",
            &addr_file,
            "--tls-cert-file",
            &cert,
            "--tls-private-key-file",
            &key,
            "--token-auth-file",
            &tokens,
            "--anonymous-auth=false",
            "--authorization-mode",
            "RBAC",
        ])
        .spawn()
        .unwrap();
        let mut addr = None;
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                addr = Some(text.trim().parse::<SocketAddr>().unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr = addr.expect("the emulator wrote its address within 10 s");
        assert_eq!(
            raw(addr, &pki, "GET", "/api/v1/nodes", None, "").await,
            (401, unauthorized())
        );
        let (code, list) = raw(
            addr,
            &pki,
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            Some(ADMIN),
            "",
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["metadata"]["name"] == "cluster-admin")
        );
        child.start_kill().unwrap();
        child.wait().await.unwrap();

        // Bad files stop it at once, named.
        for (args, want) in [
            (
                vec![
                    "--tls-cert-file",
                    cert.as_str(),
                    "--tls-private-key-file",
                    "/nonexistent/k.pem",
                ],
                "reading /nonexistent/k.pem".to_string(),
            ),
            (
                vec![
                    "--tls-cert-file",
                    key.as_str(),
                    "--tls-private-key-file",
                    key.as_str(),
                ],
                format!("{key}: no certificate found in PEM"),
            ),
            (
                vec!["--token-auth-file", &path("bad.csv")],
                format!(
                    "token file '{}' must have at least 3 columns (token, user name, user uid), found 2",
                    path("bad.csv")
                ),
            ),
        ] {
            let out = tokio::time::timeout(TIMEOUT, emulator_binary(&args).output())
                .await
                .unwrap()
                .unwrap();
            assert!(!out.status.success(), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&want), "{args:?}: {err}");
        }
    })
}
