//! Shared helpers of the privileged tests: managers of either mode started the way the daemon
//! starts them, a runner that counts writes, what each mode must leave in the kernel for a
//! configuration, and commands to read or damage it.
//!
//! Every test runs its body in a fresh network namespace
//! (`flannel_netlink::netns::run_in_netns(NetnsTarget::Fresh, ..)`), so these commands only ever
//! see and change that namespace.
#![allow(dead_code, missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flannel_rules::{
    CommandOutput, Networks, PreviousValues, RuleConfig, RuleManager, RulesMode, Runner,
    TokioRunner, new_rule_manager,
};

/// Generates one `#[test]` per mode (modules `iptables` and `nftables`) for each named function
/// taking a [`RulesMode`].
#[allow(unused_macros)]
macro_rules! for_both_modes {
    ($($name:ident),* $(,)?) => {
        mod iptables {
            $(#[test]
            fn $name() {
                super::$name(flannel_rules::RulesMode::Iptables)
            })*
        }
        mod nftables {
            $(#[test]
            fn $name() {
                super::$name(flannel_rules::RulesMode::Nftables)
            })*
        }
    };
}

/// Runs a command (in the test's namespace), feeding it `stdin` (nothing if `None`).
fn output(program: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut pipe = child.stdin.take().expect("piped stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Runs a command and returns its stdout; panics on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = output(program, args, None);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command line (how the tests damage rules); panics on failure.
pub fn sh(script: &str) -> String {
    run("sh", &["-c", script])
}

/// `nft -f -` with the given script; panics on failure.
pub fn nft_script(script: &str) {
    let out = output("nft", &["-f", "-"], Some(script));
    assert!(
        out.status.success(),
        "nft -f - failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A [`TokioRunner`] that records every command, to prove that a healthy system sees no writes.
#[derive(Debug, Default)]
pub struct CountingRunner {
    inner: TokioRunner,
    pub commands: Mutex<Vec<String>>,
}

impl CountingRunner {
    /// Commands that changed rules (`*-restore`, `nft -f -`).
    pub fn writes(&self) -> Vec<String> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.contains("-restore") || c.as_str() == "nft -f -")
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.commands.lock().unwrap().clear();
    }
}

#[async_trait]
impl Runner for CountingRunner {
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::io::Result<CommandOutput> {
        let mut line = vec![program];
        line.extend_from_slice(args);
        self.commands.lock().unwrap().push(line.join(" "));
        self.inner.run(program, args, stdin).await
    }
}

pub const NETWORK_V4: &str = "10.244.0.0/16";
pub const SUBNET_V4: &str = "10.244.1.0/24";
pub const NETWORK_V6: &str = "fd00:10:244::/56";
pub const SUBNET_V6: &str = "fd00:10:244:1::/64";

pub fn nets_v4(network: &str, subnet: &str) -> Networks<ipnet::Ipv4Net> {
    Networks::v4(network.parse().unwrap(), subnet.parse().unwrap())
}

pub fn nets_v6(network: &str, subnet: &str) -> Networks<ipnet::Ipv6Net> {
    Networks::v6(network.parse().unwrap(), subnet.parse().unwrap())
}

/// Dual stack, masquerade and forward rules on, fully-random allowed.
pub fn dual_stack() -> RuleConfig {
    RuleConfig {
        v4: Some(nets_v4(NETWORK_V4, SUBNET_V4)),
        v6: Some(nets_v6(NETWORK_V6, SUBNET_V6)),
        ip_masq: true,
        forward_rules: true,
        random_fully_disabled: false,
        previous: PreviousValues::default(),
    }
}

pub fn v4_only() -> RuleConfig {
    RuleConfig {
        v6: None,
        ..dual_stack()
    }
}

/// The previous run's values of [`dual_stack`], as subnet.env would give them.
pub fn previous_dual_stack() -> PreviousValues {
    PreviousValues {
        v4: Some(nets_v4(NETWORK_V4, SUBNET_V4)),
        v6: Some(nets_v6(NETWORK_V6, SUBNET_V6)),
    }
}

/// A manager of `mode` for `config` (nothing run yet), with the runner it counts commands on.
pub fn manager(mode: RulesMode, config: RuleConfig) -> (Box<dyn RuleManager>, Arc<CountingRunner>) {
    let runner = Arc::new(CountingRunner::default());
    let manager = new_rule_manager(mode == RulesMode::Nftables, config, runner.clone());
    (manager, runner)
}

/// The other mode.
pub fn other(mode: RulesMode) -> RulesMode {
    match mode {
        RulesMode::Iptables => RulesMode::Nftables,
        RulesMode::Nftables => RulesMode::Iptables,
    }
}

/// The daemon's start-up: a manager of the *other* mode removes everything it may have left,
/// then the manager of `mode` installs the masquerade and forward rules. Both share one runner.
pub async fn start(
    mode: RulesMode,
    config: RuleConfig,
) -> (Box<dyn RuleManager>, Arc<CountingRunner>) {
    let (manager, runner) = manager(mode, config);
    let enable_other = other(mode) == RulesMode::Nftables;
    new_rule_manager(enable_other, config, runner.clone())
        .remove_all()
        .await
        .expect("remove_all of the other mode");
    manager
        .install_masquerade()
        .await
        .expect("install_masquerade");
    manager.install_forward().await.expect("install_forward");
    (manager, runner)
}

pub const EMPTY_NAT: &str =
    "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n";
pub const EMPTY_FILTER: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";

fn ipt(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

/// `(table family, table name, ip keyword)` of flannel's nft table.
fn nft_names(v6: bool) -> (&'static str, &'static str, &'static str) {
    if v6 {
        ("ip6", "flannel-ipv6", "ip6")
    } else {
        ("ip", "flannel-ipv4", "ip")
    }
}

/// `(cluster, pod, multicast)` of a family of `config`, if it is configured.
fn nets(config: &RuleConfig, v6: bool) -> Option<(String, String, &'static str)> {
    if v6 {
        let n = config.v6?;
        Some((n.network.to_string(), n.subnet.to_string(), "ff00::/8"))
    } else {
        let n = config.v4?;
        Some((n.network.to_string(), n.subnet.to_string(), "224.0.0.0/4"))
    }
}

/// What `iptables -t nat -S` and `iptables -S` (or ip6tables) print in a namespace holding only
/// flannel's rules for `config`.
fn expected_iptables(config: &RuleConfig, v6: bool) -> Vec<String> {
    let mut nat = EMPTY_NAT.to_string();
    let mut filter = EMPTY_FILTER.to_string();
    if let Some((cluster, pod, mc)) = nets(config, v6) {
        let masq = if config.random_fully_disabled {
            "MASQUERADE"
        } else {
            "MASQUERADE --random-fully"
        };
        let c = "-m comment --comment \"flanneld masq\"";
        if config.ip_masq {
            nat.push_str(&format!(
                "-N FLANNEL-POSTRTG
-A POSTROUTING {c} -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN
-A FLANNEL-POSTRTG -s {pod} -d {cluster} {c} -j RETURN
-A FLANNEL-POSTRTG -s {cluster} -d {pod} {c} -j RETURN
-A FLANNEL-POSTRTG ! -s {cluster} -d {pod} {c} -j RETURN
-A FLANNEL-POSTRTG -s {cluster} ! -d {mc} {c} -j {masq}
-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {c} -j {masq}
"
            ));
        }
        let c = "-m comment --comment \"flanneld forward\"";
        if config.forward_rules {
            filter.push_str(&format!(
                "-N FLANNEL-FWD
-A FORWARD {c} -j FLANNEL-FWD
-A FLANNEL-FWD -s {cluster} {c} -j ACCEPT
-A FLANNEL-FWD -d {cluster} {c} -j ACCEPT
"
            ));
        }
    }
    vec![nat, filter]
}

/// What `nft list table ip flannel-ipv4` (or the IPv6 table) prints for `config`: empty when the
/// table must not exist.
fn expected_nft(config: &RuleConfig, v6: bool) -> String {
    let Some((cluster, pod, mc)) = nets(config, v6) else {
        return String::new();
    };
    let (fam, table, ip) = nft_names(v6);
    let masq = if config.random_fully_disabled {
        "masquerade"
    } else {
        "masquerade fully-random"
    };
    let mut chains = Vec::new();
    if config.ip_masq {
        chains.push(format!(
            "\tchain postrtg {{
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\t{ip} saddr {pod} {ip} daddr {cluster} return
\t\t{ip} saddr {cluster} {ip} daddr {pod} return
\t\t{ip} saddr != {cluster} {ip} daddr {pod} return
\t\t{ip} saddr {cluster} {ip} daddr != {mc} {masq}
\t\t{ip} saddr != {cluster} {ip} daddr {cluster} {masq}
\t}}
"
        ));
    }
    if config.forward_rules {
        chains.push(format!(
            "\tchain forward {{
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\t{ip} saddr {cluster} accept
\t\t{ip} daddr {cluster} accept
\t}}
"
        ));
    }
    if chains.is_empty() {
        return String::new();
    }
    format!(
        "table {fam} {table} {{\n\tcomment \"rules for {table}\"\n{}}}\n",
        chains.join("\n")
    )
}

/// The golden listings of one family: what [`listing`] must print once `config` is installed.
pub fn expected(mode: RulesMode, config: &RuleConfig, v6: bool) -> Vec<String> {
    match mode {
        RulesMode::Iptables => expected_iptables(config, v6),
        RulesMode::Nftables => vec![expected_nft(config, v6)],
    }
}

/// flannel's table of one family as `nft list table` prints it, empty when there is none.
pub fn nft_table(v6: bool) -> String {
    let (fam, table, _) = nft_names(v6);
    let out = output("nft", &["list", "table", fam, table], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("No such file or directory") {
        return String::new();
    }
    assert!(out.status.success(), "nft list table failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the kernel holds for one family in `mode`'s terms: iptables' nat and filter listings, or
/// flannel's nft table.
pub fn listing(mode: RulesMode, v6: bool) -> Vec<String> {
    match mode {
        RulesMode::Iptables => vec![run(ipt(v6), &["-t", "nat", "-S"]), run(ipt(v6), &["-S"])],
        RulesMode::Nftables => vec![nft_table(v6)],
    }
}

/// Asserts that both families hold exactly what `config` asks for in `mode`.
pub fn assert_state(mode: RulesMode, config: &RuleConfig) {
    for v6 in [false, true] {
        assert_eq!(
            listing(mode, v6),
            expected(mode, config, v6),
            "{mode:?}, v6={v6}"
        );
    }
}

/// Everything `mode` could have written, with nft's rule handles: equal before and after an
/// operation means nothing was rewritten.
pub fn full_state(mode: RulesMode) -> String {
    match mode {
        RulesMode::Iptables => [false, true]
            .into_iter()
            .flat_map(|v6| listing(mode, v6))
            .collect(),
        RulesMode::Nftables => run("nft", &["-a", "list", "ruleset"]),
    }
}

/// Asserts that nothing of `mode` is left in the namespace.
pub fn assert_nothing_of(mode: RulesMode) {
    match mode {
        RulesMode::Iptables => {
            for v6 in [false, true] {
                assert_eq!(listing(mode, v6), [EMPTY_NAT, EMPTY_FILTER], "v6={v6}");
            }
        }
        RulesMode::Nftables => {
            let tables = run("nft", &["list", "tables"]);
            assert!(!tables.contains("flannel"), "{tables}");
        }
    }
}

/// Asserts that repair restores what `config` asks for, then that a second pass writes nothing.
pub async fn assert_repairs(
    mode: RulesMode,
    manager: &dyn RuleManager,
    runner: &CountingRunner,
    config: &RuleConfig,
) {
    runner.clear();
    assert!(
        manager.check_and_repair().await.unwrap(),
        "damage was not detected"
    );
    assert_state(mode, config);
    runner.clear();
    assert!(!manager.check_and_repair().await.unwrap(), "repair churned");
    assert!(runner.writes().is_empty(), "{:?}", runner.writes());
}

/// Deletes the first rule of `chain` in flannel's nft table whose text contains `needle`.
pub fn nft_delete_rule(v6: bool, chain: &str, needle: &str) {
    let (fam, table, _) = nft_names(v6);
    let listing = run("nft", &["-a", "list", "chain", fam, table, chain]);
    let line = listing
        .lines()
        .find(|l| l.contains(needle) && l.contains("# handle"))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in\n{listing}"));
    let handle = line.rsplit(' ').next().unwrap();
    sh(&format!(
        "nft delete rule {fam} {table} {chain} handle {handle}"
    ));
}
