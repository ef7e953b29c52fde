//! A node's own file system for what a DaemonSet shares with the host: the lab's nodes are
//! namespaces on one machine, so each gets a directory standing for its root, and a hostPath
//! `/run/flannel` of node `n1` is `<n1's directory>/host/run/flannel`.
//!
//! Containers see those directories through bind mounts ([`crate::daemonset`]). Programs the
//! node runs on the host itself, the CNI plugins a runtime executes, see them through
//! [`view_command`]: a private mount namespace in which the node's `run` and `var/lib`
//! directories are mounted over `/run` and `/var/lib`, with the machine's `/run/netns` kept
//! (network namespaces are found there). So the `flannel` plugin reads the subnet.env the node's
//! flanneld wrote at its default path `/run/flannel/subnet.env`, keeps its state in
//! `/var/lib/cni/flannel` and host-local its leases in `/var/lib/cni/networks`, and iptables in
//! `portmap` takes the node's `/run/xtables.lock`, as on a real node, while nothing of the
//! machine's own `/run` or `/var/lib` is read or written, and nothing is created outside the
//! node's directory.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};
use crate::host::require_binary;

/// The node's directories under its root that [`view_command`] mounts over the machine's.
const VIEW_DIRS: [&str; 2] = ["run", "var/lib"];

/// Mounts the node's `/run` and `/var/lib`, keeping the machine's `/run/netns`, then execs the
/// command. The sources are opened first and mounted through `/proc/self/fd`, so covering `/run`
/// (or `/var/lib`) cannot hide a source that lives below it; `-n` keeps mount from writing
/// `/run/mount/utab`.
const VIEW_SCRIPT: &str = r#"set -e
root=$1; shift
exec 3</run/netns 4<"$root/run" 5<"$root/var/lib"
mount -n --no-canonicalize --bind /proc/self/fd/5 /var/lib
mount -n --no-canonicalize --bind /proc/self/fd/4 /run
mount -n --no-canonicalize --rbind /proc/self/fd/3 /run/netns
exec "$@" 3<&- 4<&- 5<&-
"#;

/// The directory standing for one node's `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoot {
    dir: PathBuf,
}

impl NodeRoot {
    /// The root of the node whose lab directory is `node_dir`: `<node_dir>/host`.
    pub fn new(node_dir: &Path) -> NodeRoot {
        NodeRoot {
            dir: node_dir.join("host"),
        }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the node's absolute path `node_path` is on this machine.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.dir.join(node_path.trim_start_matches('/'))
    }

    /// Creates the directories [`view_command`] mounts (and `/run/netns` inside the node's
    /// `/run`, the mount point for the machine's).
    pub fn prepare(&self) -> Result<()> {
        for d in VIEW_DIRS
            .iter()
            .map(|d| self.dir.join(d))
            .chain([self.dir.join("run/netns")])
        {
            std::fs::create_dir_all(&d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        Ok(())
    }
}

/// `program args...` with the node's `/run` and `/var/lib` (see the module documentation), in a
/// mount namespace of its own; the environment and stdio given to the returned command reach
/// the program.
pub fn view_command<I, S>(root: &Path, program: &OsStr, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    // Checked here so a missing tool is named with its package rather than failing in sh.
    require_binary("mount")?;
    let mut cmd = Command::new(require_binary("unshare")?);
    cmd.args(["--mount", "--propagation", "slave", "--"])
        .arg(require_binary("sh")?)
        .args(["-c", VIEW_SCRIPT, "sh"])
        .arg(root)
        .arg(program)
        .args(args);
    Ok(cmd)
}

/// Mounts the node's `/run` over the machine's, keeping the machine's `/run/netns` and one
/// more directory (the lab's, which may lie under `/run`), then execs the command (`$1` the
/// node's `run`, `$2` the directory kept, the rest the command). The kept directories are
/// mount points inside the node's own `/run`, so nothing is created on the machine.
const RUN_VIEW_SCRIPT: &str = r#"set -e
run=$1; keep=$2; shift 2
exec 3</run/netns 4<"$run" 5<"$keep"
mount -n --no-canonicalize --bind /proc/self/fd/4 /run
mkdir -p /run/netns "$keep"
mount -n --no-canonicalize --rbind /proc/self/fd/3 /run/netns
mount -n --no-canonicalize --rbind /proc/self/fd/5 "$keep"
exec "$@" 3<&- 4<&- 5<&-
"#;

/// `program args...` with the node's `/run` (`<root>/run`) in a mount namespace of its own,
/// the machine's `/run/netns` and `keep` (the lab's directory) still there. This is how a
/// lab node's daemons see what the kubelet gives a pod on a real node:
/// `/var/run/secrets/kubernetes.io/serviceaccount` (`/var/run` is `/run`) holds *this* node's
/// ServiceAccount token, and `/run/xtables.lock` is the node's.
pub fn run_view_command<I, S>(
    root: &NodeRoot,
    keep: &Path,
    program: &OsStr,
    args: I,
) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    root.prepare()?;
    require_binary("mount")?;
    let mut cmd = Command::new(require_binary("unshare")?);
    cmd.args(["--mount", "--propagation", "slave", "--"])
        .arg(require_binary("sh")?)
        .args(["-c", RUN_VIEW_SCRIPT, "sh"])
        .arg(root.path("/run"))
        .arg(keep)
        .arg(program)
        .args(args);
    Ok(cmd)
}

/// Mounts one node directory over one machine directory in a private mount namespace, then
/// execs the command (`$1` source, `$2` target, the rest the command).
const PRIVATE_DIR_SCRIPT: &str = r#"set -e
src=$1; dst=$2; shift 2
mkdir -p "$dst"
exec 3<"$src"
mount -n --no-canonicalize --bind /proc/self/fd/3 "$dst"
exec "$@" 3<&-
"#;

/// Where WireGuard userspace implementations put their control sockets (`wg` looks there).
pub const WIREGUARD_RUN_DIR: &str = "/run/wireguard";

/// `program args...` seeing the node's own `/run/wireguard` (`<node_dir>/run/wireguard`) in
/// a private mount namespace, nothing else changed. flanneld's userspace WireGuard device and
/// `wg show` then meet at the standard socket path `/var/run/wireguard/flannel-wg.sock`
/// without one node's socket replacing another's: the lab's nodes share one file system.
pub fn wireguard_view(node_dir: &Path, program: &OsStr) -> Result<Command> {
    let src = wireguard_dir(node_dir);
    std::fs::create_dir_all(&src)
        .map_err(|e| LabError::io(format!("creating {}", src.display()), e))?;
    require_binary("mount")?;
    let mut cmd = Command::new(require_binary("unshare")?);
    cmd.args(["--mount", "--propagation", "slave", "--"])
        .arg(require_binary("sh")?)
        .args(["-c", PRIVATE_DIR_SCRIPT, "sh"])
        .arg(&src)
        .arg(WIREGUARD_RUN_DIR)
        .arg(program);
    Ok(cmd)
}

/// The node's own `/run/wireguard`.
pub fn wireguard_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("run/wireguard")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_live_under_the_node_directory() {
        let r = NodeRoot::new(Path::new("/lab/n1"));
        assert_eq!(r.dir(), Path::new("/lab/n1/host"));
        assert_eq!(
            r.path("/run/flannel/subnet.env"),
            Path::new("/lab/n1/host/run/flannel/subnet.env")
        );
        assert_eq!(r.path("opt/cni/bin"), Path::new("/lab/n1/host/opt/cni/bin"));
    }
}
