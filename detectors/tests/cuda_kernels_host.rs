//! The CUDA kernels (`detectors/src/ops/cuda/kernels.cu`) compiled for the host as C99 and run by
//! emulating the launch (`tests/cuda_host/`: a shim for the CUDA built-ins and a driver that loops
//! over every block and thread), against the CPU ops on odd shapes.
//!
//! This checks the kernels' arithmetic and indexing without a GPU or a CUDA toolkit, in the
//! default build: the emulation is exact because the kernels use no shared memory, barriers or
//! atomics (one thread per output; reductions as partial sums plus a final pass). What it cannot
//! check - the launches from Rust, NVRTC, cuDNN - `tests/cuda_ops.rs` checks on a GPU. The
//! launch geometry here (256 threads per block, `partials`) mirrors `ops/cuda/mod.rs`.
//!
//! Needs a C compiler (`$CC`, else `cc`, which Rust's linker needs anyway); fails, naming it, when
//! there is none.
#[path = "common/cuda_refs.rs"]
mod refs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use detectors::ops::batchnorm::Relu;
use refs::{BN_EPS, BN_MOMENTUM, check};

/// The host build of the driver, compiled once per test process.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DRIVER
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let dir = tempfile::tempdir().expect("temp dir");
            let exe = dir.path().join("driver");
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
            // -ffp-contract=off: no fused multiply-adds, so every product and sum rounds as
            // written (NVRTC may contract; the bounds allow for either).
            let out = Command::new(&cc)
                .args(["-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-Wno-unused-function"])
                .arg("-I")
                .arg(root.join("tests/cuda_host"))
                .arg("-I")
                .arg(root.join("src/ops/cuda"))
                .arg(root.join("tests/cuda_host/driver.c"))
                .arg("-o")
                .arg(&exe)
                .arg("-lm")
                .output()
                .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (set CC): {e}"));
            assert!(
                out.status.success(),
                "compiling kernels.cu for the host failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, exe)
        })
        .1
}

/// A driver argument.
enum A<'a> {
    F(&'a [f32]),
    D(&'a [f64]),
    /// An f32 output of this many values.
    Of(usize),
    Od(usize),
    /// An f32 buffer updated in place.
    Uf(&'a [f32]),
    I(usize),
    X(f32),
    E(f64),
}

/// What a launch produced: its f32 and f64 outputs (and in-place buffers) in argument order.
struct Out {
    f: Vec<Vec<f32>>,
    d: Vec<Vec<f64>>,
}

/// Runs `kernel` over `items` threads on the host.
fn run(kernel: &str, items: usize, args: &[A<'_>]) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(driver());
    cmd.arg(kernel).arg(items.to_string());
    let mut outs: Vec<(bool, PathBuf)> = Vec::new();
    for (k, a) in args.iter().enumerate() {
        let p = dir.path().join(format!("a{k}"));
        let ps = p.display().to_string();
        match a {
            A::F(v) | A::Uf(v) => {
                std::fs::write(&p, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
                if matches!(a, A::Uf(_)) {
                    cmd.arg(format!("uf:{ps}"));
                    outs.push((true, p));
                } else {
                    cmd.arg(format!("f:{ps}"));
                }
            }
            A::D(v) => {
                std::fs::write(&p, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
                cmd.arg(format!("d:{ps}"));
            }
            A::Of(n) => {
                cmd.arg(format!("of:{ps}:{n}"));
                outs.push((true, p));
            }
            A::Od(n) => {
                cmd.arg(format!("od:{ps}:{n}"));
                outs.push((false, p));
            }
            A::I(i) => {
                cmd.arg(format!("i:{i}"));
            }
            A::X(x) => {
                cmd.arg(format!("x:{x:e}"));
            }
            A::E(e) => {
                cmd.arg(format!("e:{e:e}"));
            }
        }
    }
    let st = cmd.output().expect("running the host driver");
    assert!(st.status.success(), "{kernel}: driver failed: {}", String::from_utf8_lossy(&st.stderr));
    let mut out = Out { f: Vec::new(), d: Vec::new() };
    for (is_f32, p) in outs {
        let b = std::fs::read(&p).unwrap();
        if is_f32 {
            out.f.push(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect());
        } else {
            out.d.push(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect());
        }
    }
    out
}

/// `ops/cuda/mod.rs::partials`.
fn partials(per_row: usize) -> usize {
    per_row.div_ceil(256).next_power_of_two().clamp(1, 1024)
}

fn relu_code(r: Relu) -> usize {
    match r {
        Relu::None => 0,
        Relu::Input => 1,
        Relu::Output => 2,
    }
}

#[test]
fn depthwise_kernels_match_the_cpu_op() {
    for (i, case) in refs::dw_cases().iter().enumerate() {
        let rf = refs::dw_reference(case, 100 + 10 * i as u64);
        let (ho, wo) = case.out_hw();
        let o = case.c * case.m;
        let geom = [
            case.n, case.c, case.h, case.w, case.m, case.k, case.k, ho, wo, case.s, case.pads[0], case.pads[2], case.d,
        ];
        let with_geom = |mut v: Vec<A<'static>>| -> Vec<A<'static>> {
            v.extend(geom.iter().map(|&g| A::I(g)));
            v
        };
        let ny = case.n * o * ho * wo;
        let nx = case.n * case.c * case.h * case.w;
        let x: &'static [f32] = Box::leak(rf.x.clone().into_boxed_slice());
        let w: &'static [f32] = Box::leak(rf.w.clone().into_boxed_slice());
        let r: &'static [f32] = Box::leak(rf.r.clone().into_boxed_slice());

        let y = run("dfb_dw_fwd", ny, &with_geom(vec![A::F(x), A::F(w), A::Of(ny)])).f.remove(0);
        let uy = check(&format!("{case:?} forward"), &y, &rf.y, &rf.y_tol);

        let dx = run("dfb_dw_bwd_data", nx, &with_geom(vec![A::F(r), A::F(w), A::Of(nx)])).f.remove(0);
        let udx = check(&format!("{case:?} input gradient"), &dx, &rf.dx, &rf.dx_tol);
        eprintln!("{case:?}: fraction of the bound used: forward {uy:.3}, input gradient {udx:.3}");

        let rows = o * case.k * case.k;
        // The split the op uses, and others: the result must not depend on it beyond rounding.
        for p in [partials(case.n * ho * wo), 1, 3, 64] {
            let mut args = with_geom(vec![A::F(x), A::F(r), A::Of(rows * p)]);
            args.push(A::I(p));
            let part = run("dfb_dw_bwd_weight_partial", rows * p, &args).f.remove(0);
            let part: &'static [f32] = Box::leak(part.into_boxed_slice());
            let dw = run("dfb_rows_sum", rows, &[A::F(part), A::Of(rows), A::I(rows), A::I(p)]).f.remove(0);
            let u = check(&format!("{case:?} weight gradient, {p} partials"), &dw, &rf.dw, &rf.dw_tol);
            eprintln!("{case:?}: weight gradient with {p} partials: fraction of the bound used {u:.3}");
        }
    }
}

/// The training-mode statistics the kernels compute for `case` (f64 [3, C]).
fn host_stats(case: &refs::BnCase, x: &[f32], p: usize) -> Vec<f64> {
    let [n, c, h, w] = case.dims();
    let hw = h * w;
    let rc = relu_code(case.relu);
    let part = run("dfb_bn_stats_partial", c * p, &[A::F(x), A::Of(2 * c * p), A::I(n), A::I(c), A::I(hw), A::I(rc), A::I(p)])
        .f
        .remove(0);
    run(
        "dfb_bn_stats_final",
        c,
        &[A::F(x), A::F(&part), A::Od(3 * c), A::I(n), A::I(c), A::I(hw), A::I(rc), A::I(p), A::E(BN_EPS)],
    )
    .d
    .remove(0)
}

/// `(y, dx, dgamma, dbeta)` through the kernels with statistics `stats` (`batch`: training mode).
fn host_bn(case: &refs::BnCase, rf: &refs::BnRef, stats: &[f64], batch: bool, p: usize) -> [Vec<f32>; 4] {
    let [n, c, h, w] = case.dims();
    let (hw, len) = (h * w, n * c * h * w);
    let rc = relu_code(case.relu);
    let args = [A::F(&rf.x), A::F(&rf.gamma), A::F(&rf.beta), A::D(stats), A::Of(len), A::I(n), A::I(c), A::I(hw), A::I(rc)];
    let y = run("dfb_bn_apply", len, &args).f.remove(0);
    let part = run(
        "dfb_bn_bwd_partial",
        c * p,
        &[
            A::F(&rf.x),
            A::F(&rf.r),
            A::F(&rf.gamma),
            A::F(&rf.beta),
            A::D(stats),
            A::Of(2 * c * p),
            A::I(n),
            A::I(c),
            A::I(hw),
            A::I(rc),
            A::I(p),
        ],
    )
    .f
    .remove(0);
    let sums = run("dfb_bn_bwd_final", c, &[A::F(&part), A::D(stats), A::Od(4 * c), A::I(c), A::I(p)]).d.remove(0);
    let dx = run(
        "dfb_bn_bwd_dx",
        len,
        &[
            A::F(&rf.x),
            A::F(&rf.r),
            A::F(&rf.gamma),
            A::F(&rf.beta),
            A::D(stats),
            A::D(&sums),
            A::Of(len),
            A::I(n),
            A::I(c),
            A::I(hw),
            A::I(rc),
            A::I(batch as usize),
        ],
    )
    .f
    .remove(0);
    let dgamma: Vec<f32> = sums[2 * c..3 * c].iter().map(|&v| v as f32).collect();
    let dbeta: Vec<f32> = sums[3 * c..4 * c].iter().map(|&v| v as f32).collect();
    // Rows 2 and 3 hold f32 values: converting them back is exact.
    assert!(sums[2 * c..].iter().all(|&v| (v as f32) as f64 == v), "dgamma/dbeta rows must be f32 values");
    [y, dx, dgamma, dbeta]
}

#[test]
fn batchnorm_kernels_match_the_cpu_op() {
    for (i, case) in refs::bn_cases().iter().enumerate() {
        let rf = refs::bn_reference(case, 500 + 10 * i as u64);
        let c = case.c;
        for p in [partials(case.count()), 1, 7] {
            let what = |s: &str| format!("{case:?}, {p} partials: {s}");
            let stats = host_stats(case, &rf.x, p);
            let mean: Vec<f32> = stats[..c].iter().map(|&v| v as f32).collect();
            let var: Vec<f32> = stats[c..2 * c].iter().map(|&v| v as f32).collect();
            let mut used = vec![
                check(&what("batch mean"), &mean, &rf.mean, &rf.mean_tol),
                check(&what("batch variance"), &var, &rf.var, &rf.var_tol),
            ];
            for ci in 0..c {
                let want = 1.0 / (stats[c + ci] + BN_EPS).sqrt();
                assert_eq!(stats[2 * c + ci], want, "{}", what("inverse std"));
            }
            let [y, dx, dg, db] = host_bn(case, &rf, &stats, true, p);
            used.push(check(&what("training output"), &y, &rf.y, &rf.y_tol));
            used.push(check(&what("training input gradient"), &dx, &rf.dx, &rf.dx_tol));
            used.push(check(&what("training weight gradient"), &dg, &rf.dgamma, &rf.dgamma_tol));
            used.push(check(&what("training bias gradient"), &db, &rf.dbeta, &rf.dbeta_tol));

            let fixed =
                run("dfb_bn_fixed_stats", c, &[A::F(&rf.rm), A::F(&rf.rv), A::Od(3 * c), A::I(c), A::E(BN_EPS)]).d.remove(0);
            let [y, dx, dg, db] = host_bn(case, &rf, &fixed, false, p);
            used.push(check(&what("evaluation output"), &y, &rf.y_eval, &rf.y_eval_tol));
            used.push(check(&what("evaluation input gradient"), &dx, &rf.dx_eval, &rf.dx_eval_tol));
            used.push(check(&what("evaluation weight gradient"), &dg, &rf.dgamma_eval, &rf.dgamma_eval_tol));
            used.push(check(&what("evaluation bias gradient"), &db, &rf.dbeta_eval, &rf.dbeta_eval_tol));
            eprintln!(
                "{}",
                what(&format!("fraction of the bound used (mean, var, y, dx, dgamma, dbeta, eval y, dx, dgamma, dbeta) {used:.3?}"))
            );
        }
    }
}

/// The in-place update computes the CPU's candle expression with the same f32 roundings, so
/// it must agree bit for bit given the same batch statistics.
#[test]
fn running_statistics_update_is_bit_identical_to_the_cpu() {
    for (i, case) in refs::bn_cases().iter().enumerate() {
        let rf = refs::bn_reference(case, 900 + 10 * i as u64);
        let c = case.c;
        let n = case.count() as f64;
        let m = BN_MOMENTUM;
        let upd = |r: &[f32], s: &[f32], factor: f64| {
            run(
                "dfb_bn_running_update",
                c,
                &[A::Uf(r), A::F(s), A::I(c), A::X((1.0 - m) as f32), A::X(factor as f32), A::X(m as f32)],
            )
            .f
            .remove(0)
        };
        assert_eq!(upd(&rf.rm, &rf.mean, 1.0), rf.rm_new, "{case:?} running mean");
        assert_eq!(upd(&rf.rv, &rf.var, n / (n - 1.0)), rf.rv_new, "{case:?} running variance");
    }
}

/// The comparison itself must fail on a wrong value: one output moved 3x its bound.
#[test]
fn the_comparison_catches_a_wrong_result() {
    let case = refs::dw_cases()[1];
    let rf = refs::dw_reference(&case, 7);
    let mut y = rf.y.clone();
    let i = y.len() / 2;
    y[i] += 3.0 * rf.y_tol[i].max(f32::EPSILON);
    let caught = std::panic::catch_unwind(|| check("perturbed", &y, &rf.y, &rf.y_tol));
    assert!(caught.is_err(), "a result 3x beyond the bound must fail");
}
