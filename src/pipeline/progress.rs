//! A progress line on stderr with rate and ETA (redrawn in place on a terminal, one line
//! every few seconds otherwise, so logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Progress {
        Progress { label: label.into(), total, done: 0, start: Instant::now(), last: None, tty: std::io::stderr().is_terminal(), quiet: false }
    }
    /// No output at all (tests, library use).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }
    /// `n` more items to do than planned (work done again, or split).
    pub fn grow(&mut self, n: usize) {
        self.total += n;
    }
    /// Marks `n` more items done; `note` is shown at the end of the line (e.g. the loss).
    pub fn advance(&mut self, n: usize, note: &str) {
        self.done += n;
        let now = Instant::now();
        let every = if self.tty { Duration::from_millis(100) } else { Duration::from_secs(10) };
        if self.quiet || (self.done < self.total && self.last.is_some_and(|l| now - l < every)) {
            return;
        }
        self.last = Some(now);
        eprint!("{}{}", self.line(now, note), if self.tty { "\r" } else { "\n" });
        if self.tty && self.done >= self.total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
    fn line(&self, now: Instant, note: &str) -> String {
        let secs = (now - self.start).as_secs_f64();
        let frac = if self.total == 0 { 1.0 } else { self.done as f64 / self.total as f64 };
        let width = 24;
        let bar: String = (0..width).map(|i| if (i as f64) < frac * width as f64 { '#' } else { '-' }).collect();
        let eta = if self.done > 0 && self.done < self.total { format!(" eta {}", hms(secs / self.done as f64 * (self.total - self.done) as f64)) } else { String::new() };
        let rate = if secs > 0.0 && self.done > 0 { format!(" {:.2}/s", self.done as f64 / secs) } else { String::new() };
        format!("{} [{bar}] {}/{} {}{rate}{eta} {note}\x1b[K", self.label, self.done, self.total, hms(secs))
            .replace("\x1b[K", if self.tty { "\x1b[K" } else { "" })
    }
}

/// Seconds as h:mm:ss or m:ss.
pub fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}
