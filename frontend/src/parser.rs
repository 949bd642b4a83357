//! The `.ker` parser: a facade over the lalrpop-generated grammar (`grammar.lalrpop`); the only module that
//! names lalrpop.
//!
//! [`parse`] never fails and never panics: syntax errors are recovered from (a statement skips to its `;`,
//! a block to its `}`, a parameter or argument list to its `)`, an item to the next `kernel`/`fn`/`use`) and
//! reported as diagnostics, and the module holds every item that could be read.
//!
//! Limits, checked on the tokens before parsing so that no later (recursive) pass can overflow the stack:
//! brackets nested deeper than [`MAX_NESTING`], or one statement with more than [`MAX_STATEMENT_OPS`]
//! operators and brackets, give `E0012` and the item that holds them is left out. A file reports at most
//! [`MAX_DIAGNOSTICS`] diagnostics.

use crate::ast::{Attr, Expr, ExprKind, Ident, IndexBinder, Module, NamedArg};
use crate::lexer::{self, Token};
use kc_ir::{Code, Diagnostic, FileId, Span};
use lalrpop_util::{ErrorRecovery, ParseError};
use std::cell::RefCell;

lalrpop_util::lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused, unused_qualifications, missing_docs)]
    grammar
);

/// The deepest nesting of `(`, `[` and `{` the parser accepts.
pub const MAX_NESTING: usize = 128;
/// The most operators and opening brackets one statement (or one item header) may hold; this bounds the
/// depth of every expression tree.
pub const MAX_STATEMENT_OPS: usize = 512;
/// The most diagnostics reported for one file.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Parses one file. Returns the items it could read and every lexical and syntax error (sorted by position).
pub fn parse(file: FileId, src: &str) -> (Module, Vec<Diagnostic>) {
    let (tokens, mut diags) = lexer::lex(file, src);
    let tokens = limit_nesting(file, tokens, &mut diags);
    let ctx = Ctx { file, src, pending: RefCell::new(Vec::new()) };
    let result = grammar::ModuleParser::new().parse(&ctx, tokens.into_iter().map(Ok::<_, Never>));
    let mut pending = ctx.pending.take();
    let items = match result {
        Ok(items) => items,
        Err(e) => {
            pending.push(Pending::Recovered(ErrorRecovery { error: e, dropped_tokens: Vec::new() }));
            Vec::new()
        }
    };
    for p in pending {
        match p {
            Pending::Diag(d) => diags.push(d),
            Pending::Recovered(r) => {
                if let Some(d) = ctx.syntax_error(r.error) {
                    diags.push(d);
                }
            }
        }
    }
    diags.sort_by_key(|d| (d.primary.span.file != file, d.primary.span.start, d.primary.span.end));
    if diags.len() > MAX_DIAGNOSTICS {
        let omitted = diags.len() - MAX_DIAGNOSTICS;
        diags.truncate(MAX_DIAGNOSTICS);
        if let Some(last) = diags.last_mut() {
            last.notes.push(format!(
                "note: {omitted} more error{} in this file not shown",
                if omitted == 1 { "" } else { "s" }
            ));
        }
    }
    (Module { items }, diags)
}

/// The error type of the token stream: the lexer never fails (it reports and emits [`Token::Error`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Never {}

/// A call argument as written: positional or `name: value`.
pub(crate) enum Arg {
    Pos(Expr),
    Named(Ident, Expr),
}

/// One entry between the brackets of `x[...]` or `sum[...](...)`.
pub(crate) enum BItem {
    Expr(Expr),
    /// `name in LO..HI`, with its span.
    Ranged(Ident, Expr, Expr, Span),
}

enum Pending {
    Recovered(ErrorRecovery<usize, Token, Never>),
    Diag(Diagnostic),
}

/// What the grammar's actions see: the file id, the source, and where errors are collected.
pub(crate) struct Ctx<'s> {
    file: FileId,
    src: &'s str,
    pending: RefCell<Vec<Pending>>,
}

impl Ctx<'_> {
    pub(crate) fn span(&self, l: usize, r: usize) -> Span {
        Span::new(self.file, l, r.max(l))
    }

    pub(crate) fn recovered(&self, e: ErrorRecovery<usize, Token, Never>) {
        self.pending.borrow_mut().push(Pending::Recovered(e));
    }

    fn diag(&self, d: Diagnostic) {
        self.pending.borrow_mut().push(Pending::Diag(d));
    }

    pub(crate) fn binary(&self, op: crate::ast::BinaryOp, a: Expr, b: Expr, l: usize, r: usize) -> Expr {
        Expr { kind: ExprKind::Binary(op, Box::new(a), Box::new(b)), span: self.span(l, r) }
    }

    /// `base[items]`: an element access; a ranged item is an error here.
    pub(crate) fn index(&self, base: Expr, items: Vec<BItem>, l: usize, r: usize) -> Expr {
        let indices = items
            .into_iter()
            .map(|it| match it {
                BItem::Expr(e) => e,
                BItem::Ranged(name, _, _, span) => {
                    self.diag(
                        Diagnostic::error(
                            Code::UnexpectedToken,
                            span,
                            format!("a range `{} in LO..HI` cannot appear in an element access", name.name),
                        )
                        .with_label("a range is not an index")
                        .with_help(
                            "ranges are written on the left of index notation (`let x[i in 0..N] = ...;`) \
                             or in a reduction (`sum[k in 0..K](...)`)",
                        ),
                    );
                    Expr { kind: ExprKind::Error, span }
                }
            })
            .collect();
        Expr { kind: ExprKind::Index { base: Box::new(base), indices }, span: self.span(l, r) }
    }

    /// `op[binders](body)`: a reduction; `op` must be a name and each binder `i` or `i in LO..HI`.
    pub(crate) fn reduce(&self, base: Expr, items: Vec<BItem>, body: Expr, l: usize, r: usize) -> Expr {
        let span = self.span(l, r);
        let op = match base.kind {
            ExprKind::Name(id) => id,
            _ => {
                self.diag(
                    Diagnostic::error(Code::UnexpectedToken, base.span, "only a name can start a reduction")
                        .with_label("expected a reduction name such as `sum`, `max` or `min`")
                        .with_help("a reduction is written `sum[k](EXPR)`"),
                );
                return Expr { kind: ExprKind::Error, span };
            }
        };
        let mut binders = Vec::with_capacity(items.len());
        for it in items {
            match it {
                BItem::Expr(Expr { kind: ExprKind::Name(name), span }) => {
                    binders.push(IndexBinder { name, range: None, span })
                }
                BItem::Expr(e) => self.diag(
                    Diagnostic::error(
                        Code::UnexpectedToken,
                        e.span,
                        "a reduction index must be a name or `name in LO..HI`",
                    )
                    .with_label("not an index variable")
                    .with_help(format!("write `{}[k](...)`, with `k` an index of the expression", op.name)),
                ),
                BItem::Ranged(name, lo, hi, span) => binders.push(IndexBinder { name, range: Some((lo, hi)), span }),
            }
        }
        Expr { kind: ExprKind::Reduce { op, binders, body: Box::new(body) }, span }
    }

    /// `callee(args)`: splits positional and named arguments; a positional one after a named one is `E0203`.
    pub(crate) fn call(&self, callee: Ident, args: Vec<Arg>, l: usize, r: usize) -> Expr {
        let mut pos = Vec::new();
        let mut named: Vec<NamedArg> = Vec::new();
        for a in args {
            match a {
                Arg::Pos(e) => {
                    if let Some(first) = named.first() {
                        self.diag(
                            Diagnostic::error(
                                Code::PositionalAfterNamed,
                                e.span,
                                "a positional argument after a named one",
                            )
                            .with_label("positional argument")
                            .with_secondary(first.name.span, "named argument given before it")
                            .with_help("put the positional arguments first: `f(a, b, axis: -1)`"),
                        );
                    }
                    pos.push(e);
                }
                Arg::Named(name, value) => named.push(NamedArg { name, value }),
            }
        }
        Expr { kind: ExprKind::Call { callee, args: pos, named }, span: self.span(l, r) }
    }

    /// `#[name(args)]`: an attribute's arguments are named; a positional one is reported (`E0605`) and dropped.
    pub(crate) fn attr(&self, name: Ident, args: Vec<Arg>, l: usize, r: usize) -> Attr {
        let mut named = Vec::new();
        for a in args {
            match a {
                Arg::Named(n, value) => named.push(NamedArg { name: n, value }),
                Arg::Pos(e) => self.diag(
                    Diagnostic::error(Code::BadHint, e.span, format!("the arguments of `#[{}]` are named", name.name))
                        .with_label("an argument without a name")
                        .with_help("name the axis it applies to: `#[tile(t: 64)]`"),
                ),
            }
        }
        Attr { name, args: named, span: self.span(l, r) }
    }

    /// The source text of a token, shortened for a message.
    fn token_text(&self, l: usize, r: usize, tok: &Token) -> String {
        match tok {
            Token::DocComment(_) => "a doc comment".to_string(),
            Token::Str(_) | Token::Error => {
                let text = self.src.get(l..r).unwrap_or("");
                let mut shown: String = text.chars().take(30).collect();
                if text.chars().count() > 30 {
                    shown.push('…');
                }
                format!("`{shown}`")
            }
            other => other.describe(),
        }
    }

    /// Converts a lalrpop error to a diagnostic (`None` for an error at a token the lexer already reported).
    fn syntax_error(&self, e: ParseError<usize, Token, Never>) -> Option<Diagnostic> {
        match e {
            ParseError::UnrecognizedToken { token: (l, tok, r), expected } => {
                if tok == Token::Error {
                    return None;
                }
                let found = self.token_text(l, r, &tok);
                let want = describe_expected(&expected);
                let (msg, label) = match &want {
                    Some(w) => (format!("expected {w}, found {found}"), format!("expected {w}")),
                    None => (format!("unexpected {found}"), "unexpected token".to_string()),
                };
                let mut d = Diagnostic::error(Code::UnexpectedToken, self.span(l, r), msg).with_label(label);
                let expects = |t: &str| expected.iter().any(|e| e == t);
                let after_hash = self.src.get(..l).is_some_and(|s| s.trim_end().ends_with('#'));
                if after_hash && expects("\"[\"") {
                    d = d.with_help("`#` starts an attribute such as `#[unfused]`; comments start with `//`");
                } else if tok == Token::Hash && !expects("\"#\"") {
                    d = d.with_help("`#[...]` is an attribute, written before a statement; comments start with `//`");
                } else if !expects("\"}\"")
                    && expects("\"let\"")
                    && self.src.get(..l).is_some_and(|s| s.trim_end().ends_with(']'))
                {
                    d = d.with_help("an attribute such as `#[unfused]` stands before the statement it applies to");
                } else if matches!(
                    tok,
                    Token::Kernel | Token::Fn | Token::Let | Token::Return | Token::For | Token::RBrace
                ) && expects("\";\"")
                {
                    d = d.with_help("a statement ends with `;`: is one missing before this?");
                } else if matches!(tok, Token::Kernel | Token::Fn | Token::Use | Token::DocComment(_))
                    && expects("\"}\"")
                {
                    d = d.with_help("is a `}` missing before this?");
                }
                Some(d)
            }
            ParseError::UnrecognizedEof { location, expected } => {
                let loc = location.min(self.src.len());
                let msg = match describe_expected(&expected) {
                    Some(w) => format!("unexpected end of file, expected {w}"),
                    None => "unexpected end of file".to_string(),
                };
                Some(
                    Diagnostic::error(Code::UnexpectedEof, self.span(loc, loc), msg)
                        .with_label("the file ends here")
                        .with_help("a `(`, `[` or `{` may be missing its closing bracket"),
                )
            }
            ParseError::ExtraToken { token: (l, tok, r) } => {
                let found = self.token_text(l, r, &tok);
                Some(
                    Diagnostic::error(Code::UnexpectedToken, self.span(l, r), format!("unexpected {found}"))
                        .with_label("expected `kernel`, `fn` or `use`"),
                )
            }
            ParseError::InvalidToken { location } => {
                let loc = location.min(self.src.len());
                Some(Diagnostic::error(Code::InvalidToken, self.span(loc, loc), "invalid token"))
            }
            ParseError::User { error } => match error {},
        }
    }
}

/// Terminals that can start an expression, as lalrpop names them.
const EXPR_START: &[&str] =
    &["IDENT", "INT", "FLOAT", "\"true\"", "\"false\"", "\"inf\"", "\"(\"", "\"[\"", "\"-\"", "\"!\"", "\"where\""];
/// Binary operators, as lalrpop names them.
const BINARY_OPS: &[&str] = &[
    "\"||\"", "\"&&\"", "\"==\"", "\"!=\"", "\"<\"", "\"<=\"", "\">\"", "\">=\"", "\"+\"", "\"-\"", "\"*\"", "\"/\"",
    "\"%\"", "\"@\"",
];

/// A readable form of lalrpop's expected-terminal list: "`;`", "`)` or an expression", "one of ...".
fn describe_expected(expected: &[String]) -> Option<String> {
    let has = |t: &str| expected.iter().any(|e| e == t);
    let is_expr = ["IDENT", "INT", "FLOAT", "\"(\"", "\"-\""].iter().all(|t| has(t));
    let is_op = ["\"+\"", "\"*\"", "\"/\"", "\"&&\"", "\"||\""].iter().all(|t| has(t));
    let mut parts: Vec<String> = Vec::new();
    for e in expected {
        let e = e.as_str();
        // Attributes (`#`) may start any statement; listing them would only add noise.
        if e == "BAD" || e == "DOC" || e == "\"#\"" {
            continue;
        }
        if (is_expr && EXPR_START.contains(&e)) || (is_op && (BINARY_OPS.contains(&e) || e == "\"[\"" || e == "\"(\""))
        {
            continue;
        }
        let shown = match e {
            "IDENT" => "a name".to_string(),
            "INT" => "an integer".to_string(),
            "FLOAT" => "a number".to_string(),
            "STR" => "a string literal".to_string(),
            other => {
                let inner = other.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(other);
                format!("`{inner}`")
            }
        };
        if !parts.contains(&shown) {
            parts.push(shown);
        }
    }
    if is_op {
        parts.push("an operator".to_string());
    }
    if is_expr {
        parts.push("an expression".to_string());
    }
    const MAX_SHOWN: usize = 8;
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        n if n <= MAX_SHOWN => {
            let last = parts.pop().unwrap_or_default();
            Some(format!("{} or {last}", parts.join(", ")))
        }
        n => Some(format!("one of {}, ... ({} more)", parts[..MAX_SHOWN].join(", "), n - MAX_SHOWN)),
    }
}

fn is_item_start(t: &Token) -> bool {
    matches!(t, Token::Kernel | Token::Fn | Token::Use | Token::DocComment(_))
}

/// Enforces [`MAX_NESTING`] and [`MAX_STATEMENT_OPS`] on the token stream. An item that breaks a limit gets
/// one `E0012` and is removed (from its `kernel`/`fn`/`use` token, or its doc comment, to the next item's).
fn limit_nesting(
    file: FileId,
    toks: Vec<(usize, Token, usize)>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(usize, Token, usize)> {
    let mut out: Vec<(usize, Token, usize)> = Vec::with_capacity(toks.len());
    let mut item_start = 0usize;
    let mut depth = 0usize;
    let mut ops = 0usize;
    let mut skipping = false;
    for (l, tok, r) in toks {
        if is_item_start(&tok) {
            if !matches!(out.last(), Some((_, Token::DocComment(_), _))) || skipping {
                item_start = out.len();
            }
            skipping = false;
            depth = 0;
            ops = 0;
        }
        if skipping {
            continue;
        }
        match tok {
            Token::LParen | Token::LBracket => {
                depth += 1;
                ops += 1;
            }
            Token::LBrace => {
                depth += 1;
                ops = 0;
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::RBrace => {
                depth = depth.saturating_sub(1);
                ops = 0;
            }
            Token::Semi => ops = 0,
            Token::Plus
            | Token::Minus
            | Token::Star
            | Token::Slash
            | Token::Percent
            | Token::At
            | Token::EqEq
            | Token::NotEq
            | Token::Lt
            | Token::Le
            | Token::Gt
            | Token::Ge
            | Token::AndAnd
            | Token::OrOr
            | Token::Bang => ops += 1,
            _ => {}
        }
        let message = if depth > MAX_NESTING {
            Some(format!("nested deeper than {MAX_NESTING} levels"))
        } else if ops > MAX_STATEMENT_OPS {
            Some(format!(
                "expression too deeply nested: more than {MAX_STATEMENT_OPS} operators and brackets in one statement"
            ))
        } else {
            None
        };
        if let Some(message) = message {
            diags.push(
                Diagnostic::error(Code::TooDeep, Span::new(file, l, r), message)
                    .with_label("the compiler's limit is passed here")
                    .with_help("split the expression with `let` bindings")
                    .with_note("note: the item that holds this was not parsed"),
            );
            out.truncate(item_start);
            skipping = true;
            continue;
        }
        out.push((l, tok, r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::{Item, StmtKind};

    fn parse_ok(src: &str) -> Module {
        let (m, d) = parse(FileId(0), src);
        assert!(d.is_empty(), "unexpected diagnostics for {src:?}: {d:#?}");
        m
    }

    #[test]
    fn small_kernel() {
        let m = parse_ok("kernel k(x: f32[N]) -> y: f32[N] { y[i] = x[i] * 2.0; }");
        assert_eq!(m.items.len(), 1);
        let Item::Kernel(k) = &m.items[0] else { panic!("not a kernel") };
        assert_eq!(k.name.name, "k");
        assert_eq!(k.outputs.len(), 1);
        assert!(matches!(k.body.stmts[0].kind, StmtKind::Assign { .. }));
    }

    #[test]
    fn expected_lists_are_readable() {
        let (_, d) = parse(FileId(0), "kernel k() { let x = ; }");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].message, "expected an expression, found `;`");
        let (_, d) = parse(FileId(0), "kernel k() { let x = a b; }");
        assert_eq!(d[0].message, "expected `;` or an operator, found `b`");
    }
}
