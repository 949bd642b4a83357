//! Row-wise float routines for JIT-compiled vector code: `exp` over a run of `f32`s in place, whole rows of
//! the vector statements `exp(x - s)` (with the row's sum) and `x op s` (`s` a per-row value), and the
//! reductions of a row (sum, max, min) to one `f32`.
//!
//! Cranelift emits 128-bit vectors only; these routines are plain Rust loops compiled a second time for
//! AVX-512 (chosen at run time), so the compiler vectorizes them 16 lanes wide. They perform exactly the
//! operations of their portable versions (no FMA contraction, no reassociation: Rust does neither), so the
//! results do not depend on the host.
//!
//! - [`kc_rt_exp_f32`] computes the same operations, in the same order, as the JIT's inline `f32x4` `exp`
//!   (`kc_codegen::math`, Cephes `expf` with Cody–Waite reduction and two-step `2^n` scaling): the results are
//!   bit for bit those of the inline code (`codegen/tests/math.rs` checks it), so the error bound of the inline
//!   `exp` holds. [`kc_rt_silu_f32`] does the same for the inline `silu` (SwiGLU's gate), with its separate
//!   multiplications and additions.
//! - [`reduce_row`] folds a row into [`LANES`] (32) running lanes (element `c` into lane `c mod 32`, for the
//!   first `32·⌊n/32⌋` elements), then folds the lanes (in order for max and min, as a tree for the sum:
//!   `sum_lanes`), then the tail in order. Max and min propagate NaN
//!   (as the interpreter's `nan_max`/`nan_min`), so their result is the interpreter's whatever the order. It
//!   requests the lines 4 KiB ahead of its reads into L2 (the hardware prefetcher stops at page boundaries,
//!   and a row reduction is often the first touch of its tensor). Max and min are written with AVX-512
//!   intrinsics (`minmax_avx512`: `vmaxps` lanes and a NaN mask, the fold's bits; the compiler left the
//!   fold's NaN branch scalar, 4 to 7 times slower than the sum); the sum is the vectorized loop.
//! - [`kc_rt_row_exp`] computes one row of `dst = exp(src - s)` (or `exp(src)`) from an `f32` or bf16 row, and,
//!   for the JIT's fusion of such a statement with the row sum of its destination that follows it, that sum
//!   in [`reduce_row`]'s order: the bits of the two statements run one after the other, in one pass.
//! - [`kc_rt_row_scalar`] computes one row of `dst = src op s` or `s op src` (`+ - * /` in `f32`), from and to
//!   `f32` or bf16 (rounded as the JIT rounds): softmax's normalization, for one. On AVX-512 its division
//!   multiplies by the row's reciprocal and corrects once (the bits of the division, see `wide`), and a large
//!   GM destination is stored with non-temporal stores ([`ROW_DST_STREAM`]).
//!
//! - On AVX-512 hosts the row routines' `exp` ends in one `vscalefps` instead of the two-step scaling (the
//!   same bits, see `wide::exp16`), and with AVX512-BF16 their bf16 results are rounded by
//!   `vcvtne2ps2bf16` (the same bits: vectors with a subnormal lane, which it flushes, round the integer
//!   way; `wide::cvt32`).
//! - [`prefetch_rows`]: a row reduction's guess of the rows its loop reads next, which the next
//!   [`kc_rt_row_exp`] calls of the thread request into L2 while they compute (a hint).
//!
//! The row routines work by blocks of [`LANES`] elements, each loaded before it is stored, so a destination
//! may be its source (the same window); they are given no other overlap.

use kc_ir::graph::ReduceOp;

mod softmax;
pub use softmax::{
    kc_rt_softmax_begin, kc_rt_softmax_end, kc_rt_softmax_rows, softmax_rows_fast, SOFTMAX_CARRY, SOFTMAX_SRC_BF16,
    SOFTMAX_STREAM, SOFTMAX_WORDS,
};

const MAGIC32: f32 = 12582912.0;
#[allow(clippy::excessive_precision)]
const EXPF_P: [f32; 6] =
    [5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4];
#[allow(clippy::excessive_precision)]
const LN2_C1: f32 = 0.693359375;
#[allow(clippy::excessive_precision)]
const LN2_C2: f32 = -2.12194440e-4;

/// Arguments below this have `+0` for [`exp_f32`]: `x·log2(e)` rounds to `n ≤ -159`, and `p·2^n` with the
/// polynomial's `p < 1.5` is below half the smallest subnormal. The AVX-512 `exp` does not compute them
/// (`wide::exp16`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const EXP_ZERO_BELOW: f32 = -110.0;

/// `e^x` by the operations of the JIT's inline `exp` (see the module documentation).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = if x < -150.0 { -150.0 } else { x };
    let x = if 89.0 < x { 89.0 } else { x };
    // Fused multiply-adds (`mul_add`, one rounding each), as the inline code's `fma`s.
    let tm = x.mul_add(std::f32::consts::LOG2_E, MAGIC32);
    let nf = tm - MAGIC32;
    let ni = (tm.to_bits() as i32).wrapping_sub(MAGIC32.to_bits() as i32);
    let r = nf.mul_add(-LN2_C1, x);
    let r = nf.mul_add(-LN2_C2, r);
    let mut p = EXPF_P[5];
    for &c in EXPF_P[..5].iter().rev() {
        p = p.mul_add(r, c);
    }
    let r2 = r * r;
    let p = p.mul_add(r2, r);
    let p = p + 1.0;
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((n2.wrapping_add(127) << 23) as u32);
    (p * s1) * s2
}

/// `p[i] = f(p[i])` for `i < n` (nothing when `n ≤ 0`), `f` being [`exp_f32`] or, with `SILU`, [`silu_f32`]:
/// 16 lanes at a time on AVX-512 hosts ([`wide::exp16`], [`wide::silu16`]: the same bits).
///
/// # Safety
/// `p` points to `n` writable `f32`s.
unsafe fn in_place<const SILU: bool>(p: *mut f32, n: i64) {
    if n <= 0 {
        return;
    }
    // SAFETY: the caller passes `n` writable elements.
    let v = unsafe { std::slice::from_raw_parts_mut(p, n as usize) };
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected.
        unsafe { in_place_avx512::<SILU>(v) };
        return;
    }
    in_place_scalar::<SILU>(v)
}

#[inline(always)]
fn in_place_scalar<const SILU: bool>(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = if SILU { silu_f32(*x) } else { exp_f32(*x) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
fn in_place_avx512<const SILU: bool>(v: &mut [f32]) {
    let n = v.len();
    let p = v.as_mut_ptr();
    let mut i = 0;
    // SAFETY: `v` holds `n` elements; each block is read before it is written.
    unsafe {
        use std::arch::x86_64::*;
        while i + 16 <= n {
            let x = _mm512_loadu_ps(p.add(i));
            _mm512_storeu_ps(p.add(i), if SILU { wide::silu16(x) } else { wide::exp16(x) });
            i += 16;
        }
    }
    in_place_scalar::<SILU>(&mut v[i..])
}

/// The host has AVX512-BF16 and AVX512-DQ (with [`has_avx512`]'s features): `vcvtne2ps2bf16` rounds 32 lanes to bf16 in
/// one instruction, with [`bf16_bits`]'s bits except for subnormal inputs (it flushes them to zero: those
/// vectors take the integer rounding).
#[inline]
fn has_bf16_cvt() -> bool {
    static HAS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx512()
                && std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512dq")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    });
    *HAS
}

/// The host has AVX-512 (F, BW, VL) and FMA: the row routines' 16-lane paths. Detected once (every row
/// routine call asks; four feature tests a call were about 0.7% of attention's samples).
#[inline]
fn has_avx512() -> bool {
    static HAS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    });
    *HAS
}

/// `p[i] = e^p[i]` for `i < n` (nothing when `n ≤ 0`), with the operations of the JIT's inline `exp`.
///
/// # Safety
/// `p` points to `n` writable `f32`s.
pub unsafe extern "C" fn kc_rt_exp_f32(p: *mut f32, n: i64) {
    // SAFETY: forwarded from the caller.
    unsafe { in_place::<false>(p, n) }
}

/// `silu(x) = x/(1 + e^(−x))` by the operations of the JIT's inline `silu` (`kc_codegen::math`, `silu32`):
/// `e = e^(−|x|)` (the argument capped at −20 for `x > 20`) from the separate-operation `exp` parts
/// `(p, s1, s2)`, then `x/(1 + e)` for `x ≥ 0` and `((x·p)·s1)·s2 / (1 + e)` for `x < 0` (`x·e` below −150).
#[inline(always)]
pub fn silu_f32(x: f32) -> f32 {
    let na = -x.abs();
    let na = if x > 20.0 { -20.0 } else { na };
    let t = if na < -150.0 { -150.0 } else { na };
    let t = if 89.0 < t { 89.0 } else { t };
    // Separate multiplications and additions, as the inline code's `exp` parts.
    let tm = t * std::f32::consts::LOG2_E + MAGIC32;
    let nf = tm - MAGIC32;
    let ni = (tm.to_bits() as i32).wrapping_sub(MAGIC32.to_bits() as i32);
    let r = t - nf * LN2_C1;
    let r = r - nf * LN2_C2;
    let mut p = EXPF_P[5];
    for &c in EXPF_P[..5].iter().rev() {
        p = p * r + c;
    }
    let p = p * (r * r);
    let p = p + r;
    let p = p + 1.0;
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((n2.wrapping_add(127) << 23) as u32);
    let e = (p * s1) * s2;
    let d = 1.0 + e;
    let xp = ((x * p) * s1) * s2;
    let xe = if x < -150.0 { x * e } else { xp };
    let num = if x < 0.0 { xe } else { x };
    num / d
}

/// `p[i] = silu(p[i])` for `i < n` (nothing when `n ≤ 0`), with the operations of the JIT's inline `silu`
/// ([`silu_f32`]; 16 lanes at a time on AVX-512 hosts, the same bits).
///
/// # Safety
/// `p` points to `n` writable `f32`s.
pub unsafe extern "C" fn kc_rt_silu_f32(p: *mut f32, n: i64) {
    // SAFETY: forwarded from the caller.
    unsafe { in_place::<true>(p, n) }
}

/// bf16 bits of an `f32`, rounded to nearest-even, NaN a quiet NaN: the bits of the JIT's inline rounding
/// and of `kc_rt_f32_to_bf16`.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1))) >> 16;
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    if nan {
        ((b >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

/// Element `i` of a row of `f32`s (`BF16` false) or of bf16 bits (true), as an `f32`.
#[inline(always)]
unsafe fn load<const BF16: bool>(p: *const u8, i: usize) -> f32 {
    // SAFETY: the caller's row holds element `i`.
    unsafe {
        if BF16 {
            f32::from_bits(u32::from(*(p as *const u16).add(i)) << 16)
        } else {
            *(p as *const f32).add(i)
        }
    }
}

/// `dst[i] = e^(src[i] - s)` (`SUB`) or `e^src[i]` for `i < n`, by blocks of [`LANES`] elements (each block is
/// loaded before it is stored, so `dst` may be `src`; a null `dst`: not stored); with `SUM`, also the sum of
/// the results in the order of [`reduce_row`] started from `acc` (the value the separate reduction would give).
#[inline(always)]
unsafe fn exp_row<const BF16: bool, const SUB: bool, const SUM: bool, const MUL: bool>(
    dst: *mut f32,
    src: *const u8,
    s: f32,
    k: f32,
    n: usize,
    acc: f32,
    bf: *mut u16,
) -> f32 {
    // `k·x - s` as the inline code computes it: the product rounded, then the difference.
    let arg = |x: f32| {
        let x = if MUL { k * x } else { x };
        if SUB {
            x - s
        } else {
            x
        }
    };
    let mut lanes = [0f32; LANES];
    let full = n - n % LANES;
    let mut i = 0;
    // SAFETY (all accesses): the caller passes `n` elements each.
    while i < full {
        let mut x = [0f32; LANES];
        for (j, v) in x.iter_mut().enumerate() {
            *v = unsafe { load::<BF16>(src, i + j) };
        }
        for j in 0..LANES {
            let e = exp_f32(arg(x[j]));
            x[j] = e;
            if SUM {
                lanes[j] += e;
            }
        }
        if !dst.is_null() {
            for (j, &v) in x.iter().enumerate() {
                unsafe { *dst.add(i + j) = v };
            }
        }
        if !bf.is_null() {
            for (j, &v) in x.iter().enumerate() {
                unsafe { *bf.add(i + j) = bf16_bits(v) };
            }
        }
        i += LANES;
    }
    let mut tail = 0f32;
    while i < n {
        let e = exp_f32(arg(unsafe { load::<BF16>(src, i) }));
        if !dst.is_null() {
            unsafe { *dst.add(i) = e };
        }
        if !bf.is_null() {
            unsafe { *bf.add(i) = bf16_bits(e) };
        }
        if SUM {
            tail += e;
        }
        i += 1;
    }
    (acc + sum_lanes(lanes)) + tail
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn exp_row_any(
    dst: *mut f32,
    src: *const u8,
    bf16: bool,
    sub: bool,
    sum: bool,
    mul: bool,
    s: f32,
    k: f32,
    n: usize,
    acc: f32,
    bf: *mut u16,
) -> f32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (bf16, sub, sum, mul) {
            (false, false, false, false) => exp_row::<false, false, false, false>(dst, src, s, k, n, acc, bf),
            (false, false, false, true) => exp_row::<false, false, false, true>(dst, src, s, k, n, acc, bf),
            (false, false, true, false) => exp_row::<false, false, true, false>(dst, src, s, k, n, acc, bf),
            (false, false, true, true) => exp_row::<false, false, true, true>(dst, src, s, k, n, acc, bf),
            (false, true, false, false) => exp_row::<false, true, false, false>(dst, src, s, k, n, acc, bf),
            (false, true, false, true) => exp_row::<false, true, false, true>(dst, src, s, k, n, acc, bf),
            (false, true, true, false) => exp_row::<false, true, true, false>(dst, src, s, k, n, acc, bf),
            (false, true, true, true) => exp_row::<false, true, true, true>(dst, src, s, k, n, acc, bf),
            (true, false, false, false) => exp_row::<true, false, false, false>(dst, src, s, k, n, acc, bf),
            (true, false, false, true) => exp_row::<true, false, false, true>(dst, src, s, k, n, acc, bf),
            (true, false, true, false) => exp_row::<true, false, true, false>(dst, src, s, k, n, acc, bf),
            (true, false, true, true) => exp_row::<true, false, true, true>(dst, src, s, k, n, acc, bf),
            (true, true, false, false) => exp_row::<true, true, false, false>(dst, src, s, k, n, acc, bf),
            (true, true, false, true) => exp_row::<true, true, false, true>(dst, src, s, k, n, acc, bf),
            (true, true, true, false) => exp_row::<true, true, true, false>(dst, src, s, k, n, acc, bf),
            (true, true, true, true) => exp_row::<true, true, true, true>(dst, src, s, k, n, acc, bf),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn exp_row_avx512(
    dst: *mut f32,
    src: *const u8,
    bf16: bool,
    sub: bool,
    sum: bool,
    mul: bool,
    s: f32,
    k: f32,
    n: usize,
    acc: f32,
    bf: *mut u16,
) -> f32 {
    let cvt = has_bf16_cvt();
    macro_rules! go {
        ($($b:literal $u:literal $s:literal $m:literal),*) => {
            match (bf16, sub, sum, mul) {
                $(($b, $u, $s, $m) => if cvt {
                    // SAFETY: forwarded from the caller; AVX512-BF16 was detected.
                    unsafe { wide::exp_row_cvt::<$b, $u, $s, $m>(dst, src, s, k, n, acc, bf) }
                } else {
                    // SAFETY: forwarded from the caller; the features were detected.
                    unsafe { wide::exp_row::<$b, $u, $s, $m>(dst, src, s, k, n, acc, bf) }
                },)*
            }
        };
    }
    go!(false false false false, false false false true, false false true false, false false true true,
        false true false false, false true false true, false true true false, false true true true,
        true false false false, true false false true, true false true false, true false true true,
        true true false false, true true false true, true true true false, true true true true)
}

thread_local! {
    /// Rows to request into the cache while a later row routine computes: `(address, bytes per row, bytes
    /// from row to row, rows)` (see [`prefetch_rows`]).
    static PENDING: std::cell::Cell<(usize, usize, usize, usize)> = const { std::cell::Cell::new((0, 0, 0, 0)) };
}

/// Asks the row `exp` routines that run next on this thread to request `rows` rows of `bytes` bytes, from
/// `at` and `stride` bytes apart, into L2: one row per call, one line per 32-element block, spread over
/// the arithmetic. A row reduction calls it with the window its site will likely read next (a loop over
/// row tiles: softmax's and cross-entropy's maxima, each a first touch of its rows from DRAM), so that the
/// read from memory overlaps the `exp`s instead of stalling the next maximum. A hint only: a prefetch does
/// not fault and changes no result, so a wrong guess (the end of a loop, freed memory) costs bandwidth only.
pub fn prefetch_rows(at: usize, bytes: usize, stride: usize, rows: usize) {
    PENDING.with(|p| p.set((at, bytes, stride, rows)));
}

/// The next pending row to request (address and lines), if any.
#[inline]
fn pending_row() -> (usize, usize) {
    PENDING.with(|p| {
        let (at, bytes, stride, rows) = p.get();
        if rows == 0 {
            return (0, 0);
        }
        p.set((at.wrapping_add(stride), bytes, stride, rows - 1));
        (at, bytes.div_ceil(64))
    })
}

thread_local! {
    /// This thread made non-temporal stores that no fence has ordered yet (see [`fence_streams`]).
    static STREAMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records that this thread made non-temporal stores (outside the row routines: the JIT's streaming
/// copies), for [`fence_streams`] to order.
pub(crate) fn note_streams() {
    STREAMED.with(|s| s.set(true));
}

/// Orders the thread's non-temporal stores ([`ROW_DST_STREAM`]) before its later stores: the row routines
/// leave them unfenced, as the thread itself reads them back in program order anyway, and a fence after
/// each row drained the write-combining buffers to memory 8192 times a softmax call, each time with
/// nothing else in flight. Whoever hands the thread's results to another thread calls this first (the
/// JIT's launch, at the end of each worker's share). Cheap when the thread made no such stores.
pub fn fence_streams() {
    if STREAMED.with(|s| s.replace(false)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `sfence` has no operands; SSE is part of x86-64.
        unsafe {
            std::arch::x86_64::_mm_sfence()
        };
    }
}

/// Flags of [`kc_rt_row_exp`] and [`kc_rt_row_scalar`]: the source row is bf16 (otherwise `f32`).
pub const ROW_SRC_BF16: i64 = 1;
/// [`kc_rt_row_exp`]: subtract `s` before the `exp`.
pub const ROW_EXP_SUB: i64 = 2;
/// [`kc_rt_row_exp`]: add the row's sum to `*sum` (otherwise it replaces it).
pub const ROW_EXP_ACC: i64 = 4;
/// [`kc_rt_row_exp`]: multiply by `k` first (`exp(k·x - s)`).
pub const ROW_EXP_MUL: i64 = 8;
/// [`kc_rt_row_scalar`]: the destination row is bf16 (otherwise `f32`).
pub const ROW_DST_BF16: i64 = 2;
/// [`kc_rt_row_scalar`]: the operation is `s op x` (otherwise `x op s`).
pub const ROW_SWAP: i64 = 4;
/// [`kc_rt_row_scalar`]: the operation, `(flags >> ROW_OP_SHIFT) & 3`: add, sub, mul, div.
pub const ROW_OP_SHIFT: i64 = 3;
/// [`kc_rt_row_scalar`]: the destination is a large tensor in global memory that the row's stores should not
/// pull into the caches: non-temporal stores where the host has them (a hint: the results are the same),
/// not fenced: before another thread reads the row, this thread calls [`fence_streams`].
pub const ROW_DST_STREAM: i64 = 32;
/// [`kc_rt_row_axpy`]: the sum is `add + product` (otherwise `product + add`): the same value, the order
/// deciding only which payload a sum of two NaNs keeps, as in the JIT's inline code.
pub const ROW_ADD_FIRST: i64 = 64;

/// One row of a vector statement `dst = exp(src - s)` (or `exp(src)`, or either with `k·src` for `src`:
/// [`ROW_EXP_MUL`]), `f32` results from an `f32` or bf16 row, with the operations of the JIT's inline code
/// (the same bits): the product and the subtraction in `f32`, each rounded, then
/// [`exp_f32`]. When `sum` is not null, the statement is followed by the sum of `dst`'s row into `*sum`,
/// which this call computes too, in the order (and so with the bits) of [`reduce_row`]: from `*sum`
/// ([`ROW_EXP_ACC`]) or from 0. `n ≤ 0`: no elements (the sum is still written).
///
/// A null `dst`: the results are not stored (the sum, and [`kc_rt_row_exp_bf`]'s bf16 row, are computed all
/// the same): the JIT passes it for a row that no statement reads (`kc_codegen::lower::dead_exp_stores`).
///
/// # Safety
/// `src` and `dst` (unless null) point to `n` elements (they may be the same row, not otherwise overlapping);
/// `sum` is null or points to a writable `f32` outside both.
pub unsafe extern "C" fn kc_rt_row_exp(
    dst: *mut f32,
    src: *const u8,
    flags: i64,
    s: f32,
    k: f32,
    n: i64,
    sum: *mut f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe { kc_rt_row_exp_bf(dst, src, flags, s, k, n, sum, std::ptr::null_mut()) }
}

/// [`kc_rt_row_exp`], and when `bf` is not null, the bf16 bits of each result ([`bf16_bits`], the JIT's
/// rounding) into `bf[i]` too: the statement that casts the exp's destination to bf16 right after it
/// (attention's `p = e`), computed in the same pass.
///
/// # Safety
/// As [`kc_rt_row_exp`]; `bf` is null or points to `n` writable bf16s overlapping none of the others.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kc_rt_row_exp_bf(
    dst: *mut f32,
    src: *const u8,
    flags: i64,
    s: f32,
    k: f32,
    n: i64,
    sum: *mut f32,
    bf: *mut u16,
) {
    let n = n.max(0) as usize;
    let bf16 = flags & ROW_SRC_BF16 != 0;
    let sub = flags & ROW_EXP_SUB != 0;
    let mul = flags & ROW_EXP_MUL != 0;
    let want = !sum.is_null();
    // SAFETY: `sum` is valid when not null.
    let acc = if want && flags & ROW_EXP_ACC != 0 { unsafe { *sum } } else { 0.0 };
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected; the caller passes valid rows.
        let v = unsafe { exp_row_avx512(dst, src, bf16, sub, want, mul, s, k, n, acc, bf) };
        if want {
            // SAFETY: as above.
            unsafe { *sum = v };
        }
        return;
    }
    // SAFETY: the caller passes valid rows.
    let v = unsafe { exp_row_any(dst, src, bf16, sub, want, mul, s, k, n, acc, bf) };
    if want {
        // SAFETY: as above.
        unsafe { *sum = v };
    }
}

/// `dst[i] = f(src[i])` for `i < n`, by blocks of [`LANES`] (loaded before stored: `dst` may be `src`), into
/// `f32` or bf16 (rounded by [`bf16_bits`]).
#[inline(always)]
unsafe fn map_row<const SBF: bool, const DBF: bool>(dst: *mut u8, src: *const u8, n: usize, f: impl Fn(f32) -> f32) {
    let store = |i: usize, v: f32| {
        // SAFETY: the caller passes `n` elements.
        unsafe {
            if DBF {
                *(dst as *mut u16).add(i) = bf16_bits(v);
            } else {
                *(dst as *mut f32).add(i) = v;
            }
        }
    };
    let full = n - n % LANES;
    let mut i = 0;
    // SAFETY (all loads): the caller passes `n` elements.
    while i < full {
        let mut x = [0f32; LANES];
        for (j, v) in x.iter_mut().enumerate() {
            *v = f(unsafe { load::<SBF>(src, i + j) });
        }
        for (j, &v) in x.iter().enumerate() {
            store(i + j, v);
        }
        i += LANES;
    }
    while i < n {
        store(i, f(unsafe { load::<SBF>(src, i) }));
        i += 1;
    }
}

#[inline(always)]
unsafe fn scalar_row_dt<const SBF: bool, const DBF: bool>(
    dst: *mut u8,
    src: *const u8,
    op: i64,
    swap: bool,
    s: f32,
    n: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match (op, swap) {
            (0, false) => map_row::<SBF, DBF>(dst, src, n, |x| x + s),
            (0, true) => map_row::<SBF, DBF>(dst, src, n, |x| s + x),
            (1, false) => map_row::<SBF, DBF>(dst, src, n, |x| x - s),
            (1, true) => map_row::<SBF, DBF>(dst, src, n, |x| s - x),
            (2, false) => map_row::<SBF, DBF>(dst, src, n, |x| x * s),
            (2, true) => map_row::<SBF, DBF>(dst, src, n, |x| s * x),
            (_, false) => map_row::<SBF, DBF>(dst, src, n, |x| x / s),
            (_, true) => map_row::<SBF, DBF>(dst, src, n, |x| s / x),
        }
    }
}

#[inline(always)]
unsafe fn scalar_row_any(dst: *mut u8, src: *const u8, flags: i64, s: f32, n: usize) {
    let op = (flags >> ROW_OP_SHIFT) & 3;
    let swap = flags & ROW_SWAP != 0;
    // SAFETY: forwarded from the caller.
    unsafe {
        match (flags & ROW_SRC_BF16 != 0, flags & ROW_DST_BF16 != 0) {
            (false, false) => scalar_row_dt::<false, false>(dst, src, op, swap, s, n),
            (false, true) => scalar_row_dt::<false, true>(dst, src, op, swap, s, n),
            (true, false) => scalar_row_dt::<true, false>(dst, src, op, swap, s, n),
            (true, true) => scalar_row_dt::<true, true>(dst, src, op, swap, s, n),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn scalar_row_avx512(dst: *mut u8, src: *const u8, flags: i64, s: f32, n: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if flags & ROW_SWAP == 0 {
            let op = (flags >> ROW_OP_SHIFT) & 3;
            let stream = flags & ROW_DST_STREAM != 0;
            match (flags & ROW_SRC_BF16 != 0, flags & ROW_DST_BF16 != 0) {
                (false, false) => return wide::scalar_row::<false, false>(dst, src, op, s, n, stream),
                (false, true) if has_bf16_cvt() => return wide::scalar_row_cvt::<false>(dst, src, op, s, n, stream),
                (false, true) => return wide::scalar_row::<false, true>(dst, src, op, s, n, stream),
                (true, false) => return wide::scalar_row::<true, false>(dst, src, op, s, n, stream),
                (true, true) if has_bf16_cvt() => return wide::scalar_row_cvt::<true>(dst, src, op, s, n, stream),
                (true, true) => return wide::scalar_row::<true, true>(dst, src, op, s, n, stream),
            }
        }
        scalar_row_any(dst, src, flags, s, n)
    }
}

/// `x op s` rows with AVX-512 intrinsics (see [`kc_rt_row_scalar`]): the division by multiplying by the
/// reciprocal and one correction step, and, on request, non-temporal stores.
///
/// The division: with `r = 1/s` rounded to nearest (one division per row), `q = x·r` rounded is within 1 ulp
/// of `x/s`, the remainder `x - s·q` is exact in a fused multiply-add, and `q + rem·r` rounded (a second
/// one) is `x/s` correctly rounded — Markstein's theorem, which holds when nothing under- or overflows. So
/// the path is taken only for `2^-60 ≤ |s| ≤ 2^60` (per row) and for lanes with `2^-60 ≤ |x| ≤ 2^60`
/// (finite, not zero, not subnormal: the quotient and the remainder stay normal); a vector with any other
/// lane divides those lanes. The same bits as `x / s`, at the cost of three multiply-adds instead of a
/// division (`vdivps` on 16 lanes: about 10 cycles of throughput, which bound softmax's last pass).
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// `2^-60` and `2^60` as bits: the range of `|s|` and `|x|` where the reciprocal division is exact.
    pub(super) const SAFE_LO: i32 = 67 << 23;
    pub(super) const SAFE_HI: i32 = 187 << 23;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn load16<const SBF: bool>(p: *const u8, i: usize) -> __m512 {
        // SAFETY: the caller's row holds elements `i..i + 16`.
        unsafe {
            if SBF {
                let h = _mm256_loadu_si256(p.cast::<u16>().add(i).cast());
                widen16(_mm512_castsi256_si512(h), WIDEN_LO)
            } else {
                _mm512_loadu_ps(p.cast::<f32>().add(i))
            }
        }
    }

    /// Elements `i..i + 16` and `i + 16..i + 32` as [`load16`] gives them; bf16 rows in one 64-byte load.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn load32<const SBF: bool>(p: *const u8, i: usize) -> (__m512, __m512) {
        // SAFETY: the caller's row holds elements `i..i + 32`.
        unsafe {
            if SBF {
                let h = _mm512_loadu_si512(p.cast::<u16>().add(i).cast());
                (widen16(h, WIDEN_LO), widen16(h, WIDEN_HI))
            } else {
                (load16::<false>(p, i), load16::<false>(p, i + 16))
            }
        }
    }

    /// Word `j` of a 512-bit vector to word `2j + 1` (`WIDEN_LO`, for `j < 16`), and word `16 + j` to word
    /// `2j + 1` (`WIDEN_HI`): [`widen16`]'s indices.
    const WIDEN_LO: [u16; 32] = {
        let mut ix = [0u16; 32];
        let mut k = 0;
        while k < 32 {
            ix[k] = (k / 2) as u16;
            k += 1;
        }
        ix
    };
    const WIDEN_HI: [u16; 32] = {
        let mut ix = [0u16; 32];
        let mut k = 0;
        while k < 32 {
            ix[k] = 16 + (k / 2) as u16;
            k += 1;
        }
        ix
    };

    /// 16 bf16 words of `h` (the low or the high half, by `ix`: [`WIDEN_LO`] or [`WIDEN_HI`]) as `f32`: each
    /// word into the upper half of its lane, the lower half zero (exact). One `vpermw` with a zeroing mask,
    /// where `vpmovzxwd` and `vpslld` take two vector instructions (`exp`'s rows are bound by the vector
    /// ports, not by memory). Written in `asm!`: LLVM turns the intrinsic's zeroing mask back into a
    /// separate `vpandq`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn widen16(h: __m512i, ix: [u16; 32]) -> __m512 {
        // SAFETY: `ix` holds 32 words: 64 bytes.
        let ix = unsafe { _mm512_loadu_si512(ix.as_ptr().cast()) };
        let out: __m512i;
        // SAFETY: register operands only; AVX512-BW is enabled.
        unsafe {
            std::arch::asm!(
                "vpermw {out}{{{k}}}{{z}}, {ix}, {h}",
                out = out(zmm_reg) out,
                k = in(kreg) 0xAAAA_AAAAu32,
                ix = in(zmm_reg) ix,
                h = in(zmm_reg) h,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        _mm512_castsi512_ps(out)
    }

    /// [`super::bf16_bits`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn bf16x16(v: __m512) -> __m256i {
        let b = _mm512_castps_si512(v);
        let hi = _mm512_srli_epi32::<16>(b);
        let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)));
        let mag = _mm512_and_si512(b, _mm512_set1_epi32(0x7FFF_FFFF));
        let nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7F80_0000));
        let r = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
        _mm512_cvtepi32_epi16(r)
    }

    /// `x op s` on 16 lanes; `recip`: divide through `r` (see the module documentation). Also whether every
    /// lane is known normal: a division through `r` with every lane in the safe range, whose quotients lie
    /// in `[2^-120, 2^120]` (so [`cvt32`] need not look for subnormals).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn op16(x: __m512, op: i64, s: __m512, r: __m512, recip: bool) -> (__m512, bool) {
        match op {
            0 => (_mm512_add_ps(x, s), false),
            1 => (_mm512_sub_ps(x, s), false),
            2 => (_mm512_mul_ps(x, s), false),
            _ if recip => {
                let q0 = _mm512_mul_ps(x, r);
                let rem = _mm512_fnmadd_ps(q0, s, x);
                let q = _mm512_fmadd_ps(rem, r, q0);
                let mag = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFF_FFFF));
                let ok = _mm512_cmple_epu32_mask(
                    _mm512_sub_epi32(mag, _mm512_set1_epi32(SAFE_LO)),
                    _mm512_set1_epi32(SAFE_HI - SAFE_LO),
                );
                if ok == 0xFFFF {
                    (q, true)
                } else {
                    (_mm512_mask_div_ps(q, !ok, x, s), false)
                }
            }
            _ => (_mm512_div_ps(x, s), false),
        }
    }

    /// One element, as the portable code computes it.
    #[inline(always)]
    unsafe fn one<const SBF: bool, const DBF: bool>(dst: *mut u8, src: *const u8, op: i64, s: f32, i: usize) {
        // SAFETY: the caller's rows hold element `i`.
        unsafe {
            let x = super::load::<SBF>(src, i);
            let v = match op {
                0 => x + s,
                1 => x - s,
                2 => x * s,
                _ => x / s,
            };
            if DBF {
                *dst.cast::<u16>().add(i) = super::bf16_bits(v);
            } else {
                *dst.cast::<f32>().add(i) = v;
            }
        }
    }

    /// `dst[i] = src[i] op s` for `i < n`: elements one at a time up to a 64-byte boundary of `dst`, then
    /// blocks of 32 (loaded before stored, so `dst` may be `src`), stored with non-temporal stores when
    /// `stream` (not fenced: see [`super::fence_streams`]), then the tail.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn scalar_row<const SBF: bool, const DBF: bool>(
        dst: *mut u8,
        src: *const u8,
        op: i64,
        s: f32,
        n: usize,
        stream: bool,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { scalar_row_body::<SBF, DBF, false>(dst, src, op, s, n, stream) }
    }

    /// [`scalar_row`] into bf16, rounding with `vcvtne2ps2bf16` ([`cvt32`]).
    ///
    /// # Safety
    /// As [`scalar_row`]; the host has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    pub(super) unsafe fn scalar_row_cvt<const SBF: bool>(
        dst: *mut u8,
        src: *const u8,
        op: i64,
        s: f32,
        n: usize,
        stream: bool,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { scalar_row_body::<SBF, true, true>(dst, src, op, s, n, stream) }
    }

    /// [`super::exp_f32`] on 16 lanes, with the same operations up to the polynomial; the last step, `(p·2^n1)·2^n2`
    /// with `n1 + n2 = n` (two steps so that neither factor overflows), is `vscalefps(p, n)`, `p·2^n` rounded
    /// once. The bits are the same: `p` lies in [0.7, 1.5] and `n` in [-217, 129] (the argument is clamped to
    /// [-150, 89]), so `p·2^n1` with `|n1| ≤ 109` is a normal number, exact, and only the second product
    /// rounds, to the same correctly rounded `p·2^n` (overflowing or underflowing alike); a NaN argument
    /// gives `p`'s NaN in both. `n` is the float `tm - MAGIC`, equal to the integer the scalar code extracts
    /// from `tm`'s bits. 14 vector instructions instead of 23; tested against the scalar formula.
    ///
    /// Lanes below [`super::EXP_ZERO_BELOW`] (a causal mask's `-inf` among them) are `+0` without the
    /// `vscalefps`: they are computed from `0` and masked to zero, which is the formula's result for them
    /// (`p·2^n` with `n ≤ -159` rounds to `+0`, [`super::exp_f32`] too), because an underflowing `vscalefps`
    /// takes a microcode assist on Intel cores (about 60 times a normal one: a 16-lane `exp` of `-inf`s
    /// measured 69 ns instead of 1.1) and masked-off lanes do not. Lanes whose result is subnormal (-104 to
    /// -87) still take it: their bits need the instruction.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn exp16(x: __m512) -> __m512 {
        // Not below the threshold, or a NaN (an unordered compare is true): the lanes computed.
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(super::EXP_ZERO_BELOW));
        // The formula's clamps to [-150, 89] in one instruction: a kept lane is at least `EXP_ZERO_BELOW`
        // (above -150) or a NaN, which `max(-150, x)` (`x < -150 ? -150 : x`) leaves alone, so only
        // `min(89, x)` is left (`89 < x ? 89 : x`: a NaN `x`, the second operand, passes). The lanes not kept
        // are 0 (any argument that does not underflow).
        const { assert!(super::EXP_ZERO_BELOW > -150.0) };
        let x = _mm512_maskz_min_ps(keep, _mm512_set1_ps(89.0), x);
        let magic = _mm512_set1_ps(super::MAGIC32);
        let tm = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
        let nf = _mm512_sub_ps(tm, magic);
        let r = _mm512_fmadd_ps(nf, _mm512_set1_ps(-super::LN2_C1), x);
        let r = _mm512_fmadd_ps(nf, _mm512_set1_ps(-super::LN2_C2), r);
        let mut p = _mm512_set1_ps(super::EXPF_P[5]);
        for &c in super::EXPF_P[..5].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let p = _mm512_fmadd_ps(p, r2, r);
        let p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
        _mm512_maskz_scalef_ps(keep, p, nf)
    }

    /// [`super::silu_f32`] on 16 lanes: the same operations in the same order (separate multiplications and
    /// additions, the two-step scaling), so the same bits; the selects are mask blends of ordered compares,
    /// as the inline code's `bitselect`s of `fcmp`s (a NaN lane compares false everywhere).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn silu16(x: __m512) -> __m512 {
        let sign = _mm512_set1_epi32(i32::MIN);
        // `-|x|`: the sign bit set (a `fneg` of the `fabs`).
        let na = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), sign));
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(20.0));
        let na = _mm512_mask_blend_ps(big, na, _mm512_set1_ps(-20.0));
        // The clamps as in [`exp16`]: `t < -150 ? -150 : t`, then `89 < t ? 89 : t` (NaN passes).
        let t = _mm512_max_ps(_mm512_set1_ps(-150.0), na);
        let t = _mm512_min_ps(_mm512_set1_ps(89.0), t);
        let magic = _mm512_set1_ps(super::MAGIC32);
        let tm = _mm512_add_ps(_mm512_mul_ps(t, _mm512_set1_ps(std::f32::consts::LOG2_E)), magic);
        let nf = _mm512_sub_ps(tm, magic);
        let ni = _mm512_sub_epi32(_mm512_castps_si512(tm), _mm512_set1_epi32(super::MAGIC32.to_bits() as i32));
        let r = _mm512_sub_ps(t, _mm512_mul_ps(nf, _mm512_set1_ps(super::LN2_C1)));
        let r = _mm512_sub_ps(r, _mm512_mul_ps(nf, _mm512_set1_ps(super::LN2_C2)));
        let mut p = _mm512_set1_ps(super::EXPF_P[5]);
        for &c in super::EXPF_P[..5].iter().rev() {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let p = _mm512_mul_ps(p, _mm512_mul_ps(r, r));
        let p = _mm512_add_ps(p, r);
        let p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
        let n1 = _mm512_srai_epi32::<1>(ni);
        let n2 = _mm512_sub_epi32(ni, n1);
        let bias = _mm512_set1_epi32(127);
        let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        let e = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
        let d = _mm512_add_ps(_mm512_set1_ps(1.0), e);
        let xp = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(x, p), s1), s2);
        let far = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-150.0));
        let xe = _mm512_mask_blend_ps(far, xp, _mm512_mul_ps(x, e));
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let num = _mm512_mask_blend_ps(neg, x, xe);
        _mm512_div_ps(num, d)
    }

    /// [`super::kc_rt_row_silu_mul`] on AVX-512: [`silu16`] of `a`, times `b`, rounded to bf16 by
    /// [`bf16x16`] when `BF` (the bits of the portable loop); the tail as the portable code does it.
    ///
    /// # Safety
    /// As [`super::kc_rt_row_silu_mul`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn silu_mul_row<const BF: bool>(dst: *mut u8, a: *const f32, b: *const f32, n: usize) {
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`; both operands are loaded before the block is stored.
            unsafe {
                let p = _mm512_mul_ps(silu16(_mm512_loadu_ps(a.add(i))), _mm512_loadu_ps(b.add(i)));
                if BF {
                    _mm256_storeu_si256(dst.cast::<u16>().add(i).cast(), bf16x16(p));
                } else {
                    _mm512_storeu_ps(dst.cast::<f32>().add(i), p);
                }
            }
            i += 16;
        }
        // SAFETY: forwarded from the caller, from element `i` on.
        unsafe { super::silu_mul_scalar::<BF>(dst, a, b, i, n) };
    }

    /// [`super::kc_rt_row_axpy`] on AVX-512: `src` (`f32`, or bf16 widened by [`load16`]) times `s`, plus
    /// `add`, stored as `f32` or rounded by [`bf16x16`] (the bits of the portable loop), 16 lanes at a time;
    /// the tail as the portable code does it.
    ///
    /// # Safety
    /// As [`super::kc_rt_row_axpy`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn axpy_row<const SBF: bool, const DBF: bool>(
        dst: *mut u8,
        src: *const u8,
        add: *const f32,
        (swap, add_first): (bool, bool),
        s: f32,
        n: usize,
    ) {
        let sv = _mm512_set1_ps(s);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`; both operands are loaded before the block is stored.
            unsafe {
                let x = load16::<SBF>(src, i);
                let p = if swap { _mm512_mul_ps(sv, x) } else { _mm512_mul_ps(x, sv) };
                let a = _mm512_loadu_ps(add.add(i));
                let v = if add_first { _mm512_add_ps(a, p) } else { _mm512_add_ps(p, a) };
                if DBF {
                    _mm256_storeu_si256(dst.cast::<u16>().add(i).cast(), bf16x16(v));
                } else {
                    _mm512_storeu_ps(dst.cast::<f32>().add(i), v);
                }
            }
            i += 16;
        }
        // SAFETY: forwarded from the caller, from element `i` on.
        unsafe { super::axpy_scalar::<SBF, DBF>(dst, src, add, s, i, n) };
    }

    /// [`super::kc_rt_row_mask`] on AVX-512 for a row whose first `keep` columns are kept: `k · src` (or
    /// `src · k`, or `src`) 16 lanes at a time, the last block masked, then `fill`.
    ///
    /// # Safety
    /// As [`super::kc_rt_row_mask`]; `keep <= n`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn mask_row(
        dst: *mut f32,
        src: *const f32,
        mul: bool,
        swap: bool,
        k: f32,
        fill: f32,
        keep: usize,
        n: usize,
    ) {
        let (kv, fv) = (_mm512_set1_ps(k), _mm512_set1_ps(fill));
        let mut c = 0;
        // SAFETY (all accesses): elements below `n` (masked lanes are neither read nor written); each block is
        // loaded before it is stored.
        unsafe {
            while c < keep {
                let m: __mmask16 = if keep - c >= 16 { 0xFFFF } else { (1u16 << (keep - c)) - 1 };
                let x = _mm512_maskz_loadu_ps(m, src.add(c));
                let v = if !mul {
                    x
                } else if swap {
                    _mm512_mul_ps(x, kv)
                } else {
                    _mm512_mul_ps(kv, x)
                };
                _mm512_mask_storeu_ps(dst.add(c), m, v);
                c += 16;
            }
            let mut c = keep;
            while c < n {
                let m: __mmask16 = if n - c >= 16 { 0xFFFF } else { (1u16 << (n - c)) - 1 };
                _mm512_mask_storeu_ps(dst.add(c), m, fv);
                c += 16;
            }
        }
    }

    /// 32 lanes (`a` then `b`) rounded to bf16 as [`bf16x16`] does: `vcvtne2ps2bf16` (round to nearest even,
    /// a NaN truncated with its quiet bit set: the same bits) unless a lane is subnormal, which the
    /// instruction flushes to zero; such a pair of vectors is rounded by [`bf16x16`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    fn cvt32(a: __m512, b: __m512) -> __m512i {
        // fpclass bit 5: a denormal.
        let sub = _mm512_fpclass_ps_mask::<0x20>(a) | _mm512_fpclass_ps_mask::<0x20>(b);
        if sub == 0 {
            // The first operand gives the upper 16 lanes.
            unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a)) }
        } else {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(bf16x16(a)), bf16x16(b))
        }
    }

    /// `x / s` on 32 lanes (`a`, then `b`) through the reciprocal `r`, when the exponents `ea`, `eb` of each
    /// pair of lanes (lane `j` of `a` and of `b`) have `ea² + eb² ≤ 59²`, so both lie in [-59, 59]
    /// (`2^-59 ≤ |x| < 2^60`, inside [`op16`]'s range; `s`'s is the caller's). One check for the block:
    /// `vgetexpps` of each vector, a multiply and a multiply-add (exact: integers below 2^17), a compare;
    /// a NaN, a zero, an infinity or a subnormal in a lane fails it (a NaN or infinite exponent, or one
    /// below -126). [`op16`] takes three instructions and a `kortest` a vector. `None`: the check failed,
    /// [`op16`] divides the block. The quotients lie in `[2^-119, 2^119]`, normal.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) fn div32(a: __m512, b: __m512, s: __m512, r: __m512) -> Option<(__m512, __m512)> {
        let (ea, eb) = (_mm512_getexp_ps(a), _mm512_getexp_ps(b));
        let e = _mm512_fmadd_ps(eb, eb, _mm512_mul_ps(ea, ea));
        if _mm512_cmp_ps_mask::<_CMP_LE_OQ>(e, _mm512_set1_ps(59.0 * 59.0)) != 0xFFFF {
            return None;
        }
        let q = |x: __m512| {
            let q0 = _mm512_mul_ps(x, r);
            _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, s, x), r, q0)
        };
        Some((q(a), q(b)))
    }

    /// [`cvt32`] of lanes known to hold no subnormal: `vcvtne2ps2bf16` alone.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    pub(super) fn cvt32_normal(a: __m512, b: __m512) -> __m512i {
        // SAFETY: both types are 64 bytes of plain bits. The first operand gives the upper 16 lanes.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a)) }
    }

    /// [`super::exp_row`] with intrinsics: blocks of 32 through [`exp16`] (both vectors loaded before either
    /// is stored), the sum in two 16-lane vectors that are [`super::LANES`]' lanes in order, the tail and the
    /// lanes' fold as the portable code does them.
    ///
    /// # Safety
    /// As [`super::kc_rt_row_exp_bf`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    pub(super) unsafe fn exp_row<const SBF: bool, const SUB: bool, const SUM: bool, const MUL: bool>(
        dst: *mut f32,
        src: *const u8,
        s: f32,
        k: f32,
        n: usize,
        acc: f32,
        bf: *mut u16,
    ) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { exp_row_body::<SBF, SUB, SUM, MUL, false>(dst, src, s, k, n, acc, bf) }
    }

    /// [`exp_row`], the `bf` row rounded by [`cvt32`].
    ///
    /// # Safety
    /// As [`super::kc_rt_row_exp_bf`]; the host has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    pub(super) unsafe fn exp_row_cvt<const SBF: bool, const SUB: bool, const SUM: bool, const MUL: bool>(
        dst: *mut f32,
        src: *const u8,
        s: f32,
        k: f32,
        n: usize,
        acc: f32,
        bf: *mut u16,
    ) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { exp_row_body::<SBF, SUB, SUM, MUL, true>(dst, src, s, k, n, acc, bf) }
    }

    #[inline(always)]
    unsafe fn exp_row_body<const SBF: bool, const SUB: bool, const SUM: bool, const MUL: bool, const CVT: bool>(
        dst: *mut f32,
        src: *const u8,
        s: f32,
        k: f32,
        n: usize,
        acc: f32,
        bf: *mut u16,
    ) -> f32 {
        // SAFETY (all accesses): the caller passes `n` elements each, `bf` too when not null; the intrinsics'
        // features are those of the two callers (this body is inlined into each).
        unsafe {
            let (sv, kv) = (_mm512_set1_ps(s), _mm512_set1_ps(k));
            let arg = |x: __m512| {
                let x = if MUL { _mm512_mul_ps(kv, x) } else { x };
                if SUB {
                    _mm512_sub_ps(x, sv)
                } else {
                    x
                }
            };
            let (mut l0, mut l1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            // A row to request meanwhile (`super::prefetch_rows`): line `j` with block `j`, the rest after.
            let (pf, lines) = super::pending_row();
            // At most 64 lines past the row's blocks (a row routine shorter than the pending row).
            let mut lines = lines.min(n / 32 + 64);
            let mut pl = pf as *const i8;
            while i + 32 <= n {
                if lines > 0 {
                    // SAFETY: a prefetch has no architectural effect and does not fault.
                    _mm_prefetch::<_MM_HINT_T1>(pl);
                    pl = pl.wrapping_add(64);
                    lines -= 1;
                }
                let (a, b) = load32::<SBF>(src, i);
                let (a, b) = (exp16(arg(a)), exp16(arg(b)));
                if !dst.is_null() {
                    _mm512_storeu_ps(dst.add(i), a);
                    _mm512_storeu_ps(dst.add(i + 16), b);
                }
                if !bf.is_null() {
                    let h = if CVT {
                        cvt32(a, b)
                    } else {
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(bf16x16(a)), bf16x16(b))
                    };
                    _mm512_storeu_si512(bf.add(i).cast(), h);
                }
                if SUM {
                    l0 = _mm512_add_ps(l0, a);
                    l1 = _mm512_add_ps(l1, b);
                }
                i += 32;
            }
            while lines > 0 {
                _mm_prefetch::<_MM_HINT_T1>(pl);
                pl = pl.wrapping_add(64);
                lines -= 1;
            }
            let mut lanes = [0f32; super::LANES];
            _mm512_storeu_ps(lanes.as_mut_ptr(), l0);
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16), l1);
            let mut tail = 0f32;
            while i < n {
                let x = super::load::<SBF>(src, i);
                let x = if MUL { k * x } else { x };
                let e = super::exp_f32(if SUB { x - s } else { x });
                if !dst.is_null() {
                    *dst.add(i) = e;
                }
                if !bf.is_null() {
                    *bf.add(i) = super::bf16_bits(e);
                }
                if SUM {
                    tail += e;
                }
                i += 1;
            }
            (acc + super::sum_lanes(lanes)) + tail
        }
    }

    #[inline(always)]
    unsafe fn scalar_row_body<const SBF: bool, const DBF: bool, const CVT: bool>(
        dst: *mut u8,
        src: *const u8,
        op: i64,
        s: f32,
        n: usize,
        stream: bool,
    ) {
        let size = if DBF { 2 } else { 4 };
        let mag = (s.to_bits() & 0x7FFF_FFFF) as i32;
        let recip = op == 3 && (SAFE_LO..=SAFE_HI).contains(&mag);
        // SAFETY (all accesses): the caller passes `n` elements each; the intrinsics' features are those of
        // the two callers (this body is inlined into each).
        unsafe {
            let sv = _mm512_set1_ps(s);
            let rv = _mm512_set1_ps(1.0 / s);
            let mut i = 0;
            while i < n && !(dst as usize + i * size).is_multiple_of(64) {
                one::<SBF, DBF>(dst, src, op, s, i);
                i += 1;
            }
            while i + 32 <= n {
                let (a, b) = load32::<SBF>(src, i);
                let fast = if recip { div32(a, b, sv, rv) } else { None };
                let (a, b, normal) = match fast {
                    Some((a, b)) => (a, b, true),
                    None => {
                        let ((a, normal_a), (b, normal_b)) = (op16(a, op, sv, rv, recip), op16(b, op, sv, rv, recip));
                        (a, b, normal_a && normal_b)
                    }
                };
                if DBF {
                    let v = if CVT && normal {
                        cvt32_normal(a, b)
                    } else if CVT {
                        cvt32(a, b)
                    } else {
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(bf16x16(a)), bf16x16(b))
                    };
                    let p = dst.cast::<u16>().add(i).cast::<__m512i>();
                    if stream {
                        _mm512_stream_si512(p, v);
                    } else {
                        _mm512_store_si512(p, v);
                    }
                } else {
                    let p = dst.cast::<f32>().add(i);
                    if stream {
                        _mm512_stream_ps(p, a);
                        _mm512_stream_ps(p.add(16), b);
                    } else {
                        _mm512_store_ps(p, a);
                        _mm512_store_ps(p.add(16), b);
                    }
                }
                i += 32;
            }
            while i < n {
                one::<SBF, DBF>(dst, src, op, s, i);
                i += 1;
            }
            if stream {
                // Fenced by the caller (`super::fence_streams`) before another thread may read them.
                super::STREAMED.with(|s| s.set(true));
            }
        }
    }
}

/// [`kc_rt_row_mask`]: the kept elements are `k · src` (otherwise `src`).
pub const ROW_MASK_MUL: i64 = 1;
/// [`kc_rt_row_mask`]: with [`ROW_MASK_MUL`], the product is `src · k` (otherwise `k · src`).
pub const ROW_MASK_SWAP: i64 = 2;

/// One row of a vector statement `where(a + c <= b, k · src, fill)` into `f32` (a causal mask: `c` the column,
/// `a` and `b` the row's integers, `k` and `fill` its floats; without [`ROW_MASK_MUL`], `src` for `k · src`;
/// with [`ROW_MASK_SWAP`], `src · k`): the operations of the JIT's inline code, so the same bits: the sum
/// `a + c` wraps in 64 bits and compares signed; the product is one `f32` multiplication in the statement's
/// operand order. The kept columns are a prefix of the row when `a + c` cannot wrap (the prefix `c ≤ b - a`,
/// computed in 128 bits): 16 lanes at a time there, then `fill`; otherwise column by column. Nothing when
/// `n ≤ 0`.
///
/// # Safety
/// `src` and `dst` point to `n` `f32`s (the same row, or not overlapping).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kc_rt_row_mask(
    dst: *mut f32,
    src: *const f32,
    flags: i64,
    a: i64,
    b: i64,
    k: f32,
    fill: f32,
    n: i64,
) {
    let n = n.max(0) as usize;
    let (mul, swap) = (flags & ROW_MASK_MUL != 0, flags & ROW_MASK_SWAP != 0);
    // The operand order is the statement's (`x · k` and `k · x` differ in which NaN a product of two keeps).
    #[allow(clippy::if_same_then_else)]
    let val = |x: f32| {
        if !mul {
            x
        } else if swap {
            x * k
        } else {
            k * x
        }
    };
    if i128::from(a) + n as i128 > i128::from(i64::MAX) {
        for c in 0..n {
            // SAFETY: `c < n`; the element is read before it is written.
            unsafe { *dst.add(c) = if a.wrapping_add(c as i64) <= b { val(*src.add(c)) } else { fill } };
        }
        return;
    }
    let keep = (i128::from(b) - i128::from(a) + 1).clamp(0, n as i128) as usize;
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected; the caller passes `n` elements each, `keep <= n`.
        unsafe { wide::mask_row(dst, src, mul, swap, k, fill, keep, n) };
        return;
    }
    for c in 0..n {
        // SAFETY: `c < n`; the element is read before it is written.
        unsafe { *dst.add(c) = if c < keep { val(*src.add(c)) } else { fill } };
    }
}

/// Flag of [`kc_rt_row_silu_mul`]: the destination row is bf16 (otherwise `f32`).
pub const ROW_SILU_DST_BF16: i64 = 1;

/// One row of a vector statement `dst = silu(a) · b` (SwiGLU's gate), `a` and `b` rows of `f32`, into `f32`
/// or bf16 ([`ROW_SILU_DST_BF16`]): the bits of the JIT's chunked code (`silu` by [`kc_rt_silu_f32`], the
/// product rounded to `f32`, then [`bf16_bits`]), 16 lanes at a time, in one pass. Nothing when `n ≤ 0`.
///
/// # Safety
/// `a` and `b` point to `n` `f32`s, `dst` to `n` elements of its dtype; `dst` may be `a`'s or `b`'s row
/// (as `f32`), otherwise none overlaps another.
pub unsafe extern "C" fn kc_rt_row_silu_mul(dst: *mut u8, a: *const f32, b: *const f32, flags: i64, n: i64) {
    let n = n.max(0) as usize;
    let bf = flags & ROW_SILU_DST_BF16 != 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: forwarded from the caller; the features were detected.
        unsafe {
            if bf {
                wide::silu_mul_row::<true>(dst, a, b, n)
            } else {
                wide::silu_mul_row::<false>(dst, a, b, n)
            }
        };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        if bf {
            silu_mul_scalar::<true>(dst, a, b, 0, n)
        } else {
            silu_mul_scalar::<false>(dst, a, b, 0, n)
        }
    }
}

/// Elements `from..n` of [`kc_rt_row_silu_mul`], one at a time.
///
/// # Safety
/// As [`kc_rt_row_silu_mul`].
unsafe fn silu_mul_scalar<const BF: bool>(dst: *mut u8, a: *const f32, b: *const f32, from: usize, n: usize) {
    for j in from..n {
        // SAFETY: `j < n`; both operands are read before the element is written.
        unsafe {
            let p = silu_f32(*a.add(j)) * *b.add(j);
            if BF {
                *dst.cast::<u16>().add(j) = bf16_bits(p);
            } else {
                *dst.cast::<f32>().add(j) = p;
            }
        }
    }
}

/// One row of a vector statement `dst = src · s + add` (or `s · src + add`: [`ROW_SWAP`]; `add + ` the product:
/// [`ROW_ADD_FIRST`], a weighted sum's `acc + w · x`, moe_combine's), `s` the row's value
/// of a row-invariant expression, `add` `f32`, `src` `f32` or bf16 ([`ROW_SRC_BF16`]), `dst` `f32` or bf16
/// ([`ROW_DST_BF16`]: rounded as [`bf16_bits`]): the product rounded, then the sum rounded (two operations,
/// not a fused multiply-add: the bits of the JIT's inline code), 16 lanes at a time. Attention's rescaled
/// accumulator, `o = o · alpha + p·v`; Muon's `x = 3.4445 · x + b·x` (bf16 `x`, the product in an `f32`
/// workspace). Nothing when `n ≤ 0`.
///
/// # Safety
/// `dst`, `src` and `add` point to `n` elements of their dtypes each; `dst` and `src` (same dtype), or `dst`
/// and `add` (`dst` `f32`), may be the same row, otherwise none overlaps another.
pub unsafe extern "C" fn kc_rt_row_axpy(dst: *mut u8, src: *const u8, add: *const f32, flags: i64, s: f32, n: i64) {
    let n = n.max(0) as usize;
    let order = (flags & ROW_SWAP != 0, flags & ROW_ADD_FIRST != 0);
    let (sbf, dbf) = (flags & ROW_SRC_BF16 != 0, flags & ROW_DST_BF16 != 0);
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: forwarded from the caller; the CPU has AVX-512F (and BW, VL: `has_avx512`).
        unsafe {
            match (sbf, dbf) {
                (false, false) => wide::axpy_row::<false, false>(dst, src, add, order, s, n),
                (false, true) => wide::axpy_row::<false, true>(dst, src, add, order, s, n),
                (true, false) => wide::axpy_row::<true, false>(dst, src, add, order, s, n),
                (true, true) => wide::axpy_row::<true, true>(dst, src, add, order, s, n),
            }
        }
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        match (sbf, dbf) {
            (false, false) => axpy_scalar::<false, false>(dst, src, add, s, 0, n),
            (false, true) => axpy_scalar::<false, true>(dst, src, add, s, 0, n),
            (true, false) => axpy_scalar::<true, false>(dst, src, add, s, 0, n),
            (true, true) => axpy_scalar::<true, true>(dst, src, add, s, 0, n),
        }
    }
}

/// How many rows ahead [`kc_rt_rows_axpy`] requests its source and destination rows.
const AXPY_AHEAD: usize = 8;

/// [`kc_rt_row_axpy`] over a block of rows, for a statement whose `s` is the same for every row: `args` =
/// `[dst, src, add, dst_stride, src_stride, add_stride, flags, rows, cols]` (addresses of row 0, strides in
/// bytes). Each row is exactly the call [`kc_rt_row_axpy`] makes for it (the same bits); besides, while a
/// row is computed, the source row `AXPY_AHEAD` rows on is requested into L1 and the destination row that
/// far on fetched for writing (`prefetchw`). A mixed matmul's epilogue (Muon's `x = 3.4445 · x + b·x`)
/// reads and writes 512-byte rows 8 KiB apart in a 4096-wide tensor, a page apart, where the hardware
/// prefetcher stops: per-row calls waited on the source's load and on the store's read for ownership of
/// every row (three quarters of the routine's samples). Nothing when `rows` or `cols` is `≤ 0`.
///
/// # Safety
/// `args` points to nine words; for every `r < rows`, the rows at `dst + r·dst_stride`, `src +
/// r·src_stride` and `add + r·add_stride` are as [`kc_rt_row_axpy`] requires. Rows are computed in order,
/// one call each, as the per-row calls did, so the effects are theirs however the rows overlap. The
/// prefetches past the last row are not made (and would not fault anyway).
pub unsafe extern "C" fn kc_rt_rows_axpy(args: *const i64, s: f32) {
    // SAFETY: the caller passes nine words.
    let w = unsafe { std::slice::from_raw_parts(args, 9) };
    let (rows, cols) = (w[7], w[8]);
    if rows <= 0 || cols <= 0 {
        return;
    }
    let (dst, src, add) = (w[0] as *mut u8, w[1] as *const u8, w[2] as *const u8);
    let (ds, ss, ad) = (w[3] as isize, w[4] as isize, w[5] as isize);
    let flags = w[6];
    let rows = rows as usize;
    let sb = if flags & ROW_SRC_BF16 != 0 { 2 } else { 4 };
    let db = if flags & ROW_DST_BF16 != 0 { 2 } else { 4 };
    let (src_bytes, dst_bytes) = (cols as usize * sb, cols as usize * db);
    for r in 0..rows {
        #[cfg(target_arch = "x86_64")]
        if r + AXPY_AHEAD < rows {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
            let a = (r + AXPY_AHEAD) as isize;
            // Addresses only (wrapping arithmetic, never dereferenced here).
            let (ps, pd) = (src.wrapping_offset(a * ss), dst.wrapping_offset(a * ds));
            let mut o = 0;
            while o < src_bytes {
                // SAFETY: a prefetch is a hint: it reads nothing architecturally and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(ps.wrapping_add(o).cast()) };
                o += 64;
            }
            let mut o = 0;
            while o < dst_bytes {
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(pd.wrapping_add(o).cast()) };
                o += 64;
            }
        }
        let r = r as isize;
        // SAFETY: row `r` of each operand, as the caller promises.
        unsafe { kc_rt_row_axpy(dst.offset(r * ds), src.offset(r * ss), add.offset(r * ad).cast(), flags, s, cols) };
    }
}

/// Elements `from..n` of [`kc_rt_row_axpy`] one at a time (hosts without AVX-512, and the AVX-512 path's
/// tails). The operands' order (`ROW_SWAP`, `ROW_ADD_FIRST`) only decides which NaN payload a NaN product
/// or sum carries, which scalar code does not fix anyway (the compiler may commute a `*` or a `+`): the
/// values are the same.
///
/// # Safety
/// As [`kc_rt_row_axpy`].
unsafe fn axpy_scalar<const SBF: bool, const DBF: bool>(
    dst: *mut u8,
    src: *const u8,
    add: *const f32,
    s: f32,
    from: usize,
    n: usize,
) {
    for j in from..n {
        // SAFETY: `j < n`; each element is read before it is written.
        unsafe {
            let v = load::<SBF>(src, j) * s + *add.add(j);
            if DBF {
                *dst.cast::<u16>().add(j) = bf16_bits(v);
            } else {
                *dst.cast::<f32>().add(j) = v;
            }
        }
    }
}

/// One row of a vector statement `dst = src op s` or `s op src` (`op` one of `+ - * /`, `s` the row's value of
/// a row-invariant expression): the operation in `f32` on each element of an `f32` or bf16 row, the result
/// stored as `f32` or rounded to bf16 — the bits of the JIT's inline code, 16 lanes at a time. `flags`:
/// [`ROW_SRC_BF16`], [`ROW_DST_BF16`], [`ROW_SWAP`], the op at [`ROW_OP_SHIFT`]. Nothing when `n ≤ 0`.
///
/// # Safety
/// `src` and `dst` point to `n` elements of their dtypes (the same row, or not overlapping).
pub unsafe extern "C" fn kc_rt_row_scalar(dst: *mut u8, src: *const u8, flags: i64, s: f32, n: i64) {
    if n <= 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected; the caller passes valid rows.
        unsafe { scalar_row_avx512(dst, src, flags, s, n as usize) };
        return;
    }
    // SAFETY: the caller passes valid rows.
    unsafe { scalar_row_any(dst, src, flags, s, n as usize) }
}

#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

#[inline(always)]
fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

/// A row of `f32`s or of bf16 bits.
#[derive(Clone, Copy)]
pub enum Row<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// Running lanes of a row reduction: 32, so that the 16-lane vectors of two independent chains hide the
/// latency of the adds.
pub const LANES: usize = 32;

/// How far ahead of a row reduction's reads the cache lines are requested, in bytes: the next 4 KiB page (the
/// hardware prefetcher does not cross pages, and a reduction's row is often the first touch of its tensor's
/// memory, as softmax's and cross-entropy's maxima are).
const PREFETCH_BYTES: usize = 4096;

/// Requests the cache lines [`PREFETCH_BYTES`] past a block of a row into L2 (`prefetcht1`: a request into L1
/// holds one of the core's few L1 fill buffers until the line arrives, which capped a row maximum's read
/// from DRAM at about 6 GB/s; L2 requests have more in flight) (a hint: addresses past the row's end,
/// even unmapped ones, are harmless).
#[inline(always)]
fn prefetch_ahead<T>(block: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = block.as_ptr() as *const i8;
        let bytes = std::mem::size_of_val(block);
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch has no architectural effect and does not fault.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_BYTES + off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

#[inline(always)]
fn fold_lanes<T: Copy>(acc: f32, xs: &[T], get: impl Fn(T) -> f32, init: f32, comb: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for ch in &mut chunks {
        prefetch_ahead(ch);
        for j in 0..LANES {
            lanes[j] = comb(lanes[j], get(ch[j]));
        }
    }
    let mut tail = init;
    for &x in chunks.remainder() {
        tail = comb(tail, get(x));
    }
    let part = lanes.iter().fold(init, |a, &x| comb(a, x));
    comb(comb(acc, part), tail)
}

/// The sum of a row's [`LANES`] running lanes, as a tree: lane `j` plus lane `j + 16`, then `j + 8`, `j + 4`,
/// `j + 2`, `j + 1` (five dependent vector adds; the sequential fold of 32 lanes was a chain of 32 scalar adds,
/// a third of a 256-element row's `exp` and sum).
#[inline(always)]
fn sum_lanes(mut w: [f32; LANES]) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        for j in 0..h {
            w[j] += w[j + h];
        }
        h /= 2;
    }
    w[0]
}

/// A row's sum: element `c` into lane `c mod 32` (the first `32·⌊n/32⌋` elements), then `(acc + tree of the
/// lanes) + the tail in order`.
#[inline(always)]
fn sum_fold<T: Copy>(acc: f32, xs: &[T], get: impl Fn(T) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for ch in &mut chunks {
        prefetch_ahead(ch);
        for j in 0..LANES {
            lanes[j] += get(ch[j]);
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |a, &x| a + get(x));
    (acc + sum_lanes(lanes)) + tail
}

#[inline(always)]
fn reduce_row_generic(op: ReduceOp, acc: Option<f32>, row: Row) -> Option<f32> {
    let bf = |h: u16| f32::from_bits(u32::from(h) << 16);
    let id = identity(op)?;
    let a = acc.unwrap_or(id);
    Some(match (op, row) {
        (ReduceOp::Max, Row::F32(x)) => fold_lanes(a, x, |v| v, id, nan_max),
        (ReduceOp::Max, Row::Bf16(x)) => fold_lanes(a, x, bf, id, nan_max),
        (ReduceOp::Min, Row::F32(x)) => fold_lanes(a, x, |v| v, id, nan_min),
        (ReduceOp::Min, Row::Bf16(x)) => fold_lanes(a, x, bf, id, nan_min),
        (_, Row::F32(x)) => sum_fold(a, x, |v| v),
        (_, Row::Bf16(x)) => sum_fold(a, x, bf),
    })
}

/// The identity of a reduction this module computes (sum, max, min); `None` for the others.
pub fn identity(op: ReduceOp) -> Option<f32> {
    match op {
        ReduceOp::Sum => Some(0.0),
        ReduceOp::Max => Some(f32::NEG_INFINITY),
        ReduceOp::Min => Some(f32::INFINITY),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
fn reduce_row_avx512(op: ReduceOp, acc: Option<f32>, row: Row) -> Option<f32> {
    match op {
        ReduceOp::Max => Some(minmax_avx512::<true>(acc.unwrap_or(f32::NEG_INFINITY), row)),
        ReduceOp::Min => Some(minmax_avx512::<false>(acc.unwrap_or(f32::INFINITY), row)),
        _ => reduce_row_generic(op, acc, row),
    }
}

/// The max (`MAX`) or min of a row, with the bits of [`reduce_row_generic`]'s fold: the [`LANES`] lanes are
/// two 16-lane vectors, and `vmaxps(x, lane)` is `nan_max(lane, x)` for numbers (the lane is kept on ties,
/// so a zero of either sign stays where the fold keeps it). A NaN anywhere makes the result NaN, as the fold
/// does; it is noted in a mask rather than carried in the lanes (the compiler did not vectorize the fold's
/// NaN branch: 4× slower than the sum).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
fn minmax_avx512<const MAX: bool>(acc: f32, row: Row) -> f32 {
    use std::arch::x86_64::*;
    let comb = if MAX { nan_max } else { nan_min };
    let id = if MAX { f32::NEG_INFINITY } else { f32::INFINITY };
    let fold = |l: __m512, x: __m512| if MAX { _mm512_max_ps(x, l) } else { _mm512_min_ps(x, l) };
    let (mut l0, mut l1) = (_mm512_set1_ps(id), _mm512_set1_ps(id));
    let mut nan: __mmask16 = 0;
    let (full, rest) = match row {
        Row::F32(x) => {
            let mut ch = x.chunks_exact(LANES);
            for c in &mut ch {
                prefetch_ahead(c);
                // SAFETY: `c` holds LANES (32) f32s.
                let (a, b) = unsafe { (_mm512_loadu_ps(c.as_ptr()), _mm512_loadu_ps(c.as_ptr().add(16))) };
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
                l0 = fold(l0, a);
                l1 = fold(l1, b);
            }
            (x.len() - ch.remainder().len(), Row::F32(ch.remainder()))
        }
        Row::Bf16(x) => {
            let mut ch = x.chunks_exact(LANES);
            for c in &mut ch {
                prefetch_ahead(c);
                // SAFETY: `c` holds LANES (32) u16s: 64 bytes.
                let h = unsafe { _mm512_loadu_si512(c.as_ptr() as *const _) };
                let widen = |v: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)));
                let (a, b) = (widen(_mm512_castsi512_si256(h)), widen(_mm512_extracti64x4_epi64::<1>(h)));
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
                l0 = fold(l0, a);
                l1 = fold(l1, b);
            }
            (x.len() - ch.remainder().len(), Row::Bf16(ch.remainder()))
        }
    };
    if nan != 0 {
        return f32::NAN;
    }
    // The lanes' fold keeps the first of equal values; equal numbers have equal bits except the two zeros,
    // so any order gives the fold's bits unless the extreme is a zero.
    let m = if MAX { _mm512_reduce_max_ps(fold(l0, l1)) } else { _mm512_reduce_min_ps(fold(l0, l1)) };
    let part = if full == 0 {
        id
    } else if m != 0.0 {
        m
    } else {
        let mut lanes = [id; LANES];
        // SAFETY: `lanes` holds 32 f32s.
        unsafe {
            _mm512_storeu_ps(lanes.as_mut_ptr(), l0);
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16), l1);
        }
        lanes.iter().fold(id, |a, &x| comb(a, x))
    };
    let bf = |h: u16| f32::from_bits(u32::from(h) << 16);
    let tail = match rest {
        Row::F32(t) => t.iter().fold(id, |a, &x| comb(a, x)),
        Row::Bf16(t) => t.iter().fold(id, |a, &x| comb(a, bf(x))),
    };
    comb(comb(acc, part), tail)
}

/// [`reduce_row`] of `rows` rows of `n` elements (`f32`, or bf16 bits when `bf16`), row `r` at `src` plus
/// `r · stride` bytes, into `out(r, value)`, with `acc(r)` as each row's accumulator; `None`: `op` is not one
/// [`reduce_row`] computes. Max and min of rows whose length is a multiple of [`LANES`] go four rows at a
/// time through [`minmax4_avx512`] on AVX-512 hosts: a short row's own chains are too short to hide the
/// `vmaxps` latency and its horizontal fold (attention's 256-column score rows spent 70% of the routine
/// there), and four rows' interleave.
///
/// # Safety
/// Each row holds `n` readable elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn reduce_rows(
    op: ReduceOp,
    src: *const u8,
    bf16: bool,
    stride: isize,
    n: usize,
    rows: usize,
    acc: impl Fn(usize) -> Option<f32>,
    mut out: impl FnMut(usize, f32),
) -> Option<()> {
    // SAFETY: row `r` holds `n` elements (the caller's promise).
    let row = |r: usize| unsafe {
        let p = src.wrapping_offset(r as isize * stride);
        if bf16 {
            Row::Bf16(std::slice::from_raw_parts(p.cast::<u16>(), n))
        } else {
            Row::F32(std::slice::from_raw_parts(p.cast::<f32>(), n))
        }
    };
    let mut r = 0;
    #[cfg(target_arch = "x86_64")]
    if matches!(op, ReduceOp::Max | ReduceOp::Min) && n > 0 && n.is_multiple_of(LANES) && has_avx512() {
        let max = op == ReduceOp::Max;
        while r + 4 <= rows {
            let p = std::array::from_fn(|k| src.wrapping_offset((r + k) as isize * stride));
            // SAFETY: the features were detected; each row holds `n` elements.
            let ms = unsafe {
                match (max, bf16) {
                    (true, false) => minmax4_avx512::<true, false>(p, n),
                    (true, true) => minmax4_avx512::<true, true>(p, n),
                    (false, false) => minmax4_avx512::<false, false>(p, n),
                    (false, true) => minmax4_avx512::<false, true>(p, n),
                }
            };
            for (k, m) in ms.into_iter().enumerate() {
                let a = acc(r + k);
                // The blocks' extreme, unless a NaN or a zero (whose sign the fold's order decides) makes the
                // row go through [`reduce_row`]; no tail (`n` is a multiple of LANES), so the row's result is
                // `acc ∘ m`, as [`minmax_avx512`] combines it.
                let v = match m {
                    Some(m) if max => nan_max(a.unwrap_or(f32::NEG_INFINITY), m),
                    Some(m) => nan_min(a.unwrap_or(f32::INFINITY), m),
                    None => reduce_row(op, a, row(r + k))?,
                };
                out(r + k, v);
            }
            r += 4;
        }
    }
    while r < rows {
        out(r, reduce_row(op, acc(r), row(r))?);
        r += 1;
    }
    Some(())
}

/// The max (`MAX`) or min of the elements of four rows of `n` elements (a multiple of [`LANES`], not 0;
/// bf16 bits when `BF16`, else `f32`), the rows' blocks interleaved (eight independent `vmaxps` chains);
/// `None` for a row holding a NaN or whose extreme is a zero. Without NaNs a row's extreme is one value
/// whatever the order, and equal numbers have equal bits except the two zeros.
///
/// # Safety
/// The host has AVX-512; each row holds `n` readable elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn minmax4_avx512<const MAX: bool, const BF16: bool>(p: [*const u8; 4], n: usize) -> [Option<f32>; 4] {
    use std::arch::x86_64::*;
    let id = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { f32::INFINITY });
    let fold = |l: __m512, x: __m512| if MAX { _mm512_max_ps(x, l) } else { _mm512_min_ps(x, l) };
    // Elements `i..i + 32` of a row as two vectors, in any order of lanes.
    let load = |q: *const u8, i: usize| -> (__m512, __m512) {
        // SAFETY: the row holds elements `i..i + 32`.
        unsafe {
            if BF16 {
                // The odd elements (each 32-bit lane's upper word) with the lower word cleared, the even ones
                // shifted up.
                let h = _mm512_loadu_si512(q.cast::<u16>().add(i).cast());
                let odd = _mm512_and_si512(h, _mm512_set1_epi32(-0x1_0000));
                (_mm512_castsi512_ps(odd), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h)))
            } else {
                (_mm512_loadu_ps(q.cast::<f32>().add(i)), _mm512_loadu_ps(q.cast::<f32>().add(i + 16)))
            }
        }
    };
    // Spelled out per row: as arrays, the chains went through the stack every block.
    let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) = (id, id, id, id, id, id, id, id);
    let (mut n0, mut n1, mut n2, mut n3): (__mmask16, __mmask16, __mmask16, __mmask16) = (0, 0, 0, 0);
    let mut i = 0;
    while i < n {
        let (x0, y0) = load(p[0], i);
        let (x1, y1) = load(p[1], i);
        let (x2, y2) = load(p[2], i);
        let (x3, y3) = load(p[3], i);
        n0 = _kor_mask16(n0, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x0, y0));
        n1 = _kor_mask16(n1, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x1, y1));
        n2 = _kor_mask16(n2, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x2, y2));
        n3 = _kor_mask16(n3, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x3, y3));
        (a0, b0, a1, b1) = (fold(a0, x0), fold(b0, y0), fold(a1, x1), fold(b1, y1));
        (a2, b2, a3, b3) = (fold(a2, x2), fold(b2, y2), fold(a3, x3), fold(b3, y3));
        i += LANES;
    }
    let each = |a: __m512, b: __m512, nan: __mmask16| {
        let v = fold(a, b);
        let m = if MAX { _mm512_reduce_max_ps(v) } else { _mm512_reduce_min_ps(v) };
        (nan == 0 && m != 0.0).then_some(m)
    };
    [each(a0, b0, n0), each(a1, b1, n1), each(a2, b2, n2), each(a3, b3, n3)]
}

/// The sum, max or min of a row with [`LANES`] running lanes (see the module documentation), combined as
/// `(acc ∘ lanes) ∘ tail` with `acc` (the identity of the op when `None`); `None` for other ops.
pub fn reduce_row(op: ReduceOp, acc: Option<f32>, row: Row) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected.
        return unsafe { reduce_row_avx512(op, acc, row) };
    }
    reduce_row_generic(op, acc, row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_row_matches_sequential_for_max_min_and_the_lane_order_for_sum() {
        let xs: Vec<f32> = (0..3 * LANES + 5).map(|i| ((i * 7919) % 101) as f32 * 0.37 - 15.0).collect();
        let full = 3 * LANES;
        let max = xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let min = xs.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let r = |op, row| reduce_row(op, None, row).unwrap();
        assert_eq!(r(ReduceOp::Max, Row::F32(&xs)), max);
        assert_eq!(r(ReduceOp::Min, Row::F32(&xs)), min);
        assert_eq!(reduce_row(ReduceOp::Max, Some(1e9), Row::F32(&xs)), Some(1e9));
        assert_eq!(reduce_row(ReduceOp::ArgMax, None, Row::F32(&xs)), None);
        let mut lanes = [0f32; LANES];
        for (i, &x) in xs[..full].iter().enumerate() {
            lanes[i % LANES] += x;
        }
        // The lanes summed as a tree: j + 16, then j + 8, ... (written out, not through `sum_lanes`).
        for h in [16, 8, 4, 2, 1] {
            for j in 0..h {
                lanes[j] += lanes[j + h];
            }
        }
        let mut want = 0.0 + lanes[0];
        let tail = xs[full..].iter().fold(0.0, |a, &b| a + b);
        want += tail;
        assert_eq!(r(ReduceOp::Sum, Row::F32(&xs)).to_bits(), want.to_bits());
        let mut with_nan = xs.clone();
        with_nan[full + 1] = f32::NAN;
        assert!(r(ReduceOp::Max, Row::F32(&with_nan)).is_nan());
        assert!(r(ReduceOp::Min, Row::F32(&with_nan)).is_nan());
        let bf: Vec<u16> = xs.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
        let bmax = bf.iter().map(|&h| f32::from_bits(u32::from(h) << 16)).fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(r(ReduceOp::Max, Row::Bf16(&bf)), bmax);
        assert_eq!(r(ReduceOp::Sum, Row::F32(&[])), 0.0);
        assert_eq!(r(ReduceOp::Max, Row::Bf16(&[])), f32::NEG_INFINITY);
    }

    /// A xorshift generator of the tests' random bits, from `seed` (not 0).
    pub(super) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// The source and addend rows of the row update tests: `n` random bit patterns each (xorshift on
    /// `rng`), with special values (zeros of both signs, infinities, a NaN, a subnormal, values near the
    /// overflow) at the source's start and the addend's end.
    fn update_rows(rng: &mut u64, n: usize) -> (Vec<f32>, Vec<f32>) {
        let special = [0.0f32, -0.0, 1.0, -1.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -3e38, 3.3e38];
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let mut xs: Vec<f32> = (0..n).map(|_| f32::from_bits(next() as u32)).collect();
        let mut ys: Vec<f32> = (0..n).map(|_| f32::from_bits((next() >> 32) as u32)).collect();
        for (i, v) in special.iter().enumerate() {
            if i < n {
                xs[i] = *v;
                ys[n - 1 - i] = special[(i * 3) % special.len()];
            }
        }
        (xs, ys)
    }

    /// `kc_rt_row_axpy` gives `x · s + y` with the product rounded, then the sum (not fused): NaNs,
    /// infinities, signed zeros, subnormals, lengths around the 16 lanes, `s` on either side, and the
    /// destination being the source's row or the addend's.
    #[test]
    fn row_update_is_the_two_roundings() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        for n in [0usize, 1, 15, 16, 17, 33, 100] {
            for s in [0.75f32, -0.0, f32::NAN, f32::INFINITY, 3.0e-39, 1.0000001] {
                let (xs, ys) = update_rows(&mut rng, n);
                for swap in [false, true] {
                    // NaN payloads are not compared (the compiler may commute a scalar `+`): any NaN.
                    let bits = |v: &f32| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() };
                    let want: Vec<u32> = xs
                        .iter()
                        .zip(&ys)
                        .map(|(&x, &y)| {
                            // The operand order of `ROW_SWAP` on purpose (it decides a NaN product's payload);
                            // Clippy takes the commuted products for the same block.
                            #[allow(clippy::if_same_then_else)]
                            let p = if swap { s * x } else { x * s };
                            bits(&(p + y))
                        })
                        .collect();
                    let flags = if swap { ROW_SWAP } else { 0 };
                    let mut out = vec![0f32; n];
                    unsafe {
                        kc_rt_row_axpy(out.as_mut_ptr().cast(), xs.as_ptr().cast(), ys.as_ptr(), flags, s, n as i64)
                    };
                    assert_eq!(out.iter().map(bits).collect::<Vec<_>>(), want, "n {n}, s {s}, swap {swap}");
                    // In place on the source's row, and on the addend's.
                    let mut a = xs.clone();
                    unsafe {
                        kc_rt_row_axpy(a.as_mut_ptr().cast(), a.as_ptr().cast(), ys.as_ptr(), flags, s, n as i64)
                    };
                    assert_eq!(a.iter().map(bits).collect::<Vec<_>>(), want);
                    let mut b = ys.clone();
                    unsafe {
                        kc_rt_row_axpy(b.as_mut_ptr().cast(), xs.as_ptr().cast(), b.as_ptr(), flags, s, n as i64)
                    };
                    assert_eq!(b.iter().map(bits).collect::<Vec<_>>(), want);
                }
            }
        }
    }

    /// `kc_rt_rows_axpy` over a block is the per-row calls of `kc_rt_row_axpy` it replaces, bit for bit: every
    /// dtype pairing, strided rows (a 4096-wide tensor's window and a contiguous workspace's), blocks shorter
    /// and longer than the rows it requests ahead, widths around the 16 lanes, in place on the source's rows
    /// (f32 or bf16) and on the addend's, and nothing for zero or negative sizes.
    #[test]
    fn block_update_is_the_rows_calls() {
        let mut rng = 0x5851f42d4c957f2du64;
        for (rows, cols) in [(1usize, 17usize), (3, 1), (9, 33), (20, 100), (70, 16)] {
            for (sbf, dbf) in [(false, false), (false, true), (true, false), (true, true)] {
                let (sb, db) = (if sbf { 2 } else { 4 }, if dbf { 2 } else { 4 });
                // Row strides in elements: the source and destination in a wider tensor, the addend contiguous.
                let (ss, ds, ad) = (cols + 5, cols + 9, cols);
                let mut bytes = |n: usize| -> Vec<u8> {
                    (0..n)
                        .map(|_| {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            // Exponent bits kept moderate: mostly normal values, some NaNs and infinities.
                            (rng >> 40) as u8 & 0xbf
                        })
                        .collect()
                };
                let src = bytes(rows * ss * sb);
                let add = bytes(rows * ad * 4);
                let add: Vec<f32> = add.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                let dst0 = bytes(rows * ds * db);
                let flags = (if sbf { ROW_SRC_BF16 } else { 0 }) | (if dbf { ROW_DST_BF16 } else { 0 }) | ROW_SWAP;
                let s = 3.4445f32;
                let mut want = dst0.clone();
                for r in 0..rows {
                    unsafe {
                        kc_rt_row_axpy(
                            want.as_mut_ptr().add(r * ds * db),
                            src.as_ptr().add(r * ss * sb),
                            add.as_ptr().add(r * ad),
                            flags,
                            s,
                            cols as i64,
                        )
                    };
                }
                let block = |d: *mut u8, sp: *const u8, (dst_s, src_s): (usize, usize), a: *const f32, n: i64| {
                    let w = [
                        d as i64,
                        sp as i64,
                        a as i64,
                        dst_s as i64,
                        src_s as i64,
                        (ad * 4) as i64,
                        flags,
                        n,
                        cols as i64,
                    ];
                    unsafe { kc_rt_rows_axpy(w.as_ptr(), s) };
                };
                let mut got = dst0.clone();
                block(got.as_mut_ptr(), src.as_ptr(), (ds * db, ss * sb), add.as_ptr(), rows as i64);
                assert_eq!(got, want, "{rows} x {cols}, bf16 source {sbf}, bf16 destination {dbf}");
                // Zero or negative rows: nothing written.
                let mut none = dst0.clone();
                block(none.as_mut_ptr(), src.as_ptr(), (ds * db, ss * sb), add.as_ptr(), 0);
                block(none.as_mut_ptr(), src.as_ptr(), (ds * db, ss * sb), add.as_ptr(), -3);
                assert_eq!(none, dst0);
                // In place on the source's rows (same dtype and stride).
                if sbf == dbf {
                    let mut inplace = src.clone();
                    let mut want = src.clone();
                    for r in 0..rows {
                        unsafe {
                            let p = want.as_mut_ptr().add(r * ss * sb);
                            kc_rt_row_axpy(p, p, add.as_ptr().add(r * ad), flags, s, cols as i64)
                        };
                    }
                    let p = inplace.as_mut_ptr();
                    block(p, p, (ss * sb, ss * sb), add.as_ptr(), rows as i64);
                    assert_eq!(inplace, want, "in place, {rows} x {cols}, bf16 {sbf}");
                }
                // In place on the addend's rows (an f32 destination with the addend's stride).
                if !dbf {
                    let mut inplace = add.clone();
                    let mut want = add.clone();
                    for r in 0..rows {
                        unsafe {
                            let p = want.as_mut_ptr().add(r * ad);
                            kc_rt_row_axpy(p.cast(), src.as_ptr().add(r * ss * sb), p, flags, s, cols as i64)
                        };
                    }
                    let p = inplace.as_mut_ptr();
                    let w = [
                        p as i64,
                        src.as_ptr() as i64,
                        p as i64,
                        (ad * 4) as i64,
                        (ss * sb) as i64,
                        (ad * 4) as i64,
                        flags,
                        rows as i64,
                        cols as i64,
                    ];
                    unsafe { kc_rt_rows_axpy(w.as_ptr(), s) };
                    let b = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(b(&inplace), b(&want), "in place on the addend, {rows} x {cols}, bf16 {sbf}");
                }
            }
        }
    }

    /// `kc_rt_row_axpy` with a bf16 source or destination gives the bits of the inline code: the source
    /// widened, `x · s` rounded, plus `y` rounded (or `y` plus it: `ROW_ADD_FIRST`), then (bf16 destination)
    /// rounded as `bf16_bits` — on random bits and special values, lengths around the 16 lanes, `s` on either
    /// side, in place on the source's row when both are bf16.
    #[test]
    fn row_update_with_bf16_rows_is_the_inline_codes_bits() {
        let mut rng = 0x2545f4914f6cdd1du64;
        for n in [0usize, 1, 15, 16, 17, 33, 100] {
            for s in [3.4445f32, -0.0, f32::NAN, f32::INFINITY, 3.0e-39, 1.0000001] {
                let (xs, ys) = update_rows(&mut rng, n);
                let xb: Vec<u16> = xs.iter().map(|&x| bf16_bits(x)).collect();
                for (sbf, dbf) in [(false, true), (true, false), (true, true)] {
                    for (swap, add_first) in [(false, false), (true, false), (false, true), (true, true)] {
                        let x_at = |i: usize| if sbf { f32::from_bits(u32::from(xb[i]) << 16) } else { xs[i] };
                        // NaNs compare as any NaN (the compiler may commute a scalar `*`).
                        let v: Vec<f32> = (0..n)
                            .map(|i| {
                                // The operand order of `ROW_SWAP` on purpose (it decides a NaN product's payload);
                                // Clippy takes the commuted products for the same block.
                                #[allow(clippy::if_same_then_else)]
                                let p = if swap { s * x_at(i) } else { x_at(i) * s };
                                // With `ROW_ADD_FIRST` too: `y + p` is `p + y` but for a NaN's payload.
                                p + ys[i]
                            })
                            .collect();
                        let want: Vec<u32> = v
                            .iter()
                            .map(|&v| match (v.is_nan(), dbf) {
                                (true, _) => u32::MAX,
                                (false, true) => u32::from(bf16_bits(v)),
                                (false, false) => v.to_bits(),
                            })
                            .collect();
                        let mut flags = if swap { ROW_SWAP } else { 0 };
                        if add_first {
                            flags |= ROW_ADD_FIRST;
                        }
                        if sbf {
                            flags |= ROW_SRC_BF16;
                        }
                        if dbf {
                            flags |= ROW_DST_BF16;
                        }
                        let src: *const u8 = if sbf { xb.as_ptr().cast() } else { xs.as_ptr().cast() };
                        let got = |out: &[u8]| -> Vec<u32> {
                            (0..n)
                                .map(|i| {
                                    let (bits, nan) = if dbf {
                                        let h = u16::from_le_bytes([out[2 * i], out[2 * i + 1]]);
                                        (u32::from(h), f32::from_bits(u32::from(h) << 16).is_nan())
                                    } else {
                                        let w = u32::from_le_bytes(out[4 * i..4 * i + 4].try_into().unwrap());
                                        (w, f32::from_bits(w).is_nan())
                                    };
                                    if nan {
                                        u32::MAX
                                    } else {
                                        bits
                                    }
                                })
                                .collect()
                        };
                        let mut out = vec![0u8; n * if dbf { 2 } else { 4 }];
                        unsafe { kc_rt_row_axpy(out.as_mut_ptr(), src, ys.as_ptr(), flags, s, n as i64) };
                        assert_eq!(got(&out), want, "n {n}, s {s}, swap {swap}, bf16 src {sbf} dst {dbf}");
                        let mut scalar = vec![0u8; out.len()];
                        unsafe {
                            match (sbf, dbf) {
                                (false, true) => {
                                    axpy_scalar::<false, true>(scalar.as_mut_ptr(), src, ys.as_ptr(), s, 0, n)
                                }
                                (true, false) => {
                                    axpy_scalar::<true, false>(scalar.as_mut_ptr(), src, ys.as_ptr(), s, 0, n)
                                }
                                _ => axpy_scalar::<true, true>(scalar.as_mut_ptr(), src, ys.as_ptr(), s, 0, n),
                            }
                        }
                        assert_eq!(got(&scalar), want, "portable: n {n}, s {s}, swap {swap}");
                        if sbf && dbf {
                            // In place on the source's row.
                            let mut a = xb.clone();
                            let p = a.as_mut_ptr();
                            unsafe { kc_rt_row_axpy(p.cast(), p.cast_const().cast(), ys.as_ptr(), flags, s, n as i64) };
                            let bytes: Vec<u8> = a.iter().flat_map(|h| h.to_le_bytes()).collect();
                            assert_eq!(got(&bytes), want, "in place: n {n}, s {s}, swap {swap}");
                        }
                    }
                }
            }
        }
    }

    /// The dispatched max and min (the AVX-512 routine where the host has it) give the bits of the generic
    /// fold: rows whose extreme is a zero of both signs (in the lanes and in the tail, in either order), a
    /// NaN in a lane or in the tail, an accumulator that is NaN or a zero, f32 and bf16 rows, every length
    /// around the 32 lanes.
    #[test]
    fn max_and_min_are_the_folds_bits() {
        let mut cases: Vec<Vec<f32>> = rows();
        for n in [1usize, 31, 32, 33, 64, 95, 256, 300] {
            let base: Vec<f32> = (0..n).map(|i| -(((i * 7919) % 97) as f32) - 1.0).collect();
            cases.push(base.clone());
            cases.push(base.iter().map(|x| -x).collect());
            for (a, b) in [(0, n / 2), (n / 2, 0), (n - 1, 0), (0, n - 1), (17 % n, 3 % n)] {
                for (za, zb) in [(0.0f32, -0.0f32), (-0.0, 0.0)] {
                    for sign in [1.0f32, -1.0] {
                        let mut r: Vec<f32> = base.iter().map(|x| x * sign).collect();
                        r[a] = za;
                        r[b] = zb;
                        cases.push(r.clone());
                        let mut with_nan = r.clone();
                        with_nan[(a + 5) % n] = f32::NAN;
                        cases.push(with_nan);
                    }
                }
            }
        }
        let bits = |v: Option<f32>| v.map(f32::to_bits);
        for xs in &cases {
            let bf: Vec<u16> = xs.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
            for op in [ReduceOp::Max, ReduceOp::Min] {
                for acc in [None, Some(0.0), Some(-0.0), Some(f32::NAN), Some(-5.0), Some(5.0)] {
                    for row in [Row::F32(xs), Row::Bf16(&bf)] {
                        assert_eq!(
                            bits(reduce_row(op, acc, row)),
                            bits(reduce_row_generic(op, acc, row)),
                            "{op:?} acc {acc:?} of {xs:?}"
                        );
                    }
                }
            }
        }
    }

    /// `wide::div32` answers for blocks whose pairs of lanes have exponents with `ea² + eb² ≤ 59²` (and no
    /// other: zeros, subnormals, infinities, NaNs and larger exponents in a lane make it decline), and what
    /// it answers is `x / s` bit for bit, for divisors across the reciprocal path's range.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn div32_is_the_division_where_it_answers() {
        use std::arch::x86_64::*;
        if !has_avx512() {
            return;
        }
        let mut rnd = xorshift(0x2545_F491_4F6C_DD1Du64);
        let (mut answered, mut declined) = (0, 0);
        for block in 0..20_000 {
            let e_s = 67 + (rnd() % 121) as u32;
            let s = f32::from_bits((e_s << 23) | (rnd() as u32 & 0x7F_FFFF))
                * if rnd().is_multiple_of(2) { 1.0 } else { -1.0 };
            let mut xs: Vec<f32> = (0..32)
                .map(|_| {
                    // Mostly exponents in [-40, 40] (every pair passes), a quarter of the blocks in [-67, 67].
                    let e = if block % 4 == 0 { 60 + rnd() % 135 } else { 87 + rnd() % 81 } as u32;
                    f32::from_bits((e << 23) | (rnd() as u32 & 0x7F_FFFF) | ((rnd() as u32 & 1) << 31))
                })
                .collect();
            if block % 50 == 1 {
                let special = [0.0, -0.0, f32::NAN, f32::INFINITY, 1e-40, f32::MAX];
                xs[(rnd() % 32) as usize] = special[(rnd() % 6) as usize];
            }
            let exp = |x: f32| x.is_normal().then(|| ((x.to_bits() >> 23) & 0xFF) as i32 - 127);
            let inside = (0..16).all(|j| match (exp(xs[j]), exp(xs[16 + j])) {
                (Some(ea), Some(eb)) => ea * ea + eb * eb <= 59 * 59,
                _ => false,
            });
            let got = unsafe {
                let (a, b) = (_mm512_loadu_ps(xs.as_ptr()), _mm512_loadu_ps(xs.as_ptr().add(16)));
                wide::div32(a, b, _mm512_set1_ps(s), _mm512_set1_ps(1.0 / s)).map(|(qa, qb)| {
                    let mut q = [0f32; 32];
                    _mm512_storeu_ps(q.as_mut_ptr(), qa);
                    _mm512_storeu_ps(q.as_mut_ptr().add(16), qb);
                    q
                })
            };
            assert_eq!(got.is_some(), inside, "{xs:?}");
            match got {
                Some(q) => {
                    answered += 1;
                    for (x, q) in xs.iter().zip(q) {
                        assert_eq!(q.to_bits(), (x / s).to_bits(), "{x:e} / {s:e}");
                    }
                }
                None => declined += 1,
            }
        }
        assert!(answered > 1000 && declined > 1000, "{answered} answered, {declined} declined");
    }

    /// `reduce_rows` gives each row's `reduce_row` bits: four rows at a time (with a NaN or a zero extreme in
    /// some of them, the others plain), the rows left over, lengths a multiple of 32 and not, accumulators
    /// that are NaN, a zero or a number, f32 and bf16 rows, rows apart by more than their length.
    #[test]
    fn reduce_rows_are_each_rows_reduction() {
        let (n_rows, stride) = (11usize, 300usize);
        for n in [0usize, 32, 64, 256, 33, 100] {
            let mut xs = vec![0f32; n_rows * stride];
            for r in 0..n_rows {
                for c in 0..n {
                    xs[r * stride + c] = -(((r * 31 + c * 7919) % 97) as f32) - 1.0 + (r % 2) as f32 * 50.0;
                }
                if n > 0 {
                    match r % 5 {
                        1 => xs[r * stride + (r * 13) % n] = f32::NAN,
                        2 => {
                            for c in 0..n {
                                xs[r * stride + c] = -xs[r * stride + c].abs();
                            }
                            xs[r * stride + n / 2] = 0.0;
                            xs[r * stride + n - 1] = -0.0;
                        }
                        3 => xs[r * stride + n - 1] = 1e30,
                        _ => {}
                    }
                }
            }
            let bf: Vec<u16> = xs.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
            let accs = [None, Some(0.0), Some(-0.0), Some(f32::NAN), Some(-5.0), Some(5.0)];
            for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
                for (ai, acc) in accs.iter().enumerate() {
                    for bf16 in [false, true] {
                        let acc_of = |r: usize| if r.is_multiple_of(2) { *acc } else { accs[(ai + r) % accs.len()] };
                        let mut got = vec![f32::from_bits(1); n_rows];
                        let (src, esz) =
                            if bf16 { (bf.as_ptr() as *const u8, 2) } else { (xs.as_ptr() as *const u8, 4) };
                        let done = unsafe {
                            reduce_rows(op, src, bf16, (stride * esz) as isize, n, n_rows, acc_of, |r, v| got[r] = v)
                        };
                        assert_eq!(done, Some(()));
                        for r in 0..n_rows {
                            let row = if bf16 {
                                Row::Bf16(&bf[r * stride..r * stride + n])
                            } else {
                                Row::F32(&xs[r * stride..r * stride + n])
                            };
                            let want = reduce_row(op, acc_of(r), row).unwrap();
                            assert_eq!(
                                got[r].to_bits(),
                                want.to_bits(),
                                "{op:?} n {n} row {r} bf16 {bf16} acc {acc:?}"
                            );
                        }
                    }
                }
            }
        }
        let one = [1f32];
        let none = unsafe { reduce_rows(ReduceOp::ArgMax, one.as_ptr().cast(), false, 0, 1, 1, |_| None, |_, _| {}) };
        assert_eq!(none, None);
    }

    /// Rows of awkward lengths with specials: NaN, ±inf, ±0, huge and tiny values, bf16-exact values.
    fn rows() -> Vec<Vec<f32>> {
        [0usize, 1, 7, 31, 32, 33, 97, 1000]
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|i| match i % 13 {
                        3 => f32::NAN,
                        5 => f32::INFINITY,
                        6 => f32::NEG_INFINITY,
                        7 => -0.0,
                        8 => 3.0e38,
                        9 => 1.0e-40,
                        _ => ((i * 7919) % 211) as f32 * 0.731 - 77.0,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn row_exp_is_exp_then_the_row_sum_bit_for_bit() {
        for xs in rows() {
            let n = xs.len();
            let bf: Vec<u16> = xs.iter().map(|&x| bf16_bits(x)).collect();
            let widen = |h: u16| f32::from_bits(u32::from(h) << 16);
            for (src_bf16, sub, acc, mul) in [
                (false, true, false, false),
                (true, true, true, false),
                (false, false, true, false),
                (true, false, false, false),
                (false, true, true, true),
                (true, true, false, true),
                (false, false, false, true),
            ] {
                let (s, k) = (1.75f32, -0.3f32);
                let want: Vec<f32> = (0..n)
                    .map(|i| {
                        let x = if src_bf16 { widen(bf[i]) } else { xs[i] };
                        let x = if mul { k * x } else { x };
                        exp_f32(if sub { x - s } else { x })
                    })
                    .collect();
                let start = 2.5f32;
                let want_sum = reduce_row(ReduceOp::Sum, acc.then_some(start), Row::F32(&want)).unwrap();
                let mut got = vec![0f32; n];
                let mut sum = start;
                let src = if src_bf16 { bf.as_ptr() as *const u8 } else { xs.as_ptr() as *const u8 };
                let flags = i64::from(src_bf16) * ROW_SRC_BF16
                    + i64::from(sub) * ROW_EXP_SUB
                    + i64::from(acc) * ROW_EXP_ACC
                    + i64::from(mul) * ROW_EXP_MUL;
                unsafe { kc_rt_row_exp(got.as_mut_ptr(), src, flags, s, k, n as i64, &mut sum) };
                for (a, b) in got.iter().zip(&want) {
                    assert_eq!(a.to_bits(), b.to_bits(), "n {n}");
                }
                assert_eq!(sum.to_bits(), want_sum.to_bits(), "n {n}");
                // With the cast to bf16 in the same pass: the same f32 row and sum, and the row's bf16 bits.
                let (mut got2, mut sum2, mut cast) = (vec![0f32; n], start, vec![0x5555u16; n]);
                unsafe {
                    kc_rt_row_exp_bf(got2.as_mut_ptr(), src, flags, s, k, n as i64, &mut sum2, cast.as_mut_ptr())
                };
                assert_eq!(sum2.to_bits(), want_sum.to_bits(), "n {n}");
                for ((a, b), h) in got2.iter().zip(&want).zip(&cast) {
                    assert_eq!(a.to_bits(), b.to_bits(), "n {n}");
                    assert_eq!(*h, bf16_bits(*b), "n {n}: {b}");
                }
                // Without the f32 row (a null `dst`, the JIT's dead store): the same sum and bf16 row, and
                // the source untouched (it may be the row the store would have overwritten).
                let before: Vec<u32> = xs.iter().map(|x| x.to_bits()).collect();
                let (mut sum3, mut cast3) = (start, vec![0x5555u16; n]);
                unsafe {
                    kc_rt_row_exp_bf(std::ptr::null_mut(), src, flags, s, k, n as i64, &mut sum3, cast3.as_mut_ptr())
                };
                assert_eq!(sum3.to_bits(), want_sum.to_bits(), "n {n}: the sum without the store");
                assert_eq!(cast3, cast, "n {n}: the bf16 row without the store");
                assert!(xs.iter().map(|x| x.to_bits()).eq(before), "n {n}: the source changed");
                let mut sum4 = start;
                unsafe { kc_rt_row_exp(std::ptr::null_mut(), src, flags, s, k, n as i64, &mut sum4) };
                assert_eq!(sum4.to_bits(), want_sum.to_bits(), "n {n}: the sum alone");
                // In place, without the sum.
                if !src_bf16 {
                    let mut v = xs.clone();
                    unsafe {
                        kc_rt_row_exp(
                            v.as_mut_ptr(),
                            v.as_ptr() as *const u8,
                            flags,
                            s,
                            k,
                            n as i64,
                            std::ptr::null_mut(),
                        )
                    };
                    for (a, b) in v.iter().zip(&want) {
                        assert_eq!(a.to_bits(), b.to_bits(), "n {n}");
                    }
                }
            }
        }
        // No elements: the sum is still written.
        let mut sum = 9.0f32;
        unsafe { kc_rt_row_exp(std::ptr::null_mut(), std::ptr::null(), 0, 0.0, 1.0, 0, &mut sum) };
        assert_eq!(sum, 0.0);
    }

    #[test]
    fn row_mask_is_the_select_of_the_inline_code() {
        // Lengths around the 16-lane blocks; the kept prefix anywhere (none, inside, all), and sums that wrap.
        let big = i64::MAX - 5;
        let cases: [(i64, i64); 10] = [
            (0, -1),
            (0, 0),
            (3, 20),
            (-7, 9),
            (100, 99),
            (5, 1 << 40),
            (big, i64::MAX),
            (big, i64::MIN + 3),
            (big, 0),
            (i64::MIN, i64::MIN + 2),
        ];
        for n in [0usize, 1, 5, 15, 16, 17, 31, 33, 70] {
            let xs: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 => f32::NAN,
                    1 => -0.0,
                    2 => f32::INFINITY,
                    _ => (i as f32 - 20.0) * 0.37,
                })
                .collect();
            for &(a, b) in &cases {
                for flags in [0, ROW_MASK_MUL, ROW_MASK_MUL | ROW_MASK_SWAP] {
                    let (k, fill) = (0.125f32, f32::NEG_INFINITY);
                    let want: Vec<f32> = (0..n)
                        .map(|c| {
                            let x = xs[c];
                            // The operand order of `ROW_MASK_SWAP` on purpose, as in `kc_rt_row_mask` (`x · k` and
                            // `k · x` differ in which NaN a product of two keeps).
                            #[allow(clippy::if_same_then_else)]
                            let v = if flags & ROW_MASK_MUL == 0 {
                                x
                            } else if flags & ROW_MASK_SWAP != 0 {
                                x * k
                            } else {
                                k * x
                            };
                            if a.wrapping_add(c as i64) <= b {
                                v
                            } else {
                                fill
                            }
                        })
                        .collect();
                    let mut got = vec![7.0f32; n];
                    unsafe { kc_rt_row_mask(got.as_mut_ptr(), xs.as_ptr(), flags, a, b, k, fill, n as i64) };
                    let mut inplace = xs.clone();
                    unsafe { kc_rt_row_mask(inplace.as_mut_ptr(), inplace.as_ptr(), flags, a, b, k, fill, n as i64) };
                    for c in 0..n {
                        assert_eq!(got[c].to_bits(), want[c].to_bits(), "n {n} a {a} b {b} flags {flags} c {c}");
                        assert_eq!(inplace[c].to_bits(), want[c].to_bits(), "in place: n {n} a {a} b {b} c {c}");
                    }
                }
            }
        }
        // No elements: nothing touched.
        unsafe { kc_rt_row_mask(std::ptr::null_mut(), std::ptr::null(), 0, 0, 5, 1.0, 0.0, -3) };
    }

    #[test]
    fn row_scalar_is_the_scalar_operation_and_rounding() {
        let mut t = vec![0u16; 6];
        // Ties to even (1 + 2^-8, 1 + 3·2^-8), a quiet and a signalling NaN, a large negative value.
        let specials = [
            1.0f32,
            f32::NAN,
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            -3.0e38,
            f32::from_bits(0x7F80_0001),
        ];
        unsafe { crate::native::kc_rt_f32_to_bf16(t.as_mut_ptr(), specials.as_ptr() as *const u32, 6) };
        for (h, x) in t.iter().zip(specials) {
            assert_eq!(*h, bf16_bits(x));
        }
        for xs in rows() {
            let n = xs.len();
            let bf: Vec<u16> = xs.iter().map(|&x| bf16_bits(x)).collect();
            let widen = |h: u16| f32::from_bits(u32::from(h) << 16);
            for op in 0..4i64 {
                for swap in [false, true] {
                    for (sbf, dbf) in [(false, false), (false, true), (true, false), (true, true)] {
                        let s = -0.3f32;
                        let f = |x: f32| {
                            let (a, b) = if swap { (s, x) } else { (x, s) };
                            match op {
                                0 => a + b,
                                1 => a - b,
                                2 => a * b,
                                _ => a / b,
                            }
                        };
                        let want: Vec<f32> = (0..n).map(|i| f(if sbf { widen(bf[i]) } else { xs[i] })).collect();
                        let flags = i64::from(sbf) * ROW_SRC_BF16
                            + i64::from(dbf) * ROW_DST_BF16
                            + i64::from(swap) * ROW_SWAP
                            + (op << ROW_OP_SHIFT);
                        let src = if sbf { bf.as_ptr() as *const u8 } else { xs.as_ptr() as *const u8 };
                        if dbf {
                            let mut got = vec![0u16; n];
                            unsafe { kc_rt_row_scalar(got.as_mut_ptr() as *mut u8, src, flags, s, n as i64) };
                            for (a, b) in got.iter().zip(&want) {
                                assert_eq!(*a, bf16_bits(*b), "n {n} op {op}");
                            }
                        } else {
                            let mut got = vec![0f32; n];
                            unsafe { kc_rt_row_scalar(got.as_mut_ptr() as *mut u8, src, flags, s, n as i64) };
                            for (a, b) in got.iter().zip(&want) {
                                assert_eq!(a.to_bits(), b.to_bits(), "n {n} op {op}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The division through the reciprocal (and the streaming stores) give the bits of `x / s` for every
    /// divisor class: both ends of the range where the reciprocal path is taken and past them, quotients
    /// near overflow and underflow, zeros of both signs, subnormals, infinities, NaN; at every alignment of
    /// the destination and length.
    #[test]
    fn row_division_is_the_division_bit_for_bit() {
        let mut rnd = xorshift(0x9E37_79B9_7F4A_7C15u64);
        let p2 = |e: i32| f32::from_bits(((127 + e) as u32) << 23);
        let mut divisors = vec![1.0f32, -1.0, 3.0, 0.3, -7.5e-3, 4096.0, 1.0e-30, 3.0e30, f32::MAX, f32::MIN_POSITIVE];
        divisors.extend([p2(-60), p2(60), p2(-61), p2(61), -p2(-60), p2(60) * 1.5, p2(-60) * 0.75]);
        divisors.extend([0.0, -0.0, 1.0e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        divisors.extend([f32::from_bits(0x3FFF_FFFF), f32::from_bits(0x3F80_0001)]);
        for _ in 0..40 {
            let m = (rnd() as u32) & 0x7F_FFFF;
            let e = (100 + rnd() % 55) as u32;
            divisors.push(f32::from_bits((e << 23) | m) * if rnd().is_multiple_of(2) { 1.0 } else { -1.0 });
        }
        let n = 4096 + 77;
        let xs: Vec<f32> = (0..n)
            .map(|i| match i % 97 {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NAN,
                3 => f32::INFINITY,
                4 => -1.0e-41,
                5 => p2(-60),
                6 => p2(60),
                7 => -p2(-61),
                8 => p2(61),
                9 => f32::MAX,
                10 => f32::from_bits(0x0080_0001),
                _ => {
                    let m = (rnd() as u32) & 0x7F_FFFF;
                    let e = (60 + rnd() % 135) as u32;
                    f32::from_bits((e << 23) | m | if rnd().is_multiple_of(3) { 0x8000_0000 } else { 0 })
                }
            })
            .collect();
        let bf: Vec<u16> = xs.iter().map(|&x| bf16_bits(x)).collect();
        let widen = |h: u16| f32::from_bits(u32::from(h) << 16);
        let div = 3 << ROW_OP_SHIFT;
        for &s in &divisors {
            for sbf in [false, true] {
                for stream in [false, true] {
                    for (at, len) in [(0usize, n), (1, n - 1), (5, 1000), (31, 33), (2, 0), (3, 31)] {
                        let want: Vec<f32> =
                            (at..at + len).map(|i| if sbf { widen(bf[i]) } else { xs[i] } / s).collect();
                        let src = if sbf { bf[at..].as_ptr() as *const u8 } else { xs[at..].as_ptr() as *const u8 };
                        let mut flags = div + i64::from(sbf) * ROW_SRC_BF16;
                        if stream {
                            flags |= ROW_DST_STREAM;
                        }
                        let mut got = vec![0f32; len + 16];
                        let d = got[at % 16..].as_mut_ptr() as *mut u8;
                        unsafe { kc_rt_row_scalar(d, src, flags, s, len as i64) };
                        for (a, b) in got[at % 16..at % 16 + len].iter().zip(&want) {
                            assert_eq!(a.to_bits(), b.to_bits(), "{s:e}: {a:e} for {b:e}");
                        }
                        let mut got = vec![0u16; len + 32];
                        let d = got[at % 32..].as_mut_ptr() as *mut u8;
                        unsafe { kc_rt_row_scalar(d, src, flags | ROW_DST_BF16, s, len as i64) };
                        for (a, b) in got[at % 32..at % 32 + len].iter().zip(&want) {
                            assert_eq!(*a, bf16_bits(*b), "{s:e}: {b:e}");
                        }
                    }
                }
            }
        }
        // In place, f32 and bf16.
        for &s in &divisors[..12] {
            let mut v = xs.clone();
            unsafe { kc_rt_row_scalar(v.as_mut_ptr() as *mut u8, v.as_ptr() as *const u8, div, s, n as i64) };
            for (a, x) in v.iter().zip(&xs) {
                assert_eq!(a.to_bits(), (x / s).to_bits());
            }
            let mut h = bf.clone();
            let f = div | ROW_SRC_BF16 | ROW_DST_BF16 | ROW_DST_STREAM;
            unsafe { kc_rt_row_scalar(h.as_mut_ptr() as *mut u8, h.as_ptr() as *const u8, f, s, n as i64) };
            for (a, &x) in h.iter().zip(&bf) {
                assert_eq!(*a, bf16_bits(widen(x) / s));
            }
        }
    }

    /// Every upper half of an `f32` (sign, exponent, 7 mantissa bits) with low halves around bf16's rounding
    /// points, in a scrambled order (so 32-lane blocks mix classes: subnormals next to normals, NaNs next to
    /// numbers).
    fn sweep() -> Vec<f32> {
        const LOW: [u32; 8] = [0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4321, 0xC0DE];
        let n = 65536 * LOW.len();
        (0..n)
            .map(|i| {
                let j = (i * 40503) % n;
                f32::from_bits(((j / LOW.len()) as u32) << 16 | LOW[j % LOW.len()])
            })
            .collect()
    }

    /// The AVX-512 `exp` (`vscalefps` for the two-step scaling) gives the scalar formula's bits on every class
    /// of argument, NaNs included, over the whole range and densely where softmax's arguments lie (-220 to 100).
    #[test]
    fn vector_exp_is_the_scalar_formula_bit_for_bit() {
        let mut xs = sweep();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..(1 << 20) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            xs.push(-220.0 + 320.0 * ((seed >> 40) as f32 / (1u64 << 24) as f32));
        }
        xs.extend([-150.0, -149.99, -87.5, -0.0, 0.0, 88.72, 88.73, 89.0, 89.01, f32::MIN, f32::MAX]);
        let want: Vec<u32> = xs.iter().map(|&x| exp_f32(x).to_bits()).collect();
        let mut got = xs.clone();
        unsafe { kc_rt_exp_f32(got.as_mut_ptr(), got.len() as i64) };
        for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
            assert_eq!(g.to_bits(), *w, "exp({x:e})");
        }
        // Through the row routine too (sum and bf16 rounding of the same results).
        let (mut row, mut cast, mut sum) = (vec![0f32; xs.len()], vec![0u16; xs.len()], 0f32);
        let src = xs.as_ptr() as *const u8;
        unsafe { kc_rt_row_exp_bf(row.as_mut_ptr(), src, 0, 0.0, 1.0, xs.len() as i64, &mut sum, cast.as_mut_ptr()) };
        for ((g, w), h) in row.iter().zip(&want).zip(&cast) {
            assert_eq!(g.to_bits(), *w);
            assert_eq!(*h, bf16_bits(f32::from_bits(*w)));
        }
    }

    /// `silu16` (through [`kc_rt_silu_f32`] and the SwiGLU row routine) gives [`silu_f32`]'s bits: on every
    /// class of argument over the whole range, and densely where gates lie.
    #[test]
    fn vector_silu_is_the_scalar_formula_bit_for_bit() {
        let mut xs = sweep();
        let mut rnd = xorshift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..(1 << 20) {
            xs.push(-200.0 + 400.0 * ((rnd() >> 40) as f32 / (1u64 << 24) as f32));
        }
        xs.extend([-150.0, -149.99, -20.0, -19.99, -0.0, 0.0, 1e-40, -1e-40, 20.0, 20.01, f32::MIN, f32::MAX]);
        let want: Vec<u32> = xs.iter().map(|&x| silu_f32(x).to_bits()).collect();
        let mut got = xs.clone();
        unsafe { kc_rt_silu_f32(got.as_mut_ptr(), got.len() as i64) };
        for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
            assert_eq!(g.to_bits(), *w, "silu({x:e})");
        }
        let ones = vec![1f32; xs.len()];
        let mut row = vec![0f32; xs.len()];
        unsafe { kc_rt_row_silu_mul(row.as_mut_ptr().cast(), xs.as_ptr(), ones.as_ptr(), 0, xs.len() as i64) };
        for ((g, w), x) in row.iter().zip(&want).zip(&xs) {
            assert_eq!(g.to_bits(), (f32::from_bits(*w) * 1.0).to_bits(), "silu({x:e}) * 1");
        }
    }

    /// Rounding to bf16 (`vcvtne2ps2bf16` where the host has it) gives [`bf16_bits`] on every upper half of an
    /// `f32` with the low halves around the rounding point: ties, NaNs (quieted, payload kept), infinities,
    /// zeros and subnormals (which the instruction would flush), at every alignment, streamed or not.
    #[test]
    fn rounding_to_bf16_is_bf16_bits() {
        let xs = sweep();
        let bf: Vec<u16> = xs.iter().map(|&x| bf16_bits(x)).collect();
        let mul = 2 << ROW_OP_SHIFT;
        for at in [0usize, 3] {
            for stream in [0, ROW_DST_STREAM] {
                let n = xs.len() - at;
                let mut got = vec![0u16; n];
                let src = xs[at..].as_ptr() as *const u8;
                unsafe {
                    kc_rt_row_scalar(got.as_mut_ptr() as *mut u8, src, mul | ROW_DST_BF16 | stream, 1.0, n as i64)
                };
                for (i, (g, w)) in got.iter().zip(&bf[at..]).enumerate() {
                    assert_eq!(*g, *w, "{:#010x}", xs[at + i].to_bits());
                }
            }
        }
    }

    /// A pending prefetch is handed out one row per call, then nothing; a row routine given one (even of
    /// memory that is not mapped, a wrong guess of the reduction's predictor) computes the same results.
    #[test]
    fn pending_prefetch_rows_are_hints_only() {
        prefetch_rows(0x1000, 130, 4096, 2);
        assert_eq!(pending_row(), (0x1000, 3));
        assert_eq!(pending_row(), (0x2000, 3));
        assert_eq!(pending_row(), (0, 0));
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * -0.05).collect();
        let want: Vec<u32> = xs.iter().map(|&x| exp_f32(x - 1.0).to_bits()).collect();
        for at in [0usize, 8, usize::MAX - 4095, xs.as_ptr() as usize] {
            prefetch_rows(at, 1 << 20, 1 << 30, 3);
            let (mut got, mut sum) = (vec![0f32; xs.len()], 0f32);
            let flags = ROW_EXP_SUB;
            unsafe { kc_rt_row_exp(got.as_mut_ptr(), xs.as_ptr() as *const u8, flags, 1.0, 1.0, 1000, &mut sum) };
            assert!(got.iter().map(|x| x.to_bits()).eq(want.iter().copied()));
        }
        prefetch_rows(0, 0, 0, 0);
    }

    /// What the AVX-512 `exp` relies on to skip its lanes below `EXP_ZERO_BELOW` (a causal mask's `-inf`s):
    /// the scalar formula gives `+0` for every argument there (densely next to the threshold, sampled
    /// below it, `-inf` and `f32::MIN`), and the vector routine gives those bits when such lanes sit among
    /// ordinary ones in a row (sum and bf16 rounding included).
    #[test]
    fn exp_below_the_threshold_is_positive_zero() {
        let edge = EXP_ZERO_BELOW.to_bits();
        let mut xs: Vec<f32> = (1..=(1u32 << 18)).map(|i| f32::from_bits(edge + i)).collect();
        // Every exponent below: the bit patterns from the dense part to `-inf`'s in 65536 steps.
        let step = (f32::NEG_INFINITY.to_bits() - edge - (1 << 18)) / (1 << 16);
        xs.extend((0..(1u32 << 16)).map(|i| f32::from_bits(edge + (1 << 18) + i * step)));
        xs.extend([f32::NEG_INFINITY, f32::MIN, -150.0, -150.5, -110.000_01]);
        for &x in &xs {
            assert!(x < EXP_ZERO_BELOW, "{x:e}");
            assert_eq!(exp_f32(x).to_bits(), 0, "exp({x:e})");
        }
        // Masked rows: every other lane -inf, then runs of either, around the threshold too.
        let row: Vec<f32> = (0..999)
            .map(|i| match i % 7 {
                0 | 3 => f32::NEG_INFINITY,
                1 => -0.25 * i as f32,
                2 => EXP_ZERO_BELOW,
                4 => -110.000_01,
                5 => -95.0 - (i % 11) as f32,
                _ => {
                    if i % 2 == 0 {
                        f32::NEG_INFINITY
                    } else {
                        1.5
                    }
                }
            })
            .collect();
        let want: Vec<u32> = row.iter().map(|&x| exp_f32(x - 0.5).to_bits()).collect();
        let (mut got, mut cast, mut sum) = (vec![7f32; row.len()], vec![0u16; row.len()], 0f32);
        let src = row.as_ptr() as *const u8;
        unsafe {
            kc_rt_row_exp_bf(
                got.as_mut_ptr(),
                src,
                ROW_EXP_SUB,
                0.5,
                1.0,
                row.len() as i64,
                &mut sum,
                cast.as_mut_ptr(),
            )
        };
        for ((g, w), h) in got.iter().zip(&want).zip(&cast) {
            assert_eq!(g.to_bits(), *w);
            assert_eq!(*h, bf16_bits(f32::from_bits(*w)));
        }
        let mut seq = 0f32;
        let mut lanes = [0f32; LANES];
        let whole = row.len() / LANES * LANES;
        for (i, w) in want[..whole].iter().enumerate() {
            lanes[i % LANES] += f32::from_bits(*w);
        }
        for w in &want[whole..] {
            seq += f32::from_bits(*w);
        }
        assert_eq!(sum.to_bits(), (sum_lanes(lanes) + seq).to_bits());
    }

    #[test]
    fn exp_routine_is_the_scalar_formula_on_every_length() {
        for n in [0usize, 1, 5, 16, 17, 100] {
            let xs: Vec<f32> = (0..n).map(|i| i as f32 * 0.91 - 40.0).collect();
            let mut v = xs.clone();
            unsafe { kc_rt_exp_f32(v.as_mut_ptr(), n as i64) };
            for (a, &x) in v.iter().zip(&xs) {
                assert_eq!(a.to_bits(), exp_f32(x).to_bits());
                assert!((a - x.exp()).abs() <= 2e-7 * x.exp());
            }
        }
    }
}
