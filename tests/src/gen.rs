//! A generator of well-typed random `.ker` kernels, for differential testing of kc's executors.
//!
//! [`generate`] turns a seed into a [`Program`]: the source text of one kernel, the dims to launch it at, and
//! what the comparison needs to know about each result (the longest reduction behind it, whether it went
//! through a rounding that may differ between correct executors). The same seed always gives the same
//! program.
//!
//! A kernel is built from a few *features*, each of which adds one or two statements and a result:
//! elementwise chains in index notation and over whole tensors (with broadcasts), reductions in index
//! notation and as builtins over random axes, contractions (`@`, `transpose`, batched `@`, index-notation
//! sums of products), gathers through an `i32` index parameter, causal and float masks (`where`),
//! `softmax`/`logsumexp`, casts between `f32`, `bf16` and `i32`, `inout` updates. Later features read the
//! results of earlier ones, so the chains cross fusion groups. Dims are drawn from awkward sizes: 1, primes,
//! sizes just above a tile (17, 33, 129, 257).
//!
//! Values are kept tame so that a comparison means something:
//! - every expression carries a bound on its magnitude (inputs are in `[-1, 1)`, scalars in `(0, 1)`); an
//!   `exp` whose argument could exceed 6 is taken of a `tanh` instead, and a value whose bound grows past
//!   64 goes through `tanh`;
//! - `log`, `sqrt`, `rsqrt` and `pow` only see arguments bounded away from 0 (`abs(e) + 0.5`, `e * e + 1.0`);
//!   division only by `abs(e) + 1.0`;
//! - expressions whose value every correct executor computes bit for bit (*deterministic* ones: loads,
//!   `+ - * /`, `abs`, `min`, `max`, casts of them, index arithmetic) are the only ones compared with floats
//!   in a `where` condition or truncated by `i32(...)`: a transcendental or a reduction may differ in its
//!   last bits between executors, and a condition or a truncation would turn that into a large difference.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A small seeded generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// What a generated kernel exercises, for the feature-mix statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub contraction: bool,
    pub gather: bool,
    pub reduction: bool,
    pub mask: bool,
    pub cast: bool,
    pub inout: bool,
    pub softmax: bool,
    pub library: bool,
    pub broadcast: bool,
    pub bf16: bool,
}

/// What the comparison needs to know about one result (an output or an `inout`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultInfo {
    /// The number of terms of the longest chain of sums behind the result (the product of the lengths of
    /// nested reductions, the sum of those of reductions read one after the other); 1 with none.
    pub terms: u64,
    /// Whether some value behind the result was rounded to bf16 after a computation that correct executors
    /// may carry out with different last bits (a reduction, a transcendental): that rounding can then differ
    /// by one bf16 unit, whatever the result's own dtype.
    pub bf16_rounded: bool,
    /// A bound of the magnitudes of the terms of those sums (0 when unknown): with `terms`, the scale of the
    /// partial sums when the sum cancels (`sqrt(terms) * term_bound` for terms of random signs).
    pub term_bound: f64,
}

/// A generated kernel.
#[derive(Clone, Debug)]
pub struct Program {
    pub seed: u64,
    pub source: String,
    /// The dims to launch at (exactly the kernel's dim symbols).
    pub dims: BTreeMap<String, i64>,
    pub features: Features,
    /// By result name.
    pub results: BTreeMap<String, ResultInfo>,
}

impl Program {
    /// `N=17, M=1`: the dims as the fixtures' header comment writes them.
    pub fn dims_text(&self) -> String {
        self.dims.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    }
}

/// An expression being built: its text and what is known of its value.
#[derive(Clone, Debug)]
struct E {
    s: String,
    /// An upper bound of its magnitude.
    b: f64,
    /// Computed bit for bit alike by every correct executor.
    det: bool,
    /// See [`ResultInfo::terms`].
    terms: u64,
    bf16_rounded: bool,
    /// See [`ResultInfo::term_bound`].
    tb: f64,
}

impl E {
    fn leaf(s: String, b: f64) -> E {
        E { s, b, det: true, terms: 1, bf16_rounded: false, tb: 0.0 }
    }
    fn with(&self, s: String, b: f64, det: bool) -> E {
        E { s, b, det: det && self.det, terms: self.terms, bf16_rounded: self.bf16_rounded, tb: self.tb }
    }
    fn join(&self, o: &E, s: String, b: f64) -> E {
        E {
            s,
            b,
            det: self.det && o.det,
            terms: self.terms.max(o.terms),
            tb: self.tb.max(o.tb),
            bf16_rounded: self.bf16_rounded || o.bf16_rounded,
        }
    }
}

/// A tensor or scalar in scope: a parameter, an output already assigned, or a `let`.
#[derive(Clone, Debug)]
struct Val {
    name: String,
    /// Dim symbols, or "1" for a literal 1.
    shape: Vec<String>,
    int: bool,
    e: E,
}

/// The order of dims in the shapes the generator makes.
const ORDER: [&str; 8] = ["H", "N", "V", "A", "B", "K", "L", "J"];

fn order(d: &str) -> usize {
    ORDER.iter().position(|x| *x == d).unwrap_or(ORDER.len())
}

/// The awkward sizes dims are drawn from.
const SIZES: [i64; 18] = [1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 32, 33, 64, 65, 100, 127, 129, 257];

struct Gen {
    rng: Rng,
    sizes: BTreeMap<String, i64>,
    params: Vec<String>,
    outputs: Vec<String>,
    body: Vec<String>,
    pool: Vec<Val>,
    results: BTreeMap<String, ResultInfo>,
    f: Features,
    next: usize,
    /// The largest result the generator makes, in elements.
    max_elems: i64,
    /// Inside the body of a reduction: reductions nested in reductions are mostly a tiler gap (E0606).
    in_reduction: bool,
}

/// An index variable in scope: its name and its dim.
type Ctx = Vec<(String, String)>;

fn ty(dtype: &str, shape: &[String]) -> String {
    if shape.is_empty() {
        dtype.to_string()
    } else {
        format!("{dtype}[{}]", shape.join(", "))
    }
}

impl Gen {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn size(&self, d: &str) -> i64 {
        if d == "1" {
            1
        } else {
            self.sizes[d]
        }
    }

    /// The dims that some parameter already introduces.
    fn known_dims(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.pool.iter().flat_map(|p| p.shape.iter().cloned()).filter(|d| d != "1").collect::<Vec<_>>();
        v.sort();
        v.dedup();
        v
    }

    /// A new float parameter (f32, bf16 or f16, values in [-1, 1); scalars in (0, 1)).
    fn param(&mut self, shape: &[String]) -> Val {
        let dtype = match self.rng.below(20) {
            0..=6 => "bf16",
            7 => "f16",
            _ => "f32",
        };
        self.typed_param(shape, dtype)
    }

    fn typed_param(&mut self, shape: &[String], dtype: &str) -> Val {
        let name = self.fresh("p");
        if dtype != "f32" {
            self.f.bf16 = true;
        }
        self.params.push(format!("{name}: {}", ty(dtype, shape)));
        let s = if shape.is_empty() { name.clone() } else { String::new() };
        let v = Val { name: name.clone(), shape: shape.to_vec(), int: false, e: E::leaf(s, 1.0) };
        self.pool.push(v.clone());
        v
    }

    /// Reads `v` in index notation with the variables of `ctx` (one for each of its dims; `prefer` for its
    /// dim when given).
    fn access_with(&mut self, v: &Val, ctx: &Ctx, prefer: Option<&(String, String)>) -> E {
        let mut e = v.e.clone();
        if v.shape.is_empty() {
            e.s = v.name.clone();
            return e;
        }
        let idx: Vec<String> = v
            .shape
            .iter()
            .map(|d| {
                if d == "1" {
                    return "0".to_string();
                }
                if let Some((pv, pd)) = prefer {
                    if pd == d {
                        return pv.clone();
                    }
                }
                let vars: Vec<&String> = ctx.iter().filter(|(_, vd)| vd == d).map(|(n, _)| n).collect();
                self.rng.pick(&vars).to_string()
            })
            .collect();
        e.s = format!("{}[{}]", v.name, idx.join(", "));
        e
    }

    fn access(&mut self, v: &Val, ctx: &Ctx) -> E {
        self.access_with(v, ctx, None)
    }

    /// A float leaf in index notation over `ctx`.
    fn leaf(&mut self, ctx: &Ctx) -> E {
        let r = self.rng.below(20);
        if r < 2 {
            let c = *self.rng.pick(&["0.5", "2.0", "1.5", "0.25", "3.0", "1e-3"]);
            return E::leaf(c.to_string(), c.parse().unwrap_or(3.0));
        }
        if r < 4 && !ctx.is_empty() {
            // An index variable as a value, scaled to [0, 1).
            let (v, d) = self.rng.pick(ctx).clone();
            return E::leaf(format!("f32({v}) / {d}"), 1.0);
        }
        // The context's dims, once each, in order. A value broadcast over an element-wise result must hold
        // a leading or a trailing run of its dims: a vector along a middle axis (or two axes around one) is
        // a tiler gap (E0606), as are literal-1 axes in most templates: those are rare.
        let mut dims: Vec<String> = Vec::new();
        for (_, d) in ctx {
            if !dims.contains(d) {
                dims.push(d.clone());
            }
        }
        let loose = self.rng.chance(0.03);
        let run = |shape: &[String]| -> bool {
            let s: Vec<&String> = shape.iter().filter(|d| *d != "1").collect();
            let n = s.len();
            n <= dims.len()
                && (s.iter().zip(&dims).all(|(a, b)| *a == b)
                    || s.iter().zip(&dims[dims.len() - n..]).all(|(a, b)| *a == b))
        };
        let cands: Vec<Val> = self
            .pool
            .iter()
            .filter(|v| {
                !v.int
                    && v.shape.iter().all(|d| d == "1" || dims.contains(d))
                    && (loose || run(&v.shape) && !v.shape.iter().any(|d| d == "1"))
            })
            .cloned()
            .collect();
        let v = if cands.is_empty() || self.rng.chance(0.3) {
            // A new parameter over a leading or trailing run of the context's dims.
            let k = self.rng.below(dims.len() + 1);
            let mut shape: Vec<String> =
                if self.rng.chance(0.5) { dims[..k].to_vec() } else { dims[dims.len() - k..].to_vec() };
            if loose && shape.len() == 1 {
                shape.push("1".to_string());
            }
            self.param(&shape)
        } else {
            self.rng.pick(&cands).clone()
        };
        self.access(&v, ctx)
    }

    /// A float expression in index notation over `ctx`.
    fn expr(&mut self, ctx: &Ctx, depth: u32) -> E {
        let e = self.expr_raw(ctx, depth);
        self.tame(e)
    }

    fn tame(&mut self, e: E) -> E {
        if e.b > 64.0 {
            let s = format!("tanh(({}) / {:.1})", e.s, (e.b / 4.0).ceil());
            e.with(s, 1.0, false)
        } else {
            e
        }
    }

    fn expr_raw(&mut self, ctx: &Ctx, depth: u32) -> E {
        if depth == 0 || self.rng.chance(0.2) {
            return self.leaf(ctx);
        }
        // (Reductions nested in an element-wise expression are a frequent tiler gap, E0606: rarer.)
        match self.rng.below(27) {
            0..=8 => {
                let a = self.expr(ctx, depth - 1);
                let b = self.expr(ctx, depth - 1);
                self.binary(a, b)
            }
            9..=14 => {
                let a = self.expr(ctx, depth - 1);
                self.unary(a)
            }
            15..=17 => {
                // A mask: an integer comparison of the index variables, or a float one of deterministic values.
                let c = self.cond(ctx);
                let a = self.expr(ctx, depth - 1);
                let b = if self.rng.chance(0.5) { E::leaf("0.0".into(), 0.0) } else { self.expr(ctx, depth - 1) };
                self.f.mask = true;
                let det = c.det;
                let mut r = a.join(&b, format!("where({}, {}, {})", c.s, a.s, b.s), a.b.max(b.b));
                r.det &= det;
                r.terms = r.terms.max(c.terms);
                r
            }
            18..=20 => self.cast_expr(ctx, depth),
            21 if ctx.len() < 4 && !self.in_reduction => self.inner_reduce(ctx, depth),
            _ => {
                let a = self.expr(ctx, depth - 1);
                let b = self.leaf(ctx);
                self.binary(a, b)
            }
        }
    }

    fn binary(&mut self, a: E, b: E) -> E {
        match self.rng.below(7) {
            0 => a.join(&b, format!("{} + {}", a.s, b.s), a.b + b.b),
            1 => a.join(&b, format!("{} - ({})", a.s, b.s), a.b + b.b),
            2 | 3 => a.join(&b, format!("({}) * ({})", a.s, b.s), a.b * b.b),
            4 => a.join(&b, format!("({}) / (abs({}) + 1.0)", a.s, b.s), a.b),
            5 => a.join(&b, format!("max({}, {})", a.s, b.s), a.b.max(b.b)),
            _ => a.join(&b, format!("min({}, {})", a.s, b.s), a.b.max(b.b)),
        }
    }

    fn unary(&mut self, a: E) -> E {
        let s = &a.s;
        match self.rng.below(20) {
            13 if a.b <= 6.0 => a.with(format!("exp2({s})"), a.b.exp2(), false),
            13 => a.with(format!("log2(abs({s}) + 0.5)"), (a.b + 0.5).log2().abs().max(1.0), false),
            14 => a.with(format!("sin({s})"), 1.0, false),
            15 => a.with(format!("cos({s})"), 1.0, false),
            // Exact: floor of a multiple by a power of two, the floor remainder by a constant.
            // (Of exact values only: a step of a value that may differ in its last bits may land elsewhere.)
            16 if a.det => a.with(format!("floor(({s}) * 4.0) / 4.0"), a.b + 0.25, true),
            17 if a.det => a.with(format!("ceil({s})"), a.b + 1.0, true),
            16 | 17 => a.with(format!("clamp({s}, -0.75, 0.5)"), 0.75, true),
            18 if a.det => a.with(format!("({s}) % 0.75"), 0.75, true),
            18 => a.with(format!("clamp({s}, -0.5, 0.75)"), 0.75, true),
            19 => a.with(format!("clamp({s}, 0.25, -0.25)"), 0.25, true),
            0 if a.b <= 6.0 => a.with(format!("exp({s})"), a.b.exp(), false),
            0 => a.with(format!("exp(tanh({s}))"), 1f64.exp(), false),
            1 => a.with(format!("log(abs({s}) + 0.5)"), (a.b + 0.5).ln().abs().max(0.7), false),
            2 => a.with(format!("sqrt(abs({s}) + 0.25)"), (a.b + 0.25).sqrt(), false),
            3 => a.with(format!("tanh({s})"), 1.0, false),
            4 => a.with(format!("sigmoid({s})"), 1.0, false),
            5 => a.with(format!("silu({s})"), a.b, false),
            6 => a.with(format!("abs({s})"), a.b, true),
            7 => a.with(format!("-({s})"), a.b, true),
            8 => a.with(format!("rsqrt(({s}) * ({s}) + 1.0)"), 1.0, false),
            9 => a.with(format!("relu({s})"), a.b, true),
            10 if a.b <= 8.0 => a.with(format!("softplus({s})"), a.b + 0.7, false),
            10 => a.with(format!("gelu({s})"), a.b, false),
            11 => a.with(format!("pow(abs({s}) + 0.5, 2.0)"), (a.b + 0.5).powi(2), false),
            _ => a.with(format!("max({s}, 0.0) + min({s}, 0.0) * 0.5"), a.b, true),
        }
    }

    /// A `bool` condition over `ctx`.
    fn cond(&mut self, ctx: &Ctx) -> E {
        if !ctx.is_empty() && self.rng.chance(0.6) {
            let (a, ad) = self.rng.pick(ctx).clone();
            let (b, _) = self.rng.pick(ctx).clone();
            let s = match self.rng.below(5) {
                0 => format!("{b} <= {a}"),
                1 => format!("{a} + {b} < {ad}"),
                2 => format!("({a} + 2 * {b}) % 3 == 0"),
                3 => format!("{a} >= {}", self.rng.below(5)),
                _ => format!("{a} != {b}"),
            };
            return E::leaf(s, 0.0);
        }
        // A float comparison, of deterministic values only.
        let mut a = self.leaf(ctx);
        for _ in 0..4 {
            if a.det {
                break;
            }
            a = self.leaf(ctx);
        }
        if !a.det {
            return E::leaf("true".into(), 0.0);
        }
        let op = *self.rng.pick(&[">", "<", ">=", "<="]);
        let rhs = if self.rng.chance(0.5) {
            "0.0".to_string()
        } else {
            let b = self.leaf(ctx);
            if b.det {
                b.s
            } else {
                "0.25".into()
            }
        };
        E::leaf(format!("{} {op} {rhs}", a.s), 0.0)
    }

    /// Casts: a value rounded to bf16, or a deterministic one truncated to an integer and back.
    fn cast_expr(&mut self, ctx: &Ctx, depth: u32) -> E {
        self.f.cast = true;
        let a = self.expr(ctx, depth - 1);
        if a.det && self.rng.chance(0.5) {
            // Exact: the scale is a power of two, the truncation of a deterministic value.
            let m = *self.rng.pick(&[4.0, 8.0, 16.0]);
            return a.with(format!("f32(i32(({}) * {m:.1})) / {m:.1}", a.s), a.b, true);
        }
        self.f.bf16 = true;
        let mut r = a.with(format!("bf16({})", a.s), a.b, a.det);
        r.bf16_rounded |= !a.det;
        r
    }

    /// A reduction inside an index-notation expression, over a new index variable.
    fn inner_reduce(&mut self, ctx: &Ctx, depth: u32) -> E {
        let dims = self.known_dims();
        let fresh_dims: Vec<String> = dims.iter().filter(|d| !ctx.iter().any(|(_, x)| x == *d)).cloned().collect();
        let d = if fresh_dims.is_empty() { self.rng.pick(&dims).clone() } else { self.rng.pick(&fresh_dims).clone() };
        let v = self.fresh(&d.to_lowercase());
        let mut inner = ctx.clone();
        inner.push((v.clone(), d.clone()));
        let n = self.sizes[&d] as u64;
        let work: u64 = ctx.iter().map(|(_, x)| self.size(x) as u64).product::<u64>() * n;
        if work > 1 << 19 {
            return self.leaf(ctx);
        }
        // The body must read the new variable: a product with a leaf over it.
        let x = self.leaf_over(&inner, &d);
        self.in_reduction = true;
        let body = self.expr(&inner, depth.saturating_sub(2));
        self.in_reduction = false;
        let op = *self.rng.pick(&["sum", "max", "min", "mean"]);
        // A sum of a product of two loads is a contraction, which the cube takes only in the forms that
        // `contraction` makes (a sum here may be a matrix-vector product, or multiply expressions of loads:
        // E0606). Sums here add instead.
        let body = if op == "sum" {
            x.join(&body, format!("{} + ({})", x.s, body.s), x.b + body.b)
        } else {
            x.join(&body, format!("({}) * ({})", x.s, body.s), x.b * body.b)
        };
        self.f.reduction = true;
        let b = if op == "sum" { body.b * n as f64 } else { body.b };
        let mut r = body.with(format!("{op}[{v} in 0..{d}]({})", body.s), b, false);
        r.terms = body.terms * n;
        r.tb = r.tb.max(body.b);
        r
    }

    /// A leaf with no literal-1 dims (the cube's epilogue does not take them).
    fn leaf_no1(&mut self, ctx: &Ctx) -> E {
        for _ in 0..8 {
            let e = self.leaf(ctx);
            if !e.s.contains(", 0]") && !e.s.contains("[0") {
                return e;
            }
        }
        E::leaf("0.5".into(), 0.5)
    }

    /// A leaf that reads dim `d` (a new parameter if none in scope does), and another dim of `ctx` too
    /// when there is one (a reduction inside an expression that does not depend on the expression's indices
    /// is a tiler gap, E0606).
    fn leaf_over(&mut self, ctx: &Ctx, d: &str) -> E {
        let dims: Vec<&String> = ctx.iter().map(|(_, x)| x).collect();
        let other = ctx.iter().any(|(_, x)| x != d);
        let cands: Vec<Val> = self
            .pool
            .iter()
            .filter(|v| {
                !v.int
                    && v.shape.iter().any(|x| x == d)
                    && v.shape.iter().all(|x| x == "1" || dims.contains(&x))
                    && (!other || v.shape.iter().any(|x| x != d && x != "1"))
            })
            .cloned()
            .collect();
        let v = if cands.is_empty() || self.rng.chance(0.3) {
            let mut shape: Vec<String> = vec![];
            for (_, x) in ctx {
                if !shape.contains(x) && (x == d || self.rng.chance(0.5)) {
                    shape.push(x.clone());
                }
            }
            if other && shape.len() < 2 {
                if let Some((_, x)) = ctx.iter().find(|(_, x)| x != d) {
                    shape.push(x.clone());
                }
            }
            shape.sort_by_key(|x| order(x));
            self.param(&shape)
        } else {
            self.rng.pick(&cands).clone()
        };
        // The variable of `d` added last is the one used.
        let last = ctx.iter().rev().find(|(_, x)| x == d).cloned();
        self.access_with(&v, ctx, last.as_ref())
    }

    /// A float expression over whole tensors whose shape broadcasts to `shape`.
    fn wexpr(&mut self, shape: &[String], depth: u32) -> E {
        let e = if depth == 0 || self.rng.chance(0.25) {
            self.wleaf(shape)
        } else {
            match self.rng.below(6) {
                0..=2 => {
                    let a = self.wexpr(shape, depth - 1);
                    let b = self.wexpr(shape, depth - 1);
                    self.binary(a, b)
                }
                3 | 4 => {
                    let a = self.wexpr(shape, depth - 1);
                    self.unary(a)
                }
                _ => {
                    let a = self.wexpr(shape, depth - 1);
                    if a.det && self.rng.chance(0.5) {
                        self.f.mask = true;
                        let b = self.wleaf(shape);
                        let c = self.wleaf(shape);
                        if b.det {
                            a.join(&c, format!("where({} > {}, {}, {})", a.s, b.s, a.s, c.s), a.b.max(c.b))
                        } else {
                            a
                        }
                    } else {
                        self.f.cast = true;
                        self.f.bf16 = true;
                        let mut r = a.with(format!("bf16({})", a.s), a.b, a.det);
                        r.bf16_rounded |= !a.det;
                        r
                    }
                }
            }
        };
        self.tame(e)
    }

    /// A whole-tensor leaf that broadcasts to `shape`: a value of a suffix of it (some dims 1), a row vector
    /// unsqueezed, a scalar or a literal.
    fn wleaf(&mut self, shape: &[String]) -> E {
        let r = self.rng.below(12);
        if r == 0 {
            return E::leaf("0.5".into(), 0.5);
        }
        let fits = |v: &Val| {
            !v.int
                && v.shape.len() <= shape.len()
                && v.shape.iter().rev().zip(shape.iter().rev()).all(|(a, b)| a == "1" || a == b)
        };
        let cands: Vec<Val> = self.pool.iter().filter(|v| fits(v)).cloned().collect();
        if r == 1 && shape.len() >= 2 {
            // A vector over the first dim, unsqueezed: [A] -> [A, 1].
            let first = &shape[shape.len() - 2];
            let vs: Vec<Val> =
                self.pool.iter().filter(|v| !v.int && v.shape.len() == 1 && &v.shape[0] == first).cloned().collect();
            if !vs.is_empty() {
                self.f.broadcast = true;
                let v = self.rng.pick(&vs).clone();
                return v.e.with(format!("unsqueeze({}, axis: -1)", v.name), v.e.b, true);
            }
        }
        let v = if cands.is_empty() || self.rng.chance(0.3) {
            let k = self.rng.below(shape.len() + 1);
            let mut s: Vec<String> = shape[shape.len() - k..].to_vec();
            for d in s.iter_mut() {
                if self.rng.chance(0.03) {
                    *d = "1".into();
                }
            }
            self.param(&s)
        } else {
            self.rng.pick(&cands).clone()
        };
        if v.shape.len() < shape.len() || v.shape.iter().any(|d| d == "1") {
            self.f.broadcast = true;
        }
        let mut e = v.e.clone();
        e.s = v.name.clone();
        e
    }

    /// A value of exactly `shape`, over whole tensors.
    fn wfull(&mut self, shape: &[String]) -> E {
        let cands: Vec<Val> = self.pool.iter().filter(|v| !v.int && v.shape == shape).cloned().collect();
        let v =
            if cands.is_empty() || self.rng.chance(0.3) { self.param(shape) } else { self.rng.pick(&cands).clone() };
        let mut e = v.e.clone();
        e.s = v.name.clone();
        e
    }

    /// Adds an output of `shape` assigned `e` (in index notation when `index`), and puts it in scope.
    fn output(&mut self, shape: &[String], e: E, index: bool, int: bool) -> String {
        let name = self.fresh("o");
        let dtype = if int {
            "i32"
        } else {
            match self.rng.below(20) {
                0..=6 => "bf16",
                7 | 8 => "f16",
                _ => "f32",
            }
        };
        if dtype == "bf16" || dtype == "f16" {
            self.f.bf16 = true;
        }
        self.outputs.push(format!("{name}: {}", ty(dtype, shape)));
        let lhs = if index && !shape.is_empty() {
            let vars: Vec<String> = shape.iter().map(|d| d.to_lowercase()).collect();
            format!("{name}[{}]", vars.join(", "))
        } else {
            name.clone()
        };
        self.body.push(format!("{lhs} = {};", e.s));
        let rounded = (dtype == "bf16" || dtype == "f16") && !e.det;
        self.results
            .insert(name.clone(), ResultInfo { terms: e.terms, bf16_rounded: e.bf16_rounded, term_bound: e.tb });
        let mut read = e.clone();
        read.bf16_rounded |= rounded;
        read.s = String::new();
        self.pool.push(Val { name: name.clone(), shape: shape.to_vec(), int, e: read });
        name
    }

    /// The context of index variables for a result of `shape` (variables named after the dims).
    fn ctx_of(shape: &[String]) -> Ctx {
        shape.iter().map(|d| (d.to_lowercase(), d.clone())).collect()
    }

    /// A random result shape over the dims parameters already have (rank 1 to 3, distinct dims).
    fn shape(&mut self) -> Vec<String> {
        let dims = self.known_dims();
        let rank = 1 + self.rng.below(dims.len().min(3));
        let mut s = Vec::new();
        while s.len() < rank {
            let d = self.rng.pick(&dims).clone();
            if !s.contains(&d) {
                s.push(d);
            }
        }
        // Dims in one global order, so that values are read as they are laid out (transposed element-wise
        // reads are a tiler gap, E0606).
        s.sort_by_key(|d| order(d));
        // Keep results small enough for the interpreter.
        while s.len() > 1 && s.iter().map(|d| self.sizes[d]).product::<i64>() > self.max_elems {
            s.pop();
        }
        s
    }

    // ---------------------------------------------------------------------------------------------------
    // Features

    fn ew_index(&mut self) {
        let shape = self.shape();
        let ctx = Self::ctx_of(&shape);
        let e = self.expr(&ctx, 3);
        self.output(&shape, e, true, false);
    }

    fn ew_whole(&mut self) {
        let shape = self.shape();
        let e = self.wexpr(&shape, 3);
        self.output(&shape, e, false, false);
    }

    /// `o[s..] = op[r in 0..R, ..](body)`, rows, columns or everything.
    fn reduce_index(&mut self) {
        self.f.reduction = true;
        let full = self.shape();
        let mut keep = Vec::new();
        let mut red = Vec::new();
        for d in &full {
            if self.rng.chance(0.5) {
                keep.push(d.clone());
            } else {
                red.push(d.clone());
            }
        }
        if red.is_empty() {
            red.push(keep.pop().unwrap_or_else(|| full[0].clone()));
        }
        // Down to a scalar only now and then (a tiler gap for some bodies).
        if keep.is_empty() && full.len() > 1 && self.rng.chance(0.7) {
            keep.push(red.remove(0));
        }
        let ctx: Ctx = full.iter().map(|d| (d.to_lowercase(), d.clone())).collect();
        let x = self.leaf_over(&ctx, &red[0]);
        self.in_reduction = true;
        let body = self.expr(&ctx, 2);
        self.in_reduction = false;
        let mut body = x.join(&body, format!("({}) * ({})", x.s, body.s), x.b * body.b);
        let op = *self.rng.pick(&["sum", "sum", "max", "min", "mean"]);
        if op == "sum" && self.rng.chance(0.3) {
            let c = self.cond(&ctx);
            self.f.mask = true;
            body.det &= c.det;
            body.s = format!("where({}, {}, 0.0)", c.s, body.s);
        }
        let n: u64 = red.iter().map(|d| self.sizes[d] as u64).product();
        let ranges: Vec<String> = red.iter().map(|d| format!("{} in 0..{d}", d.to_lowercase())).collect();
        let b = if op == "sum" { body.b * n as f64 } else { body.b };
        let mut e = body.with(format!("{op}[{}]({})", ranges.join(", "), body.s), b, false);
        e.terms = body.terms * n;
        e.tb = e.tb.max(body.b);
        if self.rng.chance(0.4) {
            let kctx = Self::ctx_of(&keep);
            let l = self.leaf(&kctx);
            e = e.join(&l, format!("{} * {} + {}", e.s, "0.5", l.s), e.b * 0.5 + l.b);
        }
        let e = self.tame(e);
        self.output(&keep, e, true, false);
    }

    /// `sum(x, axis: k)` and friends over whole tensors; `x - max(x, axis: -1, keepdim: true)`.
    fn reduce_builtin(&mut self) {
        self.f.reduction = true;
        let mut shape = self.shape();
        if shape.len() == 1 && self.rng.chance(0.5) {
            let dims = self.known_dims();
            let d = self.rng.pick(&dims).clone();
            if !shape.contains(&d) && self.sizes[&d] * self.sizes[&shape[0]] <= self.max_elems {
                shape.push(d);
            }
        }
        let x = self.wexpr(&shape, 2);
        // The reduced value must have the whole shape: combine it with a value that has.
        let full = self.wfull(&shape);
        let x = self.binary(x, full);
        let r = shape.len();
        // Argmax and argmin of values that every executor computes bit for bit (their positions must be
        // equal): along an axis, or over everything.
        if x.det && self.rng.chance(0.15) {
            let op = *self.rng.pick(&["argmax", "argmin"]);
            let n: u64 = shape.iter().map(|d| self.sizes[d] as u64).product();
            if self.rng.chance(0.3) {
                self.output(&[], E::leaf(format!("{op}({})", x.s), n as f64), false, true);
            } else {
                let ax = self.rng.below(r);
                let axis = if self.rng.chance(0.5) { ax as i64 } else { ax as i64 - r as i64 };
                let out: Vec<String> =
                    shape.iter().enumerate().filter(|(i, _)| *i != ax).map(|(_, d)| d.clone()).collect();
                let e = E::leaf(format!("{op}({}, axis: {axis})", x.s), self.sizes[&shape[ax]] as f64);
                self.output(&out, e, false, true);
            }
            return;
        }
        let op = *self.rng.pick(&["sum", "max", "min", "mean"]);
        if self.rng.chance(0.12) {
            // Over everything: a scalar.
            let n: u64 = shape.iter().map(|d| self.sizes[d] as u64).product();
            let b = if op == "sum" { x.b * n as f64 } else { x.b };
            let mut e = x.with(format!("{op}({})", x.s), b, false);
            e.terms = x.terms * n;
            e.tb = e.tb.max(x.b);
            let e = self.tame(e);
            self.output(&[], e, false, false);
            return;
        }
        let ax = self.rng.below(r);
        let axis = if self.rng.chance(0.5) { ax as i64 } else { ax as i64 - r as i64 };
        let n = self.sizes[&shape[ax]] as u64;
        // (Along the last axis of a matrix: along another, or of a vector, the broadcast back is a tiler gap.)
        if r >= 2 && self.rng.chance(0.3) {
            let (ax, axis) = (r - 1, if self.rng.chance(0.5) { -1 } else { r as i64 - 1 });
            let n = self.sizes[&shape[ax]] as u64;
            let m = *self.rng.pick(&["max", "sum", "mean"]);
            let b = if m == "sum" { x.b * n as f64 } else { x.b };
            let mut e = x.with(format!("({}) - {m}({}, axis: {axis}, keepdim: true)", x.s, x.s), x.b + b, false);
            e.terms = x.terms * n;
            e.tb = e.tb.max(x.b);
            let e = self.tame(e);
            self.output(&shape, e, false, false);
            return;
        }
        let out: Vec<String> = shape.iter().enumerate().filter(|(i, _)| *i != ax).map(|(_, d)| d.clone()).collect();
        let b = if op == "sum" { x.b * n as f64 } else { x.b };
        let mut e = x.with(format!("{op}({}, axis: {axis})", x.s), b, false);
        e.terms = x.terms * n;
        e.tb = e.tb.max(x.b);
        let e = self.tame(e);
        self.output(&out, e, false, false);
    }

    /// A contraction: `@` (2-D, batched, with a transposed operand) or an index-notation sum of products.
    fn contraction(&mut self) {
        self.f.contraction = true;
        self.f.reduction = true;
        let dims = self.known_dims();
        let a = self.rng.pick(&dims).clone();
        let k = self.new_dim(&[]);
        let bdims: Vec<String> = dims.iter().filter(|d| **d != a).cloned().collect();
        let b = if bdims.is_empty() || self.rng.chance(0.3) {
            self.new_dim(std::slice::from_ref(&k))
        } else {
            self.rng.pick(&bdims).clone()
        };
        let (a, b) = if order(&a) <= order(&b) { (a, b) } else { (b, a) };
        let (sa, sb, sk) = (self.sizes[&a], self.sizes[&b], self.sizes[&k]);
        if a == b
            || k == a
            || k == b
            || sa * sb > 20_000
            || sa * sk > 20_000
            || sk * sb > 20_000
            || sa * sb * sk > 1 << 21
        {
            return self.ew_index();
        }
        let n = self.sizes[&k] as u64;
        let batched = self.rng.chance(0.2) && self.sizes[&a] * self.sizes[&b] * 4 <= 20_000 && a != "H" && b != "H";
        let h = "H".to_string();
        if batched {
            self.sizes.entry(h.clone()).or_insert(*[2, 3].get(self.rng.below(2)).unwrap_or(&2));
        }
        let lead: Vec<String> = if batched { vec![h.clone()] } else { vec![] };
        let sh =
            |xs: &[&String]| -> Vec<String> { lead.iter().cloned().chain(xs.iter().map(|s| (*s).clone())).collect() };
        // The cube takes two operands read from memory: bf16, f16 or f32 (its f32 mode), or two dtypes (then
        // multiplied in f32).
        let (dx, dw) = match self.rng.below(10) {
            0 | 1 => ("f16", "f16"),
            2 => ("f32", "f32"),
            3 => ("f32", "bf16"),
            _ => ("bf16", "bf16"),
        };
        let x = self.typed_param(&sh(&[&a, &k]), dx);
        let form = self.rng.below(4);
        let (out_shape, e) = if form == 0 && !batched {
            // Index notation, maybe with a scale in the sum and more outside it (the vector cores' part).
            let w = self.typed_param(&[k.clone(), b.clone()], dw);
            let kv = k.to_lowercase();
            let (av, bv) = (a.to_lowercase(), b.to_lowercase());
            let mut s = format!("sum[{kv} in 0..{k}]({}[{av}, {kv}] * {}[{kv}, {bv}])", x.name, w.name);
            if self.rng.chance(0.5) {
                s = format!("sum[{kv} in 0..{k}]({}[{av}, {kv}] * {}[{kv}, {bv}] * 0.5) + 1.0", x.name, w.name);
            }
            let mut e = E::leaf(s, n as f64 + 1.0);
            e.det = false;
            e.terms = n;
            e.tb = 1.0;
            (vec![a.clone(), b.clone()], e)
        } else {
            let xs = x.name.clone();
            let ws = if form == 1 {
                let w = self.typed_param(&sh(&[&b, &k]), dw);
                format!("transpose({})", w.name)
            } else {
                let w = self.typed_param(&sh(&[&k, &b]), dw);
                w.name
            };
            let mut e = E::leaf(format!("{xs} @ {ws}"), n as f64);
            e.det = false;
            e.terms = n;
            e.tb = 1.0;
            (sh(&[&a, &b]), e)
        };
        // Through a let (maybe stored in bf16), with an epilogue.
        let name = self.fresh("c");
        let bf = self.rng.chance(0.3);
        if bf {
            self.f.bf16 = true;
        }
        let ann = if bf { ": bf16" } else { "" };
        let binders =
            if form == 0 && !batched { format!("[{}, {}]", a.to_lowercase(), b.to_lowercase()) } else { String::new() };
        self.body.push(format!("let {name}{binders}{ann} = {};", e.s));
        let mut ce = e.clone();
        ce.bf16_rounded |= bf;
        let ctx = Self::ctx_of(&out_shape);
        let idx: Vec<String> = out_shape.iter().map(|d| d.to_lowercase()).collect();
        ce.s = format!("{name}[{}]", idx.join(", "));
        let epi = if self.rng.chance(0.6) {
            // The cube's epilogue reads tensors of the result's shape, or rows and columns of a 2-D one.
            let bias = if batched { self.wfull(&out_shape) } else { self.leaf_no1(&ctx) };
            let bias = if batched { E { s: format!("{}[{}]", bias.s, idx.join(", ")), ..bias } } else { bias };
            let t = self.unary(ce.clone());
            let t = self.tame(t);
            t.join(&bias, format!("{} + {}", t.s, bias.s), t.b + bias.b)
        } else {
            ce.clone()
        };
        self.pool.push(Val { name: name.clone(), shape: out_shape.clone(), int: false, e: ce });
        let epi = self.tame(epi);
        self.output(&out_shape, epi, true, false);
    }

    /// A dim no parameter has yet (and not in `not`), with a random size: `K`, `L` or `J`.
    fn new_dim(&mut self, not: &[String]) -> String {
        let known = self.known_dims();
        for d in ["K", "L", "J"] {
            let d = d.to_string();
            if known.contains(&d) || not.contains(&d) {
                continue;
            }
            let s = *self.rng.pick(&SIZES);
            self.sizes.insert(d.clone(), s);
            return d;
        }
        // All taken: reuse one (the caller then checks that the dims differ).
        self.rng.pick(&["K", "L", "J"]).to_string()
    }

    /// A gather through an `i32` index parameter (in range: `random_args` sees the use).
    fn gather(&mut self) {
        self.f.gather = true;
        let dims = self.known_dims();
        let d = self.rng.pick(&dims).clone();
        let n = "N".to_string();
        self.sizes.entry(n.clone()).or_insert(*self.rng.pick(&[1, 3, 7, 17, 33, 100]));
        self.sizes.entry("V".into()).or_insert(*self.rng.pick(&[1, 2, 5, 17, 64, 129]));
        if d == n || d == "V" || d == "J" || self.sizes[&d] * self.sizes["N"] > self.max_elems {
            return self.ew_index();
        }
        let ids = self.fresh("ids");
        let table = self.param(&["V".to_string(), d.clone()]);
        let (nv, dv) = (n.to_lowercase(), d.to_lowercase());
        let ctx: Ctx = vec![(nv.clone(), n.clone()), (dv.clone(), d.clone())];
        // The index: `ids[n]`, `ids[n] / 2` (random_args makes its values in range for both), or a sum of
        // the rows of a 2-D index `ids[n, j]`.
        let g = match self.rng.below(4) {
            0 => {
                self.params.push(format!("{ids}: i32[{n}]"));
                E::leaf(format!("{}[{ids}[{nv}] / 2, {dv}]", table.name), 1.0)
            }
            1 => {
                self.sizes.entry("J".into()).or_insert(*self.rng.pick(&[1, 2, 3, 5]));
                self.params.push(format!("{ids}: i32[{n}, J]"));
                let mut e = E::leaf(format!("sum[j in 0..J]({}[{ids}[{nv}, j], {dv}])", table.name), 5.0);
                e.det = false;
                e.terms = self.sizes["J"] as u64;
                e.tb = 1.0;
                self.f.reduction = true;
                e
            }
            _ => {
                self.params.push(format!("{ids}: i32[{n}]"));
                E::leaf(format!("{}[{ids}[{nv}], {dv}]", table.name), 1.0)
            }
        };
        // The index parameter's dim: make `N` known by an index read.
        let ids_shape = if g.s.contains("j in 0..J") { vec![n.clone(), "J".to_string()] } else { vec![n.clone()] };
        self.pool.push(Val { name: ids.clone(), shape: ids_shape, int: true, e: E::leaf(String::new(), 8.0) });
        // (A gather summed over `j` summed again is a tiler gap, E0606.)
        if self.rng.chance(0.4) && !g.s.starts_with("sum[j") {
            let w = self.leaf(&vec![(dv.clone(), d.clone())]);
            let red = self.sizes[&d] as u64;
            let mut e = g.join(&w, format!("sum[{dv} in 0..{d}]({} * {})", g.s, w.s), red as f64 * w.b);
            e.det = false;
            e.terms = red;
            e.tb = e.tb.max(w.b);
            self.f.reduction = true;
            let e = self.tame(e);
            self.output(std::slice::from_ref(&n), e, true, false);
        } else {
            let o = self.expr(&ctx, 2);
            let e = g.join(&o, format!("{} * ({})", g.s, o.s), o.b);
            self.output(&[n, d], e, true, false);
        }
    }

    /// `softmax`/`logsumexp` over an axis, maybe of a causally masked score.
    fn softmax(&mut self) {
        self.f.softmax = true;
        self.f.reduction = true;
        let dims = self.known_dims();
        let a = self.rng.pick(&dims).clone();
        let b = self.rng.pick(&dims).clone();
        // Over a whole vector the softmax's reduction feeds its own group: a tiler gap (E0606); rows only.
        if a == b || self.sizes[&a] * self.sizes[&b] > self.max_elems {
            return self.ew_index();
        }
        let shape = if order(&a) <= order(&b) { vec![a, b] } else { vec![b, a] };
        let ctx = Self::ctx_of(&shape);
        let x = self.expr(&ctx, 2);
        let s = self.fresh("s");
        let last = shape.last().cloned().unwrap_or_default();
        let n = self.sizes[&last] as u64;
        if shape.len() == 2 && self.rng.chance(0.5) {
            // Causal: column j of row i is kept when j <= i (row 0 keeps column 0, no row is all -inf).
            self.f.mask = true;
            let (av, bv) = (shape[0].to_lowercase(), shape[1].to_lowercase());
            let (ad, bd) = (&shape[0], &shape[1]);
            self.body.push(format!("let {s}[{av} in 0..{ad}, {bv} in 0..{bd}] = where({bv} <= {av}, {}, -inf);", x.s));
        } else {
            let idx: Vec<String> = shape.iter().map(|d| format!("{} in 0..{d}", d.to_lowercase())).collect();
            self.body.push(format!("let {s}[{}] = {};", idx.join(", "), x.s));
        }
        let lse = self.rng.chance(0.3);
        let mut e = if lse {
            x.with(format!("logsumexp({s}, axis: -1)"), x.b + (n as f64).ln() + 1.0, false)
        } else {
            x.with(format!("softmax({s}, axis: -1)"), 1.0, false)
        };
        e.terms = x.terms * n;
        e.tb = 1.0; // exp(x - max) <= 1
        let out: Vec<String> = if lse { shape[..shape.len() - 1].to_vec() } else { shape };
        self.output(&out, e, false, false);
    }

    /// Integer results: a truncated deterministic value, a count.
    fn int_result(&mut self) {
        self.f.cast = true;
        let shape = self.shape();
        let ctx = Self::ctx_of(&shape);
        if self.rng.chance(0.5) && shape.len() >= 2 {
            self.f.reduction = true;
            let c = self.cond(&ctx);
            let keep = &shape[..shape.len() - 1];
            let last = shape.last().cloned().unwrap_or_default();
            let e = E::leaf(format!("sum[{} in 0..{last}](i32({}))", last.to_lowercase(), c.s), 0.0);
            self.output(keep, e, true, true);
            return;
        }
        let mut x = self.leaf(&ctx);
        for _ in 0..8 {
            if x.det {
                break;
            }
            x = self.leaf(&ctx);
        }
        if !x.det {
            x = E::leaf("1.5".into(), 1.5);
        }
        let k = *self.rng.pick(&[3, 5, 7]);
        match self.rng.below(4) {
            0 => {
                let e = E::leaf(format!("(i32(({}) * 16.0) + 100) % {k} - i32(({}) * 4.0)", x.s, x.s), 0.0);
                self.output(&shape, e, true, true);
            }
            1 => {
                // Integer arithmetic on an i32 parameter (values 0..8): floor division and remainder of
                // negative values, min, max, abs.
                let q = self.fresh("q");
                let dims: Vec<String> = shape.clone();
                self.params.push(format!("{q}: {}", ty("i32", &dims)));
                let vars: Vec<String> = dims.iter().map(|d| d.to_lowercase()).collect();
                let qa = format!("{q}[{}]", vars.join(", "));
                let m = *self.rng.pick(&[2, 3, 5]);
                let e = match self.rng.below(4) {
                    0 => format!("({qa} - 4) / {m} + ({qa} - 5) % {m}"),
                    1 => format!("max({qa} * {k} - 20, -{m}) / 2 - min({qa}, {m})"),
                    2 => format!("abs({qa} - 4) * ({qa} % {m}) - {qa} / {m}"),
                    _ => format!("where({qa} > {m}, ({qa} - 9) / {m}, -{qa} % {m})"),
                };
                let as_float = self.rng.chance(0.3);
                if as_float {
                    let e = E::leaf(format!("f32({e}) / 4.0 + {x}", x = x.s), x.b + 8.0);
                    self.output(&shape, e, true, false);
                } else {
                    self.output(&shape, E::leaf(e, 0.0), true, true);
                }
            }
            2 => {
                // A bool result, of a comparison of exact values.
                let c = self.cond(&ctx);
                let name = self.fresh("o");
                self.outputs.push(format!("{name}: {}", ty("bool", &shape)));
                let vars: Vec<String> = shape.iter().map(|d| d.to_lowercase()).collect();
                self.body.push(format!("{name}[{}] = {} || {} == 0.0;", vars.join(", "), c.s, x.s));
                self.results.insert(name, ResultInfo::default());
            }
            _ => {
                let e = E::leaf(format!("i32(floor(({}) * 8.0)) / {k}", x.s), 0.0);
                self.output(&shape, e, true, true);
            }
        }
    }

    /// A library operation along the last axis: `cumsum`, `topk`, `argsort` (the last two of exact values
    /// only: values that may differ in their last bits may sort differently).
    fn library(&mut self) {
        self.f.library = true;
        let mut shape = self.shape();
        if shape.len() > 2 {
            shape.truncate(2);
        }
        let x = if self.rng.chance(0.5) {
            self.wfull(&shape)
        } else {
            let x = self.wexpr(&shape, 2);
            let full = self.wfull(&shape);
            self.binary(x, full)
        };
        let last = shape.last().cloned().unwrap_or_default();
        let n = self.sizes[&last];
        let r = self.rng.below(3);
        if r == 0 || !x.det {
            let excl = if self.rng.chance(0.3) { ", exclusive: true" } else { "" };
            let mut e = x.with(format!("cumsum({}, axis: -1{excl})", x.s), x.b * n as f64, false);
            e.terms = x.terms * n as u64;
            e.tb = e.tb.max(x.b);
            let e = self.tame(e);
            self.output(&shape, e, false, false);
            return;
        }
        if r == 1 {
            let k = *self.rng.pick(&[1, 2, 4, 8]);
            let k = k.min(n);
            let (v, i) = (self.fresh("tv"), self.fresh("ti"));
            self.body.push(format!("let ({v}, {i}) = topk({}, {k});", x.s));
            let mut out = shape.clone();
            if let Some(l) = out.last_mut() {
                *l = k.to_string();
            }
            let ov = self.fresh("o");
            let oi = self.fresh("o");
            self.outputs.push(format!("{ov}: {}", ty("f32", &out)));
            self.outputs.push(format!("{oi}: {}", ty("i32", &out)));
            self.body.push(format!("{ov} = {v};"));
            self.body.push(format!("{oi} = {i};"));
            self.results.insert(ov, ResultInfo::default());
            self.results.insert(oi, ResultInfo::default());
            return;
        }
        let desc = if self.rng.chance(0.5) { ", descending: true" } else { "" };
        let e = E::leaf(format!("argsort({}{desc})", x.s), 0.0);
        self.output(&shape, e, false, true);
    }

    /// An `inout` parameter updated in place.
    fn inout(&mut self) {
        self.f.inout = true;
        let shape = self.shape();
        let name = self.fresh("m");
        let dtype = if self.rng.chance(0.4) { "bf16" } else { "f32" };
        if dtype == "bf16" {
            self.f.bf16 = true;
        }
        self.params.push(format!("{name}: inout {}", ty(dtype, &shape)));
        let ctx = Self::ctx_of(&shape);
        let e = if self.rng.chance(0.3) {
            // Whole-tensor form.
            let e = self.wexpr(&shape, 2);
            self.body.push(format!("{name} = {name} * 0.9 + 0.1 * ({});", e.s));
            e
        } else {
            let e = self.expr(&ctx, 2);
            let vars: Vec<String> = shape.iter().map(|d| d.to_lowercase()).collect();
            let m = format!("{name}[{}]", vars.join(", "));
            self.body.push(format!("{m} = 0.9 * {m} + 0.1 * ({});", e.s));
            e
        };
        self.results
            .insert(name.clone(), ResultInfo { terms: e.terms, bf16_rounded: e.bf16_rounded, term_bound: e.tb });
        // Later statements read the new value, as stored (rounded to bf16 for a bf16 inout).
        let mut read = e.with(String::new(), 0.9 + 0.1 * e.b, e.det);
        read.bf16_rounded |= dtype == "bf16" && !e.det;
        self.pool.push(Val { name, shape, int: false, e: read });
    }
}
/// The kernel of `seed`.
pub fn generate(seed: u64) -> Program {
    let mut rng = Rng::new(seed);
    let mut sizes = BTreeMap::new();
    // A and B small enough that A * B stays below 20_000; or now and then a few rows too wide for the
    // vector cores' buffers (walked in column chunks).
    let wide = rng.chance(0.06);
    if wide {
        sizes.insert("A".to_string(), *rng.pick(&[1, 2, 3]));
        sizes.insert("B".to_string(), *rng.pick(&[4097, 20011, 40003]));
    }
    if !wide {
        loop {
            let a = *rng.pick(&SIZES);
            let b = *rng.pick(&SIZES);
            if a * b <= 20_000 {
                sizes.insert("A".to_string(), a);
                sizes.insert("B".to_string(), b);
                break;
            }
        }
    }
    let mut g = Gen {
        rng,
        sizes,
        params: vec![],
        outputs: vec![],
        body: vec![],
        pool: vec![],
        results: BTreeMap::new(),
        f: Features::default(),
        next: 0,
        max_elems: if wide { 130_000 } else { 20_000 },
        in_reduction: false,
    };
    g.param(&["A".to_string(), "B".to_string()]);
    let n = 1 + g.rng.below(4);
    for _ in 0..n {
        match g.rng.below(13) {
            12 => g.library(),
            0 | 1 => g.ew_index(),
            2 => g.ew_whole(),
            3 | 4 => g.contraction(),
            5 => g.reduce_index(),
            6 => g.reduce_builtin(),
            7 | 8 => g.gather(),
            9 => g.softmax(),
            10 => g.int_result(),
            _ => g.inout(),
        }
    }
    let mut src = String::new();
    let _ = writeln!(src, "// generated by kc_tests::gen, seed {seed}");
    let outs = if g.outputs.is_empty() { String::new() } else { format!(" -> ({})", g.outputs.join(", ")) };
    let _ = writeln!(src, "kernel k{seed}({}){outs} {{", g.params.join(", "));
    for s in &g.body {
        let _ = writeln!(src, "    {s}");
    }
    src.push_str("}\n");
    // Launch with the dims the parameters introduce.
    let mut used: Vec<String> = Vec::new();
    for p in &g.params {
        if let Some(open) = p.find('[') {
            for d in p[open + 1..p.len() - 1].split(", ") {
                used.push(d.to_string());
            }
        }
    }
    let dims = g.sizes.iter().filter(|(k, _)| used.contains(k)).map(|(k, v)| (k.clone(), *v)).collect();
    Program { seed, source: src, dims, features: g.f, results: g.results }
}
