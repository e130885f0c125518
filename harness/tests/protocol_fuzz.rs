//! No malformed input panics: random mutations of a valid protocol are either accepted or
//! rejected with well-formed, positioned errors.
use std::path::Path;

use harness::protocol;
use proptest::prelude::*;

const BASE: &str = include_str!("fixtures/protocols/base.toml");

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DupLine(usize),
    SwapLines(usize, usize),
    Replace(usize, String),
    /// Replaces the value of the n-th `key = value` line: reaches the checker, not just the parser.
    ReplaceValue(usize, String),
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("1e308".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("\"\"".to_string()),
        Just("\"cs-dfd\"".to_string()),
        Just("\"FF-DF\"".to_string()),
        Just("\"../../nope\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("true".to_string()),
        Just("1979-05-27".to_string()),
        Just("{ name = \"sgd\", lr = -1 }".to_string()),
        Just("{ name = \"cosine\", warmup_steps = 100000 }".to_string()),
        Just("{ train = 0, test = 1 }".to_string()),
        any::<i64>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        "[a-z+-]{0,8}".prop_map(|s| format!("{s:?}")),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippet = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("{ name = \"sgd\" }".to_string()),
        Just("-1".to_string()),
        Just("1e999".to_string()),
        Just("99999999999999999999".to_string()),
        Just("nan".to_string()),
        Just("[[test]]\n".to_string()),
        Just("[methods.X]\n".to_string()),
        Just("é".to_string()),
        "[ -~]{0,6}",
    ];
    prop_oneof![
        (0..BASE.len(), 1..20usize).prop_map(|(a, n)| Edit::Delete(a, n)),
        (0..BASE.len(), snippet.clone()).prop_map(|(a, s)| Edit::Insert(a, s)),
        (0..60usize).prop_map(Edit::DupLine),
        (0..60usize, 0..60usize).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (0..BASE.len(), snippet).prop_map(|(a, s)| Edit::Replace(a, s)),
        (0..40usize, value()).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
        (0..40usize, value()).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
    ]
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, e: &Edit) -> String {
    let mut s = text.to_string();
    match e {
        Edit::Delete(a, n) => {
            let a = floor_char(&s, *a);
            let b = floor_char(&s, a + n);
            s.replace_range(a..b, "");
        }
        Edit::Insert(a, x) => {
            let a = floor_char(&s, *a);
            s.insert_str(a, x);
        }
        Edit::Replace(a, x) => {
            let a = floor_char(&s, *a);
            let b = floor_char(&s, a + x.len());
            s.replace_range(a..b, x);
        }
        Edit::DupLine(i) => {
            let mut lines: Vec<&str> = s.lines().collect();
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            s = lines.join("\n");
        }
        Edit::ReplaceValue(i, v) => {
            let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&k| lines[k].contains(" = ") && !lines[k].starts_with('#'))
                .collect();
            let k = assignments[i % assignments.len()];
            let key = lines[k].split(" = ").next().unwrap().to_string();
            lines[k] = format!("{key} = {v}");
            s = lines.join("\n");
        }
        Edit::SwapLines(i, j) => {
            let mut lines: Vec<&str> = s.lines().collect();
            let n = lines.len();
            lines.swap(i % n, j % n);
            s = lines.join("\n");
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_protocols_never_panic(edits in prop::collection::vec(edit(), 1..4)) {
        let mut text = BASE.to_string();
        for e in &edits {
            text = apply(&text, e);
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocols/fuzz.toml");
        match protocol::load_str(&text, &path) {
            Ok(p) => {
                let runs = harness::plan::expand(&p);
                prop_assert!(!runs.is_empty());
            }
            Err(errs) => {
                prop_assert!(!errs.0.is_empty());
                let lines = text.split('\n').count();
                for e in &errs.0 {
                    prop_assert!(e.line >= 1 && e.line <= lines, "{e} (text has {lines} lines)");
                    prop_assert!(e.col >= 1);
                    prop_assert!(!e.message.is_empty());
                    prop_assert!(!e.message.contains("internal error"), "{}", e);
                    prop_assert_eq!(&e.file, &path);
                }
            }
        }
    }
}
