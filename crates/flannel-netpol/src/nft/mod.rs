//! The `inet flannel-netpol` table in the kernel: read it ([`read_table()`]), diff it against the
//! desired ruleset ([`plan()`], pure), apply the difference as one `nft -f -` transaction
//! ([`apply()`]).
//!
//! What the kernel holds is an [`ActualTable`]: sets with their elements and named counters
//! with their values compare directly; chains are known by hook and by the fingerprint
//! comments of their rules (see [`crate::ruleset`]). After a successful apply the daemon keeps
//! `ActualTable::from(&desired)` instead of reading the kernel again.

use std::collections::BTreeMap;

use crate::ruleset::{Hook, Ruleset, SetDef, rule_fingerprint};

pub mod apply;
#[cfg(test)]
mod kernel_tests;
pub mod plan;
pub mod read;

pub use apply::{NftError, apply, read_counters, read_table};
pub use plan::{PlanStats, Transaction, plan};
pub use read::{ReadError, parse_table};

/// A chain as found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualChain {
    /// Its hook, for base chains.
    pub hook: Option<Hook>,
    /// The comment of each rule in order (`None` for a rule without one, which never matches
    /// a desired rule's fingerprint).
    pub fingerprints: Vec<Option<String>>,
}

/// A named counter's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// What the kernel holds of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualTable {
    /// Whether the table exists at all.
    pub exists: bool,
    /// Sets by name, with elements.
    pub sets: BTreeMap<String, SetDef>,
    /// Chains by name.
    pub chains: BTreeMap<String, ActualChain>,
    /// Named counters with their values.
    pub counters: BTreeMap<String, CounterValue>,
}

impl From<&Ruleset> for ActualTable {
    /// The table as it is right after `desired` was applied (counters read as zero; their
    /// values are only used for metrics, which read the kernel).
    fn from(desired: &Ruleset) -> ActualTable {
        ActualTable {
            exists: true,
            sets: desired.sets.clone(),
            chains: desired
                .chains
                .iter()
                .map(|(name, c)| {
                    let fingerprints = c.rules.iter().map(|r| Some(rule_fingerprint(r))).collect();
                    (
                        name.clone(),
                        ActualChain {
                            hook: c.hook.clone(),
                            fingerprints,
                        },
                    )
                })
                .collect(),
            counters: desired
                .counters
                .iter()
                .map(|c| (c.clone(), CounterValue::default()))
                .collect(),
        }
    }
}
