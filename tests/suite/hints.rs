//! Schedule hints from source to graph: which node each hint lands on (through `let` reuse, fn inlining,
//! unrolled loops and dead-node elimination), and the errors for hints that cannot be honoured.

use kc_frontend::SourceMap;
use kc_ir::{Code, Diagnostic, Graph, HintKind, ValueId};

/// Compiles a source string; returns its first kernel (if it lowered), the diagnostics and their rendering.
fn compile(src: &str) -> (Option<Graph>, Vec<Diagnostic>, String) {
    let mut sources = SourceMap::new();
    let id = sources.add("hints.ker", src);
    let (program, diags) = kc_frontend::compile(&mut sources, id, &crate::common::FsLoader);
    let rendered = kc_frontend::render(&diags, &sources, false);
    (program.kernels.into_iter().next(), diags, rendered)
}

fn compile_ok(src: &str) -> Graph {
    let (g, diags, rendered) = compile(src);
    assert!(diags.is_empty(), "{rendered}");
    let g = g.expect("the kernel lowers");
    assert_eq!(kc_ir::verify::verify(&g), Ok(()));
    g
}

fn node(g: &Graph, name: &str) -> Vec<ValueId> {
    (0..g.nodes.len()).filter(|&i| g.nodes[i].name.as_deref() == Some(name)).map(|i| ValueId(i as u32)).collect()
}

fn hints_of(g: &Graph, v: ValueId) -> Vec<HintKind> {
    g.hints.iter().filter(|h| h.node == v).map(|h| h.kind.clone()).collect()
}

/// The errors of `src`: each code must be `code`, at a span inside `src`.
fn errors(src: &str, code: Code) -> String {
    let (_, diags, rendered) = compile(src);
    assert!(!diags.is_empty(), "no error for:\n{src}");
    for d in &diags {
        assert_eq!(d.code, code, "{rendered}");
        assert!((d.primary.span.end as usize) <= src.len(), "{rendered}");
    }
    rendered
}

#[test]
fn hints_land_on_the_bound_node() {
    let g = compile_ok(
        "fn twice(a) {
    #[unfused] let r = a * 2.0;
    return r;
}
kernel k(x: f32[N]) -> (y: f32[N], z: f32[N]) {
    #[tile(N: 64)] let a = exp(x);
    #[unfused] let b = a;
    #[unfused] let dead = x + 1.0;
    y = twice(b);
    z = twice(x);
}
",
    );
    // `let b = a;` binds the node of `a`: both hints are on it, in source order.
    let a = node(&g, "a");
    assert_eq!(a.len(), 1);
    assert_eq!(hints_of(&g, a[0]), [HintKind::Tile(vec![("N".into(), 64)]), HintKind::Unfused]);
    // Each call of the fn has its own node with the hint.
    let r = node(&g, "r");
    assert_eq!(r.len(), 2);
    for v in &r {
        assert_eq!(hints_of(&g, *v), [HintKind::Unfused]);
    }
    // The dead value and its hint are gone.
    assert!(node(&g, "dead").is_empty());
    assert_eq!(g.hints.len(), 4);
}

#[test]
fn hints_in_loops_apply_to_every_iteration() {
    let g = compile_ok(
        "kernel k(x: f32[N]) -> y: f32[N] {
    let a = x;
    for i in 0..3 {
        #[tile(n: 32)] a[n] = a[n] * 2.0;
    }
    y = a;
}
",
    );
    let a = node(&g, "a");
    assert_eq!(a.len(), 3, "{}", kc_ir::print::print_graph(&g));
    for v in a {
        assert_eq!(hints_of(&g, v), [HintKind::Tile(vec![("n".into(), 32)])]);
    }
}

#[test]
fn index_names_follow_the_node() {
    // `y[i, j] = m[i, j]` binds the node of `m`, whose axes are `t` and `d`: the hint names them so.
    let g = compile_ok(
        "kernel k(x: f32[T, D]) -> y: f32[T, D] {
    let m[t, d] = x[t, d] * 2.0;
    #[tile(i: 8, j: 16)] y[i, j] = m[i, j];
}
",
    );
    let y = g.results[0].value;
    assert_eq!(g.nodes[y.index()].name.as_deref(), Some("m"));
    assert_eq!(hints_of(&g, y), [HintKind::Tile(vec![("t".into(), 8), ("d".into(), 16)])]);
}

#[test]
fn hints_that_cannot_be_honoured_are_errors() {
    let cases: &[(&str, &str)] = &[
        ("#[unfused] let R = N / 2; y = x;", "it is a dim, not a tensor"),
        ("#[tile(N: 4)] let a = x; #[tile(N: 8)] let b = a; y = b;", "already has different tile sizes"),
        ("#[unfused] #[unfused] let a = x; y = a;", "given twice on this statement"),
        ("#[tile(N: 4, N: 8)] let a = x; y = a;", "tiled twice"),
        ("#[tile(n: 4)] let a = x; y = a;", "the axis of `a` is `N`"),
        ("#[tile(N: -4)] y = x;", "must be at least 1"),
        ("#[tile(N: 2 * 2)] y = x;", "must be an integer literal"),
        ("#[tile()] y = x;", "needs at least one axis"),
        ("#[tile(32)] y = x;", "are named"),
        ("#[unfused] let (v, i) = topk(x, 2); y = x;", "destructuring `let`"),
        ("#[tile(n: 4)] let s = sum(x); y = x;", "scalar"),
    ];
    for (body, needle) in cases {
        let src = format!("kernel k(x: f32[N]) -> y: f32[N] {{ {body} }}\n");
        let rendered = errors(&src, Code::BadHint);
        assert!(rendered.contains(needle), "`{body}`: expected `{needle}` in:\n{rendered}");
    }
    // A `let` inside a fn called from index notation is never stored.
    let rendered = errors(
        "fn f(a) { #[unfused] let t = a * 2.0; return t; }
kernel k(x: f32[N]) -> y: f32[N] { y[n] = f(x[n]); }
",
        Code::BadHint,
    );
    assert!(rendered.contains("never stored") && rendered.contains("called here"), "{rendered}");
    let rendered = errors(
        "fn f(a) { #[unfused] return a; }
kernel k(x: f32[N]) -> y: f32[N] { y = f(x); }
",
        Code::BadHint,
    );
    assert!(rendered.contains("cannot apply to a `return`"), "{rendered}");
    let rendered = errors("kernel k(x: f32[N]) -> y: f32[N] { #[inline] y = x; }\n", Code::UnknownHint);
    assert!(rendered.contains("unknown schedule hint `inline`"), "{rendered}");
}
