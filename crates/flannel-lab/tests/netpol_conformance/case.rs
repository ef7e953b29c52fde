//! What a conformance case is: a title, where it comes from, and the steps it runs (changes to
//! the cluster, and probe rounds with the expected truth table).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use super::model::{Model, PodRef, Proto, pod};
use super::reachability::Reachability;

/// Where a case comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An `It(...)` of upstream's test/e2e/network/netpol/network_policy.go, under this
    /// `Context(...)`.
    Upstream(&'static str),
    /// A case flannel-rs adds for a semantic upstream's suite does not probe (the list:
    /// endPort, label removal, pod recreation, ingress ipBlock, DNS-like egress).
    Addition,
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum Step {
    /// Create or update these objects.
    Apply(Vec<Value>),
    /// Delete one policy.
    DeletePolicy {
        /// Its namespace.
        ns: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// Delete every policy.
    DeleteAllPolicies,
    /// Set or remove a pod label.
    LabelPod {
        /// The pod.
        pod: PodRef,
        /// The label key.
        key: &'static str,
        /// The value, `None` to remove.
        value: Option<&'static str>,
    },
    /// Set or remove a namespace label.
    LabelNamespace {
        /// The namespace.
        ns: &'static str,
        /// The label key.
        key: &'static str,
        /// The value, `None` to remove.
        value: Option<&'static str>,
    },
    /// Delete a pod and create it again with these labels.
    RecreatePod {
        /// The pod.
        pod: PodRef,
        /// Its labels after recreation.
        labels: BTreeMap<String, String>,
    },
    /// Probe every pair and compare with the expected table.
    Probe {
        /// Destination port.
        port: u16,
        /// Protocol.
        proto: Proto,
        /// The expected table.
        expected: Reachability,
    },
}

/// What a case may read from the cluster while it builds its steps: the pods' IPs.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The model.
    pub model: Model,
    /// Each model pod's first IP.
    pub ips: BTreeMap<PodRef, IpAddr>,
}

impl Ctx {
    /// The IP of `p` (`"x/b"`).
    pub fn ip(&self, p: &str) -> IpAddr {
        self.ips[&pod(p)]
    }

    /// A fresh "everything connects" table over the model's pods.
    pub fn reach(&self) -> Reachability {
        Reachability::new(self.model.all_pods(), true)
    }
}

/// One conformance case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Upstream's `It(...)` title (or ours for additions).
    pub title: &'static str,
    /// Where it comes from.
    pub origin: Origin,
    /// Builds the steps from the cluster's pod IPs.
    pub build: fn(&Ctx) -> Vec<Step>,
}

impl Case {
    /// The name the runner prints and filters on: context and title, as ginkgo prints them.
    pub fn full_name(&self) -> String {
        match self.origin {
            Origin::Upstream(ctx) => format!("{ctx} {}", self.title),
            Origin::Addition => format!("flannel-rs additions {}", self.title),
        }
    }
}

/// Shorthand: apply one policy (a built [`super::policies::Np`] or its JSON).
pub fn apply(policy: impl Into<Value>) -> Step {
    Step::Apply(vec![policy.into()])
}

/// Shorthand: the commonest probe round, TCP port 80.
pub fn tcp80(expected: Reachability) -> Step {
    probe(80, Proto::Tcp, expected)
}

/// Shorthand: one probe round.
pub fn probe(port: u16, proto: Proto, expected: Reachability) -> Step {
    Step::Probe {
        port,
        proto,
        expected,
    }
}
