//! net-conf.json (the Kubernetes ConfigMap, or etcd's `<prefix>/config` value).
//!
//! Any bytes: parsing must never panic, and whatever parses must hold together:
//! * `parse` on valid UTF-8 agrees with `parse_slice` (what etcd mode uses);
//! * the kept `Backend` text is valid JSON in Go-compact form (re-compacting changes nothing);
//! * `backend_object`, `ip_stack` and (feature `daemon`) the vxlan backend's settings parser
//!   never panic;
//! * a config that passes `check()` has a usable subnet length, subnet bounds inside the
//!   network and on a subnet boundary, and checking it again changes nothing.

#![no_main]

use flannel_types::{NetConfig, RawJson};
#[cfg(feature = "daemon")]
use flanneld::backend::vxlan::VxlanConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = NetConfig::parse_slice(data) else {
        if let Ok(text) = std::str::from_utf8(data) {
            assert!(
                NetConfig::parse(text).is_err(),
                "parse and parse_slice disagree"
            );
        }
        return;
    };
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(NetConfig::parse(text).as_ref(), Ok(&cfg));
    }

    if let Some(backend) = &cfg.backend {
        let again = RawJson::parse(backend.as_str()).expect("kept Backend text is valid JSON");
        assert_eq!(&again, backend, "Backend text is not in compact form");
    }
    let _ = cfg.ip_stack();
    let _ = cfg.backend_object();
    #[cfg(feature = "daemon")]
    let _ = VxlanConfig::from_net_config(&cfg);

    let mut checked = cfg.clone();
    if checked.check().is_err() {
        return;
    }
    if checked.enable_ipv4 {
        let net = checked.network.expect("checked IPv4 config has a Network");
        let len = checked.subnet_len;
        assert!(
            len <= 30 && len >= net.prefix_len() + 2,
            "SubnetLen {len} for {net}"
        );
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        for ip in [checked.subnet_min, checked.subnet_max] {
            let ip = ip.expect("check fills SubnetMin and SubnetMax");
            assert!(net.contains(&ip), "{ip} outside {net}");
            assert_eq!(
                u32::from(ip) & mask,
                u32::from(ip),
                "{ip} not on a /{len} boundary"
            );
        }
    }
    if checked.enable_ipv6 {
        let net = checked
            .ipv6_network
            .expect("checked IPv6 config has an IPv6Network");
        let len = checked.ipv6_subnet_len;
        assert!(
            len <= 126 && len >= net.prefix_len() + 2,
            "IPv6SubnetLen {len} for {net}"
        );
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        for ip in [checked.ipv6_subnet_min, checked.ipv6_subnet_max] {
            let ip = ip.expect("check fills IPv6SubnetMin and IPv6SubnetMax");
            assert!(net.contains(&ip), "{ip} outside {net}");
            assert_eq!(
                u128::from(ip) & mask,
                u128::from(ip),
                "{ip} not on a /{len} boundary"
            );
        }
    }
    let mut again = checked.clone();
    assert_eq!(
        again.check(),
        Ok(()),
        "a checked config fails a second check"
    );
    assert_eq!(again, checked, "a second check changed the config");
});
