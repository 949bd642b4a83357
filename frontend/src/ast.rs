//! The abstract syntax tree of a `.ker` file, exactly as written (no names resolved, no types checked).
//! Every node carries the span of its source text.

use kc_ir::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use "relative/path.ker";`
    Use {
        path: String,
        span: Span,
    },
    Fn(FnDef),
    Kernel(KernelDef),
}

/// `kernel NAME(PARAMS) [-> OUTPUT | -> (OUTPUTS)] [where CONSTRAINTS] { BODY }`
#[derive(Clone, Debug, PartialEq)]
pub struct KernelDef {
    /// The `///` doc comment lines, without the `///` and one following space, joined with `\n`.
    pub doc: Option<String>,
    pub name: Ident,
    pub params: Vec<Param>,
    pub outputs: Vec<OutputDecl>,
    /// Constraints of the `where` clause, as expressions (comparisons of dims).
    pub constraints: Vec<Expr>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub kind: ParamKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// `name: TYPE` or `name: inout TYPE`.
    Value { inout: bool, ty: TypeExpr },
    /// `name: dim`.
    Dim,
}

/// `bf16[B, H, S, D]` or a bare `f32`. The element type is kept as written (checked by lowering).
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub elem: Ident,
    /// `None` for a scalar type; the dims are expressions (names, integers, `+ - * /`, parentheses).
    pub shape: Option<Vec<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputDecl {
    pub name: Ident,
    pub ty: TypeExpr,
    pub span: Span,
}

/// `fn NAME(PARAMS) { BODY }`: the body ends in a `return`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub doc: Option<String>,
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub body: Block,
    pub span: Span,
}

/// `x`, `x: bf16[N]`, or (an extension for the standard library) `axis = -1`, a parameter with a default
/// that callers may also pass by name.
#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

/// A statement, with the attributes written before it. `span` covers the statement without its attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub attrs: Vec<Attr>,
    pub kind: StmtKind,
    pub span: Span,
}

/// An attribute before a statement: `#[unfused]`, `#[unfused()]` (no arguments), `#[tile(t: 64, d: 128)]`.
/// The parser accepts any name and named arguments; lowering checks them (schedule hints).
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub name: Ident,
    pub args: Vec<NamedArg>,
    /// From `#` to `]`.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `let x = e;`, `let x: bf16 = e;`, `let x[i, j in 0..N] = e;`, `let (a, _) = e;`
    Let { target: LetTarget, ty: Option<Ident>, value: Expr },
    /// `x = e;` or `x[i, j] = e;`
    Assign { name: Ident, indices: Option<Vec<IndexBinder>>, value: Expr },
    /// `for i in LO..HI { ... }`
    For { var: Ident, lo: Expr, hi: Expr, body: Block },
    /// `return e;`
    Return(Expr),
    /// A statement the parser could not read; its error has been reported.
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LetTarget {
    Name(Ident),
    Indexed(Ident, Vec<IndexBinder>),
    /// `(a, _, c)`: `None` for `_`.
    Tuple(Vec<Option<Ident>>, Span),
}

/// `i` or `i in LO..HI` (an index on the left of index notation, or a reduction variable).
#[derive(Clone, Debug, PartialEq)]
pub struct IndexBinder {
    pub name: Ident,
    pub range: Option<(Expr, Expr)>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    MatMul,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::MatMul => "@",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NamedArg {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// An integer literal (fits in i64; the lexer reports larger ones).
    Int(i64),
    /// A float literal, as written (`0.5`, `1e-6`).
    Float(f64),
    Bool(bool),
    /// `inf`
    Inf,
    Name(Ident),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `f(a, b, axis: -1)`; also `where(c, a, b)`, casts `f32(x)`, and every builtin.
    Call {
        callee: Ident,
        args: Vec<Expr>,
        named: Vec<NamedArg>,
    },
    /// `sum[k](e)`, `max[r, i](e)`, `min[r in 0..R](e)`.
    Reduce {
        op: Ident,
        binders: Vec<IndexBinder>,
        body: Box<Expr>,
    },
    /// `x[e1, e2]`
    Index {
        base: Box<Expr>,
        indices: Vec<Expr>,
    },
    /// `[a, b, c]`: a list (a permutation, a reshape's dims).
    List(Vec<Expr>),
    /// `(a, b)`: a tuple (a fn's result).
    Tuple(Vec<Expr>),
    /// An expression the parser could not read; its error has been reported.
    Error,
}
