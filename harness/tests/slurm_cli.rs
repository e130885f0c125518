//! `bench slurm` and `bench status` without a Slurm cluster: the generated script's content, the
//! script itself run by bash as an array task would run it, and status on fixture result trees.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::data::synth::{self, Preset};
use harness::protocol;
use harness::results::{Failure, Manifest, RunDir, RunStatus};
use harness::status::{self, RunState};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn bench(args: &[&str], cwd: &Path) -> Output {
    Command::new(BENCH).args(args).current_dir(cwd).output().unwrap()
}

/// The documented partition, computed here from its definition: the plan's ids sorted, the k-th
/// in shard k mod n.
fn shard_in(ids: &[(String, String)], id: &str, n: u64) -> u64 {
    let mut sorted: Vec<&str> = ids.iter().map(|(i, _)| i.as_str()).collect();
    sorted.sort();
    sorted.iter().position(|&x| x == id).unwrap() as u64 % n
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A tiny protocol: 2 seeds x (O, and SAM with a learning rate that diverges when `diverge`).
fn write_protocol(dir: &Path, name: &str, diverge: bool) -> PathBuf {
    let sam_opt = if diverge { "optimizer = { name = \"sgd\", lr = 10, momentum = 0.9 }\nsteps = 12\n" } else { "" };
    let text = format!(
        r#"name = "{name}"
seeds = [0, 1]

[data]
format = "synthetic"
preset = "tiny"
resolution = 32

[train]
dataset = "FaceForensics++"

[[test]]
name = "FF++"
dataset = "FaceForensics++"

[model]
backbone = "meso4"

[training]
steps = 6
batch_size = 8
validation = {{ every = 3 }}

[methods.O]
kind = "erm"
streams = "original"

[methods.SAM]
kind = "sam"
rho = 0.05
{sam_opt}"#
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn plan_ids(p: &Path) -> Vec<(String, String)> {
    let proto = protocol::load(p).unwrap();
    harness::plan::expand(&proto).into_iter().map(|r| (r.id, r.config.method.name.clone())).collect()
}

#[test]
fn script_has_array_shards_resources_and_logs() {
    let t = tempfile::tempdir().unwrap();
    let p = write_protocol(t.path(), "scr", false);
    let o = bench(
        &[
            "slurm",
            "scr.toml",
            "--shards",
            "3",
            "--partition",
            "cpu",
            "--time",
            "01:30:00",
            "--cpus-per-task",
            "4",
            "--mem",
            "8G",
            "--gres",
            "gpu:1",
            "--out",
            "res",
            "--data-cache",
            "cache",
            "--log-dir",
            "logs/x",
            "--no-prepare",
            "--",
            "--seeds",
            "0",
            "--only",
            "O",
        ],
        t.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let script_path = t.path().join("slurm/scr.sbatch");
    let s = std::fs::read_to_string(&script_path).unwrap();
    let root = t.path().canonicalize().unwrap();
    let root = root.display();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "#!/bin/bash");
    for want in [
        "#SBATCH --array=0-2".to_string(),
        "#SBATCH --job-name=bench-scr".to_string(),
        format!("#SBATCH --output={root}/logs/x/%x-%A_%a.out"),
        "#SBATCH --partition=cpu".to_string(),
        "#SBATCH --time=01:30:00".to_string(),
        "#SBATCH --cpus-per-task=4".to_string(),
        "#SBATCH --mem=8G".to_string(),
        "#SBATCH --gres=gpu:1".to_string(),
    ] {
        assert!(lines.contains(&want.as_str()), "missing `{want}` in\n{s}");
    }
    // Every #SBATCH line comes before the first command (sbatch stops reading them there).
    let first_cmd = lines.iter().position(|l| !l.starts_with('#')).unwrap();
    assert!(lines[first_cmd..].iter().all(|l| !l.starts_with("#SBATCH")));
    let exec = lines.iter().find(|l| l.starts_with("exec ")).unwrap();
    assert_eq!(
        *exec,
        format!(
            "exec {BENCH} run {root}/scr.toml --shard \"$SLURM_ARRAY_TASK_ID/3\" --out {root}/res \
             --data-cache {root}/cache --seeds 0 --only O"
        )
    );
    assert!(t.path().join("logs/x").is_dir(), "log dir created (sbatch does not create it)");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&script_path).unwrap().permissions().mode() & 0o111, 0o111);
    }
    // The header's runs per shard: only O with seed 0 is selected.
    let ids: Vec<String> = plan_ids(&p)
        .into_iter()
        .filter(|(id, m)| m == "O" && id.contains("-s0-"))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 1);
    // One run in three balanced shards: the first shard has it.
    let header = "1 runs in 3 shards (1/0/0 runs per shard)";
    assert!(s.contains(&header), "`{header}` in\n{s}");
    assert!(
        text(&o).contains(&format!("sbatch {}", script_path.canonicalize().unwrap().display())),
        "{}",
        text(&o)
    );
    assert!(!t.path().join("cache").exists(), "--no-prepare generates nothing");
    // No temporary file left next to the script (it is written atomically).
    let names: Vec<String> = std::fs::read_dir(t.path().join("slurm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| n.starts_with('.')).count(), 0, "{names:?}");
}

#[test]
fn bad_slurm_usage_exits_2_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    write_protocol(t.path(), "bad", false);
    for (args, needle) in [
        (vec!["--shards", "0"], "--shards"),
        (vec!["--shards", "2", "--time", "1h"], "--time 1h"),
        (vec!["--shards", "2", "--mem", "16GB"], "--mem 16GB"),
        (vec!["--shards", "2", "--partition", "a b"], "--partition"),
        (vec!["--shards", "2", "--", "--shard", "0/2"], "--shard"),
        (vec!["--shards", "2", "--", "--out=elsewhere"], "--out"),
        (vec!["--shards", "2", "--", "--no-such-flag"], "--no-such-flag"),
        (vec!["--shards", "2", "--", "--only", "SAMM"], "did you mean `SAM`"),
    ] {
        let mut a = vec!["slurm", "bad.toml", "--no-prepare"];
        a.extend(args.iter().copied());
        let o = bench(&a, t.path());
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{a:?}: {}", text(&o));
    }
    assert!(!t.path().join("slurm/bad.sbatch").exists());
    let o = bench(&["slurm", "missing.toml", "--shards", "2"], t.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Runs the generated script the way one array task of Slurm would.
fn run_task(script: &Path, task: Option<u64>, cwd: &Path) -> Output {
    let mut c = Command::new("bash");
    c.arg(script).current_dir(cwd).env_remove("SLURM_ARRAY_TASK_ID").env_remove("SLURM_CPUS_PER_TASK");
    if let Some(i) = task {
        c.env("SLURM_ARRAY_TASK_ID", i.to_string()).env("SLURM_ARRAY_JOB_ID", "77");
    }
    c.output().unwrap()
}

#[test]
fn a_failing_shard_leaves_the_others_intact_and_status_names_it() {
    let t = tempfile::tempdir().unwrap();
    let p = write_protocol(t.path(), "fail", true);
    let o = bench(
        &[
            "slurm",
            "fail.toml",
            "--shards",
            "2",
            "--out",
            "res",
            "--data-cache",
            "cache",
            "--",
            "--no-weights",
        ],
        t.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    // The synthetic benchmark was prepared before submission, so no task has to generate it.
    assert!(t.path().join("cache").join(synth::cache_name(Preset::Tiny, 0)).join(synth::MARKER).is_file());
    let script = t.path().join("slurm/fail.sbatch");

    let o = run_task(&script, None, t.path());
    assert_eq!(o.status.code(), Some(2), "without SLURM_ARRAY_TASK_ID: {}", text(&o));

    let ids = plan_ids(&p);
    let shard_has_sam = |s: u64| ids.iter().any(|(id, m)| m == "SAM" && shard_in(&ids, id, 2) == s);
    let mut codes = BTreeMap::new();
    for s in 0..2 {
        let o = run_task(&script, Some(s), t.path());
        let want = if shard_has_sam(s) { 1 } else { 0 };
        assert_eq!(o.status.code(), Some(want), "shard {s}: {}", text(&o));
        codes.insert(s, want);
    }
    // Every O run is complete whatever its shard; every SAM run failed, with its step and reason.
    let dir = t.path().join("res/fail");
    for (id, m) in &ids {
        let man = harness::results::read_manifest(&dir.join(id).join("manifest.json")).unwrap();
        if m == "O" {
            assert_eq!(man.status, RunStatus::Complete, "{id}");
            assert!(dir.join(id).join("metrics.csv").is_file());
        } else {
            assert_eq!(man.status, RunStatus::Failed, "{id}");
            assert!(man.failure.is_some_and(|f| f.step.is_some() && !f.reason.is_empty()));
        }
    }
    let o = bench(&["status", "res", "--protocol", "fail.toml", "--shards", "2"], t.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("4 runs: 2 complete, 2 failed"), "{out}");
    for s in 0..2u64 {
        let done = ids.iter().filter(|(id, m)| m == "O" && shard_in(&ids, id, 2) == s).count();
        let all = ids.iter().filter(|(id, _)| shard_in(&ids, id, 2) == s).count();
        let tail = if shard_has_sam(s) { "NOT DONE" } else { "ok" };
        assert!(out.contains(&format!("shard {s}: {done}/{all} complete  {tail}")), "shard {s}:\n{out}");
    }
    let failing: Vec<String> = (0..2).filter(|&s| shard_has_sam(s)).map(|s| s.to_string()).collect();
    assert!(out.contains(&format!("sbatch --array={} ", failing.join(","))), "{out}");
    for (id, m) in &ids {
        if m == "SAM" {
            let line = out.lines().find(|l| l.contains(id.as_str())).unwrap();
            assert!(line.contains("at step") && line.contains("[shard "), "{line}");
        }
    }

    // Re-running a good shard skips its complete runs and leaves their files untouched.
    let good = (0..2).find(|&s| !shard_has_sam(s));
    if let Some(s) = good {
        let id = &ids.iter().find(|(id, _)| shard_in(&ids, id, 2) == s).unwrap().0;
        let before = std::fs::read(dir.join(id).join("manifest.json")).unwrap();
        let o = run_task(&script, Some(s), t.path());
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("to do"), "{}", text(&o));
        assert_eq!(std::fs::read(dir.join(id).join("manifest.json")).unwrap(), before);
    }
}

fn manifest(id: &str, method: &str, status: RunStatus) -> Manifest {
    let mut m = Manifest::new(id, "fx", method, "erm", method, "meso4", 0);
    m.status = status;
    m
}

#[test]
fn status_of_a_fixture_tree_per_shard_and_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let p = write_protocol(t.path(), "fx", false);
    let ids = plan_ids(&p);
    assert_eq!(ids.len(), 4);
    let root = t.path().join("runs");
    // Run 0 complete, 1 failed at step 3, 2 running (interrupted), 3 missing; plus damage and a stray.
    let (c, f, r, miss) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    RunDir::create(&root, "fx", &c.0)
        .unwrap()
        .write_manifest(&manifest(&c.0, &c.1, RunStatus::Complete))
        .unwrap();
    let mut fm = manifest(&f.0, &f.1, RunStatus::Failed);
    fm.failure = Some(Failure { step: Some(3), reason: "loss is NaN".into() });
    RunDir::create(&root, "fx", &f.0).unwrap().write_manifest(&fm).unwrap();
    let mut rm = manifest(&r.0, &r.1, RunStatus::Running);
    rm.host = "node7".into();
    RunDir::create(&root, "fx", &r.0).unwrap().write_manifest(&rm).unwrap();
    let stray = RunDir::create(&root, "fx", "old-s0-000000000000").unwrap();
    stray.write_manifest(&manifest("old-s0-000000000000", "old", RunStatus::Complete)).unwrap();
    std::fs::write(root.join("fx/.hidden-tmp"), "x").unwrap();
    // `bench report runs/fx` writes runs/fx/report/: not a run (the stray stays the only extra).
    std::fs::create_dir_all(root.join("fx/report/tables")).unwrap();

    // Library level: states and failing shards against an independent computation.
    let proto = protocol::load(&p).unwrap();
    for n in [1u64, 2, 3] {
        let st = status::protocol_status(&root.join("fx"), Some((&proto, Some(n)))).unwrap();
        let state = |id: &str| st.runs.iter().find(|e| e.id == id).unwrap().state.clone();
        assert_eq!(state(&c.0), RunState::Complete);
        assert_eq!(state(&f.0), RunState::Failed { step: Some(3), reason: "loss is NaN".into() });
        assert!(matches!(state(&r.0), RunState::Running { host, .. } if host == "node7"));
        assert_eq!(state(&miss.0), RunState::Missing);
        assert!(!st.runs.iter().find(|e| e.id == "old-s0-000000000000").unwrap().planned);
        let want: BTreeSet<u64> = [f, r, miss].iter().map(|x| shard_in(&ids, &x.0, n)).collect();
        assert_eq!(st.failing_shards(), want.into_iter().collect::<Vec<_>>(), "{n} shards");
    }

    let o = bench(&["status", "runs", "--protocol", "fx.toml", "--shards", "2"], t.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("fx: 4 runs: 1 complete, 1 failed, 1 running, 1 missing"), "{out}");
    let line = |id: &str| {
        out.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} in\n{out}")).to_string()
    };
    assert!(line(&f.0).contains(&format!("[shard {}]  at step 3: loss is NaN", shard_in(&ids, &f.0, 2))), "{out}");
    assert!(line(&r.0).contains("on node7"), "{out}");
    assert!(line(&miss.0).contains(&format!("[shard {}]", shard_in(&ids, &miss.0, 2))), "{out}");
    assert!(out.contains("not in the plan (1"), "{out}");
    assert!(!out.contains(".hidden-tmp"), "{out}");
    // The protocol's own folder works as DIR too.
    let o2 = bench(&["status", "runs/fx", "--protocol", "fx.toml", "--shards", "2"], t.path());
    assert_eq!(text(&o2), out);

    // Without the protocol only what is on disk is known: the missing run is not listed.
    let o = bench(&["status", "runs"], t.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("fx: 4 runs: 2 complete, 1 failed, 1 running"), "{}", text(&o));
    assert!(!text(&o).contains(&miss.0));

    // The selection the tasks were started with: only O with seed 0, which is complete (plan
    // order is method, then seed), so exit 0; the other directories are outside the selection.
    assert_eq!((c.1.as_str(), c.0.contains("-s0-")), ("O", true));
    let o = bench(&["status", "runs", "--protocol", "fx.toml", "--seeds", "0", "--only", "O"], t.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("fx: 1 runs: 1 complete") && text(&o).contains("not in the plan (3"),
        "{}",
        text(&o)
    );
    let o = bench(&["status", "runs", "--protocol", "fx.toml", "--only", "X"], t.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Make everything complete: exit 0 (the stray directory does not count against it).
    for x in [f, r, miss] {
        RunDir::create(&root, "fx", &x.0)
            .unwrap()
            .write_manifest(&manifest(&x.0, &x.1, RunStatus::Complete))
            .unwrap();
    }
    let o = bench(&["status", "runs", "--protocol", "fx.toml", "--shards", "2"], t.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("shard 0: ") && !text(&o).contains("NOT DONE"), "{}", text(&o));

    // A damaged manifest is reported, not a panic.
    std::fs::write(root.join("fx").join(&c.0).join("manifest.json"), "{ not json").unwrap();
    let o = bench(&["status", "runs", "--protocol", "fx.toml"], t.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(line_in(&text(&o), &c.0).contains("not a valid manifest"), "{}", text(&o));

    // Bad usage: exit 2.
    for args in [
        vec!["status", "runs", "--shards", "2"],
        vec!["status", "runs", "--seeds", "0"],
        vec!["status", "nowhere"],
        vec!["status", "runs", "--protocol", "nope.toml"],
        vec!["status", "runs", "--protocol", "fx.toml", "--shards", "0"],
    ] {
        let o = bench(&args, t.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
    // A results root that does not exist yet with a protocol: every run is missing (exit 1).
    let o = bench(&["status", "later", "--protocol", "fx.toml"], t.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("4 runs: 4 missing"), "{}", text(&o));
}

fn line_in(out: &str, id: &str) -> String {
    out.lines().find(|l| l.contains(id)).unwrap_or_default().to_string()
}

#[test]
fn concurrent_generations_of_one_cache_both_succeed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let name = synth::cache_name(Preset::Tiny, 3);
    // A temporary directory of another host's generation: its process id means nothing here,
    // so it must survive (on a shared filesystem it may be a live generation).
    let foreign = root.join(format!(".{name}.tmp-4000000000-0-some-other-node"));
    std::fs::create_dir_all(&foreign).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || synth::ensure_report(Preset::Tiny, 3, &root))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    assert_eq!(results[0].0, root.join(&name));
    assert_eq!(results[1].0, root.join(&name));
    assert!(results.iter().any(|r| r.1.is_some()), "one of them generated");
    assert!(foreign.is_dir(), "another host's temporary directory was removed");
    let left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != &name && !n.contains("some-other-node"))
        .collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
    // A later call finds the complete cache.
    assert!(synth::ensure_report(Preset::Tiny, 3, &root).unwrap().1.is_none(), "cached after both");
}
