//! Golden `nft -f -` scripts and the reconcile decisions, with a scripted runner answering with
//! what nft 1.0.6 prints.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::model::{Chain, Hook, Table};
use super::*;
use crate::fixtures::{config, v4};
use crate::manager::RuleManager;
use crate::runner::fake::{Call, FakeRunner, fail, ok};

const MISSING: &str = "Error: No such file or directory\nlist table ip flannel-ipv4\n";

/// `nft -j list table ip flannel-ipv4` of a healthy node, as nft 1.0.6 prints it (no comments).
const LISTED_V4_JSON: &str = include_str!("testdata/listed_v4.json");
/// `nft list table ip flannel-ipv4` of the same node.
const LISTED_V4: &str = include_str!("testdata/listed_v4.nft");

/// What `nft -j list table` and `nft list table` print for one table.
#[derive(Clone, Debug)]
struct Listing {
    json: String,
    text: String,
}

fn healthy() -> Listing {
    Listing {
        json: LISTED_V4_JSON.to_string(),
        text: LISTED_V4.to_string(),
    }
}

/// An empty `ip6 flannel-ipv6` table.
fn empty_v6() -> Listing {
    Listing {
        json: r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip6", "name": "flannel-ipv6", "handle": 2}}]}"#.into(),
        text: "table ip6 flannel-ipv6 {\n}\n".into(),
    }
}

/// `json` with its object list changed by `edit`.
fn edit_json(json: &str, edit: impl FnOnce(&mut Vec<Value>)) -> String {
    let mut root: Value = serde_json::from_str(json).unwrap();
    edit(root["nftables"].as_array_mut().unwrap());
    root.to_string()
}

/// Answers `nft [-j] list table X` from `tables`, `--check` by `random_fully`; writes succeed.
fn respond(
    command: &str,
    random_fully: bool,
    tables: &[(&'static str, Listing)],
) -> std::io::Result<CommandOutput> {
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
    if command == "nft -j list tables" {
        let objects: Vec<String> = tables
            .iter()
            .map(|(target, _)| {
                let (family, name) = target.split_once(' ').unwrap();
                format!(r#"{{"table": {{"family": "{family}", "name": "{name}"}}}}"#)
            })
            .collect();
        return ok(&format!(r#"{{"nftables": [{}]}}"#, objects.join(", ")));
    }
    let (json, target) = match command.strip_prefix("nft -j list table ") {
        Some(target) => (true, target),
        None => match command.strip_prefix("nft list table ") {
            Some(target) => (false, target),
            None => return fail(&format!("unexpected command {command}")),
        },
    };
    match tables.iter().find(|(t, _)| *t == target) {
        Some((_, l)) if json => ok(&l.json),
        Some((_, l)) => ok(&l.text),
        None => fail(MISSING),
    }
}

fn runner(random_fully: bool, tables: Vec<(&'static str, Listing)>) -> Arc<FakeRunner> {
    Arc::new(FakeRunner::new(move |command, _| {
        respond(command, random_fully, &tables)
    }))
}

/// A runner whose `ip flannel-ipv4` listing can be changed between calls.
fn mutable_runner(table: Arc<Mutex<Listing>>) -> Arc<FakeRunner> {
    Arc::new(FakeRunner::new(move |command, _| {
        let listing = table.lock().unwrap().clone();
        respond(command, true, &[("ip flannel-ipv4", listing)])
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

/// The table flannel builds for [`v4`]: what a healthy listing must read as.
fn desired_v4() -> Table {
    Table {
        comment: Some("rules for flannel-ipv4".into()),
        chains: vec![
            rules::masquerade_chain(v4().into(), true),
            rules::forward_chain(v4().into()),
        ],
        other_objects: 0,
    }
}

async fn read(listing: Listing) -> TableCurrent {
    let fake = runner(true, vec![("ip flannel-ipv4", listing)]);
    read_table(fake.as_ref(), IpFamily::V4).await.unwrap()
}

#[tokio::test]
async fn a_healthy_listing_reads_as_exactly_the_desired_chains() {
    assert_eq!(read(healthy()).await, TableCurrent::Listed(desired_v4()));
}

#[tokio::test]
async fn comments_come_from_the_json_when_nft_prints_them() {
    // What newer nft prints: comments in the JSON. The text listing is then never read.
    let json = edit_json(LISTED_V4_JSON, |objects| {
        for object in objects {
            if let Some(table) = object.get_mut("table") {
                table["comment"] = "rules for flannel-ipv4".into();
            }
            if let Some(chain) = object.get_mut("chain") {
                chain["comment"] = match chain["name"].as_str() {
                    Some("postrtg") => "chain to manage traffic masquerading by flannel".into(),
                    _ => "chain to accept flannel traffic".into(),
                };
            }
        }
    });
    let fake = runner(
        true,
        vec![(
            "ip flannel-ipv4",
            Listing {
                json,
                text: "not read".into(),
            },
        )],
    );
    let current = read_table(fake.as_ref(), IpFamily::V4).await.unwrap();
    assert_eq!(current, TableCurrent::Listed(desired_v4()));
    let commands: Vec<String> = fake.calls().into_iter().map(|c| c.command).collect();
    assert_eq!(commands, ["nft -j list table ip flannel-ipv4"]);
}

#[tokio::test]
async fn unparsable_json_means_a_rewrite() {
    let listing = Listing {
        json: "table ip flannel-ipv4 {".into(),
        text: LISTED_V4.into(),
    };
    assert_eq!(read(listing).await, TableCurrent::Unparsable);
    let def = rules::masquerade_chain(v4().into(), true);
    let lines = plan::plan(
        IpFamily::V4,
        &TableCurrent::Unparsable,
        &TableDesired::Parts(vec![(Part::Masquerade, Some(&def))]),
    );
    assert_eq!(
        script(&lines),
        format!("add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n{GOLDEN_V4_MASQ}")
    );
}

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
    let plain = GOLDEN_V4_MASQ.replace(" fully-random", "");
    let fake = runner(false, vec![]);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    assert_eq!(scripts(&fake.calls()), [plain.as_str()]);

    let fake = runner(true, vec![]);
    let mut cfg = config(true, false, true, true);
    cfg.random_fully_disabled = true;
    let m = NftablesManager::new(cfg, fake.clone());
    m.install_masquerade().await.unwrap();
    assert_eq!(scripts(&fake.calls()), [plain]);
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
    let fake = runner(true, vec![("ip flannel-ipv4", healthy())]);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    assert!(!m.check_and_repair().await.unwrap());
    assert!(scripts(&fake.calls()).is_empty());
}

#[tokio::test]
async fn forward_off_removes_only_the_forward_chain() {
    let fake = runner(true, vec![("ip flannel-ipv4", healthy())]);
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
    let fake = runner(true, vec![("ip6 flannel-ipv6", empty_v6())]);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    let s = scripts(&fake.calls());
    assert_eq!(s, [GOLDEN_V4_MASQ, "delete table ip6 flannel-ipv6\n"]);
}

#[tokio::test]
async fn repair_rewrites_only_the_damaged_chain() {
    let table = Arc::new(Mutex::new(healthy()));
    let fake = mutable_runner(table.clone());
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.install_forward().await.unwrap();
    assert!(scripts(&fake.calls()).is_empty());

    // A duplicated rule in the forward chain.
    table.lock().unwrap().json = edit_json(LISTED_V4_JSON, |objects| {
        let last = objects.last().unwrap().clone();
        assert_eq!(last["rule"]["chain"], "forward");
        objects.push(last);
    });
    assert!(m.check_and_repair().await.unwrap());
    let s = scripts(&fake.calls());
    assert_eq!(s, [GOLDEN_V4_FORWARD]);
}

#[tokio::test]
async fn wrong_table_comment_means_a_rewrite_that_keeps_the_other_chain() {
    let listing = Listing {
        text: LISTED_V4.replace("\tcomment \"rules for flannel-ipv4\"\n", ""),
        ..healthy()
    };
    let fake = mutable_runner(Arc::new(Mutex::new(listing)));
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
fn a_kept_chain_loses_only_the_rules_flannel_cannot_write_back() {
    let mut listed = desired_v4();
    listed.comment = None;
    listed.chains[1]
        .rules
        .insert(0, model::Rule(vec![model::Stmt::Other(Value::Null)]));
    let def = rules::masquerade_chain(v4().into(), true);
    let lines = plan::plan(
        IpFamily::V4,
        &TableCurrent::Listed(listed),
        &TableDesired::Parts(vec![(Part::Masquerade, Some(&def))]),
    );
    assert_eq!(
        &lines[lines.len() - 3..],
        [
            "add chain ip flannel-ipv4 forward { comment \"chain to accept flannel traffic\"; type filter hook forward priority filter; policy accept; }",
            "add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept",
            "add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept",
        ]
    );
}

#[test]
fn unknown_chains_in_our_table_are_removed() {
    let mut listed = desired_v4();
    listed.chains.insert(
        1,
        Chain {
            name: "masqueradeTest".into(),
            hook: Some(Hook::new("nat", "postrouting", 100, "accept")),
            ..Chain::default()
        },
    );
    let def = rules::masquerade_chain(v4().into(), true);
    let lines = plan::plan(
        IpFamily::V4,
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
    let mut listed = desired_v4();
    listed.chains[0].hook.as_mut().unwrap().priority = -100;
    let def = rules::masquerade_chain(v4().into(), true);
    let lines = plan::plan(
        IpFamily::V4,
        &TableCurrent::Listed(listed),
        &TableDesired::Parts(vec![(Part::Masquerade, Some(&def))]),
    );
    assert_eq!(lines[1], "flush chain ip flannel-ipv4 postrtg");
    assert_eq!(lines[2], "delete chain ip flannel-ipv4 postrtg");
    assert!(lines[3].starts_with("add chain ip flannel-ipv4 postrtg {"));
}

#[test]
fn host_prefixes_are_written_as_nft_prints_them() {
    let nets = crate::config::Networks::v4(
        "10.0.0.0/8".parse().unwrap(),
        "10.0.0.7/32".parse().unwrap(),
    );
    let def = rules::masquerade_chain(nets.into(), false);
    assert_eq!(
        def.rules[1].to_nft().unwrap(),
        "ip saddr 10.0.0.7 ip daddr 10.0.0.0/8 return"
    );
}

#[tokio::test]
async fn remove_all_deletes_only_existing_flannel_tables() {
    let tables = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "nat", "handle": 1}},
        {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 2}},
        {"table": {"family": "inet", "name": "other", "handle": 3}}]}"#;
    let fake = Arc::new(FakeRunner::new(move |command, _| match command {
        "nft -j list tables" => ok(tables),
        "nft -f -" => ok(""),
        _ => fail("unexpected"),
    }));
    // An IPv4-only configuration: the tables of both families go all the same.
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.remove_all().await.unwrap();
    assert_eq!(scripts(&fake.calls()), ["delete table ip flannel-ipv4\n"]);

    let none = Arc::new(FakeRunner::new(|_, _| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }));
    let m = NftablesManager::new(config(true, true, true, true), none);
    m.remove_all().await.unwrap();

    let no_nf_tables = Arc::new(FakeRunner::new(|_, _| {
        fail("Error: Could not process rule: Protocol not supported\n")
    }));
    let m = NftablesManager::new(config(true, true, true, true), no_nf_tables);
    m.remove_all().await.unwrap();

    let garbage = Arc::new(FakeRunner::new(|_, _| ok("table ip flannel-ipv4\n")));
    let m = NftablesManager::new(config(true, true, true, true), garbage);
    let err = m.remove_all().await.unwrap_err();
    assert!(matches!(err, RulesError::NftJson { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("cannot parse the output of `nft -j list tables`: invalid JSON: "),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn remove_all_stops_repairs() {
    let table = Arc::new(Mutex::new(healthy()));
    let fake = mutable_runner(table);
    let m = NftablesManager::new(config(true, false, true, true), fake.clone());
    m.install_masquerade().await.unwrap();
    m.remove_all().await.unwrap();
    assert_eq!(scripts(&fake.calls()), ["delete table ip flannel-ipv4\n"]);
    fake.calls.lock().unwrap().clear();
    assert!(!m.check_and_repair().await.unwrap());
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
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
