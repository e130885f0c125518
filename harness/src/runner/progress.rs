//! Progress of `bench run`: bars on a terminal (runs overall; steps of the current run with loss,
//! steps/s and ETA), plain log lines when stderr is not a terminal (CI logs, Slurm output files).
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exit::Verbosity;

pub struct Progress {
    verbosity: Verbosity,
    bars: Option<(MultiProgress, ProgressBar)>,
    current: Option<CurrentRun>,
}

struct CurrentRun {
    id: String,
    steps: usize,
    started: Instant,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

/// Plain-log cadence: at most one line per interval, plus the first and last step.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(total_runs: usize, verbosity: Verbosity) -> Self {
        let bars = (std::io::stderr().is_terminal() && verbosity != Verbosity::Quiet).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let runs = multi.add(ProgressBar::new(total_runs as u64));
            runs.set_style(
                ProgressStyle::with_template("runs {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            (multi, runs)
        });
        Self { verbosity, bars, current: None }
    }

    /// An error line: printed at every verbosity, `-q` included (without tearing a bar).
    pub fn error(&self, line: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// A line that must not tear a progress bar.
    pub fn println(&self, line: &str) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn start_run(&mut self, id: &str, steps: usize) {
        let bar = self.bars.as_ref().map(|(multi, _)| {
            let bar = multi.add(ProgressBar::new(steps as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "  {prefix} step {pos}/{len} [{bar:25}] {per_sec} eta {eta} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(id.to_string());
            bar
        });
        if bar.is_none() {
            self.println(&format!("run {id}: {steps} steps"));
        }
        let now = Instant::now();
        self.current = Some(CurrentRun { id: id.to_string(), steps, started: now, bar, last_line: now });
    }

    /// Reports a finished step (0-based) and its loss.
    pub fn step(&mut self, step: usize, loss: f64) {
        let verbose = self.verbosity == Verbosity::Verbose;
        let quiet = self.verbosity == Verbosity::Quiet;
        let Some(run) = self.current.as_mut() else { return };
        let done = step + 1;
        if let Some(bar) = &run.bar {
            bar.set_position(done as u64);
            bar.set_message(format!("loss {loss:.4}"));
            return;
        }
        let now = Instant::now();
        let due = verbose || done == 1 || done == run.steps || now.duration_since(run.last_line) >= LOG_EVERY;
        if quiet || !due {
            return;
        }
        run.last_line = now;
        let elapsed = now.duration_since(run.started).as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let eta = (run.steps - done) as f64 / rate.max(1e-9);
        eprintln!("  {} step {done}/{} loss {loss:.4} {rate:.2} steps/s eta {eta:.0}s", run.id, run.steps);
    }

    pub fn finish_run(&mut self, status: &str) {
        if let Some(run) = self.current.take() {
            if let Some(bar) = run.bar {
                bar.finish_and_clear();
            }
            let secs = run.started.elapsed().as_secs_f64();
            self.println(&format!("run {}: {status} in {secs:.1}s", run.id));
        }
        if let Some((_, runs)) = &self.bars {
            runs.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some((_, runs)) = &self.bars {
            runs.finish_and_clear();
        }
    }
}
