//! The results store under the conditions of a shared machine, through the real binary: two
//! `bench run` processes on one `--out`, damaged result files, and reports over runs that must not
//! be mixed (two protocols, two configurations of one method, a renamed run directory).
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use harness::data::synth::{self, Preset};
use harness::results::{self, LockOutcome, RunDir};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn data_cache() -> &'static Path {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            synth::ensure(Preset::Tiny, 0, dir.path()).unwrap();
            dir
        })
        .path()
}

/// Two methods on the tiny preset at 64 px: cheap runs that still train and score.
fn protocol(name: &str, steps: u32) -> String {
    format!(
        r#"name = "{name}"
seeds = [0, 1]
device = "cpu"

[data]
format = "synthetic"
preset = "tiny"
synth_seed = 0
resolution = 64
frames_per_video = {{ train = 3, test = 3 }}
normalisation = {{ mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}

[train]
dataset = "FaceForensics++"
manipulations = ["FF-DF", "FF-F2F", "FF-FS", "FF-NT"]
split = "train"
compression = "c23"

[[test]]
name = "FF++"
dataset = "FaceForensics++"
split = "test"
role = "in-domain"

[model]
backbone = "meso4"
head = {{ layers = 1 }}

[training]
steps = {steps}
batch_size = 4
optimizer = {{ name = "adam", lr = 1e-3 }}
validation = {{ split = "val", every = 2 }}
selection = "best-val"

[methods.O]
kind = "erm"
streams = "original"

[methods.S]
kind = "erm"
streams = "online"
"#
    )
}

fn write_protocol(dir: &Path, name: &str, steps: u32) -> PathBuf {
    let p = dir.join(format!("{name}-{steps}.toml"));
    std::fs::write(&p, protocol(name, steps)).unwrap();
    p
}

fn bench(args: &[&str]) -> Command {
    let mut c = Command::new(BENCH);
    c.args(args).env("RAYON_NUM_THREADS", "1");
    c
}

fn run_cmd(protocol: &Path, out: &Path) -> Command {
    let mut c = bench(&["run"]);
    c.arg(protocol).arg("--out").arg(out).arg("--data-cache").arg(data_cache()).arg("--no-weights");
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn runs_of(dir: &Path) -> Vec<RunDir> {
    results::list_runs(dir).unwrap()
}

#[test]
fn two_processes_on_one_out_train_each_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write_protocol(tmp.path(), "race", 4);
    data_cache();
    let out = tmp.path().join("shared");
    let spawn = || run_cmd(&p, &out).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ta, tb) = (text(&a), text(&b));
    assert!(a.status.success() && b.status.success(), "A:\n{ta}\nB:\n{tb}");
    let trained = |t: &str| t.lines().filter(|l| l.contains(": complete in ")).count();
    assert_eq!(trained(&ta) + trained(&tb), 4, "each of the 4 runs trained exactly once\nA:\n{ta}\nB:\n{tb}");
    let runs = runs_of(&out.join("race"));
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(RunDir::is_complete));

    // The same protocol in one process gives the same numbers.
    let single = tmp.path().join("single");
    let o = run_cmd(&p, &single).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for r in &runs {
        let alone = single.join("race").join(r.name()).join(results::METRICS_CSV_FILE);
        assert_eq!(
            std::fs::read(r.file(results::METRICS_CSV_FILE)).unwrap(),
            std::fs::read(alone).unwrap(),
            "{}",
            r.name()
        );
    }
}

#[test]
fn duplicate_seeds_are_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write_protocol(tmp.path(), "dup", 2);
    let o = run_cmd(&p, &tmp.path().join("out")).args(["--seeds", "0,0"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("seed 0 is given twice"), "{}", text(&o));
}

#[test]
fn a_run_is_locked_while_held_and_free_after() {
    let tmp = tempfile::tempdir().unwrap();
    let rd = RunDir::create(tmp.path(), "p", "r").unwrap();
    let held = match rd.try_lock("host-a 1").unwrap() {
        LockOutcome::Acquired(l) => l,
        LockOutcome::HeldBy(w) => panic!("fresh run held by {w}"),
    };
    assert_eq!(rd.is_locked(), Some(true));
    match rd.try_lock("host-b 2").unwrap() {
        LockOutcome::HeldBy(who) => assert_eq!(who, "host-a 1"),
        LockOutcome::Acquired(_) => panic!("a held run was taken twice"),
    }
    drop(held);
    // Other tests of this binary fork `bench` processes concurrently; a child briefly holds a
    // copy of every descriptor between fork and exec (O_CLOEXEC closes it at exec), and with it
    // the flock. So the release is awaited for a moment rather than expected instantly.
    let freed = (0..200).any(|_| {
        let free = rd.is_locked() == Some(false);
        if !free {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        free
    });
    assert!(freed, "the lock is released when its holder drops it");
    let taken = (0..200).any(|_| {
        let got = matches!(rd.try_lock("host-b 2").unwrap(), LockOutcome::Acquired(_));
        if !got {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        got
    });
    assert!(taken, "a released run can be taken by the next process");
}

#[test]
fn the_exclusive_fallback_takes_over_only_dead_local_holders() {
    let tmp = tempfile::tempdir().unwrap();
    let rd = RunDir::create(tmp.path(), "p", "r").unwrap();
    let me = format!("thishost {}", std::process::id());
    let first = rd.try_lock_exclusive(&me, true).unwrap();
    assert!(matches!(first, LockOutcome::Acquired(_)));
    assert!(matches!(rd.try_lock_exclusive("thishost 99", true).unwrap(), LockOutcome::HeldBy(_)));
    drop(first);
    assert!(!rd.file(results::EXCLUSIVE_LOCK_FILE).exists(), "released on drop");

    // A lock file left by a pid that no longer exists on this host is stale.
    std::fs::write(rd.file(results::EXCLUSIVE_LOCK_FILE), "thishost 4000000000").unwrap();
    assert!(matches!(rd.try_lock_exclusive(&me, true).unwrap(), LockOutcome::Acquired(_)));
    // One left by another host cannot be judged from here: reported with its holder.
    std::fs::write(rd.file(results::EXCLUSIVE_LOCK_FILE), "otherhost 1").unwrap();
    match rd.try_lock_exclusive(&me, true).unwrap() {
        LockOutcome::HeldBy(who) => assert!(who.starts_with("otherhost 1"), "{who}"),
        LockOutcome::Acquired(_) => panic!("took over another host's lock"),
    }
}

/// Every way of damaging one result file of a complete run is seen by `status`, `report` and
/// `run`, and the re-run restores the run.
#[test]
fn damaged_result_files_are_detected_reported_and_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write_protocol(tmp.path(), "dmg", 2);
    let out = tmp.path().join("out");
    let o = run_cmd(&p, &out).args(["--seeds", "0"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let dir = out.join("dmg");
    let runs = runs_of(&dir);
    assert_eq!(runs.len(), 2);
    let victim = &runs[0];
    let good_metrics = std::fs::read(victim.file(results::METRICS_CSV_FILE)).unwrap();

    let damages: [(&str, fn(&Path)); 3] = [
        ("truncated", |f| {
            let bytes = std::fs::read(f).unwrap();
            std::fs::write(f, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("garbled", |f| {
            let mut bytes = std::fs::read(f).unwrap();
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid..mid + 8] {
                *b ^= 0x5a;
            }
            std::fs::write(f, bytes).unwrap();
        }),
        ("deleted", |f| std::fs::remove_file(f).unwrap()),
    ];
    for file in [results::METRICS_FILE, results::SCORES_FILE, results::TRACE_FILE] {
        for (how, damage) in &damages {
            damage(&victim.file(file));
            let what = format!("{file} {how}");

            let st = bench(&["status"]).arg(&dir).output().unwrap();
            assert_eq!(st.status.code(), Some(1), "{what}: {}", text(&st));
            assert!(text(&st).contains("damaged") && text(&st).contains(file), "{what}: {}", text(&st));

            let rep = bench(&["report"]).arg(&dir).arg("--out").arg(tmp.path().join("rep")).output().unwrap();
            assert_eq!(rep.status.code(), Some(1), "{what}: {}", text(&rep));
            assert!(text(&rep).contains(&format!("run {} is damaged", victim.name())), "{what}: {}", text(&rep));
            let allowed = bench(&["report", "--allow-damaged"])
                .arg(&dir)
                .arg("--out")
                .arg(tmp.path().join("rep"))
                .output()
                .unwrap();
            assert_eq!(allowed.status.code(), Some(0), "{what}: {}", text(&allowed));
            let runs_md = std::fs::read_to_string(tmp.path().join("rep/runs.md")).unwrap();
            assert!(runs_md.contains("damaged"), "{what}: runs.md names the damage:\n{runs_md}");

            let again = run_cmd(&p, &out).args(["--seeds", "0"]).output().unwrap();
            assert!(again.status.success(), "{what}: {}", text(&again));
            let t = text(&again);
            assert!(t.contains("1 complete, 1 to do"), "{what}: only the damaged run is redone: {t}");
            assert_eq!(std::fs::read(victim.file(results::METRICS_CSV_FILE)).unwrap(), good_metrics, "{what}");
            let st = bench(&["status"]).arg(&dir).output().unwrap();
            assert_eq!(st.status.code(), Some(0), "{what}: repaired: {}", text(&st));
        }
    }
}

#[test]
fn reports_refuse_what_must_not_be_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for (name, steps) in [("mix", 2), ("mix", 3), ("other", 2)] {
        let p = write_protocol(tmp.path(), name, steps);
        let o = run_cmd(&p, &out).args(["--seeds", "0", "--only", "O"]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let report = |dir: &Path, extra: &[&str]| {
        bench(&["report"]).arg(dir).arg("--out").arg(tmp.path().join("rep")).args(extra).output().unwrap()
    };

    // Two step counts of one method: not seeds of one configuration.
    let mixed = report(&out.join("mix"), &[]);
    assert_eq!(mixed.status.code(), Some(2), "{}", text(&mixed));
    assert!(text(&mixed).contains("training.length.steps"), "names the differing key: {}", text(&mixed));
    let one = report(&out.join("mix"), &["--only", "training.length.steps=3"]);
    assert_eq!(one.status.code(), Some(0), "{}", text(&one));
    assert!(text(&one).contains("report: 1 complete run(s)"), "{}", text(&one));

    // Two protocols under one root.
    let both = report(&out, &["--only", "training.length.steps=2"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    assert!(text(&both).contains("mix, other") && text(&both).contains("--protocol"), "{}", text(&both));
    let chosen = report(&out, &["--protocol", "other"]);
    assert_eq!(chosen.status.code(), Some(0), "{}", text(&chosen));

    // A copied run directory under another name is not a second run.
    let other = out.join("other");
    let run = runs_of(&other).remove(0);
    let copy = other.join("o-s0-copied");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(run.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let renamed = report(&other, &[]);
    assert_eq!(renamed.status.code(), Some(2), "{}", text(&renamed));
    assert!(text(&renamed).contains("o-s0-copied") && text(&renamed).contains(&run.name()), "{}", text(&renamed));

    let huge = report(&other, &["--bootstrap", "18446744073709551615"]);
    assert_eq!(huge.status.code(), Some(2), "{}", text(&huge));
}

/// SIGINT and SIGTERM while a run trains: the run is marked interrupted (not left `running`), the
/// process exits 130 / 143 saying how to resume, and `bench status` lists it as interrupted.
#[test]
fn signals_mark_the_run_interrupted_and_exit_with_the_signal_code() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let p = write_protocol(tmp.path(), "sig", 3000);
    let out = tmp.path().join("out");
    data_cache();
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut child = run_cmd(&p, &out)
            .args(["--seeds", "0", "--only", "O"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut seen = String::new();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.ends_with(": 3000 steps") {
                break;
            }
        }
        let kill = Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
        assert!(kill.success());
        for line in lines {
            seen.push_str(&line.unwrap());
            seen.push('\n');
        }
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}:\n{seen}");
        assert!(seen.contains("to resume (complete runs are skipped): bench run"), "{signal}:\n{seen}");
        let run = runs_of(&out.join("sig")).remove(0);
        let m = run.read_manifest().unwrap();
        assert_eq!(m.status, results::RunStatus::Interrupted, "{signal}");
        assert!(m.failure.unwrap().reason.starts_with("interrupted by SIG"), "{signal}");
        let st = bench(&["status"]).arg(out.join("sig")).output().unwrap();
        assert!(text(&st).contains("1 interrupted"), "{}", text(&st));
    }
}

/// Two `bench data synth` into one folder: both succeed with the same data, and no hidden copy
/// (nor the temporary folder of an earlier, killed generation) is left beside it.
#[test]
fn concurrent_synth_into_one_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    let stale = tmp.path().join(".synth.tmp-4000000000-0");
    std::fs::create_dir_all(stale.join("dataset_json")).unwrap();
    let spawn = || {
        bench(&["data", "synth", "--preset", "tiny", "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["synth".to_string()], "nothing but the output is left");
    let o = bench(&["data", "check"]).arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
