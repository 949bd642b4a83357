//! Whether a compiled program may update its caller's `inout` tensors in place.
//!
//! The contract of every executor is that a failed launch leaves the caller's tensors as they were. The
//! copy path keeps it by running on copies of the written parameters ([`crate::gm::setup`]); in place, the
//! program writes the caller's memory, so it must be certain, before the first write, that the run
//! cannot fail. [`plan`] decides this from the compiled core programs (after copy forwarding: what runs)
//! by walking their scalar control flow with the launch's concrete values:
//!
//! - **No statement whose success depends on data.** Only `For`, `Set`, `If`, `Copy`, `Vector` and the
//!   intra-core flags and barriers are accepted: no gathers (run-time index checks), no `SExpr::Read`
//!   (data-dependent addressing or control), no library operations, reductions, mmads or cross-core flags,
//!   and no vector statement with an integer division (a `DivByZero` site of the compiled code).
//! - **Nothing is allocated during a launch.** No launch has both cube and vector cores (their cores run
//!   as coroutines, on stacks allocated as the launch goes).
//! - **Every run-time check of the compiled code passes.** With no data-dependent value, the scalar unit's
//!   values are a function of the program, the core index and the dims: the walk computes every one of
//!   them, as the JIT does (64-bit wrapping arithmetic, floor division, loops evaluating their bounds once),
//!   and makes each check the compiled code makes — every window inside its GM tensor or buffer slot
//!   ([`window_ok`] is the JIT's bounds check), every slot index inside its buffer, no scalar division by
//!   zero, a hazard temporary no larger than its buffer. A program the walk accepts therefore cannot stop
//!   on a check, even one that a compiler bug would make fail: the walk would have failed first, before
//!   anything was written, and the launch falls back to the copy path.
//! - **Aliasing is safe.** An `inout` result that the program writes into an `Output` tensor of its own is
//!   written into the parameter's memory instead. That is only the same computation if, for every element,
//!   one core reads the parameter's element (any number of times) and writes the output's element, and
//!   all its reads come before its first write; the output is never read and is written whole. The walk
//!   records every window of the two tensors and checks exactly that.
//!
//! The walk is bounded ([`MAX_STEPS`] statements, [`MAX_SPANS`] recorded spans): a longer program is run
//! on copies.

use crate::native::Site;
use kc_ir::graph::Graph;
use kc_ir::tile::{Launch, Loc, Region, SBin, SExpr, Stmt, TensorId, TensorRole, TileProgram, VExpr};
use std::collections::BTreeMap;

/// The most statements the walk executes before it gives up (the program then runs on copies).
pub const MAX_STEPS: u64 = 1 << 22;
/// The most element spans of aliased tensors the walk records.
pub const MAX_SPANS: usize = 1 << 22;

/// How a program updates its `inout` tensors in place.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per `inout` result: (result index, parameter index, the parameter's GM tensor, the
    /// `Output` tensor that is written into the parameter's memory, if the program has one).
    pub inout: Vec<(usize, usize, TensorId, Option<TensorId>)>,
}

/// One compiled launch as the walk sees it: its core programs (as compiled) and the failure sites the
/// compiled code has.
pub struct Compiled<'a> {
    pub cube: &'a [Stmt],
    pub vector: &'a [Stmt],
    pub sites: &'a [Site],
}

/// The plan for running `prog` (lowered from `graph`, compiled to `launches`) in place, or why it must run
/// on copies.
pub fn plan(prog: &TileProgram, graph: &Graph, launches: &[Compiled<'_>]) -> Result<Plan, String> {
    if launches.len() != prog.launches.len() {
        return Err("the compiled launches do not match the program".into());
    }
    for l in &prog.launches {
        // A cube core and its vector cores run as coroutines, whose stacks are allocated during the launch.
        if l.cube_cores > 0 && l.vector_cores > 0 {
            return Err(format!("launch `{}` has cube and vector cores", l.name));
        }
    }
    for l in launches {
        if let Some(s) = l.sites.iter().find(|s| !matches!(s, Site::Internal(_) | Site::Bounds { .. })) {
            return Err(format!("the compiled code can fail on data ({})", site_kind(s)));
        }
    }
    // The inout results and their tensors.
    let mut inout = Vec::new();
    for (ri, r) in graph.results.iter().enumerate() {
        let Some(pi) = r.inout else { continue };
        let params: Vec<usize> =
            (0..prog.tensors.len()).filter(|&i| prog.tensors[i].role == TensorRole::Param(pi)).collect();
        let outs: Vec<usize> =
            (0..prog.tensors.len()).filter(|&i| prog.tensors[i].role == TensorRole::Output(ri)).collect();
        let (&[p], true) = (params.as_slice(), outs.len() <= 1) else {
            return Err(format!(
                "the inout `{}` has {} parameter tensors and {} outputs",
                r.name,
                params.len(),
                outs.len()
            ));
        };
        let o = outs.first().map(|&o| TensorId(o as u32));
        if let Some(o) = o {
            let (pt, ot) = (&prog.tensors[p], &prog.tensors[o.0 as usize]);
            if pt.dtype != ot.dtype || pt.shape != ot.shape {
                return Err(format!("the inout `{}` is written as another dtype or shape", r.name));
            }
        }
        inout.push((ri, pi, TensorId(p as u32), o));
    }
    if inout.is_empty() {
        return Err("the kernel has no inout result".into());
    }
    let (mut watch, mut pairs) = (BTreeMap::new(), BTreeMap::new());
    for &(_, _, p, o) in &inout {
        if let Some(o) = o {
            watch.insert(p, Vec::new());
            watch.insert(o, Vec::new());
            pairs.insert(o, p);
        }
    }
    let mut w = Walk { prog, regs: Regs::new(0), steps: 0, seq: 0, stream: 0, spans: 0, watch, pairs };
    for (l, c) in prog.launches.iter().zip(launches) {
        for (body, cores) in [(c.cube, l.cube_cores), (c.vector, l.vector_cores)] {
            if body.is_empty() {
                continue;
            }
            for core in 0..cores {
                w.regs = Regs::new(l.svars.len());
                w.stmts(l, body, i64::from(core))?;
                w.stream += 1;
            }
        }
    }
    for &(_, _, p, o) in &inout {
        let Some(o) = o else { continue };
        let elems: u64 = prog.tensors[o.0 as usize].shape.iter().product();
        let name = &prog.tensors[p.0 as usize].name;
        alias_ok(&w.watch[&p], &w.watch[&o], elems).map_err(|e| format!("`{name}` cannot be updated in place: {e}"))?;
    }
    Ok(Plan { inout })
}

fn site_kind(s: &Site) -> &'static str {
    match s {
        Site::Internal(_) => "an internal check",
        Site::Bounds { .. } => "a bounds check",
        Site::Gather { .. } => "a gather's index check",
        Site::DivByZero => "an integer division",
        Site::Library { .. } => "a library operation",
        Site::Reduce { .. } => "a reduction",
    }
}

/// An access to a watched tensor: (stream, sequence number, write, first element, end).
type Span = (u32, u64, bool, u64, u64);

struct Walk<'p> {
    prog: &'p TileProgram,
    regs: Regs,
    steps: u64,
    seq: u64,
    /// One stream per (launch, kind, core): its statements run in order.
    stream: u32,
    spans: usize,
    watch: BTreeMap<TensorId, Vec<Span>>,
    /// The aliased pairs: output -> parameter.
    pairs: BTreeMap<TensorId, TensorId>,
}

impl Walk<'_> {
    /// Checks a `rows × cols` window of `r` as the compiled code does, and records it if its tensor is
    /// watched.
    fn access(&mut self, l: &Launch, r: &Region, rows: i64, cols: i64, core: i64, write: bool) -> Result<(), String> {
        let offset = self.regs.eval(&r.offset, core)?;
        let stride = self.regs.eval(&r.row_stride, core)?;
        let limit = match &r.loc {
            Loc::Gm(t) => {
                let g = self.prog.tensors.get(t.0 as usize).ok_or("a GM tensor that does not exist")?;
                if matches!(g.role, TensorRole::Workspace { .. }) {
                    return Err("a workspace".into());
                }
                g.shape.iter().product::<u64>()
            }
            Loc::Buf { buf, slot } => {
                let b = l.buffers.get(buf.0 as usize).ok_or("a buffer that does not exist")?;
                let s = self.regs.eval(slot, core)?;
                if s < 0 || s >= i64::from(b.slots) {
                    return Err(format!("a slot outside buffer `{}`", b.name));
                }
                b.slot_elems()
            }
        };
        if !window_ok(offset, stride, rows, cols, limit) {
            return Err("a window outside its storage".into());
        }
        if let Loc::Gm(t) = r.loc {
            if let Some(v) = self.watch.get_mut(&t) {
                if rows > 0 && cols > 0 {
                    let contiguous = rows == 1 || stride == cols;
                    let n = if contiguous { 1 } else { rows as usize };
                    self.spans += n;
                    if self.spans > MAX_SPANS {
                        return Err(format!("more than {MAX_SPANS} windows of aliased tensors"));
                    }
                    let (o, s, c) = (offset as u64, stride as u64, cols as u64);
                    if contiguous {
                        v.push((self.stream, self.seq, write, o, o + (rows as u64 - 1) * s + c));
                    } else {
                        for i in 0..rows as u64 {
                            v.push((self.stream, self.seq, write, o + i * s, o + i * s + c));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl ProgramWalk for Walk<'_> {
    fn regs(&mut self) -> &mut Regs {
        &mut self.regs
    }

    fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!("the program runs more than {MAX_STEPS} statements (not walked)"));
        }
        self.seq += 1;
        Ok(())
    }

    fn leaf(&mut self, l: &Launch, s: &Stmt, core: i64) -> Result<(), String> {
        match s {
            Stmt::For { .. } | Stmt::Set { .. } | Stmt::If { .. } => {}
            Stmt::Copy { src, dst, rows, cols, .. } => {
                let rows = self.regs.eval(rows, core)?;
                let cols = self.regs.eval(cols, core)?;
                self.access(l, src, rows, cols, core, false)?;
                self.access(l, dst, rows, cols, core, true)?;
            }
            Stmt::Vector { dst, rows, cols, expr } => {
                let rows = self.regs.eval(rows, core)?;
                let cols = self.regs.eval(cols, core)?;
                let mut reads = Vec::new();
                let mut scalars = Vec::new();
                vreads(expr, &mut reads, &mut scalars);
                for e in scalars {
                    self.regs.eval(e, core)?;
                }
                let mut hazard = false;
                for (kind, r) in reads {
                    let (rr, cc) = match kind {
                        0 => (rows, cols),
                        1 => (rows, 1),
                        _ => (1, cols),
                    };
                    self.access(l, r, rr, cc, core, false)?;
                    if let (Loc::Buf { buf: a, .. }, Loc::Buf { buf: b, .. }) = (&r.loc, &dst.loc) {
                        hazard |= a == b && !(kind == 0 && r == dst);
                    }
                }
                // A statement that writes an aliased output while it reads its parameter reads and writes
                // element by element: only the same window is the same computation.
                if let Some(&p) = match dst.loc {
                    Loc::Gm(o) => self.pairs.get(&o),
                    Loc::Buf { .. } => None,
                } {
                    let mut r2 = Vec::new();
                    vreads(expr, &mut r2, &mut Vec::new());
                    for (kind, r) in r2 {
                        if r.loc == Loc::Gm(p) {
                            let same = kind == 0
                                && self.regs.eval(&r.offset, core)? == self.regs.eval(&dst.offset, core)?
                                && self.regs.eval(&r.row_stride, core)? == self.regs.eval(&dst.row_stride, core)?;
                            if !same {
                                return Err("a vector statement reads another window of the tensor it updates".into());
                            }
                        }
                    }
                }
                self.access(l, dst, rows, cols, core, true)?;
                if hazard {
                    let Loc::Buf { buf, .. } = dst.loc else { return Err("a vector statement into GM".into()) };
                    let elems = l.buffers.get(buf.0 as usize).map(|b| b.slot_elems()).unwrap_or(0);
                    if rows.wrapping_mul(cols) > elems as i64 {
                        return Err("a tile larger than its buffer".into());
                    }
                }
            }
            Stmt::SetFlag { .. } | Stmt::WaitFlag { .. } | Stmt::Barrier { .. } => {}
            Stmt::Gather { .. } => return Err("a gather (its indices are checked at run time)".into()),
            Stmt::Mmad { .. } => return Err("an mmad".into()),
            Stmt::Reduce { .. } => return Err("a reduction".into()),
            Stmt::Library { .. } => return Err("a library operation".into()),
            Stmt::CrossSet { .. } | Stmt::CrossWait { .. } => return Err("cross-core flags".into()),
        }
        Ok(())
    }
}

/// Whether a program's control reads data: a scalar read in a register's value, a condition or a loop
/// bound (where templates put them). The walks cannot follow it and would find out only on reaching it,
/// possibly after walking much of a large program; this answers first.
pub(crate) fn control_reads_data(body: &[Stmt]) -> bool {
    fn reads(e: &SExpr) -> bool {
        match e {
            SExpr::Read { .. } => true,
            SExpr::Bin(_, a, b) => reads(a) || reads(b),
            SExpr::Const(_) | SExpr::Var(_) | SExpr::Core => false,
        }
    }
    body.iter().any(|s| match s {
        Stmt::Set { value, .. } => reads(value),
        Stmt::If { cond, then } => reads(cond) || control_reads_data(then),
        Stmt::For { lo, hi, body, .. } => reads(lo) || reads(hi) || control_reads_data(body),
        _ => false,
    })
}

/// A walk of compiled core programs with their concrete scalar values (the in-place plan's, and
/// [`crate::reuse`]'s): the control statements are run here, the others are the walk's own.
pub(crate) trait ProgramWalk {
    fn regs(&mut self) -> &mut Regs;
    /// Counts a statement (a walk is bounded).
    fn step(&mut self) -> Result<(), String>;
    /// A statement other than `for`, `set` and `if`.
    fn leaf(&mut self, l: &Launch, s: &Stmt, core: i64) -> Result<(), String>;
    /// A loop the walk handles as a whole (its effects the same as the iterations'), or `false` to walk
    /// its iterations.
    fn whole_loop(&mut self, _l: &Launch, _s: &Stmt, _core: i64) -> Result<bool, String> {
        Ok(false)
    }

    /// Walks `body` on core `core`, with the loop bounds evaluated once, as the compiled code does.
    fn stmts(&mut self, l: &Launch, body: &[Stmt], core: i64) -> Result<(), String> {
        for s in body {
            self.step()?;
            match s {
                Stmt::For { .. } if self.whole_loop(l, s, core)? => {}
                Stmt::For { var, lo, hi, step, body } => {
                    let lo = self.regs().eval(lo, core)?;
                    let hi = self.regs().eval(hi, core)?;
                    self.regs().set(*var, lo)?;
                    while self.regs().get(*var)? < hi {
                        self.stmts(l, body, core)?;
                        let v = self.regs().get(*var)?.wrapping_add(*step);
                        self.regs().set(*var, v)?;
                    }
                }
                Stmt::Set { var, value } => {
                    let v = self.regs().eval(value, core)?;
                    self.regs().set(*var, v)?;
                }
                Stmt::If { cond, then } => {
                    if self.regs().eval(cond, core)? != 0 {
                        self.stmts(l, then, core)?;
                    }
                }
                _ => self.leaf(l, s, core)?,
            }
        }
        Ok(())
    }
}

/// Known 32-bit words of buffers, per (buffer, slot) ([`Regs::mem`]).
pub(crate) type KnownWords = BTreeMap<(u32, i64), Vec<Option<i32>>>;

/// A core's scalar registers during a walk of its compiled program, and scalar expressions over them as
/// the compiled code computes them. A scalar read of data is followed only where the walk knows the
/// element ([`Regs::mem`]: [`crate::reuse`]'s walk with the call's data); otherwise it stops the walk.
pub(crate) struct Regs {
    pub(crate) vals: Vec<i64>,
    /// Known elements of the buffers the control reads, per (buffer, slot): their 32-bit words as the
    /// scalar unit loads them. `None`: nothing is known (every scalar read stops the walk).
    pub(crate) mem: Option<KnownWords>,
}

impl Regs {
    pub(crate) fn new(n: usize) -> Regs {
        Regs { vals: vec![0; n], mem: None }
    }

    pub(crate) fn get(&self, v: kc_ir::tile::SVar) -> Result<i64, String> {
        self.vals.get(v.0 as usize).copied().ok_or_else(|| format!("register #{} is not declared", v.0))
    }

    pub(crate) fn set(&mut self, v: kc_ir::tile::SVar, x: i64) -> Result<(), String> {
        let r = self.vals.get_mut(v.0 as usize).ok_or_else(|| format!("register #{} is not declared", v.0))?;
        *r = x;
        Ok(())
    }

    /// The value of a scalar expression on core `core`.
    pub(crate) fn eval(&self, e: &SExpr, core: i64) -> Result<i64, String> {
        Ok(match e {
            SExpr::Const(c) => *c,
            SExpr::Var(v) => self.get(*v)?,
            SExpr::Core => core,
            SExpr::Bin(op, a, b) => sbin(*op, self.eval(a, core)?, self.eval(b, core)?)?,
            SExpr::Read { buf, slot, index } => {
                let no = || "a scalar read of data (data-dependent control or addressing)".to_string();
                let mem = self.mem.as_ref().ok_or_else(no)?;
                let (slot, index) = (self.eval(slot, core)?, self.eval(index, core)?);
                let words = mem.get(&(buf.0, slot)).ok_or_else(no)?;
                let w = usize::try_from(index).ok().and_then(|i| words.get(i)).copied().flatten();
                i64::from(w.ok_or_else(|| "a scalar read of an element the walk does not know".to_string())?)
            }
        })
    }
}

/// A scalar operation as the compiled code computes it: 64-bit wrapping arithmetic, floor division and
/// remainder (a division by zero, or of the least value by -1, is an error).
fn sbin(op: SBin, a: i64, b: i64) -> Result<i64, String> {
    Ok(match op {
        SBin::Add => a.wrapping_add(b),
        SBin::Sub => a.wrapping_sub(b),
        SBin::Mul => a.wrapping_mul(b),
        SBin::Min => a.min(b),
        SBin::Max => a.max(b),
        SBin::Lt => i64::from(a < b),
        SBin::Le => i64::from(a <= b),
        SBin::Eq => i64::from(a == b),
        SBin::Div | SBin::Mod => {
            if b == 0 || (a == i64::MIN && b == -1) {
                return Err("a scalar division by zero".into());
            }
            if op == SBin::Div {
                a.div_euclid(b) - i64::from(b < 0 && a.rem_euclid(b) != 0)
            } else {
                let r = a % b;
                if r != 0 && ((r < 0) != (b < 0)) {
                    r + b
                } else {
                    r
                }
            }
        }
    })
}

/// The JIT's bounds check of a `rows × cols` window with `offset` and row stride `stride` in storage of
/// `limit` elements: an empty window passes; negative sizes, offsets and strides fail.
pub fn window_ok(offset: i64, stride: i64, rows: i64, cols: i64, limit: u64) -> bool {
    if rows < 0 || cols < 0 {
        return false;
    }
    if rows == 0 || cols == 0 {
        return true;
    }
    if offset < 0 || stride < 0 {
        return false;
    }
    let end = i128::from(offset) + i128::from(rows - 1) * i128::from(stride) + i128::from(cols);
    end <= i128::from(limit)
}

/// The regions a vector expression reads (0: the tile, 1: one value per row, 2: one per column) and its
/// scalar-unit sub-expressions.
pub(crate) fn vreads<'e>(e: &'e VExpr, out: &mut Vec<(u8, &'e Region)>, scalars: &mut Vec<&'e SExpr>) {
    match e {
        VExpr::Read(r) => out.push((0, r)),
        VExpr::ReadRow(r) => out.push((1, r)),
        VExpr::ReadCol(r) => out.push((2, r)),
        VExpr::Scalar(s) => scalars.push(s),
        VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Row | VExpr::Col => {}
        _ => {
            for c in e.children() {
                vreads(c, out, scalars);
            }
        }
    }
}

/// Whether the output `o` (`elems` elements) may be written into the memory of the parameter `p` it
/// updates: `o` is never read and written whole, and each element is touched (read in `p`, written in
/// `o`) by one stream only, whose reads all come before its first write.
fn alias_ok(p: &[Span], o: &[Span], elems: u64) -> Result<(), String> {
    if p.iter().any(|s| s.2) {
        return Err("the parameter is also written".into());
    }
    if o.iter().any(|s| !s.2) {
        return Err("the output is read".into());
    }
    // Each stream's elements, merged; two streams' may not overlap.
    let mut by_stream: BTreeMap<u32, Vec<&Span>> = BTreeMap::new();
    for s in p.iter().chain(o) {
        by_stream.entry(s.0).or_default().push(s);
    }
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for spans in by_stream.values() {
        let mut set = BTreeMap::new();
        for s in spans {
            insert(&mut set, s.3, s.4);
        }
        merged.extend(set);
    }
    merged.sort_unstable();
    for w in merged.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("elements from {} are touched by two cores", w[1].0));
        }
    }
    // Within a stream: no read of an element after its write.
    for spans in by_stream.values_mut() {
        // A statement reads before it writes (a vector statement over an aliased pair reads and writes
        // the same window, element by element: checked by the walk).
        spans.sort_by_key(|s| (s.1, s.2));
        // Written intervals so far, merged: start -> end.
        let mut written: BTreeMap<u64, u64> = BTreeMap::new();
        for s in spans.iter() {
            if s.2 {
                insert(&mut written, s.3, s.4);
            } else if overlaps(&written, s.3, s.4) {
                return Err(format!("elements from {} are read after they are written", s.3));
            }
        }
    }
    // Written whole.
    let mut written: BTreeMap<u64, u64> = BTreeMap::new();
    for s in o {
        insert(&mut written, s.3, s.4);
    }
    if elems > 0 && (written.len() != 1 || written.iter().next() != Some((&0, &elems))) {
        return Err("the output is not written whole".into());
    }
    Ok(())
}

/// Adds `[a, b)` to a set of disjoint, non-touching intervals.
/// Adds `[a, b)` to a set of disjoint, non-touching intervals.
pub(crate) fn insert(set: &mut BTreeMap<u64, u64>, mut a: u64, mut b: u64) {
    if a >= b {
        return;
    }
    // Merge with every interval that overlaps or touches [a, b).
    let touching: Vec<(u64, u64)> = set.range(..=b).rev().take_while(|(_, &e)| e >= a).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in touching {
        set.remove(&s);
        a = a.min(s);
        b = b.max(e);
    }
    set.insert(a, b);
}

fn overlaps(set: &BTreeMap<u64, u64>, a: u64, b: u64) -> bool {
    set.range(..b).next_back().is_some_and(|(_, &e)| e > a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_merge() {
        let mut s = BTreeMap::new();
        insert(&mut s, 10, 20);
        insert(&mut s, 30, 40);
        assert!(overlaps(&s, 15, 16) && overlaps(&s, 0, 11) && !overlaps(&s, 20, 30) && overlaps(&s, 25, 35));
        insert(&mut s, 20, 30);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![(10, 40)]);
    }

    #[test]
    fn control_that_reads_data_is_seen_before_a_walk() {
        use kc_ir::tile::{BufId, SVar};
        let read = SExpr::Read { buf: BufId(0), slot: Box::new(SExpr::Const(0)), index: Box::new(SExpr::Const(0)) };
        let set = |value| Stmt::Set { var: SVar(0), value };
        let lt0 = SExpr::Bin(SBin::Lt, Box::new(read.clone()), Box::new(SExpr::Const(0)));
        assert!(!control_reads_data(&[set(SExpr::Const(1))]));
        assert!(control_reads_data(&[set(lt0.clone())]));
        // Nested in a loop's body or a condition.
        let inner = vec![Stmt::If { cond: read.clone(), then: vec![] }];
        assert!(control_reads_data(&[Stmt::For {
            var: SVar(1),
            lo: SExpr::Const(0),
            hi: SExpr::Const(4),
            step: 1,
            body: inner
        }]));
        assert!(control_reads_data(&[Stmt::If { cond: SExpr::Const(1), then: vec![set(lt0)] }]));
    }

    #[test]
    fn windows_are_checked_as_the_jit_does() {
        assert!(window_ok(0, 4, 2, 4, 8));
        assert!(!window_ok(1, 4, 2, 4, 8));
        assert!(window_ok(-5, -1, 0, 3, 0));
        assert!(!window_ok(-1, 0, 1, 1, 8));
        assert!(!window_ok(0, i64::MAX, 3, 1, 8));
    }

    #[test]
    fn aliasing_needs_reads_before_writes_on_one_core() {
        // (stream, seq, write, start, end)
        let p = [(0, 1, false, 0, 4), (1, 1, false, 4, 8)];
        let o = [(0, 2, true, 0, 4), (1, 2, true, 4, 8)];
        assert!(alias_ok(&p, &o, 8).is_ok());
        // Read after write.
        let p2 = [(0, 3, false, 0, 4), (1, 1, false, 4, 8)];
        assert!(alias_ok(&p2, &o, 8).is_err());
        // Another core reads an element this one writes.
        let p3 = [(0, 1, false, 0, 5), (1, 1, false, 4, 8)];
        assert!(alias_ok(&p3, &o, 8).is_err());
        // Not written whole.
        assert!(alias_ok(&p, &o[..1], 8).is_err());
        // The output read.
        let o2 = [(0, 2, true, 0, 4), (1, 2, true, 4, 8), (1, 3, false, 4, 5)];
        assert!(alias_ok(&p, &o2, 8).is_err());
    }
}
