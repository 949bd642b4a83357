//! Inline, vectorized elementwise math on `F32X4` values, emitted with a [`FunctionBuilder`].
//!
//! Every function here takes and returns 128-bit vectors and uses only instructions that the x86-64
//! backend lowers with SSE4.1 (no FMA, no AVX): lane-wise float arithmetic, `sqrt`, `floor`/`ceil`/`nearest`,
//! `fcmp`, `bitselect`, bitwise ops, `iadd`/`isub`, shifts by constants, `bitcast`, `shuffle`,
//! `fcvt_from_sint` (`I32X4` → `F32X4`), `fvpromote_low`/`fvdemote` and splatted constants. Scalars are
//! computed by splatting into a vector and extracting lane 0, so scalar tails get bit-identical results.
//!
//! `exp` in SIMD vector statements runs in the host routine `kc_runtime::host::rowmath::kc_rt_exp_f32`, which
//! performs the operations of [`exp_f32x4`] (below) in the same order, 16 lanes at a time, and `silu` in
//! `kc_rt_silu_f32`, which performs those of [`silu_f32x4`]: the same bits (`codegen/tests/math.rs` checks
//! both on every input class), so the same error bounds.
//!
//! # Method
//!
//! The hot transcendental functions (`exp`, `exp2`, `log`, `log2`, `tanh`, `sigmoid`, `silu`, `softplus`)
//! are evaluated in `f32` lanes with the classic Cephes single-precision approximations (S. L. Moshier,
//! *Cephes Math Library*, `expf.c`, `exp2f.c`, `logf.c`, `log2f.c`, `tanhf.c`; the coefficients are quoted
//! from there). Multiply and add are separate instructions, except in the `exp` operation itself: without
//! FMA in the ISA, Cranelift lowers an `F32X4` `fma` to four libcalls (the same bits, slowly). `exp` uses
//! `fma` (on every x86-64 host with AVX2 or AVX-512 one `vfmadd` each): it is the hot function of softmax,
//! and its fused version takes 23 instructions a vector instead of 32 (`exp` inside `tanh`, `sigmoid`,
//! `silu` and `softplus` keeps the separate operations). The `f32` kernels:
//!
//! - `exp`: `x` clamped to [-150, 89] (NaN passes), `n = nearest(x·log2 e)` by the `1.5·2^23` magic addition
//!   (which also yields `n` as an integer; fused with the product in `exp` itself), `r = x − n·C1 − n·C2`
//!   with ln 2 split in two (Cody–Waite; `C1` has 9 bits, so `n·C1` and `x − n·C1` are exact; fused in
//!   `exp`), `e^r ≈ 1 + r + r²·P(r)` (Cephes degree-5 `P`, by fused Horner steps in `exp`), and
//!   `·2^n` as two factors `2^⌊n/2⌋·2^(n−⌊n/2⌋)` built from exponent bits: the first product is exact and the
//!   second rounds once, so overflow to +inf happens above 88.72 and results in the subnormal range are
//!   rounded once to the subnormal grid (and to 0 below −103.97).
//! - `exp2`: `n = nearest(x)`, `r = x − n` (exact), `2^r ≈ 1 + r·P(r)` (Cephes `exp2f`), scaled as `exp`.
//! - `log`/`log2`: subnormal inputs are first scaled by `2^23`; `x = 2^e·(1+f)` with `1+f ∈ [√½, √2)` from the
//!   exponent bits (`f` exact), `log(1+f) ≈ f − f²/2 + f³·P(f)` (Cephes degree-8 `P`); `log = e·C2 + y + f +
//!   e·C1` and `log2 = (y+f)·(log2 e − 1) + y + f + e` (Cephes `log2f`), small terms first. Zero, negative,
//!   infinite and NaN inputs are patched with selects.
//! - `tanh`: the Cephes odd polynomial `x + x³·P(x²)` for `|x| < 0.625` (`tanh(tiny) = x` exactly), else
//!   `±(1 − 2/(e^(2|x|) + 1))`, which is exactly ±1 once `e^(2|x|)` overflows or `2/(e+1)` is below ½ ulp of 1.
//! - `sigmoid`: with `e = e^(−|x|) ∈ [0, 1]` (never overflows), `1/(1+e)` for `x ≥ 0` and `e/(1+e)` for `x < 0`:
//!   one division; saturates to exactly 1 and, through the subnormals of `e`, to 0. For `x > 20` the argument
//!   of `e` is capped at −20 (`1 + e` is 1 either way), as in `silu` and `softplus`.
//! - `silu`: `x/(1+e)` for `x ≥ 0` and `(x·e)/(1+e)` for `x < 0`, with `x·e` scaled from `x·p` in two steps
//!   like `exp` so that it is rounded once when it is subnormal (`silu` is nonzero down to `x ≈ −108.7`).
//! - `softplus`: `max(x, 0) + log1p(t)`, `t = e^(−|x|)`, `log1p(t) = log(u) − ((u − 1) − t)/u` with `u = 1 + t`
//!   (the classic correction of the rounding of `u`; exactly `t` once `u` rounds to 1, so subnormal results
//!   for very negative `x` are those of `exp`).
//!
//! `sin`, `cos` and `gelu` are rare in kernels and stay in `f64`: the four lanes are widened into two `F64X2`
//! halves (`fvpromote_low`, after a `shuffle` for the high half), the function is approximated in `f64` with a
//! relative error far below 2^-24 (around 1e-13 or better), and the result is narrowed once with `fvdemote`.
//! The reference, `kc_ir::ops::unary_f32`, also computes in `f64` and rounds once, so these results are
//! correctly rounded except when the exact value lies within ~1e-13 (relative) of a rounding midpoint between
//! two `f32`s, and then they are off by one ulp. The `f64` kernels:
//!
//! - `exp` (inside `gelu`): `k = nearest(x·log2 e)`, `r = x − k·ln2` with ln2 split in two (Cody–Waite; the
//!   high part has 40 bits so `k·ln2_hi` is exact), `e^r` by its Taylor polynomial of degree 11 on
//!   `|r| ≤ ln2/2` (truncation error < 1e-14), scaled by `2^k` as two factors `2^⌊k/2⌋·2^(k−⌊k/2⌋)` built
//!   from exponent bits; `x` is first clamped to [-200, 1000].
//! - `sin`/`cos`: `j = nearest(x·2/π)`, `r = x − j·π/2` with π/2 split into four parts (24, 24, 24 and 53
//!   bits, 125 bits in all, from mpmath) so that every `j·Pᵢ` is exact for `|j| < 2^29`; then the Taylor
//!   polynomials of `sin` (degree 15) and `cos` (degree 16) on `|r| ≤ π/4`, selected and negated by the
//!   quadrant `j mod 4`. The reduction is accurate for `|x| < 2^29·π/2 ≈ 8.4e8`, including arguments close to
//!   multiples of π/2. Beyond that the result is finite and in [-1, 1] but not accurate (no Payne–Hanek).
//! - `gelu`: `½x·(1 + erf(x/√2))`. For `|z| < 1` (`z = x/√2`), `erf` by its Taylor series to `z^29`; for
//!   `|z| ≥ 1`, `erfc(|z|) = e^(−z²)·P(1/|z|)/|z|` where `P` is a degree-17 Chebyshev fit (numpy, 600
//!   Chebyshev nodes, relative error 2.7e-12 on `1 ≤ |z| ≤ 10.5`; `|z|` is clamped to 10.5 inside `P`, where
//!   the result is far below the smallest `f32` anyway), and `1 + erf(z)` is `2 − erfc(z)` or `erfc(−z)`.
//!
//! Speed (`codegen/tests/math.rs`, `timing`, ns per element on one core of the AVX-512 development host, for
//! arguments in [-10, 10]; in parentheses the `f64`-lane versions, on [-100, 105)): `exp` 1.0 (5.5), `exp2`
//! 0.75 (4.6), `log` 1.8 (3.0), `log2` 1.9 (3.1), `tanh` 2.0 (7.5), `sigmoid` 1.5 (5.5), `silu` 1.8 (5.6),
//! `softplus` 4.4 (12.6). Results in the subnormal range (e.g. `exp(x)` for −104 < x < −87.3) take a microcode
//! assist on x86 and cost 2–3 times as much; deeper underflow (masked `−1e9`/`−inf` arguments) does not.
//!
//! `sqrt`, `floor`, `ceil`, `neg`, `abs` and `relu` are exact; `rsqrt` is `1/sqrt(x)` in `f32` (two roundings,
//! at most 1 ulp off the once-rounded reference).
//!
//! # Measured error
//!
//! See [`MAX_ULP`]: the maximum distance in ulps (counting representable `f32`s, so subnormals count as ulps
//! of `2^-149`) from `kc_ir::ops::unary_f32`, measured by `codegen/tests/math.rs` over every 1024th `f32`
//! bit pattern, 10^6 random bit patterns, random values in the ranges that matter and the special values.
//! Because subnormal results are measured in ulps of `2^-149` too, the bound is also an absolute bound there:
//! `MAX_ULP·2^-149` (≈ 4.2e-45 for 3 ulp). Near the zero crossings of `tanh` and `silu` (`x → 0`) the bound
//! is relative as everywhere else (both are odd-like with `f(x) ≈ x`, computed without cancellation). For
//! `sin`/`cos` the bound holds for `|x| ≤ 8e8`; beyond it only "finite and in [-1, 1]" is guaranteed for
//! finite `x`.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32X4, F64X2, I32X4, I64X2, I8X16};
use cranelift_codegen::ir::{ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use kc_ir::graph::UnOp;

/// Error bound of each operation, in ulps of the `f32` result, against `kc_ir::ops::unary_f32` (asserted by
/// `codegen/tests/math.rs`; see the module documentation for how it is measured). `sin`/`cos`: for
/// `|x| ≤ 8e8`. `not` is not a float operation and is absent.
///
/// Measured (5.4 million inputs per operation; x86-64 with SSE4.1, no FMA in the emitted code, so the results
/// are the same on every host): `exp`, `exp2`, `log`, `log2`, `tanh` 1 ulp; `sigmoid` 2 ulp (at x = -1.1095);
/// `softplus` 2 ulp (at x = -0.5796); `silu` 3 ulp (at x = -1.9171: the error of `e^x` plus three roundings);
/// `rsqrt` 1 ulp (two roundings); `gelu` 1 ulp (at x = -4.7649, where the reference's own `1 + erf` cancels;
/// for `x < -5` the test compares `gelu` with the accurate `½x·erfc(-x/√2)` instead, because `unary_f32`
/// collapses to 0 there); 0 ulp for everything else, `sin` and `cos` included (evaluated in `f64` and rounded
/// once, so bounded by 1 ulp by construction). In the subnormal range an ulp is 2^-149, so there the bounds
/// are absolute: at most `MAX_ULP·2^-149`.
pub const MAX_ULP: &[(UnOp, f32)] = &[
    (UnOp::Neg, 0.0),
    (UnOp::Abs, 0.0),
    (UnOp::Sqrt, 0.0),
    (UnOp::Rsqrt, 1.0),
    (UnOp::Floor, 0.0),
    (UnOp::Ceil, 0.0),
    (UnOp::Relu, 0.0),
    (UnOp::Exp, 1.0),
    (UnOp::Exp2, 1.0),
    (UnOp::Log, 1.0),
    (UnOp::Log2, 1.0),
    (UnOp::Sin, 1.0),
    (UnOp::Cos, 1.0),
    (UnOp::Tanh, 1.0),
    (UnOp::Sigmoid, 2.0),
    (UnOp::Silu, 3.0),
    (UnOp::Gelu, 1.0),
    (UnOp::Softplus, 2.0),
];

// ---------------------------------------------------------------------------------------------------------
// Small helpers.

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

fn bc(b: &mut FunctionBuilder, ty: Type, v: Value) -> Value {
    if b.func.dfg.value_type(v) == ty {
        v
    } else {
        b.ins().bitcast(ty, flags(), v)
    }
}

fn f32s(b: &mut FunctionBuilder, v: f32) -> Value {
    let c = b.ins().f32const(v);
    b.ins().splat(F32X4, c)
}

fn f64s(b: &mut FunctionBuilder, v: f64) -> Value {
    let c = b.ins().f64const(v);
    b.ins().splat(F64X2, c)
}

fn i32s(b: &mut FunctionBuilder, v: i32) -> Value {
    let c = b.ins().iconst(cranelift_codegen::ir::types::I32, i64::from(v));
    b.ins().splat(I32X4, c)
}

fn i64s(b: &mut FunctionBuilder, v: i64) -> Value {
    let c = b.ins().iconst(cranelift_codegen::ir::types::I64, v);
    b.ins().splat(I64X2, c)
}

/// `mask ? x : y` lane-wise, where `mask` is an all-ones/all-zeros lane mask (e.g. from `fcmp`/`icmp`).
fn sel(b: &mut FunctionBuilder, mask: Value, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    let m = bc(b, ty, mask);
    b.ins().bitselect(m, x, y)
}

fn fcmp(b: &mut FunctionBuilder, cc: FloatCC, x: Value, y: Value) -> Value {
    b.ins().fcmp(cc, x, y)
}

/// Horner evaluation of `c[0] + c[1]·t + … + c[n]·t^n` (mul + add; no FMA).
fn horner(b: &mut FunctionBuilder, t: Value, c: &[f64]) -> Value {
    let n = c.len() - 1;
    let mut acc = f64s(b, c[n]);
    for &ci in c[..n].iter().rev() {
        let m = b.ins().fmul(acc, t);
        let k = f64s(b, ci);
        acc = b.ins().fadd(m, k);
    }
    acc
}

fn shuffle(b: &mut FunctionBuilder, x: Value, y: Value, mask: [u8; 16]) -> Value {
    let x8 = bc(b, I8X16, x);
    let y8 = bc(b, I8X16, y);
    let imm = b.func.dfg.immediates.push(ConstantData::from(&mask[..]));
    b.ins().shuffle(x8, y8, imm)
}

/// Applies an `F64X2 -> F64X2` kernel to both halves of an `F32X4` and narrows the result back.
fn via_f64(b: &mut FunctionBuilder, x: Value, f: impl Fn(&mut FunctionBuilder, Value) -> Value) -> Value {
    let lo = b.ins().fvpromote_low(x);
    let hi32 = shuffle(b, x, x, [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15]);
    let hi32 = bc(b, F32X4, hi32);
    let hi = b.ins().fvpromote_low(hi32);
    let rlo = f(b, lo);
    let rhi = f(b, hi);
    let dlo = b.ins().fvdemote(rlo);
    let dhi = b.ins().fvdemote(rhi);
    let r = shuffle(b, dlo, dhi, [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]);
    bc(b, F32X4, r)
}

// ---------------------------------------------------------------------------------------------------------
// f64 kernels (on F64X2).

const MAGIC: f64 = 6755399441055744.0; // 1.5·2^52
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// ln 2 to 40 bits (so `k·LN2_HI` is exact for `|k| < 2^13`) and the rest (mpmath).
const LN2_HI: f64 = f64::from_bits(0x3fe62e42fefa2000);
const LN2_LO: f64 = f64::from_bits(0x3d69ef35793c7673);
/// π/2 in four parts of 24, 24, 24 and 53 bits (mpmath).
const PIO2: [f64; 4] = [
    f64::from_bits(0x3ff921fb40000000),
    f64::from_bits(0x3e74442d00000000),
    f64::from_bits(0x3cf8469880000000),
    f64::from_bits(0x3b78cc51701b839a),
];

/// `2^n` for an integer-valued `F64X2` `n` with `-1022 ≤ n ≤ 1023`, from exponent bits.
fn pow2_64(b: &mut FunctionBuilder, n: Value) -> Value {
    let m = f64s(b, MAGIC + 1023.0);
    let t = b.ins().fadd(n, m);
    let bits = bc(b, I64X2, t);
    let sh = b.ins().iconst(cranelift_codegen::ir::types::I32, 52);
    let e = b.ins().ishl(bits, sh);
    bc(b, F64X2, e)
}

/// `e^r` for `|r| ≤ ~0.35`: Taylor polynomial of degree 11.
fn exp_poly(b: &mut FunctionBuilder, r: Value) -> Value {
    let mut c = [0.0f64; 12];
    let mut f = 1.0f64;
    for (i, ci) in c.iter_mut().enumerate() {
        if i > 0 {
            f *= i as f64;
        }
        *ci = 1.0 / f;
    }
    horner(b, r, &c)
}

/// `p·2^k`, with `k` split in two factors so that `|k|` up to ~2000 neither wraps nor loses the
/// over/underflow.
fn scale2(b: &mut FunctionBuilder, p: Value, k: Value) -> Value {
    let half = f64s(b, 0.5);
    let kh = b.ins().fmul(k, half);
    let k1 = b.ins().floor(kh);
    let k2 = b.ins().fsub(k, k1);
    let s1 = pow2_64(b, k1);
    let s2 = pow2_64(b, k2);
    let t = b.ins().fmul(p, s1);
    b.ins().fmul(t, s2)
}

fn clamp64(b: &mut FunctionBuilder, x: Value, lo: f64, hi: f64) -> Value {
    let h = f64s(b, hi);
    let l = f64s(b, lo);
    let t = b.ins().fmin(x, h);
    b.ins().fmax(t, l)
}

/// `e^x` in f64 (relative error ~1e-15); +inf beyond the f64 range; NaN propagates. `x` is clamped below at
/// -200 (`e^-200 ≈ 1.4e-87`, far below every `f32` and still a normal `f64`, so no slow denormal arithmetic).
fn exp64(b: &mut FunctionBuilder, x: Value) -> Value {
    let x = clamp64(b, x, -200.0, 1000.0);
    let l2e = f64s(b, LOG2E);
    let t = b.ins().fmul(x, l2e);
    let k = b.ins().nearest(t);
    let hi = f64s(b, LN2_HI);
    let lo = f64s(b, LN2_LO);
    let khi = b.ins().fmul(k, hi);
    let r = b.ins().fsub(x, khi);
    let klo = b.ins().fmul(k, lo);
    let r = b.ins().fsub(r, klo);
    let p = exp_poly(b, r);
    scale2(b, p, k)
}

/// `sin(x)` (or `cos(x)` when `cos`) in f64 for `|x| < 8.4e8`.
fn sincos64(b: &mut FunctionBuilder, x: Value, cos: bool) -> Value {
    let c = f64s(b, std::f64::consts::FRAC_2_PI);
    let t = b.ins().fmul(x, c);
    let j = b.ins().nearest(t);
    let mut r = x;
    for p in PIO2 {
        let pc = f64s(b, p);
        let jp = b.ins().fmul(j, pc);
        r = b.ins().fsub(r, jp);
    }
    // Keeps the polynomials finite for arguments beyond the reduction's range.
    let r = clamp64(b, r, -1.0, 1.0);
    let jq = if cos {
        let one = f64s(b, 1.0);
        b.ins().fadd(j, one)
    } else {
        j
    };
    // q = jq mod 4, odd = q mod 2 (exact in f64).
    let quarter = f64s(b, 0.25);
    let four = f64s(b, 4.0);
    let t = b.ins().fmul(jq, quarter);
    let t = b.ins().floor(t);
    let t = b.ins().fmul(t, four);
    let q = b.ins().fsub(jq, t);
    let half = f64s(b, 0.5);
    let two = f64s(b, 2.0);
    let t = b.ins().fmul(q, half);
    let t = b.ins().floor(t);
    let t = b.ins().fmul(t, two);
    let odd = b.ins().fsub(q, t);

    let z = b.ins().fmul(r, r);
    // sin r = r + r·z·S(z), S = -1/3! + z/5! - … (to r^15); cos r = C(z) = 1 - z/2! + … (to r^16).
    let mut sc = Vec::new();
    let mut cc = Vec::new();
    let mut fact = 1.0f64;
    for k in 1..=16u32 {
        fact *= f64::from(k);
        let sign = if (k / 2) % 2 == 1 { -1.0 } else { 1.0 };
        if k % 2 == 1 && k >= 3 {
            sc.push(sign / fact);
        } else if k % 2 == 0 {
            cc.push(sign / fact);
        }
    }
    cc.insert(0, 1.0);
    let sp = horner(b, z, &sc);
    let rz = b.ins().fmul(r, z);
    let sp = b.ins().fmul(rz, sp);
    let s = b.ins().fadd(r, sp);
    let cpoly = horner(b, z, &cc);
    let one = f64s(b, 1.0);
    let is_odd = fcmp(b, FloatCC::Equal, odd, one);
    let v = sel(b, is_odd, cpoly, s);
    let neg = fcmp(b, FloatCC::GreaterThanOrEqual, q, two);
    let sign = i64s(b, i64::MIN);
    let sign = bc(b, F64X2, sign);
    let zero = f64s(b, 0.0);
    let flip = sel(b, neg, sign, zero);
    b.ins().bxor(v, flip)
}

/// Degree-17 Chebyshev fit (numpy, in monomial form in `u = A/|z| + B ∈ [-1, 1]`) of `|z|·e^(z²)·erfc(|z|)`
/// on `1 ≤ |z| ≤ 10.5`; relative error 2.7e-12.
const ERFC_A: f64 = f64::from_bits(0x4001af286bca1af2);
const ERFC_B: f64 = f64::from_bits(0xbff35e50d79435e6);
const ERFC_POLY: [f64; 18] = [
    f64::from_bits(0x3fe01698439c3878),
    f64::from_bits(0xbfb3ae2580dc9918),
    f64::from_bits(0xbf71a95891f8bd86),
    f64::from_bits(0x3f82d2f37f1ca805),
    f64::from_bits(0xbf70be7bce44a73f),
    f64::from_bits(0x3f4eebd14ed0e148),
    f64::from_bits(0x3f1cbb50b3a58b95),
    f64::from_bits(0xbf3062b58f822a6b),
    f64::from_bits(0x3f243d3f339f1d90),
    f64::from_bits(0xbf0f6f7cce3fe510),
    f64::from_bits(0x3ee53ab9d4d0653a),
    f64::from_bits(0x3ed6cc95ccf178b2),
    f64::from_bits(0xbed694c374932c27),
    f64::from_bits(0x3ed27df26f9ff411),
    f64::from_bits(0xbed06e8282656e85),
    f64::from_bits(0x3eafca779f919c15),
    f64::from_bits(0x3eb200a6e8f63d9d),
    f64::from_bits(0xbea217ecb2c17c9c),
];

fn gelu64(b: &mut FunctionBuilder, x: Value) -> Value {
    let c = f64s(b, std::f64::consts::FRAC_1_SQRT_2);
    let z = b.ins().fmul(x, c);
    let a = b.ins().fabs(z);
    // |z| < 1: erf(z) = 2/√π · Σ (-1)^n z^(2n+1) / (n!(2n+1)), n ≤ 14.
    let zc = clamp64(b, z, -1.0, 1.0);
    let z2 = b.ins().fmul(zc, zc);
    let mut ec = Vec::new();
    let mut fact = 1.0f64;
    for n in 0..=14u32 {
        if n > 0 {
            fact *= f64::from(n);
        }
        let sign = if n % 2 == 1 { -1.0 } else { 1.0 };
        ec.push(sign * std::f64::consts::FRAC_2_SQRT_PI / (fact * f64::from(2 * n + 1)));
    }
    let ep = horner(b, z2, &ec);
    let erf = b.ins().fmul(zc, ep);
    let one = f64s(b, 1.0);
    let small = b.ins().fadd(one, erf);
    // |z| ≥ 1: erfc(|z|) = e^(-z²)·P(u)/|z|.
    let ac = clamp64(b, a, 1.0, 10.5);
    let inv = b.ins().fdiv(one, ac);
    let ca = f64s(b, ERFC_A);
    let cb = f64s(b, ERFC_B);
    let u = b.ins().fmul(inv, ca);
    let u = b.ins().fadd(u, cb);
    let p = horner(b, u, &ERFC_POLY);
    let zz = b.ins().fmul(z, z);
    let nzz = b.ins().fneg(zz);
    let e = exp64(b, nzz);
    let t = b.ins().fmul(e, p);
    let erfc = b.ins().fdiv(t, a);
    let two = f64s(b, 2.0);
    let pos = b.ins().fsub(two, erfc);
    let zero = f64s(b, 0.0);
    let is_pos = fcmp(b, FloatCC::GreaterThan, z, zero);
    let large = sel(b, is_pos, pos, erfc);
    let is_small = fcmp(b, FloatCC::LessThan, a, one);
    let phi2 = sel(b, is_small, small, large);
    let half = f64s(b, 0.5);
    let hx = b.ins().fmul(half, x);
    b.ins().fmul(hx, phi2)
}

// ---------------------------------------------------------------------------------------------------------
// f32 kernels (on F32X4).

/// Horner evaluation in `f32` of `c[0] + c[1]·t + … + c[n]·t^n` (mul + add; no FMA, see the module docs).
fn horner32(b: &mut FunctionBuilder, t: Value, c: &[f32]) -> Value {
    let n = c.len() - 1;
    let mut acc = f32s(b, c[n]);
    for &ci in c[..n].iter().rev() {
        let m = b.ins().fmul(acc, t);
        let k = f32s(b, ci);
        acc = b.ins().fadd(m, k);
    }
    acc
}

/// `max(x, lo)` with NaN passing through (a `maxps`).
fn clamp_lo32(b: &mut FunctionBuilder, x: Value, lo: f32) -> Value {
    let l = f32s(b, lo);
    let lt = fcmp(b, FloatCC::LessThan, x, l);
    sel(b, lt, l, x)
}

/// `min(x, hi)` with NaN passing through (a `minps`).
fn clamp_hi32(b: &mut FunctionBuilder, x: Value, hi: f32) -> Value {
    let h = f32s(b, hi);
    let lt = fcmp(b, FloatCC::LessThan, h, x);
    sel(b, lt, h, x)
}

/// `1.5·2^23`: adding it to an `f32` of magnitude < 2^22 rounds to an integer, found in the low mantissa bits.
const MAGIC32: f32 = 12582912.0;

/// Splits `t` (`|t| < 2^21`) into `nearest(t)` as an `F32X4` and as an `I32X4`.
fn round_split32(b: &mut FunctionBuilder, t: Value) -> (Value, Value) {
    let m = f32s(b, MAGIC32);
    let tm = b.ins().fadd(t, m);
    let nf = b.ins().fsub(tm, m);
    let ti = bc(b, I32X4, tm);
    let mi = i32s(b, MAGIC32.to_bits() as i32);
    let ni = b.ins().isub(ti, mi);
    (nf, ni)
}

/// `2^n` as an `F32X4` for an `I32X4` `n` with `-126 ≤ n ≤ 127`, from exponent bits.
fn pow2_32(b: &mut FunctionBuilder, n: Value) -> Value {
    let bias = i32s(b, 127);
    let e = b.ins().iadd(n, bias);
    let sh = b.ins().iconst(cranelift_codegen::ir::types::I32, 23);
    let e = b.ins().ishl(e, sh);
    bc(b, F32X4, e)
}

/// `(2^⌊n/2⌋, 2^(n−⌊n/2⌋))` for an `I32X4` `-252 ≤ n ≤ 252`: two normal powers of two whose product is `2^n`.
/// Scaling by them one after the other keeps the first product exact and rounds once at the end.
fn pow2_split32(b: &mut FunctionBuilder, n: Value) -> (Value, Value) {
    let one = b.ins().iconst(cranelift_codegen::ir::types::I32, 1);
    let n1 = b.ins().sshr(n, one);
    let n2 = b.ins().isub(n, n1);
    let s1 = pow2_32(b, n1);
    let s2 = pow2_32(b, n2);
    (s1, s2)
}

/// `(p·2^⌊n/2⌋)·2^(n−⌊n/2⌋)` (see [`pow2_split32`]).
fn scale2_32(b: &mut FunctionBuilder, p: Value, n: Value) -> Value {
    let (s1, s2) = pow2_split32(b, n);
    let t = b.ins().fmul(p, s1);
    b.ins().fmul(t, s2)
}

/// Cephes `expf` polynomial: `e^r ≈ 1 + r + r²·P(r)` on `|r| ≤ ln2/2` (S. L. Moshier, Cephes Math Library,
/// `expf.c`; relative error ~1e-7 ≈ ½ ulp).
#[allow(clippy::excessive_precision)] // quoted verbatim from Cephes
const EXPF_P: [f32; 6] =
    [5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4];
/// ln 2 in two parts (Cephes `expf.c`/`logf.c`): `C1` has 9 significant bits, so `n·C1` is exact for `|n| < 2^15`.
#[allow(clippy::excessive_precision)] // exactly 355/512, as in Cephes
const LN2_C1: f32 = 0.693359375;
#[allow(clippy::excessive_precision)] // quoted verbatim from Cephes
const LN2_C2: f32 = -2.12194440e-4;

/// The parts of `e^x` in `f32`: `(p, s1, s2)` with `e^x ≈ (p·s1)·s2`, `p ∈ [0.7, 1.42]` and `s1`, `s2` normal
/// powers of two. `n = nearest(x·log2 e)`, `r = x − n·C1 − n·C2` (Cody–Waite), the Cephes polynomial, and `2^n`
/// split in two factors ([`scale2_32`]). `x` is clamped to [-150, 89] (NaN passes through), beyond which the
/// result is 0 or +inf anyway; the low limit leaves room for [`silu32`], which scales `x·p` instead of `p`.
fn exp32_parts(b: &mut FunctionBuilder, x: Value) -> (Value, Value, Value) {
    let x = clamp_lo32(b, x, -150.0);
    let x = clamp_hi32(b, x, 89.0);
    let l2e = f32s(b, std::f32::consts::LOG2_E);
    let t = b.ins().fmul(x, l2e);
    let (nf, ni) = round_split32(b, t);
    let c1 = f32s(b, LN2_C1);
    let c2 = f32s(b, LN2_C2);
    let a = b.ins().fmul(nf, c1);
    let r = b.ins().fsub(x, a);
    let a = b.ins().fmul(nf, c2);
    let r = b.ins().fsub(r, a);
    let p = horner32(b, r, &EXPF_P);
    let r2 = b.ins().fmul(r, r);
    let p = b.ins().fmul(p, r2);
    let p = b.ins().fadd(p, r);
    let one = f32s(b, 1.0);
    let p = b.ins().fadd(p, one);
    let (s1, s2) = pow2_split32(b, ni);
    (p, s1, s2)
}

/// `e^x` in `f32` (see [`exp32_parts`]): the product `p·s1` is exact and the last multiplication rounds once,
/// so overflow gives +inf and results in the subnormal range are rounded once to the subnormal grid.
fn exp32(b: &mut FunctionBuilder, x: Value) -> Value {
    let (p, s1, s2) = exp32_parts(b, x);
    let t = b.ins().fmul(p, s1);
    b.ins().fmul(t, s2)
}

/// Horner evaluation in `f32` of `c[0] + c[1]·t + … + c[n]·t^n` with fused multiply-adds (one rounding a step).
fn horner32_fma(b: &mut FunctionBuilder, t: Value, c: &[f32]) -> Value {
    let n = c.len() - 1;
    let mut acc = f32s(b, c[n]);
    for &ci in c[..n].iter().rev() {
        let k = f32s(b, ci);
        acc = b.ins().fma(acc, t, k);
    }
    acc
}

/// `e^x` for the `exp` operation: [`exp32`]'s method with fused multiply-adds where it multiplies and adds
/// (`x·log2 e + 1.5·2^23`, both Cody–Waite steps, the Horner steps and `p·r² + r`): 23 instructions a vector
/// instead of 32, the same 1-ulp bound. Cranelift lowers `fma` to `vfmadd` on hosts with FMA (every x86-64
/// with AVX2 or AVX-512) and to `fmaf` calls elsewhere: the same bits everywhere, as `fma` rounds once by
/// definition. `kc_runtime::host::rowmath::exp_f32` performs the same operations (`mul_add`).
fn exp32_fma(b: &mut FunctionBuilder, x: Value) -> Value {
    let x = clamp_lo32(b, x, -150.0);
    let x = clamp_hi32(b, x, 89.0);
    let l2e = f32s(b, std::f32::consts::LOG2_E);
    let m = f32s(b, MAGIC32);
    let tm = b.ins().fma(x, l2e, m);
    let nf = b.ins().fsub(tm, m);
    let ti = bc(b, I32X4, tm);
    let mi = i32s(b, MAGIC32.to_bits() as i32);
    let ni = b.ins().isub(ti, mi);
    let c1 = f32s(b, -LN2_C1);
    let c2 = f32s(b, -LN2_C2);
    let r = b.ins().fma(nf, c1, x);
    let r = b.ins().fma(nf, c2, r);
    let p = horner32_fma(b, r, &EXPF_P);
    let r2 = b.ins().fmul(r, r);
    let p = b.ins().fma(p, r2, r);
    let one = f32s(b, 1.0);
    let p = b.ins().fadd(p, one);
    scale2_32(b, p, ni)
}

/// Cephes `exp2f` polynomial: `2^r ≈ 1 + r·P(r)` on `|r| ≤ ½` (`exp2f.c`).
#[allow(clippy::excessive_precision)] // quoted verbatim from Cephes
const EXP2F_P: [f32; 6] = [
    6.931472028550421e-1,
    2.402264791363012e-1,
    5.550332471162809e-2,
    9.618437357674640e-3,
    1.339887440266574e-3,
    1.535336188319500e-4,
];

/// `2^x` in `f32`: `n = nearest(x)`, `r = x − n` (exact), Cephes polynomial, `·2^n` in two steps.
fn exp2_32(b: &mut FunctionBuilder, x: Value) -> Value {
    let x = clamp_lo32(b, x, -200.0);
    let x = clamp_hi32(b, x, 129.0);
    let (nf, ni) = round_split32(b, x);
    let r = b.ins().fsub(x, nf);
    let p = horner32(b, r, &EXP2F_P);
    let p = b.ins().fmul(p, r);
    let one = f32s(b, 1.0);
    let p = b.ins().fadd(p, one);
    scale2_32(b, p, ni)
}

/// Cephes `logf` polynomial: `log(1+f) ≈ f − f²/2 + f³·P(f)` for `1+f ∈ [√½, √2)` (`logf.c`).
#[allow(clippy::excessive_precision)] // quoted verbatim from Cephes
const LOGF_P: [f32; 9] = [
    3.3333331174e-1,
    -2.4999993993e-1,
    2.0000714765e-1,
    -1.6668057665e-1,
    1.4249322787e-1,
    -1.2420140846e-1,
    1.1676998740e-1,
    -1.1514610310e-1,
    7.0376836292e-2,
];

/// For a positive `f32` `x` (subnormals included; +inf and NaN give garbage to be patched): `(e, f, y)` with
/// `x = 2^e·(1+f)`, `1+f ∈ [√½, √2)`, `f` exact, and `y = f³·P(f) − f²/2`, so `log(1+f) ≈ f + y`.
fn log32_parts(b: &mut FunctionBuilder, x: Value) -> (Value, Value, Value) {
    const SQRT_HALF_BITS: i32 = 0x3f35_04f3;
    // Subnormals: scale by 2^23 (exact) and take 23 off the exponent.
    let minp = f32s(b, f32::MIN_POSITIVE);
    let sub = fcmp(b, FloatCC::LessThan, x, minp);
    let k = f32s(b, 8388608.0);
    let xs = b.ins().fmul(x, k);
    let x = sel(b, sub, xs, x);
    let m23 = f32s(b, -23.0);
    let zero = f32s(b, 0.0);
    let eadj = sel(b, sub, m23, zero);
    let ix = bc(b, I32X4, x);
    let off = i32s(b, 0x3f80_0000 - SQRT_HALF_BITS);
    let ix = b.ins().iadd(ix, off);
    let sh = b.ins().iconst(cranelift_codegen::ir::types::I32, 23);
    let eb = b.ins().ushr(ix, sh);
    let bias = i32s(b, 127);
    let eb = b.ins().isub(eb, bias);
    let e = b.ins().fcvt_from_sint(F32X4, eb);
    let e = b.ins().fadd(e, eadj);
    let mm = i32s(b, 0x007f_ffff);
    let mb = b.ins().band(ix, mm);
    let shb = i32s(b, SQRT_HALF_BITS);
    let mb = b.ins().iadd(mb, shb);
    let m = bc(b, F32X4, mb);
    let one = f32s(b, 1.0);
    let f = b.ins().fsub(m, one);
    let z = b.ins().fmul(f, f);
    let p = horner32(b, f, &LOGF_P);
    let p = b.ins().fmul(p, f);
    let y = b.ins().fmul(p, z);
    let half = f32s(b, 0.5);
    let hz = b.ins().fmul(z, half);
    let y = b.ins().fsub(y, hz);
    (e, f, y)
}

/// `log(x)` for positive finite `x` (Cephes `logf`): `e·C2 + y + f + e·C1`, small terms first.
fn log32(b: &mut FunctionBuilder, x: Value) -> Value {
    let (e, f, y) = log32_parts(b, x);
    let c2 = f32s(b, LN2_C2);
    let t = b.ins().fmul(e, c2);
    let y = b.ins().fadd(y, t);
    let r = b.ins().fadd(f, y);
    let c1 = f32s(b, LN2_C1);
    let t = b.ins().fmul(e, c1);
    b.ins().fadd(r, t)
}

/// `log2(x)` for positive finite `x` (Cephes `log2f`): `(y + f)·(log2 e − 1) + y + f + e`, so the large part
/// of the conversion by `log2 e` is exact.
fn log2_32(b: &mut FunctionBuilder, x: Value) -> Value {
    let (e, f, y) = log32_parts(b, x);
    let c = f32s(b, 0.442_695_04);
    let t = b.ins().fmul(y, c);
    let u = b.ins().fmul(f, c);
    let t = b.ins().fadd(t, u);
    let t = b.ins().fadd(t, y);
    let t = b.ins().fadd(t, f);
    b.ins().fadd(t, e)
}

/// `copysign(mag, sgn)` for F32X4 with `mag ≥ 0`.
fn copysign32(b: &mut FunctionBuilder, mag: Value, sgn: Value) -> Value {
    let m = f32s(b, -0.0);
    let s = b.ins().band(sgn, m);
    b.ins().bor(mag, s)
}

/// Cephes `tanhf` polynomial: `tanh x ≈ x + x·z·P(z)`, `z = x²`, for `|x| < 0.625` (`tanhf.c`).
#[allow(clippy::excessive_precision)] // quoted verbatim from Cephes
const TANHF_P: [f32; 5] = [-3.33332819422e-1, 1.33314422036e-1, -5.37397155531e-2, 2.06390887954e-2, -5.70498872745e-3];

/// `tanh(x)`: the Cephes polynomial for `|x| < 0.625`, else `±(1 − 2/(e^(2|x|) + 1))` (±1 once `e^(2|x|)`
/// overflows). NaN takes the second path and stays NaN.
fn tanh32(b: &mut FunctionBuilder, x: Value) -> Value {
    let a = b.ins().fabs(x);
    let z = b.ins().fmul(x, x);
    let p = horner32(b, z, &TANHF_P);
    let p = b.ins().fmul(p, z);
    let p = b.ins().fmul(p, x);
    let small = b.ins().fadd(p, x);
    let a2 = b.ins().fadd(a, a);
    let e = exp32(b, a2);
    let one = f32s(b, 1.0);
    let two = f32s(b, 2.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let t = b.ins().fsub(one, q);
    let large = copysign32(b, t, x);
    let lim = f32s(b, 0.625);
    let is_small = fcmp(b, FloatCC::LessThan, a, lim);
    sel(b, is_small, small, large)
}

/// `-|x|`, except `-20` for `x > 20`: the argument of `e^(−|x|)` in `sigmoid`, `silu` and `softplus`. Beyond
/// 20, `e^(−x) < 2^-28` no longer changes `1 + e^(−x)` nor `x + log1p(e^(−x))`, and the cap keeps large
/// positive `x` away from subnormal results (which cost a microcode assist on x86).
fn neg_abs_capped(b: &mut FunctionBuilder, x: Value) -> Value {
    let a = b.ins().fabs(x);
    let na = b.ins().fneg(a);
    let cap = f32s(b, 20.0);
    let big = fcmp(b, FloatCC::GreaterThan, x, cap);
    let m = f32s(b, -20.0);
    sel(b, big, m, na)
}

/// `sigmoid(x)` with `e = e^(−|x|) ∈ [0, 1]` and `d = 1 + e`: `1/d` for `x ≥ 0` and `e/d` for `x < 0` (one
/// division, never overflows; subnormal results come from `e`, so they are rounded twice at most).
fn sigmoid32(b: &mut FunctionBuilder, x: Value) -> Value {
    let na = neg_abs_capped(b, x);
    let e = exp32(b, na);
    let one = f32s(b, 1.0);
    let d = b.ins().fadd(one, e);
    let zero = f32s(b, 0.0);
    let neg = fcmp(b, FloatCC::LessThan, x, zero);
    let num = sel(b, neg, e, one);
    b.ins().fdiv(num, d)
}

/// `silu(x) = x/(1 + e^(−x))`, as `x/d` for `x ≥ 0` and `(x·e)/d` for `x < 0` (one division, no intermediate
/// overflow). For `x < 0`, `x·e` is formed as `((x·p)·s1)·s2` from the parts of `e` so that it is rounded once
/// into the subnormal range (`silu` stays nonzero down to `x ≈ -108.7`, below where `e` itself underflows);
/// below -150 (where the parts are clamped) it is `x·0`: `-0`, and NaN for `-inf` like the reference.
fn silu32(b: &mut FunctionBuilder, x: Value) -> Value {
    let na = neg_abs_capped(b, x);
    let (p, s1, s2) = exp32_parts(b, na);
    let e = b.ins().fmul(p, s1);
    let e = b.ins().fmul(e, s2);
    let one = f32s(b, 1.0);
    let d = b.ins().fadd(one, e);
    let xp = b.ins().fmul(x, p);
    let xp = b.ins().fmul(xp, s1);
    let xp = b.ins().fmul(xp, s2);
    let xe = b.ins().fmul(x, e);
    let lim = f32s(b, -150.0);
    let far = fcmp(b, FloatCC::LessThan, x, lim);
    let xe = sel(b, far, xe, xp);
    let zero = f32s(b, 0.0);
    let neg = fcmp(b, FloatCC::LessThan, x, zero);
    let num = sel(b, neg, xe, x);
    b.ins().fdiv(num, d)
}

/// `max(x, 0) + log1p(e^(−|x|))`, `log1p(t) = log(u) − ((u − 1) − t)/u` with `u = 1 + t` (the rounding error
/// of `u` is corrected to first order, dividing by `u` approximately as `·(2 − u)`; `log1p(t) = t` exactly once
/// `u` rounds to 1).
fn softplus32(b: &mut FunctionBuilder, x: Value) -> Value {
    let na = neg_abs_capped(b, x);
    let t = exp32(b, na);
    let one = f32s(b, 1.0);
    let u = b.ins().fadd(one, t);
    let l = log32(b, u);
    let um1 = b.ins().fsub(u, one);
    let c = b.ins().fsub(um1, t);
    // `c/u` to ~25% (u ∈ [1, 2]), enough for a correction below ½ ulp of 1; saves a division.
    let two = f32s(b, 2.0);
    let ru = b.ins().fsub(two, u);
    let c = b.ins().fmul(c, ru);
    let l = b.ins().fsub(l, c);
    let zero = f32s(b, 0.0);
    let pos = fcmp(b, FloatCC::GreaterThan, x, zero);
    let m = sel(b, pos, x, zero);
    b.ins().fadd(m, l)
}

// ---------------------------------------------------------------------------------------------------------
// Public F32X4 entry points.

/// `e^x`. Correct overflow to +inf (x > 88.72), gradual underflow to 0, `exp(-inf) = 0`, NaN → NaN.
/// Max error: see [`MAX_ULP`].
pub fn exp_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    exp32_fma(b, x)
}

/// `2^x`, same special cases as [`exp_f32x4`].
pub fn exp2_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    exp2_32(b, x)
}

/// Patches `log`/`log2` results for special inputs: `0 → -inf`, `< 0 or NaN → NaN`, `+inf → +inf`.
fn log_specials(b: &mut FunctionBuilder, x: Value, r: Value) -> Value {
    let inf = f32s(b, f32::INFINITY);
    let is_inf = fcmp(b, FloatCC::Equal, x, inf);
    let r = sel(b, is_inf, inf, r);
    let zero = f32s(b, 0.0);
    let is_zero = fcmp(b, FloatCC::Equal, x, zero);
    let ninf = f32s(b, f32::NEG_INFINITY);
    let r = sel(b, is_zero, ninf, r);
    let bad = fcmp(b, FloatCC::UnorderedOrLessThan, x, zero);
    let nan = f32s(b, f32::NAN);
    sel(b, bad, nan, r)
}

/// Natural logarithm: `log(0) = -inf`, `log(<0) = NaN`, `log(inf) = inf`, subnormal inputs exact.
pub fn log_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    let r = log32(b, x);
    log_specials(b, x, r)
}

/// Base-2 logarithm, same special cases as [`log_f32x4`]; exact at powers of two.
pub fn log2_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    let r = log2_32(b, x);
    log_specials(b, x, r)
}

/// `sin(x)`: accurate (see [`MAX_ULP`]) for `|x| ≤ 8e8`; finite and in [-1, 1] for every finite `x`;
/// NaN for ±inf and NaN.
pub fn sin_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, |b, v| sincos64(b, v, false))
}

/// `cos(x)`, as [`sin_f32x4`].
pub fn cos_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, |b, v| sincos64(b, v, true))
}

/// `tanh(x)`: ±1 for large `|x|`, `tanh(x) = x` for tiny `x`.
pub fn tanh_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    tanh32(b, x)
}

/// `1/(1 + e^(-x))`, saturating to exactly 0 and 1 (with subnormal results in between).
pub fn sigmoid_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    sigmoid32(b, x)
}

/// `x·sigmoid(x)` (rounded once; like the reference, `silu(-inf)` is NaN).
pub fn silu_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    silu32(b, x)
}

/// The exact GELU, `½x·(1 + erf(x/√2))`.
pub fn gelu_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, gelu64)
}

/// `max(x, 0) + log1p(e^(-|x|))`; NaN → NaN.
pub fn softplus_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    let r = softplus32(b, x);
    let nan = fcmp(b, FloatCC::Unordered, x, x);
    sel(b, nan, x, r)
}

/// Lane-wise min propagating NaN (NaN if either lane is NaN), else `y < x ? y : x` — exactly
/// `kc_ir::ops::nan_min`, including the order of signed zeros.
pub fn nan_min_f32x4(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let lt = fcmp(b, FloatCC::LessThan, y, x);
    let r = sel(b, lt, y, x);
    let nan = fcmp(b, FloatCC::Unordered, x, y);
    let s = b.ins().fadd(x, y);
    sel(b, nan, s, r)
}

/// Lane-wise max propagating NaN, else `y > x ? y : x` — exactly `kc_ir::ops::nan_max`.
pub fn nan_max_f32x4(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let gt = fcmp(b, FloatCC::GreaterThan, y, x);
    let r = sel(b, gt, y, x);
    let nan = fcmp(b, FloatCC::Unordered, x, y);
    let s = b.ins().fadd(x, y);
    sel(b, nan, s, r)
}

/// bf16 → f32 (exact): `bf16_bits` is an `I32X4` holding bf16 bits in the low 16 bits of each lane (the high
/// bits are ignored). Like `half::bf16::to_f32`, a signaling NaN comes out quiet.
pub fn bf16_to_f32x4(b: &mut FunctionBuilder, bf16_bits: Value) -> Value {
    let sh = b.ins().iconst(cranelift_codegen::ir::types::I32, 16);
    let t = b.ins().ishl(bf16_bits, sh);
    let f = bc(b, F32X4, t);
    let q = i32s(b, 0x0040_0000);
    let quiet = b.ins().bor(t, q);
    let nan = fcmp(b, FloatCC::Unordered, f, f);
    let r = sel(b, nan, quiet, t);
    bc(b, F32X4, r)
}

/// f32 → bf16 with round-to-nearest-even (overflow rounds to ±inf; NaN stays a quiet NaN with its sign);
/// returns an `I32X4` with the bf16 bits in the low 16 bits of each lane and zero high bits.
pub fn f32x4_to_bf16(b: &mut FunctionBuilder, x: Value) -> Value {
    let u = bc(b, I32X4, x);
    let sh16 = b.ins().iconst(cranelift_codegen::ir::types::I32, 16);
    let hi = b.ins().ushr(u, sh16);
    let one = i32s(b, 1);
    let odd = b.ins().band(hi, one);
    let bias = i32s(b, 0x7fff);
    let t = b.ins().iadd(u, bias);
    let t = b.ins().iadd(t, odd);
    let rounded = b.ins().ushr(t, sh16);
    let q = i32s(b, 0x40);
    let qnan = b.ins().bor(hi, q);
    let nan = fcmp(b, FloatCC::Unordered, x, x);
    sel(b, nan, qnan, rounded)
}

/// IEEE binary16 → f32, exact (subnormals, ±inf, NaN); input as for [`bf16_to_f32x4`].
pub fn f16_to_f32x4(b: &mut FunctionBuilder, bits: Value) -> Value {
    let sh13 = b.ins().iconst(cranelift_codegen::ir::types::I32, 13);
    let sh16 = b.ins().iconst(cranelift_codegen::ir::types::I32, 16);
    let em_mask = i32s(b, 0x7fff);
    let em = b.ins().band(bits, em_mask);
    let sm = i32s(b, 0x8000);
    let sign = b.ins().band(bits, sm);
    let sign = b.ins().ishl(sign, sh16);
    let t = b.ins().ishl(em, sh13);
    // Finite values (normal and subnormal): rescale the exponent by 2^(127-15) with one exact multiply.
    let tf = bc(b, F32X4, t);
    let scale = f32s(b, f32::from_bits((127 + 127 - 15) << 23));
    let fin = b.ins().fmul(tf, scale);
    let fin = bc(b, I32X4, fin);
    // Inf/NaN: set all exponent bits.
    let expmask = i32s(b, 0x7f80_0000);
    let infnan = b.ins().bor(t, expmask);
    let lim = i32s(b, 0x7bff);
    let is_infnan = b.ins().icmp(IntCC::SignedGreaterThan, em, lim);
    let r = sel(b, is_infnan, infnan, fin);
    let r = b.ins().bor(r, sign);
    bc(b, F32X4, r)
}

/// f32 → IEEE binary16 with round-to-nearest-even: overflow to ±inf, correctly rounded subnormals, NaN stays
/// a quiet NaN with its sign. Returns an `I32X4` with the bits in the low 16 bits of each lane.
pub fn f32x4_to_f16(b: &mut FunctionBuilder, x: Value) -> Value {
    // After F. Giesen's `float_to_half_fast3_rtne`, made branch-free.
    let u = bc(b, I32X4, x);
    let sm = i32s(b, i32::MIN);
    let sign = b.ins().band(u, sm);
    let a = b.ins().bxor(u, sign); // |x| bits, < 2^31 so signed compares work
                                   // Subnormal or zero result: align the mantissa with a magic addition (rounds to nearest even).
    let magic_bits = ((127 - 15) + (23 - 10) + 1) << 23;
    let magic = f32s(b, f32::from_bits(magic_bits));
    let af = bc(b, F32X4, a);
    let s = b.ins().fadd(af, magic);
    let s = bc(b, I32X4, s);
    let mb = i32s(b, magic_bits as i32);
    let sub = b.ins().isub(s, mb);
    // Normal result.
    let sh13 = b.ins().iconst(cranelift_codegen::ir::types::I32, 13);
    let m = b.ins().ushr(a, sh13);
    let one = i32s(b, 1);
    let odd = b.ins().band(m, one);
    let bias = i32s(b, ((15 - 127) << 23) + 0xfff);
    let n = b.ins().iadd(a, bias);
    let n = b.ins().iadd(n, odd);
    let norm = b.ins().ushr(n, sh13);
    let small_lim = i32s(b, 113 << 23);
    let is_sub = b.ins().icmp(IntCC::SignedLessThan, a, small_lim);
    let r = sel(b, is_sub, sub, norm);
    // Inf or NaN.
    let max_lim = i32s(b, ((127 + 16) << 23) - 1);
    let is_big = b.ins().icmp(IntCC::SignedGreaterThan, a, max_lim);
    let inf_lim = i32s(b, 0x7f80_0000);
    let is_nan = b.ins().icmp(IntCC::SignedGreaterThan, a, inf_lim);
    let qnan = i32s(b, 0x7e00);
    let inf = i32s(b, 0x7c00);
    let special = sel(b, is_nan, qnan, inf);
    let r = sel(b, is_big, special, r);
    let sh16 = b.ins().iconst(cranelift_codegen::ir::types::I32, 16);
    let s16 = b.ins().ushr(sign, sh16);
    b.ins().bor(r, s16)
}

/// Emits `op` applied lane-wise to an `F32X4` value `x`; returns an `F32X4`. `UnOp::Not` is not a float
/// operation (the caller never passes it) and returns `x` unchanged.
pub fn unary_f32x4(b: &mut FunctionBuilder, op: UnOp, x: Value) -> Value {
    match op {
        UnOp::Neg => b.ins().fneg(x),
        UnOp::Abs => b.ins().fabs(x),
        UnOp::Sqrt => b.ins().sqrt(x),
        UnOp::Rsqrt => {
            let s = b.ins().sqrt(x);
            let one = f32s(b, 1.0);
            b.ins().fdiv(one, s)
        }
        UnOp::Floor => b.ins().floor(x),
        UnOp::Ceil => b.ins().ceil(x),
        UnOp::Relu => {
            let zero = f32s(b, 0.0);
            let keep = fcmp(b, FloatCC::UnorderedOrGreaterThan, x, zero);
            sel(b, keep, x, zero)
        }
        UnOp::Exp => exp_f32x4(b, x),
        UnOp::Exp2 => exp2_f32x4(b, x),
        UnOp::Log => log_f32x4(b, x),
        UnOp::Log2 => log2_f32x4(b, x),
        UnOp::Sin => sin_f32x4(b, x),
        UnOp::Cos => cos_f32x4(b, x),
        UnOp::Tanh => tanh_f32x4(b, x),
        UnOp::Sigmoid => sigmoid_f32x4(b, x),
        UnOp::Silu => silu_f32x4(b, x),
        UnOp::Gelu => gelu_f32x4(b, x),
        UnOp::Softplus => softplus_f32x4(b, x),
        UnOp::Not => x,
    }
}
