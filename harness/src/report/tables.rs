//! Tables in the papers' shapes, rendered as Markdown, CSV and LaTeX.
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::aggregate::{AVG, Aggregates, Stat};
use super::load::{Group, Loaded, cmp_values};
use crate::results::{Level, Role};

/// Table ids `bench report` knows.
pub const TABLE_IDS: [&str; 7] = [
    "csdfd-table1",
    "csdfd-table2",
    "csdfd-table3",
    "roga-table2",
    "roga-table4",
    "sensitivity",
    "imbalance",
];

#[derive(Debug, Clone)]
pub enum Cell {
    /// A metric as a fraction in [0, 1] (shown in percent) or a plain number.
    Stat(Stat),
    Text(String),
    Missing,
}

pub struct Table {
    pub id: String,
    pub title: String,
    /// Header of the label columns (usually one: "Method").
    pub label_header: Vec<String>,
    pub columns: Vec<String>,
    pub rows: Vec<(Vec<String>, Vec<Cell>)>,
    /// Multiply statistics by 100 (metrics in percent, as the papers print them).
    pub percent: bool,
    pub notes: Vec<String>,
}

pub struct Ctx<'a> {
    pub loaded: &'a Loaded,
    pub agg: &'a Aggregates,
    pub baseline: Option<&'a str>,
    pub level: Level,
}

impl Ctx<'_> {
    pub fn display(&self, method: &str) -> String {
        self.loaded.display.get(method).cloned().unwrap_or_else(|| method.to_string())
    }

    /// Row order: backbone, then the baseline before other methods, then method name, then
    /// sweep points in numeric order, then fold.
    pub fn cmp_groups(&self, a: &Group, b: &Group) -> Ordering {
        let is_base = |g: &Group| Some(g.method.as_str()) != self.baseline;
        a.backbone
            .cmp(&b.backbone)
            .then_with(|| is_base(a).cmp(&is_base(b)))
            .then_with(|| a.method.cmp(&b.method))
            .then_with(|| self.cmp_sweeps(&a.sweep, &b.sweep))
            .then_with(|| a.fold.cmp(&b.fold))
    }

    pub fn cmp_sweeps(&self, a: &str, b: &str) -> Ordering {
        let sv = &self.loaded.sweep_values;
        match (sv.get(a), sv.get(b)) {
            (Some(x), Some(y)) => cmp_values(x, y).then_with(|| a.cmp(b)),
            _ => a.cmp(b),
        }
    }

    /// Distinct groups (of the complete runs), sorted.
    pub fn groups(&self) -> Vec<Group> {
        let set: BTreeSet<Group> = self.loaded.runs.iter().map(|r| r.group.clone()).collect();
        let mut v: Vec<Group> = set.into_iter().collect();
        v.sort_by(|a, b| self.cmp_groups(a, b));
        v
    }

    /// Groups with the fold cleared (rows of the tables whose columns are folds).
    fn groups_without_fold(&self) -> Vec<Group> {
        let mut v: Vec<Group> =
            self.groups().into_iter().map(|g| Group { fold: String::new(), ..g }).collect();
        v.dedup();
        v.sort_by(|a, b| self.cmp_groups(a, b));
        v.dedup();
        v
    }

    fn folds(&self) -> Vec<String> {
        self.loaded.runs.iter().map(|r| r.group.fold.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// A row label: the display name, qualified by whatever varies among the rows shown.
    pub fn label(&self, g: &Group, rows: &[Group], with_backbone: bool, with_fold: bool) -> String {
        let varies = |f: fn(&Group) -> &String| rows.iter().map(f).collect::<BTreeSet<_>>().len() > 1;
        let mut q = Vec::new();
        if with_backbone && varies(|g| &g.backbone) {
            q.push(g.backbone.clone());
        }
        if varies(|g| &g.sweep) && !g.sweep.is_empty() {
            q.push(g.sweep.clone());
        }
        if with_fold && varies(|g| &g.fold) && !g.fold.is_empty() {
            q.push(format!("fold {}", g.fold));
        }
        let d = self.display(&g.method);
        if q.is_empty() { d } else { format!("{d} [{}]", q.join(", ")) }
    }

    fn stat(&self, g: &Group, test_set: &str, metric: &str) -> Cell {
        self.agg.get(g, test_set, self.level, metric).map_or(Cell::Missing, Cell::Stat)
    }

    /// Test-set columns (in order of first appearance) plus AVG.
    fn set_columns(&self) -> Vec<String> {
        let mut c: Vec<String> = self.agg.test_sets.iter().map(|(t, _)| t.clone()).collect();
        c.push(AVG.into());
        c
    }

    fn common_notes(&self, t: &mut Table, metric: &str) {
        let seeds: BTreeSet<usize> = t
            .rows
            .iter()
            .flat_map(|(_, cells)| cells.iter())
            .filter_map(|c| if let Cell::Stat(s) = c { Some(s.n) } else { None })
            .collect();
        let seeds = seeds.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/");
        t.notes.push(format!(
            "{} {} (%), mean ± sample std over seeds (seeds per cell: {seeds}); \"–\" = not run or undefined.",
            self.level.as_str(),
            metric.to_uppercase()
        ));
        if t.columns.iter().any(|c| c == AVG) {
            t.notes.push(if self.agg.avg_over_unseen {
                let unseen: Vec<&str> = self
                    .agg
                    .test_sets
                    .iter()
                    .filter(|(_, r)| *r == Role::Unseen)
                    .map(|(s, _)| s.as_str())
                    .collect();
                format!("AVG: per-seed mean over the run's unseen test sets ({}).", unseen.join(", "))
            } else {
                "AVG: per-seed mean over all test sets (the runs have no unseen test set).".into()
            });
        }
        let mut shown = BTreeSet::new();
        for (labels, _) in &t.rows {
            for (m, d) in &self.loaded.display {
                if d.contains("reconstructed")
                    && labels.iter().any(|l| l.contains(d.as_str()))
                    && shown.insert(m)
                {
                    t.notes.push(format!(
                        "{d}: the update rule is reconstructed from the paper's description (no public \
                         code); its numbers are not the authors'."
                    ));
                }
            }
        }
    }

    fn sets_table(
        &self,
        id: &str,
        title: &str,
        rows: Vec<(Vec<String>, Group)>,
        label_header: Vec<String>,
    ) -> Table {
        let columns = self.set_columns();
        let rows = rows
            .into_iter()
            .map(|(labels, g)| (labels, columns.iter().map(|c| self.stat(&g, c, "auc")).collect()))
            .collect();
        let mut t = Table {
            id: id.into(),
            title: title.into(),
            label_header,
            columns,
            rows,
            percent: true,
            notes: vec![],
        };
        self.common_notes(&mut t, "auc");
        t
    }

    pub fn build(&self, id: &str) -> Option<Table> {
        let groups = self.groups();
        let t = match id {
            "csdfd-table1" | "csdfd-table3" => {
                let rows =
                    groups.iter().map(|g| (vec![self.label(g, &groups, true, true)], g.clone())).collect();
                let title = if id == "csdfd-table1" {
                    "Cross-dataset AUC (CS-DFD Table I)"
                } else {
                    "Ablation: AUC of the modules (CS-DFD Table III)"
                };
                self.sets_table(id, title, rows, vec!["Method".into()])
            }
            "csdfd-table2" => {
                let rows = groups
                    .iter()
                    .map(|g| {
                        (vec![format!("{} ({})", g.backbone, self.label(g, &groups, false, true))], g.clone())
                    })
                    .collect();
                self.sets_table(
                    id,
                    "AUC per backbone and training strategy (CS-DFD Table II)",
                    rows,
                    vec!["Backbone (strategy)".into()],
                )
            }
            "sensitivity" => {
                let rows = groups
                    .iter()
                    .map(|g| {
                        let base = Group { sweep: String::new(), ..g.clone() };
                        let name = self.label(&base, &groups, true, true);
                        let point = if g.sweep.is_empty() { "–".to_string() } else { g.sweep.clone() };
                        (vec![name, point], g.clone())
                    })
                    .collect();
                self.sets_table(
                    id,
                    "Sensitivity to hyperparameters (CS-DFD Fig. 7, RoGA Table VI)",
                    rows,
                    vec!["Method".into(), "Setting".into()],
                )
            }
            "roga-table2" | "roga-table4" => self.fold_table(id),
            "imbalance" => self.imbalance_table(),
            _ => return None,
        };
        Some(t)
    }

    /// Columns (fold, test set) with AUC and ACC; rows are groups without the fold.
    /// roga-table2 takes each fold's unseen test sets (the held-out manipulation), roga-table4
    /// every test set.
    fn fold_table(&self, id: &str) -> Table {
        let folds = self.folds();
        let with_fold_name = folds.len() > 1 || folds.first().is_some_and(|f| !f.is_empty());
        let mut cols: Vec<(String, String)> = Vec::new();
        for f in &folds {
            let mut sets: Vec<&str> = Vec::new();
            for (ts, role) in &self.agg.test_sets {
                if id == "roga-table2" && *role != Role::Unseen {
                    continue;
                }
                let present = self.loaded.runs.iter().any(|r| {
                    r.group.fold == *f && r.metrics.iter().any(|m| m.test_set == *ts && m.level == self.level)
                });
                if present {
                    sets.push(ts);
                }
            }
            for ts in sets {
                cols.push((f.clone(), ts.to_string()));
            }
        }
        let rows_g = self.groups_without_fold();
        let mut columns = Vec::new();
        for (f, ts) in &cols {
            // roga-table2 names a column by its fold alone when the fold has one held-out set.
            let one_set = cols.iter().filter(|(g, _)| g == f).count() == 1;
            let name = if !with_fold_name {
                ts.clone()
            } else if id == "roga-table2" && one_set {
                f.clone()
            } else {
                format!("{f} → {ts}")
            };
            columns.push(format!("{name} AUC"));
            columns.push(format!("{name} ACC"));
        }
        let rows = rows_g
            .iter()
            .map(|g| {
                let mut cells = Vec::new();
                for (f, ts) in &cols {
                    let gf = Group { fold: f.clone(), ..g.clone() };
                    cells.push(self.stat(&gf, ts, "auc"));
                    cells.push(self.stat(&gf, ts, "acc"));
                }
                (vec![self.label(g, &rows_g, true, false)], cells)
            })
            .collect();
        let title = if id == "roga-table2" {
            "Leave-one-manipulation-out: held-out manipulation AUC / ACC (RoGA Table II)"
        } else {
            "Optimizers: AUC / ACC per training fold and test set (RoGA Table IV)"
        };
        let mut t = Table {
            id: id.into(),
            title: title.into(),
            label_header: vec!["Method".into()],
            columns,
            rows,
            percent: true,
            notes: vec![],
        };
        self.common_notes(&mut t, "auc/acc");
        if with_fold_name {
            t.notes.push("Column names: training fold (held-out manipulation) → test set.".into());
        }
        t
    }

    /// Rows: sweep point (the real:fake ratio); columns: methods; cells: AVG AUC.
    fn imbalance_table(&self) -> Table {
        let groups = self.groups();
        let mut points: Vec<String> =
            groups.iter().map(|g| g.sweep.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        points.sort_by(|a, b| self.cmp_sweeps(a, b));
        let mut methods: Vec<Group> =
            groups.iter().map(|g| Group { sweep: String::new(), ..g.clone() }).collect();
        methods.sort_by(|a, b| self.cmp_groups(a, b));
        methods.dedup();
        let columns = methods.iter().map(|m| self.label(m, &methods, true, true)).collect();
        let rows = points
            .iter()
            .map(|p| {
                let cells = methods
                    .iter()
                    .map(|m| self.stat(&Group { sweep: p.clone(), ..m.clone() }, AVG, "auc"))
                    .collect();
                (vec![if p.is_empty() { "–".into() } else { p.clone() }], cells)
            })
            .collect();
        let mut t = Table {
            id: "imbalance".into(),
            title: "Class imbalance: AVG AUC per training real:fake ratio".into(),
            label_header: vec!["Setting".into()],
            columns,
            rows,
            percent: true,
            notes: vec![],
        };
        self.common_notes(&mut t, "avg auc");
        t
    }
}

/// Formats one statistic; `percent` scales by 100. Two decimals as the papers print.
pub fn fmt_stat(s: &Stat, percent: bool) -> String {
    let k = if percent { 100.0 } else { 1.0 };
    match s.std {
        Some(sd) => format!("{:.2} ± {:.2}", s.mean * k, sd * k),
        None => format!("{:.2}", s.mean * k),
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn to_markdown(t: &Table) -> String {
    let mut out = format!("### {}\n\n", t.title);
    let header: Vec<String> = t.label_header.iter().chain(&t.columns).map(|s| md_escape(s)).collect();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> =
        t.label_header.iter().map(|_| "---").chain(t.columns.iter().map(|_| "---:")).collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for (labels, cells) in &t.rows {
        let mut parts: Vec<String> = labels.iter().map(|s| md_escape(s)).collect();
        parts.extend(cells.iter().map(|c| match c {
            Cell::Stat(s) => fmt_stat(s, t.percent),
            Cell::Text(x) => md_escape(x),
            Cell::Missing => "–".into(),
        }));
        let _ = writeln!(out, "| {} |", parts.join(" | "));
    }
    if !t.notes.is_empty() {
        out.push('\n');
        for n in &t.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// CSV: label columns, then per data column `<col>` (mean) and `<col> std`, numbers in the
/// table's unit with 4 decimals, empty = missing, and `<col> n` (seeds).
pub fn to_csv(t: &Table) -> String {
    let mut header: Vec<String> = t.label_header.clone();
    for c in &t.columns {
        header.push(c.clone());
        header.push(format!("{c} std"));
        header.push(format!("{c} n"));
    }
    let mut out = header.iter().map(|s| csv_field(s)).collect::<Vec<_>>().join(",");
    out.push('\n');
    let k = if t.percent { 100.0 } else { 1.0 };
    for (labels, cells) in &t.rows {
        let mut parts: Vec<String> = labels.iter().map(|s| csv_field(s)).collect();
        for c in cells {
            match c {
                Cell::Stat(s) => {
                    parts.push(format!("{:.4}", s.mean * k));
                    parts.push(s.std.map(|v| format!("{:.4}", v * k)).unwrap_or_default());
                    parts.push(s.n.to_string());
                }
                Cell::Text(x) => {
                    parts.push(csv_field(x));
                    parts.push(String::new());
                    parts.push(String::new());
                }
                Cell::Missing => parts.extend([String::new(), String::new(), "0".into()]),
            }
        }
        out.push_str(&parts.join(","));
        out.push('\n');
    }
    out
}

pub fn tex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                o.push('\\');
                o.push(ch)
            }
            '~' => o.push_str("\\textasciitilde{}"),
            '^' => o.push_str("\\textasciicircum{}"),
            '\\' => o.push_str("\\textbackslash{}"),
            '→' => o.push_str("$\\rightarrow$"),
            '–' => o.push_str("--"),
            '±' => o.push_str("$\\pm$"),
            _ => o.push(ch),
        }
    }
    o
}

/// A booktabs `table` environment.
pub fn to_latex(t: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "% Generated by `bench report`; needs \\usepackage{{booktabs}}.");
    let _ = writeln!(out, "\\begin{{table}}[t]\n\\centering\n\\caption{{{}}}", tex_escape(&t.title));
    let _ = writeln!(out, "\\label{{tab:{}}}", t.id);
    let spec: String = t.label_header.iter().map(|_| 'l').chain(t.columns.iter().map(|_| 'c')).collect();
    let _ = writeln!(out, "\\begin{{tabular}}{{{spec}}}\n\\toprule");
    let header: Vec<String> = t.label_header.iter().chain(&t.columns).map(|s| tex_escape(s)).collect();
    let _ = writeln!(out, "{} \\\\\n\\midrule", header.join(" & "));
    for (labels, cells) in &t.rows {
        let mut parts: Vec<String> = labels.iter().map(|s| tex_escape(s)).collect();
        parts.extend(cells.iter().map(|c| match c {
            Cell::Stat(s) => tex_escape(&fmt_stat(s, t.percent)),
            Cell::Text(x) => tex_escape(x),
            Cell::Missing => "--".into(),
        }));
        let _ = writeln!(out, "{} \\\\", parts.join(" & "));
    }
    let _ = writeln!(out, "\\bottomrule\n\\end{{tabular}}");
    if !t.notes.is_empty() {
        let _ = writeln!(out, "\\par\\footnotesize");
        for n in &t.notes {
            let _ = writeln!(out, "{}\\\\", tex_escape(n));
        }
    }
    let _ = writeln!(out, "\\end{{table}}");
    out
}
