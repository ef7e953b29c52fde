//! Command-line flags and `FLANNELD_*` environment variables, with upstream's precedence.
//!
//! Upstream parses flags with Go's `flag` package and then copies `FLANNELD_<FLAG>` values into
//! every flag that was not given on the command line. Operators have years of unit files,
//! DaemonSets and scripts written against that behaviour, so this module reproduces it:
//!
//! * `-flag` and `--flag` are the same; a value goes in `--flag=v` or `--flag v`;
//! * a boolean is set by `--flag` and cleared by `--flag=false` (Go's bool spellings);
//! * integers accept Go's base prefixes (`0x10`, `0o17`, `010`, `0b1`) and underscores;
//! * a flag given on the command line wins over its environment variable, an empty variable is
//!   ignored, and a repeatable flag (`--iface`) takes exactly one value from the environment.
//!
//! Where we are stricter than upstream it is on purpose and listed in the README: an invalid
//! environment value or a stray positional argument stops start-up with a message naming it
//! (upstream logs the former and silently ignores the latter, so a typo in a unit file could
//! leave a node half-configured).
//!
//! clap defines the flags and renders `--help`; this module only normalises Go spellings into
//! clap's and applies the environment, so the help text and the parser cannot drift apart.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

/// Prefix of the environment variables that mirror flags (`FLANNELD_IFACE` for `--iface`).
pub const ENV_PREFIX: &str = "FLANNELD";

/// Version printed by `--version`; overridable at build time for release builds.
pub const VERSION: &str = match option_env!("FLANNEL_RS_VERSION") {
    Some(v) => v,
    None => concat!("v", env!("CARGO_PKG_VERSION")),
};

/// How a flag takes its value, which decides how Go-style spellings are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `--flag` / `--flag=false`; never consumes the next argument.
    Bool,
    /// A Go `int` (base prefixes allowed).
    Int,
    /// A free-form string.
    Str,
    /// A string flag that may be given many times (`--iface`).
    Repeated,
}

/// One upstream flag: its name, value kind, default and help text.
struct FlagDef {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
}

/// Every flag upstream flanneld defines (reference §1), in upstream's order.
const FLAGS: &[FlagDef] = &[
    FlagDef {
        name: "etcd-endpoints",
        kind: Kind::Str,
        default: "http://127.0.0.1:4001,http://127.0.0.1:2379",
        help: "a comma-delimited list of etcd endpoints",
    },
    FlagDef {
        name: "etcd-prefix",
        kind: Kind::Str,
        default: "/coreos.com/network",
        help: "etcd prefix",
    },
    FlagDef {
        name: "etcd-keyfile",
        kind: Kind::Str,
        default: "",
        help: "SSL key file used to secure etcd communication",
    },
    FlagDef {
        name: "etcd-certfile",
        kind: Kind::Str,
        default: "",
        help: "SSL certification file used to secure etcd communication",
    },
    FlagDef {
        name: "etcd-cafile",
        kind: Kind::Str,
        default: "",
        help: "SSL Certificate Authority file used to secure etcd communication",
    },
    FlagDef {
        name: "etcd-username",
        kind: Kind::Str,
        default: "",
        help: "username for BasicAuth to etcd",
    },
    FlagDef {
        name: "etcd-password",
        kind: Kind::Str,
        default: "",
        help: "password for BasicAuth to etcd",
    },
    FlagDef {
        name: "iface",
        kind: Kind::Repeated,
        default: "",
        help: "interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each option in order. Returns the first match found.",
    },
    FlagDef {
        name: "iface-regex",
        kind: Kind::Repeated,
        default: "",
        help: "regex expression to match the first interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each regex in order. Returns the first match found. Regexes are checked after specific interfaces specified by the iface option have already been checked.",
    },
    FlagDef {
        name: "iface-can-reach",
        kind: Kind::Str,
        default: "",
        help: "detect interface to use (IP or name) for inter-host communication based on which will be used for provided IP. This is exactly the interface to use of command 'ip route get <ip-address>'",
    },
    FlagDef {
        name: "subnet-file",
        kind: Kind::Str,
        default: "/run/flannel/subnet.env",
        help: "filename where env variables (subnet, MTU, ... ) will be written to",
    },
    FlagDef {
        name: "public-ip",
        kind: Kind::Str,
        default: "",
        help: "IP accessible by other nodes for inter-host communication",
    },
    FlagDef {
        name: "public-ipv6",
        kind: Kind::Str,
        default: "",
        help: "IPv6 accessible by other nodes for inter-host communication",
    },
    FlagDef {
        name: "subnet-lease-renew-margin",
        kind: Kind::Int,
        default: "60",
        help: "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    },
    FlagDef {
        name: "ip-masq",
        kind: Kind::Bool,
        default: "false",
        help: "setup IP masquerade rule for traffic destined outside of overlay network",
    },
    FlagDef {
        name: "ip-masq-fully-random-disable",
        kind: Kind::Bool,
        default: "false",
        help: "disable the --random-fully / fully-random flag on the masquerade rules",
    },
    FlagDef {
        name: "kube-subnet-mgr",
        kind: Kind::Bool,
        default: "false",
        help: "contact the Kubernetes API for subnet assignment instead of etcd.",
    },
    FlagDef {
        name: "kube-api-url",
        kind: Kind::Str,
        default: "",
        help: "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.",
    },
    FlagDef {
        name: "kube-annotation-prefix",
        kind: Kind::Str,
        default: "flannel.alpha.coreos.com",
        help: "Kubernetes annotation prefix. Can contain single slash \"/\", otherwise it will be appended at the end.",
    },
    FlagDef {
        name: "kubeconfig-file",
        kind: Kind::Str,
        default: "",
        help: "kubeconfig file location. Does not need to be specified if flannel is running in a pod.",
    },
    FlagDef {
        name: "version",
        kind: Kind::Bool,
        default: "false",
        help: "print version and exit",
    },
    FlagDef {
        name: "healthz-ip",
        kind: Kind::Str,
        default: "0.0.0.0",
        help: "the IP address for healthz server to listen",
    },
    FlagDef {
        name: "healthz-port",
        kind: Kind::Int,
        default: "0",
        help: "the port for healthz server to listen(0 to disable)",
    },
    FlagDef {
        name: "iptables-resync",
        kind: Kind::Int,
        default: "5",
        help: "resync period for iptables rules, in seconds",
    },
    FlagDef {
        name: "iptables-forward-rules",
        kind: Kind::Bool,
        default: "true",
        help: "add default accept rules to FORWARD chain in iptables",
    },
    FlagDef {
        name: "ip-blackhole-route",
        kind: Kind::Bool,
        default: "false",
        help: "add blackhole route for the local pod CIDR to avoid routing loops",
    },
    FlagDef {
        name: "net-config-path",
        kind: Kind::Str,
        default: "/etc/kube-flannel/net-conf.json",
        help: "path to the network configuration file",
    },
    FlagDef {
        name: "set-node-network-unavailable",
        kind: Kind::Bool,
        default: "true",
        help: "set NodeNetworkUnavailable after ready",
    },
    FlagDef {
        name: "v",
        kind: Kind::Int,
        default: "0",
        help: "number for the log level verbosity (klog compatible: 0 normal, higher adds data-path detail)",
    },
    FlagDef {
        name: "vmodule",
        kind: Kind::Str,
        default: "",
        help: "comma-separated list of pattern=N settings for file-filtered logging (klog compatible; pattern is matched against flannel-rs module names)",
    },
    FlagDef {
        name: "log_backtrace_at",
        kind: Kind::Str,
        default: "",
        help: "accepted for klog compatibility; flannel-rs logs no stack traces",
    },
];

/// Why the command line or environment could not be turned into [`Options`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap's own errors (unknown flag, `--help`); printed by clap with its exit code.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// A `FLANNELD_*` variable holds a value its flag cannot take.
    #[error("invalid value {value:?} in environment variable {var} for flag --{flag}: {reason}")]
    Env {
        /// The environment variable.
        var: String,
        /// The flag it feeds.
        flag: &'static str,
        /// The offending value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A flag value passed parsing but is outside what flanneld accepts.
    #[error("{0}")]
    Invalid(String),
}

impl CliError {
    /// Process exit status: Go's `flag` exits 2 on parse errors, flanneld exits 1 on
    /// out-of-range values; `--help` is a success.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Clap(e) => e.exit_code(),
            CliError::Env { .. } => 2,
            CliError::Invalid(_) => 1,
        }
    }
}

/// The parsed flanneld configuration, one field per upstream flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--etcd-endpoints`, already split on commas like upstream.
    pub etcd_endpoints: Vec<String>,
    /// `--etcd-prefix`.
    pub etcd_prefix: String,
    /// `--etcd-keyfile`.
    pub etcd_keyfile: String,
    /// `--etcd-certfile`.
    pub etcd_certfile: String,
    /// `--etcd-cafile`.
    pub etcd_cafile: String,
    /// `--etcd-username`.
    pub etcd_username: String,
    /// `--etcd-password`.
    pub etcd_password: String,
    /// `--iface`, in the order given.
    pub iface: Vec<String>,
    /// `--iface-regex`, in the order given.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`.
    pub iface_can_reach: Option<IpAddr>,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// `--public-ip`.
    pub public_ip: String,
    /// `--public-ipv6`.
    pub public_ipv6: String,
    /// `--subnet-lease-renew-margin`, minutes (validated to 1..=1439).
    pub subnet_lease_renew_margin: u32,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable`.
    pub ip_masq_fully_random_disable: bool,
    /// `--kube-subnet-mgr`.
    pub kube_subnet_mgr: bool,
    /// `--kube-api-url`.
    pub kube_api_url: String,
    /// `--kube-annotation-prefix`.
    pub kube_annotation_prefix: String,
    /// `--kubeconfig-file`.
    pub kubeconfig_file: String,
    /// `--version`.
    pub version: bool,
    /// `--healthz-ip`.
    pub healthz_ip: IpAddr,
    /// `--healthz-port` (0 disables the HTTP server).
    pub healthz_port: u16,
    /// `--iptables-resync`, seconds (at least 1).
    pub iptables_resync: u64,
    /// `--iptables-forward-rules`.
    pub iptables_forward_rules: bool,
    /// `--ip-blackhole-route`.
    pub ip_blackhole_route: bool,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`.
    pub set_node_network_unavailable: bool,
    /// `-v`, klog verbosity.
    pub verbosity: u32,
    /// `-vmodule`, klog per-module verbosity.
    pub vmodule: String,
}

/// Environment variable name for a flag: `FLANNELD_` + upper case, `-` and `.` as `_`.
pub fn env_name(flag: &str) -> String {
    let mut s = String::with_capacity(ENV_PREFIX.len() + 1 + flag.len());
    s.push_str(ENV_PREFIX);
    s.push('_');
    for c in flag.chars() {
        match c {
            '-' | '.' => s.push('_'),
            c => s.push(c.to_ascii_uppercase()),
        }
    }
    s
}

/// Parses a Go `strconv.ParseBool` spelling.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "parse error: {s:?} is not a boolean (true/false/1/0/t/f)"
        )),
    }
}

/// Parses a Go `strconv.ParseInt(s, 0, 64)` spelling: optional sign, `0x`/`0o`/`0b`/leading-`0`
/// base prefixes and `_` separators between digits (only with a prefix, as in Go).
pub fn parse_go_int(s: &str) -> Result<i64, String> {
    let err = || format!("parse error: {s:?} is not an integer");
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return Err(err());
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    if digits.contains('_') {
        // Go allows underscores only with a base prefix, between digits or right after the prefix.
        if !prefixed || digits.ends_with('_') || digits.contains("__") {
            return Err(err());
        }
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(err());
    }
    let magnitude = i128::from_str_radix(&digits, radix).map_err(|_| err())?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).map_err(|_| format!("parse error: {s:?} is out of range"))
}

/// Builds the clap command: the single definition of every flag, used for parsing and `--help`.
pub fn command() -> Command {
    let mut cmd = Command::new("flanneld")
        .about("flannel-rs node agent: a drop-in replacement for flanneld")
        .disable_version_flag(true)
        .help_template("{about}\n\nUsage: {usage}\n\n{all-args}\n")
        .next_line_help(false);
    for f in FLAGS {
        let env = env_name(f.name);
        let mut arg = Arg::new(f.name)
            .long(f.name)
            .help(format!("{} [env: {env}]", f.help));
        arg = match f.kind {
            Kind::Bool => arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .default_value(f.default)
                .value_parser(parse_go_bool)
                .action(ArgAction::Set),
            Kind::Int => arg
                .num_args(1)
                .allow_hyphen_values(true)
                .default_value(f.default)
                .value_parser(parse_go_int)
                .action(ArgAction::Set),
            Kind::Str => arg
                .num_args(1)
                .allow_hyphen_values(true)
                .default_value(f.default)
                .action(ArgAction::Set),
            Kind::Repeated => arg
                .num_args(1)
                .allow_hyphen_values(true)
                .action(ArgAction::Append),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

fn flag_def(name: &str) -> Option<&'static FlagDef> {
    FLAGS.iter().find(|f| f.name == name)
}

/// Rewrites Go-style arguments into clap's spelling and records which flags were given.
///
/// Every known flag becomes `--name=value` (or `--name` for a bare bool), so values that start
/// with `-` survive and `-flag` works like `--flag`. Unknown flags are passed through untouched so
/// clap reports them; `--` and everything after it are passed through as positionals.
fn normalise_args(args: &[OsString]) -> (Vec<OsString>, Vec<&'static str>) {
    let mut out = Vec::with_capacity(args.len());
    let mut given = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let raw = &args[i];
        i += 1;
        let Some(s) = raw.to_str() else {
            out.push(raw.clone());
            continue;
        };
        if s == "--" {
            out.extend(args[i - 1..].iter().cloned());
            break;
        }
        let stripped = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('-'))
            .filter(|r| !r.is_empty() && !r.starts_with('-'));
        let Some(body) = stripped else {
            out.push(raw.clone());
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            out.push(OsString::from("--help"));
            continue;
        }
        let Some(def) = flag_def(name) else {
            out.push(raw.clone());
            continue;
        };
        given.push(def.name);
        match (def.kind, value) {
            (_, Some(v)) => out.push(OsString::from(format!("--{}={v}", def.name))),
            (Kind::Bool, None) => out.push(OsString::from(format!("--{}", def.name))),
            (_, None) => match args.get(i) {
                Some(next) => {
                    let mut joined = OsString::from(format!("--{}=", def.name));
                    joined.push(next);
                    out.push(joined);
                    i += 1;
                }
                // Let clap report the missing value in its own words.
                None => out.push(OsString::from(format!("--{}", def.name))),
            },
        }
    }
    (out, given)
}

/// Parses flanneld's command line and environment into [`Options`].
///
/// `args` excludes the program name; `env` looks up a variable (injected so tests need not
/// mutate the process environment, which is unsound in a threaded test runner).
pub fn parse_from<I, E>(args: I, env: E) -> Result<Options, CliError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
    E: Fn(&str) -> Option<String>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (mut argv, given) = normalise_args(&args);

    let cmd = command();
    // `--version` is checked before the environment is applied, as upstream does.
    let version_given = given.contains(&"version");
    if !version_given {
        for def in FLAGS {
            if def.name == "version" || given.contains(&def.name) {
                continue;
            }
            let var = env_name(def.name);
            let Some(value) = env(&var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let check = match def.kind {
                Kind::Bool => parse_go_bool(&value).map(|_| ()),
                Kind::Int => parse_go_int(&value).map(|_| ()),
                Kind::Str | Kind::Repeated => Ok(()),
            };
            check.map_err(|reason| CliError::Env {
                var: var.clone(),
                flag: def.name,
                value: value.clone(),
                reason,
            })?;
            argv.push(OsString::from(format!("--{}={value}", def.name)));
        }
    }

    let mut full = Vec::with_capacity(argv.len() + 1);
    full.push(OsString::from("flanneld"));
    full.extend(argv);
    let m = cmd.try_get_matches_from(full)?;
    Options::from_matches(&m)
}

/// Parses the real process arguments and environment.
pub fn parse() -> Result<Options, CliError> {
    parse_from(std::env::args_os().skip(1), |k| std::env::var(k).ok())
}

fn get_str(m: &ArgMatches, name: &str) -> String {
    m.get_one::<String>(name).cloned().unwrap_or_default()
}

fn get_bool(m: &ArgMatches, name: &str) -> bool {
    m.get_one::<bool>(name).copied().unwrap_or(false)
}

fn get_int(m: &ArgMatches, name: &str) -> i64 {
    m.get_one::<i64>(name).copied().unwrap_or(0)
}

fn get_list(m: &ArgMatches, name: &str) -> Vec<String> {
    m.get_many::<String>(name)
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
}

impl Options {
    fn from_matches(m: &ArgMatches) -> Result<Options, CliError> {
        let margin = get_int(m, "subnet-lease-renew-margin");
        if !(1..=1439).contains(&margin) {
            return Err(CliError::Invalid(
                "Invalid subnet-lease-renew-margin option, out of acceptable range".into(),
            ));
        }
        let healthz_port = get_int(m, "healthz-port");
        let healthz_port = u16::try_from(healthz_port).map_err(|_| {
            CliError::Invalid(format!(
                "invalid --healthz-port {healthz_port}: expected a TCP port 0..65535 (0 disables the server)"
            ))
        })?;
        let resync = get_int(m, "iptables-resync");
        let iptables_resync = u64::try_from(resync)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| {
                CliError::Invalid(format!(
                    "invalid --iptables-resync {resync}: expected a period of at least 1 second"
                ))
            })?;
        let verbosity = get_int(m, "v");
        let verbosity = u32::try_from(verbosity).map_err(|_| {
            CliError::Invalid(format!(
                "invalid -v {verbosity}: expected a non-negative level"
            ))
        })?;
        let healthz_ip_s = get_str(m, "healthz-ip");
        let healthz_ip = healthz_ip_s.parse::<IpAddr>().map_err(|_| {
            CliError::Invalid(format!(
                "invalid --healthz-ip {healthz_ip_s:?}: expected an IPv4 or IPv6 address"
            ))
        })?;
        let can_reach = get_str(m, "iface-can-reach");
        let iface_can_reach = if can_reach.is_empty() {
            None
        } else {
            Some(can_reach.parse::<IpAddr>().map_err(|_| {
                CliError::Invalid(format!(
                    "invalid --iface-can-reach {can_reach:?}: expected an IP address"
                ))
            })?)
        };
        let iface_regex = get_list(m, "iface-regex");
        for r in &iface_regex {
            regex::Regex::new(r).map_err(|e| {
                CliError::Invalid(format!("could not compile the IP address regex '{r}': {e}"))
            })?;
        }
        Ok(Options {
            etcd_endpoints: get_str(m, "etcd-endpoints")
                .split(',')
                .map(str::to_string)
                .collect(),
            etcd_prefix: get_str(m, "etcd-prefix"),
            etcd_keyfile: get_str(m, "etcd-keyfile"),
            etcd_certfile: get_str(m, "etcd-certfile"),
            etcd_cafile: get_str(m, "etcd-cafile"),
            etcd_username: get_str(m, "etcd-username"),
            etcd_password: get_str(m, "etcd-password"),
            iface: get_list(m, "iface"),
            iface_regex,
            iface_can_reach,
            subnet_file: PathBuf::from(get_str(m, "subnet-file")),
            public_ip: get_str(m, "public-ip"),
            public_ipv6: get_str(m, "public-ipv6"),
            subnet_lease_renew_margin: margin as u32,
            ip_masq: get_bool(m, "ip-masq"),
            ip_masq_fully_random_disable: get_bool(m, "ip-masq-fully-random-disable"),
            kube_subnet_mgr: get_bool(m, "kube-subnet-mgr"),
            kube_api_url: get_str(m, "kube-api-url"),
            kube_annotation_prefix: get_str(m, "kube-annotation-prefix"),
            kubeconfig_file: get_str(m, "kubeconfig-file"),
            version: get_bool(m, "version"),
            healthz_ip,
            healthz_port,
            iptables_resync,
            iptables_forward_rules: get_bool(m, "iptables-forward-rules"),
            ip_blackhole_route: get_bool(m, "ip-blackhole-route"),
            net_config_path: PathBuf::from(get_str(m, "net-config-path")),
            set_node_network_unavailable: get_bool(m, "set-node-network-unavailable"),
            verbosity,
            vmodule: get_str(m, "vmodule"),
        })
    }
}

/// Names of every flag, for documentation checks (the README flag table is tested against it).
pub fn flag_names() -> impl Iterator<Item = &'static str> {
    FLAGS.iter().map(|f| f.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Options, CliError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_from(args.iter().copied(), move |k| env.get(k).cloned())
    }

    fn parse(args: &[&str]) -> Options {
        parse_env(args, &[]).expect("valid arguments")
    }

    #[test]
    fn defaults_match_upstream() {
        let o = parse(&[]);
        assert_eq!(
            o.etcd_endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(o.etcd_prefix, "/coreos.com/network");
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.subnet_lease_renew_margin, 60);
        assert!(!o.ip_masq);
        assert!(!o.ip_masq_fully_random_disable);
        assert!(!o.kube_subnet_mgr);
        assert_eq!(o.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(o.healthz_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(o.healthz_port, 0);
        assert_eq!(o.iptables_resync, 5);
        assert!(o.iptables_forward_rules);
        assert!(!o.ip_blackhole_route);
        assert_eq!(
            o.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert!(o.set_node_network_unavailable);
        assert!(o.iface.is_empty() && o.iface_regex.is_empty());
        assert_eq!(o.iface_can_reach, None);
        assert_eq!(o.verbosity, 0);
    }

    #[test]
    fn single_and_double_dash_with_equals_or_space() {
        let a = parse(&["-iface", "eth1", "--etcd-prefix=/x", "-healthz-port=8081"]);
        assert_eq!(a.iface, vec!["eth1"]);
        assert_eq!(a.etcd_prefix, "/x");
        assert_eq!(a.healthz_port, 8081);
        let b = parse(&[
            "--iface=eth1",
            "-etcd-prefix",
            "/x",
            "--healthz-port",
            "8081",
        ]);
        assert_eq!(a, b);
    }

    #[test]
    fn bools_take_no_separate_value() {
        assert!(parse(&["--ip-masq"]).ip_masq);
        assert!(parse(&["-ip-masq=true"]).ip_masq);
        assert!(parse(&["--ip-masq=T"]).ip_masq);
        assert!(!parse(&["--iptables-forward-rules=false"]).iptables_forward_rules);
        assert!(!parse(&["--iptables-forward-rules=0"]).iptables_forward_rules);
        assert!(!parse(&["--set-node-network-unavailable=F"]).set_node_network_unavailable);
        // `--ip-masq false` leaves "false" as a positional argument, which we refuse.
        assert!(parse_env(&["--ip-masq", "false"], &[]).is_err());
        let e = parse_env(&["--ip-masq=yes"], &[]).unwrap_err();
        assert!(e.to_string().contains("yes"), "{e}");
    }

    #[test]
    fn repeatable_iface_keeps_order() {
        let o = parse(&[
            "--iface",
            "eth1",
            "-iface=10.0.0.1",
            "--iface-regex",
            "^en",
            "--iface-regex=192\\.168\\..*",
        ]);
        assert_eq!(o.iface, vec!["eth1", "10.0.0.1"]);
        assert_eq!(o.iface_regex, vec!["^en", "192\\.168\\..*"]);
    }

    #[test]
    fn values_may_start_with_a_dash() {
        let o = parse(&["--etcd-password", "-secret-", "--iface", "-weird"]);
        assert_eq!(o.etcd_password, "-secret-");
        assert_eq!(o.iface, vec!["-weird"]);
    }

    #[test]
    fn go_integer_spellings() {
        assert_eq!(parse_go_int("8081"), Ok(8081));
        assert_eq!(parse_go_int("0x1f91"), Ok(8081));
        assert_eq!(parse_go_int("017"), Ok(15));
        assert_eq!(parse_go_int("0o17"), Ok(15));
        assert_eq!(parse_go_int("0b101"), Ok(5));
        assert_eq!(parse_go_int("0x_1F"), Ok(31));
        assert_eq!(parse_go_int("-3"), Ok(-3));
        assert_eq!(parse_go_int("0"), Ok(0));
        assert!(parse_go_int("1_000").is_err());
        assert!(parse_go_int("").is_err());
        assert!(parse_go_int("12a").is_err());
        assert!(parse_go_int("99999999999999999999").is_err());
        assert_eq!(parse(&["--healthz-port=0x1f91"]).healthz_port, 8081);
    }

    #[test]
    fn env_applies_only_when_flag_absent() {
        let o = parse_env(&[], &[("FLANNELD_IFACE", "eth1")]).unwrap();
        assert_eq!(o.iface, vec!["eth1"]);
        let o = parse_env(&["--iface", "eth2"], &[("FLANNELD_IFACE", "eth1")]).unwrap();
        assert_eq!(o.iface, vec!["eth2"]);
        let o = parse_env(&["-iface=eth2"], &[("FLANNELD_IFACE", "eth1")]).unwrap();
        assert_eq!(o.iface, vec!["eth2"]);
    }

    #[test]
    fn env_repeatable_is_one_value_not_split() {
        let o = parse_env(&[], &[("FLANNELD_IFACE", "eth1,eth2")]).unwrap();
        assert_eq!(o.iface, vec!["eth1,eth2"]);
    }

    #[test]
    fn env_empty_values_are_ignored() {
        let o = parse_env(
            &[],
            &[
                ("FLANNELD_HEALTHZ_PORT", ""),
                ("FLANNELD_IFACE", ""),
                ("FLANNELD_IP_MASQ", ""),
            ],
        )
        .unwrap();
        assert_eq!(o.healthz_port, 0);
        assert!(o.iface.is_empty());
        assert!(!o.ip_masq);
    }

    #[test]
    fn env_names_follow_upstream_rule() {
        assert_eq!(env_name("etcd-endpoints"), "FLANNELD_ETCD_ENDPOINTS");
        assert_eq!(
            env_name("ip-masq-fully-random-disable"),
            "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE"
        );
        assert_eq!(env_name("log_backtrace_at"), "FLANNELD_LOG_BACKTRACE_AT");
        assert_eq!(env_name("v"), "FLANNELD_V");
        let o = parse_env(
            &[],
            &[
                ("FLANNELD_ETCD_ENDPOINTS", "http://10.0.0.1:2379"),
                ("FLANNELD_KUBE_SUBNET_MGR", "true"),
                ("FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", "1"),
                ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "30"),
                ("FLANNELD_NET_CONFIG_PATH", "/tmp/nc.json"),
                ("FLANNELD_IP_BLACKHOLE_ROUTE", "t"),
                ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
                ("FLANNELD_V", "2"),
            ],
        )
        .unwrap();
        assert_eq!(o.etcd_endpoints, vec!["http://10.0.0.1:2379"]);
        assert!(o.kube_subnet_mgr);
        assert!(o.ip_masq_fully_random_disable);
        assert_eq!(o.subnet_lease_renew_margin, 30);
        assert_eq!(o.net_config_path, PathBuf::from("/tmp/nc.json"));
        assert!(o.ip_blackhole_route);
        assert!(!o.iptables_forward_rules);
        assert_eq!(o.verbosity, 2);
    }

    #[test]
    fn invalid_env_value_names_the_variable() {
        let e = parse_env(&[], &[("FLANNELD_HEALTHZ_PORT", "abc")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("FLANNELD_HEALTHZ_PORT"), "{msg}");
        assert!(msg.contains("--healthz-port"), "{msg}");
        assert!(msg.contains("\"abc\""), "{msg}");
        let e = parse_env(&[], &[("FLANNELD_IP_MASQ", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("FLANNELD_IP_MASQ"));
        // ... but not when the flag itself is given: the env var is never consulted.
        assert!(parse_env(&["--healthz-port=1"], &[("FLANNELD_HEALTHZ_PORT", "abc")]).is_ok());
    }

    #[test]
    fn version_is_checked_before_env() {
        let o = parse_env(&["--version"], &[("FLANNELD_HEALTHZ_PORT", "abc")]).unwrap();
        assert!(o.version);
        // FLANNELD_VERSION does not turn on --version.
        let o = parse_env(&[], &[("FLANNELD_VERSION", "true")]).unwrap();
        assert!(!o.version);
    }

    #[test]
    fn renew_margin_range_uses_upstream_message() {
        for bad in ["0", "1440", "-5"] {
            let e = parse_env(&["--subnet-lease-renew-margin", bad], &[]).unwrap_err();
            assert_eq!(
                e.to_string(),
                "Invalid subnet-lease-renew-margin option, out of acceptable range"
            );
            assert_eq!(e.exit_code(), 1);
        }
        assert_eq!(
            parse(&["--subnet-lease-renew-margin=1"]).subnet_lease_renew_margin,
            1
        );
        assert_eq!(
            parse(&["--subnet-lease-renew-margin=1439"]).subnet_lease_renew_margin,
            1439
        );
    }

    #[test]
    fn out_of_range_values_are_named() {
        let e = parse_env(&["--healthz-port=70000"], &[]).unwrap_err();
        assert!(e.to_string().contains("--healthz-port 70000"), "{e}");
        let e = parse_env(&["--iptables-resync=0"], &[]).unwrap_err();
        assert!(e.to_string().contains("--iptables-resync 0"), "{e}");
        let e = parse_env(&["--healthz-ip=nope"], &[]).unwrap_err();
        assert!(e.to_string().contains("--healthz-ip"), "{e}");
        let e = parse_env(&["--iface-can-reach=host"], &[]).unwrap_err();
        assert!(e.to_string().contains("--iface-can-reach"), "{e}");
        let e = parse_env(&["--iface-regex=("], &[]).unwrap_err();
        assert!(e.to_string().contains("could not compile"), "{e}");
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        let e = parse_env(&["--no-such-flag"], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse_env(&["--healthz-port=abc"], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn help_lists_every_flag_and_env_var() {
        let help = command().render_help().to_string();
        for name in flag_names() {
            assert!(help.contains(&format!("--{name}")), "missing --{name}");
            assert!(help.contains(&env_name(name)), "missing {}", env_name(name));
        }
    }

    #[test]
    fn klog_flags_are_accepted() {
        let o = parse(&["-v=3", "-vmodule=vxlan=5", "-log_backtrace_at=main.go:1"]);
        assert_eq!(o.verbosity, 3);
        assert_eq!(o.vmodule, "vxlan=5");
    }
}
