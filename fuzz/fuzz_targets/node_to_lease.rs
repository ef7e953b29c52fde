//! Kubernetes Node objects turned into leases (the kube subnet manager's `node_to_lease`, its
//! own-subnet checks and its annotation patch rules).
//!
//! The input is JSON: one Node, or an array of Nodes read as a watch sequence. Nodes come from
//! the API server, where any user with node-patch rights can write annotations, so nothing may
//! panic, and:
//! * a lease has exactly the enabled families' subnets, as network addresses;
//! * its attributes survive a round trip through the etcd JSON form;
//! * applying the annotation patch computed for a node leaves nothing more to patch;
//! * own subnets accepted against net-conf.json lie inside its networks;
//! * the watch tracker reports a node's current lease, and forgets it when deleted.

#![no_main]

use std::sync::LazyLock;

use flannel_subnet::kube::node::{
    NodeView, annotation_changes, node_to_lease, own_subnets, stored_attrs,
};
use flannel_subnet::kube::watch::NodeLeases;
use flannel_types::{AnnotationKeys, LeaseAttrs, LeaseEvent, NetConfig, goip};
use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;

static CONFIG: LazyLock<NetConfig> = LazyLock::new(|| {
    NetConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .expect("fixed config parses")
});

fn prints_as_ipv6(ip: std::net::Ipv6Addr) -> bool {
    goip::ip6_string(ip).contains(':')
}

fn one_node(node: &Node, keys: &AnnotationKeys) {
    let view = NodeView::of(node);
    let _ = view.is_managed(keys);
    for (v4, v6) in [(true, false), (false, true), (true, true)] {
        let Ok(lease) = node_to_lease(&view, keys, v4, v6) else {
            continue;
        };
        assert_eq!(lease.subnet.is_some(), v4);
        assert_eq!(lease.ipv6_subnet.is_some(), v6);
        assert!(lease.subnet.is_none_or(|n| n == n.trunc()));
        assert!(lease.ipv6_subnet.is_none_or(|n| n == n.trunc()));
        let json = lease.attrs.to_json();
        let back = LeaseAttrs::from_json(&json)
            .unwrap_or_else(|e| panic!("lease attrs JSON {json:?} does not parse: {e}"));
        if lease.attrs.public_ipv6.is_none_or(prints_as_ipv6) {
            assert_eq!(back, lease.attrs);
        }
        converges(node, &lease.attrs, keys);
    }
    if let Some(attrs) = stored_attrs(&view, keys) {
        converges(node, &attrs, keys);
    }
    for backend in ["vxlan", "host-gw", "udp"] {
        if let Ok((s4, s6)) = own_subnets(&view, &CONFIG, backend) {
            let net4 = CONFIG.network.expect("config has Network");
            let net6 = CONFIG.ipv6_network.expect("config has IPv6Network");
            assert!(
                s4.is_none_or(|s| net4.contains(&s)),
                "{s4:?} outside {net4}"
            );
            assert!(
                s6.is_none_or(|s| net6.contains(&s)),
                "{s6:?} outside {net6}"
            );
            assert!(s4.is_some() || s6.is_some());
        }
    }
}

/// Applies the patch `annotation_changes` asks for and checks that no further patch is asked.
fn converges(node: &Node, attrs: &LeaseAttrs, keys: &AnnotationKeys) {
    let view = NodeView::of(node);
    let Some(changes) = annotation_changes(&view, attrs, keys) else {
        return;
    };
    let mut patched = node.clone();
    patched
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(changes.clone());
    let again = annotation_changes(&NodeView::of(&patched), attrs, keys);
    assert_eq!(again, None, "patch {changes:?} did not converge");
}

fn watch(nodes: &[Node], keys: &AnnotationKeys) {
    let mut tracker = NodeLeases::new(keys.clone(), true, false);
    for node in nodes {
        let view = NodeView::of(node);
        let events = tracker.applied(&view);
        let expected = if view.is_managed(keys) {
            node_to_lease(&view, keys, true, false).ok()
        } else {
            None
        };
        assert_eq!(tracker.known().get(view.name), expected.as_ref());
        assert!(events.len() <= 2);
        if let Some(LeaseEvent::Added(l)) = events.last() {
            assert_eq!(Some(l), expected.as_ref());
        }
    }
    let snapshot = tracker.snapshot(nodes.iter().map(NodeView::of));
    let LeaseEvent::Snapshot(leases) = snapshot else {
        panic!("snapshot() returned {snapshot:?}");
    };
    assert_eq!(leases.len(), tracker.known().len());
    if let Some(first) = nodes.first() {
        let name = NodeView::of(first).name.to_string();
        let _ = tracker.deleted(&name);
        assert!(!tracker.known().contains_key(&name));
    }
}

fuzz_target!(|data: &[u8]| {
    static KEYS: LazyLock<[AnnotationKeys; 2]> = LazyLock::new(|| {
        [
            AnnotationKeys::default(),
            AnnotationKeys::new("example.com/net").expect("valid prefix"),
        ]
    });
    let nodes: Vec<Node> = match data.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => match serde_json::from_slice(data) {
            Ok(n) => n,
            Err(_) => return,
        },
        _ => match serde_json::from_slice(data) {
            Ok(n) => vec![n],
            Err(_) => return,
        },
    };
    for keys in KEYS.iter() {
        for node in nodes.iter().take(8) {
            one_node(node, keys);
        }
        watch(&nodes, keys);
    }
});
