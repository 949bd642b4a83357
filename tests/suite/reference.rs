//! Independent reference implementations of every kernel in `kernels/`, written from the maths of the
//! language contract (`language.md`) with plain loops over `f64`. Nothing here shares code with the
//! interpreter or the compiler.
//!
//! Numerics: inputs are read as they are stored (bf16 inputs are already rounded); everything is computed
//! in f64 and outputs are returned unrounded, to be compared with a tolerance that covers the output's
//! rounding. The exception is `muon_orthogonalize`, whose `bf16` lets round at every step and change the
//! result materially: there the reference rounds to bf16 exactly where the kernel stores.
//! Integer semantics follow the contract: `topk` is largest first with ties to the lower index, `argsort`
//! is stable, integer division floors.

#![allow(dead_code, clippy::too_many_arguments, clippy::needless_range_loop)]

use crate::common::round_bf16;
use kc_ir::{Tensor, TensorData};

/// A tensor's elements as f64.
pub fn vals(t: &Tensor) -> Vec<f64> {
    (0..t.len()).map(|i| t.get_f64(i)).collect()
}

/// An i32 tensor's elements.
pub fn ints(t: &Tensor) -> Vec<i32> {
    match &t.data {
        TensorData::I32(v) => v.clone(),
        _ => panic!("expected an i32 tensor, got {}", t.dtype()),
    }
}

/// A scalar (rank-0) tensor's value.
pub fn scalar(t: &Tensor) -> f64 {
    assert!(t.shape.is_empty(), "expected a scalar, got shape {:?}", t.shape);
    t.get_f64(0)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// Floor division, as `.ker` integer `/` does.
fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) - if b < 0 && a.rem_euclid(b) != 0 { 1 } else { 0 }
}

/// Indices `0..n` ordered as `topk` orders them: by value, largest first, ties to the lower index.
fn topk_order(x: &[f64]) -> Vec<usize> {
    let mut ix: Vec<usize> = (0..x.len()).collect();
    ix.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).expect("no NaN in topk input").then(a.cmp(&b)));
    ix
}

/// A stable ascending argsort of integers.
fn argsort_i32(x: &[i32]) -> Vec<i32> {
    let mut ix: Vec<usize> = (0..x.len()).collect();
    ix.sort_by_key(|&i| x[i]); // `sort_by_key` is stable
    ix.into_iter().map(|i| i as i32).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Optimizers

pub struct AdamW {
    pub param: Vec<f64>,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
}

/// One AdamW step (`adamw.ker`).
pub fn adamw(
    param: &[f64],
    grad: &[f64],
    m: &[f64],
    v: &[f64],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: i32,
) -> AdamW {
    let n = param.len();
    let mut out = AdamW { param: vec![0.0; n], m: vec![0.0; n], v: vec![0.0; n] };
    let bc1 = 1.0 - beta1.powi(step);
    let bc2 = 1.0 - beta2.powi(step);
    for i in 0..n {
        let mi = beta1 * m[i] + (1.0 - beta1) * grad[i];
        let vi = beta2 * v[i] + (1.0 - beta2) * grad[i] * grad[i];
        let m_hat = mi / bc1;
        let v_hat = vi / bc2;
        out.m[i] = mi;
        out.v[i] = vi;
        out.param[i] = param[i] * (1.0 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps);
    }
    out
}

/// Muon's five Newton-Schulz steps (`muon_orthogonalize.ker`), `g` of shape `[m, n]`. Rounds to bf16 where
/// the kernel stores into a `bf16` let (`x`, `a`, `b`); `a @ a` and `b @ x` stay unrounded, as
/// subexpressions do. The constants are the f32 values of the kernel's literals.
pub fn muon_orthogonalize(g: &[f64], m: usize, n: usize) -> Vec<f64> {
    let c = |x: f64| x as f32 as f64;
    let (ca, cb, cc, tiny) = (c(3.4445), c(-4.7750), c(2.0315), c(1e-7));
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut x: Vec<f64> = g.iter().map(|&v| round_bf16(v / (norm + tiny))).collect();
    for _step in 0..5 {
        // a = x @ x^T: [m, m]
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                a[i * m + j] = round_bf16((0..n).map(|k| x[i * n + k] * x[j * n + k]).sum());
            }
        }
        // b = -4.7750 a + 2.0315 (a @ a)
        let mut b = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                let aa: f64 = (0..m).map(|k| a[i * m + k] * a[k * m + j]).sum();
                b[i * m + j] = round_bf16(cb * a[i * m + j] + cc * aa);
            }
        }
        // x = 3.4445 x + b @ x
        let mut nx = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let bx: f64 = (0..m).map(|k| b[i * m + k] * x[k * n + j]).sum();
                nx[i * n + j] = round_bf16(ca * x[i * n + j] + bx);
            }
        }
        x = nx;
    }
    x
}

// ---------------------------------------------------------------------------------------------------------
// Attention

/// Causal grouped-query attention (`attention.ker`). Returns `(o [B,H,S,D], lse [B,H,S])`.
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    dims: (usize, usize, usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    attention_masked(q, k, v, scale, dims, true)
}

/// Grouped-query attention without a mask (`attention_full.ker`): every row sees every key.
pub fn attention_full(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    dims: (usize, usize, usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    attention_masked(q, k, v, scale, dims, false)
}

fn attention_masked(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    (b_, h_, g_, s_, t_, d_): (usize, usize, usize, usize, usize, usize),
    causal: bool,
) -> (Vec<f64>, Vec<f64>) {
    let r_ = h_ / g_;
    let qi = |b: usize, h: usize, i: usize, d: usize| ((b * h_ + h) * s_ + i) * d_ + d;
    let ki = |b: usize, g: usize, j: usize, d: usize| ((b * g_ + g) * t_ + j) * d_ + d;
    let mut o = vec![0.0; b_ * h_ * s_ * d_];
    let mut lse = vec![0.0; b_ * h_ * s_];
    for b in 0..b_ {
        for h in 0..h_ {
            let g = h / r_;
            for i in 0..s_ {
                let mut s = vec![f64::NEG_INFINITY; t_];
                for j in 0..t_ {
                    if !causal || j + s_ <= i + t_ {
                        s[j] = scale * (0..d_).map(|d| q[qi(b, h, i, d)] * k[ki(b, g, j, d)]).sum::<f64>();
                    }
                }
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l = mx + s.iter().map(|&x| (x - mx).exp()).sum::<f64>().ln();
                lse[(b * h_ + h) * s_ + i] = l;
                for d in 0..d_ {
                    o[qi(b, h, i, d)] = (0..t_).map(|j| (s[j] - l).exp() * v[ki(b, g, j, d)]).sum();
                }
            }
        }
    }
    (o, lse)
}

/// Attention backward (`attention_bwd.ker`). Returns `(dq, dk, dv)`.
pub fn attention_bwd(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    o: &[f64],
    dout: &[f64],
    lse: &[f64],
    scale: f64,
    (b_, h_, g_, s_, t_, d_): (usize, usize, usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let r_ = h_ / g_;
    let qi = |b: usize, h: usize, i: usize, d: usize| ((b * h_ + h) * s_ + i) * d_ + d;
    let ki = |b: usize, g: usize, j: usize, d: usize| ((b * g_ + g) * t_ + j) * d_ + d;
    let mut dq = vec![0.0; q.len()];
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    for b in 0..b_ {
        for h in 0..h_ {
            let g = h / r_;
            for i in 0..s_ {
                let delta: f64 = (0..d_).map(|d| dout[qi(b, h, i, d)] * o[qi(b, h, i, d)]).sum();
                let l = lse[(b * h_ + h) * s_ + i];
                for j in 0..t_ {
                    if j + s_ > i + t_ {
                        continue; // masked: p = 0, so ds = 0 and nothing flows
                    }
                    let sc: f64 = scale * (0..d_).map(|d| q[qi(b, h, i, d)] * k[ki(b, g, j, d)]).sum::<f64>();
                    let p = (sc - l).exp();
                    let dp: f64 = (0..d_).map(|d| dout[qi(b, h, i, d)] * v[ki(b, g, j, d)]).sum();
                    let ds = p * (dp - delta);
                    for d in 0..d_ {
                        dq[qi(b, h, i, d)] += scale * ds * k[ki(b, g, j, d)];
                        dk[ki(b, g, j, d)] += scale * ds * q[qi(b, h, i, d)];
                        dv[ki(b, g, j, d)] += p * dout[qi(b, h, i, d)];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

// ---------------------------------------------------------------------------------------------------------
// Normalization, activations, losses

/// RMSNorm forward (`rmsnorm.ker`): `(y [T,D], rstd [T])`.
pub fn rmsnorm(x: &[f64], w: &[f64], eps: f64, t_: usize, d_: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; t_ * d_];
    let mut rstd = vec![0.0; t_];
    for t in 0..t_ {
        let ms = (0..d_).map(|d| x[t * d_ + d] * x[t * d_ + d]).sum::<f64>() / d_ as f64;
        rstd[t] = 1.0 / (ms + eps).sqrt();
        for d in 0..d_ {
            y[t * d_ + d] = x[t * d_ + d] * rstd[t] * w[d];
        }
    }
    (y, rstd)
}

/// RMSNorm backward (`rmsnorm_bwd.ker`): `(dx [T,D], dw [D])`.
pub fn rmsnorm_bwd(x: &[f64], w: &[f64], rstd: &[f64], dy: &[f64], t_: usize, d_: usize) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; t_ * d_];
    let mut dw = vec![0.0; d_];
    for t in 0..t_ {
        let c = (0..d_).map(|d| dy[t * d_ + d] * w[d] * x[t * d_ + d]).sum::<f64>() / d_ as f64;
        for d in 0..d_ {
            let i = t * d_ + d;
            dx[i] = rstd[t] * (dy[i] * w[d] - x[i] * rstd[t] * rstd[t] * c);
            dw[d] += dy[i] * x[i] * rstd[t];
        }
    }
    (dx, dw)
}

/// LayerNorm forward (`layernorm.ker`), biased variance: `(y [T,D], mean [T], rstd [T])`.
pub fn layernorm(x: &[f64], w: &[f64], b: &[f64], eps: f64, t_: usize, d_: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; t_ * d_];
    let mut mean = vec![0.0; t_];
    let mut rstd = vec![0.0; t_];
    for t in 0..t_ {
        let row = &x[t * d_..(t + 1) * d_];
        let mu = row.iter().sum::<f64>() / d_ as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d_ as f64;
        mean[t] = mu;
        rstd[t] = 1.0 / (var + eps).sqrt();
        for d in 0..d_ {
            y[t * d_ + d] = (row[d] - mu) * rstd[t] * w[d] + b[d];
        }
    }
    (y, mean, rstd)
}

/// Row softmax over the last axis (`softmax.ker`).
pub fn softmax(x: &[f64], n_: usize, d_: usize) -> Vec<f64> {
    let mut y = vec![0.0; n_ * d_];
    for n in 0..n_ {
        let row = &x[n * d_..(n + 1) * d_];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for d in 0..d_ {
            y[n * d_ + d] = (row[d] - mx).exp() / z;
        }
    }
    y
}

/// SwiGLU (`swiglu.ker`, kernel `swiglu`): `silu(gate) * up`.
pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// SwiGLU backward (`swiglu.ker`, kernel `swiglu_bwd`): `(dgate, dup)`.
pub fn swiglu_bwd(gate: &[f64], up: &[f64], dh: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dgate = Vec::with_capacity(gate.len());
    let mut dup = Vec::with_capacity(gate.len());
    for i in 0..gate.len() {
        let (g, u, d) = (gate[i], up[i], dh[i]);
        let sg = sigmoid(g);
        dgate.push(d * u * sg * (1.0 + g * (1.0 - sg)));
        dup.push(d * silu(g));
    }
    (dgate, dup)
}

/// `a [M,K] @ b [K,N]` (`matmul.ker`).
pub fn matmul(a: &[f64], b: &[f64], m_: usize, k_: usize, n_: usize) -> Vec<f64> {
    let mut c = vec![0.0; m_ * n_];
    for i in 0..m_ {
        for j in 0..n_ {
            c[i * n_ + j] = (0..k_).map(|k| a[i * k_ + k] * b[k * n_ + j]).sum();
        }
    }
    c
}

/// Cross-entropy (`cross_entropy.ker`): `(loss [N], dlogits [N,V])`, averaged over rows with a target >= 0.
pub fn cross_entropy(logits: &[f64], target: &[i32], n_: usize, v_: usize) -> (Vec<f64>, Vec<f64>) {
    let n_valid = (target.iter().filter(|&&t| t >= 0).count() as f64).max(1.0);
    let mut loss = vec![0.0; n_];
    let mut dl = vec![0.0; n_ * v_];
    for n in 0..n_ {
        let tgt = target[n];
        if tgt < 0 {
            continue;
        }
        let row = &logits[n * v_..(n + 1) * v_];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        loss[n] = lse - row[tgt as usize];
        for v in 0..v_ {
            let onehot = if v as i32 == tgt { 1.0 } else { 0.0 };
            dl[n * v_ + v] = ((row[v] - lse).exp() - onehot) / n_valid;
        }
    }
    (loss, dl)
}

// ---------------------------------------------------------------------------------------------------------
// Mixture of experts

pub struct Route {
    /// `[T, K]` chosen experts, best first.
    pub idx: Vec<i32>,
    /// `[T, K]` routing weights.
    pub w: Vec<f64>,
    /// Per row: the smallest gap between scores at any point where the choice or order depends on a
    /// comparison (the KG-th vs the next group, consecutive chosen experts, the K-th vs the next kept one).
    /// A row whose margin is tiny may legitimately differ between f32 and f64 arithmetic.
    pub margin: Vec<f64>,
}

/// DeepSeek-V3 routing (`moe_route.ker`) with `K`, `NG`, `KG` as the kernel fixes them.
pub fn moe_route(x: &[f64], wg: &[f64], bias: &[f64], route_scale: f64, t_: usize, m_: usize, e_: usize) -> Route {
    const K: usize = 8;
    const NG: usize = 8;
    const KG: usize = 4;
    assert_eq!(e_ % NG, 0);
    let per = e_ / NG;
    let mut out = Route { idx: vec![0; t_ * K], w: vec![0.0; t_ * K], margin: vec![f64::INFINITY; t_] };
    for t in 0..t_ {
        let s: Vec<f64> =
            (0..e_).map(|e| sigmoid((0..m_).map(|m| x[t * m_ + m] * wg[e * m_ + m]).sum::<f64>())).collect();
        let sb: Vec<f64> = (0..e_).map(|e| s[e] + bias[e]).collect();
        // Each group scored by the sum of its two best experts.
        let gscore: Vec<f64> = (0..NG)
            .map(|g| {
                let grp = &sb[g * per..(g + 1) * per];
                let o = topk_order(grp);
                grp[o[0]] + grp[o[1]]
            })
            .collect();
        let gorder = topk_order(&gscore);
        let mut margin = f64::INFINITY;
        if KG < NG {
            margin = margin.min(gscore[gorder[KG - 1]] - gscore[gorder[KG]]);
        }
        let kept: Vec<bool> = (0..e_).map(|e| gorder[..KG].contains(&(e / per))).collect();
        let masked: Vec<f64> = (0..e_).map(|e| if kept[e] { sb[e] } else { f64::NEG_INFINITY }).collect();
        let eorder = topk_order(&masked);
        let nkept = kept.iter().filter(|&&k| k).count();
        for j in 0..K.min(nkept - 1) {
            margin = margin.min(masked[eorder[j]] - masked[eorder[j + 1]]);
        }
        out.margin[t] = margin;
        let chosen = &eorder[..K];
        let total: f64 = chosen.iter().map(|&e| s[e]).sum();
        for (j, &e) in chosen.iter().enumerate() {
            out.idx[t * K + j] = e as i32;
            out.w[t * K + j] = route_scale * s[e] / total;
        }
    }
    out
}

pub struct Permute {
    /// `[T*K, M]`
    pub xs: Vec<f64>,
    /// `[T*K]`
    pub order: Vec<i32>,
    /// `[E+1]`
    pub offsets: Vec<i32>,
}

/// Sort (token, slot) pairs by expert (`moe_permute.ker`).
pub fn moe_permute(x: &[f64], idx: &[i32], t_: usize, k_: usize, m_: usize, e_: usize) -> Permute {
    assert_eq!(idx.len(), t_ * k_);
    let order = argsort_i32(idx);
    let mut xs = vec![0.0; t_ * k_ * m_];
    for (r, &o) in order.iter().enumerate() {
        let tok = floor_div(o as i64, k_ as i64) as usize;
        xs[r * m_..(r + 1) * m_].copy_from_slice(&x[tok * m_..(tok + 1) * m_]);
    }
    let mut counts = vec![0i32; e_];
    for &e in idx {
        counts[e as usize] += 1;
    }
    let mut offsets = vec![0i32; e_ + 1];
    for e in 0..e_ {
        offsets[e + 1] = offsets[e] + counts[e];
    }
    Permute { xs, order, offsets }
}

/// The grouped SwiGLU feed-forward (`moe_experts.ker`): `ys [R, M]`.
pub fn moe_experts(
    xs: &[f64],
    offsets: &[i32],
    w1: &[f64],
    w3: &[f64],
    w2: &[f64],
    r_: usize,
    m_: usize,
    f_: usize,
    e_: usize,
) -> Vec<f64> {
    assert_eq!(offsets.len(), e_ + 1);
    let mut ys = vec![0.0; r_ * m_];
    for r in 0..r_ {
        let e = (0..e_)
            .find(|&e| offsets[e] as usize <= r && r < offsets[e + 1] as usize)
            .unwrap_or_else(|| panic!("row {r} is in no segment of {offsets:?}"));
        let h: Vec<f64> = (0..f_)
            .map(|f| {
                let a: f64 = (0..m_).map(|m| xs[r * m_ + m] * w1[(e * f_ + f) * m_ + m]).sum();
                let b: f64 = (0..m_).map(|m| xs[r * m_ + m] * w3[(e * f_ + f) * m_ + m]).sum();
                silu(a) * b
            })
            .collect();
        for m in 0..m_ {
            ys[r * m_ + m] = (0..f_).map(|f| h[f] * w2[(e * m_ + m) * f_ + f]).sum();
        }
    }
    ys
}

/// Weighted sum of each token's K expert outputs (`moe_combine.ker`): `y [T, M]`.
pub fn moe_combine(ys: &[f64], order: &[i32], w: &[f64], t_: usize, k_: usize, m_: usize) -> Vec<f64> {
    // pos = the inverse permutation of order: pair order[r] went to row r.
    let mut pos = vec![usize::MAX; t_ * k_];
    for (r, &o) in order.iter().enumerate() {
        pos[o as usize] = r;
    }
    let mut y = vec![0.0; t_ * m_];
    for t in 0..t_ {
        for m in 0..m_ {
            y[t * m_ + m] = (0..k_).map(|j| w[t * k_ + j] * ys[pos[t * k_ + j] * m_ + m]).sum();
        }
    }
    y
}

// ---------------------------------------------------------------------------------------------------------
// Checks of the reference's own helpers (they must be right for the kernel tests to mean anything).

#[test]
fn round_bf16_matches_half_on_f32_values() {
    use crate::common::Rng;
    let mut rng = Rng::new(7);
    // The last is 1 + 2^-8 (a bf16 tie) as a sum: Clippy reads the exact 1.00390625 as excess precision.
    let specials = [0.0f32, -0.0, 1.0, -1.0, 1e-40, -3e-39, f32::MAX, f32::MIN_POSITIVE, 3.0e38, 1.0 + 2f32.powi(-8)];
    let randoms = (0..20000).map(|_| f32::from_bits(rng.next_u64() as u32)).filter(|x| x.is_finite());
    for x in specials.into_iter().chain(randoms) {
        let want = half::bf16::from_f32(x).to_f64();
        let got = round_bf16(x as f64);
        assert!(got == want || (got == 0.0 && want == 0.0), "round_bf16({x:e}) = {got:e}, half says {want:e}");
    }
    // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
    assert_eq!(round_bf16(1.0 + 2f64.powi(-8)), 1.0);
    assert_eq!(round_bf16(1.0 + 3.0 * 2f64.powi(-8)), 1.0 + 2f64.powi(-6));
    // Just above the tie rounds up, which rounding through f32 first would lose.
    assert_eq!(round_bf16(1.0 + 2f64.powi(-8) + 2f64.powi(-40)), 1.0 + 2f64.powi(-7));
}

#[test]
fn topk_and_argsort_helpers() {
    assert_eq!(topk_order(&[1.0, 3.0, 3.0, -1.0, 2.0]), vec![1, 2, 4, 0, 3]);
    assert_eq!(argsort_i32(&[2, 0, 2, 1, 0]), vec![1, 4, 3, 0, 2]);
    assert_eq!(floor_div(-7, 2), -4);
    assert_eq!(floor_div(7, -2), -4);
    assert_eq!(floor_div(-8, 2), -4);
    assert_eq!(floor_div(7, 2), 3);
}

#[test]
fn reference_softmax_rows_sum_to_one_and_attention_matches_softmax() {
    // Attention with T = S = 1 per row degenerates to copying v; and its lse is the single score.
    let (o, lse) = attention(&[0.5, -0.25], &[1.0, 2.0], &[3.0, -4.0], 2.0, (1, 1, 1, 1, 1, 2));
    assert_eq!(o, vec![3.0, -4.0]);
    assert!((lse[0] - 2.0 * (0.5 - 0.5)).abs() < 1e-12);
    let y = softmax(&[0.0, 1.0, 2.0, -1.0, -1.0, -1.0], 2, 3);
    assert!((y[..3].iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!((y[3] - 1.0 / 3.0).abs() < 1e-12);
}

/// Central differences of `f` at `x`, one coordinate at a time.
fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            p[i] += h;
            let fp = f(&p);
            p[i] -= 2.0 * h;
            let fm = f(&p);
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

fn assert_grad(name: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len());
    for i in 0..analytic.len() {
        let (a, n) = (analytic[i], numeric[i]);
        assert!((a - n).abs() <= 1e-6 + 1e-5 * n.abs(), "{name}[{i}]: analytic {a:e}, finite difference {n:e}");
    }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = crate::common::Rng::new(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f64).collect()
}

/// The reference backward of attention is the gradient of `sum(o * dout)` of the reference forward.
#[test]
fn reference_attention_bwd_is_the_gradient() {
    for dims in [(1, 4, 2, 3, 5, 3), (1, 2, 2, 4, 4, 2)] {
        let (b, h, g, s, t, d) = dims;
        let q = pseudo_random(b * h * s * d, 1);
        let k = pseudo_random(b * g * t * d, 2);
        let v = pseudo_random(b * g * t * d, 3);
        let dout = pseudo_random(b * h * s * d, 4);
        let scale = 0.7;
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            let (o, _) = attention(q, k, v, scale, dims);
            o.iter().zip(&dout).map(|(a, b)| a * b).sum()
        };
        let (o, lse) = attention(&q, &k, &v, scale, dims);
        let (dq, dk, dv) = attention_bwd(&q, &k, &v, &o, &dout, &lse, scale, dims);
        assert_grad("dq", &dq, &numeric_grad(&q, |x| loss(x, &k, &v)));
        assert_grad("dk", &dk, &numeric_grad(&k, |x| loss(&q, x, &v)));
        assert_grad("dv", &dv, &numeric_grad(&v, |x| loss(&q, &k, x)));
    }
}

/// The reference RMSNorm backward is the gradient of `sum(y * dy)` of the reference forward.
#[test]
fn reference_rmsnorm_bwd_is_the_gradient() {
    let (t, d, eps) = (3, 5, 1e-5);
    let x = pseudo_random(t * d, 5);
    let w = pseudo_random(d, 6);
    let dy = pseudo_random(t * d, 7);
    let loss = |x: &[f64], w: &[f64]| -> f64 { rmsnorm(x, w, eps, t, d).0.iter().zip(&dy).map(|(a, b)| a * b).sum() };
    let (_, rstd) = rmsnorm(&x, &w, eps, t, d);
    let (dx, dw) = rmsnorm_bwd(&x, &w, &rstd, &dy, t, d);
    assert_grad("dx", &dx, &numeric_grad(&x, |p| loss(p, &w)));
    assert_grad("dw", &dw, &numeric_grad(&w, |p| loss(&x, p)));
}

/// The reference cross-entropy gradient is the gradient of the mean loss over the rows that count.
#[test]
fn reference_cross_entropy_gradient() {
    let (n, v) = (4, 6);
    let logits = pseudo_random(n * v, 8);
    let target = [2, -1, 0, 5];
    let mean_loss = |l: &[f64]| -> f64 { cross_entropy(l, &target, n, v).0.iter().sum::<f64>() / 3.0 };
    let (loss, dl) = cross_entropy(&logits, &target, n, v);
    assert_eq!(loss[1], 0.0);
    assert!(loss.iter().all(|&l| l >= 0.0));
    assert_grad("dlogits", &dl, &numeric_grad(&logits, mean_loss));
}

/// Routing worked by hand: with `wg = 0` every score is 1/2 and the bias alone decides.
#[test]
fn reference_moe_route_by_hand() {
    let (t, m, e) = (2, 3, 16);
    let x = pseudo_random(t * m, 9);
    let wg = vec![0.0; e * m];
    // Groups of two; bias rising with e but group 1 (experts 2, 3) boosted: groups 1, 7, 6, 5 win.
    let mut bias: Vec<f64> = (0..e).map(|i| 0.01 * i as f64).collect();
    bias[2] = 0.3;
    bias[3] = 0.25;
    let r = moe_route(&x, &wg, &bias, 2.0, t, m, e);
    let want_row = [2, 3, 15, 14, 13, 12, 11, 10];
    assert_eq!(&r.idx[..8], &want_row);
    assert_eq!(&r.idx[8..], &want_row);
    assert!(r.w.iter().all(|&w| (w - 2.0 / 8.0).abs() < 1e-15));
    assert!(r.margin.iter().all(|&g| (g - 0.01).abs() < 1e-9), "{:?}", r.margin);
}

/// Permute by hand: stable by expert, offsets exclusive sums with E + 1 entries.
#[test]
fn reference_moe_permute_and_combine_by_hand() {
    // T = 3 tokens, K = 2, M = 1; E = 4 with expert 2 unused.
    let x = [10.0, 20.0, 30.0];
    let idx = [3, 0, 0, 1, 3, 0];
    let p = moe_permute(&x, &idx, 3, 2, 1, 4);
    assert_eq!(p.order, vec![1, 2, 5, 3, 0, 4]);
    assert_eq!(p.offsets, vec![0, 3, 4, 4, 6]);
    assert_eq!(p.xs, vec![10.0, 20.0, 30.0, 20.0, 10.0, 30.0]);
    let y = moe_combine(&p.xs, &p.order, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2, 1);
    assert_eq!(y, vec![30.0, 140.0, 330.0]);
}

/// Muon's output is close to orthogonal rows: `o o^T` near the identity (Newton-Schulz with these
/// coefficients leaves singular values roughly in 0.7..1.2).
#[test]
fn reference_muon_is_nearly_orthogonal() {
    let (m, n) = (4, 9);
    let g: Vec<f64> = pseudo_random(m * n, 10).into_iter().map(round_bf16).collect();
    let o = muon_orthogonalize(&g, m, n);
    for i in 0..m {
        for j in 0..m {
            let dot: f64 = (0..n).map(|k| o[i * n + k] * o[j * n + k]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 0.5, "(o o^T)[{i}, {j}] = {dot}");
        }
    }
    assert!(o.iter().all(|&v| round_bf16(v) == v), "outputs are bf16 values");
}
