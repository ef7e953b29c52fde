//! Named network namespaces as drop guards, and the reaper for ones left by killed test runs.
//!
//! Namespaces are *named* (`ip netns add`, a bind mount under `/run/netns`) rather than anonymous,
//! so other programs can be started in them by name (`ip netns exec`) or by path
//! (`CNI_NETNS=/run/netns/<name>`, `nsenter --net=...`), exactly as a container runtime does.
//!
//! # Naming and the reaper
//! Every name is `flab-<pid>-<counter>-<role>`: the prefix marks it as the lab's, the pid of the
//! creating process and a process-wide counter make it unique across parallel tests and parallel
//! test binaries, and the role (`ul`, `n1`, `pod-a`, ...) helps a human reading `ip netns list`.
//! Drop guards clean up after panics, but not after SIGKILL (a test timeout, an OOM kill, Ctrl-C
//! twice). [`reap_stale`] therefore removes namespaces with the lab prefix whose embedded pid no
//! longer exists; [`crate::Lab`] runs it on every build. It kills any process still inside such a
//! namespace first. It never touches a namespace whose creator is alive, so parallel runs are safe.
//! (Limitation: it assumes every lab user shares one pid namespace, and a recycled pid keeps a
//! leftover until that unrelated process exits.)

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use crate::command::{self, DEFAULT_COMMAND_TIMEOUT, check, describe, run_command};
use crate::error::{LabError, Result};
use crate::host::{ip_binary, pid_alive, require_root};

/// Prefix of every namespace (and temp directory) the lab creates; the reaper's key.
pub const NAME_PREFIX: &str = "flab";

/// Prefix of the namespaces of a *persistent* lab (one that outlives its creator, see
/// [`crate::LabState`]): `flabd-<id>-<role>`. [`reap_stale`] does not match it (no pid follows
/// the prefix), so a lab left running by `flannel-lab up` survives the next test run; only
/// [`crate::LabState::teardown`] removes it.
pub const DETACHED_PREFIX: &str = "flabd";

/// Where `ip netns` keeps its bind mounts; a namespace's path is this joined with its name.
pub const NETNS_DIR: &str = "/run/netns";

/// How long dropping a namespace waits for killed processes to disappear before deleting anyway.
const KILL_WAIT: Duration = Duration::from_secs(3);

/// Prefix of the lab's temp directories: `flrs-lab-<pid>-<counter>-<kind>-XXXXXX`.
///
/// `flrs` is what `scripts/test` greps process command lines for after the suite: etcd and
/// flanneld get paths under these directories as arguments, so a leaked daemon is caught.
pub const TEMP_PREFIX: &str = "flrs-lab-";

/// Process-wide counter that makes names unique within one test binary.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns a fresh `<prefix>-<pid>-<counter>` stem, unique within this machine while we live.
///
/// Also used for temp directories so the reaper can match them to dead processes.
pub(crate) fn unique_stem() -> String {
    format!(
        "{NAME_PREFIX}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private temp directory named so that [`reap_stale`] can match it to its creating process.
pub(crate) fn temp_dir(kind: &str) -> Result<tempfile::TempDir> {
    let stem = unique_stem();
    let id = stem.strip_prefix(NAME_PREFIX).unwrap_or(&stem);
    tempfile::Builder::new()
        .prefix(&format!(
            "{TEMP_PREFIX}{}-{kind}-",
            id.trim_start_matches('-')
        ))
        .tempdir()
        .map_err(|e| LabError::io(format!("creating a temp dir for {kind}"), e))
}

/// A named network namespace that deletes itself (after killing what runs inside) when dropped.
///
/// The guard is the unit of cleanup: nodes, pods, the underlay and ad-hoc test namespaces are all
/// one of these, so a panicking test still leaves `ip netns list` empty.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
    /// False for a handle on a namespace this process did not create ([`Netns::open`]): dropping
    /// such a handle must not delete someone else's namespace.
    owned: bool,
}

impl Netns {
    /// Creates `flab-<pid>-<counter>-<role>` with `lo` up.
    ///
    /// `role` may use letters, digits, `-`, `_` and `.`; it is only for humans reading
    /// `ip netns list`. Loopback is raised because everything local (etcd on 127.0.0.1, flanneld's
    /// healthz) needs it and a fresh namespace has it down.
    pub fn new(role: &str) -> Result<Netns> {
        Self::new_in(None, role)
    }

    /// Creates `<stem>-<role>` (a persistent lab's naming, see [`DETACHED_PREFIX`]) or, without
    /// a stem, `flab-<pid>-<counter>-<role>` like [`Netns::new`].
    pub(crate) fn new_in(stem: Option<&str>, role: &str) -> Result<Netns> {
        if role.is_empty()
            || role.len() > 64
            || !role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(LabError::Invalid(format!(
                "namespace role {role:?} must be 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
        require_root("create network namespaces")?;
        let name = match stem {
            Some(stem) => format!("{stem}-{role}"),
            None => format!("{}-{role}", unique_stem()),
        };
        ip_global(["netns", "add", &name])?;
        let ns = Netns {
            name,
            deleted: false,
            owned: true,
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that this process does not own, e.g. one of a lab left
    /// running by `flannel-lab up`: everything that takes a `&Netns` ([`crate::ping`],
    /// [`crate::run_ok`], [`crate::spawn_in`]) works with it, and dropping it deletes nothing.
    /// [`Netns::delete`] still deletes explicitly.
    pub fn open(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || !netns_exists(name) {
            return Err(LabError::Invalid(format!(
                "network namespace {name:?} does not exist (no {NETNS_DIR}/{name})"
            )));
        }
        Ok(Netns {
            name: name.to_string(),
            deleted: false,
            owned: false,
        })
    }

    /// The namespace's name, for `ip netns exec <name>` and `ip -n <name>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount path, for `CNI_NETNS`, `nsenter --net=` or `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <ns> <args>` and returns stdout; `-n` is cheaper than `ip netns exec`.
    ///
    /// The error carries the command line, exit status and stderr.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = std::process::Command::new(ip_binary()?);
        cmd.arg("-n").arg(&self.name).args(args);
        let line = describe(&cmd);
        let out = check(line, run_command(cmd, None, DEFAULT_COMMAND_TIMEOUT)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies many `ip` commands (one per line, without the leading `ip`) in one process.
    ///
    /// Building a node takes a dozen commands; batching keeps lab set-up fast on a 2-core machine.
    /// `ip` stops at the first failing line and names it in stderr.
    pub fn ip_batch(&self, script: &str) -> Result<()> {
        let mut cmd = std::process::Command::new(ip_binary()?);
        cmd.arg("-n").arg(&self.name).args(["-batch", "-"]);
        let line = format!("{} <<EOF\n{}EOF", describe(&cmd), script);
        check(
            line,
            run_command(cmd, Some(script.as_bytes()), DEFAULT_COMMAND_TIMEOUT)?,
        )?;
        Ok(())
    }

    /// [`crate::run_in`] on this namespace: output whatever the exit status.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        command::run_in(self, args)
    }

    /// [`crate::run_ok`] on this namespace: stdout, or an error naming command, status and stderr.
    pub fn run_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        command::run_ok(self, args)
    }

    /// A `Command` for `program` inside this namespace (`ip netns exec <ns> <program>`).
    ///
    /// For callers that need their own stdio or environment; add arguments and spawn it yourself.
    pub fn command(&self, program: &str) -> Result<std::process::Command> {
        command::netns_exec_command(&self.name, [program])
    }

    /// Sets a `net.*` sysctl inside this namespace and reads it back.
    ///
    /// Only `net.` keys are accepted: they are per-namespace, while every other sysctl would
    /// change the whole machine, which tests must never do. The write happens in a process that
    /// joined the namespace, so the root namespace's value is untouched.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        run_ok_here(
            &self.name,
            [
                "sh",
                "-c",
                r#"printf '%s\n' "$1" > "$2" && cat "$2""#,
                "sh",
                value,
                &path,
            ],
        )
        .and_then(|got| {
            if got.trim() == value.trim() {
                Ok(())
            } else {
                Err(LabError::Invalid(format!(
                    "sysctl {key} in {} reads {:?} after writing {value:?}",
                    self.name,
                    got.trim()
                )))
            }
        })
    }

    /// Reads a `net.*` sysctl as seen inside this namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        Ok(run_ok_here(&self.name, ["cat", path.as_str()])?
            .trim()
            .to_string())
    }

    /// Pids of processes whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        pids_of(&self.name)
    }

    /// Runs `f` on a helper thread that has joined this namespace, and returns its result.
    ///
    /// For work that needs a socket inside the namespace without a subprocess: probing a port,
    /// an HTTP health check, picking free ports. Only the helper thread changes namespace (network
    /// namespaces are per thread), so the caller and the rest of the process are unaffected. A
    /// panic in `f` is propagated.
    pub fn in_thread<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        in_netns_thread(&self.path(), f)
    }

    /// Returns `n` distinct TCP ports that are free on every address of this namespace.
    ///
    /// Binding port 0 on 0.0.0.0 lets the kernel choose; the sockets are held until all `n` are
    /// picked (so they differ) and then closed. A fresh namespace has no other listeners, so the
    /// ports stay free unless a process started in the same namespace takes them; callers retry
    /// on "address in use".
    pub fn free_tcp_ports(&self, n: usize) -> Result<Vec<u16>> {
        let ports = self.in_thread(move || -> std::io::Result<Vec<u16>> {
            let listeners = (0..n)
                .map(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))
                .collect::<std::io::Result<Vec<_>>>()?;
            listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect()
        })?;
        ports.map_err(|e| LabError::io(format!("picking free ports in {}", self.name), e))
    }

    /// Deletes the namespace now, reporting errors that `Drop` could only print.
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        destroy(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned && !self.deleted {
            self.deleted = true;
            if let Err(e) = destroy(&self.name) {
                eprintln!("flannel-lab: cleaning up namespace {}: {e}", self.name);
            }
        }
    }
}

/// Two new namespaces joined by a veth pair, addressed 192.0.2.1/24 and fd00:1::1/64 on the
/// first, 192.0.2.2/24 and fd00:1::2/64 on the second: the smallest underlay two peers can
/// talk over, for data-path tests and benchmarks that need no whole lab. The veth goes with
/// the namespaces.
pub fn veth_underlay(role_a: &str, role_b: &str) -> Result<(Netns, Netns)> {
    let a = Netns::new(role_a)?;
    let b = Netns::new(role_b)?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}x{n}", std::process::id() % 100_000);
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    a.ip([
        "link",
        "add",
        &va,
        "type",
        "veth",
        "peer",
        "name",
        &vb,
        "netns",
        b.name(),
    ])?;
    a.ip_batch(&format!(
        "addr add 192.0.2.1/24 dev {va}\naddr add fd00:1::1/64 dev {va} nodad\nlink set {va} up\n"
    ))?;
    b.ip_batch(&format!(
        "addr add 192.0.2.2/24 dev {vb}\naddr add fd00:1::2/64 dev {vb} nodad\nlink set {vb} up\n"
    ))?;
    Ok((a, b))
}

/// Runs `f` on a thread inside a fresh namespace (`lo` up) that is deleted afterwards, also
/// when `f` panics (the panic is propagated).
///
/// For tests whose servers only need loopback (an in-process API emulator, an HTTP endpoint):
/// their sockets then live on the namespace's own `127.0.0.1`, never on the host's.
pub fn in_fresh_netns<T, F>(role: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let ns = Netns::new(role)?;
    ns.in_thread(f)
}

/// Whether a namespace of that name is currently mounted under [`NETNS_DIR`].
///
/// Tests use it to assert cleanup.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Names of the mounted namespaces that start with `prefix`, sorted; how a persistent lab's
/// teardown finds namespaces an interrupted `up` created but never recorded.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Kills everything inside namespace `name` and deletes it; a namespace that is already gone
/// counts as success, so teardown can run twice.
pub(crate) fn destroy_if_exists(name: &str) -> Result<()> {
    if !netns_exists(name) {
        return Ok(());
    }
    match destroy(name) {
        Err(_) if !netns_exists(name) => Ok(()),
        r => r,
    }
}

/// Removes lab namespaces (and lab temp directories) left behind by processes that no longer
/// exist, and returns the namespace names it removed.
///
/// See the module documentation for the naming scheme this relies on. Failures on individual
/// leftovers are printed and skipped: a half-reaped leftover must not stop a new lab.
pub fn reap_stale() -> Result<Vec<String>> {
    require_root("remove stale lab namespaces")?;
    let mut reaped = Vec::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = creator_pid(&name) else {
                continue;
            };
            if pid_alive(pid) {
                continue;
            }
            match destroy(&name) {
                Ok(()) => reaped.push(name),
                // Another lab reaping concurrently may have won the race.
                Err(_) if !netns_exists(&name) => {}
                Err(e) => eprintln!("flannel-lab: reaping stale namespace {name}: {e}"),
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            if let Some(pid) = creator_pid(&format!("{NAME_PREFIX}-{rest}"))
                && !pid_alive(pid)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(reaped)
}

/// Extracts the creator pid from `flab-<pid>-...`, or `None` for names that are not the lab's.
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?.strip_prefix('-')?;
    let (pid, tail) = rest.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || tail.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Kills everything inside namespace `name`, waits (bounded) for it to go, then deletes it.
fn destroy(name: &str) -> Result<()> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids = pids_of(name).unwrap_or_default();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ip_global(["netns", "del", name])?;
    Ok(())
}

fn pids_of(name: &str) -> Result<Vec<u32>> {
    let out = ip_global(["netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Runs `ip <args>` in the caller's namespace (only for `ip netns add/del/pids`, which manage
/// namespaces and change nothing in the root namespace's network configuration).
fn ip_global<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = std::process::Command::new(ip_binary()?);
    cmd.args(args);
    let line = describe(&cmd);
    let out = check(line, run_command(cmd, None, DEFAULT_COMMAND_TIMEOUT)?)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_ok_here<I, S>(ns_name: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    command::run_ok_name(ns_name, args, DEFAULT_COMMAND_TIMEOUT)
}

/// Maps `net.ipv4.ip_forward` to `/proc/sys/net/ipv4/ip_forward`, refusing non-`net.` keys.
fn sysctl_path(key: &str) -> Result<String> {
    if !key.starts_with("net.") || key.contains("..") || key.contains('/') {
        return Err(LabError::Invalid(format!(
            "sysctl {key:?}: only net.* keys are namespaced; anything else would change the host"
        )));
    }
    Ok(format!("/proc/sys/{}", key.replace('.', "/")))
}

/// Runs `f` on a thread that joined the network namespace at `path`.
pub(crate) fn in_netns_thread<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = std::fs::File::open(path)
        .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::sys(format!("joining {}", path.display()), e))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pid_parses_only_lab_names() {
        assert_eq!(creator_pid("flab-1234-0-ul"), Some(1234));
        assert_eq!(creator_pid("flab-77-12-n3"), Some(77));
        assert_eq!(creator_pid("flab-x-0-ul"), None);
        assert_eq!(creator_pid("flab-1234"), None);
        assert_eq!(creator_pid("flabby-1-2-x"), None);
        assert_eq!(creator_pid("cni-1234-0"), None);
        assert_eq!(creator_pid("flab--0-x"), None);
        // A persistent lab's names are never the reaper's.
        assert_eq!(creator_pid(&format!("{DETACHED_PREFIX}-1234-n1")), None);
        assert_eq!(creator_pid("flabd-1234-0-n1"), None);
    }

    #[test]
    fn sysctl_keys_outside_net_are_refused() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert!(sysctl_path("kernel.pid_max").is_err());
        assert!(sysctl_path("net/../kernel/x").is_err());
    }

    #[test]
    fn unique_stems_differ() {
        let a = unique_stem();
        let b = unique_stem();
        assert_ne!(a, b);
        assert_eq!(creator_pid(&format!("{a}-x")), Some(std::process::id()));
    }
}
