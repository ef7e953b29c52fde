//! The command handlers: ADD, DEL, CHECK, GC and STATUS, given to the skel as [`FUNCS`]
//! (VERSION is answered by the skel).
//!
//! ADD and DEL follow upstream step by step (reference §10); CHECK, GC and STATUS are flannel-rs
//! additions, described in the README.

use std::collections::HashSet;
use std::io::{ErrorKind, Write};

use flannel_types::gojson::{GoObject, write_go_string};
use flannel_types::subnet_env::{CniSubnetEnv, SubnetEnvError};
use serde_json::Value;

use crate::check;
use crate::delegate;
use crate::error::{
    CHECK_MISMATCH, CniError, Coded, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG,
    IO_FAILURE, PLUGIN_NOT_AVAILABLE, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, clip,
};
use crate::invoke;
use crate::marshal::{encode_map, write_value};
use crate::netconf::{NetConf, VALID_ATTACHMENTS};
use crate::request::Request;
use crate::skel::PluginFuncs;
use crate::store::Store;

/// The flannel plugin's handlers, for [`crate::skel::main_with`].
pub const FUNCS: PluginFuncs = PluginFuncs {
    add,
    del,
    check,
    gc,
    status,
};

/// subnet.env could not be loaded, in upstream's words; the code tells the runtime whether
/// waiting helps: a missing file (flanneld not ready yet) is 11, other I/O 5, bad content 6.
#[derive(Debug, thiserror::Error)]
#[error("failed to load flannel 'subnet.env' file: {0}. Check the flannel pod log for this node.")]
pub struct SubnetEnvLoadError(#[source] pub SubnetEnvError);

impl Coded for SubnetEnvLoadError {
    fn code(&self) -> u32 {
        match &self.0 {
            SubnetEnvError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                TRY_AGAIN_LATER
            }
            SubnetEnvError::Io { .. } => IO_FAILURE,
            _ => DECODE_FAILURE,
        }
    }
}

/// STATUS: an ADD could not succeed now (code 50); the cause is the error ADD would give.
#[derive(Debug, thiserror::Error)]
#[error("flannel is not ready: {}", .0.msg)]
pub struct NotReady(#[source] pub CniError);

impl Coded for NotReady {
    fn code(&self) -> u32 {
        PLUGIN_NOT_AVAILABLE
    }
}

/// CHECK: the saved delegate config is not JSON (code 6).
#[derive(Debug, thiserror::Error)]
#[error("saved delegate config is not JSON: {0}")]
pub struct SavedConfigError(#[source] pub serde_json::Error);

impl Coded for SavedConfigError {
    fn code(&self) -> u32 {
        DECODE_FAILURE
    }
}

/// Writes a line to stderr in one write (the only log channel: stdout is protocol).
fn log(msg: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().write_all(format!("flannel: {msg}\n").as_bytes());
}

/// Reads subnet.env (see [`SubnetEnvLoadError`] for the codes).
pub fn load_subnet_env(conf: &NetConf) -> Result<CniSubnetEnv, SubnetEnvLoadError> {
    CniSubnetEnv::load(&conf.subnet_file).map_err(SubnetEnvLoadError)
}

/// ADD: build the delegate config, save it, run the delegate's ADD and pass its result on.
fn add(req: &Request) -> Result<Vec<u8>, CniError> {
    let conf = &NetConf::parse(&req.stdin)?;
    let env = load_subnet_env(conf)?;
    let d = delegate::build(conf, &env)?;
    log(format_args!(
        "ADD {}: delegate config for {}: {}",
        req.container_id, d.plugin, d.json
    ));
    Store::new(&conf.data_dir).save(&req.container_id, d.json.as_bytes())?;
    let path = invoke::find_in_path(&d.plugin, &req.path)?;
    let out = invoke::exec(&path, "ADD", d.json.as_bytes(), &[])?;
    if !out.success {
        return Err(invoke::failure(&out));
    }
    invoke::result_bytes(&out.stdout, &conf.cni_version)
}

/// DEL: replay the saved delegate config; keep it if the delegate fails, so a retry can.
fn del(req: &Request) -> Result<(), CniError> {
    let conf = &NetConf::parse(&req.stdin)?;
    let store = Store::new(&conf.data_dir);
    let Some(saved) = store.load(&req.container_id)? else {
        // Nothing was added (or DEL already ran): success, as the spec asks.
        return Ok(());
    };
    let plugin =
        match GoObject::parse_slice(&saved).and_then(|o| o.map(|o| o.string("type")).transpose()) {
            Ok(t) => t.flatten().unwrap_or_default(),
            Err(e) => {
                // Like upstream: the interface stays until reboot, but DEL must not block the pod's
                // removal. The file is kept for a human to look at.
                log(format_args!(
                    "DEL {}: failed to parse netconf {}: {e}; keeping it",
                    req.container_id,
                    store.path(&req.container_id).display()
                ));
                return Ok(());
            }
        };
    let path = invoke::find_in_path(&plugin, &req.path)?;
    let out = invoke::exec(&path, "DEL", &saved, &[])?;
    if !out.success {
        // Keep the saved config so a retried DEL can replay it (upstream deletes it anyway).
        return Err(invoke::failure(&out));
    }
    Ok(store.remove(&req.container_id)?)
}

/// CHECK: the saved config is still what the netconf gives, the pod still has what ADD gave
/// it, and the delegate agrees.
fn check(req: &Request) -> Result<(), CniError> {
    let conf = &NetConf::parse(&req.stdin)?;
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(
            INVALID_CONFIG,
            "CHECK needs the ADD result in \"prevResult\", and the network config has none",
        ));
    };
    let store = Store::new(&conf.data_dir);
    let Some(saved) = store.load(&req.container_id)? else {
        return Err(CniError::new(
            UNKNOWN_CONTAINER,
            format!(
                "container {} is unknown to flannel: no saved delegate config {}",
                req.container_id,
                store.path(&req.container_id).display()
            ),
        ));
    };
    // 1. The pod was set up with what the current netconf and subnet.env ask for.
    let env = load_subnet_env(conf)?;
    let want = delegate::build(conf, &env)?;
    if want.json.as_bytes() != saved.as_slice() {
        return Err(CniError::with_details(
            CHECK_MISMATCH,
            format!(
                "container {} was set up with a different delegate config than the current network config and subnet.env give",
                req.container_id
            ),
            format!(
                "saved: {}; now: {}",
                clip(&String::from_utf8_lossy(&saved)),
                clip(&want.json)
            ),
        ));
    }
    // 2. Inside the container: the interface, its addresses and routes are all there.
    let expected = check::expected(prev, &req.ifname)?;
    let seen = check::observe(&req.netns, &req.ifname)?;
    let problems = check::compare(&req.ifname, &expected, &seen);
    if !problems.is_empty() {
        return Err(CniError::new(
            CHECK_MISMATCH,
            format!(
                "container {} network is not as ADD left it: {}",
                req.container_id,
                problems.join("; ")
            ),
        ));
    }
    // 3. The delegate agrees (bridge: the bridge and host veth; host-local: the reservation).
    let mut conf_for_delegate: serde_json::Map<String, Value> =
        serde_json::from_slice(&saved).map_err(SavedConfigError)?;
    conf_for_delegate.insert(
        "prevResult".into(),
        Value::Object(check::prev_result_for_delegate(prev)),
    );
    let bytes = encode_map(&conf_for_delegate);
    let path = invoke::find_in_path(&want.plugin, &req.path)?;
    let out = invoke::exec(&path, "CHECK", bytes.as_bytes(), &[])?;
    if !out.success {
        return Err(invoke::failure(&out));
    }
    Ok(())
}

/// GC: remove saved configs of containers the runtime no longer knows, then forward GC to
/// the delegate.
fn gc(req: &Request) -> Result<(), CniError> {
    let conf = &NetConf::parse(&req.stdin)?;
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!("GC needs \"{VALID_ATTACHMENTS}\" in the network config"),
        ));
    };
    let keep: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let store = Store::new(&conf.data_dir);
    let (ids, stale_temps) = store.scan()?;
    for id in ids.iter().filter(|id| !keep.contains(id.as_str())) {
        log(format_args!("GC: removing saved delegate config of {id}"));
        store.remove(id)?;
    }
    for t in stale_temps {
        let _ = std::fs::remove_file(t);
    }
    // Forward GC to the delegate so it (and its IPAM) can release what stale attachments held.
    let env = match load_subnet_env(conf) {
        Ok(env) => env,
        Err(e) => {
            log(format_args!("GC: not forwarding to the delegate: {e}"));
            return Ok(());
        }
    };
    let d = delegate::build(conf, &env)?;
    let attachments: Vec<Value> = valid
        .iter()
        .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
        .collect();
    // The delegate config as ADD sends it, plus the attachment list (key order is irrelevant
    // to the delegate; the saved bytes are not touched).
    let mut json = String::with_capacity(d.json.len() + 128);
    json.push('{');
    write_go_string(&mut json, VALID_ATTACHMENTS);
    json.push(':');
    write_value(&mut json, &Value::Array(attachments));
    json.push(',');
    json.push_str(d.json.strip_prefix('{').unwrap_or(&d.json));
    let path = invoke::find_in_path(&d.plugin, &req.path)?;
    let out = invoke::exec(&path, "GC", json.as_bytes(), &[])?;
    if !out.success {
        let e = invoke::failure(&out);
        if e.code == INCOMPATIBLE_VERSION {
            log(format_args!(
                "GC: delegate {} cannot GC ({e}); nothing more to do",
                d.plugin
            ));
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// STATUS: subnet.env is there and complete, and the delegate plugin is on `CNI_PATH`.
fn status(req: &Request) -> Result<(), CniError> {
    let conf = &NetConf::parse(&req.stdin)?;
    let not_ready = |e: CniError| CniError::from(NotReady(e));
    load_subnet_env(conf).map_err(|e| not_ready(e.into()))?;
    let plugin = delegate::plugin_type(conf)?;
    invoke::find_in_path(&plugin, &req.path).map_err(not_ready)?;
    Ok(())
}
