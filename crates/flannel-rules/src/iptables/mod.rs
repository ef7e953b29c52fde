//! iptables mode: chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter) with upstream's exact
//! rules, written with one `iptables-restore --noflush --wait` run per address family.

pub(crate) mod listing;
pub(crate) mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use flannel_types::IpFamily;
use tokio::sync::Mutex;

use crate::config::{FamilyNets, Part, RuleConfig};
use crate::error::RulesError;
use crate::manager::{ModeRules, RulesMode};
use crate::runner::{Runner, command_line, run_any, run_ok};
use listing::{Desired, Listing, parse_listing, plan};
use rules::{ChainSpec, TableBlock, binaries, part_rules, restore_payload};

/// What the installed iptables can do, from `iptables --version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    /// `--wait` for iptables-restore (>= 1.6.2).
    pub(crate) wait: bool,
    /// `MASQUERADE --random-fully` (>= 1.6.2).
    pub(crate) random_fully: bool,
}

/// Parses `iptables v1.8.9 (nf_tables)` into `(1, 8, 9)`.
pub(crate) fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split_whitespace().find_map(|word| {
        let rest = word.strip_prefix('v')?;
        let mut parts = rest.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    })
}

impl Caps {
    /// Both features arrived in iptables 1.6.2.
    pub(crate) fn from_version(version: (u32, u32, u32)) -> Self {
        let new_enough = version >= (1, 6, 2);
        Caps {
            wait: new_enough,
            random_fully: new_enough,
        }
    }
}

/// Asks `iptables --version` (or `ip6tables`) what this iptables supports.
async fn detect_caps(runner: &dyn Runner, family: IpFamily) -> Result<Caps, RulesError> {
    let (program, _) = binaries(family);
    let out = run_ok(runner, program, &["--version"], None).await?;
    let text = format!("{}{}", out.stdout, out.stderr);
    let version = parse_version(&text).ok_or_else(|| RulesError::Parse {
        command: format!("{program} --version"),
        detail: format!("no version number in {:?}", text.trim()),
    })?;
    Ok(Caps::from_version(version))
}

/// Lists one table (`iptables [-w] -t <table> -S`) or one chain of it (`... -S <chain>`).
/// `Ok(None)`: the chain does not exist (iptables exits with status 1 for that, in both the
/// legacy and the nf_tables variants).
async fn list(
    runner: &dyn Runner,
    family: IpFamily,
    caps: Caps,
    table: &str,
    chain: Option<&str>,
) -> Result<Option<Listing>, RulesError> {
    let (program, _) = binaries(family);
    let mut args = Vec::with_capacity(5);
    if caps.wait {
        args.push("-w");
    }
    args.extend(["-t", table, "-S"]);
    args.extend(chain);
    let out = run_any(runner, program, &args, None).await?;
    if out.success() {
        Ok(Some(parse_listing(&out.stdout)))
    } else if chain.is_some() && out.status == Some(1) {
        Ok(None)
    } else {
        Err(RulesError::from_failed(command_line(program, &args), &out))
    }
}

/// What `plan` needs to see for one part.
///
/// Keeping rules in place only needs the built-in chain and flannel's chain, listed on their own:
/// a node running kube-proxy in iptables mode can have tens of thousands of nat rules, which the
/// resync must not dump every few seconds. Removing a chain needs every reference to it, so the
/// whole table is listed then (start-up only).
async fn list_for(
    runner: &dyn Runner,
    family: IpFamily,
    caps: Caps,
    spec: &ChainSpec,
    desired: Desired<'_>,
) -> Result<Listing, RulesError> {
    match desired {
        Desired::Absent => Ok(list(runner, family, caps, spec.table, None)
            .await?
            .unwrap_or_default()),
        Desired::Present(_) => {
            let (program, _) = binaries(family);
            let mut listing = list(runner, family, caps, spec.table, Some(spec.builtin))
                .await?
                .ok_or_else(|| RulesError::Parse {
                    command: format!("{program} -t {} -S {}", spec.table, spec.builtin),
                    detail: format!("built-in chain {} does not exist", spec.builtin),
                })?;
            if let Some(own) = list(runner, family, caps, spec.table, Some(spec.chain)).await? {
                listing.chains.extend(own.chains);
                listing.rules.extend(own.rules);
            }
            Ok(listing)
        }
    }
}

/// Brings the given parts of one family to their desired state with a single `iptables-restore`
/// run, if anything differs. Returns whether a change was written.
async fn reconcile(
    runner: &dyn Runner,
    family: IpFamily,
    caps: Caps,
    parts: &[(Part, Desired<'_>)],
) -> Result<bool, RulesError> {
    let mut blocks = Vec::with_capacity(parts.len());
    for (part, desired) in parts {
        let spec = ChainSpec::of(*part);
        let listing = list_for(runner, family, caps, &spec, *desired).await?;
        blocks.push(TableBlock {
            table: spec.table,
            lines: plan(&listing, &spec, *desired),
        });
    }
    let payload = restore_payload(&blocks);
    if payload.is_empty() {
        return Ok(false);
    }
    let (_, restore) = binaries(family);
    let mut args = vec!["--noflush"];
    if caps.wait {
        args.push("--wait");
    }
    tracing::debug!(%family, %payload, "applying iptables-restore payload");
    run_ok(runner, restore, &args, Some(&payload)).await?;

    // Read back once: a difference now means our text and this iptables' printing disagree, which
    // would otherwise show up as a "repair" on every resync.
    for (part, desired) in parts {
        if let Desired::Present(_) = desired {
            let spec = ChainSpec::of(*part);
            let listing = list_for(runner, family, caps, &spec, *desired).await?;
            let left = plan(&listing, &spec, *desired);
            if !left.is_empty() {
                tracing::warn!(%family, %part, ?left, "iptables rules still differ after applying them");
            }
        }
    }
    Ok(true)
}

/// Removes every flannel chain and jump of `parts` in one family (and the rules older versions left
/// in the built-in chains) in one `iptables-restore` run. A missing iptables, or a kernel without
/// that family's tables, means there is nothing to remove. Returns whether anything was removed.
async fn remove_parts(
    runner: &dyn Runner,
    family: IpFamily,
    parts: &[Part],
) -> Result<bool, RulesError> {
    let caps = match detect_caps(runner, family).await {
        Ok(caps) => caps,
        Err(err) if err.is_missing_binary() => {
            tracing::debug!(%family, %err, "iptables not installed: no iptables rules to remove");
            return Ok(false);
        }
        Err(err) => return Err(err),
    };
    let parts: Vec<(Part, Desired<'_>)> = parts.iter().map(|p| (*p, Desired::Absent)).collect();
    match reconcile(runner, family, caps, &parts).await {
        Err(
            err @ (RulesError::MissingBinary { .. } | RulesError::UnsupportedKernelFeature { .. }),
        ) => {
            tracing::debug!(%family, %err, "no iptables rules to remove");
            Ok(false)
        }
        other => other,
    }
}

/// What iptables mode remembers between calls.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Per family, once detected.
    caps: BTreeMap<IpFamily, Caps>,
    /// The rule sets installed so far, which `check_and_repair` keeps in place.
    installed: BTreeMap<(IpFamily, Part), Vec<String>>,
}

/// The iptables implementation of [`RuleManager`](crate::RuleManager).
#[derive(Debug)]
pub struct IptablesManager {
    config: RuleConfig,
    runner: Arc<dyn Runner>,
    state: Mutex<State>,
}

impl IptablesManager {
    /// A manager for `config`; nothing is run until an operation is called.
    pub fn new(config: RuleConfig, runner: Arc<dyn Runner>) -> Self {
        Self {
            config,
            runner,
            state: Mutex::new(State::default()),
        }
    }

    async fn caps(&self, state: &mut State, family: IpFamily) -> Result<Caps, RulesError> {
        if let Some(caps) = state.caps.get(&family) {
            return Ok(*caps);
        }
        let caps = detect_caps(self.runner.as_ref(), family).await?;
        if !caps.random_fully {
            tracing::warn!(%family, "iptables is older than 1.6.2: masquerading without --random-fully");
        }
        state.caps.insert(family, caps);
        Ok(caps)
    }
}

#[async_trait]
impl ModeRules for IptablesManager {
    type State = State;

    const MODE: RulesMode = RulesMode::Iptables;

    fn config(&self) -> &RuleConfig {
        &self.config
    }

    fn state(&self) -> &Mutex<State> {
        &self.state
    }

    async fn install(
        &self,
        state: &mut State,
        family: IpFamily,
        part: Part,
        nets: FamilyNets,
    ) -> Result<(), RulesError> {
        let caps = self.caps(state, family).await?;
        let random_fully = caps.random_fully && !self.config.random_fully_disabled;
        let rules = part_rules(part, nets, random_fully);
        // Registered before applying: if this first write fails, the resync keeps trying.
        state.installed.insert((family, part), rules.clone());
        let desired = [(part, Desired::Present(&rules))];
        let changed = reconcile(self.runner.as_ref(), family, caps, &desired).await?;
        tracing::info!(%family, %part, changed, "iptables rules in place");
        Ok(())
    }

    async fn remove(
        &self,
        state: &mut State,
        family: IpFamily,
        part: Part,
    ) -> Result<(), RulesError> {
        state.installed.remove(&(family, part));
        // Only families flannel runs with, or ran with before, are looked at: a v4-only node never
        // needs ip6tables.
        let relevant =
            self.config.family(family).is_some() || self.config.previous.family(family).is_some();
        if relevant && remove_parts(self.runner.as_ref(), family, &[part]).await? {
            tracing::info!(%family, %part, "removed iptables rules that are no longer wanted");
        }
        Ok(())
    }

    async fn repair(&self, state: &State, family: IpFamily) -> Result<bool, RulesError> {
        let parts: Vec<(Part, Desired<'_>)> = state
            .installed
            .iter()
            .filter(|((f, _), _)| *f == family)
            .map(|((_, part), rules)| (*part, Desired::Present(rules)))
            .collect();
        let Some(caps) = state.caps.get(&family).copied() else {
            return Ok(false);
        };
        if parts.is_empty() {
            return Ok(false);
        }
        let changed = reconcile(self.runner.as_ref(), family, caps, &parts).await?;
        if changed {
            tracing::info!(%family, "iptables rules differed from the desired state: repaired");
        }
        Ok(changed)
    }

    async fn remove_everything(&self, state: &mut State) -> Result<(), RulesError> {
        state.installed.clear();
        let mut results = Vec::new();
        for family in IpFamily::ALL {
            let parts = [Part::Masquerade, Part::Forward];
            let removed = remove_parts(self.runner.as_ref(), family, &parts).await;
            if let Ok(true) = removed {
                tracing::info!(%family, "removed flannel iptables chains left by iptables mode");
            }
            results.push(removed.map(|_| ()));
        }
        RulesError::collect(results)
    }
}

#[cfg(test)]
mod tests;
