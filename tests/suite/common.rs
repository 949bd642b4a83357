//! Helpers shared by the suite: compiling `.ker` files, seeded random inputs, running the interpreter and
//! comparing its outputs against reference values with a stated tolerance.

#![allow(dead_code)]

use half::{bf16, f16};
use kc_frontend::{Loader, SourceMap};
use kc_ir::launch::Args;
use kc_ir::{DType, Diagnostic, Graph, Program, Tensor, TensorData};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

thread_local! {
    /// The sources of the last file [`compile_ok`] compiled on this thread, to render launch errors.
    static LAST_SOURCES: RefCell<Option<SourceMap>> = const { RefCell::new(None) };
}

/// The workspace root (the folder above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of `kernels/NAME.ker`.
pub fn kernel_path(name: &str) -> PathBuf {
    repo_root().join("kernels").join(format!("{name}.ker"))
}

/// Reads `use`d files from the file system, relative to the folder of the file that holds the `use`.
pub struct FsLoader;

impl Loader for FsLoader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let dir = Path::new(from).parent().unwrap_or_else(|| Path::new("."));
        let full = dir.join(path);
        let name = full.to_string_lossy().into_owned();
        match std::fs::read_to_string(&full) {
            Ok(text) => Ok((name, text)),
            Err(e) => Err(format!("cannot read `{name}`: {e}")),
        }
    }
}

/// Compiles a `.ker` file: the source map (for rendering), the program and every diagnostic.
pub fn compile_file(path: impl AsRef<Path>) -> (SourceMap, Program, Vec<Diagnostic>) {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sources = SourceMap::new();
    let root = sources.add(path.to_string_lossy().into_owned(), text);
    let (program, diags) = kc_frontend::compile(&mut sources, root, &FsLoader);
    (sources, program, diags)
}

/// Compiles a `.ker` file that must compile without errors; panics with the rendered diagnostics otherwise.
pub fn compile_ok(path: impl AsRef<Path>) -> Program {
    let path = path.as_ref();
    let (sources, program, diags) = compile_file(path);
    if diags.iter().any(|d| d.is_error()) {
        panic!("{} does not compile:\n{}", path.display(), kc_frontend::render(&diags, &sources, false));
    }
    LAST_SOURCES.with(|s| *s.borrow_mut() = Some(sources));
    program
}

/// Compiles `kernels/FILE.ker` and returns its kernel `name`, panicking if it is missing.
pub fn kernel(file: &str, name: &str) -> Graph {
    let program = compile_ok(kernel_path(file));
    match program.kernel(name) {
        Some(g) => g.clone(),
        None => {
            let have: Vec<&str> = program.kernels.iter().map(|k| k.name.as_str()).collect();
            panic!("kernels/{file}.ker has no kernel `{name}` (it has: {have:?})")
        }
    }
}

/// A small seeded generator (SplitMix64): reproducible inputs without a dependency.
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed ^ 0x5DEE_CE66_D1CE_4E5B }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let x = lo as f64 + (hi as f64 - lo as f64) * self.unit();
        // Rounding to f32 may land on `hi`; keep the interval half-open.
        let x = x as f32;
        if x >= hi {
            lo
        } else {
            x
        }
    }

    /// Uniform integer in `[lo, hi)` (half-open, like `lo..hi`).
    pub fn int(&mut self, lo: i32, hi: i32) -> i32 {
        assert!(lo < hi, "Rng::int: empty range {lo}..{hi}");
        let n = (hi as i64 - lo as i64) as u64;
        (lo as i64 + (self.next_u64() % n) as i64) as i32
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates).
    pub fn perm(&mut self, n: usize) -> Vec<i32> {
        let mut v: Vec<i32> = (0..n as i32).collect();
        for i in (1..n).rev() {
            let j = self.int(0, i as i32 + 1) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// A random tensor: floats uniform in `[-1, 1)`, rounded into `bf16`/`f16` storage as `dtype` says;
/// `i32` uniform in `0..16`; `bool` fair coin flips.
pub fn rand_tensor(rng: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
    rand_tensor_in(rng, dtype, shape, -1.0, 1.0)
}

/// Like [`rand_tensor`], with floats uniform in `[lo, hi)`.
pub fn rand_tensor_in(rng: &mut Rng, dtype: DType, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match dtype {
        DType::F32 => TensorData::F32((0..n).map(|_| rng.uniform(lo, hi)).collect()),
        DType::BF16 => TensorData::BF16((0..n).map(|_| bf16::from_f32(rng.uniform(lo, hi))).collect()),
        DType::F16 => TensorData::F16((0..n).map(|_| f16::from_f32(rng.uniform(lo, hi))).collect()),
        DType::I32 => TensorData::I32((0..n).map(|_| rng.int(0, 16)).collect()),
        DType::Bool => TensorData::Bool((0..n).map(|_| rng.next_u64() & 1 == 1).collect()),
    };
    Tensor::new(shape.to_vec(), data).expect("shape and data agree")
}

/// An `i32` tensor from values.
pub fn i32_tensor(shape: &[usize], v: Vec<i32>) -> Tensor {
    Tensor::from_i32(shape.to_vec(), v).expect("i32_tensor: length does not match the shape")
}

/// Launch arguments from `(name, tensor)` pairs and `(name, value)` dims.
pub fn args(tensors: &[(&str, &Tensor)], dims: &[(&str, i64)]) -> Args {
    let mut a = Args::default();
    for (n, t) in tensors {
        a.tensors.insert(n.to_string(), (*t).clone());
    }
    for (n, v) in dims {
        a.dims.insert(n.to_string(), *v);
    }
    a
}

/// Runs `graph` in the reference interpreter; panics with the rendered diagnostics on error.
pub fn run(graph: &Graph, args: &Args) -> Vec<(String, Tensor)> {
    match kc_ir::interp::run(graph, args) {
        Ok(r) => r,
        Err(diags) => {
            // Render against the sources of the last compile on this thread (the kernel's own, in this suite).
            let rendered = LAST_SOURCES.with(|s| match &*s.borrow() {
                Some(sources) => kc_frontend::render(&diags, sources, false),
                None => diags.iter().map(|d| format!("{d}\n")).collect(),
            });
            panic!("kernel `{}` failed to run:\n{rendered}", graph.name)
        }
    }
}

/// Runs `graph` and checks that its results are exactly `names`, in order; returns them in that order.
pub fn run_named(graph: &Graph, args: &Args, names: &[&str]) -> Vec<Tensor> {
    let res = run(graph, args);
    let got: Vec<&str> = res.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, names, "kernel `{}`: results (declared outputs, then inouts) in the wrong order", graph.name);
    res.into_iter().map(|(_, t)| t).collect()
}

/// A tolerance: `|got - want| <= atol + rtol * |want|`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

impl Tol {
    pub const fn new(rtol: f64, atol: f64) -> Tol {
        Tol { rtol, atol }
    }

    /// Bit-for-bit: copies, integers, and values the kernel only moves around.
    pub const EXACT: Tol = Tol::new(0.0, 0.0);

    /// An `f32` output computed in `f32` from (already rounded) inputs, against an `f64` reference:
    /// a few f32 ulps per operation over short reductions stays far below 1e-4 relative; the absolute
    /// part covers results that cancel to near zero (their error scales with the terms, not the result).
    pub const F32: Tol = Tol::new(1e-4, 1e-5);

    /// A `bf16` output computed in `f32` and rounded once when stored: rounding to nearest-even costs at
    /// most half a bf16 ulp, 2^-8 of the value, so 2^-7 leaves a factor of two for the f32 arithmetic
    /// before the rounding. The absolute part covers values that cancel to near zero from O(1) terms
    /// (their f32 error is ~1e-6, and a flip of the final rounding near zero is tiny in absolute terms).
    pub const BF16: Tol = Tol::new(1.0 / 128.0, 1e-4);

    /// An `f16` output computed in `f32` and rounded once: half an f16 ulp is 2^-11 of the value.
    pub const F16: Tol = Tol::new(1.0 / 1024.0, 1e-5);

    /// The tolerance for an output of storage type `dtype` computed in `f32` with no rounded
    /// intermediates; integers and bools are exact.
    pub fn for_dtype(dtype: DType) -> Tol {
        match dtype {
            DType::F32 => Tol::F32,
            DType::BF16 => Tol::BF16,
            DType::F16 => Tol::F16,
            DType::I32 | DType::Bool => Tol::EXACT,
        }
    }
}

/// Compares a tensor against reference values elementwise. NaN must meet NaN, an infinity the same
/// infinity. On failure, reports the worst element (by how far past its tolerance it is), how many
/// elements fail, and the tolerance.
pub fn assert_close(name: &str, got: &Tensor, want: &[f64], tol: Tol) {
    assert_eq!(
        got.len(),
        want.len(),
        "`{name}`: {} elements (shape {:?}), reference has {}",
        got.len(),
        got.shape,
        want.len()
    );
    let mut worst: Option<(usize, f64)> = None; // (index, excess over the tolerance)
    let mut failures = 0usize;
    for (i, &w) in want.iter().enumerate() {
        let g = got.get_f64(i);
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol.atol + tol.rtol * w.abs()
        };
        if !ok {
            failures += 1;
            let excess = if g.is_finite() && w.is_finite() {
                (g - w).abs() - (tol.atol + tol.rtol * w.abs())
            } else {
                f64::INFINITY
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, _)) = worst {
        let g = got.get_f64(i);
        let w = want[i];
        panic!(
            "`{name}` ({}{:?}): {failures} of {} elements out of tolerance; worst at {:?} (flat {i}): \
             got {g:e}, want {w:e}, |diff| = {:e} > atol {:e} + rtol {:e} * |want| = {:e}",
            got.dtype(),
            got.shape,
            want.len(),
            unflatten(i, &got.shape),
            (g - w).abs(),
            tol.atol,
            tol.rtol,
            tol.atol + tol.rtol * w.abs()
        );
    }
}

/// Compares an integer tensor exactly, reporting the first difference.
pub fn assert_i32_eq(name: &str, got: &Tensor, want: &[i32]) {
    let TensorData::I32(g) = &got.data else {
        panic!("`{name}`: expected an i32 tensor, got {} {:?}", got.dtype(), got.shape);
    };
    assert_eq!(
        g.len(),
        want.len(),
        "`{name}`: {} elements (shape {:?}), reference has {}",
        g.len(),
        got.shape,
        want.len()
    );
    if let Some(i) = (0..g.len()).find(|&i| g[i] != want[i]) {
        panic!(
            "`{name}` (i32{:?}): first difference at {:?} (flat {i}): got {}, want {}\n got: {g:?}\nwant: {want:?}",
            got.shape,
            unflatten(i, &got.shape),
            g[i],
            want[i]
        );
    }
}

/// Checks a result's dtype and shape.
pub fn assert_shape(name: &str, got: &Tensor, dtype: DType, shape: &[usize]) {
    assert_eq!(
        (got.dtype(), got.shape.as_slice()),
        (dtype, shape),
        "`{name}`: got {} {:?}, want {dtype} {shape:?}",
        got.dtype(),
        got.shape
    );
}

/// A flat row-major index as a multi-index.
pub fn unflatten(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// Rounds an f64 to the nearest bf16 (ties to even), as a store does, and widens it back. Rounds the f64
/// directly (no detour through f32, which would round twice).
pub fn round_bf16(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    // The exponent of x (x is finite and non-zero), clamped to bf16's smallest normal exponent so that
    // subnormals get the subnormal ulp 2^-133.
    let e = ((x.abs().to_bits() >> 52) as i64 - 1023).max(-126);
    let e = if x.abs() < f64::MIN_POSITIVE { -126 } else { e };
    let ulp = 2f64.powi(e as i32 - 7);
    let r = (x / ulp).round_ties_even() * ulp;
    // Past the largest bf16, (2 - 2^-7) * 2^127, a value rounds to infinity.
    if r.abs() >= 2f64.powi(128) {
        f64::INFINITY.copysign(x)
    } else {
        r
    }
}

/// Checks a tile program with the verifier, failing with every error and the program's text.
pub fn verify_tiled(g: &Graph, tp: &kc_ir::tile::TileProgram, target: &kc_ir::target::Target) {
    if let Err(errs) = kc_ir::tile::verify::verify(tp, target) {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        panic!(
            "{} on {} ({:?}): the tile program does not verify:\n{}\n{}",
            g.name,
            target.name,
            tp.dims,
            msgs.join("\n"),
            kc_ir::tile::print::print_program(tp)
        );
    }
}

/// Asserts that the simulator's tensor `got` is the interpreter's `want` bit for bit (shape, dtype, and every
/// value's bits; NaNs match NaNs). `what` names it in the failure, with the first differing element.
pub fn assert_same_bits(what: &str, want: &Tensor, got: &Tensor) {
    assert_eq!(want.shape, got.shape, "{what}: shape");
    assert_eq!(want.dtype(), got.dtype(), "{what}: dtype");
    let (wv, gv) = (want.to_f64_vec(), got.to_f64_vec());
    for (i, (a, b)) in wv.iter().zip(&gv).enumerate() {
        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{what}[{i}]: interp {a} vs sim {b}");
    }
}

/// The statements of a program (nested bodies included) for which `f` holds.
pub fn count_stmts(s: &[kc_ir::tile::Stmt], f: &dyn Fn(&kc_ir::tile::Stmt) -> bool) -> usize {
    use kc_ir::tile::Stmt;
    s.iter()
        .map(|x| {
            f(x) as usize
                + match x {
                    Stmt::For { body, .. } | Stmt::If { then: body, .. } => count_stmts(body, f),
                    _ => 0,
                }
        })
        .sum()
}

/// Fuses `g` (with its schedule hints), binds `args`, tiles the whole kernel for `target` and verifies the
/// tile program; panics with the reason if any step fails.
pub fn tile_kernel(g: &Graph, args: &Args, target: &kc_ir::target::Target) -> kc_ir::tile::TileProgram {
    let b = kc_ir::launch::bind(g, args).unwrap_or_else(|e| panic!("{}: bind: {e:?}", g.name));
    let (_, tp, _, _) = kc_ir::passes::tile::fuse_and_tile(g, &b, target)
        .unwrap_or_else(|e| panic!("{} on {} at {:?}: {e}", g.name, target.name, b.dims));
    verify_tiled(g, &tp, target);
    tp
}

/// Compiles `src` (written to a temporary file named after `name`), which must compile cleanly.
/// Each call gets its own file (the tests run in parallel, and several modules compile kernels of the same
/// name), removed once compiled.
pub fn compile_ok_src(name: &str, src: &str) -> kc_ir::Program {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("kc_suite_{}_{n}_{name}.ker", std::process::id()));
    std::fs::write(&path, src).expect("write the kernel");
    let prog = compile_ok(&path);
    let _ = std::fs::remove_file(&path);
    prog
}
