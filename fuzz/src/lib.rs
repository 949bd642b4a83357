//! Shared pieces of kc's fuzz targets (see `docs/fuzzing.md`).

use kc_frontend::Loader;

/// The fuzzer's bytes as source text. The compiler takes a `String`, as the CLI gives it after a lossy
/// read: invalid UTF-8 becomes U+FFFD, which the lexer must report like any other odd character.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A `use` loader over a small fixed set of files, so that inputs reach `use` resolution, cycles and
/// errors inside used files without touching the disk. Every other name is refused (E0020).
pub struct MapLoader;

/// The files [`MapLoader`] serves, by the name a `use` gives.
pub const FILES: &[(&str, &str)] = &[
    (
        "lib.ker",
        "/// The squared L2 norm along the last axis.\nfn sq_norm(x) {\n    return sum(x * x, axis: -1);\n}\n\n\
         fn leaky_relu(x, slope = 0.01) {\n    return where(x > 0.0, x, slope * x);\n}\n",
    ),
    ("nested.ker", "use \"lib.ker\";\nfn twice(x) {\n    return leaky_relu(x) + leaky_relu(x);\n}\n"),
    ("self.ker", "use \"self.ker\";\nfn s(x) {\n    return x;\n}\n"),
    ("a.ker", "use \"b.ker\";\nfn fa(x) {\n    return fb(x) * 2.0;\n}\n"),
    ("b.ker", "use \"a.ker\";\nfn fb(x) {\n    return x + 1.0;\n}\n"),
    ("bad.ker", "fn broken(x) {\n    return x +;\n}\nkernel k(x: f32[N]) -> y: f32[N] { y = x; }\n"),
];

impl Loader for MapLoader {
    fn load(&self, _from: &str, path: &str) -> Result<(String, String), String> {
        FILES
            .iter()
            .find(|(n, _)| *n == path)
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .ok_or_else(|| format!("cannot read `{path}`: not one of the fuzz loader's files"))
    }
}

/// The most elements the pipeline target lets the random arguments of one launch hold (2^20): a kernel
/// that declares `f32[100000000]` is valid, but its launch would only measure the fuzzer's allocator.
pub const MAX_ARG_ELEMENTS: u64 = 1 << 20;

/// The dims of a launch of `g` with every dim that the `where` clause does not fix set to `size`, or `None`
/// if the parameters would then hold more than [`MAX_ARG_ELEMENTS`] elements (or a shape does not evaluate).
pub fn small_dims(g: &kc_ir::Graph, size: i64) -> Option<kc_ir::launch::Args> {
    let mut args = kc_ir::launch::Args::default();
    for d in &g.dims {
        args.dims.insert(d.clone(), size);
    }
    for p in &g.params {
        if p.kind == kc_ir::ParamKind::Dim {
            args.dims.insert(p.name.clone(), size);
        }
    }
    for (n, v) in &g.fixed {
        args.dims.insert(n.clone(), *v);
    }
    let lookup = |s: &str| args.dims.get(s).copied();
    let mut total: u64 = 0;
    for p in &g.params {
        if let kc_ir::ParamKind::Tensor { shape, .. } = &p.kind {
            let n =
                shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(u64::try_from(d.eval(&lookup).ok()?).ok()?))?;
            total = total.checked_add(n)?;
        }
    }
    (total <= MAX_ARG_ELEMENTS).then_some(args)
}
