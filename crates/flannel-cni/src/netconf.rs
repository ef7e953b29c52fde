//! The plugin's network configuration (stdin), read as upstream's Go struct reads it.
//!
//! Upstream decodes into `NetConf{types.NetConf; IPAM, SubnetFile, DataDir, Delegate,
//! RuntimeConfig}` with `encoding/json`: keys match case-insensitively, unknown keys are
//! ignored, `null` leaves a string field at its default, and the last duplicate wins. The
//! object-valued fields stay generic JSON maps because the delegate and IPAM configs are passed
//! on to other plugins untouched.

use std::path::PathBuf;

use flannel_types::gojson::{GoJsonError, GoObject};
use serde_json::{Map, Value};

use crate::error::{CniError, Coded, DECODE_FAILURE, INVALID_CONFIG, clip};

/// Default location of subnet.env (`subnetFile`).
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Default directory of saved delegate configs (`dataDir`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// The GC input key listing attachments the runtime still considers alive (CNI 1.1).
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// One still-valid attachment from a GC request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The container ID (`containerID`).
    pub container_id: String,
    /// The interface name (`ifname`).
    pub ifname: String,
}

/// The parsed netconf.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` as written; empty when absent (the skel treats that as 0.1.0).
    pub cni_version: String,
    /// `name`: becomes the delegate's `name`.
    pub name: String,
    /// `type` (normally `flannel`).
    pub plugin_type: String,
    /// `subnetFile`: where flanneld writes subnet.env.
    pub subnet_file: PathBuf,
    /// `dataDir`: where delegate configs are saved per container.
    pub data_dir: PathBuf,
    /// `delegate`: the base of the delegate config.
    pub delegate: Option<Map<String, Value>>,
    /// `ipam`: the base of the delegate's IPAM config.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`: copied into the delegate's `runtimeConfig`.
    pub runtime_config: Option<Map<String, Value>>,
    /// `prevResult`: the result of ADD, given on CHECK (and DEL).
    pub prev_result: Option<Map<String, Value>>,
    /// `cni.dev/valid-attachments`: given on GC.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The netconf could not be decoded (code 6), with the prefix upstream puts before every
/// netconf decoding error.
#[derive(Debug, thiserror::Error)]
#[error("failed to load flannel netconf file: failed to load netconf: {0}")]
pub struct NetConfError(#[source] pub GoJsonError);

impl Coded for NetConfError {
    fn code(&self) -> u32 {
        DECODE_FAILURE
    }
}

impl NetConf {
    /// Parses stdin. Errors carry upstream's prefix
    /// (`failed to load flannel netconf file: failed to load netconf: ...`) and code 6, or 7 for
    /// values that decode but cannot be used.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let decode = NetConfError;
        let obj = GoObject::parse_slice(stdin)
            .map_err(decode)?
            .unwrap_or_default();
        let string = |field: &str| obj.string(field).map_err(decode);
        let cni_version = string("cniVersion")?.unwrap_or_default();
        let name = string("name")?.unwrap_or_default();
        let plugin_type = string("type")?.unwrap_or_default();
        let subnet_file = string("subnetFile")?.unwrap_or_else(|| DEFAULT_SUBNET_FILE.into());
        let data_dir = string("dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        if data_dir.is_empty() {
            return Err(CniError::new(
                INVALID_CONFIG,
                "invalid netconf: \"dataDir\" is empty; leave it out for the default /var/lib/cni/flannel",
            ));
        }
        // Fields of the embedded types.NetConf that upstream decodes without using: a value of
        // the wrong type still fails decoding there, so it does here.
        map_field(&obj, "capabilities").map_err(decode)?;
        map_field(&obj, "dns").map_err(decode)?;
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            subnet_file: subnet_file.into(),
            data_dir: data_dir.into(),
            delegate: map_field(&obj, "delegate").map_err(decode)?,
            ipam: map_field(&obj, "ipam").map_err(decode)?,
            runtime_config: map_field(&obj, "runtimeConfig").map_err(decode)?,
            prev_result: map_field(&obj, "prevResult").map_err(decode)?,
            valid_attachments: attachments(&obj).map_err(decode)?,
        })
    }
}

/// A `map[string]interface{}` field: the last matching key wins; `null` clears it.
fn map_field(obj: &GoObject, field: &str) -> Result<Option<Map<String, Value>>, GoJsonError> {
    let mut out = None;
    for (key, raw) in obj.matching(field) {
        let text = raw.get();
        if text == "null" {
            out = None;
        } else if text.starts_with('{') {
            out = Some(serde_json::from_str(text).map_err(GoJsonError::from)?);
        } else {
            return Err(field_error(key, "an object", text));
        }
    }
    Ok(out)
}

fn field_error(key: &str, expected: &'static str, got: &str) -> GoJsonError {
    GoJsonError::Field {
        key: key.to_string(),
        expected,
        got: clip(got),
    }
}

/// `cni.dev/valid-attachments`: a list of `{containerID, ifname}` objects.
fn attachments(obj: &GoObject) -> Result<Option<Vec<Attachment>>, GoJsonError> {
    let Some(raw) = obj.raw(VALID_ATTACHMENTS) else {
        return Ok(None);
    };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)
        .map_err(|_| field_error(VALID_ATTACHMENTS, "an array of objects", text))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("{VALID_ATTACHMENTS}[{i}]");
        let Some(a) = GoObject::from_raw(item, &path)? else {
            continue;
        };
        out.push(Attachment {
            container_id: a.string("containerID")?.unwrap_or_default(),
            ifname: a.string("ifname")?.unwrap_or_default(),
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NetConf {
        NetConf::parse(s.as_bytes()).unwrap()
    }

    fn err(s: &str) -> CniError {
        NetConf::parse(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn defaults_like_upstream() {
        let c = parse(r#"{"name":"cni-flannel","type":"flannel"}"#);
        assert_eq!(c.name, "cni-flannel");
        assert_eq!(c.plugin_type, "flannel");
        assert_eq!(c.cni_version, "");
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.delegate.is_none() && c.ipam.is_none() && c.runtime_config.is_none());
    }

    #[test]
    fn keys_match_case_insensitively_and_last_wins() {
        let c = parse(
            r#"{"NAME":"a","name":"b","SubnetFile":"/x","DATADIR":"/d","Delegate":{"hairpinMode":true},
                "unknown":[1,2],"cniversion":"0.3.1","RuntimeConfig":{"portMappings":[]},"IPAM":{"type":"x"}}"#,
        );
        assert_eq!(c.name, "b");
        assert_eq!(c.cni_version, "0.3.1");
        assert_eq!(c.subnet_file, PathBuf::from("/x"));
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.delegate.unwrap()["hairpinMode"], Value::Bool(true));
        assert!(c.runtime_config.unwrap().contains_key("portMappings"));
        assert_eq!(c.ipam.unwrap()["type"], "x");
        // A null string keeps the default; a null map clears an earlier one.
        let c = parse(r#"{"name":"n","subnetFile":null,"delegate":{"a":1},"delegate":null}"#);
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert!(c.delegate.is_none());
    }

    #[test]
    fn decode_errors_carry_upstream_prefix_and_code_6() {
        let e = err("{not json");
        assert_eq!(e.code, DECODE_FAILURE);
        assert!(
            e.msg.starts_with(
                "failed to load flannel netconf file: failed to load netconf: invalid JSON: "
            ),
            "{}",
            e.msg
        );
        let e = err(r#"{"name":"n","delegate":"bridge"}"#);
        assert_eq!(e.code, DECODE_FAILURE);
        assert_eq!(
            e.msg,
            "failed to load flannel netconf file: failed to load netconf: \"delegate\": expected an object, got \"bridge\""
        );
        let e = err(r#"{"name":"n","subnetFile":5}"#);
        assert!(
            e.msg.ends_with("\"subnetFile\": expected a string, got 5"),
            "{}",
            e.msg
        );
        let e = err(r#"[1]"#);
        assert!(
            e.msg.ends_with("expected a JSON object, got array"),
            "{}",
            e.msg
        );
        let e = err(r#"{"name":"n","dns":[]}"#);
        assert!(
            e.msg.ends_with("\"dns\": expected an object, got []"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn empty_data_dir_is_refused() {
        let e = err(r#"{"name":"n","dataDir":""}"#);
        assert_eq!(e.code, INVALID_CONFIG);
        assert!(e.msg.contains("\"dataDir\" is empty"));
    }

    #[test]
    fn valid_attachments_parse() {
        let c = parse(
            r#"{"name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"CONTAINERID":"b"}]}"#,
        );
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![
                Attachment {
                    container_id: "a".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "b".into(),
                    ifname: String::new()
                },
            ]
        );
        let e = err(r#"{"name":"n","cni.dev/valid-attachments":{}}"#);
        assert!(e.msg.contains("expected an array of objects"), "{}", e.msg);
        assert!(parse(r#"{"name":"n"}"#).valid_attachments.is_none());
    }
}
