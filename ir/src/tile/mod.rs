//! The tile IR: per-core programs for the NPU model, specialized to concrete sizes.
//!
//! A [`TileProgram`] is one kernel lowered for one target at one set of dims. It names the tensors in
//! global memory (GM) — the kernel's parameters and outputs, the intermediates that fusion could not keep
//! on chip, and bounded per-core workspaces — and runs a sequence of [`Launch`]es, one per fusion group,
//! in order. A launch has a grid of cube cores and vector cores; every cube core runs the launch's `cube`
//! program and every vector core its `vector` program, telling themselves apart by [`SExpr::Core`]. The
//! on-chip buffers a launch uses are declared once per launch ([`Buffer`]): each core of the buffer's kind
//! has its own copy at the planned offset of the buffer's memory.
//!
//! The statements are what the hardware's units do, each on its pipe ([`Pipe`]):
//! - the scalar unit runs loops and integer arithmetic on scalar registers ([`SVar`]);
//! - copies move rectangular blocks between GM and the buffers, or between buffers, on MTE2, MTE1, MTE3 or
//!   FixPipe ([`Stmt::Copy`]), or gather rows whose indices are data ([`Stmt::Gather`]);
//! - the cube unit multiplies tiles ([`Stmt::Mmad`]: C += A · B with f32 accumulation in L0C);
//! - the vector unit computes on UB tiles ([`Stmt::Vector`], an elementwise expression over a tile;
//!   [`Stmt::Reduce`], a reduction along the rows or the columns of a tile), and runs the data-dependent
//!   library operations ([`Stmt::Library`]);
//! - flags order the pipes within a core ([`Stmt::SetFlag`]/[`Stmt::WaitFlag`], [`Stmt::Barrier`]) and
//!   cross-core flags order a cube core and its vector cores ([`Stmt::CrossSet`]/[`Stmt::CrossWait`]).
//!
//! Semantics, for the simulator and the verifier:
//! - Programs run statement by statement; the pipes of a core are asynchronous, so a statement on one pipe
//!   that reads what another pipe wrote must be ordered after it by a wait on a flag that the writer's
//!   pipe set after the write (or both are on the same pipe, which runs in order). The verifier checks this.
//! - A [`Region`] is a 2-D window `rows × cols` of a tensor or buffer: element `(r, c)` is at element
//!   offset `offset + r * row_stride + c` of the flat storage (a buffer's slot, or a GM tensor).
//! - Buffers hold their dtype; a copy or a vector statement converts when source and destination dtypes
//!   differ (rounding to nearest-even into bf16/f16, as a store does).
//! - Buffers are logically row-major whatever their [`Layout`]: the layout records the fractal format the
//!   hardware would use (and the alignment it needs), not a different indexing.
//! - Copies convert between float dtypes only; buffers hold zeros at the start of a launch; a scalar-unit
//!   division by zero is a compiler bug (the tiler's arithmetic), not a user error.

use crate::dtype::DType;
use crate::graph::{BinOp, ReduceOp, UnOp, ValueId};
use std::collections::BTreeMap;

/// A kernel lowered for a target at concrete dims.
#[derive(Clone, Debug, PartialEq)]
pub struct TileProgram {
    pub kernel: String,
    pub target: String,
    /// The dims it is specialized to.
    pub dims: BTreeMap<String, i64>,
    pub tensors: Vec<GmTensor>,
    pub launches: Vec<Launch>,
}

/// A tensor in global memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

#[derive(Clone, Debug, PartialEq)]
pub struct GmTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub role: TensorRole,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TensorRole {
    /// A kernel parameter (`params[i]`); an `inout` one is also written.
    Param(usize),
    /// A result of the kernel (`results[i]` of the graph).
    Output(usize),
    /// A whole tensor that one launch writes and a later one reads (graph node `ValueId`).
    Intermediate(ValueId),
    /// A bounded hand-off area, `per_core` bytes for each cube and vector core of the launch that uses it
    /// (e.g. cube results on their way to the vector cores on a target without a direct path).
    ///
    /// `unit_private`: the tiler's promise that only one launch uses the area, that in it the cores of the
    /// unit of cube core `q` (the cube core and the vector cores `v` with `v / ratio == q`, `ratio` the
    /// launch's vector cores per cube core) touch only elements `q · e .. (q + 1) · e` (`e` the elements of
    /// `per_core` bytes), and that such a unit reads only elements it wrote before, in the same launch.
    /// The host JIT then gives each thread one warm area of `per_core` bytes that the units it runs reuse
    /// in turn, instead of a cold area per core (each access's offset taken relative to its unit's area
    /// and bounds-checked against that area: see docs/jit.md).
    Workspace { per_core: u64, unit_private: bool },
}

/// The on-chip memories of a core.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mem {
    L1,
    L0A,
    L0B,
    L0C,
    UB,
}

impl Mem {
    pub const ALL: [Mem; 5] = [Mem::L1, Mem::L0A, Mem::L0B, Mem::L0C, Mem::UB];

    /// The name used in target descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Mem::L1 => "l1",
            Mem::L0A => "l0a",
            Mem::L0B => "l0b",
            Mem::L0C => "l0c",
            Mem::UB => "ub",
        }
    }

    /// Whether the memory belongs to a cube core (else to a vector core).
    pub fn on_cube(self) -> bool {
        !matches!(self, Mem::UB)
    }
}

/// The fractal format a buffer is in (NZ in L1 and L0C, zZ in L0A, zN in L0B; ND otherwise).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    ND,
    NZ,
    ZZ,
    ZN,
}

/// The units of a core, each with its own instruction queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pipe {
    /// The scalar unit: loops, address arithmetic, library operations' control.
    S,
    /// GM → L1 / UB / L0A / L0B.
    Mte2,
    /// L1 → L0A / L0B (and, where the target has it, L1 → UB).
    Mte1,
    /// UB → GM (and, where the target has it, UB → L1).
    Mte3,
    /// L0C → GM / L1 (and, where the target has it, L0C → UB), converting dtype on the way.
    Fix,
    /// The cube unit.
    M,
    /// The vector unit.
    V,
}

impl Pipe {
    pub const ALL: [Pipe; 7] = [Pipe::S, Pipe::Mte2, Pipe::Mte1, Pipe::Mte3, Pipe::Fix, Pipe::M, Pipe::V];

    pub fn name(self) -> &'static str {
        match self {
            Pipe::S => "S",
            Pipe::Mte2 => "MTE2",
            Pipe::Mte1 => "MTE1",
            Pipe::Mte3 => "MTE3",
            Pipe::Fix => "FIX",
            Pipe::M => "M",
            Pipe::V => "V",
        }
    }

    /// The engine name used in target descriptions' copy paths.
    pub fn engine(self) -> Option<&'static str> {
        match self {
            Pipe::Mte1 => Some("mte1"),
            Pipe::Mte2 => Some("mte2"),
            Pipe::Mte3 => Some("mte3"),
            Pipe::Fix => Some("fix"),
            _ => None,
        }
    }
}

/// An on-chip buffer of a launch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub mem: Mem,
    pub dtype: DType,
    /// The elements of one slot, as a tile shape (rows, cols) or any shape; slots are contiguous.
    pub shape: Vec<u64>,
    /// How many slots (2 for double buffering); a statement names the slot it uses.
    pub slots: u32,
    pub layout: Layout,
    /// Byte offset in `mem`, assigned by the buffer planner (aligned to the memory's alignment).
    pub offset: u64,
}

impl Buffer {
    /// A buffer of one slot in `mem`, row-major (`ND`), not yet placed (offset 0): what hand-built programs
    /// (tests, examples) declare before the buffer planner runs.
    pub fn single(name: &str, mem: Mem, dtype: DType, shape: Vec<u64>) -> Buffer {
        Buffer { name: name.to_string(), mem, dtype, shape, slots: 1, layout: Layout::ND, offset: 0 }
    }

    pub fn slot_elems(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of one slot.
    pub fn slot_bytes(&self) -> u64 {
        self.slot_elems() * self.dtype.size_bytes() as u64
    }

    /// Bytes of all slots.
    pub fn bytes(&self) -> u64 {
        self.slot_bytes() * self.slots as u64
    }
}

/// The unit(s) a launch uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Cube,
    Vector,
    /// Cube and vector cores cooperating (cube results handed to the vector cores).
    Mixed,
}

/// One fusion group's work on the chip.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub name: String,
    pub unit: Unit,
    /// Cube cores used (0 for a vector-only launch) and vector cores used.
    pub cube_cores: u32,
    pub vector_cores: u32,
    pub buffers: Vec<Buffer>,
    /// Scalar registers of the programs (names for printing; both programs share the numbering).
    pub svars: Vec<String>,
    pub cube: Vec<Stmt>,
    pub vector: Vec<Stmt>,
}

/// A scalar register of a program.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SVar(pub u32);

/// Integer arithmetic on the scalar unit (64-bit).
#[derive(Clone, Debug, PartialEq)]
pub enum SExpr {
    Const(i64),
    Var(SVar),
    /// This core's index among the launch's cores of its kind (0-based).
    Core,
    Bin(SBin, Box<SExpr>, Box<SExpr>),
    /// An element of a buffer read by the scalar unit (data-dependent control or addressing): `buf`'s
    /// slot `slot`, flat element `index`; an `i32` buffer, or an `f32` one whose element reads as its
    /// IEEE-754 bits taken as a signed 32-bit integer (the scalar unit's view of the word: `< 0` is the sign
    /// bit, how a template branches on the sign of a float scalar argument).
    Read {
        buf: BufId,
        slot: Box<SExpr>,
        index: Box<SExpr>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SBin {
    Add,
    Sub,
    Mul,
    /// Floor division.
    Div,
    /// Floor remainder.
    Mod,
    Min,
    Max,
    /// Comparisons give 0 or 1.
    Lt,
    Le,
    Eq,
}

/// Where a rectangular window lives.
#[derive(Clone, Debug, PartialEq)]
pub enum Loc {
    Gm(TensorId),
    Buf { buf: BufId, slot: SExpr },
}

/// A 2-D window: element `(r, c)` is at flat element `offset + r * row_stride + c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub loc: Loc,
    pub offset: SExpr,
    pub row_stride: SExpr,
}

/// An elementwise expression over a tile: evaluated at each `(r, c)` of the statement's `rows × cols`.
#[derive(Clone, Debug, PartialEq)]
pub enum VExpr {
    F32(f32),
    I32(i64),
    Bool(bool),
    /// A scalar-unit value (an integer), e.g. a loop index or a dim.
    Scalar(SExpr),
    /// The tile's row index `r` or column index `c` (for masks: add the tile's origin).
    Row,
    Col,
    /// `region[r, c]`; `Bcast` variants read `region[r, 0]` (one value per row) or `region[0, c]`.
    Read(Region),
    ReadRow(Region),
    ReadCol(Region),
    Unary(UnOp, Box<VExpr>),
    Binary(BinOp, Box<VExpr>, Box<VExpr>),
    Select(Box<VExpr>, Box<VExpr>, Box<VExpr>),
    /// To f32 / i32 / bool, or rounding an f32 through bf16 / f16.
    Cast(DType, Box<VExpr>),
}

impl VExpr {
    /// The operands of this node, in order (none for a leaf).
    pub fn children(&self) -> Vec<&VExpr> {
        match self {
            VExpr::Unary(_, a) | VExpr::Cast(_, a) => vec![a],
            VExpr::Binary(_, a, b) => vec![a, b],
            VExpr::Select(c, a, b) => vec![c, a, b],
            _ => Vec::new(),
        }
    }
}

/// The data-dependent library operations, run by a vector core's scalar unit over a UB-resident block.
#[derive(Clone, Debug, PartialEq)]
pub enum LibOp {
    /// The `k` largest of each row of `rows × cols` (largest first, ties to the lower index): values
    /// and/or indices.
    TopK { k: u64, values: Option<Region>, indices: Option<Region> },
    /// Stable sort indices of each row.
    ArgSort { descending: bool, dst: Region },
    /// Prefix sums along each row. With `carry`, row `r` starts from `carry[r, 0]` (initialized by the
    /// program) and its running total is written back there, so a row can span several tiles.
    CumSum { exclusive: bool, dst: Region, carry: Option<Region> },
    /// Counts of each value in `0..n` of the source (row-major), added into `dst[0, 0..n]`.
    BinCount { n: u64, dst: Region },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in lo..hi step step` on the scalar unit; `step > 0`; `lo` and `hi` are evaluated once.
    For { var: SVar, lo: SExpr, hi: SExpr, step: i64, body: Vec<Stmt> },
    /// `var = value` on the scalar unit.
    Set { var: SVar, value: SExpr },
    /// Runs `then` if `cond` is not 0.
    If { cond: SExpr, then: Vec<Stmt> },
    /// Copies `rows × cols` elements from `src` to `dst` on `pipe`, converting dtypes if they differ.
    Copy { pipe: Pipe, src: Region, dst: Region, rows: SExpr, cols: SExpr },
    /// For each of `rows` rows: copies `cols` elements starting at element `index[r] * row_stride +
    /// col_offset` of `src` (a GM tensor) to row `r` of `dst`. `index` is in the core's own memory (UB on
    /// a vector core, L1 on a cube core). `index` is an i32 UB region read by the
    /// scalar unit (`index[r]` is its element `(r, 0)`); an index outside `0..src_rows` stops the kernel
    /// with `span`'s error: `error` when given (with `{row}` the failing row of the tile and `{next}` the one
    /// after it; the grouped template's checks of `segment`'s offsets), else an index out of range.
    Gather {
        pipe: Pipe,
        src: TensorId,
        src_rows: u64,
        row_stride: u64,
        col_offset: SExpr,
        index: Region,
        dst: Region,
        rows: SExpr,
        cols: SExpr,
        span: crate::span::Span,
        error: Option<String>,
    },
    /// `c[m, n] (+)= Σ_k a[m, k] · b[k, n]` on the cube, in f32; `a` in L0A, `b` in L0B, `c` in L0C.
    Mmad { a: Region, b: Region, c: Region, m: SExpr, k: SExpr, n: SExpr, accumulate: bool },
    /// `dst[r, c] = expr(r, c)` for the tile `rows × cols`, on the vector unit.
    Vector { dst: Region, rows: SExpr, cols: SExpr, expr: VExpr },
    /// Reduces `src` (`rows × cols`) along `axis` (1: each row to one value, written to `dst[r, 0]`;
    /// 0: each column, to `dst[0, c]`). With `accumulate` (sum, max, min only), the reduction continues from
    /// `dst`'s value. An argmax/argmin index is the position within the tile.
    Reduce { op: ReduceOp, axis: u8, src: Region, dst: Region, rows: SExpr, cols: SExpr, accumulate: bool },
    /// A library operation over `src` (`rows × cols`).
    Library { op: LibOp, src: Region, rows: SExpr, cols: SExpr, span: crate::span::Span },
    /// `from` signals `to` with event `event` (0..8) once its work so far is done.
    SetFlag { from: Pipe, to: Pipe, event: u8 },
    /// `to` waits for `from`'s signal `event`.
    WaitFlag { from: Pipe, to: Pipe, event: u8 },
    /// Later work on `pipe` waits for earlier work on `pipe`.
    Barrier { pipe: Pipe },
    /// Signals a cross-core flag (0..=10) to the partner cores once all the work this core issued before it
    /// is done. With `ratio` the target's vector cores per cube core, cube core `i` is paired with vector
    /// cores `i * ratio .. (i + 1) * ratio`; a mixed launch uses whole groups (`vector_cores ==
    /// cube_cores * ratio`), so the launch's own counts give the same ratio.
    CrossSet { flag: u8 },
    /// Waits for a cross-core flag: a vector core's n-th wait consumes its cube core's n-th set; a cube
    /// core's n-th wait consumes the n-th set of each of its vector cores (it waits for all of them).
    CrossWait { flag: u8 },
}

impl Stmt {
    /// The pipe that executes the statement.
    pub fn pipe(&self) -> Pipe {
        match self {
            Stmt::For { .. } | Stmt::Set { .. } | Stmt::If { .. } | Stmt::CrossSet { .. } | Stmt::CrossWait { .. } => {
                Pipe::S
            }
            Stmt::Copy { pipe, .. } | Stmt::Gather { pipe, .. } => *pipe,
            Stmt::Mmad { .. } => Pipe::M,
            Stmt::Vector { .. } | Stmt::Reduce { .. } => Pipe::V,
            Stmt::Library { .. } => Pipe::S,
            Stmt::SetFlag { from, .. } => *from,
            Stmt::WaitFlag { to, .. } => *to,
            Stmt::Barrier { pipe } => *pipe,
        }
    }
}

impl TileProgram {
    pub fn tensor(&self, t: TensorId) -> &GmTensor {
        &self.tensors[t.0 as usize]
    }
}

pub mod print;
pub mod verify;
