//! The production-like lab's API security: the emulator serves HTTPS with a certificate from
//! the lab's CA, authenticates bearer tokens and enforces RBAC; flanneld reaches it as the
//! kube-flannel DaemonSet does, with in-cluster config and its ServiceAccount's token.
//!
//! Laid out in the lab directory as kubeadm lays out `/etc/kubernetes`:
//! * `pki/ca.crt`, `pki/apiserver.crt` and `.key`: the lab's CA (shared with etcd's TLS) and
//!   the emulator's serving certificate, valid for the underlay address it listens on and the
//!   in-cluster names (`kubernetes.default.svc`, ...);
//! * `kube-tokens.csv`: the emulator's `--token-auth-file`, holding the administrator's token
//!   (user `kubernetes-admin`, group `system:masters`, as admin.conf's client certificate);
//! * `admin.token`: that token, for the lab's own client and `admin.conf`;
//! * per node, `serviceaccount/{token,ca.crt,namespace}`: what the kubelet projects into the
//!   pod at `/var/run/secrets/kubernetes.io/serviceaccount`; the token comes from the
//!   TokenRequest API for `kube-flannel/flannel`, the ServiceAccount of
//!   `deploy/kube-flannel.yml`, whose ClusterRole and binding the lab creates from the manifest.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::kube_client::KubeClient;
use crate::pki::{Ca, CertSpec};

/// The lab's PKI directory (CA, serving certificates), relative to the lab directory.
pub const PKI_DIR: &str = "pki";

/// The emulator's static token file (`--token-auth-file`), relative to the lab directory.
pub const TOKEN_AUTH_FILE: &str = "kube-tokens.csv";

/// The administrator's token, relative to the lab directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The administrator's user name (kubeadm's admin.conf user).
pub const ADMIN_USER: &str = "kubernetes-admin";

/// Where a pod sees its ServiceAccount's token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// [`SERVICE_ACCOUNT_DIR`] without the `/var/run` symlink: where a node's own file system
/// keeps it.
pub const SERVICE_ACCOUNT_RUN_DIR: &str = "/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount flanneld runs as (`deploy/kube-flannel.yml`).
pub const FLANNEL_NAMESPACE: &str = "kube-flannel";
/// See [`FLANNEL_NAMESPACE`].
pub const FLANNEL_SERVICE_ACCOUNT: &str = "flannel";

/// How long node tokens live: the lab has no kubelet to renew them, and a persistent lab may
/// stay up for days. Rotation ([`rotate_node_token`]) replaces them on demand.
const NODE_TOKEN_SECONDS: u64 = 365 * 24 * 3600;

/// The names the serving certificate is valid for besides the listen address: the in-cluster
/// names clients use, as kubeadm's apiserver certificate has them.
const API_DNS_NAMES: [&str; 6] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
    "flannel-lab-api",
];

/// The credentials of a lab's API: CA, serving certificate, the administrator's token.
#[derive(Debug, Clone)]
pub struct ApiCredentials {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    token_auth_file: PathBuf,
    admin_token: String,
}

impl ApiCredentials {
    /// Makes them in `lab_dir`: the CA (reused if etcd's TLS made it already), a serving
    /// certificate for `server_ip`, a random administrator token and the token file.
    pub fn create(lab_dir: &Path, server_ip: IpAddr) -> Result<ApiCredentials> {
        let pki = lab_dir.join(PKI_DIR);
        let ca = if pki.join("ca.crt").is_file() {
            Ca::load(&pki).map_err(pki_error)?
        } else {
            Ca::create(&pki, "flannel-lab-ca").map_err(pki_error)?
        };
        let ips = vec![server_ip, IpAddr::from([127, 0, 0, 1])];
        let dns = API_DNS_NAMES;
        let issued = ca
            .issue(
                &pki,
                "apiserver",
                &CertSpec::server("kube-apiserver", dns, ips),
            )
            .map_err(pki_error)?;
        let admin_token = random_token()?;
        let token_auth_file = lab_dir.join(TOKEN_AUTH_FILE);
        write_private(
            &token_auth_file,
            &format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )?;
        write_private(&lab_dir.join(ADMIN_TOKEN_FILE), &admin_token)?;
        Ok(ApiCredentials {
            ca_file: ca.cert_file().to_path_buf(),
            cert_file: issued.cert,
            key_file: issued.key,
            token_auth_file,
            admin_token,
        })
    }

    /// The credentials [`ApiCredentials::create`] left in `lab_dir` (for `flannel-lab`
    /// commands run against a lab that is up).
    pub fn load(lab_dir: &Path) -> Result<ApiCredentials> {
        let pki = lab_dir.join(PKI_DIR);
        let token_path = lab_dir.join(ADMIN_TOKEN_FILE);
        let admin_token = std::fs::read_to_string(&token_path)
            .map_err(|e| LabError::io(format!("reading {}", token_path.display()), e))?
            .trim()
            .to_string();
        Ok(ApiCredentials {
            ca_file: pki.join("ca.crt"),
            cert_file: pki.join("apiserver.crt"),
            key_file: pki.join("apiserver.key"),
            token_auth_file: lab_dir.join(TOKEN_AUTH_FILE),
            admin_token,
        })
    }

    /// The CA certificate clients verify the emulator with.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The administrator's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The emulator's flags: HTTPS only, static tokens, no anonymous requests (so a missing
    /// token is a 401, as the issue's operators expect from a locked-down API), RBAC.
    pub fn emulator_args(&self) -> Vec<String> {
        vec![
            format!("--tls-cert-file={}", self.cert_file.display()),
            format!("--tls-private-key-file={}", self.key_file.display()),
            format!("--token-auth-file={}", self.token_auth_file.display()),
            "--anonymous-auth=false".into(),
            "--authorization-mode=RBAC".into(),
        ]
    }

    /// A TLS client configuration trusting only the lab's CA.
    pub fn tls_client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let bad = |e: &dyn std::fmt::Display| {
            LabError::Invalid(format!("the lab CA {}: {e}", self.ca_file.display()))
        };
        for cert in CertificateDer::pem_file_iter(&self.ca_file).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Creates what `deploy/kube-flannel.yml` declares for flanneld's identity: the
/// ServiceAccount, the ClusterRole (with the NetworkPolicy enforcer's rules, as the chart
/// renders them with `netpol.enabled`, when `netpol`) and the ClusterRoleBinding.
pub fn create_flannel_rbac(client: &KubeClient, netpol: bool) -> Result<()> {
    let docs = crate::manifest::yaml_documents(crate::manifest::REPO_MANIFEST)
        .map_err(|e| LabError::Invalid(format!("reading deploy/kube-flannel.yml: {e}")))?;
    let mut created = 0;
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let collection = match kind.as_str() {
            "ServiceAccount" => {
                let ns = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(FLANNEL_NAMESPACE);
                format!("/api/v1/namespaces/{ns}/serviceaccounts")
            }
            "ClusterRole" => {
                if netpol && let Some(rules) = doc["rules"].as_array_mut() {
                    rules.extend(netpol_rules());
                }
                "/apis/rbac.authorization.k8s.io/v1/clusterroles".into()
            }
            "ClusterRoleBinding" => "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".into(),
            _ => continue,
        };
        client.expect_ok("POST", &collection, "application/json", Some(&doc))?;
        created += 1;
    }
    if created != 3 {
        return Err(LabError::Invalid(format!(
            "deploy/kube-flannel.yml declares {created} of its ServiceAccount, ClusterRole and ClusterRoleBinding"
        )));
    }
    Ok(())
}

/// The NetworkPolicy enforcer's rules (chart/kube-flannel/templates/rbac.yaml with
/// `netpol.enabled`).
fn netpol_rules() -> Vec<Value> {
    vec![
        json!({"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]}),
        json!({"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]}),
    ]
}

/// Asks the TokenRequest API for a token of flanneld's ServiceAccount, as the kubelet does
/// for a projected token volume.
pub fn request_node_token(client: &KubeClient) -> Result<String> {
    let path = format!(
        "/api/v1/namespaces/{FLANNEL_NAMESPACE}/serviceaccounts/{FLANNEL_SERVICE_ACCOUNT}/token"
    );
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": NODE_TOKEN_SECONDS}
    });
    let v = client.expect_ok("POST", &path, "application/json", Some(&body))?;
    v["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| LabError::Invalid(format!("POST {path}: no status.token in {v}")))
}

/// A node's projected ServiceAccount volume: [`SERVICE_ACCOUNT_DIR`] in the node's own file
/// system ([`crate::node_root`]), where its flanneld finds it through
/// [`crate::node_root::run_view_command`] (`/var/run` is `/run`), and which image mode
/// mounts into the containers.
pub fn service_account_dir(node_dir: &Path) -> PathBuf {
    crate::node_root::NodeRoot::new(node_dir).path(SERVICE_ACCOUNT_RUN_DIR)
}

/// Writes a node's ServiceAccount volume: a new token, the CA and the namespace. Each file
/// is replaced by a rename, as the kubelet's atomic writer replaces them, so a reader never
/// sees half a token.
pub fn write_service_account(
    node_dir: &Path,
    creds: &ApiCredentials,
    token: &str,
) -> Result<PathBuf> {
    let dir = service_account_dir(node_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let ca = std::fs::read_to_string(creds.ca_file())
        .map_err(|e| LabError::io(format!("reading {}", creds.ca_file().display()), e))?;
    for (name, text) in [
        ("ca.crt", ca.as_str()),
        ("namespace", FLANNEL_NAMESPACE),
        ("token", token),
    ] {
        write_private(&dir.join(name), text)?;
    }
    Ok(dir)
}

/// Rotates node `node_dir`'s token as a kubelet would when its old one is revoked: a new token
/// from the TokenRequest API replaces the file, then the old one is revoked (the emulator's
/// `/emu/revoke-token`). Returns the new token.
pub fn rotate_node_token(client: &KubeClient, node_dir: &Path) -> Result<String> {
    let path = service_account_dir(node_dir).join("token");
    let old = std::fs::read_to_string(&path)
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
    let new = request_node_token(client)?;
    write_private(&path, &new)?;
    revoke_token(client, old.trim())?;
    Ok(new)
}

/// Revokes `token` at once (the emulator's test control).
pub fn revoke_token(client: &KubeClient, token: &str) -> Result<()> {
    client.expect_ok(
        "POST",
        "/emu/revoke-token",
        "application/json",
        Some(&json!({ "token": token })),
    )?;
    Ok(())
}

/// A kubeconfig for `server` that authenticates with the token in `token_file` (re-read by
/// clients when it changes) and trusts `ca_file`: what `--kubeconfig-file` users hand
/// flanneld.
pub fn token_kubeconfig(server: &str, ca_file: &Path, user: &str, token_file: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\ncurrent-context: lab\nusers:\n- name: {user}\n  user:\n    tokenFile: {token}\n",
        ca = ca_file.display(),
        token = token_file.display()
    )
}

/// A PKI failure (it names the file) as the lab's error.
fn pki_error(e: crate::pki::PkiError) -> LabError {
    LabError::Invalid(e.to_string())
}

/// 24 random bytes as hex, from the kernel.
fn random_token() -> Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes a file only its owner may read (tokens, keys), replacing it atomically.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| LabError::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| LabError::io(format!("renaming to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 48);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_netpol_rules_are_the_charts() {
        let chart = include_str!("../../../chart/kube-flannel/templates/rbac.yaml");
        for r in netpol_rules() {
            for res in r["resources"].as_array().unwrap() {
                assert!(
                    chart.contains(&format!("  - {}\n", res.as_str().unwrap())),
                    "{res}"
                );
            }
        }
    }
}
