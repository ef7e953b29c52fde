//! Kubernetes NetworkPolicy enforced in the kernel: the `flannel-netpol` enforcer.
//!
//! The enforcer watches Pods, Namespaces and NetworkPolicies, keeps them stripped in a
//! [`cluster::ClusterState`], compiles that into the content of one nftables table of its own,
//! `inet flannel-netpol` ([`compile::compile()`] → [`ruleset::Ruleset`]), and brings the kernel
//! there with one atomic `nft -f` transaction that changes only what changed
//! ([`nft::plan()`] → [`nft::apply()`]). No packet waits for userspace and no update opens a
//! window without rules.
//!
//! The pure part (model, selectors, cluster state, address intervals, compile, plan) is
//! unit-tested without root; `nft` reads and applies the table in the current network
//! namespace; the daemon ([`daemon`]) wires watches, debounce, compile, plan and apply, with
//! metrics and `/healthz` ([`metrics`], served by flanneld's HTTP server).
//!
//! The table (IPv6 objects mirror the IPv4 ones; `<pid>` is `p` + 12 hex digits of FNV-1a
//! of `namespace/name`):
//! ```text
//! table inet flannel-netpol {
//!   set ingress-isolated-v4 { type ipv4_addr; }   local pods some Ingress policy selects
//!   set egress-isolated-v4  { type ipv4_addr; }   local pods some Egress policy selects
//!   set <pid>-sel-v4        { type ipv4_addr; }   local pods the policy selects
//!   set peers-<hash>-v4     { type ipv4_addr; }   peer pods of a peer list (shared)
//!   set blocks-<hash>-v4    { type ipv4_addr; flags interval; }   ipBlocks (shared)
//!   set <pid>-in0-named-v4  { type ipv4_addr . inet_proto . inet_service; }
//!   counter <pid>-drop-in, <pid>-drop-eg
//!   chain ingress  { forward, priority filter:     established/related accept,
//!                    ip daddr @ingress-isolated-v4 jump ingress-policies }
//!   chain egress   { forward, priority filter - 1: the same on saddr @egress-isolated-v4 }
//!   chain egress-input { input, priority filter - 1: pod to its own node }
//!   chain ingress-policies { ip daddr @<pid>-sel-v4 jump <pid>-in ...;
//!                            ip daddr @<pid>-sel-v4 counter name "<pid>-drop-in" drop ...; drop }
//!   chain <pid>-in { ip saddr @peers-<hash>-v4 meta l4proto tcp th dport 80 accept,
//!                    ip saddr @blocks-<hash>-v4 meta l4proto tcp th dport 80 accept ... }
//! }
//! ```
//! Every rule carries a comment with the fingerprint of its text (see [`ruleset`]), so a
//! restarted enforcer can tell which chains the kernel already holds exactly.

pub mod cli;
pub mod cluster;
pub mod compile;
pub mod daemon;
pub mod flows;
pub mod flowsrc;
pub mod interval;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod ruleset;
pub mod selector;

#[cfg(test)]
pub(crate) mod testing;
