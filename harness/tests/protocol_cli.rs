//! `bench validate` and `bench list` as a user runs them: output and exit codes.
use std::path::Path;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bench"))
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn validate_prints_the_plan_and_exits_0() {
    let out =
        bench().current_dir(repo()).args(["validate", "protocols/cross_dataset.toml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let header = stdout.lines().next().unwrap();
    for col in ["run id", "method", "kind", "seed", "fold", "sweep point"] {
        assert!(header.contains(col), "{header}");
    }
    // 6 methods (the five compared and O+S's noise-floor twin) x 5 seeds, plus the header and
    // the summary line.
    assert_eq!(stdout.lines().count(), 1 + 30 + 1, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("cs-dfd-s2-") && l.contains("cs-dfd")), "{stdout}");
    assert!(stdout.contains("30 runs"), "{stdout}");
    // Same file, same ids: a second validation prints the identical plan.
    let again =
        bench().current_dir(repo()).args(["validate", "protocols/cross_dataset.toml"]).output().unwrap();
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn validate_reports_every_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(repo().join("protocols/cross_dataset.toml"))
        .unwrap()
        .replace("seeds = [0, 1, 2, 3, 4]", "seeds = []")
        .replace("[methods.CS-DFD]\nkind = \"cs-dfd\"", "[methods.CS-DFD]\nkind = \"csdfd\"");
    std::fs::write(&p, text).unwrap();
    let out = bench().arg("validate").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = p.display().to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&shown)).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].contains(": seeds: no seeds"), "{stderr}");
    assert!(
        lines[1].contains(": methods.CS-DFD.kind: unknown method kind `csdfd`; did you mean `cs-dfd`?"),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is planned");

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "name = \"x\"\nseeds = [0\n").unwrap();
    let out = bench().arg("validate").arg(&syntax).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:", syntax.display())) && stderr.contains("TOML syntax error"),
        "{stderr}"
    );

    let out = bench().args(["validate", "/nonexistent/protocol.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn list_prints_methods_backbones_datasets_and_protocols() {
    let out = bench().current_dir(repo()).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let count = |prefix: &str| stdout.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("method "), detectors::methods::registry().len());
    assert_eq!(count("backbone "), detectors::backbones::registry().len());
    assert_eq!(count("dataset "), harness::protocol::datasets::registry().len());
    for name in [
        "ablation",
        "backbones",
        "cross_dataset",
        "imbalance",
        "leave_one_manipulation_out",
        "optimizers",
        "sensitivity",
    ] {
        let file = format!("protocols/{name}.toml");
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("protocol") && l.contains(&file)).count(),
            1,
            "{stdout}"
        );
    }
    let csdfd = stdout.lines().find(|l| l.starts_with("method") && l.contains(" cs-dfd ")).unwrap();
    assert!(csdfd.contains("c=0.5") && csdfd.contains("tau=0.01"), "{csdfd}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("dataset") && l.contains("Celeb-DF-v2") && l.contains("CelebDFv2_fake"))
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("protocol") && l.contains("cross_dataset") && l.contains("30 runs")),
        "{stdout}"
    );
    assert!(!stdout.contains("invalid"), "{stdout}");
}
