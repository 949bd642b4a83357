//! Accuracy and exactness tests for `kc_codegen::math`: each operation is JIT-compiled (native ISA flags,
//! `opt_level=speed`, verifier on) into a loop over 4-lane vectors and compared with the `f64` reference
//! `kc_ir::ops::unary_f32` (or `half` for the conversions).

use cranelift_codegen::ir::types::{F32X4, I32X4, I64};
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Type, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use kc_codegen::math;
use kc_ir::graph::UnOp;
use kc_ir::ops::unary_f32;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Un(UnOp),
    NanMin,
    NanMax,
    Bf16Widen,
    Bf16Narrow,
    F16Widen,
    F16Narrow,
}

/// `fn(src, src2, dst, n)`: `dst[i] = op(src[i], src2[i])` for `i < n`, `n` a multiple of 4.
type Kernel = unsafe extern "C" fn(*const u32, *const u32, *mut u32, i64);

fn in_ty(k: Kind) -> Type {
    match k {
        Kind::Bf16Widen | Kind::F16Widen => I32X4,
        _ => F32X4,
    }
}

fn emit(b: &mut FunctionBuilder, k: Kind, x: Value, y: Value) -> Value {
    match k {
        Kind::Un(op) => math::unary_f32x4(b, op, x),
        Kind::NanMin => math::nan_min_f32x4(b, x, y),
        Kind::NanMax => math::nan_max_f32x4(b, x, y),
        Kind::Bf16Widen => math::bf16_to_f32x4(b, x),
        Kind::Bf16Narrow => math::f32x4_to_bf16(b, x),
        Kind::F16Widen => math::f16_to_f32x4(b, x),
        Kind::F16Narrow => math::f32x4_to_f16(b, x),
    }
}

fn jit(kinds: &[Kind]) -> (JITModule, Vec<Kernel>) {
    let mut fb = settings::builder();
    fb.set("opt_level", "speed").unwrap();
    fb.set("enable_verifier", "true").unwrap();
    let isa = cranelift_native::builder().unwrap().finish(settings::Flags::new(fb)).unwrap();
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let ptr = module.target_config().pointer_type();
    let fcfg = module.target_config();
    let mut ids = Vec::new();
    for (i, &k) in kinds.iter().enumerate() {
        let mut ctx = module.make_context();
        for _ in 0..3 {
            ctx.func.signature.params.push(AbiParam::new(ptr));
        }
        ctx.func.signature.params.push(AbiParam::new(I64));
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = b.create_block();
            let header = b.create_block();
            let body = b.create_block();
            let exit = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.append_block_param(header, I64);
            b.switch_to_block(entry);
            let p = b.block_params(entry).to_vec();
            let (src, src2, dst, n) = (p[0], p[1], p[2], p[3]);
            let zero = b.ins().iconst(I64, 0);
            b.ins().jump(header, &[zero.into()]);
            b.switch_to_block(header);
            let i = b.block_params(header)[0];
            let done = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedGreaterThanOrEqual, i, n);
            b.ins().brif(done, exit, &[], body, &[]);
            b.switch_to_block(body);
            let off = b.ins().imul_imm_s(i, 4);
            let off = if ptr == I64 { off } else { b.ins().ireduce(ptr, off) };
            let a = b.ins().iadd(src, off);
            let a2 = b.ins().iadd(src2, off);
            let d = b.ins().iadd(dst, off);
            let x = b.ins().load(in_ty(k), MemFlagsData::new(), a, 0);
            let y = b.ins().load(in_ty(k), MemFlagsData::new(), a2, 0);
            let r = emit(&mut b, k, x, y);
            b.ins().store(MemFlagsData::new(), r, d, 0);
            let i4 = b.ins().iadd_imm_s(i, 4);
            b.ins().jump(header, &[i4.into()]);
            b.switch_to_block(exit);
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(fcfg);
        }
        let id = module.declare_function(&format!("k{i}"), Linkage::Local, &ctx.func.signature).unwrap();
        module.define_function(id, &mut ctx).unwrap_or_else(|e| panic!("{k:?}: {e:?}"));
        ids.push(id);
    }
    module.finalize_definitions().unwrap();
    let fns = ids
        .iter()
        .map(|&id| {
            let p = module.get_finalized_function(id);
            // SAFETY: the function was built with exactly this signature.
            unsafe { std::mem::transmute::<*const u8, Kernel>(p) }
        })
        .collect();
    (module, fns)
}

fn run(f: Kernel, src: &[u32], src2: &[u32]) -> Vec<u32> {
    assert!(src.len().is_multiple_of(4) && src2.len() == src.len());
    let mut dst = vec![0u32; src.len()];
    // SAFETY: all three buffers hold `src.len()` elements, a multiple of 4.
    unsafe { f(src.as_ptr(), src2.as_ptr(), dst.as_mut_ptr(), src.len() as i64) };
    dst
}

fn pad4(mut v: Vec<u32>) -> Vec<u32> {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// Distance in representable f32s (±0 are the same point).
fn ulps(a: f32, b: f32) -> f64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() { 0.0 } else { f64::INFINITY };
    }
    fn ord(f: f32) -> i64 {
        let i = f.to_bits() as i32;
        if i < 0 {
            -i64::from(i & 0x7fff_ffff)
        } else {
            i64::from(i)
        }
    }
    (ord(a) - ord(b)).unsigned_abs() as f64
}

fn specials() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x007f_ffff),
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
        1.0,
        -1.0,
        0.5,
        2.0,
        88.7,
        -88.7,
        88.72283,
        88.72284,
        -87.33654,
        -103.97,
        -103.98,
        104.0,
        -104.0,
        127.99999,
        128.0,
        -126.0,
        -149.0,
        -150.0,
        1e4,
        -1e4,
        12345.678,
        1e5,
        1e6,
        8e8,
        1e9,
        1e20,
        -1e30,
        std::f32::consts::PI,
        std::f32::consts::FRAC_PI_2,
        std::f32::consts::FRAC_PI_4,
        1e-30,
        -1e-30,
        1e-40,
        0.0625,
        -0.0625,
        std::f32::consts::SQRT_2,
        0.70710677,
        14.2,
        -14.2,
        -14.5,
    ];
    // Close to multiples of π/2 (hard cases for the sin/cos reduction).
    for k in 1..2000 {
        let c = k as f64 * std::f64::consts::FRAC_PI_2;
        let f = c as f32;
        for d in -2i32..=2 {
            v.push(f32::from_bits((f.to_bits() as i32 + d) as u32));
        }
    }
    v
}

fn inputs() -> Vec<u32> {
    let mut v: Vec<u32> = (0..(1u64 << 22)).map(|i| (i << 10) as u32).collect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6b63);
    v.extend((0..1_000_000).map(|_| rng.random::<u32>()));
    // Random values in the ranges that matter most.
    v.extend((0..200_000).map(|_| rng.random_range(-20.0f32..20.0).to_bits()));
    v.extend((0..100_000).map(|_| rng.random_range(-1.0e4f32..1.0e4).to_bits()));
    v.extend((0..100_000).map(|_| rng.random_range(-110.0f32..90.0).to_bits()));
    v.extend(specials().iter().map(|f| f.to_bits()));
    pad4(v)
}

/// The reference: `unary_f32`, except for `gelu` of `x < -5`, where `unary_f32`'s `1 + erf(x/√2)` cancels
/// catastrophically in `f64` (it is 0 or a multiple of 2^-53 for `x < -8.3`); there the accurate
/// `½x·erfc(-x/√2)` is the reference (`gelu_reference_cancels` checks the two agree above -5).
fn reference(op: UnOp, x: f32) -> f32 {
    if op == UnOp::Gelu && x < -5.0 {
        let d = f64::from(x);
        (0.5 * d * libm::erfc(-d / std::f64::consts::SQRT_2)) as f32
    } else {
        unary_f32(op, x).unwrap()
    }
}

#[test]
fn gelu_reference_cancels() {
    // Above -5 the two forms agree to within an ulp; below -8.3 `unary_f32` collapses to 0.
    let mut worst = 0.0f64;
    for i in 0..=50_000 {
        let x = -5.0 + 10.0 * i as f32 / 50_000.0;
        let d = f64::from(x);
        let e = (0.5 * d * libm::erfc(-d / std::f64::consts::SQRT_2)) as f32;
        worst = worst.max(ulps(e, unary_f32(UnOp::Gelu, x).unwrap()));
    }
    assert!(worst <= 1.0, "{worst}");
    assert_eq!(unary_f32(UnOp::Gelu, -9.0).unwrap(), 0.0);
}

/// Upper bound on the error of `op` within the accurate range, from `math::MAX_ULP`.
fn bound(op: UnOp) -> f32 {
    math::MAX_ULP.iter().find(|(o, _)| *o == op).map(|(_, e)| *e).unwrap()
}

#[test]
fn unary_ops_match_reference() {
    let ops: Vec<UnOp> = UnOp::ALL.iter().copied().filter(|&o| o != UnOp::Not).collect();
    let kinds: Vec<Kind> = ops.iter().map(|&o| Kind::Un(o)).collect();
    let (_module, fns) = jit(&kinds);
    let src = inputs();
    let results: Vec<(UnOp, f64, f32, f64, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = ops
            .iter()
            .zip(&fns)
            .map(|(&op, &f)| {
                let src = &src;
                s.spawn(move || {
                    let out = run(f, src, src);
                    let (mut worst, mut at, mut worst_far, mut bad) = (0.0f64, 0.0f32, 0.0f64, 0u64);
                    for (&xb, &yb) in src.iter().zip(&out) {
                        let x = f32::from_bits(xb);
                        let y = f32::from_bits(yb);
                        let r = reference(op, x);
                        let e = ulps(y, r);
                        let far = matches!(op, UnOp::Sin | UnOp::Cos) && x.abs() > 8e8;
                        if far {
                            // Beyond the reduction's range: finite and in [-1, 1] for finite x.
                            if x.is_finite() && (y.is_nan() || y.abs() > 1.0) {
                                bad += 1;
                            }
                            worst_far = worst_far.max(e);
                        } else if e > worst {
                            worst = e;
                            at = x;
                        }
                    }
                    (op, worst, at, worst_far, bad)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut fail = Vec::new();
    // Rough cost, on an L1-resident buffer of finite values, one op at a time.
    let hot: Vec<u32> = (0..4096).map(|i| (i as f32 * 0.05 - 100.0).to_bits()).collect();
    let mut hot_out = vec![0u32; hot.len()];
    let ns: Vec<f64> = fns
        .iter()
        .map(|&f| {
            // The best of 10 runs of 20 passes, to shrug off a busy machine.
            (0..10)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    for _ in 0..20 {
                        // SAFETY: both buffers hold `hot.len()` elements, a multiple of 4.
                        unsafe { f(hot.as_ptr(), hot.as_ptr(), hot_out.as_mut_ptr(), hot.len() as i64) };
                    }
                    t0.elapsed().as_secs_f64() * 1e9 / (20 * hot.len()) as f64
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    for ((op, worst, at, worst_far, bad), ns) in results.into_iter().zip(ns) {
        println!("{:>9}: max {worst} ulp (at {at:e}; {:#x}); {ns:.2} ns/element", op.name(), at.to_bits());
        if matches!(op, UnOp::Sin | UnOp::Cos) {
            println!("{:>9}  |x| > 8e8: max {worst_far} ulp, {bad} results outside [-1, 1]", "");
        }
        if worst > f64::from(bound(op)) || bad > 0 {
            fail.push(op.name());
        }
    }
    assert!(fail.is_empty(), "out of bounds: {fail:?}");
}

#[test]
fn special_cases() {
    use UnOp::*;
    let inf = f32::INFINITY;
    let cases: &[(UnOp, f32, f32)] = &[
        (Exp, inf, inf),
        (Exp, -inf, 0.0),
        (Exp, 89.0, inf),
        (Exp, -1e9, 0.0),
        (Exp, -104.0, 0.0),
        (Exp, 0.0, 1.0),
        (Exp2, 128.0, inf),
        (Exp2, -149.0, f32::from_bits(1)),
        (Exp2, -126.0, f32::MIN_POSITIVE),
        (Exp2, -inf, 0.0),
        (Exp2, 10.0, 1024.0),
        (Log, 0.0, -inf),
        (Log, -0.0, -inf),
        (Log, -1.0, f32::NAN),
        (Log, -inf, f32::NAN),
        (Log, inf, inf),
        (Log, 1.0, 0.0),
        (Log2, 0.0, -inf),
        (Log2, -1e-30, f32::NAN),
        (Log2, inf, inf),
        (Log2, f32::from_bits(1), -149.0),
        (Log2, 1024.0, 10.0),
        (Tanh, 20.0, 1.0),
        (Tanh, -20.0, -1.0),
        (Tanh, inf, 1.0),
        (Tanh, -inf, -1.0),
        (Tanh, 1e-30, 1e-30),
        (Tanh, -1e-30, -1e-30),
        (Sigmoid, 20.0, 1.0),
        (Sigmoid, inf, 1.0),
        (Sigmoid, -inf, 0.0),
        (Sigmoid, -200.0, 0.0),
        (Silu, inf, inf),
        (Silu, -inf, f32::NAN),
        (Silu, -1e9, -0.0),
        (Silu, 1e30, 1e30),
        (Softplus, inf, inf),
        (Softplus, -inf, 0.0),
        (Softplus, 1e30, 1e30),
        (Softplus, -200.0, 0.0),
    ];
    let mut ops: Vec<UnOp> = cases.iter().map(|c| c.0).collect();
    ops.dedup();
    let kinds: Vec<Kind> = ops.iter().map(|&o| Kind::Un(o)).collect();
    let (_module, fns) = jit(&kinds);
    for &(op, x, want) in cases {
        let f = fns[ops.iter().position(|&o| o == op).unwrap()];
        let src = vec![x.to_bits(); 4];
        let got = f32::from_bits(run(f, &src, &src)[0]);
        assert!(got == want || (got.is_nan() && want.is_nan()), "{}({x:e}) = {got:e}, want {want:e}", op.name());
        if !want.is_nan() {
            assert_eq!(got.is_sign_negative(), want.is_sign_negative(), "{}({x:e}) = {got:e}: sign", op.name());
        }
    }
    // NaN in, NaN out.
    for (i, op) in ops.iter().enumerate() {
        let src = vec![f32::NAN.to_bits(); 4];
        assert!(f32::from_bits(run(fns[i], &src, &src)[0]).is_nan(), "{}(NaN)", op.name());
    }
}

/// ns/element of each transcendental operation on L1-resident buffers of three kinds of input: moderate values
/// (`[-10, 10]`), the wide sweep `[-100, 105)` of `unary_ops_match_reference` (which includes arguments whose
/// results underflow or overflow) and "masked" values (`-1e9` and `-inf`, as in masked softmax). Run with
/// `cargo test --release -p kc-codegen --test math timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing() {
    let ops = [
        UnOp::Exp,
        UnOp::Exp2,
        UnOp::Log,
        UnOp::Log2,
        UnOp::Tanh,
        UnOp::Sigmoid,
        UnOp::Silu,
        UnOp::Softplus,
        UnOp::Sin,
        UnOp::Cos,
        UnOp::Gelu,
    ];
    let kinds: Vec<Kind> = ops.iter().map(|&o| Kind::Un(o)).collect();
    let (_module, fns) = jit(&kinds);
    let n = 4096;
    let sets: [(&str, Vec<u32>); 3] = [
        ("[-10, 10]", (0..n).map(|i| (i as f32 * 20.0 / n as f32 - 10.0).to_bits()).collect()),
        ("[-100, 105)", (0..n).map(|i| (i as f32 * 0.05 - 100.0).to_bits()).collect()),
        ("masked", (0..n).map(|i| if i % 2 == 0 { -1e9f32 } else { f32::NEG_INFINITY }.to_bits()).collect()),
    ];
    let mut out = vec![0u32; n];
    println!("{:>9}  {:>11}  {:>11}  {:>11}", "ns/elem", sets[0].0, sets[1].0, sets[2].0);
    for (&op, &f) in ops.iter().zip(&fns) {
        let ns: Vec<f64> = sets
            .iter()
            .map(|(_, src)| {
                (0..20)
                    .map(|_| {
                        let t0 = std::time::Instant::now();
                        for _ in 0..20 {
                            // SAFETY: both buffers hold `n` elements, a multiple of 4.
                            unsafe { f(src.as_ptr(), src.as_ptr(), out.as_mut_ptr(), n as i64) };
                        }
                        t0.elapsed().as_secs_f64() * 1e9 / (20 * n) as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        println!("{:>9}  {:>11.2}  {:>11.2}  {:>11.2}", op.name(), ns[0], ns[1], ns[2]);
    }
}

#[test]
fn scalar_lane_is_the_vector_lane() {
    // Lane-independence: the same value in every lane position gives the same bits.
    let kinds: Vec<Kind> = [UnOp::Exp, UnOp::Sin, UnOp::Gelu, UnOp::Log].iter().map(|&o| Kind::Un(o)).collect();
    let (_module, fns) = jit(&kinds);
    let xs: Vec<u32> = pad4([0.3f32, -2.5, 17.0, 1e-3, 100.0, -7.25, 3e3].iter().map(|f| f.to_bits()).collect());
    for f in fns {
        let out = run(f, &xs, &xs);
        for (i, &x) in xs.iter().enumerate() {
            let splat = vec![x; 4];
            let o = run(f, &splat, &splat);
            assert!(o.iter().all(|&v| v == out[i]));
        }
    }
}

#[test]
fn nan_min_max() {
    let (_module, fns) = jit(&[Kind::NanMin, Kind::NanMax]);
    let vals = [0.0f32, -0.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 2.5, f32::from_bits(1)];
    let mut a = Vec::new();
    let mut b = Vec::new();
    for &x in &vals {
        for &y in &vals {
            a.push(x.to_bits());
            b.push(y.to_bits());
        }
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..10_000 {
        a.push(rng.random::<u32>());
        b.push(rng.random::<u32>());
    }
    let (a, b) = (pad4(a), pad4(b));
    let mn = run(fns[0], &a, &b);
    let mx = run(fns[1], &a, &b);
    for i in 0..a.len() {
        let (x, y) = (f32::from_bits(a[i]), f32::from_bits(b[i]));
        for (got, want) in [(mn[i], kc_ir::ops::nan_min(x, y)), (mx[i], kc_ir::ops::nan_max(x, y))] {
            let got = f32::from_bits(got);
            assert!((got.is_nan() && want.is_nan()) || got.to_bits() == want.to_bits(), "{x} {y}: {got} vs {want}");
        }
    }
}

fn narrow_inputs() -> Vec<u32> {
    let mut v: Vec<u32> = specials().iter().map(|f| f.to_bits()).collect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    v.extend((0..1_000_000).map(|_| rng.random::<u32>()));
    // Values around the f16 range limits, subnormals and rounding ties.
    v.extend((0..200_000).map(|_| rng.random_range(-70000.0f32..70000.0).to_bits()));
    v.extend((0..200_000).map(|_| rng.random_range(-1e-4f32..1e-4).to_bits()));
    v.extend((0..65536u32).flat_map(|h| {
        let f = half::f16::from_bits(h as u16).to_f32().to_bits();
        [f, f.wrapping_add(1 << 12), f.wrapping_add(1 << 12).wrapping_add(1), f.wrapping_sub(1)]
    }));
    v.extend((0..65536u32).flat_map(|h| [(h << 16) | 0x8000, (h << 16) | 0x7fff, (h << 16) | 0x8001]));
    pad4(v)
}

#[test]
fn half_conversions() {
    let (_module, fns) = jit(&[Kind::Bf16Widen, Kind::F16Widen, Kind::Bf16Narrow, Kind::F16Narrow]);
    // Widening: exhaustive, bit-exact (NaN payloads included), with junk in the high bits ignored.
    let all: Vec<u32> = (0..65536u32).map(|h| h | 0xabcd_0000).collect();
    let bw = run(fns[0], &all, &all);
    let hw = run(fns[1], &all, &all);
    for h in 0..65536u32 {
        let bf = half::bf16::from_bits(h as u16).to_f32();
        let hf = half::f16::from_bits(h as u16).to_f32();
        assert_eq!(bw[h as usize], bf.to_bits(), "bf16 {h:#x}");
        if hf.is_nan() {
            assert!(f32::from_bits(hw[h as usize]).is_nan(), "f16 {h:#x}");
            assert_eq!(hw[h as usize] >> 31, hf.to_bits() >> 31, "f16 NaN sign {h:#x}");
        } else {
            assert_eq!(hw[h as usize], hf.to_bits(), "f16 {h:#x}");
        }
    }
    // Narrowing.
    let src = narrow_inputs();
    let bn = run(fns[2], &src, &src);
    let hn = run(fns[3], &src, &src);
    for (i, &xb) in src.iter().enumerate() {
        let x = f32::from_bits(xb);
        assert_eq!(bn[i] >> 16, 0, "bf16 high bits for {x:e}");
        assert_eq!(hn[i] >> 16, 0, "f16 high bits for {x:e}");
        let b = half::bf16::from_bits(bn[i] as u16);
        let h = half::f16::from_bits(hn[i] as u16);
        if x.is_nan() {
            assert!(b.is_nan() && h.is_nan(), "NaN {xb:#x}");
            assert_eq!(bn[i] >> 15, xb >> 31, "bf16 NaN sign {xb:#x}");
            assert_eq!(hn[i] >> 15, xb >> 31, "f16 NaN sign {xb:#x}");
        } else {
            assert_eq!(bn[i] as u16, half::bf16::from_f32(x).to_bits(), "bf16 of {x:e} ({xb:#x})");
            assert_eq!(hn[i] as u16, half::f16::from_f32(x).to_bits(), "f16 of {x:e} ({xb:#x})");
        }
    }
}

/// `kc_rt_exp_f32` (the host routine the JIT calls for the `exp`s of a vector statement, 16 lanes at a time)
/// gives the inline `f32x4` `exp`'s bits on every input (NaN for NaN), at every length and offset, so the
/// bound of `MAX_ULP` holds for it too.
#[test]
fn exp_routine_is_the_inline_exp() {
    routine_is_the_inline_op(UnOp::Exp, kc_runtime::host::rowmath::kc_rt_exp_f32);
}

/// `kc_rt_silu_f32` (the routine for the `silu`s of a vector statement: SwiGLU's gate) gives the inline
/// `silu`'s bits on every input, the subnormal results of large negative arguments and the capped positive
/// ones included.
#[test]
fn silu_routine_is_the_inline_silu() {
    routine_is_the_inline_op(UnOp::Silu, kc_runtime::host::rowmath::kc_rt_silu_f32);
}

/// `kc_rt_row_silu_mul` (SwiGLU's gate `silu(a) · b` in one pass) gives the bits of what the JIT computed
/// before it: `kc_rt_silu_f32`, the product in `f32`, then `kc_rt_f32_to_bf16` for a bf16 destination, at
/// every length (the 16-lane body and the tail), NaNs aside.
#[test]
fn gate_routine_is_silu_then_the_product() {
    use kc_runtime::host::rowmath::{kc_rt_row_silu_mul, kc_rt_silu_f32, ROW_SILU_DST_BF16};
    let xs = inputs();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let a: Vec<f32> = xs.iter().map(|&b| f32::from_bits(b)).collect();
    let b: Vec<f32> = (0..a.len()).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    let mut want = a.clone();
    // SAFETY: `want` holds `want.len()` elements.
    unsafe { kc_rt_silu_f32(want.as_mut_ptr(), want.len() as i64) };
    for (w, y) in want.iter_mut().zip(&b) {
        *w *= *y;
    }
    let mut want_bf = vec![0u16; a.len()];
    // SAFETY: `want_bf` and `want` hold `a.len()` elements each.
    unsafe { kc_runtime::native::kc_rt_f32_to_bf16(want_bf.as_mut_ptr().cast(), want.as_ptr().cast(), a.len() as i64) };
    let mut got = vec![0f32; a.len()];
    let mut got_bf = vec![0u16; a.len()];
    let mut at = 0;
    let mut len = 1;
    while at < a.len() {
        let n = len.min(a.len() - at);
        // SAFETY: `n` elements from `at` are inside every vector.
        unsafe {
            kc_rt_row_silu_mul(got.as_mut_ptr().add(at).cast(), a.as_ptr().add(at), b.as_ptr().add(at), 0, n as i64);
            let bf = got_bf.as_mut_ptr().add(at).cast();
            kc_rt_row_silu_mul(bf, a.as_ptr().add(at), b.as_ptr().add(at), ROW_SILU_DST_BF16, n as i64);
        }
        at += n;
        len = len * 7 % 1009 + 1;
    }
    for i in 0..a.len() {
        let (g, w) = (got[i], want[i]);
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "silu({:e})·{}: {g:e}, want {w:e}",
            a[i],
            b[i]
        );
        let nan = (want_bf[i] & 0x7FFF) > 0x7F80;
        assert!(got_bf[i] == want_bf[i] || nan && (got_bf[i] & 0x7FFF) > 0x7F80, "bf16 of silu({:e})·{}", a[i], b[i]);
    }
}

fn routine_is_the_inline_op(op: UnOp, routine: unsafe extern "C" fn(*mut f32, i64)) {
    let (_module, fns) = jit(&[Kind::Un(op)]);
    let xs = inputs();
    let want = run(fns[0], &xs, &xs);
    let mut got: Vec<f32> = xs.iter().map(|&b| f32::from_bits(b)).collect();
    // Odd lengths and offsets, so the routine's vector loop and its remainder both run.
    let mut at = 0;
    let mut len = 1;
    while at < got.len() {
        let n = len.min(got.len() - at);
        // SAFETY: `n` elements from `at` are inside `got`.
        unsafe { routine(got.as_mut_ptr().add(at), n as i64) };
        at += n;
        len = len * 7 % 1009 + 1;
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let w = f32::from_bits(w);
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{op:?}({:e}): routine {g:e}, inline {w:e}",
            f32::from_bits(xs[i])
        );
    }
}

/// `kc_rt_f32_to_bf16` (the host routine that rounds the f32 results of a SIMD vector statement into its bf16
/// destination, 16 lanes at a time) gives the inline rounding's bits on every input, NaNs included.
#[test]
fn bf16_routine_is_the_inline_rounding() {
    let (_module, fns) = jit(&[Kind::Bf16Narrow]);
    let mut xs = inputs();
    xs.extend(narrow_inputs());
    let xs = pad4(xs);
    let want = run(fns[0], &xs, &xs);
    let mut got = vec![0u16; xs.len()];
    let (mut at, mut len) = (0, 1);
    while at < xs.len() {
        let n = len.min(xs.len() - at);
        // SAFETY: `n` elements from `at` are inside both buffers.
        unsafe { kc_runtime::native::kc_rt_f32_to_bf16(got.as_mut_ptr().add(at), xs.as_ptr().add(at), n as i64) };
        at += n;
        len = len * 7 % 1009 + 1;
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(u32::from(g), w, "bf16({:e})", f32::from_bits(xs[i]));
    }
}
