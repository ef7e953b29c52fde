//! Builders for the JSON form of NetworkPolicies, so the catalogue reads like the policies it
//! applies. Policy shapes follow upstream's `GenNetworkPolicy...`/`SetSpec...Rules` helpers:
//! `policyTypes` lists Ingress when ingress rules were given (even none) and Egress likewise.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::model::Proto;

/// The empty selector: every pod (or every namespace).
pub fn sel_all() -> Value {
    json!({})
}

/// `matchLabels` with the given pairs.
pub fn sel_labels(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({ "matchLabels": map })
}

/// One `matchExpressions` requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`).
pub fn sel_expr(key: &str, op: &str, values: &[&str]) -> Value {
    let mut req = json!({ "key": key, "operator": op });
    if !values.is_empty() {
        req["values"] = json!(values);
    }
    json!({ "matchExpressions": [req] })
}

/// A peer selecting pods of the policy's own namespace.
pub fn peer_pods(pod_selector: Value) -> Value {
    json!({ "podSelector": pod_selector })
}

/// A peer selecting every pod of the selected namespaces.
pub fn peer_ns(ns_selector: Value) -> Value {
    json!({ "namespaceSelector": ns_selector })
}

/// A peer selecting the selected pods of the selected namespaces (both must match).
pub fn peer_ns_pods(ns_selector: Value, pod_selector: Value) -> Value {
    json!({ "namespaceSelector": ns_selector, "podSelector": pod_selector })
}

/// An ipBlock peer.
pub fn peer_ip_block(cidr: &str, except: &[String]) -> Value {
    let mut block = json!({ "cidr": cidr });
    if !except.is_empty() {
        block["except"] = json!(except);
    }
    json!({ "ipBlock": block })
}

/// A numeric port, with an explicit protocol or the API's default (TCP).
pub fn port_num(port: u16, proto: Option<Proto>) -> Value {
    with_proto(json!({ "port": port }), proto)
}

/// A named port, resolved against each destination pod's container ports.
pub fn port_named(name: &str, proto: Option<Proto>) -> Value {
    with_proto(json!({ "port": name }), proto)
}

/// Every port of one protocol.
pub fn port_proto(proto: Proto) -> Value {
    json!({ "protocol": proto.api_name() })
}

/// A port range `port..=end_port`.
pub fn port_range(port: u16, end_port: u16, proto: Option<Proto>) -> Value {
    with_proto(json!({ "port": port, "endPort": end_port }), proto)
}

fn with_proto(mut v: Value, proto: Option<Proto>) -> Value {
    if let Some(p) = proto {
        v["protocol"] = json!(p.api_name());
    }
    v
}

/// An ingress rule (`from` peers) or egress rule (`to` peers) with optional ports; empty lists
/// are left out, which the API reads as "everything".
fn rule(peer_key: &str, peers: Vec<Value>, ports: Vec<Value>) -> Value {
    let mut r = json!({});
    if !peers.is_empty() {
        r[peer_key] = Value::Array(peers);
    }
    if !ports.is_empty() {
        r["ports"] = Value::Array(ports);
    }
    r
}

/// An ingress rule.
pub fn ingress_rule(from: Vec<Value>, ports: Vec<Value>) -> Value {
    rule("from", from, ports)
}

/// An egress rule.
pub fn egress_rule(to: Vec<Value>, ports: Vec<Value>) -> Value {
    rule("to", to, ports)
}

/// A NetworkPolicy under construction.
#[derive(Debug, Clone)]
pub struct Np {
    ns: String,
    name: String,
    selector: Value,
    ingress: Option<Vec<Value>>,
    egress: Option<Vec<Value>>,
    types: Vec<&'static str>,
}

impl Np {
    /// A policy in `ns` applying to the pods `selector` selects, with no rules yet.
    pub fn new(ns: &str, name: &str, selector: Value) -> Np {
        Np {
            ns: ns.to_owned(),
            name: name.to_owned(),
            selector,
            ingress: None,
            egress: None,
            types: Vec::new(),
        }
    }

    /// Adds ingress rules (none: deny all ingress) and the Ingress policy type.
    pub fn ingress(mut self, rules: Vec<Value>) -> Np {
        if self.ingress.is_none() {
            self.types.push("Ingress");
        }
        self.ingress.get_or_insert_with(Vec::new).extend(rules);
        self
    }

    /// Adds egress rules (none: deny all egress) and the Egress policy type.
    pub fn egress(mut self, rules: Vec<Value>) -> Np {
        if self.egress.is_none() {
            self.types.push("Egress");
        }
        self.egress.get_or_insert_with(Vec::new).extend(rules);
        self
    }

    /// The policy's JSON object.
    pub fn json(&self) -> Value {
        let mut spec = json!({ "podSelector": self.selector, "policyTypes": self.types });
        if let Some(i) = &self.ingress {
            spec["ingress"] = Value::Array(i.clone());
        }
        if let Some(e) = &self.egress {
            spec["egress"] = Value::Array(e.clone());
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": self.name, "namespace": self.ns },
            "spec": spec,
        })
    }
}

impl From<Np> for Value {
    fn from(np: Np) -> Value {
        np.json()
    }
}

/// `ip/32` or `ip/128`: the CIDR of exactly one pod.
pub fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// The /4 network around `ip` (upstream's `makeLargeCIDRForIP`): a block holding the pod and,
/// in any sane pod network, every other pod too.
pub fn large_cidr(ip: IpAddr) -> String {
    let net = ipnet::IpNet::new(ip, 4).expect("4 is a valid prefix length for both families");
    net.trunc().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_json_has_upstream_shape() {
        let p = Np::new("x", "deny-all", sel_all())
            .ingress(vec![])
            .egress(vec![])
            .json();
        assert_eq!(p["kind"], "NetworkPolicy");
        assert_eq!(p["metadata"]["namespace"], "x");
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(p["spec"]["ingress"], json!([]));
        assert_eq!(p["spec"]["egress"], json!([]));
        let q = Np::new("x", "p", sel_labels(&[("pod", "a")]))
            .egress(vec![egress_rule(
                vec![],
                vec![port_named("serve-80-tcp", None)],
            )])
            .json();
        assert_eq!(q["spec"]["policyTypes"], json!(["Egress"]));
        assert!(q["spec"].get("ingress").is_none());
        assert_eq!(
            q["spec"]["egress"][0],
            json!({"ports": [{"port": "serve-80-tcp"}]})
        );
        assert_eq!(
            q["spec"]["podSelector"],
            json!({"matchLabels": {"pod": "a"}})
        );
    }

    #[test]
    fn cidrs_for_pod_ips() {
        let v4: IpAddr = "10.244.1.7".parse().unwrap();
        assert_eq!(host_cidr(v4), "10.244.1.7/32");
        assert_eq!(large_cidr(v4), "0.0.0.0/4");
        let v4b: IpAddr = "172.20.3.4".parse().unwrap();
        assert_eq!(large_cidr(v4b), "160.0.0.0/4");
        let v6: IpAddr = "fd00:10:244::5".parse().unwrap();
        assert_eq!(host_cidr(v6), "fd00:10:244::5/128");
        assert_eq!(large_cidr(v6), "f000::/4");
        assert_eq!(
            sel_expr("pod", "Exists", &[]),
            json!({"matchExpressions": [{"key": "pod", "operator": "Exists"}]})
        );
        assert_eq!(
            peer_ip_block("10.0.0.0/8", &["10.1.0.0/16".to_owned()]),
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}})
        );
        assert_eq!(
            port_range(81, 90, Some(Proto::Udp)),
            json!({"port": 81, "endPort": 90, "protocol": "UDP"})
        );
    }
}
