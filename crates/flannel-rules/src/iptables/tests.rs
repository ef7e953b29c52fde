//! Golden `iptables-restore` payloads and the reconcile decisions, with a scripted runner.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::fixtures::{config, v6};
use crate::manager::RuleManager;
use crate::runner::fake::{Call, FakeRunner, fail, ok};

const EMPTY_NAT: &str =
    "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n";
const EMPTY_FILTER: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";

/// A runner answering `--version` with `version` and every listing from `listings`
/// (key: "iptables nat"), empty tables otherwise; restores succeed.
fn runner(version: &'static str, listings: HashMap<String, String>) -> Arc<FakeRunner> {
    Arc::new(FakeRunner::new(move |command, _| {
        let words: Vec<&str> = command.split(' ').collect();
        match words.as_slice() {
            [prog, "--version"] => ok(&format!("{prog} v{version} (nf_tables)\n")),
            [prog, .., "-t", table, "-S"] => ok(&table_text(&listings, prog, table)),
            [prog, .., "-t", table, "-S", chain] => {
                // Like iptables: the chain's own lines, or exit status 1 if it does not exist.
                let text = table_text(&listings, prog, table);
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.split(' ').nth(1) == Some(*chain))
                    .collect();
                if lines.is_empty() {
                    fail("iptables: No chain/target/match by that name.\n")
                } else {
                    ok(&(lines.join("\n") + "\n"))
                }
            }
            [_, "--noflush", ..] => ok(""),
            _ => fail(&format!("unexpected command {command}")),
        }
    }))
}

fn table_text(listings: &HashMap<String, String>, prog: &str, table: &str) -> String {
    let default = if table == "nat" {
        EMPTY_NAT
    } else {
        EMPTY_FILTER
    };
    listings
        .get(&format!("{prog} {table}"))
        .map(String::as_str)
        .unwrap_or(default)
        .to_string()
}

fn restores(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| c.command.contains("-restore"))
        .map(|c| (c.command.clone(), c.stdin.clone().unwrap_or_default()))
        .collect()
}

const GOLDEN_V4_MASQ_RANDOM: &str = "*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
COMMIT
";

const GOLDEN_V4_MASQ_PLAIN: &str = "*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
COMMIT
";

const GOLDEN_V6_MASQ_RANDOM: &str = "*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244:1::/64 -d fd00:10:244::/56 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:1::/64 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:1::/64 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
COMMIT
";

const GOLDEN_V4_FORWARD: &str = "*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD
COMMIT
";

const GOLDEN_V6_FORWARD: &str = "*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s fd00:10:244::/56 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FLANNEL-FWD -d fd00:10:244::/56 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD
COMMIT
";

#[tokio::test]
async fn fresh_v4_masquerade_with_random_fully() {
    let fake = runner("1.8.9", HashMap::new());
    let m = IptablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    let r = restores(&fake.calls());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "iptables-restore --noflush --wait");
    assert_eq!(r[0].1, GOLDEN_V4_MASQ_RANDOM);
}

#[tokio::test]
async fn old_iptables_gets_neither_random_fully_nor_wait() {
    let fake = runner("1.6.1", HashMap::new());
    let m = IptablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    let r = restores(&fake.calls());
    assert_eq!(r[0].0, "iptables-restore --noflush");
    assert_eq!(r[0].1, GOLDEN_V4_MASQ_PLAIN);
    // Listings are run without -w too, one chain at a time.
    let commands: Vec<String> = fake.calls().into_iter().map(|c| c.command).collect();
    assert!(
        commands.contains(&"iptables -t nat -S POSTROUTING".to_string()),
        "{commands:?}"
    );
    assert!(
        commands.contains(&"iptables -t nat -S FLANNEL-POSTRTG".to_string()),
        "{commands:?}"
    );
}

#[tokio::test]
async fn random_fully_flag_disables_it() {
    let fake = runner("1.8.9", HashMap::new());
    let mut cfg = config(true, false, true, true);
    cfg.random_fully_disabled = true;
    let m = IptablesManager::new(cfg, fake.clone());
    m.install_masquerade().await.unwrap();
    let r = restores(&fake.calls());
    assert_eq!(r[0].0, "iptables-restore --noflush --wait");
    assert_eq!(r[0].1, GOLDEN_V4_MASQ_PLAIN);
}

#[tokio::test]
async fn fresh_dual_stack_masquerade_and_forward() {
    let fake = runner("1.8.9", HashMap::new());
    let m = IptablesManager::new(config(true, true, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    let r = restores(&fake.calls());
    let got: Vec<(&str, &str)> = r.iter().map(|(c, s)| (c.as_str(), s.as_str())).collect();
    assert_eq!(
        got,
        [
            ("iptables-restore --noflush --wait", GOLDEN_V4_MASQ_RANDOM),
            ("ip6tables-restore --noflush --wait", GOLDEN_V6_MASQ_RANDOM),
            ("iptables-restore --noflush --wait", GOLDEN_V4_FORWARD),
            ("ip6tables-restore --noflush --wait", GOLDEN_V6_FORWARD),
        ]
    );
}

#[tokio::test]
async fn repair_writes_one_transaction_per_family_covering_both_tables() {
    let fake = runner("1.8.9", HashMap::new());
    let m = IptablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    fake.calls.lock().unwrap().clear();
    // The fake kernel still shows empty tables, so everything is missing.
    assert!(m.check_and_repair().await.unwrap());
    let r = restores(&fake.calls());
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].1,
        format!("{GOLDEN_V4_MASQ_RANDOM}{GOLDEN_V4_FORWARD}")
    );
}

fn healthy_nat_v4() -> String {
    let mut text = String::from(EMPTY_NAT);
    text.push_str("-N FLANNEL-POSTRTG\n");
    text.push_str("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n");
    for line in GOLDEN_V4_MASQ_RANDOM
        .lines()
        .filter(|l| l.starts_with("-A FLANNEL-POSTRTG"))
    {
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn healthy_rules_cause_no_write() {
    let listings = HashMap::from([("iptables nat".to_string(), healthy_nat_v4())]);
    let fake = runner("1.8.9", listings);
    let m = IptablesManager::new(config(true, false, true, false), fake.clone());
    m.install_masquerade().await.unwrap();
    assert!(!m.check_and_repair().await.unwrap());
    assert!(restores(&fake.calls()).is_empty());
}

#[tokio::test]
async fn masq_off_removes_leftovers_and_installs_nothing() {
    let listings = HashMap::from([("iptables nat".to_string(), healthy_nat_v4())]);
    let fake = runner("1.8.9", listings);
    let m = IptablesManager::new(config(true, false, false, false), fake.clone());
    m.install_masquerade().await.unwrap();
    let r = restores(&fake.calls());
    assert_eq!(
        r[0].1,
        "*nat\n\
         -D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
         -F FLANNEL-POSTRTG\n\
         -X FLANNEL-POSTRTG\n\
         COMMIT\n"
    );
    // Nothing is kept for repair.
    fake.calls.lock().unwrap().clear();
    assert!(!m.check_and_repair().await.unwrap());
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn forward_off_with_clean_tables_writes_nothing() {
    let fake = runner("1.8.9", HashMap::new());
    let m = IptablesManager::new(config(true, false, true, false), fake.clone());
    m.install_forward().await.unwrap();
    assert!(restores(&fake.calls()).is_empty());
}

#[tokio::test]
async fn unconfigured_family_is_left_alone_unless_it_was_used_before() {
    let fake = runner("1.8.9", HashMap::new());
    let m = IptablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| c.command.starts_with("ip6tables"))
    );

    let listings = HashMap::from([(
        "ip6tables nat".to_string(),
        format!(
            "{EMPTY_NAT}-N FLANNEL-POSTRTG\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-A FLANNEL-POSTRTG -s fd00::/56 -m comment --comment \"flanneld masq\" -j RETURN\n"
        ),
    )]);
    let fake = runner("1.8.9", listings);
    let mut cfg = config(true, false, true, true);
    cfg.previous.v6 = Some(v6());
    let m = IptablesManager::new(cfg, fake.clone());
    m.install_masquerade().await.unwrap();
    let r = restores(&fake.calls());
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].0, "ip6tables-restore --noflush --wait");
    assert!(r[1].1.contains("-X FLANNEL-POSTRTG"), "{}", r[1].1);
}

#[tokio::test]
async fn missing_iptables_is_a_clear_error_for_install_but_not_for_removal() {
    let fake = Arc::new(FakeRunner::new(|_, _| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }));
    let m = IptablesManager::new(config(true, false, true, false), fake.clone());
    let err = m.install_masquerade().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`iptables` was not found in PATH: install the iptables package"
    );
    // Forward rules are off: removing leftovers without iptables is a no-op.
    m.install_forward().await.unwrap();
}

#[tokio::test]
async fn restore_failure_carries_stderr() {
    let fake = Arc::new(FakeRunner::new(|command, _| {
        if command.ends_with("--version") {
            ok("iptables v1.8.9 (nf_tables)\n")
        } else if command.contains("-restore") {
            fail("iptables-restore: line 3 failed\n")
        } else {
            ok(EMPTY_NAT)
        }
    }));
    let m = IptablesManager::new(config(true, false, true, false), fake);
    let err = m.install_masquerade().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`iptables-restore --noflush --wait` failed (exit status 1): iptables-restore: line 3 failed"
    );
}

#[tokio::test]
async fn remove_all_removes_both_chains_of_both_families_whatever_the_config() {
    let nat = format!(
        "{EMPTY_NAT}-N FLANNEL-POSTRTG\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-A FLANNEL-POSTRTG -j RETURN\n"
    );
    let filter = format!(
        "{EMPTY_FILTER}-N FLANNEL-FWD\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FLANNEL-FWD -j ACCEPT\n"
    );
    let listings = HashMap::from([
        ("iptables nat".to_string(), nat.clone()),
        ("iptables filter".to_string(), filter.clone()),
        ("ip6tables nat".to_string(), nat),
        ("ip6tables filter".to_string(), filter),
    ]);
    let fake = runner("1.8.9", listings);
    // A v4-only configuration: everything iptables mode may have installed goes all the same.
    let m = IptablesManager::new(config(true, false, true, true), fake.clone());
    m.remove_all().await.unwrap();
    let r = restores(&fake.calls());
    let expected = "*nat\n\
        -D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
        -F FLANNEL-POSTRTG\n\
        -X FLANNEL-POSTRTG\n\
        COMMIT\n\
        *filter\n\
        -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
        -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
        -F FLANNEL-FWD\n\
        -X FLANNEL-FWD\n\
        COMMIT\n";
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0],
        (
            "iptables-restore --noflush --wait".to_string(),
            expected.to_string()
        )
    );
    assert_eq!(
        r[1],
        (
            "ip6tables-restore --noflush --wait".to_string(),
            expected.to_string()
        )
    );
}

#[tokio::test]
async fn remove_all_stops_repairs_and_tolerates_missing_iptables() {
    let fake = runner("1.8.9", HashMap::new());
    let m = IptablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.remove_all().await.unwrap();
    fake.calls.lock().unwrap().clear();
    assert!(!m.check_and_repair().await.unwrap());
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());

    let none = Arc::new(FakeRunner::new(|_, _| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }));
    let m = IptablesManager::new(config(true, true, true, true), none.clone());
    m.remove_all().await.unwrap();
    assert_eq!(none.calls().len(), 2, "one --version per family");

    // A kernel without the IPv6 nat table: nothing to remove there.
    let no_v6 = Arc::new(FakeRunner::new(|command, _| {
        if command.ends_with("--version") {
            ok("ip6tables v1.8.9 (legacy)\n")
        } else if command.starts_with("ip6tables") {
            fail(
                "ip6tables v1.8.9 (legacy): can't initialize ip6tables table `nat': Table does not exist (do you need to insmod?)\n",
            )
        } else {
            ok(EMPTY_NAT)
        }
    }));
    IptablesManager::new(config(true, true, true, true), no_v6)
        .remove_all()
        .await
        .unwrap();
}

#[test]
fn version_parsing() {
    assert_eq!(
        parse_version("iptables v1.8.9 (nf_tables)"),
        Some((1, 8, 9))
    );
    assert_eq!(parse_version("ip6tables v1.6.2"), Some((1, 6, 2)));
    assert_eq!(parse_version("version unknown"), None);
    assert!(Caps::from_version((1, 6, 2)).random_fully);
    assert!(!Caps::from_version((1, 6, 1)).wait);
    assert!(Caps::from_version((2, 0, 0)).wait);
}
