//! nftables mode against the real nft binary, each test in its own network namespace.

mod common;

use common::*;
use flannel_rules::{PreviousValues, RuleConfig, RuleManager};

/// Asserts that repair restores the golden table, then that a second pass writes nothing.
async fn assert_repairs(manager: &dyn RuleManager, runner: &CountingRunner, v6: bool) {
    runner.clear();
    assert!(
        manager.check_and_repair().await.unwrap(),
        "damage was not detected"
    );
    assert_eq!(nft_table(v6), golden_nft(v6));
    runner.clear();
    assert!(!manager.check_and_repair().await.unwrap(), "repair churned");
    assert!(runner.writes().is_empty(), "{:?}", runner.writes());
}

#[test]
fn golden_tables_dual_stack() {
    in_netns(|| async {
        let (m, _) = nftables_manager(dual_stack());
        start(&m).await;
        assert_eq!(nft_table(false), golden_nft(false));
        assert_eq!(nft_table(true), golden_nft(true));
    });
}

#[test]
fn install_is_idempotent_without_writes() {
    in_netns(|| async {
        let (m, _) = nftables_manager(dual_stack());
        start(&m).await;
        let handles = run("nft", &["-a", "list", "ruleset"]);
        let (again, runner) = nftables_manager(dual_stack());
        start(&again).await;
        // Same rules with the same handles: nothing was rewritten.
        assert_eq!(run("nft", &["-a", "list", "ruleset"]), handles);
        assert!(runner.writes().is_empty(), "{:?}", runner.writes());
        assert!(!again.check_and_repair().await.unwrap());
    });
}

#[test]
fn repairs_a_deleted_rule() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(v4_only());
        start(&m).await;
        let handle = nft_handle(
            false,
            "postrtg",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24",
        );
        run(
            "nft",
            &[
                "delete",
                "rule",
                "ip",
                "flannel-ipv4",
                "postrtg",
                "handle",
                &handle,
            ],
        );
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_a_flushed_chain() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(v4_only());
        start(&m).await;
        run("nft", &["flush", "chain", "ip", "flannel-ipv4", "postrtg"]);
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_a_duplicated_rule() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(v4_only());
        start(&m).await;
        run(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "flannel-ipv4",
                "forward",
                "ip",
                "saddr",
                NETWORK_V4,
                "accept",
            ],
        );
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_reordered_rules() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(v4_only());
        start(&m).await;
        let handle = nft_handle(false, "postrtg", "meta mark");
        run(
            "nft",
            &[
                "delete",
                "rule",
                "ip",
                "flannel-ipv4",
                "postrtg",
                "handle",
                &handle,
            ],
        );
        nft_script("add rule ip flannel-ipv4 postrtg meta mark & 0x4000 == 0x4000 return\n");
        assert_ne!(nft_table(false), golden_nft(false));
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_deleted_chains_and_tables() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(dual_stack());
        start(&m).await;
        run("nft", &["delete", "chain", "ip", "flannel-ipv4", "forward"]);
        assert_repairs(&m, &runner, false).await;
        run("nft", &["delete", "table", "ip6", "flannel-ipv6"]);
        assert_repairs(&m, &runner, true).await;
        assert_eq!(nft_table(false), golden_nft(false));
    });
}

#[test]
fn repairs_a_changed_hook_and_removes_foreign_chains() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(v4_only());
        start(&m).await;
        nft_script(
            "delete chain ip flannel-ipv4 forward\n\
             add chain ip flannel-ipv4 forward { comment \"chain to accept flannel traffic\"; type filter hook forward priority 10; policy accept; }\n\
             add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n\
             add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n\
             add chain ip flannel-ipv4 stray\n\
             add rule ip flannel-ipv4 stray counter\n",
        );
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_a_table_without_its_comment() {
    in_netns(|| async {
        let (m, runner) = nftables_manager(v4_only());
        start(&m).await;
        nft_script(
            "delete table ip flannel-ipv4\n\
             add table ip flannel-ipv4\n\
             add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat; policy accept; }\n",
        );
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn old_values_are_recycled() {
    in_netns(|| async {
        let (a, _) = nftables_manager(dual_stack());
        start(&a).await;
        let config = RuleConfig {
            v4: Some(nets_v4("10.245.0.0/16", "10.245.7.0/24")),
            v6: Some(nets_v6("fd00:10:245::/56", "fd00:10:245:7::/64")),
            previous: PreviousValues {
                v4: Some(nets_v4(NETWORK_V4, SUBNET_V4)),
                v6: Some(nets_v6(NETWORK_V6, SUBNET_V6)),
            },
            ..dual_stack()
        };
        let (b, _) = nftables_manager(config);
        start(&b).await;
        let all = run("nft", &["list", "ruleset"]);
        assert!(!all.contains("10.244."), "{all}");
        assert!(!all.contains("fd00:10:244:"), "{all}");
        assert!(
            all.contains("ip saddr 10.245.7.0/24 ip daddr 10.245.0.0/16 return"),
            "{all}"
        );
        assert!(!b.check_and_repair().await.unwrap());
    });
}

#[test]
fn disabled_family_and_flags_are_removed() {
    in_netns(|| async {
        let (a, _) = nftables_manager(dual_stack());
        start(&a).await;
        let config = RuleConfig {
            ip_masq: false,
            previous: PreviousValues {
                v4: Some(nets_v4(NETWORK_V4, SUBNET_V4)),
                v6: Some(nets_v6(NETWORK_V6, SUBNET_V6)),
            },
            ..v4_only()
        };
        let (b, _) = nftables_manager(config);
        start(&b).await;
        assert_eq!(nft_tables(), "table ip flannel-ipv4\n");
        let table = nft_table(false);
        assert!(!table.contains("chain postrtg"), "{table}");
        assert!(table.contains("chain forward"), "{table}");
    });
}

#[test]
fn random_fully_can_be_disabled() {
    in_netns(|| async {
        let config = RuleConfig {
            random_fully_disabled: true,
            ..v4_only()
        };
        let (m, _) = nftables_manager(config);
        start(&m).await;
        assert_eq!(
            nft_table(false),
            golden_nft(false).replace(" fully-random", "")
        );
        assert!(!m.check_and_repair().await.unwrap());
    });
}
