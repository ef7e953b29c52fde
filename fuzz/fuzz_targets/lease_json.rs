//! Lease attributes (etcd values written by every node) and etcd subnet keys.
//!
//! The input is split at its first NUL byte (none: the whole input is used for both):
//! * before it, lease JSON: parsing never panics; what parses serialises to JSON that parses
//!   back to the same value, and serialising that again gives the same bytes; the vxlan
//!   backend's `VtepMAC` reader never panics on the backend data;
//! * after it, an etcd key: parsing never panics, and what parses prints as a key that parses
//!   back to the same value.
//!
//! Known and accepted exception (upstream prints these addresses the same way, see
//! `goip::ip6_string`): IPv6 addresses that upstream prints as dotted IPv4 (`::a00:1` prints as
//! `10.0.0.1`) do not survive a round trip as the same address.

#![no_main]

use flannel_types::{LeaseAttrs, SubnetKey, goip};
#[cfg(feature = "daemon")]
use flanneld::backend::vxlan::vtep_mac;
use libfuzzer_sys::fuzz_target;

/// Whether upstream's printer writes `ip` in IPv6 form (and so reads it back unchanged).
fn prints_as_ipv6(ip: std::net::Ipv6Addr) -> bool {
    goip::ip6_string(ip).contains(':')
}

fuzz_target!(|data: &[u8]| {
    let (lease, key) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };

    if let Ok(attrs) = LeaseAttrs::from_slice(lease) {
        let json = attrs.to_json();
        let again = LeaseAttrs::from_json(&json)
            .unwrap_or_else(|e| panic!("to_json output {json:?} does not parse: {e}"));
        if attrs.public_ipv6.is_none_or(prints_as_ipv6) {
            assert_eq!(
                again, attrs,
                "lease attrs changed in a round trip through {json}"
            );
        }
        assert_eq!(again.to_json(), json, "lease JSON bytes are not stable");
        #[cfg(feature = "daemon")]
        {
            let _ = vtep_mac(attrs.backend_data.as_ref());
            let _ = vtep_mac(attrs.backend_v6_data.as_ref());
        }
    }

    let text = String::from_utf8_lossy(key);
    if let Ok(k) = SubnetKey::parse(&text) {
        assert!(k.ipv4.is_some() || k.ipv6.is_some());
        if k.ipv6.is_none_or(|n| prints_as_ipv6(n.addr())) {
            let printed = k.to_string();
            let again = SubnetKey::parse(&printed)
                .unwrap_or_else(|e| panic!("key {k:?} printed as {printed:?} does not parse: {e}"));
            assert_eq!(
                again, k,
                "subnet key changed in a round trip through {printed}"
            );
            assert_eq!(again.to_string(), printed);
        }
    }
});
