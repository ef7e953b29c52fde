//! The `flannel-lab` command end to end, run as a user would: `up --nodes 3 --check` for vxlan,
//! host-gw and vxlan with nftables, then `status`, `exec`, `check`, `down` (twice), asserting
//! that the lab outlives `up` and that `down` leaves no namespace and no process behind; in
//! Kubernetes mode also `kubectl` (nodes with their podCIDRs, pods with their IPs, namespaces,
//! a label round trip), and its refusal in etcd mode; plus an `up` killed half-way (SIGKILL:
//! `down` cleans up; SIGINT: `up` cleans up itself) and the error messages for "not root" and
//! "etcd missing".
//!
//! Every test has its own `--state-dir` (named `flrs-…` so scripts/test's leak check sees any
//! daemon left with a path under it) and a guard that runs `down` even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flannel_lab::state::LabState;
use flannel_lab::{netns_exists, netns_with_prefix, run_command};

const UP_TIMEOUT: Duration = Duration::from_secs(300);
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_flannel-lab")
}

/// Where flanneld and flannel are: as the lab's other tests find them, next to our binaries.
fn bin_dir() -> PathBuf {
    std::env::var_os("FLANNEL_RS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(exe()).parent().unwrap().to_path_buf())
}

/// One lab's state directory, torn down by `down` on drop (also when an assertion failed).
struct LabDir {
    dir: tempfile::TempDir,
}

impl LabDir {
    fn new(tag: &str) -> LabDir {
        LabDir {
            dir: tempfile::Builder::new()
                .prefix(&format!("flrs-labcli-{tag}-"))
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(exe());
        cmd.arg("--state-dir")
            .arg(self.path())
            .args(args)
            .env("FLANNEL_RS_BIN_DIR", bin_dir())
            .env("LANG", "C.UTF-8")
            .env_remove("LC_ALL")
            .env_remove("LC_CTYPE")
            // Started by `cargo test`, we inherit CARGO; the command must not build anything.
            .env_remove("CARGO");
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_command(self.command(args), None, timeout).expect("flannel-lab ran")
    }

    /// Runs and requires exit status 0, returning stdout.
    fn ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.run(args, timeout);
        assert!(
            out.status.success(),
            "flannel-lab {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self) -> LabState {
        LabState::load(self.path())
            .expect("state file readable")
            .expect("a lab is recorded")
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = run_command(self.command(&["down", "--force"]), None, SHORT_TIMEOUT);
    }
}

/// Pids of live (non-zombie) processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && pid != std::process::id() {
            found.push((pid, text));
        }
    }
    found
}

/// Asserts that nothing of the lab recorded in `state` is left.
fn assert_gone(state: &LabState, dir: &Path) {
    let mut names: Vec<&str> = state.nodes.iter().map(|n| n.netns.as_str()).collect();
    names.extend(state.pods.iter().map(|p| p.netns.as_str()));
    names.extend(state.underlay_netns.as_deref());
    for n in names {
        assert!(!netns_exists(n), "namespace {n} survived `down`");
    }
    let left = netns_with_prefix(&format!("{}-", state.stem));
    assert!(left.is_empty(), "namespaces of the lab left: {left:?}");
    for p in &state.processes {
        assert!(
            !p.is_running(),
            "{} (pid {}) survived `down`",
            p.role,
            p.pid
        );
    }
    let procs = processes_mentioning(&dir.to_string_lossy());
    assert!(procs.is_empty(), "processes of the lab left: {procs:?}");
    assert!(!LabState::file(dir).exists(), "state file left");
    assert!(!state.lab_dir.exists(), "{} left", state.lab_dir.display());
}

/// A newcomer's session: up with --check, look around, down, down again.
fn up_check_down(tag: &str, extra: &[&str], route_shows: &str) {
    let lab = LabDir::new(tag);
    let mut args = vec!["up", "--nodes", "3", "--check"];
    args.extend_from_slice(extra);
    let up = lab.ok(&args, UP_TIMEOUT);

    // 3 nodes x 2 pods: 30 ordered pairs, all reachable.
    assert!(up.contains("30/30 pairs, full"), "{up}");
    assert_eq!(up.matches('✓').count(), 30, "{up}");
    assert!(!up.contains('✗'), "{up}");
    for n in ["n1", "n2", "n3"] {
        assert!(
            up.contains(&format!("\n{n} ")),
            "node {n} missing from\n{up}"
        );
    }

    // The lab outlives `up`: everything recorded is alive now that `up` has exited.
    let state = lab.state();
    assert_eq!(state.nodes.len(), 3);
    assert_eq!(state.pods.len(), 6);
    assert_eq!(state.processes.len(), 4, "etcd + 3 flanneld");
    for p in &state.processes {
        assert!(p.is_running(), "{} (pid {}) is not running", p.role, p.pid);
    }
    for n in &state.nodes {
        assert!(netns_exists(&n.netns));
        let conflist = n.conflist.as_ref().expect("conflist installed");
        let text = std::fs::read_to_string(conflist).unwrap();
        assert!(
            text.contains("\"flannel\"") && text.contains("\"portmap\""),
            "{text}"
        );
        assert!(text.contains(&n.subnet_file.to_string_lossy().into_owned()));
    }
    // The namespaces are the persistent kind the reaper of test labs leaves alone.
    assert!(
        state
            .stem
            .starts_with(&format!("{}-", flannel_lab::DETACHED_PREFIX))
    );
    flannel_lab::reap_stale().unwrap();
    assert!(
        netns_exists(&state.nodes[0].netns),
        "the reaper took a detached lab"
    );

    // A second lab in the same state directory is refused, and nothing is touched.
    let again = lab.run(&["up", "--nodes", "1"], SHORT_TIMEOUT);
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already running") && err.contains("down"),
        "{err}"
    );
    assert_eq!(lab.state(), state);

    let status = lab.ok(&["status"], SHORT_TIMEOUT);
    for n in ["n1", "n2", "n3", "n3-p2"] {
        assert!(status.contains(n), "{n} missing from status:\n{status}");
    }
    assert_eq!(status.matches("running (pid").count(), 3, "{status}");
    assert!(status.contains("/24"), "{status}");

    let routes = lab.ok(&["exec", "n1", "--", "ip", "route"], SHORT_TIMEOUT);
    assert!(routes.contains(route_shows), "n1 routes:\n{routes}");
    // A pod on n1 reaches a pod on n3 through `exec` too.
    let target = state.pods.iter().find(|p| p.node == "n3").unwrap().ip;
    lab.ok(
        &[
            "exec",
            "n1-p1",
            "--",
            "ping",
            "-c1",
            "-W3",
            &target.to_string(),
        ],
        SHORT_TIMEOUT,
    );
    let bad = lab.run(&["exec", "n9", "--", "true"], SHORT_TIMEOUT);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("n1, n2, n3"));

    let check = lab.ok(&["check"], UP_TIMEOUT);
    assert!(check.contains("30/30 pairs, full"), "{check}");

    match state.datastore.as_str() {
        "kube" => kubectl_shows_the_lab(&lab, &state),
        _ => kubectl_is_refused(&lab),
    }

    let down = lab.ok(&["down"], SHORT_TIMEOUT);
    assert!(down.contains("stopped 4 processes"), "{down}");
    assert!(down.contains("deleted 10 namespaces"), "{down}");
    assert_gone(&state, lab.path());
    let twice = lab.ok(&["down"], SHORT_TIMEOUT);
    assert!(twice.contains("nothing to remove"), "{twice}");
    let status = lab.run(&["status"], SHORT_TIMEOUT);
    assert_eq!(status.status.code(), Some(1));
}

/// `flannel-lab kubectl` on a lab in Kubernetes mode: the issue's commands answer as on a
/// kubeadm cluster, and a label goes through.
fn kubectl_shows_the_lab(lab: &LabDir, state: &LabState) {
    let kubectl = |args: &[&str]| {
        let mut all = vec!["kubectl", "--"];
        all.extend_from_slice(args);
        lab.ok(&all, SHORT_TIMEOUT)
    };
    let cidrs = kubectl(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.podCIDR}{"\n"}{end}"#,
    ]);
    assert_eq!(
        cidrs,
        "n1\t10.244.0.0/24\nn2\t10.244.1.0/24\nn3\t10.244.2.0/24\n"
    );
    let pods = kubectl(&["get", "pods", "-A", "-o", "wide"]);
    let mut lines = pods.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header[..8].join(" "),
        "NAMESPACE NAME READY STATUS RESTARTS AGE IP NODE",
        "{pods}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), state.pods.len(), "{pods}");
    for p in &state.pods {
        let row = rows
            .iter()
            .find(|r| r[1] == p.name)
            .expect("every pod listed");
        let ip = p.ip.to_string();
        assert_eq!(
            row[..8],
            [
                "default", &p.name, "1/1", "Running", "0", row[5], &ip, &p.node
            ],
            "{pods}"
        );
    }
    let nodes = kubectl(&["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready ").count(), 3, "{nodes}");
    let ns = kubectl(&["get", "ns"]);
    for n in ["default", "kube-flannel", "kube-system"] {
        assert!(ns.contains(&format!("\n{n} ")), "{ns}");
    }
    assert_eq!(
        kubectl(&["label", "node", "n2", "flannel-rs/cli=yes"]),
        "node/n2 labeled\n"
    );
    assert_eq!(
        kubectl(&[
            "get",
            "node",
            "n2",
            "-o",
            "jsonpath={.metadata.labels.flannel-rs/cli}"
        ]),
        "yes"
    );
    assert_eq!(
        kubectl(&["label", "node", "n2", "flannel-rs/cli-"]),
        "node/n2 unlabeled\n"
    );
    // kubectl's exit status comes through.
    let missing = lab.run(&["kubectl", "--", "get", "node", "n9"], SHORT_TIMEOUT);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains(r#"nodes "n9" not found"#));
}

/// `flannel-lab kubectl` on a lab in etcd mode says why it cannot work.
fn kubectl_is_refused(lab: &LabDir) {
    let out = lab.run(&["kubectl", "--", "get", "nodes"], SHORT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("datastore \"etcd\"") && err.contains("--datastore kube"),
        "{err}"
    );
}

#[test]
fn vxlan_up_check_status_exec_down() {
    up_check_down("vxlan", &[], "dev flannel.1");
}

#[test]
fn host_gw_up_check_status_exec_down() {
    up_check_down(
        "hostgw",
        &["--backend", "host-gw"],
        "via 198.18.0.2 dev eth0",
    );
}

#[test]
fn kube_datastore_up_check_status_exec_down() {
    up_check_down("kube", &["--datastore", "kube"], "dev flannel.1");
}

#[test]
fn vxlan_nftables_up_check_status_exec_down() {
    up_check_down("nft", &["--nftables"], "dev flannel.1");
}

/// The issue's interface for the wireguard backend: `up --backend wireguard --dual-stack
/// --check` in Kubernetes mode gives full IPv4 and IPv6 matrices, and `exec nK -- wg show`
/// shows node K's own devices (its key, its peers), not another node's.
#[test]
fn wireguard_dual_stack_up_check_exec_wg_show_down() {
    let lab = LabDir::new("wg");
    let up = lab.ok(
        &[
            "up",
            "--nodes",
            "3",
            "--backend",
            "wireguard",
            "--datastore",
            "kube",
            "--dual-stack",
            "--check",
        ],
        UP_TIMEOUT,
    );
    assert_eq!(
        up.matches("30/30 pairs, full").count(),
        2,
        "IPv4 and IPv6:\n{up}"
    );
    assert!(up.contains("IPv6:"), "{up}");
    let mut keys = std::collections::BTreeSet::new();
    for n in ["n1", "n2", "n3"] {
        let show = lab.ok(
            &["exec", n, "--", "wg", "show", "flannel-wg"],
            SHORT_TIMEOUT,
        );
        assert!(show.contains("listening port: 51820"), "{n}:\n{show}");
        assert_eq!(show.matches("\npeer: ").count(), 2, "{n}:\n{show}");
        let key = show
            .lines()
            .find_map(|l| l.trim().strip_prefix("public key: "))
            .expect("public key line")
            .to_string();
        keys.insert(key);
        let v6 = lab.ok(
            &["exec", n, "--", "wg", "show", "flannel-wg-v6", "endpoints"],
            SHORT_TIMEOUT,
        );
        assert_eq!(v6.matches("]:51821").count(), 2, "{n}:\n{v6}");
    }
    assert_eq!(keys.len(), 3, "every node shows its own device");
    let check = lab.ok(&["check"], UP_TIMEOUT);
    assert_eq!(check.matches("30/30 pairs, full").count(), 2, "{check}");
    let state = lab.state();
    lab.ok(&["down"], SHORT_TIMEOUT);
    assert_gone(&state, lab.path());
}

/// Waits (bounded) until `up` has created at least `n` namespaces of its lab.
fn wait_for_namespaces(lab: &LabDir, n: usize) -> LabState {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(s)) = LabState::load(lab.path())
            && netns_with_prefix(&format!("{}-", s.stem)).len() >= n
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "up created no namespaces in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_up_killed_half_way_is_removed_by_down_and_one_interrupted_cleans_up_itself() {
    // SIGKILL: no chance to clean up; the state file written first lets `down` do it.
    let lab = LabDir::new("killed");
    let mut up = lab
        .command(&["up", "--nodes", "2", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Underlay + 2 nodes exist: the build is under way.
    let state = wait_for_namespaces(&lab, 3);
    up.kill().unwrap();
    up.wait().unwrap();
    let status = lab.run(&["status"], SHORT_TIMEOUT);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("INCOMPLETE"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let refused = lab.run(&["up"], SHORT_TIMEOUT);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("interrupted"));
    lab.ok(&["down"], SHORT_TIMEOUT);
    assert_gone(&state, lab.path());

    // SIGINT: `up` stops after the current step and removes everything itself.
    let lab = LabDir::new("sigint");
    let mut up = lab
        .command(&["up", "--nodes", "2", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state = wait_for_namespaces(&lab, 3);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "up did not stop within 120 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("removed"), "{err}");
    assert_gone(&state, lab.path());
}

/// `up --etcd-members 3`: three etcd members recorded (one role each), flanneld and `exec`'s
/// etcdctl given all three endpoints, and `down` from another process stops every member.
#[test]
fn three_etcd_members_up_exec_down() {
    members_up_exec_down("etcd3", &[]);
}

/// The same over TLS: the members share the lab's server certificate and flanneld presents
/// its node certificate to each of them.
#[test]
fn three_etcd_members_over_tls_up_exec_down() {
    members_up_exec_down("etcd3tls", &["--etcd-tls"]);
}

fn members_up_exec_down(tag: &str, extra: &[&str]) {
    let lab = LabDir::new(tag);
    let out = lab.run(
        &["up", "--datastore", "kube", "--etcd-members", "3"],
        SHORT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-members runs an etcd cluster"), "{err}");
    for bad in ["2", "4", "0", "three"] {
        let out = lab.run(&["up", "--etcd-members", bad], SHORT_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "--etcd-members {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--etcd-members must be 1, 3 or 5"), "{err}");
        assert!(
            !LabState::file(lab.path()).exists(),
            "a refused up wrote state"
        );
    }
    let mut up = vec!["up", "--nodes", "2", "--etcd-members", "3", "--check"];
    up.extend_from_slice(extra);
    let shown = lab.ok(&up, UP_TIMEOUT);
    assert!(shown.contains("12/12 pairs, full"), "{shown}");
    let state = lab.state();
    let mut roles: Vec<&str> = state.processes.iter().map(|p| p.role.as_str()).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        [
            "etcd lab-0",
            "etcd lab-1",
            "etcd lab-2",
            "flanneld n1",
            "flanneld n2"
        ]
    );
    let endpoints = state.endpoint.clone().expect("endpoints recorded");
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");
    let scheme = if extra.contains(&"--etcd-tls") {
        "https://"
    } else {
        "http://"
    };
    assert!(
        endpoints.split(',').all(|e| e.starts_with(scheme)),
        "{endpoints}"
    );
    // `exec` points etcdctl at every member: all three answer.
    let out = lab.run(
        &["exec", "n1", "--", "etcdctl", "endpoint", "health"],
        SHORT_TIMEOUT,
    );
    // etcdctl prints the health lines on stderr or stdout depending on its version.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    let down = lab.ok(&["down"], SHORT_TIMEOUT);
    assert!(down.contains("stopped 5 processes"), "{down}");
    assert_gone(&state, lab.path());
}

#[test]
fn errors_say_what_to_do() {
    // Not root: say sudo.
    let lab = LabDir::new("errors");
    let copy = tempfile::Builder::new()
        .prefix("flrs-labcli-exe-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe_copy = copy.path().join("flannel-lab");
    std::fs::copy(exe(), &exe_copy).unwrap();
    let setpriv = flannel_lab::require_binary("setpriv").unwrap();
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe_copy)
        .args(["--state-dir", "/nonexistent", "status"]);
    let out = run_command(cmd, None, SHORT_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");

    // etcd missing: name the package, before anything is built.
    let path_dir = tempfile::Builder::new()
        .prefix("flrs-labcli-path-")
        .tempdir()
        .unwrap();
    for tool in ["ip", "setsid", "etcdctl", "ping", "iptables-restore", "sh"] {
        let real = flannel_lab::require_binary(tool).unwrap();
        std::os::unix::fs::symlink(real, path_dir.path().join(tool)).unwrap();
    }
    let mut cmd = lab.command(&["up"]);
    cmd.env("PATH", path_dir.path());
    let out = run_command(cmd, None, SHORT_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`etcd`") && err.contains("etcd-server"),
        "{err}"
    );
    assert!(
        !LabState::file(lab.path()).exists(),
        "a failed preflight wrote state"
    );

    // No lab: `down` is fine, `check` and `exec` say how to start one.
    assert!(
        lab.ok(&["down"], SHORT_TIMEOUT)
            .contains("nothing to remove")
    );
    let out = lab.run(&["check"], SHORT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("flannel-lab up"));
}

/// `up --etcd-tls --etcd-user`: the lab's etcd serves https only, flanneld on each node has its
/// own certificate and the user's password, `exec` hands etcdctl the lab's certificate, and a
/// client without one is refused; `down` removes the certificates with the lab.
#[test]
fn etcd_tls_up_check_exec_etcdctl_down() {
    let lab = LabDir::new("etcdtls");
    let up = lab.ok(
        &[
            "up",
            "--nodes",
            "2",
            "--check",
            "--etcd-tls",
            "--etcd-user",
            "flannel:cli-pw",
        ],
        UP_TIMEOUT,
    );
    assert!(up.contains("12/12 pairs, full"), "{up}");
    let state = lab.state();
    let endpoint = state.endpoint.clone().expect("etcd endpoint recorded");
    assert!(endpoint.starts_with("https://198.18.0.254:"), "{endpoint}");
    let status = lab.ok(&["status"], SHORT_TIMEOUT);
    assert!(status.contains(&format!("etcd: {endpoint}")), "{status}");
    let pki = state.lab_dir.join("pki");
    for f in [
        "ca.crt",
        "etcd-server.crt",
        "flanneld-n1.key",
        "flanneld-n2.crt",
    ] {
        assert!(pki.join(f).is_file(), "{f} missing in {}", pki.display());
    }
    let get = [
        "exec",
        "n2",
        "--",
        "etcdctl",
        "get",
        "--prefix",
        "--keys-only",
    ];
    let keys = lab.ok(
        &[&get[..], &["/coreos.com/network/subnets"]].concat(),
        SHORT_TIMEOUT,
    );
    assert_eq!(
        keys.matches("/coreos.com/network/subnets/").count(),
        2,
        "{keys}"
    );
    // Without the certificate `exec` provides, etcd refuses.
    let bare = lab.run(
        &[
            "exec",
            "n2",
            "--",
            "env",
            "-u",
            "ETCDCTL_CERT",
            "-u",
            "ETCDCTL_KEY",
            "etcdctl",
            "--dial-timeout=2s",
            "get",
            "/coreos.com/network/config",
        ],
        SHORT_TIMEOUT,
    );
    assert!(
        !bare.status.success(),
        "etcd answered a client without a certificate"
    );
    let down = lab.ok(&["down"], SHORT_TIMEOUT);
    assert!(down.contains("stopped 3 processes"), "{down}");
    assert_gone(&state, lab.path());
    assert!(!pki.exists(), "{} left", pki.display());
}

#[test]
fn etcd_tls_flags_are_checked() {
    let lab = LabDir::new("etcdtlsflags");
    let out = lab.run(&["up", "--etcd-user", "flannel:pw"], SHORT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-tls"), "{err}");
    let out = lab.run(&["up", "--etcd-tls", "--datastore", "kube"], SHORT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--etcd-tls") && err.contains("--datastore etcd"),
        "{err}"
    );
    let out = lab.run(
        &["up", "--etcd-tls", "--etcd-user", "nopassword"],
        SHORT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NAME:PASSWORD"), "{err}");
}

#[test]
fn plain_api_needs_the_kube_datastore() {
    let lab = LabDir::new("plainapi");
    let out = lab.run(&["up", "--plain-api"], SHORT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--plain-api is about the Kubernetes API emulator: add --datastore kube"),
        "{err}"
    );
}
