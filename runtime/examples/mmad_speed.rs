//! Times every path of the host mmad (`kc_runtime::host::mmad`) on bf16 × bf16 tiles the JIT calls it with,
//! and prints GFLOP/s (2·m·n·k per call, packing included; best of 20 rounds, so a busy machine still gives
//! a fair figure). Run with `cargo run --release -p kc-runtime --example mmad_speed [m k n]`.

use half::bf16;
use kc_runtime::host::mmad::{mmad_with, supported, Operand, Path};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("m k n")).collect();
    let shapes = match args[..] {
        [m, k, n] => vec![(m, k, n)],
        _ => vec![(128, 256, 128), (256, 256, 256), (128, 512, 256), (64, 256, 64), (32, 64, 32), (17, 100, 130)],
    };
    for (m, k, n) in shapes {
        let a: Vec<bf16> = (0..m * k).map(|i| bf16::from_f32(((i * 7 % 13) as f32 - 6.0) / 8.0)).collect();
        let b: Vec<bf16> = (0..k * n).map(|i| bf16::from_f32(((i * 5 % 11) as f32 - 5.0) / 8.0)).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let mut line = format!("m={m:3} k={k:3} n={n:3}:");
        for path in Path::ALL {
            if !supported(path) {
                line += &format!("  {path:?} n/a");
                continue;
            }
            let mut call = || mmad_with(path, Operand::Bf16(&a), k, Operand::Bf16(&b), n, &mut c, n, (m, k, n), true);
            call();
            // Rounds of ~20 ms, best of 20.
            let t = Instant::now();
            call();
            let once = t.elapsed().as_secs_f64().max(1e-7);
            let reps = ((0.02 / once) as usize).clamp(1, 100_000);
            let mut best = f64::INFINITY;
            for _ in 0..20 {
                let t = Instant::now();
                for _ in 0..reps {
                    call();
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            line += &format!("  {path:?} {:8.1} GFLOP/s ({:7.2} us)", flops / best / 1e9, best * 1e6);
        }
        println!("{line}");
    }
}
