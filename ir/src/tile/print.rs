//! The stable text printer of the tile IR.
//!
//! This text is what `kc build --emit tiled` prints and what snapshot tests hold, so it is deterministic,
//! complete (every tensor, buffer and statement) and never panics, even on a malformed program.
//!
//! ```text
//! kernel rmsnorm  target ascend910b  dims D = 128, T = 64
//! tensors:
//!   t0 x: bf16[64, 128]  param 0
//!   t1 y: bf16[64, 128]  output 0
//!
//! launch rmsnorm.rows  vector  grid 0 cube + 4 vector
//!   buffers:
//!     x_t  ub  offset     0  4096 B x 2 =  8192 B  bf16[16, 128]  nd
//!     y_t  ub  offset  8192  4096 B x 2 =  8192 B  bf16[16, 128]  nd
//!   vector:
//!     t = core * 16
//!     s = 0
//!     copy.MTE2 gm:x[t * 128 +: 16 x 128, ld 128] -> x_t[s][0 +: 16 x 128, ld 128]
//!     set_flag MTE2 -> V #0
//!     wait_flag MTE2 -> V #0
//!     vector y_t[s][0 +: 16 x 128, ld 128] = x_t[s][0, ld 128] * 2.0
//! ```
//!
//! The format:
//! - A header line `kernel K  target T  dims A = 1, B = 2` (dims sorted by name; no `dims` part when there
//!   are none), then `tensors:` with one line per GM tensor, `tI name: dtype[shape]  role`, where role is
//!   `param I`, `output I`, `intermediate %V` or `workspace N B per core` (`tensors: none` when empty).
//! - Each launch, after a blank line: `launch NAME  UNIT  grid C cube + V vector`, then `buffers:` as a table
//!   (name, memory, `offset` in bytes, bytes per slot `x` slots `=` total bytes, `dtype[shape]` of one slot,
//!   layout; columns aligned; `buffers: none` when empty), then `cube:` and `vector:` with the programs'
//!   statements, one per line, nested bodies indented by two more spaces. An empty program is left out.
//! - A window ([`Region`] with the extent its statement gives it) prints as `LOC[OFFSET +: ROWS x COLS, ld
//!   STRIDE]`: element `(r, c)` is at `OFFSET + r * STRIDE + c` (`ld`: the leading dimension, the row
//!   stride). `LOC` is `gm:NAME` for a GM tensor and `NAME[SLOT]` for a buffer's slot. Inside a vector
//!   expression, whose window is the statement's `rows x cols`, a read prints as `LOC[OFFSET, ld STRIDE]`,
//!   a one-value-per-row read (`ReadRow`) adds `[r, 0]` and a one-value-per-column read (`ReadCol`) `[0, c]`.
//!   The extents of a statement's regions: copy, vector, reduce source, library source: `rows x cols`;
//!   mmad `a` `m x k`, `b` `k x n`, `c` `m x n`; reduce destination `rows x 1` (axis 1) or `1 x cols`
//!   (axis 0); gather index `rows x 1`; top-k outputs `rows x k`; cum-sum carry `rows x 1`; bin-count
//!   destination `1 x n`. An extent that is not an atom is parenthesized: `(n - t) x 128`.
//! - Statements: `for V in LO .. HI step S {`, `V = E`, `if C {` (closed by `}` on a line of its own);
//!   `copy.PIPE SRC -> DST`; `gather.PIPE gm:T[INDEX of N rows, ld S, cols C +: COLS] -> DST` (row `r` of
//!   DST is row `INDEX[r]` of T from column C); `mmad C = A * B` (`+=` when accumulating); `vector DST =
//!   EXPR`; `reduce.OP axis A SRC -> DST` (with ` accumulate`); `library topk(k = K) SRC -> values V,
//!   indices I`, `library argsort(descending = B) SRC -> DST`, `library cumsum(exclusive = B) SRC -> DST,
//!   carry C`, `library bincount(n = N) SRC -> DST`; `set_flag P -> Q #E`, `wait_flag P -> Q #E`,
//!   `barrier P`, `cross_set #F`, `cross_wait #F`. Pipes print as `S`, `MTE1`, `MTE2`, `MTE3`, `FIX`, `M`,
//!   `V`; memories and layouts in lower case (`ub`, `l0a`; `nd`, `nz`, `zz`, `zn`).
//! - Scalar expressions print infix with minimal parentheses (lowest first: `< <= ==`, non-associative;
//!   `+ -`; `* / %`, where `/` and `%` are floor division and remainder), `min(a, b)`, `max(a, b)`, `core`
//!   for the core index, and `BUF[SLOT][INDEX]` for a scalar read of a buffer element. A right operand that
//!   starts with a minus sign is parenthesized: `t * (-2)`.
//! - Vector expressions print like the graph printer's: infix operators, `exp(x)`, `where(c, a, b)`,
//!   `bf16(x)` for a cast, constants as the graph printer writes them, `r` and `c` for the tile's row and
//!   column index, and `scalar(E)` for a scalar-unit value.
//! - Names: scalar registers print by their name in [`Launch::svars`], buffers and tensors by theirs. A
//!   name used twice prints as `name`, `name.1`, `name.2`, ... in id order (a suffix already taken is
//!   skipped); an empty name prints as `sI`, `bI` or `tI`; a scalar register named `core` prints as
//!   `core.1`. An out-of-range id prints as `?sI`, `?bI`, `?tI`.

use super::*;
use crate::graph::Const;
use crate::print::print_const;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// The text of a whole tile program, ending with a newline.
pub fn print_program(p: &TileProgram) -> String {
    let mut out = String::new();
    let _ = write!(out, "kernel {}  target {}", p.kernel, p.target);
    if !p.dims.is_empty() {
        let dims: Vec<String> = p.dims.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let _ = write!(out, "  dims {}", dims.join(", "));
    }
    out.push('\n');
    let names = tensor_names(p);
    if p.tensors.is_empty() {
        out.push_str("tensors: none\n");
    } else {
        out.push_str("tensors:\n");
        for (i, t) in p.tensors.iter().enumerate() {
            let role = match &t.role {
                TensorRole::Param(i) => format!("param {i}"),
                TensorRole::Output(i) => format!("output {i}"),
                TensorRole::Intermediate(v) => format!("intermediate %{}", v.0),
                TensorRole::Workspace { per_core } => format!("workspace {per_core} B per core"),
            };
            let _ = writeln!(out, "  t{i} {}: {}  {role}", names[i], print_shape(t.dtype, &t.shape));
        }
    }
    for l in &p.launches {
        out.push('\n');
        out.push_str(&print_launch(p, l));
    }
    out
}

/// The text of one launch of `p`, ending with a newline.
pub fn print_launch(p: &TileProgram, l: &Launch) -> String {
    let pr = Printer::new(p, l);
    let mut out = String::new();
    let unit = match l.unit {
        Unit::Cube => "cube",
        Unit::Vector => "vector",
        Unit::Mixed => "mixed",
    };
    let _ = writeln!(out, "launch {}  {unit}  grid {} cube + {} vector", l.name, l.cube_cores, l.vector_cores);
    if l.buffers.is_empty() {
        out.push_str("  buffers: none\n");
    } else {
        out.push_str("  buffers:\n");
        let rows: Vec<[String; 6]> = l
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let slot = slot_bytes(b);
                let total = slot.and_then(|s| s.checked_mul(b.slots as u128));
                let show = |x: Option<u128>| x.map_or_else(|| "?".to_string(), |x| x.to_string());
                [
                    pr.bufs[i].clone(),
                    b.mem.name().to_string(),
                    b.offset.to_string(),
                    show(slot),
                    b.slots.to_string(),
                    show(total),
                ]
            })
            .collect();
        let width = |k: usize| rows.iter().map(|r| r[k].len()).max().unwrap_or(0);
        let w: Vec<usize> = (0..6).map(width).collect();
        for (r, b) in rows.iter().zip(&l.buffers) {
            let _ = writeln!(
                out,
                "    {:<w0$}  {:<w1$}  offset {:>w2$}  {:>w3$} B x {:>w4$} = {:>w5$} B  {}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                print_shape(b.dtype, &b.shape),
                layout_name(b.layout),
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
                w4 = w[4],
                w5 = w[5],
            );
        }
    }
    for (what, body) in [("cube", &l.cube), ("vector", &l.vector)] {
        if !body.is_empty() {
            let _ = writeln!(out, "  {what}:");
            pr.stmts(&mut out, body, 4);
        }
    }
    out
}

/// One statement of launch `l` on one line; a `for` or an `if` prints its header only (`for t in 0 .. 4
/// step 1`).
pub fn print_stmt(p: &TileProgram, l: &Launch, s: &Stmt) -> String {
    Printer::new(p, l).stmt_line(s)
}

/// A scalar expression of launch `l`.
pub fn print_sexpr(p: &TileProgram, l: &Launch, e: &SExpr) -> String {
    Printer::new(p, l).sx(e)
}

/// `bf16[16, 128]`; a scalar (no dims) is just `f32`.
pub fn print_shape(dtype: DType, shape: &[u64]) -> String {
    if shape.is_empty() {
        dtype.name().to_string()
    } else {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        format!("{}[{}]", dtype.name(), dims.join(", "))
    }
}

pub fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::ND => "nd",
        Layout::NZ => "nz",
        Layout::ZZ => "zz",
        Layout::ZN => "zn",
    }
}

/// Bytes of one slot of `b`, without overflow (`None` past `u128`).
fn slot_bytes(b: &Buffer) -> Option<u128> {
    b.shape.iter().try_fold(b.dtype.size_bytes() as u128, |acc, &d| acc.checked_mul(d as u128))
}

/// The printed name of each tensor of `p`.
pub(crate) fn tensor_names(p: &TileProgram) -> Vec<String> {
    let raw: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
    unique_names(&raw, "t", &[])
}

/// Unambiguous names: the first use of a name keeps it; a later one (or a reserved name) takes the first
/// free suffix `.1`, `.2`, ... that no other name is; an empty name becomes `{prefix}{index}`.
pub(crate) fn unique_names(raw: &[&str], prefix: &str, reserved: &[&str]) -> Vec<String> {
    let base: Vec<String> = raw
        .iter()
        .enumerate()
        .map(|(i, n)| if n.is_empty() { format!("{prefix}{i}") } else { n.to_string() })
        .collect();
    let all: HashSet<&str> = base.iter().map(|s| s.as_str()).collect();
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, b) in base.iter().enumerate() {
        first.entry(b.as_str()).or_insert(i);
    }
    let mut taken: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(base.len());
    for (i, b) in base.iter().enumerate() {
        let keep = first.get(b.as_str()) == Some(&i) && !taken.contains(b) && !reserved.contains(&b.as_str());
        let name = if keep {
            b.clone()
        } else {
            let mut k = 1usize;
            loop {
                let cand = format!("{b}.{k}");
                if !taken.contains(&cand) && !all.contains(cand.as_str()) {
                    break cand;
                }
                k += 1;
            }
        };
        taken.insert(name.clone());
        out.push(name);
    }
    out
}

/// Precedence levels, lowest first.
const P_OR: u8 = 1;
const P_AND: u8 = 2;
const P_CMP: u8 = 3;
const P_ADD: u8 = 4;
const P_MUL: u8 = 5;
const P_UNARY: u8 = 6;
const P_ATOM: u8 = 7;

/// A printed sub-expression and the precedence of its outermost operator.
struct Printed {
    text: String,
    prec: u8,
}

impl Printed {
    fn atom(text: String) -> Printed {
        Printed { text, prec: P_ATOM }
    }

    fn number(text: String) -> Printed {
        let prec = if text.starts_with('-') { P_UNARY } else { P_ATOM };
        Printed { text, prec }
    }

    fn paren_if(self, cond: bool) -> String {
        if cond {
            format!("({})", self.text)
        } else {
            self.text
        }
    }

    /// `a op b` with minimal parentheses: left-associative; comparisons non-associative; a right operand
    /// starting with a minus sign is parenthesized.
    fn infix(a: Printed, sym: &str, b: Printed, p: u8) -> Printed {
        let pa = a.prec < p || (p == P_CMP && a.prec == p);
        let pb = b.prec <= p || b.text.starts_with('-');
        Printed { text: format!("{} {sym} {}", a.paren_if(pa), b.paren_if(pb)), prec: p }
    }
}

/// Prints the statements and expressions of one launch, with its names resolved once.
pub(crate) struct Printer<'a> {
    l: &'a Launch,
    tensors: Vec<String>,
    bufs: Vec<String>,
    svars: Vec<String>,
}

impl<'a> Printer<'a> {
    pub(crate) fn new(p: &'a TileProgram, l: &'a Launch) -> Printer<'a> {
        let bufs: Vec<&str> = l.buffers.iter().map(|b| b.name.as_str()).collect();
        let svars: Vec<&str> = l.svars.iter().map(|s| s.as_str()).collect();
        Printer {
            l,
            tensors: tensor_names(p),
            bufs: unique_names(&bufs, "b", &[]),
            svars: unique_names(&svars, "s", &["core"]),
        }
    }

    pub(crate) fn tensor(&self, t: TensorId) -> String {
        match self.tensors.get(t.0 as usize) {
            Some(n) => n.clone(),
            None => format!("?t{}", t.0),
        }
    }

    pub(crate) fn buf(&self, b: BufId) -> String {
        match self.bufs.get(b.0 as usize) {
            Some(n) => n.clone(),
            None => format!("?b{}", b.0),
        }
    }

    pub(crate) fn svar(&self, v: SVar) -> String {
        match self.svars.get(v.0 as usize) {
            Some(n) => n.clone(),
            None => format!("?s{}", v.0),
        }
    }

    /// A scalar expression.
    pub(crate) fn sx(&self, e: &SExpr) -> String {
        self.sexpr(e).text
    }

    /// An extent operand of `R x C`: parenthesized unless an atom.
    fn ext(&self, e: &SExpr) -> String {
        let p = self.sexpr(e);
        let paren = p.prec < P_ATOM;
        p.paren_if(paren)
    }

    fn sexpr(&self, e: &SExpr) -> Printed {
        match e {
            SExpr::Const(c) => Printed::number(c.to_string()),
            SExpr::Var(v) => Printed::atom(self.svar(*v)),
            SExpr::Core => Printed::atom("core".to_string()),
            SExpr::Bin(op, a, b) => {
                let (sym, p) = match op {
                    SBin::Add => ("+", P_ADD),
                    SBin::Sub => ("-", P_ADD),
                    SBin::Mul => ("*", P_MUL),
                    SBin::Div => ("/", P_MUL),
                    SBin::Mod => ("%", P_MUL),
                    SBin::Lt => ("<", P_CMP),
                    SBin::Le => ("<=", P_CMP),
                    SBin::Eq => ("==", P_CMP),
                    SBin::Min | SBin::Max => {
                        let f = if *op == SBin::Min { "min" } else { "max" };
                        return Printed::atom(format!("{f}({}, {})", self.sx(a), self.sx(b)));
                    }
                };
                Printed::infix(self.sexpr(a), sym, self.sexpr(b), p)
            }
            SExpr::Read { buf, slot, index } => {
                Printed::atom(format!("{}[{}][{}]", self.buf(*buf), self.sx(slot), self.sx(index)))
            }
        }
    }

    /// `gm:x` or `x_t[slot]`.
    fn loc(&self, loc: &Loc) -> String {
        match loc {
            Loc::Gm(t) => format!("gm:{}", self.tensor(*t)),
            Loc::Buf { buf, slot } => format!("{}[{}]", self.buf(*buf), self.sx(slot)),
        }
    }

    /// `LOC[OFFSET +: ROWS x COLS, ld STRIDE]`, the extent given as printed operands.
    fn window(&self, r: &Region, rows: &str, cols: &str) -> String {
        format!("{}[{} +: {rows} x {cols}, ld {}]", self.loc(&r.loc), self.sx(&r.offset), self.sx(&r.row_stride))
    }

    /// A window whose extent is two scalar expressions.
    fn region(&self, r: &Region, rows: &SExpr, cols: &SExpr) -> String {
        self.window(r, &self.ext(rows), &self.ext(cols))
    }

    /// A read inside a vector expression: `LOC[OFFSET, ld STRIDE]`.
    fn read(&self, r: &Region) -> String {
        format!("{}[{}, ld {}]", self.loc(&r.loc), self.sx(&r.offset), self.sx(&r.row_stride))
    }

    fn vexpr(&self, e: &VExpr) -> Printed {
        match e {
            VExpr::F32(x) => Printed::number(print_const(Const::F32(*x))),
            VExpr::I32(i) => Printed::number(i.to_string()),
            VExpr::Bool(b) => Printed::atom(b.to_string()),
            VExpr::Scalar(s) => Printed::atom(format!("scalar({})", self.sx(s))),
            VExpr::Row => Printed::atom("r".to_string()),
            VExpr::Col => Printed::atom("c".to_string()),
            VExpr::Read(r) => Printed::atom(self.read(r)),
            VExpr::ReadRow(r) => Printed::atom(format!("{}[r, 0]", self.read(r))),
            VExpr::ReadCol(r) => Printed::atom(format!("{}[0, c]", self.read(r))),
            VExpr::Unary(op @ (UnOp::Neg | UnOp::Not), a) => {
                let sym = if *op == UnOp::Neg { "-" } else { "!" };
                let a = self.vexpr(a);
                let paren = a.prec < P_ATOM;
                Printed { text: format!("{sym}{}", a.paren_if(paren)), prec: P_UNARY }
            }
            VExpr::Unary(op, a) => Printed::atom(format!("{}({})", op.name(), self.vexpr(a).text)),
            VExpr::Binary(op, a, b) => {
                let p = match op {
                    BinOp::Or => Some(P_OR),
                    BinOp::And => Some(P_AND),
                    BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => Some(P_CMP),
                    BinOp::Add | BinOp::Sub => Some(P_ADD),
                    BinOp::Mul | BinOp::Div | BinOp::Mod => Some(P_MUL),
                    BinOp::Pow | BinOp::Min | BinOp::Max => None,
                };
                match (op.symbol(), p) {
                    (Some(sym), Some(p)) => Printed::infix(self.vexpr(a), sym, self.vexpr(b), p),
                    _ => Printed::atom(format!("{}({}, {})", op.name(), self.vexpr(a).text, self.vexpr(b).text)),
                }
            }
            VExpr::Select(c, a, b) => {
                Printed::atom(format!("where({}, {}, {})", self.vexpr(c).text, self.vexpr(a).text, self.vexpr(b).text))
            }
            VExpr::Cast(t, a) => Printed::atom(format!("{}({})", t.name(), self.vexpr(a).text)),
        }
    }

    /// A vector expression.
    pub(crate) fn vx(&self, e: &VExpr) -> String {
        self.vexpr(e).text
    }

    /// One statement on one line (a `for` or an `if` without its body or brace).
    pub(crate) fn stmt_line(&self, s: &Stmt) -> String {
        match s {
            Stmt::For { var, lo, hi, step, .. } => {
                format!("for {} in {} .. {} step {step}", self.svar(*var), self.sx(lo), self.sx(hi))
            }
            Stmt::Set { var, value } => format!("{} = {}", self.svar(*var), self.sx(value)),
            Stmt::If { cond, .. } => format!("if {}", self.sx(cond)),
            Stmt::Copy { pipe, src, dst, rows, cols } => {
                format!("copy.{} {} -> {}", pipe.name(), self.region(src, rows, cols), self.region(dst, rows, cols))
            }
            Stmt::Gather { pipe, src, src_rows, row_stride, col_offset, index, dst, rows, cols, .. } => format!(
                "gather.{} gm:{}[{} of {src_rows} rows, ld {row_stride}, cols {} +: {}] -> {}",
                pipe.name(),
                self.tensor(*src),
                self.window(index, &self.ext(rows), "1"),
                self.sx(col_offset),
                self.ext(cols),
                self.region(dst, rows, cols)
            ),
            Stmt::Mmad { a, b, c, m, k, n, accumulate } => format!(
                "mmad {} {} {} * {}",
                self.region(c, m, n),
                if *accumulate { "+=" } else { "=" },
                self.region(a, m, k),
                self.region(b, k, n)
            ),
            Stmt::Vector { dst, rows, cols, expr } => {
                format!("vector {} = {}", self.region(dst, rows, cols), self.vx(expr))
            }
            Stmt::Reduce { op, axis, src, dst, rows, cols, accumulate } => {
                let (rows_t, cols_t) = (self.ext(rows), self.ext(cols));
                let dst_t = match axis {
                    1 => self.window(dst, &rows_t, "1"),
                    0 => self.window(dst, "1", &cols_t),
                    _ => self.window(dst, "?", "?"),
                };
                format!(
                    "reduce.{} axis {axis} {} -> {dst_t}{}",
                    op.name(),
                    self.window(src, &rows_t, &cols_t),
                    if *accumulate { " accumulate" } else { "" }
                )
            }
            Stmt::Library { op, src, rows, cols, .. } => {
                let (rows_t, cols_t) = (self.ext(rows), self.ext(cols));
                let src_t = self.window(src, &rows_t, &cols_t);
                match op {
                    LibOp::TopK { k, values, indices } => {
                        let k_t = k.to_string();
                        let mut outs = Vec::new();
                        if let Some(v) = values {
                            outs.push(format!("values {}", self.window(v, &rows_t, &k_t)));
                        }
                        if let Some(i) = indices {
                            outs.push(format!("indices {}", self.window(i, &rows_t, &k_t)));
                        }
                        if outs.is_empty() {
                            outs.push("nothing".to_string());
                        }
                        format!("library topk(k = {k}) {src_t} -> {}", outs.join(", "))
                    }
                    LibOp::ArgSort { descending, dst } => format!(
                        "library argsort(descending = {descending}) {src_t} -> {}",
                        self.window(dst, &rows_t, &cols_t)
                    ),
                    LibOp::CumSum { exclusive, dst, carry } => {
                        let mut s = format!(
                            "library cumsum(exclusive = {exclusive}) {src_t} -> {}",
                            self.window(dst, &rows_t, &cols_t)
                        );
                        if let Some(c) = carry {
                            let _ = write!(s, ", carry {}", self.window(c, &rows_t, "1"));
                        }
                        s
                    }
                    LibOp::BinCount { n, dst } => {
                        format!("library bincount(n = {n}) {src_t} -> {}", self.window(dst, "1", &n.to_string()))
                    }
                }
            }
            Stmt::SetFlag { from, to, event } => format!("set_flag {} -> {} #{event}", from.name(), to.name()),
            Stmt::WaitFlag { from, to, event } => format!("wait_flag {} -> {} #{event}", from.name(), to.name()),
            Stmt::Barrier { pipe } => format!("barrier {}", pipe.name()),
            Stmt::CrossSet { flag } => format!("cross_set #{flag}"),
            Stmt::CrossWait { flag } => format!("cross_wait #{flag}"),
        }
    }

    /// Statements, one per line, at `indent` spaces; bodies two spaces deeper.
    pub(crate) fn stmts(&self, out: &mut String, body: &[Stmt], indent: usize) {
        for s in body {
            let pad = " ".repeat(indent);
            match s {
                Stmt::For { body, .. } | Stmt::If { then: body, .. } => {
                    let _ = writeln!(out, "{pad}{} {{", self.stmt_line(s));
                    self.stmts(out, body, indent + 2);
                    let _ = writeln!(out, "{pad}}}");
                }
                _ => {
                    let _ = writeln!(out, "{pad}{}", self.stmt_line(s));
                }
            }
        }
    }

    /// The launch this printer prints.
    pub(crate) fn launch(&self) -> &'a Launch {
        self.l
    }
}
