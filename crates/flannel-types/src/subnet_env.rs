//! `/run/flannel/subnet.env`: how flanneld tells the CNI plugin (and Docker scripts) which
//! subnet this node owns (upstream `pkg/subnet/subnet.go WriteSubnetFile`, `main.go`
//! `ReadCIDRsFromSubnetFile`, and cni-plugin `flannel.go loadFlannelSubnetEnv`).
//!
//! Three parts, one per consumer:
//! * [`SubnetEnv`]: what flanneld writes, atomically, in upstream's exact line order.
//! * [`CniSubnetEnv`]: what the CNI plugin reads, with the plugin's parsing rules and errors.
//! * [`PreviousSubnetEnv`]: what flanneld reads back at start-up to reuse its old subnet and to
//!   clean up rules for networks that changed; tolerant, because a missing or damaged file must
//!   never stop the daemon.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::family_net::FamilyNet;
use crate::goip;

/// The CNI plugin's default location, also flanneld's default `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// `FLANNEL_NETWORK`: the cluster IPv4 network(s).
pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
/// `FLANNEL_SUBNET`: this node's IPv4 subnet, written with its first usable address.
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
/// `FLANNEL_IPV6_NETWORK`: the cluster IPv6 network(s).
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
/// `FLANNEL_IPV6_SUBNET`: this node's IPv6 subnet, written with its first usable address.
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
/// `FLANNEL_MTU`: the MTU pods should use (the backend device's MTU).
pub const KEY_MTU: &str = "FLANNEL_MTU";
/// `FLANNEL_IPMASQ`: whether flanneld masquerades pod traffic (`--ip-masq`).
pub const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";

/// Mode of subnet.env, whatever the umask: readable by the CNI plugin and scripts.
pub const SUBNET_FILE_MODE: u32 = 0o644;
/// Mode of directories created for subnet.env.
pub const SUBNET_DIR_MODE: u32 = 0o755;

/// Why subnet.env could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// A filesystem operation failed. Rendered like Go's `*PathError`
    /// (`open /run/flannel/subnet.env: no such file or directory`), because the CNI plugin's
    /// error text is quoted in upstream issues and runbooks.
    #[error("{op} {}: {}", .path.display(), go_io_text(.source))]
    Io {
        /// What was being done: `open`, `read`, `mkdir`, `create temp file in`, `write`,
        /// `chmod`, `fsync`, `rename`.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A known key has a value that does not parse.
    #[error("{}: invalid {key} value {value:?}: expected {expected}", .path.display())]
    InvalidValue {
        /// The file read.
        path: PathBuf,
        /// The key, e.g. `FLANNEL_MTU`.
        key: &'static str,
        /// The value as found.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A known key appears on a line without `=` (upstream's plugin panics on this).
    #[error("{}: {key} has no value (no '=' on its line)", .path.display())]
    NoValue {
        /// The file read.
        path: PathBuf,
        /// The key found alone on its line.
        key: &'static str,
    },
    /// Required keys are missing; the text is the CNI plugin's, e.g.
    /// `/run/flannel/subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ`.
    #[error("{} is missing {}", .path.display(), .missing.join(", "))]
    Missing {
        /// The file read.
        path: PathBuf,
        /// The missing keys in the plugin's order; each alternative pair is listed together.
        missing: Vec<&'static str>,
    },
}

/// Renders an I/O error as Go's `syscall.Errno.Error()` would: the lower-case C library text
/// without Rust's ` (os error N)` suffix.
fn go_io_text(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let text = io::Error::from_raw_os_error(code).to_string();
    let text = text
        .strip_suffix(&format!(" (os error {code})"))
        .unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SubnetEnvError + use<> {
    let path = path.to_path_buf();
    move |source| SubnetEnvError::Io { op, path, source }
}

/// One family's part of subnet.env: the cluster network and this node's lease subnet
/// (`FLANNEL_NETWORK` and `FLANNEL_SUBNET`, or their `IPV6` twins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnvFamily<N: FamilyNet> {
    /// The config's `Network` or `IPv6Network` (`FLANNEL_NETWORK`, `FLANNEL_IPV6_NETWORK`).
    pub network: N,
    /// The lease subnet as the network address; written as its first usable address.
    pub subnet: N,
}

/// The IPv4 part of subnet.env.
pub type SubnetEnvV4 = SubnetEnvFamily<Ipv4Net>;

/// The IPv6 part of subnet.env.
pub type SubnetEnvV6 = SubnetEnvFamily<Ipv6Net>;

impl<N: FamilyNet> SubnetEnvFamily<N> {
    /// The two lines of this family, network then subnet, in upstream's spelling.
    fn render(&self, out: &mut String) {
        let (network_key, subnet_key) = N::FAMILY.pick(
            (KEY_NETWORK, KEY_SUBNET),
            (KEY_IPV6_NETWORK, KEY_IPV6_SUBNET),
        );
        let first = N::addr_from_bits(N::wrapping_add(N::addr_bits(self.subnet.network()), 1));
        out.push_str(&format!(
            "{network_key}={}/{}\n{subnet_key}={}/{}\n",
            N::go_addr_string(self.network.addr()),
            self.network.prefix_len(),
            N::go_addr_string(first),
            self.subnet.prefix_len()
        ));
    }
}

/// What flanneld writes to subnet.env once its lease, backend and rules are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    /// Present when IPv4 is enabled; gives the `FLANNEL_NETWORK` and `FLANNEL_SUBNET` lines.
    pub ipv4: Option<SubnetEnvV4>,
    /// Present when IPv6 is enabled; gives the `FLANNEL_IPV6_*` lines.
    pub ipv6: Option<SubnetEnvV6>,
    /// The backend MTU (`FLANNEL_MTU`).
    pub mtu: u32,
    /// The value of `--ip-masq` (`FLANNEL_IPMASQ`).
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The file contents, in upstream's order: `FLANNEL_NETWORK`, `FLANNEL_SUBNET`,
    /// `FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`, `FLANNEL_MTU`, `FLANNEL_IPMASQ`.
    ///
    /// The subnet lines carry the first usable address (`10.244.1.0/24` is written as
    /// `10.244.1.1/24`), which Docker's `--bip` and the CNI plugin expect.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(160);
        if let Some(v4) = self.ipv4 {
            v4.render(&mut out);
        }
        if let Some(v6) = self.ipv6 {
            v6.render(&mut out);
        }
        out.push_str(&format!(
            "{KEY_MTU}={}\n{KEY_IPMASQ}={}\n",
            self.mtu, self.ip_masq
        ));
        out
    }

    /// Writes the file atomically so the CNI plugin never reads a half-written file.
    ///
    /// Creates missing parent directories with mode 0755, writes a temporary file in the same
    /// directory, sets mode 0644 regardless of the umask, fsyncs it, renames it over `path`,
    /// then fsyncs the directory so the rename survives a crash. On error the temporary file
    /// is removed.
    pub fn write_atomic(&self, path: &Path) -> Result<(), SubnetEnvError> {
        write_file_atomic(
            path,
            self.render().as_bytes(),
            SUBNET_FILE_MODE,
            SUBNET_DIR_MODE,
        )
    }
}

/// The directory a file lives in; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing ancestors with `mode` (set explicitly, so the umask does not
/// matter). Existing directories are left as they are.
fn create_dirs(dir: &Path, mode: u32) -> Result<(), SubnetEnvError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", d))?,
            // Another writer may have created it meanwhile; that is fine.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(io_err("mkdir", d)(e)),
        }
    }
    Ok(())
}

/// Atomically replaces `path` with `data`: missing parent directories are created with
/// `dir_mode`, the file gets `file_mode` regardless of the umask, and file and directory are
/// fsynced (see [`SubnetEnv::write_atomic`]). Public so other small state files (such as the
/// CNI plugin's saved delegate configs) can be written the same safe way.
pub fn write_file_atomic(
    path: &Path,
    data: &[u8],
    file_mode: u32,
    dir_mode: u32,
) -> Result<(), SubnetEnvError> {
    let dir = parent_dir(path);
    create_dirs(dir, dir_mode)?;
    let name = path
        .file_name()
        .map(|n| format!(".{}", n.to_string_lossy()))
        .unwrap_or_else(|| ".subnet.env".to_string());
    let mut tmp = tempfile::Builder::new()
        .prefix(&name)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err("create temp file in", dir))?;
    tmp.write_all(data).map_err(io_err("write", tmp.path()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(file_mode))
        .map_err(io_err("chmod", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("fsync", tmp.path()))?;
    // On failure `persist` hands the temp file back; dropping it deletes it.
    tmp.persist(path)
        .map_err(|e| io_err("rename", path)(e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))?;
    Ok(())
}

/// Reads a whole file, reporting errors as `open <path>: ...` like Go's `os.Open`.
fn read_file(path: &Path) -> Result<String, SubnetEnvError> {
    let bytes = fs::read(path).map_err(io_err("open", path))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Lines as Go's `bufio.Scanner` with `ScanLines` yields them: split on `\n`, one trailing
/// `\r` dropped, no empty token after a final newline.
fn scan_lines(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let empty = text.is_empty();
    body.split('\n')
        .filter(move |_| !empty)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// Parses one CIDR with Go's `net.ParseCIDR`, returning the network (host bits cleared).
fn cidr(path: &Path, key: &'static str, value: &str) -> Result<IpNet, SubnetEnvError> {
    goip::parse_cidr(value)
        .map(|c| c.network())
        .ok_or_else(|| invalid(path, key, value, "a CIDR such as 10.244.0.0/16"))
}

/// Parses a comma-separated CIDR list, dropping duplicates but keeping first-seen order.
fn cidr_list(path: &Path, key: &'static str, value: &str) -> Result<Vec<IpNet>, SubnetEnvError> {
    let mut out: Vec<IpNet> = Vec::new();
    for part in value.split(',') {
        let net = cidr(path, key, part)?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// subnet.env as the flannel CNI plugin reads it.
///
/// Rules (cni-plugin `loadFlannelSubnetEnv`): one `KEY=value` per line, split on the first `=`,
/// no trimming, unknown keys ignored, the last occurrence of a key wins.
/// `FLANNEL_NETWORK` / `FLANNEL_IPV6_NETWORK` may list several CIDRs separated by commas
/// (duplicates dropped). All CIDRs are normalised to their network (`10.1.17.1/24` becomes
/// `10.1.17.0/24`), and, as upstream, their family is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSubnetEnv {
    /// `FLANNEL_NETWORK` entries; each becomes a route in the pod.
    pub networks: Vec<IpNet>,
    /// `FLANNEL_SUBNET` as a network; becomes the host-local range.
    pub subnet: Option<IpNet>,
    /// `FLANNEL_IPV6_NETWORK` entries.
    pub ipv6_networks: Vec<IpNet>,
    /// `FLANNEL_IPV6_SUBNET` as a network.
    pub ipv6_subnet: Option<IpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: true only for exactly `true`.
    pub ip_masq: bool,
}

impl CniSubnetEnv {
    /// Reads and parses `path`. A missing file gives `open <path>: no such file or directory`.
    pub fn load(path: &Path) -> Result<Self, SubnetEnvError> {
        Self::parse(path, &read_file(path)?)
    }

    /// Parses file contents; `path` is only used in error messages.
    ///
    /// Required: a network (v4 or v6), a subnet (v4 or v6), the MTU and IPMASQ; otherwise the
    /// error lists what is missing in the plugin's words.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SubnetEnvError> {
        let mut networks: Option<Vec<IpNet>> = None;
        let mut ipv6_networks: Option<Vec<IpNet>> = None;
        let mut subnet = None;
        let mut ipv6_subnet = None;
        let mut mtu = None;
        let mut ip_masq = None;

        for line in scan_lines(text) {
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (line, None),
            };
            let key: &'static str = match key {
                KEY_NETWORK => KEY_NETWORK,
                KEY_SUBNET => KEY_SUBNET,
                KEY_IPV6_NETWORK => KEY_IPV6_NETWORK,
                KEY_IPV6_SUBNET => KEY_IPV6_SUBNET,
                KEY_MTU => KEY_MTU,
                KEY_IPMASQ => KEY_IPMASQ,
                _ => continue,
            };
            let Some(value) = value else {
                return Err(SubnetEnvError::NoValue {
                    path: path.to_path_buf(),
                    key,
                });
            };
            match key {
                KEY_NETWORK => networks = Some(cidr_list(path, key, value)?),
                KEY_IPV6_NETWORK => ipv6_networks = Some(cidr_list(path, key, value)?),
                KEY_SUBNET => subnet = Some(cidr(path, key, value)?),
                KEY_IPV6_SUBNET => ipv6_subnet = Some(cidr(path, key, value)?),
                KEY_MTU => mtu = Some(parse_u32(path, key, value)?),
                _ => ip_masq = Some(value == "true"),
            }
        }

        let networks = networks.unwrap_or_default();
        let ipv6_networks = ipv6_networks.unwrap_or_default();
        let mut missing = Vec::new();
        if networks.is_empty() && ipv6_networks.is_empty() {
            missing.extend([KEY_NETWORK, KEY_IPV6_NETWORK]);
        }
        if subnet.is_none() && ipv6_subnet.is_none() {
            missing.extend([KEY_SUBNET, KEY_IPV6_SUBNET]);
        }
        if mtu.is_none() {
            missing.push(KEY_MTU);
        }
        if ip_masq.is_none() {
            missing.push(KEY_IPMASQ);
        }
        match (mtu, ip_masq) {
            (Some(mtu), Some(ip_masq)) if missing.is_empty() => Ok(CniSubnetEnv {
                networks,
                subnet,
                ipv6_networks,
                ipv6_subnet,
                mtu,
                ip_masq,
            }),
            _ => Err(SubnetEnvError::Missing {
                path: path.to_path_buf(),
                missing,
            }),
        }
    }
}

/// `strconv.ParseUint(value, 10, 32)`: decimal digits only (no sign, no spaces).
fn parse_u32(path: &Path, key: &'static str, value: &str) -> Result<u32, SubnetEnvError> {
    if !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && let Ok(v) = value.parse()
    {
        return Ok(v);
    }
    Err(invalid(path, key, value, "an unsigned 32-bit integer"))
}

/// What flanneld finds in an existing subnet.env at start-up (upstream `main.go`,
/// `ReadCIDRsFromSubnetFile` and friends).
///
/// Used to ask etcd for the same subnet again and to remove masquerade rules for a network or
/// subnet that changed. Every value is optional and a bad value only lands in
/// [`PreviousSubnetEnv::problems`] for the caller to log: upstream logs (or, for a bad CIDR,
/// crashes), flannel-rs logs and carries on without that value.
#[derive(Debug, Default)]
pub struct PreviousSubnetEnv {
    /// `FLANNEL_NETWORK` entries that are IPv4 CIDRs (network addresses).
    pub networks: Vec<Ipv4Net>,
    /// `FLANNEL_SUBNET` as a network (`10.1.74.1/24` gives `10.1.74.0/24`), if it holds exactly
    /// one IPv4 CIDR.
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK` entries that are IPv6 CIDRs.
    pub ipv6_networks: Vec<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET` as a network, if it holds exactly one IPv6 CIDR.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// Values that were present but unusable, each naming the key and the value.
    pub problems: Vec<SubnetEnvError>,
}

impl PreviousSubnetEnv {
    /// Reads `path`. A missing file is `Ok(None)` (first start); other read errors are
    /// returned for the caller to log.
    pub fn read(path: &Path) -> Result<Option<Self>, SubnetEnvError> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(Self::parse(path, &String::from_utf8_lossy(&bytes)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("open", path)(e)),
        }
    }

    /// Parses file contents with dotenv rules like upstream's godotenv: blank lines and `#`
    /// comments skipped, an optional `export ` prefix, whitespace around key and value trimmed,
    /// matching surrounding quotes removed, the last occurrence of a key wins.
    pub fn parse(path: &Path, text: &str) -> Self {
        let mut values: [Option<String>; 4] = Default::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let slot = match key.trim() {
                KEY_NETWORK => 0,
                KEY_SUBNET => 1,
                KEY_IPV6_NETWORK => 2,
                KEY_IPV6_SUBNET => 3,
                _ => continue,
            };
            values[slot] = Some(dotenv_value(value));
        }

        let mut out = PreviousSubnetEnv::default();
        let [network, subnet, ipv6_network, ipv6_subnet] = values;
        (out.networks, out.subnet) = out.family(path, network, subnet);
        (out.ipv6_networks, out.ipv6_subnet) = out.family(path, ipv6_network, ipv6_subnet);
        out
    }

    /// The single `FLANNEL_NETWORK`, as upstream's `ReadCIDRFromSubnetFile` returns it: `None`
    /// when there are zero or several.
    pub fn network(&self) -> Option<Ipv4Net> {
        only(&self.networks)
    }

    /// The single `FLANNEL_IPV6_NETWORK`, or `None` when there are zero or several.
    pub fn ipv6_network(&self) -> Option<Ipv6Net> {
        only(&self.ipv6_networks)
    }

    /// Reads one family's network list and subnet from their raw values.
    fn family<N: FamilyNet>(
        &mut self,
        path: &Path,
        network: Option<String>,
        subnet: Option<String>,
    ) -> (Vec<N>, Option<N>) {
        let (network_key, subnet_key, expected) = N::FAMILY.pick(
            (KEY_NETWORK, KEY_SUBNET, "an IPv4 CIDR"),
            (KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, "an IPv6 CIDR"),
        );
        let networks = network
            .map(|v| self.list(path, network_key, &v, expected))
            .unwrap_or_default();
        let subnet = subnet.and_then(|v| self.single(path, subnet_key, &v, expected));
        (networks, subnet)
    }

    fn list<N: FamilyNet>(
        &mut self,
        path: &Path,
        key: &'static str,
        value: &str,
        expected: &'static str,
    ) -> Vec<N> {
        let mut out = Vec::new();
        for part in value.split(',') {
            match goip::parse_cidr(part).and_then(|c| N::from_ip_net(c.network())) {
                Some(n) => out.push(n),
                None => self.problems.push(invalid(path, key, part, expected)),
            }
        }
        out
    }

    fn single<N: FamilyNet>(
        &mut self,
        path: &Path,
        key: &'static str,
        value: &str,
        expected: &'static str,
    ) -> Option<N> {
        if value.contains(',') {
            self.problems
                .push(invalid(path, key, value, "exactly one CIDR"));
            return None;
        }
        let net = goip::parse_cidr(value).and_then(|c| N::from_ip_net(c.network()));
        if net.is_none() {
            self.problems.push(invalid(path, key, value, expected));
        }
        net
    }
}

/// The one element of a list, `None` when there are zero or several.
fn only<T: Copy>(items: &[T]) -> Option<T> {
    match items {
        [n] => Some(*n),
        _ => None,
    }
}

/// [`SubnetEnvError::InvalidValue`] for `key` in `path`.
fn invalid(path: &Path, key: &'static str, value: &str, expected: &'static str) -> SubnetEnvError {
    SubnetEnvError::InvalidValue {
        path: path.to_path_buf(),
        key,
        value: value.to_string(),
        expected,
    }
}

/// A dotenv value: trimmed, with one pair of matching surrounding quotes removed; an unquoted
/// value loses a trailing ` #comment`.
fn dotenv_value(raw: &str) -> String {
    let v = raw.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    match v.find(" #") {
        Some(i) => v[..i].trim_end().to_string(),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn n4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn n6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ipn(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn v4_env() -> SubnetEnv {
        SubnetEnv {
            ipv4: Some(SubnetEnvV4 {
                network: n4("10.244.0.0/16"),
                subnet: n4("10.244.1.0/24"),
            }),
            ipv6: None,
            mtu: 1450,
            ip_masq: true,
        }
    }

    // ---- writer ------------------------------------------------------------------------

    #[test]
    fn render_ipv4() {
        assert_eq!(
            v4_env().render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn render_sample_from_upstream() {
        let env = SubnetEnv {
            ipv4: Some(SubnetEnvV4 {
                network: n4("10.1.0.0/16"),
                subnet: n4("10.1.74.0/24"),
            }),
            ipv6: None,
            mtu: 1472,
            ip_masq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn render_dual_stack_order() {
        let env = SubnetEnv {
            ipv6: Some(SubnetEnvV6 {
                network: n6("2001:cafe:42::/56"),
                subnet: n6("2001:cafe:42:1::/64"),
            }),
            ..v4_env()
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn render_ipv6_only() {
        let env = SubnetEnv {
            ipv4: None,
            ipv6: Some(SubnetEnvV6 {
                network: n6("fc00::/48"),
                subnet: n6("fc00:0:0:5::/64"),
            }),
            mtu: 1430,
            ip_masq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:5::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn render_uses_network_address_of_subnet() {
        let env = SubnetEnv {
            ipv4: Some(SubnetEnvV4 {
                network: n4("10.244.0.0/16"),
                subnet: n4("10.244.1.9/24"),
            }),
            ..v4_env()
        };
        assert!(env.render().contains("FLANNEL_SUBNET=10.244.1.1/24\n"));
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_dirs_and_sets_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/flannel/subnet.env");
        v4_env().write_atomic(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), v4_env().render());
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(&tmp.path().join("run")), 0o755);
        assert_eq!(mode(&tmp.path().join("run/flannel")), 0o755);
        assert_eq!(entries(&tmp.path().join("run/flannel")), vec!["subnet.env"]);
    }

    #[test]
    fn write_atomic_replaces_and_ignores_old_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("subnet.env");
        fs::write(&path, "old contents that are longer than the new ones ....................................................................").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let before = fs::metadata(&path).unwrap().ino();
        v4_env().write_atomic(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), v4_env().render());
        assert_eq!(mode(&path), 0o644);
        // A rename put a new inode in place: readers holding the old file never see a mix.
        assert_ne!(fs::metadata(&path).unwrap().ino(), before);
        assert_eq!(entries(tmp.path()), vec!["subnet.env"]);
    }

    #[test]
    fn write_atomic_leaves_existing_dir_mode_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("existing");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("subnet.env");
        v4_env().write_atomic(&path).unwrap();
        // An existing directory is not touched.
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn write_file_atomic_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cni/flannel/abc123");
        write_file_atomic(&path, b"{}", 0o600, 0o700).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("cni")), 0o700);
        assert_eq!(mode(&tmp.path().join("cni/flannel")), 0o700);
    }

    #[test]
    fn parent_dir_of_bare_name_is_cwd() {
        // A bare file name lives in "." (tested without chdir, which would race other tests).
        assert_eq!(parent_dir(Path::new("subnet.env")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/subnet.env")), Path::new("/"));
        assert_eq!(parent_dir(Path::new("a/b")), Path::new("a"));
    }

    #[test]
    fn write_atomic_failure_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        // The target is a non-empty directory, so the final rename must fail.
        let path = tmp.path().join("subnet.env");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "x").unwrap();
        let err = v4_env().write_atomic(&path).unwrap_err();
        assert!(err.to_string().starts_with("rename "), "{err}");
        assert_eq!(entries(tmp.path()), vec!["subnet.env"]);
    }

    #[test]
    fn write_atomic_reports_unusable_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = v4_env().write_atomic(&file.join("subnet.env")).unwrap_err();
        assert!(err.to_string().starts_with("mkdir "), "{err}");
        assert!(err.to_string().ends_with(": file exists"), "{err}");
    }

    // ---- CNI reader --------------------------------------------------------------------

    fn cni(text: &str) -> Result<CniSubnetEnv, SubnetEnvError> {
        CniSubnetEnv::parse(Path::new("/run/flannel/subnet.env"), text)
    }

    #[test]
    fn cni_reads_what_flanneld_writes() {
        let env = cni(&v4_env().render()).unwrap();
        assert_eq!(
            env,
            CniSubnetEnv {
                networks: vec![ipn("10.244.0.0/16")],
                subnet: Some(ipn("10.244.1.0/24")),
                ipv6_networks: vec![],
                ipv6_subnet: None,
                mtu: 1450,
                ip_masq: true,
            }
        );
    }

    #[test]
    fn cni_reads_dual_stack_and_lists() {
        let env = cni(
            "FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16,10.1.0.0/16,10.1.3.4/16\n\
             FLANNEL_SUBNET=10.1.17.1/24\n\
             FLANNEL_IPV6_NETWORK=fc00::/48,fc00::1/48\r\n\
             FLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n\
             # a comment\n\
             SOMETHING_ELSE=1\n\
             FLANNEL_MTU=1472\n\
             FLANNEL_IPMASQ=false",
        )
        .unwrap();
        assert_eq!(env.networks, vec![ipn("10.1.0.0/16"), ipn("10.2.0.0/16")]);
        assert_eq!(env.subnet, Some(ipn("10.1.17.0/24")));
        assert_eq!(env.ipv6_networks, vec![ipn("fc00::/48")]);
        assert_eq!(env.ipv6_subnet, Some(ipn("fc00:0:0:3::/64")));
        assert_eq!(env.mtu, 1472);
        assert!(!env.ip_masq);
    }

    #[test]
    fn cni_ipmasq_is_true_only_for_exactly_true() {
        let base = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\n";
        for (v, want) in [
            ("true", true),
            ("True", false),
            ("TRUE", false),
            ("1", false),
            ("true ", false),
            ("", false),
        ] {
            let env = cni(&format!("{base}FLANNEL_IPMASQ={v}\n")).unwrap();
            assert_eq!(env.ip_masq, want, "{v:?}");
        }
    }

    #[test]
    fn cni_last_occurrence_wins() {
        let env = cni(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_NETWORK=10.9.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n\
             FLANNEL_MTU=1\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(env.networks, vec![ipn("10.9.0.0/16")]);
        assert_eq!(env.mtu, 1400);
        assert!(!env.ip_masq);
    }

    #[test]
    fn cni_ipv6_only_is_complete() {
        let env = cni(
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert!(env.networks.is_empty());
        assert_eq!(env.subnet, None);
    }

    #[test]
    fn cni_missing_keys_error_texts() {
        assert_eq!(
            cni("").unwrap_err().to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        assert_eq!(
            cni("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n")
                .unwrap_err()
                .to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        assert_eq!(
            cni("FLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
                .unwrap_err()
                .to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"
        );
        assert_eq!(
            cni("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
                .unwrap_err()
                .to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET"
        );
        assert_eq!(
            cni("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPMASQ=true\n")
                .unwrap_err()
                .to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_MTU"
        );
        assert_eq!(
            cni("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\n")
                .unwrap_err()
                .to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_IPMASQ"
        );
        // Keys are case-sensitive and not trimmed, as in the plugin.
        assert_eq!(
            cni("flannel_mtu=1450\n FLANNEL_IPMASQ=true\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n")
                .unwrap_err()
                .to_string(),
            "/run/flannel/subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ"
        );
    }

    #[test]
    fn cni_bad_values_name_key_and_value() {
        let e = |t: &str| cni(t).unwrap_err().to_string();
        assert_eq!(
            e("FLANNEL_MTU=abc\n"),
            r#"/run/flannel/subnet.env: invalid FLANNEL_MTU value "abc": expected an unsigned 32-bit integer"#
        );
        assert!(e("FLANNEL_MTU=+1450\n").contains(r#"FLANNEL_MTU value "+1450""#));
        assert!(e("FLANNEL_MTU= 1450\n").contains(r#"FLANNEL_MTU value " 1450""#));
        assert!(e("FLANNEL_MTU=-1\n").contains(r#"FLANNEL_MTU value "-1""#));
        assert!(e("FLANNEL_MTU=4294967296\n").contains(r#"FLANNEL_MTU value "4294967296""#));
        assert!(
            cni("FLANNEL_MTU=4294967295\n")
                .unwrap_err()
                .to_string()
                .contains("is missing")
        );
        assert_eq!(
            e("FLANNEL_SUBNET=10.1.17.1\n"),
            r#"/run/flannel/subnet.env: invalid FLANNEL_SUBNET value "10.1.17.1": expected a CIDR such as 10.244.0.0/16"#
        );
        assert!(e("FLANNEL_NETWORK=10.1.0.0/16,\n").contains(r#"FLANNEL_NETWORK value """#));
        assert!(e("FLANNEL_NETWORK=\n").contains(r#"FLANNEL_NETWORK value """#));
        assert!(e("FLANNEL_IPV6_SUBNET=fc00::/129\n").contains("FLANNEL_IPV6_SUBNET"));
        assert!(e("FLANNEL_IPV6_NETWORK=x\n").contains("FLANNEL_IPV6_NETWORK"));
        assert_eq!(
            e("FLANNEL_MTU\n"),
            "/run/flannel/subnet.env: FLANNEL_MTU has no value (no '=' on its line)"
        );
    }

    #[test]
    fn cni_value_split_on_first_equals() {
        // A second '=' is part of the value (which then fails to parse, naming it whole).
        assert!(
            cni("FLANNEL_MTU=1450=1\n")
                .unwrap_err()
                .to_string()
                .contains(r#""1450=1""#)
        );
    }

    #[test]
    fn cni_load_missing_file_reads_like_go() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("subnet.env");
        let err = CniSubnetEnv::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("open {}: no such file or directory", path.display())
        );
        v4_env().write_atomic(&path).unwrap();
        assert_eq!(CniSubnetEnv::load(&path).unwrap().mtu, 1450);
    }

    // ---- flanneld's restart reader -----------------------------------------------------

    #[test]
    fn previous_missing_file_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            PreviousSubnetEnv::read(&tmp.path().join("nope"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn previous_unreadable_path_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let err = PreviousSubnetEnv::read(tmp.path()).unwrap_err();
        assert!(err.to_string().ends_with(": is a directory"), "{err}");
    }

    #[test]
    fn previous_reads_what_flanneld_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("subnet.env");
        let env = SubnetEnv {
            ipv6: Some(SubnetEnvV6 {
                network: n6("fc00::/48"),
                subnet: n6("fc00:0:0:5::/64"),
            }),
            ..v4_env()
        };
        env.write_atomic(&path).unwrap();
        let prev = PreviousSubnetEnv::read(&path).unwrap().unwrap();
        assert_eq!(prev.networks, vec![n4("10.244.0.0/16")]);
        assert_eq!(prev.network(), Some(n4("10.244.0.0/16")));
        assert_eq!(prev.subnet, Some(n4("10.244.1.0/24")));
        assert_eq!(prev.ipv6_networks, vec![n6("fc00::/48")]);
        assert_eq!(prev.ipv6_network(), Some(n6("fc00::/48")));
        assert_eq!(prev.ipv6_subnet, Some(n6("fc00:0:0:5::/64")));
        assert!(prev.problems.is_empty());
    }

    #[test]
    fn previous_is_tolerant_and_reports_problems() {
        let prev = PreviousSubnetEnv::parse(
            Path::new("/run/flannel/subnet.env"),
            "# written by hand\n\
             export FLANNEL_NETWORK = \"10.1.0.0/16,10.2.0.0/16\"\n\
             FLANNEL_SUBNET=garbage\n\
             FLANNEL_IPV6_NETWORK=10.3.0.0/16\n\
             FLANNEL_IPV6_SUBNET='fc00:0:0:7::1/64' \n\
             FLANNEL_MTU=not-a-number\n",
        );
        assert_eq!(prev.networks, vec![n4("10.1.0.0/16"), n4("10.2.0.0/16")]);
        // Several networks: the single-value accessor gives none, as upstream.
        assert_eq!(prev.network(), None);
        assert_eq!(prev.subnet, None);
        assert!(prev.ipv6_networks.is_empty());
        assert_eq!(prev.ipv6_subnet, Some(n6("fc00:0:0:7::/64")));
        let problems: Vec<String> = prev.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            vec![
                r#"/run/flannel/subnet.env: invalid FLANNEL_SUBNET value "garbage": expected an IPv4 CIDR"#,
                r#"/run/flannel/subnet.env: invalid FLANNEL_IPV6_NETWORK value "10.3.0.0/16": expected an IPv6 CIDR"#,
            ]
        );
        let prev = PreviousSubnetEnv::parse(
            Path::new("f"),
            "FLANNEL_SUBNET=10.1.1.1/24,10.1.2.1/24 # two\n",
        );
        assert_eq!(prev.subnet, None);
        assert_eq!(
            prev.problems[0].to_string(),
            r#"f: invalid FLANNEL_SUBNET value "10.1.1.1/24,10.1.2.1/24": expected exactly one CIDR"#
        );
    }

    #[test]
    fn scan_lines_matches_bufio() {
        assert_eq!(scan_lines("").count(), 0);
        assert_eq!(scan_lines("a\n").collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(scan_lines("a\r\nb").collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(scan_lines("\n\n").collect::<Vec<_>>(), vec!["", ""]);
    }
}
