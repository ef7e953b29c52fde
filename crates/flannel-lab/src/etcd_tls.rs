//! The lab's etcd as production runs it: TLS with client certificates, and optionally etcd's
//! username/password authentication on top (`flannel-lab up --etcd-tls [--etcd-user U:P]`).
//!
//! [`issue`] makes the CA (`<lab>/pki/`), etcd's server certificate, one client certificate per
//! node (CN `flanneld-nK`, as each kubeadm node has its own) and the lab's `etcdctl`
//! certificate (CN `root`). [`enable_auth`] creates the flannel user and role the way an
//! operator would; once auth is on, etcd takes a client certificate's CN as the user, so the
//! lab's `etcdctl` keeps full access as `root` (created without a password: certificate only)
//! and flanneld, which logs in with its password, gets the role's rights and no more.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use crate::error::{LabError, Result};
use crate::etcd::{Etcd, EtcdTls};
use crate::pki::{Ca, CertSpec, Issued};

/// The directory under the lab directory holding the CA and every certificate.
pub const PKI_DIR: &str = "pki";

/// The role [`enable_auth`] grants flanneld's user.
pub const FLANNEL_ROLE: &str = "flannel";

/// An etcd user for flanneld (`--etcd-username`/`--etcd-password`), written `NAME:PASSWORD` on
/// the command line as `etcdctl user add` takes it.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    /// The password is never printed (it ends up in logs and panics otherwise).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl FromStr for EtcdUser {
    type Err = String;

    /// `NAME:PASSWORD`; the password may contain colons, the name may not be `root` (the
    /// lab's own administrator).
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, password)) = s.split_once(':') else {
            return Err(format!("expected NAME:PASSWORD, got {s:?}"));
        };
        if name.is_empty() || password.is_empty() {
            return Err("both NAME and PASSWORD must be non-empty in NAME:PASSWORD".into());
        }
        if name == "root" {
            return Err(
                "`root` is the lab's own etcd administrator; choose another user name".into(),
            );
        }
        Ok(EtcdUser {
            name: name.to_string(),
            password: password.to_string(),
        })
    }
}

/// What [`issue`] made.
#[derive(Debug)]
pub struct EtcdPki {
    /// The lab's CA (kept for more certificates, e.g. tests issuing bad ones).
    pub ca: Ca,
    /// What etcd is started with ([`crate::EtcdOptions::tls`]).
    pub tls: EtcdTls,
    /// Node `i`'s client certificate (`--etcd-certfile`, `--etcd-keyfile`).
    pub nodes: Vec<Issued>,
}

/// Makes the CA in `<lab_dir>/pki`, etcd's server certificate for `localhost`, 127.0.0.1 and
/// `serve_on` (every address etcd serves clients on), the `root` client certificate for the
/// lab's etcdctl, and one client certificate per node.
pub fn issue(lab_dir: &Path, serve_on: &[IpAddr], nodes: usize) -> Result<EtcdPki> {
    let dir = lab_dir.join(PKI_DIR);
    let ca = Ca::create(&dir, "flannel-lab etcd CA")?;
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    for ip in serve_on {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    let server = ca.issue(
        &dir,
        "etcd-server",
        &CertSpec::server("etcd", ["localhost"], ips),
    )?;
    let client = ca.issue(
        &dir,
        "etcdctl",
        &CertSpec::client("root", Vec::<String>::new()),
    )?;
    let nodes = (1..=nodes)
        .map(|k| {
            let cn = format!("flanneld-n{k}");
            ca.issue(
                &dir,
                &cn,
                &CertSpec::client(cn.as_str(), Vec::<String>::new()),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let tls = EtcdTls {
        ca: ca.cert_file().to_path_buf(),
        server,
        client,
        client_cert_auth: true,
    };
    Ok(EtcdPki { ca, tls, nodes })
}

/// Turns on etcd authentication with `user` allowed to read and write `prefix` and below
/// only: the root user etcd requires before `auth enable` (certificate-only, no password), the
/// role [`FLANNEL_ROLE`], the user, then `auth enable`. The lab's etcdctl must present the
/// `root` certificate afterwards ([`issue`] makes it so).
pub fn enable_auth(etcd: &Etcd, user: &EtcdUser, prefix: &str) -> Result<()> {
    if etcd.tls().is_none() {
        return Err(LabError::Invalid(
            "etcd authentication in the lab needs TLS: the lab's etcdctl acts as root through its client certificate".into(),
        ));
    }
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let password = format!("--new-user-password={}", user.password);
    let steps: [&[&str]; 7] = [
        &["user", "add", "root", "--no-password"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", FLANNEL_ROLE],
        &[
            "role",
            "grant-permission",
            FLANNEL_ROLE,
            "--prefix=true",
            "readwrite",
            &prefix,
        ],
        &["user", "add", &user.name, &password],
        &["user", "grant-role", &user.name, FLANNEL_ROLE],
        &["auth", "enable"],
    ];
    for step in steps {
        etcd.etcdctl(step)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_from_name_colon_password() {
        let u: EtcdUser = "flannel:s3:cret".parse().unwrap();
        assert_eq!(
            (u.name.as_str(), u.password.as_str()),
            ("flannel", "s3:cret")
        );
        assert!(!format!("{u:?}").contains("s3"));
        for bad in ["flannel", ":pw", "flannel:", "root:pw"] {
            assert!(bad.parse::<EtcdUser>().is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_covers_every_serving_address_and_each_node() {
        let dir = tempfile::tempdir().unwrap();
        let gw = IpAddr::from([198, 18, 0, 254]);
        let pki = issue(dir.path(), &[gw, IpAddr::from([127, 0, 0, 1])], 2).unwrap();
        assert_eq!(pki.tls.ca, dir.path().join("pki/ca.crt"));
        assert!(pki.tls.client_cert_auth);
        assert_eq!(pki.nodes.len(), 2);
        assert_eq!(pki.nodes[1].cert, dir.path().join("pki/flanneld-n2.crt"));
        for f in [
            &pki.tls.server.cert,
            &pki.tls.server.key,
            &pki.tls.client.key,
        ] {
            assert!(f.is_file(), "{}", f.display());
        }
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let der = CertificateDer::from_pem_file(&pki.tls.server.cert).unwrap();
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        let valid = |n: &str| {
            let name = ServerName::try_from(n.to_owned()).unwrap();
            ee.verify_is_valid_for_subject_name(&name).is_ok()
        };
        for name in ["localhost", "127.0.0.1", "198.18.0.254"] {
            assert!(valid(name), "{name}");
        }
        assert!(!valid("198.18.0.1"));
    }
}
