//! The graph IR: one [`Graph`] per kernel, a typed tensor dataflow.
//!
//! Nodes live in an arena (`Graph::nodes`) addressed by [`ValueId`]; each node comes after every node it
//! reads, so a linear walk is a valid execution order. Every node has a storage dtype, a symbolic shape and a
//! source span.
//!
//! Most nodes are [`NodeKind::Compute`]: a tensor defined in index notation, `out[v0, .., vn] = body`, where
//! `body` is a scalar [`Expr`] over the node's index variables. Whole-tensor operations (elementwise maths,
//! broadcasting, reductions, matmul, transpose, reshape, concat) all lower to this one form, so fusion and
//! tiling see a single, uniform representation. The data-dependent library operations that are not a
//! function of one output element (top-k, sorting, prefix sums, histograms) are nodes of their own.
//!
//! Typing rules:
//! - A `Compute` body has compute type `dtype.compute()`; storing rounds `f32` to `bf16`/`f16` (nearest-even).
//! - `Load` reads `src[idx..]`, one `i32` index per dim of `src`, and widens to `src.dtype.compute()`.
//! - `Var`, `Dim` and integer constants are `i32` values; index arithmetic is done in 64 bits.
//! - `Unary`/`Binary` operands have the types [`UnOp::check`]/[`BinOp::check`] give.
//! - `Select(c, a, b)`: `c` is bool, `a` and `b` share a type; only the chosen side is evaluated.
//! - `Reduce` reduces its body over its variables, each ranging over `0..extent`.

use crate::dim::Dim;
use crate::dtype::{DType, ScalarTy};
use crate::span::Span;

/// A node of a graph.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An index variable of a `Compute` node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub u32);

impl VarId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One kernel, lowered.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub doc: Option<String>,
    pub span: Span,
    pub params: Vec<Param>,
    pub outputs: Vec<OutputDecl>,
    /// Every dim symbol of the signature, in order of first appearance.
    pub dims: Vec<String>,
    /// Dims fixed by a `where D == literal` constraint.
    pub fixed: Vec<(String, i64)>,
    /// The `where` constraints, all checked at launch.
    pub constraints: Vec<Constraint>,
    /// Equalities of dims that the compiler could not prove and checks at launch (e.g. a reshape's sizes).
    pub asserts: Vec<DimAssert>,
    pub nodes: Vec<Node>,
    /// What each output and each `inout` parameter holds at the end: declared outputs first (in order),
    /// then `inout` parameters (in parameter order).
    pub results: Vec<Result_>,
    /// Schedule hints the author attached to statements.
    pub hints: Vec<Hint>,
}

/// A schedule hint on the node a statement defines (or, when the statement's value is an existing node,
/// that node), in source order: `#[unfused]` keeps it out of fusion (its own group, stored);
/// `#[tile(t: 64, d: 128)]` asks for tile sizes along its axes (to be checked by the tiler against the
/// target's buffers: one that cannot be honoured is an error, never ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct Hint {
    pub node: ValueId,
    pub kind: HintKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HintKind {
    Unfused,
    /// (axis, tile size) pairs, each axis once, each size at least 1. An axis is named by an output index
    /// variable of a `Compute` node (`t`), or by a dim symbol of the node's shape (`T`: every axis of that
    /// size).
    Tile(Vec<(String, u64)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// A tensor (`shape` non-empty) or a scalar (`shape` empty).
    Tensor { dtype: DType, shape: Vec<Dim>, inout: bool },
    /// `E: dim`: an integer given at launch that binds the dim symbol of the same name.
    Dim,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputDecl {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub span: Span,
}

/// A `where` constraint: `lhs op rhs` on dims.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    pub lhs: Dim,
    pub op: CmpOp,
    pub rhs: Dim,
    pub span: Span,
    /// The constraint as written, for messages.
    pub text: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    pub fn holds(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

/// `lhs == rhs`, checked at launch.
#[derive(Clone, Debug, PartialEq)]
pub struct DimAssert {
    pub lhs: Dim,
    pub rhs: Dim,
    pub span: Span,
    /// What the equality is for: "reshape keeps the number of elements".
    pub what: String,
}

/// The final value of an output or an `inout` parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Result_ {
    pub name: String,
    pub value: ValueId,
    /// The parameter index, for an `inout`.
    pub inout: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The source name of the value, when it has one (a parameter, a `let`, an output).
    pub name: Option<String>,
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub kind: NodeKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// The value of parameter `params[i]` at launch (for an `inout`, its value before the kernel).
    Param(usize),
    /// `out[vars[0], .., vars[rank-1]] = body`. `vars` holds every index variable of the node: first the
    /// output axes (one per dim of `shape`, extent = that dim), then the reduction variables.
    Compute { vars: Vec<IndexVar>, body: Expr },
    /// The `k` largest values along `axis` (largest first; ties to the lower index), or their indices.
    TopK { src: ValueId, k: Dim, axis: usize, part: TopKPart },
    /// Indices that sort `src` along `axis` (stable).
    ArgSort { src: ValueId, axis: usize, descending: bool },
    /// Prefix sums along `axis`.
    CumSum { src: ValueId, axis: usize, exclusive: bool },
    /// For a 1-D `i32` tensor, the count of each value in `0..n` (a value outside is a run-time error).
    BinCount { src: ValueId, n: Dim },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopKPart {
    Values,
    Indices,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IndexVar {
    pub name: String,
    pub extent: Dim,
}

/// A scalar expression, with its type and source span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: ScalarTy,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Const(Const),
    /// An index variable of the enclosing node.
    Var(VarId),
    /// A dim's value, as an `i32`.
    Dim(Dim),
    /// `src[idx..]`, widened to the compute type. An index outside `src` is a run-time error naming `span`.
    Load {
        src: ValueId,
        idx: Vec<Expr>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `where(c, a, b)`: only the chosen side is evaluated.
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// Conversion. To `F32`/`I32`/`Bool` it converts (float to int truncates toward zero; anything to bool
    /// is `!= 0`); to `BF16`/`F16` it rounds an `f32` to that type (the result is still an `f32` value).
    Cast(DType, Box<Expr>),
    /// Reduces `body` over `vars` (variables of the enclosing node).
    Reduce {
        op: ReduceOp,
        vars: Vec<VarId>,
        body: Box<Expr>,
    },
    /// `segment(offsets, value)`: the `e` with `src[e] <= value < src[e + 1]` for a sorted 1-D `src`
    /// (the last such `e` when groups are empty); a value outside `src[0]..src[len-1]` is a run-time error.
    Segment {
        src: ValueId,
        value: Box<Expr>,
    },
}

/// A constant. Floats are kept as `f32`, the compute type.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Const {
    F32(f32),
    I32(i64),
    Bool(bool),
}

impl Const {
    pub fn ty(self) -> ScalarTy {
        match self {
            Const::F32(_) => ScalarTy::F32,
            Const::I32(_) => ScalarTy::I32,
            Const::Bool(_) => ScalarTy::Bool,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnOp {
    Neg,
    Not,
    Exp,
    Exp2,
    Log,
    Log2,
    Sqrt,
    Rsqrt,
    Abs,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Silu,
    /// The exact (erf) form.
    Gelu,
    Relu,
    Softplus,
    Floor,
    Ceil,
}

impl UnOp {
    pub const ALL: [UnOp; 19] = [
        UnOp::Neg,
        UnOp::Not,
        UnOp::Exp,
        UnOp::Exp2,
        UnOp::Log,
        UnOp::Log2,
        UnOp::Sqrt,
        UnOp::Rsqrt,
        UnOp::Abs,
        UnOp::Sin,
        UnOp::Cos,
        UnOp::Tanh,
        UnOp::Sigmoid,
        UnOp::Silu,
        UnOp::Gelu,
        UnOp::Relu,
        UnOp::Softplus,
        UnOp::Floor,
        UnOp::Ceil,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnOp::Neg => "neg",
            UnOp::Not => "not",
            UnOp::Exp => "exp",
            UnOp::Exp2 => "exp2",
            UnOp::Log => "log",
            UnOp::Log2 => "log2",
            UnOp::Sqrt => "sqrt",
            UnOp::Rsqrt => "rsqrt",
            UnOp::Abs => "abs",
            UnOp::Sin => "sin",
            UnOp::Cos => "cos",
            UnOp::Tanh => "tanh",
            UnOp::Sigmoid => "sigmoid",
            UnOp::Silu => "silu",
            UnOp::Gelu => "gelu",
            UnOp::Relu => "relu",
            UnOp::Softplus => "softplus",
            UnOp::Floor => "floor",
            UnOp::Ceil => "ceil",
        }
    }

    /// The builtin elementwise function of this name (not `neg`/`not`, which are operators).
    pub fn from_builtin(name: &str) -> Option<UnOp> {
        UnOp::ALL.into_iter().find(|u| !matches!(u, UnOp::Neg | UnOp::Not) && u.name() == name)
    }

    /// The result type for an operand type, or `None` if the operand type is not accepted.
    /// `neg` and `abs` take f32 or i32; `not` takes bool; the rest take f32.
    pub fn check(self, a: ScalarTy) -> Option<ScalarTy> {
        match (self, a) {
            (UnOp::Neg | UnOp::Abs, ScalarTy::F32 | ScalarTy::I32) => Some(a),
            (UnOp::Not, ScalarTy::Bool) => Some(ScalarTy::Bool),
            (UnOp::Neg | UnOp::Abs | UnOp::Not, _) => None,
            (_, ScalarTy::F32) => Some(ScalarTy::F32),
            _ => None,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    /// f32: true division; i32: rounds toward negative infinity, division by zero is a run-time error.
    Div,
    /// Floor remainder (the sign of the divisor), for f32 and i32.
    Mod,
    Pow,
    Min,
    Max,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
            BinOp::Mod => "mod",
            BinOp::Pow => "pow",
            BinOp::Min => "min",
            BinOp::Max => "max",
            BinOp::Eq => "eq",
            BinOp::Ne => "ne",
            BinOp::Lt => "lt",
            BinOp::Le => "le",
            BinOp::Gt => "gt",
            BinOp::Ge => "ge",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }

    /// The infix symbol, for operators that have one.
    pub fn symbol(self) -> Option<&'static str> {
        Some(match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
            BinOp::Pow | BinOp::Min | BinOp::Max => return None,
        })
    }

    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge)
    }

    /// The result type when both operands have type `t` (operands must share a type), or `None`.
    pub fn check(self, t: ScalarTy) -> Option<ScalarTy> {
        match self {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::Min | BinOp::Max => {
                (t != ScalarTy::Bool).then_some(t)
            }
            BinOp::Pow => (t == ScalarTy::F32).then_some(t),
            BinOp::Eq | BinOp::Ne => Some(ScalarTy::Bool),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => (t != ScalarTy::Bool).then_some(ScalarTy::Bool),
            BinOp::And | BinOp::Or => (t == ScalarTy::Bool).then_some(ScalarTy::Bool),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// The index (an `i32`) of the first largest value; exactly one variable.
    ArgMax,
    /// The index of the first smallest value; exactly one variable.
    ArgMin,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }

    /// The result type for a body of type `t`, or `None` if the body type is not accepted.
    pub fn check(self, t: ScalarTy) -> Option<ScalarTy> {
        match (self, t) {
            (_, ScalarTy::Bool) => None,
            (ReduceOp::ArgMax | ReduceOp::ArgMin, _) => Some(ScalarTy::I32),
            _ => Some(t),
        }
    }
}

impl Expr {
    pub fn new(kind: ExprKind, ty: ScalarTy, span: Span) -> Expr {
        Expr { kind, ty, span }
    }

    pub fn constant(c: Const, span: Span) -> Expr {
        Expr { ty: c.ty(), kind: ExprKind::Const(c), span }
    }

    /// Calls `f` on each direct sub-expression.
    pub fn for_each_child<'a>(&'a self, mut f: impl FnMut(&'a Expr)) {
        match &self.kind {
            ExprKind::Const(_) | ExprKind::Var(_) | ExprKind::Dim(_) => {}
            ExprKind::Load { idx, .. } => idx.iter().for_each(f),
            ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => f(a),
            ExprKind::Binary(_, a, b) => {
                f(a);
                f(b)
            }
            ExprKind::Select(c, a, b) => {
                f(c);
                f(a);
                f(b)
            }
            ExprKind::Reduce { body, .. } => f(body),
            ExprKind::Segment { value, .. } => f(value),
        }
    }

    /// Calls `f` on each direct sub-expression, mutably (the same children as [`Expr::for_each_child`]).
    pub fn for_each_child_mut(&mut self, mut f: impl FnMut(&mut Expr)) {
        match &mut self.kind {
            ExprKind::Const(_) | ExprKind::Var(_) | ExprKind::Dim(_) => {}
            ExprKind::Load { idx, .. } => idx.iter_mut().for_each(f),
            ExprKind::Unary(_, a) | ExprKind::Cast(_, a) => f(a),
            ExprKind::Binary(_, a, b) => {
                f(a);
                f(b)
            }
            ExprKind::Select(c, a, b) => {
                f(c);
                f(a);
                f(b)
            }
            ExprKind::Reduce { body, .. } => f(body),
            ExprKind::Segment { value, .. } => f(value),
        }
    }

    /// Visits this expression and every sub-expression, parents first.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        self.for_each_child(|c| c.walk(f));
    }
}

impl Node {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The nodes this node reads, in a deterministic order (with repeats).
    pub fn operands(&self) -> Vec<ValueId> {
        match &self.kind {
            NodeKind::Param(_) => Vec::new(),
            NodeKind::Compute { body, .. } => {
                let mut out = Vec::new();
                body.walk(&mut |e| match &e.kind {
                    ExprKind::Load { src, .. } | ExprKind::Segment { src, .. } => out.push(*src),
                    _ => {}
                });
                out
            }
            NodeKind::TopK { src, .. }
            | NodeKind::ArgSort { src, .. }
            | NodeKind::CumSum { src, .. }
            | NodeKind::BinCount { src, .. } => vec![*src],
        }
    }
}

impl Graph {
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }
}

/// A file's kernels, lowered.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Program {
    pub kernels: Vec<Graph>,
}

impl Program {
    pub fn kernel(&self, name: &str) -> Option<&Graph> {
        self.kernels.iter().find(|k| k.name == name)
    }
}
