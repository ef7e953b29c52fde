//! flannel's rules against the real iptables and nft binaries, each test in its own network
//! namespace. The behaviour tests are written once and run in both modes; the damage they do is
//! the same in meaning, written in each mode's commands.

#[macro_use]
mod common;

use common::*;
use flannel_netlink::netns::{NetnsTarget, run_in_netns};
use flannel_rules::{PreviousValues, RuleConfig, RulesMode};

for_both_modes!(
    golden_listings_dual_stack,
    install_is_idempotent_without_writes,
    repairs_a_deleted_rule,
    repairs_flushed_chains,
    repairs_a_duplicated_rule,
    repairs_reordered_rules,
    repairs_a_foreign_rule_in_the_flannel_chain,
    repairs_deleted_chains_and_tables,
    repairs_ipv6,
    old_values_are_recycled,
    subnet_change_only_is_recycled,
    disabled_family_and_flags_are_removed,
    random_fully_can_be_disabled,
    remove_all_removes_everything_once,
);

fn golden_listings_dual_stack(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        start(mode, dual_stack()).await;
        assert_state(mode, &dual_stack());
        assert_nothing_of(other(mode));
    })
    .unwrap();
}

fn install_is_idempotent_without_writes(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        start(mode, dual_stack()).await;
        let before = full_state(mode);
        // A restarted daemon: new managers over the same kernel state.
        let (again, runner) = start(mode, dual_stack()).await;
        // Same rules (and, in nftables mode, the same handles): nothing was rewritten.
        assert_eq!(full_state(mode), before);
        assert!(runner.writes().is_empty(), "{:?}", runner.writes());
        assert!(!again.check_and_repair().await.unwrap());
    })
    .unwrap();
}

fn repairs_a_deleted_rule(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        match mode {
            RulesMode::Iptables => _ = sh("iptables -t nat -D FLANNEL-POSTRTG 3"),
            RulesMode::Nftables => nft_delete_rule(
                false,
                "postrtg",
                "ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24",
            ),
        }
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

fn repairs_flushed_chains(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        let (masq, forward) = match mode {
            RulesMode::Iptables => (
                "iptables -t nat -F FLANNEL-POSTRTG",
                "iptables -F FLANNEL-FWD",
            ),
            RulesMode::Nftables => (
                "nft flush chain ip flannel-ipv4 postrtg",
                "nft flush chain ip flannel-ipv4 forward",
            ),
        };
        sh(masq);
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
        sh(forward);
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

fn repairs_a_duplicated_rule(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        sh(match mode {
            RulesMode::Iptables => {
                "iptables -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT"
            }
            RulesMode::Nftables => "nft add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept",
        });
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

fn repairs_reordered_rules(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        match mode {
            // Move the masquerade-everything rule to the top, before the RETURNs.
            RulesMode::Iptables => {
                _ = sh(
                    "iptables -t nat -D FLANNEL-POSTRTG 5 && iptables -t nat -I FLANNEL-POSTRTG 1 \
                 -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment 'flanneld masq' \
                 -j MASQUERADE --random-fully",
                )
            }
            // Move the kube-proxy mark rule to the end.
            RulesMode::Nftables => {
                nft_delete_rule(false, "postrtg", "meta mark");
                nft_script(
                    "add rule ip flannel-ipv4 postrtg meta mark & 0x4000 == 0x4000 return\n",
                );
            }
        }
        assert_ne!(listing(mode, false), expected(mode, &v4_only(), false));
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

fn repairs_a_foreign_rule_in_the_flannel_chain(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        sh(match mode {
            RulesMode::Iptables => "iptables -t nat -I FLANNEL-POSTRTG 1 -j RETURN",
            // Statements flannel never writes (ct state, counter) read back as well.
            RulesMode::Nftables => {
                "nft insert rule ip flannel-ipv4 postrtg ct state established,related counter return"
            }
        });
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

fn repairs_deleted_chains_and_tables(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, dual_stack()).await;
        // The IPv4 forward chain goes.
        sh(match mode {
            RulesMode::Iptables => {
                "iptables -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD \
                 && iptables -F FLANNEL-FWD && iptables -X FLANNEL-FWD"
            }
            RulesMode::Nftables => "nft delete chain ip flannel-ipv4 forward",
        });
        assert_repairs(mode, &*m, &runner, &dual_stack()).await;
        // Everything of IPv6 goes.
        sh(match mode {
            RulesMode::Iptables => {
                "ip6tables -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD \
                 && ip6tables -F FLANNEL-FWD && ip6tables -X FLANNEL-FWD \
                 && ip6tables -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG \
                 && ip6tables -t nat -F FLANNEL-POSTRTG && ip6tables -t nat -X FLANNEL-POSTRTG"
            }
            RulesMode::Nftables => "nft delete table ip6 flannel-ipv6",
        });
        assert_eq!(listing(mode, true), expected(mode, &v4_only(), true));
        assert_repairs(mode, &*m, &runner, &dual_stack()).await;
    })
    .unwrap();
}

fn repairs_ipv6(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, dual_stack()).await;
        match mode {
            RulesMode::Iptables => {
                _ = sh("ip6tables -t nat -D FLANNEL-POSTRTG 2 && ip6tables -F FLANNEL-FWD")
            }
            RulesMode::Nftables => {
                nft_delete_rule(true, "postrtg", "ip6 saddr fd00:10:244:1::/64");
                sh("nft flush chain ip6 flannel-ipv6 forward");
            }
        }
        // Checks both families: IPv4 was intact and stays so.
        assert_repairs(mode, &*m, &runner, &dual_stack()).await;
    })
    .unwrap();
}

fn old_values_are_recycled(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        start(mode, dual_stack()).await;
        let config = RuleConfig {
            v4: Some(nets_v4("10.245.0.0/16", "10.245.7.0/24")),
            v6: Some(nets_v6("fd00:10:245::/56", "fd00:10:245:7::/64")),
            previous: previous_dual_stack(),
            ..dual_stack()
        };
        let (b, _) = start(mode, config).await;
        assert_state(mode, &config);
        let all = full_state(mode);
        assert!(!all.contains("10.244."), "{all}");
        assert!(!all.contains("fd00:10:244:"), "{all}");
        assert!(!b.check_and_repair().await.unwrap());
    })
    .unwrap();
}

fn subnet_change_only_is_recycled(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        start(mode, v4_only()).await;
        let config = RuleConfig {
            v4: Some(nets_v4(NETWORK_V4, "10.244.9.0/24")),
            previous: PreviousValues {
                v4: Some(nets_v4(NETWORK_V4, "10.244.1.1/24")),
                v6: None,
            },
            ..v4_only()
        };
        start(mode, config).await;
        assert_state(mode, &config);
        let all = full_state(mode);
        assert!(!all.contains("10.244.1.0/24"), "{all}");
    })
    .unwrap();
}

fn disabled_family_and_flags_are_removed(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        start(mode, dual_stack()).await;
        // Restart without IPv6 and without forward rules; subnet.env still names the IPv6 network.
        let no_forward = RuleConfig {
            forward_rules: false,
            previous: previous_dual_stack(),
            ..v4_only()
        };
        start(mode, no_forward).await;
        assert_state(mode, &no_forward);
        // Restart without masquerading.
        let no_masq = RuleConfig {
            ip_masq: false,
            previous: PreviousValues {
                v6: None,
                ..previous_dual_stack()
            },
            ..v4_only()
        };
        start(mode, no_masq).await;
        assert_state(mode, &no_masq);
    })
    .unwrap();
}

fn random_fully_can_be_disabled(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let config = RuleConfig {
            random_fully_disabled: true,
            ..v4_only()
        };
        let (m, _) = start(mode, config).await;
        assert_state(mode, &config);
        let all = full_state(mode);
        assert!(!all.contains("random"), "{all}");
        assert!(!m.check_and_repair().await.unwrap());
    })
    .unwrap();
}

fn remove_all_removes_everything_once(mode: RulesMode) {
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, dual_stack()).await;
        m.remove_all().await.unwrap();
        assert_nothing_of(mode);
        runner.clear();
        m.remove_all().await.unwrap();
        // Nothing is left to remove, nor to repair.
        assert!(!m.check_and_repair().await.unwrap());
        assert!(runner.writes().is_empty(), "{:?}", runner.writes());
        assert_nothing_of(mode);
    })
    .unwrap();
}

// Damage only one mode can have: iptables jumps and rules in the built-in chains, nft hooks,
// table comments and chains.

#[test]
fn iptables_repairs_missing_and_duplicated_jumps() {
    let mode = RulesMode::Iptables;
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        let jump = "POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG";
        sh(&format!("iptables -t nat -D {jump}"));
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
        sh(&format!(
            "iptables -t nat -A {jump} && iptables -t nat -A {jump}"
        ));
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
        sh("iptables -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD");
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

#[test]
fn iptables_legacy_rules_in_postrouting_are_removed() {
    let mode = RulesMode::Iptables;
    run_in_netns(NetnsTarget::Fresh, move || async move {
        // What flannel before FLANNEL-POSTRTG put straight into POSTROUTING.
        sh(
            "iptables -t nat -A POSTROUTING -s 10.1.0.0/16 -d 10.1.0.0/16 \
            -m comment --comment 'flanneld masq' -j RETURN",
        );
        start(mode, v4_only()).await;
        assert_state(mode, &v4_only());
    })
    .unwrap();
}

#[test]
fn iptables_foreign_rules_are_kept_and_the_jump_is_appended_after_them() {
    let mode = RulesMode::Iptables;
    run_in_netns(NetnsTarget::Fresh, move || async move {
        sh("iptables -t nat -A POSTROUTING -o lo -j RETURN");
        let (m, runner) = start(mode, v4_only()).await;
        let nat = sh("iptables -t nat -S POSTROUTING");
        assert_eq!(
            nat,
            "-P POSTROUTING ACCEPT\n\
             -A POSTROUTING -o lo -j RETURN\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        );
        runner.clear();
        assert!(!m.check_and_repair().await.unwrap());
        assert!(runner.writes().is_empty());
    })
    .unwrap();
}

#[test]
fn nftables_repairs_a_changed_hook_and_removes_foreign_chains() {
    let mode = RulesMode::Nftables;
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        nft_script(
            "delete chain ip flannel-ipv4 forward\n\
             add chain ip flannel-ipv4 forward { comment \"chain to accept flannel traffic\"; type filter hook forward priority 10; policy accept; }\n\
             add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n\
             add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n\
             add chain ip flannel-ipv4 stray\n\
             add rule ip flannel-ipv4 stray counter\n",
        );
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}

#[test]
fn nftables_repairs_a_table_without_its_comment() {
    let mode = RulesMode::Nftables;
    run_in_netns(NetnsTarget::Fresh, move || async move {
        let (m, runner) = start(mode, v4_only()).await;
        nft_script(
            "delete table ip flannel-ipv4\n\
             add table ip flannel-ipv4\n\
             add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat; policy accept; }\n",
        );
        assert_repairs(mode, &*m, &runner, &v4_only()).await;
    })
    .unwrap();
}
