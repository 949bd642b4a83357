//! The tile IR verifier: checks a [`TileProgram`] against a [`Target`], collecting every error (it never
//! stops at the first) and never panicking, whatever the program.
//!
//! What it checks, per launch:
//! - The grid: core counts within the target's, and consistent with the launch's [`Unit`].
//! - Capacity: per memory, the buffers' `offset + bytes` fit in the memory's usable bytes (capacity minus
//!   reserved) and the buffers of one memory do not overlap. This assumes every buffer of a launch is live
//!   for the whole launch (the planner does not reuse space within a launch).
//! - Alignment: every buffer's offset (and, with several slots, every slot's) is a multiple of its memory's
//!   `align`; layouts are the fractal formats of their memory (L0A zz, L0B zn, L0C and L1 nz, UB nd).
//! - Which unit touches which memory: a copy's memories are a copy path of the target whose engine is the
//!   copy's pipe (a copy into the other kind of core's memory, like `l0c -> ub` on a target that has it, is
//!   issued by the core that owns the source); mmad reads L0A and L0B (bf16, f16 or f32, the same) and writes L0C
//!   (f32); vector, reduce and library statements read and write UB only; a gather goes GM to UB or L1 on
//!   MTE2 with an i32 index in the core's own memory; a cube program touches only cube memories and GM, a
//!   vector program only UB and GM; each names only its core's pipes (cube: S, MTE1, MTE2, FIX, M; vector: S,
//!   MTE2, MTE3, V).
//! - Well-formedness: ids in range, event ids below 8, cross-core flags 0..=10 and only in a mixed launch,
//!   loop steps positive, slots in range, copies (and gathers) converting between float dtypes only, only
//!   sum, max and min reductions accumulating, index outputs (argmax/argmin, top-k indices, argsort,
//!   bincount) i32.
//! - Bounds and ordering, by running the programs: every core of the grid runs its program, the scalar unit
//!   concretely (all sizes are concrete; cores beyond the target's are not run). Every window a statement touches (`offset + r * row_stride + c`
//!   for its `rows x cols`) must lie inside its buffer slot or GM tensor. Every pipe is in order; a
//!   statement on pipe P that touches what a statement on another pipe Q wrote (or overwrites what Q read
//!   or wrote) must be ordered after it: a `wait_flag Q -> P` on P matched by a `set_flag Q -> P` (same
//!   event) that Q issued after the earlier access, possibly through a chain of such pairs. This is tracked
//!   with vector clocks per pipe; every statement is issued by the scalar unit, so it also comes after all
//!   earlier scalar work (a `wait_flag X -> S` orders everything issued after it). Within one pipe nothing
//!   is required (`barrier` orders nothing more in this model). Scalar reads of buffers
//!   ([`SExpr::Read`], the gather's index, library operations) are accesses of pipe S. Each buffer (and
//!   each GM tensor) reports only its first race in a launch.
//! - Across cores: a cube core and its vector cores (vector core `v`'s partner is cube core `v / (vector
//!   cores / cube cores)` of the target) access a GM tensor both programs use, one of them writing, only
//!   if a cross flag orders the two: a `cross_wait #f` issued before the later access that consumes a
//!   `cross_set #f` issued after the earlier one. A vector core's n-th wait on a flag consumes its cube
//!   core's n-th set; a cube core's n-th wait consumes the n-th set of each of its vector cores. A
//!   `cross_set` signals once all the work its core issued before it is done. A core waiting for more
//!   sets (or flags) than its partners issue would wait forever, which is reported too.
//!
//! Limits of the simulation:
//! - The work is capped: when a launch's programs would execute more than 2 million statement instances
//!   (summed over all cores), only the first and the last iteration of every loop are run. Bounds are then
//!   checked for those iterations only; ordering is checked for the sampled order, where a `wait_flag`
//!   whose `set_flag` fell in a skipped iteration is assumed to order after all earlier work of the setting
//!   pipe, and the cross-core check and the flag balance (waits that would wait forever) are skipped.
//! - Values read from buffers by the scalar unit ([`SExpr::Read`]) are data: they are unknown, and every
//!   bound that depends on one is not checked (an access at an unknown place is taken to touch its whole
//!   slot or tensor for ordering; in the cross-core check, a copy or vector statement at a known place
//!   whose rows are unknown but bounded — `min(c, x)`, directly or through registers — touches at most
//!   `c` rows there: the grouped matmul's data-dependent tile rows in its two workspace areas). A loop
//!   with an unknown bound runs its body once, with an unknown index;
//!   an `if` with an unknown condition runs its body.
//! - Ordering across cores is checked for GM tensors only; a copy into the other kind of core's memory
//!   (`l0c -> ub`, `ub -> l1`) is bounds-checked but not ordered. Two cores of the same kind writing the same
//!   GM elements are not reported. Histories of accesses are pruned when an ordered access covers an older
//!   one and capped at 256 per buffer slot (and pending flags at 4096 per pipe pair and event, an access
//!   at a data-dependent slot is tracked in the first 64 slots), so a race with a very old access may go
//!   unreported.

use super::print::{print_shape, Printer};
use super::*;
use crate::target::Target;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;

/// One broken rule, in a launch (`launch`, its index) or about the whole program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileError {
    pub launch: Option<usize>,
    pub message: String,
}

impl fmt::Display for TileError {
    /// `launch 2: message`, or just `message` for an error about the whole program.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.launch {
            Some(i) => write!(f, "launch {i}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Checks a program against the target it is compiled for; every error found is reported. A launch's
/// errors start with its name: ``launch 0: `rmsnorm.rows`: ub: 200704 bytes needed ...``.
pub fn verify(p: &TileProgram, target: &Target) -> Result<(), Vec<TileError>> {
    let mut errors = Vec::new();
    if p.target != target.name {
        errors.push(TileError {
            launch: None,
            message: format!(
                "the program is compiled for target `{}`, but checked against `{}`",
                p.target, target.name
            ),
        });
    }
    let names = super::print::tensor_names(p);
    let mut elems = Vec::with_capacity(p.tensors.len());
    for (i, t) in p.tensors.iter().enumerate() {
        let n = t.shape.iter().try_fold(1i128, |acc, &d| acc.checked_mul(d as i128));
        let bytes = n.and_then(|n| n.checked_mul(t.dtype.size_bytes() as i128));
        if bytes.is_none_or(|b| b > i64::MAX as i128) {
            errors.push(TileError {
                launch: None,
                message: format!("tensor t{i} `{}` ({}) is too large", names[i], print_shape(t.dtype, &t.shape)),
            });
            elems.push(None);
        } else {
            elems.push(n);
        }
    }
    for (li, l) in p.launches.iter().enumerate() {
        let mut c = Check::new(p, target, li, l, &elems);
        c.run();
        errors.extend(c.errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Statement instances (summed over a launch's cores) above which only first and last iterations run.
const FULL_LIMIT: u64 = 2_000_000;
/// Statement instances after which a sampled run stops (deeply nested loops).
const SAMPLED_LIMIT: u64 = 20_000_000;
/// Accesses remembered per buffer slot or tensor.
const HISTORY_MAX: usize = 256;
/// Slots tracked for an access whose slot depends on data.
const SLOTS_TRACKED: i64 = 64;
/// Pending `set_flag`s remembered per pipe pair and event (the oldest are forgotten).
const PENDING_MAX: usize = 4096;
/// Pairs of cube and vector accesses compared by the cross-core check.
const CROSS_PAIRS_MAX: u64 = 20_000_000;
/// Event ids per pipe pair.
const EVENTS: u8 = 8;
/// Cross-core flags, 0..=10.
const FLAGS: usize = 11;
/// The number of pipes.
const NP: usize = 7;

const CUBE_PIPES: &[Pipe] = &[Pipe::S, Pipe::Mte1, Pipe::Mte2, Pipe::Fix, Pipe::M];
const VECTOR_PIPES: &[Pipe] = &[Pipe::S, Pipe::Mte2, Pipe::Mte3, Pipe::V];

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum Side {
    Cube,
    Vector,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Cube => "cube",
            Side::Vector => "vector",
        }
    }

    fn pipes(self) -> &'static [Pipe] {
        match self {
            Side::Cube => CUBE_PIPES,
            Side::Vector => VECTOR_PIPES,
        }
    }

    fn has(self, m: Mem) -> bool {
        m.on_cube() == (self == Side::Cube)
    }
}

fn pix(p: Pipe) -> usize {
    Pipe::ALL.iter().position(|&q| q == p).unwrap_or(0)
}

fn expected_layout(m: Mem) -> Layout {
    match m {
        Mem::L1 | Mem::L0C => Layout::NZ,
        Mem::L0A => Layout::ZZ,
        Mem::L0B => Layout::ZN,
        Mem::UB => Layout::ND,
    }
}

/// Elements of one slot of `b` (`None` when it overflows).
fn slot_elems(b: &Buffer) -> Option<i128> {
    b.shape.iter().try_fold(1i128, |acc, &d| acc.checked_mul(d as i128)).filter(|&n| n <= i64::MAX as i128)
}

/// The window a statement touches: rows `0..rows` of `cols` elements from `off`, `stride` apart (`rows`,
/// `cols` > 0), or the whole slot or tensor when it depends on data.
#[derive(Copy, Clone, Debug)]
enum Geo {
    Whole,
    Win { off: i128, stride: i128, rows: i128, cols: i128 },
}

impl Geo {
    /// The smallest element range `lo..hi` holding the window.
    fn span(&self) -> (i128, i128) {
        match *self {
            Geo::Whole => (i128::MIN, i128::MAX),
            Geo::Win { off, stride, rows, cols } => {
                let last = off + (rows - 1) * stride;
                (off.min(last), off.max(last) + cols)
            }
        }
    }
}

/// Whether two windows share an element (exact for equal strides, else by their spans).
fn overlap(a: &Geo, b: &Geo) -> bool {
    let ((alo, ahi), (blo, bhi)) = (a.span(), b.span());
    if alo >= bhi || blo >= ahi {
        return false;
    }
    if let (Geo::Win { off: ao, stride: s, rows: ar, cols: ac }, Geo::Win { off: bo, stride: bs, rows: br, cols: bc }) =
        (*a, *b)
    {
        if s == bs && s > 0 && ac <= s && bc <= s {
            // Element `ao + ra*s + ca` equals `bo + rb*s + cb` iff `(ra - rb) * s` is in `d - ac + 1 ..= d + bc - 1`.
            let d = bo - ao;
            let kmin = (d - ac).div_euclid(s) + 1;
            let kmax = (d + bc - 1).div_euclid(s);
            return kmin.max(-(br - 1)) <= kmax.min(ar - 1);
        }
    }
    true
}

/// Whether window `n` holds every element of window `b`.
fn covers(n: &Geo, b: &Geo) -> bool {
    match (*n, *b) {
        (Geo::Whole, _) => true,
        (_, Geo::Whole) => false,
        (Geo::Win { off: no, stride: s, rows: nr, cols: nc }, Geo::Win { off: bo, stride: bs, rows: br, cols: bc }) => {
            if nr == 1 || (s >= 0 && s <= nc) {
                let ((nlo, nhi), (blo, bhi)) = (n.span(), b.span());
                return nlo <= blo && bhi <= nhi;
            }
            if s > 0 && nc <= s && (br == 1 || bs == s) && bc <= s {
                let d = bo - no;
                return d >= 0 && d % s + bc <= nc && d / s + br <= nr;
            }
            false
        }
    }
}

/// A buffer slot or a GM tensor, the unit of race tracking.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Gm(u32),
    Buf(u32, i64),
}

impl Key {
    /// What reports at most one race per launch: a buffer (all slots) or a tensor.
    fn race_key(self) -> (bool, u32) {
        match self {
            Key::Gm(t) => (true, t),
            Key::Buf(b, _) => (false, b),
        }
    }
}

/// An earlier access of a buffer slot or tensor by one core.
#[derive(Clone)]
struct Access<'a> {
    pipe: usize,
    clock: u64,
    write: bool,
    geo: Geo,
    stmt: &'a Stmt,
}

/// An access of a GM tensor that both programs of a launch use, for the cross-core check.
struct GmAccess<'a> {
    core: u32,
    tensor: u32,
    geo: Geo,
    write: bool,
    stmt: &'a Stmt,
    /// Cross flags set and waited for by the core before the access.
    sets: [u32; FLAGS],
    waits: [u32; FLAGS],
    ctx: String,
}

/// A region with its scalars evaluated.
struct RegionVal {
    loc: LocVal,
    off: Option<i64>,
    stride: Option<i64>,
}

enum LocVal {
    Gm(u32),
    Buf(u32, Option<i64>),
}

/// The state of the core being run.
struct CoreState<'a> {
    side: Side,
    core: i64,
    env: Vec<Option<i64>>,
    /// An upper bound of each register whose value is unknown, when one is known (`min(c, x)`; see
    /// [`Check::upper`]).
    max: Vec<Option<i64>>,
    set: Vec<bool>,
    /// Enclosing loops: variable and value, for messages.
    loops: Vec<(SVar, Option<i64>)>,
    /// Per pipe, the last clock of each pipe it is ordered after (its own entry: its statements so far).
    vc: [[u64; NP]; NP],
    /// Pending `set_flag`s per (from, to, event): the setter's clock when set.
    flags: HashMap<(usize, usize, u8), VecDeque<[u64; NP]>>,
    hist: HashMap<Key, Vec<Access<'a>>>,
    sets: [u32; FLAGS],
    waits: [u32; FLAGS],
}

impl<'a> CoreState<'a> {
    fn new(side: Side, core: i64, nvars: usize) -> CoreState<'a> {
        CoreState {
            side,
            core,
            env: vec![None; nvars],
            max: vec![None; nvars],
            set: vec![false; nvars],
            loops: Vec::new(),
            vc: [[0; NP]; NP],
            flags: HashMap::new(),
            hist: HashMap::new(),
            sets: [0; FLAGS],
            waits: [0; FLAGS],
        }
    }
}

/// Floor division and remainder, comparisons, min and max on 64 bits; `Err` says why there is no value.
fn sbin(op: SBin, a: i64, b: i64) -> Result<i64, &'static str> {
    let of = "overflows 64 bits";
    match op {
        SBin::Add => a.checked_add(b).ok_or(of),
        SBin::Sub => a.checked_sub(b).ok_or(of),
        SBin::Mul => a.checked_mul(b).ok_or(of),
        SBin::Div | SBin::Mod => {
            if b == 0 {
                return Err("divides by zero");
            }
            let q = a.checked_div(b).ok_or(of)?;
            let r = a.checked_rem(b).ok_or(of)?;
            let adjust = r != 0 && ((r < 0) != (b < 0));
            if op == SBin::Div {
                Ok(if adjust { q - 1 } else { q })
            } else {
                Ok(if adjust { r + b } else { r })
            }
        }
        SBin::Min => Ok(a.min(b)),
        SBin::Max => Ok(a.max(b)),
        SBin::Lt => Ok((a < b) as i64),
        SBin::Le => Ok((a <= b) as i64),
        SBin::Eq => Ok((a == b) as i64),
    }
}

/// Evaluates without reporting: data and unset registers are unknown.
fn quiet(e: &SExpr, env: &[Option<i64>], core: i64) -> Option<i64> {
    match e {
        SExpr::Const(c) => Some(*c),
        SExpr::Var(v) => env.get(v.0 as usize).copied().flatten(),
        SExpr::Core => Some(core),
        SExpr::Bin(op, a, b) => sbin(*op, quiet(a, env, core)?, quiet(b, env, core)?).ok(),
        SExpr::Read { .. } => None,
    }
}

/// The regions a vector expression reads, with their kind (0: `rows x cols`, 1: one per row, 2: one per
/// column), and its scalar-unit values.
fn vreads<'e>(e: &'e VExpr, regions: &mut Vec<(&'e Region, u8)>, scalars: &mut Vec<&'e SExpr>) {
    match e {
        VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Row | VExpr::Col => {}
        VExpr::Scalar(s) => scalars.push(s),
        VExpr::Read(r) => regions.push((r, 0)),
        VExpr::ReadRow(r) => regions.push((r, 1)),
        VExpr::ReadCol(r) => regions.push((r, 2)),
        VExpr::Unary(_, a) | VExpr::Cast(_, a) => vreads(a, regions, scalars),
        VExpr::Binary(_, a, b) => {
            vreads(a, regions, scalars);
            vreads(b, regions, scalars);
        }
        VExpr::Select(c, a, b) => {
            vreads(c, regions, scalars);
            vreads(a, regions, scalars);
            vreads(b, regions, scalars);
        }
    }
}

/// A buffer's name, offset and total bytes, for the capacity check.
type Placed = (String, u128, u128);

/// A library operation's output: what it is, its region, extent, and whether it is also read.
type LibOut = (&'static str, RegionVal, Option<i64>, Option<i64>, bool);

/// The checks of one launch.
struct Check<'a> {
    t: &'a Target,
    l: &'a Launch,
    pr: Printer,
    errors: Vec<TileError>,
    launch: usize,
    tensor_elems: &'a [Option<i128>],
    tensor_dtypes: Vec<DType>,
    /// Dynamic errors already reported: (statement address, what).
    reported: HashSet<(usize, &'static str)>,
    /// Buffers and tensors whose race is reported.
    raced: HashSet<(bool, u32)>,
    unset: HashSet<(Side, u32)>,
    sampled: bool,
    steps: u64,
    exhausted: bool,
    /// An upper bound of the rows of the copy or vector statement being checked when they are unknown:
    /// its GM windows are then bounded for the cross-core check rather than taken whole (see `access`).
    rows_max: Option<i64>,
    /// GM tensors both programs access, at least one writing.
    shared: BTreeSet<u32>,
    /// Cross-core logs of shared tensors: cube, vector.
    logs: [Vec<GmAccess<'a>>; 2],
    /// Cross flags set and waited for, per core: cube, vector.
    counts: [Vec<([u32; FLAGS], [u32; FLAGS])>; 2],
    cs: CoreState<'a>,
}

impl<'a> Check<'a> {
    fn new(
        p: &'a TileProgram,
        t: &'a Target,
        launch: usize,
        l: &'a Launch,
        tensor_elems: &'a [Option<i128>],
    ) -> Check<'a> {
        Check {
            t,
            l,
            pr: Printer::new(p, l),
            errors: Vec::new(),
            launch,
            tensor_elems,
            tensor_dtypes: p.tensors.iter().map(|t| t.dtype).collect(),
            reported: HashSet::new(),
            raced: HashSet::new(),
            unset: HashSet::new(),
            sampled: false,
            steps: 0,
            exhausted: false,
            rows_max: None,
            shared: BTreeSet::new(),
            logs: [Vec::new(), Vec::new()],
            counts: [Vec::new(), Vec::new()],
            cs: CoreState::new(Side::Cube, 0, 0),
        }
    }

    fn err(&mut self, msg: String) {
        let message = if self.l.name.is_empty() { msg } else { format!("`{}`: {msg}", self.l.name) };
        self.errors.push(TileError { launch: Some(self.launch), message });
    }

    fn run(&mut self) {
        let l = self.l;
        self.grid();
        self.buffers();
        self.stmts_static(Side::Cube, &l.cube);
        self.stmts_static(Side::Vector, &l.vector);
        self.find_shared();
        let sides =
            [(Side::Cube, &l.cube, self.cores(Side::Cube)), (Side::Vector, &l.vector, self.cores(Side::Vector))];
        // Count the statement instances, stopping past the limit.
        let mut n = 0u64;
        'count: for (_, body, cores) in sides {
            if body.is_empty() {
                continue;
            }
            for core in 0..cores {
                let mut env = vec![None; l.svars.len()];
                if !count(body, &mut env, core as i64, &mut n) {
                    self.sampled = true;
                    break 'count;
                }
            }
        }
        for (k, (side, body, cores)) in sides.into_iter().enumerate() {
            for core in 0..cores {
                if self.exhausted {
                    break;
                }
                self.cs = CoreState::new(side, core as i64, l.svars.len());
                self.exec(body);
                self.counts[k].push((self.cs.sets, self.cs.waits));
            }
        }
        if !self.sampled && !self.exhausted {
            self.cross_races();
            self.cross_balance();
        }
    }

    /// The cores of a side that run (at most the target's).
    fn cores(&self, side: Side) -> u32 {
        match side {
            Side::Cube => self.l.cube_cores.min(self.t.cube_cores),
            Side::Vector => self.l.vector_cores.min(self.t.vector_cores),
        }
    }

    fn grid(&mut self) {
        let (l, t) = (self.l, self.t);
        if l.cube_cores > t.cube_cores {
            self.err(format!("the grid has {} cube cores, but {} has {}", l.cube_cores, t.name, t.cube_cores));
        }
        if l.vector_cores > t.vector_cores {
            self.err(format!("the grid has {} vector cores, but {} has {}", l.vector_cores, t.name, t.vector_cores));
        }
        let mut side_checks = Vec::new();
        match l.unit {
            Unit::Vector => {
                if l.cube_cores > 0 {
                    self.err(format!("a vector launch has {} cube cores", l.cube_cores));
                }
                if !l.cube.is_empty() {
                    self.err("a vector launch has a cube program".to_string());
                }
                side_checks.push(Side::Vector);
            }
            Unit::Cube => {
                if l.vector_cores > 0 {
                    self.err(format!("a cube launch has {} vector cores", l.vector_cores));
                }
                if !l.vector.is_empty() {
                    self.err("a cube launch has a vector program".to_string());
                }
                side_checks.push(Side::Cube);
            }
            Unit::Mixed => {
                if l.cube_cores == 0 || l.vector_cores == 0 {
                    self.err(format!(
                        "a mixed launch needs cube and vector cores, but the grid has {} cube + {} vector",
                        l.cube_cores, l.vector_cores
                    ));
                }
            }
        }
        for side in side_checks {
            let (cores, body) = match side {
                Side::Cube => (l.cube_cores, &l.cube),
                Side::Vector => (l.vector_cores, &l.vector),
            };
            if cores == 0 && !body.is_empty() {
                self.err(format!(
                    "the {} program has statements, but the grid has 0 {} cores",
                    side.name(),
                    side.name()
                ));
            }
        }
    }

    fn buffers(&mut self) {
        let (l, t) = (self.l, self.t);
        let mut missing: BTreeSet<&'static str> = BTreeSet::new();
        let mut per_mem: Vec<(Mem, Vec<Placed>)> = Mem::ALL.iter().map(|&m| (m, Vec::new())).collect();
        for (i, b) in l.buffers.iter().enumerate() {
            let name = self.pr.buf(BufId(i as u32));
            let mem = b.mem.name();
            if b.slots == 0 {
                self.err(format!("buffer `{name}` has 0 slots"));
            }
            let slot = slot_elems(b).map(|n| n as u128 * b.dtype.size_bytes() as u128);
            let Some(slot) = slot else {
                self.err(format!("buffer `{name}` ({}) is too large", print_shape(b.dtype, &b.shape)));
                continue;
            };
            if slot == 0 {
                self.err(format!("buffer `{name}` ({}) has no elements", print_shape(b.dtype, &b.shape)));
            }
            let want = expected_layout(b.mem);
            if b.layout != want {
                self.err(format!(
                    "buffer `{name}` in {mem} has layout {}, but {mem} holds {} data",
                    super::print::layout_name(b.layout),
                    super::print::layout_name(want)
                ));
            }
            match t.memory(mem) {
                None => {
                    missing.insert(mem);
                }
                Some(m) => {
                    let align = m.align.max(1) as u128;
                    if !(b.offset as u128).is_multiple_of(align) {
                        self.err(format!(
                            "buffer `{name}` in {mem} is at offset {}, which is not a multiple of {mem}'s {align}-byte \
                             alignment",
                            b.offset
                        ));
                    } else if b.slots > 1 && !slot.is_multiple_of(align) {
                        self.err(format!(
                            "buffer `{name}` in {mem} has {slot}-byte slots, so slot 1 at offset {} is not a multiple \
                             of {mem}'s {align}-byte alignment",
                            b.offset as u128 + slot
                        ));
                    }
                }
            }
            if let Some(entry) = per_mem.iter_mut().find(|(m, _)| *m == b.mem) {
                entry.1.push((name, b.offset as u128, slot * b.slots as u128));
            }
        }
        for mem in missing {
            self.err(format!("target {} has no memory `{mem}`", t.name));
        }
        for (m, bufs) in per_mem {
            if bufs.is_empty() {
                continue;
            }
            let Some(desc) = t.memory(m.name()) else { continue };
            let usable = desc.capacity.saturating_sub(desc.reserved) as u128;
            let needed = bufs.iter().map(|(_, off, bytes)| off + bytes).max().unwrap_or(0);
            if needed > usable {
                let list: Vec<String> = bufs.iter().map(|(n, _, bytes)| format!("{n} {bytes}")).collect();
                self.err(format!("{}: {needed} bytes needed ({}), {usable} available", m.name(), list.join(", ")));
            }
            let mut sorted: Vec<&Placed> = bufs.iter().filter(|b| b.2 > 0).collect();
            sorted.sort_by_key(|b| (b.1, b.2));
            for i in 0..sorted.len() {
                let (an, ao, ab) = sorted[i];
                for &(bn, bo, bb) in &sorted[i + 1..] {
                    if *bo >= ao + ab {
                        break;
                    }
                    self.err(format!(
                        "{}: buffers `{an}` (bytes {ao}..{}) and `{bn}` (bytes {bo}..{}) overlap",
                        m.name(),
                        ao + ab,
                        bo + bb
                    ));
                }
            }
        }
    }

    // ----- static checks of statements -----

    fn stmts_static(&mut self, side: Side, body: &'a [Stmt]) {
        for s in body {
            let mut msgs = Vec::new();
            self.stmt_static(side, s, &mut msgs);
            if !msgs.is_empty() {
                let text = self.pr.stmt_line(s);
                for m in msgs {
                    self.err(format!("{} program: `{text}`: {m}", side.name()));
                }
            }
            match s {
                Stmt::For { body, .. } | Stmt::If { then: body, .. } => self.stmts_static(side, body),
                _ => {}
            }
        }
    }

    fn svar_static(&self, v: SVar, msgs: &mut Vec<String>) {
        if v.0 as usize >= self.l.svars.len() {
            msgs.push(format!("?s{} is out of range ({} scalar registers)", v.0, self.l.svars.len()));
        }
    }

    fn sx_static(&self, side: Side, e: &SExpr, msgs: &mut Vec<String>) {
        match e {
            SExpr::Const(_) | SExpr::Core => {}
            SExpr::Var(v) => self.svar_static(*v, msgs),
            SExpr::Bin(_, a, b) => {
                self.sx_static(side, a, msgs);
                self.sx_static(side, b, msgs);
            }
            SExpr::Read { buf, slot, index } => {
                match self.l.buffers.get(buf.0 as usize) {
                    None => msgs.push(format!(
                        "a scalar read of ?b{}, which is out of range ({} buffers)",
                        buf.0,
                        self.l.buffers.len()
                    )),
                    Some(b) => {
                        let name = self.pr.buf(*buf);
                        if !matches!(b.dtype, DType::I32 | DType::F32) {
                            msgs.push(format!(
                                "a scalar read of `{name}`, a {} buffer; scalar reads take i32 or f32 (its bits)",
                                b.dtype
                            ));
                        }
                        if !side.has(b.mem) {
                            msgs.push(format!(
                                "a scalar read of `{name}` in {}, which a {} core does not have",
                                b.mem.name(),
                                side.name()
                            ));
                        }
                    }
                }
                self.sx_static(side, slot, msgs);
                self.sx_static(side, index, msgs);
            }
        }
    }

    /// Checks a region's ids and scalars; gives its memory (`None` for GM or a bad id). `own`: the memory
    /// must be the core's own.
    fn region_static(&self, side: Side, r: &Region, what: &str, own: bool, msgs: &mut Vec<String>) -> Option<Mem> {
        self.sx_static(side, &r.offset, msgs);
        self.sx_static(side, &r.row_stride, msgs);
        match &r.loc {
            Loc::Gm(t) => {
                if t.0 as usize >= self.tensor_elems.len() {
                    msgs.push(format!(
                        "the {what} is ?t{}, which is out of range ({} tensors)",
                        t.0,
                        self.tensor_elems.len()
                    ));
                }
                None
            }
            Loc::Buf { buf, slot } => {
                self.sx_static(side, slot, msgs);
                let Some(b) = self.l.buffers.get(buf.0 as usize) else {
                    msgs.push(format!(
                        "the {what} is ?b{}, which is out of range ({} buffers)",
                        buf.0,
                        self.l.buffers.len()
                    ));
                    return None;
                };
                if own && !side.has(b.mem) {
                    msgs.push(format!(
                        "the {what} `{}` is in {}, which a {} core does not have",
                        self.pr.buf(*buf),
                        b.mem.name(),
                        side.name()
                    ));
                }
                Some(b.mem)
            }
        }
    }

    /// The dtype of a region's buffer, if it is a buffer in range.
    fn region_dtype(&self, r: &Region) -> Option<DType> {
        match &r.loc {
            Loc::Buf { buf, .. } => self.l.buffers.get(buf.0 as usize).map(|b| b.dtype),
            Loc::Gm(_) => None,
        }
    }

    /// The dtype of a region's buffer or GM tensor, if in range.
    fn data_dtype(&self, r: &Region) -> Option<DType> {
        match &r.loc {
            Loc::Gm(t) => self.tensor_dtypes.get(t.0 as usize).copied(),
            Loc::Buf { .. } => self.region_dtype(r),
        }
    }

    /// Copies convert between float dtypes only.
    fn conversion(from: Option<DType>, to: Option<DType>, msgs: &mut Vec<String>) {
        if let (Some(a), Some(b)) = (from, to) {
            if a != b && !(a.is_float() && b.is_float()) {
                msgs.push(format!("a copy converts between float dtypes only, not {a} to {b}"));
            }
        }
    }

    /// The region must be in UB (vector, reduce and library operands).
    fn ub_static(&self, side: Side, r: &Region, what: &str, unit: &str, msgs: &mut Vec<String>) {
        match self.region_static(side, r, what, true, msgs) {
            Some(Mem::UB) => {}
            Some(m) => msgs.push(format!("the {what} is in {}, but the {unit} reads and writes ub only", m.name())),
            None => {
                if matches!(r.loc, Loc::Gm(_)) {
                    msgs.push(format!("the {what} is in gm, but the {unit} reads and writes ub only"));
                }
            }
        }
    }

    fn want_i32(&self, r: &Region, what: &str, msgs: &mut Vec<String>) {
        if let Some(d) = self.region_dtype(r) {
            if d != DType::I32 {
                msgs.push(format!("the {what} is {d}, not i32"));
            }
        }
    }

    fn pipe_static(&self, side: Side, p: Pipe, msgs: &mut Vec<String>) {
        if !side.pipes().contains(&p) {
            msgs.push(format!("a {} core has no {} pipe", side.name(), p.name()));
        }
    }

    fn stmt_static(&self, side: Side, s: &Stmt, msgs: &mut Vec<String>) {
        let t = self.t;
        match s {
            Stmt::For { var, lo, hi, step, .. } => {
                self.svar_static(*var, msgs);
                self.sx_static(side, lo, msgs);
                self.sx_static(side, hi, msgs);
                if *step <= 0 {
                    msgs.push(format!("the loop step {step} is not positive"));
                }
            }
            Stmt::Set { var, value } => {
                self.svar_static(*var, msgs);
                self.sx_static(side, value, msgs);
            }
            Stmt::If { cond, .. } => self.sx_static(side, cond, msgs),
            Stmt::Copy { pipe, src, dst, rows, cols } => {
                self.sx_static(side, rows, msgs);
                self.sx_static(side, cols, msgs);
                let sm = self.region_static(side, src, "source", true, msgs);
                let dm = self.region_static(side, dst, "destination", false, msgs);
                Self::conversion(self.data_dtype(src), self.data_dtype(dst), msgs);
                // The destination may be the other kind of core's memory only on a path from the core's own.
                if let (Some(d), Loc::Buf { .. }) = (dm, &dst.loc) {
                    if !side.has(d) && sm.is_none() {
                        msgs.push(format!(
                            "the destination `{}` is in {}, which a {} core does not have",
                            self.buf_name(dst),
                            d.name(),
                            side.name()
                        ));
                    }
                }
                let bad_id = |r: &Region, m: Option<Mem>| m.is_none() && matches!(r.loc, Loc::Buf { .. });
                if pipe.engine().is_none() {
                    msgs.push(format!("a copy runs on MTE1, MTE2, MTE3 or FIX, not {}", pipe.name()));
                } else {
                    self.pipe_static(side, *pipe, msgs);
                    if !bad_id(src, sm) && !bad_id(dst, dm) {
                        let (from, to) = (sm.map_or("gm", |m| m.name()), dm.map_or("gm", |m| m.name()));
                        match t.path(from, to) {
                            None => msgs.push(format!("there is no {from} -> {to} copy path on {}", t.name)),
                            Some(path) => {
                                if Some(path.engine.as_str()) != pipe.engine() {
                                    msgs.push(format!(
                                        "the {from} -> {to} path runs on {}, not {}",
                                        path.engine.to_uppercase(),
                                        pipe.name()
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            Stmt::Gather { pipe, src, col_offset, index, dst, rows, cols, .. } => {
                self.sx_static(side, col_offset, msgs);
                self.sx_static(side, rows, msgs);
                self.sx_static(side, cols, msgs);
                if *pipe != Pipe::Mte2 {
                    msgs.push(format!("a gather runs on MTE2, not {}", pipe.name()));
                }
                Self::conversion(self.tensor_dtypes.get(src.0 as usize).copied(), self.data_dtype(dst), msgs);
                if src.0 as usize >= self.tensor_elems.len() {
                    msgs.push(format!(
                        "the source is ?t{}, which is out of range ({} tensors)",
                        src.0,
                        self.tensor_elems.len()
                    ));
                }
                match self.region_static(side, index, "index", true, msgs) {
                    Some(Mem::UB | Mem::L1) => self.want_i32(index, "index", msgs),
                    Some(m) => {
                        msgs.push(format!("the index is in {}, but the scalar unit reads it from ub or l1", m.name()))
                    }
                    None => {
                        if matches!(index.loc, Loc::Gm(_)) {
                            msgs.push("the index is in gm, but the scalar unit reads it from ub or l1".to_string());
                        }
                    }
                }
                match self.region_static(side, dst, "destination", true, msgs) {
                    Some(Mem::UB | Mem::L1) => {}
                    Some(m) => msgs.push(format!("a gather writes ub or l1, not {}", m.name())),
                    None => {
                        if matches!(dst.loc, Loc::Gm(_)) {
                            msgs.push("a gather writes ub or l1, not gm".to_string());
                        }
                    }
                }
            }
            Stmt::Mmad { a, b, c, m, k, n, .. } => {
                if side == Side::Vector {
                    msgs.push("mmad runs on the cube unit, which a vector core does not have".to_string());
                }
                for e in [m, k, n] {
                    self.sx_static(side, e, msgs);
                }
                for (r, what, want) in [(a, "a", Mem::L0A), (b, "b", Mem::L0B), (c, "c", Mem::L0C)] {
                    match self.region_static(side, r, &format!("operand {what}"), true, msgs) {
                        Some(got) if got != want => msgs.push(format!(
                            "{what} is in {}, but mmad takes {what} from {}",
                            got.name(),
                            want.name()
                        )),
                        None if matches!(r.loc, Loc::Gm(_)) => {
                            msgs.push(format!("{what} is in gm, but mmad takes {what} from {}", want.name()))
                        }
                        _ => {}
                    }
                }
                let (da, db, dc) = (self.region_dtype(a), self.region_dtype(b), self.region_dtype(c));
                let takes = |d: DType| matches!(d, DType::BF16 | DType::F16 | DType::F32);
                for (d, what) in [(da, "a"), (db, "b")] {
                    if let Some(d) = d {
                        if !takes(d) {
                            msgs.push(format!("{what} is {d}, but mmad multiplies bf16, f16 or f32"));
                        }
                    }
                }
                if let (Some(x), Some(y)) = (da, db) {
                    if x != y && takes(x) && takes(y) {
                        msgs.push(format!("a is {x} and b is {y}; they must have one dtype"));
                    }
                }
                if let Some(d) = dc {
                    if d != DType::F32 {
                        msgs.push(format!("c is {d}, but mmad accumulates in f32"));
                    }
                }
            }
            Stmt::Vector { dst, rows, cols, expr } => {
                if side == Side::Cube {
                    msgs.push(
                        "a vector statement runs on the vector unit, which a cube core does not have".to_string(),
                    );
                }
                self.sx_static(side, rows, msgs);
                self.sx_static(side, cols, msgs);
                self.ub_static(side, dst, "destination", "vector unit", msgs);
                let (mut regions, mut scalars) = (Vec::new(), Vec::new());
                vreads(expr, &mut regions, &mut scalars);
                for (r, _) in regions {
                    self.ub_static(side, r, "operand", "vector unit", msgs);
                }
                for e in scalars {
                    self.sx_static(side, e, msgs);
                }
            }
            Stmt::Reduce { op, axis, src, dst, rows, cols, accumulate } => {
                if side == Side::Cube {
                    msgs.push("a reduction runs on the vector unit, which a cube core does not have".to_string());
                }
                self.sx_static(side, rows, msgs);
                self.sx_static(side, cols, msgs);
                if *axis > 1 {
                    msgs.push(format!("axis {axis} is not 0 (columns) or 1 (rows)"));
                }
                self.ub_static(side, src, "source", "vector unit", msgs);
                self.ub_static(side, dst, "destination", "vector unit", msgs);
                if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
                    self.want_i32(dst, "destination of an index reduction", msgs);
                    if *accumulate {
                        msgs.push(format!("{} cannot accumulate (only sum, max and min can)", op.name()));
                    }
                }
            }
            Stmt::Library { op, src, rows, cols, .. } => {
                if side == Side::Cube {
                    msgs.push("a library operation runs on a vector core, not a cube core".to_string());
                }
                self.sx_static(side, rows, msgs);
                self.sx_static(side, cols, msgs);
                let unit = "library operation";
                self.ub_static(side, src, "source", unit, msgs);
                match op {
                    LibOp::TopK { values, indices, .. } => {
                        if let Some(v) = values {
                            self.ub_static(side, v, "values", unit, msgs);
                        }
                        if let Some(i) = indices {
                            self.ub_static(side, i, "indices", unit, msgs);
                            self.want_i32(i, "indices", msgs);
                        }
                    }
                    LibOp::ArgSort { dst, .. } => {
                        self.ub_static(side, dst, "destination", unit, msgs);
                        self.want_i32(dst, "destination", msgs);
                    }
                    LibOp::CumSum { dst, carry, .. } => {
                        self.ub_static(side, dst, "destination", unit, msgs);
                        if let Some(c) = carry {
                            self.ub_static(side, c, "carry", unit, msgs);
                        }
                    }
                    LibOp::BinCount { dst, .. } => {
                        self.ub_static(side, dst, "destination", unit, msgs);
                        self.want_i32(src, "source", msgs);
                        self.want_i32(dst, "destination", msgs);
                    }
                }
            }
            Stmt::SetFlag { from, to, event } | Stmt::WaitFlag { from, to, event } => {
                if *event >= EVENTS {
                    msgs.push(format!("event {event} is out of range (0..{EVENTS})"));
                }
                if from == to {
                    msgs.push(format!("a flag from {} to itself orders nothing", from.name()));
                }
                self.pipe_static(side, *from, msgs);
                if to != from {
                    self.pipe_static(side, *to, msgs);
                }
            }
            Stmt::Barrier { pipe } => self.pipe_static(side, *pipe, msgs),
            Stmt::CrossSet { flag } | Stmt::CrossWait { flag } => {
                if *flag as usize >= FLAGS {
                    msgs.push(format!("cross-core flag {flag} is out of range (0..={})", FLAGS - 1));
                }
                if self.l.unit != Unit::Mixed {
                    msgs.push(
                        "cross-core flags pair a cube core with its vector cores, which only a mixed launch has"
                            .to_string(),
                    );
                }
            }
        }
    }

    fn buf_name(&self, r: &Region) -> String {
        match &r.loc {
            Loc::Buf { buf, .. } => self.pr.buf(*buf),
            Loc::Gm(t) => format!("gm:{}", self.pr.tensor(*t)),
        }
    }

    /// The GM tensors both programs touch, one of them writing.
    fn find_shared(&mut self) {
        fn walk(body: &[Stmt], out: &mut HashMap<u32, bool>) {
            let note = |r: &Region, write: bool, out: &mut HashMap<u32, bool>| {
                if let Loc::Gm(t) = r.loc {
                    *out.entry(t.0).or_insert(false) |= write;
                }
            };
            for s in body {
                match s {
                    Stmt::For { body, .. } | Stmt::If { then: body, .. } => walk(body, out),
                    Stmt::Copy { src, dst, .. } => {
                        note(src, false, out);
                        note(dst, true, out);
                    }
                    Stmt::Gather { src, .. } => {
                        out.entry(src.0).or_insert(false);
                    }
                    Stmt::Vector { dst, expr, .. } => {
                        note(dst, true, out);
                        let (mut regions, mut scalars) = (Vec::new(), Vec::new());
                        vreads(expr, &mut regions, &mut scalars);
                        for (r, _) in regions {
                            note(r, false, out);
                        }
                    }
                    _ => {}
                }
            }
        }
        let (mut c, mut v) = (HashMap::new(), HashMap::new());
        walk(&self.l.cube, &mut c);
        walk(&self.l.vector, &mut v);
        for (t, cw) in c {
            if let Some(vw) = v.get(&t) {
                if cw || *vw {
                    self.shared.insert(t);
                }
            }
        }
    }

    // ----- running the programs -----

    fn ctx(&self) -> String {
        let mut s = format!("{} core {}", self.cs.side.name(), self.cs.core);
        for (v, val) in &self.cs.loops {
            let val = val.map_or_else(|| "?".to_string(), |x| x.to_string());
            s.push_str(&format!(", {} = {val}", self.pr.svar(*v)));
        }
        s
    }

    /// Reports a problem of a statement found while running, once per statement and kind.
    fn dyn_err(&mut self, s: &'a Stmt, what: &'static str, msg: String) {
        if self.reported.insert((s as *const Stmt as usize, what)) {
            let text = self.pr.stmt_line(s);
            let ctx = self.ctx();
            self.err(format!("{} program: `{text}`: {msg} ({ctx})", self.cs.side.name()));
        }
    }

    fn assign(&mut self, v: SVar, val: Option<i64>) {
        let i = v.0 as usize;
        if i < self.cs.env.len() {
            self.cs.env[i] = val;
            self.cs.max[i] = val;
            self.cs.set[i] = true;
        }
    }

    /// An upper bound of `e` without side effects: its value when known, else the smaller of the bounds of
    /// a `min`'s operands (either suffices), a constant, or a register's bound (the grouped matmul's tile rows
    /// `min(bm, hi - t0)` with `hi` and `t0` data). `None` when nothing bounds it.
    fn upper(&self, e: &SExpr) -> Option<i64> {
        if let Some(v) = quiet(e, &self.cs.env, self.cs.core) {
            return Some(v);
        }
        match e {
            SExpr::Const(c) => Some(*c),
            SExpr::Var(v) => self.cs.max.get(v.0 as usize).copied().flatten(),
            SExpr::Bin(SBin::Min, a, b) => match (self.upper(a), self.upper(b)) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
            _ => None,
        }
    }

    fn exec(&mut self, body: &'a [Stmt]) {
        for s in body {
            if self.exhausted {
                return;
            }
            self.steps += 1;
            if self.sampled && self.steps > SAMPLED_LIMIT {
                self.exhausted = true;
                return;
            }
            match s {
                Stmt::For { var, lo, hi, step, body } => {
                    let (lo, hi) = (self.eval(s, lo), self.eval(s, hi));
                    if *step <= 0 {
                        continue;
                    }
                    match (lo, hi) {
                        (Some(lo), Some(hi)) => {
                            if hi <= lo {
                                continue;
                            }
                            if self.sampled {
                                let n = (hi as i128 - lo as i128 + *step as i128 - 1) / *step as i128;
                                let last = (lo as i128 + (n - 1) * *step as i128) as i64;
                                self.iteration(*var, Some(lo), body);
                                if n >= 2 {
                                    self.iteration(*var, Some(last), body);
                                }
                            } else {
                                let mut i = lo;
                                while i < hi && !self.exhausted {
                                    self.iteration(*var, Some(i), body);
                                    match i.checked_add(*step) {
                                        Some(x) => i = x,
                                        None => break,
                                    }
                                }
                            }
                        }
                        _ => self.iteration(*var, None, body),
                    }
                }
                Stmt::Set { var, value } => {
                    let v = self.eval(s, value);
                    self.assign(*var, v);
                    if v.is_none() {
                        let m = self.upper(value);
                        if let Some(x) = self.cs.max.get_mut(var.0 as usize) {
                            *x = m;
                        }
                    }
                }
                Stmt::If { cond, then } => {
                    if self.eval(s, cond) != Some(0) {
                        self.exec(then);
                    }
                }
                _ => self.leaf(s),
            }
        }
    }

    fn iteration(&mut self, var: SVar, val: Option<i64>, body: &'a [Stmt]) {
        self.assign(var, val);
        self.cs.loops.push((var, val));
        self.exec(body);
        self.cs.loops.pop();
    }

    /// Evaluates a scalar expression of `s`; scalar reads of buffers are checked and recorded.
    fn eval(&mut self, s: &'a Stmt, e: &SExpr) -> Option<i64> {
        match e {
            SExpr::Const(c) => Some(*c),
            SExpr::Var(v) => {
                let i = v.0 as usize;
                let val = *self.cs.env.get(i)?;
                if !self.cs.set[i] && self.unset.insert((self.cs.side, v.0)) {
                    let ctx = self.ctx();
                    self.err(format!(
                        "{} program: `{}` is read before it is set ({ctx})",
                        self.cs.side.name(),
                        self.pr.svar(*v)
                    ));
                }
                val
            }
            SExpr::Core => Some(self.cs.core),
            SExpr::Bin(op, a, b) => {
                let (a, b) = (self.eval(s, a), self.eval(s, b));
                match sbin(*op, a?, b?) {
                    Ok(v) => Some(v),
                    Err(why) => {
                        let e = self.pr.sx(e);
                        self.dyn_err(s, why, format!("`{e}` {why}"));
                        None
                    }
                }
            }
            SExpr::Read { buf, slot, index } => {
                let (slot, index) = (self.eval(s, slot), self.eval(s, index));
                self.issue(Pipe::S);
                let rv = RegionVal { loc: LocVal::Buf(buf.0, slot), off: index, stride: Some(1) };
                self.access(s, "scalar read", &rv, Some(1), Some(1), false, Pipe::S);
                None
            }
        }
    }

    fn region(&mut self, s: &'a Stmt, r: &Region) -> RegionVal {
        let loc = match &r.loc {
            Loc::Gm(t) => LocVal::Gm(t.0),
            Loc::Buf { buf, slot } => LocVal::Buf(buf.0, self.eval(s, slot)),
        };
        let off = self.eval(s, &r.offset);
        let stride = self.eval(s, &r.row_stride);
        RegionVal { loc, off, stride }
    }

    /// Issues a statement on pipe `p`: after all earlier scalar work, and after `p`'s earlier statements.
    fn issue(&mut self, p: Pipe) {
        let (pi, si) = (pix(p), pix(Pipe::S));
        if pi != si {
            let s = self.cs.vc[si];
            for (x, y) in self.cs.vc[pi].iter_mut().zip(s) {
                *x = (*x).max(y);
            }
        }
        self.cs.vc[pi][pi] += 1;
    }

    /// Checks and records one access of a window `rows x cols` of a region on pipe `pipe`.
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        s: &'a Stmt,
        what: &'static str,
        rv: &RegionVal,
        rows: Option<i64>,
        cols: Option<i64>,
        write: bool,
        pipe: Pipe,
    ) {
        for (x, dim) in [(rows, "rows"), (cols, "columns")] {
            if let Some(x) = x {
                if x < 0 {
                    self.dyn_err(s, what, format!("the {what} has {x} {dim}"));
                    return;
                }
            }
        }
        if rows == Some(0) || cols == Some(0) {
            return;
        }
        let (name, elems, keys, record) = match rv.loc {
            LocVal::Gm(t) => {
                let Some(Some(n)) = self.tensor_elems.get(t as usize).copied() else { return };
                (format!("gm:{}", self.pr.tensor(TensorId(t))), n, vec![Key::Gm(t)], true)
            }
            LocVal::Buf(b, slot) => {
                let l = self.l;
                let Some(buf) = l.buffers.get(b as usize) else { return };
                let Some(n) = slot_elems(buf) else { return };
                let bname = self.pr.buf(BufId(b));
                let record = self.cs.side.has(buf.mem);
                match slot {
                    Some(x) if x < 0 || x >= buf.slots as i64 => {
                        self.dyn_err(
                            s,
                            what,
                            format!("the {what} uses slot {x} of `{bname}`, which has {} slots", buf.slots),
                        );
                        return;
                    }
                    Some(x) => (format!("`{bname}` slot {x}"), n, vec![Key::Buf(b, x)], record),
                    None => {
                        let slots = (buf.slots as i64).min(SLOTS_TRACKED);
                        (format!("`{bname}`"), n, (0..slots).map(|x| Key::Buf(b, x)).collect(), record)
                    }
                }
            }
        };
        let geo = match (rv.off, rv.stride, rows, cols) {
            (Some(off), Some(stride), Some(rows), Some(cols)) => {
                let g = Geo::Win { off: off as i128, stride: stride as i128, rows: rows as i128, cols: cols as i128 };
                let (lo, hi) = g.span();
                if lo < 0 || hi > elems {
                    self.dyn_err(
                        s,
                        what,
                        format!("the {what} {name} spans elements {lo}..{hi}, outside its {elems} elements"),
                    );
                    return;
                }
                g
            }
            _ => Geo::Whole,
        };
        // Unknown rows under a known bound (`rows_max`): the window of that many rows holds the access, so it
        // stands for it in the cross-core check (an overlap with it is all an overlap with the access can be;
        // nothing there is pruned by it); the bounds are not checked (the bound may pass the end where the
        // rows do not), and the core's own history keeps the whole tensor (it prunes what a later access
        // covers).
        let cross_geo = match (geo, rv.off, rv.stride, rows, cols, self.rows_max.filter(|&r| r >= 1)) {
            (Geo::Whole, Some(off), Some(stride), None, Some(cols), Some(r)) => {
                let g = Geo::Win { off: off as i128, stride: stride as i128, rows: r as i128, cols: cols as i128 };
                let (lo, hi) = g.span();
                if lo < 0 || hi > elems {
                    Geo::Whole
                } else {
                    g
                }
            }
            _ => geo,
        };
        if !record {
            return;
        }
        for key in keys {
            self.record(s, key, geo, write, pipe);
        }
        if let LocVal::Gm(t) = rv.loc {
            if !self.sampled && self.shared.contains(&t) {
                let k = match self.cs.side {
                    Side::Cube => 0,
                    Side::Vector => 1,
                };
                let ctx = self.ctx();
                self.logs[k].push(GmAccess {
                    core: self.cs.core as u32,
                    tensor: t,
                    geo: cross_geo,
                    write,
                    stmt: s,
                    sets: self.cs.sets,
                    waits: self.cs.waits,
                    ctx,
                });
            }
        }
    }

    /// Checks an access against the earlier accesses of its buffer slot or tensor by other pipes, then
    /// remembers it.
    fn record(&mut self, s: &'a Stmt, key: Key, geo: Geo, write: bool, pipe: Pipe) {
        if self.raced.contains(&key.race_key()) {
            return;
        }
        let pi = pix(pipe);
        let vc = self.cs.vc[pi];
        let hist = self.cs.hist.entry(key).or_default();
        let race = hist
            .iter()
            .find(|b| (b.write || write) && b.pipe != pi && vc[b.pipe] < b.clock && overlap(&b.geo, &geo))
            .cloned();
        if let Some(b) = race {
            hist.clear();
            self.raced.insert(key.race_key());
            self.report_race(s, key, write, pipe, &b);
            return;
        }
        hist.retain(|b| !((b.pipe == pi || vc[b.pipe] >= b.clock) && (write || !b.write) && covers(&geo, &b.geo)));
        hist.push(Access { pipe: pi, clock: vc[pi], write, geo, stmt: s });
        if hist.len() > HISTORY_MAX {
            hist.remove(0);
        }
    }

    fn report_race(&mut self, s: &'a Stmt, key: Key, write: bool, pipe: Pipe, b: &Access<'a>) {
        let q = Pipe::ALL[b.pipe];
        let (kind, verb, done) = match (b.write, write) {
            (true, false) => ("read-after-write", "reads", "wrote"),
            (true, true) => ("write-after-write", "overwrites", "wrote"),
            _ => ("write-after-read", "overwrites", "read"),
        };
        let loc = match key {
            Key::Gm(t) => format!("gm:{}", self.pr.tensor(TensorId(t))),
            Key::Buf(bf, slot) => format!("`{}` slot {slot}", self.pr.buf(BufId(bf))),
        };
        let (later, earlier) = (self.pr.stmt_line(s), self.pr.stmt_line(b.stmt));
        let (p, q) = (pipe.name(), q.name());
        let ctx = self.ctx();
        let what = if b.write { "write" } else { "read" };
        self.err(format!(
            "{} program: {kind} race on {loc} ({ctx}): `{later}` on {p} {verb} what `{earlier}` on {q} {done}, but no \
             wait_flag {q} -> {p} matched by a set_flag {q} -> {p} issued after the {what} orders them",
            self.cs.side.name()
        ));
    }

    fn leaf(&mut self, s: &'a Stmt) {
        match s {
            Stmt::For { .. } | Stmt::Set { .. } | Stmt::If { .. } => {}
            Stmt::Copy { pipe, src, dst, rows: rows_e, cols } => {
                let (rows, cols) = (self.eval(s, rows_e), self.eval(s, cols));
                let (src, dst) = (self.region(s, src), self.region(s, dst));
                self.issue(*pipe);
                self.rows_max = if rows.is_none() { self.upper(rows_e) } else { None };
                self.access(s, "source", &src, rows, cols, false, *pipe);
                self.access(s, "destination", &dst, rows, cols, true, *pipe);
                self.rows_max = None;
            }
            Stmt::Gather { pipe, src, src_rows, row_stride, col_offset, index, dst, rows, cols, .. } => {
                let (rows, cols) = (self.eval(s, rows), self.eval(s, cols));
                let col_offset = self.eval(s, col_offset);
                let (index, dst) = (self.region(s, index), self.region(s, dst));
                self.issue(Pipe::S);
                self.access(s, "index", &index, rows, Some(1), false, Pipe::S);
                self.issue(*pipe);
                let table =
                    RegionVal { loc: LocVal::Gm(src.0), off: col_offset, stride: i64::try_from(*row_stride).ok() };
                self.access(s, "source", &table, i64::try_from(*src_rows).ok(), cols, false, *pipe);
                self.access(s, "destination", &dst, rows, cols, true, *pipe);
            }
            Stmt::Mmad { a, b, c, m, k, n, accumulate } => {
                let (m, k, n) = (self.eval(s, m), self.eval(s, k), self.eval(s, n));
                let (a, b, c) = (self.region(s, a), self.region(s, b), self.region(s, c));
                self.issue(Pipe::M);
                self.access(s, "operand a", &a, m, k, false, Pipe::M);
                self.access(s, "operand b", &b, k, n, false, Pipe::M);
                if *accumulate {
                    self.access(s, "operand c", &c, m, n, false, Pipe::M);
                }
                self.access(s, "operand c", &c, m, n, true, Pipe::M);
            }
            Stmt::Vector { dst, rows: rows_e, cols, expr } => {
                let (rows, cols) = (self.eval(s, rows_e), self.eval(s, cols));
                self.rows_max = if rows.is_none() { self.upper(rows_e) } else { None };
                let (mut regions, mut scalars) = (Vec::new(), Vec::new());
                vreads(expr, &mut regions, &mut scalars);
                for e in scalars {
                    self.eval(s, e);
                }
                let reads: Vec<(RegionVal, u8)> =
                    regions.into_iter().map(|(r, kind)| (self.region(s, r), kind)).collect();
                let dst = self.region(s, dst);
                self.issue(Pipe::V);
                for (r, kind) in &reads {
                    let (rr, cc) = match kind {
                        0 => (rows, cols),
                        1 => (rows, Some(1)),
                        _ => (Some(1), cols),
                    };
                    self.access(s, "operand", r, rr, cc, false, Pipe::V);
                }
                self.access(s, "destination", &dst, rows, cols, true, Pipe::V);
                self.rows_max = None;
            }
            Stmt::Reduce { axis, src, dst, rows, cols, accumulate, .. } => {
                let (rows, cols) = (self.eval(s, rows), self.eval(s, cols));
                let (src, dst) = (self.region(s, src), self.region(s, dst));
                self.issue(Pipe::V);
                self.access(s, "source", &src, rows, cols, false, Pipe::V);
                let (dr, dc) = match axis {
                    1 => (rows, Some(1)),
                    0 => (Some(1), cols),
                    _ => return,
                };
                if *accumulate {
                    self.access(s, "destination", &dst, dr, dc, false, Pipe::V);
                }
                self.access(s, "destination", &dst, dr, dc, true, Pipe::V);
            }
            Stmt::Library { op, src, rows, cols, .. } => {
                let (rows, cols) = (self.eval(s, rows), self.eval(s, cols));
                let src_v = self.region(s, src);
                let mut outs: Vec<LibOut> = Vec::new();
                match op {
                    LibOp::TopK { k, values, indices } => {
                        let kk = i64::try_from(*k).ok();
                        if let (Some(kk), Some(c)) = (kk, cols) {
                            if kk > c {
                                self.dyn_err(s, "k", format!("top-{kk} of rows of {c} values"));
                            }
                        }
                        if let Some(v) = values {
                            outs.push(("values", self.region(s, v), rows, kk, false));
                        }
                        if let Some(i) = indices {
                            outs.push(("indices", self.region(s, i), rows, kk, false));
                        }
                    }
                    LibOp::ArgSort { dst, .. } => outs.push(("destination", self.region(s, dst), rows, cols, false)),
                    LibOp::CumSum { dst, carry, .. } => {
                        outs.push(("destination", self.region(s, dst), rows, cols, false));
                        if let Some(c) = carry {
                            outs.push(("carry", self.region(s, c), rows, Some(1), true));
                        }
                    }
                    LibOp::BinCount { n, dst } => {
                        outs.push(("destination", self.region(s, dst), Some(1), i64::try_from(*n).ok(), true))
                    }
                }
                self.issue(Pipe::S);
                self.access(s, "source", &src_v, rows, cols, false, Pipe::S);
                for (what, r, rr, cc, reads) in &outs {
                    if *reads {
                        self.access(s, what, r, *rr, *cc, false, Pipe::S);
                    }
                    self.access(s, what, r, *rr, *cc, true, Pipe::S);
                }
            }
            Stmt::SetFlag { from, to, event } => {
                self.issue(*from);
                let snap = self.cs.vc[pix(*from)];
                let q = self.cs.flags.entry((pix(*from), pix(*to), *event)).or_default();
                q.push_back(snap);
                if q.len() > PENDING_MAX {
                    q.pop_front();
                }
            }
            Stmt::WaitFlag { from, to, event } => {
                self.issue(*to);
                let (fi, ti) = (pix(*from), pix(*to));
                let snap = match self.cs.flags.get_mut(&(fi, ti, *event)).and_then(|q| q.pop_front()) {
                    Some(snap) => Some(snap),
                    None if self.sampled => Some(self.cs.vc[fi]),
                    None => None,
                };
                match snap {
                    Some(snap) => {
                        for (x, y) in self.cs.vc[ti].iter_mut().zip(snap) {
                            *x = (*x).max(y);
                        }
                    }
                    None => self.dyn_err(
                        s,
                        "wait",
                        format!(
                            "no set_flag {} -> {} #{event} is issued before it, so {} would wait forever",
                            from.name(),
                            to.name(),
                            to.name()
                        ),
                    ),
                }
            }
            Stmt::Barrier { pipe } => self.issue(*pipe),
            Stmt::CrossSet { flag } => {
                self.issue(Pipe::S);
                if let Some(c) = self.cs.sets.get_mut(*flag as usize) {
                    *c += 1;
                }
            }
            Stmt::CrossWait { flag } => {
                self.issue(Pipe::S);
                if let Some(c) = self.cs.waits.get_mut(*flag as usize) {
                    *c += 1;
                }
            }
        }
    }

    // ----- across cores -----

    /// How many vector cores share a cube core on the target.
    fn ratio(&self) -> u32 {
        (self.t.vector_cores / self.t.cube_cores.max(1)).max(1)
    }

    fn cross_races(&mut self) {
        let ratio = self.ratio();
        let logs = std::mem::take(&mut self.logs);
        let mut budget = CROSS_PAIRS_MAX;
        let shared: Vec<u32> = self.shared.iter().copied().collect();
        'tensors: for t in shared {
            let mut cube: Vec<&GmAccess<'a>> = logs[0].iter().filter(|a| a.tensor == t).collect();
            cube.sort_by_key(|a| a.geo.span().0);
            for va in logs[1].iter().filter(|a| a.tensor == t) {
                let (_, vhi) = va.geo.span();
                for ca in &cube {
                    if ca.geo.span().0 >= vhi {
                        break;
                    }
                    if budget == 0 {
                        return;
                    }
                    budget -= 1;
                    if !(ca.write || va.write) || !overlap(&ca.geo, &va.geo) {
                        continue;
                    }
                    let partner = va.core / ratio == ca.core;
                    let hb = |a: &GmAccess<'_>, b: &GmAccess<'_>| (0..FLAGS).any(|f| b.waits[f] > a.sets[f]);
                    if partner && (hb(ca, va) || hb(va, ca)) {
                        continue;
                    }
                    let (vs, cs) = (self.pr.stmt_line(va.stmt), self.pr.stmt_line(ca.stmt));
                    let name = self.pr.tensor(TensorId(t));
                    let mut msg = if ca.write && !va.write {
                        format!(
                            "cross-core race on gm:{name}: `{vs}` ({}) reads what `{cs}` ({}) writes, but no cross_wait \
                             on the vector core matched by a cross_set the cube core issues after the write orders them",
                            va.ctx, ca.ctx
                        )
                    } else {
                        format!(
                            "cross-core race on gm:{name}: `{cs}` ({}) and `{vs}` ({}) touch the same elements, one \
                             writing, but no cross_set / cross_wait pair orders them",
                            ca.ctx, va.ctx
                        )
                    };
                    if !partner {
                        msg.push_str(&format!(
                            "; vector core {}'s partner is cube core {}, and cross-core flags only order partners",
                            va.core,
                            va.core / ratio
                        ));
                    }
                    self.err(msg);
                    continue 'tensors;
                }
            }
        }
    }

    /// Cores waiting for more cross-core flags than their partners set would wait forever.
    fn cross_balance(&mut self) {
        let ratio = self.ratio() as usize;
        let counts = std::mem::take(&mut self.counts);
        let (cube, vector) = (&counts[0], &counts[1]);
        let mut seen: HashSet<(Side, usize)> = HashSet::new();
        for (v, (_, waits)) in vector.iter().enumerate() {
            for (f, &w) in waits.iter().enumerate() {
                if w == 0 || seen.contains(&(Side::Vector, f)) {
                    continue;
                }
                let c = v / ratio;
                let sets = cube.get(c).map_or(0, |x| x.0[f]);
                if w > sets {
                    seen.insert((Side::Vector, f));
                    let who = if c < cube.len() {
                        format!("its cube core {c} sets it {sets} times")
                    } else {
                        format!("its partner cube core {c} is not in the grid")
                    };
                    self.err(format!(
                        "vector program: vector core {v} waits for cross-core flag {f} {} times, but {who}: it would \
                         wait forever",
                        w
                    ));
                }
            }
        }
        for (c, (_, waits)) in cube.iter().enumerate() {
            for (f, &w) in waits.iter().enumerate() {
                if w == 0 || seen.contains(&(Side::Cube, f)) {
                    continue;
                }
                let partners: Vec<usize> = (c * ratio..(c + 1) * ratio).filter(|&v| v < vector.len()).collect();
                let sets = partners.iter().map(|&v| vector[v].0[f]).min().unwrap_or(0);
                if w > sets {
                    seen.insert((Side::Cube, f));
                    let who = if partners.is_empty() {
                        "none of its vector cores is in the grid".to_string()
                    } else {
                        let list: Vec<String> = partners.iter().map(|v| v.to_string()).collect();
                        format!("its vector cores {} set it at least {sets} times", list.join(", "))
                    };
                    self.err(format!(
                        "cube program: cube core {c} waits for cross-core flag {f} {} times, but {who}: it would wait \
                         forever",
                        w
                    ));
                }
            }
        }
    }
}

/// Counts the statement instances of a program on one core; `false` once past [`FULL_LIMIT`].
fn count(body: &[Stmt], env: &mut Vec<Option<i64>>, core: i64, n: &mut u64) -> bool {
    for s in body {
        *n += 1;
        if *n > FULL_LIMIT {
            return false;
        }
        match s {
            Stmt::For { var, lo, hi, step, body } => {
                let (lo, hi) = (quiet(lo, env, core), quiet(hi, env, core));
                if *step <= 0 {
                    continue;
                }
                let i = var.0 as usize;
                match (lo, hi) {
                    (Some(lo), Some(hi)) => {
                        let mut x = lo;
                        while x < hi {
                            if let Some(slot) = env.get_mut(i) {
                                *slot = Some(x);
                            }
                            *n += 1;
                            if *n > FULL_LIMIT || !count(body, env, core, n) {
                                return false;
                            }
                            match x.checked_add(*step) {
                                Some(y) => x = y,
                                None => break,
                            }
                        }
                    }
                    _ => {
                        if let Some(slot) = env.get_mut(i) {
                            *slot = None;
                        }
                        if !count(body, env, core, n) {
                            return false;
                        }
                    }
                }
            }
            Stmt::Set { var, value } => {
                let v = quiet(value, env, core);
                if let Some(slot) = env.get_mut(var.0 as usize) {
                    *slot = v;
                }
            }
            Stmt::If { cond, then } if quiet(cond, env, core) != Some(0) && !count(then, env, core, n) => {
                return false;
            }
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Span;
    use crate::tile::print::tests::*;

    fn t910() -> Target {
        Target::builtin("ascend910b").expect("the built-in target parses")
    }

    fn errors(p: &TileProgram) -> Vec<TileError> {
        verify(p, &t910()).err().unwrap_or_default()
    }

    /// The messages of `p`'s errors; asserts that some error contains every needle.
    fn expect(p: &TileProgram, needles: &[&str]) -> Vec<String> {
        let msgs: Vec<String> = errors(p).iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter().any(|m| needles.iter().all(|n| m.contains(n))),
            "no error contains {needles:?}; errors:\n{}",
            msgs.join("\n")
        );
        msgs
    }

    /// The loop body of the scale kernel.
    fn scale_body(p: &mut TileProgram) -> &mut Vec<Stmt> {
        match &mut p.launches[0].vector[4] {
            Stmt::For { body, .. } => body,
            _ => panic!("the scale kernel's fifth statement is its loop"),
        }
    }

    #[test]
    fn accepts_correct_programs() {
        for p in [scale(), matmul(), matmul_relu()] {
            assert_eq!(verify(&p, &t910()), Ok(()), "{}", p.kernel);
        }
        let t950 = Target::builtin("ascend950").expect("parses");
        assert_eq!(verify(&matmul_to_ub("ascend950"), &t950), Ok(()));
    }

    #[test]
    fn missing_flag_is_a_read_after_write_race() {
        let mut p = scale();
        let removed = scale_body(&mut p).remove(3);
        assert_eq!(removed, Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::V, event: 0 });
        let msgs = expect(&p, &[]);
        assert_eq!(
            msgs,
            vec![
                "launch 0: `scale.rows`: vector program: read-after-write race on `x_t` slot 0 (vector core 0, \
                 t = 0): `vector y_t[0][0 +: 16 x 128, ld 128] = x_t[0][0, ld 128] * 2.0` on V reads what \
                 `copy.MTE2 gm:x[t * 128 +: 16 x 128, ld 128] -> x_t[0][0 +: 16 x 128, ld 128]` on MTE2 wrote, \
                 but no wait_flag MTE2 -> V matched by a set_flag MTE2 -> V issued after the write orders them"
            ]
        );
    }

    #[test]
    fn reuse_without_a_flag_is_a_write_after_read_race() {
        let mut p = scale();
        let removed = scale_body(&mut p).remove(0);
        assert_eq!(removed, Stmt::WaitFlag { from: Pipe::V, to: Pipe::Mte2, event: 0 });
        let msgs = expect(
            &p,
            &[
                "write-after-read race on `x_t` slot 0 (vector core 0, t = 32): ",
                "`copy.MTE2 gm:x[t * 128 +: 16 x 128, ld 128] -> x_t[0][0 +: 16 x 128, ld 128]` on MTE2 overwrites \
                 what `vector y_t[0][0 +: 16 x 128, ld 128] = x_t[0][0, ld 128] * 2.0` on V read",
                "no wait_flag V -> MTE2 matched by a set_flag V -> MTE2 issued after the read",
            ],
        );
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        // The output buffer's reuse needs its flag too.
        let mut p = scale();
        scale_body(&mut p).remove(4);
        expect(&p, &["write-after-read race on `y_t` slot 0", "wait_flag MTE3 -> V"]);
    }

    #[test]
    fn capacity_names_the_buffers_and_bytes() {
        let mut p = scale();
        p.launches[0].buffers.push(buffer("acc", Mem::UB, DType::F32, &[376, 128], 1, 16384));
        let msgs = expect(&p, &[]);
        assert_eq!(
            msgs,
            vec!["launch 0: `scale.rows`: ub: 208896 bytes needed (x_t 8192, y_t 8192, acc 192512), 188416 available"]
        );
        // Overlapping buffers.
        let mut p = scale();
        p.launches[0].buffers[1].offset = 4096;
        expect(&p, &["ub: buffers `x_t` (bytes 0..8192) and `y_t` (bytes 4096..12288) overlap"]);
    }

    #[test]
    fn misaligned_l0a_buffer() {
        let mut p = matmul();
        p.launches[0].buffers[2].offset = 256;
        let msgs = expect(&p, &[]);
        assert_eq!(
            msgs,
            vec![
                "launch 0: `matmul`: buffer `a_l0` in l0a is at offset 256, which is not a multiple of l0a's \
                 512-byte alignment"
            ]
        );
        // Slots whose size is not a multiple of the alignment misalign the second slot.
        let mut p = matmul();
        p.launches[0].buffers[2] = buffer("a_l0", Mem::L0A, DType::BF16, &[16, 8], 2, 0);
        expect(&p, &["buffer `a_l0` in l0a has 256-byte slots, so slot 1 at offset 256 is not a multiple"]);
        // And the layout must be the memory's.
        let mut p = matmul();
        p.launches[0].buffers[3].layout = Layout::ND;
        expect(&p, &["buffer `b_l0` in l0b has layout nd, but l0b holds zn data"]);
    }

    #[test]
    fn out_of_bounds_copy() {
        let mut p = scale();
        if let Stmt::For { hi, .. } = &mut p.launches[0].vector[4] {
            *hi = add(mul(core(), c(64)), c(80));
        }
        let msgs = expect(
            &p,
            &["vector program: `copy.MTE2 gm:x[t * 128 +: 16 x 128, ld 128] -> x_t[0][0 +: 16 x 128, ld 128]`: \
                 the source gm:x spans elements 8192..10240, outside its 8192 elements (vector core 0, t = 64)"],
        );
        // Each statement is reported once: both loads and both stores.
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        // A slot out of range, and a window past its slot.
        let mut p = scale();
        scale_body(&mut p)[1] = copy(Pipe::Mte2, gm(0, c(0), 128), buf(0, 2, c(0), 128), 16, 128);
        expect(&p, &["the destination uses slot 2 of `x_t`, which has 2 slots"]);
        let mut p = scale();
        scale_body(&mut p)[1] = copy(Pipe::Mte2, gm(0, c(0), 128), buf(0, 0, c(64), 128), 16, 128);
        expect(&p, &["the destination `x_t` slot 0 spans elements 64..2112, outside its 2048 elements"]);
    }

    #[test]
    fn copy_paths_come_from_the_target() {
        let p = matmul_to_ub("ascend910b");
        let msgs = expect(
            &p,
            &["launch 0: `matmul_ub`: cube program: `copy.FIX c_l0[0][0 +: 64 x 64, ld 64] -> \
                 c_ub[0][0 +: 64 x 64, ld 64]`: there is no l0c -> ub copy path on ascend910b"],
        );
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        // The engine must be the path's.
        let mut p = matmul();
        if let Stmt::Copy { pipe, .. } = &mut p.launches[0].cube[4] {
            *pipe = Pipe::Mte2;
        }
        expect(&p, &["the l1 -> l0a path runs on MTE1, not MTE2"]);
        // A vector core cannot issue the cube's copy into its UB.
        let mut p = matmul_to_ub("ascend950");
        p.launches[0].vector.push(copy(Pipe::Fix, buf(4, 0, c(0), 64), buf(5, 0, c(0), 64), 1, 1));
        let t950 = Target::builtin("ascend950").expect("parses");
        let msgs: Vec<String> = verify(&p, &t950).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(msgs.iter().any(|m| m.contains("the source `c_l0` is in l0c, which a vector core does not have")));
        assert!(msgs.iter().any(|m| m.contains("a vector core has no FIX pipe")), "{msgs:?}");
        // Checked against another target than its own.
        let p = matmul_to_ub("ascend950");
        expect(&p, &["the program is compiled for target `ascend950`, but checked against `ascend910b`"]);
    }

    #[test]
    fn mmad_in_a_vector_program() {
        let mut p = scale();
        p.launches[0].buffers.extend(matmul_buffers());
        let whole = |b: u32| buf(b, 0, c(0), 64);
        p.launches[0].vector.push(Stmt::Mmad {
            a: whole(4),
            b: whole(5),
            c: whole(6),
            m: c(64),
            k: c(64),
            n: c(64),
            accumulate: false,
        });
        expect(&p, &["vector program: `mmad c_l0[0]", "mmad runs on the cube unit, which a vector core does not have"]);
        expect(&p, &["the operand a `a_l0` is in l0a, which a vector core does not have"]);
        // In the cube program, the operands' memories and dtypes are checked.
        let mut p = matmul();
        p.launches[0].buffers[3] = buffer("b_l0", Mem::L0B, DType::F32, &[64, 64], 1, 0);
        p.launches[0].buffers[4] = buffer("c_l0", Mem::L0C, DType::BF16, &[64, 64], 1, 0);
        if let Stmt::Mmad { a, .. } = &mut p.launches[0].cube[8] {
            *a = buf(0, 0, c(0), 64);
        }
        expect(&p, &["a is in l1, but mmad takes a from l0a"]);
        expect(&p, &["a is bf16 and b is f32; they must have one dtype"]);
        expect(&p, &["c is bf16, but mmad accumulates in f32"]);
        // f32 operands are the cube's f32 mode; integer ones are refused.
        let mut p = matmul();
        p.launches[0].buffers[2] = buffer("a_l0", Mem::L0A, DType::F32, &[64, 64], 1, 0);
        p.launches[0].buffers[3] = buffer("b_l0", Mem::L0B, DType::F32, &[64, 64], 1, 0);
        let msgs: Vec<String> = errors(&p).iter().map(|e| e.to_string()).collect();
        assert!(!msgs.iter().any(|m| m.contains("mmad")), "{msgs:?}");
        p.launches[0].buffers[3] = buffer("b_l0", Mem::L0B, DType::I32, &[64, 64], 1, 0);
        expect(&p, &["b is i32, but mmad multiplies bf16, f16 or f32"]);
    }

    #[test]
    fn vector_op_on_l1() {
        let mut p = scale();
        p.launches[0].buffers.push(buffer("l1_t", Mem::L1, DType::BF16, &[16, 128], 1, 0));
        p.launches[0].vector.push(Stmt::Vector {
            dst: buf(2, 0, c(0), 128),
            rows: c(16),
            cols: c(128),
            expr: VExpr::F32(0.0),
        });
        expect(&p, &["`vector l1_t[0][0 +: 16 x 128, ld 128] = 0.0`: the destination is in l1, but the vector unit reads and writes ub only"]);
        expect(&p, &["the destination `l1_t` is in l1, which a vector core does not have"]);
        // A vector statement in a cube program.
        let mut p = matmul();
        p.launches[0].cube.push(Stmt::Vector {
            dst: buf(0, 0, c(0), 64),
            rows: c(1),
            cols: c(1),
            expr: VExpr::F32(0.0),
        });
        expect(&p, &["cube program", "a vector statement runs on the vector unit, which a cube core does not have"]);
    }

    #[test]
    fn cross_core_hand_off_needs_a_cross_flag() {
        let msgs = expect(&matmul_relu_with(false, bin(SBin::Div, core(), c(2))), &[]);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(
            msgs[0],
            "launch 0: `matmul_relu`: cross-core race on gm:ws: `copy.MTE2 gm:ws[core / 2 * 4096 + core % 2 * 2048 \
             +: 32 x 64, ld 64] -> w_t[0][0 +: 32 x 64, ld 64]` (vector core 0) reads what `copy.FIX \
             c_l0[0][0 +: 64 x 64, ld 64] -> gm:ws[core * 4096 +: 64 x 64, ld 64]` (cube core 0) writes, but no \
             cross_wait on the vector core matched by a cross_set the cube core issues after the write orders them"
        );
        // Reading another cube core's workspace cannot be synchronized.
        let other = bin(SBin::Mod, add(bin(SBin::Div, core(), c(2)), c(1)), c(2));
        expect(
            &matmul_relu_with(true, other),
            &[
                "cross-core race on gm:ws",
                "vector core 0's partner is cube core 0, and cross-core flags only order partners",
            ],
        );
        // A cross flag set only after the write's hand-off does not order it.
        let mut p = matmul_relu();
        let set = p.launches[0].cube.pop().expect("cross_set");
        p.launches[0].cube.insert(0, set);
        expect(&p, &["cross-core race on gm:ws"]);
    }

    #[test]
    fn waits_that_never_end() {
        let mut p = scale();
        p.launches[0].vector.push(wait(Pipe::V, Pipe::Mte3, 5));
        expect(
            &p,
            &["`wait_flag V -> MTE3 #5`: no set_flag V -> MTE3 #5 is issued before it, so MTE3 would wait forever"],
        );
        let mut p = matmul_relu();
        p.launches[0].vector.push(Stmt::CrossWait { flag: 0 });
        expect(&p, &["vector core 0 waits for cross-core flag 0 2 times, but its cube core 0 sets it 1 times"]);
        let mut p = matmul_relu();
        p.launches[0].cube.push(Stmt::CrossWait { flag: 1 });
        expect(
            &p,
            &["cube core 0 waits for cross-core flag 1 1 times, but its vector cores 0, 1 set it at least 0 times"],
        );
    }

    #[test]
    fn scalar_reads_of_data_are_ordered_and_unknown() {
        // MTE2 loads an index table into UB; the scalar unit reads it to address a copy.
        let mut p = scale();
        p.launches[0].buffers.push(buffer("idx", Mem::UB, DType::I32, &[8], 1, 16384));
        p.tensors.push(tensor("ids", DType::I32, &[8], TensorRole::Param(1)));
        let read = SExpr::Read { buf: BufId(2), slot: Box::new(c(0)), index: Box::new(c(3)) };
        let gather_copy = copy(Pipe::Mte2, gm(0, mul(read, c(128)), 128), buf(0, 0, c(0), 128), 1, 128);
        let mut prologue = vec![copy(Pipe::Mte2, gm(2, c(0), 8), buf(2, 0, c(0), 8), 1, 8)];
        prologue.push(set(Pipe::Mte2, Pipe::S, 0));
        prologue.push(wait(Pipe::Mte2, Pipe::S, 0));
        prologue.push(gather_copy.clone());
        let mut ok = p.clone();
        ok.launches[0].vector.splice(0..0, prologue);
        // The copy through an unknown row is not bounds-checked, and later x_t accesses are ordered by the flags.
        ok.launches[0].vector.insert(4, set(Pipe::Mte2, Pipe::V, 2));
        ok.launches[0].vector.insert(5, wait(Pipe::Mte2, Pipe::V, 2));
        assert_eq!(verify(&ok, &t910()), Ok(()));
        // Without the MTE2 -> S flag the scalar read races with the load.
        let mut bad = p.clone();
        bad.launches[0].vector.splice(0..0, [copy(Pipe::Mte2, gm(2, c(0), 8), buf(2, 0, c(0), 8), 1, 8), gather_copy]);
        expect(&bad, &["read-after-write race on `idx` slot 0", "on S reads what `copy.MTE2 gm:ids"]);
        // A scalar read out of its buffer.
        let mut oob = p;
        oob.launches[0].vector.push(Stmt::If {
            cond: SExpr::Read { buf: BufId(2), slot: Box::new(c(0)), index: Box::new(c(8)) },
            then: vec![],
        });
        expect(&oob, &["the scalar read `idx` slot 0 spans elements 8..9, outside its 8 elements"]);
    }

    #[test]
    fn large_launches_are_sampled() {
        // 200000 iterations of 22 statements: more than the cap, so only the first and last iterations run.
        let mut p = scale();
        let rows = 6_400_000u64;
        p.tensors[0].shape = vec![rows, 128];
        p.tensors[1].shape = vec![rows, 128];
        if let Stmt::For { hi, .. } = &mut p.launches[0].vector[4] {
            *hi = c(rows as i64);
        }
        let start = std::time::Instant::now();
        assert_eq!(verify(&p, &t910()), Ok(()));
        assert!(start.elapsed().as_secs() < 20, "sampling keeps the check fast");
        // The last iteration is still checked.
        if let Stmt::For { hi, .. } = &mut p.launches[0].vector[4] {
            *hi = c(rows as i64 + 16);
        }
        expect(&p, &["the source gm:x spans elements 819200000..819202048, outside its 819200000 elements"]);
        // And races in the sampled iterations are found.
        scale_body(&mut p).remove(3);
        expect(&p, &["read-after-write race on `x_t` slot 0 (vector core 0, t = 0)"]);
    }

    #[test]
    fn well_formedness() {
        let mut p = scale();
        let l = &mut p.launches[0];
        l.vector.push(set(Pipe::V, Pipe::Mte3, 8));
        l.vector.push(set(Pipe::V, Pipe::V, 0));
        l.vector.push(set(Pipe::M, Pipe::V, 0));
        l.vector.push(Stmt::CrossSet { flag: 11 });
        l.vector.push(Stmt::For { var: SVar(0), lo: c(0), hi: c(4), step: 0, body: vec![] });
        l.vector.push(Stmt::Set { var: SVar(5), value: v(7) });
        l.vector.push(copy(Pipe::V, gm(9, c(0), 1), buf(8, 0, c(0), 1), 1, 1));
        l.vector.push(Stmt::Gather {
            pipe: Pipe::Mte3,
            src: TensorId(0),
            src_rows: 64,
            row_stride: 128,
            col_offset: c(0),
            index: buf(1, 0, c(0), 1),
            dst: gm(1, c(0), 128),
            rows: c(1),
            cols: c(128),
            span: Span::default(),
            error: None,
        });
        l.vector.push(Stmt::Reduce {
            op: ReduceOp::ArgMax,
            axis: 2,
            src: buf(0, 0, c(0), 128),
            dst: buf(1, 0, c(0), 1),
            rows: c(1),
            cols: c(1),
            accumulate: true,
        });
        l.buffers.push(buffer("i", Mem::UB, DType::I32, &[8], 1, 16384));
        l.vector.push(copy(Pipe::Mte2, gm(0, c(0), 8), buf(2, 0, c(0), 8), 1, 8));
        l.cube_cores = 30;
        l.vector_cores = 49;
        let msgs = expect(&p, &["event 8 is out of range (0..8)"]);
        for needle in [
            "the grid has 30 cube cores, but ascend910b has 24",
            "the grid has 49 vector cores, but ascend910b has 48",
            "a vector launch has 30 cube cores",
            "a flag from V to itself orders nothing",
            "a vector core has no M pipe",
            "cross-core flag 11 is out of range (0..=10)",
            "cross-core flags pair a cube core with its vector cores, which only a mixed launch has",
            "the loop step 0 is not positive",
            "?s5 is out of range (1 scalar registers)",
            "?s7 is out of range (1 scalar registers)",
            "the source is ?t9, which is out of range (2 tensors)",
            "the destination is ?b8, which is out of range (3 buffers)",
            "a copy runs on MTE1, MTE2, MTE3 or FIX, not V",
            "a gather runs on MTE2, not MTE3",
            "the index is bf16, not i32",
            "a gather writes ub or l1, not gm",
            "axis 2 is not 0 (columns) or 1 (rows)",
            "the destination of an index reduction is bf16, not i32",
            "argmax cannot accumulate (only sum, max and min can)",
            "a copy converts between float dtypes only, not bf16 to i32",
        ] {
            assert!(msgs.iter().any(|m| m.contains(needle)), "missing {needle:?} in:\n{}", msgs.join("\n"));
        }
    }

    #[test]
    fn dynamic_scalar_problems() {
        let mut p = scale();
        p.launches[0].svars.push("u".into());
        p.launches[0]
            .vector
            .push(Stmt::Set { var: SVar(1), value: bin(SBin::Div, c(1), bin(SBin::Sub, core(), core())) });
        p.launches[0].vector.push(Stmt::Set { var: SVar(1), value: mul(c(i64::MAX), c(2)) });
        let mut q = scale();
        q.launches[0].svars.push("u".into());
        q.launches[0].vector.push(Stmt::Set { var: SVar(0), value: v(1) });
        let msgs = expect(&p, &["`u = 1 / (core - core)`: `1 / (core - core)` divides by zero (vector core 0)"]);
        assert!(msgs.iter().any(|m| m.contains("overflows 64 bits")), "{msgs:?}");
        expect(&q, &["vector program: `u` is read before it is set (vector core 0)"]);
    }

    #[test]
    fn never_panics_on_mangled_programs() {
        let base = [scale(), matmul(), matmul_relu(), matmul_to_ub("ascend950")];
        for p in base {
            let mut variants = Vec::new();
            let mut q = p.clone();
            q.tensors.clear();
            variants.push(q);
            let mut q = p.clone();
            for l in &mut q.launches {
                l.buffers.clear();
                l.svars.clear();
            }
            variants.push(q);
            let mut q = p.clone();
            for l in &mut q.launches {
                for b in &mut l.buffers {
                    b.shape = vec![u64::MAX, 3];
                    b.slots = 0;
                    b.offset = u64::MAX;
                }
            }
            variants.push(q);
            let mut q = p.clone();
            q.tensors.iter_mut().for_each(|t| t.shape = vec![u64::MAX, u64::MAX]);
            for l in &mut q.launches {
                l.cube_cores = u32::MAX;
                l.vector_cores = u32::MAX;
            }
            variants.push(q);
            // Slots that depend on data, in a buffer with very many slots.
            let mut q = p.clone();
            for l in &mut q.launches {
                for b in &mut l.buffers {
                    b.slots = u32::MAX;
                }
                l.buffers.push(buffer("ix", Mem::UB, DType::I32, &[4], 1, 0));
                let read =
                    SExpr::Read { buf: BufId(l.buffers.len() as u32 - 1), slot: Box::new(c(0)), index: Box::new(c(0)) };
                for prog in [&mut l.cube, &mut l.vector] {
                    for s in prog.iter_mut() {
                        if let Stmt::Copy { dst: Region { loc: Loc::Buf { slot, .. }, .. }, .. } = s {
                            *slot = read.clone();
                        }
                    }
                }
            }
            variants.push(q);
            for q in &variants {
                let _ = verify(q, &t910());
                let _ = crate::tile::print::print_program(q);
            }
        }
    }

    #[test]
    fn windows_overlap_exactly_for_equal_strides() {
        let w = |off: i128, stride: i128, rows: i128, cols: i128| Geo::Win { off, stride, rows, cols };
        // The left and right halves of 16 rows of 128 do not overlap; two row blocks do not either.
        assert!(!overlap(&w(0, 128, 16, 64), &w(64, 128, 16, 64)));
        assert!(!overlap(&w(0, 128, 8, 128), &w(1024, 128, 8, 128)));
        assert!(overlap(&w(0, 128, 16, 64), &w(63, 128, 16, 2)));
        assert!(overlap(&w(0, 128, 16, 64), &w(1920, 128, 1, 1)));
        assert!(!overlap(&w(0, 128, 16, 64), &w(2048, 128, 1, 1)));
        assert!(overlap(&Geo::Whole, &w(5, 1, 1, 1)));
        assert!(covers(&w(0, 128, 16, 128), &w(64, 128, 4, 64)));
        assert!(covers(&w(0, 128, 16, 64), &w(129, 128, 2, 63)));
        assert!(!covers(&w(0, 128, 16, 64), &w(129, 128, 2, 64)));
        assert!(!covers(&w(0, 128, 16, 64), &Geo::Whole));
        assert!(covers(&Geo::Whole, &w(0, 1, 1, 1)));
    }

    #[test]
    fn errors_display_with_their_launch() {
        let e = TileError { launch: Some(2), message: "m".into() };
        assert_eq!(e.to_string(), "launch 2: m");
        let e = TileError { launch: None, message: "m".into() };
        assert_eq!(e.to_string(), "m");
    }
}
