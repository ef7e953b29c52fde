//! Runtime-side helpers for tests: call the `flannel` plugin (or any CNI plugin, or a whole
//! conflist) inside a lab node's network namespace, exactly as a container runtime does.
//!
//! Built only with the `testkit` feature. This crate's integration tests use it, and it is the
//! hook for lab tests with a real flanneld: start flanneld in a node writing
//! `NodeCni::for_node(node).subnet_file`, then [`NodeCni::attach_pod`] each pod and ping
//! across nodes. Every path (subnet.env, `dataDir`, host-local's `dataDir`) is private to the
//! node, so nothing touches `/run/flannel` or `/var/lib/cni`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flannel_lab::{LabError, Node, Pod, Result, run_command};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins live (bridge, host-local, portmap).
pub const DEBIAN_CNI_PATH: &str = "/usr/lib/cni";
/// Time limit of one plugin invocation.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `flannel` binary to test: `$FLANNEL_CNI_BIN`, else the one cargo built next to the
/// running test (`target/<profile>/flannel`; run `cargo build --bins` first from another
/// crate's tests).
pub fn plugin_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FLANNEL_CNI_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/flannel
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("flannel"))
        .unwrap_or_else(|| PathBuf::from("flannel"))
}

/// What one plugin run printed.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// Exit code (`None` if killed).
    pub code: Option<i32>,
    /// Stdout: the result or error object.
    pub stdout: String,
    /// Stderr: logs.
    pub stderr: String,
}

impl CniOutput {
    /// Whether the plugin exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout parsed as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }

    /// The error object's `code`, if stdout holds one.
    pub fn error_code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }

    /// The error object's `msg`.
    pub fn error_msg(&self) -> String {
        self.json()
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

/// One CNI call: the environment a runtime sets, minus what is the same for every call.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (empty for none).
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
}

/// Runs `plugin` with `call` and `stdin` inside the network namespace mounted at `node_netns`
/// (`nsenter --net`, so only the network namespace changes, as for a runtime on that host).
pub fn invoke(
    node_netns: &Path,
    plugin: &Path,
    cni_path: &str,
    call: &Call<'_>,
    stdin: &[u8],
) -> Result<CniOutput> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", node_netns.display()))
        .arg(plugin)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path);
    let out = run_command(cmd, Some(stdin), PLUGIN_TIMEOUT)?;
    Ok(CniOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The flannel plugin set up for one lab node, with node-private state paths.
#[derive(Debug, Clone)]
pub struct NodeCni {
    /// The node's network namespace (bind-mount path).
    pub netns: PathBuf,
    /// subnet.env, written by flanneld or by [`NodeCni::write_subnet_env`].
    pub subnet_file: PathBuf,
    /// The plugin's `dataDir`.
    pub data_dir: PathBuf,
    /// host-local's `dataDir` (reservations live in `<ipam_dir>/<network name>/`).
    pub ipam_dir: PathBuf,
    /// The flannel binary.
    pub plugin: PathBuf,
    /// `CNI_PATH` for delegates.
    pub cni_path: String,
    /// The network name (`cbr0` like kube-flannel).
    pub network: String,
}

impl NodeCni {
    /// Paths under the node's private directory; the plugin from [`plugin_binary`].
    pub fn for_node(node: &Node) -> NodeCni {
        Self::in_dir(&node.netns_path(), &node.dir().join("cni"))
    }

    /// Paths under `dir` for the namespace at `netns`.
    pub fn in_dir(netns: &Path, dir: &Path) -> NodeCni {
        NodeCni {
            netns: netns.to_path_buf(),
            subnet_file: dir.join("run/flannel/subnet.env"),
            data_dir: dir.join("var/lib/cni/flannel"),
            ipam_dir: dir.join("var/lib/cni/networks"),
            plugin: plugin_binary(),
            cni_path: DEBIAN_CNI_PATH.to_string(),
            network: "cbr0".to_string(),
        }
    }

    /// Writes subnet.env as flanneld would for `subnet` (e.g. `10.244.3.1/24`) in `network`.
    pub fn write_subnet_env(&self, network: &str, subnet: &str, mtu: u32) -> Result<()> {
        let text = format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
        );
        self.write_subnet_env_text(&text)
    }

    /// Writes subnet.env with exactly `text`.
    pub fn write_subnet_env_text(&self, text: &str) -> Result<()> {
        let io = |source| LabError::Io {
            context: format!("writing {}", self.subnet_file.display()),
            source,
        };
        if let Some(dir) = self.subnet_file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&self.subnet_file, text).map_err(io)
    }

    /// The netconf a runtime would send for kube-flannel's first conflist entry, with this
    /// node's paths.
    pub fn netconf(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "name": self.network,
            "type": "flannel",
            "subnetFile": self.subnet_file,
            "dataDir": self.data_dir,
            "ipam": {"dataDir": self.ipam_dir},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
    }

    /// Runs the plugin with `conf`.
    pub fn call(&self, call: &Call<'_>, conf: &Value) -> Result<CniOutput> {
        invoke(
            &self.netns,
            &self.plugin,
            &self.cni_path,
            call,
            conf.to_string().as_bytes(),
        )
    }

    /// ADD for a container with netns `netns` (`eth0`), returning the raw output.
    pub fn add(&self, container_id: &str, netns: &Path, conf: &Value) -> Result<CniOutput> {
        let netns = netns.to_string_lossy();
        self.call(
            &Call {
                command: "ADD",
                container_id,
                netns: &netns,
                ifname: "eth0",
            },
            conf,
        )
    }

    /// DEL for a container (`netns` may be gone or empty).
    pub fn del(&self, container_id: &str, netns: &str, conf: &Value) -> Result<CniOutput> {
        self.call(
            &Call {
                command: "DEL",
                container_id,
                netns,
                ifname: "eth0",
            },
            conf,
        )
    }

    /// The saved delegate config file of a container.
    pub fn saved_path(&self, container_id: &str) -> PathBuf {
        self.data_dir.join(container_id)
    }

    /// host-local's reservation files (one per allocated address) for this network.
    pub fn reservations(&self) -> Vec<String> {
        let dir = self.ipam_dir.join(&self.network);
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Attaches `pod` through the plugin (CNI 1.0.0, container ID = the pod's netns name) and
    /// returns its address. For lab tests with flanneld: the pod is then reachable across
    /// nodes once flanneld has programmed the routes.
    pub fn attach_pod(&self, pod: &Pod) -> Result<IpAddr> {
        let out = self.add(pod.netns_name(), &pod.netns_path(), &self.netconf("1.0.0"))?;
        if !out.ok() {
            return Err(LabError::Invalid(format!(
                "flannel ADD for pod {} failed: {}{}",
                pod.name(),
                out.stdout,
                out.stderr
            )));
        }
        first_ip(&out.json(), false).ok_or_else(|| {
            LabError::Invalid(format!(
                "flannel ADD for pod {} gave no IPv4: {}",
                pod.name(),
                out.stdout
            ))
        })
    }

    /// Detaches a pod attached with [`NodeCni::attach_pod`].
    pub fn detach_pod(&self, pod: &Pod) -> Result<()> {
        let out = self.del(
            pod.netns_name(),
            &pod.netns_path().to_string_lossy(),
            &self.netconf("1.0.0"),
        )?;
        if out.ok() {
            Ok(())
        } else {
            Err(LabError::Invalid(format!(
                "flannel DEL for pod {} failed: {}",
                pod.name(),
                out.stdout
            )))
        }
    }
}

/// The first address of the wanted family in a result of any version (0.2.0 `ip4`/`ip6`,
/// 0.3.0+ `ips`).
pub fn first_ip(result: &Value, v6: bool) -> Option<IpAddr> {
    let legacy = result
        .get(if v6 { "ip6" } else { "ip4" })
        .and_then(|i| i.get("ip"))
        .and_then(Value::as_str);
    let current = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("address").and_then(Value::as_str))
        .find(|a| a.contains(':') == v6);
    let text = legacy.or(current)?;
    text.split('/').next()?.parse().ok()
}

/// A network configuration list driven as a runtime drives it: ADD plugin by plugin with
/// `prevResult` chained, DEL in reverse, capability arguments passed as `runtimeConfig` to the
/// plugins that declare them. For what `ctr run --cni` cannot do (port mappings).
#[derive(Debug, Clone)]
pub struct Conflist {
    /// The list as a JSON object (`name`, `cniVersion`, `plugins`).
    pub list: Value,
    /// Directories searched for each plugin's binary (`:`-separated), also given as `CNI_PATH`.
    pub cni_path: String,
}

impl Conflist {
    /// The config a runtime sends to plugin `i`: the list's `name`/`cniVersion` injected, the
    /// capabilities it declares filled from `capability_args`, and `prev` as `prevResult`.
    pub fn plugin_conf(&self, i: usize, capability_args: &Value, prev: Option<&Value>) -> Value {
        let mut conf = self.list["plugins"][i].clone();
        conf["name"] = self.list["name"].clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        let mut rc = serde_json::Map::new();
        if let Some(caps) = conf.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = capability_args.get(cap)
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugin_count(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    fn binary(&self, i: usize) -> Result<PathBuf> {
        let t = self.list["plugins"][i]["type"].as_str().unwrap_or_default();
        if t == "flannel" {
            return Ok(plugin_binary());
        }
        self.cni_path
            .split(':')
            .map(|d| Path::new(d).join(t))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                LabError::Invalid(format!("plugin {t:?} not found in {}", self.cni_path))
            })
    }

    /// ADD through every plugin; returns the final result. Stops at the first failure.
    pub fn add(
        &self,
        node_netns: &Path,
        call: &Call<'_>,
        capability_args: &Value,
    ) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugin_count() {
            let conf = self.plugin_conf(i, capability_args, prev.as_ref());
            let out = invoke(
                node_netns,
                &self.binary(i)?,
                &self.cni_path,
                call,
                conf.to_string().as_bytes(),
            )?;
            if !out.ok() {
                return Err(LabError::Invalid(format!(
                    "ADD of plugin {i} failed: {}{}",
                    out.stdout, out.stderr
                )));
            }
            prev = Some(out.json());
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through every plugin in reverse order, each with `prevResult` and the same
    /// capability arguments as the ADD (portmap needs them to find its rules).
    pub fn del(
        &self,
        node_netns: &Path,
        call: &Call<'_>,
        capability_args: &Value,
        prev: &Value,
    ) -> Result<()> {
        for i in (0..self.plugin_count()).rev() {
            let conf = self.plugin_conf(i, capability_args, Some(prev));
            let out = invoke(
                node_netns,
                &self.binary(i)?,
                &self.cni_path,
                call,
                conf.to_string().as_bytes(),
            )?;
            if !out.ok() {
                return Err(LabError::Invalid(format!(
                    "DEL of plugin {i} failed: {}{}",
                    out.stdout, out.stderr
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ip_reads_every_result_layout() {
        let r = json!({"ips":[{"address":"fd00::2/64"},{"address":"10.244.1.2/24"}]});
        assert_eq!(first_ip(&r, false), Some("10.244.1.2".parse().unwrap()));
        assert_eq!(first_ip(&r, true), Some("fd00::2".parse().unwrap()));
        let r = json!({"ip4":{"ip":"10.1.2.3/24"}});
        assert_eq!(first_ip(&r, false), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(first_ip(&json!({}), false), None);
    }

    #[test]
    fn conflist_injects_name_version_capabilities_and_prev_result() {
        let list = Conflist {
            list: json!({"name":"cbr0","cniVersion":"0.3.1","plugins":[
                {"type":"flannel","delegate":{"hairpinMode":true}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}),
            cni_path: DEBIAN_CNI_PATH.into(),
        };
        let args = json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]});
        let first = list.plugin_conf(0, &args, None);
        assert_eq!(first["name"], "cbr0");
        assert!(first.get("runtimeConfig").is_none());
        let prev = json!({"cniVersion":"0.3.1"});
        let second = list.plugin_conf(1, &args, Some(&prev));
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(second["prevResult"], prev);
    }
}
