//! Preconditions on the machine running the lab: root, installed programs, live processes.
//!
//! Checked up front so a missing package or a non-root run fails with a sentence that says how to
//! fix it instead of an errno from deep inside `ip`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// Programs the lab drives and the Debian package that ships each, used to turn "not found" into
/// an actionable error.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("tcpdump", "tcpdump"),
    ("iperf3", "iperf3"),
    ("ethtool", "ethtool"),
    ("ctr", "containerd"),
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("podman", "podman"),
    ("busybox", "busybox-static"),
    ("sh", "dash"),
    ("setsid", "util-linux"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("mount", "mount"),
    ("ss", "iproute2"),
];

/// Where Debian's `containernetworking-plugins` puts the CNI plugins; a plugin named by path
/// (`/usr/lib/cni/bridge`) is looked up here first, so it is not mistaken for iproute2's
/// `bridge` command.
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni/";

/// Directories searched after `PATH`: root's tools live in sbin, which a non-login `PATH` may lack.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The Debian package that provides `binary`, if the lab knows it.
///
/// Exposed so tests and the `flannel-lab` command can print the same install hint the lab does.
pub fn package_for(binary: &str) -> Option<&'static str> {
    if binary.starts_with(CNI_PLUGIN_DIR) {
        return Some("containernetworking-plugins");
    }
    let base = Path::new(binary)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or(binary);
    PACKAGES.iter().find(|(b, _)| *b == base).map(|(_, p)| *p)
}

/// Finds `binary` like a shell would (`PATH`, then the sbin directories), or says which Debian
/// package to install.
///
/// A name containing `/` is checked as a path. Every component that execs a program calls this
/// first, so a missing `etcd` reads "install etcd-server" rather than "No such file or directory".
pub fn require_binary(binary: &str) -> Result<PathBuf> {
    find_binary_in(binary, std::env::var_os("PATH").as_deref()).ok_or_else(|| {
        LabError::MissingBinary {
            binary: binary.to_string(),
            package: package_for(binary).map(str::to_string),
        }
    })
}

/// The search behind [`require_binary`], with the `PATH` value passed in so it can be tested
/// without touching the process environment.
pub(crate) fn find_binary_in(binary: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if binary.is_empty() {
        return None;
    }
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_executable(&p).then_some(p);
    }
    let from_path = path_var
        .map(|v| std::env::split_paths(v).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(binary))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails with [`LabError::NotRoot`] unless the effective user is root.
///
/// `action` completes the sentence "flannel-lab must run as root to ...".
pub fn require_root(action: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot {
            action: action.to_string(),
        })
    }
}

/// Whether a process with this pid exists (zombies count as alive).
///
/// The stale-namespace reaper uses it to decide whether the test run that created a namespace is
/// gone. Signal 0 checks existence without delivering anything; EPERM still means "exists".
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// The resolved path of `ip`, looked up once per process because nearly every lab step runs it.
pub(crate) fn ip_binary() -> Result<PathBuf> {
    static IP: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    IP.get_or_init(|| require_binary("ip").ok())
        .clone()
        .ok_or_else(|| LabError::MissingBinary {
            binary: "ip".into(),
            package: Some("iproute2".into()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_package() {
        assert!(
            find_binary_in("etcd-definitely-absent", Some(OsStr::new("/nonexistent"))).is_none()
        );
        let err = LabError::MissingBinary {
            binary: "etcd".into(),
            package: package_for("etcd").map(str::to_string),
        };
        let msg = err.to_string();
        assert!(msg.contains("`etcd`"), "{msg}");
        assert!(msg.contains("etcd-server"), "{msg}");
        assert_eq!(package_for("etcdctl"), Some("etcd-client"));
        assert_eq!(package_for("ping"), Some("iputils-ping"));
        assert_eq!(package_for("/usr/sbin/ip"), Some("iproute2"));
        assert_eq!(package_for("frobnicate"), None);
        assert_eq!(
            package_for("/usr/lib/cni/bridge"),
            Some("containernetworking-plugins")
        );
        assert_eq!(package_for("bridge"), Some("iproute2"));
        assert_eq!(package_for("setsid"), Some("util-linux"));
    }

    #[test]
    fn require_binary_reports_unknown_program() {
        match require_binary("flannel-lab-no-such-program") {
            Err(LabError::MissingBinary { binary, package }) => {
                assert_eq!(binary, "flannel-lab-no-such-program");
                assert_eq!(package, None);
            }
            other => panic!("expected MissingBinary, got {other:?}"),
        }
    }

    #[test]
    fn finds_binaries_in_sbin_even_without_path() {
        // `sh` is in /bin or /usr/bin, never in the sbin fallbacks; `ip` is in /usr/sbin or /sbin.
        assert!(find_binary_in("sh", Some(OsStr::new("/usr/bin:/bin"))).is_some());
        if Path::new("/usr/sbin/ip").exists() || Path::new("/sbin/ip").exists() {
            assert!(find_binary_in("ip", None).is_some());
        }
        assert!(find_binary_in("/bin/sh", None).is_some());
        assert!(find_binary_in("/nonexistent/sh", None).is_none());
    }

    #[test]
    fn pid_alive_tracks_process_lifetime() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        // Reaped: the pid is free (reuse within this instant is practically impossible).
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
    }

    #[test]
    fn not_root_error_says_how_to_fix() {
        let msg = LabError::NotRoot {
            action: "create network namespaces".into(),
        }
        .to_string();
        assert!(msg.contains("must run as root to create network namespaces"));
        assert!(msg.contains("sudo"));
    }
}
