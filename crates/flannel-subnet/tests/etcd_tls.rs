//! The etcd subnet manager against a real etcd 3.4 serving TLS, started per test by flannel-lab
//! inside a fresh network namespace with certificates from the lab's PKI. Each TLS problem an
//! operator can meet must give one message naming the file or the endpoint and what is wrong;
//! these tests assert the exact texts (the README quotes them), and that problems on the
//! server's side are retried with backoff while file problems fail at once.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, bail, ensure};
use flannel_lab::pki::{Ca, CertSpec, Issued};
use flannel_lab::{Etcd, EtcdOptions, EtcdTls, Netns};
use flannel_subnet::etcd::{EtcdConfig, EtcdManager};
use flannel_subnet::{PreviousSubnets, SubnetError, SubnetManager};

/// Upper bound for one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a connect that keeps retrying is watched (first retry after 1 s, then 2 s).
const RETRYING: Duration = Duration::from_millis(3500);
const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Log lines captured for one test (and echoed to the test's output).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Logs);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().unwrap().extend_from_slice(buf);
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The PKI of one test: the CA etcd trusts, etcd's certificate (re-issuable in place) and a
/// good client certificate.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Issued,
    client: Issued,
}

fn localhost_server() -> CertSpec {
    CertSpec::server("etcd", ["localhost"], [IpAddr::from([127, 0, 0, 1])])
}

impl Pki {
    fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::create(&dir.path().join("ca"), "etcd CA")?;
        let server = ca.issue(dir.path(), "server", &localhost_server())?;
        let client = ca.issue(dir.path(), "client", &CertSpec::client("flanneld", ["x"]))?;
        Ok(Pki {
            dir,
            ca,
            server,
            client,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A CA that etcd does not know.
    fn other_ca(&self) -> Result<Ca> {
        Ok(Ca::create(&self.path().join("other-ca"), "another CA")?)
    }

    fn tls(&self, client_cert_auth: bool) -> EtcdTls {
        EtcdTls {
            ca: self.ca.cert_file().to_path_buf(),
            server: self.server.clone(),
            client: self.client.clone(),
            client_cert_auth,
        }
    }
}

/// What a test body gets.
struct Ctx {
    etcd: Etcd,
    endpoint: String,
    pki: Pki,
    logs: Logs,
}

impl Ctx {
    /// flanneld's flags for the good client certificate and etcd's CA.
    fn config(&self) -> EtcdConfig {
        let mut c = EtcdConfig::new(vec![self.endpoint.clone()]);
        c.cafile = Some(self.pki.ca.cert_file().to_path_buf());
        c.certfile = Some(self.pki.client.cert.clone());
        c.keyfile = Some(self.pki.client.key.clone());
        c
    }

    /// Runs `connect` for [`RETRYING`] and requires that it is still retrying then.
    async fn still_retrying(&self, config: EtcdConfig) -> Result<String> {
        match tokio::time::timeout(
            RETRYING,
            EtcdManager::connect(config, PreviousSubnets::default()),
        )
        .await
        {
            Err(_) => Ok(self.logs.text()),
            Ok(Ok(_)) => bail!("connected despite the problem"),
            Ok(Err(e)) => bail!("gave up instead of retrying: {e}"),
        }
    }
}

/// Starts etcd with TLS from a fresh PKI, writes the config, restarts etcd after `prepare`
/// changed the PKI, and
/// runs `body` in the namespace on a current-thread runtime with captured logs.
fn run_test<F>(
    role: &str,
    client_cert_auth: bool,
    prepare: impl FnOnce(&mut Pki) -> Result<()>,
    body: F,
) -> Result<()>
where
    F: AsyncFnOnce(Ctx) -> Result<()> + Send,
{
    let ns = Netns::new(role)?;
    let mut pki = Pki::new()?;
    let mut etcd = Etcd::start(&ns, EtcdOptions::new().tls(pki.tls(client_cert_auth)))?;
    etcd.etcdctl(["put", "/coreos.com/network/config", CONFIG])?;
    // Only now break the server's certificate (the lab's etcdctl needs a good one above) and
    // restart etcd on it.
    prepare(&mut pki)?;
    etcd.restart()?;
    let endpoint = etcd.endpoints();
    let logs = Logs::default();
    let ctx = Ctx {
        etcd,
        endpoint,
        pki,
        logs: logs.clone(),
    };
    let outcome = ns.in_thread(move || -> Result<()> {
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            tokio::time::timeout(TEST_TIMEOUT, body(ctx))
                .await
                .map_err(|_| anyhow!("test did not finish within {TEST_TIMEOUT:?}"))?
        })
    })?;
    drop(ns);
    outcome
}

fn no_change(_: &mut Pki) -> Result<()> {
    Ok(())
}

/// The error of a connect that must fail at once.
async fn connect_err(config: EtcdConfig) -> Result<String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        EtcdManager::connect(config, PreviousSubnets::default()),
    )
    .await
    {
        Err(_) => bail!("connect did not fail within 10 s"),
        Ok(Ok(_)) => bail!("connected despite the problem"),
        Ok(Err(e)) => Ok(e.to_string()),
    }
}

fn after_line<'a>(logs: &'a str, needle: &str) -> Vec<&'a str> {
    logs.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn client_certificates_connect_without_warnings() -> Result<()> {
    run_test("etls-ok", true, no_change, async |ctx: Ctx| {
        let m = EtcdManager::connect(ctx.config(), PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        ensure!(config.network.map(|n| n.to_string()) == Some("10.5.0.0/16".into()));
        let logs = ctx.logs.text();
        ensure!(!logs.contains("WARN") && !logs.contains("ERROR"), "{logs}");
        Ok(())
    })
}

#[test]
fn a_server_certificate_from_an_unknown_ca_is_retried_until_the_server_is_fixed() -> Result<()> {
    let other = Arc::new(Mutex::new(None::<Ca>));
    let keep = other.clone();
    run_test(
        "etls-ca",
        true,
        move |pki| {
            // etcd serves a certificate from a CA flanneld does not trust.
            let ca = pki.other_ca()?;
            ca.issue(pki.path(), "server", &localhost_server())?;
            *keep.lock().unwrap() = Some(ca);
            Ok(())
        },
        async move |mut ctx: Ctx| {
            let want = format!(
                "the server certificate of etcd at {} is signed by an unknown authority (x509: certificate signed by unknown authority): it does not chain to the CA in {} (--etcd-cafile); retrying in ",
                ctx.endpoint,
                ctx.pki.ca.cert_file().display()
            );
            let logs = ctx.still_retrying(ctx.config()).await?;
            let lines = after_line(&logs, &want);
            ensure!(lines.len() >= 2, "want two attempts of {want:?} in\n{logs}");
            ensure!(
                lines[0].ends_with("retrying in 1s") && lines[1].ends_with("retrying in 2s"),
                "no backoff: {lines:?}"
            );
            // The operator fixes the server: a certificate from the right CA, etcd restarted.
            ctx.pki
                .ca
                .issue(ctx.pki.path(), "server", &localhost_server())?;
            ctx.etcd.restart()?;
            let m = tokio::time::timeout(
                Duration::from_secs(15),
                EtcdManager::connect(ctx.config(), PreviousSubnets::default()),
            )
            .await??;
            m.network_config().await?;
            drop(other);
            Ok(())
        },
    )
}

#[test]
fn a_server_certificate_for_another_name_names_the_valid_ones() -> Result<()> {
    run_test(
        "etls-name",
        true,
        |pki| {
            let spec = CertSpec::server("etcd", ["etcd.example"], [IpAddr::from([10, 9, 9, 9])]);
            pki.ca.issue(pki.path(), "server", &spec)?;
            Ok(())
        },
        async |ctx: Ctx| {
            let logs = ctx.still_retrying(ctx.config()).await?;
            let want = format!(
                "the server certificate of etcd at {} is not valid for 127.0.0.1: it is valid for etcd.example, 10.9.9.9; retrying in 1s",
                ctx.endpoint
            );
            ensure!(logs.contains(&want), "want {want:?} in\n{logs}");
            Ok(())
        },
    )
}

#[test]
fn an_expired_server_certificate_says_when_it_expired() -> Result<()> {
    run_test(
        "etls-sexp",
        true,
        |pki| {
            let mut spec = localhost_server();
            spec.not_before = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
            spec.not_after = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
            pki.ca.issue(pki.path(), "server", &spec)?;
            Ok(())
        },
        async |ctx: Ctx| {
            let logs = ctx.still_retrying(ctx.config()).await?;
            let want = format!(
                "the server certificate of etcd at {} expired at 2023-11-14T22:13:20Z (it is now ",
                ctx.endpoint
            );
            ensure!(logs.contains(&want), "want {want:?} in\n{logs}");
            Ok(())
        },
    )
}

#[test]
fn a_client_certificate_etcd_does_not_trust_is_named() -> Result<()> {
    run_test("etls-cref", true, no_change, async |ctx: Ctx| {
        let foreign = ctx.pki.other_ca()?.issue(
            ctx.pki.path(),
            "foreign",
            &CertSpec::client("flanneld", ["x"]),
        )?;
        let mut config = ctx.config();
        config.certfile = Some(foreign.cert.clone());
        config.keyfile = Some(foreign.key.clone());
        let logs = ctx.still_retrying(config).await?;
        let want = format!(
            "etcd at {} refused our client certificate {} (TLS alert BadCertificate): is it signed by a CA in etcd's --trusted-ca-file, and does it allow client authentication?; retrying in 1s",
            ctx.endpoint,
            foreign.cert.display()
        );
        ensure!(logs.contains(&want), "want {want:?} in\n{logs}");
        Ok(())
    })
}

#[test]
fn file_problems_fail_at_once_naming_the_file() -> Result<()> {
    run_test("etls-files", true, no_change, async |ctx: Ctx| {
        // A missing key file.
        let mut config = ctx.config();
        let missing: PathBuf = ctx.pki.path().join("missing.key");
        config.keyfile = Some(missing.clone());
        let e = connect_err(config).await?;
        ensure!(
            e == format!(
                "checking the etcd TLS files: cannot read the etcd key file (--etcd-keyfile) {}: No such file or directory (os error 2)",
                missing.display()
            ),
            "{e}"
        );
        // An expired client certificate.
        let mut spec = CertSpec::client("flanneld", ["x"]);
        spec.not_before = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
        spec.not_after = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let old = ctx.pki.ca.issue(ctx.pki.path(), "old", &spec)?;
        let mut config = ctx.config();
        config.certfile = Some(old.cert.clone());
        config.keyfile = Some(old.key.clone());
        let e = connect_err(config).await?;
        let want = format!(
            "checking the etcd TLS files: the etcd client certificate {} (--etcd-certfile) expired at 2023-11-14T22:13:20Z (it is now ",
            old.cert.display()
        );
        ensure!(e.starts_with(&want), "{e}");
        // A key that is not the certificate's.
        let mut config = ctx.config();
        config.keyfile = Some(ctx.pki.server.key.clone());
        let e = connect_err(config).await?;
        ensure!(e.contains("does not belong to the certificate in"), "{e}");
        ensure!(!ctx.logs.text().contains("retrying"), "{}", ctx.logs.text());
        Ok(())
    })
}

#[test]
fn a_server_that_does_not_ask_for_our_certificate_is_a_warning() -> Result<()> {
    run_test("etls-noauth", false, no_change, async |ctx: Ctx| {
        let m = EtcdManager::connect(ctx.config(), PreviousSubnets::default()).await?;
        m.network_config().await?;
        let want = format!(
            "etcd at {} did not ask for a client certificate: it runs without --client-cert-auth, so anyone who can reach it can change the flannel network config",
            ctx.endpoint
        );
        let logs = ctx.logs.text();
        ensure!(
            after_line(&logs, &want).len() == 1,
            "want one {want:?} in\n{logs}"
        );
        ensure!(after_line(&logs, &want)[0].contains("WARN"), "{logs}");
        Ok(())
    })
}

#[test]
fn a_server_not_up_yet_is_retried() -> Result<()> {
    run_test("etls-down", true, no_change, async |mut ctx: Ctx| {
        ctx.etcd.stop()?;
        let logs = ctx.still_retrying(ctx.config()).await?;
        let want = format!(
            "cannot connect to etcd at {}: Connection refused (os error 111); retrying in 1s",
            ctx.endpoint
        );
        ensure!(logs.contains(&want), "want {want:?} in\n{logs}");
        Ok(())
    })
}

#[test]
fn a_wrong_password_names_the_user_and_the_endpoint() -> Result<()> {
    run_test("etls-pw", true, no_change, async |ctx: Ctx| {
        // The lab's etcdctl certificate has CN "flanneld": make it root, as the lab does.
        for step in [
            &["user", "add", "root", "--no-password"][..],
            &["user", "grant-role", "root", "root"],
            &["user", "add", "flanneld", "--no-password"],
            &["user", "grant-role", "flanneld", "root"],
            &["user", "add", "flannel", "--new-user-password=right"],
            &["user", "grant-role", "flannel", "root"],
            &["auth", "enable"],
        ] {
            ctx.etcd.etcdctl(step)?;
        }
        let mut config = ctx.config();
        config.username = Some("flannel".into());
        config.password = Some("right".into());
        let m = EtcdManager::connect(config.clone(), PreviousSubnets::default()).await?;
        m.network_config().await?;
        config.password = Some("wrong".into());
        match EtcdManager::connect(config, PreviousSubnets::default()).await {
            Err(e @ SubnetError::Datastore { .. }) => {
                let text = e.to_string();
                let want = format!(
                    "connecting to etcd at {} as user \"flannel\": ",
                    ctx.endpoint
                );
                ensure!(text.starts_with(&want), "{text}");
                ensure!(
                    text.contains("authentication failed, invalid user ID or password"),
                    "{text}"
                );
            }
            Err(e) => bail!("unexpected error {e}"),
            Ok(_) => bail!("a wrong password was accepted"),
        }
        Ok(())
    })
}

#[test]
fn a_server_certificate_gone_bad_after_start_up_is_named_in_request_errors() -> Result<()> {
    run_test("etls-later", true, no_change, async |mut ctx: Ctx| {
        let m = EtcdManager::connect(ctx.config(), PreviousSubnets::default()).await?;
        m.network_config().await?;
        ctx.pki
            .other_ca()?
            .issue(ctx.pki.path(), "server", &localhost_server())?;
        ctx.etcd.restart()?;
        // The first request may still meet the old connection's end; the next ones reconnect.
        let mut last = String::new();
        for _ in 0..10 {
            match m.network_config().await {
                Ok(_) => bail!("a server with an unknown CA answered"),
                Err(SubnetError::Datastore { operation, source }) => {
                    last = format!("{operation}: {source}");
                    if matches!(source, flannel_subnet::DatastoreCause::Tls(_)) {
                        let want = "getting /coreos.com/network/config: TLS: the server certificate of etcd is signed by an unknown authority (x509: certificate signed by unknown authority): it does not chain to the CA in --etcd-cafile";
                        ensure!(last == want, "{last}");
                        return Ok(());
                    }
                }
                Err(e) => bail!("unexpected error {e}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("no TLS error within 10 requests; last: {last}")
    })
}
