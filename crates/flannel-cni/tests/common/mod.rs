//! Shared helpers of the integration tests: a lab node driven through flannel-lab's CNI
//! emulator, a direct (no namespace) runner for protocol tests, and a scriptable fake delegate.
//!
//! The plugin under test is always [`FLANNEL`], the binary cargo built for these tests; every
//! path to it comes from here.

#![allow(dead_code)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flannel_lab::cni::{self, CniCall, CniOutput, DEBIAN_CNI_DIR, FlannelFiles};
use flannel_lab::{Lab, run_command};
use serde_json::{Value, json};

/// The plugin under test, as cargo built it for this test binary.
pub const FLANNEL: &str = env!("CARGO_BIN_EXE_flannel");

/// The cluster network every test uses.
pub const NETWORK: &str = "10.244.0.0/16";

/// `CNI_PATH` for runtimes that find `flannel` by its type: the directory cargo built it in,
/// then Debian's plugins (bridge, host-local, portmap).
pub fn cni_path() -> Vec<PathBuf> {
    let dir = Path::new(FLANNEL)
        .parent()
        .expect("FLANNEL has a directory");
    vec![dir.to_path_buf(), PathBuf::from(DEBIAN_CNI_DIR)]
}

/// A call for a pod's `eth0`.
fn pod_call<'a>(container_id: &'a str, netns: &'a Path, path: &'a [PathBuf]) -> CniCall<'a> {
    CniCall {
        container_id,
        netns,
        ifname: "eth0",
        path,
        node_root: None,
    }
}

/// A lab whose node 0 has subnet 10.244.`n`.0/24 in subnet.env, with the plugin's state in
/// the node's directory.
pub struct NodeSetup {
    /// The lab; dropped last.
    pub lab: Lab,
    /// The plugin's files on node 0.
    pub files: FlannelFiles,
}

impl NodeSetup {
    /// Builds a one-node lab and writes subnet.env (MTU 1450, IPMASQ true).
    pub fn new(n: u8) -> NodeSetup {
        Self::with_nodes(1, n)
    }

    /// Builds a lab of `nodes` nodes; the plugin is set up for the first one.
    pub fn with_nodes(nodes: usize, n: u8) -> NodeSetup {
        let lab = Lab::builder().nodes(nodes).build().expect("lab");
        let files = FlannelFiles::in_dir(lab.node(0).dir());
        let setup = NodeSetup { lab, files };
        setup
            .write_subnet_env(&format!("10.244.{n}.1/24"), 1450)
            .expect("subnet.env");
        setup
    }

    /// Writes subnet.env as flanneld would for `subnet` (e.g. `10.244.3.1/24`) in [`NETWORK`].
    pub fn write_subnet_env(&self, subnet: &str, mtu: u32) -> flannel_lab::Result<()> {
        self.files.write_subnet_env(&format!(
            "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
        ))
    }

    /// Runs [`FLANNEL`] for `command` in node 0, as a runtime there would (interface `eth0`,
    /// delegates from Debian's directory); `netns` may be empty or gone.
    pub fn call(&self, command: &str, container_id: &str, netns: &Path, conf: &Value) -> CniOutput {
        let path = [PathBuf::from(DEBIAN_CNI_DIR)];
        let call = pod_call(container_id, netns, &path);
        cni::run_plugin(
            self.lab.node(0).netns(),
            Path::new(FLANNEL),
            command,
            &call,
            conf,
        )
        .expect("run flannel")
    }

    /// ADD of a container with netns `netns`.
    pub fn add(&self, container_id: &str, netns: &Path, conf: &Value) -> CniOutput {
        self.call("ADD", container_id, netns, conf)
    }

    /// DEL of a container.
    pub fn del(&self, container_id: &str, netns: &Path, conf: &Value) -> CniOutput {
        self.call("DEL", container_id, netns, conf)
    }

    /// CHECK of a container against the ADD result `prev`.
    pub fn check(&self, container_id: &str, netns: &Path, conf: &Value, prev: &Value) -> CniOutput {
        self.call("CHECK", container_id, netns, &with_prev(conf, prev))
    }

    /// Runs the node's kube-flannel conflist's ADD (flannel, then portmap) for a pod, with the
    /// capability arguments `caps` (port mappings); returns the result.
    pub fn conflist_add(&self, container_id: &str, netns: &Path, caps: &Value) -> Value {
        let path = cni_path();
        let call = pod_call(container_id, netns, &path);
        cni::conflist_add(
            self.lab.node(0).netns(),
            &self.files.conflist(),
            &call,
            caps,
        )
        .expect("conflist ADD")
    }

    /// Runs the conflist's DEL (in reverse) for a pod added with [`NodeSetup::conflist_add`].
    pub fn conflist_del(&self, container_id: &str, netns: &Path, caps: &Value, result: &Value) {
        let path = cni_path();
        let call = pod_call(container_id, netns, &path);
        cni::conflist_del(
            self.lab.node(0).netns(),
            &self.files.conflist(),
            &call,
            caps,
            Some(result),
        )
        .expect("conflist DEL")
    }

    /// The node's veth interfaces that are host ends of pods (not its own underlay `ethN`).
    pub fn node_veths(&self) -> Vec<String> {
        let out = self
            .lab
            .node(0)
            .netns()
            .ip(["-o", "link", "show", "type", "veth"])
            .expect("ip link");
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| !n.starts_with("eth"))
            .collect()
    }

    /// Waits (at most 10 s) until no pod veth is left; the kernel removes the host end of a
    /// pair asynchronously after the pod's namespace is destroyed.
    pub fn wait_no_veths(&self) -> bool {
        flannel_lab::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            self.node_veths().is_empty()
        })
        .is_ok()
    }

    /// Files in the plugin's dataDir.
    pub fn saved_files(&self) -> Vec<String> {
        self.files.saved_files()
    }

    /// Asserts that nothing of a pod is left on the node: veth, reservation, saved config.
    pub fn assert_clean(&self) {
        assert!(self.node_veths().is_empty(), "{:?}", self.node_veths());
        assert!(
            self.files.reservations().is_empty(),
            "{:?}",
            self.files.reservations()
        );
        assert!(self.saved_files().is_empty(), "{:?}", self.saved_files());
    }
}

/// Runs the plugin in the test's own namespace with exactly `env` (plus PATH) and `stdin`.
pub fn flannel(env: &[(&str, &str)], stdin: &[u8]) -> CniOutput {
    let mut cmd = Command::new(FLANNEL);
    cmd.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        cmd.env("PATH", p);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(cmd, Some(stdin), Duration::from_secs(60))
        .expect("run flannel")
        .into()
}

/// The IPv4 address of `result` (any layout).
pub fn ipv4_of(result: &Value) -> IpAddr {
    cni::result_ip(result, false).unwrap_or_else(|| panic!("no IPv4 in result {result}"))
}

/// Adds `prevResult` to a netconf.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// A fake delegate named `bridge`, placed first on `CNI_PATH`. It records each call
/// (`calls` file: "COMMAND containerID ifname", and `stdin-<COMMAND>`), and its behaviour per
/// command is set with [`FakeDelegate::set`]: `ok` (default), `fail` (an error object with
/// code 11), `crash` (stderr only, exit 2), `garbage` (non-JSON stdout, exit 1), or
/// `old-cni` (code 1 "incompatible CNI versions", as a plugin without GC support answers).
pub struct FakeDelegate {
    /// Directory holding the script and its records; removed on drop.
    pub dir: tempfile::TempDir,
}

const FAKE_SCRIPT: &str = r#"#!/bin/sh
d=$(dirname "$0")
cat > "$d/stdin-$CNI_COMMAND"
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> "$d/calls"
mode=$(cat "$d/mode-$CNI_COMMAND" 2>/dev/null)
case "$mode" in
  fail) printf '{"cniVersion":"1.1.0","code":11,"msg":"fake %s failure","details":"on purpose"}' "$CNI_COMMAND"; exit 1;;
  crash) echo "fake delegate crashed" >&2; exit 2;;
  garbage) echo "not json"; exit 1;;
  old-cni) printf '{"code":1,"msg":"incompatible CNI versions","details":"config is \\"1.1.0\\", plugin supports [\\"1.0.0\\"]"}'; exit 1;;
esac
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"1.1.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":0}],"routes":[{"dst":"10.244.0.0/16"}]}' "$CNI_IFNAME" "$CNI_NETNS"
fi
exit 0
"#;

impl FakeDelegate {
    /// Creates the script.
    pub fn new() -> FakeDelegate {
        let dir = tempfile::Builder::new()
            .prefix("flrs-cni-fake-")
            .tempdir()
            .expect("tempdir");
        let script = dir.path().join("bridge");
        std::fs::write(&script, FAKE_SCRIPT).expect("write fake");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        FakeDelegate { dir }
    }

    /// `CNI_PATH` with the fake first and the real plugins after it.
    pub fn cni_path(&self) -> String {
        format!("{}:{DEBIAN_CNI_DIR}", self.dir.path().display())
    }

    /// Sets the behaviour for `command`.
    pub fn set(&self, command: &str, mode: &str) {
        std::fs::write(self.dir.path().join(format!("mode-{command}")), mode).expect("mode");
    }

    /// The recorded calls.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// What the delegate got on stdin for `command`.
    pub fn stdin(&self, command: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("stdin-{command}")))
            .unwrap_or_default()
    }
}

/// A netconf for tests without a lab: state under `dir`.
pub fn netconf_in(dir: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": dir.join("subnet.env"),
        "dataDir": dir.join("data"),
    })
}

/// Writes the reference test vector's subnet.env into `dir`.
pub fn write_subnet_env(dir: &Path) {
    std::fs::write(
        dir.join("subnet.env"),
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
    )
    .expect("subnet.env");
}
