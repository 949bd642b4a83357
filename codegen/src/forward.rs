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
//!    the copy's windows: the operand reads GM at the corresponding offset.
//! 3. A buffer whose every read was forwarded is no longer read: the copies into it are dropped.
//!
//! The result is the same (the same elements reach the mmad); only the host's work changes.

use kc_ir::dtype::DType;
use kc_ir::tile::{BufId, Launch, LibOp, Loc, Region, SExpr, SVar, Stmt, TensorId, TileProgram, VExpr};
use std::collections::BTreeSet;

/// The program `body` of `launch` with its copies forwarded (for the kind of core whose buffers these are).
pub fn forward(prog: &TileProgram, launch: &Launch, body: &[Stmt]) -> Vec<Stmt> {
    let mut out = body.to_vec();
    let gm_written = gm_writes(&launch.cube).union(&gm_writes(&launch.vector)).copied().collect::<BTreeSet<_>>();
    let dt = Dtypes { prog, launch };
    l0(&mut out, &dt);
    l1(&mut out, &gm_written, &dt);
    // Buffers no longer read: drop the copies into them (which may leave their sources unread in turn).
    loop {
        let mut read = BTreeSet::new();
        reads_of(&out, &mut read);
        if !drop_dead(&mut out, &read) {
            return out;
        }
    }
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
fn writes(s: &Stmt, bufs: &mut BTreeSet<BufId>, gm: &mut BTreeSet<TensorId>) {
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

/// The GM tensors some statement of the launch (cube or vector program) writes.
pub fn gm_written(launch: &Launch) -> BTreeSet<TensorId> {
    gm_writes(&launch.cube).union(&gm_writes(&launch.vector)).copied().collect()
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
        VExpr::Unary(_, a) | VExpr::Cast(_, a) => vexpr_reads(a, out),
        VExpr::Binary(_, a, b) => {
            vexpr_reads(a, out);
            vexpr_reads(b, out);
        }
        VExpr::Select(c, a, b) => {
            vexpr_reads(c, out);
            vexpr_reads(a, out);
            vexpr_reads(b, out);
        }
        _ => {}
    }
}

fn sexpr_reads(e: &SExpr, out: &mut BTreeSet<BufId>) {
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
fn region_sexpr_reads(s: &Stmt, out: &mut BTreeSet<BufId>) {
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
fn reads_of(body: &[Stmt], out: &mut BTreeSet<BufId>) {
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
        let (mut bufs, mut gm) = (BTreeSet::new(), BTreeSet::new());
        writes(s, &mut bufs, &mut gm);
        let mut set = BTreeSet::new();
        sets(s, &mut set);
        bufs.contains(&self.x)
            || !bufs.is_disjoint(self.src_bufs)
            || !gm.is_disjoint(self.src_gm)
            || !set.is_disjoint(self.vars)
    }
}

// ----- level 2: L1 slots filled from read-only GM -----

fn l1(body: &mut [Stmt], gm_written: &BTreeSet<TensorId>, dt: &Dtypes<'_>) {
    for i in 0..body.len() {
        if let Stmt::For { body: b, .. } | Stmt::If { then: b, .. } = &mut body[i] {
            l1(b, gm_written, dt);
        }
        let Stmt::Copy { src, dst, .. } = &body[i] else { continue };
        let (Loc::Gm(t), Some(y)) = (&src.loc, buf_of(dst)) else { continue };
        if gm_written.contains(t) || dst.offset != SExpr::Const(0) || !dt.same(src, dst) {
            continue;
        }
        let (src, dst) = (src.clone(), dst.clone());
        let Loc::Buf { slot, .. } = &dst.loc else { continue };
        let slot = slot.clone();
        let mut vars = BTreeSet::new();
        region_vars(&src, &mut vars);
        region_vars(&dst, &mut vars);
        let l = L1 { y, slot: &slot, stride: &dst.row_stride, src: &src, vars: &vars };
        for s in body[i + 1..].iter_mut() {
            if !l.visit(s) {
                break;
            }
        }
    }
}

struct L1<'a> {
    y: BufId,
    slot: &'a SExpr,
    stride: &'a SExpr,
    src: &'a Region,
    vars: &'a BTreeSet<SVar>,
}

impl L1<'_> {
    fn visit(&self, s: &mut Stmt) -> bool {
        match s {
            Stmt::For { lo, hi, body, var, .. } => {
                let mut r = BTreeSet::new();
                sexpr_reads(lo, &mut r);
                sexpr_reads(hi, &mut r);
                if r.contains(&self.y) || self.vars.contains(var) {
                    return false;
                }
                // The loop body runs many times: it must not write the slot or assign the windows' registers
                // anywhere, before or after the mmads.
                if body.iter().any(|s| self.breaks(s)) {
                    return false;
                }
                for t in body.iter_mut() {
                    self.rewrite(t);
                }
                true
            }
            Stmt::If { cond, then } => {
                let mut r = BTreeSet::new();
                sexpr_reads(cond, &mut r);
                if r.contains(&self.y) || then.iter().any(|s| self.breaks(s)) {
                    return false;
                }
                for t in then.iter_mut() {
                    self.rewrite(t);
                }
                true
            }
            s => {
                if self.breaks(s) {
                    return false;
                }
                self.rewrite(s);
                true
            }
        }
    }

    fn breaks(&self, s: &Stmt) -> bool {
        let (mut bufs, mut gm) = (BTreeSet::new(), BTreeSet::new());
        writes(s, &mut bufs, &mut gm);
        let mut set = BTreeSet::new();
        sets(s, &mut set);
        bufs.contains(&self.y) || !set.is_disjoint(self.vars)
    }

    /// Rewrites the mmad operands that read the slot.
    fn rewrite(&self, s: &mut Stmt) {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => body.iter_mut().for_each(|t| self.rewrite(t)),
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
