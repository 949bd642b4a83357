//! The static report of a tiled kernel (`kc build --emit report`): for each fusion group, its launches
//! (unit, grid, buffers per memory) and what they move and compute; for the kernel, the totals and the
//! whole tensors that groups hand to each other through global memory.
//!
//! The figures are counted, not estimated: [`count`] walks every core's program the way the simulator runs
//! it (every loop iteration, every statement), evaluating the scalar unit's arithmetic but no data, and adds
//! up what each statement moves or computes:
//! - `gm_bytes_read` / `gm_bytes_written`: bytes of every copy or gather whose source / destination is in
//!   global memory (parameters, outputs, intermediates and workspaces alike: all of it is GM traffic);
//!   `gm_workspace_read` / `gm_workspace_written` are the part of it that is workspace traffic. Reads of
//!   scalar kernel arguments (rank-0 parameters, which each core loads) are counted apart, as
//!   `scalar_args_read`: on the hardware they come with the kernel's arguments;
//! - `cube_flops`: 2 × the multiply-accumulates of every `mmad` (`2·m·k·n`);
//! - `vector_elements`: the elements written by vector statements, reductions and library operations;
//! - `gm_workspace_bytes`: the size of the workspaces (per-core bytes times the cores of the largest launch
//!   that uses each), the bounded hand-off areas;
//! - `gm_intermediates`: the tensors of role `Intermediate` (a group's stored value that another group reads).
//!
//! Control that depends on data (a scalar read of an `i32` buffer, such as a grouped matmul's expert
//! offsets) is followed through the integer tensors the caller provides ([`IntData`], e.g. the seeded random
//! inputs `kc run --random` would use): a copy from such a tensor into a buffer carries the values along.
//! A scalar read of an `f32` buffer (the sign of a float scalar argument, which the attention template
//! branches on) follows the same way; a float scalar argument the caller does not give reads as 1.0.
//! A read the walk cannot follow is an error, as is a walk longer than [`MAX_STEPS`] statements.

use crate::diag::{Code, Diagnostic};
use crate::dtype::DType;
use crate::graph::Graph;
use crate::passes::fuse::Fusion;
use crate::target::Target;
use crate::tile::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The most statements [`count`] walks (over all cores and launches).
pub const MAX_STEPS: u64 = 400_000_000;

/// Integer contents of GM tensors that control may depend on, by tensor.
pub type IntData = BTreeMap<TensorId, Vec<i64>>;

/// What one launch moves and computes, summed over its cores.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub gm_bytes_read: u64,
    pub gm_bytes_written: u64,
    pub gm_workspace_read: u64,
    pub gm_workspace_written: u64,
    /// Bytes of scalar kernel arguments (rank-0 parameters) read by the cores: not part of
    /// `gm_bytes_read` (on the hardware they arrive with the kernel's arguments, not through a copy).
    pub scalar_args_read: u64,
    pub cube_flops: u64,
    pub vector_elements: u64,
    /// Bytes moved by each copy engine (GM and on-chip copies alike).
    pub pipe_bytes: BTreeMap<Pipe, u64>,
    /// Statements executed, per pipe.
    pub stmts: BTreeMap<Pipe, u64>,
}

impl Counts {
    pub(crate) fn add(&mut self, o: &Counts) {
        self.gm_bytes_read += o.gm_bytes_read;
        self.gm_bytes_written += o.gm_bytes_written;
        self.gm_workspace_read += o.gm_workspace_read;
        self.gm_workspace_written += o.gm_workspace_written;
        self.scalar_args_read += o.scalar_args_read;
        self.cube_flops += o.cube_flops;
        self.vector_elements += o.vector_elements;
        for (p, b) in &o.pipe_bytes {
            *self.pipe_bytes.entry(*p).or_default() += b;
        }
        for (p, b) in &o.stmts {
            *self.stmts.entry(*p).or_default() += b;
        }
    }
}

/// Walks one core's program without data: evaluates the scalar unit's arithmetic, follows integer values
/// into buffers (for data-dependent control), and counts what each statement moves and computes. Shared
/// with the cycle model ([`crate::cost`]), which drives it statement by statement.
pub(crate) struct Walker<'a> {
    pub(crate) prog: &'a TileProgram,
    pub(crate) launch: &'a Launch,
    pub(crate) ints: &'a IntData,
    pub(crate) core: i64,
    pub(crate) vars: Vec<Option<i64>>,
    /// Known `i32` contents of buffer slots: (buffer, slot) -> flat element -> value.
    pub(crate) known: BTreeMap<(u32, i64), BTreeMap<i64, i64>>,
    pub(crate) counts: Counts,
    pub(crate) steps: &'a std::cell::Cell<u64>,
}

fn err(msg: String) -> Diagnostic {
    Diagnostic::error(Code::Internal, crate::span::Span::default(), msg)
}

impl<'a> Walker<'a> {
    pub(crate) fn new(
        prog: &'a TileProgram,
        launch: &'a Launch,
        ints: &'a IntData,
        core: i64,
        steps: &'a std::cell::Cell<u64>,
    ) -> Self {
        Walker {
            prog,
            launch,
            ints,
            core,
            vars: vec![None; launch.svars.len()],
            known: BTreeMap::new(),
            counts: Counts::default(),
            steps,
        }
    }

    pub(crate) fn eval(&self, e: &SExpr) -> Result<i64, Diagnostic> {
        Ok(match e {
            SExpr::Const(v) => *v,
            SExpr::Var(v) => self.vars.get(v.0 as usize).copied().flatten().ok_or_else(|| {
                err(format!("launch `{}`: scalar register {} read before it is set", self.launch.name, v.0))
            })?,
            SExpr::Core => self.core,
            SExpr::Bin(op, a, b) => {
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                match op {
                    SBin::Add => a.wrapping_add(b),
                    SBin::Sub => a.wrapping_sub(b),
                    SBin::Mul => a.wrapping_mul(b),
                    SBin::Div | SBin::Mod if b == 0 => {
                        return Err(err(format!("launch `{}`: a scalar division by zero", self.launch.name)))
                    }
                    SBin::Div => crate::dim::floor_div(a, b),
                    SBin::Mod => a - crate::dim::floor_div(a, b).wrapping_mul(b),
                    SBin::Min => a.min(b),
                    SBin::Max => a.max(b),
                    SBin::Lt => (a < b) as i64,
                    SBin::Le => (a <= b) as i64,
                    SBin::Eq => (a == b) as i64,
                }
            }
            SExpr::Read { buf, slot, index } => {
                let (slot, index) = (self.eval(slot)?, self.eval(index)?);
                self.known.get(&(buf.0, slot)).and_then(|m| m.get(&index)).copied().ok_or_else(|| {
                    let name = self.launch.buffers.get(buf.0 as usize).map_or("?", |b| b.name.as_str());
                    err(format!(
                        "launch `{}`: the report cannot follow a scalar read of `{name}` (slot {slot}, element \
                         {index}): its value does not come from the integer inputs",
                        self.launch.name
                    ))
                })?
            }
        })
    }

    /// The value a float scalar argument the caller did not give reads as: 1.0 (its bits), a positive
    /// value like the scales and rates such arguments are (`kc run --random` draws them from `(0, 1)`). A
    /// template that branches on a scalar's sign makes both arms the same work, so the choice does not
    /// change an estimate.
    fn float_scalar_default(&self, t: TensorId) -> Option<i64> {
        let g = self.prog.tensors.get(t.0 as usize)?;
        (g.shape.is_empty() && g.dtype == DType::F32 && matches!(g.role, TensorRole::Param(_)))
            .then(|| i64::from(1.0f32.to_bits() as i32))
    }

    fn elem_bytes(&self, loc: &Loc) -> u64 {
        match loc {
            Loc::Gm(t) => self.prog.tensors.get(t.0 as usize).map_or(4, |t| t.dtype.size_bytes() as u64),
            Loc::Buf { buf, .. } => self.launch.buffers.get(buf.0 as usize).map_or(4, |b| b.dtype.size_bytes() as u64),
        }
    }

    fn is_workspace(&self, t: TensorId) -> bool {
        matches!(self.prog.tensors.get(t.0 as usize).map(|t| &t.role), Some(TensorRole::Workspace { .. }))
    }

    fn gm_read(&mut self, t: TensorId, bytes: u64) {
        let scalar_arg = self
            .prog
            .tensors
            .get(t.0 as usize)
            .is_some_and(|t| t.shape.is_empty() && matches!(t.role, TensorRole::Param(_)));
        if scalar_arg {
            self.counts.scalar_args_read += bytes;
            return;
        }
        self.counts.gm_bytes_read += bytes;
        if self.is_workspace(t) {
            self.counts.gm_workspace_read += bytes;
        }
    }

    fn gm_write(&mut self, t: TensorId, bytes: u64) {
        self.counts.gm_bytes_written += bytes;
        if self.is_workspace(t) {
            self.counts.gm_workspace_written += bytes;
        }
    }

    /// Forgets what is known of the slot a statement writes.
    fn clobber(&mut self, r: &Region) -> Result<(), Diagnostic> {
        if let Loc::Buf { buf, slot } = &r.loc {
            let slot = self.eval(slot)?;
            self.known.remove(&(buf.0, slot));
        }
        Ok(())
    }

    fn copy(&mut self, src: &Region, dst: &Region, rows: i64, cols: i64) -> Result<(), Diagnostic> {
        // Integer values (and f32 words, as their bits) travel from a known GM tensor or a known buffer slot
        // into a buffer slot.
        self.clobber(dst)?;
        let Loc::Buf { buf: dbuf, slot: dslot } = &dst.loc else { return Ok(()) };
        let int_dst =
            self.launch.buffers.get(dbuf.0 as usize).is_some_and(|b| matches!(b.dtype, DType::I32 | DType::F32));
        if !int_dst || rows.saturating_mul(cols) > 1 << 20 {
            return Ok(());
        }
        let (so, ss) = (self.eval(&src.offset)?, self.eval(&src.row_stride)?);
        let (d_o, ds) = (self.eval(&dst.offset)?, self.eval(&dst.row_stride)?);
        let dslot = self.eval(dslot)?;
        let mut vals = BTreeMap::new();
        for r in 0..rows {
            for c in 0..cols {
                let at = so + r * ss + c;
                let v = match &src.loc {
                    Loc::Gm(t) => match self.ints.get(t) {
                        Some(d) => usize::try_from(at).ok().and_then(|i| d.get(i)).copied(),
                        None => self.float_scalar_default(*t),
                    },
                    Loc::Buf { buf, slot } => {
                        let s = self.eval(slot)?;
                        self.known.get(&(buf.0, s)).and_then(|m| m.get(&at)).copied()
                    }
                };
                match v {
                    Some(v) => {
                        vals.insert(d_o + r * ds + c, v);
                    }
                    None => return Ok(()),
                }
            }
        }
        self.known.insert((dbuf.0, dslot), vals);
        Ok(())
    }

    fn block(&mut self, stmts: &[Stmt]) -> Result<(), Diagnostic> {
        for s in stmts {
            self.stmt(s)?;
        }
        Ok(())
    }

    /// Counts one more statement walked; an error past [`MAX_STEPS`].
    pub(crate) fn step(&mut self) -> Result<(), Diagnostic> {
        self.steps.set(self.steps.get() + 1);
        if self.steps.get() > MAX_STEPS {
            return Err(Diagnostic::error(
                Code::ResourceLimit,
                crate::span::Span::default(),
                format!(
                    "the report of `{}` would walk more than {MAX_STEPS} statements: build it at smaller --dims",
                    self.prog.kernel
                ),
            ));
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), Diagnostic> {
        self.step()?;
        *self.counts.stmts.entry(s.pipe()).or_default() += 1;
        match s {
            Stmt::For { var, lo, hi, step, body } => {
                let (lo, hi) = (self.eval(lo)?, self.eval(hi)?);
                if *step <= 0 {
                    return Err(err(format!("launch `{}`: a loop with step {step}", self.launch.name)));
                }
                let mut i = lo;
                while i < hi {
                    self.set(*var, i)?;
                    self.block(body)?;
                    i = i.saturating_add(*step);
                }
            }
            Stmt::Set { var, value } => {
                let v = self.eval(value)?;
                self.set(*var, v)?;
            }
            Stmt::If { cond, then } => {
                if self.eval(cond)? != 0 {
                    self.block(then)?;
                }
            }
            _ => self.leaf(s)?,
        }
        Ok(())
    }

    /// What a statement other than `For`, `Set` and `If` moves and computes (the caller counts the step).
    pub(crate) fn leaf(&mut self, s: &Stmt) -> Result<(), Diagnostic> {
        match s {
            Stmt::For { .. } | Stmt::Set { .. } | Stmt::If { .. } => {}
            Stmt::Copy { pipe, src, dst, rows, cols } => {
                let (r, c) = (self.eval(rows)?.max(0), self.eval(cols)?.max(0));
                let n = (r * c) as u64;
                let bytes_src = n * self.elem_bytes(&src.loc);
                let bytes_dst = n * self.elem_bytes(&dst.loc);
                if let Loc::Gm(t) = src.loc {
                    self.gm_read(t, bytes_src);
                }
                if let Loc::Gm(t) = dst.loc {
                    self.gm_write(t, bytes_dst);
                }
                *self.counts.pipe_bytes.entry(*pipe).or_default() += bytes_src.max(bytes_dst);
                self.copy(src, dst, r, c)?;
            }
            Stmt::Gather { pipe, src, dst, rows, cols, .. } => {
                let (r, c) = (self.eval(rows)?.max(0), self.eval(cols)?.max(0));
                let n = (r * c) as u64;
                let bytes = n * self.prog.tensors.get(src.0 as usize).map_or(4, |t| t.dtype.size_bytes() as u64);
                self.gm_read(*src, bytes);
                if let Loc::Gm(t) = dst.loc {
                    self.gm_write(t, n * self.elem_bytes(&dst.loc));
                }
                *self.counts.pipe_bytes.entry(*pipe).or_default() += bytes;
                self.clobber(dst)?;
            }
            Stmt::Mmad { c, m, k, n, .. } => {
                let (m, k, n) = (self.eval(m)?.max(0) as u64, self.eval(k)?.max(0) as u64, self.eval(n)?.max(0) as u64);
                self.counts.cube_flops += 2 * m * k * n;
                self.clobber(c)?;
            }
            Stmt::Vector { dst, rows, cols, .. } => {
                let (r, c) = (self.eval(rows)?.max(0), self.eval(cols)?.max(0));
                self.counts.vector_elements += (r * c) as u64;
                self.clobber(dst)?;
            }
            Stmt::Reduce { axis, dst, rows, cols, .. } => {
                let (r, c) = (self.eval(rows)?.max(0), self.eval(cols)?.max(0));
                self.counts.vector_elements += if *axis == 1 { r as u64 } else { c as u64 };
                self.clobber(dst)?;
            }
            Stmt::Library { op, rows, cols, .. } => {
                let (r, c) = (self.eval(rows)?.max(0) as u64, self.eval(cols)?.max(0) as u64);
                let (out, dsts): (u64, Vec<&Region>) = match op {
                    LibOp::TopK { k, values, indices } => (r * k, values.iter().chain(indices.iter()).collect()),
                    LibOp::ArgSort { dst, .. } => (r * c, vec![dst]),
                    LibOp::CumSum { dst, carry, .. } => (r * c, std::iter::once(dst).chain(carry.iter()).collect()),
                    LibOp::BinCount { n, dst } => (*n, vec![dst]),
                };
                self.counts.vector_elements += out;
                for d in dsts {
                    self.clobber(d)?;
                }
            }
            Stmt::SetFlag { .. }
            | Stmt::WaitFlag { .. }
            | Stmt::Barrier { .. }
            | Stmt::CrossSet { .. }
            | Stmt::CrossWait { .. } => {}
        }
        Ok(())
    }

    pub(crate) fn set(&mut self, v: SVar, x: i64) -> Result<(), Diagnostic> {
        let slot = self
            .vars
            .get_mut(v.0 as usize)
            .ok_or_else(|| err(format!("launch `{}`: no scalar register {}", self.launch.name, v.0)))?;
        *slot = Some(x);
        Ok(())
    }
}

/// Counts what each launch of `prog` moves and computes (see the module documentation).
pub fn count(prog: &TileProgram, ints: &IntData) -> Result<Vec<Counts>, Diagnostic> {
    let steps = std::cell::Cell::new(0u64);
    let mut out = Vec::new();
    for l in &prog.launches {
        let mut total = Counts::default();
        for (cores, program) in [(l.cube_cores, &l.cube), (l.vector_cores, &l.vector)] {
            for core in 0..cores {
                let mut w = Walker::new(prog, l, ints, core as i64, &steps);
                w.block(program)?;
                total.add(&w.counts);
            }
        }
        out.push(total);
    }
    Ok(out)
}

/// A buffer of a launch, as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferUse {
    pub name: String,
    pub mem: Mem,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub slots: u32,
    pub bytes: u64,
}

/// One launch of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchReport {
    pub name: String,
    pub unit: Unit,
    pub cube_cores: u32,
    pub vector_cores: u32,
    pub buffers: Vec<BufferUse>,
    /// Bytes used and usable, per memory the launch uses.
    pub memory: Vec<(Mem, u64, u64)>,
    pub counts: Counts,
    /// The index of the launch in the program (and in the estimate).
    pub index: usize,
}

/// One fusion group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupReport {
    pub index: usize,
    pub kind: String,
    pub nodes: Vec<String>,
    pub stored: Vec<String>,
    pub launches: Vec<LaunchReport>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Intermediate {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub elements: u64,
    pub bytes: u64,
}

/// The report of one kernel on one target at concrete dims.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub name: String,
    pub target: String,
    pub dims: BTreeMap<String, i64>,
    pub groups: Vec<GroupReport>,
    pub totals: Counts,
    pub gm_workspace_bytes: u64,
    pub gm_intermediates: Vec<Intermediate>,
    /// The cycle model's estimate (launches in the order of `groups`' launches).
    pub estimate: crate::cost::Estimate,
}

fn value_name(g: &Graph, v: crate::graph::ValueId) -> String {
    g.nodes.get(v.index()).and_then(|n| n.name.clone()).unwrap_or_else(|| format!("%{}", v.0))
}

/// The report of `prog`, tiled from `g` fused as `f`; `launch_group[i]` is the group of launch `i` (as
/// [`crate::passes::tile::tile_with_groups`] gives it).
pub fn report(
    g: &Graph,
    f: &Fusion,
    prog: &TileProgram,
    launch_group: &[usize],
    target: &Target,
    ints: &IntData,
) -> Result<Report, Diagnostic> {
    let (estimate, _) = crate::cost::estimate(prog, target, ints, false)?;
    let counts: Vec<Counts> = estimate.launches.iter().map(|l| l.counts.clone()).collect();
    let mut groups: Vec<GroupReport> = Vec::new();
    for (i, l) in prog.launches.iter().enumerate() {
        let k = launch_group.get(i).copied().unwrap_or(usize::MAX);
        if groups.last().is_none_or(|gr| gr.index != k) {
            let (kind, nodes, stored) = match f.groups.get(k) {
                Some(gr) => (
                    gr.kind.name().to_string(),
                    gr.nodes.iter().map(|v| value_name(g, *v)).collect(),
                    gr.stored.iter().map(|v| value_name(g, *v)).collect(),
                ),
                None => ("?".to_string(), Vec::new(), Vec::new()),
            };
            groups.push(GroupReport { index: k, kind, nodes, stored, launches: Vec::new() });
        }
        let buffers: Vec<BufferUse> = l
            .buffers
            .iter()
            .map(|b| BufferUse {
                name: b.name.clone(),
                mem: b.mem,
                dtype: b.dtype,
                shape: b.shape.clone(),
                slots: b.slots,
                bytes: b.bytes(),
            })
            .collect();
        let mut memory = Vec::new();
        for mem in Mem::ALL {
            let used: Vec<&Buffer> = l.buffers.iter().filter(|b| b.mem == mem).collect();
            if used.is_empty() {
                continue;
            }
            let end = used.iter().map(|b| b.offset + b.bytes()).max().unwrap_or(0);
            let usable = target.memory(mem.name()).map_or(0, |m| m.usable());
            memory.push((mem, end, usable));
        }
        let lr = LaunchReport {
            name: l.name.clone(),
            unit: l.unit,
            cube_cores: l.cube_cores,
            vector_cores: l.vector_cores,
            buffers,
            memory,
            counts: counts.get(i).cloned().unwrap_or_default(),
            index: i,
        };
        if let Some(gr) = groups.last_mut() {
            gr.launches.push(lr);
        }
    }
    let mut totals = Counts::default();
    for c in &counts {
        totals.add(c);
    }
    let mut gm_workspace_bytes = 0;
    let mut gm_intermediates = Vec::new();
    for (ti, t) in prog.tensors.iter().enumerate() {
        match t.role {
            TensorRole::Workspace { per_core, .. } => {
                let cores = prog
                    .launches
                    .iter()
                    .filter(|l| uses(l, TensorId(ti as u32)))
                    .map(|l| (l.cube_cores + l.vector_cores) as u64)
                    .max()
                    .unwrap_or(0);
                gm_workspace_bytes += per_core * cores;
            }
            TensorRole::Intermediate(_) => {
                let elements: u64 = t.shape.iter().product();
                gm_intermediates.push(Intermediate {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    elements,
                    bytes: elements * t.dtype.size_bytes() as u64,
                });
            }
            _ => {}
        }
    }
    Ok(Report {
        name: g.name.clone(),
        target: target.name.clone(),
        dims: prog.dims.clone(),
        groups,
        totals,
        gm_workspace_bytes,
        gm_intermediates,
        estimate,
    })
}

/// Whether a launch refers to tensor `t` anywhere.
fn uses(l: &Launch, t: TensorId) -> bool {
    fn region(r: &Region, t: TensorId) -> bool {
        r.loc == Loc::Gm(t)
    }
    fn stmts(ss: &[Stmt], t: TensorId) -> bool {
        ss.iter().any(|s| match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => stmts(body, t),
            Stmt::Copy { src, dst, .. } => region(src, t) || region(dst, t),
            Stmt::Gather { src, dst, .. } => *src == t || region(dst, t),
            _ => false,
        })
    }
    stmts(&l.cube, t) || stmts(&l.vector, t)
}

fn busy_text(b: &BTreeMap<Pipe, f64>) -> String {
    b.iter().map(|(p, f)| format!("{} {:.0}%", p.name(), 100.0 * f)).collect::<Vec<_>>().join(", ")
}

fn busy_json(b: &BTreeMap<Pipe, f64>) -> serde_json::Value {
    serde_json::Value::Object(b.iter().map(|(p, f)| (p.name().to_string(), json!(f))).collect())
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Cube => "cube",
        Unit::Vector => "vector",
        Unit::Mixed => "mixed",
    }
}

fn shape_text(dtype: DType, shape: &[u64]) -> String {
    crate::tile::print::print_shape(dtype, shape)
}

impl Report {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let dims: Vec<String> = self.dims.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let _ = writeln!(s, "kernel {}  target {}  dims {}", self.name, self.target, dims.join(", "));
        for gr in &self.groups {
            let _ = writeln!(s, "group {}: {} ({})", gr.index, gr.kind, gr.nodes.join(", "));
            for l in &gr.launches {
                let _ = writeln!(
                    s,
                    "  launch {}  {}  grid {} cube + {} vector",
                    l.name,
                    unit_name(l.unit),
                    l.cube_cores,
                    l.vector_cores
                );
                for (mem, used, usable) in &l.memory {
                    let tiles: Vec<String> = l
                        .buffers
                        .iter()
                        .filter(|b| b.mem == *mem)
                        .map(|b| {
                            let x = if b.slots > 1 { format!(" x{}", b.slots) } else { String::new() };
                            format!("{} {}{x}", b.name, shape_text(b.dtype, &b.shape))
                        })
                        .collect();
                    let _ = writeln!(s, "    {:<4} {used:>8} / {usable:>8} B  {}", mem.name(), tiles.join(", "));
                }
                let c = &l.counts;
                let _ = writeln!(
                    s,
                    "    gm read {} B, written {} B (workspace {} / {}), cube {} flop, vector {} elements",
                    c.gm_bytes_read,
                    c.gm_bytes_written,
                    c.gm_workspace_read,
                    c.gm_workspace_written,
                    c.cube_flops,
                    c.vector_elements
                );
                if let Some(e) = self.estimate.launches.get(l.index) {
                    let dil = if e.gm_dilation > 1.0 + 1e-6 {
                        format!(", GM copies slowed {:.2}x by the shared bandwidth", e.gm_dilation)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        s,
                        "    estimate {:.0} cycles ({:.2} us), bound {}{dil}; busy {}",
                        e.cycles,
                        e.cycles / (self.estimate.clock_ghz * 1e3),
                        e.bound(),
                        busy_text(&e.pipe_busy())
                    );
                }
            }
        }
        let t = &self.totals;
        let _ = writeln!(s, "totals:");
        let _ = writeln!(s, "  gm_bytes_read       {}", t.gm_bytes_read);
        let _ = writeln!(s, "  gm_bytes_written    {}", t.gm_bytes_written);
        let _ = writeln!(s, "  cube_flops          {}", t.cube_flops);
        let _ = writeln!(s, "  vector_elements     {}", t.vector_elements);
        let _ = writeln!(s, "  gm_workspace_bytes  {}", self.gm_workspace_bytes);
        let e = &self.estimate;
        let _ = writeln!(s, "estimate:");
        let _ = writeln!(s, "  cycles              {:.0}", e.cycles());
        let _ = writeln!(s, "  time_us             {:.2}", e.time_us());
        let _ = writeln!(s, "  bound               {}", e.bound());
        let _ = writeln!(s, "  pipe_busy           {}", busy_text(&e.pipe_busy()));
        let _ = writeln!(
            s,
            "  cube                {:.2} TFLOP/s = {:.1}% of peak {:.2} TFLOP/s",
            e.cube_flops_per_s() / 1e12,
            100.0 * e.cube_flops_per_s() / e.peak_cube_flops_per_s,
            e.peak_cube_flops_per_s / 1e12
        );
        let _ = writeln!(
            s,
            "  gm                  {:.1} GB/s = {:.1}% of peak {:.1} GB/s (L2 hits included)",
            e.gm_bytes_per_s() / 1e9,
            100.0 * e.gm_bytes_per_s() / e.peak_gm_bytes_per_s,
            e.peak_gm_bytes_per_s / 1e9
        );
        if self.gm_intermediates.is_empty() {
            let _ = writeln!(s, "gm_intermediates: none");
        } else {
            let _ = writeln!(s, "gm_intermediates:");
            for i in &self.gm_intermediates {
                let _ = writeln!(
                    s,
                    "  {} {}  {} elements, {} B",
                    i.name,
                    shape_text(i.dtype, &i.shape),
                    i.elements,
                    i.bytes
                );
            }
        }
        s
    }

    /// The report as a JSON value (see [`json`]).
    pub fn to_json(&self) -> serde_json::Value {
        let counts = |c: &Counts| {
            json!({
                "gm_bytes_read": c.gm_bytes_read,
                "gm_bytes_written": c.gm_bytes_written,
                "gm_workspace_read": c.gm_workspace_read,
                "gm_workspace_written": c.gm_workspace_written,
                "scalar_args_read": c.scalar_args_read,
                "cube_flops": c.cube_flops,
                "vector_elements": c.vector_elements,
            })
        };
        let launch = |l: &LaunchReport| {
            let buffers: Vec<serde_json::Value> = l
                .buffers
                .iter()
                .map(|b| {
                    json!({
                        "name": b.name, "memory": b.mem.name(), "dtype": b.dtype.to_string(),
                        "shape": b.shape, "slots": b.slots, "bytes": b.bytes,
                    })
                })
                .collect();
            let memory: serde_json::Map<String, serde_json::Value> = l
                .memory
                .iter()
                .map(|(m, used, usable)| (m.name().to_string(), json!({"used": used, "usable": usable})))
                .collect();
            let est = self.estimate.launches.get(l.index).map(|e| {
                json!({
                    "cycles": e.cycles,
                    "time_us": e.cycles / (self.estimate.clock_ghz * 1e3),
                    "pipe_busy": busy_json(&e.pipe_busy()),
                    "bound": e.bound(),
                    "gm_dilation": e.gm_dilation,
                    "hbm_bytes": e.hbm_bytes,
                })
            });
            json!({
                "name": l.name,
                "estimate": est,
                "unit": unit_name(l.unit),
                "grid": {"cube_cores": l.cube_cores, "vector_cores": l.vector_cores},
                "buffers": buffers,
                "memory": memory,
                "counts": counts(&l.counts),
            })
        };
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|gr| {
                json!({
                    "index": gr.index, "kind": gr.kind, "nodes": gr.nodes, "stored": gr.stored,
                    "launches": gr.launches.iter().map(launch).collect::<Vec<_>>(),
                })
            })
            .collect();
        let inter: Vec<serde_json::Value> = self
            .gm_intermediates
            .iter()
            .map(|i| {
                json!({"name": i.name, "dtype": i.dtype.to_string(), "shape": i.shape, "elements": i.elements,
                       "bytes": i.bytes})
            })
            .collect();
        let t = &self.totals;
        let e = &self.estimate;
        json!({
            "cycles": e.cycles(),
            "time_us": e.time_us(),
            "pipe_busy": busy_json(&e.pipe_busy()),
            "bound": e.bound(),
            "peak_cube_flops_per_s": e.peak_cube_flops_per_s,
            "peak_gm_bytes_per_s": e.peak_gm_bytes_per_s,
            "cube_flops_per_s": e.cube_flops_per_s(),
            "gm_bytes_per_s": e.gm_bytes_per_s(),
            "hbm_bytes": e.launches.iter().map(|l| l.hbm_bytes).sum::<u64>(),
            "name": self.name,
            "target": self.target,
            "dims": self.dims,
            "groups": groups,
            "gm_bytes_read": t.gm_bytes_read,
            "gm_bytes_written": t.gm_bytes_written,
            "cube_flops": t.cube_flops,
            "vector_elements": t.vector_elements,
            "gm_workspace_bytes": self.gm_workspace_bytes,
            "gm_intermediates": inter,
        })
    }
}

/// The JSON document of several kernels' reports: `{"kernels": [...]}`, each element with `name`,
/// `target`, `dims`, `groups`, `gm_bytes_read`, `gm_bytes_written`, `cube_flops`, `vector_elements`,
/// `gm_workspace_bytes` and `gm_intermediates` (each `{name, dtype, shape, elements, bytes}`). Object keys
/// are sorted.
pub fn json(reports: &[Report]) -> String {
    let doc = json!({"kernels": reports.iter().map(Report::to_json).collect::<Vec<_>>()});
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}
