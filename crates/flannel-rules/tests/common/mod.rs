//! Shared helpers of the privileged tests: a fresh network namespace per test, a runner that
//! counts writes, command helpers and the golden listings.
#![allow(dead_code, missing_docs)]

use std::future::Future;
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flannel_rules::{
    CommandOutput, IptablesManager, Networks, NftablesManager, PreviousValues, RuleConfig,
    RuleManager, Runner, TokioRunner,
};
use nix::sched::{CloneFlags, unshare};

/// Runs `test` on a dedicated thread that first moves into a new, anonymous network namespace,
/// on a current-thread tokio runtime: every child process inherits that namespace, so the root
/// namespace's rules are never touched. The namespace disappears with the thread.
pub fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let handle = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) failed: the privileged tests must run as root");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs a command (in the test's namespace) and returns its stdout; panics on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft -f -` with the given script; panics on failure.
pub fn nft_script(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
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

pub fn iptables_manager(config: RuleConfig) -> (IptablesManager, Arc<CountingRunner>) {
    let runner = Arc::new(CountingRunner::default());
    (IptablesManager::new(config, runner.clone()), runner)
}

pub fn nftables_manager(config: RuleConfig) -> (NftablesManager, Arc<CountingRunner>) {
    let runner = Arc::new(CountingRunner::default());
    (NftablesManager::new(config, runner.clone()), runner)
}

/// The start-up sequence of the daemon.
pub async fn start(manager: &dyn RuleManager) {
    manager
        .cleanup_other_mode()
        .await
        .expect("cleanup_other_mode");
    manager
        .install_masquerade()
        .await
        .expect("install_masquerade");
    manager.install_forward().await.expect("install_forward");
}

/// `iptables -t nat -S` (or ip6tables) of a namespace holding only flannel's rules.
pub fn golden_nat(v6: bool) -> String {
    let (cluster, pod, mc) = if v6 {
        (NETWORK_V6, SUBNET_V6, "ff00::/8")
    } else {
        (NETWORK_V4, SUBNET_V4, "224.0.0.0/4")
    };
    format!(
        "-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N FLANNEL-POSTRTG
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s {pod} -d {cluster} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s {cluster} -d {pod} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s {cluster} -d {pod} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s {cluster} ! -d {mc} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
"
    )
}

/// `iptables -S` (filter) of a namespace holding only flannel's rules.
pub fn golden_filter(v6: bool) -> String {
    let cluster = if v6 { NETWORK_V6 } else { NETWORK_V4 };
    format!(
        "-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N FLANNEL-FWD
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD
-A FLANNEL-FWD -s {cluster} -m comment --comment \"flanneld forward\" -j ACCEPT
-A FLANNEL-FWD -d {cluster} -m comment --comment \"flanneld forward\" -j ACCEPT
"
    )
}

pub const EMPTY_NAT: &str =
    "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n";
pub const EMPTY_FILTER: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";

fn ipt(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

pub fn nat_listing(v6: bool) -> String {
    run(ipt(v6), &["-t", "nat", "-S"])
}

pub fn filter_listing(v6: bool) -> String {
    run(ipt(v6), &["-S"])
}

/// `iptables -t nat ...` / `ip6tables -t nat ...`.
pub fn ipt_nat(v6: bool, args: &[&str]) {
    let mut full = vec!["-t", "nat"];
    full.extend_from_slice(args);
    run(ipt(v6), &full);
}

pub fn ipt_filter(v6: bool, args: &[&str]) {
    let mut full = vec!["-t", "filter"];
    full.extend_from_slice(args);
    run(ipt(v6), &full);
}

/// `nft list table ip flannel-ipv4` (or the IPv6 table) as flannel leaves it.
pub fn golden_nft(v6: bool) -> String {
    let (fam, table, ip, cluster, pod, mc) = if v6 {
        (
            "ip6",
            "flannel-ipv6",
            "ip6",
            NETWORK_V6,
            SUBNET_V6,
            "ff00::/8",
        )
    } else {
        (
            "ip",
            "flannel-ipv4",
            "ip",
            NETWORK_V4,
            SUBNET_V4,
            "224.0.0.0/4",
        )
    };
    format!(
        "table {fam} {table} {{
\tcomment \"rules for {table}\"
\tchain postrtg {{
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\t{ip} saddr {pod} {ip} daddr {cluster} return
\t\t{ip} saddr {cluster} {ip} daddr {pod} return
\t\t{ip} saddr != {cluster} {ip} daddr {pod} return
\t\t{ip} saddr {cluster} {ip} daddr != {mc} masquerade fully-random
\t\t{ip} saddr != {cluster} {ip} daddr {cluster} masquerade fully-random
\t}}

\tchain forward {{
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\t{ip} saddr {cluster} accept
\t\t{ip} daddr {cluster} accept
\t}}
}}
"
    )
}

pub fn nft_table(v6: bool) -> String {
    if v6 {
        run("nft", &["list", "table", "ip6", "flannel-ipv6"])
    } else {
        run("nft", &["list", "table", "ip", "flannel-ipv4"])
    }
}

/// `nft list tables`.
pub fn nft_tables() -> String {
    run("nft", &["list", "tables"])
}

/// The handle of the first rule in `chain` of the IPv4/IPv6 flannel table whose text contains `needle`.
pub fn nft_handle(v6: bool, chain: &str, needle: &str) -> String {
    let (fam, table) = if v6 {
        ("ip6", "flannel-ipv6")
    } else {
        ("ip", "flannel-ipv4")
    };
    let listing = run("nft", &["-a", "list", "chain", fam, table, chain]);
    let line = listing
        .lines()
        .find(|l| l.contains(needle) && l.contains("# handle"))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in\n{listing}"));
    line.rsplit(' ').next().unwrap().to_string()
}
