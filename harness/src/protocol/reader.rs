//! Walking a spanned TOML document while collecting errors: positions, key paths, typed reads
//! and "did you mean" suggestions. Every read that fails records an error and returns `None`, so
//! the checker goes on and reports all the problems of a file at once.
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{ParamValue, ProtocolError, ProtocolErrors};

pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

pub(crate) struct Ctx<'s> {
    pub file: PathBuf,
    src: &'s str,
    line_starts: Vec<usize>,
    errors: Vec<ProtocolError>,
}

impl<'s> Ctx<'s> {
    pub fn new(src: &'s str, file: &Path) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Self { file: file.to_path_buf(), src, line_starts, errors: Vec::new() }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        // A span may (in theory) end inside a multi-byte character; count whole characters.
        let col = self.src.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    pub fn err(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, col) = self.position(span.start);
        self.errors.push(ProtocolError {
            file: self.file.clone(),
            line,
            col,
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn finish(mut self) -> ProtocolErrors {
        // Stable sort: errors at one position keep the order the checker found them in.
        self.errors.sort_by_key(|e| (e.line, e.col));
        self.errors.dedup();
        ProtocolErrors(self.errors)
    }

    // ---- typed reads -------------------------------------------------------------------------

    pub fn table<'a, 'i>(&mut self, path: &str, v: &'a Val<'i>) -> Option<Tbl<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Tbl { path: path.to_string(), span: v.span(), t }),
            other => {
                self.err(v.span(), path, format!("expected a table, found {}", type_name(other)));
                None
            }
        }
    }

    /// Reports every key of `t` not in `allowed`, with the nearest allowed name.
    pub fn check_keys(&mut self, t: &Tbl<'_, '_>, allowed: &[&str]) {
        for (k, _) in t.t.iter() {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) {
                let what = if t.path.is_empty() {
                    "unknown top-level key".to_string()
                } else {
                    "unknown key".into()
                };
                self.err(
                    k.span(),
                    &t.child(name),
                    format!("{what} `{name}`{}", hint(name, allowed.iter().copied())),
                );
            }
        }
    }

    /// A key that must be present; reports it missing at the table's position.
    pub fn require<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str, expected: &str) -> Option<&'a Val<'i>> {
        let v = t.get(key);
        if v.is_none() {
            let at = match t.path.split_once('[') {
                _ if t.path.is_empty() => "the file".to_string(),
                Some((array, _)) => format!("this [[{array}]] table"),
                None => format!("[{}]", t.path),
            };
            self.err(
                t.span.clone(),
                &t.child(key),
                format!("missing required key `{key}` in {at} (expected {expected})"),
            );
        }
        v
    }

    pub fn string(&mut self, path: &str, v: &Val<'_>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.err(v.span(), path, format!("expected a string, found {}", type_name(other)));
                None
            }
        }
    }

    pub fn boolean(&mut self, path: &str, v: &Val<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.err(v.span(), path, format!("expected true or false, found {}", type_name(other)));
                None
            }
        }
    }

    /// An integer in `[min, max]`.
    pub fn int(&mut self, path: &str, v: &Val<'_>, min: i64, max: i64) -> Option<i64> {
        let x = match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(x) => x,
                Err(_) => {
                    self.err(v.span(), path, "integer does not fit in 64 bits");
                    return None;
                }
            },
            other => {
                self.err(v.span(), path, format!("expected an integer, found {}", type_name(other)));
                return None;
            }
        };
        if x < min || x > max {
            self.err(v.span(), path, format!("{x} is out of range: expected an integer in [{min}, {max}]"));
            return None;
        }
        Some(x)
    }

    /// A finite number (integers accepted) in `min..=max`, or `(min, max]` when `min_exclusive`.
    pub fn float(&mut self, path: &str, v: &Val<'_>, min: f64, max: f64, min_exclusive: bool) -> Option<f64> {
        let x = match number(v.get_ref()) {
            Some(x) => x,
            None => {
                self.err(v.span(), path, format!("expected a number, found {}", type_name(v.get_ref())));
                return None;
            }
        };
        let low_ok = if min_exclusive { x > min } else { x >= min };
        if !x.is_finite() || !low_ok || x > max {
            let lo = if min_exclusive { "(" } else { "[" };
            self.err(v.span(), path, format!("{x} is out of range: expected a number in {lo}{min}, {max}]"));
            return None;
        }
        Some(x)
    }

    /// A string among `options`, with a suggestion when it is not.
    pub fn choice(&mut self, path: &str, v: &Val<'_>, what: &str, options: &[&str]) -> Option<String> {
        let s = self.string(path, v)?;
        if options.contains(&s.as_str()) {
            Some(s)
        } else {
            self.err(v.span(), path, format!("unknown {what} `{s}`{}", hint(&s, options.iter().copied())));
            None
        }
    }

    pub fn array<'a, 'i>(&mut self, path: &str, v: &'a Val<'i>) -> Option<&'a [Val<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            other => {
                self.err(v.span(), path, format!("expected an array, found {}", type_name(other)));
                None
            }
        }
    }

    /// An array of strings, each with its span; reports duplicates.
    pub fn string_list(&mut self, path: &str, v: &Val<'_>) -> Option<Vec<(String, Range<usize>)>> {
        let items = self.array(path, v)?;
        let mut out: Vec<(String, Range<usize>)> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match self.string(&p, item) {
                Some(s) if out.iter().any(|(o, _)| *o == s) => {
                    self.err(item.span(), &p, format!("`{s}` is listed twice"));
                    ok = false;
                }
                Some(s) => out.push((s, item.span())),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A scalar as a hyperparameter value of the given registry kind.
    pub fn param(
        &mut self,
        path: &str,
        v: &Val<'_>,
        kind: &detectors::methods::ParamKind,
    ) -> Option<ParamValue> {
        use detectors::methods::ParamKind;
        match *kind {
            ParamKind::Float { min, max, min_exclusive, .. } => {
                self.float(path, v, min, max, min_exclusive).map(ParamValue::Float)
            }
            ParamKind::Int { min, max, .. } => self.int(path, v, min, max).map(ParamValue::Int),
            ParamKind::Bool { .. } => self.boolean(path, v).map(ParamValue::Bool),
            ParamKind::Choice { options } => self.choice(path, v, "value", options).map(ParamValue::Str),
        }
    }
}

/// A table being read, with its key path and position.
pub(crate) struct Tbl<'a, 'i> {
    pub path: String,
    pub span: Range<usize>,
    pub t: &'a DeTable<'i>,
}

impl<'a, 'i> Tbl<'a, 'i> {
    pub fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.t.get(key)
    }
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.t.get_key_value(key).map(|(k, _)| k.span())
    }
    pub fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// `parent.key`, quoting the key the way TOML would need it (`methods."O+S"`).
pub(crate) fn join(parent: &str, key: &str) -> String {
    let seg = if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() { seg } else { format!("{parent}.{seg}") }
}

/// Splits a dotted key path (`methods."O+S".c`) into its segments; `None` if malformed.
pub(crate) fn split_path(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    loop {
        let mut seg = String::new();
        match chars.peek() {
            Some('"') | Some('\'') => {
                let q = chars.next()?;
                loop {
                    match chars.next()? {
                        c if c == q => break,
                        '\\' if q == '"' => seg.push(chars.next()?),
                        c => seg.push(c),
                    }
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' || c == '\'' {
                        return None;
                    }
                    seg.push(c);
                    chars.next();
                }
                seg = seg.trim().to_string();
                if seg.is_empty() {
                    return None;
                }
            }
        }
        out.push(seg);
        match chars.next() {
            None => return Some(out),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

pub(crate) fn number(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(|x| x as f64),
        DeValue::Float(f) => f.as_str().parse().ok(),
        _ => None,
    }
}

pub(crate) fn type_name(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("string \"{}\"", s.escape_debug()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(_) => "a datetime".into(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// The candidates nearest to `word` (several when tied), if close enough to be a plausible typo.
pub fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Vec<&'c str> {
    let w = word.to_lowercase();
    let squash = |s: &str| s.replace(['-', '_', ' ', '.'], "");
    let mut best: Vec<&'c str> = Vec::new();
    let mut best_score = 0.6;
    for c in candidates {
        let cl = c.to_lowercase();
        let mut score =
            strsim::normalized_damerau_levenshtein(&w, &cl).max(strsim::jaro_winkler(&w, &cl) - 0.15);
        if squash(&cl) == squash(&w) {
            score = 1.0;
        }
        if score > best_score + 1e-12 {
            best_score = score;
            best = vec![c];
        } else if (score - best_score).abs() <= 1e-12 && !best.is_empty() && !best.contains(&c) {
            best.push(c);
        }
    }
    best.truncate(3);
    best
}

/// "; did you mean `x`?" or, when nothing is close, the list of valid names (if short).
pub fn hint<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str> + Clone) -> String {
    let close = suggest(word, candidates.clone());
    if !close.is_empty() {
        let names: Vec<String> = close.iter().map(|c| format!("`{c}`")).collect();
        return format!("; did you mean {}?", names.join(" or "));
    }
    let all: Vec<&str> = candidates.into_iter().collect();
    if all.is_empty() || all.len() > 12 {
        String::new()
    } else {
        format!("; expected one of {}", all.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "))
    }
}

/// Converts a spanned TOML value to a plain `toml::Value` (for serde-typed sub-tables).
pub(crate) fn to_value(v: &DeValue<'_>) -> Option<toml::Value> {
    Some(match v {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(i) => toml::Value::Integer(i64::from_str_radix(i.as_str(), i.radix()).ok()?),
        DeValue::Float(f) => toml::Value::Float(f.as_str().parse().ok()?),
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Datetime(d) => toml::Value::Datetime(*d),
        DeValue::Array(a) => {
            toml::Value::Array(a.iter().map(|x| to_value(x.get_ref())).collect::<Option<_>>()?)
        }
        DeValue::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, x)| Some((k.get_ref().to_string(), to_value(x.get_ref())?)))
                .collect::<Option<_>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        let cx = Ctx::new(src, Path::new("f.toml"));
        assert_eq!(cx.position(0), (1, 1));
        assert_eq!(cx.position(6), (2, 1));
        // `=` after "bé " is the 4th character of line 2 although byte 10.
        assert_eq!(cx.position(src.find('=').unwrap()), (1, 3));
        let eq2 = src.rfind('=').unwrap();
        assert_eq!(cx.position(eq2), (2, 4));
    }

    #[test]
    fn paths_round_trip() {
        assert_eq!(join("methods", "O+S"), "methods.\"O+S\"");
        assert_eq!(join("methods", "CS-DFD"), "methods.CS-DFD");
        assert_eq!(split_path("methods.CS-DFD.c").unwrap(), ["methods", "CS-DFD", "c"]);
        assert_eq!(split_path("methods.\"O+S\".streams").unwrap(), ["methods", "O+S", "streams"]);
        assert_eq!(split_path("methods.'a.b'.c").unwrap(), ["methods", "a.b", "c"]);
        assert!(split_path("methods..c").is_none());
        assert!(split_path("methods.\"open").is_none());
        assert!(split_path("").is_none());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("csdfd", ["erm", "cs-dfd", "cagrad"]), ["cs-dfd"]);
        assert_eq!(suggest("tua", ["c", "tau", "uvs", "cgr"]), ["tau"]);
        assert!(suggest("zzzzzz", ["erm", "cs-dfd"]).is_empty());
        assert_eq!(suggest("Meso4", ["meso4", "resnet18"]), ["meso4"]);
        assert_eq!(
            suggest("Celeb-DF", ["DFDC", "Celeb-DF-v1", "Celeb-DF-v2"]),
            ["Celeb-DF-v1", "Celeb-DF-v2"]
        );
        assert_eq!(
            hint("Celeb-DF", ["Celeb-DF-v1", "Celeb-DF-v2"]),
            "; did you mean `Celeb-DF-v1` or `Celeb-DF-v2`?"
        );
        assert_eq!(hint("x", ["sgd", "adam"]), "; expected one of `sgd`, `adam`");
    }
}
