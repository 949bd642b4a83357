//! Long differential runs: random kernels through kc's three executors until a time limit.
//!
//! ```text
//! cargo run --release -p kc-tests --bin difftest -- --seconds 3600 --seed 1 [--jobs N] [--count N]
//!     [--out DIR] [--only PROGRAM_SEED] [--file FIXTURE.ker]
//! ```
//!
//! Program `i` of a run has the seed `(seed << 32) + i`. Each failing program is written to `DIR` (default
//! `difftest-failures`) as `<program seed>.ker`, with its seed, dims and the failure in header comments; a
//! failure is re-run alone with `--only <program seed>`. Prints progress every 10 seconds and a summary
//! line at the end; exits with status 1 if any program failed.

use kc_tests::{diff, gen};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn main() {
    let mut seconds = 60u64;
    let mut seed = 1u64;
    let mut jobs = 1usize;
    let mut count = u64::MAX;
    let mut out = std::path::PathBuf::from("difftest-failures");
    let mut only = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| -> &str {
            args.get(i + 1).map(String::as_str).unwrap_or_else(|| {
                eprintln!("{} needs a value", args[i]);
                std::process::exit(2)
            })
        };
        let num = |i: usize| -> u64 {
            val(i).parse().unwrap_or_else(|_| {
                eprintln!("{}: not a number: {}", args[i], val(i));
                std::process::exit(2)
            })
        };
        match args[i].as_str() {
            "--seconds" => seconds = num(i),
            "--seed" => seed = num(i),
            "--jobs" => jobs = num(i).max(1) as usize,
            "--count" => count = num(i),
            "--out" => out = val(i).into(),
            "--only" => only = Some(num(i)),
            "--file" => {
                // A fixture: its `// dims:` header gives the dims.
                let path = val(i);
                let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
                    eprintln!("{path}: {e}");
                    std::process::exit(2)
                });
                let (dims, info) = diff::fixture_header(&text).unwrap_or_else(|e| {
                    eprintln!("{path}: {e}");
                    std::process::exit(2)
                });
                match diff::check(&text, &dims, seed, &Default::default(), &info) {
                    Ok(r) => println!("agree: {} runs, no tiling on {:?}", r.runs, r.no_tiling),
                    Err(e) => {
                        println!("FAIL: {e}");
                        std::process::exit(1)
                    }
                }
                return;
            }
            other => {
                eprintln!("unknown argument `{other}`");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    if let Some(s) = only {
        let p = gen::generate(s);
        println!("seed {s}, dims {}:\n{}", p.dims_text(), p.source);
        match diff::check_program(&p) {
            Ok(r) => println!("agree: {} runs, no tiling on {:?}", r.runs, r.no_tiling),
            Err(e) => {
                println!("FAIL: {e}");
                std::process::exit(1)
            }
        }
        return;
    }
    let verbose = std::env::var("KC_DIFF_VERBOSE").is_ok();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let next = AtomicU64::new(0);
    let (done, everywhere, no_tiling, refused, failed) =
        (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let runs = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let last_print = Mutex::new(Instant::now());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let ps = (seed << 32).wrapping_add(i);
                let p = gen::generate(ps);
                match diff::check_program(&p) {
                    Ok(r) => {
                        runs.fetch_add(r.runs, Ordering::SeqCst);
                        if r.ran_everywhere() {
                            everywhere.fetch_add(1, Ordering::SeqCst);
                        } else {
                            no_tiling.fetch_add(1, Ordering::SeqCst);
                            if verbose {
                                println!("E0606 {ps}: {}", r.no_tiling.join("; "));
                            }
                        }
                        if r.refused {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        println!("FAIL {e}");
                        let _ = std::fs::create_dir_all(&out);
                        let header: String = e.lines().map(|l| format!("// {l}\n")).collect();
                        let text = format!("// dims: {}\n// seed: {ps}\n{header}{}", p.dims_text(), p.source);
                        let _ = std::fs::write(out.join(format!("{ps}.ker")), text);
                        if let Ok(mut f) = failures.lock() {
                            f.push(ps);
                        }
                    }
                }
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                if let Ok(mut lp) = last_print.lock() {
                    if lp.elapsed() >= Duration::from_secs(10) {
                        *lp = Instant::now();
                        println!(
                            "[{:>5.0} s] {n} programs, {} failed, {} not tiled everywhere (E0606)",
                            start.elapsed().as_secs_f64(),
                            failed.load(Ordering::SeqCst),
                            no_tiling.load(Ordering::SeqCst)
                        );
                    }
                }
            });
        }
    });
    let n = done.load(Ordering::SeqCst);
    let f = failed.load(Ordering::SeqCst);
    println!(
        "difftest: seed {seed}, {n} programs in {:.0} s: {} agreed on all executors ({} executor runs), {} not \
         tiled on some target (E0606), {} stopped with the same error everywhere, {f} failed",
        start.elapsed().as_secs_f64(),
        everywhere.load(Ordering::SeqCst),
        runs.load(Ordering::SeqCst),
        no_tiling.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    );
    if f > 0 {
        let list = failures.lock().map(|v| v.clone()).unwrap_or_default();
        println!("failing program seeds (written to {}): {list:?}", out.display());
        std::process::exit(1);
    }
}
