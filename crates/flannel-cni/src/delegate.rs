//! Building the delegate config exactly as upstream does (`cni:flannel_linux.go doCmdAdd`,
//! `getDelegateIPAM`), down to the bytes it saves.
//!
//! The delegate is the netconf's `delegate` dictionary with flannel's values filled in, plus an
//! `ipam` section whose ranges come from subnet.env. Upstream marshals it as a Go map (keys
//! sorted) except for `ipam.routes`, which goes through the CNI `types.Route` struct: known
//! fields only, in the order `dst, gw, mtu, advmss, priority, table, scope`.

use std::net::IpAddr;

use flannel_types::goip;
use flannel_types::gojson::{GoJsonError, GoObject};
use flannel_types::subnet_env::CniSubnetEnv;
use serde_json::{Map, Value};

use flannel_types::gojson::write_go_string;

use crate::error::{CniError, Coded, INVALID_CONFIG, clip};
use crate::marshal::{Field, go_cidr_string, go_ip_string, go_net_string, write_map_with};
use crate::netconf::NetConf;

/// The delegate plugin used when the netconf's delegate names none.
pub const DEFAULT_DELEGATE_TYPE: &str = "bridge";
/// The IPAM plugin used when the netconf's ipam names none.
pub const DEFAULT_IPAM_TYPE: &str = "host-local";

/// The delegate's IPAM section could not be built from the netconf's `ipam.routes` (code 7).
#[derive(Debug, thiserror::Error)]
#[error("failed to assemble Delegate IPAM: failed to read IPAM routes: {0}")]
pub struct IpamError(#[source] pub RoutesError);

impl Coded for IpamError {
    fn code(&self) -> u32 {
        INVALID_CONFIG
    }
}

/// Why `ipam.routes` cannot be passed on as CNI's `types.Route` list; the texts are upstream's
/// where it has one (its JSON decoding and `net.ParseCIDR`/`net.ParseIP` errors).
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// An entry has a key of the wrong type, or is not JSON Go can decode.
    #[error("failed to parse ipam.routes: {0}")]
    Decode(#[source] GoJsonError),
    /// `routes` is not an array (Go's message names the JSON kind found).
    #[error(
        "failed to parse ipam.routes: json: cannot unmarshal {0} into Go value of type []types.Route"
    )]
    NotArray(&'static str),
    /// An entry is not an object.
    #[error("failed to parse ipam.routes: {path}: expected an object, got {got}")]
    NotObject {
        /// `ipam.routes[i]`.
        path: String,
        /// The entry's JSON, shortened.
        got: String,
    },
    /// An entry has no `dst` (upstream would pass `"dst":"<nil>"` on to the delegate).
    #[error("failed to parse ipam.routes: {path} has no \"dst\"")]
    NoDst {
        /// `ipam.routes[i]`.
        path: String,
    },
    /// `dst` is not a CIDR.
    #[error("failed to parse ipam.routes: invalid CIDR address: {0}")]
    Dst(String),
    /// `gw` is not an address.
    #[error("failed to parse ipam.routes: invalid IP address: {0}")]
    Gateway(String),
}

/// A delegate config ready to be saved and sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegate {
    /// The delegate plugin's name (`type`).
    pub plugin: String,
    /// The exact JSON bytes upstream would produce.
    pub json: String,
}

/// Checks the netconf's `delegate` dictionary with upstream's rules and messages (code 7).
pub fn validate(delegate: Option<&Map<String, Value>>) -> Result<(), CniError> {
    let Some(d) = delegate else {
        return Ok(());
    };
    let msg = if d.get("type").is_some_and(|t| !t.is_string()) {
        "'delegate' dictionary, if present, must have (string) 'type' field"
    } else if d.contains_key("name") {
        "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
    } else if d.contains_key("ipam") {
        "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"
    } else {
        return Ok(());
    };
    Err(CniError::new(INVALID_CONFIG, msg))
}

/// The delegate plugin a netconf selects (`delegate.type`, default `bridge`).
pub fn plugin_type(conf: &NetConf) -> Result<String, CniError> {
    validate(conf.delegate.as_ref())?;
    Ok(conf
        .delegate
        .as_ref()
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_DELEGATE_TYPE)
        .to_string())
}

/// Builds the delegate config from the netconf and subnet.env (upstream's ADD step 4).
pub fn build(conf: &NetConf, env: &CniSubnetEnv) -> Result<Delegate, CniError> {
    validate(conf.delegate.as_ref())?;
    let mut d = conf.delegate.clone().unwrap_or_default();
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    d.insert("name".into(), Value::String(conf.name.clone()));
    d.entry("type")
        .or_insert_with(|| Value::String(DEFAULT_DELEGATE_TYPE.into()));
    // flanneld masquerades itself when FLANNEL_IPMASQ is true; otherwise the bridge should.
    d.entry("ipMasq").or_insert(Value::Bool(!env.ip_masq));
    d.entry("mtu").or_insert_with(|| Value::from(env.mtu));
    let plugin = d
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_DELEGATE_TYPE)
        .to_string();
    if plugin == "bridge" {
        d.entry("isGateway").or_insert(Value::Bool(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    let ipam = build_ipam(conf, env).map_err(IpamError)?;
    let mut json = String::with_capacity(512);
    write_map_with(&mut json, &d, [("ipam", Field::Raw(&ipam))]);
    Ok(Delegate { plugin, json })
}

/// The delegate's `ipam`: the netconf's ipam with `type` defaulted, `ranges` replaced by the
/// node's subnets and `routes` extended by the cluster networks. Returns the encoded object.
fn build_ipam(conf: &NetConf, env: &CniSubnetEnv) -> Result<String, RoutesError> {
    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type")
        .or_insert_with(|| Value::String(DEFAULT_IPAM_TYPE.into()));
    let ranges: Vec<Value> = [env.subnet, env.ipv6_subnet]
        .into_iter()
        .flatten()
        .map(|sn| {
            let mut r = Map::new();
            r.insert("subnet".into(), Value::String(go_net_string(&sn)));
            Value::Array(vec![Value::Object(r)])
        })
        .collect();
    // Go marshals a nil slice as null; upstream's slice is nil when there is no subnet at all.
    let ranges = if ranges.is_empty() {
        Value::Null
    } else {
        Value::Array(ranges)
    };
    let mut routes: Option<Vec<String>> = match ipam.get("routes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, r)| encode_route(i, r))
                .collect::<Result<_, _>>()?,
        ),
        Some(other) => return Err(RoutesError::NotArray(kind(other))),
    };
    for net in env.networks.iter().chain(&env.ipv6_networks) {
        let mut r = String::from("{\"dst\":");
        write_go_string(&mut r, &go_net_string(net));
        r.push('}');
        routes.get_or_insert_with(Vec::new).push(r);
    }
    let routes = match routes {
        Some(r) => format!("[{}]", r.join(",")),
        None => "null".to_string(),
    };
    let mut out = String::with_capacity(256);
    write_map_with(
        &mut out,
        &ipam,
        [
            ("ranges", Field::Value(&ranges)),
            ("routes", Field::Raw(&routes)),
        ],
    );
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Re-encodes one `ipam.routes` entry as Go's `types.Route` marshals it.
fn encode_route(i: usize, route: &Value) -> Result<String, RoutesError> {
    let path = || format!("ipam.routes[{i}]");
    let obj = match route {
        Value::Object(_) => GoObject::parse(&route.to_string())
            .map_err(RoutesError::Decode)?
            .unwrap_or_default(),
        _ => {
            return Err(RoutesError::NotObject {
                path: path(),
                got: clip(&route.to_string()),
            });
        }
    };
    let dst = obj
        .string("dst")
        .map_err(RoutesError::Decode)?
        .ok_or_else(|| RoutesError::NoDst { path: path() })?;
    let cidr = goip::parse_cidr(&dst).ok_or_else(|| RoutesError::Dst(dst.clone()))?;
    let mut out = String::from("{\"dst\":");
    write_go_string(&mut out, &go_cidr_string(cidr.addr, cidr.prefix));
    if let Some(gw) = obj.string("gw").map_err(RoutesError::Decode)?
        && !gw.is_empty()
    {
        let ip: IpAddr = goip::parse_ip(&gw).ok_or_else(|| RoutesError::Gateway(gw.clone()))?;
        out.push_str(",\"gw\":");
        write_go_string(&mut out, &go_ip_string(ip));
    }
    // Go omits zero mtu/advmss/priority (`omitempty`) but keeps table and scope (pointers).
    for (key, keep_zero) in [
        ("mtu", false),
        ("advmss", false),
        ("priority", false),
        ("table", true),
        ("scope", true),
    ] {
        if let Some(v) = obj.int(key).map_err(RoutesError::Decode)?
            && (keep_zero || v != 0)
        {
            out.push_str(&format!(",\"{key}\":{v}"));
        }
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env(text: &str) -> CniSubnetEnv {
        CniSubnetEnv::parse(Path::new("/run/flannel/subnet.env"), text).unwrap()
    }

    const V4: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const V6: &str = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const DUAL: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    fn build_json(netconf: &str, subnet_env: &str) -> Result<String, CniError> {
        let conf = NetConf::parse(netconf.as_bytes())?;
        build(&conf, &env(subnet_env)).map(|d| d.json)
    }

    const UPSTREAM_INPUT: &str =
        r#"{"name":"cni-flannel","type":"flannel","subnetFile":"/tmp/x","dataDir":"/tmp/d"}"#;

    #[test]
    fn upstream_test_vector_is_byte_equal() {
        let got = build_json(UPSTREAM_INPUT, V4).unwrap();
        // Go's json.Marshal sorts map keys at every level, so "ranges" precedes "routes".
        assert_eq!(
            got,
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
        // The vector as the reference (and upstream's MatchJSON test) writes it, key order aside.
        let reference: Value = serde_json::from_str(
            r#"{"ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"}],"ranges":[[{"subnet":"10.1.17.0/24"}]],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), reference);
    }

    #[test]
    fn kube_flannel_conflist_variant() {
        // What a runtime sends to the first plugin of kube-flannel's 10-flannel.conflist.
        let conf = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
        assert_eq!(
            build_json(conf, V4).unwrap(),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn ipv6_only_and_dual_stack() {
        assert_eq!(
            build_json(UPSTREAM_INPUT, V6).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"fc00::/64"}]],"routes":[{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
        assert_eq!(
            build_json(UPSTREAM_INPUT, DUAL).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    #[test]
    fn several_networks_each_get_a_route() {
        let env = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        let j = build_json(UPSTREAM_INPUT, env).unwrap();
        assert!(
            j.contains(r#""routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}]"#),
            "{j}"
        );
    }

    #[test]
    fn user_ipam_is_the_base_and_routes_go_through_types_route() {
        // Upstream's getDelegateIPAM test input: own type, an unknown key, two routes.
        let conf = r#"{"name":"cni-flannel","type":"flannel","ipam":{"type":"my-ipam","unknown-param":"unknown-value",
            "routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}],
            "ranges":[[{"subnet":"1.2.3.0/24"}]]}}"#;
        assert_eq!(
            build_json(conf, V4).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"},{"dst":"10.1.0.0/16"}],"type":"my-ipam","unknown-param":"unknown-value"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
        // Route fields: case-insensitive keys, unknown ones dropped, struct order, host bits and
        // zero values as Go keeps/omits them.
        let conf = r#"{"name":"n","ipam":{"routes":[{"SCOPE":0,"table":100,"priority":0,"mtu":1400,"x":1,"GW":"","DST":"10.96.0.1/12","advmss":1360}]}}"#;
        let j = build_json(conf, V4).unwrap();
        assert!(
            j.contains(r#""routes":[{"dst":"10.96.0.1/12","mtu":1400,"advmss":1360,"table":100,"scope":0},{"dst":"10.1.0.0/16"}]"#),
            "{j}"
        );
        // null routes: only flannel's own.
        let j = build_json(r#"{"name":"n","ipam":{"routes":null}}"#, V4).unwrap();
        assert!(j.contains(r#""routes":[{"dst":"10.1.0.0/16"}]"#), "{j}");
    }

    #[test]
    fn bad_routes_are_config_errors() {
        let e = |conf: &str| build_json(conf, V4).unwrap_err();
        let err = e(r#"{"name":"n","ipam":{"routes":{"dst":"10.0.0.0/8"}}}"#);
        assert_eq!(err.code, INVALID_CONFIG);
        assert_eq!(
            err.msg,
            "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: json: cannot unmarshal object into Go value of type []types.Route"
        );
        assert!(
            e(r#"{"name":"n","ipam":{"routes":[{"dst":"10.0.0/8"}]}}"#)
                .msg
                .ends_with("invalid CIDR address: 10.0.0/8")
        );
        assert!(
            e(r#"{"name":"n","ipam":{"routes":[{"gw":"10.0.0.1"}]}}"#)
                .msg
                .ends_with("ipam.routes[0] has no \"dst\"")
        );
        assert!(
            e(r#"{"name":"n","ipam":{"routes":[{"dst":"10.0.0.0/8","gw":"10.0.0.256"}]}}"#)
                .msg
                .ends_with("invalid IP address: 10.0.0.256")
        );
        assert!(
            e(r#"{"name":"n","ipam":{"routes":[{"dst":"10.0.0.0/8","mtu":1.5}]}}"#)
                .msg
                .contains("\"mtu\": expected an integer, got 1.5")
        );
        assert!(
            e(r#"{"name":"n","ipam":{"routes":["10.0.0.0/8"]}}"#)
                .msg
                .contains("ipam.routes[0]: expected an object")
        );
    }

    #[test]
    fn explicit_delegate_values_win_and_pass_through() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","delegate":{"type":"ipvlan","ipMasq":true,"mtu":9000,"master":"eth0","bridge":"<br>","x":{"b":1.0,"a":1e21}}}"#;
        assert_eq!(
            build_json(conf, V4).unwrap(),
            r#"{"bridge":"\u003cbr\u003e","cniVersion":"1.0.0","ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"master":"eth0","mtu":9000,"name":"n","type":"ipvlan","x":{"a":1e+21,"b":1}}"#
        );
        // isGateway is only defaulted for bridge, and an explicit false stays false.
        let j = build_json(r#"{"name":"n","delegate":{"isGateway":false}}"#, V4).unwrap();
        assert!(j.contains(r#""isGateway":false"#));
        // FLANNEL_IPMASQ=false: the bridge masquerades.
        let j = build_json(UPSTREAM_INPUT, &V4.replace("IPMASQ=true", "IPMASQ=false")).unwrap();
        assert!(j.starts_with(r#"{"ipMasq":true,"#), "{j}");
    }

    #[test]
    fn runtime_config_is_copied_into_the_delegate() {
        let conf = r#"{"name":"n","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},"delegate":{"runtimeConfig":{"old":true}}}"#;
        let j = build_json(conf, V4).unwrap();
        assert!(
            j.contains(r#""runtimeConfig":{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]}"#),
            "{j}"
        );
        assert!(!j.contains("old"));
    }

    #[test]
    fn delegate_validation_texts() {
        let e = |d: &str| build_json(&format!(r#"{{"name":"n","delegate":{d}}}"#), V4).unwrap_err();
        for (d, msg) in [
            (
                r#"{"type":5}"#,
                "'delegate' dictionary, if present, must have (string) 'type' field",
            ),
            (
                r#"{"name":"x"}"#,
                "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
            ),
            (
                r#"{"ipam":{}}"#,
                "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
            ),
        ] {
            let err = e(d);
            assert_eq!(err.code, INVALID_CONFIG);
            assert_eq!(err.msg, msg);
        }
    }

    #[test]
    fn plugin_type_defaults_to_bridge() {
        let c = NetConf::parse(br#"{"name":"n"}"#).unwrap();
        assert_eq!(plugin_type(&c).unwrap(), "bridge");
        let c = NetConf::parse(br#"{"name":"n","delegate":{"type":"ptp"}}"#).unwrap();
        assert_eq!(plugin_type(&c).unwrap(), "ptp");
    }
}
