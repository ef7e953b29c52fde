//! The CNI plugin's netconf (stdin) and the delegate config built from it.
//!
//! The input is split at its first NUL byte: the netconf before it, a subnet.env text after it
//! (none: a fixed single-stack subnet.env is used; one that does not parse is replaced by it).
//! Nothing may panic, and:
//! * every error renders as the JSON object the plugin prints on stdout (valid JSON carrying
//!   the code);
//! * a delegate that builds is a JSON object naming the netconf's network, with the plugin type
//!   reported, and an `ipam` object whose `ranges` hold the node's subnets.

#![no_main]

use std::path::Path;

use flannel_cni::{CniError, delegate, netconf::NetConf};
use flannel_types::subnet_env::CniSubnetEnv;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const DEFAULT_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                           FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

fn check_error_json(e: &CniError) {
    let json = e.to_json("1.0.0");
    let v: Value = serde_json::from_str(&json)
        .unwrap_or_else(|err| panic!("error JSON {json:?} is not JSON: {err}"));
    assert_eq!(v["code"].as_u64(), Some(u64::from(e.code)));
    assert_eq!(v["msg"].as_str(), Some(e.msg.as_str()));
}

fuzz_target!(|data: &[u8]| {
    let (stdin, env_text) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(String::from_utf8_lossy(&data[i + 1..]))),
        None => (data, None),
    };
    let path = Path::new("/run/flannel/subnet.env");
    let env = env_text
        .and_then(|t| CniSubnetEnv::parse(path, &t).ok())
        .unwrap_or_else(|| CniSubnetEnv::parse(path, DEFAULT_ENV).expect("default env parses"));

    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return check_error_json(&e),
    };
    let plugin = delegate::plugin_type(&conf);
    match delegate::build(&conf, &env) {
        Err(e) => check_error_json(&e),
        Ok(d) => {
            assert_eq!(plugin.as_ref().ok(), Some(&d.plugin));
            let v: Value = serde_json::from_str(&d.json)
                .unwrap_or_else(|err| panic!("delegate {:?} is not JSON: {err}", d.json));
            let obj = v.as_object().expect("delegate is an object");
            assert_eq!(
                obj.get("name").and_then(Value::as_str),
                Some(conf.name.as_str())
            );
            let ipam = obj
                .get("ipam")
                .and_then(Value::as_object)
                .expect("ipam object");
            let ranges = ipam.get("ranges").expect("ipam.ranges");
            let want = usize::from(env.subnet.is_some()) + usize::from(env.ipv6_subnet.is_some());
            match ranges {
                Value::Array(r) => assert_eq!(r.len(), want),
                Value::Null => assert_eq!(want, 0),
                other => panic!("ipam.ranges is {other}"),
            }
        }
    }
});
