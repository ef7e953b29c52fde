//! Step lines on stderr while `up` works: `[2/5] etcd + network config ... ok (1.1s)`.
//!
//! On a terminal the current step carries a spinner and a running clock (redrawn in place ten
//! times a second); otherwise each step is printed once, when it ends, so logs and CI output get
//! one clean line per step and no control characters.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How step lines are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A spinner redrawn in place.
    Terminal,
    /// One line per finished step.
    Plain,
    /// Nothing (`--quiet`).
    Quiet,
}

#[derive(Debug, Default)]
struct Current {
    number: usize,
    label: String,
    started: Option<Instant>,
}

/// The progress display of one command run.
pub struct Progress {
    mode: Mode,
    total: usize,
    count: usize,
    current: Arc<Mutex<Current>>,
    stop: Arc<AtomicBool>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// A display for `total` steps; `quiet` silences it, a non-terminal stderr makes it plain.
    pub fn new(total: usize, quiet: bool, unicode: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        let current = Arc::new(Mutex::new(Current::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let spinner = (mode == Mode::Terminal).then(|| {
            let current = Arc::clone(&current);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || spin(&current, &stop, total, unicode))
        });
        Progress {
            mode,
            total,
            count: 0,
            current,
            stop,
            spinner,
        }
    }

    /// Ends the running step (as ok) and starts the next one.
    pub fn step(&mut self, label: impl Into<String>) {
        self.finish("ok");
        self.count += 1;
        if let Ok(mut c) = self.current.lock() {
            *c = Current {
                number: self.count,
                label: label.into(),
                started: Some(Instant::now()),
            };
        }
    }

    /// Ends the running step with `ok`, or with a short note such as `ok, 30/30`.
    pub fn done(&mut self, note: &str) {
        self.finish(note);
    }

    /// Ends the running step as failed (the error itself is printed by the caller).
    pub fn fail(&mut self) {
        self.finish("FAILED");
    }

    fn finish(&mut self, note: &str) {
        let Ok(mut c) = self.current.lock() else {
            return;
        };
        let Some(started) = c.started.take() else {
            return;
        };
        let line = format!(
            "[{}/{}] {} ... {note} ({})",
            c.number,
            self.total,
            c.label,
            secs(started.elapsed())
        );
        let mut err = std::io::stderr().lock();
        let _ = match self.mode {
            Mode::Terminal => writeln!(err, "\r\x1b[2K{line}"),
            Mode::Plain => writeln!(err, "{line}"),
            Mode::Quiet => Ok(()),
        };
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish("ok");
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.spinner.take() {
            let _ = h.join();
        }
    }
}

/// Redraws the running step with a spinner until told to stop.
fn spin(current: &Mutex<Current>, stop: &AtomicBool, total: usize, unicode: bool) {
    let frames: &[&str] = if unicode {
        &["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"]
    } else {
        &["|", "/", "-", "\\"]
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(c) = current.lock()
            && let Some(started) = c.started
        {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{} [{}/{total}] {} ... {}",
                frames[i % frames.len()],
                c.number,
                c.label,
                secs(started.elapsed())
            );
            let _ = err.flush();
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
