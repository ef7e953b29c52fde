//! Configurations shared by the unit tests of both modes.

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::{Networks, PreviousValues, RuleConfig};

/// `10.244.0.0/16`, lease `10.244.1.0/24`.
pub(crate) fn v4() -> Networks<Ipv4Net> {
    Networks::v4(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.1.0/24".parse().unwrap(),
    )
}

/// `fd00:10:244::/56`, lease `fd00:10:244:1::/64`.
pub(crate) fn v6() -> Networks<Ipv6Net> {
    Networks::v6(
        "fd00:10:244::/56".parse().unwrap(),
        "fd00:10:244:1::/64".parse().unwrap(),
    )
}

/// The families and flags given, fully-random allowed, no previous run.
pub(crate) fn config(v4_on: bool, v6_on: bool, masq: bool, forward: bool) -> RuleConfig {
    RuleConfig {
        v4: v4_on.then(v4),
        v6: v6_on.then(v6),
        ip_masq: masq,
        forward_rules: forward,
        random_fully_disabled: false,
        previous: PreviousValues::default(),
    }
}
