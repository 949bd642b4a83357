//! Schedule hints: the attributes written before a statement (`#[unfused]`, `#[tile(t: 64, d: 128)]`).
//!
//! [`Lowerer::read_hints`] checks a statement's attributes before it is lowered: where they stand (a `let`
//! of one name or in index notation, or an assignment; not a `for`, a `return` or a destructuring `let`),
//! their names (`E0604`) and their arguments (`E0605`). Once the statement is lowered,
//! [`Lowerer::attach_hints`] attaches each hint to the node the statement binds (`Graph::hints`).
//!
//! A tile hint names the axes of the statement's result: in index notation, the indices on the left
//! (`#[tile(t: 64)] y[t, d] = ...`); otherwise the dim symbols of the result's shape
//! (`#[tile(N: 1024)] m = ...` with `m: f32[N]`). An index is stored as the name of the node's axis at its
//! position (the node may be an existing one, with axes of other names), a dim symbol as written.

use super::{Lowerer, StmtBound};
use crate::ast::{self, ExprKind as A, LetTarget, StmtKind};
use kc_ir::{Code, Diagnostic, Hint, HintKind, NodeKind, Span, ValueId};

/// The schedule hints kc knows.
const KNOWN: &[&str] = &["unfused", "tile"];

/// A hint that passed the checks that need no lowering.
#[derive(Clone, Debug)]
pub(crate) struct HintReq {
    kind: Req,
    /// The attribute, `#` to `]`.
    span: Span,
}

#[derive(Clone, Debug)]
enum Req {
    Unfused,
    /// Each axis as written, its size, and the span of its name.
    Tile(Vec<(String, u64, Span)>),
}

/// The span of `name: value`.
fn arg_span(a: &ast::NamedArg) -> Span {
    a.name.span.to(a.value.span)
}

/// `` `a` ``, `` `a` or `b` ``, `` `a`, `b` and `c` `` (`joiner` is `or` or `and`).
fn list(names: &[String], joiner: &str) -> String {
    match names {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => {
            format!("{} {joiner} `{last}`", init.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
        }
    }
}

impl Lowerer<'_> {
    /// Checks the attributes of `s` and returns its valid hints (none if the statement cannot carry them).
    /// Tile axes in index notation are checked here, against the indices on the left.
    pub(crate) fn read_hints(&mut self, s: &ast::Stmt) -> Vec<HintReq> {
        if s.attrs.is_empty() {
            return Vec::new();
        }
        let keyword = |n: usize| Span { end: s.span.start.saturating_add(n as u32).min(s.span.end), ..s.span };
        let misplaced = match &s.kind {
            StmtKind::For { .. } => Some((
                "a `for` loop",
                keyword(3),
                "put the hint on a statement of the loop body: it applies to that statement's value in every \
                 iteration",
            )),
            StmtKind::Return(_) => Some((
                "a `return`",
                keyword(6),
                "bind the value with a hint first: `#[unfused] let r = ...; return r;`",
            )),
            StmtKind::Let { target: LetTarget::Tuple(_, tspan), .. } => Some((
                "a destructuring `let`, which binds several values",
                *tspan,
                "bind the part you mean again, with the hint: `#[unfused] let a2 = a;` applies to the value of `a`",
            )),
            StmtKind::Error => return Vec::new(),
            StmtKind::Let { .. } | StmtKind::Assign { .. } => None,
        };
        // The indices of index notation, which name the axes of a tile hint.
        let indices: Option<(&str, &[ast::IndexBinder])> = match &s.kind {
            StmtKind::Let { target: LetTarget::Indexed(id, b), .. } => Some((&id.name, b)),
            StmtKind::Assign { name, indices: Some(b), .. } => Some((&name.name, b)),
            _ => None,
        };
        let mut out: Vec<HintReq> = Vec::new();
        let mut seen: Vec<(&str, Span)> = Vec::new();
        for a in &s.attrs {
            let name = a.name.name.as_str();
            if !KNOWN.contains(&name) {
                let mut d =
                    Diagnostic::error(Code::UnknownHint, a.name.span, format!("unknown schedule hint `{name}`"))
                        .with_label("kc does not know this hint")
                        .with_note("the schedule hints are `#[unfused]` and `#[tile(AXIS: SIZE, ...)]`");
                if let Some(sug) = super::suggest(name, KNOWN.iter().copied()) {
                    d = d.with_help(format!("did you mean `{sug}`?"));
                }
                self.err(d);
                continue;
            }
            if let Some((what, at, help)) = misplaced {
                self.err(
                    Diagnostic::error(Code::BadHint, a.span, format!("a schedule hint cannot apply to {what}"))
                        .with_label(format!("`#[{name}]` needs one value to apply to"))
                        .with_secondary(at, "not a statement that binds one value")
                        .with_help(help),
                );
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                self.err(
                    Diagnostic::error(Code::BadHint, a.span, format!("`#[{name}]` is given twice on this statement"))
                        .with_label("given again here")
                        .with_secondary(*first, "first given here")
                        .with_help(if name == "tile" {
                            "list every axis in one hint: `#[tile(t: 64, d: 128)]`"
                        } else {
                            "remove one of them"
                        }),
                );
                continue;
            }
            seen.push((name, a.span));
            match name {
                "unfused" => {
                    if let Some(first) = a.args.first() {
                        let all = a.args.iter().map(arg_span).fold(arg_span(first), Span::to);
                        self.err(
                            Diagnostic::error(Code::BadHint, all, "`#[unfused]` takes no arguments")
                                .with_label("remove these arguments")
                                .with_help("write `#[unfused]`: it keeps the value out of fusion, in its own group"),
                        );
                        continue;
                    }
                    out.push(HintReq { kind: Req::Unfused, span: a.span });
                }
                _ => {
                    if let Some(t) = self.read_tile(a, indices) {
                        out.push(HintReq { kind: Req::Tile(t), span: a.span });
                    }
                }
            }
        }
        out
    }

    /// The axes and sizes of `#[tile(...)]`; `None` (after reporting) if any is wrong.
    fn read_tile(
        &mut self,
        a: &ast::Attr,
        indices: Option<(&str, &[ast::IndexBinder])>,
    ) -> Option<Vec<(String, u64, Span)>> {
        if a.args.is_empty() {
            self.err(
                Diagnostic::error(Code::BadHint, a.span, "`#[tile]` needs at least one axis and its tile size")
                    .with_label("no axis given")
                    .with_help("name an axis of the result and its size: `#[tile(t: 64)]`"),
            );
            return None;
        }
        let mut ok = true;
        let mut out: Vec<(String, u64, Span)> = Vec::new();
        let mut seen: Vec<(&str, Span)> = Vec::new();
        for arg in &a.args {
            let axis = &arg.name.name;
            if let Some((_, first)) = seen.iter().find(|(n, _)| n == axis) {
                self.err(
                    Diagnostic::error(Code::BadHint, arg_span(arg), format!("axis `{axis}` is tiled twice"))
                        .with_label("tiled again here")
                        .with_secondary(*first, "first tiled here")
                        .with_help("give each axis one tile size"),
                );
                ok = false;
                continue;
            }
            seen.push((axis, arg_span(arg)));
            if let Some((target, binders)) = indices {
                if !binders.iter().any(|b| b.name.name == *axis) {
                    let names: Vec<String> = binders.iter().map(|b| b.name.name.clone()).collect();
                    let mut d = Diagnostic::error(
                        Code::BadHint,
                        arg.name.span,
                        format!("`{axis}` is not an index of `{target}[{}]`", names.join(", ")),
                    )
                    .with_label("not an index on the left");
                    d = if names.is_empty() {
                        d.with_note(format!("`{target}` is a scalar: it has no axes to tile"))
                    } else {
                        d.with_help(format!(
                            "in index notation, a tile hint names the indices on the left: {}",
                            list(&names, "or")
                        ))
                    };
                    self.err(d);
                    ok = false;
                }
            }
            let size = match &arg.value.kind {
                A::Int(v) if *v > 0 => Some(*v as u64),
                A::Int(_) => {
                    self.err(
                        Diagnostic::error(
                            Code::BadHint,
                            arg.value.span,
                            format!("the tile size of `{axis}` must be at least 1"),
                        )
                        .with_label("not a tile size"),
                    );
                    None
                }
                A::Unary(ast::UnaryOp::Neg, inner) if matches!(inner.kind, A::Int(_)) => {
                    self.err(
                        Diagnostic::error(
                            Code::BadHint,
                            arg.value.span,
                            format!("the tile size of `{axis}` must be at least 1"),
                        )
                        .with_label("a negative size"),
                    );
                    None
                }
                A::Error => None,
                _ => {
                    self.err(
                        Diagnostic::error(
                            Code::BadHint,
                            arg.value.span,
                            format!("the tile size of `{axis}` must be an integer literal"),
                        )
                        .with_label("not an integer literal")
                        .with_help(format!("write the size as a number: `{axis}: 64`")),
                    );
                    None
                }
            };
            match size {
                Some(v) => out.push((axis.clone(), v, arg.name.span)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Attaches the hints of a statement to the node it bound (`target` is the name it binds; `indices` the
    /// indices on its left, in index notation).
    pub(crate) fn attach_hints(
        &mut self,
        hints: Vec<HintReq>,
        bound: StmtBound,
        target: &ast::Ident,
        indices: Option<&[ast::IndexBinder]>,
    ) {
        if hints.is_empty() {
            return;
        }
        let v = match bound {
            StmtBound::Node(v) => v,
            StmtBound::Failed => return,
            StmtBound::Dim => {
                for h in &hints {
                    self.err(
                        Diagnostic::error(
                            Code::BadHint,
                            h.span,
                            format!("a schedule hint cannot apply to `{}`: it is a dim, not a tensor", target.name),
                        )
                        .with_label("nothing is computed or stored for a dim")
                        .with_help("remove the hint"),
                    );
                }
                return;
            }
            StmtBound::Lazy => {
                for h in &hints {
                    let mut d = Diagnostic::error(
                        Code::BadHint,
                        h.span,
                        format!("a schedule hint cannot apply to `{}` in this call", target.name),
                    )
                    .with_label("this value is never stored")
                    .with_note(format!(
                        "the fn is called inside index notation, so `{}` is computed element by element, as part of \
                         the caller's statement",
                        target.name
                    ));
                    if let Some(site) = self.call_sites.last().copied() {
                        d = d.with_secondary(site, "called here, inside index notation");
                    }
                    self.err(d.with_help("put the hint on the caller's statement"));
                }
                return;
            }
        };
        let Some(node) = self.nodes.get(v.index()) else { return };
        let shape = node.shape.clone();
        // The name of each axis of the node: its index variable, or (a node with none) its dim symbol.
        let axis_names: Vec<Option<String>> = (0..shape.len())
            .map(|k| match &node.kind {
                NodeKind::Compute { vars, .. } => vars.get(k).map(|iv| iv.name.clone()),
                _ => shape[k].as_sym().map(str::to_string),
            })
            .collect();
        let node_name = node.name.clone();
        let is_param = matches!(node.kind, NodeKind::Param(_));
        for h in hints {
            let kind = match h.kind {
                Req::Unfused => HintKind::Unfused,
                Req::Tile(axes) => {
                    let mut pairs = Vec::with_capacity(axes.len());
                    let mut ok = true;
                    for (axis, size, span) in axes {
                        match indices {
                            Some(binders) => {
                                // The node's name for the axis, if no other axis of the node has it.
                                let k = binders.iter().position(|b| b.name.name == axis);
                                let name = k.and_then(|k| axis_names.get(k).cloned().flatten()).filter(|n| {
                                    axis_names.iter().filter(|m| m.as_deref() == Some(n.as_str())).count() == 1
                                });
                                match name {
                                    Some(n) => pairs.push((n, size)),
                                    None => {
                                        let what = match &node_name {
                                            Some(n) => format!("`{n}` (%{})", v.0),
                                            None => format!("%{}", v.0),
                                        };
                                        let (origin, help) = if is_param {
                                            ("a parameter", "tile the statements that compute from it")
                                        } else {
                                            (
                                                "computed by an earlier statement",
                                                "put the hint where the value is computed",
                                            )
                                        };
                                        self.err(
                                            Diagnostic::error(
                                                Code::BadHint,
                                                span,
                                                format!("axis `{axis}` of `{}` cannot be tiled here", target.name),
                                            )
                                            .with_label("this axis has no name of its own in the value bound here")
                                            .with_note(format!(
                                                "the value of `{}` is {what} itself, {origin}, and its axes are not \
                                                 named by these indices",
                                                target.name
                                            ))
                                            .with_help(help),
                                        );
                                        ok = false;
                                    }
                                }
                            }
                            None => {
                                let dims: Vec<String> =
                                    shape.iter().filter_map(|d| d.as_sym().map(str::to_string)).collect();
                                if dims.contains(&axis) {
                                    pairs.push((axis, size));
                                    continue;
                                }
                                let shown = super::tval::fmt_shape(&shape);
                                let mut d = Diagnostic::error(
                                    Code::BadHint,
                                    span,
                                    format!("`{axis}` is not an axis of `{}`", target.name),
                                );
                                d = if shape.is_empty() {
                                    d.with_label("not an axis")
                                        .with_note(format!("`{}` is a scalar: it has no axes to tile", target.name))
                                } else if dims.is_empty() {
                                    d.with_label("not an axis").with_note(format!(
                                        "`{}` has shape {shown}, and none of its dims is a single dim symbol",
                                        target.name
                                    ))
                                } else {
                                    let mut unique: Vec<String> = Vec::new();
                                    for d in &dims {
                                        if !unique.contains(d) {
                                            unique.push(d.clone());
                                        }
                                    }
                                    d.with_label(if unique.len() == 1 {
                                        format!("the axis of `{}` is {}", target.name, list(&unique, "and"))
                                    } else {
                                        format!("the axes of `{}` are {}", target.name, list(&unique, "and"))
                                    })
                                    .with_note(format!("`{}` has shape {shown}", target.name))
                                };
                                if !shape.is_empty() {
                                    d = d.with_help(format!(
                                        "outside index notation, a tile hint names the dims of the result's shape; \
                                         to name axes by index, write the statement in index notation: \
                                         `{}[i, ...] = ...;`",
                                        target.name
                                    ));
                                }
                                self.err(d);
                                ok = false;
                            }
                        }
                    }
                    if !ok {
                        continue;
                    }
                    HintKind::Tile(pairs)
                }
            };
            self.push_hint(v, kind, h.span, &target.name);
        }
    }

    /// Adds a hint to a node: one the node already has (from an unrolled loop, or another statement bound
    /// to the same value) is not repeated; a second, different tile hint is an error.
    fn push_hint(&mut self, v: ValueId, kind: HintKind, span: Span, target: &str) {
        let hints = &self.graph.hints;
        if hints.iter().any(|h| h.node == v && h.kind == kind) {
            return;
        }
        if matches!(kind, HintKind::Tile(_)) {
            if let Some(prev) = hints.iter().find(|h| h.node == v && matches!(h.kind, HintKind::Tile(_))) {
                let prev = prev.span;
                self.err(
                    Diagnostic::error(
                        Code::BadHint,
                        span,
                        format!("the value of `{target}` already has different tile sizes"),
                    )
                    .with_label("a second tile hint for the same value")
                    .with_secondary(prev, "tiled here first")
                    .with_note("the statements bind the same value, which is computed once")
                    .with_help("give the value one tile hint"),
                );
                return;
            }
        }
        self.graph.hints.push(Hint { node: v, kind, span });
    }
}
