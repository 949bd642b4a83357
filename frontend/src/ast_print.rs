//! Prints an AST back as `.ker` text in a canonical form: 4-space indentation, one statement per line (after
//! its attributes, on the same line), and every binary operation in parentheses so the text shows how it parsed.
//! This is `kc build --emit ast`.
//! The output of a parsed module re-parses to the same AST (spans aside).

use crate::ast::*;
use std::fmt::Write;

/// The canonical text of a module; items are separated by a blank line.
pub fn print_module(m: &Module) -> String {
    let mut out = String::new();
    for (i, item) in m.items.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        print_item(&mut out, item);
    }
    out
}

/// The canonical text of one expression.
pub fn print_expr(e: &Expr) -> String {
    let mut out = String::new();
    expr(&mut out, e);
    out
}

fn print_item(out: &mut String, item: &Item) {
    match item {
        Item::Use { path, .. } => {
            let _ = writeln!(out, "use \"{path}\";");
        }
        Item::Kernel(k) => {
            doc(out, &k.doc);
            let _ = write!(out, "kernel {}(", k.name.name);
            for (i, p) in k.params.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&p.name.name);
                out.push_str(": ");
                match &p.kind {
                    ParamKind::Dim => out.push_str("dim"),
                    ParamKind::Value { inout, ty } => {
                        if *inout {
                            out.push_str("inout ");
                        }
                        type_expr(out, ty);
                    }
                }
            }
            out.push(')');
            match k.outputs.as_slice() {
                [] => {}
                [o] => {
                    out.push_str(" -> ");
                    output(out, o);
                }
                outs => {
                    out.push_str(" -> (");
                    for (i, o) in outs.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        output(out, o);
                    }
                    out.push(')');
                }
            }
            if !k.constraints.is_empty() {
                out.push_str(" where ");
                comma(out, &k.constraints);
            }
            out.push(' ');
            block(out, &k.body, 0);
            out.push('\n');
        }
        Item::Fn(f) => {
            doc(out, &f.doc);
            let _ = write!(out, "fn {}(", f.name.name);
            for (i, p) in f.params.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&p.name.name);
                if let Some(ty) = &p.ty {
                    out.push_str(": ");
                    type_expr(out, ty);
                }
                if let Some(d) = &p.default {
                    out.push_str(" = ");
                    expr(out, d);
                }
            }
            out.push_str(") ");
            block(out, &f.body, 0);
            out.push('\n');
        }
    }
}

fn doc(out: &mut String, doc: &Option<String>) {
    if let Some(text) = doc {
        for line in text.split('\n') {
            if line.is_empty() {
                out.push_str("///\n");
            } else {
                let _ = writeln!(out, "/// {line}");
            }
        }
    }
}

fn output(out: &mut String, o: &OutputDecl) {
    out.push_str(&o.name.name);
    out.push_str(": ");
    type_expr(out, &o.ty);
}

fn type_expr(out: &mut String, t: &TypeExpr) {
    out.push_str(&t.elem.name);
    if let Some(dims) = &t.shape {
        out.push('[');
        comma(out, dims);
        out.push(']');
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("    ");
    }
}

/// `{`, the statements one level deeper, and `}` at `level` (no newline after the `}`).
fn block(out: &mut String, b: &Block, level: usize) {
    out.push_str("{\n");
    for s in &b.stmts {
        stmt(out, s, level + 1);
    }
    indent(out, level);
    out.push('}');
}

fn stmt(out: &mut String, s: &Stmt, level: usize) {
    indent(out, level);
    for a in &s.attrs {
        attr(out, a);
        out.push(' ');
    }
    match &s.kind {
        StmtKind::Let { target, ty, value } => {
            out.push_str("let ");
            match target {
                LetTarget::Name(n) => out.push_str(&n.name),
                LetTarget::Indexed(n, binders) => {
                    out.push_str(&n.name);
                    index_binders(out, binders);
                }
                LetTarget::Tuple(names, _) => {
                    out.push('(');
                    for (i, n) in names.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(n.as_ref().map_or("_", |n| n.name.as_str()));
                    }
                    out.push(')');
                }
            }
            if let Some(ty) = ty {
                out.push_str(": ");
                out.push_str(&ty.name);
            }
            out.push_str(" = ");
            expr(out, value);
            out.push_str(";\n");
        }
        StmtKind::Assign { name, indices, value } => {
            out.push_str(&name.name);
            if let Some(binders) = indices {
                index_binders(out, binders);
            }
            out.push_str(" = ");
            expr(out, value);
            out.push_str(";\n");
        }
        StmtKind::For { var, lo, hi, body } => {
            let _ = write!(out, "for {} in ", var.name);
            expr(out, lo);
            out.push_str("..");
            expr(out, hi);
            out.push(' ');
            block(out, body, level);
            out.push('\n');
        }
        StmtKind::Return(e) => {
            out.push_str("return ");
            expr(out, e);
            out.push_str(";\n");
        }
        StmtKind::Error => out.push_str("<error>;\n"),
    }
}

/// `#[name]`, or `#[name(a: 1, b: 2)]` (an attribute with no arguments prints without parentheses).
fn attr(out: &mut String, a: &Attr) {
    out.push_str("#[");
    out.push_str(&a.name.name);
    if !a.args.is_empty() {
        out.push('(');
        for (i, n) in a.args.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&n.name.name);
            out.push_str(": ");
            expr(out, &n.value);
        }
        out.push(')');
    }
    out.push(']');
}

fn index_binders(out: &mut String, binders: &[IndexBinder]) {
    out.push('[');
    for (i, b) in binders.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        binder(out, b);
    }
    out.push(']');
}

fn binder(out: &mut String, b: &IndexBinder) {
    out.push_str(&b.name.name);
    if let Some((lo, hi)) = &b.range {
        out.push_str(" in ");
        expr(out, lo);
        out.push_str("..");
        expr(out, hi);
    }
}

fn comma(out: &mut String, es: &[Expr]) {
    for (i, e) in es.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        expr(out, e);
    }
}

/// A float literal that lexes back to the same value: always with a `.` or an exponent.
fn float(out: &mut String, v: f64) {
    if v.is_infinite() && v > 0.0 {
        out.push_str("inf");
        return;
    }
    let s = format!("{v:?}");
    out.push_str(&s);
    if !s.contains(['.', 'e', 'E', 'N', 'i']) {
        out.push_str(".0");
    }
}

fn expr(out: &mut String, e: &Expr) {
    match &e.kind {
        ExprKind::Int(v) => {
            let _ = write!(out, "{v}");
        }
        ExprKind::Float(v) => float(out, *v),
        ExprKind::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        ExprKind::Inf => out.push_str("inf"),
        ExprKind::Name(n) => out.push_str(&n.name),
        ExprKind::Unary(op, inner) => {
            out.push_str(match op {
                UnaryOp::Neg => "-",
                UnaryOp::Not => "!",
            });
            expr(out, inner);
        }
        ExprKind::Binary(op, a, b) => {
            out.push('(');
            expr(out, a);
            let _ = write!(out, " {} ", op.symbol());
            expr(out, b);
            out.push(')');
        }
        ExprKind::Call { callee, args, named } => {
            out.push_str(&callee.name);
            out.push('(');
            comma(out, args);
            for (i, n) in named.iter().enumerate() {
                if i > 0 || !args.is_empty() {
                    out.push_str(", ");
                }
                out.push_str(&n.name.name);
                out.push_str(": ");
                expr(out, &n.value);
            }
            out.push(')');
        }
        ExprKind::Reduce { op, binders, body } => {
            out.push_str(&op.name);
            index_binders(out, binders);
            out.push('(');
            expr(out, body);
            out.push(')');
        }
        ExprKind::Index { base, indices } => {
            // A unary base needs parentheses: `-x[i]` reads as `-(x[i])`.
            if matches!(base.kind, ExprKind::Unary(..)) {
                out.push('(');
                expr(out, base);
                out.push(')');
            } else {
                expr(out, base);
            }
            out.push('[');
            comma(out, indices);
            out.push(']');
        }
        ExprKind::List(items) => {
            out.push('[');
            comma(out, items);
            out.push(']');
        }
        ExprKind::Tuple(items) => {
            out.push('(');
            comma(out, items);
            if items.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        ExprKind::Error => out.push_str("<error>"),
    }
}
