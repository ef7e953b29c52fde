//! Upstream-compatible data formats shared by `flanneld` and the `flannel` CNI plugin.
//!
//! This crate is synchronous and free of netlink, etcd and Kubernetes so that the CNI
//! plugin can link it without pulling in an async runtime.
//!
//! Everything here exists to be byte- and behaviour-compatible with upstream Flannel, so that
//! flannel-rs is a drop-in replacement:
//! * [`config`]: net-conf.json / the etcd config value, parsed as leniently as Go, checked with
//!   upstream's rules and messages.
//! * [`lease`]: lease attributes (etcd values), etcd subnet keys, lease events.
//! * [`subnet_env`]: `/run/flannel/subnet.env`, written atomically and read as the CNI plugin
//!   and flanneld read it.
//! * [`annotations`]: Kubernetes node annotation keys.
//! * [`family`]: address families and the stack, the one definition every crate uses.
//! * [`family_net`]: [`FamilyNet`], one trait over `Ipv4Net` and `Ipv6Net`, so that the rules
//!   upstream states once per family are written once here and in the subnet managers.
//! * [`gojson`] and [`goip`]: the Go `encoding/json` and `net` behaviours the above rely on,
//!   public so that backends and the CNI plugin can parse their own JSON the same way.
//!
//! Each module has its own error enum; their `Display` texts either reproduce upstream's
//! messages exactly (where operators match on them) or name the input and what was expected.

#![deny(missing_docs)]

pub mod annotations;
pub mod config;
pub mod family;
pub mod family_net;
pub mod goip;
pub mod gojson;
pub mod lease;
pub mod subnet_env;

pub use annotations::{AnnotationError, AnnotationKeys, FamilyAnnotationKeys};
pub use config::{CheckError, ConfigError, FamilyConfig, NetConfig};
pub use family::{IpFamily, IpStack, NoStackError};
pub use family_net::FamilyNet;
pub use gojson::{GoJsonError, GoObject, JsonSyntaxError, RawJson};
pub use lease::{Lease, LeaseAttrs, LeaseError, LeaseEvent, LeaseSet, SubnetKey, SubnetKeyError};
pub use subnet_env::{
    CniSubnetEnv, PreviousSubnetEnv, SubnetEnv, SubnetEnvError, SubnetEnvFamily, SubnetEnvV4,
    SubnetEnvV6,
};
