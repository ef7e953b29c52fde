//! The `RuleManager` trait the daemon talks to, and the factory that picks an implementation.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::RuleConfig;
use crate::error::RulesError;
use crate::iptables::IptablesManager;
use crate::nftables::NftablesManager;
use crate::runner::Runner;

/// Which firewall front end flannel programs (`"EnableNFTables"` in net-conf.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulesMode {
    /// `iptables-restore` / `ip6tables-restore` payloads, chains `FLANNEL-POSTRTG` and `FLANNEL-FWD`.
    Iptables,
    /// `nft -f -` scripts, tables `ip flannel-ipv4` and `ip6 flannel-ipv6`.
    Nftables,
}

/// Installs flannel's masquerade and forward rules and keeps them as installed.
///
/// The start-up order the daemon follows (as upstream does): [`remove_all`] on a manager of the
/// *other* mode (built with [`new_rule_manager`] and `!enable_nftables`), then on this one
/// [`install_masquerade`], [`install_forward`], write subnet.env; then [`check_and_repair`] every
/// `--iptables-resync` seconds. Every operation reads what the kernel holds first and writes only
/// when it differs from the desired state, as one atomic transaction per address family; calls are
/// serialised internally.
///
/// The two implementations know nothing of each other: switching modes works because each can
/// remove everything it ever installs.
///
/// [`remove_all`]: RuleManager::remove_all
/// [`install_masquerade`]: RuleManager::install_masquerade
/// [`install_forward`]: RuleManager::install_forward
/// [`check_and_repair`]: RuleManager::check_and_repair
#[async_trait]
pub trait RuleManager: Send + Sync + std::fmt::Debug {
    /// The mode this manager programs.
    fn mode(&self) -> RulesMode;

    /// Removes everything this mode ever installs, whatever the configuration: iptables mode
    /// removes every jump (and any other reference) to its chains and the chains themselves, in
    /// both tables and both families, along with rules older versions left in the built-in chains;
    /// nftables mode deletes its tables. A missing binary or a kernel without the family means
    /// there is nothing to remove. Rules this manager installed are no longer repaired afterwards.
    async fn remove_all(&self) -> Result<(), RulesError>;

    /// Installs the masquerade rules for every configured family when `--ip-masq` is set, and
    /// removes flannel's masquerade rules of families (or a flag) that are no longer enabled.
    /// Once installed, the rules are covered by [`RuleManager::check_and_repair`].
    async fn install_masquerade(&self) -> Result<(), RulesError>;

    /// Installs the forward accept rules for every configured family when
    /// `--iptables-forward-rules` is set (removing stale ones otherwise), like
    /// [`RuleManager::install_masquerade`].
    async fn install_forward(&self) -> Result<(), RulesError>;

    /// Compares the installed rule sets with what the kernel holds (missing, reordered, duplicated
    /// or foreign rules, missing or duplicated jumps, missing chains or tables) and, only when they
    /// differ, rewrites them atomically. Returns `true` when a repair was made.
    async fn check_and_repair(&self) -> Result<bool, RulesError>;
}

/// Builds the manager for `EnableNFTables`, running commands through `runner`.
///
/// The daemon builds one for its mode and, to clear what the other mode left behind, one with
/// `!enable_nftables` on which it only calls [`RuleManager::remove_all`].
pub fn new_rule_manager(
    enable_nftables: bool,
    config: RuleConfig,
    runner: Arc<dyn Runner>,
) -> Box<dyn RuleManager> {
    if enable_nftables {
        Box::new(NftablesManager::new(config, runner))
    } else {
        Box::new(IptablesManager::new(config, runner))
    }
}
