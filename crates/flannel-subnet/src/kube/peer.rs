//! [`PeerNode`]: the compact Node the watch decodes, so a 5000-node list never holds full
//! Node objects.
//!
//! A real Node is 5-20 KB of JSON (status.images, conditions, managedFields, labels, the
//! kubelet's annotations); flannel reads a few hundred bytes of it: the name, the podCIDR(s) and
//! its own annotations. `PeerNode` is what the node watch decodes list pages and watch events
//! into: serde skips everything else while parsing (`IgnoredAny`, no allocation), and the
//! annotation map keeps only keys that name a flannel annotation. The object is turned into a
//! lease right away and dropped (see [`super::watch`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The annotation names flannel reads or writes, after `--kube-annotation-prefix` (see
/// `flannel_types::AnnotationKeys`). The decoder keeps a key only when it is one of these
/// names after a normalised prefix (which always ends in `/` or `-`), so the map stays a handful
/// of entries whatever else the node carries. The rule needs no configuration (serde's
/// `DeserializeOwned` takes no arguments); it keeps the flannel keys of any prefix, and lookups
/// ([`super::node::NodeView`]) use the exact keys of the configured one.
pub const FLANNEL_ANNOTATION_NAMES: [&str; 10] = [
    "kube-subnet-manager",
    "backend-type",
    "backend-data",
    "backend-v6-data",
    "public-ip",
    "public-ipv6",
    "public-ip-overwrite",
    "public-ipv6-overwrite",
    "node-public-ip",
    "node-public-ipv6",
];

/// Whether an annotation key is a flannel annotation under some prefix.
pub fn is_flannel_annotation(key: &str) -> bool {
    FLANNEL_ANNOTATION_NAMES.iter().any(|name| {
        key.strip_suffix(name)
            .is_some_and(|prefix| prefix.ends_with('/') || prefix.ends_with('-'))
    })
}

/// A Node as the peer watch sees it: name, resourceVersion, flannel annotations, podCIDR(s).
///
/// It implements `kube::Resource` as `v1/Node` (cluster-scoped, plural `nodes`) so the watch's
/// requests take the collection's path from kube (`Resource::url_path`); `metadata` is a minimal
/// `ObjectMeta` (only `name`, `resourceVersion` and `annotations` are ever set) because
/// `Resource::meta` needs one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerNode {
    /// `metadata.name`, `metadata.resourceVersion`, and the flannel `metadata.annotations`.
    pub metadata: ObjectMeta,
    /// `spec.podCIDR` (empty when unset).
    pub pod_cidr: String,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
}

impl PeerNode {
    /// `metadata.name` (`""` when unset).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

impl kube::Resource for PeerNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The Node's JSON shape, reduced to what is read; serde's derive skips unknown fields
/// (`status`, the rest of `metadata` and `spec`) with `IgnoredAny`.
#[derive(Deserialize)]
struct WireNode {
    #[serde(default)]
    metadata: Option<WireMeta>,
    #[serde(default)]
    spec: Option<WireSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    annotations: Option<FlannelAnnotations>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

/// An annotation map that keeps only flannel's keys ([`is_flannel_annotation`]); the values of
/// other keys are skipped without being copied.
struct FlannelAnnotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for FlannelAnnotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(AnnotationsVisitor)
    }
}

struct AnnotationsVisitor;

impl<'de> Visitor<'de> for AnnotationsVisitor {
    type Value = FlannelAnnotations;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of annotations")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = BTreeMap::new();
        while let Some(key) = map.next_key::<FlannelKey>()? {
            match key.0 {
                Some(k) => {
                    kept.insert(k, map.next_value::<String>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(FlannelAnnotations(kept))
    }
}

/// A map key, copied only when it is a flannel annotation.
struct FlannelKey(Option<String>);

impl<'de> Deserialize<'de> for FlannelKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = FlannelKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an annotation key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<FlannelKey, E> {
        Ok(FlannelKey(
            is_flannel_annotation(key).then(|| key.to_string()),
        ))
    }
}

impl<'de> Deserialize<'de> for PeerNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireNode::deserialize(d)?;
        let (name, resource_version, annotations) = match wire.metadata {
            Some(m) => (m.name, m.resource_version, m.annotations.map(|a| a.0)),
            None => (None, None, None),
        };
        let (pod_cidr, pod_cidrs) = match wire.spec {
            Some(s) => (s.pod_cidr, s.pod_cidrs),
            None => (None, None),
        };
        Ok(PeerNode {
            metadata: ObjectMeta {
                name,
                resource_version,
                annotations,
                ..ObjectMeta::default()
            },
            pod_cidr: pod_cidr.unwrap_or_default(),
            pod_cidrs: pod_cidrs.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flannel_types::AnnotationKeys;
    use kube::Resource;
    use serde_json::{Value, json};

    /// A Node as a kubeadm cluster's API server returns it (trimmed lists, real shapes).
    pub(crate) fn full_node(name: &str) -> Value {
        let images: Vec<Value> = (0..40)
            .map(|i| {
                json!({
                    "names": [format!("registry.example/app{i}@sha256:{:064x}", i), format!("registry.example/app{i}:v1.{i}")],
                    "sizeBytes": 10_000_000 + i
                })
            })
            .collect();
        let labels: serde_json::Map<String, Value> = (0..30)
            .map(|i| {
                (
                    format!("example.com/label-{i}"),
                    json!(format!("value-{i}")),
                )
            })
            .collect();
        json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": "0b7c6a5e-6a52-4b5e-9d1c-2d9f1b0c3e11",
                "resourceVersion": "123456",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": labels,
                "annotations": {
                    "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                    "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:02\"}",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/public-ip": "198.18.0.2",
                    "example.com/notpublic-ip": "1.2.3.4",
                    "example.com/xpublic-ip": "1.2.3.4",
                    "example.com/nested": {"not": ["a", "string"]}
                },
                "managedFields": [
                    {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                     "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}}}}}},
                    {"manager": "flanneld", "operation": "Update", "apiVersion": "v1",
                     "subresource": "status", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:annotations": {"f:flannel.alpha.coreos.com/public-ip": {}}}}}
                ]
            },
            "spec": {
                "podCIDR": "10.244.1.0/24",
                "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
                "providerID": "kind://docker/kind/kind-worker",
                "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
            },
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110"},
                "conditions": [
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:10Z",
                     "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status"},
                    {"type": "MemoryPressure", "status": "False"}
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "198.18.0.2"},
                    {"type": "Hostname", "address": name}
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "abc", "kernelVersion": "6.12.0", "osImage": "Debian",
                             "containerRuntimeVersion": "containerd://2.0.0", "kubeletVersion": "v1.33.0",
                             "architecture": "amd64", "operatingSystem": "linux"},
                "images": images,
                "volumesInUse": [],
                "volumesAttached": null
            }
        })
    }

    #[test]
    fn decodes_only_what_flannel_reads() {
        let text = full_node("worker-1").to_string();
        assert!(text.len() > 8000, "the fixture is a realistic size");
        let n: PeerNode = serde_json::from_str(&text).unwrap();
        assert_eq!(n.name(), "worker-1");
        assert_eq!(n.metadata.resource_version.as_deref(), Some("123456"));
        assert_eq!(n.pod_cidr, "10.244.1.0/24");
        assert_eq!(n.pod_cidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let k = AnnotationKeys::default();
        let ann = n.metadata.annotations.as_ref().unwrap();
        let keys: Vec<&str> = ann.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                k.backend_data.as_str(),
                &k.backend_type,
                &k.kube_subnet_manager,
                &k.public_ip
            ]
        );
        assert_eq!(
            ann[&k.backend_data],
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}"#
        );
        // Nothing else of the object survives.
        let m = &n.metadata;
        assert!(m.labels.is_none() && m.managed_fields.is_none() && m.uid.is_none());
        assert!(m.creation_timestamp.is_none());
        // The view node.rs reads sees the same fields.
        let v = crate::kube::node::NodeView::of_peer(&n);
        assert_eq!(v.name, "worker-1");
        assert!(v.is_managed(&k));
        assert_eq!(v.pod_cidrs.len(), 2);
    }

    #[test]
    fn every_flannel_key_of_any_prefix_is_kept_and_nothing_else() {
        for prefix in [
            "flannel.alpha.coreos.com",
            "example.com/net",
            "example.com/",
        ] {
            let k = AnnotationKeys::new(prefix).unwrap();
            let all = [
                &k.kube_subnet_manager,
                &k.backend_type,
                &k.backend_data,
                &k.backend_v6_data,
                &k.public_ip,
                &k.public_ipv6,
                &k.public_ip_overwrite,
                &k.public_ipv6_overwrite,
                &k.node_public_ip,
                &k.node_public_ipv6,
            ];
            for key in all {
                assert!(is_flannel_annotation(key), "{key}");
            }
        }
        for other in [
            "public-ip",
            "example.com/xpublic-ip",
            "node.alpha.kubernetes.io/ttl",
            "example.com/backend-data-old",
            "example.com/notpublic-ip",
        ] {
            assert!(!is_flannel_annotation(other), "{other}");
        }
        // Another prefix's flannel keys are kept too (a handful of entries at most); lookups
        // use the configured prefix's exact keys, so they are never read.
        assert!(is_flannel_annotation("example.com/other-public-ip"));
    }

    #[test]
    fn sparse_and_null_fields_decode() {
        let n: PeerNode = serde_json::from_str(r#"{"metadata":{"name":"a"}}"#).unwrap();
        assert_eq!(n.name(), "a");
        assert!(n.metadata.annotations.is_none() && n.pod_cidr.is_empty());
        let n: PeerNode = serde_json::from_str(
            r#"{"metadata":{"name":"b","annotations":null},"spec":{"podCIDR":null,"podCIDRs":null},"status":null}"#,
        )
        .unwrap();
        assert_eq!(n.name(), "b");
        assert!(n.pod_cidrs.is_empty());
        // A key with JSON escapes is compared after unescaping.
        let n: PeerNode = serde_json::from_str(
            r#"{"metadata":{"name":"c","annotations":{"flannel.alpha.coreos.com\/public-ip":"198.18.0.3"}}}"#,
        )
        .unwrap();
        assert_eq!(
            n.metadata.annotations.unwrap()["flannel.alpha.coreos.com/public-ip"],
            "198.18.0.3"
        );
        // A non-string flannel value is a decode error, as it is for a full Node.
        assert!(
            serde_json::from_str::<PeerNode>(
                r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":1}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn lists_and_watch_events_decode_as_nodes() {
        assert_eq!(PeerNode::url_path(&(), None), "/api/v1/nodes");
        assert_eq!(PeerNode::kind(&()), "Node");
        let list = json!({
            "kind": "NodeList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "77", "continue": "tok"},
            "items": [full_node("a"), full_node("b")]
        });
        let l: kube::core::ObjectList<PeerNode> = serde_json::from_value(list).unwrap();
        assert_eq!(l.metadata.continue_.as_deref(), Some("tok"));
        assert_eq!(
            l.items.iter().map(PeerNode::name).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let ev = json!({"type": "MODIFIED", "object": full_node("c")}).to_string();
        let ev: kube::core::WatchEvent<PeerNode> = serde_json::from_str(&ev).unwrap();
        let kube::core::WatchEvent::Modified(n) = ev else {
            panic!("not a MODIFIED event")
        };
        assert_eq!(n.name(), "c");
        assert_eq!(n.metadata.annotations.unwrap().len(), 4);
    }
}
