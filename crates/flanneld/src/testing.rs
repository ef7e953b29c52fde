//! Lease builders for the unit tests of peer validation and the backends' pure plans.

use flannel_types::{Lease, LeaseAttrs};

/// An IPv4 peer lease of backend type `backend` (empty, as udp leases have it, for "").
pub(crate) fn lease(subnet: &str, public: &str, backend: &str) -> Lease {
    Lease {
        subnet: Some(subnet.parse().unwrap()),
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: public.parse().unwrap(),
            backend_type: backend.into(),
            ..Default::default()
        },
        expiration: None,
    }
}

/// The same lease with an IPv6 subnet and, when given, a public IPv6 address.
pub(crate) fn with_v6(mut l: Lease, subnet: &str, public: Option<&str>) -> Lease {
    l.ipv6_subnet = Some(subnet.parse().unwrap());
    l.attrs.public_ipv6 = public.map(|p| p.parse().unwrap());
    l
}
