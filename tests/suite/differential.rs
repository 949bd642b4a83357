//! Differential testing of kc's executors: random well-typed kernels (`kc_tests::gen`) run through the
//! reference interpreter, the simulator (ascend910b, ascend950) and the JIT (ascend910b, ascend950, host;
//! 1 and 2 threads), and every result is compared with the interpreter's (`kc_tests::diff`, which says how).
//!
//! - `random_programs_agree`: a fixed-seed run of 300 programs (`KC_DIFF_PROGRAMS=N` runs N, and
//!   `KC_DIFF_SEED=S` another seed) that must all agree; most must run on every executor, and the
//!   generator's feature mix must be real.
//! - `fixtures_agree`: every `tests/data/diff/*.ker` (bugs the random runs found, minimized; the header
//!   gives the dims) agrees on every executor.
//! - Long runs: `cargo run --release -p kc-tests --bin difftest -- --seconds 3600 --seed 1`.

use kc_ir::DType;
use kc_ir::Tensor;
use kc_tests::diff;
use kc_tests::gen::{self, ResultInfo};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn random_programs_agree() {
    let n = env_u64("KC_DIFF_PROGRAMS", 300);
    let base = env_u64("KC_DIFF_SEED", 7) << 32;
    let (mut everywhere, mut refused) = (0u64, 0u64);
    let mut mix = [0u64; 10];
    let mut failures = Vec::new();
    for i in 0..n {
        let p = gen::generate(base + i);
        let f = &p.features;
        for (k, on) in
            [f.contraction, f.gather, f.reduction, f.mask, f.cast, f.inout, f.softmax, f.library, f.broadcast, f.bf16]
                .into_iter()
                .enumerate()
        {
            mix[k] += on as u64;
        }
        match diff::check_program(&p) {
            Ok(r) => {
                everywhere += r.ran_everywhere() as u64;
                refused += r.refused as u64;
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} of {n} programs disagree; the first:\n{}", failures.len(), failures[0]);
    assert!(everywhere * 10 >= n * 9, "only {everywhere} of {n} programs ran on every executor (E0606 elsewhere)");
    assert!(refused * 20 <= n, "{refused} of {n} programs stop with a run-time error: a generator bug");
    let names =
        ["contraction", "gather", "reduction", "mask", "cast", "inout", "softmax", "library op", "broadcast", "bf16"];
    for (name, c) in names.iter().zip(mix) {
        assert!(c * 10 >= n, "only {c} of {n} programs have a {name}: the generator's mix is off");
    }
}

/// The generator is deterministic per seed, and its programs differ between seeds.
#[test]
fn generator_is_seeded() {
    let a = gen::generate(42);
    let b = gen::generate(42);
    assert_eq!(a.source, b.source);
    assert_eq!(a.dims, b.dims);
    assert_ne!(a.source, gen::generate(43).source);
}

/// The comparison is not so loose that a wrong result passes: a result one part in 100 of its largest
/// value off fails for f32 after a long reduction, a bf16 result several units off fails, an integer one
/// off fails; the tolerance grows with the reduction's length.
#[test]
fn comparison_catches_perturbed_results() {
    let n = 257;
    let want: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
    let w = Tensor::from_f32(vec![n], want.clone()).unwrap();
    let long = ResultInfo { terms: 257, ..ResultInfo::default() };
    assert!(diff::compare(&w, &w, &long).is_ok());
    let mut bad = want.clone();
    bad[100] += 0.01;
    assert!(diff::compare(&Tensor::from_f32(vec![n], bad).unwrap(), &w, &long).is_err());
    // A difference of summation order at this length passes (at element 100, |want| = 0.64: the tolerance is
    // 1e-4 * 0.64 + 0.25e-4 + 4 * 257 * 2^-24 = 1.5e-4) ...
    let mut close = want.clone();
    close[100] += 1.2e-4;
    assert!(diff::compare(&Tensor::from_f32(vec![n], close.clone()).unwrap(), &w, &long).is_ok());
    // ... but not for an element-wise result (8.9e-5).
    let elem = ResultInfo { terms: 1, ..ResultInfo::default() };
    assert!(diff::compare(&Tensor::from_f32(vec![n], close).unwrap(), &w, &elem).is_err());
    // bf16: four units of 2^-8 at 1.0 fail, one passes.
    let wb = Tensor::from_f32_as(DType::BF16, vec![2], &[1.0, 0.5]).unwrap();
    let four = Tensor::from_f32_as(DType::BF16, vec![2], &[1.0 + 4.0 * 2f32.powi(-7), 0.5]).unwrap();
    let one = Tensor::from_f32_as(DType::BF16, vec![2], &[1.0 + 2f32.powi(-7), 0.5]).unwrap();
    assert!(diff::compare(&one, &wb, &elem).is_ok());
    assert!(diff::compare(&four, &wb, &elem).is_err());
    let i = Tensor::from_i32(vec![2], vec![3, 4]).unwrap();
    assert!(diff::compare(&Tensor::from_i32(vec![2], vec![3, 5]).unwrap(), &i, &elem).is_err());
    let nan = Tensor::from_f32(vec![1], vec![f32::NAN]).unwrap();
    assert!(diff::compare(&nan, &nan, &elem).is_ok());
    assert!(diff::compare(&Tensor::from_f32(vec![1], vec![0.0]).unwrap(), &nan, &elem).is_err());
    let inf = Tensor::from_f32(vec![1], vec![f32::INFINITY]).unwrap();
    assert!(diff::compare(&Tensor::from_f32(vec![1], vec![3e38]).unwrap(), &inf, &elem).is_err());
}

/// Every minimized fixture of `tests/data/diff` agrees on every executor.
#[test]
fn fixtures_agree() {
    let dir = crate::common::repo_root().join("tests/data/diff");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/data/diff").flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "ker"));
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let (dims, info) = diff::fixture_header(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for seed in 0..3 {
            if let Err(e) = diff::check(&text, &dims, seed, &Default::default(), &info) {
                failures.push(format!("{} (seed {seed}): {e}", f.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
