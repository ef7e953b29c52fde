//! Golden `nft -f -` scripts, listing parsing and the reconcile decisions, with a scripted runner.

use std::sync::{Arc, Mutex};

use super::listing::ListedChain;
use super::*;
use crate::config::{Networks, PreviousValues};
use crate::runner::fake::{Call, FakeRunner, fail, ok};

fn v4() -> Networks<ipnet::Ipv4Net> {
    Networks::v4(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.1.0/24".parse().unwrap(),
    )
}

fn v6() -> Networks<ipnet::Ipv6Net> {
    Networks::v6(
        "fd00:10:244::/56".parse().unwrap(),
        "fd00:10:244:1::/64".parse().unwrap(),
    )
}

fn config(v4_on: bool, v6_on: bool, masq: bool, forward: bool) -> RuleConfig {
    RuleConfig {
        v4: v4_on.then(v4),
        v6: v6_on.then(v6),
        ip_masq: masq,
        forward_rules: forward,
        random_fully_disabled: false,
        previous: PreviousValues::default(),
    }
}

const MISSING: &str = "Error: No such file or directory\nlist table ip flannel-ipv4\n";

/// A runner whose tables are given per `nft list table` target; `--check` succeeds when
/// `random_fully` is true; every `nft -f -` succeeds.
fn runner(random_fully: bool, tables: Vec<(&'static str, String)>) -> Arc<FakeRunner> {
    Arc::new(FakeRunner::new(move |command, _| {
        if command == "nft --check -f -" {
            return if random_fully {
                ok("")
            } else {
                fail("Error: Could not process rule: Operation not supported\n")
            };
        }
        if command == "nft -f -" {
            return ok("");
        }
        if let Some(target) = command.strip_prefix("nft list table ") {
            return match tables.iter().find(|(t, _)| *t == target) {
                Some((_, text)) => ok(text),
                None => fail(MISSING),
            };
        }
        fail(&format!("unexpected command {command}"))
    }))
}

fn scripts(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.command == "nft -f -")
        .map(|c| c.stdin.clone().unwrap_or_default())
        .collect()
}

const GOLDEN_V4_MASQ: &str = "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\"; }
add chain ip flannel-ipv4 postrtg { comment \"chain to manage traffic masquerading by flannel\"; type nat hook postrouting priority srcnat; policy accept; }
flush chain ip flannel-ipv4 postrtg
add rule ip flannel-ipv4 postrtg meta mark & 0x00004000 == 0x00004000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
";

const GOLDEN_V4_MASQ_PLAIN: &str = "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\"; }
add chain ip flannel-ipv4 postrtg { comment \"chain to manage traffic masquerading by flannel\"; type nat hook postrouting priority srcnat; policy accept; }
flush chain ip flannel-ipv4 postrtg
add rule ip flannel-ipv4 postrtg meta mark & 0x00004000 == 0x00004000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade
";

const GOLDEN_V6_MASQ: &str = "add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\"; }
add chain ip6 flannel-ipv6 postrtg { comment \"chain to manage traffic masquerading by flannel\"; type nat hook postrouting priority srcnat; policy accept; }
flush chain ip6 flannel-ipv6 postrtg
add rule ip6 flannel-ipv6 postrtg meta mark & 0x00004000 == 0x00004000 return
add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return
add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return
add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return
add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random
add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random
";

const GOLDEN_V4_FORWARD: &str = "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\"; }
add chain ip flannel-ipv4 forward { comment \"chain to accept flannel traffic\"; type filter hook forward priority filter; policy accept; }
flush chain ip flannel-ipv4 forward
add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept
add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept
";

const GOLDEN_V6_FORWARD: &str = "add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\"; }
add chain ip6 flannel-ipv6 forward { comment \"chain to accept flannel traffic\"; type filter hook forward priority filter; policy accept; }
flush chain ip6 flannel-ipv6 forward
add rule ip6 flannel-ipv6 forward ip6 saddr fd00:10:244::/56 accept
add rule ip6 flannel-ipv6 forward ip6 daddr fd00:10:244::/56 accept
";

/// `nft list table ip flannel-ipv4` of a healthy node, as nft 1.0.6 prints it.
const LISTED_V4: &str = "table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}

\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";

#[tokio::test]
async fn fresh_v4_masquerade_with_fully_random() {
    let fake = runner(true, vec![]);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    assert_eq!(scripts(&fake.calls()), [GOLDEN_V4_MASQ]);
    // The probe ran as a dry run.
    let probe = fake
        .calls()
        .into_iter()
        .find(|c| c.command == "nft --check -f -")
        .unwrap();
    assert!(probe.stdin.unwrap().contains("masquerade fully-random"));
}

#[tokio::test]
async fn fully_random_dropped_when_the_probe_fails_or_the_flag_says_so() {
    let fake = runner(false, vec![]);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    assert_eq!(scripts(&fake.calls()), [GOLDEN_V4_MASQ_PLAIN]);

    let fake = runner(true, vec![]);
    let mut cfg = config(true, false, true, true);
    cfg.random_fully_disabled = true;
    let m = NftablesManager::new(cfg, fake.clone());
    m.install_masquerade().await.unwrap();
    assert_eq!(scripts(&fake.calls()), [GOLDEN_V4_MASQ_PLAIN]);
    assert!(!fake.calls().iter().any(|c| c.command.contains("--check")));
}

#[tokio::test]
async fn fresh_dual_stack_masquerade_and_forward() {
    let fake = runner(true, vec![]);
    let m = NftablesManager::new(config(true, true, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    assert_eq!(
        scripts(&fake.calls()),
        [
            GOLDEN_V4_MASQ,
            GOLDEN_V6_MASQ,
            GOLDEN_V4_FORWARD,
            GOLDEN_V6_FORWARD
        ]
    );
}

#[tokio::test]
async fn masq_off_and_forward_off_write_nothing_on_a_clean_node() {
    let fake = runner(true, vec![]);
    let m = NftablesManager::new(config(true, true, false, false), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    assert!(scripts(&fake.calls()).is_empty());
}

#[tokio::test]
async fn healthy_table_causes_no_write() {
    let fake = runner(true, vec![("ip flannel-ipv4", LISTED_V4.to_string())]);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    assert!(!m.check_and_repair().await.unwrap());
    assert!(scripts(&fake.calls()).is_empty());
}

#[tokio::test]
async fn forward_off_removes_only_the_forward_chain() {
    let fake = runner(true, vec![("ip flannel-ipv4", LISTED_V4.to_string())]);
    let m = NftablesManager::new(config(true, false, true, false), fake.clone());
    m.install_forward().await.unwrap();
    assert_eq!(
        scripts(&fake.calls()),
        [
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\"; }\n\
          flush chain ip flannel-ipv4 forward\n\
          delete chain ip flannel-ipv4 forward\n"
        ]
    );
}

#[tokio::test]
async fn unconfigured_family_table_is_deleted() {
    let fake = runner(
        true,
        vec![("ip6 flannel-ipv6", "table ip6 flannel-ipv6 {\n}\n".into())],
    );
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    let s = scripts(&fake.calls());
    assert_eq!(s, [GOLDEN_V4_MASQ, "delete table ip6 flannel-ipv6\n"]);
}

/// A runner whose table text can be changed between calls.
fn mutable_runner(table: Arc<Mutex<String>>) -> Arc<FakeRunner> {
    Arc::new(FakeRunner::new(move |command, _| match command {
        "nft --check -f -" | "nft -f -" => ok(""),
        "nft list table ip flannel-ipv4" => ok(&table.lock().unwrap()),
        _ => fail(MISSING),
    }))
}

#[tokio::test]
async fn repair_rewrites_only_the_damaged_chain() {
    let table = Arc::new(Mutex::new(LISTED_V4.to_string()));
    let fake = mutable_runner(table.clone());
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    assert!(scripts(&fake.calls()).is_empty());

    // A duplicated rule in the forward chain.
    *table.lock().unwrap() = LISTED_V4.replace(
        "\t\tip daddr 10.244.0.0/16 accept\n",
        "\t\tip daddr 10.244.0.0/16 accept\n\t\tip daddr 10.244.0.0/16 accept\n",
    );
    assert!(m.check_and_repair().await.unwrap());
    let s = scripts(&fake.calls());
    assert_eq!(s.len(), 1);
    let want_forward = GOLDEN_V4_FORWARD;
    assert_eq!(s[0], want_forward);
}

#[tokio::test]
async fn wrong_table_comment_means_a_rewrite_that_keeps_the_other_chain() {
    let table = Arc::new(Mutex::new(
        LISTED_V4.replace("\tcomment \"rules for flannel-ipv4\"\n", ""),
    ));
    let fake = mutable_runner(table);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    let s = scripts(&fake.calls());
    let expected = format!(
        "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n{}{}",
        GOLDEN_V4_MASQ,
        "add chain ip flannel-ipv4 forward { comment \"chain to accept flannel traffic\"; type filter hook forward priority filter; policy accept; }\n\
         add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n\
         add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n"
    );
    assert_eq!(s, [expected]);
}

#[test]
fn parses_a_real_listing() {
    let t = listing::parse_table(LISTED_V4).unwrap();
    assert_eq!(t.comment.as_deref(), Some("rules for flannel-ipv4"));
    assert_eq!(t.chains.len(), 2);
    assert_eq!(
        t.chains[1],
        ListedChain {
            name: "forward".into(),
            comment: Some("chain to accept flannel traffic".into()),
            hook: Some("type filter hook forward priority filter; policy accept;".into()),
            rules: vec![
                "ip saddr 10.244.0.0/16 accept".into(),
                "ip daddr 10.244.0.0/16 accept".into()
            ],
        }
    );
    assert_eq!(t.other_objects, 0);
}

#[test]
fn parses_sets_and_multiline_rules_without_losing_track() {
    let text = "table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tset s {
\t\ttype ipv4_addr
\t\telements = { 10.0.0.1, 10.0.0.2,
\t\t\t     10.0.0.3 }
\t}

\tchain extra {
\t\tip daddr { 10.0.0.1,
\t\t\t10.0.0.2 } accept
\t\tcounter packets 0 bytes 0
\t}
}
";
    let t = listing::parse_table(text).unwrap();
    assert_eq!(t.other_objects, 1);
    assert_eq!(t.chains.len(), 1);
    assert_eq!(t.chains[0].name, "extra");
    assert_eq!(
        t.chains[0].rules,
        [
            "ip daddr { 10.0.0.1, 10.0.0.2 } accept",
            "counter packets 0 bytes 0"
        ]
    );
    assert!(listing::parse_table("table ip flannel-ipv4 {\n\tchain x {\n").is_err());
    assert!(listing::parse_table("garbage").is_err());
}

#[test]
fn unknown_chains_in_our_table_are_removed() {
    let text = LISTED_V4.replace(
        "\tchain forward {",
        "\tchain masqueradeTest {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n\n\tchain forward {",
    );
    let listed = listing::parse_table(&text).unwrap();
    let def = rules::masquerade_chain(v4().into(), true);
    let lines = listing::plan(
        Family::V4,
        &TableCurrent::Listed(listed),
        &TableDesired::Parts(vec![(Part::Masquerade, Some(&def))]),
    );
    assert_eq!(
        lines,
        [
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\"; }",
            "flush chain ip flannel-ipv4 masqueradeTest",
            "delete chain ip flannel-ipv4 masqueradeTest",
        ]
    );
}

#[test]
fn changed_hook_means_delete_and_re_add() {
    let text = LISTED_V4.replace("priority srcnat;", "priority dstnat;");
    let listed = listing::parse_table(&text).unwrap();
    let def = rules::masquerade_chain(v4().into(), true);
    let lines = listing::plan(
        Family::V4,
        &TableCurrent::Listed(listed),
        &TableDesired::Parts(vec![(Part::Masquerade, Some(&def))]),
    );
    assert_eq!(lines[1], "flush chain ip flannel-ipv4 postrtg");
    assert_eq!(lines[2], "delete chain ip flannel-ipv4 postrtg");
    assert!(lines[3].starts_with("add chain ip flannel-ipv4 postrtg {"));
}

#[test]
fn host_prefixes_are_written_as_nft_prints_them() {
    let nets = Networks::v4(
        "10.0.0.0/8".parse().unwrap(),
        "10.0.0.7/32".parse().unwrap(),
    );
    let def = rules::masquerade_chain(nets.into(), false);
    assert_eq!(def.rules[1], "ip saddr 10.0.0.7 ip daddr 10.0.0.0/8 return");
}

#[tokio::test]
async fn iptables_mode_cleanup_deletes_only_existing_flannel_tables() {
    let fake = Arc::new(FakeRunner::new(|command, _| match command {
        "nft list tables" => ok("table ip nat\ntable ip flannel-ipv4\ntable inet other\n"),
        "nft -f -" => ok(""),
        _ => fail("unexpected"),
    }));
    let m = crate::IptablesManager::new(config(true, true, true, true), fake.clone());
    m.cleanup_other_mode().await.unwrap();
    assert_eq!(scripts(&fake.calls()), ["delete table ip flannel-ipv4\n"]);

    let none = Arc::new(FakeRunner::new(|_, _| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }));
    let m = crate::IptablesManager::new(config(true, true, true, true), none);
    m.cleanup_other_mode().await.unwrap();
}

#[tokio::test]
async fn missing_nft_is_a_clear_error() {
    let none = Arc::new(FakeRunner::new(|_, _| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }));
    let m = NftablesManager::new(config(true, false, true, true), none);
    let err = m.install_masquerade().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`nft` was not found in PATH: install the nftables package"
    );
}
