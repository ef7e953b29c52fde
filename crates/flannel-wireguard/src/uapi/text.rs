//! The control protocol's texts, parsed and written without any I/O.
//!
//! A `set=1` request is a *partial* update (a peer section names only the fields that change),
//! while a [`DeviceUpdate`] carries each upserted peer's whole configuration. So a parsed set
//! request ([`SetRequest`]) is resolved against the device's current state
//! ([`SetRequest::resolve`]) to become an update; the client side
//! ([`format_set`]) writes every field of an upsert, so a device driven by it ends up with
//! exactly the configuration asked for. Malformed input is an [`ParseError`], answered with
//! `errno=22` (EINVAL), never a panic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;

use crate::device::{DeviceState, DeviceUpdate, PeerConfig, PeerState, PeerUpdate};
use crate::key::{Key, Secret};

/// The errno answered to a malformed request, as wireguard-go and the kernel do.
pub const EINVAL: i32 = 22;

/// Why a request or an answer does not follow the protocol.
///
/// The reason never quotes the value of a private or preshared key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control protocol line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number within the request body or answer.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// One peer section of a `set=1` request, as sent: `None` fields were not named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRequest {
    /// `public_key=`: which peer.
    pub public_key: Key,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: change the peer only if it exists, never create it.
    pub update_only: bool,
    /// `preshared_key=`; all zeros means "no preshared key".
    pub preshared_key: Option<Secret>,
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=`.
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`: the listed allowed IPs replace the current ones.
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines, in order.
    pub allowed_ips: Vec<IpNet>,
}

/// A parsed `set=1` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetRequest {
    /// `private_key=`.
    pub private_key: Option<Secret>,
    /// `listen_port=`.
    pub listen_port: Option<u16>,
    /// `fwmark=`.
    pub fwmark: Option<u32>,
    /// `replace_peers=true`: every existing peer is removed first.
    pub replace_peers: bool,
    /// Peer sections in order (a key may appear more than once).
    pub peers: Vec<PeerRequest>,
}

fn err(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        reason: reason.into(),
    }
}

fn split_line(line: &str, n: usize) -> Result<(&str, &str), ParseError> {
    line.split_once('=')
        .ok_or_else(|| err(n, format!("expected key=value, got {:?}", cut(line))))
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn num<T: std::str::FromStr>(key: &str, value: &str, n: usize) -> Result<T, ParseError> {
    // Decimal digits only: `str::parse` would also accept a leading '+'.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(n, format!("{key}: not a number: {:?}", cut(value))));
    }
    value
        .parse()
        .map_err(|_| err(n, format!("{key}: out of range: {:?}", cut(value))))
}

fn flag(key: &str, value: &str, n: usize) -> Result<bool, ParseError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(err(
            n,
            format!("{key}: only \"true\" is valid, got {:?}", cut(value)),
        ))
    }
}

fn secret(key: &str, value: &str, n: usize) -> Result<Secret, ParseError> {
    Secret::from_hex(value, key).map_err(|_| err(n, format!("{key}: not 64 hex digits")))
}

fn public(key: &str, value: &str, n: usize) -> Result<Key, ParseError> {
    Key::from_hex(value, key).map_err(|_| err(n, format!("{key}: not 64 hex digits")))
}

fn endpoint(value: &str, n: usize) -> Result<SocketAddr, ParseError> {
    value
        .parse()
        .map_err(|_| err(n, format!("endpoint: not IP:port: {:?}", cut(value))))
}

fn allowed_ip(value: &str, n: usize) -> Result<IpNet, ParseError> {
    value
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| err(n, format!("allowed_ip: not an IP prefix: {:?}", cut(value))))
}

/// Parses the body of a `set=1` request: the lines after `set=1`, up to (not including) the
/// empty line that ends it. Device keys must come before the first `public_key=`, as in
/// wireguard-go; unknown keys are errors, since silently ignoring a setting is worse.
pub fn parse_set(body: &str) -> Result<SetRequest, ParseError> {
    let mut req = SetRequest::default();
    for (i, line) in body.lines().enumerate() {
        let n = i + 1;
        let (key, value) = split_line(line, n)?;
        if key == "public_key" {
            req.peers.push(PeerRequest {
                public_key: public(key, value, n)?,
                remove: false,
                update_only: false,
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: None,
                replace_allowed_ips: false,
                allowed_ips: Vec::new(),
            });
            continue;
        }
        match req.peers.last_mut() {
            None => device_line(&mut req, key, value, n)?,
            Some(peer) => peer_line(peer, key, value, n)?,
        }
    }
    Ok(req)
}

fn device_line(req: &mut SetRequest, key: &str, value: &str, n: usize) -> Result<(), ParseError> {
    match key {
        "private_key" => req.private_key = Some(secret(key, value, n)?),
        "listen_port" => req.listen_port = Some(num(key, value, n)?),
        "fwmark" => req.fwmark = Some(num(key, value, n)?),
        "replace_peers" => req.replace_peers = flag(key, value, n)?,
        _ => return Err(err(n, format!("unknown device key {:?}", cut(key)))),
    }
    Ok(())
}

fn peer_line(peer: &mut PeerRequest, key: &str, value: &str, n: usize) -> Result<(), ParseError> {
    match key {
        "remove" => peer.remove = flag(key, value, n)?,
        "update_only" => peer.update_only = flag(key, value, n)?,
        "preshared_key" => peer.preshared_key = Some(secret(key, value, n)?),
        "endpoint" => peer.endpoint = Some(endpoint(value, n)?),
        "persistent_keepalive_interval" => peer.persistent_keepalive = Some(num(key, value, n)?),
        "replace_allowed_ips" => peer.replace_allowed_ips = flag(key, value, n)?,
        "allowed_ip" => peer.allowed_ips.push(allowed_ip(value, n)?),
        "protocol_version" => {
            if value != "1" {
                return Err(err(
                    n,
                    format!("unsupported protocol_version {:?}", cut(value)),
                ));
            }
        }
        _ => return Err(err(n, format!("unknown peer key {:?}", cut(key)))),
    }
    Ok(())
}

fn nonzero(s: Secret) -> Option<Secret> {
    (s.bytes() != &[0u8; 32]).then_some(s)
}

impl SetRequest {
    /// Whether [`resolve`](Self::resolve) needs the device's current state (it does whenever
    /// a peer is added or changed, since the request names only what changes).
    pub fn needs_current(&self) -> bool {
        self.peers.iter().any(|p| !p.remove)
    }

    /// The update this request asks for, given the device's current state.
    ///
    /// Fields a peer section does not name keep their current values (or the defaults for a
    /// new peer); `update_only` sections for unknown peers are dropped; `replace_peers`
    /// starts from no peers at all, as the protocol defines it, so a peer named after it gets
    /// exactly the allowed IPs listed. Sections for the same key accumulate.
    pub fn resolve(self, current: &DeviceState) -> DeviceUpdate {
        let mut known: BTreeMap<Key, PeerConfig> = if self.replace_peers {
            BTreeMap::new()
        } else {
            current
                .peers
                .iter()
                .map(|p| (p.config.public_key, p.config.clone()))
                .collect()
        };
        let mut peers = Vec::with_capacity(self.peers.len());
        for p in self.peers {
            if p.remove {
                known.remove(&p.public_key);
                peers.push(PeerUpdate::Remove(p.public_key));
                continue;
            }
            let existing = known.get(&p.public_key);
            if p.update_only && existing.is_none() {
                continue;
            }
            let base = existing.cloned();
            let fresh = base.is_none();
            let base = base.unwrap_or(PeerConfig {
                public_key: p.public_key,
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: 0,
                allowed_ips: Vec::new(),
            });
            let replace = p.replace_allowed_ips || fresh;
            let mut after = base.clone();
            if let Some(psk) = p.preshared_key {
                after.preshared_key = nonzero(psk);
            }
            after.endpoint = p.endpoint.or(base.endpoint);
            after.persistent_keepalive =
                p.persistent_keepalive.unwrap_or(base.persistent_keepalive);
            after.allowed_ips = if replace {
                p.allowed_ips.clone()
            } else {
                let mut all = base.allowed_ips;
                for net in &p.allowed_ips {
                    if !all.contains(net) {
                        all.push(*net);
                    }
                }
                all
            };
            let config = PeerConfig {
                allowed_ips: p.allowed_ips,
                ..after.clone()
            };
            known.insert(p.public_key, after);
            peers.push(PeerUpdate::Upsert {
                config,
                replace_allowed_ips: replace,
            });
        }
        DeviceUpdate {
            private_key: self.private_key,
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            replace_peers: self.replace_peers,
            peers,
        }
    }
}

/// Writes the body of the answer to `get=1` (without the final `errno=` line), in the order
/// wireguard-go writes it. Zero counters and an absent handshake are written as zeros; an
/// absent preshared key as 64 zeros, as `wg` expects.
pub fn format_get(state: &DeviceState) -> String {
    let mut s = String::with_capacity(128 + state.peers.len() * 256);
    if let Some(k) = &state.private_key {
        let _ = writeln!(s, "private_key={}", k.to_hex());
    }
    let _ = writeln!(s, "listen_port={}", state.listen_port);
    if state.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", state.fwmark);
    }
    for p in &state.peers {
        let c = &p.config;
        let _ = writeln!(s, "public_key={}", c.public_key.to_hex());
        let psk = c
            .preshared_key
            .as_ref()
            .map_or_else(|| "0".repeat(64), Secret::to_hex);
        let _ = writeln!(s, "preshared_key={psk}");
        s.push_str("protocol_version=1\n");
        if let Some(ep) = c.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let since = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            c.persistent_keepalive
        );
        for net in &c.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s
}

/// The final lines of every answer: `errno=N` and the empty line.
pub fn format_errno(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

/// Writes a whole `set=1` request for `update`, ending with the empty line. Every field of
/// an upserted peer is written (an absent preshared key as zeros, which removes one), so the
/// device ends up with exactly that configuration; an absent endpoint is left as it is,
/// because the protocol cannot clear one.
pub fn format_set(update: &DeviceUpdate) -> String {
    let mut s = String::with_capacity(64 + update.peers.len() * 256);
    s.push_str("set=1\n");
    if let Some(k) = &update.private_key {
        let _ = writeln!(s, "private_key={}", k.to_hex());
    }
    if let Some(port) = update.listen_port {
        let _ = writeln!(s, "listen_port={port}");
    }
    if let Some(mark) = update.fwmark {
        let _ = writeln!(s, "fwmark={mark}");
    }
    if update.replace_peers {
        s.push_str("replace_peers=true\n");
    }
    for p in &update.peers {
        match p {
            PeerUpdate::Remove(key) => {
                let _ = writeln!(s, "public_key={}\nremove=true", key.to_hex());
            }
            PeerUpdate::Upsert {
                config: c,
                replace_allowed_ips,
            } => {
                let _ = writeln!(s, "public_key={}", c.public_key.to_hex());
                let psk = c
                    .preshared_key
                    .as_ref()
                    .map_or_else(|| "0".repeat(64), Secret::to_hex);
                let _ = writeln!(s, "preshared_key={psk}");
                if let Some(ep) = c.endpoint {
                    let _ = writeln!(s, "endpoint={ep}");
                }
                let _ = writeln!(
                    s,
                    "persistent_keepalive_interval={}",
                    c.persistent_keepalive
                );
                if *replace_allowed_ips {
                    s.push_str("replace_allowed_ips=true\n");
                }
                for net in &c.allowed_ips {
                    let _ = writeln!(s, "allowed_ip={net}");
                }
            }
        }
    }
    s.push('\n');
    s
}

/// Parses the answer to `get=1`: its lines up to (not including) the empty line, the last
/// of which is `errno=N`. Returns the device and the errno; unknown keys are skipped, so a
/// newer implementation's extra fields do not break us.
pub fn parse_get(answer: &str) -> Result<(DeviceState, i32), ParseError> {
    let mut state = DeviceState::default();
    let mut errno = None;
    let mut handshake: (u64, u32) = (0, 0);
    for (i, line) in answer.lines().enumerate() {
        let n = i + 1;
        if errno.is_some() {
            return Err(err(n, "lines after errno="));
        }
        let (key, value) = split_line(line, n)?;
        if key == "errno" {
            errno = Some(parse_errno(value, n)?);
            continue;
        }
        if key == "public_key" {
            finish_handshake(&mut state, &mut handshake);
            state.peers.push(PeerState {
                config: PeerConfig {
                    public_key: public(key, value, n)?,
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: 0,
                    allowed_ips: Vec::new(),
                },
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            });
            continue;
        }
        match state.peers.last_mut() {
            None => match key {
                "private_key" => state.private_key = nonzero(secret(key, value, n)?),
                "listen_port" => state.listen_port = num(key, value, n)?,
                "fwmark" => state.fwmark = num(key, value, n)?,
                _ => {}
            },
            Some(p) => match key {
                "preshared_key" => p.config.preshared_key = nonzero(secret(key, value, n)?),
                "endpoint" => p.config.endpoint = Some(endpoint(value, n)?),
                "persistent_keepalive_interval" => {
                    p.config.persistent_keepalive = num(key, value, n)?;
                }
                "allowed_ip" => p.config.allowed_ips.push(allowed_ip(value, n)?),
                "rx_bytes" => p.rx_bytes = num(key, value, n)?,
                "tx_bytes" => p.tx_bytes = num(key, value, n)?,
                "last_handshake_time_sec" => handshake.0 = num(key, value, n)?,
                "last_handshake_time_nsec" => {
                    handshake.1 = num(key, value, n)?;
                    if handshake.1 >= 1_000_000_000 {
                        return Err(err(n, "last_handshake_time_nsec: over one second"));
                    }
                }
                _ => {}
            },
        }
    }
    finish_handshake(&mut state, &mut handshake);
    let errno = errno.ok_or_else(|| err(answer.lines().count() + 1, "no errno= line"))?;
    Ok((state, errno))
}

fn finish_handshake(state: &mut DeviceState, hs: &mut (u64, u32)) {
    if let Some(p) = state.peers.last_mut()
        && *hs != (0, 0)
    {
        p.last_handshake = UNIX_EPOCH.checked_add(Duration::new(hs.0, hs.1));
    }
    *hs = (0, 0);
}

/// Parses an `errno=` value; wireguard-go writes negative numbers, the protocol's
/// description positive ones, so the sign is dropped.
pub fn parse_errno(value: &str, n: usize) -> Result<i32, ParseError> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    num::<i32>("errno", digits, n)
}
