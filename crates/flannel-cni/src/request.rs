//! One invocation as the runtime describes it: the `CNI_*` environment and the netconf on
//! stdin, read and validated before any command runs (the checks of libcni 1.3's skel, with its
//! messages, and spec error codes where libcni has its catch-all).

use std::io::{self, Read};

use flannel_types::gojson::{GoJsonError, GoObject};

use crate::error::{
    CniError, Coded, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV, IO_FAILURE,
    clip,
};

/// Every spec version this plugin speaks (upstream's `cni.All`).
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
/// The newest spec version, reported by VERSION.
pub const CURRENT_VERSION: &str = "1.1.0";
/// The most stdin this plugin reads; a netconf is a few hundred bytes.
pub const MAX_STDIN: usize = 1024 * 1024;
/// Longest container ID: it becomes a file name.
pub const MAX_CONTAINER_ID: usize = 255;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The CNI commands (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Remove state of attachments the runtime no longer knows (CNI 1.1).
    Gc,
    /// Report readiness to ADD (CNI 1.1).
    Status,
}

impl Command {
    /// The command named by `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// The lowest spec version that has this command.
    pub fn min_version(self) -> Option<&'static str> {
        match self {
            Command::Check => Some("0.4.0"),
            Command::Gc | Command::Status => Some("1.1.0"),
            _ => None,
        }
    }
}

/// One invocation: the command, its environment and stdin.
#[derive(Debug, Clone)]
pub struct Request {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (validated as a safe file name when required).
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
    /// The netconf's `cniVersion`, `0.1.0` when absent.
    pub cni_version: String,
    /// The netconf bytes.
    pub stdin: Vec<u8>,
}

/// Whether `s` matches libcni's name rule `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (container IDs,
/// network names). It excludes `/`, `..` as a whole name, control characters and spaces.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphanumeric() || (i > 0 && matches!(c, b'_' | b'.' | b'-')))
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.len() > MAX_CONTAINER_ID {
        return Err(CniError::with_details(
            INVALID_ENV,
            "invalid CNI_CONTAINERID: too long",
            format!(
                "containerID must be at most {MAX_CONTAINER_ID} bytes, got {}",
                id.len()
            ),
        ));
    }
    if !valid_name(id) {
        return Err(CniError::with_details(
            INVALID_ENV,
            "invalid characters in containerID",
            clip(id),
        ));
    }
    Ok(())
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let e = |msg: &str| CniError::new(INVALID_ENV, msg);
    if name.len() > MAX_IFNAME {
        return Err(CniError::with_details(
            INVALID_ENV,
            "interface name is too long",
            format!(
                "interface name should be less than {} characters",
                MAX_IFNAME + 1
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(e("interface name is . or .."));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(e("interface name contains / or : or whitespace characters"));
    }
    Ok(())
}

/// Parses `major.minor.patch` (missing parts are 0), as libcni's `version.ParseVersion`.
pub fn parse_version(v: &str) -> Result<(u64, u64, u64), CniError> {
    let parts: Vec<&str> = v.split('.').collect();
    let bad = || {
        CniError::new(
            DECODE_FAILURE,
            format!(
                "invalid CNI version {:?}: expected major.minor.patch",
                clip(v)
            ),
        )
    };
    if parts.len() > 3 {
        return Err(bad());
    }
    let num = |i: usize| -> Result<u64, CniError> {
        match parts.get(i) {
            None => Ok(0),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| bad())
            }
            Some(_) => Err(bad()),
        }
    };
    Ok((num(0)?, num(1)?, num(2)?))
}

/// Stdin could not be read, or its name and version not decoded.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Reading stdin failed (code 5).
    #[error("error reading from stdin: {0}")]
    Stdin(#[source] io::Error),
    /// The netconf is not a JSON object, or its `name` is not a string (code 6).
    #[error("error unmarshall network config: {0}")]
    Config(#[source] GoJsonError),
    /// The netconf's `cniVersion` is not a string (code 6).
    #[error("decoding version from network config: {0}")]
    Version(#[source] GoJsonError),
}

impl Coded for RequestError {
    fn code(&self) -> u32 {
        match self {
            RequestError::Stdin(_) => IO_FAILURE,
            RequestError::Config(_) | RequestError::Version(_) => DECODE_FAILURE,
        }
    }
}

/// The variables libcni checks, in its order.
const CHECKED_VARS: [&str; 5] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_PATH",
];

/// Whether `command` needs the variable `name` (libcni's table).
fn needs(name: &str, command: Option<Command>) -> bool {
    use Command::*;
    matches!(
        (name, command),
        ("CNI_COMMAND", _)
            | ("CNI_CONTAINERID" | "CNI_IFNAME", Some(Add | Check | Del))
            | ("CNI_NETNS", Some(Add | Check))
            | ("CNI_PATH", Some(Add | Check | Del | Gc | Status))
    )
}

/// Checks the variables `command` needs: each present one is validated as it comes (the first
/// invalid one is the error), then all missing ones are listed in one error.
fn check_env(var: &dyn Fn(&str) -> String, command: Option<Command>) -> Result<(), CniError> {
    let mut missing = Vec::new();
    for name in CHECKED_VARS.into_iter().filter(|n| needs(n, command)) {
        let value = var(name);
        match name {
            _ if value.is_empty() => missing.push(name),
            "CNI_CONTAINERID" => validate_container_id(&value)?,
            "CNI_IFNAME" => validate_ifname(&value)?,
            _ => {}
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        INVALID_ENV,
        format!("required env variables [{}] missing", missing.join(",")),
    ))
}

/// Reads the netconf from stdin, at most [`MAX_STDIN`] bytes.
fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, CniError> {
    read_capped(stdin, MAX_STDIN)
        .map_err(RequestError::Stdin)?
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                format!("network config on stdin is larger than {MAX_STDIN} bytes"),
            )
        })
}

/// Reads all of a reader, at most `limit` bytes; `Ok(None)` when there was more.
pub fn read_capped(mut r: impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(4096);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut r).take(cap).read_to_end(&mut buf)?;
    Ok((buf.len() <= limit).then_some(buf))
}

/// Checks the netconf's `name` and negotiates its `cniVersion` for `command`; returns the
/// version (`0.1.0` when absent).
fn negotiate(stdin: &[u8], command: Command, command_text: &str) -> Result<String, CniError> {
    let obj = GoObject::parse_slice(stdin)
        .map_err(RequestError::Config)?
        .unwrap_or_default();
    let name = obj
        .string("name")
        .map_err(RequestError::Config)?
        .unwrap_or_default();
    if name.is_empty() {
        return Err(CniError::new(INVALID_CONFIG, "missing network name"));
    }
    if !valid_name(&name) {
        return Err(CniError::with_details(
            INVALID_CONFIG,
            "invalid characters found in network name",
            clip(&name),
        ));
    }
    let version = obj
        .string("cniVersion")
        .map_err(RequestError::Version)?
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "0.1.0".to_string());
    if let Some(min) = command.min_version()
        && parse_version(&version)? < parse_version(min)?
    {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("config version does not allow {command_text}"),
        ));
    }
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        let supported: Vec<String> = SUPPORTED_VERSIONS
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        return Err(CniError::with_details(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is {:?}, plugin supports [{}]",
                clip(&version),
                supported.join(" ")
            ),
        ));
    }
    Ok(version)
}

/// Reads the environment, stdin and the netconf's name and version; validates all of them.
///
/// `getenv` is injectable so tests can run the whole protocol in-process. VERSION reads no
/// stdin.
pub fn parse_request(
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<Request, CniError> {
    let var = |name: &str| getenv(name).unwrap_or_default();
    let command_text = var("CNI_COMMAND");
    let command = Command::parse(&command_text);
    check_env(&var, command)?;
    let Some(command) = command else {
        return Err(CniError::new(
            INVALID_ENV,
            format!("unknown CNI_COMMAND: {}", clip(&command_text)),
        ));
    };
    let mut req = Request {
        command,
        container_id: var("CNI_CONTAINERID"),
        netns: var("CNI_NETNS"),
        ifname: var("CNI_IFNAME"),
        args: var("CNI_ARGS"),
        path: var("CNI_PATH"),
        cni_version: CURRENT_VERSION.to_string(),
        stdin: Vec::new(),
    };
    if command != Command::Version {
        req.stdin = read_stdin(stdin)?;
        req.cni_version = negotiate(&req.stdin, command, &command_text)?;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::assert_error;
    use std::collections::HashMap;

    fn req(env: &[(&str, &str)], stdin: &str) -> Result<Request, CniError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_request(&|k| map.get(k).cloned(), &mut stdin.as_bytes())
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel"}"#;

    fn add_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        for (k, val) in extra {
            v.retain(|(kk, _)| kk != k);
            v.push((k, val));
        }
        v
    }

    #[test]
    fn missing_env_vars_are_named_with_code_4() {
        let e = req(&[], "").unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (4, "required env variables [CNI_COMMAND] missing")
        );
        let e = req(&[("CNI_COMMAND", "ADD")], CONF).unwrap_err();
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        let e = req(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            CONF,
        )
        .unwrap_err();
        assert_eq!(e.msg, "required env variables [CNI_PATH] missing");
        let e = req(&[("CNI_COMMAND", "STATUS")], CONF).unwrap_err();
        assert_eq!(e.msg, "required env variables [CNI_PATH] missing");
        // DEL does not need CNI_NETNS; VERSION needs nothing.
        assert!(
            req(
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "e"),
                    ("CNI_PATH", "/p")
                ],
                CONF
            )
            .is_ok()
        );
        assert!(req(&[("CNI_COMMAND", "VERSION")], "").is_ok());
        let e = req(&[("CNI_COMMAND", "FROB")], CONF).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "unknown CNI_COMMAND: FROB"));
    }

    #[test]
    fn hostile_container_ids_are_refused() {
        for id in [
            "../../etc/x",
            "/abs",
            "a/b",
            ".hidden",
            "..",
            "-x",
            "a b",
            "a\nb",
            "a\u{0}b",
            "é",
        ] {
            let e = req(&add_env(&[("CNI_CONTAINERID", id)]), CONF).unwrap_err();
            assert_eq!(e.code, INVALID_ENV, "{id:?}");
            assert_eq!(e.msg, "invalid characters in containerID", "{id:?}");
            assert_eq!(e.details, clip(id));
        }
        let long = "a".repeat(256);
        let e = req(&add_env(&[("CNI_CONTAINERID", &long)]), CONF).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (4, "invalid CNI_CONTAINERID: too long")
        );
        assert!(req(&add_env(&[("CNI_CONTAINERID", &"a".repeat(255))]), CONF).is_ok());
        assert!(req(&add_env(&[("CNI_CONTAINERID", "default-c1_x.y")]), CONF).is_ok());
    }

    #[test]
    fn bad_ifnames_are_refused() {
        for (name, msg) in [
            ("averyveryverylongname", "interface name is too long"),
            ("..", "interface name is . or .."),
            (
                "eth/0",
                "interface name contains / or : or whitespace characters",
            ),
            (
                "eth 0",
                "interface name contains / or : or whitespace characters",
            ),
        ] {
            let e = req(&add_env(&[("CNI_IFNAME", name)]), CONF).unwrap_err();
            assert_eq!((e.code, e.msg.as_str()), (INVALID_ENV, msg), "{name}");
        }
    }

    #[test]
    fn stdin_is_capped_and_decoded() {
        let big = format!(r#"{{"name":"n","pad":"{}"}}"#, "x".repeat(MAX_STDIN));
        let e = req(&add_env(&[]), &big).unwrap_err();
        assert_eq!(e.code, INVALID_CONFIG);
        assert_eq!(
            e.msg,
            "network config on stdin is larger than 1048576 bytes"
        );
        let e = req(&add_env(&[]), "{").unwrap_err();
        assert_error(
            &e,
            DECODE_FAILURE,
            "error unmarshall network config: invalid JSON",
        );
        assert!(
            std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<RequestError>())
                .is_some_and(|r| matches!(r, RequestError::Config(GoJsonError::Syntax(_))))
        );
        let e = req(&add_env(&[]), r#"{"name":5}"#).unwrap_err();
        assert_eq!(e.code, DECODE_FAILURE);
        assert_eq!(
            e.msg,
            "error unmarshall network config: \"name\": expected a string, got 5"
        );
        let e = req(&add_env(&[]), r#"{"type":"flannel"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (INVALID_CONFIG, "missing network name")
        );
        let e = req(&add_env(&[]), r#"{"name":"a/b"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (INVALID_CONFIG, "invalid characters found in network name")
        );
    }

    #[test]
    fn versions_are_negotiated() {
        for v in SUPPORTED_VERSIONS {
            let r = req(
                &add_env(&[]),
                &format!(r#"{{"name":"n","cniVersion":"{v}"}}"#),
            )
            .unwrap();
            assert_eq!(r.cni_version, v);
        }
        assert_eq!(
            req(&add_env(&[]), r#"{"name":"n"}"#).unwrap().cni_version,
            "0.1.0"
        );
        let e = req(&add_env(&[]), r#"{"name":"n","cniVersion":"2.0.0"}"#).unwrap_err();
        assert_eq!(e.code, INCOMPATIBLE_VERSION);
        assert_eq!(e.msg, "incompatible CNI versions");
        assert_eq!(
            e.details,
            r#"config is "2.0.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#
        );
        let e = req(
            &add_env(&[("CNI_COMMAND", "CHECK")]),
            r#"{"name":"n","cniVersion":"0.3.1"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (1, "config version does not allow CHECK")
        );
        let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/p")];
        let e = req(&gc, r#"{"name":"n","cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (1, "config version does not allow GC")
        );
        let e = req(&gc, r#"{"name":"n","cniVersion":"x.y"}"#).unwrap_err();
        assert_eq!(e.code, DECODE_FAILURE);
        let e = req(&add_env(&[]), r#"{"name":"n","cniVersion":1}"#).unwrap_err();
        assert_eq!(e.code, DECODE_FAILURE);
        assert!(e.msg.starts_with("decoding version from network config: "));
    }

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("1.1.0").unwrap(), (1, 1, 0));
        assert_eq!(parse_version("1.0").unwrap(), (1, 0, 0));
        assert!(parse_version("1.0.0.0").is_err());
        assert!(parse_version("1.x").is_err());
        assert!(parse_version("").is_err());
    }

    #[test]
    fn read_capped_stops_after_the_limit() {
        assert_eq!(read_capped(&b"abc"[..], 3).unwrap().unwrap(), b"abc");
        assert!(read_capped(&b"abcd"[..], 3).unwrap().is_none());
    }
}
