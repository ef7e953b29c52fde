//! The harness the etcd test files share: captured logs, and a test body run inside a fresh
//! namespace on a current-thread runtime with those logs, bounded in time.

#![allow(dead_code)] // each test file uses its part

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use flannel_lab::Netns;

/// Log lines captured for one test (and echoed to the test's output).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

struct LogWriter(Logs);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().unwrap().extend_from_slice(buf);
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `body(ctx)` in `ns` on a current-thread runtime, logging at `filter` into `logs`, for at
/// most `timeout`; the namespace goes afterwards, also when the body fails.
pub fn run_in<C, F>(
    ns: Netns,
    logs: Logs,
    filter: &'static str,
    timeout: Duration,
    ctx: C,
    body: F,
) -> Result<()>
where
    C: Send,
    F: AsyncFnOnce(C) -> Result<()> + Send,
{
    let outcome = ns.in_thread(move || -> Result<()> {
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            tokio::time::timeout(timeout, body(ctx))
                .await
                .map_err(|_| anyhow!("test did not finish within {timeout:?}"))?
        })
    })?;
    drop(ns);
    outcome
}
