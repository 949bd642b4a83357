//! Matmul groups on the cube: `c[.., m, n] = Σ_k a[.., m, k] · b[.., k, n]` with both factors plain loads of
//! float GM tensors (either one may be transposed: `x @ transpose(w)` loads `w[n, k]`), leading batch
//! axes iterated in an outer loop, and an optional elementwise epilogue. The cube multiplies bf16 or f16
//! operands, or f32 ones in its f32 mode (a 512-byte fractal holds 16 × 8 of them, so a cycle does half
//! the MACs); operands of two dtypes are multiplied in f32, the narrower one widened (exactly) by its copy
//! into L1, as the interpreter widens it for the product.
//!
//! Tiling (CANN's `TCubeTiling`): base blocks `bm × bn × bk`, multiples of the 16-wide fractal, with
//! `bm·bn·4 ≤ L0C/2`, `bm·bk·2 ≤ L0A/2` and `bk·bn·2 ≤ L0B/2`; remainders are partial tiles (a smaller
//! `rows × cols` window: nothing is padded in GM). The (batch, m-block, n-block) triples are dealt to the
//! cube cores round-robin, or on a target with `contiguous_chunks` (the host) as one contiguous run per
//! core (`block_of`); K is not split across cores. Per block, on each cube core:
//!
//! ```text
//! wait FIX->M                                   (L0C free: the previous block's result is out)
//! for each k step (slot s = step mod 2, counted across blocks so that slots strictly alternate):
//!   wait MTE1->MTE2;  copy.MTE2 a, b tiles GM -> L1[s];            set MTE2->MTE1
//!   wait MTE2->MTE1;  wait M->MTE1;  copy.MTE1 L1[s] -> L0A[s], L0B[s];  set MTE1->MTE2;  set MTE1->M
//!   wait MTE1->M;     mmad L0A[s] · L0B[s] (+)-> L0C;               set M->MTE1
//! set M->FIX; wait M->FIX; copy.FIX L0C -> GM (converting f32 to the output dtype); set FIX->M
//! ```
//! Each pipe pair uses one event; flags are matched in order (the n-th wait takes the n-th set), so the
//! two "slot free" flags primed before the loop let the copy-in of step i+1 overlap the mmad of step i.
//! Every primed flag is drained after the loop.
//!
//! A transposed operand is copied GM -> L1 as it lies (contiguous rows: `w[n0.., k0..]` as a `bn × bk`
//! tile), and transposed on the way L1 -> L0B by MTE1 (as the hardware's `load2d` with transpose does):
//! one copy per k of the step, reading a column of the L1 tile (row stride `bk`, one element per row) and
//! writing a row of L0B (row stride 1). A transposed `a` is handled the same way into L0A.
//!
//! The output: if the group's other members are only casts of the matmul (or there are none), FixPipe
//! copies L0C straight to each stored member's GM tensor, converting the dtype (a `Unit::Cube` launch).
//! Otherwise the epilogue runs on the vector cores (a `Unit::Mixed` launch with `ratio` vector cores per
//! cube core). On ascend910b cube results reach the vector cores only through GM; on ascend950 we use the
//! same path (simplest; the direct L0C -> UB path is left for later): each cube core has a GM workspace
//! (tensor role `Workspace`) with one `bm × bn` f32 area per block it runs; after FixPipe writes a block
//! into its area the cube core sets cross flag 0; each of its vector cores waits on flag 0, copies its
//! share of the block's rows (split between the `ratio` vector cores) into UB, evaluates the epilogue
//! members there and stores every stored member to GM (MTE3).
//!
//! Why one area per block rather than a reused one: handing a reused area back needs the cube core to
//! wait for *all* its vector cores. The verifier models a cube core's n-th cross wait as consuming the
//! n-th set of each of its vector cores (a barrier, like the hardware's AIC-waits-for-both-AIVs mode), but
//! the simulator counts sets from any partner, so no flag protocol is both verified and simulated
//! correctly; with one area per block there is no back channel. The cost is workspace memory (the
//! blocks of a core times `bm·bn·4` bytes, for each core of the launch) and that a cube core may run
//! ahead of its vector cores by more than the hardware's 15 counts of a cross flag when it runs more than
//! 15 blocks (the simulator does not cap counters).
//!
//! Symmetric products (a target with `symmetric_triangle`, the host): when the anchor and every stored member
//! are provably symmetric in their last two axes ([`crate::passes::symmetry`]: Muon's `x @ transpose(x)`
//! and `-4.775 * a + 2.0315 * (a @ a)`), the blocks are square and only the `mb (mb + 1) / 2` on and above
//! the diagonal of each batch are dealt ([`block_coords`]). After storing an off-diagonal block at
//! `(m0, n0)`, the same core writes it again at `(n0, m0)`, transposed, as a loop of column copies: FixPipe
//! out of L0C on the direct path (column `j` of the block becomes row `n0 + j` of the result; the same f32
//! values converted alike, so the same bits as computing the mirrored block), MTE3 out of the stored
//! member's UB tile on the mixed path. The mirrored block is the computed transpose bit for bit where the
//! mmads sum the same products in the same k order for `(i, j)` and `(j, i)`, as the host's do. On such a
//! target `s @ s` with `s` symmetric also reads its `b` as the transpose of `s`'s rows ([`symmetric_b`]).
//!
//! The workspace tensor is not in the [`GmPlan`] the caller passes: the launch refers to it as tensor
//! `gm.tensors.len()`, and [`matmul_with_workspace`] returns the [`GmTensor`] to append there.

use super::{add, bin, c, contiguous_item, flag, mul, v, GmPlan, LaunchBuilder};
use crate::diag::Diagnostic;
use crate::dtype::DType;
use crate::dtype::ScalarTy;
use crate::graph::{BinOp, Expr, ExprKind, Graph, NodeKind, ReduceOp, ValueId, VarId};
use crate::launch::Binding;
use crate::passes::fuse::{contraction, Group, GroupKind};
use crate::target::Target;
use crate::tile::*;
use std::collections::BTreeMap;

/// The launch for a matmul group, or `None` if the group is not one this tiler handles. A launch that
/// uses a workspace refers to tensor `gm.tensors.len()` (see [`matmul_with_workspace`]).
pub fn matmul(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Launch, Diagnostic>> {
    matmul_with_workspace(g, group, name, gm, target, b).map(|r| r.map(|(l, _)| l))
}

/// [`matmul`], with the workspace tensor the launch uses (as tensor `gm.tensors.len()`), if it uses one:
/// the caller appends it to the program's tensors.
pub fn matmul_with_workspace(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<(Launch, Option<GmTensor>), Diagnostic>> {
    let plan = symmetric_b(analyze(g, group, gm, b)?, target);
    Some(tuned(g, group, name, gm, target, b, &plan).map(|(l, ws, _)| (l, ws)))
}

/// [`matmul_with_workspace`], with the candidates the model weighed (empty when a hint fixed the blocks).
pub fn matmul_tuned(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<TunedLaunch, Diagnostic>> {
    let plan = symmetric_b(analyze(g, group, gm, b)?, target);
    Some(tuned(g, group, name, gm, target, b, &plan))
}

/// A launch, the workspace it uses (if any) and the candidates weighed for it.
pub type TunedLaunch = (Launch, Option<GmTensor>, Vec<super::Candidate>);

/// A matmul tiling: base blocks `bm × bn × bk` (L0), `kf` of K resident in L1 per step (a multiple of
/// `bk`), and whether L0C is double-buffered (the FixPipe of one block overlaps the next block's mmads).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub bm: i64,
    pub bn: i64,
    pub bk: i64,
    pub kf: i64,
    pub l0c_slots: u32,
}

impl Blocks {
    fn text(&self) -> String {
        format!("bm {} bn {} bk {} kf {} l0c x{}", self.bm, self.bn, self.bk, self.kf, self.l0c_slots)
    }
}

/// The candidate tilings of an `m × n × k` matmul with `esize`-byte inputs that fit the target: base blocks
/// from 16 up to 256 (bm, bn) and the target's `matmul_bk` (bk: 256 by default, 512 on the host) within L0A/L0B (two slots each) and L0C (one or two slots),
/// L1 depths `kf` (multiples of `bk`, two slots of both operands within L1). Sizes past the (padded)
/// problem are not tried.
pub fn candidates(target: &Target, m: i64, n: i64, k: i64, esize: i64) -> Vec<Blocks> {
    let (Some(l0a), Some(l0b), Some(l0c), Some(l1)) = (
        target.memory("l0a").map(|x| x.usable() as i64),
        target.memory("l0b").map(|x| x.usable() as i64),
        target.memory("l0c").map(|x| x.usable() as i64),
        target.memory("l1").map(|x| x.usable() as i64),
    ) else {
        return Vec::new();
    };
    let r16 = |x: i64| (x.max(1) + 15) / 16 * 16;
    let bk_top = target.matmul_bk.map_or(256, |x| i64::from(x).max(16));
    let sizes = |limit: i64, top: i64| -> Vec<i64> {
        let mut v: Vec<i64> = [16, 32, 64, 128, 192, 256, 512].into_iter().filter(|x| *x <= top).collect();
        let cap = r16(limit);
        v.retain(|x| *x <= cap);
        if cap < top && !v.contains(&cap) {
            v.push(cap);
        }
        v.sort_unstable();
        v
    };
    let mut out = Vec::new();
    for bm in sizes(m, 256) {
        for bn in sizes(n, 256) {
            for l0c_slots in [1u32, 2].into_iter().filter(|&x| x <= target.matmul_l0c_slots.unwrap_or(2).max(1)) {
                if bm * bn * 4 * l0c_slots as i64 > l0c {
                    continue;
                }
                for bk in sizes(k, bk_top).into_iter().filter(|x| *x >= 32 || k <= 16) {
                    if bm * bk * esize * 2 > l0a || bk * bn * esize * 2 > l0b {
                        continue;
                    }
                    let kmax = r16(k);
                    for mult in [1i64, 2, 4] {
                        let kf = bk * mult;
                        if mult > 1 && kf > kmax.max(bk) {
                            break;
                        }
                        if 2 * (bm + bn) * kf * esize > l1 {
                            break;
                        }
                        out.push(Blocks { bm, bn, bk, kf, l0c_slots });
                    }
                }
            }
        }
    }
    out
}

/// The most matmul candidates (those with the lowest bounds) the model simulates.
const SIMULATED: usize = 16;

/// A lower bound on a candidate's cycles on one cube core: the core with the most blocks, each block as long
/// as its busiest pipe (cube, MTE2 or MTE1, full tiles at the target's rates; FixPipe added to the cube's
/// chain when L0C has one slot).
fn lower_bound(target: &Target, p: &Plan, c: Blocks) -> f64 {
    let costs = crate::cost::Costs { target, gm_dilation: 1.0 };
    let e = p.dtype.size_bytes() as u64;
    let (bm, bn, bk, kf) = (c.bm.min(p.m.max(1)), c.bn.min(p.n.max(1)), c.bk, c.kf);
    let batches: i64 = p.batch_dims.iter().product();
    let blocks =
        batches * block_count((p.m + c.bm - 1) / c.bm, (p.n + c.bn - 1) / c.bn, triangle(target, p, c.bm, c.bn));
    let cores = (target.cube_cores as i64).min(blocks).max(1);
    let per_core = ((blocks + cores - 1) / cores) as f64;
    let (k1, k0) = (((p.k + kf - 1) / kf) as f64, ((p.k + bk - 1) / bk) as f64);
    let kl = bk.min(p.k.max(1));
    let m_pipe = k0 * costs.mmad_cycles(bm, kl, bn, e);
    let fix = costs.copy_cycles("l0c", "gm", (bm * bn) as u64 * 4);
    let mte2 = k1
        * (costs.copy_cycles("gm", "l1", (bm * kf.min(p.k)) as u64 * e)
            + costs.copy_cycles("gm", "l1", (kf.min(p.k) * bn) as u64 * e));
    let mte1 = k0
        * (costs.copy_cycles("l1", "l0a", (bm * kl) as u64 * e) + costs.copy_cycles("l1", "l0b", (kl * bn) as u64 * e));
    let cube = if c.l0c_slots == 1 { m_pipe + fix } else { m_pipe };
    per_core * cube.max(mte2).max(mte1)
}

/// Builds the candidates with the lowest bounds, ranks them with the cycle model and keeps the fastest (ties
/// to the earlier candidate); a tile hint fixes the base block instead.
fn tuned(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    bd: &Binding,
    p: &Plan,
) -> Result<TunedLaunch, Diagnostic> {
    let esize = p.dtype.size_bytes() as i64;
    let hint = hinted_blocks(&super::tile_hints(g, group), p.batch_dims.len(), p.m, p.n)?;
    if let Some((hm, hn, h)) = hint {
        let bk = hinted_bk(target, hm, hn, p.k, esize);
        let blocks = Blocks { bm: hm, bn: hn, bk, kf: bk, l0c_slots: 1 };
        let (l, ws) = build(g, group, name, gm, target, bd, p, blocks, Some(&h))?;
        return Ok((l, ws, Vec::new()));
    }
    let mut cands = candidates(target, p.m, p.n, p.k, esize);
    // A symmetric product takes square blocks, to compute one triangle of them.
    if p.symmetric && target.symmetric_triangle && cands.iter().any(|c| c.bm == c.bn) {
        cands.retain(|c| c.bm == c.bn);
    }
    // Simulate the candidates with the best lower bounds; the others cannot do better than their bound.
    // Among equal bounds the deeper k steps come first (so a tie keeps fewer, larger copies and mmads).
    let mut scored: Vec<(f64, Blocks)> = cands.into_iter().map(|c| (lower_bound(target, p, c), c)).collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then((b.1.bk, b.1.kf).cmp(&(a.1.bk, a.1.kf))));
    let mut tuner = super::Tuner::new(name);
    let mut simulated = 0;
    let mut best = f64::INFINITY;
    for (bound, cand) in scored {
        // Branch and bound: a candidate whose bound is no better than the best estimate so far cannot win.
        let budget = target.tuning_simulations.map_or(SIMULATED, |n| n.max(1) as usize);
        if simulated >= budget || bound >= best {
            tuner.bound_only(cand.text(), bound);
            continue;
        }
        let Ok((l, ws)) = build(g, group, name, gm, target, bd, p, cand, None) else { continue };
        let cycles = super::rank(gm, &l, ws.as_ref(), target)?;
        best = best.min(cycles);
        tuner.offer(cand.text(), cycles, (l, ws));
        simulated += 1;
    }
    let Some(((l, ws), weighed)) = tuner.finish() else {
        return Err(Diagnostic::error(
            crate::diag::Code::Internal,
            crate::span::Span::default(),
            format!("matmul launch `{name}`: no base block fits L0"),
        ));
    };
    Ok((l, ws, weighed))
}

/// A factor of the contraction.
#[derive(Clone, Debug)]
struct Operand {
    tensor: TensorId,
    /// Whether the factor is indexed `[.., k, m]` (for `a`) or `[.., n, k]` (for `b`).
    transposed: bool,
}

/// How an epilogue member reads a value from outside the group.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Ext {
    /// At the member's own indices (a tile like the result's).
    Tile,
    /// A vector along n (`bias[n]`): one value per column.
    Col,
    /// A vector along m: one value per row.
    Row,
    /// A scalar.
    Scalar,
}

struct Plan {
    anchor: ValueId,
    a: Operand,
    b: Operand,
    /// The operands' dtype in L1 and L0 (both the same: bf16, f16 or f32).
    dtype: DType,
    batch_dims: Vec<i64>,
    m: i64,
    n: i64,
    k: i64,
    /// The epilogue members (every member but the anchor), in graph order; empty on the direct path.
    epilogue: Vec<ValueId>,
    /// Whether FixPipe writes the results directly (no epilogue, or casts only).
    direct: bool,
    /// The anchor's body when the contraction is a `sum` inside an elementwise expression of it
    /// (`sum[k](x[m, k] * w[k, n]) + s[m, n]`, `.. * scale`), with that `sum` replaced by a read of the anchor
    /// itself at its own indices: the vector cores evaluate it on each block, reading the sum (f32) from the
    /// workspace, before the epilogue members, which see the anchor's value.
    wrap: Option<Expr>,
    ext: BTreeMap<ValueId, Ext>,
    /// Whether the anchor and every stored member are provably symmetric in their last two axes
    /// ([`crate::passes::symmetry`]): on a target with `symmetric_triangle`, square base blocks, the blocks on
    /// and above the diagonal computed and each off-diagonal one also written transposed (see [`build`]).
    symmetric: bool,
    /// Whether the product is `s @ s` with `s` provably symmetric (both factors loads of the same value at
    /// `[.., i, k]` and `[.., k, j]`): `b`'s window `s[k0.., n0..]` is then, element by element, the transpose
    /// of the rows `s[n0.., k0..]`, the window a block of row `n0` reads as its `a` (see [`symmetric_b`]).
    square_of_symmetric: bool,
}

/// On a target with `symmetric_triangle` (the host), `s @ s` with `s` symmetric reads its `b` operand as the
/// transpose of `s`'s rows (`s[n0.., k0..]`, the same values bit for bit: `s[k, j] == s[j, k]`, which the
/// symmetry proof guarantees in every executor, up to NaN payloads), so that, like `x @ transpose(x)`'s, its
/// `b` windows are the windows other blocks read as `a` from the same tensor: the host JIT flags such an mmad
/// (`kc_mmad`'s bit 4) and the routine packs each window of `s` once for both operands. The products and
/// their order are unchanged, so are the results. The NPU targets keep the plain `b` (a transposed operand
/// costs them an MTE1 transpose, and they share no packing).
fn symmetric_b(mut p: Plan, target: &Target) -> Plan {
    if target.symmetric_triangle && p.square_of_symmetric && !p.a.transposed && !p.b.transposed {
        p.b.transposed = true;
    }
    p
}

/// Whether `idx` is exactly the variables `want`, in order.
fn is_vars(idx: &[Expr], want: &[usize]) -> bool {
    idx.len() == want.len() && idx.iter().zip(want).all(|(e, w)| matches!(e.kind, ExprKind::Var(x) if x.index() == *w))
}

fn analyze(g: &Graph, group: &Group, gm: &GmPlan, b: &Binding) -> Option<Plan> {
    if group.kind != GroupKind::Matmul {
        return None;
    }
    let anchor = *group.nodes.iter().find(|v| contraction(g, **v).is_some())?;
    let con = contraction(g, anchor)?;
    let node = g.node(anchor);
    let rank = node.rank();
    if con.grouped || con.count != 1 || con.k.len() != 1 || con.m.len() != 1 || con.n.len() != 1 || rank < 2 {
        return None;
    }
    let nb = rank - 2;
    if con.batch != (0..nb).collect::<Vec<_>>() || con.m != vec![nb] || con.n != vec![nb + 1] {
        return None;
    }
    let NodeKind::Compute { body: whole, vars } = &node.kind else { return None };
    // The contraction: the whole body, or the one `sum` inside an elementwise expression of it.
    let red = if matches!(whole.kind, ExprKind::Reduce { .. }) {
        whole
    } else {
        let mut reds = Vec::new();
        whole.walk(&mut |e| {
            if matches!(e.kind, ExprKind::Reduce { .. } | ExprKind::Segment { .. }) {
                reds.push(e);
            }
        });
        let [red] = reds[..] else { return None };
        red
    };
    let ExprKind::Reduce { op: ReduceOp::Sum, vars: ks, body: inner } = &red.kind else { return None };
    let kv = *ks.first()?;
    if ks.len() != 1 || kv != con.k[0] || red.ty != ScalarTy::F32 {
        return None;
    }
    // The sum's factors: the two that read along k are the operands; the others (`scale`, `s[n]`: they do
    // not depend on k) multiply the sum instead, in the wrapper (`Σ_k a·b·s` as `s · Σ_k a·b`: the same in
    // exact arithmetic, and the cube's sums agree with the interpreter's to rounding only anyway).
    let mut fs = Vec::new();
    crate::passes::fuse::factors(inner, &mut fs);
    let uses_k = |e: &Expr| {
        let mut u = false;
        e.walk(&mut |x| u |= matches!(x.kind, ExprKind::Var(x) if x == kv));
        u
    };
    let (ops, scales): (Vec<&Expr>, Vec<&Expr>) = fs.into_iter().partition(|f| uses_k(f));
    let [x, y] = ops[..] else { return None };
    if scales.iter().any(|f| f.ty != ScalarTy::F32) {
        return None;
    }
    let wrap = (!std::ptr::eq(red, whole) || !scales.is_empty()).then(|| {
        let mut w = whole.clone();
        sum_as_anchor(&mut w, anchor, rank, &scales);
        w
    });
    let k = b.eval(&vars.get(kv.index())?.extent).ok()?;
    let dims: Vec<i64> = node.shape.iter().map(|d| b.eval(d).ok()).collect::<Option<Vec<_>>>()?;
    let (m, n) = (dims[nb], dims[nb + 1]);
    let batch: Vec<usize> = (0..nb).collect();
    // One factor as an operand: `first` is the output axis it shares with the result besides the batch.
    let operand = |e: &Expr, axis: usize| -> Option<Operand> {
        let ExprKind::Load { src, idx } = &e.kind else { return None };
        let tensor = *gm.of.get(src)?;
        if idx.len() != nb + 2 || !is_vars(&idx[..nb], &batch) {
            return None;
        }
        let s = g.node(*src);
        let sd: Vec<i64> = s.shape.iter().map(|d| b.eval(d).ok()).collect::<Option<Vec<_>>>()?;
        if sd[..nb] != dims[..nb] {
            return None;
        }
        let rest = &idx[nb..];
        let normal = if axis == nb { [axis, kv.index()] } else { [kv.index(), axis] };
        let swapped = [normal[1], normal[0]];
        if is_vars(rest, &normal) {
            Some(Operand { tensor, transposed: false })
        } else if is_vars(rest, &swapped) {
            Some(Operand { tensor, transposed: true })
        } else {
            None
        }
    };
    let ((a, bo), (a_src, b_src)) = match (operand(x, nb), operand(y, nb + 1)) {
        (Some(a), Some(bo)) => ((a, bo), (x, y)),
        _ => ((operand(y, nb)?, operand(x, nb + 1)?), (y, x)),
    };
    // `s @ s`: both factors the same value, `[.., i, k]` and `[.., k, j]`, square (`k == n`) and symmetric.
    let square_of_symmetric = match (&a_src.kind, &b_src.kind) {
        (ExprKind::Load { src: sa, .. }, ExprKind::Load { src: sb, .. }) => {
            sa == sb
                && a.tensor == bo.tensor
                && !a.transposed
                && !bo.transposed
                && k == n
                && crate::passes::symmetry::is_symmetric(g, *sb)
        }
        _ => false,
    };
    // The cube's operand dtype: the operands' own when they agree (bf16, f16, or f32: the cube's f32 mode,
    // 16 × 8 fractals at half the MACs a cycle), else f32, a narrower operand widened exactly as it is
    // copied into L1 (as the interpreter widens it for the product).
    let (da, db) = (gm.tensors.get(a.tensor.0 as usize)?.dtype, gm.tensors.get(bo.tensor.0 as usize)?.dtype);
    let floats = [DType::BF16, DType::F16, DType::F32];
    if !floats.contains(&da) || !floats.contains(&db) || k < 1 {
        return None;
    }
    let dtype = if da == db { da } else { DType::F32 };
    if !node.dtype.is_float() {
        return None;
    }
    // The epilogue.
    let rank_vars: Vec<usize> = (0..rank).collect();
    let epilogue: Vec<ValueId> = group.nodes.iter().copied().filter(|x| *x != anchor).collect();
    let mut ext = BTreeMap::new();
    let mut direct = wrap.is_none();
    if let Some(w) = &wrap {
        if !epilogue_reads(g, group, gm, node, nb, w, &mut ext) {
            return None;
        }
    }
    for mem in &epilogue {
        let mn = g.node(*mem);
        if mn.shape != node.shape || !mn.dtype.is_float() && mn.dtype != DType::I32 && mn.dtype != DType::Bool {
            return None;
        }
        let NodeKind::Compute { body, vars } = &mn.kind else { return None };
        if vars.len() != rank {
            return None;
        }
        // Cast-only: the anchor at its own indices, possibly through a cast to the member's dtype.
        let load_anchor =
            |e: &Expr| matches!(&e.kind, ExprKind::Load { src, idx } if *src == anchor && is_vars(idx, &rank_vars));
        let cast_only = mn.dtype.is_float()
            && (load_anchor(body) || matches!(&body.kind, ExprKind::Cast(t, e) if *t == mn.dtype && load_anchor(e)));
        if !cast_only {
            direct = false;
        }
        if !epilogue_reads(g, group, gm, node, nb, body, &mut ext) {
            return None;
        }
    }
    if group.stored.iter().any(|s| !gm.of.contains_key(s) || !group.nodes.contains(s)) {
        return None;
    }
    // Symmetry: a fact about the graph, proven once per group (one pass over the nodes up to the last stored
    // member; only square products get there).
    let symmetric = m == n && {
        let last = group.stored.iter().copied().chain([anchor]).max().unwrap_or(anchor);
        let sym = crate::passes::symmetry::symmetric_upto(g, last);
        let at = |x: &ValueId| sym.get(x.index()).copied().unwrap_or(false);
        at(&anchor) && group.stored.iter().all(at)
    };
    Some(Plan {
        anchor,
        a,
        b: bo,
        dtype,
        batch_dims: dims[..nb].to_vec(),
        m,
        n,
        k,
        epilogue: if direct { Vec::new() } else { epilogue },
        direct,
        wrap,
        ext,
        symmetric,
        square_of_symmetric,
    })
}

/// Replaces the `sum` in `e` (the one reduction of a wrapped contraction's body) by a read of the anchor at its
/// own indices (`rank` of them), the value the workspace holds for the block, times the sum's `scales`.
fn sum_as_anchor(e: &mut Expr, anchor: ValueId, rank: usize, scales: &[&Expr]) {
    if matches!(e.kind, ExprKind::Reduce { .. }) {
        let span = e.span;
        let idx = (0..rank).map(|i| Expr { kind: ExprKind::Var(VarId(i as u32)), ty: ScalarTy::I32, span }).collect();
        let mut x = Expr { kind: ExprKind::Load { src: anchor, idx }, ty: ScalarTy::F32, span };
        for f in scales {
            x = Expr {
                kind: ExprKind::Binary(BinOp::Mul, Box::new(x), Box::new((*f).clone())),
                ty: ScalarTy::F32,
                span,
            };
        }
        *e = x;
        return;
    }
    e.for_each_child_mut(|x| sum_as_anchor(x, anchor, rank, scales));
}

/// Whether the vector cores can evaluate `body` (an epilogue member's, or the anchor's wrapper) on a block of
/// `node`'s result: group members read at their own indices, values outside the group read from GM as a
/// tile, a row or column vector or a scalar (recorded in `ext`), no reductions and no index variables but
/// the result's.
fn epilogue_reads(
    g: &Graph,
    group: &Group,
    gm: &GmPlan,
    node: &crate::graph::Node,
    nb: usize,
    body: &Expr,
    ext: &mut BTreeMap<ValueId, Ext>,
) -> bool {
    let rank = node.rank();
    let rank_vars: Vec<usize> = (0..rank).collect();
    let mut ok = true;
    body.walk(&mut |e| match &e.kind {
        ExprKind::Reduce { .. } | ExprKind::Segment { .. } => ok = false,
        ExprKind::Var(x) if x.index() >= rank => ok = false,
        ExprKind::Load { src, idx } => {
            if group.nodes.contains(src) {
                if !is_vars(idx, &rank_vars) {
                    ok = false;
                }
                return;
            }
            if !gm.of.contains_key(src) {
                ok = false;
                return;
            }
            let s = g.node(*src);
            let kind = if s.rank() == 0 {
                Ext::Scalar
            } else if s.shape == node.shape && is_vars(idx, &rank_vars) {
                Ext::Tile
            } else if s.rank() == 1 && s.shape[0] == node.shape[nb + 1] && is_vars(idx, &[nb + 1]) {
                Ext::Col
            } else if s.rank() == 1 && s.shape[0] == node.shape[nb] && is_vars(idx, &[nb]) {
                Ext::Row
            } else {
                ok = false;
                return;
            };
            if ext.insert(*src, kind).is_some_and(|old| old != kind) {
                ok = false;
            }
        }
        _ => {}
    });
    ok
}

/// The base block (bm, bn) that the tile hints on a matmul group ask for, with the hint: a tile along the
/// result's row axis sets `bm`, along its column axis `bn` (each a multiple of the 16-wide fractal, or at
/// least the axis); the other is the tiler's choice (at most 128). Batch axes are taken one at a time, so a
/// batch tile must be 1. Every hint of the group must agree.
fn hinted_blocks(
    hints: &[super::TileHint],
    nb: usize,
    m: i64,
    n: i64,
) -> Result<Option<(i64, i64, super::TileHint)>, Diagnostic> {
    let r16 = |x: i64| (x.max(1) + 15) / 16 * 16;
    let mut out: Option<(i64, i64, super::TileHint)> = None;
    for h in hints {
        let mut bm = None;
        let mut bn = None;
        for &(a, size) in &h.axes {
            let size = size as i64;
            if a < nb {
                if size != 1 {
                    return Err(super::hint_error(
                        h,
                        format!("a matmul takes its batch axes one at a time: the tile of batch axis {a} must be 1"),
                    ));
                }
                continue;
            }
            let extent = if a == nb { m } else { n };
            let block = if size >= extent { r16(extent) } else { size };
            if block % 16 != 0 {
                return Err(super::hint_error(
                    h,
                    format!(
                        "cube tiles are multiples of the 16 x 16 fractal: {size} along axis {a} is not (use a \
                         multiple of 16, or at least the axis's {extent})"
                    ),
                ));
            }
            if a == nb {
                bm = Some(block);
            } else {
                bn = Some(block);
            }
        }
        let bm = bm.unwrap_or_else(|| r16(m).min(128));
        let bn = bn.unwrap_or_else(|| r16(n).min(128));
        match &out {
            Some((om, on, first)) if (*om, *on) != (bm, bn) => {
                return Err(super::hint_error(
                    h,
                    format!("it asks for {bm} x {bn} base blocks, but {} asks for {om} x {on}", first.text),
                ))
            }
            Some(_) => {}
            None => out = Some((bm, bn, h.clone())),
        }
    }
    Ok(out)
}

/// The k step for hinted base blocks: the largest multiple of 16 (at most 256 and the padded K) whose L0A
/// and L0B tiles fit half of their memories, or 16 (the capacity check then names what does not fit).
fn hinted_bk(target: &Target, bm: i64, bn: i64, k: i64, esize: i64) -> i64 {
    let l0a = target.memory("l0a").map_or(0, |m| m.usable() as i64 / 2);
    let l0b = target.memory("l0b").map_or(0, |m| m.usable() as i64 / 2);
    let mut bk = ((k.max(1) + 15) / 16 * 16).min(256);
    while bk > 16 && (bm * bk * esize > l0a || bk * bn * esize > l0b) {
        bk -= 16;
    }
    bk
}

fn region(loc: Loc, offset: SExpr, row_stride: SExpr) -> Region {
    Region { loc, offset, row_stride }
}

fn bslot(buf: BufId, slot: SExpr) -> Loc {
    Loc::Buf { buf, slot }
}

#[allow(clippy::too_many_arguments)]
fn build(
    g: &Graph,
    group: &Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    bd: &Binding,
    p: &Plan,
    blocks_: Blocks,
    hint: Option<&super::TileHint>,
) -> Result<(Launch, Option<GmTensor>), Diagnostic> {
    let internal = |msg: &str| {
        Diagnostic::error(
            crate::diag::Code::Internal,
            crate::span::Span::default(),
            format!("matmul launch `{name}`: {msg}"),
        )
    };
    let (m, n, k) = (p.m, p.n, p.k);
    let Blocks { bm, bn, bk, kf, l0c_slots } = blocks_;
    let (mb, nbk) = ((m + bm - 1) / bm, (n + bn - 1) / bn);
    let batches: i64 = p.batch_dims.iter().product();
    let tri = triangle(target, p, bm, bn);
    let blocks = batches * block_count(mb, nbk, tri);
    let ratio = (target.vector_cores / target.cube_cores.max(1)).max(1);
    let cubes = (target.cube_cores as i64).min(blocks).max(1) as u32;
    let (unit, vcores) = if p.direct { (Unit::Cube, 0) } else { (Unit::Mixed, cubes * ratio) };
    let mut lb = LaunchBuilder::new(target, name, unit, cubes, vcores);
    let (ua, ub_) = (bm as u64, bn as u64);
    let a1_shape = if p.a.transposed { vec![kf as u64, ua] } else { vec![ua, kf as u64] };
    let b1_shape = if p.b.transposed { vec![ub_, kf as u64] } else { vec![kf as u64, ub_] };
    let a1 = lb.buffer("a_l1", Mem::L1, p.dtype, a1_shape, 2);
    let b1 = lb.buffer("b_l1", Mem::L1, p.dtype, b1_shape, 2);
    let a0 = lb.buffer("a_l0a", Mem::L0A, p.dtype, vec![ua, bk as u64], 2);
    let b0 = lb.buffer("b_l0b", Mem::L0B, p.dtype, vec![bk as u64, ub_], 2);
    let c0 = lb.buffer("c_l0c", Mem::L0C, DType::F32, vec![ua, ub_], l0c_slots);
    let blk = lb.svar("blk");
    let bi = lb.svar("bi");
    let m0 = lb.svar("m0");
    let n0 = lb.svar("n0");
    let rows = lb.svar("rows");
    let cols = lb.svar("cols");
    let kk = lb.svar("k0");
    let kl = lb.svar("klen");
    let it = lb.svar("it");
    let s = lb.svar("slot");
    let jj = lb.svar("j");

    // The block's coordinates, from `blk`.
    let contiguous = target.contiguous_chunks;
    let tvars = tri.then(|| [lb.svar("tr"), lb.svar("tc"), lb.svar("ts")]);
    let coords = |stmts: &mut Vec<Stmt>| {
        let lin = block_of(v(blk), blocks, cubes as i64, contiguous);
        block_coords(stmts, lin, [bi, m0, n0], tvars, (mb, nbk), (bm, bn));
        stmts.push(Stmt::Set { var: rows, value: bin(SBin::Min, c(bm), bin(SBin::Sub, c(m), v(m0))) });
        stmts.push(Stmt::Set { var: cols, value: bin(SBin::Min, c(bn), bin(SBin::Sub, c(n), v(n0))) });
    };

    let k2 = lb.svar("k2");
    let kl1 = lb.svar("klen1");
    let jt = lb.svar("jt");
    let s0 = lb.svar("slot0");
    let cs = lb.svar("cslot");
    let nb_done = lb.svar("nblk");

    // One L1 step: `kf` of K for both operands into L1 slot `it mod 2`, then the L0 steps over it.
    let step = || -> Vec<Stmt> {
        let sl = || v(s);
        let sl0 = || v(s0);
        let mut st = vec![
            Stmt::Set { var: kl1, value: bin(SBin::Min, c(kf), bin(SBin::Sub, c(k), v(kk))) },
            Stmt::Set { var: s, value: bin(SBin::Mod, v(it), c(2)) },
            Stmt::WaitFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 },
        ];
        // GM -> L1, as the operands lie in GM.
        let abase = mul(v(bi), c(m * k));
        let (asrc, astride, arows, acols, adst_stride) = if p.a.transposed {
            (add(abase, add(mul(v(kk), c(m)), v(m0))), m, v(kl1), v(rows), bm)
        } else {
            (add(abase, add(mul(v(m0), c(k)), v(kk))), k, v(rows), v(kl1), kf)
        };
        st.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: region(Loc::Gm(p.a.tensor), asrc, c(astride)),
            dst: region(bslot(a1, sl()), c(0), c(adst_stride)),
            rows: arows,
            cols: acols,
        });
        let bbase = mul(v(bi), c(k * n));
        let (bsrc, bstride, brows, bcols, bdst_stride) = if p.b.transposed {
            (add(bbase, add(mul(v(n0), c(k)), v(kk))), k, v(cols), v(kl1), kf)
        } else {
            (add(bbase, add(mul(v(kk), c(n)), v(n0))), n, v(kl1), v(cols), bn)
        };
        st.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: region(Loc::Gm(p.b.tensor), bsrc, c(bstride)),
            dst: region(bslot(b1, sl()), c(0), c(bdst_stride)),
            rows: brows,
            cols: bcols,
        });
        st.extend(flag(Pipe::Mte2, Pipe::Mte1));
        // The L0 steps over the L1 tile.
        let mut inner = vec![
            Stmt::Set { var: kl, value: bin(SBin::Min, c(bk), bin(SBin::Sub, v(kl1), v(k2))) },
            Stmt::Set { var: s0, value: bin(SBin::Mod, v(jt), c(2)) },
            Stmt::WaitFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 },
        ];
        // L1 -> L0A: a transposed (`kl1 × rows`) tile row by row: L1 row k2 + j becomes L0A column j.
        if p.a.transposed {
            inner.push(Stmt::For {
                var: jj,
                lo: c(0),
                hi: v(kl),
                step: 1,
                body: vec![Stmt::Copy {
                    pipe: Pipe::Mte1,
                    src: region(bslot(a1, sl()), mul(add(v(k2), v(jj)), c(bm)), c(1)),
                    dst: region(bslot(a0, sl0()), v(jj), c(bk)),
                    rows: v(rows),
                    cols: c(1),
                }],
            });
        } else {
            inner.push(Stmt::Copy {
                pipe: Pipe::Mte1,
                src: region(bslot(a1, sl()), v(k2), c(kf)),
                dst: region(bslot(a0, sl0()), c(0), c(bk)),
                rows: v(rows),
                cols: v(kl),
            });
        }
        // L1 -> L0B: a transposed (`cols × kl1`) tile column by column: L1 column k2 + j becomes L0B row j.
        if p.b.transposed {
            inner.push(Stmt::For {
                var: jj,
                lo: c(0),
                hi: v(kl),
                step: 1,
                body: vec![Stmt::Copy {
                    pipe: Pipe::Mte1,
                    src: region(bslot(b1, sl()), add(v(k2), v(jj)), c(kf)),
                    dst: region(bslot(b0, sl0()), mul(v(jj), c(bn)), c(1)),
                    rows: v(cols),
                    cols: c(1),
                }],
            });
        } else {
            inner.push(Stmt::Copy {
                pipe: Pipe::Mte1,
                src: region(bslot(b1, sl()), mul(v(k2), c(bn)), c(bn)),
                dst: region(bslot(b0, sl0()), c(0), c(bn)),
                rows: v(kl),
                cols: v(cols),
            });
        }
        inner.extend(flag(Pipe::Mte1, Pipe::M));
        let mmad = |accumulate: bool| Stmt::Mmad {
            a: region(bslot(a0, sl0()), c(0), c(bk)),
            b: region(bslot(b0, sl0()), c(0), c(bn)),
            c: region(bslot(c0, v(cs)), c(0), c(bn)),
            m: v(rows),
            k: v(kl),
            n: v(cols),
            accumulate,
        };
        // The block's first mmad starts the accumulator; the others add to it.
        let at = add(v(kk), v(k2));
        inner.push(Stmt::If { cond: bin(SBin::Eq, at.clone(), c(0)), then: vec![mmad(false)] });
        inner.push(Stmt::If { cond: bin(SBin::Lt, c(0), at), then: vec![mmad(true)] });
        inner.push(Stmt::SetFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
        inner.push(Stmt::Set { var: jt, value: add(v(jt), c(1)) });
        st.push(Stmt::For { var: k2, lo: c(0), hi: v(kl1), step: bk, body: inner });
        st.push(Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 });
        st.push(Stmt::Set { var: it, value: add(v(it), c(1)) });
        st
    };

    // The workspace (mixed path): `bm × bn` f32 per core; cube core `i`'s block at `i * bm * bn`.
    let ws_id = TensorId(gm.tensors.len() as u32);
    // One `bm × bn` area per block a cube core runs (no area is reused within the launch: see the module
    // comment), and as much for every core of the launch, as the simulator sizes workspaces.
    let per_core_blocks = (blocks + cubes as i64 - 1) / cubes as i64;
    let ws_elems = per_core_blocks * bm * bn;
    let workspace = (!p.direct).then(|| GmTensor {
        name: format!("{name}_ws"),
        dtype: DType::F32,
        shape: vec![(cubes + vcores) as u64, ws_elems as u64],
        // Unit-private: cube core `q` writes its blocks at `q * ws_elems + ..`, and its vector cores
        // (`Core / ratio == q`) read each block after the cross flag that follows its FixPipe copy, within
        // the block's own `rows x cols` window (see `epilogue_program`).
        role: TensorRole::Workspace { per_core: (ws_elems * 4) as u64, unit_private: true },
    });

    // The cube program. L0C has `l0c_slots` slots: with two, the FixPipe of a block overlaps the next
    // block's mmads (FIX->M is primed once per slot).
    let mut cube = vec![
        Stmt::Set { var: it, value: c(0) },
        Stmt::Set { var: jt, value: c(0) },
        Stmt::Set { var: nb_done, value: c(0) },
    ];
    for _ in 0..2 {
        cube.push(Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 });
        cube.push(Stmt::SetFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
    }
    for _ in 0..l0c_slots {
        cube.push(Stmt::SetFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
    }
    let mut body = Vec::new();
    coords(&mut body);
    body.push(Stmt::Set { var: cs, value: bin(SBin::Mod, v(nb_done), c(l0c_slots as i64)) });
    body.push(Stmt::WaitFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
    body.push(Stmt::For { var: kk, lo: c(0), hi: c(k), step: kf, body: step() });
    body.extend(flag(Pipe::M, Pipe::Fix));
    let out_off = add(mul(v(bi), c(m * n)), add(mul(v(m0), c(n)), v(n0)));
    let mj = tri.then(|| lb.svar("mj"));
    if p.direct {
        for st in &group.stored {
            body.push(Stmt::Copy {
                pipe: Pipe::Fix,
                src: region(bslot(c0, v(cs)), c(0), c(bn)),
                dst: region(Loc::Gm(gm.of[st]), out_off.clone(), c(n)),
                rows: v(rows),
                cols: v(cols),
            });
        }
        // An off-diagonal block of a symmetric product again, transposed: column j of L0C is row n0 + j of
        // the result from column m0 (the same f32 values, converted alike: the same bits as computing it).
        if let Some(mj) = mj {
            let mut mirror = Vec::new();
            for st in &group.stored {
                mirror.push(Stmt::Copy {
                    pipe: Pipe::Fix,
                    src: region(bslot(c0, v(cs)), v(mj), c(bn)),
                    dst: region(
                        Loc::Gm(gm.of[st]),
                        add(mul(v(bi), c(m * n)), add(mul(add(v(n0), v(mj)), c(n)), v(m0))),
                        c(1),
                    ),
                    rows: v(rows),
                    cols: c(1),
                });
            }
            let mirror = mirror
                .into_iter()
                .map(|st| Stmt::For { var: mj, lo: c(0), hi: v(cols), step: 1, body: vec![st] })
                .collect();
            body.push(Stmt::If { cond: bin(SBin::Lt, v(m0), v(n0)), then: mirror });
        }
    } else {
        body.push(Stmt::Copy {
            pipe: Pipe::Fix,
            src: region(bslot(c0, v(cs)), c(0), c(bn)),
            dst: region(
                Loc::Gm(ws_id),
                add(mul(SExpr::Core, c(ws_elems)), mul(bin(SBin::Div, v(blk), c(cubes as i64)), c(bm * bn))),
                c(bn),
            ),
            rows: v(rows),
            cols: v(cols),
        });
    }
    body.push(Stmt::SetFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
    if !p.direct {
        body.push(Stmt::CrossSet { flag: 0 });
    }
    body.push(Stmt::Set { var: nb_done, value: add(v(nb_done), c(1)) });
    cube.push(Stmt::For { var: blk, lo: SExpr::Core, hi: c(blocks), step: cubes as i64, body });
    for _ in 0..2 {
        cube.push(Stmt::WaitFlag { from: Pipe::Mte1, to: Pipe::Mte2, event: 0 });
        cube.push(Stmt::WaitFlag { from: Pipe::M, to: Pipe::Mte1, event: 0 });
    }
    for _ in 0..l0c_slots {
        cube.push(Stmt::WaitFlag { from: Pipe::Fix, to: Pipe::M, event: 0 });
    }

    if !p.direct {
        let vector =
            epilogue_program(g, group, gm, bd, p, &mut lb, ws_id, (bm, bn), (mb, nbk), blocks, cubes, ratio, tri)
                .ok_or_else(|| internal("the epilogue cannot be lowered"))?;
        lb.launch.vector = vector;
    }
    lb.launch.cube = cube;
    let l = match hint {
        Some(h) => lb.finish_at(h.span, &format!("the base block {bm} x {bn} x {bk} asked for by {}", h.text))?,
        None => lb.finish("base block sizes chosen by the tiler")?,
    };
    Ok((l, workspace))
}

/// The vector cores' program: wait for each block of their cube core in the workspace, evaluate the
/// epilogue on their share of its rows and store the stored members.
#[allow(clippy::too_many_arguments)]
fn epilogue_program(
    g: &Graph,
    group: &Group,
    gm: &GmPlan,
    bd: &Binding,
    p: &Plan,
    lb: &mut LaunchBuilder<'_>,
    ws_id: TensorId,
    (bm, bn): (i64, i64),
    (mb, nbk): (i64, i64),
    blocks: i64,
    cubes: u32,
    ratio: u32,
    tri: bool,
) -> Option<Vec<Stmt>> {
    let (m, n) = (p.m, p.n);
    let hr = (bm + ratio as i64 - 1) / ratio as i64;
    let per_core_blocks = (blocks + cubes as i64 - 1) / cubes as i64;
    let label = |x: ValueId| g.node(x).name.clone().unwrap_or_else(|| format!("t{}", x.0));
    let tile = vec![hr as u64, bn as u64];
    let mut bufs: BTreeMap<ValueId, BufId> = BTreeMap::new();
    bufs.insert(
        p.anchor,
        lb.buffer(format!("{}_ub", label(p.anchor)), Mem::UB, g.node(p.anchor).dtype, tile.clone(), 1),
    );
    for (src, e) in &p.ext {
        let shape = match e {
            Ext::Tile => tile.clone(),
            Ext::Col => vec![1, bn as u64],
            Ext::Row => vec![hr as u64, 1],
            Ext::Scalar => vec![1],
        };
        bufs.insert(*src, lb.buffer(format!("{}_ub", label(*src)), Mem::UB, g.node(*src).dtype, shape, 1));
    }
    for mem in &p.epilogue {
        bufs.insert(*mem, lb.buffer(format!("{}_ub", label(*mem)), Mem::UB, g.node(*mem).dtype, tile.clone(), 1));
    }
    // A wrapped contraction's sum, in f32 as the workspace holds it, until the wrapper makes the anchor.
    let acc = match &p.wrap {
        Some(_) => lb.buffer(format!("{}_sum_ub", label(p.anchor)), Mem::UB, DType::F32, tile.clone(), 1),
        None => bufs[&p.anchor],
    };
    let blk = lb.svar("vblk");
    let bi = lb.svar("vbi");
    let m0 = lb.svar("vm0");
    let n0 = lb.svar("vn0");
    let rows = lb.svar("vrows");
    let cols = lb.svar("vcols");
    let r0 = lb.svar("r0");
    let rc = lb.svar("rc");
    let sub = bin(SBin::Mod, SExpr::Core, c(ratio as i64));
    let mine = bin(SBin::Div, SExpr::Core, c(ratio as i64));

    let mut prog = vec![
        Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 },
        Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 },
        Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::Mte2, event: 0 },
    ];
    // The same block as the cube core's at this `blk` (see `block_of`).
    let lin = block_of(v(blk), blocks, cubes as i64, lb.target.contiguous_chunks);
    let tvars = tri.then(|| [lb.svar("vtr"), lb.svar("vtc"), lb.svar("vts")]);
    let mj = tri.then(|| lb.svar("vmj"));
    let mut body = Vec::new();
    block_coords(&mut body, lin, [bi, m0, n0], tvars, (mb, nbk), (bm, bn));
    body.extend([
        Stmt::Set { var: rows, value: bin(SBin::Min, c(bm), bin(SBin::Sub, c(m), v(m0))) },
        Stmt::Set { var: cols, value: bin(SBin::Min, c(bn), bin(SBin::Sub, c(n), v(n0))) },
        Stmt::Set { var: r0, value: mul(sub, c(hr)) },
        Stmt::Set { var: rc, value: bin(SBin::Min, c(hr), bin(SBin::Sub, v(rows), v(r0))) },
        Stmt::CrossWait { flag: 0 },
    ]);
    // MTE2 refills the tiles once V has read them and MTE3 has stored them (a stored member may be the
    // anchor's own tile, which MTE2 writes).
    let mut work = vec![
        Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 },
        Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::Mte2, event: 0 },
    ];
    work.push(Stmt::Copy {
        pipe: Pipe::Mte2,
        src: region(
            Loc::Gm(ws_id),
            add(
                add(mul(mine, c(per_core_blocks * bm * bn)), mul(bin(SBin::Div, v(blk), c(cubes as i64)), c(bm * bn))),
                mul(v(r0), c(bn)),
            ),
            c(bn),
        ),
        dst: region(bslot(acc, c(0)), c(0), c(bn)),
        rows: v(rc),
        cols: v(cols),
    });
    // The tile's origin in the output: batch, row, column.
    let row0 = add(v(m0), v(r0));
    let tile_off = add(mul(v(bi), c(m * n)), add(mul(row0.clone(), c(n)), v(n0)));
    for (src, e) in &p.ext {
        let t = *gm.of.get(src)?;
        let (s_off, stride, r, cc, dstride) = match e {
            Ext::Tile => (tile_off.clone(), c(n), v(rc), v(cols), bn),
            Ext::Col => (v(n0), c(0), c(1), v(cols), bn),
            Ext::Row => (row0.clone(), c(1), v(rc), c(1), 1),
            Ext::Scalar => (c(0), c(0), c(1), c(1), 0),
        };
        work.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: region(Loc::Gm(t), s_off, stride),
            dst: region(bslot(bufs[src], c(0)), c(0), c(dstride)),
            rows: r,
            cols: cc,
        });
    }
    work.extend(flag(Pipe::Mte2, Pipe::V));
    work.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });
    let rank = p.batch_dims.len() + 2;
    let env = Env { bufs: &bufs, ext: &p.ext, bd, bn, rank, batch_dims: &p.batch_dims, bi, row0: row0.clone(), n0 };
    if let Some(w) = &p.wrap {
        // The wrapper reads the sum where the anchor's reads point (`sum_as_anchor`).
        let mut sums = bufs.clone();
        sums.insert(p.anchor, acc);
        let expr = vexpr(w, &Env { bufs: &sums, ..env.clone() })?;
        let dst = region(bslot(bufs[&p.anchor], c(0)), c(0), c(bn));
        work.push(Stmt::Vector { dst, rows: v(rc), cols: v(cols), expr });
    }
    for mem in &p.epilogue {
        let NodeKind::Compute { body: e, .. } = &g.node(*mem).kind else { return None };
        let expr = vexpr(e, &env)?;
        work.push(Stmt::Vector { dst: region(bslot(bufs[mem], c(0)), c(0), c(bn)), rows: v(rc), cols: v(cols), expr });
    }
    work.push(Stmt::SetFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 });
    work.extend(flag(Pipe::V, Pipe::Mte3));
    for st in &group.stored {
        work.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: region(bslot(*bufs.get(st)?, c(0)), c(0), c(bn)),
            dst: region(Loc::Gm(*gm.of.get(st)?), tile_off.clone(), c(n)),
            rows: v(rc),
            cols: v(cols),
        });
    }
    // A symmetric product's off-diagonal block again, transposed: column j of the tile is row n0 + j of the
    // result from column m0 + r0 (the bits just stored, in the mirrored place).
    if let Some(mj) = mj {
        let mut mirror = Vec::new();
        for st in &group.stored {
            let copy = Stmt::Copy {
                pipe: Pipe::Mte3,
                src: region(bslot(*bufs.get(st)?, c(0)), v(mj), c(bn)),
                dst: region(
                    Loc::Gm(*gm.of.get(st)?),
                    add(mul(v(bi), c(m * n)), add(mul(add(v(n0), v(mj)), c(n)), row0.clone())),
                    c(1),
                ),
                rows: v(rc),
                cols: c(1),
            };
            mirror.push(Stmt::For { var: mj, lo: c(0), hi: v(cols), step: 1, body: vec![copy] });
        }
        work.push(Stmt::If { cond: bin(SBin::Lt, v(m0), v(n0)), then: mirror });
    }
    work.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });
    work.push(Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::Mte2, event: 0 });
    body.push(Stmt::If { cond: bin(SBin::Lt, c(0), v(rc)), then: work });
    prog.push(Stmt::For { var: blk, lo: mine_expr(ratio), hi: c(blocks), step: cubes as i64, body });
    prog.push(Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 });
    prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::V, event: 0 });
    prog.push(Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::Mte2, event: 0 });
    Some(prog)
}

/// Whether a launch with `bm × bn` base blocks computes one triangle of blocks: a symmetric product on a
/// target with `symmetric_triangle`, square blocks.
fn triangle(target: &Target, p: &Plan, bm: i64, bn: i64) -> bool {
    p.symmetric && target.symmetric_triangle && bm == bn && p.m == p.n
}

/// The blocks of one batch: `mb × nbk`, or the `mb (mb + 1) / 2` on and above the diagonal.
fn block_count(mb: i64, nbk: i64, tri: bool) -> i64 {
    if tri {
        mb * (mb + 1) / 2
    } else {
        mb * nbk
    }
}

/// Statements setting `[bi, m0, n0]` to block `lin`'s batch, first row and first column. Row-major over
/// (batch, m-block, n-block); with `tri` (registers for the triangle's row, column and side), block `t` of
/// a batch's triangle (`mb` blocks a side) without a square root: row `r` (`mb - r` blocks, from the
/// diagonal) and row `mb - 1 - r` (`r + 1` blocks) make one folded row of `mb + 1`, so `r = t / (mb + 1)`,
/// `c = t % (mb + 1)`: the block is `(r, r + c)` if `c < mb - r`, else `(mb - 1 - r, c - 1)`.
fn block_coords(
    out: &mut Vec<Stmt>,
    lin: SExpr,
    [bi, m0, n0]: [SVar; 3],
    tri: Option<[SVar; 3]>,
    (mb, nbk): (i64, i64),
    (bm, bn): (i64, i64),
) {
    let Some([tr, tc, ts]) = tri else {
        out.push(Stmt::Set { var: bi, value: bin(SBin::Div, lin.clone(), c(mb * nbk)) });
        let r = bin(SBin::Mod, lin, c(mb * nbk));
        out.push(Stmt::Set { var: m0, value: mul(bin(SBin::Div, r.clone(), c(nbk)), c(bm)) });
        out.push(Stmt::Set { var: n0, value: mul(bin(SBin::Mod, r, c(nbk)), c(bn)) });
        return;
    };
    let per = block_count(mb, nbk, true);
    out.push(Stmt::Set { var: bi, value: bin(SBin::Div, lin.clone(), c(per)) });
    let t = bin(SBin::Mod, lin, c(per));
    out.push(Stmt::Set { var: tr, value: bin(SBin::Div, t.clone(), c(mb + 1)) });
    out.push(Stmt::Set { var: tc, value: bin(SBin::Mod, t, c(mb + 1)) });
    out.push(Stmt::Set { var: ts, value: bin(SBin::Lt, v(tc), bin(SBin::Sub, c(mb), v(tr))) });
    // Row: r if ts, else mb - 1 - r; column: r + c if ts, else c - 1.
    let row = add(bin(SBin::Sub, c(mb - 1), v(tr)), mul(v(ts), add(mul(c(2), v(tr)), c(1 - mb))));
    let col = add(bin(SBin::Sub, v(tc), c(1)), mul(v(ts), add(v(tr), c(1))));
    out.push(Stmt::Set { var: m0, value: mul(row, c(bm)) });
    out.push(Stmt::Set { var: n0, value: mul(col, c(bn)) });
}

/// The block (a row-major index over batch, m-block, n-block) that a core runs at loop value `blk` of
/// `for blk in core .. blocks step cubes`: `blk` itself dealt round-robin; with the target's
/// `contiguous_chunks` (the host) the core's run of consecutive blocks ([`contiguous_item`]): one after
/// another its blocks go along a row of C, so they share their rows of `a` (which the host cube routine
/// keeps packed, and which stay in the core's cache from one block to the next) and stream the columns of
/// `b`.
fn block_of(blk: SExpr, blocks: i64, cubes: i64, contiguous: bool) -> SExpr {
    if contiguous {
        contiguous_item(blk, blocks, cubes)
    } else {
        blk
    }
}

fn mine_expr(ratio: u32) -> SExpr {
    bin(SBin::Div, SExpr::Core, c(ratio as i64))
}

/// What an epilogue body's translation needs.
#[derive(Clone)]
struct Env<'a> {
    bufs: &'a BTreeMap<ValueId, BufId>,
    ext: &'a BTreeMap<ValueId, Ext>,
    bd: &'a Binding,
    bn: i64,
    rank: usize,
    batch_dims: &'a [i64],
    bi: SVar,
    /// The tile's first row (in the output's m axis) and first column.
    row0: SExpr,
    n0: SVar,
}

/// An epilogue member's body as a vector expression over the tile (`rc × cols` at `(row0, n0)`).
fn vexpr(e: &Expr, env: &Env<'_>) -> Option<VExpr> {
    let r = |x: &Expr| vexpr(x, env);
    let nb = env.rank - 2;
    Some(match &e.kind {
        ExprKind::Const(crate::graph::Const::F32(x)) => VExpr::F32(*x),
        ExprKind::Const(crate::graph::Const::I32(x)) => VExpr::I32(*x),
        ExprKind::Const(crate::graph::Const::Bool(x)) => VExpr::Bool(*x),
        ExprKind::Var(x) if x.index() < nb => {
            let k = x.index();
            let stride: i64 = env.batch_dims[k + 1..].iter().product();
            VExpr::Scalar(bin(SBin::Mod, bin(SBin::Div, v(env.bi), c(stride)), c(env.batch_dims[k])))
        }
        ExprKind::Var(x) if x.index() == nb => {
            VExpr::Binary(BinOp::Add, Box::new(VExpr::Scalar(env.row0.clone())), Box::new(VExpr::Row))
        }
        ExprKind::Var(x) if x.index() == nb + 1 => {
            VExpr::Binary(BinOp::Add, Box::new(VExpr::Scalar(v(env.n0))), Box::new(VExpr::Col))
        }
        ExprKind::Var(_) => return None,
        ExprKind::Dim(d) => VExpr::I32(env.bd.eval(d).ok()?),
        ExprKind::Load { src, .. } => {
            let buf = *env.bufs.get(src)?;
            let at = |stride: i64| region(bslot(buf, c(0)), c(0), c(stride));
            match env.ext.get(src) {
                None | Some(Ext::Tile) => VExpr::Read(at(env.bn)),
                Some(Ext::Col) => VExpr::ReadCol(at(env.bn)),
                Some(Ext::Row) => VExpr::ReadRow(at(1)),
                Some(Ext::Scalar) => VExpr::ReadRow(at(0)),
            }
        }
        ExprKind::Unary(op, a) => VExpr::Unary(*op, Box::new(r(a)?)),
        ExprKind::Binary(op, a, x) => VExpr::Binary(*op, Box::new(r(a)?), Box::new(r(x)?)),
        ExprKind::Select(cnd, a, x) => VExpr::Select(Box::new(r(cnd)?), Box::new(r(a)?), Box::new(r(x)?)),
        ExprKind::Cast(t, a) => VExpr::Cast(*t, Box::new(r(a)?)),
        ExprKind::Reduce { .. } | ExprKind::Segment { .. } => return None,
    })
}
