//! Whether AVX-512 work overlaps the AMX matrix unit's work on one core: times blocks of 2 × 2 AMX tiles
//! (`tdpbf16ps`, operands in L1, the accumulators stored into a 128 KiB area as a 128 × 256 f32 score block
//! is) with and without an `exp`-shaped instruction mix (the 16 operations of the row routines' `exp16`, two
//! independent 16-lane chains a round) interleaved with their k steps, and the same work done one after
//! the other (as kc's host runtime runs the cube's `mmad` call, then the vector code's `exp` rows). Prints
//! ns per block, the best of 7 rounds of 20000 blocks (thread CPU time).
//! Run with `cargo run --release -p kc-runtime --example amx_overlap [steps ...]` (k steps of 32 per block:
//! 4 is attention's q·kᵀ at D = 128; default 4 and 16). Needs AMX (exits with a message otherwise).
//!
//! Session 17 (load 2–3): 4 k steps, dots and stores 187 ns a block, the `exp` mix alone (2 rounds a k
//! step) 67 ns, interleaved 184 ns, one after the other 200 ns; 16 k steps: 516, 260, 519 and 851 ns. The
//! `exp` work interleaved with the k steps hides behind the matrix unit entirely; run after the block, as
//! kc runs a cube's call and then the vector code's rows (each a whole block, far more than the core's
//! out-of-order window), it does not.
//!
//! Session 18 added two forms: the block's `exp` work after its last k step but before its stores, and the
//! previous block's stores, this block's k steps, then its `exp` work (the stores delayed by a block). At
//! load 1.3: 4 k steps 176 / 64 / 177 / 204 / 199 / 202 ns, 8 steps 273 / 128 / 271 / 367 / 380 / 381,
//! 16 steps 474 / 260 / 471 / 801 / 819 / 802 (the six forms in order). Neither new form hides anything:
//! it is not the tile stores that stop the overlap but the distance: work after a block's dots waits for
//! them, work between its k steps does not. A host `mmad` that ran its k steps from inside the vector
//! routines' loops (the cube's coroutine suspended in the call meanwhile) was built on this in session 18
//! and measured on attention: no gain (`docs/perf.md`).
//!
//! `run_mem`, the first four forms with attention's memory traffic (B streamed from a 1 MiB area in L2;
//! the `exp` work reading and writing 128 KiB areas), shows why (load 1.2): 4 k steps 161 / 63 / 193 / 202
//! ns, 8 steps 297 / 128 / 335 / 377. Interleaved, half of the `exp` work's time at 4 k steps (attention's
//! `q·kᵀ`) and a third at 8 (`p·v`) still adds to the matrix unit's; run one after the other, a third of it
//! is hidden already.

#[allow(dead_code)] // the shared helpers this example does not use
mod common;

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::common::{clock, THREAD_CPU};
    use std::arch::asm;

    #[repr(C, align(64))]
    struct Cfg([u8; 64]);

    /// Asks Linux for the tile state and loads palette 1 with eight 16 × 64-byte tiles.
    pub fn setup() -> bool {
        // The runtime's own check (CPUID, and the tile state permitted by the kernel).
        if !kc_runtime::host::mmad::supported(kc_runtime::host::mmad::Path::Amx) {
            return false;
        }
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the kernel clobbers rcx and r11.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64, in("rsi") 18i64,
                lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        if ret != 0 {
            return false;
        }
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        let cfg = Cfg(c);
        // SAFETY: a valid configuration; AMX is permitted.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg as *const Cfg, options(nostack, readonly)) };
        true
    }

    /// One k step of a 2 × 2 block: two A tiles (rows `stride` bytes apart), two B tiles, four dots.
    #[inline(always)]
    unsafe fn step(a: *const u8, b: *const u8, stride: usize) {
        // SAFETY: the caller's operands are 16 rows of 64 bytes each.
        unsafe {
            asm!(
                "tileloadd tmm4, [{a}+{st}*1]",
                "tileloadd tmm5, [{a2}+{st}*1]",
                "tileloaddt1 tmm6, [{b}+{c64}*1]",
                "tileloaddt1 tmm7, [{b2}+{c64}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a = in(reg) a, a2 = in(reg) a.add(16 * stride), st = in(reg) stride,
                b = in(reg) b, b2 = in(reg) b.add(8192), c64 = in(reg) 64usize,
                options(nostack));
        }
    }

    #[inline(always)]
    unsafe fn zero4() {
        // SAFETY: tile registers only.
        unsafe { asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)) };
    }

    /// A block's accumulators zeroed and its `steps` k steps (A panels from `a`, `stride` bytes a row; B from
    /// `b`).
    #[inline(always)]
    unsafe fn dots(a: *const u8, b: *const u8, steps: usize, stride: usize) {
        // SAFETY: the caller's: the panels hold `steps` k steps.
        unsafe {
            zero4();
            for s in 0..steps {
                step(a.add(s * 64), b.add(s * 1024), stride);
            }
        }
    }

    /// The four accumulators into `c` (row stride `ldc` bytes).
    #[inline(always)]
    unsafe fn store4(c: *mut u8, ldc: usize) {
        // SAFETY: the caller's: 32 rows of 128 bytes at `c`, `ldc` apart.
        unsafe {
            asm!(
                "tilestored [{c}+{l}*1], tmm0", "tilestored [{c1}+{l}*1], tmm1",
                "tilestored [{c2}+{l}*1], tmm2", "tilestored [{c3}+{l}*1], tmm3",
                c = in(reg) c, c1 = in(reg) c.add(64), c2 = in(reg) c.add(16 * ldc), c3 = in(reg) c.add(16 * ldc + 64),
                l = in(reg) ldc, options(nostack));
        }
    }

    /// One round of [`exp_mix`]: two independent 16-lane `exp16`-shaped sequences on `zmm10` and `zmm20`
    /// (results in `zmm19` and `zmm29`), as one template string.
    macro_rules! exp_round {
        () => {
            concat!(
                "vcmpps k1, zmm10, zmm11, 5\n",
                "vcmpps k2, zmm20, zmm11, 5\n",
                "vmaxps zmm12{{k1}}{{z}}, zmm11, zmm10\n",
                "vmaxps zmm22{{k2}}{{z}}, zmm11, zmm20\n",
                "vminps zmm12, zmm12, zmm13\n",
                "vminps zmm22, zmm22, zmm13\n",
                "vfmadd213ps zmm14, zmm12, zmm15\n",
                "vfmadd213ps zmm24, zmm22, zmm15\n",
                "vsubps zmm16, zmm14, zmm15\n",
                "vsubps zmm26, zmm24, zmm15\n",
                "vfmadd231ps zmm12, zmm16, zmm13\n",
                "vfmadd231ps zmm22, zmm26, zmm13\n",
                "vfmadd231ps zmm12, zmm16, zmm13\n",
                "vfmadd231ps zmm22, zmm26, zmm13\n",
                "vfmadd213ps zmm17, zmm12, zmm13\n",
                "vfmadd213ps zmm27, zmm22, zmm13\n",
                "vfmadd213ps zmm17, zmm12, zmm13\n",
                "vfmadd213ps zmm27, zmm22, zmm13\n",
                "vfmadd213ps zmm17, zmm12, zmm13\n",
                "vfmadd213ps zmm27, zmm22, zmm13\n",
                "vfmadd213ps zmm17, zmm12, zmm13\n",
                "vfmadd213ps zmm27, zmm22, zmm13\n",
                "vfmadd213ps zmm17, zmm12, zmm13\n",
                "vfmadd213ps zmm27, zmm22, zmm13\n",
                "vmulps zmm18, zmm12, zmm12\n",
                "vmulps zmm28, zmm22, zmm22\n",
                "vfmadd213ps zmm17, zmm18, zmm12\n",
                "vfmadd213ps zmm27, zmm28, zmm22\n",
                "vaddps zmm17, zmm17, zmm13\n",
                "vaddps zmm27, zmm27, zmm13\n",
                "vscalefps zmm19{{k1}}{{z}}, zmm17, zmm16\n",
                "vscalefps zmm29{{k2}}{{z}}, zmm27, zmm26",
            )
        };
    }

    /// `n` rounds of two independent 16-lane `exp16`-shaped sequences (compare into a mask, masked max,
    /// min, the range reduction's multiply-adds and subtraction, the degree-5 polynomial, `scalef`), on
    /// registers only.
    #[inline(always)]
    unsafe fn exp_mix(n: usize) {
        // SAFETY: registers only.
        unsafe {
            asm!(
                "2:",
                exp_round!(),
                "dec {n}", "jnz 2b",
                n = inout(reg) n => _,
                out("zmm12") _, out("zmm14") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                out("zmm22") _, out("zmm24") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _,
                out("k1") _, out("k2") _,
                options(nostack, nomem));
        }
    }

    /// [`exp_mix`]'s `n` rounds with their operands read from `src` and results written to `dst` (128
    /// bytes each a round, as an `exp` row routine streams a score row in and a probability row out).
    #[inline(always)]
    unsafe fn exp_mem(n: usize, src: *const u8, dst: *mut u8) {
        // SAFETY: the caller's: `n` rounds of 128 bytes at `src` and `dst`.
        unsafe {
            asm!(
                "2:",
                "vmovups zmm10, [{s}]", "vmovups zmm20, [{s}+64]",
                exp_round!(),
                "vmovups [{d}], zmm19", "vmovups [{d}+64], zmm29",
                "add {s}, 128", "add {d}, 128",
                "dec {n}", "jnz 2b",
                n = inout(reg) n => _, s = inout(reg) src => _, d = inout(reg) dst => _,
                out("zmm10") _, out("zmm12") _, out("zmm14") _, out("zmm16") _, out("zmm17") _, out("zmm18") _,
                out("zmm19") _, out("zmm20") _, out("zmm22") _, out("zmm24") _, out("zmm26") _, out("zmm27") _,
                out("zmm28") _, out("zmm29") _, out("k1") _, out("k2") _,
                options(nostack));
        }
    }

    /// The forms again with memory where attention has it: B panels streamed from a 1 MiB area (packed
    /// keys, in L2), and the `exp` work reading a 128 KiB score area and writing a 128 KiB one (the
    /// previous block's scores and their probabilities) instead of registers.
    pub fn run_mem(steps_list: &[usize]) {
        let a = aligned(64 * 1024);
        let b = aligned(1024 * 1024);
        for i in 0..32 * 1024 {
            // SAFETY: inside the allocation.
            unsafe { a.cast::<u16>().add(i).write(0x3f80) };
        }
        for i in 0..512 * 1024 {
            // SAFETY: inside the allocation.
            unsafe { b.cast::<u16>().add(i).write(0x3f80) };
        }
        let c = aligned(128 * 1024);
        let src = aligned(128 * 1024);
        let dst = aligned(128 * 1024);
        let forms = ["dots and stores (B in L2)", "exp rows alone (L2)", "interleaved", "one after the other"];
        for &steps in steps_list {
            let stride = steps * 64;
            // Bytes of B a block reads (two panels), and of the exp rows a block's work streams.
            let b_block = 2 * steps * 1024;
            let e_block = 2 * steps * 128;
            for (fi, form) in forms.iter().enumerate() {
                let ns = time_blocks(|blk| {
                    // SAFETY: every access lies inside the allocations above.
                    unsafe {
                        let cp = c.add((blk % 8) * 128 + (blk / 8 % 4) * 32 * 1024);
                        let bp = b.add(blk * b_block % (1024 * 1024 - b_block + 1) / 1024 * 1024);
                        let eo = blk * e_block % (128 * 1024 - e_block + 1) / 128 * 128;
                        let (sp, dp) = (src.add(eo), dst.add(eo));
                        match fi {
                            0 => {
                                dots(a, bp, steps, stride);
                                store4(cp, 1024);
                            }
                            1 => exp_mem(2 * steps, sp, dp),
                            2 => {
                                zero4();
                                for s in 0..steps {
                                    step(a.add(s * 64), bp.add(s * 1024), stride);
                                    exp_mem(2, sp.add(s * 256), dp.add(s * 256));
                                }
                                store4(cp, 1024);
                            }
                            _ => {
                                dots(a, bp, steps, stride);
                                store4(cp, 1024);
                                exp_mem(2 * steps, sp, dp);
                            }
                        }
                    }
                });
                println!("k steps {steps:2}, {form:26}: {ns:6.1} ns a block");
            }
        }
    }

    /// Blocks a round of [`time_blocks`].
    const BLOCKS: usize = 20000;

    /// The best of 7 rounds of `BLOCKS` calls of `block` (its argument the block's number), in ns a block of
    /// the thread's CPU time.
    fn time_blocks(mut block: impl FnMut(usize)) -> f64 {
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = clock(THREAD_CPU);
            for blk in 0..BLOCKS {
                block(blk);
            }
            best = best.min(clock(THREAD_CPU) - t);
        }
        best / BLOCKS as f64 * 1e9
    }

    /// 64-byte aligned zeroed bytes (leaked).
    fn aligned(bytes: usize) -> *mut u8 {
        let v = vec![0u8; bytes + 64].leak();
        let off = v.as_ptr().align_offset(64);
        v[off..].as_mut_ptr()
    }

    pub fn run(steps_list: &[usize]) {
        let a = aligned(64 * 1024);
        let b = aligned(32 * 1024);
        // bf16 1.0 in every operand element: no subnormals, no NaNs.
        for p in [a, b] {
            let n = if p == a { 32 * 1024 } else { 16 * 1024 };
            for i in 0..n {
                // SAFETY: inside the allocations.
                unsafe { p.cast::<u16>().add(i).write(0x3f80) };
            }
        }
        let c = aligned(128 * 1024);
        let forms = [
            "dots and stores",
            "exp mix alone",
            "interleaved",
            "one after the other",
            "exp before the stores",
            "store, next's dots, exp",
        ];
        for &steps in steps_list {
            let stride = steps * 64;
            for (fi, form) in forms.iter().enumerate() {
                let ns = time_blocks(|blk| {
                    // The block's 32 × 32 accumulators in a 128 × 256 f32 area (1 KiB rows).
                    // SAFETY: every access lies inside the allocations above.
                    unsafe {
                        let cp = c.add((blk % 8) * 128 + (blk / 8 % 4) * 32 * 1024);
                        match fi {
                            0 => {
                                dots(a, b, steps, stride);
                                store4(cp, 1024);
                            }
                            1 => exp_mix(2 * steps),
                            2 => {
                                zero4();
                                for s in 0..steps {
                                    step(a.add(s * 64), b.add(s * 1024), stride);
                                    exp_mix(2);
                                }
                                store4(cp, 1024);
                            }
                            3 => {
                                dots(a, b, steps, stride);
                                store4(cp, 1024);
                                exp_mix(2 * steps);
                            }
                            4 => {
                                dots(a, b, steps, stride);
                                exp_mix(2 * steps);
                                store4(cp, 1024);
                            }
                            _ => {
                                if blk > 0 {
                                    store4(cp, 1024);
                                }
                                dots(a, b, steps, stride);
                                exp_mix(2 * steps);
                            }
                        }
                    }
                });
                println!("k steps {steps:2}, {form:20}: {ns:6.1} ns a block");
            }
        }
    }
}

fn main() {
    let steps: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("k steps")).collect();
    let steps = if steps.is_empty() { vec![4, 16] } else { steps };
    #[cfg(target_arch = "x86_64")]
    {
        if amx::setup() {
            amx::run(&steps);
            amx::run_mem(&steps);
            return;
        }
    }
    let _ = steps;
    println!("amx_overlap: this host has no AMX (or the kernel does not permit it)");
}
