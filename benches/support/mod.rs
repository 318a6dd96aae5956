//! What every bench shares: how many runs a figure takes, the median of them, and the one
//! line format each figure is printed in, so that `benches/support.py` (and the CPython
//! comparison scripts on top of it) read every bench the same way.
//!
//! # The figure line
//!
//! ```text
//! figure <name> <value> <unit> runs <v1,v2,...> [baseline <name> <value> <unit> runs <v1,...>]
//! ```
//!
//! One line per figure, on stdout, starting with `figure `. Names and units hold no
//! whitespace (`map_20k_chunksize_1`, `ktasks/s`); `<value>` is the median of the runs
//! listed after `runs` (comma-separated, no spaces). The baseline, when a figure has one,
//! is the same work without the process hop (or the kernel's floor for it), measured in the
//! same run of the bench and printed in the same shape. Lines starting with `note ` are
//! free text for people; every other line is ignored by the scripts.
//!
//! After its last figure a bench prints the same figures as a table for people
//! ([`Report::finish`]).
//!
//! # Runs
//!
//! Each figure is the median of its runs, because this machine's timings vary from run to
//! run. A figure has its own default count (what it took before there was a setting);
//! `TKMP_BENCH_REPEAT=N` sets every figure of every bench to `N` runs (a smoke test uses 1).

#![allow(dead_code)] // each bench uses part of this module

pub mod eventfd;
pub mod ponger;
pub mod raw_ping_pong;
pub mod reexec;

use std::future::Future;
use std::time::Duration;

/// The environment variable that sets how many runs every figure takes.
pub const REPEAT_VAR: &str = "TKMP_BENCH_REPEAT";

/// How many runs a figure takes: `TKMP_BENCH_REPEAT` if set (at least 1), else `default`.
pub fn runs(default: usize) -> usize {
    std::env::var(REPEAT_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(default)
        .max(1)
}

/// `f` run `n` times, one value per run.
pub fn repeat<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<T> {
    (0..n).map(|_| f()).collect()
}

/// The future `f` makes, awaited `n` times one after the other; the first error ends it.
pub async fn try_repeat<T, E, Fut>(n: usize, mut f: impl FnMut() -> Fut) -> Result<Vec<T>, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(f().await?);
    }
    Ok(out)
}

/// The median of `runs` (the upper one of the middle two for an even count), 0 for none.
pub fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One measured quantity: a name, a unit and every run's value. Its value is the median.
#[derive(Clone, Debug)]
pub struct Figure {
    name: String,
    unit: String,
    runs: Vec<f64>,
    baseline: Option<Box<Figure>>,
}

impl Figure {
    /// A figure from its runs. Panics if `name` or `unit` holds whitespace, or on no runs:
    /// the line would not parse.
    pub fn new(name: impl Into<String>, unit: impl Into<String>, runs: Vec<f64>) -> Figure {
        let (name, unit) = (name.into(), unit.into());
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "figure name {name:?}"
        );
        assert!(
            !unit.is_empty() && !unit.contains(char::is_whitespace),
            "figure unit {unit:?}"
        );
        assert!(!runs.is_empty(), "figure {name} has no runs");
        Figure {
            name,
            unit,
            runs,
            baseline: None,
        }
    }

    /// This figure with `baseline` beside it.
    pub fn baseline(mut self, baseline: Figure) -> Figure {
        self.baseline = Some(Box::new(Figure {
            baseline: None,
            ..baseline
        }));
        self
    }

    /// The median of the runs.
    pub fn value(&self) -> f64 {
        median(&self.runs)
    }

    /// The figure's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name value unit runs v1,v2,...` (no `figure` word, no baseline).
    fn fields(&self) -> String {
        let runs: Vec<String> = self.runs.iter().map(|v| format!("{v:.3}")).collect();
        format!(
            "{} {:.3} {} runs {}",
            self.name,
            self.value(),
            self.unit,
            runs.join(",")
        )
    }

    /// The machine-readable line (see the module docs).
    pub fn line(&self) -> String {
        match &self.baseline {
            Some(b) => format!("figure {} baseline {}", self.fields(), b.fields()),
            None => format!("figure {}", self.fields()),
        }
    }

    /// Smallest and largest run, as `min..max`.
    fn spread(&self) -> String {
        let lo = self.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{}..{}", short(lo), short(hi))
    }
}

/// A value with about four significant digits, for the table.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A bench's figures: each printed as a line when it is added, all of them as a table at
/// the end.
pub struct Report {
    bench: &'static str,
    figures: Vec<Figure>,
}

impl Report {
    /// An empty report for bench `bench`; prints a note naming the bench and the run setting.
    pub fn new(bench: &'static str) -> Report {
        let setting = std::env::var(REPEAT_VAR)
            .map(|v| format!("{REPEAT_VAR}={v}"))
            .unwrap_or_else(|_| format!("{REPEAT_VAR} unset: each figure's default run count"));
        println!("note bench {bench}: each figure is the median of its runs ({setting})");
        Report {
            bench,
            figures: Vec::new(),
        }
    }

    /// Prints `figure`'s line now and keeps it for the table.
    pub fn add(&mut self, figure: Figure) {
        println!("{}", figure.line());
        self.figures.push(figure);
    }

    /// Prints a free-text note line.
    pub fn note(&self, text: impl std::fmt::Display) {
        println!("note {text}");
    }

    /// Prints every figure as a table: value, unit, run count and spread, then the baseline
    /// and the figure's ratio to it.
    pub fn finish(self) {
        let mut rows = vec![[
            "name".to_string(),
            "value".into(),
            "unit".into(),
            "runs".into(),
            "min..max".into(),
            "baseline".into(),
            "value".into(),
            "unit".into(),
            "ratio".into(),
        ]];
        for f in &self.figures {
            let (bn, bv, bu, ratio) = match &f.baseline {
                Some(b) => (
                    b.name.clone(),
                    short(b.value()),
                    b.unit.clone(),
                    if b.value() != 0.0 {
                        format!("{:.2}x", f.value() / b.value())
                    } else {
                        "-".into()
                    },
                ),
                None => ("-".into(), String::new(), String::new(), String::new()),
            };
            rows.push([
                f.name.clone(),
                short(f.value()),
                f.unit.clone(),
                f.runs.len().to_string(),
                f.spread(),
                bn,
                bv,
                bu,
                ratio,
            ]);
        }
        let mut width = [0usize; 9];
        for row in &rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        println!();
        println!("{} (median of each figure's runs)", self.bench);
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(width).enumerate() {
                // Numbers right-aligned, words left-aligned.
                if matches!(i, 1 | 3 | 6 | 8) {
                    line.push_str(&format!("{cell:>w$}  "));
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// The error a bench's `main` reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `f` gives, or an error naming the figure `name` once it has taken longer than
/// `limit` (a figure that hangs fails its bench instead of holding the machine).
pub async fn bounded<T, E: Into<BoxError>>(
    name: &str,
    limit: Duration,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(format!("{name} took longer than {limit:?}").into()),
    }
}

/// This process's resident set size in KiB, from `/proc/self/status` (0 if unknown).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
