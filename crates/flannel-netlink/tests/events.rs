//! The link event stream sees a device deletion.

mod common;

use std::time::Duration;

use common::{FRESH_NETNS, bounded, run, underlay};
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_netlink::{LinkEvent, LinkEvents, VxlanSpec};
use futures::StreamExt;

#[test]
fn link_events_report_new_and_deleted_links() {
    run_in_netns(NetnsTarget::Fresh, || {
        bounded(async {
            let (nl, eth0) = underlay().await;
            let mut events = LinkEvents::subscribe().unwrap();
            let spec = VxlanSpec {
                local: Some("192.0.2.1".parse().unwrap()),
                dev: Some(eth0.index),
                ..VxlanSpec::new("flannel.1", 1)
            };
            let dev = nl.create_vxlan(&spec).await.unwrap();
            run("ip link del flannel.1").await;

            let mut saw_new = false;
            let wait = async {
                while let Some(ev) = events.next().await {
                    match ev {
                        LinkEvent::NewLink {
                            index, ref name, ..
                        } if index == dev.index => {
                            assert_eq!(name, "flannel.1");
                            saw_new = true;
                        }
                        LinkEvent::DelLink { index, name } if index == dev.index => {
                            assert_eq!(name, "flannel.1");
                            return true;
                        }
                        _ => {}
                    }
                }
                false
            };
            let deleted = tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("no DelLink event within 10 s");
            assert!(deleted, "event stream ended");
            assert!(
                saw_new,
                "NewLink for the created device was not seen before its deletion"
            );
        })
    })
    .expect(FRESH_NETNS);
}
