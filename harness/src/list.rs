//! `bench list`: known methods, backbones, datasets and shipped protocols, one line each.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use detectors::methods::{ParamKind, ParamSpec};

use crate::exit::Verbosity;
use crate::protocol::{self, datasets};

#[derive(Debug, clap::Args)]
pub struct ListArgs {}

pub fn cmd_list(_args: ListArgs, v: Verbosity) -> anyhow::Result<ExitCode> {
    let mut lines = method_lines(v == Verbosity::Verbose);
    lines.extend(backbone_lines());
    lines.extend(dataset_lines());
    lines.extend(protocol_lines(&protocol_dirs()));
    crate::plan::print_lines(lines.iter().map(String::as_str))?;
    Ok(ExitCode::SUCCESS)
}

fn param_default(p: &ParamSpec) -> String {
    match p.kind {
        ParamKind::Float { default, .. } => format!("{}={default}", p.name),
        ParamKind::Int { default, .. } => format!("{}={default}", p.name),
        ParamKind::Bool { default } => format!("{}={default}", p.name),
        ParamKind::Choice { options } => format!("{}={}", p.name, options.first().unwrap_or(&"")),
    }
}

fn param_range(p: &ParamSpec) -> String {
    match p.kind {
        ParamKind::Float { min, max, min_exclusive, .. } => {
            format!("number in {}{min}, {max}]", if min_exclusive { "(" } else { "[" })
        }
        ParamKind::Int { min, max, .. } => format!("integer in [{min}, {max}]"),
        ParamKind::Bool { .. } => "true or false".into(),
        ParamKind::Choice { options } => {
            format!("one of {} (default {})", options.join(", "), options.first().unwrap_or(&""))
        }
    }
}

/// `method  <kind>  <display>  <hyperparameters with defaults>  <help>`; with `detail`, one
/// indented line per hyperparameter with its range and meaning.
pub fn method_lines(detail: bool) -> Vec<String> {
    let mut out = Vec::new();
    for m in detectors::methods::registry() {
        let params: Vec<String> = m.params.iter().map(param_default).collect();
        let params = if params.is_empty() { "-".to_string() } else { params.join(" ") };
        out.push(format!("method    {:<10} {:<22} {:<36} {}", m.kind, m.display, params, m.help));
        if detail {
            for p in m.params {
                out.push(format!("          {:<10} {:<46} {}", p.name, param_range(p), p.help));
            }
            if let Some(note) = m.note {
                out.push(format!("          note: {note}"));
            }
        }
    }
    out
}

/// `backbone  <name>  <parameter count or ->  <description>`.
pub fn backbone_lines() -> Vec<String> {
    detectors::backbones::registry()
        .iter()
        .map(|b| {
            // Counted without the classifier, at 256 px (Meso's width depends on the input size).
            let count = detectors::backbones::num_params(b.name, 256)
                .map_or(String::new(), |n| format!("{} params", human_count(n)));
            format!("backbone  {:<16} {:>14}  {}", b.name, count, b.description)
        })
        .collect()
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// `dataset  <name>  real <label>  fakes <labels>  <description>`.
pub fn dataset_lines() -> Vec<String> {
    datasets::registry()
        .iter()
        .map(|d| {
            let comp = if d.compressed { " (c23/c40/raw)" } else { "" };
            format!(
                "dataset   {:<20} real {:<15} fakes {:<40} {}{comp}",
                d.name,
                d.real,
                d.fakes.join(","),
                d.description
            )
        })
        .collect()
}

/// `protocols/` under the current directory and beside the harness crate (deduplicated).
pub fn protocol_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in [PathBuf::from("protocols"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols")] {
        if let Ok(c) = std::fs::canonicalize(&d)
            && c.is_dir()
            && !dirs.contains(&c)
        {
            dirs.push(c);
        }
    }
    dirs
}

/// `protocol  <file>  <name>: <runs> runs  <description>` (or its error count) per `*.toml`.
pub fn protocol_lines(dirs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let shown = display_path(&f);
            match protocol::load(&f) {
                Ok(p) => {
                    let runs = crate::plan::expand(&p).len();
                    let first = p.description.lines().next().unwrap_or("");
                    out.push(format!("protocol  {shown:<44} {:<28} {runs:>4} runs  {first}", p.name));
                }
                Err(e) => out.push(format!(
                    "protocol  {shown:<44} invalid ({} errors; run `bench validate {shown}`)",
                    e.0.len()
                )),
            }
        }
    }
    out
}

/// Relative to the current directory when below it (shorter, copy-pasteable).
fn display_path(p: &Path) -> String {
    let rel = std::env::current_dir().ok().and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf));
    rel.unwrap_or_else(|| p.to_path_buf()).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_abbreviated() {
        assert_eq!(human_count(1234), "1234");
        assert_eq!(human_count(27_977), "28k");
        assert_eq!(human_count(20_811_345), "20.8M");
    }

    #[test]
    fn every_registry_entry_gets_one_line() {
        assert_eq!(method_lines(false).len(), detectors::methods::registry().len());
        assert_eq!(backbone_lines().len(), detectors::backbones::registry().len());
        assert_eq!(dataset_lines().len(), datasets::registry().len());
        let detail = method_lines(true);
        let params: usize = detectors::methods::registry().iter().map(|m| m.params.len()).sum();
        let notes = detectors::methods::registry().iter().filter(|m| m.note.is_some()).count();
        assert_eq!(detail.len(), detectors::methods::registry().len() + params + notes);
    }
}
