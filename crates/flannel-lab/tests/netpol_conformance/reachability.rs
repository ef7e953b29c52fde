//! The expected truth table of one probe, built the way upstream's `Reachability` builds it:
//! start from "everything connects", then state what the policies change.

use super::model::PodRef;
use super::truth_table::TruthTable;

/// Matches pods by namespace and/or name; an empty field matches everything (upstream's `Peer`).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Namespace to match, `None` for any.
    pub ns: Option<&'static str>,
    /// Pod name to match, `None` for any.
    pub pod: Option<&'static str>,
}

impl Peer {
    /// Every pod.
    pub fn any() -> Peer {
        Peer::default()
    }

    /// Every pod of one namespace.
    pub fn ns(ns: &'static str) -> Peer {
        Peer {
            ns: Some(ns),
            pod: None,
        }
    }

    /// One pod.
    pub fn pod(ns: &'static str, pod: &'static str) -> Peer {
        Peer {
            ns: Some(ns),
            pod: Some(pod),
        }
    }

    /// Whether `p` is one of the pods this peer names.
    pub fn matches(&self, p: &PodRef) -> bool {
        self.ns.is_none_or(|ns| ns == p.ns) && self.pod.is_none_or(|n| n == p.name)
    }
}

/// The expected connectivity of one probe round.
#[derive(Debug, Clone)]
pub struct Reachability {
    /// The expected table.
    pub expected: TruthTable,
}

impl Reachability {
    /// Every pair set to `default` (upstream's cases all start from `true`).
    pub fn new(pods: Vec<PodRef>, default: bool) -> Reachability {
        Reachability {
            expected: TruthTable::new(pods, Some(default)),
        }
    }

    /// One pair.
    pub fn expect(mut self, from: &str, to: &str, connected: bool) -> Reachability {
        self.expected
            .set(&super::model::pod(from), &super::model::pod(to), connected);
        self
    }

    /// Everything `pod` receives.
    pub fn expect_all_ingress(mut self, pod: &str, connected: bool) -> Reachability {
        self.expected.set_all_to(&super::model::pod(pod), connected);
        self
    }

    /// Everything `pod` sends.
    pub fn expect_all_egress(mut self, pod: &str, connected: bool) -> Reachability {
        self.expected
            .set_all_from(&super::model::pod(pod), connected);
        self
    }

    /// `to` receives only from `froms` (upstream: `ExpectAllIngress(to, false)` then `Expect`s).
    pub fn ingress_only_from(self, to: &str, froms: &[&str]) -> Reachability {
        froms
            .iter()
            .fold(self.expect_all_ingress(to, false), |r, f| {
                r.expect(f, to, true)
            })
    }

    /// `from` sends only to `tos` (upstream: `ExpectAllEgress(from, false)` then `Expect`s).
    pub fn egress_only_to(self, from: &str, tos: &[&str]) -> Reachability {
        tos.iter()
            .fold(self.expect_all_egress(from, false), |r, t| {
                r.expect(from, t, true)
            })
    }

    /// Every pair whose source matches `from` and destination matches `to`.
    pub fn expect_peer(mut self, from: Peer, to: Peer, connected: bool) -> Reachability {
        for (f, t) in self.expected.pairs() {
            if from.matches(&f) && to.matches(&t) {
                self.expected.set(&f, &t, connected);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Model, pod};
    use super::*;

    fn r() -> Reachability {
        Reachability::new(Model::standard().all_pods(), true)
    }

    #[test]
    fn peers_match_by_namespace_and_name() {
        assert!(Peer::any().matches(&pod("z/c")));
        assert!(Peer::ns("x").matches(&pod("x/c")));
        assert!(!Peer::ns("x").matches(&pod("y/c")));
        assert!(Peer::pod("y", "b").matches(&pod("y/b")));
        assert!(!Peer::pod("y", "b").matches(&pod("x/b")));
    }

    #[test]
    fn expectations_apply_in_order_later_ones_win() {
        // Upstream's "client side egress denial" table: x/a only reaches y/a, y/a only hears
        // x/a, nobody reaches y/b.
        let r = r()
            .expect_peer(Peer::pod("x", "a"), Peer::any(), false)
            .expect_peer(Peer::any(), Peer::pod("y", "a"), false)
            .expect_peer(Peer::pod("x", "a"), Peer::pod("y", "a"), true)
            .expect_peer(Peer::any(), Peer::pod("y", "b"), false);
        let t = &r.expected;
        assert_eq!(t.get(&pod("x/a"), &pod("y/a")), Some(true));
        assert_eq!(t.get(&pod("x/a"), &pod("x/b")), Some(false));
        assert_eq!(t.get(&pod("x/b"), &pod("y/a")), Some(false));
        assert_eq!(t.get(&pod("z/c"), &pod("y/b")), Some(false));
        assert_eq!(t.get(&pod("z/c"), &pod("y/c")), Some(true));
        let falses = t
            .pairs()
            .iter()
            .filter(|(f, to)| t.get(f, to) == Some(false))
            .count();
        // Row x/a: 8 false (all but y/a); column y/a: 8 more; column y/b: 9, one (x/a) shared.
        assert_eq!(falses, 8 + 8 + 9 - 1);
    }

    #[test]
    fn all_ingress_and_egress_cover_row_and_column() {
        let r = r()
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true)
            .expect_all_egress("z/b", false);
        let t = &r.expected;
        assert_eq!(t.get(&pod("x/c"), &pod("x/a")), Some(false));
        assert_eq!(t.get(&pod("x/b"), &pod("x/a")), Some(true));
        assert_eq!(t.get(&pod("x/a"), &pod("x/c")), Some(true));
        assert_eq!(t.get(&pod("z/b"), &pod("x/b")), Some(false));
        let only = super::Reachability::new(Model::standard().all_pods(), true)
            .ingress_only_from("x/a", &["x/b"])
            .egress_only_to("z/b", &["y/c"]);
        let manual = super::Reachability::new(Model::standard().all_pods(), true)
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true)
            .expect_all_egress("z/b", false)
            .expect("z/b", "y/c", true);
        assert_eq!(only.expected, manual.expected);
    }
}
