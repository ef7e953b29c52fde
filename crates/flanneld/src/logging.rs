//! Log setup: klog's `-v` / `-vmodule` mapped onto tracing levels.
//!
//! Upstream logs through klog to stderr; operators raise `-v` to see data-path detail. We keep
//! the flags and their meaning: `-v=0` logs lease changes, reconcile summaries and errors
//! (info), `-v=1..4` adds per-entry data-path detail (debug), `-v>=5` everything (trace).
//! `-vmodule=vxlan=5,etcd=2` raises single modules: a pattern matches any segment of a
//! flannel-rs module path (`flanneld::backend::vxlan`), so operators need not know our layout.
//! `RUST_LOG`, when set, overrides both for developers.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::prelude::*;

/// Dependencies that are noisy below warn; kept at warn unless a `-vmodule` names them.
const NOISY: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tower",
    "tonic",
    "rustls",
    "netlink_proto",
    "kube_client",
];

/// The tracing level a klog verbosity maps to.
pub fn level_for(verbosity: u32) -> LevelFilter {
    match verbosity {
        0 => LevelFilter::INFO,
        1..=4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The verbosity decision for log targets: a base level plus per-module overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Verbosity {
    base: LevelFilter,
    modules: Vec<(String, LevelFilter)>,
}

impl Verbosity {
    /// Parses `-v` and `-vmodule`; a malformed `-vmodule` entry is an error naming it.
    pub fn new(verbosity: u32, vmodule: &str) -> Result<Verbosity, String> {
        let mut modules = Vec::new();
        for entry in vmodule.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (pattern, level) = entry
                .split_once('=')
                .ok_or_else(|| format!("invalid -vmodule entry {entry:?}: expected pattern=N"))?;
            let level: u32 = level.parse().map_err(|_| {
                format!("invalid -vmodule entry {entry:?}: level {level:?} is not a number")
            })?;
            // klog patterns name Go files ("vxlan.go", "vxlan*"); keep the module name part.
            let pattern = pattern.trim_end_matches(".go").trim_matches('*');
            if pattern.is_empty()
                || !pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "invalid -vmodule entry {entry:?}: pattern must be a module name"
                ));
            }
            modules.push((pattern.replace('-', "_"), level_for(level)));
        }
        Ok(Verbosity {
            base: level_for(verbosity),
            modules,
        })
    }

    /// The most verbose level enabled for a log target (a `::`-separated module path).
    pub fn level_for_target(&self, target: &str) -> LevelFilter {
        for (pattern, level) in &self.modules {
            if target.split("::").any(|seg| seg == pattern) {
                return *level;
            }
        }
        let krate = target.split("::").next().unwrap_or(target);
        if NOISY.contains(&krate) {
            return self.base.min(LevelFilter::WARN);
        }
        self.base
    }

    /// The most verbose level any target can log at. Given to the subscriber as its level
    /// hint, it also becomes the `log` crate's maximum level (the bridge reads it at init), so
    /// dependencies that log through `log` (netlink-proto logs every netlink message at debug)
    /// are filtered in their macros instead of reaching the per-target filter one record at a
    /// time: 1.5 % of a core at 5000 peers before.
    pub fn max_level(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, level)| *level)
            .fold(self.base, LevelFilter::max)
    }
}

/// Installs the global subscriber writing to stderr, as klog does with `logtostderr=true`.
pub fn init(verbosity: u32, vmodule: &str) -> Result<(), String> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            let filter = EnvFilter::try_new(v).map_err(|e| format!("RUST_LOG: {e}"))?;
            tracing_subscriber::registry()
                .with(fmt.with_filter(filter))
                .try_init()
        }
        _ => {
            let v = Verbosity::new(verbosity, vmodule)?;
            let max = v.max_level();
            let filter =
                FilterFn::new(move |meta| *meta.level() <= v.level_for_target(meta.target()))
                    .with_max_level_hint(max);
            tracing_subscriber::registry()
                .with(fmt.with_filter(filter))
                .try_init()
        }
    }
    .map_err(|e| format!("installing the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level_for(0), LevelFilter::INFO);
        assert_eq!(level_for(1), LevelFilter::DEBUG);
        assert_eq!(level_for(4), LevelFilter::DEBUG);
        assert_eq!(level_for(10), LevelFilter::TRACE);
    }

    #[test]
    fn vmodule_raises_matching_modules_only() {
        let v = Verbosity::new(0, "vxlan=5,etcd.go=1").unwrap();
        assert_eq!(
            v.level_for_target("flanneld::backend::vxlan"),
            LevelFilter::TRACE
        );
        assert_eq!(
            v.level_for_target("flannel_subnet::etcd"),
            LevelFilter::DEBUG
        );
        assert_eq!(v.level_for_target("flanneld::daemon"), LevelFilter::INFO);
        // a segment must match whole: "vxlan" does not raise "vxlanish".
        assert_eq!(v.level_for_target("flanneld::vxlanish"), LevelFilter::INFO);
        // The hint is the most verbose of them, so `log` records below it never reach us.
        assert_eq!(v.max_level(), LevelFilter::TRACE);
        assert_eq!(
            Verbosity::new(0, "").unwrap().max_level(),
            LevelFilter::INFO
        );
    }

    #[test]
    fn dependencies_stay_quiet_at_high_verbosity() {
        let v = Verbosity::new(9, "").unwrap();
        assert_eq!(v.level_for_target("h2::codec"), LevelFilter::WARN);
        assert_eq!(v.level_for_target("flanneld::daemon"), LevelFilter::TRACE);
        let v = Verbosity::new(9, "tonic=5").unwrap();
        assert_eq!(v.level_for_target("tonic::transport"), LevelFilter::TRACE);
        assert_eq!(v.max_level(), LevelFilter::TRACE);
    }

    #[test]
    fn bad_vmodule_is_named() {
        assert!(
            Verbosity::new(0, "vxlan")
                .unwrap_err()
                .contains("\"vxlan\"")
        );
        assert!(
            Verbosity::new(0, "vxlan=x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            Verbosity::new(0, "a/b=1")
                .unwrap_err()
                .contains("module name")
        );
    }
}
