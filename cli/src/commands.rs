//! The subcommands: `check`, `build` and `run` (`bench` is in its own module). Each returns `Ok` or a [`Failure`]; `main` maps that to
//! the exit status.

use crate::args::{Backend, BuildArgs, CheckArgs, Emit, RunArgs};
use crate::files;
use kc_frontend::SourceMap;
use kc_ir::launch::Args;
use kc_ir::{DType, Diagnostic, Graph, ParamKind, Program, Tensor};
use kc_runtime::{npy, random, summary};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a command failed. Either way the exit status is 1.
#[derive(Debug)]
pub enum Failure {
    /// The problem was already printed (rendered diagnostics).
    Reported,
    /// A problem to print as `error: ...`.
    Message(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Message(s)
    }
}

/// What every command needs to know about the terminal.
pub struct Ctx {
    pub color: bool,
}

impl Ctx {
    /// Prints a one-line error to stderr.
    pub fn error(&self, msg: &str) {
        if self.color {
            eprintln!("\x1b[1;31merror\x1b[0m: {msg}");
        } else {
            eprintln!("error: {msg}");
        }
    }

    /// Prints a one-line note to stderr (something the user should know; not an error).
    pub fn note(&self, msg: &str) {
        if self.color {
            eprintln!("\x1b[1;36mnote\x1b[0m: {msg}");
        } else {
            eprintln!("note: {msg}");
        }
    }

    /// Renders diagnostics to stderr; returns whether any is an error.
    pub(crate) fn report(&self, diags: &[Diagnostic], sources: &SourceMap) -> bool {
        if !diags.is_empty() {
            eprint!("{}", kc_frontend::render(diags, sources, self.color));
        }
        diags.iter().any(Diagnostic::is_error)
    }
}

/// Writes to stdout; a closed pipe (`kc build f.ker | head`) is not an error.
pub(crate) fn stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Message(format!("cannot write to stdout: {e}"))),
    }
}

pub(crate) struct Compiled {
    pub name: String,
    pub sources: SourceMap,
    pub program: Program,
    pub diags: Vec<Diagnostic>,
}

/// Reads and compiles a root file (and the files it `use`s).
pub(crate) fn compile_file(path: &Path) -> Result<Compiled, String> {
    let text = files::read_source(path)?;
    let name = files::normalize(path).display().to_string();
    let mut sources = SourceMap::new();
    let root = sources.add(name.clone(), text);
    let (program, diags) = kc_frontend::compile(&mut sources, root, &files::FsLoader);
    Ok(Compiled { name, sources, program, diags })
}

fn kernel_names(p: &Program) -> String {
    p.kernels.iter().map(|k| format!("`{}`", k.name)).collect::<Vec<_>>().join(", ")
}

/// The kernel named `name`, or the only one; otherwise an error listing the kernels.
pub(crate) fn select_kernel<'p>(p: &'p Program, name: Option<&str>, file: &str) -> Result<&'p Graph, String> {
    match name {
        Some(n) => p.kernel(n).ok_or_else(|| {
            if p.kernels.is_empty() {
                format!("there is no kernel `{n}`: `{file}` defines no kernels")
            } else {
                format!("there is no kernel `{n}` in `{file}`; its kernels are: {}", kernel_names(p))
            }
        }),
        None => match p.kernels.as_slice() {
            [k] => Ok(k),
            [] => Err(format!("`{file}` defines no kernels")),
            _ => Err(format!(
                "`{file}` defines {} kernels; choose one with --kernel NAME: {}",
                p.kernels.len(),
                kernel_names(p)
            )),
        },
    }
}

pub fn check(ctx: &Ctx, a: &CheckArgs) -> Result<(), Failure> {
    let mut failed = false;
    for f in &a.files {
        match compile_file(f) {
            Err(msg) => {
                ctx.error(&msg);
                failed = true;
            }
            Ok(c) => {
                if ctx.report(&c.diags, &c.sources) {
                    failed = true;
                } else {
                    let n = c.program.kernels.len();
                    let list = if n == 0 { String::new() } else { format!(": {}", kernel_names(&c.program)) };
                    eprintln!("ok: {} ({n} kernel{}{list})", c.name, if n == 1 { "" } else { "s" });
                }
            }
        }
    }
    if failed {
        Err(Failure::Reported)
    } else {
        Ok(())
    }
}

pub fn build(ctx: &Ctx, a: &BuildArgs) -> Result<(), Failure> {
    if let Some(o) = &a.output {
        files::check_parent(o)?;
    }
    let text = match a.emit {
        Emit::Ast => {
            if a.kernel.is_some() {
                return Err(Failure::Message(
                    "--kernel selects a kernel of the graph IR; --emit ast prints the whole file".to_string(),
                ));
            }
            let src = files::read_source(&a.file)?;
            let mut sources = SourceMap::new();
            let id = sources.add(files::normalize(&a.file).display().to_string(), src.clone());
            let (module, diags) = kc_frontend::parser::parse(id, &src);
            if ctx.report(&diags, &sources) {
                return Err(Failure::Reported);
            }
            kc_frontend::ast_print::print_module(&module)
        }
        Emit::Tiled | Emit::Report | Emit::Trace | Emit::Timeline | Emit::Tuning | Emit::Clif | Emit::Asm => {
            let target = load_target(&a.target)?;
            let c = compile_file(&a.file)?;
            if ctx.report(&c.diags, &c.sources) {
                return Err(Failure::Reported);
            }
            let graphs: Vec<&kc_ir::Graph> = match &a.kernel {
                Some(k) => vec![select_kernel(&c.program, Some(k), &c.name)?],
                None => c.program.kernels.iter().collect(),
            };
            let dims = dim_map(&a.dims)?;
            for name in dims.keys() {
                if !graphs.iter().any(|g| knows_dim(g, name)) {
                    return Err(Failure::Message(format!(
                        "--dims gives `{name}`, which no kernel built here has; their dims: {}",
                        graphs
                            .iter()
                            .map(|g| format!("`{}`: {}", g.name, g.dims.join(", ")))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
            }
            if matches!(a.emit, Emit::Trace | Emit::Timeline) && graphs.len() > 1 {
                return Err(Failure::Message(format!(
                    "--emit {} draws one kernel: choose it with --kernel (this file has {})",
                    if a.emit == Emit::Trace { "trace" } else { "timeline" },
                    kernel_names(&c.program)
                )));
            }
            let mut texts = Vec::new();
            let mut reports = Vec::new();
            let mut tunings = Vec::new();
            for g in &graphs {
                let own: BTreeMap<String, i64> =
                    dims.iter().filter(|(k, _)| knows_dim(g, k)).map(|(k, v)| (k.clone(), *v)).collect();
                let built = kc_ir::launch::bind_dims(g, &own).and_then(|b| tile_bound(g, &b, &target));
                let (f, tp, of_group, tuning) = match built {
                    Ok(x) => x,
                    Err(diags) => {
                        ctx.report(&diags, &c.sources);
                        return Err(Failure::Reported);
                    }
                };
                if a.emit == Emit::Tiled {
                    texts.push(kc_ir::tile::print::print_program(&tp));
                    continue;
                }
                if matches!(a.emit, Emit::Clif | Emit::Asm) {
                    let clif = a.emit == Emit::Clif;
                    let opts =
                        kc_codegen::Options { verify: true, keep_clif: clif, keep_asm: !clif, ..Default::default() };
                    let code = match kc_codegen::compile(&tp, &opts) {
                        Ok(c) => c,
                        Err(d) => {
                            ctx.report(&[d], &c.sources);
                            return Err(Failure::Reported);
                        }
                    };
                    let fns = if clif { &code.clif } else { &code.asm };
                    for (name, body) in fns {
                        texts.push(format!(
                            "; kernel {} target {} dims {dims_text}: {name}\n{body}",
                            g.name,
                            tp.target,
                            dims_text = fmt_dims(&tp.dims)
                        ));
                    }
                    continue;
                }
                if a.emit == Emit::Tuning {
                    tunings.push(tuning_report(g, &tp, &target, &tuning));
                    continue;
                }
                let ints = int_inputs(g, &own, &tp)?;
                if matches!(a.emit, Emit::Trace | Emit::Timeline) {
                    let timeline = match kc_ir::cost::estimate(&tp, &target, &ints, true) {
                        Ok((_, Some(t))) => t,
                        Ok((_, None)) => return Err(Failure::Message("the cost model recorded no timeline".into())),
                        Err(d) => {
                            ctx.report(&[d], &c.sources);
                            return Err(Failure::Reported);
                        }
                    };
                    if timeline.truncated {
                        ctx.note(&format!(
                            "the timeline of `{}` keeps its first {} slices (the first cores, in order; the \
                             estimate covers everything): build it at smaller --dims to see all of it",
                            g.name,
                            kc_ir::cost::MAX_SLICES
                        ));
                    }
                    texts.push(if a.emit == Emit::Trace {
                        kc_ir::cost::trace::chrome_trace(&timeline)
                    } else {
                        kc_ir::cost::trace::html_timeline(&timeline)
                    });
                    continue;
                }
                match kc_ir::report::report(g, &f, &tp, &of_group, &target, &ints) {
                    Ok(r) => reports.push(r),
                    Err(d) => {
                        ctx.report(&[d], &c.sources);
                        return Err(Failure::Reported);
                    }
                }
            }
            match (a.emit, a.format) {
                (Emit::Tiled | Emit::Trace | Emit::Timeline | Emit::Clif | Emit::Asm, _) => texts.join("\n"),
                (Emit::Tuning, crate::args::Format::Text) => {
                    tunings.iter().map(|t| t.0.clone()).collect::<Vec<_>>().join("\n")
                }
                (Emit::Tuning, crate::args::Format::Json) => {
                    let doc = serde_json::json!({"kernels": tunings.iter().map(|t| t.1.clone()).collect::<Vec<_>>()});
                    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
                    s.push('\n');
                    s
                }
                (_, crate::args::Format::Text) => {
                    reports.iter().map(kc_ir::report::Report::text).collect::<Vec<_>>().join("\n")
                }
                (_, crate::args::Format::Json) => kc_ir::report::json(&reports),
            }
        }
        Emit::Graph | Emit::Fusion => {
            let c = compile_file(&a.file)?;
            if ctx.report(&c.diags, &c.sources) {
                return Err(Failure::Reported);
            }
            let graphs: Vec<&kc_ir::Graph> = match &a.kernel {
                Some(k) => vec![select_kernel(&c.program, Some(k), &c.name)?],
                None => c.program.kernels.iter().collect(),
            };
            let print = |g: &kc_ir::Graph| match a.emit {
                Emit::Fusion => {
                    let f = kc_ir::passes::fuse::fuse(g, &kc_ir::passes::fuse::FusionConfig::from_hints(g));
                    kc_ir::passes::fuse::print_fusion(g, &f)
                }
                _ => kc_ir::print::print_graph(g),
            };
            graphs.iter().map(|g| print(g)).collect::<Vec<_>>().join("\n")
        }
    };
    match &a.output {
        Some(p) => Ok(files::write_all_atomic(&[(p.clone(), text.into_bytes())])?),
        None => stdout(&text),
    }
}

/// `A = 1, B = 2`.
fn fmt_dims(d: &BTreeMap<String, i64>) -> String {
    d.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
}

/// A built-in target by name, or a target description file.
pub(crate) fn load_target(spec: &str) -> Result<kc_ir::target::Target, String> {
    if let Some(t) = kc_ir::target::Target::builtin(spec) {
        return Ok(t);
    }
    let path = Path::new(spec);
    if !path.exists() && !spec.contains('/') && !spec.ends_with(".toml") {
        return Err(format!(
            "there is no built-in target `{spec}` (the built-in ones: ascend910b, ascend950, host), nor a file of that name"
        ));
    }
    let text = files::read_source(path)?;
    kc_ir::target::Target::parse(&text).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
        format!("the target file `{spec}` is not valid:\n{}", lines.join("\n"))
    })
}

/// `--dims` as a map; a dim given twice with different values is an error.
fn dim_map(dims: &[(String, i64)]) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for (name, v) in dims {
        if let Some(old) = out.insert(name.clone(), *v) {
            if old != *v {
                return Err(format!("--dims gives `{name}` twice: {old} and {v}"));
            }
        }
    }
    Ok(out)
}

/// Whether `name` is a dim of the kernel (a `dim` parameter or a symbol of its shapes).
fn knows_dim(g: &Graph, name: &str) -> bool {
    g.dims.iter().any(|d| d == name) || g.params.iter().any(|p| p.name == name && p.kind == ParamKind::Dim)
}

/// The integer tensors a report follows data-dependent control through: seeded random values (seed 0, by
/// the rules of `kc run --random`) for every `i32` tensor parameter, by GM tensor.
fn int_inputs(
    g: &Graph,
    dims: &BTreeMap<String, i64>,
    tp: &kc_ir::tile::TileProgram,
) -> Result<kc_ir::report::IntData, String> {
    let given = Args { tensors: BTreeMap::new(), dims: dims.clone() };
    let a = random::random_int_args(g, &given, 0)?;
    let mut out = kc_ir::report::IntData::new();
    for (i, t) in tp.tensors.iter().enumerate() {
        if let kc_ir::tile::TensorRole::Param(p) = t.role {
            if let Some(v) = g.params.get(p).and_then(|p| a.tensors.get(&p.name)) {
                out.insert(kc_ir::tile::TensorId(i as u32), v.to_f64_vec().into_iter().map(|x| x as i64).collect());
            }
        }
    }
    Ok(out)
}

/// The candidate tilings of a kernel, as text and as JSON.
fn tuning_report(
    g: &Graph,
    tp: &kc_ir::tile::TileProgram,
    target: &kc_ir::target::Target,
    cands: &[kc_ir::passes::tile::Candidate],
) -> (String, serde_json::Value) {
    use std::fmt::Write;
    let us = |cycles: f64| cycles / (target.clock_ghz * 1e3);
    let dims: Vec<String> = tp.dims.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    let mut s = format!("kernel {}  target {}  dims {}\n", g.name, target.name, dims.join(", "));
    let mut json_launches = Vec::new();
    for l in &tp.launches {
        let mut mine: Vec<&kc_ir::passes::tile::Candidate> = cands.iter().filter(|c| c.launch == l.name).collect();
        if mine.is_empty() {
            let _ = writeln!(s, "launch {}: one tiling, nothing to weigh", l.name);
            json_launches.push(serde_json::json!({"launch": l.name, "candidates": []}));
            continue;
        }
        mine.sort_by(|a, b| b.simulated.cmp(&a.simulated).then(a.cycles.total_cmp(&b.cycles)));
        let _ = writeln!(s, "launch {}: {} candidates, fastest first (* = chosen)", l.name, mine.len());
        let (sim, bound): (Vec<&&kc_ir::passes::tile::Candidate>, Vec<_>) = mine.iter().partition(|c| c.simulated);
        for c in &sim {
            let mark = if c.chosen { "*" } else { " " };
            let _ = writeln!(s, "  {mark} {:<40} {:>12.0} cycles {:>12.2} us", c.what, c.cycles, us(c.cycles));
        }
        if !bound.is_empty() {
            let _ = writeln!(
                s,
                "  and {} more, not simulated (only candidates whose lower bound beats the best estimate so far \
                 are, the lowest bounds first, at most 16):",
                bound.len()
            );
            for c in &bound {
                let _ = writeln!(s, "    {:<40} >= {:>9.0} cycles {:>12.2} us", c.what, c.cycles, us(c.cycles));
            }
        }
        let list: Vec<serde_json::Value> = mine
            .iter()
            .map(|c| {
                serde_json::json!({"what": c.what, "cycles": c.cycles, "time_us": us(c.cycles), "chosen": c.chosen,
                                   "simulated": c.simulated})
            })
            .collect();
        json_launches.push(serde_json::json!({"launch": l.name, "candidates": list}));
    }
    let json = serde_json::json!({"name": g.name, "target": target.name, "dims": tp.dims, "launches": json_launches});
    (s, json)
}

pub(crate) type Built =
    (kc_ir::passes::fuse::Fusion, kc_ir::tile::TileProgram, Vec<usize>, Vec<kc_ir::passes::tile::Candidate>);

/// Fuses and tiles a kernel for `target` at the dims of `b`, verifying the tile program; also returns the
/// fusion, the group of each launch and the candidate tilings weighed.
pub(crate) fn tile_bound(
    g: &Graph,
    b: &kc_ir::launch::Binding,
    target: &kc_ir::target::Target,
) -> Result<Built, Vec<Diagnostic>> {
    tile_checked(g, b, target, true)
}

/// [`tile_bound`], with the tile-IR verifier only if `verify`: the JIT does without it (every access of
/// compiled code is bounds-checked at run time, and a host core runs its statements in program order, so
/// the flags the verifier checks order nothing), which keeps compile times short at production sizes.
pub(crate) fn tile_checked(
    g: &Graph,
    b: &kc_ir::launch::Binding,
    target: &kc_ir::target::Target,
    verify: bool,
) -> Result<Built, Vec<Diagnostic>> {
    let (f, tp, of_group, tuning) = kc_ir::passes::tile::fuse_and_tile(g, b, target).map_err(|d| vec![d])?;
    if !verify {
        return Ok((f, tp, of_group, tuning));
    }
    if let Err(errs) = kc_ir::tile::verify::verify(&tp, target) {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        return Err(vec![Diagnostic::error(
            kc_ir::Code::Internal,
            g.span,
            format!("kernel `{}`: the tile program does not verify (a bug in kc):\n{}", g.name, msgs.join("\n")),
        )]);
    }
    Ok((f, tp, of_group, tuning))
}

/// `x: f32[N, D]`, `lr: f32`, `E: dim`, for messages.
fn describe_param(kind: &ParamKind) -> String {
    match kind {
        ParamKind::Dim => "dim".to_string(),
        ParamKind::Tensor { dtype, shape, inout } => {
            let io = if *inout { "inout " } else { "" };
            if shape.is_empty() {
                format!("{io}{dtype}")
            } else {
                let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                format!("{io}{dtype}[{}]", dims.join(", "))
            }
        }
    }
}

fn param_list(g: &Graph) -> String {
    g.params.iter().map(|p| format!("{}: {}", p.name, describe_param(&p.kind))).collect::<Vec<_>>().join(", ")
}

/// Parses a scalar argument by the parameter's dtype.
fn parse_scalar(name: &str, dtype: DType, v: &str) -> Result<Tensor, String> {
    let v = v.trim();
    let t = match dtype {
        DType::F32 | DType::BF16 | DType::F16 => {
            let x: f32 = v.parse().map_err(|_| format!("`{name}` is {dtype}: `{v}` is not a number"))?;
            Tensor::from_f32_as(dtype, Vec::new(), &[x])
        }
        DType::I32 => {
            let x: i32 = v
                .parse()
                .map_err(|_| format!("`{name}` is i32: `{v}` is not an integer (from -2147483648 to 2147483647)"))?;
            Some(Tensor::scalar_i32(x))
        }
        DType::Bool => {
            let b = match v {
                "true" => true,
                "false" => false,
                _ => return Err(format!("`{name}` is bool: `{v}` is neither `true` nor `false`")),
            };
            Tensor::new(Vec::new(), kc_ir::TensorData::Bool(vec![b]))
        }
    };
    t.ok_or_else(|| format!("cannot make a scalar `{name}`"))
}

/// The launch arguments from `--dims`, `--input` and `--scalar` (not yet the random ones).
pub(crate) fn launch_args(g: &Graph, inputs: &crate::args::InputArgs) -> Result<Args, String> {
    let (dims, input, scalar) = (&inputs.dims, &inputs.input, &inputs.scalar);
    let mut args = Args::default();
    for (name, v) in dims {
        if let Some(old) = args.dims.insert(name.clone(), *v) {
            if old != *v {
                return Err(format!("--dims gives `{name}` twice: {old} and {v}"));
            }
        }
    }
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    let find = |name: &str, flag: &str| -> Result<(DType, bool), String> {
        let Some(p) = g.params.iter().find(|p| p.name == name) else {
            return Err(format!(
                "kernel `{}` has no parameter `{name}` (from {flag}); its parameters are: {}",
                g.name,
                param_list(g)
            ));
        };
        match &p.kind {
            ParamKind::Dim => Err(format!("`{name}` is a dim parameter: give it with --dims {name}=N")),
            ParamKind::Tensor { dtype, shape, .. } => Ok((*dtype, shape.is_empty())),
        }
    };
    for (name, path) in input {
        if given.insert(name, "--input").is_some() {
            return Err(format!("`{name}` is given twice"));
        }
        let (dtype, _) = find(name, "--input")?;
        let bytes = files::read_bytes(Path::new(path))?;
        let t = npy::read_npy(&bytes).map_err(|e| format!("cannot read `{path}` (input `{name}`): {e}"))?;
        let t = npy::to_param_dtype(t, dtype).map_err(|e| format!("input `{name}` from `{path}`: {e}"))?;
        args.tensors.insert(name.clone(), t);
    }
    for (name, value) in scalar {
        if let Some(flag) = given.insert(name, "--scalar") {
            return Err(format!("`{name}` is given twice (with {flag} and --scalar)"));
        }
        let (dtype, scalar) = find(name, "--scalar")?;
        if !scalar {
            let kind = g.params.iter().find(|p| &p.name == name).map(|p| describe_param(&p.kind)).unwrap_or_default();
            return Err(format!("`{name}` is a tensor ({kind}): give it with --input {name}=PATH.npy"));
        }
        args.tensors.insert(name.clone(), parse_scalar(name, dtype, value)?);
    }
    Ok(args)
}

pub fn run(ctx: &Ctx, a: &RunArgs) -> Result<(), Failure> {
    if let Some(dir) = &a.out {
        files::check_out_dir(dir)?;
    }
    let mut clock = Stages::new(a.verbose);
    let c = compile_file(&a.file)?;
    if ctx.report(&c.diags, &c.sources) {
        return Err(Failure::Reported);
    }
    let g = select_kernel(&c.program, a.kernel.as_deref(), &c.name)?;
    let mut args = launch_args(g, &a.inputs)?;
    if let Some(seed) = a.random {
        args = random::random_args(g, &args, seed)?;
    }
    clock.lap("parse, lower and read inputs");
    let threads = a.threads.map(|t| t as usize).unwrap_or_else(host_threads);
    let limits = a.inputs.limits();
    let run = match a.backend {
        Backend::Interp => {
            let r = kc_ir::interp::run_with(g, &args, &limits);
            clock.lap("interpret");
            r
        }
        Backend::Sim => {
            let target = load_target(a.target.as_deref().unwrap_or(kc_ir::target::DEFAULT))?;
            match kc_ir::launch::bind(g, &args).and_then(|b| tile_checked(g, &b, &target, true)) {
                Ok((_, tp, _, _)) => {
                    clock.lap("fuse, tile and verify");
                    let r = kc_runtime::sim::run_with(&tp, g, &args, &limits).map(|(r, _)| r);
                    clock.lap("simulate");
                    r
                }
                Err(d) => Err(d),
            }
        }
        Backend::Jit => {
            let target = load_target(a.target.as_deref().unwrap_or("host"))?;
            match kc_ir::launch::bind(g, &args).and_then(|b| jit_kernel(g, &b, &target, &mut clock)) {
                Ok(k) => {
                    let r = k.code.run(&k.program, g, &args, threads, &limits);
                    clock.lap(&format!("run ({threads} thread{})", if threads == 1 { "" } else { "s" }));
                    r.map(|(r, _)| r)
                }
                Err(d) => Err(d),
            }
        }
    };
    let results = match run {
        Ok(r) => r,
        Err(diags) => {
            let diags = memory_note(diags, &a.inputs);
            ctx.report(&diags, &c.sources);
            return Err(Failure::Reported);
        }
    };
    let mut text: String = results.iter().map(|(name, t)| summary::summarize(name, t) + "\n").collect();
    let mut failed = Vec::new();
    if a.check {
        let want = match kc_ir::interp::run_with(g, &args, &limits) {
            Ok(w) => w,
            Err(diags) => {
                ctx.report(&diags, &c.sources);
                return Err(Failure::Reported);
            }
        };
        clock.lap("interpret (--check)");
        for ((name, got), (_, want)) in results.iter().zip(&want) {
            let cmp = kc_runtime::compare::compare(got, want);
            let verdict = if cmp.ok() {
                "ok".to_string()
            } else if !cmp.same_shape {
                failed.push(name.clone());
                "FAILED: the shape or dtype differs".to_string()
            } else {
                failed.push(name.clone());
                format!(
                    "FAILED: {} elements beyond tolerance, the first at flat index {}",
                    cmp.bad,
                    cmp.first_bad.unwrap_or(0)
                )
            };
            text.push_str(&format!(
                "check {name}: max abs error {:.3e}, max rel error {:.3e} (tolerance {:.1e} of the value and of the largest value): {verdict}\n",
                cmp.max_abs,
                cmp.max_rel,
                kc_runtime::compare::rtol(want.dtype())
            ));
        }
    }
    if failed.is_empty() {
        if let Some(dir) = &a.out {
            files::ensure_out_dir(dir)?;
            let outs: Vec<(PathBuf, Vec<u8>)> = results
                .iter()
                .map(|(name, t)| (dir.join(format!("{name}.npy")), npy::write_npy(t, a.raw_bf16)))
                .collect();
            files::write_all_atomic(&outs)?;
        }
    }
    clock.report();
    stdout(&text)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Message(format!(
            "--check: {} differ{} from the interpreter beyond tolerance{}",
            failed.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
            if failed.len() == 1 { "s" } else { "" },
            if a.out.is_some() { " (nothing was written)" } else { "" }
        )))
    }
}

/// The kernel `g` at the dims of `b`, tiled for `target` (without the tile verifier: see [`tile_checked`])
/// and compiled by the JIT, through the process's cache of compiled kernels (keyed by the kernel's lowered
/// graph, the dims and the target). Laps `clock` per stage.
pub(crate) fn jit_kernel(
    g: &Graph,
    b: &kc_ir::launch::Binding,
    target: &kc_ir::target::Target,
    clock: &mut Stages,
) -> Result<std::sync::Arc<kc_codegen::cache::Kernel>, Vec<Diagnostic>> {
    let key = kc_codegen::cache::Key {
        source: format!("{g:?}"),
        kernel: g.name.clone(),
        dims: b.dims.clone(),
        target: format!("{target:?}"),
    };
    let (k, cached) = kc_codegen::cache::get_or_compile(key, || {
        let (_, program, _, _) = tile_checked(g, b, target, false)?;
        clock.lap("fuse and tile");
        let code = kc_codegen::compile(&program, &kc_codegen::Options::default()).map_err(|d| vec![d])?;
        clock.lap("generate code (Cranelift)");
        Ok(kc_codegen::cache::Kernel { program, code })
    })?;
    if cached {
        clock.lap("compiled kernel from the cache");
    }
    Ok(k)
}

/// The host's cores, for the default --threads.
pub(crate) fn host_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Wall-clock time per stage, printed to stderr with -v.
pub(crate) struct Stages {
    on: bool,
    last: std::time::Instant,
    laps: Vec<(String, std::time::Duration)>,
}

impl Stages {
    pub(crate) fn new(on: bool) -> Stages {
        Stages { on, last: std::time::Instant::now(), laps: Vec::new() }
    }

    pub(crate) fn lap(&mut self, what: &str) {
        let now = std::time::Instant::now();
        self.laps.push((what.to_string(), now - self.last));
        self.last = now;
    }

    fn report(&self) {
        if self.on {
            for (what, d) in &self.laps {
                eprintln!("{:>10.3} ms  {what}", d.as_secs_f64() * 1e3);
            }
        }
    }
}

/// Adds to a refusal for memory (E0808 with a byte limit) where its limit came from and how to set it.
pub fn memory_note(diags: Vec<Diagnostic>, inputs: &crate::args::InputArgs) -> Vec<Diagnostic> {
    diags
        .into_iter()
        .map(|d| {
            if d.code == kc_ir::Code::ResourceLimit && d.message.contains("bytes") {
                let whence = if inputs.max_memory.is_some() {
                    "the limit is --max-memory's"
                } else {
                    "the limit is 90% of the memory the system had available"
                };
                d.with_note(format!("{whence}; `--max-memory SIZE` (for example 16G) sets it"))
            } else {
                d
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_parse_by_dtype() {
        assert_eq!(parse_scalar("x", DType::F32, "-inf").unwrap().get_f64(0), f64::NEG_INFINITY);
        assert_eq!(parse_scalar("x", DType::F32, "1e-6").unwrap().get_f64(0), 1e-6f32 as f64);
        assert_eq!(parse_scalar("x", DType::BF16, "0.1").unwrap().dtype(), DType::BF16);
        assert_eq!(parse_scalar("n", DType::I32, "7").unwrap(), Tensor::scalar_i32(7));
        assert!(parse_scalar("n", DType::I32, "1.5").is_err());
        assert!(parse_scalar("n", DType::I32, "99999999999").is_err());
        assert!(parse_scalar("b", DType::Bool, "yes").is_err());
        assert_eq!(parse_scalar("b", DType::Bool, "true").unwrap().get_f64(0), 1.0);
        assert!(parse_scalar("x", DType::F32, "abc").unwrap_err().contains("not a number"));
    }
}
