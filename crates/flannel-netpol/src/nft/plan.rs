//! The difference between the table the kernel holds and the desired ruleset, as one `nft -f`
//! script (pure).
//!
//! The script changes only what differs, in an order nft accepts inside one transaction:
//! 1. `add table` (first start only);
//! 2. new counters, new sets with their elements;
//! 3. element changes of existing sets (`delete element` before `add element`, so a range
//!    that grows or shrinks never overlaps itself);
//! 4. base chains whose hook changed are deleted; new chains declared (all of them before any
//!    rule, since rules jump between chains);
//! 5. `flush chain` of every chain whose rules differ or that goes away (this also drops
//!    their references to sets and chains about to be deleted);
//! 6. the rules of rewritten chains;
//! 7. `delete chain`, then `delete set` and `delete counter` of objects no longer desired.
//!
//! A set whose type changed (only across releases) cannot be altered in place: then every
//! chain is flushed first, the set deleted and created anew, and every chain rewritten, still
//! in the one transaction. The table itself is never flushed or deleted.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::ActualTable;
use crate::ruleset::{Element, Ruleset, SetDef, TABLE, rule_fingerprint};

/// Elements per `add element` / `delete element` command.
const ELEMENTS_PER_COMMAND: usize = 256;

/// What a transaction changes, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Sets created.
    pub sets_added: usize,
    /// Sets deleted.
    pub sets_removed: usize,
    /// Elements added.
    pub elements_added: usize,
    /// Elements deleted.
    pub elements_removed: usize,
    /// Chains whose rules were (re)written.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_removed: usize,
    /// Counters created.
    pub counters_added: usize,
    /// Counters deleted.
    pub counters_removed: usize,
}

/// One `nft -f -` script; empty when the kernel already holds the desired ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    text: String,
    /// What it changes.
    pub stats: PlanStats,
}

impl Transaction {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The script for `nft -f -`.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The `comment "ns/name"` clause of a policy's object, empty for shared objects.
fn comment(desired: &Ruleset, object: &str) -> String {
    desired
        .owner_of(object)
        .map(|owner| format!(" comment \"{owner}\";"))
        .unwrap_or_default()
}

/// Writes `verb element` commands for `elements`, in bounded batches.
fn elements<'a>(
    out: &mut String,
    verb: &str,
    set: &str,
    elements: impl IntoIterator<Item = &'a Element>,
) -> usize {
    let all: Vec<String> = elements.into_iter().map(ToString::to_string).collect();
    for chunk in all.chunks(ELEMENTS_PER_COMMAND) {
        let _ = writeln!(
            out,
            "{verb} element {TABLE} {set} {{ {} }}",
            chunk.join(", ")
        );
    }
    all.len()
}

fn add_set(out: &mut String, stats: &mut PlanStats, desired: &Ruleset, name: &str, set: &SetDef) {
    let _ = writeln!(
        out,
        "add set {TABLE} {name} {{ {}{} }}",
        set.kind.declaration(),
        comment(desired, name)
    );
    stats.sets_added += 1;
    stats.elements_added += elements(out, "add", name, &set.elements);
}

/// The transaction that turns `actual` into `desired`.
pub fn plan(actual: &ActualTable, desired: &Ruleset) -> Transaction {
    let mut out = String::new();
    let mut stats = PlanStats::default();
    if !actual.exists {
        let _ = writeln!(out, "add table {TABLE}");
    }
    for name in desired
        .counters
        .iter()
        .filter(|c| !actual.counters.contains_key(*c))
    {
        let _ = writeln!(
            out,
            "add counter {TABLE} {name} {{{} }}",
            comment(desired, name)
        );
        stats.counters_added += 1;
    }
    // Sets: new, changed in place, or to be recreated with another type.
    let mut recreate = Vec::new();
    for (name, set) in &desired.sets {
        match actual.sets.get(name) {
            None => add_set(&mut out, &mut stats, desired, name, set),
            Some(old) if old.kind != set.kind => recreate.push((name, set)),
            Some(old) => {
                stats.elements_removed += elements(
                    &mut out,
                    "delete",
                    name,
                    old.elements.difference(&set.elements),
                );
                stats.elements_added += elements(
                    &mut out,
                    "add",
                    name,
                    set.elements.difference(&old.elements),
                );
            }
        }
    }
    let rebuild = !recreate.is_empty();
    // Chains: which to (re)write, which to declare, which to replace for a new hook.
    let mut write = BTreeSet::new();
    for (name, chain) in &desired.chains {
        let old = actual.chains.get(name);
        if old.is_some_and(|o| o.hook != chain.hook) {
            let _ = writeln!(out, "flush chain {TABLE} {name}");
            let _ = writeln!(out, "delete chain {TABLE} {name}");
        }
        let same_hook = old.is_some_and(|o| o.hook == chain.hook);
        if !same_hook {
            let decl = match &chain.hook {
                Some(h) => format!(" {{ {}{} }}", h.declaration(), comment(desired, name)),
                None if desired.owner_of(name).is_some() => {
                    format!(" {{{} }}", comment(desired, name))
                }
                None => String::new(),
            };
            let _ = writeln!(out, "add chain {TABLE} {name}{decl}");
        }
        let fingerprints: Vec<Option<String>> = chain
            .rules
            .iter()
            .map(|r| Some(rule_fingerprint(r)))
            .collect();
        let same_rules = old.is_some_and(|o| same_hook && o.fingerprints == fingerprints);
        if rebuild || !same_rules {
            write.insert(name);
        }
    }
    for (name, old) in &actual.chains {
        let replaced = desired.chains.get(name).is_some_and(|c| c.hook != old.hook);
        let gone = !desired.chains.contains_key(name);
        let rewritten = write.contains(name) && !old.fingerprints.is_empty();
        if !replaced && (gone || rewritten) {
            let _ = writeln!(out, "flush chain {TABLE} {name}");
        }
    }
    for (name, set) in recreate {
        let _ = writeln!(out, "delete set {TABLE} {name}");
        stats.sets_removed += 1;
        add_set(&mut out, &mut stats, desired, name, set);
    }
    for name in &write {
        let chain = &desired.chains[*name];
        for rule in &chain.rules {
            let _ = writeln!(
                out,
                "add rule {TABLE} {name} {rule} comment \"{}\"",
                rule_fingerprint(rule)
            );
        }
        stats.chains_written += 1;
    }
    for name in actual
        .chains
        .keys()
        .filter(|n| !desired.chains.contains_key(*n))
    {
        let _ = writeln!(out, "delete chain {TABLE} {name}");
        stats.chains_removed += 1;
    }
    for name in actual
        .sets
        .keys()
        .filter(|n| !desired.sets.contains_key(*n))
    {
        let _ = writeln!(out, "delete set {TABLE} {name}");
        stats.sets_removed += 1;
    }
    for name in actual
        .counters
        .keys()
        .filter(|n| !desired.counters.contains(*n))
    {
        let _ = writeln!(out, "delete counter {TABLE} {name}");
        stats.counters_removed += 1;
    }
    Transaction { text: out, stats }
}

#[cfg(test)]
mod tests;
