//! Running CNI plugins the way a container runtime does.
//!
//! The lab creates pods through the real CNI protocol (environment variables, config on stdin,
//! result or error JSON on stdout) so that what the tests and the demo exercise is exactly what
//! kubelet/containerd would: the `flannel` plugin, which delegates to Debian's `bridge` and
//! `host-local`, and `portmap` chained after it in a conflist.
//!
//! It is the workspace's one CNI runtime emulator: [`Cluster`](crate::Cluster) pods and the
//! CNI plugin's own tests use it. [`exec_plugin`] interprets a plugin's output as a runtime
//! does; [`run_plugin`] hands back the raw output for tests of error codes and logs;
//! [`FlannelFiles`] keeps a node's plugin state (subnet.env, saved delegate configs, host-local
//! reservations) in the node's own directory.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::command::{describe, run_command};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::node_root::view_command;

/// Where Debian's `containernetworking-plugins` installs the standard plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// One CNI invocation's parameters (the `CNI_*` variables).
#[derive(Debug, Clone)]
pub struct CniCall<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`: the pod namespace's path.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_PATH`: directories searched for plugins, in order.
    pub path: &'a [PathBuf],
    /// The node's root directory when the node has its own `/run` and `/var/lib` (a node that
    /// runs the kube-flannel DaemonSet, see [`crate::node_root`]): plugins then run with those,
    /// as the node's runtime would, and find subnet.env and keep their state at their default
    /// paths. `None`: the machine's file system.
    pub node_root: Option<&'a Path>,
}

/// What one plugin run printed, uninterpreted.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Stdout: the result or the error object.
    pub stdout: String,
    /// Stderr: the plugin's logs.
    pub stderr: String,
}

impl From<Output> for CniOutput {
    fn from(out: Output) -> Self {
        CniOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl CniOutput {
    /// Whether the plugin exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout parsed as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(Value::Null)
    }

    /// The error object's `code`, if stdout holds one.
    pub fn error_code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }

    /// The error object's `msg` (empty if none).
    pub fn error_msg(&self) -> String {
        self.json()
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

/// The command a runtime on node `ns` runs for one plugin call.
fn plugin_command(ns: &Netns, plugin: &Path, command: &str, call: &CniCall<'_>) -> Result<Command> {
    let cni_path = call
        .path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let args = [
        OsStr::new("netns"),
        OsStr::new("exec"),
        OsStr::new(ns.name()),
    ];
    let mut cmd = match call.node_root {
        Some(root) => view_command(
            root,
            OsStr::new("ip"),
            args.iter().copied().chain([plugin.as_os_str()]),
        )?,
        None => {
            let mut c = Command::new("ip");
            c.args(args).arg(plugin);
            c
        }
    };
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path);
    Ok(cmd)
}

/// Runs `cmd` with `conf` on stdin, bounded in time.
fn run_with_conf(cmd: Command, conf: &Value) -> Result<Output> {
    let input = serde_json::to_vec(conf).map_err(|e| LabError::Invalid(e.to_string()))?;
    run_command(cmd, Some(&input), Duration::from_secs(60))
}

/// Runs one plugin binary like [`exec_plugin`] and returns what it printed without
/// interpreting it, so a test can check error codes, messages and logs.
pub fn run_plugin(
    ns: &Netns,
    plugin: &Path,
    command: &str,
    call: &CniCall<'_>,
    conf: &Value,
) -> Result<CniOutput> {
    run_with_conf(plugin_command(ns, plugin, command, call)?, conf).map(CniOutput::from)
}

/// Runs one plugin binary for `command` (ADD, DEL, CHECK, ...) inside the node namespace `ns`
/// with `conf` on stdin, returning its parsed stdout. A CNI error result becomes
/// [`LabError::Cni`] with the plugin's code and message.
pub fn exec_plugin(
    ns: &Netns,
    plugin: &Path,
    command: &str,
    call: &CniCall<'_>,
    conf: &Value,
) -> Result<Value> {
    let cmd = plugin_command(ns, plugin, command, call)?;
    let line = describe(&cmd);
    let out = run_with_conf(cmd, conf)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
    if !out.status.success() {
        let (code, msg) = match &parsed {
            Some(v) => (
                v.get("code").and_then(Value::as_u64).unwrap_or(0),
                format!(
                    "{} {}",
                    v.get("msg").and_then(Value::as_str).unwrap_or(""),
                    v.get("details").and_then(Value::as_str).unwrap_or("")
                )
                .trim()
                .to_string(),
            ),
            None => (0, stdout.trim().to_string()),
        };
        return Err(LabError::Cni {
            command: format!("{command} {line}"),
            code,
            msg,
            stderr,
        });
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    parsed.ok_or_else(|| LabError::Cni {
        command: format!("{command} {line}"),
        code: 0,
        msg: format!("unparsable result: {stdout}"),
        stderr,
    })
}

/// Finds a plugin by its `type` in `path`, as a runtime does.
pub fn find_plugin(kind: &str, path: &[PathBuf]) -> Result<PathBuf> {
    path.iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::Invalid(format!("CNI plugin {kind:?} not found in {path:?}")))
}

/// Runs a conflist's ADD: every plugin in order, each getting the previous result as
/// `prevResult`, with `runtimeConfig` filled from `runtime` for the capabilities it declares.
/// Returns the last plugin's result.
pub fn conflist_add(
    ns: &Netns,
    conflist: &Value,
    call: &CniCall<'_>,
    runtime: &Value,
) -> Result<Value> {
    let mut prev = Value::Null;
    for conf in plugin_confs(conflist, runtime, None)? {
        let plugin = find_plugin(plugin_type(&conf)?, call.path)?;
        let mut conf = conf;
        if !prev.is_null() {
            conf["prevResult"] = prev.clone();
        }
        prev = exec_plugin(ns, &plugin, "ADD", call, &conf)?;
    }
    Ok(prev)
}

/// Runs a conflist's DEL: every plugin in reverse order. `result` is the ADD result (runtimes
/// pass it as `prevResult`); all plugins are tried and the first error is returned.
pub fn conflist_del(
    ns: &Netns,
    conflist: &Value,
    call: &CniCall<'_>,
    runtime: &Value,
    result: Option<&Value>,
) -> Result<()> {
    let mut first_err = None;
    for conf in plugin_confs(conflist, runtime, result)?.into_iter().rev() {
        let r = find_plugin(plugin_type(&conf)?, call.path)
            .and_then(|p| exec_plugin(ns, &p, "DEL", call, &conf));
        if let Err(e) = r
            && first_err.is_none()
        {
            first_err = Some(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn plugin_type(conf: &Value) -> Result<&str> {
    conf.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| LabError::Invalid(format!("CNI plugin config without type: {conf}")))
}

/// Expands a conflist into per-plugin configs (name and cniVersion copied in, runtimeConfig
/// filtered by declared capabilities, as libcni does).
fn plugin_confs(conflist: &Value, runtime: &Value, prev: Option<&Value>) -> Result<Vec<Value>> {
    let name = conflist.get("name").cloned().unwrap_or(json!("cbr0"));
    let version = conflist
        .get("cniVersion")
        .cloned()
        .unwrap_or(json!("0.3.1"));
    let plugins = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| LabError::Invalid("conflist without plugins".into()))?;
    let mut out = Vec::new();
    for p in plugins {
        let mut conf = p.clone();
        conf["name"] = name.clone();
        conf["cniVersion"] = version.clone();
        if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
            let mut rc = serde_json::Map::new();
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = runtime.get(cap)
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        out.push(conf);
    }
    Ok(out)
}

/// The first IP address of the wanted family in a CNI result of any version (0.3.x/0.4.0/1.x
/// `ips`, or 0.1.0/0.2.0 `ip4`/`ip6`), without its prefix length.
pub fn result_ip(result: &Value, v6: bool) -> Option<IpAddr> {
    let legacy = result
        .get(if v6 { "ip6" } else { "ip4" })
        .and_then(|i| i.get("ip"))
        .and_then(Value::as_str);
    let current = || {
        result
            .get("ips")?
            .as_array()?
            .iter()
            .filter_map(|ip| ip.get("address")?.as_str())
            .find(|a| a.contains(':') == v6)
    };
    legacy.or_else(current)?.split('/').next()?.parse().ok()
}

/// The network name kube-flannel's conflist uses, and so does the lab.
pub const NETWORK_NAME: &str = "cbr0";

/// Where the `flannel` plugin keeps one node's state, all inside the node's own directory so
/// nothing touches the host's `/run/flannel` or `/var/lib/cni`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelFiles {
    /// subnet.env, written by flanneld (`--subnet-file`) or by a test.
    pub subnet_file: PathBuf,
    /// The plugin's `dataDir`: one saved delegate config per container.
    pub data_dir: PathBuf,
    /// host-local's `dataDir`; reservations live in `<ipam_dir>/<network name>/`.
    pub ipam_dir: PathBuf,
}

impl FlannelFiles {
    /// The layout under a node's directory `dir`.
    pub fn in_dir(dir: &Path) -> FlannelFiles {
        FlannelFiles {
            subnet_file: dir.join("subnet.env"),
            data_dir: dir.join("cni-flannel"),
            ipam_dir: dir.join("ipam"),
        }
    }

    /// The `flannel` entry of kube-flannel's conflist, with these paths.
    fn plugin_entry(&self) -> Value {
        json!({
            "type": "flannel",
            "subnetFile": self.subnet_file,
            "dataDir": self.data_dir,
            "ipam": { "dataDir": self.ipam_dir },
            "delegate": { "hairpinMode": true, "isDefaultGateway": true }
        })
    }

    /// kube-flannel's `10-flannel.conflist` (flannel, then portmap) with these paths.
    pub fn conflist(&self) -> Value {
        json!({
            "name": NETWORK_NAME,
            "cniVersion": "0.3.1",
            "plugins": [
                self.plugin_entry(),
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
    }

    /// What a runtime sends the `flannel` plugin for that conflist's first entry, with
    /// `cni_version` as the list's version.
    pub fn netconf(&self, cni_version: &str) -> Value {
        let mut conf = self.plugin_entry();
        conf["name"] = json!(NETWORK_NAME);
        conf["cniVersion"] = json!(cni_version);
        conf
    }

    /// Writes subnet.env with exactly `text`, creating its directory.
    pub fn write_subnet_env(&self, text: &str) -> Result<()> {
        let io = |e| LabError::io(format!("writing {}", self.subnet_file.display()), e);
        if let Some(dir) = self.subnet_file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&self.subnet_file, text).map_err(io)
    }

    /// The saved delegate config of a container.
    pub fn saved_config(&self, container_id: &str) -> PathBuf {
        self.data_dir.join(container_id)
    }

    /// Everything in `dataDir` (saved configs and any leftover temp files), sorted.
    pub fn saved_files(&self) -> Vec<String> {
        list_dir(&self.data_dir)
    }

    /// host-local's reservations (one file per allocated address) for the lab's network,
    /// sorted.
    pub fn reservations(&self) -> Vec<String> {
        let mut v = list_dir(&self.ipam_dir.join(NETWORK_NAME));
        v.retain(|n| n.parse::<IpAddr>().is_ok());
        v
    }
}

/// Sorted entry names of a directory; empty if it does not exist (state a plugin has not
/// created yet).
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_expansion_copies_name_version_and_capabilities() {
        let list = json!({
            "name": "cbr0", "cniVersion": "0.3.1",
            "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let rt = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "bandwidth": {}});
        let confs = plugin_confs(&list, &rt, None).unwrap();
        assert!(confs.iter().all(|c| c.get("prevResult").is_none()));
        assert_eq!(confs[0]["name"], "cbr0");
        assert_eq!(confs[0]["cniVersion"], "0.3.1");
        assert!(confs[0].get("runtimeConfig").is_none());
        assert_eq!(
            confs[1]["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(confs[1]["runtimeConfig"].get("bandwidth").is_none());
        // DEL gives every plugin the ADD result.
        let prev = json!({"cniVersion": "0.3.1", "ips": []});
        let confs = plugin_confs(&list, &rt, Some(&prev)).unwrap();
        assert!(confs.iter().all(|c| c["prevResult"] == prev));
    }

    #[test]
    fn result_ip_by_family() {
        let r = json!({"ips": [{"address": "10.244.1.5/24"}, {"address": "fd00::5/64"}]});
        assert_eq!(result_ip(&r, false), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(result_ip(&r, true), Some("fd00::5".parse().unwrap()));
        assert_eq!(result_ip(&json!({}), false), None);
        let legacy = json!({"ip4": {"ip": "10.1.2.3/24"}, "ip6": {"ip": "fd00::3/64"}});
        assert_eq!(result_ip(&legacy, false), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(result_ip(&legacy, true), Some("fd00::3".parse().unwrap()));
    }

    #[test]
    fn flannel_files_stay_in_the_node_dir() {
        let f = FlannelFiles::in_dir(Path::new("/lab/n1"));
        let list = f.conflist();
        assert_eq!(list["plugins"][0]["subnetFile"], "/lab/n1/subnet.env");
        assert_eq!(list["plugins"][0]["dataDir"], "/lab/n1/cni-flannel");
        assert_eq!(list["plugins"][0]["ipam"]["dataDir"], "/lab/n1/ipam");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        // The single-plugin netconf is what the conflist expansion gives the first plugin.
        let first = &plugin_confs(&list, &json!({}), None).unwrap()[0];
        assert_eq!(&f.netconf("0.3.1"), first);
        assert_eq!(f.netconf("1.0.0")["cniVersion"], "1.0.0");
        assert_eq!(f.saved_config("c1"), Path::new("/lab/n1/cni-flannel/c1"));
    }
}
