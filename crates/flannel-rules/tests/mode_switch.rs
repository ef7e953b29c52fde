//! Switching between iptables and nftables mode leaves nothing of the other mode behind.

mod common;

use common::*;
use flannel_rules::RuleManager;

fn assert_no_iptables_leftovers() {
    for v6 in [false, true] {
        let nat = nat_listing(v6);
        let filter = filter_listing(v6);
        assert_eq!(nat, EMPTY_NAT, "v6={v6}");
        assert_eq!(filter, EMPTY_FILTER, "v6={v6}");
    }
}

#[test]
fn iptables_to_nftables_and_back() {
    in_netns(|| async {
        let (ipt, _) = iptables_manager(dual_stack());
        start(&ipt).await;
        assert_eq!(nat_listing(false), golden_nat(false));

        // Switch to nftables mode: the iptables chains and jumps go, the nft tables appear.
        let (nft, _) = nftables_manager(dual_stack());
        start(&nft).await;
        assert_no_iptables_leftovers();
        assert_eq!(nft_table(false), golden_nft(false));
        assert_eq!(nft_table(true), golden_nft(true));

        // And back: the nft tables go, the iptables rules are golden again.
        let (ipt, _) = iptables_manager(dual_stack());
        start(&ipt).await;
        let tables = nft_tables();
        assert!(!tables.contains("flannel"), "{tables}");
        assert_eq!(nat_listing(false), golden_nat(false));
        assert_eq!(filter_listing(false), golden_filter(false));
        assert_eq!(nat_listing(true), golden_nat(true));
        assert_eq!(filter_listing(true), golden_filter(true));
    });
}

#[test]
fn nftables_cleanup_handles_duplicated_jumps_and_extra_references() {
    in_netns(|| async {
        let (ipt, _) = iptables_manager(dual_stack());
        start(&ipt).await;
        // Damage of the kind upstream's cleanup cannot cope with: a second jump, and a reference
        // from another chain.
        ipt_nat(
            false,
            &[
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG",
            ],
        );
        ipt_nat(false, &["-N", "OTHER"]);
        ipt_nat(false, &["-A", "OTHER", "-j", "FLANNEL-POSTRTG"]);
        let (nft, runner) = nftables_manager(dual_stack());
        nft.cleanup_other_mode().await.unwrap();
        let expected_nat = format!("{EMPTY_NAT}-N OTHER\n");
        assert_eq!(nat_listing(false), expected_nat);
        assert_eq!(filter_listing(false), EMPTY_FILTER);
        assert_eq!(nat_listing(true), EMPTY_NAT);
        assert_eq!(filter_listing(true), EMPTY_FILTER);
        // Nothing left to do the second time.
        runner.clear();
        nft.cleanup_other_mode().await.unwrap();
        assert!(runner.writes().is_empty(), "{:?}", runner.writes());
        assert_eq!(nat_listing(false), expected_nat);
    });
}
