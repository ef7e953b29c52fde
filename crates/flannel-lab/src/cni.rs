//! Running CNI plugins the way a container runtime does.
//!
//! The lab creates pods through the real CNI protocol (environment variables, config on stdin,
//! result or error JSON on stdout) so that what the tests and the demo exercise is exactly what
//! kubelet/containerd would: the `flannel` plugin, which delegates to Debian's `bridge` and
//! `host-local`, and `portmap` chained after it in a conflist.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::command::{describe, run_command};
use crate::error::{LabError, Result};
use crate::netns::Netns;

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
    let cni_path = call
        .path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path);
    let line = describe(&cmd);
    let input = serde_json::to_vec(conf).map_err(|e| LabError::Invalid(e.to_string()))?;
    let out = run_command(cmd, Some(&input), Duration::from_secs(60))?;
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

/// The first IP address of a CNI result (0.3.x/0.4.0/1.x layout), without its prefix length.
pub fn result_ip(result: &Value, v6: bool) -> Option<std::net::IpAddr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6)
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
        assert_eq!(confs[0]["name"], "cbr0");
        assert_eq!(confs[0]["cniVersion"], "0.3.1");
        assert!(confs[0].get("runtimeConfig").is_none());
        assert_eq!(
            confs[1]["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(confs[1]["runtimeConfig"].get("bandwidth").is_none());
    }

    #[test]
    fn result_ip_by_family() {
        let r = json!({"ips": [{"address": "10.244.1.5/24"}, {"address": "fd00::5/64"}]});
        assert_eq!(result_ip(&r, false), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(result_ip(&r, true), Some("fd00::5".parse().unwrap()));
        assert_eq!(result_ip(&json!({}), false), None);
    }
}
