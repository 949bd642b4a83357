//! What memory a compiled program may get back dirty: the proof behind the executor's GM arena and its
//! unzeroed scratch.
//!
//! Every executor starts a launch's on-chip buffers as zeros and every GM tensor that is not a parameter
//! as zeros (the tile IR's semantics). Zeroing costs: a fresh intermediate or workspace is page-faulted
//! and cleared by the kernel on every call (a `kc bench` of Muon touched 170 MB of them per call), and the
//! scratch of every unit is cleared before its cores start. Neither is needed for memory that the program
//! always writes before it reads it: its initial contents are never seen. [`plan`] proves this, per GM
//! tensor and per launch buffer, by walking the compiled core programs with their concrete scalar values
//! (as [`crate::inplace`] does, and with the same conventions: 64-bit wrapping arithmetic, floor division,
//! loop bounds evaluated once):
//!
//! - **A buffer** belongs to one core, whose statements run in program order on the host. A launch's
//!   buffer needs no zeroing when, on every core of its kind, every element a statement reads (a copy's
//!   or a vector statement's source, an mmad's operands and its accumulator when it accumulates, a
//!   reduction's source and its destination when it accumulates) was written by an earlier statement of
//!   the same core into the same slot. A buffer a library operation writes is always zeroed (`bincount`
//!   adds into its destination).
//! - **A GM intermediate or workspace** may keep its memory from one call to the next (the executor's
//!   arena, [`crate::native::Arena`]) when every element any statement reads was written before, in every
//!   possible schedule: by an earlier launch (launches run in order), or earlier in the same launch by
//!   the same core, or by the partner core of its unit ordered by cross-core flags (a cube core's write
//!   followed by its `n`-th set of flag `f` comes before a vector partner's statements after its `n`-th
//!   wait on `f`, and the other way round). Gathers read their whole source; a tensor a library
//!   operation writes is never kept.
//!
//! - **A GM output** (a result that is not an `inout` parameter's) may be written into memory the caller
//!   gave back from an earlier call's results ([`crate::native::Arena::recycle`]), dirty, when every
//!   element any statement reads was written before (as for an intermediate) and the launches write every
//!   element of it: its initial contents are then never read nor returned.
//!
//! A program the walk cannot follow (a scalar read of data: data-dependent control or addressing, or
//! more than [`MAX_STEPS`] statements) gets the empty plan: every buffer zeroed, no tensor kept (a read in
//! the control is found before the walk: [`crate::inplace::control_reads_data`]). A tensor
//! whose in-launch orderings would cost more than [`MAX_CHECKS`] comparisons is not kept (each read is
//! compared with the writes that meet it, found by their windows: attention's workspaces, up to half a
//! million row windows each at the benchmark's size, take a few million).

use crate::inplace::{control_reads_data, insert, vreads, Compiled, ProgramWalk, Regs};
use crate::native::CROSS_FLAGS;
use kc_ir::dtype::DType;
use kc_ir::tensor::TensorData;
use kc_ir::tile::{BufId, Launch, LibOp, Loc, Region, SExpr, Stmt, TensorId, TensorRole, TileProgram};
use std::collections::{BTreeMap, BTreeSet};

/// The most statements the walk executes.
pub const MAX_STEPS: u64 = 1 << 23;
/// The most look-ups and (read, write) comparisons the in-launch ordering checks make.
pub const MAX_CHECKS: u64 = 1 << 26;
/// The largest buffer slot, and the largest copy into one, whose elements a walk following the control's
/// reads of data tracks.
pub const MAX_CONTROL_ELEMS: u64 = 1 << 20;

/// What a compiled program may get back dirty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Per GM tensor: an intermediate or workspace whose every read element is written first (it may
    /// keep its memory across calls, unzeroed).
    pub keep: Vec<bool>,
    /// Per launch, per buffer: whether the buffer must hold zeros when a core starts.
    pub zero: Vec<Vec<bool>>,
    /// Per GM tensor: an output whose every read element is written first and whose every element is
    /// written (it may be written into recycled memory, unzeroed).
    pub outputs: Vec<bool>,
    /// Per GM tensor: the kept intermediate whose memory it uses instead of its own ([`share_dead`]): both
    /// kept, of the same dtype and size, and every launch that names this one comes after every launch that
    /// names the other (and the other tensors sharing that memory).
    pub share: Vec<Option<usize>>,
}

impl Plan {
    /// Nothing proven: every buffer zeroed, no tensor kept.
    pub fn none(prog: &TileProgram) -> Plan {
        Plan {
            keep: vec![false; prog.tensors.len()],
            zero: prog.launches.iter().map(|l| vec![true; l.buffers.len()]).collect(),
            outputs: vec![false; prog.tensors.len()],
            share: vec![None; prog.tensors.len()],
        }
    }
}

/// The plan of `prog` as compiled (`launches`: the core programs after copy forwarding), or the empty
/// plan with the reason the walk stopped.
pub fn plan(prog: &TileProgram, launches: &[Compiled<'_>]) -> (Plan, Option<String>) {
    plan_with_data(prog, launches, &BTreeMap::new())
}

/// The plan of `prog` as compiled, for one call whose GM tensors in `data` hold these contents. Only
/// for a program whose control reads data ([`reads_data`]); `data` should hold the contents of every
/// tensor of [`control_sources`] that no statement writes, as the call's GM holds them. A scalar read is
/// followed when it reads an element the same core copied into its buffer from one of these tensors
/// (and wrote nothing else over since); any other read of data stops the walk (the empty plan).
///
/// The plan is a proof for calls whose tensors of `data` hold exactly these contents: the caller must
/// never apply it to a call with other contents.
pub fn plan_with_data(
    prog: &TileProgram,
    launches: &[Compiled<'_>],
    data: &BTreeMap<TensorId, &TensorData>,
) -> (Plan, Option<String>) {
    match walk(prog, launches, data) {
        Ok(p) => (p, None),
        Err(e) => (Plan::none(prog), Some(e)),
    }
}

/// Whether the control of the compiled program reads data (a scalar read in a register's value, a
/// condition or a loop bound): its plan then depends on the call's data ([`plan_with_data`]).
pub fn reads_data(launches: &[Compiled<'_>]) -> bool {
    launches.iter().any(|c| control_reads_data(c.cube) || control_reads_data(c.vector))
}

/// The GM tensors copied into a buffer that a scalar read names, in some launch: the data a walk of a
/// program whose control reads data needs ([`plan_with_data`]).
pub fn control_sources(launches: &[Compiled<'_>]) -> BTreeSet<TensorId> {
    let mut out = BTreeSet::new();
    for c in launches {
        for body in [c.cube, c.vector] {
            let mut bufs = BTreeSet::new();
            read_bufs(body, &mut bufs);
            copies_into(body, &bufs, &mut out);
        }
    }
    out
}

/// The buffers the scalar expressions of `body` read.
fn read_bufs(body: &[Stmt], out: &mut BTreeSet<BufId>) {
    fn sexpr(e: &SExpr, out: &mut BTreeSet<BufId>) {
        match e {
            SExpr::Read { buf, slot, index } => {
                out.insert(*buf);
                sexpr(slot, out);
                sexpr(index, out);
            }
            SExpr::Bin(_, a, b) => {
                sexpr(a, out);
                sexpr(b, out);
            }
            SExpr::Const(_) | SExpr::Var(_) | SExpr::Core => {}
        }
    }
    fn region(r: &Region, out: &mut BTreeSet<BufId>) {
        sexpr(&r.offset, out);
        sexpr(&r.row_stride, out);
        if let Loc::Buf { slot, .. } = &r.loc {
            sexpr(slot, out);
        }
    }
    for s in body {
        match s {
            Stmt::Set { value, .. } => sexpr(value, out),
            Stmt::If { cond, then } => {
                sexpr(cond, out);
                read_bufs(then, out);
            }
            Stmt::For { lo, hi, body, .. } => {
                sexpr(lo, out);
                sexpr(hi, out);
                read_bufs(body, out);
            }
            Stmt::Copy { src, dst, rows, cols, .. } => {
                for r in [src, dst] {
                    region(r, out);
                }
                sexpr(rows, out);
                sexpr(cols, out);
            }
            Stmt::Gather { col_offset, index, dst, rows, cols, .. } => {
                for e in [col_offset, rows, cols] {
                    sexpr(e, out);
                }
                region(index, out);
                region(dst, out);
            }
            Stmt::Mmad { a, b, c, m, k, n, .. } => {
                for r in [a, b, c] {
                    region(r, out);
                }
                for e in [m, k, n] {
                    sexpr(e, out);
                }
            }
            Stmt::Vector { dst, rows, cols, expr } => {
                let (mut reads, mut scalars) = (Vec::new(), Vec::new());
                vreads(expr, &mut reads, &mut scalars);
                for (_, r) in reads {
                    region(r, out);
                }
                for e in scalars {
                    sexpr(e, out);
                }
                region(dst, out);
                sexpr(rows, out);
                sexpr(cols, out);
            }
            Stmt::Reduce { src, dst, rows, cols, .. } => {
                region(src, out);
                region(dst, out);
                sexpr(rows, out);
                sexpr(cols, out);
            }
            Stmt::Library { op, src, rows, cols, .. } => {
                region(src, out);
                sexpr(rows, out);
                sexpr(cols, out);
                let outs: Vec<&Region> = match op {
                    LibOp::TopK { values, indices, .. } => values.iter().chain(indices.iter()).collect(),
                    LibOp::ArgSort { dst, .. } | LibOp::BinCount { dst, .. } => vec![dst],
                    LibOp::CumSum { dst, carry, .. } => std::iter::once(dst).chain(carry.iter()).collect(),
                };
                for r in outs {
                    region(r, out);
                }
            }
            Stmt::SetFlag { .. }
            | Stmt::WaitFlag { .. }
            | Stmt::Barrier { .. }
            | Stmt::CrossSet { .. }
            | Stmt::CrossWait { .. } => {}
        }
    }
}

/// Adds the GM tensors that `body` copies into one of `bufs`.
fn copies_into(body: &[Stmt], bufs: &BTreeSet<BufId>, out: &mut BTreeSet<TensorId>) {
    for s in body {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => copies_into(body, bufs, out),
            Stmt::Copy {
                src: Region { loc: Loc::Gm(t), .. }, dst: Region { loc: Loc::Buf { buf, .. }, .. }, ..
            } if bufs.contains(buf) => {
                out.insert(*t);
            }
            _ => {}
        }
    }
}

/// An access to a GM tensor inside a launch: (stream, statement number, cross-event position, start, end).
type Span = (usize, u64, usize, u64, u64);

struct Stream {
    /// The unit it belongs to and its position in it (0 the cube core).
    unit: usize,
    member: usize,
    /// Cross-core events so far: per flag, sets then waits (prefix counts, one entry per event + 1).
    counts: Vec<[u32; 2 * CROSS_FLAGS]>,
}

struct Walk<'p> {
    prog: &'p TileProgram,
    regs: Regs,
    steps: u64,
    seq: u64,
    /// Per GM tensor: elements written by earlier launches.
    before: Vec<BTreeMap<u64, u64>>,
    /// This launch's writes and its reads not covered by `before`, per GM tensor.
    writes: Vec<Vec<Span>>,
    gaps: Vec<Vec<Span>>,
    keep: Vec<bool>,
    /// The current stream: index, buffers written so far ((buffer, slot) -> elements), its zero needs.
    stream: usize,
    streams: Vec<Stream>,
    written: BTreeMap<(u32, i64), BTreeMap<u64, u64>>,
    zero: Vec<bool>,
    /// The call's data the control may read (empty: none), and the buffers the current stream's scalar
    /// reads name (their known elements are `regs.mem`).
    data: &'p BTreeMap<TensorId, &'p TensorData>,
    ctl: BTreeSet<BufId>,
}

fn walk<'p>(
    prog: &'p TileProgram,
    launches: &[Compiled<'_>],
    data: &'p BTreeMap<TensorId, &'p TensorData>,
) -> Result<Plan, String> {
    if launches.len() != prog.launches.len() {
        return Err("the compiled launches do not match the program".into());
    }
    let follow = reads_data(launches);
    if follow && data.is_empty() {
        return Err("a scalar read of data (data-dependent control or addressing)".into());
    }
    let n = prog.tensors.len();
    // Outputs are followed as intermediates are, then must be written whole.
    let keep = prog
        .tensors
        .iter()
        .map(|t| matches!(t.role, TensorRole::Intermediate(_) | TensorRole::Workspace { .. } | TensorRole::Output(_)));
    let mut w = Walk {
        prog,
        regs: Regs::new(0),
        steps: 0,
        seq: 0,
        before: vec![BTreeMap::new(); n],
        writes: vec![Vec::new(); n],
        gaps: vec![Vec::new(); n],
        keep: keep.collect(),
        stream: 0,
        streams: Vec::new(),
        written: BTreeMap::new(),
        zero: Vec::new(),
        data,
        ctl: BTreeSet::new(),
    };
    let mut zero = Vec::with_capacity(prog.launches.len());
    let mut checks: u64 = 0;
    for (l, c) in prog.launches.iter().zip(launches) {
        w.zero = vec![false; l.buffers.len()];
        w.streams.clear();
        let (cubes, vecs) = (l.cube_cores as usize, l.vector_cores as usize);
        let ratio = vecs.checked_div(cubes).unwrap_or(0);
        for (body, cores, cube) in [(c.cube, cubes, true), (c.vector, vecs, false)] {
            if body.is_empty() {
                continue;
            }
            for core in 0..cores {
                // The unit of the core, as the executor groups them (`native::units`).
                let (unit, member) = if cube {
                    (core, 0)
                } else if ratio > 0 && core < cubes * ratio {
                    (core / ratio, 1 + core % ratio)
                } else {
                    (cubes + core, 1)
                };
                w.stream = w.streams.len();
                w.streams.push(Stream { unit, member, counts: vec![[0; 2 * CROSS_FLAGS]] });
                w.regs = Regs::new(l.svars.len());
                w.written.clear();
                w.ctl.clear();
                if follow {
                    read_bufs(body, &mut w.ctl);
                    w.regs.mem = Some(BTreeMap::new());
                }
                w.stmts(l, body, core as i64)?;
            }
        }
        // Reads not written by earlier launches must be written earlier in this launch, in every schedule.
        for t in 0..n {
            let gaps = std::mem::take(&mut w.gaps[t]);
            let writes = std::mem::take(&mut w.writes[t]);
            if w.keep[t] && !gaps.is_empty() && !w.written_first(&writes, &gaps, &mut checks) {
                w.keep[t] = false;
            }
            for x in &writes {
                insert(&mut w.before[t], x.3, x.4);
            }
        }
        zero.push(std::mem::take(&mut w.zero));
    }
    let mut keep = w.keep;
    let mut outputs = vec![false; n];
    for (t, x) in prog.tensors.iter().enumerate() {
        if let TensorRole::Output(_) = x.role {
            let whole = crate::gm::tensor_elems(prog, t).is_some_and(|e| covers(&w.before[t], 0, e));
            outputs[t] = keep[t] && whole;
            keep[t] = false;
        }
    }
    let share = share_dead(prog, launches, &keep);
    Ok(Plan { keep, zero, outputs, share })
}

/// Which kept intermediates may use the memory of another (`Plan::share`): Muon's five steps each have
/// their own `x`, `a` and `b` (48 MiB a call at 1024 × 4096), each written and read within a step or two,
/// so every store of a step went to lines last touched a whole call earlier (cold: the mirrored blocks of
/// the symmetric products, written 16 bytes to a line, cost 2 ns an element). With the memory shared, a
/// step writes the lines the step before last used.
///
/// Why it is the same computation: a kept tensor (`keep`) has every element a statement reads written
/// before in the call, by its own launches; its live range is the launches whose compiled statements name
/// it. Launches run one after another, so when the ranges of the tensors sharing one memory are apart, no
/// launch of one sees an element another wrote: each reads only what its own launches wrote since its
/// first. Only intermediates share (not workspaces, whose areas the executor may give per thread, nor
/// outputs and parameters, which are the caller's), the first of each group by order of first use keeps its
/// own memory and the others point there; same dtype and size, so the addressing is the tensor's own.
pub fn share_dead(prog: &TileProgram, launches: &[Compiled<'_>], keep: &[bool]) -> Vec<Option<usize>> {
    let n = prog.tensors.len();
    let mut share = vec![None; n];
    // Per tensor, the first and last launch whose compiled statements name it.
    let mut range: Vec<Option<(usize, usize)>> = vec![None; n];
    for (li, c) in launches.iter().enumerate() {
        let mut used = BTreeSet::new();
        crate::gm::named(c.cube, &mut used);
        crate::gm::named(c.vector, &mut used);
        for t in used {
            if let Some(r) = range.get_mut(t.0 as usize) {
                *r = Some(r.map_or((li, li), |(a, _)| (a, li)));
            }
        }
    }
    let mut items: Vec<(usize, usize, usize)> = (0..n)
        .filter(|&t| matches!(prog.tensors[t].role, TensorRole::Intermediate(_)) && keep.get(t) == Some(&true))
        .filter_map(|t| range[t].map(|(a, b)| (a, b, t)))
        .collect();
    items.sort_unstable();
    // Groups: (owner, dtype, elements, last launch of the group so far).
    let mut groups: Vec<(usize, DType, Option<u64>, usize)> = Vec::new();
    for (first, last, t) in items {
        let (dt, elems) = (prog.tensors[t].dtype, crate::gm::tensor_elems(prog, t));
        match groups.iter_mut().find(|g| g.1 == dt && g.2 == elems && elems.is_some() && g.3 < first) {
            Some(g) => {
                share[t] = Some(g.0);
                g.3 = last;
            }
            None => groups.push((t, dt, elems, last)),
        }
    }
    share
}

impl Walk<'_> {
    /// Whether every gap (`gaps`: the parts of reads no earlier launch wrote) is covered by `writes` of
    /// this launch that come before it in every schedule ([`Walk::ordered`]). Only the writes that meet a
    /// gap can cover any of it, so the writes are indexed by their window (start, end): a gap `[a, e)`
    /// looks at the windows starting in `[a - longest, e)`, and at the writes of each until one is ordered
    /// before it (the window is then covered). `checks` counts the look-ups and comparisons, across the
    /// tensors of the walk: past [`MAX_CHECKS`] the tensor is not proven (false).
    fn written_first(&self, writes: &[Span], gaps: &[Span], checks: &mut u64) -> bool {
        let mut windows: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
        let mut longest = 0;
        for (i, x) in writes.iter().enumerate() {
            windows.entry((x.3, x.4)).or_default().push(i);
            longest = longest.max(x.4 - x.3);
        }
        *checks = checks.saturating_add(writes.len() as u64);
        for g in gaps {
            let mut set = BTreeMap::new();
            for (&(a, e), xs) in windows.range((g.3.saturating_sub(longest), 0)..(g.4, 0)) {
                *checks = checks.saturating_add(1);
                if *checks > MAX_CHECKS {
                    return false;
                }
                if e <= g.3 {
                    continue;
                }
                for &i in xs {
                    *checks = checks.saturating_add(1);
                    if *checks > MAX_CHECKS {
                        return false;
                    }
                    if self.ordered(&writes[i], g) {
                        insert(&mut set, a, e);
                        break;
                    }
                }
                if covers(&set, g.3, g.4) {
                    break;
                }
            }
            if !covers(&set, g.3, g.4) || *checks > MAX_CHECKS {
                return false;
            }
        }
        true
    }

    /// Whether write `x` comes before read `r` in every schedule of the launch.
    fn ordered(&self, x: &Span, r: &Span) -> bool {
        if x.0 == r.0 {
            return x.1 < r.1;
        }
        let (a, b) = (&self.streams[x.0], &self.streams[r.0]);
        // Partners: a cube core and one of its vector cores (vector cores order only through their cube).
        if a.unit != b.unit || (a.member != 0 && b.member != 0) {
            return false;
        }
        let (ca, cb) = (&a.counts[x.2], &b.counts[r.2]);
        // The write precedes the writer's next set of `f`, number `ca[f] + 1`; the reader has completed
        // `cb[waits of f]` waits, each consuming one set of each partner.
        (0..CROSS_FLAGS).any(|f| ca[f] < cb[CROSS_FLAGS + f])
    }

    /// Records a `rows × cols` window of `r`, read or written.
    fn access(&mut self, _l: &Launch, r: &Region, rows: i64, cols: i64, core: i64, write: bool) -> Result<(), String> {
        let offset = self.regs.eval(&r.offset, core)?;
        let stride = self.regs.eval(&r.row_stride, core)?;
        if rows <= 0 || cols <= 0 {
            return Ok(());
        }
        if offset < 0 || stride < 0 {
            return Err("a window at a negative offset or stride".into());
        }
        match &r.loc {
            Loc::Gm(t) => self.gm(t.0 as usize, offset, stride, rows, cols, write),
            Loc::Buf { buf, slot } => {
                let slot = self.regs.eval(slot, core)?;
                let key = (buf.0, slot);
                let b = buf.0 as usize;
                if write {
                    let set = self.written.entry(key).or_default();
                    for_rows(offset, stride, rows, cols, |a, e| insert(set, a, e));
                    if self.ctl.contains(buf) {
                        // What a scalar read would find there is known only after a copy of data
                        // ([`Walk::fill`]).
                        let words = self.words(_l, *buf, slot)?;
                        let mut inside = true;
                        for_rows(offset, stride, rows, cols, |a, e| match words.get_mut(a as usize..e as usize) {
                            Some(w) => w.fill(None),
                            None => inside = false,
                        });
                        if !inside {
                            return Err("a window outside its buffer slot".into());
                        }
                    }
                } else if self.zero.get(b) == Some(&false) {
                    let empty = BTreeMap::new();
                    let set = self.written.get(&key).unwrap_or(&empty);
                    let (o, s, c) = (offset as u64, stride as u64, cols as u64);
                    let mut ok = covers(set, o, o + (rows as u64 - 1) * s + c);
                    if !ok {
                        ok = true;
                        for_rows(offset, stride, rows, cols, |a, e| ok &= covers(set, a, e));
                    }
                    if !ok {
                        self.zero[b] = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// The known elements of a slot of a buffer the control reads (all unknown at first).
    fn words(&mut self, l: &Launch, buf: BufId, slot: i64) -> Result<&mut Vec<Option<i32>>, String> {
        let b = l.buffers.get(buf.0 as usize).ok_or("a buffer that does not exist")?;
        let elems = b.slot_elems();
        if slot < 0 || slot >= i64::from(b.slots) {
            return Err(format!("a slot outside buffer `{}`", b.name));
        }
        if elems > MAX_CONTROL_ELEMS {
            return Err(format!("the control reads buffer `{}`, of more than {MAX_CONTROL_ELEMS} elements", b.name));
        }
        let mem = self.regs.mem.get_or_insert_with(BTreeMap::new);
        Ok(mem.entry((buf.0, slot)).or_insert_with(|| vec![None; elems as usize]))
    }

    /// After a copy of `rows × cols` from GM tensor `t` (`src`) into a buffer the control reads (`dst`):
    /// the elements copied are known when `t` is one of the call's data tensors, of the buffer's dtype.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        l: &Launch,
        t: TensorId,
        src: &Region,
        dst: &Region,
        rows: i64,
        cols: i64,
        core: i64,
    ) -> Result<(), String> {
        let Loc::Buf { buf, slot } = &dst.loc else { return Ok(()) };
        let Some(&d) = self.data.get(&t) else { return Ok(()) };
        let dtype = l.buffers.get(buf.0 as usize).map(|b| b.dtype);
        let bits = |i: usize| -> Option<i32> {
            match (d, dtype) {
                (TensorData::I32(v), Some(DType::I32)) => v.get(i).copied(),
                (TensorData::F32(v), Some(DType::F32)) => v.get(i).map(|x| x.to_bits() as i32),
                _ => None,
            }
        };
        if rows <= 0 || cols <= 0 {
            return Ok(());
        }
        if rows.saturating_mul(cols) > MAX_CONTROL_ELEMS as i64 {
            return Err("a copy of more data than the walk follows".into());
        }
        let (so, ss) = (self.regs.eval(&src.offset, core)?, self.regs.eval(&src.row_stride, core)?);
        let (dof, ds) = (self.regs.eval(&dst.offset, core)?, self.regs.eval(&dst.row_stride, core)?);
        let slot = self.regs.eval(slot, core)?;
        let words = self.words(l, *buf, slot)?;
        for r in 0..rows {
            for c in 0..cols {
                let (s, o) = (so + r * ss + c, dof + r * ds + c);
                let w = words.get_mut(usize::try_from(o).map_err(|_| "a negative buffer index")?);
                let w = w.ok_or("a window outside its buffer slot")?;
                // An element outside the tensor (the JIT's bounds check fails the call) stays unknown.
                *w = usize::try_from(s).ok().and_then(bits);
            }
        }
        Ok(())
    }

    fn gm(&mut self, t: usize, offset: i64, stride: i64, rows: i64, cols: i64, write: bool) {
        if !self.keep.get(t).copied().unwrap_or(false) {
            return;
        }
        let pos = self.streams.get(self.stream).map_or(0, |s| s.counts.len() - 1);
        let (stream, seq) = (self.stream, self.seq);
        if write {
            let v = &mut self.writes[t];
            for_rows(offset, stride, rows, cols, |a, e| v.push((stream, seq, pos, a, e)));
        } else {
            let (before, gaps) = (&self.before[t], &mut self.gaps[t]);
            // Most reads are of what earlier launches wrote whole: one look-up for the window's extent.
            let (o, s, c) = (offset as u64, stride as u64, cols as u64);
            if covers(before, o, o + (rows as u64 - 1) * s + c) {
                return;
            }
            for_rows(offset, stride, rows, cols, |a, e| {
                let mut x = a;
                // The parts of [a, e) no earlier launch wrote.
                let first = before.range(..=a).next_back().map(|(&s, &end)| (s, end));
                for (s, end) in first.into_iter().chain(before.range(a + 1..e).map(|(&s, &end)| (s, end))) {
                    if end <= x {
                        continue;
                    }
                    if s > x {
                        gaps.push((stream, seq, pos, x, s));
                    }
                    x = x.max(end);
                    if x >= e {
                        break;
                    }
                }
                if x < e {
                    gaps.push((stream, seq, pos, x, e));
                }
            });
        }
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

    /// A loop of column (or row) copies, `for j in lo..hi { copy src(j) -> dst(j), rows × cols }` with
    /// each window moving by a constant step (the tiler's transposing loads, whose iterations would be
    /// most of a grouped matmul's walk): the union of the iterations' windows is itself a window, and since
    /// the copy reads another place than it writes, reading the union and then writing the union has the
    /// iterations' effects on what the walk tracks. The loop variable ends as the loop leaves it.
    fn whole_loop(&mut self, l: &Launch, s: &Stmt, core: i64) -> Result<bool, String> {
        let Stmt::For { var, lo, hi, step: 1, body } = s else { return Ok(false) };
        let [Stmt::Copy { src, dst, rows, cols, .. }] = body.as_slice() else { return Ok(false) };
        let fixed = |e: &SExpr| !mentions(e, *var);
        if src.loc == dst.loc
            || !(fixed(rows) && fixed(cols) && fixed(&src.row_stride) && fixed(&dst.row_stride))
            || [&src.loc, &dst.loc]
                .iter()
                .any(|x| matches!(x, Loc::Buf { buf, slot } if !fixed(slot) || self.ctl.contains(buf)))
        {
            return Ok(false);
        }
        let (Some(ks), Some(kd)) = (step_of(&src.offset, *var), step_of(&dst.offset, *var)) else { return Ok(false) };
        let (lo, hi) = (self.regs.eval(lo, core)?, self.regs.eval(hi, core)?);
        self.regs.set(*var, lo)?;
        let (r, c) = (self.regs.eval(rows, core)?, self.regs.eval(cols, core)?);
        let n = hi.saturating_sub(lo);
        let (Some(sw), Some(dw)) = (
            union(self.regs.eval(&src.row_stride, core)?, ks, r, c, n),
            union(self.regs.eval(&dst.row_stride, core)?, kd, r, c, n),
        ) else {
            return Ok(false);
        };
        if n > 0 {
            self.step()?;
            let at = |x: &Region, (stride, rows, cols): (i64, i64, i64)| {
                let mut x = x.clone();
                x.row_stride = SExpr::Const(stride);
                (x, rows, cols)
            };
            // Offsets at `j = lo` (the register holds `lo`), strides and sizes of the unions.
            let (s2, sr, sc) = at(src, sw);
            let (d2, dr, dc) = at(dst, dw);
            self.access(l, &s2, sr, sc, core, false)?;
            self.access(l, &d2, dr, dc, core, true)?;
            self.regs.set(*var, lo.wrapping_add(n))?;
        }
        Ok(true)
    }

    fn leaf(&mut self, l: &Launch, s: &Stmt, core: i64) -> Result<(), String> {
        match s {
            Stmt::For { .. } | Stmt::Set { .. } | Stmt::If { .. } => {}
            Stmt::Copy { src, dst, rows, cols, .. } => {
                let (rows, cols) = (self.regs.eval(rows, core)?, self.regs.eval(cols, core)?);
                self.access(l, src, rows, cols, core, false)?;
                self.access(l, dst, rows, cols, core, true)?;
                if let (Loc::Gm(t), Loc::Buf { buf, .. }) = (&src.loc, &dst.loc) {
                    if self.ctl.contains(buf) {
                        self.fill(l, *t, src, dst, rows, cols, core)?;
                    }
                }
            }
            Stmt::Gather { src, col_offset, index, dst, rows, cols, .. } => {
                let (rows, cols) = (self.regs.eval(rows, core)?, self.regs.eval(cols, core)?);
                self.regs.eval(col_offset, core)?;
                self.access(l, index, rows, 1, core, false)?;
                // The rows read are data: the whole source.
                let elems: u64 = self.prog.tensors.get(src.0 as usize).map_or(0, |t| t.shape.iter().product());
                self.gm(src.0 as usize, 0, 0, 1, elems as i64, false);
                self.access(l, dst, rows, cols, core, true)?;
            }
            Stmt::Mmad { a, b, c, m, k, n, accumulate } => {
                let (m, k, n) = (self.regs.eval(m, core)?, self.regs.eval(k, core)?, self.regs.eval(n, core)?);
                self.access(l, a, m, k, core, false)?;
                self.access(l, b, k, n, core, false)?;
                if *accumulate {
                    self.access(l, c, m, n, core, false)?;
                }
                self.access(l, c, m, n, core, true)?;
            }
            Stmt::Vector { dst, rows, cols, expr } => {
                let (rows, cols) = (self.regs.eval(rows, core)?, self.regs.eval(cols, core)?);
                let mut reads = Vec::new();
                let mut scalars = Vec::new();
                vreads(expr, &mut reads, &mut scalars);
                for e in scalars {
                    self.regs.eval(e, core)?;
                }
                for (kind, r) in reads {
                    let (rr, cc) = match kind {
                        0 => (rows, cols),
                        1 => (rows, 1),
                        _ => (1, cols),
                    };
                    self.access(l, r, rr, cc, core, false)?;
                }
                self.access(l, dst, rows, cols, core, true)?;
            }
            Stmt::Reduce { axis, src, dst, rows, cols, accumulate, .. } => {
                let (rows, cols) = (self.regs.eval(rows, core)?, self.regs.eval(cols, core)?);
                self.access(l, src, rows, cols, core, false)?;
                let (dr, dc) = if *axis == 1 { (rows, 1) } else { (1, cols) };
                if *accumulate {
                    self.access(l, dst, dr, dc, core, false)?;
                }
                self.access(l, dst, dr, dc, core, true)?;
            }
            Stmt::Library { op, src, rows, cols, .. } => {
                let (rows, cols) = (self.regs.eval(rows, core)?, self.regs.eval(cols, core)?);
                self.access(l, src, rows, cols, core, false)?;
                let outs: Vec<&Region> = match op {
                    LibOp::TopK { values, indices, .. } => values.iter().chain(indices.iter()).collect(),
                    LibOp::ArgSort { dst, .. } | LibOp::BinCount { dst, .. } => vec![dst],
                    LibOp::CumSum { dst, carry, .. } => std::iter::once(dst).chain(carry.iter()).collect(),
                };
                // Library outputs may accumulate: their buffers are zeroed, their tensors never kept.
                for r in outs {
                    self.regs.eval(&r.offset, core)?;
                    self.regs.eval(&r.row_stride, core)?;
                    match &r.loc {
                        Loc::Gm(t) => {
                            if let Some(k) = self.keep.get_mut(t.0 as usize) {
                                *k = false;
                            }
                        }
                        Loc::Buf { buf, slot } => {
                            let slot = self.regs.eval(slot, core)?;
                            if let Some(z) = self.zero.get_mut(buf.0 as usize) {
                                *z = true;
                            }
                            if self.ctl.contains(buf) {
                                self.words(l, *buf, slot)?.fill(None);
                            }
                        }
                    }
                }
            }
            Stmt::CrossSet { flag } | Stmt::CrossWait { flag } => {
                let f = *flag as usize;
                if f >= CROSS_FLAGS {
                    return Err("a cross-core flag out of range".into());
                }
                let st = &mut self.streams[self.stream];
                let mut c = *st.counts.last().unwrap_or(&[0; 2 * CROSS_FLAGS]);
                let i = if matches!(s, Stmt::CrossSet { .. }) { f } else { CROSS_FLAGS + f };
                c[i] = c[i].saturating_add(1);
                st.counts.push(c);
            }
            Stmt::SetFlag { .. } | Stmt::WaitFlag { .. } | Stmt::Barrier { .. } => {}
        }
        Ok(())
    }
}

/// The union of the `rows × cols` windows of row stride `stride` at offsets `o + k·j`, `j` in `0..n`, as
/// one window (row stride, rows, cols) at offset `o`, when it is one: columns (`cols == 1`) moving by one
/// element lie side by side; windows that are one contiguous run each (one row, a column of row stride
/// 1, or rows of stride `cols`) moving by `k > 0` are the rows of a window of row stride `k`.
fn union(stride: i64, k: i64, rows: i64, cols: i64, n: i64) -> Option<(i64, i64, i64)> {
    if n <= 0 || rows <= 0 || cols <= 0 {
        return Some((stride, 0, 0));
    }
    if cols == 1 && k == 1 {
        return Some((stride, rows, n));
    }
    // One run of `len` elements per window.
    let len = if rows == 1 {
        cols
    } else if cols == 1 && stride == 1 {
        rows
    } else if stride == cols {
        rows.checked_mul(cols)?
    } else {
        return None;
    };
    (k > 0).then_some((k, n, len))
}

/// Whether `e` mentions register `v`.
fn mentions(e: &SExpr, v: kc_ir::tile::SVar) -> bool {
    match e {
        SExpr::Const(_) | SExpr::Core => false,
        SExpr::Var(x) => *x == v,
        SExpr::Bin(_, a, b) => mentions(a, v) || mentions(b, v),
        SExpr::Read { slot, index, .. } => mentions(slot, v) || mentions(index, v),
    }
}

/// `Some(k)` if `e` is `base + k·v` with `base` not mentioning `v`: sums and differences of such terms,
/// and products of one with a constant.
fn step_of(e: &SExpr, v: kc_ir::tile::SVar) -> Option<i64> {
    use kc_ir::tile::SBin;
    if !mentions(e, v) {
        return Some(0);
    }
    match e {
        SExpr::Var(x) if *x == v => Some(1),
        SExpr::Bin(SBin::Add, a, b) => step_of(a, v)?.checked_add(step_of(b, v)?),
        SExpr::Bin(SBin::Sub, a, b) => step_of(a, v)?.checked_sub(step_of(b, v)?),
        SExpr::Bin(SBin::Mul, a, b) => match (&**a, &**b) {
            (SExpr::Const(c), x) | (x, SExpr::Const(c)) => step_of(x, v)?.checked_mul(*c),
            _ => None,
        },
        _ => None,
    }
}

/// Calls `f(start, end)` for the element runs of a window (one run when its rows are contiguous).
fn for_rows(offset: i64, stride: i64, rows: i64, cols: i64, mut f: impl FnMut(u64, u64)) {
    let (o, s, c) = (offset as u64, stride as u64, cols as u64);
    if rows == 1 || stride == cols {
        f(o, o + (rows as u64 - 1) * s + c);
    } else {
        for i in 0..rows as u64 {
            f(o + i * s, o + i * s + c);
        }
    }
}

/// Whether `[a, b)` lies inside one interval of the set (its intervals do not touch).
fn covers(set: &BTreeMap<u64, u64>, a: u64, b: u64) -> bool {
    a >= b || set.range(..=a).next_back().is_some_and(|(_, &e)| e >= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_of_intervals() {
        let mut s = BTreeMap::new();
        insert(&mut s, 10, 20);
        insert(&mut s, 20, 30);
        assert!(covers(&s, 10, 30) && covers(&s, 12, 13) && covers(&s, 5, 5));
        assert!(!covers(&s, 9, 12) && !covers(&s, 25, 31));
        insert(&mut s, 40, 50);
        assert!(!covers(&s, 25, 45));
    }
}
