//! Inline, vectorized elementwise math on `F32X4` values, emitted with a [`FunctionBuilder`].
//!
//! Every function here takes and returns 128-bit vectors and uses only instructions that the x86-64
//! backend lowers with SSE4.1 (no FMA, no AVX): lane-wise float arithmetic, `sqrt`, `floor`/`ceil`/`nearest`,
//! `fcmp`, `bitselect`, bitwise ops, `iadd`/`isub`, shifts by constants, `bitcast`, `shuffle`,
//! `fvpromote_low`/`fvdemote` and splatted constants. Scalars are computed by splatting into a vector and
//! extracting lane 0, so scalar tails get bit-identical results.
//!
//! # Method
//!
//! The transcendental functions (`exp`, `exp2`, `log`, `log2`, `sin`, `cos`, `tanh`, `sigmoid`, `silu`,
//! `gelu`, `softplus`) are evaluated in `f64`: the four lanes are widened into two `F64X2` halves
//! (`fvpromote_low`, after a `shuffle` for the high half), the function is approximated in `f64` with a
//! relative error far below 2^-24 (around 1e-13 or better), and the result is narrowed once with
//! `fvdemote`. The reference, `kc_ir::ops::unary_f32`, also computes in `f64` and rounds once, so the
//! results are correctly rounded except when the exact value lies within ~1e-13 (relative) of a rounding
//! midpoint between two `f32`s, and then they are off by one ulp. Denormal `f32` inputs are normal `f64`s and
//! denormal `f32` outputs are produced by the single final rounding, so the subnormal range needs no special
//! handling. The `f64` kernels:
//!
//! - `exp`: `k = nearest(x·log2 e)`, `r = x − k·ln2` with ln2 split in two (Cody–Waite; the high part has 40
//!   bits so `k·ln2_hi` is exact), `e^r` by its Taylor polynomial of degree 11 on `|r| ≤ ln2/2` (truncation
//!   error < 1e-14), scaled by `2^k` as two factors `2^⌊k/2⌋·2^(k−⌊k/2⌋)` built from exponent bits, so overflow
//!   and underflow happen exactly at the right place; `x` is first clamped to [-200, 1000] (`e^-200` is far
//!   below every `f32` but a normal `f64`, so intermediate results never go denormal).
//! - `exp2`: `k = nearest(x)`, `r = x − k` (exact), then `e^(r·ln2)` as above.
//! - `log`/`log2`: `x = 2^e·m` with `m ∈ [√½, √2)` from the exponent bits, `f = m − 1`, `s = f/(2+f)`,
//!   `log(1+f) = f − f²/2 + s·(f²/2 + R(s²))` (the fdlibm arrangement) with `R` the atanh Taylor series
//!   `2z/3 + 2z²/5 + … + 2z⁷/15` in `z = s²` (truncation < 1e-13); `log = e·ln2 + log(1+f)`,
//!   `log2 = e + log(1+f)·log2 e`. Zero, negative, infinite and NaN inputs are patched with selects.
//! - `sin`/`cos`: `j = nearest(x·2/π)`, `r = x − j·π/2` with π/2 split into four parts (24, 24, 24 and 53
//!   bits, 125 bits in all, from mpmath) so that every `j·Pᵢ` is exact for `|j| < 2^29`; then the Taylor
//!   polynomials of `sin` (degree 15) and `cos` (degree 16) on `|r| ≤ π/4`, selected and negated by the
//!   quadrant `j mod 4`. The reduction is accurate for `|x| < 2^29·π/2 ≈ 8.4e8`, including arguments close to
//!   multiples of π/2. Beyond that the result is finite and in [-1, 1] but not accurate (no Payne–Hanek).
//! - `tanh`: the odd Taylor polynomial (degree 13) for `|x| < 1/16`, else `±(1 − 2/(e^(2|x|) + 1))`.
//! - `sigmoid`: `1/(1 + e^(−x))`; `silu`: `x·sigmoid(x)` (both in `f64`, so the `f32` result is rounded once).
//! - `softplus`: `max(x, 0) + log1p(e^(−|x|))`, `log1p(t)` as `log(1+t)` for `t ≥ 2^-10` and as the Taylor
//!   polynomial `t − t²/2 + t³/3 − t⁴/4` below.
//! - `gelu`: `½x·(1 + erf(x/√2))`. For `|z| < 1` (`z = x/√2`), `erf` by its Taylor series to `z^29`; for
//!   `|z| ≥ 1`, `erfc(|z|) = e^(−z²)·P(1/|z|)/|z|` where `P` is a degree-17 Chebyshev fit (numpy, 600
//!   Chebyshev nodes, relative error 2.7e-12 on `1 ≤ |z| ≤ 10.5`; `|z|` is clamped to 10.5 inside `P`, where
//!   the result is far below the smallest `f32` anyway), and `1 + erf(z)` is `2 − erfc(z)` or `erfc(−z)`.
//!
//! `sqrt`, `floor`, `ceil`, `neg`, `abs` and `relu` are exact; `rsqrt` is `1/sqrt(x)` in `f32` (two roundings,
//! at most 1 ulp off the once-rounded reference).
//!
//! # Measured error
//!
//! See [`MAX_ULP`]: the maximum distance in ulps (counting representable `f32`s, so subnormals count as ulps
//! of `2^-149`) from `kc_ir::ops::unary_f32`, measured by `codegen/tests/math.rs` over every 1024th `f32`
//! bit pattern, 10^6 random bit patterns and the special values. For `sin`/`cos` the bound holds for
//! `|x| ≤ 8e8`; beyond it only "finite and in [-1, 1]" is guaranteed for finite `x`.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32X4, F64X2, I32X4, I64X2, I8X16};
use cranelift_codegen::ir::{ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use kc_ir::graph::UnOp;

/// Error bound of each operation, in ulps of the `f32` result, against `kc_ir::ops::unary_f32` (asserted by
/// `codegen/tests/math.rs`; see the module documentation for how it is measured). `sin`/`cos`: for
/// `|x| ≤ 8e8`. `not` is not a float operation and is absent.
///
/// Measured (5.4 million inputs per operation): 0 ulp for every operation except `rsqrt` (1 ulp: two
/// roundings) and `gelu` (1 ulp, at x = -4.7649, where the reference's own `1 + erf` cancels; for `x < -5`
/// the test compares `gelu` with the accurate `½x·erfc(-x/√2)` instead, because `unary_f32` collapses to 0
/// there). The transcendental functions are bounded by 1 ulp by construction (an `f64` evaluation with
/// relative error ≲ 1e-12, rounded once), so they are correctly rounded except within ~1e-12 of a midpoint.
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
    (UnOp::Sigmoid, 1.0),
    (UnOp::Silu, 1.0),
    (UnOp::Gelu, 1.0),
    (UnOp::Softplus, 1.0),
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
const LN2: f64 = std::f64::consts::LN_2;
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

/// `2^x` in f64.
fn exp2_64(b: &mut FunctionBuilder, x: Value) -> Value {
    let x = clamp64(b, x, -300.0, 1100.0);
    let k = b.ins().nearest(x);
    let r = b.ins().fsub(x, k);
    let ln2 = f64s(b, LN2);
    let r = b.ins().fmul(r, ln2);
    let p = exp_poly(b, r);
    scale2(b, p, k)
}

/// For a positive, finite, normal f64 `x`: `(e, log(m))` with `x = 2^e·m`, `m ∈ [√½, √2)`.
fn log64_parts(b: &mut FunctionBuilder, x: Value) -> (Value, Value) {
    const SQRT_HALF_BITS: i64 = 0x3fe6a09e667f3bcd;
    let ix = bc(b, I64X2, x);
    let off = i64s(b, 0x3ff0000000000000 - SQRT_HALF_BITS);
    let ix = b.ins().iadd(ix, off);
    let sh = b.ins().iconst(cranelift_codegen::ir::types::I32, 52);
    let eb = b.ins().ushr(ix, sh);
    let two52 = i64s(b, 0x4330000000000000); // bits of 2^52
    let ef = b.ins().bor(eb, two52);
    let ef = bc(b, F64X2, ef);
    let c = f64s(b, 4503599627370496.0 + 1023.0);
    let e = b.ins().fsub(ef, c);
    let mm = i64s(b, 0x000fffffffffffff);
    let mb = b.ins().band(ix, mm);
    let sh_bits = i64s(b, SQRT_HALF_BITS);
    let mb = b.ins().iadd(mb, sh_bits);
    let m = bc(b, F64X2, mb);
    let one = f64s(b, 1.0);
    let f = b.ins().fsub(m, one);
    let two = f64s(b, 2.0);
    let d = b.ins().fadd(two, f);
    let s = b.ins().fdiv(f, d);
    let z = b.ins().fmul(s, s);
    let rc: Vec<f64> = (1..=7).map(|k| 2.0 / (2 * k + 1) as f64).collect();
    let rp = horner(b, z, &rc);
    let r = b.ins().fmul(z, rp);
    let half = f64s(b, 0.5);
    let hf = b.ins().fmul(half, f);
    let hfsq = b.ins().fmul(hf, f);
    let u = b.ins().fadd(hfsq, r);
    let u = b.ins().fmul(s, u);
    let v = b.ins().fsub(f, hfsq);
    let l = b.ins().fadd(v, u);
    (e, l)
}

fn log64(b: &mut FunctionBuilder, x: Value) -> Value {
    let (e, l) = log64_parts(b, x);
    let ln2 = f64s(b, LN2);
    let el = b.ins().fmul(e, ln2);
    b.ins().fadd(el, l)
}

fn log2_64(b: &mut FunctionBuilder, x: Value) -> Value {
    let (e, l) = log64_parts(b, x);
    let c = f64s(b, LOG2E);
    let t = b.ins().fmul(l, c);
    b.ins().fadd(e, t)
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

/// `copysign(mag, sgn)` for F64X2 with `mag ≥ 0`.
fn copysign64(b: &mut FunctionBuilder, mag: Value, sgn: Value) -> Value {
    let m = i64s(b, i64::MIN);
    let m = bc(b, F64X2, m);
    let s = b.ins().band(sgn, m);
    b.ins().bor(mag, s)
}

fn tanh64(b: &mut FunctionBuilder, x: Value) -> Value {
    let a = b.ins().fabs(x);
    // Small: x·(1 + z·T(z)), Taylor coefficients of tanh.
    let z = b.ins().fmul(x, x);
    let tc = [1.0, -1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0, -1382.0 / 155925.0, 21844.0 / 6081075.0];
    let p = horner(b, z, &tc);
    let small = b.ins().fmul(x, p);
    // Large: 1 - 2/(e^(2a) + 1).
    let a2 = b.ins().fadd(a, a);
    let e = exp64(b, a2);
    let one = f64s(b, 1.0);
    let two = f64s(b, 2.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let t = b.ins().fsub(one, q);
    let large = copysign64(b, t, x);
    let lim = f64s(b, 0.0625);
    let is_small = fcmp(b, FloatCC::LessThan, a, lim);
    sel(b, is_small, small, large)
}

fn sigmoid64(b: &mut FunctionBuilder, x: Value) -> Value {
    let nx = b.ins().fneg(x);
    let e = exp64(b, nx);
    let one = f64s(b, 1.0);
    let d = b.ins().fadd(one, e);
    b.ins().fdiv(one, d)
}

fn silu64(b: &mut FunctionBuilder, x: Value) -> Value {
    let s = sigmoid64(b, x);
    b.ins().fmul(x, s)
}

fn softplus64(b: &mut FunctionBuilder, x: Value) -> Value {
    let a = b.ins().fabs(x);
    let na = b.ins().fneg(a);
    let e = exp64(b, na);
    let one = f64s(b, 1.0);
    let ope = b.ins().fadd(one, e);
    let big = log64(b, ope);
    let small = horner(b, e, &[0.0, 1.0, -0.5, 1.0 / 3.0, -0.25]);
    let lim = f64s(b, 1.0 / 1024.0);
    let is_small = fcmp(b, FloatCC::LessThan, e, lim);
    let l = sel(b, is_small, small, big);
    let zero = f64s(b, 0.0);
    let m = b.ins().fmax(x, zero);
    b.ins().fadd(m, l)
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
// Public F32X4 entry points.

/// `e^x`. Correct overflow to +inf (x > 88.72), gradual underflow to 0, `exp(-inf) = 0`, NaN → NaN.
/// Max error: see [`MAX_ULP`].
pub fn exp_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, exp64)
}

/// `2^x`, same special cases as [`exp_f32x4`].
pub fn exp2_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, exp2_64)
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
    let r = via_f64(b, x, log64);
    log_specials(b, x, r)
}

/// Base-2 logarithm, same special cases as [`log_f32x4`]; exact at powers of two.
pub fn log2_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    let r = via_f64(b, x, log2_64);
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
    via_f64(b, x, tanh64)
}

/// `1/(1 + e^(-x))`, saturating to exactly 0 and 1 (with subnormal results in between).
pub fn sigmoid_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, sigmoid64)
}

/// `x·sigmoid(x)` (rounded once; like the reference, `silu(-inf)` is NaN).
pub fn silu_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, silu64)
}

/// The exact GELU, `½x·(1 + erf(x/√2))`.
pub fn gelu_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    via_f64(b, x, gelu64)
}

/// `max(x, 0) + log1p(e^(-|x|))`; NaN → NaN.
pub fn softplus_f32x4(b: &mut FunctionBuilder, x: Value) -> Value {
    let r = via_f64(b, x, softplus64);
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
