//! Checking etcd TLS before trusting the gRPC client with it, so every TLS problem an operator
//! can hit gets one message naming the file or the endpoint and what is wrong.
//!
//! Under tonic a TLS failure surfaces as a bare `transport error` on every request, and a
//! server that never asks for our client certificate (etcd without `--client-cert-auth`, so
//! anyone can rewrite the network config) does not surface at all. So at start-up:
//! * [`Material::load`] reads `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile` and
//!   checks them (readable, PEM, a key that belongs to the certificate, a client certificate
//!   inside its validity period). Retrying cannot fix a file, so these errors are fatal, as
//!   upstream's `newTlsConfig` failing is.
//! * [`probe`] makes one TLS handshake with each endpoint using the same material, with ALPN
//!   `h2` and an HTTP/2 preface so that a server refusing our certificate after a TLS 1.3
//!   handshake says so, and records whether the server asked for a client certificate.
//!   [`describe`] turns rustls's verdict into the operator's message. The server side can be
//!   fixed while we wait, so the caller retries with backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, CertificateError, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::EtcdConfig;
use super::client::Plan;

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first. A
/// server that accepted our certificate answers with its own SETTINGS; one that refused it
/// answers with a TLS alert.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A problem with the TLS files or with a server's TLS, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    /// A file cannot be read.
    #[error("cannot read the etcd {what} {}: {source}", .path.display())]
    Read {
        /// Which flag's file (`CA file (--etcd-cafile)`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds nothing usable of the expected kind.
    #[error("the etcd {what} {} contains no {expected}", .path.display())]
    NoPem {
        /// Which flag's file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        expected: &'static str,
    },
    /// rustls refused a certificate of the CA file or the key of the key file.
    #[error("the etcd {what} {} is not usable: {source}", .path.display())]
    Unusable {
        /// Which flag's file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The key file's key is not the certificate's.
    #[error(
        "the etcd key file {} (--etcd-keyfile) does not belong to the certificate in {} (--etcd-certfile): their public keys differ",
        .key.display(), .cert.display()
    )]
    KeyMismatch {
        /// `--etcd-keyfile`.
        key: PathBuf,
        /// `--etcd-certfile`.
        cert: PathBuf,
    },
    /// A request failed because its TLS handshake did (`tls::cause`).
    #[error("TLS: {problem}")]
    Handshake {
        /// What is wrong, as `tls::describe` says it.
        problem: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The client certificate is outside its validity period, so every server will refuse it.
    #[error("the etcd client certificate {} (--etcd-certfile) {problem}", .path.display())]
    ClientCertValidity {
        /// `--etcd-certfile`.
        path: PathBuf,
        /// `expired at ... (now ...)` or `is not valid before ...`.
        problem: String,
    },
}

/// `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`, read and checked.
#[derive(Debug)]
pub struct Material {
    /// `--etcd-cafile`, when given (without it the server is verified against the system
    /// trust store by the client and not probed here).
    pub ca_file: Option<PathBuf>,
    roots: Option<Arc<RootCertStore>>,
    /// `--etcd-certfile`, when a client certificate is used.
    pub cert_file: Option<PathBuf>,
    client: Option<Arc<CertifiedKey>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsProblem> {
    std::fs::read(path).map_err(|source| TlsProblem::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let pem = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsProblem::NoPem {
            what,
            path: path.to_owned(),
            expected: "PEM certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

/// A time for messages: RFC 3339 in UTC, as `openssl x509 -enddate` readers expect.
fn show_time(t: UnixTime) -> String {
    i64::try_from(t.as_secs())
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("{} (UNIX)", t.as_secs()), |ts| ts.to_string())
}

const CA_FILE: &str = "CA file (--etcd-cafile)";
const CERT_FILE: &str = "certificate file (--etcd-certfile)";
const KEY_FILE: &str = "key file (--etcd-keyfile)";

impl Material {
    /// Reads and checks the TLS files of `config` if `plan` uses TLS (`None` otherwise).
    pub fn load(config: &EtcdConfig, plan: &Plan) -> Result<Option<Material>, TlsProblem> {
        if !plan.tls {
            return Ok(None);
        }
        let given = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let ca_file = given(&config.cafile);
        let roots = match &ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(CA_FILE, path)? {
                    roots.add(cert).map_err(|source| TlsProblem::Unusable {
                        what: CA_FILE,
                        path: path.clone(),
                        source,
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let (cert_file, client) = match (given(&config.certfile), given(&config.keyfile)) {
            (Some(cert), Some(key)) if plan.client_cert => {
                let client = client_key(&cert, &key)?;
                check_validity(&cert, &client, roots.as_deref(), SystemTime::now())?;
                (Some(cert), Some(Arc::new(client)))
            }
            _ => (None, None),
        };
        Ok(Some(Material {
            ca_file,
            roots,
            cert_file,
            client,
        }))
    }
}

/// The client certificate chain and its signing key, checked to belong together.
fn client_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsProblem> {
    let chain = certificates(CERT_FILE, cert)?;
    let pem = read(KEY_FILE, key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsProblem::NoPem {
        what: KEY_FILE,
        path: key.to_owned(),
        expected: "PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsProblem::Unusable {
            what: KEY_FILE,
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // Unknown: the key type cannot export its public key; the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(TlsProblem::KeyMismatch {
            key: key.to_owned(),
            cert: cert.to_owned(),
        }),
    }
}

/// Refuses a client certificate that is expired or not yet valid at `now`. webpki checks the
/// validity period before it builds the chain, so this works whether or not the certificate
/// chains to `roots` (client certificates may come from another CA than the server's).
fn check_validity(
    path: &Path,
    client: &CertifiedKey,
    roots: Option<&RootCertStore>,
    now: SystemTime,
) -> Result<(), TlsProblem> {
    let Some(leaf) = client.cert.first() else {
        return Ok(());
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
        return Ok(());
    };
    let anchors = roots.map_or(&[][..], |r| &r.roots[..]);
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let verdict = ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        anchors,
        &client.cert[1..],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    );
    let problem = match verdict {
        Err(webpki::Error::CertExpired { time, not_after }) => format!(
            "expired at {} (it is now {}): etcd will refuse it; issue a new one",
            show_time(not_after),
            show_time(time)
        ),
        Err(webpki::Error::CertNotValidYet { time, not_before }) => format!(
            "is not valid before {} (it is now {}): check this host's clock",
            show_time(not_before),
            show_time(time)
        ),
        _ => return Ok(()),
    };
    Err(TlsProblem::ClientCertValidity {
        path: path.to_owned(),
        problem,
    })
}

/// What a successful [`probe`] learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// The server sent a CertificateRequest (etcd runs with `--client-cert-auth`).
    pub asked_for_client_cert: bool,
}

/// Hands out the client certificate and records that the server asked for one.
#[derive(Debug)]
struct Recorder {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl ResolvesClientCert for Recorder {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// `host:port` and the TLS server name of an endpoint (`https://10.0.0.1:2379`, `host:2379`,
/// `https://[fd00::1]:2379/`).
fn authority(endpoint: &str) -> Option<(String, String)> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    let authority = rest.split('/').next()?;
    let (host, _port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (authority.to_string(), host.to_string()))
}

/// One TLS handshake with `endpoint` using `material` (which must have a CA file), bounded by
/// `timeout`. The error is the operator's message ([`describe`]).
pub async fn probe(
    endpoint: &str,
    material: &Material,
    timeout: Duration,
) -> Result<Probed, String> {
    match tokio::time::timeout(timeout, probe_inner(endpoint, material)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no TLS answer from etcd at {endpoint} within {timeout:?}"
        )),
    }
}

async fn probe_inner(endpoint: &str, material: &Material) -> Result<Probed, String> {
    let Some((authority, host)) = authority(endpoint) else {
        return Err(format!(
            "etcd endpoint {endpoint} is not host:port or a URL"
        ));
    };
    let name = ServerName::try_from(host)
        .map_err(|e| format!("etcd endpoint {endpoint}: bad server name: {e}"))?;
    let roots = material
        .roots
        .clone()
        .ok_or_else(|| format!("probing {endpoint} needs --etcd-cafile"))?;
    let recorder = Arc::new(Recorder {
        key: material.client.clone(),
        asked: AtomicBool::new(false),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_cert_resolver(recorder.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("cannot connect to etcd at {endpoint}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let why = |e: std::io::Error| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe(tls, endpoint, material),
        None => format!("TLS with etcd at {endpoint} failed: {e}"),
    };
    let mut tls = connector.connect(name, tcp).await.map_err(why)?;
    tls.write_all(H2_PREFACE).await.map_err(why)?;
    tls.flush().await.map_err(why)?;
    let mut first = [0u8; 9];
    match tls.read(&mut first).await {
        Ok(n) if n > 0 => Ok(Probed {
            asked_for_client_cert: recorder.asked.load(Ordering::Relaxed),
        }),
        Ok(_) => Err(format!(
            "etcd at {endpoint} closed the connection right after the TLS handshake"
        )),
        Err(e) => Err(why(e)),
    }
}

/// The operator's message for a handshake with `endpoint` that rustls failed.
pub fn describe(err: &rustls::Error, endpoint: &str, material: &Material) -> String {
    let ca = material.ca_file.as_deref().map_or_else(
        || "the system trust store".to_string(),
        |p| format!("{} (--etcd-cafile)", p.display()),
    );
    let cert = material.cert_file.as_deref().map_or_else(
        || "none configured".to_string(),
        |p| p.display().to_string(),
    );
    describe_for(err, &format!("etcd at {endpoint}"), &ca, &cert)
}

/// [`describe`] for `who` (`etcd at https://...`), the CA and the client certificate as they
/// should appear in the message.
fn describe_for(err: &rustls::Error, who: &str, ca: &str, cert: &str) -> String {
    let server = format!("the server certificate of {who}");
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "{server} is signed by an unknown authority (x509: certificate signed by unknown authority): it does not chain to the CA in {ca}"
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "{server} is not valid for {}: it is valid for {}",
                expected.to_str(),
                names(presented)
            ),
            CertificateError::NotValidForName => {
                format!("{server} is not valid for the name or address in the endpoint")
            }
            CertificateError::ExpiredContext { time, not_after } => format!(
                "{server} expired at {} (it is now {})",
                show_time(*not_after),
                show_time(*time)
            ),
            CertificateError::Expired => format!("{server} has expired"),
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "{server} is not valid before {} (it is now {})",
                show_time(*not_before),
                show_time(*time)
            ),
            other => format!("{server} was refused: {other}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => format!(
                "{who} requires a client certificate (--client-cert-auth) and none was sent: set --etcd-certfile and --etcd-keyfile"
            ),
            AlertDescription::CertificateExpired => format!(
                "{who} refused our client certificate {cert}: it says the certificate has expired"
            ),
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate => format!(
                "{who} refused our client certificate {cert} (TLS alert {alert:?}): is it signed by a CA in etcd's --trusted-ca-file, and does it allow client authentication?"
            ),
            other => format!("{who} ended the TLS handshake with alert {other:?}"),
        },
        other => format!("TLS handshake with {who} failed: {other}"),
    }
}

/// The rustls error under an etcd client error, when a TLS handshake is what failed: tonic
/// keeps it as an `io::Error` at the end of the status's source chain.
pub fn rustls_cause(err: &etcd_client::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = match err {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(e) => Some(e),
        _ => None,
    };
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// An etcd client error as a datastore cause: a failed TLS handshake (after start-up, e.g. a
/// server certificate replaced by a bad one) as [`TlsProblem::Handshake`] with the operator's
/// message, anything else as the client's error.
pub fn cause(err: etcd_client::Error) -> crate::DatastoreCause {
    match rustls_cause(&err)
        .map(|tls| describe_for(tls, "etcd", "--etcd-cafile", "(--etcd-certfile)"))
    {
        Some(problem) => crate::DatastoreCause::Tls(Box::new(TlsProblem::Handshake {
            problem,
            source: err,
        })),
        None => crate::DatastoreCause::Etcd(err),
    }
}

/// rustls's presented names (`DnsName("a")`, `IpAddress(10.0.0.1)`) as an operator writes
/// them (`a, 10.0.0.1`).
fn names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no names at all (no subjectAltName)".to_string();
    }
    presented
        .iter()
        .map(|n| {
            n.split_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .unwrap_or(n)
                .trim_matches('"')
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_lab::pki::{Ca, CertSpec, Issued};
    use std::net::IpAddr;

    struct Fixture {
        dir: tempfile::TempDir,
        ca: Ca,
        client: Issued,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("pki"), "test CA").unwrap();
        let client = ca
            .issue(dir.path(), "client", &CertSpec::client("flanneld", ["x"]))
            .unwrap();
        Fixture { dir, ca, client }
    }

    fn config(ca: &Path, client: &Issued) -> EtcdConfig {
        let mut c = EtcdConfig::new(vec!["https://127.0.0.1:2379".into()]);
        c.cafile = Some(ca.to_owned());
        c.certfile = Some(client.cert.clone());
        c.keyfile = Some(client.key.clone());
        c
    }

    fn load(c: &EtcdConfig) -> Result<Option<Material>, TlsProblem> {
        Material::load(c, &super::super::client::plan(c).unwrap())
    }

    fn load_err(c: &EtcdConfig) -> String {
        load(c).unwrap_err().to_string()
    }

    #[test]
    fn good_files_load_and_plain_http_loads_nothing() {
        let f = fixture();
        let m = load(&config(f.ca.cert_file(), &f.client)).unwrap().unwrap();
        assert_eq!(m.ca_file.as_deref(), Some(f.ca.cert_file()));
        assert_eq!(m.cert_file.as_deref(), Some(f.client.cert.as_path()));
        assert!(m.client.is_some() && m.roots.is_some());
        let plain = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]);
        assert!(load(&plain).unwrap().is_none());
    }

    #[test]
    fn missing_and_unreadable_files_name_the_file_and_the_os_error() {
        let f = fixture();
        let mut c = config(f.ca.cert_file(), &f.client);
        c.keyfile = Some(f.dir.path().join("nope.key"));
        let e = load_err(&c);
        assert_eq!(
            e,
            format!(
                "cannot read the etcd key file (--etcd-keyfile) {}: No such file or directory (os error 2)",
                f.dir.path().join("nope.key").display()
            )
        );
        let mut c = config(f.ca.cert_file(), &f.client);
        c.cafile = Some(f.dir.path().to_owned());
        let e = load_err(&c);
        assert!(
            e.starts_with("cannot read the etcd CA file (--etcd-cafile) ")
                && e.ends_with("Is a directory (os error 21)"),
            "{e}"
        );
    }

    #[test]
    fn files_without_pem_or_without_a_key_are_refused() {
        let f = fixture();
        let junk = f.dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let mut c = config(f.ca.cert_file(), &f.client);
        c.certfile = Some(junk.clone());
        assert_eq!(
            load_err(&c),
            format!(
                "the etcd certificate file (--etcd-certfile) {} contains no PEM certificate (-----BEGIN CERTIFICATE-----)",
                junk.display()
            )
        );
        let mut c = config(f.ca.cert_file(), &f.client);
        c.cafile = Some(junk.clone());
        assert!(load_err(&c).contains("CA file (--etcd-cafile)"));
        // A certificate where the key should be.
        let mut c = config(f.ca.cert_file(), &f.client);
        c.keyfile = Some(f.client.cert.clone());
        assert_eq!(
            load_err(&c),
            format!(
                "the etcd key file (--etcd-keyfile) {} contains no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
                f.client.cert.display()
            )
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let f = fixture();
        let other =
            f.ca.issue(f.dir.path(), "other", &CertSpec::client("other", ["x"]))
                .unwrap();
        let mut c = config(f.ca.cert_file(), &f.client);
        c.keyfile = Some(other.key.clone());
        assert_eq!(
            load_err(&c),
            format!(
                "the etcd key file {} (--etcd-keyfile) does not belong to the certificate in {} (--etcd-certfile): their public keys differ",
                other.key.display(),
                f.client.cert.display()
            )
        );
    }

    #[test]
    fn an_expired_or_future_client_certificate_says_when() {
        let f = fixture();
        let day = Duration::from_secs(86400);
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut spec = CertSpec::client("old", ["x"]);
        spec.not_before = Some(not_after - day);
        spec.not_after = Some(not_after);
        let old = f.ca.issue(f.dir.path(), "old", &spec).unwrap();
        let e = load_err(&config(f.ca.cert_file(), &old));
        let want = format!(
            "the etcd client certificate {} (--etcd-certfile) expired at 2023-11-14T22:13:20Z (it is now ",
            old.cert.display()
        );
        assert!(e.starts_with(&want), "{e}");
        assert!(
            e.ends_with("): etcd will refuse it; issue a new one"),
            "{e}"
        );
        // Also from another CA than --etcd-cafile: validity is checked before the chain.
        let other = Ca::create(&f.dir.path().join("other"), "other CA").unwrap();
        let foreign = other.issue(f.dir.path(), "foreign", &spec).unwrap();
        assert!(load_err(&config(f.ca.cert_file(), &foreign)).contains("expired at 2023-11-14"));
        let mut spec = CertSpec::client("future", ["x"]);
        spec.not_before = Some(SystemTime::now() + day);
        let future = f.ca.issue(f.dir.path(), "future", &spec).unwrap();
        let e = load_err(&config(f.ca.cert_file(), &future));
        assert!(
            e.contains("is not valid before") && e.contains("check this host's clock"),
            "{e}"
        );
    }

    fn material(f: &Fixture) -> Material {
        load(&config(f.ca.cert_file(), &f.client)).unwrap().unwrap()
    }

    #[test]
    fn server_certificate_errors_name_the_endpoint_and_the_problem() {
        let f = fixture();
        let m = material(&f);
        let ep = "https://198.18.0.254:2379";
        let ca = f.ca.cert_file().display();
        let cert = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            describe(&cert(CertificateError::UnknownIssuer), ep, &m),
            format!(
                "the server certificate of etcd at {ep} is signed by an unknown authority (x509: certificate signed by unknown authority): it does not chain to the CA in {ca} (--etcd-cafile)"
            )
        );
        let wrong_name = CertificateError::NotValidForNameContext {
            expected: ServerName::IpAddress(IpAddr::from([198, 18, 0, 254]).into()),
            presented: vec![
                "DnsName(\"etcd.other\")".into(),
                "IpAddress(10.0.0.9)".into(),
            ],
        };
        assert_eq!(
            describe(&cert(wrong_name), ep, &m),
            format!(
                "the server certificate of etcd at {ep} is not valid for 198.18.0.254: it is valid for etcd.other, 10.0.0.9"
            )
        );
        let expired = CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(1_700_086_400)),
            not_after: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
        };
        assert_eq!(
            describe(&cert(expired), ep, &m),
            format!(
                "the server certificate of etcd at {ep} expired at 2023-11-14T22:13:20Z (it is now 2023-11-15T22:13:20Z)"
            )
        );
    }

    #[test]
    fn refusals_of_our_certificate_name_the_endpoint_and_the_file() {
        let f = fixture();
        let m = material(&f);
        let ep = "https://10.0.0.1:2379";
        let alert = |a| describe(&rustls::Error::AlertReceived(a), ep, &m);
        assert_eq!(
            alert(AlertDescription::BadCertificate),
            format!(
                "etcd at {ep} refused our client certificate {} (TLS alert BadCertificate): is it signed by a CA in etcd's --trusted-ca-file, and does it allow client authentication?",
                f.client.cert.display()
            )
        );
        assert!(
            alert(AlertDescription::CertificateRequired).contains("requires a client certificate")
        );
        assert!(
            alert(AlertDescription::CertificateExpired)
                .contains("it says the certificate has expired")
        );
    }

    #[test]
    fn request_errors_from_a_failed_handshake_become_tls_problems() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let c = cause(etcd_client::Error::IoError(io));
        assert!(matches!(c, crate::DatastoreCause::Tls(_)), "{c:?}");
        assert_eq!(
            c.to_string(),
            "TLS: the server certificate of etcd is signed by an unknown authority (x509: certificate signed by unknown authority): it does not chain to the CA in --etcd-cafile"
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let c = cause(etcd_client::Error::IoError(plain));
        assert!(matches!(c, crate::DatastoreCause::Etcd(_)), "{c:?}");
        let c = cause(etcd_client::Error::WatchError("x".into()));
        assert!(matches!(c, crate::DatastoreCause::Etcd(_)), "{c:?}");
    }

    #[test]
    fn endpoints_split_into_authority_and_server_name() {
        assert_eq!(
            authority("https://10.0.0.1:2379"),
            Some(("10.0.0.1:2379".into(), "10.0.0.1".into()))
        );
        assert_eq!(
            authority("https://[fd00::1]:2379/"),
            Some(("[fd00::1]:2379".into(), "fd00::1".into()))
        );
        assert_eq!(
            authority("etcd.local:2379"),
            Some(("etcd.local:2379".into(), "etcd.local".into()))
        );
        assert_eq!(authority("https://nohost"), None);
    }
}
