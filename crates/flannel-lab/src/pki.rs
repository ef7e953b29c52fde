//! The lab's PKI: one self-signed CA on disk and the certificates it issues.
//!
//! Production datastores speak TLS with client certificates (kubeadm's etcd, the API server), so
//! the lab must too, or those paths are never exercised. This module makes what `openssl`/`cfssl`
//! scripts make by hand, in-process and deterministic in shape: a CA under the lab directory
//! (`ca.crt`, `ca.key`), then server and client certificates signed by it, each written as
//! `<stem>.crt` (PEM certificate) and `<stem>.key` (PEM PKCS#8 private key, mode 0600). Keys are
//! ECDSA P-256, which etcd (Go's crypto/tls), etcdctl, rustls and kube-rs all accept.
//!
//! The CA stays on disk so a persistent lab (`flannel-lab up` then `down` from another process)
//! can [`Ca::load`] it and issue more certificates that chain to the same root. Its common name
//! is kept next to it in `ca.cn`: the issuer name in every certificate must equal the CA's subject
//! byte for byte, and rebuilding the name from the recorded text spares an X.509 parser.
//!
//! The module only needs `rcgen`, `time`, `tempfile` and `thiserror`, so it can move to another
//! crate (e.g. the API emulator's) unchanged.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// File name of the CA certificate inside the CA directory.
const CA_CERT: &str = "ca.crt";
/// File name of the CA private key inside the CA directory.
const CA_KEY: &str = "ca.key";
/// File name of the CA's recorded common name (see the module docs for why).
const CA_CN: &str = "ca.cn";
/// How long certificates are valid by default: long enough that a lab never sees one expire
/// unless a test asks for it with [`CertSpec::not_after`].
const DEFAULT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far in the past `notBefore` lies by default, so a peer whose clock lags a little (or a
/// certificate used within the same second it was made) is not "not yet valid".
const DEFAULT_BACKDATE: Duration = Duration::from_secs(3600);
/// The X.501 OID of organizationName, used for a second organization (see [`CertSpec`]).
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// What can go wrong making, loading or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file of the PKI failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("write", "read", "create directory").
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused a key, a name or the parameters of a certificate.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being made or read (e.g. "sign certificate etcd-server").
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The spec cannot be expressed in a certificate.
    #[error("invalid certificate spec for {stem}: {problem}")]
    Spec {
        /// The stem of the certificate being issued.
        stem: String,
        /// What is wrong with the spec.
        problem: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A self-signed certificate authority kept on disk.
///
/// Holding the key in memory lets one lab issue many certificates without re-reading it; the
/// files stay the source of truth for other processes (etcd's `--trusted-ca-file`, flanneld's
/// `--etcd-cafile`).
pub struct Ca {
    cert_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// The two files of an issued certificate, as the consumers' flags want them
/// (`--cert-file/--key-file`, `--etcd-certfile/--etcd-keyfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// PEM certificate (`<stem>.crt`).
    pub cert: PathBuf,
    /// PEM PKCS#8 private key (`<stem>.key`, mode 0600).
    pub key: PathBuf,
}

/// What to put in a certificate.
///
/// The fields are public so a test can make the unusual ones (expired, wrong name, no client
/// usage) that the error paths need; [`CertSpec::server`] and [`CertSpec::client`] make the
/// usual ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Subject CN. For client certificates etcd takes it as the user name when auth is on, and
    /// Kubernetes as the user.
    pub common_name: String,
    /// Subject O values (Kubernetes groups). At most two: rcgen keeps one value per attribute
    /// type, so the second is written under the same OID as a custom attribute.
    pub organizations: Vec<String>,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// IP subjectAltNames.
    pub ips: Vec<IpAddr>,
    /// Extended key usage serverAuth.
    pub server: bool,
    /// Extended key usage clientAuth.
    pub client: bool,
    /// `notBefore`; default one hour ago.
    pub not_before: Option<SystemTime>,
    /// `notAfter`; default ten years from now.
    pub not_after: Option<SystemTime>,
}

impl CertSpec {
    /// A TLS server certificate valid for `dns_names` and `ips` (the CN is informational: TLS
    /// clients check only the SANs).
    pub fn server(
        common_name: impl Into<String>,
        dns_names: impl IntoIterator<Item = impl Into<String>>,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        Self {
            common_name: common_name.into(),
            organizations: Vec::new(),
            dns_names: dns_names.into_iter().map(Into::into).collect(),
            ips: ips.into_iter().collect(),
            server: true,
            client: false,
            not_before: None,
            not_after: None,
        }
    }

    /// A TLS client certificate for the identity `common_name` in the groups `organizations`.
    pub fn client(
        common_name: impl Into<String>,
        organizations: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            common_name: common_name.into(),
            organizations: organizations.into_iter().map(Into::into).collect(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            server: false,
            client: true,
            not_before: None,
            not_after: None,
        }
    }
}

impl Ca {
    /// Makes a new CA in `dir` (created if missing): `ca.crt`, `ca.key` (0600) and `ca.cn`.
    /// Existing files are replaced, so certificates issued by an earlier CA there stop verifying.
    pub fn create(dir: &Path, common_name: &str) -> Result<Ca> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })?;
        let key = KeyPair::generate().map_err(|source| PkiError::Rcgen {
            what: "generate the CA key".into(),
            source,
        })?;
        let params = ca_params(common_name);
        let now = SystemTime::now();
        let mut cert_params = params.clone();
        cert_params.not_before = time::OffsetDateTime::from(now - DEFAULT_BACKDATE);
        cert_params.not_after = time::OffsetDateTime::from(now + DEFAULT_VALIDITY);
        let cert = cert_params
            .self_signed(&key)
            .map_err(|source| PkiError::Rcgen {
                what: format!("self-sign the CA certificate {common_name}"),
                source,
            })?;
        write_atomic(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&dir.join(CA_CN), common_name.as_bytes(), 0o644)?;
        let cert_file = dir.join(CA_CERT);
        write_atomic(&cert_file, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            cert_file,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA [`Ca::create`] left in `dir`, so a lab started by another process can
    /// issue more certificates under the same root.
    pub fn load(dir: &Path) -> Result<Ca> {
        let key_pem = read(&dir.join(CA_KEY))?;
        let common_name = read(&dir.join(CA_CN))?;
        let cert_file = dir.join(CA_CERT);
        // Only checked for presence: its consumers read it, the lab signs with the key.
        read(&cert_file)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Rcgen {
            what: format!("read the CA key {}", dir.join(CA_KEY).display()),
            source,
        })?;
        Ok(Ca {
            cert_file,
            issuer: Issuer::new(ca_params(common_name.trim()), key),
        })
    }

    /// The PEM file of the CA certificate: what servers and clients are told to trust.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// Issues a certificate for `spec` with a fresh key, written as `dir/<stem>.crt` and
    /// `dir/<stem>.key` (0600); `dir` is created if missing and existing files are replaced.
    pub fn issue(&self, dir: &Path, stem: &str, spec: &CertSpec) -> Result<Issued> {
        let params = leaf_params(stem, spec)?;
        let key = KeyPair::generate().map_err(|source| PkiError::Rcgen {
            what: format!("generate the key of {stem}"),
            source,
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Rcgen {
                what: format!("sign certificate {stem}"),
                source,
            })?;
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })?;
        let issued = Issued {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        write_atomic(&issued.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&issued.cert, cert.pem().as_bytes(), 0o644)?;
        Ok(issued)
    }
}

/// The CA's parameters as an issuer: the same every time for the same name, which is what lets
/// [`Ca::load`] sign certificates that chain to the certificate [`Ca::create`] wrote.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The parameters of a leaf certificate; refuses specs a certificate cannot carry.
fn leaf_params(stem: &str, spec: &CertSpec) -> Result<CertificateParams> {
    let bad = |problem: String| PkiError::Spec {
        stem: stem.to_owned(),
        problem,
    };
    if spec.organizations.len() > 2 {
        return Err(bad(format!(
            "at most two organizations are supported, got {:?}",
            spec.organizations
        )));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    if let Some(first) = spec.organizations.first() {
        dn.push(DnType::OrganizationName, first.as_str());
    }
    if let Some(second) = spec.organizations.get(1) {
        dn.push(
            DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
            second.as_str(),
        );
    }
    params.distinguished_name = dn;
    for name in &spec.dns_names {
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|e| bad(format!("DNS name {name:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params
        .subject_alt_names
        .extend(spec.ips.iter().copied().map(SanType::IpAddress));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let now = SystemTime::now();
    let not_before = spec.not_before.unwrap_or(now - DEFAULT_BACKDATE);
    let not_after = spec.not_after.unwrap_or(now + DEFAULT_VALIDITY);
    if not_after <= not_before {
        return Err(bad("notAfter is not after notBefore".into()));
    }
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Reads a PKI file as text, naming it on failure.
fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename, so
/// a reader (etcd reloading its certificate) never sees half a file and a key is never readable
/// by others, not even briefly (the temporary file is created 0600).
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |source| PkiError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for c in certs(ca.cert_file()) {
            roots.add(c).unwrap();
        }
        Arc::new(roots)
    }

    /// A full mutual-TLS handshake over a Unix socket pair: the server requires a client
    /// certificate from `client_ca`, the client trusts `server_ca` and connects to `name`.
    /// Returns the client's and the server's outcome (one line each).
    fn handshake(
        server_ca: &Ca,
        server: &Issued,
        client_ca: &Ca,
        client: &Issued,
        name: &str,
    ) -> (Result<(), String>, Result<(), String>) {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca), provider())
            .build()
            .unwrap();
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&server.cert),
                PrivateKeyDer::from_pem_file(&server.key).unwrap(),
            )
            .unwrap();
        let client_config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(server_ca))
            .with_client_auth_cert(
                certs(&client.cert),
                PrivateKeyDer::from_pem_file(&client.key).unwrap(),
            )
            .unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let server_thread = std::thread::spawn(move || {
            let mut conn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut b);
            let mut buf = [0u8; 4];
            let r = tls.read_exact(&mut buf).map_err(|e| e.to_string());
            if r.is_ok() {
                tls.write_all(b"pong").map_err(|e| e.to_string())?;
                tls.flush().map_err(|e| e.to_string())?;
            }
            r
        });
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(client_config), server_name).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut a);
        let client = tls
            .write_all(b"ping")
            .and_then(|()| tls.flush())
            .and_then(|()| {
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf)?;
                assert_eq!(&buf, b"pong");
                Ok(())
            })
            .map_err(|e| e.to_string());
        drop(a);
        (client, server_thread.join().unwrap())
    }

    fn lab_ca(dir: &Path) -> Ca {
        Ca::create(&dir.join("pki"), "flannel-lab test CA").unwrap()
    }

    fn server_spec() -> CertSpec {
        CertSpec::server(
            "etcd",
            ["localhost", "etcd.lab"],
            [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        )
    }

    #[test]
    fn issued_certificates_complete_a_mutual_tls_handshake_for_every_san() {
        let dir = tempfile::tempdir().unwrap();
        let ca = lab_ca(dir.path());
        let server = ca.issue(dir.path(), "etcd-server", &server_spec()).unwrap();
        let client = ca
            .issue(
                dir.path(),
                "flanneld",
                &CertSpec::client("flanneld", ["system:nodes"]),
            )
            .unwrap();
        for name in ["localhost", "etcd.lab", "127.0.0.1", "::1"] {
            let (c, s) = handshake(&ca, &server, &ca, &client, name);
            assert_eq!(c, Ok(()), "client side for {name}");
            assert_eq!(s, Ok(()), "server side for {name}");
        }
        let (c, _) = handshake(&ca, &server, &ca, &client, "other.lab");
        let err = c.unwrap_err();
        assert!(err.contains("not valid for name \"other.lab\""), "{err}");
    }

    #[test]
    fn files_have_the_documented_names_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = lab_ca(dir.path());
        assert_eq!(ca.cert_file(), dir.path().join("pki/ca.crt"));
        let issued = ca
            .issue(&dir.path().join("certs"), "n1", &server_spec())
            .unwrap();
        assert_eq!(issued.cert, dir.path().join("certs/n1.crt"));
        assert_eq!(issued.key, dir.path().join("certs/n1.key"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("pki/ca.key")), 0o600);
        assert_eq!(mode(&issued.key), 0o600);
        assert_eq!(mode(&issued.cert), 0o644);
        let key = fs::read_to_string(&issued.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let cert = fs::read_to_string(&issued.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_the_created_root() {
        let dir = tempfile::tempdir().unwrap();
        let created = lab_ca(dir.path());
        let server = created.issue(dir.path(), "s", &server_spec()).unwrap();
        let loaded = Ca::load(&dir.path().join("pki")).unwrap();
        assert_eq!(loaded.cert_file(), created.cert_file());
        let client = loaded
            .issue(dir.path(), "c", &CertSpec::client("c", ["o1", "o2"]))
            .unwrap();
        let (c, s) = handshake(&loaded, &server, &created, &client, "localhost");
        assert_eq!((c, s), (Ok(()), Ok(())));
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_as_unknown_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let ca = lab_ca(dir.path());
        let other = Ca::create(&dir.path().join("other"), "another CA").unwrap();
        let server = other.issue(dir.path(), "s", &server_spec()).unwrap();
        let client = ca
            .issue(dir.path(), "c", &CertSpec::client("c", ["o"]))
            .unwrap();
        let (c, _) = handshake(&ca, &server, &ca, &client, "localhost");
        let err = c.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn an_expired_certificate_is_really_expired() {
        let dir = tempfile::tempdir().unwrap();
        let ca = lab_ca(dir.path());
        let day = Duration::from_secs(24 * 3600);
        let mut spec = CertSpec::client("old", Vec::<String>::new());
        spec.not_before = Some(SystemTime::now() - 3 * day);
        spec.not_after = Some(SystemTime::now() - day);
        let client = ca.issue(dir.path(), "old", &spec).unwrap();
        let server = ca.issue(dir.path(), "s", &server_spec()).unwrap();
        let (_, s) = handshake(&ca, &server, &ca, &client, "localhost");
        let err = s.unwrap_err();
        assert!(err.contains("certificate expired"), "{err}");

        // And by webpki directly, at a time inside the window it verifies (so only time failed).
        let cert = certs(&client.cert).remove(0);
        let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
        let ca_der = certs(ca.cert_file()).remove(0);
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
        let verify_at = |t: SystemTime| {
            ee.verify_for_usage(
                rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms
                    .all,
                &anchors,
                &[],
                UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap()),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
        };
        assert!(verify_at(SystemTime::now() - 2 * day).is_ok());
        assert!(matches!(
            verify_at(SystemTime::now()),
            Err(webpki::Error::CertExpired { .. })
        ));
    }

    #[test]
    fn specs_a_certificate_cannot_carry_are_refused_with_the_stem() {
        let dir = tempfile::tempdir().unwrap();
        let ca = lab_ca(dir.path());
        let err = ca
            .issue(dir.path(), "many", &CertSpec::client("x", ["a", "b", "c"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("many") && err.contains("at most two"), "{err}");
        let mut spec = server_spec();
        spec.not_after = Some(SystemTime::now() - Duration::from_secs(7200));
        let err = ca
            .issue(dir.path(), "inverted", &spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("notAfter"), "{err}");
        let err = Ca::load(&dir.path().join("nothing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing/ca.key"), "{err}");
    }
}
