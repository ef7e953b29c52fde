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
        let mut peers: BTreeMap<Key, PeerState> = s
            .peers
            .drain(..)
            .map(|p| (p.config.public_key, p))
            .collect();
        if u.replace_peers {
            let named: Vec<Key> = u
                .peers
                .iter()
                .filter_map(|p| match p {
                    PeerUpdate::Upsert { config, .. } => Some(config.public_key),
                    PeerUpdate::Remove(_) => None,
                })
                .collect();
            peers.retain(|k, _| named.contains(k));
        }
        for p in &u.peers {
            match p {
                PeerUpdate::Remove(k) => {
                    peers.remove(k);
                }
                PeerUpdate::Upsert {
                    config,
                    replace_allowed_ips,
                } => {
                    let e = peers.entry(config.public_key).or_insert_with(|| PeerState {
                        config: PeerConfig {
                            allowed_ips: Vec::new(),
                            ..config.clone()
                        },
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    });
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

#[test]
fn partial_peer_sections_keep_what_they_do_not_name() {
    let s = sample_state();
    let body = format!("public_key={}\nallowed_ip=10.9.0.0/16\n", key(1).to_hex());
    let u = text::parse_set(&body).unwrap().resolve(&s);
    let PeerUpdate::Upsert {
        config,
        replace_allowed_ips,
    } = &u.peers[0]
    else {
        panic!("{u:?}")
    };
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
    let PeerUpdate::Upsert {
        config,
        replace_allowed_ips,
    } = &u.peers[0]
    else {
        panic!("{u:?}")
    };
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
            let _ = UnixStream::connect(&path).and_then(|mut s| s.write_all(&b));
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
