//! Integration tests of the `.ker` lexer, parser, AST printer and diagnostic renderer.

use kc_frontend::ast::*;
use kc_frontend::ast_print::print_module;
use kc_frontend::parser::parse;
use kc_frontend::{render, SourceMap};
use kc_ir::{Code, Diagnostic, FileId};

/// Every kernel of the language contract (`language.md`), verbatim, and a fn with a default parameter.
const CONTRACT: &str = r#"/// Decoupled-weight-decay Adam, one step, updating param, m and v in place.
kernel adamw(
    param: inout f32[N], grad: bf16[N], m: inout f32[N], v: inout f32[N],
    lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: i32,
) {
    m = beta1 * m + (1.0 - beta1) * grad;
    v = beta2 * v + (1.0 - beta2) * grad * grad;
    let m_hat = m / (1.0 - pow(beta1, f32(step)));
    let v_hat = v / (1.0 - pow(beta2, f32(step)));
    param = param * (1.0 - lr * weight_decay) - lr * m_hat / (sqrt(v_hat) + eps);
}

/// Causal attention with grouped KV heads; also returns the log-sum-exp rows the backward pass needs.
kernel attention(q: bf16[B, H, S, D], k: bf16[B, G, T, D], v: bf16[B, G, T, D], scale: f32)
    -> (o: bf16[B, H, S, D], lse: f32[B, H, S])
    where H % G == 0, S <= T
{
    let R = H / G;
    let s[b, h, i, j] = where(j <= i + (T - S),
                              scale * sum[d](q[b, h, i, d] * k[b, h / R, j, d]),
                              -inf);
    lse = logsumexp(s, axis: -1);
    o[b, h, i, d] = sum[j](exp(s[b, h, i, j] - lse[b, h, i]) * v[b, h / R, j, d]);
}

/// RMSNorm forward; keeps the reciprocal RMS for the backward pass.
kernel rmsnorm(x: bf16[T, D], w: bf16[D], eps: f32) -> (y: bf16[T, D], rstd: f32[T]) {
    rstd[t] = rsqrt(sum[d](x[t, d] * x[t, d]) / D + eps);
    y[t, d] = x[t, d] * rstd[t] * w[d];
}

/// RMSNorm backward.
kernel rmsnorm_bwd(x: bf16[T, D], w: bf16[D], rstd: f32[T], dy: bf16[T, D]) -> (dx: bf16[T, D], dw: f32[D]) {
    let c[t] = sum[d](dy[t, d] * w[d] * x[t, d]) / D;
    dx[t, d] = rstd[t] * (dy[t, d] * w[d] - x[t, d] * rstd[t] * rstd[t] * c[t]);
    dw[d] = sum[t](dy[t, d] * x[t, d] * rstd[t]);
}

/// Cross-entropy loss per row and its gradient with respect to the logits, averaged over the rows that count.
/// A negative target marks a row to ignore (a prompt token in fine-tuning).
kernel cross_entropy(logits: bf16[N, V], target: i32[N]) -> (loss: f32[N], dlogits: bf16[N, V]) {
    let n_valid = max(sum(f32(target >= 0)), 1.0);
    let lse = logsumexp(logits, axis: -1);
    loss[n] = where(target[n] >= 0, lse[n] - logits[n, target[n]], 0.0);
    dlogits[n, v] = where(target[n] >= 0, (exp(logits[n, v] - lse[n]) - f32(v == target[n])) / n_valid, 0.0);
}

/// DeepSeek-V3 routing: sigmoid scores; a bias that only steers selection; experts in NG groups, a group
/// scored by its two best experts, the KG best groups kept; top-K experts among them; renormalized weights.
kernel moe_route(x: bf16[T, M], wg: bf16[E, M], bias: f32[E], route_scale: f32)
    -> (idx: i32[T, K], w: f32[T, K])
    where K == 8, NG == 8, KG == 4, E % NG == 0
{
    let s = sigmoid(x @ transpose(wg));                                   // [T, E]
    let sb = s + bias;
    let (top2, _) = topk(reshape(sb, [T, NG, E / NG]), 2, axis: -1);      // [T, NG, 2]
    let (_, groups) = topk(sum(top2, axis: -1), KG, axis: -1);            // [T, KG]
    let keep[t, e in 0..E] = sum[g in 0..KG](f32(groups[t, g] == e / (E / NG))) > 0.0;
    let (_, chosen) = topk(where(keep, sb, -inf), K, axis: -1);
    let sw[t, j] = s[t, chosen[t, j]];
    idx = chosen;
    w = route_scale * sw / sum(sw, axis: -1, keepdim: true);
}

/// Sort the (token, expert) pairs by expert; rows of xs are grouped by expert, offsets bound each group.
kernel moe_permute(x: bf16[T, M], idx: i32[T, K], E: dim)
    -> (xs: bf16[T * K, M], order: i32[T * K], offsets: i32[E + 1])
{
    let flat = reshape(idx, [T * K]);
    order = argsort(flat);
    xs[r, m] = x[order[r] / K, m];
    let c = cumsum(bincount(flat, E), axis: 0);
    offsets[e] = where(e == 0, 0, c[e - 1]);
}

/// The experts' SwiGLU feed-forward on the expert-sorted rows: a grouped matmul.
kernel moe_experts(xs: bf16[R, M], offsets: i32[E + 1], w1: bf16[E, F, M], w3: bf16[E, F, M], w2: bf16[E, M, F])
    -> ys: bf16[R, M]
{
    let e[r in 0..R] = segment(offsets, r);
    let h[r, f] = silu(sum[m](xs[r, m] * w1[e[r], f, m])) * sum[m](xs[r, m] * w3[e[r], f, m]);
    ys[r, m] = sum[f](h[r, f] * w2[e[r], m, f]);
}

/// Weighted sum of each token's K expert outputs.
kernel moe_combine(ys: bf16[T * K, M], order: i32[T * K], w: f32[T, K]) -> y: bf16[T, M] {
    let pos = argsort(order);                  // where each (token, slot) pair went
    y[t, m] = sum[j](w[t, j] * ys[pos[t * K + j], m]);
}

/// Muon's orthogonalization: five Newton-Schulz steps.
kernel muon_orthogonalize(g: bf16[M, N]) -> o: bf16[M, N] where M <= N {
    let x: bf16 = g / (sqrt(sum(g * g)) + 1e-7);
    for step in 0..5 {
        let a: bf16 = x @ transpose(x);
        let b: bf16 = -4.7750 * a + 2.0315 * (a @ a);
        x = 3.4445 * x + b @ x;
    }
    o = x;
}

/// Attention backward: recompute the probabilities from lse; never store [B, H, S, T] in global memory.
kernel attention_bwd(q: bf16[B, H, S, D], k: bf16[B, G, T, D], v: bf16[B, G, T, D],
                     o: bf16[B, H, S, D], dout: bf16[B, H, S, D], lse: f32[B, H, S], scale: f32)
    -> (dq: bf16[B, H, S, D], dk: bf16[B, G, T, D], dv: bf16[B, G, T, D])
    where H % G == 0, S <= T
{
    let R = H / G;
    let delta[b, h, i] = sum[d](dout[b, h, i, d] * o[b, h, i, d]);
    let p[b, h, i, j] = where(j <= i + (T - S),
                              exp(scale * sum[d](q[b, h, i, d] * k[b, h / R, j, d]) - lse[b, h, i]),
                              0.0);
    let dp[b, h, i, j] = sum[d](dout[b, h, i, d] * v[b, h / R, j, d]);
    let ds[b, h, i, j] = p[b, h, i, j] * (dp[b, h, i, j] - delta[b, h, i]);
    dq[b, h, i, d] = scale * sum[j](ds[b, h, i, j] * k[b, h / R, j, d]);
    dk[b, g, j, d] = scale * sum[r in 0..R, i](ds[b, g * R + r, i, j] * q[b, g * R + r, i, d]);
    dv[b, g, j, d] = sum[r in 0..R, i](p[b, g * R + r, i, j] * dout[b, g * R + r, i, d]);
}

/// Softmax with a default axis (the standard library's form).
fn softmax(x, axis = -1) {
    let m = max(x, axis: axis, keepdim: true);
    let e = exp(x - m);
    return e / sum(e, axis: axis, keepdim: true);
}
"#;

/// More syntax: `use`, typed fn parameters, tuples, trailing commas, loops, scalar outputs, literals.
const EXTRAS: &str = r#"
use "lib/common.ker";
use "other.ker";

fn pair(a: f32[N], b: bf16[N, 2],) {
    let t = (a, b,);
    return (a + 1, -b);
}

/// Several doc lines
///
///  with an indented one.
fn one(x) { return x; }

kernel extras(x: bf16[T * K, M], y: i32[E + 1], z: f32[D / 2], s: f32, w: f32[(A + B) * 2],) -> z2: f32
    where K == 8, D % 16 == 0, (A + B) <= 4,
{
    let (a, _, c) = pair(x, y);
    let q[i in 0..T, j] = x[i, j] @ transpose(x, perm: [1, 0],);
    for it in 0..3 {
        for jt in 1..K + 1 {
            q[i, j] = q[i, j] + f32(it) * 1.5e3 - 3E+2 / 0.5 % 2;
        }
    }
    let b: bool = !(s > 1.0) && true || false != (x[0, 0] >= -inf);
    let m = max[r in 0..R, i](q[r, i]) + min[k](q[k, 0]) + (q)[0, 1] + [1, 2, 3][0];
    let g = where(s < 0.0, 0, 1) + f(a)[0] + sum[k](x[k, 0])[0];
    let e = ();
    z2 = -(-s) - --s;
}
"#;

/// Parses `src` as file 0; returns the module and the diagnostics.
fn parse0(src: &str) -> (Module, Vec<Diagnostic>) {
    parse(FileId(0), src)
}

fn codes(d: &[Diagnostic]) -> Vec<Code> {
    d.iter().map(|d| d.code).collect()
}

/// The `Debug` form of a value with every `Span { .. }` replaced by `_`: ASTs compared modulo spans.
fn without_spans(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("Span {") {
        out.push_str(&rest[..i]);
        out.push('_');
        rest = &rest[i..];
        match rest.find('}') {
            Some(j) => rest = &rest[j + 1..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

fn kernels(m: &Module) -> Vec<&KernelDef> {
    m.items
        .iter()
        .filter_map(|i| match i {
            Item::Kernel(k) => Some(k),
            _ => None,
        })
        .collect()
}

fn kernel<'a>(m: &'a Module, name: &str) -> &'a KernelDef {
    match kernels(m).into_iter().find(|k| k.name.name == name) {
        Some(k) => k,
        None => panic!("no kernel `{name}`"),
    }
}

// ---- (a) every contract kernel parses ----

#[test]
fn contract_kernels_parse_without_diagnostics() {
    let (m, d) = parse0(CONTRACT);
    assert!(d.is_empty(), "{d:#?}");
    let names: Vec<&str> = kernels(&m).iter().map(|k| k.name.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "adamw",
            "attention",
            "rmsnorm",
            "rmsnorm_bwd",
            "cross_entropy",
            "moe_route",
            "moe_permute",
            "moe_experts",
            "moe_combine",
            "muon_orthogonalize",
            "attention_bwd"
        ]
    );
    assert_eq!(m.items.len(), 12);

    let adamw = kernel(&m, "adamw");
    assert_eq!(adamw.doc.as_deref(), Some("Decoupled-weight-decay Adam, one step, updating param, m and v in place."));
    assert_eq!(adamw.params.len(), 10);
    assert!(matches!(adamw.params[0].kind, ParamKind::Value { inout: true, .. }));
    assert!(matches!(adamw.params[1].kind, ParamKind::Value { inout: false, .. }));
    assert!(adamw.outputs.is_empty());
    assert_eq!(adamw.body.stmts.len(), 5);

    let att = kernel(&m, "attention");
    assert_eq!(att.outputs.len(), 2);
    assert_eq!(att.constraints.len(), 2);
    assert!(matches!(att.body.stmts[1].kind, StmtKind::Let { target: LetTarget::Indexed(_, _), .. }));

    let ce = kernel(&m, "cross_entropy");
    assert_eq!(ce.doc.as_deref().map(|d| d.lines().count()), Some(2));

    let permute = kernel(&m, "moe_permute");
    assert!(matches!(permute.params[2].kind, ParamKind::Dim));
    assert_eq!(permute.outputs.len(), 3);
    let experts = kernel(&m, "moe_experts");
    assert_eq!(experts.outputs.len(), 1);
    assert_eq!(experts.outputs[0].name.name, "ys");

    let muon = kernel(&m, "muon_orthogonalize");
    assert!(matches!(&muon.body.stmts[0].kind, StmtKind::Let { ty: Some(t), .. } if t.name == "bf16"));
    assert!(matches!(&muon.body.stmts[1].kind, StmtKind::For { body, .. } if body.stmts.len() == 3));

    let route = kernel(&m, "moe_route");
    assert!(matches!(
        &route.body.stmts[2].kind,
        StmtKind::Let { target: LetTarget::Tuple(names, _), .. } if names.len() == 2 && names[1].is_none()
    ));

    let bwd = kernel(&m, "attention_bwd");
    let StmtKind::Assign { value, .. } = &bwd.body.stmts[6].kind else { panic!("dk is an assignment") };
    let ExprKind::Binary(BinaryOp::Mul, _, red) = &value.kind else { panic!("scale * sum") };
    let ExprKind::Reduce { op, binders, .. } = &red.kind else { panic!("a reduction") };
    assert_eq!(op.name, "sum");
    assert_eq!(binders.len(), 2);
    assert!(binders[0].range.is_some() && binders[1].range.is_none());

    let Some(Item::Fn(softmax)) = m.items.last() else { panic!("softmax is last") };
    assert_eq!(softmax.params.len(), 2);
    assert!(softmax.params[1].default.is_some());
    assert!(matches!(softmax.body.stmts.last().map(|s| &s.kind), Some(StmtKind::Return(_))));
}

#[test]
fn extras_parse_without_diagnostics() {
    let (m, d) = parse0(EXTRAS);
    assert!(d.is_empty(), "{d:#?}");
    assert!(matches!(&m.items[0], Item::Use { path, .. } if path == "lib/common.ker"));
    let Item::Fn(one) = &m.items[3] else { panic!("fn one") };
    assert_eq!(one.doc.as_deref(), Some("Several doc lines\n\n with an indented one."));
    let k = kernel(&m, "extras");
    assert_eq!(k.params.len(), 5);
    assert_eq!(k.constraints.len(), 3);
    assert_eq!(k.outputs.len(), 1);
    assert!(k.outputs[0].ty.shape.is_none());
}

#[test]
fn precedence_and_calls() {
    let (m, d) = parse0("fn f(x) { return -a * b + c @ d % e < 1 || !g && h == (i - j) - k; }");
    assert!(d.is_empty(), "{d:#?}");
    let printed = print_module(&m);
    assert!(
        printed.contains("return ((((-a * b) + ((c @ d) % e)) < 1) || (!g && (h == ((i - j) - k))));"),
        "{printed}"
    );
    let (m, d) = parse0("fn f(x) { return where(c, a, b) + g(x, 1, axis: -1, keepdim: true); }");
    assert!(d.is_empty(), "{d:#?}");
    let Item::Fn(f) = &m.items[0] else { panic!() };
    let StmtKind::Return(e) = &f.body.stmts[0].kind else { panic!() };
    let ExprKind::Binary(_, w, g) = &e.kind else { panic!() };
    assert!(matches!(&w.kind, ExprKind::Call { callee, args, .. } if callee.name == "where" && args.len() == 3));
    assert!(
        matches!(&g.kind, ExprKind::Call { args, named, .. } if args.len() == 2 && named.len() == 2 && named[0].name.name == "axis")
    );
}

#[test]
fn spans_cover_their_text() {
    let src = "kernel k(x: f32[N]) -> y: f32[N] {\n    y[i] = x[i] * 2.0;\n}\n";
    let (m, d) = parse0(src);
    assert!(d.is_empty());
    let k = kernel(&m, "k");
    assert_eq!(&src[k.span.range()], src.trim_end());
    let s = &k.body.stmts[0];
    assert_eq!(&src[s.span.range()], "y[i] = x[i] * 2.0;");
    let StmtKind::Assign { value, .. } = &s.kind else { panic!() };
    assert_eq!(&src[value.span.range()], "x[i] * 2.0");
    assert_eq!(&src[k.params[0].span.range()], "x: f32[N]");
    assert_eq!(&src[k.params[0].name.span.range()], "x");
}

// ---- (b) the printed AST re-parses to the same AST ----

fn assert_round_trip(src: &str) {
    let (m1, d1) = parse0(src);
    assert!(d1.is_empty(), "{d1:#?}");
    let p1 = print_module(&m1);
    let (m2, d2) = parse0(&p1);
    assert!(d2.is_empty(), "printed text does not re-parse: {d2:#?}\n{p1}");
    assert_eq!(without_spans(&format!("{m1:?}")), without_spans(&format!("{m2:?}")), "{p1}");
    assert_eq!(print_module(&m2), p1);
}

/// Schedule hints: attributes before statements (any statement parses; lowering says where they apply).
const HINTS: &str = "kernel k(x: f32[T, D], m: inout f32[N]) -> (y: f32[T, D], s: f32[T]) {
    #[unfused] let a = x * 2.0;
    #[tile(t: 64, d: 128,)] y[t, d] = a[t, d];
    #[unfused()] #[tile(N: 1024)]
    m = m + 1.0;
    # [ unfused ] s = sum(a, axis: 1);
    #[unfused] for i in 0..2 { #[tile(t: 8)] let b[t] = s[t]; }
    #[whatever(a: -1, b: x + 1)] let c = 1;
}
";

#[test]
fn printed_ast_reparses_to_the_same_ast() {
    assert_round_trip(CONTRACT);
    assert_round_trip(EXTRAS);
    assert_round_trip(HINTS);
    assert_round_trip("fn f() { return ((a,), (), [], -x[0], (-x)[0], 1e300, 1e-7, 2.0, 0.1 + 0.2); }");
}

#[test]
fn attributes_parse_before_statements() {
    let (m, d) = parse0(HINTS);
    assert!(d.is_empty(), "{d:#?}");
    let k = kernel(&m, "k");
    let attrs: Vec<Vec<&str>> =
        k.body.stmts.iter().map(|s| s.attrs.iter().map(|a| a.name.name.as_str()).collect()).collect();
    assert_eq!(
        attrs,
        [vec!["unfused"], vec!["tile"], vec!["unfused", "tile"], vec!["unfused"], vec!["unfused"], vec!["whatever"]]
    );
    let s1 = &k.body.stmts[1];
    let args: Vec<&str> = s1.attrs[0].args.iter().map(|a| a.name.name.as_str()).collect();
    assert_eq!(args, ["t", "d"]);
    assert_eq!(&HINTS[s1.attrs[0].span.range()], "#[tile(t: 64, d: 128,)]");
    assert_eq!(&HINTS[s1.span.range()], "y[t, d] = a[t, d];", "a statement's span leaves out its attributes");
    assert!(k.body.stmts[2].attrs[0].args.is_empty(), "`#[unfused()]` has no arguments");
    let StmtKind::For { body, .. } = &k.body.stmts[4].kind else { panic!("a for") };
    assert_eq!(body.stmts[0].attrs[0].name.name, "tile");
    let printed = print_module(&m);
    assert!(printed.contains("    #[unfused] #[tile(N: 1024)] m = (m + 1.0);\n"), "{printed}");
    assert!(printed.contains("    #[tile(t: 64, d: 128)] y[t, d] = a[t, d];\n"), "{printed}");
}

#[test]
fn attribute_errors() {
    // A positional argument: named arguments only.
    let (m, d) = parse0("kernel k() { #[tile(64, t: 8)] let a = 1; }");
    assert_eq!(codes(&d), [Code::BadHint]);
    assert_eq!(d[0].message, "the arguments of `#[tile]` are named");
    assert_eq!(kernel(&m, "k").body.stmts[0].attrs[0].args.len(), 1);
    // `#` is no longer a comment: the error says so.
    let (_, d) = parse0("kernel k() { # a comment\n let a = 1; }");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    assert!(d[0].notes.iter().any(|n| n.contains("comments start with `//`")), "{d:#?}");
    let (_, d) = parse0("# a comment\nkernel k() { let a = 1; }");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    assert!(d[0].notes.iter().any(|n| n.contains("comments start with `//`")), "{d:#?}");
    // An attribute with no statement after it.
    let (_, d) = parse0("kernel k() { let a = 1; #[unfused] }");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    assert!(d[0].notes.iter().any(|n| n.contains("stands before the statement")), "{d:#?}");
    // Broken attributes are recovered from like any statement.
    let (m, d) = parse0("kernel k() { #[tile(t: )] let a = 1; #[] let b = 2; #[unfused] let c = 3; }");
    assert_eq!(codes(&d), [Code::UnexpectedToken; 2], "{d:#?}");
    let k = kernel(&m, "k");
    assert_eq!(k.body.stmts.len(), 3);
    assert_eq!(k.body.stmts[2].attrs.len(), 1);
}

#[test]
fn printed_form_is_canonical() {
    let (m, _) = parse0(CONTRACT);
    let p = print_module(&m);
    assert!(p.contains("    m = ((beta1 * m) + ((1.0 - beta1) * grad));\n"), "{p}");
    assert!(p.contains("kernel attention(q: bf16[B, H, S, D], k: bf16[B, G, T, D], v: bf16[B, G, T, D], scale: f32) -> (o: bf16[B, H, S, D], lse: f32[B, H, S]) where ((H % G) == 0), (S <= T) {\n"), "{p}");
    assert!(p.contains("kernel moe_permute(x: bf16[T, M], idx: i32[T, K], E: dim) -> (xs: bf16[(T * K), M], order: i32[(T * K)], offsets: i32[(E + 1)]) {\n"), "{p}");
    assert!(p.contains("    for step in 0..5 {\n        let a: bf16 = (x @ transpose(x));\n"), "{p}");
    assert!(p.contains("    let x: bf16 = (g / (sqrt(sum((g * g))) + 1e-7));\n"), "{p}");
    assert!(
        p.contains("    let keep[t, e in 0..E] = (sum[g in 0..KG](f32((groups[t, g] == (e / (E / NG))))) > 0.0);\n"),
        "{p}"
    );
    assert!(p.contains("fn softmax(x, axis = -1) {\n    let m = max(x, axis: axis, keepdim: true);\n"), "{p}");
    assert!(p.contains("/// Muon's orthogonalization: five Newton-Schulz steps.\nkernel muon_orthogonalize(g: bf16[M, N]) -> o: bf16[M, N] where (M <= N) {\n"), "{p}");
    // Deterministic.
    assert_eq!(print_module(&parse0(CONTRACT).0), p);
}

// ---- (c) errors: codes and recovery ----

#[test]
fn lexical_errors() {
    let (_, d) = parse0("kernel k() -> y: f32 { y = 1 $ 2; }");
    assert_eq!(codes(&d), [Code::InvalidToken]);
    let (_, d) = parse0("kernel k() -> y: f32 { y = 99999999999999999999; }");
    assert_eq!(codes(&d), [Code::BadNumber]);
    let (_, d) = parse0("kernel k() -> y: f32 { y = 1e999; }");
    assert_eq!(codes(&d), [Code::BadNumber]);
    let (_, d) = parse0("use \"unterminated;\nkernel k() -> y: f32 { y = 1; }");
    assert!(codes(&d).contains(&Code::UnterminatedString), "{d:#?}");
    let (m, d) = parse0("kernel k() -> y: f32 { let é = 1; y = 2 & 3; y = 4; }");
    assert_eq!(codes(&d), [Code::InvalidToken, Code::InvalidToken]);
    assert_eq!(kernel(&m, "k").body.stmts.len(), 3);
    assert!(d[1].notes.iter().any(|n| n.contains("&&")));
}

#[test]
fn syntax_errors_have_codes() {
    let (_, d) = parse0("kernel k() { let x = ; }");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    assert_eq!(d[0].message, "expected an expression, found `;`");
    let (_, d) = parse0("kernel k() { let x = 1;");
    assert_eq!(codes(&d), [Code::UnexpectedEof]);
    let (_, d) = parse0("kernel k() { let x = f(x, axis: 1, y); }");
    assert_eq!(codes(&d), [Code::PositionalAfterNamed]);
    let (_, d) = parse0("kernel k() { let x = a < b < c; }");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    let (_, d) = parse0("kernel k() { let x = sum[i + 1](a); let y = a[i in 0..3]; let z = f(a)[i](b); }");
    assert_eq!(codes(&d), [Code::UnexpectedToken; 3]);
    let (_, d) = parse0("kernel k() { let x = 1 }");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    assert_eq!(d[0].message, "expected `;` or an operator, found `}`");
    let (_, d) = parse0("let x = 1;");
    assert_eq!(codes(&d), [Code::UnexpectedToken]);
    assert!(d[0].message.contains("`kernel`"), "{}", d[0].message);
}

#[test]
fn recovery_reports_every_broken_statement() {
    let src = "kernel k(x: f32[N]) -> y: f32[N] {
    let a = x + ;
    let b = x * 2.0;
    let c = (x + ) * 3;
    let d = x;
    y = x x;
}
";
    let (m, d) = parse0(src);
    assert_eq!(codes(&d), [Code::UnexpectedToken; 3], "{d:#?}");
    let k = kernel(&m, "k");
    assert_eq!(k.body.stmts.len(), 5);
    let ok: Vec<bool> = k.body.stmts.iter().map(|s| !matches!(s.kind, StmtKind::Error)).collect();
    assert_eq!(ok, [false, true, false, true, false]);
    // Each error is on its own line.
    let lines: Vec<usize> = d.iter().map(|d| src[..d.primary.span.start as usize].lines().count()).collect();
    assert_eq!(lines, [2, 4, 6]);
}

#[test]
fn recovery_across_items_and_lists() {
    let src = "kernel a(x: f32[N) -> y: f32 { y = 1; }
kernel b() -> y: f32 { y = f(1 2, 3) + g(4); }
kernel c() -> y: f32 { y = 1;
kernel d() -> y: f32 { y = 2; }
fn e(x) { return x; }
";
    let (m, d) = parse0(src);
    assert_eq!(codes(&d), [Code::UnexpectedToken; 3], "{d:#?}");
    let names: Vec<&str> = m
        .items
        .iter()
        .map(|i| match i {
            Item::Kernel(k) => k.name.name.as_str(),
            Item::Fn(f) => f.name.name.as_str(),
            Item::Use { .. } => "use",
        })
        .collect();
    assert_eq!(names, ["a", "b", "d", "e"]);
}

#[test]
fn diagnostics_are_capped() {
    let src = format!("kernel k() {{ {} }}", "let = ;\n".repeat(500));
    let (_, d) = parse0(&src);
    assert_eq!(d.len(), 100);
    assert!(d[99].notes.iter().any(|n| n.contains("more errors")), "{:?}", d[99].notes);
    let noise = "$ ".repeat(1000);
    let (_, d) = parse0(&noise);
    assert_eq!(d.len(), 100);
}

// ---- (d) no panic on any input ----

fn render_all(src: &str, d: &[Diagnostic]) -> String {
    let mut sm = SourceMap::new();
    sm.add("file.ker", src);
    render(d, &sm, false)
}

#[test]
fn every_prefix_parses_and_renders_without_panic() {
    let text = format!("{CONTRACT}{EXTRAS}");
    let mut errors = 0;
    for (i, _) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        let prefix = &text[..i];
        let (m, d) = parse0(prefix);
        errors += d.len();
        let _ = render_all(prefix, &d);
        let _ = print_module(&m);
    }
    assert!(errors > 0);
}

/// xorshift64*: a tiny deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_mutations_parse_and_render_without_panic() {
    let base: Vec<u8> = format!("{CONTRACT}{EXTRAS}").into_bytes();
    let alphabet = b"()[]{},;:->.=+-*/%@!<>&|\"_aZ09e. \n\t\xc3\xa9\xff/";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..2000 {
        let mut bytes = base.clone();
        let edits = 1 + rng.below(if round % 10 == 0 { 40 } else { 4 });
        for _ in 0..edits {
            let at = rng.below(bytes.len());
            let byte = if rng.below(2) == 0 { alphabet[rng.below(alphabet.len())] } else { rng.next() as u8 };
            match rng.below(3) {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (m, d) = parse0(&text);
        let _ = render_all(&text, &d);
        let printed = print_module(&m);
        // What parsed cleanly prints to text that parses cleanly too.
        if d.is_empty() {
            let (_, d2) = parse0(&printed);
            assert!(d2.is_empty(), "round {round}: {d2:#?}\n{printed}");
        }
    }
}

#[test]
fn random_token_soup_parses_and_renders_without_panic() {
    const WORDS: &[&str] = &[
        "kernel",
        "fn",
        "let",
        "for",
        "in",
        "return",
        "use",
        "where",
        "inout",
        "dim",
        "true",
        "false",
        "inf",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ";",
        ":",
        "->",
        "..",
        "=",
        "+",
        "-",
        "*",
        "/",
        "%",
        "@",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "&&",
        "||",
        "!",
        "x",
        "sum",
        "f32",
        "_",
        "0",
        "1.5",
        "\"p.ker\"",
        "/// d\n",
        "$",
        "\n",
        "#",
        "#[unfused]",
        "#[tile(x: 8)]",
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..2000 {
        let n = rng.below(60);
        let mut text = String::new();
        for _ in 0..n {
            text.push_str(WORDS[rng.below(WORDS.len())]);
            text.push(' ');
        }
        let (m, d) = parse0(&text);
        let _ = render_all(&text, &d);
        let _ = print_module(&m);
    }
}

// ---- (e) deep nesting ----

#[test]
fn deep_nesting_is_refused_without_overflow() {
    let n = 100_000;
    let src = format!("{}x{}", "(".repeat(n), ")".repeat(n));
    let (m, d) = parse0(&src);
    assert_eq!(codes(&d), [Code::TooDeep]);
    assert_eq!(d[0].message, "nested deeper than 128 levels");
    assert_eq!(d[0].primary.span.start, 128);
    assert!(m.items.is_empty());
    let _ = render_all(&src, &d);

    // Inside a kernel, other items still parse.
    let src = format!(
        "kernel a() -> y: f32 {{ y = {}1{}; }}\nkernel b() -> y: f32 {{ y = 1; }}\n",
        "f(".repeat(n),
        ")".repeat(n)
    );
    let (m, d) = parse0(&src);
    assert_eq!(codes(&d), [Code::TooDeep]);
    assert_eq!(kernels(&m).len(), 1);
    assert_eq!(kernels(&m)[0].name.name, "b");

    // 128 levels are fine.
    let src = format!("kernel a() -> y: f32 {{ y = {}1{}; }}", "(".repeat(127), ")".repeat(127));
    let (_, d) = parse0(&src);
    assert!(d.is_empty(), "{d:#?}");

    // Long operator chains and unary chains are bounded too.
    let src = format!("kernel a() -> y: f32 {{ y = x{}; }}", " + x".repeat(n));
    let (_, d) = parse0(&src);
    assert_eq!(codes(&d), [Code::TooDeep]);
    let src = format!("kernel a() -> y: f32 {{ y = {}x; }}", "-".repeat(n));
    let (_, d) = parse0(&src);
    assert_eq!(codes(&d), [Code::TooDeep]);
    let src = format!("kernel a() -> y: f32 {{ y = {}x{}; }}", "[".repeat(n), " ".repeat(3));
    let (_, d) = parse0(&src);
    assert_eq!(codes(&d), [Code::TooDeep]);
}

// ---- (f) rendering ----

#[test]
fn render_shows_file_line_and_caret() {
    let src = "kernel k() -> y: f32 {\n    y = 1 +;\n}\n";
    let (_, d) = parse0(src);
    let text = render_all(src, &d);
    assert!(text.contains("error[E0010]: expected an expression, found `;`"), "{text}");
    assert!(text.contains("file.ker:2:12"), "{text}");
    assert!(text.contains("2 │     y = 1 +;"), "{text}");
    assert!(text.contains('^'), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    assert_eq!(render_all(src, &d), text);

    let src = "kernel k() -> y: f32 {\n    y = 1;\n";
    let (_, d) = parse0(src);
    let text = render_all(src, &d);
    assert!(text.contains("error[E0011]: unexpected end of file"), "{text}");
    assert!(text.contains("file.ker:2:11"), "{text}");

    let src = "kernel k() -> y: f32 {\n    y = max(x, axis: 0, 1);\n}\n";
    let (_, d) = parse0(src);
    let text = render_all(src, &d);
    assert!(text.contains("error[E0203]"), "{text}");
    assert!(text.contains("file.ker:2:25"), "{text}");
    assert!(text.contains("= help: put the positional arguments first"), "{text}");

    let mut sm = SourceMap::new();
    sm.add("file.ker", src);
    let colored = render(&d, &sm, true);
    assert!(colored.contains('\u{1b}'));
}
