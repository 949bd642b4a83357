//! The cost model: a cycle-level simulation of a [`TileProgram`] on a target, without data.
//!
//! Every core runs its program the way the hardware does: the scalar unit walks the program in order,
//! spending a cycle per statement (and per loop iteration), and hands every other statement to its pipe's
//! queue ([`Pipe`]: MTE2, MTE1, MTE3, FIX, M, V). The pipes run in parallel, each in order; a statement
//! starts when its pipe is free and the scalar unit has issued it, and takes the time the target's figures
//! give it ([`Costs`]):
//! - `mmad`: one cube fractal (`m × k × n` of the target, 16×16×16 for 16-bit inputs) per cycle at peak,
//!   times the target's efficiency for the tile's `n` (interpolated: ≈ 50% at 16, 90% at 128, 98% at 600);
//! - vector statements: each operation of the expression is one vector instruction over the tile: a
//!   start-up cost plus the tile's 256-byte repeats at the target's cycles per repeat (exp, log, sqrt, f32
//!   division at the slow-op factor; composite functions such as sigmoid as the instructions they take), at
//!   most 255 repeats per instruction;
//! - copies: the bytes over the path's measured size-dependent bandwidth (interpolated between points),
//!   never above its peak; a gather as one copy per row;
//! - flags: `WaitFlag` holds the waiting pipe until the matching `SetFlag` was reached by the setting pipe,
//!   so waits follow from the simulation; a cross-core `CrossSet` fires once all the core's work issued
//!   before it is done, and `CrossWait` holds the scalar unit (so everything after it) until then. A cube
//!   core and its vector cores are simulated together, each running until it waits on a flag not yet set.
//!
//! Global memory is shared by all cores: a launch's GM copies together cannot move more than the chip's
//! bandwidth allows. The bytes a launch must bring from HBM are its distinct tensors' footprint when that
//! fits in L2 (re-reads hit L2), else all its traffic; the chip serves the launch's traffic at
//! `gm_bandwidth × traffic / hbm_bytes`, at most the L2 bandwidth. When the launch simulated with per-core
//! copy rates asks for more, every GM copy is slowed by the same factor and the launch simulated again,
//! until it fits (at most six times; [`LaunchEstimate::gm_dilation`]), and a launch never ends before the
//! chip could have moved its traffic.
//!
//! For ranking candidate tilings, [`rank_launch`] simulates only the first core group and extrapolates
//! each core's outermost loop from its first three iterations (the third one's span and work, repeated).
//!
//! Launches run one after another. The result ([`Estimate`]) gives each launch's and the kernel's cycles,
//! each pipe's busy fraction, the bound (the pipe that limits, or `GM` when the shared bandwidth does), and
//! optionally a [`timeline::Timeline`] of every instruction.

pub mod timeline;
pub mod trace;

use crate::diag::Diagnostic;
use crate::dtype::DType;
use crate::graph::{BinOp, UnOp};
use crate::report::{Counts, IntData, Walker};
use crate::target::Target;
use crate::tile::*;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use timeline::{CoreRef, Flow, LaunchSpan, Slice, Timeline};

/// The most slices a recorded timeline keeps (the estimate itself is always complete).
pub const MAX_SLICES: usize = 400_000;

/// Scalar-unit cycles per statement issued (and per loop iteration).
const SCALAR_ISSUE: f64 = 1.0;

/// How the model prices the work of one statement on a target.
#[derive(Clone, Debug)]
pub struct Costs<'t> {
    pub target: &'t Target,
    /// Extra factor on the time of every copy to or from global memory (the shared-bandwidth dilation).
    pub gm_dilation: f64,
}

/// Cycles of one vector instruction pass over `repeats` repeats with `weight` times the base rate.
fn vector_pass(t: &Target, repeats: f64, weight: f64) -> f64 {
    let v = &t.vector;
    let instrs = (repeats / v.max_repeats as f64).ceil().max(1.0);
    instrs * v.startup_cycles as f64 + repeats * v.cycles_per_repeat * weight
}

/// Fast and slow vector instruction passes an elementwise expression takes.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct VectorOps {
    pub fast: u32,
    pub slow: u32,
}

impl VectorOps {
    fn add(&mut self, fast: u32, slow: u32) {
        self.fast += fast;
        self.slow += slow;
    }
}

/// The instructions an elementwise expression takes: one per operation; reads of the operands are free
/// (the vector unit reads UB directly, broadcasts included); row and column indices take an index
/// generation each; composite functions count the instructions of their usual expansion.
pub fn vector_ops(e: &VExpr) -> VectorOps {
    fn go(e: &VExpr, o: &mut VectorOps) {
        match e {
            VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Scalar(_) => {}
            VExpr::Read(_) | VExpr::ReadRow(_) | VExpr::ReadCol(_) => {}
            VExpr::Row | VExpr::Col => o.add(1, 0),
            VExpr::Unary(op, a) => {
                go(a, o);
                let (f, s) = match op {
                    UnOp::Neg | UnOp::Not | UnOp::Abs | UnOp::Relu | UnOp::Floor | UnOp::Ceil => (1, 0),
                    UnOp::Exp | UnOp::Log | UnOp::Sqrt => (0, 1),
                    // exp2(x) = exp(x ln 2); log2(x) = ln(x) / ln 2; rsqrt = 1 / sqrt.
                    UnOp::Exp2 | UnOp::Log2 => (1, 1),
                    UnOp::Rsqrt => (0, 2),
                    // 1 / (1 + exp(-x)): negate, exp, add, divide.
                    UnOp::Sigmoid => (2, 2),
                    UnOp::Silu => (3, 2),
                    // (1 - exp(-2x)) / (1 + exp(-2x)).
                    UnOp::Tanh => (4, 2),
                    // log(1 + exp(x)).
                    UnOp::Softplus => (1, 2),
                    // Polynomial approximations (erf; range reduction + polynomial).
                    UnOp::Gelu => (10, 1),
                    UnOp::Sin | UnOp::Cos => (9, 0),
                };
                o.add(f, s);
            }
            // `x·y + z` (either order): one fused multiply-add instruction (Ascend's `FusedMulAdd`, `MulAddDst`,
            // `Axpy`). A difference is fused too when the operand to negate is per row, per column or a scalar
            // (its negation is hoisted out of the tile).
            VExpr::Binary(op @ (BinOp::Add | BinOp::Sub), a, b) if fma(*op, a, b).is_some() => {
                let (x, y, z) = fma(*op, a, b).unwrap_or((a, b, a));
                go(x, o);
                go(y, o);
                go(z, o);
                o.add(1, 0);
            }
            VExpr::Binary(op, a, b) => {
                go(a, o);
                go(b, o);
                let (f, s) = match op {
                    // f32 division is slow; i32 division is done the same way (through f32).
                    BinOp::Div => (0, 1),
                    // floor division, multiply, subtract.
                    BinOp::Mod => (3, 1),
                    // exp(b * log(a)).
                    BinOp::Pow => (1, 2),
                    _ => (1, 0),
                };
                o.add(f, s);
            }
            VExpr::Select(c, a, b) => {
                go(c, o);
                go(a, o);
                go(b, o);
                o.add(1, 0);
            }
            VExpr::Cast(_, a) => {
                go(a, o);
                o.add(1, 0);
            }
        }
    }
    /// A value the vector unit can negate outside the tile loop.
    fn cheap(e: &VExpr) -> bool {
        matches!(e, VExpr::F32(_) | VExpr::I32(_) | VExpr::Scalar(_) | VExpr::ReadRow(_) | VExpr::ReadCol(_))
    }
    /// `(x, y, z)` when `a op b` is `x·y ± z` in one fused instruction.
    fn fma<'a>(op: BinOp, a: &'a VExpr, b: &'a VExpr) -> Option<(&'a VExpr, &'a VExpr, &'a VExpr)> {
        match (op, a, b) {
            (BinOp::Add, VExpr::Binary(BinOp::Mul, x, y), z) | (BinOp::Add, z, VExpr::Binary(BinOp::Mul, x, y)) => {
                Some((x, y, z))
            }
            (BinOp::Sub, VExpr::Binary(BinOp::Mul, x, y), z) if cheap(z) => Some((x, y, z)),
            (BinOp::Sub, z, VExpr::Binary(BinOp::Mul, x, y)) if cheap(x) || cheap(y) => Some((x, y, z)),
            _ => None,
        }
    }
    let mut o = VectorOps::default();
    go(e, &mut o);
    if o.fast + o.slow == 0 {
        // A plain move still takes one pass.
        o.fast = 1;
    }
    o
}

/// The widest element (bytes) an expression computes with.
fn expr_width(l: &Launch, e: &VExpr, dst: DType) -> u64 {
    fn go(l: &Launch, e: &VExpr, w: &mut u64) {
        match e {
            VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => {
                if let Loc::Buf { buf, .. } = &r.loc {
                    if let Some(b) = l.buffers.get(buf.0 as usize) {
                        *w = (*w).max(b.dtype.size_bytes() as u64);
                    }
                }
            }
            VExpr::F32(_) | VExpr::I32(_) | VExpr::Scalar(_) | VExpr::Row | VExpr::Col => *w = (*w).max(4),
            VExpr::Bool(_) => {}
            VExpr::Unary(_, a) | VExpr::Cast(_, a) => go(l, a, w),
            VExpr::Binary(_, a, b) => {
                go(l, a, w);
                go(l, b, w);
            }
            VExpr::Select(c, a, b) => {
                go(l, c, w);
                go(l, a, w);
                go(l, b, w);
            }
        }
    }
    let mut w = dst.size_bytes() as u64;
    go(l, e, &mut w);
    w.max(1)
}

/// 256-byte repeats of a `rows × cols` tile of `width`-byte elements (each row padded to 32-byte blocks).
fn repeats(t: &Target, rows: i64, cols: i64, width: u64) -> f64 {
    let (rows, cols) = (rows.max(0) as u64, cols.max(0) as u64);
    let row_bytes = (cols * width).div_ceil(32) * 32;
    ((rows * row_bytes) as f64 / t.vector.repeat_bytes as f64).ceil()
}

impl Costs<'_> {
    /// Cycles of one copy of `bytes` from memory `from` to `to` (names as in target files).
    pub fn copy_cycles(&self, from: &str, to: &str, bytes: u64) -> f64 {
        if bytes == 0 {
            return 0.0;
        }
        let t = self.target;
        let (rate, peak) = match t.path(from, to) {
            Some(p) => (t.copy_rate(p, bytes) / t.cycles_per_second(), p.bytes_per_cycle as f64),
            // A path the target does not describe (never produced by the tiler): the slowest peak.
            None => {
                let slow = t.path.iter().map(|p| p.bytes_per_cycle).min().unwrap_or(32) as f64;
                (slow, slow)
            }
        };
        let mut cycles = bytes as f64 / rate.min(peak);
        if from == "gm" || to == "gm" {
            cycles *= self.gm_dilation;
        }
        cycles
    }

    /// Cycles of `mmad` of `m × k × n` with `in_bytes`-byte inputs.
    pub fn mmad_cycles(&self, m: i64, k: i64, n: i64, in_bytes: u64) -> f64 {
        let c = &self.target.cube;
        let (m, k, n) = (m.max(0) as u64, k.max(0) as u64, n.max(0) as u64);
        if m == 0 || k == 0 || n == 0 {
            return 0.0;
        }
        // The fractal's k is for 16-bit inputs; 32-bit inputs take twice the fractals.
        let fk = (c.k as u64 * 2 / in_bytes.max(1)).max(1);
        let fractals = m.div_ceil(c.m as u64) * k.div_ceil(fk) * n.div_ceil(c.n as u64);
        fractals as f64 / self.target.cube_efficiency(n)
    }

    /// Cycles of an elementwise vector statement.
    pub fn vector_cycles(&self, ops: VectorOps, rows: i64, cols: i64, width: u64) -> f64 {
        let t = self.target;
        let r = repeats(t, rows, cols, width);
        if r == 0.0 {
            return 0.0;
        }
        ops.fast as f64 * vector_pass(t, r, 1.0) + ops.slow as f64 * vector_pass(t, r, t.vector.slow_op_factor)
    }

    /// Cycles of a reduction of a `rows × cols` tile (one pass over it).
    pub fn reduce_cycles(&self, rows: i64, cols: i64, width: u64) -> f64 {
        let t = self.target;
        let r = repeats(t, rows, cols, width);
        if r == 0.0 {
            0.0
        } else {
            vector_pass(t, r, 1.0)
        }
    }
}

/// Scalar-unit cycles of a library operation over `rows × cols` (an estimate: the scalar unit runs about
/// one simple operation per cycle).
fn library_cycles(op: &LibOp, rows: i64, cols: i64) -> f64 {
    let (r, c) = (rows.max(0) as f64, cols.max(0) as f64);
    match op {
        LibOp::TopK { k, .. } => r * c * (*k as f64 + 1.0).log2().ceil().max(1.0) * 2.0,
        LibOp::ArgSort { .. } => r * c * c.max(2.0).log2() * 4.0,
        LibOp::CumSum { .. } => r * c * 2.0,
        LibOp::BinCount { .. } => r * c * 3.0,
    }
}

/// The estimate of one launch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchEstimate {
    pub name: String,
    /// Cycles from the launch's start to its last core's end.
    pub cycles: f64,
    /// Per pipe: busy cycles summed over the cores, and the cores that have the pipe.
    pub busy: BTreeMap<Pipe, (f64, u32)>,
    /// The factor GM copies were slowed by for the chip's shared bandwidth (1: not limited).
    pub gm_dilation: f64,
    /// Bytes the launch must move from and to HBM (its footprint when that fits in L2, else its traffic).
    pub hbm_bytes: u64,
    pub counts: Counts,
}

impl LaunchEstimate {
    /// Busy fraction of each pipe the launch uses: busy cycles over (cores that have it × launch cycles).
    pub fn pipe_busy(&self) -> BTreeMap<Pipe, f64> {
        self.busy
            .iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(p, (b, n))| (*p, if self.cycles > 0.0 { b / (*n as f64 * self.cycles) } else { 0.0 }))
            .collect()
    }

    /// What limits the launch: `GM` when the shared global-memory bandwidth does, else the busiest pipe
    /// (ties to the earlier pipe of [`Pipe::ALL`]).
    pub fn bound(&self) -> String {
        if self.gm_dilation > 1.0 + 1e-6 {
            return "GM".to_string();
        }
        // The scalar unit counts too: library operations (sorting, histograms) run on it.
        let mut best: Option<(Pipe, f64)> = None;
        for (p, f) in self.pipe_busy() {
            if best.is_none_or(|(_, b)| f > b) {
                best = Some((p, f));
            }
        }
        best.map_or_else(|| "S".to_string(), |(p, _)| p.name().to_string())
    }
}

/// The estimate of a kernel: its launches one after another.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    pub kernel: String,
    pub target: String,
    pub clock_ghz: f64,
    pub launches: Vec<LaunchEstimate>,
    pub peak_cube_flops_per_s: f64,
    pub peak_gm_bytes_per_s: f64,
}

impl Estimate {
    pub fn cycles(&self) -> f64 {
        self.launches.iter().map(|l| l.cycles).sum()
    }

    pub fn time_us(&self) -> f64 {
        self.cycles() / (self.clock_ghz * 1e3)
    }

    /// Busy fraction of each pipe over the whole kernel (launches weighted by their cycles and cores).
    pub fn pipe_busy(&self) -> BTreeMap<Pipe, f64> {
        let mut acc: BTreeMap<Pipe, (f64, f64)> = BTreeMap::new();
        for l in &self.launches {
            for (p, (b, n)) in &l.busy {
                let e = acc.entry(*p).or_default();
                e.0 += b;
                e.1 += *n as f64 * l.cycles;
            }
        }
        acc.into_iter().filter(|(_, (_, d))| *d > 0.0).map(|(p, (b, d))| (p, b / d)).collect()
    }

    /// What limits the kernel: the bound of the launch that takes the most cycles.
    pub fn bound(&self) -> String {
        self.launches
            .iter()
            .max_by(|a, b| a.cycles.total_cmp(&b.cycles))
            .map_or_else(|| "none".to_string(), LaunchEstimate::bound)
    }

    pub fn cube_flops(&self) -> u64 {
        self.launches.iter().map(|l| l.counts.cube_flops).sum()
    }

    pub fn gm_bytes(&self) -> u64 {
        self.launches.iter().map(|l| l.counts.gm_bytes_read + l.counts.gm_bytes_written).sum()
    }

    /// Achieved cube FLOP/s over the estimated time.
    pub fn cube_flops_per_s(&self) -> f64 {
        let t = self.time_us() * 1e-6;
        if t > 0.0 {
            self.cube_flops() as f64 / t
        } else {
            0.0
        }
    }

    /// Achieved GM bytes/s (all GM traffic, L2 hits included) over the estimated time.
    pub fn gm_bytes_per_s(&self) -> f64 {
        let t = self.time_us() * 1e-6;
        if t > 0.0 {
            self.gm_bytes() as f64 / t
        } else {
            0.0
        }
    }
}

/// One scheduled unit of a core's program: a block being walked, or a loop between iterations.
enum Frame<'a> {
    Block { stmts: &'a [Stmt], i: usize },
    Loop { var: SVar, next: i64, hi: i64, step: i64, body: &'a [Stmt], done: u64 },
}

/// Iterations of a core's outermost loop simulated before the rest is extrapolated (ranking only).
const EXTRAPOLATE_AFTER: u64 = 3;

/// The timing state of one core.
struct CoreSim<'a> {
    id: CoreRef,
    w: Walker<'a>,
    frames: Vec<Frame<'a>>,
    /// The scalar unit's clock.
    ts: f64,
    /// When each pipe is free (indexed by `pipe_index`).
    free: [f64; 7],
    busy: [f64; 7],
    used: [bool; 7],
    flags: HashMap<(Pipe, Pipe, u8), VecDeque<f64>>,
    /// Cross-core waits consumed, by flag id.
    cross_waits: Vec<usize>,
    done: bool,
    /// Whether the outermost loop may be extrapolated from its first iterations (ranking mode).
    extrapolate: bool,
    /// With partners, a core pauses at the extrapolation point instead of skipping ahead at once, so that
    /// its partners catch up with it first; `horizon` holds the iterations it will skip.
    pause_at_horizon: bool,
    horizon: Option<u64>,
    /// (time all work is done, busy per pipe, GM bytes read and written, cube flops, vector elements) at
    /// the start of each of the outermost loop's iterations.
    marks: Vec<(f64, [f64; 7], [u64; 4])>,
}

fn pipe_index(p: Pipe) -> usize {
    Pipe::ALL.iter().position(|q| *q == p).unwrap_or(0)
}

/// What a core's step ended with.
enum Progress {
    Done,
    /// Waiting on cross flag `flag` (not yet set by the partner).
    Blocked,
    /// Paused at the start of an iteration of its outermost loop past which it will be extrapolated
    /// (ranking a core that works with partners).
    Horizon,
}

struct Recorder {
    on: bool,
    launch: u32,
    offset: f64,
    slices: Vec<Slice>,
    flows: Vec<Flow>,
    /// The last slice of each (core, pipe), for coalescing.
    last: HashMap<(CoreRef, Pipe), usize>,
    truncated: bool,
}

impl Recorder {
    /// A recorder for launch `launch` starting at cycle `offset`; `on`: whether it records at all.
    fn new(launch: u32, offset: f64, on: bool) -> Self {
        Recorder { on, launch, offset, slices: Vec::new(), flows: Vec::new(), last: HashMap::new(), truncated: false }
    }

    fn slice(&mut self, core: CoreRef, pipe: Pipe, start: f64, end: f64, name: &str, amount: u64) {
        if !self.on {
            return;
        }
        let (start, end) = (start + self.offset, end + self.offset);
        if let Some(&i) = self.last.get(&(core, pipe)) {
            let s = &mut self.slices[i];
            if s.name == name && (start - s.end).abs() < 1e-9 {
                s.end = end;
                s.count += 1;
                s.amount += amount;
                return;
            }
        }
        if self.slices.len() >= MAX_SLICES {
            self.truncated = true;
            return;
        }
        self.last.insert((core, pipe), self.slices.len());
        self.slices.push(Slice {
            launch: self.launch,
            core,
            pipe,
            start,
            end,
            name: name.to_string(),
            count: 1,
            amount,
        });
    }

    fn flow(&mut self, from: (CoreRef, Pipe), to: (CoreRef, Pipe), set_at: f64, wait_at: f64, label: String) {
        if !self.on || self.truncated {
            return;
        }
        if self.flows.len() >= MAX_SLICES {
            self.truncated = true;
            return;
        }
        self.flows.push(Flow {
            launch: self.launch,
            cross: from.0 != to.0,
            from,
            to,
            set_at: set_at + self.offset,
            wait_at: wait_at + self.offset,
            label,
        });
    }
}

fn mem_name(l: &Launch, loc: &Loc) -> &'static str {
    match loc {
        Loc::Gm(_) => "gm",
        Loc::Buf { buf, .. } => l.buffers.get(buf.0 as usize).map_or("ub", |b| b.mem.name()),
    }
}

fn loc_bytes(prog: &TileProgram, l: &Launch, loc: &Loc) -> u64 {
    loc_dtype(prog, l, loc).size_bytes() as u64
}

fn loc_dtype(prog: &TileProgram, l: &Launch, loc: &Loc) -> DType {
    match loc {
        Loc::Gm(t) => prog.tensors.get(t.0 as usize).map_or(DType::F32, |t| t.dtype),
        Loc::Buf { buf, .. } => l.buffers.get(buf.0 as usize).map_or(DType::F32, |b| b.dtype),
    }
}

/// The copy of a loop body that is the tile IR's transposing load: one MTE1 copy of one column (`cols`
/// 1) from L1 to L0A or L0B, the loop moving it along (the tiler's transposed operands).
fn transposing_load<'p>(l: &Launch, body: &'p [Stmt]) -> Option<&'p Stmt> {
    let [copy @ Stmt::Copy { pipe: Pipe::Mte1, src, dst, cols: SExpr::Const(1), .. }] = body else { return None };
    (mem_name(l, &src.loc) == "l1" && matches!(mem_name(l, &dst.loc), "l0a" | "l0b")).then_some(copy)
}

fn copy_name(from: &str, to: &str) -> &'static str {
    match (from, to) {
        ("gm", "l1") => "copy gm->l1",
        ("gm", "ub") => "copy gm->ub",
        ("gm", "l0a") => "copy gm->l0a",
        ("gm", "l0b") => "copy gm->l0b",
        ("ub", "gm") => "copy ub->gm",
        ("l1", "l0a") => "copy l1->l0a",
        ("l1", "l0b") => "copy l1->l0b",
        ("l0c", "gm") => "copy l0c->gm",
        ("l0c", "l1") => "copy l0c->l1",
        ("l0c", "ub") => "copy l0c->ub",
        ("ub", "l1") => "copy ub->l1",
        ("l1", "ub") => "copy l1->ub",
        _ => "copy",
    }
}

impl<'a> CoreSim<'a> {
    fn new(id: CoreRef, w: Walker<'a>, program: &'a [Stmt]) -> Self {
        CoreSim {
            id,
            w,
            frames: vec![Frame::Block { stmts: program, i: 0 }],
            ts: 0.0,
            free: [0.0; 7],
            busy: [0.0; 7],
            used: [false; 7],
            flags: HashMap::new(),
            cross_waits: vec![0; 16],
            done: false,
            extrapolate: false,
            pause_at_horizon: false,
            horizon: None,
            marks: Vec::new(),
        }
    }

    /// Skips the rest of the outermost loop (`remaining` iterations), taking the last iteration simulated
    /// as the steady state: every time moves on by its span, every pipe's busy time by its busy time, and
    /// the GM traffic, cube flops and vector elements by its amounts. Only for ranking: the other counts
    /// and the scalar registers are not advanced. `false` if there is no iteration to go by.
    fn skip_ahead(&mut self, remaining: u64) -> bool {
        let n = self.marks.len();
        if n < 2 || remaining == 0 {
            return false;
        }
        let (t1, b1, c1) = self.marks[n - 1];
        let (t0, b0, c0) = self.marks[n - 2];
        let d = (t1 - t0) * remaining as f64;
        if d.is_nan() || d < 0.0 {
            return false;
        }
        self.ts += d;
        for i in 0..7 {
            self.free[i] += d;
            self.busy[i] += (b1[i] - b0[i]) * remaining as f64;
        }
        for q in self.flags.values_mut() {
            for t in q.iter_mut() {
                *t += d;
            }
        }
        // What the skipped iterations move and compute (the launch's GM traffic decides its bandwidth).
        let more = |i: usize| c1[i].saturating_sub(c0[i]) * remaining;
        let c = &mut self.w.counts;
        c.gm_bytes_read += more(0);
        c.gm_bytes_written += more(1);
        c.cube_flops += more(2);
        c.vector_elements += more(3);
        true
    }

    /// The time all work issued so far is done.
    fn all_done(&self) -> f64 {
        self.free.iter().copied().fold(self.ts, f64::max)
    }

    /// Runs `pipe` for `cycles` from when it is free and the statement is issued.
    fn run(&mut self, rec: &mut Recorder, pipe: Pipe, cycles: f64, name: &str, amount: u64) {
        let i = pipe_index(pipe);
        let start = self.free[i].max(self.ts);
        let end = start + cycles;
        self.free[i] = end;
        self.busy[i] += cycles;
        self.used[i] = true;
        rec.slice(self.id, pipe, start, end, name, amount);
    }

    /// Advances the scalar unit by `cycles` of its own work.
    fn scalar(&mut self, cycles: f64) {
        self.ts += cycles;
        let i = pipe_index(Pipe::S);
        self.busy[i] += cycles;
        self.used[i] = true;
        self.free[i] = self.ts;
    }

    /// Runs until the program ends or waits on a cross-core flag that its partners have not set yet.
    /// `sets[j][flag]` are the times core `ids[j]` of the group set `flag`; this core is `ids[me]`. A
    /// vector core's n-th wait consumes its cube core's n-th set; a cube core's, the n-th set of each of its
    /// vector cores (the latest of them).
    fn advance(
        &mut self,
        costs: &Costs,
        rec: &mut Recorder,
        me: usize,
        ids: &[CoreRef],
        sets: &mut [Vec<Vec<f64>>],
    ) -> Result<Progress, Diagnostic> {
        let prog = self.w.prog;
        let launch = self.w.launch;
        loop {
            let depth = self.frames.len();
            let Some(frame) = self.frames.last_mut() else {
                self.done = true;
                return Ok(Progress::Done);
            };
            let s: &'a Stmt = match frame {
                Frame::Block { stmts, i } => {
                    if *i >= stmts.len() {
                        self.frames.pop();
                        continue;
                    }
                    let s = &stmts[*i];
                    // A cross wait that cannot go on leaves the statement to be retried.
                    if let Stmt::CrossWait { flag } = s {
                        let Some(&n) = self.cross_waits.get(*flag as usize) else {
                            return Err(crate::diag::Diagnostic::error(
                                crate::diag::Code::Internal,
                                crate::span::Span::default(),
                                format!("launch `{}`: cross-core flag {flag} is out of range", launch.name),
                            ));
                        };
                        let partners: Vec<usize> = (0..ids.len()).filter(|&j| ids[j].cube != ids[me].cube).collect();
                        let mut when = if partners.is_empty() { None } else { Some(0.0f64) };
                        for &j in &partners {
                            when = match (when, sets[j].get(*flag as usize).and_then(|v| v.get(n))) {
                                (Some(t), Some(u)) => Some(t.max(*u)),
                                _ => None,
                            };
                        }
                        match when {
                            None => return Ok(Progress::Blocked),
                            Some(t) => {
                                let from: Vec<CoreRef> = partners.iter().map(|&j| ids[j]).collect();
                                *i += 1;
                                self.w.step()?;
                                *self.w.counts.stmts.entry(Pipe::S).or_default() += 1;
                                if let Some(w) = self.cross_waits.get_mut(*flag as usize) {
                                    *w += 1;
                                }
                                let before = self.ts;
                                self.ts = self.ts.max(t);
                                self.scalar(SCALAR_ISSUE);
                                for f in from {
                                    rec.flow(
                                        (f, Pipe::S),
                                        (self.id, Pipe::S),
                                        t,
                                        before.max(t),
                                        format!("cross #{flag}"),
                                    );
                                }
                                continue;
                            }
                        }
                    }
                    *i += 1;
                    s
                }
                Frame::Loop { next, hi, step, done, .. } => {
                    if *next >= *hi {
                        self.frames.pop();
                        continue;
                    }
                    let outermost = self.extrapolate && depth == 2;
                    if outermost {
                        let (nx, h, st, dn) = (*next, *hi, *step, *done);
                        let all = self.all_done();
                        let c = &self.w.counts;
                        let figures = [c.gm_bytes_read, c.gm_bytes_written, c.cube_flops, c.vector_elements];
                        self.marks.push((all, self.busy, figures));
                        if dn >= EXTRAPOLATE_AFTER {
                            let remaining = ((h - nx) as u64).div_ceil(st as u64);
                            if self.pause_at_horizon {
                                self.horizon = Some(remaining);
                                return Ok(Progress::Horizon);
                            }
                            if self.skip_ahead(remaining) {
                                self.frames.pop();
                                continue;
                            }
                        }
                    }
                    let Some(Frame::Loop { var, next, step, body, done, .. }) = self.frames.last_mut() else {
                        continue;
                    };
                    *done += 1;
                    let (v, b) = (*var, *body);
                    let cur = *next;
                    *next = next.saturating_add(*step);
                    self.w.set(v, cur)?;
                    self.scalar(SCALAR_ISSUE);
                    self.frames.push(Frame::Block { stmts: b, i: 0 });
                    continue;
                }
            };
            self.w.step()?;
            *self.w.counts.stmts.entry(s.pipe()).or_default() += 1;
            match s {
                Stmt::For { var, lo, hi, step, body } => {
                    let (lo, hi) = (self.w.eval(lo)?, self.w.eval(hi)?);
                    if *step <= 0 {
                        return Err(crate::diag::Diagnostic::error(
                            crate::diag::Code::Internal,
                            crate::span::Span::default(),
                            format!("launch `{}`: a loop with step {step}", launch.name),
                        ));
                    }
                    self.scalar(SCALAR_ISSUE);
                    if let Some(copy) = transposing_load(launch, body) {
                        // The tile IR's transposing load: a loop of column copies L1 -> L0 (a row of the
                        // stored operand becomes a column of the fractal layout), which MTE1 does as one
                        // load with transpose. One instruction over all the bytes; the copies are counted.
                        let Stmt::Copy { pipe, src, dst, rows, .. } = copy else { unreachable!() };
                        let eb = loc_bytes(prog, launch, &src.loc).max(loc_bytes(prog, launch, &dst.loc));
                        let mut bytes = 0u64;
                        let mut i = lo;
                        while i < hi {
                            self.w.set(*var, i)?;
                            self.w.step()?;
                            *self.w.counts.stmts.entry(*pipe).or_default() += 1;
                            bytes += self.w.eval(rows)?.max(0) as u64 * eb;
                            self.w.leaf(copy)?;
                            i = i.saturating_add(*step);
                        }
                        if bytes > 0 {
                            let (from, to) = (mem_name(launch, &src.loc), mem_name(launch, &dst.loc));
                            let cycles = costs.copy_cycles(from, to, bytes);
                            self.run(rec, *pipe, cycles, copy_name(from, to), bytes);
                        }
                    } else {
                        self.frames.push(Frame::Loop { var: *var, next: lo, hi, step: *step, body, done: 0 });
                    }
                }
                Stmt::Set { var, value } => {
                    let v = self.w.eval(value)?;
                    self.w.set(*var, v)?;
                    self.scalar(SCALAR_ISSUE);
                }
                Stmt::If { cond, then } => {
                    self.scalar(SCALAR_ISSUE);
                    if self.w.eval(cond)? != 0 {
                        self.frames.push(Frame::Block { stmts: then, i: 0 });
                    }
                }
                Stmt::Copy { pipe, src, dst, rows, cols } => {
                    let (r, c) = (self.w.eval(rows)?.max(0), self.w.eval(cols)?.max(0));
                    let n = (r * c) as u64;
                    let bytes = n * loc_bytes(prog, launch, &src.loc).max(loc_bytes(prog, launch, &dst.loc));
                    let (from, to) = (mem_name(launch, &src.loc), mem_name(launch, &dst.loc));
                    let cycles = costs.copy_cycles(from, to, bytes);
                    self.scalar(SCALAR_ISSUE);
                    self.run(rec, *pipe, cycles, copy_name(from, to), bytes);
                    self.w.leaf(s)?;
                }
                Stmt::Gather { pipe, src, dst, rows, cols, .. } => {
                    let (r, c) = (self.w.eval(rows)?.max(0), self.w.eval(cols)?.max(0));
                    let eb = prog.tensors.get(src.0 as usize).map_or(4, |t| t.dtype.size_bytes() as u64);
                    let row_bytes = c as u64 * eb;
                    let to = mem_name(launch, &dst.loc);
                    let cycles = r as f64 * costs.copy_cycles("gm", to, row_bytes);
                    self.scalar(SCALAR_ISSUE);
                    self.run(rec, *pipe, cycles, "gather", r as u64 * row_bytes);
                    self.w.leaf(s)?;
                }
                Stmt::Mmad { a, m, k, n, .. } => {
                    let (m, k, n) = (self.w.eval(m)?, self.w.eval(k)?, self.w.eval(n)?);
                    let cycles = costs.mmad_cycles(m, k, n, loc_bytes(prog, launch, &a.loc));
                    self.scalar(SCALAR_ISSUE);
                    let flops = 2 * (m.max(0) * k.max(0) * n.max(0)) as u64;
                    self.run(rec, Pipe::M, cycles, "mmad", flops);
                    self.w.leaf(s)?;
                }
                Stmt::Vector { dst, rows, cols, expr } => {
                    let (r, c) = (self.w.eval(rows)?, self.w.eval(cols)?);
                    let width = expr_width(launch, expr, loc_dtype(prog, launch, &dst.loc));
                    // A window whose rows follow each other (a column of per-row values, say) is one run
                    // of elements: its repeats are counted over all of them, not row by row.
                    let (rr, rc) = if r > 1 && self.w.eval(&dst.row_stride)? == c { (1, r * c) } else { (r, c) };
                    let cycles = costs.vector_cycles(vector_ops(expr), rr, rc, width);
                    self.scalar(SCALAR_ISSUE);
                    self.run(rec, Pipe::V, cycles, "vector", (r.max(0) * c.max(0)) as u64);
                    self.w.leaf(s)?;
                }
                Stmt::Reduce { src, rows, cols, .. } => {
                    let (r, c) = (self.w.eval(rows)?, self.w.eval(cols)?);
                    let cycles = costs.reduce_cycles(r, c, loc_bytes(prog, launch, &src.loc).max(4));
                    self.scalar(SCALAR_ISSUE);
                    self.run(rec, Pipe::V, cycles, "reduce", (r.max(0) * c.max(0)) as u64);
                    self.w.leaf(s)?;
                }
                Stmt::Library { op, rows, cols, .. } => {
                    let (r, c) = (self.w.eval(rows)?, self.w.eval(cols)?);
                    let cycles = library_cycles(op, r, c);
                    let start = self.ts;
                    self.scalar(SCALAR_ISSUE + cycles);
                    rec.slice(self.id, Pipe::S, start, self.ts, "library", (r.max(0) * c.max(0)) as u64);
                    self.w.leaf(s)?;
                }
                Stmt::SetFlag { from, to, event } => {
                    self.scalar(SCALAR_ISSUE);
                    let at = self.free[pipe_index(*from)].max(self.ts);
                    self.flags.entry((*from, *to, *event)).or_default().push_back(at);
                }
                Stmt::WaitFlag { from, to, event } => {
                    self.scalar(SCALAR_ISSUE);
                    let set =
                        self.flags.get_mut(&(*from, *to, *event)).and_then(VecDeque::pop_front).ok_or_else(|| {
                            crate::diag::Diagnostic::error(
                                crate::diag::Code::Internal,
                                crate::span::Span::default(),
                                format!(
                                    "launch `{}`: {} waits for flag {}->{} #{event} that was never set",
                                    launch.name,
                                    self.id.name(),
                                    from.name(),
                                    to.name()
                                ),
                            )
                        })?;
                    let i = pipe_index(*to);
                    let before = self.free[i].max(self.ts);
                    let after = before.max(set);
                    if *to == Pipe::S {
                        self.ts = self.ts.max(set);
                        self.free[i] = self.ts;
                    } else {
                        self.free[i] = after;
                    }
                    rec.flow(
                        (self.id, *from),
                        (self.id, *to),
                        set,
                        after,
                        format!("{}->{} #{event}", from.name(), to.name()),
                    );
                }
                Stmt::Barrier { .. } => self.scalar(SCALAR_ISSUE),
                Stmt::CrossSet { flag } => {
                    self.scalar(SCALAR_ISSUE);
                    let at = self.all_done();
                    if let Some(v) = sets[me].get_mut(*flag as usize) {
                        v.push(at);
                    }
                }
                Stmt::CrossWait { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// Simulates the cores of one launch with `costs`; returns the launch's cycles, per-pipe busy sums and
/// counts.
fn simulate_launch(
    prog: &TileProgram,
    l: &Launch,
    ints: &IntData,
    costs: &Costs,
    steps: &Cell<u64>,
    rec: &mut Recorder,
    sample: Option<usize>,
) -> Result<Simulated, Diagnostic> {
    let mut end = 0.0f64;
    let mut busy = [0.0f64; 7];
    let mut cube_used = [false; 7];
    let mut vec_used = [false; 7];
    let mut counts = Counts::default();
    let ratio = if l.cube_cores > 0 && l.vector_cores > 0 { (l.vector_cores / l.cube_cores).max(1) } else { 0 };
    // Groups of cores that wait on each other: a cube core with its vector cores, or a lone core.
    let mut groups: Vec<Vec<CoreRef>> = Vec::new();
    if ratio > 0 {
        for c in 0..l.cube_cores {
            let mut g = vec![CoreRef { cube: true, index: c }];
            g.extend((c * ratio..((c + 1) * ratio).min(l.vector_cores)).map(|v| CoreRef { cube: false, index: v }));
            groups.push(g);
        }
        for v in l.cube_cores * ratio..l.vector_cores {
            groups.push(vec![CoreRef { cube: false, index: v }]);
        }
    } else {
        groups.extend((0..l.cube_cores).map(|c| vec![CoreRef { cube: true, index: c }]));
        groups.extend((0..l.vector_cores).map(|v| vec![CoreRef { cube: false, index: v }]));
    }
    let total_groups = groups.len();
    if let Some(n) = sample {
        groups.truncate(n.max(1));
    }
    let scale = total_groups as f64 / groups.len().max(1) as f64;
    for g in groups {
        let lone = g.len() == 1;
        let mut sims: Vec<CoreSim> = g
            .iter()
            .map(|id| {
                let program: &[Stmt] = if id.cube { &l.cube } else { &l.vector };
                let mut c = CoreSim::new(*id, Walker::new(prog, l, ints, id.index as i64, steps), program);
                c.extrapolate = sample.is_some();
                c.pause_at_horizon = sample.is_some() && !lone;
                c
            })
            .collect();
        let mut sets: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 16]; g.len()];
        loop {
            let mut progressed = false;
            for (i, sim) in sims.iter_mut().enumerate() {
                if sim.done || sim.horizon.is_some() {
                    continue;
                }
                let before = sim.w.steps.get();
                match sim.advance(costs, rec, i, &g, &mut sets)? {
                    Progress::Done | Progress::Horizon => progressed = true,
                    Progress::Blocked => progressed |= sim.w.steps.get() != before,
                }
            }
            if sims.iter().all(|s| s.done) {
                break;
            }
            // Ranking: once every core has paused at its extrapolation point (or finished, or waits on a
            // paused partner), each paused core skips the rest of its outermost loop at its steady rate.
            let paused = sims.iter().any(|s| s.horizon.is_some());
            if paused && (!progressed || sims.iter().all(|s| s.done || s.horizon.is_some())) {
                for s in sims.iter_mut() {
                    if let Some(rem) = s.horizon.take() {
                        s.skip_ahead(rem);
                    }
                    s.done = true;
                }
                break;
            }
            if !progressed {
                let who: Vec<String> = sims.iter().filter(|s| !s.done).map(|s| s.id.name()).collect();
                return Err(crate::diag::Diagnostic::error(
                    crate::diag::Code::Internal,
                    crate::span::Span::default(),
                    format!("launch `{}`: cores {} wait on each other forever", l.name, who.join(", ")),
                ));
            }
        }
        for s in &sims {
            end = end.max(s.all_done());
            for p in 0..7 {
                busy[p] += s.busy[p];
                if s.used[p] {
                    if s.id.cube {
                        cube_used[p] = true;
                    } else {
                        vec_used[p] = true;
                    }
                }
            }
            counts.add(&s.w.counts);
        }
    }
    let mut out = BTreeMap::new();
    for (i, p) in Pipe::ALL.iter().enumerate() {
        let cores = if cube_used[i] { l.cube_cores } else { 0 } + if vec_used[i] { l.vector_cores } else { 0 };
        if cores > 0 {
            out.insert(*p, (busy[i] * scale, cores));
        }
    }
    Ok((end, out, counts, scale))
}

/// A launch's simulation: cycles, per-pipe busy sums (and cores), counts of the cores simulated, and the
/// factor from those cores to all (1 unless sampled).
type Simulated = (f64, BTreeMap<Pipe, (f64, u32)>, Counts, f64);

/// Bytes a launch must move from and to HBM: the footprint of the GM tensors it touches when that fits in
/// L2, else all its traffic. A workspace counts the bytes written to it (at most its size): a workspace is
/// sized for every core of the launch, not all of which use it.
fn hbm_bytes(prog: &TileProgram, l: &Launch, target: &Target, traffic: u64, ws_written: u64) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    fn regions(ss: &[Stmt], out: &mut std::collections::BTreeSet<u32>) {
        for s in ss {
            match s {
                Stmt::For { body, .. } | Stmt::If { then: body, .. } => regions(body, out),
                Stmt::Copy { src, dst, .. } => {
                    for r in [src, dst] {
                        if let Loc::Gm(t) = r.loc {
                            out.insert(t.0);
                        }
                    }
                }
                Stmt::Gather { src, dst, .. } => {
                    out.insert(src.0);
                    if let Loc::Gm(t) = dst.loc {
                        out.insert(t.0);
                    }
                }
                _ => {}
            }
        }
    }
    regions(&l.cube, &mut seen);
    regions(&l.vector, &mut seen);
    let mut workspaces = 0u64;
    let mut footprint: u64 = 0;
    for t in seen.iter().filter_map(|t| prog.tensors.get(*t as usize)) {
        match t.role {
            TensorRole::Workspace { per_core, .. } => workspaces += per_core * (l.cube_cores + l.vector_cores) as u64,
            _ => footprint += t.shape.iter().product::<u64>() * t.dtype.size_bytes() as u64,
        }
    }
    footprint += workspaces.min(ws_written);
    if footprint <= target.l2_bytes {
        footprint.min(traffic)
    } else {
        traffic
    }
}

/// Estimates `prog` on `target`; with `record`, also the timeline of every instruction.
pub fn estimate(
    prog: &TileProgram,
    target: &Target,
    ints: &IntData,
    record: bool,
) -> Result<(Estimate, Option<Timeline>), Diagnostic> {
    estimate_with(prog, target, ints, record, None)
}

/// A quick estimate of one launch for ranking candidate tilings: only the first `groups` core groups (a
/// cube core with its vector cores, or a lone core) are simulated — with work dealt round-robin, the first
/// cores have the most — and the launch's GM traffic is scaled up from theirs. Returns cycles.
pub fn rank_launch(prog: &TileProgram, target: &Target, ints: &IntData, groups: usize) -> Result<f64, Diagnostic> {
    Ok(estimate_with(prog, target, ints, false, Some(groups))?.0.cycles())
}

fn estimate_with(
    prog: &TileProgram,
    target: &Target,
    ints: &IntData,
    record: bool,
    sample: Option<usize>,
) -> Result<(Estimate, Option<Timeline>), Diagnostic> {
    let steps = Cell::new(0u64);
    let mut launches = Vec::new();
    let mut timeline = Timeline {
        kernel: prog.kernel.clone(),
        target: target.name.clone(),
        clock_ghz: target.clock_ghz,
        ..Timeline::default()
    };
    let mut offset = 0.0;
    for (li, l) in prog.launches.iter().enumerate() {
        let mut dilation = 1.0f64;
        let mut attempt = 0;
        // Statements walked before this launch: each simulation of it (a retry at a new dilation, the
        // recording pass) counts against the limit once, as the report's walk does.
        let walked = steps.get();
        let result = loop {
            steps.set(walked);
            let mut rec = Recorder::new(li as u32, offset, false);
            let costs = Costs { target, gm_dilation: dilation };
            let (cycles, busy, counts, scale) = simulate_launch(prog, l, ints, &costs, &steps, &mut rec, sample)?;
            let traffic = ((counts.gm_bytes_read + counts.gm_bytes_written) as f64 * scale) as u64;
            let ws_written = (counts.gm_workspace_written as f64 * scale) as u64;
            let hbm = hbm_bytes(prog, l, target, traffic, ws_written);
            // The rate the chip can serve this launch's GM traffic at, in bytes per cycle.
            let reuse = if hbm > 0 { traffic as f64 / hbm as f64 } else { 1.0 };
            let chip = (target.gm_bandwidth_gb_s * reuse).min(target.l2_bandwidth_gb_s.max(target.gm_bandwidth_gb_s))
                / target.clock_ghz;
            let need = if cycles > 0.0 { traffic as f64 / cycles } else { 0.0 };
            attempt += 1;
            if need > chip * 1.01 && attempt < 6 {
                dilation *= need / chip;
                continue;
            }
            // Whatever the iteration left, the launch cannot end before the chip has moved its bytes.
            break (cycles.max(traffic as f64 / chip), busy, counts, hbm);
        };
        let (cycles, mut busy, mut counts, hbm) = result;
        if record {
            // The final pass again, recording (the walk is deterministic: same figures).
            steps.set(walked);
            // Once the timeline is full, later launches record nothing (and say so).
            let mut rec = Recorder::new(li as u32, offset, !timeline.truncated);
            rec.truncated = timeline.truncated;
            let costs = Costs { target, gm_dilation: dilation };
            let again = simulate_launch(prog, l, ints, &costs, &steps, &mut rec, sample)?;
            (_, busy, counts, _) = again;
            timeline.truncated |= rec.truncated;
            timeline.slices.extend(rec.slices);
            timeline.flows.extend(rec.flows);
            timeline.launches.push(LaunchSpan {
                name: l.name.clone(),
                start: offset,
                end: offset + cycles,
                cube_cores: l.cube_cores,
                vector_cores: l.vector_cores,
            });
        }
        offset += cycles;
        launches.push(LaunchEstimate {
            name: l.name.clone(),
            cycles,
            busy,
            gm_dilation: dilation,
            hbm_bytes: hbm,
            counts,
        });
    }
    let est = Estimate {
        kernel: prog.kernel.clone(),
        target: target.name.clone(),
        clock_ghz: target.clock_ghz,
        launches,
        peak_cube_flops_per_s: target.peak_cube_flops(),
        peak_gm_bytes_per_s: target.gm_bandwidth_gb_s * 1e9,
    };
    Ok((est, if record { Some(timeline) } else { None }))
}
