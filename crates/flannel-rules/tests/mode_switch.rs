//! Switching between iptables and nftables mode leaves nothing of the other mode behind: at
//! start a manager of the other mode removes everything it ever installs (as the daemon does).

#[macro_use]
mod common;

use common::*;
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_rules::RulesMode;

for_both_modes!(switching_to_the_other_mode_and_back);

fn switching_to_the_other_mode_and_back(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        start(mode, dual_stack()).await;
        assert_state(mode, &dual_stack());

        // Switch: the rules of `mode` go, the other mode's appear.
        start(other(mode), dual_stack()).await;
        assert_nothing_of(mode);
        assert_state(other(mode), &dual_stack());

        // And back.
        start(mode, dual_stack()).await;
        assert_nothing_of(other(mode));
        assert_state(mode, &dual_stack());
    })
    .unwrap();
}

#[test]
fn iptables_remove_all_handles_duplicated_jumps_and_extra_references() {
    run_in_netns(NetnsTarget::Fresh, || async {
        start(RulesMode::Iptables, dual_stack()).await;
        // Damage of the kind upstream's cleanup cannot cope with: a second jump, and a reference
        // from another chain.
        sh("iptables -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG \
            && iptables -t nat -N OTHER && iptables -t nat -A OTHER -j FLANNEL-POSTRTG");
        // What the daemon in nftables mode does at start.
        let (ipt, runner) = manager(RulesMode::Iptables, dual_stack());
        ipt.remove_all().await.unwrap();
        let expected_nat = format!("{EMPTY_NAT}-N OTHER\n");
        assert_eq!(
            listing(RulesMode::Iptables, false),
            [expected_nat.as_str(), EMPTY_FILTER]
        );
        assert_eq!(listing(RulesMode::Iptables, true), [EMPTY_NAT, EMPTY_FILTER]);
        // Nothing left to do the second time.
        runner.clear();
        ipt.remove_all().await.unwrap();
        assert!(runner.writes().is_empty(), "{:?}", runner.writes());
        assert_eq!(
            listing(RulesMode::Iptables, false),
            [expected_nat.as_str(), EMPTY_FILTER]
        );
    })
    .unwrap();
}
