//! What the rule managers are asked to converge to: the networks, the flags, and what the previous
//! run wrote to subnet.env.

use std::fmt;

use flannel_types::IpFamily;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The multicast range of a family, which is never masqueraded.
pub(crate) fn multicast(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "224.0.0.0/4",
        IpFamily::V6 => "ff00::/8",
    }
}

/// The cluster network and this node's lease subnet of one family.
///
/// Both are stored as network prefixes: the `FLANNEL_SUBNET` of subnet.env holds the first usable
/// address (`10.244.1.1/24`), and the rules need `10.244.1.0/24`, so the constructor truncates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Networks<N> {
    /// `config.Network` / `config.IPv6Network`, e.g. `10.244.0.0/16`.
    pub network: N,
    /// The node's lease, e.g. `10.244.1.0/24`.
    pub subnet: N,
}

impl Networks<Ipv4Net> {
    /// IPv4 networks, host bits cleared.
    pub fn v4(network: Ipv4Net, subnet: Ipv4Net) -> Self {
        Self {
            network: network.trunc(),
            subnet: subnet.trunc(),
        }
    }
}

impl Networks<Ipv6Net> {
    /// IPv6 networks, host bits cleared.
    pub fn v6(network: Ipv6Net, subnet: Ipv6Net) -> Self {
        Self {
            network: network.trunc(),
            subnet: subnet.trunc(),
        }
    }
}

/// The family-neutral form the rule generators use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FamilyNets {
    pub(crate) family: IpFamily,
    pub(crate) network: IpNet,
    pub(crate) subnet: IpNet,
}

impl From<Networks<Ipv4Net>> for FamilyNets {
    fn from(n: Networks<Ipv4Net>) -> Self {
        Self {
            family: IpFamily::V4,
            network: IpNet::V4(n.network.trunc()),
            subnet: IpNet::V4(n.subnet.trunc()),
        }
    }
}

impl From<Networks<Ipv6Net>> for FamilyNets {
    fn from(n: Networks<Ipv6Net>) -> Self {
        Self {
            family: IpFamily::V6,
            network: IpNet::V6(n.network.trunc()),
            subnet: IpNet::V6(n.subnet.trunc()),
        }
    }
}

/// `FLANNEL_NETWORK`/`FLANNEL_SUBNET` (and the IPv6 pair) read from the subnet.env of the previous
/// run, before it is overwritten.
///
/// Upstream deletes the masquerade rules built from these values when they differ from the current
/// ones. Here the flannel chains and tables are rewritten as a whole, so rules built from old values
/// go away in any case; the previous values additionally tell which families flannel ran with
/// before, so the rules of a family that is no longer configured are removed too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreviousValues {
    /// The previous IPv4 network and subnet, if subnet.env had them.
    pub v4: Option<Networks<Ipv4Net>>,
    /// The previous IPv6 network and subnet, if subnet.env had them.
    pub v6: Option<Networks<Ipv6Net>>,
}

impl PreviousValues {
    pub(crate) fn family(&self, family: IpFamily) -> Option<FamilyNets> {
        match family {
            IpFamily::V4 => self.v4.map(Into::into),
            IpFamily::V6 => self.v6.map(Into::into),
        }
    }
}

/// Everything a rule manager converges to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    /// The IPv4 cluster network and lease, when IPv4 is enabled.
    pub v4: Option<Networks<Ipv4Net>>,
    /// The IPv6 cluster network and lease, when IPv6 is enabled.
    pub v6: Option<Networks<Ipv6Net>>,
    /// `--ip-masq`: install the masquerade rules.
    pub ip_masq: bool,
    /// `--iptables-forward-rules`: install the forward accept rules (also used in nftables mode).
    pub forward_rules: bool,
    /// `--ip-masq-fully-random-disable`: never use `--random-fully` / `fully-random`.
    pub random_fully_disabled: bool,
    /// What the previous run wrote to subnet.env.
    pub previous: PreviousValues,
}

impl RuleConfig {
    pub(crate) fn family(&self, family: IpFamily) -> Option<FamilyNets> {
        match family {
            IpFamily::V4 => self.v4.map(Into::into),
            IpFamily::V6 => self.v6.map(Into::into),
        }
    }

    /// Whether `part` should exist for `family` under this configuration.
    pub(crate) fn wants(&self, family: IpFamily, part: Part) -> Option<FamilyNets> {
        let nets = self.family(family)?;
        let on = match part {
            Part::Masquerade => self.ip_masq,
            Part::Forward => self.forward_rules,
        };
        on.then_some(nets)
    }

    /// Logs, like upstream, when the networks differ from the previous run's.
    pub(crate) fn log_recycling(&self, family: IpFamily) {
        let (Some(current), Some(previous)) = (self.family(family), self.previous.family(family))
        else {
            return;
        };
        if current != previous {
            tracing::info!(
                %family,
                network = %current.network,
                subnet = %current.subnet,
                previous_network = %previous.network,
                previous_subnet = %previous.subnet,
                "current network or subnet differs from the previous one: rules built from the old values are replaced"
            );
        }
    }
}

/// The two independent rule sets flannel manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The masquerade rules (`FLANNEL-POSTRTG` / chain `postrtg`), for `--ip-masq`.
    Masquerade,
    /// The forward accept rules (`FLANNEL-FWD` / chain `forward`), for `--iptables-forward-rules`.
    Forward,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Masquerade => "masquerade",
            Part::Forward => "forward",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_style_addresses_are_truncated() {
        let n = Networks::v4(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.1/24".parse().unwrap(),
        );
        assert_eq!(n.subnet.to_string(), "10.244.1.0/24");
        let n = Networks::v6(
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:1::1/64".parse().unwrap(),
        );
        assert_eq!(n.subnet.to_string(), "fd00:10:244:1::/64");
        // A struct literal with host bits is truncated on conversion as well.
        let raw = Networks {
            network: "10.244.0.0/16".parse::<Ipv4Net>().unwrap(),
            subnet: "10.244.1.1/24".parse::<Ipv4Net>().unwrap(),
        };
        assert_eq!(FamilyNets::from(raw).subnet.to_string(), "10.244.1.0/24");
    }

    #[test]
    fn wants_follows_flags_and_families() {
        let cfg = RuleConfig {
            v4: Some(Networks::v4(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
            )),
            v6: None,
            ip_masq: true,
            forward_rules: false,
            random_fully_disabled: false,
            previous: PreviousValues::default(),
        };
        assert!(cfg.wants(IpFamily::V4, Part::Masquerade).is_some());
        assert!(cfg.wants(IpFamily::V4, Part::Forward).is_none());
        assert!(cfg.wants(IpFamily::V6, Part::Masquerade).is_none());
    }
}
