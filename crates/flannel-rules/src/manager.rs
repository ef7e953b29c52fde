//! The `RuleManager` trait the daemon talks to, and the factory that picks an implementation.

use std::sync::Arc;

use async_trait::async_trait;
use flannel_types::IpFamily;
use tokio::sync::Mutex;

use crate::config::{FamilyNets, Part, RuleConfig};
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

/// What a mode implements, one address family and one part at a time; [`RuleManager`] is written
/// once on top of it (every operation holds the state's lock, runs for IPv4 then IPv6 and reports
/// every family's failure). A new mode is one more implementation of this trait.
///
/// The trait is only reachable inside this crate.
#[async_trait]
pub(crate) trait ModeRules: Send + Sync + std::fmt::Debug {
    /// What the mode remembers between calls: probed capabilities, the rule sets installed.
    type State: Send + Sync;

    /// The mode implemented.
    const MODE: RulesMode;

    /// The configuration the manager converges to.
    fn config(&self) -> &RuleConfig;

    /// The state, locked for the whole of every operation, which serialises them.
    fn state(&self) -> &Mutex<Self::State>;

    /// Installs `part` of `family` (whose networks are `nets`) and keeps it for
    /// [`ModeRules::repair`].
    async fn install(
        &self,
        state: &mut Self::State,
        family: IpFamily,
        part: Part,
        nets: FamilyNets,
    ) -> Result<(), RulesError>;

    /// Removes `part` of `family`, which the configuration does not want, and stops repairing it.
    async fn remove(
        &self,
        state: &mut Self::State,
        family: IpFamily,
        part: Part,
    ) -> Result<(), RulesError>;

    /// Brings what was installed in `family` back to its desired state; `true` if it had to.
    async fn repair(&self, state: &Self::State, family: IpFamily) -> Result<bool, RulesError>;

    /// Removes everything the mode ever installs (see [`RuleManager::remove_all`]) and stops
    /// repairing.
    async fn remove_everything(&self, state: &mut Self::State) -> Result<(), RulesError>;
}

/// Installs (or removes, when the configuration does not want it) `part` in both families.
async fn install_part<M: ModeRules>(mode: &M, part: Part) -> Result<(), RulesError> {
    let mut state = mode.state().lock().await;
    let config = mode.config();
    let mut results = Vec::new();
    for family in IpFamily::ALL {
        results.push(match config.wants(family, part) {
            Some(nets) => {
                if part == Part::Masquerade {
                    config.log_recycling(family);
                }
                mode.install(&mut state, family, part, nets).await
            }
            None => mode.remove(&mut state, family, part).await,
        });
    }
    RulesError::collect(results)
}

#[async_trait]
impl<M: ModeRules> RuleManager for M {
    fn mode(&self) -> RulesMode {
        M::MODE
    }

    async fn remove_all(&self) -> Result<(), RulesError> {
        let mut state = self.state().lock().await;
        self.remove_everything(&mut state).await
    }

    async fn install_masquerade(&self) -> Result<(), RulesError> {
        install_part(self, Part::Masquerade).await
    }

    async fn install_forward(&self) -> Result<(), RulesError> {
        install_part(self, Part::Forward).await
    }

    async fn check_and_repair(&self) -> Result<bool, RulesError> {
        let state = self.state().lock().await;
        let mut changed = false;
        let mut results = Vec::new();
        for family in IpFamily::ALL {
            results.push(self.repair(&state, family).await.map(|c| changed |= c));
        }
        RulesError::collect(results).map(|()| changed)
    }
}
