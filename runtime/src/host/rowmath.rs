//! Row-wise float routines for JIT-compiled vector code: `exp` over a run of `f32`s in place, and the
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
//!   `exp` holds.
//! - [`reduce_row`] folds a row into [`LANES`] (32) running lanes (element `c` into lane `c mod 32`, for the
//!   first `32·⌊n/32⌋` elements), then folds the lanes in order, then the tail in order. Max and min propagate NaN
//!   (as the interpreter's `nan_max`/`nan_min`), so their result is the interpreter's whatever the order.

use kc_ir::graph::ReduceOp;

const MAGIC32: f32 = 12582912.0;
#[allow(clippy::excessive_precision)]
const EXPF_P: [f32; 6] =
    [5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4];
#[allow(clippy::excessive_precision)]
const LN2_C1: f32 = 0.693359375;
#[allow(clippy::excessive_precision)]
const LN2_C2: f32 = -2.12194440e-4;

/// `e^x` by the operations of the JIT's inline `exp` (see the module documentation).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = if x < -150.0 { -150.0 } else { x };
    let x = if 89.0 < x { 89.0 } else { x };
    let t = x * std::f32::consts::LOG2_E;
    let tm = t + MAGIC32;
    let nf = tm - MAGIC32;
    let ni = (tm.to_bits() as i32).wrapping_sub(MAGIC32.to_bits() as i32);
    let r = x - nf * LN2_C1;
    let r = r - nf * LN2_C2;
    let mut p = EXPF_P[5];
    for &c in EXPF_P[..5].iter().rev() {
        p = p * r + c;
    }
    let r2 = r * r;
    let p = p * r2;
    let p = p + r;
    let p = p + 1.0;
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((n2.wrapping_add(127) << 23) as u32);
    (p * s1) * s2
}

#[inline(always)]
fn exp_slice(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = exp_f32(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn exp_slice_avx512(v: &mut [f32]) {
    exp_slice(v)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `p[i] = e^p[i]` for `i < n` (nothing when `n ≤ 0`), with the operations of the JIT's inline `exp`.
///
/// # Safety
/// `p` points to `n` writable `f32`s.
pub unsafe extern "C" fn kc_rt_exp_f32(p: *mut f32, n: i64) {
    if n <= 0 {
        return;
    }
    // SAFETY: the caller passes `n` writable elements.
    let v = unsafe { std::slice::from_raw_parts_mut(p, n as usize) };
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the features were detected.
        unsafe { exp_slice_avx512(v) };
        return;
    }
    exp_slice(v)
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

#[inline(always)]
fn fold_lanes<T: Copy>(acc: f32, xs: &[T], get: impl Fn(T) -> f32, init: f32, comb: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for ch in &mut chunks {
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
        (_, Row::F32(x)) => fold_lanes(a, x, |v| v, id, |a, b| a + b),
        (_, Row::Bf16(x)) => fold_lanes(a, x, bf, id, |a, b| a + b),
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn reduce_row_avx512(op: ReduceOp, acc: Option<f32>, row: Row) -> Option<f32> {
    reduce_row_generic(op, acc, row)
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
        let mut want = lanes.iter().fold(0.0, |a, &b| a + b);
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
