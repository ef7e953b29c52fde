//! A real container runtime calling the plugin: containerd's `ctr run --cni` with kube-flannel's
//! conflist (flannel + portmap), and a hostPort mapping driven through the same conflist the way
//! a CRI runtime does (ctr 1.6 has no flag to pass port mappings).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{FLANNEL, NodeSetup, ipv4_of};
use flannel_lab::{Netns, require_binary, run_command, wait_for, wait_until};
use serde_json::json;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A busybox-static root filesystem.
fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(require_binary("busybox").unwrap(), bin.join("busybox")).unwrap();
    for tool in ["sh", "ip", "ping", "nc", "httpd", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
    }
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
}

#[test]
fn containerd_ctr_runs_a_container_through_the_kube_flannel_conflist() {
    for b in ["containerd", "ctr", "runc", "unshare", "nsenter", "busybox"] {
        require_binary(b).unwrap_or_else(|e| panic!("{e} (scripts/setup installs it)"));
    }
    let setup = NodeSetup::new(6);
    let node = setup.lab.node(0);
    let tmp = tempfile::Builder::new()
        .prefix("flrs-cni-ctr-")
        .tempdir()
        .unwrap();
    let t = tmp.path();
    // ctr reads CNI config only from /etc/cni/net.d and plugins from /opt/cni/bin (and Debian's
    // /usr/lib/cni). Overlays with private upper dirs, mounted in a private mount namespace,
    // show ours there without touching the host's /etc or /opt.
    write(
        &t.join("etc-upper/cni/net.d/10-flannel.conflist"),
        // kube-flannel's `10-flannel.conflist` with this node's private state paths.
        &serde_json::to_string_pretty(&setup.files.conflist()).unwrap(),
    );
    let plugin = t.join("opt-upper/cni/bin/flannel");
    std::fs::create_dir_all(plugin.parent().unwrap()).unwrap();
    std::fs::copy(FLANNEL, &plugin).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["etc-work", "opt-work", "root", "state"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    busybox_rootfs(&t.join("rootfs"));
    let sock = t.join("containerd.sock");
    write(
        &t.join("containerd.toml"),
        &format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
            t.join("root").display(),
            t.join("state").display(),
            sock.display(),
            sock.display()
        ),
    );
    // Started with `nsenter --net` rather than the lab's `ip netns exec`, which mounts a fresh
    // /sys and so hides the cgroup mounts runc needs.
    let log = t.join("containerd.log");
    let mut containerd_cmd = Command::new("nsenter");
    containerd_cmd
        .arg(format!("--net={}", node.netns_path().display()))
        .arg("containerd")
        .arg("--config")
        .arg(t.join("containerd.toml"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(t.join("containerd.err")).unwrap());
    let containerd = Daemon(containerd_cmd.spawn().unwrap());
    let log_tail = || std::fs::read_to_string(t.join("containerd.err")).unwrap_or_default();
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        sock.exists()
    })
    .unwrap_or_else(|e| panic!("containerd did not start: {e}\n{}", log_tail()));

    let id = format!("flrs-ctr-{}", std::process::id());
    let script = format!(
        "set -e\n\
         mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/etc-upper,workdir={t}/etc-work /etc\n\
         mount -t overlay overlay -o lowerdir=/opt,upperdir={t}/opt-upper,workdir={t}/opt-work /opt\n\
         exec ctr --address {sock} run --rm --cni --rootfs {t}/rootfs {id} \
         /bin/sh -c 'ip -o link show eth0; ip -4 -o addr show eth0; ip -4 route'\n",
        t = t.display(),
        sock = sock.display(),
    );
    let mut ctr = Command::new("nsenter");
    ctr.arg(format!("--net={}", node.netns_path().display()))
        .args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
    let out = run_command(ctr, None, Duration::from_secs(180)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ctr failed: {stdout}\n{stderr}\n{}",
        log_tail()
    );
    // Our plugin was called (its log line) and built the delegate from our subnet.env (MTU).
    assert!(
        stderr.contains(&format!(
            "flannel: ADD default-{id}: delegate config for bridge"
        )),
        "{stderr}"
    );
    assert!(stdout.contains("mtu 1450"), "{stdout}");
    assert!(stdout.contains("inet 10.244.6."), "{stdout}");
    assert!(
        stdout.contains("10.244.0.0/16 via 10.244.6.1 dev eth0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("default via 10.244.6.1 dev eth0"),
        "{stdout}"
    );

    // ctr --rm ran DEL: veth, reservation and saved config are gone.
    assert!(setup.wait_no_veths(), "{:?}", setup.node_veths());
    assert!(
        setup.files.reservations().is_empty(),
        "{:?}",
        setup.files.reservations()
    );
    assert!(setup.saved_files().is_empty(), "{:?}", setup.saved_files());
    drop(containerd);
}

/// A daemon process stopped on drop: SIGTERM, then SIGKILL after 10 s (bounded), then reaped.
/// (The node namespace's drop also kills anything left inside, shims included.)
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fetches `url` from `client` with busybox wget, bounded to 3 s.
fn wget(client: &Netns, url: &str) -> flannel_lab::Result<std::process::Output> {
    // (busybox 1.35's `wget -T` segfaults; coreutils' timeout bounds the request instead.)
    client.run(["timeout", "3", "busybox", "wget", "-q", "-O", "-", url])
}

#[test]
fn host_port_mapping_reaches_a_server_in_the_pod() {
    let mut setup = NodeSetup::with_nodes(2, 7);
    let (cid, netns) = {
        let pod = setup.lab.add_pod(0, "web").unwrap();
        (pod.netns_name().to_string(), pod.netns_path())
    };
    let caps =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let result = setup.conflist_add(&cid, &netns, &caps);
    assert!(
        ipv4_of(&result).to_string().starts_with("10.244.7."),
        "{result}"
    );

    // A web server in the pod, a client on the other node hitting node 1's hostPort.
    let docroot = tempfile::Builder::new()
        .prefix("flrs-cni-www-")
        .tempdir()
        .unwrap();
    std::fs::write(
        docroot.path().join("index.html"),
        "flannel-rs hostPort ok\n",
    )
    .unwrap();
    let mut httpd = Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", "80", "-h"])
        .arg(docroot.path());
    let pod_ns = setup.lab.pod("web").unwrap().netns();
    let _server = setup.lab.spawn_in(pod_ns, httpd).unwrap();
    let client = setup.lab.node(1).netns();
    let url = format!("http://{}:18080/", setup.lab.node(0).ip());
    let body = wait_for(
        "the hostPort to answer",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            Ok::<_, String>(
                wget(client, &url)
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
            )
        },
    )
    .unwrap();
    assert_eq!(body, "flannel-rs hostPort ok\n");

    // DEL in reverse order with the same port mappings removes the DNAT rules.
    setup.conflist_del(&cid, &netns, &caps, &result);
    let nat = setup
        .lab
        .node(0)
        .netns()
        .run_ok(["iptables", "-t", "nat", "-S"])
        .unwrap();
    assert!(!nat.contains("CNI-DN-"), "{nat}");
    assert!(
        !wget(client, &url).unwrap().status.success(),
        "hostPort still answers after DEL"
    );
    setup.assert_clean();
}
