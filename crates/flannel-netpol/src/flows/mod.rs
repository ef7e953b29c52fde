//! Flow records: what passed and what NetworkPolicy dropped, per pod, served on `/flows`.
//!
//! The kernel sources (`crate::flowsrc`: conntrack NEW/DESTROY events, NFLOG of the drop
//! rules) report plain facts; a [`record::FlowRecord`] is built from them, named by
//! [`enrich::PodDirectory`] (IP → namespace/pod/node from the pods the enforcer watches),
//! counted in [`metrics::FlowMetrics`] and kept in the bounded [`ring::FlowRing`], which
//! answers queries ([`filter::FlowFilter`]) and feeds `follow` clients without ever making the
//! collector wait. Nothing here sits on the packet path: with nobody watching, the cost is
//! the kernel's event delivery and one append per event.
//!
//! `flannel-observe` ([`cli`], [`observe`], [`follow`], over [`client`]) asks every node's `/flows` with
//! the same filters and merges the answers.

pub mod cli;
pub mod client;
pub mod collector;
pub mod enrich;
pub mod filter;
pub mod follow;
pub mod http;
pub mod live;
pub mod metrics;
pub mod observe;
pub mod record;
pub mod ring;
pub mod sources;
