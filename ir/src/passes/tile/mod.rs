//! Tiling: from fusion groups to the tile IR, for one target at concrete dims.
//!
//! The pieces every group kind shares live here: the table of global-memory tensors ([`plan_gm`]), the
//! order in which groups run ([`group_order`]), a builder for launches ([`LaunchBuilder`]) whose buffers the
//! planner places ([`LaunchBuilder::finish`]: offsets aligned to each memory's alignment, every buffer live
//! for the whole launch, a capacity error naming the memory, its buffers and the bytes), and the split of
//! rows across cores. Each group kind has its own module that builds its launch:
//! - [`vector`]: elementwise vector groups, streamed through UB in double-buffered chunks
//!   (MTE2 → V → MTE3 with the flags that order them).
//! - [`grouped`]: grouped matmuls (a mixture of experts' SwiGLU feed-forward): tiles of rows within one
//!   expert, found from the `offsets` the group reads, in two launches with `h` in GM between them.

pub mod cube;
pub mod grouped;
pub mod library;
pub mod reduce;
pub mod rows;
pub mod score;
pub mod score_bwd;
pub mod vector;

use crate::diag::{Code, Diagnostic};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::{Graph, NodeKind, ParamKind, ValueId};
use crate::launch::Binding;
use crate::passes::fuse::Fusion;
use crate::target::Target;
use crate::tile::*;
use std::collections::BTreeMap;

/// The global-memory tensors of a program and which graph value each holds.
#[derive(Clone, Debug, PartialEq)]
pub struct GmPlan {
    pub tensors: Vec<GmTensor>,
    /// The tensor holding each parameter node, each result, and each value stored for another group.
    pub of: BTreeMap<ValueId, TensorId>,
}

fn shape_of(b: &Binding, dims: &[Dim], what: &str) -> Result<Vec<u64>, Diagnostic> {
    b.shape(dims)
        .map(|s| s.into_iter().map(|d| d as u64).collect())
        .map_err(|e| Diagnostic::error(Code::InexactDim, crate::span::Span::default(), format!("{what}: {e}")))
}

/// Lays out global memory: the parameters, one tensor per result, and the intermediates that fusion stores.
pub fn plan_gm(g: &Graph, f: &Fusion, b: &Binding) -> Result<GmPlan, Diagnostic> {
    let mut tensors = Vec::new();
    let mut of = BTreeMap::new();
    for (i, p) in g.params.iter().enumerate() {
        if let ParamKind::Tensor { dtype, shape, .. } = &p.kind {
            let id = TensorId(tensors.len() as u32);
            tensors.push(GmTensor {
                name: p.name.clone(),
                dtype: *dtype,
                shape: shape_of(b, shape, &p.name)?,
                role: TensorRole::Param(i),
            });
            if let Some(v) = g.nodes.iter().position(|n| n.kind == NodeKind::Param(i)) {
                of.insert(ValueId(v as u32), id);
            }
        }
    }
    for (i, r) in g.results.iter().enumerate() {
        let node = g.node(r.value);
        let id = TensorId(tensors.len() as u32);
        tensors.push(GmTensor {
            name: r.name.clone(),
            dtype: node.dtype,
            shape: shape_of(b, &node.shape, &r.name)?,
            role: TensorRole::Output(i),
        });
        of.entry(r.value).or_insert(id);
    }
    // Intermediates: the values the groups store, then the values a group reads that no group computes,
    // the nodes skipped at these dims (`passes::empty`), which have no elements (any other would have been
    // computed): empty tensors, never written.
    let stored = f.groups.iter().flat_map(|gr| gr.stored.iter().map(|v| (*v, true)));
    let unwritten = f.groups.iter().flat_map(|gr| gr.inputs.iter().map(|v| (*v, false)));
    for (v, computed) in stored.chain(unwritten) {
        if of.contains_key(&v) || matches!(g.node(v).kind, NodeKind::Param(_)) {
            continue;
        }
        let node = g.node(v);
        let name = node.name.clone().unwrap_or_else(|| format!("t{}", v.0));
        let shape = shape_of(b, &node.shape, &name)?;
        if !computed && shape.iter().product::<u64>() != 0 {
            continue;
        }
        let id = TensorId(tensors.len() as u32);
        tensors.push(GmTensor { name, dtype: node.dtype, shape, role: TensorRole::Intermediate(v) });
        of.insert(v, id);
    }
    Ok(GmPlan { tensors, of })
}

/// An order in which the groups can run: each after every group whose stored values it reads.
pub fn group_order(f: &Fusion) -> Option<Vec<usize>> {
    let n = f.groups.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let next = (0..n).find(|&k| {
            !done[k]
                && f.groups[k].inputs.iter().all(|i| match f.group_of[i.index()] {
                    Some(p) => p == k || done[p],
                    None => true,
                })
        })?;
        done[next] = true;
        order.push(next);
    }
    Some(order)
}

/// Builds one launch: buffers, scalar registers and the two programs.
pub struct LaunchBuilder<'t> {
    pub target: &'t Target,
    pub launch: Launch,
}

impl<'t> LaunchBuilder<'t> {
    pub fn new(target: &'t Target, name: impl Into<String>, unit: Unit, cube_cores: u32, vector_cores: u32) -> Self {
        LaunchBuilder {
            target,
            launch: Launch {
                name: name.into(),
                unit,
                cube_cores,
                vector_cores,
                buffers: Vec::new(),
                svars: Vec::new(),
                cube: Vec::new(),
                vector: Vec::new(),
            },
        }
    }

    pub fn buffer(&mut self, name: impl Into<String>, mem: Mem, dtype: DType, shape: Vec<u64>, slots: u32) -> BufId {
        let layout = match mem {
            Mem::UB => Layout::ND,
            Mem::L0A => Layout::ZZ,
            Mem::L0B => Layout::ZN,
            Mem::L1 | Mem::L0C => Layout::NZ,
        };
        self.launch.buffers.push(Buffer { name: name.into(), mem, dtype, shape, slots, layout, offset: 0 });
        BufId(self.launch.buffers.len() as u32 - 1)
    }

    pub fn svar(&mut self, name: impl Into<String>) -> SVar {
        self.launch.svars.push(name.into());
        SVar(self.launch.svars.len() as u32 - 1)
    }

    /// Places every buffer in its memory (aligned, in declaration order) and checks the capacities.
    /// `why` names what chose the sizes, for the error (a schedule hint, or the tiler itself).
    pub fn finish(self, why: &str) -> Result<Launch, Diagnostic> {
        self.finish_at(crate::span::Span::default(), why)
    }

    /// [`finish`](Self::finish), with the error at `span` (the schedule hint that chose the sizes).
    pub fn finish_at(mut self, span: crate::span::Span, why: &str) -> Result<Launch, Diagnostic> {
        let mut errs = Vec::new();
        for mem in Mem::ALL {
            let Some(m) = self.target.memory(mem.name()) else { continue };
            let mut at = 0u64;
            let mut used = Vec::new();
            for b in self.launch.buffers.iter_mut().filter(|b| b.mem == mem) {
                let slot = b.slot_bytes().div_ceil(m.align) * m.align;
                at = at.div_ceil(m.align) * m.align;
                b.offset = at;
                at += slot * b.slots as u64;
                used.push(format!("{} {}", b.name, slot * b.slots as u64));
            }
            if at > m.usable() {
                errs.push(format!("{}: {at} bytes needed ({}), {} available", mem.name(), used.join(", "), m.usable()));
            }
        }
        if errs.is_empty() {
            Ok(self.launch)
        } else {
            let d = Diagnostic::error(
                Code::OverCapacity,
                span,
                format!(
                    "launch `{}` does not fit the target `{}` ({why}): {}",
                    self.launch.name,
                    self.target.name,
                    errs.join("; ")
                ),
            );
            Err(if span == crate::span::Span::default() {
                d
            } else {
                d.with_label("the hint that chose the tile sizes")
            })
        }
    }
}

/// A `#[tile(...)]` hint on a member of a group, with its axes resolved to positions of the member's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TileHint {
    pub node: ValueId,
    /// (axis of the node's shape, tile size), in axis order.
    pub axes: Vec<(usize, u64)>,
    pub span: crate::span::Span,
    /// The hint as written, for messages: `#[tile(t: 64)]`.
    pub text: String,
}

/// The tile hints on the members of `group`. An axis is named by an output index variable of a `Compute`
/// node, or by a dim symbol of the node's shape (every axis of that size).
pub fn tile_hints(g: &Graph, group: &crate::passes::fuse::Group) -> Vec<TileHint> {
    let mut out = Vec::new();
    for h in &g.hints {
        let crate::graph::HintKind::Tile(list) = &h.kind else { continue };
        if !group.nodes.contains(&h.node) || h.node.index() >= g.nodes.len() {
            continue;
        }
        let node = g.node(h.node);
        let vars: Vec<&str> = match &node.kind {
            NodeKind::Compute { vars, .. } => vars.iter().map(|v| v.name.as_str()).collect(),
            _ => Vec::new(),
        };
        let mut axes = Vec::new();
        for (name, size) in list {
            match vars.iter().position(|v| v == name) {
                Some(a) => axes.push((a, *size)),
                None => {
                    for (a, d) in node.shape.iter().enumerate() {
                        if d.as_sym() == Some(name.as_str()) {
                            axes.push((a, *size));
                        }
                    }
                }
            }
        }
        axes.sort();
        axes.dedup_by_key(|(a, _)| *a);
        let args: Vec<String> = list.iter().map(|(a, s)| format!("{a}: {s}")).collect();
        out.push(TileHint { node: h.node, axes, span: h.span, text: format!("#[tile({})]", args.join(", ")) });
    }
    out
}

/// The error for a tile hint that a template cannot honour as asked.
pub fn hint_error(h: &TileHint, why: String) -> Diagnostic {
    Diagnostic::error(Code::BadHint, h.span, format!("{} cannot be honoured: {why}", h.text)).with_label("this hint")
}

/// Shorthands for scalar expressions.
pub fn c(v: i64) -> SExpr {
    SExpr::Const(v)
}

pub fn v(x: SVar) -> SExpr {
    SExpr::Var(x)
}

pub fn bin(op: SBin, a: SExpr, b: SExpr) -> SExpr {
    SExpr::Bin(op, Box::new(a), Box::new(b))
}

/// `a + b` on the scalar unit.
pub fn add(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Add, a, b)
}

/// `a - b` on the scalar unit.
pub fn sub(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Sub, a, b)
}

/// `a * b` on the scalar unit.
pub fn mul(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Mul, a, b)
}

/// `a / b` (floor division) on the scalar unit.
pub fn div(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Div, a, b)
}

/// `min(a, b)` on the scalar unit.
pub fn min(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Min, a, b)
}

/// The item that a core runs at loop value `u` of `for u in core .. items step cubes` when each core takes
/// a contiguous run of the items (a target's `contiguous_chunks`: the host, where a core is a unit of a
/// thread's work, its units run one after another): `u` is core `i = u % cubes`'s `u / cubes`-th item, and
/// core `i` runs the consecutive items `i·q + min(i, r) ..` (`q, r = items / cubes, items % cubes`; core
/// `i` has `q + (i < r)` of them either way, so this is a bijection of `0..items`). The matmul template's
/// blocks and the attention backward template's units are dealt this way on such a target.
pub fn contiguous_item(u: SExpr, items: i64, cubes: i64) -> SExpr {
    if cubes <= 1 {
        return u;
    }
    let (q, r) = (items / cubes, items % cubes);
    let core = bin(SBin::Mod, u.clone(), c(cubes));
    let n = bin(SBin::Div, u, c(cubes));
    let start = if r == 0 { mul(core, c(q)) } else { add(mul(core.clone(), c(q)), bin(SBin::Min, core, c(r))) };
    add(start, n)
}

/// `max(a, b)` on the scalar unit.
pub fn max(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Max, a, b)
}

/// `a < b` (0 or 1) on the scalar unit.
pub fn lt(a: SExpr, b: SExpr) -> SExpr {
    bin(SBin::Lt, a, b)
}

/// A flag from `from` to `to` (event 0), set and at once waited for: `to`'s later work follows `from`'s.
pub fn flag(from: Pipe, to: Pipe) -> [Stmt; 2] {
    [Stmt::SetFlag { from, to, event: 0 }, Stmt::WaitFlag { from, to, event: 0 }]
}

/// The loop (over `base`) of a double-buffered stream over `lo..n`: block `i` of this core starts at
/// `lo + i * stride`, and the blocks alternate between slot 0 and slot 1 (`slots[s]` is the work of a block
/// in slot `s`, at `off`):
///
/// ```text
/// for base in lo .. n step 2 * stride { off = base; slot 0; off = off + stride; if off < n { slot 1 } }
/// ```
pub fn two_slot_loop(base: SVar, off: SVar, lo: SExpr, n: i64, stride: i64, slots: [Vec<Stmt>; 2]) -> Stmt {
    let [first, second] = slots;
    let mut body = vec![Stmt::Set { var: off, value: v(base) }];
    body.extend(first);
    body.push(Stmt::Set { var: off, value: add(v(off), c(stride)) });
    body.push(Stmt::If { cond: lt(v(off), c(n)), then: second });
    Stmt::For { var: base, lo, hi: c(n), step: stride.saturating_mul(2), body }
}

/// [`two_slot_loop`] over `lo .. hi` (expressions, e.g. one core's contiguous part).
pub fn two_slot_loop_to(base: SVar, off: SVar, lo: SExpr, hi: SExpr, stride: i64, slots: [Vec<Stmt>; 2]) -> Stmt {
    let [first, second] = slots;
    let mut body = vec![Stmt::Set { var: off, value: v(base) }];
    body.extend(first);
    body.push(Stmt::Set { var: off, value: add(v(off), c(stride)) });
    body.push(Stmt::If { cond: lt(v(off), hi.clone()), then: second });
    Stmt::For { var: base, lo, hi, step: stride.saturating_mul(2), body }
}

/// A region of a GM tensor, one row of `len` elements at `offset`.
pub fn gm_row(t: TensorId, offset: SExpr) -> Region {
    Region { loc: Loc::Gm(t), offset, row_stride: c(0) }
}

/// A region of a buffer slot, starting at element 0, rows `row_stride` apart.
pub fn buf_region(b: BufId, slot: u32, row_stride: i64) -> Region {
    Region { loc: Loc::Buf { buf: b, slot: c(slot as i64) }, offset: c(0), row_stride: c(row_stride) }
}

/// What a template makes of one group: its launches, run in order (a group may need several, e.g. a
/// reduction across cores: partial results, then their combination), and the workspace tensors they use.
/// Workspace `i` is referred to as tensor `gm.tensors.len() + i` of the plan the template was given; the
/// caller appends them to the program's tensors in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tiled {
    pub launches: Vec<Launch>,
    pub workspaces: Vec<GmTensor>,
    /// The candidate tilings the template weighed with the cost model (empty if it had one choice).
    pub tuning: Vec<Candidate>,
}

impl Tiled {
    pub fn one(l: Launch) -> Tiled {
        Tiled { launches: vec![l], workspaces: Vec::new(), tuning: Vec::new() }
    }
}

/// A candidate tiling a template weighed, with the cycles the model estimates for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The launch it is a candidate for.
    pub launch: String,
    /// The template's parameters, e.g. `bm 128 bn 256 bk 64 kf 256 l0c x1`.
    pub what: String,
    /// The model's estimate, or (when `simulated` is false) a lower bound on it.
    pub cycles: f64,
    /// Whether the tiler kept it.
    pub chosen: bool,
    /// Whether the model simulated it; a candidate whose lower bound was beaten by enough simulated ones
    /// is not simulated.
    pub simulated: bool,
}

/// Keeps the fastest of the candidates offered to it (the first of equals: deterministic) and the list of
/// all it weighed.
pub struct Tuner<T> {
    launch: String,
    weighed: Vec<Candidate>,
    best: Option<(usize, T)>,
}

impl<T> Tuner<T> {
    pub fn new(launch: &str) -> Self {
        Tuner { launch: launch.to_string(), weighed: Vec::new(), best: None }
    }

    /// Offers a candidate described by `what` that the model estimates at `cycles`.
    pub fn offer(&mut self, what: String, cycles: f64, value: T) {
        let i = self.weighed.len();
        self.weighed.push(Candidate { launch: self.launch.clone(), what, cycles, chosen: false, simulated: true });
        if self.best.as_ref().is_none_or(|(b, _)| cycles < self.weighed[*b].cycles) {
            self.best = Some((i, value));
        }
    }

    /// Records a candidate left out for its lower bound `cycles` (never kept).
    pub fn bound_only(&mut self, what: String, cycles: f64) {
        self.weighed.push(Candidate { launch: self.launch.clone(), what, cycles, chosen: false, simulated: false });
    }

    /// The kept candidate and everything weighed (the kept one marked), or `None` if nothing was offered.
    pub fn finish(mut self) -> Option<(T, Vec<Candidate>)> {
        let (i, value) = self.best?;
        self.weighed[i].chosen = true;
        Some((value, self.weighed))
    }
}

/// Candidate sizes for a tuner: every power of two from `2^from_exp` below `top`, and `top`, largest first
/// (so that on a tie the larger size, with fewer and longer instructions, is kept).
pub fn powers_below(from_exp: u32, top: i64) -> Vec<i64> {
    let mut v: Vec<i64> = (from_exp..62).map(|p| 1i64 << p).take_while(|x| *x < top).collect();
    v.push(top);
    v.reverse();
    v
}

/// Builds the launch for each of `params` (`build` gives `None` for one it cannot build), ranks them with
/// [`rank`] and keeps the fastest: the kept launch and every candidate weighed, or `None` if none was built.
pub fn tune<P: Copy>(
    name: &str,
    gm: &GmPlan,
    target: &Target,
    params: Vec<P>,
    what: impl Fn(P) -> String,
    mut build: impl FnMut(P) -> Option<Launch>,
) -> Result<Option<(Launch, Vec<Candidate>)>, Diagnostic> {
    let mut tuner = Tuner::new(name);
    for p in params {
        let Some(l) = build(p) else { continue };
        let cycles = rank(gm, &l, None, target)?;
        tuner.offer(what(p), cycles, l);
    }
    Ok(tuner.finish())
}

/// How many core groups [`rank`] simulates.
pub const RANK_GROUPS: usize = 1;

/// The estimated cycles of a candidate launch (with its workspace, if it has one) over the program's GM
/// tensors so far: [`crate::cost::rank_launch`] on a program of that one launch.
pub fn rank(gm: &GmPlan, l: &Launch, ws: Option<&GmTensor>, target: &Target) -> Result<f64, Diagnostic> {
    let mut tensors = gm.tensors.clone();
    tensors.extend(ws.cloned());
    let prog = TileProgram {
        kernel: l.name.clone(),
        target: target.name.clone(),
        dims: BTreeMap::new(),
        tensors,
        launches: vec![l.clone()],
    };
    // Launches that differ only in which tensors they name (the five Newton–Schulz steps of Muon, say) are
    // ranked once: the estimate depends on the program's text and its tensors' dtypes, shapes and roles.
    let key = rank_key(&prog, target);
    if let Some(c) = RANKS.with(|m| m.borrow().get(&key).copied()) {
        return Ok(c);
    }
    let c = crate::cost::rank_launch(&prog, target, &crate::report::IntData::new(), RANK_GROUPS)?;
    RANKS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(key, c);
    });
    Ok(c)
}

thread_local! {
    /// [`rank`]'s results by [`rank_key`].
    static RANKS: std::cell::RefCell<std::collections::HashMap<String, f64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// What [`rank`]'s estimate depends on, as text: the target (its whole description), the launch as printed
/// with its name dropped and its GM tensors numbered in order of first appearance, and those tensors'
/// dtypes, shapes and roles.
fn rank_key(prog: &TileProgram, target: &Target) -> String {
    let mut p = prog.clone();
    for (i, t) in p.tensors.iter_mut().enumerate() {
        t.name = format!("\u{1}{i}\u{2}");
    }
    let mut l = p.launches[0].clone();
    l.name = String::new();
    let text = crate::tile::print::print_launch(&p, &l);
    let mut order: Vec<usize> = Vec::new();
    let mut key = format!("{target:?}\n");
    let mut rest = text.as_str();
    while let Some(a) = rest.find('\u{1}') {
        key.push_str(&rest[..a]);
        let Some(b) = rest[a..].find('\u{2}') else { break };
        let i: usize = rest[a + 1..a + b].parse().unwrap_or(usize::MAX);
        let n = order.iter().position(|&x| x == i).unwrap_or_else(|| {
            order.push(i);
            order.len() - 1
        });
        key.push_str(&format!("T{n}"));
        rest = &rest[a + b + 1..];
    }
    key.push_str(rest);
    for i in order {
        if let Some(t) = prog.tensors.get(i) {
            let role = match &t.role {
                TensorRole::Workspace { per_core, .. } => format!("ws{per_core}"),
                _ => "gm".to_string(),
            };
            key.push_str(&format!("\n{} {:?} {role}", t.dtype, t.shape));
        }
    }
    key
}

/// Tiles one group with the first template that takes it (`None`: no template does).
pub fn tile_group(
    g: &Graph,
    group: &crate::passes::fuse::Group,
    name: &str,
    gm: &GmPlan,
    target: &Target,
    b: &Binding,
) -> Option<Result<Tiled, Diagnostic>> {
    // Templates that choose their own tiles refuse tile hints rather than ignore them.
    let hints = tile_hints(g, group);
    let no_hints = |r: Result<Tiled, Diagnostic>, what: &str| -> Result<Tiled, Diagnostic> {
        match hints.first() {
            Some(h) => Err(hint_error(h, format!("{what} choose their own tiles and take no tile sizes"))),
            None => r,
        }
    };
    if let Some(r) = vector::elementwise_tuned(g, group, name, gm, target, b) {
        return Some(r.map(|(l, tuning)| Tiled { launches: vec![l], workspaces: Vec::new(), tuning }));
    }
    if let Some(r) = reduce::reduce(g, group, name, gm, target, b) {
        return Some(no_hints(r, "reductions across rows"));
    }
    if let Some(r) = rows::rows_tuned(g, group, name, gm, target, b) {
        return Some(r.map(|(l, tuning)| Tiled { launches: vec![l], workspaces: Vec::new(), tuning }));
    }
    if let Some(r) = library::library(g, group, name, gm, target, b) {
        return Some(no_hints(r.map(Tiled::one), "library operations (top-k, sorting, prefix sums, histograms)"));
    }
    if let Some(r) = score_bwd::score_bwd(g, group, name, gm, target, b) {
        return Some(no_hints(r, "attention backward groups"));
    }
    if let Some(r) = score::score(g, group, name, gm, target, b) {
        return Some(no_hints(r, "attention (score) groups"));
    }
    if let Some(r) = grouped::grouped(g, group, name, gm, target, b) {
        return Some(no_hints(r, "grouped matmuls"));
    }
    cube::matmul_tuned(g, group, name, gm, target, b)
        .map(|r| r.map(|(l, ws, tuning)| Tiled { launches: vec![l], workspaces: ws.into_iter().collect(), tuning }))
}

/// Lowers a fused kernel to the tile IR for `target` at the dims of `b`: the launches of each group, in an
/// order that respects the groups' dependences. A group no template takes is an error naming it.
pub fn tile(g: &Graph, f: &Fusion, b: &Binding, target: &Target) -> Result<TileProgram, Diagnostic> {
    tile_with_groups(g, f, b, target).map(|(p, _)| p)
}

/// [`tile`], with the fusion group of each launch.
pub fn tile_with_groups(
    g: &Graph,
    f: &Fusion,
    b: &Binding,
    target: &Target,
) -> Result<(TileProgram, Vec<usize>), Diagnostic> {
    tile_tuned(g, f, b, target).map(|(p, k, _)| (p, k))
}

/// A tiled kernel: the program, the fusion group of each launch, and the candidate tilings weighed.
pub type TiledKernel = (TileProgram, Vec<usize>, Vec<Candidate>);

/// [`tile_with_groups`], with the candidate tilings the templates weighed (`kc build --emit tuning`).
pub fn tile_tuned(g: &Graph, f: &Fusion, b: &Binding, target: &Target) -> Result<TiledKernel, Diagnostic> {
    tile_or_fail(g, f, b, target).map_err(|(_, d)| d)
}

/// Fuses `g` (honouring its hints) and tiles it. A score (flash) group that no template can tile at these
/// sizes — a value too wide for the on-chip accumulators, say — is fused again by the other rules (its
/// members become matmuls with epilogues and vector groups, with the score-shaped values in GM), and tiled
/// again. Before fusing, the graph is specialized to the zero dims of `b` ([`crate::passes::empty`]); when
/// a group is still left without a template, the kernel is fused and tiled once more with its loads read
/// through copies ([`crate::passes::copies`]: `squeeze(mu)[n]` as `mu[n, 0]`); any other failure, or a
/// second one, is the (first) error. The fusion returned is of the graph that tiled, whose node ids are
/// `g`'s.
pub fn fuse_and_tile(g: &Graph, b: &Binding, target: &Target) -> Result<FusedKernel, Diagnostic> {
    // At dims with a zero: empty reductions folded, nodes with no elements skipped (`passes::empty`).
    let (folded, skip) = crate::passes::empty::specialize(g, b);
    let g = folded.as_ref().unwrap_or(g);
    match fuse_and_tile_graph(g, b, target, skip.clone()) {
        // A group no template takes, with loads that name copies: once more on the graph that reads
        // through them (`passes::copies`), the vector templates' form; the first error if that fails too.
        Err((true, d)) => match crate::passes::copies::read_through(g) {
            Some((through, unread)) => {
                let skip = skip.into_iter().chain(unread).collect();
                fuse_and_tile_graph(&through, b, target, skip).map_err(|_| d)
            }
            None => Err(d),
        },
        r => r.map_err(|(_, d)| d),
    }
}

/// [`fuse_and_tile`] of `g` as it is, with the nodes `skip` not computed; a failure says whether it is a
/// group no template took.
#[allow(clippy::result_large_err)] // built once per failed tiling, never in a loop
fn fuse_and_tile_graph(
    g: &Graph,
    b: &Binding,
    target: &Target,
    skip: std::collections::BTreeSet<ValueId>,
) -> Result<FusedKernel, (bool, Diagnostic)> {
    let mut cfg = crate::passes::fuse::FusionConfig::from_hints(g);
    cfg.skip = skip;
    loop {
        let f = crate::passes::fuse::fuse(g, &cfg);
        match tile_or_fail(g, &f, b, target) {
            Ok((p, k, t)) => return Ok((f, p, k, t)),
            Err((Some(k), d)) => {
                let gr = &f.groups[k];
                if gr.kind != crate::passes::fuse::GroupKind::Score || gr.nodes.iter().all(|v| cfg.no_score.contains(v))
                {
                    return Err((true, d));
                }
                cfg.no_score.extend(gr.nodes.iter().copied());
            }
            Err((None, d)) => return Err((false, d)),
        }
    }
}

/// A fused and tiled kernel: the fusion, the program, the fusion group of each launch, and the candidate
/// tilings weighed.
pub type FusedKernel = (Fusion, TileProgram, Vec<usize>, Vec<Candidate>);

/// [`tile_tuned`]; a failure says which group no template took, if that is what failed.
#[allow(clippy::result_large_err)] // built once per failed tiling, never in a loop
fn tile_or_fail(
    g: &Graph,
    f: &Fusion,
    b: &Binding,
    target: &Target,
) -> Result<TiledKernel, (Option<usize>, Diagnostic)> {
    let mut gm = plan_gm(g, f, b).map_err(|d| (None, d))?;
    let order = group_order(f).ok_or_else(|| {
        (
            None,
            Diagnostic::error(Code::Internal, g.span, format!("kernel `{}`: the fusion groups form a cycle", g.name)),
        )
    })?;
    let mut launches = Vec::new();
    let mut of_group = Vec::new();
    let mut tuning = Vec::new();
    for k in order {
        let group = &f.groups[k];
        let name = format!("{}.g{k}", g.name);
        match tile_group(g, group, &name, &gm, target, b) {
            Some(Ok(t)) => {
                gm.tensors.extend(t.workspaces);
                tuning.extend(t.tuning);
                of_group.extend(t.launches.iter().map(|_| k));
                launches.extend(t.launches);
            }
            Some(Err(e)) => return Err((None, e)),
            None => {
                let members: Vec<String> = group
                    .nodes
                    .iter()
                    .map(|n| g.node(*n).name.clone().unwrap_or_else(|| format!("%{}", n.0)))
                    .collect();
                return Err((
                    Some(k),
                    Diagnostic::error(
                        Code::NoTiling,
                        g.node(group.nodes[0]).span,
                        format!(
                            "kernel `{}`: no tiling template takes group {k} ({} group of {})",
                            g.name,
                            group.kind.name(),
                            members.join(", ")
                        ),
                    ),
                ));
            }
        }
    }
    let p = TileProgram {
        kernel: g.name.clone(),
        target: target.name.clone(),
        dims: b.dims.clone(),
        tensors: gm.tensors,
        launches,
    };
    Ok((p, of_group, tuning))
}
