//! The stable text printer of the tile IR.
//!
//! This text is what `kc build --emit tiled` prints and what snapshot tests hold, so it is deterministic,
//! complete (every tensor, buffer and statement) and never panics, even on a malformed program. A vector
//! launch (the second slot's statements left out):
//!
//! ```text
//! kernel scale  target ascend910b  dims D = 128, T = 64
//! tensors:
//!   t0 x: bf16[64, 128]  param 0
//!   t1 y: bf16[64, 128]  output 0
//!
//! launch scale.rows  vector  grid 0 cube + 1 vector
//!   buffers:
//!     x_t  ub  offset    0  4096 B x 2 = 8192 B  bf16[16, 128]  nd
//!     y_t  ub  offset 8192  4096 B x 2 = 8192 B  bf16[16, 128]  nd
//!   vector:
//!     set_flag V -> MTE2 #0
//!     set_flag MTE3 -> V #0
//!     for t in core * 64 .. core * 64 + 64 step 32 {
//!       wait_flag V -> MTE2 #0
//!       copy.MTE2 gm:x[t * 128 +: 16 x 128, ld 128] -> x_t[0][0 +: 16 x 128, ld 128]
//!       set_flag MTE2 -> V #0
//!       wait_flag MTE2 -> V #0
//!       wait_flag MTE3 -> V #0
//!       vector y_t[0][0 +: 16 x 128, ld 128] = x_t[0][0, ld 128] * 2.0
//!       set_flag V -> MTE2 #0
//!       set_flag V -> MTE3 #0
//!       wait_flag V -> MTE3 #0
//!       copy.MTE3 y_t[0][0 +: 16 x 128, ld 128] -> gm:y[t * 128 +: 16 x 128, ld 128]
//!       set_flag MTE3 -> V #0
//!     }
//!     wait_flag V -> MTE2 #0
//!     wait_flag MTE3 -> V #0
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
use crate::infix::*;
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
                TensorRole::Workspace { per_core, .. } => format!("workspace {per_core} B per core"),
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
/// Prints the statements and expressions of one launch, with its names resolved once.
pub(crate) struct Printer {
    tensors: Vec<String>,
    bufs: Vec<String>,
    svars: Vec<String>,
}

impl Printer {
    pub(crate) fn new(p: &TileProgram, l: &Launch) -> Printer {
        let bufs: Vec<&str> = l.buffers.iter().map(|b| b.name.as_str()).collect();
        let svars: Vec<&str> = l.svars.iter().map(|s| s.as_str()).collect();
        Printer {
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
            Stmt::Gather { pipe, src, src_rows, row_stride, col_offset, index, dst, rows, cols, error, .. } => format!(
                "gather.{} gm:{}[{} of {src_rows} rows, ld {row_stride}, cols {} +: {}] -> {}{}",
                pipe.name(),
                self.tensor(*src),
                self.window(index, &self.ext(rows), "1"),
                self.sx(col_offset),
                self.ext(cols),
                self.region(dst, rows, cols),
                error.as_ref().map_or(String::new(), |e| format!(" else error {e:?}"))
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
}

#[cfg(test)]
pub(crate) mod tests {
    //! Hand-built tile programs (shared with the verifier's tests) and the printer's tests.

    use super::*;
    use crate::span::Span;
    use std::collections::BTreeMap;

    pub(crate) fn c(x: i64) -> SExpr {
        SExpr::Const(x)
    }

    pub(crate) fn v(i: u32) -> SExpr {
        SExpr::Var(SVar(i))
    }

    pub(crate) fn core() -> SExpr {
        SExpr::Core
    }

    pub(crate) fn bin(op: SBin, a: SExpr, b: SExpr) -> SExpr {
        SExpr::Bin(op, Box::new(a), Box::new(b))
    }

    pub(crate) fn add(a: SExpr, b: SExpr) -> SExpr {
        bin(SBin::Add, a, b)
    }

    pub(crate) fn mul(a: SExpr, b: SExpr) -> SExpr {
        bin(SBin::Mul, a, b)
    }

    pub(crate) fn gm(t: u32, off: SExpr, stride: i64) -> Region {
        Region { loc: Loc::Gm(TensorId(t)), offset: off, row_stride: c(stride) }
    }

    pub(crate) fn buf(b: u32, slot: i64, off: SExpr, stride: i64) -> Region {
        Region { loc: Loc::Buf { buf: BufId(b), slot: c(slot) }, offset: off, row_stride: c(stride) }
    }

    pub(crate) fn copy(pipe: Pipe, src: Region, dst: Region, rows: i64, cols: i64) -> Stmt {
        Stmt::Copy { pipe, src, dst, rows: c(rows), cols: c(cols) }
    }

    pub(crate) fn set(from: Pipe, to: Pipe, event: u8) -> Stmt {
        Stmt::SetFlag { from, to, event }
    }

    pub(crate) fn wait(from: Pipe, to: Pipe, event: u8) -> Stmt {
        Stmt::WaitFlag { from, to, event }
    }

    pub(crate) fn buffer(name: &str, mem: Mem, dtype: DType, shape: &[u64], slots: u32, offset: u64) -> Buffer {
        let layout = match mem {
            Mem::L1 | Mem::L0C => Layout::NZ,
            Mem::L0A => Layout::ZZ,
            Mem::L0B => Layout::ZN,
            Mem::UB => Layout::ND,
        };
        Buffer { name: name.to_string(), mem, dtype, shape: shape.to_vec(), slots, layout, offset }
    }

    pub(crate) fn tensor(name: &str, dtype: DType, shape: &[u64], role: TensorRole) -> GmTensor {
        GmTensor { name: name.to_string(), dtype, shape: shape.to_vec(), role }
    }

    pub(crate) fn program(kernel: &str, target: &str, tensors: Vec<GmTensor>, launches: Vec<Launch>) -> TileProgram {
        TileProgram { kernel: kernel.to_string(), target: target.to_string(), dims: BTreeMap::new(), tensors, launches }
    }

    /// One 16-row tile of `y = x * 2` in slot `s` (events `#s`), rows from `row`.
    pub(crate) fn scale_tile(s: u8, row: SExpr) -> Vec<Stmt> {
        let sl = s as i64;
        let x = || buf(0, sl, c(0), 128);
        let y = || buf(1, sl, c(0), 128);
        vec![
            wait(Pipe::V, Pipe::Mte2, s),
            copy(Pipe::Mte2, gm(0, mul(row.clone(), c(128)), 128), x(), 16, 128),
            set(Pipe::Mte2, Pipe::V, s),
            wait(Pipe::Mte2, Pipe::V, s),
            wait(Pipe::Mte3, Pipe::V, s),
            Stmt::Vector {
                dst: y(),
                rows: c(16),
                cols: c(128),
                expr: VExpr::Binary(BinOp::Mul, Box::new(VExpr::Read(x())), Box::new(VExpr::F32(2.0))),
            },
            set(Pipe::V, Pipe::Mte2, s),
            set(Pipe::V, Pipe::Mte3, s),
            wait(Pipe::V, Pipe::Mte3, s),
            copy(Pipe::Mte3, y(), gm(1, mul(row, c(128)), 128), 16, 128),
            set(Pipe::Mte3, Pipe::V, s),
        ]
    }

    /// `y = x * 2` over a bf16[64, 128] tensor on one vector core, in 16-row tiles, double buffered (the
    /// loop is unrolled by the two slots), with the flags Ascend C's queues would set.
    pub(crate) fn scale() -> TileProgram {
        let t = || v(0);
        let mut body = scale_tile(0, t());
        body.extend(scale_tile(1, add(t(), c(16))));
        let mut vector = vec![
            set(Pipe::V, Pipe::Mte2, 0),
            set(Pipe::V, Pipe::Mte2, 1),
            set(Pipe::Mte3, Pipe::V, 0),
            set(Pipe::Mte3, Pipe::V, 1),
            Stmt::For { var: SVar(0), lo: mul(core(), c(64)), hi: add(mul(core(), c(64)), c(64)), step: 32, body },
        ];
        vector.extend([
            wait(Pipe::V, Pipe::Mte2, 0),
            wait(Pipe::V, Pipe::Mte2, 1),
            wait(Pipe::Mte3, Pipe::V, 0),
            wait(Pipe::Mte3, Pipe::V, 1),
        ]);
        let launch = Launch {
            name: "scale.rows".to_string(),
            unit: Unit::Vector,
            cube_cores: 0,
            vector_cores: 1,
            buffers: vec![
                buffer("x_t", Mem::UB, DType::BF16, &[16, 128], 2, 0),
                buffer("y_t", Mem::UB, DType::BF16, &[16, 128], 2, 8192),
            ],
            svars: vec!["t".to_string()],
            cube: vec![],
            vector,
        };
        let mut p = program(
            "scale",
            "ascend910b",
            vec![
                tensor("x", DType::BF16, &[64, 128], TensorRole::Param(0)),
                tensor("y", DType::BF16, &[64, 128], TensorRole::Output(0)),
            ],
            vec![launch],
        );
        p.dims.insert("T".to_string(), 64);
        p.dims.insert("D".to_string(), 128);
        p
    }

    /// The cube part of `c = a · b` for a bf16[64, 64] `a` and a bf16[64, 128] `b`: cube core `core`
    /// computes columns `core * 64 ..` (GM → L1 → L0A/L0B → mmad → L0C), and FixPipe writes the f32
    /// result to `out` (`out_off`, `out_ld`), converting it to the destination's dtype.
    pub(crate) fn matmul_cube(out: Region) -> Vec<Stmt> {
        let whole = |b: u32| buf(b, 0, c(0), 64);
        vec![
            copy(Pipe::Mte2, gm(0, c(0), 64), whole(0), 64, 64),
            copy(Pipe::Mte2, gm(1, mul(core(), c(64)), 128), whole(1), 64, 64),
            set(Pipe::Mte2, Pipe::Mte1, 0),
            wait(Pipe::Mte2, Pipe::Mte1, 0),
            copy(Pipe::Mte1, whole(0), whole(2), 64, 64),
            copy(Pipe::Mte1, whole(1), whole(3), 64, 64),
            set(Pipe::Mte1, Pipe::M, 0),
            wait(Pipe::Mte1, Pipe::M, 0),
            Stmt::Mmad { a: whole(2), b: whole(3), c: whole(4), m: c(64), k: c(64), n: c(64), accumulate: false },
            set(Pipe::M, Pipe::Fix, 0),
            wait(Pipe::M, Pipe::Fix, 0),
            copy(Pipe::Fix, whole(4), out, 64, 64),
        ]
    }

    pub(crate) fn matmul_buffers() -> Vec<Buffer> {
        vec![
            buffer("a_l1", Mem::L1, DType::BF16, &[64, 64], 1, 0),
            buffer("b_l1", Mem::L1, DType::BF16, &[64, 64], 1, 8192),
            buffer("a_l0", Mem::L0A, DType::BF16, &[64, 64], 1, 0),
            buffer("b_l0", Mem::L0B, DType::BF16, &[64, 64], 1, 0),
            buffer("c_l0", Mem::L0C, DType::F32, &[64, 64], 1, 0),
        ]
    }

    pub(crate) fn matmul_tensors() -> Vec<GmTensor> {
        vec![
            tensor("a", DType::BF16, &[64, 64], TensorRole::Param(0)),
            tensor("b", DType::BF16, &[64, 128], TensorRole::Param(1)),
            tensor("c", DType::BF16, &[64, 128], TensorRole::Output(0)),
        ]
    }

    /// `c = a · b` on two cube cores, each writing its 64 columns of `c` through FixPipe (f32 → bf16).
    pub(crate) fn matmul() -> TileProgram {
        let launch = Launch {
            name: "matmul".to_string(),
            unit: Unit::Cube,
            cube_cores: 2,
            vector_cores: 0,
            buffers: matmul_buffers(),
            svars: vec![],
            cube: matmul_cube(gm(2, mul(core(), c(64)), 128)),
            vector: vec![],
        };
        program("matmul", "ascend910b", matmul_tensors(), vec![launch])
    }

    /// `c = relu(a · b)` on 2 cube + 4 vector cores: each cube core writes its f32 block to a GM workspace
    /// and signals cross flag 0; its two vector cores wait, take 32 rows each, apply relu and write `c`.
    /// `ws_core` is the cube core whose workspace a vector core reads (normally `core / 2`).
    pub(crate) fn matmul_relu_with(cross_wait: bool, ws_core: SExpr) -> TileProgram {
        let mut cube = matmul_cube(gm(3, mul(core(), c(4096)), 64));
        cube.push(Stmt::CrossSet { flag: 0 });
        let half = bin(SBin::Mod, core(), c(2));
        let mut vector = Vec::new();
        if cross_wait {
            vector.push(Stmt::CrossWait { flag: 0 });
        }
        let ws_off = add(mul(ws_core, c(4096)), mul(half.clone(), c(2048)));
        let out_off = add(mul(half, c(32 * 128)), mul(bin(SBin::Div, core(), c(2)), c(64)));
        vector.extend([
            copy(Pipe::Mte2, gm(3, ws_off, 64), buf(5, 0, c(0), 64), 32, 64),
            set(Pipe::Mte2, Pipe::V, 0),
            wait(Pipe::Mte2, Pipe::V, 0),
            Stmt::Vector {
                dst: buf(6, 0, c(0), 64),
                rows: c(32),
                cols: c(64),
                expr: VExpr::Unary(UnOp::Relu, Box::new(VExpr::Read(buf(5, 0, c(0), 64)))),
            },
            set(Pipe::V, Pipe::Mte3, 0),
            wait(Pipe::V, Pipe::Mte3, 0),
            copy(Pipe::Mte3, buf(6, 0, c(0), 64), gm(2, out_off, 128), 32, 64),
        ]);
        let mut buffers = matmul_buffers();
        buffers.push(buffer("w_t", Mem::UB, DType::F32, &[32, 64], 1, 0));
        buffers.push(buffer("o_t", Mem::UB, DType::BF16, &[32, 64], 1, 8192));
        let launch = Launch {
            name: "matmul_relu".to_string(),
            unit: Unit::Mixed,
            cube_cores: 2,
            vector_cores: 4,
            buffers,
            svars: vec![],
            cube,
            vector,
        };
        let mut tensors = matmul_tensors();
        tensors.push(tensor(
            "ws",
            DType::F32,
            &[2, 64, 64],
            TensorRole::Workspace { per_core: 16384, unit_private: false },
        ));
        program("matmul_relu", "ascend910b", tensors, vec![launch])
    }

    pub(crate) fn matmul_relu() -> TileProgram {
        matmul_relu_with(true, bin(SBin::Div, core(), c(2)))
    }

    /// `c = a · b` with the cube's FixPipe writing straight into UB (`l0c -> ub`, an ascend950 path) and
    /// the vector cores storing their halves.
    pub(crate) fn matmul_to_ub(target: &str) -> TileProgram {
        let mut cube = matmul_cube(buf(5, 0, c(0), 64));
        cube.push(Stmt::CrossSet { flag: 0 });
        let half = bin(SBin::Mod, core(), c(2));
        let out_off = add(mul(half.clone(), c(32 * 128)), mul(bin(SBin::Div, core(), c(2)), c(64)));
        let vector = vec![
            Stmt::CrossWait { flag: 0 },
            copy(Pipe::Mte3, buf(5, 0, mul(half, c(2048)), 64), gm(2, out_off, 128), 32, 64),
        ];
        let mut buffers = matmul_buffers();
        buffers.push(buffer("c_ub", Mem::UB, DType::BF16, &[64, 64], 1, 0));
        let launch = Launch {
            name: "matmul_ub".to_string(),
            unit: Unit::Mixed,
            cube_cores: 2,
            vector_cores: 4,
            buffers,
            svars: vec![],
            cube,
            vector,
        };
        program("matmul_ub", target, matmul_tensors(), vec![launch])
    }

    #[test]
    fn prints_the_scale_kernel() {
        let expected = "\
kernel scale  target ascend910b  dims D = 128, T = 64
tensors:
  t0 x: bf16[64, 128]  param 0
  t1 y: bf16[64, 128]  output 0

launch scale.rows  vector  grid 0 cube + 1 vector
  buffers:
    x_t  ub  offset    0  4096 B x 2 = 8192 B  bf16[16, 128]  nd
    y_t  ub  offset 8192  4096 B x 2 = 8192 B  bf16[16, 128]  nd
  vector:
    set_flag V -> MTE2 #0
    set_flag V -> MTE2 #1
    set_flag MTE3 -> V #0
    set_flag MTE3 -> V #1
    for t in core * 64 .. core * 64 + 64 step 32 {
      wait_flag V -> MTE2 #0
      copy.MTE2 gm:x[t * 128 +: 16 x 128, ld 128] -> x_t[0][0 +: 16 x 128, ld 128]
      set_flag MTE2 -> V #0
      wait_flag MTE2 -> V #0
      wait_flag MTE3 -> V #0
      vector y_t[0][0 +: 16 x 128, ld 128] = x_t[0][0, ld 128] * 2.0
      set_flag V -> MTE2 #0
      set_flag V -> MTE3 #0
      wait_flag V -> MTE3 #0
      copy.MTE3 y_t[0][0 +: 16 x 128, ld 128] -> gm:y[t * 128 +: 16 x 128, ld 128]
      set_flag MTE3 -> V #0
      wait_flag V -> MTE2 #1
      copy.MTE2 gm:x[(t + 16) * 128 +: 16 x 128, ld 128] -> x_t[1][0 +: 16 x 128, ld 128]
      set_flag MTE2 -> V #1
      wait_flag MTE2 -> V #1
      wait_flag MTE3 -> V #1
      vector y_t[1][0 +: 16 x 128, ld 128] = x_t[1][0, ld 128] * 2.0
      set_flag V -> MTE2 #1
      set_flag V -> MTE3 #1
      wait_flag V -> MTE3 #1
      copy.MTE3 y_t[1][0 +: 16 x 128, ld 128] -> gm:y[(t + 16) * 128 +: 16 x 128, ld 128]
      set_flag MTE3 -> V #1
    }
    wait_flag V -> MTE2 #0
    wait_flag V -> MTE2 #1
    wait_flag MTE3 -> V #0
    wait_flag MTE3 -> V #1
";
        let p = scale();
        let text = print_program(&p);
        assert_eq!(text, expected, "\n{text}");
        assert_eq!(print_program(&p.clone()), text, "deterministic");
    }

    #[test]
    fn prints_the_mixed_matmul() {
        let expected = "\
kernel matmul_relu  target ascend910b
tensors:
  t0 a: bf16[64, 64]  param 0
  t1 b: bf16[64, 128]  param 1
  t2 c: bf16[64, 128]  output 0
  t3 ws: f32[2, 64, 64]  workspace 16384 B per core

launch matmul_relu  mixed  grid 2 cube + 4 vector
  buffers:
    a_l1  l1   offset    0   8192 B x 1 =  8192 B  bf16[64, 64]  nz
    b_l1  l1   offset 8192   8192 B x 1 =  8192 B  bf16[64, 64]  nz
    a_l0  l0a  offset    0   8192 B x 1 =  8192 B  bf16[64, 64]  zz
    b_l0  l0b  offset    0   8192 B x 1 =  8192 B  bf16[64, 64]  zn
    c_l0  l0c  offset    0  16384 B x 1 = 16384 B  f32[64, 64]  nz
    w_t   ub   offset    0   8192 B x 1 =  8192 B  f32[32, 64]  nd
    o_t   ub   offset 8192   4096 B x 1 =  4096 B  bf16[32, 64]  nd
  cube:
    copy.MTE2 gm:a[0 +: 64 x 64, ld 64] -> a_l1[0][0 +: 64 x 64, ld 64]
    copy.MTE2 gm:b[core * 64 +: 64 x 64, ld 128] -> b_l1[0][0 +: 64 x 64, ld 64]
    set_flag MTE2 -> MTE1 #0
    wait_flag MTE2 -> MTE1 #0
    copy.MTE1 a_l1[0][0 +: 64 x 64, ld 64] -> a_l0[0][0 +: 64 x 64, ld 64]
    copy.MTE1 b_l1[0][0 +: 64 x 64, ld 64] -> b_l0[0][0 +: 64 x 64, ld 64]
    set_flag MTE1 -> M #0
    wait_flag MTE1 -> M #0
    mmad c_l0[0][0 +: 64 x 64, ld 64] = a_l0[0][0 +: 64 x 64, ld 64] * b_l0[0][0 +: 64 x 64, ld 64]
    set_flag M -> FIX #0
    wait_flag M -> FIX #0
    copy.FIX c_l0[0][0 +: 64 x 64, ld 64] -> gm:ws[core * 4096 +: 64 x 64, ld 64]
    cross_set #0
  vector:
    cross_wait #0
    copy.MTE2 gm:ws[core / 2 * 4096 + core % 2 * 2048 +: 32 x 64, ld 64] -> w_t[0][0 +: 32 x 64, ld 64]
    set_flag MTE2 -> V #0
    wait_flag MTE2 -> V #0
    vector o_t[0][0 +: 32 x 64, ld 64] = relu(w_t[0][0, ld 64])
    set_flag V -> MTE3 #0
    wait_flag V -> MTE3 #0
    copy.MTE3 o_t[0][0 +: 32 x 64, ld 64] -> gm:c[core % 2 * 4096 + core / 2 * 64 +: 32 x 64, ld 128]
";
        let text = print_program(&matmul_relu());
        assert_eq!(text, expected, "\n{text}");
    }

    /// A launch with one statement of every other kind, printed one per line.
    #[test]
    fn prints_every_statement_kind() {
        let mut p = scale();
        p.tensors.push(tensor("emb", DType::BF16, &[1000, 256], TensorRole::Intermediate(ValueId(3))));
        let l = &mut p.launches[0];
        l.buffers.push(buffer("idx", Mem::UB, DType::I32, &[16, 8], 1, 16384));
        l.svars = vec!["t".into(), "t".into(), "".into(), "core".into(), "t.1".into()];
        let idx = || buf(2, 0, c(0), 8);
        let x = || buf(0, 1, v(1), 128);
        let rows = bin(SBin::Min, c(16), bin(SBin::Sub, c(64), v(0)));
        let stmts = vec![
            Stmt::Set { var: SVar(2), value: bin(SBin::Sub, v(0), bin(SBin::Sub, v(1), c(-2))) },
            Stmt::Set {
                var: SVar(3),
                value: bin(
                    SBin::Eq,
                    bin(SBin::Lt, v(4), c(3)),
                    SExpr::Read { buf: BufId(2), slot: Box::new(c(0)), index: Box::new(add(v(3), c(1))) },
                ),
            },
            Stmt::If { cond: bin(SBin::Le, mul(add(v(0), c(1)), c(2)), c(64)), then: vec![] },
            Stmt::Gather {
                pipe: Pipe::Mte2,
                src: TensorId(2),
                src_rows: 1000,
                row_stride: 256,
                col_offset: c(128),
                index: idx(),
                dst: x(),
                rows: rows.clone(),
                cols: c(128),
                span: Span::default(),
                error: None,
            },
            Stmt::Mmad {
                a: buf(9, 0, c(0), 16),
                b: buf(3, 0, c(0), 16),
                c: gm(7, c(0), 16),
                m: c(16),
                k: c(32),
                n: add(v(0), c(1)),
                accumulate: true,
            },
            Stmt::Vector {
                dst: x(),
                rows: rows.clone(),
                cols: c(128),
                expr: VExpr::Select(
                    Box::new(VExpr::Binary(
                        BinOp::Lt,
                        Box::new(VExpr::Binary(BinOp::Add, Box::new(VExpr::Row), Box::new(VExpr::Scalar(v(0))))),
                        Box::new(VExpr::I32(64)),
                    )),
                    Box::new(VExpr::Cast(
                        DType::BF16,
                        Box::new(VExpr::Binary(
                            BinOp::Pow,
                            Box::new(VExpr::Unary(
                                UnOp::Neg,
                                Box::new(VExpr::Binary(
                                    BinOp::Sub,
                                    Box::new(VExpr::ReadRow(buf(1, 0, c(0), 1))),
                                    Box::new(VExpr::F32(-1.5)),
                                )),
                            )),
                            Box::new(VExpr::ReadCol(gm(0, c(0), 128))),
                        )),
                    )),
                    Box::new(VExpr::Binary(
                        BinOp::Mul,
                        Box::new(VExpr::Col),
                        Box::new(VExpr::Unary(UnOp::Exp, Box::new(VExpr::Bool(true)))),
                    )),
                ),
            },
            Stmt::Reduce {
                op: ReduceOp::Max,
                axis: 1,
                src: x(),
                dst: buf(1, 0, c(0), 1),
                rows: c(16),
                cols: c(128),
                accumulate: true,
            },
            Stmt::Reduce {
                op: ReduceOp::Sum,
                axis: 0,
                src: x(),
                dst: buf(1, 0, c(0), 128),
                rows: c(16),
                cols: c(128),
                accumulate: false,
            },
            Stmt::Library {
                op: LibOp::TopK { k: 4, values: Some(buf(1, 0, c(0), 4)), indices: Some(idx()) },
                src: x(),
                rows: c(16),
                cols: c(128),
                span: Span::default(),
            },
            Stmt::Library {
                op: LibOp::TopK { k: 4, values: None, indices: None },
                src: x(),
                rows: c(16),
                cols: c(128),
                span: Span::default(),
            },
            Stmt::Library {
                op: LibOp::ArgSort { descending: true, dst: idx() },
                src: x(),
                rows: c(16),
                cols: c(8),
                span: Span::default(),
            },
            Stmt::Library {
                op: LibOp::CumSum { exclusive: false, dst: idx(), carry: Some(buf(2, 0, c(120), 1)) },
                src: idx(),
                rows: c(16),
                cols: c(8),
                span: Span::default(),
            },
            Stmt::Library {
                op: LibOp::BinCount { n: 64, dst: buf(2, 0, c(0), 64) },
                src: idx(),
                rows: c(1),
                cols: c(16),
                span: Span::default(),
            },
            Stmt::Barrier { pipe: Pipe::V },
            Stmt::CrossSet { flag: 3 },
            Stmt::CrossWait { flag: 10 },
            set(Pipe::Fix, Pipe::S, 7),
            Stmt::For { var: SVar(42), lo: c(-1), hi: SExpr::Core, step: 1, body: vec![] },
        ];
        let got: Vec<String> = stmts.iter().map(|s| print_stmt(&p, &p.launches[0], s)).collect();
        let expected = [
            "s2 = t - (t.2 - (-2))",
            "core.1 = (t.1 < 3) == idx[0][core.1 + 1]",
            "if (t + 1) * 2 <= 64",
            "gather.MTE2 gm:emb[idx[0][0 +: min(16, 64 - t) x 1, ld 8] of 1000 rows, ld 256, cols 128 +: 128] \
             -> x_t[1][t.2 +: min(16, 64 - t) x 128, ld 128]",
            "mmad gm:?t7[0 +: 16 x (t + 1), ld 16] += ?b9[0][0 +: 16 x 32, ld 16] * ?b3[0][0 +: 32 x (t + 1), ld 16]",
            "vector x_t[1][t.2 +: min(16, 64 - t) x 128, ld 128] = where(r + scalar(t) < 64, \
             bf16(pow(-(y_t[0][0, ld 1][r, 0] - (-1.5)), gm:x[0, ld 128][0, c])), c * exp(true))",
            "reduce.max axis 1 x_t[1][t.2 +: 16 x 128, ld 128] -> y_t[0][0 +: 16 x 1, ld 1] accumulate",
            "reduce.sum axis 0 x_t[1][t.2 +: 16 x 128, ld 128] -> y_t[0][0 +: 1 x 128, ld 128]",
            "library topk(k = 4) x_t[1][t.2 +: 16 x 128, ld 128] -> values y_t[0][0 +: 16 x 4, ld 4], \
             indices idx[0][0 +: 16 x 4, ld 8]",
            "library topk(k = 4) x_t[1][t.2 +: 16 x 128, ld 128] -> nothing",
            "library argsort(descending = true) x_t[1][t.2 +: 16 x 8, ld 128] -> idx[0][0 +: 16 x 8, ld 8]",
            "library cumsum(exclusive = false) idx[0][0 +: 16 x 8, ld 8] -> idx[0][0 +: 16 x 8, ld 8], \
             carry idx[0][120 +: 16 x 1, ld 1]",
            "library bincount(n = 64) idx[0][0 +: 1 x 16, ld 8] -> idx[0][0 +: 1 x 64, ld 64]",
            "barrier V",
            "cross_set #3",
            "cross_wait #10",
            "set_flag FIX -> S #7",
            "for ?s42 in -1 .. core step 1",
        ];
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(g, e);
        }
        assert_eq!(got.len(), expected.len());
        // A program with them all prints them, bodies indented, without panicking.
        p.launches[0].vector = vec![Stmt::If { cond: c(1), then: stmts }];
        p.launches[0].cube = vec![Stmt::Barrier { pipe: Pipe::M }];
        let text = print_program(&p);
        assert!(
            text.contains("  cube:\n    barrier M\n  vector:\n    if 1 {\n      s2 = t - (t.2 - (-2))\n"),
            "{text}"
        );
        assert!(text.contains("  t2 emb: bf16[1000, 256]  intermediate %3\n"), "{text}");
        assert!(text.ends_with("      for ?s42 in -1 .. core step 1 {\n      }\n    }\n"), "{text}");
    }

    #[test]
    fn scalar_precedence() {
        let p = scale();
        let l = &p.launches[0];
        let s = |e: SExpr| print_sexpr(&p, l, &e);
        let (a, b) = (|| v(0), || core());
        assert_eq!(s(bin(SBin::Sub, a(), bin(SBin::Sub, b(), c(1)))), "t - (core - 1)");
        assert_eq!(s(bin(SBin::Sub, bin(SBin::Sub, a(), b()), c(1))), "t - core - 1");
        assert_eq!(s(bin(SBin::Div, a(), mul(b(), c(2)))), "t / (core * 2)");
        assert_eq!(s(bin(SBin::Mod, bin(SBin::Div, a(), c(2)), c(2))), "t / 2 % 2");
        assert_eq!(s(add(a(), mul(b(), c(-3)))), "t + core * (-3)");
        assert_eq!(s(mul(c(-3), a())), "-3 * t");
        assert_eq!(s(bin(SBin::Max, add(a(), c(1)), c(0))), "max(t + 1, 0)");
        assert_eq!(s(bin(SBin::Lt, bin(SBin::Le, a(), b()), c(1))), "(t <= core) < 1");
        assert_eq!(s(bin(SBin::Eq, a(), bin(SBin::Eq, b(), c(1)))), "t == (core == 1)");
        assert_eq!(s(v(99)), "?s99");
    }

    #[test]
    fn names_are_disambiguated() {
        assert_eq!(unique_names(&["i", "i", "i.1", "i", ""], "s", &[]), vec!["i", "i.2", "i.1", "i.3", "s4"]);
        assert_eq!(unique_names(&["core", "x"], "s", &["core"]), vec!["core.1", "x"]);
        let mut p = scale();
        p.tensors[1].name = "x".into();
        p.launches[0].buffers[1].name = "x_t".into();
        let text = print_program(&p);
        assert!(text.contains("  t1 x.1: bf16[64, 128]  output 0\n"), "{text}");
        assert!(text.contains("copy.MTE3 x_t.1[0][0 +: 16 x 128, ld 128] -> gm:x.1[t * 128"), "{text}");
    }

    #[test]
    fn empty_and_malformed_programs_print() {
        let mut p = program("k", "t", vec![], vec![]);
        assert_eq!(print_program(&p), "kernel k  target t\ntensors: none\n");
        p.launches.push(Launch {
            name: "l".into(),
            unit: Unit::Cube,
            cube_cores: 0,
            vector_cores: 0,
            buffers: vec![],
            svars: vec![],
            cube: vec![],
            vector: vec![],
        });
        assert_eq!(
            print_program(&p),
            "kernel k  target t\ntensors: none\n\nlaunch l  cube  grid 0 cube + 0 vector\n  buffers: none\n"
        );
        p.launches[0].buffers.push(buffer("huge", Mem::L1, DType::F32, &[u64::MAX, u64::MAX, 4], 3, 0));
        p.launches[0].buffers.push(buffer("s", Mem::UB, DType::F32, &[], 1, 32));
        let text = print_program(&p);
        assert!(
            text.contains("huge  l1  offset  0  ? B x 3 = ? B  f32[18446744073709551615, 18446744073709551615, 4]  nz"),
            "{text}"
        );
        assert!(text.contains("s     ub  offset 32  4 B x 1 = 4 B  f32  nd"), "{text}");
    }
}
