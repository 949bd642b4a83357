//! Times the host mmad as the MoE experts' grouped matmuls call it (`kernels/moe_experts.ker` on the host
//! tiling, 1 thread): `h`'s launch takes, per expert, its n-blocks of 128 columns of `F` and inside each its
//! row tiles of up to 256 rows, and per item 8 k steps of 256 of `M`, each two transposed-B mmads (`x·w1ᵀ`
//! and `x·w3ᵀ`, the weights `[E, F, M]` read in place); `ys`'s launch the same with one mmad of `h` by
//! `w2ᵀ` (`[E, M, F]`, 16 n-blocks of 128 of `M`, 4 k steps of 256 of `F`). Flags as the JIT passes them
//! (`b` and `a` do not change, `b` transposed), the caches cleared per launch as the executor does. No
//! epilogue: only the mmad calls are timed (thread CPU time and wall time; best and median of `ROUNDS`,
//! default 5). The operands live in huge pages, as `kc bench`'s copies of its inputs.
//!
//! - `OFFSETS=file.npy`: the experts' row offsets (`i32[E + 1]`, e.g. moe_permute's output on the
//!   benchmark's inputs); else 64 experts of 512 rows. Sizes: `E`, `M`, `F` (64, 2048, 1024).
//! - `WALK=h,ys` (default), or any of `h`, `ys`, `pack` (`h`'s weight windows packed alone: one-row calls
//!   that keep nothing, so each packs its window; in GB/s of weights) and `read` (reference read rates of
//!   `h`'s weights: in address order, and window by window as the calls read them).
//! - `SAME=a`, `b` or `ab`: every call reads the first row tile's `a` / the first n-block of the first
//!   expert's weights (at its own k step): the calls' time with those operands in cache.
//! - `BK=512`: k steps of 512 instead of 256.
//!
//! Run with `cargo run --release -p kc-runtime --example moe_walk`; docs/perf.md ("MoE layer", session 13)
//! has its figures.

mod common;

use common::{clock, huge_zeroed, THREAD_CPU, WALL};
use kc_runtime::host::mmad::{clear_b_cache, kc_mmad};

/// `len` u16 in 2 MiB-aligned memory backed by huge pages (as `kc bench`'s copies of its inputs), filled
/// with small bf16 values.
fn huge(len: usize, seed: usize) -> &'static mut [u16] {
    let s: &mut [u16] = huge_zeroed(len);
    for (i, v) in s.iter_mut().enumerate() {
        *v = half::bf16::from_f32((((i + seed) * 7 % 13) as f32 - 6.0) / 16.0).to_bits();
    }
    s
}

fn offsets_from(path: &str, e: usize) -> Vec<usize> {
    let bytes = std::fs::read(path).expect("OFFSETS file");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data = &bytes[10 + hlen..];
    let offs: Vec<usize> =
        data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    assert_eq!(offs.len(), e + 1, "OFFSETS holds E + 1 offsets");
    offs
}

fn main() {
    let var = |v: &str, d: usize| std::env::var(v).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
    let (e, m, f) = (var("E", 64), var("M", 2048), var("F", 1024));
    let offs = match std::env::var("OFFSETS") {
        Ok(p) => offsets_from(&p, e),
        Err(_) => (0..=e).map(|i| i * 512).collect(),
    };
    let r = offs[e];
    let walks = std::env::var("WALK").unwrap_or_else(|_| "h,ys".into());
    let (bm, bn, bk) = (256, 128, var("BK", 256));
    let xs = huge(r * m, 1);
    let h = huge(r * f, 2);
    let w1 = huge(e * f * m, 3);
    let w3 = huge(e * f * m, 4);
    let w2 = huge(e * m * f, 5);
    let mut c = vec![0f32; 2 * bm * bn + 16];
    let off = c.as_ptr().align_offset(64);
    let c = &mut c[off..off + 2 * bm * bn];
    let rounds = var("ROUNDS", 5);
    // SAME=a / b / ab: every call reads the first row tile's `a` / the first expert's first n-block of
    // weights (at its k step): the routine's speed with those operands in cache.
    let same = std::env::var("SAME").unwrap_or_default();
    let (same_a, same_b) = (same.contains('a'), same.contains('b'));
    let mut sink = 0f32;
    for walk in walks.split(',') {
        if walk == "read" {
            read_rates(&[&*w1, &*w3], m);
            continue;
        }
        // `pack`: h's weight windows packed by calls of one row (not kept: each call packs its window).
        let pack_only = walk == "pack";
        // `a` (row stride K), K, N, the weights (one per matmul).
        let (a, kk, nn, ws): (&[u16], usize, usize, Vec<&[u16]>) = match walk {
            "h" | "pack" => (xs, m, f, vec![w1, w3]),
            "ys" => (h, f, m, vec![w2]),
            _ => panic!("WALK=h,ys,pack,read"),
        };
        let flops = 2.0 * (r * kk * nn * ws.len()) as f64;
        let (mut cpu, mut wall) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            clear_b_cache();
            let (t0c, t0w) = (clock(THREAD_CPU), clock(WALL));
            for ex in 0..e {
                let (lo, hi) = (offs[ex], offs[ex + 1]);
                for n0 in (0..nn).step_by(bn) {
                    for t0 in (lo..hi).step_by(bm) {
                        let rows = if pack_only { 1 } else { (hi - t0).min(bm) };
                        for k0 in (0..kk).step_by(bk) {
                            for (j, w) in ws.iter().enumerate() {
                                let flags = if pack_only { 8 } else { 2 | 4 | 8 | i64::from(k0 > 0) };
                                // SAFETY: the windows lie inside the buffers; c holds two bm × bn blocks.
                                unsafe {
                                    kc_mmad(
                                        a.as_ptr().add(if same_a { 0 } else { t0 * kk } + k0).cast(),
                                        1,
                                        kk as i64,
                                        w.as_ptr().add(if same_b { 0 } else { ex * nn * kk + n0 * kk } + k0).cast(),
                                        1,
                                        kk as i64,
                                        c.as_mut_ptr().add(j * bm * bn),
                                        bn as i64,
                                        rows as i64,
                                        bk.min(kk - k0) as i64,
                                        bn.min(nn - n0) as i64,
                                        flags,
                                    )
                                };
                            }
                        }
                        sink += c[0];
                        if pack_only {
                            break;
                        }
                    }
                }
            }
            cpu.push(clock(THREAD_CPU) - t0c);
            wall.push(clock(WALL) - t0w);
        }
        for t in [&mut cpu, &mut wall] {
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        if pack_only {
            let bytes = (e * nn * kk * 2 * ws.len()) as f64;
            println!(
                "pack: {:.0} MiB of weights, cpu best {:.1} ms median {:.1} ({:.2} GB/s)",
                bytes / (1 << 20) as f64,
                cpu[0] * 1e3,
                cpu[cpu.len() / 2] * 1e3,
                bytes / cpu[cpu.len() / 2] / 1e9
            );
            continue;
        }
        println!(
            "{walk}: R={r} cpu best {:.1} ms median {:.1} ({:.3} TFLOP/s); wall best {:.1} median {:.1} (sink {sink})",
            cpu[0] * 1e3,
            cpu[cpu.len() / 2] * 1e3,
            flops / cpu[cpu.len() / 2] / 1e12,
            wall[0] * 1e3,
            wall[wall.len() / 2] * 1e3,
        );
    }
}

/// Reference read rates of the weights (thread CPU time): all of them in address order, and in the order and
/// windows `h`'s calls read them (per expert and n-block of 128 rows, each k window of 256 of each matrix,
/// its rows one after another), with an XOR of the words as the work.
fn read_rates(ws: &[&[u16]], k: usize) {
    let bytes = ws.iter().map(|w| w.len() * 2).sum::<usize>() as f64;
    // XOR of the 64-bit words (vectorized: the loop is bound by the reads). The slices start on 64 bytes.
    let sum_words = |s: &[u16]| -> u64 {
        // SAFETY: any bits are a valid u64; `align_to` keeps only the aligned middle.
        let (_, mid, _) = unsafe { s.align_to::<u64>() };
        let mut acc = [0u64; 8];
        for ch in mid.chunks_exact(8) {
            for (a, v) in acc.iter_mut().zip(ch) {
                *a ^= v;
            }
        }
        acc.iter().fold(0, |x, y| x ^ y)
    };
    for order in ["sequential", "windows"] {
        let mut ts = Vec::new();
        let mut sink = 0u64;
        for _ in 0..3 {
            let t = clock(THREAD_CPU);
            if order == "sequential" {
                for w in ws {
                    sink = sink.wrapping_add(sum_words(w));
                }
            } else {
                let rows = ws[0].len() / k;
                for r0 in (0..rows).step_by(128) {
                    for k0 in (0..k).step_by(256) {
                        for w in ws {
                            for r in r0..r0 + 128 {
                                sink = sink.wrapping_add(sum_words(&w[r * k + k0..r * k + k0 + 256]));
                            }
                        }
                    }
                }
            }
            ts.push(clock(THREAD_CPU) - t);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("read {order}: cpu median {:.1} ms ({:.2} GB/s) (sink {sink})", ts[1] * 1e3, bytes / ts[1] / 1e9);
    }
}
