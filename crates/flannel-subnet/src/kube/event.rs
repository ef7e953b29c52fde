//! Decoding one watch event line into a [`PeerNode`] event, without parsing the Node's
//! `status` when it can be proven not to matter.
//!
//! Two thirds of a Node's JSON is its `status` (images, conditions, nodeInfo), which flannel
//! never reads, and with 5000 nodes sending status updates every 10 s, skipping it through the
//! JSON parser was the largest part of flanneld's CPU. API servers write a Node's members in
//! the Go struct's order (`kind`, `apiVersion`, `metadata`, `spec`, `status`), so `status`
//! closes the object and the event: the line is `{"type":..,"object":{..,"status":{..}}}`.
//!
//! The fast path cuts the line at the first `,"status":{` and closes it with `}}`:
//! * That byte sequence cannot occur inside a JSON string (a quote inside a string is escaped),
//!   so the cut is at a member named `status` of some object.
//! * The cut text parses only if that object sits exactly two levels deep (the event, then
//!   its `object`) and nothing that follows was needed: a `status` deeper or shallower leaves
//!   the brackets unbalanced, and a `type` after the object leaves the event without its tag.
//! * What is dropped must not hold anything flannel reads: the fast path is refused when the
//!   rest of the line has a `"metadata"` or `"spec"` string (as a member name or a value).
//!
//! Whenever a condition fails or the cut text does not parse, the whole line is decoded as
//! before, so the result is always what a full parse gives for the members flannel reads. The
//! dropped part is not checked for valid JSON or UTF-8, which flannel would not use anyway.

use kube::core::WatchEvent as KubeWatchEvent;
use memchr::memmem;

use super::peer::PeerNode;
use super::watch::NodeWatchError;

/// Where a Node's `status` member starts, written as API servers write it (no spaces).
const STATUS_MEMBER: &[u8] = b",\"status\":{";

/// Names that must not be in the part the fast path drops (as a member name or, to be safe
/// whatever the spacing, as any string).
const READ_MEMBERS: [&[u8]; 2] = [b"\"metadata\"", b"\"spec\""];

/// Decodes one event line; `scratch` is reused between lines for the cut text.
pub fn decode(
    line: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<KubeWatchEvent<PeerNode>, NodeWatchError> {
    if let Some(ev) = without_status(line, scratch) {
        return Ok(ev);
    }
    full(line)
}

/// The fast path: the event decoded from the line cut before the Node's `status`, or `None`
/// when the cut is not provably harmless (see the module doc).
fn without_status(line: &[u8], scratch: &mut Vec<u8>) -> Option<KubeWatchEvent<PeerNode>> {
    let cut = memmem::find(line, STATUS_MEMBER)?;
    let dropped = &line[cut..];
    if READ_MEMBERS
        .iter()
        .any(|m| memmem::find(dropped, m).is_some())
    {
        return None;
    }
    scratch.clear();
    scratch.extend_from_slice(&line[..cut]);
    scratch.extend_from_slice(b"}}");
    let text = std::str::from_utf8(scratch).ok()?;
    let ev = serde_json::from_str(text).ok()?;
    // Only Node events carry a Node status; anything else is decoded whole.
    match ev {
        KubeWatchEvent::Added(_) | KubeWatchEvent::Modified(_) | KubeWatchEvent::Deleted(_) => {
            Some(ev)
        }
        KubeWatchEvent::Bookmark(_) | KubeWatchEvent::Error(_) => None,
    }
}

/// The whole line decoded. One UTF-8 pass over the line costs less than serde_json's check of
/// every string it parses from bytes (most of them keys of a few bytes).
fn full(line: &[u8]) -> Result<KubeWatchEvent<PeerNode>, NodeWatchError> {
    let start = || String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    let text = std::str::from_utf8(line).map_err(|source| NodeWatchError::Utf8 {
        start: start(),
        source,
    })?;
    serde_json::from_str(text).map_err(|source| NodeWatchError::Decode {
        start: start(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event's tag and node, comparable.
    fn node_of(ev: &KubeWatchEvent<PeerNode>) -> (&'static str, Option<PeerNode>) {
        match ev {
            KubeWatchEvent::Added(n) => ("ADDED", Some(n.clone())),
            KubeWatchEvent::Modified(n) => ("MODIFIED", Some(n.clone())),
            KubeWatchEvent::Deleted(n) => ("DELETED", Some(n.clone())),
            KubeWatchEvent::Bookmark(_) => ("BOOKMARK", None),
            KubeWatchEvent::Error(_) => ("ERROR", None),
        }
    }

    const META: &str = r#""metadata":{"name":"n7","resourceVersion":"42","annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"0e:fe:00:00:00:07\"}","flannel.alpha.coreos.com/public-ip":"172.16.0.7","example.com/trap":",\"status\":{\"spec\":{}}"},"managedFields":[{"fieldsV1":{"f:status":{"f:conditions":{}}}}]}"#;
    const SPEC: &str = r#""spec":{"podCIDR":"10.128.7.0/24","podCIDRs":["10.128.7.0/24"]}"#;
    const STATUS: &str = r#""status":{"conditions":[{"type":"Ready","status":"True"}],"images":[{"names":["a"],"sizeBytes":1}],"config":{"a":0,"status":{"x":1}}}"#;

    /// An event line with the object's members in the given order.
    fn line(kind: &str, members: &[&str], type_last: bool) -> String {
        let object = format!(
            r#"{{"kind":"Node","apiVersion":"v1",{}}}"#,
            members.join(",")
        );
        if type_last {
            format!(r#"{{"object":{object},"type":"{kind}"}}"#)
        } else {
            format!(r#"{{"type":"{kind}","object":{object}}}"#)
        }
    }

    #[test]
    fn the_fast_path_agrees_with_a_full_parse_in_every_member_order() {
        let orders: [[&str; 3]; 6] = [
            [META, SPEC, STATUS],
            [META, STATUS, SPEC],
            [SPEC, META, STATUS],
            [SPEC, STATUS, META],
            [STATUS, META, SPEC],
            [STATUS, SPEC, META],
        ];
        let mut scratch = Vec::new();
        for kind in ["ADDED", "MODIFIED", "DELETED"] {
            for members in &orders {
                for type_last in [false, true] {
                    let l = line(kind, members, type_last);
                    let fast = decode(l.as_bytes(), &mut scratch).unwrap();
                    let whole = full(l.as_bytes()).unwrap();
                    assert_eq!(node_of(&fast), node_of(&whole), "{l}");
                    let n = node_of(&fast).1.unwrap();
                    assert_eq!(n.pod_cidr, "10.128.7.0/24", "{l}");
                    assert_eq!(n.metadata.annotations.unwrap().len(), 2, "{l}");
                }
            }
        }
    }

    #[test]
    fn the_fast_path_is_taken_only_where_it_is_safe() {
        let mut scratch = Vec::new();
        // The API server's order: taken.
        let usual = line("MODIFIED", &[META, SPEC, STATUS], false);
        assert!(without_status(usual.as_bytes(), &mut scratch).is_some());
        // status before spec or metadata, or the tag after the object: refused.
        for l in [
            line("MODIFIED", &[META, STATUS, SPEC], false),
            line("MODIFIED", &[STATUS, META, SPEC], false),
            line("MODIFIED", &[META, SPEC, STATUS], true),
        ] {
            assert!(without_status(l.as_bytes(), &mut scratch).is_none(), "{l}");
        }
        // A `status` member nested deeper (here inside spec) unbalances the cut: refused, and
        // the full parse still gives the node.
        let nested = line(
            "MODIFIED",
            &[
                META,
                r#""spec":{"podCIDR":"10.0.0.0/24","status":{"a":1}}"#,
                STATUS,
            ],
            false,
        );
        assert!(without_status(nested.as_bytes(), &mut scratch).is_none());
        let n = node_of(&decode(nested.as_bytes(), &mut scratch).unwrap()).1;
        assert_eq!(n.unwrap().pod_cidr, "10.0.0.0/24");
        // Bookmarks and errors are decoded whole.
        let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"9"}}}"#;
        assert!(without_status(bookmark.as_bytes(), &mut scratch).is_none());
        assert!(matches!(
            decode(bookmark.as_bytes(), &mut scratch),
            Ok(KubeWatchEvent::Bookmark(_))
        ));
    }

    #[test]
    fn errors_come_from_the_full_parse() {
        let mut scratch = Vec::new();
        // Bad podCIDRs before the status: the cut text fails, and so does the whole line.
        let bad = line(
            "ADDED",
            &[META, r#""spec":{"podCIDRs":"not a list"}"#, STATUS],
            false,
        );
        let e = decode(bad.as_bytes(), &mut scratch).unwrap_err();
        assert!(matches!(e, NodeWatchError::Decode { .. }), "{e}");
        let e = decode(b"\xff\xfe", &mut scratch).unwrap_err();
        assert!(matches!(e, NodeWatchError::Utf8 { .. }), "{e}");
    }

    #[test]
    fn generated_nodes_take_the_fast_path_and_lose_nothing() {
        let mut scratch = Vec::new();
        for i in [0, 1, 4999] {
            let node = flannel_kube_emu::generate::node(i, "10.128.0.0/9".parse().unwrap());
            // As the emulator and API servers write events: the tag first.
            let l = format!(r#"{{"type":"MODIFIED","object":{node}}}"#);
            let fast = without_status(l.as_bytes(), &mut scratch).expect("fast path taken");
            assert!(
                scratch.len() * 2 < l.len(),
                "the status is most of the line"
            );
            assert_eq!(node_of(&fast), node_of(&full(l.as_bytes()).unwrap()));
        }
    }
}
