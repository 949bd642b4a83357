//! The functional simulator of the tile IR: runs a [`TileProgram`] on host tensors and computes exactly
//! what the reference interpreter ([`kc_ir::interp`]) computes for the same operations.
//!
//! [`run`] (or [`run_with`], with explicit [`Limits`] and returning [`Stats`]) executes a program lowered
//! from `graph` on `args` and returns one `(name, tensor)` per entry of `graph.results`, in order.
//!
//! # How a run goes
//!
//! 1. [`launch::bind`] checks the arguments against the graph's signature (every check the interpreter
//!    makes); its errors are returned as they are. Every dim the program is specialized to must have the
//!    bound value (else `Code::ArgShape`: the program was compiled for other sizes).
//! 2. Global memory is set up, one flat array per [`kc_ir::tile::GmTensor`] in its dtype: a `Param(i)` is a
//!    copy of the argument converted to the tensor's dtype (the caller's arguments are never modified, so a
//!    failed run leaves them as they were); `Output`, `Intermediate` and `Workspace` tensors start as zeros. A
//!    workspace holds `per_core` bytes for each core (cube and vector) of the largest launch that uses it;
//!    its `shape` is not used. GM plus every launch's buffers must fit [`Limits::max_bytes`]
//!    (else `Code::ResourceLimit`).
//! 3. The launches run in order. In a launch, every cube core (`0..cube_cores`) runs the `cube` program and
//!    every vector core (`0..vector_cores`) the `vector` program, each with its own scalar registers and its
//!    own copy (zeros at the start of the launch) of every buffer of its kind
//!    ([`kc_ir::tile::Mem::on_cube`]).
//! 4. Cores are resumable interpreters (an explicit stack of frames), scheduled round-robin in a fixed
//!    order (cube cores, then vector cores): a core runs until it blocks on a `CrossWait` or finishes, then
//!    the next one runs. No threads; the result does not depend on the host.
//! 5. The results are the final contents of the `Output(i)` tensors (`results[i]`; for an `inout` result
//!    without an `Output` tensor, the final contents of its `Param` tensor).
//!
//! # Semantics
//!
//! - Within a core statements run in program order; intra-core flags and barriers order nothing more (the
//!   verifier proves the program race-free) and are only counted.
//! - Cross-core flags (ids `0..=10`): cube core `i` is paired with vector cores `i*ratio .. (i+1)*ratio`,
//!   `ratio = vector_cores / cube_cores`. `CrossSet` adds one to the flag's counter on every partner (a
//!   cube core's vector cores, or a vector core's cube core), kept per sender: a cube core's `CrossWait`
//!   needs a set from each of its vector cores (the hardware's cube-waits-for-all mode). `CrossWait` blocks
//!   until every such counter of the flag is above 0, then takes one from each. A launch in which every unfinished core waits is a
//!   deadlock: `Code::Internal`, naming the launch and the flags waited for. A set on a core without a
//!   partner is `Code::Internal`. Counters are not capped (the hardware counts to 15; [`Stats`] records
//!   the largest count reached).
//! - `For { lo, hi, step }` evaluates `lo` and `hi` once and runs `var = lo, lo + step, ..` while `var < hi`
//!   (`step` must be positive). Reading a register never set is an internal error.
//! - `SExpr`: 64-bit wrapping arithmetic, floor division and floor remainder (a zero divisor is an
//!   internal error: scalar arithmetic is the compiler's), comparisons give 0 or 1. `Read` reads an
//!   element of an `i32` buffer of the core.
//! - A [`Region`]'s element `(r, c)` is flat element `offset + r * row_stride + c` of a buffer slot (the
//!   slot is `0..slots`; the offset must be in `0..slot_elems`) or of a GM tensor (`0..len`). Every access is
//!   bounds-checked; a miss is `Code::Internal` naming the launch, the core, the statement (by its path in
//!   the program: `vector[3.2]` is statement 2 of the body of the vector program's statement 3) and the
//!   loop variables.
//! - Values are [`Val`]s as in the interpreter (f32, i64, bool); every operation is [`kc_ir::ops`]. Loading
//!   widens; storing converts exactly as the interpreter stores (`f32` rounded to nearest-even into
//!   `bf16`/`f16`, integers wrapped to 32 bits). A store of a value of another kind (an integer into a
//!   float buffer, ...) is an internal error: copies convert between float widths only.
//! - A statement reads all its inputs before it writes (a vector statement whose destination overlaps a
//!   source sees the old values).
//! - `Copy`: `rows × cols` elements. `Gather`: row `r` of `dst` is `cols` elements of `src` from
//!   `index[r] * row_stride + col_offset`, where `index[r]` is the `i32` element `(r, 0)` of `index`; an
//!   index outside `0..src_rows` is `Code::IndexOutOfRange` at the statement's span.
//! - `Mmad`: `c[i, j] = (accumulate ? c[i, j] : 0) + Σ_k a[i, k] · b[k, j]`, products and sums in `f32`, k in
//!   order (as the interpreter's sum). `a` and `b` must be floats.
//! - `Vector`: the expression at each `(r, c)`, row-major; `Row`/`Col` are `r`/`c`, `Scalar` is the SExpr's
//!   value as an integer, `Select` evaluates only the chosen side. An integer division by zero is
//!   `Code::DivByZero` (at the kernel's span: vector statements carry none).
//! - `Reduce`: axis 1 reduces each row `r` into `dst[r, 0]`, axis 0 each column `c` into `dst[0, c]`, in
//!   index order with [`Acc`] (the interpreter's identities, NaN handling and first-index arg reductions;
//!   the index of an arg reduction is the position in the tile). With `accumulate` the reduction continues
//!   from `dst`'s value (a sum split across tiles gives the interpreter's bits); `argmax`/`argmin` cannot
//!   accumulate (internal error).
//! - `Library`, per row of `src`: `TopK` (largest first, ties to the lower index, NaN largest; `k` above
//!   `cols` is `Code::ArgShape`), `ArgSort` (stable), `CumSum` (a float source sums in `f32`, an integer one in
//!   `i64`; with `carry`, row `r` starts from `carry[r, 0]` and leaves its total there), `BinCount` (the
//!   source's values, row-major, counted into `dst[0, 0..n]`, added to what is there; a value outside `0..n`
//!   is `Code::IndexOutOfRange` at the statement's span and nothing is written).
//! - A malformed program never panics: every broken invariant is `Code::Internal` with a message.

use crate::gm;
use kc_ir::diag::{Code, Diagnostic};
use kc_ir::dtype::DType;
use kc_ir::graph::{BinOp, Graph, UnOp};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::ops::{self, Acc, CumAcc, StoreError, Val};
use kc_ir::span::Span;
use kc_ir::tensor::{Tensor, TensorData};
use kc_ir::tile::{BufId, Launch, LibOp, Loc, Pipe, Region, SBin, SExpr, SVar, Stmt, TileProgram, VExpr};
use std::collections::BTreeMap;

/// The cross-core flag ids are `0..CROSS_FLAGS`.
const CROSS_FLAGS: usize = 11;
/// Intra-core event ids are `0..EVENTS`.
const EVENTS: u8 = 8;
/// The most cores a launch may have.
/// The deepest scalar or vector expression the simulator evaluates.
const MAX_DEPTH: usize = 512;

/// What the simulator counted in one launch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LaunchStats {
    pub name: String,
    /// Statements executed, per pipe, over all cores.
    pub stmts: BTreeMap<Pipe, u64>,
    /// Elements written by copies and gathers, per pipe.
    pub elements: BTreeMap<Pipe, u64>,
    /// Multiply-accumulates done by `Mmad`.
    pub macs: u64,
    /// Elements written by vector statements, reductions and library operations.
    pub vector_elements: u64,
    /// Cross-core `CrossSet`s executed.
    pub cross_sets: u64,
    /// The largest value a cross-core flag counter reached (the hardware counts up to 15).
    pub max_cross_count: u32,
}

/// What the simulator counted, one entry per launch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub launches: Vec<LaunchStats>,
}

/// One `(name, tensor)` per entry of `graph.results`, in order.
pub use crate::gm::Results;

/// Runs `prog` (lowered from `graph`) on `args` with the default [`Limits`].
pub fn run(prog: &TileProgram, graph: &Graph, args: &Args) -> Result<Results, Vec<Diagnostic>> {
    run_with(prog, graph, args, &Limits::default()).map(|(r, _)| r)
}

/// Runs `prog` (lowered from `graph`) on `args`: one `(name, tensor)` per entry of `graph.results`, in
/// order, and what the simulator counted.
pub fn run_with(
    prog: &TileProgram,
    graph: &Graph,
    args: &Args,
    limits: &Limits,
) -> Result<(Results, Stats), Vec<Diagnostic>> {
    let (binding, mut gm) = gm::setup(prog, graph, args, limits, "simulating")?;
    // The launches.
    let mut stats = Stats::default();
    for (li, l) in prog.launches.iter().enumerate() {
        let ls = run_launch(prog, graph, li, l, &mut gm)?;
        stats.launches.push(ls);
    }
    Ok((gm::results(prog, graph, &binding, gm)?, stats))
}

fn internal(span: Span, msg: String) -> Diagnostic {
    Diagnostic::error(Code::Internal, span, format!("internal error in the tile simulator: {msg}"))
}

// ---------------------------------------------------------------------------------------------------------
// Which launches use a GM tensor (for sizing workspaces).

// ---------------------------------------------------------------------------------------------------------
// Failures inside a core: completed with the core's context by the scheduler.

enum Failure {
    /// A broken invariant of the program.
    Internal(String),
    /// A run-time error of the kernel (an index out of range, a division by zero, ...).
    Diag(Diagnostic),
}

type Res<T> = Result<T, Box<Failure>>;

fn bug<T>(msg: impl Into<String>) -> Res<T> {
    Err(Box::new(Failure::Internal(msg.into())))
}

/// Adds where an error happened to a failure.
fn at_element(mut f: Box<Failure>, what: String) -> Box<Failure> {
    match &mut *f {
        Failure::Internal(m) => m.push_str(&format!(" ({what})")),
        Failure::Diag(d) => d.notes.push(what),
    }
    f
}

fn op_failure(e: ops::OpError, span: Span) -> Box<Failure> {
    Box::new(match e {
        ops::OpError::Type(m) => Failure::Internal(m),
        e => Failure::Diag(e.into_diagnostic(span, internal)),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Cores.

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Cube,
    Vector,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cube => "cube",
            Kind::Vector => "vector",
        }
    }
}

struct Loop {
    var: usize,
    cur: i64,
    hi: i64,
    step: i64,
}

/// A block being run: its statements, the next one, and the loop it is the body of.
struct Frame<'p> {
    body: &'p [Stmt],
    pc: usize,
    lp: Option<Loop>,
}

struct Core<'p> {
    kind: Kind,
    /// Index among the launch's cores of its kind.
    index: u32,
    regs: Vec<Option<i64>>,
    frames: Vec<Frame<'p>>,
    /// The launch's buffers; `None` for those of the other kind of core.
    bufs: Vec<Option<TensorData>>,
    /// Cross-core flag counters, one row per partner core: a wait needs a set from every partner (a cube core
    /// waits for each of its vector cores; a vector core for its cube core).
    flags: Vec<[u32; CROSS_FLAGS]>,
    /// Cross-core flags set since the scheduler last delivered them.
    outbox: Vec<u8>,
    /// The flag the core is blocked on.
    waiting: Option<u8>,
    done: bool,
}

/// What one launch is, for the statements of its cores.
struct Ctx<'p> {
    graph: &'p Graph,
    prog: &'p TileProgram,
    launch: &'p Launch,
    cube_cores: u32,
    vector_cores: u32,
    /// Vector cores per cube core (0 without cube cores), computed once per launch.
    ratio: u32,
}

impl Ctx<'_> {
    fn ratio(&self) -> u32 {
        self.ratio
    }

    /// The global indices (cube cores first) of a core's cross-core partners.
    fn partners(&self, kind: Kind, index: u32) -> Vec<usize> {
        let ratio = self.ratio();
        if ratio == 0 {
            return Vec::new();
        }
        match kind {
            Kind::Cube => (index * ratio..(index + 1) * ratio).map(|v| (self.cube_cores + v) as usize).collect(),
            Kind::Vector => {
                let c = index.checked_div(ratio).unwrap_or(u32::MAX);
                if c < self.cube_cores {
                    vec![c as usize]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

fn run_launch(
    prog: &TileProgram,
    graph: &Graph,
    li: usize,
    l: &Launch,
    gm: &mut [TensorData],
) -> Result<LaunchStats, Vec<Diagnostic>> {
    // The ratio is computed here, once, through `black_box`: computed inside the core loop below, a guarded
    // `vector_cores / cube_cores` was hoisted above its guard by rustc 1.95's release build (LLVM) and a
    // vector-only launch (cube_cores == 0) died of SIGFPE.
    let cube = std::hint::black_box(l.cube_cores);
    let ratio = l.vector_cores.checked_div(cube).unwrap_or(0);
    let ctx = Ctx { graph, prog, launch: l, cube_cores: l.cube_cores, vector_cores: l.vector_cores, ratio };
    let mut stats = LaunchStats { name: l.name.clone(), ..LaunchStats::default() };
    let mut cores: Vec<Core<'_>> = Vec::new();
    for (kind, n, body) in [(Kind::Cube, l.cube_cores, &l.cube), (Kind::Vector, l.vector_cores, &l.vector)] {
        for index in 0..n {
            let bufs = l
                .buffers
                .iter()
                .map(|b| {
                    (b.mem.on_cube() == (kind == Kind::Cube)).then(|| {
                        let n = b.slot_elems().saturating_mul(u64::from(b.slots));
                        Tensor::zeros(b.dtype, vec![n as usize]).data
                    })
                })
                .collect();
            cores.push(Core {
                kind,
                index,
                regs: vec![None; l.svars.len()],
                frames: vec![Frame { body, pc: 0, lp: None }],
                bufs,
                flags: vec![[0; CROSS_FLAGS]; ctx.partners(kind, index).len().max(1)],
                outbox: Vec::new(),
                waiting: None,
                done: false,
            });
        }
    }

    loop {
        let mut progress = false;
        let mut all_done = true;
        for ci in 0..cores.len() {
            if cores[ci].done {
                continue;
            }
            let core = &mut cores[ci];
            let steps = run_core(&ctx, core, gm, &mut stats).map_err(|d| vec![*d])?;
            progress |= steps > 0;
            let (kind, index) = (core.kind, core.index);
            let outbox = std::mem::take(&mut core.outbox);
            if !core.done {
                all_done = false;
            }
            // The sender's row among its partner's counters: a vector core's position in its group.
            let row = match kind {
                Kind::Vector => (index % ctx.ratio().max(1)) as usize,
                Kind::Cube => 0,
            };
            for flag in outbox {
                for p in ctx.partners(kind, index) {
                    if let Some(f) = cores.get_mut(p).and_then(|c| c.flags.get_mut(row)) {
                        let f = &mut f[flag as usize];
                        *f = f.saturating_add(1);
                        stats.max_cross_count = stats.max_cross_count.max(*f);
                    }
                }
            }
        }
        if all_done {
            return Ok(stats);
        }
        if !progress {
            let waits: Vec<String> = cores
                .iter()
                .filter(|c| !c.done)
                .map(|c| match c.waiting {
                    Some(f) => format!("{} core {} waits for cross-core flag {f}", c.kind.name(), c.index),
                    None => format!("{} core {} is stuck", c.kind.name(), c.index),
                })
                .collect();
            let shown = waits.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
            let more = if waits.len() > 8 { format!(" and {} more", waits.len() - 8) } else { String::new() };
            return Err(vec![internal(
                graph.span,
                format!("launch #{li} `{}` deadlocks: {shown}{more}, and no core can set those flags", l.name),
            )]);
        }
    }
}

/// Runs a core until it blocks on a cross-core flag or finishes; the number of statements it ran.
fn run_core<'p>(
    ctx: &Ctx<'p>,
    core: &mut Core<'p>,
    gm: &mut [TensorData],
    stats: &mut LaunchStats,
) -> Result<u64, Box<Diagnostic>> {
    let mut steps = 0u64;
    loop {
        let Some(frame) = core.frames.last_mut() else {
            core.done = true;
            return Ok(steps);
        };
        if frame.pc >= frame.body.len() {
            if let Some(lp) = &mut frame.lp {
                if let Some(n) = lp.cur.checked_add(lp.step).filter(|&n| n < lp.hi) {
                    lp.cur = n;
                    frame.pc = 0;
                    let var = lp.var;
                    core.regs[var] = Some(n);
                    continue;
                }
            }
            core.frames.pop();
            continue;
        }
        let body = frame.body;
        let stmt = &body[frame.pc];
        if let Stmt::CrossWait { flag } = stmt {
            let f = *flag as usize;
            if f < CROSS_FLAGS && core.flags.iter().any(|row| row[f] == 0) {
                core.waiting = Some(*flag);
                return Ok(steps);
            }
        }
        core.waiting = None;
        frame.pc += 1;
        steps += 1;
        *stats.stmts.entry(stmt.pipe()).or_default() += 1;
        if let Err(f) = exec(ctx, core, gm, stats, stmt) {
            return Err(Box::new(describe_failure(ctx, core, stmt, *f)));
        }
    }
}

/// The failure as a diagnostic, naming where it happened.
fn describe_failure(ctx: &Ctx<'_>, core: &Core<'_>, stmt: &Stmt, f: Failure) -> Diagnostic {
    let prog_name = match core.kind {
        Kind::Cube => "cube",
        Kind::Vector => "vector",
    };
    let path: Vec<String> = core.frames.iter().map(|f| f.pc.saturating_sub(1).to_string()).collect();
    // A failing `For`/`If` has not pushed its frame; any other statement is the last frame's current one.
    let mut vars: Vec<String> = Vec::new();
    for fr in &core.frames {
        if let Some(lp) = &fr.lp {
            let name = ctx.launch.svars.get(lp.var).map_or("?", |s| s.as_str());
            vars.push(format!("{name} = {}", lp.cur));
        }
    }
    let mut place = format!(
        "launch `{}`, {} core {}, statement {prog_name}[{}] ({})",
        ctx.launch.name,
        core.kind.name(),
        core.index,
        path.join("."),
        stmt_name(stmt)
    );
    if !vars.is_empty() {
        place.push_str(&format!(" with {}", vars.join(", ")));
    }
    match f {
        Failure::Internal(m) => internal(ctx.graph.span, format!("{place}: {m}")),
        Failure::Diag(d) => d.with_note(format!("in {place}")),
    }
}

fn stmt_name(s: &Stmt) -> String {
    match s {
        Stmt::For { .. } => "for".into(),
        Stmt::Set { .. } => "set".into(),
        Stmt::If { .. } => "if".into(),
        Stmt::Copy { pipe, .. } => format!("copy on {}", pipe.name()),
        Stmt::Gather { pipe, .. } => format!("gather on {}", pipe.name()),
        Stmt::Mmad { .. } => "mmad".into(),
        Stmt::Vector { .. } => "vector".into(),
        Stmt::Reduce { op, .. } => format!("reduce {}", op.name()),
        Stmt::Library { op, .. } => match op {
            LibOp::TopK { .. } => "topk".into(),
            LibOp::ArgSort { .. } => "argsort".into(),
            LibOp::CumSum { .. } => "cumsum".into(),
            LibOp::BinCount { .. } => "bincount".into(),
        },
        Stmt::SetFlag { .. } => "set_flag".into(),
        Stmt::WaitFlag { .. } => "wait_flag".into(),
        Stmt::Barrier { .. } => "barrier".into(),
        Stmt::CrossSet { .. } => "cross_set".into(),
        Stmt::CrossWait { .. } => "cross_wait".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Places: resolved regions.

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Target {
    Gm(usize),
    Buf(usize),
}

/// A region with its scalar expressions evaluated.
#[derive(Copy, Clone, Debug)]
struct Place<'p> {
    target: Target,
    /// The flat index of the slot's first element in the storage (0 for GM).
    base: usize,
    /// Elements of the slot (of the tensor for GM).
    limit: i64,
    offset: i64,
    stride: i64,
    name: &'p str,
    slot: Option<i64>,
    dtype: DType,
}

impl Place<'_> {
    fn what(&self) -> String {
        match (self.target, self.slot) {
            (Target::Buf(_), Some(s)) => format!("slot {s} of buffer `{}`", self.name),
            (Target::Buf(_), None) => format!("buffer `{}`", self.name),
            (Target::Gm(_), _) => format!("GM tensor `{}`", self.name),
        }
    }

    /// The flat index in the storage of element `(r, c)`.
    fn flat(&self, r: i64, c: i64) -> Res<usize> {
        let off = r.checked_mul(self.stride).and_then(|x| x.checked_add(self.offset)).and_then(|x| x.checked_add(c));
        match off {
            Some(o) if (0..self.limit).contains(&o) => Ok(self.base + o as usize),
            _ => bug(format!(
                "element ({r}, {c}) of a region at offset {} with row stride {} is outside {} (0..{})",
                self.offset,
                self.stride,
                self.what(),
                self.limit
            )),
        }
    }
}

/// Memory as a core sees it: GM and its own buffers.
struct View<'a> {
    gm: &'a mut [TensorData],
    bufs: &'a mut [Option<TensorData>],
}

impl View<'_> {
    fn data(&self, t: Target) -> Res<&TensorData> {
        let d = match t {
            Target::Gm(i) => self.gm.get(i),
            Target::Buf(i) => self.bufs.get(i).and_then(|b| b.as_ref()),
        };
        match d {
            Some(d) => Ok(d),
            None => bug("a region names storage that does not exist"),
        }
    }

    fn get(&self, p: &Place<'_>, r: i64, c: i64) -> Res<Val> {
        let i = p.flat(r, c)?;
        match ops::load(self.data(p.target)?, i) {
            Some(v) => Ok(v),
            None => bug(format!("flat element {i} is past the end of {}", p.what())),
        }
    }

    fn put(&mut self, p: &Place<'_>, r: i64, c: i64, v: Val) -> Res<()> {
        let i = p.flat(r, c)?;
        let d = match p.target {
            Target::Gm(t) => self.gm.get_mut(t),
            Target::Buf(b) => self.bufs.get_mut(b).and_then(|b| b.as_mut()),
        };
        let Some(d) = d else {
            return bug("a region names storage that does not exist");
        };
        match ops::store(d, i, v) {
            Ok(()) => Ok(()),
            Err(StoreError::OutOfBounds) => bug(format!("flat element {i} is past the end of {}", p.what())),
            Err(StoreError::Type) => {
                bug(format!("a {} value stored into {}, which holds {}", v.ty_name(), p.what(), p.dtype))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Scalar expressions and regions.

impl<'p> Core<'p> {
    fn reg(&self, ctx: &Ctx<'_>, v: SVar) -> Res<i64> {
        match self.regs.get(v.0 as usize) {
            Some(Some(x)) => Ok(*x),
            Some(None) => {
                let name = ctx.launch.svars.get(v.0 as usize).map_or("?", |s| s.as_str());
                bug(format!("scalar register `{name}` is read before it is set"))
            }
            None => bug(format!("scalar register #{} does not exist", v.0)),
        }
    }

    fn set_reg(&mut self, v: SVar, x: i64) -> Res<()> {
        match self.regs.get_mut(v.0 as usize) {
            Some(r) => {
                *r = Some(x);
                Ok(())
            }
            None => bug(format!("scalar register #{} does not exist", v.0)),
        }
    }

    fn s(&self, ctx: &Ctx<'_>, e: &SExpr) -> Res<i64> {
        self.s_at(ctx, e, 0)
    }

    fn s_at(&self, ctx: &Ctx<'_>, e: &SExpr, depth: usize) -> Res<i64> {
        if depth > MAX_DEPTH {
            return bug("a scalar expression is nested too deeply");
        }
        Ok(match e {
            SExpr::Const(v) => *v,
            SExpr::Var(v) => self.reg(ctx, *v)?,
            SExpr::Core => i64::from(self.index),
            SExpr::Bin(op, a, b) => {
                let a = self.s_at(ctx, a, depth + 1)?;
                let b = self.s_at(ctx, b, depth + 1)?;
                match op {
                    SBin::Add => a.wrapping_add(b),
                    SBin::Sub => a.wrapping_sub(b),
                    SBin::Mul => a.wrapping_mul(b),
                    SBin::Div | SBin::Mod if b == 0 => {
                        return bug(format!("scalar {a} {} 0", if *op == SBin::Div { "/" } else { "%" }))
                    }
                    SBin::Div => ops::floor_div(a, b),
                    SBin::Mod => ops::floor_mod(a, b),
                    SBin::Min => a.min(b),
                    SBin::Max => a.max(b),
                    SBin::Lt => i64::from(a < b),
                    SBin::Le => i64::from(a <= b),
                    SBin::Eq => i64::from(a == b),
                }
            }
            SExpr::Read { buf, slot, index } => {
                let (bi, b) = self.buffer(ctx, *buf)?;
                if !matches!(b.dtype, DType::I32 | DType::F32) {
                    return bug(format!(
                        "the scalar unit reads buffer `{}`, which holds {} (not i32 or f32)",
                        b.name, b.dtype
                    ));
                }
                let slot = self.s_at(ctx, slot, depth + 1)?;
                let index = self.s_at(ctx, index, depth + 1)?;
                let p = self.slot_place(bi, b, slot, index, 1)?;
                let view = self.bufs.get(bi).and_then(|d| d.as_ref());
                match view.and_then(|d| ops::load(d, p.flat(0, 0).ok()?)) {
                    Some(Val::I(x)) => x,
                    // An f32 element reads as its bits (a signed 32-bit word).
                    Some(Val::F(x)) => i64::from(x.to_bits() as i32),
                    _ => return bug(format!("the scalar unit reads element {index} of {}, outside it", p.what())),
                }
            }
        })
    }

    fn buffer(&self, ctx: &Ctx<'p>, buf: BufId) -> Res<(usize, &'p kc_ir::tile::Buffer)> {
        let bi = buf.0 as usize;
        let Some(b) = ctx.launch.buffers.get(bi) else {
            return bug(format!("buffer #{bi} does not exist"));
        };
        if self.bufs.get(bi).is_none_or(|d| d.is_none()) {
            return bug(format!(
                "buffer `{}` is in {}, which {} cores do not have",
                b.name,
                b.mem.name(),
                self.kind.name()
            ));
        }
        Ok((bi, b))
    }

    fn slot_place(&self, bi: usize, b: &'p kc_ir::tile::Buffer, slot: i64, offset: i64, stride: i64) -> Res<Place<'p>> {
        if slot < 0 || slot >= i64::from(b.slots) {
            return bug(format!("slot {slot} of buffer `{}`, which has {} slots", b.name, b.slots));
        }
        let elems = b.slot_elems();
        Ok(Place {
            target: Target::Buf(bi),
            base: (slot as u64 * elems) as usize,
            limit: elems as i64,
            offset,
            stride,
            name: &b.name,
            slot: Some(slot),
            dtype: b.dtype,
        })
    }

    fn place(&self, ctx: &Ctx<'p>, gm: &[TensorData], r: &Region) -> Res<Place<'p>> {
        let offset = self.s(ctx, &r.offset)?;
        let stride = self.s(ctx, &r.row_stride)?;
        match &r.loc {
            Loc::Gm(t) => {
                let ti = t.0 as usize;
                let (Some(gt), Some(d)) = (ctx.prog.tensors.get(ti), gm.get(ti)) else {
                    return bug(format!("GM tensor #{ti} does not exist"));
                };
                Ok(Place {
                    target: Target::Gm(ti),
                    base: 0,
                    limit: d.len() as i64,
                    offset,
                    stride,
                    name: &gt.name,
                    slot: None,
                    dtype: gt.dtype,
                })
            }
            Loc::Buf { buf, slot } => {
                let (bi, b) = self.buffer(ctx, *buf)?;
                let slot = self.s(ctx, slot)?;
                self.slot_place(bi, b, slot, offset, stride)
            }
        }
    }
}

/// Checks a tile's size: not negative, and no more elements than its destination holds.
fn tile_size(rows: i64, cols: i64, dst: &Place<'_>) -> Res<(i64, i64)> {
    if rows < 0 || cols < 0 {
        return bug(format!("a tile of {rows} × {cols} elements"));
    }
    match rows.checked_mul(cols) {
        Some(n) if n <= dst.limit.max(0) => Ok((rows, cols)),
        _ => bug(format!("a {rows} × {cols} tile does not fit in {} ({} elements)", dst.what(), dst.limit)),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Vector expressions, compiled per statement (regions and scalars resolved).

#[derive(Copy, Clone)]
enum Bcast {
    Elem,
    Row,
    Col,
}

enum CV<'p> {
    Const(Val),
    Row,
    Col,
    Read(Place<'p>, Bcast),
    Unary(UnOp, Box<CV<'p>>),
    Binary(BinOp, Box<CV<'p>>, Box<CV<'p>>),
    Select(Box<CV<'p>>, Box<CV<'p>>, Box<CV<'p>>),
    Cast(DType, Box<CV<'p>>),
}

impl<'p> Core<'p> {
    fn compile(&self, ctx: &Ctx<'p>, gm: &[TensorData], e: &VExpr, depth: usize) -> Res<CV<'p>> {
        if depth > MAX_DEPTH {
            return bug("a vector expression is nested too deeply");
        }
        let sub = |e: &VExpr| self.compile(ctx, gm, e, depth + 1).map(Box::new);
        Ok(match e {
            VExpr::F32(x) => CV::Const(Val::F(*x)),
            VExpr::I32(x) => CV::Const(Val::I(*x)),
            VExpr::Bool(x) => CV::Const(Val::B(*x)),
            VExpr::Scalar(s) => CV::Const(Val::I(self.s(ctx, s)?)),
            VExpr::Row => CV::Row,
            VExpr::Col => CV::Col,
            VExpr::Read(r) => CV::Read(self.place(ctx, gm, r)?, Bcast::Elem),
            VExpr::ReadRow(r) => CV::Read(self.place(ctx, gm, r)?, Bcast::Row),
            VExpr::ReadCol(r) => CV::Read(self.place(ctx, gm, r)?, Bcast::Col),
            VExpr::Unary(op, a) => CV::Unary(*op, sub(a)?),
            VExpr::Binary(op, a, b) => CV::Binary(*op, sub(a)?, sub(b)?),
            VExpr::Select(c, a, b) => CV::Select(sub(c)?, sub(a)?, sub(b)?),
            VExpr::Cast(t, a) => CV::Cast(*t, sub(a)?),
        })
    }
}

impl CV<'_> {
    fn eval(&self, view: &View<'_>, r: i64, c: i64, span: Span) -> Res<Val> {
        Ok(match self {
            CV::Const(v) => *v,
            CV::Row => Val::I(r),
            CV::Col => Val::I(c),
            CV::Read(p, b) => match b {
                Bcast::Elem => view.get(p, r, c)?,
                Bcast::Row => view.get(p, r, 0)?,
                Bcast::Col => view.get(p, 0, c)?,
            },
            CV::Unary(op, a) => ops::unary(*op, a.eval(view, r, c, span)?).map_err(|e| op_failure(e, span))?,
            CV::Binary(op, a, b) => {
                let a = a.eval(view, r, c, span)?;
                let b = b.eval(view, r, c, span)?;
                ops::binary(*op, a, b).map_err(|e| op_failure(e, span))?
            }
            CV::Select(cond, a, b) => match cond.eval(view, r, c, span)? {
                Val::B(true) => a.eval(view, r, c, span)?,
                Val::B(false) => b.eval(view, r, c, span)?,
                v => return bug(format!("a select condition of type {}", v.ty_name())),
            },
            CV::Cast(t, a) => ops::cast(*t, a.eval(view, r, c, span)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Statements.

fn exec<'p>(
    ctx: &Ctx<'p>,
    core: &mut Core<'p>,
    gm: &mut [TensorData],
    stats: &mut LaunchStats,
    stmt: &'p Stmt,
) -> Res<()> {
    match stmt {
        Stmt::For { var, lo, hi, step, body } => {
            if *step <= 0 {
                return bug(format!("a loop with step {step} (steps must be positive)"));
            }
            let lo = core.s(ctx, lo)?;
            let hi = core.s(ctx, hi)?;
            core.set_reg(*var, lo)?;
            if lo < hi {
                core.frames.push(Frame {
                    body,
                    pc: 0,
                    lp: Some(Loop { var: var.0 as usize, cur: lo, hi, step: *step }),
                });
            }
        }
        Stmt::Set { var, value } => {
            let v = core.s(ctx, value)?;
            core.set_reg(*var, v)?;
        }
        Stmt::If { cond, then } => {
            if core.s(ctx, cond)? != 0 {
                core.frames.push(Frame { body: then, pc: 0, lp: None });
            }
        }
        Stmt::Copy { pipe, src, dst, rows, cols } => {
            let src = core.place(ctx, gm, src)?;
            let dst = core.place(ctx, gm, dst)?;
            let (rows, cols) = tile_size(core.s(ctx, rows)?, core.s(ctx, cols)?, &dst)?;
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut vals = Vec::with_capacity((rows * cols) as usize);
            for r in 0..rows {
                for c in 0..cols {
                    vals.push(view.get(&src, r, c)?);
                }
            }
            if src.dtype.compute() != dst.dtype.compute() {
                return bug(format!(
                    "a copy from {} ({}) to {} ({}): copies convert between float types only",
                    src.what(),
                    src.dtype,
                    dst.what(),
                    dst.dtype
                ));
            }
            let mut it = vals.into_iter();
            for r in 0..rows {
                for c in 0..cols {
                    let Some(v) = it.next() else { return bug("a copy ran out of values") };
                    view.put(&dst, r, c, v)?;
                }
            }
            *stats.elements.entry(*pipe).or_default() += (rows * cols) as u64;
        }
        Stmt::Gather { pipe, src, src_rows, row_stride, col_offset, index, dst, rows, cols, span, error } => {
            let ti = src.0 as usize;
            let (Some(gt), Some(sd)) = (ctx.prog.tensors.get(ti), gm.get(ti)) else {
                return bug(format!("GM tensor #{ti} does not exist"));
            };
            let col_offset = core.s(ctx, col_offset)?;
            let index = core.place(ctx, gm, index)?;
            let dst = core.place(ctx, gm, dst)?;
            let (rows, cols) = tile_size(core.s(ctx, rows)?, core.s(ctx, cols)?, &dst)?;
            if gt.dtype.compute() != dst.dtype.compute() {
                return bug(format!("a gather from `{}` ({}) into {} ({})", gt.name, gt.dtype, dst.what(), dst.dtype));
            }
            let src_place = Place {
                target: Target::Gm(ti),
                base: 0,
                limit: sd.len() as i64,
                offset: col_offset,
                stride: i64::try_from(*row_stride).unwrap_or(i64::MAX),
                name: &gt.name,
                slot: None,
                dtype: gt.dtype,
            };
            let n_rows = i64::try_from(*src_rows).unwrap_or(i64::MAX);
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut vals = Vec::with_capacity((rows * cols) as usize);
            for r in 0..rows {
                let v = match view.get(&index, r, 0)? {
                    Val::I(v) => v,
                    v => return bug(format!("a gather index of type {}", v.ty_name())),
                };
                if v < 0 || v >= n_rows {
                    let d = match error {
                        Some(e) => crate::native::gather_error(*span, e, r),
                        None => Diagnostic::error(
                            Code::IndexOutOfRange,
                            *span,
                            format!("index {v} is out of range for axis 0 of `{}` (size {src_rows})", gt.name),
                        )
                        .with_label(format!("index {v} out of 0..{src_rows}"))
                        .with_note(format!("at row {r} of the gathered tile")),
                    };
                    return Err(Box::new(Failure::Diag(d)));
                }
                for c in 0..cols {
                    vals.push(view.get(&src_place, v, c)?);
                }
            }
            let mut it = vals.into_iter();
            for r in 0..rows {
                for c in 0..cols {
                    let Some(v) = it.next() else { return bug("a gather ran out of values") };
                    view.put(&dst, r, c, v)?;
                }
            }
            *stats.elements.entry(*pipe).or_default() += (rows * cols) as u64;
        }
        Stmt::Mmad { a, b, c, m, k, n, accumulate } => {
            let a = core.place(ctx, gm, a)?;
            let b = core.place(ctx, gm, b)?;
            let cp = core.place(ctx, gm, c)?;
            let (m, k, n) = (core.s(ctx, m)?, core.s(ctx, k)?, core.s(ctx, n)?);
            let (m, n) = tile_size(m, n, &cp)?;
            let (_, k) = tile_size(m, k, &a)?;
            tile_size(k, n, &b)?;
            let mut view = View { gm, bufs: &mut core.bufs };
            let float = |v: Val, what: &str| match v {
                Val::F(x) => Ok(x),
                v => bug(format!("mmad's {what} holds {} values", v.ty_name())),
            };
            let mut av = Vec::with_capacity((m * k) as usize);
            for i in 0..m {
                for kk in 0..k {
                    av.push(float(view.get(&a, i, kk)?, "a")?);
                }
            }
            let mut bv = Vec::with_capacity((k * n) as usize);
            for kk in 0..k {
                for j in 0..n {
                    bv.push(float(view.get(&b, kk, j)?, "b")?);
                }
            }
            let (ku, nu) = (k as usize, n as usize);
            let mut out = Vec::with_capacity((m * n) as usize);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = if *accumulate { float(view.get(&cp, i, j)?, "c")? } else { 0.0 };
                    for kk in 0..ku {
                        acc += av[i as usize * ku + kk] * bv[kk * nu + j as usize];
                    }
                    out.push(acc);
                }
            }
            let mut it = out.into_iter();
            for i in 0..m {
                for j in 0..n {
                    let Some(v) = it.next() else { return bug("mmad ran out of values") };
                    view.put(&cp, i, j, Val::F(v))?;
                }
            }
            stats.macs = stats.macs.saturating_add((m as u64).saturating_mul(n as u64).saturating_mul(k as u64));
        }
        Stmt::Vector { dst, rows, cols, expr } => {
            let dst = core.place(ctx, gm, dst)?;
            let (rows, cols) = tile_size(core.s(ctx, rows)?, core.s(ctx, cols)?, &dst)?;
            let cv = core.compile(ctx, gm, expr, 0)?;
            let span = ctx.graph.span;
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut vals = Vec::with_capacity((rows * cols) as usize);
            for r in 0..rows {
                for c in 0..cols {
                    let v = cv.eval(&view, r, c, span).map_err(|f| at_element(f, format!("at element ({r}, {c})")))?;
                    vals.push(v);
                }
            }
            let mut it = vals.into_iter();
            for r in 0..rows {
                for c in 0..cols {
                    let Some(v) = it.next() else { return bug("a vector statement ran out of values") };
                    view.put(&dst, r, c, v)?;
                }
            }
            stats.vector_elements += (rows * cols) as u64;
        }
        Stmt::Reduce { op, axis, src, dst, rows, cols, accumulate } => {
            let src = core.place(ctx, gm, src)?;
            let dst = core.place(ctx, gm, dst)?;
            let (rows, cols) = (core.s(ctx, rows)?, core.s(ctx, cols)?);
            let (lines, len) = match axis {
                1 => (rows, cols),
                0 => (cols, rows),
                a => return bug(format!("a reduction along axis {a} of a 2-D tile")),
            };
            tile_size(lines, 1, &dst)?;
            if len < 0 {
                return bug(format!("a tile of {rows} × {cols} elements"));
            }
            let ty = src.dtype.compute();
            let view = View { gm, bufs: &mut core.bufs };
            // Where line `l`'s element `i` is, and where its result goes.
            let at = |l: i64, i: i64| if *axis == 1 { (l, i) } else { (i, l) };
            let out_at = |l: i64| if *axis == 1 { (l, 0) } else { (0, l) };
            let mut out = Vec::with_capacity(lines as usize);
            for l in 0..lines {
                let mut acc = if *accumulate {
                    let (r, c) = out_at(l);
                    Acc::start(*op, view.get(&dst, r, c)?)
                } else {
                    Acc::new(*op, ty)
                }
                .map_err(|e| op_failure(e, ctx.graph.span))?;
                for i in 0..len {
                    let (r, c) = at(l, i);
                    acc = acc.add(*op, ty, i, view.get(&src, r, c)?).map_err(|e| op_failure(e, ctx.graph.span))?;
                }
                out.push(acc.finish());
            }
            let mut view = view;
            for (l, v) in out.into_iter().enumerate() {
                let (r, c) = out_at(l as i64);
                view.put(&dst, r, c, v)?;
            }
            stats.vector_elements += lines as u64;
        }
        Stmt::Library { op, src, rows, cols, span } => {
            let src = core.place(ctx, gm, src)?;
            let (rows, cols) = (core.s(ctx, rows)?, core.s(ctx, cols)?);
            if rows < 0 || cols < 0 {
                return bug(format!("a tile of {rows} × {cols} elements"));
            }
            library(ctx, core, gm, stats, op, &src, rows, cols, *span)?;
        }
        Stmt::SetFlag { event, .. } | Stmt::WaitFlag { event, .. } => {
            if *event >= EVENTS {
                return bug(format!("event id {event} (ids are 0..{EVENTS})"));
            }
        }
        Stmt::Barrier { .. } => {}
        Stmt::CrossSet { flag } => {
            if *flag as usize >= CROSS_FLAGS {
                return bug(format!("cross-core flag {flag} (flags are 0..={})", CROSS_FLAGS - 1));
            }
            if ctx.partners(core.kind, core.index).is_empty() {
                return bug(format!(
                    "{} core {} sets cross-core flag {flag} but has no partner core (the launch has {} cube and {} \
                     vector cores)",
                    core.kind.name(),
                    core.index,
                    ctx.cube_cores,
                    ctx.vector_cores
                ));
            }
            core.outbox.push(*flag);
            stats.cross_sets += 1;
        }
        Stmt::CrossWait { flag } => {
            let f = *flag as usize;
            if f >= CROSS_FLAGS {
                return bug(format!("cross-core flag {flag} (flags are 0..={})", CROSS_FLAGS - 1));
            }
            // The scheduler only lets the core reach here with every partner's counter above 0.
            for row in core.flags.iter_mut() {
                match row[f].checked_sub(1) {
                    Some(n) => row[f] = n,
                    None => return bug(format!("cross-core flag {flag} taken at 0")),
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn library<'p>(
    ctx: &Ctx<'p>,
    core: &mut Core<'p>,
    gm: &mut [TensorData],
    stats: &mut LaunchStats,
    op: &'p LibOp,
    src: &Place<'p>,
    rows: i64,
    cols: i64,
    span: Span,
) -> Res<()> {
    let row_vals = |view: &View<'_>, r: i64| -> Res<Vec<Val>> { (0..cols).map(|c| view.get(src, r, c)).collect() };
    match op {
        LibOp::TopK { k, values, indices } => {
            let values = values.as_ref().map(|r| core.place(ctx, gm, r)).transpose()?;
            let indices = indices.as_ref().map(|r| core.place(ctx, gm, r)).transpose()?;
            let kk = i64::try_from(*k).unwrap_or(i64::MAX);
            if kk > cols {
                let d = Diagnostic::error(
                    Code::ArgShape,
                    span,
                    format!("topk asks for the {k} largest values of rows of {cols} elements"),
                )
                .with_label(format!("k = {k}"));
                return Err(Box::new(Failure::Diag(d)));
            }
            if values.is_none() && indices.is_none() {
                return Ok(());
            }
            for p in values.iter().chain(indices.iter()) {
                tile_size(rows, kk, p)?;
            }
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut order = Vec::new();
            let mut out = Vec::with_capacity((rows * kk) as usize);
            for r in 0..rows {
                let vals = row_vals(&view, r)?;
                ops::sort_indices(&mut order, vals.len(), |i| vals[i], true);
                out.extend(order.iter().take(kk as usize).map(|&i| (vals[i], i as i64)));
            }
            for (n, (v, i)) in out.into_iter().enumerate() {
                let (r, j) = (n as i64 / kk.max(1), n as i64 % kk.max(1));
                if let Some(p) = &values {
                    view.put(p, r, j, v)?;
                }
                if let Some(p) = &indices {
                    view.put(p, r, j, Val::I(i))?;
                }
            }
            stats.vector_elements += (rows * kk) as u64;
        }
        LibOp::ArgSort { descending, dst } => {
            let dst = core.place(ctx, gm, dst)?;
            tile_size(rows, cols, &dst)?;
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut order = Vec::new();
            let mut out = Vec::with_capacity((rows * cols) as usize);
            for r in 0..rows {
                let vals = row_vals(&view, r)?;
                ops::sort_indices(&mut order, vals.len(), |i| vals[i], *descending);
                out.extend(order.iter().map(|&i| i as i64));
            }
            for (n, i) in out.into_iter().enumerate() {
                view.put(&dst, n as i64 / cols.max(1), n as i64 % cols.max(1), Val::I(i))?;
            }
            stats.vector_elements += (rows * cols) as u64;
        }
        LibOp::CumSum { exclusive, dst, carry } => {
            let dst = core.place(ctx, gm, dst)?;
            let carry = carry.as_ref().map(|r| core.place(ctx, gm, r)).transpose()?;
            tile_size(rows, cols, &dst)?;
            if let Some(p) = &carry {
                tile_size(rows, 1, p)?;
            }
            let float = src.dtype.is_float();
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut out = Vec::with_capacity((rows * cols) as usize);
            let mut totals = Vec::with_capacity(rows as usize);
            for r in 0..rows {
                let mut acc = match &carry {
                    Some(p) => CumAcc::start(float, view.get(p, r, 0)?).map_err(|e| op_failure(e, span))?,
                    None => CumAcc::new(float),
                };
                for x in row_vals(&view, r)? {
                    if *exclusive {
                        out.push(acc.value());
                    }
                    acc.add(x);
                    if !*exclusive {
                        out.push(acc.value());
                    }
                }
                totals.push(acc.value());
            }
            for (n, v) in out.into_iter().enumerate() {
                view.put(&dst, n as i64 / cols.max(1), n as i64 % cols.max(1), v)?;
            }
            if let Some(p) = &carry {
                for (r, v) in totals.into_iter().enumerate() {
                    view.put(p, r as i64, 0, v)?;
                }
            }
            stats.vector_elements += (rows * cols) as u64;
        }
        LibOp::BinCount { n, dst } => {
            let dst = core.place(ctx, gm, dst)?;
            let nn = i64::try_from(*n).unwrap_or(i64::MAX);
            tile_size(1, nn, &dst)?;
            let mut view = View { gm, bufs: &mut core.bufs };
            let mut counts = vec![0i64; nn as usize];
            for r in 0..rows {
                for c in 0..cols {
                    let v = match view.get(src, r, c)? {
                        Val::I(v) => v,
                        v => return bug(format!("bincount of {} values", v.ty_name())),
                    };
                    match usize::try_from(v).ok().and_then(|u| counts.get_mut(u)) {
                        Some(k) => *k += 1,
                        None => {
                            let d = Diagnostic::error(
                                Code::IndexOutOfRange,
                                span,
                                format!("bincount of {} meets the value {v}, outside 0..{n}", src.what()),
                            )
                            .with_label(format!("counts values in 0..{n}"))
                            .with_note(format!("at element ({r}, {c}) of the counted tile"));
                            return Err(Box::new(Failure::Diag(d)));
                        }
                    }
                }
            }
            let mut out = Vec::with_capacity(counts.len());
            for (j, k) in counts.into_iter().enumerate() {
                match view.get(&dst, 0, j as i64)? {
                    Val::I(x) => out.push(x.wrapping_add(k)),
                    v => return bug(format!("bincount into {} values", v.ty_name())),
                }
            }
            for (j, x) in out.into_iter().enumerate() {
                view.put(&dst, 0, j as i64, Val::I(x))?;
            }
            stats.vector_elements += nn as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_ir::dim::Dim;
    use kc_ir::dtype::ScalarTy;
    use kc_ir::graph::ParamKind;
    use kc_ir::graph::{
        Const, Expr, ExprKind, IndexVar, Node, NodeKind, OutputDecl, Param, ReduceOp, Result_, TopKPart, ValueId, VarId,
    };
    use kc_ir::span::FileId;
    use kc_ir::tile::{Buffer, GmTensor, Layout, Mem, TensorId, TensorRole, Unit};

    // ----- graphs -----

    fn sp(a: usize, b: usize) -> Span {
        Span::new(FileId(0), a, b)
    }

    fn cf(x: f32) -> Expr {
        Expr::constant(Const::F32(x), sp(0, 0))
    }

    fn var(i: u32) -> Expr {
        Expr::new(ExprKind::Var(VarId(i)), ScalarTy::I32, sp(0, 0))
    }

    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(ScalarTy::F32);
        Expr::new(ExprKind::Binary(op, Box::new(a), Box::new(b)), ty, sp(30, 31))
    }

    fn un(op: UnOp, a: Expr) -> Expr {
        let ty = op.check(a.ty).unwrap_or(ScalarTy::F32);
        Expr::new(ExprKind::Unary(op, Box::new(a)), ty, sp(0, 0))
    }

    fn red(op: ReduceOp, vars: &[u32], body: Expr) -> Expr {
        let ty = op.check(body.ty).unwrap_or(ScalarTy::F32);
        let vars = vars.iter().map(|&v| VarId(v)).collect();
        Expr::new(ExprKind::Reduce { op, vars, body: Box::new(body) }, ty, sp(0, 0))
    }

    fn dims(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&n| Dim::constant(n)).collect()
    }

    /// A small graph builder.
    struct G {
        g: Graph,
    }

    impl G {
        fn new(name: &str) -> G {
            G { g: Graph { name: name.into(), span: sp(0, 1), ..Graph::default() } }
        }

        fn node(&mut self, name: &str, dtype: DType, shape: Vec<Dim>, kind: NodeKind) -> ValueId {
            self.g.nodes.push(Node { name: Some(name.into()), dtype, shape, kind, span: sp(10, 20) });
            ValueId(self.g.nodes.len() as u32 - 1)
        }

        fn param_with(&mut self, name: &str, dtype: DType, shape: Vec<Dim>, inout: bool) -> ValueId {
            for d in &shape {
                for s in d.symbols() {
                    if !self.g.dims.contains(&s) {
                        self.g.dims.push(s);
                    }
                }
            }
            let i = self.g.params.len();
            self.g.params.push(Param {
                name: name.into(),
                kind: ParamKind::Tensor { dtype, shape: shape.clone(), inout },
                span: sp(1, 2),
            });
            self.node(name, dtype, shape, NodeKind::Param(i))
        }

        fn param(&mut self, name: &str, dtype: DType, shape: Vec<Dim>) -> ValueId {
            self.param_with(name, dtype, shape, false)
        }

        fn compute(&mut self, name: &str, dtype: DType, shape: Vec<Dim>, red: Vec<Dim>, body: Expr) -> ValueId {
            let mut vars: Vec<IndexVar> =
                shape.iter().enumerate().map(|(i, x)| IndexVar { name: format!("o{i}"), extent: x.clone() }).collect();
            vars.extend(red.into_iter().enumerate().map(|(i, x)| IndexVar { name: format!("r{i}"), extent: x }));
            self.node(name, dtype, shape, NodeKind::Compute { vars, body })
        }

        fn output(&mut self, name: &str, v: ValueId) {
            let n = self.g.nodes[v.index()].clone();
            self.g.outputs.push(OutputDecl { name: name.into(), dtype: n.dtype, shape: n.shape, span: sp(3, 4) });
            self.g.results.push(Result_ { name: name.into(), value: v, inout: None });
        }

        fn load(&self, v: ValueId, idx: Vec<Expr>) -> Expr {
            let ty = self.g.nodes[v.index()].dtype.compute();
            Expr::new(ExprKind::Load { src: v, idx }, ty, sp(5, 6))
        }
    }

    // ----- tile programs -----

    fn c(v: i64) -> SExpr {
        SExpr::Const(v)
    }

    fn v(x: SVar) -> SExpr {
        SExpr::Var(x)
    }

    fn sb(op: SBin, a: SExpr, b: SExpr) -> SExpr {
        SExpr::Bin(op, Box::new(a), Box::new(b))
    }

    fn mul(a: SExpr, b: SExpr) -> SExpr {
        sb(SBin::Mul, a, b)
    }

    fn gmr(t: TensorId, offset: SExpr, stride: i64) -> Region {
        Region { loc: Loc::Gm(t), offset, row_stride: c(stride) }
    }

    fn bufr(b: BufId, slot: SExpr, offset: SExpr, stride: i64) -> Region {
        Region { loc: Loc::Buf { buf: b, slot }, offset, row_stride: c(stride) }
    }

    fn copy(pipe: Pipe, src: Region, dst: Region, rows: SExpr, cols: SExpr) -> Stmt {
        Stmt::Copy { pipe, src, dst, rows, cols }
    }

    fn for_(var: SVar, lo: SExpr, hi: SExpr, step: i64, body: Vec<Stmt>) -> Stmt {
        Stmt::For { var, lo, hi, step, body }
    }

    fn set(var: SVar, value: SExpr) -> Stmt {
        Stmt::Set { var, value }
    }

    /// A set/wait pair from one pipe to another.
    fn sync(from: Pipe, to: Pipe, event: u8) -> [Stmt; 2] {
        [Stmt::SetFlag { from, to, event }, Stmt::WaitFlag { from, to, event }]
    }

    fn vx(op: BinOp, a: VExpr, b: VExpr) -> VExpr {
        VExpr::Binary(op, Box::new(a), Box::new(b))
    }

    struct P {
        p: TileProgram,
    }

    impl P {
        fn new(kernel: &str, dims: &[(&str, i64)]) -> P {
            P {
                p: TileProgram {
                    kernel: kernel.into(),
                    target: "ascend910b".into(),
                    dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
                    tensors: vec![],
                    launches: vec![],
                },
            }
        }

        fn gm(&mut self, name: &str, dtype: DType, shape: &[u64], role: TensorRole) -> TensorId {
            self.p.tensors.push(GmTensor { name: name.into(), dtype, shape: shape.to_vec(), role });
            TensorId(self.p.tensors.len() as u32 - 1)
        }
    }

    struct L {
        l: Launch,
    }

    impl L {
        fn new(name: &str, unit: Unit, cube_cores: u32, vector_cores: u32) -> L {
            L {
                l: Launch {
                    name: name.into(),
                    unit,
                    cube_cores,
                    vector_cores,
                    buffers: vec![],
                    svars: vec![],
                    cube: vec![],
                    vector: vec![],
                },
            }
        }

        fn buf(&mut self, name: &str, mem: Mem, dtype: DType, shape: &[u64], slots: u32) -> BufId {
            let layout = match mem {
                Mem::L1 | Mem::L0C => Layout::NZ,
                Mem::L0A => Layout::ZZ,
                Mem::L0B => Layout::ZN,
                Mem::UB => Layout::ND,
            };
            self.l.buffers.push(Buffer {
                name: name.into(),
                mem,
                dtype,
                shape: shape.to_vec(),
                slots,
                layout,
                offset: 0,
            });
            BufId(self.l.buffers.len() as u32 - 1)
        }

        fn svar(&mut self, name: &str) -> SVar {
            self.l.svars.push(name.into());
            SVar(self.l.svars.len() as u32 - 1)
        }
    }

    // ----- data -----

    /// Deterministic values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn tensor(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32_as(dtype, shape.to_vec(), &values(n, seed)).unwrap()
    }

    fn args(tensors: Vec<(&str, Tensor)>) -> Args {
        Args { tensors: tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect(), dims: BTreeMap::new() }
    }

    /// The bits of every element, so that NaNs and signed zeros compare too.
    fn bits(t: &Tensor) -> Vec<u64> {
        match &t.data {
            TensorData::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
            TensorData::BF16(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
            TensorData::F16(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as u32 as u64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| u64::from(x)).collect(),
        }
    }

    /// Whether two argument sets are the same, bit for bit (NaNs included).
    fn same_args(a: &Args, b: &Args) -> bool {
        a.dims == b.dims
            && a.tensors.len() == b.tensors.len()
            && a.tensors.iter().zip(&b.tensors).all(|((an, at), (bn, bt))| {
                an == bn && at.shape == bt.shape && at.dtype() == bt.dtype() && bits(at) == bits(bt)
            })
    }

    /// Runs both executors and checks that they agree bit for bit; returns the results.
    fn same(prog: &TileProgram, graph: &Graph, a: &Args) -> Vec<(String, Tensor)> {
        let before = a.clone();
        let want = kc_ir::interp::run(graph, a).unwrap_or_else(|e| panic!("interpreter failed: {e:?}"));
        let (got, _) =
            run_with(prog, graph, a, &Limits::default()).unwrap_or_else(|e| panic!("simulator failed: {e:?}"));
        assert!(same_args(a, &before), "the arguments were modified");
        assert_eq!(got.len(), want.len());
        for ((gn, gt), (wn, wt)) in got.iter().zip(want.iter()) {
            assert_eq!(gn, wn);
            assert_eq!(gt.shape, wt.shape, "shape of `{gn}`");
            assert_eq!(gt.dtype(), wt.dtype(), "dtype of `{gn}`");
            let (g, w) = (bits(gt), bits(wt));
            if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
                panic!("`{gn}` differs at flat {i}: sim {} vs interp {}", gt.get_f64(i), wt.get_f64(i));
            }
        }
        got
    }

    fn sim_err(prog: &TileProgram, graph: &Graph, a: &Args) -> Diagnostic {
        let before = a.clone();
        let r = run(prog, graph, a);
        assert!(same_args(a, &before), "the arguments were modified");
        match r {
            Ok(_) => panic!("expected an error"),
            Err(mut e) => {
                assert_eq!(e.len(), 1, "{e:?}");
                e.remove(0)
            }
        }
    }

    // ----- (1) elementwise -----

    /// `y[i, j] = x[i, j] * w[j] + 1` in bf16 over [37, 70], tiles of `tr` rows, 2 slots, on 3 vector cores.
    fn elementwise(tr: i64) -> (TileProgram, Graph) {
        let (m, n, cores) = (37i64, 70i64, 3i64);
        let mut g = G::new("axpb");
        let x = g.param("x", DType::BF16, vec![Dim::sym("M"), Dim::sym("N")]);
        let w = g.param("w", DType::BF16, vec![Dim::sym("N")]);
        let body = bin(BinOp::Add, bin(BinOp::Mul, g.load(x, vec![var(0), var(1)]), g.load(w, vec![var(1)])), cf(1.0));
        let y = g.compute("y", DType::BF16, vec![Dim::sym("M"), Dim::sym("N")], vec![], body);
        g.output("y", y);

        let mut p = P::new("axpb", &[("M", m), ("N", n)]);
        let xt = p.gm("x", DType::BF16, &[m as u64, n as u64], TensorRole::Param(0));
        let wt = p.gm("w", DType::BF16, &[n as u64], TensorRole::Param(1));
        let yt = p.gm("y", DType::BF16, &[m as u64, n as u64], TensorRole::Output(0));
        let mut l = L::new("axpb", Unit::Vector, 0, cores as u32);
        let xb = l.buf("xb", Mem::UB, DType::BF16, &[tr as u64, n as u64], 2);
        let wb = l.buf("wb", Mem::UB, DType::BF16, &[1, n as u64], 1);
        let yb = l.buf("yb", Mem::UB, DType::BF16, &[tr as u64, n as u64], 2);
        let t = l.svar("t");
        let s = l.svar("s");
        let rows = l.svar("rows");
        let mut body = vec![
            // s = ((t - core * tr) / (cores * tr)) % 2
            set(s, sb(SBin::Mod, sb(SBin::Div, sb(SBin::Sub, v(t), mul(SExpr::Core, c(tr))), c(cores * tr)), c(2))),
            set(rows, sb(SBin::Min, c(tr), sb(SBin::Sub, c(m), v(t)))),
            copy(Pipe::Mte2, gmr(xt, mul(v(t), c(n)), n), bufr(xb, v(s), c(0), n), v(rows), c(n)),
        ];
        body.extend(sync(Pipe::Mte2, Pipe::V, 1));
        body.push(Stmt::Vector {
            dst: bufr(yb, v(s), c(0), n),
            rows: v(rows),
            cols: c(n),
            expr: vx(
                BinOp::Add,
                vx(BinOp::Mul, VExpr::Read(bufr(xb, v(s), c(0), n)), VExpr::ReadCol(bufr(wb, c(0), c(0), n))),
                VExpr::F32(1.0),
            ),
        });
        body.extend(sync(Pipe::V, Pipe::Mte3, 2));
        body.push(copy(Pipe::Mte3, bufr(yb, v(s), c(0), n), gmr(yt, mul(v(t), c(n)), n), v(rows), c(n)));
        let mut prog = vec![copy(Pipe::Mte2, gmr(wt, c(0), 0), bufr(wb, c(0), c(0), n), c(1), c(n))];
        prog.extend(sync(Pipe::Mte2, Pipe::V, 0));
        prog.push(for_(t, mul(SExpr::Core, c(tr)), c(m), cores * tr, body));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn elementwise_bf16_tiles_match_the_interpreter() {
        let a = args(vec![("x", tensor(DType::BF16, &[37, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]);
        for tr in [16, 5, 37] {
            let (prog, g) = elementwise(tr);
            let (r, stats) = run_with(&prog, &g, &a, &Limits::default()).unwrap();
            assert_eq!(r[0].1.shape, vec![37, 70]);
            assert_eq!(stats.launches[0].vector_elements, 37 * 70);
            assert_eq!(stats.launches[0].elements[&Pipe::Mte3], 37 * 70);
            same(&prog, &g, &a);
        }
    }

    #[test]
    fn dims_other_than_the_compiled_ones_are_refused() {
        let (prog, g) = elementwise(16);
        let a = args(vec![("x", tensor(DType::BF16, &[36, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]);
        let e = sim_err(&prog, &g, &a);
        assert_eq!(e.code, Code::ArgShape);
        assert!(e.message.contains("`M` = 37") && e.message.contains("`M` = 36"), "{}", e.message);
        // Launch errors come from `bind`, as in the interpreter.
        let e = sim_err(&prog, &g, &args(vec![("x", tensor(DType::BF16, &[37, 70], 1))]));
        assert_eq!(e.code, Code::MissingArg);
        let e = sim_err(
            &prog,
            &g,
            &args(vec![("x", tensor(DType::F32, &[37, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]),
        );
        assert_eq!(e.code, Code::ArgDType);
    }

    // ----- (2) matmul -----

    /// `out = a @ b`, bf16 [33, 40] × [40, 17] → bf16, on 2 cube cores splitting the rows; k in 2 steps.
    fn matmul() -> (TileProgram, Graph) {
        let (m, k, n, mr) = (33i64, 40i64, 17i64, 17i64);
        let mut g = G::new("mm");
        let a = g.param("a", DType::BF16, dims(&[m, k]));
        let b = g.param("b", DType::BF16, dims(&[k, n]));
        let body =
            red(ReduceOp::Sum, &[2], bin(BinOp::Mul, g.load(a, vec![var(0), var(2)]), g.load(b, vec![var(2), var(1)])));
        let o = g.compute("out", DType::BF16, dims(&[m, n]), dims(&[k]), body);
        g.output("out", o);

        let mut p = P::new("mm", &[]);
        let at = p.gm("a", DType::BF16, &[m as u64, k as u64], TensorRole::Param(0));
        let bt = p.gm("b", DType::BF16, &[k as u64, n as u64], TensorRole::Param(1));
        let ot = p.gm("out", DType::BF16, &[m as u64, n as u64], TensorRole::Output(0));
        let mut l = L::new("mm", Unit::Cube, 2, 0);
        let kstep = k / 2;
        let a1 = l.buf("a1", Mem::L1, DType::BF16, &[mr as u64, k as u64], 1);
        let b1 = l.buf("b1", Mem::L1, DType::BF16, &[k as u64, n as u64], 1);
        let a0 = l.buf("a0", Mem::L0A, DType::BF16, &[mr as u64, kstep as u64], 2);
        let b0 = l.buf("b0", Mem::L0B, DType::BF16, &[kstep as u64, n as u64], 2);
        let c0 = l.buf("c0", Mem::L0C, DType::F32, &[mr as u64, n as u64], 1);
        let m0 = l.svar("m0");
        let rows = l.svar("rows");
        let mut cube = vec![
            set(m0, mul(SExpr::Core, c(mr))),
            set(rows, sb(SBin::Min, c(mr), sb(SBin::Sub, c(m), v(m0)))),
            copy(Pipe::Mte2, gmr(at, mul(v(m0), c(k)), k), bufr(a1, c(0), c(0), k), v(rows), c(k)),
            copy(Pipe::Mte2, gmr(bt, c(0), n), bufr(b1, c(0), c(0), n), c(k), c(n)),
        ];
        cube.extend(sync(Pipe::Mte2, Pipe::Mte1, 0));
        for step in 0..2 {
            let kk = step * kstep;
            cube.push(copy(Pipe::Mte1, bufr(a1, c(0), c(kk), k), bufr(a0, c(step), c(0), kstep), v(rows), c(kstep)));
            cube.push(copy(Pipe::Mte1, bufr(b1, c(0), c(kk * n), n), bufr(b0, c(step), c(0), n), c(kstep), c(n)));
            cube.extend(sync(Pipe::Mte1, Pipe::M, step as u8));
            cube.push(Stmt::Mmad {
                a: bufr(a0, c(step), c(0), kstep),
                b: bufr(b0, c(step), c(0), n),
                c: bufr(c0, c(0), c(0), n),
                m: v(rows),
                k: c(kstep),
                n: c(n),
                accumulate: step > 0,
            });
        }
        cube.extend(sync(Pipe::M, Pipe::Fix, 0));
        cube.push(copy(Pipe::Fix, bufr(c0, c(0), c(0), n), gmr(ot, mul(v(m0), c(n)), n), v(rows), c(n)));
        l.l.cube = cube;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn matmul_bf16_split_k_matches_the_interpreter() {
        let (prog, g) = matmul();
        let a = args(vec![("a", tensor(DType::BF16, &[33, 40], 3)), ("b", tensor(DType::BF16, &[40, 17], 4))]);
        same(&prog, &g, &a);
        let (_, stats) = run_with(&prog, &g, &a, &Limits::default()).unwrap();
        assert_eq!(stats.launches[0].macs, 33 * 40 * 17);
        assert_eq!(stats.launches[0].elements[&Pipe::Fix], 33 * 17);
    }

    // ----- (3) softmax -----

    /// A row softmax over f32 [9, 50] on 4 vector cores, 2 rows per tile.
    fn softmax() -> (TileProgram, Graph) {
        let (m, n, tr, cores) = (9i64, 50i64, 2i64, 4i64);
        let mut g = G::new("softmax");
        let x = g.param("x", DType::F32, dims(&[m, n]));
        let mx = red(ReduceOp::Max, &[1], g.load(x, vec![var(0), var(1)]));
        let mxv = g.compute("m", DType::F32, dims(&[m]), dims(&[n]), mx);
        let e = un(UnOp::Exp, bin(BinOp::Sub, g.load(x, vec![var(0), var(1)]), g.load(mxv, vec![var(0)])));
        let ev = g.compute("e", DType::F32, dims(&[m, n]), vec![], e);
        let s = red(ReduceOp::Sum, &[1], g.load(ev, vec![var(0), var(1)]));
        let sv = g.compute("s", DType::F32, dims(&[m]), dims(&[n]), s);
        let y = bin(BinOp::Div, g.load(ev, vec![var(0), var(1)]), g.load(sv, vec![var(0)]));
        let yv = g.compute("y", DType::F32, dims(&[m, n]), vec![], y);
        g.output("y", yv);

        let mut p = P::new("softmax", &[]);
        let xt = p.gm("x", DType::F32, &[m as u64, n as u64], TensorRole::Param(0));
        let yt = p.gm("y", DType::F32, &[m as u64, n as u64], TensorRole::Output(0));
        let mut l = L::new("softmax", Unit::Vector, 0, cores as u32);
        let xb = l.buf("xb", Mem::UB, DType::F32, &[tr as u64, n as u64], 1);
        let mb = l.buf("mb", Mem::UB, DType::F32, &[tr as u64, 1], 1);
        let eb = l.buf("eb", Mem::UB, DType::F32, &[tr as u64, n as u64], 1);
        let sbuf = l.buf("sb", Mem::UB, DType::F32, &[tr as u64, 1], 1);
        let t = l.svar("t");
        let rows = l.svar("rows");
        let xr = || bufr(xb, c(0), c(0), n);
        let er = || bufr(eb, c(0), c(0), n);
        let mut body = vec![
            set(rows, sb(SBin::Min, c(tr), sb(SBin::Sub, c(m), v(t)))),
            copy(Pipe::Mte2, gmr(xt, mul(v(t), c(n)), n), xr(), v(rows), c(n)),
        ];
        body.extend(sync(Pipe::Mte2, Pipe::V, 0));
        body.push(Stmt::Reduce {
            op: ReduceOp::Max,
            axis: 1,
            src: xr(),
            dst: bufr(mb, c(0), c(0), 1),
            rows: v(rows),
            cols: c(n),
            accumulate: false,
        });
        body.push(Stmt::Barrier { pipe: Pipe::V });
        body.push(Stmt::Vector {
            dst: er(),
            rows: v(rows),
            cols: c(n),
            expr: VExpr::Unary(
                UnOp::Exp,
                Box::new(vx(BinOp::Sub, VExpr::Read(xr()), VExpr::ReadRow(bufr(mb, c(0), c(0), 1)))),
            ),
        });
        body.push(Stmt::Barrier { pipe: Pipe::V });
        body.push(Stmt::Reduce {
            op: ReduceOp::Sum,
            axis: 1,
            src: er(),
            dst: bufr(sbuf, c(0), c(0), 1),
            rows: v(rows),
            cols: c(n),
            accumulate: false,
        });
        body.push(Stmt::Barrier { pipe: Pipe::V });
        // y goes back into x's buffer.
        body.push(Stmt::Vector {
            dst: xr(),
            rows: v(rows),
            cols: c(n),
            expr: vx(BinOp::Div, VExpr::Read(er()), VExpr::ReadRow(bufr(sbuf, c(0), c(0), 1))),
        });
        body.extend(sync(Pipe::V, Pipe::Mte3, 0));
        body.push(copy(Pipe::Mte3, xr(), gmr(yt, mul(v(t), c(n)), n), v(rows), c(n)));
        body.extend(sync(Pipe::Mte3, Pipe::Mte2, 0));
        l.l.vector = vec![for_(t, mul(SExpr::Core, c(tr)), c(m), cores * tr, body)];
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn softmax_matches_the_interpreter() {
        let (prog, g) = softmax();
        let mut x = tensor(DType::F32, &[9, 50], 5);
        if let TensorData::F32(v) = &mut x.data {
            v[3] = f32::NAN; // row 0 becomes NaN everywhere, in both
            v[60] = 80.0; // a large value in row 1
        }
        let r = same(&prog, &g, &args(vec![("x", x)]));
        assert!(r[0].1.get_f64(0).is_nan());
    }

    #[test]
    fn split_reductions_accumulate_bit_identically() {
        // Row sums of [3, 50] in column tiles of 16, accumulating into dst, and a column max (axis 0).
        let (m, n, tc) = (3i64, 50i64, 16i64);
        let mut g = G::new("rowsum");
        let x = g.param("x", DType::F32, dims(&[m, n]));
        let s = g.compute(
            "s",
            DType::F32,
            dims(&[m]),
            dims(&[n]),
            red(ReduceOp::Sum, &[1], g.load(x, vec![var(0), var(1)])),
        );
        g.output("s", s);
        let cm = g.compute(
            "cm",
            DType::F32,
            dims(&[n]),
            dims(&[m]),
            red(ReduceOp::Max, &[1], g.load(x, vec![var(1), var(0)])),
        );
        g.output("cm", cm);
        let am = g.compute(
            "am",
            DType::I32,
            dims(&[m]),
            dims(&[n]),
            red(ReduceOp::ArgMin, &[1], g.load(x, vec![var(0), var(1)])),
        );
        g.output("am", am);

        let mut p = P::new("rowsum", &[]);
        let xt = p.gm("x", DType::F32, &[m as u64, n as u64], TensorRole::Param(0));
        let st = p.gm("s", DType::F32, &[m as u64], TensorRole::Output(0));
        let cmt = p.gm("cm", DType::F32, &[n as u64], TensorRole::Output(1));
        let amt = p.gm("am", DType::I32, &[m as u64], TensorRole::Output(2));
        let mut l = L::new("rowsum", Unit::Vector, 0, 1);
        let xb = l.buf("xb", Mem::UB, DType::F32, &[m as u64, n as u64], 1);
        let sbuf = l.buf("sb", Mem::UB, DType::F32, &[m as u64, 1], 1);
        let cb = l.buf("cb", Mem::UB, DType::F32, &[1, n as u64], 1);
        let ab = l.buf("ab", Mem::UB, DType::I32, &[m as u64, 1], 1);
        let j = l.svar("j");
        let mut prog = vec![copy(Pipe::Mte2, gmr(xt, c(0), n), bufr(xb, c(0), c(0), n), c(m), c(n))];
        prog.extend(sync(Pipe::Mte2, Pipe::V, 0));
        prog.push(Stmt::Vector { dst: bufr(sbuf, c(0), c(0), 1), rows: c(m), cols: c(1), expr: VExpr::F32(0.0) });
        prog.push(for_(
            j,
            c(0),
            c(n),
            tc,
            vec![Stmt::Reduce {
                op: ReduceOp::Sum,
                axis: 1,
                src: bufr(xb, c(0), v(j), n),
                dst: bufr(sbuf, c(0), c(0), 1),
                rows: c(m),
                cols: sb(SBin::Min, c(tc), sb(SBin::Sub, c(n), v(j))),
                accumulate: true,
            }],
        ));
        prog.push(Stmt::Reduce {
            op: ReduceOp::Max,
            axis: 0,
            src: bufr(xb, c(0), c(0), n),
            dst: bufr(cb, c(0), c(0), n),
            rows: c(m),
            cols: c(n),
            accumulate: false,
        });
        prog.push(Stmt::Reduce {
            op: ReduceOp::ArgMin,
            axis: 1,
            src: bufr(xb, c(0), c(0), n),
            dst: bufr(ab, c(0), c(0), 1),
            rows: c(m),
            cols: c(n),
            accumulate: false,
        });
        prog.extend(sync(Pipe::V, Pipe::Mte3, 0));
        prog.push(copy(Pipe::Mte3, bufr(sbuf, c(0), c(0), 1), gmr(st, c(0), 1), c(m), c(1)));
        prog.push(copy(Pipe::Mte3, bufr(cb, c(0), c(0), n), gmr(cmt, c(0), n), c(1), c(n)));
        prog.push(copy(Pipe::Mte3, bufr(ab, c(0), c(0), 1), gmr(amt, c(0), 1), c(m), c(1)));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        let mut x = tensor(DType::F32, &[3, 50], 9);
        if let TensorData::F32(v) = &mut x.data {
            v[7] = 1e7;
            v[8] = -1e7; // cancellation makes the order of the sum visible
            v[60] = -5.0;
            v[61] = -5.0; // a tie: the first index wins
        }
        same(&p.p, &g.g, &args(vec![("x", x)]));
    }

    // ----- (4) gather -----

    /// `y[r, m] = x[idx[r], m]`: x f32 [10, 6], idx i32 [5], on 1 vector core.
    fn gather() -> (TileProgram, Graph) {
        let (rows, n, cols) = (10i64, 5i64, 6i64);
        let mut g = G::new("gather");
        let x = g.param("x", DType::F32, dims(&[rows, cols]));
        let idx = g.param("idx", DType::I32, dims(&[n]));
        let body = g.load(x, vec![g.load(idx, vec![var(0)]), var(1)]);
        let y = g.compute("y", DType::F32, dims(&[n, cols]), vec![], body);
        g.output("y", y);

        let mut p = P::new("gather", &[]);
        let xt = p.gm("x", DType::F32, &[rows as u64, cols as u64], TensorRole::Param(0));
        let it = p.gm("idx", DType::I32, &[n as u64], TensorRole::Param(1));
        let yt = p.gm("y", DType::F32, &[n as u64, cols as u64], TensorRole::Output(0));
        let mut l = L::new("gather", Unit::Vector, 0, 1);
        let ib = l.buf("ib", Mem::UB, DType::I32, &[8], 1);
        let yb = l.buf("yb", Mem::UB, DType::F32, &[n as u64, 8], 1);
        let mut prog = vec![copy(Pipe::Mte2, gmr(it, c(0), 1), bufr(ib, c(0), c(0), 1), c(n), c(1))];
        prog.extend(sync(Pipe::Mte2, Pipe::S, 0));
        prog.push(Stmt::Gather {
            pipe: Pipe::Mte2,
            src: xt,
            src_rows: rows as u64,
            row_stride: cols as u64,
            col_offset: c(0),
            index: bufr(ib, c(0), c(0), 1),
            dst: bufr(yb, c(0), c(0), 8),
            rows: c(n),
            cols: c(cols),
            span: sp(70, 80),
            error: None,
        });
        prog.extend(sync(Pipe::Mte2, Pipe::Mte3, 0));
        prog.push(copy(Pipe::Mte3, bufr(yb, c(0), c(0), 8), gmr(yt, c(0), cols), c(n), c(cols)));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn gather_matches_and_reports_bad_indices() {
        let (prog, g) = gather();
        let x = tensor(DType::F32, &[10, 6], 11);
        let ok = args(vec![("x", x.clone()), ("idx", Tensor::from_i32(vec![5], vec![9, 0, 3, 3, 7]).unwrap())]);
        same(&prog, &g, &ok);
        let bad = args(vec![("x", x), ("idx", Tensor::from_i32(vec![5], vec![1, 2, 12, 0, -1]).unwrap())]);
        let e = sim_err(&prog, &g, &bad);
        assert_eq!(e.code, Code::IndexOutOfRange);
        assert_eq!(e.primary.span, sp(70, 80));
        assert!(e.message.contains("index 12") && e.message.contains("`x`"), "{}", e.message);
        let ie = kc_ir::interp::run(&g, &bad).unwrap_err();
        assert_eq!(ie[0].code, Code::IndexOutOfRange);
        assert!(ie[0].message.contains("index 12"));
    }

    // ----- (5) mixed launch, cross-core flags -----

    /// `c = a @ b` (f32 [4, 8] × [8, 6]) on 1 cube core into a GM workspace; 2 vector cores wait for it,
    /// compute `y = relu(c) + 1` for 2 rows each and signal back; the cube waits `acks` times (each wait
    /// takes one signal from each of its vector cores).
    fn mixed(vector_wait_flag: u8, acks: usize) -> (TileProgram, Graph) {
        let (m, k, n) = (4i64, 8i64, 6i64);
        let mut g = G::new("mixed");
        let a = g.param("a", DType::F32, dims(&[m, k]));
        let b = g.param("b", DType::F32, dims(&[k, n]));
        let body =
            red(ReduceOp::Sum, &[2], bin(BinOp::Mul, g.load(a, vec![var(0), var(2)]), g.load(b, vec![var(2), var(1)])));
        let cv = g.compute("c", DType::F32, dims(&[m, n]), dims(&[k]), body);
        let y = bin(BinOp::Add, un(UnOp::Relu, g.load(cv, vec![var(0), var(1)])), cf(1.0));
        let yv = g.compute("y", DType::F32, dims(&[m, n]), vec![], y);
        g.output("y", yv);

        let mut p = P::new("mixed", &[]);
        let at = p.gm("a", DType::F32, &[m as u64, k as u64], TensorRole::Param(0));
        let bt = p.gm("b", DType::F32, &[k as u64, n as u64], TensorRole::Param(1));
        let yt = p.gm("y", DType::F32, &[m as u64, n as u64], TensorRole::Output(0));
        let ws =
            p.gm("ws", DType::F32, &[], TensorRole::Workspace { per_core: (m * n * 4) as u64, unit_private: false });
        let mut l = L::new("mixed", Unit::Mixed, 1, 2);
        let a1 = l.buf("a1", Mem::L1, DType::F32, &[m as u64, k as u64], 1);
        let b1 = l.buf("b1", Mem::L1, DType::F32, &[k as u64, n as u64], 1);
        let a0 = l.buf("a0", Mem::L0A, DType::F32, &[m as u64, k as u64], 1);
        let b0 = l.buf("b0", Mem::L0B, DType::F32, &[k as u64, n as u64], 1);
        let c0 = l.buf("c0", Mem::L0C, DType::F32, &[m as u64, n as u64], 1);
        let ub = l.buf("ub", Mem::UB, DType::F32, &[2, n as u64], 1);
        let r0 = l.svar("r0");
        let mut cube = vec![
            copy(Pipe::Mte2, gmr(at, c(0), k), bufr(a1, c(0), c(0), k), c(m), c(k)),
            copy(Pipe::Mte2, gmr(bt, c(0), n), bufr(b1, c(0), c(0), n), c(k), c(n)),
        ];
        cube.extend(sync(Pipe::Mte2, Pipe::Mte1, 0));
        cube.push(copy(Pipe::Mte1, bufr(a1, c(0), c(0), k), bufr(a0, c(0), c(0), k), c(m), c(k)));
        cube.push(copy(Pipe::Mte1, bufr(b1, c(0), c(0), n), bufr(b0, c(0), c(0), n), c(k), c(n)));
        cube.extend(sync(Pipe::Mte1, Pipe::M, 0));
        cube.push(Stmt::Mmad {
            a: bufr(a0, c(0), c(0), k),
            b: bufr(b0, c(0), c(0), n),
            c: bufr(c0, c(0), c(0), n),
            m: c(m),
            k: c(k),
            n: c(n),
            accumulate: false,
        });
        cube.extend(sync(Pipe::M, Pipe::Fix, 0));
        cube.push(copy(Pipe::Fix, bufr(c0, c(0), c(0), n), gmr(ws, mul(SExpr::Core, c(m * n)), n), c(m), c(n)));
        cube.push(Stmt::CrossSet { flag: 0 });
        for _ in 0..acks {
            cube.push(Stmt::CrossWait { flag: 2 });
        }
        let mut vector = vec![
            Stmt::CrossWait { flag: vector_wait_flag },
            set(r0, mul(SExpr::Core, c(2))),
            copy(Pipe::Mte2, gmr(ws, mul(v(r0), c(n)), n), bufr(ub, c(0), c(0), n), c(2), c(n)),
        ];
        vector.extend(sync(Pipe::Mte2, Pipe::V, 0));
        vector.push(Stmt::Vector {
            dst: bufr(ub, c(0), c(0), n),
            rows: c(2),
            cols: c(n),
            expr: vx(
                BinOp::Add,
                VExpr::Unary(UnOp::Relu, Box::new(VExpr::Read(bufr(ub, c(0), c(0), n)))),
                VExpr::F32(1.0),
            ),
        });
        vector.extend(sync(Pipe::V, Pipe::Mte3, 0));
        vector.push(copy(Pipe::Mte3, bufr(ub, c(0), c(0), n), gmr(yt, mul(v(r0), c(n)), n), c(2), c(n)));
        vector.push(Stmt::CrossSet { flag: 2 });
        l.l.cube = cube;
        l.l.vector = vector;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn mixed_launch_hands_off_through_a_workspace() {
        // One wait of the cube core takes the acknowledgement of each of its two vector cores.
        let (prog, g) = mixed(0, 1);
        let a = args(vec![("a", tensor(DType::F32, &[4, 8], 21)), ("b", tensor(DType::F32, &[8, 6], 22))]);
        same(&prog, &g, &a);
        let (_, stats) = run_with(&prog, &g, &a, &Limits::default()).unwrap();
        assert_eq!(stats.launches[0].cross_sets, 3);
        assert_eq!(stats.launches[0].max_cross_count, 1);
    }

    #[test]
    fn deadlocks_are_reported_not_hung() {
        let a = args(vec![("a", tensor(DType::F32, &[4, 8], 21)), ("b", tensor(DType::F32, &[8, 6], 22))]);
        // The vector cores wait for a flag nobody sets.
        let (prog, g) = mixed(1, 1);
        let e = sim_err(&prog, &g, &a);
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.contains("deadlock") && e.message.contains("`mixed`"), "{}", e.message);
        assert!(e.message.contains("vector core 0 waits for cross-core flag 1"), "{}", e.message);
        assert!(e.message.contains("cube core 0 waits for cross-core flag 2"), "{}", e.message);
        // The cube waits twice, but each of its vector cores acknowledges once.
        let (prog, g) = mixed(0, 2);
        let e = sim_err(&prog, &g, &a);
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.contains("cube core 0 waits for cross-core flag 2"), "{}", e.message);
        assert!(!e.message.contains("vector core"), "{}", e.message);
    }

    #[test]
    fn cross_set_without_a_partner_is_internal() {
        let (mut prog, g) = elementwise(16);
        prog.launches[0].vector.insert(0, Stmt::CrossSet { flag: 3 });
        let a = args(vec![("x", tensor(DType::BF16, &[37, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]);
        let e = sim_err(&prog, &g, &a);
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.contains("no partner"), "{}", e.message);
    }

    // ----- (6) library operations -----

    /// topk (values and indices, k = 3), argsort (descending) and an inclusive cumsum along the rows of f32
    /// [5, 12]; the cumsum runs in column tiles of 5 with a carry.
    fn library_ops(exclusive: bool) -> (TileProgram, Graph) {
        let (m, n, k, tc) = (5i64, 12i64, 3i64, 5i64);
        let mut g = G::new("lib");
        let x = g.param("x", DType::F32, dims(&[m, n]));
        let kd = Dim::constant(k);
        let tv = g.node(
            "tv",
            DType::F32,
            dims(&[m, k]),
            NodeKind::TopK { src: x, k: kd.clone(), axis: 1, part: TopKPart::Values },
        );
        let ti =
            g.node("ti", DType::I32, dims(&[m, k]), NodeKind::TopK { src: x, k: kd, axis: 1, part: TopKPart::Indices });
        let cs = g.node("cs", DType::F32, dims(&[m, n]), NodeKind::CumSum { src: x, axis: 1, exclusive });
        let so = g.node("so", DType::I32, dims(&[m, n]), NodeKind::ArgSort { src: x, axis: 1, descending: true });
        g.output("tv", tv);
        g.output("ti", ti);
        g.output("cs", cs);
        g.output("so", so);

        let mut p = P::new("lib", &[]);
        let xt = p.gm("x", DType::F32, &[m as u64, n as u64], TensorRole::Param(0));
        let tvt = p.gm("tv", DType::F32, &[m as u64, k as u64], TensorRole::Output(0));
        let tit = p.gm("ti", DType::I32, &[m as u64, k as u64], TensorRole::Output(1));
        let cst = p.gm("cs", DType::F32, &[m as u64, n as u64], TensorRole::Output(2));
        let sot = p.gm("so", DType::I32, &[m as u64, n as u64], TensorRole::Output(3));
        let mut l = L::new("lib", Unit::Vector, 0, 1);
        let xb = l.buf("xb", Mem::UB, DType::F32, &[m as u64, n as u64], 1);
        let vb = l.buf("vb", Mem::UB, DType::F32, &[m as u64, k as u64], 1);
        let ib = l.buf("ib", Mem::UB, DType::I32, &[m as u64, k as u64], 1);
        let cb = l.buf("cb", Mem::UB, DType::F32, &[m as u64, n as u64], 1);
        let carry = l.buf("carry", Mem::UB, DType::F32, &[m as u64, 1], 1);
        let ob = l.buf("ob", Mem::UB, DType::I32, &[m as u64, n as u64], 1);
        let j = l.svar("j");
        let xr = |off: SExpr| bufr(xb, c(0), off, n);
        let mut prog = vec![copy(Pipe::Mte2, gmr(xt, c(0), n), xr(c(0)), c(m), c(n))];
        prog.extend(sync(Pipe::Mte2, Pipe::S, 0));
        prog.push(Stmt::Library {
            op: LibOp::TopK {
                k: k as u64,
                values: Some(bufr(vb, c(0), c(0), k)),
                indices: Some(bufr(ib, c(0), c(0), k)),
            },
            src: xr(c(0)),
            rows: c(m),
            cols: c(n),
            span: sp(90, 95),
        });
        prog.push(Stmt::Library {
            op: LibOp::ArgSort { descending: true, dst: bufr(ob, c(0), c(0), n) },
            src: xr(c(0)),
            rows: c(m),
            cols: c(n),
            span: sp(90, 95),
        });
        prog.push(Stmt::Vector { dst: bufr(carry, c(0), c(0), 1), rows: c(m), cols: c(1), expr: VExpr::F32(0.0) });
        prog.push(for_(
            j,
            c(0),
            c(n),
            tc,
            vec![Stmt::Library {
                op: LibOp::CumSum { exclusive, dst: bufr(cb, c(0), v(j), n), carry: Some(bufr(carry, c(0), c(0), 1)) },
                src: xr(v(j)),
                rows: c(m),
                cols: sb(SBin::Min, c(tc), sb(SBin::Sub, c(n), v(j))),
                span: sp(90, 95),
            }],
        ));
        prog.extend(sync(Pipe::S, Pipe::Mte3, 0));
        prog.push(copy(Pipe::Mte3, bufr(vb, c(0), c(0), k), gmr(tvt, c(0), k), c(m), c(k)));
        prog.push(copy(Pipe::Mte3, bufr(ib, c(0), c(0), k), gmr(tit, c(0), k), c(m), c(k)));
        prog.push(copy(Pipe::Mte3, bufr(cb, c(0), c(0), n), gmr(cst, c(0), n), c(m), c(n)));
        prog.push(copy(Pipe::Mte3, bufr(ob, c(0), c(0), n), gmr(sot, c(0), n), c(m), c(n)));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn topk_argsort_and_cumsum_match_the_interpreter() {
        let mut x = tensor(DType::F32, &[5, 12], 31);
        if let TensorData::F32(v) = &mut x.data {
            // Ties (the lower index first), a NaN (largest), infinities and signed zeros.
            v[1] = 1.5;
            v[4] = 1.5;
            v[9] = 1.5;
            v[13] = f32::NAN;
            v[20] = f32::INFINITY;
            v[26] = f32::NEG_INFINITY;
            v[36] = -0.0;
            v[37] = 0.0;
            v[50] = 1e8;
            v[51] = 1.0;
            v[52] = -1e8;
        }
        let a = args(vec![("x", x)]);
        for exclusive in [false, true] {
            let (prog, g) = library_ops(exclusive);
            let r = same(&prog, &g, &a);
            assert_eq!(&bits(&r[1].1)[..3], &[1, 4, 9]);
        }
    }

    #[test]
    fn topk_with_k_above_the_row_is_arg_shape() {
        let (mut prog, g) = library_ops(false);
        if let Stmt::Library { op: LibOp::TopK { k, .. }, .. } = &mut prog.launches[0].vector[3] {
            *k = 13;
        } else {
            panic!("statement 3 is not the topk");
        }
        let e = sim_err(&prog, &g, &args(vec![("x", tensor(DType::F32, &[5, 12], 31))]));
        assert_eq!(e.code, Code::ArgShape);
        assert_eq!(e.primary.span, sp(90, 95));
    }

    /// `counts = bincount(v, 7)` for i32 [20], on 1 vector core, counted in 2 tiles of 10 into UB.
    fn bincount() -> (TileProgram, Graph) {
        let (len, bins) = (20i64, 7i64);
        let mut g = G::new("hist");
        let x = g.param("v", DType::I32, dims(&[len]));
        let h = g.node("h", DType::I32, dims(&[bins]), NodeKind::BinCount { src: x, n: Dim::constant(bins) });
        g.output("h", h);
        let mut p = P::new("hist", &[]);
        let xt = p.gm("v", DType::I32, &[len as u64], TensorRole::Param(0));
        let ht = p.gm("h", DType::I32, &[bins as u64], TensorRole::Output(0));
        let mut l = L::new("hist", Unit::Vector, 0, 1);
        let xb = l.buf("xb", Mem::UB, DType::I32, &[2, 10], 1);
        let hb = l.buf("hb", Mem::UB, DType::I32, &[8], 1);
        let mut prog = vec![
            copy(Pipe::Mte2, gmr(xt, c(0), 10), bufr(xb, c(0), c(0), 10), c(2), c(10)),
            Stmt::Vector { dst: bufr(hb, c(0), c(0), 8), rows: c(1), cols: c(bins), expr: VExpr::I32(0) },
        ];
        prog.extend(sync(Pipe::Mte2, Pipe::S, 0));
        for t in 0..2 {
            prog.push(Stmt::Library {
                op: LibOp::BinCount { n: bins as u64, dst: bufr(hb, c(0), c(0), 8) },
                src: bufr(xb, c(0), c(t * 10), 10),
                rows: c(1),
                cols: c(10),
                span: sp(100, 110),
            });
        }
        prog.extend(sync(Pipe::S, Pipe::Mte3, 0));
        prog.push(copy(Pipe::Mte3, bufr(hb, c(0), c(0), 8), gmr(ht, c(0), bins), c(1), c(bins)));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn bincount_accumulates_and_reports_bad_values() {
        let (prog, g) = bincount();
        let vals: Vec<i32> = (0..20).map(|i| (i * 5 + 3) % 7).collect();
        let r = same(&prog, &g, &args(vec![("v", Tensor::from_i32(vec![20], vals).unwrap())]));
        assert_eq!(bits(&r[0].1).iter().sum::<u64>(), 20);
        let mut bad: Vec<i32> = (0..20).map(|i| i % 7).collect();
        bad[14] = 7;
        let e = sim_err(&prog, &g, &args(vec![("v", Tensor::from_i32(vec![20], bad).unwrap())]));
        assert_eq!(e.code, Code::IndexOutOfRange);
        assert_eq!(e.primary.span, sp(100, 110));
        assert!(e.message.contains("value 7") && e.message.contains("0..7"), "{}", e.message);
    }

    // ----- run-time errors, inout, robustness -----

    #[test]
    fn integer_division_by_zero_in_a_vector_statement() {
        let mut g = G::new("idiv");
        let x = g.param("x", DType::I32, dims(&[4]));
        let y = g.compute(
            "y",
            DType::I32,
            dims(&[4]),
            vec![],
            bin(BinOp::Div, Expr::constant(Const::I32(12), sp(0, 0)), g.load(x, vec![var(0)])),
        );
        g.output("y", y);
        let mut p = P::new("idiv", &[]);
        let xt = p.gm("x", DType::I32, &[4], TensorRole::Param(0));
        let yt = p.gm("y", DType::I32, &[4], TensorRole::Output(0));
        let mut l = L::new("idiv", Unit::Vector, 0, 1);
        let xb = l.buf("xb", Mem::UB, DType::I32, &[4], 1);
        let mut prog = vec![copy(Pipe::Mte2, gmr(xt, c(0), 4), bufr(xb, c(0), c(0), 4), c(1), c(4))];
        prog.extend(sync(Pipe::Mte2, Pipe::V, 0));
        prog.push(Stmt::Vector {
            dst: bufr(xb, c(0), c(0), 4),
            rows: c(1),
            cols: c(4),
            expr: vx(BinOp::Div, VExpr::I32(12), VExpr::Read(bufr(xb, c(0), c(0), 4))),
        });
        prog.extend(sync(Pipe::V, Pipe::Mte3, 0));
        prog.push(copy(Pipe::Mte3, bufr(xb, c(0), c(0), 4), gmr(yt, c(0), 4), c(1), c(4)));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        same(&p.p, &g.g, &args(vec![("x", Tensor::from_i32(vec![4], vec![5, -5, 7, -12]).unwrap())]));
        let e = sim_err(&p.p, &g.g, &args(vec![("x", Tensor::from_i32(vec![4], vec![5, 0, 7, 1]).unwrap())]));
        assert_eq!(e.code, Code::DivByZero);
        assert_eq!(e.primary.message, "12 / 0");
        assert!(e.notes.iter().any(|n| n.contains("element (0, 1)")), "{:?}", e.notes);
    }

    /// `p += 1` for an inout f32 [4]; with `output`, the result has its own GM tensor.
    fn inout(output: bool) -> (TileProgram, Graph) {
        let mut g = G::new("inc");
        let pv = g.param_with("p", DType::F32, dims(&[4]), true);
        let y = g.compute("p", DType::F32, dims(&[4]), vec![], bin(BinOp::Add, g.load(pv, vec![var(0)]), cf(1.0)));
        g.g.results.push(Result_ { name: "p".into(), value: y, inout: Some(0) });
        let mut p = P::new("inc", &[]);
        let pt = p.gm("p", DType::F32, &[4], TensorRole::Param(0));
        let dst = if output { p.gm("p_out", DType::F32, &[4], TensorRole::Output(0)) } else { pt };
        let mut l = L::new("inc", Unit::Vector, 0, 1);
        let b = l.buf("b", Mem::UB, DType::F32, &[4], 1);
        let mut prog = vec![copy(Pipe::Mte2, gmr(pt, c(0), 4), bufr(b, c(0), c(0), 4), c(1), c(4))];
        prog.extend(sync(Pipe::Mte2, Pipe::V, 0));
        prog.push(Stmt::Vector {
            dst: bufr(b, c(0), c(0), 4),
            rows: c(1),
            cols: c(4),
            expr: vx(BinOp::Add, VExpr::Read(bufr(b, c(0), c(0), 4)), VExpr::F32(1.0)),
        });
        prog.extend(sync(Pipe::V, Pipe::Mte3, 0));
        prog.push(copy(Pipe::Mte3, bufr(b, c(0), c(0), 4), gmr(dst, c(0), 4), c(1), c(4)));
        l.l.vector = prog;
        p.p.launches.push(l.l);
        (p.p, g.g)
    }

    #[test]
    fn inout_results_leave_the_arguments_alone() {
        let a = args(vec![("p", Tensor::from_f32(vec![4], vec![1.0, 2.0, -3.0, 0.5]).unwrap())]);
        for output in [true, false] {
            let (prog, g) = inout(output);
            let r = same(&prog, &g, &a);
            assert_eq!(r[0].1.to_f64_vec(), vec![2.0, 3.0, -2.0, 1.5]);
        }
    }

    #[test]
    fn malformed_programs_are_internal_errors() {
        let a = args(vec![("x", tensor(DType::BF16, &[37, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]);
        let check = |f: &dyn Fn(&mut TileProgram), needle: &str| {
            let (mut prog, g) = elementwise(16);
            f(&mut prog);
            let e = sim_err(&prog, &g, &a);
            assert_eq!(e.code, Code::Internal, "{}", e.message);
            assert!(e.message.contains(needle), "expected `{needle}` in: {}", e.message);
        };
        // A copy past the end of a buffer slot, named with its statement path and loop variables.
        check(
            &|p| {
                if let Stmt::For { body, .. } = &mut p.launches[0].vector[3] {
                    if let Stmt::Copy { cols, .. } = &mut body[2] {
                        *cols = c(71);
                    }
                }
            },
            "vector[3.2] (copy on MTE2) with t = 0",
        );
        check(
            &|p| {
                if let Stmt::For { body, .. } = &mut p.launches[0].vector[3] {
                    if let Stmt::Copy { dst, .. } = &mut body[2] {
                        dst.offset = c(40 * 70);
                    }
                }
            },
            "outside slot 0 of buffer `xb`",
        );
        check(&|p| p.launches[0].vector.insert(0, set(SVar(0), v(SVar(1)))), "read before it is set");
        check(&|p| p.launches[0].vector.insert(0, set(SVar(9), c(0))), "register #9 does not exist");
        check(&|p| p.launches[0].vector.insert(0, for_(SVar(0), c(0), c(1), 0, vec![])), "step 0");
        check(&|p| p.launches[0].vector.insert(0, Stmt::CrossWait { flag: 11 }), "cross-core flag 11");
        check(
            &|p| p.launches[0].vector.insert(0, Stmt::SetFlag { from: Pipe::V, to: Pipe::S, event: 8 }),
            "event id 8",
        );
        check(&|p| p.launches[0].vector.insert(0, set(SVar(0), sb(SBin::Mod, c(1), c(0)))), "scalar 1 % 0");
        check(
            &|p| {
                p.launches[0].buffers.push(Buffer {
                    name: "l1".into(),
                    mem: Mem::L1,
                    dtype: DType::I32,
                    shape: vec![4],
                    slots: 1,
                    layout: Layout::NZ,
                    offset: 0,
                });
                p.launches[0].vector.insert(
                    0,
                    set(SVar(0), SExpr::Read { buf: BufId(3), slot: Box::new(c(0)), index: Box::new(c(0)) }),
                );
            },
            "which vector cores do not have",
        );
        check(
            &|p| {
                p.launches[0].vector[0] =
                    copy(Pipe::Mte2, gmr(TensorId(0), c(0), 0), bufr(BufId(1), c(1), c(0), 70), c(1), c(70))
            },
            "slot 1 of buffer `wb`, which has 1 slots",
        );
        check(&|p| p.tensors[2].shape = vec![37, 71], "result `y`");
        check(&|p| p.tensors[1].role = TensorRole::Param(5), "parameter #5");
        check(
            &|p| {
                p.launches[0].vector.insert(
                    0,
                    Stmt::Reduce {
                        op: ReduceOp::ArgMax,
                        axis: 1,
                        src: bufr(BufId(0), c(0), c(0), 70),
                        dst: bufr(BufId(0), c(0), c(0), 70),
                        rows: c(1),
                        cols: c(4),
                        accumulate: true,
                    },
                )
            },
            "argmax cannot continue",
        );
    }

    /// Replaces the `k`-th scalar constant of a statement list (in a fixed walk order) with `value`; the
    /// number of constants seen.
    fn mutate(stmts: &mut [Stmt], k: usize, value: i64, seen: &mut usize) {
        fn se(e: &mut SExpr, k: usize, value: i64, seen: &mut usize) {
            match e {
                SExpr::Const(x) => {
                    if *seen == k {
                        *x = value;
                    }
                    *seen += 1;
                }
                SExpr::Var(_) | SExpr::Core => {}
                SExpr::Bin(_, a, b) => {
                    se(a, k, value, seen);
                    se(b, k, value, seen);
                }
                SExpr::Read { slot, index, .. } => {
                    se(slot, k, value, seen);
                    se(index, k, value, seen);
                }
            }
        }
        fn rg(r: &mut Region, k: usize, value: i64, seen: &mut usize) {
            if let Loc::Buf { slot, .. } = &mut r.loc {
                se(slot, k, value, seen);
            }
            se(&mut r.offset, k, value, seen);
            se(&mut r.row_stride, k, value, seen);
        }
        fn ve(e: &mut VExpr, k: usize, value: i64, seen: &mut usize) {
            match e {
                VExpr::Scalar(s) => se(s, k, value, seen),
                VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => rg(r, k, value, seen),
                VExpr::Unary(_, a) | VExpr::Cast(_, a) => ve(a, k, value, seen),
                VExpr::Binary(_, a, b) => {
                    ve(a, k, value, seen);
                    ve(b, k, value, seen);
                }
                VExpr::Select(x, a, b) => {
                    ve(x, k, value, seen);
                    ve(a, k, value, seen);
                    ve(b, k, value, seen);
                }
                _ => {}
            }
        }
        for s in stmts {
            match s {
                Stmt::For { lo, hi, body, .. } => {
                    se(lo, k, value, seen);
                    se(hi, k, value, seen);
                    mutate(body, k, value, seen);
                }
                Stmt::Set { value: e, .. } => se(e, k, value, seen),
                Stmt::If { cond, then } => {
                    se(cond, k, value, seen);
                    mutate(then, k, value, seen);
                }
                Stmt::Copy { src, dst, rows, cols, .. } => {
                    rg(src, k, value, seen);
                    rg(dst, k, value, seen);
                    se(rows, k, value, seen);
                    se(cols, k, value, seen);
                }
                Stmt::Gather { col_offset, index, dst, rows, cols, .. } => {
                    se(col_offset, k, value, seen);
                    rg(index, k, value, seen);
                    rg(dst, k, value, seen);
                    se(rows, k, value, seen);
                    se(cols, k, value, seen);
                }
                Stmt::Mmad { a, b, c, m, k: kk, n, .. } => {
                    rg(a, k, value, seen);
                    rg(b, k, value, seen);
                    rg(c, k, value, seen);
                    se(m, k, value, seen);
                    se(kk, k, value, seen);
                    se(n, k, value, seen);
                }
                Stmt::Vector { dst, rows, cols, expr } => {
                    rg(dst, k, value, seen);
                    se(rows, k, value, seen);
                    se(cols, k, value, seen);
                    ve(expr, k, value, seen);
                }
                Stmt::Reduce { src, dst, rows, cols, .. } => {
                    rg(src, k, value, seen);
                    rg(dst, k, value, seen);
                    se(rows, k, value, seen);
                    se(cols, k, value, seen);
                }
                Stmt::Library { op, src, rows, cols, .. } => {
                    rg(src, k, value, seen);
                    se(rows, k, value, seen);
                    se(cols, k, value, seen);
                    match op {
                        LibOp::TopK { values, indices, .. } => {
                            if let Some(r) = values {
                                rg(r, k, value, seen);
                            }
                            if let Some(r) = indices {
                                rg(r, k, value, seen);
                            }
                        }
                        LibOp::ArgSort { dst, .. } | LibOp::BinCount { dst, .. } => rg(dst, k, value, seen),
                        LibOp::CumSum { dst, carry, .. } => {
                            rg(dst, k, value, seen);
                            if let Some(r) = carry {
                                rg(r, k, value, seen);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn mutated_programs_never_panic() {
        type Case = (TileProgram, Graph, Args);
        let cases: Vec<Case> = vec![
            {
                let (p, g) = elementwise(16);
                (p, g, args(vec![("x", tensor(DType::BF16, &[37, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]))
            },
            {
                let (p, g) = matmul();
                (p, g, args(vec![("a", tensor(DType::BF16, &[33, 40], 3)), ("b", tensor(DType::BF16, &[40, 17], 4))]))
            },
            {
                let (p, g) = softmax();
                (p, g, args(vec![("x", tensor(DType::F32, &[9, 50], 5))]))
            },
            {
                let (p, g) = gather();
                let idx = Tensor::from_i32(vec![5], vec![9, 0, 3, 3, 7]).unwrap();
                (p, g, args(vec![("x", tensor(DType::F32, &[10, 6], 11)), ("idx", idx)]))
            },
            {
                let (p, g) = mixed(0, 1);
                (p, g, args(vec![("a", tensor(DType::F32, &[4, 8], 21)), ("b", tensor(DType::F32, &[8, 6], 22))]))
            },
            {
                let (p, g) = library_ops(false);
                (p, g, args(vec![("x", tensor(DType::F32, &[5, 12], 31))]))
            },
            {
                let (p, g) = bincount();
                let vals: Vec<i32> = (0..20).map(|i| i % 7).collect();
                (p, g, args(vec![("v", Tensor::from_i32(vec![20], vals).unwrap())]))
            },
        ];
        let values = [-1i64, 0, 1, 3, 1000, 1 << 40, i64::MAX, i64::MIN];
        let mut runs = 0;
        for (prog, g, a) in &cases {
            for li in 0..prog.launches.len() {
                for cube in [true, false] {
                    let mut count = 0;
                    let mut probe = prog.clone();
                    let l = &mut probe.launches[li];
                    mutate(if cube { &mut l.cube } else { &mut l.vector }, usize::MAX, 0, &mut count);
                    for k in 0..count {
                        for &value in &values {
                            let mut p = prog.clone();
                            let l = &mut p.launches[li];
                            mutate(if cube { &mut l.cube } else { &mut l.vector }, k, value, &mut 0);
                            let before = a.clone();
                            // Any outcome but a panic (or a hang) is fine; most are internal errors.
                            if let Err(e) = run(&p, g, a) {
                                assert!(!e.is_empty());
                            }
                            assert!(same_args(a, &before));
                            runs += 1;
                        }
                    }
                }
            }
        }
        assert!(runs > 500, "{runs}");
    }

    #[test]
    fn resource_limits_are_checked_before_allocating() {
        let (prog, g) = elementwise(16);
        let a = args(vec![("x", tensor(DType::BF16, &[37, 70], 1)), ("w", tensor(DType::BF16, &[70], 2))]);
        let e = run_with(&prog, &g, &a, &Limits { max_bytes: 1000, ..Limits::default() }).unwrap_err();
        assert_eq!(e[0].code, Code::ResourceLimit);
        let (mut prog, g) = elementwise(16);
        prog.launches[0].buffers[0].shape = vec![1 << 40, 1 << 20];
        let e = sim_err(&prog, &g, &a);
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.contains("larger than any on-chip memory"), "{}", e.message);
    }
}
