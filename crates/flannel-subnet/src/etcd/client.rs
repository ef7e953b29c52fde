//! Connecting to etcd the way flanneld's `--etcd-*` flags describe (upstream `newEtcdClient`,
//! `newTlsConfig`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::SubnetError;

use super::EtcdConfig;

/// How long opening a TCP (and TLS) connection to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 keep-alive: a ping every 10 s, a connection without an answer for 5 s is dead.
///
/// Without it a watch on a connection whose peer vanished (host down, partition) would wait
/// forever; with it the stream fails and is resumed. etcd's default
/// `--grpc-keepalive-min-time` is 5 s, so 10 s pings are never refused as too frequent.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Upstream's warning when no client certificate is configured.
pub const INSECURE_WARNING: &str =
    "no certificate provided: connecting to etcd with http. This is insecure";

/// How a client will talk to etcd, decided once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Endpoints as given (trimmed, empty entries dropped).
    pub endpoints: Vec<String>,
    /// Whether TLS options are passed to the client.
    pub tls: bool,
    /// Whether a client certificate is presented.
    pub client_cert: bool,
    /// Warnings to log once when the manager is created.
    pub warnings: Vec<String>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.trim().is_empty())
}

fn non_empty_path(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Decides TLS and endpoints from the config, without touching files or the network.
///
/// Upstream uses a client certificate only when both key and cert files are given (else it
/// warns that the connection is insecure) and the CA file only together with them. Go's etcd
/// client then picks plain or TLS transport from the endpoints' scheme, verifying `https://`
/// endpoints against the system roots when no CA is configured. The rules here:
/// * key and cert given: TLS with that client certificate, the CA file if given, else the
///   system trust store;
/// * otherwise upstream's warning, and TLS (server verification only, same roots) only for
///   `https://` endpoints;
/// * `http://` endpoints never use TLS; mixing them with `https://` ones when TLS is used is an
///   error (one client carries one transport), and certificates with only `http://` endpoints
///   are ignored with a warning.
pub fn plan(config: &EtcdConfig) -> Result<Plan, SubnetError> {
    let endpoints: Vec<String> = config
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(SubnetError::datastore(
            "connecting to etcd",
            "no etcd endpoints given",
        ));
    }
    let client_cert =
        non_empty_path(&config.keyfile).is_some() && non_empty_path(&config.certfile).is_some();
    let mut warnings = Vec::new();
    if !client_cert {
        warnings.push(INSECURE_WARNING.to_string());
    }
    let http = endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let tls = if client_cert {
        if http == endpoints.len() {
            warnings.push(
                "etcd client certificate given but every endpoint is http://: connecting without TLS"
                    .to_string(),
            );
            false
        } else {
            true
        }
    } else {
        https > 0
    };
    if tls && http > 0 {
        return Err(SubnetError::datastore(
            "connecting to etcd",
            format!(
                "endpoints {} mix http:// and https:// (or bare) URLs while TLS is in use",
                endpoints.join(",")
            ),
        ));
    }
    Ok(Plan {
        endpoints,
        tls,
        client_cert: client_cert && tls,
        warnings,
    })
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, SubnetError> {
    std::fs::read(path).map_err(|e| {
        SubnetError::datastore(format!("reading the etcd {what} {}", path.display()), e)
    })
}

/// The TLS settings for a plan. rustls speaks only TLS 1.2 and 1.3, which is upstream's
/// `MinVersion: tls.VersionTLS12`.
fn tls_options(config: &EtcdConfig, plan: &Plan) -> Result<TlsOptions, SubnetError> {
    let mut tls = TlsOptions::new();
    if plan.client_cert
        && let (Some(cert), Some(key)) = (
            non_empty_path(&config.certfile),
            non_empty_path(&config.keyfile),
        )
    {
        tls = tls.identity(Identity::from_pem(
            read("certificate file", cert)?,
            read("key file", key)?,
        ));
    }
    match non_empty_path(&config.cafile) {
        Some(ca) => Ok(tls.ca_certificate(Certificate::from_pem(read("CA file", ca)?))),
        None => Ok(tls.with_native_roots()),
    }
}

/// Connects a client. Without credentials this does not reach the server yet (connections are
/// made on first use and re-made after failures); with a username it authenticates at once.
///
/// `require_leader` makes etcd fail requests (and cancel watches) on a member that lost its
/// leader, as upstream's watches ask with `WithRequireLeader`, so a watch on a partitioned
/// member is resumed elsewhere instead of going silent.
pub async fn connect(
    config: &EtcdConfig,
    plan: &Plan,
    require_leader: bool,
) -> Result<Client, SubnetError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_require_leader(require_leader);
    if plan.tls {
        opts = opts.with_tls(tls_options(config, plan)?);
    }
    if let Some(user) = non_empty(&config.username) {
        // etcd's simple tokens expire (5 min by default): refresh them instead of failing.
        opts = opts
            .with_user(user, config.password.clone().unwrap_or_default())
            .with_auto_token_refresh(true);
    }
    let endpoints = plan.endpoints.join(",");
    // A login failure must name the user: "authentication failed, invalid user ID or
    // password" alone does not say which of several configured users was refused.
    let as_user = non_empty(&config.username)
        .map(|u| format!(" as user {u:?}"))
        .unwrap_or_default();
    super::registry::rpc(
        || format!("connecting to etcd at {endpoints}{as_user}"),
        Client::connect(plan.endpoints.clone(), Some(opts)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig::new(endpoints.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn without_certificates_upstream_warns_and_http_stays_plain() {
        let p = plan(&cfg(&[
            "http://127.0.0.1:2379",
            " ",
            "http://127.0.0.1:4001",
        ]))
        .unwrap();
        assert_eq!(
            p.endpoints,
            ["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
        );
        assert!(!p.tls && !p.client_cert);
        assert_eq!(p.warnings, [INSECURE_WARNING]);
    }

    #[test]
    fn certificate_needs_both_key_and_cert() {
        let mut c = cfg(&["https://10.0.0.1:2379"]);
        c.certfile = Some("/etc/etcd/client.pem".into());
        let p = plan(&c).unwrap();
        assert!(
            p.tls,
            "https endpoints verify the server even without a client cert"
        );
        assert!(!p.client_cert);
        assert_eq!(p.warnings, [INSECURE_WARNING]);
        c.keyfile = Some("/etc/etcd/client-key.pem".into());
        let p = plan(&c).unwrap();
        assert!(p.tls && p.client_cert);
        assert!(p.warnings.is_empty());
        // Bare host:port endpoints follow the TLS decision.
        c.endpoints = vec!["10.0.0.1:2379".into()];
        assert!(plan(&c).unwrap().tls);
    }

    #[test]
    fn certificates_with_only_http_endpoints_are_ignored_and_mixing_is_refused() {
        let mut c = cfg(&["http://10.0.0.1:2379"]);
        c.certfile = Some("c".into());
        c.keyfile = Some("k".into());
        let p = plan(&c).unwrap();
        assert!(!p.tls && !p.client_cert);
        assert_eq!(p.warnings.len(), 1);
        c.endpoints.push("https://10.0.0.2:2379".into());
        assert!(matches!(plan(&c), Err(SubnetError::Datastore { .. })));
        assert!(plan(&cfg(&[])).is_err());
    }

    #[test]
    fn missing_tls_files_are_reported_with_their_path() {
        let mut c = cfg(&["https://10.0.0.1:2379"]);
        c.certfile = Some("/nonexistent/cert.pem".into());
        c.keyfile = Some("/nonexistent/key.pem".into());
        let p = plan(&c).unwrap();
        let e = tls_options(&c, &p).unwrap_err().to_string();
        assert!(
            e.starts_with("reading the etcd certificate file /nonexistent/cert.pem: "),
            "{e}"
        );
    }
}
