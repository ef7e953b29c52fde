//! nftables mode: tables `ip flannel-ipv4` / `ip6 flannel-ipv6` with chains `postrtg` and
//! `forward`, written as one atomic `nft -f -` transaction per family and repaired like the
//! iptables rules (upstream installs them once and never looks again).

pub(crate) mod listing;
pub(crate) mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::config::{Family, Part, RuleConfig};
use crate::error::{RulesError, unsupported_feature};
use crate::iptables;
use crate::manager::{RuleManager, RulesMode};
use crate::runner::{Runner, command_line, run_any, run_ok};
use listing::{TableCurrent, TableDesired, parse_table, parse_tables, plan, script};
use rules::{ChainDef, part_chain, random_fully_probe, table_of};

/// Reads a family's table; a table that does not exist is [`TableCurrent::Missing`].
async fn read_table(runner: &dyn Runner, family: Family) -> Result<TableCurrent, RulesError> {
    let (fam, name) = table_of(family);
    let args = ["list", "table", fam, name];
    let out = run_any(runner, "nft", &args, None).await?;
    if out.success() {
        return Ok(match parse_table(&out.stdout) {
            Ok(table) => TableCurrent::Listed(table),
            Err(detail) => {
                tracing::warn!(%family, %detail, "cannot parse the flannel nftables table: rewriting it");
                TableCurrent::Unparsable(detail)
            }
        });
    }
    if out.stderr.contains("No such file or directory") {
        return Ok(TableCurrent::Missing);
    }
    Err(RulesError::from_failed(command_line("nft", &args), &out))
}

/// Runs a script as one atomic transaction.
async fn apply(runner: &dyn Runner, lines: &[String]) -> Result<(), RulesError> {
    let text = script(lines);
    tracing::debug!(script = %text, "applying nft transaction");
    run_ok(runner, "nft", &["-f", "-"], Some(&text)).await?;
    Ok(())
}

/// Brings one family's table to `desired` if it differs. Returns whether a change was written.
pub(crate) async fn reconcile(
    runner: &dyn Runner,
    family: Family,
    desired: &TableDesired<'_>,
) -> Result<bool, RulesError> {
    let current = read_table(runner, family).await?;
    let lines = plan(family, &current, desired);
    if lines.is_empty() {
        return Ok(false);
    }
    apply(runner, &lines).await?;
    // Read back once: a difference now means our text and this nft's printing disagree, which
    // would otherwise show up as a "repair" on every resync.
    let after = read_table(runner, family).await?;
    let left = plan(family, &after, desired);
    if !left.is_empty() {
        tracing::warn!(%family, ?left, "nftables rules still differ after applying them");
    }
    Ok(true)
}

/// Deletes `ip flannel-ipv4` and `ip6 flannel-ipv6` if they exist (iptables mode's clean-up of
/// nftables mode). No `nft`, or a kernel without nf_tables, means there is nothing to delete.
pub(crate) async fn delete_flannel_tables(runner: &dyn Runner) -> Result<(), RulesError> {
    let args = ["list", "tables"];
    let out = match run_any(runner, "nft", &args, None).await {
        Ok(out) => out,
        Err(err) if err.is_missing_binary() => {
            tracing::debug!(%err, "nft not installed: no flannel nftables tables to delete");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    if !out.success() {
        if unsupported_feature(&out.stderr).is_some() {
            tracing::debug!(stderr = %out.stderr.trim(), "no nf_tables: no flannel nftables tables to delete");
            return Ok(());
        }
        return Err(RulesError::from_failed(command_line("nft", &args), &out));
    }
    let existing = parse_tables(&out.stdout);
    let lines: Vec<String> = Family::ALL
        .iter()
        .map(|f| table_of(*f))
        .filter(|(fam, name)| existing.iter().any(|(ef, en)| ef == fam && en == name))
        .map(|(fam, name)| format!("delete table {fam} {name}"))
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    apply(runner, &lines).await?;
    tracing::info!(tables = ?lines, "deleted flannel nftables tables left by nftables mode");
    Ok(())
}

#[derive(Debug, Default)]
struct State {
    /// Whether `masquerade fully-random` is usable, once probed.
    random_fully: Option<bool>,
    /// The chains installed so far, which `check_and_repair` keeps in place.
    installed: BTreeMap<(Family, Part), ChainDef>,
}

/// The nftables implementation of [`RuleManager`].
#[derive(Debug)]
pub struct NftablesManager {
    config: RuleConfig,
    runner: Arc<dyn Runner>,
    state: Mutex<State>,
}

impl NftablesManager {
    /// A manager for `config`; nothing is run until an operation is called.
    pub fn new(config: RuleConfig, runner: Arc<dyn Runner>) -> Self {
        Self {
            config,
            runner,
            state: Mutex::new(State::default()),
        }
    }

    /// `fully-random` unless disabled by flag or rejected by a dry run (`nft --check`).
    async fn random_fully(&self, state: &mut State) -> Result<bool, RulesError> {
        if self.config.random_fully_disabled {
            return Ok(false);
        }
        if let Some(known) = state.random_fully {
            return Ok(known);
        }
        let probe = random_fully_probe();
        let out = run_any(
            self.runner.as_ref(),
            "nft",
            &["--check", "-f", "-"],
            Some(&probe),
        )
        .await?;
        let supported = out.success();
        if !supported {
            tracing::warn!(stderr = %out.stderr.trim(), "nftables: masquerade fully-random unsupported, masquerading without it");
        }
        state.random_fully = Some(supported);
        Ok(supported)
    }

    fn wants_anything(&self, family: Family) -> bool {
        self.config.wants(family, Part::Masquerade).is_some()
            || self.config.wants(family, Part::Forward).is_some()
    }

    async fn install_part(&self, part: Part) -> Result<(), RulesError> {
        let mut state = self.state.lock().await;
        let mut errors = Vec::new();
        for family in Family::ALL {
            let result = match self.config.wants(family, part) {
                Some(nets) => {
                    if part == Part::Masquerade {
                        self.config.log_recycling(family);
                    }
                    let random_fully = match part {
                        Part::Masquerade => self.random_fully(&mut state).await,
                        Part::Forward => Ok(false),
                    };
                    match random_fully {
                        Ok(random_fully) => {
                            let def = part_chain(part, nets, random_fully);
                            // Registered before applying: if this first write fails, the resync keeps trying.
                            state.installed.insert((family, part), def.clone());
                            reconcile(
                                self.runner.as_ref(),
                                family,
                                &TableDesired::Parts(vec![(part, Some(&def))]),
                            )
                            .await
                            .map(|changed| {
                                tracing::info!(%family, %part, changed, "nftables rules in place");
                            })
                        }
                        Err(err) => Err(err),
                    }
                }
                None => {
                    state.installed.remove(&(family, part));
                    let desired = if self.wants_anything(family) {
                        TableDesired::Parts(vec![(part, None)])
                    } else {
                        TableDesired::Absent
                    };
                    match reconcile(self.runner.as_ref(), family, &desired).await {
                        Ok(true) => {
                            tracing::info!(%family, %part, "removed nftables rules that are no longer wanted");
                            Ok(())
                        }
                        Ok(false) => Ok(()),
                        // Without nft or nf_tables there is nothing of ours to remove.
                        Err(
                            err @ (RulesError::MissingBinary { .. }
                            | RulesError::UnsupportedKernelFeature { .. }),
                        ) => {
                            tracing::debug!(%family, %part, %err, "no nftables rules to remove");
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
            };
            if let Err(err) = result {
                errors.push(err);
            }
        }
        RulesError::collect(errors)
    }
}

#[async_trait]
impl RuleManager for NftablesManager {
    fn mode(&self) -> RulesMode {
        RulesMode::Nftables
    }

    async fn cleanup_other_mode(&self) -> Result<(), RulesError> {
        let _state = self.state.lock().await;
        let mut errors = Vec::new();
        for family in Family::ALL {
            match iptables::remove_all(self.runner.as_ref(), family).await {
                Ok(true) => {
                    tracing::info!(%family, "removed flannel iptables chains left by iptables mode")
                }
                Ok(false) => {}
                Err(err) => errors.push(err),
            }
        }
        RulesError::collect(errors)
    }

    async fn install_masquerade(&self) -> Result<(), RulesError> {
        self.install_part(Part::Masquerade).await
    }

    async fn install_forward(&self) -> Result<(), RulesError> {
        self.install_part(Part::Forward).await
    }

    async fn check_and_repair(&self) -> Result<bool, RulesError> {
        let state = self.state.lock().await;
        let mut changed = false;
        let mut errors = Vec::new();
        for family in Family::ALL {
            let parts: Vec<(Part, Option<&ChainDef>)> = state
                .installed
                .iter()
                .filter(|((f, _), _)| *f == family)
                .map(|((_, part), def)| (*part, Some(def)))
                .collect();
            if parts.is_empty() {
                continue;
            }
            match reconcile(self.runner.as_ref(), family, &TableDesired::Parts(parts)).await {
                Ok(true) => {
                    tracing::info!(%family, "nftables rules differed from the desired state: repaired");
                    changed = true;
                }
                Ok(false) => {}
                Err(err) => errors.push(err),
            }
        }
        RulesError::collect(errors).map(|()| changed)
    }
}

#[cfg(test)]
mod tests;
