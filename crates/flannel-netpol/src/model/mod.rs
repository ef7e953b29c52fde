//! The stripped objects the enforcer keeps: what of a Pod, a Namespace and a NetworkPolicy
//! decides a verdict, and nothing else.
//!
//! A node sees every pod of the cluster (peers are cluster-wide), so keeping whole API
//! objects would cost megabytes for nothing: a [`PodInfo`] holds namespace, name, labels, IPs,
//! node and named container ports; a [`NamespaceInfo`] name and labels; a
//! [`Policy`] the validated form of a NetworkPolicy (see [`policy`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

pub mod policy;

pub use policy::{
    IpBlock, NamespaceScope, Peer, Peers, Policy, PolicyProblem, PortMatch, Ports, Rule,
};

/// A transport protocol NetworkPolicy ports can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP, the API's default.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (matched where the kernel has it; `th dport` reads its port like TCP's).
    Sctp,
}

impl Proto {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`); anything else is `None`.
    pub fn from_api(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The nft keyword (`tcp`), also how `nft -j` prints an `inet_proto`.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// The IANA protocol number, as `nft -n` would print it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    /// Parses nft's name or number (for reading elements back).
    pub fn from_nft(s: &str) -> Option<Proto> {
        match s {
            "tcp" | "6" => Some(Proto::Tcp),
            "udp" | "17" => Some(Proto::Udp),
            "sctp" | "132" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

/// A named container port: what a policy's `port: http` resolves to on one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// The container port's name.
    pub name: String,
    /// Its protocol (TCP when the API leaves it out).
    pub protocol: Proto,
    /// Its number.
    pub port: u16,
}

/// A pod as the enforcer keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels, matched by pod selectors.
    pub labels: BTreeMap<String, String>,
    /// Pod IPs (one per family at most in practice).
    pub ips: Vec<IpAddr>,
    /// The node it runs on; only pods of our node are *selected* (ingress and egress are
    /// enforced on the node of the pod they protect), every pod can be a peer.
    pub node: Option<String>,
    /// Named container ports, for named ports in policies.
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    /// Strips a Pod. `None` for pods that cannot be a policy's subject or peer: without a name
    /// or IPs (not yet scheduled or sandboxed), on the host network (their IP is the node's;
    /// NetworkPolicy does not apply to them) or terminated (phase Succeeded or Failed: their IP
    /// may already belong to a new pod).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let name = pod.metadata.name.clone()?;
        let namespace = pod.metadata.namespace.clone()?;
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.host_network) == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
        for ip in listed.chain(status.pod_ip.as_deref()) {
            if let Ok(ip) = ip.parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return None;
        }
        let mut ports: Vec<NamedPort> = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone().filter(|n| !n.is_empty())?,
                    protocol: Proto::from_api(p.protocol.as_deref().unwrap_or("TCP"))?,
                    port: u16::try_from(p.container_port).ok().filter(|p| *p != 0)?,
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        Some(PodInfo {
            namespace,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            node: spec.and_then(|s| s.node_name.clone()),
            ports,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A namespace as the enforcer keeps it: namespace selectors match its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels (the API server adds `kubernetes.io/metadata.name`).
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// Strips a Namespace; `None` without a name.
    pub fn from_namespace(ns: &Namespace) -> Option<NamespaceInfo> {
        Some(NamespaceInfo {
            name: ns.metadata.name.clone()?,
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(phase: &str, ips: &[&str], host_network: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("x".into()),
                labels: Some([("pod".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                host_network: Some(host_network),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("serve-80-tcp".into()),
                            container_port: 80,
                            ..Default::default()
                        },
                        ContainerPort {
                            name: Some("serve-81-udp".into()),
                            container_port: 81,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        },
                        ContainerPort {
                            name: None,
                            container_port: 82,
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ips.first().map(|s| s.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pods_are_stripped_to_what_policies_need() {
        let p = PodInfo::from_pod(&pod("Running", &["10.244.1.2", "fd00::2"], false)).unwrap();
        assert_eq!(p.key(), "x/a");
        assert_eq!(
            p.ips,
            vec![
                "10.244.1.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(p.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(
            p.ports,
            vec![
                NamedPort {
                    name: "serve-80-tcp".into(),
                    protocol: Proto::Tcp,
                    port: 80
                },
                NamedPort {
                    name: "serve-81-udp".into(),
                    protocol: Proto::Udp,
                    port: 81
                },
            ]
        );
    }

    #[test]
    fn pods_that_cannot_be_subjects_are_dropped() {
        assert!(PodInfo::from_pod(&pod("Pending", &[], false)).is_none());
        assert!(PodInfo::from_pod(&pod("Running", &["10.0.0.1"], true)).is_none());
        assert!(PodInfo::from_pod(&pod("Succeeded", &["10.0.0.1"], false)).is_none());
        assert!(PodInfo::from_pod(&pod("Failed", &["10.0.0.1"], false)).is_none());
        assert!(PodInfo::from_pod(&pod("Pending", &["10.0.0.1"], false)).is_some());
    }

    #[test]
    fn protocols_parse_both_ways() {
        for p in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
            assert_eq!(Proto::from_nft(p.nft()), Some(p));
            assert_eq!(Proto::from_nft(&p.number().to_string()), Some(p));
        }
        assert_eq!(Proto::from_api("ICMP"), None);
        assert_eq!(
            Proto::from_api("tcp"),
            None,
            "the API spelling is upper case"
        );
    }
}
