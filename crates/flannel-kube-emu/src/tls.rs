//! HTTPS: the server certificate and key (`--tls-cert-file`, `--tls-private-key-file`) turned
//! into a rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`: the
//! emulator speaks HTTP/1.1 only, so clients must not try h2).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key the server cannot use; it refuses to start, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable PEM certificate (or private key).
    #[error("{path}: no {what} found in PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (e.g. the key does not belong to the certificate).
    #[error("using {cert} with {key}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// A server identity ready to serve: the parsed certificate chain and key as a rustls
/// configuration. Cheap to clone.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// From PEM text: a certificate chain (server certificate first) and its private key
    /// (PKCS#8, PKCS#1 or SEC1). `cert_name`/`key_name` only name the sources in errors.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &Path,
        key_name: &Path,
    ) -> Result<TlsIdentity, TlsError> {
        let pem_error = |path: &Path, what, source| TlsError::Pem {
            path: path.to_path_buf(),
            what,
            source,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert_name, "certificate", e))?;
        if chain.is_empty() {
            return Err(pem_error(
                cert_name,
                "certificate",
                rustls::pki_types::pem::Error::NoItemsFound,
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error(key_name, "private key", e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|source| TlsError::Config {
                cert: cert_name.to_path_buf(),
                key: key_name.to_path_buf(),
                source,
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            config: Arc::new(config),
        })
    }

    /// From the two PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        TlsIdentity::from_pem(&read(cert)?, &read(key)?, cert, key)
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let e = TlsIdentity::from_files(Path::new("/nonexistent/c.pem"), Path::new("/k.pem"))
            .unwrap_err();
        assert_eq!(e.to_string(), "reading /nonexistent/c.pem");
        let e = TlsIdentity::from_pem(b"junk", b"junk", Path::new("c.pem"), Path::new("k.pem"))
            .unwrap_err();
        assert_eq!(e.to_string(), "c.pem: no certificate found in PEM");
    }
}
