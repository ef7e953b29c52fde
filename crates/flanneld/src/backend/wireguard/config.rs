//! The `Backend` settings of net-conf.json for wireguard, parsed as leniently as Go does.

use flannel_types::NetConfig;
use flannel_wireguard::Secret;

use crate::backend::BackendError;

/// Upstream's default `ListenPort`.
pub const DEFAULT_PORT: u16 = 51820;
/// Upstream's default `ListenPortV6`.
pub const DEFAULT_PORT_V6: u16 = 51821;

/// How the devices are laid out and which address a peer is reached on (`Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One device per family (`flannel-wg`, `flannel-wg-v6`), each family over its own
    /// underlay family. Upstream's default.
    Separate,
    /// One device for both families; each peer reached over IPv4 unless IPv6 is likely to
    /// work better (see `peers::auto_endpoint`).
    Auto,
    /// One device, every peer reached over IPv4.
    Ipv4,
    /// One device, every peer reached over IPv6.
    Ipv6,
}

/// Which WireGuard implementation carries the packets (`Implementation`, a flannel-rs key;
/// Go ignores unknown keys, so upstream reads the same file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// The kernel's when the module is there, else ours in userspace.
    Auto,
    /// Only the kernel's: fail when the module is missing (upstream's behaviour).
    Kernel,
    /// Always ours, even where the kernel has WireGuard.
    Userspace,
}

/// The parsed `Backend` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    /// `ListenPort`: the UDP port of `flannel-wg`.
    pub listen_port: u16,
    /// `ListenPortV6`: the UDP port of `flannel-wg-v6` (separate mode).
    pub listen_port_v6: u16,
    /// `PSK`: an optional preshared key, the same on every node.
    pub psk: Option<Secret>,
    /// `PersistentKeepaliveInterval` in seconds, 0 = off.
    pub keepalive: u16,
    /// `Mode`.
    pub mode: Mode,
    /// `MTU`: the underlay MTU to derive the device MTU from; default the external
    /// interface's.
    pub mtu: Option<u32>,
    /// `Implementation` (flannel-rs).
    pub implementation: Implementation,
    /// `Queues` (flannel-rs, userspace only): worker count, default the CPU count up to 4.
    pub queues: Option<usize>,
    /// `Offload` (flannel-rs, userspace only): TSO/GSO/GRO batching, default true.
    pub offload: bool,
}

impl Default for WgConfig {
    fn default() -> Self {
        WgConfig {
            listen_port: DEFAULT_PORT,
            listen_port_v6: DEFAULT_PORT_V6,
            psk: None,
            keepalive: 0,
            mode: Mode::Separate,
            mtu: None,
            implementation: Implementation::Auto,
            queues: None,
            offload: true,
        }
    }
}

fn port(v: i64, key: &str) -> Result<u16, BackendError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| BackendError::Config(format!("Backend.{key} {v} is out of range 1..65535")))
}

impl WgConfig {
    /// Parses the `Backend` object: Go's case-insensitive keys, JSON types checked as
    /// `encoding/json` checks them, ranges checked with the key named.
    pub fn from_net_config(config: &NetConfig) -> Result<WgConfig, BackendError> {
        let bad = BackendError::ConfigJson;
        let mut c = WgConfig::default();
        let Some(obj) = config.backend_object().map_err(bad)? else {
            return Ok(c);
        };
        if let Some(v) = obj.int("ListenPort").map_err(bad)? {
            c.listen_port = port(v, "ListenPort")?;
        }
        if let Some(v) = obj.int("ListenPortV6").map_err(bad)? {
            c.listen_port_v6 = port(v, "ListenPortV6")?;
        }
        if let Some(s) = obj.string("PSK").map_err(bad)?
            && !s.is_empty()
        {
            c.psk = Some(
                Secret::from_base64(&s, "Backend.PSK")
                    .map_err(|e| BackendError::Config(e.to_string()))?,
            );
        }
        if let Some(v) = obj.int("PersistentKeepaliveInterval").map_err(bad)? {
            c.keepalive = u16::try_from(v).map_err(|_| {
                BackendError::Config(format!(
                    "Backend.PersistentKeepaliveInterval {v} is out of range 0..65535 (seconds)"
                ))
            })?;
        }
        if let Some(m) = obj.string("Mode").map_err(bad)? {
            // Go compares the exact string; an unknown one is upstream's error.
            c.mode = match m.as_str() {
                "separate" => Mode::Separate,
                "auto" => Mode::Auto,
                "ipv4" => Mode::Ipv4,
                "ipv6" => Mode::Ipv6,
                _ => {
                    return Err(BackendError::Config(format!(
                        "No valid Mode configured: {m:?} (expected separate, auto, ipv4 or ipv6)"
                    )));
                }
            };
        }
        if let Some(v) = obj.int("MTU").map_err(bad)? {
            c.mtu = Some(
                u32::try_from(v)
                    .ok()
                    .filter(|m| (1280 + 80..=65535).contains(m))
                    .ok_or_else(|| {
                        BackendError::Config(format!(
                            "Backend.MTU {v} is out of range 1360..65535 (the device gets MTU - 80, at least IPv6's 1280)"
                        ))
                    })?,
            );
        }
        if let Some(s) = obj.string("Implementation").map_err(bad)? {
            c.implementation = match s.as_str() {
                "" | "auto" => Implementation::Auto,
                "kernel" => Implementation::Kernel,
                "userspace" => Implementation::Userspace,
                _ => {
                    return Err(BackendError::Config(format!(
                        "Backend.Implementation {s:?}: expected auto, kernel or userspace"
                    )));
                }
            };
        }
        (c.queues, c.offload) = crate::backend::userspace_keys(&obj)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(backend: &str) -> Result<WgConfig, BackendError> {
        let json = format!(r#"{{"Network":"10.244.0.0/16","Backend":{backend}}}"#);
        WgConfig::from_net_config(&NetConfig::parse(&json).unwrap())
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = cfg(r#"{"Type":"wireguard"}"#).unwrap();
        assert_eq!(c, WgConfig::default());
        assert_eq!((c.listen_port, c.listen_port_v6), (51820, 51821));
        assert_eq!(c.mode, Mode::Separate);
    }

    #[test]
    fn keys_are_case_insensitive_as_in_go() {
        let psk = Secret::generate().to_base64();
        let c = cfg(&format!(
            r#"{{"type":"wireguard","listenport":5000,"LISTENPORTV6":5001,"psk":"{psk}","persistentKeepaliveInterval":25,"mode":"auto","mtu":9000}}"#
        ))
        .unwrap();
        assert_eq!((c.listen_port, c.listen_port_v6), (5000, 5001));
        assert_eq!(c.psk.unwrap().to_base64(), psk);
        assert_eq!(c.keepalive, 25);
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.mtu, Some(9000));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (b, want) in [
            (
                r#"{"Type":"wireguard","Mode":"both"}"#,
                "No valid Mode configured",
            ),
            (
                r#"{"Type":"wireguard","Mode":"Auto"}"#,
                "No valid Mode configured",
            ),
            (
                r#"{"Type":"wireguard","ListenPort":0}"#,
                "Backend.ListenPort 0",
            ),
            (
                r#"{"Type":"wireguard","ListenPortV6":70000}"#,
                "Backend.ListenPortV6 70000",
            ),
            (r#"{"Type":"wireguard","PSK":"short"}"#, "Backend.PSK"),
            (
                r#"{"Type":"wireguard","PersistentKeepaliveInterval":-1}"#,
                "PersistentKeepaliveInterval -1",
            ),
            (r#"{"Type":"wireguard","MTU":500}"#, "Backend.MTU 500"),
            (
                r#"{"Type":"wireguard","Implementation":"fast"}"#,
                "Backend.Implementation",
            ),
        ] {
            let e = cfg(b).unwrap_err().to_string();
            assert!(e.contains(want), "{b}: {e}");
        }
        // JSON types as Go checks them: a quoted number is not an int.
        let e = cfg(r#"{"Type":"wireguard","ListenPort":"51820"}"#).unwrap_err();
        assert!(e.to_string().contains("ListenPort"), "{e}");
        let e = cfg(r#"{"Type":"wireguard","PersistentKeepaliveInterval":2.5}"#).unwrap_err();
        assert!(e.to_string().contains("PersistentKeepaliveInterval"), "{e}");
    }

    #[test]
    fn the_psk_never_appears_in_errors_or_debug() {
        let psk = Secret::generate().to_base64();
        let c = cfg(&format!(r#"{{"Type":"wireguard","PSK":"{psk}"}}"#)).unwrap();
        assert!(!format!("{c:?}").contains(&psk));
        let e = cfg(r#"{"Type":"wireguard","PSK":"c2VjcmV0LXRleHQ="}"#).unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0LXRleHQ="), "{e}");
    }
}
