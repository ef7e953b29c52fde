//! Tests of the control protocol: texts, the server under `wg`, garbage.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use super::text::{self, EINVAL};
use crate::device::{
    DeviceState, DeviceUpdate, PeerConfig, PeerState, PeerUpdate, WgDevice, WgError,
};
use crate::key::{Key, Secret};

/// An in-memory device with the update semantics of [`crate::device`]'s docs.
pub(crate) struct MemDevice {
    pub name: String,
    pub state: Mutex<DeviceState>,
    pub sets: Mutex<Vec<DeviceUpdate>>,
}

impl MemDevice {
    pub fn new(name: &str) -> MemDevice {
        MemDevice {
            name: name.to_string(),
            state: Mutex::default(),
            sets: Mutex::default(),
        }
    }
}

impl WgDevice for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn get(&self) -> Result<DeviceState, WgError> {
        Ok(self.state.lock().unwrap().clone())
    }
    fn set(&self, u: &DeviceUpdate) -> Result<(), WgError> {
        self.sets.lock().unwrap().push(u.clone());
        let mut s = self.state.lock().unwrap();
        if let Some(k) = &u.private_key {
            s.private_key = Some(k.clone());
        }
        if let Some(p) = u.listen_port {
            s.listen_port = p;
        }
        if let Some(m) = u.fwmark {
            s.fwmark = m;
        }
        // Replacing keeps the named peers: the documented semantics, by explicit removals.
        let u = crate::replace::explicit_removals(u, &s);
        let mut peers: BTreeMap<Key, PeerState> = s
            .peers
            .drain(..)
            .map(|p| (p.config.public_key, p))
            .collect();
        for p in &u.peers {
            match p {
                PeerUpdate::Remove(k) => {
                    peers.remove(k);
                }
                PeerUpdate::Upsert {
                    config,
                    replace_allowed_ips,
                } => {
                    let e = peers
                        .entry(config.public_key)
                        .or_insert_with(|| PeerState::new(PeerConfig::new(config.public_key)));
                    let old = std::mem::take(&mut e.config.allowed_ips);
                    e.config.preshared_key = config.preshared_key.clone();
                    e.config.endpoint = config.endpoint.or(e.config.endpoint);
                    e.config.persistent_keepalive = config.persistent_keepalive;
                    e.config.allowed_ips = if *replace_allowed_ips {
                        Vec::new()
                    } else {
                        old
                    };
                    for n in &config.allowed_ips {
                        if !e.config.allowed_ips.contains(n) {
                            e.config.allowed_ips.push(*n);
                        }
                    }
                }
            }
        }
        s.peers = peers.into_values().collect();
        Ok(())
    }
}

pub(crate) fn key(n: u8) -> Key {
    Secret::from_bytes([n; 32]).public_key()
}

pub(crate) fn peer(n: u8, ips: &[&str]) -> PeerConfig {
    PeerConfig {
        public_key: key(n),
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: 0,
        allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

fn sample_state() -> DeviceState {
    let mut a = peer(1, &["10.5.1.0/24", "fd00:1::/64"]);
    a.preshared_key = Some(Secret::from_bytes([9; 32]));
    a.endpoint = Some("192.0.2.1:51820".parse().unwrap());
    a.persistent_keepalive = 25;
    let mut b = peer(2, &["10.5.2.0/24"]);
    b.endpoint = Some("[2001:db8::2]:51821".parse().unwrap());
    DeviceState {
        private_key: Some(Secret::from_bytes([7; 32])),
        listen_port: 51820,
        fwmark: 0x1234,
        peers: vec![
            PeerState {
                config: a,
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
                rx_bytes: 1000,
                tx_bytes: 2000,
            },
            PeerState {
                config: b,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            },
        ],
    }
}

#[test]
fn get_answer_round_trips() {
    let s = sample_state();
    let body = text::format_get(&s);
    assert!(body.contains("endpoint=[2001:db8::2]:51821\n"), "{body}");
    assert!(body.contains("fwmark=4660\n"), "{body}");
    assert!(
        body.contains(&format!("preshared_key={}\n", "0".repeat(64))),
        "{body}"
    );
    let (back, errno) = text::parse_get(&format!("{body}errno=0\n")).unwrap();
    assert_eq!(errno, 0);
    assert_eq!(back, s);
    let (_, errno) = text::parse_get("errno=-22\n").unwrap();
    assert_eq!(errno, 22);
    assert!(
        text::parse_get(&body).is_err(),
        "an answer without errno= is incomplete"
    );
}

#[test]
fn set_request_round_trips_through_resolve() {
    let s = sample_state();
    let update = DeviceUpdate {
        private_key: Some(Secret::from_bytes([3; 32])),
        listen_port: Some(51830),
        fwmark: Some(0),
        replace_peers: false,
        peers: vec![
            PeerUpdate::Upsert {
                config: sample_state().peers[0].config.clone(),
                replace_allowed_ips: true,
            },
            PeerUpdate::Remove(key(2)),
        ],
    };
    let req = text::format_set(&update);
    assert!(req.starts_with("set=1\n") && req.ends_with("\n\n"));
    let body = req
        .strip_prefix("set=1\n")
        .unwrap()
        .strip_suffix("\n")
        .unwrap();
    let parsed = text::parse_set(body).unwrap();
    assert_eq!(parsed.resolve(&s), update);
}

fn first_upsert(u: &DeviceUpdate) -> (&PeerConfig, bool) {
    match &u.peers[0] {
        PeerUpdate::Upsert {
            config,
            replace_allowed_ips,
        } => (config, *replace_allowed_ips),
        PeerUpdate::Remove(_) => panic!("{u:?}"),
    }
}

#[test]
fn partial_peer_sections_keep_what_they_do_not_name() {
    let s = sample_state();
    let body = format!("public_key={}\nallowed_ip=10.9.0.0/16\n", key(1).to_hex());
    let u = text::parse_set(&body).unwrap().resolve(&s);
    let (config, replace_allowed_ips) = first_upsert(&u);
    assert!(!replace_allowed_ips);
    assert_eq!(
        config.allowed_ips,
        vec!["10.9.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(config.persistent_keepalive, 25);
    assert_eq!(config.preshared_key, Some(Secret::from_bytes([9; 32])));
    assert_eq!(config.endpoint, s.peers[0].config.endpoint);
    // A zero preshared key removes it; host bits of allowed IPs are dropped.
    let body = format!(
        "public_key={}\npreshared_key={}\nreplace_allowed_ips=true\nallowed_ip=10.9.1.7/16\n",
        key(1).to_hex(),
        "0".repeat(64)
    );
    let u = text::parse_set(&body).unwrap().resolve(&s);
    let (config, replace_allowed_ips) = first_upsert(&u);
    assert!(replace_allowed_ips);
    assert_eq!(config.preshared_key, None);
    assert_eq!(
        config.allowed_ips,
        vec!["10.9.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
}

#[test]
fn update_only_and_replace_peers() {
    let s = sample_state();
    let body = format!(
        "public_key={}\nupdate_only=true\npersistent_keepalive_interval=5\npublic_key={}\nupdate_only=true\nallowed_ip=10.7.0.0/24\n",
        key(1).to_hex(),
        key(3).to_hex()
    );
    let u = text::parse_set(&body).unwrap().resolve(&s);
    assert_eq!(
        u.peers.len(),
        1,
        "an update_only section for an unknown peer is dropped: {u:?}"
    );
    assert!(
        matches!(&u.peers[0], PeerUpdate::Upsert { config, .. } if config.public_key == key(1) && config.persistent_keepalive == 5)
    );
    // After replace_peers every peer is new: its fields are defaults, its allowed IPs exact.
    let body = format!(
        "replace_peers=true\npublic_key={}\nallowed_ip=10.8.0.0/24\n",
        key(1).to_hex()
    );
    let u = text::parse_set(&body).unwrap().resolve(&s);
    assert!(u.replace_peers);
    assert_eq!(
        u.peers,
        vec![PeerUpdate::Upsert {
            config: peer(1, &["10.8.0.0/24"]),
            replace_allowed_ips: true
        }]
    );
    // Sections for the same peer accumulate.
    let body = format!(
        "public_key={k}\npersistent_keepalive_interval=7\npublic_key={k}\nallowed_ip=10.6.0.0/24\n",
        k = key(4).to_hex()
    );
    let u = text::parse_set(&body)
        .unwrap()
        .resolve(&DeviceState::default());
    assert!(
        matches!(&u.peers[1], PeerUpdate::Upsert { config, replace_allowed_ips: false } if config.persistent_keepalive == 7)
    );
}

#[test]
fn malformed_requests_are_errors() {
    let k = key(1).to_hex();
    let bad = [
        "listen_port=70000".to_string(),
        "listen_port=-1".to_string(),
        "listen_port=+5".to_string(),
        "fwmark=".to_string(),
        "private_key=abc".to_string(),
        "replace_peers=false".to_string(),
        "nonsense".to_string(),
        "unknown_key=1".to_string(),
        "remove=true".to_string(),
        format!("public_key={k}\nlisten_port=5"),
        format!("public_key={k}\nendpoint=10.0.0.1"),
        format!("public_key={k}\nendpoint=[::1:5"),
        format!("public_key={k}\nallowed_ip=10.0.0.0/33"),
        format!("public_key={k}\nprotocol_version=2"),
        format!("public_key={k}\npersistent_keepalive_interval=65536"),
        format!("public_key={}", &k[..63]),
        format!("public_key={k}\npreshared_key=secretsecret"),
    ];
    for b in &bad {
        let e = text::parse_set(b).expect_err(b);
        assert!(!e.to_string().contains("secretsecret"), "{e}");
    }
}

/// A small deterministic generator (no test-only dependency needed).
pub(crate) struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn garbage_never_panics() {
    let valid = text::format_set(&DeviceUpdate {
        private_key: Some(Secret::from_bytes([3; 32])),
        listen_port: Some(1),
        fwmark: Some(2),
        replace_peers: true,
        peers: vec![PeerUpdate::Upsert {
            config: sample_state().peers[0].config.clone(),
            replace_allowed_ips: true,
        }],
    });
    let answer = format!("{}errno=0\n", text::format_get(&sample_state()));
    let mut rng = Lcg(42);
    let alphabet = b"=\n:[]/.-0123456789abcdefxyz_ \xff";
    let mut rejected = 0;
    for round in 0..20_000 {
        let src = if round % 2 == 0 {
            valid.as_bytes()
        } else {
            answer.as_bytes()
        };
        let mut b = src.to_vec();
        for _ in 0..(1 + rng.next() % 4) {
            let i = (rng.next() as usize) % b.len();
            match rng.next() % 3 {
                0 => b[i] = alphabet[(rng.next() as usize) % alphabet.len()],
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, alphabet[(rng.next() as usize) % alphabet.len()]),
            }
        }
        let t = String::from_utf8_lossy(&b);
        let set = text::parse_set(&t);
        let get = text::parse_get(&t);
        if set.is_err() && get.is_err() {
            rejected += 1;
        }
        if let Ok(r) = set {
            let _ = r.resolve(&sample_state());
        }
    }
    assert!(
        rejected > 10_000,
        "mutations should mostly be rejected: {rejected}"
    );
}

mod server {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::uapi::{SOCKET_DIR, UapiClient, UapiServer, socket_path};

    static SEQ: AtomicU32 = AtomicU32::new(0);

    /// A unique device name (interface names are at most 15 bytes).
    pub(crate) fn unique(prefix: &str) -> String {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let s = format!("{prefix}{}{n}", std::process::id() % 100_000);
        assert!(s.len() <= 15, "{s}");
        s
    }

    fn start(name: &str) -> (Arc<MemDevice>, UapiServer, PathBuf) {
        let dev = Arc::new(MemDevice::new(name));
        let path = socket_path(Path::new(SOCKET_DIR), name);
        let server = UapiServer::start(&path, dev.clone()).unwrap();
        (dev, server, path)
    }

    fn wg(args: &[&str]) -> String {
        let out = Command::new("wg").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "wg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Sends raw text on one connection and reads `answers` answers (each up to its empty line).
    fn raw(path: &Path, request: &[u8], answers: usize) -> Vec<String> {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut r = BufReader::new(s);
        let mut out = Vec::new();
        for _ in 0..answers {
            let mut a = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line == "\n" {
                    break;
                }
                a.push_str(&line);
            }
            out.push(a);
        }
        out
    }

    #[test]
    fn wg_show_reads_the_device() {
        let name = unique("flrswgc");
        let (dev, server, path) = start(&name);
        *dev.state.lock().unwrap() = sample_state();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dump = wg(&["show", &name, "dump"]);
        let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
        let s = sample_state();
        assert_eq!(
            lines[0],
            vec![
                s.private_key.as_ref().unwrap().to_base64().as_str(),
                s.public_key().unwrap().to_base64().as_str(),
                "51820",
                "0x1234"
            ]
        );
        assert_eq!(lines.len(), 3, "{dump}");
        let a = lines.iter().find(|l| l[0] == key(1).to_base64()).unwrap();
        assert_eq!(a[1], Secret::from_bytes([9; 32]).to_base64());
        assert_eq!(a[2], "192.0.2.1:51820");
        assert_eq!(a[3], "10.5.1.0/24,fd00:1::/64");
        assert_eq!(&a[4..], ["1700000000", "1000", "2000", "25"]);
        let b = lines.iter().find(|l| l[0] == key(2).to_base64()).unwrap();
        assert_eq!(
            &b[1..],
            [
                "(none)",
                "[2001:db8::2]:51821",
                "10.5.2.0/24",
                "0",
                "0",
                "0",
                "off"
            ]
        );
        drop(server);
        assert!(!path.exists(), "drop removes the socket");
    }

    #[test]
    fn wg_set_configures_the_device() {
        let name = unique("flrswgc");
        let (dev, _server, _path) = start(&name);
        let dir = tempfile::tempdir().unwrap();
        let pk = dir.path().join("pk");
        let psk = dir.path().join("psk");
        std::fs::write(&pk, Secret::from_bytes([5; 32]).to_base64()).unwrap();
        std::fs::write(&psk, Secret::from_bytes([6; 32]).to_base64()).unwrap();
        let k1 = key(1).to_base64();
        let (pk, psk) = (pk.to_str().unwrap(), psk.to_str().unwrap());
        #[rustfmt::skip]
        wg(&["set", &name, "listen-port", "51999", "fwmark", "0x99", "private-key", pk,
             "peer", &k1, "preshared-key", psk, "endpoint", "[2001:db8::9]:4000",
             "persistent-keepalive", "15", "allowed-ips", "10.1.0.0/24,fd00:9::/64"]);
        let s = dev.state.lock().unwrap().clone();
        assert_eq!(s.private_key, Some(Secret::from_bytes([5; 32])));
        assert_eq!((s.listen_port, s.fwmark), (51999, 0x99));
        let mut want = peer(1, &["10.1.0.0/24", "fd00:9::/64"]);
        want.preshared_key = Some(Secret::from_bytes([6; 32]));
        want.endpoint = Some("[2001:db8::9]:4000".parse().unwrap());
        want.persistent_keepalive = 15;
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers[0].config, want);
        // `allowed-ips` on the command line replaces; keepalive and PSK stay.
        wg(&["set", &name, "peer", &k1, "allowed-ips", "10.2.0.0/24"]);
        want.allowed_ips = vec!["10.2.0.0/24".parse().unwrap()];
        assert_eq!(dev.state.lock().unwrap().peers[0].config, want);
        wg(&["set", &name, "peer", &k1, "remove"]);
        assert!(dev.state.lock().unwrap().peers.is_empty());
    }

    #[test]
    fn several_requests_per_connection_and_garbage() {
        let name = unique("flrswgc");
        let (dev, _server, path) = start(&name);
        let set = text::format_set(&DeviceUpdate {
            listen_port: Some(4242),
            ..DeviceUpdate::default()
        });
        let req = format!("{set}get=1\n\nset=1\nbogus\n\nget=1\nx=y\n\n{set}");
        let a = raw(&path, req.as_bytes(), 5);
        assert_eq!(a[0], "errno=0\n");
        assert!(
            a[1].contains("listen_port=4242\n") && a[1].ends_with("errno=0\n"),
            "{a:?}"
        );
        assert_eq!(a[2], format!("errno={EINVAL}\n"));
        assert_eq!(a[3], format!("errno={EINVAL}\n"));
        assert_eq!(a[4], "errno=0\n");
        assert_eq!(
            dev.sets.lock().unwrap().len(),
            2,
            "invalid requests change nothing"
        );
        // Not UTF-8.
        assert_eq!(
            raw(&path, b"set=1\nlisten_port=\xff\n\n", 1)[0],
            format!("errno={EINVAL}\n")
        );
        // An unknown operation closes the connection without an answer.
        assert_eq!(raw(&path, b"del=1\n\n", 1)[0], "");
        // A line over the limit is refused and the connection closed.
        let mut long = b"set=1\nlisten_port=".to_vec();
        long.extend(std::iter::repeat_n(b'1', 10_000));
        let a = raw(&path, &long, 2);
        assert_eq!(a, vec![format!("errno={EINVAL}\n"), String::new()]);
        // Random bytes: the server survives and still answers.
        let mut rng = Lcg(7);
        for _ in 0..50 {
            let mut b = b"set=1\n".to_vec();
            b.extend((0..200).map(|_| (rng.next() % 256) as u8));
            b.extend_from_slice(b"\n\n");
            // Wait for the server to finish with each, so they do not pile up past the
            // connection limit.
            let _ = UnixStream::connect(&path).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(&b)?;
                s.shutdown(std::net::Shutdown::Write)?;
                std::io::copy(&mut s, &mut std::io::sink())
            });
        }
        let a = raw(&path, b"get=1\n\n", 1);
        assert!(a[0].contains("listen_port=4242\n"), "{a:?}");
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("run/wireguard");
        let path = sub.join("flrs0.sock");
        let dev = Arc::new(MemDevice::new("flrs0"));
        // The directory is created 0755.
        let live = UapiServer::start(&path, dev.clone()).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let e = UapiServer::start(&path, dev.clone()).unwrap_err();
        assert!(
            matches!(&e, WgError::Io { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
            "{e}"
        );
        drop(live);
        // A socket nobody listens on (a crashed process's) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _server = UapiServer::start(&path, dev.clone()).unwrap();
        let c = UapiClient::new("flrs0", &sub);
        assert_eq!(c.get().unwrap(), DeviceState::default());
        assert!(matches!(
            UapiClient::new("nope", &sub).get(),
            Err(WgError::NoDevice(_))
        ));
        // Nothing but the socket is left behind in the directory.
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("flrs0.sock")]);
    }

    struct Refusing;
    impl WgDevice for Refusing {
        fn name(&self) -> &str {
            "refusing"
        }
        fn get(&self) -> Result<DeviceState, WgError> {
            Err(WgError::NoDevice("refusing".into()))
        }
        fn set(&self, _: &DeviceUpdate) -> Result<(), WgError> {
            Err(WgError::Kernel {
                dev: "refusing".into(),
                op: "set device",
                errno: nix::errno::Errno::EPERM,
            })
        }
    }

    #[test]
    fn device_errors_reach_the_client_as_errnos() {
        let dir = tempfile::tempdir().unwrap();
        let _server =
            UapiServer::start(&dir.path().join("refusing.sock"), Arc::new(Refusing)).unwrap();
        let c = UapiClient::new("refusing", dir.path());
        let e = c.set(&DeviceUpdate::default()).unwrap_err();
        assert!(matches!(e, WgError::Refused { errno: 1, .. }), "{e}");
        let e = c.get().unwrap_err();
        assert!(
            matches!(
                e,
                WgError::Refused {
                    errno: libc::ENODEV,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn drop_closes_idle_connections() {
        let name = unique("flrswgc");
        let (_dev, server, path) = start(&name);
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"get=1\n\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let t = std::time::Instant::now();
        drop(server);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop waited {:?}",
            t.elapsed()
        );
        assert!(!path.exists());
    }
}

/// [`UapiClient`](crate::uapi::UapiClient) against the independent implementation,
/// wireguard-go, and our request resolution checked against its behaviour.
mod wireguard_go {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Instant;

    use super::server::unique;
    use super::*;
    use crate::uapi::{SOCKET_DIR, UapiClient, UapiServer, socket_path};

    /// wireguard-go in a fresh namespace; dropping it stops the process and removes the socket.
    struct WgGo {
        child: Option<flannel_lab::Child>,
        _ns: flannel_lab::Netns,
        _logs: tempfile::TempDir,
        sock: PathBuf,
        client: UapiClient,
    }

    impl Drop for WgGo {
        fn drop(&mut self) {
            drop(self.child.take());
            let _ = std::fs::remove_file(&self.sock);
        }
    }

    fn wireguard_go() -> WgGo {
        let name = unique("flrswgg");
        let ns = flannel_lab::Netns::new("wgc").unwrap();
        let logs = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("wireguard-go");
        cmd.args(["-f", &name]);
        let child = flannel_lab::spawn_in(&ns, cmd, logs.path().join("wg.log")).unwrap();
        let sock = socket_path(Path::new(SOCKET_DIR), &name);
        let wg = WgGo {
            child: Some(child),
            _ns: ns,
            _logs: logs,
            sock,
            client: UapiClient::new(&name, Path::new(SOCKET_DIR)),
        };
        let t = Instant::now();
        while wg.client.get().is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "wireguard-go did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        wg
    }

    /// A device's configuration in a comparable order (wireguard-go lists peers from a map).
    fn normal(mut s: DeviceState) -> DeviceState {
        s.peers.sort_by_key(|p| p.config.public_key);
        for p in &mut s.peers {
            p.config.allowed_ips.sort();
        }
        s
    }

    fn upsert(c: &PeerConfig, replace: bool) -> PeerUpdate {
        PeerUpdate::Upsert {
            config: c.clone(),
            replace_allowed_ips: replace,
        }
    }

    fn configs(s: &DeviceState) -> Vec<PeerConfig> {
        normal(s.clone())
            .peers
            .into_iter()
            .map(|p| p.config)
            .collect()
    }

    #[test]
    fn client_configures_wireguard_go() {
        let wg = wireguard_go();
        let c = &wg.client;
        let mut a = peer(1, &["10.1.0.0/24", "fd00:1::/64"]);
        a.preshared_key = Some(Secret::from_bytes([8; 32]));
        a.endpoint = Some("192.0.2.10:51820".parse().unwrap());
        a.persistent_keepalive = 25;
        let mut b = peer(2, &["10.2.0.0/24"]);
        b.endpoint = Some("[2001:db8::2]:51821".parse().unwrap());
        // A clamped private key, as wireguard-go stores keys clamped.
        let private = Secret::generate();
        c.set(&DeviceUpdate {
            private_key: Some(private.clone()),
            listen_port: Some(40123),
            fwmark: Some(77),
            replace_peers: false,
            peers: vec![upsert(&a, true), upsert(&b, true)],
        })
        .unwrap();
        let got = c.get().unwrap();
        assert_eq!(got.private_key, Some(private.clone()));
        assert_eq!(got.public_key(), Some(private.public_key()));
        assert_eq!((got.listen_port, got.fwmark), (40123, 77));
        let mut want = vec![a.clone(), b.clone()];
        want.sort_by_key(|p| p.public_key);
        for p in &mut want {
            p.allowed_ips.sort();
        }
        assert_eq!(configs(&got), want);
        assert!(got.peers.iter().all(|p| p.last_handshake.is_none()));

        // Without replace_allowed_ips the allowed IPs are added; with it they are replaced;
        // a missing preshared key removes it.
        let mut a2 = peer(1, &["10.3.0.0/24"]);
        a2.endpoint = a.endpoint;
        a2.persistent_keepalive = 0;
        c.set(&DeviceUpdate {
            peers: vec![upsert(&a2, false)],
            ..DeviceUpdate::default()
        })
        .unwrap();
        let got = c.get().unwrap();
        let pa = configs(&got)
            .into_iter()
            .find(|p| p.public_key == key(1))
            .unwrap();
        assert_eq!(pa.allowed_ips.len(), 3, "{pa:?}");
        assert_eq!((pa.preshared_key, pa.persistent_keepalive), (None, 0));
        c.set(&DeviceUpdate {
            peers: vec![upsert(&a2, true), PeerUpdate::Remove(key(2))],
            ..DeviceUpdate::default()
        })
        .unwrap();
        assert_eq!(configs(&c.get().unwrap()), vec![a2.clone()]);

        // replace_peers: only the named peers remain.
        let d = peer(3, &["10.4.0.0/24"]);
        c.set(&DeviceUpdate {
            replace_peers: true,
            peers: vec![upsert(&d, true)],
            ..DeviceUpdate::default()
        })
        .unwrap();
        assert_eq!(configs(&c.get().unwrap()), vec![d]);
    }

    /// The same raw `set=1` requests sent to wireguard-go and to our server in front of an
    /// in-memory device leave both with the same configuration: our resolution of partial
    /// updates, update_only, replace_peers and replace_allowed_ips follows the reference.
    #[test]
    fn server_resolves_requests_as_wireguard_go_does() {
        let wg = wireguard_go();
        let name = unique("flrswgm");
        let mem = Arc::new(MemDevice::new(&name));
        let path = socket_path(Path::new(SOCKET_DIR), &name);
        let _server = UapiServer::start(&path, mem.clone()).unwrap();
        let ours = UapiClient::new(&name, Path::new(SOCKET_DIR));
        let (k1, k2, k3) = (key(1).to_hex(), key(2).to_hex(), key(3).to_hex());
        let psk = Secret::from_bytes([5; 32]).to_hex();
        let zero = "0".repeat(64);
        let steps = [
            format!(
                "private_key={}\nlisten_port=40999\npublic_key={k1}\nendpoint=192.0.2.1:1\nallowed_ip=10.1.0.0/24\npublic_key={k2}\npreshared_key={psk}\npersistent_keepalive_interval=9\nallowed_ip=10.2.0.0/24\n",
                Secret::from_bytes([4; 32]).to_hex()
            ),
            format!(
                "public_key={k1}\nallowed_ip=10.1.1.0/24\npublic_key={k2}\nendpoint=[2001:db8::5]:7\n"
            ),
            format!(
                "public_key={k3}\nupdate_only=true\nallowed_ip=10.3.0.0/24\npublic_key={k2}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=10.2.2.0/24\n"
            ),
            format!(
                "public_key={k2}\npreshared_key={zero}\npersistent_keepalive_interval=0\npublic_key={k1}\nremove=true\n"
            ),
            format!(
                "replace_peers=true\npublic_key={k3}\nallowed_ip=10.3.0.0/24\npublic_key={k2}\nupdate_only=true\nallowed_ip=10.9.0.0/24\n"
            ),
            format!(
                "public_key={k3}\nallowed_ip=10.3.0.0/24\nallowed_ip=10.3.0.0/24\npublic_key={k3}\npersistent_keepalive_interval=3\n"
            ),
        ];
        for (i, body) in steps.iter().enumerate() {
            let req = format!("set=1\n{body}\n");
            for sock in [&wg.sock, &path] {
                let a = exchange(sock, &req);
                assert_eq!(a, "errno=0\n", "step {i} on {sock:?}");
            }
            let theirs = normal(wg.client.get().unwrap());
            let mine = normal(ours.get().unwrap());
            assert_eq!(configs(&mine), configs(&theirs), "step {i}");
            assert_eq!(mine.listen_port, theirs.listen_port);
        }
        // Both refuse the same garbage.
        for bad in ["listen_port=x\n", "public_key=00\n", "bogus=1\n"] {
            let req = format!("set=1\n{bad}\n");
            assert_eq!(exchange(&path, &req), "errno=22\n");
            assert_ne!(
                exchange(&wg.sock, &req),
                "errno=0\n",
                "wireguard-go accepted {bad:?}"
            );
        }
    }

    fn exchange(sock: &Path, req: &str) -> String {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut a = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 || line == "\n" {
                return a;
            }
            a.push_str(&line);
        }
    }
}
