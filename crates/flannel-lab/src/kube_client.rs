//! A tiny blocking HTTP client for the lab's Kubernetes API emulator, usable from any process.
//!
//! [`crate::kube::KubeEmu`] owns the emulator process of a cluster being built; a lab left
//! running by `flannel-lab up` is driven later from other processes (`flannel-lab pod add`,
//! `apply -f`) that know only its URL and underlay namespace from the state file. Both talk
//! through this client, so there is one place that speaks HTTP to the emulator. Requests are
//! made from a thread inside the underlay namespace, where the emulator listens.
//!
//! A production-like lab's emulator serves HTTPS and wants a bearer token
//! ([`crate::kube_auth`]): the client then verifies the server against the lab's CA and sends
//! the administrator's token, as `kubectl` does with `admin.conf`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::{LabError, Result};
use crate::kube_auth::ApiCredentials;

/// Longest an HTTP exchange with the emulator may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the client speaks to a production-like emulator: TLS verified against the lab's CA,
/// and a bearer token (none: anonymous, to see the API refuse it).
#[derive(Clone)]
struct Secure {
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

/// Where the emulator listens, which namespace reaches it, and how to authenticate.
#[derive(Clone)]
pub struct KubeClient {
    addr: SocketAddr,
    netns_path: PathBuf,
    secure: Option<Secure>,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("url", &self.url())
            .field("netns_path", &self.netns_path)
            .finish()
    }
}

impl KubeClient {
    /// A client for the plain-HTTP emulator at `addr`, reached from the namespace at
    /// `netns_path` (the lab's underlay).
    pub fn new(addr: SocketAddr, netns_path: &Path) -> KubeClient {
        KubeClient {
            addr,
            netns_path: netns_path.to_path_buf(),
            secure: None,
        }
    }

    /// A client for the HTTPS emulator at `addr` with the lab's credentials: the server is
    /// verified against their CA and the administrator's token is sent.
    pub fn with_credentials(
        addr: SocketAddr,
        netns_path: &Path,
        creds: &ApiCredentials,
    ) -> Result<KubeClient> {
        Ok(KubeClient {
            addr,
            netns_path: netns_path.to_path_buf(),
            secure: Some(Secure {
                tls: creds.tls_client_config()?,
                token: Some(creds.admin_token().to_string()),
            }),
        })
    }

    /// The same client with another bearer token (`None`: anonymous); for tests of what the
    /// API refuses. Meaningless for a plain-HTTP emulator.
    pub fn with_token(&self, token: Option<&str>) -> KubeClient {
        let mut c = self.clone();
        if let Some(s) = &mut c.secure {
            s.token = token.map(str::to_string);
        }
        c
    }

    /// A client from the URL the state file records (`http://198.18.0.254:PORT`, or
    /// `https://...` for a lab whose credentials are in `lab_dir`).
    pub fn from_url(url: &str, netns_path: &Path, lab_dir: &Path) -> Result<KubeClient> {
        let (https, rest) = match url.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("http://").unwrap_or(url)),
        };
        let addr = rest
            .trim_end_matches('/')
            .parse::<SocketAddr>()
            .map_err(|e| LabError::Invalid(format!("API URL {url:?}: {e}")))?;
        if https {
            KubeClient::with_credentials(addr, netns_path, &ApiCredentials::load(lab_dir)?)
        } else {
            Ok(KubeClient::new(addr, netns_path))
        }
    }

    /// The API URL (`http://ADDR`, or `https://ADDR` when the emulator serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Where the emulator listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One HTTP request from inside the underlay namespace; returns the status and the JSON
    /// body (`Null` when empty).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let addr = self.addr;
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = match self.secure.as_ref().and_then(|s| s.token.as_deref()) {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Accept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let what = format!("{method} {path} on the kube emulator");
        let tls = self.secure.as_ref().map(|s| s.tls.clone());
        let out = crate::netns::in_netns_thread(&self.netns_path, move || {
            let s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
            s.set_read_timeout(Some(HTTP_TIMEOUT))?;
            s.set_write_timeout(Some(HTTP_TIMEOUT))?;
            exchange(s, tls, req.as_bytes())
        })?
        .map_err(|e| LabError::io(what.clone(), e))?;
        parse_response(&out).ok_or_else(|| {
            LabError::Invalid(format!(
                "{what}: unreadable response {:?}",
                String::from_utf8_lossy(&out)
            ))
        })
    }

    /// [`KubeClient::request`], with any status outside 2xx an error carrying the API's message.
    pub fn expect_ok(
        &self,
        method: &str,
        path: &str,
        ct: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, v) = self.request(method, path, ct, body)?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(api_error(method, path, status, &v))
        }
    }
}

/// Sends `req` on `s` (through TLS when `tls` is given) and reads the response to its end.
fn exchange(
    mut s: TcpStream,
    tls: Option<Arc<rustls::ClientConfig>>,
    req: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let Some(tls) = tls else {
        s.write_all(req)?;
        s.read_to_end(&mut out)?;
        return Ok(out);
    };
    let name = rustls::pki_types::ServerName::IpAddress(s.peer_addr()?.ip().into());
    let conn = rustls::ClientConnection::new(tls, name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, s);
    stream.write_all(req)?;
    match stream.read_to_end(&mut out) {
        // A server that closes after `Connection: close` without close_notify: the response is
        // complete (its length or last chunk is checked when it is parsed).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
        r => r.map(|_| out),
    }
}

/// The error for an unexpected API status: the request and the Status object's message.
pub(crate) fn api_error(method: &str, path: &str, status: u16, body: &Value) -> LabError {
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    LabError::Api {
        method: method.to_string(),
        path: path.to_string(),
        status,
        reason: text("reason"),
        message: text("message"),
    }
}

/// Splits an HTTP/1.1 response into status and JSON body (handles chunked bodies).
fn parse_response(raw: &[u8]) -> Option<(u16, Value)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, tail) = rest.split_once("\r\n")?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..)?;
        }
        out
    } else {
        body.to_string()
    };
    let v = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).ok()?
    };
    Some((status, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 201 Created\r\ncontent-length: 8\r\n\r\n{\"a\":1}\n";
        assert_eq!(parse_response(r), Some((201, json!({"a":1}))));
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":2}\r\n0\r\n\r\n";
        assert_eq!(parse_response(r), Some((200, json!({"a":2}))));
    }

    #[test]
    fn urls() {
        let c = KubeClient::from_url("http://198.18.0.254:4321", Path::new("/x"), Path::new("/l"))
            .unwrap();
        assert_eq!(c.url(), "http://198.18.0.254:4321");
        assert!(KubeClient::from_url("http://nowhere", Path::new("/x"), Path::new("/l")).is_err());
        // https needs the lab's credentials, named when missing.
        let e = KubeClient::from_url(
            "https://198.18.0.254:4321",
            Path::new("/x"),
            Path::new("/l"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/l/"), "{e}");
    }
}
