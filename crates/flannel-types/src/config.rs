//! The network configuration: `net-conf.json` in Kubernetes mode, the `<prefix>/config` key in
//! etcd mode (upstream `pkg/subnet/config.go`).
//!
//! Parsing accepts exactly what upstream's `json.Unmarshal` into `subnet.Config` accepts (see
//! [`crate::gojson`]), and [`NetConfig::check`] applies upstream's `CheckNetworkConfig` with its
//! exact error texts, because operators and scripts match on them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::family::{IpFamily, IpStack, NoStackError};
use crate::family_net::FamilyNet;
use crate::goip::{self, GoIp6};
use crate::gojson::{GoJsonError, GoObject, RawJson};

/// The backend upstream picks when the config has no `Backend` key at all.
///
/// Upstream's documentation says vxlan, but `parseBackendType` returns `udp`; flannel-rs does
/// what the code does so that existing configs keep their data path.
pub const DEFAULT_BACKEND_TYPE: &str = "udp";

/// Why net-conf.json (or the etcd config value) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, not an object, or a key with a value of the wrong type.
    #[error("net-conf: {0}")]
    Json(#[from] GoJsonError),
    /// `Network` is not an IPv4 CIDR (upstream: `invalid IPv4 CIDR format`).
    #[error("net-conf: \"{key}\": invalid IPv4 CIDR format: {got}")]
    InvalidNetwork {
        /// The key as written.
        key: String,
        /// The offending JSON text.
        got: String,
    },
    /// `IPv6Network` is not an IPv6 CIDR.
    #[error("net-conf: \"{key}\": invalid IPv6 CIDR format: {got}")]
    InvalidIpv6Network {
        /// The key as written.
        key: String,
        /// The offending JSON text.
        got: String,
    },
}

/// A violation of upstream's `CheckNetworkConfig` rules (etcd mode only).
///
/// `Display` is upstream's message, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// IPv4 is enabled but `Network` is missing or `0.0.0.0/0`.
    #[error("please define a correct Network parameter in the flannel config")]
    MissingNetwork,
    /// `SubnetLen` is larger than 30.
    #[error("SubnetLen must be less than /31")]
    SubnetLenTooLong,
    /// `SubnetLen` is less than the Network prefix + 2.
    #[error("network must be able to accommodate at least four subnets")]
    TooFewSubnets,
    /// No `SubnetLen` and a Network prefix longer than /28.
    #[error("network is too small. Minimum useful network prefix is /28")]
    NetworkTooSmall,
    /// `SubnetMin` lies outside `Network`.
    #[error("SubnetMin is not in the range of the Network")]
    SubnetMinOutOfRange,
    /// `SubnetMax` lies outside `Network`.
    #[error("SubnetMax is not in the range of the Network")]
    SubnetMaxOutOfRange,
    /// `SubnetMin` is not a multiple of the subnet size.
    #[error("SubnetMin is not on a SubnetLen boundary: {0}")]
    SubnetMinUnaligned(Ipv4Addr),
    /// `SubnetMax` is not a multiple of the subnet size.
    #[error("SubnetMax is not on a SubnetLen boundary: {0}")]
    SubnetMaxUnaligned(Ipv4Addr),
    /// IPv6 is enabled but `IPv6Network` is missing or `::/0`.
    #[error("please define a correct IPv6Network parameter in the flannel config")]
    MissingIpv6Network,
    /// `IPv6SubnetLen` is larger than 126 (upstream's text says "SubnetLen").
    #[error("SubnetLen must be less than /127")]
    Ipv6SubnetLenTooLong,
    /// `IPv6SubnetLen` is less than the IPv6Network prefix + 2.
    #[error("network must be able to accommodate at least four subnets")]
    Ipv6TooFewSubnets,
    /// No `IPv6SubnetLen` and an IPv6Network prefix longer than /124.
    #[error("IPv6Network is too small. Minimum useful network prefix is /124")]
    Ipv6NetworkTooSmall,
    /// `IPv6SubnetMin` lies outside `IPv6Network`.
    #[error("IPv6SubnetMin is not in the range of the IPv6Network")]
    Ipv6SubnetMinOutOfRange,
    /// `IPv6SubnetMax` lies outside `IPv6Network`.
    #[error("IPv6SubnetMax is not in the range of the IPv6Network")]
    Ipv6SubnetMaxOutOfRange,
    /// `IPv6SubnetMin` is not a multiple of the subnet size (address printed as upstream does).
    #[error("IPv6SubnetMin is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMinUnaligned(GoIp6),
    /// `IPv6SubnetMax` is not a multiple of the subnet size.
    #[error("IPv6SubnetMax is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMaxUnaligned(GoIp6),
}

/// Upstream's `subnet.Config`: the cluster-wide network settings.
///
/// Field semantics follow upstream, including its "zero means unset" conventions, so a config
/// round-trips through the same decisions:
/// * `subnet_len == 0` means "compute it" (see [`NetConfig::check`]);
/// * a `subnet_min`/`subnet_max` of `0.0.0.0` (or `::` for IPv6) counts as unset, like Go's zero
///   value;
/// * `network` of `0.0.0.0/0` counts as missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// `EnableIPv4`; **true** unless the config says otherwise (upstream sets it before decoding).
    pub enable_ipv4: bool,
    /// `EnableIPv6`.
    pub enable_ipv6: bool,
    /// `EnableNFTables`: use nftables instead of iptables for masquerade and forward rules.
    pub enable_nftables: bool,
    /// `Network`: the cluster's IPv4 range, stored as the network address (host bits cleared).
    pub network: Option<Ipv4Net>,
    /// `IPv6Network`: the cluster's IPv6 range, stored as the network address.
    pub ipv6_network: Option<Ipv6Net>,
    /// `SubnetLen`: prefix length of each node's IPv4 subnet; 0 means "compute".
    ///
    /// Go's field is a 64-bit `uint`; values above 255 are stored as 255, which every check
    /// rejects with the same message upstream gives for the original value.
    pub subnet_len: u8,
    /// `IPv6SubnetLen`: prefix length of each node's IPv6 subnet; 0 means "compute". Saturates
    /// at 255 like `subnet_len`.
    pub ipv6_subnet_len: u8,
    /// `SubnetMin`: lowest subnet the etcd allocator may hand out.
    pub subnet_min: Option<Ipv4Addr>,
    /// `SubnetMax`: highest subnet the etcd allocator may hand out.
    pub subnet_max: Option<Ipv4Addr>,
    /// `IPv6SubnetMin`.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// `Backend.Type`, lower-cased; [`DEFAULT_BACKEND_TYPE`] when there is no `Backend` key, and
    /// empty when `Backend` is `{}`, `null` or has no `Type` (upstream then fails with
    /// `unknown backend type: `).
    pub backend_type: String,
    /// The raw `Backend` value, handed to the backend as its own config. `None` when the key is
    /// absent; read it with [`NetConfig::backend_object`] to get Go's lenient key matching.
    pub backend: Option<RawJson>,
}

impl Default for NetConfig {
    /// The config upstream produces for `{}`: IPv4 on, everything else unset, backend `udp`.
    fn default() -> Self {
        NetConfig {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: None,
            ipv6_network: None,
            subnet_len: 0,
            ipv6_subnet_len: 0,
            subnet_min: None,
            subnet_max: None,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            backend_type: DEFAULT_BACKEND_TYPE.to_string(),
            backend: None,
        }
    }
}

fn saturate_u8(v: u64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

impl NetConfig {
    /// Parses net-conf.json text as upstream's `subnet.ParseConfig` does.
    ///
    /// Keys match case-insensitively, unknown keys are ignored, `null` leaves a field at its
    /// default, the last duplicate wins, and a value of the wrong JSON type is an error naming
    /// the key. A top-level `null` yields the defaults, as in Go.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut cfg = NetConfig::default();
        let Some(obj) = GoObject::parse(text)? else {
            return Ok(cfg);
        };

        if let Some(v) = obj.bool("EnableIPv4")? {
            cfg.enable_ipv4 = v;
        }
        if let Some(v) = obj.bool("EnableIPv6")? {
            cfg.enable_ipv6 = v;
        }
        if let Some(v) = obj.bool("EnableNFTables")? {
            cfg.enable_nftables = v;
        }
        cfg.network = parse_network(&obj, "Network", |key, got| ConfigError::InvalidNetwork {
            key,
            got,
        })?;
        cfg.ipv6_network = parse_network(&obj, "IPv6Network", |key, got| {
            ConfigError::InvalidIpv6Network { key, got }
        })?;
        if let Some(v) = obj.uint("SubnetLen")? {
            cfg.subnet_len = saturate_u8(v);
        }
        if let Some(v) = obj.uint("IPv6SubnetLen")? {
            cfg.ipv6_subnet_len = saturate_u8(v);
        }
        cfg.subnet_min = obj.string_with("SubnetMin", "an IPv4 address", goip::parse_ip4)?;
        cfg.subnet_max = obj.string_with("SubnetMax", "an IPv4 address", goip::parse_ip4)?;
        cfg.ipv6_subnet_min =
            obj.string_with("IPv6SubnetMin", "an IPv6 address", goip::parse_ip6)?;
        cfg.ipv6_subnet_max =
            obj.string_with("IPv6SubnetMax", "an IPv6 address", goip::parse_ip6)?;

        // Backend is a json.RawMessage upstream: the last entry wins even if it is `null`, and
        // only a missing key selects the default backend.
        if let Some(raw) = obj.raw("Backend") {
            let backend = RawJson::from_raw(raw);
            cfg.backend_type = match backend.object("Backend")? {
                Some(b) => b.string("Type")?.unwrap_or_default().to_lowercase(),
                None => String::new(),
            };
            cfg.backend = Some(backend);
        }
        Ok(cfg)
    }

    /// Like [`NetConfig::parse`] for bytes (an etcd value). Invalid UTF-8 is replaced by
    /// U+FFFD, as Go does inside strings.
    pub fn parse_slice(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::parse(&String::from_utf8_lossy(bytes))
    }

    /// The `Backend` object read with Go's rules, for a backend to pull its settings from
    /// (`VNI`, `Port`, `DirectRouting`, ...). `None` when `Backend` is absent or `null`.
    pub fn backend_object(&self) -> Result<Option<GoObject>, GoJsonError> {
        match &self.backend {
            Some(b) => b.object("Backend"),
            None => Ok(None),
        }
    }

    /// The address families to run, from `EnableIPv4` / `EnableIPv6`.
    pub fn ip_stack(&self) -> Result<IpStack, NoStackError> {
        IpStack::from_flags(self.enable_ipv4, self.enable_ipv6)
    }

    /// Upstream's `CheckNetworkConfig`: validates the config for the etcd subnet manager and
    /// fills in the computed `SubnetLen`, `SubnetMin` and `SubnetMax` (IPv4 and IPv6).
    ///
    /// Kubernetes mode does not call this upstream (subnets come from the node's podCIDR), and
    /// neither should flannel-rs, or configs that work upstream would be rejected.
    pub fn check(&mut self) -> Result<(), CheckError> {
        self.check_family::<Ipv4Net>()?;
        self.check_family::<Ipv6Net>()
    }

    /// [`NetConfig::check`] for one family, when it is enabled.
    fn check_family<N: FamilyNet>(&mut self) -> Result<(), CheckError> {
        let mut family = self.family::<N>();
        if !family.enabled {
            return Ok(());
        }
        let checked = family.check();
        // Stored even on failure: upstream fills fields in as it goes.
        self.store_family(&family);
        checked.map_err(|v| CheckError::of(N::FAMILY, v))
    }

    /// One family's share of the config (`Network`, `SubnetLen`, ... or their `IPv6` twins),
    /// for code that applies the same rule to each family.
    pub fn family<N: FamilyNet>(&self) -> FamilyConfig<N> {
        FamilyConfig {
            enabled: N::FAMILY.pick(self.enable_ipv4, self.enable_ipv6),
            network: N::select(self.network, self.ipv6_network),
            subnet_len: N::FAMILY.pick(self.subnet_len, self.ipv6_subnet_len),
            subnet_min: N::select_addr(self.subnet_min, self.ipv6_subnet_min),
            subnet_max: N::select_addr(self.subnet_max, self.ipv6_subnet_max),
        }
    }

    /// Writes back what [`FamilyConfig::check`] computes: the subnet length and range.
    fn store_family<N: FamilyNet>(&mut self, family: &FamilyConfig<N>) {
        *N::FAMILY.pick(&mut self.subnet_len, &mut self.ipv6_subnet_len) = family.subnet_len;
        *N::select_addr_mut(&mut self.subnet_min, &mut self.ipv6_subnet_min) = family.subnet_min;
        *N::select_addr_mut(&mut self.subnet_max, &mut self.ipv6_subnet_max) = family.subnet_max;
    }
}

/// One address family's settings in [`NetConfig`]: `EnableIPv4`, `Network`, `SubnetLen`,
/// `SubnetMin`, `SubnetMax` for [`Ipv4Net`], the `IPv6` keys for [`Ipv6Net`].
///
/// Upstream states every rule on these twice, once per family; flannel-rs states it once on
/// this view (see [`NetConfig::family`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyConfig<N: FamilyNet> {
    /// Whether the family is enabled.
    pub enabled: bool,
    /// The cluster network of the family.
    pub network: Option<N>,
    /// Prefix length of each node's subnet; 0 means "compute".
    pub subnet_len: u8,
    /// Lowest subnet the etcd allocator may hand out.
    pub subnet_min: Option<N::Addr>,
    /// Highest subnet the etcd allocator may hand out.
    pub subnet_max: Option<N::Addr>,
}

/// A broken `CheckNetworkConfig` rule, before it is named for its family (see
/// [`CheckError::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Violation {
    Missing,
    SubnetLenTooLong,
    TooFewSubnets,
    NetworkTooSmall,
    MinOutOfRange,
    MaxOutOfRange,
    MinUnaligned(IpAddr),
    MaxUnaligned(IpAddr),
}

impl CheckError {
    /// The error upstream reports for `violation` in `family`'s keys.
    fn of(family: IpFamily, violation: Violation) -> CheckError {
        use CheckError as E;
        use Violation as V;
        match (family, violation) {
            (IpFamily::V4, V::Missing) => E::MissingNetwork,
            (IpFamily::V4, V::SubnetLenTooLong) => E::SubnetLenTooLong,
            (IpFamily::V4, V::TooFewSubnets) => E::TooFewSubnets,
            (IpFamily::V4, V::NetworkTooSmall) => E::NetworkTooSmall,
            (IpFamily::V4, V::MinOutOfRange) => E::SubnetMinOutOfRange,
            (IpFamily::V4, V::MaxOutOfRange) => E::SubnetMaxOutOfRange,
            (IpFamily::V6, V::Missing) => E::MissingIpv6Network,
            (IpFamily::V6, V::SubnetLenTooLong) => E::Ipv6SubnetLenTooLong,
            (IpFamily::V6, V::TooFewSubnets) => E::Ipv6TooFewSubnets,
            (IpFamily::V6, V::NetworkTooSmall) => E::Ipv6NetworkTooSmall,
            (IpFamily::V6, V::MinOutOfRange) => E::Ipv6SubnetMinOutOfRange,
            (IpFamily::V6, V::MaxOutOfRange) => E::Ipv6SubnetMaxOutOfRange,
            (_, V::MinUnaligned(IpAddr::V4(a))) => E::SubnetMinUnaligned(a),
            (_, V::MaxUnaligned(IpAddr::V4(a))) => E::SubnetMaxUnaligned(a),
            (_, V::MinUnaligned(IpAddr::V6(a))) => E::Ipv6SubnetMinUnaligned(GoIp6(a)),
            (_, V::MaxUnaligned(IpAddr::V6(a))) => E::Ipv6SubnetMaxUnaligned(GoIp6(a)),
        }
    }
}

/// The subnet length upstream picks for a large network: /24 for IPv4, /64 for IPv6.
fn default_subnet_len(family: IpFamily) -> u8 {
    family.pick(24, 64)
}

impl<N: FamilyNet> FamilyConfig<N> {
    /// Upstream's `CheckNetworkConfig` rules for one family, in upstream's order; fills in the
    /// subnet length and range when they are unset.
    fn check(&mut self) -> Result<(), Violation> {
        let network = match self.network {
            Some(n) if !n.is_go_zero() => n,
            _ => return Err(Violation::Missing),
        };
        let width = N::width();
        let prefix = network.prefix_len();
        let default_len = default_subnet_len(N::FAMILY);
        if self.subnet_len > 0 {
            // Each host needs room for at least a tunnel and a bridge address.
            if u32::from(self.subnet_len) > width - 2 {
                return Err(Violation::SubnetLenTooLong);
            }
            // The first subnet is never handed out, so at least four are needed.
            if u16::from(self.subnet_len) < u16::from(prefix) + 2 {
                return Err(Violation::TooFewSubnets);
            }
        } else if u32::from(prefix) > width - 4 {
            return Err(Violation::NetworkTooSmall);
        } else if prefix <= default_len - 2 {
            self.subnet_len = default_len;
        } else {
            self.subnet_len = prefix + 2;
        }

        let net_ip = N::addr_bits(network.addr());
        let net_mask = N::mask_bits(prefix);
        let contains = |ip: N::Addr| (net_ip & net_mask) == (N::addr_bits(ip) & net_mask);
        let subnet_size = N::one_shl(width - u32::from(self.subnet_len));

        let min = match self.subnet_min.filter(|a| *a != N::UNSPECIFIED) {
            // Skip the first subnet: its address would clash with the network address.
            None => N::addr_from_bits(N::wrapping_add(net_ip, subnet_size)),
            Some(a) if !contains(a) => return Err(Violation::MinOutOfRange),
            Some(a) => a,
        };
        self.subnet_min = Some(min);

        let max = match self.subnet_max.filter(|a| *a != N::UNSPECIFIED) {
            None => {
                // Go computes the IPv6 case with big.Int; modulo 2^128 gives the same address.
                let next = N::wrapping_add(net_ip, N::one_shl(width - u32::from(prefix)));
                N::addr_from_bits(N::wrapping_sub(next, subnet_size))
            }
            Some(a) if !contains(a) => return Err(Violation::MaxOutOfRange),
            Some(a) => a,
        };
        self.subnet_max = Some(max);

        let mask = N::mask_bits(self.subnet_len);
        if N::addr_bits(min) & mask != N::addr_bits(min) {
            return Err(Violation::MinUnaligned(min.into()));
        }
        if N::addr_bits(max) & mask != N::addr_bits(max) {
            return Err(Violation::MaxUnaligned(max.into()));
        }
        Ok(())
    }
}

/// Decodes every `Network` (IPv4) or `IPv6Network` entry like upstream's
/// `ip.IP4Net.UnmarshalJSON`: a CIDR written in the family's form, stored as its network
/// address; anything else is `invalid(key, got)`.
///
/// Upstream would also take IPv4 text for `IPv6Network` and turn it into a nonsensical
/// IPv4-mapped network with the IPv4 prefix length; flannel-rs rejects it.
fn parse_network<N: FamilyNet>(
    obj: &GoObject,
    field: &str,
    invalid: fn(String, String) -> ConfigError,
) -> Result<Option<N>, ConfigError> {
    let mut out = None;
    for (key, raw) in obj.matching(field) {
        if raw.get() == "null" {
            continue;
        }
        let parsed = serde_json::from_str::<String>(raw.get())
            .ok()
            .and_then(|s| goip::parse_cidr(&s))
            .and_then(|c| N::from_ip_net(c.network()));
        match parsed {
            Some(n) => out = Some(n),
            None => return Err(invalid(key.to_string(), crate::gojson::shorten(raw.get()))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> NetConfig {
        NetConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn parse_err(text: &str) -> String {
        NetConfig::parse(text).unwrap_err().to_string()
    }

    fn check_err(text: &str) -> String {
        parse(text).check().unwrap_err().to_string()
    }

    fn checked(text: &str) -> NetConfig {
        let mut c = parse(text);
        c.check().unwrap_or_else(|e| panic!("{text}: {e}"));
        c
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    // ---- parsing: leniency -------------------------------------------------------------

    #[test]
    fn kube_flannel_configmap() {
        let c = parse(
            r#"{
  "Network": "10.244.0.0/16",
  "EnableNFTables": false,
  "Backend": {
    "Type": "vxlan"
  }
}"#,
        );
        assert!(c.enable_ipv4);
        assert!(!c.enable_ipv6);
        assert!(!c.enable_nftables);
        assert_eq!(c.network, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(c.backend_type, "vxlan");
        assert_eq!(c.backend.as_ref().unwrap().as_str(), r#"{"Type":"vxlan"}"#);
        assert_eq!(c.ip_stack(), Ok(IpStack::V4));
    }

    #[test]
    fn documented_example() {
        let mut c = parse(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}"#,
        );
        assert_eq!(c.network, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.subnet_min, Some(v4("10.10.0.0")));
        assert_eq!(c.subnet_max, Some(v4("10.99.0.0")));
        assert_eq!(c.backend_type, "udp");
        let backend = c.backend_object().unwrap().unwrap();
        assert_eq!(backend.uint("port").unwrap(), Some(7890));
        c.check().unwrap();
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.subnet_min, Some(v4("10.10.0.0")));
        assert_eq!(c.subnet_max, Some(v4("10.99.0.0")));
    }

    #[test]
    fn keys_are_case_insensitive() {
        let c = parse(
            r#"{"network":"10.1.0.0/16","SUBNETLEN":26,"enableipv6":true,"ipv6network":"fc00::/48",
                "ipv6subnetlen":80,"subnetmin":"10.1.0.64","SubnetMAX":"10.1.255.192",
                "ipv6SubnetMin":"fc00:0:0:1::","IPV6SUBNETMAX":"fc00:0:0:ff00::","enablenftables":true,
                "enableIPV4":false,"backend":{"type":"Host-GW"}}"#,
        );
        assert!(!c.enable_ipv4);
        assert!(c.enable_ipv6);
        assert!(c.enable_nftables);
        assert_eq!(c.network, Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(c.ipv6_network, Some("fc00::/48".parse().unwrap()));
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.ipv6_subnet_len, 80);
        assert_eq!(c.subnet_min, Some(v4("10.1.0.64")));
        assert_eq!(c.subnet_max, Some(v4("10.1.255.192")));
        assert_eq!(c.ipv6_subnet_min, Some(v6("fc00:0:0:1::")));
        assert_eq!(c.ipv6_subnet_max, Some(v6("fc00:0:0:ff00::")));
        assert_eq!(c.backend_type, "host-gw");
        assert_eq!(c.ip_stack(), Ok(IpStack::V6));
    }

    #[test]
    fn keys_fold_unicode_like_go() {
        // Go folds U+017F (long s) to S and U+212A (Kelvin sign) to K when matching keys.
        let c = parse("{\"\u{017f}ubnetLen\":20,\"Bac\u{212a}end\":{\"Type\":\"vxlan\"}}");
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.backend_type, "vxlan");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let c = parse(
            r#"{"Network":"10.0.0.0/8","Foo":[1,{"x":null}],"Networks":["bad"],"BackendType":"vxlan","Comment":"hi"}"#,
        );
        assert_eq!(c.network, Some("10.0.0.0/8".parse().unwrap()));
        // BackendType is `json:"-"` upstream: it cannot be set from JSON.
        assert_eq!(c.backend_type, "udp");
    }

    #[test]
    fn null_leaves_defaults() {
        let c = parse(
            r#"{"EnableIPv4":null,"EnableIPv6":null,"EnableNFTables":null,"Network":null,"IPv6Network":null,
                "SubnetLen":null,"IPv6SubnetLen":null,"SubnetMin":null,"SubnetMax":null,
                "IPv6SubnetMin":null,"IPv6SubnetMax":null}"#,
        );
        assert_eq!(c, NetConfig::default());
        // A later null does not erase an earlier value.
        let c = parse(r#"{"SubnetLen":20,"subnetlen":null,"Network":"10.0.0.0/8","network":null}"#);
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.network, Some("10.0.0.0/8".parse().unwrap()));
        // Top-level null is accepted by Go and gives the defaults.
        assert_eq!(parse("null"), NetConfig::default());
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let c = parse(
            r#"{"SubnetLen":20,"subnetlen":22,"Network":"10.0.0.0/8","NETWORK":"192.168.0.0/16",
                "Backend":{"Type":"udp"},"backend":{"type":"vxlan","Type":"ipip"}}"#,
        );
        assert_eq!(c.subnet_len, 22);
        assert_eq!(c.network, Some("192.168.0.0/16".parse().unwrap()));
        assert_eq!(c.backend_type, "ipip");
    }

    #[test]
    fn enable_ipv4_defaults_to_true() {
        assert!(parse("{}").enable_ipv4);
        assert!(parse(r#"{"EnableIPv6":true}"#).enable_ipv4);
        assert!(!parse(r#"{"EnableIPv4":false}"#).enable_ipv4);
        assert_eq!(
            parse(r#"{"EnableIPv6":true}"#).ip_stack(),
            Ok(IpStack::Dual)
        );
    }

    #[test]
    fn missing_backend_is_udp() {
        let c = parse(r#"{"Network":"10.0.0.0/8"}"#);
        assert_eq!(c.backend_type, "udp");
        assert_eq!(c.backend, None);
        assert!(c.backend_object().unwrap().is_none());
    }

    #[test]
    fn backend_type_is_lower_cased() {
        assert_eq!(
            parse(r#"{"Backend":{"Type":"VXLAN"}}"#).backend_type,
            "vxlan"
        );
        assert_eq!(
            parse(r#"{"Backend":{"TYPE":"Host-Gw"}}"#).backend_type,
            "host-gw"
        );
    }

    #[test]
    fn empty_or_null_backend_has_empty_type_like_upstream() {
        // Upstream only defaults to udp when the key is absent: `{}` and `null` give an empty
        // type, which the backend manager then rejects as unknown.
        let c = parse(r#"{"Backend":{}}"#);
        assert_eq!(c.backend_type, "");
        assert_eq!(c.backend.unwrap().as_str(), "{}");
        let c = parse(r#"{"Backend":null}"#);
        assert_eq!(c.backend_type, "");
        assert!(c.backend.unwrap().is_null());
        let c = parse(r#"{"Backend":{"Type":null}}"#);
        assert_eq!(c.backend_type, "");
        // RawMessage semantics: a later null replaces an earlier object.
        let c = parse(r#"{"Backend":{"Type":"vxlan"},"backend":null}"#);
        assert_eq!(c.backend_type, "");
    }

    #[test]
    fn backend_keeps_its_settings_raw() {
        let c = parse(
            r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"GBP":true,"DirectRouting":true}}"#,
        );
        assert_eq!(
            c.backend.as_ref().unwrap().as_str(),
            r#"{"Type":"vxlan","VNI":4096,"Port":4789,"GBP":true,"DirectRouting":true}"#
        );
        let b = c.backend_object().unwrap().unwrap();
        assert_eq!(b.uint("vni").unwrap(), Some(4096));
        assert_eq!(b.bool("directrouting").unwrap(), Some(true));
        assert_eq!(
            c.backend.unwrap().to_value()["VNI"],
            serde_json::json!(4096)
        );
    }

    #[test]
    fn network_stored_as_network_address() {
        let c = parse(r#"{"Network":"10.244.3.7/16","IPv6Network":"fc00::1:2/48"}"#);
        assert_eq!(c.network.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(c.ipv6_network.unwrap().to_string(), "fc00::/48");
    }

    #[test]
    fn large_subnet_len_parses_and_fails_the_check() {
        let mut c = parse(r#"{"Network":"10.0.0.0/8","SubnetLen":300}"#);
        assert_eq!(c.subnet_len, 255);
        assert_eq!(
            c.check().unwrap_err().to_string(),
            "SubnetLen must be less than /31"
        );
        let mut c = parse(r#"{"Network":"10.0.0.0/8","SubnetLen":18446744073709551615}"#);
        assert_eq!(c.check().unwrap_err(), CheckError::SubnetLenTooLong);
        let mut c = parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":4000}"#,
        );
        assert_eq!(
            c.check().unwrap_err().to_string(),
            "SubnetLen must be less than /127"
        );
    }

    // ---- parsing: errors ---------------------------------------------------------------

    #[test]
    fn wrong_types_name_the_key() {
        for (text, want) in [
            (
                r#"{"SubnetLen":"24"}"#,
                r#"net-conf: "SubnetLen": expected an unsigned integer, got "24""#,
            ),
            (
                r#"{"subnetlen":24.0}"#,
                r#"net-conf: "subnetlen": expected an unsigned integer, got 24.0"#,
            ),
            (
                r#"{"SubnetLen":-1}"#,
                r#"net-conf: "SubnetLen": expected an unsigned integer, got -1"#,
            ),
            (
                r#"{"SubnetLen":1e1}"#,
                r#"net-conf: "SubnetLen": expected an unsigned integer, got 1e1"#,
            ),
            (
                r#"{"SubnetLen":18446744073709551616}"#,
                r#"net-conf: "SubnetLen": expected an unsigned integer, got 18446744073709551616"#,
            ),
            (
                r#"{"IPv6SubnetLen":true}"#,
                r#"net-conf: "IPv6SubnetLen": expected an unsigned integer, got true"#,
            ),
            (
                r#"{"EnableIPv6":"true"}"#,
                r#"net-conf: "EnableIPv6": expected a boolean, got "true""#,
            ),
            (
                r#"{"EnableIPv4":1}"#,
                r#"net-conf: "EnableIPv4": expected a boolean, got 1"#,
            ),
            (
                r#"{"EnableNFTables":"yes"}"#,
                r#"net-conf: "EnableNFTables": expected a boolean, got "yes""#,
            ),
            (
                r#"{"SubnetMin":"10.0.0"}"#,
                r#"net-conf: "SubnetMin": expected an IPv4 address, got "10.0.0""#,
            ),
            (
                r#"{"SubnetMax":"fc00::"}"#,
                r#"net-conf: "SubnetMax": expected an IPv4 address, got "fc00::""#,
            ),
            (
                r#"{"IPv6SubnetMin":7}"#,
                r#"net-conf: "IPv6SubnetMin": expected an IPv6 address, got 7"#,
            ),
            (
                r#"{"IPv6SubnetMax":""}"#,
                r#"net-conf: "IPv6SubnetMax": expected an IPv6 address, got """#,
            ),
        ] {
            assert_eq!(parse_err(text), want, "{text}");
        }
    }

    #[test]
    fn network_errors() {
        assert_eq!(
            parse_err(r#"{"Network":"fc00::/48"}"#),
            r#"net-conf: "Network": invalid IPv4 CIDR format: "fc00::/48""#
        );
        assert!(parse_err(r#"{"network":"10.0.0.0"}"#).contains("invalid IPv4 CIDR format"));
        assert!(parse_err(r#"{"Network":"10.0.0.0/33"}"#).contains("invalid IPv4 CIDR format"));
        assert!(parse_err(r#"{"Network":10}"#).contains("invalid IPv4 CIDR format"));
        assert!(parse_err(r#"{"Network":""}"#).contains("invalid IPv4 CIDR format"));
        assert!(
            parse_err(r#"{"Network":"::ffff:10.0.0.0/104"}"#).contains("invalid IPv4 CIDR format")
        );
        assert_eq!(
            parse_err(r#"{"IPv6Network":"10.0.0.0/8"}"#),
            r#"net-conf: "IPv6Network": invalid IPv6 CIDR format: "10.0.0.0/8""#
        );
        assert!(parse_err(r#"{"IPv6Network":"fc00::/129"}"#).contains("invalid IPv6 CIDR format"));
    }

    #[test]
    fn backend_errors_mirror_go() {
        // Go decodes Backend into `struct{ Type string }`: anything but an object or null fails.
        for (text, want) in [
            (
                r#"{"Backend":"vxlan"}"#,
                r#"net-conf: "Backend": expected an object, got "vxlan""#,
            ),
            (
                r#"{"Backend":["vxlan"]}"#,
                r#"net-conf: "Backend": expected an object, got ["vxlan"]"#,
            ),
            (
                r#"{"Backend":{"Type":7}}"#,
                r#"net-conf: "Backend.Type": expected a string, got 7"#,
            ),
        ] {
            assert_eq!(parse_err(text), want, "{text}");
        }
    }

    #[test]
    fn document_errors() {
        assert!(parse_err("").starts_with("net-conf: invalid JSON: "));
        assert!(parse_err("{\"Network\":").starts_with("net-conf: invalid JSON: "));
        assert!(parse_err("{} {}").starts_with("net-conf: invalid JSON: "));
        assert_eq!(
            parse_err("[]"),
            "net-conf: expected a JSON object, got array"
        );
        assert_eq!(
            parse_err("42"),
            "net-conf: expected a JSON object, got number"
        );
    }

    #[test]
    fn parse_slice_tolerates_invalid_utf8_in_strings() {
        let mut bytes = br#"{"Network":"10.0.0.0/8","Comment":"x"#.to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(br#""}"#);
        let c = NetConfig::parse_slice(&bytes).unwrap();
        assert_eq!(c.network, Some("10.0.0.0/8".parse().unwrap()));
    }

    // ---- stack -------------------------------------------------------------------------

    #[test]
    fn ip_stack_from_flags() {
        assert_eq!(IpStack::from_flags(true, false), Ok(IpStack::V4));
        assert_eq!(IpStack::from_flags(false, true), Ok(IpStack::V6));
        assert_eq!(IpStack::from_flags(true, true), Ok(IpStack::Dual));
        assert_eq!(
            IpStack::from_flags(false, false).unwrap_err().to_string(),
            "none defined stack"
        );
        assert!(IpStack::Dual.has_ipv4() && IpStack::Dual.has_ipv6());
        assert!(IpStack::V4.has_ipv4() && !IpStack::V4.has_ipv6());
        assert!(!IpStack::V6.has_ipv4() && IpStack::V6.has_ipv6());
        assert_eq!(
            parse(r#"{"EnableIPv4":false}"#).ip_stack(),
            Err(NoStackError)
        );
    }

    // ---- CheckNetworkConfig, IPv4 ------------------------------------------------------

    #[test]
    fn check_missing_network() {
        assert_eq!(
            check_err("{}"),
            "please define a correct Network parameter in the flannel config"
        );
        assert_eq!(
            check_err(r#"{"Network":"0.0.0.0/0"}"#),
            "please define a correct Network parameter in the flannel config"
        );
        // Host bits are cleared at parse time, so this is 0.0.0.0/0 as well.
        assert_eq!(
            check_err(r#"{"Network":"1.2.3.4/0"}"#),
            CheckError::MissingNetwork.to_string()
        );
        // IPv4 disabled: no Network needed for the IPv4 part.
        checked(r#"{"EnableIPv4":false}"#);
    }

    #[test]
    fn check_subnet_len_longer_than_30() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetLen":31}"#),
            "SubnetLen must be less than /31"
        );
        checked(r#"{"Network":"10.0.0.0/8","SubnetLen":30}"#);
    }

    #[test]
    fn check_at_least_four_subnets() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#),
            "network must be able to accommodate at least four subnets"
        );
        let c = checked(r#"{"Network":"10.0.0.0/16","SubnetLen":18}"#);
        assert_eq!(c.subnet_min, Some(v4("10.0.64.0")));
        assert_eq!(c.subnet_max, Some(v4("10.0.192.0")));
        // A SubnetLen shorter than the network prefix also fails this rule.
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/16","SubnetLen":8}"#),
            "network must be able to accommodate at least four subnets"
        );
    }

    #[test]
    fn check_network_smaller_than_28() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/29"}"#),
            "network is too small. Minimum useful network prefix is /28"
        );
        let c = checked(r#"{"Network":"10.0.0.0/28"}"#);
        assert_eq!(c.subnet_len, 30);
        assert_eq!(c.subnet_min, Some(v4("10.0.0.4")));
        assert_eq!(c.subnet_max, Some(v4("10.0.0.12")));
        // With an explicit SubnetLen the /28 minimum does not apply, the four-subnet rule does.
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/29","SubnetLen":30}"#),
            "network must be able to accommodate at least four subnets"
        );
    }

    #[test]
    fn check_default_subnet_len() {
        for (network, len) in [
            ("10.0.0.0/8", 24),
            ("10.244.0.0/16", 24),
            ("10.0.0.0/22", 24),
            ("10.0.0.0/23", 25),
            ("10.0.0.0/24", 26),
            ("10.0.0.0/26", 28),
            ("10.0.0.0/28", 30),
            ("128.0.0.0/1", 24),
        ] {
            let c = checked(&format!(r#"{{"Network":"{network}"}}"#));
            assert_eq!(c.subnet_len, len, "{network}");
        }
    }

    #[test]
    fn check_default_min_and_max() {
        let c = checked(r#"{"Network":"10.244.0.0/16"}"#);
        assert_eq!(c.subnet_min, Some(v4("10.244.1.0")));
        assert_eq!(c.subnet_max, Some(v4("10.244.255.0")));
        // The top of the address space: Next() wraps to 0 and the result is still right.
        let c = checked(r#"{"Network":"128.0.0.0/1"}"#);
        assert_eq!(c.subnet_min, Some(v4("128.0.1.0")));
        assert_eq!(c.subnet_max, Some(v4("255.255.255.0")));
        // 0.0.0.0 counts as unset, like Go's zero value.
        let c = checked(r#"{"Network":"10.0.0.0/8","SubnetMin":"0.0.0.0","SubnetMax":"0.0.0.0"}"#);
        assert_eq!(c.subnet_min, Some(v4("10.0.1.0")));
        assert_eq!(c.subnet_max, Some(v4("10.255.255.0")));
    }

    #[test]
    fn check_subnet_min_range() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetMin":"11.0.0.0"}"#),
            "SubnetMin is not in the range of the Network"
        );
    }

    #[test]
    fn check_subnet_max_range() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetMax":"9.255.255.0"}"#),
            "SubnetMax is not in the range of the Network"
        );
    }

    #[test]
    fn check_subnet_min_boundary() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetMin":"10.0.1.1"}"#),
            "SubnetMin is not on a SubnetLen boundary: 10.0.1.1"
        );
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.1.0"}"#),
            "SubnetMin is not on a SubnetLen boundary: 10.10.1.0"
        );
    }

    #[test]
    fn check_subnet_max_boundary() {
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetMax":"10.0.200.128"}"#),
            "SubnetMax is not on a SubnetLen boundary: 10.0.200.128"
        );
    }

    #[test]
    fn check_order_min_range_before_max_range_before_boundaries() {
        // Upstream checks Min range, Max range, then Min boundary, then Max boundary.
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetMin":"10.0.0.1","SubnetMax":"11.0.0.0"}"#),
            "SubnetMax is not in the range of the Network"
        );
        assert_eq!(
            check_err(r#"{"Network":"10.0.0.0/8","SubnetMin":"10.0.0.1","SubnetMax":"10.0.0.1"}"#),
            "SubnetMin is not on a SubnetLen boundary: 10.0.0.1"
        );
    }

    #[test]
    fn check_manual_config_with_host_bits_does_not_panic() {
        // Fields are public; a hand-built config with a /0 and host bits must not overflow.
        let mut c = NetConfig {
            network: Some(Ipv4Net::new(v4("10.0.0.0"), 0).unwrap()),
            ..NetConfig::default()
        };
        c.check().unwrap();
        assert_eq!(c.subnet_len, 24);
        let mut c = NetConfig {
            enable_ipv4: false,
            enable_ipv6: true,
            ipv6_network: Some(Ipv6Net::new(v6("fc00::"), 0).unwrap()),
            ..NetConfig::default()
        };
        c.check().unwrap();
        assert_eq!(c.ipv6_subnet_len, 64);
    }

    // ---- CheckNetworkConfig, IPv6 ------------------------------------------------------

    const V6: &str = r#""EnableIPv4":false,"EnableIPv6":true"#;

    #[test]
    fn check_missing_ipv6_network() {
        assert_eq!(
            check_err(&format!("{{{V6}}}")),
            "please define a correct IPv6Network parameter in the flannel config"
        );
        assert_eq!(
            check_err(&format!(r#"{{{V6},"IPv6Network":"::/0"}}"#)),
            "please define a correct IPv6Network parameter in the flannel config"
        );
    }

    #[test]
    fn check_ipv6_subnet_len_longer_than_126() {
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetLen":127}}"#
            )),
            "SubnetLen must be less than /127"
        );
        checked(&format!(
            r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetLen":126}}"#
        ));
    }

    #[test]
    fn check_ipv6_at_least_four_subnets() {
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetLen":49}}"#
            )),
            "network must be able to accommodate at least four subnets"
        );
        assert_eq!(
            parse(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetLen":49}}"#
            ))
            .check()
            .unwrap_err(),
            CheckError::Ipv6TooFewSubnets
        );
    }

    #[test]
    fn check_ipv6_network_smaller_than_124() {
        assert_eq!(
            check_err(&format!(r#"{{{V6},"IPv6Network":"fc00::/125"}}"#)),
            "IPv6Network is too small. Minimum useful network prefix is /124"
        );
        let c = checked(&format!(r#"{{{V6},"IPv6Network":"fc00::/124"}}"#));
        assert_eq!(c.ipv6_subnet_len, 126);
    }

    #[test]
    fn check_ipv6_default_subnet_len() {
        for (network, len) in [
            ("fc00::/8", 64),
            ("fc00::/48", 64),
            ("fc00::/62", 64),
            ("fc00::/63", 65),
            ("fc00::/64", 66),
            ("fc00::/120", 122),
        ] {
            let c = checked(&format!(r#"{{{V6},"IPv6Network":"{network}"}}"#));
            assert_eq!(c.ipv6_subnet_len, len, "{network}");
        }
    }

    #[test]
    fn check_ipv6_default_min_and_max() {
        let c = checked(&format!(r#"{{{V6},"IPv6Network":"2001:cafe:42::/56"}}"#));
        assert_eq!(c.ipv6_subnet_min, Some(v6("2001:cafe:42:1::")));
        assert_eq!(c.ipv6_subnet_max, Some(v6("2001:cafe:42:ff::")));
        let c = checked(&format!(r#"{{{V6},"IPv6Network":"8000::/1"}}"#));
        assert_eq!(c.ipv6_subnet_min, Some(v6("8000:0:0:1::")));
        assert_eq!(c.ipv6_subnet_max, Some(v6("ffff:ffff:ffff:ffff::")));
        let c = checked(&format!(
            r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetMin":"::","IPv6SubnetMax":"::"}}"#
        ));
        assert_eq!(c.ipv6_subnet_min, Some(v6("fc00:0:0:1::")));
    }

    #[test]
    fn check_ipv6_subnet_min_range() {
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}}"#
            )),
            "IPv6SubnetMin is not in the range of the IPv6Network"
        );
    }

    #[test]
    fn check_ipv6_subnet_max_range() {
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc01::"}}"#
            )),
            "IPv6SubnetMax is not in the range of the IPv6Network"
        );
    }

    #[test]
    fn check_ipv6_subnet_min_boundary() {
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::1"}}"#
            )),
            "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1"
        );
    }

    #[test]
    fn check_ipv6_subnet_max_boundary() {
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:ff::8"}}"#
            )),
            "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:ff::8"
        );
    }

    #[test]
    fn check_ipv6_boundary_prints_addresses_like_upstream() {
        // ::a00:1 needs exactly four bytes as a big.Int, so upstream prints it as IPv4.
        assert_eq!(
            check_err(&format!(
                r#"{{{V6},"IPv6Network":"::/96","IPv6SubnetMin":"::a00:1"}}"#
            )),
            "IPv6SubnetMin is not on a SubnetLen boundary: 10.0.0.1"
        );
    }

    #[test]
    fn check_dual_stack() {
        let c = checked(
            r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.ipv6_subnet_len, 64);
        assert_eq!(c.ip_stack(), Ok(IpStack::Dual));
        // An IPv4 error is reported before IPv6 is looked at.
        assert_eq!(
            check_err(r#"{"EnableIPv6":true}"#),
            "please define a correct Network parameter in the flannel config"
        );
        assert_eq!(
            check_err(r#"{"EnableIPv6":true,"Network":"10.0.0.0/8"}"#),
            "please define a correct IPv6Network parameter in the flannel config"
        );
    }
}
