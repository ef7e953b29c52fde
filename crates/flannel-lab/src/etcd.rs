//! A real single-member etcd 3.4 inside a lab namespace.
//!
//! flanneld's etcd subnet manager is tested against the real server (Debian's `etcd-server`), not
//! a fake: leases, watches and compaction behave as in production. Tests also need to kill etcd
//! and bring it back on the same data and ports to test reconnection, hence [`Etcd::restart`].

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::command::{check, describe, netns_exec_command, run_command};
use crate::error::{LabError, Result};
use crate::etcd_cluster::Member;
use crate::host::require_binary;
use crate::netns::{NETNS_DIR, Netns, in_netns_thread, temp_dir};
use crate::pki::Issued;
use crate::process::{Child, LOG_TAIL_LINES, read_log, tail};

/// How long a start or restart may take before it counts as failed (etcd needs about 1 s).
pub const DEFAULT_ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a start is retried with new ports when they turned out to be taken.
pub(crate) const PORT_ATTEMPTS: usize = 3;

/// How `etcdctl` calls are bounded, both by etcdctl's own timeouts and by a kill.
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);

/// TLS on etcd's client URLs (see [`EtcdOptions::tls`]): what production etcd (kubeadm's)
/// looks like, so flanneld's `--etcd-cafile/--etcd-certfile/--etcd-keyfile` path is tested.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA etcd trusts for client certificates (`--trusted-ca-file`) and that signed
    /// `server`, so clients verify with it too.
    pub ca: PathBuf,
    /// etcd's server certificate (`--cert-file`, `--key-file`); its SANs must cover every
    /// address clients use.
    pub server: Issued,
    /// The certificate the lab's own `etcdctl` calls present. Its CN is the etcd user those
    /// calls act as once auth is enabled (the lab issues it for `root`).
    pub client: Issued,
    /// `--client-cert-auth` and `--trusted-ca-file`: refuse clients without a certificate from
    /// `ca`. Off (neither flag: etcd requires client certificates whenever it has a trusted
    /// CA) only to test a client's warning about a server that does not ask for one.
    pub client_cert_auth: bool,
}

/// How to start etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    listen_on: Vec<IpAddr>,
    dir: Option<PathBuf>,
    start_timeout: Duration,
    new_session: bool,
    tls: Option<EtcdTls>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            listen_on: Vec::new(),
            dir: None,
            start_timeout: DEFAULT_ETCD_START_TIMEOUT,
            new_session: false,
            tls: None,
        }
    }
}

impl EtcdOptions {
    /// Loopback only, own temp directory, default start timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also serve clients on `ip` (e.g. the node's underlay address), so flanneld in *other* node
    /// namespaces can reach this etcd. [`Etcd::endpoints`] then names this address.
    pub fn listen_on(mut self, ip: IpAddr) -> Self {
        self.listen_on.push(ip);
        self
    }

    /// Keep the data directory and log under `dir` (created if needed) instead of a private temp
    /// directory, e.g. inside the lab's directory so it is collected with the other logs. The
    /// caller owns `dir`'s cleanup.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Whether a directory was chosen (the lab then leaves it alone).
    pub(crate) fn has_dir(&self) -> bool {
        self.dir.is_some()
    }

    /// Run etcd in a session of its own so it can outlive this process (a persistent lab's etcd;
    /// see [`crate::lab::Persist`]).
    pub(crate) fn new_session(mut self, on: bool) -> Self {
        self.new_session = on;
        self
    }

    /// Change how long start and restart wait for etcd to report healthy.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Serve clients over TLS only (`https://` client URLs). Health checks then go to a plain
    /// loopback metrics URL (`--listen-metrics-urls`) on a third port, and [`Etcd::etcdctl`]
    /// presents `tls.client`.
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A running etcd member; stopped on drop, its private data directory removed.
#[derive(Debug)]
pub struct Etcd {
    netns: String,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP loopback port for `/health` when client URLs are TLS (0 otherwise).
    metrics_port: u16,
    tls: Option<EtcdTls>,
    listen_on: Vec<IpAddr>,
    data_dir: PathBuf,
    log_path: PathBuf,
    start_timeout: Duration,
    new_session: bool,
    /// Set for a member of a multi-member cluster ([`crate::EtcdCluster`]).
    member: Option<Member>,
    // Field order matters: the process (above) must stop before its directory goes.
    _temp: Option<tempfile::TempDir>,
}

impl Etcd {
    /// Starts etcd inside `ns` on free ports and waits until it reports healthy.
    ///
    /// Ports are chosen inside the namespace (see [`Netns::free_tcp_ports`]); if etcd still finds
    /// one taken, the start is retried with new ports. Every start begins with an empty data
    /// directory (`<dir>/data`), since a member initialised for other ports cannot be reused;
    /// [`Etcd::restart`] is the way to keep data. The error on failure quotes etcd's log.
    pub fn start(ns: &Netns, opts: EtcdOptions) -> Result<Etcd> {
        let mut etcd = Self::prepare(ns, &opts)?;
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            // A failed attempt may have initialised a member with the old peer URL: start clean.
            let _ = std::fs::remove_dir_all(&etcd.data_dir);
            let ports = ns.free_tcp_ports(etcd.ports_needed())?;
            etcd.set_ports(&ports);
            match etcd.launch() {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    let busy = etcd.port_was_busy();
                    etcd.kill_quietly();
                    if !busy {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| etcd.error("could not find free ports")))
    }

    /// An etcd not yet started: directories created, no ports chosen (shared by [`Etcd::start`]
    /// and [`crate::EtcdCluster::start`]).
    pub(crate) fn prepare(ns: &Netns, opts: &EtcdOptions) -> Result<Etcd> {
        require_binary("etcd")?;
        let (temp, base) = match &opts.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = temp_dir("etcd")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(&base)
            .map_err(|e| LabError::io(format!("creating {}", base.display()), e))?;
        Ok(Etcd {
            netns: ns.name().to_string(),
            child: None,
            client_port: 0,
            peer_port: 0,
            metrics_port: 0,
            tls: opts.tls.clone(),
            listen_on: opts.listen_on.clone(),
            data_dir: base.join("data"),
            log_path: base.join("etcd.log"),
            start_timeout: opts.start_timeout,
            new_session: opts.new_session,
            member: None,
            _temp: temp,
        })
    }

    /// The number of ports a start takes: client and peer, plus a plain metrics port for the
    /// health check when clients speak TLS.
    pub(crate) fn ports_needed(&self) -> usize {
        if self.tls.is_some() { 3 } else { 2 }
    }

    /// Takes the ports [`Etcd::ports_needed`] counted: client, peer, metrics (TLS only).
    fn set_ports(&mut self, ports: &[u16]) {
        self.client_port = ports[0];
        self.peer_port = ports[1];
        if self.tls.is_some() {
            self.metrics_port = ports[2];
        }
    }

    /// Makes this etcd a member of a multi-member cluster on `ports` (as [`Etcd::ports_needed`]
    /// counts them; before [`Etcd::spawn`]); its data directory is emptied, as in
    /// [`Etcd::start`].
    pub(crate) fn set_member(&mut self, member: Member, ports: &[u16]) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        self.member = Some(member);
        self.set_ports(ports);
    }

    /// The member name (`--name`): `lab` for a single etcd.
    pub fn name(&self) -> &str {
        self.member.as_ref().map_or("lab", |m| m.name.as_str())
    }

    /// Whether the last start failed because a port was taken (so new ports may help).
    pub(crate) fn port_was_busy(&self) -> bool {
        read_log(&self.log_path).contains("address already in use")
    }

    /// SIGKILLs the process, if any, ignoring errors (clean-up after a failed start).
    pub(crate) fn kill_quietly(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
        }
    }

    /// Client URLs for flanneld's `--etcd-endpoints`: the `listen_on` addresses if any (reachable
    /// from other namespaces), otherwise loopback (reachable only inside etcd's namespace).
    pub fn endpoints(&self) -> String {
        if self.listen_on.is_empty() {
            self.local_endpoint()
        } else {
            self.listen_on
                .iter()
                .map(|ip| self.client_url(*ip))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    /// The TLS settings etcd was started with, if any.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// A client URL on `ip`: `https://` when etcd serves TLS.
    fn client_url(&self, ip: IpAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(ip, self.client_port))
    }

    /// The loopback client URL, valid inside etcd's own namespace.
    pub fn local_endpoint(&self) -> String {
        self.client_url(IpAddr::from([127, 0, 0, 1]))
    }

    /// The client port (the same after a restart).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port (the same after a restart).
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The namespace etcd runs in.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The data directory, kept across [`Etcd::stop`] and [`Etcd::restart`].
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// etcd's log (all runs appended, each starting with a header line).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of etcd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_log(&self.log_path), lines)
    }

    /// The pid of the running etcd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// Whether etcd is running (it may have been stopped, killed, or have crashed).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::is_running)
    }

    /// Stops etcd gracefully (SIGTERM, SIGKILL after a bounded wait) and waits for it to exit.
    /// The data directory and ports are kept for [`Etcd::restart`].
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.stop()?;
        }
        Ok(())
    }

    /// Kills etcd with SIGKILL, simulating a crash, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
        }
        Ok(())
    }

    /// Starts etcd again on the same data directory and ports (stopping it first if running)
    /// and waits until it is healthy, so clients configured with [`Etcd::endpoints`] reconnect.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        if let Err(e) = self.launch() {
            self.kill_quietly();
            return Err(e);
        }
        Ok(())
    }

    /// Runs `etcdctl <args>` (API v3) against this etcd from inside its namespace and returns
    /// stdout; the error carries etcdctl's stderr.
    pub fn etcdctl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        require_binary("etcdctl")?;
        let endpoints = format!("--endpoints={}", self.local_endpoint());
        let mut cmd = netns_exec_command(
            &self.netns,
            [
                "etcdctl",
                endpoints.as_str(),
                "--dial-timeout=2s",
                "--command-timeout=5s",
            ],
        )?;
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client.cert.display()))
                .arg(format!("--key={}", tls.client.key.display()));
        }
        cmd.args(args).env("ETCDCTL_API", "3");
        let line = describe(&cmd);
        let out = check(line, run_command(cmd, None, ETCDCTL_TIMEOUT)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether etcd answers `GET /health` with `"health":"true"` right now.
    pub fn is_healthy(&self) -> bool {
        self.health().is_ok()
    }

    /// Spawns etcd with the current ports and waits until healthy.
    fn launch(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy(self.start_timeout)
    }

    /// How long start and restart wait for etcd to report healthy.
    pub(crate) fn start_timeout(&self) -> Duration {
        self.start_timeout
    }

    /// Spawns etcd with the current ports without waiting (the members of a cluster must all
    /// be running before any of them can report healthy).
    pub(crate) fn spawn(&mut self) -> Result<()> {
        let client_urls = std::iter::once(self.local_endpoint())
            .chain(self.listen_on.iter().map(|ip| self.client_url(*ip)))
            .collect::<Vec<_>>()
            .join(",");
        let (name, peer, initial_cluster) = match &self.member {
            Some(m) => {
                let peer = url(m.peer_ip, self.peer_port);
                (m.name.clone(), peer, m.initial_cluster.clone())
            }
            None => {
                let peer = url(IpAddr::from([127, 0, 0, 1]), self.peer_port);
                ("lab".to_string(), peer.clone(), format!("lab={peer}"))
            }
        };
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client_urls}"))
            .arg(format!("--advertise-client-urls={}", self.endpoints()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(m) = &self.member {
            cmd.arg(format!("--initial-cluster-token={}", m.token));
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert_auth {
                // etcd turns client authentication on whenever a trusted CA is given.
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", tls.ca.display()));
            }
            cmd.arg(format!("--cert-file={}", tls.server.cert.display()))
                .arg(format!("--key-file={}", tls.server.key.display()))
                .arg(format!(
                    "--listen-metrics-urls={}",
                    url(IpAddr::from([127, 0, 0, 1]), self.metrics_port)
                ));
        }
        let child = if self.new_session {
            Child::spawn_session(&self.netns, cmd, self.log_path.clone())?
        } else {
            Child::spawn_in_name(&self.netns, cmd, self.log_path.clone())?
        };
        self.child = Some(child);
        Ok(())
    }

    /// Waits (bounded) until etcd reports healthy; fails at once, quoting the log, if the process
    /// has exited, so a bad flag or a taken port does not cost the whole timeout.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.as_mut() {
                None => return Err(self.error("is not running")),
                Some(c) => {
                    if let Some(status) = c.try_status()? {
                        return Err(self.error(&format!("exited during start-up with {status}")));
                    }
                }
            }
            let last = match self.health() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(self.error(&format!(
                    "not healthy on port {} within {timeout:?} (last: {last})",
                    self.client_port
                )));
            }
            std::thread::sleep(Duration::from_millis(100).min(deadline - now));
        }
    }

    /// One `GET /health` over plain HTTP/1.0 from a thread inside etcd's namespace (on the
    /// metrics port when the client port speaks TLS).
    fn health(&self) -> std::result::Result<(), String> {
        let port = if self.tls.is_some() {
            self.metrics_port
        } else {
            self.client_port
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let path = Path::new(NETNS_DIR).join(&self.netns);
        let body = in_netns_thread(&path, move || -> std::io::Result<String> {
            let t = Duration::from_secs(2);
            let mut s = TcpStream::connect_timeout(&addr, t)?;
            s.set_read_timeout(Some(t))?;
            s.set_write_timeout(Some(t))?;
            s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut body = String::new();
            s.take(64 * 1024).read_to_string(&mut body)?;
            Ok(body)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.contains("\"health\":\"true\"") {
            Ok(())
        } else {
            Err(format!(
                "/health answered {:?}",
                body.lines().last().unwrap_or("")
            ))
        }
    }

    pub(crate) fn error(&self, reason: &str) -> LabError {
        LabError::Etcd {
            netns: self.netns.clone(),
            reason: reason.to_string(),
            log: self.log_path.clone(),
            tail: self.log_tail(LOG_TAIL_LINES),
        }
    }
}

/// What [`crate::EtcdCluster`] reads from the options it was given.
impl EtcdOptions {
    /// The chosen directory, if any.
    pub(crate) fn dir_path(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The address cluster members talk to each other on: the first `listen_on` address (the
    /// underlay), else loopback.
    pub(crate) fn peer_ip(&self) -> IpAddr {
        self.listen_on
            .first()
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("flannel-lab: stopping etcd in {}: {e}", self.netns);
        }
    }
}

pub(crate) fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}
