//! Malformed protocols: every error names the file, the right line:col, the key path and what
//! was expected; all errors of a file are reported at once.
use std::path::{Path, PathBuf};

use harness::protocol::{self, ProtocolError};

const BASE: &str = include_str!("fixtures/protocols/base.toml");

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// 1-based line and column (in characters) of `needle`'s first occurrence, plus `skip` chars.
fn pos_of(text: &str, needle: &str, skip: usize) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in the test text")) + skip;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, col)
}

fn replace(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "`{old}` not in base.toml");
    BASE.replacen(old, new, 1)
}

fn errors_of(text: &str) -> (PathBuf, Vec<ProtocolError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), text);
    let errs = protocol::load(&p).expect_err("the protocol should be rejected").0;
    (p, errs, dir)
}

struct Case {
    what: &'static str,
    text: String,
    /// Where the error must point: the needle's position plus an offset.
    needle: &'static str,
    skip: usize,
    key: &'static str,
    message: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "syntax error",
            text: replace("batch_size = 16", "batch_size = = 16"),
            needle: "= = 16",
            skip: 2,
            key: "",
            message: &["TOML syntax error"],
        },
        Case {
            what: "unknown top-level key",
            text: replace("seeds = [0, 1]", "seeds = [0, 1]\nseed = 3"),
            needle: "seed = 3",
            skip: 0,
            key: "seed",
            message: &["unknown top-level key `seed`", "did you mean `seeds`?"],
        },
        Case {
            what: "unknown nested key",
            text: replace("resolution = 64", "resolutoin = 64"),
            needle: "resolutoin",
            skip: 0,
            key: "data.resolutoin",
            message: &["unknown key `resolutoin`", "did you mean `resolution`?"],
        },
        Case {
            what: "unknown precision",
            text: replace("batch_size = 16", "batch_size = 16\nprecision = \"fp16\""),
            needle: "\"fp16\"",
            skip: 0,
            key: "training.precision",
            message: &["unknown precision `fp16`"],
        },
        Case {
            what: "tf32 not a boolean",
            text: replace("batch_size = 16", "batch_size = 16\ntf32 = \"yes\""),
            needle: "\"yes\"",
            skip: 0,
            key: "training.tf32",
            message: &["expected true or false"],
        },
        Case {
            what: "unknown method kind",
            text: replace("kind = \"cs-dfd\"", "kind = \"csdfd\""),
            needle: "\"csdfd\"",
            skip: 0,
            key: "methods.CS-DFD.kind",
            message: &["unknown method kind `csdfd`; did you mean `cs-dfd`?"],
        },
        Case {
            what: "wrong type",
            text: replace("steps = 100", "steps = \"100\""),
            needle: "\"100\"",
            skip: 0,
            key: "training.steps",
            message: &["expected an integer, found string"],
        },
        Case {
            what: "hyperparameter out of range",
            text: replace("c = 0.5", "c = 0.5\ntau = 5.0"),
            needle: "5.0",
            skip: 0,
            key: "methods.CS-DFD.tau",
            message: &["out of range", "[0, 1]"],
        },
        Case {
            what: "hyperparameter of the wrong type",
            text: replace("c = 0.5", "c = 0.5\nuvs = \"yes\""),
            needle: "\"yes\"",
            skip: 0,
            key: "methods.CS-DFD.uvs",
            message: &["expected true or false"],
        },
        Case {
            what: "missing required key",
            text: replace("backbone = \"meso4\"", "head = { layers = 1 }"),
            needle: "[model]",
            skip: 0,
            key: "model.backbone",
            message: &["missing required key `backbone`"],
        },
        Case {
            what: "duplicate test names",
            text: replace("name = \"CDF\"", "name = \"FF++\""),
            needle: "\"FF++\"\ndataset = \"Celeb",
            skip: 0,
            key: "test[1].name",
            message: &["duplicate test set name `FF++`"],
        },
        Case {
            what: "unseen test set equal to the train set",
            text: replace(
                "name = \"CDF\"\ndataset = \"Celeb-DF-v2\"",
                "name = \"same\"\ndataset = \"FaceForensics++\"\nsplit = \"train\"\nrole = \"unseen\"",
            ),
            needle: "\"unseen\"",
            skip: 0,
            key: "test[1].role",
            message: &["marked unseen but is the training set"],
        },
        Case {
            what: "empty seeds",
            text: replace("seeds = [0, 1]", "seeds = []"),
            needle: "[]",
            skip: 0,
            key: "seeds",
            message: &["no seeds"],
        },
        Case {
            what: "zero steps",
            text: replace("steps = 100", "steps = 0"),
            needle: "steps = 0",
            skip: 8,
            key: "training.steps",
            message: &["out of range"],
        },
        Case {
            what: "negative learning rate",
            text: replace("lr = 2e-4", "lr = -1e-3"),
            needle: "lr = -1e-3",
            skip: 5,
            key: "training.optimizer.lr",
            message: &["out of range", "learning rate"],
        },
        Case {
            what: "bad sweep path",
            text: format!("{BASE}\n[sweep]\n\"methods.CS-DFD.cc\" = [0.1, 0.2]\n"),
            needle: "\"methods.CS-DFD.cc\"",
            skip: 0,
            key: "sweep.\"methods.CS-DFD.cc\"",
            message: &["does not name a hyperparameter", "did you mean `methods.CS-DFD.c`?"],
        },
        Case {
            what: "sweep value out of range",
            text: format!("{BASE}\n[sweep]\n\"methods.CS-DFD.c\" = [0.1, -2]\n"),
            needle: "-2]",
            skip: 0,
            key: "sweep.\"methods.CS-DFD.c\"[1]",
            message: &["out of range"],
        },
        Case {
            what: "swept steps shorter than the warm-up",
            text: format!(
                "{}\n[sweep]\n\"training.steps\" = [200, 40]\n",
                replace("lr = 2e-4 }", "lr = 2e-4 }\nschedule = { name = \"cosine\", warmup_steps = 50 }")
            ),
            needle: "40]",
            skip: 0,
            key: "sweep.\"training.steps\"[1]",
            message: &["leave no training after the 50 warm-up steps"],
        },
        Case {
            what: "swept head layers remove CGR's head",
            text: format!("{BASE}\n[sweep]\n\"model.head.layers\" = [0, 1]\n"),
            needle: "\"model.head.layers\" = [0",
            skip: 23,
            key: "sweep.\"model.head.layers\"[0]",
            message: &["without a projection head", "CS-DFD"],
        },
        Case {
            what: "a method's shorter steps under the shared warm-up",
            text: replace("kind = \"cs-dfd\"", "kind = \"cs-dfd\"\nsteps = 10")
                .replace("lr = 2e-4 }", "lr = 2e-4 }\nschedule = { name = \"constant\", warmup_steps = 20 }"),
            needle: "steps = 10\n",
            skip: 8,
            key: "methods.CS-DFD.steps",
            message: &["20 warm-up steps leave no training", "10 steps"],
        },
        Case {
            what: "a method's learning rate under the shared cosine floor",
            text: replace("kind = \"erm\"\n", "kind = \"erm\"\noptimizer = { name = \"sgd\", lr = 1e-6 }\n")
                .replace("lr = 2e-4 }", "lr = 2e-4 }\nschedule = { name = \"cosine\", min_lr = 1e-5 }"),
            needle: "lr = 1e-6",
            skip: 5,
            key: "methods.O.optimizer.lr",
            message: &["min_lr = 0.00001 must be below the learning rate 0.000001"],
        },
        Case {
            what: "empty method name",
            text: format!("{BASE}\n[methods.\"\"]\nkind = \"erm\"\n"),
            needle: "[methods.\"\"]",
            skip: 9,
            key: "methods.\"\"",
            message: &["a method name must be non-empty"],
        },
        Case {
            what: "method names differing only by case",
            text: format!("{BASE}\n[methods.cs-dfd]\nkind = \"cs-dfd\"\n"),
            needle: "[methods.cs-dfd]",
            skip: 9,
            key: "methods.cs-dfd",
            message: &["differ only by case"],
        },
        Case {
            what: "bad fold name",
            text: format!("{BASE}\n[folds]\nleave_one_out = [\"FF-DF\", \"FF-FH\"]\n"),
            needle: "\"FF-FH\"",
            skip: 0,
            key: "folds.leave_one_out[1]",
            message: &["`FF-FH` is not one of the training manipulations"],
        },
        Case {
            what: "missing weights file",
            text: replace("backbone = \"meso4\"", "backbone = \"meso4\"\nweights = \"nope.safetensors\""),
            needle: "\"nope.safetensors\"",
            skip: 0,
            key: "model.weights",
            message: &["does not exist", "nope.safetensors"],
        },
        Case {
            what: "unknown backbone",
            text: replace("backbone = \"meso4\"", "backbone = \"mesa4\""),
            needle: "\"mesa4\"",
            skip: 0,
            key: "model.backbone",
            message: &["unknown backbone `mesa4`; did you mean `meso4`?"],
        },
        Case {
            what: "unknown dataset",
            text: replace("dataset = \"Celeb-DF-v2\"", "dataset = \"Celeb-DF-v3\""),
            needle: "\"Celeb-DF-v3\"",
            skip: 0,
            key: "test[1].dataset",
            message: &["unknown dataset `Celeb-DF-v3`; did you mean"],
        },
        Case {
            what: "duplicate method name",
            text: format!("{BASE}\n[methods.O]\nkind = \"sam\"\n"),
            needle: "[methods.O]\nkind = \"sam\"",
            skip: 9,
            key: "",
            message: &["TOML syntax error"],
        },
        Case {
            what: "unknown optimizer field",
            text: replace("lr = 2e-4 }", "lr = 2e-4, betas = 0.9 }"),
            needle: "betas",
            skip: 0,
            key: "training.optimizer.betas",
            message: &["unknown key `betas` for optimizer `adam`", "did you mean `beta"],
        },
        Case {
            what: "unknown optimizer name",
            text: replace("name = \"adam\"", "name = \"adm\""),
            needle: "\"adm\"",
            skip: 0,
            key: "training.optimizer.name",
            message: &["unknown optimizer `adm`; did you mean `adam`?"],
        },
        Case {
            what: "method needing domains the data cannot give",
            text: format!(
                "{}\n[methods.RoGA]\nkind = \"roga\"\n",
                replace("[\"FF-DF\", \"FF-F2F\", \"FF-FS\", \"FF-NT\"]", "[\"FF-DF\"]")
            ),
            needle: "\"roga\"",
            skip: 0,
            key: "methods.RoGA.kind",
            message: &["needs at least 2"],
        },
        Case {
            what: "method needing the original stream without fakes",
            text: replace("[\"FF-DF\", \"FF-F2F\", \"FF-FS\", \"FF-NT\"]", "[]"),
            needle: "kind = \"erm\"",
            skip: 7,
            key: "methods.O.kind",
            message: &["original stream", "train.manipulations is empty"],
        },
        Case {
            what: "selecting on the test split",
            text: replace("batch_size = 16", "batch_size = 16\nvalidation = { split = \"test\" }"),
            needle: "\"test\" }",
            skip: 0,
            key: "training.validation.split",
            message: &["leaks test data"],
        },
        Case {
            what: "fake label that is the real one",
            text: replace("[\"FF-DF\", \"FF-F2F\", \"FF-FS\", \"FF-NT\"]", "[\"FF-DF\", \"FF-real\"]"),
            needle: "\"FF-real\"",
            skip: 0,
            key: "train.manipulations[1]",
            message: &["is the real label"],
        },
        Case {
            what: "unknown report table",
            text: replace("baseline = \"O+S\"", "baseline = \"O+S\"\ntables = [\"csdfd-tabel1\"]"),
            needle: "\"csdfd-tabel1\"",
            skip: 0,
            key: "report.tables[0]",
            message: &["unknown table id `csdfd-tabel1`; did you mean `csdfd-table1`?"],
        },
        Case {
            what: "unknown baseline",
            text: replace("baseline = \"O+S\"", "baseline = \"OS\""),
            needle: "\"OS\"",
            skip: 0,
            key: "report.baseline",
            message: &["no method named `OS`"],
        },
        Case {
            what: "noise floor twin that is not a method",
            text: replace("baseline = \"O+S\"", "baseline = \"O+S\"\nnoise_floor = [\"O+S\", \"CS-DFDX\"]"),
            needle: "\"CS-DFDX\"",
            skip: 0,
            key: "report.noise_floor[1]",
            message: &["no method named `CS-DFDX`", "did you mean `CS-DFD`?"],
        },
        Case {
            what: "noise floor with one method",
            text: replace("baseline = \"O+S\"", "baseline = \"O+S\"\nnoise_floor = [\"O+S\"]"),
            needle: "[\"O+S\"]",
            skip: 0,
            key: "report.noise_floor",
            message: &["expected two different method names", "got 1 name(s)"],
        },
        Case {
            what: "no test set",
            text: BASE
                .replace("[[test]]\nname = \"FF++\"\ndataset = \"FaceForensics++\"\n", "")
                .replace("[[test]]\nname = \"CDF\"\ndataset = \"Celeb-DF-v2\"\n", ""),
            needle: "# A small",
            skip: 0,
            key: "test",
            message: &["missing required key `test`"],
        },
        Case {
            what: "conflict diagnostics of ERM on one stream",
            text: replace("[methods.O]\nkind = \"erm\"\n", "[methods.O]\nkind = \"erm\"\nconflict_every = 5\n"),
            needle: "5\n\n[methods.\"O+S\"]",
            skip: 0,
            key: "methods.O.conflict_every",
            message: &["needs streams = \"both\""],
        },
        Case {
            what: "cgr without a projection head",
            text: replace("backbone = \"meso4\"", "backbone = \"meso4\"\nhead = { layers = 0 }"),
            needle: "\"cs-dfd\"",
            skip: 0,
            key: "methods.CS-DFD.kind",
            message: &["projection head"],
        },
    ]
}

#[test]
fn every_malformed_protocol_is_reported_at_the_right_place() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for c in cases {
        let (path, errs, _dir) = errors_of(&c.text);
        let (line, col) = pos_of(&c.text, c.needle, c.skip);
        let hit = errs.iter().find(|e| e.key == c.key);
        let Some(e) = hit else {
            panic!(
                "{}: no error with key `{}`; got:\n{}",
                c.what,
                c.key,
                protocol::ProtocolErrors(errs.clone())
            );
        };
        assert_eq!((e.line, e.col), (line, col), "{}: wrong position in `{e}`", c.what);
        assert_eq!(e.file, path, "{}", c.what);
        for m in c.message {
            assert!(e.message.contains(m), "{}: `{}` lacks `{m}`", c.what, e.message);
        }
        // The rendered line is `file:line:col: key: message`.
        let shown = e.to_string();
        let prefix = format!("{}:{line}:{col}: ", path.display());
        assert!(shown.starts_with(&prefix), "{}: `{shown}`", c.what);
        if !c.key.is_empty() {
            assert!(shown[prefix.len()..].starts_with(&format!("{}: ", c.key)), "{}: `{shown}`", c.what);
        }
    }
}

#[test]
fn all_errors_of_a_file_are_reported_sorted() {
    let text = BASE
        .replace("seeds = [0, 1]", "seeds = []")
        .replace("resolution = 64", "resolution = 64\ncolour = true")
        .replace("backbone = \"meso4\"", "backbone = \"mesa4\"")
        .replace("steps = 100", "steps = -5")
        .replace("kind = \"cs-dfd\"", "kind = \"csdfd\"");
    let (_, errs, _dir) = errors_of(&text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["seeds", "data.colour", "model.backbone", "training.steps", "methods.CS-DFD.kind"],
        "{errs:?}"
    );
    let positions: Vec<(usize, usize)> = errs.iter().map(|e| (e.line, e.col)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
    let shown = protocol::ProtocolErrors(errs.clone()).to_string();
    assert_eq!(shown.lines().count(), errs.len());
}

#[test]
fn several_syntax_errors_are_reported_with_positions() {
    // Two independent mistakes far apart: both reported; the parser's cascade right after each
    // (errors on the following line) is not.
    let text = BASE.replace("resolution = 64", "resolution = = 64").replace("batch_size = 16", "batch_size = ");
    let (_, errs, _dir) = errors_of(&text);
    for e in &errs {
        assert!(e.message.starts_with("TOML syntax error"), "{e}");
    }
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    let first = pos_of(&text, "= = 64", 2);
    let second = pos_of(&text, "batch_size = \n", 0);
    assert_eq!(lines, [first.0, second.0], "{errs:?}");
    assert_eq!((errs[0].line, errs[0].col), first);
}

#[test]
fn unreadable_file_is_an_error_not_a_panic() {
    let errs = protocol::load("/nonexistent/dir/p.toml").unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert!(errs.0[0].message.contains("cannot read"));
}

#[test]
fn deepfakebench_data_paths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rgb");
    let json = dir.path().join("json");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&json).unwrap();
    std::fs::write(json.join("FaceForensics++.json"), "{}").unwrap();
    let text = BASE
        .replace("format = \"synthetic\"", "format = \"deepfakebench\"\nroot = \"rgb\"\njson_dir = \"json\"");
    let p = write(dir.path(), &text);
    // Celeb-DF-v2.json is missing: reported at the test set's dataset.
    let errs = protocol::load(&p).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "test[1].dataset");
    assert!(errs[0].message.contains("Celeb-DF-v2.json"), "{}", errs[0]);
    std::fs::write(json.join("Celeb-DF-v2.json"), "{}").unwrap();
    let proto = protocol::load(&p).expect("valid once both indexes exist");
    // Relative paths resolve against the protocol file's directory.
    assert_eq!(proto.data.root.as_deref(), Some(std::fs::canonicalize(&root).unwrap().as_path()));
    assert_eq!(proto.data.json_dir.as_deref(), Some(std::fs::canonicalize(&json).unwrap().as_path()));

    let missing_root = text.replace("root = \"rgb\"", "root = \"frames\"");
    let p = write(dir.path(), &missing_root);
    let errs = protocol::load(&p).unwrap_err().0;
    assert!(errs.iter().any(|e| e.key == "data.root" && e.message.contains("does not exist")), "{errs:?}");
    // Synthetic-only keys are rejected with deepfakebench data.
    let with_preset = text.replace("root = \"rgb\"", "root = \"rgb\"\npreset = \"small\"");
    let p = write(dir.path(), &with_preset);
    let errs = protocol::load(&p).unwrap_err().0;
    assert!(errs.iter().any(|e| e.key == "data.preset"), "{errs:?}");
}
