//! Running `nft` in the current network namespace: read the table, apply a transaction.
//!
//! Commands go through flannel-rules' [`Runner`] (the same process handling as flanneld's
//! rule managers: `LC_ALL=C`, a timeout, the child killed when it is exceeded).

use flannel_rules::{CommandOutput, Runner};

use super::ActualTable;
use super::plan::Transaction;
use super::read::{ReadError, parse_table};
use crate::ruleset::TABLE;

/// Why nft could not read or change the table.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run (missing binary, timeout).
    #[error("running `nft {args}`: {source}")]
    Spawn {
        /// The arguments.
        args: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the command or the transaction (nothing was changed: transactions are
    /// atomic).
    #[error("`nft {args}` failed (exit status {status:?}): {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// Exit status.
        status: Option<i32>,
        /// What nft printed on stderr (names the failing line of a script).
        stderr: String,
    },
    /// The listing could not be parsed.
    #[error("reading table {TABLE}: {0}")]
    Read(#[source] ReadError),
}

async fn run(
    runner: &dyn Runner,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<CommandOutput, NftError> {
    runner
        .run("nft", args, stdin)
        .await
        .map_err(|source| NftError::Spawn {
            args: args.join(" "),
            source,
        })
}

/// Reads the table; a missing table is an [`ActualTable`] with `exists == false`.
pub async fn read_table(runner: &dyn Runner) -> Result<ActualTable, NftError> {
    list(runner, &["-j", "list", "table", "inet", "flannel-netpol"]).await
}

/// Reads only the table's named counters (the drop counters' values): `nft list counters`
/// skips the sets, whose tens of thousands of elements a full listing would print and parse
/// on every counter refresh.
pub async fn read_counters(runner: &dyn Runner) -> Result<ActualTable, NftError> {
    list(
        runner,
        &["-j", "list", "counters", "table", "inet", "flannel-netpol"],
    )
    .await
}

/// Runs an `nft -j list ...` of the table and parses it; a missing table is an empty one.
async fn list(runner: &dyn Runner, args: &[&str]) -> Result<ActualTable, NftError> {
    let out = run(runner, args, None).await?;
    if !out.success() {
        if out.stderr.contains("No such file or directory") {
            return Ok(ActualTable::default());
        }
        return Err(NftError::Failed {
            args: args.join(" "),
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        });
    }
    parse_table(&out.stdout).map_err(NftError::Read)
}

/// Applies a transaction with `nft -f -` (nothing to do for an empty one).
pub async fn apply(runner: &dyn Runner, tx: &Transaction) -> Result<(), NftError> {
    if tx.is_empty() {
        return Ok(());
    }
    let out = run(runner, &["-f", "-"], Some(tx.text())).await?;
    if out.success() {
        Ok(())
    } else {
        Err(NftError::Failed {
            args: "-f -".into(),
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        })
    }
}
