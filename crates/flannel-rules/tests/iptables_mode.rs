//! iptables mode against the real iptables binaries, each test in its own network namespace.

mod common;

use common::*;
use flannel_rules::{PreviousValues, RuleConfig, RuleManager};

/// Asserts that repair restores the golden listings, then that a second pass writes nothing.
async fn assert_repairs(manager: &dyn RuleManager, runner: &CountingRunner, v6: bool) {
    runner.clear();
    assert!(
        manager.check_and_repair().await.unwrap(),
        "damage was not detected"
    );
    assert_eq!(nat_listing(v6), golden_nat(v6));
    assert_eq!(filter_listing(v6), golden_filter(v6));
    runner.clear();
    assert!(!manager.check_and_repair().await.unwrap(), "repair churned");
    assert!(runner.writes().is_empty(), "{:?}", runner.writes());
}

#[test]
fn golden_listings_dual_stack() {
    in_netns(|| async {
        let (m, _) = iptables_manager(dual_stack());
        start(&m).await;
        assert_eq!(nat_listing(false), golden_nat(false));
        assert_eq!(filter_listing(false), golden_filter(false));
        assert_eq!(nat_listing(true), golden_nat(true));
        assert_eq!(filter_listing(true), golden_filter(true));
    });
}

#[test]
fn install_is_idempotent_without_writes() {
    in_netns(|| async {
        let (m, _) = iptables_manager(dual_stack());
        start(&m).await;
        let before = (nat_listing(false), filter_listing(false), nat_listing(true));
        // A restarted daemon: a new manager over the same kernel state.
        let (again, runner) = iptables_manager(dual_stack());
        start(&again).await;
        assert_eq!(
            (nat_listing(false), filter_listing(false), nat_listing(true)),
            before
        );
        assert!(runner.writes().is_empty(), "{:?}", runner.writes());
        assert!(!again.check_and_repair().await.unwrap());
    });
}

#[test]
fn repairs_a_deleted_rule() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        ipt_nat(false, &["-D", "FLANNEL-POSTRTG", "3"]);
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_a_flushed_chain() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        ipt_nat(false, &["-F", "FLANNEL-POSTRTG"]);
        assert_repairs(&m, &runner, false).await;
        ipt_filter(false, &["-F", "FLANNEL-FWD"]);
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_a_duplicated_rule() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        ipt_filter(
            false,
            &[
                "-A",
                "FLANNEL-FWD",
                "-s",
                NETWORK_V4,
                "-m",
                "comment",
                "--comment",
                "flanneld forward",
                "-j",
                "ACCEPT",
            ],
        );
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_reordered_rules() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        // Move the masquerade-everything rule to the top, before the RETURNs.
        ipt_nat(false, &["-D", "FLANNEL-POSTRTG", "5"]);
        ipt_nat(
            false,
            &[
                "-I",
                "FLANNEL-POSTRTG",
                "1",
                "-s",
                NETWORK_V4,
                "!",
                "-d",
                "224.0.0.0/4",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ],
        );
        assert_ne!(nat_listing(false), golden_nat(false));
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_a_foreign_rule_in_the_flannel_chain() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        ipt_nat(false, &["-I", "FLANNEL-POSTRTG", "1", "-j", "RETURN"]);
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_missing_and_duplicated_jumps() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        let jump = [
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ];
        let mut delete = vec!["-D"];
        delete.extend(jump);
        ipt_nat(false, &delete);
        assert_repairs(&m, &runner, false).await;

        let mut append = vec!["-A"];
        append.extend(jump);
        ipt_nat(false, &append);
        ipt_nat(false, &append);
        assert_repairs(&m, &runner, false).await;

        ipt_filter(
            false,
            &[
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "flanneld forward",
                "-j",
                "FLANNEL-FWD",
            ],
        );
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_deleted_chains() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        ipt_filter(
            false,
            &[
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "flanneld forward",
                "-j",
                "FLANNEL-FWD",
            ],
        );
        ipt_filter(false, &["-F", "FLANNEL-FWD"]);
        ipt_filter(false, &["-X", "FLANNEL-FWD"]);
        ipt_nat(
            false,
            &[
                "-D",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG",
            ],
        );
        ipt_nat(false, &["-F", "FLANNEL-POSTRTG"]);
        ipt_nat(false, &["-X", "FLANNEL-POSTRTG"]);
        assert_eq!(nat_listing(false), EMPTY_NAT);
        assert_repairs(&m, &runner, false).await;
    });
}

#[test]
fn repairs_ipv6() {
    in_netns(|| async {
        let (m, runner) = iptables_manager(dual_stack());
        start(&m).await;
        ipt_nat(true, &["-D", "FLANNEL-POSTRTG", "2"]);
        ipt_filter(true, &["-F", "FLANNEL-FWD"]);
        assert_repairs(&m, &runner, true).await;
        // IPv4 was intact and stays so.
        assert_eq!(nat_listing(false), golden_nat(false));
    });
}

#[test]
fn old_values_are_recycled() {
    in_netns(|| async {
        let (a, _) = iptables_manager(dual_stack());
        start(&a).await;
        let previous = PreviousValues {
            v4: Some(nets_v4(NETWORK_V4, SUBNET_V4)),
            v6: Some(nets_v6(NETWORK_V6, SUBNET_V6)),
        };
        let config = RuleConfig {
            v4: Some(nets_v4("10.245.0.0/16", "10.245.7.0/24")),
            v6: Some(nets_v6("fd00:10:245::/56", "fd00:10:245:7::/64")),
            previous,
            ..dual_stack()
        };
        let (b, _) = iptables_manager(config);
        start(&b).await;
        let all = format!(
            "{}{}{}{}",
            nat_listing(false),
            filter_listing(false),
            nat_listing(true),
            filter_listing(true)
        );
        assert!(!all.contains("10.244."), "{all}");
        assert!(!all.contains("fd00:10:244:"), "{all}");
        assert!(
            all.contains("-A FLANNEL-POSTRTG -s 10.245.7.0/24 -d 10.245.0.0/16"),
            "{all}"
        );
        assert_eq!(all.matches("-j FLANNEL-POSTRTG").count(), 2, "{all}");
        assert!(!b.check_and_repair().await.unwrap());
    });
}

#[test]
fn subnet_change_only_is_recycled() {
    in_netns(|| async {
        let (a, _) = iptables_manager(v4_only());
        start(&a).await;
        let config = RuleConfig {
            v4: Some(nets_v4(NETWORK_V4, "10.244.9.0/24")),
            previous: PreviousValues {
                v4: Some(nets_v4(NETWORK_V4, "10.244.1.1/24")),
                v6: None,
            },
            ..v4_only()
        };
        let (b, _) = iptables_manager(config);
        start(&b).await;
        let nat = nat_listing(false);
        assert!(!nat.contains("10.244.1.0/24"), "{nat}");
        assert_eq!(nat.matches("10.244.9.0/24").count(), 3, "{nat}");
    });
}

#[test]
fn disabled_family_and_flags_are_removed() {
    in_netns(|| async {
        let (a, _) = iptables_manager(dual_stack());
        start(&a).await;
        // Restart without IPv6 and without forward rules; subnet.env still names the IPv6 network.
        let config = RuleConfig {
            forward_rules: false,
            previous: PreviousValues {
                v4: Some(nets_v4(NETWORK_V4, SUBNET_V4)),
                v6: Some(nets_v6(NETWORK_V6, SUBNET_V6)),
            },
            ..v4_only()
        };
        let (b, _) = iptables_manager(config);
        start(&b).await;
        assert_eq!(nat_listing(false), golden_nat(false));
        assert_eq!(filter_listing(false), EMPTY_FILTER);
        assert_eq!(nat_listing(true), EMPTY_NAT);
        assert_eq!(filter_listing(true), EMPTY_FILTER);
    });
}

#[test]
fn random_fully_can_be_disabled() {
    in_netns(|| async {
        let config = RuleConfig {
            random_fully_disabled: true,
            ..v4_only()
        };
        let (m, _) = iptables_manager(config);
        start(&m).await;
        assert_eq!(
            nat_listing(false),
            golden_nat(false).replace(" --random-fully", "")
        );
        assert!(!m.check_and_repair().await.unwrap());
    });
}

#[test]
fn legacy_rules_in_postrouting_are_removed() {
    in_netns(|| async {
        // What flannel before FLANNEL-POSTRTG put straight into POSTROUTING.
        ipt_nat(
            false,
            &[
                "-A",
                "POSTROUTING",
                "-s",
                "10.1.0.0/16",
                "-d",
                "10.1.0.0/16",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "RETURN",
            ],
        );
        let (m, _) = iptables_manager(v4_only());
        start(&m).await;
        assert_eq!(nat_listing(false), golden_nat(false));
    });
}

#[test]
fn foreign_rules_are_kept_and_the_jump_is_appended_after_them() {
    in_netns(|| async {
        ipt_nat(false, &["-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"]);
        let (m, runner) = iptables_manager(v4_only());
        start(&m).await;
        let nat = nat_listing(false);
        let post: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING"))
            .collect();
        assert_eq!(
            post,
            [
                "-A POSTROUTING -o lo -j RETURN",
                "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
            ]
        );
        runner.clear();
        assert!(!m.check_and_repair().await.unwrap());
        assert!(runner.writes().is_empty());
    });
}
