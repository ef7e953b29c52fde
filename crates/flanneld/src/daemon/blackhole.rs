//! `--ip-blackhole-route` (for Canal): traffic to unused addresses of our own subnets is
//! dropped instead of following the default route out of the node.

use flannel_netlink::{Netlink, Route, RouteFilter, RouteKind};
use flannel_types::{IpFamily, Lease};
use tracing::{info, warn};

/// Adds the blackhole route for each of our subnets when missing. Failures are logged and
/// retried on the next rule resync: they never stop the daemon.
pub(super) async fn ensure_blackhole(nl: &Netlink, lease: &Lease) {
    for family in IpFamily::ALL {
        let Some(net) = lease.subnet_of(family) else {
            continue;
        };
        let have = match nl
            .routes(&RouteFilter::main().family(family).within(net))
            .await
        {
            Ok(rs) => rs
                .iter()
                .any(|r| r.dst == net && r.kind == RouteKind::Blackhole),
            Err(e) => {
                warn!("listing routes for the blackhole check: {e}");
                continue;
            }
        };
        if !have {
            match nl.add_route(&Route::blackhole(net)).await {
                Ok(()) => info!("added blackhole route for {net}"),
                Err(e) if e.is_already_exists() => {}
                Err(e) => warn!("adding blackhole route for {net}: {e}"),
            }
        }
    }
}
