//! `kc bench`: times a kernel on the host against the host's measured peaks, and `kc bench --calibrate`,
//! which measures those peaks (matrix FLOP/s on the host's matrix unit, memory copy bandwidth).

use crate::args::{Backend, BenchArgs, Format};
use crate::commands::{
    compile_file, host_threads, launch_args, load_target, select_kernel, stdout, tile_checked, Ctx, Failure,
};
use crate::files;
use kc_ir::launch::Args;
use kc_ir::{DType, Diagnostic, Graph, Tensor};
use kc_runtime::random;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// The most timed runs a bench makes, whatever --min-time asks.
const MAX_ITERATIONS: usize = 10_000;

pub fn bench(ctx: &Ctx, a: &BenchArgs) -> Result<(), Failure> {
    let threads = a.threads.map(|t| t as usize).unwrap_or_else(host_threads);
    if a.calibrate {
        if let Some(f) = &a.file {
            return Err(Failure::Message(format!(
                "--calibrate measures the host and takes no FILE (got `{}`); calibrate first, then bench the kernel",
                f.display()
            )));
        }
        return calibrate(a, threads);
    }
    let Some(file) = &a.file else {
        return Err(Failure::Message(
            "kc bench needs the FILE of the kernel to time (or --calibrate to measure the host's peaks)".to_string(),
        ));
    };
    if a.min_iterations == 0 {
        return Err(Failure::Message("--min-iterations must be at least 1".to_string()));
    }
    let c = compile_file(file)?;
    if ctx.report(&c.diags, &c.sources) {
        return Err(Failure::Reported);
    }
    let g = select_kernel(&c.program, a.kernel.as_deref(), &c.name)?;
    let given = launch_args(g, &a.inputs)?;
    let args = random::random_args(g, &given, a.random)?;
    let default = if a.backend == Backend::Jit { "host" } else { kc_ir::target::DEFAULT };
    let target = load_target(a.target.as_deref().unwrap_or(default))?;
    // Every backend is tiled: the work counts come from the tile program.
    let verify = a.backend != Backend::Jit;
    let tp = match kc_ir::launch::bind(g, &args).and_then(|b| tile_checked(g, &b, &target, verify)) {
        Ok((_, tp, _, _)) => tp,
        Err(d) => {
            ctx.report(&d, &c.sources);
            return Err(Failure::Reported);
        }
    };
    let flop = match work(g, &tp, &args) {
        Ok(f) => f,
        Err(d) => {
            ctx.report(&[d], &c.sources);
            return Err(Failure::Reported);
        }
    };
    let threads = if a.backend == Backend::Jit { threads } else { 1 };
    let code = if a.backend == Backend::Jit {
        match kc_codegen::compile(&tp, &kc_codegen::Options::default()) {
            Ok(code) => Some(code),
            Err(d) => {
                ctx.report(&[d], &c.sources);
                return Err(Failure::Reported);
            }
        }
    } else {
        None
    };
    let limits = a.inputs.limits();
    // The JIT updates `inout` tensors in place when the program allows it (as PyTorch's optimizers do):
    // the timed calls are repeated steps on the bench's own copy of the arguments, whose state evolves.
    let mut state = Args {
        tensors: args.tensors.iter().map(|(k, t)| (k.clone(), kc_runtime::gm::huge_copy(t))).collect(),
        dims: args.dims.clone(),
    };
    let mut mode = None;
    let inout_bytes = |st: &Args| -> u64 {
        g.results
            .iter()
            .filter_map(|r| r.inout.and_then(|p| g.params.get(p)).and_then(|p| st.tensors.get(&p.name)))
            .map(|t| (t.len() * t.dtype().size_bytes()) as u64)
            .sum()
    };
    // One call; the bytes of its results.
    let mut once = || -> Result<u64, Vec<Diagnostic>> {
        match (a.backend, &code) {
            (Backend::Jit, Some(code)) => {
                let (r, _, m) = code.run_in_place(&tp, g, &mut state, threads, &limits)?;
                mode.get_or_insert(m);
                let bytes = tensor_bytes(r.iter().map(|(_, t)| t)) + inout_bytes(&state);
                // The results go back to the program, as a caller that keeps its output buffers from one
                // step to the next would: the next call may write into them (when it provably writes
                // them whole) instead of fresh pages the kernel must fault in and clear.
                if !a.fresh_outputs {
                    code.recycle(r);
                }
                Ok(bytes)
            }
            (Backend::Sim, _) => {
                kc_runtime::sim::run_with(&tp, g, &args, &limits).map(|(r, _)| tensor_bytes(r.iter().map(|(_, t)| t)))
            }
            _ => kc_ir::interp::run_with(g, &args, &limits).map(|r| tensor_bytes(r.iter().map(|(_, t)| t))),
        }
    };
    // The first run (warm-up or timed) also checks the kernel runs at all, and gives the result bytes.
    let check = |r: Result<u64, Vec<Diagnostic>>| match r {
        Ok(r) => Ok(r),
        Err(d) => {
            ctx.report(&crate::commands::memory_note(d, &a.inputs), &c.sources);
            Err(Failure::Reported)
        }
    };
    let mut result_bytes = None;
    for _ in 0..a.warmup {
        let r = check(once())?;
        result_bytes.get_or_insert(r);
    }
    let mut times: Vec<f64> = Vec::new();
    let start = Instant::now();
    let min_time = Duration::from_secs_f64(a.min_time);
    while times.len() < MAX_ITERATIONS && (times.len() < a.min_iterations as usize || start.elapsed() < min_time) {
        let t0 = Instant::now();
        let r = once();
        let dt = t0.elapsed().as_secs_f64();
        let r = check(r)?;
        result_bytes.get_or_insert(r);
        times.push(dt);
    }
    let in_place = match mode {
        Some(kc_runtime::native::Mode::InPlace) => Some(true),
        Some(kc_runtime::native::Mode::Copied(_)) => Some(false),
        None => None,
    };
    let bytes = tensor_bytes(args.tensors.values()) + result_bytes.unwrap_or(0);
    let s = stats(&times);
    let gflops = flop as f64 / s.median / 1e9;
    let gbps = bytes as f64 / s.median / 1e9;
    let (peaks, peaks_ok) = match read_peaks(&a.peaks) {
        Ok(p) => (p.get("peaks").and_then(|m| m.get(threads.to_string())).cloned(), true),
        Err(msg) => {
            ctx.note(&msg);
            (None, false)
        }
    };
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).filter(|x| *x > 0.0);
    let matrix_fraction = peaks.as_ref().and_then(|p| num(p, "matrix_gflops")).map(|peak| gflops / peak);
    let memory_fraction = peaks.as_ref().and_then(|p| num(p, "memory_gbps")).map(|peak| gbps / peak);
    let unit = peaks.as_ref().and_then(|p| p.get("matrix_unit")).and_then(Value::as_str).unwrap_or("?").to_string();
    if peaks.is_none() && peaks_ok {
        ctx.note(&format!(
            "no peaks for {threads} thread{} in `{}`: run `kc bench --calibrate --threads {threads}` to measure them \
             and see the fraction of the roofline",
            plural(threads),
            a.peaks.display()
        ));
    }
    let backend = match a.backend {
        Backend::Jit => "jit",
        Backend::Sim => "sim",
        Backend::Interp => "interp",
    };
    // The kernel's dims in the order it declares them, then any other.
    let mut order: Vec<&String> = g.dims.iter().filter(|d| tp.dims.contains_key(*d)).collect();
    order.extend(tp.dims.keys().filter(|k| !g.dims.contains(k)));
    let dims: Vec<String> = order.iter().map(|k| format!("{k}={}", tp.dims[*k])).collect();
    let text = match a.format {
        Format::Json => {
            let doc = json!({
                "kernel": g.name, "file": c.name, "backend": backend, "threads": threads, "target": target.name,
                "dims": tp.dims, "warmup": a.warmup, "iterations": times.len(),
                "median_s": s.median, "min_s": s.min, "max_s": s.max, "mean_s": s.mean,
                "flop": flop, "bytes": bytes, "gflops": gflops, "gbps": gbps,
                "matrix_fraction": matrix_fraction, "memory_fraction": memory_fraction,
                "matrix_unit": peaks.as_ref().map(|_| unit.clone()),
                "in_place": in_place, "fresh_outputs": a.fresh_outputs,
            });
            let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Text => {
            let how = match a.backend {
                Backend::Jit => format!("jit, {threads} thread{}, {} tiling", plural(threads), target.name),
                Backend::Sim => format!("sim, {} tiling", target.name),
                Backend::Interp => "interp".to_string(),
            };
            let (scale, unit_t) = time_unit(s.median);
            let mut line = format!(
                "{} ({how}) {}: median {} {unit_t} (min {}, max {}, {} iteration{}); {} GFLOP/s, {} GB/s",
                g.name,
                dims.join(","),
                sig(s.median * scale),
                sig(s.min * scale),
                sig(s.max * scale),
                times.len(),
                plural(times.len()),
                sig(gflops),
                sig(gbps)
            );
            if let (Some(m), Some(b)) = (matrix_fraction, memory_fraction) {
                line.push_str(&format!(
                    "; roofline: {}% of matrix peak ({unit}), {}% of memory bandwidth",
                    sig(m * 100.0),
                    sig(b * 100.0)
                ));
            }
            line.push('\n');
            line
        }
    };
    stdout(&text)
}

/// The kernel's FLOP: over its launches, matrix FLOPs plus one per vector element written.
fn work(g: &Graph, tp: &kc_ir::tile::TileProgram, args: &Args) -> Result<u64, Diagnostic> {
    let mut ints = kc_ir::report::IntData::new();
    for (i, t) in tp.tensors.iter().enumerate() {
        if let kc_ir::tile::TensorRole::Param(p) = t.role {
            if let Some(v) = g.params.get(p).and_then(|p| args.tensors.get(&p.name)) {
                if v.dtype() == DType::I32 {
                    ints.insert(
                        kc_ir::tile::TensorId(i as u32),
                        v.to_f64_vec().into_iter().map(|x| x as i64).collect(),
                    );
                }
            }
        }
    }
    let counts = kc_ir::report::count(tp, &ints)?;
    Ok(counts.iter().map(|c| c.cube_flops + c.vector_elements).sum())
}

fn tensor_bytes<'t>(ts: impl Iterator<Item = &'t Tensor>) -> u64 {
    ts.map(|t| (t.len() * t.dtype().size_bytes()) as u64).sum()
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
    mean: f64,
}

fn stats(times: &[f64]) -> Stats {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        median,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
        mean: if n == 0 { 0.0 } else { v.iter().sum::<f64>() / n as f64 },
    }
}

/// The scale and unit to print a time of `secs` seconds in.
fn time_unit(secs: f64) -> (f64, &'static str) {
    if secs >= 1.0 {
        (1.0, "s")
    } else if secs >= 1e-3 {
        (1e3, "ms")
    } else {
        (1e6, "us")
    }
}

/// A number with about three significant digits (no exponent).
fn sig(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The peaks file as JSON (`{"peaks": {"1": {...}}}`); an absent file is an empty one.
fn read_peaks(path: &Path) -> Result<Value, String> {
    if !path.exists() {
        return Ok(json!({"peaks": {}}));
    }
    let bytes = files::read_bytes(path)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!("the peaks file `{}` is not valid JSON ({e}); remove it and calibrate again", path.display())
    })?;
    if !v.get("peaks").is_some_and(Value::is_object) {
        return Err(format!(
            "the peaks file `{}` has no `peaks` object; remove it and calibrate again",
            path.display()
        ));
    }
    Ok(v)
}

/// The CPU's model name, from /proc/cpuinfo when readable.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn calibrate(a: &BenchArgs, threads: usize) -> Result<(), Failure> {
    let mut doc = read_peaks(&a.peaks)?;
    files::check_parent(&a.peaks)?;
    let secs = a.calibrate_seconds;
    let (matrix_gflops, unit) = matrix_peak(threads, secs);
    let memory_gbps = memory_peak(threads, secs);
    let host = cpu_model();
    let entry = json!({
        "threads": threads, "matrix_gflops": matrix_gflops, "matrix_unit": unit, "memory_gbps": memory_gbps,
        "host": host,
    });
    if let Some(m) = doc.get_mut("peaks").and_then(Value::as_object_mut) {
        m.insert(threads.to_string(), entry.clone());
    }
    let mut bytes = serde_json::to_string_pretty(&doc).unwrap_or_default().into_bytes();
    bytes.push(b'\n');
    files::write_all_atomic(&[(a.peaks.clone(), bytes)])?;
    let text = match a.format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&entry).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Text => format!(
            "host peaks on {threads} thread{}{}: matrix {} GFLOP/s ({unit}, bf16 mmad 256x256x256 tiles), memory {} GB/s \
             (copy, read+write); written to {}\n",
            plural(threads),
            host.map(|h| format!(" ({h})")).unwrap_or_default(),
            sig(matrix_gflops),
            sig(memory_gbps),
            a.peaks.display()
        ),
    };
    stdout(&text)
}

/// Runs `body(thread index, deadline-start barrier)` on `threads` threads at once and sums the rates they
/// return.
fn on_threads(threads: usize, body: impl Fn(usize, &std::sync::Barrier) -> f64 + Sync) -> f64 {
    let barrier = std::sync::Barrier::new(threads);
    let (body, barrier) = (&body, &barrier);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|i| s.spawn(move || body(i, barrier))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// The best rate of `ROUNDS` consecutive rounds of `secs / ROUNDS` seconds each (at least one call each):
/// a peak is what the host sustains when nothing else runs, so a round slowed by another process on a shared
/// machine does not lower it. `call` does one unit of work and returns its size (FLOP or bytes).
fn best_rate(secs: f64, mut call: impl FnMut() -> f64) -> f64 {
    const ROUNDS: u32 = 5;
    let round = secs / f64::from(ROUNDS);
    let mut best = 0.0f64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut work = 0.0;
        loop {
            work += call();
            if start.elapsed().as_secs_f64() >= round {
                break;
            }
        }
        best = best.max(work / start.elapsed().as_secs_f64().max(1e-9));
    }
    best
}

/// Matrix FLOP/s: each thread repeats a bf16 256×256×256 `mmad` with accumulate for `secs` seconds (the best
/// of [`best_rate`]'s rounds).
fn matrix_peak(threads: usize, secs: f64) -> (f64, &'static str) {
    use kc_runtime::host::mmad::{mmad, path, Operand, Path as MPath};
    const T: usize = 256;
    let unit = match path() {
        MPath::Amx => "amx",
        MPath::Avx512Bf16 => "avx512-bf16",
        MPath::Avx512 => "avx512",
        MPath::Portable => "portable",
    };
    let rate = on_threads(threads, |_, barrier| {
        let a = vec![half::bf16::from_f32(0.01); T * T];
        let b = vec![half::bf16::from_f32(0.01); T * T];
        let mut c = vec![0.0f32; T * T];
        // One untimed call: tile configuration and scratch buffers.
        mmad(Operand::Bf16(&a), T, Operand::Bf16(&b), T, &mut c, T, (T, T, T), true);
        barrier.wait();
        let rate = best_rate(secs, || {
            mmad(Operand::Bf16(&a), T, Operand::Bf16(&b), T, &mut c, T, (T, T, T), true);
            2.0 * (T * T * T) as f64
        });
        std::hint::black_box(&c);
        kc_runtime::host::mmad::release_tiles();
        rate / 1e9
    });
    (rate, unit)
}

/// Memory bandwidth: each thread copies its share of 256 MiB with `copy_from_slice` for `secs` seconds,
/// counting the bytes read and written (the best of [`best_rate`]'s rounds).
fn memory_peak(threads: usize, secs: f64) -> f64 {
    const TOTAL: usize = 256 << 20;
    let words = (TOTAL / threads / 8).max(1);
    on_threads(threads, |i, barrier| {
        let src = vec![i as u64 + 1; words];
        let mut dst = vec![0u64; words];
        dst.copy_from_slice(&src);
        barrier.wait();
        let rate = best_rate(secs, || {
            dst.copy_from_slice(&src);
            std::hint::black_box(&mut dst);
            2.0 * (words * 8) as f64
        });
        rate / 1e9
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let s = stats(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    /// A peak is the best round, not the average: rounds slowed down (here the first four of five, by calls
    /// of 20 ms instead of 0.1 ms, spinning) do not lower it: it is well above the average rate.
    #[test]
    fn a_peak_is_the_best_round() {
        let start = Instant::now();
        let spin = |secs: f64| {
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < secs {
                std::hint::spin_loop();
            }
        };
        let mut calls = 0.0;
        let rate = best_rate(0.1, || {
            spin(if start.elapsed().as_secs_f64() < 0.08 { 0.02 } else { 0.0001 });
            calls += 1.0;
            1.0
        });
        let average = calls / start.elapsed().as_secs_f64();
        // About 10000 calls a second in the last round against about 2000 on average.
        assert!(rate > 2.0 * average, "best {rate}, average {average}");
    }

    #[test]
    fn numbers_print_with_three_digits() {
        assert_eq!(sig(1398.4), "1398");
        assert_eq!(sig(12.34), "12.3");
        assert_eq!(sig(2.054), "2.05");
        assert_eq!(time_unit(0.0123), (1e3, "ms"));
    }
}
