//! Copy forwarding for the host: the cube unit's operands read where the data already is.
//!
//! On the NPU a matmul's operands travel GM → L1 → L0A/L0B before the cube reads them. On the host those
//! copies are pure overhead (the host's mmad routine reads any strided window), and they double or triple
//! the memory traffic of a matmul. This pass rewrites a core program so that an `Mmad` operand reads the
//! source of the copy that filled it, when that is provably the same data:
//!
//! 1. **L0 forwarding.** A `Copy` (same dtype) into a window `D` of a buffer, followed in the same
//!    statement list (possibly inside `If` bodies) by an `Mmad` whose operand is exactly `D` with the same
//!    sizes, with nothing in between that writes the buffer or the copy's source storage, or assigns a
//!    scalar register the two windows use: the operand becomes the copy's source.
//! 2. **L1 forwarding.** A `Copy` (same dtype) from a GM tensor that no statement of the launch writes into
//!    a window at offset 0 of a buffer slot, followed in the same list by a `For` loop (or `If`) whose
//!    mmads read that slot with the same row stride — at an offset `X * stride` (a row shift) or another
//!    offset (a column shift) — with nothing in between that writes the buffer or assigns a register of
//!    the copy's windows: the operand reads GM at the corresponding offset. The same for the source of a
//!    loop of column copies (`for j in 0..hi { copy slot(j) -> .., rows × 1 }`, the tiler's transposing
//!    loads) that reads column `j` of the copied window (`hi` its columns, `rows` its rows) or row `j` as a
//!    column (`hi` its rows, `rows` its columns), the sizes compared as written and unchanged since the
//!    copy, or column `e + j` (the host's L0 k steps inside one L1 load) with `e` provably at least 0 and
//!    `hi` provably `min(c, cols - e)` (see `L1::translate_column`): the loop reads GM, and the copy into L1
//!    goes. A tensor that only the partner program writes
//!    (attention's P, the backward's feeds) is forwarded the same way up to a `CrossWait` (see level 3).
//!    Writes into another slot of the buffer (a different constant slot) do not end the forwarding, and a
//!    copy at the end of the body of an `if C` is forwarded into later `if C` statements of the enclosing
//!    list (attention's second chunk of V and P, loaded and multiplied under `if 0 < hcl_1`).
//! 3. **Vector reads.** The same for the vector unit: a `Copy` (same dtype) from a GM tensor that no
//!    statement of the launch writes — or that only the partner program writes, with no `CrossWait` in
//!    between (the partner cores run only while this one waits) — into a UB window `D`, followed in the
//!    same list (or inside `If`/`For` bodies, checked whole; or, for a copy inside `if C`, in later
//!    `if C` statements) by `Vector` operands or `Reduce` sources that are exactly `D` with sizes that
//!    stay inside the copied window, with nothing in between that writes the buffer or assigns a register
//!    of the windows or sizes: the read goes to the copy's GM source; a statement that overwrites exactly
//!    `D` element for element reads the source too, and the copy goes (see `vec_reads`).
//! 4. **Vector writes.** A `Vector` statement writing a UB window that a following `Copy` moves unchanged
//!    (or f32 → bf16/f16) to a GM tensor that nothing else in the launch reads or writes, when the buffer
//!    has no other reader: the statement stores to GM and the copy goes (see `vec_writes`); the results
//!    of several buffers copied into one tensor go together when their windows are provably apart
//!    (`rewrite_groups`, `disjoint_windows`: the backward's two feeds in one workspace).
//! 5. **Cube results.** An mmad (and the accumulating mmads after it) into an L0C window that a following
//!    `Copy` moves unchanged to a GM tensor that nothing else in this program reads or writes, when L0C has
//!    no other reader: the mmads accumulate in GM and the copy goes (see `mmad_writes`). The partner
//!    program may read the tensor when no `CrossWait` lies in between (attention's score and P·V blocks).
//!    Results of several buffers copied into one tensor go together when their windows are provably apart
//!    (`disjoint_windows`: the backward's two score blocks in one workspace). The accumulating mmads may sit
//!    in a loop of k steps between the first and the copy (the grouped matmul's item on the host: both
//!    matmuls' chains in one loop, into one workspace), and the whole chain in the matmul template's nest
//!    of k steps when its first iteration provably starts with the `=` mmad (`first_link`: a mixed
//!    launch's workspace, Muon's `b·x`; an f32 result).
//! 6. A buffer whose every read was forwarded is no longer read: the copies into it are dropped.
//! 7. A copy whose window a later copy in the same statement list overwrites exactly (same region and
//!    sizes, as written) before anything reads the buffer or assigns a register of the window is dropped
//!    (`drop_overwritten`): the tiler's consecutive loads into one L0 buffer, once the mmads between them
//!    read the copies' sources.
//! 8. A copy into a buffer whose only reads are the `b` operands of mmads that [`transposed_b`] converts
//!    (their loops of column copies are skipped by the compiled code) is dropped, outside those loops
//!    (`drop_transposed_only`; attention backward's loads of `q` and `dout` into L0B).
//! 9. A `Vector` statement that moves a GM window unchanged into UB (what level 3 leaves of a `let` that is
//!    a matmul's result, attention backward's `dp = dp`) is a copy (`identity_copies`): level 3 runs again
//!    and forwards its readers, and it goes with the other unread copies. After level 4, one that stores a
//!    UB window unchanged into GM (moe_permute's gathered rows) is a copy too (`identity_stores`).
//!
//! The result is the same (the same elements reach the mmad or the vector unit, and the same bits reach
//! GM); only the host's work changes.

use kc_ir::dtype::DType;
use kc_ir::tile::{BufId, Launch, LibOp, Loc, Region, SBin, SExpr, SVar, Stmt, TensorId, TileProgram, VExpr};
use std::collections::BTreeSet;

/// The program `body` of `launch` with its copies forwarded (for the kind of core whose buffers these are).
pub fn forward(prog: &TileProgram, launch: &Launch, body: &[Stmt]) -> Vec<Stmt> {
    let mut out = body.to_vec();
    let gm_written = gm_writes(&launch.cube).union(&gm_writes(&launch.vector)).copied().collect::<BTreeSet<_>>();
    let dt = Dtypes { prog, launch };
    l0(&mut out, &dt);
    let own = gm_writes(body);
    l1(&mut out, &gm_written, &own, &dt);
    vec_reads(&mut out, &gm_written, &own, &dt);
    // Statements that now move a GM window unchanged into UB are copies, whose reads are forwarded in turn.
    if identity_copies(&mut out, &dt) {
        vec_reads(&mut out, &gm_written, &own, &dt);
    }
    // Vector statements run on vector cores only: the other program is the cube's.
    vec_writes(&mut out, launch, &launch.cube, &dt);
    // Statements that now store a buffer window unchanged into GM are copies.
    identity_stores(&mut out, &dt);
    // Results read again and copied out: stored to GM by their fused loop too.
    stores_beside(&mut out, launch, &launch.cube, &dt);
    // The partner's program (for a body that is not the launch's own cube program, the cube's).
    let other: &[Stmt] = if std::ptr::eq(body, launch.cube.as_slice()) { &launch.vector } else { &launch.cube };
    mmad_writes(&mut out, body, other, &dt);
    // Buffers no longer read: drop the copies into them (which may leave their sources unread in turn), the
    // copies a later copy overwrites before any read, and the copies into buffers that only transposed
    // mmads read (their loops of column copies are skipped by the compiled code, [`transposed_b`]).
    loop {
        let mut read = BTreeSet::new();
        reads_of(&out, &mut read);
        let mut dropped = drop_dead(&mut out, &read);
        dropped |= drop_overwritten(&mut out);
        dropped |= drop_transposed_only(&mut out, &dt);
        if !dropped {
            return out;
        }
    }
}

/// Drops the copies into a buffer window that a later copy in the same statement list overwrites exactly
/// (the same region and sizes, as written) before any statement reads the buffer or assigns a register of
/// the window or sizes: the first copy's data is never read. (The tiler loads one L0 buffer for consecutive
/// mmads; once copy forwarding has redirected an mmad's operand to the copy's source, the load before the
/// next one is dead.) True if any was dropped.
fn drop_overwritten(body: &mut Vec<Stmt>) -> bool {
    let mut dropped = false;
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            dropped |= drop_overwritten(b);
        }
    }
    let dead: Vec<bool> = (0..body.len())
        .map(|i| {
            let Stmt::Copy { dst, rows, cols, .. } = &body[i] else { return false };
            let Some(buf) = buf_of(dst) else { return false };
            let mut vars = BTreeSet::new();
            region_vars(dst, &mut vars);
            svars(rows, &mut vars);
            svars(cols, &mut vars);
            for t in &body[i + 1..] {
                let mut read = BTreeSet::new();
                reads_of(std::slice::from_ref(t), &mut read);
                if read.contains(&buf) {
                    return false;
                }
                if let Stmt::Copy { dst: d2, rows: r2, cols: c2, .. } = t {
                    if d2 == dst && r2 == rows && c2 == cols {
                        return true;
                    }
                }
                let (_, _, set) = effects(t);
                if !set.is_disjoint(&vars) {
                    return false;
                }
            }
            false
        })
        .collect();
    if dead.iter().any(|&d| d) {
        let mut k = dead.into_iter();
        body.retain(|_| !k.next().unwrap_or(false));
        dropped = true;
    }
    dropped
}

/// Drops the copies (outside the loops of column copies [`transposed_b`] converts) into buffers whose every
/// read is the transposed `b` of a converted mmad: the compiled code skips those loops, and the mmads read the
/// loops' sources, so nothing reads what the copies write (attention backward's `q` and `dout` loads into
/// L0B for the `dk` and `dv` products, whose `b` copy forwarding already reads from GM). True if any was.
fn drop_transposed_only(body: &mut Vec<Stmt>, dt: &Dtypes<'_>) -> bool {
    let t = transposed_b(dt.prog, dt.launch, body);
    if t.mmads.is_empty() {
        return false;
    }
    let mmads: BTreeSet<usize> = t.mmads.keys().copied().collect();
    let mut read = BTreeSet::new();
    reads_besides(body, &mmads, &mut read);
    unpaired_b_reads(body, &mmads, &mut read);
    // The converted mmads' `b` buffers that nothing else reads.
    let mut only = BTreeSet::new();
    mmad_b_bufs(body, &mmads, &mut only);
    only.retain(|b| !read.contains(b));
    if only.is_empty() {
        return false;
    }
    drop_copies_into(body, &only, &t.loops)
}

/// The buffers read as the `b` of an mmad in `mmads` (by address).
fn mmad_b_bufs(body: &[Stmt], mmads: &BTreeSet<usize>, out: &mut BTreeSet<BufId>) {
    for s in body {
        match s {
            Stmt::Mmad { b, .. } if mmads.contains(&(s as *const Stmt as usize)) => out.extend(buf_of(b)),
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => mmad_b_bufs(body, mmads, out),
            _ => {}
        }
    }
}

/// Drops the copies into `bufs`, except inside the loops in `keep` (by address; their addresses are taken
/// before this list's statements move). True if any was.
fn drop_copies_into(body: &mut Vec<Stmt>, bufs: &BTreeSet<BufId>, keep: &BTreeSet<usize>) -> bool {
    let mut dropped = false;
    for s in body.iter_mut() {
        if keep.contains(&(s as *const Stmt as usize)) {
            continue;
        }
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            dropped |= drop_copies_into(b, bufs, keep);
        }
    }
    let before = body.len();
    body.retain(|s| !matches!(s, Stmt::Copy { dst, .. } if buf_of(dst).is_some_and(|b| bufs.contains(&b))));
    dropped | (body.len() != before)
}

/// The buffers a program reads or writes.
pub fn referenced(body: &[Stmt]) -> BTreeSet<BufId> {
    let (mut bufs, mut gm) = (BTreeSet::new(), BTreeSet::new());
    for s in body {
        writes(s, &mut bufs, &mut gm);
    }
    reads_of(body, &mut bufs);
    bufs
}

fn buf_of(r: &Region) -> Option<BufId> {
    match &r.loc {
        Loc::Buf { buf, .. } => Some(*buf),
        Loc::Gm(_) => None,
    }
}

/// The dtypes of regions.
struct Dtypes<'p> {
    prog: &'p TileProgram,
    launch: &'p Launch,
}

impl Dtypes<'_> {
    fn of(&self, r: &Region) -> Option<DType> {
        match &r.loc {
            Loc::Buf { buf, .. } => self.launch.buffers.get(buf.0 as usize).map(|b| b.dtype),
            Loc::Gm(t) => self.prog.tensors.get(t.0 as usize).map(|g| g.dtype),
        }
    }

    /// Whether a copy between the two regions moves bits unchanged.
    fn same(&self, a: &Region, b: &Region) -> bool {
        matches!((self.of(a), self.of(b)), (Some(x), Some(y)) if x == y)
    }
}

// ----- what statements touch -----

fn svars(e: &SExpr, out: &mut BTreeSet<SVar>) {
    match e {
        SExpr::Var(v) => {
            out.insert(*v);
        }
        SExpr::Bin(_, a, b) => {
            svars(a, out);
            svars(b, out);
        }
        SExpr::Read { slot, index, .. } => {
            svars(slot, out);
            svars(index, out);
        }
        SExpr::Const(_) | SExpr::Core => {}
    }
}

fn region_vars(r: &Region, out: &mut BTreeSet<SVar>) {
    svars(&r.offset, out);
    svars(&r.row_stride, out);
    if let Loc::Buf { slot, .. } = &r.loc {
        svars(slot, out);
    }
}

/// Registers assigned anywhere in `s` (loop variables included).
fn sets(s: &Stmt, out: &mut BTreeSet<SVar>) {
    match s {
        Stmt::For { var, body, .. } => {
            out.insert(*var);
            body.iter().for_each(|s| sets(s, out));
        }
        Stmt::Set { var, .. } => {
            out.insert(*var);
        }
        Stmt::If { then, .. } => then.iter().for_each(|s| sets(s, out)),
        _ => {}
    }
}

/// The storage each statement writes: buffers and GM tensors.
pub(crate) fn writes(s: &Stmt, bufs: &mut BTreeSet<BufId>, gm: &mut BTreeSet<TensorId>) {
    let mut w = |r: &Region| match &r.loc {
        Loc::Buf { buf, .. } => {
            bufs.insert(*buf);
        }
        Loc::Gm(t) => {
            gm.insert(*t);
        }
    };
    match s {
        Stmt::For { body, .. } | Stmt::If { then: body, .. } => {
            for s in body {
                writes(s, bufs, gm);
            }
        }
        Stmt::Copy { dst, .. } | Stmt::Gather { dst, .. } | Stmt::Vector { dst, .. } | Stmt::Reduce { dst, .. } => {
            w(dst)
        }
        Stmt::Mmad { c, .. } => w(c),
        Stmt::Library { op, .. } => match op {
            LibOp::TopK { values, indices, .. } => {
                values.iter().chain(indices.iter()).for_each(&mut w);
            }
            LibOp::ArgSort { dst, .. } | LibOp::BinCount { dst, .. } => w(dst),
            LibOp::CumSum { dst, carry, .. } => {
                w(dst);
                carry.iter().for_each(w);
            }
        },
        _ => {}
    }
}

/// Whether `s` (loop and branch bodies included) may write slot `slot` of buffer `buf`: a write into another
/// slot given by a different constant does not (slots do not overlap).
fn writes_slot(s: &Stmt, buf: BufId, slot: &SExpr) -> bool {
    let hits = |r: &Region| match &r.loc {
        Loc::Buf { buf: b, slot: s2 } if *b == buf => {
            !matches!((slot, s2), (SExpr::Const(x), SExpr::Const(y)) if x != y)
        }
        _ => false,
    };
    match s {
        Stmt::For { body, .. } | Stmt::If { then: body, .. } => body.iter().any(|s| writes_slot(s, buf, slot)),
        Stmt::Copy { dst, .. } | Stmt::Gather { dst, .. } | Stmt::Vector { dst, .. } | Stmt::Reduce { dst, .. } => {
            hits(dst)
        }
        Stmt::Mmad { c, .. } => hits(c),
        Stmt::Library { .. } => {
            let (mut bufs, mut gm) = (BTreeSet::new(), BTreeSet::new());
            writes(s, &mut bufs, &mut gm);
            bufs.contains(&buf)
        }
        _ => false,
    }
}

/// The GM tensors some statement of the launch (cube or vector program) writes.
pub fn gm_written(launch: &Launch) -> BTreeSet<TensorId> {
    gm_writes(&launch.cube).union(&gm_writes(&launch.vector)).copied().collect()
}

/// What `s` (loop and branch bodies included) changes: the buffers and GM tensors it writes and the registers
/// it assigns.
fn effects(s: &Stmt) -> (BTreeSet<BufId>, BTreeSet<TensorId>, BTreeSet<SVar>) {
    let (mut bufs, mut gm, mut set) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    writes(s, &mut bufs, &mut gm);
    sets(s, &mut set);
    (bufs, gm, set)
}

/// A forwarding in progress along the statements after its copy (levels 2 and 3).
trait Walk {
    /// Whether `s` (loop and branch bodies included) ends the forwarded window's validity.
    fn breaks(&self, s: &Stmt) -> bool;

    /// Rewrites the reads of the window in `s` (bodies included).
    fn rewrite(&self, s: &mut Stmt);

    /// Forwards in `s`; false once `s` ends the window's validity. A loop or branch is taken or refused as a
    /// whole: its body may run many times, so a write anywhere in it ends the validity before it.
    fn visit(&self, s: &mut Stmt) -> bool {
        if self.breaks(s) {
            return false;
        }
        self.rewrite(s);
        true
    }
}

/// Whether `s` writes `buf` or assigns one of `vars`: what ends a forwarded window's validity.
fn writes_buf_or_sets(s: &Stmt, buf: BufId, vars: &BTreeSet<SVar>) -> bool {
    let (bufs, _, set) = effects(s);
    bufs.contains(&buf) || !set.is_disjoint(vars)
}

fn gm_writes(body: &[Stmt]) -> BTreeSet<TensorId> {
    let (mut b, mut g) = (BTreeSet::new(), BTreeSet::new());
    for s in body {
        writes(s, &mut b, &mut g);
    }
    g
}

fn vexpr_reads(e: &VExpr, out: &mut BTreeSet<BufId>) {
    match e {
        VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => {
            out.extend(buf_of(r));
            sexpr_reads(&r.offset, out);
        }
        VExpr::Scalar(s) => sexpr_reads(s, out),
        _ => e.children().into_iter().for_each(|c| vexpr_reads(c, out)),
    }
}

/// Whether `e` reads a buffer (`SExpr::Read`).
fn has_read(e: &SExpr) -> bool {
    let mut b = BTreeSet::new();
    sexpr_reads(e, &mut b);
    !b.is_empty()
}

pub(crate) fn sexpr_reads(e: &SExpr, out: &mut BTreeSet<BufId>) {
    match e {
        SExpr::Read { buf, slot, index } => {
            out.insert(*buf);
            sexpr_reads(slot, out);
            sexpr_reads(index, out);
        }
        SExpr::Bin(_, a, b) => {
            sexpr_reads(a, out);
            sexpr_reads(b, out);
        }
        _ => {}
    }
}

/// Buffers read by the scalar expressions of a statement's regions and sizes.
pub(crate) fn region_sexpr_reads(s: &Stmt, out: &mut BTreeSet<BufId>) {
    let mut reg = |r: &Region| {
        sexpr_reads(&r.offset, out);
        sexpr_reads(&r.row_stride, out);
        if let Loc::Buf { slot, .. } = &r.loc {
            sexpr_reads(slot, out);
        }
    };
    let mut sizes: Vec<&SExpr> = Vec::new();
    match s {
        Stmt::Copy { src, dst, rows, cols, .. } => {
            reg(src);
            reg(dst);
            sizes.extend([rows, cols]);
        }
        Stmt::Gather { col_offset, index, dst, rows, cols, .. } => {
            reg(index);
            reg(dst);
            sizes.extend([col_offset, rows, cols]);
        }
        Stmt::Mmad { a, b, c, m, k, n, .. } => {
            reg(a);
            reg(b);
            reg(c);
            sizes.extend([m, k, n]);
        }
        Stmt::Vector { dst, rows, cols, .. } => {
            reg(dst);
            sizes.extend([rows, cols]);
        }
        Stmt::Reduce { src, dst, rows, cols, .. } => {
            reg(src);
            reg(dst);
            sizes.extend([rows, cols]);
        }
        Stmt::Library { op, src, rows, cols, .. } => {
            reg(src);
            match op {
                LibOp::TopK { values, indices, .. } => values.iter().chain(indices.iter()).for_each(&mut reg),
                LibOp::ArgSort { dst, .. } | LibOp::BinCount { dst, .. } => reg(dst),
                LibOp::CumSum { dst, carry, .. } => {
                    reg(dst);
                    carry.iter().for_each(&mut reg);
                }
            }
            sizes.extend([rows, cols]);
        }
        _ => {}
    }
    for e in sizes {
        sexpr_reads(e, out);
    }
}

/// Every buffer read anywhere in `body` (by any statement, scalar reads included).
pub(crate) fn reads_of(body: &[Stmt], out: &mut BTreeSet<BufId>) {
    for s in body {
        region_sexpr_reads(s, out);
        match s {
            Stmt::For { lo, hi, body, .. } => {
                sexpr_reads(lo, out);
                sexpr_reads(hi, out);
                reads_of(body, out);
            }
            Stmt::If { cond, then } => {
                sexpr_reads(cond, out);
                reads_of(then, out);
            }
            Stmt::Set { value, .. } => sexpr_reads(value, out),
            Stmt::Copy { src, .. } => out.extend(buf_of(src)),
            Stmt::Gather { index, .. } => out.extend(buf_of(index)),
            Stmt::Mmad { a, b, c, accumulate, .. } => {
                out.extend(buf_of(a));
                out.extend(buf_of(b));
                if *accumulate {
                    out.extend(buf_of(c));
                }
            }
            Stmt::Vector { expr, .. } => vexpr_reads(expr, out),
            Stmt::Reduce { src, dst, accumulate, .. } => {
                out.extend(buf_of(src));
                if *accumulate {
                    out.extend(buf_of(dst));
                }
            }
            Stmt::Library { op, src, .. } => {
                out.extend(buf_of(src));
                match op {
                    // A bincount adds to its destination; a cumsum's carry is read.
                    LibOp::BinCount { dst, .. } => out.extend(buf_of(dst)),
                    LibOp::CumSum { carry: Some(c), .. } => out.extend(buf_of(c)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Reads of `buf` in `s` other than as an mmad `a`/`b` operand.
fn other_reads(s: &Stmt, buf: BufId) -> bool {
    let mut r = BTreeSet::new();
    match s {
        Stmt::Mmad { c, accumulate, .. } => {
            if *accumulate {
                r.extend(buf_of(c));
            }
        }
        Stmt::For { lo, hi, body, .. } => {
            sexpr_reads(lo, &mut r);
            sexpr_reads(hi, &mut r);
            return r.contains(&buf) || body.iter().any(|s| other_reads(s, buf));
        }
        Stmt::If { cond, then } => {
            sexpr_reads(cond, &mut r);
            return r.contains(&buf) || then.iter().any(|s| other_reads(s, buf));
        }
        s => reads_of(std::slice::from_ref(s), &mut r),
    }
    if matches!(s, Stmt::Mmad { .. }) {
        region_sexpr_reads(s, &mut r);
    }
    r.contains(&buf)
}

// ----- level 1: L0 windows to their sources -----

fn l0(body: &mut [Stmt], dt: &Dtypes<'_>) {
    for i in 0..body.len() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = &mut body[i] {
            l0(b, dt);
        }
        let Stmt::Copy { src, dst, rows, cols, .. } = &body[i] else { continue };
        let Some(x) = buf_of(dst) else { continue };
        if !dt.same(src, dst) {
            continue;
        }
        let (src, dst, rows, cols) = (src.clone(), dst.clone(), rows.clone(), cols.clone());
        let mut vars = BTreeSet::new();
        region_vars(&src, &mut vars);
        region_vars(&dst, &mut vars);
        svars(&rows, &mut vars);
        svars(&cols, &mut vars);
        let (mut src_bufs, mut src_gm) = (BTreeSet::new(), BTreeSet::new());
        match &src.loc {
            Loc::Buf { buf, .. } => {
                src_bufs.insert(*buf);
            }
            Loc::Gm(t) => {
                src_gm.insert(*t);
            }
        }
        let fw =
            Fw { x, dst: &dst, src: &src, rows: &rows, cols: &cols, vars: &vars, src_bufs: &src_bufs, src_gm: &src_gm };
        for s in body[i + 1..].iter_mut() {
            if !fw.visit(s) {
                break;
            }
        }
    }
}

struct Fw<'a> {
    x: BufId,
    dst: &'a Region,
    src: &'a Region,
    rows: &'a SExpr,
    cols: &'a SExpr,
    vars: &'a BTreeSet<SVar>,
    src_bufs: &'a BTreeSet<BufId>,
    src_gm: &'a BTreeSet<TensorId>,
}

impl Fw<'_> {
    /// Forwards the mmads of `s`; false once `s` ends the copy's validity.
    fn visit(&self, s: &mut Stmt) -> bool {
        match s {
            Stmt::If { cond, then } => {
                let mut r = BTreeSet::new();
                sexpr_reads(cond, &mut r);
                if r.contains(&self.x) {
                    return false;
                }
                for t in then.iter_mut() {
                    if !self.visit(t) {
                        return false;
                    }
                }
                true
            }
            Stmt::Mmad { a, b, m, k, n, .. } => {
                if *a == *self.dst && *m == *self.rows && *k == *self.cols {
                    *a = self.src.clone();
                }
                if *b == *self.dst && *k == *self.rows && *n == *self.cols {
                    *b = self.src.clone();
                }
                !self.breaks(s)
            }
            s => !self.breaks(s) && !other_reads(s, self.x),
        }
    }

    /// Whether `s` writes the buffer or the source storage, or assigns a register the windows use.
    fn breaks(&self, s: &Stmt) -> bool {
        let (bufs, gm, set) = effects(s);
        bufs.contains(&self.x)
            || !bufs.is_disjoint(self.src_bufs)
            || !gm.is_disjoint(self.src_gm)
            || !set.is_disjoint(self.vars)
    }
}

// ----- level 2: L1 slots filled from read-only GM -----

fn l1(body: &mut [Stmt], gm_written: &BTreeSet<TensorId>, own: &BTreeSet<TensorId>, dt: &Dtypes<'_>) {
    for i in 0..body.len() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = &mut body[i] {
            l1(b, gm_written, own, dt);
        }
        let Some(c) = L1Copy::of(&body[i], gm_written, own, dt, &BTreeSet::new()) else { continue };
        let l = c.walker();
        for s in body[i + 1..].iter_mut() {
            if !l.visit(s) {
                break;
            }
        }
    }
    // Copies at the end of the body of an `if C` (nothing after them in it ends their validity), read in later
    // `if C` statements of this list, which run exactly when the copy ran: the attention template's loads
    // of a second chunk and its mmads, each under `if 0 < hcl_1`. `C` reads no buffer and its registers join
    // those that must not change; the statements in between are checked as in the list itself.
    for i in 0..body.len() {
        let (head, tail) = body.split_at_mut(i + 1);
        let Stmt::If { cond, then } = &head[i] else { continue };
        if has_read(cond) {
            continue;
        }
        let mut cvars = BTreeSet::new();
        svars(cond, &mut cvars);
        for k in 0..then.len() {
            let mut set = BTreeSet::new();
            then[..k].iter().for_each(|s| sets(s, &mut set));
            if !set.is_disjoint(&cvars) {
                break;
            }
            let Some(c) = L1Copy::of(&then[k], gm_written, own, dt, &cvars) else { continue };
            let l = c.walker();
            if then[k + 1..].iter().any(|s| l.breaks(s)) {
                continue;
            }
            for s in tail.iter_mut() {
                if l.breaks(s) {
                    break;
                }
                if matches!(s, Stmt::If { cond: c2, .. } if c2 == cond) {
                    l.rewrite(s);
                }
            }
        }
    }
}

/// A same-dtype copy from a GM tensor this program does not write into a buffer: its source, destination,
/// sizes, the buffer, and whether the partner program writes the tensor (then only up to a cross-core
/// wait). What levels 2 and 3 forward from.
#[allow(clippy::type_complexity)]
fn gm_load<'s>(
    s: &'s Stmt,
    written: &BTreeSet<TensorId>,
    own: &BTreeSet<TensorId>,
    dt: &Dtypes<'_>,
) -> Option<(&'s Region, &'s Region, &'s SExpr, &'s SExpr, BufId, bool)> {
    let Stmt::Copy { src, dst, rows, cols, .. } = s else { return None };
    let (Loc::Gm(t), Some(x)) = (&src.loc, buf_of(dst)) else { return None };
    if own.contains(t) || !dt.same(src, dst) {
        return None;
    }
    Some((src, dst, rows, cols, x, written.contains(t)))
}

/// A copy from GM into offset 0 of an L1 slot whose reads level 2 forwards (see [`l1`]).
struct L1Copy {
    y: BufId,
    slot: SExpr,
    src: Region,
    dst: Region,
    rows: SExpr,
    cols: SExpr,
    vars: BTreeSet<SVar>,
    size_vars: BTreeSet<SVar>,
    yields: bool,
}

impl L1Copy {
    /// `s` as such a copy; `extra`: registers that must not change either (a branch's condition).
    fn of(
        s: &Stmt,
        gm_written: &BTreeSet<TensorId>,
        own: &BTreeSet<TensorId>,
        dt: &Dtypes<'_>,
        extra: &BTreeSet<SVar>,
    ) -> Option<L1Copy> {
        let (src, dst, rows, cols, y, yields) = gm_load(s, gm_written, own, dt)?;
        if dst.offset != SExpr::Const(0) {
            return None;
        }
        let Loc::Buf { slot, .. } = &dst.loc else { return None };
        let mut vars = extra.clone();
        region_vars(src, &mut vars);
        region_vars(dst, &mut vars);
        let mut size_vars = BTreeSet::new();
        svars(rows, &mut size_vars);
        svars(cols, &mut size_vars);
        Some(L1Copy {
            y,
            slot: slot.clone(),
            src: src.clone(),
            dst: dst.clone(),
            rows: rows.clone(),
            cols: cols.clone(),
            vars,
            size_vars,
            yields,
        })
    }

    fn walker(&self) -> L1<'_> {
        L1 {
            y: self.y,
            slot: &self.slot,
            stride: &self.dst.row_stride,
            src: &self.src,
            vars: &self.vars,
            size: (&self.rows, &self.cols),
            size_vars: &self.size_vars,
            sizes_held: (!has_read(&self.rows) && !has_read(&self.cols)).into(),
            yields: self.yields,
        }
    }
}

struct L1<'a> {
    y: BufId,
    slot: &'a SExpr,
    stride: &'a SExpr,
    src: &'a Region,
    vars: &'a BTreeSet<SVar>,
    /// The copy's `rows × cols`, the registers they read, and whether they still hold (no statement since
    /// the copy assigned one of those registers).
    size: (&'a SExpr, &'a SExpr),
    size_vars: &'a BTreeSet<SVar>,
    sizes_held: std::cell::Cell<bool>,
    /// The source is written by the partner program: a `CrossWait` ends the forwarding (see `vec_reads`).
    yields: bool,
}

impl Walk for L1<'_> {
    fn breaks(&self, s: &Stmt) -> bool {
        let mut set = BTreeSet::new();
        sets(s, &mut set);
        if !set.is_disjoint(self.size_vars) {
            self.sizes_held.set(false);
        }
        writes_slot(s, self.y, self.slot) || !set.is_disjoint(self.vars) || (self.yields && has_cross_wait(s))
    }

    /// Rewrites the mmad operands that read the slot, and the sources of column-copy loops that read it.
    fn rewrite(&self, s: &mut Stmt) {
        self.rewrite_in(s, &BTreeSet::new(), &Defs::default());
    }
}

/// The registers a statement list has assigned so far (`var = value`, `value` reading no buffer), while no
/// later statement of the list assigned `var` or a register `value` reads: at this point of the list each
/// such register holds its `value`, evaluated now.
#[derive(Default, Clone)]
struct Defs(Vec<(SVar, SExpr)>);

impl Defs {
    /// After statement `s` of the list: drops what `s` invalidates and records what it assigns.
    fn after(&mut self, s: &Stmt) {
        let mut set = BTreeSet::new();
        sets(s, &mut set);
        self.0.retain(|(v, e)| {
            let mut used = BTreeSet::new();
            svars(e, &mut used);
            !set.contains(v) && used.is_disjoint(&set)
        });
        if let Stmt::Set { var, value } = s {
            let mut used = BTreeSet::new();
            svars(value, &mut used);
            if !has_read(value) && !used.contains(var) {
                self.0.push((*var, value.clone()));
            }
        }
    }

    /// What `e` equals at this point: `e`, or the value of the register it is.
    fn value<'e>(&'e self, e: &'e SExpr) -> &'e SExpr {
        match e {
            SExpr::Var(v) => self.0.iter().rev().find(|(w, _)| w == v).map_or(e, |(_, x)| x),
            _ => e,
        }
    }
}

impl L1<'_> {
    /// [`Walk::rewrite`] with what holds at `s`: `nonneg`, registers that are at least 0 there (the
    /// variables of the enclosing loops from a constant `lo >= 0` upward, which their bodies do not assign),
    /// and `defs`, the values of the registers that `s`'s list assigned before it.
    fn rewrite_in(&self, s: &mut Stmt, nonneg: &BTreeSet<SVar>, defs: &Defs) {
        if let Stmt::For { var, lo, hi, step: 1, body } = s {
            if let [Stmt::Copy { src, rows, cols: SExpr::Const(1), .. }] = &mut body[..] {
                if let Some(g) = self.translate_column(*var, lo, hi, src, rows, nonneg, defs) {
                    *src = g;
                    return;
                }
            }
        }
        match s {
            Stmt::For { var, lo, step, body, .. } => {
                let mut inner = nonneg.clone();
                let mut set = BTreeSet::new();
                body.iter().for_each(|t| sets(t, &mut set));
                if *step > 0 && matches!(lo, SExpr::Const(c) if *c >= 0) && !set.contains(var) {
                    inner.insert(*var);
                }
                self.rewrite_list(body, &inner);
            }
            Stmt::If { then, .. } => self.rewrite_list(then, nonneg),
            Stmt::Mmad { a, b, .. } => {
                for op in [a, b] {
                    if let Some(r) = self.translate(op) {
                        *op = r;
                    }
                }
            }
            _ => {}
        }
    }

    /// Rewrites the statements of a loop or branch body in order, following the registers it assigns.
    fn rewrite_list(&self, body: &mut [Stmt], nonneg: &BTreeSet<SVar>) {
        let mut defs = Defs::default();
        for t in body.iter_mut() {
            self.rewrite_in(t, nonneg, &defs);
            defs.after(t);
        }
    }
}

impl L1<'_> {
    /// The GM window that the source of `for var in lo..hi { copy src -> .., rows × 1 }` stands for, when each
    /// iteration reads inside the copied window (the tiler's transposing loads): column `var` of it
    /// (`src` at offset `var`, the slot's row stride, `rows` = the copy's rows, `var < hi` = the copy's
    /// columns), or row `var` read as a column (`src` at `var · stride`, row stride 1, `rows` = the copy's
    /// columns, `var < hi` = the copy's rows). Then element `r` of the read is element `(r, var)` (or
    /// `(var, r)`) of the copied window, which holds that element of the GM source. The sizes are compared
    /// as written, so they must still hold (no register they read assigned since the copy), and the loop
    /// variable must start at 0.
    ///
    /// A column read may also start `e` columns into the window (`src` at offset `e + var`, the tiler's
    /// k steps of L0 inside one L1 load): then `e` must be a constant >= 0 or a register in `nonneg`, and
    /// `hi` be (or be a register `defs` says holds) `min(c, cols - e)` with `cols` the copy's columns, so
    /// that every column read, `e + var` for `0 <= var < hi`, lies in `[0, cols)`.
    #[allow(clippy::too_many_arguments)]
    fn translate_column(
        &self,
        var: SVar,
        lo: &SExpr,
        hi: &SExpr,
        r: &Region,
        rows: &SExpr,
        nonneg: &BTreeSet<SVar>,
        defs: &Defs,
    ) -> Option<Region> {
        let Loc::Buf { buf, slot } = &r.loc else { return None };
        if *buf != self.y || slot != self.slot || *lo != SExpr::Const(0) || !self.sizes_held.get() {
            return None;
        }
        if self.vars.contains(&var) || self.size_vars.contains(&var) {
            return None;
        }
        let (crows, ccols) = self.size;
        let v = SExpr::Var(var);
        let add = |a: &SExpr, b: SExpr| SExpr::Bin(kc_ir::tile::SBin::Add, Box::new(a.clone()), Box::new(b));
        let mul = |a: SExpr, b: &SExpr| SExpr::Bin(kc_ir::tile::SBin::Mul, Box::new(a), Box::new(b.clone()));
        let row_shift = matches!(&r.offset, SExpr::Bin(kc_ir::tile::SBin::Mul, a, b)
            if (**a == v && **b == *self.stride) || (**b == v && **a == *self.stride));
        if r.row_stride == *self.stride && r.offset == v && rows == crows && hi == ccols {
            Some(Region {
                loc: self.src.loc.clone(),
                offset: add(&self.src.offset, v),
                row_stride: self.src.row_stride.clone(),
            })
        } else if r.row_stride == SExpr::Const(1) && row_shift && rows == ccols && hi == crows {
            Some(Region {
                loc: self.src.loc.clone(),
                offset: add(&self.src.offset, mul(v, &self.src.row_stride)),
                row_stride: SExpr::Const(1),
            })
        } else if r.row_stride == *self.stride && rows == crows {
            // `e + var` (either way round), `e` not reading `var`, at least 0.
            let SExpr::Bin(kc_ir::tile::SBin::Add, x, y) = &r.offset else { return None };
            let e = if **x == v {
                &**y
            } else if **y == v {
                &**x
            } else {
                return None;
            };
            let mut used = BTreeSet::new();
            svars(e, &mut used);
            let e_nonneg = match e {
                SExpr::Const(c) => *c >= 0,
                SExpr::Var(w) => nonneg.contains(w),
                _ => false,
            };
            if used.contains(&var) || has_read(e) || !e_nonneg {
                return None;
            }
            // `hi` = `min(c, cols - e)`: `e + var < e + hi <= cols`.
            let SExpr::Bin(kc_ir::tile::SBin::Min, m1, m2) = defs.value(hi) else { return None };
            let bound = |m: &SExpr| matches!(m, SExpr::Bin(kc_ir::tile::SBin::Sub, c, d) if **c == *ccols && **d == *e);
            if !bound(m1) && !bound(m2) {
                return None;
            }
            Some(Region {
                loc: self.src.loc.clone(),
                offset: add(&self.src.offset, r.offset.clone()),
                row_stride: self.src.row_stride.clone(),
            })
        } else {
            None
        }
    }

    /// The GM window an operand in the slot stands for.
    fn translate(&self, r: &Region) -> Option<Region> {
        let Loc::Buf { buf, slot } = &r.loc else { return None };
        if *buf != self.y || slot != self.slot || r.row_stride != *self.stride {
            return None;
        }
        let shift = match (&r.offset, self.stride) {
            (SExpr::Const(0), _) => SExpr::Const(0),
            (SExpr::Bin(kc_ir::tile::SBin::Mul, x, c), s) if **c == *s => {
                SExpr::Bin(kc_ir::tile::SBin::Mul, x.clone(), Box::new(self.src.row_stride.clone()))
            }
            (SExpr::Const(o), SExpr::Const(s)) if *s > 0 && o % s == 0 => {
                SExpr::Bin(kc_ir::tile::SBin::Mul, Box::new(SExpr::Const(o / s)), Box::new(self.src.row_stride.clone()))
            }
            (o, _) => o.clone(),
        };
        Some(Region {
            loc: self.src.loc.clone(),
            offset: SExpr::Bin(kc_ir::tile::SBin::Add, Box::new(self.src.offset.clone()), Box::new(shift)),
            row_stride: self.src.row_stride.clone(),
        })
    }
}

// ----- level 3: vector reads of UB windows filled from GM -----

/// Forwards the vector unit's reads of UB windows that a copy filled from GM.
///
/// A `Copy` (same dtype) from a GM tensor into a window `D` of a buffer `x`, with `rows × cols` = `R × C`,
/// is followed by statements that read `D`. A later `Vector` operand `Read(D)` / `ReadRow(D)` /
/// `ReadCol(D)` or `Reduce` source `D` reads the copy's source instead, when:
/// - the read stays inside the copied window: the statement's sizes are `R × C` (syntactically; or both
///   are constants no larger), or, for a broadcast read, the broadcast axis is covered (a `ReadRow` reads
///   column 0 only, so the statement's column count need not match, but the copy must have copied at
///   least one column: `C` is a positive constant or equal to the statement's column count, which is
///   positive whenever the statement evaluates anything); then element `(r, c)` of `D` holds element
///   `(r, c)` of the source, bit for bit (same dtype, no conversion);
/// - nothing between the copy and the read writes `x` (which would change `D`), nor assigns a register
///   the windows or the sizes use (which would move `D` or the source); for a `For` loop or an `If`, its
///   whole body is checked, as the body may run many times;
/// - the source has not changed since the copy. Either no statement of the launch (cube or vector
///   program) writes the GM tensor, so its contents are fixed for the whole launch; or only the *other*
///   program writes it (a workspace the partner core fills: attention's score blocks, the cube's P·V) and
///   no `CrossWait` lies between the copy and the read. A core's partners run on the same host thread as
///   its coroutine and only while it is suspended, which happens only in a `CrossWait` (native.rs); this
///   program never writes the tensor; and a core of another unit that wrote elements this core reads
///   would race with the read in any schedule (no flag orders units; the verifier reports such a cube /
///   vector pair), so the elements the copy read are the ones the later read sees;
/// - the windows' offsets and sizes read no buffer (`SExpr::Read`), so they cannot change through a
///   buffer write either.
///
/// The reads may follow the copy in its own statement list, or, when the copy is in the body of an
/// `if C` (whose earlier statements assign no register of `C`, and `C` reads no buffer), in later
/// `if C` statements of the enclosing list (they run exactly when the copy ran; `C`'s registers join
/// those that must not change). A statement that writes `x` ends the forwarding. The one exception is a
/// `Vector` statement that overwrites exactly `D` (same region, same `R × C` as written) and reads `x`
/// only as `Read(D)`, element for element, in a list that runs whenever the copy ran: its reads go to
/// the source too (each element reads its own position before it is written, so no element order can
/// tell), and when no other read of `x` came between, the copy's values are never read: the copy goes.
/// The JIT checks each read region against its storage, so a GM operand is as valid as a UB one; the GM
/// region lies inside the tensor because the copy read exactly that window.
fn vec_reads(body: &mut Vec<Stmt>, written: &BTreeSet<TensorId>, own: &BTreeSet<TensorId>, dt: &Dtypes<'_>) {
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            vec_reads(b, written, own, dt);
        }
    }
    // Copies followed by their reads in this list.
    let mut dead = BTreeSet::new();
    for i in 0..body.len() {
        let Some(c) = VecCopy::of(&body[i], written, own, dt, &BTreeSet::new()) else { continue };
        let w = c.walker();
        if w.list(&mut body[i + 1..], Run::Sure, None) == End::Overwritten && w.clean.get() {
            dead.insert(i);
        }
    }
    drop_indices(body, &dead);
    // Copies in the body of an `if C`, read in later `if C` statements of this list.
    for i in 0..body.len() {
        let (head, tail) = body.split_at_mut(i + 1);
        let Stmt::If { cond, then } = &mut head[i] else { continue };
        if has_read(cond) {
            continue;
        }
        let mut cvars = BTreeSet::new();
        svars(cond, &mut cvars);
        let mut dead = BTreeSet::new();
        for k in 0..then.len() {
            let mut set = BTreeSet::new();
            then[..k].iter().for_each(|s| sets(s, &mut set));
            if !set.is_disjoint(&cvars) {
                break;
            }
            let Some(c) = VecCopy::of(&then[k], written, own, dt, &cvars) else { continue };
            let w = c.walker();
            let mut end = w.list(&mut then[k + 1..], Run::Sure, None);
            if end == End::Open {
                end = w.list(tail, Run::Unrelated, Some(cond));
            }
            if end == End::Overwritten && w.clean.get() {
                dead.insert(k);
            }
        }
        drop_indices(then, &dead);
    }
}

/// Turns each `Vector` statement `D = Read(S)` with `S` a GM window and `D` a buffer window of the same
/// dtype into the `Copy` of `S` to `D` with the same sizes: both set element `(r, c)` of `D` to element
/// `(r, c)` of `S`, bit for bit (no arithmetic, no conversion; the windows are in different memories, so
/// no element order can tell). Level 3 leaves such statements where a `let` is a matmul's result as it
/// is (attention backward's `dp = dp`: its UB source forwarded to the cube's workspace); as copies,
/// their own readers are forwarded to GM in turn and the copy goes when nothing reads it (the host's
/// `kc_rt_copy` moves what stays). Whether any statement was turned.
fn identity_copies(body: &mut [Stmt], dt: &Dtypes<'_>) -> bool {
    let mut any = false;
    for s in body.iter_mut() {
        match s {
            Stmt::For { body: b, .. } | Stmt::If { then: b, .. } => any |= identity_copies(b, dt),
            Stmt::Vector { dst, rows, cols, expr: VExpr::Read(src) }
                if matches!(src.loc, Loc::Gm(_)) && buf_of(dst).is_some() && dt.same(src, dst) =>
            {
                *s = Stmt::Copy {
                    pipe: kc_ir::tile::Pipe::Mte2,
                    src: src.clone(),
                    dst: dst.clone(),
                    rows: rows.clone(),
                    cols: cols.clone(),
                };
                any = true;
            }
            _ => {}
        }
    }
    any
}

/// Turns each `Vector` statement `D = Read(S)` with `S` a buffer window and `D` a GM window of the same dtype
/// into the `Copy` of `S` to `D` with the same sizes, as [`identity_copies`] the other way: what level 4
/// leaves of a buffer stored unchanged into GM (moe_permute's gathered rows, `xs = xs_g0` then `xs`'s copy
/// out). The host's copy moves the rows' bits as they are; the vector code widened every element to f32
/// and rounded it back (the same bits, at several times the cost).
fn identity_stores(body: &mut [Stmt], dt: &Dtypes<'_>) {
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            identity_stores(b, dt);
            continue;
        }
        let Stmt::Vector { dst, rows, cols, expr } = &*s else { continue };
        // With one column, a row's value is its element (the tiler writes a one-column store that way).
        let src = match expr {
            VExpr::Read(src) => src,
            VExpr::ReadRow(src) if *cols == SExpr::Const(1) => src,
            _ => continue,
        };
        if matches!(dst.loc, Loc::Gm(_)) && buf_of(src).is_some() && dt.same(src, dst) {
            *s = Stmt::Copy {
                pipe: kc_ir::tile::Pipe::Mte3,
                src: src.clone(),
                dst: dst.clone(),
                rows: rows.clone(),
                cols: cols.clone(),
            };
        }
    }
}

fn drop_indices(body: &mut Vec<Stmt>, dead: &BTreeSet<usize>) {
    let mut k = 0;
    body.retain(|_| {
        k += 1;
        !dead.contains(&(k - 1))
    });
}

/// Whether `s` (loop and branch bodies included) has a `CrossWait`: where the partner cores may run.
fn has_cross_wait(s: &Stmt) -> bool {
    match s {
        Stmt::CrossWait { .. } => true,
        Stmt::For { body, .. } | Stmt::If { then: body, .. } => body.iter().any(has_cross_wait),
        _ => false,
    }
}

/// A copy whose vector reads may be forwarded (see [`vec_reads`]).
struct VecCopy {
    x: BufId,
    dst: Region,
    src: Region,
    rows: SExpr,
    cols: SExpr,
    vars: BTreeSet<SVar>,
    /// The source is written by the other program: no `CrossWait` may come between.
    partner: bool,
}

impl VecCopy {
    fn of(
        s: &Stmt,
        written: &BTreeSet<TensorId>,
        own: &BTreeSet<TensorId>,
        dt: &Dtypes<'_>,
        extra: &BTreeSet<SVar>,
    ) -> Option<VecCopy> {
        let (src, dst, rows, cols, x, by_partner) = gm_load(s, written, own, dt)?;
        let mut dep = BTreeSet::new();
        region_sexpr_reads(s, &mut dep);
        if !dep.is_empty() {
            return None;
        }
        let mut vars = extra.clone();
        region_vars(src, &mut vars);
        region_vars(dst, &mut vars);
        svars(rows, &mut vars);
        svars(cols, &mut vars);
        Some(VecCopy {
            x,
            dst: dst.clone(),
            src: src.clone(),
            rows: rows.clone(),
            cols: cols.clone(),
            vars,
            partner: by_partner,
        })
    }

    fn walker(&self) -> CopyWalk<'_> {
        CopyWalk {
            fw: VecFw {
                x: self.x,
                dst: &self.dst,
                src: &self.src,
                rows: &self.rows,
                cols: &self.cols,
                vars: &self.vars,
            },
            yields: self.partner,
            clean: std::cell::Cell::new(true),
        }
    }
}

/// How a statement's running relates to the copy's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// It runs whenever the copy ran (and only after it).
    Sure,
    /// It may run, and if it does, the copy ran before it.
    Maybe,
    /// It may run whether or not the copy ran.
    Unrelated,
}

/// Where a forwarding walk stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    /// The statements ran out: the copied window still holds the source.
    Open,
    /// A statement may change the window, the source or a register: nothing after it is forwarded.
    Broken,
    /// A statement that runs whenever the copy ran overwrote the whole window.
    Overwritten,
}

struct CopyWalk<'a> {
    fw: VecFw<'a>,
    /// Whether a `CrossWait` ends the walk (a source the partner writes).
    yields: bool,
    /// No read of the buffer was left unforwarded.
    clean: std::cell::Cell<bool>,
}

impl CopyWalk<'_> {
    fn list(&self, list: &mut [Stmt], run: Run, guard: Option<&SExpr>) -> End {
        for s in list {
            let e = self.stmt(s, run, guard);
            if e != End::Open {
                return e;
            }
        }
        End::Open
    }

    fn reads_x(&self, s: &Stmt) -> bool {
        let mut r = BTreeSet::new();
        reads_of(std::slice::from_ref(s), &mut r);
        r.contains(&self.fw.x)
    }

    fn stmt(&self, s: &mut Stmt, run: Run, guard: Option<&SExpr>) -> End {
        if self.yields && has_cross_wait(s) {
            return End::Broken;
        }
        if let Some(e) = self.overwrite(s, run) {
            return e;
        }
        if let Stmt::If { cond, then } = s {
            let mut r = BTreeSet::new();
            sexpr_reads(cond, &mut r);
            if r.contains(&self.fw.x) {
                return End::Broken;
            }
            let inner = match run {
                Run::Unrelated if guard.is_some_and(|g| g == cond) => Run::Sure,
                Run::Unrelated => Run::Unrelated,
                Run::Sure | Run::Maybe => Run::Maybe,
            };
            // Taken statement by statement: its body may hold the overwrite.
            for t in then.iter_mut() {
                match self.stmt(t, inner, guard) {
                    End::Open => {}
                    End::Overwritten if inner == Run::Sure => return End::Overwritten,
                    _ => return End::Broken,
                }
            }
            return End::Open;
        }
        if self.fw.breaks(s) {
            return End::Broken;
        }
        if run != Run::Unrelated {
            self.fw.rewrite(s);
        }
        if self.reads_x(s) {
            self.clean.set(false);
        }
        End::Open
    }

    /// A `Vector` statement that writes exactly the copied window: `Some` ends the walk (overwritten when it
    /// runs whenever the copy ran and reads the buffer only as `Read(D)`, which then reads the source).
    fn overwrite(&self, s: &mut Stmt, run: Run) -> Option<End> {
        let Stmt::Vector { dst, rows, cols, expr } = s else { return None };
        if buf_of(dst) != Some(self.fw.x) {
            return None;
        }
        if *dst != *self.fw.dst || *rows != *self.fw.rows || *cols != *self.fw.cols || run != Run::Sure {
            return Some(End::Broken);
        }
        let mut e = expr.clone();
        self.fw.rewrite_expr(&mut e, rows, cols);
        let mut r = BTreeSet::new();
        vexpr_reads(&e, &mut r);
        if r.contains(&self.fw.x) || broadcasts(expr, self.fw.x) {
            return Some(End::Broken);
        }
        *expr = e;
        Some(End::Overwritten)
    }
}

/// Whether `e` reads buffer `x` through a broadcast (`ReadRow` / `ReadCol`).
fn broadcasts(e: &VExpr, x: BufId) -> bool {
    match e {
        VExpr::ReadRow(r) | VExpr::ReadCol(r) => buf_of(r) == Some(x),
        VExpr::Read(_) => false,
        _ => e.children().into_iter().any(|c| broadcasts(c, x)),
    }
}

struct VecFw<'a> {
    x: BufId,
    dst: &'a Region,
    src: &'a Region,
    rows: &'a SExpr,
    cols: &'a SExpr,
    vars: &'a BTreeSet<SVar>,
}

/// Whether a statement size `s` is at most the copy's size `c` on every run: the same expression, or
/// constants in order.
fn within(s: &SExpr, c: &SExpr) -> bool {
    match (s, c) {
        (SExpr::Const(a), SExpr::Const(b)) => a <= b,
        _ => s == c,
    }
}

/// Whether the copy's size `c` is positive whenever the statement (of size `s` on that axis) evaluates any
/// element.
fn covers(s: &SExpr, c: &SExpr) -> bool {
    matches!(c, SExpr::Const(n) if *n >= 1) || s == c
}

impl Walk for VecFw<'_> {
    /// Whether `s` (anywhere in it, loop and branch bodies included) writes the buffer or assigns a register
    /// the windows use.
    fn breaks(&self, s: &Stmt) -> bool {
        writes_buf_or_sets(s, self.x, self.vars)
    }

    fn rewrite(&self, s: &mut Stmt) {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => body.iter_mut().for_each(|t| self.rewrite(t)),
            Stmt::Vector { rows, cols, expr, .. } => self.rewrite_expr(expr, rows, cols),
            Stmt::Reduce { src, rows, cols, .. }
                if *src == *self.dst && within(rows, self.rows) && within(cols, self.cols) =>
            {
                *src = self.src.clone();
            }
            _ => {}
        }
    }
}

impl VecFw<'_> {
    fn rewrite_expr(&self, e: &mut VExpr, rows: &SExpr, cols: &SExpr) {
        match e {
            VExpr::Read(r) => {
                if *r == *self.dst && within(rows, self.rows) && within(cols, self.cols) {
                    *r = self.src.clone();
                }
            }
            VExpr::ReadRow(r) => {
                if *r == *self.dst && within(rows, self.rows) && covers(cols, self.cols) {
                    *r = self.src.clone();
                }
            }
            VExpr::ReadCol(r) => {
                if *r == *self.dst && covers(rows, self.rows) && within(cols, self.cols) {
                    *r = self.src.clone();
                }
            }
            VExpr::Unary(_, a) | VExpr::Cast(_, a) => self.rewrite_expr(a, rows, cols),
            VExpr::Binary(_, a, b) => {
                self.rewrite_expr(a, rows, cols);
                self.rewrite_expr(b, rows, cols);
            }
            VExpr::Select(c, a, b) => {
                self.rewrite_expr(c, rows, cols);
                self.rewrite_expr(a, rows, cols);
                self.rewrite_expr(b, rows, cols);
            }
            VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Scalar(_) | VExpr::Row | VExpr::Col => {}
        }
    }
}

// ----- level 4: vector results stored straight to GM -----

/// The GM tensors a program reads.
fn gm_reads(body: &[Stmt], out: &mut BTreeSet<TensorId>) {
    fn gm(r: &Region, out: &mut BTreeSet<TensorId>) {
        if let Loc::Gm(t) = &r.loc {
            out.insert(*t);
        }
    }
    fn vexpr(e: &VExpr, out: &mut BTreeSet<TensorId>) {
        match e {
            VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => gm(r, out),
            VExpr::Unary(_, a) | VExpr::Cast(_, a) => vexpr(a, out),
            VExpr::Binary(_, a, b) => {
                vexpr(a, out);
                vexpr(b, out);
            }
            VExpr::Select(c, a, b) => {
                vexpr(c, out);
                vexpr(a, out);
                vexpr(b, out);
            }
            _ => {}
        }
    }
    for s in body {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => gm_reads(body, out),
            Stmt::Copy { src, .. } | Stmt::Library { src, .. } => gm(src, out),
            Stmt::Gather { src, .. } => {
                out.insert(*src);
            }
            Stmt::Mmad { a, b, c, accumulate, .. } => {
                gm(a, out);
                gm(b, out);
                if *accumulate {
                    gm(c, out);
                }
            }
            Stmt::Vector { expr, .. } => vexpr(expr, out),
            Stmt::Reduce { src, dst, accumulate, .. } => {
                gm(src, out);
                if *accumulate {
                    gm(dst, out);
                }
            }
            _ => {}
        }
    }
}

/// Whether a vector result stored as dtype `via` and then copied into `to` ends up with the bits that storing
/// it into `to` directly gives: the same dtype, or an f32 intermediate (exact for every value the vector unit
/// computes) converted once, to nearest-even, by the copy as by the store.
fn store_through(via: Option<DType>, to: Option<DType>) -> bool {
    match (via, to) {
        (Some(a), Some(b)) if a == b => true,
        (Some(DType::F32), Some(DType::BF16 | DType::F16)) => true,
        _ => false,
    }
}

/// The pairs `(i, j)` of a statement list where the `Vector` statement `i` writes a window `W` of buffer
/// `y` and the `Copy` `j` copies exactly `W` (same sizes) to GM, with nothing in between that writes `y`
/// or the copy's GM tensor, or assigns a register of the windows or sizes.
///
/// For a tensor of `no_wait` (one the partner program reads), a `CrossWait` in between also ends the search:
/// the partner may run there and read the tensor.
fn store_pairs(body: &[Stmt], y: BufId, no_wait: &BTreeSet<TensorId>) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (j, s) in body.iter().enumerate() {
        let Stmt::Copy { src, dst, rows, cols, .. } = s else { continue };
        let Loc::Gm(g) = &dst.loc else { continue };
        if buf_of(src) != Some(y) {
            continue;
        }
        let mut vars = BTreeSet::new();
        region_vars(src, &mut vars);
        region_vars(dst, &mut vars);
        svars(rows, &mut vars);
        svars(cols, &mut vars);
        // Buffers the windows' offsets and sizes read (data-dependent addressing): they must not change either.
        let mut dep = BTreeSet::new();
        region_sexpr_reads(s, &mut dep);
        dep.insert(y);
        for i in (0..j).rev() {
            if let Stmt::Vector { dst: w, rows: r, cols: c, .. } = &body[i] {
                if w == src && r == rows && c == cols {
                    out.push((i, j));
                    break;
                }
            }
            let (mut bufs, mut gm) = (BTreeSet::new(), BTreeSet::new());
            writes(&body[i], &mut bufs, &mut gm);
            let mut set = BTreeSet::new();
            sets(&body[i], &mut set);
            if !bufs.is_disjoint(&dep)
                || gm.contains(g)
                || !set.is_disjoint(&vars)
                || (no_wait.contains(g) && has_cross_wait(&body[i]))
            {
                break;
            }
        }
    }
    // A statement whose result two copies take stays (it can store to only one place).
    let mut seen = std::collections::BTreeMap::new();
    for (i, _) in &out {
        *seen.entry(*i).or_insert(0) += 1;
    }
    out.retain(|(i, _)| seen[i] == 1);
    out
}

/// Makes every paired vector statement of `y` store to the copy's GM window and drops the copies.
fn store_direct(body: &mut Vec<Stmt>, y: BufId, no_wait: &BTreeSet<TensorId>) {
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            store_direct(b, y, no_wait);
        }
    }
    let pairs = store_pairs(body, y, no_wait);
    let mut drop = BTreeSet::new();
    for (i, j) in pairs {
        let Stmt::Copy { dst: g, .. } = &body[j] else { continue };
        let g = g.clone();
        if let Stmt::Vector { dst, .. } = &mut body[i] {
            *dst = g;
        }
        drop.insert(j);
    }
    let mut k = 0;
    body.retain(|_| {
        k += 1;
        !drop.contains(&(k - 1))
    });
}

/// Stores vector results straight into GM instead of through a UB buffer and a copy.
///
/// A `Vector` statement writing a window `W` of a buffer `y`, followed in the same statement list by a
/// `Copy` of exactly `W` (same region, same `rows` and `cols` expressions) to a GM window `G`, with nothing
/// in between that writes `y` or `G`'s tensor or assigns a register of the windows or sizes: the statement
/// writes `G` and the copy goes. This is done for a buffer `y` only when it holds for all of `y`, and:
/// - after the rewrite nothing in the program reads `y` (its only readers were those copies), so the values
///   no longer stored there are never missed;
/// - no statement of this program reads `G`'s tensor, and after the rewrite no copy writes it, and the
///   other program does not write it: the tensor's writes are exactly the rewritten statements, so storing
///   earlier (at the vector statement instead of at the copy) is not observable by this core, and the same
///   elements get the same values. The other program may read the tensor (a workspace the partner cube
///   core reads: attention's P) when no `CrossWait` lies between the statement and its copy: the partner
///   runs only while this core waits, so it sees the window before the statement or after the copy, as
///   before; and a core of another unit reading the window would race with the copy in any schedule;
/// - the values are the same bits: the copy moved them unchanged (same dtype) or converted an f32 buffer
///   to bf16/f16 with the rounding to nearest-even that the vector store into that dtype does (the vector
///   unit computes in f32, so storing into an f32 buffer first is exact).
fn vec_writes(body: &mut Vec<Stmt>, launch: &Launch, other: &[Stmt], dt: &Dtypes<'_>) {
    let StoreScope { read, other_read, other_written, ys } = StoreScope::of(body, launch, other);
    // Rewrites the statements of every buffer of `ys` together, if then nothing reads them and no copy writes
    // their tensors `gs` (the rewritten statements are their only writers).
    let rewrite = |body: &mut Vec<Stmt>, ys: &[BufId], gs: &BTreeSet<TensorId>| -> bool {
        let no_wait = gs.intersection(&other_read).copied().collect();
        let mut new = body.clone();
        // A statement whose copy comes after another buffer's copy into the tensor is taken once that one
        // is rewritten (its copy gone): as many rounds as buffers.
        for _ in ys {
            for &y in ys {
                store_direct(&mut new, y, &no_wait);
            }
        }
        let mut r = BTreeSet::new();
        reads_of(&new, &mut r);
        let mut still = BTreeSet::new();
        copy_dsts(&new, &mut still);
        if ys.iter().any(|y| r.contains(y)) || !still.is_disjoint(gs) {
            return false;
        }
        *body = new;
        true
    };
    let mut left: Vec<(BufId, BTreeSet<TensorId>)> = Vec::new();
    for y in ys {
        let mut gs = BTreeSet::new();
        if !store_targets(body, y, dt, &mut gs) || !gs.is_disjoint(&read) || !gs.is_disjoint(&other_written) {
            continue;
        }
        if !rewrite(body, &[y], &gs) {
            left.push((y, gs));
        }
    }
    // Buffers whose copies go into one tensor (the attention backward's two feeds into one workspace): each
    // alone leaves the other's copy writing the tensor, so they are rewritten together when their windows
    // are provably apart (as in `mmad_writes`).
    rewrite_groups(body, left, dt, rewrite);
}

/// What level 4 ([`vec_writes`], [`stores_beside`]) checks a rewrite against: the GM tensors the launch's
/// vector program or `body` reads, those the other program reads and writes, and the candidate buffers (the
/// sources of copies to GM).
struct StoreScope {
    read: BTreeSet<TensorId>,
    other_read: BTreeSet<TensorId>,
    other_written: BTreeSet<TensorId>,
    ys: BTreeSet<BufId>,
}

impl StoreScope {
    fn of(body: &[Stmt], launch: &Launch, other: &[Stmt]) -> StoreScope {
        let mut read = BTreeSet::new();
        gm_reads(&launch.vector, &mut read);
        gm_reads(body, &mut read);
        let mut other_read = BTreeSet::new();
        gm_reads(other, &mut other_read);
        let mut ys = BTreeSet::new();
        copy_srcs(body, &mut ys);
        StoreScope { read, other_read, other_written: gm_writes(other), ys }
    }
}

/// The buffers that copies to GM read.
fn copy_srcs(body: &[Stmt], out: &mut BTreeSet<BufId>) {
    for s in body {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => copy_srcs(body, out),
            Stmt::Copy { src, dst: Region { loc: Loc::Gm(_), .. }, .. } => out.extend(buf_of(src)),
            _ => {}
        }
    }
}

/// The GM tensors that copies (and gathers, mmads, reductions and library calls) write.
fn copy_dsts(body: &[Stmt], out: &mut BTreeSet<TensorId>) {
    for s in body {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => copy_dsts(body, out),
            Stmt::Copy { dst: Region { loc: Loc::Gm(g), .. }, .. } => {
                out.insert(*g);
            }
            Stmt::Gather { .. } | Stmt::Mmad { .. } | Stmt::Reduce { .. } | Stmt::Library { .. } => {
                let (mut b, mut g) = (BTreeSet::new(), BTreeSet::new());
                writes(s, &mut b, &mut g);
                out.extend(g);
            }
            _ => {}
        }
    }
}

/// The tensors the copies from `y` write (into `out`), and whether `allow(src, dst)` accepts every such copy.
fn targets(body: &[Stmt], y: BufId, allow: &impl Fn(&Region, &Region) -> bool, out: &mut BTreeSet<TensorId>) -> bool {
    let mut ok = true;
    for s in body {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => ok &= targets(body, y, allow, out),
            Stmt::Copy { src, dst, .. } if buf_of(src) == Some(y) => {
                if let Loc::Gm(g) = &dst.loc {
                    out.insert(*g);
                }
                ok &= allow(src, dst);
            }
            _ => {}
        }
    }
    ok
}

/// [`targets`] for a direct store: the dtypes allow it (`f32` into bf16 too).
fn store_targets(body: &[Stmt], y: BufId, dt: &Dtypes<'_>, out: &mut BTreeSet<TensorId>) -> bool {
    targets(body, y, &|s, d| store_through(dt.of(s), dt.of(d)), out)
}

/// Level 4 for a buffer that other statements read too (AdamW's `m` and `v`, read again for the bias
/// correction): a `Vector` statement writing a window `W` of an `f32` buffer `y`, paired with a copy of `W` to
/// GM as [`vec_writes`] pairs them ([`store_pairs`]), and followed at once by another `Vector` statement of
/// the same sizes (so the two are one fused element loop): an identity statement `G = W` goes right after it
/// and the copy goes. The fused loop stores the computed vectors a second time, into `G`, instead of a pass
/// over `W` after the loop. As for level 4, the tensor's writes are exactly the paired statements (every
/// copy of `y` is rewritten, and no other copy writes the tensor), nothing in this program reads it, and the
/// other program does not write it, so storing earlier is not observable; the identity reads `W` as stored
/// (`f32`: the copy's bits, or its rounding into bf16/f16, which the vector store does the same way).
fn stores_beside(body: &mut Vec<Stmt>, launch: &Launch, other: &[Stmt], dt: &Dtypes<'_>) {
    let StoreScope { read, other_read, other_written, ys } = StoreScope::of(body, launch, other);
    for y in ys {
        if launch.buffers.get(y.0 as usize).map(|b| b.dtype) != Some(DType::F32) {
            continue;
        }
        let mut gs = BTreeSet::new();
        if !store_targets(body, y, dt, &mut gs) || !gs.is_disjoint(&read) || !gs.is_disjoint(&other_written) {
            continue;
        }
        let no_wait = gs.intersection(&other_read).copied().collect();
        let mut new = body.clone();
        beside(&mut new, y, &no_wait);
        let mut still = BTreeSet::new();
        copy_dsts(&new, &mut still);
        if still.is_disjoint(&gs) {
            *body = new;
        }
    }
}

/// [`stores_beside`]'s rewrite of the statement lists of `body` for buffer `y`.
fn beside(body: &mut Vec<Stmt>, y: BufId, no_wait: &BTreeSet<TensorId>) {
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            beside(b, y, no_wait);
        }
    }
    let mut add: Vec<(usize, Stmt)> = Vec::new();
    let mut drop = BTreeSet::new();
    for (i, j) in store_pairs(body, y, no_wait) {
        let (Stmt::Vector { dst: w, rows, cols, .. }, Stmt::Copy { dst: g, .. }) = (&body[i], &body[j]) else {
            continue;
        };
        let fused =
            matches!(body.get(i + 1), Some(Stmt::Vector { rows: r2, cols: c2, .. }) if r2 == rows && c2 == cols);
        if !fused || j == i + 1 {
            continue;
        }
        let expr = VExpr::Read(w.clone());
        add.push((i + 1, Stmt::Vector { dst: g.clone(), rows: rows.clone(), cols: cols.clone(), expr }));
        drop.insert(j);
    }
    if add.is_empty() {
        return;
    }
    let old = std::mem::take(body);
    for (k, s) in old.into_iter().enumerate() {
        for (_, a) in add.iter().filter(|(at, _)| *at == k) {
            body.push(a.clone());
        }
        if !drop.contains(&k) {
            body.push(s);
        }
    }
}

/// Takes the candidates `left` (a buffer and the tensors its copies write) in groups whose tensors meet and
/// calls `rewrite` on each group of two or more whose copies' windows are provably apart
/// ([`disjoint_windows`]).
fn rewrite_groups<F>(body: &mut Vec<Stmt>, mut left: Vec<(BufId, BTreeSet<TensorId>)>, dt: &Dtypes<'_>, rewrite: F)
where
    F: Fn(&mut Vec<Stmt>, &[BufId], &BTreeSet<TensorId>) -> bool,
{
    while let Some((y, mut gs)) = left.pop() {
        let mut group = vec![y];
        loop {
            let before = group.len();
            left.retain(|(z, hs)| {
                if hs.is_disjoint(&gs) {
                    return true;
                }
                group.push(*z);
                gs.extend(hs.iter().copied());
                false
            });
            if group.len() == before {
                break;
            }
        }
        if group.len() > 1 && disjoint_windows(body, &group, dt) {
            rewrite(body, &group, &gs);
        }
    }
}

// ----- level 5: mmad results stored straight to GM -----

/// The chain of mmads whose result the `Copy` at `j` (of a window `W` of buffer `y` to GM) takes, in the
/// same statement list: an mmad `W = a·b` at the chain's start, then only accumulating mmads `W += a·b`
/// (directly in the list or at the top level of an `If`'s or a `For`'s body: a loop of k steps whose
/// variable and bounds are none of the window's) with the copy's `m × n`, and nothing else
/// that reads or writes `y`, writes the copy's GM tensor, assigns a register of the windows or sizes, or
/// (for a tensor of `no_wait`, one the partner program reads) waits on a cross-core flag. Returns the
/// start and the positions of the chain's mmads (index in the list, index in the `If` or `For` body or `None`).
fn mmad_chain(body: &[Stmt], j: usize, y: BufId, no_wait: &BTreeSet<TensorId>) -> Option<Vec<Vec<usize>>> {
    let Stmt::Copy { src, dst, rows, cols, .. } = &body[j] else { return None };
    let Loc::Gm(g) = &dst.loc else { return None };
    if buf_of(src) != Some(y) {
        return None;
    }
    let mut vars = BTreeSet::new();
    region_vars(src, &mut vars);
    region_vars(dst, &mut vars);
    svars(rows, &mut vars);
    svars(cols, &mut vars);
    let mut dep = BTreeSet::new();
    region_sexpr_reads(&body[j], &mut dep);
    if !dep.is_empty() {
        return None;
    }
    let into_w = |s: &Stmt, acc: bool| {
        matches!(s, Stmt::Mmad { c, m, n, accumulate, .. }
            if c == src && m == rows && n == cols && *accumulate == acc)
    };
    // Whether `s` touches what the chain needs unchanged (besides being one of its mmads). An mmad that
    // already accumulates in the tensor is another buffer's chain rewritten before this one (the tiler's
    // mmads write L0C): rewritten together only when the copies' windows are provably apart
    // (`rewrite_groups`), so it writes none of this chain's window (h's two matmuls, whose k-step loop holds
    // both chains).
    let disturbs = |s: &Stmt| {
        if matches!(s, Stmt::Mmad { c: Region { loc: Loc::Gm(t), .. }, .. } if t == g) {
            let mut r = BTreeSet::new();
            reads_of(std::slice::from_ref(s), &mut r);
            return r.contains(&y);
        }
        let (bufs, gm, set) = effects(s);
        let mut r = BTreeSet::new();
        reads_of(std::slice::from_ref(s), &mut r);
        bufs.contains(&y)
            || r.contains(&y)
            || gm.contains(g)
            || !set.is_disjoint(&vars)
            || (no_wait.contains(g) && has_cross_wait(s))
    };
    // An accumulating mmad of the chain whose operands or sizes read the buffer, or whose operand is the
    // tensor itself (or not an mmad at all).
    let reads_itself = |s: &Stmt| {
        let Stmt::Mmad { a, b, .. } = s else { return true };
        let mut r = BTreeSet::new();
        region_sexpr_reads(s, &mut r);
        r.contains(&y)
            || buf_of(a) == Some(y)
            || buf_of(b) == Some(y)
            || matches!(&a.loc, Loc::Gm(t) if t == g)
            || matches!(&b.loc, Loc::Gm(t) if t == g)
    };
    // A starting mmad whose own operands and sizes leave the buffer and the tensor alone.
    let starts_ok = |s: &Stmt| {
        let mut r = BTreeSet::new();
        region_sexpr_reads(s, &mut r);
        let mut gr = BTreeSet::new();
        gm_reads(std::slice::from_ref(s), &mut gr);
        let Stmt::Mmad { a, b, .. } = s else { return false };
        !(r.contains(&y) || gr.contains(g) || buf_of(a) == Some(y) || buf_of(b) == Some(y))
    };
    let mut chain = Vec::new();
    for i in (0..j).rev() {
        let s = &body[i];
        if into_w(s, false) {
            if !starts_ok(s) {
                return None;
            }
            chain.push(vec![i]);
            return Some(chain);
        }
        if into_w(s, true) {
            if reads_itself(s) {
                return None;
            }
            chain.push(vec![i]);
            continue;
        }
        if matches!(s, Stmt::If { .. } | Stmt::For { .. }) {
            // A branch or loop holding links at any depth: a branch of accumulating mmads, a loop of k steps
            // (the grouped template's item: its links count however many times it runs), the matmul
            // template's nest (`for k0 { for k2 { if k0 + k2 == 0 { W = a·b } if 0 < k0 + k2 { W += a·b } } }`),
            // with the chain's start among them when the nest's first mmad into `W` is provably that start
            // (`first_link`).
            let links = Links {
                into_w: &into_w,
                reads_itself: &reads_itself,
                starts: &starts_ok,
                disturbs: &disturbs,
                vars: &vars,
                y,
            };
            let branch = matches!(s, Stmt::If { .. });
            match nest_links(s, &links) {
                Some((inner, start)) if !inner.is_empty() => {
                    chain.extend(inner.into_iter().map(|mut p| {
                        p.insert(0, i);
                        p
                    }));
                    if !start {
                        continue;
                    }
                    let is_link = |t: &Stmt| {
                        if into_w(t, false) {
                            Some(false)
                        } else if into_w(t, true) {
                            Some(true)
                        } else {
                            None
                        }
                    };
                    let mut env = std::collections::BTreeMap::new();
                    return matches!(first_link(std::slice::from_ref(s), &mut env, &is_link), First::Start)
                        .then_some(chain);
                }
                // A branch without links whose condition and statements leave the chain alone.
                Some(_) if branch => continue,
                // A branch whose condition reads the buffer, or holding what disturbs the chain.
                None if branch => return None,
                // A loop without links (or not a nest of them): judged whole below.
                _ => {}
            }
        }
        if disturbs(s) {
            return None;
        }
    }
    None
}

/// What [`nest_links`] checks a nest's statements with (the closures of [`mmad_chain`]).
struct Links<'c> {
    /// `s` is an mmad into the chain's window (`true`: accumulating).
    into_w: &'c dyn Fn(&Stmt, bool) -> bool,
    /// An accumulating link whose operands or sizes read the buffer or the tensor.
    reads_itself: &'c dyn Fn(&Stmt) -> bool,
    /// A starting link (`W = a·b`) whose operands and sizes leave the buffer and the tensor alone.
    starts: &'c dyn Fn(&Stmt) -> bool,
    /// `s` touches what the chain needs unchanged.
    disturbs: &'c dyn Fn(&Stmt) -> bool,
    /// The registers of the copy's windows and sizes.
    vars: &'c BTreeSet<SVar>,
    y: BufId,
}

/// The links of an mmad chain (see [`mmad_chain`]) in the loop or branch `s` at any depth: their paths from
/// `s` (indices into the bodies) and whether one of them is a starting mmad (`W = a·b`). `None` when another
/// statement of `s` disturbs the chain, a link reads the buffer or the tensor itself, a loop's variable is
/// one of the window's registers, or a loop's bounds or a branch's condition read the buffer.
fn nest_links(s: &Stmt, l: &Links<'_>) -> Option<(Vec<Vec<usize>>, bool)> {
    let body = match s {
        Stmt::For { var, lo, hi, body, .. } => {
            let mut r = BTreeSet::new();
            sexpr_reads(lo, &mut r);
            sexpr_reads(hi, &mut r);
            if l.vars.contains(var) || r.contains(&l.y) {
                return None;
            }
            body
        }
        Stmt::If { cond, then } => {
            let mut r = BTreeSet::new();
            sexpr_reads(cond, &mut r);
            if r.contains(&l.y) {
                return None;
            }
            then
        }
        _ => return None,
    };
    let (mut links, mut start) = (Vec::new(), false);
    for (k, t) in body.iter().enumerate() {
        if (l.into_w)(t, true) {
            if (l.reads_itself)(t) {
                return None;
            }
            links.push(vec![k]);
            continue;
        }
        if (l.into_w)(t, false) {
            if !(l.starts)(t) {
                return None;
            }
            links.push(vec![k]);
            start = true;
            continue;
        }
        if matches!(t, Stmt::For { .. } | Stmt::If { .. }) {
            let (inner, st) = nest_links(t, l)?;
            if !inner.is_empty() {
                links.extend(inner.into_iter().map(|mut p| {
                    p.insert(0, k);
                    p
                }));
                start |= st;
                continue;
            }
        }
        if (l.disturbs)(t) {
            return None;
        }
    }
    Some((links, start))
}

/// Where walking the first iteration of a nest (see [`first_link`]) got to.
#[derive(Debug, PartialEq)]
enum First {
    /// A starting link (`W = a·b`) that surely runs, before any other link.
    Start,
    /// The statements ran to their end with no link run.
    Nothing,
    /// An accumulating link may run first, or what runs is not known.
    Unknown,
}

/// Walks `body` as it runs from its start, with the registers `env` knows (constants and loop variables set
/// on the way; every other register unknown), until the first link (`is_link`: `Some(accumulate)`) of an
/// mmad chain: `Start` when that is a starting link that surely runs and no link runs before it. Branches
/// and loops holding links must have conditions and bounds the walk evaluates; a loop holding links that
/// runs must reach the start in its first iteration. So in the matmul template's nest, with `k0` and `k2`
/// starting at 0 and the inner bound `min(bk, k - k0)` evaluated at `k0 = 0`, the first mmad run is `if k0
/// + k2 == 0 { W = a·b }`, whatever the later iterations do.
fn first_link(
    body: &[Stmt],
    env: &mut std::collections::BTreeMap<SVar, i64>,
    is_link: &dyn Fn(&Stmt) -> Option<bool>,
) -> First {
    let holds = |s: &Stmt| count(std::slice::from_ref(s), &|t| is_link(t).is_some()) > 0;
    let forget = |s: &Stmt, env: &mut std::collections::BTreeMap<SVar, i64>| {
        let mut set = BTreeSet::new();
        sets(s, &mut set);
        env.retain(|v, _| !set.contains(v));
    };
    for s in body {
        if let Some(acc) = is_link(s) {
            return if acc { First::Unknown } else { First::Start };
        }
        match s {
            Stmt::Set { var, value } => match eval_known(value, env) {
                Some(x) => {
                    env.insert(*var, x);
                }
                None => {
                    env.remove(var);
                }
            },
            Stmt::If { cond, then } if holds(s) => match eval_known(cond, env) {
                Some(0) => {}
                Some(_) => match first_link(then, env, is_link) {
                    First::Nothing => {}
                    f => return f,
                },
                None => return First::Unknown,
            },
            Stmt::For { var, lo, hi, body: inner, .. } if holds(s) => {
                match (eval_known(lo, env), eval_known(hi, env)) {
                    (Some(lo), Some(hi)) if lo < hi => {
                        env.insert(*var, lo);
                        return match first_link(inner, env, is_link) {
                            First::Start => First::Start,
                            _ => First::Unknown,
                        };
                    }
                    // A loop that does not run.
                    (Some(_), Some(_)) => forget(s, env),
                    _ => return First::Unknown,
                }
            }
            _ => forget(s, env),
        }
    }
    First::Nothing
}

/// The value of `e` from the registers `env` knows (`None`: it reads another register, a buffer or the core
/// index, divides by 0 or overflows).
fn eval_known(e: &SExpr, env: &std::collections::BTreeMap<SVar, i64>) -> Option<i64> {
    match e {
        SExpr::Const(c) => Some(*c),
        SExpr::Var(v) => env.get(v).copied(),
        SExpr::Core | SExpr::Read { .. } => None,
        SExpr::Bin(op, a, b) => {
            let (a, b) = (eval_known(a, env)?, eval_known(b, env)?);
            match op {
                SBin::Add => a.checked_add(b),
                SBin::Sub => a.checked_sub(b),
                SBin::Mul => a.checked_mul(b),
                SBin::Div | SBin::Mod if b == 0 => None,
                // `i64::MIN / -1` overflows.
                SBin::Div => a.checked_div(b).map(|_| kc_ir::ops::floor_div(a, b)),
                SBin::Mod => a.checked_rem(b).map(|_| kc_ir::ops::floor_mod(a, b)),
                SBin::Min => Some(a.min(b)),
                SBin::Max => Some(a.max(b)),
                SBin::Lt => Some(i64::from(a < b)),
                SBin::Le => Some(i64::from(a <= b)),
                SBin::Eq => Some(i64::from(a == b)),
            }
        }
    }
}

/// The statement at `path` (an index into `body`, then into the loop or branch bodies below it).
fn at_path<'s>(body: &'s mut [Stmt], path: &[usize]) -> Option<&'s mut Stmt> {
    let (&first, rest) = path.split_first()?;
    let s = body.get_mut(first)?;
    if rest.is_empty() {
        return Some(s);
    }
    match s {
        Stmt::If { then: b, .. } | Stmt::For { body: b, .. } => at_path(b, rest),
        _ => None,
    }
}

/// Makes every mmad chain of `y` (see [`mmad_chain`]) accumulate in the copy's GM window and drops the copies.
fn mmad_direct(body: &mut Vec<Stmt>, y: BufId, no_wait: &BTreeSet<TensorId>) {
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            mmad_direct(b, y, no_wait);
        }
    }
    let mut drop = BTreeSet::new();
    for j in 0..body.len() {
        let Some(chain) = mmad_chain(body, j, y, no_wait) else { continue };
        let Stmt::Copy { dst: g, .. } = &body[j] else { continue };
        let g = g.clone();
        for path in chain {
            if let Some(Stmt::Mmad { c, .. }) = at_path(body, &path) {
                *c = g.clone();
            }
        }
        drop.insert(j);
    }
    drop_indices(body, &drop);
}

/// Stores the cube's results straight into GM instead of through L0C and a fixpipe copy.
///
/// An mmad `W = a·b` of a window `W` of buffer `y`, possibly followed by accumulating mmads `W += a·b`, then
/// a `Copy` of exactly `W` (same region, the mmads' `m × n` as the copy's `rows × cols`) to a GM window `G`
/// of the same dtype (f32: the accumulation is the same in either place), with nothing else in between
/// that reads or writes `y`, writes `G`'s tensor or assigns a register of the windows or sizes (see
/// [`mmad_chain`]): the mmads write and accumulate in `G`, and the copy goes. Done for a buffer `y` only
/// when after the rewrite nothing in the program reads `y`, no statement of this program reads `G`'s
/// tensor, the other program does not write it, and no copy writes it any more: the rewritten mmads are
/// its only writers, and storing earlier is not observable by this core. The other program may read the
/// tensor (the vector cores read attention's score blocks and P·V results from it) when no `CrossWait`
/// lies between the chain's start and its copy: the partner runs only while this core waits, so it sees
/// `G` before the chain or after the copy, as before; a core of another unit that read `G` would race
/// with the copy in any schedule.
fn mmad_writes(body: &mut Vec<Stmt>, own: &[Stmt], other: &[Stmt], dt: &Dtypes<'_>) {
    let mut read = BTreeSet::new();
    gm_reads(own, &mut read);
    gm_reads(body, &mut read);
    let mut other_read = BTreeSet::new();
    gm_reads(other, &mut other_read);
    let other_written = gm_writes(other);
    let mut ys = BTreeSet::new();
    fn mmad_dsts(body: &[Stmt], out: &mut BTreeSet<BufId>) {
        for s in body {
            match s {
                Stmt::For { body, .. } | Stmt::If { then: body, .. } => mmad_dsts(body, out),
                Stmt::Mmad { c, .. } => out.extend(buf_of(c)),
                _ => {}
            }
        }
    }
    mmad_dsts(body, &mut ys);
    // No copy (or other statement) writes the tensors any more besides the rewritten mmads.
    fn other_writers(body: &[Stmt], gs: &BTreeSet<TensorId>) -> bool {
        body.iter().any(|s| match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => other_writers(body, gs),
            Stmt::Mmad { .. } => false,
            s => {
                let (mut b, mut g) = (BTreeSet::new(), BTreeSet::new());
                writes(s, &mut b, &mut g);
                !g.is_disjoint(gs)
            }
        })
    }
    // Rewrites the chains of every buffer of `ys` together, if then nothing reads them and only mmads write
    // their tensors `gs`.
    let rewrite = |body: &mut Vec<Stmt>, ys: &[BufId], gs: &BTreeSet<TensorId>| -> bool {
        let no_wait = gs.intersection(&other_read).copied().collect();
        let mut new = body.clone();
        // A chain whose copy comes after another buffer's copy into the tensor is taken once that one is
        // rewritten (its copy gone): as many rounds as buffers.
        for _ in ys {
            for &y in ys {
                mmad_direct(&mut new, y, &no_wait);
            }
        }
        let mut r = BTreeSet::new();
        reads_of(&new, &mut r);
        if ys.iter().any(|y| r.contains(y)) || other_writers(&new, gs) {
            return false;
        }
        *body = new;
        true
    };
    let mut left: Vec<(BufId, BTreeSet<TensorId>)> = Vec::new();
    for y in ys {
        let mut gs = BTreeSet::new();
        // Copies into GM tensors only, of the same dtype.
        let same_gm = |s: &Region, d: &Region| matches!(d.loc, Loc::Gm(_)) && dt.same(s, d);
        if !targets(body, y, &same_gm, &mut gs)
            || gs.is_empty()
            || !gs.is_disjoint(&read)
            || !gs.is_disjoint(&other_written)
        {
            continue;
        }
        if !rewrite(body, &[y], &gs) {
            left.push((y, gs));
        }
    }
    // Buffers whose copies go into one tensor (the backward's two score blocks into one workspace, at two
    // offsets): each alone leaves the other's copy writing the tensor, so they are rewritten together when
    // their windows are provably disjoint ([`disjoint_windows`]).
    rewrite_groups(body, left, dt, rewrite);
}

/// How many statements of `body` (loop and branch bodies included) satisfy `f`.
pub fn count(body: &[Stmt], f: &dyn Fn(&Stmt) -> bool) -> usize {
    body.iter()
        .map(|s| {
            usize::from(f(s))
                + match s {
                    Stmt::For { body, .. } | Stmt::If { then: body, .. } => count(body, f),
                    _ => 0,
                }
        })
        .sum()
}

/// `e` as `base + k` (`k` a constant; 0 when `e` has no constant term on the outside).
fn split_const(e: &SExpr) -> (SExpr, i64) {
    match e {
        SExpr::Bin(SBin::Add, a, b) => match &**b {
            SExpr::Const(k) => {
                let (base, j) = split_const(a);
                (base, j + k)
            }
            _ => (e.clone(), 0),
        },
        SExpr::Const(k) => (SExpr::Const(0), *k),
        _ => (e.clone(), 0),
    }
}

/// Whether the GM windows that the copies out of the buffers `ys` write lie apart for different buffers.
/// The copies must all be in one statement list, with no register of their windows assigned between the
/// first and the last, and each must read its buffer (of one slot) from offset 0 with the row stride it
/// writes with, to a GM offset `base + k` with the same `base` for all: then a copy's window lies in
/// `[base + k, base + k + E)`, `E` its buffer's elements (the source window lies in the buffer, which the
/// JIT checks), and those intervals are compared for the copies of different buffers.
fn disjoint_windows(body: &[Stmt], ys: &[BufId], dt: &Dtypes<'_>) -> bool {
    let out_of = |s: &Stmt| match s {
        Stmt::Copy { src, dst: Region { loc: Loc::Gm(_), .. }, .. } => buf_of(src).filter(|b| ys.contains(b)),
        _ => None,
    };
    let total = count(body, &|s| out_of(s).is_some());
    // The list that holds them all.
    fn find<'s>(body: &'s [Stmt], f: &dyn Fn(&Stmt) -> bool, total: usize) -> Option<&'s [Stmt]> {
        if body.iter().filter(|s| f(s)).count() == total {
            return Some(body);
        }
        body.iter().find_map(|s| match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => find(body, f, total),
            _ => None,
        })
    }
    let Some(list) = find(body, &|s| out_of(s).is_some(), total) else { return false };
    let at: Vec<usize> = (0..list.len()).filter(|&i| out_of(&list[i]).is_some()).collect();
    let (Some(&first), Some(&last)) = (at.first(), at.last()) else { return false };
    let mut spans: Vec<(BufId, TensorId, i64, i64)> = Vec::new();
    let mut base: Option<SExpr> = None;
    let mut vars = BTreeSet::new();
    for &i in &at {
        let Stmt::Copy { src, dst, .. } = &list[i] else { return false };
        let (Some(y), Loc::Gm(g)) = (buf_of(src), &dst.loc) else { return false };
        let buf = &dt.launch.buffers[y.0 as usize];
        let norm = crate::lower::norm;
        if buf.slots != 1 || src.offset != SExpr::Const(0) || norm(&src.row_stride) != norm(&dst.row_stride) {
            return false;
        }
        let (b, k) = split_const(&dst.offset);
        let b = norm(&b);
        if base.get_or_insert_with(|| b.clone()) != &b {
            return false;
        }
        region_vars(dst, &mut vars);
        let elems: u64 = buf.shape.iter().product();
        spans.push((y, *g, k, k + elems as i64));
    }
    let mut set = BTreeSet::new();
    list[first..=last].iter().for_each(|s| sets(s, &mut set));
    if !set.is_disjoint(&vars) {
        return false;
    }
    spans.iter().all(|a| spans.iter().all(|b| a.0 == b.0 || a.1 != b.1 || a.3 <= b.2 || b.3 <= a.2))
}

// ----- dead copies -----

/// Drops the copies into buffers that are never read; whether any was dropped.
fn drop_dead(body: &mut Vec<Stmt>, read: &BTreeSet<BufId>) -> bool {
    let before = body.len();
    body.retain(|s| !matches!(s, Stmt::Copy { dst, .. } if buf_of(dst).is_some_and(|b| !read.contains(&b))));
    let mut dropped = body.len() != before;
    for s in body.iter_mut() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            dropped |= drop_dead(b, read);
        }
    }
    dropped
}

// ----- transposed operands: a loop of column copies into an mmad's `b`, read in place instead -----

/// The transposing loads the host's matrix unit reads in place ([`transposed_b`]): the loops to skip and,
/// for each mmad (by the address of its statement), the loop's source window it reads as its transposed `b`.
#[derive(Default, Debug)]
pub struct Transposed {
    /// The `For` statements (by address) whose copies the compiled code skips.
    pub loops: BTreeSet<usize>,
    /// For each converted `Mmad` (by address): its transposed `b`.
    pub mmads: std::collections::BTreeMap<usize, TransposedB>,
}

/// An mmad's `b` as the transpose of a window: element `(p, j)` of `b` is element `(j, p)` of `src`
/// evaluated with the loop variable `var` at `lo` (so `src`'s row stride steps along `b`'s columns and its
/// elements along `b`'s rows).
#[derive(Clone, Debug)]
pub struct TransposedB {
    pub var: SVar,
    pub lo: SExpr,
    pub src: Region,
}

/// `e` with `v` replaced by `by`.
fn subst(e: &SExpr, v: SVar, by: &SExpr) -> SExpr {
    match e {
        SExpr::Var(x) if *x == v => by.clone(),
        SExpr::Bin(op, a, b) => SExpr::Bin(*op, Box::new(subst(a, v, by)), Box::new(subst(b, v, by))),
        SExpr::Read { buf, slot, index } => {
            SExpr::Read { buf: *buf, slot: Box::new(subst(slot, v, by)), index: Box::new(subst(index, v, by)) }
        }
        _ => e.clone(),
    }
}

/// `Some(k)` if `e` is `base + k·v` with `base` not mentioning `v`.
fn var_step(e: &SExpr, v: SVar) -> Option<i64> {
    let mut vs = BTreeSet::new();
    svars(e, &mut vs);
    if !vs.contains(&v) {
        return Some(0);
    }
    match e {
        SExpr::Var(_) => Some(1),
        SExpr::Bin(SBin::Add, a, b) => var_step(a, v)?.checked_add(var_step(b, v)?),
        SExpr::Bin(SBin::Sub, a, b) => var_step(a, v)?.checked_sub(var_step(b, v)?),
        SExpr::Bin(SBin::Mul, a, b) => match (&**a, &**b) {
            (SExpr::Const(k), x) | (x, SExpr::Const(k)) => var_step(x, v)?.checked_mul(*k),
            _ => None,
        },
        _ => None,
    }
}

/// A loop of column copies that writes the transpose of a window into a buffer: what an mmad's `b` may read
/// instead.
struct ColumnLoop<'s> {
    var: SVar,
    lo: &'s SExpr,
    dst: &'s Region,
    /// The destination buffer.
    buf: BufId,
    /// The `b` row stride the destination makes (the mmad's `b` must have it).
    b_stride: SExpr,
    /// The `k` and `n` of the window written (as written: the mmad's must be the same expressions).
    k: SExpr,
    n: SExpr,
    /// The transposed `b` (`n × k`, contiguous along `k`), with the loop variable in it.
    bt: Region,
    /// The registers the windows and sizes depend on (not the loop variable).
    vars: BTreeSet<SVar>,
}

/// `for var in lo..hi { copy src(var) -> dst(var), rows × 1 }` into a buffer window `D`, the two of one dtype,
/// nothing read from buffers in the scalar expressions, in one of two forms:
/// - the `j`-th element of each row of `src` becomes row `j - lo` of `D` (`src` moves by one element per
///   iteration and has a positive constant row stride; `D` is a column of row stride 1 moving by a
///   constant, the `b` row stride): `b` is `(hi - lo) × rows`, its transpose is `src`'s rows (the grouped
///   matmuls' weights, Muon's `xᵀ`);
/// - row `j` of `src` (row stride 1, moving by a positive constant per iteration) becomes column `j - lo` of
///   `D` (moving by one element, its row stride the `b` row stride): `b` is `rows × (hi - lo)`, its
///   transpose is `src`'s rows at that step (attention's Kᵀ).
fn column_loop<'s>(s: &'s Stmt, dt: &Dtypes<'_>) -> Option<ColumnLoop<'s>> {
    let Stmt::For { var, lo, hi, step: 1, body } = s else { return None };
    let [Stmt::Copy { src, dst, rows, cols: SExpr::Const(1), .. }] = body.as_slice() else { return None };
    let Loc::Buf { buf, slot } = &dst.loc else { return None };
    let mut vars = BTreeSet::new();
    region_vars(src, &mut vars);
    region_vars(dst, &mut vars);
    for e in [lo, hi, rows] {
        svars(e, &mut vars);
    }
    let mut fixed = BTreeSet::new();
    for e in [lo, hi, rows, &src.row_stride, &dst.row_stride, slot] {
        svars(e, &mut fixed);
    }
    if let Loc::Buf { slot, .. } = &src.loc {
        svars(slot, &mut fixed);
    }
    let reads =
        [lo, hi, rows, &src.offset, &src.row_stride, &dst.offset, &dst.row_stride, slot].iter().any(|e| has_read(e))
            || matches!(&src.loc, Loc::Buf { slot, .. } if has_read(slot));
    if fixed.contains(var) || reads || !dt.same(src, dst) || src.loc == dst.loc {
        return None;
    }
    let norm = crate::lower::norm;
    let trips = match lo {
        SExpr::Const(0) => hi.clone(),
        lo => SExpr::Bin(SBin::Sub, Box::new(hi.clone()), Box::new(lo.clone())),
    };
    let (sstep, dstep) = (var_step(&src.offset, *var)?, var_step(&dst.offset, *var)?);
    let (src_rs, dst_rs) = (norm(&src.row_stride), norm(&dst.row_stride));
    let (b_stride, k, n, bt_stride) = match (&src_rs, &dst_rs) {
        // Columns of `src` become rows of `D`.
        (SExpr::Const(rs), SExpr::Const(1)) if sstep == 1 && *rs > 0 => {
            (SExpr::Const(dstep), trips, rows.clone(), src_rs.clone())
        }
        // Rows of `src` become columns of `D`.
        (SExpr::Const(1), _) if dstep == 1 && sstep > 0 => (dst_rs.clone(), rows.clone(), trips, SExpr::Const(sstep)),
        _ => return None,
    };
    vars.remove(var);
    let bt = Region { loc: src.loc.clone(), offset: src.offset.clone(), row_stride: bt_stride };
    Some(ColumnLoop { var: *var, lo, dst, buf: *buf, b_stride, k, n, bt, vars })
}

/// Whether `mm` reads, as its `b`, exactly the `k × n` window the loop wrote (its `k` and `n` the loop's as
/// written), and neither its `a` nor its `c` is in the loop's buffer.
fn reads_loop(mm: &Stmt, l: &ColumnLoop<'_>) -> bool {
    let Stmt::Mmad { a, b, c, k, n, .. } = mm else { return false };
    let n_ = crate::lower::norm;
    b.loc == l.dst.loc
        && n_(&b.row_stride) == n_(&l.b_stride)
        && n_(&b.offset) == n_(&subst(&l.dst.offset, l.var, l.lo))
        && n_(k) == n_(&l.k)
        && n_(n) == n_(&l.n)
        && buf_of(a) != Some(l.buf)
        && buf_of(c) != Some(l.buf)
}

/// Candidate pairs in one statement list (and, recursively, in the bodies of its loops and branches): each
/// column loop with the mmads after it that read its window as their `b`, up to the first statement that
/// writes the loop's buffer or its source's storage or assigns a register of its windows and sizes.
fn transposed_pairs<'s>(body: &'s [Stmt], dt: &Dtypes<'_>, out: &mut Vec<(&'s Stmt, &'s Stmt, ColumnLoop<'s>)>) {
    for (i, s) in body.iter().enumerate() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = s {
            transposed_pairs(b, dt, out);
        }
        let Some(l) = column_loop(s, dt) else { continue };
        pair_after(s, &l, &body[i + 1..], out);
    }
}

/// The mmads of `after` (and of the branches in it: an mmad under a condition on the k step, as the
/// tiler writes the first step's) that read loop `s`'s window, up to the first statement that ends its
/// validity; false once one did.
fn pair_after<'s>(
    s: &'s Stmt,
    l: &ColumnLoop<'s>,
    after: &'s [Stmt],
    out: &mut Vec<(&'s Stmt, &'s Stmt, ColumnLoop<'s>)>,
) -> bool {
    for t in after {
        if reads_loop(t, l) {
            out.push((
                s,
                t,
                ColumnLoop {
                    vars: l.vars.clone(),
                    k: l.k.clone(),
                    n: l.n.clone(),
                    b_stride: l.b_stride.clone(),
                    bt: l.bt.clone(),
                    ..*l
                },
            ));
        }
        if let Stmt::If { then, .. } = t {
            pair_after(s, l, then, out);
        }
        let (bufs, gm, set) = effects(t);
        let src_written = match &l.bt.loc {
            Loc::Buf { buf, .. } => bufs.contains(buf),
            Loc::Gm(g) => gm.contains(g),
        };
        if bufs.contains(&l.buf) || src_written || !set.is_disjoint(&l.vars) {
            return false;
        }
    }
    true
}

/// Buffers read other than as the `b` operand of an mmad in `mmads` (by address).
fn reads_besides(body: &[Stmt], mmads: &BTreeSet<usize>, out: &mut BTreeSet<BufId>) {
    for s in body {
        match s {
            Stmt::Mmad { a, c, accumulate, .. } if mmads.contains(&(s as *const Stmt as usize)) => {
                out.extend(buf_of(a));
                if *accumulate {
                    out.extend(buf_of(c));
                }
                region_sexpr_reads(s, out);
            }
            Stmt::For { lo, hi, body, .. } => {
                sexpr_reads(lo, out);
                sexpr_reads(hi, out);
                reads_besides(body, mmads, out);
            }
            Stmt::If { cond, then } => {
                sexpr_reads(cond, out);
                reads_besides(then, mmads, out);
            }
            s => reads_of(std::slice::from_ref(s), out),
        }
    }
}

/// The transposing loads of `body` (a core program after [`forward`]) that the host's matrix unit can read
/// in place: a loop `for j in lo..hi { copy src(j) -> D(j), rows × 1 }` that writes row `j - lo` of a
/// `b` window `D` from the `j`-th element of each row of `src` (the tiler's transposing loads of Kᵀ,
/// `xᵀ` and the grouped matmuls' weights, which L1 forwarding makes read GM directly), followed in the same
/// statement list (or in a branch of it) by mmads whose `b` is exactly `D` (`k` = `hi - lo`, `n` = `rows` as written), with nothing
/// in between that writes `D`'s buffer or `src`'s storage or assigns a register of the windows and sizes.
/// When every read of `D`'s buffer in the whole program is the `b` of such an mmad, the mmads read `src`
/// transposed (`kc_mmad`'s bit 3) and the loops are skipped: the same elements reach the matrix unit, and the
/// buffer's contents are never read.
pub fn transposed_b(prog: &TileProgram, launch: &Launch, body: &[Stmt]) -> Transposed {
    let dt = Dtypes { prog, launch };
    let mut pairs = Vec::new();
    transposed_pairs(body, &dt, &mut pairs);
    let mmads: BTreeSet<usize> = pairs.iter().map(|(_, m, _)| *m as *const Stmt as usize).collect();
    let mut other = BTreeSet::new();
    reads_besides(body, &mmads, &mut other);
    // A buffer also read in another way (or by an mmad some loop does not pair with) keeps its copies.
    let mut unpaired = BTreeSet::new();
    unpaired_b_reads(body, &mmads, &mut unpaired);
    let mut out = Transposed::default();
    for (l, m, cl) in pairs {
        if other.contains(&cl.buf) || unpaired.contains(&cl.buf) {
            continue;
        }
        out.loops.insert(l as *const Stmt as usize);
        out.mmads.insert(m as *const Stmt as usize, TransposedB { var: cl.var, lo: cl.lo.clone(), src: cl.bt });
    }
    out
}

/// The buffers read as the `b` of an mmad not in `mmads`.
fn unpaired_b_reads(body: &[Stmt], mmads: &BTreeSet<usize>, out: &mut BTreeSet<BufId>) {
    for s in body {
        match s {
            Stmt::Mmad { b, .. } if !mmads.contains(&(s as *const Stmt as usize)) => out.extend(buf_of(b)),
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => unpaired_b_reads(body, mmads, out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_ir::graph::BinOp;
    use kc_ir::tile::{Buffer, GmTensor, Mem, Pipe, SBin, TensorRole, Unit};

    fn is_copy(s: &Stmt) -> bool {
        matches!(s, Stmt::Copy { .. })
    }

    fn gm_at(t: u32, off: SExpr, ld: i64) -> Region {
        Region { loc: Loc::Gm(TensorId(t)), offset: off, row_stride: SExpr::Const(ld) }
    }

    fn ub(b: u32, ld: i64) -> Region {
        Region {
            loc: Loc::Buf { buf: BufId(b), slot: SExpr::Const(0) },
            offset: SExpr::Const(0),
            row_stride: SExpr::Const(ld),
        }
    }

    fn var(v: u32) -> SExpr {
        SExpr::Var(SVar(v))
    }

    /// An f32[16, 16] buffer of one slot in `mem`.
    fn buf16(name: &str, mem: Mem) -> Buffer {
        Buffer::single(name, mem, DType::F32, vec![16, 16])
    }

    /// Buffer `b`'s slot 0 from element `off`, rows `ld` apart.
    fn buf_at(b: u32, off: SExpr, ld: i64) -> Region {
        Region { loc: Loc::Buf { buf: BufId(b), slot: SExpr::Const(0) }, offset: off, row_stride: SExpr::Const(ld) }
    }

    /// A vector launch over `x: f32[8, 16]` (t0) into `y: f32[8, 16]` (t1), with UB buffers `a` (0) and `b` (1),
    /// f32[2, 16]; `mid` goes between the copy in and the vector statement.
    fn launch(mid: Vec<Stmt>) -> (TileProgram, Launch) {
        let gm = |name: &str, role| GmTensor { name: name.into(), dtype: DType::F32, shape: vec![8, 16], role };
        let buf = |name: &str| Buffer::single(name, Mem::UB, DType::F32, vec![2, 16]);
        let rows = var(1);
        let off = SExpr::Bin(SBin::Mul, Box::new(var(0)), Box::new(SExpr::Const(16)));
        let mut body = vec![
            Stmt::Set { var: SVar(1), value: SExpr::Const(2) },
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_at(0, off.clone(), 16),
                dst: ub(0, 16),
                rows: rows.clone(),
                cols: SExpr::Const(16),
            },
        ];
        body.extend(mid);
        body.push(Stmt::Vector {
            dst: ub(1, 16),
            rows: rows.clone(),
            cols: SExpr::Const(16),
            expr: VExpr::Binary(BinOp::Mul, Box::new(VExpr::Read(ub(0, 16))), Box::new(VExpr::F32(2.0))),
        });
        body.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: ub(1, 16),
            dst: gm_at(1, off, 16),
            rows,
            cols: SExpr::Const(16),
        });
        let l = Launch {
            name: "l".into(),
            unit: Unit::Vector,
            cube_cores: 0,
            vector_cores: 1,
            buffers: vec![buf("a"), buf("b")],
            svars: vec!["i".into(), "n".into()],
            cube: vec![],
            vector: vec![Stmt::For { var: SVar(0), lo: SExpr::Const(0), hi: SExpr::Const(8), step: 2, body }],
        };
        let p = TileProgram {
            kernel: "k".into(),
            target: "host".into(),
            dims: Default::default(),
            tensors: vec![gm("x", TensorRole::Param(0)), gm("y", TensorRole::Output(0))],
            launches: vec![l.clone()],
        };
        (p, l)
    }

    /// The launch's `b = a * 2` statement.
    fn vector_stmt(body: &[Stmt]) -> Option<&Stmt> {
        for s in body {
            match s {
                Stmt::Vector { expr: VExpr::Binary(..), .. } => return Some(s),
                Stmt::For { body, .. } | Stmt::If { then: body, .. } => {
                    if let Some(v) = vector_stmt(body) {
                        return Some(v);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// A cube launch: `x: f32[8, 16]` (t0) copied whole (`n` = 8 rows) into L1 buffer 0, then a loop of
    /// column copies `for j in lo..hi` from it into buffer 1 (row `j` of buffer 1 = column `j` of x, or row
    /// `j` of x as a column when `by_rows`), `mid` between the two.
    fn column_loop(mid: Vec<Stmt>, lo: i64, hi: SExpr, by_rows: bool) -> (TileProgram, Launch) {
        let (mut p, mut l) = launch(vec![]);
        let j = var(0);
        let l1 = |name: &str| buf16(name, Mem::L1);
        let at = buf_at;
        let mul = |a: SExpr, k: i64| SExpr::Bin(SBin::Mul, Box::new(a), Box::new(SExpr::Const(k)));
        let (src, dst, rows) = if by_rows {
            (at(0, mul(j.clone(), 16), 1), at(1, j.clone(), 16), SExpr::Const(16))
        } else {
            (at(0, j.clone(), 16), at(1, mul(j.clone(), 16), 1), var(1))
        };
        let mut body = vec![
            Stmt::Set { var: SVar(1), value: SExpr::Const(8) },
            Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_at(0, SExpr::Const(0), 16),
                dst: ub(0, 16),
                rows: var(1),
                cols: SExpr::Const(16),
            },
        ];
        body.extend(mid);
        body.push(Stmt::For {
            var: SVar(0),
            lo: SExpr::Const(lo),
            hi,
            step: 1,
            body: vec![Stmt::Copy { pipe: Pipe::Mte1, src, dst, rows, cols: SExpr::Const(1) }],
        });
        // Buffer 1 is read (so the loop stays).
        body.push(Stmt::Copy {
            pipe: Pipe::Fix,
            src: at(1, SExpr::Const(0), 16),
            dst: gm_at(1, SExpr::Const(0), 16),
            rows: SExpr::Const(8),
            cols: SExpr::Const(16),
        });
        l.unit = Unit::Cube;
        l.buffers = vec![l1("a"), l1("b")];
        l.cube = body;
        l.vector = vec![];
        p.launches = vec![l.clone()];
        (p, l)
    }

    /// The source of the loop's column copy.
    fn loop_source(body: &[Stmt]) -> Option<&Region> {
        body.iter().find_map(|s| match s {
            Stmt::For { body, .. } => match &body[..] {
                [Stmt::Copy { src, .. }] => Some(src),
                _ => None,
            },
            _ => None,
        })
    }

    /// A cube launch with `x: f32[8, 16]` (t0) and `y` (t1): a loop `for j in 0..16` of column copies of x
    /// (row `j` of L0B buffer 1 = column `j` of x's `n` rows, `n` = register 1 = 8), `mid` after it, then
    /// `c (buffer 2) = a (buffer 0) · b (buffer 1)` with `k` = 16 and `n` as given, and `tail` at the end.
    fn transposing(mid: Vec<Stmt>, n: SExpr, tail: Vec<Stmt>) -> (TileProgram, Launch) {
        let (mut p, mut l) = launch(vec![]);
        let buf = buf16;
        let at = buf_at;
        let j = var(0);
        let mut body = vec![
            Stmt::Set { var: SVar(1), value: SExpr::Const(8) },
            Stmt::For {
                var: SVar(0),
                lo: SExpr::Const(0),
                hi: SExpr::Const(16),
                step: 1,
                body: vec![Stmt::Copy {
                    pipe: Pipe::Mte1,
                    src: gm_at(0, j.clone(), 16),
                    dst: at(1, SExpr::Bin(SBin::Mul, Box::new(j), Box::new(SExpr::Const(16))), 1),
                    rows: var(1),
                    cols: SExpr::Const(1),
                }],
            },
        ];
        body.extend(mid);
        body.push(Stmt::Mmad {
            a: at(0, SExpr::Const(0), 16),
            b: at(1, SExpr::Const(0), 16),
            c: at(2, SExpr::Const(0), 16),
            m: SExpr::Const(4),
            k: SExpr::Const(16),
            n,
            accumulate: false,
        });
        body.extend(tail);
        l.unit = Unit::Cube;
        l.buffers = vec![buf("a", Mem::L0A), buf("b", Mem::L0B), buf("c", Mem::L0C)];
        l.cube = body;
        l.vector = vec![];
        p.launches = vec![l.clone()];
        (p, l)
    }

    /// A copy of `x`'s row `r` (t0, 16 wide) into buffer `b`'s window at 0, `rows` × 16.
    fn load_row(r: i64, b: u32, rows: SExpr) -> Stmt {
        Stmt::Copy {
            pipe: Pipe::Mte1,
            src: gm_at(0, SExpr::Const(16 * r), 16),
            dst: buf_at(b, SExpr::Const(0), 16),
            rows,
            cols: SExpr::Const(16),
        }
    }

    #[test]
    fn copies_overwritten_before_any_read_are_dropped() {
        let flag = Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::M, event: 0 };
        let mmad = Stmt::Mmad {
            a: buf_at(0, SExpr::Const(0), 16),
            b: buf_at(1, SExpr::Const(0), 16),
            c: buf_at(2, SExpr::Const(0), 16),
            m: SExpr::Const(4),
            k: SExpr::Const(16),
            n: SExpr::Const(8),
            accumulate: false,
        };
        let dropped = |mid: Vec<Stmt>| {
            let mut body = vec![load_row(0, 0, var(1))];
            body.extend(mid);
            body.extend([load_row(1, 0, var(1)), mmad.clone()]);
            let n = body.len();
            // In a loop's body (as the tiler writes them).
            let mut nested = vec![Stmt::For { var: SVar(0), lo: SExpr::Const(0), hi: SExpr::Const(2), step: 1, body }];
            let changed = drop_overwritten(&mut nested);
            let Stmt::For { body, .. } = &nested[0] else { unreachable!() };
            assert_eq!(changed, body.len() == n - 1);
            // The load of row 1 always stays.
            assert!(body.iter().any(|s| matches!(s, Stmt::Copy { src, .. } if src.offset == SExpr::Const(16))));
            changed
        };
        assert!(dropped(vec![]));
        assert!(dropped(vec![flag.clone()]));
        // Not when the buffer is read in between (an mmad, or a branch that copies from it), a register of the
        // window or sizes is assigned in between, or the later copy writes other rows.
        assert!(!dropped(vec![mmad.clone()]));
        let read = Stmt::Copy {
            pipe: Pipe::Fix,
            src: buf_at(0, SExpr::Const(0), 16),
            dst: gm_at(1, SExpr::Const(0), 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(1),
        };
        assert!(!dropped(vec![Stmt::If { cond: var(1), then: vec![read] }]));
        assert!(!dropped(vec![Stmt::Set { var: SVar(1), value: SExpr::Const(4) }]));
        let mut body = vec![load_row(0, 0, var(1)), load_row(1, 0, SExpr::Const(2)), mmad];
        assert!(!drop_overwritten(&mut body));
        assert_eq!(body.len(), 3);
    }

    #[test]
    fn copies_into_a_buffer_only_transposed_mmads_read_are_dropped() {
        // After the mmad (whose `b` is the loop's transpose of x), a load of x's rows into the same L0B buffer
        // (the backward's `q` for the `dk` product, whose `b` copy forwarding already reads from GM).
        let late = load_row(0, 1, var(1));
        let into_b = |body: &[Stmt]| {
            body.iter().filter(|s| matches!(s, Stmt::Copy { dst, .. } if buf_of(dst) == Some(BufId(1)))).count()
        };
        let (p, l) = transposing(vec![], var(1), vec![late.clone()]);
        let out = forward(&p, &l, &l.cube);
        assert_eq!(into_b(&out), 0, "the load into L0B is dead: {out:#?}");
        let t = transposed_b(&p, &l, &out);
        assert_eq!((t.loops.len(), t.mmads.len()), (1, 1), "the loop is still converted");
        assert!(loop_source(&out).is_some(), "the loop stays (the compiled code skips it)");
        // Kept when something else reads the buffer.
        let read_b = Stmt::Copy {
            pipe: Pipe::Fix,
            src: buf_at(1, SExpr::Const(0), 16),
            dst: gm_at(1, SExpr::Const(0), 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(1),
        };
        let (p, l) = transposing(vec![], var(1), vec![late, read_b]);
        let out = forward(&p, &l, &l.cube);
        assert_eq!(into_b(&out), 1);
    }

    #[test]
    fn transposing_loops_feed_the_mmad_in_place() {
        let found = |(p, l): (TileProgram, Launch)| {
            let t = transposed_b(&p, &l, &l.cube);
            assert_eq!(t.loops.len(), t.mmads.len());
            t.mmads.values().next().map(|b| (b.src.clone(), b.lo.clone()))
        };
        let flag = Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::M, event: 0 };
        let (src, lo) = found(transposing(vec![flag.clone()], var(1), vec![])).expect("converted");
        assert_eq!((src.loc, src.row_stride, lo), (Loc::Gm(TensorId(0)), SExpr::Const(16), SExpr::Const(0)));
        // The loop variable reassigned in between does not matter (the source is read at the loop's start).
        let set_j = Stmt::Set { var: SVar(0), value: SExpr::Const(3) };
        assert!(found(transposing(vec![set_j], var(1), vec![])).is_some());
        // An mmad under a condition (the first k step's, as the tiler writes it).
        let (p, mut l) = transposing(vec![], var(1), vec![]);
        let mm = l.cube.pop().expect("the mmad");
        l.cube.push(Stmt::If { cond: var(1), then: vec![flag.clone(), mm] });
        assert!(found((p, l)).is_some());
        // Not when: the rows change in between; the mmad's n is not the loop's rows; the source is written in
        // between; the buffer is read in another way, or by an mmad with no loop of its own.
        let set_n = Stmt::Set { var: SVar(1), value: SExpr::Const(4) };
        let at1 = Region { loc: Loc::Buf { buf: BufId(1), slot: SExpr::Const(0) }, ..ub(1, 16) };
        let write_x = Stmt::Copy {
            pipe: Pipe::Fix,
            src: Region { loc: Loc::Buf { buf: BufId(2), slot: SExpr::Const(0) }, ..ub(2, 16) },
            dst: gm_at(0, SExpr::Const(0), 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(1),
        };
        let read_b = Stmt::Copy {
            pipe: Pipe::Fix,
            src: at1.clone(),
            dst: gm_at(1, SExpr::Const(0), 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(1),
        };
        let other_mmad = Stmt::Mmad {
            a: Region { loc: Loc::Buf { buf: BufId(0), slot: SExpr::Const(0) }, ..ub(0, 16) },
            b: at1,
            c: Region { loc: Loc::Buf { buf: BufId(2), slot: SExpr::Const(0) }, ..ub(2, 16) },
            m: SExpr::Const(4),
            k: SExpr::Const(16),
            n: SExpr::Const(8),
            accumulate: true,
        };
        // Rows of the source as columns of `b` (attention's Kᵀ): `for j in 0..8 { x row j -> column j }`,
        // `k` = the copy's 16 rows, `n` = the loop's 8 trips; the transpose is x's rows (row stride 16).
        let rows_form = |n: i64| {
            let (p, mut l) = transposing(vec![], var(1), vec![]);
            let j = var(0);
            l.cube[1] = Stmt::For {
                var: SVar(0),
                lo: SExpr::Const(0),
                hi: SExpr::Const(8),
                step: 1,
                body: vec![Stmt::Copy {
                    pipe: Pipe::Mte1,
                    src: gm_at(0, SExpr::Bin(SBin::Mul, Box::new(j.clone()), Box::new(SExpr::Const(16))), 1),
                    dst: Region { loc: Loc::Buf { buf: BufId(1), slot: SExpr::Const(0) }, offset: j, ..ub(1, 16) },
                    rows: SExpr::Const(16),
                    cols: SExpr::Const(1),
                }],
            };
            if let Some(Stmt::Mmad { k, n: nn, .. }) = l.cube.last_mut() {
                (*k, *nn) = (SExpr::Const(16), SExpr::Const(n));
            }
            (p, l)
        };
        let (src, _) = found(rows_form(8)).expect("converted");
        assert_eq!((src.loc, src.row_stride), (Loc::Gm(TensorId(0)), SExpr::Const(16)));
        assert!(found(rows_form(7)).is_none(), "n is not the loop's trip count");
        assert!(found(transposing(vec![set_n], var(1), vec![])).is_none());
        assert!(found(transposing(vec![], SExpr::Const(7), vec![])).is_none());
        assert!(found(transposing(vec![write_x], var(1), vec![])).is_none());
        assert!(found(transposing(vec![], var(1), vec![read_b])).is_none());
        assert!(found(transposing(vec![], var(1), vec![flag, other_mmad])).is_none());
    }

    #[test]
    fn column_copy_loops_read_gm() {
        // Columns of the copied window (j < 16 = its columns, n = its rows), or its rows (j < n, 16 long).
        for by_rows in [false, true] {
            let hi = if by_rows { var(1) } else { SExpr::Const(16) };
            let (p, l) =
                column_loop(vec![Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::Mte1, event: 0 }], 0, hi, by_rows);
            let out = forward(&p, &l, &l.cube);
            let src = loop_source(&out).expect("the loop");
            assert!(matches!(src.loc, Loc::Gm(TensorId(0))), "by rows {by_rows}: {out:#?}");
            let want_stride = if by_rows { SExpr::Const(1) } else { SExpr::Const(16) };
            assert_eq!(src.row_stride, want_stride);
            // The copy into L1 is no longer read: it is dropped.
            assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. })), 0, "{out:#?}");
        }
        // Not when the copy's rows change in between, the loop starts elsewhere, or runs to another bound.
        let cases = [
            (vec![Stmt::Set { var: SVar(1), value: SExpr::Const(4) }], 0, SExpr::Const(16)),
            (vec![], 1, SExpr::Const(16)),
            (vec![], 0, SExpr::Const(8)),
        ];
        for (mid, lo, hi) in cases {
            let (p, l) = column_loop(mid, lo, hi.clone(), false);
            let out = forward(&p, &l, &l.cube);
            let src = loop_source(&out).expect("the loop");
            assert!(matches!(src.loc, Loc::Buf { .. }), "lo {lo}, hi {hi:?}: {out:#?}");
        }
    }

    /// A cube launch: `x: f32[8, 16]` (t0) copied whole into L1 buffer 0, then `for k in klo..16 step 8 {
    /// kl = kl_value; mid; for j in 0..kl { column k + j of it -> row j of buffer 1 } }` (the tiler's L0
    /// k steps inside one L1 load; `k` is register 2, `kl` register 3).
    fn column_steps(klo: i64, kl_value: SExpr, mid: Vec<Stmt>) -> (TileProgram, Launch) {
        let (mut p, mut l) = column_loop(vec![], 0, SExpr::Const(16), false);
        let add = |a: SExpr, b: SExpr| SExpr::Bin(SBin::Add, Box::new(a), Box::new(b));
        let mul = |a: SExpr, k: i64| SExpr::Bin(SBin::Mul, Box::new(a), Box::new(SExpr::Const(k)));
        let pos = l.cube.iter().position(|s| matches!(s, Stmt::For { .. })).expect("the loop");
        let mut inner = vec![Stmt::Set { var: SVar(3), value: kl_value }];
        inner.extend(mid);
        inner.push(Stmt::For {
            var: SVar(0),
            lo: SExpr::Const(0),
            hi: var(3),
            step: 1,
            body: vec![Stmt::Copy {
                pipe: Pipe::Mte1,
                src: buf_at(0, add(var(2), var(0)), 16),
                dst: buf_at(1, mul(var(0), 16), 1),
                rows: var(1),
                cols: SExpr::Const(1),
            }],
        });
        l.cube[pos] = Stmt::For { var: SVar(2), lo: SExpr::Const(klo), hi: SExpr::Const(16), step: 8, body: inner };
        p.launches = vec![l.clone()];
        (p, l)
    }

    /// The source of the innermost loop's column copy.
    fn inner_source(body: &[Stmt]) -> Option<&Region> {
        body.iter().find_map(|s| match s {
            Stmt::For { body, .. } => match &body[..] {
                [Stmt::Copy { src, .. }] => Some(src),
                _ => inner_source(body),
            },
            _ => None,
        })
    }

    #[test]
    fn column_copy_loops_inside_the_copied_columns_read_gm() {
        let min = |a: SExpr, b: SExpr| SExpr::Bin(SBin::Min, Box::new(a), Box::new(b));
        let sub = |a: SExpr, b: SExpr| SExpr::Bin(SBin::Sub, Box::new(a), Box::new(b));
        // `kl = min(8, 16 - k)`: columns `k + j < 16`, inside the copy's 16.
        let kl = min(SExpr::Const(8), sub(SExpr::Const(16), var(2)));
        let (p, l) = column_steps(0, kl.clone(), vec![]);
        let out = forward(&p, &l, &l.cube);
        let src = inner_source(&out).expect("the loop");
        assert!(matches!(src.loc, Loc::Gm(TensorId(0))), "{out:#?}");
        assert_eq!(src.row_stride, SExpr::Const(16));
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. })), 0, "{out:#?}");
        // Not when the bound is not proven: `kl` without `- k`, `kl` or `k` assigned again before the loop, or
        // `k` possibly negative.
        let cases = [
            (0, min(SExpr::Const(8), SExpr::Const(16)), vec![]),
            (0, kl.clone(), vec![Stmt::Set { var: SVar(3), value: SExpr::Const(16) }]),
            (0, kl.clone(), vec![Stmt::Set { var: SVar(2), value: SExpr::Const(8) }]),
            (-8, kl.clone(), vec![]),
        ];
        for (klo, kl, mid) in cases {
            let (p, l) = column_steps(klo, kl.clone(), mid.clone());
            let out = forward(&p, &l, &l.cube);
            let src = inner_source(&out).expect("the loop");
            assert!(matches!(src.loc, Loc::Buf { .. }), "klo {klo}, kl {kl:?}, mid {mid:?}: {out:#?}");
        }
    }

    #[test]
    fn vector_reads_and_writes_go_to_gm() {
        let (p, l) = launch(vec![Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 0 }]);
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &is_copy), 0, "{out:#?}");
        let Some(Stmt::Vector { dst, expr: VExpr::Binary(_, a, _), .. }) = vector_stmt(&out) else { panic!() };
        assert!(matches!(dst.loc, Loc::Gm(TensorId(1))));
        assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Gm(TensorId(0)), .. })));
        assert!(referenced(&out).is_empty());
    }

    /// `c = a` between the copy into `a` and `b = c * 2` (a `let` that is a matmul's result, as attention
    /// backward's `dp`): level 3 makes it `c = x`, which is then a copy whose reader is forwarded too, so no
    /// copy and no identity statement is left and `b` reads `x`; with a conversion (`c` bf16) it stays.
    #[test]
    fn identity_statements_from_gm_are_forwarded_as_copies() {
        let run = |c_dtype: DType| {
            let (p, mut l) = launch(vec![]);
            let mut c = buf16("c", Mem::UB);
            c.dtype = c_dtype;
            l.buffers.push(c);
            let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
            let at = body.iter().position(|s| matches!(s, Stmt::Vector { .. })).unwrap();
            let Stmt::Vector { rows, expr: VExpr::Binary(_, a, _), .. } = &mut body[at] else { panic!() };
            **a = VExpr::Read(ub(2, 16));
            let rows = rows.clone();
            let id = Stmt::Vector { dst: ub(2, 16), rows, cols: SExpr::Const(16), expr: VExpr::Read(ub(0, 16)) };
            body.insert(at, id);
            forward(&p, &l, &l.vector)
        };
        let out = run(DType::F32);
        assert_eq!(count(&out, &is_copy), 0, "{out:#?}");
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Vector { .. })), 1, "{out:#?}");
        let Some(Stmt::Vector { expr: VExpr::Binary(_, a, _), .. }) = vector_stmt(&out) else { panic!() };
        assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Gm(TensorId(0)), .. })), "{out:#?}");
        assert!(referenced(&out).is_empty());

        let out = run(DType::BF16);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Vector { .. })), 2, "{out:#?}");
        let Some(Stmt::Vector { expr: VExpr::Binary(_, a, _), .. }) = vector_stmt(&out) else { panic!() };
        assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Buf { buf: BufId(2), .. }, .. })), "{out:#?}");
    }

    #[test]
    fn no_read_forwarding_past_a_register_change_or_a_buffer_write() {
        for mid in [
            Stmt::Set { var: SVar(1), value: SExpr::Const(1) },
            Stmt::Vector { dst: ub(0, 16), rows: SExpr::Const(1), cols: SExpr::Const(1), expr: VExpr::F32(0.0) },
            Stmt::If {
                cond: SExpr::Const(1),
                then: vec![Stmt::For { var: SVar(0), lo: SExpr::Const(0), hi: SExpr::Const(1), step: 1, body: vec![] }],
            },
        ] {
            let (p, l) = launch(vec![mid.clone()]);
            let out = forward(&p, &l, &l.vector);
            assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. })), 1, "{mid:?}");
            let Some(Stmt::Vector { expr: VExpr::Binary(_, a, _), .. }) = vector_stmt(&out) else { panic!() };
            assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Buf { .. }, .. })), "{mid:?}");
        }
    }

    #[test]
    fn no_read_forwarding_from_a_tensor_the_launch_writes() {
        let (p, mut l) = launch(vec![]);
        // The launch also writes x.
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        body.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: ub(1, 16),
            dst: gm_at(0, SExpr::Const(0), 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(16),
        });
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. })), 1);
        // `b` is read by the second copy out: its vector statement keeps writing it.
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 2);
    }

    #[test]
    fn no_read_forwarding_with_a_conversion_or_a_larger_statement() {
        let (mut p, l) = launch(vec![]);
        p.tensors[0].dtype = DType::BF16;
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. })), 1);

        let (p, mut l) = launch(vec![]);
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        for s in body.iter_mut() {
            if let Stmt::Vector { rows, .. } = s {
                *rows = SExpr::Const(2);
            }
        }
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. })), 1);
    }

    /// Two vector results copied into one tensor (the attention backward's two feeds into one workspace): each
    /// alone leaves the other's copy writing the tensor; together they are stored straight into it when their
    /// windows lie apart (the buffers' 32 elements at offsets 0 and `k`), not when they may overlap.
    #[test]
    fn two_vector_results_into_one_tensor_are_stored_together_when_apart() {
        let run = |k: i64| {
            let fill = |b: u32, v: f32| Stmt::Vector {
                dst: ub(b, 16),
                rows: SExpr::Const(2),
                cols: SExpr::Const(16),
                expr: VExpr::F32(v),
            };
            let out = |b: u32, at: i64| Stmt::Copy {
                pipe: Pipe::Mte3,
                src: ub(b, 16),
                dst: gm_at(1, SExpr::Bin(SBin::Add, Box::new(SExpr::Core), Box::new(SExpr::Const(at))), 16),
                rows: SExpr::Const(2),
                cols: SExpr::Const(16),
            };
            let (mut p, mut l) = launch(vec![]);
            l.vector = vec![fill(0, 1.0), fill(1, 2.0), out(0, 0), out(1, k)];
            p.launches = vec![l.clone()];
            let out = forward(&p, &l, &l.vector);
            let in_gm = count(&out, &|s| matches!(s, Stmt::Vector { dst: Region { loc: Loc::Gm(_), .. }, .. }));
            let copies = count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. }));
            (in_gm, copies)
        };
        assert_eq!(run(32), (2, 0));
        assert_eq!(run(40), (2, 0));
        assert_eq!(run(16), (0, 2));
        assert_eq!(run(-31), (0, 2));
    }

    #[test]
    fn no_write_forwarding_when_the_result_is_read_again_or_the_output_is_read() {
        // The result buffer is also read by another statement.
        let extra = Stmt::Reduce {
            op: kc_ir::graph::ReduceOp::Sum,
            axis: 1,
            src: ub(1, 16),
            dst: ub(0, 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(16),
            accumulate: false,
        };
        let (p, mut l) = launch(vec![]);
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        body.push(extra);
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 1);

        // The output tensor is read in the launch.
        let (p, mut l) = launch(vec![]);
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        body.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm_at(1, SExpr::Const(0), 16),
            dst: ub(0, 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(16),
        });
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 1);

        // The result copied to two tensors: kept (a statement stores to one place).
        let (mut p, mut l) = launch(vec![]);
        p.tensors.push(p.tensors[1].clone());
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        let Some(Stmt::Copy { rows, .. }) = body.last() else { panic!() };
        let copy2 = Stmt::Copy {
            pipe: Pipe::Mte3,
            src: ub(1, 16),
            dst: gm_at(2, SExpr::Const(0), 16),
            rows: rows.clone(),
            cols: SExpr::Const(16),
        };
        body.push(copy2);
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 2);

        // A bf16 buffer copied out to f32 (the copy widens a rounded value): kept.
        let (mut p, mut l) = launch(vec![]);
        l.buffers[1].dtype = DType::BF16;
        p.launches[0] = l.clone();
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 1);
    }

    /// A result read again by the next vector statement (of the same sizes) and copied out: the copy becomes
    /// an identity statement right after the result's statement (the fused loop stores it to GM too), and
    /// the result's buffer stays. Not for a bf16 buffer, nor when the next statement is not a vector
    /// statement of the same sizes.
    #[test]
    fn results_read_again_are_stored_beside_by_their_fused_loop() {
        let reread = |cols: i64| {
            let (p, mut l) = launch(vec![]);
            let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
            let at = body.iter().position(|s| matches!(s, Stmt::Vector { .. })).expect("the result's statement");
            let rows = var(1);
            let again = Stmt::Vector {
                dst: ub(0, 16),
                rows,
                cols: SExpr::Const(cols),
                expr: VExpr::Binary(BinOp::Add, Box::new(VExpr::Read(ub(1, 16))), Box::new(VExpr::F32(1.0))),
            };
            body.insert(at + 1, again);
            (p, l)
        };
        let (p, l) = reread(16);
        let out = forward(&p, &l, &l.vector);
        let Stmt::For { body, .. } = &out[0] else { panic!() };
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 0, "{out:#?}");
        let at = body
            .iter()
            .position(|s| matches!(s, Stmt::Vector { dst, .. } if *dst == ub(1, 16)))
            .expect("the result's statement stays");
        assert!(
            matches!(&body[at + 1], Stmt::Vector { dst: Region { loc: Loc::Gm(TensorId(1)), .. }, expr: VExpr::Read(r), .. } if *r == ub(1, 16)),
            "{out:#?}"
        );
        assert!(matches!(&body[at + 2], Stmt::Vector { dst, .. } if *dst == ub(0, 16)), "{out:#?}");

        // Another width: the two statements are not one fused loop.
        let (p, l) = reread(8);
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 1, "{out:#?}");

        // A bf16 result buffer: its copy stays.
        let (mut p, mut l) = reread(16);
        l.buffers[1].dtype = DType::BF16;
        p.launches[0] = l.clone();
        let out = forward(&p, &l, &l.vector);
        assert_eq!(count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. })), 1, "{out:#?}");
    }

    /// The launch of [`launch`] with a cube program: `cube` stands for the partner's statements (here only
    /// what they touch matters).
    fn mixed(mid: Vec<Stmt>, cube: Vec<Stmt>) -> (TileProgram, Launch) {
        let (mut p, mut l) = launch(mid);
        l.unit = Unit::Mixed;
        l.cube_cores = 1;
        l.vector_cores = 2;
        l.cube = cube;
        p.launches = vec![l.clone()];
        (p, l)
    }

    fn mte2_copies(body: &[Stmt]) -> usize {
        count(body, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte2, .. }))
    }

    #[test]
    fn reads_of_a_workspace_the_partner_writes_go_to_gm_until_a_cross_wait() {
        // The cube core writes x (a workspace it fills for the vector cores).
        let fill = Stmt::Copy {
            pipe: Pipe::Fix,
            src: ub(0, 16),
            dst: gm_at(0, SExpr::Const(0), 16),
            rows: SExpr::Const(2),
            cols: SExpr::Const(16),
        };
        let (p, l) = mixed(vec![Stmt::CrossSet { flag: 1 }], vec![fill.clone()]);
        let out = forward(&p, &l, &l.vector);
        assert_eq!(mte2_copies(&out), 0, "{out:#?}");
        let Some(Stmt::Vector { expr: VExpr::Binary(_, a, _), .. }) = vector_stmt(&out) else { panic!() };
        assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Gm(TensorId(0)), .. })), "{out:#?}");
        // A cross-core wait in between (directly or in a branch): the partner may write x there.
        for mid in
            [Stmt::CrossWait { flag: 0 }, Stmt::If { cond: SExpr::Const(1), then: vec![Stmt::CrossWait { flag: 0 }] }]
        {
            let (p, l) = mixed(vec![mid.clone()], vec![fill.clone()]);
            let out = forward(&p, &l, &l.vector);
            assert_eq!(mte2_copies(&out), 1, "{mid:?}");
            let Some(Stmt::Vector { expr: VExpr::Binary(_, a, _), .. }) = vector_stmt(&out) else { panic!() };
            assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Buf { .. }, .. })), "{mid:?}");
        }
        // Not for a tensor this program writes too (the other vector core may have written it).
        let (p, mut l) = mixed(vec![], vec![fill]);
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        body.push(Stmt::Copy {
            pipe: Pipe::Mte3,
            src: ub(1, 16),
            dst: gm_at(0, SExpr::Const(0), 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(16),
        });
        let out = forward(&p, &l, &l.vector);
        assert_eq!(mte2_copies(&out), 1);
    }

    #[test]
    fn results_the_partner_reads_are_stored_to_gm_unless_a_cross_wait_comes_first() {
        // The cube core reads y (a workspace the vector cores fill for it).
        let take = Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm_at(1, SExpr::Const(0), 16),
            dst: ub(0, 16),
            rows: SExpr::Const(2),
            cols: SExpr::Const(16),
        };
        let mte3 = |body: &[Stmt]| count(body, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Mte3, .. }));
        let (p, l) = mixed(vec![], vec![take.clone()]);
        let out = forward(&p, &l, &l.vector);
        assert_eq!(mte3(&out), 0, "{out:#?}");
        let Some(Stmt::Vector { dst, .. }) = vector_stmt(&out) else { panic!() };
        assert!(matches!(dst.loc, Loc::Gm(TensorId(1))));
        // A wait between the statement and its copy: the cube may read y there, before the copy.
        let (p, mut l) = mixed(vec![], vec![take]);
        let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
        let at = body.len() - 1;
        body.insert(at, Stmt::CrossWait { flag: 0 });
        let out = forward(&p, &l, &l.vector);
        assert_eq!(mte3(&out), 1, "{out:#?}");
    }

    #[test]
    fn a_copy_in_a_branch_reaches_later_branches_and_goes_when_overwritten() {
        let n = var(1);
        let cond = SExpr::Bin(SBin::Lt, Box::new(SExpr::Const(0)), Box::new(n.clone()));
        let copy = Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm_at(0, SExpr::Const(0), 16),
            dst: ub(0, 16),
            rows: n.clone(),
            cols: SExpr::Const(16),
        };
        let over = |e: VExpr, rows: SExpr| Stmt::Vector {
            dst: ub(0, 16),
            rows,
            cols: SExpr::Const(16),
            expr: VExpr::Binary(BinOp::Add, Box::new(e), Box::new(VExpr::F32(1.0))),
        };
        let read_a = VExpr::Read(ub(0, 16));
        let build = |mid: Vec<Stmt>, second: Stmt| {
            let (p, mut l) = launch(vec![]);
            let Stmt::For { body, .. } = &mut l.vector[0] else { panic!() };
            // Set n; if 0 < n { copy x -> a }; mid; second; b = a * 2; copy b -> y
            body[1] = Stmt::If { cond: cond.clone(), then: vec![copy.clone()] };
            let mut tail = mid;
            tail.push(second);
            for (k, s) in tail.into_iter().enumerate() {
                body.insert(2 + k, s);
            }
            (p, l)
        };
        let overwrite_source = |out: &[Stmt]| {
            let mut srcs = Vec::new();
            fn find(body: &[Stmt], out: &mut Vec<bool>) {
                for s in body {
                    match s {
                        Stmt::Vector { dst, expr: VExpr::Binary(BinOp::Add, a, _), .. } if buf_of(dst).is_some() => {
                            out.push(matches!(&**a, VExpr::Read(Region { loc: Loc::Gm(_), .. })));
                        }
                        Stmt::For { body, .. } | Stmt::If { then: body, .. } => find(body, out),
                        _ => {}
                    }
                }
            }
            find(out, &mut srcs);
            srcs
        };
        // Overwritten in a later `if 0 < n`: it reads x, and the copy goes; `b = a * 2` still reads `a`.
        let guarded = Stmt::If { cond: cond.clone(), then: vec![over(read_a.clone(), n.clone())] };
        let (p, l) = build(vec![Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::V, event: 0 }], guarded.clone());
        let out = forward(&p, &l, &l.vector);
        assert_eq!(mte2_copies(&out), 0, "{out:#?}");
        assert_eq!(overwrite_source(&out), vec![true], "{out:#?}");
        let Some(Stmt::For { body, .. }) = out.first() else { panic!() };
        let mul = body.iter().find(|s| matches!(s, Stmt::Vector { expr: VExpr::Binary(BinOp::Mul, ..), .. }));
        let Some(Stmt::Vector { expr: VExpr::Binary(_, a, _), .. }) = mul else { panic!("{out:#?}") };
        assert!(matches!(&**a, VExpr::Read(Region { loc: Loc::Buf { .. }, .. })), "{out:#?}");
        // Kept: `n` changes in between; the second branch has another condition; the overwrite covers fewer
        // rows, or reads `a` through a broadcast; a read of `a` that is not forwarded comes first.
        let other_cond = Stmt::If { cond: SExpr::Const(1), then: vec![over(read_a.clone(), n.clone())] };
        let fewer = Stmt::If { cond: cond.clone(), then: vec![over(read_a.clone(), SExpr::Const(1))] };
        let bcast = Stmt::If { cond: cond.clone(), then: vec![over(VExpr::ReadRow(ub(0, 16)), n.clone())] };
        let unforwarded = Stmt::Vector {
            dst: ub(1, 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(16),
            expr: VExpr::Read(ub(0, 16)),
        };
        let cases = [
            (vec![Stmt::Set { var: SVar(1), value: SExpr::Const(1) }], guarded.clone(), false),
            (vec![], other_cond, false),
            (vec![], fewer, false),
            (vec![], bcast, false),
            (vec![unforwarded], guarded, true),
        ];
        for (k, (mid, second, forwarded)) in cases.into_iter().enumerate() {
            let (p, l) = build(mid, second);
            let out = forward(&p, &l, &l.vector);
            assert_eq!(mte2_copies(&out), 1, "case {k}: {out:#?}");
            assert_eq!(overwrite_source(&out), vec![forwarded], "case {k}: {out:#?}");
        }
    }

    /// A mixed launch whose cube program computes `c = x·x` into buffer 0 (standing for L0C), `mid` after
    /// it, then copies the result to y (t1); the vector program reads y when `read_back`.
    fn cube_store(mid: Vec<Stmt>, read_back: bool) -> (TileProgram, Launch) {
        let mm = |acc: bool| Stmt::Mmad {
            a: gm_at(0, SExpr::Const(0), 16),
            b: gm_at(0, SExpr::Const(0), 16),
            c: ub(0, 16),
            m: SExpr::Const(2),
            k: SExpr::Const(16),
            n: SExpr::Const(16),
            accumulate: acc,
        };
        let mut cube = vec![mm(false)];
        cube.extend(mid.into_iter().map(|s| match s {
            // A placeholder for the accumulating mmad.
            Stmt::Barrier { .. } => mm(true),
            Stmt::If { cond, then } if matches!(then[..], [Stmt::Barrier { .. }]) => {
                Stmt::If { cond, then: vec![mm(true)] }
            }
            // A loop: its placeholders too.
            Stmt::For { var, lo, hi, step, body } => Stmt::For {
                var,
                lo,
                hi,
                step,
                body: body.into_iter().map(|s| if matches!(s, Stmt::Barrier { .. }) { mm(true) } else { s }).collect(),
            },
            s => s,
        }));
        cube.push(Stmt::Copy {
            pipe: Pipe::Fix,
            src: ub(0, 16),
            dst: gm_at(1, SExpr::Const(0), 16),
            rows: SExpr::Const(2),
            cols: SExpr::Const(16),
        });
        let (mut p, mut l) = launch(vec![]);
        l.unit = Unit::Mixed;
        l.cube_cores = 1;
        l.vector_cores = 2;
        l.cube = cube;
        l.vector = if read_back {
            vec![Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_at(1, SExpr::Const(0), 16),
                dst: ub(1, 16),
                rows: SExpr::Const(2),
                cols: SExpr::Const(16),
            }]
        } else {
            vec![]
        };
        p.launches = vec![l.clone()];
        (p, l)
    }

    /// Two results copied into one tensor (the attention backward's score blocks into one workspace): each
    /// chain alone leaves the other's copy writing the tensor; together they accumulate in GM when their
    /// windows lie apart (the buffers' 32 elements at offsets 0 and `k`), not when they may overlap.
    #[test]
    fn two_results_into_one_tensor_go_to_gm_together_when_apart() {
        let run = |k: i64| {
            let mm = |b: u32| Stmt::Mmad {
                a: gm_at(0, SExpr::Const(0), 16),
                b: gm_at(0, SExpr::Const(0), 16),
                c: ub(b, 16),
                m: SExpr::Const(2),
                k: SExpr::Const(16),
                n: SExpr::Const(16),
                accumulate: false,
            };
            let out = |b: u32, at: i64| Stmt::Copy {
                pipe: Pipe::Fix,
                src: ub(b, 16),
                dst: gm_at(1, SExpr::Bin(SBin::Add, Box::new(SExpr::Core), Box::new(SExpr::Const(at))), 16),
                rows: SExpr::Const(2),
                cols: SExpr::Const(16),
            };
            let (mut p, mut l) = launch(vec![]);
            l.unit = Unit::Mixed;
            l.cube_cores = 1;
            l.vector_cores = 2;
            l.cube = vec![mm(0), mm(1), out(0, 0), out(1, k)];
            l.vector = vec![];
            p.launches = vec![l.clone()];
            let out = forward(&p, &l, &l.cube);
            let in_gm = count(&out, &|s| matches!(s, Stmt::Mmad { c: Region { loc: Loc::Gm(_), .. }, .. }));
            let copies = count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Fix, .. }));
            (in_gm, copies)
        };
        assert_eq!(run(32), (2, 0));
        assert_eq!(run(64), (2, 0));
        assert_eq!(run(16), (0, 2));
        assert_eq!(run(-16), (0, 2));
    }

    #[test]
    fn cube_results_accumulate_in_gm_when_nothing_else_reads_them() {
        let fix = |body: &[Stmt]| count(body, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Fix, .. }));
        let in_gm = |body: &[Stmt]| count(body, &|s| matches!(s, Stmt::Mmad { c: Region { loc: Loc::Gm(_), .. }, .. }));
        let barrier = || Stmt::Barrier { pipe: Pipe::M };
        let flag = Stmt::SetFlag { from: Pipe::M, to: Pipe::Fix, event: 0 };
        let wait = Stmt::CrossWait { flag: 0 };
        let k_loop =
            |var: SVar, body: Vec<Stmt>| Stmt::For { var, lo: SExpr::Const(0), hi: SExpr::Const(4), step: 1, body };
        let read_y = || Stmt::Copy {
            pipe: Pipe::Fix,
            src: ub(0, 16),
            dst: ub(1, 16),
            rows: SExpr::Const(1),
            cols: SExpr::Const(16),
        };
        // (mid, the vector cores read y, stored in GM, mmads writing GM)
        let cases = [
            (vec![flag.clone()], true, true, 1),
            // An accumulating mmad directly and in a branch: the chain accumulates in GM.
            (vec![barrier(), Stmt::If { cond: var(1), then: vec![barrier()] }], true, true, 3),
            // A cross-core wait in between: the partner may read y there (but not if it never reads y).
            (vec![wait.clone()], true, false, 0),
            (vec![wait.clone()], false, true, 1),
            // A loop of k steps (the grouped matmul's item on the host): its accumulating mmads are links too,
            // beside other statements that leave the window alone; not across a cross-core wait in the loop,
            // nor when the loop reads the buffer back.
            (
                vec![k_loop(SVar(2), vec![flag.clone(), barrier(), Stmt::Set { var: SVar(3), value: var(1) }])],
                true,
                true,
                2,
            ),
            (vec![barrier(), k_loop(SVar(2), vec![barrier()]), flag.clone()], true, true, 3),
            (vec![k_loop(SVar(2), vec![barrier(), wait.clone()])], true, false, 0),
            (vec![k_loop(SVar(2), vec![barrier(), read_y()])], true, false, 0),
            // Another read of the buffer, or a register of the windows assigned: kept.
            (
                vec![Stmt::Copy {
                    pipe: Pipe::Fix,
                    src: ub(0, 16),
                    dst: ub(1, 16),
                    rows: SExpr::Const(1),
                    cols: SExpr::Const(16),
                }],
                true,
                false,
                0,
            ),
            (
                vec![Stmt::Vector {
                    dst: ub(0, 16),
                    rows: SExpr::Const(1),
                    cols: SExpr::Const(1),
                    expr: VExpr::F32(0.0),
                }],
                true,
                false,
                0,
            ),
        ];
        for (k, (mid, read_back, stored, mmads)) in cases.into_iter().enumerate() {
            let (p, l) = cube_store(mid, read_back);
            let out = forward(&p, &l, &l.cube);
            assert_eq!(fix(&out), usize::from(!stored), "case {k}: {out:#?}");
            assert_eq!(in_gm(&out), mmads, "case {k}: {out:#?}");
        }
        // The cube program reads y itself: kept.
        let (p, mut l) = cube_store(vec![], false);
        l.cube.push(Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm_at(1, SExpr::Const(0), 16),
            dst: ub(1, 16),
            rows: SExpr::Const(2),
            cols: SExpr::Const(16),
        });
        let out = forward(&p, &l, &l.cube);
        assert_eq!(fix(&out), 1, "{out:#?}");
    }

    /// The matmul template's nest of k steps, `for k0 in lo..hi step 16 { klen1 = min(16, 40 - k0); for k2 in
    /// 0..klen1 step 8 { if k0 + k2 == 0 { W = x·x } if 0 < k0 + k2 { W += x·x } } }`, before the copy of `W`
    /// to y: the whole chain accumulates in GM when the nest's first mmad surely is the `=` one (the walk of
    /// its first iteration), not when an accumulating one may come first, when the nest may not run, when a
    /// condition or bound the walk needs is unknown, or when the nest disturbs the chain.
    #[test]
    fn matmul_nests_accumulate_in_gm_when_their_first_mmad_starts_the_chain() {
        let (k0, k2, klen1) = (SVar(2), SVar(3), SVar(4));
        let c = SExpr::Const;
        let bin = |op, a: SExpr, b: SExpr| SExpr::Bin(op, Box::new(a), Box::new(b));
        let sum = || bin(SBin::Add, SExpr::Var(k0), SExpr::Var(k2));
        let mm = |acc: bool| Stmt::Mmad {
            a: gm_at(0, c(0), 16),
            b: gm_at(0, c(0), 16),
            c: ub(0, 16),
            m: c(2),
            k: SExpr::Var(SVar(5)),
            n: c(16),
            accumulate: acc,
        };
        // (the outer loop's bounds, klen1's value, the two branches' conditions, extra statements in the inner body)
        struct Nest {
            lo: SExpr,
            hi: SExpr,
            klen1: SExpr,
            first: SExpr,
            rest: SExpr,
            swap: bool,
            extra: Vec<Stmt>,
        }
        let standard = || Nest {
            lo: c(0),
            hi: c(40),
            klen1: bin(SBin::Min, c(16), bin(SBin::Sub, c(40), SExpr::Var(k0))),
            first: bin(SBin::Eq, sum(), c(0)),
            rest: bin(SBin::Lt, c(0), sum()),
            swap: false,
            extra: vec![],
        };
        let run = |n: Nest| {
            let (p, mut l) = cube_store(vec![], false);
            let mut inner = vec![
                Stmt::Set {
                    var: SVar(5),
                    value: bin(SBin::Min, c(8), bin(SBin::Sub, SExpr::Var(klen1), SExpr::Var(k2))),
                },
                Stmt::SetFlag { from: Pipe::Mte1, to: Pipe::M, event: 0 },
            ];
            let mut branches = vec![
                Stmt::If { cond: n.first, then: vec![mm(false)] },
                Stmt::If { cond: n.rest, then: vec![mm(true)] },
            ];
            if n.swap {
                branches.reverse();
            }
            inner.extend(branches);
            inner.extend(n.extra);
            let nest = Stmt::For {
                var: k0,
                lo: n.lo,
                hi: n.hi,
                step: 16,
                body: vec![
                    Stmt::Set { var: klen1, value: n.klen1 },
                    Stmt::For { var: k2, lo: c(0), hi: SExpr::Var(klen1), step: 8, body: inner },
                ],
            };
            // cube_store's program: `W = x·x`, then the copy; the nest in place of the mmad.
            assert!(matches!(l.cube[0], Stmt::Mmad { accumulate: false, .. }));
            l.cube[0] = nest;
            let out = forward(&p, &l, &l.cube);
            let fix = count(&out, &|s| matches!(s, Stmt::Copy { pipe: Pipe::Fix, .. }));
            let in_gm = count(&out, &|s| matches!(s, Stmt::Mmad { c: Region { loc: Loc::Gm(_), .. }, .. }));
            (fix, in_gm)
        };
        assert_eq!(run(standard()), (0, 2), "the template's nest");
        // `W += ..` tested first but not run first: still the start first.
        assert_eq!(run(Nest { swap: true, ..standard() }), (0, 2));
        // A barrier, a flag and a register of neither window in the nest: no matter.
        let extra = vec![Stmt::Barrier { pipe: Pipe::M }, Stmt::Set { var: SVar(6), value: c(1) }];
        assert_eq!(run(Nest { extra, ..standard() }), (0, 2));
        let refused = [
            // The first iteration is k0 = 8: the accumulating mmad runs first.
            Nest { lo: c(8), ..standard() },
            // An accumulating mmad that runs in the first iteration, before the start.
            Nest { rest: bin(SBin::Le, c(0), sum()), swap: true, ..standard() },
            // The nest may not run (an unknown bound), or does not run.
            Nest { hi: var(1), ..standard() },
            Nest { hi: c(0), ..standard() },
            // An inner bound or a condition the walk cannot evaluate.
            Nest { klen1: bin(SBin::Min, c(16), var(1)), ..standard() },
            Nest { first: bin(SBin::Eq, var(1), c(0)), ..standard() },
            // The inner loop does not run in the first iteration.
            Nest { klen1: bin(SBin::Min, c(16), bin(SBin::Sub, SExpr::Var(k0), c(1))), ..standard() },
            // The nest reads the buffer, or writes it otherwise than by the chain's mmads.
            Nest {
                extra: vec![Stmt::Copy { pipe: Pipe::Fix, src: ub(0, 16), dst: ub(1, 16), rows: c(1), cols: c(16) }],
                ..standard()
            },
            Nest {
                extra: vec![Stmt::Vector { dst: ub(0, 16), rows: c(1), cols: c(1), expr: VExpr::F32(0.0) }],
                ..standard()
            },
        ];
        for (i, n) in refused.into_iter().enumerate() {
            assert_eq!(run(n), (1, 0), "case {i}");
        }
    }

    /// Level 2 across another slot's load and into a later branch of the same condition: `x` (t0) rows 0..n
    /// into L1 slot 0, under `if 0 < n` rows 8.. into slot 1 (`slot1_dst` its slot), then an mmad reading slot
    /// 0 and, under `if cond2`, one reading slot 1 (attention's two chunks of V and P).
    #[test]
    fn l1_forwarding_passes_other_slots_and_reaches_branches_of_the_same_condition() {
        let run = |slot1_dst: i64, cond2: SExpr| {
            let (mut p, mut l) = launch(vec![]);
            let n = var(1);
            let live = SExpr::Bin(SBin::Lt, Box::new(SExpr::Const(0)), Box::new(n.clone()));
            let slot = |k: i64| Region {
                loc: Loc::Buf { buf: BufId(0), slot: SExpr::Const(k) },
                offset: SExpr::Const(0),
                row_stride: SExpr::Const(16),
            };
            let load = |row: i64, k: i64| Stmt::Copy {
                pipe: Pipe::Mte2,
                src: gm_at(0, SExpr::Const(16 * row), 16),
                dst: slot(k),
                rows: n.clone(),
                cols: SExpr::Const(16),
            };
            let mm = |k: i64, accumulate: bool| Stmt::Mmad {
                a: slot(k),
                b: gm_at(0, SExpr::Const(0), 16),
                c: buf_at(1, SExpr::Const(0), 16),
                m: n.clone(),
                k: SExpr::Const(16),
                n: SExpr::Const(16),
                accumulate,
            };
            l.cube = vec![
                Stmt::Set { var: SVar(1), value: SExpr::Const(8) },
                load(0, 0),
                Stmt::If { cond: live.clone(), then: vec![load(8, slot1_dst)] },
                mm(0, false),
                Stmt::If { cond: cond2, then: vec![mm(1, true)] },
                Stmt::Copy {
                    pipe: Pipe::Fix,
                    src: buf_at(1, SExpr::Const(0), 16),
                    dst: gm_at(1, SExpr::Const(0), 16),
                    rows: SExpr::Const(8),
                    cols: SExpr::Const(16),
                },
            ];
            let mut l1 = buf16("l1", Mem::L1);
            l1.slots = 2;
            l.unit = Unit::Cube;
            l.buffers = vec![l1, buf16("c", Mem::L0C)];
            l.vector = vec![];
            p.launches = vec![l.clone()];
            let out = forward(&p, &l, &l.cube);
            let mut a_rows = Vec::new();
            #[allow(clippy::items_after_statements)]
            fn collect(body: &[Stmt], out: &mut Vec<Option<SExpr>>) {
                for s in body {
                    match s {
                        Stmt::Mmad { a, .. } => out.push(match &a.loc {
                            Loc::Gm(_) => Some(a.offset.clone()),
                            Loc::Buf { .. } => None,
                        }),
                        Stmt::If { then, .. } => collect(then, out),
                        _ => {}
                    }
                }
            }
            collect(&out, &mut a_rows);
            let add = |o: i64| Some(SExpr::Bin(SBin::Add, Box::new(SExpr::Const(o)), Box::new(SExpr::Const(0))));
            let loads = count(&out, &|s| matches!(s, Stmt::Copy { dst, .. } if buf_of(dst) == Some(BufId(0))));
            (a_rows.into_iter().map(|r| r == add(0) || r == add(128)).collect::<Vec<_>>(), loads)
        };
        let live = SExpr::Bin(SBin::Lt, Box::new(SExpr::Const(0)), Box::new(var(1)));
        // Both read GM, and both loads go.
        assert_eq!(run(1, live), (vec![true, true], 0));
        // Another condition: the second chunk's mmad keeps its slot (so the buffer is still read: both loads
        // stay).
        assert_eq!(run(1, var(0)), (vec![true, false], 2));
        // The branch loads slot 0 again: the first mmad keeps its slot.
        assert!(!run(0, var(0)).0[0]);
    }

    #[test]
    fn l1_windows_of_a_workspace_the_partner_writes_read_gm_until_a_cross_wait() {
        for (mid, forwarded) in [(vec![], true), (vec![Stmt::CrossWait { flag: 1 }], false)] {
            let (mut p, mut l) = column_loop(mid, 0, SExpr::Const(16), false);
            // The vector cores write x (a workspace they fill for the cube core).
            l.unit = Unit::Mixed;
            l.cube_cores = 1;
            l.vector_cores = 2;
            l.vector = vec![Stmt::Copy {
                pipe: Pipe::Mte3,
                src: ub(0, 16),
                dst: gm_at(0, SExpr::Const(0), 16),
                rows: SExpr::Const(2),
                cols: SExpr::Const(16),
            }];
            p.launches = vec![l.clone()];
            let out = forward(&p, &l, &l.cube);
            let src = loop_source(&out).expect("the loop");
            assert_eq!(matches!(src.loc, Loc::Gm(TensorId(0))), forwarded, "{out:#?}");
            assert_eq!(mte2_copies(&out), usize::from(!forwarded), "{out:#?}");
        }
    }

    #[test]
    fn softmax_reads_and_writes_gm() {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/softmax.ker")).unwrap();
        let mut sm = kc_frontend::SourceMap::new();
        let id = sm.add("softmax.ker", src);
        let (prog, diags) = kc_frontend::compile(&mut sm, id, &kc_frontend::NoLoader);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        let g = &prog.kernels[0];
        let dims = [("N".to_string(), 13), ("D".to_string(), 200)].into_iter().collect();
        let b = kc_ir::launch::bind_dims(g, &dims).unwrap();
        let target = kc_ir::target::Target::builtin("host").unwrap();
        let (_, tp, _, _) = kc_ir::passes::tile::fuse_and_tile(g, &b, &target).unwrap();
        for l in &tp.launches {
            let before = count(&l.vector, &is_copy);
            assert!(before > 0);
            let out = forward(&tp, l, &l.vector);
            // x is read and y written in place: no copies and no UB windows of them.
            assert_eq!(count(&out, &is_copy), 0, "{}", before);
            let gm_reads_of_x = count(&out, &|s| {
                let mut r = BTreeSet::new();
                gm_reads(std::slice::from_ref(s), &mut r);
                matches!(s, Stmt::Vector { .. } | Stmt::Reduce { .. }) && r.contains(&TensorId(0))
            });
            assert!(gm_reads_of_x > 0);
        }
    }
}
