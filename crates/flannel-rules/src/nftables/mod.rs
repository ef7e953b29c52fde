//! nftables mode: tables `ip flannel-ipv4` / `ip6 flannel-ipv6` with chains `postrtg` and
//! `forward`, written as one atomic `nft -f -` transaction per family and repaired like the
//! iptables rules (upstream installs them once and never looks again).

mod comments;
mod json;
mod model;
mod plan;
mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use flannel_types::IpFamily;
use tokio::sync::Mutex;

use crate::config::{FamilyNets, Part, RuleConfig};
use crate::error::{RulesError, unsupported_feature};
use crate::manager::{ModeRules, RulesMode};
use crate::runner::{CommandOutput, Runner, command_line, run_any, run_ok};
use model::Chain;
use plan::{TableCurrent, TableDesired, plan, script};
use rules::{part_chain, random_fully_probe, table_of};

/// `nft <args>` failed: a table that does not exist is [`TableCurrent::Missing`], anything else an
/// error.
fn missing_or_failed(args: &[&str], out: &CommandOutput) -> Result<TableCurrent, RulesError> {
    if out.stderr.contains("No such file or directory") {
        Ok(TableCurrent::Missing)
    } else {
        Err(RulesError::from_failed(command_line("nft", args), out))
    }
}

/// Reads a family's table from `nft -j list table`; a table that does not exist is
/// [`TableCurrent::Missing`].
///
/// When the JSON shows no table comment (nft 1.0.6 prints none), the comments are taken from the
/// text listing (see `comments`).
async fn read_table(runner: &dyn Runner, family: IpFamily) -> Result<TableCurrent, RulesError> {
    let (fam, name) = table_of(family);
    let args = ["-j", "list", "table", fam, name];
    let out = run_any(runner, "nft", &args, None).await?;
    if !out.success() {
        return missing_or_failed(&args, &out);
    }
    let mut table = match json::parse_table(&out.stdout) {
        Ok(table) => table,
        Err(detail) => {
            tracing::warn!(%family, %detail, "cannot parse the flannel nftables table: rewriting it");
            return Ok(TableCurrent::Unparsable);
        }
    };
    if table.comment.is_none() {
        let args = ["list", "table", fam, name];
        let out = run_any(runner, "nft", &args, None).await?;
        if !out.success() {
            return missing_or_failed(&args, &out);
        }
        comments::read(&out.stdout).fill(&mut table);
    }
    Ok(TableCurrent::Listed(table))
}

/// Runs a script as one atomic transaction.
async fn apply(runner: &dyn Runner, lines: &[String]) -> Result<(), RulesError> {
    let text = script(lines);
    tracing::debug!(script = %text, "applying nft transaction");
    run_ok(runner, "nft", &["-f", "-"], Some(&text)).await?;
    Ok(())
}

/// Brings one family's table to `desired` if it differs. Returns whether a change was written.
async fn reconcile(
    runner: &dyn Runner,
    family: IpFamily,
    desired: &TableDesired<'_>,
) -> Result<bool, RulesError> {
    let current = read_table(runner, family).await?;
    let lines = plan(family, &current, desired);
    if lines.is_empty() {
        return Ok(false);
    }
    apply(runner, &lines).await?;
    // Read back once: a difference now means our rules and this nft's listing disagree, which
    // would otherwise show up as a "repair" on every resync.
    let after = read_table(runner, family).await?;
    let left = plan(family, &after, desired);
    if !left.is_empty() {
        tracing::warn!(%family, ?left, "nftables rules still differ after applying them");
    }
    Ok(true)
}

/// Deletes `ip flannel-ipv4` and `ip6 flannel-ipv6` if they exist. No `nft`, or a kernel without
/// nf_tables, means there is nothing to delete.
async fn delete_flannel_tables(runner: &dyn Runner) -> Result<(), RulesError> {
    let args = ["-j", "list", "tables"];
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
    let existing = json::parse_tables(&out.stdout).map_err(|source| RulesError::NftJson {
        command: command_line("nft", &args),
        source,
    })?;
    let lines: Vec<String> = IpFamily::ALL
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

/// What nftables mode remembers between calls.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Whether `masquerade fully-random` is usable, once probed.
    random_fully: Option<bool>,
    /// The chains installed so far, which `check_and_repair` keeps in place.
    installed: BTreeMap<(IpFamily, Part), Chain>,
}

/// The nftables implementation of [`RuleManager`](crate::RuleManager).
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
        let args = ["--check", "-f", "-"];
        let out = run_any(self.runner.as_ref(), "nft", &args, Some(&probe)).await?;
        let supported = out.success();
        if !supported {
            tracing::warn!(stderr = %out.stderr.trim(), "nftables: masquerade fully-random unsupported, masquerading without it");
        }
        state.random_fully = Some(supported);
        Ok(supported)
    }

    fn wants_anything(&self, family: IpFamily) -> bool {
        self.config.wants(family, Part::Masquerade).is_some()
            || self.config.wants(family, Part::Forward).is_some()
    }
}

#[async_trait]
impl ModeRules for NftablesManager {
    type State = State;

    const MODE: RulesMode = RulesMode::Nftables;

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
        let random_fully = match part {
            Part::Masquerade => self.random_fully(state).await?,
            Part::Forward => false,
        };
        let def = part_chain(part, nets, random_fully);
        // Registered before applying: if this first write fails, the resync keeps trying.
        state.installed.insert((family, part), def.clone());
        let desired = TableDesired::Parts(vec![(part, Some(&def))]);
        let changed = reconcile(self.runner.as_ref(), family, &desired).await?;
        tracing::info!(%family, %part, changed, "nftables rules in place");
        Ok(())
    }

    /// Removes the chain of `part` (the whole table when nothing else is wanted in it).
    async fn remove(
        &self,
        state: &mut State,
        family: IpFamily,
        part: Part,
    ) -> Result<(), RulesError> {
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

    async fn repair(&self, state: &State, family: IpFamily) -> Result<bool, RulesError> {
        let parts: Vec<(Part, Option<&Chain>)> = state
            .installed
            .iter()
            .filter(|((f, _), _)| *f == family)
            .map(|((_, part), def)| (*part, Some(def)))
            .collect();
        if parts.is_empty() {
            return Ok(false);
        }
        let changed = reconcile(self.runner.as_ref(), family, &TableDesired::Parts(parts)).await?;
        if changed {
            tracing::info!(%family, "nftables rules differed from the desired state: repaired");
        }
        Ok(changed)
    }

    async fn remove_everything(&self, state: &mut State) -> Result<(), RulesError> {
        state.installed.clear();
        delete_flannel_tables(self.runner.as_ref()).await
    }
}

#[cfg(test)]
mod tests;
