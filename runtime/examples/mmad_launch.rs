//! Times the host mmad as a host matmul launch calls it (`kc_runtime::host::mmad::kc_mmad`): `M × K × N` bf16
//! in GM, 256 × 256 blocks of C in an f32 scratch (64-byte aligned, as the executor's buffers), k windows of
//! 256 (`BK=512`: of 512, as the host tiling's; `BK=256,512`: both, in alternating launches) read in place
//! from GM with the "does not change" bits set (so the packed operands are kept for the launch), the caches
//! cleared per launch as the executor does. Prints the best and the median launch time (thread CPU time) of
//! `ROUNDS` (7) and their TFLOP/s (the C conversion to bf16 not included, unless `COPY=1`: each finished
//! block is then rounded into an `M × N` bf16 output inside the time). `CSLOTS=1,2`: consecutive blocks of C
//! in one area, or alternating between two (the tiling's two L0C slots), timed alternately.
//! Run with `cargo run --release -p kc-runtime --example mmad_launch [M K N]`.

mod common;

use common::{clock, huge_zeroed, THREAD_CPU};
use kc_runtime::host::mmad::{clear_b_cache, kc_mmad};

/// This thread's CPU time in seconds.
fn cpu_time() -> f64 {
    clock(THREAD_CPU)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("M K N")).collect();
    let (m, k, n) = match args[..] {
        [m, k, n] => (m, k, n),
        _ => (2048, 2048, 2048),
    };
    let a: Vec<u16> = (0..m * k).map(|i| half::bf16::from_f32(((i * 7 % 13) as f32 - 6.0) / 8.0).to_bits()).collect();
    let b: Vec<u16> = (0..k * n).map(|i| half::bf16::from_f32(((i * 5 % 11) as f32 - 5.0) / 8.0).to_bits()).collect();
    let blk = |v: &str, d: usize| std::env::var(v).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
    let (bm, bn) = (blk("BM", 256), blk("BN", 256));
    // 64-byte aligned, as the executor's buffers (a `Vec` of this size starts 16 bytes into a page, and every
    // tile row of C then straddles two lines).
    // CSLOTS=2: consecutive blocks of C alternate between two areas (the tiling's two L0C slots).
    let cslots_list: Vec<usize> = std::env::var("CSLOTS")
        .ok()
        .map(|v| v.split(',').map(|x| x.parse::<usize>().expect("CSLOTS=n,...").max(1)).collect())
        .unwrap_or_else(|| vec![1]);
    let cslots = *cslots_list.iter().max().expect("a slot count");
    // COPY=1: each finished block is rounded to bf16 into an M × N output (the FixPipe copy), in the time.
    let copy_out = std::env::var("COPY").is_ok_and(|v| v == "1");
    let mut out = vec![0u16; if copy_out { m * n } else { 0 }];
    let mut c_vec = vec![0f32; bm * bn * cslots + 16];
    let c_off = c_vec.as_ptr().align_offset(64);
    // HUGEC=1: C in a 2 MiB-aligned buffer backed by a huge page (as the executor's scratch is not).
    let huge_c = std::env::var("HUGEC").is_ok();
    let c: &mut [f32] =
        if huge_c { huge_zeroed(bm * bn * cslots) } else { &mut c_vec[c_off..c_off + bm * bn * cslots] };
    // SAME=1: every block reads the first column window of B (kept packed: the kernel's speed in cache).
    let same_env = std::env::var("SAME").unwrap_or_default();
    let same = same_env.contains('b');
    let same_a = same_env.contains('a');
    // KEEP: the "does not change" bits to pass (6: a and b, 2: b only, 4: a only, 0: none).
    let keep: i64 = std::env::var("KEEP").ok().and_then(|s| s.parse().ok()).unwrap_or(6) | 1;
    // COLS=1: the blocks column by column (consecutive blocks share their B panel, as a host launch's core
    // takes them when its blocks run down a column); else row by row (consecutive blocks share A).
    let cols_first = std::env::var("COLS").is_ok_and(|v| v == "1");
    let order: Vec<(usize, usize)> = if cols_first {
        (0..n).step_by(bn).flat_map(|n0| (0..m).step_by(bm).map(move |m0| (m0, n0))).collect()
    } else {
        (0..m).step_by(bm).flat_map(|m0| (0..n).step_by(bn).map(move |n0| (m0, n0))).collect()
    };
    let mut sink = 0f32;
    // BK=256,512: the k windows of the calls; several sizes are timed in alternating launches.
    let bks: Vec<usize> = std::env::var("BK")
        .ok()
        .map(|v| v.split(',').map(|x| x.parse().expect("BK=size,...")).collect())
        .unwrap_or_else(|| vec![256]);
    // Every (k window, C slots) pair, timed in alternating launches.
    let variants: Vec<(usize, usize)> = bks.iter().flat_map(|&b| cslots_list.iter().map(move |&s| (b, s))).collect();
    let rounds = blk("ROUNDS", 7);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for r in 0..rounds * variants.len() {
        let vi = r % variants.len();
        let (bk, cslots) = variants[vi];
        clear_b_cache();
        let t = cpu_time();
        for (bi, &(m0, n0)) in order.iter().enumerate() {
            let c = &mut c[(bi % cslots) * bm * bn..][..bm * bn];
            {
                let (rows, cols) = ((m - m0).min(bm), (n - n0).min(bn));
                for k0 in (0..k).step_by(bk) {
                    let kl = (k - k0).min(bk);
                    let flags = (if k0 > 0 { 7 } else { 6 }) & keep;
                    // SAFETY: the windows lie inside the vectors.
                    unsafe {
                        kc_mmad(
                            a.as_ptr().add(if same_a { 0 } else { m0 * k + k0 }).cast(),
                            1,
                            k as i64,
                            b.as_ptr().add(k0 * n + if same { 0 } else { n0 }).cast(),
                            1,
                            n as i64,
                            c.as_mut_ptr(),
                            bn as i64,
                            rows as i64,
                            kl as i64,
                            cols as i64,
                            flags,
                        )
                    };
                }
                sink += c[0];
                if copy_out {
                    for i in 0..rows {
                        let (src, dst) = (&c[i * bn..i * bn + cols], &mut out[(m0 + i) * n + n0..][..cols]);
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = (s.to_bits() >> 16) as u16;
                        }
                    }
                }
            }
        }
        times[vi].push(cpu_time() - t);
    }
    let flops = 2.0 * (m * n * k) as f64;
    for (v, t) in variants.iter().zip(&mut times) {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (best, med) = (t[0], t[t.len() / 2]);
        println!(
            "M={m} K={k} N={n} (BK, CSLOTS)={v:?}: best {:.2} ms median {:.2} ({:.3} / {:.3} TFLOP/s) (sink {sink})",
            best * 1e3,
            med * 1e3,
            flops / best / 1e12,
            flops / med / 1e12
        );
    }
}
