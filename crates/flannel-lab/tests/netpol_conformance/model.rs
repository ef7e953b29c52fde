//! The e2e model every case runs against: namespaces x, y, z, each with pods a, b, c, every pod
//! serving TCP and UDP on ports 80 and 81 under the named ports `serve-<port>-<proto>`.
//!
//! Upstream's suite (test/e2e/network/netpol) fixes this shape so that one truth table of 9 x 9
//! pod pairs shows what a policy does to traffic inside its namespace, across namespaces and in
//! both directions; the cases' expectations are written against it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Transport protocols a NetworkPolicy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP: a probe is a connect.
    Tcp,
    /// UDP: a probe is a request that must be answered.
    Udp,
    /// SCTP: only where the kernel has it.
    Sctp,
}

impl Proto {
    /// The spelling of the Kubernetes API (`protocol: TCP`).
    pub fn api_name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    /// Parses the API spelling; the API defaults a missing protocol to TCP, callers do that.
    pub fn from_api(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// Lower-case form used in named ports (`serve-80-tcp`) and in the lab's `80/tcp` syntax.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// A pod of the model, written `ns/name` as upstream's `PodString` is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    /// Namespace (x, y or z in the model).
    pub ns: String,
    /// Pod name (a, b or c in the model).
    pub name: String,
}

impl PodRef {
    /// Builds `ns/name`.
    pub fn new(ns: &str, name: &str) -> PodRef {
        PodRef {
            ns: ns.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

impl FromStr for PodRef {
    type Err = String;

    fn from_str(s: &str) -> Result<PodRef, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef::new(ns, name))
            }
            _ => Err(format!("expected NS/NAME, found {s:?}")),
        }
    }
}

/// Shorthand used all over the catalogue: `pod("x/a")`.
pub fn pod(s: &str) -> PodRef {
    s.parse().expect("catalogue pod names are NS/NAME")
}

/// The label every namespace carries (set by the API server since Kubernetes 1.21).
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A container port of a model pod, as its Pod object lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// `serve-80-tcp` and so on.
    pub name: String,
    /// 80 or 81.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

/// Namespaces, pods, labels and ports of the model.
#[derive(Debug, Clone)]
pub struct Model {
    /// Namespace names in table order.
    pub namespaces: Vec<String>,
    /// Pod names, the same in every namespace.
    pub pod_names: Vec<String>,
    /// Ports every pod serves.
    pub ports: Vec<u16>,
    /// Protocols every pod serves on each port.
    pub protos: Vec<Proto>,
}

impl Model {
    /// Upstream's default model: x, y, z by a, b, c, ports 80 and 81 on TCP and UDP.
    pub fn standard() -> Model {
        Model {
            namespaces: ["x", "y", "z"].map(String::from).to_vec(),
            pod_names: ["a", "b", "c"].map(String::from).to_vec(),
            ports: vec![80, 81],
            protos: vec![Proto::Tcp, Proto::Udp],
        }
    }

    /// Every pod, namespace-major (x/a, x/b, ..., z/c): the order of the truth tables.
    pub fn all_pods(&self) -> Vec<PodRef> {
        self.namespaces
            .iter()
            .flat_map(|ns| self.pod_names.iter().map(move |p| PodRef::new(ns, p)))
            .collect()
    }

    /// A namespace's labels as the model creates them: the API server's name label and `ns`.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NS_NAME_LABEL.to_owned(), ns.to_owned()),
            ("ns".to_owned(), ns.to_owned()),
        ])
    }

    /// A pod's labels as the model creates it: `pod=<name>`.
    pub fn pod_labels(&self, pod: &PodRef) -> BTreeMap<String, String> {
        BTreeMap::from([("pod".to_owned(), pod.name.clone())])
    }

    /// The named container ports of every model pod.
    pub fn named_ports(&self) -> Vec<NamedPort> {
        let mut out = Vec::new();
        for &port in &self.ports {
            for &proto in &self.protos {
                out.push(NamedPort {
                    name: format!("serve-{port}-{}", proto.lower()),
                    port,
                    proto,
                });
            }
        }
        out
    }
}

#[test]
fn model_has_nine_pods_in_table_order_and_four_named_ports() {
    let m = Model::standard();
    let pods: Vec<String> = m.all_pods().iter().map(ToString::to_string).collect();
    assert_eq!(
        pods,
        [
            "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"
        ]
    );
    let names: Vec<String> = m.named_ports().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "serve-80-tcp",
            "serve-80-udp",
            "serve-81-tcp",
            "serve-81-udp"
        ]
    );
    assert_eq!(m.namespace_labels("y")[NS_NAME_LABEL], "y");
    assert_eq!(m.namespace_labels("y")["ns"], "y");
    assert_eq!(m.pod_labels(&pod("z/c"))["pod"], "c");
}

#[test]
fn pod_refs_parse_and_reject_malformed_names() {
    assert_eq!("x/a".parse::<PodRef>(), Ok(PodRef::new("x", "a")));
    for bad in ["xa", "/a", "x/", "x/a/b", ""] {
        assert!(bad.parse::<PodRef>().is_err(), "{bad:?} parsed");
    }
    assert_eq!(Proto::from_api("SCTP"), Some(Proto::Sctp));
    assert_eq!(Proto::from_api("tcp"), None);
}
