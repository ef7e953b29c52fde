//! Typed wrapper over rtnetlink: the only crate of flannel-rs that names netlink types.
//!
//! Everything else in flannel-rs speaks the domain types defined here ([`LinkInfo`],
//! [`Route`], [`Neighbour`], [`Fdb`], ...), so rtnetlink's frequent API breaks stay in this
//! crate.
//!
//! * Queries for choosing the external interface: [`Netlink::links`],
//!   [`Netlink::addresses`], [`Netlink::default_route_link`], [`Netlink::route_get`].
//! * Data-plane primitives for the vxlan and host-gw backends: [`Netlink::create_vxlan`] and
//!   [`VxlanSpec::incompatibility`], addresses, routes, neighbours and FDB entries, each with a
//!   dump for reconciliation.
//! * [`Netlink::apply`]: many changes in few datagrams, with one result per change.
//! * [`LinkEvents`]: notice when a device is deleted under us.
//! * [`netns`]: run async code inside a network namespace (tests, lab).

mod addr;
mod batch;
mod error;
mod events;
mod link;
mod neigh;
mod netlink;
pub mod netns;
mod raw;
mod route;
mod types;
mod vxlan;

pub use addr::{AddrFlags, AddrInfo};
pub use batch::{BatchOp, BatchReport};
pub use error::{NetlinkError, Result};
pub use events::{LinkEvent, LinkEvents};
/// The address family type of every flannel-rs crate, re-exported so callers of this crate
/// need not name flannel-types for it.
pub use flannel_types::IpFamily;
pub use link::LinkInfo;
pub use neigh::{Fdb, FdbEntry, NeighFlags, Neighbour, NeighbourEntry, NudState};
pub use netlink::Netlink;
pub use route::{
    LOCAL_TABLE, MAIN_TABLE, Route, RouteFilter, RouteKind, RouteLookup, RouteProtocol,
};
pub use types::{MacAddr, ParseMacError, Scope};
pub use vxlan::{VxlanInfo, VxlanSpec};
