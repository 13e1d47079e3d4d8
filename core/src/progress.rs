//! Progress reporting: a bar on a terminal, a few plain lines otherwise (CI logs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Progress of `len` units of work: the bar of [`bar`] on a terminal; without one, a plain line
/// at every tenth of the work, so logs show that long work moves.
pub struct Progress {
    bar: ProgressBar,
    what: String,
    len: u64,
    /// Tenths already logged as plain lines.
    logged: AtomicU64,
    started: Instant,
}

impl Progress {
    pub fn new(len: u64, what: &str) -> Self {
        Progress { bar: bar(len, what), what: what.to_string(), len, logged: AtomicU64::new(0), started: Instant::now() }
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.log_plain();
    }

    pub fn set(&self, done: u64) {
        self.bar.set_position(done.min(self.len));
        self.log_plain();
    }

    fn log_plain(&self) {
        if !self.bar.is_hidden() || self.len == 0 {
            return;
        }
        let done = self.bar.position();
        let tenth = done * 10 / self.len;
        let logged = self.logged.load(Ordering::Relaxed);
        if tenth > logged && self.logged.compare_exchange(logged, tenth, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            eprintln!("{}: {done}/{} ({:.0} s)", self.what, self.len, self.started.elapsed().as_secs_f64());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
