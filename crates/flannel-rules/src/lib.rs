//! Masquerade and forward rules (iptables or nftables) behind one [`RuleManager`] trait.
//!
//! flanneld installs the same rules as upstream flannel: in iptables mode the chains
//! `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter), jumped to from POSTROUTING and FORWARD; in
//! nftables mode (`"EnableNFTables": true`) the tables `ip flannel-ipv4` and `ip6 flannel-ipv6`
//! with chains `postrtg` and `forward`. Rules are generated as text (an `iptables-restore
//! --noflush --wait` payload, an `nft -f -` script) and applied as one transaction per address
//! family, as upstream does, through a [`Runner`] so the text can be unit tested without root.
//!
//! Beyond upstream, both modes are *reconciled*: every operation lists what the kernel holds,
//! compares it with the desired rules (iptables: the rule text, written exactly as `iptables -S`
//! prints it back; nftables: structured rules read from `nft -j list table`, see the `nftables`
//! module) and writes only when something differs (missing, reordered, duplicated or foreign rules,
//! missing or duplicated jumps, missing chains or tables). A healthy system sees no rule churn,
//! and [`RuleManager::check_and_repair`] reports whether it had to repair anything.
//!
//! # Compatibility notes (deliberate differences from upstream)
//!
//! * **nftables rule 4.** Upstream's nft masquerade chain has `ip saddr != POD ip daddr CLUSTER
//!   return` where its iptables chain has `! -s CLUSTER -d POD -j RETURN`. The nft text returns
//!   early for everything from outside this node's pod subnet to any cluster address, so the
//!   host's traffic to other nodes' pods (and traffic routed through this node to them) is never
//!   masqueraded. flannel-rs writes `ip saddr != CLUSTER ip daddr POD return`, the iptables
//!   meaning: external clients keep their address when talking to a pod of this node, and
//!   host-to-overlay traffic is masqueraded to the node's flannel address. The listing therefore
//!   differs from upstream's e2e golden text in this one line.
//! * **kube-proxy mark in nftables mode.** Upstream writes `meta mark 0x4000 return`, an exact
//!   match: a packet kube-proxy marked (it ORs in 0x4000) that also carries any other mark bit is
//!   masqueraded a second time. flannel-rs writes `meta mark & 0x00004000 == 0x00004000 return`,
//!   the meaning of iptables' `-m mark --mark 0x4000/0x4000`.
//! * **nftables rules are repaired** like the iptables ones (upstream installs them once).
//! * **Mode switch clean-up is complete.** At start the daemon builds a manager of the other
//!   mode and calls [`RuleManager::remove_all`] on it. The iptables manager removes every
//!   POSTROUTING/FORWARD jump (and any other reference) to `FLANNEL-POSTRTG`/`FLANNEL-FWD`, then
//!   flushes and deletes the chains in their own tables (nat and filter), for IPv4 and IPv6; the
//!   nftables manager deletes its tables. Upstream deletes both iptables chains from the nat table
//!   while they are still referenced, so nothing is removed. A missing `iptables` (or `nft`)
//!   binary of the other mode means there is nothing to clean, not a fatal error.
//! * **Repair is exact.** Missing, reordered, duplicated or foreign rules in flannel's chains,
//!   missing or duplicated jumps, and rules with flannel's comment left in POSTROUTING/FORWARD by
//!   older versions are all corrected (upstream only checks that each rule exists somewhere); an
//!   intact rule set is never rewritten.
//! * **Stale rules go.** Rules of a family that is no longer configured (per the previous
//!   subnet.env) or of a disabled flag (`--ip-masq=false`, `--iptables-forward-rules=false`) are
//!   removed at start-up; upstream leaves them.
//! * In nftables mode a table is only created for a family that has rules to hold (upstream
//!   creates both, possibly empty).

mod config;
mod error;
#[cfg(test)]
mod fixtures;
mod iptables;
mod manager;
mod nftables;
mod runner;

pub use config::{Networks, Part, PreviousValues, RuleConfig};
pub use error::{NftJsonError, RulesError};
pub use iptables::IptablesManager;
pub use manager::{RuleManager, RulesMode, new_rule_manager};
pub use nftables::NftablesManager;
pub use runner::{CommandOutput, Runner, TokioRunner};
