//! Lowering tile IR to Cranelift IR.
//!
//! One function per core program, `fn(ctx: *mut CoreCtx) -> i32` ([`kc_runtime::native`]): the entry block
//! loads the GM and buffer base addresses and the core index from `ctx`; every scalar register is a
//! Cranelift variable (`i64`); loops stay loops. A statement's regions are resolved once (base address of
//! the slot, offset, row stride) and bounds-checked once for the whole `rows × cols` window: an access
//! outside its buffer slot or GM tensor — which a verified program never makes, but data-dependent offsets
//! could — stops the core with an internal error naming the statement, instead of touching memory.
//!
//! - Intra-core flags and barriers emit nothing: a core's statements run in program order on the host, which
//!   is one of the orders the flags allow (the verifier proves the program race-free).
//! - Cross-core flags call [`kc_rt_cross_set`](kc_runtime::native::kc_rt_cross_set) /
//!   [`kc_rt_cross_wait`](kc_runtime::native::kc_rt_cross_wait), which may suspend the core's coroutine.
//! - `Copy` and `Gather` call the runtime's copy routines (row by row, converting float dtypes with
//!   round-to-nearest-even); `Mmad` calls the host cube routine [`kc_mmad`](kc_runtime::host::mmad);
//!   `Reduce` and `Library` call host routines with the interpreter's order and NaN rules.
//! - `Vector` statements are compiled inline. Sub-expressions that do not depend on the column (constants,
//!   scalar-unit values, `Row`, per-row broadcasts `ReadRow`) are computed once per row (or once per
//!   statement) as scalars. When every column-dependent node is a float or a mask and the destination is
//!   `f32` or `bf16`, the column loop runs on `f32x4` vectors, two per iteration, with a scalar tail that
//!   uses the same vector code on lane 0 (so a tail element gets the same bits as a body element).
//!   Otherwise the statement is compiled element by element on scalars (`f32`, `i64`, `i8` booleans) with
//!   the interpreter's integer semantics (64-bit wrapping arithmetic, floor division, a division by zero
//!   stops the launch with `E0403`-style `DivByZero`). bf16 values are widened and rounded
//!   (nearest-even) in registers. A statement whose destination buffer is also read at another window is
//!   computed into a stack temporary first (a statement reads all its inputs before it writes).
//! - In a SIMD statement, the row-invariant values are splatted once per row into a stack slot and loaded
//!   where used (Cranelift would otherwise recompute them inside the column loops). A SIMD statement with
//!   column-dependent `exp`s (or `silu`s) or a bf16 destination runs by chunks of [`EXP_CHUNK`] columns: the
//!   argument of each `exp` goes to a scratch row (or straight into an f32 destination when the statement is
//!   one `exp`) that [`kc_rt_exp_f32`](kc_runtime::host::rowmath::kc_rt_exp_f32) exponentiates in place 16
//!   lanes at a time (`silu`: [`kc_rt_silu_f32`](kc_runtime::host::rowmath::kc_rt_silu_f32)), then the
//!   statement reads it from there; bf16 results go to an f32 scratch row that
//!   [`kc_rt_f32_to_bf16`](kc_runtime::native::kc_rt_f32_to_bf16) rounds into the destination. Both routines
//!   compute the bits of the inline code (`codegen/tests/math.rs`).
//! - Row routines ([`RowForm`]): a vector statement `exp(src - s)` into `f32`, or `src op s` / `s op src`
//!   (`+ - * /`) into `f32` or bf16, with `src` an element read of an `f32`/bf16 window and `s` a row-invariant
//!   float, or `silu(a) * b` of two `f32` rows into `f32` or bf16 (SwiGLU's gate), or a causal mask
//!   `where(a + c <= b, k · src, fill)` into `f32`, is one host call per row ([`rowmath::kc_rt_row_exp`],
//!   [`rowmath::kc_rt_row_scalar`], [`rowmath::kc_rt_row_silu_mul`], [`rowmath::kc_rt_row_mask`], 16 lanes at
//!   a time, the same bits); `exp(src - s)` followed by the row sum of its destination computes the sum in the
//!   same call ([`Gen::exp_sum`]), without storing the `exp`'s row when nothing reads it
//!   ([`dead_exp_stores`]); in a chunked statement, an `exp` whose argument has that form is computed
//!   from the source row straight into its scratch row.
//! - Statements over a column of a UB buffer (`rows × 1`, `ld 1`) are compiled as statements over one row
//!   ([`columns_as_rows`]), so that they run along the row's lanes.
//! - Transcendental functions are inline `f32x4` code ([`crate::math`]: evaluated in f64 lanes and rounded
//!   once, within 1 ulp of the interpreter); `min`/`max` propagate NaN as the interpreter does; bf16 and
//!   f16 conversions are done in registers with round-to-nearest-even. `pow` and float `%` call `libm`
//!   through the runtime (exact, as the interpreter).

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::Endianness;
use cranelift_codegen::ir::{
    types, AbiParam, Block, FuncRef, InstBuilder, MemFlagsData, Signature, StackSlot, StackSlotData, StackSlotKind,
    Type, UserFuncName, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use kc_ir::diag::{Code, Diagnostic};
use kc_ir::dtype::DType;
use kc_ir::graph::{BinOp, Graph, ReduceOp, UnOp};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::span::Span;
use kc_ir::tile::{
    BufId, Launch, LibOp, Loc, Region, SBin, SExpr, SVar, Stmt, TensorId, TensorRole, TileProgram, VExpr,
};
use kc_runtime::gm::Results;
use kc_runtime::host::rowmath;
use kc_runtime::native::{self, CoreFn, LibKind, NativeLaunch, NativeStats, Site};
use std::collections::{BTreeMap, BTreeSet};

/// What to compile, and what to keep.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Run Cranelift's IR verifier on every function.
    pub verify: bool,
    /// Keep each function's Cranelift IR text ([`Compiled::clif`]).
    pub keep_clif: bool,
    /// Keep each function's disassembly ([`Compiled::asm`]).
    pub keep_asm: bool,
    /// Compile fused element loops to Cranelift's 128-bit code even on a host with AVX-512 (`crate::wide`):
    /// the same results, for comparing the two.
    pub portable_vectors: bool,
    /// Compile the statements of a softmax one at a time even where [`rowmath::kc_rt_softmax_rows`] would
    /// take them in one call per block (`softmax_group`): the same results, for comparing the two.
    pub split_softmax: bool,
}

/// One compiled launch: its two core functions and its failure sites.
pub struct CompiledLaunch {
    pub name: String,
    pub cube: Option<CoreFn>,
    pub vector: Option<CoreFn>,
    pub sites: Vec<Site>,
    /// The buffers the compiled code uses (after copy forwarding), by buffer id.
    pub used: Vec<bool>,
    /// The core programs as compiled (after copy forwarding): cube, vector.
    pub bodies: (Vec<Stmt>, Vec<Stmt>),
    /// The vector buffers whose `exp` rows the compiled code does not store ([`dead_exp_stores`]).
    pub dead_exp: std::collections::BTreeSet<BufId>,
    /// The unit-private workspaces the compiled code addresses per unit: `(tensor, elements, bytes of an
    /// area)` ([`kc_runtime::gm::unit_private_workspaces`]).
    pub private: Vec<(usize, u64, usize)>,
}

/// A compiled program. The machine code lives as long as this value.
pub struct Compiled {
    module: Option<JITModule>,
    pub launches: Vec<CompiledLaunch>,
    /// `(function name, Cranelift IR)` per function, if asked for.
    pub clif: Vec<(String, String)>,
    /// `(function name, disassembly)` per function, if asked for.
    pub asm: Vec<(String, String)>,
    /// Whether the program may update its `inout` tensors in place, computed on first use.
    plan: std::sync::OnceLock<Result<kc_runtime::inplace::Plan, String>>,
    /// The GM memory kept from one call to the next, and what may be reused dirty
    /// ([`kc_runtime::reuse::plan`], computed on the second call: a program run once neither pays for the
    /// walk nor keeps memory; the second call stores its memory, the third reuses it).
    arena: native::Arena,
    reuse: std::sync::OnceLock<kc_runtime::reuse::Plan>,
    /// For a program whose control reads data: the GM tensors it may read ([`kc_runtime::reuse::control_sources`],
    /// `None` when its control reads none), and the plans computed for the latest contents of these
    /// tensors (a plan is only applied to calls with the very contents it was computed for).
    control: std::sync::OnceLock<Option<std::collections::BTreeSet<TensorId>>>,
    by_data: std::sync::Mutex<Vec<(Vec<u8>, std::sync::Arc<kc_runtime::reuse::Plan>)>>,
    calls: std::sync::atomic::AtomicUsize,
    poison: std::sync::atomic::AtomicBool,
    /// How many fused element loops were assembled as AVX-512 routines (`crate::wide`).
    pub wide_loops: usize,
    /// How many softmax groups the compiled code computes with one call a block (`softmax_group`).
    pub softmax_groups: usize,
}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the function pointers in `launches` are dropped with `self` and never called after.
            unsafe { m.free_memory() };
        }
    }
}

// The pointers are plain code addresses; the module is only touched again when dropped.
unsafe impl Send for Compiled {}
unsafe impl Sync for Compiled {}

impl Compiled {
    /// The launches as the runtime's executor takes them (their functions, check sites, used buffers and
    /// unit-private workspaces).
    pub fn native_launches(&self) -> Vec<NativeLaunch<'_>> {
        self.launches
            .iter()
            .map(|l| NativeLaunch {
                cube: l.cube,
                vector: l.vector,
                sites: &l.sites,
                used: Some(&l.used),
                private: &l.private,
            })
            .collect()
    }

    /// Runs the program (lowered from `graph`) on `args` with `threads` host threads.
    pub fn run(
        &self,
        prog: &TileProgram,
        graph: &Graph,
        args: &Args,
        threads: usize,
        limits: &Limits,
    ) -> Result<(Results, NativeStats), Vec<Diagnostic>> {
        let launches = self.native_launches();
        let plan = self.plan_for_call(prog, graph, args);
        native::run(prog, graph, args, &launches, threads, limits, Some(self.reuse(plan.as_deref())))
    }

    /// What this call may reuse ([`native::Reuse`]): the arena, and the call's plan.
    fn reuse<'a>(&'a self, plan: Option<&'a kc_runtime::reuse::Plan>) -> native::Reuse<'a> {
        native::Reuse { arena: &self.arena, plan, poison: self.poison.load(std::sync::atomic::Ordering::Relaxed) }
    }

    /// The plan for a call on `args`, from the second call on (a program run once neither pays for the
    /// walk nor keeps memory): the program's plan, or for a program whose control reads data, the plan
    /// for the call's contents of the tensors it reads ([`Self::reuse_plan_for`]).
    fn plan_for_call(
        &self,
        prog: &TileProgram,
        graph: &Graph,
        args: &Args,
    ) -> Option<std::borrow::Cow<'_, kc_runtime::reuse::Plan>> {
        let first = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        if first && self.reuse.get().is_none() && self.by_data.lock().map_or(true, |c| c.is_empty()) {
            return None;
        }
        if self.control_sources().is_some() {
            let p = self.reuse_plan_for(prog, graph, args);
            return Some(std::borrow::Cow::Owned(p.as_ref().clone()));
        }
        Some(std::borrow::Cow::Borrowed(self.reuse_plan(prog)))
    }

    fn walked(&self) -> Vec<kc_runtime::inplace::Compiled<'_>> {
        self.launches
            .iter()
            .map(|l| kc_runtime::inplace::Compiled { cube: &l.bodies.0, vector: &l.bodies.1, sites: &l.sites })
            .collect()
    }

    /// The GM tensors the control may read, if it reads data.
    fn control_sources(&self) -> Option<&std::collections::BTreeSet<TensorId>> {
        self.control
            .get_or_init(|| {
                let l = self.walked();
                kc_runtime::reuse::reads_data(&l).then(|| kc_runtime::reuse::control_sources(&l))
            })
            .as_ref()
    }

    /// What the program (`prog`, lowered from `graph`) may get back dirty on a call with `args`: for a
    /// program whose control reads data, the plan for the call's contents of the tensors it reads
    /// ([`kc_runtime::reuse::plan_with_data`]; kept for the [`MAX_PLANS_BY_DATA`] latest contents, each
    /// found again only by the same bytes), else [`Self::reuse_plan`].
    pub fn reuse_plan_for(
        &self,
        prog: &TileProgram,
        graph: &Graph,
        args: &Args,
    ) -> std::sync::Arc<kc_runtime::reuse::Plan> {
        let Some(sources) = self.control_sources() else {
            return std::sync::Arc::new(self.reuse_plan(prog).clone());
        };
        // The contents the walk may read: parameters no statement writes (nor an `inout` result updates),
        // as the call's GM holds them (the argument's own dtype: not converted), i32 or f32.
        let written = kc_runtime::gm::written(prog);
        let mut data = BTreeMap::new();
        let mut key = Vec::new();
        for &t in sources {
            let Some(x) = prog.tensors.get(t.0 as usize) else { continue };
            let TensorRole::Param(pi) = x.role else { continue };
            if written.contains(&t) || graph.results.iter().any(|r| r.inout == Some(pi)) {
                continue;
            }
            let Some(a) = graph.params.get(pi).and_then(|p| args.tensors.get(&p.name)) else { continue };
            if a.dtype() != x.dtype || a.data.len() as u64 != x.shape.iter().product::<u64>() {
                continue;
            }
            let bytes: Vec<u8> = match &a.data {
                kc_ir::tensor::TensorData::I32(v) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
                kc_ir::tensor::TensorData::F32(v) => v.iter().flat_map(|w| w.to_bits().to_le_bytes()).collect(),
                _ => continue,
            };
            key.extend((t.0 as u64).to_le_bytes());
            key.extend((bytes.len() as u64).to_le_bytes());
            key.extend(bytes);
            data.insert(t, &a.data);
            if key.len() > MAX_DATA_KEY_BYTES {
                return std::sync::Arc::new(kc_runtime::reuse::Plan::none(prog));
            }
        }
        let cache = |c: &mut Vec<(Vec<u8>, std::sync::Arc<kc_runtime::reuse::Plan>)>| {
            c.iter().position(|(k, _)| *k == key).map(|i| {
                let e = c.remove(i);
                let p = e.1.clone();
                c.push(e);
                p
            })
        };
        if let Some(p) = cache(&mut self.by_data.lock().unwrap_or_else(|e| e.into_inner())) {
            return p;
        }
        let plan = std::sync::Arc::new(kc_runtime::reuse::plan_with_data(prog, &self.walked(), &data).0);
        let mut c = self.by_data.lock().unwrap_or_else(|e| e.into_inner());
        c.push((key, plan.clone()));
        let extra = c.len().saturating_sub(MAX_PLANS_BY_DATA);
        c.drain(..extra);
        plan
    }

    /// Gives back results of earlier calls that the caller no longer needs ([`native::Arena::recycle`]): a
    /// later call may write its outputs into their memory, when the reuse plan proves it writes them whole
    /// before reading them.
    pub fn recycle(&self, results: Results) {
        self.arena.recycle(results.into_iter().map(|(_, t)| t.data));
    }

    /// For tests: from now on, fill the memory a call gets back dirty with `0xFF` bytes first
    /// ([`native::Reuse::poison`]), so that a read of it before a write would show in the results.
    #[doc(hidden)]
    pub fn poison_reused_memory(&self) {
        self.poison.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the program (`prog`: the one it was compiled from) may get back dirty
    /// ([`kc_runtime::reuse::plan`]). Computed once.
    pub fn reuse_plan(&self, prog: &TileProgram) -> &kc_runtime::reuse::Plan {
        self.reuse.get_or_init(|| kc_runtime::reuse::plan(prog, &self.walked()).0)
    }

    /// Whether the program (`prog`, lowered from `graph`: the ones it was compiled from) may update its
    /// `inout` tensors in place ([`kc_runtime::inplace::plan`]), or why not. Computed once.
    pub fn in_place_plan(&self, prog: &TileProgram, graph: &Graph) -> &Result<kc_runtime::inplace::Plan, String> {
        self.plan.get_or_init(|| {
            let launches: Vec<kc_runtime::inplace::Compiled<'_>> = self
                .launches
                .iter()
                .map(|l| kc_runtime::inplace::Compiled { cube: &l.bodies.0, vector: &l.bodies.1, sites: &l.sites })
                .collect();
            kc_runtime::inplace::plan(prog, graph, &launches)
        })
    }

    /// Runs the program (compiled from `prog`, lowered from `graph`) on `args`, updating the `inout`
    /// tensors of `args` in place when [`Self::in_place_plan`] allows it, on copies otherwise
    /// ([`native::run_in_place`]); returns the other results.
    pub fn run_in_place(
        &self,
        prog: &TileProgram,
        graph: &Graph,
        args: &mut Args,
        threads: usize,
        limits: &Limits,
    ) -> Result<(Results, NativeStats, native::Mode), Vec<Diagnostic>> {
        let plan = self.in_place_plan(prog, graph);
        let launches = self.native_launches();
        let reuse = self.plan_for_call(prog, graph, args);
        native::run_in_place(prog, graph, args, &launches, plan, threads, limits, Some(self.reuse(reuse.as_deref())))
    }
}

fn internal(span: Span, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(Code::Internal, span, format!("internal error in the JIT code generator: {}", msg.into()))
}

/// The most contents of the tensors a program's control reads that keep their plan
/// ([`Compiled::reuse_plan_for`]).
pub const MAX_PLANS_BY_DATA: usize = 4;
/// The most bytes of such contents that get a plan (a larger key gets the empty plan).
pub const MAX_DATA_KEY_BYTES: usize = 1 << 16;

/// The host routines the compiled code calls: (symbol, address, parameter types, result types).
fn host_routines() -> Vec<(&'static str, *const u8, Vec<Type>, Vec<Type>)> {
    use types::{F32, I32, I64};
    vec![
        ("kc_rt_fail", native::kc_rt_fail as *const u8, vec![I64; 6], vec![I32]),
        ("kc_rt_cross_set", native::kc_rt_cross_set as *const u8, vec![I64; 3], vec![I32]),
        ("kc_rt_cross_wait", native::kc_rt_cross_wait as *const u8, vec![I64; 3], vec![I32]),
        ("kc_rt_copy", native::kc_rt_copy as *const u8, vec![I64], vec![]),
        ("kc_rt_copy_stream", native::kc_rt_copy_stream as *const u8, vec![I64], vec![]),
        ("kc_rt_zero", native::kc_rt_zero as *const u8, vec![I64], vec![]),
        ("kc_rt_copy_cols", native::kc_rt_copy_cols as *const u8, vec![I64], vec![]),
        ("kc_rt_gather", native::kc_rt_gather as *const u8, vec![I64; 3], vec![I32]),
        ("kc_rt_reduce", native::kc_rt_reduce as *const u8, vec![I64; 3], vec![I32]),
        ("kc_rt_exp_f32", kc_runtime::host::rowmath::kc_rt_exp_f32 as *const u8, vec![I64; 2], vec![]),
        ("kc_rt_silu_f32", rowmath::kc_rt_silu_f32 as *const u8, vec![I64; 2], vec![]),
        ("kc_rt_row_silu_mul", rowmath::kc_rt_row_silu_mul as *const u8, vec![I64; 5], vec![]),
        ("kc_rt_f32_to_bf16", native::kc_rt_f32_to_bf16 as *const u8, vec![I64; 3], vec![]),
        ("kc_rt_row_exp", rowmath::kc_rt_row_exp as *const u8, vec![I64, I64, I64, F32, F32, I64, I64], vec![]),
        (
            "kc_rt_row_exp_bf",
            rowmath::kc_rt_row_exp_bf as *const u8,
            vec![I64, I64, I64, F32, F32, I64, I64, I64],
            vec![],
        ),
        ("kc_rt_row_scalar", rowmath::kc_rt_row_scalar as *const u8, vec![I64, I64, I64, F32, I64], vec![]),
        ("kc_rt_row_mask", rowmath::kc_rt_row_mask as *const u8, vec![I64, I64, I64, I64, I64, F32, F32, I64], vec![]),
        ("kc_rt_row_axpy", rowmath::kc_rt_row_axpy as *const u8, vec![I64, I64, I64, I64, F32, I64], vec![]),
        ("kc_rt_rows_axpy", rowmath::kc_rt_rows_axpy as *const u8, vec![I64, F32], vec![]),
        ("kc_rt_softmax_rows", rowmath::kc_rt_softmax_rows as *const u8, vec![I64], vec![]),
        ("kc_rt_softmax_begin", rowmath::kc_rt_softmax_begin as *const u8, vec![], vec![]),
        ("kc_rt_softmax_end", rowmath::kc_rt_softmax_end as *const u8, vec![], vec![]),
        ("kc_rt_library", native::kc_rt_library as *const u8, vec![I64; 3], vec![I32]),
        ("kc_mmad", kc_runtime::host::mmad::kc_mmad as *const u8, vec![I64; 12], vec![]),
        ("kc_rt_powf", native::kc_rt_powf as *const u8, vec![F32, F32], vec![F32]),
        ("kc_rt_fmodf", native::kc_rt_fmodf as *const u8, vec![F32, F32], vec![F32]),
    ]
}

/// The most tile statements (in all launches, loop bodies counted once) the JIT compiles: a few seconds of
/// Cranelift's time on this project's machines.
pub const MAX_STATEMENTS: usize = 4000;

/// The statements of `body`, loops' bodies included.
fn count_stmts(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| {
            1 + match s {
                Stmt::For { body, .. } => count_stmts(body),
                Stmt::If { then, .. } => count_stmts(then),
                _ => 0,
            }
        })
        .sum()
}

/// The tile statements of `prog` in all its launches, loop bodies counted once: what [`compile`] holds against
/// [`MAX_STATEMENTS`].
pub fn program_statements(prog: &TileProgram) -> usize {
    prog.launches.iter().map(|l| count_stmts(&l.cube) + count_stmts(&l.vector)).sum()
}

/// Compiles every launch of `prog`.
pub fn compile(prog: &TileProgram, opts: &Options) -> Result<Compiled, Diagnostic> {
    let span = Span::default();
    let mut flags = settings::builder();
    let set =
        |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| internal(span, format!("{k}: {e}")));
    // Cranelift's register allocation grows faster than the function: a program of tens of thousands of
    // statements (a long unrolled chain) would take minutes. Such a program is refused, with the way out.
    let stmts = program_statements(prog);
    if stmts > MAX_STATEMENTS {
        return Err(Diagnostic::error(
            Code::ResourceLimit,
            span,
            format!(
                "kernel `{}` lowers to {stmts} tile statements, more than the {MAX_STATEMENTS} the JIT compiles \
                 (its compile time grows faster than the program)",
                prog.kernel
            ),
        )
        .with_note("run it with `--backend sim` or `--backend interp`, or split it into several kernels"));
    }
    set(&mut flags, "opt_level", "speed")?;

    set(&mut flags, "enable_verifier", if opts.verify { "true" } else { "false" })?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let isa = cranelift_native::builder()
        .map_err(|e| internal(span, format!("the host is not supported by Cranelift: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| internal(span, format!("cannot configure Cranelift for the host: {e}")))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    let routines = host_routines();
    for (name, ptr, _, _) in &routines {
        jb.symbol(*name, *ptr);
    }
    let mut module = JITModule::new(jb);
    let mut host = BTreeMap::new();
    for (name, _, params, rets) in &routines {
        let mut sig = module.make_signature();
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        sig.returns.extend(rets.iter().map(|&t| AbiParam::new(t)));
        let id = module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| internal(span, format!("declaring `{name}`: {e}")))?;
        host.insert(*name, id);
    }
    let mut core_sig = module.make_signature();
    core_sig.params.push(AbiParam::new(types::I64));
    core_sig.returns.push(AbiParam::new(types::I32));

    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut out = Compiled {
        module: None,
        launches: Vec::new(),
        clif: Vec::new(),
        asm: Vec::new(),
        plan: std::sync::OnceLock::new(),
        arena: native::Arena::default(),
        reuse: std::sync::OnceLock::new(),
        control: std::sync::OnceLock::new(),
        by_data: std::sync::Mutex::new(Vec::new()),
        calls: std::sync::atomic::AtomicUsize::new(0),
        poison: std::sync::atomic::AtomicBool::new(false),
        wide_loops: 0,
        softmax_groups: 0,
    };
    let wide = !opts.portable_vectors && crate::wide::available();
    let mut ids: Vec<(Option<FuncId>, Option<FuncId>)> = Vec::new();
    for (li, l) in prog.launches.iter().enumerate() {
        let mut sites = Vec::new();
        let mut pair = (None, None);
        let mut used = vec![false; l.buffers.len()];
        let mut bodies = (Vec::new(), Vec::new());
        let mut dead_exp = std::collections::BTreeSet::new();
        // One list for the code that addresses these workspaces per unit and the executor that hands each
        // thread its areas.
        let private = kc_runtime::gm::unit_private_workspaces(prog, l);
        for (cube, body, n) in [(true, &l.cube, l.cube_cores), (false, &l.vector, l.vector_cores)] {
            if n == 0 {
                continue;
            }
            let name = format!("launch{li}_{}", if cube { "cube" } else { "vector" });
            let id = module
                .declare_function(&name, Linkage::Local, &core_sig)
                .map_err(|e| internal(span, format!("declaring `{name}`: {e}")))?;
            ctx.clear();
            ctx.func.signature = core_sig.clone();
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            if opts.keep_asm {
                ctx.set_disasm(true);
            }
            let routines = {
                let mut fns = BTreeMap::new();
                for (name, id) in &host {
                    fns.insert(*name, module.declare_func_in_func(*id, &mut ctx.func));
                }
                let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                let mut body = crate::forward::forward(prog, l, body);
                if !cube {
                    columns_as_rows(&mut body);
                }
                for b in crate::forward::referenced(&body) {
                    if let Some(u) = used.get_mut(b.0 as usize) {
                        *u = true;
                    }
                }
                let mut g = Gen::new(prog, l, &body, cube, &mut b, fns, &mut sites, &name, &private);
                if !cube {
                    g.softmax = !opts.split_softmax && rowmath::softmax_rows_fast();
                    g.dead_exp = dead_exp_stores(prog, l, &body, &l.cube);
                    dead_exp.clone_from(&g.dead_exp);
                }
                if wide {
                    g.module = Some(&mut module);
                    if !cube {
                        g.dead_run = dead_run_stores(prog, l, &body, &l.cube);
                    }
                }
                g.program(&body)?;
                out.softmax_groups += g.softmax_groups;
                let routines = std::mem::take(&mut g.wide_out);
                b.seal_all_blocks();
                b.finalize(module.target_config());
                if cube {
                    bodies.0 = body;
                } else {
                    bodies.1 = body;
                }
                routines
            };
            out.wide_loops += routines.len();
            let mut loops_asm = Vec::new();
            for (rid, code, ext) in routines {
                if opts.keep_asm {
                    let text = crate::wide::disassemble(&code);
                    loops_asm.push((format!("{name}: AVX-512 loop `userextname{ext}`"), text));
                }
                module
                    .define_function_bytes(rid, 64, &code, &[])
                    .map_err(|e| internal(span, format!("defining an AVX-512 loop of `{name}`: {e:?}")))?;
            }
            if opts.keep_clif {
                out.clif.push((name.clone(), ctx.func.display().to_string()));
            }
            module
                .define_function(id, &mut ctx)
                .map_err(|e| internal(span, format!("Cranelift rejected `{name}` of launch `{}`: {e:?}", l.name)))?;
            if opts.keep_asm {
                if let Some(code) = ctx.compiled_code().and_then(|c| c.vcode.clone()) {
                    out.asm.push((name.clone(), code));
                }
                out.asm.extend(loops_asm);
            }
            if cube {
                pair.0 = Some(id);
            } else {
                pair.1 = Some(id);
            }
        }
        ids.push(pair);
        out.launches.push(CompiledLaunch {
            name: l.name.clone(),
            cube: None,
            vector: None,
            sites,
            used,
            bodies,
            dead_exp,
            private,
        });
    }
    module.finalize_definitions().map_err(|e| internal(span, format!("linking: {e}")))?;
    for (cl, (c, v)) in out.launches.iter_mut().zip(ids) {
        // SAFETY: each function was defined with the core signature, `extern "C" fn(*mut CoreCtx) -> i32`.
        cl.cube = c.map(|id| unsafe { std::mem::transmute::<*const u8, CoreFn>(module.get_finalized_function(id)) });
        cl.vector = v.map(|id| unsafe { std::mem::transmute::<*const u8, CoreFn>(module.get_finalized_function(id)) });
    }
    out.module = Some(module);
    Ok(out)
}

// -------------------------------------------------------------------------------------------------------------
// The function generator.

/// A resolved region: the address of its storage's first element (the slot's, for a buffer), the region's
/// offset and row stride in elements, and what bounds it.
#[derive(Clone)]
struct Res {
    base: Value,
    dtype: DType,
    offset: Value,
    stride: Value,
    limit: u64,
    what: String,
}

/// A scalar value of the element computation.
#[derive(Copy, Clone)]
enum SV {
    F(Value),
    I(Value),
    B(Value),
}

/// The kind of a vector-expression node: how it varies over the tile.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Var {
    Const,
    Row,
    Elem,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum Ty {
    F,
    I,
    B,
}

struct Gen<'a, 'b, 'p> {
    prog: &'p TileProgram,
    launch: &'p Launch,
    cube: bool,
    b: &'a mut FunctionBuilder<'b>,
    fns: BTreeMap<&'static str, FuncRef>,
    sites: &'a mut Vec<Site>,
    ctx: Value,
    gm: Vec<Value>,
    bufs: Vec<Option<Value>>,
    core: Value,
    vars: Vec<Variable>,
    exit: Block,
    path: Vec<usize>,
    name: String,
    /// The GM tensors some statement of the launch writes.
    gm_written: std::collections::BTreeSet<TensorId>,
    /// The row and column counters of vector statements, shared by all of them (their loops never nest):
    /// Cranelift's SSA builder keeps a map over the blocks per variable, so a pair per statement would
    /// make a function of many statements quadratic in memory.
    elem_vars: Option<(Variable, Variable)>,
    /// The column chunk of a vector statement that evaluates its `exp`s by [`EXP_CHUNK`] columns (shared too).
    chunk_var: Option<Variable>,
    /// Scratch rows of [`EXP_CHUNK`] `f32`s for those `exp`s, shared by all statements (the i-th `exp` of a
    /// statement uses the i-th).
    exp_scratch: Vec<StackSlot>,
    /// While the rest of such a statement is generated: each `exp` node and the scratch that holds its values
    /// for the current chunk.
    exp_done: Vec<(*const VExpr, StackSlot)>,
    /// While a row of a SIMD vector statement is generated: its row-invariant values, splatted once per row
    /// into a stack slot at an offset and loaded where used. (Cranelift recomputes pure values at their
    /// uses; its loop-invariant code motion left the splats, selects and compares of row values inside the
    /// column loops. A load stays where it is.)
    row_splats: Vec<(*const VExpr, StackSlot, i32)>,
    /// The scratch row of [`EXP_CHUNK`] f32 results of a SIMD statement into bf16 (shared by all statements).
    out_scratch: Option<StackSlot>,
    /// The slot of [`SPLATS`] vectors for `row_splats` (shared by all statements: a core's stack is 1 MiB).
    splat_slot: Option<StackSlot>,
    /// In a column loop: the stack slots that hold the `f32x4` splats of the hoisted sub-expressions. A
    /// value computed before the loop must be stored there to stay there: Cranelift's e-graph pass places a
    /// pure instruction (a splat, a product of two loaded scalars) next to its use, inside the loop, and
    /// computes it on every iteration; a load of the slot (folded into the instruction that uses it) is
    /// cheaper.
    splats: BTreeMap<*const VExpr, cranelift_codegen::ir::StackSlot>,
    /// In a column loop: the element operands of the statement being computed, loaded ahead by
    /// [`Gen::preload`] (the read, the first column of its 4 lanes, the vector).
    preloaded: Vec<(&'p VExpr, Value, Value)>,
    /// The transposing loads the matrix unit reads in place (`forward::transposed_b`), by statement address.
    trans: crate::forward::Transposed,
    /// The buffers whose [`ExpGroup`]s' `f32` rows are not stored ([`dead_exp_stores`]; vector programs).
    dead_exp: std::collections::BTreeSet<BufId>,
    /// The launch's unit-private workspaces ([`kc_runtime::gm::unit_private_workspaces`]), by tensor: the
    /// first element of the running unit's area (computed on entry) and the area's elements. Their GM
    /// pointer is the thread's own area, and every access is checked against that area.
    private: BTreeMap<usize, (Value, u64)>,
    /// The module, where fused element loops may be assembled for AVX-512 (`crate::wide`; `None`: not
    /// on this host, or not asked for), and the routines assembled, defined once the function is.
    module: Option<&'a mut JITModule>,
    /// (the routine, its code, the index of its external name in the calling function: `userextnameN`).
    wide_out: Vec<(FuncId, Vec<u8>, usize)>,
    /// The buffers whose fused-run stores an AVX-512 run leaves out ([`dead_run_stores`]).
    dead_run: BTreeSet<BufId>,
    /// Compile softmax's statements as one call per block ([`softmax_group`]).
    softmax: bool,
    /// The softmax groups compiled.
    softmax_groups: usize,
    /// Compiling the body of a loop whose softmax calls carry a division to the next ([`carry_loop`]).
    carry: bool,
}

/// The most row-invariant values of a statement splatted into `splat_slot`; further ones are splatted at
/// their uses.
const SPLATS: usize = 32;

/// Columns per chunk of a vector statement whose `exp`s (`silu`s) are computed by `kc_rt_exp_f32`
/// (`kc_rt_silu_f32`; the arguments of a chunk are written to a scratch row, 2 KiB, in L1, computed in place
/// 16 lanes at a time, then read) or whose bf16 results are rounded by `kc_rt_f32_to_bf16`.
const EXP_CHUNK: i64 = 512;

/// The smallest GM tensor whose row-routine stores go around the caches ([`Gen::streams`]): 16 MiB, more than
/// the host's private caches hold, so that its lines would be evicted before anything reads them again.
const STREAM_BYTES: u64 = 16 << 20;

/// Loads and stores of the compiled code: not trapping (every window was checked), not known aligned.
const TRUSTED: MemFlagsData = MemFlagsData::new().with_notrap();
/// Bitcasts between vector shapes: lanes in little-endian order.
const LE: MemFlagsData = MemFlagsData::new().with_endianness(Endianness::Little);

impl<'a, 'b, 'p> Gen<'a, 'b, 'p> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        prog: &'p TileProgram,
        launch: &'p Launch,
        body: &[Stmt],
        cube: bool,
        b: &'a mut FunctionBuilder<'b>,
        fns: BTreeMap<&'static str, FuncRef>,
        sites: &'a mut Vec<Site>,
        name: &str,
        private: &[(usize, u64, usize)],
    ) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let ctx = b.block_params(entry)[0];
        let gm_arr = b.ins().load(types::I64, TRUSTED, ctx, native::CTX_GM);
        let buf_arr = b.ins().load(types::I64, TRUSTED, ctx, native::CTX_BUFS);
        let core = b.ins().load(types::I64, TRUSTED, ctx, native::CTX_CORE);
        let gm = (0..prog.tensors.len()).map(|i| b.ins().load(types::I64, TRUSTED, gm_arr, (i * 8) as i32)).collect();
        // A unit-private workspace's area: the unit's cube core `q` (a vector core's `core / ratio`) times the
        // area's elements (`unit_private_workspaces` only names launches with a whole ratio).
        let private = if private.is_empty() {
            BTreeMap::new()
        } else {
            let q = if cube {
                core
            } else {
                let ratio = i64::from(launch.vector_cores / launch.cube_cores.max(1)).max(1);
                let r = b.ins().iconst(types::I64, ratio);
                b.ins().sdiv(core, r)
            };
            private.iter().map(|&(t, e, _)| (t, (b.ins().imul_imm_s(q, e as i64), e))).collect()
        };
        let used = crate::forward::referenced(body);
        let bufs = launch
            .buffers
            .iter()
            .enumerate()
            .map(|(i, buf)| {
                (buf.mem.on_cube() == cube && used.contains(&kc_ir::tile::BufId(i as u32)))
                    .then(|| b.ins().load(types::I64, TRUSTED, buf_arr, (i * 8) as i32))
            })
            .collect();
        let vars = (0..launch.svars.len())
            .map(|_| {
                let v = b.declare_var(types::I64);
                let z = b.ins().iconst(types::I64, 0);
                b.def_var(v, z);
                v
            })
            .collect();
        let exit = b.create_block();
        b.append_block_param(exit, types::I32);
        Gen {
            prog,
            launch,
            cube,
            b,
            fns,
            sites,
            ctx,
            gm,
            bufs,
            core,
            vars,
            exit,
            path: Vec::new(),
            name: name.to_string(),
            gm_written: crate::forward::gm_written(launch),
            elem_vars: None,
            chunk_var: None,
            exp_scratch: Vec::new(),
            exp_done: Vec::new(),
            row_splats: Vec::new(),
            out_scratch: None,
            splat_slot: None,
            splats: BTreeMap::new(),
            preloaded: Vec::new(),
            trans: crate::forward::transposed_b(prog, launch, body),
            dead_exp: std::collections::BTreeSet::new(),
            private,
            module: None,
            wide_out: Vec::new(),
            dead_run: BTreeSet::new(),
            softmax: false,
            softmax_groups: 0,
            carry: false,
        }
    }

    fn program(&mut self, body: &'p [Stmt]) -> Result<(), Diagnostic> {
        self.stmts(body)?;
        let ok = self.b.ins().iconst(types::I32, 0);
        self.b.ins().jump(self.exit, &[ok.into()]);
        self.b.switch_to_block(self.exit);
        let st = self.b.block_params(self.exit)[0];
        self.b.ins().return_(&[st]);
        Ok(())
    }

    fn err(&self, msg: impl Into<String>) -> Diagnostic {
        internal(Span::default(), format!("{} at {}: {}", self.name, self.here(), msg.into()))
    }

    /// The statement's path, as the simulator names it: `vector[3.2]`.
    fn here(&self) -> String {
        let p: Vec<String> = self.path.iter().map(|i| i.to_string()).collect();
        format!("{}[{}]", if self.cube { "cube" } else { "vector" }, p.join("."))
    }

    fn site(&mut self, s: Site) -> i64 {
        self.sites.push(s);
        (self.sites.len() - 1) as i64
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    fn call(&mut self, name: &'static str, args: &[Value]) -> Option<Value> {
        let f = self.fns[name];
        let inst = self.b.ins().call(f, args);
        self.b.inst_results(inst).first().copied()
    }

    /// Branches to the exit with `status` if it is not 0.
    fn check_status(&mut self, status: Value) {
        let cont = self.b.create_block();
        self.b.ins().brif(status, self.exit, &[status.into()], cont, &[]);
        self.b.switch_to_block(cont);
    }

    /// If `bad` (an i8 truth value), records a failure at `site` with `vals` and stops.
    fn fail_if(&mut self, bad: Value, site: i64, vals: [Value; 4]) {
        let fail = self.b.create_block();
        let cont = self.b.create_block();
        self.b.set_cold_block(fail);
        self.b.ins().brif(bad, fail, &[], cont, &[]);
        self.b.switch_to_block(fail);
        let s = self.iconst(site);
        let st = self.call("kc_rt_fail", &[self.ctx, s, vals[0], vals[1], vals[2], vals[3]]).expect("a status");
        self.b.ins().jump(self.exit, &[st.into()]);
        self.b.switch_to_block(cont);
    }

    /// Stops with an internal error if `bad`.
    fn internal_if(&mut self, bad: Value, msg: String) {
        let site = self.site(Site::Internal(msg));
        let z = self.iconst(0);
        self.fail_if(bad, site, [z; 4]);
    }

    // ----- statements -----

    fn stmts(&mut self, body: &'p [Stmt]) -> Result<(), Diagnostic> {
        let mut i = 0;
        while i < body.len() {
            self.path.push(i);
            let mut n = fusable_run(self.prog, self.launch, &body[i..]);
            let sm = if self.softmax { softmax_group(self.prog, self.launch, &body[i..]) } else { None };
            if let Some(g) = sm {
                self.softmax_rows(&g)?;
                n = SoftmaxGroup::LEN;
            } else if n >= 2 {
                self.vector_group(&body[i..i + n])?;
            } else if let Some(k) = self.exp_sum(&body[i..])? {
                n = k;
            } else {
                self.stmt(&body[i])?;
            }
            self.path.pop();
            i += n.max(1);
        }
        Ok(())
    }

    /// A loop `for j in lo..hi { copy src(j) -> dst(j), rows × 1 }` whose windows move by a constant number of
    /// elements per iteration (the tiler's transposing loads: a row of one operand becomes a column of the
    /// other) as one call of [`native::kc_rt_copy_cols`] instead of one call per column. The windows of the
    /// first and the last column are bounds-checked, which covers the ones between (they move by a constant
    /// step); the loop variable ends as the loop would leave it. `false`: not such a loop (nothing emitted).
    fn column_copies(&mut self, var: SVar, lo: &SExpr, hi: &SExpr, body: &'p [Stmt]) -> Result<bool, Diagnostic> {
        let [Stmt::Copy { src, dst, rows, cols, .. }] = body else { return Ok(false) };
        if *cols != SExpr::Const(1) || mentions(rows, var) || mentions(lo, var) || mentions(hi, var) {
            return Ok(false);
        }
        let fixed = |r: &Region| {
            !mentions(&r.row_stride, var) && !matches!(&r.loc, Loc::Buf { slot, .. } if mentions(slot, var))
        };
        let (Some(ds), Some(ss)) = (step_of(&dst.offset, var), step_of(&src.offset, var)) else { return Ok(false) };
        // The same dtype, or float to float (the runtime converts: a symmetric product's mirrored block).
        let (sd, dd) = (self.loc_dtype(&src.loc), self.loc_dtype(&dst.loc));
        let same = sd == dd || matches!((sd, dd), (Some(a), Some(b)) if a.is_float() && b.is_float());
        if !fixed(src) || !fixed(dst) || !same {
            return Ok(false);
        }
        let v = self.var(var)?;
        let lo = self.sexpr(lo)?;
        let hi = self.sexpr(hi)?;
        let n = self.b.ins().isub(hi, lo);
        let any = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0);
        let work = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(any, work, &[], done, &[]);
        self.b.switch_to_block(work);
        let rows = self.sexpr(rows)?;
        let one = self.iconst(1);
        // The last column's windows, then the first's (the call takes the first).
        let last = self.b.ins().iadd_imm_s(hi, -1);
        self.b.def_var(v, last);
        let (s_last, d_last) = (self.region(src, "the copy's source")?, self.region(dst, "the copy's destination")?);
        self.check(&s_last, rows, one);
        self.check(&d_last, rows, one);
        self.b.def_var(v, lo);
        let (s, d) = (self.region(src, "the copy's source")?, self.region(dst, "the copy's destination")?);
        self.check(&s, rows, one);
        self.check(&d, rows, one);
        let mut w = self.region_words(&d);
        w.extend(self.region_words(&s));
        let (ds, ss) = (self.iconst(ds), self.iconst(ss));
        w.extend([rows, n, ds, ss]);
        let a = self.words(&w);
        self.call("kc_rt_copy_cols", &[a]);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        let end = self.b.ins().smax(lo, hi);
        self.b.def_var(v, end);
        Ok(true)
    }

    /// The dtype of a window's storage (`None`: no such tensor or buffer).
    /// Whether a row routine's stores to `dst` should bypass the caches ([`rowmath::ROW_DST_STREAM`]): `dst`
    /// is a GM tensor of at least [`STREAM_BYTES`], which the launch does not read back from the caches.
    fn streams(&self, dst: &Region) -> bool {
        let Loc::Gm(t) = dst.loc else { return false };
        if self.private.contains_key(&(t.0 as usize)) {
            return false;
        }
        let Some(g) = self.prog.tensors.get(t.0 as usize) else { return false };
        let bytes = g.shape.iter().fold(g.dtype.size_bytes() as u64, |a, &d| a.saturating_mul(d));
        bytes >= STREAM_BYTES
    }

    fn loc_dtype(&self, l: &Loc) -> Option<DType> {
        match l {
            Loc::Gm(t) => self.prog.tensors.get(t.0 as usize).map(|g| g.dtype),
            Loc::Buf { buf, .. } => self.launch.buffers.get(buf.0 as usize).map(|b| b.dtype),
        }
    }

    fn stmt(&mut self, s: &'p Stmt) -> Result<(), Diagnostic> {
        match s {
            Stmt::For { var, lo, hi, step, body } => {
                if *step <= 0 {
                    return Err(self.err(format!("a loop with step {step}")));
                }
                if self.trans.loops.contains(&(s as *const Stmt as usize)) {
                    // Its mmads read the source transposed: only the loop variable ends as the loop leaves it.
                    let v = self.var(*var)?;
                    let (lo, hi) = (self.sexpr(lo)?, self.sexpr(hi)?);
                    let end = self.b.ins().smax(lo, hi);
                    self.b.def_var(v, end);
                    return Ok(());
                }
                if *step == 1 && self.column_copies(*var, lo, hi, body)? {
                    return Ok(());
                }
                let v = self.var(*var)?;
                let lo = self.sexpr(lo)?;
                let hi = self.sexpr(hi)?;
                self.b.def_var(v, lo);
                // A loop of softmax groups: each call leaves its last row's division to the next.
                let carry = self.softmax && !self.carry && carry_loop(self.prog, self.launch, body);
                if carry {
                    self.call("kc_rt_softmax_begin", &[]);
                    self.carry = true;
                }
                self.loop_while_fits(v, 1, hi, *step, |g, _| g.stmts(body))?;
                if carry {
                    self.carry = false;
                    self.call("kc_rt_softmax_end", &[]);
                }
            }
            Stmt::Set { var, value } => {
                let v = self.var(*var)?;
                let x = self.sexpr(value)?;
                self.b.def_var(v, x);
            }
            Stmt::If { cond, then } => {
                let c = self.sexpr(cond)?;
                let t = self.b.create_block();
                let done = self.b.create_block();
                self.b.ins().brif(c, t, &[], done, &[]);
                self.b.switch_to_block(t);
                self.stmts(then)?;
                self.b.ins().jump(done, &[]);
                self.b.switch_to_block(done);
            }
            Stmt::Copy { src, dst, rows, cols, .. } => {
                let rows = self.sexpr(rows)?;
                let cols = self.sexpr(cols)?;
                let s = self.region(src, "the copy's source")?;
                let d = self.region(dst, "the copy's destination")?;
                if s.dtype.compute() != d.dtype.compute() {
                    return Err(self.err(format!("a copy from {} to {}", s.dtype, d.dtype)));
                }
                self.check(&s, rows, cols);
                self.check(&d, rows, cols);
                let mut w = self.region_words(&d);
                w.extend(self.region_words(&s));
                w.extend([rows, cols]);
                let a = self.words(&w);
                // Into a large GM tensor: past the caches (see `kc_rt_copy_stream`).
                let routine = if self.streams(dst) { "kc_rt_copy_stream" } else { "kc_rt_copy" };
                self.call(routine, &[a]);
            }
            Stmt::Gather { src, src_rows, row_stride, col_offset, index, dst, rows, cols, span, error, .. } => {
                let rows = self.sexpr(rows)?;
                let cols = self.sexpr(cols)?;
                if self.private.contains_key(&(src.0 as usize)) {
                    return Err(self.err("a gather from a unit-private workspace"));
                }
                let t = self.prog.tensor(*src);
                let d = self.region(dst, "the gather's destination")?;
                let ix = self.region(index, "the gather's index")?;
                if ix.dtype != DType::I32 || t.dtype.compute() != d.dtype.compute() {
                    return Err(self.err("a gather of mismatched dtypes"));
                }
                let one = self.iconst(1);
                self.check(&d, rows, cols);
                self.check(&ix, rows, one);
                // Every row of the source, at the column window, is inside the tensor.
                let co = self.sexpr(col_offset)?;
                let limit = self.gm_len(*src)?;
                let stride = self.iconst(*row_stride as i64);
                let src_res = Res {
                    base: self.gm[src.0 as usize],
                    dtype: t.dtype,
                    offset: co,
                    stride,
                    limit,
                    what: format!("the rows of GM tensor `{}`", t.name),
                };
                let n_rows = self.iconst(*src_rows as i64);
                if *src_rows > 0 {
                    self.check(&src_res, n_rows, cols);
                }
                let site = self.site(Site::Gather {
                    span: *span,
                    tensor: t.name.clone(),
                    src_rows: *src_rows,
                    error: error.clone(),
                });
                let mut w = self.region_words(&d);
                let sp = self.gm[src.0 as usize];
                let sdt = self.iconst(native::dtype_code(t.dtype));
                let rs = self.iconst(*row_stride as i64);
                let ip = self.elem_addr(&ix, None, None);
                w.extend([sp, sdt, n_rows, rs, co, ip, ix.stride, rows, cols]);
                let a = self.words(&w);
                let s = self.iconst(site);
                let st = self.call("kc_rt_gather", &[self.ctx, s, a]).expect("a status");
                self.check_status(st);
            }
            Stmt::Mmad { a, b, c, m, k, n, accumulate } => {
                let (m, k, n) = (self.sexpr(m)?, self.sexpr(k)?, self.sexpr(n)?);
                let ra = self.region(a, "mmad's a")?;
                // `b` as the transpose of its loop's source window (`n × k`), read with the loop variable at
                // the loop's start (its registers are unchanged since the loop, `forward::transposed_b`).
                let tb = self.trans.mmads.get(&(s as *const Stmt as usize)).cloned();
                let (rb, b_loc) = match &tb {
                    Some(t) => {
                        let v = self.var(t.var)?;
                        let now = self.b.use_var(v);
                        let lo = self.sexpr(&t.lo)?;
                        self.b.def_var(v, lo);
                        let r = self.region(&t.src, "mmad's transposed b");
                        self.b.def_var(v, now);
                        (r?, &t.src.loc)
                    }
                    None => (self.region(b, "mmad's b")?, &b.loc),
                };
                let rc = self.region(c, "mmad's c")?;
                if !ra.dtype.is_float() || !rb.dtype.is_float() || rc.dtype != DType::F32 {
                    return Err(self.err("an mmad of non-float operands or a non-f32 accumulator"));
                }
                self.check(&ra, m, k);
                if tb.is_some() {
                    self.check(&rb, n, k);
                } else {
                    self.check(&rb, k, n);
                }
                self.check(&rc, m, n);
                let pa = self.elem_addr(&ra, None, None);
                let pb = self.elem_addr(&rb, None, None);
                let pc = self.elem_addr(&rc, None, None);
                let da = self.iconst(native::dtype_code(ra.dtype));
                let db = self.iconst(native::dtype_code(rb.dtype));
                // Bit 1: `b` is in a GM tensor no statement of the launch writes, so the host routine may keep
                // its packed form for the rest of the launch.
                let b_const = matches!(b_loc, Loc::Gm(t) if !self.gm_written.contains(t));
                // Bit 2: the same for `a`. Bit 3: `b` is given as its transpose.
                let a_const = matches!(a.loc, Loc::Gm(t) if !self.gm_written.contains(&t));
                // Bit 4: the transposed `b` is read from the same read-only tensor as `a` (`x @ transpose(x)`):
                // its window is another block's `a`, so the host routine keeps its packing from the first use
                // and makes the `a` packing of the window in the same pass.
                // Bit 5: `a` and `b` are windows of the same read-only tensor (`x @ transpose(x)`, `a @ a`): each
                // window is read by the blocks of its row and of its column, on any thread, so the host routine
                // packs it once per launch into packings the launch's threads share.
                let same_src = a_const && b_const && matches!((&a.loc, b_loc), (Loc::Gm(x), Loc::Gm(y)) if x == y);
                let shares_a = tb.is_some() && same_src;
                let bits = i64::from(*accumulate)
                    | (i64::from(b_const) << 1)
                    | (i64::from(a_const) << 2)
                    | (i64::from(tb.is_some()) << 3)
                    | (i64::from(shares_a) << 4)
                    | (i64::from(same_src) << 5);
                let acc = self.iconst(bits);
                self.call("kc_mmad", &[pa, da, ra.stride, pb, db, rb.stride, pc, rc.stride, m, k, n, acc]);
            }
            Stmt::Vector { dst, rows, cols, expr } => self.vector(dst, rows, cols, expr)?,
            Stmt::Reduce { op, axis, src, dst, rows, cols, accumulate } => {
                if *axis > 1 {
                    return Err(self.err(format!("a reduction along axis {axis}")));
                }
                let rows = self.sexpr(rows)?;
                let cols = self.sexpr(cols)?;
                let s = self.region(src, "the reduction's source")?;
                let d = self.region(dst, "the reduction's destination")?;
                let one = self.iconst(1);
                self.check(&s, rows, cols);
                if *axis == 1 {
                    self.check(&d, rows, one);
                } else {
                    self.check(&d, one, cols);
                }
                let site = self.site(Site::Reduce { op: *op, what: s.what.clone() });
                let mut w = self.region_words(&d);
                w.extend(self.region_words(&s));
                let ax = self.iconst(i64::from(*axis));
                let acc = self.iconst(i64::from(*accumulate));
                w.extend([rows, cols, ax, acc]);
                let a = self.words(&w);
                let sv = self.iconst(site);
                let st = self.call("kc_rt_reduce", &[self.ctx, sv, a]).expect("a status");
                self.check_status(st);
            }
            Stmt::Library { op, src, rows, cols, span } => {
                let rows = self.sexpr(rows)?;
                let cols = self.sexpr(cols)?;
                let s = self.region(src, "the library operation's source")?;
                self.check(&s, rows, cols);
                let one = self.iconst(1);
                let mut outs: Vec<Res> = Vec::new();
                let kind = match op {
                    LibOp::TopK { k, values, indices } => {
                        let kk = self.iconst(*k as i64);
                        // The outputs are checked against `k` columns; `k > cols` is the routine's error.
                        for r in [values, indices].into_iter().flatten() {
                            let x = self.region(r, "topk's output")?;
                            self.check(&x, rows, kk);
                            outs.push(x);
                        }
                        LibKind::TopK { k: *k, values: values.is_some(), indices: indices.is_some() }
                    }
                    LibOp::ArgSort { descending, dst } => {
                        let x = self.region(dst, "argsort's output")?;
                        self.check(&x, rows, cols);
                        outs.push(x);
                        LibKind::ArgSort { descending: *descending }
                    }
                    LibOp::CumSum { exclusive, dst, carry } => {
                        let x = self.region(dst, "cumsum's output")?;
                        self.check(&x, rows, cols);
                        outs.push(x);
                        if let Some(c) = carry {
                            let x = self.region(c, "cumsum's carry")?;
                            self.check(&x, rows, one);
                            outs.push(x);
                        }
                        LibKind::CumSum { exclusive: *exclusive, carry: carry.is_some() }
                    }
                    LibOp::BinCount { n, dst } => {
                        let x = self.region(dst, "bincount's output")?;
                        let nn = self.iconst(*n as i64);
                        self.check(&x, one, nn);
                        outs.push(x);
                        LibKind::BinCount { n: *n }
                    }
                };
                let site = self.site(Site::Library { span: *span, op: kind, what: s.what.clone() });
                let mut w = self.region_words(&s);
                w.extend([rows, cols]);
                for o in &outs {
                    w.extend(self.region_words(o));
                }
                while w.len() < 11 {
                    let z = self.iconst(0);
                    w.push(z);
                }
                let a = self.words(&w);
                let sv = self.iconst(site);
                let st = self.call("kc_rt_library", &[self.ctx, sv, a]).expect("a status");
                self.check_status(st);
            }
            Stmt::SetFlag { .. } | Stmt::WaitFlag { .. } | Stmt::Barrier { .. } => {}
            Stmt::CrossSet { flag } | Stmt::CrossWait { flag } => {
                let set = matches!(s, Stmt::CrossSet { .. });
                let site = self.site(Site::Internal(format!(
                    "{} cross-core flag {flag} at {} without a partner core (or a flag id above 10)",
                    if set { "sets" } else { "waits for" },
                    self.here()
                )));
                let f = self.iconst(i64::from(*flag));
                let sv = self.iconst(site);
                let name = if set { "kc_rt_cross_set" } else { "kc_rt_cross_wait" };
                let st = self.call(name, &[self.ctx, f, sv]).expect("a status");
                self.check_status(st);
            }
        }
        Ok(())
    }

    fn var(&self, v: kc_ir::tile::SVar) -> Result<Variable, Diagnostic> {
        self.vars.get(v.0 as usize).copied().ok_or_else(|| self.err(format!("register #{} is not declared", v.0)))
    }

    /// `while v + extent <= limit { body(v); v += step }` (for `extent` 1: `while v < limit`), `v` set by the
    /// caller; the body gets `v`'s value.
    fn loop_while_fits(
        &mut self,
        v: Variable,
        extent: i64,
        limit: Value,
        step: i64,
        body: impl FnOnce(&mut Self, Value) -> Result<(), Diagnostic>,
    ) -> Result<(), Diagnostic> {
        let head = self.b.create_block();
        let body_b = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(head);
        let cur = self.b.use_var(v);
        let fits = if extent == 1 {
            self.b.ins().icmp(IntCC::SignedLessThan, cur, limit)
        } else {
            let end = self.b.ins().iadd_imm_s(cur, extent);
            self.b.ins().icmp(IntCC::SignedLessThanOrEqual, end, limit)
        };
        self.b.ins().brif(fits, body_b, &[], done, &[]);
        self.b.switch_to_block(body_b);
        let cur = self.b.use_var(v);
        body(self, cur)?;
        let cur = self.b.use_var(v);
        let next = self.b.ins().iadd_imm_s(cur, step);
        self.b.def_var(v, next);
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(done);
        Ok(())
    }

    /// Stores `words` (i64 values) in a stack slot; its address.
    fn words(&mut self, words: &[Value]) -> Value {
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (words.len() * 8) as u32,
            3,
        ));
        for (i, w) in words.iter().enumerate() {
            self.b.ins().stack_store(types::I64, *w, slot, (i * 8) as i32);
        }
        self.b.ins().stack_addr(types::I64, slot, 0)
    }

    /// `[address of (0, 0), dtype code, row stride]`.
    fn region_words(&mut self, r: &Res) -> Vec<Value> {
        let p = self.elem_addr(r, None, None);
        let d = self.iconst(native::dtype_code(r.dtype));
        vec![p, d, r.stride]
    }

    // ----- scalar expressions -----

    fn sexpr(&mut self, e: &SExpr) -> Result<Value, Diagnostic> {
        Ok(match e {
            SExpr::Const(c) => self.iconst(*c),
            SExpr::Var(v) => {
                let v = self.var(*v)?;
                self.b.use_var(v)
            }
            SExpr::Core => self.core,
            SExpr::Bin(op, a, b) => {
                let a = self.sexpr(a)?;
                let b = self.sexpr(b)?;
                match op {
                    SBin::Add => self.b.ins().iadd(a, b),
                    SBin::Sub => self.b.ins().isub(a, b),
                    SBin::Mul => self.b.ins().imul(a, b),
                    SBin::Min => self.b.ins().smin(a, b),
                    SBin::Max => self.b.ins().smax(a, b),
                    SBin::Lt => self.cmp(IntCC::SignedLessThan, a, b),
                    SBin::Le => self.cmp(IntCC::SignedLessThanOrEqual, a, b),
                    SBin::Eq => self.cmp(IntCC::Equal, a, b),
                    SBin::Div | SBin::Mod => {
                        if let SExpr::Const(c) = *e_rhs(e) {
                            if c > 0 {
                                return Ok(self.floor_divmod_pos(a, b, *op == SBin::Div));
                            }
                        }
                        let z = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
                        let msg = format!("a scalar-unit division by zero at {}", self.here());
                        self.internal_if(z, msg);
                        self.floor_divmod(a, b, *op == SBin::Div)
                    }
                }
            }
            SExpr::Read { buf, slot, index } => {
                let slot = self.sexpr(slot)?;
                let index = self.sexpr(index)?;
                let (base, bdt, elems, slots, name) = self.buffer(*buf)?;
                if !matches!(bdt, DType::I32 | DType::F32) {
                    return Err(self.err(format!("a scalar read of buffer `{name}`, which holds {bdt}")));
                }
                let flat = self.b.ins().imul_imm_s(slot, elems as i64);
                let flat = self.b.ins().iadd(flat, index);
                let lim = self.iconst(elems as i64 * i64::from(slots));
                let lo = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, index, 0);
                let hi = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, index, elems as i64);
                let s_lo = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, slot, 0);
                let s_hi = self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, flat, lim);
                let bad = self.b.ins().bor(lo, hi);
                let bad2 = self.b.ins().bor(s_lo, s_hi);
                let bad = self.b.ins().bor(bad, bad2);
                let msg = format!("a scalar read outside buffer `{name}` at {}", self.here());
                self.internal_if(bad, msg);
                let off = self.b.ins().ishl_imm_s(flat, 2);
                let addr = self.b.ins().iadd(base, off);
                let v = self.b.ins().load(types::I32, TRUSTED, addr, 0);
                self.b.ins().sextend(types::I64, v)
            }
        })
    }

    fn cmp(&mut self, cc: IntCC, a: Value, b: Value) -> Value {
        let c = self.b.ins().icmp(cc, a, b);
        self.b.ins().uextend(types::I64, c)
    }

    /// Floor division or remainder by a positive divisor.
    fn floor_divmod_pos(&mut self, a: Value, b: Value, div: bool) -> Value {
        let q = self.b.ins().sdiv(a, b);
        let r = self.b.ins().srem(a, b);
        let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
        if div {
            let q1 = self.b.ins().iadd_imm_s(q, -1);
            self.b.ins().select(neg, q1, q)
        } else {
            let r1 = self.b.ins().iadd(r, b);
            self.b.ins().select(neg, r1, r)
        }
    }

    /// Floor division or remainder (`b != 0`), wrapping on `MIN / -1` as the interpreter does.
    fn floor_divmod(&mut self, a: Value, b: Value, div: bool) -> Value {
        // x86 traps on MIN / -1: divide by 1 instead and fix the result up.
        let m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let one = self.iconst(1);
        let bb = self.b.ins().select(m1, one, b);
        let q = self.b.ins().sdiv(a, bb);
        let r = self.b.ins().srem(a, bb);
        let rnz = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
        let rneg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
        let bneg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, bb, 0);
        let diff = self.b.ins().bxor(rneg, bneg);
        let adj = self.b.ins().band(rnz, diff);
        if div {
            let q1 = self.b.ins().iadd_imm_s(q, -1);
            let q = self.b.ins().select(adj, q1, q);
            let nq = self.b.ins().ineg(a);
            self.b.ins().select(m1, nq, q)
        } else {
            let r1 = self.b.ins().iadd(r, bb);
            let r = self.b.ins().select(adj, r1, r);
            let z = self.iconst(0);
            self.b.ins().select(m1, z, r)
        }
    }

    // ----- regions -----

    fn buffer(&self, buf: BufId) -> Result<(Value, DType, u64, u32, String), Diagnostic> {
        let b = self.launch.buffers.get(buf.0 as usize).ok_or_else(|| self.err(format!("buffer #{}", buf.0)))?;
        let base = self.bufs[buf.0 as usize].ok_or_else(|| {
            self.err(format!("buffer `{}` in {} belongs to the other kind of core", b.name, b.mem.name()))
        })?;
        Ok((base, b.dtype, b.slot_elems(), b.slots, b.name.clone()))
    }

    fn gm_len(&self, t: TensorId) -> Result<u64, Diagnostic> {
        let g = self.prog.tensors.get(t.0 as usize).ok_or_else(|| self.err(format!("GM tensor #{}", t.0)))?;
        Ok(match g.role {
            TensorRole::Workspace { per_core, .. } => {
                let cores = self
                    .prog
                    .launches
                    .iter()
                    .filter(|l| kc_runtime::gm::uses_tensor(l, t))
                    .map(|l| u64::from(l.cube_cores) + u64::from(l.vector_cores))
                    .max()
                    .unwrap_or(0);
                per_core.saturating_mul(cores) / g.dtype.size_bytes() as u64
            }
            _ => g.shape.iter().product(),
        })
    }

    fn region(&mut self, r: &Region, what: &str) -> Result<Res, Diagnostic> {
        let offset = self.sexpr(&r.offset)?;
        let stride = self.sexpr(&r.row_stride)?;
        match &r.loc {
            Loc::Gm(t) => {
                let g = self.prog.tensors.get(t.0 as usize).ok_or_else(|| self.err(format!("GM tensor #{}", t.0)))?;
                // A unit-private workspace: the offset relative to the unit's area, bounded by the area (the
                // thread's own, which the GM pointer is for this launch).
                if let Some(&(start, e)) = self.private.get(&(t.0 as usize)) {
                    let offset = self.b.ins().isub(offset, start);
                    return Ok(Res {
                        base: self.gm[t.0 as usize],
                        dtype: g.dtype,
                        offset,
                        stride,
                        limit: e,
                        what: format!("{what} in this unit's area of workspace `{}` at {}", g.name, self.here()),
                    });
                }
                let limit = self.gm_len(*t)?;
                Ok(Res {
                    base: self.gm[t.0 as usize],
                    dtype: g.dtype,
                    offset,
                    stride,
                    limit,
                    what: format!("{what} in GM tensor `{}` at {}", g.name, self.here()),
                })
            }
            Loc::Buf { buf, slot } => {
                let (base, dtype, elems, slots, name) = self.buffer(*buf)?;
                let base = if slots == 1 && matches!(slot, SExpr::Const(0)) {
                    base
                } else {
                    let s = self.sexpr(slot)?;
                    let lo = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, s, 0);
                    let hi = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, s, i64::from(slots));
                    let bad = self.b.ins().bor(lo, hi);
                    let msg = format!("a slot outside buffer `{name}` ({slots} slots) for {what} at {}", self.here());
                    self.internal_if(bad, msg);
                    let off = self.b.ins().imul_imm_s(s, (elems * dtype.size_bytes() as u64) as i64);
                    self.b.ins().iadd(base, off)
                };
                Ok(Res {
                    base,
                    dtype,
                    offset,
                    stride,
                    limit: elems,
                    what: format!("{what} in buffer `{name}` at {}", self.here()),
                })
            }
        }
    }

    /// Stops unless the `rows × cols` window of `r` is inside its storage (nothing is checked for an empty
    /// window; negative sizes, offsets and row strides fail). Overflow-free in 64 bits: every term is
    /// compared with the limit (at most 2^40) before it is added.
    fn check(&mut self, r: &Res, rows: Value, cols: Value) {
        let site = self.site(Site::Bounds { what: r.what.clone(), limit: r.limit });
        let lim = r.limit as i64;
        let neg_r = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, rows, 0);
        let neg_c = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, cols, 0);
        let neg = self.b.ins().bor(neg_r, neg_c);
        let z_r = self.b.ins().icmp_imm_s(IntCC::Equal, rows, 0);
        let z_c = self.b.ins().icmp_imm_s(IntCC::Equal, cols, 0);
        let empty = self.b.ins().bor(z_r, z_c);
        let neg_o = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r.offset, 0);
        let neg_s = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r.stride, 0);
        let big_o = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, r.offset, lim);
        let big_c = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, cols, lim);
        let r1 = self.b.ins().iadd_imm_s(rows, -1);
        let hi = self.b.ins().umulhi(r1, r.stride);
        let ovf = self.b.ins().icmp_imm_s(IntCC::NotEqual, hi, 0);
        let span = self.b.ins().imul(r1, r.stride);
        let big_span = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, span, lim);
        let end = self.b.ins().iadd(r.offset, span);
        let end = self.b.ins().iadd(end, cols);
        let past = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, end, lim);
        let mut out = neg_o;
        for x in [neg_s, big_o, big_c, ovf, big_span, past] {
            out = self.b.ins().bor(out, x);
        }
        let nonempty = self.b.ins().bxor_imm_s(empty, 1);
        let out = self.b.ins().band(out, nonempty);
        let bad = self.b.ins().bor(out, neg);
        self.fail_if(bad, site, [r.offset, r.stride, rows, cols]);
    }

    /// The address of element `(r, c)` of a region (`None` for 0).
    fn elem_addr(&mut self, x: &Res, r: Option<Value>, c: Option<Value>) -> Value {
        let mut flat = x.offset;
        if let Some(r) = r {
            let rs = self.b.ins().imul(r, x.stride);
            flat = self.b.ins().iadd(flat, rs);
        }
        if let Some(c) = c {
            flat = self.b.ins().iadd(flat, c);
        }
        let sz = x.dtype.size_bytes() as i64;
        let bytes = if sz == 1 { flat } else { self.b.ins().imul_imm_s(flat, sz) };
        self.b.ins().iadd(x.base, bytes)
    }
}

/// Whether `e` reads the scalar register `v`.
fn mentions(e: &SExpr, v: SVar) -> bool {
    match e {
        SExpr::Const(_) | SExpr::Core => false,
        SExpr::Var(x) => *x == v,
        SExpr::Bin(_, a, b) => mentions(a, v) || mentions(b, v),
        SExpr::Read { slot, index, .. } => mentions(slot, v) || mentions(index, v),
    }
}

/// `Some(k)` if `e` is `base + k·v` with `base` not reading `v` (sums, differences and constant multiples of
/// `v`); `None` if `v` appears any other way.
fn step_of(e: &SExpr, v: SVar) -> Option<i64> {
    if !mentions(e, v) {
        return Some(0);
    }
    match e {
        SExpr::Var(_) => Some(1),
        SExpr::Bin(SBin::Add, a, b) => step_of(a, v)?.checked_add(step_of(b, v)?),
        SExpr::Bin(SBin::Sub, a, b) => step_of(a, v)?.checked_sub(step_of(b, v)?),
        SExpr::Bin(SBin::Mul, a, b) => match (&**a, &**b) {
            (SExpr::Const(k), x) | (x, SExpr::Const(k)) => step_of(x, v)?.checked_mul(*k),
            _ => None,
        },
        _ => None,
    }
}

/// The right operand of a binary scalar expression.
fn e_rhs(e: &SExpr) -> &SExpr {
    match e {
        SExpr::Bin(_, _, b) => b,
        _ => unreachable!("e_rhs of a non-binary expression"),
    }
}

// -------------------------------------------------------------------------------------------------------------
// Vector statements.

/// Per-node facts of a vector expression.
pub(crate) fn ty_of(prog: &TileProgram, l: &Launch, e: &VExpr) -> Option<Ty> {
    let dt = |r: &Region| -> Option<DType> {
        match &r.loc {
            Loc::Gm(t) => prog.tensors.get(t.0 as usize).map(|g| g.dtype),
            Loc::Buf { buf, .. } => l.buffers.get(buf.0 as usize).map(|b| b.dtype),
        }
    };
    let of = |d: DType| match d {
        DType::F32 | DType::BF16 | DType::F16 => Ty::F,
        DType::I32 => Ty::I,
        DType::Bool => Ty::B,
    };
    Some(match e {
        VExpr::F32(_) => Ty::F,
        VExpr::I32(_) | VExpr::Scalar(_) | VExpr::Row | VExpr::Col => Ty::I,
        VExpr::Bool(_) => Ty::B,
        VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => of(dt(r)?),
        VExpr::Unary(UnOp::Not, _) => Ty::B,
        VExpr::Unary(_, a) => ty_of(prog, l, a)?,
        VExpr::Binary(op, a, _) => match op {
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::And | BinOp::Or => Ty::B,
            _ => ty_of(prog, l, a)?,
        },
        VExpr::Select(_, a, _) => ty_of(prog, l, a)?,
        VExpr::Cast(d, _) => of(*d),
    })
}

/// Whether a row routine of form `form` runs as one call for its block of rows ([`rowmath::kc_rt_rows_axpy`],
/// which requests the rows ahead): `src · s + add` with `s` the same for every row (a constant or scalar
/// registers: Muon's `3.4445 · x + b·x`). A per-row `s` (attention's `o · alpha`) stays a call per row.
fn block_axpy(form: &RowForm<'_>) -> bool {
    matches!(form, RowForm::Axpy { s, .. } if var_of(s) == Var::Const)
}

pub(crate) fn var_of(e: &VExpr) -> Var {
    match e {
        VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Scalar(_) => Var::Const,
        VExpr::Row | VExpr::ReadRow(_) => Var::Row,
        VExpr::Col | VExpr::Read(_) | VExpr::ReadCol(_) => Var::Elem,
        VExpr::Unary(_, a) | VExpr::Cast(_, a) => var_of(a),
        VExpr::Binary(_, a, b) => var_of(a).max(var_of(b)),
        VExpr::Select(c, a, b) => var_of(c).max(var_of(a)).max(var_of(b)),
    }
}

/// Whether the column-dependent part of `e` can run on `f32x4` lanes.
fn simd_ok(prog: &TileProgram, l: &Launch, e: &VExpr) -> bool {
    if var_of(e) != Var::Elem {
        return true;
    }
    let Some(t) = ty_of(prog, l, e) else { return false };
    if t == Ty::I {
        return false;
    }
    let rdt = |r: &Region| match &r.loc {
        Loc::Gm(t) => prog.tensors.get(t.0 as usize).map(|g| g.dtype),
        Loc::Buf { buf, .. } => l.buffers.get(buf.0 as usize).map(|b| b.dtype),
    };
    match e {
        VExpr::Col => false,
        VExpr::Read(r) | VExpr::ReadCol(r) => matches!(rdt(r), Some(DType::F32 | DType::BF16)),
        VExpr::Unary(op, a) => {
            !matches!(op, UnOp::Not) && simd_ok(prog, l, a) || (*op == UnOp::Not && simd_ok(prog, l, a))
        }
        VExpr::Cast(d, a) => match d {
            DType::F32 | DType::BF16 | DType::Bool => simd_ok(prog, l, a) && ty_of(prog, l, a) != Some(Ty::I),
            _ => false,
        },
        VExpr::Binary(op, a, b) => {
            let ta = ty_of(prog, l, a);
            let tb = ty_of(prog, l, b);
            if ta == Some(Ty::I) || tb == Some(Ty::I) {
                // Integer comparisons of `±c + row-level terms` with a row-level value (masks on the column).
                return is_cmp(*op) && int_cmp_parts(prog, l, a, b).is_some();
            }
            simd_ok(prog, l, a) && simd_ok(prog, l, b)
        }
        VExpr::Select(c, a, b) => {
            ty_of(prog, l, c) == Some(Ty::B) && simd_ok(prog, l, c) && simd_ok(prog, l, a) && simd_ok(prog, l, b)
        }
        _ => true,
    }
}

fn is_cmp(op: BinOp) -> bool {
    matches!(op, BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge)
}

/// `e` as `a·c + Σ ±term` with `a` = ±1 and every term a column-independent integer: `a`, and the terms
/// (negated or not) in `out`.
fn affine<'e>(
    prog: &TileProgram,
    l: &Launch,
    e: &'e VExpr,
    neg: bool,
    out: &mut Vec<(bool, &'e VExpr)>,
) -> Option<i64> {
    let row_int = |x: &VExpr| var_of(x) != Var::Elem && ty_of(prog, l, x) == Some(Ty::I);
    match e {
        VExpr::Col => Some(if neg { -1 } else { 1 }),
        VExpr::Unary(UnOp::Neg, x) => affine(prog, l, x, !neg, out),
        VExpr::Binary(op @ (BinOp::Add | BinOp::Sub), x, y) => {
            if var_of(x) == Var::Elem && row_int(y) {
                out.push((neg ^ (*op == BinOp::Sub), y));
                affine(prog, l, x, neg, out)
            } else if var_of(y) == Var::Elem && row_int(x) {
                out.push((neg, x));
                affine(prog, l, y, neg ^ (*op == BinOp::Sub), out)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A comparison `x op y` of integers where one side is affine in the column and the other is
/// column-independent: (the affine side is `x`, `a`, the affine side's terms, the other side).
#[allow(clippy::type_complexity)]
fn int_cmp_parts<'e>(
    prog: &TileProgram,
    l: &Launch,
    x: &'e VExpr,
    y: &'e VExpr,
) -> Option<(bool, i64, Vec<(bool, &'e VExpr)>, &'e VExpr)> {
    let row_int = |e: &VExpr| var_of(e) != Var::Elem && ty_of(prog, l, e) == Some(Ty::I);
    let mut terms = Vec::new();
    if row_int(y) {
        if let Some(a) = affine(prog, l, x, false, &mut terms) {
            return Some((true, a, terms, y));
        }
    }
    terms.clear();
    if row_int(x) {
        if let Some(a) = affine(prog, l, y, false, &mut terms) {
            return Some((false, a, terms, x));
        }
    }
    None
}

/// Where the element loop is: the row index and, in the column loop, the column index.
#[derive(Copy, Clone)]
struct At {
    r: Value,
    c: Value,
    /// Lane-0-only (a tail element): reads load one element.
    tail: bool,
}

/// The regions a vector expression reads, resolved once per statement, by the address of the `Region`.
type Reads = Vec<(*const Region, Res)>;

/// The most vector statements fused into one element loop.
const MAX_FUSED: usize = 16;

/// `e` with `x + 0`, `0 + x`, `x * 1` and constant sums and products folded (copy forwarding writes a
/// forwarded window's offset as `source offset + shift`), so that equal windows compare equal.
pub(crate) fn norm(e: &SExpr) -> SExpr {
    match e {
        SExpr::Bin(op @ (SBin::Add | SBin::Mul), a, b) => {
            let (a, b) = (norm(a), norm(b));
            match (op, &a, &b) {
                (SBin::Add, SExpr::Const(x), SExpr::Const(y)) => SExpr::Const(x.wrapping_add(*y)),
                (SBin::Mul, SExpr::Const(x), SExpr::Const(y)) => SExpr::Const(x.wrapping_mul(*y)),
                (SBin::Add, x, SExpr::Const(0)) | (SBin::Add, SExpr::Const(0), x) => x.clone(),
                (SBin::Mul, x, SExpr::Const(1)) | (SBin::Mul, SExpr::Const(1), x) => x.clone(),
                _ => SExpr::Bin(*op, Box::new(a), Box::new(b)),
            }
        }
        SExpr::Bin(op, a, b) => SExpr::Bin(*op, Box::new(norm(a)), Box::new(norm(b))),
        _ => e.clone(),
    }
}

/// Whether two regions are the same window of the same storage (offsets and strides compared after
/// [`norm`]).
pub(crate) fn same_window(a: &Region, b: &Region) -> bool {
    a.loc == b.loc && norm(&a.offset) == norm(&b.offset) && norm(&a.row_stride) == norm(&b.row_stride)
}

/// Whether GM tensor `t` may share memory with another one: a parameter and a result of the same dtype and
/// shape (an `inout` updated in place, `kc_runtime::inplace`).
fn may_alias(prog: &TileProgram, t: TensorId) -> bool {
    let Some(g) = prog.tensors.get(t.0 as usize) else { return true };
    let kind = |r: &TensorRole| match r {
        TensorRole::Param(_) => Some(0),
        TensorRole::Output(_) => Some(1),
        _ => None,
    };
    let Some(k) = kind(&g.role) else { return false };
    prog.tensors.iter().any(|u| kind(&u.role) == Some(1 - k) && u.dtype == g.dtype && u.shape == g.shape)
}

/// Whether two regions are in the same storage (a buffer, any slot, or a GM tensor).
fn same_storage(a: &Region, b: &Region) -> bool {
    match (&a.loc, &b.loc) {
        (Loc::Buf { buf: x, .. }, Loc::Buf { buf: y, .. }) => x == y,
        (Loc::Gm(x), Loc::Gm(y)) => x == y,
        _ => false,
    }
}

/// Whether `expr` stored into `dtype` makes every byte of the element zero: the constant `+0.0` (not `-0.0`)
/// into `f32`, bf16 or f16 (each rounds it to all-zero bits), or `0` into `i32` ([`native::kc_rt_zero`]).
fn zero_bytes(expr: &VExpr, dtype: DType) -> bool {
    match (expr, dtype) {
        (VExpr::F32(x), DType::F32 | DType::BF16 | DType::F16) => x.to_bits() == 0,
        (VExpr::I32(0), DType::I32) => true,
        _ => false,
    }
}

/// A vector statement that a host routine computes row by row, 16 lanes at a time ([`Gen::row_routine`]).
enum RowForm<'e> {
    /// `exp(src - s)` (or `exp(src)`; `k·src` for `src` with `k`) into `f32`: [`rowmath::kc_rt_row_exp`].
    Exp { src: &'e Region, s: Option<&'e VExpr>, k: Option<&'e VExpr> },
    /// `src op s`, or `s op src` (`swap`), `op` one of `+ - * /`, into `f32` or bf16:
    /// [`rowmath::kc_rt_row_scalar`].
    Scalar { src: &'e Region, s: &'e VExpr, op: BinOp, swap: bool },
    /// `src · s + add` (or `s · src + add`: `swap`; `add + ` the product: `add_first`), `add` `f32`, `src`
    /// `f32` or bf16, into `f32` or bf16: [`rowmath::kc_rt_row_axpy`].
    Axpy { src: &'e Region, s: &'e VExpr, add: &'e Region, swap: bool, add_first: bool },
    /// `silu(src) · add`, both `f32`, into `f32` or bf16 (SwiGLU's gate): [`rowmath::kc_rt_row_silu_mul`].
    SiluMul { src: &'e Region, add: &'e Region },
    /// `where(a + c <= b, k · src, fill)` (or `src · k`: `swap`; `src` without `k`; `c + a`, or `c` without
    /// `a`), `a` and `b` row-invariant integers, `k` and `fill` row-invariant floats, `src` `f32`, into `f32`
    /// (causal attention's mask on a diagonal block): [`rowmath::kc_rt_row_mask`].
    Mask { src: &'e Region, k: Option<&'e VExpr>, swap: bool, a: Option<&'e VExpr>, b: &'e VExpr, fill: &'e VExpr },
}

/// Rewrites each vector statement over a column of a buffer or GM tensor (`rows × 1`, the destination's rows one element
/// apart: `ld 1`) as the same statement over one row (`1 × rows`), when every operand maps the same way:
/// element `(r, 0)` becomes `(0, r)`, an element read `x[r, 0]` (`ld 1`) reads `x[0, r]`, a per-row read
/// `x[r, 0]` is a per-column read `x[0, c]` (`ld 1`) or stays the one value it is (`ld 0`), a per-column read
/// (`x[0, 0]` for the only column) is a per-row read of row 0, and the row index is the column index (the
/// column index, 0, the constant 0). The statement computes the same values into the same elements, all read
/// before any is written as before (the tile IR's semantics; the compiled code keeps them for either
/// shape), but the JIT's code goes along a row 4 or 8 lanes at a time and calls the row routines, instead of
/// one row, one lane, of code per element: attention's running maxima, sums and rescaling factors (`m`,
/// `l`, `alpha`: 64 × 1 each, five statements per score block, 8192 blocks per call at the benchmark's
/// size). A column of a GM tensor (`ld 1`: consecutive elements) is flipped the same way: copy forwarding
/// turns attention's `lse = log(l) + m` into a statement straight into the `lse` output, which ran one row
/// (a 4-lane `log` of one value) per element.
fn columns_as_rows(body: &mut [Stmt]) {
    fn one(e: &SExpr, k: i64) -> bool {
        matches!(e, SExpr::Const(x) if *x == k)
    }
    /// `e` over `1 × rows`, or `None` if an operand does not map.
    fn flip(e: &VExpr) -> Option<VExpr> {
        Some(match e {
            VExpr::Read(x) if one(&x.row_stride, 1) => VExpr::Read(x.clone()),
            VExpr::ReadRow(x) if one(&x.row_stride, 1) => VExpr::ReadCol(x.clone()),
            VExpr::ReadRow(x) if one(&x.row_stride, 0) => VExpr::ReadRow(x.clone()),
            VExpr::ReadCol(x) => VExpr::ReadRow(x.clone()),
            VExpr::Read(_) | VExpr::ReadRow(_) => return None,
            VExpr::Row => VExpr::Col,
            VExpr::Col => VExpr::I32(0),
            VExpr::F32(_) | VExpr::I32(_) | VExpr::Bool(_) | VExpr::Scalar(_) => e.clone(),
            VExpr::Unary(op, a) => VExpr::Unary(*op, Box::new(flip(a)?)),
            VExpr::Cast(t, a) => VExpr::Cast(*t, Box::new(flip(a)?)),
            VExpr::Binary(op, a, b) => VExpr::Binary(*op, Box::new(flip(a)?), Box::new(flip(b)?)),
            VExpr::Select(c, a, b) => VExpr::Select(Box::new(flip(c)?), Box::new(flip(a)?), Box::new(flip(b)?)),
        })
    }
    for s in body.iter_mut() {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => columns_as_rows(body),
            Stmt::Vector { dst, rows, cols, expr } if one(cols, 1) && !one(rows, 1) && one(&dst.row_stride, 1) => {
                if let Some(e) = flip(expr) {
                    *expr = e;
                    *cols = std::mem::replace(rows, SExpr::Const(1));
                }
            }
            _ => {}
        }
    }
}

/// The six statements of the standard library's `softmax` over the rows of a block, as the tiler emits
/// them: `reduce.max axis 1 x -> mr`, `m = mr[r, 0]`, `e = exp(x - where(m[r, 0] == -inf, 0.0, m[r, 0]))`,
/// `reduce.sum axis 1 e -> tr`, `t = tr[r, 0]`, `y = e / t[r, 0]`, over the same rows (and `x`'s columns),
/// neither reduction accumulating; `x` `f32` or bf16, `y` bf16 (a buffer or a GM tensor: if both may share
/// memory with another tensor, `y` is `x`'s own elements, rows apart), the other five `f32` buffers; the
/// seven in storage apart. [`Gen::softmax_rows`] computes them in one call of [`rowmath::kc_rt_softmax_rows`]
/// a block.
struct SoftmaxGroup<'p> {
    x: &'p Region,
    y: &'p Region,
    e: &'p Region,
    /// The maximum's window, its copy's, the sum's, its copy's.
    small: [&'p Region; 4],
    rows: &'p SExpr,
    cols: &'p SExpr,
}

impl SoftmaxGroup<'_> {
    /// The statements of a group.
    const LEN: usize = 6;
}

/// Whether `body` (a loop's) is softmax groups ([`softmax_group`]), at least one, among statements that touch
/// no memory (scalar assignments, flags, branches of the same), and no scalar expression in it reads a
/// buffer: its groups' calls may each leave their last row's division to the next call, and the loop's end
/// to [`rowmath::kc_rt_softmax_end`]. Nothing between two calls reads or writes what the division writes,
/// and a call that would touch the carried rows first divides them (`kc_rt_softmax_rows`). Nor does a
/// cross-core wait suspend the core's coroutine in between (`native::kc_rt_cross_wait`), so the division
/// the thread carries is this core's.
fn carry_loop(prog: &TileProgram, l: &Launch, body: &[Stmt]) -> bool {
    fn walk(prog: &TileProgram, l: &Launch, body: &[Stmt], groups: &mut usize, reads: &mut BTreeSet<BufId>) -> bool {
        let mut i = 0;
        while i < body.len() {
            if softmax_group(prog, l, &body[i..]).is_some() {
                for s in &body[i..i + SoftmaxGroup::LEN] {
                    crate::forward::region_sexpr_reads(s, reads);
                }
                *groups += 1;
                i += SoftmaxGroup::LEN;
                continue;
            }
            match &body[i] {
                Stmt::Set { value, .. } => crate::forward::sexpr_reads(value, reads),
                Stmt::SetFlag { .. } | Stmt::WaitFlag { .. } => {}
                Stmt::If { cond, then } => {
                    crate::forward::sexpr_reads(cond, reads);
                    if !walk(prog, l, then, groups, reads) {
                        return false;
                    }
                }
                _ => return false,
            }
            i += 1;
        }
        true
    }
    let (mut groups, mut reads) = (0, BTreeSet::new());
    walk(prog, l, body, &mut groups, &mut reads) && groups > 0 && reads.is_empty()
}

/// The [`SoftmaxGroup`] at the start of `body`, if there is one.
fn softmax_group<'p>(prog: &TileProgram, l: &Launch, body: &'p [Stmt]) -> Option<SoftmaxGroup<'p>> {
    let [Stmt::Reduce { op: ReduceOp::Max, axis: 1, src: x, dst: mr, rows, cols, accumulate: false }, s1 @ Stmt::Vector { dst: m, .. }, Stmt::Vector { dst: e, rows: r2, cols: c2, expr: ex }, Stmt::Reduce { op: ReduceOp::Sum, axis: 1, src: e3, dst: tr, rows: r3, cols: c3, accumulate: false }, s4 @ Stmt::Vector { dst: t, .. }, Stmt::Vector { dst: y, rows: r5, cols: c5, expr: VExpr::Binary(BinOp::Div, ya, yb) }, ..] =
        body
    else {
        return None;
    };
    let one = SExpr::Const(1);
    // A copy `dst[r, 0] = src[r, 0]` over `rows × 1`, or as `columns_as_rows` turns it when both windows'
    // rows are one element apart: `dst[0, c] = src[0, c]` over `1 × rows` (the same elements).
    let copy = |s: &Stmt, src: &Region| match s {
        Stmt::Vector { rows: r, cols: c, expr: VExpr::ReadRow(a), .. } => r == rows && *c == one && a == src,
        Stmt::Vector { dst, rows: r, cols: c, expr: VExpr::ReadCol(a) } => {
            *r == one && c == rows && a == src && a.row_stride == one && dst.row_stride == one
        }
        _ => false,
    };
    let sizes = [(r2, c2), (r3, c3), (r5, c5)];
    if sizes.iter().any(|(r, c)| *r != rows || *c != cols) || !copy(s1, mr) || e3 != e || !copy(s4, tr) {
        return None;
    }
    let row_of = |v: &VExpr, w: &Region| matches!(v, VExpr::ReadRow(r) if r == w);
    if !matches!(&**ya, VExpr::Read(r) if r == e) || !row_of(yb, t) {
        return None;
    }
    // `exp(x - where(m[r, 0] == -inf, 0.0, m[r, 0]))`
    let VExpr::Unary(UnOp::Exp, arg) = ex else { return None };
    let VExpr::Binary(BinOp::Sub, xa, sh) = &**arg else { return None };
    let VExpr::Select(cond, zero, mb) = &**sh else { return None };
    let VExpr::Binary(BinOp::Eq, ma, inf) = &**cond else { return None };
    let is = |v: &VExpr, k: f32| matches!(v, VExpr::F32(c) if c.to_bits() == k.to_bits());
    if !matches!(&**xa, VExpr::Read(r) if r == x)
        || !row_of(ma, m)
        || !row_of(mb, m)
        || !is(inf, f32::NEG_INFINITY)
        || !is(zero, 0.0)
    {
        return None;
    }
    let dt = |r: &Region| region_dtype(prog, l, r);
    let buf_f32 = |r: &Region| matches!(r.loc, Loc::Buf { .. }) && dt(r) == Some(DType::F32);
    if !matches!(dt(x), Some(DType::F32 | DType::BF16))
        || dt(y) != Some(DType::BF16)
        || ![mr, m, e, tr, t].into_iter().all(buf_f32)
    {
        return None;
    }
    // An in-place result (`y` the memory of `x`): the same elements, rows apart, so that each row's results
    // are written after the row's reads and touch no other row (the call goes row by row). `y` may share
    // the memory of another parameter: the group reads none.
    let aliased = |r: &Region| matches!(r.loc, Loc::Gm(g) if may_alias(prog, g));
    if aliased(x) && aliased(y) {
        let apart = matches!((norm(&x.row_stride), cols), (SExpr::Const(s), SExpr::Const(c)) if s >= *c);
        if norm(&x.offset) != norm(&y.offset) || norm(&x.row_stride) != norm(&y.row_stride) || !apart {
            return None;
        }
    }
    let all = [x, y, e, mr, m, tr, t];
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|b| same_storage(a, b)) {
            return None;
        }
    }
    Some(SoftmaxGroup { x, y, e, small: [mr, m, tr, t], rows, cols })
}

/// A vector statement `exp(src - s)` into `f32` ([`row_form`]) followed by the sum of its destination's rows
/// (the same window and sizes) into an `f32` buffer apart from both, and optionally, past flag statements,
/// the cast of that window to bf16 into storage apart from the others (a buffer, or a GM tensor that no
/// other may alias): the statements [`Gen::exp_sum`] computes in one host call per row.
struct ExpGroup<'p> {
    dst: &'p Region,
    rows: &'p SExpr,
    cols: &'p SExpr,
    expr: &'p VExpr,
    form: RowForm<'p>,
    /// The sum's destination and whether it accumulates.
    sum: (&'p Region, bool),
    /// The cast's destination, if the group has the cast.
    conv: Option<&'p Region>,
    /// The flag statements between the sum and the cast (none without the cast).
    flags: usize,
}

impl ExpGroup<'_> {
    /// The statements of the group: the `exp`, the sum, and the flags and the cast if any.
    fn len(&self) -> usize {
        if self.conv.is_some() {
            3 + self.flags
        } else {
            2
        }
    }
}

/// The [`ExpGroup`] at the start of `body`, if there is one.
fn exp_group<'p>(prog: &TileProgram, l: &Launch, body: &'p [Stmt]) -> Option<ExpGroup<'p>> {
    let [Stmt::Vector { dst, rows, cols, expr }, Stmt::Reduce { op: ReduceOp::Sum, axis: 1, src, dst: rd, rows: r2, cols: c2, accumulate }, rest @ ..] =
        body
    else {
        return None;
    };
    if src != dst || r2 != rows || c2 != cols {
        return None;
    }
    let form @ RowForm::Exp { .. } = row_form(prog, l, dst, expr)? else { return None };
    if region_dtype(prog, l, rd) != Some(DType::F32) || !matches!(rd.loc, Loc::Buf { .. }) {
        return None;
    }
    let mut regions = Vec::new();
    collect_reads(expr, &mut regions);
    if same_storage(rd, dst) || regions.iter().any(|(_, r)| same_storage(r, rd)) {
        return None;
    }
    let flags = rest.iter().take_while(|s| matches!(s, Stmt::SetFlag { .. } | Stmt::WaitFlag { .. })).count();
    let conv = match rest.get(flags) {
        Some(Stmt::Vector { dst: cd, rows: r3, cols: c3, expr: VExpr::Read(x) })
            if x == dst
                && r3 == rows
                && c3 == cols
                && (match cd.loc {
                    Loc::Buf { .. } => true,
                    Loc::Gm(t) => !may_alias(prog, t),
                })
                && region_dtype(prog, l, cd) == Some(DType::BF16)
                && !same_storage(cd, dst)
                && !same_storage(cd, rd)
                && !regions.iter().any(|(_, r)| same_storage(r, cd)) =>
        {
            Some(cd)
        }
        _ => None,
    };
    Some(ExpGroup {
        dst,
        rows,
        cols,
        expr,
        form,
        sum: (rd, *accumulate),
        flags: if conv.is_some() { flags } else { 0 },
        conv,
    })
}

/// The buffers into which [`ExpGroup`]s of `body` (a vector program, as compiled: after copy forwarding)
/// store `exp` rows that nothing reads: buffers of the core's own memory that `other` (the partner
/// program) does not mention and that no statement of `body` reads except the group's own sum and cast of
/// the `exp`'s window, which the group's host call computes from the values in its registers, and reads
/// *shielded* by a covering overwrite (`Shields`). The `f32` store of such a group is dead: every other
/// statement that reads the buffer would have to be a read outside a group, and there is none (the groups'
/// `exp`s themselves, their row values and window expressions count as reads), or it reads values a plain
/// statement wrote after every group. The statements are walked as [`Gen::stmts`] compiles them: a fused
/// run ([`fusable_run`]) is ordinary statements, then a group, then a statement (loop and branch bodies
/// likewise). Attention's `exp` rows (`raw_ub` without a mask: the scores read in the cube's workspace by
/// copy forwarding, the exp's row sum and `p` computed in the same call) are such stores; so are the causal
/// kernel's: its diagonal blocks read their masked scores in that buffer, but only after the mask's
/// statement has overwritten the whole window they read.
pub fn dead_exp_stores(prog: &TileProgram, l: &Launch, body: &[Stmt], other: &[Stmt]) -> BTreeSet<BufId> {
    fn walk(
        prog: &TileProgram,
        l: &Launch,
        body: &[Stmt],
        groups: &mut BTreeSet<BufId>,
        read: &mut BTreeSet<BufId>,
        sh: &mut Shields,
    ) {
        // A region's window expressions (offset, row stride, slot) read what their scalar reads read.
        let window = |r: &Region, read: &mut BTreeSet<BufId>| {
            crate::forward::sexpr_reads(&r.offset, read);
            crate::forward::sexpr_reads(&r.row_stride, read);
            if let Loc::Buf { slot, .. } = &r.loc {
                crate::forward::sexpr_reads(slot, read);
            }
        };
        let mut i = 0;
        while i < body.len() {
            let n = fusable_run(prog, l, &body[i..]);
            if n >= 2 {
                crate::forward::reads_of(&body[i..i + n], read);
                sh.written(&body[i..i + n]);
                i += n;
                continue;
            }
            if let Some(g) = exp_group(prog, l, &body[i..]) {
                match g.dst.loc {
                    Loc::Buf { buf, .. } => {
                        groups.insert(buf);
                    }
                    Loc::Gm(_) => {}
                }
                // The `exp` statement reads what it reads (its own window too, if it computes in place:
                // unless a plain statement overwrote that window last).
                sh.reads(&body[i], read);
                // The sum: its window expressions and sizes, and its destination if it accumulates.
                crate::forward::region_sexpr_reads(&body[i + 1], read);
                if g.sum.1 {
                    if let Loc::Buf { buf, .. } = g.sum.0.loc {
                        read.insert(buf);
                    }
                }
                // The cast: its destination's and its source's window expressions and its sizes.
                if g.conv.is_some() {
                    let cast = &body[i + 2 + g.flags];
                    crate::forward::region_sexpr_reads(cast, read);
                    window(g.dst, read);
                }
                // What the group writes (its `exp` rows among them) is no plain statement's any more.
                sh.written(&body[i..i + g.len()]);
                i += g.len();
                continue;
            }
            match &body[i] {
                Stmt::For { lo, hi, body: b, .. } => {
                    crate::forward::sexpr_reads(lo, read);
                    crate::forward::sexpr_reads(hi, read);
                    // The body runs again after itself and assigns its variable: nothing carries in or out.
                    sh.clear();
                    walk(prog, l, b, groups, read, &mut Shields::default());
                }
                Stmt::If { cond, then } => {
                    crate::forward::sexpr_reads(cond, read);
                    let mut inner = sh.enter(cond);
                    walk(prog, l, then, groups, read, &mut inner);
                    sh.leave(cond, then, inner);
                }
                s => {
                    sh.reads(s, read);
                    sh.written(std::slice::from_ref(s));
                    if let Stmt::Vector { dst, rows, cols, .. } = s {
                        sh.overwrite(dst, rows, cols);
                    }
                }
            }
            i += 1;
        }
    }
    let (mut groups, mut read) = (BTreeSet::new(), BTreeSet::new());
    walk(prog, l, body, &mut groups, &mut read, &mut Shields::default());
    let partner = crate::forward::referenced(other);
    groups.retain(|b| !read.contains(b) && !partner.contains(b));
    groups
}

/// The `f32` buffers into which fused runs ([`fusable_run`]) of `body` (a vector program, as compiled) store
/// results that only their own runs read, each read an element read of exactly the window an earlier
/// statement of the same run stored (`Region` equality): AdamW's `m`, `v`, `m_hat` and `v_hat`, which the
/// later statements take from the computed vectors. Any other read (outside the runs, a row or column read,
/// another window, a window expression or size that reads the buffer, or a mention by `other`, the partner
/// program) keeps the buffer's stores. An AVX-512 run (`crate::wide`) forwards every such read from its
/// registers, tails included, and does not store these results; the 128-bit loop stores them (its
/// single-column tail reloads them).
pub fn dead_run_stores(prog: &TileProgram, l: &Launch, body: &[Stmt], other: &[Stmt]) -> BTreeSet<BufId> {
    fn walk(prog: &TileProgram, l: &Launch, body: &[Stmt], cands: &mut BTreeSet<BufId>, read: &mut BTreeSet<BufId>) {
        let mut i = 0;
        while i < body.len() {
            let n = fusable_run(prog, l, &body[i..]);
            if n >= 2 {
                let run = &body[i..i + n];
                for (k, s) in run.iter().enumerate() {
                    let Stmt::Vector { dst, expr, .. } = s else { continue };
                    crate::forward::region_sexpr_reads(s, read);
                    let mut rs = Vec::new();
                    collect_reads(expr, &mut rs);
                    for (kind, r) in rs {
                        let forwarded = kind == 0
                            && run[..k].iter().any(|p| {
                                matches!(p, Stmt::Vector { dst: d, .. }
                                    if d == r && region_dtype(prog, l, d) == Some(DType::F32))
                            });
                        if let (false, Loc::Buf { buf, .. }) = (forwarded, &r.loc) {
                            read.insert(*buf);
                        }
                    }
                    if let Loc::Buf { buf, .. } = dst.loc {
                        if region_dtype(prog, l, dst) == Some(DType::F32) {
                            cands.insert(buf);
                        }
                    }
                }
                i += n;
                continue;
            }
            match &body[i] {
                Stmt::For { lo, hi, body: b, .. } => {
                    crate::forward::sexpr_reads(lo, read);
                    crate::forward::sexpr_reads(hi, read);
                    walk(prog, l, b, cands, read);
                }
                Stmt::If { cond, then } => {
                    crate::forward::sexpr_reads(cond, read);
                    walk(prog, l, then, cands, read);
                }
                s => crate::forward::reads_of(std::slice::from_ref(s), read),
            }
            i += 1;
        }
    }
    let (mut cands, mut read) = (BTreeSet::new(), BTreeSet::new());
    walk(prog, l, body, &mut cands, &mut read);
    let partner = crate::forward::referenced(other);
    cands.retain(|b| !read.contains(b) && !partner.contains(b));
    cands
}

/// A window of a buffer that a plain vector statement (not an [`ExpGroup`]) wrote whole, at a point of
/// [`dead_exp_stores`]' walk: its region and sizes as written, and `Some(c)` when it holds only where the
/// branch condition `c` holds (the statement ran at the top level of an `if c` that ended since). A later
/// statement that reads that buffer only through element reads of the same region over the same sizes reads
/// what that statement wrote, not an `exp` group's row: its reads do not keep the groups' stores. A shield
/// ends at any scalar assignment (the region's and sizes' registers, and `c`'s, keep their values while it
/// lasts), at any other write of the buffer, and at a loop's boundary (a body runs after itself).
#[derive(Clone, Default)]
struct Shields(BTreeMap<BufId, Shield>);

#[derive(Clone)]
struct Shield {
    region: Region,
    rows: SExpr,
    cols: SExpr,
    cond: Option<SExpr>,
}

impl Shields {
    fn clear(&mut self) {
        self.0.clear();
    }

    /// After `stmts` ran: assignments end every shield, writes end their buffers'.
    fn written(&mut self, stmts: &[Stmt]) {
        if stmts.iter().any(has_set) {
            self.0.clear();
            return;
        }
        let (mut bufs, mut gm) = (BTreeSet::new(), BTreeSet::new());
        for s in stmts {
            crate::forward::writes(s, &mut bufs, &mut gm);
        }
        self.0.retain(|b, _| !bufs.contains(b));
    }

    /// A plain vector statement wrote `dst`'s window of `rows × cols` whole. A window whose expressions read
    /// memory is no shield: the same expression may mean another window after a write that assigns nothing.
    fn overwrite(&mut self, dst: &Region, rows: &SExpr, cols: &SExpr) {
        if let Loc::Buf { buf, slot } = &dst.loc {
            let mut mem = BTreeSet::new();
            for e in [slot, &dst.offset, &dst.row_stride, rows, cols] {
                crate::forward::sexpr_reads(e, &mut mem);
            }
            if mem.is_empty() {
                let sh = Shield { region: dst.clone(), rows: rows.clone(), cols: cols.clone(), cond: None };
                self.0.insert(*buf, sh);
            }
        }
    }

    /// The buffers `s` reads into `read`, but those whose every read in `s` is shielded.
    fn reads(&self, s: &Stmt, read: &mut BTreeSet<BufId>) {
        let mut here = BTreeSet::new();
        crate::forward::reads_of(std::slice::from_ref(s), &mut here);
        here.retain(|b| !self.covers(s, *b));
        read.extend(here);
    }

    /// Whether every read of `b` in `s` reads the window of `b`'s unconditional shield.
    fn covers(&self, s: &Stmt, b: BufId) -> bool {
        let Some(sh) = self.0.get(&b).filter(|sh| sh.cond.is_none()) else { return false };
        let mut scalar = BTreeSet::new();
        crate::forward::region_sexpr_reads(s, &mut scalar);
        if scalar.contains(&b) {
            return false;
        }
        let same = |r: &Region, rows: &SExpr, cols: &SExpr| *r == sh.region && *rows == sh.rows && *cols == sh.cols;
        match s {
            Stmt::Vector { rows, cols, expr, .. } => vexpr_shielded(expr, b, &|r: &Region| same(r, rows, cols)),
            Stmt::Reduce { src, dst, rows, cols, accumulate, .. } => {
                let dst_read = *accumulate && matches!(dst.loc, Loc::Buf { buf, .. } if buf == b);
                !dst_read && same(src, rows, cols)
            }
            _ => false,
        }
    }

    /// The shields inside `if cond`: the unconditional ones, and those that hold where `cond` holds.
    fn enter(&self, cond: &SExpr) -> Shields {
        let mut inner = self.clone();
        inner.0.retain(|_, sh| sh.cond.is_none() || sh.cond.as_ref() == Some(cond));
        for sh in inner.0.values_mut() {
            sh.cond = None;
        }
        inner
    }

    /// After `if cond { then }` (`inner`: the shields at the end of `then`): what the body may have assigned
    /// or written ends the shields from before it; the body's unconditional shields hold after it where
    /// `cond` holds (the body ran whole when it ran: `cond`'s registers are only assigned before them).
    fn leave(&mut self, cond: &SExpr, then: &[Stmt], inner: Shields) {
        self.written(then);
        let mut cond_reads = BTreeSet::new();
        crate::forward::sexpr_reads(cond, &mut cond_reads);
        if !cond_reads.is_empty() {
            // A condition that reads memory may change without an assignment.
            return;
        }
        for (b, mut sh) in inner.0 {
            if sh.cond.is_none() && !self.0.get(&b).is_some_and(|o| o.cond.is_none() && o.region == sh.region) {
                sh.cond = Some(cond.clone());
                self.0.insert(b, sh);
            }
        }
    }
}

/// Whether `s` (loop and branch bodies included) assigns a scalar register.
fn has_set(s: &Stmt) -> bool {
    match s {
        Stmt::Set { .. } => true,
        Stmt::For { .. } => true,
        Stmt::If { then, .. } => then.iter().any(has_set),
        _ => false,
    }
}

/// Whether every read of `b` in `e` is an element read of a region `ok` accepts (and `b` is in no scalar
/// expression of `e`).
fn vexpr_shielded(e: &VExpr, b: BufId, ok: &dyn Fn(&Region) -> bool) -> bool {
    let scalar_free = |x: &SExpr| {
        let mut r = BTreeSet::new();
        crate::forward::sexpr_reads(x, &mut r);
        !r.contains(&b)
    };
    match e {
        VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => {
            let mine = matches!(r.loc, Loc::Buf { buf, .. } if buf == b);
            let slot_free = match &r.loc {
                Loc::Buf { slot, .. } => scalar_free(slot),
                Loc::Gm(_) => true,
            };
            scalar_free(&r.offset)
                && scalar_free(&r.row_stride)
                && slot_free
                && (!mine || (matches!(e, VExpr::Read(_)) && ok(r)))
        }
        VExpr::Scalar(x) => scalar_free(x),
        _ => e.children().into_iter().all(|c| vexpr_shielded(c, b, ok)),
    }
}

/// `where(cond, t, fill)` as [`RowForm::Mask`]: `cond` is `a + c <= b` (`c + a`, or `c`), `a` and `b`
/// row-invariant integers without divisions (which could fail: computed once per row, they must not fail
/// where the element code would not run), `t` an element read of an `f32` region or its product with a
/// row-invariant float, `fill` a row-invariant float.
fn mask_form<'e>(
    prog: &TileProgram,
    l: &Launch,
    cond: &'e VExpr,
    t: &'e VExpr,
    fill: &'e VExpr,
) -> Option<RowForm<'e>> {
    let int_row = |e: &VExpr| var_of(e) != Var::Elem && ty_of(prog, l, e) == Some(Ty::I) && !has_div(e);
    let VExpr::Binary(BinOp::Le, lhs, b) = cond else { return None };
    let a = match &**lhs {
        VExpr::Col => None,
        VExpr::Binary(BinOp::Add, x, y) if matches!(**y, VExpr::Col) && int_row(x) => Some(&**x),
        VExpr::Binary(BinOp::Add, x, y) if matches!(**x, VExpr::Col) && int_row(y) => Some(&**y),
        _ => return None,
    };
    if !int_row(b) || !row_float(prog, l, fill) {
        return None;
    }
    let (src, k, swap) = match t {
        VExpr::Binary(BinOp::Mul, k, x) if row_float(prog, l, k) => (f32_read(prog, l, x)?, Some(&**k), false),
        VExpr::Binary(BinOp::Mul, x, k) if row_float(prog, l, k) => (f32_read(prog, l, x)?, Some(&**k), true),
        _ => (f32_read(prog, l, t)?, None, false),
    };
    Some(RowForm::Mask { src, k, swap, a, b, fill })
}

/// The dtype of a region's storage.
pub(crate) fn region_dtype(prog: &TileProgram, l: &Launch, r: &Region) -> Option<DType> {
    match &r.loc {
        Loc::Gm(t) => prog.tensors.get(t.0 as usize).map(|g| g.dtype),
        Loc::Buf { buf, .. } => l.buffers.get(buf.0 as usize).map(|b| b.dtype),
    }
}

/// `e` as a row-invariant float that computes nothing that can fail (no division).
fn row_float(prog: &TileProgram, l: &Launch, e: &VExpr) -> bool {
    var_of(e) != Var::Elem && ty_of(prog, l, e) == Some(Ty::F) && !has_div(e)
}

/// `e` as an element read of an `f32` or bf16 region.
fn float_read<'e>(prog: &TileProgram, l: &Launch, e: &'e VExpr) -> Option<&'e Region> {
    match e {
        VExpr::Read(r) if matches!(region_dtype(prog, l, r), Some(DType::F32 | DType::BF16)) => Some(r),
        _ => None,
    }
}

/// The row value a [`rowmath::kc_rt_row_exp`] argument subtracts, and the one it multiplies by.
type ExpArg<'e> = (&'e Region, Option<&'e VExpr>, Option<&'e VExpr>);

/// An `exp`'s argument as `x - s` (`s` row-invariant) or `x`, where `x` is `src` or `k·src` (`k`
/// row-invariant), `src` an element read of `f32`/bf16.
fn exp_arg<'e>(prog: &TileProgram, l: &Launch, a: &'e VExpr) -> Option<ExpArg<'e>> {
    let scaled = |x: &'e VExpr| -> Option<(&'e Region, Option<&'e VExpr>)> {
        if let Some(r) = float_read(prog, l, x) {
            return Some((r, None));
        }
        match x {
            VExpr::Binary(BinOp::Mul, k, y) if row_float(prog, l, k) => Some((float_read(prog, l, y)?, Some(&**k))),
            VExpr::Binary(BinOp::Mul, y, k) if row_float(prog, l, k) => Some((float_read(prog, l, y)?, Some(&**k))),
            _ => None,
        }
    };
    match a {
        VExpr::Binary(BinOp::Sub, x, s) if row_float(prog, l, s) => {
            let (r, k) = scaled(x)?;
            Some((r, Some(&**s), k))
        }
        _ => {
            let (r, k) = scaled(a)?;
            Some((r, None, k))
        }
    }
}

/// `e` as an element read of an `f32` region.
fn f32_read<'e>(prog: &TileProgram, l: &Launch, e: &'e VExpr) -> Option<&'e Region> {
    float_read(prog, l, e).filter(|r| region_dtype(prog, l, r) == Some(DType::F32))
}

/// `m + y` (with `add_first`, `y + m`) as [`RowForm::Axpy`]: `m` is `x · s` or `s · x`, `x` an element read
/// of an `f32` or bf16 region, `y` one of an `f32` region, `s` row-invariant.
fn axpy_form<'e>(prog: &TileProgram, l: &Launch, m: &'e VExpr, y: &'e VExpr, add_first: bool) -> Option<RowForm<'e>> {
    let add = f32_read(prog, l, y)?;
    let float_read = |e: &'e VExpr| float_read(prog, l, e);
    let VExpr::Binary(BinOp::Mul, a, b) = m else { return None };
    if let (Some(src), true) = (float_read(a), row_float(prog, l, b)) {
        Some(RowForm::Axpy { src, s: b, add, swap: false, add_first })
    } else if let (true, Some(src)) = (row_float(prog, l, a), float_read(b)) {
        Some(RowForm::Axpy { src, s: a, add, swap: true, add_first })
    } else {
        None
    }
}

/// The [`RowForm`] of a vector statement, when it has one and computing it row by row, a block of elements
/// loaded before it is stored, reads what the statement reads: the source is the destination's window or
/// in other storage (and not in a GM tensor that may share the destination's memory at another window), and
/// the row value reads nothing the statement writes.
fn row_form<'e>(prog: &TileProgram, l: &Launch, dst: &Region, expr: &'e VExpr) -> Option<RowForm<'e>> {
    let ddt = region_dtype(prog, l, dst)?;
    let form = match expr {
        VExpr::Unary(UnOp::Exp, a) if ddt == DType::F32 => {
            let (src, s, k) = exp_arg(prog, l, a)?;
            RowForm::Exp { src, s, k }
        }
        VExpr::Select(cond, t, fill) if ddt == DType::F32 => mask_form(prog, l, cond, t, fill)?,
        VExpr::Binary(BinOp::Mul, a, b)
            if matches!(ddt, DType::F32 | DType::BF16) && matches!(&**a, VExpr::Unary(UnOp::Silu, _)) =>
        {
            let VExpr::Unary(_, x) = &**a else { return None };
            RowForm::SiluMul { src: f32_read(prog, l, x)?, add: f32_read(prog, l, b)? }
        }
        VExpr::Binary(op @ (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div), a, b)
            if matches!(ddt, DType::F32 | DType::BF16) =>
        {
            // The product first or second (a weighted sum's `acc + w · x`; the order only decides which
            // NaN's payload a sum of two NaNs keeps, and the routine keeps the statement's order).
            let axpy = (*op == BinOp::Add)
                .then(|| axpy_form(prog, l, a, b, false).or_else(|| axpy_form(prog, l, b, a, true)))
                .flatten();
            if let Some(form) = axpy {
                form
            } else if let (Some(src), true) = (float_read(prog, l, a), row_float(prog, l, b)) {
                RowForm::Scalar { src, s: b, op: *op, swap: false }
            } else if let (true, Some(src)) = (row_float(prog, l, a), float_read(prog, l, b)) {
                RowForm::Scalar { src, s: a, op: *op, swap: true }
            } else {
                return None;
            }
        }
        _ => return None,
    };
    let (src, s, k, add) = match &form {
        RowForm::Exp { src, s, k } => (*src, *s, *k, None),
        RowForm::Scalar { src, s, .. } => (*src, Some(*s), None, None),
        RowForm::Axpy { src, s, add, .. } => (*src, Some(*s), None, Some(*add)),
        RowForm::SiluMul { src, add } => (*src, None, None, Some(*add)),
        // The row values: `k`, `fill` (the integers `a` and `b` below).
        RowForm::Mask { src, k, fill, .. } => (*src, *k, Some(*fill), None),
    };
    // A mask's integers read nothing the statement writes either.
    let ints: Vec<&VExpr> = match &form {
        RowForm::Mask { a, b, .. } => a.iter().copied().chain([*b]).collect(),
        _ => Vec::new(),
    };
    let aliased = |r: &Region| matches!(r.loc, Loc::Gm(t) if may_alias(prog, t));
    let same_elems =
        |a: &Region, b: &Region| norm(&a.offset) == norm(&b.offset) && norm(&a.row_stride) == norm(&b.row_stride);
    for src in [Some(src), add].into_iter().flatten() {
        if same_storage(src, dst) && !(src == dst || same_window(src, dst))
            || aliased(src) && aliased(dst) && !same_elems(src, dst)
        {
            return None;
        }
    }
    for v in [s, k].into_iter().flatten().chain(ints) {
        let mut reads = Vec::new();
        collect_reads(v, &mut reads);
        if reads.iter().any(|(_, r)| same_storage(r, dst) || aliased(r) && aliased(dst)) {
            return None;
        }
    }
    Some(form)
}

/// How many statements from the start of `body` run as one fused element loop (see [`Gen::vector_group`]):
/// consecutive `Vector` statements over the same `rows × cols` (the same expressions), each on the SIMD path
/// into `f32`/`bf16` without a hazard of its own, such that fusing changes nothing any statement reads:
/// - a statement that reads storage another statement of the run writes reads exactly that window, element
///   by element (so element `(r, c)` is read after an earlier statement wrote it and before a later one
///   overwrites it, as unfused), and two statements writing one storage write the same window;
/// - if a statement writes a GM tensor that may share memory with another ([`may_alias`]: an `inout`
///   updated in place, `kc_runtime::inplace`), every access of the run to such tensors is an
///   element-by-element access of the same window (offset and row stride): only accesses at the same element
///   keep the unfused order of each element.
///
/// 0 or 1: no fusion. At most [`MAX_FUSED`] statements (the check is quadratic in the run, and a long run
/// keeps many values alive at once).
fn fusable_run(prog: &TileProgram, l: &Launch, body: &[Stmt]) -> usize {
    let Some(Stmt::Vector { rows, cols, .. }) = body.first() else { return 0 };
    // (dst, reads (kind, region)) of the statements taken so far.
    let mut taken: Vec<(&Region, Vec<(u8, &Region)>)> = Vec::new();
    let mut gm_window: Option<(SExpr, SExpr)> = None;
    for s in body {
        let Stmt::Vector { dst, rows: r2, cols: c2, expr } = s else { break };
        if taken.len() >= MAX_FUSED || r2 != rows || c2 != cols || !simd_ok(prog, l, expr) {
            break;
        }
        // A statement with column-dependent `exp`s (`silu`s) runs alone: they go by chunks through the host
        // routine (16 lanes), which a fused loop does not do.
        let mut exps = Vec::new();
        collect_exps(expr, &mut exps);
        if !exps.is_empty() {
            break;
        }
        if ty_of(prog, l, expr) != Some(Ty::F) {
            break;
        }
        let dtype = match &dst.loc {
            Loc::Gm(t) => prog.tensors.get(t.0 as usize).map(|g| g.dtype),
            Loc::Buf { buf, .. } => l.buffers.get(buf.0 as usize).map(|b| b.dtype),
        };
        if !matches!(dtype, Some(DType::F32 | DType::BF16)) {
            break;
        }
        let mut reads = Vec::new();
        collect_reads(expr, &mut reads);
        // A hazard of its own (computed into a temporary): not fused.
        if reads.iter().any(|(k, r)| same_storage(r, dst) && !(*k == 0 && *r == dst)) {
            break;
        }
        let exact = |k: u8, r: &Region, w: &Region| k == 0 && same_window(r, w);
        let mut ok = true;
        for (d0, r0) in &taken {
            // This statement reads what an earlier one writes; an earlier one reads what this one writes.
            ok &= reads.iter().all(|(k, r)| !same_storage(r, d0) || exact(*k, r, d0));
            ok &= r0.iter().all(|(k, r)| !same_storage(r, dst) || exact(*k, r, dst));
            ok &= !same_storage(d0, dst) || same_window(d0, dst);
        }
        // Accesses to GM tensors that may share memory, when the run writes one: all at one window, element
        // by element.
        let aliased = |r: &Region| matches!(r.loc, Loc::Gm(t) if may_alias(prog, t));
        let mut gm_all: Vec<(u8, &Region)> = reads.iter().filter(|(_, r)| aliased(r)).copied().collect();
        for (d0, r0) in &taken {
            gm_all.extend(r0.iter().filter(|(_, r)| aliased(r)).copied());
            if aliased(d0) {
                gm_all.push((0, d0));
            }
        }
        if aliased(dst) {
            gm_all.push((0, dst));
        }
        let writes_gm = aliased(dst) || taken.iter().any(|(d0, _)| aliased(d0));
        if writes_gm {
            for (k, r) in &gm_all {
                let here = (norm(&r.offset), norm(&r.row_stride));
                let w = gm_window.get_or_insert_with(|| here.clone());
                ok &= *k == 0 && here == *w;
            }
        }
        if !ok {
            break;
        }
        taken.push((dst, reads));
    }
    taken.len()
}

impl<'a, 'b, 'p> Gen<'a, 'b, 'p> {
    /// A run of vector statements ([`fusable_run`]) as one element loop: every statement's regions are
    /// resolved and checked first, then, for each row and each group of 16 columns, every operand that no
    /// earlier statement of the run may write is loaded ([`Gen::preload`]), and the statements run in order
    /// (each stores its vectors before the next reads them; a later statement's read of an earlier one's
    /// `f32` result takes the computed vectors). The memory streams of all the statements then
    /// advance together, and their loads overlap the arithmetic of the others (a statement alone streams
    /// one or two tensors while the others' streams wait).
    fn vector_group(&mut self, run: &'p [Stmt]) -> Result<(), Diagnostic> {
        let Some(Stmt::Vector { rows, cols, .. }) = run.first() else { return Err(self.err("an empty fused run")) };
        let rows = self.sexpr(rows)?;
        let cols = self.sexpr(cols)?;
        let one = self.iconst(1);
        let mut stmts: Vec<(Res, &'p VExpr)> = Vec::new();
        let mut reads: Reads = Vec::new();
        for s in run {
            let Stmt::Vector { dst, expr, .. } = s else {
                return Err(self.err("a fused run of non-vector statements"));
            };
            let d = self.region(dst, "the vector statement's destination")?;
            if ty_of(self.prog, self.launch, expr) != Some(Ty::F) || !matches!(d.dtype, DType::F32 | DType::BF16) {
                return Err(self.err("a fused vector statement that is not float"));
            }
            self.check(&d, rows, cols);
            let mut regions = Vec::new();
            collect_reads(expr, &mut regions);
            for (kind, r) in regions {
                let x = self.operand(kind, r, rows, cols, one)?;
                reads.push((r as *const Region, x));
            }
            stmts.push((d, expr));
        }
        let dsts: Vec<&Region> =
            run.iter().filter_map(|s| if let Stmt::Vector { dst, .. } = s { Some(dst) } else { None }).collect();
        let prog = self.prog;
        // Whether a read of `x` may see what a write of `d` stores.
        let overlaps = |x: &Region, d: &Region| {
            same_storage(x, d)
                || matches!((&x.loc, &d.loc), (Loc::Gm(a), Loc::Gm(b)) if may_alias(prog, *a) && may_alias(prog, *b))
        };
        let mut consts: BTreeMap<*const VExpr, SV> = BTreeMap::new();
        let zero = self.iconst(0);
        let at0 = At { r: zero, c: zero, tail: true };
        for (_, e) in &stmts {
            self.hoist(e, Var::Const, &reads, at0, &mut consts)?;
        }
        if self.module.is_some() {
            let dead = |r: &Region| matches!(r.loc, Loc::Buf { buf, .. } if self.dead_run.contains(&buf));
            let ws: Vec<crate::wide::WStmt<'p>> = dsts
                .iter()
                .zip(&stmts)
                .map(|(dst, (d, e))| crate::wide::WStmt { dst, dtype: d.dtype, expr: e, dead: dead(dst) })
                .collect();
            if let Some(rt) = crate::wide::assemble(self.prog, self.launch, &ws, &overlaps) {
                return self.wide_rows(rt, rows, cols, &stmts, &reads, &consts);
            }
        }
        let (rv, cv) = self.elem_vars();
        self.b.def_var(rv, zero);
        self.loop_while_fits(rv, 1, rows, 1, |g, r| {
            let mut row_vals = consts.clone();
            for (_, e) in &stmts {
                g.hoist(e, Var::Row, &reads, At { r, c: zero, tail: true }, &mut row_vals)?;
            }
            g.b.def_var(cv, zero);
            let splats = g.splat_slots(&row_vals);
            for width in [16i64, 4] {
                g.loop_while_fits(cv, width, cols, width, |g, c| {
                    g.splats = splats.clone();
                    let cks: Vec<Value> = (0..width / 4).map(|k| g.b.ins().iadd_imm_s(c, 4 * k)).collect();
                    // Every operand that no earlier statement of the run may write, loaded first, stream by
                    // stream; an f32 result read by a later statement (at its own window, `fusable_run`) is
                    // that statement's operand as computed, not reloaded.
                    let leaves: Vec<Vec<&'p VExpr>> = stmts
                        .iter()
                        .map(|(_, e)| {
                            let mut l = Vec::new();
                            g.elem_leaves(e, &row_vals, &mut l);
                            l
                        })
                        .collect();
                    let early: Vec<&'p VExpr> = (leaves.iter().enumerate())
                        .flat_map(|(si, ls)| {
                            let before = &dsts[..si];
                            ls.iter().copied().filter(move |l| {
                                let (VExpr::Read(x) | VExpr::ReadCol(x)) = l else { return false };
                                !before.iter().any(|d| overlaps(x, d))
                            })
                        })
                        .collect();
                    g.preload(&early, &reads, &row_vals, r, &cks)?;
                    let mut made: Vec<(&Region, Vec<Value>)> = Vec::new();
                    for (si, (d, e)) in stmts.iter().enumerate() {
                        for &l in &leaves[si] {
                            let VExpr::Read(x) = l else { continue };
                            if let Some((_, vs)) = made.iter().rev().find(|(w, _)| *w == x) {
                                for (&ck, &v) in cks.iter().zip(vs) {
                                    g.preloaded.push((l, ck, v));
                                }
                            }
                        }
                        let mut vals = Vec::new();
                        for &ck in &cks {
                            vals.push(g.vx(e, &reads, &row_vals, At { r, c: ck, tail: false })?);
                        }
                        for (&ck, &v) in cks.iter().zip(&vals) {
                            g.store_x4(d, r, ck, v);
                        }
                        if d.dtype == DType::F32 {
                            made.push((dsts[si], vals));
                        }
                    }
                    g.preloaded.clear();
                    g.splats.clear();
                    Ok(())
                })?;
            }
            g.loop_while_fits(cv, 1, cols, 1, |g, c| {
                g.splats = splats.clone();
                for (d, e) in &stmts {
                    let v = g.vx(e, &reads, &row_vals, At { r, c, tail: true })?;
                    let lane = g.b.ins().extractlane(v, 0);
                    g.store_scalar(d, r, c, SV::F(lane));
                }
                g.splats.clear();
                Ok(())
            })
        })
    }

    /// A fused run as calls of its AVX-512 routine `rt` (`crate::wide`), one a row: for each row, the row's
    /// hoisted values, then the routine's arguments (each stream's address at column 0 of the row, each
    /// scalar as an `f32`) in a stack slot, and the call over the `cols` columns. The regions were resolved
    /// and bounds-checked by the caller.
    fn wide_rows(
        &mut self,
        rt: crate::wide::Routine<'p>,
        rows: Value,
        cols: Value,
        stmts: &[(Res, &'p VExpr)],
        reads: &Reads,
        consts: &BTreeMap<*const VExpr, SV>,
    ) -> Result<(), Diagnostic> {
        let Some(module) = self.module.as_deref_mut() else { return Err(self.err("no module for an AVX-512 loop")) };
        let mut sig = module.make_signature();
        sig.params.extend([AbiParam::new(types::I64), AbiParam::new(types::I64)]);
        let id = match module.declare_anonymous_function(&sig) {
            Ok(id) => id,
            Err(e) => return Err(self.err(format!("declaring an AVX-512 loop: {e}"))),
        };
        let fref = module.declare_func_in_func(id, self.b.func);
        let ext = match &self.b.func.dfg.ext_funcs[fref].name {
            cranelift_codegen::ir::ExternalName::User(r) => r.as_u32() as usize,
            _ => usize::MAX,
        };
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, rt.args_bytes(), 3));
        let zero = self.iconst(0);
        let (rv, _) = self.elem_vars();
        self.b.def_var(rv, zero);
        self.loop_while_fits(rv, 1, rows, 1, |g, r| {
            let mut row_vals = consts.clone();
            for (_, e) in stmts {
                g.hoist(e, Var::Row, reads, At { r, c: zero, tail: true }, &mut row_vals)?;
            }
            for (i, s) in rt.streams.iter().enumerate() {
                let x = match s.dst {
                    Some(si) => stmts[si].0.clone(),
                    None => g.read_res(reads, s.region)?.clone(),
                };
                let a = g.elem_addr(&x, Some(if s.col { zero } else { r }), Some(zero));
                g.b.ins().stack_store(types::I64, a, slot, (8 * i) as i32);
            }
            for (j, e) in rt.scalars.iter().enumerate() {
                // As `Gen::splat` makes a vector of it.
                let v = match row_vals.get(&(*e as *const VExpr)) {
                    Some(SV::F(x)) => *x,
                    Some(SV::I(x)) => g.b.ins().fcvt_from_sint(types::F32, *x),
                    _ => return Err(g.err("a row value of an AVX-512 loop was not computed")),
                };
                g.b.ins().stack_store(types::I64, v, slot, rt.scalar_offset(j));
            }
            let p = g.b.ins().stack_addr(types::I64, slot, 0);
            g.b.ins().call(fref, &[p, cols]);
            Ok(())
        })?;
        self.wide_out.push((id, rt.code, ext));
        Ok(())
    }

    /// A vector statement's operand `r` (`kind` as [`collect_reads`] gives it), resolved and bounds-checked
    /// for the statement's `rows × cols` (a broadcast reads one column or one row of it).
    fn operand(&mut self, kind: u8, r: &Region, rows: Value, cols: Value, one: Value) -> Result<Res, Diagnostic> {
        let x = self.region(r, "a vector operand")?;
        match kind {
            0 => self.check(&x, rows, cols),
            1 => self.check(&x, rows, one),
            _ => self.check(&x, one, cols),
        }
        Ok(x)
    }

    /// The row and column counters of vector statements (declared once, see `Gen::elem_vars`).
    fn elem_vars(&mut self) -> (Variable, Variable) {
        match self.elem_vars {
            Some(p) => p,
            None => {
                let p = (self.b.declare_var(types::I64), self.b.declare_var(types::I64));
                self.elem_vars = Some(p);
                p
            }
        }
    }

    /// Stack slots holding the `f32x4` splats of the float and mask values of `vals` (see [`Gen::splats`]).
    fn splat_slots(
        &mut self,
        vals: &BTreeMap<*const VExpr, SV>,
    ) -> BTreeMap<*const VExpr, cranelift_codegen::ir::StackSlot> {
        let mut m = BTreeMap::new();
        for (k, v) in vals {
            if matches!(v, SV::I(_)) {
                continue;
            }
            let x = self.splat(*v);
            let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4));
            self.b.ins().stack_store(types::I64, x, slot, 0);
            m.insert(*k, slot);
        }
        m
    }

    fn vector(&mut self, dst: &'p Region, rows: &SExpr, cols: &SExpr, expr: &'p VExpr) -> Result<(), Diagnostic> {
        // A row routine is one host call per row: not for rows narrower than its 16 lanes by construction
        // (attention's column vectors `l = l · alpha`, one call per element before).
        let narrow = matches!(cols, SExpr::Const(c) if *c < 16);
        if let Some(form) = row_form(self.prog, self.launch, dst, expr).filter(|_| !narrow) {
            return self.row_routine(dst, rows, cols, expr, &form, None, None);
        }
        let rows = self.sexpr(rows)?;
        let cols = self.sexpr(cols)?;
        let d = self.region(dst, "the vector statement's destination")?;
        let Some(ty) = ty_of(self.prog, self.launch, expr) else {
            return Err(self.err("a vector expression names storage that does not exist"));
        };
        let want = match d.dtype {
            DType::F32 | DType::BF16 | DType::F16 => Ty::F,
            DType::I32 => Ty::I,
            DType::Bool => Ty::B,
        };
        if ty != want {
            return Err(self.err(format!("a {ty:?} value stored into {} ({})", d.what, d.dtype)));
        }
        self.check(&d, rows, cols);
        // Every byte of the result zero (`+0.0` into a float dtype, `0` into `i32`): cleared by `memset`.
        if zero_bytes(expr, d.dtype) {
            let mut w = self.region_words(&d);
            w.extend([rows, cols]);
            let a = self.words(&w);
            self.call("kc_rt_zero", &[a]);
            return Ok(());
        }
        // Resolve and check every region read.
        let mut reads: Reads = Vec::new();
        let mut regions = Vec::new();
        collect_reads(expr, &mut regions);
        let one = self.iconst(1);
        let mut hazard = false;
        for (kind, r) in regions {
            let x = self.operand(kind, r, rows, cols, one)?;
            if let (Loc::Buf { buf: a, .. }, Loc::Buf { buf: b, .. }) = (&r.loc, &dst.loc) {
                if a == b && !(kind == 0 && r == dst) {
                    hazard = true;
                }
            }
            reads.push((r as *const Region, x));
        }
        // A destination also read at another window: compute into a temporary first.
        let (target, temp) = if hazard {
            let (_, dtype, elems, _, name) = match &dst.loc {
                Loc::Buf { buf, .. } => self.buffer(*buf)?,
                Loc::Gm(_) => return Err(self.err("a vector statement into GM")),
            };
            let bytes = (elems * dtype.size_bytes() as u64) as u32;
            let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes.max(8), 6));
            let base = self.b.ins().stack_addr(types::I64, slot, 0);
            let zero = self.iconst(0);
            let n = self.b.ins().imul(rows, cols);
            let big = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, elems as i64);
            let msg = format!("a tile larger than buffer `{name}` at {}", self.here());
            self.internal_if(big, msg);
            let t = Res { base, dtype, offset: zero, stride: cols, limit: elems, what: format!("a copy of `{name}`") };
            (t.clone(), Some(t))
        } else {
            (d.clone(), None)
        };
        let simd = simd_ok(self.prog, self.launch, expr) && matches!(d.dtype, DType::F32 | DType::BF16);
        // Statement-invariant sub-expressions, once.
        let mut consts: BTreeMap<*const VExpr, SV> = BTreeMap::new();
        let zero = self.iconst(0);
        let at0 = At { r: zero, c: zero, tail: true };
        self.hoist(expr, Var::Const, &reads, at0, &mut consts)?;

        // for r in 0..rows
        let (rv, cv) = self.elem_vars();
        // The column-dependent `exp`s, computed by chunks of columns with a host routine (16 lanes at a time).
        let mut exps = Vec::new();
        if simd {
            collect_exps(expr, &mut exps);
        }
        self.b.def_var(rv, zero);
        self.loop_while_fits(rv, 1, rows, 1, |g, r| {
            let mut row_vals = consts.clone();
            g.hoist(expr, Var::Row, &reads, At { r, c: zero, tail: true }, &mut row_vals)?;
            g.row_splats.clear();
            if simd && !row_vals.is_empty() {
                let slot = g.splat_slot();
                for (i, (&p, &sv)) in row_vals.iter().take(SPLATS).enumerate() {
                    let v = g.splat(sv);
                    g.b.ins().stack_store(types::I64, v, slot, 16 * i as i32);
                    g.row_splats.push((p, slot, 16 * i as i32));
                }
            }
            let bf16_out = simd && target.dtype == DType::BF16;
            if exps.is_empty() && !bf16_out {
                g.b.def_var(cv, zero);
                return g.columns(expr, &reads, &row_vals, &target, r, cv, cols, simd);
            }
            // By chunks of columns: each `exp`'s argument into its scratch row, `kc_rt_exp_f32` over it, then
            // the statement with those `exp`s read from the scratch; bf16 results go to an f32 scratch row
            // that `kc_rt_f32_to_bf16` rounds into the destination (16 lanes at a time, the same bits).
            let chv = g.chunk_var();
            g.b.def_var(chv, zero);
            g.loop_while_fits(chv, 1, cols, EXP_CHUNK, |g, cs| {
                let end = g.b.ins().iadd_imm_s(cs, EXP_CHUNK);
                let ce = g.b.ins().smin(end, cols);
                let n = g.b.ins().isub(ce, cs);
                let single = match (expr, target.dtype) {
                    (VExpr::Unary(op, arg), DType::F32) => unary_routine(*op).map(|f| (f, arg)),
                    _ => None,
                };
                if let Some((routine, arg)) = single {
                    // The statement is one `exp` (or `silu`) into f32: its argument straight into the
                    // destination, which the routine then computes in place.
                    g.b.def_var(cv, cs);
                    g.loop_while_fits(cv, 4, ce, 4, |g, c| {
                        let v = g.vx(arg, &reads, &row_vals, At { r, c, tail: false })?;
                        g.store_x4(&target, r, c, v);
                        Ok(())
                    })?;
                    g.loop_while_fits(cv, 1, ce, 1, |g, c| {
                        let v = g.vx(arg, &reads, &row_vals, At { r, c, tail: true })?;
                        let lane = g.b.ins().extractlane(v, 0);
                        g.store_scalar(&target, r, c, SV::F(lane));
                        Ok(())
                    })?;
                    let base = g.elem_addr(&target, Some(r), Some(cs));
                    g.call(routine, &[base, n]);
                    return Ok(());
                }
                let mut done = Vec::new();
                for (i, node) in exps.iter().enumerate() {
                    let VExpr::Unary(op, arg) = node else { unreachable!("only unary nodes are collected") };
                    let routine = unary_routine(*op).expect("only nodes with a routine are collected");
                    let slot = g.exp_slot(i);
                    if let (UnOp::Exp, Some((src, s, k))) = (op, exp_arg(g.prog, g.launch, arg)) {
                        // `exp(k·src - s)`: straight from the source row into the scratch, one call.
                        let x = g.read_res(&reads, src)?.clone();
                        let ps = g.elem_addr(&x, Some(r), Some(cs));
                        let base = g.b.ins().stack_addr(types::I64, slot, 0);
                        let (f, sv, kv) = g.row_exp_args(&x, s, k, &reads, &row_vals, r)?;
                        let flags = g.iconst(f);
                        let null = g.iconst(0);
                        g.call("kc_rt_row_exp", &[base, ps, flags, sv, kv, n, null]);
                        done.push((*node as *const VExpr, slot));
                        continue;
                    }
                    g.b.def_var(cv, cs);
                    g.loop_while_fits(cv, 4, ce, 4, |g, c| {
                        let v = g.vx(arg, &reads, &row_vals, At { r, c, tail: false })?;
                        let a = g.scratch_addr(slot, c, cs);
                        g.b.ins().store(TRUSTED, v, a, 0);
                        Ok(())
                    })?;
                    g.loop_while_fits(cv, 1, ce, 1, |g, c| {
                        let v = g.vx(arg, &reads, &row_vals, At { r, c, tail: true })?;
                        let lane = g.b.ins().extractlane(v, 0);
                        let a = g.scratch_addr(slot, c, cs);
                        g.b.ins().store(TRUSTED, lane, a, 0);
                        Ok(())
                    })?;
                    let base = g.b.ins().stack_addr(types::I64, slot, 0);
                    g.call(routine, &[base, n]);
                    done.push((*node as *const VExpr, slot));
                }
                g.exp_done = done;
                g.b.def_var(cv, cs);
                let res = if bf16_out {
                    let slot = g.out_slot();
                    let base = g.b.ins().stack_addr(types::I64, slot, 0);
                    let offset = g.b.ins().ineg(cs);
                    let stride = g.iconst(0);
                    let what = "a chunk of bf16 results".to_string();
                    let out = Res { base, dtype: DType::F32, offset, stride, limit: EXP_CHUNK as u64, what };
                    g.columns(expr, &reads, &row_vals, &out, r, cv, ce, simd).map(|()| {
                        let dst = g.elem_addr(&target, Some(r), Some(cs));
                        let src = g.b.ins().stack_addr(types::I64, slot, 0);
                        g.call("kc_rt_f32_to_bf16", &[dst, src, n]);
                    })
                } else {
                    g.columns(expr, &reads, &row_vals, &target, r, cv, ce, simd)
                };
                g.exp_done.clear();
                res
            })
        })?;
        self.row_splats.clear();
        if let Some(t) = temp {
            let mut w = self.region_words(&d);
            w.extend(self.region_words(&t));
            w.extend([rows, cols]);
            let a = self.words(&w);
            self.call("kc_rt_copy", &[a]);
        }
        Ok(())
    }

    /// A [`SoftmaxGroup`]: its windows checked as each statement's would be, then one call of
    /// [`rowmath::kc_rt_softmax_rows`] for the block.
    fn softmax_rows(&mut self, g: &SoftmaxGroup<'p>) -> Result<(), Diagnostic> {
        let rows = self.sexpr(g.rows)?;
        let cols = self.sexpr(g.cols)?;
        let one = self.iconst(1);
        let x = self.region(g.x, "the reduction's source")?;
        self.check(&x, rows, cols);
        let e = self.region(g.e, "the vector statement's destination")?;
        self.check(&e, rows, cols);
        let y = self.region(g.y, "the vector statement's destination")?;
        self.check(&y, rows, cols);
        let mut words = Vec::new();
        for r in [&x, &y, &e] {
            let p = self.elem_addr(r, None, None);
            let s = self.b.ins().imul_imm_s(r.stride, r.dtype.size_bytes() as i64);
            words.extend([p, s]);
        }
        for (k, w) in g.small.iter().enumerate() {
            let what = if k % 2 == 0 { "the reduction's destination" } else { "the vector statement's destination" };
            let r = self.region(w, what)?;
            self.check(&r, rows, one);
            let p = self.elem_addr(&r, None, None);
            let s = self.b.ins().imul_imm_s(r.stride, 4);
            words.extend([p, s]);
        }
        let mut f = if x.dtype == DType::BF16 { rowmath::SOFTMAX_SRC_BF16 } else { 0 };
        if self.streams(g.y) {
            f |= rowmath::SOFTMAX_STREAM;
        }
        if self.carry {
            f |= rowmath::SOFTMAX_CARRY;
        }
        let flags = self.iconst(f);
        words.extend([rows, cols, flags]);
        debug_assert_eq!(words.len(), rowmath::SOFTMAX_WORDS);
        let a = self.words(&words);
        self.call("kc_rt_softmax_rows", &[a]);
        self.softmax_groups += 1;
        Ok(())
    }

    /// A vector statement `exp(src - s)` into `f32` ([`row_form`]) followed by the sum of its destination's
    /// rows (the same window and sizes) into an `f32` buffer apart from both: one [`rowmath::kc_rt_row_exp`]
    /// call per row computes the row and its sum, with the bits of the two statements run one after the other
    /// (the sum in [`rowmath::reduce_row`]'s order). When the next statement past any flag statements (no-ops
    /// on the host) casts the exp's destination, the same window, to bf16 in a buffer apart from the others or
    /// a GM tensor that no other may alias (attention's `p = e`, forwarded into the cube's workspace), the
    /// same call stores that too ([`rowmath::kc_rt_row_exp_bf`]); see [`exp_group`]. When no statement of the
    /// program reads the exp's destination buffer apart from such groups ([`dead_exp_stores`]), the call
    /// does not store the `f32` row at all. The number of statements done, or `None`: not such a pair
    /// (nothing emitted).
    fn exp_sum(&mut self, body: &'p [Stmt]) -> Result<Option<usize>, Diagnostic> {
        let Some(g) = exp_group(self.prog, self.launch, body) else { return Ok(None) };
        self.row_routine(g.dst, g.rows, g.cols, g.expr, &g.form, Some(g.sum), g.conv)?;
        // The flag statements between emit nothing on the host; they are compiled in order all the same.
        for st in &body[2..2 + g.flags] {
            self.stmt(st)?;
        }
        Ok(Some(g.len()))
    }

    /// A vector statement of a [`RowForm`], one host call per row (16 lanes at a time, the bits of the inline
    /// code); with `sum`, the sum of each row of the destination into that window too ([`Gen::exp_sum`]).
    #[allow(clippy::too_many_arguments)]
    fn row_routine(
        &mut self,
        dst: &'p Region,
        rows: &SExpr,
        cols: &SExpr,
        expr: &'p VExpr,
        form: &RowForm<'p>,
        sum: Option<(&'p Region, bool)>,
        conv: Option<&'p Region>,
    ) -> Result<(), Diagnostic> {
        let rows = self.sexpr(rows)?;
        let cols = self.sexpr(cols)?;
        let d = self.region(dst, "the vector statement's destination")?;
        self.check(&d, rows, cols);
        let one = self.iconst(1);
        let mut regions = Vec::new();
        collect_reads(expr, &mut regions);
        let mut reads: Reads = Vec::new();
        for (kind, r) in regions {
            let x = self.operand(kind, r, rows, cols, one)?;
            reads.push((r as *const Region, x));
        }
        let acc = match sum {
            Some((rd, accumulate)) => {
                let x = self.region(rd, "the reduction's destination")?;
                self.check(&x, rows, one);
                Some((x, accumulate))
            }
            None => None,
        };
        let conv = match conv {
            Some(cd) => {
                let x = self.region(cd, "the cast's destination")?;
                self.check(&x, rows, cols);
                Some(x)
            }
            None => None,
        };
        let (src_r, s_expr, k_expr) = match form {
            RowForm::Exp { src, s, k } => (*src, *s, *k),
            RowForm::Scalar { src, s, .. } | RowForm::Axpy { src, s, .. } => (*src, Some(*s), None),
            RowForm::SiluMul { src, .. } => (*src, None, None),
            RowForm::Mask { src, k, fill, .. } => (*src, *k, Some(*fill)),
        };
        let src = self.read_res(&reads, src_r)?.clone();
        let add = match form {
            RowForm::Axpy { add, .. } | RowForm::SiluMul { add, .. } => Some(self.read_res(&reads, add)?.clone()),
            _ => None,
        };
        let zero = self.iconst(0);
        let mut consts: BTreeMap<*const VExpr, SV> = BTreeMap::new();
        for e in [s_expr, k_expr].into_iter().flatten() {
            self.hoist(e, Var::Const, &reads, At { r: zero, c: zero, tail: true }, &mut consts)?;
        }
        // `src · s + add` with `s` the same for every row: one call for the block, which requests the rows
        // ahead of the one it computes ([`rowmath::kc_rt_rows_axpy`]; each row the call below would make).
        if let RowForm::Axpy { s, swap, add_first, .. } = form {
            if block_axpy(form) {
                let sv = match self.sx(s, &reads, &consts, At { r: zero, c: zero, tail: true })? {
                    SV::F(v) => v,
                    _ => return Err(self.err("a row value that is not a float")),
                };
                let Some(add) = &add else { return Err(self.err("a row update without its addend")) };
                let mut f = if *swap { rowmath::ROW_SWAP } else { 0 };
                if *add_first {
                    f |= rowmath::ROW_ADD_FIRST;
                }
                if src.dtype == DType::BF16 {
                    f |= rowmath::ROW_SRC_BF16;
                }
                if d.dtype == DType::BF16 {
                    f |= rowmath::ROW_DST_BF16;
                }
                let (pd, ps, pa) =
                    (self.elem_addr(&d, None, None), self.elem_addr(&src, None, None), self.elem_addr(add, None, None));
                let stride = |g: &mut Self, x: &Res| g.b.ins().imul_imm_s(x.stride, x.dtype.size_bytes() as i64);
                let (sd, ss, sa) = (stride(self, &d), stride(self, &src), stride(self, add));
                let flags = self.iconst(f);
                let args = self.words(&[pd, ps, pa, sd, ss, sa, flags, rows, cols]);
                self.call("kc_rt_rows_axpy", &[args, sv]);
                return Ok(());
            }
        }
        let (rv, _) = self.elem_vars();
        self.b.def_var(rv, zero);
        // An exp group's row that nothing reads ([`dead_exp_stores`]): the call computes its sum and cast only.
        let dead = sum.is_some() && matches!(dst.loc, Loc::Buf { buf, .. } if self.dead_exp.contains(&buf));
        self.loop_while_fits(rv, 1, rows, 1, |g, r| {
            let pd = g.elem_addr(&d, Some(r), None);
            let ps = g.elem_addr(&src, Some(r), None);
            match form {
                RowForm::Exp { s, k, .. } => {
                    let pd = if dead { g.iconst(0) } else { pd };
                    let (mut f, sv, kv) = g.row_exp_args(&src, *s, *k, &reads, &consts, r)?;
                    let sp = match &acc {
                        Some((x, accumulate)) => {
                            if *accumulate {
                                f |= rowmath::ROW_EXP_ACC;
                            }
                            g.elem_addr(x, Some(r), None)
                        }
                        None => g.iconst(0),
                    };
                    let flags = g.iconst(f);
                    match &conv {
                        Some(x) => {
                            let pb = g.elem_addr(x, Some(r), None);
                            g.call("kc_rt_row_exp_bf", &[pd, ps, flags, sv, kv, cols, sp, pb]);
                        }
                        None => {
                            g.call("kc_rt_row_exp", &[pd, ps, flags, sv, kv, cols, sp]);
                        }
                    }
                }
                RowForm::Scalar { s, op, swap, .. } => {
                    let zero = g.iconst(0);
                    let sv = match g.sx(s, &reads, &consts, At { r, c: zero, tail: true })? {
                        SV::F(v) => v,
                        _ => return Err(g.err("a row value that is not a float")),
                    };
                    let code = match op {
                        BinOp::Add => 0,
                        BinOp::Sub => 1,
                        BinOp::Mul => 2,
                        _ => 3,
                    };
                    let mut f = code << rowmath::ROW_OP_SHIFT;
                    if src.dtype == DType::BF16 {
                        f |= rowmath::ROW_SRC_BF16;
                    }
                    if d.dtype == DType::BF16 {
                        f |= rowmath::ROW_DST_BF16;
                    }
                    if *swap {
                        f |= rowmath::ROW_SWAP;
                    }
                    if g.streams(dst) {
                        f |= rowmath::ROW_DST_STREAM;
                    }
                    let flags = g.iconst(f);
                    g.call("kc_rt_row_scalar", &[pd, ps, flags, sv, cols]);
                }
                RowForm::Axpy { s, swap, add_first, .. } => {
                    let zero = g.iconst(0);
                    let sv = match g.sx(s, &reads, &consts, At { r, c: zero, tail: true })? {
                        SV::F(v) => v,
                        _ => return Err(g.err("a row value that is not a float")),
                    };
                    let Some(add) = &add else { return Err(g.err("a row update without its addend")) };
                    let pa = g.elem_addr(add, Some(r), None);
                    let mut f = if *swap { rowmath::ROW_SWAP } else { 0 };
                    if *add_first {
                        f |= rowmath::ROW_ADD_FIRST;
                    }
                    if src.dtype == DType::BF16 {
                        f |= rowmath::ROW_SRC_BF16;
                    }
                    if d.dtype == DType::BF16 {
                        f |= rowmath::ROW_DST_BF16;
                    }
                    let flags = g.iconst(f);
                    g.call("kc_rt_row_axpy", &[pd, ps, pa, flags, sv, cols]);
                }
                RowForm::Mask { k, swap, a, b, fill, .. } => {
                    let zero = g.iconst(0);
                    let at = At { r, c: zero, tail: true };
                    let float = |g: &mut Self, e: &VExpr| match g.sx(e, &reads, &consts, at)? {
                        SV::F(v) => Ok(v),
                        _ => Err(g.err("a row value that is not a float")),
                    };
                    let int = |g: &mut Self, e: &VExpr| match g.sx(e, &reads, &consts, at)? {
                        SV::I(v) => Ok(v),
                        _ => Err(g.err("a row value that is not an integer")),
                    };
                    let kv = match k {
                        Some(k) => float(g, k)?,
                        None => g.b.ins().f32const(1.0),
                    };
                    let fv = float(g, fill)?;
                    let av = match a {
                        Some(a) => int(g, a)?,
                        None => g.iconst(0),
                    };
                    let bv = int(g, b)?;
                    let mut f = if k.is_some() { rowmath::ROW_MASK_MUL } else { 0 };
                    if *swap {
                        f |= rowmath::ROW_MASK_SWAP;
                    }
                    let flags = g.iconst(f);
                    g.call("kc_rt_row_mask", &[pd, ps, flags, av, bv, kv, fv, cols]);
                }
                RowForm::SiluMul { .. } => {
                    let Some(add) = &add else { return Err(g.err("a gate without its other operand")) };
                    let pa = g.elem_addr(add, Some(r), None);
                    let f = if d.dtype == DType::BF16 { rowmath::ROW_SILU_DST_BF16 } else { 0 };
                    let flags = g.iconst(f);
                    g.call("kc_rt_row_silu_mul", &[pd, ps, pa, flags, cols]);
                }
            }
            Ok(())
        })
    }

    /// The flags, the subtrahend and the factor of a [`rowmath::kc_rt_row_exp`] call for `exp(k·src - s)` (or
    /// without `k`, or `s`) at row `r`.
    fn row_exp_args(
        &mut self,
        src: &Res,
        s: Option<&VExpr>,
        k: Option<&VExpr>,
        reads: &Reads,
        hoisted: &BTreeMap<*const VExpr, SV>,
        r: Value,
    ) -> Result<(i64, Value, Value), Diagnostic> {
        let mut f = if src.dtype == DType::BF16 { rowmath::ROW_SRC_BF16 } else { 0 };
        let value = |g: &mut Self, e: Option<&VExpr>, flag: i64, f: &mut i64, none: f32| -> Result<Value, Diagnostic> {
            match e {
                Some(e) => {
                    *f |= flag;
                    let zero = g.iconst(0);
                    match g.sx(e, reads, hoisted, At { r, c: zero, tail: true })? {
                        SV::F(v) => Ok(v),
                        _ => Err(g.err("a row value that is not a float")),
                    }
                }
                None => Ok(g.b.ins().f32const(none)),
            }
        };
        let sv = value(self, s, rowmath::ROW_EXP_SUB, &mut f, 0.0)?;
        let kv = value(self, k, rowmath::ROW_EXP_MUL, &mut f, 1.0)?;
        Ok((f, sv, kv))
    }

    /// The columns `cv..limit` of row `r` of a vector statement: with SIMD, four vectors a step while 16
    /// columns remain (their operands loaded first, [`Gen::preload`]), then one while 4 remain, then one by
    /// one (all of them one by one without SIMD).
    #[allow(clippy::too_many_arguments)]
    fn columns(
        &mut self,
        expr: &'p VExpr,
        reads: &Reads,
        row_vals: &BTreeMap<*const VExpr, SV>,
        target: &Res,
        r: Value,
        cv: Variable,
        limit: Value,
        simd: bool,
    ) -> Result<(), Diagnostic> {
        if simd {
            for width in [16i64, 4] {
                self.loop_while_fits(cv, width, limit, width, |g, c| {
                    let cks: Vec<Value> = (0..width / 4).map(|k| g.b.ins().iadd_imm_s(c, 4 * k)).collect();
                    let mut leaves = Vec::new();
                    g.elem_leaves(expr, row_vals, &mut leaves);
                    g.preload(&leaves, reads, row_vals, r, &cks)?;
                    let mut vals = Vec::new();
                    for &ck in &cks {
                        let v = g.vx(expr, reads, row_vals, At { r, c: ck, tail: false })?;
                        vals.push((ck, v));
                    }
                    g.preloaded.clear();
                    for (ck, v) in vals {
                        g.store_x4(target, r, ck, v);
                    }
                    Ok(())
                })?;
            }
        }
        self.loop_while_fits(cv, 1, limit, 1, |g, c| {
            let at = At { r, c, tail: true };
            if simd {
                let v = g.vx(expr, reads, row_vals, at)?;
                let lane = g.b.ins().extractlane(v, 0);
                g.store_scalar(target, r, c, SV::F(lane));
            } else {
                let v = g.sx(expr, reads, row_vals, at)?;
                g.store_scalar(target, r, c, v);
            }
            Ok(())
        })
    }

    fn chunk_var(&mut self) -> Variable {
        match self.chunk_var {
            Some(v) => v,
            None => {
                let v = self.b.declare_var(types::I64);
                self.chunk_var = Some(v);
                v
            }
        }
    }

    /// The slot for the row-invariant vectors of a statement, created on first use.
    fn splat_slot(&mut self) -> StackSlot {
        match self.splat_slot {
            Some(s) => s,
            None => {
                let bytes = (16 * SPLATS) as u32;
                let s = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 4));
                self.splat_slot = Some(s);
                s
            }
        }
    }

    /// The scratch row for the f32 results of a chunk of a bf16 statement, created on first use.
    fn out_slot(&mut self) -> StackSlot {
        match self.out_scratch {
            Some(s) => s,
            None => {
                let bytes = (EXP_CHUNK * 4) as u32;
                let s = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 6));
                self.out_scratch = Some(s);
                s
            }
        }
    }

    /// The `i`-th scratch row for `exp`s, created on first use.
    fn exp_slot(&mut self, i: usize) -> StackSlot {
        while self.exp_scratch.len() <= i {
            let bytes = (EXP_CHUNK * 4) as u32;
            let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 6));
            self.exp_scratch.push(slot);
        }
        self.exp_scratch[i]
    }

    /// The address of column `c` of a scratch row whose chunk starts at column `cs`.
    fn scratch_addr(&mut self, slot: StackSlot, c: Value, cs: Value) -> Value {
        let base = self.b.ins().stack_addr(types::I64, slot, 0);
        let off = self.b.ins().isub(c, cs);
        let off = self.b.ins().ishl_imm_s(off, 2);
        self.b.ins().iadd(base, off)
    }

    /// Computes, as scalars, the maximal sub-expressions of `e` that vary at most as `level` (and are not
    /// leaves that are free to compute anyway), into `out`.
    fn hoist(
        &mut self,
        e: &'p VExpr,
        level: Var,
        reads: &Reads,
        at: At,
        out: &mut BTreeMap<*const VExpr, SV>,
    ) -> Result<(), Diagnostic> {
        let v = var_of(e);
        if v == level {
            if !out.contains_key(&(e as *const VExpr)) && !has_div(e) {
                let s = self.sx(e, reads, out, at)?;
                out.insert(e as *const VExpr, s);
            }
            return Ok(());
        }
        if v < level {
            return Ok(());
        }
        match e {
            VExpr::Unary(_, a) | VExpr::Cast(_, a) => self.hoist(a, level, reads, at, out),
            VExpr::Binary(_, a, b) => {
                self.hoist(a, level, reads, at, out)?;
                self.hoist(b, level, reads, at, out)
            }
            VExpr::Select(c, a, b) => {
                self.hoist(c, level, reads, at, out)?;
                self.hoist(a, level, reads, at, out)?;
                self.hoist(b, level, reads, at, out)
            }
            _ => Ok(()),
        }
    }

    fn read_res<'r>(&self, reads: &'r Reads, r: &Region) -> Result<&'r Res, Diagnostic> {
        reads
            .iter()
            .find(|(p, _)| std::ptr::eq(*p, r))
            .map(|(_, x)| x)
            .ok_or_else(|| self.err("a vector operand was not resolved"))
    }

    // ----- scalar element code -----

    fn sx(&mut self, e: &VExpr, reads: &Reads, hoisted: &BTreeMap<*const VExpr, SV>, at: At) -> Result<SV, Diagnostic> {
        if let Some(v) = hoisted.get(&(e as *const VExpr)) {
            return Ok(*v);
        }
        Ok(match e {
            VExpr::F32(x) => SV::F(self.b.ins().f32const(*x)),
            VExpr::I32(x) => SV::I(self.iconst(*x)),
            VExpr::Bool(x) => SV::B(self.b.ins().iconst(types::I8, i64::from(*x))),
            VExpr::Scalar(s) => SV::I(self.sexpr(s)?),
            VExpr::Row => SV::I(at.r),
            VExpr::Col => SV::I(at.c),
            VExpr::Read(r) | VExpr::ReadRow(r) | VExpr::ReadCol(r) => {
                let x = self.read_res(reads, r)?.clone();
                let zero = self.iconst(0);
                let (rr, cc) = match e {
                    VExpr::Read(_) => (at.r, at.c),
                    VExpr::ReadRow(_) => (at.r, zero),
                    _ => (zero, at.c),
                };
                self.load_scalar(&x, rr, cc)
            }
            VExpr::Unary(op, a) => {
                let a = self.sx(a, reads, hoisted, at)?;
                self.unary_scalar(*op, a)?
            }
            VExpr::Binary(op, a, b) => {
                let a = self.sx(a, reads, hoisted, at)?;
                let b = self.sx(b, reads, hoisted, at)?;
                self.binary_scalar(*op, a, b)?
            }
            VExpr::Select(c, a, b) => {
                let c = match self.sx(c, reads, hoisted, at)? {
                    SV::B(c) => c,
                    _ => return Err(self.err("a select on a non-bool condition")),
                };
                if has_div(a) || has_div(b) {
                    // Only the chosen side runs: it may divide by zero.
                    let tb = self.b.create_block();
                    let fb = self.b.create_block();
                    let done = self.b.create_block();
                    self.b.ins().brif(c, tb, &[], fb, &[]);
                    self.b.switch_to_block(tb);
                    let x = self.sx(a, reads, hoisted, at)?;
                    let (t, xv) = sv_parts(x);
                    let p = self.b.append_block_param(done, cl_ty(t));
                    self.b.ins().jump(done, &[xv.into()]);
                    self.b.switch_to_block(fb);
                    let y = self.sx(b, reads, hoisted, at)?;
                    let (_, yv) = sv_parts(y);
                    self.b.ins().jump(done, &[yv.into()]);
                    self.b.switch_to_block(done);
                    sv_make(t, p)
                } else {
                    let x = self.sx(a, reads, hoisted, at)?;
                    let y = self.sx(b, reads, hoisted, at)?;
                    let (t, xv) = sv_parts(x);
                    let (_, yv) = sv_parts(y);
                    sv_make(t, self.b.ins().select(c, xv, yv))
                }
            }
            VExpr::Cast(d, a) => {
                let a = self.sx(a, reads, hoisted, at)?;
                self.cast_scalar(*d, a)
            }
        })
    }

    fn load_scalar(&mut self, x: &Res, r: Value, c: Value) -> SV {
        let addr = self.elem_addr(x, Some(r), Some(c));
        match x.dtype {
            DType::F32 => SV::F(self.b.ins().load(types::F32, TRUSTED, addr, 0)),
            DType::BF16 => {
                let h = self.b.ins().uload16(types::I32, TRUSTED, addr, 0);
                let w = self.b.ins().ishl_imm_s(h, 16);
                SV::F(self.b.ins().bitcast(types::F32, LE, w))
            }
            DType::F16 => {
                let h = self.b.ins().uload16(types::I32, TRUSTED, addr, 0);
                SV::F(self.f16_widen(h))
            }
            DType::I32 => SV::I(self.b.ins().sload32(TRUSTED, addr, 0)),
            DType::Bool => SV::B(self.b.ins().load(types::I8, TRUSTED, addr, 0)),
        }
    }

    fn store_scalar(&mut self, x: &Res, r: Value, c: Value, v: SV) {
        let addr = self.elem_addr(x, Some(r), Some(c));
        match (x.dtype, v) {
            (DType::F32, SV::F(v)) => {
                self.b.ins().store(TRUSTED, v, addr, 0);
            }
            (DType::BF16, SV::F(v)) => {
                let bits = self.bf16_bits(v);
                self.b.ins().istore16(TRUSTED, bits, addr, 0);
            }
            (DType::F16, SV::F(v)) => {
                let bits = self.f16_bits(v);
                self.b.ins().istore16(TRUSTED, bits, addr, 0);
            }
            (DType::I32, SV::I(v)) => {
                self.b.ins().istore32(TRUSTED, v, addr, 0);
            }
            (DType::Bool, SV::B(v)) => {
                self.b.ins().store(TRUSTED, v, addr, 0);
            }
            _ => unreachable!("the statement's type was checked against its destination"),
        }
    }

    /// An f16 (the low 16 bits of an i32) widened to f32 exactly, in registers.
    fn f16_widen(&mut self, h: Value) -> Value {
        let v = self.b.ins().splat(types::I32X4, h);
        let f = crate::math::f16_to_f32x4(self.b, v);
        self.b.ins().extractlane(f, 0)
    }

    /// The f16 bits (in the low 16 bits of an i32) of an f32, rounded to nearest-even, in registers.
    fn f16_bits(&mut self, x: Value) -> Value {
        let v = self.b.ins().splat(types::F32X4, x);
        let h = crate::math::f32x4_to_f16(self.b, v);
        self.b.ins().extractlane(h, 0)
    }

    /// The bf16 bits (in the low 16 bits of an i32) of an f32, rounded to nearest-even; NaN stays a quiet NaN.
    fn bf16_bits(&mut self, v: Value) -> Value {
        let w = self.b.ins().bitcast(types::I32, LE, v);
        let lsb = self.b.ins().ushr_imm_s(w, 16);
        let lsb = self.b.ins().band_imm_s(lsb, 1);
        let bias = self.b.ins().iadd_imm_s(lsb, 0x7FFF);
        let rounded = self.b.ins().iadd(w, bias);
        let rounded = self.b.ins().ushr_imm_s(rounded, 16);
        let nan_bits = self.b.ins().ushr_imm_s(w, 16);
        let nan_bits = self.b.ins().bor_imm_s(nan_bits, 0x40);
        let is_nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
        self.b.ins().select(is_nan, nan_bits, rounded)
    }

    fn unary_scalar(&mut self, op: UnOp, a: SV) -> Result<SV, Diagnostic> {
        Ok(match (op, a) {
            (UnOp::Not, SV::B(x)) => SV::B(self.b.ins().bxor_imm_s(x, 1)),
            (UnOp::Neg, SV::I(x)) => SV::I(self.b.ins().ineg(x)),
            (UnOp::Abs, SV::I(x)) => SV::I(self.b.ins().iabs(x)),
            (op, SV::F(x)) => SV::F(match op {
                UnOp::Neg => self.b.ins().fneg(x),
                UnOp::Abs => self.b.ins().fabs(x),
                UnOp::Sqrt => self.b.ins().sqrt(x),
                UnOp::Floor => self.b.ins().floor(x),
                UnOp::Ceil => self.b.ins().ceil(x),
                UnOp::Relu => {
                    let z = self.b.ins().f32const(0.0);
                    let keep = self.b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, x, z);
                    self.b.ins().select(keep, x, z)
                }
                UnOp::Not => return Err(self.err("not of an f32")),
                _ => {
                    let v = self.splat(SV::F(x));
                    let r = self.unary_x4(op, v);
                    self.b.ins().extractlane(r, 0)
                }
            }),
            (op, _) => return Err(self.err(format!("{} of a non-float", op.name()))),
        })
    }

    fn binary_scalar(&mut self, op: BinOp, a: SV, b: SV) -> Result<SV, Diagnostic> {
        use BinOp::*;
        Ok(match (a, b) {
            (SV::F(x), SV::F(y)) => match op {
                Add => SV::F(self.b.ins().fadd(x, y)),
                Sub => SV::F(self.b.ins().fsub(x, y)),
                Mul => SV::F(self.b.ins().fmul(x, y)),
                Div => SV::F(self.b.ins().fdiv(x, y)),
                Mod => SV::F(self.call("kc_rt_fmodf", &[x, y]).expect("a value")),
                Pow => SV::F(self.call("kc_rt_powf", &[x, y]).expect("a value")),
                Min | Max => {
                    let vx = self.splat(SV::F(x));
                    let vy = self.splat(SV::F(y));
                    let r = if op == Min {
                        crate::math::nan_min_f32x4(self.b, vx, vy)
                    } else {
                        crate::math::nan_max_f32x4(self.b, vx, vy)
                    };
                    SV::F(self.b.ins().extractlane(r, 0))
                }
                Eq => SV::B(self.b.ins().fcmp(FloatCC::Equal, x, y)),
                Ne => SV::B(self.b.ins().fcmp(FloatCC::NotEqual, x, y)),
                Lt => SV::B(self.b.ins().fcmp(FloatCC::LessThan, x, y)),
                Le => SV::B(self.b.ins().fcmp(FloatCC::LessThanOrEqual, x, y)),
                Gt => SV::B(self.b.ins().fcmp(FloatCC::GreaterThan, x, y)),
                Ge => SV::B(self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, y)),
                And | Or => return Err(self.err("and/or of floats")),
            },
            (SV::I(x), SV::I(y)) => match op {
                Add => SV::I(self.b.ins().iadd(x, y)),
                Sub => SV::I(self.b.ins().isub(x, y)),
                Mul => SV::I(self.b.ins().imul(x, y)),
                Div | Mod => {
                    let z = self.b.ins().icmp_imm_s(IntCC::Equal, y, 0);
                    let site = self.site(Site::DivByZero);
                    let which = self.iconst(i64::from(op == Mod));
                    let zero = self.iconst(0);
                    self.fail_if(z, site, [x, which, zero, zero]);
                    SV::I(self.floor_divmod(x, y, op == Div))
                }
                Min => SV::I(self.b.ins().smin(x, y)),
                Max => SV::I(self.b.ins().smax(x, y)),
                Eq => SV::B(self.b.ins().icmp(IntCC::Equal, x, y)),
                Ne => SV::B(self.b.ins().icmp(IntCC::NotEqual, x, y)),
                Lt => SV::B(self.b.ins().icmp(IntCC::SignedLessThan, x, y)),
                Le => SV::B(self.b.ins().icmp(IntCC::SignedLessThanOrEqual, x, y)),
                Gt => SV::B(self.b.ins().icmp(IntCC::SignedGreaterThan, x, y)),
                Ge => SV::B(self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, x, y)),
                Pow | And | Or => return Err(self.err(format!("{} of integers", op.name()))),
            },
            (SV::B(x), SV::B(y)) => match op {
                Eq => SV::B(self.b.ins().icmp(IntCC::Equal, x, y)),
                Ne => SV::B(self.b.ins().icmp(IntCC::NotEqual, x, y)),
                And => SV::B(self.b.ins().band(x, y)),
                Or => SV::B(self.b.ins().bor(x, y)),
                _ => return Err(self.err(format!("{} of booleans", op.name()))),
            },
            _ => return Err(self.err(format!("{} of mixed types", op.name()))),
        })
    }

    fn cast_scalar(&mut self, d: DType, a: SV) -> SV {
        let to_f = |g: &mut Self, a: SV| match a {
            SV::F(x) => x,
            SV::I(x) => g.b.ins().fcvt_from_sint(types::F32, x),
            SV::B(x) => {
                let w = g.b.ins().uextend(types::I32, x);
                g.b.ins().fcvt_from_uint(types::F32, w)
            }
        };
        match d {
            DType::F32 => SV::F(to_f(self, a)),
            DType::BF16 => {
                let f = to_f(self, a);
                let bits = self.bf16_bits(f);
                let w = self.b.ins().ishl_imm_s(bits, 16);
                SV::F(self.b.ins().bitcast(types::F32, LE, w))
            }
            DType::F16 => {
                let f = to_f(self, a);
                let bits = self.f16_bits(f);
                SV::F(self.f16_widen(bits))
            }
            DType::I32 => SV::I(match a {
                SV::F(x) => {
                    let i = self.b.ins().fcvt_to_sint_sat(types::I32, x);
                    self.b.ins().sextend(types::I64, i)
                }
                SV::I(x) => x,
                SV::B(x) => self.b.ins().uextend(types::I64, x),
            }),
            DType::Bool => SV::B(match a {
                SV::F(x) => {
                    let z = self.b.ins().f32const(0.0);
                    self.b.ins().fcmp(FloatCC::NotEqual, x, z)
                }
                SV::I(x) => self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0),
                SV::B(x) => x,
            }),
        }
    }

    // ----- f32x4 element code -----

    /// A scalar (float or mask) as a vector: f32 splat, booleans as all-ones / all-zeros lanes (as f32x4 bits).
    fn splat(&mut self, s: SV) -> Value {
        match s {
            SV::F(x) => self.b.ins().splat(types::F32X4, x),
            SV::B(x) => {
                let w = self.b.ins().uextend(types::I32, x);
                let m = self.b.ins().ineg(w);
                let v = self.b.ins().splat(types::I32X4, m);
                self.b.ins().bitcast(types::F32X4, LE, v)
            }
            SV::I(x) => {
                let f = self.b.ins().fcvt_from_sint(types::F32, x);
                self.b.ins().splat(types::F32X4, f)
            }
        }
    }

    /// The element operands of `e`: the float reads [`Gen::vx`] would load as vectors (not hoisted, not
    /// splatted, not an `exp` of the chunk, not inside an integer comparison).
    fn elem_leaves(&self, e: &'p VExpr, hoisted: &BTreeMap<*const VExpr, SV>, out: &mut Vec<&'p VExpr>) {
        let p = e as *const VExpr;
        if self.splats.contains_key(&p)
            || hoisted.contains_key(&p)
            || self.exp_done.iter().any(|(q, _)| std::ptr::eq(*q, e))
            || var_of(e) != Var::Elem
        {
            return;
        }
        match e {
            VExpr::Read(_) | VExpr::ReadCol(_) if ty_of(self.prog, self.launch, e) == Some(Ty::F) => out.push(e),
            VExpr::Read(_) | VExpr::ReadCol(_) => {}
            // An integer comparison: `vx` evaluates its terms as scalars, loading nothing in vectors.
            VExpr::Binary(_, x, _) if ty_of(self.prog, self.launch, x) == Some(Ty::I) => {}
            _ => e.children().into_iter().for_each(|c| self.elem_leaves(c, hoisted, out)),
        }
    }

    /// Loads the element operands `leaves` for the 4-lane column groups `cks` of row `r`, one operand after
    /// another (its groups back to back: a 64-byte line of an f32 stream in consecutive loads), into
    /// [`Gen::preloaded`], where [`Gen::vx`] takes them; an operand equal to one loaded already (a region read
    /// twice, here or by an earlier statement of the loop) is not loaded again. With the loads of a line
    /// spread over the statements' arithmetic and interleaved with the other streams' loads and stores, a
    /// Zen 4 core streaming tensors whose addresses agree modulo 4 KiB (adamw's 7) ran at half speed
    /// (`docs/jit.md`).
    fn preload(
        &mut self,
        leaves: &[&'p VExpr],
        reads: &Reads,
        hoisted: &BTreeMap<*const VExpr, SV>,
        r: Value,
        cks: &[Value],
    ) -> Result<(), Diagnostic> {
        for &leaf in leaves {
            for &c in cks {
                let known = self.preloaded.iter().find(|(p, d, _)| *d == c && *p == leaf).map(|&(_, _, v)| v);
                let v = match known {
                    Some(v) => v,
                    None => self.vx(leaf, reads, hoisted, At { r, c, tail: false })?,
                };
                self.preloaded.push((leaf, c, v));
            }
        }
        Ok(())
    }

    /// Four lanes of a float or mask expression at columns `c..c+4` (lane 0 only in a tail). Masks are
    /// f32x4 values whose lanes are all ones or all zeros.
    fn vx(
        &mut self,
        e: &VExpr,
        reads: &Reads,
        hoisted: &BTreeMap<*const VExpr, SV>,
        at: At,
    ) -> Result<Value, Diagnostic> {
        if let Some(&slot) = self.splats.get(&(e as *const VExpr)) {
            return Ok(self.b.ins().stack_load(types::I64, types::F32X4, slot, 0));
        }
        if let Some(v) = hoisted.get(&(e as *const VExpr)) {
            if let Some(&(_, slot, off)) = self.row_splats.iter().find(|(p, _, _)| std::ptr::eq(*p, e)) {
                return Ok(self.b.ins().stack_load(types::I64, types::F32X4, slot, off));
            }
            return Ok(self.splat(*v));
        }
        if let Some(&(_, slot)) = self.exp_done.iter().find(|(p, _)| std::ptr::eq(*p, e)) {
            // An `exp` computed for this chunk by `kc_rt_exp_f32`.
            let cs = self.b.use_var(self.chunk_var.expect("a chunked statement"));
            let a = self.scratch_addr(slot, at.c, cs);
            return Ok(if at.tail {
                let x = self.b.ins().load(types::F32, TRUSTED, a, 0);
                self.b.ins().splat(types::F32X4, x)
            } else {
                self.b.ins().load(types::F32X4, TRUSTED, a, 0)
            });
        }
        if var_of(e) != Var::Elem {
            let s = self.sx(e, reads, hoisted, at)?;
            return Ok(self.splat(s));
        }
        Ok(match e {
            VExpr::Read(r) | VExpr::ReadCol(r) => {
                if let Some(&(_, _, v)) =
                    self.preloaded.iter().find(|(p, c, _)| std::ptr::eq(*p, e) && *c == at.c && !at.tail)
                {
                    return Ok(v);
                }
                let x = self.read_res(reads, r)?.clone();
                let rr = if matches!(e, VExpr::Read(_)) { at.r } else { self.iconst(0) };
                if at.tail {
                    let s = self.load_scalar(&x, rr, at.c);
                    self.splat(s)
                } else {
                    let addr = self.elem_addr(&x, Some(rr), Some(at.c));
                    match x.dtype {
                        DType::F32 => self.b.ins().load(types::F32X4, TRUSTED, addr, 0),
                        DType::BF16 => {
                            let q = self.b.ins().load(types::I64, TRUSTED, addr, 0);
                            let v = self.b.ins().scalar_to_vector(types::I64X2, q);
                            let h = self.b.ins().bitcast(types::I16X8, LE, v);
                            let w = self.b.ins().uwiden_low(h);
                            let w = self.b.ins().ishl_imm_s(w, 16);
                            self.b.ins().bitcast(types::F32X4, LE, w)
                        }
                        _ => return Err(self.err("a vector read of a non-float")),
                    }
                }
            }
            VExpr::Unary(op, a) => {
                let a = self.vx(a, reads, hoisted, at)?;
                match op {
                    UnOp::Not => {
                        let i = self.b.ins().bitcast(types::I32X4, LE, a);
                        let n = self.b.ins().bnot(i);
                        self.b.ins().bitcast(types::F32X4, LE, n)
                    }
                    _ => self.unary_x4(*op, a),
                }
            }
            VExpr::Binary(op, x, y) if ty_of(self.prog, self.launch, x) == Some(Ty::I) => {
                let Some((left, a, terms, other)) = int_cmp_parts(self.prog, self.launch, x, y) else {
                    return Err(self.err("an integer column expression the SIMD path does not take"));
                };
                // a·c + b OP other  ⟺  a·lane OP (other - b - a·c0), exactly, in i64; the right side is
                // clamped to [-8, 8] (lanes are 0..4, so the outcome is unchanged) and compared in i32 lanes.
                let mut t = match self.sx(other, reads, hoisted, at)? {
                    SV::I(v) => v,
                    _ => return Err(self.err("a non-integer comparison operand")),
                };
                for (neg, term) in terms {
                    let v = match self.sx(term, reads, hoisted, at)? {
                        SV::I(v) => v,
                        _ => return Err(self.err("a non-integer column term")),
                    };
                    t = if neg { self.b.ins().iadd(t, v) } else { self.b.ins().isub(t, v) };
                }
                let ac0 = if a == 1 { at.c } else { self.b.ins().ineg(at.c) };
                let d = self.b.ins().isub(t, ac0);
                let lo = self.iconst(-8);
                let hi = self.iconst(8);
                let d = self.b.ins().smax(d, lo);
                let d = self.b.ins().smin(d, hi);
                let d = self.b.ins().ireduce(types::I32, d);
                let dv = self.b.ins().splat(types::I32X4, d);
                let z = self.b.ins().iconst(types::I32, 0);
                let mut lanes = self.b.ins().splat(types::I32X4, z);
                for i in 1..4u8 {
                    let v = self.b.ins().iconst(types::I32, a * i64::from(i));
                    lanes = self.b.ins().insertlane(lanes, v, i);
                }
                let cc = match (op, left) {
                    (BinOp::Eq, _) => IntCC::Equal,
                    (BinOp::Ne, _) => IntCC::NotEqual,
                    (BinOp::Lt, true) | (BinOp::Gt, false) => IntCC::SignedLessThan,
                    (BinOp::Le, true) | (BinOp::Ge, false) => IntCC::SignedLessThanOrEqual,
                    (BinOp::Gt, true) | (BinOp::Lt, false) => IntCC::SignedGreaterThan,
                    _ => IntCC::SignedGreaterThanOrEqual,
                };
                let m = self.b.ins().icmp(cc, lanes, dv);
                self.b.ins().bitcast(types::F32X4, LE, m)
            }
            VExpr::Binary(op, x, y) => {
                let tx = ty_of(self.prog, self.launch, x);
                let a = self.vx(x, reads, hoisted, at)?;
                let b = self.vx(y, reads, hoisted, at)?;
                self.binary_x4(*op, tx == Some(Ty::B), a, b)?
            }
            VExpr::Select(c, x, y) => {
                let m = self.vx(c, reads, hoisted, at)?;
                let a = self.vx(x, reads, hoisted, at)?;
                let b = self.vx(y, reads, hoisted, at)?;
                self.b.ins().bitselect(m, a, b)
            }
            VExpr::Cast(d, a) => {
                let ta = ty_of(self.prog, self.launch, a);
                let v = self.vx(a, reads, hoisted, at)?;
                match (d, ta) {
                    (DType::F32, Some(Ty::F)) => v,
                    (DType::F32, Some(Ty::B)) => {
                        let one = self.b.ins().f32const(1.0);
                        let one = self.b.ins().splat(types::F32X4, one);
                        self.b.ins().band(v, one)
                    }
                    (DType::BF16, Some(Ty::F)) => {
                        let bits = self.bf16_bits_x4(v);
                        let w = self.b.ins().ishl_imm_s(bits, 16);
                        self.b.ins().bitcast(types::F32X4, LE, w)
                    }
                    (DType::BF16, Some(Ty::B)) => {
                        let one = self.b.ins().f32const(1.0);
                        let one = self.b.ins().splat(types::F32X4, one);
                        self.b.ins().band(v, one)
                    }
                    (DType::Bool, Some(Ty::F)) => {
                        let z = self.b.ins().f32const(0.0);
                        let z = self.b.ins().splat(types::F32X4, z);
                        let m = self.b.ins().fcmp(FloatCC::NotEqual, v, z);
                        self.b.ins().bitcast(types::F32X4, LE, m)
                    }
                    (DType::Bool, Some(Ty::B)) => v,
                    _ => return Err(self.err("a vector cast the SIMD path does not take")),
                }
            }
            _ => return Err(self.err("a column-dependent node the SIMD path does not take")),
        })
    }

    fn unary_x4(&mut self, op: UnOp, a: Value) -> Value {
        match op {
            UnOp::Neg => self.b.ins().fneg(a),
            UnOp::Abs => self.b.ins().fabs(a),
            UnOp::Sqrt => self.b.ins().sqrt(a),
            UnOp::Floor => self.b.ins().floor(a),
            UnOp::Ceil => self.b.ins().ceil(a),
            UnOp::Rsqrt => {
                let s = self.b.ins().sqrt(a);
                let one = self.b.ins().f32const(1.0);
                let one = self.b.ins().splat(types::F32X4, one);
                self.b.ins().fdiv(one, s)
            }
            UnOp::Relu => {
                let z = self.b.ins().f32const(0.0);
                let z = self.b.ins().splat(types::F32X4, z);
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, a, z);
                let nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
                let keep = self.b.ins().bor(gt, nan);
                let keep = self.b.ins().bitcast(types::F32X4, LE, keep);
                self.b.ins().bitselect(keep, a, z)
            }
            _ => crate::math::unary_f32x4(self.b, op, a),
        }
    }

    fn binary_x4(&mut self, op: BinOp, bools: bool, a: Value, b: Value) -> Result<Value, Diagnostic> {
        use BinOp::*;
        let mask = |g: &mut Self, m: Value| g.b.ins().bitcast(types::F32X4, LE, m);
        Ok(if bools {
            let ia = self.b.ins().bitcast(types::I32X4, LE, a);
            let ib = self.b.ins().bitcast(types::I32X4, LE, b);
            let r = match op {
                Eq => self.b.ins().icmp(IntCC::Equal, ia, ib),
                Ne => self.b.ins().icmp(IntCC::NotEqual, ia, ib),
                And => self.b.ins().band(ia, ib),
                Or => self.b.ins().bor(ia, ib),
                _ => return Err(self.err(format!("{} of booleans", op.name()))),
            };
            mask(self, r)
        } else {
            match op {
                Add => self.b.ins().fadd(a, b),
                Sub => self.b.ins().fsub(a, b),
                Mul => self.b.ins().fmul(a, b),
                Div => self.b.ins().fdiv(a, b),
                Min => crate::math::nan_min_f32x4(self.b, a, b),
                Max => crate::math::nan_max_f32x4(self.b, a, b),
                Mod | Pow => {
                    let f = if op == Mod { "kc_rt_fmodf" } else { "kc_rt_powf" };
                    let mut out = self.b.ins().f32const(0.0);
                    out = self.b.ins().splat(types::F32X4, out);
                    for lane in 0..4u8 {
                        let x = self.b.ins().extractlane(a, lane);
                        let y = self.b.ins().extractlane(b, lane);
                        let r = self.call(f, &[x, y]).expect("a value");
                        out = self.b.ins().insertlane(out, r, lane);
                    }
                    out
                }
                Eq | Ne | Lt | Le | Gt | Ge => {
                    let cc = match op {
                        Eq => FloatCC::Equal,
                        Ne => FloatCC::NotEqual,
                        Lt => FloatCC::LessThan,
                        Le => FloatCC::LessThanOrEqual,
                        Gt => FloatCC::GreaterThan,
                        _ => FloatCC::GreaterThanOrEqual,
                    };
                    let m = self.b.ins().fcmp(cc, a, b);
                    mask(self, m)
                }
                And | Or => return Err(self.err("and/or of floats")),
            }
        })
    }

    /// bf16 bits of four f32 lanes, rounded to nearest-even (an i32x4, bits in the low halves).
    fn bf16_bits_x4(&mut self, v: Value) -> Value {
        let w = self.b.ins().bitcast(types::I32X4, LE, v);
        let lsb = self.b.ins().ushr_imm_s(w, 16);
        let one = self.b.ins().iconst(types::I32, 1);
        let one = self.b.ins().splat(types::I32X4, one);
        let lsb = self.b.ins().band(lsb, one);
        let bias = self.b.ins().iconst(types::I32, 0x7FFF);
        let bias = self.b.ins().splat(types::I32X4, bias);
        let bias = self.b.ins().iadd(lsb, bias);
        let rounded = self.b.ins().iadd(w, bias);
        let rounded = self.b.ins().ushr_imm_s(rounded, 16);
        let nan_bits = self.b.ins().ushr_imm_s(w, 16);
        let q = self.b.ins().iconst(types::I32, 0x40);
        let q = self.b.ins().splat(types::I32X4, q);
        let nan_bits = self.b.ins().bor(nan_bits, q);
        let is_nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
        self.b.ins().bitselect(is_nan, nan_bits, rounded)
    }

    fn store_x4(&mut self, x: &Res, r: Value, c: Value, v: Value) {
        let addr = self.elem_addr(x, Some(r), Some(c));
        match x.dtype {
            DType::F32 => {
                self.b.ins().store(TRUSTED, v, addr, 0);
            }
            _ => {
                let bits = self.bf16_bits_x4(v);
                let h = self.b.ins().unarrow(bits, bits);
                let q = self.b.ins().bitcast(types::I64X2, LE, h);
                let q = self.b.ins().extractlane(q, 0);
                self.b.ins().store(TRUSTED, q, addr, 0);
            }
        }
    }
}

fn sv_parts(v: SV) -> (Ty, Value) {
    match v {
        SV::F(x) => (Ty::F, x),
        SV::I(x) => (Ty::I, x),
        SV::B(x) => (Ty::B, x),
    }
}

fn sv_make(t: Ty, v: Value) -> SV {
    match t {
        Ty::F => SV::F(v),
        Ty::I => SV::I(v),
        Ty::B => SV::B(v),
    }
}

fn cl_ty(t: Ty) -> Type {
    match t {
        Ty::F => types::F32,
        Ty::I => types::I64,
        Ty::B => types::I8,
    }
}

/// The outermost column-dependent `exp` nodes of `e` (not those inside another's argument), in order.
fn collect_exps<'e>(e: &'e VExpr, out: &mut Vec<&'e VExpr>) {
    if var_of(e) != Var::Elem {
        return;
    }
    if let VExpr::Unary(op, _) = e {
        if unary_routine(*op).is_some() {
            out.push(e);
            return;
        }
    }
    for c in e.children() {
        collect_exps(c, out);
    }
}

/// The host routine that computes a unary operation in place over a scratch row of `f32`s, 16 lanes at a
/// time, with the bits of the inline `f32x4` code: `exp` and `silu` (SwiGLU's gate).
fn unary_routine(op: UnOp) -> Option<&'static str> {
    match op {
        UnOp::Exp => Some("kc_rt_exp_f32"),
        UnOp::Silu => Some("kc_rt_silu_f32"),
        _ => None,
    }
}

/// Whether an expression contains an integer division or remainder (which can fail, so it is not computed
/// speculatively).
pub(crate) fn has_div(e: &VExpr) -> bool {
    matches!(e, VExpr::Binary(BinOp::Div | BinOp::Mod, ..)) || e.children().into_iter().any(has_div)
}

/// The regions an expression reads: (0 element, 1 row broadcast, 2 column broadcast).
fn collect_reads<'e>(e: &'e VExpr, out: &mut Vec<(u8, &'e Region)>) {
    match e {
        VExpr::Read(r) => out.push((0, r)),
        VExpr::ReadRow(r) => out.push((1, r)),
        VExpr::ReadCol(r) => out.push((2, r)),
        _ => e.children().into_iter().for_each(|c| collect_reads(c, out)),
    }
}

#[allow(dead_code)]
fn sig(params: &[Type], rets: &[Type], module: &JITModule) -> Signature {
    let mut s = module.make_signature();
    s.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    s.returns.extend(rets.iter().map(|&t| AbiParam::new(t)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_ir::tile::{Buffer, GmTensor, Mem, Unit};

    /// `x: f32[8, 16]` (t0, a parameter), `y: f32[8, 16]` (t1, a result: may share `x`'s memory), `s: f32[4]`
    /// (t2, a parameter that shares nothing); UB buffers 0, 1, 2 of f32[2, 16].
    fn setup() -> (TileProgram, Launch) {
        let gm = |name: &str, shape: Vec<u64>, role| GmTensor { name: name.into(), dtype: DType::F32, shape, role };
        let buf = |name: &str| Buffer::single(name, Mem::UB, DType::F32, vec![2, 16]);
        let prog = TileProgram {
            kernel: "k".into(),
            target: "host".into(),
            dims: BTreeMap::new(),
            tensors: vec![
                gm("x", vec![8, 16], TensorRole::Param(0)),
                gm("y", vec![8, 16], TensorRole::Output(0)),
                gm("s", vec![4], TensorRole::Param(1)),
            ],
            launches: Vec::new(),
        };
        let l = Launch {
            name: "l".into(),
            unit: Unit::Vector,
            cube_cores: 0,
            vector_cores: 1,
            buffers: vec![buf("a"), buf("b"), buf("c")],
            svars: vec!["off".into()],
            cube: Vec::new(),
            vector: Vec::new(),
        };
        (prog, l)
    }

    fn ub(b: u32, off: i64) -> Region {
        Region {
            loc: Loc::Buf { buf: BufId(b), slot: SExpr::Const(0) },
            offset: SExpr::Const(off),
            row_stride: SExpr::Const(16),
        }
    }

    fn gm(t: u32, off: SExpr) -> Region {
        Region { loc: Loc::Gm(TensorId(t)), offset: off, row_stride: SExpr::Const(16) }
    }

    fn off(plus: i64) -> SExpr {
        SExpr::Bin(SBin::Add, Box::new(SExpr::Var(kc_ir::tile::SVar(0))), Box::new(SExpr::Const(plus)))
    }

    fn vector(dst: Region, expr: VExpr) -> Stmt {
        Stmt::Vector { dst, rows: SExpr::Const(2), cols: SExpr::Const(16), expr }
    }

    fn plus(a: VExpr, b: VExpr) -> VExpr {
        VExpr::Binary(BinOp::Add, Box::new(a), Box::new(b))
    }

    fn run(body: &[Stmt]) -> usize {
        let (prog, l) = setup();
        fusable_run(&prog, &l, body)
    }

    #[test]
    fn fusion_keeps_what_each_statement_reads() {
        let a_from_x = vector(ub(0, 0), plus(VExpr::Read(gm(0, off(0))), VExpr::F32(1.0)));
        // A later statement reads the earlier one's window, element by element: fused.
        assert_eq!(run(&[a_from_x.clone(), vector(ub(1, 0), plus(VExpr::Read(ub(0, 0)), VExpr::F32(2.0)))]), 2);
        // ... at another window, or one value per row: not fused.
        assert_eq!(run(&[a_from_x.clone(), vector(ub(1, 0), VExpr::Read(ub(0, 16)))]), 1);
        assert_eq!(run(&[a_from_x.clone(), vector(ub(1, 0), VExpr::ReadRow(ub(0, 0)))]), 1);
        // An earlier statement reads what a later one overwrites at another window: not fused.
        assert_eq!(run(&[vector(ub(1, 0), VExpr::Read(ub(0, 16))), vector(ub(0, 0), VExpr::F32(3.0))]), 1);
        // Two writes of one buffer at different windows: not fused; at the same window: fused.
        assert_eq!(run(&[a_from_x.clone(), vector(ub(0, 16), VExpr::F32(3.0))]), 1);
        assert_eq!(run(&[a_from_x.clone(), vector(ub(0, 0), VExpr::F32(3.0))]), 2);
        // Other tile sizes: not fused.
        let other =
            Stmt::Vector { dst: ub(1, 0), rows: SExpr::Const(1), cols: SExpr::Const(16), expr: VExpr::F32(1.0) };
        assert_eq!(run(&[a_from_x.clone(), other]), 1);
        // A run stops at MAX_FUSED statements.
        let many: Vec<Stmt> = (0..MAX_FUSED + 4).map(|_| a_from_x.clone()).collect();
        assert_eq!(run(&many), MAX_FUSED);
    }

    #[test]
    fn zero_fills_are_only_all_zero_bytes() {
        // `+0.0` rounds to all-zero bits in every float dtype; `-0.0` has its sign bit, other values other bits.
        for d in [DType::F32, DType::BF16, DType::F16] {
            assert!(zero_bytes(&VExpr::F32(0.0), d), "{d}");
            assert!(!zero_bytes(&VExpr::F32(-0.0), d), "{d}");
            assert!(!zero_bytes(&VExpr::F32(1e-45), d), "{d}");
        }
        assert!(zero_bytes(&VExpr::I32(0), DType::I32));
        assert!(!zero_bytes(&VExpr::I32(1), DType::I32));
        assert!(!zero_bytes(&VExpr::Bool(false), DType::Bool));
        assert!(!zero_bytes(&VExpr::Row, DType::F32));
    }

    #[test]
    fn row_routines_take_only_rows_they_compute_as_written() {
        let (prog, l) = setup();
        let form = |dst: Region, e: VExpr| match row_form(&prog, &l, &dst, &e) {
            None => "none",
            Some(RowForm::Exp { s: None, k: None, .. }) => "exp",
            Some(RowForm::Exp { s: Some(_), k: None, .. }) => "exp-sub",
            Some(RowForm::Exp { s: Some(_), k: Some(_), .. }) => "exp-mul-sub",
            Some(RowForm::Exp { s: None, k: Some(_), .. }) => "exp-mul",
            Some(RowForm::Scalar { swap: false, .. }) => "scalar",
            Some(RowForm::Scalar { swap: true, .. }) => "scalar-swapped",
            Some(RowForm::Axpy { swap: false, add_first: false, .. }) => "axpy",
            Some(RowForm::Axpy { swap: true, add_first: false, .. }) => "axpy-swapped",
            Some(RowForm::Axpy { swap: false, add_first: true, .. }) => "add-axpy",
            Some(RowForm::Axpy { swap: true, add_first: true, .. }) => "add-axpy-swapped",
            Some(RowForm::SiluMul { .. }) => "silu-mul",
            Some(RowForm::Mask { k: None, .. }) => "mask",
            Some(RowForm::Mask { k: Some(_), swap: false, .. }) => "mask-mul",
            Some(RowForm::Mask { k: Some(_), swap: true, .. }) => "mask-mul-swapped",
        };
        let bx = |e: VExpr| Box::new(e);
        let exp = |e: VExpr| VExpr::Unary(UnOp::Exp, bx(e));
        let bin = |op, a: VExpr, b: VExpr| VExpr::Binary(op, bx(a), bx(b));
        let x = || VExpr::Read(ub(0, 0));
        let row = || VExpr::ReadRow(ub(2, 0));
        assert_eq!(form(ub(1, 0), exp(x())), "exp");
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Sub, x(), row()))), "exp-sub");
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Sub, x(), VExpr::F32(2.0)))), "exp-sub");
        // A row-invariant factor on the source (attention's folded scale), on either side.
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Sub, bin(BinOp::Mul, row(), x()), row()))), "exp-mul-sub");
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Mul, x(), VExpr::F32(0.5)))), "exp-mul");
        // Not a factor: one that varies along the row, or a division (which could fail).
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Sub, bin(BinOp::Mul, x(), x()), row()))), "none");
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Mul, x(), bin(BinOp::Div, row(), VExpr::F32(2.0))))), "none");
        // `src · s + add`: one call for the block when `s` is the same for every row, a call per row otherwise.
        let axpy =
            |e: VExpr| row_form(&prog, &l, &ub(1, 0), &e).map(|f| (block_axpy(&f), matches!(f, RowForm::Axpy { .. })));
        assert_eq!(
            axpy(bin(BinOp::Add, bin(BinOp::Mul, VExpr::F32(3.4445), x()), VExpr::Read(gm(0, off(0))))),
            Some((true, true))
        );
        assert_eq!(axpy(bin(BinOp::Add, bin(BinOp::Mul, x(), row()), VExpr::Read(gm(0, off(0))))), Some((false, true)));
        assert_eq!(axpy(bin(BinOp::Div, x(), VExpr::F32(2.0))).map(|(b, _)| b), Some(false));
        assert_eq!(form(ub(1, 0), bin(BinOp::Div, x(), row())), "scalar");
        assert_eq!(form(ub(1, 0), bin(BinOp::Sub, row(), x())), "scalar-swapped");
        // In place, at the same window: each block is loaded before it is stored.
        assert_eq!(form(ub(0, 0), bin(BinOp::Mul, x(), row())), "scalar");
        // Not of the forms: the other operand varies along the row, `exp(s - x)`, min/max, a division in the
        // row value (which could fail), a column broadcast.
        assert_eq!(form(ub(1, 0), bin(BinOp::Div, x(), VExpr::Read(ub(2, 0)))), "none");
        assert_eq!(form(ub(1, 0), exp(bin(BinOp::Sub, row(), x()))), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Max, x(), row())), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Mul, x(), bin(BinOp::Div, row(), VExpr::F32(2.0)))), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Mul, VExpr::ReadCol(ub(0, 0)), row())), "none");
        // The source at another window of the destination's buffer: a row would overwrite what a later row
        // reads.
        assert_eq!(form(ub(0, 16), bin(BinOp::Mul, x(), row())), "none");
        // The row value read from the destination's storage: not taken.
        assert_eq!(form(ub(2, 0), bin(BinOp::Mul, x(), row())), "none");
        // GM tensors that may share memory (`x` and `y`): only at one window.
        let gx = |o| VExpr::Read(gm(0, off(o)));
        assert_eq!(form(gm(1, off(0)), bin(BinOp::Add, gx(0), row())), "scalar");
        assert_eq!(form(gm(1, off(0)), bin(BinOp::Add, gx(16), row())), "none");
        // `x · s + y` (attention's `o = o · alpha + p·v`), in place too, or `y + x · s` (a weighted sum's
        // `acc + w · x`: the addend first, which the routine keeps); not when the addend varies the other way,
        // is a row value, or overlaps the destination at another window.
        let y = || VExpr::Read(ub(2, 0));
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, bin(BinOp::Mul, x(), row()), y())), "axpy");
        assert_eq!(form(ub(0, 0), bin(BinOp::Add, bin(BinOp::Mul, x(), row()), y())), "axpy");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, bin(BinOp::Mul, row(), x()), y())), "axpy-swapped");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, bin(BinOp::Mul, x(), row()), row())), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, bin(BinOp::Mul, x(), x()), y())), "none");
        assert_eq!(form(ub(2, 16), bin(BinOp::Add, bin(BinOp::Mul, x(), row()), y())), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, y(), bin(BinOp::Mul, x(), row()))), "add-axpy");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, y(), bin(BinOp::Mul, row(), x()))), "add-axpy-swapped");
        assert_eq!(form(ub(0, 0), bin(BinOp::Add, y(), bin(BinOp::Mul, x(), row()))), "add-axpy");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, row(), bin(BinOp::Mul, x(), row()))), "none");
        assert_eq!(form(ub(2, 16), bin(BinOp::Add, y(), bin(BinOp::Mul, x(), row()))), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Add, bin(BinOp::Mul, x(), row()), bin(BinOp::Mul, x(), row()))), "none");
        // SwiGLU's gate `silu(x) · y`; not with the operands the other way, a row value, or `y` overlapping
        // the destination at another window.
        let silu = |e: VExpr| VExpr::Unary(UnOp::Silu, bx(e));
        assert_eq!(form(ub(1, 0), bin(BinOp::Mul, silu(x()), y())), "silu-mul");
        assert_eq!(form(ub(1, 0), bin(BinOp::Mul, y(), silu(x()))), "none");
        assert_eq!(form(ub(1, 0), bin(BinOp::Mul, silu(x()), row())), "none");
        assert_eq!(form(ub(2, 16), bin(BinOp::Mul, silu(x()), y())), "none");
        // An `exp` into a destination that is not f32.
        let mut l2 = l.clone();
        l2.buffers[1].dtype = DType::BF16;
        assert!(row_form(&prog, &l2, &ub(1, 0), &exp(x())).is_none());
        assert!(row_form(&prog, &l2, &ub(1, 0), &bin(BinOp::Div, x(), row())).is_some());
        // A gate into bf16: the routine rounds.
        assert!(row_form(&prog, &l2, &ub(1, 0), &bin(BinOp::Mul, silu(x()), y())).is_some());
        // A row update into bf16 or from a bf16 source (Muon's `x = 3.4445 · x + b·x`): the routine widens and
        // rounds; not with a bf16 addend.
        let update = bin(BinOp::Add, bin(BinOp::Mul, x(), row()), y());
        assert!(matches!(row_form(&prog, &l2, &ub(1, 0), &update), Some(RowForm::Axpy { .. })));
        let mut l3 = l.clone();
        l3.buffers[0].dtype = DType::BF16;
        assert!(matches!(row_form(&prog, &l3, &ub(1, 0), &update), Some(RowForm::Axpy { .. })));
        let mut l4 = l.clone();
        l4.buffers[2].dtype = DType::BF16;
        assert!(row_form(&prog, &l4, &ub(1, 0), &update).is_none());
        // Causal attention's mask `where(a + c <= b + r, k · x, -inf)`, in place too; `c` alone or on the right;
        // not with another comparison, a division in the integers (it could fail), a column-dependent `b`, a
        // fill that varies along the row, or `x` overlapping the destination at another window.
        let sc = |k: i64| VExpr::Scalar(off(k));
        let le = |a: VExpr, b: VExpr| bin(BinOp::Le, a, b);
        let masked = |c: VExpr, t: VExpr, f: VExpr| VExpr::Select(bx(c), bx(t), bx(f));
        let causal = le(bin(BinOp::Add, sc(3), VExpr::Col), bin(BinOp::Add, sc(1), VExpr::Row));
        let ninf = || VExpr::F32(f32::NEG_INFINITY);
        assert_eq!(form(ub(1, 0), masked(causal.clone(), bin(BinOp::Mul, row(), x()), ninf())), "mask-mul");
        assert_eq!(form(ub(0, 0), masked(causal.clone(), bin(BinOp::Mul, row(), x()), ninf())), "mask-mul");
        assert_eq!(form(ub(1, 0), masked(causal.clone(), bin(BinOp::Mul, x(), row()), ninf())), "mask-mul-swapped");
        assert_eq!(form(ub(1, 0), masked(le(VExpr::Col, VExpr::Row), x(), VExpr::F32(0.0))), "mask");
        let right = le(bin(BinOp::Add, VExpr::Col, sc(3)), VExpr::Row);
        assert_eq!(form(ub(1, 0), masked(right, x(), ninf())), "mask");
        let lt = bin(BinOp::Lt, bin(BinOp::Add, sc(3), VExpr::Col), VExpr::Row);
        assert_eq!(form(ub(1, 0), masked(lt, x(), ninf())), "none");
        let div = le(VExpr::Col, bin(BinOp::Div, VExpr::Row, sc(0)));
        assert_eq!(form(ub(1, 0), masked(div, x(), ninf())), "none");
        let by_col = le(VExpr::Col, bin(BinOp::Add, VExpr::Row, VExpr::Col));
        assert_eq!(form(ub(1, 0), masked(by_col, x(), ninf())), "none");
        assert_eq!(form(ub(1, 0), masked(causal.clone(), x(), VExpr::Read(ub(2, 0)))), "none");
        assert_eq!(form(ub(0, 16), masked(causal, x(), ninf())), "none");
    }

    #[test]
    fn statements_with_exps_run_alone() {
        // A column-dependent `exp` goes by chunks through the host routine, which a fused loop does not do.
        let a_from_x = vector(ub(0, 0), plus(VExpr::Read(gm(0, off(0))), VExpr::F32(1.0)));
        let exp_of_a = vector(ub(1, 0), VExpr::Unary(UnOp::Exp, Box::new(VExpr::Read(ub(0, 0)))));
        let b_from_a = vector(ub(1, 0), plus(VExpr::Read(ub(0, 0)), VExpr::F32(2.0)));
        assert_eq!(run(&[a_from_x.clone(), b_from_a]), 2);
        assert_eq!(run(&[a_from_x, exp_of_a.clone()]), 1);
        assert_eq!(run(&[exp_of_a]), 0);
    }

    #[test]
    fn fusion_keeps_tensors_that_may_share_memory_element_by_element() {
        // `y` (may share `x`'s memory) written at `off`: reading `x` at `off + 0` is the same window.
        let y_at = |o: SExpr| vector(gm(1, o), plus(VExpr::Read(ub(0, 0)), VExpr::F32(1.0)));
        let a_from_x = |o: SExpr| vector(ub(0, 0), VExpr::Read(gm(0, o)));
        assert_eq!(run(&[a_from_x(off(0)), y_at(SExpr::Var(kc_ir::tile::SVar(0)))]), 2);
        // At another window: `y`'s element could be written before `x`'s is read; not fused.
        assert_eq!(run(&[a_from_x(off(16)), y_at(off(0))]), 1);
        // One value per row of `x`: not fused.
        let row_of_x = vector(ub(0, 0), VExpr::ReadRow(gm(0, off(0))));
        assert_eq!(run(&[row_of_x, y_at(off(0))]), 1);
        // `s` shares memory with nothing: read anywhere.
        let s_row = vector(
            ub(0, 0),
            VExpr::ReadRow(Region { loc: Loc::Gm(TensorId(2)), offset: SExpr::Const(3), row_stride: SExpr::Const(0) }),
        );
        assert_eq!(run(&[s_row, y_at(off(0))]), 2);
        assert!(may_alias(&setup().0, TensorId(0)) && may_alias(&setup().0, TensorId(1)));
        assert!(!may_alias(&setup().0, TensorId(2)));
    }
}
